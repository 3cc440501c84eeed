//! The eventual tier's protocol without I/O: [`EventualDriver`] decides everything the node's
//! eventual service does (what to gossip, when to run a digest round, whom to send a digest, what
//! to push and pull, whether to answer, when to collect tombstones, which local registration lost
//! its name), and performs none of it. STYLE section 7, in the shape of quinn-proto's `Connection`.
//!
//! Role: the driver owns one node's [`EventualState`] (the CRDT, unchanged), the names this
//! node's processes registered, and the anti-entropy bookkeeping (the live peers, what each peer
//! acknowledged, the per-peer rate limit, the round schedule). The shell
//! ([`super::service::EventualTier`]) feeds it and carries out what it asks for.
//!
//! Inputs (`handle_*`, each with the time `now` from the caller; the driver never reads a clock):
//! - local writes: [`EventualDriver::handle_register`], [`EventualDriver::handle_unregister`],
//!   [`EventualDriver::handle_process_exit`];
//! - a peer's gossiped delta ([`EventualDriver::handle_delta`], which answers whether it was new,
//!   so the gossip layer keeps spreading it or stops) and a peer's anti-entropy frame
//!   ([`EventualDriver::handle_frame`]: digest, pull, shards), both decoded and bounded by `wire`;
//! - membership: [`EventualDriver::handle_member_change`] (down/left departs a node, up readmits
//!   it) and [`EventualDriver::handle_live_peers`] (the peers a round talks to);
//! - [`EventualDriver::handle_timeout`] once [`EventualDriver::poll_timeout`] has passed;
//! - what the shell could not do: [`EventualDriver::handle_broadcast_refused`] (the gossip queue
//!   refused a delta: anti-entropy must carry it, so a round is wanted early) and
//!   [`EventualDriver::handle_send_failed`] (counted; the next round repairs).
//!
//! Outputs, polled after every input: [`EventualDriver::poll_broadcast`] (deltas for the gossip
//! layer, [`Broadcast`]), [`EventualDriver::poll_transmit`] (anti-entropy messages for one peer,
//! [`Transmit`]; a shard answer names the shards and the shell copies them, see
//! [`EventualDriver::shard_frames`]), [`EventualDriver::poll_event`] (a local registration lost its
//! name: [`Event::Revoked`]) and [`EventualDriver::poll_timeout`] (when to call `handle_timeout`).
//!
//! ```text
//!  handle_register/unregister/exit ─► state ─► Broadcast (delta) ─► shell: membership.broadcast
//!  handle_delta ─► apply ─► new? (true: keep spreading) ─► lost local name? Event::Revoked + tombstone
//!  handle_timeout (round due) ─► Transmit Digest ─► every live peer; collect acknowledged tombstones
//!  handle_frame Digest ─► departed? rate-limited? equal: adopt clock : Transmit Shards + Transmit Pull
//!  handle_frame Pull ─► Transmit Shards (answer)     handle_frame Shards ─► merge + origin prune
//! ```
//!
//! Invariants:
//! - No I/O, no clock, no threads, no channels, no randomness. Every collection the driver walks
//!   is ordered (`BTreeMap`, sorted `Vec`), so the same inputs give the same outputs in the same
//!   order: a simulator replays a seed exactly. No decision here is random today (digests go to
//!   every live peer, the gossip fan-out is the membership layer's); a future jitter must come from
//!   a seed given to the constructor.
//! - Every queue and map is bounded by a named constant ([`MAX_PENDING_TRANSMITS`],
//!   [`MAX_PENDING_BROADCASTS`], [`MAX_PENDING_EVENTS`], [`MAX_PEERS`] for the acknowledgement and
//!   rate-limit tables; the local registrations exist only for names the state accepted, so they
//!   follow its [`Limits`]) and what a bound refuses is counted in [`DriverStats`]. A refused broadcast is
//!   left to anti-entropy (and asks for an early round), a refused transmit to the next round.
//! - Tombstones are collected only below what every live peer acknowledged in its last digest;
//!   with a live peer not heard from, or live peers beyond [`MAX_PEERS`], nothing is collected.
//! - A local registration that loses is reported once ([`Event::Revoked`]) and unregistered, so
//!   its tombstone spreads and one owner remains (as Erlang `global` does).
//! - Peer input is validated before it touches the state (shape checks here, dots in the state).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use cohort_actors::Pid;
use cohort_cluster::NodeId;

use super::crdt::{
    ApplyOutcome, Delta, EventualError, EventualState, Limits, MAX_KNOWN_ORIGINS, MAX_NAMES, MergeOutcome,
    VersionVector, WinnerChange,
};
use super::digest::{SHARD_COUNT, differing_shards};
use super::wire::{DigestMsg, Frame, PullMsg, ShardFramer, ShardsMsg, WIRE_VERSION};
use crate::local::MAX_NAMES_PER_PID;
use crate::{RegistryError, Tier};

/// Most live peers a round talks to and whose acknowledgement and rate limit are tracked. Matches
/// [`MAX_KNOWN_ORIGINS`]: a cluster has one origin per live node, and this tier targets far fewer
/// nodes. Peers beyond it are counted ([`DriverStats::peers_refused`]); while any is refused no
/// tombstone is collected (an untracked live peer may still hold the older entries).
pub const MAX_PEERS: usize = MAX_KNOWN_ORIGINS;

/// Most anti-entropy messages waiting for [`EventualDriver::poll_transmit`]. One input queues at
/// most one digest per live peer (a round) or two messages (an exchange), and the shell drains
/// after every input, so this is only reached by a shell that stopped polling; beyond it a message
/// is dropped and counted ([`DriverStats::transmits_dropped`]); the next round repairs.
pub const MAX_PENDING_TRANSMITS: usize = 4 * MAX_PEERS;

/// Most deltas waiting for [`EventualDriver::poll_broadcast`]. 4,096 is eight times the membership
/// layer's own gossip backlog, which refuses the rest anyway; beyond it a delta is counted as not
/// gossiped and an early round is wanted (anti-entropy carries it).
pub const MAX_PENDING_BROADCASTS: usize = 4_096;

/// Most events waiting for [`EventualDriver::poll_event`]. One input can revoke at most every local
/// registration, and the state holds at most [`MAX_NAMES`] names, so a shell that drains after
/// every input never reaches it; beyond it a notice is dropped and counted
/// ([`DriverStats::events_dropped`]) while the name is still unregistered.
pub const MAX_PENDING_EVENTS: usize = MAX_NAMES;

const _: () = assert!(MAX_PEERS <= MAX_PENDING_TRANSMITS, "a whole round of digests fits the transmit queue");
const _: () = assert!(MAX_NAMES_PER_PID <= MAX_PENDING_BROADCASTS, "one process exit fits the broadcast queue");

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

/// What [`EventualDriver::summary`] (and the admin API) reports.
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

/// A membership change the driver follows (this node's own view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// The node is reachable (joined, or renewed after a false suspicion): readmitted, and a
    /// round is wanted early so it catches up.
    Up(NodeId),
    /// The node was declared down or left: its entries are dropped.
    Down(NodeId),
}

/// A delta for the gossip layer (membership's custom broadcasts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    /// What the item is about: one (name, origin), so a newer write replaces an older one
    /// still waiting in the gossip queue.
    pub id: u64,
    /// The item's version (the origin's counter): larger replaces smaller.
    pub version: u64,
    /// The write.
    pub delta: Delta,
}

/// An anti-entropy message for one peer, on the transport's `registry` class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer.
    pub to: NodeId,
    /// What to send.
    pub message: Outgoing,
}

/// What a [`Transmit`] carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// This node's digest and acknowledgement (`wire::KIND_DIGEST`).
    Digest(DigestMsg),
    /// Ask the peer for these shards (`wire::KIND_PULL`).
    Pull(PullMsg),
    /// Send this node's copy of these shards (`wire::KIND_SHARDS`): unprompted beside a pull
    /// (`pull: None`) or answering one. The shell copies the shards when it sends (one short hold
    /// per shard, [`EventualDriver::shard_state`] with [`ShardFramer`]), or all at once with
    /// [`EventualDriver::shard_frames`].
    Shards {
        /// The pull answered, if any.
        pull: Option<u64>,
        /// This node's own write counter at the decision (at most its value when copied, which
        /// is all `prune_superseded_by_origin` needs on the other side).
        origin_counter: u64,
        /// Shard indices, ascending, each below [`SHARD_COUNT`].
        shards: Vec<usize>,
    },
}

/// Something the shell must tell the rest of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A local registration lost `name` to another owner in a merge; the driver unregistered it
    /// (its tombstone is queued for gossip). The process is owed one `NameRevoked` when `winner`
    /// is known.
    Revoked {
        /// The name lost.
        name: String,
        /// The local process that held it.
        pid: Pid,
        /// The owner now visible, if any.
        winner: Option<Pid>,
    },
}

/// What the driver did and refused, as counters since it was created. The shell publishes
/// differences to Prometheus; tests and the simulator read them directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Anti-entropy rounds run.
    pub rounds: u64,
    /// Digests queued for peers.
    pub digests_sent: u64,
    /// Pulls queued for peers.
    pub pulls_sent: u64,
    /// Pulls answered.
    pub pulls_answered: u64,
    /// Digest exchanges answered with equal content (`ae_rounds{matched}`).
    pub exchanges_matched: u64,
    /// Digest exchanges answered with differing shards (`ae_rounds{repaired}`).
    pub exchanges_repaired: u64,
    /// Shards received whose merge changed the state.
    pub shards_repaired: u64,
    /// Deltas queued for the gossip layer.
    pub deltas_queued: u64,
    /// Deltas left to anti-entropy: gossip off, the broadcast queue full, or refused by the shell.
    pub deltas_not_gossiped: u64,
    /// Of those, refused by [`MAX_PENDING_BROADCASTS`].
    pub broadcasts_dropped: u64,
    /// Peers' deltas that changed the state.
    pub deltas_received_new: u64,
    /// Peers' deltas that changed nothing (already known, or refused).
    pub deltas_received_stale: u64,
    /// Winner changes from one live owner to another.
    pub conflicts: u64,
    /// Local registrations that lost their name.
    pub revocations: u64,
    /// Tombstones collected after every live node acknowledged them.
    pub tombstones_collected: u64,
    /// Peer dots refused by the state's validation or bounds.
    pub refused_invalid_dot: u64,
    /// Digests refused by the per-peer rate limit.
    pub refused_rate_limited: u64,
    /// Frames refused because their sender departed. The node's shell feeds a shards frame one
    /// shard at a time (short lock holds), so there a refused shards frame counts once per shard.
    pub refused_departed_peer: u64,
    /// Typed frames refused for their shape (a digest of the wrong length).
    pub refused_out_of_bounds: u64,
    /// Messages refused by [`MAX_PENDING_TRANSMITS`].
    pub transmits_dropped: u64,
    /// Notices refused by [`MAX_PENDING_EVENTS`] (the name was still unregistered).
    pub events_dropped: u64,
    /// Peers not tracked because of [`MAX_PEERS`] (live peers, acknowledgements, rate limits).
    pub peers_refused: u64,
    /// Anti-entropy messages the shell reported as not sent.
    pub sends_failed: u64,
}

impl DriverStats {
    /// Everything refused by one of the driver's own bounds (the `over_bound` refusal reason).
    pub fn refused_over_bound(&self) -> u64 {
        self.transmits_dropped + self.events_dropped + self.peers_refused
    }
}

/// The names this node's processes hold, both ways (the two maps always agree).
#[derive(Debug, Default)]
struct Locals {
    by_name: BTreeMap<Box<str>, Pid>,
    by_pid: BTreeMap<Pid, Vec<Box<str>>>,
}

impl Locals {
    fn insert(&mut self, name: &str, pid: &Pid) {
        if let Some(previous) = self.by_name.insert(name.into(), pid.clone()) {
            self.forget_pid_name(&previous, name);
        }
        self.by_pid.entry(pid.clone()).or_default().push(name.into());
    }

    fn remove(&mut self, name: &str) -> Option<Pid> {
        let pid = self.by_name.remove(name)?;
        self.forget_pid_name(&pid, name);
        Some(pid)
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

/// The eventual tier's protocol for one node, without I/O (see the module header).
///
/// Two drivers, a lost gossip delta, and the anti-entropy round that repairs it, on a clock the
/// caller moves:
/// ```
/// use std::time::{Duration, Instant};
/// use cohort_actors::Pid;
/// use cohort_cluster::NodeId;
/// use cohort_registry::eventual::{EventualConfig, EventualDriver, Frame, Outgoing};
///
/// let (a, b) = (NodeId::new("a", 1), NodeId::new("b", 1));
/// let t0 = Instant::now();
/// let mut on_a = EventualDriver::new(a.clone(), EventualConfig::default(), t0);
/// let mut on_b = EventualDriver::new(b.clone(), EventualConfig::default(), t0);
/// on_a.handle_live_peers(t0, [b.clone()]);
/// on_a.handle_register(t0, "svc", &Pid::new(a.clone(), 1), 0).unwrap();
/// assert!(on_a.poll_broadcast().is_some()); // the delta; suppose gossip loses it
///
/// // The round is due at t0: a's digest goes to b; b pushes its side and pulls a's.
/// on_a.handle_timeout(t0);
/// let digest = on_a.poll_transmit().unwrap();
/// let Outgoing::Digest(msg) = digest.message else { unreachable!() };
/// on_b.handle_frame(t0, &a, Frame::Digest(msg));
/// while let Some(transmit) = on_b.poll_transmit() {
///     let frames = match transmit.message {
///         Outgoing::Pull(pull) => vec![Frame::Pull(pull)],
///         Outgoing::Shards { pull, origin_counter, shards } => {
///             on_b.shard_frames(pull, origin_counter, &shards).into_iter().map(Frame::Shards).collect()
///         }
///         Outgoing::Digest(_) => vec![],
///     };
///     for frame in frames {
///         on_a.handle_frame(t0, &b, frame);
///     }
/// }
/// // a answers the pull with its shard.
/// let answer = on_a.poll_transmit().unwrap();
/// let Outgoing::Shards { pull, origin_counter, shards } = answer.message else { unreachable!() };
/// for frame in on_a.shard_frames(pull, origin_counter, &shards) {
///     on_b.handle_frame(t0, &a, Frame::Shards(frame));
/// }
/// assert_eq!(on_b.lookup("svc"), Some(Pid::new(a, 1)));
/// assert_eq!(on_a.poll_timeout(), Some(t0 + Duration::from_secs(1)));
/// ```
#[derive(Debug)]
pub struct EventualDriver {
    local: NodeId,
    config: EventualConfig,
    state: EventualState,
    locals: Locals,
    /// Names with a live owner (kept from winner changes, not recounted).
    visible: usize,
    /// The live peers a round talks to, sorted by name, at most [`MAX_PEERS`].
    live_peers: Vec<NodeId>,
    /// Whether the last [`EventualDriver::handle_live_peers`] had to leave peers out.
    live_peers_truncated: bool,
    /// Per peer (by name): its identity and what it acknowledged in its last digest.
    peer_acked: BTreeMap<String, (NodeId, VersionVector)>,
    /// Per peer (by name): when this node last answered its digest (the rate limit).
    last_answered: BTreeMap<String, Instant>,
    next_pull: u64,
    next_round: Instant,
    last_round: Option<Instant>,
    /// A write could not be gossiped, or a peer came up: run a round early.
    round_wanted: bool,
    transmits: VecDeque<Transmit>,
    broadcasts: VecDeque<Broadcast>,
    events: VecDeque<Event>,
    stats: DriverStats,
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

/// The gossip item id of (name, origin): a newer write of the same origin for the same name
/// replaces an older one still queued. `DefaultHasher::new()` has fixed keys: the same on every
/// node and every run.
fn gossip_id(name: &str, origin: &NodeId) -> u64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    origin.name.hash(&mut hasher);
    hasher.finish()
}

impl EventualDriver {
    /// A driver for node `local` with an empty state. The first anti-entropy round is due at `now`.
    pub fn new(local: NodeId, config: EventualConfig, now: Instant) -> Self {
        Self {
            state: EventualState::with_limits(local.clone(), config.limits),
            local,
            config,
            locals: Locals::default(),
            visible: 0,
            live_peers: Vec::new(),
            live_peers_truncated: false,
            peer_acked: BTreeMap::new(),
            last_answered: BTreeMap::new(),
            next_pull: 1,
            next_round: now,
            last_round: None,
            round_wanted: true,
            transmits: VecDeque::new(),
            broadcasts: VecDeque::new(),
            events: VecDeque::new(),
            stats: DriverStats::default(),
        }
    }

    /// Departs every run the state holds entries of whose node runs a newer incarnation that
    /// this node knows of (itself, or a live peer): a superseded run is certainly gone, whether
    /// or not this node ever saw it go down. Membership reports the `Down` of a superseded run only
    /// to nodes that knew it; a node that learned of it only through a peer's names (it restarted
    /// meanwhile) would otherwise keep them for good while every peer ignores them. Found by the
    /// simulator (composed faults: 3 nodes seed 9, a node restarted 2 s after its crash pulled its
    /// own old run's names from a peer 40 ms before that peer departed the old run; 3 nodes seed 64
    /// and 5 nodes seed 431, the same with another node's old run, before or after the restarted
    /// node saw the new run come up).
    /// Whether a newer run of `origin`'s node is this node or a live peer.
    fn is_superseded(&self, origin: &NodeId) -> bool {
        if origin.name == self.local.name {
            return origin.incarnation < self.local.incarnation;
        }
        // `live_peers` is sorted by name (one run per name).
        self.live_peers
            .binary_search_by(|peer| peer.name.as_str().cmp(origin.name.as_str()))
            .is_ok_and(|i| origin.incarnation < self.live_peers[i].incarnation)
    }

    fn depart_superseded(&mut self) {
        let mut superseded: BTreeMap<String, u64> = BTreeMap::new();
        for origin in self.state.origin_ids() {
            if self.is_superseded(origin) {
                let entry = superseded.entry(origin.name.clone()).or_insert(origin.incarnation);
                *entry = (*entry).max(origin.incarnation);
            }
        }
        for (name, incarnation) in superseded {
            let outcome = self.state.depart(&NodeId::new(name, incarnation));
            self.absorb_merge(outcome);
        }
    }

    // ---- local writes ----

    /// Registers local process `pid` under `name`. Refused when another process visibly owns the
    /// name (`AlreadyRegistered`), when `pid` is not of this node (`NotHosted`; whether it is alive
    /// is the shell's question), when `pid` holds [`MAX_NAMES_PER_PID`] names, or beyond the
    /// state's bounds. Queues the delta for gossip.
    pub fn handle_register(&mut self, _now: Instant, name: &str, pid: &Pid, priority: u8) -> Result<(), RegistryError> {
        if pid.node != self.local {
            return Err(RegistryError::NotHosted { pid: pid.clone() });
        }
        let before = self.state.winner(name);
        if let Some(owner) = &before
            && owner.pid != *pid
        {
            return Err(RegistryError::AlreadyRegistered { tier: Tier::Eventual, pid: owner.pid.clone() });
        }
        let held = self.locals.by_pid.get(pid).map_or(0, Vec::len);
        let again = self.locals.by_name.get(name).is_some_and(|holder| holder == pid);
        if held >= MAX_NAMES_PER_PID && !again {
            return Err(RegistryError::TooManyNames { tier: Tier::Eventual, max: MAX_NAMES_PER_PID });
        }
        let delta = self.state.register(name, pid.clone(), priority).map_err(map_error)?;
        let after = self.state.winner(name).is_some();
        self.visible = self.visible + usize::from(after) - usize::from(before.is_some());
        self.locals.insert(name, pid);
        self.queue_broadcast(delta);
        Ok(())
    }

    /// Removes this node's registration of `name` (held by `pid` when given); returns its holder.
    pub fn handle_unregister(&mut self, _now: Instant, name: &str, pid: Option<&Pid>) -> Result<Pid, RegistryError> {
        match self.locals.by_name.get(name) {
            Some(holder) if pid.is_none_or(|p| p == holder) => {}
            _ => return Err(RegistryError::NotRegistered { tier: Tier::Eventual }),
        }
        let holder = self.locals.remove(name).ok_or(RegistryError::NotRegistered { tier: Tier::Eventual })?;
        self.local_unregister(name);
        Ok(holder)
    }

    /// Removes every name of local process `pid` (it exited); returns the names, in the order
    /// they were registered.
    pub fn handle_process_exit(&mut self, _now: Instant, pid: &Pid) -> Vec<Box<str>> {
        let names = self.locals.by_pid.remove(pid).unwrap_or_default();
        for name in &names {
            self.locals.by_name.remove(name);
            self.local_unregister(name);
        }
        names
    }

    // ---- peers ----

    /// A peer's gossiped delta (decoded by `wire::decode_gossip`). Returns whether it changed the
    /// state: only then does the gossip layer keep spreading it (a loop-free epidemic).
    pub fn handle_delta(&mut self, _now: Instant, delta: &Delta) -> bool {
        if self.is_superseded(&delta.dot.origin) {
            // A late write of a run that a newer one replaced (see `depart_superseded`).
            let outcome = self.state.depart(&delta.dot.origin);
            self.absorb_merge(outcome);
            self.stats.deltas_received_stale += 1;
            return false;
        }
        let changed = match self.state.apply(delta) {
            Ok(outcome) if outcome.changed => {
                self.absorb_apply(outcome);
                true
            }
            Ok(_) => false,
            Err(_) => {
                self.stats.refused_invalid_dot += 1;
                false
            }
        };
        if changed {
            self.stats.deltas_received_new += 1;
        } else {
            self.stats.deltas_received_stale += 1;
        }
        changed
    }

    /// A peer's anti-entropy frame, decoded by [`Frame::decode`]. `from` is the sender as the
    /// transport authenticated it.
    pub fn handle_frame(&mut self, now: Instant, from: &NodeId, frame: Frame) {
        match frame {
            Frame::Digest(msg) => self.on_digest(now, from, msg),
            Frame::Pull(msg) => self.on_pull(from, msg),
            Frame::Shards(msg) => {
                self.on_shards(from, msg);
                // Shards may carry a superseded run's names (see `depart_superseded`).
                self.depart_superseded();
            }
        }
    }

    /// A membership change in this node's view. Changes about this node itself are ignored.
    pub fn handle_member_change(&mut self, _now: Instant, change: MemberChange) {
        match change {
            MemberChange::Down(id) if id.name != self.local.name => {
                let outcome = self.state.depart(&id);
                self.peer_acked.remove(&id.name);
                self.absorb_merge(outcome);
            }
            MemberChange::Up(id) if id.name != self.local.name => {
                self.state.readmit(&id);
                self.round_wanted = true;
            }
            _ => {}
        }
    }

    /// The peers this node currently considers live (alive or suspect), for the next round: its
    /// digests and tombstone collection. This node, duplicates and peers beyond [`MAX_PEERS`]
    /// are left out (the last counted).
    pub fn handle_live_peers(&mut self, _now: Instant, peers: impl IntoIterator<Item = NodeId>) {
        let mut live: Vec<NodeId> = peers.into_iter().filter(|peer| peer.name != self.local.name).collect();
        live.sort_by(|a, b| a.name.cmp(&b.name).then(a.incarnation.cmp(&b.incarnation)));
        live.dedup_by(|a, b| a.name == b.name);
        self.live_peers_truncated = live.len() > MAX_PEERS;
        if self.live_peers_truncated {
            self.stats.peers_refused += (live.len() - MAX_PEERS) as u64;
            live.truncate(MAX_PEERS);
        }
        self.live_peers = live;
        self.depart_superseded();
    }

    /// Time passed. When a round is due (see [`EventualDriver::poll_timeout`]): a digest to every
    /// live peer, then tombstone collection, then the rate limits of peers no longer live are
    /// forgotten. Early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let early = self.round_wanted
            && self
                .last_round
                .is_none_or(|last| now.saturating_duration_since(last) >= self.config.min_exchange_interval);
        if now < self.next_round && !early {
            return;
        }
        self.round_wanted = false;
        self.stats.rounds += 1;
        let acked: Vec<(NodeId, u64)> = self.state.version_vector().iter().map(|(o, c)| (o.clone(), c)).collect();
        let msg = DigestMsg { v: WIRE_VERSION, digest: self.state.digest().to_vec(), acked };
        for peer in self.live_peers.clone() {
            self.stats.digests_sent += 1;
            self.queue_transmit(peer, Outgoing::Digest(msg.clone()));
        }
        self.collect_tombstones();
        self.last_round = Some(now);
        self.next_round = now + self.config.anti_entropy_interval;
        let live = &self.live_peers;
        self.last_answered.retain(|peer, _| live.iter().any(|p| p.name == *peer));
    }

    /// `count` deltas from [`EventualDriver::poll_broadcast`] were refused by the gossip layer:
    /// anti-entropy carries them, and a round is wanted early.
    pub fn handle_broadcast_refused(&mut self, _now: Instant, count: u64) {
        if count > 0 {
            self.stats.deltas_not_gossiped += count;
            self.round_wanted = true;
        }
    }

    /// A [`Transmit`] to `to` was not sent (no link, queue full). Counted only: the next round
    /// exchanges digests again and repairs what it should have carried.
    pub fn handle_send_failed(&mut self, _now: Instant, _to: &NodeId) {
        self.stats.sends_failed += 1;
    }

    // ---- outputs ----

    /// The next anti-entropy message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next delta to hand to the gossip layer.
    pub fn poll_broadcast(&mut self) -> Option<Broadcast> {
        self.broadcasts.pop_front()
    }

    /// The next notice for the rest of the node.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`EventualDriver::handle_timeout`] must be called next: the periodic round, or sooner
    /// an early round (a peer came up, a delta was not gossiped), never sooner than
    /// `min_exchange_interval` after the last round. Always `Some` (rounds never stop).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let early = self
            .round_wanted
            .then(|| self.last_round.map_or(self.next_round, |last| last + self.config.min_exchange_interval));
        Some(early.map_or(self.next_round, |early| early.min(self.next_round)))
    }

    /// This node's copy of shard `shard` for an [`Outgoing::Shards`] (`None` out of range).
    pub fn shard_state(&self, shard: usize) -> Option<super::ShardState> {
        self.state.shard_state(shard).ok()
    }

    /// The frames of an [`Outgoing::Shards`], copied now in one go (simulators and tests; the
    /// node's shell copies shard by shard to keep its lock holds short).
    pub fn shard_frames(&self, pull: Option<u64>, origin_counter: u64, shards: &[usize]) -> Vec<ShardsMsg> {
        let mut framer = ShardFramer::new(pull, origin_counter, shards.len());
        let mut frames: Vec<ShardsMsg> =
            shards.iter().filter_map(|&shard| self.shard_state(shard)).filter_map(|s| framer.push(s)).collect();
        frames.extend(framer.finish());
        frames
    }

    // ---- reads ----

    /// This node's identity.
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// The replicated state (read only: every change goes through the driver).
    pub fn state(&self) -> &EventualState {
        &self.state
    }

    /// The visible owner of `name`.
    pub fn lookup(&self, name: &str) -> Option<Pid> {
        self.state.winner(name).map(|live| live.pid)
    }

    /// Every name with a visible owner, in (shard, name) order.
    pub fn list(&self) -> Vec<(String, Pid)> {
        self.state.winners().map(|(name, live)| (name.to_owned(), live.pid)).collect()
    }

    /// How many names have a visible owner.
    pub fn visible_names(&self) -> usize {
        self.visible
    }

    /// Names, tombstones and collection counters.
    pub fn summary(&self) -> EventualSummary {
        let stats = self.state.stats();
        EventualSummary {
            names: self.visible,
            entries: self.state.name_count(),
            tombstones: self.state.tombstone_count(),
            local_registrations: self.locals.by_name.len(),
            tombstones_collected: stats.tombstones_collected,
            tombstones_collected_early: stats.tombstones_collected_early,
        }
    }

    /// The driver's counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    // ---- internals ----

    fn queue_transmit(&mut self, to: NodeId, message: Outgoing) {
        if self.transmits.len() >= MAX_PENDING_TRANSMITS {
            self.stats.transmits_dropped += 1;
            return;
        }
        self.transmits.push_back(Transmit { to, message });
    }

    fn queue_broadcast(&mut self, delta: Delta) {
        if !self.config.gossip_deltas {
            self.stats.deltas_not_gossiped += 1;
            return;
        }
        if self.broadcasts.len() >= MAX_PENDING_BROADCASTS {
            self.stats.broadcasts_dropped += 1;
            self.stats.deltas_not_gossiped += 1;
            self.round_wanted = true;
            return;
        }
        self.stats.deltas_queued += 1;
        let id = gossip_id(&delta.name, &delta.dot.origin);
        self.broadcasts.push_back(Broadcast { id, version: delta.dot.counter, delta });
    }

    fn queue_event(&mut self, event: Event) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    /// Tombstones this node's registration of `name` (already removed from `locals`).
    fn local_unregister(&mut self, name: &str) {
        let before = self.state.winner(name).is_some();
        match self.state.unregister(name) {
            Ok(delta) => {
                let after = self.state.winner(name).is_some();
                self.visible = self.visible + usize::from(after) - usize::from(before);
                self.queue_broadcast(delta);
            }
            Err(error) => tracing::debug!(%error, name, "eventual: nothing to unregister"),
        }
    }

    fn absorb_apply(&mut self, outcome: ApplyOutcome) {
        self.absorb_merge(MergeOutcome {
            changed: outcome.changed,
            winner_changes: outcome.winner_changed.into_iter().collect(),
            lost: outcome.lost.into_iter().collect(),
            refused: 0,
        });
    }

    /// Counts winner changes and turns lost local registrations into events and tombstones.
    fn absorb_merge(&mut self, outcome: MergeOutcome) {
        for WinnerChange { old, new, .. } in &outcome.winner_changes {
            match (old, new) {
                (Some(a), Some(b)) if a.pid != b.pid => self.stats.conflicts += 1,
                (None, Some(_)) => self.visible += 1,
                (Some(_), None) => self.visible = self.visible.saturating_sub(1),
                _ => {}
            }
        }
        self.stats.refused_invalid_dot += outcome.refused as u64;
        for (name, pid) in outcome.lost {
            if self.locals.by_name.get(name.as_str()) != Some(&pid) {
                continue;
            }
            self.locals.remove(&name);
            self.stats.revocations += 1;
            let winner = self.state.winner(&name).map(|live| live.pid);
            self.local_unregister(&name);
            self.queue_event(Event::Revoked { name, pid, winner });
        }
    }

    /// Collects the tombstones every live peer has acknowledged.
    fn collect_tombstones(&mut self) {
        if self.state.tombstone_count() == 0 || self.live_peers_truncated {
            return;
        }
        let mut seen = self.state.version_vector().clone();
        for peer in &self.live_peers {
            match self.peer_acked.get(&peer.name) {
                Some((id, acked)) if id == peer => seen = seen.meet(acked),
                // A live peer we have no acknowledgement from yet: collect nothing.
                _ => return,
            }
        }
        self.stats.tombstones_collected += self.state.collect_tombstones(&seen) as u64;
    }

    /// Records `from`'s answer time unless it was answered within `min_exchange_interval`;
    /// false when the exchange must be refused (rate limit, or the table is full).
    fn admit_exchange(&mut self, from: &str, now: Instant) -> bool {
        let known = self.last_answered.len();
        match self.last_answered.get_mut(from) {
            Some(last) if now.saturating_duration_since(*last) < self.config.min_exchange_interval => {
                self.stats.refused_rate_limited += 1;
                false
            }
            Some(last) => {
                *last = now;
                true
            }
            None if known >= MAX_PEERS => {
                self.stats.peers_refused += 1;
                false
            }
            None => {
                self.last_answered.insert(from.to_owned(), now);
                true
            }
        }
    }

    fn record_acked(&mut self, from: &NodeId, acked: VersionVector) {
        if self.peer_acked.len() >= MAX_PEERS && !self.peer_acked.contains_key(&from.name) {
            // Collection then waits for this peer (if live): conservative.
            self.stats.peers_refused += 1;
            return;
        }
        self.peer_acked.insert(from.name.clone(), (from.clone(), acked));
    }

    /// Whether `from` itself departed (its own marker: the exact identity, as the service has
    /// always compared it).
    fn is_departed_peer(&self, from: &NodeId) -> bool {
        self.state.departed().any(|departed| departed == from)
    }

    fn on_digest(&mut self, now: Instant, from: &NodeId, msg: DigestMsg) {
        let Ok(theirs) = <[u64; SHARD_COUNT]>::try_from(msg.digest.as_slice()) else {
            self.stats.refused_out_of_bounds += 1;
            return;
        };
        if self.is_departed_peer(from) {
            self.stats.refused_departed_peer += 1;
            return;
        }
        if !self.admit_exchange(&from.name, now) {
            return;
        }
        let mut acked = VersionVector::new();
        for (origin, counter) in &msg.acked {
            acked.observe(origin, *counter);
        }
        let differing = differing_shards(&self.state.digest(), &theirs);
        if differing.is_empty() {
            // Equal content: this node holds everything the peer acknowledges.
            self.state.adopt_peer_clock(&theirs, &acked);
            self.record_acked(from, acked);
            self.stats.exchanges_matched += 1;
            return;
        }
        self.record_acked(from, acked);
        self.stats.exchanges_repaired += 1;
        let id = self.next_pull;
        self.next_pull += 1;
        let origin_counter = self.state.version_vector().get(&self.local);
        let pull = PullMsg { v: WIRE_VERSION, id, shards: differing.iter().map(|&s| s as u16).collect() };
        self.queue_transmit(from.clone(), Outgoing::Shards { pull: None, origin_counter, shards: differing });
        self.stats.pulls_sent += 1;
        self.queue_transmit(from.clone(), Outgoing::Pull(pull));
    }

    fn on_pull(&mut self, from: &NodeId, msg: PullMsg) {
        let shards: Vec<usize> =
            msg.shards.iter().map(|&shard| usize::from(shard)).filter(|&shard| shard < SHARD_COUNT).collect();
        let origin_counter = self.state.version_vector().get(&self.local);
        self.stats.pulls_answered += 1;
        self.queue_transmit(from.clone(), Outgoing::Shards { pull: Some(msg.id), origin_counter, shards });
    }

    fn on_shards(&mut self, from: &NodeId, msg: ShardsMsg) {
        if self.is_departed_peer(from) {
            self.stats.refused_departed_peer += 1;
            return;
        }
        for shard in &msg.shards {
            match self.state.merge_shard(shard) {
                Ok(outcome) => {
                    // The sender is the origin of its own entries: what it no longer holds of
                    // its own was superseded (and collected) there.
                    let pruned = self.state.prune_superseded_by_origin(shard, from, msg.origin_counter);
                    if outcome.changed || pruned.changed {
                        self.stats.shards_repaired += 1;
                    }
                    self.absorb_merge(outcome);
                    self.absorb_merge(pruned);
                }
                Err(error) => {
                    tracing::debug!(peer = %from, %error, "eventual: shard refused");
                    self.stats.refused_invalid_dot += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Drivers against each other on a fake clock: every output is moved by hand into the other
    //! drivers' inputs, through the wire encoding, in a fixed order.

    use std::collections::BTreeSet;

    use super::*;
    use crate::eventual::wire::{self, GossipDelta, KIND_DIGEST};

    const MS: Duration = Duration::from_millis(1);

    fn id(name: &str) -> NodeId {
        NodeId::new(name, 1)
    }

    /// splitmix64: the tests' own seeded randomness (the driver has none).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A few drivers on a hand-driven network with a fake clock.
    struct Net {
        t0: Instant,
        now: Instant,
        drivers: Vec<EventualDriver>,
        /// Gossip is lost (every broadcast is dropped).
        lose_gossip: bool,
        /// Anti-entropy frames from these nodes (by index) are lost.
        mute: BTreeSet<usize>,
        /// Every output moved or dropped, in order, for the determinism test.
        trace: Vec<String>,
        /// Every event, with the index of the driver that emitted it.
        events: Vec<(usize, Event)>,
    }

    impl Net {
        fn new(names: &[&str], config: EventualConfig) -> Self {
            let t0 = Instant::now();
            let mut drivers: Vec<EventualDriver> =
                names.iter().map(|name| EventualDriver::new(id(name), config.clone(), t0)).collect();
            for driver in &mut drivers {
                driver.handle_live_peers(t0, names.iter().map(|name| id(name)));
            }
            let mut net = Self {
                t0,
                now: t0,
                drivers,
                lose_gossip: false,
                mute: BTreeSet::new(),
                trace: Vec::new(),
                events: Vec::new(),
            };
            // The first round is due at once; run it so tests start from a settled cluster.
            net.advance_to(t0);
            net
        }

        fn index(&self, node: &NodeId) -> usize {
            self.drivers.iter().position(|d| d.local() == node).expect("a known node")
        }

        /// Moves outputs to their destinations until none is left.
        fn settle(&mut self) {
            loop {
                let mut moved = false;
                for from in 0..self.drivers.len() {
                    while let Some(Broadcast { id, version, delta }) = self.drivers[from].poll_broadcast() {
                        moved = true;
                        let bytes = wire::encode(&GossipDelta::from_delta(&delta));
                        self.trace.push(format!("gossip {from} {id} {version} {bytes:?} lost={}", self.lose_gossip));
                        if self.lose_gossip {
                            continue;
                        }
                        let delta = wire::decode_gossip(&bytes, 1024).unwrap().into_delta();
                        for to in (0..self.drivers.len()).filter(|&to| to != from) {
                            self.drivers[to].handle_delta(self.now, &delta);
                        }
                    }
                    while let Some(Transmit { to, message }) = self.drivers[from].poll_transmit() {
                        moved = true;
                        let frames = match message {
                            Outgoing::Digest(msg) => vec![Frame::Digest(msg)],
                            Outgoing::Pull(msg) => vec![Frame::Pull(msg)],
                            Outgoing::Shards { pull, origin_counter, shards } => self.drivers[from]
                                .shard_frames(pull, origin_counter, &shards)
                                .into_iter()
                                .map(Frame::Shards)
                                .collect(),
                        };
                        let to = self.index(&to);
                        let sender = self.drivers[from].local().clone();
                        let lost = self.mute.contains(&from);
                        for frame in frames {
                            let (kind, bytes) = frame.encode();
                            self.trace.push(format!("frame {from}->{to} {kind} {bytes:?} lost={lost}"));
                            if !lost {
                                let frame = Frame::decode(kind, &bytes).unwrap();
                                self.drivers[to].handle_frame(self.now, &sender, frame);
                            }
                        }
                    }
                    while let Some(event) = self.drivers[from].poll_event() {
                        moved = true;
                        self.trace.push(format!("event {from} {event:?}"));
                        self.events.push((from, event));
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        /// Sets the clock to `at`, fires every driver whose timeout passed (in index order), settles.
        fn advance_to(&mut self, at: Instant) {
            assert!(at >= self.now, "the fake clock only moves forward");
            self.now = at;
            self.settle();
            for driver in &mut self.drivers {
                if driver.poll_timeout().is_some_and(|due| due <= at) {
                    driver.handle_timeout(at);
                }
            }
            self.settle();
        }

        /// Advances to `t0 + until` on a 50 ms grid from `t0` (the shell's tick), then to `until`.
        fn run_until(&mut self, until: Duration) {
            let end = self.t0 + until;
            while self.now < end {
                let ticks = (self.now - self.t0).as_millis() as u32 / 50 + 1;
                self.advance_to((self.t0 + 50 * MS * ticks).min(end));
            }
        }

        fn register(&mut self, node: usize, name: &str, local: u64) {
            let pid = Pid::new(self.drivers[node].local().clone(), local);
            self.drivers[node].handle_register(self.now, name, &pid, 0).unwrap();
            self.settle();
        }

        fn unregister(&mut self, node: usize, name: &str) {
            self.drivers[node].handle_unregister(self.now, name, None).unwrap();
            self.settle();
        }

        fn lookups(&self, name: &str) -> Vec<Option<Pid>> {
            self.drivers.iter().map(|d| d.lookup(name)).collect()
        }

        fn converged(&self) -> bool {
            self.drivers.windows(2).all(|pair| pair[0].state().same_content(pair[1].state()))
        }
    }

    #[test]
    fn a_registration_converges_on_every_node_by_gossip_alone() {
        let mut net = Net::new(&["a", "b", "c"], EventualConfig::default());
        net.run_until(10 * MS);
        net.register(0, "svc", 7);
        let pid = Some(Pid::new(id("a"), 7));
        assert_eq!(net.lookups("svc"), vec![pid.clone(), pid.clone(), pid]);
        // Only the first round (at t0) ran: gossip alone carried it.
        assert!(net.drivers.iter().all(|d| d.stats().rounds == 1));
        assert_eq!(net.drivers[1].stats().deltas_received_new, 1);
        assert!(net.drivers.iter().all(|d| d.visible_names() == 1));
        assert!(net.converged());
    }

    #[test]
    fn a_lost_delta_is_repaired_by_the_next_digest_round_and_one_pull() {
        let mut net = Net::new(&["a", "b", "c"], EventualConfig::default());
        net.lose_gossip = true;
        net.run_until(10 * MS);
        net.register(0, "svc", 7);
        let pid = Some(Pid::new(id("a"), 7));
        // Nothing repairs it before the next round, due one interval after the first (t0).
        net.run_until(950 * MS);
        assert_eq!(net.lookups("svc"), vec![pid.clone(), None, None]);
        assert_eq!(net.drivers[1].stats().pulls_sent, 0);
        net.run_until(1000 * MS);
        assert_eq!(net.lookups("svc"), vec![pid.clone(), pid.clone(), pid]);
        assert!(net.converged());
        for peer in [1, 2] {
            let stats = net.drivers[peer].stats();
            assert_eq!(stats.rounds, 2, "the second round repaired it");
            assert_eq!(stats.pulls_sent, 1, "one pull of the differing shard");
            assert_eq!(stats.shards_repaired, 1);
            assert_eq!(stats.exchanges_repaired, 1);
        }
        assert_eq!(net.drivers[0].stats().pulls_answered, 2);
        // The repair also closed the acknowledgement gap: the peers acknowledge a's write.
        assert_eq!(net.drivers[1].state().version_vector().get(&id("a")), 1);
    }

    #[test]
    fn a_node_that_only_receives_digests_repairs_itself_by_pulling() {
        // b sends no digests (no live peers in its view), so a never pushes to b unprompted:
        // only b's pull, answered by a, can carry a's lost write.
        let mut net = Net::new(&["a", "b"], EventualConfig::default());
        let now = net.now;
        net.drivers[1].handle_live_peers(now, []);
        net.lose_gossip = true;
        net.run_until(10 * MS);
        net.register(0, "svc", 7);
        net.run_until(1000 * MS);
        assert_eq!(net.drivers[1].lookup("svc"), Some(Pid::new(id("a"), 7)));
        assert_eq!(net.drivers[1].stats().pulls_sent, 1);
        assert_eq!(net.drivers[0].stats().pulls_answered, 1);
        assert_eq!(net.drivers[0].stats().exchanges_repaired, 0, "b never sent a digest");
    }

    #[test]
    fn a_tombstone_is_collected_one_round_after_every_live_peer_acknowledged_it_and_not_before() {
        let mut net = Net::new(&["a", "b"], EventualConfig::default());
        net.run_until(10 * MS);
        net.register(0, "svc", 7);
        net.unregister(0, "svc");
        assert!(net.drivers.iter().all(|d| d.state().tombstone_count() == 1));
        // Round 2 (t0 + 1 s) carries the acknowledgements; collection in a round only uses what
        // peers acknowledged before it, so round 3 (t0 + 2 s) collects.
        net.run_until(1950 * MS);
        assert!(net.drivers.iter().all(|d| d.state().tombstone_count() == 1), "collected too early");
        net.run_until(2000 * MS);
        for driver in &net.drivers {
            assert_eq!(driver.state().tombstone_count(), 0);
            assert_eq!(driver.stats().tombstones_collected, 1);
            assert_eq!(driver.state().name_count(), 0);
        }
    }

    #[test]
    fn a_live_peer_that_never_acknowledges_holds_tombstones_back() {
        let mut net = Net::new(&["a", "b", "c"], EventualConfig::default());
        net.mute.insert(2);
        net.run_until(10 * MS);
        net.register(0, "svc", 7);
        net.unregister(0, "svc");
        net.run_until(5000 * MS);
        assert_eq!(net.drivers[0].state().tombstone_count(), 1);
        assert_eq!(net.drivers[0].stats().tombstones_collected, 0);
        // c speaks again: its digest acknowledges the tombstone, and the next rounds collect it.
        net.mute.clear();
        net.run_until(7000 * MS);
        assert!(net.drivers.iter().all(|d| d.state().tombstone_count() == 0));
    }

    #[test]
    fn a_departed_peers_names_go_and_its_frames_are_refused() {
        let mut net = Net::new(&["a", "b"], EventualConfig::default());
        net.run_until(10 * MS);
        net.register(1, "svc", 3);
        assert_eq!(net.drivers[0].lookup("svc"), Some(Pid::new(id("b"), 3)));
        let now = net.now;
        net.drivers[0].handle_member_change(now, MemberChange::Down(id("b")));
        assert_eq!(net.drivers[0].lookup("svc"), None);
        assert_eq!(net.drivers[0].visible_names(), 0);
        net.run_until(1000 * MS);
        assert_eq!(net.drivers[0].lookup("svc"), None, "b's shards must not bring it back");
        // b's digest of the round, and the shards b pushed answering a's digest (a still counts b
        // as live here: membership would have removed it; pulls are answered regardless).
        assert_eq!(net.drivers[0].stats().refused_departed_peer, 2);
        // Up again (a false suspicion): readmitted, an early round brings the name back.
        let now = net.now;
        net.drivers[0].handle_member_change(now, MemberChange::Up(id("b")));
        assert_eq!(net.drivers[0].poll_timeout(), Some(now + EventualConfig::default().min_exchange_interval));
        net.run_until(2000 * MS);
        assert_eq!(net.drivers[0].lookup("svc"), Some(Pid::new(id("b"), 3)));
    }

    #[test]
    fn concurrent_registrations_resolve_to_one_owner_and_the_loser_is_revoked_once() {
        let mut net = Net::new(&["a", "b", "c"], EventualConfig::default());
        net.lose_gossip = true;
        net.run_until(10 * MS);
        net.register(0, "svc", 1);
        net.register(1, "svc", 2);
        net.lose_gossip = false;
        net.run_until(3000 * MS);
        let owners = net.lookups("svc");
        assert!(owners.iter().all(|owner| owner.is_some() && *owner == owners[0]), "{owners:?}");
        let winner = owners[0].clone().unwrap();
        let loser = if winner.node == id("a") { 1 } else { 0 };
        assert_eq!(net.events.len(), 1, "{:?}", net.events);
        let (at, Event::Revoked { name, pid, winner: told }) = net.events[0].clone();
        assert_eq!(
            (at, name.as_str(), pid.node.clone(), told),
            (loser, "svc", net.drivers[loser].local().clone(), Some(winner))
        );
        assert_eq!(net.drivers[loser].summary().local_registrations, 0);
        assert_eq!(net.drivers[loser].stats().revocations, 1);
        assert!(net.converged());
    }

    /// A seeded workload on three nodes (registrations and unregistrations every 0-300 ms, a third
    /// of the gossip lost, each node's anti-entropy frames lost one step in eight), then a heal.
    /// Checks convergence and returns the trace.
    ///
    /// Bounds, measured over seeds 1-199 when this test was written: after the heal every node
    /// shows the same owners within one round (1 s: the next digest exchange repairs whatever
    /// was lost), and the replicas hold the same content with every tombstone collected within
    /// 5.85 s (collection needs an acknowledgement round and a collection round, and a replica
    /// that collected first makes digests differ, which holds back the others' acknowledgement
    /// by a round or two); 10 s leaves room.
    fn run_workload(seed: u64) -> Vec<String> {
        let mut rng = Rng(seed);
        let mut net = Net::new(&["a", "b", "c"], EventualConfig::default());
        for step in 0..200u64 {
            net.lose_gossip = rng.below(3) == 0;
            net.mute = (0..3).filter(|_| rng.below(8) == 0).collect();
            let node = rng.below(3) as usize;
            let name = format!("n{}", rng.below(40));
            if net.drivers[node].lookup(&name).is_some_and(|pid| pid.node == *net.drivers[node].local()) {
                net.unregister(node, &name);
            } else if net.drivers[node].lookup(&name).is_none() {
                net.register(node, &name, step);
            }
            let at = net.now - net.t0 + Duration::from_millis(rng.below(300));
            net.run_until(at);
        }
        net.lose_gossip = false;
        net.mute.clear();
        let heal = net.now - net.t0;
        net.run_until(heal + Duration::from_secs(1));
        let owners = net.drivers[0].list();
        assert!(net.drivers.iter().all(|d| d.list() == owners), "seed {seed}: owners differ one round after the heal");
        net.run_until(heal + Duration::from_secs(10));
        assert!(net.converged(), "seed {seed}: the replicas differ 10 s after the heal");
        assert!(net.drivers.iter().all(|d| d.state().tombstone_count() == 0), "seed {seed}: tombstones left");
        net.trace.push(format!("final {:?}", net.drivers[0].list()));
        net.trace
    }

    #[test]
    fn every_seeded_workload_converges_after_the_heal() {
        for seed in 10..42 {
            run_workload(seed);
        }
    }

    #[test]
    fn the_same_seed_and_inputs_give_the_same_outputs() {
        for seed in [1, 2, 3] {
            let first = run_workload(seed);
            assert!(first.len() > 100, "a workload worth comparing");
            assert_eq!(first, run_workload(seed), "seed {seed} replayed differently");
        }
        // The trace is sensitive to the inputs, so equality above means something.
        assert_ne!(run_workload(1), run_workload(2));
    }

    #[test]
    fn a_refused_broadcast_asks_for_an_early_round_but_not_before_the_rate_limit() {
        let config = EventualConfig::default();
        let t0 = Instant::now();
        let mut driver = EventualDriver::new(id("a"), config.clone(), t0);
        assert_eq!(driver.poll_timeout(), Some(t0));
        driver.handle_timeout(t0);
        assert_eq!(driver.poll_timeout(), Some(t0 + config.anti_entropy_interval));
        driver.handle_broadcast_refused(t0 + 10 * MS, 1);
        assert_eq!(driver.poll_timeout(), Some(t0 + config.min_exchange_interval));
        driver.handle_timeout(t0 + 100 * MS);
        assert_eq!(driver.stats().rounds, 1, "too early: the rate limit holds");
        driver.handle_timeout(t0 + config.min_exchange_interval);
        assert_eq!(driver.stats().rounds, 2);
        assert_eq!(driver.stats().deltas_not_gossiped, 1);
        assert_eq!(driver.poll_timeout(), Some(t0 + config.min_exchange_interval + config.anti_entropy_interval));
    }

    #[test]
    fn gossip_off_leaves_every_write_to_anti_entropy() {
        let config = EventualConfig { gossip_deltas: false, ..EventualConfig::default() };
        let mut net = Net::new(&["a", "b"], config);
        net.run_until(10 * MS);
        net.register(0, "svc", 1);
        assert_eq!(net.drivers[0].stats().deltas_not_gossiped, 1);
        assert_eq!(net.drivers[0].stats().deltas_queued, 0);
        assert_eq!(net.drivers[1].lookup("svc"), None);
        net.run_until(1000 * MS);
        assert_eq!(net.drivers[1].lookup("svc"), Some(Pid::new(id("a"), 1)));
    }

    #[test]
    fn a_second_digest_within_the_rate_limit_is_refused_and_counted() {
        let t0 = Instant::now();
        let mut a = EventualDriver::new(id("a"), EventualConfig::default(), t0);
        let mut b = EventualDriver::new(id("b"), EventualConfig::default(), t0);
        b.handle_register(t0, "svc", &Pid::new(id("b"), 1), 0).unwrap();
        b.handle_live_peers(t0, [id("a")]);
        b.handle_timeout(t0);
        let Some(Transmit { message: Outgoing::Digest(digest), .. }) = b.poll_transmit() else { panic!("a digest") };
        a.handle_frame(t0, &id("b"), Frame::Digest(digest.clone()));
        assert_eq!(a.stats().exchanges_repaired, 1);
        assert_eq!(a.poll_transmit().map(|t| t.to), Some(id("b")), "a pushes its shard");
        assert!(matches!(a.poll_transmit().map(|t| t.message), Some(Outgoing::Pull(_))));
        a.handle_frame(t0 + 100 * MS, &id("b"), Frame::Digest(digest.clone()));
        assert_eq!(a.stats().refused_rate_limited, 1);
        assert!(a.poll_transmit().is_none());
        a.handle_frame(t0 + 250 * MS, &id("b"), Frame::Digest(digest));
        assert_eq!(a.stats().exchanges_repaired, 2);
    }

    #[test]
    fn a_digest_of_the_wrong_length_is_refused_without_panicking() {
        let t0 = Instant::now();
        let mut a = EventualDriver::new(id("a"), EventualConfig::default(), t0);
        let short = DigestMsg { v: WIRE_VERSION, digest: vec![0; 3], acked: vec![] };
        a.handle_frame(t0, &id("b"), Frame::Digest(short));
        assert_eq!(a.stats().refused_out_of_bounds, 1);
        assert!(a.poll_transmit().is_none());
        // The encoded form never gets that far: wire refuses it first.
        let (kind, bytes) = Frame::Digest(DigestMsg { v: WIRE_VERSION, digest: vec![0; 3], acked: vec![] }).encode();
        assert_eq!(kind, KIND_DIGEST);
        assert!(Frame::decode(kind, &bytes).is_err());
    }

    #[test]
    fn transmits_beyond_the_bound_are_dropped_and_counted() {
        let config = EventualConfig::default();
        let t0 = Instant::now();
        let mut a = EventualDriver::new(id("a"), config.clone(), t0);
        a.handle_live_peers(t0, (0..MAX_PEERS).map(|i| id(&format!("p{i}"))));
        let rounds = MAX_PENDING_TRANSMITS / MAX_PEERS + 1;
        for round in 0..rounds as u32 {
            a.handle_timeout(t0 + config.anti_entropy_interval * round);
        }
        assert_eq!(a.stats().rounds, rounds as u64);
        assert_eq!(a.stats().transmits_dropped, (rounds * MAX_PEERS - MAX_PENDING_TRANSMITS) as u64);
        assert_eq!(a.stats().refused_over_bound(), a.stats().transmits_dropped);
        assert_eq!(std::iter::from_fn(|| a.poll_transmit()).count(), MAX_PENDING_TRANSMITS);
    }

    #[test]
    fn live_peers_beyond_the_bound_are_counted_and_left_out_of_rounds() {
        let t0 = Instant::now();
        let mut a = EventualDriver::new(id("a"), EventualConfig::default(), t0);
        // Unsorted, with a duplicate and this node itself: both are left out without counting.
        let mut peers: Vec<NodeId> = (0..=MAX_PEERS).rev().map(|i| id(&format!("p{i:05}"))).collect();
        peers.push(id("p00000"));
        peers.push(id("a"));
        a.handle_live_peers(t0, peers);
        assert_eq!(a.stats().peers_refused, 1);
        a.handle_timeout(t0);
        let sent: Vec<NodeId> = std::iter::from_fn(|| a.poll_transmit()).map(|t| t.to).collect();
        assert_eq!(sent.len(), MAX_PEERS);
        assert_eq!(sent.first(), Some(&id("p00000")), "digests go out in name order");
        assert!(!sent.contains(&id(&format!("p{MAX_PEERS:05}"))));
    }

    #[test]
    fn a_process_exit_unregisters_all_its_names_and_gossips_each_tombstone() {
        let t0 = Instant::now();
        let mut a = EventualDriver::new(id("a"), EventualConfig::default(), t0);
        let pid = Pid::new(id("a"), 9);
        for name in ["x", "y", "z"] {
            a.handle_register(t0, name, &pid, 0).unwrap();
        }
        assert!(matches!(
            a.handle_register(t0, "x", &Pid::new(id("a"), 10), 0),
            Err(RegistryError::AlreadyRegistered { .. })
        ));
        assert!(matches!(a.handle_register(t0, "w", &Pid::new(id("b"), 1), 0), Err(RegistryError::NotHosted { .. })));
        let names = a.handle_process_exit(t0, &pid);
        assert_eq!(names.iter().map(|n| &**n).collect::<Vec<_>>(), vec!["x", "y", "z"]);
        assert_eq!(a.visible_names(), 0);
        let tombstones = std::iter::from_fn(|| a.poll_broadcast()).filter(|b| b.delta.dot.counter > 3).count();
        assert_eq!(tombstones, 3);
        assert!(matches!(a.handle_unregister(t0, "x", None), Err(RegistryError::NotRegistered { .. })));
    }

    #[test]
    fn a_superseded_run_s_names_are_dropped_and_its_late_writes_refused() {
        let t0 = Instant::now();
        let old_b = NodeId::new("b", 1);
        let mut b = EventualDriver::new(old_b.clone(), EventualConfig::default(), t0);
        b.handle_register(t0, "svc", &Pid::new(old_b.clone(), 7), 0).unwrap();
        b.handle_register(t0, "other", &Pid::new(old_b.clone(), 8), 0).unwrap();
        let deltas: Vec<Delta> = std::iter::from_fn(|| b.poll_broadcast()).map(|b| b.delta).collect();
        assert_eq!(deltas.len(), 2);
        let mut a = EventualDriver::new(id("a"), EventualConfig::default(), t0);
        // Node a learns b's old run only through its names (it never saw that run in membership).
        assert!(a.handle_delta(t0, &deltas[0]));
        assert!(a.lookup("svc").is_some());
        // The new run of b comes up: the old run's names go, and its late write is refused.
        a.handle_live_peers(t0, [NodeId::new("b", 2)]);
        assert_eq!(a.lookup("svc"), None);
        assert!(!a.handle_delta(t0, &deltas[1]));
        assert_eq!(a.lookup("other"), None);
        // A run of this node's own past is superseded by this node itself.
        let mut restarted = EventualDriver::new(NodeId::new("b", 2), EventualConfig::default(), t0);
        assert!(!restarted.handle_delta(t0, &deltas[0]));
        assert_eq!(restarted.lookup("svc"), None);
    }
}
