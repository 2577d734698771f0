//! The WebSocket endpoint, `GET /v1/ws`.
//!
//! [`upgrade`] applies the checks that happen before a socket exists (allowed origins,
//! the connection limit), answers the HTTP upgrade (RFC 6455's opening handshake) and
//! sizes the socket's read buffer for a chat protocol rather than tungstenite's defaults
//! (128 KiB per connection). The upgrade is answered here rather than by axum's
//! extractor so that the socket's stream is a [`wire::Wire`], whose write buffer exists
//! only while it holds bytes. Each accepted socket is served by [`connection::serve`]:
//! one task that reads commands and writes the socket's [`outbox::Outbox`]
//! ([`socket::Socket`]).

pub mod connection;
pub mod outbox;
pub mod socket;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::api::ApiError;
use crate::app::AppState;
use crate::error::ServiceError;
use outbox::Outbox;

/// Read chunk per socket: chat frames are small; a large frame is read in several chunks.
const READ_BUFFER_BYTES: usize = 512;

/// A socket as the server holds it: tungstenite reads it and writes its control frames;
/// everything else is framed into its [`wire::Wire`].
pub type WebSocket = WebSocketStream<wire::Wire<TokioIo<hyper::upgrade::Upgraded>>>;

/// Every open socket's outbox, so that shutdown reaches each socket's task through the
/// outbox it already watches (a shutdown signal of their own would be one more thing
/// every socket's task polls at every wake-up).
#[derive(Default)]
pub struct LiveSockets {
    registry: parking_lot::Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    outboxes: HashMap<u64, Outbox>,
    stopping: bool,
}

impl LiveSockets {
    /// Asks every open socket to close with 1001 once the command it is running has its
    /// answer queued; sockets opened from now on are asked at once.
    pub fn shut_down(&self) {
        let mut registry = self.registry.lock();
        registry.stopping = true;
        for outbox in registry.outboxes.values() {
            outbox.request_shutdown();
        }
    }

    fn join(&self, outbox: &Outbox) -> u64 {
        let mut registry = self.registry.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.outboxes.insert(id, outbox.clone());
        if registry.stopping {
            outbox.request_shutdown();
        }
        id
    }

    fn leave(&self, id: u64) {
        self.registry.lock().outboxes.remove(&id);
    }
}

/// Holds one of the node's connection slots, and the socket's place among the live
/// sockets once it has an outbox, until dropped.
pub struct SocketPermit {
    state: Arc<AppState>,
    live: Option<u64>,
}

impl SocketPermit {
    fn acquire(state: &Arc<AppState>) -> Option<SocketPermit> {
        let open = state.open_sockets.fetch_add(1, Ordering::AcqRel);
        if open >= state.limits.max_connections {
            state.open_sockets.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        state.metrics.connections.inc();
        Some(SocketPermit {
            state: state.clone(),
            live: None,
        })
    }

    /// Makes the socket reachable by shutdown through its outbox.
    pub fn join(&mut self, outbox: &Outbox) {
        self.live = Some(self.state.live_sockets.join(outbox));
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        if let Some(id) = self.live {
            self.state.live_sockets.leave(id);
        }
        self.state.open_sockets.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.connections.dec();
    }
}

/// One of a user's open sockets, counted against `max_connections_per_user` from its
/// `welcome` until it closes.
pub struct UserSocket {
    state: Arc<AppState>,
    user: backchannel_protocol::UserId,
}

impl UserSocket {
    /// `None` if the user has the most sockets the node allows.
    pub fn acquire(state: &Arc<AppState>, user: &backchannel_protocol::UserId) -> Option<Self> {
        // With a limit of 0 nobody gets in, and no entry is made that nothing would remove.
        if state.limits.max_connections_per_user == 0 {
            return None;
        }
        let mut open = state.user_sockets.entry(user.clone()).or_insert(0);
        if *open >= state.limits.max_connections_per_user {
            return None;
        }
        *open += 1;
        Some(UserSocket {
            state: state.clone(),
            user: user.clone(),
        })
    }
}

impl Drop for UserSocket {
    fn drop(&mut self) {
        // The last one out removes the entry: users who left hold no memory.
        self.state
            .user_sockets
            .remove_if_mut(&self.user, |_, open| {
                *open -= 1;
                *open == 0
            });
    }
}

pub async fn upgrade(State(state): State<Arc<AppState>>, mut request: Request) -> Response {
    let headers = request.headers();
    if let Some(allowed) = &state.allowed_origins {
        // Browsers always send Origin; a page on another site is refused here, before
        // it can use a visitor's cookies or token. Clients that are not browsers send
        // none and authenticate with their token like everyone else.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !allowed.iter().any(|a| a == origin) {
                return ApiError(ServiceError::forbidden("origin not allowed")).into_response();
            }
        }
    }
    let accept = match accept_key(headers) {
        Ok(accept) => accept,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some(upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return ApiError(ServiceError::bad_request(
            "this connection cannot be upgraded to a WebSocket",
        ))
        .into_response();
    };
    let Some(permit) = SocketPermit::acquire(&state) else {
        return ApiError(ServiceError::Unavailable(
            "connection limit reached; retry later".into(),
        ))
        .into_response();
    };
    let max_frame = state.limits.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // tungstenite's own frames (pongs, the close frame) go straight to the wire's
        // buffer, behind what is there.
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let sockets = state.sockets.clone();
    sockets.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                return;
            }
        };
        let stream = wire::Wire::new(TokioIo::new(upgraded));
        let socket = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
        // A task of its own rather than inside this one, which then ends: its state (the
        // upgrade, the handshake's config) is not kept for the socket's life.
        let sockets = state.sockets.clone();
        sockets.spawn(connection::serve(socket, state, permit));
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

/// The `Sec-WebSocket-Accept` answering an HTTP/1.1 WebSocket upgrade request, or why the
/// request is not one.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, ServiceError> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(ServiceError::bad_request(
            "not a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`)",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(ServiceError::bad_request(
            "`Sec-WebSocket-Version` must be 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ServiceError::bad_request("`Sec-WebSocket-Key` is missing"))?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| ServiceError::Internal)
}
