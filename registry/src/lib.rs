//! # cohort-registry: the three name tiers
//!
//! Will own (SPEC sections 7 and 8): the `local` tier, the `eventual` tier (a CRDT spread by gossip)
//! and the `consistent` tier (Raft with fencing tokens), one lookup API across them, and the
//! control-plane vocabulary of reads (`RootToken`, `Freshness`, `CatchUpState`, `DegradedMode`).
//!
//! Invariants: only the raft log is truth for the consistent tier; views are derived; a stale answer
//! is only ever given to a `BestEffort` read and says so.
//!
//! Present so far: [`eventual`], the pure CRDT core of the eventual tier (state, deterministic
//! winner, departures, tombstone collection, sharded digests), without I/O; the actor that gossips it,
//! the local and consistent tiers and the lookup API land with their issues.

pub mod consistent;
pub mod eventual;
