//! Reading stored rows back into the store's types, once for both engines.
//!
//! Both schemas name their columns alike (PostgreSQL casts uuids and JSON to text in its
//! SELECT lists), so the decoders are written against [`Columns`], a handful of typed
//! getters implemented for SQLite's and PostgreSQL's rows.

use std::str::FromStr;

use backchannel_protocol::http::{FieldDefinition, TagDefinition, Team};
use backchannel_protocol::server::Notification;
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, EventView, InboxId, Role, TeamId, UserId,
};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{
    from_micros, AuditRow, ConversationRecord, DirectoryEntry, Event, Heads, NoteRecord, Seqs,
    StoreError,
};

/// Typed column getters; a missing column or a wrong type is a [`StoreError`].
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
    fn boolean(&self, column: &str) -> Result<bool, StoreError>;
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn boolean(&self, column: &str) -> Result<bool, StoreError> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

columns_for!(SqliteRow);
columns_for!(PgRow);

/// SQLite's append thread reads rows through rusqlite (`sqlite_append.rs`).
impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.get(column)?)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(column)?)
    }
    fn boolean(&self, column: &str) -> Result<bool, StoreError> {
        Ok(self.get(column)?)
    }
}

/// The column holding each audience's `seq`.
pub(crate) fn seq_column(audience: Audience) -> &'static str {
    match audience {
        Audience::Customer => "public_seq",
        Audience::Agents => "agent_seq",
        Audience::Supervisors => "supervisor_seq",
    }
}

/// How to read `audience`'s stream past the `seq` bound as parameter `after` (`?2`,
/// `$2`): the condition and the column to order by.
///
/// The agents' stream has no index of its own: each append would pay for one more index
/// page scattered by conversation (measured: 11.3k -> 14.5k appends/s on SQLite without
/// it). It is read through the supervisors' index instead, which orders it the same way,
/// starting at the supervisor seq it cannot be below (every stream is a subsequence of
/// the supervisors', so an event's agent seq never exceeds its supervisor seq). The scan
/// passes over only the supervisors-only events in between.
pub(crate) fn stream_after(audience: Audience, after: &str) -> (String, &'static str) {
    match audience {
        Audience::Agents => (
            format!("agent_seq IS NOT NULL AND supervisor_seq > {after} AND agent_seq > {after}"),
            "supervisor_seq",
        ),
        other => {
            let column = seq_column(other);
            (
                format!("{column} IS NOT NULL AND {column} > {after}"),
                column,
            )
        }
    }
}

/// A client's number (a `seq` bound, a notification id) as SQL's signed 64-bit integer.
/// No stored seq or id reaches `i64::MAX`, so a larger value becomes `i64::MAX` and a
/// comparison keeps its meaning: `after` past every seq reads nothing, `up_to` past every
/// id marks all. (A cast would wrap it negative and turn both around.)
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The snake_case name serde gives a unit enum variant.
pub(crate) fn enum_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(StoreError::Corrupt(
            "enum does not encode as a string".into(),
        )),
    }
}

pub(crate) fn enum_from_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| StoreError::Corrupt(format!("unknown value `{text}`: {e}")))
}

pub(crate) fn get_u64(row: &impl Columns, column: &str) -> Result<u64, StoreError> {
    u64::try_from(row.int(column)?).map_err(|_| StoreError::Corrupt(format!("negative {column}")))
}

fn get_opt_u64(row: &impl Columns, column: &str) -> Result<Option<u64>, StoreError> {
    row.opt_int(column)?
        .map(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {column}"))))
        .transpose()
}

fn get_time(row: &impl Columns, column: &str) -> Result<time::OffsetDateTime, StoreError> {
    from_micros(row.int(column)?)
        .ok_or_else(|| StoreError::Corrupt(format!("{column} out of range")))
}

pub(crate) fn parse_uuid(text: &str, what: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn role(row: &impl Columns, column: &str) -> Result<Role, StoreError> {
    Role::from_str(&row.text(column)?).map_err(StoreError::Corrupt)
}

fn json<T: serde::de::DeserializeOwned>(row: &impl Columns, column: &str) -> Result<T, StoreError> {
    serde_json::from_str(&row.text(column)?)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn event_from_row(row: &impl Columns) -> Result<Event, StoreError> {
    let data: EventData = json(row, "payload")?;
    Ok(Event {
        conversation_id: ConversationId(parse_uuid(
            &row.text("conversation_id")?,
            "conversation id",
        )?),
        seqs: Seqs {
            supervisor: get_u64(row, "supervisor_seq")?,
            agent: get_opt_u64(row, "agent_seq")?,
            public: get_opt_u64(row, "public_seq")?,
        },
        view: EventView {
            id: EventId(parse_uuid(&row.text("id")?, "event id")?),
            at: get_time(row, "created_at")?,
            actor: Actor {
                id: UserId(row.text("actor_id")?),
                role: role(row, "actor_role")?,
                name: row.opt_text("actor_name")?,
            },
            data,
        },
        client_id: row.opt_text("client_id")?,
        hash: row
            .bytes("hash")?
            .try_into()
            .map_err(|_| StoreError::Corrupt("event hash is not 32 bytes".into()))?,
        // Made on first use: a payload stored by an older build may not be `data` as this
        // one serializes it.
        view_json: Default::default(),
    })
}

pub(crate) fn conversation_from_row(row: &impl Columns) -> Result<ConversationRecord, StoreError> {
    Ok(ConversationRecord {
        id: ConversationId(parse_uuid(&row.text("id")?, "conversation id")?),
        inbox_id: InboxId(row.text("inbox_id")?),
        contact_id: row.opt_text("contact_id")?.map(UserId),
        subject: row.opt_text("subject")?,
        status: row.text("status")?,
        assignee_id: row.opt_text("assignee_id")?.map(UserId),
        team_id: row.opt_text("team_id")?.map(TeamId),
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

pub(crate) fn directory_from_row(row: &impl Columns) -> Result<DirectoryEntry, StoreError> {
    Ok(DirectoryEntry {
        id: UserId(row.text("id")?),
        role: role(row, "role")?,
        name: row.opt_text("name")?,
        handle: row.text("handle")?,
        teams: json(row, "teams")?,
        inboxes: json(row, "inboxes")?,
    })
}

pub(crate) fn note_from_row(row: &impl Columns) -> Result<NoteRecord, StoreError> {
    Ok(NoteRecord {
        id: EventId(parse_uuid(&row.text("id")?, "note id")?),
        conversation_id: ConversationId(parse_uuid(
            &row.text("conversation_id")?,
            "conversation id",
        )?),
        contact_id: row.opt_text("contact_id")?.map(UserId),
        author: Actor {
            id: UserId(row.text("author_id")?),
            role: role(row, "author_role")?,
            name: row.opt_text("author_name")?,
        },
        note_type: enum_from_text(&row.text("note_type")?)?,
        audience: enum_from_text(&row.text("audience")?)?,
        body: row.text("body")?,
        at: get_time(row, "created_at")?,
        pinned: row.boolean("pinned")?,
    })
}

pub(crate) fn notification_from_row(row: &impl Columns) -> Result<Notification, StoreError> {
    Ok(Notification {
        id: get_u64(row, "id")?,
        kind: enum_from_text(&row.text("kind")?)?,
        conversation_id: ConversationId(parse_uuid(
            &row.text("conversation_id")?,
            "conversation id",
        )?),
        event_id: EventId(parse_uuid(&row.text("event_id")?, "event id")?),
        from: Actor {
            id: UserId(row.text("from_id")?),
            role: role(row, "from_role")?,
            name: row.opt_text("from_name")?,
        },
        at: get_time(row, "created_at")?,
        read: row.opt_int("read_at")?.is_some(),
    })
}

pub(crate) fn team_from_row(row: &impl Columns) -> Result<Team, StoreError> {
    Ok(Team {
        id: TeamId(row.text("id")?),
        name: row.text("name")?,
    })
}

pub(crate) fn tag_from_row(row: &impl Columns) -> Result<TagDefinition, StoreError> {
    Ok(TagDefinition {
        name: row.text("name")?,
        color: row.opt_text("color")?,
        description: row.opt_text("description")?,
    })
}

pub(crate) fn field_from_row(row: &impl Columns) -> Result<FieldDefinition, StoreError> {
    Ok(FieldDefinition {
        key: row.text("key")?,
        field_type: enum_from_text(&row.text("type")?)?,
        applies_to: enum_from_text(&row.text("applies_to")?)?,
        label: row.text("label")?,
        required: row.boolean("required")?,
        options: json(row, "options")?,
    })
}

/// An event's columns exactly as stored, for the audit chain.
pub(crate) fn audit_row_from_row(row: &impl Columns) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        id: row.text("id")?,
        conversation_id: row.text("conversation_id")?,
        supervisor_seq: row.int("supervisor_seq")?,
        agent_seq: row.opt_int("agent_seq")?,
        public_seq: row.opt_int("public_seq")?,
        kind: row.text("kind")?,
        visibility: row.text("visibility")?,
        actor_id: row.text("actor_id")?,
        actor_role: row.text("actor_role")?,
        actor_name: row.opt_text("actor_name")?,
        client_id: row.opt_text("client_id")?,
        payload: row.text("payload")?,
        created_at: row.int("created_at")?,
        hash: row.bytes("hash")?,
    })
}
