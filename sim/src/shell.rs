//! What every simulated shell does around a driver: arm its timer on the world's clock
//! ([`Wake`]) and follow a node's member view as a sequence of up/down changes
//! ([`follow_view`]), as the real node's services do.

use std::collections::BTreeMap;
use std::time::Instant;

use cohort_cluster::member::MemberView;
use cohort_cluster::{MemberState, NodeId};

/// A driver's next wake-up on the world's clock (µs), so a timer is scheduled once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wake(Option<u64>);

impl Wake {
    /// The world instant to schedule a wake-up at for the driver deadline `due`, read on a node
    /// clock that shows `node_now` at world time `now_us` (ahead of it after a clock jump), or
    /// `None` when a wake-up at or before it is already pending. Rounded up to the microsecond: a
    /// wake-up a fraction early would find nothing due and schedule itself again at the same
    /// instant, for ever.
    pub(crate) fn arm(&mut self, now_us: u64, node_now: Instant, due: Instant) -> Option<u64> {
        let at = now_us + due.saturating_duration_since(node_now).as_nanos().div_ceil(1_000) as u64;
        if self.0.is_none_or(|w| at < w || w < now_us) {
            self.0 = Some(at);
            return Some(at);
        }
        None
    }

    /// The wake-up scheduled at `at` fired.
    pub(crate) fn fired(&mut self, at: u64) {
        if self.0 == Some(at) {
            self.0 = None;
        }
    }
}

/// A change of a node's member view, as a service follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ViewChange {
    /// The run is reachable (joined, or back).
    Up(NodeId),
    /// The run is down or left, or a newer run of its node superseded it.
    Down(NodeId),
}

/// The changes since `known` (per peer name: its run and whether it was up) that the rows of
/// `members` show, in row order, updating `known`: a newer run brings the older run's `Down`
/// (when it was up) before its own `Up`; a row of an older run than the known one is ignored.
pub(crate) fn follow_view(known: &mut BTreeMap<String, (NodeId, bool)>, members: &[MemberView]) -> Vec<ViewChange> {
    let mut changes = Vec::new();
    for row in members.iter().filter(|r| !r.is_self) {
        let id = &row.info.id;
        let up = !matches!(row.state, MemberState::Down | MemberState::Left);
        match known.get(&id.name) {
            Some((old, was_up)) if old == id => {
                if *was_up != up {
                    changes.push(if up { ViewChange::Up(id.clone()) } else { ViewChange::Down(id.clone()) });
                }
            }
            Some((old, _)) if old.incarnation > id.incarnation => continue,
            other => {
                if let Some((old, true)) = other {
                    changes.push(ViewChange::Down(old.clone()));
                }
                if up {
                    changes.push(ViewChange::Up(id.clone()));
                }
            }
        }
        known.insert(id.name.clone(), (id.clone(), up));
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cohort_cluster::member::{MemberAddrs, MemberInfo};

    use super::*;

    fn row(name: &str, incarnation: u64, state: MemberState) -> MemberView {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        MemberView {
            info: MemberInfo {
                id: NodeId::new(name, incarnation),
                addrs: MemberAddrs { gossip: addr, internode: addr, http: addr },
                raft_eligible: true,
                failure_domain: String::new(),
            },
            state,
            is_self: false,
        }
    }

    #[test]
    fn a_restart_is_the_old_run_down_then_the_new_run_up_and_a_stale_row_is_ignored() {
        let mut known = BTreeMap::new();
        assert_eq!(
            follow_view(&mut known, &[row("b", 1, MemberState::Alive)]),
            vec![ViewChange::Up(NodeId::new("b", 1))]
        );
        assert_eq!(follow_view(&mut known, &[row("b", 1, MemberState::Suspect)]), vec![]);
        assert_eq!(
            follow_view(&mut known, &[row("b", 2, MemberState::Alive)]),
            vec![ViewChange::Down(NodeId::new("b", 1)), ViewChange::Up(NodeId::new("b", 2))]
        );
        assert_eq!(follow_view(&mut known, &[row("b", 1, MemberState::Alive)]), vec![]);
        assert_eq!(
            follow_view(&mut known, &[row("b", 2, MemberState::Down)]),
            vec![ViewChange::Down(NodeId::new("b", 2))]
        );
    }

    #[test]
    fn a_wake_up_is_armed_once_rounded_up_and_again_after_it_fired() {
        let t0 = Instant::now();
        let mut wake = Wake::default();
        let due = t0 + Duration::from_nanos(1_500);
        assert_eq!(wake.arm(10, t0, due), Some(12));
        assert_eq!(wake.arm(10, t0, due + Duration::from_millis(1)), None);
        assert_eq!(wake.arm(10, t0, t0 + Duration::from_nanos(900)), Some(11));
        wake.fired(11);
        assert_eq!(wake.arm(11, t0, due), Some(13));
    }
}
