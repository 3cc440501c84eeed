//! The compact in-memory form of the eventual tier's replicated content (crate-private).
//!
//! Role: [`EventualState`](super::EventualState) keeps its dots here rather than as the wire types
//! ([`Dot`](super::Dot), [`Delta`](super::Delta)), which carry a `String` per origin and per pid.
//! [`Origins`] interns each origin `NodeId` once and hands out a `u32` slot; a [`CompactDot`] is
//! then 24 bytes (counter, pid number, slot, priority, tombstone flag), a name's dots are a
//! [`Dots`] of 24 bytes holding one dot inline (the common case: one origin per name) and spilling
//! to a boxed slice for more, and names live as `Box<str>` keys of one ordered map per
//! anti-entropy shard ([`Store`]), each shard carrying its incremental digest and entry count.
//! A name of 18 bytes with one dot costs about 94 bytes of heap (`benches/eventual.rs`), against
//! about 1.5 KB in the earlier `BTreeMap<String, BTreeMap<NodeId, Dot>>` layout.
//!
//! Invariants:
//! - A slot of [`Origins`] is held by one `NodeId` from its interning until that origin departs (the
//!   local node's slot is never released);
//!   every [`CompactDot`] in the store names a held slot, so resolving it never fails.
//! - A name in a shard has at least one dot; a [`Dots::Many`] has at least two, sorted by origin
//!   `NodeId` (not by slot, which differs between replicas), so iteration order is the same on
//!   every replica with the same content.
//! - [`Shard::digest`] is the wrapping sum of [`super::digest::entry_hash`] over the shard's dots
//!   and [`Shard::entries`] their number; only [`Store::put`] and [`Store::take`] change dots and
//!   they keep both, the name count and the tombstone index in step.

use std::collections::{BTreeMap, BTreeSet};

use cohort_cluster::NodeId;

use super::crdt::MAX_ACK_GAPS;
use super::digest::{SHARD_COUNT, entry_hash};

/// One origin's entry for one name, with the origin as a slot of [`Origins`].
///
/// A tombstone has `local == 0` and `priority == 0`, so derived equality is equality of content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompactDot {
    pub(crate) counter: u64,
    pub(crate) local: u64,
    pub(crate) origin: u32,
    pub(crate) priority: u8,
    pub(crate) tombstone: bool,
}

impl CompactDot {
    pub(crate) fn live(origin: u32, counter: u64, local: u64, priority: u8) -> Self {
        Self { counter, local, origin, priority, tombstone: false }
    }

    pub(crate) fn tombstone(origin: u32, counter: u64) -> Self {
        Self { counter, local: 0, origin, priority: 0, tombstone: true }
    }

    /// Whether this dot wins the join against `other` (same name and origin): the higher counter,
    /// then a tombstone over a live write, then the larger (pid number, priority), which is the
    /// order of [`super::Live`] for two pids of one origin. Total and antisymmetric, so the join is
    /// commutative, associative and idempotent even for an origin that reuses a counter.
    pub(crate) fn supersedes(&self, other: &CompactDot) -> bool {
        use std::cmp::Ordering::*;
        match self.counter.cmp(&other.counter) {
            Greater => true,
            Less => false,
            Equal => match (self.tombstone, other.tombstone) {
                (true, false) => true,
                (false, false) => (self.local, self.priority) > (other.local, other.priority),
                _ => false,
            },
        }
    }
}

/// The dots of one name: one inline, or at least two in a boxed slice sorted by origin `NodeId`.
/// Both variants fit in 24 bytes (the tombstone flag's spare values hold the discriminant).
#[derive(Clone, Debug)]
pub(crate) enum Dots {
    One(CompactDot),
    Many(Box<[CompactDot]>),
}

impl Dots {
    pub(crate) fn as_slice(&self) -> &[CompactDot] {
        match self {
            Dots::One(dot) => std::slice::from_ref(dot),
            Dots::Many(dots) => dots,
        }
    }

    pub(crate) fn get(&self, origin: u32) -> Option<&CompactDot> {
        self.as_slice().iter().find(|dot| dot.origin == origin)
    }
}

/// What this replica has received of one origin's counters: every counter up to `prefix`, the
/// counters in `above` (received out of order, past a gap), and the largest ever seen.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ack {
    pub(crate) prefix: u64,
    pub(crate) above: BTreeSet<u64>,
    pub(crate) max: u64,
}

impl Ack {
    /// Record counter `counter` as received. Returns whether a counter had to be forgotten because
    /// of [`MAX_ACK_GAPS`] (forgetting only makes the acknowledgement more conservative).
    pub(crate) fn see(&mut self, counter: u64) -> bool {
        self.max = self.max.max(counter);
        if counter <= self.prefix {
            return false;
        }
        if Some(counter) == self.prefix.checked_add(1) {
            self.prefix = counter;
            self.drain();
            return false;
        }
        self.above.insert(counter);
        if self.above.len() > MAX_ACK_GAPS {
            // The largest is dropped: it is the furthest from closing the gap.
            self.above.pop_last();
            return true;
        }
        false
    }

    /// Raise the prefix to at least `prefix` (another replica vouches for it, see callers).
    pub(crate) fn raise(&mut self, prefix: u64) {
        if prefix > self.prefix {
            self.prefix = prefix;
            self.max = self.max.max(prefix);
            self.drain();
        }
    }

    /// Join with another replica's acknowledgement of the same origin. Returns how many of its
    /// out-of-order counters had to be forgotten (see [`Ack::see`]).
    pub(crate) fn join(&mut self, other: &Ack) -> u64 {
        self.raise(other.prefix);
        let mut forgotten = 0;
        for &counter in &other.above {
            forgotten += u64::from(self.see(counter));
        }
        self.max = self.max.max(other.max);
        forgotten
    }

    fn drain(&mut self) {
        while let Some(&first) = self.above.first() {
            if first <= self.prefix {
                self.above.pop_first();
            } else if Some(first) == self.prefix.checked_add(1) {
                self.prefix = first;
                self.above.pop_first();
            } else {
                break;
            }
        }
    }
}

/// One interned origin: its id, what was received of it, and its collection watermark (every
/// counter at or below it was seen by every live node, so a dot at or below it for a (name,
/// origin) without an entry is a re-delivery of something already superseded or collected).
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) id: NodeId,
    pub(crate) ack: Ack,
    pub(crate) watermark: u64,
}

/// The origin table: `NodeId` <-> `u32` slot, with slot reuse after a departure.
#[derive(Clone, Debug, Default)]
pub(crate) struct Origins {
    slots: Vec<Option<Origin>>,
    index: BTreeMap<NodeId, u32>,
    free: Vec<u32>,
}

impl Origins {
    /// How many origins are held.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn lookup(&self, id: &NodeId) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The slot of `id`, interning it if new. The caller enforces the bound on known origins.
    pub(crate) fn intern(&mut self, id: &NodeId) -> u32 {
        if let Some(slot) = self.lookup(id) {
            return slot;
        }
        let origin = Origin { id: id.clone(), ack: Ack::default(), watermark: 0 };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(origin);
                slot
            }
            None => {
                // At most MAX_KNOWN_ORIGINS + 1 slots exist (callers bound `len`), far below u32::MAX.
                self.slots.push(Some(origin));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id.clone(), slot);
        slot
    }

    /// Free `slot` for reuse; the caller has removed every dot naming it.
    pub(crate) fn release(&mut self, slot: u32) {
        if let Some(origin) = self.slots.get_mut(slot as usize).and_then(Option::take) {
            self.index.remove(&origin.id);
            self.free.push(slot);
        }
    }

    pub(crate) fn get(&self, slot: u32) -> &Origin {
        // Invariant (module header): dots only name held slots.
        self.slots[slot as usize].as_ref().expect("a dot names a held origin slot")
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> &mut Origin {
        self.slots[slot as usize].as_mut().expect("a dot names a held origin slot")
    }

    pub(crate) fn id(&self, slot: u32) -> &NodeId {
        &self.get(slot).id
    }

    /// The held (slot, origin) pairs, in `NodeId` order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Origin)> {
        self.index.values().map(|&slot| (slot, self.get(slot)))
    }
}

/// One anti-entropy shard: its names, and the incremental digest and dot count of its content.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shard {
    pub(crate) names: BTreeMap<Box<str>, Dots>,
    pub(crate) digest: u64,
    pub(crate) entries: usize,
}

/// A tombstone's place in the index: (counter, name, origin slot). Oldest counter first, which is
/// the order of early collection (ties between origins are broken by `NodeId`, see the caller).
pub(crate) type TombstoneKey = (u64, Box<str>, u32);

/// The replicated dots, sharded, with the name count and the tombstone index kept in step.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pub(crate) shards: Box<[Shard]>,
    pub(crate) names: usize,
    pub(crate) tombstones: BTreeSet<TombstoneKey>,
}

impl Default for Store {
    fn default() -> Self {
        Self { shards: (0..SHARD_COUNT).map(|_| Shard::default()).collect(), names: 0, tombstones: BTreeSet::new() }
    }
}

impl Store {
    pub(crate) fn dots(&self, shard: usize, name: &str) -> Option<&Dots> {
        self.shards[shard].names.get(name)
    }

    /// Insert `dot` for `name` in `shard`, replacing the dot of the same origin; returns the previous one.
    pub(crate) fn put(&mut self, origins: &Origins, shard: usize, name: &str, dot: CompactDot) -> Option<CompactDot> {
        let Store { shards, names, tombstones } = self;
        let target = &mut shards[shard];
        let previous = match target.names.get_mut(name) {
            None => {
                target.names.insert(name.into(), Dots::One(dot));
                *names += 1;
                None
            }
            Some(Dots::One(current)) if current.origin == dot.origin => Some(std::mem::replace(current, dot)),
            Some(dots) => {
                let slice = dots.as_slice();
                let key = origins.id(dot.origin);
                match slice.binary_search_by(|other| origins.id(other.origin).cmp(key)) {
                    Ok(at) => {
                        let Dots::Many(many) = dots else { unreachable!("a One with another origin never matches") };
                        Some(std::mem::replace(&mut many[at], dot))
                    }
                    Err(at) => {
                        let mut grown = Vec::with_capacity(slice.len() + 1);
                        grown.extend_from_slice(slice);
                        grown.insert(at, dot);
                        *dots = Dots::Many(grown.into_boxed_slice());
                        None
                    }
                }
            }
        };
        let name_key = || -> Box<str> { name.into() };
        match previous {
            Some(old) => {
                target.digest = target.digest.wrapping_sub(entry_hash(name, origins.id(old.origin), &old));
                if old.tombstone {
                    tombstones.remove(&(old.counter, name_key(), old.origin));
                }
            }
            None => target.entries += 1,
        }
        target.digest = target.digest.wrapping_add(entry_hash(name, origins.id(dot.origin), &dot));
        if dot.tombstone {
            tombstones.insert((dot.counter, name_key(), dot.origin));
        }
        previous
    }

    /// Remove the dot of `origin` for `name` in `shard` (and the name if it was its last dot).
    pub(crate) fn take(&mut self, origins: &Origins, shard: usize, name: &str, origin: u32) -> Option<CompactDot> {
        let Store { shards, names, tombstones } = self;
        let target = &mut shards[shard];
        let dots = target.names.get_mut(name)?;
        let removed = match dots {
            Dots::One(dot) if dot.origin == origin => {
                let dot = *dot;
                target.names.remove(name);
                *names -= 1;
                dot
            }
            Dots::One(_) => return None,
            Dots::Many(many) => {
                let at = many.iter().position(|dot| dot.origin == origin)?;
                let dot = many[at];
                let rest: Vec<CompactDot> =
                    many.iter().enumerate().filter(|&(i, _)| i != at).map(|(_, dot)| *dot).collect();
                *dots = if rest.len() == 1 { Dots::One(rest[0]) } else { Dots::Many(rest.into_boxed_slice()) };
                dot
            }
        };
        target.entries -= 1;
        target.digest = target.digest.wrapping_sub(entry_hash(name, origins.id(origin), &removed));
        if removed.tombstone {
            tombstones.remove(&(removed.counter, name.into(), origin));
        }
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_dot_and_a_names_dots_take_24_bytes() {
        assert_eq!(std::mem::size_of::<CompactDot>(), 24);
        assert_eq!(std::mem::size_of::<Dots>(), 24);
    }

    #[test]
    fn ack_prefix_advances_over_gaps_once_they_fill() {
        let mut ack = Ack::default();
        assert!(!ack.see(2));
        assert!(!ack.see(3));
        assert_eq!((ack.prefix, ack.max), (0, 3));
        ack.see(1);
        assert_eq!(ack.prefix, 3);
        assert!(ack.above.is_empty());
        ack.raise(5);
        ack.see(7);
        ack.see(6);
        assert_eq!(ack.prefix, 7);
    }

    #[test]
    fn ack_forgets_beyond_its_gap_bound_and_stays_conservative() {
        let mut ack = Ack::default();
        let mut forgotten = 0;
        for counter in 2..=(MAX_ACK_GAPS as u64 + 2) {
            forgotten += u64::from(ack.see(counter));
        }
        assert_eq!(forgotten, 1);
        assert_eq!(ack.above.len(), MAX_ACK_GAPS);
        ack.see(1);
        // The forgotten (largest) counter is not acknowledged.
        assert_eq!(ack.prefix, MAX_ACK_GAPS as u64 + 1);
        assert_eq!(ack.max, MAX_ACK_GAPS as u64 + 2);
    }
}
