//! What reaches people later: stored notifications (mentions, assignments) and the
//! audit trail of a conversation.

use super::*;

impl Service {
    pub async fn notifications(
        &self,
        who: &Identity,
        unread_only: bool,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<NotificationsPage, ServiceError> {
        Self::require_staff(who, "have notifications")?;
        let limit = limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS);
        let reader = Self::notification_reader(who);
        Ok(NotificationsPage {
            notifications: self
                .store
                .notifications(&reader, unread_only, before, limit)
                .await?,
            unread: self.store.unread_notifications(&reader).await?,
        })
    }

    /// The caller as a reader of notifications: their token's role and inboxes now, not
    /// those the directory had when each notification was written.
    fn notification_reader(who: &Identity) -> NotificationReader<'_> {
        NotificationReader {
            user: &who.user_id,
            supervisors: who.role.can_write_supervisor_notes(),
            inboxes: who.inboxes.as_filter(),
        }
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
        let reader = Self::notification_reader(who);
        let marked = self.store.mark_notifications_read(&reader, &which).await?;
        Ok(ReadResult {
            marked,
            unread: self.store.unread_notifications(&reader).await?,
        })
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
        let snapshot = self.store.audit_snapshot(conversation).await?;
        let rows = &snapshot.rows;
        let first_break = chain::verify_snapshot(&snapshot).err().map(|b| ChainBreak {
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
}
