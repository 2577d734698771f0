//! The audit trail from the command line: `backchannel audit verify` recomputes every
//! conversation's hash chain from the stored rows; `backchannel audit export` writes every
//! event with its hash as JSON lines, for compliance archives.
//!
//! Both read the store directly and can run beside a live node (SQLite in WAL mode lets
//! readers in while the writer works): each conversation is read in one snapshot, so an
//! append between reading its events and its head cannot look like tampering.

use std::io::Write;

use backchannel_protocol::ConversationId;
use serde::Serialize;

use crate::store::chain::{self, Break};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// The outcome of `audit verify`.
#[derive(Debug, Default)]
pub struct Verification {
    pub conversations: u64,
    pub events: u64,
    /// Every conversation whose chain breaks, with where it first breaks.
    pub broken: Vec<(ConversationId, Break)>,
    /// Conversation ids that stored events name but no conversation row has.
    pub orphaned: Vec<String>,
}

/// Recomputes every chain.
pub async fn verify_all(store: &dyn Store) -> Result<Verification, AuditError> {
    let mut report = Verification::default();
    for conversation in store.conversation_ids().await? {
        report.conversations += 1;
        // A row that cannot even be read breaks this conversation's chain, not the check
        // of every other one.
        let snapshot = match store.audit_snapshot(conversation).await {
            Ok(snapshot) => snapshot,
            Err(e) if !unreadable_row(&e) => return Err(e.into()),
            Err(e) => {
                report.broken.push((
                    conversation,
                    Break {
                        seq: 0,
                        event_id: None,
                        reason: format!("its events cannot be read: {e}"),
                    },
                ));
                continue;
            }
        };
        report.events += snapshot.rows.len() as u64;
        if let Err(broken) = chain::verify_snapshot(&snapshot) {
            report.broken.push((conversation, broken));
        }
    }
    report.orphaned = store.orphaned_event_conversations().await?;
    Ok(report)
}

/// A stored row that cannot be decoded (as against a store that cannot be reached).
fn unreadable_row(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Corrupt(_)
            | StoreError::Database(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))
    )
}

#[derive(Serialize)]
struct ExportLine<'a> {
    conversation_id: &'a str,
    seq: i64,
    agent_seq: Option<i64>,
    public_seq: Option<i64>,
    id: &'a str,
    kind: &'a str,
    visibility: &'a str,
    actor_id: &'a str,
    actor_role: &'a str,
    actor_name: Option<&'a str>,
    client_id: Option<&'a str>,
    created_at_micros: i64,
    /// The payload exactly as stored (and hashed).
    payload: &'a str,
    hash: String,
}

/// Writes every event of every conversation, in chain order, one JSON object per line.
/// Returns the number of lines.
pub async fn export(store: &dyn Store, out: &mut dyn Write) -> Result<u64, AuditError> {
    let mut lines = 0;
    for conversation in store.conversation_ids().await? {
        for row in store.audit_rows(conversation).await? {
            let line = ExportLine {
                conversation_id: &row.conversation_id,
                seq: row.supervisor_seq,
                agent_seq: row.agent_seq,
                public_seq: row.public_seq,
                id: &row.id,
                kind: &row.kind,
                visibility: &row.visibility,
                actor_id: &row.actor_id,
                actor_role: &row.actor_role,
                actor_name: row.actor_name.as_deref(),
                client_id: row.client_id.as_deref(),
                created_at_micros: row.created_at,
                payload: &row.payload,
                hash: hex::encode(&row.hash),
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            lines += 1;
        }
    }
    out.flush()?;
    Ok(lines)
}
