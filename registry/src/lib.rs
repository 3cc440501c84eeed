//! # cohort-registry: the three name tiers
//!
//! Owns (SPEC sections 7 and 8) the `local` tier ([`local`]), the `eventual` tier (a CRDT spread
//! by gossip, [`eventual`]), the `consistent` tier (Raft with fencing tokens, [`consistent`]), and
//! one lookup API across them ([`Registry`]).
//!
//! Invariants: lookup resolves `local -> consistent -> eventual` unless a tier is named; a name is
//! registered in the eventual tier only if the local (and consistent) tier of this node does not
//! hold it; every refusal is a typed [`RegistryError`] whose [`RegistryError::reason`] is the
//! SPEC's word; a process's names in every tier are gone before anyone observes its exit (the
//! registry is an exit hook of the node's process table).
//!
//! ```
//! use cohort_registry::{RegistryError, Tier};
//! use cohort_registry::local::LocalTable;
//! use cohort_actors::Pid;
//! use cohort_cluster::NodeId;
//!
//! let me = NodeId::new("alpha", 1);
//! let mut table = LocalTable::new();
//! table.register("db", &Pid::new(me.clone(), 1)).unwrap();
//! let refused = table.register("db", &Pid::new(me.clone(), 2)).unwrap_err();
//! assert_eq!(refused.reason(), "AlreadyRegistered");
//! assert_eq!(refused, RegistryError::AlreadyRegistered { tier: Tier::Local, pid: Pid::new(me, 1) });
//! ```

mod api;
pub mod consistent;
pub mod eventual;
pub mod local;
pub mod metrics;

pub use api::{ConsistentAnswer, ConsistentRegistration, NameRevoked, Registry, RegistryError, Tier};
