//! A socket's bounded send queue.
//!
//! Rooms push shared frames with [`CustomerOutbox::push`] / [`StaffOutbox::push`], which
//! never wait: if the queue is full, the reader has stopped reading, and the socket is
//! closed with 4008 rather than letting memory grow (the client resumes with `since`).
//! The socket's own task pushes replies and replays with the `*_wait` variants, which
//! wait for room instead, and leave a quarter of the queue free while they do: a live
//! frame arriving in the middle of a long replay must find room, or a client that reads
//! perfectly well would be closed as slow. They wait for the reader's progress, not
//! forever: if nothing at all is written for the stall limit (two heartbeat intervals),
//! the reader has stopped, and the socket is closed with 4008 too. Without that limit a
//! client that sends commands (or subscribes to a long history) and never reads held its
//! task, its connection slot and the node's shutdown for as long as it stayed connected.
//! The socket's task empties the queue into the socket ([`super::socket::Socket`])
//! through the [`OutboxReceiver`].
//!
//! The raw queue is private to this module: what reaches a customer's socket is decided
//! by which typed outbox the socket was given (see [`crate::visibility`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use backchannel_protocol::close_code;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Identity;
use crate::metrics::Metrics;
use crate::visibility::{ControlFrame, CustomerFrame, SharedFrame, StaffAudience, StaffFrame};

/// Queue slots kept allocated once a burst has drained: none, an idle socket holds no
/// queue memory at all (a burst allocates again, once).
const KEPT_QUEUE_SLOTS: usize = 0;

/// Why a socket is being closed, which decides the close code and whether what is still
/// queued is sent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or went away: nothing more to send.
    ClientGone,
    /// The server is shutting down: send what is queued, then 1001.
    GoingAway,
    /// A frame over the size limit: 1009.
    TooBig,
    /// A frame that breaks the WebSocket protocol: 1002.
    ProtocolError,
    /// A text frame that is not UTF-8: 1007.
    InvalidPayload,
    /// No valid `hello`: 4001.
    Unauthorized,
    /// Silent for two heartbeat intervals: 4002.
    HeartbeatTimeout,
    /// The send queue overflowed: 4008, dropping what is queued.
    SlowConsumer,
    /// The user has the most sockets a node allows: 4029.
    TooManySockets,
}

impl CloseReason {
    /// The close frame's code and reason; `None` when no close frame is sent.
    pub(super) fn code(self) -> Option<(u16, &'static str)> {
        match self {
            CloseReason::ClientGone => None,
            CloseReason::GoingAway => Some((close_code::GOING_AWAY, "server shutting down")),
            CloseReason::TooBig => Some((close_code::TOO_BIG, "frame too large")),
            CloseReason::ProtocolError => {
                Some((close_code::PROTOCOL_ERROR, "websocket protocol error"))
            }
            CloseReason::InvalidPayload => {
                Some((close_code::INVALID_PAYLOAD, "text frame is not UTF-8"))
            }
            CloseReason::Unauthorized => Some((close_code::UNAUTHORIZED, "unauthorized")),
            CloseReason::HeartbeatTimeout => {
                Some((close_code::HEARTBEAT_TIMEOUT, "heartbeat timeout"))
            }
            CloseReason::SlowConsumer => Some((close_code::SLOW_CONSUMER, "send queue overflow")),
            CloseReason::TooManySockets => Some((
                close_code::TOO_MANY_SOCKETS,
                "too many sockets for this user",
            )),
        }
    }

    fn as_u16(self) -> u16 {
        self as u16 + 1
    }

    fn from_u16(v: u16) -> Option<CloseReason> {
        use CloseReason::*;
        [
            ClientGone,
            GoingAway,
            TooBig,
            ProtocolError,
            InvalidPayload,
            Unauthorized,
            HeartbeatTimeout,
            SlowConsumer,
            TooManySockets,
        ]
        .into_iter()
        .find(|r| r.as_u16() == v)
    }
}

/// A frame waiting in an outbox.
#[derive(Debug)]
pub enum Outgoing {
    /// A JSON text frame: the same bytes for every socket it is queued for.
    Text(Utf8Bytes),
    /// A heartbeat ping.
    Ping,
}

struct Shared {
    /// The frames waiting for the writer. A `VecDeque` rather than a channel because it
    /// allocates only once something is queued, and gives its memory back when drained:
    /// most connections are idle most of the time (a channel cost ~2 KiB each, always).
    queue: Mutex<VecDeque<Outgoing>>,
    /// Most frames queued at once.
    capacity: usize,
    /// Woken when a frame is queued: the socket's task.
    queued: AtomicWaker,
    /// The node is shutting down: the socket's task closes the socket with 1001 once the
    /// command in progress has its answer queued.
    shutdown: AtomicBool,
    /// Signalled after every flush, for the `*_wait` pushes.
    drained: tokio::sync::Notify,
    /// Slots the `*_wait` pushes leave free for live frames.
    reserve: usize,
    /// How long a `*_wait` push waits for a flush before closing the socket as slow.
    stall_limit: Duration,
    /// The first close reason wins; 0 while open. Set once, never reset: the socket is
    /// closing from then on.
    reason: AtomicU16,
    metrics: Arc<Metrics>,
}

/// A socket's send queue. Cloning it shares the queue.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The end the socket's task empties into the socket.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl Shared {
    /// An atomic load: this is checked for every frame queued and written.
    fn is_closing(&self) -> bool {
        self.reason.load(Ordering::Acquire) != 0
    }

    fn close(&self, reason: CloseReason) {
        if self
            .reason
            .compare_exchange(0, reason.as_u16(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && reason == CloseReason::SlowConsumer
        {
            self.metrics.slow_consumers_closed.inc();
        }
        // Wakes the socket's task, and the `*_wait` pushes (which then see it closing).
        self.queued.wake();
        self.drained.notify_waiters();
    }

    fn pop(&self) -> Option<Outgoing> {
        let mut queue = self.queue.lock();
        let message = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEPT_QUEUE_SLOTS {
            // A burst is over: give its memory back.
            queue.shrink_to(KEPT_QUEUE_SLOTS);
        }
        message
    }
}

impl Outbox {
    /// A queue of `capacity` frames whose `*_wait` pushes give up on a reader that lets
    /// `stall_limit` pass without a flush.
    pub fn new(
        capacity: usize,
        stall_limit: Duration,
        metrics: Arc<Metrics>,
    ) -> (Outbox, OutboxReceiver) {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            queued: AtomicWaker::new(),
            shutdown: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
            reserve: capacity / 4,
            stall_limit,
            reason: AtomicU16::new(0),
            metrics,
        });
        (
            Outbox {
                shared: shared.clone(),
            },
            OutboxReceiver { shared },
        )
    }

    /// Asks the writer to close the socket. The first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        self.shared.close(reason);
    }

    pub fn is_closing(&self) -> bool {
        self.shared.is_closing()
    }

    /// Asks the socket's task to close the socket with 1001 (the node is shutting down),
    /// after the command it is running, if any, has its answer queued.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.queued.wake();
        // A `*_wait` push waiting for room stops waiting (see there).
        self.shared.drained.notify_waiters();
    }

    /// Queues without waiting; a full queue closes the socket with 4008.
    fn try_push(&self, frame: &SharedFrame) -> bool {
        {
            let mut queue = self.shared.queue.lock();
            // Checked under the lock: the socket's task empties the queue under it once
            // the socket is closing, and nothing may be queued after that.
            if self.is_closing() {
                return false;
            }
            if queue.len() >= self.shared.capacity {
                drop(queue);
                self.close(CloseReason::SlowConsumer);
                return false;
            }
            queue.push_back(Outgoing::Text(frame.bytes().clone()));
        }
        self.shared.queued.wake();
        true
    }

    /// Queues once more than the reserve is free, waiting for the socket's task to drain
    /// the queue that far; false once the socket is closing, or once it is closed as
    /// slow because no flush came within the stall limit.
    async fn push_wait(&self, message: Outgoing) -> bool {
        loop {
            // Created before the check, so a flush between the check and the wait is
            // not missed (Notify wakes every `Notified` that exists when it is signalled).
            let drained = self.shared.drained.notified();
            {
                let mut queue = self.shared.queue.lock();
                if self.is_closing() {
                    return false;
                }
                if queue.len() + self.shared.reserve < self.shared.capacity {
                    queue.push_back(message);
                    break;
                }
            }
            if self.shared.shutdown.load(Ordering::Acquire) {
                // The node is shutting down and this reader is behind: what it misses it
                // reads with `since` from another node. Waiting would hold the shutdown.
                self.close(CloseReason::GoingAway);
                return false;
            }
            // Closing signals `drained` too; any flush does, so a reader that keeps
            // reading, however slowly, is waited for.
            if tokio::time::timeout(self.shared.stall_limit, drained)
                .await
                .is_err()
            {
                self.close(CloseReason::SlowConsumer);
                return false;
            }
        }
        self.shared.queued.wake();
        true
    }

    /// Queues an answer to this socket's own command (`None`, a frame that is not an
    /// answer, is never sent: see [`ControlFrame::new`]).
    pub async fn control(&self, frame: Option<ControlFrame>) -> bool {
        match frame {
            Some(frame) => {
                self.push_wait(Outgoing::Text(frame.shared().bytes().clone()))
                    .await
            }
            None => {
                tracing::error!("refused to send a non-answer frame as an answer");
                false
            }
        }
    }

    /// Queues a WebSocket ping (heartbeat).
    pub async fn ping(&self) -> bool {
        self.push_wait(Outgoing::Ping).await
    }
}

/// The customer's side: accepts only [`CustomerFrame`]s.
#[derive(Clone)]
pub struct CustomerOutbox(Outbox);

impl CustomerOutbox {
    pub fn new(outbox: Outbox) -> Self {
        CustomerOutbox(outbox)
    }

    /// Live delivery: never waits; false if the socket is gone or was just closed as slow.
    pub fn push(&self, frame: &CustomerFrame) -> bool {
        self.0.try_push(frame.shared())
    }

    /// An answer that must take its place among live frames (a `subscribe`'s `ok`,
    /// queued under the room's lock): never waits, like live delivery.
    pub fn answer_now(&self, frame: &ControlFrame) -> bool {
        self.0.try_push(frame.shared())
    }

    /// Replay: waits for room in the queue.
    pub async fn push_wait(&self, frame: &CustomerFrame) -> bool {
        self.0
            .push_wait(Outgoing::Text(frame.shared().bytes().clone()))
            .await
    }
}

/// The team's side: any event of the member's stream.
#[derive(Clone)]
pub struct StaffOutbox {
    outbox: Outbox,
    audience: StaffAudience,
}

impl StaffOutbox {
    /// `None` for a customer: a customer's socket can never hold a staff outbox.
    pub fn new(outbox: Outbox, identity: &Identity) -> Option<Self> {
        let audience = StaffAudience::of(identity.role.audience())?;
        Some(StaffOutbox { outbox, audience })
    }

    pub fn audience(&self) -> StaffAudience {
        self.audience
    }

    pub fn push(&self, frame: &StaffFrame) -> bool {
        self.outbox.try_push(frame.shared())
    }

    /// See [`CustomerOutbox::answer_now`].
    pub fn answer_now(&self, frame: &ControlFrame) -> bool {
        self.outbox.try_push(frame.shared())
    }

    pub async fn push_wait(&self, frame: &StaffFrame) -> bool {
        self.outbox
            .push_wait(Outgoing::Text(frame.shared().bytes().clone()))
            .await
    }
}

impl OutboxReceiver {
    /// The next frame to write.
    pub(super) fn pop(&self) -> Option<Outgoing> {
        self.shared.pop()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.shared.queue.lock().is_empty()
    }

    /// Wakes `waker` when a frame is queued, the outbox starts closing, or shutdown is
    /// requested.
    pub(super) fn register(&self, waker: &Waker) {
        self.shared.queued.register(waker);
    }

    /// `count` frames went out: room for the `*_wait` pushes.
    pub(super) fn flushed(&self, count: usize) {
        self.shared.drained.notify_waiters();
        self.shared.metrics.frames_out.inc_by(count as u64);
    }

    pub(super) fn is_closing(&self) -> bool {
        self.shared.is_closing()
    }

    /// See [`Outbox::request_shutdown`].
    pub(super) fn shutdown_requested(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    pub(super) fn close(&self, reason: CloseReason) {
        self.shared.close(reason);
    }

    /// Why the outbox is closing (`ClientGone` while it is not).
    pub(super) fn reason(&self) -> CloseReason {
        CloseReason::from_u16(self.shared.reason.load(Ordering::Acquire))
            .unwrap_or(CloseReason::ClientGone)
    }

    /// Drops whatever is queued.
    pub(super) fn clear(&self) {
        self.shared.queue.lock().clear();
    }
}
