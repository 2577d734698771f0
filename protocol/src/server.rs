//! Frames the server sends over the WebSocket, error codes and close codes.
//!
//! Frames are built by the server as borrowed views and serialized once per audience;
//! these types only fix their shape.

use serde::{Deserialize, Serialize};

use time::OffsetDateTime;

use crate::client::{Ref, TypingAudience};
use crate::event::{Actor, EventView};
use crate::http::HistoryEntry;
use crate::ids::{ConversationId, EventId, Role, UserId};

/// The `code` of an `error` frame or HTTP error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The HTTP status that goes with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// WebSocket close codes the server uses.
pub mod close_code {
    /// The server is shutting down; reconnect (to another node) and resume with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (RFC 6455: reserved bits, an unknown
    /// opcode, a fragmented or oversized control frame, an unmasked frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame was larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The socket was silent for two heartbeat intervals.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    /// No valid `hello` in time, or the token was refused.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The client stopped reading and its send queue filled up; resume with `since`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The user has as many sockets open on this node as it allows; retry later.
    pub const TOO_MANY_SOCKETS: u16 = 4029;
}

/// `user` in `welcome`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionUser {
    pub id: UserId,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Every frame the server sends, tagged by `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a, R: Serialize = serde_json::Value> {
    Welcome {
        /// The `hello`'s `ref`, if it had one: every frame with a `ref` gets one answer
        /// carrying it.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        session_id: &'a str,
        user: &'a SessionUser,
        heartbeat_ms: u64,
    },
    /// The answer to a command that carried a `ref`.
    Ok {
        #[serde(rename = "ref")]
        reference: &'a Ref,
        #[serde(flatten)]
        result: &'a R,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        code: ErrorCode,
        message: &'a str,
        /// With `conflict` from the reply guard: the events the sender had not seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        missed: Option<&'a [HistoryEntry]>,
    },
    Notification {
        #[serde(flatten)]
        notification: &'a Notification,
    },
    /// Who is viewing (and typing in) a conversation. Staff only.
    Presence {
        conversation_id: ConversationId,
        viewers: &'a [Viewer],
    },
    /// The answer to `watch_agents`: every staff member with their presence.
    Agents {
        agents: &'a [AgentPresence],
    },
    /// One staff member's presence changed.
    AgentPresence {
        #[serde(flatten)]
        agent: &'a AgentPresence,
    },
    Event {
        conversation_id: ConversationId,
        seq: u64,
        event: &'a EventView,
    },
    Typing {
        conversation_id: ConversationId,
        user: &'a Actor,
        audience: TypingAudience,
    },
    Pong,
}

/// The result of `subscribe`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscribeResult {
    pub conversation_id: ConversationId,
    /// The last `seq` of the caller's stream when the subscription went live.
    pub head: u64,
    /// More events than the replay limit followed `since`: only the newest were replayed
    /// (from `replay_from`); page the older ones over HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<u64>,
    /// `since` was beyond the stream's head: drop what you hold; the replay starts at 1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

/// The result of `send` and `note`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppendResult {
    pub event_id: crate::ids::EventId,
    /// The event's `seq` in the caller's stream.
    pub seq: u64,
    /// True when this `client_id` had been stored before: nothing new was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// For `note`: the users notified by a mention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentioned: Option<Vec<UserId>>,
}

/// Why someone was notified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Mention,
    Assigned,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Mention => "mention",
            NotificationKind::Assigned => "assigned",
        }
    }
}

/// A mention or assignment addressed to one user: a `notification` frame, and a row of
/// `GET /v1/notifications`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    pub kind: NotificationKind,
    pub conversation_id: ConversationId,
    pub event_id: EventId,
    pub from: Actor,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(default)]
    pub read: bool,
}

/// The result of `read_notifications`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadResult {
    /// Notifications newly marked read.
    pub marked: u64,
    /// Unread notifications left.
    pub unread: u64,
}

/// Someone subscribed to a conversation, as its `presence` frame lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Viewer {
    pub id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    /// Writing right now (within the last few seconds).
    pub typing: bool,
    /// What they are writing: `public` (a reply) or `internal` (a note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typing_audience: Option<TypingAudience>,
}

/// A staff member's availability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Offline,
    /// Connected, but no activity for a while.
    Away,
    Online,
}

/// One staff member in `agents` and `agent_presence` frames and `GET /v1/agents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPresence {
    pub id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    pub status: AgentStatus,
    /// Conversations they have open, on any node.
    pub viewing: Vec<ConversationId>,
    /// Conversations assigned to them and not resolved.
    pub open_conversations: u64,
}
