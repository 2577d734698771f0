//! JSON bodies of the HTTP API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::EventView;
use crate::ids::{ConversationId, InboxId, UserId};
use crate::server::ErrorCode;

/// `{"error": {"code", "message"}}`, the body of every HTTP error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
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
