//! The hub: one [`Room`] per conversation that has subscribers on this node.
//!
//! The writer calls [`Hub::committed`] with every batch of durable events, in commit
//! order; the hub hands each to its room, which delivers it to each subscriber once, in
//! `seq` order, serialized once per audience. `subscribe` replays from the store and then
//! registers the socket under the room's lock, so no event falls between replay and live.
//! A room that sees a hole in the supervisor `seq` (an event it was never handed) reads
//! the hole from the store: the store is the truth, delivery is only a hint.

pub mod agents;
pub mod room;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use std::time::Duration;

use backchannel_protocol::server::{AgentPresence, AgentStatus, SubscribeResult};
use backchannel_protocol::{Actor, ConversationId, UserId};
use dashmap::DashMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use room::{Room, Seat, SubscribeOk};

use crate::auth::InboxScope;
use crate::broker::{Broker, Ephemeral, Topic};
use crate::store::{Event, Store, StoreError, UserNotification};
use crate::visibility::{StaffFrame, Typing};
use crate::ws::outbox::StaffOutbox;

/// Identifies one socket on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl ConnId {
    /// No socket: the sender of something relayed from another node.
    pub const NOBODY: ConnId = ConnId(0);

    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One of a staff user's sockets, and what may be shown on it.
struct StaffSocket {
    conn: ConnId,
    actor: Actor,
    /// The inboxes its token names: a notification of a conversation in another inbox is
    /// not shown on it (the user's other token may name that inbox).
    inboxes: InboxScope,
    outbox: StaffOutbox,
}

/// One staff user's sockets on this node.
struct UserSessions {
    sockets: Vec<StaffSocket>,
    /// When the oldest open socket registered: notifications from then on are theirs to
    /// receive live, and are re-read from the store after a broker outage.
    since: time::OffsetDateTime,
    /// Ids of notifications recently delivered, so one that arrives twice (live and by a
    /// catch-up) is shown once.
    delivered: std::collections::VecDeque<u64>,
}

/// Notifications read per page when a node catches its sessions up after a broker
/// reconnect.
const CATCH_UP_PAGE: u32 = 500;

/// Notification ids remembered per user against double delivery.
const DELIVERED_MEMORY: usize = 256;

/// Presence settings of a node.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// This node's id, in what it shares with the others.
    pub node: String,
    /// How long another node's presence is believed without a refresh.
    pub presence_ttl: Duration,
    /// A connected staff member without a command for this long is `away`.
    pub away_after: Duration,
    /// With other nodes: how often every room compares its head with the store, so an
    /// event whose publication was lost (its node died between commit and publish) is
    /// still delivered. `None` on a single node, where nothing can be lost that way.
    pub reconcile_every: Option<Duration>,
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
    sessions: DashMap<UserId, UserSessions>,
    agents: agents::AgentBoard,
    settings: HubSettings,
    store: Arc<dyn Store>,
    /// Where this node says which conversations and users it serves.
    broker: Arc<dyn Broker>,
    /// Backfill tasks, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Broker>, settings: HubSettings) -> Hub {
        Hub {
            rooms: DashMap::new(),
            sessions: DashMap::new(),
            agents: agents::AgentBoard::default(),
            settings,
            store,
            broker,
            tasks: TaskTracker::new(),
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.settings.node
    }

    pub(crate) fn presence_ttl(&self) -> Duration {
        self.settings.presence_ttl
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
        user: Actor,
        seat: Seat,
        since: Option<u64>,
        ok: SubscribeOk<'_>,
    ) -> Result<SubscribeResult, HubError> {
        if let Some(room) = self.rooms.get(&conversation).map(|r| r.clone()) {
            room.remove_member(self, conn);
        }
        let mut start = room::JoinStart::Since(since);
        loop {
            let room = self
                .rooms
                .entry(conversation)
                .or_insert_with(|| Arc::new(Room::new(conversation)))
                .clone();
            match room
                .join(self, conn, user.clone(), seat.clone(), start, ok)
                .await
            {
                Ok(result) => return Ok(result),
                // The room emptied and closed meanwhile: go on in the new one from where
                // the replay got to.
                Err(room::JoinError::RoomClosed(progress)) => start = progress,
                Err(room::JoinError::Hub(e)) => {
                    self.forget_if_empty(conversation);
                    return Err(e);
                }
            }
        }
    }

    pub fn unsubscribe(&self, conversation: ConversationId, conn: ConnId) {
        if let Some(room) = self.rooms.get(&conversation).map(|r| r.clone()) {
            room.remove_member(self, conn);
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
    pub async fn register_session(
        &self,
        user: Actor,
        inboxes: InboxScope,
        conn: ConnId,
        outbox: StaffOutbox,
    ) {
        self.broker.watch(Topic::User(user.id.clone())).await;
        self.agents.touch(&user.id);
        self.sessions
            .entry(user.id.clone())
            .or_insert_with(|| UserSessions {
                // Most users have one socket open: a first push would reserve four.
                sockets: Vec::with_capacity(1),
                since: crate::store::now(),
                delivered: std::collections::VecDeque::new(),
            })
            .sockets
            .push(StaffSocket {
                conn,
                actor: user,
                inboxes,
                outbox,
            });
    }

    /// A staff member did something: they are not away.
    pub fn touch(&self, user: &UserId) {
        self.agents.touch(user);
    }

    pub fn unregister_session(&self, user: &UserId, conn: ConnId) {
        let mut found = false;
        if let Some(mut sessions) = self.sessions.get_mut(user) {
            let before = sessions.sockets.len();
            sessions.sockets.retain(|socket| socket.conn != conn);
            found = sessions.sockets.len() < before;
        }
        self.sessions
            .remove_if(user, |_, sessions| sessions.sockets.is_empty());
        if found {
            self.broker.unwatch(Topic::User(user.clone()));
        }
    }

    /// Every room re-reads the store past what it has delivered: called when messages
    /// from other nodes may have been missed (the broker reconnected).
    pub fn resync(self: &Arc<Self>) {
        let rooms: Vec<Arc<Room>> = self.rooms.iter().map(|r| r.value().clone()).collect();
        for room in rooms {
            room.catch_up(self);
            // Viewers published while this node was cut off were missed too.
            room.ask_for_viewers(self);
        }
        // Notifications published meanwhile are in the store too.
        // Where each user's catch-up starts: the session's start, and past the ids the
        // node may no longer remember delivering (`delivered` keeps the newest
        // DELIVERED_MEMORY): a missed notification is newer than those.
        let users: Vec<(UserId, time::OffsetDateTime, u64)> = self
            .sessions
            .iter()
            .map(|entry| {
                let sessions = entry.value();
                let forgotten = if sessions.delivered.len() == DELIVERED_MEMORY {
                    sessions.delivered.iter().min().map_or(0, |id| id - 1)
                } else {
                    0
                };
                (entry.key().clone(), sessions.since, forgotten)
            })
            .collect();
        let hub = self.clone();
        self.tasks.spawn(async move {
            for (user, since, forgotten) in users {
                // Every one written since the session opened, page by page: a node cut
                // off for long may have missed more than any fixed number. (`notify`
                // skips those already delivered.)
                let mut after = forgotten;
                loop {
                    let page = match hub
                        .store
                        .notifications_since(&user, since, after, CATCH_UP_PAGE)
                        .await
                    {
                        Ok(page) => page,
                        Err(e) => {
                            tracing::warn!(user = %user, "notification catch-up failed: {e}");
                            break;
                        }
                    };
                    let full = page.len() == CATCH_UP_PAGE as usize;
                    for notification in page {
                        after = notification.notification.id;
                        hub.notify(&notification);
                    }
                    if !full {
                        break;
                    }
                }
            }
        });
    }

    /// Compares every room's head with the store and catches up the ones behind.
    async fn reconcile(&self) {
        let rooms: Vec<Arc<Room>> = self.rooms.iter().map(|r| r.value().clone()).collect();
        let ids: Vec<ConversationId> = rooms.iter().map(|r| r.id()).collect();
        for chunk in ids.chunks(500) {
            match self.store.supervisor_heads(chunk).await {
                Ok(heads) => {
                    let heads: HashMap<ConversationId, u64> = heads.into_iter().collect();
                    for room in &rooms {
                        if let Some(&head) = heads.get(&room.id()) {
                            if room
                                .delivered_head()
                                .is_some_and(|delivered| delivered < head)
                            {
                                room.catch_up(self);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("reconcile failed: {e}"),
            }
        }
    }

    /// Delivers a notification another node wrote. One from a node older than
    /// `UserNotification::inbox` does not name its conversation's inbox: it is read from
    /// the store (the conversation's inbox never changes), so scoped sessions still get
    /// it live during a rolling upgrade; if the read fails, only sessions of every inbox
    /// are told, and the others find it in `GET /v1/notifications`.
    pub async fn notify_from_another_node(&self, mut notification: UserNotification) {
        if notification.inbox.is_none() {
            match self
                .store
                .conversation(notification.notification.conversation_id)
                .await
            {
                Ok(Some(record)) => notification.inbox = Some(record.inbox_id),
                Ok(None) => {}
                Err(e) => tracing::warn!("reading a notification's inbox failed: {e}"),
            }
        }
        self.notify(&notification);
    }

    /// Delivers a notification to every open session of its user on this node that may
    /// read its event: one of a supervisors-only event to supervisor and admin sessions
    /// only, and one of a conversation to sessions whose token names its inbox, as a
    /// user's sockets may carry different roles and inboxes (a supervisor demoted since
    /// the note was written, or one token of each). One whose inbox is not known (from a
    /// node older than the field) reaches only sessions of every inbox.
    pub fn notify(&self, notification: &UserNotification) {
        if let Some(mut sessions) = self.sessions.get_mut(&notification.user_id) {
            let id = notification.notification.id;
            if sessions.delivered.contains(&id) {
                return;
            }
            if sessions.delivered.len() == DELIVERED_MEMORY {
                sessions.delivered.pop_front();
            }
            sessions.delivered.push_back(id);
            let frame = StaffFrame::notification(&notification.notification);
            for socket in sessions.sockets.iter() {
                if notification.supervisors_only && !socket.actor.role.can_write_supervisor_notes()
                {
                    continue;
                }
                let inbox_allowed = match &notification.inbox {
                    Some(inbox) => socket.inboxes.allows(inbox),
                    None => socket.inboxes == InboxScope::All,
                };
                if inbox_allowed {
                    socket.outbox.push(&frame);
                }
            }
        }
    }

    /// Shows a typing indicator to the conversation's other subscribers, on every node.
    pub fn typing(&self, from: ConnId, typing: Typing) {
        self.broker.publish_ephemeral(Ephemeral::Typing {
            conversation_id: typing.conversation_id,
            user: typing.user.clone(),
            audience: typing.audience,
        });
        if let Some(room) = self.rooms.get(&typing.conversation_id).map(|r| r.clone()) {
            room.typing(self, Some(from), typing);
        }
    }

    /// Presence and typing from another node.
    pub fn ephemeral(&self, message: Ephemeral) {
        match message {
            Ephemeral::Typing {
                conversation_id,
                user,
                audience,
            } => {
                if let Some(room) = self.rooms.get(&conversation_id).map(|r| r.clone()) {
                    let typing = Typing {
                        conversation_id,
                        user,
                        audience,
                    };
                    room.typing(self, None, typing);
                }
            }
            Ephemeral::Viewers {
                conversation_id,
                node,
                viewers,
                ask,
            } => {
                if let Some(room) = self.rooms.get(&conversation_id).map(|r| r.clone()) {
                    room.remote_viewers(self, node, viewers, ask);
                }
            }
            Ephemeral::Agent { node, agent } => {
                let until = Instant::now() + self.settings.presence_ttl;
                self.agents.sighted(node, agent, until);
            }
        }
    }

    /// Starts sending `agent_presence` changes to a supervisor's socket, and returns the
    /// current floor: every staff member in the directory, with their presence.
    pub async fn watch_agents(
        &self,
        conn: ConnId,
        outbox: StaffOutbox,
    ) -> Result<Vec<AgentPresence>, HubError> {
        self.agents.watch(conn, outbox);
        self.agents_snapshot().await
    }

    pub fn unwatch_agents(&self, conn: ConnId) {
        self.agents.unwatch(conn);
    }

    /// Every staff member in the directory with their presence across the cluster.
    pub async fn agents_snapshot(&self) -> Result<Vec<AgentPresence>, HubError> {
        let mut presence = self.agents.presence();
        let mut out = Vec::new();
        for entry in self.store.directory().await? {
            let mut agent = presence.remove(&entry.id).unwrap_or(AgentPresence {
                id: entry.id.clone(),
                name: entry.name.clone(),
                role: entry.role,
                status: AgentStatus::Offline,
                viewing: Vec::new(),
                open_conversations: 0,
            });
            agent.open_conversations = self.store.open_assignments(&entry.id).await?;
            out.push(agent);
        }
        Ok(out)
    }

    /// Four times a second until `stop`: expires typing and other nodes' presence, refreshes
    /// this node's presence on the others (every third of the TTL), and shows
    /// supervisors what changed on the floor.
    pub async fn run_presence(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        let republish_every = (self.settings.presence_ttl.as_millis() / 3 / 250).max(1) as u64;
        let mut count: u64 = 0;
        let mut viewers: Vec<(ConnId, ConversationId)> = Vec::new();
        let mut viewing: Vec<ConversationId> = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            count += 1;
            let republish = count.is_multiple_of(republish_every);
            let now = Instant::now();
            if let Some(every) = self.settings.reconcile_every {
                let every_ticks = (every.as_millis() / 250).max(1) as u64;
                if count.is_multiple_of(every_ticks) {
                    self.reconcile().await;
                }
            }
            let rooms: Vec<Arc<Room>> = self.rooms.iter().map(|r| r.value().clone()).collect();
            for room in &rooms {
                room.tick(&self, now, republish);
            }
            // The floor changes at human pace: once a second is enough.
            if !count.is_multiple_of(4) && !republish {
                continue;
            }
            // Who views what, by socket: kept from tick to tick with their allocations,
            // like the board's own state, so a floor that did not change allocates
            // nothing here.
            viewers.clear();
            for room in &rooms {
                room.local_staff(&mut viewers);
            }
            viewers.sort_unstable();
            let (sightings, mut changed) =
                self.agents
                    .tick(now, self.settings.away_after, republish, |visit| {
                        for entry in self.sessions.iter() {
                            let sockets = &entry.value().sockets;
                            let Some(StaffSocket { actor, .. }) = sockets.first() else {
                                continue;
                            };
                            viewing.clear();
                            for StaffSocket { conn, .. } in sockets {
                                let first = viewers.partition_point(|(c, _)| c < conn);
                                viewing.extend(
                                    viewers[first..]
                                        .iter()
                                        .take_while(|(c, _)| c == conn)
                                        .map(|(_, conversation)| *conversation),
                                );
                            }
                            visit(actor, &viewing);
                        }
                    });
            for agent in sightings {
                self.broker.publish_ephemeral(Ephemeral::Agent {
                    node: self.settings.node.clone(),
                    agent,
                });
            }
            if changed.is_empty() {
                continue;
            }
            for agent in &mut changed {
                match self.store.open_assignments(&agent.id).await {
                    Ok(count) => agent.open_conversations = count,
                    Err(e) => tracing::warn!("cannot count assignments: {e}"),
                }
            }
            self.agents.show(&changed);
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
