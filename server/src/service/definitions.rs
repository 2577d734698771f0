//! Admin definitions: inboxes, tags, typed custom fields and teams.

use super::*;

impl Service {
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

    pub(super) async fn field_definition(
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
}
