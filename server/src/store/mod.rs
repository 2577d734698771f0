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
#[cfg(test)]
mod conformance;
pub mod postgres;
mod postgres_append;
mod rows;
pub mod sqlite;
mod sqlite_append;
mod sqlite_checkpoint;
pub mod sqlite_page_cache;
mod sqlite_wal_writes;
pub mod writer;

use std::sync::Arc;

use std::collections::BTreeMap;

use async_trait::async_trait;
use backchannel_protocol::http::{FieldDefinition, TagDefinition, Team};
use backchannel_protocol::server::Notification;
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, EventView, FieldTarget, InboxId,
    NoteAudience, NoteType, Role, TeamId, UserId, Visibility,
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
    /// `view` as JSON, made once and copied into every frame that carries the event.
    pub(crate) view_json: ViewJson,
}

impl Event {
    pub fn visibility(&self) -> Visibility {
        self.view.data.visibility()
    }

    /// `view` as JSON (what an `event` frame carries under `event`), made on first use:
    /// from the payload if the event was sealed in this process, else by serializing
    /// `view`. Empty only if serializing failed.
    pub fn view_json(&self) -> &str {
        self.view_json.view.get_or_init(|| {
            let data = self.view_json.data.as_deref();
            data.and_then(|data| self.view.to_json_with_data(data))
                .or_else(|| serde_json::to_string(&self.view).ok())
                .unwrap_or_default()
                .into()
        })
    }
}

/// An event's view as JSON, made once and copied into each frame that carries the event
/// (one per audience: the agents', the supervisors', the customer's) instead of
/// serializing the event for each. An event sealed in this process keeps the payload
/// it was stored with, its data as this build serializes it, and the view is made from
/// that, so the body is escaped once, when it is stored. Serializing each frame took
/// ~5,000 instructions, 12 % of the socket side's per delivery in `bc-load fanout`
/// (docs/benchmarks-log.md). The view is made on first use, on the socket side, not
/// on the append thread, whose time bounds how many appends a second one node
/// acknowledges.
///
/// A cache of [`Event::view`], so it takes no part in comparing events.
#[derive(Clone, Default)]
pub(crate) struct ViewJson {
    /// The event's data as stored, if this process stored it.
    data: Option<Box<str>>,
    view: std::sync::OnceLock<Box<str>>,
}

impl ViewJson {
    fn from_payload(payload: &str) -> ViewJson {
        ViewJson {
            data: Some(payload.into()),
            view: std::sync::OnceLock::new(),
        }
    }
}

impl PartialEq for ViewJson {
    fn eq(&self, _: &ViewJson) -> bool {
        true
    }
}

impl std::fmt::Debug for ViewJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.view.get().is_some() {
            "ViewJson(made)"
        } else {
            "ViewJson(not yet)"
        })
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

impl NewEvent {
    /// What this event becomes when appended after `heads`, whose last event's link is
    /// `previous`: the next seq in each stream that sees it, its payload as stored, and
    /// its link in the audit chain. Both engines append through this, so they agree on
    /// seqs and hashes by construction.
    pub(crate) fn seal(
        &self,
        heads: Heads,
        previous: &[u8; 32],
    ) -> Result<(Event, String), StoreError> {
        let visibility = self.data.visibility();
        let seqs = Seqs {
            supervisor: heads.supervisor + 1,
            agent: visibility
                .visible_to(Audience::Agents)
                .then_some(heads.agent + 1),
            public: visibility
                .visible_to(Audience::Customer)
                .then_some(heads.public + 1),
        };
        let payload = serde_json::to_string(&self.data)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode payload: {e}")))?;
        let hash = chain::link(
            previous,
            &chain::CanonicalEvent {
                id: self.id.0.as_bytes(),
                conversation_id: self.conversation_id.0.as_bytes(),
                supervisor_seq: seqs.supervisor,
                agent_seq: seqs.agent,
                public_seq: seqs.public,
                kind: self.data.kind(),
                visibility: visibility.as_str(),
                actor_id: self.actor.id.as_str(),
                actor_role: self.actor.role.as_str(),
                actor_name: self.actor.name.as_deref(),
                client_id: self.client_id.as_deref(),
                payload: &payload,
                created_at_micros: to_micros(self.at),
            },
        );
        let event = Event {
            conversation_id: self.conversation_id,
            seqs,
            view: EventView {
                id: self.id,
                at: self.at,
                actor: self.actor.clone(),
                data: self.data.clone(),
            },
            client_id: self.client_id.clone(),
            hash,
            view_json: ViewJson::from_payload(&payload),
        };
        Ok((event, payload))
    }
}

/// A conversation about to be opened, with its `conversation_opened` event.
#[derive(Clone, Debug)]
pub struct NewConversation {
    pub id: ConversationId,
    pub inbox_id: InboxId,
    pub contact_id: Option<UserId>,
    pub subject: Option<String>,
    pub opened: NewEvent,
    /// Events appended right after `opened`, in the same transaction (the fields its
    /// opener set).
    pub then: Vec<NewEvent>,
}

/// The reply guard of `send`: refuse if someone else's message or note arrived after the
/// last `seq` the sender had seen.
#[derive(Clone, Copy, Debug)]
pub struct ReplyGuard {
    pub audience: Audience,
    pub seen: u64,
}

/// One unit of work for the writer: applied entirely or not at all.
#[derive(Clone, Debug)]
pub enum WriteRequest {
    Open(Box<NewConversation>),
    /// Events of one conversation, appended together (an assignment and its handoff
    /// note, for instance). The first event's `client_id`, if any, makes it idempotent.
    Append {
        events: Vec<NewEvent>,
        guard: Option<ReplyGuard>,
    },
}

impl WriteRequest {
    pub fn append(event: NewEvent) -> WriteRequest {
        WriteRequest::Append {
            events: vec![event],
            guard: None,
        }
    }
}

/// A notification stored for one user, to deliver to their open sessions.
#[derive(Clone, Debug, PartialEq)]
pub struct UserNotification {
    pub user_id: UserId,
    pub notification: Notification,
    /// Its event is for supervisors only (a mention in a coaching note): only the user's
    /// supervisor and admin sessions are told, whatever role the user had when it was
    /// written.
    pub supervisors_only: bool,
    /// The inbox of its conversation when it was written: only the user's sessions whose
    /// token names that inbox are told. `None` only from a node older than the field.
    pub inbox: Option<InboxId>,
}

/// Who reads notifications, as their token has them now. A notification is written for
/// the user as the directory knew them; by the time it is read the user may have lost
/// the supervisor role or an inbox, and a notification names its conversation, its
/// event and who wrote it. So every read is filtered by the reader's current role and
/// inboxes: a supervisors-only event's notification is not an agent's to see, and one
/// in an inbox the reader may not work in is not theirs either (a conversation they
/// cannot open must look as if it did not exist). Counts and read marks follow the
/// same filter, or their numbers would tell what the list hides.
#[derive(Clone, Copy, Debug)]
pub struct NotificationReader<'a> {
    pub user: &'a UserId,
    /// May read supervisors-only events' notifications.
    pub supervisors: bool,
    /// The inboxes they may work in; `None`: every inbox.
    pub inboxes: Option<&'a [InboxId]>,
}

impl<'a> NotificationReader<'a> {
    /// A reader who may see all of `user`'s notifications.
    pub fn unrestricted(user: &'a UserId) -> Self {
        NotificationReader {
            user,
            supervisors: true,
            inboxes: None,
        }
    }
}

/// What became of one write request in a committed batch.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// The events appended now, or, for a retried `client_id`, the event stored the
    /// first time.
    pub events: Vec<Arc<Event>>,
    pub notifications: Vec<UserNotification>,
    /// True when nothing was written because the `client_id` had been stored before.
    pub duplicate: bool,
}

impl WriteOutcome {
    /// The request's main event (the first).
    pub fn event(&self) -> Option<&Arc<Event>> {
        self.events.first()
    }
}

/// Why one request of a batch was not applied (the rest of the batch still commits).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WriteRefusal {
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("inbox not found")]
    InboxNotFound,
    /// The reply guard tripped: these events (in the sender's stream) were unseen.
    #[error("new messages or notes arrived since the seq you replied to")]
    Unseen(Vec<Event>),
    /// The tags would exceed [`MAX_TAGS_PER_CONVERSATION`].
    #[error("at most {MAX_TAGS_PER_CONVERSATION} tags per conversation")]
    TooManyTags,
    /// Resolving needs these required conversation fields set.
    #[error("set the required fields before resolving: {}", .0.join(", "))]
    RequiredFieldsMissing(Vec<String>),
}

/// Most tags on one conversation; checked in the append transaction, so concurrent
/// taggers cannot overshoot it.
pub const MAX_TAGS_PER_CONVERSATION: usize = 50;

/// A rule that depends on the conversation's current state, checked in the append
/// transaction (so concurrent writers cannot both pass it) before an event is appended.
pub(crate) enum Precheck<'a> {
    /// The conversation's tags after this change must not exceed the limit.
    TagLimit {
        added: &'a [String],
        removed: &'a [String],
    },
    /// Resolving needs every required conversation field set.
    RequiredFields,
}

impl<'a> Precheck<'a> {
    pub(crate) fn of(new: &'a NewEvent) -> Option<Precheck<'a>> {
        match &new.data {
            EventData::TagsChanged { added, removed } => {
                Some(Precheck::TagLimit { added, removed })
            }
            EventData::StatusChanged {
                status: backchannel_protocol::Status::Resolved,
            } => Some(Precheck::RequiredFields),
            _ => None,
        }
    }

    /// With the conversation's current tags, the verdict on a tag change.
    pub(crate) fn tags(
        added: &[String],
        removed: &[String],
        current: Vec<String>,
    ) -> Option<WriteRefusal> {
        let mut tags: std::collections::BTreeSet<String> = current.into_iter().collect();
        tags.extend(added.iter().cloned());
        for tag in removed {
            tags.remove(tag);
        }
        (tags.len() > MAX_TAGS_PER_CONVERSATION).then_some(WriteRefusal::TooManyTags)
    }

    /// With the required fields still unset, the verdict on resolving.
    pub(crate) fn required(missing: Vec<String>) -> Option<WriteRefusal> {
        (!missing.is_empty()).then_some(WriteRefusal::RequiredFieldsMissing(missing))
    }
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
    pub team_id: Option<TeamId>,
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
    /// A customer's own conversations, newest *public* activity first: a note must not
    /// move a conversation up its customer's list (or into a page of it). `None`: a
    /// staff list, newest activity of any kind first.
    pub customer: Option<UserId>,
    pub status: Option<String>,
    pub assignee_id: Option<UserId>,
    pub tag: Option<String>,
    /// A custom field of the conversation and its value (JSON).
    pub field: Option<(String, serde_json::Value)>,
    pub limit: u32,
}

/// A note with its current text and pin state.
#[derive(Clone, Debug, PartialEq)]
pub struct NoteRecord {
    pub id: EventId,
    pub conversation_id: ConversationId,
    pub contact_id: Option<UserId>,
    pub author: Actor,
    pub note_type: NoteType,
    pub audience: NoteAudience,
    pub body: String,
    pub at: OffsetDateTime,
    pub pinned: bool,
}

/// What `GET /v1/search/notes` asks for.
#[derive(Clone, Debug, Default)]
pub struct NoteSearch {
    /// Words, each matched as a prefix-free term (no query syntax).
    pub terms: Vec<String>,
    /// Only these inboxes (`None`: all).
    pub inboxes: Option<Vec<InboxId>>,
    /// Include supervisors-only notes.
    pub include_supervisors: bool,
    pub note_type: Option<NoteType>,
    pub author: Option<UserId>,
    pub tag: Option<String>,
    pub limit: u32,
}

/// A conversation's chain as one consistent read: its rows, and the head and counter
/// kept on its row, as of the same moment. Read apart, an append between the two reads
/// made a live conversation look truncated.
#[derive(Clone, Debug)]
pub struct AuditSnapshot {
    pub rows: Vec<AuditRow>,
    /// The chain head on the conversation row; `None` if the row is gone.
    pub head: Option<Vec<u8>>,
    /// The conversation's supervisor `seq` counter: how many events it says it has.
    pub supervisor_seq: u64,
}

/// One event's stored columns, as the audit chain hashes them.
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub id: String,
    pub conversation_id: String,
    pub supervisor_seq: i64,
    pub agent_seq: Option<i64>,
    pub public_seq: Option<i64>,
    pub kind: String,
    pub visibility: String,
    pub actor_id: String,
    pub actor_role: String,
    pub actor_name: Option<String>,
    pub client_id: Option<String>,
    pub payload: String,
    pub created_at: i64,
    pub hash: Vec<u8>,
}

/// Which notifications to mark read.
#[derive(Clone, Debug)]
pub enum MarkRead {
    Ids(Vec<u64>),
    UpTo(u64),
    All,
}

/// A staff member as last seen in a valid token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DirectoryEntry {
    pub id: UserId,
    pub role: Role,
    pub name: Option<String>,
    pub handle: String,
    pub teams: Vec<String>,
    /// Inbox ids the user may work in; `*` for all.
    pub inboxes: Vec<String>,
}

impl DirectoryEntry {
    /// Whether this staff member may see conversations of `inbox`.
    pub fn may_work_in(&self, inbox: &InboxId) -> bool {
        self.inboxes
            .iter()
            .any(|i| i == "*" || i.as_str() == inbox.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From SQLite's append thread, which calls SQLite directly (`sqlite_append.rs`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed while a write was waiting.
    #[error("the store has been closed")]
    Stopped,
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
        batch: Vec<WriteRequest>,
    ) -> Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError>;

    /// How many batches the writer may have in flight at once. One unless the engine
    /// orders concurrent batches itself (PostgreSQL: row locks taken in id order, as
    /// between nodes).
    fn concurrent_batches(&self) -> usize {
        1
    }

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

    /// The supervisor head of each existing conversation among `ids`.
    async fn supervisor_heads(
        &self,
        ids: &[ConversationId],
    ) -> Result<Vec<(ConversationId, u64)>, StoreError>;

    /// Newest activity first.
    async fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationRecord>, StoreError>;

    async fn put_inbox(&self, id: &InboxId, name: &str) -> Result<(), StoreError>;

    async fn inbox_name(&self, id: &InboxId) -> Result<Option<String>, StoreError>;

    async fn upsert_directory_entry(&self, entry: &DirectoryEntry) -> Result<(), StoreError>;

    async fn directory_entry(&self, id: &UserId) -> Result<Option<DirectoryEntry>, StoreError>;

    /// Every staff member seen in a token, by id.
    async fn directory(&self) -> Result<Vec<DirectoryEntry>, StoreError>;

    /// Conversations assigned to `user` and not resolved.
    async fn open_assignments(&self, user: &UserId) -> Result<u64, StoreError>;

    /// Staff whose handle is one of `names`, or who belong to a team named in `names`.
    async fn mention_candidates(&self, names: &[String])
        -> Result<Vec<DirectoryEntry>, StoreError>;

    async fn put_team(&self, team: &Team) -> Result<(), StoreError>;
    async fn team(&self, id: &TeamId) -> Result<Option<Team>, StoreError>;
    async fn teams(&self) -> Result<Vec<Team>, StoreError>;

    async fn put_tag(&self, tag: &TagDefinition) -> Result<(), StoreError>;
    async fn tags(&self) -> Result<Vec<TagDefinition>, StoreError>;
    /// False if there was no such tag.
    async fn delete_tag(&self, name: &str) -> Result<bool, StoreError>;

    async fn put_field(&self, field: &FieldDefinition) -> Result<(), StoreError>;
    async fn fields(&self) -> Result<Vec<FieldDefinition>, StoreError>;

    /// Tags of each conversation.
    async fn conversation_tags(
        &self,
        ids: &[ConversationId],
    ) -> Result<BTreeMap<ConversationId, Vec<String>>, StoreError>;

    /// Custom field values of each target id.
    async fn field_values(
        &self,
        target: FieldTarget,
        ids: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>, StoreError>;

    async fn note(&self, id: EventId) -> Result<Option<NoteRecord>, StoreError>;

    /// Pinned notes of the conversation, and pinned `context` notes of the contact.
    async fn pinned_notes(
        &self,
        conversation: ConversationId,
        contact: Option<&UserId>,
    ) -> Result<Vec<NoteRecord>, StoreError>;

    /// Conversations of a contact in `inboxes` (`None`: any), newest activity first. The
    /// scope is part of the query, not applied to its page: a caller's conversation must
    /// not fall out of the page behind other inboxes' newer ones.
    async fn contact_conversations(
        &self,
        contact: &UserId,
        inboxes: Option<&[InboxId]>,
        limit: u32,
    ) -> Result<Vec<ConversationRecord>, StoreError>;

    /// Notes matching every word of the search, newest first. The order must depend on
    /// the matching notes alone: a relevance score weighed over the whole index (how many
    /// notes hold a word, as SQLite's bm25 does) would order a caller's results by notes
    /// they may not read, and so tell them those notes' words.
    async fn search_notes(&self, search: &NoteSearch) -> Result<Vec<NoteRecord>, StoreError>;

    /// The reader's notifications that they may see, newest first; with `before`, only
    /// ids below it (the next page).
    async fn notifications(
        &self,
        reader: &NotificationReader<'_>,
        unread_only: bool,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;
    /// A page of `user`'s notifications created at or after `since` with an id past
    /// `after`, oldest first: what a node cut off from the broker pages through to catch
    /// its sessions up (the hub filters each by its sessions' roles).
    async fn notifications_since(
        &self,
        user: &UserId,
        since: OffsetDateTime,
        after: u64,
        limit: u32,
    ) -> Result<Vec<UserNotification>, StoreError>;
    /// How many of the notifications the reader may see are unread.
    async fn unread_notifications(
        &self,
        reader: &NotificationReader<'_>,
    ) -> Result<u64, StoreError>;
    /// Marks the reader's notifications that they may see; returns how many were newly
    /// marked.
    async fn mark_notifications_read(
        &self,
        reader: &NotificationReader<'_>,
        which: &MarkRead,
    ) -> Result<u64, StoreError>;

    /// Every stored event of a conversation in supervisor order, as hashed.
    async fn audit_rows(&self, conversation: ConversationId) -> Result<Vec<AuditRow>, StoreError>;
    /// The chain head kept on the conversation row.
    async fn last_hash(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>, StoreError>;
    /// The rows, head and counter of a conversation read in one snapshot (what `audit
    /// verify` and the audit endpoint check, beside appends).
    async fn audit_snapshot(
        &self,
        conversation: ConversationId,
    ) -> Result<AuditSnapshot, StoreError>;
    /// Conversation ids that events name but no conversation row has: what deleting a
    /// conversation's row (and nothing else) would leave.
    async fn orphaned_event_conversations(&self) -> Result<Vec<String>, StoreError>;
    /// Every conversation id, oldest first.
    async fn conversation_ids(&self) -> Result<Vec<ConversationId>, StoreError>;

    /// A random id made once per database (32 hex digits) that every node on it shares:
    /// it names the deployment's Redis channels.
    async fn deployment_id(&self) -> Result<String, StoreError>;

    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The counters of an engine's shortcut for appends, for `/metrics`; `None` for an
    /// engine without one.
    fn append_shortcut_counters(&self) -> Option<AppendShortcutCounters> {
        None
    }

    /// Waits for in-flight work and closes connections.
    async fn close(&self);
}

/// How often PostgreSQL's batches of plain appends were written in one statement on the
/// heads the node remembered, and how often they found a head moved by another node
/// (or a retry among them) and took the locking path. Clones count into the same
/// totals: the store increments them, `/metrics` shows them.
#[derive(Clone, Debug, Default)]
pub struct AppendShortcutCounters {
    pub written: prometheus_client::metrics::counter::Counter,
    pub fell_back: prometheus_client::metrics::counter::Counter,
}

/// `now`, truncated to the microsecond the store keeps, so an event read back equals the
/// event that was written (the audit hash covers the timestamp).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.unix_timestamp_nanos() / 1_000;
    from_micros(micros as i64).unwrap_or(now)
}

/// The width of `conversations.activity_bucket`'s slots, ten seconds. The list indexes
/// key on the slot of a conversation's latest activity (`last_activity_at /
/// ACTIVITY_BUCKET_MICROS`) instead of the time itself, so an append touches them only
/// when it moves its conversation into a new slot, not at every event; lists order by
/// the slot, then the exact time, which is the same order. PostgreSQL's append
/// statement and both engines' migrations spell the number out;
/// `conformance::conversation_list_order_is_exact_within_and_across_activity_slots`
/// checks that every stored slot agrees with it.
pub(crate) const ACTIVITY_BUCKET_MICROS: i64 = 10_000_000;

/// The slot of `activity_bucket` a time in microseconds falls in (integer division, as
/// SQL's `/` on integers).
pub(crate) fn activity_bucket(micros: i64) -> i64 {
    micros / ACTIVITY_BUCKET_MICROS
}

pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

pub(crate) fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000).ok()
}

impl AuditRow {
    /// The event as stored, for display next to its hash.
    pub fn view(&self) -> Result<EventView, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("audit row {}: {what}", self.id));
        Ok(EventView {
            id: EventId(uuid::Uuid::parse_str(&self.id).map_err(|_| corrupt("event id"))?),
            at: from_micros(self.created_at).ok_or_else(|| corrupt("timestamp"))?,
            actor: Actor {
                id: UserId(self.actor_id.clone()),
                role: self.actor_role.parse().map_err(|_| corrupt("role"))?,
                name: self.actor_name.clone(),
            },
            data: serde_json::from_str(&self.payload).map_err(|_| corrupt("payload"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_protocol::{EventId, NoteAudience, NoteType, Role, UserId};

    /// A sealed event keeps the payload it is stored with, and its frames' JSON is made
    /// from it: the same bytes as serializing its view.
    #[test]
    fn a_sealed_event_makes_its_view_json_from_its_payload() {
        let new = NewEvent {
            id: EventId::new(),
            conversation_id: ConversationId::new(),
            at: now(),
            actor: Actor {
                id: UserId::from("alice"),
                role: Role::Agent,
                name: Some("Alice".into()),
            },
            client_id: Some("c-1".into()),
            data: EventData::Note {
                body: "@bob \"refund\"\n</script>".into(),
                note_type: NoteType::Transfer,
                audience: NoteAudience::Agents,
                mentions: vec![UserId::from("bob")],
            },
        };
        let (event, payload) = new.seal(Heads::default(), &[0; 32]).expect("seals");
        assert_eq!(event.view_json.data.as_deref(), Some(payload.as_str()));
        let serialized = serde_json::to_string(&event.view).expect("serializes");
        assert_eq!(event.view_json(), serialized);
        // Should the payload not be an object, the view is serialized instead.
        let mut stale = event.clone();
        stale.view_json = ViewJson::from_payload("[\"not an object\"]");
        assert_eq!(stale.view_json(), serialized);
    }
}
