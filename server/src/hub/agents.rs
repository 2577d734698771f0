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

impl Board {
    /// Brings `shown` up to date with every user's merged presence and returns the users
    /// whose status or viewing changed. Runs every second over every staff user, so a
    /// user whose presence did not change costs a comparison, not a copy.
    fn refresh_shown(&mut self) -> Vec<AgentPresence> {
        let Board {
            local,
            remote,
            shown,
            ..
        } = self;
        // Other nodes' sightings by user (none on a single node).
        let mut elsewhere: HashMap<&UserId, Vec<&AgentSighting>> = HashMap::new();
        for (sighting, _) in remote.values() {
            elsewhere.entry(&sighting.id).or_default().push(sighting);
        }
        let mut changed = Vec::new();
        let mut show = |here: Option<&AgentSighting>, others: &[&AgentSighting]| {
            let Some(id) = here.or(others.first().copied()).map(|s| &s.id) else {
                return;
            };
            if let (Some(here), [], Some(before)) = (here, others, shown.get(id)) {
                // Seen on this node only: its sighting is the presence (its viewing is
                // sorted and deduplicated when the sighting is made).
                if before.status == here.status && before.viewing == here.viewing {
                    return;
                }
            }
            let all: Vec<&AgentSighting> = here.into_iter().chain(others.iter().copied()).collect();
            let Some(presence) = merge(&all) else { return };
            if presence.status == AgentStatus::Offline {
                // Only other nodes' word that they left: shown as offline once, if shown.
                if let Some(before) = shown.remove(id) {
                    changed.push(offline(before));
                }
                return;
            }
            let before = shown.get(id);
            if before.map(|b| (b.status, &b.viewing)) != Some((presence.status, &presence.viewing))
            {
                changed.push(presence.clone());
                shown.insert(presence.id.clone(), presence);
            }
        };
        for (id, sighting) in local.iter() {
            let others = elsewhere.get(id).map(Vec::as_slice).unwrap_or_default();
            show(Some(sighting), others);
        }
        for (id, others) in &elsewhere {
            if !local.contains_key(*id) {
                show(None, others);
            }
        }
        // Users no node sees any more turn offline, once.
        shown.retain(|id, presence| {
            if local.contains_key(id) || elsewhere.contains_key(id) {
                return true;
            }
            changed.push(offline(presence.clone()));
            false
        });
        changed
    }
}

#[derive(Default)]
pub struct AgentBoard {
    board: Mutex<Board>,
}

/// What watchers are shown when a user they were shown is seen by no node any more.
fn offline(presence: AgentPresence) -> AgentPresence {
    AgentPresence {
        status: AgentStatus::Offline,
        viewing: Vec::new(),
        ..presence
    }
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
        let mut current: HashMap<UserId, AgentSighting> = HashMap::with_capacity(users.len());
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
        let changed = board.refresh_shown();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backchannel_protocol::{ConversationId, Role};

    use super::*;

    const AWAY_AFTER: Duration = Duration::from_secs(60);

    fn actor(id: &str) -> Actor {
        Actor {
            id: UserId::from(id),
            role: Role::Agent,
            name: Some(id.to_owned()),
        }
    }

    fn sighting(id: &str, status: AgentStatus) -> AgentSighting {
        AgentSighting {
            id: UserId::from(id),
            name: Some(id.to_owned()),
            role: Role::Agent,
            status,
            viewing: Vec::new(),
        }
    }

    fn statuses(changed: &[AgentPresence]) -> Vec<(String, AgentStatus)> {
        let mut out: Vec<_> = changed
            .iter()
            .map(|p| (p.id.as_str().to_owned(), p.status))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn presence_is_shown_when_it_changes_and_only_then() {
        let board = AgentBoard::default();
        let now = Instant::now();
        let room = ConversationId::new();
        board.touch(&UserId::from("ana"));
        let (_, changed) = board.tick(
            vec![(actor("ana"), vec![room, room])],
            now,
            AWAY_AFTER,
            false,
        );
        assert_eq!(
            statuses(&changed),
            [("ana".to_owned(), AgentStatus::Online)]
        );
        assert_eq!(changed[0].viewing, [room], "viewing is deduplicated");
        let (_, changed) = board.tick(vec![(actor("ana"), vec![room])], now, AWAY_AFTER, false);
        assert!(changed.is_empty(), "nothing changed: {changed:?}");
        let (_, changed) = board.tick(vec![(actor("ana"), vec![])], now, AWAY_AFTER, false);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].viewing.is_empty());
        let (_, changed) = board.tick(vec![], now, AWAY_AFTER, false);
        assert_eq!(
            statuses(&changed),
            [("ana".to_owned(), AgentStatus::Offline)]
        );
        let (_, changed) = board.tick(vec![], now, AWAY_AFTER, false);
        assert!(changed.is_empty(), "offline is shown once: {changed:?}");
    }

    #[test]
    fn another_nodes_word_that_a_user_left_is_shown_once() {
        let board = AgentBoard::default();
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        board.sighted("b".into(), sighting("bo", AgentStatus::Online), until);
        let (_, changed) = board.tick(vec![], now, AWAY_AFTER, false);
        assert_eq!(statuses(&changed), [("bo".to_owned(), AgentStatus::Online)]);
        board.sighted("b".into(), sighting("bo", AgentStatus::Offline), until);
        let (_, changed) = board.tick(vec![], now, AWAY_AFTER, false);
        assert_eq!(
            statuses(&changed),
            [("bo".to_owned(), AgentStatus::Offline)]
        );
        // The offline sighting is kept until it expires; it is not shown again.
        let (_, changed) = board.tick(vec![], now, AWAY_AFTER, false);
        assert!(changed.is_empty(), "{changed:?}");
        // A user seen here and elsewhere is online while either node says so.
        board.sighted("b".into(), sighting("cy", AgentStatus::Online), until);
        board.touch(&UserId::from("cy"));
        let (_, changed) = board.tick(vec![(actor("cy"), vec![])], now, AWAY_AFTER, false);
        assert_eq!(statuses(&changed), [("cy".to_owned(), AgentStatus::Online)]);
        let (_, changed) = board.tick(vec![], now, AWAY_AFTER, false);
        assert!(changed.is_empty(), "still online on b: {changed:?}");
        let (_, changed) = board.tick(vec![], until, AWAY_AFTER, false);
        assert_eq!(
            statuses(&changed),
            [("cy".to_owned(), AgentStatus::Offline)]
        );
    }
}
