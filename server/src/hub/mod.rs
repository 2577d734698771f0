//! The hub: one [`Room`] per conversation that has subscribers on this node.
//!
//! The writer calls [`Hub::committed`] with every batch of durable events, in commit
//! order; the hub hands each to its room, which delivers it to each subscriber once, in
//! `seq` order, serialized once per audience. `subscribe` replays from the store and then
//! registers the socket under the room's lock, so no event falls between replay and live.
//! A room that sees a hole in the supervisor `seq` (an event it was never handed) reads
//! the hole from the store: the store is the truth, delivery is only a hint.

pub mod room;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backchannel_protocol::server::SubscribeResult;
use backchannel_protocol::{ConversationId, UserId};
use dashmap::DashMap;
use tokio_util::task::TaskTracker;

pub use room::{Room, Seat};

use crate::broker::{Broker, Topic};
use crate::store::{Event, Store, StoreError, UserNotification};
use crate::visibility::{StaffFrame, Typing};
use crate::ws::outbox::StaffOutbox;

/// Identifies one socket on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("conversation not found")]
    NotFound,
    /// The socket closed while its replay was being queued.
    #[error("socket closed")]
    SocketClosed,
}

pub struct Hub {
    rooms: DashMap<ConversationId, Arc<Room>>,
    /// Open staff sessions by user, for notifications. Customers are never here: the
    /// map holds staff outboxes only.
    sessions: DashMap<UserId, Vec<(ConnId, StaffOutbox)>>,
    store: Arc<dyn Store>,
    /// Where this node says which conversations and users it serves.
    broker: Arc<dyn Broker>,
    /// Backfill tasks, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Broker>) -> Hub {
        Hub {
            rooms: DashMap::new(),
            sessions: DashMap::new(),
            store,
            broker,
            tasks: TaskTracker::new(),
        }
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Replays `since` onwards into the seat, then makes the subscription live. Called
    /// again for a conversation the socket is subscribed to, it replaces the subscription.
    pub async fn subscribe(
        &self,
        conversation: ConversationId,
        conn: ConnId,
        seat: Seat,
        since: Option<u64>,
    ) -> Result<SubscribeResult, HubError> {
        if let Some(room) = self.rooms.get(&conversation).map(|r| r.clone()) {
            room.remove_member(conn);
        }
        loop {
            let room = self
                .rooms
                .entry(conversation)
                .or_insert_with(|| Arc::new(Room::new(conversation)))
                .clone();
            match room.join(self, conn, seat.clone(), since).await {
                Ok(result) => return Ok(result),
                // The room emptied and closed meanwhile: take the new one.
                Err(room::JoinError::RoomClosed) => continue,
                Err(room::JoinError::Hub(e)) => {
                    self.forget_if_empty(conversation);
                    return Err(e);
                }
            }
        }
    }

    pub fn unsubscribe(&self, conversation: ConversationId, conn: ConnId) {
        if let Some(room) = self.rooms.get(&conversation).map(|r| r.clone()) {
            room.remove_member(conn);
            self.forget_if_empty(conversation);
        }
    }

    fn forget_if_empty(&self, conversation: ConversationId) {
        let removed = self
            .rooms
            .remove_if(&conversation, |_, room| room.close_if_empty());
        if let Some((_, room)) = removed {
            if room.is_ready() {
                self.broker.unwatch(Topic::Conversation(conversation));
            }
        }
    }

    /// Registers a staff session to receive the user's notifications, from any node.
    pub async fn register_session(&self, user: &UserId, conn: ConnId, outbox: StaffOutbox) {
        self.broker.watch(Topic::User(user.clone())).await;
        self.sessions
            .entry(user.clone())
            .or_default()
            .push((conn, outbox));
    }

    pub fn unregister_session(&self, user: &UserId, conn: ConnId) {
        let mut found = false;
        if let Some(mut sessions) = self.sessions.get_mut(user) {
            let before = sessions.len();
            sessions.retain(|(c, _)| *c != conn);
            found = sessions.len() < before;
        }
        self.sessions
            .remove_if(user, |_, sessions| sessions.is_empty());
        if found {
            self.broker.unwatch(Topic::User(user.clone()));
        }
    }

    /// Every room re-reads the store past what it has delivered: called when messages
    /// from other nodes may have been missed (the broker reconnected).
    pub fn resync(&self) {
        let rooms: Vec<Arc<Room>> = self.rooms.iter().map(|r| r.value().clone()).collect();
        for room in rooms {
            room.catch_up(self);
        }
    }

    /// Delivers a notification to every open session of its user on this node.
    pub fn notify(&self, notification: &UserNotification) {
        if let Some(sessions) = self.sessions.get(&notification.user_id) {
            let frame = StaffFrame::notification(&notification.notification);
            for (_, outbox) in sessions.iter() {
                outbox.push(&frame);
            }
        }
    }

    /// Shows a typing indicator to the conversation's other subscribers on this node.
    pub fn typing(&self, from: ConnId, typing: Typing) {
        if let Some(room) = self.rooms.get(&typing.conversation_id).map(|r| r.clone()) {
            room.typing(from, typing);
        }
    }

    /// Waits for backfill tasks (at shutdown).
    pub async fn shutdown(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    #[cfg(test)]
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

impl Hub {
    /// Delivers committed events (from this node's writer or another node) to the rooms
    /// on this node, and notifications to their users' sessions.
    pub fn committed(&self, events: &[Arc<Event>], notifications: &[UserNotification]) {
        for event in events {
            let room = self.rooms.get(&event.conversation_id).map(|r| r.clone());
            if let Some(room) = room {
                room.deliver(self, event);
            }
        }
        for notification in notifications {
            self.notify(notification);
        }
    }
}
