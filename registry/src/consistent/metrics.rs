//! The consistent tier's Prometheus series (SPEC 10): raft term and indices, leader changes,
//! proposals by outcome, admissions by reason, reads by freshness and result, fence rejections,
//! dropped raft frames, snapshots, chunked snapshot transfers and storage writes; and the SPEC 8
//! planes as gauges (root lag, and one 0/1 series per `CatchUpState`, `DegradedMode` and
//! `RestartState` value), so an alert can fire on "this node serves stale reads" or "no quorum".
//!
//! Invariants: registered once per node at boot, every labelled series present at 0 (the safety
//! counters especially: fence rejections, dropped frames, admissions refused); labels are bounded
//! enums (outcome, reason, freshness, result, state, mode), never a name or a pid. Counters that
//! mirror the raft core's cumulative stats are advanced by difference
//! ([`ConsistentMetrics::observe_core`]). Of each state gauge family exactly one series is 1 from the
//! tier's start on ([`ConsistentMetrics::observe_planes`], then on every published view).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::core::CoreStats;
use super::freshness::ControlView;
use super::planes::{Admission, CatchUpState, DegradedMode, ExecutionOutcome, Freshness, RestartState};
use super::snapshot_transfer::TransferStats;
use super::storage::StoreStats;

/// Results a consistent read is counted under: `ok`, the read refusals of the freshness decision,
/// and the admissions a Strong read can end with.
pub const READ_RESULTS: [&str; 9] = [
    "ok",
    "NotLeader",
    "Unavailable",
    "RootLagTooLarge",
    "RequiredTokenNotCovered",
    "ReadIndexPending",
    "TimedOut",
    "QueueSaturated",
    "Canceled",
];

/// Why an incoming raft-class frame was dropped.
/// `unsafe`: a raft message raft-rs would abort the process on (a heartbeat committing past the
/// local log, entries contradicting committed ones), refused before `step`.
pub const FRAME_DROPS: [&str; 7] =
    ["malformed", "too_large", "forged", "refused_by_raft", "unsafe", "unknown_kind", "no_route"];

/// How an outgoing chunked snapshot transfer ended (`cohort_raft_snapshot_transfers_total`).
pub const SNAPSHOT_TRANSFER_RESULTS: [&str; 4] = ["completed", "failed", "refused", "replaced"];

/// How an incoming snapshot assembly ended (`cohort_raft_snapshot_receives_total`): completed, or
/// why it was dropped (a refused chunk's reason, replaced by a newer transfer, expired, evicted).
pub const SNAPSHOT_RECEIVE_RESULTS: [&str; 10] = [
    "completed",
    "malformed",
    "too_large",
    "out_of_order",
    "inconsistent",
    "stale",
    "invalid_message",
    "replaced",
    "expired",
    "evicted",
];

/// The `state` label values of `cohort_restart_state` (the spellings of [`RestartState::as_str`]).
pub const RESTART_STATES: [&str; 4] = ["clean", "recovered", "degraded", "fatal"];

/// One 0/1 gauge per value of a state enum, resolved at registration.
#[derive(Clone)]
struct StateGauges(Vec<(&'static str, IntGauge)>);

impl StateGauges {
    fn register(
        registry: &Registry,
        name: &str,
        help: &str,
        label: &str,
        values: &[&'static str],
    ) -> Result<Self, prometheus::Error> {
        let family = IntGaugeVec::new(Opts::new(name, help), &[label])?;
        registry.register(Box::new(family.clone()))?;
        Ok(Self(values.iter().map(|v| (*v, family.with_label_values(&[v]))).collect()))
    }

    /// Sets the series of `current` to 1 and every other one to 0.
    fn set(&self, current: &str) {
        for (value, gauge) in &self.0 {
            gauge.set(i64::from(*value == current));
        }
    }
}

/// The consistent tier's series.
#[derive(Clone)]
pub struct ConsistentMetrics {
    pub(crate) term: IntGauge,
    pub(crate) commit_index: IntGauge,
    pub(crate) applied_index: IntGauge,
    pub(crate) is_leader: IntGauge,
    pub(crate) voters: IntGauge,
    pub(crate) leader_changes: IntCounter,
    pub(crate) proposals: IntCounterVec,
    pub(crate) admissions: IntCounterVec,
    pub(crate) reads: IntCounterVec,
    pub(crate) fence_rejections: IntCounter,
    pub(crate) raft_actor_restarts: IntCounter,
    pub(crate) frames_dropped: IntCounterVec,
    pub(crate) frames_sent_failed: IntCounter,
    pub(crate) snapshots: IntCounterVec,
    pub(crate) snapshot_chunks_sent: IntCounter,
    pub(crate) snapshot_chunks_received: IntCounter,
    pub(crate) snapshot_transfers: IntCounterVec,
    pub(crate) snapshot_receives: IntCounterVec,
    pub(crate) storage_writes: IntCounter,
    pub(crate) conf_changes: IntCounter,
    proposal_duration: HistogramVec,
    root_lag: IntGauge,
    catch_up_state: StateGauges,
    degraded_mode: StateGauges,
    restart_state: StateGauges,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl ConsistentMetrics {
    /// Creates and registers every series, at 0.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let term = IntGauge::new("cohort_raft_term", "Current raft term seen by this node.")?;
        let commit_index = IntGauge::new("cohort_raft_commit_index", "Highest raft log index known committed.")?;
        let applied_index =
            IntGauge::new("cohort_raft_applied_index", "Raft log index the registry view has applied (RootToken).")?;
        let is_leader = IntGauge::new("cohort_raft_is_leader", "1 while this node leads the raft group.")?;
        let voters = IntGauge::new("cohort_raft_voters", "Voters in the applied raft configuration.")?;
        let leader_changes =
            IntCounter::new("cohort_raft_leader_changes_total", "Changes of the raft leader seen by this node.")?;
        let proposals = counter_vec(
            "cohort_raft_proposals_total",
            "Consistent-tier writes of this node by ExecutionOutcome reached (rejected, queued, proposed, committed, applied, failed).",
            &["outcome"],
        )?;
        let admissions = counter_vec(
            "cohort_raft_admissions_total",
            "Execution-plane Admission verdicts of the consistent tier (writes and fenced sends), by reason.",
            &["reason"],
        )?;
        let reads = counter_vec(
            "cohort_raft_reads_total",
            "Consistent-tier reads by requested freshness and result (ok or the refusal reason).",
            &["freshness", "result"],
        )?;
        let fence_rejections = IntCounter::new(
            "cohort_registry_fence_rejections_total",
            "Sends by consistent name refused on this node because their fencing token was stale (EpochMismatch).",
        )?;
        let raft_actor_restarts = IntCounter::new(
            "cohort_raft_actor_restarts_total",
            "Supervised restarts of the raft actor from its durable state after a panic inside raft-rs.",
        )?;
        let frames_dropped = counter_vec(
            "cohort_raft_frames_dropped_total",
            "Incoming raft-class frames dropped by reason (the node keeps running).",
            &["reason"],
        )?;
        let frames_sent_failed = IntCounter::new(
            "cohort_raft_frames_unsent_total",
            "Outgoing raft messages the transport did not take (unknown peer, too large, shutting down).",
        )?;
        let snapshots = counter_vec(
            "cohort_raft_snapshots_total",
            "Registry snapshots created here or installed from the leader.",
            &["kind"],
        )?;
        let snapshot_chunks_sent = IntCounter::new(
            "cohort_raft_snapshot_chunks_sent_total",
            "Chunk frames of raft snapshots sent by this node (a snapshot travels in chunks of raft.snapshot_chunk_bytes).",
        )?;
        let snapshot_chunks_received = IntCounter::new(
            "cohort_raft_snapshot_chunks_received_total",
            "Chunk frames of raft snapshots taken in order into an assembly on this node.",
        )?;
        let snapshot_transfers = counter_vec(
            "cohort_raft_snapshot_transfers_total",
            "Outgoing raft snapshot transfers by result: completed (all acknowledged), failed (no progress, aborted by the receiver, unsent; reported to raft, which retries), refused (over the concurrency or size bound), replaced (by a newer snapshot to the same peer).",
            &["result"],
        )?;
        let snapshot_receives = counter_vec(
            "cohort_raft_snapshot_receives_total",
            "Incoming raft snapshot assemblies by result: completed, or why it was dropped.",
            &["result"],
        )?;
        let storage_writes = IntCounter::new(
            "cohort_raft_storage_writes_total",
            "Raft storage write transactions (one per batched Ready: one fsync in durable mode).",
        )?;
        let conf_changes =
            IntCounter::new("cohort_raft_conf_changes_total", "Raft configuration entries applied on this node.")?;
        let proposal_duration = HistogramVec::new(
            HistogramOpts::new(
                "cohort_raft_proposal_duration_seconds",
                "Time from a consistent write entering this node to its answer (forwarding to the leader, commit and apply included), by result: applied or refused.",
            )
            // Up to raft.request_timeout_ms (5 s by default): a write is answered by then.
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["result"],
        )?;
        let root_lag = IntGauge::new(
            "cohort_raft_root_lag",
            "Log entries between the newest commit this node knows of and what its registry view applied (the root_lag of /admin/planes).",
        )?;
        let catch_up_state = StateGauges::register(
            registry,
            "cohort_catch_up_state",
            "1 for this node's CatchUpState (fresh, lagging, bootstrap_required, recovering, unavailable), 0 for the others.",
            "state",
            &CatchUpState::ALL.map(CatchUpState::as_str),
        )?;
        let degraded_mode = StateGauges::register(
            registry,
            "cohort_degraded_mode",
            "1 for this node's DegradedMode (healthy, coordinator_degraded, root_lagging, root_unavailable, view_only), 0 for the others.",
            "mode",
            &DegradedMode::ALL.map(DegradedMode::as_str),
        )?;
        let restart_state = StateGauges::register(
            registry,
            "cohort_restart_state",
            "1 for the RestartState of this node's durable raft state at boot or at the raft actor's last restart (clean, recovered, degraded, fatal), 0 for the others.",
            "state",
            &RESTART_STATES,
        )?;
        for collector in [
            Box::new(proposal_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(root_lag.clone()),
            Box::new(term.clone()),
            Box::new(commit_index.clone()),
            Box::new(applied_index.clone()),
            Box::new(is_leader.clone()),
            Box::new(voters.clone()),
            Box::new(leader_changes.clone()),
            Box::new(proposals.clone()),
            Box::new(admissions.clone()),
            Box::new(reads.clone()),
            Box::new(fence_rejections.clone()),
            Box::new(raft_actor_restarts.clone()),
            Box::new(frames_dropped.clone()),
            Box::new(frames_sent_failed.clone()),
            Box::new(snapshots.clone()),
            Box::new(snapshot_chunks_sent.clone()),
            Box::new(snapshot_chunks_received.clone()),
            Box::new(snapshot_transfers.clone()),
            Box::new(snapshot_receives.clone()),
            Box::new(storage_writes.clone()),
            Box::new(conf_changes.clone()),
        ] {
            registry.register(collector)?;
        }
        for outcome in ExecutionOutcome::ALL {
            proposals.with_label_values(&[outcome.as_str()]).inc_by(0);
        }
        for reason in Admission::REASONS {
            admissions.with_label_values(&[reason]).inc_by(0);
        }
        for freshness in Freshness::ALL {
            for result in READ_RESULTS {
                reads.with_label_values(&[freshness.as_str(), result]).inc_by(0);
            }
        }
        for reason in FRAME_DROPS {
            frames_dropped.with_label_values(&[reason]).inc_by(0);
        }
        for kind in ["created", "installed"] {
            snapshots.with_label_values(&[kind]).inc_by(0);
        }
        for result in SNAPSHOT_TRANSFER_RESULTS {
            snapshot_transfers.with_label_values(&[result]).inc_by(0);
        }
        for result in SNAPSHOT_RECEIVE_RESULTS {
            snapshot_receives.with_label_values(&[result]).inc_by(0);
        }
        for result in ["applied", "refused"] {
            proposal_duration.with_label_values(&[result]);
        }
        Ok(Self {
            term,
            commit_index,
            applied_index,
            is_leader,
            voters,
            leader_changes,
            proposals,
            admissions,
            reads,
            fence_rejections,
            raft_actor_restarts,
            frames_dropped,
            frames_sent_failed,
            snapshots,
            snapshot_chunks_sent,
            snapshot_chunks_received,
            snapshot_transfers,
            snapshot_receives,
            storage_writes,
            conf_changes,
            proposal_duration,
            root_lag,
            catch_up_state,
            degraded_mode,
            restart_state,
        })
    }

    /// Observes how long one caller's write took to be answered, and whether it applied.
    pub(crate) fn proposal_answered(&self, seconds: f64, applied: bool) {
        self.proposal_duration.with_label_values(&[if applied { "applied" } else { "refused" }]).observe(seconds);
    }

    /// Sets the planes gauges from the control view and restart state that `/admin/planes` shows:
    /// the root lag (known commit minus applied, as the planes compute it) and one 1 per state
    /// family.
    pub(crate) fn observe_planes(&self, control: &ControlView, restart: &RestartState) {
        let lag = control.applied.lag_behind(&control.current.max(control.applied));
        self.root_lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
        self.catch_up_state.set(control.catch_up_state.as_str());
        self.degraded_mode.set(control.degraded_mode.as_str());
        self.restart_state.set(restart.as_str());
    }

    /// Sets only the restart-state gauge (the raft actor went down: no view is published after).
    pub(crate) fn observe_restart_state(&self, restart: &RestartState) {
        self.restart_state.set(restart.as_str());
    }

    /// Counts one admission verdict.
    pub(crate) fn admission(&self, admission: &Admission) {
        self.admissions.with_label_values(&[admission.reason()]).inc();
    }

    /// Counts one write reaching `outcome`.
    pub(crate) fn outcome(&self, outcome: ExecutionOutcome) {
        self.proposals.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Counts one read.
    pub(crate) fn read(&self, freshness: Freshness, result: &str) {
        let result = if READ_RESULTS.contains(&result) { result } else { "Unavailable" };
        self.reads.with_label_values(&[freshness.as_str(), result]).inc();
    }

    /// Counts one dropped incoming frame.
    pub(crate) fn frame_dropped(&self, reason: &'static str) {
        self.frames_dropped.with_label_values(&[reason]).inc();
    }

    /// Advances the counters that mirror the core's cumulative stats and sets the gauges.
    pub(crate) fn observe_core(
        &self,
        before: &CoreStats,
        now: &CoreStats,
        store_before: &StoreStats,
        store: &StoreStats,
    ) {
        let gauge = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.term, now.term);
        gauge(&self.commit_index, now.commit_index);
        gauge(&self.applied_index, now.applied_index);
        self.leader_changes.inc_by(now.leader_changes.saturating_sub(before.leader_changes));
        self.snapshots
            .with_label_values(&["created"])
            .inc_by(now.snapshots_created.saturating_sub(before.snapshots_created));
        self.snapshots
            .with_label_values(&["installed"])
            .inc_by(now.snapshots_installed.saturating_sub(before.snapshots_installed));
        self.frames_dropped
            .with_label_values(&["refused_by_raft"])
            .inc_by(now.messages_dropped.saturating_sub(before.messages_dropped));
        self.frames_dropped
            .with_label_values(&["unsafe"])
            .inc_by(now.messages_unsafe.saturating_sub(before.messages_unsafe));
        self.conf_changes.inc_by(now.conf_changes_applied.saturating_sub(before.conf_changes_applied));
        self.storage_writes.inc_by(store.writes.saturating_sub(store_before.writes));
    }

    /// Advances the snapshot-transfer counters by the difference of the transfer core's stats
    /// (dropped assemblies are counted by reason where the chunk is refused:
    /// [`ConsistentMetrics::snapshot_receive_dropped`]).
    pub(crate) fn observe_transfers(&self, before: &TransferStats, now: &TransferStats) {
        let diff = |f: fn(&TransferStats) -> u64| f(now).saturating_sub(f(before));
        self.snapshot_chunks_sent.inc_by(diff(|s| s.chunks_sent));
        self.snapshot_chunks_received.inc_by(diff(|s| s.chunks_received));
        for (result, count) in [
            ("completed", diff(|s| s.sent_completed)),
            ("failed", diff(|s| s.sent_failed)),
            ("refused", diff(|s| s.sent_refused)),
            ("replaced", diff(|s| s.sent_replaced)),
        ] {
            self.snapshot_transfers.with_label_values(&[result]).inc_by(count);
        }
        for (result, count) in [
            ("completed", diff(|s| s.received_completed)),
            ("replaced", diff(|s| s.received_replaced)),
            ("expired", diff(|s| s.received_expired)),
            ("evicted", diff(|s| s.received_evicted)),
        ] {
            self.snapshot_receives.with_label_values(&[result]).inc_by(count);
        }
    }

    /// Counts an incoming snapshot chunk refused for `reason` (a `ChunkRefusal::reason`).
    pub(crate) fn snapshot_receive_dropped(&self, reason: &'static str) {
        let reason = if SNAPSHOT_RECEIVE_RESULTS.contains(&reason) { reason } else { "malformed" };
        self.snapshot_receives.with_label_values(&[reason]).inc();
    }

    /// Admission counts by reason, for `/admin/planes`.
    pub fn admission_counts(&self) -> Vec<(&'static str, u64)> {
        Admission::REASONS.iter().map(|r| (*r, self.admissions.with_label_values(&[r]).get())).collect()
    }

    /// Write counts by outcome, for `/admin/planes`.
    pub fn outcome_counts(&self) -> Vec<(&'static str, u64)> {
        ExecutionOutcome::ALL
            .iter()
            .map(|o| (o.as_str(), self.proposals.with_label_values(&[o.as_str()]).get()))
            .collect()
    }

    /// Fence rejections so far.
    pub fn fence_rejections(&self) -> u64 {
        self.fence_rejections.get()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::super::freshness::RaftRole;
    use super::super::planes::RootToken;
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn view(applied: u64, current: u64, catch_up_state: CatchUpState, degraded_mode: DegradedMode) -> ControlView {
        ControlView {
            role: RaftRole::Follower,
            leader_hint: None,
            quorum_reachable: false,
            has_view: true,
            applied: RootToken::new(2, applied),
            current: RootToken::new(2, current),
            read_index: None,
            catch_up_state,
            degraded_mode,
        }
    }

    #[test]
    fn planes_gauges_exist_from_registration_and_follow_the_view() {
        let registry = Registry::new();
        let m = ConsistentMetrics::register(&registry).unwrap();
        let text = render(&registry);
        assert!(text.contains("cohort_raft_root_lag 0"), "{text}");
        assert!(text.contains("cohort_raft_proposal_duration_seconds_count{result=\"applied\"} 0"), "{text}");
        assert!(text.contains("cohort_raft_proposal_duration_seconds_count{result=\"refused\"} 0"), "{text}");
        for s in CatchUpState::ALL {
            assert!(text.contains(&format!("cohort_catch_up_state{{state=\"{}\"}} 0", s.as_str())), "{text}");
        }
        for d in DegradedMode::ALL {
            assert!(text.contains(&format!("cohort_degraded_mode{{mode=\"{}\"}} 0", d.as_str())), "{text}");
        }
        for r in RESTART_STATES {
            assert!(text.contains(&format!("cohort_restart_state{{state=\"{r}\"}} 0")), "{text}");
        }

        m.observe_planes(
            &view(10, 40, CatchUpState::Lagging, DegradedMode::ViewOnly),
            &RestartState::Recovered { applied_index: 10 },
        );
        let text = render(&registry);
        assert!(text.contains("cohort_raft_root_lag 30"), "{text}");
        assert!(text.contains("cohort_catch_up_state{state=\"lagging\"} 1"), "{text}");
        assert!(text.contains("cohort_catch_up_state{state=\"fresh\"} 0"), "{text}");
        assert!(text.contains("cohort_degraded_mode{mode=\"view_only\"} 1"), "{text}");
        assert!(text.contains("cohort_degraded_mode{mode=\"healthy\"} 0"), "{text}");
        assert!(text.contains("cohort_restart_state{state=\"recovered\"} 1"), "{text}");

        // A view ahead of what it knows committed (applied after a snapshot) is not "behind".
        m.observe_planes(&view(50, 40, CatchUpState::Fresh, DegradedMode::Healthy), &RestartState::Clean);
        m.observe_restart_state(&RestartState::Fatal { reason: "a reason is never a label".into() });
        let text = render(&registry);
        assert!(text.contains("cohort_raft_root_lag 0"), "{text}");
        assert!(text.contains("cohort_degraded_mode{mode=\"view_only\"} 0"), "{text}");
        assert!(text.contains("cohort_restart_state{state=\"fatal\"} 1"), "{text}");
        assert!(text.contains("cohort_restart_state{state=\"clean\"} 0"), "{text}");
        assert!(!text.contains("a reason is never a label"), "{text}");
    }

    #[test]
    fn restart_state_labels_are_the_planes_spellings() {
        let all = [
            RestartState::Clean,
            RestartState::Recovered { applied_index: 1 },
            RestartState::Degraded { reason: String::new() },
            RestartState::Fatal { reason: String::new() },
        ];
        assert_eq!(all.map(|r| r.as_str()), RESTART_STATES);
    }
}
