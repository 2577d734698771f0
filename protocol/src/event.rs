//! Events: every change to a conversation is one event in its append-only log.
//!
//! On the wire an event is `{id, kind, at, actor: {id, role, name}, ...}` where the rest
//! depends on `kind` ([`EventData`]). Its [`Visibility`] follows from what it is (a
//! message is public, a note internal or supervisors-only), so it can never disagree with
//! the content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{Audience, EventId, InboxId, Role, TeamId, UserId};

/// Who may see an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// The customer, agents and supervisors.
    Public,
    /// Agents and supervisors.
    Internal,
    /// Supervisors and admins only.
    Supervisors,
}

impl Visibility {
    pub fn visible_to(self, audience: Audience) -> bool {
        matches!(
            (self, audience),
            (Visibility::Public, _)
                | (
                    Visibility::Internal,
                    Audience::Agents | Audience::Supervisors
                )
                | (Visibility::Supervisors, Audience::Supervisors)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Internal => "internal",
            Visibility::Supervisors => "supervisors",
        }
    }
}

/// The person behind an event, as shown to those who may see the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: UserId,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What kind of internal note this is; it shapes how consoles show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteType {
    #[default]
    General,
    Context,
    Transfer,
    Resolution,
    Coaching,
}

/// Who reads a note: the whole team, or supervisors and admins only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteAudience {
    #[default]
    Agents,
    Supervisors,
}

/// Where a conversation stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Open,
    Pending,
    Snoozed,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Pending => "pending",
            Status::Snoozed => "snoozed",
            Status::Resolved => "resolved",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Status::Open),
            "pending" => Ok(Status::Pending),
            "snoozed" => Ok(Status::Snoozed),
            "resolved" => Ok(Status::Resolved),
            other => Err(format!(
                "unknown status `{other}` (expected open, pending, snoozed or resolved)"
            )),
        }
    }
}

/// What custom fields are attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldTarget {
    Conversation,
    Contact,
}

impl FieldTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldTarget::Conversation => "conversation",
            FieldTarget::Contact => "contact",
        }
    }
}

/// The kind-specific part of an event. Serialized with a `kind` tag beside its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventData {
    /// The first event of every conversation.
    ConversationOpened {
        inbox_id: InboxId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    /// A message the customer sees: from the customer, or an agent's reply.
    Message {
        body: String,
    },
    /// An internal note. Never shown to the customer.
    Note {
        body: String,
        note_type: NoteType,
        audience: NoteAudience,
        /// Users notified by an @mention in the body (resolved when written).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
    },
    /// A note's new text. The note event itself is never changed.
    NoteEdited {
        note_id: EventId,
        body: String,
        audience: NoteAudience,
    },
    /// A note pinned to (or unpinned from) the conversation; a pinned `context` note
    /// also shows in every conversation of the same contact.
    NotePinned {
        note_id: EventId,
        pinned: bool,
        audience: NoteAudience,
    },
    /// The conversation changed hands. Both absent: unassigned.
    Assigned {
        #[serde(default)]
        assignee_id: Option<UserId>,
        #[serde(default)]
        team_id: Option<TeamId>,
    },
    StatusChanged {
        status: Status,
    },
    TagsChanged {
        #[serde(default)]
        added: Vec<String>,
        #[serde(default)]
        removed: Vec<String>,
    },
    /// Custom field values set (`null`: cleared) on the conversation or its contact.
    FieldsChanged {
        target: FieldTarget,
        target_id: String,
        changes: BTreeMap<String, serde_json::Value>,
    },
}

impl EventData {
    /// Who may see this event. Derived from the content, never stored apart from it.
    pub fn visibility(&self) -> Visibility {
        match self {
            EventData::ConversationOpened { .. } | EventData::Message { .. } => Visibility::Public,
            EventData::Note { audience, .. }
            | EventData::NoteEdited { audience, .. }
            | EventData::NotePinned { audience, .. } => match audience {
                NoteAudience::Agents => Visibility::Internal,
                NoteAudience::Supervisors => Visibility::Supervisors,
            },
            // Team activity: the customer sees none of it.
            EventData::Assigned { .. }
            | EventData::StatusChanged { .. }
            | EventData::TagsChanged { .. }
            | EventData::FieldsChanged { .. } => Visibility::Internal,
        }
    }

    /// The wire name of the kind (`message`, `note`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::ConversationOpened { .. } => "conversation_opened",
            EventData::Message { .. } => "message",
            EventData::Note { .. } => "note",
            EventData::NoteEdited { .. } => "note_edited",
            EventData::NotePinned { .. } => "note_pinned",
            EventData::Assigned { .. } => "assigned",
            EventData::StatusChanged { .. } => "status_changed",
            EventData::TagsChanged { .. } => "tags_changed",
            EventData::FieldsChanged { .. } => "fields_changed",
        }
    }
}

/// An event as it appears inside an `event` frame or an HTTP history page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub id: EventId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: Actor,
    #[serde(flatten)]
    pub data: EventData,
}

impl EventView {
    /// This view as JSON, made from `data_json`, its [`EventData`] already serialized on
    /// its own (the payload the store keeps). The bytes are those of
    /// `serde_json::to_string(self)`: `data` is flattened, so the view is `id`, `at` and
    /// `actor`, then the data's own fields, `kind` first. Only the three leading fields
    /// are serialized here, so an event's body is escaped once, when it is stored, and
    /// not again for the frames that carry it. `None` if `data_json` is not an object.
    ///
    /// `data_json` must be `data` as this build serializes it: a payload read back from
    /// an older store may not be (a field added since, written by its default).
    pub fn to_json_with_data(&self, data_json: &str) -> Option<String> {
        #[derive(Serialize)]
        struct Head<'a> {
            id: EventId,
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
            actor: &'a Actor,
        }
        let fields = data_json.strip_prefix('{')?;
        let mut json = Vec::with_capacity(data_json.len() + 192);
        serde_json::to_writer(
            &mut json,
            &Head {
                id: self.id,
                at: self.at,
                actor: &self.actor,
            },
        )
        .ok()?;
        // `{"id":..,"at":..,"actor":{..}}`: the data's fields go before its last brace.
        json.pop();
        if fields.trim_start() != "}" {
            json.push(b',');
        }
        json.extend_from_slice(fields.as_bytes());
        String::from_utf8(json).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn every_kind() -> Vec<EventData> {
        let note = EventId::new();
        vec![
            EventData::ConversationOpened {
                inbox_id: InboxId("support".into()),
                subject: None,
            },
            EventData::ConversationOpened {
                inbox_id: InboxId("support".into()),
                subject: Some("Refund \"now\"".into()),
            },
            EventData::Message {
                body: "line one\nline \u{2028} two \u{1F600} </script> \\ \"quoted\"".into(),
            },
            EventData::Note {
                body: "@bob look".into(),
                note_type: NoteType::Transfer,
                audience: NoteAudience::Supervisors,
                mentions: vec![UserId("bob".into())],
            },
            EventData::Note {
                body: String::new(),
                note_type: NoteType::General,
                audience: NoteAudience::Agents,
                mentions: vec![],
            },
            EventData::NoteEdited {
                note_id: note,
                body: "fixed".into(),
                audience: NoteAudience::Agents,
            },
            EventData::NotePinned {
                note_id: note,
                pinned: false,
                audience: NoteAudience::Agents,
            },
            EventData::Assigned {
                assignee_id: Some(UserId("alice".into())),
                team_id: None,
            },
            EventData::Assigned {
                assignee_id: None,
                team_id: None,
            },
            EventData::StatusChanged {
                status: Status::Resolved,
            },
            EventData::TagsChanged {
                added: vec!["vip".into()],
                removed: vec![],
            },
            EventData::FieldsChanged {
                target: FieldTarget::Contact,
                target_id: "c-1".into(),
                changes: BTreeMap::from([
                    ("plan".to_owned(), serde_json::json!("pro")),
                    ("seats".to_owned(), serde_json::json!(12.5)),
                    ("gone".to_owned(), serde_json::Value::Null),
                    (
                        "nested".to_owned(),
                        serde_json::json!({"a": [1, {"b": null}]}),
                    ),
                ]),
            },
        ]
    }

    #[test]
    fn a_view_made_from_its_stored_data_is_byte_for_byte_its_serialization() {
        let actors = [
            Actor {
                id: UserId("alice".into()),
                role: Role::Agent,
                name: Some("Alice \"Al\" O'Neil".into()),
            },
            Actor {
                id: UserId("c-1".into()),
                role: Role::Customer,
                name: None,
            },
        ];
        let kinds = every_kind();
        for actor in &actors {
            for data in &kinds {
                let view = EventView {
                    id: EventId::new(),
                    at: OffsetDateTime::from_unix_timestamp_nanos(1_765_000_000_123_456_789)
                        .expect("a valid time"),
                    actor: actor.clone(),
                    data: data.clone(),
                };
                let data_json = serde_json::to_string(&view.data).expect("serializes");
                let composed = view.to_json_with_data(&data_json);
                let direct = serde_json::to_string(&view).expect("serializes");
                assert_eq!(composed.as_deref(), Some(direct.as_str()), "{data:?}");
            }
        }
    }

    #[test]
    fn data_that_is_not_an_object_makes_no_view() {
        let view = EventView {
            id: EventId::new(),
            at: OffsetDateTime::UNIX_EPOCH,
            actor: Actor {
                id: UserId("alice".into()),
                role: Role::Agent,
                name: None,
            },
            data: EventData::StatusChanged {
                status: Status::Open,
            },
        };
        assert_eq!(view.to_json_with_data("[1]"), None);
        assert_eq!(view.to_json_with_data(""), None);
        // An object without fields still makes a valid view.
        let empty = view.to_json_with_data("{}").expect("an object");
        assert!(
            serde_json::from_str::<serde_json::Value>(&empty).is_ok(),
            "{empty}"
        );
    }
}
