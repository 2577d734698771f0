//! The floor as supervisors see it: every staff member's status and what they view.
//!
//! Each node knows its own staff sessions: a user with a socket is `online`, or `away`
//! after a while without a command; their `viewing` is the conversations they are
//! subscribed to. Each node shares what it knows as [`AgentSighting`]s through the
//! broker and keeps the other nodes' sightings until they expire, so the users of a node
//! that died turn `offline` within the presence TTL. Watchers (`watch_agents`) get an
//! `agent_presence` frame whenever someone's merged presence changes.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};

use backchannel_protocol::server::{AgentPresence, AgentStatus};
use backchannel_protocol::{Actor, ConversationId, Role, UserId};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::ConnId;
use crate::broker::AgentSighting;
use crate::visibility::StaffFrame;
use crate::ws::outbox::StaffOutbox;

/// One staff user with a socket on this node.
struct Local {
    /// Their presence here as last computed (and published).
    sighting: AgentSighting,
    /// Their last command (or when this node first saw them).
    active: Instant,
    /// The tick that last found them with a socket here.
    seen: u64,
}

/// What watchers were last shown of a user they see as online or away: enough to tell
/// whether the merged presence changed, and to show them going offline.
struct Shown {
    status: AgentStatus,
    /// A hash of the conversations they were shown viewing.
    viewing: u64,
    name: Option<String>,
    role: Role,
}

#[derive(Default)]
struct Board {
    /// This node's staff users.
    local: HashMap<UserId, Local>,
    /// Other nodes' sightings, until they expire.
    remote: HashMap<(String, UserId), (AgentSighting, Instant)>,
    /// What watchers were last shown, for every user shown as online or away.
    shown: HashMap<UserId, Shown>,
    watchers: Vec<(ConnId, StaffOutbox)>,
    /// Counts ticks, to find the local users no tick saw.
    generation: u64,
    /// The conversations a user is seen viewing, sorted: reused from user to user and
    /// tick to tick, so an unchanged user costs a comparison and no allocation.
    viewing: Vec<ConversationId>,
    fingerprints: RandomState,
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
            fingerprints,
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
            if let (Some(here), []) = (here, others) {
                // Seen on this node only: its sighting is the presence (its viewing is
                // sorted and deduplicated when the sighting is made).
                let viewing = fingerprints.hash_one(&here.viewing);
                if shown
                    .get(id)
                    .is_some_and(|s| s.status == here.status && s.viewing == viewing)
                {
                    return;
                }
            }
            let all: Vec<&AgentSighting> = here.into_iter().chain(others.iter().copied()).collect();
            let Some(presence) = merge(&all) else { return };
            if presence.status == AgentStatus::Offline {
                // Only other nodes' word that they left: shown as offline once, if shown.
                if shown.remove(id).is_some() {
                    changed.push(offline(presence));
                }
                return;
            }
            let viewing = fingerprints.hash_one(&presence.viewing);
            let before = shown.get(id).map(|s| (s.status, s.viewing));
            if before != Some((presence.status, viewing)) {
                shown.insert(
                    presence.id.clone(),
                    Shown {
                        status: presence.status,
                        viewing,
                        name: presence.name.clone(),
                        role: presence.role,
                    },
                );
                changed.push(presence);
            }
        };
        for (id, here) in local.iter() {
            let others = elsewhere.get(id).map(Vec::as_slice).unwrap_or_default();
            show(Some(&here.sighting), others);
        }
        for (id, others) in &elsewhere {
            if !local.contains_key(*id) {
                show(None, others);
            }
        }
        // Users no node sees any more turn offline, once.
        shown.retain(|id, before| {
            if local.contains_key(id) || elsewhere.contains_key(id) {
                return true;
            }
            changed.push(AgentPresence {
                id: id.clone(),
                name: before.name.take(),
                role: before.role,
                status: AgentStatus::Offline,
                viewing: Vec::new(),
                open_conversations: 0,
            });
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

/// Hands the tick each local staff user once (the actor of one of their sockets) with the
/// conversations their sockets are subscribed to: in any order, a conversation two of
/// their sockets view given twice.
pub type Visit<'a> = dyn FnMut(&Actor, &[ConversationId]) + 'a;

impl AgentBoard {
    /// A staff member did something: not away (once the next tick sees them).
    pub fn touch(&self, user: &UserId) {
        if let Some(local) = self.board.lock().local.get_mut(user) {
            local.active = Instant::now();
        }
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

    /// Brings this node's sightings up to date with its sessions: `users` calls its
    /// argument once for each local staff user (see [`Visit`]). Expires other nodes'
    /// sightings, and returns the sightings to publish (changed ones, or all when
    /// `republish`) and the users whose merged presence changed (to show watchers, once
    /// their counts are known). A user whose presence did not change costs lookups and
    /// comparisons, not allocations: this runs every second over every staff user.
    pub fn tick(
        &self,
        now: Instant,
        away_after: std::time::Duration,
        republish: bool,
        users: impl FnOnce(&mut Visit<'_>),
    ) -> (Vec<AgentSighting>, Vec<AgentPresence>) {
        let mut guard = self.board.lock();
        let board = &mut *guard;
        board.generation += 1;
        let generation = board.generation;
        let mut publish = Vec::new();
        let Board { local, viewing, .. } = board;
        users(&mut |actor, conversations| {
            viewing.clear();
            viewing.extend_from_slice(conversations);
            viewing.sort_unstable();
            viewing.dedup();
            if !local.contains_key(&actor.id) {
                let sighting = AgentSighting {
                    id: actor.id.clone(),
                    name: actor.name.clone(),
                    role: actor.role,
                    // Not a status a local user has: the comparison below fails.
                    status: AgentStatus::Offline,
                    viewing: Vec::new(),
                };
                let here = Local {
                    sighting,
                    active: now,
                    seen: generation,
                };
                local.insert(actor.id.clone(), here);
            }
            let Some(here) = local.get_mut(&actor.id) else {
                return;
            };
            here.seen = generation;
            let status = if now.duration_since(here.active) < away_after {
                AgentStatus::Online
            } else {
                AgentStatus::Away
            };
            let sighting = &mut here.sighting;
            if sighting.status != status || sighting.viewing != *viewing {
                sighting.status = status;
                sighting.viewing.clone_from(viewing);
                if !republish {
                    publish.push(sighting.clone());
                }
            }
        });
        // Users without a socket here any more: other nodes hear they left.
        board.local.retain(|_, here| {
            if here.seen == generation {
                return true;
            }
            publish.push(AgentSighting {
                status: AgentStatus::Offline,
                viewing: Vec::new(),
                ..here.sighting.clone()
            });
            false
        });
        if republish {
            publish.extend(board.local.values().map(|here| here.sighting.clone()));
        }
        board.remote.retain(|_, (_, until)| *until > now);
        let changed = board.refresh_shown();
        (publish, changed)
    }

    fn merged(board: &Board) -> HashMap<UserId, AgentPresence> {
        let mut by_user: HashMap<&UserId, Vec<&AgentSighting>> = HashMap::new();
        for here in board.local.values() {
            by_user
                .entry(&here.sighting.id)
                .or_default()
                .push(&here.sighting);
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

    /// One tick over `users` (each with the conversations their sockets view); what
    /// watchers are shown.
    fn tick(
        board: &AgentBoard,
        users: &[(Actor, Vec<ConversationId>)],
        now: Instant,
    ) -> Vec<AgentPresence> {
        tick_with(board, users, now, false).1
    }

    /// One tick over `users`: what is published and what watchers are shown.
    fn tick_with(
        board: &AgentBoard,
        users: &[(Actor, Vec<ConversationId>)],
        now: Instant,
        republish: bool,
    ) -> (Vec<AgentSighting>, Vec<AgentPresence>) {
        board.tick(now, AWAY_AFTER, republish, |visit| {
            for (actor, viewing) in users {
                visit(actor, viewing);
            }
        })
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
        let changed = tick(&board, &[(actor("ana"), vec![room, room])], now);
        assert_eq!(
            statuses(&changed),
            [("ana".to_owned(), AgentStatus::Online)]
        );
        assert_eq!(changed[0].viewing, [room], "viewing is deduplicated");
        let changed = tick(&board, &[(actor("ana"), vec![room])], now);
        assert!(changed.is_empty(), "nothing changed: {changed:?}");
        let changed = tick(&board, &[(actor("ana"), vec![])], now);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].viewing.is_empty());
        let changed = tick(&board, &[], now);
        assert_eq!(
            statuses(&changed),
            [("ana".to_owned(), AgentStatus::Offline)]
        );
        let changed = tick(&board, &[], now);
        assert!(changed.is_empty(), "offline is shown once: {changed:?}");
    }

    #[test]
    fn another_nodes_word_that_a_user_left_is_shown_once() {
        let board = AgentBoard::default();
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        board.sighted("b".into(), sighting("bo", AgentStatus::Online), until);
        let changed = tick(&board, &[], now);
        assert_eq!(statuses(&changed), [("bo".to_owned(), AgentStatus::Online)]);
        board.sighted("b".into(), sighting("bo", AgentStatus::Offline), until);
        let changed = tick(&board, &[], now);
        assert_eq!(
            statuses(&changed),
            [("bo".to_owned(), AgentStatus::Offline)]
        );
        // The offline sighting is kept until it expires; it is not shown again.
        let changed = tick(&board, &[], now);
        assert!(changed.is_empty(), "{changed:?}");
        // A user seen here and elsewhere is online while either node says so.
        board.sighted("b".into(), sighting("cy", AgentStatus::Online), until);
        board.touch(&UserId::from("cy"));
        let changed = tick(&board, &[(actor("cy"), vec![])], now);
        assert_eq!(statuses(&changed), [("cy".to_owned(), AgentStatus::Online)]);
        let changed = tick(&board, &[], now);
        assert!(changed.is_empty(), "still online on b: {changed:?}");
        let changed = tick(&board, &[], until);
        assert_eq!(
            statuses(&changed),
            [("cy".to_owned(), AgentStatus::Offline)]
        );
    }

    #[test]
    fn a_user_without_commands_turns_away_and_back_with_one() {
        let board = AgentBoard::default();
        let start = Instant::now();
        let ana = [(actor("ana"), vec![])];
        let changed = tick(&board, &ana, start);
        assert_eq!(
            statuses(&changed),
            [("ana".to_owned(), AgentStatus::Online)]
        );
        let changed = tick(&board, &ana, start + AWAY_AFTER);
        assert_eq!(statuses(&changed), [("ana".to_owned(), AgentStatus::Away)]);
        assert!(tick(&board, &ana, start + AWAY_AFTER * 2).is_empty());
        board.touch(&UserId::from("ana"));
        let changed = tick(&board, &ana, Instant::now() + Duration::from_secs(1));
        assert_eq!(
            statuses(&changed),
            [("ana".to_owned(), AgentStatus::Online)]
        );
    }

    #[test]
    fn changed_sightings_are_published_and_every_one_on_republish() {
        let board = AgentBoard::default();
        let now = Instant::now();
        let room = ConversationId::new();
        let publish = |users: &[(Actor, Vec<ConversationId>)], republish: bool| {
            let (publish, _) = tick_with(&board, users, now, republish);
            let mut out: Vec<_> = publish
                .into_iter()
                .map(|s| (s.id.as_str().to_owned(), s.status, s.viewing))
                .collect();
            out.sort();
            out
        };
        // Two of ana's sockets view the same room: the room once.
        let both = [(actor("ana"), vec![room, room]), (actor("bo"), vec![])];
        assert_eq!(
            publish(&both, false),
            [
                ("ana".to_owned(), AgentStatus::Online, vec![room]),
                ("bo".to_owned(), AgentStatus::Online, vec![]),
            ]
        );
        assert!(publish(&both, false).is_empty(), "nothing changed");
        assert_eq!(publish(&both, true).len(), 2, "every user, once each");
        assert_eq!(
            publish(&both[1..2], false),
            [("ana".to_owned(), AgentStatus::Offline, vec![])],
            "a user who left is published offline"
        );
        assert!(!board.presence().contains_key(&UserId::from("ana")));
    }
}
