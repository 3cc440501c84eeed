//! # cohort-cluster: the cluster layer
//!
//! Owns everything that makes several Cohort nodes one cluster (SPEC section 5):
//!
//! - [`identity`]: `NodeId` (node name + incarnation), the name every other crate uses for a node.
//! - `membership` (to come): SWIM gossip through foca, wrapped by one membership actor.
//! - the internode transport: the wire [`frame`] codec, per-peer per-class bounded [`queue`]s,
//!   the authenticated handshake and gossip packet authentication ([`auth`]).
//! - [`faults`]: the `FaultPlan` every gossip datagram and internode frame passes when chaos is enabled.
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

pub use identity::NodeId;
pub use member::{MemberAddrs, MemberInfo, MemberState, MemberView, MembershipEvent};
pub use net::FaultInjector;
