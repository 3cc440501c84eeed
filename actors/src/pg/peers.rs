//! The pg peers driver: every protocol decision a scope makes about its peers, without I/O.
//!
//! # Role
//! [`Peers`] is the sans-I/O core of one scope on one node, in the shape of quinn-proto's
//! `Connection` (see `STYLE.md` §7). It owns the per-peer protocol state that the scope actor
//! ([`super::scope`]) used to keep inside its tokio loop: which nodes are peers, the discovers
//! still awaiting an answer and when to re-send them, the resync and pull sets and their
//! deadline, the per-peer [`DigestRepair`] rate limits, the snapshot cuts of the syncs sent, the
//! replay ring of recently drained events, the sync reassembly per sender, and the anti-entropy
//! schedule (a digest to every answered peer every `digest_interval`, a full state to one peer,
//! round robin, every `anti_entropy_interval`). The scope actor is the shell: it feeds the driver
//! and performs what it asks for.
//!
//! # Inputs (`handle_*`, each with `now` passed in)
//! - [`Peers::handle_peer_up`] / [`Peers::handle_peer_down`]: membership (and the restart's
//!   re-synchronisation, which is a `peer_up` per up member with [`SyncReason::Restart`]);
//! - [`Peers::handle_message`]: a validated pg message from an up member (the shell checks that
//!   it is up, under the service's member lock);
//! - [`Peers::handle_frame_lost`]: a frame of a peer was dropped before reaching the driver (the
//!   scope's inbound queue was full): pull the peer's full state;
//! - [`Peers::handle_drained`]: one drain of the scope table's outbox (local events go to the
//!   peers, every event goes to the replay ring; a drain that emptied the outbox drops the cuts);
//! - [`Peers::handle_timeout`]: the deadline of [`Peers::poll_timeout`] passed;
//! - [`Peers::handle_send_failure`]: the transmit last polled was not queued by the transport (its
//!   pg queue overflowed, then the peer is resynced, or the send failed).
//!
//! The [`ScopeTable`] is not owned: the methods that read it (sync snapshots, the local digest)
//! or apply a peer's content to it take it by reference.
//!
//! # Outputs (polled, in the order they were produced)
//! - [`Peers::poll_transmit`]: the next frame to queue on the transport's pg class for a peer;
//! - [`Peers::poll_event`]: what else the shell must do or count ([`PeersEvent`]: a broadcast to
//!   deliver locally, frames accepted or refused, digest verdicts, discover retries);
//! - [`Peers::poll_timeout`]: the earliest instant at which [`Peers::handle_timeout`] must run.
//!
//! The shell drains `poll_transmit` (reporting a failure with `handle_send_failure` before
//! polling the next) and `poll_event` after every input, as raft-rs's `Ready` is handled after
//! every step: a multi-frame send (the chunks of a sync and its replayed batches, the batch frames
//! of one drain to one peer) is one *run*, and a failure drops the rest of its run, which is still
//! queued then, so a peer never receives the tail of a sync without its head.
//!
//! # Invariants
//! - No clock, no randomness, no I/O, no lock: time is the `now` passed in, the anti-entropy
//!   starting point is the `seed` passed to [`Peers::new`], and the table's own locks are its own.
//! - Deterministic: every map and set is ordered (`BTreeMap`/`BTreeSet`) and a sync's groups are
//!   sorted, so the same inputs give the same outputs in the same order, whatever a `HashMap` or
//!   the table's `DashMap` would iterate (the simulator replays a seed on that).
//! - Everything is bounded by a named constant and what a bound refuses is counted in
//!   [`PeersStats`]: peers and every per-peer map ([`MAX_PEERS`]), the replay ring
//!   ([`REPLAY_RING_EVENTS`], oldest evicted), queued transmits ([`MAX_QUEUED_TRANSMITS`]: a run
//!   that does not fit is refused whole and resyncs its peer, as a transport overflow would) and
//!   queued events ([`MAX_QUEUED_EVENTS`]).
//! - Awaiting discovers and pending resyncs concern peers only; a digest goes only to a peer that
//!   answered (not awaiting); a persistent digest mismatch costs at most one pull per peer per
//!   digest period ([`DigestRepair`]).
//! - To a peer, a full sync precedes the batches that follow it, and the batches of a drain are
//!   filtered by the cut of a sync sent since the last complete drain (see the scope module,
//!   "Consistency with snapshots").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_cluster::NodeId;

use super::PgError;
use super::digest::{DigestRepair, DigestVerdict, MembershipDigest};
use super::metrics::{digest_check, sync_reason};
use super::service::PgConfig;
use super::snapshot::{ScopeTable, SnapshotCut};
use super::state::{Event, EventKind, Group, NodeState, Origin};
use super::wire::{
    PgFrame, PgMessage, PgOp, SyncAssembler, SyncChunk, WireError, batch_frames, encode_frame, sync_chunks,
};
use crate::pid::Pid;

/// Drained events kept after dispatch, to replay to a peer those its sync snapshot turns out not
/// to reflect (a writer preempted between its outbox push and its publish). The window only has
/// to cover such an in-flight write, a few microseconds of events; 1024 covers far more. The
/// oldest event is evicted past it (counted in [`PeersStats::ring_evicted`]).
pub const REPLAY_RING_EVENTS: usize = 1_024;

/// Peers, and entries of every per-node map (awaiting discovers, digest repairs, sync assemblers,
/// pulls): one per up member, so the transport's own peer bound. A node past it is refused and
/// counted ([`PeersStats::peers_refused`]); anti-entropy cannot reach it.
pub const MAX_PEERS: usize = cohort_cluster::net::transport::MAX_PEERS;

/// Transmits queued and not yet polled. The shell polls after every input, so this only has to
/// hold the output of one input: a restart's or a digest round's few frames per peer, or one drain
/// to every peer. A run that does not fit is refused whole, counted
/// ([`PeersStats::transmits_refused`]), and its peer resynced later, as on a transport overflow.
/// Sync chunks are encoded only when polled, so a queued sync costs its (already copied) state.
pub const MAX_QUEUED_TRANSMITS: usize = 65_536;

/// Events queued and not yet polled: at most a few per input, one per peer for a timeout (a
/// retried discover, a deferred pull). Past it an event is dropped and counted
/// ([`PeersStats::events_dropped`]); events only count and log, the protocol does not depend on
/// the shell seeing them.
pub const MAX_QUEUED_EVENTS: usize = 4 * MAX_PEERS;

/// Doubling steps of the discover retry delay before the anti-entropy period caps it anyway
/// (2^16 times the resync delay is far past any sensible anti-entropy period).
const MAX_DISCOVER_BACKOFF_SHIFT: u32 = 16;

// A timeout round queues at most a digest and a pull per peer, plus a discover per awaiting peer.
const _: () = assert!(MAX_QUEUED_TRANSMITS >= 3 * MAX_PEERS);
// A timeout round queues at most a deferred pull and a discover retry per peer.
const _: () = assert!(MAX_QUEUED_EVENTS >= 2 * MAX_PEERS);

/// Why a full sync is sent: the `reason` label of `cohort_pg_syncs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncReason {
    /// A peer came up or discovered us.
    Connect,
    /// The periodic full-state push to one peer.
    AntiEntropy,
    /// A pg frame to the peer was dropped (queue overflow).
    Resync,
    /// The scope's actor was restarted after a crash.
    Restart,
}

impl SyncReason {
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            SyncReason::Connect => sync_reason::CONNECT,
            SyncReason::AntiEntropy => sync_reason::ANTI_ENTROPY,
            SyncReason::Resync => sync_reason::RESYNC,
            SyncReason::Restart => sync_reason::RESTART,
        }
    }
}

/// The timing of the peers protocol (from [`PgConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeersConfig {
    /// Full-state push to one peer, round robin, every this.
    pub anti_entropy_interval: Duration,
    /// Digest to every answered peer every this; also the unit of the pull rate limit.
    pub digest_interval: Duration,
    /// Delay of a resync or pull after a drop, and first retry delay of a discover.
    pub resync_delay: Duration,
}

impl PeersConfig {
    /// The timing of a pg service's configuration.
    pub fn from_pg(config: &PgConfig) -> Self {
        Self {
            anti_entropy_interval: config.anti_entropy_interval,
            digest_interval: config.digest_interval,
            resync_delay: config.resync_delay,
        }
    }

    fn anti_entropy_period(&self) -> Duration {
        self.anti_entropy_interval.max(Duration::from_millis(1))
    }

    fn digest_period(&self) -> Duration {
        self.digest_interval.max(Duration::from_millis(1))
    }

    /// Backoff cap of digest pulls, in digest periods: the full-state backstop's period.
    fn max_digest_backoff(&self) -> u32 {
        let periods = self.anti_entropy_interval.as_millis() / self.digest_interval.as_millis().max(1);
        u32::try_from(periods).unwrap_or(u32::MAX).max(1)
    }
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self::from_pg(&PgConfig::default())
    }
}

/// One frame to queue on the transport's pg class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer's node name.
    pub peer: String,
    /// The message's metric label ([`PgMessage::name`]).
    pub message: &'static str,
    /// The encoded [`PgFrame`].
    pub bytes: Bytes,
    /// Set on the last chunk of a full sync: once it is queued, the sync was sent whole (count it).
    pub completes_sync: Option<SyncReason>,
}

/// Why the transmit last polled was not queued (see [`Peers::handle_send_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// The pg queue to the peer was full (drop-newest): the peer is resynced at the resync delay.
    Overflowed,
    /// The transport refused it otherwise (unknown peer, shut down): nothing to repair here;
    /// membership or anti-entropy will.
    NotSent,
}

/// What a peer's digest led to: the `result` label of `cohort_pg_digest_checks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestCheck {
    /// It matched what we hold of the peer.
    InSync,
    /// It differed: a discover was queued to pull the peer's full state.
    Pull,
    /// It differed within the rate limit: pulled when the limit allows.
    Deferred,
    /// A deferred mismatch was pulled at our digest tick.
    DeferredPull,
}

impl DigestCheck {
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            DigestCheck::InSync => digest_check::IN_SYNC,
            DigestCheck::Pull => digest_check::PULL,
            DigestCheck::Deferred => digest_check::DEFERRED,
            DigestCheck::DeferredPull => digest_check::DEFERRED_PULL,
        }
    }
}

/// Something the shell must do or count, other than sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeersEvent {
    /// A peer's broadcast: deliver `payload` once to each distinct local member of `group`.
    Broadcast {
        /// The group.
        group: Group,
        /// The encoded message.
        payload: Bytes,
    },
    /// A message from a peer was accepted (applied, answered or delivered).
    Accepted {
        /// Its metric label.
        message: &'static str,
    },
    /// The scope table refused a peer's content. An `UnknownPeer` refusal also scheduled a pull.
    Refused {
        /// The sender.
        peer: NodeId,
        /// Why.
        error: PgError,
    },
    /// A sync chunk was out of order or the state too large; a pull was scheduled.
    SyncChunkRefused {
        /// The sender.
        peer: NodeId,
        /// Why.
        error: WireError,
    },
    /// A peer's full state was applied, but our bounds refused some of its groups.
    SyncPartlyRefused {
        /// The sender.
        peer: NodeId,
        /// Groups refused.
        groups_refused: usize,
    },
    /// A peer's digest was checked, or a deferred pull was sent.
    DigestChecked {
        /// The peer.
        peer: String,
        /// The verdict.
        check: DigestCheck,
        /// What we hold of it (for a digest received).
        held: Option<MembershipDigest>,
        /// Its digest (for a digest received).
        theirs: Option<MembershipDigest>,
    },
    /// A discover was not answered in time and was sent again.
    DiscoverRetried {
        /// The peer.
        peer: String,
        /// Re-sends so far.
        retries: u32,
    },
}

/// What the driver's bounds refused, and a few protocol counts (for tests and the simulator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeersStats {
    /// Runs of transmits refused because [`MAX_QUEUED_TRANSMITS`] were queued.
    pub transmits_refused: u64,
    /// Queued transmits dropped because an earlier one of their run failed.
    pub transmits_aborted: u64,
    /// Events dropped because [`MAX_QUEUED_EVENTS`] were queued.
    pub events_dropped: u64,
    /// Nodes not admitted to a per-node map because it held [`MAX_PEERS`].
    pub peers_refused: u64,
    /// Events evicted from the replay ring (normal operation: it is a window).
    pub ring_evicted: u64,
    /// Full syncs queued (sent whole or not).
    pub syncs_queued: u64,
    /// Discovers re-sent because their answer was overdue.
    pub discovers_retried: u64,
}

/// A peer this scope sends its changes to (it was sent our full state first).
#[derive(Default)]
struct PeerState {
    /// Present until the outbox was drained empty after the last sync to this peer.
    cut: Option<SnapshotCut>,
    /// The run of the last sync to the peer and the cut before it: if the sync is not sent whole
    /// the previous cut is restored (the peer never got the new snapshot).
    unconfirmed: Option<(u64, Option<SnapshotCut>)>,
}

/// A discover not answered yet.
#[derive(Clone, Copy, Debug)]
struct Awaiting {
    /// Discovers re-sent so far.
    retries: u32,
    /// When to re-send it.
    at: Instant,
}

/// A queued transmit, encoded when polled if it is a sync chunk.
struct Queued {
    peer: String,
    run: u64,
    body: Body,
    completes_sync: Option<SyncReason>,
}

enum Body {
    Encoded { message: &'static str, bytes: Bytes },
    Chunk(SyncChunk),
}

/// The pg peers driver of one scope on one node: see the module docs.
pub struct Peers {
    scope: String,
    node: NodeId,
    config: PeersConfig,
    /// Peers we send batches to, by node name.
    peers: BTreeMap<String, PeerState>,
    /// Sync reassembly per sender (its incarnation: a new one starts over).
    assemblers: BTreeMap<String, (NodeId, SyncAssembler)>,
    /// Peers we sent a discover whose full state has not arrived yet (a subset of `peers`).
    awaiting: BTreeMap<String, Awaiting>,
    /// Per node that sent us a digest, the rate limit of pulls from it.
    repairs: BTreeMap<String, DigestRepair>,
    /// Peers to send a full sync to at `resync_at` (a subset of `peers`).
    resync: BTreeSet<String>,
    /// Nodes to ask for a full sync (send a discover) at `resync_at`.
    pull: BTreeSet<String>,
    resync_at: Option<Instant>,
    anti_entropy_at: Instant,
    digest_at: Instant,
    /// Anti-entropy round-robin position (from the seed).
    cursor: u64,
    next_sync_id: u64,
    next_run: u64,
    ring: VecDeque<Event>,
    transmits: VecDeque<Queued>,
    /// The peer and run of the transmit last polled, which a send failure refers to.
    last_polled: Option<(String, u64)>,
    events: VecDeque<PeersEvent>,
    stats: PeersStats,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("scope", &self.scope)
            .field("node", &self.node)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .field("awaiting", &self.awaiting.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// A driver for `scope` on `node` with no peer yet. The first digest round is due one digest
    /// period after `now`, the first anti-entropy push one anti-entropy period after; `seed` picks
    /// the peer the round robin starts from (so nodes do not all push to the same one).
    pub fn new(scope: &str, node: NodeId, config: PeersConfig, now: Instant, seed: u64) -> Self {
        Self {
            scope: scope.to_owned(),
            node,
            peers: BTreeMap::new(),
            assemblers: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            repairs: BTreeMap::new(),
            resync: BTreeSet::new(),
            pull: BTreeSet::new(),
            resync_at: None,
            anti_entropy_at: now + config.anti_entropy_period(),
            digest_at: now + config.digest_period(),
            cursor: seed,
            next_sync_id: 0,
            next_run: 0,
            ring: VecDeque::with_capacity(REPLAY_RING_EVENTS),
            transmits: VecDeque::new(),
            last_polled: None,
            events: VecDeque::new(),
            stats: PeersStats::default(),
            config,
        }
    }

    /// What the bounds refused so far, and protocol counts.
    pub fn stats(&self) -> PeersStats {
        self.stats
    }

    /// Whether `peer` is a peer (gets our batches).
    pub fn is_peer(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// Whether our discover to `peer` still awaits its full state.
    pub fn is_awaiting(&self, peer: &str) -> bool {
        self.awaiting.contains_key(peer)
    }

    /// The recently drained events (the replay ring), oldest first.
    pub fn replay_ring(&self) -> impl Iterator<Item = &Event> {
        self.ring.iter()
    }

    // ---- inputs ----

    /// `node` came up (or up again, or the scope restarted): make it a peer, send it a discover
    /// (it answers with its full state) and our full state, and await its answer (the discover
    /// is re-sent from `resync_delay` on, doubling up to the anti-entropy period).
    pub fn handle_peer_up(&mut self, now: Instant, table: &ScopeTable, node: &NodeId, reason: SyncReason) {
        if !self.peers.contains_key(&node.name) && !self.admit(self.peers.len()) {
            return;
        }
        self.peers.insert(node.name.clone(), PeerState::default());
        self.send_message(now, &node.name, PgMessage::Discover);
        self.send_sync(now, table, &node.name, reason);
        self.awaiting.insert(node.name.clone(), Awaiting { retries: 0, at: now + self.config.resync_delay });
    }

    /// `peer` went down (its members are already removed from the table): forget it.
    pub fn handle_peer_down(&mut self, _now: Instant, peer: &str) {
        self.peers.remove(peer);
        self.assemblers.remove(peer);
        self.resync.remove(peer);
        self.pull.remove(peer);
        self.awaiting.remove(peer);
        self.repairs.remove(peer);
        self.transmits.retain(|t| t.peer != peer);
    }

    /// A frame of `peer` was dropped before reaching the driver: pull its full state at the
    /// resync delay.
    pub fn handle_frame_lost(&mut self, now: Instant, peer: &str) {
        self.schedule_pull(now, peer);
    }

    /// A validated message of `from`, an up member (checked by the caller).
    pub fn handle_message(&mut self, now: Instant, table: &ScopeTable, from: &NodeId, message: PgMessage) {
        let name = message.name();
        let accepted = match message {
            PgMessage::Discover => {
                // Erlang's discover: answer with our state and admit the sender as a peer. Unlike
                // `pg.erl` we do not discover back: `peer_up` already pushed our state to it and
                // asked for its own, so a discover back would only repeat a full sync.
                if !self.peers.contains_key(&from.name) && self.admit(self.peers.len()) {
                    self.peers.insert(from.name.clone(), PeerState::default());
                }
                self.send_sync(now, table, &from.name, SyncReason::Connect);
                match table.add_peer(from) {
                    Ok(()) => true,
                    Err(error) => self.refused(now, from, error),
                }
            }
            PgMessage::Sync(chunk) => self.accept_chunk(now, table, from, chunk),
            PgMessage::Join { group, pids } => self.apply_op(now, table, from, EventKind::Join, &group, &pids),
            PgMessage::Leave { group, pids } => self.apply_op(now, table, from, EventKind::Leave, &group, &pids),
            PgMessage::Batch(ops) => ops.iter().all(|op| self.apply_op(now, table, from, op.kind, &op.group, &op.pids)),
            PgMessage::Broadcast { group, payload } => {
                self.push_event(PeersEvent::Broadcast { group, payload: payload.0 });
                true
            }
            PgMessage::Digest(digest) => {
                self.check_digest(now, table, from, digest);
                true
            }
        };
        if accepted {
            self.push_event(PeersEvent::Accepted { message: name });
        }
    }

    /// One drain of the table's outbox, in order: local events go to every peer (one run of batch
    /// frames per peer, filtered by the peer's cut if it was synced since the last complete
    /// drain), every event goes to the replay ring. `drained_empty`: the outbox was drained
    /// empty, so every cut has served its purpose and is dropped.
    pub fn handle_drained(&mut self, now: Instant, events: Vec<Event>, drained_empty: bool) {
        if !self.peers.is_empty() {
            let local: Vec<&Event> = events.iter().filter(|e| e.origin == Origin::Local).collect();
            if !local.is_empty() {
                self.send_events(now, &local);
            }
        }
        for event in events {
            if self.ring.len() == REPLAY_RING_EVENTS {
                self.ring.pop_front();
                self.stats.ring_evicted += 1;
            }
            self.ring.push_back(event);
        }
        if drained_empty {
            for peer in self.peers.values_mut() {
                peer.cut = None;
                peer.unconfirmed = None;
            }
        }
    }

    /// Runs what is due at `now`, in this order: the anti-entropy push, the digest round, the
    /// pending pulls and resyncs, the overdue discovers.
    pub fn handle_timeout(&mut self, now: Instant, table: &ScopeTable) {
        if self.anti_entropy_at <= now {
            // A late wake-up delays the schedule rather than bursting (tokio's `Delay`).
            self.anti_entropy_at = now + self.config.anti_entropy_period();
            self.anti_entropy(now, table);
        }
        if self.digest_at <= now {
            self.digest_at = now + self.config.digest_period();
            self.digest_round(now, table);
        }
        if self.resync_at.is_some_and(|at| at <= now) {
            self.run_resyncs(now, table);
        }
        self.retry_discovers(now);
    }

    /// The transmit last polled was not queued. The rest of its run is dropped (a sync's later
    /// chunks would arrive out of order); on an overflow, a peer is resynced at the resync delay.
    pub fn handle_send_failure(&mut self, now: Instant, failure: SendFailure) {
        let Some((peer, run)) = self.last_polled.take() else { return };
        self.abort_run(&peer, run);
        if failure == SendFailure::Overflowed && self.peers.contains_key(&peer) {
            self.resync.insert(peer);
            self.schedule_resync(now);
        }
    }

    // ---- outputs ----

    /// The next frame to queue, in order. Report a failure to queue it with
    /// [`Peers::handle_send_failure`] before polling the next.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some(queued) = self.transmits.pop_front() {
            let Queued { peer, run, body, completes_sync } = queued;
            let encoded = match body {
                Body::Encoded { message, bytes } => Some((message, bytes)),
                Body::Chunk(chunk) => self.encode(PgMessage::Sync(chunk)),
            };
            match encoded {
                Some((message, bytes)) => {
                    self.last_polled = Some((peer.clone(), run));
                    return Some(Transmit { peer, message, bytes, completes_sync });
                }
                None => self.abort_run(&peer, run),
            }
        }
        self.last_polled = None;
        None
    }

    /// The next event for the shell, in order.
    pub fn poll_event(&mut self) -> Option<PeersEvent> {
        self.events.pop_front()
    }

    /// When [`Peers::handle_timeout`] must run next: the earliest of the anti-entropy push, the
    /// digest round, the pending resyncs and the overdue discovers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = self.anti_entropy_at.min(self.digest_at);
        if let Some(resync) = self.resync_at {
            at = at.min(resync);
        }
        if let Some(awaiting) = self.awaiting.values().map(|a| a.at).min() {
            at = at.min(awaiting);
        }
        Some(at)
    }

    // ---- inbound ----

    fn accept_chunk(&mut self, now: Instant, table: &ScopeTable, from: &NodeId, chunk: SyncChunk) -> bool {
        if !self.assemblers.contains_key(&from.name) && !self.admit(self.assemblers.len()) {
            return false;
        }
        let assembler =
            self.assemblers.entry(from.name.clone()).or_insert_with(|| (from.clone(), SyncAssembler::new()));
        if assembler.0 != *from {
            *assembler = (from.clone(), SyncAssembler::new());
        }
        match assembler.1.accept(chunk) {
            Ok(None) => true,
            Ok(Some(state)) => {
                // Its full state arrived (applied or refused): our discover is answered.
                self.awaiting.remove(&from.name);
                let result = table.sync_peer(from, state);
                let refused = !matches!(result, Ok(report) if report.groups_refused == 0);
                let max_backoff = self.config.max_digest_backoff();
                if let Some(repair) = self.repairs.get_mut(&from.name) {
                    repair.on_sync(refused, max_backoff);
                }
                match result {
                    Ok(report) => {
                        if report.groups_refused > 0 {
                            self.push_event(PeersEvent::SyncPartlyRefused {
                                peer: from.clone(),
                                groups_refused: report.groups_refused,
                            });
                        }
                        true
                    }
                    Err(error) => self.refused(now, from, error),
                }
            }
            Err(error) => {
                self.push_event(PeersEvent::SyncChunkRefused { peer: from.clone(), error });
                // Ask for the whole state again.
                self.schedule_pull(now, &from.name);
                false
            }
        }
    }

    fn apply_op(
        &mut self,
        now: Instant,
        table: &ScopeTable,
        from: &NodeId,
        kind: EventKind,
        group: &Group,
        pids: &[Pid],
    ) -> bool {
        let result = match kind {
            EventKind::Join => table.remote_join(from, group, pids),
            EventKind::Leave => table.remote_leave(from, group, pids),
        };
        match result {
            Ok(_) => true,
            Err(error) => self.refused(now, from, error),
        }
    }

    /// A refusal of the table. From a peer the table does not know (its sync to us was lost, or
    /// it never saw us go down), pull its full state so we converge.
    fn refused(&mut self, now: Instant, from: &NodeId, error: PgError) -> bool {
        if matches!(error, PgError::UnknownPeer { .. }) {
            self.schedule_pull(now, &from.name);
        }
        self.push_event(PeersEvent::Refused { peer: from.clone(), error });
        false
    }

    /// A peer's digest: compared with what we hold of it; a mismatch pulls its full state (the
    /// answer to our discover), within the peer's rate limit.
    fn check_digest(&mut self, now: Instant, table: &ScopeTable, from: &NodeId, digest: MembershipDigest) {
        if !self.repairs.contains_key(&from.name) && !self.admit(self.repairs.len()) {
            return;
        }
        let held = table.peer_digest(from);
        let repair = self.repairs.entry(from.name.clone()).or_default();
        let check = match repair.on_digest(held == Some(digest)) {
            DigestVerdict::InSync => DigestCheck::InSync,
            DigestVerdict::Deferred => DigestCheck::Deferred,
            DigestVerdict::Pull => DigestCheck::Pull,
        };
        self.push_event(PeersEvent::DigestChecked { peer: from.name.clone(), check, held, theirs: Some(digest) });
        if check == DigestCheck::Pull {
            self.send_message(now, &from.name, PgMessage::Discover);
        }
    }

    // ---- rounds ----

    /// The full-state backstop: our state to the next peer in name order.
    fn anti_entropy(&mut self, now: Instant, table: &ScopeTable) {
        if self.peers.is_empty() {
            return;
        }
        let index = (self.cursor % self.peers.len() as u64) as usize;
        self.cursor = self.cursor.wrapping_add(1);
        if let Some(name) = self.peers.keys().nth(index).cloned() {
            self.send_sync(now, table, &name, SyncReason::AntiEntropy);
        }
    }

    /// The digest tick: our digest to every peer that answered us, then the pulls whose rate
    /// limit just expired (see the scope module, "Anti-entropy").
    fn digest_round(&mut self, now: Instant, table: &ScopeTable) {
        if let Some((message, bytes)) = self.encode(PgMessage::Digest(table.local_digest())) {
            let names: Vec<String> =
                self.peers.keys().filter(|peer| !self.awaiting.contains_key(*peer)).cloned().collect();
            for peer in names {
                self.queue_run(now, &peer, vec![(Body::Encoded { message, bytes: bytes.clone() }, None)]);
            }
        }
        let due: Vec<String> =
            self.repairs.iter_mut().filter_map(|(name, repair)| repair.on_tick().then(|| name.clone())).collect();
        for peer in due {
            self.push_event(PeersEvent::DigestChecked {
                peer: peer.clone(),
                check: DigestCheck::DeferredPull,
                held: None,
                theirs: None,
            });
            self.send_message(now, &peer, PgMessage::Discover);
        }
    }

    fn run_resyncs(&mut self, now: Instant, table: &ScopeTable) {
        self.resync_at = None;
        for peer in std::mem::take(&mut self.pull) {
            self.send_message(now, &peer, PgMessage::Discover);
        }
        for peer in std::mem::take(&mut self.resync) {
            self.send_sync(now, table, &peer, SyncReason::Resync);
        }
    }

    /// Re-sends the discovers whose answer (the peer's full state) is overdue, with a doubling
    /// delay from `resync_delay` up to the anti-entropy period.
    fn retry_discovers(&mut self, now: Instant) {
        let (base, cap) = (self.config.resync_delay, self.config.anti_entropy_interval.max(self.config.resync_delay));
        let due: Vec<String> =
            self.awaiting.iter().filter(|(_, a)| a.at <= now).map(|(name, _)| name.clone()).collect();
        for peer in due {
            self.send_message(now, &peer, PgMessage::Discover);
            if let Some(awaiting) = self.awaiting.get_mut(&peer) {
                awaiting.retries = awaiting.retries.saturating_add(1);
                let delay = base.saturating_mul(1 << awaiting.retries.min(MAX_DISCOVER_BACKOFF_SHIFT)).min(cap);
                awaiting.at = now + delay;
                let retries = awaiting.retries;
                self.stats.discovers_retried += 1;
                self.push_event(PeersEvent::DiscoverRetried { peer, retries });
            }
        }
    }

    fn schedule_pull(&mut self, now: Instant, peer: &str) {
        if !self.pull.contains(peer) && !self.admit(self.pull.len()) {
            return;
        }
        self.pull.insert(peer.to_owned());
        self.schedule_resync(now);
    }

    fn schedule_resync(&mut self, now: Instant) {
        if self.resync_at.is_none() {
            self.resync_at = Some(now + self.config.resync_delay);
        }
    }

    // ---- outbound ----

    /// Our full local state to `peer` (groups in name order), then the drained events its
    /// snapshot does not reflect, as one run; batches of later drains are filtered by its cut.
    fn send_sync(&mut self, now: Instant, table: &ScopeTable, peer: &str, reason: SyncReason) {
        if !self.peers.contains_key(peer) {
            return;
        }
        let (floor, groups) = table.sync_snapshot();
        let cut = SnapshotCut { floor, versions: groups.iter().map(|(g, s)| (g.clone(), s.version())).collect() };
        let mut state: NodeState = groups
            .iter()
            .filter(|(_, s)| !s.local_members().is_empty())
            .map(|(g, s)| (g.clone(), s.local_members().to_vec()))
            .collect();
        // The table's map iterates in a per-process random order; the peer applies a sync in its
        // order (events per group), so sort for a deterministic trace.
        state.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.next_sync_id += 1;
        let chunks = sync_chunks(self.next_sync_id, state);
        let last = chunks.len().saturating_sub(1);
        let mut run: Vec<(Body, Option<SyncReason>)> = chunks
            .into_iter()
            .enumerate()
            .map(|(index, chunk)| (Body::Chunk(chunk), (index == last).then_some(reason)))
            .collect();
        for (message, bytes) in self.batch_bytes(self.ring.iter().filter(|e| !cut.reflects(e))) {
            run.push((Body::Encoded { message, bytes }, None));
        }
        let Some(run) = self.queue_run(now, peer, run) else { return };
        self.stats.syncs_queued += 1;
        if let Some(state) = self.peers.get_mut(peer) {
            let previous = state.cut.replace(cut);
            state.unconfirmed = Some((run, previous));
        }
    }

    /// Local events to every peer: the same encoded frames to peers without a cut, filtered ones
    /// to peers synced since the last complete drain.
    fn send_events(&mut self, now: Instant, local: &[&Event]) {
        let mut shared: Option<Vec<(&'static str, Bytes)>> = None;
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for peer in names {
            let frames = match self.peers.get(&peer).and_then(|p| p.cut.as_ref()) {
                None => shared.get_or_insert_with(|| self.batch_bytes(local.iter().copied())).clone(),
                Some(cut) => self.batch_bytes(local.iter().copied().filter(|e| !cut.reflects(e))),
            };
            if !frames.is_empty() {
                let run = frames.into_iter().map(|(message, bytes)| (Body::Encoded { message, bytes }, None)).collect();
                self.queue_run(now, &peer, run);
            }
        }
    }

    fn batch_bytes<'e>(&self, events: impl Iterator<Item = &'e Event>) -> Vec<(&'static str, Bytes)> {
        let ops: Vec<PgOp> = events.filter_map(PgOp::from_local_event).collect();
        batch_frames(ops).into_iter().filter_map(|ops| self.encode(PgMessage::Batch(ops))).collect()
    }

    fn encode(&self, message: PgMessage) -> Option<(&'static str, Bytes)> {
        let name = message.name();
        encode_frame(&PgFrame::new(self.scope.as_str(), self.node.clone(), message)).map(|bytes| (name, bytes))
    }

    /// One message as a run of its own.
    fn send_message(&mut self, now: Instant, peer: &str, message: PgMessage) {
        if let Some((message, bytes)) = self.encode(message) {
            self.queue_run(now, peer, vec![(Body::Encoded { message, bytes }, None)]);
        }
    }

    /// Queues `items` for `peer` as one run, whole or not at all; returns the run's id.
    fn queue_run(&mut self, now: Instant, peer: &str, items: Vec<(Body, Option<SyncReason>)>) -> Option<u64> {
        if self.transmits.len() + items.len() > MAX_QUEUED_TRANSMITS {
            self.stats.transmits_refused += 1;
            // As if the transport's pg queue had overflowed: the peer gets our full state later.
            if self.peers.contains_key(peer) {
                self.resync.insert(peer.to_owned());
                self.schedule_resync(now);
            }
            return None;
        }
        self.next_run += 1;
        let run = self.next_run;
        for (body, completes_sync) in items {
            self.transmits.push_back(Queued { peer: peer.to_owned(), run, body, completes_sync });
        }
        Some(run)
    }

    /// Drops what is still queued of `run` (queued contiguously, so at the front when its first
    /// transmit was just polled) and restores the cut a sync of that run had replaced.
    fn abort_run(&mut self, peer: &str, run: u64) {
        while self.transmits.front().is_some_and(|t| t.run == run) {
            self.transmits.pop_front();
            self.stats.transmits_aborted += 1;
        }
        debug_assert!(self.transmits.iter().all(|t| t.run != run), "a run is queued contiguously");
        if let Some(state) = self.peers.get_mut(peer)
            && state.unconfirmed.as_ref().is_some_and(|(r, _)| *r == run)
            && let Some((_, previous)) = state.unconfirmed.take()
        {
            state.cut = previous;
        }
    }

    fn push_event(&mut self, event: PeersEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    /// Whether a per-node map holding `len` entries may take one more; counts a refusal.
    fn admit(&mut self, len: usize) -> bool {
        if len < MAX_PEERS {
            return true;
        }
        self.stats.peers_refused += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use cohort_cluster::NodeId;

    use super::*;
    use crate::pg::wire::PgFrame;

    const RESYNC: Duration = Duration::from_millis(100);
    const DIGEST: Duration = Duration::from_secs(1);
    const ANTI_ENTROPY: Duration = Duration::from_secs(10);

    fn config() -> PeersConfig {
        PeersConfig { anti_entropy_interval: ANTI_ENTROPY, digest_interval: DIGEST, resync_delay: RESYNC }
    }

    fn me() -> NodeId {
        NodeId::new("a", 1)
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name, 1)
    }

    fn group(name: &str) -> Group {
        Group::new(name).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What the driver asked to send: the peer, the decoded message, the completed sync if any.
    type Sent = (String, PgMessage, Option<SyncReason>);

    fn sent(peers: &mut Peers) -> Vec<Sent> {
        std::iter::from_fn(|| peers.poll_transmit())
            .map(|t| {
                let frame: PgFrame = rmp_serde::from_slice(&t.bytes).expect("the driver encodes valid frames");
                assert_eq!((frame.scope.as_str(), &frame.from), ("s", &me()));
                assert_eq!(frame.message.name(), t.message);
                (t.peer, frame.message, t.completes_sync)
            })
            .collect()
    }

    fn events(peers: &mut Peers) -> Vec<PeersEvent> {
        std::iter::from_fn(|| peers.poll_event()).collect()
    }

    fn discovers_to(sent: &[Sent], peer: &str) -> usize {
        sent.iter().filter(|(p, m, _)| p == peer && *m == PgMessage::Discover).count()
    }

    /// The groups of the complete syncs in `sent` to `peer`, one entry per sync.
    fn syncs_to(sent: &[Sent], peer: &str) -> Vec<(SyncReason, NodeState)> {
        let mut syncs = Vec::new();
        let mut groups = Vec::new();
        for (p, message, completes) in sent {
            if let (true, PgMessage::Sync(chunk)) = (p == peer, message) {
                groups.extend(chunk.groups.clone());
                if let Some(reason) = completes {
                    assert!(chunk.last, "only the last chunk completes a sync");
                    syncs.push((*reason, std::mem::take(&mut groups)));
                }
            }
        }
        syncs
    }

    /// A peer's full state as one sync chunk.
    fn full_state(groups: NodeState) -> PgMessage {
        PgMessage::Sync(SyncChunk { sync_id: 1, index: 0, last: true, groups })
    }

    /// Runs every timeout due up to `until`, stepping through the deadlines the driver asks for;
    /// returns what it sent.
    fn run_until(peers: &mut Peers, table: &ScopeTable, until: Instant) -> Vec<Sent> {
        let mut all = Vec::new();
        while let Some(at) = peers.poll_timeout().filter(|at| *at <= until) {
            peers.handle_timeout(at, table);
            all.extend(sent(peers));
        }
        all
    }

    /// A driver with `names` up, their discovers answered by an empty state; outputs consumed.
    fn connected(t0: Instant, table: &ScopeTable, names: &[&str]) -> Peers {
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        for name in names {
            peers.handle_peer_up(t0, table, &node(name), SyncReason::Connect);
            peers.handle_message(t0, table, &node(name), full_state(Vec::new()));
        }
        sent(&mut peers);
        events(&mut peers);
        peers
    }

    #[test]
    fn a_peer_up_sends_a_discover_then_our_full_state() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let pid = Pid::new(me(), 7);
        table.join(&group("g"), std::slice::from_ref(&pid)).unwrap();
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        peers.handle_peer_up(t0, &table, &node("b"), SyncReason::Connect);
        let out = sent(&mut peers);
        assert_eq!(out[0], ("b".to_owned(), PgMessage::Discover, None));
        assert_eq!(syncs_to(&out, "b"), vec![(SyncReason::Connect, vec![(group("g"), vec![pid])])]);
        assert!(peers.is_peer("b") && peers.is_awaiting("b"));
    }

    #[test]
    fn a_discover_is_resent_with_a_doubling_delay_until_the_peers_state_arrives_then_stops() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        peers.handle_peer_up(t0, &table, &node("b"), SyncReason::Connect);
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 1);
        assert_eq!(peers.poll_timeout(), Some(t0 + RESYNC));

        peers.handle_timeout(t0 + ms(99), &table);
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 0, "not before the retry delay");
        peers.handle_timeout(t0 + RESYNC, &table);
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 1, "first retry at the resync delay");
        assert_eq!(peers.poll_timeout(), Some(t0 + ms(300)), "then twice the delay");
        assert_eq!(events(&mut peers), vec![PeersEvent::DiscoverRetried { peer: "b".to_owned(), retries: 1 }],);
        peers.handle_timeout(t0 + ms(299), &table);
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 0);
        peers.handle_timeout(t0 + ms(300), &table);
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 1, "second retry 200 ms later");

        peers.handle_message(t0 + ms(350), &table, &node("b"), full_state(Vec::new()));
        assert!(!peers.is_awaiting("b"));
        let later = run_until(&mut peers, &table, t0 + ANTI_ENTROPY - ms(1));
        assert_eq!(discovers_to(&later, "b"), 0, "answered: no discover any more");
        assert_eq!(peers.stats().discovers_retried, 2);
    }

    #[test]
    fn the_discover_retry_delay_is_capped_at_the_anti_entropy_period() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        peers.handle_peer_up(t0, &table, &node("b"), SyncReason::Connect);
        sent(&mut peers);
        let out = run_until(&mut peers, &table, t0 + Duration::from_secs(60));
        // 100 ms, then 200, 400, ..., 6.4 s, then every 10 s: t = 0.1, 0.3, 0.7, 1.5, 3.1, 6.3,
        // 12.7, 22.7, 32.7, 42.7, 52.7 s.
        assert_eq!(discovers_to(&out, "b"), 11);
        assert!(out.iter().all(|(_, m, _)| !matches!(m, PgMessage::Digest(_))), "no digest to an awaiting peer");
    }

    #[test]
    fn a_digest_goes_every_period_only_to_peers_that_answered() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = connected(t0, &table, &["b"]);
        peers.handle_peer_up(t0, &table, &node("c"), SyncReason::Connect);
        sent(&mut peers);
        let out = run_until(&mut peers, &table, t0 + ms(3_500));
        let digests: Vec<&str> =
            out.iter().filter(|(_, m, _)| matches!(m, PgMessage::Digest(_))).map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(digests, ["b", "b", "b"], "one per period, none to the awaiting peer c");
        assert!(out.contains(&("b".to_owned(), PgMessage::Digest(table.local_digest()), None)));
    }

    #[test]
    fn a_digest_mismatch_pulls_once_per_digest_period_however_many_digests_arrive() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let b = node("b");
        let mut peers = connected(t0, &table, &["b"]);
        let wrong = MembershipDigest { hash: 1, memberships: 1 };
        let held = table.peer_digest(&b);
        assert_ne!(held, Some(wrong));

        peers.handle_message(t0 + ms(10), &table, &b, PgMessage::Digest(wrong));
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 1, "the first mismatch pulls at once");
        for i in 0..5 {
            peers.handle_message(t0 + ms(20 + i), &table, &b, PgMessage::Digest(wrong));
        }
        assert_eq!(discovers_to(&sent(&mut peers), "b"), 0, "within the period: deferred");
        let checks: Vec<DigestCheck> = events(&mut peers)
            .into_iter()
            .filter_map(|e| match e {
                PeersEvent::DigestChecked { check, .. } => Some(check),
                _ => None,
            })
            .collect();
        assert_eq!(
            checks,
            [
                DigestCheck::Pull,
                DigestCheck::Deferred,
                DigestCheck::Deferred,
                DigestCheck::Deferred,
                DigestCheck::Deferred,
                DigestCheck::Deferred
            ]
        );

        // Our first digest tick ends the partial period of the pull; the next one pulls.
        let first = run_until(&mut peers, &table, t0 + DIGEST);
        assert_eq!(discovers_to(&first, "b"), 0);
        let second = run_until(&mut peers, &table, t0 + 2 * DIGEST);
        assert_eq!(discovers_to(&second, "b"), 1, "the deferred mismatch, one whole period later");
        assert!(
            events(&mut peers)
                .iter()
                .any(|e| matches!(e, PeersEvent::DigestChecked { check: DigestCheck::DeferredPull, .. }))
        );

        // A matching digest ends it: no more pulls.
        peers.handle_message(t0 + ms(2_100), &table, &b, PgMessage::Digest(held.unwrap()));
        let after = run_until(&mut peers, &table, t0 + 5 * DIGEST);
        assert_eq!(discovers_to(&after, "b"), 0);
    }

    #[test]
    fn an_overflowed_peer_gets_a_full_resync_at_the_resync_delay() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = connected(t0, &table, &["b", "c"]);
        let pid = Pid::new(me(), 1);
        table.join(&group("g"), std::slice::from_ref(&pid)).unwrap();
        peers.handle_drained(t0 + ms(5), table.drain_events(usize::MAX), true);
        let b = peers.poll_transmit().unwrap();
        assert_eq!((b.peer.as_str(), b.message), ("b", "batch"));
        peers.handle_send_failure(t0 + ms(5), SendFailure::Overflowed);
        let c = peers.poll_transmit().unwrap();
        assert_eq!((c.peer.as_str(), c.message), ("c", "batch"), "another peer's run is not affected");
        assert!(peers.poll_transmit().is_none());
        assert_eq!(peers.poll_timeout(), Some(t0 + ms(5) + RESYNC));

        let out = run_until(&mut peers, &table, t0 + ms(105));
        assert_eq!(syncs_to(&out, "b"), vec![(SyncReason::Resync, vec![(group("g"), vec![pid])])]);
        assert!(syncs_to(&out, "c").is_empty(), "only the overflowed peer is resynced");
        assert!(run_until(&mut peers, &table, t0 + ms(999)).is_empty(), "once");
    }

    #[test]
    fn a_failed_sync_chunk_drops_the_rest_of_its_run() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        // A drained local event the table's snapshot does not reflect (a writer between its push
        // and its publish): replayed after the sync, in the same run.
        let pid = Pid::new(me(), 1);
        let event =
            Event { seq: 1_000, kind: EventKind::Join, group: group("g"), pids: vec![pid], origin: Origin::Local };
        peers.handle_drained(t0, vec![event], true);
        peers.handle_peer_up(t0, &table, &node("b"), SyncReason::Connect);
        assert_eq!(peers.poll_transmit().unwrap().message, "discover");
        let chunk = peers.poll_transmit().unwrap();
        assert_eq!(chunk.message, "sync");
        peers.handle_send_failure(t0, SendFailure::NotSent);
        assert_eq!(peers.poll_transmit(), None, "the replayed batch after the failed chunk is dropped");
        assert_eq!(peers.stats().transmits_aborted, 1);
        assert_eq!(
            peers.poll_timeout(),
            Some(t0 + RESYNC),
            "not sent (not an overflow): no resync, only the discover retry"
        );

        // Without a failure the same run goes out whole: the chunk, then the replay.
        peers.handle_peer_up(t0, &table, &node("c"), SyncReason::Connect);
        let kinds: Vec<&str> = std::iter::from_fn(|| peers.poll_transmit()).map(|t| t.message).collect();
        assert_eq!(kinds, ["discover", "sync", "batch"]);
    }

    #[test]
    fn a_drain_skips_for_a_peer_the_events_its_sync_already_carried() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = connected(t0, &table, &["c"]);
        peers.handle_drained(t0, Vec::new(), true);
        let pid = Pid::new(me(), 1);
        table.join(&group("g"), std::slice::from_ref(&pid)).unwrap();
        // b is synced after the join and before its event is drained: its snapshot carries it.
        peers.handle_peer_up(t0, &table, &node("b"), SyncReason::Connect);
        assert_eq!(
            syncs_to(&sent(&mut peers), "b"),
            vec![(SyncReason::Connect, vec![(group("g"), vec![pid.clone()])])]
        );
        peers.handle_drained(t0, table.drain_events(usize::MAX), true);
        let out = sent(&mut peers);
        let batch = vec![PgOp { kind: EventKind::Join, group: group("g"), pids: vec![pid.clone()] }];
        assert_eq!(out, vec![("c".to_owned(), PgMessage::Batch(batch.clone()), None)], "b already has it");

        // The cut was dropped with the complete drain: the next change goes to both.
        table.leave(&group("g"), std::slice::from_ref(&pid)).unwrap();
        peers.handle_drained(t0, table.drain_events(usize::MAX), true);
        let peers_sent: Vec<String> = sent(&mut peers).into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(peers_sent, ["b", "c"]);
    }

    #[test]
    fn a_sync_not_sent_whole_does_not_filter_the_batches_that_follow() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let b = node("b");
        let (first, second) = (Pid::new(me(), 1), Pid::new(me(), 2));
        table.join(&group("g"), std::slice::from_ref(&first)).unwrap();
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        peers.handle_peer_up(t0, &table, &b, SyncReason::Connect);
        assert_eq!(syncs_to(&sent(&mut peers), "b").len(), 1, "b holds `first`");
        table.join(&group("g"), std::slice::from_ref(&second)).unwrap();
        // b asks again; this sync (it would carry `second`) is refused by the transport.
        peers.handle_message(t0, &table, &b, PgMessage::Discover);
        assert_eq!(peers.poll_transmit().unwrap().message, "sync");
        peers.handle_send_failure(t0, SendFailure::NotSent);
        assert_eq!(peers.poll_transmit(), None);
        peers.handle_drained(t0, table.drain_events(usize::MAX), true);
        let batch = vec![PgOp { kind: EventKind::Join, group: group("g"), pids: vec![second] }];
        assert_eq!(
            sent(&mut peers),
            vec![("b".to_owned(), PgMessage::Batch(batch), None)],
            "the first sync's cut applies again: `second` is sent, `first` is not sent twice"
        );
    }

    #[test]
    fn anti_entropy_pushes_the_full_state_to_one_peer_per_period_round_robin_in_name_order() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        table.join(&group("g"), &[Pid::new(me(), 1)]).unwrap();
        let order = |seed: u64| {
            let mut peers = Peers::new("s", me(), config(), t0, seed);
            for name in ["d", "b", "c"] {
                peers.handle_peer_up(t0, &table, &node(name), SyncReason::Connect);
                peers.handle_message(t0, &table, &node(name), full_state(Vec::new()));
            }
            sent(&mut peers);
            let out = run_until(&mut peers, &table, t0 + 4 * ANTI_ENTROPY);
            out.into_iter()
                .filter(|(_, _, c)| *c == Some(SyncReason::AntiEntropy))
                .map(|(p, _, _)| p)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(0), ["b", "c", "d", "b"]);
        assert_eq!(order(1), ["c", "d", "b", "c"], "the seed picks the starting peer");
    }

    #[test]
    fn a_lost_frame_or_an_unknown_sender_pulls_its_full_state_at_the_resync_delay() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        peers.handle_frame_lost(t0, "b");
        // A join from a node the table does not know as a peer is refused and pulls it too.
        let c = node("c");
        peers.handle_message(
            t0 + ms(50),
            &table,
            &c,
            PgMessage::Join { group: group("g"), pids: vec![Pid::new(c.clone(), 1)] },
        );
        assert!(sent(&mut peers).is_empty());
        assert!(matches!(&events(&mut peers)[..], [PeersEvent::Refused { error: PgError::UnknownPeer { .. }, .. }]));
        let out = run_until(&mut peers, &table, t0 + RESYNC);
        assert_eq!((discovers_to(&out, "b"), discovers_to(&out, "c")), (1, 1), "one resync deadline for both");
        assert!(run_until(&mut peers, &table, t0 + ms(999)).is_empty());
    }

    #[test]
    fn a_peer_down_forgets_it() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        peers.handle_peer_up(t0, &table, &node("b"), SyncReason::Connect);
        peers.handle_peer_down(t0, "b");
        assert!(peers.poll_transmit().is_none(), "nothing queued for it is sent");
        assert!(!peers.is_peer("b") && !peers.is_awaiting("b"));
        assert!(run_until(&mut peers, &table, t0 + 2 * ANTI_ENTROPY).is_empty());
    }

    #[test]
    fn past_max_peers_a_node_is_refused_and_counted() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        for i in 0..=MAX_PEERS {
            peers.handle_peer_up(t0, &table, &node(&format!("n{i:05}")), SyncReason::Connect);
            sent(&mut peers);
        }
        assert!(peers.is_peer("n00000") && !peers.is_peer(&format!("n{MAX_PEERS:05}")));
        assert_eq!(peers.stats().peers_refused, 1);
    }

    #[test]
    fn a_run_that_does_not_fit_the_transmit_queue_is_refused_whole_and_its_peer_resynced() {
        let (t0, table) = (Instant::now(), ScopeTable::new(me()));
        let names: Vec<String> = (0..MAX_PEERS).map(|i| format!("n{i:05}")).collect();
        let mut peers = connected(t0, &table, &names.iter().map(String::as_str).collect::<Vec<_>>());
        // A shell that does not poll: one batch per peer per drain piles up.
        let mut local = 0;
        while peers.stats().transmits_refused == 0 {
            local += 1;
            table.join(&group("g"), &[Pid::new(me(), local)]).unwrap();
            peers.handle_drained(t0, table.drain_events(usize::MAX), true);
            assert!(local <= MAX_QUEUED_TRANSMITS as u64, "the bound never refused");
        }
        let refused = peers.stats().transmits_refused as usize;
        let queued = sent(&mut peers);
        assert!(queued.len() <= MAX_QUEUED_TRANSMITS);
        assert_eq!(queued.len() + refused, local as usize * MAX_PEERS, "every batch queued or refused whole");
        let resynced: usize = run_until(&mut peers, &table, t0 + RESYNC)
            .iter()
            .filter(|(_, _, c)| *c == Some(SyncReason::Resync))
            .count();
        assert_eq!(resynced, refused, "each refused peer gets our full state");
    }

    #[test]
    fn the_replay_ring_keeps_the_last_events_and_counts_evictions() {
        let t0 = Instant::now();
        let mut peers = Peers::new("s", me(), config(), t0, 0);
        let events: Vec<Event> = (1..=REPLAY_RING_EVENTS as u64 + 3)
            .map(|seq| Event {
                seq,
                kind: EventKind::Join,
                group: group("g"),
                pids: vec![Pid::new(me(), seq)],
                origin: Origin::Remote,
            })
            .collect();
        peers.handle_drained(t0, events, true);
        assert_eq!(peers.replay_ring().count(), REPLAY_RING_EVENTS);
        assert_eq!(peers.replay_ring().next().map(|e| e.seq), Some(4));
        assert_eq!(peers.stats().ring_evicted, 3);
    }

    /// One scripted run: peers up in a scrambled order, local changes in several groups, digests,
    /// a lost frame, an overflow, 40 simulated seconds of timeouts. Everything the driver output.
    fn scripted_run(t0: Instant) -> Vec<String> {
        let table = ScopeTable::new(me());
        for (i, name) in ["zeta", "alpha", "mid", "beta", "omega", "kappa"].into_iter().enumerate() {
            table.join(&group(name), &[Pid::new(me(), i as u64 + 1)]).unwrap();
        }
        let mut peers = Peers::new("s", me(), config(), t0, 42);
        let mut trace = Vec::new();
        let mut record = |peers: &mut Peers, at: Instant| {
            while let Some(t) = peers.poll_transmit() {
                trace.push(format!("{:?} {} {} {:?} {:?}", at - t0, t.peer, t.message, t.bytes, t.completes_sync));
                if t.peer == "c" && t.message == "batch" {
                    peers.handle_send_failure(at, SendFailure::Overflowed);
                }
            }
            while let Some(event) = peers.poll_event() {
                trace.push(format!("{:?} {event:?}", at - t0));
            }
            trace.push(format!("{:?} next {:?}", at - t0, peers.poll_timeout().map(|n| n - t0)));
        };
        for name in ["d", "b", "c"] {
            peers.handle_peer_up(t0, &table, &node(name), SyncReason::Connect);
            record(&mut peers, t0);
        }
        peers.handle_message(
            t0 + ms(30),
            &table,
            &node("b"),
            full_state(vec![(group("x"), vec![Pid::new(node("b"), 1)])]),
        );
        peers.handle_message(
            t0 + ms(40),
            &table,
            &node("b"),
            PgMessage::Digest(MembershipDigest { hash: 9, memberships: 9 }),
        );
        peers.handle_frame_lost(t0 + ms(45), "d");
        record(&mut peers, t0 + ms(45));
        table.leave(&group("mid"), &[Pid::new(me(), 3)]).unwrap();
        table.join(&group("new"), &[Pid::new(me(), 9)]).unwrap();
        peers.handle_drained(t0 + ms(60), table.drain_events(usize::MAX), true);
        record(&mut peers, t0 + ms(60));
        while let Some(at) = peers.poll_timeout().filter(|at| *at <= t0 + Duration::from_secs(40)) {
            peers.handle_timeout(at, &table);
            record(&mut peers, at);
        }
        trace
    }

    #[test]
    fn the_same_inputs_give_the_same_outputs() {
        let t0 = Instant::now();
        // Two tables: their maps iterate in different (per-instance random) orders, which must not
        // show in the output.
        let (first, second) = (scripted_run(t0), scripted_run(t0));
        assert!(first.len() > 30, "a run with something in it: {}", first.len());
        assert!(first.iter().any(|line| line.contains("AntiEntropy")));
        assert_eq!(first, second);
    }
}
