//! Redis pub/sub between nodes.
//!
//! Channels: `bc:{deployment}:c:{conversation}` carries a conversation's committed
//! events and its typing and viewers, `bc:{deployment}:u:{user}` a user's notifications,
//! `bc:{deployment}:agents` staff presence. `{deployment}` is the store's deployment id
//! ([`crate::store::Store::deployment_id`]): every node on one database shares it, and
//! deployments that share a Redis server never hear each other (user ids like `alice`
//! recur across deployments; a notification or a name must not cross). A node subscribes
//! to a channel while it serves that conversation or user (reference-counted
//! [`Topic`]s), never to a pattern.
//!
//! Two tasks:
//! - the publisher drains everything queued, groups events by conversation (one message
//!   per conversation per batch) and sends the batch as one pipeline; a failed batch is
//!   retried with backoff, so a short outage delays messages rather than losing them;
//! - the subscriber holds the pub/sub connection, applies watch/unwatch requests, and
//!   forwards messages from other nodes as [`Inbound`]. When the connection drops it
//!   reconnects with backoff, resubscribes to every watched topic, and sends
//!   [`Inbound::Resync`] so the hub re-reads the store for anything missed.
//!
//! Messages carry the sending node's id; a node ignores its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backchannel_protocol::server::Notification;
use backchannel_protocol::{ConversationId, EventView, InboxId, UserId};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerStatus, Ephemeral, Inbound, Topic};
use crate::store::{Event, Seqs, UserNotification};

/// Messages waiting to be published before new ones are dropped (and counted).
const PUBLISH_QUEUE: usize = 65_536;
/// Most messages in one pipeline.
const MAX_PIPELINE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
}

/// Where and how to connect: `url`, with Nagle's algorithm off (`TCP_NODELAY`), which
/// redis-rs leaves on by default. A publish is a few hundred bytes that must leave at
/// once, not wait for the acknowledgement of the pipeline before it.
fn connection_info(url: &str) -> Result<redis::ConnectionInfo, BrokerError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| BrokerError::Url(e.to_string()))?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

/// An event as it crosses between nodes.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    supervisor: u64,
    agent: Option<u64>,
    public: Option<u64>,
    client_id: Option<String>,
    hash: String,
    event: EventView,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum WireMessage {
    Events {
        node: String,
        conversation_id: ConversationId,
        events: Vec<WireEvent>,
    },
    Notification {
        node: String,
        user_id: UserId,
        notification: Notification,
        /// Absent from a node older than the field: then only supervisors are told, as
        /// the event may be theirs alone.
        #[serde(default = "supervisors_only_if_unknown")]
        supervisors_only: bool,
        /// Absent from a node older than the field: then only sessions of every inbox
        /// are told.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inbox: Option<InboxId>,
    },
    Ephemeral {
        node: String,
        message: Ephemeral,
    },
}

fn supervisors_only_if_unknown() -> bool {
    true
}

/// This deployment's channel names.
struct Channels {
    /// `bc:{deployment}:`
    prefix: String,
}

impl Channels {
    fn new(deployment: &str) -> Channels {
        Channels {
            prefix: format!("bc:{deployment}:"),
        }
    }

    fn topic(&self, topic: &Topic) -> String {
        match topic {
            Topic::Conversation(id) => format!("{}c:{id}", self.prefix),
            Topic::User(id) => format!("{}u:{id}", self.prefix),
        }
    }

    /// Every node subscribes to this one: staff presence for supervisor views.
    fn agents(&self) -> String {
        format!("{}agents", self.prefix)
    }
}

enum Outgoing {
    Events(Vec<Arc<Event>>),
    Notification(UserNotification),
    Ephemeral(Ephemeral),
}

enum Command {
    Subscribe(String, Option<oneshot::Sender<()>>),
    Unsubscribe(String),
}

struct Shared {
    node: String,
    channels: Channels,
    connected: AtomicBool,
    /// Why the broker is degraded, while it is.
    problem: Mutex<Option<String>>,
    /// Channels and how many local users each has.
    watched: Mutex<HashMap<String, usize>>,
    dropped: AtomicU64,
}

impl Shared {
    fn new(node: String, deployment: &str) -> Shared {
        let channels = Channels::new(deployment);
        Shared {
            node,
            connected: AtomicBool::new(false),
            problem: Mutex::new(Some("connecting to Redis".into())),
            watched: Mutex::new(HashMap::from([(channels.agents(), 1)])),
            channels,
            dropped: AtomicU64::new(0),
        }
    }

    fn set_problem(&self, problem: Option<String>) {
        self.connected.store(problem.is_none(), Ordering::Release);
        *self.problem.lock() = problem;
    }
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    commands: mpsc::UnboundedSender<Command>,
    stop: CancellationToken,
}

impl RedisBroker {
    /// Starts the publisher and subscriber tasks. Returns at once; until Redis answers,
    /// the broker reports itself degraded. Messages from other nodes of `deployment`
    /// arrive on the returned receiver.
    pub fn start(
        url: &str,
        deployment: &str,
        node: String,
    ) -> Result<(Arc<RedisBroker>, mpsc::Receiver<Inbound>), BrokerError> {
        let client = redis::Client::open(connection_info(url)?)
            .map_err(|e| BrokerError::Url(e.to_string()))?;
        let shared = Arc::new(Shared::new(node, deployment));
        let (outgoing, outgoing_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::channel(PUBLISH_QUEUE);
        let stop = CancellationToken::new();
        tokio::spawn(publish_loop(
            client.clone(),
            shared.clone(),
            outgoing_rx,
            stop.clone(),
        ));
        tokio::spawn(subscribe_loop(
            client,
            shared.clone(),
            commands_rx,
            inbound_tx,
            stop.clone(),
        ));
        Ok((
            Arc::new(RedisBroker {
                shared,
                outgoing,
                commands,
                stop,
            }),
            inbound_rx,
        ))
    }

    /// Stops both tasks.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    fn queue(&self, message: Outgoing) {
        if self.outgoing.try_send(message).is_err() {
            // The store still has it; other nodes read it back at their next gap.
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn publish(&self, events: &[Arc<Event>], notifications: &[UserNotification]) {
        if !events.is_empty() {
            self.queue(Outgoing::Events(events.to_vec()));
        }
        for notification in notifications {
            self.queue(Outgoing::Notification(notification.clone()));
        }
    }

    fn publish_ephemeral(&self, message: Ephemeral) {
        self.queue(Outgoing::Ephemeral(message));
    }

    async fn watch(&self, topic: Topic) {
        let name = self.shared.channels.topic(&topic);
        let first = {
            let mut watched = self.shared.watched.lock();
            let count = watched.entry(name.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if !first || !self.shared.connected.load(Ordering::Acquire) {
            return;
        }
        let (done, subscribed) = oneshot::channel();
        if self
            .commands
            .send(Command::Subscribe(name, Some(done)))
            .is_ok()
        {
            // Bounded: if Redis is slow to confirm, the resync after a reconnect (or the
            // next event's gap check) still covers this subscription.
            let _ = tokio::time::timeout(Duration::from_secs(2), subscribed).await;
        }
    }

    fn unwatch(&self, topic: Topic) {
        let name = self.shared.channels.topic(&topic);
        let last = {
            let mut watched = self.shared.watched.lock();
            match watched.get_mut(&name) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    watched.remove(&name);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.commands.send(Command::Unsubscribe(name));
        }
    }

    fn status(&self) -> BrokerStatus {
        match self.shared.problem.lock().clone() {
            None => BrokerStatus::Ok,
            Some(problem) => BrokerStatus::Degraded(problem),
        }
    }
}

fn encode(shared: &Shared, message: &Outgoing) -> Vec<(String, Vec<u8>)> {
    let node = &shared.node;
    let channels = &shared.channels;
    match message {
        Outgoing::Events(events) => {
            let mut by_conversation: HashMap<ConversationId, Vec<WireEvent>> = HashMap::new();
            for event in events {
                by_conversation
                    .entry(event.conversation_id)
                    .or_default()
                    .push(WireEvent {
                        supervisor: event.seqs.supervisor,
                        agent: event.seqs.agent,
                        public: event.seqs.public,
                        client_id: event.client_id.clone(),
                        hash: hex::encode(event.hash),
                        event: event.view.clone(),
                    });
            }
            by_conversation
                .into_iter()
                .filter_map(|(conversation_id, events)| {
                    let message = WireMessage::Events {
                        node: node.to_owned(),
                        conversation_id,
                        events,
                    };
                    let bytes = serde_json::to_vec(&message).ok()?;
                    Some((channels.topic(&Topic::Conversation(conversation_id)), bytes))
                })
                .collect()
        }
        Outgoing::Ephemeral(message) => {
            let name = match message {
                Ephemeral::Typing {
                    conversation_id, ..
                }
                | Ephemeral::Viewers {
                    conversation_id, ..
                } => channels.topic(&Topic::Conversation(*conversation_id)),
                Ephemeral::Agent { .. } => channels.agents(),
            };
            let wire = WireMessage::Ephemeral {
                node: node.to_owned(),
                message: message.clone(),
            };
            serde_json::to_vec(&wire)
                .ok()
                .map(|bytes| vec![(name, bytes)])
                .unwrap_or_default()
        }
        Outgoing::Notification(n) => {
            let message = WireMessage::Notification {
                node: node.to_owned(),
                user_id: n.user_id.clone(),
                notification: n.notification.clone(),
                supervisors_only: n.supervisors_only,
                inbox: n.inbox.clone(),
            };
            serde_json::to_vec(&message)
                .ok()
                .map(|bytes| vec![(channels.topic(&Topic::User(n.user_id.clone())), bytes)])
                .unwrap_or_default()
        }
    }
}

fn decode(node: &str, payload: &[u8]) -> Option<Inbound> {
    match serde_json::from_slice::<WireMessage>(payload) {
        Ok(WireMessage::Events {
            node: from,
            conversation_id,
            events,
        }) if from != node => {
            let events = events
                .into_iter()
                .filter_map(|w| {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(&w.hash, &mut hash).ok()?;
                    Some(Arc::new(Event {
                        conversation_id,
                        seqs: Seqs {
                            supervisor: w.supervisor,
                            agent: w.agent,
                            public: w.public,
                        },
                        view: w.event,
                        client_id: w.client_id,
                        hash,
                        view_json: Default::default(),
                    }))
                })
                .collect();
            Some(Inbound::Events(events))
        }
        Ok(WireMessage::Notification {
            node: from,
            user_id,
            notification,
            supervisors_only,
            inbox,
        }) if from != node => Some(Inbound::Notification(UserNotification {
            user_id,
            notification,
            supervisors_only,
            inbox,
        })),
        Ok(WireMessage::Ephemeral {
            node: from,
            message,
        }) if from != node => Some(Inbound::Ephemeral(message)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("unreadable broker message: {e}");
            None
        }
    }
}

async fn publish_loop(
    client: redis::Client,
    shared: Arc<Shared>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            message = outgoing.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let mut batch = encode(&shared, &first);
        while batch.len() < MAX_PIPELINE {
            match outgoing.try_recv() {
                Ok(message) => batch.extend(encode(&shared, &message)),
                Err(_) => break,
            }
        }
        // Retry the batch until it goes out: a short outage delays, it does not lose.
        loop {
            if connection.is_none() {
                match client.get_multiplexed_async_connection().await {
                    Ok(c) => connection = Some(c),
                    Err(e) => tracing::warn!("redis publisher cannot connect: {e}"),
                }
            }
            if let Some(conn) = connection.as_mut() {
                let mut pipe = redis::pipe();
                for (name, payload) in &batch {
                    pipe.publish(name, payload.as_slice()).ignore();
                }
                match pipe.query_async::<()>(conn).await {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("redis publish failed: {e}");
                        connection = None;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

async fn subscribe_loop(
    client: redis::Client,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            pubsub = client.get_async_pubsub() => pubsub,
        };
        let (mut sink, mut stream) = match pubsub {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                shared.set_problem(Some(format!("redis unreachable: {e}")));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let channels: Vec<String> = shared.watched.lock().keys().cloned().collect();
        if !channels.is_empty() {
            if let Err(e) = sink.subscribe(&channels).await {
                shared.set_problem(Some(format!("redis subscribe failed: {e}")));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        shared.set_problem(None);
        backoff = BACKOFF_MIN;
        // Anything published while we were not subscribed is read back from the store.
        if inbound.send(Inbound::Resync).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = stream.next() => {
                    let Some(message) = message else { break };
                    if let Some(message) = decode(&shared.node, message.get_payload_bytes()) {
                        if inbound.send(message).await.is_err() {
                            return;
                        }
                    }
                }
                command = commands.recv() => {
                    // A command may be stale (queued during an outage, then overtaken
                    // by a watch or unwatch): the watched set decides.
                    let result = match command {
                        None => return,
                        Some(Command::Subscribe(name, done)) => {
                            let wanted = shared.watched.lock().contains_key(&name);
                            let result = if wanted { sink.subscribe(&name).await } else { Ok(()) };
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                            result
                        }
                        Some(Command::Unsubscribe(name)) => {
                            let wanted = shared.watched.lock().contains_key(&name);
                            if wanted { Ok(()) } else { sink.unsubscribe(&name).await }
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!("redis subscription change failed: {e}");
                        break;
                    }
                }
            }
        }
        shared.set_problem(Some("redis connection lost; reconnecting".into()));
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_protocol::{Actor, EventData, EventId, Role};

    /// The machine's Redis (CI starts it; a missing Redis fails this test).
    const REDIS: &str = "redis://127.0.0.1:6379";

    #[tokio::test]
    async fn a_watching_node_receives_what_another_publishes() {
        let deployment = uuid::Uuid::new_v4().simple().to_string();
        let (a, _a_inbound) = RedisBroker::start(REDIS, &deployment, "node-a".into()).expect("url");
        let (b, mut b_inbound) =
            RedisBroker::start(REDIS, &deployment, "node-b".into()).expect("url");
        // Each node resyncs once its subscriber connection is up.
        let first = tokio::time::timeout(Duration::from_secs(5), b_inbound.recv())
            .await
            .expect("redis reachable at 127.0.0.1:6379");
        assert!(matches!(first, Some(Inbound::Resync)), "{first:?}");
        let event = sample_event();
        b.watch(Topic::Conversation(event.conversation_id)).await;
        // A publishes until B's subscription is surely active (watch waited for it).
        a.publish(std::slice::from_ref(&event), &[]);
        let received = loop {
            match tokio::time::timeout(Duration::from_secs(5), b_inbound.recv())
                .await
                .expect("message within 5 s")
            {
                Some(Inbound::Ephemeral(_)) => continue,
                other => break other,
            }
        };
        match received {
            Some(Inbound::Events(events)) => assert_eq!(events[0].as_ref(), event.as_ref()),
            _ => panic!("expected the event"),
        }
        assert_eq!(b.status(), BrokerStatus::Ok);
        // After unwatching, nothing more arrives.
        b.unwatch(Topic::Conversation(event.conversation_id));
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.publish(std::slice::from_ref(&event), &[]);
        // Other traffic of the deployment (presence on its agents channel) may arrive; events
        // of the unwatched conversation must not.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, b_inbound.recv()).await {
            assert!(
                !matches!(message, Inbound::Events(_)),
                "no events after unwatch"
            );
        }
        a.shutdown();
        b.shutdown();
    }

    fn sample_event() -> Arc<Event> {
        Arc::new(Event {
            conversation_id: ConversationId::new(),
            seqs: Seqs {
                supervisor: 4,
                agent: Some(3),
                public: None,
            },
            view: EventView {
                id: EventId::new(),
                at: crate::store::now(),
                actor: Actor {
                    id: UserId::from("alice"),
                    role: Role::Agent,
                    name: None,
                },
                data: EventData::Message { body: "x".into() },
            },
            client_id: Some("c".into()),
            hash: [7; 32],
            view_json: Default::default(),
        })
    }

    /// Both connections (publisher and subscriber) are made from this: Nagle's algorithm
    /// off, whatever redis-rs defaults to; the URL's address and database kept; a URL
    /// that is not one is an error, not a panic.
    #[test]
    fn connections_are_made_without_nagle() {
        let info = connection_info("redis://127.0.0.1:6390/3").expect("a Redis URL");
        assert!(info.tcp_settings().nodelay());
        assert_eq!(info.addr().to_string(), "127.0.0.1:6390");
        assert_eq!(info.redis_settings().db(), 3);
        assert!(matches!(
            connection_info("http://not-redis"),
            Err(BrokerError::Url(_))
        ));
    }

    /// Deployments sharing a Redis server must not share a channel: the same user,
    /// conversation or floor gets a different name in each.
    #[test]
    fn every_channel_is_named_within_its_deployment() {
        let (one, two) = (Channels::new("d1"), Channels::new("d2"));
        let user = Topic::User(UserId::from("alice"));
        assert_eq!(one.topic(&user), "bc:d1:u:alice");
        assert_ne!(one.topic(&user), two.topic(&user));
        assert_ne!(one.agents(), two.agents());
        let conversation = Topic::Conversation(ConversationId::new());
        assert_ne!(one.topic(&conversation), two.topic(&conversation));
        let notification = UserNotification {
            user_id: UserId::from("alice"),
            notification: sample_notification(),
            supervisors_only: false,
            inbox: Some(InboxId::from("support")),
        };
        let encoded = encode(
            &Shared::new("a".into(), "d2"),
            &Outgoing::Notification(notification),
        );
        assert_eq!(encoded[0].0, "bc:d2:u:alice");
    }

    fn sample_notification() -> Notification {
        Notification {
            id: 1,
            kind: backchannel_protocol::server::NotificationKind::Mention,
            conversation_id: ConversationId::new(),
            event_id: EventId::new(),
            from: Actor {
                id: UserId::from("walt"),
                role: Role::Agent,
                name: None,
            },
            at: crate::store::now(),
            read: false,
        }
    }

    /// Whether a notification's event is for supervisors only, and its conversation's
    /// inbox, cross nodes with it; from a node that sends neither, it is taken as
    /// supervisors-only and of no known inbox (so shown to sessions of every inbox only),
    /// so an agent is never told of a coaching note, or of a conversation outside their
    /// token's inboxes, during a rolling upgrade.
    #[test]
    fn notifications_carry_their_audience_and_default_to_supervisors() {
        for (supervisors_only, inbox) in [(false, Some("support")), (true, Some("vip"))] {
            let notification = UserNotification {
                user_id: UserId::from("alice"),
                notification: sample_notification(),
                supervisors_only,
                inbox: inbox.map(InboxId::from),
            };
            let encoded = encode(
                &Shared::new("a".into(), "d1"),
                &Outgoing::Notification(notification.clone()),
            );
            match decode("b", &encoded[0].1) {
                Some(Inbound::Notification(decoded)) => assert_eq!(decoded, notification),
                _ => panic!("expected a notification"),
            }
        }
        let older = serde_json::json!({
            "t": "notification",
            "node": "a",
            "user_id": "alice",
            "notification": sample_notification(),
        });
        match decode("b", &serde_json::to_vec(&older).expect("encode")) {
            Some(Inbound::Notification(decoded)) => {
                assert!(decoded.supervisors_only);
                assert_eq!(decoded.inbox, None);
            }
            _ => panic!("expected a notification"),
        }
    }

    #[test]
    fn events_round_trip_and_own_messages_are_ignored() {
        let event = sample_event();
        let encoded = encode(
            &Shared::new("a".into(), "d1"),
            &Outgoing::Events(vec![event.clone()]),
        );
        assert_eq!(encoded.len(), 1);
        assert_eq!(encoded[0].0, format!("bc:d1:c:{}", event.conversation_id));
        assert!(decode("a", &encoded[0].1).is_none(), "own message ignored");
        match decode("b", &encoded[0].1) {
            Some(Inbound::Events(events)) => assert_eq!(events[0].as_ref(), event.as_ref()),
            _ => panic!("expected events"),
        }
    }
}
