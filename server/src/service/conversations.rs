//! Conversations: opening, listing and viewing them, their history, and the team's
//! actions on them (assignment with a handoff note, status, tags, custom fields), plus
//! the contact view.

use super::*;

impl Service {
    pub async fn open_conversation(
        &self,
        who: &Identity,
        request: OpenConversation,
    ) -> Result<ConversationView, ServiceError> {
        validate_inbox_id(&request.inbox_id)?;
        if let Some(subject) = &request.subject {
            no_nul(subject, "subject")?;
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
                    // A contact id is a customer's `sub`, held to the same rule.
                    Some(contact)
                        if !contact.as_str().is_empty()
                            && contact.as_str().chars().count() <= 128
                            && !contact.as_str().chars().any(char::is_control) =>
                    {
                        contact
                    }
                    _ => {
                        return Err(ServiceError::bad_request(
                            "`contact_id` (1 to 128 characters, no control characters) is required when staff open a conversation",
                        ))
                    }
                }
            }
        };
        // Fields set with the opening are checked before anything is written, and
        // committed with it: a conversation is never seen without them.
        let fields = match request.fields {
            Some(values) if !values.is_empty() => {
                Self::require_staff(who, "set fields")?;
                self.field_changes(FieldTarget::Conversation, values)
                    .await?
            }
            _ => BTreeMap::new(),
        };
        let id = ConversationId::new();
        let at = store::now();
        let then: Vec<NewEvent> = if fields.is_empty() {
            Vec::new()
        } else {
            vec![NewEvent {
                id: EventId::new(),
                conversation_id: id,
                at,
                actor: actor(who),
                client_id: None,
                data: EventData::FieldsChanged {
                    target: FieldTarget::Conversation,
                    target_id: id.to_string(),
                    changes: fields.clone(),
                },
            }]
        };
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
        let outcome = self
            .writer
            .write(WriteRequest::Open(Box::new(NewConversation {
                id,
                inbox_id: request.inbox_id.clone(),
                contact_id: Some(contact_id.clone()),
                subject: request.subject.clone(),
                opened,
                then,
            })))
            .await?;
        // The heads the opening and the events given with it moved.
        let heads = outcome
            .events
            .iter()
            .fold(Heads::default(), |heads, event| heads.after(&event.seqs));
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
            heads,
        };
        self.remember_access(&record);
        let extras = StaffExtras {
            fields,
            ..StaffExtras::default()
        };
        Ok(ConversationView::with_extras(record, who, extras))
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
            customer: customer.then(|| who.user_id.clone()),
            status: query.status.map(|s| s.as_str().to_owned()),
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
        // Required fields are checked in the append transaction (store::Precheck), so a
        // field cleared at the same moment cannot slip past.
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
        // The limit itself is checked in the append transaction (store::Precheck), so
        // agents tagging at the same moment cannot overshoot it.
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
        let changes = self.field_changes(target, values).await?;
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
                let scope = inbox_scope(who);
                for record in self
                    .store
                    .contact_conversations(&contact, scope.as_deref(), CONTACT_FAN_OUT)
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

    /// `values` checked against their definitions for `target`, normalized: the changes
    /// of a `fields_changed` event.
    async fn field_changes(
        &self,
        target: FieldTarget,
        values: BTreeMap<String, serde_json::Value>,
    ) -> Result<BTreeMap<String, serde_json::Value>, ServiceError> {
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
        Ok(changes)
    }

    /// A contact as staff see them: fields, pinned context notes, conversations.
    pub async fn contact(&self, who: &Identity, id: UserId) -> Result<Contact, ServiceError> {
        Self::require_staff(who, "look up contacts")?;
        let mut conversations = Vec::new();
        let scope = inbox_scope(who);
        for record in self
            .store
            .contact_conversations(&id, scope.as_deref(), CONTACT_FAN_OUT)
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
}

/// The inboxes `who` works in, for a store query (`None`: every inbox).
fn inbox_scope(who: &Identity) -> Option<Vec<InboxId>> {
    match &who.inboxes {
        InboxScope::All => None,
        InboxScope::Only(set) => Some(set.iter().cloned().collect()),
    }
}
