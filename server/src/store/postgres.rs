//! The shared store: PostgreSQL, for several nodes writing one event log.
//!
//! It behaves exactly like [`super::sqlite::SqliteStore`] (same tables, same projections
//! kept in the append transaction, same idempotency, reply guard, notifications and audit
//! chain); what changes is that several nodes append at once. Each node's writer task
//! still group-commits its batch in one transaction, but the transaction first locks every
//! conversation row the batch touches (`SELECT ... FOR UPDATE`, in id order so two nodes
//! never wait on each other in a cycle), so appends to one conversation serialize across
//! nodes and seq allocation from the row's counters stays gap-free (the batch itself is
//! written in a handful of statements: `postgres_append.rs`). A commit returns after
//! PostgreSQL has flushed it (`synchronous_commit` on, its default): that is what an `ok`
//! with a `seq` promises. Note search uses a generated `tsvector` column ('simple'
//! configuration) with a GIN index; each search word is a phrase query, never syntax.
//!
//! PostgreSQL text cannot hold a NUL character, which SQLite stores and the service lets
//! through (in a note body or a `client_id`, say): one such request would otherwise fail
//! the whole batch, everyone's appends with it. So text written here has NUL replaced by
//! U+FFFD, before hashing where the column is hashed (see `pg_text`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backchannel_protocol::http::{FieldDefinition, TagDefinition, Team};
use backchannel_protocol::server::Notification;
use backchannel_protocol::{
    Audience, ConversationId, EventId, FieldTarget, InboxId, TeamId, UserId,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};

use super::postgres_append;
use super::rows::{
    audit_row_from_row, conversation_from_row, directory_from_row, enum_text, event_from_row,
    field_from_row, get_u64, note_from_row, notification_from_row, parse_uuid, sql_int,
    stream_after, tag_from_row, team_from_row,
};
use super::{
    to_micros, AppendShortcutCounters, AuditRow, AuditSnapshot, ConversationFilter,
    ConversationRecord, DirectoryEntry, Event, MarkRead, NewEvent, NoteRecord, NoteSearch,
    NotificationReader, Store, StoreError, UserNotification, WriteOutcome, WriteRefusal,
    WriteRequest,
};

/// Connections per node.
const POOL_SIZE: u32 = 10;
/// Batches a node writes at once (see [`Store::concurrent_batches`]).
const WRITE_LANES: usize = 2;

/// How long a node's statements wait for a lock, and how long PostgreSQL lets a node's
/// transaction sit idle before ending it. A node frozen mid-append (a stopped VM, a long
/// pause) holds its conversations' row locks: without these bounds, every other node's
/// append to those conversations waited for it, and once those filled a node's write
/// lanes, its appends to any conversation did. With them, such an append fails after
/// `lock` (its callers get `unavailable` and retry with their `client_id`), and
/// PostgreSQL ends the frozen transaction after `idle_in_transaction`, releasing its
/// locks. A healthy append waits milliseconds for a lock and never sits idle.
#[derive(Clone, Copy, Debug)]
pub struct PgTimeouts {
    pub lock: Duration,
    pub idle_in_transaction: Duration,
}

impl Default for PgTimeouts {
    fn default() -> Self {
        PgTimeouts {
            lock: Duration::from_secs(2),
            idle_in_transaction: Duration::from_secs(5),
        }
    }
}

/// Event columns as read back (uuids as text, as the rest of the store expects them).
pub(super) const EVENT_COLUMNS: &str = "id::text AS id, conversation_id::text AS conversation_id, \
     supervisor_seq, agent_seq, public_seq, kind, visibility, actor_id, actor_role, \
     actor_name, client_id, payload, created_at, hash";

const CONVERSATION_COLUMNS: &str = "c.id::text AS id, c.inbox_id, c.contact_id, c.subject, \
     c.status, c.assignee_id, c.team_id, c.public_seq, c.agent_seq, c.supervisor_seq, \
     c.created_at, c.last_activity_at, c.last_public_at";

const NOTE_COLUMNS: &str = "n.id::text AS id, n.conversation_id::text AS conversation_id, \
     n.contact_id, n.author_id, n.author_role, n.author_name, n.note_type, n.audience, n.body, \
     n.created_at, n.pinned";

const USER_COLUMNS: &str =
    "u.id, u.role, u.name, u.handle, u.teams::text AS teams, u.inboxes::text AS inboxes";

pub struct PgStore {
    pool: PgPool,
    /// The heads this node last wrote or read, for appends that skip the locking read.
    pub(super) heads: postgres_append::HeadCache,
}

impl PgStore {
    /// Connects to the database at `url` and brings its schema up to date (several nodes
    /// may start at once: sqlx serializes migrations with an advisory lock).
    pub async fn open(url: &str) -> Result<Arc<Self>, StoreError> {
        Self::open_with(url, PgTimeouts::default()).await
    }

    pub async fn open_with(url: &str, timeouts: PgTimeouts) -> Result<Arc<Self>, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        // Migrations run without the timeouts: a node starting beside another waits for
        // its migrations (an advisory lock) as long as they take.
        let migrator = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&migrator)
            .await?;
        migrator.close().await;
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let options = options.options([
            ("lock_timeout", millis(timeouts.lock)),
            (
                "idle_in_transaction_session_timeout",
                millis(timeouts.idle_in_transaction),
            ),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Arc::new(PgStore {
            pool,
            heads: postgres_append::HeadCache::default(),
        }))
    }
}

#[cfg(test)]
impl PgStore {
    /// One of the node's own connections, with its settings (tests).
    pub(super) async fn connection(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
        Ok(self.pool.acquire().await?)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write_batch(
        &self,
        batch: Vec<WriteRequest>,
    ) -> Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError> {
        postgres_append::write_batch(&self.pool, &self.heads, &batch).await
    }

    /// While one batch waits on its round trips and its commit's flush, the next is
    /// written: appends to one conversation still serialize on its row lock (and are
    /// delivered in `seq` order by its room), as they do between nodes.
    fn concurrent_batches(&self) -> usize {
        WRITE_LANES
    }

    async fn events_after(
        &self,
        conversation: ConversationId,
        audience: Audience,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let (after_seq, order) = stream_after(audience, "$2");
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = $1::uuid \
             AND {after_seq} ORDER BY {order} LIMIT $3"
        ))
        .bind(conversation.to_string())
        .bind(sql_int(after))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    async fn supervisor_heads(
        &self,
        ids: &[ConversationId],
    ) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let rows = sqlx::query(
            "SELECT id::text AS id, supervisor_seq FROM conversations WHERE id = ANY($1::uuid[])",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                Ok((
                    ConversationId(parse_uuid(&id, "conversation id")?),
                    get_u64(row, "supervisor_seq")?,
                ))
            })
            .collect()
    }

    async fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE TRUE"
        ));
        if let Some(inboxes) = &filter.inboxes {
            if inboxes.is_empty() {
                return Ok(Vec::new());
            }
            let inboxes: Vec<String> = inboxes.iter().map(|i| i.as_str().to_owned()).collect();
            query
                .push(" AND c.inbox_id = ANY(")
                .push_bind(inboxes)
                .push(")");
        }
        if let Some(customer) = &filter.customer {
            query
                .push(" AND c.contact_id = ")
                .push_bind(pg_text(customer.as_str()).into_owned());
        }
        if let Some(status) = &filter.status {
            query
                .push(" AND c.status = ")
                .push_bind(pg_text(status).into_owned());
        }
        if let Some(assignee) = &filter.assignee_id {
            query
                .push(" AND c.assignee_id = ")
                .push_bind(pg_text(assignee.as_str()).into_owned());
        }
        if let Some(tag) = &filter.tag {
            query
                .push(" AND c.id IN (SELECT t.conversation_id FROM conversation_tags t WHERE t.tag = ")
                .push_bind(pg_text(tag).into_owned())
                .push(")");
        }
        if let Some((key, value)) = &filter.field {
            query
                .push(
                    " AND c.id::text IN (SELECT f.target_id FROM field_values f \
                     WHERE f.target = 'conversation' AND f.key = ",
                )
                .push_bind(pg_text(key).into_owned())
                .push(" AND f.value = ")
                .push_bind(value.to_string())
                .push(")");
        }
        // `activity_bucket` (the slot of `last_activity_at`) first, so that the inbox
        // and assignee indexes give the order and only a slot's rows are sorted.
        query
            .push(if filter.customer.is_some() {
                " ORDER BY c.last_public_at DESC, c.id DESC LIMIT "
            } else {
                " ORDER BY c.activity_bucket DESC, c.last_activity_at DESC, c.id DESC LIMIT "
            })
            .push_bind(filter.limit as i64);
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(conversation_from_row).collect()
    }

    async fn put_inbox(&self, id: &InboxId, name: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inboxes (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(to_micros(super::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn inbox_name(&self, id: &InboxId) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT name FROM inboxes WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    async fn upsert_directory_entry(&self, entry: &DirectoryEntry) -> Result<(), StoreError> {
        let teams = serde_json::to_string(&entry.teams)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode teams: {e}")))?;
        let inboxes = serde_json::to_string(&entry.inboxes)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode inboxes: {e}")))?;
        sqlx::query(
            "INSERT INTO users (id, role, name, handle, teams, inboxes, updated_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7) ON CONFLICT (id) DO UPDATE \
             SET role = excluded.role, name = excluded.name, handle = excluded.handle, \
             teams = excluded.teams, inboxes = excluded.inboxes, \
             updated_at = excluded.updated_at",
        )
        .bind(pg_text(entry.id.as_str()))
        .bind(entry.role.as_str())
        .bind(entry.name.as_deref().map(pg_text))
        .bind(pg_text(&entry.handle))
        .bind(teams)
        .bind(inboxes)
        .bind(to_micros(super::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn directory_entry(&self, id: &UserId) -> Result<Option<DirectoryEntry>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
        ))
        .bind(pg_text(id.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(directory_from_row).transpose()
    }

    async fn directory(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users u ORDER BY u.id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(directory_from_row).collect()
    }

    async fn open_assignments(&self, user: &UserId) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS open FROM conversations \
             WHERE assignee_id = $1 AND status <> 'resolved'",
        )
        .bind(pg_text(user.as_str()))
        .fetch_one(&self.pool)
        .await?;
        get_u64(&row, "open")
    }

    async fn mention_candidates(
        &self,
        names: &[String],
    ) -> Result<Vec<DirectoryEntry>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.handle = ANY($1) OR EXISTS \
             (SELECT 1 FROM jsonb_array_elements_text(u.teams) t (name) \
             WHERE lower(t.name) = ANY($1)) ORDER BY u.id"
        ))
        .bind(
            names
                .iter()
                .map(|n| pg_text(n).into_owned())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(directory_from_row).collect()
    }

    async fn put_team(&self, team: &Team) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO teams (id, name) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(team.id.as_str())
        .bind(&team.name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn team(&self, id: &TeamId) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM teams WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(team_from_row).transpose()
    }

    async fn teams(&self) -> Result<Vec<Team>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM teams ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(team_from_row).collect()
    }

    async fn put_tag(&self, tag: &TagDefinition) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tags (name, color, description) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET color = excluded.color, \
             description = excluded.description",
        )
        .bind(&tag.name)
        .bind(tag.color.as_deref())
        .bind(tag.description.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn tags(&self) -> Result<Vec<TagDefinition>, StoreError> {
        let rows = sqlx::query("SELECT name, color, description FROM tags ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tag_from_row).collect()
    }

    async fn delete_tag(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tags WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_field(&self, field: &FieldDefinition) -> Result<(), StoreError> {
        let options = serde_json::to_string(&field.options)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode options: {e}")))?;
        sqlx::query(
            "INSERT INTO field_definitions (key, type, applies_to, label, required, options) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO UPDATE \
             SET type = excluded.type, applies_to = excluded.applies_to, \
             label = excluded.label, required = excluded.required, options = excluded.options",
        )
        .bind(&field.key)
        .bind(enum_text(&field.field_type)?)
        .bind(field.applies_to.as_str())
        .bind(&field.label)
        .bind(field.required)
        .bind(options)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fields(&self) -> Result<Vec<FieldDefinition>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, type, applies_to, label, required, options FROM field_definitions \
             ORDER BY key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(field_from_row).collect()
    }

    async fn conversation_tags(
        &self,
        ids: &[ConversationId],
    ) -> Result<BTreeMap<ConversationId, Vec<String>>, StoreError> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let rows = sqlx::query(
            "SELECT conversation_id::text AS conversation_id, tag FROM conversation_tags \
             WHERE conversation_id = ANY($1::uuid[]) ORDER BY tag",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let id: String = row.try_get("conversation_id")?;
            let id = ConversationId(parse_uuid(&id, "conversation id")?);
            out.entry(id)
                .or_insert_with(Vec::new)
                .push(row.try_get("tag")?);
        }
        Ok(out)
    }

    async fn field_values(
        &self,
        target: FieldTarget,
        ids: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>, StoreError> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let rows = sqlx::query(
            "SELECT target_id, key, value FROM field_values \
             WHERE target = $1 AND target_id = ANY($2)",
        )
        .bind(target.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let value: String = row.try_get("value")?;
            let value = serde_json::from_str(&value)
                .map_err(|e| StoreError::Corrupt(format!("field value: {e}")))?;
            out.entry(row.try_get::<String, _>("target_id")?)
                .or_insert_with(BTreeMap::new)
                .insert(row.try_get("key")?, value);
        }
        Ok(out)
    }

    async fn note(&self, id: EventId) -> Result<Option<NoteRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {NOTE_COLUMNS} FROM notes n WHERE n.id = $1::uuid"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(note_from_row).transpose()
    }

    async fn pinned_notes(
        &self,
        conversation: ConversationId,
        contact: Option<&UserId>,
    ) -> Result<Vec<NoteRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {NOTE_COLUMNS} FROM notes n WHERE n.pinned AND (n.conversation_id = $1::uuid \
             OR (n.contact_id = $2 AND n.note_type = 'context')) ORDER BY n.created_at, n.id"
        ))
        .bind(conversation.to_string())
        .bind(contact.map(|c| pg_text(c.as_str())))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(note_from_row).collect()
    }

    async fn contact_conversations(
        &self,
        contact: &UserId,
        inboxes: Option<&[InboxId]>,
        limit: u32,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let inboxes: Option<Vec<String>> = inboxes.map(|list| {
            list.iter()
                .map(|i| pg_text(i.as_str()).into_owned())
                .collect()
        });
        let rows = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.contact_id = $1 \
             AND ($2::text[] IS NULL OR c.inbox_id = ANY($2)) \
             ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $3"
        ))
        .bind(pg_text(contact.as_str()))
        .bind(inboxes)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conversation_from_row).collect()
    }

    async fn search_notes(&self, search: &NoteSearch) -> Result<Vec<NoteRecord>, StoreError> {
        // A word without a letter or digit has no lexeme: it is left out, as FTS5 leaves
        // out an empty phrase (and as PostgreSQL would, with a notice in the log).
        let terms: Vec<String> = search
            .terms
            .iter()
            .filter(|term| term.chars().any(char::is_alphanumeric))
            .map(|term| pg_text(term).into_owned())
            .collect();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {NOTE_COLUMNS} FROM notes n JOIN conversations c ON c.id = n.conversation_id \
             CROSS JOIN (SELECT "
        ));
        // Each word is parsed as plain text into a phrase (its lexemes in order), so user
        // input is never tsquery syntax; the words are all required.
        for (index, term) in terms.into_iter().enumerate() {
            if index > 0 {
                query.push(" && ");
            }
            query
                .push("phraseto_tsquery('simple', ")
                .push_bind(term)
                .push(")");
        }
        query.push(" AS q) s WHERE n.search @@ s.q");
        if let Some(inboxes) = &search.inboxes {
            if inboxes.is_empty() {
                return Ok(Vec::new());
            }
            let inboxes: Vec<String> = inboxes.iter().map(|i| i.as_str().to_owned()).collect();
            query
                .push(" AND c.inbox_id = ANY(")
                .push_bind(inboxes)
                .push(")");
        }
        if !search.include_supervisors {
            query.push(" AND n.audience = 'agents'");
        }
        if let Some(note_type) = &search.note_type {
            query
                .push(" AND n.note_type = ")
                .push_bind(enum_text(note_type)?);
        }
        if let Some(author) = &search.author {
            query
                .push(" AND n.author_id = ")
                .push_bind(author.as_str().to_owned());
        }
        if let Some(tag) = &search.tag {
            query
                .push(
                    " AND n.conversation_id IN (SELECT t.conversation_id FROM conversation_tags t \
                     WHERE t.tag = ",
                )
                .push_bind(tag.clone())
                .push(")");
        }
        query
            .push(" ORDER BY n.created_at DESC, n.id DESC LIMIT ")
            .push_bind(search.limit as i64);
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(note_from_row).collect()
    }

    async fn notifications_since(
        &self,
        user: &UserId,
        since: time::OffsetDateTime,
        after: u64,
        limit: u32,
    ) -> Result<Vec<UserNotification>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.id, n.kind, n.conversation_id::text AS conversation_id, \
             n.event_id::text AS event_id, n.from_id, n.from_role, n.from_name, n.created_at, \
             n.read_at, e.visibility = 'supervisors' AS supervisors_only, c.inbox_id \
             FROM notifications n JOIN events e ON e.id = n.event_id \
             JOIN conversations c ON c.id = n.conversation_id \
             WHERE n.user_id = $1 AND n.created_at >= $2 AND n.id > $3 ORDER BY n.id LIMIT $4",
        )
        .bind(pg_text(user.as_str()))
        .bind(to_micros(since))
        .bind(sql_int(after))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UserNotification {
                    user_id: user.clone(),
                    notification: notification_from_row(row)?,
                    supervisors_only: row.try_get("supervisors_only")?,
                    inbox: Some(InboxId(row.try_get("inbox_id")?)),
                })
            })
            .collect()
    }

    async fn notifications(
        &self,
        reader: &NotificationReader<'_>,
        unread_only: bool,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT id, kind, conversation_id::text AS conversation_id, \
             event_id::text AS event_id, from_id, from_role, from_name, created_at, read_at \
             FROM notifications WHERE",
        );
        if !push_reader(&mut query, reader) {
            return Ok(Vec::new());
        }
        if unread_only {
            query.push(" AND read_at IS NULL");
        }
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(sql_int(before));
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(limit as i64);
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn unread_notifications(
        &self,
        reader: &NotificationReader<'_>,
    ) -> Result<u64, StoreError> {
        let mut query =
            QueryBuilder::<Postgres>::new("SELECT COUNT(*) AS unread FROM notifications WHERE");
        if !push_reader(&mut query, reader) {
            return Ok(0);
        }
        query.push(" AND read_at IS NULL");
        let row = query.build().fetch_one(&self.pool).await?;
        get_u64(&row, "unread")
    }

    async fn mark_notifications_read(
        &self,
        reader: &NotificationReader<'_>,
        which: &MarkRead,
    ) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new("UPDATE notifications SET read_at = ");
        query.push_bind(to_micros(super::now())).push(" WHERE");
        if !push_reader(&mut query, reader) {
            return Ok(0);
        }
        query.push(" AND read_at IS NULL");
        match which {
            MarkRead::All => {}
            MarkRead::UpTo(id) => {
                query.push(" AND id <= ").push_bind(sql_int(*id));
            }
            MarkRead::Ids(ids) => {
                if ids.is_empty() {
                    return Ok(0);
                }
                let ids: Vec<i64> = ids.iter().map(|id| sql_int(*id)).collect();
                query.push(" AND id = ANY(").push_bind(ids).push(")");
            }
        }
        let done = query.build().execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn audit_rows(&self, conversation: ConversationId) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = $1::uuid \
             ORDER BY supervisor_seq"
        ))
        .bind(conversation.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_row_from_row).collect()
    }

    async fn last_hash(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT last_hash FROM conversations WHERE id = $1::uuid")
            .bind(conversation.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("last_hash")).transpose()?)
    }

    async fn audit_snapshot(
        &self,
        conversation: ConversationId,
    ) -> Result<AuditSnapshot, StoreError> {
        // One snapshot for both reads: an append committing between them must not make
        // the rows and the head disagree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head =
            sqlx::query("SELECT last_hash, supervisor_seq FROM conversations WHERE id = $1::uuid")
                .bind(conversation.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = $1::uuid \
             ORDER BY supervisor_seq"
        ))
        .bind(conversation.to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AuditSnapshot {
            rows: rows
                .iter()
                .map(audit_row_from_row)
                .collect::<Result<_, _>>()?,
            head: head.as_ref().map(|r| r.try_get("last_hash")).transpose()?,
            supervisor_seq: head
                .as_ref()
                .map_or(Ok(0), |r| get_u64(r, "supervisor_seq"))?,
        })
    }

    async fn orphaned_event_conversations(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT conversation_id::text AS id FROM events e \
             WHERE NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = e.conversation_id) \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    async fn conversation_ids(&self) -> Result<Vec<ConversationId>, StoreError> {
        let rows = sqlx::query("SELECT id::text AS id FROM conversations ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                Ok(ConversationId(parse_uuid(&id, "conversation id")?))
            })
            .collect()
    }

    async fn deployment_id(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM deployment")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn append_shortcut_counters(&self) -> Option<AppendShortcutCounters> {
        Some(self.heads.counters.clone())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// `text` as PostgreSQL can store it: NUL, which it refuses in text, becomes U+FFFD.
pub(super) fn pg_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `new` with its hashed text columns as PostgreSQL stores them (see [`pg_text`]), so the
/// returned event, the stored row and the hash agree. The payload needs nothing: JSON
/// escapes NUL.
pub(super) fn pg_event(new: &NewEvent) -> Cow<'_, NewEvent> {
    let has_nul = |s: &str| s.contains('\0');
    if !has_nul(new.actor.id.as_str())
        && !new.actor.name.as_deref().is_some_and(has_nul)
        && !new.client_id.as_deref().is_some_and(has_nul)
    {
        return Cow::Borrowed(new);
    }
    let mut clean = new.clone();
    clean.actor.id = UserId(pg_text(new.actor.id.as_str()).into_owned());
    clean.actor.name = new.actor.name.as_deref().map(|n| pg_text(n).into_owned());
    clean.client_id = new.client_id.as_deref().map(|c| pg_text(c).into_owned());
    Cow::Owned(clean)
}

/// Pushes the rows of `notifications` the reader may see (`NotificationReader`): theirs,
/// not of a supervisors-only event unless they may read those, in their inboxes. False
/// when they may see none (no inbox at all).
fn push_reader(query: &mut QueryBuilder<'_, Postgres>, reader: &NotificationReader<'_>) -> bool {
    query
        .push(" user_id = ")
        .push_bind(pg_text(reader.user.as_str()).into_owned());
    if !reader.supervisors {
        query.push(
            " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = notifications.event_id \
             AND e.visibility = 'supervisors')",
        );
    }
    if let Some(inboxes) = reader.inboxes {
        if inboxes.is_empty() {
            return false;
        }
        let inboxes: Vec<String> = inboxes.iter().map(|i| i.as_str().to_owned()).collect();
        // Each notification's own conversation looked up by its key. PostgreSQL planned
        // the `IN (SELECT ...)` form as the same semi-join on the key; written as on
        // SQLite, where it was not, so the engines' filters read alike.
        query
            .push(
                " AND EXISTS (SELECT 1 FROM conversations c \
                 WHERE c.id = notifications.conversation_id AND c.inbox_id = ANY(",
            )
            .push_bind(inboxes)
            .push("))");
    }
    true
}
