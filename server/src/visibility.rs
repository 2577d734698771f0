//! Who may be handed what: the customer's side of a room can only carry public content.
//!
//! The rule is carried by types rather than by checks in handlers:
//!
//! - [`PublicEvent`] can only be made by `PublicEvent::try_from(event)`, which refuses
//!   internal and supervisors-only events. It carries the event's public `seq`.
//! - [`PublicTyping`] can only be made from a [`Typing`] whose audience is public.
//! - [`CustomerFrame`] can only be made from those two. The customer's outbox
//!   ([`crate::ws::outbox::CustomerOutbox`]) accepts nothing else, and the replay and HTTP
//!   history paths for customers go through [`PublicEvent`] too.
//! - [`StaffFrame`] carries any event, with the `seq` of the staff member's stream; it
//!   can only be pushed into a [`crate::ws::outbox::StaffOutbox`], which can only be made
//!   for a staff identity.
//!
//! Every frame is serialized once per audience and shared by every recipient:
//! [`SharedFrame`] is a reference-counted buffer, so cloning it is a pointer copy.

use std::borrow::Cow;
use std::sync::Arc;

use backchannel_protocol::client::TypingAudience;
use backchannel_protocol::server::{AgentPresence, Notification, ServerFrame, Viewer};
use backchannel_protocol::{Actor, Audience, ConversationId, EventView, Visibility};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::store::Event;

/// An event the customer may see. There is no other constructor than `try_from`.
#[derive(Clone, Debug)]
pub struct PublicEvent {
    event: Arc<Event>,
    seq: u64,
}

/// The event was not public.
#[derive(Debug, thiserror::Error)]
#[error("event is not public")]
pub struct NotPublic;

impl TryFrom<Arc<Event>> for PublicEvent {
    type Error = NotPublic;

    fn try_from(event: Arc<Event>) -> Result<Self, NotPublic> {
        match (event.visibility(), event.seqs.public) {
            (Visibility::Public, Some(seq)) => Ok(PublicEvent { event, seq }),
            _ => Err(NotPublic),
        }
    }
}

impl PublicEvent {
    /// The event's `seq` in the public stream.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn view(&self) -> &EventView {
        &self.event.view
    }

    pub fn conversation_id(&self) -> ConversationId {
        self.event.conversation_id
    }
}

/// Someone is writing, in one conversation. Not stored.
#[derive(Clone, Debug)]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub user: Actor,
    pub audience: TypingAudience,
}

/// A typing indicator the customer may see: someone writing a public reply.
#[derive(Clone, Debug)]
pub struct PublicTyping(Typing);

impl TryFrom<Typing> for PublicTyping {
    type Error = NotPublic;

    fn try_from(typing: Typing) -> Result<Self, NotPublic> {
        match typing.audience {
            TypingAudience::Public => Ok(PublicTyping(typing)),
            TypingAudience::Internal | TypingAudience::Supervisors => Err(NotPublic),
        }
    }
}

/// Bytes reserved before a frame is serialized. An event frame with a short body (a
/// chat line, a note) fits, so it is written without the buffer growing: from
/// serde_json's own start of 128 bytes it grew twice per frame, each a reallocation and
/// a copy (1.6 % of the socket side's instructions per delivery in `bc-load fanout`
/// under callgrind, docs/benchmarks-log.md). A longer frame grows as before, and a
/// frame of 257–512 bytes ended with this capacity anyway.
const FRAME_CAPACITY: usize = 512;

/// One serialized frame, shared by every socket it goes to.
#[derive(Clone, Debug)]
pub struct SharedFrame(Utf8Bytes);

impl SharedFrame {
    fn encode<R: serde::Serialize>(frame: &ServerFrame<'_, R>) -> SharedFrame {
        let mut text = Vec::with_capacity(FRAME_CAPACITY);
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible Serialize impls; serde_json writes UTF-8. An empty frame would be
        // dropped by clients anyway.
        let text = match serde_json::to_writer(&mut text, frame) {
            Ok(()) => String::from_utf8(text).unwrap_or_default(),
            Err(_) => String::new(),
        };
        SharedFrame(Utf8Bytes::from(text))
    }

    /// An `event` frame, `{"type":"event","conversation_id","seq","event"}`: the bytes
    /// `encode` writes for `ServerFrame::Event`, around the event's view as JSON
    /// ([`Event::view_json`]), which is copied rather than serialized again for each
    /// audience. Empty, like `encode`'s, if serializing failed.
    fn event(event: &Event, seq: u64) -> SharedFrame {
        let text = Self::event_text(event, seq).unwrap_or_default();
        SharedFrame(Utf8Bytes::from(text))
    }

    fn event_text(event: &Event, seq: u64) -> Option<String> {
        let view = event.view_json();
        if view.is_empty() {
            return None;
        }
        let mut text = Vec::with_capacity(view.len() + 96);
        text.extend_from_slice(br#"{"type":"event","conversation_id":"#);
        serde_json::to_writer(&mut text, &event.conversation_id).ok()?;
        text.extend_from_slice(br#","seq":"#);
        serde_json::to_writer(&mut text, &seq).ok()?;
        text.extend_from_slice(br#","event":"#);
        text.extend_from_slice(view.as_bytes());
        text.push(b'}');
        String::from_utf8(text).ok()
    }

    pub(crate) fn bytes(&self) -> &Utf8Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A frame for a customer's socket.
#[derive(Clone, Debug)]
pub struct CustomerFrame(SharedFrame);

impl CustomerFrame {
    pub fn event(event: &PublicEvent) -> CustomerFrame {
        CustomerFrame(SharedFrame::event(&event.event, event.seq))
    }

    pub fn typing(typing: &PublicTyping) -> CustomerFrame {
        CustomerFrame(typing_frame(&typing.0))
    }

    pub(crate) fn shared(&self) -> &SharedFrame {
        &self.0
    }
}

/// The two streams the team reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StaffAudience {
    Agents,
    Supervisors,
}

impl StaffAudience {
    /// `viewers` as this audience may see them: for agents, someone typing a
    /// supervisors-only note is viewing, not typing. Borrowed when nothing is hidden.
    pub fn viewers(self, viewers: &[Viewer]) -> Cow<'_, [Viewer]> {
        let hidden = |v: &Viewer| {
            self == StaffAudience::Agents && v.typing_audience == Some(TypingAudience::Supervisors)
        };
        if !viewers.iter().any(hidden) {
            return Cow::Borrowed(viewers);
        }
        viewers
            .iter()
            .map(|v| {
                if hidden(v) {
                    Viewer {
                        typing: false,
                        typing_audience: None,
                        ..v.clone()
                    }
                } else {
                    v.clone()
                }
            })
            .collect()
    }

    pub fn audience(self) -> Audience {
        match self {
            StaffAudience::Agents => Audience::Agents,
            StaffAudience::Supervisors => Audience::Supervisors,
        }
    }

    /// The staff stream a role reads; `None` for customers.
    pub fn of(audience: Audience) -> Option<StaffAudience> {
        match audience {
            Audience::Customer => None,
            Audience::Agents => Some(StaffAudience::Agents),
            Audience::Supervisors => Some(StaffAudience::Supervisors),
        }
    }
}

/// A frame for an agent's, supervisor's or admin's socket.
#[derive(Clone, Debug)]
pub struct StaffFrame(SharedFrame);

impl StaffFrame {
    /// The event as `audience` sees it, or `None` if that audience may not see it.
    pub fn event(event: &Event, audience: StaffAudience) -> Option<StaffFrame> {
        let seq = event.seqs.for_audience(audience.audience())?;
        Some(StaffFrame(SharedFrame::event(event, seq)))
    }

    /// A mention or assignment, for the sessions of the user it is addressed to.
    pub fn notification(notification: &Notification) -> StaffFrame {
        StaffFrame(SharedFrame::encode::<()>(&ServerFrame::Notification {
            notification,
        }))
    }

    /// Who is viewing and typing in a conversation.
    /// Who is viewing and typing, as `audience` may see it (see
    /// [`StaffAudience::viewers`]).
    pub fn presence(
        conversation_id: ConversationId,
        viewers: &[Viewer],
        audience: StaffAudience,
    ) -> StaffFrame {
        StaffFrame(SharedFrame::encode::<()>(&ServerFrame::Presence {
            conversation_id,
            viewers: &audience.viewers(viewers),
        }))
    }

    pub fn agent_presence(agent: &AgentPresence) -> StaffFrame {
        StaffFrame(SharedFrame::encode::<()>(&ServerFrame::AgentPresence {
            agent,
        }))
    }

    pub fn agents(agents: &[AgentPresence]) -> StaffFrame {
        StaffFrame(SharedFrame::encode::<()>(&ServerFrame::Agents { agents }))
    }

    /// Staff see typing indicators for replies and notes alike; agents none for a
    /// supervisors-only note (`None`).
    pub fn typing(typing: &Typing, audience: StaffAudience) -> Option<StaffFrame> {
        if typing.audience == TypingAudience::Supervisors && audience == StaffAudience::Agents {
            return None;
        }
        Some(StaffFrame(typing_frame(typing)))
    }

    pub(crate) fn shared(&self) -> &SharedFrame {
        &self.0
    }
}

fn typing_frame(typing: &Typing) -> SharedFrame {
    SharedFrame::encode::<()>(&ServerFrame::Typing {
        conversation_id: typing.conversation_id,
        user: &typing.user,
        audience: typing.audience,
    })
}

/// A frame that answers the socket's own commands (`welcome`, `ok`, `error`, `pong`).
/// It carries no event; results are built from ids and counters.
#[derive(Clone, Debug)]
pub struct ControlFrame(SharedFrame);

impl ControlFrame {
    /// Refuses every frame that is not an answer to the socket's own command: events,
    /// typing, presence, notifications and the agents' floor each have their own typed
    /// frame and reach a socket only through a typed outbox.
    pub fn new<R: serde::Serialize>(frame: &ServerFrame<'_, R>) -> Option<ControlFrame> {
        match frame {
            ServerFrame::Welcome { .. }
            | ServerFrame::Ok { .. }
            | ServerFrame::Error { .. }
            | ServerFrame::Pong => Some(ControlFrame(SharedFrame::encode(frame))),
            ServerFrame::Event { .. }
            | ServerFrame::Typing { .. }
            | ServerFrame::Notification { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Agents { .. }
            | ServerFrame::AgentPresence { .. } => None,
        }
    }

    pub(crate) fn shared(&self) -> &SharedFrame {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Seqs;
    use backchannel_protocol::{EventData, EventId, NoteAudience, NoteType, Role, UserId};

    fn event(data: EventData, seqs: Seqs) -> Arc<Event> {
        Arc::new(Event {
            conversation_id: ConversationId::new(),
            seqs,
            view: EventView {
                id: EventId::new(),
                at: crate::store::now(),
                actor: Actor {
                    id: UserId::from("alice"),
                    role: Role::Agent,
                    name: None,
                },
                data,
            },
            client_id: None,
            hash: [0; 32],
            view_json: Default::default(),
        })
    }

    #[test]
    fn notes_never_become_public_events() {
        for audience in [NoteAudience::Agents, NoteAudience::Supervisors] {
            let note = event(
                EventData::Note {
                    body: "secret".into(),
                    note_type: NoteType::General,
                    audience,
                    mentions: vec![],
                },
                Seqs {
                    supervisor: 2,
                    agent: Some(2),
                    // Even a wrongly numbered note is refused: visibility decides.
                    public: Some(2),
                },
            );
            assert!(PublicEvent::try_from(note).is_err());
        }
        let message = event(
            EventData::Message { body: "hi".into() },
            Seqs {
                supervisor: 3,
                agent: Some(3),
                public: Some(2),
            },
        );
        assert_eq!(PublicEvent::try_from(message).expect("public").seq(), 2);
    }

    #[test]
    fn control_frames_are_answers_only() {
        let note = event(
            EventData::Note {
                body: "secret".into(),
                note_type: NoteType::General,
                audience: NoteAudience::Agents,
                mentions: vec![],
            },
            Seqs {
                supervisor: 2,
                agent: Some(2),
                public: None,
            },
        );
        let as_event: ServerFrame<'_, ()> = ServerFrame::Event {
            conversation_id: note.conversation_id,
            seq: 2,
            event: &note.view,
        };
        assert!(ControlFrame::new(&as_event).is_none());
        assert!(ControlFrame::new::<()>(&ServerFrame::Pong).is_some());
    }

    #[test]
    fn internal_typing_is_not_public() {
        let typing = Typing {
            conversation_id: ConversationId::new(),
            user: Actor {
                id: UserId::from("alice"),
                role: Role::Agent,
                name: None,
            },
            audience: TypingAudience::Internal,
        };
        assert!(PublicTyping::try_from(typing).is_err());
    }

    #[test]
    fn staff_frames_use_the_audience_seq() {
        let note = event(
            EventData::Note {
                body: "coaching".into(),
                note_type: NoteType::Coaching,
                audience: NoteAudience::Supervisors,
                mentions: vec![],
            },
            Seqs {
                supervisor: 5,
                agent: None,
                public: None,
            },
        );
        assert!(StaffFrame::event(&note, StaffAudience::Agents).is_none());
        let frame = StaffFrame::event(&note, StaffAudience::Supervisors).expect("visible");
        assert!(frame.shared().bytes().as_str().contains("\"seq\":5"));
    }

    /// The frames copy the event's JSON instead of serializing `ServerFrame::Event`:
    /// they must be the same bytes, whether the JSON was made from a payload just stored
    /// (`NewEvent::seal`) or serialized on first use (an event read back or from Redis).
    #[test]
    fn event_frames_are_the_bytes_of_the_serialized_frame() {
        let message = EventData::Message {
            body: "a \"quoted\" line\nand </script> \u{1F600}".into(),
        };
        let seqs = Seqs {
            supervisor: 9,
            agent: Some(8),
            public: Some(7),
        };
        let lazily = event(message.clone(), seqs);
        let new = crate::store::NewEvent {
            id: EventId::new(),
            conversation_id: ConversationId::new(),
            at: crate::store::now(),
            actor: Actor {
                id: UserId::from("carol"),
                role: Role::Customer,
                name: Some("Carol \"C\"".into()),
            },
            client_id: Some("c-1".into()),
            data: message,
        };
        let (sealed, _payload) = new
            .seal(crate::store::Heads::default(), &[0; 32])
            .expect("seals");
        for event in [lazily, Arc::new(sealed)] {
            let serialized = |seq| {
                SharedFrame::encode::<()>(&ServerFrame::Event {
                    conversation_id: event.conversation_id,
                    seq,
                    event: &event.view,
                })
            };
            let agents = StaffFrame::event(&event, StaffAudience::Agents).expect("public");
            let supervisors =
                StaffFrame::event(&event, StaffAudience::Supervisors).expect("public");
            let public = PublicEvent::try_from(event.clone()).expect("public");
            let customer = CustomerFrame::event(&public);
            let seqs = event.seqs;
            for (frame, seq) in [
                (agents.shared(), seqs.agent.expect("agent seq")),
                (supervisors.shared(), seqs.supervisor),
                (customer.shared(), seqs.public.expect("public seq")),
            ] {
                assert_eq!(frame.bytes().as_str(), serialized(seq).bytes().as_str());
            }
        }
    }
}
