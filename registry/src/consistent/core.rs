//! The sans-I/O raft driver of the consistent tier: a `RawNode` over [`LogStore`], feeding the
//! [`RegistryFsm`].
//!
//! Role: [`RaftCore`] takes inputs ([`RaftCore::tick`], [`RaftCore::step`], [`RaftCore::propose`],
//! [`RaftCore::read_index`], [`RaftCore::propose_transition`], [`RaftCore::campaign`]) and, on
//! [`RaftCore::handle_ready`], returns a [`ReadyOutput`]: messages to send (addressed by raft id),
//! results of this node's proposals, confirmed reads, leader changes and configuration transitions.
//! The owner (the registry's raft actor) sends the messages, answers callers, and calls
//! `handle_ready` after draining its mailbox so many writes share one durable write.
//!
//! Invariants:
//! - `Ready` is handled in the order raft-rs documents: send messages, install a snapshot, apply
//!   committed entries, persist entries + hard state (+ snapshot) in ONE storage write, then send
//!   the persisted messages, take read states before `advance`, handle the light ready, and
//!   `advance_apply`.
//! - Pre-vote and check-quorum are on; the empty `ConfChangeV2` entry that leaves joint consensus
//!   is applied (its data is empty, its type is not normal).
//! - A pending proposal fails ([`ExecutionOutcome::Failed`]) when the leader or term changes or its
//!   deadline passes; it may still commit later, which is why proposals carry a [`RequestId`] and a
//!   retry returns the first result.
//! - No clock inside: time is the number of [`RaftCore::tick`] calls.
//! - Every queue is bounded ([`MAX_PENDING_PROPOSALS`], [`MAX_PENDING_READS`],
//!   [`MAX_RECENT_TRANSITIONS`]); a refusal is a typed [`Admission`] and is counted.
//!
//! [`RequestId`]: super::fsm::RequestId

// rust-protobuf messages carry hidden fields (unknown_fields, cached_size): they are built by
// assigning fields on a default value, as raft-proto itself does.
#![allow(clippy::field_reassign_with_default)]
use std::collections::{BTreeMap, VecDeque};

use cohort_cluster::NodeId;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType, Snapshot,
};
use raft::{RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};

use super::freshness::{
    CatchUpFacts, ControlView, DegradedFacts, RaftRole, derive_catch_up_state, derive_degraded_mode,
};
use super::fsm::{Applied, FsmError, FsmLimits, Proposal, RegistryFsm};
use super::planes::{
    Admission, ConfStepKind, ExecutionOutcome, RestartState, RootToken, Transition, TransitionId, TransitionPhase,
};
use super::storage::{LogBackend, LogStore, MAX_ENTRY_BYTES, ReadyWrite, StoreError};

/// Ticks without hearing the leader before a follower campaigns (raft-rs randomises in
/// `[ELECTION_TICKS, 2 * ELECTION_TICKS)`). With the node's 100 ms tick this is 1-2 s.
pub const ELECTION_TICKS: usize = 10;

/// Ticks between leader heartbeats (raft-rs advises a tenth of the election timeout; 2 of 10 keeps
/// check-quorum well fed even if a heartbeat is lost).
pub const HEARTBEAT_TICKS: usize = 2;

/// Applied entries between two registry snapshots. Bounds the log kept in memory and on disk; a
/// follower further behind than the retained log catches up by snapshot.
pub const SNAPSHOT_INTERVAL: u64 = 4_096;

/// Entries kept before the snapshot index after compaction, so a follower a little behind catches
/// up from the log instead of a full snapshot.
pub const LOG_RETAIN_ENTRIES: u64 = 1_024;

/// Proposals of this node awaiting their result. At the 20k writes/s goal this is about 3 s of
/// writes; beyond it callers get `QueueSaturated { class: "raft_proposals" }`.
pub const MAX_PENDING_PROPOSALS: usize = 65_536;

/// Linearizable reads awaiting their ReadIndex (`QueueSaturated { class: "raft_reads" }` beyond).
pub const MAX_PENDING_READS: usize = 4_096;

/// Ticks a proposal may wait for its result before it fails with `TimedOut` (5 election timeouts:
/// an election and a retry fit inside).
pub const PROPOSAL_TIMEOUT_TICKS: u64 = 50;

/// Ticks a ReadIndex may wait before it fails with `TimedOut`.
pub const READ_TIMEOUT_TICKS: u64 = 10;

/// Configuration transitions remembered for `/admin/planes`.
pub const MAX_RECENT_TRANSITIONS: usize = 64;

/// Largest append message raft builds, in bytes (raft-rs `max_size_per_msg`).
pub const MAX_MSG_BYTES: u64 = 1024 * 1024;

/// Append messages in flight per follower (raft-rs `max_inflight_msgs`).
pub const MAX_INFLIGHT_MSGS: usize = 256;

/// Uncommitted bytes the leader accepts before dropping proposals (raft-rs `max_uncommitted_size`).
pub const MAX_UNCOMMITTED_BYTES: u64 = 32 * 1024 * 1024;

/// Names of the bounded queues, as `QueueSaturated { class }` labels.
pub const CLASS_PROPOSALS: &str = "raft_proposals";
/// See [`CLASS_PROPOSALS`].
pub const CLASS_READS: &str = "raft_reads";
/// See [`CLASS_PROPOSALS`].
pub const CLASS_CONF_CHANGES: &str = "raft_conf_changes";

/// Tunables of one core; [`CoreConfig::new`] gives the named constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// This node's raft id for a clean store (a recovered store keeps the id it recorded).
    pub raft_id: u64,
    /// This node's identity.
    pub node: NodeId,
    /// See [`ELECTION_TICKS`].
    pub election_ticks: usize,
    /// See [`HEARTBEAT_TICKS`].
    pub heartbeat_ticks: usize,
    /// A fixed election timeout in ticks (at least `election_ticks`, below twice it) instead of
    /// raft-rs's draw from its thread-local RNG on every reset: the simulator draws one per node
    /// from its seed so that a run replays exactly. `None` on real nodes.
    pub election_timeout_ticks: Option<usize>,
    /// See [`SNAPSHOT_INTERVAL`].
    pub snapshot_interval: u64,
    /// See [`LOG_RETAIN_ENTRIES`].
    pub log_retain: u64,
    /// See [`PROPOSAL_TIMEOUT_TICKS`].
    pub proposal_timeout_ticks: u64,
    /// See [`READ_TIMEOUT_TICKS`].
    pub read_timeout_ticks: u64,
    /// The FSM limits (must be equal on every node).
    pub fsm_limits: FsmLimits,
    /// The high 32 bits of every proposal and read id this run hands out. A restarted node keeps
    /// its raft id, and entries its previous run proposed may still be committed and applied
    /// after the restart: with ids starting again at 1 they would be taken for this run's
    /// proposals and answer the wrong caller (found by the simulator: 3 nodes seed 610, an
    /// `Unregister` answered with an older run's `Registered`). [`CoreConfig::new`] derives it
    /// from the node's identity (a new incarnation per start); a supervised restart in the same
    /// incarnation must change it.
    pub run_nonce: u32,
}

impl CoreConfig {
    /// The defaults for `node` with `raft_id`.
    pub fn new(raft_id: u64, node: NodeId) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&node, &mut hasher);
        let run_nonce = std::hash::Hasher::finish(&hasher) as u32;
        Self {
            raft_id,
            node,
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            election_timeout_ticks: None,
            snapshot_interval: SNAPSHOT_INTERVAL,
            log_retain: LOG_RETAIN_ENTRIES,
            proposal_timeout_ticks: PROPOSAL_TIMEOUT_TICKS,
            read_timeout_ticks: READ_TIMEOUT_TICKS,
            fsm_limits: FsmLimits::default(),
            run_nonce,
        }
    }
}

/// Why the core could not start or continue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The durable state is unusable (`RestartState::Fatal`).
    #[error("durable raft state unusable: {0}")]
    DurableStateUnusable(String),
    /// Storage failed; raft must stop.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// raft-rs refused (configuration or internal state).
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a proposal or read was not taken in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Refused with an execution-plane reason.
    #[error("refused: {0}")]
    Refused(Admission),
    /// The command is invalid (bad name, too large).
    #[error("invalid command: {0}")]
    Invalid(FsmError),
}

/// Why an incoming message was dropped (counted; never fatal).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// An entry or snapshot in the message is over its bound.
    #[error("message carries {what} of {len} bytes")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        len: usize,
    },
    /// The message is addressed to another raft id.
    #[error("message for raft id {0}")]
    WrongRecipient(u64),
    /// raft-rs refused it (unknown peer, local message type).
    #[error("raft: {0}")]
    Raft(String),
    /// It claims a log raft-rs cannot reconcile without aborting (see
    /// `RaftCore::check_log_claims`): refused before `step`.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// Identifies one of this node's proposals.
pub type ProposalId = u64;
/// Identifies one of this node's linearizable reads.
pub type ReadId = u64;

/// A proposal of this node that was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedProposal {
    /// The proposal.
    pub proposal_id: ProposalId,
    /// What applying it did (its token, request id and result).
    pub applied: Applied,
}

/// A proposal of this node that ended without a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedProposal {
    /// The proposal.
    pub proposal_id: ProposalId,
    /// `Failed` (may still commit: retry with the same request id).
    pub outcome: ExecutionOutcome,
    /// Why, for the caller.
    pub admission: Admission,
}

/// A linearizable read whose ReadIndex is confirmed and applied here: serve it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReady {
    /// The read.
    pub read_id: ReadId,
    /// The confirmed read index (the applied index covers it).
    pub read_index: u64,
}

/// The leader or term changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// The new leader's raft id, if any.
    pub leader: Option<u64>,
    /// Its node, when the address book knows it.
    pub leader_node: Option<NodeId>,
    /// The current term.
    pub term: u64,
}

/// Everything one [`RaftCore::handle_ready`] produced.
#[derive(Clone, Debug, Default)]
pub struct ReadyOutput {
    /// Messages to send, in order (`Message::to` is the raft id).
    pub messages: Vec<Message>,
    /// This node's proposals that were applied.
    pub applied: Vec<AppliedProposal>,
    /// This node's proposals that failed.
    pub failed: Vec<FailedProposal>,
    /// Reads ready to be served.
    pub reads: Vec<ReadReady>,
    /// Reads that failed (`NotLeader`, `TimedOut`).
    pub failed_reads: Vec<(ReadId, Admission)>,
    /// Set when the leader or term changed.
    pub leader_change: Option<LeaderChange>,
    /// Transitions whose phase changed.
    pub transitions: Vec<Transition>,
}

impl ReadyOutput {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.applied.is_empty()
            && self.failed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.leader_change.is_none()
            && self.transitions.is_empty()
    }
}

/// Counters and gauges for the integrator's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
    /// Proposals taken in (`Proposed`).
    pub proposals_proposed: u64,
    /// Proposals applied (`Applied`).
    pub proposals_applied: u64,
    /// Proposals failed after being proposed (`Failed`: leader change, timeout).
    pub proposals_failed: u64,
    /// Proposals refused before the log (`Rejected`).
    pub proposals_rejected: u64,
    /// ReadIndex requests started.
    pub reads_started: u64,
    /// ReadIndex requests confirmed and applied.
    pub reads_ready: u64,
    /// ReadIndex requests failed.
    pub reads_failed: u64,
    /// Registry snapshots made here.
    pub snapshots_created: u64,
    /// Snapshots received and installed.
    pub snapshots_installed: u64,
    /// Incoming messages dropped ([`StepError`]).
    pub messages_dropped: u64,
    /// Incoming messages refused because raft-rs would abort on them ([`StepError::Malformed`]).
    pub messages_unsafe: u64,
    /// Configuration entries applied.
    pub conf_changes_applied: u64,
}

#[derive(Serialize, Deserialize)]
struct ConfContext {
    transition: Transition,
}

struct PendingProposal {
    deadline: u64,
}

struct PendingRead {
    deadline: u64,
    index: Option<u64>,
}

/// The raft driver (see the module docs).
pub struct RaftCore {
    node: RawNode<LogStore>,
    fsm: RegistryFsm,
    cfg: CoreConfig,
    raft_id: u64,
    restart_state: RestartState,
    view_valid: bool,
    boot_commit: u64,
    conf_state: ConfState,
    applied_term: u64,
    now: u64,
    last_heard: BTreeMap<u64, u64>,
    pending: BTreeMap<ProposalId, PendingProposal>,
    next_proposal: ProposalId,
    reads: BTreeMap<ReadId, PendingRead>,
    next_read: ReadId,
    transitions: VecDeque<Transition>,
    next_transition_seq: u64,
    leader: Option<u64>,
    term: u64,
    last_snapshot_index: u64,
    snapshot_due: bool,
    removed: bool,
    view_reset: bool,
    out: ReadyOutput,
    stats: CoreStats,
}

/// What changed in the registry view since the last [`RaftCore::take_view_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewChanges {
    /// The view was replaced (snapshot installed, or too many changes to list): rebuild a mirror
    /// from [`RegistryFsm::names`].
    pub reset: bool,
    /// Names whose registration changed (look each up again), when not `reset`.
    pub names: Vec<String>,
}

fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl RaftCore {
    /// Initial snapshot for a bootstrap: configuration `voters` at index 1, term 1, and a registry
    /// whose address book knows them. Every seed node must bootstrap with the same list.
    pub fn bootstrap_snapshot(voters: &[(u64, NodeId)], limits: FsmLimits) -> Snapshot {
        let mut fsm = RegistryFsm::new(limits);
        fsm.record_members(voters, &[]);
        // Index 1 is the bootstrap position: the registry has applied nothing else.
        let _ = fsm.skip(RootToken::new(1, 1));
        let mut snapshot = Snapshot::default();
        snapshot.data = fsm.encode_snapshot().into();
        let meta = snapshot.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.set_conf_state(ConfState::from((voters.iter().map(|(id, _)| *id).collect::<Vec<_>>(), Vec::new())));
        snapshot
    }

    /// Opens the store in `backend`; when it is clean and `bootstrap_voters` is given, initialises it
    /// with that configuration (seed nodes). A clean store without bootstrap starts uninitialised and
    /// waits for the leader's snapshot (a joining node added as a learner).
    pub fn open(
        backend: Box<dyn LogBackend>,
        cfg: CoreConfig,
        bootstrap_voters: Option<&[(u64, NodeId)]>,
    ) -> Result<Self, CoreError> {
        let (mut store, restart_state) = LogStore::open(backend);
        if let RestartState::Fatal { reason } = &restart_state {
            return Err(CoreError::DurableStateUnusable(reason.clone()));
        }
        if restart_state == RestartState::Clean {
            match bootstrap_voters {
                Some(voters) => store.bootstrap(cfg.raft_id, Self::bootstrap_snapshot(voters, cfg.fsm_limits))?,
                None => store.assign_raft_id(cfg.raft_id),
            }
        }
        Self::with_store(store, restart_state, cfg)
    }

    fn with_store(store: LogStore, mut restart_state: RestartState, cfg: CoreConfig) -> Result<Self, CoreError> {
        let raft_id = store.raft_id().unwrap_or(cfg.raft_id);
        let snapshot = store.latest_snapshot().clone();
        let snap_meta = snapshot.get_metadata().clone();
        let mut view_valid = true;
        let fsm = if snap_meta.index == 0 {
            RegistryFsm::new(cfg.fsm_limits)
        } else {
            match RegistryFsm::restore(cfg.fsm_limits, &snapshot.data) {
                Ok(fsm) => fsm,
                Err(e) => {
                    // The raft state is intact (log and vote are safe to use) but the view is not:
                    // run, refuse reads and own results, and say why.
                    view_valid = false;
                    restart_state = RestartState::Degraded { reason: format!("registry snapshot: {e}") };
                    RegistryFsm::new(cfg.fsm_limits)
                }
            }
        };
        let boot_commit = store.hard_state().commit;
        let conf_state = snap_meta.get_conf_state().clone();
        let (min_election_tick, max_election_tick) = match cfg.election_timeout_ticks {
            Some(t) => (t, t + 1),
            None => (0, 0),
        };
        let raft_cfg = raft::Config {
            id: raft_id,
            min_election_tick,
            max_election_tick,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: snap_meta.index,
            max_size_per_msg: MAX_MSG_BYTES,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            ..raft::Config::default()
        };
        raft_cfg.validate().map_err(|e| CoreError::Raft(e.to_string()))?;
        let node = RawNode::new(&raft_cfg, store, &discard_logger()).map_err(|e| CoreError::Raft(e.to_string()))?;
        Ok(Self {
            node,
            fsm,
            raft_id,
            restart_state,
            view_valid,
            boot_commit,
            conf_state,
            applied_term: snap_meta.term,
            now: 0,
            last_heard: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_proposal: (u64::from(cfg.run_nonce) << 32) | 1,
            reads: BTreeMap::new(),
            next_read: (u64::from(cfg.run_nonce) << 32) | 1,
            transitions: VecDeque::new(),
            next_transition_seq: 0,
            leader: None,
            term: 0,
            last_snapshot_index: snap_meta.index,
            snapshot_due: false,
            removed: false,
            view_reset: true,
            out: ReadyOutput::default(),
            stats: CoreStats::default(),
            cfg,
        })
    }

    /// This node's raft id (the recorded one for a recovered store).
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// Names changed since the last call (for an owner that mirrors the view for lock-free reads).
    pub fn take_view_changes(&mut self) -> ViewChanges {
        let touched = self.fsm.take_touched();
        let reset = std::mem::take(&mut self.view_reset) || touched.is_none();
        ViewChanges { reset, names: if reset { Vec::new() } else { touched.unwrap_or_default() } }
    }

    /// The highest log index known to be replicated on `raft_id` (leader only; `None` elsewhere or
    /// for an unknown id). The ladder promotes a learner only once it has caught up.
    pub fn progress_matched(&self, raft_id: u64) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.node.raft.prs().get(raft_id).map(|p| p.matched)
    }

    /// The index of the last entry in this node's log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// What the durable state looked like at boot.
    pub fn restart_state(&self) -> &RestartState {
        &self.restart_state
    }

    /// The registry view.
    pub fn fsm(&self) -> &RegistryFsm {
        &self.fsm
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats;
        s.term = self.node.raft.term;
        s.commit_index = self.node.raft.raft_log.committed;
        s.applied_index = self.fsm.applied().index;
        s
    }

    /// Storage counters.
    pub fn store_stats(&self) -> super::storage::StoreStats {
        self.node.store().stats()
    }

    /// The applied configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The leader's raft id, if known.
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|id| *id != 0)
    }

    /// The leader's node name (from the replicated address book), if known.
    pub fn leader_hint(&self) -> Option<String> {
        self.leader().and_then(|id| self.fsm.member(id)).map(|n| n.name.clone())
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Whether a configuration change removed this node (the owner should stop it; its raft id is
    /// never reused).
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// The role, learners reported as such.
    pub fn role(&self) -> RaftRole {
        match self.node.raft.state {
            StateRole::Leader => RaftRole::Leader,
            StateRole::Candidate => RaftRole::Candidate,
            StateRole::PreCandidate => RaftRole::PreCandidate,
            StateRole::Follower if self.conf_state.learners.contains(&self.raft_id) => RaftRole::Learner,
            StateRole::Follower => RaftRole::Follower,
        }
    }

    /// The token of the newest entry this node knows is committed.
    pub fn commit_token(&self) -> RootToken {
        let index = self.node.raft.raft_log.committed;
        let term = self.node.raft.raft_log.term(index).unwrap_or(self.applied_term);
        RootToken::new(term, index)
    }

    /// Recent configuration transitions, oldest first.
    pub fn transitions(&self) -> impl Iterator<Item = &Transition> {
        self.transitions.iter()
    }

    /// Whether a configuration change is in flight (proposed and not applied, or joint).
    pub fn has_pending_conf_change(&self) -> bool {
        self.node.raft.has_pending_conf() || !self.conf_state.voters_outgoing.is_empty()
    }

    /// Whether this node heard from a quorum within an election timeout: for the leader, a majority
    /// of voters (itself included); for others, the leader (which itself stays leader only with a
    /// quorum, by check-quorum).
    pub fn quorum_reachable(&self) -> bool {
        let recent = |id: u64| {
            id == self.raft_id
                || self
                    .last_heard
                    .get(&id)
                    .is_some_and(|t| self.now.saturating_sub(*t) < self.cfg.election_ticks as u64)
        };
        if self.is_leader() {
            let voters = &self.conf_state.voters;
            voters.iter().filter(|v| recent(**v)).count() > voters.len() / 2
        } else {
            self.leader().is_some_and(|l| l != self.raft_id && recent(l))
        }
    }

    /// The control view for the freshness decision (`read_index`: a confirmed ReadIndex for a
    /// `Strong` read on the leader).
    pub fn control_view(&self, read_index: Option<u64>) -> ControlView {
        let initialized = self.node.store().is_initialized() || !self.conf_state.voters.is_empty();
        let catch_up_state = derive_catch_up_state(&CatchUpFacts {
            durable_state_unusable: self.removed,
            initialized,
            snapshot_needed: !self.view_valid,
            boot_commit: self.boot_commit,
            applied: self.fsm.applied().index,
            commit: self.node.raft.raft_log.committed,
        });
        let quorum_reachable = self.quorum_reachable();
        let degraded_mode = derive_degraded_mode(&DegradedFacts {
            leader_known: self.leader().is_some(),
            quorum_reachable,
            catch_up_state,
        });
        ControlView {
            role: self.role(),
            leader_hint: self.leader_hint(),
            quorum_reachable,
            has_view: initialized && self.view_valid,
            applied: self.fsm.applied(),
            current: self.commit_token(),
            read_index,
            catch_up_state,
            degraded_mode,
        }
    }

    /// Starts an election now (bootstrap: one seed campaigns instead of waiting a timeout).
    pub fn campaign(&mut self) -> Result<(), CoreError> {
        self.node.campaign().map_err(|e| CoreError::Raft(e.to_string()))
    }

    /// Tells raft how the snapshot it sent to `to` ended (raft-rs `report_snapshot`): on success
    /// the leader probes the follower's log again; on failure it also waits a heartbeat and then
    /// makes a new snapshot message. Without a report the leader keeps `to` in its snapshot state
    /// and sends it nothing until the leader changes. Ignored off the leader.
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.node.report_snapshot(to, status);
    }

    /// Tells raft the last message to `to` could not be sent (raft-rs `report_unreachable`): a
    /// leader replicating optimistically to it falls back to probing, so lost appends are resent.
    pub fn report_unreachable(&mut self, to: u64) {
        self.node.report_unreachable(to);
    }

    /// Advances logical time by one tick; expired proposals and reads fail with `TimedOut`.
    pub fn tick(&mut self) {
        self.now += 1;
        self.node.tick();
        let now = self.now;
        let expired: Vec<ProposalId> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.pending.remove(&id);
            self.fail_proposal(id, Admission::TimedOut);
        }
        let expired: Vec<ReadId> = self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.reads.remove(&id);
            self.stats.reads_failed += 1;
            self.out.failed_reads.push((id, Admission::TimedOut));
        }
    }

    /// Feeds a message from a peer. Oversized or misaddressed messages are dropped and counted.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        let checked = self.check_message(&msg);
        if let Err(e) = checked {
            match e {
                StepError::Malformed(_) => self.stats.messages_unsafe += 1,
                _ => self.stats.messages_dropped += 1,
            }
            return Err(e);
        }
        self.last_heard.insert(msg.from, self.now);
        self.node.step(msg).map_err(|e| {
            self.stats.messages_dropped += 1;
            StepError::Raft(e.to_string())
        })
    }

    fn check_message(&self, msg: &Message) -> Result<(), StepError> {
        if msg.to != self.raft_id {
            return Err(StepError::WrongRecipient(msg.to));
        }
        self.check_log_claims(msg)?;
        for e in msg.get_entries() {
            let len = e.data.len() + e.context.len();
            if len > MAX_ENTRY_BYTES {
                return Err(StepError::TooLarge { what: "entry", len });
            }
        }
        let snap = msg.get_snapshot().data.len();
        if snap > super::fsm::MAX_SNAPSHOT_BYTES {
            return Err(StepError::TooLarge { what: "snapshot", len: snap });
        }
        Ok(())
    }

    /// Refuses messages on which raft-rs would abort the process (`fatal!`) instead of returning
    /// an error: a legitimate leader never sends them, so they are malformed or forged, and one
    /// of them must not take the tier down (SPEC 7).
    fn check_log_claims(&self, msg: &Message) -> Result<(), StepError> {
        let log = &self.node.raft.raft_log;
        match msg.get_msg_type() {
            // `commit_to` aborts when told to commit past the local log; a leader sends at most
            // what this follower has matched.
            MessageType::MsgHeartbeat if msg.commit > log.last_index() => {
                Err(StepError::Malformed("heartbeat commits past the local log"))
            }
            // `step_leader` aborts on an empty proposal ("stepped empty MsgProp"). And a peer
            // forwards registry commands only: configuration changes are this leader's own
            // decisions (the voter ladder), never a peer's.
            MessageType::MsgPropose if msg.get_entries().is_empty() => {
                Err(StepError::Malformed("empty forwarded proposal"))
            }
            // A read request's context is its one entry; the leader indexes `entries[0]`.
            MessageType::MsgReadIndex if msg.get_entries().len() != 1 => {
                Err(StepError::Malformed("a read request without exactly one context entry"))
            }
            MessageType::MsgPropose
                if msg.get_entries().iter().any(|e| e.get_entry_type() != EntryType::EntryNormal) =>
            {
                Err(StepError::Malformed("a forwarded proposal changes the configuration"))
            }
            MessageType::MsgAppend => {
                for (i, e) in msg.get_entries().iter().enumerate() {
                    if Some(e.index) != msg.index.checked_add(1 + i as u64) {
                        return Err(StepError::Malformed("append entries are not contiguous"));
                    }
                    // An entry that contradicts one already committed here makes `append` abort.
                    if e.index <= log.committed
                        && let Ok(term) = log.term(e.index)
                        && term != 0
                        && term != e.term
                    {
                        return Err(StepError::Malformed("append conflicts with a committed entry"));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn refuse(&mut self, admission: Admission) -> ProposeError {
        self.stats.proposals_rejected += 1;
        ProposeError::Refused(admission)
    }

    /// Proposes a registry command. Followers forward to the leader (raft-rs does, inside the
    /// messages of the next `Ready`); the caller gets `NotLeader` only when no leader is known.
    pub fn propose(&mut self, proposal: &Proposal) -> Result<ProposalId, ProposeError> {
        let data = proposal.encode().map_err(|e| {
            self.stats.proposals_rejected += 1;
            ProposeError::Invalid(e)
        })?;
        if self.pending.len() >= MAX_PENDING_PROPOSALS {
            return Err(self.refuse(Admission::QueueSaturated { class: CLASS_PROPOSALS.into() }));
        }
        if self.leader().is_none() || self.removed {
            return Err(self.refuse(Admission::NotLeader { leader_hint: None }));
        }
        let id = self.next_proposal;
        let mut context = self.raft_id.to_be_bytes().to_vec();
        context.extend_from_slice(&id.to_be_bytes());
        if self.node.propose(context, data).is_err() {
            let hint = self.leader_hint();
            return Err(self.refuse(Admission::NotLeader { leader_hint: hint }));
        }
        self.next_proposal += 1;
        self.stats.proposals_proposed += 1;
        self.pending.insert(id, PendingProposal { deadline: self.now + self.cfg.proposal_timeout_ticks });
        Ok(id)
    }

    /// Starts a linearizable read on any member (SPEC 8): the leader confirms its leadership with a
    /// quorum (ReadIndex); a follower or learner forwards the request to the leader, as etcd does,
    /// and gets the leader's commit index back. The read comes back in [`ReadyOutput::reads`] once
    /// confirmed and applied HERE, so the answer comes from this node's own view. With no leader
    /// known it is refused (`NotLeader` without a hint); a lost request or answer times out
    /// (`TimedOut`, [`READ_TIMEOUT_TICKS`]) and may be retried.
    pub fn read_index(&mut self) -> Result<ReadId, ProposeError> {
        if self.leader().is_none() || self.removed {
            return Err(ProposeError::Refused(Admission::NotLeader { leader_hint: None }));
        }
        if self.reads.len() >= MAX_PENDING_READS {
            return Err(ProposeError::Refused(Admission::QueueSaturated { class: CLASS_READS.into() }));
        }
        let id = self.next_read;
        self.next_read += 1;
        // The leader keys pending reads by their context: it must be unique across the group, so
        // it carries this node's raft id (the same layout as a proposal's context).
        let mut context = self.raft_id.to_be_bytes().to_vec();
        context.extend_from_slice(&id.to_be_bytes());
        self.node.read_index(context);
        self.stats.reads_started += 1;
        self.reads.insert(id, PendingRead { deadline: self.now + self.cfg.read_timeout_ticks, index: None });
        Ok(id)
    }

    /// The next transition id on this leader.
    pub fn next_transition_id(&self) -> TransitionId {
        TransitionId { term: self.node.raft.term, seq: self.next_transition_seq }
    }

    /// Proposes a configuration transition (leader only, one at a time). One step is a simple
    /// change; several go through joint consensus and leave it automatically.
    pub fn propose_transition(&mut self, mut transition: Transition) -> Result<TransitionId, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::Refused(Admission::NotLeader { leader_hint: self.leader_hint() }));
        }
        if self.has_pending_conf_change() {
            return Err(ProposeError::Refused(Admission::QueueSaturated { class: CLASS_CONF_CHANGES.into() }));
        }
        if transition.id.term != self.node.raft.term || transition.id.seq < self.next_transition_seq {
            transition.id = self.next_transition_id();
        }
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        for step in &transition.steps {
            let mut single = ConfChangeSingle::default();
            single.node_id = step.raft_id;
            single.set_change_type(match step.kind {
                ConfStepKind::AddLearner | ConfStepKind::Demote => ConfChangeType::AddLearnerNode,
                ConfStepKind::Promote => ConfChangeType::AddNode,
                ConfStepKind::Remove => ConfChangeType::RemoveNode,
            });
            cc.mut_changes().push(single);
        }
        transition.phase = TransitionPhase::Proposed;
        let context = rmp_serde::to_vec(&ConfContext { transition: transition.clone() })
            .map_err(|e| ProposeError::Invalid(FsmError::Decode(e.to_string())))?;
        if context.len() > MAX_ENTRY_BYTES {
            return Err(ProposeError::Invalid(FsmError::TooLarge { len: context.len(), max: MAX_ENTRY_BYTES }));
        }
        self.node
            .propose_conf_change(context, cc)
            .map_err(|_| ProposeError::Refused(Admission::QueueSaturated { class: CLASS_CONF_CHANGES.into() }))?;
        self.next_transition_seq = transition.id.seq + 1;
        let id = transition.id;
        self.record_transition(transition);
        Ok(id)
    }

    fn record_transition(&mut self, transition: Transition) {
        // A newer configuration took effect: an older one still only planned was replaced
        // (`Superseded`), one still only proposed was dropped with its leader (`Aborted`; raft
        // admits one pending configuration change at a time, so it can no longer apply).
        if matches!(transition.phase, TransitionPhase::Committed | TransitionPhase::Completed) {
            let mut ended = Vec::new();
            for older in self.transitions.iter_mut().filter(|t| t.id < transition.id) {
                let phase = match older.phase {
                    TransitionPhase::Planned => TransitionPhase::Superseded,
                    TransitionPhase::Proposed => TransitionPhase::Aborted,
                    _ => continue,
                };
                older.phase = phase;
                ended.push(older.clone());
            }
            self.out.transitions.extend(ended);
        }
        if let Some(existing) = self.transitions.iter_mut().find(|t| t.id == transition.id) {
            *existing = transition.clone();
        } else {
            self.transitions.push_back(transition.clone());
            while self.transitions.len() > MAX_RECENT_TRANSITIONS {
                self.transitions.pop_front();
            }
        }
        self.out.transitions.push(transition);
    }

    fn fail_proposal(&mut self, proposal_id: ProposalId, admission: Admission) {
        self.stats.proposals_failed += 1;
        self.out.failed.push(FailedProposal { proposal_id, outcome: ExecutionOutcome::Failed, admission });
    }

    /// Handles raft's `Ready` (if any) in the documented order and returns everything produced since
    /// the last call. A storage error is returned as is: raft must stop.
    pub fn handle_ready(&mut self) -> Result<ReadyOutput, CoreError> {
        if self.node.has_ready() {
            let mut rd = self.node.ready();
            self.out.messages.extend(rd.take_messages());
            let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
            if let Some(snap) = &snapshot {
                self.install_snapshot(snap);
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(committed)?;
            self.node.mut_store().persist(ReadyWrite {
                snapshot,
                entries: rd.take_entries(),
                hard_state: rd.hs().cloned(),
            })?;
            self.out.messages.extend(rd.take_persisted_messages());
            let read_states = rd.take_read_states();
            for rs in read_states {
                let Some((reader, read_id)) = decode_proposal_context(&rs.request_ctx) else { continue };
                if reader != self.raft_id {
                    continue;
                }
                if let Some(read) = self.reads.get_mut(&read_id) {
                    read.index = Some(rs.index);
                }
            }
            let mut light = self.node.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().note_commit(commit);
            }
            self.out.messages.extend(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply_entries(committed)?;
            self.node.advance_apply();
            self.maybe_snapshot();
        }
        self.observe_leader();
        self.release_reads();
        Ok(std::mem::take(&mut self.out))
    }

    fn install_snapshot(&mut self, snap: &Snapshot) {
        let meta = snap.get_metadata();
        match RegistryFsm::restore(self.cfg.fsm_limits, &snap.data) {
            Ok(fsm) => {
                self.fsm = fsm;
                self.view_valid = true;
            }
            Err(_) => {
                self.fsm = RegistryFsm::new(self.cfg.fsm_limits);
                self.view_valid = false;
            }
        }
        self.view_reset = true;
        self.conf_state = meta.get_conf_state().clone();
        self.applied_term = meta.term;
        self.last_snapshot_index = meta.index;
        self.stats.snapshots_installed += 1;
        // Our proposals below the snapshot are applied or lost: their callers retry with their ids.
        let pending: Vec<ProposalId> = self.pending.keys().copied().collect();
        for id in pending {
            self.pending.remove(&id);
            self.fail_proposal(id, Admission::NotLeader { leader_hint: self.leader_hint() });
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), CoreError> {
        for entry in entries {
            let token = RootToken::new(entry.term, entry.index);
            if token.index <= self.fsm.applied().index {
                continue;
            }
            self.applied_term = entry.term;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // The empty entry a new leader commits in its term.
                    let _ = self.fsm.skip(token);
                }
                EntryType::EntryNormal => self.apply_command(token, &entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_entry(token, &entry)?,
            }
        }
        Ok(())
    }

    fn apply_command(&mut self, token: RootToken, entry: &Entry) {
        let Ok(applied) = self.fsm.apply(token, &entry.data) else { return };
        let Some((proposer, proposal_id)) = decode_proposal_context(&entry.context) else { return };
        if proposer != self.raft_id || self.pending.remove(&proposal_id).is_none() {
            return;
        }
        if self.view_valid {
            self.stats.proposals_applied += 1;
            self.out.applied.push(AppliedProposal { proposal_id, applied });
        } else {
            // Our view is not trustworthy: the result could be wrong, so none is given.
            self.fail_proposal(proposal_id, Admission::NotLeader { leader_hint: self.leader_hint() });
        }
    }

    fn apply_conf_entry(&mut self, token: RootToken, entry: &Entry) -> Result<(), CoreError> {
        // NB: the ConfChangeV2 that leaves joint consensus is empty and encodes to zero bytes.
        let cc = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data).ok()
        } else {
            // This tier proposes only V2; a V1 entry (from an older writer) is converted.
            ConfChange::parse_from_bytes(&entry.data).ok().map(|c| {
                let mut v2 = ConfChangeV2::default();
                let mut single = ConfChangeSingle::default();
                single.node_id = c.node_id;
                single.set_change_type(c.get_change_type());
                v2.mut_changes().push(single);
                v2
            })
        };
        let context: Option<ConfContext> =
            if entry.context.is_empty() { None } else { rmp_serde::from_slice(&entry.context).ok() };
        let _ = self.fsm.skip(token);
        self.stats.conf_changes_applied += 1;
        let Some(cc) = cc else { return Ok(()) };
        match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                self.conf_state = cs;
                // A node added now can only install a snapshot whose configuration includes it.
                self.snapshot_due = true;
                let removed: Vec<u64> = cc
                    .get_changes()
                    .iter()
                    .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                    .map(|c| c.node_id)
                    .collect();
                // Removed now, or added back (a node removed while away rejoins as a learner and
                // replays its own removal on the way).
                let me = self.raft_id;
                let cs = &self.conf_state;
                self.removed = ![&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next]
                    .iter()
                    .any(|ids| ids.contains(&me));
                let joint = !self.conf_state.voters_outgoing.is_empty();
                if let Some(ConfContext { mut transition }) = context {
                    let added: Vec<(u64, NodeId)> =
                        transition.steps.iter().filter_map(|s| Some((s.raft_id, s.node.clone()?))).collect();
                    self.fsm.record_members(&added, &removed);
                    transition.phase = if joint { TransitionPhase::Committed } else { TransitionPhase::Completed };
                    self.record_transition(transition);
                } else if cc.leave_joint()
                    && let Some(t) = self.transitions.iter().rev().find(|t| t.phase == TransitionPhase::Committed)
                {
                    let mut done = t.clone();
                    done.phase = TransitionPhase::Completed;
                    self.record_transition(done);
                }
            }
            Err(_) => {
                if let Some(ConfContext { mut transition }) = context {
                    transition.phase = TransitionPhase::Aborted;
                    self.record_transition(transition);
                }
            }
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.fsm.applied();
        let interval_reached = applied.index >= self.last_snapshot_index + self.cfg.snapshot_interval;
        if !self.view_valid || applied.index <= self.last_snapshot_index || !(interval_reached || self.snapshot_due) {
            return;
        }
        let Ok(term) = self.node.store().term(applied.index) else { return };
        let mut snapshot = Snapshot::default();
        snapshot.data = self.fsm.encode_snapshot().into();
        let meta = snapshot.mut_metadata();
        meta.index = applied.index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        if self.node.mut_store().store_own_snapshot(snapshot, self.cfg.log_retain).is_ok() {
            self.last_snapshot_index = applied.index;
            self.snapshot_due = false;
            self.stats.snapshots_created += 1;
        }
    }

    fn observe_leader(&mut self) {
        let leader = self.leader();
        let term = self.node.raft.term;
        if leader == self.leader && term == self.term {
            return;
        }
        let leader_changed = leader != self.leader;
        self.leader = leader;
        self.term = term;
        if leader_changed {
            self.stats.leader_changes += 1;
        }
        // Proposals in flight may have been dropped with the old leader: fail them so callers retry
        // (with their request ids, so a proposal that did commit is not applied twice).
        let hint = self.leader_hint();
        let pending: Vec<ProposalId> = self.pending.keys().copied().collect();
        for id in pending {
            self.pending.remove(&id);
            self.fail_proposal(id, Admission::NotLeader { leader_hint: hint.clone() });
        }
        {
            // A read forwarded to (or being confirmed by) the old leader or term may never be
            // answered: fail it so the caller retries against the new one.
            let reads: Vec<ReadId> = self.reads.keys().copied().collect();
            for id in reads {
                self.reads.remove(&id);
                self.stats.reads_failed += 1;
                self.out.failed_reads.push((id, Admission::NotLeader { leader_hint: hint.clone() }));
            }
        }
        self.out.leader_change =
            Some(LeaderChange { leader, leader_node: leader.and_then(|l| self.fsm.member(l).cloned()), term });
    }

    fn release_reads(&mut self) {
        let applied = self.fsm.applied().index;
        let ready: Vec<(ReadId, u64)> =
            self.reads.iter().filter_map(|(id, r)| r.index.filter(|i| *i <= applied).map(|i| (*id, i))).collect();
        for (read_id, read_index) in ready {
            self.reads.remove(&read_id);
            self.stats.reads_ready += 1;
            self.out.reads.push(ReadReady { read_id, read_index });
        }
    }
}

fn decode_proposal_context(context: &[u8]) -> Option<(u64, ProposalId)> {
    if context.len() != 16 {
        return None;
    }
    let proposer = u64::from_be_bytes(context[..8].try_into().ok()?);
    let id = u64::from_be_bytes(context[8..].try_into().ok()?);
    Some((proposer, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistent::storage::MemoryBackend;

    fn transition(term: u64, seq: u64, phase: TransitionPhase) -> Transition {
        Transition { id: TransitionId { term, seq }, steps: Vec::new(), phase, reason: String::new() }
    }

    #[test]
    fn a_newer_configuration_taking_effect_ends_older_planned_and_proposed_ones() {
        let node = NodeId::new("a", 1);
        let voters = [(1, node.clone())];
        let mut core = RaftCore::open(Box::new(MemoryBackend::new()), CoreConfig::new(1, node), Some(&voters)).unwrap();
        core.record_transition(transition(1, 1, TransitionPhase::Planned));
        core.record_transition(transition(1, 2, TransitionPhase::Proposed));
        core.record_transition(transition(1, 3, TransitionPhase::Completed));
        core.record_transition(transition(3, 1, TransitionPhase::Proposed));
        core.record_transition(transition(2, 1, TransitionPhase::Committed));
        let phases: Vec<(u64, u64, TransitionPhase)> =
            core.transitions().map(|t| (t.id.term, t.id.seq, t.phase)).collect();
        assert_eq!(
            phases,
            vec![
                (1, 1, TransitionPhase::Superseded),
                (1, 2, TransitionPhase::Aborted),
                (1, 3, TransitionPhase::Completed),
                (3, 1, TransitionPhase::Proposed),
                (2, 1, TransitionPhase::Committed),
            ]
        );
    }

    #[test]
    fn a_restarted_run_hands_out_proposal_ids_its_previous_run_did_not() {
        use crate::consistent::fsm::{Command, Proposal, RequestId};
        let disk = MemoryBackend::new();
        let first = NodeId::new("a", 1);
        let voters = [(1, first.clone())];
        let mut core =
            RaftCore::open(Box::new(disk.clone()), CoreConfig::new(1, first.clone()), Some(&voters)).unwrap();
        core.campaign().unwrap();
        core.handle_ready().unwrap();
        let proposal = Proposal::new(RequestId::new(first, 1), Command::Noop);
        let before: Vec<ProposalId> = (0..3).map(|_| core.propose(&proposal).unwrap()).collect();
        drop(core);
        // The same raft id (recovered from the log), a new incarnation.
        let second = NodeId::new("a", 2);
        let mut core = RaftCore::open(Box::new(disk), CoreConfig::new(1, second.clone()), None).unwrap();
        core.campaign().unwrap();
        core.handle_ready().unwrap();
        let proposal = Proposal::new(RequestId::new(second, 1), Command::Noop);
        let after: Vec<ProposalId> = (0..3).map(|_| core.propose(&proposal).unwrap()).collect();
        assert!(before.iter().all(|id| !after.contains(id)), "{before:?} {after:?}");
        let mut again = CoreConfig::new(1, NodeId::new("a", 2));
        again.run_nonce = again.run_nonce.wrapping_add(1);
        assert_ne!(again.run_nonce, CoreConfig::new(1, NodeId::new("a", 2)).run_nonce);
    }
}
