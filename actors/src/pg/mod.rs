//! Process groups with Erlang `pg` semantics (SPEC section 6.2): the sans-I/O core.
//!
//! A scope is one independent instance of process groups on one node. This module holds everything
//! about a scope that does no I/O:
//!
//! - [`state`]: group names, one group's membership as an immutable multiset value
//!   ([`GroupSnapshot`]), the multiset diff applied on re-sync, and the [`Event`]s a change produces.
//! - [`snapshot`]: [`ScopeTable`], the concurrent table of a scope's groups. Callers `join`/`leave`
//!   their local pids directly (read-your-writes, no actor round trip); readers get members
//!   lock-free; peers' batches, syncs, node-downs and process exits are applied by the scope actor.
//!   Every change is appended, in per-group order, to an event outbox the actor drains to notify
//!   monitors and tell peers.
//! - [`wire`]: the versioned peer messages (discover, sync, join, leave, digest) and their size bounds.
//! - [`digest`]: [`MembershipDigest`], the incremental multiset hash of one node's memberships that
//!   peers exchange every few seconds, and [`DigestRepair`], the per-peer rule that turns a
//!   mismatch into a rate-limited pull of the peer's full state.
//! - [`peers`]: [`peers::Peers`], the peers driver: every protocol decision of a scope about its
//!   peers (discovers and their retries, syncs and their cuts, the replay ring, resyncs and pulls,
//!   digest and full-state anti-entropy rounds) as a state machine fed inputs with the time passed
//!   in, whose transmits, events and next deadline are polled.
//!
//! And the I/O around them:
//!
//! - [`scope`]: the [`Scope`] handle (join, leave, reads, monitors, broadcast) and the scope actor,
//!   one tokio task per scope per node, the shell of its [`peers::Peers`] driver: it drains the
//!   event outbox to monitors and to the driver, routes peers' frames to it, sends what it asks
//!   to send and wakes at its deadline (digests to every peer every 2 s, a full-state push to one
//!   peer every 30 s as a backstop).
//! - [`service`]: [`PgService`], one per node: creates scopes on first use, routes inbound pg frames
//!   by scope, applies membership changes and process exits to every scope, owns the metrics.
//!
//! Differences from OTP 25 `pg.erl`, on purpose:
//! - a `leave` batch is all-or-nothing: if any pid lacks a join occurrence the whole batch is refused
//!   with [`PgError::NotJoined`] (Erlang leaves the joined ones and says `not_joined` only when none
//!   was), so the caller learns exactly which pid was wrong and events are exact;
//! - on sync Erlang rewrites a changed group without notifying monitors; here a changed group emits
//!   the leave and join events of its multiset difference, so monitors never drift;
//! - peers may only announce their own pids, and every input is bounded ([`ScopeLimits`]);
//! - a broadcast reaches each distinct member once, however many times it joined (Erlang's
//!   `[Pid ! Msg || Pid <- get_members(G)]` sends once per join occurrence);
//! - a node that comes up is sent our full state unasked (and asked for its own with a discover,
//!   re-sent until its full state arrives), so a one-sided down/up heals without Erlang's
//!   discover-back; frames from a node membership does not consider up are ignored, and
//!   anti-entropy repairs frames lost on the wire (Erlang relies on the distribution link never
//!   losing a message): every scope sends each peer a digest of its own memberships every 2 s, and
//!   a peer whose view differs pulls the full state (see [`digest`]);
//! - a scope's actor is supervised: a crashed one is restarted, re-synchronises with every peer
//!   and closes its monitors (see [`scope`], "Restarts").

pub mod digest;
mod metrics;
pub mod peers;
pub mod scope;
pub mod service;
pub mod snapshot;
pub mod state;
pub mod wire;

pub use digest::{DigestRepair, DigestVerdict, MembershipDigest};
pub use scope::{BroadcastRefusal, BroadcastReport, MAX_REFUSALS_REPORTED, Monitor, MonitorTarget, PgEvent, Scope};
pub use service::{DEFAULT_DIGEST_INTERVAL, DEFAULT_SCOPE, MAX_SCOPES, PgConfig, PgService, PgStartError, ScopeHealth};
pub use snapshot::{Members, ScopeTable, SyncReport};
pub use state::{Event, EventKind, Group, GroupSnapshot, NodeState, Origin, multiset_diff};

use cohort_cluster::NodeId;

use crate::pid::Pid;

/// Longest group name, in bytes. Group names travel in every join/leave frame and are the keys of
/// the scope table; 255 bytes fits any sensible hierarchical name while bounding a sync frame.
pub const MAX_GROUP_NAME_BYTES: usize = 255;

/// Default bound on the number of non-empty groups in one scope. A group costs at least ~200 bytes
/// (see the benchmarks), so a million groups is ~200 MB: the most one scope may take of a node.
pub const MAX_GROUPS_PER_SCOPE: usize = 1_000_000;

/// Default bound on memberships (join occurrences, local and remote) in one group. Every change to a
/// group copies its member array (copy-on-write snapshot), so this bounds one write at ~100k pid
/// clones (a few ms) and one group's memory at ~8 MB.
pub const MAX_MEMBERS_PER_GROUP: usize = 100_000;

/// Default bound on pids in one join/leave call or one peer join/leave batch: one batch is one
/// event and one frame; 4096 pids of at most ~90 encoded bytes each stay far below the 16 MiB frame
/// limit, and Erlang users batch in the thousands (OTP's own benchmarks use chunks of 1000).
pub const MAX_PIDS_PER_BATCH: usize = 4_096;

/// Default bound on events produced by local callers and not yet drained by the scope actor. Past it
/// local joins and leaves are refused ([`PgError::EventsSaturated`], i.e. `QueueSaturated`) instead
/// of growing memory while the actor is stuck; removals (exits, node-downs, peer input) are never
/// refused, and the actor drains after each of its own operations.
pub const MAX_PENDING_EVENTS: usize = 65_536;

/// The bounds one scope enforces; [`Default`] is the named constants above. Tests use small values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeLimits {
    /// Non-empty groups in the scope ([`MAX_GROUPS_PER_SCOPE`]).
    pub max_groups: usize,
    /// Memberships in one group ([`MAX_MEMBERS_PER_GROUP`]).
    pub max_members_per_group: usize,
    /// Pids in one batch ([`MAX_PIDS_PER_BATCH`]).
    pub max_pids_per_batch: usize,
    /// Undrained events from local callers ([`MAX_PENDING_EVENTS`]).
    pub max_pending_events: usize,
}

impl Default for ScopeLimits {
    fn default() -> Self {
        Self {
            max_groups: MAX_GROUPS_PER_SCOPE,
            max_members_per_group: MAX_MEMBERS_PER_GROUP,
            max_pids_per_batch: MAX_PIDS_PER_BATCH,
            max_pending_events: MAX_PENDING_EVENTS,
        }
    }
}

/// Why a pg operation was refused. Every variant is something the caller (or the scope actor, which
/// counts them) can act on; [`PgError::reason`] gives the bounded label for metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// A local operation named a pid hosted elsewhere (or by an older incarnation of this node).
    /// Maps to the admission reason `NotHosted`.
    #[error("pid {pid} is not hosted by this node")]
    NotLocal {
        /// The first such pid in the batch.
        pid: Pid,
    },
    /// A leave named a pid without a remaining join occurrence in the group; nothing was changed.
    #[error("pid {pid} has not joined group {group}")]
    NotJoined {
        /// The group.
        group: Group,
        /// The first pid of the batch lacking an occurrence.
        pid: Pid,
    },
    /// A group name was empty.
    #[error("group name is empty")]
    EmptyGroupName,
    /// A group name was longer than [`MAX_GROUP_NAME_BYTES`].
    #[error("group name is {len} bytes, at most {max} allowed")]
    GroupNameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Creating the group would exceed the scope's group bound.
    #[error("scope already holds its maximum of {max} groups")]
    TooManyGroups {
        /// The bound.
        max: usize,
    },
    /// The change would exceed the group's membership bound; nothing was changed.
    #[error("group {group} would exceed {max} members")]
    TooManyMembers {
        /// The group.
        group: Group,
        /// The bound.
        max: usize,
    },
    /// A batch named more pids than allowed.
    #[error("batch of {len} pids, at most {max} allowed")]
    BatchTooLarge {
        /// Pids in the batch.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The scope actor is behind on events; local writes are refused until it drains.
    /// Maps to the admission reason `QueueSaturated { class: pg }`.
    #[error("{pending} pg events wait for the scope actor, at most {max}")]
    EventsSaturated {
        /// Events waiting.
        pending: usize,
        /// The bound.
        max: usize,
    },
    /// Peer input from a node this scope has not discovered (or has since seen go down); ignored,
    /// as Erlang ignores join/leave from a scope process it does not monitor.
    #[error("no pg peer {node} in this scope")]
    UnknownPeer {
        /// The sender.
        node: NodeId,
    },
    /// Peer input from an older incarnation of a node whose newer incarnation is known; ignored.
    #[error("pg peer {node} is superseded by incarnation {current}")]
    StalePeer {
        /// The sender.
        node: NodeId,
        /// The incarnation this scope knows.
        current: u64,
    },
    /// A pid given to `join` (or as a monitor owner) is local but not (or no longer) a live
    /// process of this node's process table. Maps to the admission reason `NotHosted`.
    #[error("NotHosted: pid {pid} is not a live process of this node")]
    NotHosted {
        /// The first such pid.
        pid: Pid,
    },
    /// A scope name is empty or longer than [`wire::MAX_SCOPE_NAME_BYTES`].
    #[error("scope name of {len} bytes, 1 to {max} allowed")]
    BadScopeName {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Creating the scope would exceed the node's scope bound ([`service::MAX_SCOPES`]).
    #[error("the node already runs its maximum of {max} pg scopes")]
    TooManyScopes {
        /// The bound.
        max: usize,
    },
    /// The scope has as many monitors as [`PgConfig::max_monitors_per_scope`] allows.
    #[error("the scope already has its maximum of {max} monitors")]
    TooManyMonitors {
        /// The bound.
        max: usize,
    },
    /// A broadcast payload is larger than [`wire::MAX_BROADCAST_BYTES`].
    #[error("broadcast payload of {len} bytes, at most {max} allowed")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The scope actor has stopped (the service is shutting down). Maps to `Admission::Canceled`.
    #[error("the pg scope is stopped")]
    ScopeStopped,
    /// A peer announced a pid it does not host; the whole message is refused.
    #[error("pg peer {peer} announced pid {pid} that it does not host")]
    NotPeerPid {
        /// The sender.
        peer: NodeId,
        /// The offending pid.
        pid: Pid,
    },
}

impl PgError {
    /// The variant's name, in the SPEC vocabulary: a bounded label for metrics and error bodies.
    pub const fn reason(&self) -> &'static str {
        match self {
            PgError::NotLocal { .. } => "NotLocal",
            PgError::NotJoined { .. } => "NotJoined",
            PgError::EmptyGroupName => "EmptyGroupName",
            PgError::GroupNameTooLong { .. } => "GroupNameTooLong",
            PgError::TooManyGroups { .. } => "TooManyGroups",
            PgError::TooManyMembers { .. } => "TooManyMembers",
            PgError::BatchTooLarge { .. } => "BatchTooLarge",
            PgError::EventsSaturated { .. } => "EventsSaturated",
            PgError::UnknownPeer { .. } => "UnknownPeer",
            PgError::StalePeer { .. } => "StalePeer",
            PgError::NotPeerPid { .. } => "NotPeerPid",
            PgError::NotHosted { .. } => "NotHosted",
            PgError::BadScopeName { .. } => "BadScopeName",
            PgError::TooManyScopes { .. } => "TooManyScopes",
            PgError::TooManyMonitors { .. } => "TooManyMonitors",
            PgError::PayloadTooLarge { .. } => "PayloadTooLarge",
            PgError::ScopeStopped => "ScopeStopped",
        }
    }
}
