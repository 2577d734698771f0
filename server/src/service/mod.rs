//! The one write path: every command, from a socket or from HTTP, goes through here.
//!
//! The service decides who may do what (a customer reaches only conversations whose
//! contact they are; staff only those of their inboxes), validates input, builds events,
//! and hands them to the writer, answering only once they are durable. It knows nothing
//! of HTTP or WebSocket framing; `ws` and `api` translate to and from it.
//!
//! This file holds what every command shares (identity, access, writing, the result of
//! an append, subscriptions); the commands themselves are grouped by what they act on:
//! `conversations`, `notes`, `notifications`, `definitions`.

mod conversations;
mod definitions;
mod notes;
mod notifications;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use backchannel_protocol::client::TypingAudience;
use backchannel_protocol::http::{
    AuditEntry, AuditReport, ChainBreak, Contact, CustomerConversation, FieldDefinition,
    HistoryEntry, HistoryPage, Inbox, NotificationsPage, OpenConversation, PinnedNote, PutField,
    PutTag, PutTeam, SearchHit, SearchPage, StaffConversation, TagDefinition, Team,
};
use backchannel_protocol::server::{AgentPresence, AppendResult, ReadResult, SubscribeResult};
use backchannel_protocol::{
    Actor, Audience, ConversationId, EventData, EventId, FieldTarget, InboxId, NoteAudience,
    NoteType, Role, Status, TeamId, UserId, MAX_BODY_BYTES, MAX_CLIENT_ID_BYTES,
};
use dashmap::DashMap;
use serde::Serialize;

use crate::auth::{Identity, InboxScope, Keys};
use crate::error::ServiceError;
use crate::hub::{ConnId, Hub, Seat, SubscribeOk};
use crate::store::writer::{WriteError, Writer};
use crate::store::{
    self, chain, ConversationFilter, ConversationRecord, DirectoryEntry, Event, Heads, MarkRead,
    NewConversation, NewEvent, NoteRecord, NoteSearch, NotificationReader, ReplyGuard, Store,
    WriteOutcome, WriteRefusal, WriteRequest,
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
/// Most field values set at once.
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
    /// One of the statuses: anything else is `bad_request`, not an empty list.
    pub status: Option<Status>,
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
    /// Staff as last written to the directory, to skip rewriting unchanged entries: a
    /// fingerprint of each user's entry (a keyed hash of the whole entry) under a hash of
    /// their id. Every staff user who connects has one, so it is kept small: 16 bytes
    /// rather than a copy of the entry and its strings. A user whose id hash another
    /// user's shares only costs a store read.
    directory: DashMap<u64, u64>,
    fingerprints: RandomState,
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
            fingerprints: RandomState::new(),
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
            let user = self.fingerprints.hash_one(&entry.id);
            let fingerprint = self.fingerprints.hash_one(&entry);
            let known = self
                .directory
                .get(&user)
                .is_some_and(|seen| *seen == fingerprint);
            if !known {
                // Not seen by this node since it started: the store may hold it already
                // (a reconnect after a restart, or a user another node saw first). A read
                // costs no fsync; a write costs one, and the thousands of reconnects
                // after a restart would queue behind one another for them.
                let stored = self.store.directory_entry(&entry.id).await?;
                if stored.as_ref() != Some(&entry) {
                    self.store.upsert_directory_entry(&entry).await?;
                }
                self.directory.insert(user, fingerprint);
            }
        }
        Ok(identity)
    }

    /// A staff socket's session: it receives the user's notifications until closed.
    pub async fn open_session(&self, who: &Identity, conn: ConnId, outbox: StaffOutbox) {
        self.hub
            .register_session(actor(who), who.inboxes.clone(), conn, outbox)
            .await;
    }

    pub fn close_session(&self, who: &Identity, conn: ConnId) {
        self.hub.unregister_session(&who.user_id, conn);
        self.hub.unwatch_agents(conn);
    }

    /// A staff member did something, so they are not away.
    pub fn touch(&self, who: &Identity) {
        if who.role.is_staff() {
            self.hub.touch(&who.user_id);
        }
    }

    /// Supervisors and admins: the floor now, then its changes on this socket.
    pub async fn watch_agents(
        &self,
        who: &Identity,
        conn: ConnId,
        outbox: StaffOutbox,
    ) -> Result<Vec<AgentPresence>, ServiceError> {
        Self::require_supervisor(who)?;
        Ok(self.hub.watch_agents(conn, outbox).await?)
    }

    pub fn unwatch_agents(&self, conn: ConnId) {
        self.hub.unwatch_agents(conn);
    }

    /// `GET /v1/agents`: every staff member with their presence across the cluster.
    pub async fn agents(&self, who: &Identity) -> Result<Vec<AgentPresence>, ServiceError> {
        Self::require_supervisor(who)?;
        Ok(self.hub.agents_snapshot().await?)
    }

    /// The floor (`watch_agents`, `GET /v1/agents`) spans every inbox: who views which
    /// conversation, how many each has open. A supervisor scoped to some inboxes would
    /// learn other inboxes' conversation ids from it, which `not_found` hides everywhere
    /// else, so it is for supervisors and admins of every inbox.
    fn require_supervisor(who: &Identity) -> Result<(), ServiceError> {
        if !who.role.can_write_supervisor_notes() {
            return Err(ServiceError::forbidden(
                "only supervisors and admins see the agents' presence",
            ));
        }
        if who.inboxes != InboxScope::All {
            return Err(ServiceError::forbidden(
                "the agents' presence spans every inbox: it is for supervisors and admins \
                 of every inbox",
            ));
        }
        Ok(())
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
    /// the missed events in `who`'s stream, and a `client_id` reused for another command
    /// `bad_request`.
    async fn write(
        &self,
        who: &Identity,
        request: WriteRequest,
    ) -> Result<WriteOutcome, ServiceError> {
        let keyed = match &request {
            WriteRequest::Append { events, .. } => events
                .first()
                .filter(|e| e.client_id.is_some())
                .map(Command::of),
            WriteRequest::Open(_) => None,
        };
        match self.writer.write(request).await {
            Ok(outcome) if outcome.duplicate => {
                let repeats = match (keyed, outcome.event()) {
                    (Some(asked), Some(stored)) => asked == Command::of_stored(stored),
                    _ => false,
                };
                if repeats {
                    Ok(outcome)
                } else {
                    // Answering with the first result would acknowledge this command
                    // while storing nothing of it. Nothing of the first one is said.
                    Err(ServiceError::bad_request(
                        "this client_id was already used for another message or note; \
                         send it with a new client_id",
                    ))
                }
            }
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

    /// Makes the socket's subscription live after replaying what follows `since`; its
    /// `ok` is queued by the room, between the replay and the first live event.
    pub async fn subscribe(
        &self,
        who: &Identity,
        conn: ConnId,
        seat: Seat,
        conversation: ConversationId,
        since: Option<u64>,
        ok: SubscribeOk<'_>,
    ) -> Result<SubscribeResult, ServiceError> {
        self.authorize_view(who, conversation).await?;
        Ok(self
            .hub
            .subscribe(conversation, conn, actor(who), seat, since, ok)
            .await?)
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
        if audience == TypingAudience::Supervisors && !who.role.can_write_supervisor_notes() {
            return Err(ServiceError::forbidden(
                "only supervisors and admins write supervisors-only notes",
            ));
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

/// What a `client_id` stands for, to tell a retry from its reuse: the same conversation,
/// kind (message or note) and role. The words may differ (a client that edited a message
/// while it waited to be retried): the first result stands, as the protocol says, and
/// the event the client then receives carries what was stored.
#[derive(PartialEq)]
struct Command {
    conversation: ConversationId,
    role: Role,
    kind: std::mem::Discriminant<EventData>,
}

impl Command {
    fn of(asked: &NewEvent) -> Command {
        Command {
            conversation: asked.conversation_id,
            role: asked.actor.role,
            kind: std::mem::discriminant(&asked.data),
        }
    }

    fn of_stored(stored: &Event) -> Command {
        Command {
            conversation: stored.conversation_id,
            role: stored.view.actor.role,
            kind: std::mem::discriminant(&stored.view.data),
        }
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
    no_nul(body, "body")?;
    if body.trim().is_empty() || body.len() > MAX_BODY_BYTES {
        return Err(ServiceError::bad_request(format!(
            "`body` must be 1 to {MAX_BODY_BYTES} bytes and not blank"
        )));
    }
    Ok(())
}

/// NUL is refused everywhere: PostgreSQL text cannot hold it, and no client needs it.
fn no_nul(text: &str, what: &str) -> Result<(), ServiceError> {
    if text.contains('\0') {
        return Err(ServiceError::bad_request(format!(
            "`{what}` must not contain NUL characters"
        )));
    }
    Ok(())
}

fn validate_client_id(client_id: &str) -> Result<(), ServiceError> {
    no_nul(client_id, "client_id")?;
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
    no_nul(text, what)?;
    if text.is_empty() || text.len() > MAX_INBOX_NAME {
        return Err(ServiceError::bad_request(format!(
            "{what} must be 1 to {MAX_INBOX_NAME} bytes"
        )));
    }
    Ok(())
}
