//! Frames a client sends over the WebSocket.
//!
//! Decoding is done in two steps so that a malformed command can still be answered under
//! its `ref`: [`FrameHead`] reads only `type` and `ref` (and accepts anything else), then
//! [`ClientFrame`] reads the whole command. Unknown fields are ignored, so clients may
//! send fields a newer server understands.

use serde::{Deserialize, Serialize};

use crate::event::{NoteAudience, NoteType};
use crate::ids::ConversationId;

/// A client's correlation id: any string or number, echoed in the one answer to its frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Number(serde_json::Number),
    String(String),
}

/// The envelope every client frame shares.
#[derive(Debug, Default, Deserialize)]
pub struct FrameHead {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(rename = "ref", default)]
    pub reference: Option<Ref>,
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
    Typing {
        conversation_id: ConversationId,
        audience: TypingAudience,
    },
    Ping,
}

/// The `type` values a client may send, for error messages.
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "hello",
    "subscribe",
    "unsubscribe",
    "send",
    "note",
    "typing",
    "ping",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_reads_ref_even_when_the_command_is_malformed() {
        let text = r#"{"type":"send","ref":7,"conversation_id":42}"#;
        let head: FrameHead = serde_json::from_str(text).expect("head parses");
        assert_eq!(head.reference, Some(Ref::Number(7.into())));
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
