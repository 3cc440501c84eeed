//! The eventual tier's I/O side: [`EventualTier`] owns one node's [`EventualState`], spreads local
//! writes as gossip deltas, repairs what gossip missed by anti-entropy, follows membership, and
//! tells local processes that lost a name.
//!
//! ```text
//!  register/unregister/exit ──► state (Mutex) ──► delta ──► Membership::broadcast (channel 1)
//!  peer delta (gossip) ──► GossipChannel::receive ──► apply ──► new? keep spreading : stop
//!  every round: Digest ──► each live peer; differing shards pushed + pulled (registry class)
//!  membership Down/Left ──► depart (drop its dots) ; Up ──► readmit + an early round
//!  a merge makes a local registration lose ──► NameRevoked to the process (once), then unregister
//! ```
//!
//! Invariants:
//! - One mutex holds the state and the local bookkeeping; it is held for in-memory work only.
//!   Side effects (broadcasts, notices, frames) run after it is released, so no lock is ever held
//!   across a send, and the gossip callback (on the membership task) never waits on I/O.
//! - A local registration that loses to another owner is told exactly once and is then
//!   unregistered (its node tombstones it), so one owner remains everywhere, as in Erlang's
//!   `global` conflict resolution; a registration of a name that already has a visible owner is
//!   refused (`AlreadyRegistered`).
//! - Tombstones are collected only below what every live node acknowledged (the meet of the
//!   version vectors peers send with their digests). A replica acknowledges only the contiguous
//!   prefix of an origin's writes it received, and adopts a peer's acknowledgement only when their
//!   digests are equal (`EventualState::adopt_peer_clock`), so a lost tombstone can never be
//!   collected elsewhere while this node still holds the older live entry.
//! - Departure follows this node's membership view: Down/Left drops the origin's dots; Up of the
//!   same identity (a renewed node after a false suspicion) readmits it.
//! - Every peer input is validated; refusals are counted by reason and the node keeps running.
//!   Exchanges are rate-limited per peer ([`EventualConfig::min_exchange_interval`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_actors::{Pid, ProcessHost};
use cohort_cluster::membership::Membership;
use cohort_cluster::membership::channels::{CHANNEL_REGISTRY, GossipChannel};
use cohort_cluster::net::transport::{Inbound, Transport};
use cohort_cluster::queue::Class;
use cohort_cluster::{MembershipEvent, NodeId};
use tokio::sync::{mpsc, watch};

use super::crdt::{
    ApplyOutcome, Delta, EventualError, EventualState, Limits, MergeOutcome, VersionVector, WinnerChange,
};
use super::digest::{SHARD_COUNT, ShardState, differing_shards};
use super::wire::{
    self, DigestMsg, GossipDelta, KIND_DIGEST, KIND_PULL, KIND_SHARDS, MAX_SHARDS_FRAME_BYTES, PullMsg, ShardsMsg,
    WIRE_VERSION, WireError,
};
use crate::local::MAX_NAMES_PER_PID;
use crate::metrics::RegistryMetrics;
use crate::{NameRevoked, RegistryError, Tier};

/// How the eventual tier behaves; the defaults suit a LAN cluster.
#[derive(Clone, Debug)]
pub struct EventualConfig {
    /// How often each node sends its digest to every live peer (1 s).
    ///
    /// Why: gossip carries almost every write within a few hundred milliseconds; anti-entropy
    /// repairs the rest (lost datagrams, a full gossip backlog, a healed partition) within about a
    /// second, and a digest is only 64 x 8 bytes per peer.
    pub anti_entropy_interval: Duration,
    /// The least time between two exchanges this node answers from one peer, and between two
    /// early rounds (250 ms): the per-peer rate limit of SPEC 7's anti-entropy.
    pub min_exchange_interval: Duration,
    /// Whether local writes are gossiped as deltas (true). False leaves every write to
    /// anti-entropy: for tests and diagnostics.
    pub gossip_deltas: bool,
    /// The state's bounds.
    pub limits: Limits,
}

impl Default for EventualConfig {
    fn default() -> Self {
        Self {
            anti_entropy_interval: Duration::from_secs(1),
            min_exchange_interval: Duration::from_millis(250),
            gossip_deltas: true,
            limits: Limits::default(),
        }
    }
}

/// How a local process is told it lost its name: puts a [`NameRevoked`] into its mailbox
/// (bypassing the capacity bound: owed once per registration). False if the process is gone.
pub type RevokeSink = Arc<dyn Fn(NameRevoked) -> bool + Send + Sync>;

/// Most gossip deltas waiting for the anti-entropy task because the state was busy when they
/// arrived; beyond, they are dropped and counted (`busy`) and anti-entropy repairs them.
const MAX_DEFERRED_DELTAS: usize = 4096;

/// The granularity of the anti-entropy loop's clock.
const LOOP_TICK: Duration = Duration::from_millis(50);

struct LocalReg {
    pid: Pid,
    sink: Option<RevokeSink>,
}

#[derive(Default)]
struct Locals {
    by_name: HashMap<Box<str>, LocalReg>,
    by_pid: HashMap<Pid, Vec<Box<str>>>,
}

impl Locals {
    fn insert(&mut self, name: &str, pid: &Pid, sink: Option<RevokeSink>) {
        if let Some(previous) = self.by_name.insert(name.into(), LocalReg { pid: pid.clone(), sink }) {
            self.forget_pid_name(&previous.pid, name);
        }
        self.by_pid.entry(pid.clone()).or_default().push(name.into());
    }

    fn remove(&mut self, name: &str) -> Option<LocalReg> {
        let reg = self.by_name.remove(name)?;
        self.forget_pid_name(&reg.pid, name);
        Some(reg)
    }

    fn forget_pid_name(&mut self, pid: &Pid, name: &str) {
        if let Some(names) = self.by_pid.get_mut(pid) {
            names.retain(|held| &**held != name);
            if names.is_empty() {
                self.by_pid.remove(pid);
            }
        }
    }
}

struct Inner {
    state: EventualState,
    locals: Locals,
    /// Per live peer (by name): its identity and what it acknowledged in its last digest.
    peer_acked: HashMap<String, (NodeId, VersionVector)>,
    last_answered: HashMap<String, Instant>,
    next_pull: u64,
    /// Names with a live owner (kept from winner changes, not recounted).
    visible: usize,
}

/// Work to do once the lock is released.
#[derive(Default)]
struct Effects {
    deltas: Vec<Delta>,
    notices: Vec<(RevokeSink, NameRevoked)>,
}

struct Shared {
    local: NodeId,
    inner: Mutex<Inner>,
    host: Arc<dyn ProcessHost>,
    membership: Membership,
    transport: Transport,
    metrics: RegistryMetrics,
    config: EventualConfig,
    /// A write could not be gossiped, or a peer came up: run a round early.
    round_wanted: AtomicBool,
    /// Peers' deltas the gossip callback could not apply at once (state busy), bounded by
    /// [`MAX_DEFERRED_DELTAS`]; the anti-entropy task applies them.
    deferred: mpsc::Sender<Delta>,
}

/// One node's eventual tier. Cheap to clone.
#[derive(Clone)]
pub struct EventualTier {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for EventualTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventualTier").field("local", &self.shared.local).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn gossip_id(name: &str, origin: &NodeId) -> u64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    origin.name.hash(&mut hasher);
    hasher.finish()
}

fn map_error(error: EventualError) -> RegistryError {
    match error {
        EventualError::AlreadyRegistered { pid } => RegistryError::AlreadyRegistered { tier: Tier::Eventual, pid },
        EventualError::NotRegistered => RegistryError::NotRegistered { tier: Tier::Eventual },
        EventualError::TooManyNames { max } => RegistryError::TooManyNames { tier: Tier::Eventual, max },
        EventualError::PidNotOnOrigin { pid, .. } => RegistryError::NotHosted { pid },
        other => RegistryError::InvalidName { reason: other.to_string() },
    }
}

impl EventualTier {
    /// Starts the tier: registers its gossip channel with `membership`, takes the transport's
    /// `registry` class (one consumer per node) and spawns the anti-entropy task.
    pub fn start(
        host: Arc<dyn ProcessHost>,
        membership: Membership,
        transport: Transport,
        metrics: RegistryMetrics,
        config: EventualConfig,
    ) -> Result<Self, RegistryError> {
        let local = host.node().clone();
        let inbound = transport
            .subscribe(Class::Registry)
            .ok_or(RegistryError::Unavailable { reason: "the registry class already has a consumer".into() })?;
        let (deferred_tx, deferred_rx) = mpsc::channel(MAX_DEFERRED_DELTAS);
        let shared = Arc::new(Shared {
            local: local.clone(),
            inner: Mutex::new(Inner {
                state: EventualState::with_limits(local, config.limits),
                locals: Locals::default(),
                peer_acked: HashMap::new(),
                last_answered: HashMap::new(),
                next_pull: 1,
                visible: 0,
            }),
            host,
            membership: membership.clone(),
            transport,
            metrics,
            config,
            round_wanted: AtomicBool::new(true),
            deferred: deferred_tx,
        });
        membership
            .register_channel(CHANNEL_REGISTRY, Arc::new(Channel(Arc::downgrade(&shared))))
            .map_err(|error| RegistryError::Unavailable { reason: error.to_string() })?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(shared.clone(), inbound, deferred_rx, stop_rx));
        Ok(Self { shared, stop, task: Arc::new(Mutex::new(Some(task))) })
    }

    /// Registers local process `pid` under `name`. Refused when another process visibly owns the
    /// name (`AlreadyRegistered`), when `pid` is not a live process of this node (`NotHosted`),
    /// or beyond the bounds. `sink` is how the process is told if a concurrent registration
    /// elsewhere wins the name later.
    pub fn register(&self, name: &str, pid: &Pid, priority: u8, sink: Option<RevokeSink>) -> Result<(), RegistryError> {
        let shared = &self.shared;
        if pid.node != shared.local || !shared.host.is_hosted(pid) {
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        let mut effects = Effects::default();
        {
            let mut inner = lock(&shared.inner);
            if let Some(owner) = inner.state.winner(name)
                && owner.pid != *pid
            {
                return Err(RegistryError::AlreadyRegistered { tier: Tier::Eventual, pid: owner.pid.clone() });
            }
            let held = inner.locals.by_pid.get(pid).map_or(0, Vec::len);
            let again = inner.locals.by_name.get(name).is_some_and(|reg| reg.pid == *pid);
            if held >= MAX_NAMES_PER_PID && !again {
                return Err(RegistryError::TooManyNames { tier: Tier::Eventual, max: MAX_NAMES_PER_PID });
            }
            let before = inner.state.winner(name).is_some();
            let delta = inner.state.register(name, pid.clone(), priority).map_err(map_error)?;
            let after = inner.state.winner(name).is_some();
            inner.visible = inner.visible + usize::from(after) - usize::from(before);
            inner.locals.insert(name, pid, sink);
            effects.deltas.push(delta);
        }
        shared.apply_effects(effects);
        // The process may have exited between the check and the write; its exit hook then ran
        // before the name existed, so take it back now (SPEC 7: removed when the process exits).
        if !shared.host.is_hosted(pid) {
            let _ = self.unregister(name, Some(pid));
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        shared.publish_gauges();
        Ok(())
    }

    /// Removes this node's registration of `name` (held by `pid` when given); returns its pid.
    pub fn unregister(&self, name: &str, pid: Option<&Pid>) -> Result<Pid, RegistryError> {
        let shared = &self.shared;
        let mut effects = Effects::default();
        let owner = {
            let mut inner = lock(&shared.inner);
            match inner.locals.by_name.get(name) {
                Some(reg) if pid.is_none_or(|p| *p == reg.pid) => {}
                _ => return Err(RegistryError::NotRegistered { tier: Tier::Eventual }),
            }
            let reg = inner.locals.remove(name).map(|reg| reg.pid);
            shared.local_unregister(&mut inner, name, &mut effects);
            reg
        };
        shared.apply_effects(effects);
        shared.publish_gauges();
        owner.ok_or(RegistryError::NotRegistered { tier: Tier::Eventual })
    }

    /// Removes every name of `pid` (it exited). Called by the exit pipeline: quick, no I/O
    /// beyond handing deltas to the gossip queue.
    pub fn remove_pid(&self, pid: &Pid) -> usize {
        let shared = &self.shared;
        let mut effects = Effects::default();
        let removed = {
            let mut inner = lock(&shared.inner);
            let names = inner.locals.by_pid.remove(pid).unwrap_or_default();
            for name in &names {
                inner.locals.by_name.remove(name);
                shared.local_unregister(&mut inner, name, &mut effects);
            }
            names.len()
        };
        if removed > 0 {
            shared.apply_effects(effects);
            shared.publish_gauges();
        }
        removed
    }

    /// The visible owner of `name`.
    pub fn lookup(&self, name: &str) -> Option<Pid> {
        lock(&self.shared.inner).state.winner(name).map(|live| live.pid.clone())
    }

    /// Every name with a visible owner, in name order.
    pub fn list(&self) -> Vec<(String, Pid)> {
        let inner = lock(&self.shared.inner);
        inner.state.winners().map(|(name, live)| (name.to_owned(), live.pid.clone())).collect()
    }

    /// How many names have a visible owner.
    pub fn len(&self) -> usize {
        lock(&self.shared.inner).visible
    }

    /// Whether no name has a visible owner.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A summary for the admin API: names, tombstones, counters of the state.
    pub fn summary(&self) -> EventualSummary {
        let inner = lock(&self.shared.inner);
        let stats = inner.state.stats();
        EventualSummary {
            names: inner.visible,
            entries: inner.state.name_count(),
            tombstones: inner.state.tombstone_count(),
            local_registrations: inner.locals.by_name.len(),
            tombstones_collected: stats.tombstones_collected,
            tombstones_collected_early: stats.tombstones_collected_early,
        }
    }

    /// Follows a membership event: a departed node's names disappear; a node that comes back
    /// (renewed after a false suspicion, or new) gets an early anti-entropy round.
    pub fn member_event(&self, event: &MembershipEvent) {
        let shared = &self.shared;
        let id = &event.member().id;
        if id.name == shared.local.name {
            return;
        }
        let mut effects = Effects::default();
        {
            let mut inner = lock(&shared.inner);
            match event {
                MembershipEvent::Down(_) | MembershipEvent::Left(_) => {
                    let outcome = inner.state.depart(id);
                    inner.peer_acked.remove(&id.name);
                    shared.absorb_merge(&mut inner, outcome, &mut effects);
                }
                MembershipEvent::Up(_) => {
                    inner.state.readmit(id);
                    shared.round_wanted.store(true, Ordering::Relaxed);
                }
            }
        }
        shared.apply_effects(effects);
        shared.publish_gauges();
    }

    /// Stops the anti-entropy task (gossip stops with membership).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// What [`EventualTier::summary`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventualSummary {
    /// Names with a visible owner.
    pub names: usize,
    /// Names held with any entry (live or tombstone).
    pub entries: usize,
    /// Tombstones awaiting collection.
    pub tombstones: usize,
    /// Registrations of this node's processes.
    pub local_registrations: usize,
    /// Tombstones collected after every live node saw them.
    pub tombstones_collected: u64,
    /// Tombstones collected early because of the bound.
    pub tombstones_collected_early: u64,
}

impl Shared {
    /// Tombstones this node's registration of `name` (already removed from `locals`).
    fn local_unregister(&self, inner: &mut Inner, name: &str, effects: &mut Effects) {
        let before = inner.state.winner(name).is_some();
        match inner.state.unregister(name) {
            Ok(delta) => {
                let after = inner.state.winner(name).is_some();
                inner.visible = inner.visible + usize::from(after) - usize::from(before);
                effects.deltas.push(delta);
            }
            Err(error) => tracing::debug!(%error, name, "eventual: nothing to unregister"),
        }
    }

    fn absorb_apply(&self, inner: &mut Inner, outcome: ApplyOutcome, effects: &mut Effects) {
        self.absorb_merge(
            inner,
            MergeOutcome {
                changed: outcome.changed,
                winner_changes: outcome.winner_changed.into_iter().collect(),
                lost: outcome.lost.into_iter().collect(),
                refused: 0,
            },
            effects,
        );
    }

    /// Counts winner changes and turns lost local registrations into notices and tombstones.
    fn absorb_merge(&self, inner: &mut Inner, outcome: MergeOutcome, effects: &mut Effects) {
        for WinnerChange { old, new, .. } in &outcome.winner_changes {
            match (old, new) {
                (Some(a), Some(b)) if a.pid != b.pid => self.metrics.conflicts.inc(),
                (None, Some(_)) => inner.visible += 1,
                (Some(_), None) => inner.visible = inner.visible.saturating_sub(1),
                _ => {}
            }
        }
        if outcome.refused > 0 {
            self.metrics.refused.with_label_values(&["invalid_dot"]).inc_by(outcome.refused as u64);
        }
        for (name, pid) in outcome.lost {
            let holds = inner.locals.by_name.get(name.as_str()).is_some_and(|reg| reg.pid == pid);
            if !holds {
                continue;
            }
            let reg = inner.locals.remove(&name);
            let winner = inner.state.winner(&name).map(|live| live.pid.clone());
            self.metrics.revocations.inc();
            tracing::info!(name = %name, loser = %pid, winner = ?winner.as_ref().map(ToString::to_string), "eventual: NameRevoked");
            if let (Some(LocalReg { sink: Some(sink), .. }), Some(winner)) = (reg, winner) {
                effects.notices.push((sink, NameRevoked { name: name.clone(), pid, winner }));
            }
            self.local_unregister(inner, &name, effects);
        }
    }

    /// Gossips deltas and delivers notices; never called with the lock held.
    fn apply_effects(&self, effects: Effects) {
        for delta in effects.deltas {
            if !self.config.gossip_deltas {
                self.metrics.delta("not_gossiped");
                continue;
            }
            let payload = wire::encode(&GossipDelta::from_delta(&delta));
            let id = gossip_id(&delta.name, &delta.dot.origin);
            match self.membership.broadcast(CHANNEL_REGISTRY, id, delta.dot.counter, &payload) {
                Ok(()) => {
                    self.metrics.delta("sent");
                    self.metrics.bytes("out", "gossip", payload.len());
                }
                Err(error) => {
                    tracing::trace!(%error, "eventual: delta left to anti-entropy");
                    self.metrics.delta("not_gossiped");
                    self.round_wanted.store(true, Ordering::Relaxed);
                }
            }
        }
        for (sink, notice) in effects.notices {
            if !sink(notice) {
                tracing::debug!("eventual: the revoked process is gone");
            }
        }
    }

    fn publish_gauges(&self) {
        let (visible, tombstones) = {
            let inner = lock(&self.inner);
            (inner.visible, inner.state.tombstone_count())
        };
        self.metrics.set_names(Tier::Eventual, visible);
        self.metrics.tombstones.set(i64::try_from(tombstones).unwrap_or(i64::MAX));
    }

    /// A peer's gossip delta; true when it changed this node's state.
    fn receive_gossip(&self, payload: &[u8]) -> bool {
        self.metrics.bytes("in", "gossip", payload.len());
        let delta = match wire::decode_gossip(payload, self.membership.max_broadcast_payload()) {
            Ok(delta) => delta.into_delta(),
            Err(error) => {
                self.metrics.refuse(error.as_str());
                return false;
            }
        };
        // Never make the membership task wait behind a long merge (it must keep answering probes):
        // when the state is busy, the anti-entropy task applies the delta instead, and this copy
        // stops spreading here (anti-entropy carries it wherever else it is missing).
        let mut inner = match self.inner.try_lock() {
            Ok(inner) => inner,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if self.deferred.try_send(delta).is_err() {
                    self.metrics.refuse("busy");
                }
                return false;
            }
        };
        let (changed, effects) = self.apply_delta(&mut inner, &delta);
        drop(inner);
        self.metrics.delta(if changed { "received_new" } else { "received_stale" });
        if changed {
            self.apply_effects(effects);
            self.publish_gauges();
        }
        changed
    }

    /// Applies a peer's delta under the lock; whether it changed the state, and the effects.
    fn apply_delta(&self, inner: &mut Inner, delta: &Delta) -> (bool, Effects) {
        let mut effects = Effects::default();
        let changed = {
            match inner.state.apply(delta) {
                Ok(outcome) if outcome.changed => {
                    self.absorb_apply(inner, outcome, &mut effects);
                    true
                }
                Ok(_) => false,
                Err(_) => {
                    self.metrics.refuse("invalid_dot");
                    false
                }
            }
        };
        (changed, effects)
    }

    /// A delta the gossip callback deferred because the state was busy.
    fn apply_deferred(&self, delta: Delta) {
        let (changed, effects) = {
            let mut inner = lock(&self.inner);
            self.apply_delta(&mut inner, &delta)
        };
        self.metrics.delta(if changed { "received_new" } else { "received_stale" });
        if changed {
            self.apply_effects(effects);
            self.publish_gauges();
        }
    }

    /// The live peers in this node's membership view (alive or suspect).
    fn live_peers(&self) -> Vec<NodeId> {
        self.membership.live_peers()
    }

    fn send(&self, peer: &NodeId, kind: u8, body: Vec<u8>) {
        let len = body.len();
        match self.transport.send(&peer.name, Class::Registry, kind, Bytes::from(body)) {
            Ok(_) => self.metrics.bytes("out", "anti_entropy", len),
            Err(error) => tracing::debug!(peer = %peer, %error, "eventual: anti-entropy frame not sent"),
        }
    }

    /// One anti-entropy round: our digest to every live peer, then tombstone collection.
    fn round(&self) {
        let peers = self.live_peers();
        let msg = {
            let inner = lock(&self.inner);
            let acked: Vec<(NodeId, u64)> = inner.state.version_vector().iter().map(|(o, c)| (o.clone(), c)).collect();
            DigestMsg { v: WIRE_VERSION, digest: inner.state.digest().to_vec(), acked }
        };
        let body = wire::encode(&msg);
        for peer in &peers {
            self.send(peer, KIND_DIGEST, body.clone());
        }
        self.collect_tombstones(&peers);
    }

    /// Collects the tombstones every live node has acknowledged.
    fn collect_tombstones(&self, peers: &[NodeId]) {
        let mut inner = lock(&self.inner);
        if inner.state.tombstone_count() == 0 {
            return;
        }
        let mut seen = inner.state.version_vector().clone();
        for peer in peers {
            match inner.peer_acked.get(&peer.name) {
                Some((id, acked)) if id == peer => seen = seen.meet(acked),
                // A live peer we have no acknowledgement from yet: collect nothing.
                _ => return,
            }
        }
        let before = inner.state.stats();
        inner.state.collect_tombstones(&seen);
        let after = inner.state.stats();
        self.metrics
            .tombstones_collected
            .with_label_values(&["normal"])
            .inc_by(after.tombstones_collected - before.tombstones_collected);
        drop(inner);
        self.publish_gauges();
    }

    fn rate_limited(&self, inner: &mut Inner, peer: &str, now: Instant) -> bool {
        if let Some(last) = inner.last_answered.get(peer)
            && now.saturating_duration_since(*last) < self.config.min_exchange_interval
        {
            return true;
        }
        inner.last_answered.insert(peer.to_owned(), now);
        false
    }

    fn on_frame(&self, frame: Inbound) {
        self.metrics.bytes("in", "anti_entropy", frame.payload.len());
        let result = match frame.kind {
            KIND_DIGEST => wire::decode_digest(&frame.payload).map(|msg| self.on_digest(&frame.from, msg)),
            KIND_PULL => wire::decode_pull(&frame.payload).map(|msg| self.on_pull(&frame.from, msg)),
            KIND_SHARDS => wire::decode_shards(&frame.payload).map(|msg| self.on_shards(&frame.from, msg)),
            _ => {
                self.metrics.refuse("unknown_kind");
                return;
            }
        };
        if let Err(error) = result {
            let error: WireError = error;
            self.metrics.refuse(error.as_str());
        }
    }

    fn on_digest(&self, from: &NodeId, msg: DigestMsg) {
        let mut theirs = [0u64; SHARD_COUNT];
        theirs.copy_from_slice(&msg.digest);
        let (ours, pull) = {
            let mut inner = lock(&self.inner);
            if inner.state.departed().any(|d| d == from) {
                self.metrics.refuse("departed_peer");
                return;
            }
            if self.rate_limited(&mut inner, &from.name, Instant::now()) {
                self.metrics.refuse("rate_limited");
                return;
            }
            let mut acked = VersionVector::new();
            for (origin, counter) in &msg.acked {
                acked.observe(origin, *counter);
            }
            let differing = differing_shards(&inner.state.digest(), &theirs);
            if differing.is_empty() {
                // Equal content: this node holds everything the peer acknowledges.
                inner.state.adopt_peer_clock(&theirs, &acked);
                inner.peer_acked.insert(from.name.clone(), (from.clone(), acked));
                self.metrics.ae_rounds.with_label_values(&["matched"]).inc();
                return;
            }
            inner.peer_acked.insert(from.name.clone(), (from.clone(), acked));
            self.metrics.ae_rounds.with_label_values(&["repaired"]).inc();
            let id = inner.next_pull;
            inner.next_pull += 1;
            let pull = PullMsg { v: WIRE_VERSION, id, shards: differing.iter().map(|&s| s as u16).collect() };
            (differing, pull)
        };
        let (counter, ours) = self.shard_states(ours.into_iter());
        self.send_shards(from, None, counter, ours);
        self.send(from, KIND_PULL, wire::encode(&pull));
    }

    fn on_pull(&self, from: &NodeId, msg: PullMsg) {
        let (counter, shards) = self.shard_states(msg.shards.iter().map(|&shard| usize::from(shard)));
        self.send_shards(from, Some(msg.id), counter, shards);
    }

    /// Copies of these shards, one lock hold per shard (shards are independent, so copies taken
    /// a moment apart are as good as one cut: the receiver merges each on its own).
    /// Returns this node's own write counter, read first, with them.
    fn shard_states(&self, shards: impl Iterator<Item = usize>) -> (u64, Vec<ShardState>) {
        let counter = lock(&self.inner).state.version_vector().get(&self.local);
        (counter, shards.filter_map(|shard| lock(&self.inner).state.shard_state(shard).ok()).collect())
    }

    /// Sends shards in frames of about [`MAX_SHARDS_FRAME_BYTES`]; the last frame says so.
    fn send_shards(&self, to: &NodeId, pull: Option<u64>, origin_counter: u64, shards: Vec<ShardState>) {
        let mut batch: Vec<ShardState> = Vec::new();
        let mut batch_bytes = 0;
        let total = shards.len();
        for (i, shard) in shards.into_iter().enumerate() {
            // A cheap size estimate: names and node names dominate; 48 bytes covers the rest.
            batch_bytes += shard.entries.iter().map(|d| d.name.len() + d.dot.origin.name.len() + 48).sum::<usize>();
            batch.push(shard);
            let last = i + 1 == total;
            if batch_bytes >= MAX_SHARDS_FRAME_BYTES || last {
                let msg = ShardsMsg { v: WIRE_VERSION, pull, last, origin_counter, shards: std::mem::take(&mut batch) };
                self.send(to, KIND_SHARDS, wire::encode(&msg));
                batch_bytes = 0;
            }
        }
        if total == 0 && pull.is_some() {
            self.send(
                to,
                KIND_SHARDS,
                wire::encode(&ShardsMsg { v: WIRE_VERSION, pull, last: true, origin_counter, shards: vec![] }),
            );
        }
    }

    fn on_shards(&self, from: &NodeId, msg: ShardsMsg) {
        let mut effects = Effects::default();
        if lock(&self.inner).state.departed().any(|d| d == from) {
            self.metrics.refuse("departed_peer");
            return;
        }
        // One lock hold per shard (about 1,500 dots at 100k names), so gossip and callers are
        // never held up for a whole frame's merge.
        for shard in &msg.shards {
            {
                let mut inner = lock(&self.inner);
                match inner.state.merge_shard(shard) {
                    Ok(outcome) => {
                        // The sender is the origin of its own entries: what it no longer holds of
                        // its own was superseded (and collected) there.
                        let pruned = inner.state.prune_superseded_by_origin(shard, from, msg.origin_counter);
                        if outcome.changed || pruned.changed {
                            self.metrics.shards_repaired.inc();
                        }
                        self.absorb_merge(&mut inner, outcome, &mut effects);
                        self.absorb_merge(&mut inner, pruned, &mut effects);
                    }
                    Err(error) => {
                        tracing::debug!(peer = %from, %error, "eventual: shard refused");
                        self.metrics.refuse("invalid_dot");
                    }
                }
            }
            self.apply_effects(std::mem::take(&mut effects));
        }
        self.publish_gauges();
    }
}

/// The gossip channel handed to membership; weak, so a stopped tier does not linger.
struct Channel(std::sync::Weak<Shared>);

impl GossipChannel for Channel {
    fn receive(&self, payload: &[u8]) -> bool {
        self.0.upgrade().is_some_and(|shared| shared.receive_gossip(payload))
    }
}

async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut deferred: mpsc::Receiver<Delta>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LOOP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_round = Instant::now();
    let mut last_round = Instant::now() - shared.config.min_exchange_interval;
    let mut seen_peers: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            frame = inbound.recv() => match frame {
                Some(frame) => shared.on_frame(frame),
                None => return,
            },
            Some(delta) = deferred.recv() => shared.apply_deferred(delta),
            _ = tick.tick() => {
                let now = Instant::now();
                let early = shared.round_wanted.load(Ordering::Relaxed)
                    && now.saturating_duration_since(last_round) >= shared.config.min_exchange_interval;
                if now >= next_round || early {
                    shared.round_wanted.store(false, Ordering::Relaxed);
                    shared.round();
                    last_round = now;
                    next_round = now + shared.config.anti_entropy_interval;
                    // Forget rate-limit entries of peers that are gone (bounded by membership).
                    seen_peers.clear();
                    seen_peers.extend(shared.live_peers().into_iter().map(|p| p.name));
                    lock(&shared.inner).last_answered.retain(|peer, _| seen_peers.contains(peer));
                }
            }
        }
    }
}
