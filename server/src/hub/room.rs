//! One conversation's subscribers on this node, and the order they receive events in.
//!
//! A room keeps the heads of what it has delivered and a small reorder buffer. An event
//! with the next supervisor `seq` is fanned out at once; a duplicate is dropped; one that
//! leaves a hole waits in the buffer while a backfill task reads the hole from the store.
//! Each member also remembers the last `seq` it was given, so an event that reached it by
//! replay is never delivered to it again.
//!
//! Customers and staff are kept in two lists of different types: the customer list holds
//! [`CustomerOutbox`]es, which accept only frames built from public events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use backchannel_protocol::client::TypingAudience;
use backchannel_protocol::server::{SubscribeResult, Viewer};
use backchannel_protocol::{Actor, Audience, ConversationId, UserId, MAX_REPLAY};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{ConnId, Hub, HubError};
use crate::broker::Ephemeral;
use crate::store::{Event, Heads, StoreError};
use crate::visibility::{
    ControlFrame, CustomerFrame, PublicEvent, PublicTyping, StaffAudience, StaffFrame, Typing,
};
use crate::ws::outbox::{CustomerOutbox, StaffOutbox};

/// How long a hole may stay open before it is read from the store: events from other
/// nodes can arrive slightly out of order.
const HOLE_WAIT: Duration = Duration::from_millis(20);
/// Events held while a hole is being filled; beyond that they are dropped and read back
/// from the store with the hole.
const MAX_PENDING: usize = 4096;
/// Events read from the store per step of a replay.
const REPLAY_PAGE: u32 = 500;
/// After a presence frame, how long a room waits before sending the next one for a
/// leave: a burst of leaves (a node's sockets closed at once, a thousand slow consumers
/// cut off) then costs the room's staff one frame per interval, each listing every
/// viewer, instead of one per leave. The presence ticker sends what is pending.
const LEAVE_COALESCE: Duration = Duration::from_millis(200);
/// How long a typing indicator lasts without a new `typing` frame.
pub const TYPING_TTL: Duration = Duration::from_secs(5);

/// Builds the `ok` that answers a `subscribe` once its `head` is known (`None` when the
/// command had no `ref`). The room queues it under the lock that makes the socket live,
/// so it is the line between replay and live: every event before it is at or below its
/// `head`, every event after it above.
pub type SubscribeOk<'a> = &'a (dyn Fn(&SubscribeResult) -> Option<ControlFrame> + Sync);

/// Where a subscriber's frames go, typed by which side of the conversation it is on.
#[derive(Clone)]
pub enum Seat {
    Customer(CustomerOutbox),
    Staff(StaffOutbox),
}

impl Seat {
    pub fn audience(&self) -> Audience {
        match self {
            Seat::Customer(_) => Audience::Customer,
            Seat::Staff(outbox) => outbox.audience().audience(),
        }
    }

    /// Queues the answer to the socket's `subscribe` without waiting (see [`SubscribeOk`]).
    fn answer_now(&self, frame: &ControlFrame) -> bool {
        match self {
            Seat::Customer(outbox) => outbox.answer_now(frame),
            Seat::Staff(outbox) => outbox.answer_now(frame),
        }
    }

    /// Queues one replayed event, waiting for room. False if the socket closed.
    async fn replay(&self, event: Arc<Event>) -> bool {
        match self {
            Seat::Customer(outbox) => match PublicEvent::try_from(event) {
                Ok(public) => outbox.push_wait(&CustomerFrame::event(&public)).await,
                Err(_) => {
                    tracing::error!("a non-public event was read from the public stream");
                    true
                }
            },
            Seat::Staff(outbox) => match StaffFrame::event(&event, outbox.audience()) {
                Some(frame) => outbox.push_wait(&frame).await,
                None => true,
            },
        }
    }
}

struct Member<O> {
    conn: ConnId,
    /// Who is behind the socket, for presence.
    user: Actor,
    outbox: O,
    /// The last `seq` of the member's stream it has been given.
    last_seq: u64,
}

#[derive(Default)]
struct RoomState {
    /// Heads of what this room has delivered; `None` until read from the store.
    heads: Option<Heads>,
    /// Events that arrived ahead of a hole, by supervisor `seq`.
    pending: BTreeMap<u64, Arc<Event>>,
    customers: Vec<Member<CustomerOutbox>>,
    staff: Vec<Member<StaffOutbox>>,
    /// Set when the room is removed from the hub; a join that sees it starts over.
    closed: bool,
    backfilling: bool,
    /// Local sockets typing, until when.
    typing: HashMap<ConnId, (TypingAudience, Instant)>,
    /// Other nodes' viewers, until when they expire.
    remote_viewers: HashMap<String, (Vec<Viewer>, Instant)>,
    /// The viewers last sent to staff (to supervisors; agents were last sent
    /// `shown_to_agents`, which hides supervisors-only typing), and last published to
    /// other nodes.
    shown: Vec<Viewer>,
    shown_to_agents: Vec<Viewer>,
    published: Vec<Viewer>,
    /// The next publication asks the other nodes for their viewers (`Ephemeral::Viewers`'s
    /// `ask`): the room's first, and the first after a broker reconnect.
    ask_others: bool,
    /// When the last presence frame went to staff, and whether a leave since waits for
    /// the ticker (see [`LEAVE_COALESCE`]).
    presence_sent_at: Option<Instant>,
    presence_pending: bool,
}

/// Which staff audiences a presence refresh sent a frame to.
#[derive(Clone, Copy, Default)]
struct PresenceSent {
    agents: bool,
    supervisors: bool,
}

impl PresenceSent {
    fn to(self, audience: StaffAudience) -> bool {
        match audience {
            StaffAudience::Agents => self.agents,
            StaffAudience::Supervisors => self.supervisors,
        }
    }
}

impl RoomState {
    fn is_empty(&self) -> bool {
        self.customers.is_empty() && self.staff.is_empty()
    }

    /// Everyone subscribed on this node, once per user, with whether they are typing.
    fn local_viewers(&self, now: Instant) -> Vec<Viewer> {
        let mut viewers: BTreeMap<UserId, Viewer> = BTreeMap::new();
        let members = self
            .customers
            .iter()
            .map(|m| (m.conn, &m.user))
            .chain(self.staff.iter().map(|m| (m.conn, &m.user)));
        for (conn, user) in members {
            let viewer = viewers.entry(user.id.clone()).or_insert_with(|| Viewer {
                id: user.id.clone(),
                name: user.name.clone(),
                role: user.role,
                typing: false,
                typing_audience: None,
            });
            if let Some((audience, until)) = self.typing.get(&conn) {
                if *until > now {
                    viewer.typing = true;
                    viewer.typing_audience = Some(*audience);
                }
            }
        }
        viewers.into_values().collect()
    }

    /// Recomputes presence; shows it to each staff audience whose view of it changed
    /// (agents get no frame for a change they may not see: an unchanged frame would
    /// itself say something changed), and tells other nodes if this node's part changed
    /// (or `republish`). Returns the audiences that were sent a frame.
    fn refresh_presence(
        &mut self,
        conversation: ConversationId,
        hub: &Hub,
        now: Instant,
        republish: bool,
    ) -> PresenceSent {
        self.presence_pending = false;
        let local = self.local_viewers(now);
        if local != self.published || (republish && !local.is_empty()) {
            hub.broker().publish_ephemeral(Ephemeral::Viewers {
                conversation_id: conversation,
                node: hub.node().to_owned(),
                viewers: local.clone(),
                ask: std::mem::take(&mut self.ask_others),
            });
            self.published = local.clone();
        }
        self.remote_viewers.retain(|_, (_, until)| *until > now);
        let mut all: BTreeMap<UserId, Viewer> =
            local.into_iter().map(|v| (v.id.clone(), v)).collect();
        for (viewers, _) in self.remote_viewers.values() {
            for viewer in viewers {
                let entry = all
                    .entry(viewer.id.clone())
                    .or_insert_with(|| viewer.clone());
                if viewer.typing {
                    entry.typing = true;
                    entry.typing_audience = viewer.typing_audience;
                }
            }
        }
        let all: Vec<Viewer> = all.into_values().collect();
        if all == self.shown {
            return PresenceSent::default();
        }
        let to_agents = StaffAudience::Agents.viewers(&all).into_owned();
        let sent = PresenceSent {
            agents: to_agents != self.shown_to_agents,
            supervisors: true,
        };
        let for_agents = sent
            .agents
            .then(|| StaffFrame::presence(conversation, &all, StaffAudience::Agents));
        let for_supervisors = StaffFrame::presence(conversation, &all, StaffAudience::Supervisors);
        self.staff.retain(|m| match m.outbox.audience() {
            StaffAudience::Agents => for_agents.as_ref().is_none_or(|f| m.outbox.push(f)),
            StaffAudience::Supervisors => m.outbox.push(&for_supervisors),
        });
        self.shown = all;
        self.shown_to_agents = to_agents;
        self.presence_sent_at = Some(now);
        sent
    }

    /// Delivers `event` to every member that has not had it, and moves the heads.
    fn fan_out(&mut self, event: &Arc<Event>) {
        if let Some(heads) = self.heads.as_mut() {
            *heads = heads.after(&event.seqs);
        }
        if !self.customers.is_empty() {
            if let Ok(public) = PublicEvent::try_from(event.clone()) {
                let seq = public.seq();
                let frame = CustomerFrame::event(&public);
                self.customers.retain_mut(|member| {
                    if member.last_seq >= seq {
                        return true;
                    }
                    member.last_seq = seq;
                    member.outbox.push(&frame)
                });
            }
        }
        // Built at most once per staff audience, then shared.
        let mut agents_frame: Option<StaffFrame> = None;
        let mut supervisors_frame: Option<StaffFrame> = None;
        self.staff.retain_mut(|member| {
            let audience = member.outbox.audience();
            let Some(seq) = event.seqs.for_audience(audience.audience()) else {
                return true;
            };
            if member.last_seq >= seq {
                return true;
            }
            let slot = match audience {
                crate::visibility::StaffAudience::Agents => &mut agents_frame,
                crate::visibility::StaffAudience::Supervisors => &mut supervisors_frame,
            };
            if slot.is_none() {
                *slot = StaffFrame::event(event, audience);
            }
            let Some(frame) = slot.as_ref() else {
                return true;
            };
            member.last_seq = seq;
            member.outbox.push(frame)
        });
    }

    /// Delivers buffered events that have become next in line.
    fn drain_pending(&mut self) {
        let Some(mut next) = self.heads.map(|h| h.supervisor + 1) else {
            return;
        };
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() < next {
                entry.remove();
            } else if *entry.key() == next {
                let event = entry.remove();
                self.fan_out(&event);
                next += 1;
            } else {
                break;
            }
        }
    }

    fn buffer(&mut self, event: &Arc<Event>) {
        if self.pending.len() < MAX_PENDING {
            self.pending.insert(event.seqs.supervisor, event.clone());
        }
    }

    /// Supervisor seq range `(after, before)` still missing, if any.
    fn hole(&self) -> Option<(u64, u64)> {
        let head = self.heads?.supervisor;
        let (&first, _) = self.pending.first_key_value()?;
        (first > head + 1).then_some((head, first))
    }
}

pub(super) enum JoinError {
    /// The room emptied and closed while this socket was being replayed to: join the
    /// hub's new room with [`JoinStart::Continue`], so that nothing is replayed twice.
    RoomClosed(JoinStart),
    Hub(HubError),
}

/// Where a join's replay starts.
pub(super) enum JoinStart {
    /// A `subscribe` with this `since`.
    Since(Option<u64>),
    /// A join cut short by its room closing: the socket has been given everything up to
    /// `last`, and `result` already says how the replay began.
    Continue { last: u64, result: SubscribeResult },
}

impl From<HubError> for JoinError {
    fn from(e: HubError) -> Self {
        JoinError::Hub(e)
    }
}

impl From<StoreError> for JoinError {
    fn from(e: StoreError) -> Self {
        JoinError::Hub(HubError::Store(e))
    }
}

pub struct Room {
    id: ConversationId,
    state: Mutex<RoomState>,
    ready: OnceCell<()>,
}

impl Room {
    pub fn new(id: ConversationId) -> Room {
        Room {
            id,
            state: Mutex::new(RoomState {
                ask_others: true,
                ..RoomState::default()
            }),
            ready: OnceCell::new(),
        }
    }

    /// Reads the heads from the store once. The room is already in the hub's map, so
    /// every event committed after this read reaches [`Room::deliver`]; those committed
    /// before are at or below the heads and replayed from the store by each subscriber.
    async fn ensure_ready(self: &Arc<Self>, hub: &Hub) -> Result<(), HubError> {
        self.ready
            .get_or_try_init(|| async {
                // Subscribed before the heads are read: whatever another node commits
                // after the read is published after the subscription is active.
                hub.broker()
                    .watch(crate::broker::Topic::Conversation(self.id))
                    .await;
                let record = hub
                    .store()
                    .conversation(self.id)
                    .await?
                    .ok_or(HubError::NotFound)?;
                let mut state = self.state.lock();
                state.heads = Some(record.heads);
                state.drain_pending();
                self.start_backfill_if_needed(&mut state, hub);
                Ok::<(), HubError>(())
            })
            .await
            .map(|_| ())
    }

    pub(super) async fn join(
        self: &Arc<Self>,
        hub: &Hub,
        conn: ConnId,
        user: Actor,
        seat: Seat,
        start: JoinStart,
        ok: SubscribeOk<'_>,
    ) -> Result<SubscribeResult, JoinError> {
        self.ensure_ready(hub).await?;
        let audience = seat.audience();
        let (mut last, mut result) = match start {
            JoinStart::Continue { last, result } => (last, result),
            JoinStart::Since(since) => {
                let record = hub
                    .store()
                    .conversation(self.id)
                    .await?
                    .ok_or(HubError::NotFound)?;
                let stream_head = record.heads.get(audience);
                let mut result = SubscribeResult {
                    conversation_id: self.id,
                    ..Default::default()
                };
                let mut last = since.unwrap_or(0);
                if last > stream_head {
                    result.reset = true;
                    last = 0;
                }
                if stream_head - last > MAX_REPLAY {
                    last = stream_head - MAX_REPLAY;
                    result.truncated = true;
                    result.replay_from = Some(last + 1);
                }
                (last, result)
            }
        };
        loop {
            {
                let mut state = self.state.lock();
                if state.closed {
                    return Err(JoinError::RoomClosed(JoinStart::Continue { last, result }));
                }
                let delivered = state.heads.map(|h| h.get(audience)).unwrap_or(0);
                if delivered <= last {
                    // Everything the room has delivered, this socket has been given by
                    // replay; from here on it is live, under the same lock as delivery.
                    let answer_to = seat.clone();
                    let new_staff = match seat {
                        Seat::Customer(outbox) => {
                            state.customers.push(Member {
                                conn,
                                user,
                                outbox,
                                last_seq: last,
                            });
                            None
                        }
                        Seat::Staff(outbox) => {
                            state.staff.push(Member {
                                conn,
                                user,
                                outbox: outbox.clone(),
                                last_seq: last,
                            });
                            Some(outbox)
                        }
                    };
                    let sent = state.refresh_presence(self.id, hub, Instant::now(), false);
                    if let Some(outbox) = new_staff.filter(|o| !sent.to(o.audience())) {
                        // Nothing changed for the others; the newcomer still needs it.
                        outbox.push(&StaffFrame::presence(
                            self.id,
                            &state.shown,
                            outbox.audience(),
                        ));
                    }
                    result.head = last;
                    // Still under the lock: no live event can be queued ahead of the ok.
                    if let Some(frame) = ok(&result) {
                        answer_to.answer_now(&frame);
                    }
                    return Ok(result);
                }
            }
            let events = hub
                .store()
                .events_after(self.id, audience, last, REPLAY_PAGE)
                .await?;
            if events.is_empty() {
                // Delivery follows commit, so the store holds whatever the room delivered.
                return Err(StoreError::Corrupt(format!(
                    "conversation {} delivered past its stored head",
                    self.id
                ))
                .into());
            }
            for event in events {
                let Some(seq) = event.seqs.for_audience(audience) else {
                    continue;
                };
                if !seat.replay(Arc::new(event)).await {
                    return Err(HubError::SocketClosed.into());
                }
                last = seq;
            }
        }
    }

    /// The supervisor `seq` this room has delivered up to, once it knows it.
    pub fn delivered_head(&self) -> Option<u64> {
        self.state.lock().heads.map(|h| h.supervisor)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.initialized()
    }

    /// Reads and delivers everything the store holds past what this room delivered.
    pub fn catch_up(self: &Arc<Self>, hub: &Hub) {
        let room = self.clone();
        let store = hub.store().clone();
        hub.tasks().spawn(async move {
            loop {
                let Some(after) = room.state.lock().heads.map(|h| h.supervisor) else {
                    return;
                };
                match store
                    .events_after(room.id, Audience::Supervisors, after, REPLAY_PAGE)
                    .await
                {
                    Ok(events) => {
                        let full = events.len() == REPLAY_PAGE as usize;
                        let mut state = room.state.lock();
                        for event in events {
                            let next = state.heads.map(|h| h.supervisor + 1);
                            if Some(event.seqs.supervisor) == next {
                                state.fan_out(&Arc::new(event));
                            }
                        }
                        state.drain_pending();
                        if !full {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(conversation = %room.id, "catch-up failed: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }

    pub fn remove_member(&self, hub: &Hub, conn: ConnId) {
        let mut state = self.state.lock();
        state.customers.retain(|m| m.conn != conn);
        state.staff.retain(|m| m.conn != conn);
        state.typing.remove(&conn);
        let now = Instant::now();
        if state
            .presence_sent_at
            .is_some_and(|sent| now.duration_since(sent) < LEAVE_COALESCE)
        {
            state.presence_pending = true;
        } else {
            state.refresh_presence(self.id, hub, now, false);
        }
    }

    /// Adds the sockets of staff subscribed here on this node (what they are viewing, for
    /// the floor) to `out`, each with this conversation.
    pub fn local_staff(&self, out: &mut Vec<(ConnId, ConversationId)>) {
        let state = self.state.lock();
        out.extend(state.staff.iter().map(|m| (m.conn, self.id)));
    }

    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// Another node's viewers of this conversation; if it `ask`s, this node's in return.
    pub fn remote_viewers(&self, hub: &Hub, node: String, viewers: Vec<Viewer>, ask: bool) {
        let now = Instant::now();
        let mut state = self.state.lock();
        if viewers.is_empty() {
            state.remote_viewers.remove(&node);
        } else {
            state
                .remote_viewers
                .insert(node, (viewers, now + hub.presence_ttl()));
        }
        state.refresh_presence(self.id, hub, now, ask);
    }

    /// Publishes this node's viewers asking the others for theirs (after a broker
    /// reconnect: what they published meanwhile was missed).
    pub fn ask_for_viewers(&self, hub: &Hub) {
        let mut state = self.state.lock();
        state.ask_others = true;
        state.refresh_presence(self.id, hub, Instant::now(), true);
    }

    /// Expires typing indicators and other nodes' viewers; `republish` refreshes this
    /// node's viewers on the other nodes before they expire there.
    pub fn tick(&self, hub: &Hub, now: Instant, republish: bool) {
        let mut state = self.state.lock();
        if !republish
            && !state.presence_pending
            && state.typing.is_empty()
            && state.remote_viewers.is_empty()
        {
            // Nothing can have expired: skip the work (this runs for every room, often).
            return;
        }
        state.typing.retain(|_, (_, until)| *until > now);
        state.refresh_presence(self.id, hub, now, republish);
    }

    /// Marks the room closed if nobody is in it; the hub then drops it.
    pub fn close_if_empty(&self) -> bool {
        let mut state = self.state.lock();
        if state.is_empty() {
            state.closed = true;
        }
        state.closed
    }

    /// Delivers one committed event, in order, once.
    pub fn deliver(self: &Arc<Self>, hub: &Hub, event: &Arc<Event>) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        let Some(heads) = state.heads else {
            state.buffer(event);
            return;
        };
        let seq = event.seqs.supervisor;
        if seq <= heads.supervisor {
            return;
        }
        if seq == heads.supervisor + 1 {
            state.fan_out(event);
            state.drain_pending();
        } else {
            state.buffer(event);
            self.start_backfill_if_needed(&mut state, hub);
        }
    }

    fn start_backfill_if_needed(self: &Arc<Self>, state: &mut RoomState, hub: &Hub) {
        if state.backfilling || state.hole().is_none() {
            return;
        }
        state.backfilling = true;
        let room = self.clone();
        let store = hub.store().clone();
        hub.tasks().spawn(async move {
            tokio::time::sleep(HOLE_WAIT).await;
            loop {
                let hole = {
                    let mut state = room.state.lock();
                    let hole = if state.closed { None } else { state.hole() };
                    if hole.is_none() {
                        state.backfilling = false;
                        return;
                    }
                    hole
                };
                let Some((after, before)) = hole else { return };
                let limit = u32::try_from(before - after - 1).unwrap_or(u32::MAX);
                match store
                    .events_after(room.id, Audience::Supervisors, after, limit)
                    .await
                {
                    Ok(events) => {
                        let progressed = {
                            let mut state = room.state.lock();
                            let before = state.heads;
                            for event in events {
                                let next = state.heads.map(|h| h.supervisor + 1);
                                if Some(event.seqs.supervisor) == next {
                                    state.fan_out(&Arc::new(event));
                                }
                            }
                            state.drain_pending();
                            state.heads != before
                        };
                        if !progressed {
                            // Not visible to this reader yet: try again shortly.
                            tokio::time::sleep(HOLE_WAIT).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(conversation = %room.id, "backfill failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }

    /// Relays a typing indicator to the others here; `from` is the local typist, if the
    /// indicator was not relayed from another node.
    pub fn typing(&self, hub: &Hub, from: Option<ConnId>, typing: Typing) {
        let mut state = self.state.lock();
        let from = match from {
            Some(conn) => {
                let now = Instant::now();
                state
                    .typing
                    .insert(conn, (typing.audience, now + TYPING_TTL));
                state.refresh_presence(self.id, hub, now, false);
                conn
            }
            None => ConnId::NOBODY,
        };
        let for_agents = StaffFrame::typing(&typing, StaffAudience::Agents);
        let for_supervisors = StaffFrame::typing(&typing, StaffAudience::Supervisors);
        state.staff.retain(|m| {
            let frame = match m.outbox.audience() {
                StaffAudience::Agents => &for_agents,
                StaffAudience::Supervisors => &for_supervisors,
            };
            match frame {
                Some(frame) if m.conn != from => m.outbox.push(frame),
                _ => true,
            }
        });
        if let Ok(public) = PublicTyping::try_from(typing) {
            let frame = CustomerFrame::typing(&public);
            state
                .customers
                .retain(|m| m.conn == from || m.outbox.push(&frame));
        }
    }
}
