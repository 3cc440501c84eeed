//! # cohort-cluster: the cluster layer
//!
//! Owns everything that makes several Cohort nodes one cluster (SPEC section 5):
//!
//! - [`identity`]: `NodeId` (node name + incarnation), the name every other crate uses for a node.
//! - [`member`]: what the cluster knows about a member (`MemberInfo`, `MemberState`) and the
//!   `MembershipEvent`s subscribers receive.
//! - [`membership`]: SWIM gossip through foca, wrapped by one membership actor (seeds, rejoin,
//!   partition heal, graceful leave, local-health-stretched suspicion).
//! - [`net`]: all network I/O: the gossip socket and the internode transport (authenticated TCP
//!   links, per-peer per-class bounded queues, priority draining), both behind the node's
//!   [`FaultInjector`].
//! - pure cores used by `net`: the wire [`frame`] codec, the bounded [`queue`]s, the handshake and
//!   datagram authentication ([`auth`]), and the [`faults`] plan.
//!
//! Invariants: protocol state here is plain data with no I/O (sans-I/O); all network I/O of a node
//! goes through one module of this crate so a simulated network can replace it; nothing is unbounded.

pub mod auth;
pub mod faults;
pub mod frame;
pub mod identity;
pub mod member;
pub mod membership;
pub mod net;
pub mod queue;
pub mod secure;

pub use identity::NodeId;
pub use member::{MemberAddrs, MemberInfo, MemberState, MemberView, MembershipEvent};
pub use net::FaultInjector;
