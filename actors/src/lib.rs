//! # cohort-actors: processes and process groups
//!
//! Owns (SPEC section 6) process identity and process groups; the per-node process table, hosted
//! ractor actors with bounded mailboxes, remote send, the exit pipeline and supervision come next.
//!
//! - [`pid`]: [`Pid`], `<name.incarnation.local>`, with a parser that never panics.
//! - [`pg`]: the sans-I/O core of Erlang-style process groups: [`pg::ScopeTable`] (one scope on one
//!   node: local join/leave with read-your-writes, lock-free reads, peer batches, sync by difference,
//!   node-down and exit cleanup, an ordered event outbox) and the versioned peer messages.
//!
//! Invariants: a `Node` owns all of this state (no process-global statics); protocol state does no
//! I/O and reads no clock; every map, batch and queue here has a named bound and a typed refusal.
//!
//! ```
//! use cohort_actors::pg::{EventKind, Group, ScopeTable};
//! use cohort_actors::{Pid, PgError};
//! use cohort_cluster::NodeId;
//!
//! let me = NodeId::new("alpha", 1);
//! let scope = ScopeTable::new(me.clone());
//! let room = Group::new("room-1").unwrap();
//! let pid = Pid::new(me, 1);
//!
//! // A pid may join several times and must leave as many times.
//! scope.join(&room, &[pid.clone(), pid.clone()]).unwrap();
//! scope.leave(&room, &[pid.clone()]).unwrap();
//! assert_eq!(&*scope.get_members("room-1"), &[pid.clone()]);
//! scope.leave(&room, &[pid.clone()]).unwrap();
//! assert!(matches!(scope.leave(&room, &[pid.clone()]), Err(PgError::NotJoined { .. })));
//!
//! // Remote pids cannot be joined locally.
//! let remote = Pid::new(NodeId::new("beta", 1), 1);
//! assert!(matches!(scope.join(&room, &[remote]), Err(PgError::NotLocal { .. })));
//!
//! // The scope actor drains the events, in order, for monitors and peers.
//! let kinds: Vec<EventKind> = scope.drain_events(16).into_iter().map(|e| e.kind).collect();
//! assert_eq!(kinds, [EventKind::Join, EventKind::Leave, EventKind::Leave]);
//! ```

pub mod admission;
pub mod host;
pub mod pg;
pub mod pid;
pub mod process;
pub mod supervisor;

pub use host::{DeliveryError, ExitHook, ExitReason, FenceGuard, ProcessHost};
pub use pg::{Group, PgError, ScopeTable};
pub use pid::{Pid, PidParseError};
pub use process::{Down, ExitSignal, MonitorRef, ProcessConfig, ProcessRef, Processes};
pub use supervisor::{
    ChildError, ChildExit, ChildSpec, Restart, RestartIntensity, StopSignal, Strategy, Supervisor, SupervisorError,
    SupervisorMetrics, SupervisorSpec, SupervisorStatus,
};
