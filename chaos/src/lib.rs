//! # cohort-chaos: chaos scenarios
//!
//! Owns SPEC section 11: the scenario format ([`scenario`]), the runner that starts real
//! `cohort node` processes on 127.0.0.1 and drives them only through the admin API and signals
//! ([`runner`], [`process`], [`client`]), the recording of what happened ([`record`]), the pure
//! invariant checkers that judge a recording ([`invariants`]) and the report ([`report`]).
//! `cohort chaos run` calls [`run_file`].

pub mod client;
pub mod invariants;
pub mod process;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod truth;

pub use runner::{RunError, RunOptions, RunOutcome, run, run_file};
