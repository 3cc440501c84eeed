//! The consistent tier (SPEC sections 7 and 8): Raft-replicated names with fencing tokens, and the
//! control/execution-plane vocabulary. Under construction (issue 6).

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
