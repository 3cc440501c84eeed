//! The control-plane and execution-plane vocabulary of SPEC section 8, as plain serde types.
//!
//! Role: every other part of the consistent tier (the FSM, the freshness decision, the voter ladder,
//! the raft core) and the node's admin API speak in these types, so code, JSON, logs and metrics use
//! one set of names. Nothing here does I/O or holds state beyond a value.
//!
//! Invariants: [`RootToken`] is ordered by index, then term, so "a node's served token never goes
//! backward" is a plain `>=` comparison; every refusal a caller can see is an [`Admission`] whose
//! [`Admission::reason`] is a stable string (used as a metric label and in `{"error": ...}` bodies);
//! JSON spellings are fixed (`strong|bounded|best_effort`, `snake_case` variants) and covered by tests.

use std::cmp::Ordering;
use std::fmt;

use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

/// The Raft position `(term, index)` a node's materialised registry view has applied.
///
/// Ordered by index, then term: the log index is the position in the one history, the term only
/// breaks ties for the same index seen under different leaders (which a correct log never shows for
/// committed entries). A write's answer carries the token that applied it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RootToken {
    /// The raft term of the entry at `index`.
    pub term: u64,
    /// The raft log index.
    pub index: u64,
}

impl RootToken {
    /// A token from its parts.
    pub const fn new(term: u64, index: u64) -> Self {
        Self { term, index }
    }

    /// Whether a view that applied `self` has applied everything `required` names.
    pub fn covers(&self, required: &RootToken) -> bool {
        self >= required
    }

    /// How many log entries `self` is behind `current` (0 when it is not behind).
    pub fn lag_behind(&self, current: &RootToken) -> u64 {
        current.index.saturating_sub(self.index)
    }
}

impl Ord for RootToken {
    fn cmp(&self, other: &Self) -> Ordering {
        self.index.cmp(&other.index).then(self.term.cmp(&other.term))
    }
}

impl PartialOrd for RootToken {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RootToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.index, self.term)
    }
}

/// How fresh a consistent-tier read must be (SPEC 8). Query-string and JSON spelling:
/// `strong`, `bounded`, `best_effort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// Linearizable: served only by the leader after a ReadIndex its applied index covers.
    Strong,
    /// Served by any node in a servable state whose root lag is within `max_root_lag`.
    Bounded,
    /// Served from the local view while one exists; the witness says how stale it may be.
    BestEffort,
}

impl Freshness {
    /// Every value, for exporting counters at 0.
    pub const ALL: [Freshness; 3] = [Self::Strong, Self::Bounded, Self::BestEffort];

    /// The query-string, JSON and metric-label spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Strong => "strong",
            Self::Bounded => "bounded",
            Self::BestEffort => "best_effort",
        }
    }

    /// Parses the query-string spelling; `None` for anything else (the caller answers 400).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default `max_root_lag` for a `Bounded` read that names none, in log entries. Small enough that a
/// bounded answer is at most a few milliseconds of writes old on a healthy cluster.
pub const DEFAULT_MAX_ROOT_LAG: u64 = 64;

/// A consistent-tier read request: the freshness asked for and its optional bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The freshness asked for.
    pub freshness: Freshness,
    /// Read-your-writes: the token of the caller's own write, which the serving view must cover.
    #[serde(default)]
    pub required_root_token: Option<RootToken>,
    /// For `Bounded`: the largest acceptable `root_lag`, in log entries ([`DEFAULT_MAX_ROOT_LAG`]
    /// when absent).
    #[serde(default)]
    pub max_root_lag: Option<u64>,
}

impl ReadRequest {
    /// A request for `freshness` with no bounds.
    pub const fn new(freshness: Freshness) -> Self {
        Self { freshness, required_root_token: None, max_root_lag: None }
    }

    /// The same request requiring `token` (read-your-writes).
    pub const fn requiring(mut self, token: RootToken) -> Self {
        self.required_root_token = Some(token);
        self
    }

    /// The same request with a `max_root_lag`.
    pub const fn with_max_root_lag(mut self, lag: u64) -> Self {
        self.max_root_lag = Some(lag);
        self
    }
}

/// How far a node's view is from the cluster's committed state (SPEC 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpState {
    /// Applied up to the known commit (within the fresh margin).
    Fresh,
    /// Behind the known commit, catching up through the log.
    Lagging,
    /// Too far behind for the log (or never initialised): needs a snapshot.
    BootstrapRequired,
    /// Replaying its durable state after a restart.
    Recovering,
    /// Cannot catch up now (durable state unusable, or the node is stopped).
    Unavailable,
}

impl CatchUpState {
    /// Every value, for exporting gauges at 0.
    pub const ALL: [CatchUpState; 5] =
        [Self::Fresh, Self::Lagging, Self::BootstrapRequired, Self::Recovering, Self::Unavailable];

    /// The JSON and metric-label spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Lagging => "lagging",
            Self::BootstrapRequired => "bootstrap_required",
            Self::Recovering => "recovering",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What the node can currently offer the control plane (SPEC 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradedMode {
    /// A leader is known, a quorum is reachable, the view is fresh.
    Healthy,
    /// No leader is known (election in progress).
    CoordinatorDegraded,
    /// A leader and quorum exist but this node's view lags.
    RootLagging,
    /// No quorum is reachable: nothing new can commit.
    RootUnavailable,
    /// Isolated from the cluster: only `BestEffort` reads of the local view.
    ViewOnly,
}

impl DegradedMode {
    /// Every value, for exporting gauges at 0.
    pub const ALL: [DegradedMode; 5] =
        [Self::Healthy, Self::CoordinatorDegraded, Self::RootLagging, Self::RootUnavailable, Self::ViewOnly];

    /// The JSON and metric-label spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::CoordinatorDegraded => "coordinator_degraded",
            Self::RootLagging => "root_lagging",
            Self::RootUnavailable => "root_unavailable",
            Self::ViewOnly => "view_only",
        }
    }
}

/// The witness returned with every successful consistent-tier read (SPEC 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWitness {
    /// The token of the view the answer was read from.
    pub served_root_token: RootToken,
    /// The newest committed token this node knows of.
    pub current_root_token: RootToken,
    /// `current - served`, in log entries: how stale the answer may be.
    pub root_lag: u64,
    /// The freshness the answer satisfies (always the one requested: no silent downgrade).
    pub served_freshness: Freshness,
    /// Whether the leader served it.
    pub served_by_leader: bool,
    /// The node's catch-up state when serving.
    pub catch_up_state: CatchUpState,
    /// The node's degraded mode when serving.
    pub degraded_mode: DegradedMode,
}

/// The execution-plane verdict on work entering the node (SPEC 8). Every refusal a caller can see
/// is one of these, never a bare transport error.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Admission {
    /// Taken in.
    Accepted,
    /// This node cannot take the write and knows no reachable leader to forward it to.
    NotLeader {
        /// The leader this node last knew of, when any.
        leader_hint: Option<String>,
    },
    /// A fencing token did not match the name's current registration.
    EpochMismatch,
    /// The target is not hosted here.
    NotHosted,
    /// The caller gave up (or the work was dropped on shutdown).
    Canceled,
    /// The work did not complete within its bound.
    TimedOut,
    /// A bounded queue is full.
    QueueSaturated {
        /// The queue's class (`raft_proposals`, `raft_reads`, ...): a bounded label.
        class: String,
    },
    /// A rate limiter refused the work.
    SchedulerDegraded,
}

impl Admission {
    /// Every reason string, for exporting the `admissions by reason` counters at 0.
    pub const REASONS: [&'static str; 8] = [
        "Accepted",
        "NotLeader",
        "EpochMismatch",
        "NotHosted",
        "Canceled",
        "TimedOut",
        "QueueSaturated",
        "SchedulerDegraded",
    ];

    /// The stable reason string: a metric label and the `error` field of HTTP refusals.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::NotLeader { .. } => "NotLeader",
            Self::EpochMismatch => "EpochMismatch",
            Self::NotHosted => "NotHosted",
            Self::Canceled => "Canceled",
            Self::TimedOut => "TimedOut",
            Self::QueueSaturated { .. } => "QueueSaturated",
            Self::SchedulerDegraded => "SchedulerDegraded",
        }
    }

    /// Whether the work was taken in.
    pub const fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted)
    }
}

impl fmt::Display for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLeader { leader_hint: Some(hint) } => write!(f, "NotLeader (leader: {hint})"),
            Self::QueueSaturated { class } => write!(f, "QueueSaturated ({class})"),
            other => f.write_str(other.reason()),
        }
    }
}

/// Where a consistent write ended (SPEC 8). `Applied` is the only success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionOutcome {
    /// Refused before entering the log (see its [`Admission`]).
    Rejected,
    /// Waiting in the node's bounded queue.
    Queued,
    /// Handed to raft, not yet committed.
    Proposed,
    /// Committed by a quorum, not yet applied here.
    Committed,
    /// Applied to the registry; the answer carries the applying token.
    Applied,
    /// Proposed but the outcome is unknown (leader lost, timed out): retry with the same request id.
    Failed,
}

impl ExecutionOutcome {
    /// Every value, for exporting counters at 0.
    pub const ALL: [ExecutionOutcome; 6] =
        [Self::Rejected, Self::Queued, Self::Proposed, Self::Committed, Self::Applied, Self::Failed];

    /// The JSON and metric-label spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Queued => "queued",
            Self::Proposed => "proposed",
            Self::Committed => "committed",
            Self::Applied => "applied",
            Self::Failed => "failed",
        }
    }
}

/// The node's durable raft state as found at boot (SPEC 8).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RestartState {
    /// No durable state: a fresh node.
    Clean,
    /// Durable state found and validated; the view recovers to `applied_index`.
    Recovered {
        /// The committed index the durable state (snapshot + log) recovers the registry view to.
        applied_index: u64,
    },
    /// Durable state usable only in part (for example the snapshot did not decode and the node
    /// must wait for one from the leader); the node runs but says why it is degraded.
    Degraded {
        /// What was wrong.
        reason: String,
    },
    /// Durable state unusable: the node must not take part in raft with it.
    Fatal {
        /// What was wrong.
        reason: String,
    },
}

impl RestartState {
    /// The JSON and metric-label spelling of the variant.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Recovered { .. } => "recovered",
            Self::Degraded { .. } => "degraded",
            Self::Fatal { .. } => "fatal",
        }
    }
}

/// The stable identity of one raft configuration change: the leader's term when it was proposed and
/// a sequence number within that term. Every node learns it from the log, so all list the same id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransitionId {
    /// The term of the leader that planned it.
    pub term: u64,
    /// Its sequence number within that term.
    pub seq: u64,
}

impl TransitionId {
    /// The id after `self` in the same term.
    pub const fn next(self) -> Self {
        Self { term: self.term, seq: self.seq + 1 }
    }
}

impl fmt::Display for TransitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}-{}", self.term, self.seq)
    }
}

/// Where a [`Transition`] is in its life (SPEC 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionPhase {
    /// Computed by the voter ladder, not yet proposed.
    Planned,
    /// Proposed to raft.
    Proposed,
    /// Its entry was applied (a multi-change transition is now in joint consensus).
    Committed,
    /// The configuration it describes is in force.
    Completed,
    /// Dropped before it took effect (leader lost, refused).
    Aborted,
    /// Replaced by a newer plan before it was proposed.
    Superseded,
}

/// One kind of configuration step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfStepKind {
    /// Add a node as a learner (it receives the log, does not vote).
    AddLearner,
    /// Make a learner a voter.
    Promote,
    /// Make a voter a learner.
    Demote,
    /// Remove a node from the configuration.
    Remove,
}

/// One step of a transition: what happens to which node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfStep {
    /// What happens.
    pub kind: ConfStepKind,
    /// The node's raft id.
    pub raft_id: u64,
    /// The node (name and incarnation), when known: it is recorded in every replica's address book
    /// when the step applies, so raft ids map back to nodes everywhere.
    pub node: Option<NodeId>,
}

/// A change of the raft configuration with its stable id, its steps, its phase and why (SPEC 8).
/// A transition with more than one step goes through joint consensus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transition {
    /// Stable id.
    pub id: TransitionId,
    /// The steps, applied atomically.
    pub steps: Vec<ConfStep>,
    /// Where it is.
    pub phase: TransitionPhase,
    /// Why it was planned (bounded text, for `/admin/planes`).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_token_orders_by_index_then_term() {
        assert!(RootToken::new(9, 3) < RootToken::new(1, 4));
        assert!(RootToken::new(1, 4) < RootToken::new(2, 4));
        assert!(RootToken::new(2, 10).covers(&RootToken::new(2, 10)));
        assert!(!RootToken::new(2, 9).covers(&RootToken::new(2, 10)));
        assert_eq!(RootToken::new(1, 4).lag_behind(&RootToken::new(1, 10)), 6);
        assert_eq!(RootToken::new(1, 10).lag_behind(&RootToken::new(1, 4)), 0);
    }

    #[test]
    fn freshness_query_spelling_round_trips() {
        for f in Freshness::ALL {
            assert_eq!(Freshness::parse(f.as_str()), Some(f));
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{}\"", f.as_str()));
        }
        assert_eq!(Freshness::parse("Strong"), None);
        assert_eq!(Freshness::parse(""), None);
    }

    #[test]
    fn admission_reason_matches_json_tag_spelling_family() {
        let all = [
            Admission::Accepted,
            Admission::NotLeader { leader_hint: Some("b".into()) },
            Admission::EpochMismatch,
            Admission::NotHosted,
            Admission::Canceled,
            Admission::TimedOut,
            Admission::QueueSaturated { class: "raft_proposals".into() },
            Admission::SchedulerDegraded,
        ];
        let reasons: Vec<_> = all.iter().map(Admission::reason).collect();
        assert_eq!(reasons, Admission::REASONS);
        // `cohort_admissions_total` (registered by other crates too) speaks the same words.
        assert_eq!(Admission::REASONS, cohort_actors::admission::REASONS);
        let json = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(json, serde_json::json!({"reason": "not_leader", "leader_hint": "b"}));
        let back: Admission = serde_json::from_value(json).unwrap();
        assert_eq!(back, all[1]);
    }

    #[test]
    fn witness_and_states_use_snake_case_json() {
        let w = ReadWitness {
            served_root_token: RootToken::new(2, 5),
            current_root_token: RootToken::new(2, 7),
            root_lag: 2,
            served_freshness: Freshness::BestEffort,
            served_by_leader: false,
            catch_up_state: CatchUpState::BootstrapRequired,
            degraded_mode: DegradedMode::ViewOnly,
        };
        let json = serde_json::to_value(w).unwrap();
        assert_eq!(json["served_freshness"], "best_effort");
        assert_eq!(json["catch_up_state"], "bootstrap_required");
        assert_eq!(json["degraded_mode"], "view_only");
        assert_eq!(json["served_root_token"], serde_json::json!({"term": 2, "index": 5}));
        for s in CatchUpState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for d in DegradedMode::ALL {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for o in ExecutionOutcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        let r = RestartState::Recovered { applied_index: 12 };
        assert_eq!(serde_json::to_value(&r).unwrap(), serde_json::json!({"state": "recovered", "applied_index": 12}));
    }

    #[test]
    fn read_request_defaults_bounds_to_none() {
        let r: ReadRequest = serde_json::from_str(r#"{"freshness":"bounded"}"#).unwrap();
        assert_eq!(r, ReadRequest::new(Freshness::Bounded));
        let r = r.requiring(RootToken::new(1, 2)).with_max_root_lag(3);
        assert_eq!(r.required_root_token, Some(RootToken::new(1, 2)));
        assert_eq!(r.max_root_lag, Some(3));
    }

    #[test]
    fn transition_ids_are_ordered_and_printable() {
        let a = TransitionId { term: 3, seq: 0 };
        assert!(a < a.next());
        assert!(a.next() < TransitionId { term: 4, seq: 0 });
        assert_eq!(a.next().to_string(), "t3-1");
    }
}
