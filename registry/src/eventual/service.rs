//! The eventual tier's I/O shell: [`EventualTier`] wraps one node's [`EventualDriver`] (the
//! protocol without I/O, see `driver`) and does what the driver cannot: it reads the clock, takes
//! frames off the transport's `registry` class, receives gossip from membership, hands deltas to
//! the gossip layer, sends anti-entropy frames, tells processes that lost a name, and publishes
//! metrics. Every protocol decision (what to gossip, when to run a round, what to push, pull and
//! answer, when to collect tombstones, which registration lost) is the driver's.
//!
//! ```text
//!  register/unregister/exit ──► lock ─ driver.handle_* ─ drain ─ unlock ──► perform outputs
//!  peer delta (membership task) ─ decode ─ try_lock? driver.handle_delta : deferred queue
//!  transport frame ─ Frame::decode ─► driver.handle_frame (a shards frame: one lock hold per shard)
//!  tick (50 ms): poll_timeout passed? ─► membership.live_peers ─► handle_live_peers + handle_timeout
//!  outputs: Broadcast ─► Membership::broadcast (channel 1; refused: told to the driver next tick)
//!           Transmit  ─► Transport::send (shards copied one shard per lock hold, ShardFramer)
//!           Event::Revoked ─► the process's RevokeSink (a NameRevoked, once)
//!           DriverStats ─► Prometheus (differences), visible names and tombstones ─► gauges
//! ```
//!
//! Invariants:
//! - One mutex holds the driver and the revocation sinks; it is held for in-memory work only.
//!   Every input is followed, under the same hold, by draining all of the driver's outputs, so
//!   its queues are empty whenever the mutex is free; the outputs are performed after it is
//!   released, so no lock is ever held across a send, and the gossip callback (on the membership
//!   task) never waits on I/O or on the lock (busy: the delta is deferred, bounded by
//!   `MAX_DEFERRED_DELTAS`, then counted `busy`).
//! - The shell decodes and bounds every peer input (`wire`) before the driver sees it; decoding
//!   refusals and bytes are counted here, protocol refusals by the driver.
//! - A local process that loses its name gets its `NameRevoked` exactly once (the driver reports
//!   each loss once and has already unregistered the name).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_actors::{Pid, ProcessHost};
use cohort_cluster::membership::Membership;
use cohort_cluster::membership::channels::{CHANNEL_REGISTRY, GossipChannel};
use cohort_cluster::net::transport::{Inbound, Transport};
use cohort_cluster::queue::Class;
use cohort_cluster::{MembershipEvent, NodeId};
use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};

use super::crdt::Delta;
use super::driver::{
    Broadcast, DriverStats, Event, EventualConfig, EventualDriver, EventualSummary, MemberChange, Outgoing, Transmit,
};
use super::wire::{self, Frame, GossipDelta, KIND_DIGEST, KIND_PULL, KIND_SHARDS, ShardFramer, ShardsMsg};
use crate::metrics::RegistryMetrics;
use crate::{NameRevoked, RegistryError, Tier};

/// How a local process is told it lost its name: puts a [`NameRevoked`] into its mailbox
/// (bypassing the capacity bound: owed once per registration). False if the process is gone.
pub type RevokeSink = Arc<dyn Fn(NameRevoked) -> bool + Send + Sync>;

/// Most gossip deltas waiting for the anti-entropy task because the state was busy when they
/// arrived; beyond, they are dropped and counted (`busy`) and anti-entropy repairs them.
const MAX_DEFERRED_DELTAS: usize = 4096;

/// The longest the anti-entropy loop sleeps without looking at the driver's deadline: a guard,
/// since every input that can bring the deadline closer also wakes the loop (`Shared::wake`).
const MAX_LOOP_SLEEP: Duration = Duration::from_secs(1);

struct Inner {
    driver: EventualDriver,
    /// The sink of each local registration that gave one, by name. A subset of the driver's local
    /// registrations (removed with them), so bounded by them.
    sinks: HashMap<Box<str>, (Pid, RevokeSink)>,
    /// The driver's counters as last published.
    published: DriverStats,
    /// The gauges as last published (visible names, tombstones).
    published_gauges: Option<(usize, usize)>,
}

/// What the driver asked for, taken out under the lock and performed after it is released.
#[derive(Default)]
struct Outputs {
    broadcasts: Vec<Broadcast>,
    notices: Vec<(RevokeSink, NameRevoked)>,
    transmits: Vec<Transmit>,
}

struct Shared {
    local: NodeId,
    inner: Mutex<Inner>,
    host: Arc<dyn ProcessHost>,
    membership: Membership,
    transport: Transport,
    metrics: RegistryMetrics,
    /// Deltas the gossip layer refused since the last tick; told to the driver on the tick (the
    /// gossip callback must not wait for the lock to say so).
    broadcasts_refused: AtomicU64,
    /// Wakes the anti-entropy loop to look at the driver's deadline again: an idle node sleeps
    /// until its next round instead of polling on a fixed tick.
    wake: tokio::sync::Notify,
    /// Peers' deltas the gossip callback could not apply at once (state busy), bounded by
    /// [`MAX_DEFERRED_DELTAS`]; the anti-entropy task applies them.
    deferred: mpsc::Sender<Delta>,
    /// Names this node's processes lost in a merge, kept for the node's decision log until it
    /// takes them ([`EventualTier::take_revocations`]); bounded by [`MAX_KEPT_REVOCATIONS`], the
    /// oldest dropped and counted in `dropped_revocations`.
    revocations: Mutex<std::collections::VecDeque<Revocation>>,
    dropped_revocations: AtomicU64,
}

/// Revocations kept for [`EventualTier::take_revocations`] between two takes.
pub const MAX_KEPT_REVOCATIONS: usize = 256;

/// A name a local process lost to another owner when two registrations met in a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The name.
    pub name: String,
    /// The local process that held it and lost it.
    pub loser: Pid,
    /// The owner now visible, if known.
    pub winner: Option<Pid>,
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

impl EventualTier {
    /// The names local processes lost in merges since the last call (at most
    /// [`MAX_KEPT_REVOCATIONS`], oldest first), and how many older ones were dropped because no
    /// one took them in time.
    pub fn take_revocations(&self) -> (Vec<Revocation>, u64) {
        let taken: Vec<Revocation> = lock(&self.shared.revocations).drain(..).collect();
        (taken, self.shared.dropped_revocations.swap(0, Ordering::Relaxed))
    }

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
                driver: EventualDriver::new(local, config, Instant::now()),
                sinks: HashMap::new(),
                published: DriverStats::default(),
                published_gauges: None,
            }),
            host,
            membership: membership.clone(),
            transport,
            metrics,
            broadcasts_refused: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            deferred: deferred_tx,
            revocations: Mutex::new(std::collections::VecDeque::new()),
            dropped_revocations: AtomicU64::new(0),
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
        let now = Instant::now();
        shared.step(|inner| {
            inner.driver.handle_register(now, name, pid, priority)?;
            match sink {
                Some(sink) => inner.sinks.insert(name.into(), (pid.clone(), sink)),
                None => inner.sinks.remove(name),
            };
            Ok::<_, RegistryError>(())
        })?;
        // The process may have exited between the check and the write; its exit hook then ran
        // before the name existed, so take it back now (SPEC 7: removed when the process exits).
        if !shared.host.is_hosted(pid) {
            let _ = self.unregister(name, Some(pid));
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        Ok(())
    }

    /// Removes this node's registration of `name` (held by `pid` when given); returns its pid.
    pub fn unregister(&self, name: &str, pid: Option<&Pid>) -> Result<Pid, RegistryError> {
        let now = Instant::now();
        self.shared.step(|inner| {
            let holder = inner.driver.handle_unregister(now, name, pid)?;
            inner.sinks.remove(name);
            Ok(holder)
        })
    }

    /// Removes every name of `pid` (it exited). Called by the exit pipeline: quick, no I/O
    /// beyond handing deltas to the gossip queue.
    pub fn remove_pid(&self, pid: &Pid) -> usize {
        let now = Instant::now();
        self.shared.step(|inner| {
            let names = inner.driver.handle_process_exit(now, pid);
            for name in &names {
                inner.sinks.remove(name);
            }
            names.len()
        })
    }

    /// The visible owner of `name`.
    pub fn lookup(&self, name: &str) -> Option<Pid> {
        lock(&self.shared.inner).driver.lookup(name)
    }

    /// Every name with a visible owner, in name order.
    pub fn list(&self) -> Vec<(String, Pid)> {
        lock(&self.shared.inner).driver.list()
    }

    /// How many names have a visible owner.
    pub fn len(&self) -> usize {
        lock(&self.shared.inner).driver.visible_names()
    }

    /// Whether no name has a visible owner.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A summary for the admin API: names, tombstones, counters of the state.
    pub fn summary(&self) -> EventualSummary {
        lock(&self.shared.inner).driver.summary()
    }

    /// Follows a membership event: a departed node's names disappear; a node that comes back
    /// (renewed after a false suspicion, or new) gets an early anti-entropy round.
    pub fn member_event(&self, event: &MembershipEvent) {
        let change = match event {
            MembershipEvent::Down(member) | MembershipEvent::Left(member) => MemberChange::Down(member.id.clone()),
            MembershipEvent::Up(member) => MemberChange::Up(member.id.clone()),
        };
        let now = Instant::now();
        self.shared.step(|inner| inner.driver.handle_member_change(now, change));
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

fn bump(counter: &IntCounter, now: u64, was: u64) {
    if now > was {
        counter.inc_by(now - was);
    }
}

impl Shared {
    /// One input to the driver: `input` under the lock, then every output drained under the same
    /// hold, then performed after the lock is released.
    fn step<T>(&self, input: impl FnOnce(&mut Inner) -> T) -> T {
        let (value, outputs) = {
            let mut inner = lock(&self.inner);
            let value = input(&mut inner);
            (value, self.drain(&mut inner))
        };
        self.perform(outputs);
        // The input may have brought the next round closer (a round wanted early).
        self.wake.notify_one();
        value
    }

    /// Takes every output of the driver and publishes its counters; called with the lock held,
    /// after every input.
    fn drain(&self, inner: &mut Inner) -> Outputs {
        let mut outputs = Outputs::default();
        while let Some(broadcast) = inner.driver.poll_broadcast() {
            outputs.broadcasts.push(broadcast);
        }
        while let Some(transmit) = inner.driver.poll_transmit() {
            outputs.transmits.push(transmit);
        }
        while let Some(event) = inner.driver.poll_event() {
            match event {
                Event::Revoked { name, pid, winner } => {
                    tracing::info!(name = %name, loser = %pid, winner = ?winner.as_ref().map(ToString::to_string), "eventual: NameRevoked");
                    {
                        let mut kept = lock(&self.revocations);
                        if kept.len() >= MAX_KEPT_REVOCATIONS {
                            kept.pop_front();
                            self.dropped_revocations.fetch_add(1, Ordering::Relaxed);
                        }
                        kept.push_back(Revocation { name: name.clone(), loser: pid.clone(), winner: winner.clone() });
                    }
                    let sink = match inner.sinks.get(name.as_str()) {
                        Some((holder, _)) if *holder == pid => inner.sinks.remove(name.as_str()).map(|(_, sink)| sink),
                        _ => None,
                    };
                    if let (Some(sink), Some(winner)) = (sink, winner) {
                        outputs.notices.push((sink, NameRevoked { name, pid, winner }));
                    }
                }
            }
        }
        self.publish(inner);
        outputs
    }

    /// Publishes what the driver counted since the last call, and the gauges if they moved.
    fn publish(&self, inner: &mut Inner) {
        let now = inner.driver.stats();
        if now != inner.published {
            let was = std::mem::replace(&mut inner.published, now);
            let m = &self.metrics;
            bump(&m.deltas.with_label_values(&["received_new"]), now.deltas_received_new, was.deltas_received_new);
            bump(
                &m.deltas.with_label_values(&["received_stale"]),
                now.deltas_received_stale,
                was.deltas_received_stale,
            );
            bump(&m.deltas.with_label_values(&["not_gossiped"]), now.deltas_not_gossiped, was.deltas_not_gossiped);
            bump(&m.refused.with_label_values(&["invalid_dot"]), now.refused_invalid_dot, was.refused_invalid_dot);
            bump(&m.refused.with_label_values(&["rate_limited"]), now.refused_rate_limited, was.refused_rate_limited);
            bump(
                &m.refused.with_label_values(&["departed_peer"]),
                now.refused_departed_peer,
                was.refused_departed_peer,
            );
            bump(
                &m.refused.with_label_values(&["out_of_bounds"]),
                now.refused_out_of_bounds,
                was.refused_out_of_bounds,
            );
            bump(&m.refused.with_label_values(&["over_bound"]), now.refused_over_bound(), was.refused_over_bound());
            bump(&m.ae_rounds.with_label_values(&["matched"]), now.exchanges_matched, was.exchanges_matched);
            bump(&m.ae_rounds.with_label_values(&["repaired"]), now.exchanges_repaired, was.exchanges_repaired);
            bump(&m.shards_repaired, now.shards_repaired, was.shards_repaired);
            bump(&m.conflicts, now.conflicts, was.conflicts);
            bump(&m.revocations, now.revocations, was.revocations);
            bump(
                &m.tombstones_collected.with_label_values(&["normal"]),
                now.tombstones_collected,
                was.tombstones_collected,
            );
        }
        let gauges = (inner.driver.visible_names(), inner.driver.state().tombstone_count());
        if inner.published_gauges != Some(gauges) {
            inner.published_gauges = Some(gauges);
            self.metrics.set_names(Tier::Eventual, gauges.0);
            self.metrics.tombstones.set(i64::try_from(gauges.1).unwrap_or(i64::MAX));
        }
        debug_assert!(inner.sinks.len() <= inner.driver.summary().local_registrations);
    }

    /// Gossips deltas, delivers notices, sends anti-entropy frames; never called with the lock held.
    fn perform(&self, outputs: Outputs) {
        for Broadcast { id, version, delta } in outputs.broadcasts {
            let payload = wire::encode(&GossipDelta::from_delta(&delta));
            match self.membership.broadcast(CHANNEL_REGISTRY, id, version, &payload) {
                Ok(()) => {
                    self.metrics.delta("sent");
                    self.metrics.bytes("out", "gossip", payload.len());
                }
                Err(error) => {
                    tracing::trace!(%error, "eventual: delta left to anti-entropy");
                    self.broadcasts_refused.fetch_add(1, Ordering::Relaxed);
                    self.wake.notify_one();
                }
            }
        }
        for (sink, notice) in outputs.notices {
            if !sink(notice) {
                tracing::debug!("eventual: the revoked process is gone");
            }
        }
        for transmit in outputs.transmits {
            self.transmit(transmit);
        }
    }

    fn transmit(&self, Transmit { to, message }: Transmit) {
        match message {
            Outgoing::Digest(msg) => self.send(&to, KIND_DIGEST, wire::encode(&msg)),
            Outgoing::Pull(msg) => self.send(&to, KIND_PULL, wire::encode(&msg)),
            Outgoing::Shards { pull, origin_counter, shards } => {
                let mut framer = ShardFramer::new(pull, origin_counter, shards.len());
                for shard in shards {
                    // One lock hold per shard copy (shards are independent, so copies taken a
                    // moment apart are as good as one cut: the receiver merges each on its own).
                    let copy = lock(&self.inner).driver.shard_state(shard);
                    if let Some(frame) = copy.and_then(|copy| framer.push(copy)) {
                        self.send(&to, KIND_SHARDS, wire::encode(&frame));
                    }
                }
                if let Some(frame) = framer.finish() {
                    self.send(&to, KIND_SHARDS, wire::encode(&frame));
                }
            }
        }
    }

    fn send(&self, peer: &NodeId, kind: u8, body: Vec<u8>) {
        let len = body.len();
        match self.transport.send(&peer.name, Class::Registry, kind, Bytes::from(body)) {
            Ok(_) => self.metrics.bytes("out", "anti_entropy", len),
            Err(error) => {
                tracing::debug!(peer = %peer, %error, "eventual: anti-entropy frame not sent");
                lock(&self.inner).driver.handle_send_failed(Instant::now(), peer);
            }
        }
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
        let changed = inner.driver.handle_delta(Instant::now(), &delta);
        let outputs = self.drain(&mut inner);
        drop(inner);
        self.perform(outputs);
        changed
    }

    /// A delta the gossip callback deferred because the state was busy.
    fn apply_deferred(&self, delta: Delta) {
        let now = Instant::now();
        self.step(|inner| inner.driver.handle_delta(now, &delta));
    }

    fn on_frame(&self, frame: Inbound) {
        self.metrics.bytes("in", "anti_entropy", frame.payload.len());
        let decoded = match Frame::decode(frame.kind, &frame.payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.metrics.refuse(error.as_str());
                return;
            }
        };
        let now = Instant::now();
        match decoded {
            // One lock hold per shard (about 1,500 dots at 100k names), so gossip and callers are
            // never held up for a whole frame's merge; the driver merges each shard on its own.
            Frame::Shards(ShardsMsg { v, pull, last, origin_counter, shards }) if shards.len() > 1 => {
                for shard in shards {
                    let part = ShardsMsg { v, pull, last, origin_counter, shards: vec![shard] };
                    self.step(|inner| inner.driver.handle_frame(now, &frame.from, Frame::Shards(part)));
                }
            }
            decoded => self.step(|inner| inner.driver.handle_frame(now, &frame.from, decoded)),
        }
    }

    /// The loop's clock: tells the driver what the gossip layer refused, and runs a round when
    /// the driver's timeout has passed.
    fn on_tick(&self) {
        let now = Instant::now();
        let refused = self.broadcasts_refused.swap(0, Ordering::Relaxed);
        if refused > 0 {
            self.step(|inner| inner.driver.handle_broadcast_refused(now, refused));
        }
        let due = lock(&self.inner).driver.poll_timeout().is_some_and(|at| at <= now);
        if due {
            let peers = self.membership.live_peers();
            self.step(|inner| {
                inner.driver.handle_live_peers(now, peers);
                inner.driver.handle_timeout(now);
            });
        }
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
    loop {
        // Sleep until the driver's next round (or a refused broadcast to report): an idle node
        // wakes once per anti-entropy interval, not on a fixed tick.
        let now = Instant::now();
        let due = lock(&shared.inner).driver.poll_timeout().unwrap_or(now + MAX_LOOP_SLEEP);
        let pending = shared.broadcasts_refused.load(Ordering::Relaxed) > 0;
        let wait = if pending { Duration::ZERO } else { due.saturating_duration_since(now).min(MAX_LOOP_SLEEP) };
        tokio::select! {
            _ = stop.changed() => return,
            frame = inbound.recv() => match frame {
                Some(frame) => shared.on_frame(frame),
                None => return,
            },
            Some(delta) = deferred.recv() => shared.apply_deferred(delta),
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => shared.on_tick(),
        }
    }
}
