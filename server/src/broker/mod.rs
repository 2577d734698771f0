//! The broker: how committed events reach the other nodes of a cluster.
//!
//! The store is the truth and the broker only a hint. After the writer commits, the
//! node delivers to its own sockets directly (through the hub) and hands the same events
//! to [`Broker::publish`]; other nodes receive them as [`Inbound`] messages and give them
//! to their hub, which drops duplicates by `seq` and reads any hole from the store. When
//! the broker connection drops and comes back, the node re-reads every room's head from
//! the store ([`Inbound::Resync`]), so nothing published meanwhile is lost.
//!
//! A node subscribes only to what it serves: a conversation while it has a room for it,
//! a user while that user has a session on it ([`Topic`]).
//!
//! [`LocalBroker`] is the embedded default: one node, nothing to publish to.
//! [`redis::RedisBroker`] is Redis pub/sub.

pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use backchannel_protocol::client::TypingAudience;
use backchannel_protocol::server::{AgentStatus, Viewer};
use backchannel_protocol::{Actor, ConversationId, Role, UserId};
use serde::{Deserialize, Serialize};

use crate::hub::Hub;
use crate::store::writer::CommitListener;
use crate::store::{Event, UserNotification};

/// What a node can subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Conversation(ConversationId),
    User(UserId),
}

/// For `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerStatus {
    Ok,
    /// Writes are still acknowledged and served to local sockets; other nodes will
    /// catch up from the store once the broker is back.
    Degraded(String),
}

/// What one node knows of one staff member: shared so every node can show the whole
/// floor. Expires unless refreshed, so the users of a node that died disappear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSighting {
    pub id: UserId,
    pub name: Option<String>,
    pub role: Role,
    pub status: AgentStatus,
    pub viewing: Vec<ConversationId>,
}

/// Messages that are not stored: presence and typing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Ephemeral {
    Typing {
        conversation_id: ConversationId,
        user: Actor,
        audience: TypingAudience,
    },
    /// A node's viewers of a conversation (replaces that node's previous list).
    Viewers {
        conversation_id: ConversationId,
        node: String,
        viewers: Vec<Viewer>,
        /// The sender has just opened its room for the conversation (or reconnected to
        /// the broker): every node with viewers there publishes its own at once, or the
        /// sender's staff would miss them until the next refresh (a third of the
        /// presence TTL; two agents could both answer without seeing each other).
        #[serde(default)]
        ask: bool,
    },
    /// A node's view of one staff member (replaces that node's previous one).
    Agent { node: String, agent: AgentSighting },
}

/// A message from another node.
#[derive(Debug)]
pub enum Inbound {
    Events(Vec<Arc<Event>>),
    Notification(UserNotification),
    Ephemeral(Ephemeral),
    /// The broker connection was re-established: messages may have been missed.
    Resync,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Queues committed events and notifications for the other nodes. Never waits.
    fn publish(&self, events: &[Arc<Event>], notifications: &[UserNotification]);

    /// Sends presence or typing to the other nodes. Never waits; may drop under load.
    fn publish_ephemeral(&self, message: Ephemeral);

    /// Starts receiving a topic; returns once the subscription is active (or at once if
    /// the broker is down: the resync after reconnecting covers the gap).
    async fn watch(&self, topic: Topic);

    fn unwatch(&self, topic: Topic);

    fn status(&self) -> BrokerStatus;
}

/// One node alone: there is nobody to tell.
pub struct LocalBroker;

#[async_trait]
impl Broker for LocalBroker {
    fn publish(&self, _events: &[Arc<Event>], _notifications: &[UserNotification]) {}

    fn publish_ephemeral(&self, _message: Ephemeral) {}

    async fn watch(&self, _topic: Topic) {}

    fn unwatch(&self, _topic: Topic) {}

    fn status(&self) -> BrokerStatus {
        BrokerStatus::Ok
    }
}

/// What the writer tells after each commit: the local hub first, then the other nodes.
pub struct Fanout {
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
}

impl CommitListener for Fanout {
    fn committed(&self, events: &[Arc<Event>], notifications: &[UserNotification]) {
        self.hub.committed(events, notifications);
        self.broker.publish(events, notifications);
    }
}

/// Feeds messages from other nodes to the hub until the broker stops.
pub async fn pump(mut inbound: tokio::sync::mpsc::Receiver<Inbound>, hub: Arc<Hub>) {
    let hub = &hub;
    while let Some(message) = inbound.recv().await {
        match message {
            Inbound::Events(events) => hub.committed(&events, &[]),
            Inbound::Notification(notification) => hub.notify_from_another_node(notification).await,
            Inbound::Ephemeral(message) => hub.ephemeral(message),
            Inbound::Resync => hub.resync(),
        }
    }
}
