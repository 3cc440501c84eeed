//! The seam between a node's process table and the subsystems that track processes (pg scopes,
//! registry tiers): [`ProcessHost`].
//!
//! The process table implements it; pg scopes and registry tiers only see this trait, so each can be
//! tested with a small fake host. The exit pipeline is synchronous and lossless by design: when a
//! process exits, the table calls every registered [`ExitHook`] in registration order *before* it
//! notifies monitors, so by the time anyone observes the exit (a DOWN message, a failed send) the
//! process is already gone from every group and every registry tier. Hooks must be quick and must not
//! block or await: they update in-memory state and hand anything slower to their own actor.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

use crate::Pid;

/// Why a process exited (Erlang's exit reasons, in Cohort's words).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It stopped by itself.
    Normal,
    /// Its handler returned an error (the text is for humans; bounded by the sender).
    Error(String),
    /// Its handler panicked.
    Panic,
    /// It was killed.
    Killed,
    /// Its node went down or left: the process is unreachable (Erlang's `noconnection`).
    NoConnection,
    /// It did not exist (anymore) when the monitor was installed (Erlang's `noproc`).
    NoProc,
}

impl ExitReason {
    /// A bounded label for metrics and logs (`normal`, `error`, `panic`, `killed`, `noconnection`,
    /// `noproc`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ExitReason::Normal => "normal",
            ExitReason::Error(_) => "error",
            ExitReason::Panic => "panic",
            ExitReason::Killed => "killed",
            ExitReason::NoConnection => "noconnection",
            ExitReason::NoProc => "noproc",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Error(e) => write!(f, "error: {e}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Called by the exit pipeline for every process that exits on this node.
pub trait ExitHook: Send + Sync + 'static {
    /// `pid` has exited with `reason`. Must not block; runs on the exit pipeline's task.
    fn on_exit(&self, pid: &Pid, reason: &ExitReason);
}

/// Decides whether a send by name that carries a fencing token may be delivered (SPEC 7: a
/// receiver refuses a stale token with `EpochMismatch`). The consistent registry tier implements
/// it with its view of the name; the process runtime asks it for every fenced delivery on the
/// receiving node, so a stale holder's messages are refused where they would land.
pub trait FenceGuard: Send + Sync + 'static {
    /// Whether `target` holds `name` under `fence_token` in this node's view. A refusal is counted
    /// by the implementation. Must not block.
    fn admit(&self, name: &str, fence_token: u64, target: &Pid) -> bool;
}

/// Why a local delivery failed. Maps onto SPEC 8's `Admission` vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No such process on this node (never existed, or exited): `Admission::NotHosted`.
    #[error("NotHosted: {0} is not hosted on this node")]
    NotHosted(Pid),
    /// Its mailbox is at capacity: `Admission::QueueSaturated { class: user }`.
    #[error("QueueSaturated: the mailbox of {0} is full")]
    MailboxFull(Pid),
    /// The payload does not decode into the process's message type; dropped and counted.
    #[error("the payload does not decode into the message type of {0}")]
    Undecodable(Pid),
}

/// What pg scopes and registry tiers need from a node's process table.
pub trait ProcessHost: Send + Sync + 'static {
    /// The node this table belongs to.
    fn node(&self) -> &NodeId;

    /// Whether `pid` is a live process of this node. Joining or registering a pid for which this is
    /// false is refused with `NotHosted`.
    fn is_hosted(&self, pid: &Pid) -> bool;

    /// Deliver an encoded message (rmp-serde bytes of the process's message type) to a local
    /// process's bounded mailbox, as a remote send or a broadcast fan-out would.
    fn deliver_local(&self, pid: &Pid, payload: Bytes) -> Result<(), DeliveryError>;

    /// Register a hook of the exit pipeline (see the module docs). Hooks are never removed; a node
    /// registers one per subsystem at start.
    fn add_exit_hook(&self, hook: Arc<dyn ExitHook>);
}
