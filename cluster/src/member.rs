//! What the cluster knows about a member, and the events membership delivers (SPEC 5.1).
//!
//! These types are the contract between the membership actor (which produces them), the
//! internode transport (which connects to `Up` members and drops `Down`/`Left` ones) and every
//! other subscriber (pg scopes, registry tiers, raft). They are plain data with serde, so they can
//! also travel inside the gossip identity.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Longest failure-domain label (it rides in every gossip identity).
pub const MAX_FAILURE_DOMAIN_LEN: usize = 64;

/// A member's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddrs {
    /// Gossip (UDP).
    pub gossip: SocketAddr,
    /// Internode transport (TCP).
    pub internode: SocketAddr,
    /// HTTP surface.
    pub http: SocketAddr,
}

/// Everything the cluster knows about one member: identity and metadata.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Name and incarnation.
    pub id: NodeId,
    /// Where to reach it.
    pub addrs: MemberAddrs,
    /// Whether it may be a raft voter.
    pub raft_eligible: bool,
    /// Failure domain (rack, zone); voters are spread across them. Empty when unset.
    pub failure_domain: String,
}

/// A member's state as seen by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; may still refute.
    Suspect,
    /// Declared failed.
    Down,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// The JSON and metric-label spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }

    /// Every state, for exporting gauges at 0.
    pub const ALL: [MemberState; 4] = [Self::Alive, Self::Suspect, Self::Down, Self::Left];
}

/// One row of the membership view (for `/admin/cluster/members`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member.
    pub info: MemberInfo,
    /// Its state.
    pub state: MemberState,
    /// Whether this row is the local node.
    pub is_self: bool,
}

/// A membership change, delivered to subscribers in the order membership saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipEvent {
    /// A member became reachable (joined, or came back with a new incarnation).
    Up(MemberInfo),
    /// A member was declared failed.
    Down(MemberInfo),
    /// A member left gracefully.
    Left(MemberInfo),
}

impl MembershipEvent {
    /// The member the event is about.
    pub fn member(&self) -> &MemberInfo {
        match self {
            Self::Up(m) | Self::Down(m) | Self::Left(m) => m,
        }
    }
}
