//! The audit chain: each event's hash covers the previous event's hash and the event's
//! canonical bytes, so a row changed, removed or reordered behind the server's back breaks
//! every later link.
//!
//! `hash_n = SHA-256(hash_{n-1} || canonical(event_n))`, over the supervisor stream (every
//! event), starting from 32 zero bytes. The canonical bytes are a length-prefixed layout
//! of the stored columns, in a fixed order, so they never depend on a JSON library's
//! choices: the payload is hashed as the exact text stored.

use sha2::{Digest, Sha256};

/// The hash before a conversation's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Version of the canonical layout, the first byte hashed for every event.
const LAYOUT_VERSION: u8 = 1;

/// The stored columns of one event, as hashed.
pub struct CanonicalEvent<'a> {
    pub id: &'a [u8; 16],
    pub conversation_id: &'a [u8; 16],
    pub supervisor_seq: u64,
    pub agent_seq: Option<u64>,
    pub public_seq: Option<u64>,
    pub kind: &'a str,
    pub visibility: &'a str,
    pub actor_id: &'a str,
    pub actor_role: &'a str,
    pub actor_name: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub payload: &'a str,
    pub created_at_micros: i64,
}

/// The next link of the chain.
pub fn link(previous: &[u8; 32], event: &CanonicalEvent<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update([LAYOUT_VERSION]);
    h.update(event.id);
    h.update(event.conversation_id);
    h.update(event.supervisor_seq.to_be_bytes());
    opt_u64(&mut h, event.agent_seq);
    opt_u64(&mut h, event.public_seq);
    text(&mut h, event.kind);
    text(&mut h, event.visibility);
    text(&mut h, event.actor_id);
    text(&mut h, event.actor_role);
    opt_text(&mut h, event.actor_name);
    opt_text(&mut h, event.client_id);
    text(&mut h, event.payload);
    h.update(event.created_at_micros.to_be_bytes());
    h.finalize().into()
}

fn text(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

fn opt_text(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            text(h, s);
        }
    }
}

fn opt_u64(h: &mut Sha256, v: Option<u64>) {
    match v {
        None => h.update([0u8]),
        Some(v) => {
            h.update([1u8]);
            h.update(v.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(payload: &'a str, name: Option<&'a str>) -> CanonicalEvent<'a> {
        CanonicalEvent {
            id: &[1; 16],
            conversation_id: &[2; 16],
            supervisor_seq: 3,
            agent_seq: Some(3),
            public_seq: None,
            kind: "note",
            visibility: "internal",
            actor_id: "alice",
            actor_role: "agent",
            actor_name: name,
            client_id: Some("c1"),
            payload,
            created_at_micros: 42,
        }
    }

    #[test]
    fn any_changed_column_changes_the_link() {
        let base = link(&GENESIS, &sample("{\"body\":\"a\"}", None));
        assert_ne!(base, link(&GENESIS, &sample("{\"body\":\"b\"}", None)));
        assert_ne!(base, link(&GENESIS, &sample("{\"body\":\"a\"}", Some(""))));
        assert_ne!(base, link(&[9; 32], &sample("{\"body\":\"a\"}", None)));
        assert_eq!(base, link(&GENESIS, &sample("{\"body\":\"a\"}", None)));
    }
}

/// Where and why a chain stops verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    pub seq: u64,
    pub event_id: Option<String>,
    pub reason: String,
}

/// Verifies a conversation read in one snapshot: its chain links (`verify`), and that the
/// chain is whole: it starts with the conversation's opening and holds as many events as
/// the conversation's counter says, so a tail cut off with the head moved back to match,
/// or every event deleted, does not pass as a shorter valid chain.
pub fn verify_snapshot(snapshot: &super::AuditSnapshot) -> Result<(), Break> {
    verify(&snapshot.rows, snapshot.head.as_deref())?;
    match snapshot.rows.first() {
        None => {
            return Err(Break {
                seq: 1,
                event_id: None,
                reason: "no events: a conversation's chain starts with its opening".into(),
            })
        }
        Some(first) if first.kind != "conversation_opened" => {
            return Err(Break {
                seq: 1,
                event_id: Some(first.id.clone()),
                reason: "the chain does not start with the conversation's opening".into(),
            })
        }
        Some(_) => {}
    }
    let stored = snapshot.rows.len() as u64;
    if stored != snapshot.supervisor_seq {
        return Err(Break {
            seq: stored.min(snapshot.supervisor_seq) + 1,
            event_id: None,
            reason: format!(
                "the conversation counts {} events; {stored} are stored",
                snapshot.supervisor_seq
            ),
        });
    }
    Ok(())
}

/// Recomputes a conversation's chain from its stored rows (in supervisor order) and
/// compares each link, then the head kept on the conversation row.
pub fn verify(rows: &[super::AuditRow], head: Option<&[u8]>) -> Result<(), Break> {
    let mut previous = GENESIS;
    for (index, row) in rows.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        let broken = |reason: &str| Break {
            seq: expected_seq,
            event_id: Some(row.id.clone()),
            reason: reason.to_owned(),
        };
        if row.supervisor_seq != expected_seq as i64 {
            return Err(broken("an event is missing or out of order"));
        }
        let id = uuid::Uuid::parse_str(&row.id).map_err(|_| broken("malformed event id"))?;
        let conversation = uuid::Uuid::parse_str(&row.conversation_id)
            .map_err(|_| broken("malformed conversation id"))?;
        let computed = link(
            &previous,
            &CanonicalEvent {
                id: id.as_bytes(),
                conversation_id: conversation.as_bytes(),
                supervisor_seq: expected_seq,
                agent_seq: row.agent_seq.map(|s| s as u64),
                public_seq: row.public_seq.map(|s| s as u64),
                kind: &row.kind,
                visibility: &row.visibility,
                actor_id: &row.actor_id,
                actor_role: &row.actor_role,
                actor_name: row.actor_name.as_deref(),
                client_id: row.client_id.as_deref(),
                payload: &row.payload,
                created_at_micros: row.created_at,
            },
        );
        if computed[..] != row.hash[..] {
            return Err(broken("the event's content does not match its hash"));
        }
        previous = computed;
    }
    match head {
        Some(head) if head != previous => Err(Break {
            seq: rows.len() as u64 + 1,
            event_id: None,
            reason: "events after the last stored one are missing".into(),
        }),
        _ => Ok(()),
    }
}
