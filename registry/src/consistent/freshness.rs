//! The freshness decision of SPEC 8: may this node serve this read, and with which witness?
//!
//! Role: [`decide`] is a pure function of a [`ReadRequest`] and the node's [`ControlView`] (role,
//! leader, quorum contact, applied and known-committed tokens, the ReadIndex result when leading,
//! catch-up state, degraded mode). It returns the [`ReadWitness`] to attach to the answer or a typed
//! [`ReadRejection`]. [`derive_catch_up_state`] and [`derive_degraded_mode`] turn raw facts the raft
//! core observes into the SPEC's states. The registry actor calls these; nothing here does I/O.
//!
//! Invariants (SPEC 8):
//! - No silent downgrade: a `Strong` or `Bounded` read is served only when its rule holds, and the
//!   witness's `served_freshness` is always the freshness requested.
//! - `Strong` is served by any member once a ReadIndex confirmed by the leader with a quorum (the
//!   leader's own, or one forwarded from a follower or learner) is covered by the applied index,
//!   with any `required_root_token`; without a confirmed ReadIndex it is refused.
//! - `Bounded` is served only by a node in contact with a leader and a quorum (otherwise its idea of
//!   "current" is itself stale), not `BootstrapRequired`/`Recovering`/`Unavailable`, within
//!   `max_root_lag` and covering `required_root_token`.
//! - `BestEffort` is served whenever a local view exists and the node is not `Unavailable`; the
//!   witness carries the lag and the degraded mode, so staleness is always explicit.

use serde::{Deserialize, Serialize};

use super::planes::{CatchUpState, DEFAULT_MAX_ROOT_LAG, DegradedMode, Freshness, ReadRequest, ReadWitness, RootToken};

/// A view within this many entries of the known commit counts as `Fresh`: a follower applies each
/// commit as it learns it, so a lag of a few entries is one in-flight batch, not a lagging node.
pub const FRESH_MAX_LAG: u64 = 16;

/// The node's raft role, as the control plane reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    /// Leads the group.
    Leader,
    /// Follows a leader (or waits for one) as a voter.
    Follower,
    /// Receives the log, does not vote.
    Learner,
    /// Asks for votes.
    Candidate,
    /// Probes whether it could win an election (pre-vote).
    PreCandidate,
}

impl RaftRole {
    /// The JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Learner => "learner",
            Self::Candidate => "candidate",
            Self::PreCandidate => "pre_candidate",
        }
    }
}

/// What the node knows when a read arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlView {
    /// The node's role.
    pub role: RaftRole,
    /// The leader this node knows of (its node name), if any.
    pub leader_hint: Option<String>,
    /// Whether this node heard from a quorum of voters (itself included) within an election timeout.
    pub quorum_reachable: bool,
    /// Whether a local registry view exists (the node has been initialised by a snapshot or log).
    pub has_view: bool,
    /// The token the local view has applied.
    pub applied: RootToken,
    /// The newest committed token this node knows of.
    pub current: RootToken,
    /// For a `Strong` read on the leader: the ReadIndex confirmed by a quorum for this read.
    pub read_index: Option<u64>,
    /// The node's catch-up state.
    pub catch_up_state: CatchUpState,
    /// The node's degraded mode.
    pub degraded_mode: DegradedMode,
}

/// Why a read was refused. Every variant names what the caller can do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum ReadRejection {
    /// `Strong` asked of a non-leader that knows the leader: ask it.
    #[error("not the leader (leader: {leader_hint:?})")]
    NotLeader {
        /// The leader's node name.
        leader_hint: Option<String>,
    },
    /// The node cannot serve this freshness now (no leader, no quorum, recovering, no view).
    #[error("unavailable ({catch_up_state:?}, {degraded_mode:?})")]
    Unavailable {
        /// The node's catch-up state.
        catch_up_state: CatchUpState,
        /// The node's degraded mode.
        degraded_mode: DegradedMode,
    },
    /// `Bounded`: the view is further behind than `max_root_lag`.
    #[error("root lag {root_lag} exceeds max_root_lag {max_root_lag}")]
    RootLagTooLarge {
        /// The current lag.
        root_lag: u64,
        /// The bound asked for.
        max_root_lag: u64,
    },
    /// The view has not applied the caller's `required_root_token` yet.
    #[error("applied {applied} does not cover required {required}")]
    RequiredTokenNotCovered {
        /// The token required.
        required: RootToken,
        /// The token applied.
        applied: RootToken,
    },
    /// `Strong` on the leader: the ReadIndex is not confirmed, or not applied yet; retry shortly.
    #[error("read index {read_index:?} not applied (applied {applied})")]
    ReadIndexPending {
        /// The confirmed read index, if any.
        read_index: Option<u64>,
        /// The token applied.
        applied: RootToken,
    },
}

impl ReadRejection {
    /// The stable reason string (`{"error": ...}` and the `reads by result` metric label).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::NotLeader { .. } => "NotLeader",
            Self::Unavailable { .. } => "Unavailable",
            Self::RootLagTooLarge { .. } => "RootLagTooLarge",
            Self::RequiredTokenNotCovered { .. } => "RequiredTokenNotCovered",
            Self::ReadIndexPending { .. } => "ReadIndexPending",
        }
    }
}

/// Decides whether `view` may serve `request` (see the module invariants).
pub fn decide(request: &ReadRequest, view: &ControlView) -> Result<ReadWitness, ReadRejection> {
    let unavailable =
        || ReadRejection::Unavailable { catch_up_state: view.catch_up_state, degraded_mode: view.degraded_mode };
    let current = view.current.max(view.applied);
    let root_lag = view.applied.lag_behind(&current);
    match request.freshness {
        Freshness::Strong => {
            if !view.quorum_reachable || !view.has_view || view.catch_up_state == CatchUpState::Unavailable {
                return Err(unavailable());
            }
            match view.read_index {
                // Confirmed by the leader with a quorum (on the leader itself, or forwarded from
                // this follower or learner) and applied here: linearizable from this view.
                Some(index) if view.applied.index >= index => {}
                Some(index) => {
                    return Err(ReadRejection::ReadIndexPending { read_index: Some(index), applied: view.applied });
                }
                // No ReadIndex for this read (the published view, not the actor).
                None if view.role != RaftRole::Leader => {
                    return Err(match &view.leader_hint {
                        Some(hint) => ReadRejection::NotLeader { leader_hint: Some(hint.clone()) },
                        None => unavailable(),
                    });
                }
                None => return Err(ReadRejection::ReadIndexPending { read_index: None, applied: view.applied }),
            }
        }
        Freshness::Bounded => {
            let blocked_state = matches!(
                view.catch_up_state,
                CatchUpState::BootstrapRequired | CatchUpState::Recovering | CatchUpState::Unavailable
            );
            // Without a leader and a quorum, `current` is only what this node last heard: a lag
            // computed against it proves nothing, so Bounded is refused rather than guessed.
            let blocked_mode = matches!(
                view.degraded_mode,
                DegradedMode::ViewOnly | DegradedMode::RootUnavailable | DegradedMode::CoordinatorDegraded
            );
            if blocked_state || blocked_mode || !view.has_view || !view.quorum_reachable || view.leader_hint.is_none() {
                return Err(unavailable());
            }
            let max_root_lag = request.max_root_lag.unwrap_or(DEFAULT_MAX_ROOT_LAG);
            if root_lag > max_root_lag {
                return Err(ReadRejection::RootLagTooLarge { root_lag, max_root_lag });
            }
        }
        Freshness::BestEffort => {
            if !view.has_view || view.catch_up_state == CatchUpState::Unavailable {
                return Err(unavailable());
            }
        }
    }
    if let Some(required) = request.required_root_token
        && !view.applied.covers(&required)
    {
        return Err(ReadRejection::RequiredTokenNotCovered { required, applied: view.applied });
    }
    Ok(ReadWitness {
        served_root_token: view.applied,
        current_root_token: current,
        root_lag,
        served_freshness: request.freshness,
        served_by_leader: view.role == RaftRole::Leader,
        catch_up_state: view.catch_up_state,
        degraded_mode: view.degraded_mode,
    })
}

/// Raw facts the raft core observes, from which [`CatchUpState`] is derived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUpFacts {
    /// The durable state was found unusable at boot (`RestartState::Fatal`), or the core stopped.
    pub durable_state_unusable: bool,
    /// The node holds a configuration and a view (it was bootstrapped or received a snapshot/log).
    pub initialized: bool,
    /// The node knows it needs a snapshot (its log is behind the leader's compacted prefix, or its
    /// snapshot did not decode).
    pub snapshot_needed: bool,
    /// The commit index found in the durable state at boot (0 for a clean start).
    pub boot_commit: u64,
    /// The index the view has applied.
    pub applied: u64,
    /// The newest commit index the node knows of.
    pub commit: u64,
}

/// Derives the catch-up state: unusable state first, then missing view, then replay after a
/// restart, then lag against the known commit.
pub fn derive_catch_up_state(facts: &CatchUpFacts) -> CatchUpState {
    if facts.durable_state_unusable {
        CatchUpState::Unavailable
    } else if !facts.initialized || facts.snapshot_needed {
        CatchUpState::BootstrapRequired
    } else if facts.applied < facts.boot_commit {
        CatchUpState::Recovering
    } else if facts.commit.saturating_sub(facts.applied) > FRESH_MAX_LAG {
        CatchUpState::Lagging
    } else {
        CatchUpState::Fresh
    }
}

/// Raw facts from which [`DegradedMode`] is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DegradedFacts {
    /// A leader is known (this node or another).
    pub leader_known: bool,
    /// A quorum of voters (this node included) was heard from within an election timeout.
    pub quorum_reachable: bool,
    /// The node's catch-up state.
    pub catch_up_state: CatchUpState,
}

/// Derives the degraded mode. Isolation (no quorum and no leader) is `ViewOnly`; a known leader
/// without quorum contact is `RootUnavailable`; quorum contact without a leader is an election
/// (`CoordinatorDegraded`); otherwise the view's lag decides between `RootLagging` and `Healthy`.
pub fn derive_degraded_mode(facts: &DegradedFacts) -> DegradedMode {
    match (facts.quorum_reachable, facts.leader_known) {
        (false, false) => DegradedMode::ViewOnly,
        (false, true) => DegradedMode::RootUnavailable,
        (true, false) => DegradedMode::CoordinatorDegraded,
        (true, true) if facts.catch_up_state == CatchUpState::Fresh => DegradedMode::Healthy,
        (true, true) => DegradedMode::RootLagging,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(role: RaftRole) -> ControlView {
        ControlView {
            role,
            leader_hint: Some("leader".into()),
            quorum_reachable: true,
            has_view: true,
            applied: RootToken::new(2, 100),
            current: RootToken::new(2, 100),
            read_index: (role == RaftRole::Leader).then_some(100),
            catch_up_state: CatchUpState::Fresh,
            degraded_mode: DegradedMode::Healthy,
        }
    }

    fn isolated() -> ControlView {
        ControlView {
            role: RaftRole::PreCandidate,
            leader_hint: None,
            quorum_reachable: false,
            has_view: true,
            applied: RootToken::new(2, 90),
            current: RootToken::new(2, 90),
            read_index: None,
            catch_up_state: CatchUpState::Fresh,
            degraded_mode: DegradedMode::ViewOnly,
        }
    }

    fn req(f: Freshness) -> ReadRequest {
        ReadRequest::new(f)
    }

    fn reason(r: Result<ReadWitness, ReadRejection>) -> &'static str {
        match r {
            Ok(_) => "served",
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn decision_table() {
        use Freshness::*;
        let lagging = |lag: u64| ControlView {
            applied: RootToken::new(2, 100 - lag),
            catch_up_state: if lag > FRESH_MAX_LAG { CatchUpState::Lagging } else { CatchUpState::Fresh },
            degraded_mode: if lag > FRESH_MAX_LAG { DegradedMode::RootLagging } else { DegradedMode::Healthy },
            ..healthy(RaftRole::Follower)
        };
        let with_state = |s: CatchUpState| ControlView { catch_up_state: s, ..healthy(RaftRole::Follower) };
        let cases: Vec<(&str, ReadRequest, ControlView, &str)> = vec![
            ("strong on healthy leader", req(Strong), healthy(RaftRole::Leader), "served"),
            (
                "strong on follower without a forwarded read index",
                req(Strong),
                ControlView { read_index: None, ..healthy(RaftRole::Follower) },
                "NotLeader",
            ),
            (
                "strong on learner without a forwarded read index",
                req(Strong),
                ControlView { read_index: None, ..healthy(RaftRole::Learner) },
                "NotLeader",
            ),
            (
                "strong on follower with the leader's read index applied",
                req(Strong),
                ControlView { read_index: Some(100), ..healthy(RaftRole::Follower) },
                "served",
            ),
            (
                "strong on learner with the leader's read index applied",
                req(Strong),
                ControlView { read_index: Some(90), ..healthy(RaftRole::Learner) },
                "served",
            ),
            (
                "strong on follower, read index not applied yet",
                req(Strong),
                ControlView { read_index: Some(101), ..healthy(RaftRole::Follower) },
                "ReadIndexPending",
            ),
            (
                "strong on follower, no leader",
                req(Strong),
                ControlView { leader_hint: None, ..healthy(RaftRole::Follower) },
                "Unavailable",
            ),
            (
                "strong on leader without quorum",
                req(Strong),
                ControlView { quorum_reachable: false, ..healthy(RaftRole::Leader) },
                "Unavailable",
            ),
            (
                "strong before read index confirmed",
                req(Strong),
                ControlView { read_index: None, ..healthy(RaftRole::Leader) },
                "ReadIndexPending",
            ),
            (
                "strong with read index not applied",
                req(Strong),
                ControlView { read_index: Some(101), ..healthy(RaftRole::Leader) },
                "ReadIndexPending",
            ),
            (
                "strong with required token ahead",
                req(Strong).requiring(RootToken::new(2, 101)),
                healthy(RaftRole::Leader),
                "RequiredTokenNotCovered",
            ),
            ("bounded on fresh follower", req(Bounded), healthy(RaftRole::Follower), "served"),
            ("bounded within lag", req(Bounded).with_max_root_lag(10), lagging(10), "served"),
            ("bounded over lag", req(Bounded).with_max_root_lag(9), lagging(10), "RootLagTooLarge"),
            ("bounded default lag", req(Bounded), lagging(DEFAULT_MAX_ROOT_LAG + 1), "RootLagTooLarge"),
            (
                "bounded while bootstrap required",
                req(Bounded),
                with_state(CatchUpState::BootstrapRequired),
                "Unavailable",
            ),
            ("bounded while recovering", req(Bounded), with_state(CatchUpState::Recovering), "Unavailable"),
            ("bounded while unavailable", req(Bounded), with_state(CatchUpState::Unavailable), "Unavailable"),
            ("bounded on isolated node", req(Bounded), isolated(), "Unavailable"),
            (
                "bounded with leader known but no quorum",
                req(Bounded),
                ControlView {
                    quorum_reachable: false,
                    degraded_mode: DegradedMode::RootUnavailable,
                    ..healthy(RaftRole::Follower)
                },
                "Unavailable",
            ),
            (
                "bounded during election",
                req(Bounded),
                ControlView {
                    leader_hint: None,
                    degraded_mode: DegradedMode::CoordinatorDegraded,
                    ..healthy(RaftRole::Candidate)
                },
                "Unavailable",
            ),
            (
                "bounded read-your-writes not covered",
                req(Bounded).requiring(RootToken::new(2, 101)),
                healthy(RaftRole::Follower),
                "RequiredTokenNotCovered",
            ),
            ("strong on isolated node", req(Strong), isolated(), "Unavailable"),
            ("best effort on isolated node", req(BestEffort), isolated(), "served"),
            ("best effort while lagging far", req(BestEffort), lagging(99), "served"),
            ("best effort while recovering", req(BestEffort), with_state(CatchUpState::Recovering), "served"),
            ("best effort when unavailable", req(BestEffort), with_state(CatchUpState::Unavailable), "Unavailable"),
            (
                "best effort without a view",
                req(BestEffort),
                ControlView { has_view: false, ..with_state(CatchUpState::BootstrapRequired) },
                "Unavailable",
            ),
            (
                "best effort read-your-writes not covered",
                req(BestEffort).requiring(RootToken::new(2, 95)),
                isolated(),
                "RequiredTokenNotCovered",
            ),
        ];
        for (name, request, view, expected) in cases {
            assert_eq!(reason(decide(&request, &view)), expected, "case: {name}");
        }
    }

    #[test]
    fn a_strong_read_served_by_a_follower_says_so_in_its_witness() {
        let view = ControlView { read_index: Some(100), ..healthy(RaftRole::Follower) };
        let w = decide(&req(Freshness::Strong), &view).unwrap();
        assert_eq!((w.served_freshness, w.served_by_leader, w.root_lag), (Freshness::Strong, false, 0));
        assert_eq!(w.served_root_token, RootToken::new(2, 100));
    }

    #[test]
    fn served_witness_never_downgrades_and_says_how_stale() {
        for f in Freshness::ALL {
            let w = decide(&req(f), &healthy(RaftRole::Leader)).unwrap();
            assert_eq!(w.served_freshness, f);
            assert!(w.served_by_leader);
        }
        let view = ControlView { applied: RootToken::new(2, 40), ..healthy(RaftRole::Follower) };
        let w = decide(&req(Freshness::BestEffort), &view).unwrap();
        assert_eq!(w.root_lag, 60);
        assert_eq!(w.served_root_token, RootToken::new(2, 40));
        assert_eq!(w.current_root_token, RootToken::new(2, 100));
        assert!(!w.served_by_leader);
    }

    #[test]
    fn isolated_best_effort_is_marked_view_only() {
        let w = decide(&req(Freshness::BestEffort), &isolated()).unwrap();
        assert_eq!(w.degraded_mode, DegradedMode::ViewOnly);
        assert_eq!(w.served_freshness, Freshness::BestEffort);
    }

    #[test]
    fn catch_up_state_derivation() {
        let base = CatchUpFacts { initialized: true, applied: 50, commit: 50, ..CatchUpFacts::default() };
        let cases = [
            (CatchUpFacts { durable_state_unusable: true, ..base }, CatchUpState::Unavailable),
            (CatchUpFacts { initialized: false, ..base }, CatchUpState::BootstrapRequired),
            (CatchUpFacts { snapshot_needed: true, ..base }, CatchUpState::BootstrapRequired),
            (CatchUpFacts { boot_commit: 60, commit: 60, ..base }, CatchUpState::Recovering),
            (CatchUpFacts { commit: 50 + FRESH_MAX_LAG + 1, ..base }, CatchUpState::Lagging),
            (CatchUpFacts { commit: 50 + FRESH_MAX_LAG, ..base }, CatchUpState::Fresh),
            (CatchUpFacts { boot_commit: 50, ..base }, CatchUpState::Fresh),
        ];
        for (facts, expected) in cases {
            assert_eq!(derive_catch_up_state(&facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn degraded_mode_derivation() {
        let f = |quorum_reachable, leader_known, catch_up_state| {
            derive_degraded_mode(&DegradedFacts { leader_known, quorum_reachable, catch_up_state })
        };
        assert_eq!(f(false, false, CatchUpState::Fresh), DegradedMode::ViewOnly);
        assert_eq!(f(false, true, CatchUpState::Fresh), DegradedMode::RootUnavailable);
        assert_eq!(f(true, false, CatchUpState::Fresh), DegradedMode::CoordinatorDegraded);
        assert_eq!(f(true, true, CatchUpState::Lagging), DegradedMode::RootLagging);
        assert_eq!(f(true, true, CatchUpState::Recovering), DegradedMode::RootLagging);
        assert_eq!(f(true, true, CatchUpState::Fresh), DegradedMode::Healthy);
    }
}
