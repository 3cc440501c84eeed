//! # cohort-actors: processes and process groups
//!
//! Will own (SPEC section 6): `Pid`, the per-node process table, ractor actors hosted by a node with
//! bounded mailboxes, local and remote send, the per-node exit pipeline, the supervision tree of the
//! node's subsystems, and cluster-wide process groups with Erlang `pg` semantics.
//!
//! Invariants: a `Node` owns all of this state (no process-global statics); every mailbox is bounded.
//! Filled in by the processes-and-pg issue; empty until then.
