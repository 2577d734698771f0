//! The one write path: every command, from a socket or from HTTP, goes through here.
//!
//! The service decides who may do what (a customer reaches only conversations whose
//! contact they are; staff only those of their inboxes), validates input, builds events,
//! and hands them to the writer, answering only once they are durable. It knows nothing
//! of HTTP or WebSocket framing; `ws` and `api` translate to and from it.

use std::sync::Arc;

use backchannel_protocol::client::TypingAudience;
use backchannel_protocol::http::{
    CustomerConversation, HistoryEntry, HistoryPage, Inbox, OpenConversation, StaffConversation,
};
use backchannel_protocol::server::{AppendResult, SubscribeResult};
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, InboxId, NoteAudience, NoteType, Role,
    UserId, MAX_BODY_BYTES, MAX_CLIENT_ID_BYTES,
};
use dashmap::DashMap;
use serde::Serialize;

use crate::auth::{Identity, InboxScope, Keys};
use crate::error::ServiceError;
use crate::hub::{ConnId, Hub, Seat};
use crate::store::writer::Writer;
use crate::store::{
    self, ConversationFilter, ConversationRecord, DirectoryEntry, Heads, NewConversation, NewEvent,
    Store, WriteOutcome, WriteRequest,
};
use crate::visibility::{PublicEvent, Typing};

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

impl ConversationView {
    fn of(record: ConversationRecord, who: &Identity) -> ConversationView {
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
                handle: identity.handle.clone(),
                teams: identity.teams.clone(),
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
        if self.access(id).await?.allows(who) {
            Ok(())
        } else {
            Err(ServiceError::conversation_not_found())
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
                    Some(contact) if !contact.as_str().is_empty() && contact.as_str().len() <= 128 => {
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
            .write(WriteRequest::Open(NewConversation {
                id,
                inbox_id: request.inbox_id.clone(),
                contact_id: Some(contact_id.clone()),
                subject: request.subject.clone(),
                opened,
            }))
            .await?;
        let record = ConversationRecord {
            id,
            inbox_id: request.inbox_id,
            contact_id: Some(contact_id),
            subject: request.subject,
            status: "open".into(),
            assignee_id: None,
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
        let inboxes = match (&who.inboxes, who.role, query.inbox) {
            (_, Role::Customer, inbox) => inbox.map(|i| vec![i]),
            (InboxScope::All, _, inbox) => inbox.map(|i| vec![i]),
            (InboxScope::Only(set), _, Some(inbox)) => Some(if set.contains(&inbox) {
                vec![inbox]
            } else {
                vec![]
            }),
            (InboxScope::Only(set), _, None) => Some(set.iter().cloned().collect()),
        };
        let filter = ConversationFilter {
            inboxes,
            contact_id: (who.role == Role::Customer).then(|| who.user_id.clone()),
            // What a customer may filter on must not reveal internal state.
            status: query.status,
            assignee_id: if who.role == Role::Customer {
                None
            } else {
                query.assignee
            },
            limit,
        };
        let records = self.store.conversations(&filter).await?;
        Ok(records
            .into_iter()
            .map(|record| ConversationView::of(record, who))
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
        Ok(ConversationView::of(record, who))
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
        let events = match audience {
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
        };
        Ok(HistoryPage {
            conversation_id: id,
            events,
            head: record.heads.get(audience),
        })
    }

    /// A public message: from the customer, or an agent's reply.
    pub async fn send_message(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_id: String,
        body: String,
    ) -> Result<AppendResult, ServiceError> {
        validate_client_id(&client_id)?;
        validate_body(&body)?;
        self.authorize_view(who, conversation).await?;
        self.append(who, conversation, client_id, EventData::Message { body })
            .await
    }

    /// An internal note, for the team or (coaching, QA) for supervisors only.
    pub async fn write_note(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_id: String,
        body: String,
        note_type: Option<NoteType>,
        audience: Option<NoteAudience>,
    ) -> Result<AppendResult, ServiceError> {
        if !who.role.can_write_notes() {
            return Err(ServiceError::forbidden("only staff write notes"));
        }
        let audience = audience.unwrap_or_default();
        if audience == NoteAudience::Supervisors && !who.role.can_write_supervisor_notes() {
            return Err(ServiceError::forbidden(
                "only supervisors and admins write supervisors-only notes",
            ));
        }
        validate_client_id(&client_id)?;
        validate_body(&body)?;
        self.authorize_view(who, conversation).await?;
        let mut result = self
            .append(
                who,
                conversation,
                client_id,
                EventData::Note {
                    body,
                    note_type: note_type.unwrap_or_default(),
                    audience,
                },
            )
            .await?;
        result.mentioned = Some(Vec::new());
        Ok(result)
    }

    async fn append(
        &self,
        who: &Identity,
        conversation: ConversationId,
        client_id: String,
        data: EventData,
    ) -> Result<AppendResult, ServiceError> {
        let outcome = self
            .writer
            .write(WriteRequest::Append(NewEvent {
                id: EventId::new(),
                conversation_id: conversation,
                at: store::now(),
                actor: actor(who),
                client_id: Some(client_id),
                data,
            }))
            .await?;
        let event = outcome.event();
        // The author can always see their own events, in their own stream.
        let seq = event
            .seqs
            .for_audience(who.role.audience())
            .ok_or(ServiceError::Internal)?;
        Ok(AppendResult {
            event_id: event.view.id,
            seq,
            duplicate: matches!(outcome, WriteOutcome::Duplicate(_)),
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

    pub async fn put_inbox(
        &self,
        who: &Identity,
        id: InboxId,
        name: Option<String>,
    ) -> Result<Inbox, ServiceError> {
        if !who.role.can_manage_definitions() {
            return Err(ServiceError::forbidden("only admins define inboxes"));
        }
        validate_inbox_id(&id)?;
        let name = name.unwrap_or_else(|| id.to_string());
        if name.is_empty() || name.len() > MAX_INBOX_NAME {
            return Err(ServiceError::bad_request(format!(
                "inbox name must be 1 to {MAX_INBOX_NAME} bytes"
            )));
        }
        self.store.put_inbox(&id, &name).await?;
        Ok(Inbox { id, name })
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
