//! The consistent tier (SPEC sections 7 and 8): Raft-replicated names with fencing tokens, and the
//! control/execution-plane vocabulary.
//!
//! Role: [`planes`] holds the SPEC 8 vocabulary; [`fsm`] the deterministic registry state
//! machine; [`freshness`] the read decision and the derivation of `CatchUpState`/`DegradedMode`;
//! [`ladder`] voter selection and reconfiguration plans; [`storage`] the raft log over redb or
//! memory; [`core`] the `RawNode` driver that ties them together. The raft actor
//! ([`service::ConsistentTier`]: ticks, the internode `raft` class, raft-id hellos, voter
//! reconciliation, departed-node cleanup, the published view) owns a [`core::RaftCore`] and a
//! [`snapshot_transfer::SnapshotTransfers`] (raft snapshots sent and received in bounded chunks);
//! [`driver`] holds the service's protocol decisions without I/O (the actor is a shell around
//! it; the simulator drives it directly); [`metrics`] holds its Prometheus series. `docs/consistent.md` is the long form.
//!
//! Invariants: only the raft log is truth (the registry view is derived from snapshot + log); a
//! fencing token is the log index that applied the registration; a stale read is only ever a
//! `BestEffort` answer and its witness says so.

pub mod core;
pub mod driver;
pub mod freshness;
pub mod fsm;
pub mod ladder;
pub mod metrics;
pub mod planes;
pub mod service;
pub mod snapshot_transfer;
pub mod storage;

pub use planes::{
    Admission, CatchUpState, ConfStep, ConfStepKind, DEFAULT_MAX_ROOT_LAG, DegradedMode, ExecutionOutcome, Freshness,
    ReadRequest, ReadWitness, RestartState, RootToken, Transition, TransitionId, TransitionPhase,
};
