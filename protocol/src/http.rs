//! JSON bodies of the HTTP API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::{Actor, EventView, FieldTarget, NoteAudience, NoteType, Visibility};
use crate::ids::{ConversationId, EventId, InboxId, TeamId, UserId};
use crate::server::{ErrorCode, Notification};

/// `{"error": {"code", "message"}}`, the body of every HTTP error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// With `conflict` from the reply guard: the events the sender had not seen, as the
    /// socket's `error` frame carries them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<Vec<HistoryEntry>>,
}

/// `POST /v1/conversations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenConversation {
    pub inbox_id: InboxId,
    #[serde(default)]
    pub subject: Option<String>,
    /// Agents open conversations on behalf of a contact; a customer's contact is themself.
    #[serde(default)]
    pub contact_id: Option<UserId>,
    /// Conversation fields set with the opening, in the same commit (staff only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, serde_json::Value>>,
}

/// `PUT /v1/inboxes/{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutInbox {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inbox {
    pub id: InboxId,
    pub name: String,
}

/// A conversation as agents, supervisors and admins see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StaffConversation {
    pub id: ConversationId,
    pub inbox_id: InboxId,
    #[serde(default)]
    pub contact_id: Option<UserId>,
    #[serde(default)]
    pub subject: Option<String>,
    pub status: String,
    #[serde(default)]
    pub assignee_id: Option<UserId>,
    #[serde(default)]
    pub team_id: Option<TeamId>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Custom field values of the conversation.
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
    /// Pinned notes of this conversation and pinned `context` notes of its contact
    /// (single-conversation view only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned_notes: Vec<PinnedNote>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Moves with every event, notes included.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Last `seq` of the caller's stream.
    pub head: u64,
}

/// A conversation as its customer sees it: nothing internal, and a timestamp that moves
/// only with public events, so it does not betray a note.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CustomerConversation {
    pub id: ConversationId,
    pub inbox_id: InboxId,
    #[serde(default)]
    pub subject: Option<String>,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Last `seq` of the public stream.
    pub head: u64,
}

/// One entry of a history page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    pub event: EventView,
}

/// `GET /v1/conversations/{id}/events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryPage {
    pub conversation_id: ConversationId,
    pub events: Vec<HistoryEntry>,
    /// Last `seq` of the caller's stream; page on with `after` = the last entry's seq.
    pub head: u64,
}

/// A pinned note, with its current text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedNote {
    pub note_id: EventId,
    pub conversation_id: ConversationId,
    pub note_type: NoteType,
    pub audience: NoteAudience,
    pub author: Actor,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// `GET /v1/contacts/{id}` (staff).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Contact {
    pub id: UserId,
    pub fields: BTreeMap<String, serde_json::Value>,
    pub pinned_notes: Vec<PinnedNote>,
    pub conversations: Vec<ConversationId>,
}

/// `PUT /v1/tags/{name}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTag {
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagDefinition {
    pub name: String,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `PUT /v1/teams/{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTeam {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: TeamId,
    pub name: String,
}

/// The type of a custom field, which decides what values it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A string.
    Text,
    /// A JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// One of the definition's `options`.
    List,
    /// An `http://` or `https://` URL.
    Link,
}

/// `PUT /v1/fields/{key}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutField {
    #[serde(rename = "type")]
    pub field_type: FieldType,
    pub applies_to: FieldTarget,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDefinition {
    pub key: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    pub applies_to: FieldTarget,
    pub label: String,
    pub required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// `GET /v1/notifications`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotificationsPage {
    pub notifications: Vec<Notification>,
    pub unread: u64,
}

/// One hit of `GET /v1/search/notes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchHit {
    pub conversation_id: ConversationId,
    pub note_id: EventId,
    pub note_type: NoteType,
    pub audience: NoteAudience,
    pub author: Actor,
    /// The note's current text.
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchPage {
    pub results: Vec<SearchHit>,
}

/// One event of `GET /v1/conversations/{id}/audit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub visibility: Visibility,
    pub event: EventView,
    /// Hex SHA-256 of the previous hash and this event's canonical bytes.
    pub hash: String,
}

/// Where a chain stops verifying.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainBreak {
    pub seq: u64,
    #[serde(default)]
    pub event_id: Option<String>,
    pub reason: String,
}

/// `GET /v1/conversations/{id}/audit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditReport {
    pub conversation_id: ConversationId,
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_break: Option<ChainBreak>,
    pub events: Vec<AuditEntry>,
}
