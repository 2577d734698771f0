//! The embedded store: SQLite in the data directory, WAL mode, `synchronous=FULL`.
//!
//! One connection writes (SQLite has one writer anyway, and a single connection means the
//! writer never waits on a lock another writer holds); a small pool reads, concurrently
//! with the writer thanks to WAL. `synchronous=FULL` makes a commit survive a power loss,
//! not only a killed process: an `ok` with a `seq` promises exactly that. The writer task
//! group-commits, so one fsync serves every append waiting at that moment.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, EventView, InboxId, Role, UserId,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqliteConnection};

use super::chain::{self, CanonicalEvent};
use super::{
    from_micros, to_micros, ConversationFilter, ConversationRecord, DirectoryEntry, Event, Heads,
    NewConversation, NewEvent, Seqs, Store, StoreError, WriteOutcome, WriteRefusal, WriteRequest,
};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "backchannel.sqlite3";

const EVENT_COLUMNS: &str = "id, conversation_id, supervisor_seq, agent_seq, public_seq, \
     kind, visibility, actor_id, actor_role, actor_name, client_id, payload, created_at, hash";

const CONVERSATION_COLUMNS: &str = "id, inbox_id, contact_id, subject, status, assignee_id, \
     public_seq, agent_seq, supervisor_seq, created_at, last_activity_at, last_public_at";

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to
    /// date.
    pub async fn open(data_dir: &Path) -> Result<Arc<Self>, StoreError> {
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
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Arc::new(SqliteStore { writer, readers }))
    }

    async fn apply(
        conn: &mut SqliteConnection,
        request: &WriteRequest,
    ) -> Result<Result<WriteOutcome, WriteRefusal>, StoreError> {
        match request {
            WriteRequest::Append(event) => Self::append(conn, event).await,
            WriteRequest::Open(conversation) => Self::open_conversation(conn, conversation).await,
        }
    }

    async fn open_conversation(
        conn: &mut SqliteConnection,
        new: &NewConversation,
    ) -> Result<Result<WriteOutcome, WriteRefusal>, StoreError> {
        let inbox = sqlx::query("SELECT 1 FROM inboxes WHERE id = ?")
            .bind(new.inbox_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if inbox.is_none() {
            return Ok(Err(WriteRefusal::InboxNotFound));
        }
        let at = to_micros(new.opened.at);
        sqlx::query(
            "INSERT INTO conversations (id, inbox_id, contact_id, subject, last_hash, \
             created_at, last_activity_at, last_public_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(new.id.to_string())
        .bind(new.inbox_id.as_str())
        .bind(new.contact_id.as_ref().map(|c| c.as_str()))
        .bind(new.subject.as_deref())
        .bind(&chain::GENESIS[..])
        .bind(at)
        .bind(at)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        Self::append(conn, &new.opened).await
    }

    async fn append(
        conn: &mut SqliteConnection,
        new: &NewEvent,
    ) -> Result<Result<WriteOutcome, WriteRefusal>, StoreError> {
        if let Some(client_id) = &new.client_id {
            let existing = sqlx::query(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE actor_id = ? AND client_id = ?"
            ))
            .bind(new.actor.id.as_str())
            .bind(client_id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = existing {
                return Ok(Ok(WriteOutcome::Duplicate(Arc::new(event_from_row(&row)?))));
            }
        }
        let Some(row) = sqlx::query(
            "SELECT public_seq, agent_seq, supervisor_seq, last_hash FROM conversations \
             WHERE id = ?",
        )
        .bind(new.conversation_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(Err(WriteRefusal::ConversationNotFound));
        };
        let heads = Heads {
            public: get_u64(&row, "public_seq")?,
            agent: get_u64(&row, "agent_seq")?,
            supervisor: get_u64(&row, "supervisor_seq")?,
        };
        let previous: Vec<u8> = row.try_get("last_hash")?;
        let previous: [u8; 32] = previous
            .try_into()
            .map_err(|_| StoreError::Corrupt("last_hash is not 32 bytes".into()))?;

        let visibility = new.data.visibility();
        let seqs = Seqs {
            supervisor: heads.supervisor + 1,
            agent: visibility
                .visible_to(Audience::Agents)
                .then_some(heads.agent + 1),
            public: visibility
                .visible_to(Audience::Customer)
                .then_some(heads.public + 1),
        };
        let payload = serde_json::to_string(&new.data)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode payload: {e}")))?;
        let at = to_micros(new.at);
        let hash = chain::link(
            &previous,
            &CanonicalEvent {
                id: new.id.0.as_bytes(),
                conversation_id: new.conversation_id.0.as_bytes(),
                supervisor_seq: seqs.supervisor,
                agent_seq: seqs.agent,
                public_seq: seqs.public,
                kind: new.data.kind(),
                visibility: visibility.as_str(),
                actor_id: new.actor.id.as_str(),
                actor_role: new.actor.role.as_str(),
                actor_name: new.actor.name.as_deref(),
                client_id: new.client_id.as_deref(),
                payload: &payload,
                created_at_micros: at,
            },
        );
        sqlx::query(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(new.id.to_string())
        .bind(new.conversation_id.to_string())
        .bind(seqs.supervisor as i64)
        .bind(seqs.agent.map(|s| s as i64))
        .bind(seqs.public.map(|s| s as i64))
        .bind(new.data.kind())
        .bind(visibility.as_str())
        .bind(new.actor.id.as_str())
        .bind(new.actor.role.as_str())
        .bind(new.actor.name.as_deref())
        .bind(new.client_id.as_deref())
        .bind(&payload)
        .bind(at)
        .bind(&hash[..])
        .execute(&mut *conn)
        .await?;
        let after = heads.after(&seqs);
        sqlx::query(
            "UPDATE conversations SET public_seq = ?, agent_seq = ?, supervisor_seq = ?, \
             last_hash = ?, last_activity_at = ?, \
             last_public_at = CASE WHEN ? THEN ? ELSE last_public_at END WHERE id = ?",
        )
        .bind(after.public as i64)
        .bind(after.agent as i64)
        .bind(after.supervisor as i64)
        .bind(&hash[..])
        .bind(at)
        .bind(seqs.public.is_some())
        .bind(at)
        .bind(new.conversation_id.to_string())
        .execute(&mut *conn)
        .await?;
        Ok(Ok(WriteOutcome::Stored(Arc::new(Event {
            conversation_id: new.conversation_id,
            seqs,
            view: EventView {
                id: new.id,
                at: new.at,
                actor: new.actor.clone(),
                data: new.data.clone(),
            },
            client_id: new.client_id.clone(),
            hash,
        }))))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write_batch(
        &self,
        batch: &[WriteRequest],
    ) -> Result<Vec<Result<WriteOutcome, WriteRefusal>>, StoreError> {
        let mut conn = self.writer.acquire().await?;
        // IMMEDIATE takes the write lock up front, so the transaction cannot fail later on
        // a lock upgrade.
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            match Self::apply(&mut conn, request).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e.into());
        }
        Ok(outcomes)
    }

    async fn events_after(
        &self,
        conversation: ConversationId,
        audience: Audience,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let column = match audience {
            Audience::Customer => "public_seq",
            Audience::Agents => "agent_seq",
            Audience::Supervisors => "supervisor_seq",
        };
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE conversation_id = ? \
             AND {column} IS NOT NULL AND {column} > ? ORDER BY {column} LIMIT ?"
        ))
        .bind(conversation.to_string())
        .bind(after as i64)
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

    async fn conversations(
        &self,
        filter: &ConversationFilter,
    ) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut query = QueryBuilder::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE 1 = 1"
        ));
        if let Some(inboxes) = &filter.inboxes {
            if inboxes.is_empty() {
                return Ok(Vec::new());
            }
            query.push(" AND inbox_id IN (");
            let mut list = query.separated(", ");
            for inbox in inboxes {
                list.push_bind(inbox.as_str().to_owned());
            }
            query.push(")");
        }
        if let Some(contact) = &filter.contact_id {
            query
                .push(" AND contact_id = ")
                .push_bind(contact.as_str().to_owned());
        }
        if let Some(status) = &filter.status {
            query.push(" AND status = ").push_bind(status.clone());
        }
        if let Some(assignee) = &filter.assignee_id {
            query
                .push(" AND assignee_id = ")
                .push_bind(assignee.as_str().to_owned());
        }
        query
            .push(" ORDER BY last_activity_at DESC LIMIT ")
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
        sqlx::query(
            "INSERT INTO users (id, role, name, handle, teams, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
             name = excluded.name, handle = excluded.handle, teams = excluded.teams, \
             updated_at = excluded.updated_at",
        )
        .bind(entry.id.as_str())
        .bind(entry.role.as_str())
        .bind(entry.name.as_deref())
        .bind(&entry.handle)
        .bind(teams)
        .bind(to_micros(super::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

fn get_u64(row: &SqliteRow, column: &str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {column}")))
}

fn get_opt_u64(row: &SqliteRow, column: &str) -> Result<Option<u64>, StoreError> {
    let value: Option<i64> = row.try_get(column)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {column}"))))
        .transpose()
}

fn get_time(row: &SqliteRow, column: &str) -> Result<time::OffsetDateTime, StoreError> {
    let micros: i64 = row.try_get(column)?;
    from_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("{column} out of range")))
}

fn parse_uuid(text: &str, what: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    let id: String = row.try_get("id")?;
    let conversation_id: String = row.try_get("conversation_id")?;
    let role: String = row.try_get("actor_role")?;
    let payload: String = row.try_get("payload")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    let data: EventData = serde_json::from_str(&payload)
        .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?;
    Ok(Event {
        conversation_id: ConversationId(parse_uuid(&conversation_id, "conversation id")?),
        seqs: Seqs {
            supervisor: get_u64(row, "supervisor_seq")?,
            agent: get_opt_u64(row, "agent_seq")?,
            public: get_opt_u64(row, "public_seq")?,
        },
        view: EventView {
            id: EventId(parse_uuid(&id, "event id")?),
            at: get_time(row, "created_at")?,
            actor: Actor {
                id: UserId(row.try_get("actor_id")?),
                role: Role::from_str(&role).map_err(StoreError::Corrupt)?,
                name: row.try_get("actor_name")?,
            },
            data,
        },
        client_id: row.try_get("client_id")?,
        hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("event hash is not 32 bytes".into()))?,
    })
}

fn conversation_from_row(row: &SqliteRow) -> Result<ConversationRecord, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(ConversationRecord {
        id: ConversationId(parse_uuid(&id, "conversation id")?),
        inbox_id: InboxId(row.try_get("inbox_id")?),
        contact_id: row.try_get::<Option<String>, _>("contact_id")?.map(UserId),
        subject: row.try_get("subject")?,
        status: row.try_get("status")?,
        assignee_id: row.try_get::<Option<String>, _>("assignee_id")?.map(UserId),
        created_at: get_time(row, "created_at")?,
        last_activity_at: get_time(row, "last_activity_at")?,
        last_public_at: get_time(row, "last_public_at")?,
        heads: Heads {
            public: get_u64(row, "public_seq")?,
            agent: get_u64(row, "agent_seq")?,
            supervisor: get_u64(row, "supervisor_seq")?,
        },
    })
}
