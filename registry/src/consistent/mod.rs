//! The consistent tier (SPEC sections 7 and 8): Raft-replicated names with fencing tokens, and the
//! control/execution-plane vocabulary.
//!
//! Role: the sans-I/O core only (issue 6). [`planes`] holds the SPEC 8 vocabulary; [`fsm`] the
//! deterministic registry state machine; [`freshness`] the read decision and the derivation of
//! `CatchUpState`/`DegradedMode`; [`ladder`] voter selection and reconfiguration plans; [`storage`]
//! the raft log over redb or memory; [`core`] the `RawNode` driver that ties them together. The
//! raft actor (ticks, internode transport, HTTP, metrics) owns a [`core::RaftCore`] and lands with
//! the node wiring.
//!
//! Invariants: only the raft log is truth (the registry view is derived from snapshot + log); a
//! fencing token is the log index that applied the registration; a stale read is only ever a
//! `BestEffort` answer and its witness says so.

pub mod core;
pub mod freshness;
pub mod fsm;
pub mod ladder;
pub mod planes;
pub mod storage;

pub use planes::{
    Admission, CatchUpState, ConfStep, ConfStepKind, DEFAULT_MAX_ROOT_LAG, DegradedMode, ExecutionOutcome, Freshness,
    ReadRequest, ReadWitness, RestartState, RootToken, Transition, TransitionId, TransitionPhase,
};
