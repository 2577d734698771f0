//! The one write path: every command, from a socket or from HTTP, goes through here.
//!
//! The service decides who may do what (a customer reaches only conversations whose
//! contact they are; staff only those of their inboxes), validates input, builds events,
//! and hands them to the writer, answering only once they are durable. It knows nothing
//! of HTTP or WebSocket framing; `ws` and `api` translate to and from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use backchannel_protocol::client::TypingAudience;
use backchannel_protocol::http::{
    AuditEntry, AuditReport, ChainBreak, Contact, CustomerConversation, FieldDefinition,
    HistoryEntry, HistoryPage, Inbox, NotificationsPage, OpenConversation, PinnedNote, PutField,
    PutTag, PutTeam, SearchHit, SearchPage, StaffConversation, TagDefinition, Team,
};
use backchannel_protocol::server::{AppendResult, ReadResult, SubscribeResult};
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, FieldTarget, InboxId, NoteAudience,
    NoteType, Role, Status, TeamId, UserId, MAX_BODY_BYTES, MAX_CLIENT_ID_BYTES,
};
use dashmap::DashMap;
use serde::Serialize;

use crate::auth::{Identity, InboxScope, Keys};
use crate::error::ServiceError;
use crate::hub::{ConnId, Hub, Seat};
use crate::store::writer::{WriteError, Writer};
use crate::store::{
    self, chain, ConversationFilter, ConversationRecord, DirectoryEntry, Event, Heads, MarkRead,
    NewConversation, NewEvent, NoteRecord, NoteSearch, ReplyGuard, Store, WriteOutcome,
    WriteRefusal, WriteRequest,
};
use crate::visibility::{PublicEvent, Typing};
use crate::ws::outbox::StaffOutbox;
use crate::{fields, mentions};

/// Longest subject of a conversation, in bytes.
const MAX_SUBJECT_BYTES: usize = 512;
/// Longest inbox id and name.
const MAX_INBOX_ID: usize = 64;
const MAX_INBOX_NAME: usize = 256;
/// History page size: default and most.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Conversation list size: default and most.
const DEFAULT_LIST: u32 = 50;
const MAX_LIST: u32 = 200;
/// Most tags on one conversation, and most field values set at once.
pub const MAX_TAGS_PER_CONVERSATION: usize = 50;
const MAX_FIELDS_PER_CALL: usize = 50;
/// Most tag, field and team definitions.
const MAX_DEFINITIONS: usize = 500;
/// Notifications and search results per page.
const DEFAULT_RESULTS: u32 = 50;
const MAX_RESULTS: u32 = 200;
/// Conversations of one contact that a contact field change is recorded in.
const CONTACT_FAN_OUT: u32 = 100;

/// Who may reach a conversation. Never changes once the conversation exists, so it is
/// cached for the life of the process.
#[derive(Clone, Debug)]
struct Access {
    inbox_id: InboxId,
    contact_id: Option<UserId>,
}

impl Access {
    fn allows(&self, who: &Identity) -> bool {
        match who.role {
            Role::Customer => self.contact_id.as_ref() == Some(&who.user_id),
            _ => who.inboxes.allows(&self.inbox_id),
        }
    }
}

/// A conversation as the caller may see it.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ConversationView {
    Staff(StaffConversation),
    Customer(CustomerConversation),
}

/// What a staff view adds to the conversation row.
#[derive(Default)]
struct StaffExtras {
    tags: Vec<String>,
    fields: BTreeMap<String, serde_json::Value>,
    pinned_notes: Vec<PinnedNote>,
}

impl ConversationView {
    fn of(record: ConversationRecord, who: &Identity) -> ConversationView {
        Self::with_extras(record, who, StaffExtras::default())
    }

    fn with_extras(
        record: ConversationRecord,
        who: &Identity,
        extras: StaffExtras,
    ) -> ConversationView {
        match who.role.audience() {
            Audience::Customer => ConversationView::Customer(CustomerConversation {
                id: record.id,
                inbox_id: record.inbox_id,
                subject: record.subject,
                status: record.status,
                created_at: record.created_at,
                updated_at: record.last_public_at,
                head: record.heads.public,
            }),
            audience => ConversationView::Staff(StaffConversation {
                id: record.id,
                inbox_id: record.inbox_id,
                contact_id: record.contact_id,
                subject: record.subject,
                status: record.status,
                assignee_id: record.assignee_id,
                team_id: record.team_id,
                tags: extras.tags,
                fields: extras.fields,
                pinned_notes: extras.pinned_notes,
                created_at: record.created_at,
                updated_at: record.last_activity_at,
                head: record.heads.get(audience),
            }),
        }
    }
}

/// Filters of `GET /v1/conversations`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub inbox: Option<InboxId>,
    pub assignee: Option<UserId>,
    pub tag: Option<String>,
    /// `key:value`: conversations whose custom field `key` has that value.
    pub field: Option<String>,
    pub limit: Option<u32>,
}

/// Filters of `GET /v1/search/notes`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct SearchQuery {
    pub q: String,
    pub note_type: Option<NoteType>,
    pub author: Option<UserId>,
    pub tag: Option<String>,
    pub limit: Option<u32>,
}

pub struct Service {
    store: Arc<dyn Store>,
    writer: Writer,
    hub: Arc<Hub>,
    keys: Keys,
    access: DashMap<ConversationId, Access>,
    /// Staff as last written to the directory, to skip rewriting unchanged entries.
    directory: DashMap<UserId, DirectoryEntry>,
}

impl Service {
    pub fn new(store: Arc<dyn Store>, writer: Writer, hub: Arc<Hub>, keys: Keys) -> Service {
        Service {
            store,
            writer,
            hub,
            keys,
            access: DashMap::new(),
            directory: DashMap::new(),
        }
    }

    /// Verifies a token. Staff are upserted into the directory so mentions and
    /// supervisor views know them.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, ServiceError> {
        let identity = self
            .keys
            .verify(token)
            .map_err(|e| ServiceError::Unauthorized(e.to_string()))?;
        if identity.role.is_staff() {
            let entry = DirectoryEntry {
                id: identity.user_id.clone(),
                role: identity.role,
                name: identity.name.clone(),
                handle: identity.handle.to_lowercase(),
                teams: identity.teams.clone(),
                inboxes: match &identity.inboxes {
                    InboxScope::All => vec!["*".to_owned()],
                    InboxScope::Only(set) => {
                        let mut list: Vec<String> = set.iter().map(|i| i.0.clone()).collect();
                        list.sort();
                        list
                    }
                },
            };
            let known = self
                .directory
                .get(&entry.id)
                .is_some_and(|seen| *seen == entry);
            if !known {
                self.store.upsert_directory_entry(&entry).await?;
                self.directory.insert(entry.id.clone(), entry);
            }
        }
        Ok(identity)
    }

    /// A staff socket's session: it receives the user's notifications until closed.
    pub async fn open_session(&self, who: &Identity, conn: ConnId, outbox: StaffOutbox) {
        self.hub.register_session(&who.user_id, conn, outbox).await;
    }

    pub fn close_session(&self, who: &Identity, conn: ConnId) {
        self.hub.unregister_session(&who.user_id, conn);
    }

    async fn access(&self, id: ConversationId) -> Result<Access, ServiceError> {
        if let Some(access) = self.access.get(&id) {
            return Ok(access.clone());
        }
        let record = self
            .store
            .conversation(id)
            .await?
            .ok_or_else(ServiceError::conversation_not_found)?;
        Ok(self.remember_access(&record))
    }

    fn remember_access(&self, record: &ConversationRecord) -> Access {
        let access = Access {
            inbox_id: record.inbox_id.clone(),
            contact_id: record.contact_id.clone(),
        };
        self.access.insert(record.id, access.clone());
        access
    }

    /// Succeeds if `who` may see the conversation. One the caller may not see is
    /// reported exactly like one that does not exist.
    pub async fn authorize_view(
        &self,
        who: &Identity,
        id: ConversationId,
    ) -> Result<(), ServiceError> {
        self.access_for(who, id).await.map(|_| ())
    }

    async fn access_for(&self, who: &Identity, id: ConversationId) -> Result<Access, ServiceError> {
        let access = self.access(id).await?;
        if access.allows(who) {
            Ok(access)
        } else {
            Err(ServiceError::conversation_not_found())
        }
    }

    fn require_staff(who: &Identity, what: &str) -> Result<(), ServiceError> {
        if who.role.is_staff() {
            Ok(())
        } else {
            Err(ServiceError::forbidden(format!("only staff {what}")))
        }
    }

    fn require_admin(who: &Identity, what: &str) -> Result<(), ServiceError> {
        if who.role.can_manage_definitions() {
            Ok(())
        } else {
            Err(ServiceError::forbidden(format!("only admins {what}")))
        }
    }

    pub async fn open_conversation(
        &self,
        who: &Identity,
        request: OpenConversation,
    ) -> Result<ConversationView, ServiceError> {
        validate_inbox_id(&request.inbox_id)?;
        if let Some(subject) = &request.subject {
            if subject.len() > MAX_SUBJECT_BYTES {
                return Err(ServiceError::bad_request(format!(
                    "subject is longer than {MAX_SUBJECT_BYTES} bytes"
                )));
            }
        }
        let contact_id = match who.role {
            Role::Customer => match request.contact_id {
                Some(contact) if contact != who.user_id => {
                    return Err(ServiceError::forbidden(
                        "a customer opens conversations for themself only",
                    ))
                }
                _ => who.user_id.clone(),
            },
            _ => {
                if !who.inboxes.allows(&request.inbox_id) {
                    return Err(ServiceError::forbidden(format!(
                        "no access to inbox `{}`",
                        request.inbox_id
                    )));
                }
                match request.contact_id {
                    Some(contact)
                        if !contact.as_str().is_empty() && contact.as_str().len() <= 128 =>
                    {
                        contact
                    }
                    _ => {
                        return Err(ServiceError::bad_request(
                            "`contact_id` (1 to 128 characters) is required when staff open a conversation",
                        ))
                    }
                }
            }
        };
        let id = ConversationId::new();
        let at = store::now();
        let opened = NewEvent {
            id: EventId::new(),
            conversation_id: id,
            at,
            actor: actor(who),
            client_id: None,
            data: EventData::ConversationOpened {
                inbox_id: request.inbox_id.clone(),
                subject: request.subject.clone(),
            },
        };
        self.writer
            .write(WriteRequest::Open(Box::new(NewConversation {
                id,
                inbox_id: request.inbox_id.clone(),
                contact_id: Some(contact_id.clone()),
                subject: request.subject.clone(),
                opened,
            })))
            .await?;
        let record = ConversationRecord {
            id,
            inbox_id: request.inbox_id,
            contact_id: Some(contact_id),
            subject: request.subject,
            status: Status::Open.as_str().into(),
            assignee_id: None,
            team_id: None,
            created_at: at,
            last_activity_at: at,
            last_public_at: at,
            heads: Heads {
                public: 1,
                agent: 1,
                supervisor: 1,
            },
        };
        self.remember_access(&record);
        Ok(ConversationView::of(record, who))
    }

    pub async fn list_conversations(
        &self,
        who: &Identity,
        query: ListQuery,
    ) -> Result<Vec<ConversationView>, ServiceError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
        let customer = who.role == Role::Customer;
        let inboxes = match (&who.inboxes, customer, query.inbox) {
            (_, true, inbox) => inbox.map(|i| vec![i]),
            (InboxScope::All, _, inbox) => inbox.map(|i| vec![i]),
            (InboxScope::Only(set), _, Some(inbox)) => Some(if set.contains(&inbox) {
                vec![inbox]
            } else {
                vec![]
            }),
            (InboxScope::Only(set), _, None) => Some(set.iter().cloned().collect()),
        };
        if customer && (query.assignee.is_some() || query.tag.is_some() || query.field.is_some()) {
            // Filtering on internal state would let a customer probe it.
            return Err(ServiceError::forbidden(
                "customers may filter by status and inbox only",
            ));
        }
        let field = match &query.field {
            None => None,
            Some(spec) => {
                let (key, raw) = spec
                    .split_once(':')
                    .ok_or_else(|| ServiceError::bad_request("`field` is `key:value`"))?;
                let definition = self
                    .field_definition(key, FieldTarget::Conversation)
                    .await?;
                let value =
                    fields::parse_filter(&definition, raw).map_err(ServiceError::BadRequest)?;
                Some((key.to_owned(), value))
            }
        };
        let filter = ConversationFilter {
            inboxes,
            contact_id: customer.then(|| who.user_id.clone()),
            status: query.status,
            assignee_id: query.assignee,
            tag: query.tag,
            field,
            limit,
        };
        let records = self.store.conversations(&filter).await?;
        if customer {
            return Ok(records
                .into_iter()
                .map(|record| ConversationView::of(record, who))
                .collect());
        }
        let ids: Vec<ConversationId> = records.iter().map(|r| r.id).collect();
        let mut tags = self.store.conversation_tags(&ids).await?;
        let keys: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let mut values = self
            .store
            .field_values(FieldTarget::Conversation, &keys)
            .await?;
        Ok(records
            .into_iter()
            .map(|record| {
                let extras = StaffExtras {
                    tags: tags.remove(&record.id).unwrap_or_default(),
                    fields: values.remove(&record.id.to_string()).unwrap_or_default(),
                    pinned_notes: Vec::new(),
                };
                ConversationView::with_extras(record, who, extras)
            })
            .collect())
    }

    pub async fn conversation(
        &self,
        who: &Identity,
        id: ConversationId,
    ) -> Result<ConversationView, ServiceError> {
        let record = self
            .store
            .conversation(id)
            .await?
            .ok_or_else(ServiceError::conversation_not_found)?;
        if !self.remember_access(&record).allows(who) {
            return Err(ServiceError::conversation_not_found());
        }
        if !who.role.is_staff() {
            return Ok(ConversationView::of(record, who));
        }
        let tags = self
            .store
            .conversation_tags(&[id])
            .await?
            .remove(&id)
            .unwrap_or_default();
        let fields = self
            .store
            .field_values(FieldTarget::Conversation, &[id.to_string()])
            .await?
            .remove(&id.to_string())
            .unwrap_or_default();
        let pinned = self
            .store
            .pinned_notes(id, record.contact_id.as_ref())
            .await?;
        let pinned_notes = self.visible_notes(who, pinned).await?;
        Ok(ConversationView::with_extras(
            record,
            who,
            StaffExtras {
                tags,
                fields,
                pinned_notes,
            },
        ))
    }

    /// The notes of `notes` that `who` may read: their audience allows it, and their
    /// conversation is in `who`'s inboxes.
    async fn visible_notes(
        &self,
        who: &Identity,
        notes: Vec<NoteRecord>,
    ) -> Result<Vec<PinnedNote>, ServiceError> {
        let mut out = Vec::new();
        for note in notes {
            if note.audience == NoteAudience::Supervisors && !who.role.can_write_supervisor_notes()
            {
                continue;
            }
            if !self.access(note.conversation_id).await?.allows(who) {
                continue;
            }
            out.push(PinnedNote {
                note_id: note.id,
                conversation_id: note.conversation_id,
                note_type: note.note_type,
                audience: note.audience,
                author: note.author,
                body: note.body,
                at: note.at,
            });
        }
        Ok(out)
    }

    /// A page of the caller's stream. Customers' pages are built from [`PublicEvent`]s
    /// only.
    pub async fn history(
        &self,
        who: &Identity,
        id: ConversationId,
        after: u64,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ServiceError> {
        let record = self
            .store
            .conversation(id)
            .await?
            .ok_or_else(ServiceError::conversation_not_found)?;
        if !self.remember_access(&record).allows(who) {
            return Err(ServiceError::conversation_not_found());
        }
        let audience = who.role.audience();
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let events = self.store.events_after(id, audience, after, limit).await?;
        Ok(HistoryPage {
            conversation_id: id,
            events: entries_for(audience, events),
            head: record.heads.get(audience),
        })
    }

    /// A public message: from the customer, or an agent's reply. With `based_on_seq`,
    /// refused with `conflict` if someone else's message or note arrived after it.
    pub async fn send_message(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_id: String,
        body: String,
        based_on_seq: Option<u64>,
    ) -> Result<AppendResult, ServiceError> {
        validate_client_id(&client_id)?;
        validate_body(&body)?;
        self.authorize_view(who, conversation).await?;
        let guard = based_on_seq.map(|seen| ReplyGuard {
            audience: who.role.audience(),
            seen,
        });
        let event = self.new_event(
            who,
            conversation,
            Some(client_id),
            EventData::Message { body },
        );
        let outcome = self
            .write(
                who,
                WriteRequest::Append {
                    events: vec![event],
                    guard,
                },
            )
            .await?;
        self.result(who, &outcome)
    }

    /// An internal note, for the team or (coaching, QA) for supervisors only. Mentioned
    /// people who may read it are notified.
    pub async fn write_note(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_id: String,
        body: String,
        note_type: Option<NoteType>,
        audience: Option<NoteAudience>,
    ) -> Result<AppendResult, ServiceError> {
        Self::require_staff(who, "write notes")?;
        let audience = audience.unwrap_or_default();
        if audience == NoteAudience::Supervisors && !who.role.can_write_supervisor_notes() {
            return Err(ServiceError::forbidden(
                "only supervisors and admins write supervisors-only notes",
            ));
        }
        validate_client_id(&client_id)?;
        validate_body(&body)?;
        let access = self.access_for(who, conversation).await?;
        let note = self
            .note_event(
                who,
                conversation,
                &access,
                Some(client_id),
                body,
                note_type.unwrap_or_default(),
                audience,
            )
            .await?;
        let outcome = self.write(who, WriteRequest::append(note)).await?;
        let mut result = self.result(who, &outcome)?;
        result.mentioned = Some(match outcome.event().map(|e| &e.view.data) {
            Some(EventData::Note { mentions, .. }) => mentions.clone(),
            _ => Vec::new(),
        });
        Ok(result)
    }

    /// Builds a note event, resolving its @mentions to the people who may read it.
    #[allow(clippy::too_many_arguments)]
    async fn note_event(
        &self,
        who: &Identity,
        conversation: ConversationId,
        access: &Access,
        client_id: Option<String>,
        body: String,
        note_type: NoteType,
        audience: NoteAudience,
    ) -> Result<NewEvent, ServiceError> {
        let mentions = self.resolve_mentions(who, access, &body, audience).await?;
        Ok(self.new_event(
            who,
            conversation,
            client_id,
            EventData::Note {
                body,
                note_type,
                audience,
                mentions,
            },
        ))
    }

    /// `@handle` and `@team` names in `body`, resolved to staff who may read the note:
    /// they work in the conversation's inbox and, for a supervisors-only note, are
    /// supervisors or admins. A name that matches nobody allowed notifies nobody.
    async fn resolve_mentions(
        &self,
        who: &Identity,
        access: &Access,
        body: &str,
        audience: NoteAudience,
    ) -> Result<Vec<UserId>, ServiceError> {
        let names = mentions::parse(body);
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut users: Vec<UserId> = self
            .store
            .mention_candidates(&names)
            .await?
            .into_iter()
            .filter(|entry| entry.id != who.user_id)
            .filter(|entry| entry.role.is_staff() && entry.may_work_in(&access.inbox_id))
            .filter(|entry| {
                audience == NoteAudience::Agents || entry.role.can_write_supervisor_notes()
            })
            .map(|entry| entry.id)
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Replaces a note's text. Only its author may; the old text stays in the history.
    pub async fn edit_note(
        &self,
        who: &Identity,
        conversation: ConversationId,
        note_id: EventId,
        body: String,
    ) -> Result<AppendResult, ServiceError> {
        Self::require_staff(who, "edit notes")?;
        validate_body(&body)?;
        self.authorize_view(who, conversation).await?;
        let note = self.note_in(who, conversation, note_id).await?;
        if note.author.id != who.user_id {
            return Err(ServiceError::forbidden("only a note's author edits it"));
        }
        let event = self.new_event(
            who,
            conversation,
            None,
            EventData::NoteEdited {
                note_id,
                body,
                audience: note.audience,
            },
        );
        let outcome = self.write(who, WriteRequest::append(event)).await?;
        self.result(who, &outcome)
    }

    /// Pins a note to its conversation (a pinned `context` note also shows in the
    /// contact's other conversations), or unpins it.
    pub async fn pin_note(
        &self,
        who: &Identity,
        conversation: ConversationId,
        note_id: EventId,
        pinned: bool,
    ) -> Result<AppendResult, ServiceError> {
        Self::require_staff(who, "pin notes")?;
        self.authorize_view(who, conversation).await?;
        let note = self.note_in(who, conversation, note_id).await?;
        let event = self.new_event(
            who,
            conversation,
            None,
            EventData::NotePinned {
                note_id,
                pinned,
                audience: note.audience,
            },
        );
        let outcome = self.write(who, WriteRequest::append(event)).await?;
        self.result(who, &outcome)
    }

    /// The note `note_id` of `conversation`, if `who` may read it.
    async fn note_in(
        &self,
        who: &Identity,
        conversation: ConversationId,
        note_id: EventId,
    ) -> Result<NoteRecord, ServiceError> {
        match self.store.note(note_id).await? {
            Some(note)
                if note.conversation_id == conversation
                    && (note.audience == NoteAudience::Agents
                        || who.role.can_write_supervisor_notes()) =>
            {
                Ok(note)
            }
            _ => Err(ServiceError::NotFound("note".into())),
        }
    }

    /// Hands the conversation to an assignee and/or team, with an optional handoff note,
    /// in one atomic append; the new assignee is notified.
    pub async fn assign(
        &self,
        who: &Identity,
        conversation: ConversationId,
        assignee_id: Option<UserId>,
        team_id: Option<TeamId>,
        note: Option<String>,
    ) -> Result<AppendResult, ServiceError> {
        Self::require_staff(who, "assign conversations")?;
        let access = self.access_for(who, conversation).await?;
        if let Some(assignee) = &assignee_id {
            let entry = self.store.directory_entry(assignee).await?;
            match entry {
                Some(entry) if entry.role.is_staff() && entry.may_work_in(&access.inbox_id) => {}
                Some(_) => {
                    return Err(ServiceError::bad_request(format!(
                        "`{assignee}` does not work in this conversation's inbox"
                    )))
                }
                None => {
                    return Err(ServiceError::bad_request(format!(
                        "unknown assignee `{assignee}` (staff are known once they have connected)"
                    )))
                }
            }
        }
        if let Some(team) = &team_id {
            if self.store.team(team).await?.is_none() {
                return Err(ServiceError::bad_request(format!(
                    "unknown team `{team}`; an admin defines it with PUT /v1/teams/{team}"
                )));
            }
        }
        let mut events = vec![self.new_event(
            who,
            conversation,
            None,
            EventData::Assigned {
                assignee_id,
                team_id,
            },
        )];
        if let Some(body) = note {
            validate_body(&body)?;
            let handoff = self
                .note_event(
                    who,
                    conversation,
                    &access,
                    None,
                    body,
                    NoteType::Transfer,
                    NoteAudience::Agents,
                )
                .await?;
            events.push(handoff);
        }
        let outcome = self
            .write(
                who,
                WriteRequest::Append {
                    events,
                    guard: None,
                },
            )
            .await?;
        let mut result = self.result(who, &outcome)?;
        result.mentioned = outcome.events.get(1).and_then(|e| match &e.view.data {
            EventData::Note { mentions, .. } => Some(mentions.clone()),
            _ => None,
        });
        Ok(result)
    }

    /// Changes the status. Resolving needs every required conversation field set.
    pub async fn set_status(
        &self,
        who: &Identity,
        conversation: ConversationId,
        status: Status,
    ) -> Result<AppendResult, ServiceError> {
        Self::require_staff(who, "change a conversation's status")?;
        self.authorize_view(who, conversation).await?;
        if status == Status::Resolved {
            let required: Vec<FieldDefinition> = self
                .store
                .fields()
                .await?
                .into_iter()
                .filter(|f| f.required && f.applies_to == FieldTarget::Conversation)
                .collect();
            if !required.is_empty() {
                let values = self
                    .store
                    .field_values(FieldTarget::Conversation, &[conversation.to_string()])
                    .await?
                    .remove(&conversation.to_string())
                    .unwrap_or_default();
                let missing: Vec<&str> = required
                    .iter()
                    .filter(|f| !values.contains_key(&f.key))
                    .map(|f| f.key.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Err(ServiceError::bad_request(format!(
                        "set the required fields before resolving: {}",
                        missing.join(", ")
                    )));
                }
            }
        }
        let event = self.new_event(who, conversation, None, EventData::StatusChanged { status });
        let outcome = self.write(who, WriteRequest::append(event)).await?;
        self.result(who, &outcome)
    }

    /// Adds and removes tags. `None` when nothing would change.
    pub async fn tag(
        &self,
        who: &Identity,
        conversation: ConversationId,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Option<AppendResult>, ServiceError> {
        Self::require_staff(who, "tag conversations")?;
        if add.is_empty() && remove.is_empty() {
            return Err(ServiceError::bad_request("give tags to `add` or `remove`"));
        }
        for name in add.iter().chain(&remove) {
            validate_name(name, "tag")?;
        }
        self.authorize_view(who, conversation).await?;
        let defined: Vec<String> = self
            .store
            .tags()
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if let Some(unknown) = add.iter().find(|t| !defined.contains(t)) {
            return Err(ServiceError::bad_request(format!(
                "unknown tag `{unknown}`; an admin defines it with PUT /v1/tags/{unknown}"
            )));
        }
        let current = self
            .store
            .conversation_tags(&[conversation])
            .await?
            .remove(&conversation)
            .unwrap_or_default();
        let mut added: Vec<String> = add
            .into_iter()
            .filter(|t| !current.contains(t) && !remove.contains(t))
            .collect();
        added.sort();
        added.dedup();
        let mut removed: Vec<String> = remove.into_iter().filter(|t| current.contains(t)).collect();
        removed.sort();
        removed.dedup();
        if current.len() + added.len() - removed.len() > MAX_TAGS_PER_CONVERSATION {
            return Err(ServiceError::bad_request(format!(
                "at most {MAX_TAGS_PER_CONVERSATION} tags per conversation"
            )));
        }
        if added.is_empty() && removed.is_empty() {
            return Ok(None);
        }
        let event = self.new_event(
            who,
            conversation,
            None,
            EventData::TagsChanged { added, removed },
        );
        let outcome = self.write(who, WriteRequest::append(event)).await?;
        self.result(who, &outcome).map(Some)
    }

    /// Sets custom field values on a conversation or a contact. Every value is checked
    /// against its definition first: one wrong value changes nothing.
    pub async fn set_fields(
        &self,
        who: &Identity,
        target: FieldTarget,
        id: String,
        values: BTreeMap<String, serde_json::Value>,
    ) -> Result<AppendResult, ServiceError> {
        Self::require_staff(who, "set fields")?;
        if values.is_empty() || values.len() > MAX_FIELDS_PER_CALL {
            return Err(ServiceError::bad_request(format!(
                "`fields` must hold 1 to {MAX_FIELDS_PER_CALL} values"
            )));
        }
        let definitions = self.store.fields().await?;
        let mut changes = BTreeMap::new();
        for (key, value) in values {
            let definition = definitions
                .iter()
                .find(|d| d.key == key)
                .ok_or_else(|| ServiceError::bad_request(format!("unknown field `{key}`")))?;
            if definition.applies_to != target {
                return Err(ServiceError::bad_request(format!(
                    "field `{key}` applies to {}s",
                    definition.applies_to.as_str()
                )));
            }
            fields::check(definition, &value).map_err(ServiceError::BadRequest)?;
            changes.insert(key, fields::normalize(value));
        }
        let conversations: Vec<ConversationId> = match target {
            FieldTarget::Conversation => {
                let conversation: ConversationId = id
                    .parse()
                    .map_err(|_| ServiceError::bad_request("`id` is not a conversation id"))?;
                self.authorize_view(who, conversation).await?;
                vec![conversation]
            }
            FieldTarget::Contact => {
                // A contact's fields are recorded in the timeline of each of their
                // conversations the caller may see.
                let contact = UserId(id.clone());
                let mut visible = Vec::new();
                for record in self
                    .store
                    .contact_conversations(&contact, CONTACT_FAN_OUT)
                    .await?
                {
                    if self.remember_access(&record).allows(who) {
                        visible.push(record.id);
                    }
                }
                if visible.is_empty() {
                    return Err(ServiceError::NotFound("contact".into()));
                }
                visible
            }
        };
        let mut first = None;
        for conversation in conversations {
            let event = self.new_event(
                who,
                conversation,
                None,
                EventData::FieldsChanged {
                    target,
                    target_id: id.clone(),
                    changes: changes.clone(),
                },
            );
            let outcome = self.write(who, WriteRequest::append(event)).await?;
            if first.is_none() {
                first = Some(self.result(who, &outcome)?);
            }
        }
        first.ok_or(ServiceError::Internal)
    }

    fn new_event(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_id: Option<String>,
        data: EventData,
    ) -> NewEvent {
        NewEvent {
            id: EventId::new(),
            conversation_id: conversation,
            at: store::now(),
            actor: actor(who),
            client_id,
            data,
        }
    }

    /// Writes and waits for durability; a tripped reply guard becomes `conflict` with
    /// the missed events in `who`'s stream.
    async fn write(
        &self,
        who: &Identity,
        request: WriteRequest,
    ) -> Result<WriteOutcome, ServiceError> {
        match self.writer.write(request).await {
            Ok(outcome) => Ok(outcome),
            Err(WriteError::Refused(WriteRefusal::Unseen(events))) => Err(ServiceError::Conflict {
                message: "new messages or notes arrived since the seq you replied to; \
                          read them and send again"
                    .into(),
                missed: entries_for(who.role.audience(), events),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The `ok` of an append: the main event's id and its `seq` in `who`'s stream.
    fn result(&self, who: &Identity, outcome: &WriteOutcome) -> Result<AppendResult, ServiceError> {
        let event = outcome.event().ok_or(ServiceError::Internal)?;
        // The author can always see their own events, in their own stream.
        let seq = event
            .seqs
            .for_audience(who.role.audience())
            .ok_or(ServiceError::Internal)?;
        Ok(AppendResult {
            event_id: event.view.id,
            seq,
            duplicate: outcome.duplicate,
            mentioned: None,
        })
    }

    /// Makes the socket's subscription live after replaying what follows `since`.
    pub async fn subscribe(
        &self,
        who: &Identity,
        conn: ConnId,
        seat: Seat,
        conversation: ConversationId,
        since: Option<u64>,
    ) -> Result<SubscribeResult, ServiceError> {
        self.authorize_view(who, conversation).await?;
        Ok(self.hub.subscribe(conversation, conn, seat, since).await?)
    }

    pub fn unsubscribe(&self, conn: ConnId, conversation: ConversationId) {
        self.hub.unsubscribe(conversation, conn);
    }

    /// Relays a typing indicator. Not stored. The caller must be subscribed (checked by
    /// the socket, which knows its subscriptions).
    pub fn typing(
        &self,
        who: &Identity,
        conn: ConnId,
        conversation: ConversationId,
        audience: TypingAudience,
    ) -> Result<(), ServiceError> {
        if audience == TypingAudience::Internal && !who.role.is_staff() {
            return Err(ServiceError::forbidden("only staff write notes"));
        }
        self.hub.typing(
            conn,
            Typing {
                conversation_id: conversation,
                user: actor(who),
                audience,
            },
        );
        Ok(())
    }

    pub async fn notifications(
        &self,
        who: &Identity,
        unread_only: bool,
        limit: Option<u32>,
    ) -> Result<NotificationsPage, ServiceError> {
        Self::require_staff(who, "have notifications")?;
        let limit = limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS);
        Ok(NotificationsPage {
            notifications: self
                .store
                .notifications(&who.user_id, unread_only, limit)
                .await?,
            unread: self.store.unread_notifications(&who.user_id).await?,
        })
    }

    /// Marks notifications read: the listed ids, or all up to an id, or (neither) all.
    pub async fn read_notifications(
        &self,
        who: &Identity,
        ids: Option<Vec<u64>>,
        up_to: Option<u64>,
    ) -> Result<ReadResult, ServiceError> {
        Self::require_staff(who, "have notifications")?;
        let which = match (ids, up_to) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::bad_request("give `ids` or `up_to`, not both"))
            }
            (Some(ids), None) if ids.len() > 1000 => {
                return Err(ServiceError::bad_request("at most 1000 `ids`"))
            }
            (Some(ids), None) => MarkRead::Ids(ids),
            (None, Some(up_to)) => MarkRead::UpTo(up_to),
            (None, None) => MarkRead::All,
        };
        let marked = self
            .store
            .mark_notifications_read(&who.user_id, &which)
            .await?;
        Ok(ReadResult {
            marked,
            unread: self.store.unread_notifications(&who.user_id).await?,
        })
    }

    /// Full-text search over the notes `who` may read.
    pub async fn search_notes(
        &self,
        who: &Identity,
        query: SearchQuery,
    ) -> Result<SearchPage, ServiceError> {
        Self::require_staff(who, "search notes")?;
        let terms: Vec<String> = query
            .q
            .split_whitespace()
            .take(16)
            .map(|t| t.chars().take(64).collect())
            .collect();
        if terms.is_empty() {
            return Err(ServiceError::bad_request("`q` needs at least one word"));
        }
        let search = NoteSearch {
            terms,
            inboxes: match &who.inboxes {
                InboxScope::All => None,
                InboxScope::Only(set) => Some(set.iter().cloned().collect()),
            },
            include_supervisors: who.role.can_write_supervisor_notes(),
            note_type: query.note_type,
            author: query.author,
            tag: query.tag,
            limit: query.limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS),
        };
        let results = self
            .store
            .search_notes(&search)
            .await?
            .into_iter()
            .map(|note| SearchHit {
                conversation_id: note.conversation_id,
                note_id: note.id,
                note_type: note.note_type,
                audience: note.audience,
                author: note.author,
                body: note.body,
                at: note.at,
            })
            .collect();
        Ok(SearchPage { results })
    }

    /// Every event of a conversation with its chain hash, and whether the chain verifies.
    pub async fn audit(
        &self,
        who: &Identity,
        conversation: ConversationId,
    ) -> Result<AuditReport, ServiceError> {
        if !who.role.can_write_supervisor_notes() {
            return Err(ServiceError::forbidden(
                "only supervisors and admins read the audit trail",
            ));
        }
        self.authorize_view(who, conversation).await?;
        let rows = self.store.audit_rows(conversation).await?;
        let head = self.store.last_hash(conversation).await?;
        let first_break = chain::verify(&rows, head.as_deref())
            .err()
            .map(|b| ChainBreak {
                seq: b.seq,
                event_id: b.event_id,
                reason: b.reason,
            });
        let events = rows
            .iter()
            .filter_map(|row| {
                let view = row.view().ok()?;
                Some(AuditEntry {
                    seq: row.supervisor_seq as u64,
                    visibility: view.data.visibility(),
                    event: view,
                    hash: hex::encode(&row.hash),
                })
            })
            .collect();
        Ok(AuditReport {
            conversation_id: conversation,
            verified: first_break.is_none(),
            first_break,
            events,
        })
    }

    /// A contact as staff see them: fields, pinned context notes, conversations.
    pub async fn contact(&self, who: &Identity, id: UserId) -> Result<Contact, ServiceError> {
        Self::require_staff(who, "look up contacts")?;
        let mut conversations = Vec::new();
        for record in self
            .store
            .contact_conversations(&id, CONTACT_FAN_OUT)
            .await?
        {
            if self.remember_access(&record).allows(who) {
                conversations.push(record.id);
            }
        }
        let Some(&latest) = conversations.first() else {
            return Err(ServiceError::NotFound("contact".into()));
        };
        let fields = self
            .store
            .field_values(FieldTarget::Contact, std::slice::from_ref(&id.0))
            .await?
            .remove(&id.0)
            .unwrap_or_default();
        let pinned = self
            .store
            .pinned_notes(latest, Some(&id))
            .await?
            .into_iter()
            .filter(|n| n.note_type == NoteType::Context)
            .collect();
        Ok(Contact {
            id,
            fields,
            pinned_notes: self.visible_notes(who, pinned).await?,
            conversations,
        })
    }

    pub async fn put_inbox(
        &self,
        who: &Identity,
        id: InboxId,
        name: Option<String>,
    ) -> Result<Inbox, ServiceError> {
        Self::require_admin(who, "define inboxes")?;
        validate_inbox_id(&id)?;
        let name = name.unwrap_or_else(|| id.to_string());
        validate_label(&name, "inbox name")?;
        self.store.put_inbox(&id, &name).await?;
        Ok(Inbox { id, name })
    }

    pub async fn put_tag(
        &self,
        who: &Identity,
        name: String,
        body: PutTag,
    ) -> Result<TagDefinition, ServiceError> {
        Self::require_admin(who, "define tags")?;
        validate_name(&name, "tag")?;
        let existing = self.store.tags().await?;
        if existing.len() >= MAX_DEFINITIONS && !existing.iter().any(|t| t.name == name) {
            return Err(ServiceError::bad_request(format!(
                "at most {MAX_DEFINITIONS} tags"
            )));
        }
        if let Some(description) = &body.description {
            validate_label(description, "description")?;
        }
        if let Some(color) = &body.color {
            validate_label(color, "color")?;
        }
        let tag = TagDefinition {
            name,
            color: body.color,
            description: body.description,
        };
        self.store.put_tag(&tag).await?;
        Ok(tag)
    }

    pub async fn tags(&self, who: &Identity) -> Result<Vec<TagDefinition>, ServiceError> {
        Self::require_staff(who, "list tags")?;
        Ok(self.store.tags().await?)
    }

    /// Removes a definition; conversations keep the tag in their history.
    pub async fn delete_tag(&self, who: &Identity, name: String) -> Result<(), ServiceError> {
        Self::require_admin(who, "delete tags")?;
        if self.store.delete_tag(&name).await? {
            Ok(())
        } else {
            Err(ServiceError::NotFound("tag".into()))
        }
    }

    pub async fn put_field(
        &self,
        who: &Identity,
        key: String,
        body: PutField,
    ) -> Result<FieldDefinition, ServiceError> {
        Self::require_admin(who, "define fields")?;
        validate_name(&key, "field key")?;
        let existing = self.store.fields().await?;
        if existing.len() >= MAX_DEFINITIONS && !existing.iter().any(|f| f.key == key) {
            return Err(ServiceError::bad_request(format!(
                "at most {MAX_DEFINITIONS} fields"
            )));
        }
        let is_list = body.field_type == backchannel_protocol::http::FieldType::List;
        if is_list && body.options.is_empty() {
            return Err(ServiceError::bad_request("a `list` field needs `options`"));
        }
        if !is_list && !body.options.is_empty() {
            return Err(ServiceError::bad_request(
                "only `list` fields take `options`",
            ));
        }
        if body.options.len() > 200 {
            return Err(ServiceError::bad_request("at most 200 options"));
        }
        for option in &body.options {
            validate_label(option, "option")?;
        }
        let label = body.label.unwrap_or_else(|| key.clone());
        validate_label(&label, "label")?;
        let field = FieldDefinition {
            key,
            field_type: body.field_type,
            applies_to: body.applies_to,
            label,
            required: body.required,
            options: body.options,
        };
        self.store.put_field(&field).await?;
        Ok(field)
    }

    pub async fn fields(&self, who: &Identity) -> Result<Vec<FieldDefinition>, ServiceError> {
        Self::require_staff(who, "list fields")?;
        Ok(self.store.fields().await?)
    }

    async fn field_definition(
        &self,
        key: &str,
        target: FieldTarget,
    ) -> Result<FieldDefinition, ServiceError> {
        self.store
            .fields()
            .await?
            .into_iter()
            .find(|f| f.key == key && f.applies_to == target)
            .ok_or_else(|| ServiceError::bad_request(format!("unknown field `{key}`")))
    }

    pub async fn put_team(
        &self,
        who: &Identity,
        id: TeamId,
        body: PutTeam,
    ) -> Result<Team, ServiceError> {
        Self::require_admin(who, "define teams")?;
        validate_name(id.as_str(), "team id")?;
        let name = body.name.unwrap_or_else(|| id.to_string());
        validate_label(&name, "team name")?;
        let team = Team { id, name };
        self.store.put_team(&team).await?;
        Ok(team)
    }

    pub async fn teams(&self, who: &Identity) -> Result<Vec<Team>, ServiceError> {
        Self::require_staff(who, "list teams")?;
        Ok(self.store.teams().await?)
    }

    /// Store reachable (for `/readyz`).
    pub async fn ready(&self) -> Result<(), ServiceError> {
        Ok(self.store.ping().await?)
    }

    /// Commits what is queued, stops background work, closes the store.
    pub async fn shutdown(&self) {
        self.writer.shutdown().await;
        self.hub.shutdown().await;
        self.store.close().await;
    }
}

/// History entries of `events` in `audience`'s stream; for customers, built from
/// [`PublicEvent`]s only.
fn entries_for(audience: Audience, events: Vec<Event>) -> Vec<HistoryEntry> {
    match audience {
        Audience::Customer => events
            .into_iter()
            .filter_map(|event| PublicEvent::try_from(Arc::new(event)).ok())
            .map(|public| HistoryEntry {
                seq: public.seq(),
                event: public.view().clone(),
            })
            .collect(),
        staff => events
            .into_iter()
            .filter_map(|event| {
                let seq = event.seqs.for_audience(staff)?;
                Some(HistoryEntry {
                    seq,
                    event: event.view,
                })
            })
            .collect(),
    }
}

fn actor(who: &Identity) -> Actor {
    Actor {
        id: who.user_id.clone(),
        role: who.role,
        name: who.name.clone(),
    }
}

fn validate_body(body: &str) -> Result<(), ServiceError> {
    if body.trim().is_empty() || body.len() > MAX_BODY_BYTES {
        return Err(ServiceError::bad_request(format!(
            "`body` must be 1 to {MAX_BODY_BYTES} bytes and not blank"
        )));
    }
    Ok(())
}

fn validate_client_id(client_id: &str) -> Result<(), ServiceError> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(ServiceError::bad_request(format!(
            "`client_id` must be 1 to {MAX_CLIENT_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

fn validate_inbox_id(id: &InboxId) -> Result<(), ServiceError> {
    let s = id.as_str();
    let ok = !s.is_empty()
        && s.len() <= MAX_INBOX_ID
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "inbox id must be 1 to {MAX_INBOX_ID} characters of A-Z, a-z, 0-9, `_`, `.`, `-`"
        )))
    }
}

/// Tag names, field keys and team ids: 1 to 64 of `a-z`, `0-9`, `_`, `-`, `.`, `:`.
fn validate_name(name: &str, what: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | ':')
        });
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "{what} must be 1 to 64 characters of a-z, 0-9, `_`, `-`, `.`, `:`"
        )))
    }
}

fn validate_label(text: &str, what: &str) -> Result<(), ServiceError> {
    if text.is_empty() || text.len() > MAX_INBOX_NAME {
        return Err(ServiceError::bad_request(format!(
            "{what} must be 1 to {MAX_INBOX_NAME} bytes"
        )));
    }
    Ok(())
}
