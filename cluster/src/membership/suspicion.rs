//! Stuck suspicions: a member that stays `suspect` far longer than any suspicion timeout.
//!
//! Why this exists: in SWIM (and foca) only the node that raised a suspicion arms the timer that
//! turns it into `down`; every other node learns `suspect` from gossip and waits for either the
//! suspect's refutation (a higher incarnation) or that `down`. Under flapping partitions both can
//! be lost for good: the suspecting node may renew its own identity (foca then ignores its pending
//! timers) and the suspect may never hear that it is suspected (the update's transmissions were
//! all dropped), so the cluster shows a live node as `suspect` forever (found by the chaos
//! scenario `flapping-partition`). [`StuckSuspicions`] lets every node enforce the timeout itself:
//! a suspicion of one (member, incarnation) held longer than the longest stretched suspicion plus a
//! margin is declared `down` by this node too, which is what the original timer would have done;
//! a live member then hears it, renews and rejoins.
//!
//! Invariants: pure (the caller passes the time and foca's current suspects); one entry per
//! suspected member, so it is bounded by the membership view; a refutation (a new incarnation) or
//! the end of the suspicion restarts or forgets the clock. Ordered maps only: the members reported
//! stuck come out sorted by key, so the order in which the driver declares them down (and so its
//! datagrams) never depends on a hasher's seed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Tracks how long each member has been suspect at its current incarnation.
#[derive(Debug)]
pub(crate) struct StuckSuspicions<K> {
    since: BTreeMap<K, (u64, Instant)>,
    limit: Duration,
}

impl<K: Ord + Clone> StuckSuspicions<K> {
    /// Suspicions held longer than `limit` are reported.
    pub(crate) fn new(limit: Duration) -> Self {
        Self { since: BTreeMap::new(), limit }
    }

    /// Takes the current suspects (member, incarnation) at `now`; returns those suspect at the same
    /// incarnation for longer than the limit, sorted by key (and forgets them: the caller declares
    /// them down).
    pub(crate) fn observe(&mut self, now: Instant, suspects: impl IntoIterator<Item = (K, u64)>) -> Vec<(K, u64)> {
        let current: BTreeMap<K, u64> = suspects.into_iter().collect();
        self.since.retain(|key, (incarnation, _)| current.get(key) == Some(incarnation));
        let mut stuck = Vec::new();
        for (key, incarnation) in current {
            let (_, since) = *self.since.entry(key.clone()).or_insert((incarnation, now));
            if now.saturating_duration_since(since) >= self.limit {
                stuck.push((key, incarnation));
            }
        }
        for (key, _) in &stuck {
            self.since.remove(key);
        }
        stuck
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.since.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_held_past_the_limit_is_reported_once() {
        let t0 = Instant::now();
        let mut stuck = StuckSuspicions::new(Duration::from_secs(10));
        assert!(stuck.observe(t0, [("b", 3)]).is_empty());
        assert!(stuck.observe(t0 + Duration::from_secs(9), [("b", 3)]).is_empty());
        assert_eq!(stuck.observe(t0 + Duration::from_secs(10), [("b", 3)]), vec![("b", 3)]);
        // Forgotten once reported: the clock starts again if foca still shows it.
        assert!(stuck.observe(t0 + Duration::from_secs(11), [("b", 3)]).is_empty());
    }

    #[test]
    fn a_refutation_or_the_end_of_the_suspicion_restarts_the_clock() {
        let t0 = Instant::now();
        let mut stuck = StuckSuspicions::new(Duration::from_secs(10));
        stuck.observe(t0, [("b", 3), ("c", 1)]);
        // b refuted (incarnation 4) and is suspected again; c is no longer suspect.
        assert!(stuck.observe(t0 + Duration::from_secs(8), [("b", 4)]).is_empty());
        assert_eq!(stuck.len(), 1);
        assert!(stuck.observe(t0 + Duration::from_secs(12), [("b", 4)]).is_empty());
        assert_eq!(stuck.observe(t0 + Duration::from_secs(18), [("b", 4)]), vec![("b", 4)]);
        assert!(stuck.observe(t0 + Duration::from_secs(30), std::iter::empty()).is_empty());
        assert_eq!(stuck.len(), 0);
    }
}
