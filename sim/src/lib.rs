//! Whole-cluster deterministic simulation (issue 12): N Cohort nodes in one thread, on a
//! simulated network and a virtual clock, driven by one seed, under a nemesis that composes
//! faults; checkers judge the run.
//!
//! What runs is the production code of the consistent tier: each node is a
//! [`cohort_registry::consistent::driver::Driver`] (the raft actor's decisions) around a
//! [`cohort_registry::consistent::core::RaftCore`] (raft-rs and the registry FSM) on an in-memory
//! log that survives a simulated crash. What is modelled: membership (a heartbeat failure
//! detector with the real states: alive, suspect after 1 s of silence, down after 3 s), the
//! transport (FIFO links with LAN latency, see [`net`]), the clients (registers, unregisters and
//! `Strong` reads on every node). `docs/simulation.md` says what is simulated and what is not.
//!
//! ```
//! use std::time::Duration;
//! use cohort_sim::{SimConfig, run};
//!
//! let report = run(&SimConfig { seed: 7, nodes: 3, duration: Duration::from_secs(40), ..SimConfig::default() });
//! assert!(report.passed(), "{}", report.summary());
//! ```
//!
//! Invariants: every random choice comes from the seed ([`SimConfig::seed`]); events at the same
//! virtual instant run in the order they were scheduled; no hash-map iteration order reaches a
//! decision. So [`SimReport::trace_hash`] is a function of the configuration: a failing seed
//! replays exactly (`cohort sim --seed S --trace FILE`).

pub mod check;
pub mod links;
pub mod nemesis;
pub mod net;
pub mod scale;
pub mod scale_pg;
mod shell;
mod world;

pub use nemesis::FaultProfile;
pub use world::{MAX_NODES, MIN_DURATION, MembershipModel, SimConfig, SimReport, SimStats, Status, Verdict, run};
