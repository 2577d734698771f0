//! Messages and notes: public replies (with the reply guard), internal notes with their
//! @mentions, edits and pins, and full-text search over the notes a caller may read.

use super::*;

impl Service {
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
    pub(super) async fn note_event(
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
    pub(super) async fn resolve_mentions(
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
    pub(super) async fn note_in(
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

    /// The notes of `notes` that `who` may read: their audience allows it, and their
    /// conversation is in `who`'s inboxes.
    pub(super) async fn visible_notes(
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
}
