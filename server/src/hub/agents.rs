//! The floor as supervisors see it: every staff member's status and what they view.
//!
//! Each node knows its own staff sessions: a user with a socket is `online`, or `away`
//! after a while without a command; their `viewing` is the conversations they are
//! subscribed to. Each node shares what it knows as [`AgentSighting`]s through the
//! broker and keeps the other nodes' sightings until they expire, so the users of a node
//! that died turn `offline` within the presence TTL. Watchers (`watch_agents`) get an
//! `agent_presence` frame whenever someone's merged presence changes.

use std::collections::{BTreeSet, HashMap};

use backchannel_protocol::server::{AgentPresence, AgentStatus};
use backchannel_protocol::{Actor, UserId};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::ConnId;
use crate::broker::AgentSighting;
use crate::visibility::StaffFrame;
use crate::ws::outbox::StaffOutbox;

#[derive(Default)]
struct Board {
    /// Last command from each local staff user.
    active: HashMap<UserId, Instant>,
    /// The local sightings last computed.
    local: HashMap<UserId, AgentSighting>,
    /// Other nodes' sightings, until they expire.
    remote: HashMap<(String, UserId), (AgentSighting, Instant)>,
    /// The merged presence last shown to watchers.
    shown: HashMap<UserId, AgentPresence>,
    watchers: Vec<(ConnId, StaffOutbox)>,
}

#[derive(Default)]
pub struct AgentBoard {
    board: Mutex<Board>,
}

/// A user's presence merged over every node: the best status, every conversation.
fn merge(sightings: &[&AgentSighting]) -> Option<AgentPresence> {
    let first = sightings.first()?;
    let mut viewing = BTreeSet::new();
    let mut status = AgentStatus::Offline;
    for s in sightings {
        status = status.max(s.status);
        viewing.extend(s.viewing.iter().copied());
    }
    Some(AgentPresence {
        id: first.id.clone(),
        name: first.name.clone(),
        role: first.role,
        status,
        viewing: viewing.into_iter().collect(),
        open_conversations: 0,
    })
}

impl AgentBoard {
    pub fn touch(&self, user: &UserId) {
        self.board
            .lock()
            .active
            .insert(user.clone(), Instant::now());
    }

    pub fn watch(&self, conn: ConnId, outbox: StaffOutbox) {
        let mut board = self.board.lock();
        board.watchers.retain(|(c, _)| *c != conn);
        board.watchers.push((conn, outbox));
    }

    pub fn unwatch(&self, conn: ConnId) {
        self.board.lock().watchers.retain(|(c, _)| *c != conn);
    }

    /// Another node's sighting.
    pub fn sighted(&self, node: String, sighting: AgentSighting, until: Instant) {
        let mut board = self.board.lock();
        board
            .remote
            .insert((node, sighting.id.clone()), (sighting, until));
    }

    /// Recomputes this node's sightings from its sessions (`users`: each local staff
    /// user and the conversations they view), expires other nodes', and returns the
    /// sightings to publish (changed ones, or all when `republish`) and the users whose
    /// merged presence changed (to show watchers, once their counts are known).
    pub fn tick(
        &self,
        users: Vec<(Actor, Vec<backchannel_protocol::ConversationId>)>,
        now: Instant,
        away_after: std::time::Duration,
        republish: bool,
    ) -> (Vec<AgentSighting>, Vec<AgentPresence>) {
        let mut board = self.board.lock();
        let mut current: HashMap<UserId, AgentSighting> = HashMap::new();
        for (actor, mut viewing) in users {
            viewing.sort();
            viewing.dedup();
            let recent = board
                .active
                .get(&actor.id)
                .is_some_and(|at| now.duration_since(*at) < away_after);
            current.insert(
                actor.id.clone(),
                AgentSighting {
                    id: actor.id,
                    name: actor.name,
                    role: actor.role,
                    status: if recent {
                        AgentStatus::Online
                    } else {
                        AgentStatus::Away
                    },
                    viewing,
                },
            );
        }
        let mut publish = Vec::new();
        for (id, old) in &board.local {
            if !current.contains_key(id) {
                publish.push(AgentSighting {
                    status: AgentStatus::Offline,
                    viewing: Vec::new(),
                    ..old.clone()
                });
            }
        }
        for (id, sighting) in &current {
            if republish || board.local.get(id) != Some(sighting) {
                publish.push(sighting.clone());
            }
        }
        board.active.retain(|id, _| current.contains_key(id));
        board.local = current;
        board.remote.retain(|_, (_, until)| *until > now);
        let merged = Self::merged(&board);
        let mut changed = Vec::new();
        let known: BTreeSet<UserId> = board
            .shown
            .keys()
            .cloned()
            .chain(merged.keys().cloned())
            .collect();
        for id in known {
            let now_shown = merged.get(&id).cloned().or_else(|| {
                board.shown.get(&id).map(|p| AgentPresence {
                    status: AgentStatus::Offline,
                    viewing: Vec::new(),
                    ..p.clone()
                })
            });
            let Some(presence) = now_shown else { continue };
            let before = board.shown.get(&id);
            if before.map(|b| (b.status, &b.viewing)) != Some((presence.status, &presence.viewing))
            {
                changed.push(presence.clone());
            }
            if presence.status == AgentStatus::Offline {
                board.shown.remove(&id);
            } else {
                board.shown.insert(id, presence);
            }
        }
        (publish, changed)
    }

    fn merged(board: &Board) -> HashMap<UserId, AgentPresence> {
        let mut by_user: HashMap<&UserId, Vec<&AgentSighting>> = HashMap::new();
        for sighting in board.local.values() {
            by_user.entry(&sighting.id).or_default().push(sighting);
        }
        for (sighting, _) in board.remote.values() {
            by_user.entry(&sighting.id).or_default().push(sighting);
        }
        by_user
            .into_iter()
            .filter_map(|(id, sightings)| Some((id.clone(), merge(&sightings)?)))
            .collect()
    }

    /// Everyone's merged presence right now (without counts).
    pub fn presence(&self) -> HashMap<UserId, AgentPresence> {
        Self::merged(&self.board.lock())
    }

    /// Shows changed presence to every watcher.
    pub fn show(&self, changed: &[AgentPresence]) {
        let mut board = self.board.lock();
        for presence in changed {
            let frame = StaffFrame::agent_presence(presence);
            board.watchers.retain(|(_, outbox)| outbox.push(&frame));
        }
    }
}
