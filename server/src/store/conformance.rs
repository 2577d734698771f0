//! The storage conformance suite: one set of tests, run against every engine.
//!
//! Each test body below takes a [`Harness`] and speaks to the engine only through the
//! [`Store`] trait (plus two backend-specific helpers: opening a second node on the same
//! data, and tampering with a stored row behind the store's back). The `store_tests!`
//! macro at the end turns each body into two tests, `conformance::sqlite::NAME` on a fresh
//! SQLite store in a temporary directory, and `conformance::postgres::NAME` on a fresh
//! PostgreSQL database created for that test on 127.0.0.1:5432 (user `postgres`, trust
//! auth; `BACKCHANNEL_TEST_POSTGRES` overrides the server URL) and dropped afterwards,
//! even when the test fails. If PostgreSQL is unreachable, the PostgreSQL tests fail:
//! they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use backchannel_protocol::http::{FieldDefinition, FieldType, TagDefinition, Team};
use backchannel_protocol::server::NotificationKind;
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, FieldTarget, InboxId, NoteAudience,
    NoteType, Role, Status, TeamId, UserId,
};
use futures::FutureExt;
use serde_json::json;
use sqlx::Connection;
use time::OffsetDateTime;

use super::chain;
use super::postgres::PgStore;
use super::sqlite::{SqliteStore, DATABASE_FILE};
use super::{
    ConversationFilter, DirectoryEntry, Event, MarkRead, NewConversation, NewEvent, NoteRecord,
    NoteSearch, NotificationReader, ReplyGuard, Store, WriteOutcome, WriteRefusal, WriteRequest,
};

/// The PostgreSQL server the suite creates its databases on.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

// ---------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------

enum Backend {
    Sqlite { dir: tempfile::TempDir },
    Postgres { server: String, database: String },
}

/// One fresh store, and what a test needs around it.
struct Harness {
    store: Arc<dyn Store>,
    backend: Backend,
    /// Other nodes opened on the same data, closed with the harness.
    nodes: parking_lot::Mutex<Vec<Arc<dyn Store>>>,
    /// Milliseconds after [`base_time`] handed out so far: events get increasing times.
    clock: AtomicI64,
}

fn base_time() -> OffsetDateTime {
    time::macros::datetime!(2026-01-01 09:00 UTC)
}

fn postgres_server() -> String {
    std::env::var("BACKCHANNEL_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

impl Harness {
    /// SQLite only: opens the data directory again (migrating it), after the test put
    /// its schema back as an older release left it. Event times go on from where they
    /// were.
    async fn reopen_migrated(self) -> Harness {
        let store = SqliteStore::open(self.sqlite_dir())
            .await
            .expect("reopen and migrate");
        let clock = self.clock.load(Ordering::SeqCst);
        let h = Harness::new(store, self.backend);
        h.clock.store(clock, Ordering::SeqCst);
        h
    }

    /// SQLite only: the data directory.
    fn sqlite_dir(&self) -> &std::path::Path {
        let Backend::Sqlite { dir } = &self.backend else {
            unreachable!("a SQLite harness")
        };
        dir.path()
    }

    fn new(store: Arc<dyn Store>, backend: Backend) -> Harness {
        Harness {
            store,
            backend,
            nodes: parking_lot::Mutex::new(Vec::new()),
            clock: AtomicI64::new(0),
        }
    }

    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(dir.path())
            .await
            .expect("open a SQLite store");
        Harness::new(store, Backend::Sqlite { dir })
    }

    async fn postgres() -> Harness {
        let server = postgres_server();
        let database = format!("bc_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {server} is unreachable ({e}): the PostgreSQL half of the \
                     store suite needs it and fails rather than skips"
                )
            });
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {database}: {e}"));
        let _ = admin.close().await;
        match PgStore::open(&format!("{server}/{database}")).await {
            Ok(store) => Harness::new(store, Backend::Postgres { server, database }),
            Err(e) => {
                drop_database(&server, &database).await;
                panic!("cannot open a PgStore on {database}: {e}");
            }
        }
    }

    /// Closes every store and drops the database, whether the test passed or not, then
    /// passes on the test's panic if it failed.
    async fn finish(self, result: std::thread::Result<()>) {
        let nodes = std::mem::take(&mut *self.nodes.lock());
        for node in nodes {
            node.close().await;
        }
        self.store.close().await;
        if let Backend::Postgres { server, database } = &self.backend {
            drop_database(server, database).await;
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// A second node on the same data: another SQLite store on the same file, or
    /// another PostgreSQL pool on the same database.
    async fn another_node(&self) -> Arc<dyn Store> {
        let node: Arc<dyn Store> = match &self.backend {
            Backend::Sqlite { dir } => SqliteStore::open(dir.path())
                .await
                .expect("open a second SQLite store"),
            Backend::Postgres { server, database } => {
                PgStore::open(&format!("{server}/{database}"))
                    .await
                    .expect("open a second PgStore")
            }
        };
        self.nodes.lock().push(node.clone());
        node
    }

    /// PostgreSQL only: a raw connection to the test database with a transaction open,
    /// standing for another node mid-append (`COMMIT` on it to finish).
    async fn other_node_transaction(&self) -> sqlx::PgConnection {
        let Backend::Postgres { server, database } = &self.backend else {
            unreachable!("a PostgreSQL harness")
        };
        let mut other = sqlx::PgConnection::connect(&format!("{server}/{database}"))
            .await
            .expect("connect to the test database");
        sqlx::query("BEGIN")
            .execute(&mut other)
            .await
            .expect("begin");
        other
    }

    /// The first column of every row a query returns, as text, read on a connection of
    /// its own. The engines' catalogs differ, so each gets its own spelling.
    async fn read_column(&self, sqlite: &str, postgres: &str) -> Vec<String> {
        let rows = match &self.backend {
            Backend::Sqlite { dir } => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join(DATABASE_FILE));
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .expect("connect to the SQLite file");
                let rows = sqlx::query_scalar(sqlite).fetch_all(&mut conn).await;
                let _ = conn.close().await;
                rows
            }
            Backend::Postgres { server, database } => {
                let mut conn = sqlx::PgConnection::connect(&format!("{server}/{database}"))
                    .await
                    .expect("connect to the test database");
                let rows = sqlx::query_scalar(postgres).fetch_all(&mut conn).await;
                let _ = conn.close().await;
                rows
            }
        };
        rows.expect("read")
    }

    /// How many conversations' `activity_bucket` is not the ten-second slot of their
    /// `last_activity_at`: the append writes it, in both engines.
    async fn misfiled_activity_buckets(&self) -> usize {
        const MISFILED: &str =
            "FROM conversations WHERE activity_bucket <> last_activity_at / 10000000";
        self.read_column(
            &format!("SELECT id {MISFILED}"),
            &format!("SELECT id::text {MISFILED}"),
        )
        .await
        .len()
    }

    /// The columns of `conversations` that some index (its primary key included) keys
    /// on, reads or filters by; `<expression>` stands for an expression or a predicate.
    async fn indexed_conversation_columns(&self) -> BTreeSet<String> {
        self.read_column(
            "SELECT COALESCE(ii.name, '<expression>') \
             FROM pragma_index_list('conversations') il, pragma_index_info(il.name) ii \
             UNION SELECT '<expression>' FROM pragma_index_list('conversations') \
             WHERE partial",
            "SELECT COALESCE(a.attname::text, '<expression>') FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum) \
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = 'conversations'::regclass \
             UNION SELECT '<expression>' FROM pg_index i \
             WHERE i.indrelid = 'conversations'::regclass \
             AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)",
        )
        .await
        .into_iter()
        .collect()
    }

    /// Rewrites an event's stored payload directly, as someone with database access
    /// could.
    async fn tamper_payload(&self, event: EventId, payload: &str) {
        let changed = match &self.backend {
            Backend::Sqlite { dir } => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join(DATABASE_FILE))
                    .busy_timeout(std::time::Duration::from_secs(5));
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .expect("connect to the SQLite file");
                let done = sqlx::query("UPDATE events SET payload = ? WHERE id = ?")
                    .bind(payload)
                    .bind(event.to_string())
                    .execute(&mut conn)
                    .await
                    .expect("tamper");
                let _ = conn.close().await;
                done.rows_affected()
            }
            Backend::Postgres { server, database } => {
                let mut conn = sqlx::PgConnection::connect(&format!("{server}/{database}"))
                    .await
                    .expect("connect to the test database");
                let done = sqlx::query("UPDATE events SET payload = $1 WHERE id = $2::uuid")
                    .bind(payload)
                    .bind(event.to_string())
                    .execute(&mut conn)
                    .await
                    .expect("tamper");
                let _ = conn.close().await;
                done.rows_affected()
            }
        };
        assert_eq!(changed, 1, "the tampered event exists");
    }

    /// The next time on this test's clock (a millisecond after the previous one).
    fn at(&self) -> OffsetDateTime {
        let ms = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        base_time() + time::Duration::milliseconds(ms)
    }

    /// Moves this test's clock on by `seconds` (into later slots of `activity_bucket`).
    fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds * 1000, Ordering::SeqCst);
    }

    fn event(
        &self,
        conversation: ConversationId,
        actor: &Actor,
        client_id: Option<&str>,
        data: EventData,
    ) -> NewEvent {
        NewEvent {
            id: EventId::new(),
            conversation_id: conversation,
            at: self.at(),
            actor: actor.clone(),
            client_id: client_id.map(str::to_owned),
            data,
        }
    }

    fn open_request(&self, inbox: &str, contact: Option<&str>) -> WriteRequest {
        let id = ConversationId::new();
        let opener = match contact {
            Some(contact) => customer(contact),
            None => agent("opener"),
        };
        let opened = self.event(
            id,
            &opener,
            None,
            EventData::ConversationOpened {
                inbox_id: InboxId(inbox.to_owned()),
                subject: Some(format!("about {inbox}")),
            },
        );
        WriteRequest::Open(Box::new(NewConversation {
            id,
            inbox_id: InboxId(inbox.to_owned()),
            contact_id: contact.map(|c| UserId(c.to_owned())),
            subject: Some(format!("about {inbox}")),
            opened,
            then: Vec::new(),
        }))
    }

    /// Opens a conversation (its `conversation_opened` event takes every stream's seq 1).
    async fn open(&self, inbox: &str, contact: Option<&str>) -> ConversationId {
        let request = self.open_request(inbox, contact);
        let WriteRequest::Open(new) = &request else {
            unreachable!()
        };
        let id = new.id;
        self.write(request).await.expect("conversation opened");
        id
    }

    /// Writes one request alone in its batch.
    async fn write(&self, request: WriteRequest) -> Result<WriteOutcome, WriteRefusal> {
        let mut outcomes = self
            .store
            .write_batch(vec![request])
            .await
            .expect("the batch commits");
        assert_eq!(outcomes.len(), 1);
        outcomes.remove(0)
    }

    /// Appends one event, which must be accepted.
    async fn append(&self, event: NewEvent) -> WriteOutcome {
        self.write(WriteRequest::append(event))
            .await
            .expect("append accepted")
    }

    /// The conversation's row as the store holds it now.
    async fn record(&self, conversation: ConversationId) -> super::ConversationRecord {
        self.store
            .conversation(conversation)
            .await
            .expect("read")
            .expect("the conversation exists")
    }

    /// Appends one event by `actor` and returns the stored event.
    async fn add(&self, conversation: ConversationId, actor: &Actor, data: EventData) -> Event {
        let outcome = self
            .append(self.event(conversation, actor, None, data))
            .await;
        assert!(!outcome.duplicate);
        outcome.events[0].as_ref().clone()
    }
}

async fn drop_database(server: &str, database: &str) {
    match sqlx::PgConnection::connect(&format!("{server}/postgres")).await {
        Ok(mut admin) => {
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .execute(&mut admin)
                .await
            {
                eprintln!("cannot drop the test database {database}: {e}");
            }
            let _ = admin.close().await;
        }
        Err(e) => eprintln!("cannot drop the test database {database}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn person(id: &str, role: Role) -> Actor {
    Actor {
        id: UserId(id.to_owned()),
        role,
        name: Some(format!("{id} (name)")),
    }
}

fn customer(id: &str) -> Actor {
    Actor {
        id: UserId(id.to_owned()),
        role: Role::Customer,
        name: None,
    }
}

fn agent(id: &str) -> Actor {
    person(id, Role::Agent)
}

fn supervisor(id: &str) -> Actor {
    person(id, Role::Supervisor)
}

fn user(id: &str) -> UserId {
    UserId(id.to_owned())
}

fn message(body: &str) -> EventData {
    EventData::Message {
        body: body.to_owned(),
    }
}

fn note(body: &str) -> EventData {
    typed_note(body, NoteType::General, NoteAudience::Agents)
}

fn supervisors_note(body: &str) -> EventData {
    typed_note(body, NoteType::Coaching, NoteAudience::Supervisors)
}

fn typed_note(body: &str, note_type: NoteType, audience: NoteAudience) -> EventData {
    EventData::Note {
        body: body.to_owned(),
        note_type,
        audience,
        mentions: Vec::new(),
    }
}

fn mentioning(body: &str, mentions: &[&str]) -> EventData {
    EventData::Note {
        body: body.to_owned(),
        note_type: NoteType::General,
        audience: NoteAudience::Agents,
        mentions: mentions.iter().map(|m| user(m)).collect(),
    }
}

fn edited(note_id: EventId, body: &str) -> EventData {
    EventData::NoteEdited {
        note_id,
        body: body.to_owned(),
        audience: NoteAudience::Agents,
    }
}

fn pinned(note_id: EventId, pinned: bool) -> EventData {
    EventData::NotePinned {
        note_id,
        pinned,
        audience: NoteAudience::Agents,
    }
}

fn assigned(assignee: Option<&str>, team: Option<&str>) -> EventData {
    EventData::Assigned {
        assignee_id: assignee.map(user),
        team_id: team.map(|t| TeamId(t.to_owned())),
    }
}

fn tags(added: &[&str], removed: &[&str]) -> EventData {
    EventData::TagsChanged {
        added: added.iter().map(|t| t.to_string()).collect(),
        removed: removed.iter().map(|t| t.to_string()).collect(),
    }
}

fn fields(target: FieldTarget, target_id: &str, changes: serde_json::Value) -> EventData {
    let changes: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(changes).expect("an object of changes");
    EventData::FieldsChanged {
        target,
        target_id: target_id.to_owned(),
        changes,
    }
}

fn seqs_of(events: &[Event], audience: Audience) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.seqs.for_audience(audience).expect("in this stream"))
        .collect()
}

fn note_ids(notes: &[NoteRecord]) -> BTreeSet<EventId> {
    notes.iter().map(|n| n.id).collect()
}

fn set<const N: usize>(ids: [EventId; N]) -> BTreeSet<EventId> {
    ids.into_iter().collect()
}

fn listing() -> ConversationFilter {
    ConversationFilter {
        limit: 50,
        ..ConversationFilter::default()
    }
}

fn search(terms: &[&str]) -> NoteSearch {
    NoteSearch {
        terms: terms.iter().map(|t| t.to_string()).collect(),
        include_supervisors: true,
        limit: 50,
        ..NoteSearch::default()
    }
}

async fn listed(h: &Harness, filter: ConversationFilter) -> Vec<ConversationId> {
    h.store
        .conversations(&filter)
        .await
        .expect("list conversations")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// The ids of a contact's conversations as the staff's contact view lists them.
async fn contact_listed(h: &Harness, contact: &str, limit: u32) -> Vec<ConversationId> {
    h.store
        .contact_conversations(&user(contact), None, limit)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

async fn found(h: &Harness, search: NoteSearch) -> BTreeSet<EventId> {
    note_ids(&h.store.search_notes(&search).await.expect("search notes"))
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// Every event takes the next supervisor seq, the next agent seq unless supervisors-only,
/// the next public seq only if public; each stream reads back gap-free, also when one
/// batch mixes conversations and visibilities.
/// The tag limit and resolving's required fields are checked inside the transaction,
/// against the state the append sees, so a request built on a stale read is refused.
async fn state_rules_are_checked_in_the_append_transaction(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let alice = agent("alice");
    let many: Vec<String> = (0..super::MAX_TAGS_PER_CONVERSATION)
        .map(|i| format!("t{i}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    h.add(conv, &alice, tags(&refs, &[])).await;
    let one_more = h
        .write(WriteRequest::append(h.event(
            conv,
            &alice,
            None,
            tags(&["extra"], &[]),
        )))
        .await;
    assert_eq!(one_more.err(), Some(WriteRefusal::TooManyTags));
    // Swapping one tag for another stays within the limit.
    h.write(WriteRequest::append(h.event(
        conv,
        &alice,
        None,
        tags(&["extra"], &["t0"]),
    )))
    .await
    .expect("a swap is within the limit");

    h.store
        .put_field(&FieldDefinition {
            key: "plan".into(),
            field_type: FieldType::Text,
            applies_to: FieldTarget::Conversation,
            label: "Plan".into(),
            required: true,
            options: Vec::new(),
        })
        .await
        .expect("put");
    let resolve = || {
        WriteRequest::append(h.event(
            conv,
            &alice,
            None,
            EventData::StatusChanged {
                status: Status::Resolved,
            },
        ))
    };
    assert_eq!(
        h.write(resolve()).await.err(),
        Some(WriteRefusal::RequiredFieldsMissing(vec!["plan".into()]))
    );
    h.add(
        conv,
        &alice,
        fields(
            FieldTarget::Conversation,
            &conv.to_string(),
            serde_json::json!({"plan": "pro"}),
        ),
    )
    .await;
    h.write(resolve())
        .await
        .expect("resolves once the field is set");
}

async fn seqs_are_gap_free_per_audience(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let (cust, alice, sue) = (customer("cust-1"), agent("alice"), supervisor("sue"));
    let other = h.open_request("support", None);
    let WriteRequest::Open(new_other) = &other else {
        unreachable!()
    };
    let other_id = new_other.id;
    let last_message = h.event(conv, &cust, None, message("thanks"));
    let last_message_at = last_message.at;
    let batch = vec![
        other,
        WriteRequest::append(h.event(conv, &cust, None, message("hello"))),
        WriteRequest::append(h.event(other_id, &alice, None, note("other conversation"))),
        WriteRequest::append(h.event(conv, &alice, None, note("internal"))),
        WriteRequest::append(h.event(conv, &sue, None, supervisors_note("coaching"))),
        WriteRequest::append(h.event(
            conv,
            &alice,
            None,
            EventData::StatusChanged {
                status: Status::Pending,
            },
        )),
        WriteRequest::Append {
            events: vec![
                h.event(conv, &alice, None, message("a reply")),
                h.event(conv, &sue, None, supervisors_note("good reply")),
            ],
            guard: None,
        },
        WriteRequest::append(last_message),
    ];
    let outcomes = h
        .store
        .write_batch(batch.clone())
        .await
        .expect("batch commits");
    type Triple = (u64, Option<u64>, Option<u64>);
    let seqs: Vec<Vec<Triple>> = outcomes
        .iter()
        .map(|o| {
            o.as_ref()
                .expect("accepted")
                .events
                .iter()
                .map(|e| (e.seqs.supervisor, e.seqs.agent, e.seqs.public))
                .collect()
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            vec![(1, Some(1), Some(1))],
            vec![(2, Some(2), Some(2))],
            vec![(2, Some(2), None)],
            vec![(3, Some(3), None)],
            vec![(4, None, None)],
            vec![(5, Some(4), None)],
            vec![(6, Some(5), Some(3)), (7, None, None)],
            vec![(8, Some(6), Some(4))],
        ]
    );

    for (audience, head) in [
        (Audience::Customer, 4),
        (Audience::Agents, 6),
        (Audience::Supervisors, 8),
    ] {
        let events = h
            .store
            .events_after(conv, audience, 0, 100)
            .await
            .expect("read stream");
        assert_eq!(seqs_of(&events, audience), (1..=head).collect::<Vec<_>>());
        assert!(events
            .iter()
            .all(|e| e.visibility().visible_to(audience) && e.conversation_id == conv));
        let page = h
            .store
            .events_after(conv, audience, 2, 2)
            .await
            .expect("read a page");
        assert_eq!(seqs_of(&page, audience), vec![3, 4]);
        // A bound past every seq reads nothing, however large (a client's `after`).
        for past in [head, i64::MAX as u64, u64::MAX] {
            let page = h
                .store
                .events_after(conv, audience, past, 100)
                .await
                .expect("read past the head");
            assert!(
                page.is_empty(),
                "after {past}: {:?}",
                seqs_of(&page, audience)
            );
        }
    }
    let customer_stream = h
        .store
        .events_after(conv, Audience::Customer, 0, 100)
        .await
        .expect("read stream");
    assert!(customer_stream.iter().all(|e| matches!(
        e.view.data,
        EventData::Message { .. } | EventData::ConversationOpened { .. }
    )));

    let record = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (
            record.heads.public,
            record.heads.agent,
            record.heads.supervisor
        ),
        (4, 6, 8)
    );
    assert_eq!(record.status, "pending");
    assert_eq!(record.last_activity_at, last_message_at);
    assert_eq!(record.last_public_at, last_message_at);
    let other = h
        .store
        .conversation(other_id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (
            other.heads.public,
            other.heads.agent,
            other.heads.supervisor
        ),
        (1, 2, 2)
    );
    // An internal event moves the activity time, not the customer's.
    let before = other.last_public_at;
    let later = h.add(other_id, &alice, note("later")).await;
    let other = h
        .store
        .conversation(other_id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(other.last_public_at, before);
    assert_eq!(other.last_activity_at, later.view.at);
}

/// A retried `(author, client_id)` returns the event stored the first time, writes
/// nothing, and notifies nobody again; another author may use the same client_id.
async fn idempotent_client_id_returns_stored_event(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let (cust, alice, bob) = (customer("cust-1"), agent("alice"), agent("bob"));
    let first = h
        .append(h.event(conv, &cust, Some("c-1"), message("hello")))
        .await;
    assert!(!first.duplicate);
    let stored = first.events[0].clone();
    assert_eq!(stored.client_id.as_deref(), Some("c-1"));

    let retry = h
        .append(h.event(conv, &cust, Some("c-1"), message("hello, again")))
        .await;
    assert!(retry.duplicate);
    assert_eq!(retry.events.len(), 1);
    assert_eq!(
        *retry.events[0], *stored,
        "the stored event, as first written"
    );
    assert!(retry.notifications.is_empty());

    // Twice in one batch: the second is the retry of the first.
    let a = h.event(conv, &alice, Some("n-1"), mentioning("ping @bob", &["bob"]));
    let b = h.event(
        conv,
        &alice,
        Some("n-1"),
        mentioning("ping @bob again", &["bob"]),
    );
    let outcomes = h
        .store
        .write_batch(vec![
            WriteRequest::append(a.clone()),
            WriteRequest::append(b),
        ])
        .await
        .expect("batch commits");
    let a_out = outcomes[0].as_ref().expect("accepted");
    let b_out = outcomes[1].as_ref().expect("accepted");
    assert!(!a_out.duplicate && b_out.duplicate);
    assert_eq!(b_out.events[0].view.id, a.id);
    assert_eq!(a_out.notifications.len(), 1);
    assert!(b_out.notifications.is_empty());
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("bob")))
            .await
            .expect("count"),
        1
    );

    // A retry that went to another conversation still gets the stored event.
    let elsewhere = h.open("support", Some("cust-2")).await;
    let retry = h
        .append(h.event(elsewhere, &cust, Some("c-1"), message("hello?")))
        .await;
    assert!(retry.duplicate);
    assert_eq!(retry.events[0].view.id, stored.view.id);

    // The key is per author.
    let other = h
        .append(h.event(conv, &bob, Some("c-1"), note("same key, other author")))
        .await;
    assert!(!other.duplicate);

    let record = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    // opened, hello, ping, bob's note: nothing else was written.
    assert_eq!(record.heads.supervisor, 4);
    assert_eq!(record.heads.public, 2);
    let fresh = h
        .store
        .conversation(elsewhere)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(fresh.heads.supervisor, 1);
}

/// A request that cannot apply is refused alone; the rest of its batch commits.
async fn refusals_do_not_fail_the_batch(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let (cust, alice) = (customer("cust-1"), agent("alice"));
    h.add(conv, &cust, message("question")).await;
    let unknown = ConversationId::new();
    let in_unknown_inbox = h.open_request("no-such-inbox", Some("cust-2"));
    let WriteRequest::Open(lost) = &in_unknown_inbox else {
        unreachable!()
    };
    let lost = lost.id;
    let valid_open = h.open_request("support", Some("cust-3"));
    let WriteRequest::Open(opened) = &valid_open else {
        unreachable!()
    };
    let opened = opened.id;
    let batch = vec![
        WriteRequest::append(h.event(unknown, &alice, Some("x-1"), note("nowhere"))),
        in_unknown_inbox,
        WriteRequest::append(h.event(conv, &alice, None, message("answer"))),
        valid_open,
        WriteRequest::Append {
            events: vec![h.event(conv, &cust, Some("x-2"), message("stale reply"))],
            guard: Some(ReplyGuard {
                audience: Audience::Customer,
                seen: 1,
            }),
        },
        WriteRequest::append(h.event(conv, &alice, None, note("after the refusals"))),
    ];
    let outcomes = h
        .store
        .write_batch(batch.clone())
        .await
        .expect("batch commits");
    assert_eq!(outcomes.len(), 6);
    assert_eq!(
        outcomes[0].as_ref().err(),
        Some(&WriteRefusal::ConversationNotFound)
    );
    assert_eq!(
        outcomes[1].as_ref().err(),
        Some(&WriteRefusal::InboxNotFound)
    );
    assert!(outcomes[2].is_ok());
    assert!(outcomes[3].is_ok());
    assert!(matches!(outcomes[4], Err(WriteRefusal::Unseen(_))));
    assert!(outcomes[5].is_ok());

    assert!(h.store.conversation(unknown).await.expect("read").is_none());
    assert!(h.store.conversation(lost).await.expect("read").is_none());
    assert!(h.store.conversation(opened).await.expect("read").is_some());
    let record = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    // opened, question, answer, note.
    assert_eq!(record.heads.supervisor, 4);
    // The refused client_ids were not stored: they can be used now.
    let later = h
        .append(h.event(conv, &cust, Some("x-2"), message("fresh reply")))
        .await;
    assert!(!later.duplicate);
}

/// An engine error fails the whole batch, and nothing of it is left behind; the store
/// keeps working afterwards.
async fn failed_batch_leaves_nothing(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let other = h.open("support", Some("cust-2")).await;
    let alice = agent("alice");
    let before = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    let good = h.event(conv, &alice, Some("g-1"), mentioning("hi @bob", &["bob"]));
    let good_id = good.id;
    let fresh = h.open_request("support", Some("cust-3"));
    let WriteRequest::Open(fresh_id) = &fresh else {
        unreachable!()
    };
    let fresh_id = fresh_id.id;
    // A request spanning two conversations is a programming error, not a refusal.
    let spanning = WriteRequest::Append {
        events: vec![
            h.event(conv, &alice, None, note("one")),
            h.event(other, &alice, None, note("two")),
        ],
        guard: None,
    };
    let result = h
        .store
        .write_batch(vec![
            fresh,
            WriteRequest::append(good.clone()),
            WriteRequest::append(h.event(conv, &alice, None, tags(&["vip"], &[]))),
            spanning,
        ])
        .await;
    assert!(result.is_err(), "the batch fails");

    // Opening a conversation whose id exists is an engine error too.
    let mut duplicate_open = h.open_request("support", Some("cust-1"));
    if let WriteRequest::Open(new) = &mut duplicate_open {
        new.id = conv;
        new.opened.conversation_id = conv;
    }
    let result = h
        .store
        .write_batch(vec![WriteRequest::append(good.clone()), duplicate_open])
        .await;
    assert!(result.is_err(), "the batch fails");

    let after = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(after, before);
    assert!(h
        .store
        .conversation(fresh_id)
        .await
        .expect("read")
        .is_none());
    assert!(h.store.note(good_id).await.expect("read").is_none());
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("bob")))
            .await
            .expect("count"),
        0
    );
    assert!(h
        .store
        .conversation_tags(&[conv])
        .await
        .expect("tags")
        .is_empty());
    let events = h
        .store
        .events_after(conv, Audience::Supervisors, 0, 100)
        .await
        .expect("read");
    assert_eq!(events.len(), 1);

    // The same request succeeds now, as a first write (its client_id was not kept).
    let outcome = h.append(good).await;
    assert!(!outcome.duplicate);
    assert_eq!(outcome.events[0].seqs.supervisor, 2);
    let audit = h.store.audit_rows(conv).await.expect("audit rows");
    let head = h.store.last_hash(conv).await.expect("head");
    assert_eq!(chain::verify(&audit, head.as_deref()), Ok(()));
}

/// A retried request is answered with the event stored the first time whatever comes
/// with it or has happened since: in a batch of new requests (which are written once,
/// in order), and when what it was checked against has changed (a guarded reply whose
/// guard would now trip). Its answer must not depend on whether the first was lost.
async fn retries_are_answered_with_the_stored_event_in_any_batch(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let (cust, alice) = (customer("cust-1"), agent("alice"));
    let question = h
        .append(h.event(conv, &cust, Some("q-1"), message("first question")))
        .await;
    let seen = question.events[0].seqs.agent.expect("agent seq");
    let reply = |client_id: &str| WriteRequest::Append {
        events: vec![h.event(conv, &alice, Some(client_id), message("my reply"))],
        guard: Some(ReplyGuard {
            audience: Audience::Agents,
            seen,
        }),
    };
    let first = h.write(reply("r-1")).await.expect("accepted");

    // The customer writes again: a new reply under the same guard trips it, the retry
    // of the first does not.
    h.add(conv, &cust, message("hello?")).await;
    let refused = h.write(reply("r-2")).await;
    assert!(
        matches!(refused, Err(WriteRefusal::Unseen(_))),
        "{refused:?}"
    );
    let retry = h.write(reply("r-1")).await.expect("answered");
    assert!(retry.duplicate);
    assert_eq!(*retry.events[0], *first.events[0]);

    // A retry between two new requests.
    let head = h.record(conv).await.heads.supervisor;
    let outcomes = h
        .store
        .write_batch(vec![
            WriteRequest::append(h.event(conv, &alice, Some("n-1"), note("before"))),
            WriteRequest::append(h.event(conv, &cust, Some("q-1"), message("again?"))),
            WriteRequest::append(h.event(conv, &alice, Some("n-2"), note("after"))),
        ])
        .await
        .expect("batch commits");
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("accepted"))
        .collect();
    assert!(!outcomes[0].duplicate && outcomes[1].duplicate && !outcomes[2].duplicate);
    assert_eq!(*outcomes[1].events[0], *question.events[0]);
    assert_eq!(outcomes[0].events[0].seqs.supervisor, head + 1);
    assert_eq!(outcomes[2].events[0].seqs.supervisor, head + 2);
    let after = h.record(conv).await;
    assert_eq!(after.heads.supervisor, head + 2, "the retry wrote nothing");
    let audit = h.store.audit_rows(conv).await.expect("audit rows");
    let last = h.store.last_hash(conv).await.expect("head");
    assert_eq!(chain::verify(&audit, last.as_deref()), Ok(()));
}

/// The reply guard refuses with the messages and notes by others the sender had not
/// seen (in the sender's stream), and writes nothing.
async fn reply_guard_refuses_with_unseen_events(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let (cust, alice, bob, sue) = (
        customer("cust-1"),
        agent("alice"),
        agent("bob"),
        supervisor("sue"),
    );
    let q1 = h.add(conv, &cust, message("first question")).await;
    let seen = q1.seqs.agent.expect("agent seq");
    let guarded = |h: &Harness, client_id: &str, seen: u64, audience: Audience, who: &Actor| {
        WriteRequest::Append {
            events: vec![h.event(conv, who, Some(client_id), message("my reply"))],
            guard: Some(ReplyGuard { audience, seen }),
        }
    };
    // Nothing new since: accepted.
    let reply = h
        .write(guarded(h, "r-1", seen, Audience::Agents, &alice))
        .await
        .expect("accepted");
    let seen = reply.events[0].seqs.agent.expect("agent seq");

    let bobs_note = h.add(conv, &bob, note("I know this customer")).await;
    h.add(
        conv,
        &bob,
        EventData::StatusChanged {
            status: Status::Pending,
        },
    )
    .await;
    h.add(conv, &sue, supervisors_note("watch the tone")).await;
    let q2 = h.add(conv, &cust, message("hello?")).await;
    h.add(conv, &alice, note("my own note")).await;

    let before = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    let refused = h
        .write(guarded(h, "r-2", seen, Audience::Agents, &alice))
        .await;
    let Err(WriteRefusal::Unseen(unseen)) = refused else {
        panic!("expected the guard to trip, got {refused:?}");
    };
    // Status changes, supervisors-only notes and the sender's own events do not count.
    assert_eq!(
        unseen.iter().map(|e| e.view.id).collect::<Vec<_>>(),
        vec![bobs_note.view.id, q2.view.id]
    );
    assert_eq!(unseen[0], bobs_note);
    assert_eq!(unseen[1], q2);
    let after = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(after, before, "a refused reply writes nothing");

    // A retry of the accepted reply, with the guard it was first sent with, is answered
    // as the retry it is, although that guard would trip now.
    let first_seen = q1.seqs.agent.expect("agent seq");
    let retry = h
        .write(guarded(h, "r-1", first_seen, Audience::Agents, &alice))
        .await
        .expect("answered as a retry");
    assert!(retry.duplicate);
    assert_eq!(retry.events[0].view.id, reply.events[0].view.id);

    // In the customer's stream, notes never count; the agent's messages do.
    let refused = h
        .write(guarded(h, "r-3", 2, Audience::Customer, &cust))
        .await;
    let Err(WriteRefusal::Unseen(unseen)) = refused else {
        panic!("expected the guard to trip, got {refused:?}");
    };
    assert_eq!(
        unseen.iter().map(|e| e.view.id).collect::<Vec<_>>(),
        vec![reply.events[0].view.id]
    );

    // Having seen everything, the reply goes through, with the refused client_id.
    let head = after.heads.agent;
    let accepted = h
        .write(guarded(h, "r-2", head, Audience::Agents, &alice))
        .await
        .expect("accepted");
    assert!(!accepted.duplicate);
    assert_eq!(accepted.events[0].seqs.agent, Some(head + 1));
}

/// Notes keep their current text and pin state; pinned `context` notes show in every
/// conversation of the same contact.
async fn note_projections(h: &Harness) {
    let a = h.open("support", Some("cust-9")).await;
    let b = h.open("support", Some("cust-9")).await;
    let c = h.open("support", Some("cust-5")).await;
    let no_contact = h.open("support", None).await;
    let (alice, bob, sue) = (agent("alice"), agent("bob"), supervisor("sue"));

    let n1 = h.add(a, &alice, note("first draft")).await;
    let n2 = h
        .add(
            a,
            &bob,
            typed_note(
                "VIP, prefers email",
                NoteType::Context,
                NoteAudience::Agents,
            ),
        )
        .await;
    let n3 = h.add(b, &alice, note("second conversation")).await;
    let n4 = h
        .add(
            c,
            &bob,
            typed_note("other contact", NoteType::Context, NoteAudience::Agents),
        )
        .await;
    let n5 = h.add(no_contact, &sue, supervisors_note("coaching")).await;

    let record = h.store.note(n1.view.id).await.expect("read").expect("note");
    assert_eq!(
        record,
        NoteRecord {
            id: n1.view.id,
            conversation_id: a,
            contact_id: Some(user("cust-9")),
            author: alice.clone(),
            note_type: NoteType::General,
            audience: NoteAudience::Agents,
            body: "first draft".into(),
            at: n1.view.at,
            pinned: false,
        }
    );
    let record = h.store.note(n5.view.id).await.expect("read").expect("note");
    assert_eq!(record.contact_id, None);
    assert_eq!(record.audience, NoteAudience::Supervisors);
    assert_eq!(record.note_type, NoteType::Coaching);
    assert!(h.store.note(EventId::new()).await.expect("read").is_none());

    // Edits replace the text; the note keeps its time and author.
    h.add(a, &alice, edited(n1.view.id, "final text")).await;
    let record = h.store.note(n1.view.id).await.expect("read").expect("note");
    assert_eq!(record.body, "final text");
    assert_eq!(record.at, n1.view.at);
    assert_eq!(record.author, alice);

    for (conv, id) in [
        (a, n1.view.id),
        (a, n2.view.id),
        (b, n3.view.id),
        (c, n4.view.id),
    ] {
        h.add(conv, &alice, pinned(id, true)).await;
    }
    let pins = |conv, contact: Option<&'static str>| async move {
        let contact = contact.map(user);
        let notes = h
            .store
            .pinned_notes(conv, contact.as_ref())
            .await
            .expect("pinned notes");
        assert!(notes.iter().all(|n| n.pinned));
        notes.iter().map(|n| n.id).collect::<Vec<_>>()
    };
    assert_eq!(pins(a, Some("cust-9")).await, vec![n1.view.id, n2.view.id]);
    // B sees its own pin and A's context note for the same contact, oldest first.
    assert_eq!(pins(b, Some("cust-9")).await, vec![n2.view.id, n3.view.id]);
    assert_eq!(pins(b, None).await, vec![n3.view.id]);
    assert_eq!(pins(c, Some("cust-5")).await, vec![n4.view.id]);
    assert_eq!(pins(no_contact, None).await, Vec::<EventId>::new());
    let pinned_record = h.store.note(n2.view.id).await.expect("read").expect("note");
    assert!(pinned_record.pinned);

    h.add(a, &bob, pinned(n2.view.id, false)).await;
    assert_eq!(pins(b, Some("cust-9")).await, vec![n3.view.id]);
    assert_eq!(pins(a, Some("cust-9")).await, vec![n1.view.id]);
}

/// Tags, custom field values, assignment and status follow their events.
async fn conversation_projections(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let untouched = h.open("support", Some("cust-2")).await;
    let (alice, bob) = (agent("alice"), agent("bob"));

    h.add(conv, &alice, tags(&["vip", "billing"], &[])).await;
    h.add(conv, &alice, tags(&["vip"], &[])).await;
    let listed_tags = h
        .store
        .conversation_tags(&[conv, untouched])
        .await
        .expect("tags");
    assert_eq!(
        listed_tags,
        BTreeMap::from([(conv, vec!["billing".to_owned(), "vip".to_owned()])])
    );
    h.add(conv, &alice, tags(&["urgent"], &["billing", "absent"]))
        .await;
    let listed_tags = h.store.conversation_tags(&[conv]).await.expect("tags");
    assert_eq!(
        listed_tags,
        BTreeMap::from([(conv, vec!["urgent".to_owned(), "vip".to_owned()])])
    );
    assert!(h
        .store
        .conversation_tags(&[])
        .await
        .expect("tags")
        .is_empty());

    let conv_key = conv.to_string();
    h.add(
        conv,
        &alice,
        fields(
            FieldTarget::Conversation,
            &conv_key,
            json!({"plan": "gold", "seats": 5, "renewal": "2026-03-01"}),
        ),
    )
    .await;
    h.add(
        conv,
        &alice,
        fields(
            FieldTarget::Conversation,
            &conv_key,
            json!({"plan": null, "seats": 7.5}),
        ),
    )
    .await;
    h.add(
        conv,
        &alice,
        fields(
            FieldTarget::Contact,
            "cust-1",
            json!({"tier": true, "note": "x"}),
        ),
    )
    .await;
    let values = h
        .store
        .field_values(
            FieldTarget::Conversation,
            &[conv_key.clone(), untouched.to_string()],
        )
        .await
        .expect("values");
    assert_eq!(
        values,
        BTreeMap::from([(
            conv_key.clone(),
            BTreeMap::from([
                ("renewal".to_owned(), json!("2026-03-01")),
                ("seats".to_owned(), json!(7.5)),
            ])
        )])
    );
    let values = h
        .store
        .field_values(FieldTarget::Contact, &["cust-1".to_owned()])
        .await
        .expect("values");
    assert_eq!(
        values,
        BTreeMap::from([(
            "cust-1".to_owned(),
            BTreeMap::from([
                ("note".to_owned(), json!("x")),
                ("tier".to_owned(), json!(true)),
            ])
        )])
    );
    // A contact's values are not the conversation's, and vice versa.
    assert!(h
        .store
        .field_values(FieldTarget::Contact, std::slice::from_ref(&conv_key))
        .await
        .expect("values")
        .is_empty());
    assert!(h
        .store
        .field_values(FieldTarget::Conversation, &[])
        .await
        .expect("values")
        .is_empty());

    h.add(conv, &alice, assigned(Some("bob"), Some("billing")))
        .await;
    let record = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(record.assignee_id, Some(user("bob")));
    assert_eq!(record.team_id, Some(TeamId("billing".into())));
    h.add(conv, &bob, assigned(None, Some("tier-2"))).await;
    let record = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(record.assignee_id, None);
    assert_eq!(record.team_id, Some(TeamId("tier-2".into())));
    h.add(conv, &bob, assigned(None, None)).await;

    assert_eq!(record.status, "open");
    h.add(
        conv,
        &bob,
        EventData::StatusChanged {
            status: Status::Resolved,
        },
    )
    .await;
    let record = h
        .store
        .conversation(conv)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(record.status, "resolved");
    assert_eq!(record.assignee_id, None);
    assert_eq!(record.team_id, None);
    let other = h
        .store
        .conversation(untouched)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(other.status, "open");
    assert_eq!(other.assignee_id, None);
}

/// Mentions and assignments notify (never the author); notifications read back newest
/// first and are marked read by ids, up to an id, or all.
async fn notifications_for_mentions_and_assignment(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let (alice, dave) = (agent("alice"), agent("dave"));

    let mention = h
        .append(h.event(
            conv,
            &alice,
            None,
            mentioning(
                "@bob @alice @carol see @bob",
                &["bob", "alice", "carol", "bob"],
            ),
        ))
        .await;
    let note_event = mention.events[0].clone();
    assert_eq!(
        mention
            .notifications
            .iter()
            .map(|n| (n.user_id.as_str(), n.notification.kind))
            .collect::<Vec<_>>(),
        vec![
            ("bob", NotificationKind::Mention),
            ("carol", NotificationKind::Mention)
        ]
    );
    // Each names its conversation's inbox, which scopes the sessions it is shown on.
    assert!(
        mention
            .notifications
            .iter()
            .all(|n| n.inbox == Some(InboxId("support".into()))),
        "{:?}",
        mention.notifications
    );
    let bobs = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("bob")),
            false,
            None,
            50,
        )
        .await
        .expect("list");
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0], mention.notifications[0].notification);
    assert_eq!(bobs[0].event_id, note_event.view.id);
    assert_eq!(bobs[0].conversation_id, conv);
    assert_eq!(bobs[0].from, alice);
    assert_eq!(bobs[0].at, note_event.view.at);
    assert!(!bobs[0].read);
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("alice")))
            .await
            .expect("count"),
        0
    );

    let assignment = h
        .append(h.event(conv, &alice, None, assigned(Some("dave"), None)))
        .await;
    assert_eq!(assignment.notifications.len(), 1);
    assert_eq!(assignment.notifications[0].user_id, user("dave"));
    assert_eq!(
        assignment.notifications[0].notification.kind,
        NotificationKind::Assigned
    );
    assert_eq!(
        assignment.notifications[0].inbox,
        Some(InboxId("support".into()))
    );
    // Taking a conversation yourself, or unassigning it, notifies nobody.
    let own = h
        .append(h.event(conv, &dave, None, assigned(Some("dave"), Some("t"))))
        .await;
    assert!(own.notifications.is_empty());
    let none = h
        .append(h.event(conv, &dave, None, assigned(None, None)))
        .await;
    assert!(none.notifications.is_empty());
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("dave")))
            .await
            .expect("count"),
        1
    );

    for n in 0..3 {
        h.add(conv, &dave, mentioning(&format!("@bob #{n}"), &["bob"]))
            .await;
    }
    let bobs = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("bob")),
            false,
            None,
            50,
        )
        .await
        .expect("list");
    let ids: Vec<u64> = bobs.iter().map(|n| n.id).collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let (b1, b2, b3, b4) = (ids[3], ids[2], ids[1], ids[0]);
    let page = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("bob")),
            false,
            None,
            2,
        )
        .await
        .expect("list");
    assert_eq!(page.iter().map(|n| n.id).collect::<Vec<_>>(), vec![b4, b3]);
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("bob")))
            .await
            .expect("count"),
        4
    );

    let carols = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("carol")),
            false,
            None,
            50,
        )
        .await
        .expect("list");
    // Her notification as the append returned it (the second of the note's: its id is
    // not the note's row's, as bob's happens to be) is the one the store keeps.
    assert_eq!(carols[0], mention.notifications[1].notification);
    let carol_id = carols[0].id;
    let marked = h
        .store
        .mark_notifications_read(
            &NotificationReader::unrestricted(&user("bob")),
            &MarkRead::Ids(vec![b1, carol_id, 999_999]),
        )
        .await
        .expect("mark");
    assert_eq!(marked, 1, "only bob's own notification");
    let again = h
        .store
        .mark_notifications_read(
            &NotificationReader::unrestricted(&user("bob")),
            &MarkRead::Ids(vec![b1]),
        )
        .await
        .expect("mark");
    assert_eq!(again, 0, "already read");
    assert_eq!(
        h.store
            .mark_notifications_read(
                &NotificationReader::unrestricted(&user("bob")),
                &MarkRead::Ids(vec![])
            )
            .await
            .expect("mark"),
        0
    );
    let marked = h
        .store
        .mark_notifications_read(
            &NotificationReader::unrestricted(&user("bob")),
            &MarkRead::UpTo(b3),
        )
        .await
        .expect("mark");
    assert_eq!(marked, 2);
    let unread = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("bob")),
            true,
            None,
            50,
        )
        .await
        .expect("list");
    assert_eq!(unread.iter().map(|n| n.id).collect::<Vec<_>>(), vec![b4]);
    let all = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("bob")),
            false,
            None,
            50,
        )
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|n| (n.id, n.read)).collect::<Vec<_>>(),
        vec![(b4, false), (b3, true), (b2, true), (b1, true)]
    );
    let marked = h
        .store
        .mark_notifications_read(
            &NotificationReader::unrestricted(&user("bob")),
            &MarkRead::All,
        )
        .await
        .expect("mark");
    assert_eq!(marked, 1);
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("bob")))
            .await
            .expect("count"),
        0
    );

    // `up_to` past every id, however large (a client's number), marks all.
    h.add(conv, &dave, mentioning("@bob once more", &["bob"]))
        .await;
    let marked = h
        .store
        .mark_notifications_read(
            &NotificationReader::unrestricted(&user("bob")),
            &MarkRead::UpTo(u64::MAX),
        )
        .await
        .expect("mark");
    assert_eq!(marked, 1);
    assert_eq!(
        h.store
            .mark_notifications_read(
                &NotificationReader::unrestricted(&user("bob")),
                &MarkRead::All
            )
            .await
            .expect("mark"),
        0
    );
    assert_eq!(
        h.store
            .unread_notifications(&NotificationReader::unrestricted(&user("carol")))
            .await
            .expect("count"),
        1,
        "other users' notifications are untouched"
    );
}

/// A node catching its sessions up pages through a user's notifications since a time,
/// oldest first, past an id.
async fn notifications_page_since_a_time_past_an_id(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let alice = agent("alice");
    h.add(conv, &alice, mentioning("@bob before", &["bob"]))
        .await;
    h.advance(10);
    let since = h.at();
    let mut ids = Vec::new();
    for i in 0..5 {
        let event = h
            .add(
                conv,
                &alice,
                mentioning(&format!("@bob @carol {i}"), &["bob", "carol"]),
            )
            .await;
        let stored = h
            .store
            .notifications(
                &NotificationReader::unrestricted(&user("bob")),
                false,
                None,
                1,
            )
            .await
            .expect("list");
        assert_eq!(stored[0].event_id, event.view.id);
        ids.push(stored[0].id);
    }
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = h
            .store
            .notifications_since(&user("bob"), since, after, 2)
            .await
            .expect("a page");
        assert!(page.iter().all(|n| n.notification.at >= since));
        assert!(page.iter().all(|n| !n.supervisors_only));
        assert!(page
            .iter()
            .all(|n| n.inbox == Some(InboxId("support".into()))));
        paged.extend(page.iter().map(|n| n.notification.id));
        match page.last() {
            Some(last) if page.len() == 2 => after = last.notification.id,
            _ => break,
        }
    }
    assert_eq!(paged, ids, "bob's since then, oldest first, once each");
    // The list pages backwards with `before`: the next older ones, newest first.
    let older = h
        .store
        .notifications(
            &NotificationReader::unrestricted(&user("bob")),
            false,
            Some(ids[3]),
            2,
        )
        .await
        .expect("an older page");
    assert_eq!(
        older.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let past_all = h
        .store
        .notifications_since(&user("bob"), since, u64::MAX, 10)
        .await
        .expect("a page");
    assert!(past_all.is_empty());
}

/// A notification is read through the reader's current role and inboxes: an agent (a
/// supervisor since demoted) neither lists, counts nor marks the notification of a
/// supervisors-only note, nor one in an inbox they no longer work in; the catch-up page
/// says which are supervisors-only, for the hub to filter by session.
async fn notifications_follow_the_readers_role_and_inboxes(h: &Harness) {
    h.store
        .put_inbox(&InboxId("billing".into()), "Billing")
        .await
        .expect("put inbox");
    let support = h.open("support", Some("cust-1")).await;
    let billing = h.open("billing", Some("cust-2")).await;
    let since = h.at();
    let boss = supervisor("boss");
    let coaching = EventData::Note {
        body: "@sam coaching".to_owned(),
        note_type: NoteType::Coaching,
        audience: NoteAudience::Supervisors,
        mentions: vec![user("sam")],
    };
    let hidden = h.add(support, &boss, coaching).await;
    let in_billing = h
        .add(
            billing,
            &agent("alice"),
            mentioning("@sam billing", &["sam"]),
        )
        .await;
    let plain = h
        .add(
            support,
            &agent("alice"),
            mentioning("@sam support", &["sam"]),
        )
        .await;
    let sam = user("sam");
    let support_only = [InboxId("support".into())];
    let as_agent = NotificationReader {
        user: &sam,
        supervisors: false,
        inboxes: Some(&support_only),
    };
    let events = |list: &[backchannel_protocol::server::Notification]| {
        list.iter().map(|n| n.event_id).collect::<Vec<_>>()
    };
    let unrestricted = NotificationReader::unrestricted(&sam);
    let all = h
        .store
        .notifications(&unrestricted, false, None, 50)
        .await
        .expect("list");
    assert_eq!(
        events(&all),
        vec![plain.view.id, in_billing.view.id, hidden.view.id]
    );
    let seen = h
        .store
        .notifications(&as_agent, false, None, 50)
        .await
        .expect("list");
    assert_eq!(
        events(&seen),
        vec![plain.view.id],
        "neither coaching nor billing"
    );
    assert_eq!(
        h.store
            .unread_notifications(&as_agent)
            .await
            .expect("count"),
        1
    );
    let no_inbox = NotificationReader {
        user: &sam,
        supervisors: true,
        inboxes: Some(&[]),
    };
    assert!(h
        .store
        .notifications(&no_inbox, false, None, 50)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        h.store
            .unread_notifications(&no_inbox)
            .await
            .expect("count"),
        0
    );
    // Marking all (or by id, or up to an id) marks only what the reader sees.
    let hidden_id = all[2].id;
    assert_eq!(
        h.store
            .mark_notifications_read(&as_agent, &MarkRead::Ids(vec![hidden_id]))
            .await
            .expect("mark"),
        0
    );
    assert_eq!(
        h.store
            .mark_notifications_read(&as_agent, &MarkRead::All)
            .await
            .expect("mark"),
        1
    );
    assert_eq!(
        h.store
            .unread_notifications(&unrestricted)
            .await
            .expect("count"),
        2
    );
    let page = h
        .store
        .notifications_since(&sam, since, 0, 10)
        .await
        .expect("a page");
    let flags: Vec<(EventId, bool)> = page
        .iter()
        .map(|n| (n.notification.event_id, n.supervisors_only))
        .collect();
    assert_eq!(
        flags,
        vec![
            (hidden.view.id, true),
            (in_billing.view.id, false),
            (plain.view.id, false)
        ]
    );
}

/// Full-text search over notes' current text, with every filter.
async fn search_notes_with_filters(h: &Harness) {
    h.store
        .put_inbox(&InboxId("billing".into()), "Billing")
        .await
        .expect("put inbox");
    let s = h.open("support", Some("cust-1")).await;
    let b = h.open("billing", Some("cust-2")).await;
    let (alice, bob, sue) = (agent("alice"), agent("bob"), supervisor("sue"));
    h.add(s, &alice, tags(&["vip"], &[])).await;
    h.add(s, &alice, message("a refund is not a note")).await;

    let n1 = h
        .add(
            s,
            &alice,
            note("Customer asked for a refund of the annual plan"),
        )
        .await
        .view
        .id;
    let n2 = h
        .add(
            s,
            &bob,
            typed_note(
                "Refund policy explained; refund in full; VIP",
                NoteType::Context,
                NoteAudience::Agents,
            ),
        )
        .await
        .view
        .id;
    let n3 = h
        .add(
            s,
            &sue,
            supervisors_note("Coaching: refund handling was slow"),
        )
        .await
        .view
        .id;
    let n4 = h
        .add(b, &alice, note("refund issued via the billing portal"))
        .await
        .view
        .id;
    let n5 = h
        .add(s, &alice, note("unrelated shipping question"))
        .await
        .view
        .id;

    assert_eq!(found(h, search(&["refund"])).await, set([n1, n2, n3, n4]));
    // Newest first, whatever the words' weight: "refund" twice in n2 does not lift it.
    let ordered: Vec<EventId> = h
        .store
        .search_notes(&search(&["refund"]))
        .await
        .expect("search")
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ordered, vec![n4, n3, n2, n1]);
    assert_eq!(found(h, search(&["REFUND"])).await, set([n1, n2, n3, n4]));
    assert_eq!(found(h, search(&["refund", "annual"])).await, set([n1]));
    assert_eq!(found(h, search(&["refun"])).await, set([]));
    assert_eq!(found(h, search(&["nothing-like-this"])).await, set([]));
    assert_eq!(found(h, search(&[])).await, set([]));
    let agents_only = NoteSearch {
        include_supervisors: false,
        ..search(&["refund"])
    };
    assert_eq!(found(h, agents_only.clone()).await, set([n1, n2, n4]));
    let context = NoteSearch {
        note_type: Some(NoteType::Context),
        ..search(&["refund"])
    };
    assert_eq!(found(h, context).await, set([n2]));
    let coaching = NoteSearch {
        note_type: Some(NoteType::Coaching),
        ..agents_only.clone()
    };
    assert_eq!(found(h, coaching).await, set([]));
    let by_alice = NoteSearch {
        author: Some(user("alice")),
        ..search(&["refund"])
    };
    assert_eq!(found(h, by_alice).await, set([n1, n4]));
    let tagged = NoteSearch {
        tag: Some("vip".into()),
        ..agents_only.clone()
    };
    assert_eq!(found(h, tagged).await, set([n1, n2]));
    let billing = NoteSearch {
        inboxes: Some(vec![InboxId("billing".into())]),
        ..search(&["refund"])
    };
    assert_eq!(found(h, billing).await, set([n4]));
    let both = NoteSearch {
        inboxes: Some(vec![InboxId("billing".into()), InboxId("support".into())]),
        ..search(&["refund"])
    };
    assert_eq!(found(h, both).await, set([n1, n2, n3, n4]));
    let nowhere = NoteSearch {
        inboxes: Some(vec![]),
        ..search(&["refund"])
    };
    assert_eq!(found(h, nowhere).await, set([]));
    let limited = NoteSearch {
        limit: 2,
        ..search(&["refund"])
    };
    assert_eq!(found(h, limited).await.len(), 2);

    // Hits carry the note's current state.
    let hits = h
        .store
        .search_notes(&search(&["shipping"]))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0],
        h.store.note(n5).await.expect("read").expect("note")
    );

    // Search follows edits: the new text is found, the old one no longer.
    h.add(s, &alice, edited(n5, "now about a refund too")).await;
    h.add(s, &alice, edited(n1, "customer wants money back"))
        .await;
    assert_eq!(found(h, search(&["refund"])).await, set([n2, n3, n4, n5]));
    assert_eq!(found(h, search(&["money", "back"])).await, set([n1]));
    assert_eq!(found(h, search(&["shipping"])).await, set([]));
}

/// A note and its edit committed in one batch are searchable by the edited text only, and
/// notes of the same batch are all found: the search index is written in the order of the
/// batch's events, whenever the engine writes it.
async fn search_index_follows_edits_within_one_batch(h: &Harness) {
    let c = h.open("support", Some("cust-1")).await;
    let alice = agent("alice");
    let first = h.event(c, &alice, None, note("original wording about invoices"));
    let first_id = first.id;
    let edit = h.event(
        c,
        &alice,
        None,
        edited(first_id, "corrected wording about receipts"),
    );
    let second = h.event(c, &alice, None, note("another note about invoices"));
    let second_id = second.id;
    let outcomes = h
        .store
        .write_batch(vec![
            WriteRequest::append(first),
            WriteRequest::append(edit),
            WriteRequest::append(second),
        ])
        .await
        .expect("batch commits");
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    assert_eq!(found(h, search(&["receipts"])).await, set([first_id]));
    assert_eq!(found(h, search(&["original"])).await, BTreeSet::new());
    assert_eq!(found(h, search(&["invoices"])).await, set([second_id]));
}

/// Whatever a user types, search treats it as words: nothing is query syntax, and
/// nothing makes the engine fail.
async fn search_input_is_never_query_syntax(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let alice = agent("alice");
    let hit = h
        .add(
            conv,
            &alice,
            note("Refund (partial) approved: AND the customer said \"thanks\" OR not; NEAR done*"),
        )
        .await
        .view
        .id;
    let other = h
        .add(conv, &alice, note("refunded yesterday, body of text"))
        .await
        .view
        .id;
    let hostile = [
        "\"",
        "\"\"",
        "\"refund",
        "refund\"",
        "AND",
        "OR",
        "NOT",
        "NEAR",
        "NEAR(",
        "NEAR(refund thanks, 2)",
        "*",
        "refund*",
        "(",
        ")",
        "()",
        "body:refund",
        "{body}:refund",
        "-refund",
        "+refund",
        "^refund",
        "!",
        "!refund",
        "&",
        "|",
        "a&b",
        "a|b",
        "<->",
        "<2>",
        ":*",
        "refund:*",
        "'",
        "''",
        "\\",
        "\\\"",
        "[",
        "]",
        "{",
        "}",
        "%",
        "_",
        ";",
        "--",
        "/*",
        "*/",
        "ü",
        "🙂",
        "ÀND",
        "x\"y",
    ];
    for term in hostile {
        let result = h.store.search_notes(&search(&[term])).await;
        assert!(result.is_ok(), "searching {term:?} failed: {result:?}");
        let result = h.store.search_notes(&search(&["refund", term])).await;
        assert!(
            result.is_ok(),
            "searching refund {term:?} failed: {result:?}"
        );
    }
    let result = h.store.search_notes(&search(&hostile)).await;
    assert!(result.is_ok(), "searching everything at once: {result:?}");

    // Operators are plain words: `*` is no prefix, `-` no negation, `OR` no disjunction.
    assert_eq!(found(h, search(&["refund*"])).await, set([hit]));
    assert_eq!(found(h, search(&["-refund"])).await, set([hit]));
    assert_eq!(found(h, search(&["refund\""])).await, set([hit]));
    assert_eq!(
        found(h, search(&["refunded", "OR", "refund"])).await,
        set([])
    );
    assert_eq!(found(h, search(&["NEAR", "done"])).await, set([hit]));
    assert_eq!(found(h, search(&["body:refund"])).await, set([]));
    assert_eq!(found(h, search(&["body"])).await, set([other]));
    // A word with no letters is left out rather than matching nothing.
    assert_eq!(found(h, search(&["refunded", "***"])).await, set([other]));
    assert_eq!(found(h, search(&["***"])).await, set([]));
}

/// Every event is a link of the conversation's chain; the stored rows verify, and a row
/// changed behind the store's back does not.
async fn audit_chain_verifies_and_detects_tampering(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let neighbour = h.open("support", Some("cust-2")).await;
    let (cust, alice, sue) = (customer("cust-1"), agent("alice"), supervisor("sue"));
    let mut written = h
        .store
        .events_after(conv, Audience::Supervisors, 0, 10)
        .await
        .expect("read");
    written.push(h.add(conv, &cust, message("hello")).await);
    let target = h.add(conv, &alice, note("internal")).await;
    written.push(target.clone());
    written.push(h.add(conv, &sue, supervisors_note("coaching")).await);
    let outcome = h
        .write(WriteRequest::Append {
            events: vec![
                h.event(conv, &alice, Some("k"), assigned(Some("alice"), None)),
                h.event(conv, &alice, None, edited(target.view.id, "édité ✓")),
            ],
            guard: None,
        })
        .await
        .expect("accepted");
    written.extend(outcome.events.iter().map(|e| e.as_ref().clone()));
    h.add(neighbour, &alice, note("elsewhere")).await;

    let rows = h.store.audit_rows(conv).await.expect("audit rows");
    let head = h.store.last_hash(conv).await.expect("head");
    assert_eq!(chain::verify(&rows, head.as_deref()), Ok(()));
    assert_eq!(rows.len(), written.len());
    for (row, event) in rows.iter().zip(&written) {
        assert_eq!(row.hash, event.hash.to_vec());
        assert_eq!(row.supervisor_seq as u64, event.seqs.supervisor);
        assert_eq!(row.agent_seq.map(|s| s as u64), event.seqs.agent);
        assert_eq!(row.public_seq.map(|s| s as u64), event.seqs.public);
        assert_eq!(row.client_id, event.client_id);
        assert_eq!(row.view().expect("row view"), event.view);
    }
    assert_eq!(head.as_deref(), written.last().map(|e| &e.hash[..]));
    assert_eq!(
        h.store
            .last_hash(ConversationId::new())
            .await
            .expect("head"),
        None
    );

    // A missing tail is noticed.
    assert!(chain::verify(&rows[..rows.len() - 1], head.as_deref()).is_err());

    // The snapshot holds the same rows, head and counter, and verifies whole; cut short
    // with the head moved back to match, only the counter says so.
    let snapshot = h.store.audit_snapshot(conv).await.expect("snapshot");
    assert_eq!(snapshot.rows.len(), rows.len());
    assert_eq!(snapshot.head, head);
    assert_eq!(snapshot.supervisor_seq, rows.len() as u64);
    assert_eq!(chain::verify_snapshot(&snapshot), Ok(()));
    let mut shortened = snapshot.clone();
    shortened.rows.pop();
    shortened.head = shortened.rows.last().map(|r| r.hash.clone());
    assert_eq!(
        chain::verify(&shortened.rows, shortened.head.as_deref()),
        Ok(())
    );
    let broken = chain::verify_snapshot(&shortened).expect_err("a short chain");
    assert!(broken.reason.contains("counts"), "{broken:?}");
    assert!(h
        .store
        .orphaned_event_conversations()
        .await
        .expect("orphans")
        .is_empty());

    let changed = rows[2].payload.replace("internal", "nothing to see");
    assert_ne!(changed, rows[2].payload);
    h.tamper_payload(target.view.id, &changed).await;
    let rows = h.store.audit_rows(conv).await.expect("audit rows");
    let broken = chain::verify(&rows, head.as_deref()).expect_err("tampering is detected");
    assert_eq!(broken.seq, 3);
    assert_eq!(broken.event_id, Some(target.view.id.to_string()));
    // Other conversations are unaffected.
    let rows = h.store.audit_rows(neighbour).await.expect("audit rows");
    let head = h.store.last_hash(neighbour).await.expect("head");
    assert_eq!(chain::verify(&rows, head.as_deref()), Ok(()));
}

/// Listing conversations: newest activity first, narrowed by inboxes, contact, status
/// and assignee.
async fn conversation_list_filters(h: &Harness) {
    for inbox in ["billing", "sales"] {
        h.store
            .put_inbox(&InboxId(inbox.into()), inbox)
            .await
            .expect("put inbox");
    }
    let alice = agent("alice");
    let c1 = h.open("support", Some("cust-a")).await;
    let c2 = h.open("billing", Some("cust-b")).await;
    let c3 = h.open("support", Some("cust-a")).await;
    let c4 = h.open("sales", Some("cust-c")).await;
    let c5 = h.open("support", None).await;
    // Activity, oldest to newest: c5, c3, c1, c4, c2.
    h.add(
        c3,
        &alice,
        EventData::StatusChanged {
            status: Status::Pending,
        },
    )
    .await;
    h.add(c1, &alice, assigned(Some("bob"), None)).await;
    h.add(c4, &alice, assigned(Some("bob"), None)).await;
    h.add(c2, &alice, note("latest")).await;

    assert_eq!(listed(h, listing()).await, vec![c2, c4, c1, c3, c5]);
    assert_eq!(
        listed(
            h,
            ConversationFilter {
                limit: 2,
                ..listing()
            }
        )
        .await,
        vec![c2, c4]
    );
    let inboxes = |ids: &[&str]| ConversationFilter {
        inboxes: Some(ids.iter().map(|i| InboxId(i.to_string())).collect()),
        ..listing()
    };
    assert_eq!(listed(h, inboxes(&["support"])).await, vec![c1, c3, c5]);
    assert_eq!(
        listed(h, inboxes(&["support", "sales"])).await,
        vec![c4, c1, c3, c5]
    );
    assert_eq!(listed(h, inboxes(&[])).await, Vec::<ConversationId>::new());
    assert_eq!(
        listed(h, inboxes(&["nope"])).await,
        Vec::<ConversationId>::new()
    );
    let pending = ConversationFilter {
        status: Some("pending".into()),
        ..listing()
    };
    assert_eq!(listed(h, pending).await, vec![c3]);
    let open = ConversationFilter {
        status: Some("open".into()),
        ..listing()
    };
    assert_eq!(listed(h, open).await, vec![c2, c4, c1, c5]);
    let bobs = ConversationFilter {
        assignee_id: Some(user("bob")),
        ..listing()
    };
    assert_eq!(listed(h, bobs.clone()).await, vec![c4, c1]);
    let bobs_support = ConversationFilter {
        inboxes: Some(vec![InboxId("support".into())]),
        ..bobs
    };
    assert_eq!(listed(h, bobs_support).await, vec![c1]);

    let of_contact = contact_listed(h, "cust-a", 10).await;
    assert_eq!(of_contact, vec![c1, c3]);
    let first = h
        .store
        .contact_conversations(&user("cust-a"), None, 1)
        .await
        .expect("list");
    assert_eq!(first.len(), 1);
    assert_eq!(
        h.store.conversation_ids().await.expect("ids"),
        vec![c1, c2, c3, c4, c5],
        "oldest first"
    );
    let record = h
        .store
        .conversation(c2)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(record.inbox_id, InboxId("billing".into()));
    assert_eq!(record.contact_id, Some(user("cust-b")));
    assert_eq!(record.subject.as_deref(), Some("about billing"));
    assert!(record.created_at < record.last_activity_at);
    assert!(h
        .store
        .conversation(ConversationId::new())
        .await
        .expect("read")
        .is_none());

    // Open assignments: assigned and not resolved.
    let open_for =
        |id: &'static str| async move { h.store.open_assignments(&user(id)).await.expect("count") };
    assert_eq!(open_for("bob").await, 2);
    assert_eq!(open_for("alice").await, 0);
    h.add(
        c4,
        &alice,
        EventData::StatusChanged {
            status: Status::Resolved,
        },
    )
    .await;
    h.add(
        c1,
        &alice,
        EventData::StatusChanged {
            status: Status::Pending,
        },
    )
    .await;
    assert_eq!(open_for("bob").await, 1);

    // A customer's list follows public activity only: c3 was opened after c1, and
    // everything written to either since (status, assignment) is internal.
    let customer = ConversationFilter {
        customer: Some(user("cust-a")),
        ..listing()
    };
    assert_eq!(listed(h, customer.clone()).await, vec![c3, c1]);
    h.add(c1, &alice, note("not for the customer")).await;
    assert_eq!(listed(h, customer.clone()).await, vec![c3, c1]);
    assert_eq!(
        listed(h, listing()).await[0],
        c1,
        "staff see the note move c1"
    );
    h.add(c1, &alice, message("for the customer")).await;
    assert_eq!(listed(h, customer).await, vec![c1, c3]);
}

/// Lists order by latest activity exactly, whether or not an event moved its
/// conversation into a new ten-second slot of `activity_bucket` (which the list indexes
/// key on; an event in its conversation's current slot leaves them alone).
async fn conversation_list_order_is_exact_within_and_across_activity_slots(h: &Harness) {
    let alice = agent("alice");
    // Opened in three slots, oldest first.
    let c1 = h.open("support", Some("cust-a")).await;
    h.advance(25);
    let c2 = h.open("support", Some("cust-b")).await;
    h.advance(25);
    let c3 = h.open("support", Some("cust-c")).await;
    let bobs = ConversationFilter {
        assignee_id: Some(user("bob")),
        ..listing()
    };
    let support = ConversationFilter {
        inboxes: Some(vec![InboxId("support".into())]),
        ..listing()
    };
    let first_of = |filter: &ConversationFilter| ConversationFilter {
        limit: 1,
        ..filter.clone()
    };
    let check = |expected: Vec<ConversationId>| {
        let (bobs, support) = (bobs.clone(), support.clone());
        async move {
            assert_eq!(listed(h, listing()).await, expected);
            assert_eq!(listed(h, support.clone()).await, expected);
            assert_eq!(listed(h, first_of(&support)).await, expected[..1]);
            assert_eq!(listed(h, bobs.clone()).await, expected);
            assert_eq!(listed(h, first_of(&bobs)).await, expected[..1]);
        }
    };
    for c in [c1, c2, c3] {
        h.add(c, &alice, assigned(Some("bob"), None)).await;
    }
    check(vec![c3, c2, c1]).await;

    // c1 into a new slot, then c2 into the same one.
    h.advance(25);
    h.add(c1, &alice, note("one")).await;
    check(vec![c1, c3, c2]).await;
    h.add(c2, &alice, note("two")).await;
    check(vec![c2, c1, c3]).await;
    // c1 again, within its slot: only its exact time moves.
    h.add(c1, &alice, note("three")).await;
    check(vec![c1, c2, c3]).await;
    // c3, left behind two slots ago, overtakes both.
    h.advance(25);
    h.add(c3, &alice, note("four")).await;
    check(vec![c3, c1, c2]).await;
    h.add(c1, &alice, note("five")).await;
    h.add(c3, &alice, note("six")).await;
    check(vec![c3, c1, c2]).await;
    assert_eq!(h.misfiled_activity_buckets().await, 0);
    let record = h
        .store
        .conversation(c3)
        .await
        .expect("read")
        .expect("exists");
    assert!(
        record.last_activity_at
            > h.store
                .conversation(c1)
                .await
                .expect("read")
                .expect("exists")
                .last_activity_at
    );
}

/// Events given with an opening (the fields its opener set) commit with it: the same
/// transaction, seqs right after the opening's, projected like any append.
async fn an_opening_commits_the_events_given_with_it(h: &Harness) {
    let mut request = h.open_request("support", Some("cust-1"));
    let WriteRequest::Open(new) = &mut request else {
        unreachable!()
    };
    let id = new.id;
    let fields_set = h.event(
        id,
        &agent("alice"),
        None,
        fields(
            FieldTarget::Conversation,
            &id.to_string(),
            json!({"plan": "pro"}),
        ),
    );
    new.then.push(fields_set);
    let outcome = h.write(request).await.expect("opened");
    assert_eq!(outcome.events.len(), 2);
    let record = conversation_record(h, id).await;
    assert_eq!(
        (
            record.heads.public,
            record.heads.agent,
            record.heads.supervisor
        ),
        (1, 2, 2)
    );
    let values = h
        .store
        .field_values(FieldTarget::Conversation, &[id.to_string()])
        .await
        .expect("values");
    assert_eq!(values[&id.to_string()]["plan"], json!("pro"));
    assert_eq!(h.misfiled_activity_buckets().await, 0);
}

/// A contact's conversations in some inboxes: the scope is part of the query, so a
/// caller's own conversation is found behind any number of other inboxes' newer ones.
async fn contact_conversations_are_scoped_before_the_limit(h: &Harness) {
    h.store
        .put_inbox(&InboxId("billing".into()), "Billing")
        .await
        .expect("put inbox");
    let mine = h.open("support", Some("cust-z")).await;
    for _ in 0..3 {
        h.advance(1);
        h.open("billing", Some("cust-z")).await;
    }
    let support = [InboxId("support".into())];
    let scoped = h
        .store
        .contact_conversations(&user("cust-z"), Some(&support), 2)
        .await
        .expect("list");
    assert_eq!(scoped.iter().map(|c| c.id).collect::<Vec<_>>(), vec![mine]);
    let nowhere = h
        .store
        .contact_conversations(&user("cust-z"), Some(&[]), 10)
        .await
        .expect("list");
    assert!(nowhere.is_empty());
    let any = h
        .store
        .contact_conversations(&user("cust-z"), None, 2)
        .await
        .expect("list");
    assert_eq!(any.len(), 2);
    assert!(
        !any.iter().any(|c| c.id == mine),
        "newest first, across inboxes"
    );
}

/// Staff's activity (`last_activity_at`: their view's `updated_at`, their lists' order)
/// follows the agents' stream. A supervisors-only note, even in a new slot, moves
/// neither it nor its slot: agents would see one happen with their `head` unchanged.
async fn supervisors_only_events_leave_the_activity_alone(h: &Harness) {
    let (alice, sue) = (agent("alice"), supervisor("sue"));
    let c1 = h.open("support", Some("cust-a")).await;
    h.advance(25);
    let c2 = h.open("support", Some("cust-b")).await;
    let before = conversation_record(h, c1).await;
    h.advance(25);
    h.add(c1, &sue, supervisors_note("coaching: slow")).await;
    h.add(c1, &sue, supervisors_note("coaching: again")).await;
    let after = conversation_record(h, c1).await;
    assert_eq!(
        after.heads.get(Audience::Supervisors),
        before.heads.get(Audience::Supervisors) + 2
    );
    assert_eq!(after.last_activity_at, before.last_activity_at);
    assert_eq!(after.last_public_at, before.last_public_at);
    assert_eq!(listed(h, listing()).await, vec![c2, c1]);
    assert_eq!(h.misfiled_activity_buckets().await, 0);

    h.add(c1, &alice, note("agents see this")).await;
    let moved = conversation_record(h, c1).await;
    assert!(moved.last_activity_at > before.last_activity_at);
    assert_eq!(moved.last_public_at, before.last_public_at);
    assert_eq!(listed(h, listing()).await, vec![c1, c2]);
    assert_eq!(h.misfiled_activity_buckets().await, 0);
}

async fn conversation_record(h: &Harness, id: ConversationId) -> super::ConversationRecord {
    h.store
        .conversation(id)
        .await
        .expect("read")
        .expect("exists")
}

/// Conversations whose latest activity is the same microsecond list in the same order
/// on both engines: newest id first.
async fn conversation_list_ties_break_by_newest_id(h: &Harness) {
    let alice = agent("alice");
    let c1 = h.open("support", Some("cust-a")).await;
    let c2 = h.open("support", Some("cust-a")).await;
    let at = h.at();
    for c in [c1, c2] {
        let mut event = h.event(c, &alice, None, message("same moment"));
        event.at = at;
        h.append(event).await;
    }
    let mut newest_first = vec![c1, c2];
    newest_first.sort_by_key(|c| std::cmp::Reverse(c.0));
    assert_eq!(listed(h, listing()).await, newest_first);
    let customer = ConversationFilter {
        customer: Some(user("cust-a")),
        ..listing()
    };
    assert_eq!(listed(h, customer).await, newest_first);
    let of_contact = contact_listed(h, "cust-a", 10).await;
    assert_eq!(of_contact, newest_first);
}

/// An append changes its conversation's heads, chain link, `last_activity_at` and
/// `last_public_at` at every event. None of them may be in an index: PostgreSQL could
/// not make the update heap-only (a dead row and an entry in every index per event), and
/// SQLite would rewrite the index's pages at every note. What the lists order by is the
/// activity's slot, which moves at most once per ten seconds.
async fn columns_an_append_changes_are_in_no_index(h: &Harness) {
    let indexed = h.indexed_conversation_columns().await;
    let expected: BTreeSet<String> = [
        "id",
        "inbox_id",
        "contact_id",
        "assignee_id",
        "activity_bucket",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(indexed, expected);
}

/// Listing conversations narrowed by tag and by a custom field's value.
async fn conversation_list_filters_by_tag_and_field(h: &Harness) {
    let alice = agent("alice");
    let c1 = h.open("support", Some("cust-a")).await;
    let c2 = h.open("support", Some("cust-b")).await;
    let c3 = h.open("support", Some("cust-c")).await;
    h.add(c1, &alice, tags(&["vip"], &[])).await;
    h.add(c2, &alice, tags(&["vip", "billing"], &[])).await;
    let key = |c: ConversationId| c.to_string();
    h.add(
        c1,
        &alice,
        fields(FieldTarget::Conversation, &key(c1), json!({"plan": "gold"})),
    )
    .await;
    h.add(
        c2,
        &alice,
        fields(
            FieldTarget::Conversation,
            &key(c2),
            json!({"plan": "silver"}),
        ),
    )
    .await;
    h.add(
        c3,
        &alice,
        fields(FieldTarget::Conversation, &key(c3), json!({"seats": 5})),
    )
    .await;
    // A contact's field does not make a conversation match.
    h.add(
        c3,
        &alice,
        fields(FieldTarget::Contact, "cust-c", json!({"plan": "gold"})),
    )
    .await;

    let tag = |t: &str| ConversationFilter {
        tag: Some(t.to_owned()),
        ..listing()
    };
    let field = |k: &str, v: serde_json::Value| ConversationFilter {
        field: Some((k.to_owned(), v)),
        ..listing()
    };
    // Activity, newest first: c3, c2, c1.
    assert_eq!(listed(h, tag("vip")).await, vec![c2, c1]);
    assert_eq!(listed(h, tag("billing")).await, vec![c2]);
    assert_eq!(listed(h, tag("none")).await, Vec::<ConversationId>::new());
    assert_eq!(listed(h, field("plan", json!("gold"))).await, vec![c1]);
    assert_eq!(listed(h, field("seats", json!(5))).await, vec![c3]);
    assert_eq!(
        listed(h, field("seats", json!("5"))).await,
        Vec::<ConversationId>::new()
    );
    assert_eq!(
        listed(h, field("plan", json!("bronze"))).await,
        Vec::<ConversationId>::new()
    );
    let both = ConversationFilter {
        tag: Some("vip".into()),
        ..field("plan", json!("silver"))
    };
    assert_eq!(listed(h, both).await, vec![c2]);

    h.add(c2, &alice, tags(&[], &["vip"])).await;
    h.add(
        c1,
        &alice,
        fields(FieldTarget::Conversation, &key(c1), json!({"plan": null})),
    )
    .await;
    assert_eq!(listed(h, tag("vip")).await, vec![c1]);
    assert_eq!(
        listed(h, field("plan", json!("gold"))).await,
        Vec::<ConversationId>::new()
    );
}

/// Mention candidates: staff by handle, or by a team they belong to (case-insensitive).
async fn mention_candidates_by_handle_and_team(h: &Harness) {
    let entry = |id: &str, role: Role, handle: &str, teams: &[&str]| DirectoryEntry {
        id: user(id),
        role,
        name: Some(format!("{id} name")),
        handle: handle.to_owned(),
        teams: teams.iter().map(|t| t.to_string()).collect(),
        inboxes: vec!["support".to_owned()],
    };
    let alice = entry("u-alice", Role::Agent, "alice", &["Billing"]);
    let bob = entry("u-bob", Role::Agent, "bob", &["billing", "Escalations"]);
    let carol = entry("u-carol", Role::Supervisor, "carol", &[]);
    for e in [&alice, &bob, &carol] {
        h.store.upsert_directory_entry(e).await.expect("upsert");
    }
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let ids =
        |entries: Vec<DirectoryEntry>| entries.into_iter().map(|e| e.id.0).collect::<Vec<_>>();
    let find = |query: Vec<String>| async move {
        ids(h
            .store
            .mention_candidates(&query)
            .await
            .expect("candidates"))
    };
    assert_eq!(find(names(&["alice"])).await, vec!["u-alice"]);
    assert_eq!(find(names(&["billing"])).await, vec!["u-alice", "u-bob"]);
    assert_eq!(
        find(names(&["escalations", "carol"])).await,
        vec!["u-bob", "u-carol"]
    );
    assert_eq!(
        find(names(&["alice", "billing"])).await,
        vec!["u-alice", "u-bob"],
        "each person once"
    );
    assert_eq!(find(names(&[])).await, Vec::<String>::new());
    assert_eq!(find(names(&["nobody"])).await, Vec::<String>::new());
    assert_eq!(find(names(&["bill"])).await, Vec::<String>::new());
    assert_eq!(
        find(names(&["u-alice"])).await,
        Vec::<String>::new(),
        "ids are not handles"
    );
    let full = h
        .store
        .mention_candidates(&names(&["carol"]))
        .await
        .expect("candidates");
    assert_eq!(full, vec![carol.clone()]);

    // The directory follows the latest token.
    let renamed = DirectoryEntry {
        handle: "ally".into(),
        teams: vec![],
        ..alice.clone()
    };
    h.store
        .upsert_directory_entry(&renamed)
        .await
        .expect("upsert");
    assert_eq!(find(names(&["alice"])).await, Vec::<String>::new());
    assert_eq!(find(names(&["ally"])).await, vec!["u-alice"]);
    assert_eq!(find(names(&["billing"])).await, vec!["u-bob"]);
}

/// Inboxes, the directory, teams, tag and field definitions round-trip.
async fn directory_and_definitions_round_trip(h: &Harness) {
    h.store.ping().await.expect("ping");
    let support = InboxId("support".into());
    assert_eq!(
        h.store.inbox_name(&support).await.expect("read").as_deref(),
        Some("Support"),
        "the default inbox is there from the start"
    );
    let billing = InboxId("billing".into());
    assert_eq!(h.store.inbox_name(&billing).await.expect("read"), None);
    h.store.put_inbox(&billing, "Billing").await.expect("put");
    h.store
        .put_inbox(&billing, "Billing & Refunds")
        .await
        .expect("put");
    assert_eq!(
        h.store.inbox_name(&billing).await.expect("read").as_deref(),
        Some("Billing & Refunds")
    );

    let entry = DirectoryEntry {
        id: user("u-1"),
        role: Role::Admin,
        name: None,
        handle: "émile".into(),
        teams: vec!["Équipe".into(), "ops".into()],
        inboxes: vec!["*".into()],
    };
    assert_eq!(
        h.store.directory_entry(&entry.id).await.expect("read"),
        None
    );
    h.store
        .upsert_directory_entry(&entry)
        .await
        .expect("upsert");
    assert_eq!(
        h.store.directory_entry(&entry.id).await.expect("read"),
        Some(entry.clone())
    );
    let promoted = DirectoryEntry {
        role: Role::Supervisor,
        name: Some("Émile".into()),
        inboxes: vec!["support".into(), "billing".into()],
        ..entry.clone()
    };
    h.store
        .upsert_directory_entry(&promoted)
        .await
        .expect("upsert");
    assert_eq!(
        h.store.directory_entry(&entry.id).await.expect("read"),
        Some(promoted)
    );

    let other = DirectoryEntry {
        id: user("u-0"),
        role: Role::Agent,
        name: Some("Zoë".into()),
        handle: "zoe".into(),
        teams: vec![],
        inboxes: vec!["support".into()],
    };
    h.store
        .upsert_directory_entry(&other)
        .await
        .expect("upsert");
    let everyone = h.store.directory().await.expect("directory");
    assert_eq!(
        everyone.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["u-0", "u-1"],
        "by id"
    );
    assert_eq!(everyone[0], other);

    let team = |id: &str, name: &str| Team {
        id: TeamId(id.into()),
        name: name.into(),
    };
    h.store
        .put_team(&team("t-2", "Billing"))
        .await
        .expect("put");
    h.store
        .put_team(&team("t-1", "Support"))
        .await
        .expect("put");
    h.store
        .put_team(&team("t-2", "Billing & Refunds"))
        .await
        .expect("put");
    let teams = h.store.teams().await.expect("teams");
    assert_eq!(
        teams
            .iter()
            .map(|t| (t.id.as_str(), t.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("t-1", "Support"), ("t-2", "Billing & Refunds")]
    );
    let one = h
        .store
        .team(&TeamId("t-1".into()))
        .await
        .expect("read")
        .expect("team");
    assert_eq!(one.name, "Support");
    assert!(h
        .store
        .team(&TeamId("t-9".into()))
        .await
        .expect("read")
        .is_none());

    let tag = |name: &str, color: Option<&str>| TagDefinition {
        name: name.into(),
        color: color.map(str::to_owned),
        description: Some(format!("{name} conversations")),
    };
    h.store
        .put_tag(&tag("vip", Some("#f00")))
        .await
        .expect("put");
    h.store.put_tag(&tag("billing", None)).await.expect("put");
    h.store
        .put_tag(&tag("vip", Some("#0f0")))
        .await
        .expect("put");
    let listed_tags = h.store.tags().await.expect("tags");
    assert_eq!(
        listed_tags
            .iter()
            .map(|t| (t.name.as_str(), t.color.as_deref()))
            .collect::<Vec<_>>(),
        vec![("billing", None), ("vip", Some("#0f0"))]
    );
    assert_eq!(
        listed_tags[1].description.as_deref(),
        Some("vip conversations")
    );
    assert!(h.store.delete_tag("vip").await.expect("delete"));
    assert!(!h.store.delete_tag("vip").await.expect("delete"));
    assert_eq!(h.store.tags().await.expect("tags").len(), 1);

    let plan = FieldDefinition {
        key: "plan".into(),
        field_type: FieldType::List,
        applies_to: FieldTarget::Conversation,
        label: "Plan".into(),
        required: true,
        options: vec!["gold".into(), "silver".into()],
    };
    let seats = FieldDefinition {
        key: "seats".into(),
        field_type: FieldType::Number,
        applies_to: FieldTarget::Contact,
        label: "Seats".into(),
        required: false,
        options: vec![],
    };
    h.store.put_field(&seats).await.expect("put");
    h.store.put_field(&plan).await.expect("put");
    let relabelled = FieldDefinition {
        label: "Subscription plan".into(),
        required: false,
        options: vec!["gold".into(), "silver".into(), "bronze".into()],
        ..plan.clone()
    };
    h.store.put_field(&relabelled).await.expect("put");
    let listed_fields = h.store.fields().await.expect("fields");
    assert_eq!(listed_fields.len(), 2);
    assert_eq!(listed_fields[0].key, "plan");
    assert_eq!(listed_fields[0].label, "Subscription plan");
    assert!(!listed_fields[0].required);
    assert_eq!(listed_fields[0].options.len(), 3);
    assert_eq!(listed_fields[0].field_type, FieldType::List);
    assert_eq!(listed_fields[1].key, "seats");
    assert_eq!(listed_fields[1].applies_to, FieldTarget::Contact);
    assert_eq!(listed_fields[1].field_type, FieldType::Number);
}

/// Two nodes (two stores on the same data) append to the same conversations at once:
/// every stream stays gap-free, the chain verifies, no batch deadlocks (each node touches
/// two conversations in the opposite order), and a `client_id` raced from both nodes is
/// stored once, whether both send it to the same conversation or each to its own.
/// The deployment id names the Redis channels: every node opened on the same data must
/// read the same one, it never changes, and another database has another.
async fn deployment_id_is_made_once_and_shared_by_every_node(h: &Harness) {
    let id = h.store.deployment_id().await.expect("deployment id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(h.store.deployment_id().await.expect("again"), id);
    let node2 = h.another_node().await;
    assert_eq!(node2.deployment_id().await.expect("node 2"), id);
    node2.close().await;
    let other = match &h.backend {
        Backend::Sqlite { .. } => Harness::sqlite().await,
        Backend::Postgres { .. } => Harness::postgres().await,
    };
    let other_id = other.store.deployment_id().await.expect("other database");
    other.finish(Ok(())).await;
    assert_ne!(other_id, id, "two databases, two deployments");
}

async fn concurrent_appends_from_two_nodes(h: &Harness) {
    const ROUNDS: usize = 25;
    let node2 = h.another_node().await;
    let a = h.open("support", Some("cust-1")).await;
    let b = h.open("support", Some("cust-2")).await;
    let c = h.open("support", Some("cust-3")).await;
    let d = h.open("support", Some("cust-4")).await;
    let shared = agent("shared");

    // Every batch of a node: three requests in `first` (one of two events), one in
    // `second`, the round's shared key in `a`, and the round's cross key in `own`, a
    // conversation no other node writes to.
    let batches = |name: &str, first, second, own| -> Vec<Vec<WriteRequest>> {
        let me = agent(name);
        (0..ROUNDS)
            .map(|round| {
                vec![
                    WriteRequest::append(h.event(first, &me, None, message("m"))),
                    WriteRequest::append(h.event(second, &me, None, note("n"))),
                    WriteRequest::Append {
                        events: vec![
                            h.event(first, &me, None, supervisors_note("s")),
                            h.event(first, &me, None, note("n2")),
                        ],
                        guard: None,
                    },
                    WriteRequest::append(h.event(
                        a,
                        &shared,
                        Some(&format!("shared-{round}")),
                        message("once"),
                    )),
                ]
            })
            .chain((0..ROUNDS).map(|round| {
                vec![WriteRequest::append(h.event(
                    own,
                    &shared,
                    Some(&format!("cross-{round}")),
                    message("once, somewhere"),
                ))]
            }))
            .collect()
    };
    let run = |node: Arc<dyn Store>, batches: Vec<Vec<WriteRequest>>| async move {
        let mut fresh = (0, 0);
        for batch in batches {
            let outcomes = node
                .write_batch(batch.clone())
                .await
                .expect("batch commits");
            for (request, outcome) in batch.iter().zip(&outcomes) {
                let outcome = outcome.as_ref().expect("accepted");
                let WriteRequest::Append { events, .. } = request else {
                    unreachable!()
                };
                match events[0].client_id.as_deref() {
                    Some(key) if !outcome.duplicate && key.starts_with("shared") => fresh.0 += 1,
                    Some(key) if !outcome.duplicate && key.starts_with("cross") => fresh.1 += 1,
                    _ => {}
                }
            }
            tokio::task::yield_now().await;
        }
        fresh
    };
    let one = tokio::spawn(run(h.store.clone(), batches("node-1", a, b, c)));
    let two = tokio::spawn(run(node2.clone(), batches("node-2", b, a, d)));
    let (one, two) = (one.await.expect("node 1"), two.await.expect("node 2"));
    assert_eq!(one.0 + two.0, ROUNDS, "each shared key stored once");
    assert_eq!(one.1 + two.1, ROUNDS, "each cross key stored once");

    let mut totals = BTreeMap::new();
    for conv in [a, b, c, d] {
        for store in [&h.store, &node2] {
            let events = store
                .events_after(conv, Audience::Supervisors, 0, 10_000)
                .await
                .expect("read");
            let total = events.len() as u64;
            totals.insert(conv, total);
            assert_eq!(
                seqs_of(&events, Audience::Supervisors),
                (1..=total).collect::<Vec<_>>()
            );
            for audience in [Audience::Agents, Audience::Customer] {
                let stream = store
                    .events_after(conv, audience, 0, 10_000)
                    .await
                    .expect("read");
                let n = stream.len() as u64;
                assert_eq!(seqs_of(&stream, audience), (1..=n).collect::<Vec<_>>());
                let derived: Vec<u64> = events
                    .iter()
                    .filter_map(|e| e.seqs.for_audience(audience))
                    .collect();
                assert_eq!(derived, (1..=n).collect::<Vec<_>>());
            }
            let record = store
                .conversation(conv)
                .await
                .expect("read")
                .expect("exists");
            assert_eq!(record.heads.supervisor, total);
            let rows = store.audit_rows(conv).await.expect("audit rows");
            let head = store.last_hash(conv).await.expect("head");
            assert_eq!(chain::verify(&rows, head.as_deref()), Ok(()));
        }
    }
    let rounds = ROUNDS as u64;
    // Opened; per round 3 events of the node it is `first` for, 1 of the other node, and
    // (in `a`) the shared message once.
    assert_eq!(totals[&a], 1 + 5 * rounds);
    assert_eq!(totals[&b], 1 + 4 * rounds);
    assert_eq!(totals[&c] + totals[&d], 2 + rounds);
}

/// Text with NUL characters (which PostgreSQL cannot store as text) is written like any
/// other and fails nothing: the rest of its batch commits, and the chain verifies.
async fn nul_characters_do_not_fail_the_batch(h: &Harness) {
    let conv = h.open("support", Some("cust\0x")).await;
    let shady = Actor {
        id: user("ag\0ent"),
        role: Role::Agent,
        name: Some("Nul\0l".into()),
    };
    let alice = agent("alice");
    let batch = vec![
        WriteRequest::append(h.event(conv, &shady, Some("c\0id"), note("body \0 with nul"))),
        WriteRequest::append(h.event(conv, &alice, Some("plain"), message("plain \0 message"))),
        WriteRequest::append(h.event(conv, &alice, None, tags(&["t\0g"], &[]))),
        WriteRequest::append(h.event(
            conv,
            &alice,
            None,
            fields(FieldTarget::Contact, "cust\0x", json!({"k\0": "v\0"})),
        )),
        WriteRequest::append(h.event(conv, &alice, None, message("after"))),
    ];
    let outcomes = h
        .store
        .write_batch(batch.clone())
        .await
        .expect("batch commits");
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    let stored = h
        .store
        .events_after(conv, Audience::Supervisors, 0, 100)
        .await
        .expect("read");
    assert_eq!(stored.len(), 6);
    for (outcome, event) in outcomes.iter().zip(&stored[1..]) {
        let outcome = outcome.as_ref().expect("accepted");
        assert_eq!(*outcome.events[0], *event, "returned as stored");
    }
    let note_id = stored[1].view.id;
    let body = h
        .store
        .note(note_id)
        .await
        .expect("read")
        .expect("note")
        .body;
    assert_eq!(body.replace('\0', "\u{FFFD}"), "body \u{FFFD} with nul");
    let retry = h
        .append(h.event(conv, &shady, Some("c\0id"), note("again")))
        .await;
    assert!(retry.duplicate);
    assert_eq!(retry.events[0].view.id, note_id);
    let rows = h.store.audit_rows(conv).await.expect("audit rows");
    let head = h.store.last_hash(conv).await.expect("head");
    assert_eq!(chain::verify(&rows, head.as_deref()), Ok(()));
}

/// A NUL character in a search word is no syntax either, and makes nothing fail.
async fn search_terms_with_nul_do_not_error(h: &Harness) {
    let conv = h.open("support", Some("cust-1")).await;
    let hit = h
        .add(conv, &agent("alice"), note("refund approved"))
        .await
        .view
        .id;
    for terms in [
        &["\0"][..],
        &["refund\0"],
        &["refund", "\0\""],
        &["\0refund\0"],
    ] {
        let result = h.store.search_notes(&search(terms)).await;
        assert!(result.is_ok(), "searching {terms:?} failed: {result:?}");
    }
    assert_eq!(found(h, search(&["refund\0"])).await, set([hit]));
}

// ---------------------------------------------------------------------------------------
// Both engines
// ---------------------------------------------------------------------------------------

/// Turns each test body into `sqlite::NAME` and `postgres::NAME`. `=> sqlite #[attr]`
/// adds an attribute to the SQLite variant only.
macro_rules! store_tests {
    ($( $name:ident $(=> sqlite #[$sqlite:meta])? ),* $(,)?) => {
        mod sqlite {
            $(
                $(#[$sqlite])?
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::sqlite().await;
                    let result = AssertUnwindSafe(super::$name(&h)).catch_unwind().await;
                    h.finish(result).await;
                }
            )*
            use super::{AssertUnwindSafe, FutureExt};
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::Harness::postgres().await;
                    let result = AssertUnwindSafe(super::$name(&h)).catch_unwind().await;
                    h.finish(result).await;
                }
            )*
            use super::{AssertUnwindSafe, FutureExt};
        }
    };
}

store_tests! {
    seqs_are_gap_free_per_audience,
    idempotent_client_id_returns_stored_event,
    refusals_do_not_fail_the_batch,
    failed_batch_leaves_nothing,
    reply_guard_refuses_with_unseen_events,
    retries_are_answered_with_the_stored_event_in_any_batch,
    note_projections,
    conversation_projections,
    notifications_for_mentions_and_assignment,
    notifications_page_since_a_time_past_an_id,
    notifications_follow_the_readers_role_and_inboxes,
    search_notes_with_filters,
    search_input_is_never_query_syntax,
    search_index_follows_edits_within_one_batch,
    audit_chain_verifies_and_detects_tampering,
    conversation_list_filters,
    conversation_list_order_is_exact_within_and_across_activity_slots,
    columns_an_append_changes_are_in_no_index,
    conversation_list_ties_break_by_newest_id,
    supervisors_only_events_leave_the_activity_alone,
    an_opening_commits_the_events_given_with_it,
    contact_conversations_are_scoped_before_the_limit,
    conversation_list_filters_by_tag_and_field,
    mention_candidates_by_handle_and_team,
    directory_and_definitions_round_trip,
    concurrent_appends_from_two_nodes,
    nul_characters_do_not_fail_the_batch,
    search_terms_with_nul_do_not_error,
    state_rules_are_checked_in_the_append_transaction,
    deployment_id_is_made_once_and_shared_by_every_node,
}

/// PostgreSQL only (SQLite has one writer: its transactions cannot interleave). Another
/// node stores `(actor, client_id)` for another conversation after this batch looked the
/// pair up and before it inserted: the insert skips the row, the batch is rolled back and
/// written again, and the request is answered as the retry it is, with the other node's
/// event, leaving nothing of its own behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_client_id_taken_by_another_node_mid_batch() {
    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let ours = h.open("support", Some("cust-1")).await;
        let theirs = h.open("support", Some("cust-2")).await;
        let alice = agent("alice");
        let before = h
            .store
            .conversation(ours)
            .await
            .expect("read")
            .expect("exists");

        // The other node's transaction: stored, not yet committed.
        let mut other = h.other_node_transaction().await;
        let theirs_id = alices_event_in(&mut other, theirs, "retried-id").await;

        // Our batch looks the pair up (not there yet), then waits on the other's insert.
        let store = h.store.clone();
        let request = WriteRequest::append(h.event(
            ours,
            &alice,
            Some("retried-id"),
            message("sent through this node"),
        ));
        let ours_batch = tokio::spawn(async move { store.write_batch(vec![request]).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        commit_other_node(other).await;

        let mut outcomes = ours_batch
            .await
            .expect("the batch task")
            .expect("the batch commits");
        let outcome = outcomes.remove(0).expect("accepted as a retry");
        assert!(outcome.duplicate, "{outcome:?}");
        assert_eq!(outcome.events[0].view.id, theirs_id);
        let after = h
            .store
            .conversation(ours)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(after.heads, before.heads, "nothing of ours was written");
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// PostgreSQL only: migration 0007 keys the idempotency index by `client_id` first, so a
/// time-ordered `client_id` (the JavaScript client's) adds its entry at the index's end;
/// the insert's `ON CONFLICT (actor_id, client_id)` still finds it (a retry answers with
/// the event stored first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_idempotency_index_is_keyed_by_client_id_first() {
    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let mut db = h.other_node_transaction().await;
        let key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE c.relname = 'events_idempotency' ORDER BY k.position",
        )
        .fetch_all(&mut db)
        .await
        .expect("the index's columns");
        assert_eq!(key, ["client_id", "actor_id"]);
        drop(db);

        let c = h.open("support", Some("cust-1")).await;
        let cust = customer("cust-1");
        let first = h
            .append(h.event(
                c,
                &cust,
                Some("019af000-0000-7000-8000-000000000001"),
                message("hi"),
            ))
            .await;
        let retry = h
            .append(h.event(
                c,
                &cust,
                Some("019af000-0000-7000-8000-000000000001"),
                message("hi"),
            ))
            .await;
        assert!(retry.duplicate);
        assert_eq!(retry.events[0].view.id, first.events[0].view.id);
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// PostgreSQL only: a batch of plain appends to a conversation whose head this node
/// remembers is written in one statement, without the locking read; once another node
/// has moved that head, the statement writes nothing and the batch is written on the
/// locking path instead, with seqs that stay gap-free and a chain that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plain_appends_are_written_on_remembered_heads() {
    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let Backend::Postgres { server, database } = &h.backend else {
            unreachable!("a PostgreSQL harness")
        };
        let node = PgStore::open(&format!("{server}/{database}"))
            .await
            .expect("open a second PgStore");
        let conv = h.open("support", Some("cust-1")).await;
        let (alice, bob) = (agent("alice"), agent("bob"));
        let append = |data| {
            let node = node.clone();
            let request = WriteRequest::append(h.event(conv, &alice, None, data));
            async move {
                let mut outcomes = node.write_batch(vec![request]).await.expect("commits");
                outcomes.remove(0).expect("accepted").events[0]
                    .seqs
                    .supervisor
            }
        };

        // This node has not seen the conversation: the locking path, which remembers.
        assert_eq!(append(note("one")).await, 2);
        assert_eq!(node.heads.counts(), (0, 0));
        assert_eq!(append(message("two")).await, 3);
        assert_eq!(node.heads.counts(), (1, 0));
        // Another node moves the head: the remembered one is stale.
        h.add(conv, &bob, note("from elsewhere")).await;
        assert_eq!(append(note("three")).await, 5);
        assert_eq!(node.heads.counts(), (1, 1));
        assert_eq!(append(note("four")).await, 6);
        assert_eq!(node.heads.counts(), (2, 1));
        // Mentions, guards and rarer events always take the locking path.
        let mentioned = append(mentioning("five @bob", &["bob"])).await;
        assert_eq!((mentioned, node.heads.counts()), (7, (2, 1)));

        let audit = h.store.audit_rows(conv).await.expect("audit rows");
        assert_eq!(
            audit
                .iter()
                .map(|row| row.supervisor_seq)
                .collect::<Vec<_>>(),
            (1..=7).collect::<Vec<i64>>()
        );
        let last = h.store.last_hash(conv).await.expect("head");
        assert_eq!(chain::verify(&audit, last.as_deref()), Ok(()));
        node.close().await;
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// SQLite only: a data directory from before migration 0005 (an FTS5 table holding its
/// own copy of every note) is upgraded to the contentless index, rebuilt from `notes`: old
/// notes are found by their current text, and new notes and edits are indexed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_search_index_is_rebuilt_by_the_contentless_migration() {
    let h = Harness::sqlite().await;
    let dir = h.sqlite_dir();
    let c = h.open("support", Some("cust-1")).await;
    let alice = agent("alice");
    let kept = h
        .add(c, &alice, note("refund for the broken kettle"))
        .await
        .view
        .id;
    let edited_id = h
        .add(c, &alice, note("first draft about invoices"))
        .await
        .view
        .id;
    h.add(c, &alice, edited(edited_id, "final text about receipts"))
        .await;
    h.store.close().await;

    // Put the data directory back as migration 0004 left it: the old table, filled.
    let file = dir.join(DATABASE_FILE);
    {
        let db = rusqlite::Connection::open(&file).expect("open the database file");
        db.execute_batch(
            "DROP TABLE note_search;
             CREATE VIRTUAL TABLE note_search USING fts5 (body, tokenize = 'unicode61');
             INSERT INTO note_search (rowid, body) SELECT rowid, body FROM notes;
             DELETE FROM _sqlx_migrations WHERE version = 5;",
        )
        .expect("recreate the schema of migration 0004");
        let old_style: String = db
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'note_search'",
                [],
                |row| row.get(0),
            )
            .expect("the old table");
        assert!(!old_style.contains("content"), "{old_style}");
    }

    let store = SqliteStore::open(dir).await.expect("reopen and migrate");
    let h = Harness::new(store, h.backend);
    let result = AssertUnwindSafe(async {
        {
            let db = rusqlite::Connection::open(&file).expect("open the database file");
            let schema: String = db
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = 'note_search'",
                    [],
                    |row| row.get(0),
                )
                .expect("the new table");
            assert!(schema.contains("contentless_delete"), "{schema}");
        }
        assert_eq!(found(&h, search(&["kettle"])).await, set([kept]));
        assert_eq!(found(&h, search(&["receipts"])).await, set([edited_id]));
        assert_eq!(found(&h, search(&["invoices"])).await, BTreeSet::new());

        let later = h.add(c, &alice, note("kettle replaced")).await.view.id;
        h.add(c, &alice, edited(kept, "refund for the broken toaster"))
            .await;
        assert_eq!(found(&h, search(&["kettle"])).await, set([later]));
        assert_eq!(found(&h, search(&["toaster"])).await, set([kept]));
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// SQLite only: a data directory from before migration 0007 gets every conversation's
/// `activity_bucket` filled from its `last_activity_at`, so old and new rows list in one
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_activity_buckets_are_filled_by_their_migration() {
    let h = Harness::sqlite().await;
    let dir = h.sqlite_dir();
    let alice = agent("alice");
    let c1 = h.open("support", Some("cust-1")).await;
    h.advance(25);
    let c2 = h.open("support", Some("cust-2")).await;
    h.advance(25);
    h.add(c1, &alice, note("latest")).await;
    h.store.close().await;

    // Put the data directory back as migration 0006 left it.
    let file = dir.join(DATABASE_FILE);
    {
        let db = rusqlite::Connection::open(&file).expect("open the database file");
        db.execute_batch(
            "DROP INDEX conversations_inbox;
             DROP INDEX conversations_contact;
             DROP INDEX conversations_assignee;
             ALTER TABLE conversations DROP COLUMN activity_bucket;
             CREATE INDEX conversations_inbox ON conversations (inbox_id, last_activity_at);
             CREATE INDEX conversations_contact ON conversations (contact_id, last_activity_at);
             CREATE INDEX conversations_assignee ON conversations (assignee_id, last_activity_at);
             DELETE FROM _sqlx_migrations WHERE version = 7;",
        )
        .expect("recreate the schema of migration 0006");
    }

    let h = h.reopen_migrated().await;
    let result = AssertUnwindSafe(async {
        assert_eq!(h.misfiled_activity_buckets().await, 0);
        assert_eq!(listed(&h, listing()).await, vec![c1, c2]);
        h.add(c2, &alice, note("later still")).await;
        assert_eq!(listed(&h, listing()).await, vec![c2, c1]);
        // A new conversation in the same slot as c2's latest note.
        let c3 = h.open("support", Some("cust-3")).await;
        assert_eq!(listed(&h, listing()).await, vec![c3, c2, c1]);
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// SQLite only: migration 0008 rebuilds the events table (its visibility check written
/// without an IN list), and 0009 keys the idempotency index by `client_id` first. A data
/// directory from before them keeps every event, each stream's order, the hash chain,
/// the stream and idempotency indexes, and the check itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_survive_the_visibility_check_rebuild() {
    let h = Harness::sqlite().await;
    let dir = h.sqlite_dir();
    let c = h.open("support", Some("cust-1")).await;
    let (cust, alice, sue) = (customer("cust-1"), agent("alice"), supervisor("sue"));
    h.append(h.event(c, &cust, Some("m-1"), message("my kettle broke")))
        .await;
    h.add(c, &alice, note("check the warranty")).await;
    h.add(c, &sue, supervisors_note("mind the tone")).await;
    h.add(c, &alice, message("a new one is on its way")).await;
    let before = |audience| h.store.events_after(c, audience, 0, 100);
    let (customers_before, agents_before, supervisors_before) = (
        before(Audience::Customer).await.expect("customer stream"),
        before(Audience::Agents).await.expect("agents' stream"),
        before(Audience::Supervisors)
            .await
            .expect("supervisors' stream"),
    );
    h.store.close().await;

    // Put the data directory back as migration 0007 left it: the table with the IN check.
    let file = dir.join(DATABASE_FILE);
    let events_schema = |db: &rusqlite::Connection| -> String {
        db.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
            [],
            |row| row.get(0),
        )
        .expect("the events table")
    };
    {
        let db = rusqlite::Connection::open(&file).expect("open the database file");
        db.execute_batch(
            "CREATE TABLE events_old (
                 id TEXT PRIMARY KEY,
                 conversation_id TEXT NOT NULL REFERENCES conversations (id),
                 supervisor_seq INTEGER NOT NULL, agent_seq INTEGER, public_seq INTEGER,
                 kind TEXT NOT NULL,
                 visibility TEXT NOT NULL
                     CHECK (visibility IN ('public', 'internal', 'supervisors')),
                 actor_id TEXT NOT NULL, actor_role TEXT NOT NULL, actor_name TEXT,
                 client_id TEXT, payload TEXT NOT NULL, created_at INTEGER NOT NULL,
                 hash BLOB NOT NULL,
                 UNIQUE (conversation_id, supervisor_seq));
             INSERT INTO events_old SELECT * FROM events;
             DROP TABLE events;
             ALTER TABLE events_old RENAME TO events;
             CREATE UNIQUE INDEX events_public_stream ON events (conversation_id, public_seq)
                 WHERE public_seq IS NOT NULL;
             CREATE UNIQUE INDEX events_idempotency ON events (actor_id, client_id)
                 WHERE client_id IS NOT NULL;
             DELETE FROM _sqlx_migrations WHERE version >= 8;",
        )
        .expect("recreate the schema of migration 0007");
        assert!(events_schema(&db).contains("IN ('public'"));
    }

    let h = h.reopen_migrated().await;
    let result = AssertUnwindSafe(async {
        {
            let db = rusqlite::Connection::open(&file).expect("open the database file");
            let schema = events_schema(&db);
            assert!(!schema.contains(" IN "), "{schema}");
            let indexes: BTreeSet<String> = db
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")
                .expect("list the indexes")
                .query_map([], |row| row.get(0))
                .expect("the indexes")
                .collect::<Result<_, _>>()
                .expect("index names");
            assert!(
                indexes.contains("events_public_stream") && indexes.contains("events_idempotency"),
                "{indexes:?}"
            );
            let idempotency_key: Vec<String> = db
                .prepare("SELECT name FROM pragma_index_info('events_idempotency') ORDER BY seqno")
                .expect("the index's columns")
                .query_map([], |row| row.get(0))
                .expect("its columns")
                .collect::<Result<_, _>>()
                .expect("column names");
            assert_eq!(idempotency_key, ["client_id", "actor_id"]);
            let refused = db.execute(
                "UPDATE events SET visibility = 'everyone' WHERE rowid = (SELECT MIN(rowid) FROM events)",
                [],
            );
            assert!(
                matches!(&refused, Err(e) if e.to_string().contains("CHECK")),
                "a visibility outside the three is refused: {refused:?}"
            );
        }
        let after = |audience| h.store.events_after(c, audience, 0, 100);
        assert_eq!(after(Audience::Customer).await.expect("customer stream"), customers_before);
        assert_eq!(after(Audience::Agents).await.expect("agents' stream"), agents_before);
        assert_eq!(
            after(Audience::Supervisors).await.expect("supervisors' stream"),
            supervisors_before
        );
        let retry = h
            .append(h.event(c, &cust, Some("m-1"), message("my kettle broke")))
            .await;
        assert!(retry.duplicate, "the idempotency index came through");
        let next = h.add(c, &cust, message("thanks")).await;
        assert_eq!(next.seqs.supervisor, supervisors_before.len() as u64 + 1);
        let audit = h.store.audit_rows(c).await.expect("audit rows");
        let head = h.store.last_hash(c).await.expect("head");
        assert_eq!(chain::verify(&audit, head.as_deref()), Ok(()));
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// SQLite only: another process appending to the same data directory between two of this
/// store's batches. The append thread remembers the heads it committed; it must notice
/// the other connection's commit and not hand out seqs or a hash link that are already
/// taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_heads_written_by_another_connection_are_seen() {
    let h = Harness::sqlite().await;
    let result = AssertUnwindSafe(async {
        let c = h.open("support", Some("cust-1")).await;
        let alice = agent("alice");
        let first = h.add(c, &alice, note("one")).await;
        assert_eq!(first.seqs.supervisor, 2);
        let other = h.another_node().await;
        let outcomes = other
            .write_batch(vec![WriteRequest::append(h.event(
                c,
                &alice,
                None,
                note("two"),
            ))])
            .await
            .expect("the other node's batch commits");
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        let third = h.add(c, &alice, note("three")).await;
        assert_eq!(
            third.seqs.supervisor, 4,
            "seqs continue after the other node's"
        );
        let audit = h.store.audit_rows(c).await.expect("audit rows");
        let head = h.store.last_hash(c).await.expect("head");
        assert_eq!(chain::verify(&audit, head.as_deref()), Ok(()));
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// PostgreSQL only (SQLite's writer has one lane). A conversation whose row another node
/// holds locked (mid-append) does not hold up this node's appends to other
/// conversations: the writer has a second batch in flight while the first waits, and
/// the waiting one commits, in order, once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_locked_conversation_does_not_hold_up_appends_to_others() {
    use super::writer::{CommitListener, Writer};
    use super::UserNotification;

    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<ConversationId>>);
    impl CommitListener for Recorder {
        fn committed(&self, events: &[Arc<Event>], _: &[UserNotification]) {
            self.0
                .lock()
                .extend(events.iter().map(|event| event.conversation_id));
        }
    }

    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let locked = h.open("support", Some("cust-1")).await;
        let free = h.open("support", Some("cust-2")).await;
        let alice = agent("alice");

        // Another node is mid-append to `locked`: its row is locked until it commits.
        let mut other = h.other_node_transaction().await;
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
            .bind(locked.to_string())
            .execute(&mut other)
            .await
            .expect("lock the row");

        let recorder = Arc::new(Recorder::default());
        let writer = Arc::new(Writer::start(
            h.store.clone(),
            recorder.clone(),
            Arc::new(crate::metrics::Metrics::new()),
        ));
        let waiting = {
            let writer = writer.clone();
            let request = WriteRequest::append(h.event(
                locked,
                &alice,
                Some("to-locked"),
                message("waits for the lock"),
            ));
            tokio::spawn(async move { writer.write(request).await })
        };
        // Its batch is in flight, waiting on the lock.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the lock holds the first batch");

        let request = WriteRequest::append(h.event(
            free,
            &alice,
            Some("to-free"),
            message("needs no lock anyone holds"),
        ));
        let written =
            tokio::time::timeout(std::time::Duration::from_secs(5), writer.write(request))
                .await
                .expect("an append to another conversation commits while the first waits")
                .expect("accepted");
        assert_eq!(written.events[0].conversation_id, free);
        assert!(!waiting.is_finished(), "the first batch still waits");

        commit_other_node(other).await;
        let first = waiting
            .await
            .expect("the waiting task")
            .expect("committed once the lock is released");
        assert_eq!(first.events[0].conversation_id, locked);
        assert_eq!(
            first.events[0].seqs.supervisor, 2,
            "right after the opening"
        );
        assert_eq!(
            *recorder.0.lock(),
            vec![free, locked],
            "told in commit order"
        );
        writer.shutdown().await;
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// PostgreSQL only (SQLite draws ids in its one writer's commit order). A user's
/// notifications commit in the order of their ids, so `read_notifications` with `up_to`
/// never marks read one that arrives after: while another node's transaction holds an
/// id for bob, this node's mention of bob and assignment to bob wait for it to commit,
/// then draw larger ids. A mention of someone else does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_users_notifications_commit_in_the_order_of_their_ids() {
    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let first = h.open("support", Some("cust-1")).await;
        let second = h.open("support", Some("cust-2")).await;
        let alice = agent("alice");
        let bob = user("bob");

        for (attempt, data) in [
            mentioning("@bob look", &["bob"]),
            assigned(Some("bob"), None),
        ]
        .into_iter()
        .enumerate()
        {
            // Another node is writing a notification for bob: it drew its id, and has
            // not committed.
            let mut other = h.other_node_transaction().await;
            super::postgres_append::lock_notified_users(&mut other, &[&bob])
                .await
                .expect("the other node takes bob's lock");
            let theirs: i64 =
                sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('notifications', 'id'))")
                    .fetch_one(&mut other)
                    .await
                    .expect("the other node draws an id");

            // Someone else's notification is not held up by bob's.
            let to_carol = h
                .store
                .write_batch(vec![WriteRequest::append(h.event(
                    second,
                    &alice,
                    None,
                    mentioning("@carol look", &["carol"]),
                ))])
                .await
                .expect("the batch commits")
                .remove(0)
                .expect("accepted");
            assert_eq!(to_carol.notifications[0].user_id, user("carol"));

            let store = h.store.clone();
            let request = WriteRequest::append(h.event(first, &alice, None, data));
            let ours = tokio::spawn(async move { store.write_batch(vec![request]).await });
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(
                !ours.is_finished(),
                "attempt {attempt}: bob's notification committed while an earlier id of his was uncommitted"
            );
            commit_other_node(other).await;

            let outcome = ours
                .await
                .expect("the batch task")
                .expect("the batch commits")
                .remove(0)
                .expect("accepted");
            assert_eq!(outcome.notifications.len(), 1, "{outcome:?}");
            assert_eq!(outcome.notifications[0].user_id, bob);
            assert!(
                outcome.notifications[0].notification.id > theirs as u64,
                "attempt {attempt}: {} after {theirs}",
                outcome.notifications[0].notification.id
            );
        }
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// A node frozen mid-append (a stopped VM) holding a conversation's row lock stalls
/// nobody for long: another node's append to that conversation fails once its lock wait
/// passes `lock_timeout` (its callers retry with their `client_id`) instead of waiting for
/// the frozen node, appends to other conversations go on meanwhile, and PostgreSQL ends
/// the frozen transaction after `idle_in_transaction_session_timeout`, so the
/// conversation takes appends again.
#[tokio::test]
async fn postgres_a_frozen_lock_holder_stalls_no_other_node_for_long() {
    use super::postgres::PgTimeouts;
    use std::time::{Duration, Instant};
    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let Backend::Postgres { server, database } = &h.backend else {
            unreachable!()
        };
        let timeouts = PgTimeouts {
            lock: Duration::from_millis(300),
            idle_in_transaction: Duration::from_millis(1500),
        };
        let url = format!("{server}/{database}");
        let frozen = PgStore::open_with(&url, timeouts).await.expect("node A");
        let other = PgStore::open_with(&url, timeouts).await.expect("node B");
        h.nodes.lock().push(frozen.clone());
        h.nodes.lock().push(other.clone());
        let held = h.open("support", Some("cust-1")).await;
        let free = h.open("support", Some("cust-2")).await;

        // Node A takes the row lock mid-append, then stops.
        let mut stopped = frozen.connection().await.expect("a connection of node A");
        sqlx::query("BEGIN")
            .execute(&mut *stopped)
            .await
            .expect("begin");
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
            .bind(held.to_string())
            .execute(&mut *stopped)
            .await
            .expect("the row lock");

        let alice = agent("alice");
        let append = |conversation, key: &str| {
            WriteRequest::append(h.event(conversation, &alice, Some(key), message(key)))
        };
        let started = Instant::now();
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            other.write_batch(vec![append(held, "to-the-held-one")]),
        )
        .await
        .expect("the append waited for the frozen node");
        assert!(refused.is_err(), "{refused:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "refused only after {:?}",
            started.elapsed()
        );
        let passed = other
            .write_batch(vec![append(free, "to-another")])
            .await
            .expect("another conversation's append commits")
            .remove(0);
        assert!(passed.is_ok(), "{passed:?}");

        // Once PostgreSQL ended node A's idle transaction, the retry commits.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match other
                .write_batch(vec![append(held, "to-the-held-one")])
                .await
            {
                Ok(mut outcomes) => {
                    let outcome = outcomes.remove(0).expect("accepted");
                    assert!(!outcome.duplicate, "the refused append stored nothing");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
            }
        }
        assert!(started.elapsed() >= Duration::from_millis(1500));
        drop(stopped);
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}

/// Ends the other node's transaction ([`Harness::other_node_transaction`]) with a commit
/// and closes its connection.
async fn commit_other_node(mut other: sqlx::PgConnection) {
    sqlx::query("COMMIT")
        .execute(&mut other)
        .await
        .expect("the other node commits");
    let _ = other.close().await;
}

/// Inserts, in `other`'s transaction, an event by `alice` under `client_id` in
/// `conversation`, as another node's append would; returns its id.
async fn alices_event_in(
    other: &mut sqlx::PgConnection,
    conversation: ConversationId,
    client_id: &str,
) -> EventId {
    let id = EventId::new();
    sqlx::query(
        "INSERT INTO events (id, conversation_id, supervisor_seq, agent_seq, public_seq, \
         kind, visibility, actor_id, actor_role, actor_name, client_id, payload, \
         created_at, hash) VALUES ($1::uuid, $2::uuid, 1000, 1000, 1000, 'message', \
         'public', 'alice', 'agent', NULL, $3, $4, 0, $5)",
    )
    .bind(id.to_string())
    .bind(conversation.to_string())
    .bind(client_id)
    .bind(serde_json::to_string(&message("sent through the other node")).expect("json"))
    .bind(&[7u8; 32][..])
    .execute(other)
    .await
    .expect("the other node's insert");
    id
}

/// PostgreSQL only. Another node holds an uncommitted event under the `(author,
/// client_id)` this batch is about to store, so the batch waits on it while holding its
/// conversation's row; then the other node asks for that row. PostgreSQL breaks the
/// cycle by aborting the batch (the other node waits longer before it checks), and the
/// batch is written again: it then finds the other node's event and answers as the
/// retry it is, instead of failing its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_aborted_to_break_a_deadlock_is_written_again() {
    let h = Harness::postgres().await;
    let result = AssertUnwindSafe(async {
        let ours = h.open("support", Some("cust-1")).await;
        let theirs = h.open("support", Some("cust-2")).await;
        let mut other = h.other_node_transaction().await;
        // Our batch's backend checks for deadlocks after the default second; this one
        // waits ten, so the cycle is always broken by aborting our batch.
        sqlx::query("SET LOCAL deadlock_timeout = '10s'")
            .execute(&mut other)
            .await
            .expect("set deadlock_timeout");
        let theirs_id = alices_event_in(&mut other, theirs, "same-key").await;

        let store = h.store.clone();
        let request = WriteRequest::append(h.event(
            ours,
            &agent("alice"),
            Some("same-key"),
            message("sent through this node"),
        ));
        let ours_batch = tokio::spawn(async move { store.write_batch(vec![request]).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !ours_batch.is_finished(),
            "the batch waits on the other's key"
        );

        // The other node now wants the row our batch holds: a cycle.
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
            .bind(ours.to_string())
            .execute(&mut other)
            .await
            .expect("the row, once our batch was aborted");
        commit_other_node(other).await;

        let mut outcomes = tokio::time::timeout(std::time::Duration::from_secs(10), ours_batch)
            .await
            .expect("the batch finishes")
            .expect("the batch task")
            .expect("written again after the deadlock, not failed");
        let outcome = outcomes.remove(0).expect("accepted as a retry");
        assert!(outcome.duplicate, "{outcome:?}");
        assert_eq!(outcome.events[0].view.id, theirs_id);
    })
    .catch_unwind()
    .await;
    h.finish(result).await;
}
