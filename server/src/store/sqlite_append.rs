//! SQLite's append path: one OS thread owns the connection every group commit goes through.
//!
//! sqlx runs each SQLite statement on a worker thread and hands the result back through a
//! channel, so every awaited statement costs two thread hand-offs and two task wake-ups.
//! An append is about six statements, and those hand-offs, not SQLite, held appends to
//! about 4,000 a second (docs/benchmarks.md). Here a dedicated thread calls SQLite
//! directly with cached prepared statements, so a whole batch costs one hand-off in and
//! one out. The rules are PostgreSQL's (seqs from the conversation's counters, the hash
//! chain, the projections, the [`Precheck`]s, refusals before any write), and the same
//! conformance tests (`store/conformance.rs`) hold both to them.
//!
//! Other writes (the directory, definitions, read marks) stay on sqlx: they are rare, and
//! SQLite's busy timeout serializes them with this connection.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{mpsc, Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backchannel_protocol::server::{Notification, NotificationKind};
use backchannel_protocol::{ConversationId, EventData, InboxId, UserId, Visibility};
use parking_lot::Mutex;
use rusqlite::{
    params, CachedStatement, Connection, OpenFlags, OptionalExtension, TransactionBehavior,
};
use tokio::sync::oneshot;

use super::chain;
use super::rows::{enum_text, event_from_row, stream_after};
use super::sqlite::EVENT_COLUMNS;
use super::sqlite_checkpoint::{checkpoint, Checkpointer};
use super::sqlite_wal_writes;
use super::{
    to_micros, Event, Heads, NewConversation, NewEvent, Precheck, ReplyGuard, StoreError,
    UserNotification, WriteOutcome, WriteRefusal, WriteRequest,
};

/// What one batch comes to: an outcome per request, or an engine error for all of them.
pub(super) type BatchResult = Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError>;
type Refusable<T> = Result<Result<T, WriteRefusal>, StoreError>;

/// Page cache of the append connection, in KiB (SQLite's default is 2 MiB). It holds the
/// pages written since the last checkpoint (those live in the WAL, where the memory map
/// does not reach): about 2,200 at 17,000 acknowledged notes a second between two
/// checkpoints 250 ms apart, with room to spare. (It was cut from 64 MiB when a commit
/// after a page-swapping B-tree split scanned the whole cache; `sqlite_page_cache.rs`
/// has since removed that scan, and 64 MiB measured no faster.)
const APPEND_CACHE_KIB: i64 = 16 * 1024;
/// How much of the database file the append connection reads through a memory map.
const APPEND_MMAP_BYTES: i64 = 1 << 30;
/// How often the WAL is copied back into the database file while appends flow: at most
/// this long apart. A page written many times in that interval (an index's tail, a busy
/// conversation's row) is copied once; SQLite's own policy (every 1,000 pages, inside the
/// commit) copied the hot pages over and over and held up the commit's callers.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// Under light load, checkpoints come this often instead. A pass runs beside the appends
/// (`sqlite_checkpoint.rs`), but shares the core and the disk with them: the more it has
/// to copy, the longer the commits beside it wait for their `fsync`. At 22,500
/// deliveries/s, passes 250 ms apart put the delivery p99 at 5.6–6.2 ms against 3.6–4.5
/// at this interval (for 6 % less CPU); when the pass ran in line, between batches, 250
/// ms made it 9 ms. With each pass syncing the database file, 50 ms measured 3.1–3.7 ms
/// against 2.2–2.6, and 10 ms no better than this. Under heavy load, requests wait for a whole batch anyway, and copying
/// hot pages 50 times a second instead of 4 cost 15–25 % of the throughput.
const LIGHT_LOAD_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);
/// A batch of at most this many requests means light load: the requests that arrived
/// while the previous batch was written.
const LIGHT_LOAD_BATCH: usize = 8;
/// The size the WAL file is truncated to after a checkpoint.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;
/// Prepared statements kept per connection (every statement below, with room to spare).
const STATEMENT_CACHE: usize = 64;
/// Conversations whose head the append thread remembers; past this many the memory is
/// emptied and refilled from the table (a few hundred bytes each).
const HEAD_CACHE_CONVERSATIONS: usize = 16 * 1024;

// The statements every message or note runs. None may build a temporary B-tree (a
// RETURNING clause, an IN list of more than two constants, a sort): SQLite opens,
// fills and closes one per execution, which cost a tenth of this thread's work per note
// while the events table's CHECK held such a list (migration 0008; tested below).

/// An append that carries a `client_id` looks for the event it may be a retry of.
static SELECT_RETRIED: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {EVENT_COLUMNS} FROM events WHERE actor_id = ? AND client_id = ?")
});
static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO events ({EVENT_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
});
const INSERT_NOTE: &str = "INSERT INTO notes (id, conversation_id, contact_id, author_id, \
    author_role, author_name, note_type, audience, body, created_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const INSERT_SEARCH: &str = "INSERT INTO note_search (rowid, body) VALUES (?, ?)";
/// The conversation's head after an append in the same activity slot...
const UPDATE_HEAD: &str = "UPDATE conversations SET public_seq = ?1, agent_seq = ?2, \
    supervisor_seq = ?3, last_hash = ?4, last_activity_at = COALESCE(?5, last_activity_at), \
    last_public_at = COALESCE(?6, last_public_at) WHERE id = ?7";
/// ... and after one that moved it to a new slot. SQLite rewrites an index's entry
/// whenever its column is assigned, even the same value: the slot is assigned only when
/// it changed.
const UPDATE_HEAD_AND_SLOT: &str = "UPDATE conversations SET public_seq = ?1, agent_seq = ?2, \
    supervisor_seq = ?3, last_hash = ?4, last_activity_at = COALESCE(?5, last_activity_at), \
    last_public_at = COALESCE(?6, last_public_at), activity_bucket = ?8 WHERE id = ?7";

/// The statements above, as [`Statements`] keeps them (and as the test that none builds a
/// temporary B-tree reads them).
#[derive(Clone, Copy)]
enum Hot {
    Retried,
    InsertEvent,
    InsertNote,
    InsertSearch,
    UpdateHead,
    UpdateHeadAndSlot,
}

impl Hot {
    const ALL: [Hot; 6] = [
        Hot::Retried,
        Hot::InsertEvent,
        Hot::InsertNote,
        Hot::InsertSearch,
        Hot::UpdateHead,
        Hot::UpdateHeadAndSlot,
    ];

    fn sql(self) -> &'static str {
        match self {
            Hot::Retried => SELECT_RETRIED.as_str(),
            Hot::InsertEvent => INSERT_EVENT.as_str(),
            Hot::InsertNote => INSERT_NOTE,
            Hot::InsertSearch => INSERT_SEARCH,
            Hot::UpdateHead => UPDATE_HEAD,
            Hot::UpdateHeadAndSlot => UPDATE_HEAD_AND_SLOT,
        }
    }
}

/// A batch's connection, and the statements every message or note runs, each taken from
/// the connection's statement cache at its first use in the batch and kept until the
/// commit. rusqlite's cache hashes a statement's text when it is taken out and again when
/// it goes back, and clears its bindings; taken once per event, five statements a note,
/// that was 6.6 % of this thread's instructions in `durable` (docs/benchmarks-log.md,
/// first session of 2026-12-08). The rarer
/// statements go through the cache as before (`db`).
struct Statements<'c> {
    db: &'c Connection,
    hot: [Option<CachedStatement<'c>>; Hot::ALL.len()],
}

impl<'c> Statements<'c> {
    fn new(db: &'c Connection) -> Statements<'c> {
        Statements {
            db,
            hot: Default::default(),
        }
    }

    fn get(&mut self, which: Hot) -> Result<&mut CachedStatement<'c>, StoreError> {
        let slot = &mut self.hot[which as usize];
        Ok(match slot {
            Some(statement) => statement,
            None => slot.insert(self.db.prepare_cached(which.sql())?),
        })
    }
}

struct Job {
    batch: Vec<WriteRequest>,
    reply: oneshot::Sender<BatchResult>,
}

/// The handle to the append thread. Dropping the last sender (in [`AppendThread::close`])
/// ends the thread after the batch in hand.
pub(super) struct AppendThread {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AppendThread {
    /// Opens the write connection to `path` (the schema must already be migrated) and
    /// starts the thread.
    pub(super) fn start(path: &Path) -> Result<AppendThread, StoreError> {
        // Through the shim that writes each commit's WAL frames in one call, if it could
        // be registered (`sqlite_wal_writes.rs`).
        let connection = match sqlite_wal_writes::vfs_name() {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?,
            None => Connection::open(path)?,
        };
        connection.busy_timeout(Duration::from_secs(5))?;
        // WAL is a property of the file (set when it was created); synchronous and
        // foreign keys are per connection.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Appends touch the tail of every index of the log; profiling showed the thread
        // spending most of its time copying pages in with pread. A larger page cache
        // keeps the hot pages, and memory-mapped reads skip the copy for the rest.
        connection.pragma_update(None, "cache_size", -APPEND_CACHE_KIB)?;
        connection.pragma_update(None, "mmap_size", APPEND_MMAP_BYTES)?;
        // Checkpoints are asked for by the loop below and run by their own thread, not
        // inside the commit that crossed SQLite's threshold.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        // Once checkpointed, the WAL is rewritten from its start; past this size its file
        // is truncated back, so a burst does not leave a large file behind.
        connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let checkpointer = Checkpointer::start(path)?;
        let (jobs, receiver) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("sqlite-append".into())
            .spawn(move || {
                let mut connection = connection;
                let mut heads = HeadCache::default();
                let mut last_checkpoint = Instant::now();
                while let Ok(job) = receiver.recv() {
                    let result = write_batch(&mut connection, &mut heads, &job.batch);
                    // A caller that went away no longer needs the answer.
                    let _ = job.reply.send(result);
                    let since = last_checkpoint.elapsed();
                    if since >= CHECKPOINT_INTERVAL
                        || (since >= LIGHT_LOAD_CHECKPOINT_INTERVAL
                            && job.batch.len() <= LIGHT_LOAD_BATCH)
                    {
                        checkpointer.request();
                        last_checkpoint = Instant::now();
                    }
                    checkpointer.rewind_if_due(&connection);
                }
                // The checkpoint thread stops first, so the last pass here copies all.
                drop(checkpointer);
                checkpoint(&connection);
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the append thread: {e}")))?;
        Ok(AppendThread {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes `batch` in one transaction on the append thread.
    pub(super) async fn write(&self, batch: Vec<WriteRequest>) -> BatchResult {
        let (reply, answer) = oneshot::channel();
        let sent = match self.jobs.lock().as_ref() {
            Some(jobs) => jobs.send(Job { batch, reply }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Stopped);
        }
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Stops taking batches and waits for the thread to finish the one in hand.
    pub(super) async fn close(&self) {
        self.jobs.lock().take();
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the SQLite append thread ended abnormally");
            }
        }
    }
}

/// A conversation's counters and chain link, its latest activity's slot, and its
/// contact (which never changes).
#[derive(Clone)]
struct Head {
    heads: Heads,
    last_hash: [u8; 32],
    activity_bucket: i64,
    contact_id: Option<String>,
}

/// The heads this thread committed last, so an append does not read its conversation's
/// row before updating it (one statement of the seven a note costs). What this thread
/// committed is what the table holds unless another connection has committed since
/// (another process on the same data directory): SQLite's `data_version` tells, and the
/// memory is dropped when it moved. A batch's changes are kept apart until its commit
/// succeeds: a rolled-back batch leaves the committed heads as they were.
#[derive(Default)]
struct HeadCache {
    committed: HashMap<ConversationId, Head>,
    batch: HashMap<ConversationId, Head>,
    /// `PRAGMA data_version` when `committed` was last known to be the table's.
    data_version: Option<i64>,
}

impl HeadCache {
    /// Called inside the batch's transaction (the write lock held, so nobody else can
    /// commit until it ends): forgets what another connection may have changed.
    fn revalidate(&mut self, db: &Connection) -> Result<(), StoreError> {
        self.batch.clear();
        let version: i64 = db
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |row| row.get(0))?;
        if self.data_version != Some(version) {
            self.committed.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    fn get(&self, conversation: &ConversationId) -> Option<&Head> {
        self.batch
            .get(conversation)
            .or_else(|| self.committed.get(conversation))
    }

    fn committed(&mut self) {
        if self.committed.len() + self.batch.len() > HEAD_CACHE_CONVERSATIONS {
            self.committed.clear();
        }
        self.committed.extend(self.batch.drain());
    }
}

/// One group commit. `IMMEDIATE` takes the write lock up front, so the transaction cannot
/// fail later on a lock upgrade; any engine error rolls everything back (on drop).
fn write_batch(
    connection: &mut Connection,
    heads: &mut HeadCache,
    batch: &[WriteRequest],
) -> BatchResult {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    heads.revalidate(&transaction)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut search = Vec::new();
    let mut statements = Statements::new(&transaction);
    for request in batch {
        outcomes.push(match request {
            WriteRequest::Append { events, guard } => {
                append(&mut statements, heads, events, *guard, &mut search)?
            }
            WriteRequest::Open(conversation) => {
                open_conversation(&mut statements, heads, conversation, &mut search)?
            }
        });
    }
    write_search(&mut statements, &search)?;
    // The statements go back to the cache before the transaction ends.
    drop(statements);
    transaction.commit()?;
    heads.committed();
    Ok(outcomes)
}

fn open_conversation(
    statements: &mut Statements<'_>,
    heads: &mut HeadCache,
    new: &NewConversation,
    search: &mut Vec<SearchWrite>,
) -> Refusable<WriteOutcome> {
    let db = statements.db;
    let inbox = db
        .prepare_cached("SELECT 1 FROM inboxes WHERE id = ?")?
        .query_row([new.inbox_id.as_str()], |_| Ok(()))
        .optional()?;
    if inbox.is_none() {
        return Ok(Err(WriteRefusal::InboxNotFound));
    }
    let at = to_micros(new.opened.at);
    db.prepare_cached(
        "INSERT INTO conversations (id, inbox_id, contact_id, subject, last_hash, \
         created_at, last_activity_at, last_public_at, activity_bucket) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        new.id.to_string(),
        new.inbox_id.as_str(),
        new.contact_id.as_ref().map(|c| c.as_str()),
        new.subject.as_deref(),
        &chain::GENESIS[..],
        at,
        at,
        at,
        super::activity_bucket(at),
    ])?;
    let with_then: Vec<NewEvent>;
    let events = if new.then.is_empty() {
        std::slice::from_ref(&new.opened)
    } else {
        with_then = std::iter::once(&new.opened)
            .chain(&new.then)
            .cloned()
            .collect();
        &with_then
    };
    append(statements, heads, events, None, search)
}

/// Appends events of one conversation: allocates their seqs from the conversation's
/// counters, chains their hashes, and updates the projections they imply. Every refusal
/// comes before the first write.
fn append(
    statements: &mut Statements<'_>,
    cache: &mut HeadCache,
    events: &[NewEvent],
    guard: Option<ReplyGuard>,
    search: &mut Vec<SearchWrite>,
) -> Refusable<WriteOutcome> {
    let Some(first) = events.first() else {
        return Ok(Ok(WriteOutcome {
            events: Vec::new(),
            notifications: Vec::new(),
            duplicate: false,
        }));
    };
    let db = statements.db;
    let conversation = first.conversation_id;
    let conversation_text = conversation.to_string();
    if let Some(client_id) = &first.client_id {
        let statement = statements.get(Hot::Retried)?;
        let mut rows = statement.query(params![first.actor.id.as_str(), client_id])?;
        if let Some(row) = rows.next()? {
            return Ok(Ok(WriteOutcome {
                events: vec![Arc::new(event_from_row(row)?)],
                notifications: Vec::new(),
                duplicate: true,
            }));
        }
    }
    let head = match cache.get(&conversation) {
        Some(head) => head.clone(),
        None => match read_head(db, &conversation_text)? {
            Some(head) => head,
            None => return Ok(Err(WriteRefusal::ConversationNotFound)),
        },
    };
    if let Some(guard) = guard {
        let unseen = unseen(db, &conversation_text, guard, &first.actor.id)?;
        if !unseen.is_empty() {
            return Ok(Err(WriteRefusal::Unseen(unseen)));
        }
    }
    for new in events {
        if let Some(refusal) = precheck(db, &conversation_text, new)? {
            return Ok(Err(refusal));
        }
    }
    let mut heads = head.heads;
    let mut previous = head.last_hash;
    let mut stored = Vec::with_capacity(events.len());
    let mut notifications = Vec::new();
    // The batch's latest event in the agents' stream, and in the public one: the
    // conversation's activity as staff and as the customer see it. A supervisors-only
    // event moves neither, or agents would see one happen.
    let mut last_agent_at = None;
    let mut last_public_at = None;
    for new in events {
        if new.conversation_id != conversation {
            return Err(StoreError::Corrupt(
                "one append request spans two conversations".into(),
            ));
        }
        let event = insert_event(statements, new, heads, previous)?;
        heads = heads.after(&event.seqs);
        previous = event.hash;
        let at = to_micros(new.at);
        if event.seqs.agent.is_some() {
            last_agent_at = Some(at);
        }
        if event.seqs.public.is_some() {
            last_public_at = Some(at);
        }
        project(
            statements,
            &event,
            head.contact_id.as_deref(),
            &mut notifications,
            search,
        )?;
        stored.push(Arc::new(event));
    }
    let activity_bucket = last_agent_at.map_or(head.activity_bucket, super::activity_bucket);
    let new_slot = activity_bucket != head.activity_bucket;
    let statement = statements.get(if new_slot {
        Hot::UpdateHeadAndSlot
    } else {
        Hot::UpdateHead
    })?;
    statement.raw_bind_parameter(1, heads.public as i64)?;
    statement.raw_bind_parameter(2, heads.agent as i64)?;
    statement.raw_bind_parameter(3, heads.supervisor as i64)?;
    statement.raw_bind_parameter(4, &previous[..])?;
    statement.raw_bind_parameter(5, last_agent_at)?;
    statement.raw_bind_parameter(6, last_public_at)?;
    statement.raw_bind_parameter(7, &conversation_text)?;
    if new_slot {
        statement.raw_bind_parameter(8, activity_bucket)?;
    }
    statement.raw_execute()?;
    cache.batch.insert(
        conversation,
        Head {
            heads,
            last_hash: previous,
            activity_bucket,
            contact_id: head.contact_id,
        },
    );
    Ok(Ok(WriteOutcome {
        events: stored,
        notifications,
        duplicate: false,
    }))
}

/// A conversation's head as the table holds it; `None` if there is no such conversation.
fn read_head(db: &Connection, conversation: &str) -> Result<Option<Head>, StoreError> {
    let row = db
        .prepare_cached(
            "SELECT public_seq, agent_seq, supervisor_seq, last_hash, contact_id, \
             activity_bucket FROM conversations WHERE id = ?",
        )?
        .query_row([conversation], |row| {
            Ok((
                [row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?],
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })
        .optional()?;
    let Some((seqs, last_hash, contact_id, activity_bucket)) = row else {
        return Ok(None);
    };
    let [public, agent, supervisor] =
        seqs.map(|seq| u64::try_from(seq).map_err(|_| StoreError::Corrupt("negative seq".into())));
    Ok(Some(Head {
        heads: Heads {
            public: public?,
            agent: agent?,
            supervisor: supervisor?,
        },
        last_hash: last_hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("last_hash is not 32 bytes".into()))?,
        activity_bucket,
        contact_id,
    }))
}

/// The state-dependent rules of [`Precheck`], read inside the append transaction.
fn precheck(
    db: &Connection,
    conversation: &str,
    new: &NewEvent,
) -> Result<Option<WriteRefusal>, StoreError> {
    let strings = |sql: &str| -> Result<Vec<String>, StoreError> {
        let mut statement = db.prepare_cached(sql)?;
        let rows = statement.query_map([conversation], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    };
    Ok(match Precheck::of(new) {
        None => None,
        Some(Precheck::TagLimit { added, removed }) => Precheck::tags(
            added,
            removed,
            strings("SELECT tag FROM conversation_tags WHERE conversation_id = ?")?,
        ),
        Some(Precheck::RequiredFields) => Precheck::required(strings(
            "SELECT key FROM field_definitions WHERE required = 1 \
             AND applies_to = 'conversation' AND key NOT IN \
             (SELECT key FROM field_values WHERE target = 'conversation' \
             AND target_id = ?) ORDER BY key",
        )?),
    })
}

/// Messages and notes by others after `guard.seen` in the sender's stream.
fn unseen(
    db: &Connection,
    conversation: &str,
    guard: ReplyGuard,
    sender: &UserId,
) -> Result<Vec<Event>, StoreError> {
    let (after_seq, order) = stream_after(guard.audience, "?2");
    let mut statement = db.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 \
         AND {after_seq} AND actor_id != ?3 \
         AND kind IN ('message', 'note') ORDER BY {order} LIMIT 50"
    ))?;
    let mut rows = statement.query(params![conversation, guard.seen as i64, sender.as_str()])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(event_from_row(row)?);
    }
    Ok(events)
}

fn insert_event(
    statements: &mut Statements<'_>,
    new: &NewEvent,
    heads: Heads,
    previous: [u8; 32],
) -> Result<Event, StoreError> {
    let (event, payload) = new.seal(heads, &previous)?;
    let seqs = event.seqs;
    let visibility = new.data.visibility();
    let at = to_micros(new.at);
    statements.get(Hot::InsertEvent)?.execute(params![
        new.id.to_string(),
        new.conversation_id.to_string(),
        seqs.supervisor as i64,
        seqs.agent.map(|s| s as i64),
        seqs.public.map(|s| s as i64),
        new.data.kind(),
        visibility.as_str(),
        new.actor.id.as_str(),
        new.actor.role.as_str(),
        new.actor.name.as_deref(),
        new.client_id.as_deref(),
        payload,
        at,
        &event.hash[..],
    ])?;
    Ok(event)
}

/// A change to the full-text index, made at the end of the batch's transaction, in order.
/// FTS5 writes what it has pending to disk as a new segment whenever a statement opens a
/// savepoint, so indexing each note as it came wrote (and later merged) a segment per
/// note; written together, a batch's notes make one.
enum SearchWrite {
    Insert { rowid: i64, body: String },
    Update { rowid: i64, body: String },
}

fn write_search(statements: &mut Statements<'_>, writes: &[SearchWrite]) -> Result<(), StoreError> {
    for write in writes {
        match write {
            SearchWrite::Insert { rowid, body } => {
                statements
                    .get(Hot::InsertSearch)?
                    .execute(params![rowid, body])?;
            }
            SearchWrite::Update { rowid, body } => {
                statements
                    .db
                    .prepare_cached("UPDATE note_search SET body = ? WHERE rowid = ?")?
                    .execute(params![body, rowid])?;
            }
        }
    }
    Ok(())
}

/// Keeps the tables derived from the log (notes, search, tags, fields, assignment,
/// status) and the notifications an event implies, in the append transaction.
fn project(
    statements: &mut Statements<'_>,
    event: &Event,
    contact_id: Option<&str>,
    notifications: &mut Vec<UserNotification>,
    search: &mut Vec<SearchWrite>,
) -> Result<(), StoreError> {
    let db = statements.db;
    let conversation = event.conversation_id.to_string();
    let actor = &event.view.actor;
    match &event.view.data {
        EventData::Note {
            body,
            note_type,
            audience,
            mentions,
        } => {
            statements.get(Hot::InsertNote)?.execute(params![
                event.view.id.to_string(),
                conversation,
                contact_id,
                actor.id.as_str(),
                actor.role.as_str(),
                actor.name.as_deref(),
                enum_text(note_type)?,
                enum_text(audience)?,
                body,
                to_micros(event.view.at),
            ])?;
            // Not `RETURNING rowid`: SQLite gathers a RETURNING clause's rows in a
            // temporary B-tree it opens and closes for every execution.
            let rowid = db.last_insert_rowid();
            search.push(SearchWrite::Insert {
                rowid,
                body: body.clone(),
            });
            let mut seen = HashSet::new();
            // Read once per note, for every one mentioned (a team may be many).
            let mut inbox = None;
            for user in mentions {
                if *user != actor.id && seen.insert(user) {
                    let inbox = match &inbox {
                        Some(inbox) => inbox,
                        None => inbox.insert(inbox_of(db, event)?),
                    };
                    notifications.push(notify(db, user, NotificationKind::Mention, event, inbox)?);
                }
            }
        }
        EventData::NoteEdited { note_id, body, .. } => {
            let rowid: Option<i64> = db
                .prepare_cached("UPDATE notes SET body = ? WHERE id = ? RETURNING rowid")?
                .query_row(params![body, note_id.to_string()], |row| row.get(0))
                .optional()?;
            if let Some(rowid) = rowid {
                search.push(SearchWrite::Update {
                    rowid,
                    body: body.clone(),
                });
            }
        }
        EventData::NotePinned {
            note_id, pinned, ..
        } => {
            db.prepare_cached("UPDATE notes SET pinned = ? WHERE id = ?")?
                .execute(params![*pinned, note_id.to_string()])?;
        }
        EventData::Assigned {
            assignee_id,
            team_id,
        } => {
            db.prepare_cached(
                "UPDATE conversations SET assignee_id = ?, team_id = ? WHERE id = ?",
            )?
            .execute(params![
                assignee_id.as_ref().map(|a| a.as_str()),
                team_id.as_ref().map(|t| t.as_str()),
                conversation,
            ])?;
            if let Some(assignee) = assignee_id {
                if *assignee != actor.id {
                    let inbox = inbox_of(db, event)?;
                    notifications.push(notify(
                        db,
                        assignee,
                        NotificationKind::Assigned,
                        event,
                        &inbox,
                    )?);
                }
            }
        }
        EventData::StatusChanged { status } => {
            db.prepare_cached("UPDATE conversations SET status = ? WHERE id = ?")?
                .execute(params![status.as_str(), conversation])?;
        }
        EventData::TagsChanged { added, removed } => {
            for tag in added {
                db.prepare_cached(
                    "INSERT OR IGNORE INTO conversation_tags (conversation_id, tag) VALUES (?, ?)",
                )?
                .execute(params![conversation, tag])?;
            }
            for tag in removed {
                db.prepare_cached(
                    "DELETE FROM conversation_tags WHERE conversation_id = ? AND tag = ?",
                )?
                .execute(params![conversation, tag])?;
            }
        }
        EventData::FieldsChanged {
            target,
            target_id,
            changes,
        } => {
            for (key, value) in changes {
                if value.is_null() {
                    db.prepare_cached(
                        "DELETE FROM field_values WHERE target = ? AND target_id = ? AND key = ?",
                    )?
                    .execute(params![target.as_str(), target_id, key])?;
                } else {
                    db.prepare_cached(
                        "INSERT INTO field_values (target, target_id, key, value) \
                         VALUES (?, ?, ?, ?) ON CONFLICT (target, target_id, key) \
                         DO UPDATE SET value = excluded.value",
                    )?
                    .execute(params![
                        target.as_str(),
                        target_id,
                        key,
                        value.to_string()
                    ])?;
                }
            }
        }
        EventData::ConversationOpened { .. } | EventData::Message { .. } => {}
    }
    Ok(())
}

fn notify(
    db: &Connection,
    user: &UserId,
    kind: NotificationKind,
    event: &Event,
    inbox: &InboxId,
) -> Result<UserNotification, StoreError> {
    let actor = &event.view.actor;
    db.prepare_cached(
        "INSERT INTO notifications (user_id, kind, conversation_id, event_id, from_id, \
         from_role, from_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        user.as_str(),
        kind.as_str(),
        event.conversation_id.to_string(),
        event.view.id.to_string(),
        actor.id.as_str(),
        actor.role.as_str(),
        actor.name.as_deref(),
        to_micros(event.view.at),
    ])?;
    // `id` is the rowid (INTEGER PRIMARY KEY); read back as the notes' is, above.
    let id = db.last_insert_rowid();
    Ok(UserNotification {
        user_id: user.clone(),
        notification: Notification {
            id: id as u64,
            kind,
            conversation_id: event.conversation_id,
            event_id: event.view.id,
            from: actor.clone(),
            at: event.view.at,
            read: false,
        },
        supervisors_only: event.visibility() == Visibility::Supervisors,
        inbox: Some(inbox.clone()),
    })
}

/// The inbox of `event`'s conversation, which its notifications carry (it never changes).
fn inbox_of(db: &Connection, event: &Event) -> Result<InboxId, StoreError> {
    let inbox: String = db
        .prepare_cached("SELECT inbox_id FROM conversations WHERE id = ?")?
        .query_row([event.conversation_id.to_string()], |row| row.get(0))?;
    Ok(InboxId(inbox))
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::{SqliteStore, DATABASE_FILE};
    use super::super::Store;
    use super::*;

    /// A database file migrated as the store opens it, and a plain connection to it (the
    /// directory goes with the first).
    async fn migrated_database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(dir.path())
            .await
            .expect("open and migrate");
        store.close().await;
        let db = Connection::open(dir.path().join(DATABASE_FILE)).expect("open the database file");
        (dir, db)
    }

    /// A `client_id`'s retry is found through the idempotency index, keyed by
    /// `client_id` first (migration 0009): a time-ordered `client_id`, the JavaScript
    /// client's, then adds its entry at the index's end instead of on a page among its
    /// author's earlier ones. Keyed the other way round, or not used, the plan differs.
    #[tokio::test]
    async fn a_retry_is_looked_up_by_client_id_then_author() {
        let (_dir, db) = migrated_database().await;
        let plan: Vec<String> = db
            .prepare(&format!("EXPLAIN QUERY PLAN {}", SELECT_RETRIED.as_str()))
            .expect("the lookup compiles")
            .query_map(params!["an-author", "a-client-id"], |row| row.get(3))
            .expect("its plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert_eq!(
            plan,
            ["SEARCH events USING INDEX events_idempotency (client_id=? AND actor_id=?)"]
        );
    }

    /// `Statements` keeps each hot statement at `hot[which as usize]`, sized by
    /// `Hot::ALL`: the list must hold every variant in declaration order.
    #[test]
    fn the_hot_statements_are_listed_in_order() {
        for (slot, which) in Hot::ALL.into_iter().enumerate() {
            assert_eq!(which as usize, slot);
        }
    }

    /// SQLite compiles some expressions into a temporary B-tree that every execution
    /// opens, fills and closes again: a RETURNING clause, an IN list of more than two
    /// constants (even inside a table's CHECK), a sort. On the statements every note and
    /// message runs that was a tenth of the append thread's work per note; none of them
    /// may compile into one.
    #[tokio::test]
    async fn an_append_builds_no_temporary_btree() {
        let (_dir, db) = migrated_database().await;
        for sql in Hot::ALL.map(Hot::sql) {
            let mut explain = db
                .prepare(&format!("EXPLAIN {sql}"))
                .expect("the statement compiles");
            let unbound = explain.parameter_count();
            let nulls = std::iter::repeat_n(rusqlite::types::Null, unbound);
            let opcodes: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(nulls), |row| {
                    row.get::<_, String>(1)
                })
                .expect("its program")
                .collect::<Result<_, _>>()
                .expect("opcodes");
            assert!(opcodes.iter().any(|op| op == "Halt"), "{sql}: {opcodes:?}");
            let temporary: Vec<&String> = opcodes
                .iter()
                .filter(|op| {
                    matches!(
                        op.as_str(),
                        "OpenEphemeral" | "OpenAutoindex" | "SorterOpen"
                    )
                })
                .collect();
            assert!(temporary.is_empty(), "{sql} opens {temporary:?}");
        }
    }
}
