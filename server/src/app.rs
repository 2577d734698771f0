//! Assembly and lifecycle: builds the store, writer, hub and service, serves the router
//! on a listener, and shuts everything down in order.
//!
//! Shutdown: the caller's `shutdown` future resolves → one [`CancellationToken`] is
//! cancelled → axum stops accepting and finishes HTTP requests in flight, and every open
//! socket is asked through its outbox ([`crate::ws::LiveSockets`]) to finish the command
//! it is handling, send what it has queued and close with 1001 → once every socket task
//! is done, the writer commits what is still queued and the store closes.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, AuthError, Keys};
use crate::broker::redis::{BrokerError, RedisBroker};
use crate::broker::{Broker, Fanout, LocalBroker};
use crate::config::{Config, Limits};
use crate::hub::{Hub, HubSettings};
use crate::metrics::Metrics;
use crate::rate::RateLimits;
use crate::service::Service;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::writer::Writer;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("demo set-up: {0}")]
    Demo(crate::error::ServiceError),
}

/// What handlers share.
pub struct AppState {
    pub service: Arc<Service>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub allowed_origins: Option<Vec<String>>,
    /// Every socket task, so shutdown can wait for them.
    pub sockets: TaskTracker,
    /// Every open socket's outbox, so shutdown can ask each to close.
    pub live_sockets: crate::ws::LiveSockets,
    pub open_sockets: AtomicUsize,
    /// Open sockets per user that said `hello` (see [`crate::ws::UserSocket`]).
    pub user_sockets: dashmap::DashMap<backchannel_protocol::UserId, usize>,
    pub rate: RateLimits,
    /// With `--demo`: the demo's token minting (`demo.rs`); `None` otherwise.
    pub demo: Option<crate::demo::Demo>,
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let database_url = config.database_url.as_deref().filter(|url| !url.is_empty());
    let postgres = |url: &str| url.starts_with("postgres://") || url.starts_with("postgresql://");
    if database_url.is_some_and(|url| !postgres(url)) {
        return Err(ServerError::Unsupported(
            "--database-url must be postgres://... or postgresql://...; unset, SQLite is used",
        ));
    }
    // Bound first: a taken address fails the start before the store is opened.
    let metrics_listener = match &config.metrics_listen {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    };
    let (secret, _) = auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let store: Arc<dyn Store> = match database_url {
        Some(url) => PgStore::open(url).await?,
        None => SqliteStore::open(&config.data_dir).await?,
    };
    let metrics = Arc::new(Metrics::with_store(store.append_shortcut_counters()));
    let (broker, redis): (Arc<dyn Broker>, _) = match &config.redis_url {
        None => (Arc::new(LocalBroker), None),
        Some(url) => {
            let deployment = store.deployment_id().await?;
            let (redis, inbound) = RedisBroker::start(url, &deployment, config.node_id.clone())?;
            (redis.clone(), Some((redis, inbound)))
        }
    };
    let hub = Arc::new(Hub::new(
        store.clone(),
        broker.clone(),
        HubSettings {
            node: config.node_id.clone(),
            presence_ttl: config.limits.presence_ttl,
            away_after: config.limits.away_after,
            reconcile_every: config
                .redis_url
                .as_ref()
                .map(|_| std::time::Duration::from_secs(2)),
        },
    ));
    let presence_stop = CancellationToken::new();
    let presence = tokio::spawn(hub.clone().run_presence(presence_stop.clone()));
    let mut pump = None;
    let mut redis_broker = None;
    if let Some((redis, inbound)) = redis {
        pump = Some(tokio::spawn(crate::broker::pump(inbound, hub.clone())));
        redis_broker = Some(redis);
    }
    let fanout = Arc::new(Fanout {
        hub: hub.clone(),
        broker: broker.clone(),
    });
    let writer = Writer::start(store.clone(), fanout, metrics.clone());
    let service = Arc::new(Service::new(store, writer, hub, Keys::new(&secret)));
    let demo = if config.demo {
        Some(crate::demo::Demo::start(&service, Keys::new(&secret)).await?)
    } else {
        None
    };
    let stop = CancellationToken::new();
    let state = Arc::new(AppState {
        service: service.clone(),
        broker,
        metrics,
        limits: config.limits.clone(),
        allowed_origins: config.allowed_origins.clone(),
        sockets: TaskTracker::new(),
        live_sockets: Default::default(),
        open_sockets: AtomicUsize::new(0),
        user_sockets: Default::default(),
        rate: RateLimits::new(&config.limits),
        demo,
    });
    let router = crate::api::router(state.clone(), config.metrics_listen.is_none());
    // `/metrics` on an address of its own, stopped with the node.
    let metrics_server = match metrics_listener {
        Some(listener) => {
            tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
            let stop = stop.clone();
            let router = crate::api::metrics_router(state.clone());
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    let forget = {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => state.rate.forget_idle(),
                }
            }
        })
    };

    let trigger = {
        let stop = stop.clone();
        let state = state.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
            state.live_sockets.shut_down();
        })
    };
    let send_buffer = config.limits.socket_send_buffer;
    let listener = listener.tap_io(move |tcp| {
        // Frames are small and latency matters more than packet count.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
        // A fixed send buffer bounds the kernel memory a client that stops reading can
        // pin; past it, the socket's outbox fills and it is closed with 4008.
        if let Some(bytes) = send_buffer {
            if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(bytes) {
                tracing::warn!("cannot set SO_SNDBUF: {e}");
            }
        }
    });
    tracing::info!(node = %config.node_id, "serving");
    let graceful = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(graceful)
        .await;
    stop.cancel();
    trigger.abort();
    state.live_sockets.shut_down();
    state.sockets.close();
    state.sockets.wait().await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    forget.abort();
    presence_stop.cancel();
    let _ = presence.await;
    service.shutdown().await;
    if let Some(redis) = redis_broker {
        redis.shutdown();
    }
    if let Some(pump) = pump {
        pump.abort();
    }
    tracing::info!("stopped");
    served.map_err(ServerError::from)
}
