//! Per-peer, per-class bounded send queues of the internode transport (SPEC section 5.2).
//!
//! Role: decide what happens to an outgoing message when the link to a peer is slower than the
//! node, and in which order queued messages go out. The connection writer owns one
//! [`PeerQueues`] per peer, pushes into it, and drains it with [`PeerQueues::pop_batch`]; this
//! module does no I/O and reads no clock.
//!
//! Invariants:
//! - Every [`ClassQueue`] holds at most its capacity in frames (between 1 and
//!   [`MAX_CLASS_CAPACITY`]) and at most its capacity in bytes of wire length (between 1 and
//!   [`MAX_CLASS_CAPACITY_BYTES`]): a 16 MiB frame weighs 16 MiB, not one slot.
//! - A full queue applies its class's [`Policy`] and reports what it did in a [`PushOutcome`];
//!   nothing is dropped silently: each drop or refusal is counted in [`ClassStats`] under a
//!   [`DropReason`] whose [`DropReason::as_str`] is the `reason` label of
//!   `cohort_internode_dropped_total{class,reason}`.
//! - Counters balance: `enqueued == popped + dropped_oldest + depth` for every class queue.
//! - Draining is by priority: `control`, then `raft`, then weighted round robin among `pg`,
//!   `registry` and `user`. Among the weighted classes no non-empty class waits for more than the
//!   sum of the weights of the others; `control` and `raft` are strictly ahead of them by design
//!   (raft heartbeats must never wait behind a broadcast flood).

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The upper bound of any configured class capacity, in frames.
///
/// Why: a capacity is a promise of memory per peer; a mistyped config value (an extra few zeros)
/// must be refused at start rather than discovered as an out-of-memory kill under load.
pub const MAX_CLASS_CAPACITY: usize = 1 << 20;

/// The upper bound of a configured class capacity in bytes (1 GiB).
///
/// Why: as for [`MAX_CLASS_CAPACITY`], a mistyped value must be refused at start; a queue of one
/// peer and class holding more than a gibibyte is a misconfiguration, not a workload.
pub const MAX_CLASS_CAPACITY_BYTES: usize = 1 << 30;

/// The upper bound of a weighted-round-robin drain weight.
///
/// Why: weights only express a ratio; beyond 64 a class would monopolise the writer for long
/// stretches, which defeats the fairness the weights are for.
pub const MAX_DRAIN_WEIGHT: u32 = 64;

/// The traffic class of an internode message; each class has its own bounded queue per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Pings, handshakes, admin relays. Small and rare; drained first.
    Control,
    /// Raft messages; drained right after control so heartbeats are never late.
    Raft,
    /// Process-group join/leave/sync.
    Pg,
    /// Eventual-tier registry deltas and repair.
    Registry,
    /// Actor messages between processes.
    User,
}

impl Class {
    /// Every class, in drain-priority order (also the order of the wire codes).
    pub const ALL: [Class; 5] = [Class::Control, Class::Raft, Class::Pg, Class::Registry, Class::User];

    /// The classes served by weighted round robin after `control` and `raft`.
    pub const WEIGHTED: [Class; 3] = [Class::Pg, Class::Registry, Class::User];

    /// The class name used in metrics labels, logs and the admin API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Control => "control",
            Class::Raft => "raft",
            Class::Pg => "pg",
            Class::Registry => "registry",
            Class::User => "user",
        }
    }

    /// The class code carried in the `class` byte of a wire frame.
    pub const fn code(self) -> u8 {
        match self {
            Class::Control => 0,
            Class::Raft => 1,
            Class::Pg => 2,
            Class::Registry => 3,
            Class::User => 4,
        }
    }

    /// The default queue capacity of this class, in frames (the SPEC 5.2 table).
    pub const fn default_capacity(self) -> usize {
        match self {
            Class::Control => 256,
            Class::Raft => 4096,
            Class::Pg => 2048,
            Class::Registry => 2048,
            Class::User => 8192,
        }
    }

    /// The default queue capacity of this class in bytes of wire length (issue 14): with the
    /// frame capacity, what one peer can pin in this node's memory per class. Every class but
    /// `control` holds at least two frames of the largest size ([`crate::frame::MAX_FRAME_BYTES`],
    /// 16 MiB); `control` carries pings and relays of a few hundred bytes. Per peer: 97 MiB.
    pub const fn default_capacity_bytes(self) -> usize {
        const MIB: usize = 1024 * 1024;
        match self {
            Class::Control => MIB,
            Class::Raft => 32 * MIB,
            Class::Pg => 16 * MIB,
            Class::Registry => 16 * MIB,
            Class::User => 32 * MIB,
        }
    }

    /// What a full queue of this class does with one more message (the SPEC 5.2 table).
    pub const fn policy(self) -> Policy {
        match self {
            // raft retransmits; the newest message carries the freshest term and log state.
            Class::Raft => Policy::DropOldest,
            // a pg delta lost breaks the peer's view; only a full sync repairs it.
            Class::Pg => Policy::DropNewestAndResync,
            // eventual-tier anti-entropy repairs any lost delta.
            Class::Registry => Policy::DropNewest,
            // the sender is a process that can be told and back off.
            Class::User => Policy::Refuse,
            // pings and relays are superseded by newer ones.
            Class::Control => Policy::DropOldest,
        }
    }

    /// The position of the class in [`Class::ALL`].
    const fn index(self) -> usize {
        self.code() as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Class> for u8 {
    fn from(class: Class) -> u8 {
        class.code()
    }
}

/// A class code that names no [`Class`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("unknown class code {0}")]
pub struct UnknownClass(pub u8);

impl TryFrom<u8> for Class {
    type Error = UnknownClass;

    fn try_from(code: u8) -> Result<Self, Self::Error> {
        match code {
            0 => Ok(Class::Control),
            1 => Ok(Class::Raft),
            2 => Ok(Class::Pg),
            3 => Ok(Class::Registry),
            4 => Ok(Class::User),
            other => Err(UnknownClass(other)),
        }
    }
}

/// What a full class queue does with one more message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Evict the oldest queued message and enqueue the new one.
    DropOldest,
    /// Drop the new message; the queue is unchanged.
    DropNewest,
    /// Drop the new message and mark the peer for a full resync of the class's state.
    DropNewestAndResync,
    /// Refuse the new message and hand it back; the sender gets `QueueSaturated`.
    Refuse,
}

impl Policy {
    /// The reason a drop or refusal under this policy is counted with.
    pub const fn drop_reason(self) -> DropReason {
        match self {
            Policy::DropOldest => DropReason::QueueFullDropOldest,
            Policy::DropNewest | Policy::DropNewestAndResync => DropReason::QueueFullDropNewest,
            Policy::Refuse => DropReason::QueueFullRefused,
        }
    }
}

/// Why a message did not reach the peer; the `reason` label of
/// `cohort_internode_dropped_total{class,reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `"queue_full_drop_oldest"`: the queue was full and its oldest message was evicted.
    QueueFullDropOldest,
    /// `"queue_full_drop_newest"`: the queue was full and the new message was dropped.
    QueueFullDropNewest,
    /// `"queue_full_refused"`: the queue was full and the new message was handed back to its
    /// sender with `QueueSaturated`.
    QueueFullRefused,
}

impl DropReason {
    /// Every reason, so the counters can be exported at 0 from boot.
    pub const ALL: [DropReason; 3] =
        [DropReason::QueueFullDropOldest, DropReason::QueueFullDropNewest, DropReason::QueueFullRefused];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFullDropOldest => "queue_full_drop_oldest",
            DropReason::QueueFullDropNewest => "queue_full_drop_newest",
            DropReason::QueueFullRefused => "queue_full_refused",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The refusal a sender gets when its class queue to a peer is full (SPEC 5.2, `user` class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("QueueSaturated: the {class} queue to this peer is full")]
pub struct QueueSaturated {
    /// The class whose queue was full.
    pub class: Class,
}

/// Something that can wait in a class queue: it knows its size on the wire.
pub trait QueueItem {
    /// The bytes this item takes on the wire; must not change while the item is queued.
    fn wire_len(&self) -> usize;
}

impl QueueItem for Vec<u8> {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

impl QueueItem for bytes::Bytes {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

/// What [`ClassQueue::push`] did with the item.
#[must_use = "a drop or refusal must be counted or returned to the sender"]
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome<T> {
    /// The item is queued.
    Enqueued,
    /// The item is queued; the queue was full, so these, its oldest items, were evicted (one,
    /// or more when the new item needed the bytes of several).
    DroppedOldest(Vec<T>),
    /// The queue was full; this new item was dropped (for `pg`, the peer is now marked for resync).
    DroppedNewest(T),
    /// The queue was full; the item is handed back so the sender can get [`QueueSaturated`].
    Refused(T),
}

impl<T> PushOutcome<T> {
    /// Whether the pushed item is now queued.
    pub fn is_enqueued(&self) -> bool {
        matches!(self, PushOutcome::Enqueued | PushOutcome::DroppedOldest(_))
    }

    /// The reason to count, if something was dropped or refused.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            PushOutcome::Enqueued => None,
            PushOutcome::DroppedOldest(_) => Some(DropReason::QueueFullDropOldest),
            PushOutcome::DroppedNewest(_) => Some(DropReason::QueueFullDropNewest),
            PushOutcome::Refused(_) => Some(DropReason::QueueFullRefused),
        }
    }
}

/// The counters of one class queue, monotonic over the queue's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Items that entered the queue (including those later evicted as oldest).
    pub enqueued: u64,
    /// Items taken out by the writer.
    pub popped: u64,
    /// Queued items evicted to make room ([`DropReason::QueueFullDropOldest`]).
    pub dropped_oldest: u64,
    /// New items dropped because the queue was full ([`DropReason::QueueFullDropNewest`]); they
    /// never entered the queue.
    pub dropped_newest: u64,
    /// New items handed back to their sender ([`DropReason::QueueFullRefused`]); they never
    /// entered the queue.
    pub refused: u64,
}

impl ClassStats {
    /// The count for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::QueueFullDropOldest => self.dropped_oldest,
            DropReason::QueueFullDropNewest => self.dropped_newest,
            DropReason::QueueFullRefused => self.refused,
        }
    }

    /// All drops and refusals together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_oldest + self.dropped_newest + self.refused
    }
}

/// One bounded FIFO queue of a class, applying the class's [`Policy`] when full.
#[derive(Debug)]
pub struct ClassQueue<T> {
    class: Class,
    capacity: NonZeroUsize,
    capacity_bytes: NonZeroUsize,
    items: VecDeque<T>,
    queued_bytes: usize,
    stats: ClassStats,
}

impl<T: QueueItem> ClassQueue<T> {
    /// An empty queue of `class` holding at most `capacity` items and the class's default bytes
    /// ([`Class::default_capacity_bytes`]), with the class's policy.
    ///
    /// Nothing is preallocated: memory follows the depth, up to the capacity.
    pub fn new(class: Class, capacity: NonZeroUsize) -> Self {
        let bytes = NonZeroUsize::new(class.default_capacity_bytes()).unwrap_or(NonZeroUsize::MIN);
        Self::with_capacity_bytes(class, capacity, bytes)
    }

    /// An empty queue of `class` holding at most `capacity` items and `capacity_bytes` bytes of
    /// wire length.
    pub fn with_capacity_bytes(class: Class, capacity: NonZeroUsize, capacity_bytes: NonZeroUsize) -> Self {
        Self { class, capacity, capacity_bytes, items: VecDeque::new(), queued_bytes: 0, stats: ClassStats::default() }
    }

    /// Whether one more item of `len` bytes fits in both capacities.
    fn fits(&self, len: usize) -> bool {
        self.items.len() < self.capacity.get() && self.queued_bytes.saturating_add(len) <= self.capacity_bytes.get()
    }

    /// Offers one item; a full queue (in frames or in bytes) applies the class policy (see
    /// [`PushOutcome`]). An item larger than the whole byte capacity can never fit: it is dropped
    /// as the newest whatever the policy (a drop-oldest queue would otherwise empty itself for
    /// nothing), or refused for a refusing class.
    pub fn push(&mut self, item: T) -> PushOutcome<T> {
        let len = item.wire_len();
        if self.fits(len) {
            self.enqueue(item);
            return PushOutcome::Enqueued;
        }
        let never_fits = len > self.capacity_bytes.get();
        match self.class.policy() {
            Policy::DropOldest if !never_fits => {
                let mut evicted = Vec::with_capacity(1);
                while !self.fits(len) {
                    let Some(oldest) = self.items.pop_front() else { break };
                    self.release_bytes(&oldest);
                    self.stats.dropped_oldest += 1;
                    evicted.push(oldest);
                }
                self.enqueue(item);
                PushOutcome::DroppedOldest(evicted)
            }
            Policy::DropOldest | Policy::DropNewest | Policy::DropNewestAndResync => {
                self.stats.dropped_newest += 1;
                PushOutcome::DroppedNewest(item)
            }
            Policy::Refuse => {
                self.stats.refused += 1;
                PushOutcome::Refused(item)
            }
        }
    }

    /// Takes the oldest item out.
    pub fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.release_bytes(&item);
        self.stats.popped += 1;
        Some(item)
    }

    /// The wire length of the oldest item, without taking it.
    pub fn front_wire_len(&self) -> Option<usize> {
        self.items.front().map(QueueItem::wire_len)
    }

    fn enqueue(&mut self, item: T) {
        self.queued_bytes = self.queued_bytes.saturating_add(item.wire_len());
        self.items.push_back(item);
        self.stats.enqueued += 1;
        debug_assert!(self.items.len() <= self.capacity.get());
        debug_assert!(self.queued_bytes <= self.capacity_bytes.get());
    }

    fn release_bytes(&mut self, item: &T) {
        let len = item.wire_len();
        debug_assert!(len <= self.queued_bytes, "wire_len changed while queued");
        self.queued_bytes = self.queued_bytes.saturating_sub(len);
    }
}

impl<T> ClassQueue<T> {
    /// The class of this queue.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The policy applied when the queue is full.
    pub fn policy(&self) -> Policy {
        self.class.policy()
    }

    /// The most items the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// The most bytes of wire length the queue holds.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes.get()
    }

    /// The number of items queued now.
    pub fn depth(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the next push meets the full-queue policy whatever its size (no slot left).
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity.get() || self.queued_bytes >= self.capacity_bytes.get()
    }

    /// The sum of the wire lengths of the queued items.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The counters of this queue.
    pub fn stats(&self) -> ClassStats {
        self.stats
    }
}

/// The queue capacity of each class, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassCapacities {
    /// Capacity of the `control` queue (default 256).
    pub control: usize,
    /// Capacity of the `raft` queue (default 4096).
    pub raft: usize,
    /// Capacity of the `pg` queue (default 2048).
    pub pg: usize,
    /// Capacity of the `registry` queue (default 2048).
    pub registry: usize,
    /// Capacity of the `user` queue (default 8192).
    pub user: usize,
}

impl Default for ClassCapacities {
    fn default() -> Self {
        Self {
            control: Class::Control.default_capacity(),
            raft: Class::Raft.default_capacity(),
            pg: Class::Pg.default_capacity(),
            registry: Class::Registry.default_capacity(),
            user: Class::User.default_capacity(),
        }
    }
}

impl ClassCapacities {
    /// The capacity of one class.
    pub fn get(&self, class: Class) -> usize {
        match class {
            Class::Control => self.control,
            Class::Raft => self.raft,
            Class::Pg => self.pg,
            Class::Registry => self.registry,
            Class::User => self.user,
        }
    }
}

/// The queue capacity of each class in bytes of wire length (issue 14); a frame counts its whole
/// size, so one peer sending large frames fills its queues in bytes long before in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassByteCapacities {
    /// Bytes of the `control` queue (default 1 MiB).
    pub control: usize,
    /// Bytes of the `raft` queue (default 32 MiB).
    pub raft: usize,
    /// Bytes of the `pg` queue (default 16 MiB).
    pub pg: usize,
    /// Bytes of the `registry` queue (default 16 MiB).
    pub registry: usize,
    /// Bytes of the `user` queue (default 32 MiB).
    pub user: usize,
}

impl Default for ClassByteCapacities {
    fn default() -> Self {
        Self {
            control: Class::Control.default_capacity_bytes(),
            raft: Class::Raft.default_capacity_bytes(),
            pg: Class::Pg.default_capacity_bytes(),
            registry: Class::Registry.default_capacity_bytes(),
            user: Class::User.default_capacity_bytes(),
        }
    }
}

impl ClassByteCapacities {
    /// The byte capacity of one class.
    pub fn get(&self, class: Class) -> usize {
        match class {
            Class::Control => self.control,
            Class::Raft => self.raft,
            Class::Pg => self.pg,
            Class::Registry => self.registry,
            Class::User => self.user,
        }
    }
}

/// The weighted-round-robin weights of the classes drained after `control` and `raft`: out of
/// every `pg + registry + user` frames drained while all three are backlogged, each class sends
/// its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainWeights {
    /// Weight of `pg` (default 2).
    pub pg: u32,
    /// Weight of `registry` (default 1: anti-entropy repairs what it delays).
    pub registry: u32,
    /// Weight of `user` (default 4: application traffic is the bulk).
    pub user: u32,
}

impl Default for DrainWeights {
    fn default() -> Self {
        Self { pg: 2, registry: 1, user: 4 }
    }
}

impl DrainWeights {
    /// The weight of a weighted class; `None` for `control` and `raft`, which are strict priority.
    pub fn get(&self, class: Class) -> Option<u32> {
        match class {
            Class::Pg => Some(self.pg),
            Class::Registry => Some(self.registry),
            Class::User => Some(self.user),
            Class::Control | Class::Raft => None,
        }
    }
}

/// Configuration of a peer's queues; `Default` is the SPEC 5.2 table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Per-class capacities, in frames.
    pub capacity: ClassCapacities,
    /// Per-class capacities, in bytes of wire length.
    pub capacity_bytes: ClassByteCapacities,
    /// Drain weights of `pg`, `registry` and `user`.
    pub weights: DrainWeights,
}

/// A [`QueueConfig`] value out of bounds; names the field.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum QueueConfigError {
    /// A capacity is 0 or above [`MAX_CLASS_CAPACITY`].
    #[error("capacity.{class}: {value} is outside 1..={max}")]
    Capacity {
        /// The class whose capacity is bad.
        class: Class,
        /// The configured value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// A byte capacity is 0 or above [`MAX_CLASS_CAPACITY_BYTES`].
    #[error("capacity_bytes.{class}: {value} is outside 1..={max}")]
    CapacityBytes {
        /// The class whose byte capacity is bad.
        class: Class,
        /// The configured value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// A weight is 0 (the class would starve) or above [`MAX_DRAIN_WEIGHT`].
    #[error("weights.{class}: {value} is outside 1..={max}")]
    Weight {
        /// The class whose weight is bad.
        class: Class,
        /// The configured value.
        value: u32,
        /// The largest accepted value.
        max: u32,
    },
}

impl QueueConfig {
    /// Checks every capacity and weight against its bounds.
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        for class in Class::ALL {
            let value = self.capacity.get(class);
            if value == 0 || value > MAX_CLASS_CAPACITY {
                return Err(QueueConfigError::Capacity { class, value, max: MAX_CLASS_CAPACITY });
            }
            let value = self.capacity_bytes.get(class);
            if value == 0 || value > MAX_CLASS_CAPACITY_BYTES {
                return Err(QueueConfigError::CapacityBytes { class, value, max: MAX_CLASS_CAPACITY_BYTES });
            }
        }
        for class in Class::WEIGHTED {
            let value = self.weights.get(class).unwrap_or(1);
            if value == 0 || value > MAX_DRAIN_WEIGHT {
                return Err(QueueConfigError::Weight { class, value, max: MAX_DRAIN_WEIGHT });
            }
        }
        Ok(())
    }
}

/// All class queues towards one peer, plus the drain order and the pg resync mark.
///
/// ```
/// use cohort_cluster::queue::{Class, PeerQueues, PushOutcome, QueueConfig};
///
/// let mut queues = PeerQueues::<Vec<u8>>::new(QueueConfig::default()).unwrap();
/// assert_eq!(queues.push(Class::User, b"hello".to_vec()), PushOutcome::Enqueued);
/// assert_eq!(queues.push(Class::Raft, b"append".to_vec()), PushOutcome::Enqueued);
/// let batch = queues.pop_batch(16, 64 * 1024);
/// assert_eq!(batch[0].0, Class::Raft); // raft before user
/// assert_eq!(batch[1].0, Class::User);
/// ```
#[derive(Debug)]
pub struct PeerQueues<T> {
    queues: [ClassQueue<T>; 5],
    weights: [u32; 3],
    /// Index into [`Class::WEIGHTED`] of the class whose turn it is.
    turn: usize,
    /// Frames the class at `turn` may still send in this turn.
    credit: u32,
    needs_resync: bool,
}

impl<T: QueueItem> PeerQueues<T> {
    /// Empty queues for one peer, after validating `config`.
    pub fn new(config: QueueConfig) -> Result<Self, QueueConfigError> {
        config.validate()?;
        let queue = |class: Class| {
            let capacity = NonZeroUsize::new(config.capacity.get(class)).unwrap_or(NonZeroUsize::MIN);
            let bytes = NonZeroUsize::new(config.capacity_bytes.get(class)).unwrap_or(NonZeroUsize::MIN);
            ClassQueue::with_capacity_bytes(class, capacity, bytes)
        };
        let weight = |class: Class| config.weights.get(class).unwrap_or(1).max(1);
        let weights = Class::WEIGHTED.map(weight);
        Ok(Self { queues: Class::ALL.map(queue), weights, turn: 0, credit: weights[0], needs_resync: false })
    }

    /// Offers one item to the queue of `class`; a `pg` drop marks the peer for resync.
    pub fn push(&mut self, class: Class, item: T) -> PushOutcome<T> {
        let outcome = self.queues[class.index()].push(item);
        if matches!(outcome, PushOutcome::DroppedNewest(_)) && class.policy() == Policy::DropNewestAndResync {
            self.needs_resync = true;
        }
        outcome
    }

    /// Takes the next item in drain order: `control`, then `raft`, then weighted round robin.
    pub fn pop(&mut self) -> Option<(Class, T)> {
        let class = self.next_class()?;
        self.take(class)
    }

    /// Takes up to `max_frames` items in drain order whose wire lengths add up to at most
    /// `max_bytes`, except that the first item is always taken (an item larger than `max_bytes`
    /// must still go out). The batch stops at the first item that does not fit, so the drain
    /// order is kept.
    pub fn pop_batch(&mut self, max_frames: usize, max_bytes: usize) -> Vec<(Class, T)> {
        let mut batch = Vec::with_capacity(max_frames.min(self.depth()));
        let mut bytes = 0usize;
        while batch.len() < max_frames {
            let Some(class) = self.next_class() else {
                break;
            };
            let len = self.queues[class.index()].front_wire_len().unwrap_or(0);
            if !batch.is_empty() && bytes.saturating_add(len) > max_bytes {
                break;
            }
            let Some(entry) = self.take(class) else { break };
            bytes = bytes.saturating_add(len);
            batch.push(entry);
        }
        batch
    }

    /// The class the next [`pop`](Self::pop) takes from, moving the round-robin turn past
    /// empty weighted classes (an empty class gives its turn away).
    fn next_class(&mut self) -> Option<Class> {
        for class in [Class::Control, Class::Raft] {
            if !self.queues[class.index()].is_empty() {
                return Some(class);
            }
        }
        for _ in 0..Class::WEIGHTED.len() {
            let class = Class::WEIGHTED[self.turn];
            if self.credit > 0 && !self.queues[class.index()].is_empty() {
                return Some(class);
            }
            self.advance_turn();
        }
        None
    }

    /// Pops from `class`, charging the round-robin credit if it is a weighted class.
    fn take(&mut self, class: Class) -> Option<(Class, T)> {
        let item = self.queues[class.index()].pop()?;
        // control and raft are strict priority and never hold the round-robin turn.
        if Class::WEIGHTED[self.turn] == class {
            self.credit = self.credit.saturating_sub(1);
            if self.credit == 0 {
                self.advance_turn();
            }
        }
        Some((class, item))
    }

    fn advance_turn(&mut self) {
        self.turn = (self.turn + 1) % Class::WEIGHTED.len();
        self.credit = self.weights[self.turn];
    }
}

impl<T> PeerQueues<T> {
    /// The queue of one class (depth, capacity, bytes, counters).
    pub fn queue(&self, class: Class) -> &ClassQueue<T> {
        &self.queues[class.index()]
    }

    /// Items queued over all classes.
    pub fn depth(&self) -> usize {
        self.queues.iter().map(ClassQueue::depth).sum()
    }

    /// Wire bytes queued over all classes.
    pub fn queued_bytes(&self) -> usize {
        self.queues.iter().map(ClassQueue::queued_bytes).fold(0, usize::saturating_add)
    }

    /// Whether nothing is queued in any class.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(ClassQueue::is_empty)
    }

    /// Whether a `pg` message to this peer was dropped since the last [`take_resync`](Self::take_resync):
    /// the peer's view of this node's groups is stale and needs a full sync.
    pub fn needs_resync(&self) -> bool {
        self.needs_resync
    }

    /// Returns the resync mark and clears it (the caller schedules the full sync).
    pub fn take_resync(&mut self) -> bool {
        std::mem::take(&mut self.needs_resync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A test item: an id and a wire length.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Item(u32, usize);

    impl QueueItem for Item {
        fn wire_len(&self) -> usize {
            self.1
        }
    }

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    fn small_config(n: usize) -> QueueConfig {
        QueueConfig {
            capacity: ClassCapacities { control: n, raft: n, pg: n, registry: n, user: n },
            ..QueueConfig::default()
        }
    }

    fn fill(queue: &mut ClassQueue<Item>, n: u32) {
        for i in 0..n {
            assert_eq!(queue.push(Item(i, 10)), PushOutcome::Enqueued);
        }
    }

    fn drain_ids(queue: &mut ClassQueue<Item>) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop()).map(|item| item.0).collect()
    }

    #[test]
    fn defaults_match_the_spec_table() {
        let expected = [
            (Class::Control, 256, Policy::DropOldest),
            (Class::Raft, 4096, Policy::DropOldest),
            (Class::Pg, 2048, Policy::DropNewestAndResync),
            (Class::Registry, 2048, Policy::DropNewest),
            (Class::User, 8192, Policy::Refuse),
        ];
        for (class, capacity, policy) in expected {
            assert_eq!(class.default_capacity(), capacity, "{class}");
            assert_eq!(class.policy(), policy, "{class}");
        }
        let queues = PeerQueues::<Item>::new(QueueConfig::default()).unwrap();
        for class in Class::ALL {
            assert_eq!(queues.queue(class).capacity(), class.default_capacity());
        }
    }

    #[test]
    fn class_codes_and_names_roundtrip_and_unknown_code_is_rejected() {
        let names: Vec<_> = Class::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["control", "raft", "pg", "registry", "user"]);
        for class in Class::ALL {
            assert_eq!(Class::try_from(u8::from(class)), Ok(class));
        }
        for code in 5..=u8::MAX {
            assert_eq!(Class::try_from(code), Err(UnknownClass(code)));
        }
    }

    fn bytes(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn a_queue_full_in_bytes_applies_its_policy_before_it_is_full_in_frames() {
        // raft: a large frame evicts as many of the oldest as it needs.
        let mut raft = ClassQueue::with_capacity_bytes(Class::Raft, cap(100), bytes(100));
        for i in 0..4 {
            assert_eq!(raft.push(Item(i, 25)), PushOutcome::Enqueued);
        }
        assert!(raft.is_full());
        assert_eq!(raft.push(Item(9, 60)), PushOutcome::DroppedOldest(vec![Item(0, 25), Item(1, 25), Item(2, 25)]));
        assert_eq!((raft.depth(), raft.queued_bytes()), (2, 85));
        assert_eq!(raft.stats().dropped(DropReason::QueueFullDropOldest), 3);
        // A frame larger than the whole budget never fits: dropped, and nothing else is.
        assert_eq!(raft.push(Item(10, 101)), PushOutcome::DroppedNewest(Item(10, 101)));
        assert_eq!(drain_ids(&mut raft), [3, 9]);
        // user: refused, the sender is told.
        let mut user = ClassQueue::with_capacity_bytes(Class::User, cap(100), bytes(50));
        assert_eq!(user.push(Item(1, 40)), PushOutcome::Enqueued);
        assert_eq!(user.push(Item(2, 20)), PushOutcome::Refused(Item(2, 20)));
        assert_eq!(user.push(Item(3, 10)), PushOutcome::Enqueued);
        // pg: dropped and the peer marked for a resync.
        let config = QueueConfig {
            capacity_bytes: ClassByteCapacities { pg: 30, ..ClassByteCapacities::default() },
            ..QueueConfig::default()
        };
        let mut peer = PeerQueues::<Item>::new(config).unwrap();
        assert_eq!(peer.push(Class::Pg, Item(1, 20)), PushOutcome::Enqueued);
        assert_eq!(peer.push(Class::Pg, Item(2, 20)), PushOutcome::DroppedNewest(Item(2, 20)));
        assert!(peer.take_resync());
    }

    #[test]
    fn byte_capacities_are_validated_and_named() {
        let mut config = QueueConfig::default();
        config.capacity_bytes.registry = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            format!("capacity_bytes.registry: 0 is outside 1..={MAX_CLASS_CAPACITY_BYTES}")
        );
        config.capacity_bytes.registry = MAX_CLASS_CAPACITY_BYTES + 1;
        assert!(config.validate().is_err());
    }

    #[test]
    fn full_raft_queue_drops_oldest_and_keeps_newest() {
        let mut queue = ClassQueue::new(Class::Raft, cap(3));
        fill(&mut queue, 3);
        assert_eq!(queue.push(Item(3, 10)), PushOutcome::DroppedOldest(vec![Item(0, 10)]));
        assert_eq!(queue.stats().dropped(DropReason::QueueFullDropOldest), 1);
        assert_eq!(drain_ids(&mut queue), [1, 2, 3]);
    }

    #[test]
    fn full_control_queue_drops_oldest() {
        let mut queue = ClassQueue::new(Class::Control, cap(2));
        fill(&mut queue, 2);
        let outcome = queue.push(Item(2, 10));
        assert_eq!(outcome.drop_reason(), Some(DropReason::QueueFullDropOldest));
        assert!(outcome.is_enqueued());
        assert_eq!(drain_ids(&mut queue), [1, 2]);
    }

    #[test]
    fn full_pg_queue_drops_newest_and_marks_peer_for_resync() {
        let mut queues = PeerQueues::<Item>::new(small_config(2)).unwrap();
        for i in 0..2 {
            assert_eq!(queues.push(Class::Pg, Item(i, 10)), PushOutcome::Enqueued);
        }
        assert!(!queues.needs_resync());
        assert_eq!(queues.push(Class::Pg, Item(2, 10)), PushOutcome::DroppedNewest(Item(2, 10)));
        assert!(queues.needs_resync());
        assert_eq!(queues.queue(Class::Pg).stats().dropped_newest, 1);
        assert!(queues.take_resync());
        assert!(!queues.needs_resync());
        let ids: Vec<_> = queues.pop_batch(10, usize::MAX).into_iter().map(|(_, i)| i.0).collect();
        assert_eq!(ids, [0, 1]);
    }

    #[test]
    fn full_registry_queue_drops_newest_without_resync() {
        let mut queues = PeerQueues::<Item>::new(small_config(1)).unwrap();
        assert_eq!(queues.push(Class::Registry, Item(0, 10)), PushOutcome::Enqueued);
        let outcome = queues.push(Class::Registry, Item(1, 10));
        assert_eq!(outcome.drop_reason(), Some(DropReason::QueueFullDropNewest));
        assert!(!queues.needs_resync());
        assert_eq!(queues.pop(), Some((Class::Registry, Item(0, 10))));
    }

    #[test]
    fn full_user_queue_refuses_with_queue_saturated() {
        let mut queues = PeerQueues::<Item>::new(small_config(2)).unwrap();
        for i in 0..2 {
            assert_eq!(queues.push(Class::User, Item(i, 10)), PushOutcome::Enqueued);
        }
        let outcome = queues.push(Class::User, Item(2, 10));
        assert_eq!(outcome.drop_reason(), Some(DropReason::QueueFullRefused));
        let PushOutcome::Refused(returned) = outcome else { panic!("expected a refusal") };
        assert_eq!(returned, Item(2, 10), "the refused item is handed back");
        let error = QueueSaturated { class: Class::User };
        assert_eq!(error.to_string(), "QueueSaturated: the user queue to this peer is full");
        assert_eq!(queues.queue(Class::User).stats().refused, 1);
        assert_eq!(queues.queue(Class::User).depth(), 2);
        assert!(!queues.needs_resync());
    }

    #[test]
    fn queued_bytes_follow_wire_lengths() {
        let mut queue = ClassQueue::new(Class::Raft, cap(2));
        let _ = queue.push(Item(0, 5));
        let _ = queue.push(Item(1, 7));
        assert_eq!(queue.queued_bytes(), 12);
        let _ = queue.push(Item(2, 100)); // evicts Item(0, 5)
        assert_eq!(queue.queued_bytes(), 107);
        let _ = queue.pop();
        assert_eq!(queue.queued_bytes(), 100);
    }

    #[test]
    fn drop_reason_labels_are_stable() {
        let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["queue_full_drop_oldest", "queue_full_drop_newest", "queue_full_refused"]);
    }

    #[test]
    fn config_rejects_zero_or_huge_capacity_and_zero_weight() {
        let mut config = QueueConfig::default();
        config.capacity.pg = 0;
        let error = PeerQueues::<Item>::new(config).unwrap_err();
        assert!(error.to_string().starts_with("capacity.pg"), "{error}");

        let mut config = QueueConfig::default();
        config.capacity.user = MAX_CLASS_CAPACITY + 1;
        assert!(matches!(config.validate(), Err(QueueConfigError::Capacity { class: Class::User, .. })));

        let mut config = QueueConfig::default();
        config.weights.registry = 0;
        let error = config.validate().unwrap_err();
        assert!(error.to_string().starts_with("weights.registry"), "{error}");
    }

    #[test]
    fn drain_takes_control_then_raft_before_weighted_classes() {
        let mut queues = PeerQueues::<Item>::new(QueueConfig::default()).unwrap();
        let _ = queues.push(Class::User, Item(0, 1));
        let _ = queues.push(Class::Pg, Item(1, 1));
        let _ = queues.push(Class::Registry, Item(2, 1));
        let _ = queues.push(Class::Raft, Item(3, 1));
        let _ = queues.push(Class::Control, Item(4, 1));
        let _ = queues.push(Class::Raft, Item(5, 1));
        let classes: Vec<_> = queues.pop_batch(100, usize::MAX).into_iter().map(|(c, _)| c).collect();
        assert_eq!(&classes[..3], [Class::Control, Class::Raft, Class::Raft]);
        assert_eq!(classes.len(), 6);
        assert!(queues.is_empty());
    }

    #[test]
    fn raft_pushed_mid_drain_overtakes_backlogged_weighted_classes() {
        let mut queues = PeerQueues::<Item>::new(QueueConfig::default()).unwrap();
        for i in 0..100 {
            let _ = queues.push(Class::Pg, Item(i, 1));
        }
        let _ = queues.pop_batch(3, usize::MAX);
        let _ = queues.push(Class::Raft, Item(1000, 1));
        assert_eq!(queues.pop(), Some((Class::Raft, Item(1000, 1))));
    }

    #[test]
    fn weighted_round_robin_serves_classes_in_configured_ratio() {
        let mut queues = PeerQueues::<Item>::new(QueueConfig::default()).unwrap();
        for i in 0..700 {
            for class in Class::WEIGHTED {
                let _ = queues.push(class, Item(i, 1));
            }
        }
        // 700 frames = 100 full rounds of weights pg 2, registry 1, user 4.
        let batch = queues.pop_batch(700, usize::MAX);
        let count = |class| batch.iter().filter(|(c, _)| *c == class).count();
        assert_eq!((count(Class::Pg), count(Class::Registry), count(Class::User)), (200, 100, 400));
        let first_round: Vec<_> = batch[..7].iter().map(|(c, _)| *c).collect();
        assert_eq!(
            first_round,
            [Class::Pg, Class::Pg, Class::Registry, Class::User, Class::User, Class::User, Class::User]
        );
    }

    #[test]
    fn empty_weighted_class_gives_its_turn_away() {
        let mut queues = PeerQueues::<Item>::new(QueueConfig::default()).unwrap();
        for i in 0..10 {
            let _ = queues.push(Class::Registry, Item(i, 1));
        }
        // pg and user are empty: registry gets every turn instead of waiting for theirs.
        let batch = queues.pop_batch(10, usize::MAX);
        assert_eq!(batch.len(), 10);
        assert!(batch.iter().all(|(c, _)| *c == Class::Registry));
    }

    #[test]
    fn no_backlogged_weighted_class_starves_behind_a_flood() {
        let config = QueueConfig {
            weights: DrainWeights { pg: MAX_DRAIN_WEIGHT, registry: 1, user: MAX_DRAIN_WEIGHT },
            ..QueueConfig::default()
        };
        let mut queues = PeerQueues::<Item>::new(config).unwrap();
        for i in 0..2000 {
            let _ = queues.push(Class::Pg, Item(i, 1));
            let _ = queues.push(Class::User, Item(i, 1));
        }
        let _ = queues.push(Class::Registry, Item(9999, 1));
        let window = (2 * MAX_DRAIN_WEIGHT + 1) as usize;
        let batch = queues.pop_batch(window, usize::MAX);
        assert!(batch.iter().any(|(c, _)| *c == Class::Registry), "registry served within one round");
    }

    #[test]
    fn pop_batch_respects_byte_budget_but_always_takes_one_item() {
        let mut queues = PeerQueues::<Item>::new(QueueConfig::default()).unwrap();
        let _ = queues.push(Class::Raft, Item(0, 1000));
        let _ = queues.push(Class::Raft, Item(1, 10));
        let _ = queues.push(Class::Raft, Item(2, 10));
        let first = queues.pop_batch(10, 100);
        assert_eq!(first, [(Class::Raft, Item(0, 1000))], "an oversized item still goes out alone");
        let second = queues.pop_batch(10, 15);
        assert_eq!(second, [(Class::Raft, Item(1, 10))]);
        assert_eq!(queues.pop_batch(0, usize::MAX), []);
        assert_eq!(queues.depth(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, usize),
        PopBatch(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..5usize, 0..64usize).prop_map(|(c, len)| Op::Push(c, len)),
            1 => (0..8usize, 0..256usize).prop_map(|(n, b)| Op::PopBatch(n, b)),
        ]
    }

    proptest! {
        #[test]
        fn depth_never_exceeds_capacity_and_counters_balance(
            caps in proptest::array::uniform5(1..6usize),
            byte_caps in proptest::array::uniform5(1..400usize),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let config = QueueConfig {
                capacity: ClassCapacities {
                    control: caps[0], raft: caps[1], pg: caps[2], registry: caps[3], user: caps[4],
                },
                capacity_bytes: ClassByteCapacities {
                    control: byte_caps[0], raft: byte_caps[1], pg: byte_caps[2], registry: byte_caps[3], user: byte_caps[4],
                },
                weights: DrainWeights::default(),
            };
            let mut queues = PeerQueues::<Item>::new(config).unwrap();
            let mut pushes = [0u64; 5];
            let mut popped = [0u64; 5];
            let mut popped_bytes = [0usize; 5];
            let mut pushed_bytes = [0usize; 5];
            let mut lost_bytes = [0usize; 5];
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push(c, len) => {
                        let class = Class::ALL[c];
                        pushes[c] += 1;
                        pushed_bytes[c] += len;
                        match queues.push(class, Item(n as u32, len)) {
                            PushOutcome::Enqueued => {}
                            PushOutcome::DroppedOldest(old) => {
                                prop_assert!(!old.is_empty());
                                lost_bytes[c] += old.iter().map(|o| o.1).sum::<usize>();
                            }
                            PushOutcome::DroppedNewest(old) | PushOutcome::Refused(old) => lost_bytes[c] += old.1,
                        }
                    }
                    Op::PopBatch(max, bytes) => {
                        let batch = queues.pop_batch(max, bytes);
                        prop_assert!(batch.len() <= max);
                        for (class, item) in batch {
                            popped[class.index()] += 1;
                            popped_bytes[class.index()] += item.1;
                        }
                    }
                }
                for class in Class::ALL {
                    let q = queues.queue(class);
                    let s = q.stats();
                    let i = class.index();
                    prop_assert!(q.depth() <= q.capacity());
                    prop_assert!(q.queued_bytes() <= q.capacity_bytes());
                    prop_assert_eq!(s.popped, popped[i]);
                    prop_assert_eq!(s.enqueued, s.popped + s.dropped_oldest + q.depth() as u64);
                    prop_assert_eq!(pushes[i], s.enqueued + s.dropped_newest + s.refused);
                    prop_assert_eq!(pushed_bytes[i], popped_bytes[i] + lost_bytes[i] + q.queued_bytes());
                }
            }
        }

        #[test]
        fn every_backlogged_weighted_class_is_served_within_one_round(
            weights in proptest::array::uniform3(1..=MAX_DRAIN_WEIGHT),
            backlog in proptest::array::uniform3(0..200usize),
            already_popped in 0..300usize,
        ) {
            let config = QueueConfig {
                weights: DrainWeights { pg: weights[0], registry: weights[1], user: weights[2] },
                ..QueueConfig::default()
            };
            let mut queues = PeerQueues::<Item>::new(config).unwrap();
            for (class, n) in Class::WEIGHTED.into_iter().zip(backlog) {
                for i in 0..n {
                    let _ = queues.push(class, Item(i as u32, 1));
                }
            }
            let _ = queues.pop_batch(already_popped, usize::MAX);
            let round: usize = weights.iter().map(|w| *w as usize).sum();
            let waiting: Vec<Class> =
                Class::WEIGHTED.into_iter().filter(|c| !queues.queue(*c).is_empty()).collect();
            let served = queues.pop_batch(round, usize::MAX);
            for class in waiting {
                prop_assert!(served.iter().any(|(c, _)| *c == class), "{} starved", class);
            }
        }
    }
}
