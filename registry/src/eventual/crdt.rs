//! The eventual tier's replicated state: a pure, I/O-free CRDT mapping a name to its owner.
//!
//! Role: [`EventualState`] holds, per name, at most one [`Dot`] per origin node (the node that wrote
//! it): a counter from that origin and either a [`Live`] registration or a tombstone. Local writes
//! ([`EventualState::register`], [`EventualState::unregister`]) return a [`Delta`] for the caller to
//! gossip; peers' deltas go through [`EventualState::apply`], whole states through
//! [`EventualState::merge`]. The owning actor does all I/O (SPEC section 7, STYLE section 1). The
//! wire types ([`Delta`], [`Dot`]) are converted at the edges: inside, dots are kept in the compact
//! form of `store` (interned origins, 24-byte dots, names as `Box<str>` in per-shard maps, about
//! 95 bytes per name with one dot), so readers ([`EventualState::winner`], [`EventualState::dots`], ...)
//! return owned values.
//!
//! Invariants:
//! - Join of two dots of the same (name, origin): the higher counter wins; on an equal counter a
//!   tombstone beats a live write ("delete wins"), and two live writes are ordered by
//!   (pid, priority) so the join stays a total, commutative choice even for a misbehaving origin.
//! - The visible winner of a name is chosen among live dots only (a tombstone never hides another
//!   origin's entry) by [`rank`], a function of (name, origin, priority) alone: no clock, counter or
//!   pid takes part, so every replica with the same dots shows the same winner.
//! - Departure is an origin-level tombstone that also covers the same node's older runs: departing
//!   `(name, n)` drops the dots of every origin `(name, m)` with `m <= n` and ignores any later dot
//!   from them, so the result does not depend on the order of departures and deltas.
//! - Acknowledgement: [`EventualState::version_vector`] gives, per origin, the largest `c` such that
//!   this replica received every counter `1..=c` of that origin (a contiguous prefix, not the
//!   largest counter seen: with out-of-order gossip the largest would vouch for writes not yet
//!   received, and collecting against it loses them). It also advances by a whole-state
//!   [`EventualState::merge`] and by [`EventualState::adopt_peer_clock`] once digests are equal.
//!   [`EventualState::collect_tombstones`] takes the meet of the live nodes' acknowledgements (never
//!   above this replica's own) and raises each origin's watermark to it: a dot at or below the
//!   watermark for a (name, origin) without an entry was seen by everyone and is a re-delivery.
//! - Everything a peer sends is validated before it touches the state; no input panics.
//! - Sizes are bounded ([`MAX_NAME_BYTES`], [`MAX_NAMES`], [`MAX_ORIGINS_PER_NAME`],
//!   [`MAX_KNOWN_ORIGINS`], [`MAX_TOMBSTONES`], [`MAX_DEPARTED_ORIGINS`], [`MAX_ACK_GAPS`]); what a
//!   bound refuses is a typed error, what it evicts or forgets is counted in [`EventualStats`].
//!
//! Known limits (counted, not fixed): a tombstone collected early by [`Limits::max_tombstones`]
//! before every node saw it, or a departed marker forgotten by [`Limits::max_departed`], can let a
//! late stale delta bring an old registration back on this replica; anti-entropy then repairs it
//! only where a peer still holds the superseding dot. The counters
//! [`EventualStats::tombstones_collected_early`] and [`EventualStats::departed_forgotten`] say
//! when this risk was taken. A lost delta stalls the acknowledgement of its origin (so tombstone
//! collection) until a whole-state merge or equal digests with a peer vouch for it.

use std::collections::{BTreeMap, BTreeSet};

use cohort_actors::Pid;
use cohort_actors::pid::is_valid_node_name;
use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, shard_of};
use super::store::{CompactDot, Origins, Store, TombstoneKey};

/// Longest registered name, in bytes. Names are keys in every replica and travel in every delta and
/// shard; 255 bytes is ample for service names and keeps a delta well under one frame.
pub const MAX_NAME_BYTES: usize = 255;

/// Most names (live or tombstoned) one replica holds. Every node holds the whole map, so this bounds
/// every node's memory (100k names with one dot each cost about 10 MiB, see `benches/eventual.rs`).
pub const MAX_NAMES: usize = 100_000;

/// Most origins with a dot for one name. A dot per origin means at most one per cluster node; 256
/// is above any cluster this runtime targets and caps what one name can cost a shard transfer.
pub const MAX_ORIGINS_PER_NAME: usize = 256;

/// Most origins (node incarnations) one replica tracks at once: those with a dot or an
/// acknowledgement here and not departed. A cluster has one per live node, plus restarted nodes
/// whose old incarnation has not been departed yet; 1,024 matches [`MAX_DEPARTED_ORIGINS`] and keeps
/// peers from growing the origin table and the version vector without bound. A dot from a new
/// origin beyond it is refused ([`EventualError::TooManyKnownOrigins`]); the local node always has
/// its place.
pub const MAX_KNOWN_ORIGINS: usize = 1_024;

/// Most tombstones one replica keeps. Tombstones wait for every live node to have seen them; a node
/// that never acknowledges (partitioned, slow) must not grow memory without bound, so beyond this the
/// oldest are collected early (counted in [`EventualStats::tombstones_collected_early`]).
pub const MAX_TOMBSTONES: usize = 10_000;

/// Most departed origins remembered. A departed `NodeId` (name + incarnation) never comes back, so its
/// marker only guards against late deltas; beyond this bound the smallest ids are forgotten (counted).
pub const MAX_DEPARTED_ORIGINS: usize = 1_024;

/// Most counters per origin remembered as received out of order (past a gap in the acknowledged
/// prefix). A lost delta leaves a gap until a merge vouches for it; meanwhile every later counter of
/// that origin waits here. Beyond the bound the largest is forgotten (counted in
/// [`EventualStats::ack_counters_forgotten`]), which only delays tombstone collection. 4,096 u64s is
/// some 64 KiB per origin at worst.
pub const MAX_ACK_GAPS: usize = 4_096;

/// Most bytes of the serialized form of one [`Delta`] (name + origin + pid + counters, with slack for
/// the encoding). A delta is one dot for one name; anything larger is malformed and refused by the
/// receiver's frame layer before decoding.
pub const MAX_DELTA_BYTES: usize = MAX_NAME_BYTES + 2 * cohort_actors::pid::MAX_NODE_NAME_BYTES + 64;

/// The limits one [`EventualState`] enforces; [`Limits::default`] is the named constants, smaller
/// values exist so tests can reach the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most names held, see [`MAX_NAMES`].
    pub max_names: usize,
    /// Most tombstones held before early collection, see [`MAX_TOMBSTONES`].
    pub max_tombstones: usize,
    /// Most departed origins remembered, see [`MAX_DEPARTED_ORIGINS`].
    pub max_departed: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_names: MAX_NAMES, max_tombstones: MAX_TOMBSTONES, max_departed: MAX_DEPARTED_ORIGINS }
    }
}

/// Why a write or a peer's input was refused. Nothing is changed when an error is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventualError {
    /// The name is empty.
    #[error("a name must not be empty")]
    EmptyName,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("name is {len} bytes, at most {MAX_NAME_BYTES} allowed")]
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// An origin (or a pid's node) name is not a valid node name.
    #[error("invalid origin node name")]
    InvalidOrigin,
    /// A dot carries counter 0; counters start at 1.
    #[error("a dot counter must be at least 1")]
    ZeroCounter,
    /// A live dot's pid is not hosted by its origin (a node only registers its own processes), or a
    /// local register named a pid of another node.
    #[error("pid {pid} is not hosted by origin {origin}")]
    PidNotOnOrigin {
        /// The pid offered.
        pid: Pid,
        /// The origin that claimed it.
        origin: NodeId,
    },
    /// Another local process already holds the name on this node.
    #[error("name already registered on this node by {pid}")]
    AlreadyRegistered {
        /// The local process holding the name.
        pid: Pid,
    },
    /// `unregister` of a name this node holds no live registration for.
    #[error("name is not registered on this node")]
    NotRegistered,
    /// The state holds [`Limits::max_names`] names already.
    #[error("the registry holds its maximum of {max} names")]
    TooManyNames {
        /// The bound reached.
        max: usize,
    },
    /// The name has [`MAX_ORIGINS_PER_NAME`] origins already.
    #[error("the name has its maximum of {MAX_ORIGINS_PER_NAME} origins")]
    TooManyOrigins,
    /// The replica tracks [`MAX_KNOWN_ORIGINS`] origins already and the dot comes from a new one.
    #[error("the registry tracks its maximum of {max} origins")]
    TooManyKnownOrigins {
        /// The bound reached.
        max: usize,
    },
    /// This node's counter reached `u64::MAX` (a new incarnation is needed).
    #[error("the local counter is exhausted")]
    CounterExhausted,
    /// A shard index is not below [`crate::eventual::SHARD_COUNT`].
    #[error("shard {shard} does not exist")]
    ShardOutOfRange {
        /// The index given.
        shard: usize,
    },
    /// A shard state carries a name that hashes to another shard.
    #[error("a shard state carries a name of another shard")]
    NameNotInShard,
    /// A shard state carries more entries than [`crate::eventual::MAX_SHARD_ENTRIES`].
    #[error("shard state has {len} entries, at most {max} allowed")]
    ShardTooLarge {
        /// Entries found.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// A live registration: the owning process and its priority (higher wins, see [`rank`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Live {
    /// The registered process; always hosted by the dot's origin.
    pub pid: Pid,
    /// Conflict priority: a higher priority wins the name whatever the origin.
    pub priority: u8,
}

/// What an origin last wrote for a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// The origin registers this process under the name.
    Live(Live),
    /// The origin removed its registration.
    Tombstone,
}

/// One origin's entry for one name (the wire form; the state keeps a compact form inside).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that wrote this entry.
    pub origin: NodeId,
    /// The origin's counter at the write, starting at 1, strictly increasing per origin.
    pub counter: u64,
    /// What was written.
    pub value: Value,
}

/// One write to gossip: a dot for a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The name written.
    pub name: String,
    /// The origin's entry for it.
    pub dot: Dot,
}

/// A counter per origin. As [`EventualState::version_vector`] it is this node's acknowledgement:
/// origin `o` at `c` means every counter `1..=c` of `o` was received. The pointwise minimum over
/// live nodes ([`VersionVector::meet`]) is what [`EventualState::collect_tombstones`] takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// An empty vector (nothing seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `origin` (0 if none).
    pub fn get(&self, origin: &NodeId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Record `counter` for `origin` (keeps the maximum).
    pub fn observe(&mut self, origin: &NodeId, counter: u64) {
        if counter > self.get(origin) {
            self.set(origin, counter);
        }
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, counter) in &other.0 {
            self.observe(origin, *counter);
        }
    }

    /// Pointwise minimum of `self` and `other` (an origin missing from either counts as 0).
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(
            self.0
                .iter()
                .filter_map(|(origin, c)| {
                    let m = (*c).min(other.get(origin));
                    (m > 0).then(|| (origin.clone(), m))
                })
                .collect(),
        )
    }

    /// Forget `origin` (it departed).
    pub fn remove(&mut self, origin: &NodeId) {
        self.0.remove(origin);
    }

    /// The (origin, counter) pairs, in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.0.iter().map(|(o, c)| (o, *c))
    }

    /// How many origins have a counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin has a counter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Set `origin`'s counter (0 removes it), without allocating when the origin is present.
    fn set(&mut self, origin: &NodeId, counter: u64) {
        if counter == 0 {
            self.0.remove(origin);
        } else if let Some(slot) = self.0.get_mut(origin) {
            *slot = counter;
        } else {
            self.0.insert(origin.clone(), counter);
        }
    }
}

/// A change of the visible winner of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinnerChange {
    /// The name whose winner changed.
    pub name: String,
    /// The winner before (`None`: the name was unregistered).
    pub old: Option<Live>,
    /// The winner after (`None`: the name is now unregistered).
    pub new: Option<Live>,
}

/// What applying one delta did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Whether the state changed; only a changing delta is re-broadcast (loop-free epidemic).
    pub changed: bool,
    /// The winner change it caused, if any.
    pub winner_changed: Option<WinnerChange>,
    /// A local process that lost the name to another owner and must be told. Reported at most once
    /// per local registration: re-applying a delta, or losing again later, reports nothing.
    pub lost: Option<(String, Pid)>,
}

/// What a merge or a departure did, over many names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Whether the state changed.
    pub changed: bool,
    /// Every winner change, in the order the names were merged (shard, then name).
    pub winner_changes: Vec<WinnerChange>,
    /// Local processes that lost a name (each reported once per registration).
    pub lost: Vec<(String, Pid)>,
    /// Peer dots refused by validation or bounds (the rest were applied).
    pub refused: usize,
}

impl MergeOutcome {
    fn absorb(&mut self, outcome: ApplyOutcome) {
        self.changed |= outcome.changed;
        self.winner_changes.extend(outcome.winner_changed);
        self.lost.extend(outcome.lost);
    }

    fn absorb_merge(&mut self, outcome: MergeOutcome) {
        self.changed |= outcome.changed;
        self.winner_changes.extend(outcome.winner_changes);
        self.lost.extend(outcome.lost);
        self.refused += outcome.refused;
    }
}

/// Counters of what the bounds evicted or the state refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventualStats {
    /// Tombstones collected before every live node had seen them because of [`Limits::max_tombstones`].
    pub tombstones_collected_early: u64,
    /// Tombstones collected normally (seen by every live node).
    pub tombstones_collected: u64,
    /// Departed-origin markers forgotten because of [`Limits::max_departed`].
    pub departed_forgotten: u64,
    /// Dots ignored because their origin departed, or because they are at or below their origin's
    /// collection watermark without an entry (a re-delivery of something superseded or collected).
    pub stale_ignored: u64,
    /// Out-of-order counters forgotten because of [`MAX_ACK_GAPS`] (delays collection only).
    pub ack_counters_forgotten: u64,
}

/// The rank of a live dot for a name; the live dot with the largest rank is the winner.
///
/// Ranking rule, a function of (name, origin, priority) only: first the higher `priority`; then the
/// larger 64-bit hash (first 8 bytes of SHA-256, big-endian) of the length-prefixed name and origin
/// node name, which spreads wins across nodes per name instead of always favouring one node; then the
/// higher origin incarnation (a restarted node over its past); then the origin name (ties of the hash).
/// Counters, pids and clocks never take part, so delivery order cannot change the winner.
pub fn rank(name: &str, origin: &NodeId, priority: u8) -> (u8, u64, u64, String) {
    (priority, rank_hash(name, &origin.name), origin.incarnation, origin.name.clone())
}

/// [`rank`] without allocating, for comparisons inside the state (same order).
fn rank_key<'a>(name: &str, origin: &'a NodeId, priority: u8) -> (u8, u64, u64, &'a str) {
    (priority, rank_hash(name, &origin.name), origin.incarnation, &origin.name)
}

fn rank_hash(name: &str, origin_name: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"cohort-eventual-rank\0");
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update((origin_name.len() as u64).to_be_bytes());
    hasher.update(origin_name.as_bytes());
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first)
}

/// Validate a name (non-empty, at most [`MAX_NAME_BYTES`]).
pub fn validate_name(name: &str) -> Result<(), EventualError> {
    if name.is_empty() {
        return Err(EventualError::EmptyName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(EventualError::NameTooLong { len: name.len() });
    }
    Ok(())
}

/// Validate a peer's delta: name, origin, counter, and that a live pid is hosted by its origin.
pub fn validate_delta(delta: &Delta) -> Result<(), EventualError> {
    validate_name(&delta.name)?;
    if !is_valid_node_name(&delta.dot.origin.name) {
        return Err(EventualError::InvalidOrigin);
    }
    if delta.dot.counter == 0 {
        return Err(EventualError::ZeroCounter);
    }
    if let Value::Live(live) = &delta.dot.value
        && live.pid.node != delta.dot.origin
    {
        return Err(EventualError::PidNotOnOrigin { pid: live.pid.clone(), origin: delta.dot.origin.clone() });
    }
    Ok(())
}

/// A validated write, without its origin: what a [`CompactDot`] holds besides the slot.
#[derive(Clone, Copy, Debug)]
enum Write {
    Live { local: u64, priority: u8 },
    Tombstone,
}

impl Write {
    fn of_value(value: &Value) -> Self {
        match value {
            Value::Live(live) => Write::Live { local: live.pid.local, priority: live.priority },
            Value::Tombstone => Write::Tombstone,
        }
    }

    fn of_dot(dot: &CompactDot) -> Self {
        if dot.tombstone { Write::Tombstone } else { Write::Live { local: dot.local, priority: dot.priority } }
    }

    fn dot(self, origin: u32, counter: u64) -> CompactDot {
        match self {
            Write::Live { local, priority } => CompactDot::live(origin, counter, local, priority),
            Write::Tombstone => CompactDot::tombstone(origin, counter),
        }
    }
}

fn live_of(origins: &Origins, dot: &CompactDot) -> Live {
    Live { pid: Pid::new(origins.id(dot.origin).clone(), dot.local), priority: dot.priority }
}

fn dot_of(origins: &Origins, dot: &CompactDot) -> Dot {
    let value = if dot.tombstone { Value::Tombstone } else { Value::Live(live_of(origins, dot)) };
    Dot { origin: origins.id(dot.origin).clone(), counter: dot.counter, value }
}

/// The live dot of `dots` with the largest [`rank`] (no hashing when at most one is live).
fn best_live(name: &str, dots: &[CompactDot], origins: &Origins) -> Option<CompactDot> {
    let mut live = dots.iter().filter(|dot| !dot.tombstone).peekable();
    let first = live.next()?;
    if live.peek().is_none() {
        return Some(*first);
    }
    std::iter::once(first).chain(live).max_by_key(|dot| rank_key(name, origins.id(dot.origin), dot.priority)).copied()
}

/// Whether the winners `a` and `b` are the same registration (pid and priority; slots are stable
/// within one operation).
fn same_winner(a: Option<CompactDot>, b: Option<CompactDot>) -> bool {
    a.map(|d| (d.origin, d.local, d.priority)) == b.map(|d| (d.origin, d.local, d.priority))
}

/// One replica of the eventual tier: the replicated dots plus this node's local bookkeeping.
#[derive(Clone, Debug)]
pub struct EventualState {
    local: NodeId,
    /// The local node's origin slot, interned at creation and never released, so peers filling
    /// [`MAX_KNOWN_ORIGINS`] cannot block local writes.
    local_origin: u32,
    limits: Limits,
    /// Interned origins with their acknowledgement and watermark.
    origins: Origins,
    /// Replicated content: sharded name -> dots, with digests and the tombstone index.
    store: Store,
    /// Replicated content: departed origins, at most one (the largest incarnation) per node name.
    departed: BTreeSet<NodeId>,
    /// The acknowledged prefix per origin, mirrored from `origins` for [`EventualState::version_vector`].
    clock: VersionVector,
    /// name -> counter of the local registration whose loss was already reported.
    reported_losses: BTreeMap<Box<str>, u64>,
    stats: EventualStats,
}

impl EventualState {
    /// An empty replica for node `local` with the default [`Limits`].
    pub fn new(local: NodeId) -> Self {
        Self::with_limits(local, Limits::default())
    }

    /// An empty replica with explicit limits.
    pub fn with_limits(local: NodeId, limits: Limits) -> Self {
        let mut origins = Origins::default();
        let local_origin = origins.intern(&local);
        Self {
            local,
            local_origin,
            limits,
            origins,
            store: Store::default(),
            departed: BTreeSet::new(),
            clock: VersionVector::new(),
            reported_losses: BTreeMap::new(),
            stats: EventualStats::default(),
        }
    }

    /// This replica's node.
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// Register local process `pid` under `name` with `priority`; returns the delta to gossip.
    /// Re-registering the same pid updates its priority. The caller learns whether it wins from
    /// [`EventualState::winner`].
    pub fn register(&mut self, name: &str, pid: Pid, priority: u8) -> Result<Delta, EventualError> {
        validate_name(name)?;
        if pid.node != self.local {
            return Err(EventualError::PidNotOnOrigin { pid, origin: self.local.clone() });
        }
        let shard = shard_of(name);
        if let Some(mine) = self.local_dot(shard, name)
            && !mine.tombstone
            && mine.local != pid.local
        {
            return Err(EventualError::AlreadyRegistered { pid: Pid::new(self.local.clone(), mine.local) });
        }
        let write = Write::Live { local: pid.local, priority };
        self.local_write(shard, name, write, Value::Live(Live { pid, priority }))
    }

    /// Remove this node's registration of `name`; returns the delta (a tombstone) to gossip.
    pub fn unregister(&mut self, name: &str) -> Result<Delta, EventualError> {
        validate_name(name)?;
        let shard = shard_of(name);
        if self.local_dot(shard, name).is_none_or(|dot| dot.tombstone) {
            return Err(EventualError::NotRegistered);
        }
        self.local_write(shard, name, Write::Tombstone, Value::Tombstone)
    }

    fn local_dot(&self, shard: usize, name: &str) -> Option<CompactDot> {
        self.store.dots(shard, name).and_then(|dots| dots.get(self.local_origin)).copied()
    }

    fn local_write(&mut self, shard: usize, name: &str, write: Write, value: Value) -> Result<Delta, EventualError> {
        if !is_valid_node_name(&self.local.name) {
            return Err(EventualError::InvalidOrigin);
        }
        let counter =
            self.origins.get(self.local_origin).ack.max.checked_add(1).ok_or(EventualError::CounterExhausted)?;
        let origin = self.local.clone();
        self.apply_write(shard, name, &origin, counter, write)?;
        // A fresh local registration may be reported again if it loses.
        self.reported_losses.remove(name);
        Ok(Delta { name: name.to_owned(), dot: Dot { origin, counter, value } })
    }

    /// Apply a delta (local or from a peer). Validates it first; a departed origin's or an already
    /// collected dot is ignored (`changed == false`). Applying the same delta twice changes nothing
    /// the second time and reports nothing.
    pub fn apply(&mut self, delta: &Delta) -> Result<ApplyOutcome, EventualError> {
        validate_delta(delta)?;
        self.apply_valid(shard_of(&delta.name), delta)
    }

    /// Apply a validated delta whose name is in `shard`.
    pub(crate) fn apply_valid(&mut self, shard: usize, delta: &Delta) -> Result<ApplyOutcome, EventualError> {
        debug_assert_eq!(shard, shard_of(&delta.name));
        self.apply_write(shard, &delta.name, &delta.dot.origin, delta.dot.counter, Write::of_value(&delta.dot.value))
    }

    /// Apply a validated write to `name` (in `shard`). All refusals happen before the first change.
    fn apply_write(
        &mut self,
        shard: usize,
        name: &str,
        origin: &NodeId,
        counter: u64,
        write: Write,
    ) -> Result<ApplyOutcome, EventualError> {
        if self.is_departed(origin) {
            self.stats.stale_ignored += 1;
            return Ok(ApplyOutcome::default());
        }
        let slot = self.origins.lookup(origin);
        let incoming = write.dot(slot.unwrap_or(u32::MAX), counter);
        let existing = slot.and_then(|slot| self.store.dots(shard, name).and_then(|dots| dots.get(slot)).copied());
        match (slot, existing) {
            (Some(slot), Some(current)) if !incoming.supersedes(&current) => {
                self.see(slot, counter);
                return Ok(ApplyOutcome::default());
            }
            (Some(slot), None) if counter <= self.origins.get(slot).watermark => {
                self.stats.stale_ignored += 1;
                return Ok(ApplyOutcome::default());
            }
            (_, None) => {
                let dots = self.store.dots(shard, name);
                if dots.is_none() && self.store.names >= self.limits.max_names {
                    return Err(EventualError::TooManyNames { max: self.limits.max_names });
                }
                if dots.is_some_and(|dots| dots.as_slice().len() >= MAX_ORIGINS_PER_NAME) {
                    return Err(EventualError::TooManyOrigins);
                }
                if slot.is_none() && self.origins.len() >= MAX_KNOWN_ORIGINS {
                    return Err(EventualError::TooManyKnownOrigins { max: MAX_KNOWN_ORIGINS });
                }
            }
            (_, Some(_)) => {}
        }
        let slot = match slot {
            Some(slot) => slot,
            None => self.origins.intern(origin),
        };
        let old = self.winner_dot(shard, name);
        self.store.put(&self.origins, shard, name, CompactDot { origin: slot, ..incoming });
        self.see(slot, counter);
        let outcome = self.finish(shard, name, old);
        self.enforce_tombstone_bound();
        Ok(outcome)
    }

    /// Record that counter `counter` of origin `slot` was received.
    fn see(&mut self, slot: u32, counter: u64) {
        let origin = self.origins.get_mut(slot);
        let before = origin.ack.prefix;
        if origin.ack.see(counter) {
            self.stats.ack_counters_forgotten += 1;
        }
        if origin.ack.prefix != before {
            self.clock.set(&origin.id, origin.ack.prefix);
        }
    }

    fn winner_dot(&self, shard: usize, name: &str) -> Option<CompactDot> {
        best_live(name, self.store.dots(shard, name)?.as_slice(), &self.origins)
    }

    /// The outcome of a change to `name` whose winner was `old` before.
    fn finish(&mut self, shard: usize, name: &str, old: Option<CompactDot>) -> ApplyOutcome {
        let new = self.winner_dot(shard, name);
        let mut outcome = ApplyOutcome { changed: true, winner_changed: None, lost: None };
        if same_winner(old, new) {
            return outcome;
        }
        // A local process lost by ranking (not by its own unregister) if it was the winner and its
        // own dot is still live with the same pid.
        let mine = self.local_dot(shard, name);
        if let Some(old_dot) = old
            && old_dot.origin == self.local_origin
            && new.is_some()
            && let Some(mine) = mine
            && !mine.tombstone
            && mine.local == old_dot.local
            && self.reported_losses.get(name) != Some(&mine.counter)
        {
            self.reported_losses.insert(name.into(), mine.counter);
            outcome.lost = Some((name.to_owned(), live_of(&self.origins, &old_dot).pid));
        }
        if mine.is_none_or(|dot| dot.tombstone) {
            self.reported_losses.remove(name);
        }
        outcome.winner_changed = Some(WinnerChange {
            name: name.to_owned(),
            old: old.map(|dot| live_of(&self.origins, &dot)),
            new: new.map(|dot| live_of(&self.origins, &dot)),
        });
        outcome
    }

    /// Merge another replica's whole state (its dots and departed origins) into this one. Dots the
    /// bounds refuse are counted in [`MergeOutcome::refused`]; the rest are applied. When nothing was
    /// refused this replica now holds everything `other` acknowledged, so it adopts `other`'s
    /// acknowledgement too (see [`EventualState::version_vector`]).
    pub fn merge(&mut self, other: &EventualState) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        for origin in &other.departed {
            outcome.absorb_merge(self.depart(origin));
        }
        for (index, shard) in other.store.shards.iter().enumerate() {
            for (name, dots) in &shard.names {
                for dot in dots.as_slice() {
                    let origin = other.origins.id(dot.origin);
                    match self.apply_write(index, name, origin, dot.counter, Write::of_dot(dot)) {
                        Ok(applied) => outcome.absorb(applied),
                        Err(_) => outcome.refused += 1,
                    }
                }
            }
        }
        if outcome.refused == 0 {
            for (_, theirs) in other.origins.iter() {
                if theirs.ack.prefix == 0 && theirs.ack.above.is_empty() {
                    continue;
                }
                self.join_ack(&theirs.id, |ack| ack.join(&theirs.ack));
            }
        }
        outcome
    }

    /// Merge validated (name, dot) entries of shard `shard`, e.g. a peer's (see `digest`).
    /// Acknowledgements do not move: a shard does not say which counters of its origins it covers.
    pub(crate) fn merge_entries<'a>(
        &mut self,
        shard: usize,
        entries: impl IntoIterator<Item = &'a Delta>,
    ) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        for delta in entries {
            match self.apply_valid(shard, delta) {
                Ok(applied) => outcome.absorb(applied),
                Err(_) => outcome.refused += 1,
            }
        }
        outcome
    }

    /// Once anti-entropy left this replica's digest equal to a peer's (`peer_digest`, sent with the
    /// peer's [`EventualState::version_vector`] `peer_clock`), adopt the peer's acknowledgement:
    /// equal content means this replica holds the effect of every counter the peer received (those
    /// the peer collected were acknowledged by every live node, this one included). This is what
    /// closes a gap left by a lost delta, which shard pulls alone never close. Returns whether the
    /// digests were equal; on unequal digests nothing changes. Relies on equal digests meaning equal
    /// content (see `digest`: a 2^-64 chance per shard of a false match).
    pub fn adopt_peer_clock(&mut self, peer_digest: &Digest, peer_clock: &VersionVector) -> bool {
        if self.digest() != *peer_digest {
            return false;
        }
        for (origin, counter) in peer_clock.iter() {
            self.join_ack(origin, |ack| {
                ack.raise(counter);
                0
            });
        }
        true
    }

    /// Apply `change` to the acknowledgement of `origin`, interning it if there is room; a departed
    /// origin is skipped.
    fn join_ack(&mut self, origin: &NodeId, change: impl FnOnce(&mut super::store::Ack) -> u64) {
        if self.is_departed(origin) {
            return;
        }
        let slot = match self.origins.lookup(origin) {
            Some(slot) => slot,
            None if self.origins.len() < MAX_KNOWN_ORIGINS => self.origins.intern(origin),
            None => return,
        };
        let mine = self.origins.get_mut(slot);
        self.stats.ack_counters_forgotten += change(&mut mine.ack);
        self.clock.set(&mine.id, mine.ack.prefix);
    }

    /// The origins (node runs) this replica holds entries or an acknowledgement of (at most
    /// [`MAX_KNOWN_ORIGINS`]).
    pub fn origin_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.origins.iter().map(|(_, o)| &o.id)
    }

    /// Whether `origin` departed: a departure of the same node name with an equal or larger
    /// incarnation is remembered.
    pub fn is_departed(&self, origin: &NodeId) -> bool {
        // At most one marker per node name, so the first id at or after `origin` decides.
        self.departed.range(origin..).next().is_some_and(|marker| marker.name == origin.name)
    }

    /// Node `origin` departed: drop every dot it wrote, and those of the same node's older
    /// incarnations (`(name, m)` with `m <= origin.incarnation`, restarted runs), and ignore any
    /// later dot from them. Every survivor calls this; the result is the same whatever the order of
    /// departures and deltas.
    pub fn depart(&mut self, origin: &NodeId) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        if self.is_departed(origin) {
            return outcome;
        }
        let older: Vec<NodeId> =
            self.departed.range(NodeId::new(origin.name.clone(), 0)..origin.clone()).cloned().collect();
        for marker in older {
            self.departed.remove(&marker);
        }
        self.departed.insert(origin.clone());
        outcome.changed = true;
        let victims: Vec<u32> = self
            .origins
            .iter()
            .filter(|(_, o)| o.id.name == origin.name && o.id.incarnation <= origin.incarnation)
            .map(|(slot, _)| slot)
            .collect();
        if !victims.is_empty() {
            self.drop_origins(&victims, &mut outcome);
        }
        while self.departed.len() > self.limits.max_departed {
            self.departed.pop_first();
            self.stats.departed_forgotten += 1;
        }
        outcome
    }

    /// Remove every dot of the `victims` slots (one pass over all names) and release the slots.
    fn drop_origins(&mut self, victims: &[u32], outcome: &mut MergeOutcome) {
        for shard in 0..self.store.shards.len() {
            let affected: Vec<Box<str>> = self.store.shards[shard]
                .names
                .iter()
                .filter(|(_, dots)| dots.as_slice().iter().any(|dot| victims.contains(&dot.origin)))
                .map(|(name, _)| name.clone())
                .collect();
            for name in affected {
                let old = self.winner_dot(shard, &name);
                for &victim in victims {
                    self.store.take(&self.origins, shard, &name, victim);
                }
                outcome.absorb(self.finish(shard, &name, old));
            }
        }
        for &victim in victims {
            let origin = self.origins.get_mut(victim);
            self.clock.remove(&origin.id);
            if victim == self.local_origin {
                // The local slot stays (module invariant); its past is gone with its dots.
                origin.ack = Default::default();
                origin.watermark = 0;
            } else {
                self.origins.release(victim);
            }
        }
    }

    /// Anti-entropy from an origin itself: `shard` is `origin`'s own copy of one shard, taken after
    /// its write counter reached `origin_counter`. An origin drops one of its own dots only when a
    /// later write of its own replaces it (then its copy holds that write) or when it collects a
    /// tombstone that replaced it. So a *live* dot of `origin` held here, at or below
    /// `origin_counter`, for a name the origin's copy has no dot of its own for, was superseded and
    /// its tombstone collected: it is removed. This repairs a replica that kept a live entry while
    /// it was cut off (for example declared down and readmitted) when the rest of the cluster
    /// collected its tombstone. Tombstones here are left to normal collection. Call it after
    /// merging the same shard, with `origin` the authenticated sender.
    pub fn prune_superseded_by_origin(
        &mut self,
        shard: &crate::eventual::ShardState,
        origin: &NodeId,
        origin_counter: u64,
    ) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        let index = shard.shard;
        if index >= self.store.shards.len() || *origin == self.local {
            return outcome;
        }
        let Some(slot) = self.origins.lookup(origin) else { return outcome };
        let held: BTreeSet<&str> =
            shard.entries.iter().filter(|d| d.dot.origin == *origin).map(|d| d.name.as_str()).collect();
        let stale: Vec<Box<str>> = self.store.shards[index]
            .names
            .iter()
            .filter(|(name, dots)| {
                dots.get(slot).is_some_and(|d| !d.tombstone && d.counter <= origin_counter) && !held.contains(&***name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let old = self.winner_dot(index, &name);
            if self.store.take(&self.origins, index, &name, slot).is_some() {
                outcome.absorb(self.finish(index, &name, old));
            }
        }
        outcome
    }

    /// Node `origin` is reachable again under the same identity (it was declared down by mistake and
    /// renewed): accept its dots again; its state comes back through anti-entropy. Returns whether
    /// it was departed. Departure markers are derived from each node's membership view, so this
    /// keeps replicas that agree on membership in agreement.
    pub fn readmit(&mut self, origin: &NodeId) -> bool {
        self.departed.remove(origin)
    }

    /// Drop every tombstone that every live node has seen (`seen_by_all`: the pointwise minimum of the
    /// live nodes' acknowledgements, see [`VersionVector`]; it is capped by this replica's own).
    /// Raises each origin's watermark to that point. Returns how many tombstones were collected.
    pub fn collect_tombstones(&mut self, seen_by_all: &VersionVector) -> usize {
        let thresholds: BTreeMap<u32, u64> = self
            .origins
            .iter()
            .map(|(slot, origin)| (slot, seen_by_all.get(&origin.id).min(origin.ack.prefix)))
            .filter(|(_, threshold)| *threshold > 0)
            .collect();
        let highest = thresholds.values().copied().max().unwrap_or(0);
        let ripe: Vec<TombstoneKey> = self
            .store
            .tombstones
            .iter()
            .take_while(|(counter, _, _)| *counter <= highest)
            .filter(|(counter, _, slot)| thresholds.get(slot).is_some_and(|threshold| counter <= threshold))
            .cloned()
            .collect();
        for (_, name, slot) in &ripe {
            self.store.take(&self.origins, shard_of(name), name, *slot);
        }
        for (slot, threshold) in thresholds {
            let origin = self.origins.get_mut(slot);
            origin.watermark = origin.watermark.max(threshold);
        }
        self.stats.tombstones_collected += ripe.len() as u64;
        ripe.len()
    }

    /// Beyond [`Limits::max_tombstones`], collect the oldest (lowest counter, then name, then origin
    /// `NodeId`, the same choice on every replica) early and count it: memory stays bounded at the
    /// risk of a late stale write reappearing.
    fn enforce_tombstone_bound(&mut self) {
        while self.store.tombstones.len() > self.limits.max_tombstones {
            let Some((counter, name, _)) = self.store.tombstones.first().cloned() else { break };
            let Some(slot) = self
                .store
                .tombstones
                .range((counter, name.clone(), 0)..=(counter, name.clone(), u32::MAX))
                .map(|(_, _, slot)| *slot)
                .min_by(|a, b| self.origins.id(*a).cmp(self.origins.id(*b)))
            else {
                break;
            };
            self.store.take(&self.origins, shard_of(&name), &name, slot);
            self.stats.tombstones_collected_early += 1;
        }
    }

    /// The visible owner of `name`: the live dot with the largest [`rank`]. Owned, because the
    /// state keeps dots in compact form.
    pub fn winner(&self, name: &str) -> Option<Live> {
        self.winner_dot(shard_of(name), name).map(|dot| live_of(&self.origins, &dot))
    }

    /// Every name with a visible owner and that owner, in (shard, name) order.
    pub fn winners(&self) -> impl Iterator<Item = (&str, Live)> {
        self.store.shards.iter().flat_map(move |shard| {
            shard.names.iter().filter_map(move |(name, dots)| {
                best_live(name, dots.as_slice(), &self.origins).map(|dot| (&**name, live_of(&self.origins, &dot)))
            })
        })
    }

    /// The dots held for `name`, in origin order.
    pub fn dots(&self, name: &str) -> impl Iterator<Item = Dot> {
        let dots = self.store.dots(shard_of(name), name).map(|dots| dots.as_slice()).unwrap_or_default();
        dots.iter().map(move |dot| dot_of(&self.origins, dot))
    }

    /// Every (name, dot) held, in (shard, name, origin) order: the replicated content.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Dot)> {
        (0..self.store.shards.len()).flat_map(move |shard| self.shard_entries(shard))
    }

    /// The (name, dot) pairs of one shard, in (name, origin) order.
    pub(crate) fn shard_entries(&self, shard: usize) -> impl Iterator<Item = (&str, Dot)> {
        self.store.shards[shard]
            .names
            .iter()
            .flat_map(move |(name, dots)| dots.as_slice().iter().map(move |dot| (&**name, dot_of(&self.origins, dot))))
    }

    /// The departed origins remembered, in order (at most one per node name: the largest
    /// incarnation departed).
    pub fn departed(&self) -> impl Iterator<Item = &NodeId> {
        self.departed.iter()
    }

    /// Whether `other` holds the same replicated content (dots and departed origins); local
    /// bookkeeping (acknowledgements, reported losses, counters) is not compared.
    pub fn same_content(&self, other: &EventualState) -> bool {
        let same_dot = |a: &CompactDot, b: &CompactDot| {
            (a.counter, a.tombstone, a.local, a.priority) == (b.counter, b.tombstone, b.local, b.priority)
                && self.origins.id(a.origin) == other.origins.id(b.origin)
        };
        self.departed == other.departed
            && self.store.names == other.store.names
            && self.store.shards.iter().zip(other.store.shards.iter()).all(|(ours, theirs)| {
                ours.names.len() == theirs.names.len()
                    && ours.names.iter().zip(&theirs.names).all(|((name_a, dots_a), (name_b, dots_b))| {
                        let (a, b) = (dots_a.as_slice(), dots_b.as_slice());
                        name_a == name_b && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_dot(x, y))
                    })
            })
    }

    /// This node's acknowledgement per origin: the contiguous prefix of counters received (see the
    /// module header). Exchange it with the digests; the meet over live nodes feeds
    /// [`EventualState::collect_tombstones`].
    pub fn version_vector(&self) -> &VersionVector {
        &self.clock
    }

    /// How many names are held (live or tombstoned).
    pub fn name_count(&self) -> usize {
        self.store.names
    }

    /// How many tombstones are held.
    pub fn tombstone_count(&self) -> usize {
        self.store.tombstones.len()
    }

    /// How many origins this replica tracks (bounded by [`MAX_KNOWN_ORIGINS`]; includes itself).
    pub fn origin_count(&self) -> usize {
        self.origins.len()
    }

    /// What the bounds evicted or ignored so far.
    pub fn stats(&self) -> EventualStats {
        self.stats
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    #[cfg(test)]
    pub(crate) fn origins(&self) -> &Origins {
        &self.origins
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventual::differing_shards;

    fn node(name: &str) -> NodeId {
        NodeId::new(name, 1)
    }

    #[test]
    fn register_then_unregister_leaves_a_tombstone_and_no_winner() {
        let mut state = EventualState::new(node("a"));
        let pid = Pid::new(node("a"), 7);
        let delta = state.register("svc", pid.clone(), 0).unwrap();
        assert_eq!(delta.dot.counter, 1);
        assert_eq!(state.winner("svc").map(|l| l.pid), Some(pid.clone()));
        let delta = state.unregister("svc").unwrap();
        assert_eq!((delta.dot.counter, delta.dot.value), (2, Value::Tombstone));
        assert_eq!(state.winner("svc"), None);
        assert_eq!(state.tombstone_count(), 1);
    }

    #[test]
    fn register_of_a_remote_pid_is_refused() {
        let mut state = EventualState::new(node("a"));
        let err = state.register("svc", Pid::new(node("b"), 1), 0).unwrap_err();
        assert!(matches!(err, EventualError::PidNotOnOrigin { .. }));
        assert_eq!(state.name_count(), 0);
    }

    #[test]
    fn second_local_process_gets_already_registered() {
        let mut state = EventualState::new(node("a"));
        state.register("svc", Pid::new(node("a"), 1), 0).unwrap();
        let err = state.register("svc", Pid::new(node("a"), 2), 0).unwrap_err();
        assert_eq!(err, EventualError::AlreadyRegistered { pid: Pid::new(node("a"), 1) });
    }

    #[test]
    fn unregister_of_unknown_name_is_not_registered() {
        let mut state = EventualState::new(node("a"));
        assert_eq!(state.unregister("svc").unwrap_err(), EventualError::NotRegistered);
    }

    #[test]
    fn names_are_bounded_in_length() {
        let mut state = EventualState::new(node("a"));
        let pid = Pid::new(node("a"), 1);
        assert_eq!(state.register("", pid.clone(), 0).unwrap_err(), EventualError::EmptyName);
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(state.register(&long, pid.clone(), 0).unwrap_err(), EventualError::NameTooLong { len: 256 });
        assert!(state.register(&"n".repeat(MAX_NAME_BYTES), pid, 0).is_ok());
    }

    #[test]
    fn higher_priority_wins_whatever_the_origin() {
        let mut a = EventualState::new(node("a"));
        let mut b = EventualState::new(node("b"));
        let da = a.register("svc", Pid::new(node("a"), 1), 1).unwrap();
        let db = b.register("svc", Pid::new(node("b"), 1), 9).unwrap();
        a.apply(&db).unwrap();
        b.apply(&da).unwrap();
        assert_eq!(a.winner("svc").unwrap().pid, Pid::new(node("b"), 1));
        assert_eq!(b.winner("svc").unwrap().pid, Pid::new(node("b"), 1));
    }

    #[test]
    fn delete_wins_over_an_equal_counter_write_from_the_same_origin() {
        let mut state = EventualState::new(node("a"));
        let origin = node("b");
        let live = Dot {
            origin: origin.clone(),
            counter: 3,
            value: Value::Live(Live { pid: Pid::new(origin.clone(), 1), priority: 0 }),
        };
        let dead = Dot { origin, counter: 3, value: Value::Tombstone };
        state.apply(&Delta { name: "svc".into(), dot: dead.clone() }).unwrap();
        let outcome = state.apply(&Delta { name: "svc".into(), dot: live }).unwrap();
        assert!(!outcome.changed);
        assert_eq!(state.winner("svc"), None);
    }

    #[test]
    fn a_tombstone_does_not_hide_another_origins_entry() {
        let mut state = EventualState::new(node("a"));
        state.register("svc", Pid::new(node("a"), 1), 0).unwrap();
        let tomb = Delta { name: "svc".into(), dot: Dot { origin: node("b"), counter: 99, value: Value::Tombstone } };
        state.apply(&tomb).unwrap();
        assert_eq!(state.winner("svc").unwrap().pid, Pid::new(node("a"), 1));
    }

    #[test]
    fn peer_delta_with_a_pid_of_another_node_is_refused() {
        let mut state = EventualState::new(node("a"));
        let bad = Delta {
            name: "svc".into(),
            dot: Dot {
                origin: node("b"),
                counter: 1,
                value: Value::Live(Live { pid: Pid::new(node("c"), 1), priority: 0 }),
            },
        };
        assert!(matches!(state.apply(&bad), Err(EventualError::PidNotOnOrigin { .. })));
        let zero = Delta { name: "svc".into(), dot: Dot { origin: node("b"), counter: 0, value: Value::Tombstone } };
        assert_eq!(state.apply(&zero).unwrap_err(), EventualError::ZeroCounter);
        let bad_origin =
            Delta { name: "svc".into(), dot: Dot { origin: node("b c"), counter: 1, value: Value::Tombstone } };
        assert_eq!(state.apply(&bad_origin).unwrap_err(), EventualError::InvalidOrigin);
        assert_eq!(state.name_count(), 0);
    }

    #[test]
    fn losing_local_process_is_reported_once_even_if_the_delta_is_reapplied() {
        let mut state = EventualState::new(node("a"));
        let mine = Pid::new(node("a"), 1);
        state.register("svc", mine.clone(), 0).unwrap();
        let theirs = Delta {
            name: "svc".into(),
            dot: Dot {
                origin: node("b"),
                counter: 1,
                value: Value::Live(Live { pid: Pid::new(node("b"), 1), priority: 5 }),
            },
        };
        let first = state.apply(&theirs).unwrap();
        assert_eq!(first.lost, Some(("svc".to_owned(), mine)));
        assert!(first.winner_changed.is_some());
        let again = state.apply(&theirs).unwrap();
        assert_eq!(again, ApplyOutcome::default());
    }

    #[test]
    fn losing_again_after_winning_back_is_not_reported_twice() {
        let mut state = EventualState::new(node("a"));
        state.register("svc", Pid::new(node("a"), 1), 0).unwrap();
        let live = |counter| Delta {
            name: "svc".into(),
            dot: Dot {
                origin: node("b"),
                counter,
                value: Value::Live(Live { pid: Pid::new(node("b"), 1), priority: 5 }),
            },
        };
        assert!(state.apply(&live(1)).unwrap().lost.is_some());
        let tomb = Delta { name: "svc".into(), dot: Dot { origin: node("b"), counter: 2, value: Value::Tombstone } };
        assert_eq!(state.apply(&tomb).unwrap().lost, None);
        assert_eq!(state.apply(&live(3)).unwrap().lost, None);
    }

    #[test]
    fn own_unregister_is_not_reported_as_a_loss() {
        let mut state = EventualState::new(node("a"));
        state.register("svc", Pid::new(node("a"), 1), 9).unwrap();
        let theirs = Delta {
            name: "svc".into(),
            dot: Dot {
                origin: node("b"),
                counter: 1,
                value: Value::Live(Live { pid: Pid::new(node("b"), 1), priority: 0 }),
            },
        };
        state.apply(&theirs).unwrap();
        let delta = state.unregister("svc").unwrap();
        // Re-applying our own tombstone changes nothing; the change itself happened in unregister.
        assert_eq!(state.apply(&delta).unwrap(), ApplyOutcome::default());
        assert_eq!(state.winner("svc").unwrap().pid, Pid::new(node("b"), 1));
    }

    #[test]
    fn departure_drops_the_origins_entries_and_ignores_late_deltas() {
        let mut state = EventualState::new(node("a"));
        let late = Delta {
            name: "svc".into(),
            dot: Dot {
                origin: node("b"),
                counter: 4,
                value: Value::Live(Live { pid: Pid::new(node("b"), 1), priority: 0 }),
            },
        };
        state.apply(&late).unwrap();
        let outcome = state.depart(&node("b"));
        assert!(outcome.changed);
        assert_eq!(outcome.winner_changes.len(), 1);
        assert_eq!(state.winner("svc"), None);
        assert!(!state.apply(&late).unwrap().changed);
        assert_eq!(state.name_count(), 0);
        assert_eq!(state.stats().stale_ignored, 1);
    }

    #[test]
    fn tombstones_seen_by_all_are_collected_and_stale_writes_stay_out() {
        let mut state = EventualState::new(node("a"));
        let b = node("b");
        let live = Delta {
            name: "svc".into(),
            dot: Dot {
                origin: b.clone(),
                counter: 1,
                value: Value::Live(Live { pid: Pid::new(b.clone(), 1), priority: 0 }),
            },
        };
        let tomb = Delta { name: "svc".into(), dot: Dot { origin: b.clone(), counter: 2, value: Value::Tombstone } };
        state.apply(&live).unwrap();
        state.apply(&tomb).unwrap();
        let mut seen = VersionVector::new();
        seen.observe(&b, 1);
        assert_eq!(state.collect_tombstones(&seen), 0);
        seen.observe(&b, 2);
        assert_eq!(state.collect_tombstones(&seen), 1);
        assert_eq!(state.tombstone_count(), 0);
        assert_eq!(state.name_count(), 0);
        assert!(!state.apply(&live).unwrap().changed);
        assert_eq!(state.winner("svc"), None);
    }

    #[test]
    fn tombstones_beyond_the_bound_are_collected_early_and_counted() {
        let limits = Limits { max_tombstones: 2, ..Limits::default() };
        let mut state = EventualState::with_limits(node("a"), limits);
        for i in 0..4 {
            let name = format!("n{i}");
            state.register(&name, Pid::new(node("a"), i), 0).unwrap();
            state.unregister(&name).unwrap();
        }
        assert_eq!(state.tombstone_count(), 2);
        assert_eq!(state.stats().tombstones_collected_early, 2);
        // The oldest (n0, n1) went first.
        assert_eq!(state.dots("n0").count(), 0);
        assert_eq!(state.dots("n3").count(), 1);
    }

    #[test]
    fn names_beyond_the_bound_are_refused() {
        let limits = Limits { max_names: 1, ..Limits::default() };
        let mut state = EventualState::with_limits(node("a"), limits);
        state.register("one", Pid::new(node("a"), 1), 0).unwrap();
        assert_eq!(
            state.register("two", Pid::new(node("a"), 2), 0).unwrap_err(),
            EventualError::TooManyNames { max: 1 }
        );
    }

    #[test]
    fn departed_markers_are_bounded() {
        let limits = Limits { max_departed: 2, ..Limits::default() };
        let mut state = EventualState::with_limits(node("a"), limits);
        for name in ["b", "c", "d"] {
            state.depart(&node(name));
        }
        assert_eq!(state.departed().count(), 2);
        assert_eq!(state.stats().departed_forgotten, 1);
    }

    fn live_delta(name: &str, origin: &NodeId, counter: u64) -> Delta {
        let value = Value::Live(Live { pid: Pid::new(origin.clone(), counter), priority: 0 });
        Delta { name: name.into(), dot: Dot { origin: origin.clone(), counter, value } }
    }

    fn tomb_delta(name: &str, origin: &NodeId, counter: u64) -> Delta {
        Delta { name: name.into(), dot: Dot { origin: origin.clone(), counter, value: Value::Tombstone } }
    }

    #[test]
    fn out_of_order_delivery_does_not_let_collection_lose_an_earlier_write() {
        // b writes y (1), x (2), deletes x (3); this replica receives 2 and 3 before 1. With the
        // largest counter as acknowledgement, collecting at 3 would make y's late delta look stale.
        let b = node("b");
        let mut state = EventualState::new(node("a"));
        state.apply(&live_delta("x", &b, 2)).unwrap();
        state.apply(&tomb_delta("x", &b, 3)).unwrap();
        assert_eq!(state.version_vector().get(&b), 0);
        let mut everyone = VersionVector::new();
        everyone.observe(&b, 3);
        assert_eq!(state.collect_tombstones(&everyone), 0, "capped by this replica's own acknowledgement");
        assert!(state.apply(&live_delta("y", &b, 1)).unwrap().changed);
        assert_eq!(state.version_vector().get(&b), 3);
        assert_eq!(state.collect_tombstones(&everyone), 1);
        assert_eq!(state.winner("y").unwrap().pid, Pid::new(b.clone(), 1));
        // Re-deliveries at or below the watermark stay out.
        assert!(!state.apply(&live_delta("x", &b, 2)).unwrap().changed);
        assert_eq!(state.dots("x").count(), 0);
    }

    #[test]
    fn a_lost_delta_stalls_collection_until_equal_digests_vouch_for_it() {
        let (a, b) = (node("a"), node("b"));
        let mut on_a = EventualState::new(a.clone());
        let mut on_b = EventualState::new(b.clone());
        let lost = on_a.register("x", Pid::new(a.clone(), 1), 0).unwrap();
        let delivered = on_a.unregister("x").unwrap();
        on_a.register("y", Pid::new(a.clone(), 2), 0).unwrap();
        let _ = lost;
        on_b.apply(&delivered).unwrap();
        assert_eq!(on_b.version_vector().get(&a), 0);
        // Anti-entropy repairs the content (y), but a shard carries no acknowledgement.
        for shard in differing_shards(&on_b.digest(), &on_a.digest()) {
            on_b.merge_shard(&on_a.shard_state(shard).unwrap()).unwrap();
        }
        assert!(on_b.same_content(&on_a));
        assert_eq!(on_b.version_vector().get(&a), 0);
        // Unequal digests adopt nothing; equal ones adopt the peer's acknowledgement.
        assert!(!on_b.adopt_peer_clock(&[1; crate::eventual::SHARD_COUNT], on_a.version_vector()));
        assert!(on_b.adopt_peer_clock(&on_a.digest(), on_a.version_vector()));
        assert_eq!(on_b.version_vector().get(&a), 3);
        let seen = on_a.version_vector().meet(on_b.version_vector());
        assert_eq!(on_b.collect_tombstones(&seen), 1);
        assert_eq!(on_a.collect_tombstones(&seen), 1);
        assert!(on_b.same_content(&on_a));
    }

    #[test]
    fn whole_state_merge_adopts_the_peers_acknowledgement() {
        let a = node("a");
        let mut on_a = EventualState::new(a.clone());
        on_a.register("x", Pid::new(a.clone(), 1), 0).unwrap();
        on_a.unregister("x").unwrap();
        let mut on_c = EventualState::new(node("c"));
        on_c.merge(&on_a);
        assert_eq!(on_c.version_vector().get(&a), 2);
    }

    #[test]
    fn departing_a_node_drops_its_older_incarnations_and_ignores_their_late_deltas() {
        let (old, current, newer) = (NodeId::new("b", 1), NodeId::new("b", 2), NodeId::new("b", 3));
        let mut state = EventualState::new(node("a"));
        state.apply(&live_delta("x", &old, 1)).unwrap();
        state.apply(&live_delta("y", &newer, 1)).unwrap();
        let outcome = state.depart(&current);
        assert_eq!(outcome.winner_changes.len(), 1);
        assert!(state.is_departed(&old) && state.is_departed(&current) && !state.is_departed(&newer));
        assert_eq!(state.dots("x").count(), 0);
        assert!(!state.apply(&live_delta("z", &old, 2)).unwrap().changed);
        assert!(!state.apply(&live_delta("z", &current, 1)).unwrap().changed);
        assert_eq!(state.winner("y").unwrap().pid.node, newer);
        // Departing the older run afterwards is covered already: nothing changes.
        assert!(!state.depart(&old).changed);
        assert_eq!(state.departed().cloned().collect::<Vec<_>>(), vec![current.clone()]);
        // Departing the newer run replaces the marker.
        assert!(state.depart(&newer).changed);
        assert_eq!(state.departed().cloned().collect::<Vec<_>>(), vec![newer]);
        assert_eq!(state.name_count(), 0);
        assert_eq!(state.origin_count(), 1);
    }

    #[test]
    fn departure_markers_of_older_and_newer_runs_end_the_same_in_either_order() {
        let (old, newer) = (NodeId::new("b", 1), NodeId::new("b", 4));
        let mut one = EventualState::new(node("a"));
        one.depart(&old);
        one.depart(&newer);
        let mut other = EventualState::new(node("a"));
        other.depart(&newer);
        other.depart(&old);
        assert!(one.same_content(&other));
    }

    #[test]
    fn dots_from_origins_beyond_the_known_bound_are_refused_but_local_writes_are_not() {
        let mut state = EventualState::new(node("a"));
        for i in 1..MAX_KNOWN_ORIGINS {
            state.apply(&live_delta(&format!("x{i}"), &NodeId::new(format!("n{i}"), 1), 1)).unwrap();
        }
        assert_eq!(state.origin_count(), MAX_KNOWN_ORIGINS);
        let refused = state.apply(&live_delta("y", &node("late"), 1)).unwrap_err();
        assert_eq!(refused, EventualError::TooManyKnownOrigins { max: MAX_KNOWN_ORIGINS });
        assert_eq!(state.dots("y").count(), 0);
        state.register("y", Pid::new(node("a"), 1), 0).unwrap();
        // A departure frees the slot for a new origin.
        state.depart(&NodeId::new("n1", 1));
        state.apply(&live_delta("y", &node("late"), 1)).unwrap();
    }

    #[test]
    fn early_tombstone_collection_picks_the_same_origin_on_every_replica() {
        let limits = Limits { max_tombstones: 1, ..Limits::default() };
        let (b, c) = (node("b"), node("c"));
        // The two replicas intern b and c in opposite orders.
        let mut one = EventualState::with_limits(node("a"), limits);
        one.apply(&tomb_delta("x", &b, 1)).unwrap();
        one.apply(&tomb_delta("x", &c, 1)).unwrap();
        let mut other = EventualState::with_limits(node("a"), limits);
        other.apply(&tomb_delta("x", &c, 1)).unwrap();
        other.apply(&tomb_delta("x", &b, 1)).unwrap();
        assert!(one.same_content(&other));
        assert_eq!(one.dots("x").map(|dot| dot.origin).collect::<Vec<_>>(), vec![c]);
    }

    #[test]
    fn rank_depends_only_on_name_origin_and_priority() {
        let origin = node("b");
        assert_eq!(rank("svc", &origin, 3), rank("svc", &origin.clone(), 3));
        assert!(rank("svc", &origin, 4) > rank("svc", &node("zzz"), 3));
        assert!(rank("svc", &NodeId::new("b", 2), 0) > rank("svc", &NodeId::new("b", 1), 0));
    }
}
