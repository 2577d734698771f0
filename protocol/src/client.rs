//! Frames a client sends over the WebSocket.
//!
//! Decoding is done in two steps so that a malformed command can still be answered under
//! its `ref`: [`FrameHead`] reads only `type` and `ref` (and accepts anything else), then
//! [`ClientFrame`] reads the whole command. Unknown fields are ignored, so clients may
//! send fields a newer server understands.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::event::{FieldTarget, NoteAudience, NoteType, Status};
use crate::ids::{ConversationId, EventId, TeamId, UserId};

/// A client's correlation id: any string or number, echoed in the one answer to its frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Number(serde_json::Number),
    String(String),
}

/// The envelope every client frame shares. Both fields are read as any JSON value, so
/// that a frame whose `type` is mistyped can still be answered under its `ref`.
#[derive(Debug, Default, Deserialize)]
pub struct FrameHead {
    #[serde(rename = "type", default)]
    pub kind: Option<serde_json::Value>,
    #[serde(rename = "ref", default)]
    pub reference: Option<serde_json::Value>,
}

impl FrameHead {
    /// The `ref`, if it is a string or a number.
    pub fn reference(&self) -> Option<Ref> {
        match self.reference.as_ref()? {
            serde_json::Value::Number(n) => Some(Ref::Number(n.clone())),
            serde_json::Value::String(s) => Some(Ref::String(s.clone())),
            _ => None,
        }
    }

    /// The `type`, if it is a string.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_ref()?.as_str()
    }
}

/// Which side of the conversation a typing indicator is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingAudience {
    /// Writing a reply the customer will see; the customer sees the indicator too.
    Public,
    /// Writing an internal note; only the team sees the indicator.
    Internal,
}

/// Every command a client can send, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        token: String,
    },
    Subscribe {
        conversation_id: ConversationId,
        #[serde(default)]
        since: Option<u64>,
    },
    Unsubscribe {
        conversation_id: ConversationId,
    },
    Send {
        conversation_id: ConversationId,
        client_id: String,
        body: String,
        /// Reply guard: the last `seq` the sender has seen. If a message or note by
        /// someone else arrived after it, the send is refused with `conflict`.
        #[serde(default)]
        based_on_seq: Option<u64>,
    },
    Note {
        conversation_id: ConversationId,
        client_id: String,
        body: String,
        #[serde(default)]
        note_type: Option<NoteType>,
        #[serde(default)]
        audience: Option<NoteAudience>,
    },
    EditNote {
        conversation_id: ConversationId,
        note_id: EventId,
        body: String,
    },
    PinNote {
        conversation_id: ConversationId,
        note_id: EventId,
        #[serde(default = "yes")]
        pinned: bool,
    },
    Typing {
        conversation_id: ConversationId,
        audience: TypingAudience,
    },
    /// Sets the assignee and team (absent: none) and writes an optional handoff note.
    Assign {
        conversation_id: ConversationId,
        #[serde(default)]
        assignee_id: Option<UserId>,
        #[serde(default)]
        team_id: Option<TeamId>,
        #[serde(default)]
        note: Option<String>,
    },
    SetStatus {
        conversation_id: ConversationId,
        status: Status,
    },
    Tag {
        conversation_id: ConversationId,
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    SetFields {
        target: FieldTarget,
        id: String,
        fields: BTreeMap<String, serde_json::Value>,
    },
    /// Supervisors and admins: an `agents` snapshot, then `agent_presence` changes.
    WatchAgents,
    UnwatchAgents,
    ReadNotifications {
        #[serde(default)]
        ids: Option<Vec<u64>>,
        #[serde(default)]
        up_to: Option<u64>,
    },
    Ping,
}

fn yes() -> bool {
    true
}

/// The `type` values a client may send, for error messages.
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "hello",
    "subscribe",
    "unsubscribe",
    "send",
    "note",
    "edit_note",
    "pin_note",
    "typing",
    "assign",
    "set_status",
    "tag",
    "set_fields",
    "read_notifications",
    "watch_agents",
    "unwatch_agents",
    "ping",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_reads_ref_even_when_the_command_is_malformed() {
        let text = r#"{"type":"send","ref":7,"conversation_id":42}"#;
        let head: FrameHead = serde_json::from_str(text).expect("head parses");
        assert_eq!(head.reference(), Some(Ref::Number(7.into())));
        let head: FrameHead = serde_json::from_str(r#"{"type":42,"ref":"m"}"#).expect("parses");
        assert_eq!(head.reference(), Some(Ref::String("m".into())));
        assert_eq!(head.kind(), None);
        assert!(serde_json::from_str::<ClientFrame>(text).is_err());
    }

    #[test]
    fn note_defaults_leave_type_and_audience_unset() {
        let text = r#"{"type":"note","conversation_id":"0192f0c8-0000-7000-8000-000000000000","client_id":"c1","body":"hi","extra":true}"#;
        match serde_json::from_str::<ClientFrame>(text).expect("parses") {
            ClientFrame::Note {
                note_type,
                audience,
                ..
            } => {
                assert_eq!(note_type, None);
                assert_eq!(audience, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
