//! The foca identity of a node: its [`MemberInfo`] plus a renew counter and a leaving flag.
//!
//! Role: what foca gossips about each member. Its `Addr` is the node *name*, so every run of a
//! node (each with a new `NodeId.incarnation`) and every renewal of one run conflict, and foca
//! keeps exactly one identity per name: the one that wins [`Identity::win_addr_conflict`].
//!
//! Invariants:
//! - The winner of a conflict is the larger `(incarnation, renew)`: a restarted node supersedes
//!   its old run; a renewal (after the cluster declared this run down, [`Identity::renew`]) or a
//!   leave supersedes the identity it replaces. On a tie the identity already known is kept, so
//!   two misconfigured processes claiming the same name and incarnation cannot make the cluster
//!   flap between them.
//! - `leaving = true` marks the identity a node switches to just before it leaves, so peers that
//!   see it go down report `Left` instead of `Down` (see `super::driver`). A leaving identity never
//!   renews: a node that left does not come back under the same run.

use foca::Identity;
use serde::{Deserialize, Serialize};

use crate::MemberInfo;

/// A node's identity inside foca.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GossipIdentity {
    /// The node's id and metadata.
    pub(crate) info: MemberInfo,
    /// Bumped each time this run rejoins after being declared down.
    pub(crate) renew: u32,
    /// Set on the identity a node leaves with.
    pub(crate) leaving: bool,
}

impl GossipIdentity {
    /// The first identity of a run.
    pub(crate) fn new(info: MemberInfo) -> Self {
        Self { info, renew: 0, leaving: false }
    }

    /// The node name (foca's `Addr`).
    pub(crate) fn name(&self) -> &str {
        &self.info.id.name
    }

    /// The identity to leave with: wins over `self`, marked leaving. `None` when the renew
    /// counter is exhausted (after 2^32 rejoins of one run) or when already leaving.
    pub(crate) fn leaving(&self) -> Option<Self> {
        if self.leaving {
            return None;
        }
        Some(Self { info: self.info.clone(), renew: self.renew.checked_add(1)?, leaving: true })
    }

    /// The conflict rank: larger wins.
    fn rank(&self) -> (u64, u32) {
        (self.info.id.incarnation, self.renew)
    }
}

impl Identity for GossipIdentity {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        if self.leaving {
            return None;
        }
        Some(Self { info: self.info.clone(), renew: self.renew.checked_add(1)?, leaving: false })
    }

    fn addr(&self) -> String {
        self.info.id.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // `>=`: on a tie the caller's `self` (foca asks the known member) is kept.
        self.rank() >= adversary.rank()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{MemberAddrs, NodeId};

    pub(crate) fn info(name: &str, incarnation: u64) -> MemberInfo {
        let addr = "127.0.0.1:7000".parse().unwrap();
        MemberInfo {
            id: NodeId::new(name, incarnation),
            addrs: MemberAddrs { gossip: addr, internode: addr, http: addr },
            raft_eligible: true,
            failure_domain: "rack-1".into(),
        }
    }

    #[test]
    fn renewal_and_restart_win_the_conflict() {
        let first = GossipIdentity::new(info("a", 5));
        let renewed = first.renew().unwrap();
        assert_eq!(renewed.renew, 1);
        assert!(renewed.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&renewed));
        let restarted = GossipIdentity::new(info("a", 6));
        assert!(restarted.win_addr_conflict(&renewed));
        assert!(!renewed.win_addr_conflict(&restarted));
        assert_eq!(first.addr(), restarted.addr());
    }

    #[test]
    fn leaving_identity_wins_and_never_renews() {
        let first = GossipIdentity::new(info("a", 5));
        let leaving = first.leaving().unwrap();
        assert!(leaving.leaving);
        assert!(leaving.win_addr_conflict(&first));
        assert_eq!(leaving.renew(), None);
        assert_eq!(leaving.leaving(), None);
        let exhausted = GossipIdentity { renew: u32::MAX, ..first };
        assert_eq!(exhausted.renew(), None);
    }

    #[test]
    fn tie_keeps_the_known_identity() {
        let known = GossipIdentity::new(info("a", 5));
        let mut twin = known.clone();
        twin.info.failure_domain = "elsewhere".into();
        assert!(known.win_addr_conflict(&twin));
        assert!(twin.win_addr_conflict(&known));
    }

    #[test]
    fn identity_round_trips_through_postcard() {
        let id = GossipIdentity::new(info("a", 5)).leaving().unwrap();
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(postcard::from_bytes::<GossipIdentity>(&bytes).unwrap(), id);
    }
}
