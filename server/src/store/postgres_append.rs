//! PostgreSQL's append path: a whole batch in a handful of statements.
//!
//! Every statement is a round trip to the database and a turn of its executor. Written one
//! statement at a time, a note cost about six of them, and a node's appends were bounded
//! by those waits at a few thousand a second. Here a batch is written as: one statement
//! that locks every conversation it appends to (in id order, so two nodes never wait on
//! each other in a cycle) and reads their heads; then, in memory, the seqs, the hash
//! chain and the rows; then one statement that inserts the events and the notes (`UNNEST`
//! of one array per column) and updates the conversations' heads (data-modifying `WITH`
//! clauses), and one more for the mention notifications if there are any. With `BEGIN`
//! and `COMMIT`, a batch of notes is four round trips. A batch holding a retried request
//! (a `client_id` stored before) is rolled back and written again with one more
//! statement that finds the events already stored under its `client_id`s.
//!
//! A batch of plain appends (messages and notes without mentions, no reply guard) to
//! conversations whose heads this node remembers from its last commit to them is one
//! statement in a transaction of its own: it locks the rows in the same order, moves
//! each head only if it is still the remembered one, and writes the rows only if every
//! head moved, failing on purpose otherwise (a head another node moved, a retry), after
//! which the batch takes the path above ([`write_on_cached_heads`]).
//!
//! The hot events (messages and notes, with their mention notifications) are what gets
//! batched. A reply guard and the rarer events (edits, pins, assignment, status, tags,
//! fields) first write out what is pending and then run their own statements, so every
//! statement sees the batch's earlier events, exactly as when each was written on its own.
//! The rules are SQLite's (`sqlite_append.rs`), and the conformance tests hold both to them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use backchannel_protocol::server::{Notification, NotificationKind};
use backchannel_protocol::{ConversationId, EventData, InboxId, UserId, Visibility};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};

use super::chain;
use super::postgres::{pg_event, pg_text, EVENT_COLUMNS};
use super::rows::{enum_text, event_from_row, get_u64, parse_uuid, stream_after};
use super::{
    to_micros, AppendShortcutCounters, Event, Heads, NewConversation, NewEvent, Precheck,
    ReplyGuard, StoreError, UserNotification, WriteOutcome, WriteRefusal, WriteRequest,
};

/// What one batch comes to: an outcome per request, or an engine error for all of them.
pub(super) type BatchResult = Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError>;

/// How many times a batch is written at most after its first attempt: again after
/// losing a `client_id` race, or after PostgreSQL broke a deadlock by aborting it.
const ATTEMPTS: usize = 3;

/// Writes `batch` in one transaction.
///
/// Unless a request in it could be refused (see [`may_refuse`]), the first attempt does
/// not look up the batch's `client_id`s: almost every request is new, and the lookup is
/// a round trip of five in a batch of notes (`BEGIN`, the locks, the lookup, the rows,
/// `COMMIT`). A retried request's rows are then skipped by the insert (`ON CONFLICT DO
/// NOTHING` on `(actor_id, client_id)`), the transaction is rolled back, and the batch
/// is written again with the lookup, which answers the retry with the stored event.
///
/// A `client_id` can also be taken by another node between the lookup and the insert,
/// only for another conversation (appends to one conversation hold its row lock); that
/// is rolled back and written again the same way. Conversations are locked in id order,
/// but another transaction (another node's, or this node's other lane) can still wait
/// on a row this batch holds while this batch waits on a `client_id` or a field value
/// it wrote; PostgreSQL then aborts one of the two, and an aborted batch is written
/// again rather than failing its requests.
pub(super) async fn write_batch(
    pool: &PgPool,
    cache: &HeadCache,
    batch: &[WriteRequest],
) -> BatchResult {
    if let Some(outcomes) = write_on_cached_heads(pool, cache, batch).await? {
        return Ok(outcomes);
    }
    let mut last_error = None;
    let mut look_up_claims = may_refuse(batch);
    let mut attempts = 0;
    while attempts < ATTEMPTS {
        // On any error the transaction is dropped uncommitted, which rolls it back: a
        // failed batch leaves nothing behind.
        let mut transaction = pool.begin().await?;
        let mut writer = BatchWriter::default();
        let written = match writer.write(&mut transaction, batch, look_up_claims).await {
            Ok(Written::Complete) => transaction.commit().await.map_err(StoreError::from),
            Ok(Written::LostRace) => {
                if look_up_claims {
                    attempts += 1;
                }
                look_up_claims = true;
                continue;
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                cache.remember(&writer.heads);
                return Ok(writer.outcomes);
            }
            Err(e) if broke_a_deadlock(&e) => {
                tracing::debug!("append batch aborted to break a deadlock; writing it again");
                last_error = Some(e);
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        StoreError::Corrupt("a client_id kept being taken by another node during the batch".into())
    }))
}

/// Conversations whose head a node remembers; past this many the memory is emptied and
/// refilled by the locking reads (a hundred bytes each).
const HEAD_CACHE_CONVERSATIONS: usize = 16 * 1024;

/// The heads of the conversations this node last wrote to, as they were committed: a
/// batch of plain appends to them is written in one statement that checks them, instead
/// of locking and reading them first (see [`write_on_cached_heads`]).
#[derive(Default)]
pub(super) struct HeadCache {
    heads: parking_lot::Mutex<HashMap<ConversationId, CachedHead>>,
    /// Batches written on remembered heads, and batches that tried and found a head
    /// moved (or a retry among them): shown in `/metrics`.
    pub(super) counters: AppendShortcutCounters,
}

#[derive(Clone)]
struct CachedHead {
    heads: Heads,
    last_hash: [u8; 32],
    contact_id: Option<String>,
    inbox_id: String,
}

impl HeadCache {
    /// Remembers the heads a committed batch left, unless a later commit (the other lane)
    /// already left newer ones.
    fn remember(&self, heads: &HashMap<ConversationId, Head>) {
        let mut cache = self.heads.lock();
        if cache.len() + heads.len() > HEAD_CACHE_CONVERSATIONS {
            cache.clear();
        }
        for (id, head) in heads {
            let newer = cache
                .get(id)
                .is_some_and(|cached| cached.heads.supervisor > head.heads.supervisor);
            if !newer {
                cache.insert(
                    *id,
                    CachedHead {
                        heads: head.heads,
                        last_hash: head.last_hash,
                        contact_id: head.contact_id.clone(),
                        inbox_id: head.inbox_id.clone(),
                    },
                );
            }
        }
    }

    /// How many batches were written on remembered heads, and how many fell back.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.counters.written.get(), self.counters.fell_back.get())
    }

    fn forget(&self, ids: &[ConversationId]) {
        let mut cache = self.heads.lock();
        for id in ids {
            cache.remove(id);
        }
    }
}

/// Writes a batch of plain appends (messages and notes without mentions, no reply guard,
/// to conversations whose heads this node remembers) as one statement in its own
/// transaction: the events, the notes and the heads, the heads updated only where they
/// are still the remembered ones. One round trip instead of four (`BEGIN`, the locking
/// read, the rows, `COMMIT`).
///
/// If another node (or this node's other lane) moved a head meanwhile, or a request is
/// a retry (its `(actor, client_id)` is stored), the statement fails on purpose (a
/// division by zero, so nothing of it is written), the batch's heads are forgotten, and
/// `None` sends the batch down the locking path. The rows are locked in id order, as on
/// the locking path; a `client_id` raced by another node's batch over two conversations
/// can still make a deadlock there as here, and PostgreSQL's abort of this statement
/// sends the batch down the locking path too.
async fn write_on_cached_heads(
    pool: &PgPool,
    cache: &HeadCache,
    batch: &[WriteRequest],
) -> Result<Option<Vec<Result<WriteOutcome, WriteRefusal>>>, StoreError> {
    let plain = batch.iter().all(|request| match request {
        WriteRequest::Append {
            events,
            guard: None,
        } => events.iter().all(|event| match &event.data {
            EventData::Message { .. } => true,
            EventData::Note { mentions, .. } => mentions.is_empty(),
            _ => false,
        }),
        _ => false,
    });
    if !plain || batch.is_empty() {
        return Ok(None);
    }
    let mut writer = BatchWriter::default();
    let mut expected = HashMap::new();
    {
        let cached = cache.heads.lock();
        for event in appended_events(batch) {
            let Some(head) = cached.get(&event.conversation_id) else {
                return Ok(None);
            };
            expected.insert(event.conversation_id, head.heads.supervisor);
            writer.heads.insert(
                event.conversation_id,
                Head {
                    heads: head.heads,
                    last_hash: head.last_hash,
                    contact_id: head.contact_id.clone(),
                    inbox_id: head.inbox_id.clone(),
                    dirty: false,
                    last_agent_at: None,
                    last_public_at: None,
                },
            );
        }
    }
    let mut conn = pool.acquire().await?;
    for request in batch {
        if let WriteRequest::Append { events, guard } = request {
            let events: Vec<Cow<'_, NewEvent>> = events.iter().map(pg_event).collect();
            // Plain appends run no statement here: no guard, no precheck, and their
            // projections wait for the one below.
            if writer.append(&mut conn, &events, *guard).await? == Written::LostRace {
                return Ok(None);
            }
        }
    }
    let pending = std::mem::take(&mut writer.pending);
    let heads = writer.take_dirty_heads();
    let expected: Vec<i64> = heads
        .conversations
        .iter()
        .map(|id| expected.get(id).map_or(-1, |seq: &u64| *seq as i64))
        .collect();
    let events = EventColumns::of(&pending.events);
    let notes = NoteColumns::of(&pending.notes)?;
    match insert_rows_on_heads(&mut conn, &events, &notes, &heads, &expected).await {
        Ok(()) => {
            cache.remember(&writer.heads);
            cache.counters.written.inc();
            Ok(Some(writer.outcomes))
        }
        Err(e) if heads_moved(&e) || broke_a_deadlock(&e) => {
            let ids: Vec<ConversationId> = writer.heads.keys().copied().collect();
            cache.forget(&ids);
            cache.counters.fell_back.inc();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether [`insert_rows_on_heads`] failed because a head had moved or an event was a
/// retry (its check divides by zero; a stale seq can also collide with a stored one).
fn heads_moved(error: &StoreError) -> bool {
    has_code(error, &["22012", "23505"])
}

/// Whether `error` is PostgreSQL's, with one of `codes` (SQLSTATE).
fn has_code(error: &StoreError, codes: &[&str]) -> bool {
    let StoreError::Database(error) = error else {
        return false;
    };
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| codes.contains(&code.as_ref()))
}

/// Whether a request of `batch` could be refused by the state it is written against (a
/// reply guard, a tag limit, required fields, an inbox): a retry of such a request must
/// find its stored event before that check, or a request that was written and whose
/// answer was lost would now be refused. Appends of messages and notes are refused
/// only for a missing conversation, which a retry's conversation never is.
fn may_refuse(batch: &[WriteRequest]) -> bool {
    batch.iter().any(|request| match request {
        WriteRequest::Append { events, guard } => {
            guard.is_some() || events.iter().any(|event| Precheck::of(event).is_some())
        }
        WriteRequest::Open(_) => true,
    })
}

/// Whether PostgreSQL rolled the transaction back to break a deadlock (or a
/// serialization conflict): nothing of it was written, and writing it again may succeed.
fn broke_a_deadlock(error: &StoreError) -> bool {
    has_code(error, &["40P01", "40001"])
}

#[derive(Debug, PartialEq, Eq)]
enum Written {
    Complete,
    /// A row was skipped because its `client_id` was taken meanwhile: roll back, retry.
    LostRace,
}

/// Everyone the batch may notify: the users its notes mention and the assignees of its
/// assignments (the author and a retried request's users too; an extra lock costs
/// nothing but a wait).
fn notified_users(batch: &[WriteRequest]) -> Vec<&UserId> {
    appended_events(batch)
        .flat_map(|event| match &event.data {
            EventData::Note { mentions, .. } => mentions.as_slice(),
            EventData::Assigned {
                assignee_id: Some(assignee),
                ..
            } => std::slice::from_ref(assignee),
            _ => &[],
        })
        .collect()
}

/// The events the batch's appends carry (an opening is its conversation's first event:
/// nothing to lock, nobody to notify).
fn appended_events(batch: &[WriteRequest]) -> impl Iterator<Item = &NewEvent> {
    batch.iter().flat_map(|request| match request {
        WriteRequest::Append { events, .. } => events.as_slice(),
        WriteRequest::Open(_) => &[],
    })
}

/// Takes, until the transaction ends, the lock on drawing notification ids for each of
/// `users`. Ids come from one sequence and are drawn before the commit, so without it
/// two transactions (two nodes, or this node's two lanes) could commit a user's
/// notifications out of id order, and a client that had shown id N and marked `up_to`
/// N would mark read an N-1 that arrived after. Under the lock, a user's ids are drawn
/// and committed one transaction at a time: in that user's commit order. Locks are taken
/// after the conversations' rows and in key order, as every batch does, so two batches
/// never wait on each other in a cycle.
pub(super) async fn lock_notified_users(
    conn: &mut PgConnection,
    users: &[&UserId],
) -> Result<(), StoreError> {
    if users.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<i64> = users
        .iter()
        .map(|user| notification_lock_key(user))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    // A function scan returns the array's elements in order, so the locks are taken in it.
    sqlx::query("SELECT pg_advisory_xact_lock(key) FROM UNNEST($1::int8[]) AS key")
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The advisory lock key of a user's notifications: the same on every node (a hash of the
/// id, not Rust's per-process one). Two users sharing a key only wait for each other.
fn notification_lock_key(user: &UserId) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"backchannel notifications\0")
        .chain_update(pg_text(user.as_str()).as_bytes())
        .finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// A conversation's head as the batch moves it.
struct Head {
    heads: Heads,
    last_hash: [u8; 32],
    contact_id: Option<String>,
    /// Its inbox (never changes): the mention notifications written to it carry it.
    inbox_id: String,
    /// Set once the batch appended to it: the head must be written back.
    dirty: bool,
    /// The batch's latest event in the agents' stream, and in the public one: the
    /// conversation's activity as staff and as the customer see it. A supervisors-only
    /// event moves neither, or agents would see one happen.
    last_agent_at: Option<i64>,
    last_public_at: Option<i64>,
}

/// An event stored earlier under an `(actor, client_id)`, or written earlier in this batch.
enum Claim {
    Stored(Arc<Event>),
    InBatch(Arc<Event>),
}

/// Rows waiting for the next [`BatchWriter::flush`].
#[derive(Default)]
struct Pending {
    /// Each event with its encoded payload.
    events: Vec<(Arc<Event>, String)>,
    /// Each note event with its conversation's contact.
    notes: Vec<(Arc<Event>, Option<String>)>,
    /// Where each notification waiting for its id sits: (outcome, notification).
    notifications: Vec<(usize, usize)>,
}

#[derive(Default)]
struct BatchWriter {
    heads: HashMap<ConversationId, Head>,
    claims: HashMap<(String, String), Claim>,
    pending: Pending,
    /// One per request so far. A request's outcome is pushed before its events are
    /// projected, so a flush in the middle of it can give its notifications their ids.
    outcomes: Vec<Result<WriteOutcome, WriteRefusal>>,
}

impl BatchWriter {
    /// Writes the batch's rows; `look_up_claims` first reads the events already stored
    /// under its `client_id`s (without, a retried request makes the batch
    /// [`Written::LostRace`]).
    async fn write(
        &mut self,
        conn: &mut PgConnection,
        batch: &[WriteRequest],
        look_up_claims: bool,
    ) -> Result<Written, StoreError> {
        self.lock_and_read_heads(conn, batch).await?;
        lock_notified_users(conn, &notified_users(batch)).await?;
        if look_up_claims {
            self.read_claims(conn, batch).await?;
        }
        for request in batch {
            let written = match request {
                WriteRequest::Append { events, guard } => {
                    let events: Vec<Cow<'_, NewEvent>> = events.iter().map(pg_event).collect();
                    self.append(conn, &events, *guard).await?
                }
                WriteRequest::Open(new) => self.open_conversation(conn, new).await?,
            };
            if written == Written::LostRace {
                return Ok(Written::LostRace);
            }
        }
        self.flush(conn).await
    }

    /// Locks the row of every existing conversation the batch appends to, in id order,
    /// and reads its head.
    async fn lock_and_read_heads(
        &mut self,
        conn: &mut PgConnection,
        batch: &[WriteRequest],
    ) -> Result<(), StoreError> {
        let mut ids: Vec<String> = appended_events(batch)
            .map(|event| event.conversation_id.to_string())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort();
        ids.dedup();
        // Rows are locked in the order the sort returns them.
        let rows = sqlx::query(
            "SELECT id::text AS id, public_seq, agent_seq, supervisor_seq, last_hash, \
             contact_id, inbox_id FROM conversations WHERE id = ANY($1::uuid[]) \
             ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let id = row.try_get::<String, _>("id")?;
            let id = ConversationId(parse_uuid(&id, "conversation id")?);
            let last_hash: Vec<u8> = row.try_get("last_hash")?;
            self.heads.insert(
                id,
                Head {
                    heads: Heads {
                        public: get_u64(row, "public_seq")?,
                        agent: get_u64(row, "agent_seq")?,
                        supervisor: get_u64(row, "supervisor_seq")?,
                    },
                    last_hash: last_hash
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("last_hash is not 32 bytes".into()))?,
                    contact_id: row.try_get("contact_id")?,
                    inbox_id: row.try_get("inbox_id")?,
                    dirty: false,
                    last_agent_at: None,
                    last_public_at: None,
                },
            );
        }
        Ok(())
    }

    /// Reads the events already stored under the batch's `(actor, client_id)`s. Read after
    /// the locks, so a retry of an append to a locked conversation, committed by another
    /// node meanwhile, is seen.
    async fn read_claims(
        &mut self,
        conn: &mut PgConnection,
        batch: &[WriteRequest],
    ) -> Result<(), StoreError> {
        let mut actors = Vec::new();
        let mut client_ids = Vec::new();
        for request in batch {
            let events = match request {
                WriteRequest::Append { events, .. } => events.as_slice(),
                WriteRequest::Open(new) => std::slice::from_ref(&new.opened),
            };
            for event in events {
                if let Some(client_id) = &event.client_id {
                    actors.push(pg_text(event.actor.id.as_str()).into_owned());
                    client_ids.push(pg_text(client_id).into_owned());
                }
            }
        }
        if actors.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE (actor_id, client_id) IN \
             (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        ))
        .bind(&actors)
        .bind(&client_ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let event = event_from_row(row)?;
            if let Some(client_id) = event.client_id.clone() {
                let key = (event.view.actor.id.as_str().to_owned(), client_id);
                self.claims.insert(key, Claim::Stored(Arc::new(event)));
            }
        }
        Ok(())
    }

    async fn open_conversation(
        &mut self,
        conn: &mut PgConnection,
        new: &NewConversation,
    ) -> Result<Written, StoreError> {
        let opened = pg_event(&new.opened);
        // A retried open is answered with the stored event and opens nothing.
        if let Some(duplicate) = self.duplicate_of(&opened) {
            self.outcomes.push(Ok(duplicate));
            return Ok(Written::Complete);
        }
        let inbox = sqlx::query("SELECT 1 FROM inboxes WHERE id = $1")
            .bind(pg_text(new.inbox_id.as_str()))
            .fetch_optional(&mut *conn)
            .await?;
        if inbox.is_none() {
            self.outcomes.push(Err(WriteRefusal::InboxNotFound));
            return Ok(Written::Complete);
        }
        let at = to_micros(new.opened.at);
        let contact_id = new
            .contact_id
            .as_ref()
            .map(|c| pg_text(c.as_str()).into_owned());
        sqlx::query(
            "INSERT INTO conversations (id, inbox_id, contact_id, subject, last_hash, \
             created_at, last_activity_at, last_public_at, activity_bucket) \
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(new.id.to_string())
        .bind(pg_text(new.inbox_id.as_str()))
        .bind(contact_id.as_deref())
        .bind(new.subject.as_deref().map(pg_text))
        .bind(&chain::GENESIS[..])
        .bind(at)
        .bind(at)
        .bind(at)
        .bind(super::activity_bucket(at))
        .execute(&mut *conn)
        .await?;
        self.heads.insert(
            new.id,
            Head {
                heads: Heads::default(),
                last_hash: chain::GENESIS,
                contact_id,
                inbox_id: pg_text(new.inbox_id.as_str()).into_owned(),
                dirty: false,
                last_agent_at: None,
                last_public_at: None,
            },
        );
        let events: Vec<_> = std::iter::once(opened)
            .chain(new.then.iter().map(pg_event))
            .collect();
        self.append(conn, &events, None).await
    }

    /// The answer to a request whose first event's `client_id` was used before.
    fn duplicate_of(&self, first: &NewEvent) -> Option<WriteOutcome> {
        let client_id = first.client_id.as_ref()?;
        let key = (first.actor.id.as_str().to_owned(), client_id.clone());
        let event = match self.claims.get(&key)? {
            Claim::Stored(event) | Claim::InBatch(event) => event.clone(),
        };
        Some(WriteOutcome {
            events: vec![event],
            notifications: Vec::new(),
            duplicate: true,
        })
    }

    /// Appends events of one conversation: allocates their seqs from the conversation's
    /// head, chains their hashes, and queues or runs the projections they imply. Every
    /// refusal comes before anything of the request is written. Pushes the request's
    /// outcome.
    async fn append(
        &mut self,
        conn: &mut PgConnection,
        events: &[Cow<'_, NewEvent>],
        guard: Option<ReplyGuard>,
    ) -> Result<Written, StoreError> {
        let Some(first) = events.first() else {
            self.outcomes.push(Ok(WriteOutcome {
                events: Vec::new(),
                notifications: Vec::new(),
                duplicate: false,
            }));
            return Ok(Written::Complete);
        };
        if let Some(duplicate) = self.duplicate_of(first) {
            self.outcomes.push(Ok(duplicate));
            return Ok(Written::Complete);
        }
        let conversation = first.conversation_id;
        if !self.heads.contains_key(&conversation) {
            self.outcomes.push(Err(WriteRefusal::ConversationNotFound));
            return Ok(Written::Complete);
        }
        if let Some(guard) = guard {
            // The guard reads the log: the batch's earlier events must be in it.
            if self.flush(conn).await? == Written::LostRace {
                return Ok(Written::LostRace);
            }
            let unseen = unseen(conn, conversation, guard, &first.actor.id).await?;
            if !unseen.is_empty() {
                self.outcomes.push(Err(WriteRefusal::Unseen(unseen)));
                return Ok(Written::Complete);
            }
        }
        for new in events {
            if let Some(refusal) = precheck(conn, conversation, new).await? {
                self.outcomes.push(Err(refusal));
                return Ok(Written::Complete);
            }
        }
        let outcome = self.outcomes.len();
        self.outcomes.push(Ok(WriteOutcome {
            events: Vec::with_capacity(events.len()),
            notifications: Vec::new(),
            duplicate: false,
        }));
        for new in events.iter().map(|e| e.as_ref()) {
            if new.conversation_id != conversation {
                return Err(StoreError::Corrupt(
                    "one append request spans two conversations".into(),
                ));
            }
            let Some(head) = self.heads.get_mut(&conversation) else {
                return Err(StoreError::Corrupt("a locked conversation vanished".into()));
            };
            let (event, payload) = next_event(new, head)?;
            let contact_id = head.contact_id.clone();
            let event = Arc::new(event);
            if let Some(client_id) = &new.client_id {
                let key = (new.actor.id.as_str().to_owned(), client_id.clone());
                if self.claims.contains_key(&key) {
                    return Err(StoreError::Corrupt(
                        "a client_id was reused inside one append request".into(),
                    ));
                }
                self.claims.insert(key, Claim::InBatch(event.clone()));
            }
            self.pending.events.push((event.clone(), payload));
            self.outcome_mut(outcome)?.events.push(event.clone());
            if self.project(conn, &event, contact_id, outcome).await? == Written::LostRace {
                return Ok(Written::LostRace);
            }
        }
        Ok(Written::Complete)
    }

    fn outcome_mut(&mut self, index: usize) -> Result<&mut WriteOutcome, StoreError> {
        match self.outcomes.get_mut(index) {
            Some(Ok(outcome)) => Ok(outcome),
            _ => Err(StoreError::Corrupt(
                "an accepted request's outcome vanished".into(),
            )),
        }
    }

    /// Queues (notes, mentions) or runs (everything rarer) the projections of one event.
    async fn project(
        &mut self,
        conn: &mut PgConnection,
        event: &Arc<Event>,
        contact_id: Option<String>,
        outcome: usize,
    ) -> Result<Written, StoreError> {
        let actor = &event.view.actor;
        match &event.view.data {
            EventData::Note { mentions, .. } => {
                self.pending.notes.push((event.clone(), contact_id));
                let mut seen = HashSet::new();
                for user in mentions {
                    if *user != actor.id && seen.insert(user) {
                        let Some(head) = self.heads.get(&event.conversation_id) else {
                            return Err(StoreError::Corrupt(
                                "a locked conversation vanished".into(),
                            ));
                        };
                        let inbox = InboxId(head.inbox_id.clone());
                        let entry = self.outcome_mut(outcome)?;
                        let index = entry.notifications.len();
                        entry.notifications.push(notification(
                            user,
                            NotificationKind::Mention,
                            event,
                            inbox,
                        ));
                        self.pending.notifications.push((outcome, index));
                    }
                }
                Ok(Written::Complete)
            }
            EventData::ConversationOpened { .. } | EventData::Message { .. } => {
                Ok(Written::Complete)
            }
            _ => {
                // Rare: write out what is pending (an edit may follow its note in this
                // batch), then run the event's own statements.
                if self.flush(conn).await? == Written::LostRace {
                    return Ok(Written::LostRace);
                }
                let notifications = project_rare(conn, event).await?;
                self.outcome_mut(outcome)?
                    .notifications
                    .extend(notifications);
                Ok(Written::Complete)
            }
        }
    }

    /// Writes every pending row: events, notes and the heads of the conversations
    /// appended to in one statement, then notifications (ids drawn from their sequence
    /// first, in order).
    async fn flush(&mut self, conn: &mut PgConnection) -> Result<Written, StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let heads = self.take_dirty_heads();
        if !pending.events.is_empty() || !heads.ids.is_empty() {
            let events = EventColumns::of(&pending.events);
            let notes = NoteColumns::of(&pending.notes)?;
            let inserted = insert_rows(conn, &events, &notes, &heads).await?;
            if inserted != pending.events.len() {
                return Ok(Written::LostRace);
            }
        }
        if !pending.notifications.is_empty() {
            self.insert_notifications(conn, &pending.notifications)
                .await?;
        }
        Ok(Written::Complete)
    }

    async fn insert_notifications(
        &mut self,
        conn: &mut PgConnection,
        positions: &[(usize, usize)],
    ) -> Result<(), StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('notifications', 'id')) \
             FROM generate_series(1, $1) ORDER BY 1",
        )
        .bind(positions.len() as i32)
        .fetch_all(&mut *conn)
        .await?;
        if ids.len() != positions.len() {
            return Err(StoreError::Corrupt(
                "notification ids were not drawn".into(),
            ));
        }
        let mut columns = NotificationColumns::default();
        for (&(outcome, index), id) in positions.iter().zip(ids) {
            let Some(entry) = self.outcome_mut(outcome)?.notifications.get_mut(index) else {
                return Err(StoreError::Corrupt(
                    "a pending notification vanished".into(),
                ));
            };
            entry.notification.id = id as u64;
            columns.push(id, entry);
        }
        columns.insert(conn).await
    }

    /// The head of every conversation appended to since the last flush, to write back.
    fn take_dirty_heads(&mut self) -> HeadColumns {
        let mut columns = HeadColumns::default();
        for (id, head) in self.heads.iter_mut().filter(|(_, head)| head.dirty) {
            columns.conversations.push(*id);
            columns.ids.push(id.to_string());
            columns.public.push(head.heads.public as i64);
            columns.agent.push(head.heads.agent as i64);
            columns.supervisor.push(head.heads.supervisor as i64);
            columns.hashes.push(head.last_hash.to_vec());
            columns.last_agent_at.push(head.last_agent_at.take());
            columns.last_public_at.push(head.last_public_at.take());
            head.dirty = false;
        }
        columns
    }
}

/// The next event of `head`'s conversation: its seqs and its link in the hash chain;
/// moves the head past it. Returns the event and its encoded payload.
fn next_event(new: &NewEvent, head: &mut Head) -> Result<(Event, String), StoreError> {
    let (event, payload) = new.seal(head.heads, &head.last_hash)?;
    head.heads = head.heads.after(&event.seqs);
    head.last_hash = event.hash;
    head.dirty = true;
    let at = to_micros(new.at);
    if event.seqs.agent.is_some() {
        head.last_agent_at = Some(at);
    }
    if event.seqs.public.is_some() {
        head.last_public_at = Some(at);
    }
    Ok((event, payload))
}

/// Event rows, one array per column.
#[derive(Default)]
struct EventColumns<'a> {
    ids: Vec<String>,
    conversations: Vec<String>,
    supervisor: Vec<i64>,
    agent: Vec<Option<i64>>,
    public: Vec<Option<i64>>,
    kinds: Vec<&'static str>,
    visibilities: Vec<&'static str>,
    actor_ids: Vec<&'a str>,
    actor_roles: Vec<&'static str>,
    actor_names: Vec<Option<&'a str>>,
    client_ids: Vec<Option<&'a str>>,
    payloads: Vec<&'a str>,
    created: Vec<i64>,
    hashes: Vec<&'a [u8]>,
}

impl<'a> EventColumns<'a> {
    fn of(events: &'a [(Arc<Event>, String)]) -> Self {
        let mut c = EventColumns::default();
        for (event, payload) in events {
            c.ids.push(event.view.id.to_string());
            c.conversations.push(event.conversation_id.to_string());
            c.supervisor.push(event.seqs.supervisor as i64);
            c.agent.push(event.seqs.agent.map(|s| s as i64));
            c.public.push(event.seqs.public.map(|s| s as i64));
            c.kinds.push(event.view.data.kind());
            c.visibilities.push(event.view.data.visibility().as_str());
            c.actor_ids.push(event.view.actor.id.as_str());
            c.actor_roles.push(event.view.actor.role.as_str());
            c.actor_names.push(event.view.actor.name.as_deref());
            c.client_ids.push(event.client_id.as_deref());
            c.payloads.push(payload.as_str());
            c.created.push(to_micros(event.view.at));
            c.hashes.push(&event.hash[..]);
        }
        c
    }
}

/// Note rows (their search vector is a generated column), one array per column.
#[derive(Default)]
struct NoteColumns<'a> {
    ids: Vec<String>,
    conversations: Vec<String>,
    contacts: Vec<Option<&'a str>>,
    author_ids: Vec<&'a str>,
    author_roles: Vec<&'static str>,
    author_names: Vec<Option<&'a str>>,
    types: Vec<String>,
    audiences: Vec<String>,
    bodies: Vec<Cow<'a, str>>,
    created: Vec<i64>,
}

impl<'a> NoteColumns<'a> {
    fn of(notes: &'a [(Arc<Event>, Option<String>)]) -> Result<Self, StoreError> {
        let mut c = NoteColumns::default();
        for (event, contact_id) in notes {
            let EventData::Note {
                body,
                note_type,
                audience,
                ..
            } = &event.view.data
            else {
                return Err(StoreError::Corrupt("a pending note is not a note".into()));
            };
            c.ids.push(event.view.id.to_string());
            c.conversations.push(event.conversation_id.to_string());
            c.contacts.push(contact_id.as_deref());
            c.author_ids.push(event.view.actor.id.as_str());
            c.author_roles.push(event.view.actor.role.as_str());
            c.author_names.push(event.view.actor.name.as_deref());
            c.types.push(enum_text(note_type)?);
            c.audiences.push(enum_text(audience)?);
            c.bodies.push(pg_text(body));
            c.created.push(to_micros(event.view.at));
        }
        Ok(c)
    }
}

/// Conversation heads to write back, one array per column.
#[derive(Default)]
struct HeadColumns {
    /// The conversations, in the columns' order (not bound: `ids` is their text).
    conversations: Vec<ConversationId>,
    ids: Vec<String>,
    public: Vec<i64>,
    agent: Vec<i64>,
    supervisor: Vec<i64>,
    hashes: Vec<Vec<u8>>,
    last_agent_at: Vec<Option<i64>>,
    last_public_at: Vec<Option<i64>>,
}

/// The events (`$1`–`$14`); a row whose `(actor, client_id)` is stored already is
/// skipped. Followed by a `WHERE` or nothing, then [`SKIP_RETRIES`].
const INSERT_EVENTS: &str = "INSERT INTO events (id, conversation_id, supervisor_seq, \
     agent_seq, public_seq, kind, visibility, actor_id, actor_role, actor_name, client_id, \
     payload, created_at, hash) \
     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::int8[], $5::int8[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
     $13::int8[], $14::bytea[]) ";
const SKIP_RETRIES: &str =
    "ON CONFLICT (actor_id, client_id) WHERE client_id IS NOT NULL DO NOTHING RETURNING id";

/// The notes (`$15`–`$24`). Followed by a `WHERE` or nothing.
const INSERT_NOTES: &str = "INSERT INTO notes (id, conversation_id, contact_id, author_id, \
     author_role, author_name, note_type, audience, body, created_at) \
     SELECT * FROM UNNEST($15::uuid[], $16::uuid[], $17::text[], $18::text[], $19::text[], \
     $20::text[], $21::text[], $22::text[], $23::text[], $24::int8[]) ";

/// The heads' new values (`$25`–`$31`) set on the conversations' rows, as `u`; the
/// caller adds `$32` and the `WHERE`. The activity times are NULL where the batch
/// appended nothing to that stream (`last_activity_at` is the agents' stream's: see
/// [`Head`]). `activity_bucket` is assigned at every append (10000000 is
/// `ACTIVITY_BUCKET_MICROS`), but PostgreSQL compares values: within the conversation's
/// slot no indexed column changes and the update is heap-only. (Not a generated column:
/// that re-reads its expression's definition at every statement.)
const SET_HEADS: &str = "UPDATE conversations AS c SET public_seq = u.public_seq, \
     agent_seq = u.agent_seq, supervisor_seq = u.supervisor_seq, last_hash = u.last_hash, \
     last_activity_at = COALESCE(u.last_activity_at, c.last_activity_at), \
     activity_bucket = COALESCE(u.last_activity_at / 10000000, c.activity_bucket), \
     last_public_at = COALESCE(u.last_public_at, c.last_public_at) \
     FROM UNNEST($25::uuid[], $26::int8[], $27::int8[], $28::int8[], $29::bytea[], \
     $30::int8[], $31::int8[]";

/// Inserts the events and the notes and writes back the heads, in one statement: one
/// round trip instead of three, which is most of a small commit's time (a single note's
/// commit is a handful of round trips). Returns how many events were inserted: fewer
/// than given if an `(actor, client_id)` was stored meanwhile by another transaction
/// (the row is skipped; the caller rolls the whole transaction back and retries).
async fn insert_rows(
    conn: &mut PgConnection,
    events: &EventColumns<'_>,
    notes: &NoteColumns<'_>,
    heads: &HeadColumns,
) -> Result<usize, StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH inserted AS ({INSERT_EVENTS} {SKIP_RETRIES}), \
             noted AS ({INSERT_NOTES}), \
             moved AS ({SET_HEADS}) AS u (id, public_seq, agent_seq, supervisor_seq, \
             last_hash, last_activity_at, last_public_at) WHERE c.id = u.id) \
             SELECT count(*) FROM inserted"
        )
    });
    let inserted: i64 = bind_rows(sqlx::query_scalar(SQL.as_str()), events, notes, heads)
        .fetch_one(&mut *conn)
        .await?;
    usize::try_from(inserted).map_err(|_| StoreError::Corrupt("a negative row count".into()))
}

/// The same rows as [`insert_rows`], in a statement of its own (no transaction around
/// it), each head written only if its conversation's `supervisor_seq` is still the one
/// in `expected` (`$32`, in the heads' order). The statement first locks the
/// conversations' rows in id order, as the locking path does, then moves the heads,
/// and inserts the rows only if every head moved: so the event rows are written, as on
/// the locking path, only by the holder of their conversation's lock, and two writers
/// never wait on each other in a cycle. If a head had moved or an event was skipped as
/// a retry, the statement divides by zero, and nothing of it is written.
async fn insert_rows_on_heads(
    conn: &mut PgConnection,
    events: &EventColumns<'_>,
    notes: &NoteColumns<'_>,
    heads: &HeadColumns,
    expected: &[i64],
) -> Result<(), StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH locked AS (SELECT id FROM conversations WHERE id = ANY($25::uuid[]) \
         ORDER BY id FOR UPDATE), \
         moved AS ({SET_HEADS}, $32::int8[]) AS u (id, public_seq, agent_seq, \
         supervisor_seq, last_hash, last_activity_at, last_public_at, expected) \
         WHERE c.id = u.id AND c.supervisor_seq = u.expected \
         AND (SELECT count(*) FROM locked) = cardinality($25::uuid[]) RETURNING c.id), \
         inserted AS ({INSERT_EVENTS} \
         WHERE (SELECT count(*) FROM moved) = cardinality($25::uuid[]) {SKIP_RETRIES}), \
         noted AS ({INSERT_NOTES} \
         WHERE (SELECT count(*) FROM moved) = cardinality($25::uuid[])) \
         SELECT 1 / ((SELECT count(*) FROM inserted) = cardinality($1::uuid[]) \
         AND (SELECT count(*) FROM moved) = cardinality($25::uuid[]))::int4"
        )
    });
    let _: i32 = bind_rows(sqlx::query_scalar(SQL.as_str()), events, notes, heads)
        .bind(expected)
        .fetch_one(&mut *conn)
        .await?;
    Ok(())
}

/// Binds `$1`–`$31`: the events', the notes' and the heads' columns.
fn bind_rows<'q, O>(
    query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    events: &'q EventColumns<'_>,
    notes: &'q NoteColumns<'_>,
    heads: &'q HeadColumns,
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(&events.ids)
        .bind(&events.conversations)
        .bind(&events.supervisor)
        .bind(&events.agent)
        .bind(&events.public)
        .bind(&events.kinds)
        .bind(&events.visibilities)
        .bind(&events.actor_ids)
        .bind(&events.actor_roles)
        .bind(&events.actor_names)
        .bind(&events.client_ids)
        .bind(&events.payloads)
        .bind(&events.created)
        .bind(&events.hashes)
        .bind(&notes.ids)
        .bind(&notes.conversations)
        .bind(&notes.contacts)
        .bind(&notes.author_ids)
        .bind(&notes.author_roles)
        .bind(&notes.author_names)
        .bind(&notes.types)
        .bind(&notes.audiences)
        .bind(&notes.bodies)
        .bind(&notes.created)
        .bind(&heads.ids)
        .bind(&heads.public)
        .bind(&heads.agent)
        .bind(&heads.supervisor)
        .bind(&heads.hashes)
        .bind(&heads.last_agent_at)
        .bind(&heads.last_public_at)
}

/// Notification rows, one array per column.
#[derive(Default)]
struct NotificationColumns {
    ids: Vec<i64>,
    users: Vec<String>,
    kinds: Vec<&'static str>,
    conversations: Vec<String>,
    events: Vec<String>,
    from_ids: Vec<String>,
    from_roles: Vec<&'static str>,
    from_names: Vec<Option<String>>,
    created: Vec<i64>,
}

impl NotificationColumns {
    fn push(&mut self, id: i64, entry: &UserNotification) {
        let n = &entry.notification;
        self.ids.push(id);
        self.users.push(entry.user_id.as_str().to_owned());
        self.kinds.push(n.kind.as_str());
        self.conversations.push(n.conversation_id.to_string());
        self.events.push(n.event_id.to_string());
        self.from_ids.push(n.from.id.as_str().to_owned());
        self.from_roles.push(n.from.role.as_str());
        self.from_names.push(n.from.name.clone());
        self.created.push(to_micros(n.at));
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO notifications (id, user_id, kind, conversation_id, event_id, from_id, \
             from_role, from_name, created_at) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], \
             $6::text[], $7::text[], $8::text[], $9::int8[])",
        )
        .bind(&self.ids)
        .bind(&self.users)
        .bind(&self.kinds)
        .bind(&self.conversations)
        .bind(&self.events)
        .bind(&self.from_ids)
        .bind(&self.from_roles)
        .bind(&self.from_names)
        .bind(&self.created)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// A notification of `event` (in a conversation of `inbox`) for `user`, its id drawn when
/// it is written.
fn notification(
    user: &UserId,
    kind: NotificationKind,
    event: &Event,
    inbox: InboxId,
) -> UserNotification {
    UserNotification {
        user_id: UserId(pg_text(user.as_str()).into_owned()),
        notification: Notification {
            id: 0,
            kind,
            conversation_id: event.conversation_id,
            event_id: event.view.id,
            from: event.view.actor.clone(),
            at: event.view.at,
            read: false,
        },
        supervisors_only: event.visibility() == Visibility::Supervisors,
        inbox: Some(inbox),
    }
}

/// The state-dependent rules of [`Precheck`], read inside the append transaction.
async fn precheck(
    conn: &mut PgConnection,
    conversation: ConversationId,
    new: &NewEvent,
) -> Result<Option<WriteRefusal>, StoreError> {
    let id = conversation.to_string();
    Ok(match Precheck::of(new) {
        None => None,
        Some(Precheck::TagLimit { added, removed }) => {
            let rows =
                sqlx::query("SELECT tag FROM conversation_tags WHERE conversation_id = $1::uuid")
                    .bind(&id)
                    .fetch_all(&mut *conn)
                    .await?;
            let current = rows
                .iter()
                .map(|r| r.try_get::<String, _>("tag"))
                .collect::<Result<Vec<_>, _>>()?;
            Precheck::tags(added, removed, current)
        }
        Some(Precheck::RequiredFields) => {
            let rows = sqlx::query(
                "SELECT key FROM field_definitions WHERE required \
                 AND applies_to = 'conversation' AND key NOT IN \
                 (SELECT key FROM field_values WHERE target = 'conversation' \
                 AND target_id = $1) ORDER BY key",
            )
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
            let missing = rows
                .iter()
                .map(|r| r.try_get::<String, _>("key"))
                .collect::<Result<Vec<_>, _>>()?;
            Precheck::required(missing)
        }
    })
}

/// Messages and notes by others after `guard.seen` in the sender's stream.
async fn unseen(
    conn: &mut PgConnection,
    conversation: ConversationId,
    guard: ReplyGuard,
    sender: &UserId,
) -> Result<Vec<Event>, StoreError> {
    let (after_seq, order) = stream_after(guard.audience, "$2");
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = $1::uuid \
         AND {after_seq} AND actor_id <> $3 \
         AND kind IN ('message', 'note') ORDER BY {order} LIMIT 50"
    ))
    .bind(conversation.to_string())
    .bind(guard.seen as i64)
    .bind(pg_text(sender.as_str()))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// Runs the projections of a rare event (edits, pins, assignment, status, tags, fields),
/// returning the notifications it caused (with their ids).
async fn project_rare(
    conn: &mut PgConnection,
    event: &Event,
) -> Result<Vec<UserNotification>, StoreError> {
    let mut notifications = Vec::new();
    let conversation = event.conversation_id.to_string();
    let actor = &event.view.actor;
    match &event.view.data {
        EventData::NoteEdited { note_id, body, .. } => {
            sqlx::query("UPDATE notes SET body = $1 WHERE id = $2::uuid")
                .bind(pg_text(body))
                .bind(note_id.to_string())
                .execute(&mut *conn)
                .await?;
        }
        EventData::NotePinned {
            note_id, pinned, ..
        } => {
            sqlx::query("UPDATE notes SET pinned = $1 WHERE id = $2::uuid")
                .bind(*pinned)
                .bind(note_id.to_string())
                .execute(&mut *conn)
                .await?;
        }
        EventData::Assigned {
            assignee_id,
            team_id,
        } => {
            sqlx::query(
                "UPDATE conversations SET assignee_id = $1, team_id = $2 WHERE id = $3::uuid",
            )
            .bind(assignee_id.as_ref().map(|a| pg_text(a.as_str())))
            .bind(team_id.as_ref().map(|t| pg_text(t.as_str())))
            .bind(&conversation)
            .execute(&mut *conn)
            .await?;
            if let Some(assignee) = assignee_id {
                if *assignee != actor.id {
                    let n = notify(conn, assignee, NotificationKind::Assigned, event).await?;
                    notifications.push(n);
                }
            }
        }
        EventData::StatusChanged { status } => {
            sqlx::query("UPDATE conversations SET status = $1 WHERE id = $2::uuid")
                .bind(status.as_str())
                .bind(&conversation)
                .execute(&mut *conn)
                .await?;
        }
        EventData::TagsChanged { added, removed } => {
            for tag in added {
                sqlx::query(
                    "INSERT INTO conversation_tags (conversation_id, tag) \
                     VALUES ($1::uuid, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&conversation)
                .bind(pg_text(tag))
                .execute(&mut *conn)
                .await?;
            }
            for tag in removed {
                sqlx::query(
                    "DELETE FROM conversation_tags WHERE conversation_id = $1::uuid \
                     AND tag = $2",
                )
                .bind(&conversation)
                .bind(pg_text(tag))
                .execute(&mut *conn)
                .await?;
            }
        }
        EventData::FieldsChanged {
            target,
            target_id,
            changes,
        } => {
            for (key, value) in changes {
                if value.is_null() {
                    sqlx::query(
                        "DELETE FROM field_values WHERE target = $1 AND target_id = $2 \
                         AND key = $3",
                    )
                    .bind(target.as_str())
                    .bind(pg_text(target_id))
                    .bind(pg_text(key))
                    .execute(&mut *conn)
                    .await?;
                } else {
                    sqlx::query(
                        "INSERT INTO field_values (target, target_id, key, value) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (target, target_id, key) \
                         DO UPDATE SET value = excluded.value",
                    )
                    .bind(target.as_str())
                    .bind(pg_text(target_id))
                    .bind(pg_text(key))
                    .bind(value.to_string())
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        // Queued by `BatchWriter::project`, never run here.
        EventData::Note { .. }
        | EventData::ConversationOpened { .. }
        | EventData::Message { .. } => {}
    }
    Ok(notifications)
}

async fn notify(
    conn: &mut PgConnection,
    user: &UserId,
    kind: NotificationKind,
    event: &Event,
) -> Result<UserNotification, StoreError> {
    let actor = &event.view.actor;
    let row = sqlx::query(
        "INSERT INTO notifications (user_id, kind, conversation_id, event_id, from_id, \
         from_role, from_name, created_at) \
         VALUES ($1, $2, $3::uuid, $4::uuid, $5, $6, $7, $8) \
         RETURNING id, (SELECT inbox_id FROM conversations WHERE id = $3::uuid) AS inbox_id",
    )
    .bind(pg_text(user.as_str()))
    .bind(kind.as_str())
    .bind(event.conversation_id.to_string())
    .bind(event.view.id.to_string())
    .bind(actor.id.as_str())
    .bind(actor.role.as_str())
    .bind(actor.name.as_deref())
    .bind(to_micros(event.view.at))
    .fetch_one(&mut *conn)
    .await?;
    Ok(UserNotification {
        user_id: UserId(pg_text(user.as_str()).into_owned()),
        notification: Notification {
            id: get_u64(&row, "id")?,
            kind,
            conversation_id: event.conversation_id,
            event_id: event.view.id,
            from: actor.clone(),
            at: event.view.at,
            read: false,
        },
        supervisors_only: event.visibility() == Visibility::Supervisors,
        inbox: Some(InboxId(row.try_get("inbox_id")?)),
    })
}
