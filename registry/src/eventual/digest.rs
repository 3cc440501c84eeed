//! Sharded digests for anti-entropy of the eventual tier (pure, no I/O).
//!
//! Role: names are split into [`SHARD_COUNT`] shards by a stable hash of the name ([`shard_of`]).
//! [`EventualState::digest`] gives one 64-bit digest per shard; two replicas exchange digests
//! periodically and, for each differing shard ([`differing_shards`]), one sends its [`ShardState`]
//! ([`EventualState::shard_state`]) and the other merges it ([`EventualState::merge_shard`]), so a
//! mismatch moves only the differing shards. Once digests are equal, a replica may adopt its peer's
//! acknowledgement ([`EventualState::adopt_peer_clock`]).
//!
//! Cost: a shard's digest is maintained incrementally on every insert, replacement and removal of a
//! dot (the state's names live in per-shard maps, see `store`), so [`EventualState::digest`] is
//! O([`SHARD_COUNT`]) and [`EventualState::shard_state`] is O(dots in that shard).
//!
//! Invariants and why equal digests mean equal contents: each dot is an entry (name, origin,
//! counter, value), and a shard holds at most one entry per (name, origin), so its content is a
//! set. `entry_hash` maps an entry to 64 bits: the first 8 bytes of SHA-256 over a domain tag and
//! an unambiguous (length-prefixed, fixed-width) encoding of the entry, identical on every node,
//! platform and release. A shard's digest is the wrapping sum (mod 2^64) of its entries' hashes, so
//! it depends on the set only (not on insertion order or on the replica's origin numbering) and is
//! updated in O(1) by adding or subtracting one hash. Modelling the truncated SHA-256 as a random
//! function, two different sets A and B have some entry x in one and not the other; fixing every
//! other entry's hash, the sums agree for exactly one value of h(x), so P[digest(A) = digest(B)] =
//! 2^-64 per shard compared. This holds for honest content; it is no defence against a peer choosing
//! entries to collide (such a peer can already send any dot). A received shard state is validated in
//! full (index, size, every name in its shard, every dot) before anything is merged. Departed-origin
//! markers are not part of the shards: every survivor derives them from membership.
//!
//! Known limit: a shard holding more than [`MAX_SHARD_ENTRIES`] dots (only reachable with many
//! origins per name near [`super::MAX_NAMES`]) is refused whole by the receiver, so it cannot be
//! repaired by a pull; the actor should count and log such refusals.

use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::crdt::{Delta, EventualError, EventualState, MergeOutcome, validate_delta};
use super::store::CompactDot;

/// Number of anti-entropy shards. 64 keeps a digest at 512 bytes (one small frame) while a
/// single differing name costs only about 1/64 of the state to repair.
pub const SHARD_COUNT: usize = 64;

/// Most entries (dots) in one received [`ShardState`]: the names a shard can hold on average with
/// the default bounds ([`super::MAX_NAMES`] / [`SHARD_COUNT`]) times a few origins each, with
/// headroom for skew; anything larger is refused before merging.
pub const MAX_SHARD_ENTRIES: usize = 65_536;

/// One digest per shard, indexed by shard: the wrapping sum of the shard's entry hashes (0 when empty).
pub type Digest = [u64; SHARD_COUNT];

/// The shard of a name: the first 8 bytes of SHA-256 of the name, big-endian, modulo [`SHARD_COUNT`].
/// Stable across nodes, platforms and releases (unlike `std`'s `DefaultHasher`).
pub fn shard_of(name: &str) -> usize {
    let bytes = Sha256::new().chain_update(b"cohort-eventual-shard\0").chain_update(name.as_bytes()).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(first) % SHARD_COUNT as u64) as usize
}

/// The indices where two digests differ, in order: the shards to pull.
pub fn differing_shards(ours: &Digest, theirs: &Digest) -> Vec<usize> {
    (0..SHARD_COUNT).filter(|&i| ours[i] != theirs[i]).collect()
}

/// The dots of one shard, as sent to a peer whose digest differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// The shard index, below [`SHARD_COUNT`].
    pub shard: usize,
    /// Every (name, dot) of the shard, in (name, origin) order.
    pub entries: Vec<Delta>,
}

/// The 64-bit hash of one entry (see the module header). The pid's node is not fed: it equals the
/// origin (validated on the way in), so the pid number determines the pid.
pub(crate) fn entry_hash(name: &str, origin: &NodeId, dot: &CompactDot) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"cohort-eventual-entry\0");
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update((origin.name.len() as u64).to_be_bytes());
    hasher.update(origin.name.as_bytes());
    hasher.update(origin.incarnation.to_be_bytes());
    hasher.update(dot.counter.to_be_bytes());
    if dot.tombstone {
        hasher.update([0u8]);
    } else {
        hasher.update([1u8, dot.priority]);
        hasher.update(dot.local.to_be_bytes());
    }
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first)
}

impl EventualState {
    /// The per-shard digests of this replica's dots, maintained incrementally: O([`SHARD_COUNT`]).
    pub fn digest(&self) -> Digest {
        let mut digest = [0u64; SHARD_COUNT];
        for (slot, shard) in digest.iter_mut().zip(self.store().shards.iter()) {
            *slot = shard.digest;
        }
        digest
    }

    /// The dots of shard `shard`, to send to a peer: O(dots in that shard).
    pub fn shard_state(&self, shard: usize) -> Result<ShardState, EventualError> {
        if shard >= SHARD_COUNT {
            return Err(EventualError::ShardOutOfRange { shard });
        }
        let mut entries = Vec::with_capacity(self.store().shards[shard].entries);
        entries.extend(self.shard_entries(shard).map(|(name, dot)| Delta { name: name.to_owned(), dot }));
        Ok(ShardState { shard, entries })
    }

    /// Merge a peer's shard state. The whole shard is validated first; on any error nothing is merged.
    pub fn merge_shard(&mut self, shard: &ShardState) -> Result<MergeOutcome, EventualError> {
        if shard.shard >= SHARD_COUNT {
            return Err(EventualError::ShardOutOfRange { shard: shard.shard });
        }
        if shard.entries.len() > MAX_SHARD_ENTRIES {
            return Err(EventualError::ShardTooLarge { len: shard.entries.len(), max: MAX_SHARD_ENTRIES });
        }
        for delta in &shard.entries {
            validate_delta(delta)?;
            if shard_of(&delta.name) != shard.shard {
                return Err(EventualError::NameNotInShard);
            }
        }
        Ok(self.merge_entries(shard.shard, &shard.entries))
    }

    /// The digest recomputed from scratch (tests compare it with the incremental one).
    #[cfg(test)]
    pub(crate) fn recomputed_digest(&self) -> Digest {
        let mut digest = [0u64; SHARD_COUNT];
        for (shard, slot) in digest.iter_mut().enumerate() {
            for (name, dots) in &self.store().shards[shard].names {
                for dot in dots.as_slice() {
                    *slot = slot.wrapping_add(entry_hash(name, self.origins().id(dot.origin), dot));
                }
            }
        }
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventual::VersionVector;
    use cohort_actors::Pid;
    use cohort_cluster::NodeId;

    #[test]
    fn a_live_entry_whose_tombstone_the_origin_collected_is_pruned_by_the_origins_own_shard() {
        let (a_id, b_id) = (NodeId::new("a", 1), NodeId::new("b", 1));
        let mut a = EventualState::new(a_id.clone());
        let mut b = EventualState::new(b_id);
        b.apply(&a.register("svc", Pid::new(a_id.clone(), 1), 0).unwrap()).unwrap();
        b.apply(&a.register("other", Pid::new(a_id.clone(), 2), 0).unwrap()).unwrap();
        // b never hears of the unregister (cut off), and a collects the tombstone.
        a.unregister("svc").unwrap();
        let mut seen = VersionVector::new();
        seen.observe(&a_id, 3);
        assert_eq!(a.collect_tombstones(&seen), 1);
        let counter = a.version_vector().get(&a_id);
        let svc = shard_of("svc");
        // A merge alone cannot remove b's stale entry (absence is not deletion) ...
        b.merge_shard(&a.shard_state(svc).unwrap()).unwrap();
        assert!(b.winner("svc").is_some());
        // ... nor can a copy taken before the entry's counter ...
        assert!(!b.prune_superseded_by_origin(&a.shard_state(svc).unwrap(), &a_id, 0).changed);
        // ... but the origin's own copy can, and only that entry goes.
        let outcome = b.prune_superseded_by_origin(&a.shard_state(svc).unwrap(), &a_id, counter);
        assert!(outcome.changed);
        assert_eq!(outcome.winner_changes.len(), 1);
        assert!(b.winner("svc").is_none());
        assert!(b.winner("other").is_some());
        for shard in 0..SHARD_COUNT {
            let theirs = a.shard_state(shard).unwrap();
            b.merge_shard(&theirs).unwrap();
            b.prune_superseded_by_origin(&theirs, &a_id, counter);
        }
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn shard_of_is_in_range_and_stable() {
        for name in ["", "a", "svc", "a-much-longer-service-name"] {
            assert!(shard_of(name) < SHARD_COUNT);
            assert_eq!(shard_of(name), shard_of(name));
        }
    }

    #[test]
    fn one_differing_name_differs_in_exactly_its_shard() {
        let mut a = EventualState::new(NodeId::new("a", 1));
        let b = a.clone();
        a.register("svc", Pid::new(NodeId::new("a", 1), 1), 0).unwrap();
        assert_eq!(differing_shards(&a.digest(), &b.digest()), vec![shard_of("svc")]);
    }

    #[test]
    fn pulling_the_differing_shards_repairs_the_replica() {
        let mut a = EventualState::new(NodeId::new("a", 1));
        let mut b = EventualState::new(NodeId::new("b", 1));
        for i in 0..20 {
            a.register(&format!("n{i}"), Pid::new(NodeId::new("a", 1), i), 0).unwrap();
        }
        for shard in differing_shards(&b.digest(), &a.digest()) {
            b.merge_shard(&a.shard_state(shard).unwrap()).unwrap();
        }
        assert_eq!(a.digest(), b.digest());
        assert!(a.same_content(&b));
    }

    #[test]
    fn bad_shard_states_are_refused_whole() {
        let mut a = EventualState::new(NodeId::new("a", 1));
        a.register("svc", Pid::new(NodeId::new("a", 1), 1), 0).unwrap();
        let mut b = EventualState::new(NodeId::new("b", 1));
        assert_eq!(a.shard_state(SHARD_COUNT).unwrap_err(), EventualError::ShardOutOfRange { shard: SHARD_COUNT });
        let mut wrong = a.shard_state(shard_of("svc")).unwrap();
        wrong.shard = (wrong.shard + 1) % SHARD_COUNT;
        assert_eq!(b.merge_shard(&wrong).unwrap_err(), EventualError::NameNotInShard);
        let mut oversized = a.shard_state(shard_of("svc")).unwrap();
        oversized.entries = vec![oversized.entries[0].clone(); MAX_SHARD_ENTRIES + 1];
        assert!(matches!(b.merge_shard(&oversized), Err(EventualError::ShardTooLarge { .. })));
        assert_eq!(b.name_count(), 0);
    }
}
