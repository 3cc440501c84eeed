//! pg in the scale simulator ([`crate::scale`]): each node runs one scope ("default") of the
//! production pg code, as the full simulator does (`world_pg`): its [`ScopeTable`] and its
//! [`Peers`] driver with the default timing ([`PeersConfig::from_pg`] of [`PgConfig::default`]).
//! Its frames are encoded [`PgFrame`]s that the scale shell routes on the same simulated links as
//! the membership datagrams (so a split cuts both); the membership driver's events become the
//! service's `member_up` / `member_down` work through [`follow_view`].
//!
//! The workload is fixed at boot: node `i`'s one process (`local` 1) joins group
//! `g{i % PG_GROUPS}` and stays. So what a node *should* see is a function of which nodes it
//! should see, and [`PgNode::shows`] checks exactly that: in every group, the processes of
//! those nodes and no other.
//!
//! Invariants: no clock, no randomness but the seed passed to [`PgNode::boot`]; frames of a node
//! the view does not hold up (with that incarnation) are dropped, as the service drops them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use cohort_actors::Pid;
use cohort_actors::pg::PgConfig;
use cohort_actors::pg::peers::{Peers, PeersConfig, SyncReason};
use cohort_actors::pg::snapshot::ScopeTable;
use cohort_actors::pg::state::Group;
use cohort_actors::pg::wire::PgFrame;
use cohort_cluster::member::MemberView;
use cohort_cluster::{MemberState, MembershipEvent, NodeId};

use crate::shell::{ViewChange, follow_view};

/// Groups of the scale workload: node `i` joins `g{i % PG_GROUPS}`. Four, as the full
/// simulator's clients use: a node's full state stays one group, every group has N/4 members.
pub const PG_GROUPS: usize = 4;

/// Events drained from the table's outbox per batch (the scope actor's frame size).
const DRAIN: usize = 256;

/// The group node `i`'s process joins.
pub(crate) fn group_of(i: usize) -> String {
    format!("g{}", i % PG_GROUPS)
}

/// How many of the nodes `0..end` join group `g`.
fn joiners_below(end: usize, g: usize) -> usize {
    end / PG_GROUPS + usize::from(end % PG_GROUPS > g)
}

/// One node's pg scope: its table, its peers driver and the member view it follows.
pub(crate) struct PgNode {
    table: ScopeTable,
    peers: Peers,
    /// Per peer name: the run last seen and whether it was up.
    view: BTreeMap<String, (NodeId, bool)>,
}

impl PgNode {
    /// Node `i` (run `id`) boots with an empty scope and its one process joined to its group.
    pub(crate) fn boot(i: usize, id: &NodeId, now: Instant, seed: u64) -> Self {
        let table = ScopeTable::new(id.clone());
        if let Ok(group) = Group::new(&group_of(i)) {
            let joined = table.join(&group, &[Pid::new(id.clone(), 1)]);
            debug_assert!(joined.is_ok(), "{joined:?}");
        }
        let peers = Peers::new("default", id.clone(), PeersConfig::from_pg(&PgConfig::default()), now, seed);
        Self { table, peers, view: BTreeMap::new() }
    }

    /// A membership event of this node's driver, as the node's pump hands it to the pg service.
    pub(crate) fn member_event(&mut self, now: Instant, event: &MembershipEvent) {
        let (info, state) = match event {
            MembershipEvent::Up(m) => (m, MemberState::Alive),
            MembershipEvent::Down(m) => (m, MemberState::Down),
            MembershipEvent::Left(m) => (m, MemberState::Left),
        };
        let row = MemberView { info: info.clone(), state, is_self: false };
        for change in follow_view(&mut self.view, &[row]) {
            match change {
                ViewChange::Up(id) => {
                    let _ = self.table.add_peer(&id);
                    self.peers.handle_peer_up(now, &self.table, &id, SyncReason::Connect);
                }
                // A newer run's older one goes first (the service's member_up), as a down does.
                ViewChange::Down(id) => {
                    self.table.node_down(&id);
                    self.peers.handle_peer_down(now, &id.name);
                }
            }
        }
    }

    /// A frame from `from` (the run the link authenticates). `false`: it did not decode or
    /// claims another sender (counted by the caller).
    pub(crate) fn deliver(&mut self, now: Instant, from: &NodeId, payload: &[u8]) -> bool {
        // The service drops frames of a node it does not hold up (and of an older incarnation).
        if self.view.get(&from.name).is_none_or(|(known, up)| known != from || !up) {
            return true;
        }
        match rmp_serde::from_slice::<PgFrame>(payload) {
            Ok(frame) if frame.from == *from => {
                self.peers.handle_message(now, &self.table, from, frame.message);
                true
            }
            _ => false,
        }
    }

    /// The driver's timer, if it is due.
    pub(crate) fn wake(&mut self, now: Instant) {
        if self.peers.poll_timeout().is_some_and(|t| t <= now) {
            self.peers.handle_timeout(now, &self.table);
        }
    }

    /// Drains the outbox into the driver; whether the table's content changed since the last
    /// flush (it emits events for real changes only), the frames to send (peer name, encoded
    /// frame) and the driver's next deadline.
    pub(crate) fn flush(&mut self, now: Instant) -> (bool, Vec<(String, Bytes)>, Option<Instant>) {
        let mut changed = false;
        loop {
            let events = self.table.drain_events(DRAIN);
            changed |= !events.is_empty();
            let complete = events.len() < DRAIN;
            if !events.is_empty() || complete {
                self.peers.handle_drained(now, events, complete);
            }
            if complete {
                break;
            }
        }
        let mut sends = Vec::new();
        while let Some(transmit) = self.peers.poll_transmit() {
            sends.push((transmit.peer, transmit.bytes));
        }
        while self.peers.poll_event().is_some() {}
        (changed, sends, self.peers.poll_timeout())
    }

    /// Whether the group counts this node shows are those of the nodes `expected`: a cheap
    /// filter before [`PgNode::shows`].
    pub(crate) fn counts_match(&self, expected: &Range<usize>) -> bool {
        (0..PG_GROUPS).all(|g| {
            let want = joiners_below(expected.end, g) - joiners_below(expected.start, g);
            self.table.get_members(&format!("g{g}")).len() == want
        })
    }

    /// Whether this node shows, in every group, exactly the processes of the nodes `expected`
    /// (`index` maps a node name to its index).
    pub(crate) fn shows(&self, expected: &Range<usize>, index: impl Fn(&str) -> Option<usize>) -> bool {
        if !self.counts_match(expected) {
            return false;
        }
        (0..PG_GROUPS).all(|g| {
            let members = self.table.get_members(&format!("g{g}"));
            let mut seen = BTreeSet::new();
            members.iter().all(|pid| {
                index(&pid.node.name)
                    .is_some_and(|j| expected.contains(&j) && j % PG_GROUPS == g && pid.local == 1 && seen.insert(j))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joiners_below_counts_the_nodes_of_each_group() {
        for end in 0..13 {
            for g in 0..PG_GROUPS {
                assert_eq!(joiners_below(end, g), (0..end).filter(|j| j % PG_GROUPS == g).count(), "{end} {g}");
            }
        }
    }

    #[test]
    fn a_booted_node_shows_its_own_process_only() {
        let id = NodeId::new("m5", 1);
        let node = PgNode::boot(5, &id, Instant::now(), 1);
        assert!(node.shows(&(5..6), |name| name.strip_prefix('m').and_then(|n| n.parse().ok())));
        assert!(!node.shows(&(0..6), |name| name.strip_prefix('m').and_then(|n| n.parse().ok())));
    }
}
