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
    /// Writing a supervisors-only note (coaching, QA); only supervisors and admins see
    /// the indicator. Agents who saw someone type `internal` and then no note appear
    /// would know a note was written for supervisors.
    Supervisors,
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

impl ClientFrame {
    /// The frame's `type`, as sent on the wire (one of [`CLIENT_FRAME_TYPES`]).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello { .. } => "hello",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Note { .. } => "note",
            ClientFrame::EditNote { .. } => "edit_note",
            ClientFrame::PinNote { .. } => "pin_note",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Assign { .. } => "assign",
            ClientFrame::SetStatus { .. } => "set_status",
            ClientFrame::Tag { .. } => "tag",
            ClientFrame::SetFields { .. } => "set_fields",
            ClientFrame::WatchAgents => "watch_agents",
            ClientFrame::UnwatchAgents => "unwatch_agents",
            ClientFrame::ReadNotifications { .. } => "read_notifications",
            ClientFrame::Ping => "ping",
        }
    }
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

/// Why a text frame is not a [`ClientFrame`]. Its `Display` is the message the server
/// answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or not a JSON object (an array is refused too, although serde could
    /// read a struct from one); serde's message or a note of what was found.
    NotAnObject(String),
    /// `ref` is present but neither a string nor a number.
    RefType,
    /// No `type` (or `type` is `null`).
    MissingType,
    /// `type` is present but not a string.
    TypeNotString,
    /// `type` is a string but not one of [`CLIENT_FRAME_TYPES`]; the full value.
    UnknownType(String),
    /// A known `type` whose fields do not fit; serde's message.
    InvalidFields { kind: String, message: String },
}

/// Longest part of an unknown `type` quoted back in an error, in characters.
const MAX_QUOTED_TYPE: usize = 64;

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotAnObject(e) => write!(f, "a frame must be one JSON object: {e}"),
            DecodeError::RefType => f.write_str("`ref` must be a string or a number"),
            DecodeError::MissingType => f.write_str("missing `type`"),
            DecodeError::TypeNotString => f.write_str("`type` must be a string"),
            DecodeError::UnknownType(kind) => {
                write!(f, "unknown type `{}`", truncate(kind, MAX_QUOTED_TYPE))
            }
            DecodeError::InvalidFields { kind, message } => {
                write!(f, "invalid `{kind}` frame: {message}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A decoded text frame: the `ref` to answer under (if it was a string or a number) and
/// the command, or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub reference: Option<Ref>,
    pub frame: Result<ClientFrame, DecodeError>,
    ping: bool,
}

impl Decoded {
    /// Whether the frame's `type` is `"ping"` (whatever else is wrong with it): pings are
    /// answered even when a socket is over its rate.
    pub fn is_ping(&self) -> bool {
        self.ping
    }
}

/// Decodes one text frame. Never panics; checks in this order: one JSON object, `ref`
/// type, `type` present, `type` a string, `type` known, then the command's fields.
pub fn decode(text: &str) -> Decoded {
    if !text.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Value>(text).is_ok()
    {
        return Decoded {
            reference: None,
            frame: Err(DecodeError::NotAnObject(
                "expected an object, found another JSON value".into(),
            )),
            ping: false,
        };
    }
    let head: FrameHead = match serde_json::from_str(text) {
        Ok(head) => head,
        Err(e) => {
            return Decoded {
                reference: None,
                frame: Err(DecodeError::NotAnObject(e.to_string())),
                ping: false,
            }
        }
    };
    let reference = head.reference();
    let ping = head.kind() == Some("ping");
    let frame = match head.kind() {
        _ if head.reference.is_some() && reference.is_none() => Err(DecodeError::RefType),
        None if head.kind.is_some() => Err(DecodeError::TypeNotString),
        None => Err(DecodeError::MissingType),
        Some(kind) if !CLIENT_FRAME_TYPES.contains(&kind) => {
            Err(DecodeError::UnknownType(kind.to_owned()))
        }
        Some(kind) => {
            serde_json::from_str::<ClientFrame>(text).map_err(|e| DecodeError::InvalidFields {
                kind: kind.to_owned(),
                message: e.to_string(),
            })
        }
    };
    Decoded {
        reference,
        frame,
        ping,
    }
}

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

    #[test]
    fn decode_answers_each_kind_of_bad_frame() {
        let err = |text: &str| decode(text).frame.expect_err("should not decode");
        assert!(matches!(err("1"), DecodeError::NotAnObject(_)));
        // serde could read a struct from an array; the protocol says objects only.
        assert!(matches!(err("[1]"), DecodeError::NotAnObject(_)));
        assert!(matches!(err(r#"["ping"]"#), DecodeError::NotAnObject(_)));
        assert!(matches!(err("not json"), DecodeError::NotAnObject(_)));
        assert!(err("")
            .to_string()
            .starts_with("a frame must be one JSON object: "));
        assert_eq!(err(r#"{"type":"ping","ref":[]}"#), DecodeError::RefType);
        assert_eq!(err(r#"{"ref":1}"#), DecodeError::MissingType);
        assert_eq!(err(r#"{"type":null}"#), DecodeError::MissingType);
        assert_eq!(err(r#"{"type":7}"#), DecodeError::TypeNotString);
        assert_eq!(
            err(r#"{"type":"shout"}"#),
            DecodeError::UnknownType("shout".into())
        );
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        assert_eq!(
            err(&long).to_string(),
            format!("unknown type `{}`", "é".repeat(64))
        );
        match err(r#"{"type":"send","conversation_id":42}"#) {
            DecodeError::InvalidFields { kind, message } => {
                assert_eq!(kind, "send");
                assert!(!message.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Each command is read as the variant its `type` names, wherever `type` stands
    /// in the object, with `ref` and fields it does not know ignored.
    #[test]
    fn every_command_decodes_with_type_anywhere_and_unknown_fields_ignored() {
        let conversation = "0192f0c8-0000-7000-8000-000000000000";
        let note = "0192f0c8-0000-7000-8000-000000000001";
        let id = ConversationId(conversation.parse().expect("uuid"));
        let cases: Vec<(String, ClientFrame)> = vec![
            (
                r#""token":"t""#.into(),
                ClientFrame::Hello { token: "t".into() },
            ),
            (
                format!(r#""conversation_id":"{conversation}","since":4"#),
                ClientFrame::Subscribe {
                    conversation_id: id,
                    since: Some(4),
                },
            ),
            (
                format!(r#""conversation_id":"{conversation}""#),
                ClientFrame::Unsubscribe {
                    conversation_id: id,
                },
            ),
            (
                format!(
                    r#""conversation_id":"{conversation}","client_id":"c","body":"b\"q\"","based_on_seq":9"#
                ),
                ClientFrame::Send {
                    conversation_id: id,
                    client_id: "c".into(),
                    body: "b\"q\"".into(),
                    based_on_seq: Some(9),
                },
            ),
            (
                format!(
                    r#""conversation_id":"{conversation}","client_id":"c","body":"n","note_type":"coaching","audience":"supervisors""#
                ),
                ClientFrame::Note {
                    conversation_id: id,
                    client_id: "c".into(),
                    body: "n".into(),
                    note_type: Some(NoteType::Coaching),
                    audience: Some(NoteAudience::Supervisors),
                },
            ),
            (
                format!(r#""conversation_id":"{conversation}","note_id":"{note}","body":"e""#),
                ClientFrame::EditNote {
                    conversation_id: id,
                    note_id: EventId(note.parse().expect("uuid")),
                    body: "e".into(),
                },
            ),
            (
                format!(r#""conversation_id":"{conversation}","note_id":"{note}""#),
                ClientFrame::PinNote {
                    conversation_id: id,
                    note_id: EventId(note.parse().expect("uuid")),
                    pinned: true,
                },
            ),
            (
                format!(r#""conversation_id":"{conversation}","audience":"internal""#),
                ClientFrame::Typing {
                    conversation_id: id,
                    audience: TypingAudience::Internal,
                },
            ),
            (
                format!(
                    r#""conversation_id":"{conversation}","assignee_id":"bob","note":"over to you""#
                ),
                ClientFrame::Assign {
                    conversation_id: id,
                    assignee_id: Some(UserId("bob".into())),
                    team_id: None,
                    note: Some("over to you".into()),
                },
            ),
            (
                format!(r#""conversation_id":"{conversation}","status":"pending""#),
                ClientFrame::SetStatus {
                    conversation_id: id,
                    status: Status::Pending,
                },
            ),
            (
                format!(r#""conversation_id":"{conversation}","add":["vip"]"#),
                ClientFrame::Tag {
                    conversation_id: id,
                    add: vec!["vip".into()],
                    remove: vec![],
                },
            ),
            (
                r#""target":"contact","id":"c-1","fields":{"plan":"pro","seats":null}"#.into(),
                ClientFrame::SetFields {
                    target: FieldTarget::Contact,
                    id: "c-1".into(),
                    fields: BTreeMap::from([
                        ("plan".to_owned(), serde_json::json!("pro")),
                        ("seats".to_owned(), serde_json::Value::Null),
                    ]),
                },
            ),
            (
                r#""up_to":7"#.into(),
                ClientFrame::ReadNotifications {
                    ids: None,
                    up_to: Some(7),
                },
            ),
            (r#""x":1"#.into(), ClientFrame::WatchAgents),
            (r#""x":[1,{"y":2}]"#.into(), ClientFrame::UnwatchAgents),
            (r#""x":"y""#.into(), ClientFrame::Ping),
        ];
        assert_eq!(cases.len(), CLIENT_FRAME_TYPES.len(), "a case per command");
        for (fields, expected) in cases {
            let kind = expected.kind();
            for text in [
                format!(r#"{{"type":"{kind}","ref":1,{fields},"later":{{"a":[true]}}}}"#),
                format!(r#" {{ {fields}, "type" : "{kind}" }} "#),
            ] {
                let decoded = decode(&text);
                assert_eq!(decoded.frame.as_ref(), Ok(&expected), "{text}");
            }
        }
    }

    #[test]
    fn a_command_missing_a_field_or_with_trailing_text_is_refused() {
        match decode(r#"{"type":"note","conversation_id":"0192f0c8-0000-7000-8000-000000000000","body":"b"}"#).frame {
            Err(DecodeError::InvalidFields { kind, message }) => {
                assert_eq!(kind, "note");
                assert!(message.contains("missing field `client_id`"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode(r#"{"type":"ping"} {"type":"ping"}"#).frame {
            Err(DecodeError::NotAnObject(_)) | Err(DecodeError::InvalidFields { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decode_keeps_the_ref_and_flags_pings() {
        let decoded = decode(r#"{"type":"ping","ref":"p1"}"#);
        assert_eq!(decoded.reference, Some(Ref::String("p1".into())));
        assert_eq!(decoded.frame, Ok(ClientFrame::Ping));
        assert!(decoded.is_ping());
        let decoded = decode(r#"{"type":"ping","ref":{}}"#);
        assert_eq!(decoded.frame, Err(DecodeError::RefType));
        assert!(decoded.is_ping());
        let decoded = decode(r#"{"type":"send","ref":3,"conversation_id":1}"#);
        assert_eq!(decoded.reference, Some(Ref::Number(3.into())));
        assert!(!decoded.is_ping());
        assert!(!decode("{").is_ping());
    }

    #[test]
    fn decoded_frames_report_their_wire_type() {
        let frame = decode(r#"{"type":"watch_agents"}"#).frame.expect("decodes");
        assert_eq!(frame.kind(), "watch_agents");
        let frame = decode(r#"{"type":"read_notifications","up_to":3}"#)
            .frame
            .expect("decodes");
        assert_eq!(frame.kind(), "read_notifications");
        assert!(CLIENT_FRAME_TYPES.contains(&frame.kind()));
    }
}
