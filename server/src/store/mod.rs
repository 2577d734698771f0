//! The event log: the truth every other part of the server derives from.
//!
//! Every change to a conversation is one [`Event`] appended to an append-only table; a
//! conversation row keeps three counters (public, agent, supervisor) from which each event
//! takes its [`Seqs`] inside the append transaction, so each audience's stream is gap-free
//! by construction. Appends reach the store only through [`writer::Writer`], which
//! group-commits them and tells the hub once they are durable.
//!
//! **Only this module names sqlx.** The rest of the server sees the [`Store`] trait and
//! the plain types below; [`sqlite::SqliteStore`] is the embedded implementation.

pub mod chain;
pub mod sqlite;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, EventView, InboxId, Role, UserId,
    Visibility,
};
use time::OffsetDateTime;

/// An event's position in each stream it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seqs {
    /// Every event has one: the supervisor stream holds every event.
    pub supervisor: u64,
    /// Absent for supervisors-only events.
    pub agent: Option<u64>,
    /// Present for public events only.
    pub public: Option<u64>,
}

impl Seqs {
    /// The event's `seq` in `audience`'s stream, if that audience may see it.
    pub fn for_audience(&self, audience: Audience) -> Option<u64> {
        match audience {
            Audience::Customer => self.public,
            Audience::Agents => self.agent,
            Audience::Supervisors => Some(self.supervisor),
        }
    }
}

/// The last `seq` of each stream of a conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    pub public: u64,
    pub agent: u64,
    pub supervisor: u64,
}

impl Heads {
    pub fn get(&self, audience: Audience) -> u64 {
        match audience {
            Audience::Customer => self.public,
            Audience::Agents => self.agent,
            Audience::Supervisors => self.supervisor,
        }
    }

    /// The heads once `seqs` has been appended.
    pub fn after(&self, seqs: &Seqs) -> Heads {
        Heads {
            public: seqs.public.unwrap_or(self.public),
            agent: seqs.agent.unwrap_or(self.agent),
            supervisor: seqs.supervisor,
        }
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub conversation_id: ConversationId,
    pub seqs: Seqs,
    pub view: EventView,
    /// The author's idempotency key, for `send` and `note`.
    pub client_id: Option<String>,
    /// This event's link in the conversation's audit chain.
    pub hash: [u8; 32],
}

impl Event {
    pub fn visibility(&self) -> Visibility {
        self.view.data.visibility()
    }
}

/// An event about to be appended; the writer gives it its seqs and hash.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: EventId,
    pub conversation_id: ConversationId,
    pub at: OffsetDateTime,
    pub actor: Actor,
    pub client_id: Option<String>,
    pub data: EventData,
}

/// A conversation about to be opened, with its `conversation_opened` event.
#[derive(Clone, Debug)]
pub struct NewConversation {
    pub id: ConversationId,
    pub inbox_id: InboxId,
    pub contact_id: Option<UserId>,
    pub subject: Option<String>,
    pub opened: NewEvent,
}

/// One unit of work for the writer.
#[derive(Clone, Debug)]
pub enum WriteRequest {
    Open(NewConversation),
    Append(NewEvent),
}

/// What became of one write request in a committed batch.
#[derive(Clone, Debug)]
pub enum WriteOutcome {
    /// Appended now.
    Stored(Arc<Event>),
    /// The author had already stored this `client_id`: the earlier event, unchanged.
    Duplicate(Arc<Event>),
}

impl WriteOutcome {
    pub fn event(&self) -> &Arc<Event> {
        match self {
            WriteOutcome::Stored(e) | WriteOutcome::Duplicate(e) => e,
        }
    }
}

/// Why one request of a batch was not applied (the rest of the batch still commits).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefusal {
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("inbox not found")]
    InboxNotFound,
}

/// A conversation row.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub inbox_id: InboxId,
    pub contact_id: Option<UserId>,
    pub subject: Option<String>,
    pub status: String,
    pub assignee_id: Option<UserId>,
    pub created_at: OffsetDateTime,
    /// Moves with every event.
    pub last_activity_at: OffsetDateTime,
    /// Moves with public events only: what a customer may be shown.
    pub last_public_at: OffsetDateTime,
    pub heads: Heads,
}

/// Which conversations to list. Every `Some` narrows the list.
#[derive(Clone, Debug, Default)]
pub struct ConversationFilter {
    /// Only these inboxes (`None`: all).
    pub inboxes: Option<Vec<InboxId>>,
    pub contact_id: Option<UserId>,
    pub status: Option<String>,
    pub assignee_id: Option<UserId>,
    pub limit: u32,
}

/// A staff member as last seen in a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub id: UserId,
    pub role: Role,
    pub name: Option<String>,
    pub handle: String,
    pub teams: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The storage engine behind the event log and the directory.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies every request in one transaction. A request that cannot apply (unknown
    /// conversation) is refused alone; an error of the engine fails the whole batch.
    async fn write_batch(
        &self,
        batch: &[WriteRequest],
    ) -> Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError>;

    /// Events of `audience`'s stream with `seq > after`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        conversation: ConversationId,
        audience: Audience,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError>;

    /// Newest activity first.
    async fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationRecord>, StoreError>;

    async fn put_inbox(&self, id: &InboxId, name: &str) -> Result<(), StoreError>;

    async fn inbox_name(&self, id: &InboxId) -> Result<Option<String>, StoreError>;

    async fn upsert_directory_entry(&self, entry: &DirectoryEntry) -> Result<(), StoreError>;

    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Waits for in-flight work and closes connections.
    async fn close(&self);
}

/// `now`, truncated to the microsecond the store keeps, so an event read back equals the
/// event that was written (the audit hash covers the timestamp).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.unix_timestamp_nanos() / 1_000;
    from_micros(micros as i64).unwrap_or(now)
}

pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

pub(crate) fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000).ok()
}
