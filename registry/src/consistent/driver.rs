//! The consistent service's protocol decisions without I/O: [`Driver`] (issue 12).
//!
//! # Role
//! Everything the raft actor decides that is not raft itself: which node a raft id is (hellos and
//! authenticated frames), when a write is proposed, re-proposed with the same request id, queued
//! for a leader or answered (`NotLeader`, `TimedOut`), when a `Strong` read is retried, when the
//! voter ladder is consulted (membership quiet for `reconcile_debounce`, one transition at a
//! time, promotion only of caught-up learners) and with which `down_for` clocks, the departed
//! sweep (`RemoveByNode`, `Readmit`), and the chunked snapshot transfers. It owns the
//! [`RaftCore`] and is driven like quinn-proto's `Connection`:
//!
//! - inputs: `handle_*` methods, each with `now` passed in ([`Driver::handle_propose`],
//!   [`Driver::handle_strong_read`], [`Driver::handle_frame`], [`Driver::handle_members`],
//!   [`Driver::handle_tick`], [`Driver::handle_ready`], [`Driver::handle_unsent`]);
//! - outputs: [`Driver::poll_output`] (frames to send, answers to callers) and
//!   [`Driver::poll_timeout`] (when the next tick is due).
//!
//! No tokio, no clock, no socket, no lock inside: the actor in [`super::service`] is a shell
//! that feeds it and performs its outputs, and the simulator (`cohort-sim`) drives many of them
//! in one thread on a virtual clock. Callers are identified by reply tokens of the shell's
//! choosing (`W` for writes, `R` for reads: oneshot senders in the actor, operation ids in the
//! simulator).
//!
//! # Invariants
//! - Every caller gets exactly one answer, by its deadline plus one tick ([`Driver::handle_tick`]
//!   expires them), or [`Admission::Canceled`] from [`Driver::cancel_all`].
//! - Decisions never depend on hash-map iteration order (ordered maps only), so the same inputs
//!   give the same outputs: a simulator seed replays exactly.
//! - Every queue has a named bound: [`MAX_WAITING`] writes waiting for a leader, the core's
//!   `MAX_PENDING_PROPOSALS`, [`MAX_KNOWN_PEERS`] routes and hellos, [`MAX_OUTPUTS`] outputs not
//!   yet polled (beyond it frames are dropped and counted; raft retransmits).
//! - The shell publishes its view of the core after [`Driver::handle_ready`] and before it
//!   performs the outputs, so a caller reads its own write on this node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_actors::Pid;
use cohort_cluster::member::MemberView;
use cohort_cluster::{MemberState, NodeId};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::core::{CoreError, ProposalId, ProposeError, RaftCore, ReadId, ReadyOutput};
use super::freshness::decide;
use super::fsm::{Applied, Command, CommandResult, Proposal, RequestId};
use super::ladder::{self, LadderMember, LadderPolicy, LadderRule, RaftConfig};
use super::metrics::ConsistentMetrics;
use super::planes::{Admission, ConfStepKind, ExecutionOutcome, Freshness, ReadRequest};
use super::service::{
    ConsistentConfig, HELLO_INTERVAL, HELLO_VERSION, Hello, KIND_HELLO, KIND_RAFT_MESSAGE, KIND_SNAPSHOT_ACK,
    KIND_SNAPSHOT_CHUNK, MAX_HELLO_BYTES, MAX_KNOWN_PEERS, MAX_RAFT_FRAME_BYTES, MAX_WAITING, PROMOTE_MAX_LAG,
    ReadAnswer, ReadError,
};
use super::snapshot_transfer::{
    AckRefusal, SnapshotOutcome, SnapshotTransfers, TransferLimits, TransferStats, Transmit as ChunkTransmit,
};

/// Outputs not yet polled before frames are dropped (counted as `frames_sent_failed`; raft
/// retransmits). Answers to callers are never dropped: each caller is bounded elsewhere.
pub const MAX_OUTPUTS: usize = 65_536;

/// A node this leader heard from on the raft class this recently is not swept as departed, even
/// when membership says it is down: membership's verdict lags the raft path after a heal (its
/// heartbeats are periodic), and removing the names of a node whose registrations are arriving
/// would drop a name right after answering its owner `Registered` (found by the simulator, seed
/// 200 of 5 nodes: a registration committed 80 ms after a heal, then removed by a `RemoveByNode`
/// the leader decided on its stale view).
pub const DEPARTED_CONTACT_GRACE: Duration = Duration::from_secs(2);

/// What the shell must do when a frame it was given could not be sent (the transport refused
/// it): hand it back with [`Driver::handle_unsent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsent {
    /// A raft message to this raft id: raft probes the peer again instead of assuming it arrived.
    Raft { to: u64 },
    /// A snapshot chunk to this raft id: the transfer is aborted and reported to raft.
    Chunk { to: u64 },
    /// A snapshot acknowledgement: counted; the sender's progress timeout recovers it.
    Ack,
    /// A hello: the next one goes a second later.
    Hello,
}

/// One output of the driver.
#[derive(Debug)]
pub enum Output<W, R> {
    /// Send `payload` of frame `kind` to node `to` on the `raft` class.
    Transmit {
        /// The node name.
        to: String,
        /// The frame kind ([`KIND_RAFT_MESSAGE`], [`KIND_HELLO`], ...).
        kind: u8,
        /// The frame body.
        payload: Bytes,
        /// What to hand back with [`Driver::handle_unsent`] if the send fails.
        unsent: Unsent,
    },
    /// Answer a write.
    Written {
        /// The caller's token.
        reply: W,
        /// What applying it did, or why it was not taken.
        result: Result<Applied, Admission>,
    },
    /// Answer a `Strong` read.
    Read {
        /// The caller's token.
        reply: R,
        /// The answer with its witness, or why it was refused.
        result: Result<ReadAnswer, ReadError>,
    },
}

/// Why an internal proposal was made (what to do when it applies).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Internal {
    /// A client write (answered when it applies).
    Client,
    /// A membership-driven change for this node: remove its names (re-proposed while some
    /// remain), or readmit it; one at a time per node (`Driver::removing`).
    RemoveNode(NodeId),
    /// Remove an exited process's names; re-proposed while some remain.
    RemovePid(Pid),
}

struct Pending<W> {
    proposal: Proposal,
    reply: Option<W>,
    deadline: Instant,
    internal: Internal,
}

struct PendingRead<R> {
    name: String,
    request: ReadRequest,
    reply: R,
    /// When the caller gets `TimedOut` (`request_timeout` after it asked); until then a lost
    /// forward or a leader change is retried.
    deadline: Instant,
}

/// The consistent service's decisions for one node; see the module docs.
pub struct Driver<W, R> {
    core: RaftCore,
    local: NodeId,
    config: ConsistentConfig,
    rule: LadderRule,
    metrics: ConsistentMetrics,
    /// The request-id sequence, shared with the tier handle (ids must never repeat on a node).
    seq: Arc<AtomicU64>,
    /// The membership view as last given ([`Driver::handle_members`]).
    members: Arc<Vec<MemberView>>,
    /// raft id -> node name, learned from hellos and authenticated raft frames.
    routes: BTreeMap<u64, String>,
    /// node name -> (incarnation, raft id) from hellos.
    hellos: BTreeMap<String, (NodeId, u64)>,
    pending: BTreeMap<ProposalId, Pending<W>>,
    waiting: VecDeque<Pending<W>>,
    reads: BTreeMap<ReadId, PendingRead<R>>,
    removing: BTreeSet<NodeId>,
    members_fingerprint: u64,
    members_changed_at: Instant,
    /// raft id -> since when the leader has seen it down (the ladder's `down_for`).
    down_since: BTreeMap<u64, Instant>,
    /// node name -> (incarnation, when a raft-class frame of it last arrived); bounded by
    /// [`MAX_KNOWN_PEERS`].
    last_frame: BTreeMap<String, (NodeId, Instant)>,
    /// Whether the core's transitions changed since the shell last took them.
    transitions_dirty: bool,
    last_hello: Option<Instant>,
    last_sweep: Instant,
    last_tick: Instant,
    /// Raft snapshots sent and received in chunks.
    transfers: SnapshotTransfers,
    last_transfer_stats: TransferStats,
    outputs: VecDeque<Output<W, R>>,
}

impl<W, R> Driver<W, R> {
    /// A driver owning `core`, for node `local`, started at `now`. `seq` hands out request ids
    /// (shared with whoever else makes them for this node).
    pub fn new(
        now: Instant,
        core: RaftCore,
        local: NodeId,
        config: ConsistentConfig,
        metrics: ConsistentMetrics,
        seq: Arc<AtomicU64>,
    ) -> Self {
        let transfers = SnapshotTransfers::new(TransferLimits {
            chunk_bytes: config.snapshot_chunk_bytes,
            ..TransferLimits::default()
        });
        Self {
            core,
            local,
            config,
            rule: LadderRule::Autopilot,
            metrics,
            seq,
            members: Arc::new(Vec::new()),
            routes: BTreeMap::new(),
            hellos: BTreeMap::new(),
            pending: BTreeMap::new(),
            waiting: VecDeque::new(),
            reads: BTreeMap::new(),
            removing: BTreeSet::new(),
            members_fingerprint: 0,
            members_changed_at: now,
            down_since: BTreeMap::new(),
            last_frame: BTreeMap::new(),
            transitions_dirty: true,
            last_hello: None,
            last_sweep: now,
            last_tick: now,
            transfers,
            last_transfer_stats: TransferStats::default(),
            outputs: VecDeque::new(),
        }
    }

    /// Test-only: the voter ladder's rule (the simulator's regression switch puts back the old
    /// rule that lost availability; see [`LadderRule`]).
    #[doc(hidden)]
    pub fn set_ladder_rule(&mut self, rule: LadderRule) {
        self.rule = rule;
    }

    /// The core (read-only: the shell publishes its view from it).
    pub fn core(&self) -> &RaftCore {
        &self.core
    }

    /// The core, for what the shell does to it directly (fault injection).
    pub fn core_mut(&mut self) -> &mut RaftCore {
        &mut self.core
    }

    /// The settings.
    pub fn config(&self) -> &ConsistentConfig {
        &self.config
    }

    /// Whether the core's transitions changed since the last call (then the shell copies them).
    pub fn take_transitions_dirty(&mut self) -> bool {
        std::mem::take(&mut self.transitions_dirty)
    }

    /// The next output, in the order they were made.
    pub fn poll_output(&mut self) -> Option<Output<W, R>> {
        self.outputs.pop_front()
    }

    /// When [`Driver::handle_tick`] is due next.
    pub fn poll_timeout(&self) -> Instant {
        self.last_tick + self.config.tick
    }

    /// The membership view changed (or is given again: cheap when it did not).
    pub fn handle_members(&mut self, members: Arc<Vec<MemberView>>) {
        self.members = members;
    }

    /// A write from a caller (`reply: None` for fire-and-forget internal writes such as
    /// `RemoveByPid`), answered by `deadline`.
    pub fn handle_propose(&mut self, _now: Instant, proposal: Proposal, reply: Option<W>, deadline: Instant) {
        let internal = match &proposal.command {
            Command::RemoveByPid { pid } if reply.is_none() => Internal::RemovePid(pid.clone()),
            _ => Internal::Client,
        };
        self.submit(Pending { proposal, reply, deadline, internal }, true);
    }

    /// A `Strong` read of `name` from a caller, answered by `deadline`.
    pub fn handle_strong_read(
        &mut self,
        _now: Instant,
        name: String,
        request: ReadRequest,
        reply: R,
        deadline: Instant,
    ) {
        self.start_strong_read(PendingRead { name, request, reply, deadline });
    }

    /// A frame of the `raft` class from the authenticated node `from`.
    pub fn handle_frame(&mut self, now: Instant, from: &NodeId, kind: u8, payload: &Bytes) {
        // Every raft frame passes here: update in place, allocate only for a new run.
        let room = self.last_frame.len() < MAX_KNOWN_PEERS;
        match self.last_frame.get_mut(&from.name) {
            Some((id, at)) if id == from => *at = now,
            Some(entry) => *entry = (from.clone(), now),
            None if room => {
                self.last_frame.insert(from.name.clone(), (from.clone(), now));
            }
            None => {}
        }
        match kind {
            KIND_RAFT_MESSAGE => self.on_raft_frame(from, payload),
            KIND_HELLO => self.on_hello(from, payload),
            KIND_SNAPSHOT_CHUNK => self.on_snapshot_chunk(now, from, payload),
            KIND_SNAPSHOT_ACK => self.on_snapshot_ack(now, from, payload),
            _ => self.metrics.frame_dropped("unknown_kind"),
        }
    }

    /// A frame given by [`Driver::poll_output`] was not sent.
    pub fn handle_unsent(&mut self, unsent: Unsent) {
        match unsent {
            Unsent::Raft { to } => {
                self.metrics.frames_sent_failed.inc();
                self.core.report_unreachable(to);
            }
            Unsent::Chunk { to } => {
                self.metrics.frames_sent_failed.inc();
                self.transfers.abort(to);
                self.flush_snapshot_transfers();
            }
            Unsent::Ack => self.metrics.frames_sent_failed.inc(),
            Unsent::Hello => {}
        }
    }

    /// The tick: raft's clock, hellos, snapshot-transfer timeouts, retries and deadlines, and on
    /// the leader the voter ladder and the departed sweep.
    pub fn handle_tick(&mut self, now: Instant) {
        self.last_tick = now;
        self.core.tick();
        self.send_hellos(now);
        self.transfers.handle_timeout(now);
        self.flush_snapshot_transfers();
        self.retry_waiting(now);
        self.expire(now);
        if self.core.is_leader() {
            self.reconcile(now);
            if now.saturating_duration_since(self.last_sweep) >= self.config.reconcile_debounce {
                self.last_sweep = now;
                self.sweep_departed(now);
            }
        }
    }

    /// One raft `Ready`: persists (one storage write for everything handled since the last one:
    /// group commit), then queues messages and answers. After an error the core is unusable.
    pub fn handle_ready(&mut self, now: Instant) -> Result<(), CoreError> {
        let out = self.core.handle_ready()?;
        self.dispatch(now, out);
        Ok(())
    }

    /// Swaps in a core reopened after a panic and returns the old one (the shell drops it before
    /// reopening the store when it must, then calls this with the new one).
    pub fn replace_core(&mut self, core: RaftCore) -> RaftCore {
        std::mem::replace(&mut self.core, core)
    }

    /// After a supervised restart ([`Driver::replace_core`] with the reopened core): in-flight
    /// writes go back to waiting with their request ids (a write that did commit answers from the
    /// FSM's cache), reads are asked again, the ladder's down clocks start over.
    pub fn restarted(&mut self, now: Instant) {
        self.down_since.clear();
        self.transitions_dirty = true;
        let in_flight: Vec<Pending<W>> = std::mem::take(&mut self.pending).into_values().collect();
        for pending in in_flight {
            if matches!(pending.internal, Internal::RemoveNode(_)) {
                // Re-decided by whoever leads next (see `submit`).
                self.finish(pending, Err(Admission::Canceled), ExecutionOutcome::Failed);
            } else if self.waiting.len() < MAX_WAITING {
                self.waiting.push_back(pending);
            } else {
                self.time_out(pending);
            }
        }
        let reads: Vec<PendingRead<R>> = std::mem::take(&mut self.reads).into_values().collect();
        for read in reads {
            self.start_strong_read(read);
        }
        self.last_tick = now;
    }

    /// Answers every caller with [`Admission::Canceled`] (the node stops).
    pub fn cancel_all(&mut self) {
        let pending: Vec<Pending<W>> =
            std::mem::take(&mut self.pending).into_values().chain(self.waiting.drain(..)).collect();
        for pending in pending {
            if let Some(reply) = pending.reply {
                self.outputs.push_back(Output::Written { reply, result: Err(Admission::Canceled) });
            }
        }
        for read in std::mem::take(&mut self.reads).into_values() {
            self.outputs
                .push_back(Output::Read { reply: read.reply, result: Err(ReadError::Refused(Admission::Canceled)) });
        }
    }

    fn transmit(&mut self, to: String, kind: u8, payload: Bytes, unsent: Unsent) {
        if self.outputs.len() >= MAX_OUTPUTS {
            self.handle_unsent(unsent);
            return;
        }
        self.outputs.push_back(Output::Transmit { to, kind, payload, unsent });
    }

    /// Hands a write to raft; with no leader known it waits for one (bounded).
    fn submit(&mut self, pending: Pending<W>, first: bool) {
        match self.core.propose(&pending.proposal) {
            Ok(id) => {
                if first {
                    self.metrics.admission(&Admission::Accepted);
                    self.metrics.outcome(ExecutionOutcome::Proposed);
                }
                self.pending.insert(id, pending);
            }
            // A membership-driven change (RemoveByNode, Readmit) is a decision of the leader's own
            // view: when this node no longer leads, it is dropped, never forwarded later to the next
            // leader, which decides on its own view. (Found by the simulator, 3 nodes seed 837: a
            // deposed leader's RemoveByNode, decided on a view 4 s old, waited for a leader and
            // removed a name its owner had registered after coming back.)
            Err(ProposeError::Refused(admission @ Admission::NotLeader { .. }))
                if matches!(pending.internal, Internal::RemoveNode(_)) =>
            {
                self.finish(pending, Err(admission), ExecutionOutcome::Failed)
            }
            Err(ProposeError::Refused(Admission::NotLeader { .. })) if self.waiting.len() < MAX_WAITING => {
                if first {
                    self.metrics.outcome(ExecutionOutcome::Queued);
                }
                self.waiting.push_back(pending);
            }
            Err(ProposeError::Refused(admission)) => self.finish(pending, Err(admission), ExecutionOutcome::Rejected),
            Err(ProposeError::Invalid(error)) => {
                tracing::debug!(%error, "consistent: invalid proposal refused");
                self.finish(pending, Err(Admission::Canceled), ExecutionOutcome::Rejected);
            }
        }
    }

    fn finish(&mut self, pending: Pending<W>, result: Result<Applied, Admission>, outcome: ExecutionOutcome) {
        self.metrics.outcome(outcome);
        if let Err(admission) = &result
            && outcome == ExecutionOutcome::Rejected
        {
            self.metrics.admission(admission);
        }
        if let Internal::RemoveNode(node) = &pending.internal {
            self.removing.remove(node);
        }
        if let Some(reply) = pending.reply {
            self.outputs.push_back(Output::Written { reply, result });
        }
    }

    /// Starts (or retries) a `Strong` read: a ReadIndex on the leader, forwarded to it from a
    /// follower or learner (SPEC 8). With no leader known it is refused at once by the freshness
    /// decision (`Unavailable`, or `NotLeader` with the last hint): waiting would only delay the
    /// same answer on an isolated node.
    fn start_strong_read(&mut self, read: PendingRead<R>) {
        match self.core.read_index() {
            Ok(id) => {
                self.reads.insert(id, read);
            }
            Err(ProposeError::Refused(Admission::NotLeader { .. })) => {
                let result = decide(&read.request, &self.core.control_view(None))
                    .map(|witness| ReadAnswer { registration: self.core.fsm().lookup(&read.name).cloned(), witness })
                    .map_err(ReadError::Rejected);
                self.answer_read(read.request.freshness, read.reply, result);
            }
            Err(ProposeError::Refused(admission)) => {
                self.answer_read(read.request.freshness, read.reply, Err(ReadError::Refused(admission)))
            }
            Err(ProposeError::Invalid(_)) => {
                self.answer_read(read.request.freshness, read.reply, Err(ReadError::Refused(Admission::Canceled)))
            }
        }
    }

    fn answer_read(&mut self, freshness: Freshness, reply: R, result: Result<ReadAnswer, ReadError>) {
        self.metrics.read(freshness, result.as_ref().map_or_else(ReadError::reason, |_| "ok"));
        self.outputs.push_back(Output::Read { reply, result });
    }

    fn on_raft_frame(&mut self, from: &NodeId, payload: &Bytes) {
        if payload.len() > MAX_RAFT_FRAME_BYTES {
            return self.metrics.frame_dropped("too_large");
        }
        let Ok(msg) = Message::parse_from_bytes(payload) else {
            return self.metrics.frame_dropped("malformed");
        };
        self.step_raft_message(from, msg);
    }

    /// Steps a raft message from the authenticated `from` (one frame, or a snapshot rebuilt from
    /// chunks): its raft id must belong to that node.
    fn step_raft_message(&mut self, from: &NodeId, msg: Message) {
        if msg.from == 0 {
            return self.metrics.frame_dropped("malformed");
        }
        // raft-rs forwards a follower's proposals and read requests to the leader with the
        // originator's id left in `from` (`send` fills `from` only when it is unset): such a
        // message says nothing about its sender's id. Learning a route from it bound the
        // originator's id to the forwarder for good, and the leader then sent the originator's
        // heartbeats to the forwarder and refused its hello as forged (simulator, 5 nodes, seed
        // 258 under the 600 ms probe period: the old leader never caught up after a heal).
        if matches!(msg.get_msg_type(), MessageType::MsgPropose | MessageType::MsgReadIndex) {
            let _ = self.core.step(msg);
            return;
        }
        match self.routes.get(&msg.from) {
            Some(name) if *name != from.name => return self.metrics.frame_dropped("forged"),
            Some(_) => {}
            None if self.routes.len() < MAX_KNOWN_PEERS => {
                self.routes.insert(msg.from, from.name.clone());
            }
            None => {}
        }
        // A refusal is counted by the core (messages_dropped, mirrored into frames_dropped).
        let _ = self.core.step(msg);
    }

    fn on_snapshot_chunk(&mut self, now: Instant, from: &NodeId, payload: &Bytes) {
        if let Err(refusal) = self.transfers.handle_chunk(now, from, payload) {
            tracing::debug!(from = %from, %refusal, "consistent: snapshot chunk refused");
            self.metrics.snapshot_receive_dropped(refusal.reason());
        }
        self.flush_snapshot_transfers();
    }

    fn on_snapshot_ack(&mut self, now: Instant, from: &NodeId, payload: &Bytes) {
        match self.transfers.handle_ack(now, from, payload) {
            Err(AckRefusal::Malformed) => self.metrics.frame_dropped("malformed"),
            Err(AckRefusal::WrongPeer) => self.metrics.frame_dropped("forged"),
            // An ack of a transfer that ended or was replaced: normal, nothing to do.
            Err(AckRefusal::UnknownTransfer | AckRefusal::Inconsistent) | Ok(()) => {}
        }
        self.flush_snapshot_transfers();
    }

    /// Queues the transfer core's chunks and acks, hands its reports to raft, and steps the
    /// snapshots it rebuilt.
    fn flush_snapshot_transfers(&mut self) {
        while let Some(transmit) = self.transfers.poll_transmit() {
            match transmit {
                ChunkTransmit::Chunk { to, peer, payload } => {
                    self.transmit(peer, KIND_SNAPSHOT_CHUNK, payload, Unsent::Chunk { to })
                }
                ChunkTransmit::Ack { peer, payload } => self.transmit(peer, KIND_SNAPSHOT_ACK, payload, Unsent::Ack),
            }
        }
        while let Some(report) = self.transfers.poll_report() {
            match report.outcome {
                SnapshotOutcome::Finished => self.core.report_snapshot(report.to, true),
                SnapshotOutcome::Failed(failure) => {
                    tracing::info!(to = report.to, ?failure, "consistent: snapshot transfer failed; raft retries it");
                    self.core.report_snapshot(report.to, false);
                    self.core.report_unreachable(report.to);
                }
            }
        }
        while let Some(received) = self.transfers.poll_snapshot() {
            self.step_raft_message(&received.from, received.message);
        }
        let stats = self.transfers.stats();
        self.metrics.observe_transfers(&self.last_transfer_stats, &stats);
        self.last_transfer_stats = stats;
    }

    fn on_hello(&mut self, from: &NodeId, payload: &Bytes) {
        if payload.len() > MAX_HELLO_BYTES {
            return self.metrics.frame_dropped("too_large");
        }
        let Ok(hello) = rmp_serde::from_slice::<Hello>(payload) else {
            return self.metrics.frame_dropped("malformed");
        };
        if hello.v != HELLO_VERSION || hello.raft_id == 0 {
            return self.metrics.frame_dropped("malformed");
        }
        if hello.node != *from {
            return self.metrics.frame_dropped("forged");
        }
        if !self.hellos.contains_key(&from.name) && self.hellos.len() >= MAX_KNOWN_PEERS {
            return;
        }
        // A raft id belongs to one node name for good (ids are never reused).
        if let Some(name) = self.routes.get(&hello.raft_id)
            && *name != from.name
        {
            return self.metrics.frame_dropped("forged");
        }
        if self.routes.len() < MAX_KNOWN_PEERS || self.routes.contains_key(&hello.raft_id) {
            self.routes.insert(hello.raft_id, from.name.clone());
        }
        self.hellos.insert(from.name.clone(), (hello.node, hello.raft_id));
    }

    /// The other members this node considers live (alive or suspect).
    fn live_peers(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| !m.is_self && matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.info.id.clone())
            .collect()
    }

    fn send_hellos(&mut self, now: Instant) {
        if self.last_hello.is_some_and(|t| now.saturating_duration_since(t) < HELLO_INTERVAL) {
            return;
        }
        self.last_hello = Some(now);
        let hello = Hello { v: HELLO_VERSION, node: self.local.clone(), raft_id: self.core.raft_id() };
        let Ok(body) = rmp_serde::to_vec(&hello) else { return };
        let body = Bytes::from(body);
        for peer in self.live_peers() {
            self.transmit(peer.name, KIND_HELLO, body.clone(), Unsent::Hello);
        }
    }

    fn retry_waiting(&mut self, now: Instant) {
        if self.core.leader().is_none() || self.waiting.is_empty() {
            return;
        }
        let waiting: Vec<Pending<W>> = self.waiting.drain(..).collect();
        for pending in waiting {
            if pending.deadline <= now {
                self.time_out(pending);
            } else {
                self.submit(pending, false);
            }
        }
    }

    fn time_out(&mut self, pending: Pending<W>) {
        let admission = match self.core.leader() {
            None => Admission::NotLeader { leader_hint: None },
            Some(_) => Admission::TimedOut,
        };
        self.metrics.admission(&admission);
        self.finish(pending, Err(admission), ExecutionOutcome::Failed);
    }

    /// Answers every caller whose `request_timeout` passed, wherever its request is: waiting for a
    /// leader, proposed (the core's own attempt may still commit later: a retry with the same
    /// request id then returns that result), or a read in flight. So a caller never waits longer
    /// than `request_timeout` plus one tick, also during a failover (issue 11).
    fn expire(&mut self, now: Instant) {
        let (expired, kept): (VecDeque<Pending<W>>, VecDeque<Pending<W>>) =
            self.waiting.drain(..).partition(|p| p.deadline <= now);
        self.waiting = kept;
        for pending in expired {
            self.time_out(pending);
        }
        let expired: Vec<ProposalId> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                self.time_out(pending);
            }
        }
        let expired: Vec<ReadId> = self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(read) = self.reads.remove(&id) {
                let admission = if self.core.leader().is_some() {
                    Admission::TimedOut
                } else {
                    Admission::NotLeader { leader_hint: None }
                };
                self.metrics.admission(&admission);
                self.answer_read(read.request.freshness, read.reply, Err(ReadError::Refused(admission)));
            }
        }
    }

    /// Messages out, answers to callers, follow-ups of internal writes.
    fn dispatch(&mut self, now: Instant, out: ReadyOutput) {
        for msg in out.messages {
            self.send_message(now, msg);
        }
        for applied in out.applied {
            let Some(pending) = self.pending.remove(&applied.proposal_id) else { continue };
            self.metrics.outcome(ExecutionOutcome::Committed);
            let follow_up = match (&pending.internal, &applied.applied.result) {
                (Internal::RemoveNode(node), CommandResult::Removed { remaining: true, .. }) => {
                    Some(Command::RemoveByNode { node: node.clone() })
                }
                (Internal::RemovePid(pid), CommandResult::Removed { remaining: true, .. }) => {
                    Some(Command::RemoveByPid { pid: pid.clone() })
                }
                _ => None,
            };
            let internal = pending.internal.clone();
            let deadline = pending.deadline;
            self.finish(pending, Ok(applied.applied), ExecutionOutcome::Applied);
            if let Some(command) = follow_up {
                let proposal = Proposal::new(self.next_request_id(), command);
                if let Internal::RemoveNode(node) = &internal {
                    self.removing.insert(node.clone());
                }
                let deadline = deadline.max(now + self.config.request_timeout);
                self.submit(Pending { proposal, reply: None, deadline, internal }, true);
            }
        }
        for failed in out.failed {
            let Some(pending) = self.pending.remove(&failed.proposal_id) else { continue };
            if pending.deadline > now && !matches!(pending.internal, Internal::RemoveNode(_)) {
                // Same request id: if the first attempt did commit, the FSM answers from its cache.
                self.submit(pending, false);
            } else {
                self.metrics.admission(&failed.admission);
                self.finish(pending, Err(failed.admission), ExecutionOutcome::Failed);
            }
        }
        for ready in out.reads {
            let Some(read) = self.reads.remove(&ready.read_id) else { continue };
            let result = decide(&read.request, &self.core.control_view(Some(ready.read_index)))
                .map(|witness| ReadAnswer { registration: self.core.fsm().lookup(&read.name).cloned(), witness })
                .map_err(ReadError::Rejected);
            self.answer_read(read.request.freshness, read.reply, result);
        }
        for (read_id, admission) in out.failed_reads {
            let Some(read) = self.reads.remove(&read_id) else { continue };
            if read.deadline > now && matches!(admission, Admission::TimedOut | Admission::NotLeader { .. }) {
                // Lost with a leader change or a dropped message: ask again (a read has no
                // side effect, so a retry needs no id).
                self.start_strong_read(read);
            } else {
                self.answer_read(read.request.freshness, read.reply, Err(ReadError::Refused(admission)));
            }
        }
        if let Some(change) = out.leader_change {
            tracing::info!(node = %self.local, leader = ?change.leader_node.map(|n| n.name), term = change.term, "consistent: leader changed");
            self.removing.clear();
            self.down_since.clear();
        }
        self.transitions_dirty |= !out.transitions.is_empty();
        for transition in out.transitions {
            tracing::info!(node = %self.local, id = %transition.id, phase = ?transition.phase, reason = %transition.reason, "consistent: transition");
        }
    }

    fn next_request_id(&self) -> RequestId {
        RequestId::new(self.local.clone(), self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn send_message(&mut self, now: Instant, msg: Message) {
        let to = msg.to;
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let name = match self.routes.get(&to) {
            Some(name) => name.clone(),
            None => match self.core.fsm().member(to) {
                Some(node) => node.name.clone(),
                None => {
                    self.metrics.frame_dropped("no_route");
                    if is_snapshot {
                        self.core.report_snapshot(to, false);
                    }
                    return self.core.report_unreachable(to);
                }
            },
        };
        if is_snapshot {
            // Any size, in bounded chunks; the transfer ends in a report to raft (a refusal too).
            let _ = self.transfers.send_snapshot(now, &name, msg);
            return self.flush_snapshot_transfers();
        }
        let Ok(bytes) = msg.write_to_bytes() else { return self.metrics.frames_sent_failed.inc() };
        self.transmit(name, KIND_RAFT_MESSAGE, Bytes::from(bytes), Unsent::Raft { to });
    }

    /// The raft id of a membership row: this node's own, a hello's (same incarnation), or the
    /// replicated address book's.
    fn raft_id_of(&self, node: &NodeId, is_self: bool) -> Option<u64> {
        if is_self {
            return Some(self.core.raft_id());
        }
        if let Some((known, id)) = self.hellos.get(&node.name)
            && known == node
        {
            return Some(*id);
        }
        self.core.fsm().members().iter().find(|(_, n)| *n == node).map(|(id, _)| *id)
    }

    fn reconcile(&mut self, now: Instant) {
        let rows = self.members.clone();
        let mut hasher = DefaultHasher::new();
        for row in rows.iter() {
            (&row.info.id, row.state.as_str(), row.info.raft_eligible).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        if fingerprint != self.members_fingerprint {
            self.members_fingerprint = fingerprint;
            self.members_changed_at = now;
        }
        let mut members = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            match self.raft_id_of(&row.info.id, row.is_self) {
                Some(raft_id) => members.push(LadderMember {
                    node: row.info.id.clone(),
                    raft_id,
                    raft_eligible: row.info.raft_eligible,
                    failure_domain: row.info.failure_domain.clone(),
                    state: row.state,
                    down_for: Duration::ZERO,
                }),
                // A live member whose raft id is not known yet: its hello is on its way. Deciding
                // without it could remove a voter that only restarted; wait.
                None if matches!(row.state, MemberState::Alive | MemberState::Suspect) => return,
                None => {}
            }
        }
        let conf = self.core.conf_state();
        let config = RaftConfig {
            voters: conf.voters.iter().copied().collect(),
            learners: conf.learners.iter().copied().collect(),
        };
        // A configured raft id that no membership row maps to (its node restarted under another
        // id, or was forgotten) is listed as down under its address-book identity.
        for id in config.voters.iter().chain(config.learners.iter()) {
            if !members.iter().any(|m| m.raft_id == *id) {
                let node = self.core.fsm().member(*id).cloned().unwrap_or_else(|| NodeId::new(format!("raft-{id}"), 0));
                members.push(LadderMember {
                    node,
                    raft_id: *id,
                    raft_eligible: true,
                    failure_domain: String::new(),
                    state: MemberState::Down,
                    down_for: Duration::ZERO,
                });
            }
        }
        self.track_down(now, &config, &mut members);
        if now.saturating_duration_since(self.members_changed_at) < self.config.reconcile_debounce
            || self.core.has_pending_conf_change()
        {
            return;
        }
        let policy = LadderPolicy {
            max_voters: self.config.max_voters,
            dead_voter_after: self.config.dead_voter_after,
            rule: self.rule,
        };
        let plan = ladder::reconcile(&members, &config, self.core.raft_id(), &policy, self.core.next_transition_id());
        let Some(first) = plan.into_iter().next() else { return };
        // Growing the set promotes only caught-up learners.
        for step in first.steps.iter().filter(|s| s.kind == ConfStepKind::Promote) {
            let matched = self.core.progress_matched(step.raft_id).unwrap_or(0);
            if matched + PROMOTE_MAX_LAG < self.core.last_index() {
                return;
            }
        }
        if let Err(error) = self.core.propose_transition(first) {
            tracing::debug!(%error, "consistent: transition not proposed");
        }
    }

    /// Measures, per configured raft id, how long it has been down without interruption (the
    /// clock starts when this node, as leader, first saw it down: a new leader waits the whole
    /// `dead_voter_after` again, which errs on the side of keeping voters), and fills `down_for`.
    fn track_down(&mut self, now: Instant, config: &RaftConfig, members: &mut [LadderMember]) {
        let best = |id: u64, members: &[LadderMember]| {
            members.iter().filter(|m| m.raft_id == id).map(|m| m.state).min_by_key(|s| ladder::rank(*s))
        };
        self.down_since.retain(|id, _| config.voters.contains(id) || config.learners.contains(id));
        for id in config.voters.iter().chain(config.learners.iter()) {
            match best(*id, members) {
                Some(MemberState::Alive | MemberState::Suspect) => {
                    self.down_since.remove(id);
                }
                _ => {
                    self.down_since.entry(*id).or_insert(now);
                }
            }
        }
        for m in members.iter_mut() {
            if m.state == MemberState::Down
                && let Some(since) = self.down_since.get(&m.raft_id)
            {
                m.down_for = now.saturating_duration_since(*since);
            }
        }
    }

    /// Leader: commit `RemoveByNode` for node incarnations that departed (down or left in
    /// membership, or replaced by a newer incarnation of the same name) and still hold names or
    /// are not yet marked departed; `Readmit` a departed node that is alive again.
    fn sweep_departed(&mut self, now: Instant) {
        let rows = self.members.clone();
        let local = self.local.clone();
        let mut departed: BTreeSet<NodeId> = BTreeSet::new();
        let heard_lately = |node: &NodeId| {
            self.last_frame
                .get(&node.name)
                .is_some_and(|(id, at)| id == node && now.saturating_duration_since(*at) < DEPARTED_CONTACT_GRACE)
        };
        for row in rows.iter() {
            let node = &row.info.id;
            let gone = match row.state {
                MemberState::Left => true,
                MemberState::Down => !heard_lately(node),
                MemberState::Alive | MemberState::Suspect => false,
            };
            if gone && !self.core.fsm().is_departed(node) {
                departed.insert(node.clone());
            }
        }
        for owner in self.core.fsm().owner_nodes() {
            if owner == local {
                continue;
            }
            let gone = rows.iter().any(|r| {
                (r.info.id == owner
                    && (r.state == MemberState::Left || (r.state == MemberState::Down && !heard_lately(&owner))))
                    || (r.info.id.name == owner.name
                        && r.info.id.incarnation > owner.incarnation
                        && r.state == MemberState::Alive)
            }) || (owner.name == local.name && owner.incarnation < local.incarnation);
            if gone {
                departed.insert(owner);
            }
        }
        // A node declared departed that is alive again under the same incarnation (a healed
        // partition) may register again: without this its every registration would be refused
        // as `OwnerDeparted` for as long as it runs.
        for row in rows.iter() {
            let node = &row.info.id;
            if row.state == MemberState::Alive
                && self.core.fsm().is_departed(node)
                && !self.removing.contains(node)
                && self.pending.len() < super::core::MAX_PENDING_PROPOSALS
            {
                tracing::info!(node = %node, "consistent: readmitting a node that is alive again");
                self.removing.insert(node.clone());
                let proposal = Proposal::new(self.next_request_id(), Command::Readmit { node: node.clone() });
                let deadline = now + self.config.request_timeout;
                let internal = Internal::RemoveNode(node.clone());
                self.submit(Pending { proposal, reply: None, deadline, internal }, true);
            }
        }
        for node in departed {
            if node == local
                || self.removing.contains(&node)
                || self.pending.len() >= super::core::MAX_PENDING_PROPOSALS
            {
                continue;
            }
            tracing::info!(node = %node, "consistent: removing the names of a departed node");
            self.removing.insert(node.clone());
            let proposal = Proposal::new(self.next_request_id(), Command::RemoveByNode { node: node.clone() });
            let deadline = now + self.config.request_timeout;
            self.submit(Pending { proposal, reply: None, deadline, internal: Internal::RemoveNode(node) }, true);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The driver alone, on a fake clock: a single-voter group (this node bootstraps and leads),
    //! and a follower that knows no leader. Multi-node behaviour is the simulator's
    //! (`cohort-sim`) and the node tests'.

    use super::*;
    use crate::consistent::core::CoreConfig;
    use crate::consistent::storage::MemoryBackend;
    use cohort_cluster::member::{MemberAddrs, MemberInfo};

    type TestDriver = Driver<u32, u32>;

    fn node(name: &str) -> NodeId {
        NodeId::new(name, 1)
    }

    fn driver(t0: Instant, name: &str, bootstrap: bool) -> TestDriver {
        let local = node(name);
        let raft_id = ladder::raft_id_for(&local);
        let voters = [(raft_id, local.clone())];
        let mut core = RaftCore::open(
            Box::new(MemoryBackend::new()),
            CoreConfig::new(raft_id, local.clone()),
            bootstrap.then_some(&voters[..]),
        )
        .unwrap();
        if bootstrap {
            core.campaign().unwrap();
        }
        let metrics = ConsistentMetrics::register(&prometheus::Registry::new()).unwrap();
        let config = ConsistentConfig { request_timeout: Duration::from_secs(2), ..ConsistentConfig::default() };
        let mut d = Driver::new(t0, core, local, config, metrics, Arc::new(AtomicU64::new(1)));
        d.handle_ready(t0).unwrap();
        d
    }

    fn register(d: &TestDriver, name: &str, owner: &str) -> Proposal {
        let pid = Pid::new(node(owner), 7);
        Proposal::new(d.next_request_id(), Command::Register { name: name.into(), pid })
    }

    fn outputs(d: &mut TestDriver) -> Vec<Output<u32, u32>> {
        std::iter::from_fn(|| d.poll_output()).collect()
    }

    fn addr() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn row(name: &str, state: MemberState, is_self: bool) -> MemberView {
        MemberView {
            info: MemberInfo {
                id: node(name),
                addrs: MemberAddrs { gossip: addr(), internode: addr(), http: addr() },
                raft_eligible: true,
                failure_domain: String::new(),
            },
            state,
            is_self,
        }
    }

    #[test]
    fn a_write_on_the_sole_voter_is_answered_after_the_ready_that_applies_it() {
        let t0 = Instant::now();
        let mut d = driver(t0, "a", true);
        let proposal = register(&d, "svc", "a");
        d.handle_propose(t0, proposal, Some(1), t0 + Duration::from_secs(2));
        assert!(outputs(&mut d).is_empty(), "answered before raft committed it");
        d.handle_ready(t0).unwrap();
        let answers = outputs(&mut d);
        match answers.as_slice() {
            [Output::Written { reply: 1, result: Ok(applied) }] => {
                assert!(matches!(applied.result, CommandResult::Registered { .. }), "{applied:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(d.core().fsm().lookup("svc").is_some());
    }

    #[test]
    fn a_write_without_a_leader_waits_and_is_answered_not_leader_at_its_deadline() {
        let t0 = Instant::now();
        let mut d = driver(t0, "b", false);
        let proposal = register(&d, "svc", "b");
        let deadline = t0 + Duration::from_millis(500);
        d.handle_propose(t0, proposal, Some(9), deadline);
        d.handle_ready(t0).unwrap();
        assert!(outputs(&mut d).is_empty(), "a write waiting for a leader must not be answered yet");
        d.handle_tick(t0 + Duration::from_millis(400));
        assert!(outputs(&mut d).iter().all(|o| !matches!(o, Output::Written { .. })));
        d.handle_tick(deadline);
        let answers: Vec<_> = outputs(&mut d).into_iter().filter(|o| matches!(o, Output::Written { .. })).collect();
        match answers.as_slice() {
            [Output::Written { reply: 9, result: Err(Admission::NotLeader { .. }) }] => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_strong_read_on_a_node_without_a_leader_is_refused_at_once_with_a_reason() {
        let t0 = Instant::now();
        let mut d = driver(t0, "b", false);
        d.handle_strong_read(t0, "svc".into(), ReadRequest::new(Freshness::Strong), 3, t0 + Duration::from_secs(2));
        match outputs(&mut d).as_slice() {
            [Output::Read { reply: 3, result: Err(error) }] => assert_ne!(error.reason(), "ok"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hellos_go_to_live_peers_once_a_second_and_a_forged_hello_is_dropped() {
        let t0 = Instant::now();
        let mut d = driver(t0, "a", true);
        d.handle_members(Arc::new(vec![
            row("a", MemberState::Alive, true),
            row("b", MemberState::Alive, false),
            row("c", MemberState::Suspect, false),
            row("d", MemberState::Down, false),
        ]));
        let hellos = |d: &mut TestDriver| -> Vec<String> {
            outputs(d)
                .into_iter()
                .filter_map(|o| match o {
                    Output::Transmit { to, kind: KIND_HELLO, .. } => Some(to),
                    _ => None,
                })
                .collect()
        };
        d.handle_tick(t0);
        assert_eq!(hellos(&mut d), vec!["b".to_string(), "c".to_string()]);
        d.handle_tick(t0 + Duration::from_millis(500));
        assert!(hellos(&mut d).is_empty(), "a second hello within HELLO_INTERVAL");
        d.handle_tick(t0 + HELLO_INTERVAL);
        assert_eq!(hellos(&mut d).len(), 2);
        // A hello that names another node than the authenticated sender is refused.
        let forged = Hello { v: HELLO_VERSION, node: node("x"), raft_id: 42 };
        let body = Bytes::from(rmp_serde::to_vec(&forged).unwrap());
        d.handle_frame(t0, &node("b"), KIND_HELLO, &body);
        assert!(d.hellos.is_empty());
        let honest = Hello { v: HELLO_VERSION, node: node("b"), raft_id: 42 };
        d.handle_frame(t0, &node("b"), KIND_HELLO, &Bytes::from(rmp_serde::to_vec(&honest).unwrap()));
        assert_eq!(d.routes.get(&42).map(String::as_str), Some("b"));
    }

    #[test]
    fn a_forwarded_proposal_teaches_no_route_and_the_originators_hello_still_counts() {
        let t0 = Instant::now();
        let mut d = driver(t0, "a", true);
        // b forwards c's proposal: raft-rs leaves c's raft id (77) in `from`.
        let mut forwarded = Message::default();
        forwarded.set_msg_type(MessageType::MsgPropose);
        forwarded.from = 77;
        forwarded.to = d.core.raft_id();
        let body = Bytes::from(forwarded.write_to_bytes().unwrap());
        d.handle_frame(t0, &node("b"), KIND_RAFT_MESSAGE, &body);
        forwarded.set_msg_type(MessageType::MsgReadIndex);
        let body = Bytes::from(forwarded.write_to_bytes().unwrap());
        d.handle_frame(t0, &node("b"), KIND_RAFT_MESSAGE, &body);
        assert_eq!(d.routes.get(&77), None, "a forwarded message binds no id to its forwarder");
        // The empty proposal above would have aborted raft-rs ("stepped empty MsgProp"); so would
        // a peer's configuration change have been applied. Both are refused and counted.
        let mut conf = Message::default();
        conf.set_msg_type(MessageType::MsgPropose);
        conf.from = 77;
        conf.to = d.core.raft_id();
        let mut entry = raft::eraftpb::Entry::default();
        entry.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
        conf.mut_entries().push(entry);
        d.handle_frame(t0, &node("b"), KIND_RAFT_MESSAGE, &Bytes::from(conf.write_to_bytes().unwrap()));
        assert_eq!(
            d.core.stats().messages_unsafe,
            3,
            "the empty proposal, the read request without context and the configuration change"
        );
        let hello = Hello { v: HELLO_VERSION, node: node("c"), raft_id: 77 };
        d.handle_frame(t0, &node("c"), KIND_HELLO, &Bytes::from(rmp_serde::to_vec(&hello).unwrap()));
        assert_eq!(d.routes.get(&77).map(String::as_str), Some("c"), "c's own hello is not taken for a forgery");
    }

    #[test]
    fn the_same_inputs_give_the_same_outputs() {
        let run = || {
            let t0 = Instant::now();
            let mut d = driver(t0, "a", true);
            d.handle_members(Arc::new(vec![row("a", MemberState::Alive, true), row("b", MemberState::Alive, false)]));
            let mut trace = Vec::new();
            for i in 0..20u32 {
                let now = t0 + Duration::from_millis(100 * u64::from(i));
                let proposal = register(&d, &format!("n{}", i % 5), "a");
                d.handle_propose(now, proposal, Some(i), now + Duration::from_secs(2));
                d.handle_tick(now);
                d.handle_ready(now).unwrap();
                for o in outputs(&mut d) {
                    trace.push(match o {
                        Output::Transmit { to, kind, payload, .. } => format!("tx {to} {kind} {}", payload.len()),
                        Output::Written { reply, result } => format!("w {reply} {:?}", result.map(|a| a.result)),
                        Output::Read { reply, .. } => format!("r {reply}"),
                    });
                }
            }
            trace
        };
        let first = run();
        assert!(first.len() >= 20, "{first:?}");
        assert_eq!(first, run());
    }
}
