//! The embedded store: SQLite in the data directory, WAL mode, `synchronous=FULL`.
//!
//! Appends go through one connection on its own thread (`sqlite_append.rs`: SQLite has
//! one writer anyway, and calling it directly there is what makes appends fast); a small
//! sqlx pool reads, concurrently with the writer thanks to WAL, and a one-connection sqlx
//! pool runs the migrations and the rare writes outside the log. `synchronous=FULL` makes
//! a commit survive a power loss, not only a killed process: an `ok` with a `seq` promises
//! exactly that. The writer task group-commits, so one fsync serves every append waiting
//! at that moment.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use std::collections::BTreeMap;

use backchannel_protocol::http::{FieldDefinition, TagDefinition, Team};
use backchannel_protocol::server::Notification;
use backchannel_protocol::{
    Audience, ConversationId, EventId, FieldTarget, InboxId, TeamId, UserId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use super::rows::{
    audit_row_from_row, conversation_from_row, directory_from_row, enum_text, event_from_row,
    field_from_row, get_u64, note_from_row, notification_from_row, parse_uuid, sql_int,
    stream_after, tag_from_row, team_from_row,
};
use super::sqlite_append::AppendThread;
use super::{
    to_micros, AuditRow, AuditSnapshot, ConversationFilter, ConversationRecord, DirectoryEntry,
    Event, MarkRead, NoteRecord, NoteSearch, NotificationReader, Store, StoreError,
    UserNotification, WriteOutcome, WriteRefusal, WriteRequest,
};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "backchannel.sqlite3";

/// Event columns as stored and read back (`sqlite_append.rs` inserts them in this order).
pub(super) const EVENT_COLUMNS: &str =
    "id, conversation_id, supervisor_seq, agent_seq, public_seq, \
     kind, visibility, actor_id, actor_role, actor_name, client_id, payload, created_at, hash";

const CONVERSATION_COLUMNS: &str = "id, inbox_id, contact_id, subject, status, assignee_id, \
     team_id, public_seq, agent_seq, supervisor_seq, created_at, last_activity_at, last_public_at";

const NOTE_COLUMNS: &str = "n.id, n.conversation_id, n.contact_id, n.author_id, n.author_role, \
     n.author_name, n.note_type, n.audience, n.body, n.created_at, n.pinned";

pub struct SqliteStore {
    /// The append path: its own thread and connection (`sqlite_append.rs`).
    append: AppendThread,
    /// Migrations and the rare writes outside the log (directory, definitions, read marks).
    writer: SqlitePool,
    readers: SqlitePool,
}

/// SQLite's process-wide settings, made once, before the process's first SQLite
/// connection (rusqlite's or sqlx's): SQLite refuses them once it has initialized, and
/// then keeps its defaults, with the same results at a higher CPU cost. Returns whether
/// they are in force.
///
/// - Memory statistics off: with them on, every allocation and free SQLite makes takes a
///   process-wide mutex to count it, ~2 % of the server's user-space instructions per
///   delivery in `bc-load fanout` (docs/benchmarks-log.md). Nothing here reads them: no
///   soft heap limit, no `sqlite3_memory_used`.
/// - The relabelling page cache (`sqlite_page_cache.rs`).
pub fn configure_process() -> bool {
    static CONFIGURED: OnceLock<bool> = OnceLock::new();
    *CONFIGURED.get_or_init(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. Before SQLite initializes it
        // succeeds; after, it returns SQLITE_MISUSE and changes nothing.
        let memstatus_off = unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int)
        } == rusqlite::ffi::SQLITE_OK;
        if !memstatus_off {
            tracing::debug!("SQLite was initialized already: its memory statistics stay on");
        }
        let page_cache = super::sqlite_page_cache::install();
        memstatus_off && page_cache
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to
    /// date.
    pub async fn open(data_dir: &Path) -> Result<Arc<Self>, StoreError> {
        configure_process();
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DATABASE_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let append = AppendThread::start(&data_dir.join(DATABASE_FILE))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Arc::new(SqliteStore {
            append,
            writer,
            readers,
        }))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write_batch(
        &self,
        batch: Vec<WriteRequest>,
    ) -> Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError> {
        self.append.write(batch).await
    }

    async fn events_after(
        &self,
        conversation: ConversationId,
        audience: Audience,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let (after_seq, order) = stream_after(audience, "?2");
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ?1 \
             AND {after_seq} ORDER BY {order} LIMIT ?3"
        ))
        .bind(conversation.to_string())
        .bind(sql_int(after))
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.readers)
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
        let mut query =
            QueryBuilder::new("SELECT id, supervisor_seq FROM conversations WHERE id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        query.push(")");
        let rows = query.build().fetch_all(&self.readers).await?;
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
        let mut query = QueryBuilder::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE 1 = 1"
        ));
        if let Some(inboxes) = &filter.inboxes {
            if !push_inboxes(&mut query, "inbox_id", inboxes) {
                return Ok(Vec::new());
            }
        }
        if let Some(customer) = &filter.customer {
            query
                .push(" AND contact_id = ")
                .push_bind(customer.as_str().to_owned());
        }
        if let Some(status) = &filter.status {
            query.push(" AND status = ").push_bind(status.clone());
        }
        if let Some(assignee) = &filter.assignee_id {
            query
                .push(" AND assignee_id = ")
                .push_bind(assignee.as_str().to_owned());
        }
        if let Some(tag) = &filter.tag {
            query
                .push(" AND id IN (SELECT conversation_id FROM conversation_tags WHERE tag = ")
                .push_bind(tag.clone())
                .push(")");
        }
        if let Some((key, value)) = &filter.field {
            query
                .push(
                    " AND id IN (SELECT target_id FROM field_values \
                     WHERE target = 'conversation' AND key = ",
                )
                .push_bind(key.clone())
                .push(" AND value = ")
                .push_bind(value.to_string())
                .push(")");
        }
        // `activity_bucket` (the slot of `last_activity_at`) first, so that the inbox
        // and assignee indexes give the order and only a slot's rows are sorted.
        query
            .push(if filter.customer.is_some() {
                " ORDER BY last_public_at DESC, id DESC LIMIT "
            } else {
                " ORDER BY activity_bucket DESC, last_activity_at DESC, id DESC LIMIT "
            })
            .push_bind(filter.limit as i64);
        let rows = query.build().fetch_all(&self.readers).await?;
        rows.iter().map(conversation_from_row).collect()
    }

    async fn put_inbox(&self, id: &InboxId, name: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inboxes (id, name, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(to_micros(super::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn inbox_name(&self, id: &InboxId) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT name FROM inboxes WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.readers)
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
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
             name = excluded.name, handle = excluded.handle, teams = excluded.teams, \
             inboxes = excluded.inboxes, updated_at = excluded.updated_at",
        )
        .bind(entry.id.as_str())
        .bind(entry.role.as_str())
        .bind(entry.name.as_deref())
        .bind(&entry.handle)
        .bind(teams)
        .bind(inboxes)
        .bind(to_micros(super::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn directory_entry(&self, id: &UserId) -> Result<Option<DirectoryEntry>, StoreError> {
        let row =
            sqlx::query("SELECT id, role, name, handle, teams, inboxes FROM users WHERE id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.readers)
                .await?;
        row.as_ref().map(directory_from_row).transpose()
    }

    async fn directory(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT id, role, name, handle, teams, inboxes FROM users ORDER BY id")
                .fetch_all(&self.readers)
                .await?;
        rows.iter().map(directory_from_row).collect()
    }

    async fn open_assignments(&self, user: &UserId) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM conversations WHERE assignee_id = ? AND status != 'resolved'",
        )
        .bind(user.as_str())
        .fetch_one(&self.readers)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    async fn mention_candidates(
        &self,
        names: &[String],
    ) -> Result<Vec<DirectoryEntry>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // Team ids are compared lower-cased in Rust: SQLite's lower() folds ASCII only.
        let mut query = QueryBuilder::new(
            "SELECT id, role, name, handle, teams, inboxes FROM users \
             WHERE teams != '[]' OR handle IN (",
        );
        let mut list = query.separated(", ");
        for name in names {
            list.push_bind(name.clone());
        }
        query.push(") ORDER BY id");
        let rows = query.build().fetch_all(&self.readers).await?;
        let mut out = Vec::new();
        for row in &rows {
            let entry = directory_from_row(row)?;
            let named = names.contains(&entry.handle)
                || entry
                    .teams
                    .iter()
                    .any(|team| names.contains(&team.to_lowercase()));
            if named {
                out.push(entry);
            }
        }
        Ok(out)
    }

    async fn put_team(&self, team: &Team) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO teams (id, name) VALUES (?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .bind(team.id.as_str())
        .bind(&team.name)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn team(&self, id: &TeamId) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query("SELECT id, name FROM teams WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.readers)
            .await?;
        row.as_ref().map(team_from_row).transpose()
    }

    async fn teams(&self) -> Result<Vec<Team>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM teams ORDER BY id")
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(team_from_row).collect()
    }

    async fn put_tag(&self, tag: &TagDefinition) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tags (name, color, description) VALUES (?, ?, ?) ON CONFLICT (name) \
             DO UPDATE SET color = excluded.color, description = excluded.description",
        )
        .bind(&tag.name)
        .bind(tag.color.as_deref())
        .bind(tag.description.as_deref())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn tags(&self) -> Result<Vec<TagDefinition>, StoreError> {
        let rows = sqlx::query("SELECT name, color, description FROM tags ORDER BY name")
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(tag_from_row).collect()
    }

    async fn delete_tag(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tags WHERE name = ?")
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_field(&self, field: &FieldDefinition) -> Result<(), StoreError> {
        let options = serde_json::to_string(&field.options)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode options: {e}")))?;
        sqlx::query(
            "INSERT INTO field_definitions (key, type, applies_to, label, required, options) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET type = excluded.type, \
             applies_to = excluded.applies_to, label = excluded.label, \
             required = excluded.required, options = excluded.options",
        )
        .bind(&field.key)
        .bind(enum_text(&field.field_type)?)
        .bind(field.applies_to.as_str())
        .bind(&field.label)
        .bind(field.required)
        .bind(options)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn fields(&self) -> Result<Vec<FieldDefinition>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, type, applies_to, label, required, options FROM field_definitions \
             ORDER BY key",
        )
        .fetch_all(&self.readers)
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
        let mut query = QueryBuilder::new(
            "SELECT conversation_id, tag FROM conversation_tags WHERE conversation_id IN (",
        );
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        query.push(") ORDER BY tag");
        for row in query.build().fetch_all(&self.readers).await? {
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
        let mut query =
            QueryBuilder::new("SELECT target_id, key, value FROM field_values WHERE target = ");
        query.push_bind(target.as_str()).push(" AND target_id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        query.push(")");
        for row in query.build().fetch_all(&self.readers).await? {
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
            "SELECT {NOTE_COLUMNS} FROM notes n WHERE n.id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.readers)
        .await?;
        row.as_ref().map(note_from_row).transpose()
    }

    async fn pinned_notes(
        &self,
        conversation: ConversationId,
        contact: Option<&UserId>,
    ) -> Result<Vec<NoteRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {NOTE_COLUMNS} FROM notes n WHERE n.pinned = 1 AND (n.conversation_id = ? \
             OR (n.contact_id = ? AND n.note_type = 'context')) ORDER BY n.created_at"
        ))
        .bind(conversation.to_string())
        .bind(contact.map(|c| c.as_str()))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(note_from_row).collect()
    }

    async fn contact_conversations(
        &self,
        contact: &UserId,
        inboxes: Option<&[InboxId]>,
        limit: u32,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE contact_id = "
        ));
        query.push_bind(contact.as_str().to_owned());
        if let Some(inboxes) = inboxes {
            if !push_inboxes(&mut query, "inbox_id", inboxes) {
                return Ok(Vec::new());
            }
        }
        query
            .push(" ORDER BY last_activity_at DESC, id DESC LIMIT ")
            .push_bind(limit as i64);
        let rows = query.build().fetch_all(&self.readers).await?;
        rows.iter().map(conversation_from_row).collect()
    }

    async fn search_notes(&self, search: &NoteSearch) -> Result<Vec<NoteRecord>, StoreError> {
        if search.terms.is_empty() {
            return Ok(Vec::new());
        }
        // Each word is quoted, so user input is never FTS5 query syntax.
        let expression = search
            .terms
            .iter()
            // NUL cannot appear in an FTS5 string; the quotes make the rest literal.
            .map(|t| format!("\"{}\"", t.replace('\0', "").replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut query = QueryBuilder::new(format!(
            "SELECT {NOTE_COLUMNS} FROM note_search s JOIN notes n ON n.rowid = s.rowid \
             JOIN conversations c ON c.id = n.conversation_id WHERE note_search MATCH "
        ));
        query.push_bind(expression);
        if let Some(inboxes) = &search.inboxes {
            if !push_inboxes(&mut query, "c.inbox_id", inboxes) {
                return Ok(Vec::new());
            }
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
                .push(" AND n.conversation_id IN (SELECT conversation_id FROM conversation_tags WHERE tag = ")
                .push_bind(tag.clone())
                .push(")");
        }
        query
            .push(" ORDER BY n.created_at DESC, n.id DESC LIMIT ")
            .push_bind(search.limit as i64);
        let rows = query.build().fetch_all(&self.readers).await?;
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
            "SELECT n.id, n.kind, n.conversation_id, n.event_id, n.from_id, n.from_role, \
             n.from_name, n.created_at, n.read_at, e.visibility = 'supervisors' AS supervisors_only, \
             c.inbox_id \
             FROM notifications n JOIN events e ON e.id = n.event_id \
             JOIN conversations c ON c.id = n.conversation_id \
             WHERE n.user_id = ? AND n.created_at >= ? AND n.id > ? ORDER BY n.id LIMIT ?",
        )
        .bind(user.as_str())
        .bind(to_micros(since))
        .bind(sql_int(after))
        .bind(limit as i64)
        .fetch_all(&self.readers)
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
        let mut query = QueryBuilder::new(
            "SELECT id, kind, conversation_id, event_id, from_id, from_role, from_name, \
             created_at, read_at FROM notifications WHERE",
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
        let rows = query.build().fetch_all(&self.readers).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn unread_notifications(
        &self,
        reader: &NotificationReader<'_>,
    ) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new("SELECT COUNT(*) FROM notifications WHERE");
        if !push_reader(&mut query, reader) {
            return Ok(0);
        }
        query.push(" AND read_at IS NULL");
        let row = query.build().fetch_one(&self.readers).await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    async fn mark_notifications_read(
        &self,
        reader: &NotificationReader<'_>,
        which: &MarkRead,
    ) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new("UPDATE notifications SET read_at = ");
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
                query.push(" AND id IN (");
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(sql_int(*id));
                }
                query.push(")");
            }
        }
        let done = query.build().execute(&self.writer).await?;
        Ok(done.rows_affected())
    }

    async fn audit_rows(&self, conversation: ConversationId) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ? ORDER BY supervisor_seq"
        ))
        .bind(conversation.to_string())
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(audit_row_from_row).collect()
    }

    async fn last_hash(&self, conversation: ConversationId) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT last_hash FROM conversations WHERE id = ?")
            .bind(conversation.to_string())
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|r| r.try_get("last_hash")).transpose()?)
    }

    async fn audit_snapshot(
        &self,
        conversation: ConversationId,
    ) -> Result<AuditSnapshot, StoreError> {
        // One read transaction: in WAL mode its snapshot is taken at the first read and
        // holds for the second, whatever commits meanwhile.
        let mut tx = self.readers.begin().await?;
        let head = sqlx::query("SELECT last_hash, supervisor_seq FROM conversations WHERE id = ?")
            .bind(conversation.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ? ORDER BY supervisor_seq"
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
            "SELECT DISTINCT conversation_id FROM events \
             WHERE conversation_id NOT IN (SELECT id FROM conversations) ORDER BY 1",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn conversation_ids(&self) -> Result<Vec<ConversationId>, StoreError> {
        let rows = sqlx::query("SELECT id FROM conversations ORDER BY created_at, id")
            .fetch_all(&self.readers)
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
            .fetch_one(&self.readers)
            .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn close(&self) {
        self.append.close().await;
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// Appends ` AND {column} IN (...)` binding `inboxes`; false if the list is empty, when
/// nothing can match (and `IN ()` is not SQL).
/// Pushes the rows of `notifications` the reader may see (`NotificationReader`): theirs,
/// not of a supervisors-only event unless they may read those, in their inboxes. False
/// when they may see none (no inbox at all).
fn push_reader(
    query: &mut QueryBuilder<'_, sqlx::Sqlite>,
    reader: &NotificationReader<'_>,
) -> bool {
    query
        .push(" user_id = ")
        .push_bind(reader.user.as_str().to_owned());
    if !reader.supervisors {
        query.push(
            " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = notifications.event_id \
             AND e.visibility = 'supervisors')",
        );
    }
    if let Some(inboxes) = reader.inboxes {
        // A lookup of each notification's own conversation by its key. `conversation_id
        // IN (SELECT id FROM conversations WHERE inbox_id IN ...)` made SQLite list every
        // conversation those inboxes ever held first, at each count and each mark-read,
        // the latter holding the database's one write lock while appends waited.
        query.push(
            " AND EXISTS (SELECT 1 FROM conversations c \
             WHERE c.id = notifications.conversation_id",
        );
        if !push_inboxes(query, "c.inbox_id", inboxes) {
            return false;
        }
        query.push(")");
    }
    true
}

fn push_inboxes(
    query: &mut QueryBuilder<'_, sqlx::Sqlite>,
    column: &str,
    inboxes: &[InboxId],
) -> bool {
    if inboxes.is_empty() {
        return false;
    }
    query.push(format!(" AND {column} IN ("));
    let mut list = query.separated(", ");
    for inbox in inboxes {
        list.push_bind(inbox.as_str().to_owned());
    }
    query.push(")");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification reader narrowed to inboxes looks up each notification's own
    /// conversation by its key: it never lists the inboxes' conversations first, work
    /// that grows with every conversation they ever held and that `read_notifications`
    /// would do holding the database's one write lock.
    #[tokio::test]
    async fn a_reader_scoped_to_inboxes_looks_up_each_conversation_by_key() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let user = UserId::from("frank");
        let inboxes = [InboxId::from("support"), InboxId::from("billing")];
        let reader = NotificationReader {
            user: &user,
            supervisors: false,
            inboxes: Some(&inboxes),
        };
        for head in [
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM notifications WHERE",
            "EXPLAIN QUERY PLAN UPDATE notifications SET read_at = 1 WHERE",
        ] {
            let mut query = QueryBuilder::new(head);
            assert!(push_reader(&mut query, &reader));
            let plan: Vec<String> = query
                .build()
                .fetch_all(&store.readers)
                .await
                .expect("plan")
                .iter()
                .map(|row| row.try_get::<String, _>("detail").expect("detail"))
                .collect();
            assert!(
                plan.iter().any(|step| step.starts_with("SEARCH c USING")
                    && (step.contains("(id=?)") || step.contains("PRIMARY KEY"))),
                "{head}: the conversation looked up by its key: {plan:?}"
            );
            assert!(
                !plan
                    .iter()
                    .any(|step| step.contains("LIST SUBQUERY") || step.starts_with("SCAN c")),
                "{head}: no list of the inboxes' conversations: {plan:?}"
            );
        }
    }
}
