//! The eventual tier's replicated state: a pure, I/O-free CRDT mapping a name to its owner.
//!
//! Role: [`EventualState`] holds, per name, at most one [`Dot`] per origin node (the node that wrote
//! it): a counter from that origin and either a [`Live`] registration or a tombstone. Local writes
//! ([`EventualState::register`], [`EventualState::unregister`]) return a [`Delta`] for the caller to
//! gossip; peers' deltas go through [`EventualState::apply`], whole states through
//! [`EventualState::merge`]. The owning actor does all I/O (SPEC section 7, STYLE section 1).
//!
//! Invariants:
//! - Join of two dots of the same (name, origin): the higher counter wins; on an equal counter a
//!   tombstone beats a live write ("delete wins"), and two live writes are ordered by
//!   (priority, pid) so the join stays a total, commutative choice even for a misbehaving origin.
//! - The visible winner of a name is chosen among live dots only (a tombstone never hides another
//!   origin's entry) by [`rank`], a function of (name, origin, priority) alone: no clock, counter or
//!   pid takes part, so every replica with the same dots shows the same winner.
//! - Departure is an origin-level tombstone: a departed origin's dots are dropped and any later dot
//!   from it is ignored, so the result does not depend on the order of departures and deltas.
//! - Everything a peer sends is validated before it touches the state; no input panics.
//! - Sizes are bounded ([`MAX_NAME_BYTES`], [`MAX_NAMES`], [`MAX_ORIGINS_PER_NAME`],
//!   [`MAX_TOMBSTONES`], [`MAX_DEPARTED_ORIGINS`]); what a bound refuses is a typed error, what it
//!   evicts is counted in [`EventualStats`].

use std::collections::{BTreeMap, BTreeSet};

use cohort_actors::Pid;
use cohort_actors::pid::is_valid_node_name;
use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Longest registered name, in bytes. Names are keys in every replica and travel in every delta and
/// shard; 255 bytes is ample for service names and keeps a delta well under one frame.
pub const MAX_NAME_BYTES: usize = 255;

/// Most names (live or tombstoned) one replica holds. Every node holds the whole map, so this bounds
/// every node's memory (about 100k names x a few origins x ~150 bytes is some tens of MiB).
pub const MAX_NAMES: usize = 100_000;

/// Most origins with a dot for one name. A dot per origin means at most one per cluster node; 256
/// is above any cluster this runtime targets and caps what one name can cost a shard transfer.
pub const MAX_ORIGINS_PER_NAME: usize = 256;

/// Most tombstones one replica keeps. Tombstones wait for every live node to have seen them; a node
/// that never acknowledges (partitioned, slow) must not grow memory without bound, so beyond this the
/// oldest are collected early (counted in [`EventualStats::tombstones_collected_early`]).
pub const MAX_TOMBSTONES: usize = 10_000;

/// Most departed origins remembered. A departed `NodeId` (name + incarnation) never comes back, so its
/// marker only guards against late deltas; beyond this bound the smallest ids are forgotten (counted).
pub const MAX_DEPARTED_ORIGINS: usize = 1_024;

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

/// One origin's entry for one name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that wrote this entry.
    pub origin: NodeId,
    /// The origin's counter at the write, starting at 1, strictly increasing per origin.
    pub counter: u64,
    /// What was written.
    pub value: Value,
}

impl Dot {
    /// Whether this dot wins the join against `other` (a dot of the same name and origin): higher
    /// counter, then tombstone over live, then the larger (priority, pid). Total and antisymmetric, so
    /// the join is commutative, associative and idempotent.
    fn supersedes(&self, other: &Dot) -> bool {
        use std::cmp::Ordering::*;
        match self.counter.cmp(&other.counter) {
            Greater => true,
            Less => false,
            Equal => match (&self.value, &other.value) {
                (Value::Tombstone, Value::Live(_)) => true,
                (Value::Live(a), Value::Live(b)) => a > b,
                _ => false,
            },
        }
    }

    fn live(&self) -> Option<&Live> {
        match &self.value {
            Value::Live(live) => Some(live),
            Value::Tombstone => None,
        }
    }
}

/// One write to gossip: a dot for a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The name written.
    pub name: String,
    /// The origin's entry for it.
    pub dot: Dot,
}

/// Highest counter seen per origin. A node's clock acknowledges origin `o` up to `c` only once it
/// holds `o`'s whole state up to `c`; the pointwise minimum over live nodes ([`VersionVector::meet`])
/// is what [`EventualState::collect_tombstones`] takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// An empty vector (nothing seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter seen for `origin` (0 if none).
    pub fn get(&self, origin: &NodeId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Record that `origin`'s counter `counter` was seen (keeps the maximum).
    pub fn observe(&mut self, origin: &NodeId, counter: u64) {
        if counter > self.get(origin) {
            self.0.insert(origin.clone(), counter);
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
    /// Every winner change, in name order.
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
    /// Dots ignored because their origin departed or their tombstone was already collected.
    pub stale_ignored: u64,
}

/// The rank of a live dot for a name; the live dot with the largest rank is the winner.
///
/// Ranking rule, a function of (name, origin, priority) only: first the higher `priority`; then the
/// larger 64-bit hash (first 8 bytes of SHA-256, big-endian) of the length-prefixed name and origin
/// node name, which spreads wins across nodes per name instead of always favouring one node; then the
/// higher origin incarnation (a restarted node over its past); then the origin name (ties of the hash).
/// Counters, pids and clocks never take part, so delivery order cannot change the winner.
pub fn rank(name: &str, origin: &NodeId, priority: u8) -> (u8, u64, u64, String) {
    let mut hasher = Sha256::new();
    hasher.update(b"cohort-eventual-rank\0");
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update((origin.name.len() as u64).to_be_bytes());
    hasher.update(origin.name.as_bytes());
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    (priority, u64::from_be_bytes(first), origin.incarnation, origin.name.clone())
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

/// One replica of the eventual tier: the replicated dots plus this node's local bookkeeping.
#[derive(Clone, Debug)]
pub struct EventualState {
    local: NodeId,
    limits: Limits,
    /// Replicated content: name -> origin -> dot.
    names: BTreeMap<String, BTreeMap<NodeId, Dot>>,
    /// Replicated content: departed origins (grow-only, bounded).
    departed: BTreeSet<NodeId>,
    /// Index of tombstones, oldest-first by (counter, origin, name); its length is the tombstone count.
    tombstones: BTreeSet<(u64, NodeId, String)>,
    clock: VersionVector,
    /// Per origin, the highest counter of a tombstone collected normally: a dot at or below it for a
    /// (name, origin) with no entry is stale (every live node had seen past it) and is ignored.
    collected: VersionVector,
    /// name -> counter of the local registration whose loss was already reported.
    reported_losses: BTreeMap<String, u64>,
    stats: EventualStats,
}

impl EventualState {
    /// An empty replica for node `local` with the default [`Limits`].
    pub fn new(local: NodeId) -> Self {
        Self::with_limits(local, Limits::default())
    }

    /// An empty replica with explicit limits.
    pub fn with_limits(local: NodeId, limits: Limits) -> Self {
        Self {
            local,
            limits,
            names: BTreeMap::new(),
            departed: BTreeSet::new(),
            tombstones: BTreeSet::new(),
            clock: VersionVector::new(),
            collected: VersionVector::new(),
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
        if let Some(live) = self.local_dot(name).and_then(Dot::live)
            && live.pid != pid
        {
            return Err(EventualError::AlreadyRegistered { pid: live.pid.clone() });
        }
        self.local_write(name, Value::Live(Live { pid, priority }))
    }

    /// Remove this node's registration of `name`; returns the delta (a tombstone) to gossip.
    pub fn unregister(&mut self, name: &str) -> Result<Delta, EventualError> {
        validate_name(name)?;
        if self.local_dot(name).and_then(Dot::live).is_none() {
            return Err(EventualError::NotRegistered);
        }
        self.local_write(name, Value::Tombstone)
    }

    fn local_dot(&self, name: &str) -> Option<&Dot> {
        self.names.get(name).and_then(|dots| dots.get(&self.local))
    }

    fn local_write(&mut self, name: &str, value: Value) -> Result<Delta, EventualError> {
        let counter = self.clock.get(&self.local).checked_add(1).ok_or(EventualError::CounterExhausted)?;
        let delta = Delta { name: name.to_owned(), dot: Dot { origin: self.local.clone(), counter, value } };
        self.apply(&delta)?;
        // A fresh local registration may be reported again if it loses.
        self.reported_losses.remove(name);
        Ok(delta)
    }

    /// Apply a delta (local or from a peer). Validates it first; a departed origin's or an already
    /// collected dot is ignored (`changed == false`). Applying the same delta twice changes nothing
    /// the second time and reports nothing.
    pub fn apply(&mut self, delta: &Delta) -> Result<ApplyOutcome, EventualError> {
        validate_delta(delta)?;
        let Delta { name, dot } = delta;
        if self.departed.contains(&dot.origin) {
            self.stats.stale_ignored += 1;
            return Ok(ApplyOutcome::default());
        }
        let existing = self.names.get(name).and_then(|dots| dots.get(&dot.origin));
        match existing {
            Some(current) if !dot.supersedes(current) => {
                self.clock.observe(&dot.origin, dot.counter);
                return Ok(ApplyOutcome::default());
            }
            None if dot.counter <= self.collected.get(&dot.origin) => {
                self.stats.stale_ignored += 1;
                return Ok(ApplyOutcome::default());
            }
            None => {
                if !self.names.contains_key(name) && self.names.len() >= self.limits.max_names {
                    return Err(EventualError::TooManyNames { max: self.limits.max_names });
                }
                if self.names.get(name).is_some_and(|dots| dots.len() >= MAX_ORIGINS_PER_NAME) {
                    return Err(EventualError::TooManyOrigins);
                }
            }
            Some(_) => {}
        }
        self.clock.observe(&dot.origin, dot.counter);
        let old = self.winner(name).cloned();
        let previous = self.names.entry(name.clone()).or_default().insert(dot.origin.clone(), dot.clone());
        if let Some(Dot { counter, value: Value::Tombstone, origin }) = previous {
            self.tombstones.remove(&(counter, origin, name.clone()));
        }
        if dot.value == Value::Tombstone {
            self.tombstones.insert((dot.counter, dot.origin.clone(), name.clone()));
        }
        let outcome = self.outcome_for(name, old);
        self.enforce_tombstone_bound();
        Ok(outcome)
    }

    /// The outcome of a change to `name` whose winner was `old` before.
    fn outcome_for(&mut self, name: &str, old: Option<Live>) -> ApplyOutcome {
        let new = self.winner(name).cloned();
        let mut outcome = ApplyOutcome { changed: true, winner_changed: None, lost: None };
        if old == new {
            return outcome;
        }
        // A local process lost by ranking (not by its own unregister) if it was the winner and its
        // own dot is still live with the same pid.
        if let Some(old_live) = &old
            && old_live.pid.node == self.local
            && let Some(local_dot) = self.local_dot(name)
            && local_dot.live().is_some_and(|l| l.pid == old_live.pid)
            && new.is_some()
        {
            let counter = local_dot.counter;
            if self.reported_losses.get(name) != Some(&counter) {
                self.reported_losses.insert(name.to_owned(), counter);
                outcome.lost = Some((name.to_owned(), old_live.pid.clone()));
            }
        }
        if self.local_dot(name).is_none_or(|d| d.live().is_none()) {
            self.reported_losses.remove(name);
        }
        outcome.winner_changed = Some(WinnerChange { name: name.to_owned(), old, new });
        outcome
    }

    /// Merge another replica's whole state (its dots and departed origins) into this one. Dots the
    /// bounds refuse are counted in [`MergeOutcome::refused`]; the rest are applied.
    pub fn merge(&mut self, other: &EventualState) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        for origin in &other.departed {
            let departed = self.depart(origin);
            outcome.changed |= departed.changed;
            outcome.winner_changes.extend(departed.winner_changes);
            outcome.lost.extend(departed.lost);
        }
        for (name, dots) in &other.names {
            for dot in dots.values() {
                outcome_apply(self, &mut outcome, Delta { name: name.clone(), dot: dot.clone() });
            }
        }
        outcome
    }

    /// Merge a list of (name, dot) entries, e.g. one shard of a peer (see `digest`).
    pub(crate) fn merge_entries<'a>(&mut self, entries: impl IntoIterator<Item = &'a Delta>) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        for delta in entries {
            outcome_apply(self, &mut outcome, delta.clone());
        }
        outcome
    }

    /// Node `origin` departed: drop every dot it wrote and ignore any later one. Every survivor calls
    /// this; the result is the same whatever the order of departures and deltas.
    pub fn depart(&mut self, origin: &NodeId) -> MergeOutcome {
        let mut outcome = MergeOutcome::default();
        if !self.departed.insert(origin.clone()) {
            return outcome;
        }
        outcome.changed = true;
        self.clock.remove(origin);
        self.collected.remove(origin);
        let affected: Vec<String> =
            self.names.iter().filter(|(_, dots)| dots.contains_key(origin)).map(|(n, _)| n.clone()).collect();
        for name in affected {
            let old = self.winner(&name).cloned();
            if let Some(dots) = self.names.get_mut(&name)
                && let Some(dot) = dots.remove(origin)
            {
                if dot.value == Value::Tombstone {
                    self.tombstones.remove(&(dot.counter, dot.origin, name.clone()));
                }
                if dots.is_empty() {
                    self.names.remove(&name);
                }
            }
            outcome.absorb(self.outcome_for(&name, old));
        }
        while self.departed.len() > self.limits.max_departed {
            self.departed.pop_first();
            self.stats.departed_forgotten += 1;
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
    /// live nodes' acknowledged clocks, see [`VersionVector`]). Returns how many were collected.
    pub fn collect_tombstones(&mut self, seen_by_all: &VersionVector) -> usize {
        let ripe: Vec<(u64, NodeId, String)> = self
            .tombstones
            .iter()
            .filter(|(counter, origin, _)| *counter <= seen_by_all.get(origin))
            .cloned()
            .collect();
        for (counter, origin, name) in &ripe {
            self.collected.observe(origin, *counter);
            self.remove_tombstone(*counter, origin, name);
        }
        self.stats.tombstones_collected += ripe.len() as u64;
        ripe.len()
    }

    fn remove_tombstone(&mut self, counter: u64, origin: &NodeId, name: &str) {
        self.tombstones.remove(&(counter, origin.clone(), name.to_owned()));
        if let Some(dots) = self.names.get_mut(name) {
            dots.remove(origin);
            if dots.is_empty() {
                self.names.remove(name);
            }
        }
    }

    /// Beyond [`Limits::max_tombstones`], collect the oldest (lowest counter, then origin, then name)
    /// early and count it: memory stays bounded at the risk of a late stale write reappearing.
    fn enforce_tombstone_bound(&mut self) {
        while self.tombstones.len() > self.limits.max_tombstones {
            let Some((counter, origin, name)) = self.tombstones.first().cloned() else { break };
            self.remove_tombstone(counter, &origin, &name);
            self.stats.tombstones_collected_early += 1;
        }
    }

    /// The visible owner of `name`: the live dot with the largest [`rank`].
    pub fn winner(&self, name: &str) -> Option<&Live> {
        self.names
            .get(name)?
            .values()
            .filter_map(|dot| dot.live().map(|live| (dot, live)))
            .max_by_key(|(dot, live)| rank(name, &dot.origin, live.priority))
            .map(|(_, live)| live)
    }

    /// Every name with a visible owner and that owner, in name order.
    pub fn winners(&self) -> impl Iterator<Item = (&str, &Live)> {
        self.names.keys().filter_map(|name| self.winner(name).map(|live| (name.as_str(), live)))
    }

    /// The dots held for `name`, in origin order.
    pub fn dots(&self, name: &str) -> impl Iterator<Item = &Dot> {
        self.names.get(name).into_iter().flat_map(|dots| dots.values())
    }

    /// Every (name, dot) held, in (name, origin) order: the replicated content.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Dot)> {
        self.names.iter().flat_map(|(name, dots)| dots.values().map(move |dot| (name.as_str(), dot)))
    }

    /// The departed origins remembered, in order.
    pub fn departed(&self) -> impl Iterator<Item = &NodeId> {
        self.departed.iter()
    }

    /// Whether `other` holds the same replicated content (dots and departed origins); local
    /// bookkeeping (clock, reported losses, counters) is not compared.
    pub fn same_content(&self, other: &EventualState) -> bool {
        self.names == other.names && self.departed == other.departed
    }

    /// The highest counter seen per origin (this node's acknowledgement, see [`VersionVector`]).
    pub fn version_vector(&self) -> &VersionVector {
        &self.clock
    }

    /// How many names are held (live or tombstoned).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    /// How many tombstones are held.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// What the bounds evicted or ignored so far.
    pub fn stats(&self) -> EventualStats {
        self.stats
    }

    pub(crate) fn names_map(&self) -> &BTreeMap<String, BTreeMap<NodeId, Dot>> {
        &self.names
    }
}

fn outcome_apply(state: &mut EventualState, outcome: &mut MergeOutcome, delta: Delta) {
    match state.apply(&delta) {
        Ok(applied) => outcome.absorb(applied),
        Err(_) => outcome.refused += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name, 1)
    }

    #[test]
    fn register_then_unregister_leaves_a_tombstone_and_no_winner() {
        let mut state = EventualState::new(node("a"));
        let pid = Pid::new(node("a"), 7);
        let delta = state.register("svc", pid.clone(), 0).unwrap();
        assert_eq!(delta.dot.counter, 1);
        assert_eq!(state.winner("svc").map(|l| &l.pid), Some(&pid));
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

    #[test]
    fn rank_depends_only_on_name_origin_and_priority() {
        let origin = node("b");
        assert_eq!(rank("svc", &origin, 3), rank("svc", &origin.clone(), 3));
        assert!(rank("svc", &origin, 4) > rank("svc", &node("zzz"), 3));
        assert!(rank("svc", &NodeId::new("b", 2), 0) > rank("svc", &NodeId::new("b", 1), 0));
    }
}
