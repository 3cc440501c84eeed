//! # cohort-chaos: chaos scenarios
//!
//! Will own (SPEC section 11): the scenario format, the runner that starts real `cohort node`
//! processes on 127.0.0.1 and drives them only through the admin API and signals, fault schedules,
//! invariant checkers and the report (JSON + HTML). Used by `cohort chaos run`. Empty until the chaos
//! issue lands.
