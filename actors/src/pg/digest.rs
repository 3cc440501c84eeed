//! Membership digests and the per-peer repair rule of pg's digest anti-entropy: pure, no I/O.
//!
//! # Why
//! A pg frame dropped while the transport link stays up (a fault on a live link, a frame lost in
//! a reconnect race) is invisible to the sender: nothing retransmits it. The full-state push of
//! the old anti-entropy repaired it only every `peers × 30 s`, and could be lost itself. So every
//! scope sends each peer, every [`super::service::DEFAULT_DIGEST_INTERVAL`], a
//! [`MembershipDigest`] of its own local memberships (a few dozen bytes, SWIM-style push); the
//! receiver compares it with the digest of what it holds for that peer and, on a mismatch, pulls
//! the peer's full state with a `Discover` (the existing sync-by-difference path), rate-limited
//! by [`DigestRepair`]. The full-state push stays as a slow backstop (collisions, peers that do not
//! send digests).
//!
//! # The digest
//! A [`MembershipDigest`] summarises a multiset of memberships `(group, pid)` (a pid counted once
//! per join occurrence) of ONE node: `memberships` is their number and `hash` the sum, modulo
//! 2^64, of a 64-bit hash of each. A sum is a multiset hash that is incremental in both
//! directions: a join adds its memberships' hashes, a leave subtracts them, so a node maintains
//! its digest in O(pids changed) and never scans its state. Both sides hash the same thing: the
//! sender its local pids, the receiver the pids of exactly that sender (same name and
//! incarnation: the scope table only admits a peer's own pids), so the node part of a pid is
//! implied and only `(group, pid.local)` is hashed. The element hash is stable across builds and
//! platforms ([`membership_hash`]: FNV-1a of the group name, mixed with the pid by SplitMix64's
//! finaliser), never std's `DefaultHasher`, whose algorithm may change between Rust releases:
//! two builds of Cohort in one cluster must agree.
//!
//! # Collisions
//! A difference goes unnoticed only if both sides have the same `memberships` AND the same
//! `hash`. A lost join or a lost leave changes `memberships`, so it is always detected; the hash
//! matters when the differences balance in count (a lost join plus a lost leave). Modelling the
//! element hash as random, two different multisets collide when `Σ c_e·h(e) ≡ 0 (mod 2^64)` over
//! the elements `e` whose multiplicities differ by `c_e ≠ 0`: for one such `e`, `c_e·h(e)` is
//! uniform over the multiples of `2^k` where `2^k` is the largest power of two dividing `c_e`,
//! so the probability is at most `2^(k-64)`. A multiplicity difference is below
//! [`super::MAX_MEMBERS_PER_GROUP`] `< 2^17`, so `k ≤ 16`: at most `2^-48` per comparison in the
//! worst case, `2^-64` in the usual one (a difference of one occurrence). At one comparison per
//! peer per scope every 2 s that is far beyond the lifetime of a cluster; and a collision only
//! delays repair to the full-state backstop. Peers are authenticated, so the hash need not resist
//! an adversary choosing group names.
//!
//! # The repair rule ([`DigestRepair`], one per peer)
//! - A digest that matches: in sync; the backoff returns to one period.
//! - A mismatch (or a digest from a peer whose state we do not hold at all): pull (send a
//!   `Discover`) if the peer's credit allows, else remember it and pull when the credit returns.
//! - Credit returns after `backoff + 1` of our own digest ticks, so whole periods separate two
//!   pulls from one peer: a persistent mismatch costs at most one full sync per peer per period,
//!   however fast or jittery the peer's digests arrive.
//! - The backoff (in periods) doubles, up to a cap (the full-state backstop's period), only when
//!   the last full state received from the peer was partly refused by our bounds (a group over
//!   [`super::MAX_MEMBERS_PER_GROUP`] because of other nodes' members, the group bound): that
//!   mismatch persists by design, and pulling every period would only repeat the refusal. A lost
//!   frame, however often it happens, keeps the pull rate at one per period, so repair after a
//!   heal is never slowed by the loss that preceded it.

use serde::{Deserialize, Serialize};

use super::state::{Group, NodeState};
use crate::pid::Pid;

/// A summary of one node's memberships in one scope: their count and the sum of their hashes
/// (see the module docs). Forms a group under [`MembershipDigest::plus`] and
/// [`MembershipDigest::minus`] (wrapping arithmetic: never overflows, never panics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MembershipDigest {
    /// Σ [`membership_hash`] over the memberships, modulo 2^64.
    pub hash: u64,
    /// Number of memberships (join occurrences), modulo 2^64.
    pub memberships: u64,
}

impl MembershipDigest {
    /// The digest of nothing.
    pub const EMPTY: Self = Self { hash: 0, memberships: 0 };

    /// The digest of `pids` (one entry per occurrence) in `group`.
    pub fn of_group(group: &Group, pids: &[Pid]) -> Self {
        let group_hash = group_hash(group.as_str());
        let hash = pids.iter().fold(0u64, |sum, pid| sum.wrapping_add(membership_hash(group_hash, pid.local)));
        Self { hash, memberships: pids.len() as u64 }
    }

    /// The digest of a whole node state (a sync's content), computed from scratch.
    pub fn of_state(state: &NodeState) -> Self {
        state.iter().fold(Self::EMPTY, |sum, (group, pids)| sum.plus(Self::of_group(group, pids)))
    }

    /// The digest of the union of both multisets.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self { hash: self.hash.wrapping_add(other.hash), memberships: self.memberships.wrapping_add(other.memberships) }
    }

    /// The digest of `self` without the multiset `other` (which it contains).
    #[must_use]
    pub const fn minus(self, other: Self) -> Self {
        Self { hash: self.hash.wrapping_sub(other.hash), memberships: self.memberships.wrapping_sub(other.memberships) }
    }

    /// The change of a group from `left` leaving and `joined` joining.
    pub(crate) fn delta(group: &Group, left: &[Pid], joined: &[Pid]) -> Self {
        match (left.is_empty(), joined.is_empty()) {
            (true, true) => Self::EMPTY,
            (true, false) => Self::of_group(group, joined),
            (false, true) => Self::EMPTY.minus(Self::of_group(group, left)),
            (false, false) => Self::of_group(group, joined).minus(Self::of_group(group, left)),
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// SplitMix64's finaliser: a bijection on u64 with full avalanche, so structured inputs
/// (consecutive pid numbers, similar group names) give unrelated outputs.
const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of a group name (FNV-1a, then mixed): computed once per group per change.
pub fn group_hash(group: &str) -> u64 {
    let fnv = group.bytes().fold(FNV_OFFSET, |h, byte| (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
    mix64(fnv ^ group.len() as u64)
}

/// The hash of one membership: pid number `local` in the group whose [`group_hash`] is
/// `group_hash`. Stable across builds and platforms (the wire depends on it).
pub fn membership_hash(group_hash: u64, local: u64) -> u64 {
    // The golden-ratio offset keeps pid 0 of a group from hashing to mix64(group_hash).
    mix64(group_hash ^ mix64(local.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// What to do about one received digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestVerdict {
    /// The digest matches what we hold for the peer.
    InSync,
    /// Mismatch: pull the peer's full state now (send it a `Discover`).
    Pull,
    /// Mismatch, but a pull from this peer was sent too recently: pulled when the credit returns
    /// (see [`DigestRepair::on_tick`]), unless a matching digest arrives first.
    Deferred,
}

/// The rate limit and backoff of digest-driven pulls from one peer (see the module docs). Driven
/// by counts of the scope's own digest ticks: no clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestRepair {
    /// Ticks until a pull is allowed again (0: allowed).
    wait: u32,
    /// A mismatch arrived while pulls were not allowed.
    pending: bool,
    /// Periods between two pulls, from 1 up to the cap.
    backoff: u32,
}

impl Default for DigestRepair {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestRepair {
    /// A peer not pulled from yet: the first mismatch pulls at once.
    pub fn new() -> Self {
        Self { wait: 0, pending: false, backoff: 1 }
    }

    /// A digest from the peer arrived; `matches` says whether it equals what we hold for it
    /// (`false` also when we hold nothing of it).
    pub fn on_digest(&mut self, matches: bool) -> DigestVerdict {
        if matches {
            self.pending = false;
            self.backoff = 1;
            return DigestVerdict::InSync;
        }
        if self.wait == 0 {
            self.pull();
            DigestVerdict::Pull
        } else {
            self.pending = true;
            DigestVerdict::Deferred
        }
    }

    /// One of our digest ticks: returns whether to pull now (a deferred mismatch whose credit
    /// just returned).
    pub fn on_tick(&mut self) -> bool {
        self.wait = self.wait.saturating_sub(1);
        if self.wait == 0 && self.pending {
            self.pull();
            return true;
        }
        false
    }

    /// A full state from the peer was applied; `refused` says whether our bounds refused part of
    /// it (then the digests will keep differing: back off, up to `max_backoff` periods).
    pub fn on_sync(&mut self, refused: bool, max_backoff: u32) {
        self.backoff = if refused { self.backoff.saturating_mul(2).clamp(1, max_backoff.max(1)) } else { 1 };
        // A clean sync ends a backoff at once: the wait left is at most what a pull now would set.
        self.wait = self.wait.min(self.backoff.saturating_add(1));
    }

    /// Whether a mismatch waits for the credit to return.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    fn pull(&mut self) {
        self.pending = false;
        // `backoff` whole periods between two pulls: the tick that ends the current (partial)
        // period does not count.
        self.wait = self.backoff.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use cohort_cluster::NodeId;
    use proptest::prelude::*;

    use super::*;

    fn pid(local: u64) -> Pid {
        Pid::new(NodeId::new("a", 1), local)
    }

    fn group(name: &str) -> Group {
        Group::new(name).unwrap()
    }

    /// Pinned values (computed by an independent Python transcription of the algorithm): the hash
    /// is part of the wire protocol, so a change to it must be deliberate (two builds that hash
    /// differently pull from each other every period).
    #[test]
    fn membership_hash_is_stable_across_builds() {
        assert_eq!(group_hash("g"), 0x55fe_f303_6195_b47c);
        assert_eq!(membership_hash(group_hash("g"), 1), 0xbff1_53e6_6ec7_d1fe);
        let digest = MembershipDigest::of_group(&group("room"), &[pid(1), pid(2), pid(2)]);
        assert_eq!(digest.memberships, 3);
        assert_eq!(digest.hash, 0xa2b8_4166_2b16_43bc);
    }

    #[test]
    fn digest_depends_on_group_pid_and_multiplicity_not_order() {
        let g = group("g");
        let one = MembershipDigest::of_group(&g, &[pid(1), pid(2)]);
        assert_eq!(one, MembershipDigest::of_group(&g, &[pid(2), pid(1)]));
        assert_ne!(one, MembershipDigest::of_group(&group("h"), &[pid(1), pid(2)]));
        assert_ne!(one, MembershipDigest::of_group(&g, &[pid(1), pid(3)]));
        assert_ne!(one, MembershipDigest::of_group(&g, &[pid(1), pid(2), pid(2)]));
        // A join and a leave of different pids keep the count: the hash still differs.
        let swapped = MembershipDigest::of_group(&g, &[pid(1), pid(3)]);
        assert_eq!(one.memberships, swapped.memberships);
        assert_ne!(one.hash, swapped.hash);
    }

    fn memberships() -> impl Strategy<Value = Vec<(u8, u64)>> {
        prop::collection::vec((0u8..4, 0u64..6), 0..24)
    }

    fn state_of(memberships: &[(u8, u64)]) -> NodeState {
        memberships.iter().map(|(g, l)| (group(&format!("g{g}")), vec![pid(*l)])).collect()
    }

    proptest! {
        /// Incremental maintenance equals recomputation: adding every membership then removing a
        /// subset gives the digest of what is left, in any order.
        #[test]
        fn incremental_digest_equals_the_digest_of_the_remaining_state(
            all in memberships(),
            removed_mask in prop::collection::vec(any::<bool>(), 24),
        ) {
            let mut digest = MembershipDigest::EMPTY;
            for (g, l) in &all {
                digest = digest.plus(MembershipDigest::delta(&group(&format!("g{g}")), &[], &[pid(*l)]));
            }
            prop_assert_eq!(digest, MembershipDigest::of_state(&state_of(&all)));
            let mut kept = Vec::new();
            for (i, (g, l)) in all.iter().enumerate() {
                if removed_mask[i] {
                    digest = digest.plus(MembershipDigest::delta(&group(&format!("g{g}")), &[pid(*l)], &[]));
                } else {
                    kept.push((*g, *l));
                }
            }
            prop_assert_eq!(digest, MembershipDigest::of_state(&state_of(&kept)));
        }

        /// Different multisets (as sorted lists) have different digests, on these small inputs.
        #[test]
        fn different_states_have_different_digests(a in memberships(), b in memberships()) {
            let (mut sa, mut sb) = (a.clone(), b.clone());
            sa.sort_unstable();
            sb.sort_unstable();
            let (da, db) = (MembershipDigest::of_state(&state_of(&a)), MembershipDigest::of_state(&state_of(&b)));
            prop_assert_eq!(sa == sb, da == db);
        }
    }

    #[test]
    fn first_mismatch_pulls_at_once_then_at_most_once_per_whole_period() {
        let mut repair = DigestRepair::new();
        assert_eq!(repair.on_digest(false), DigestVerdict::Pull);
        // However many mismatching digests arrive before the period is over: no second pull.
        assert_eq!(repair.on_digest(false), DigestVerdict::Deferred);
        assert_eq!(repair.on_digest(false), DigestVerdict::Deferred);
        assert!(!repair.on_tick(), "the tick ending the partial period of the pull does not count");
        assert!(repair.on_tick(), "one whole period later the deferred mismatch is pulled");
        assert!(!repair.is_pending());
        assert_eq!(repair.on_digest(false), DigestVerdict::Deferred);
    }

    #[test]
    fn a_matching_digest_cancels_a_deferred_pull() {
        let mut repair = DigestRepair::new();
        assert_eq!(repair.on_digest(false), DigestVerdict::Pull);
        assert_eq!(repair.on_digest(false), DigestVerdict::Deferred);
        assert_eq!(repair.on_digest(true), DigestVerdict::InSync);
        assert!(!repair.on_tick());
        assert!(!repair.on_tick());
        assert_eq!(repair.on_digest(false), DigestVerdict::Pull, "credit is back");
    }

    /// Pull times with one digest per period arriving mid-period (time `2i + 1`) and our tick
    /// at the end of it (time `2i + 2`), every digest mismatching.
    fn pull_times(repair: &mut DigestRepair, periods: u64) -> Vec<u64> {
        let mut pulls = Vec::new();
        for i in 0..periods {
            if repair.on_digest(false) == DigestVerdict::Pull {
                pulls.push(2 * i + 1);
            }
            if repair.on_tick() {
                pulls.push(2 * i + 2);
            }
        }
        pulls
    }

    fn min_spacing(times: &[u64]) -> u64 {
        times.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(u64::MAX)
    }

    #[test]
    fn a_persistent_mismatch_pulls_once_per_period() {
        let mut repair = DigestRepair::new();
        let pulls = pull_times(&mut repair, 20);
        assert!(min_spacing(&pulls) >= 2, "at least one whole period between pulls: {pulls:?}");
        assert!(pulls.len() >= 10, "and about one per period: {pulls:?}");
    }

    #[test]
    fn refused_syncs_back_off_to_the_cap_and_a_clean_one_resets() {
        let mut repair = DigestRepair::new();
        for _ in 0..10 {
            repair.on_sync(true, 8);
        }
        assert_eq!(repair.backoff, 8);
        let pulls = pull_times(&mut repair, 90);
        assert!(min_spacing(&pulls) >= 16, "eight periods between pulls: {pulls:?}");
        assert!(pulls.len() >= 9, "{pulls:?}");
        repair.on_sync(false, 8);
        assert_eq!(repair.backoff, 1);
        // A lost frame (no refusal) never slows the pulls down.
        let pulls = pull_times(&mut repair, 20);
        assert!(pulls.len() >= 9, "{pulls:?}");
    }
}
