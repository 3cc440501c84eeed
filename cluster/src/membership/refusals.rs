//! Refused connections: the transport's evidence that a member's process is gone.
//!
//! Why this exists: SWIM finds a dead member by probing it, which takes a probe period to
//! notice and a suspicion timeout to conclude (about 2 s with the defaults). But a process killed
//! on a reachable host tells on itself at once: its kernel closes its connections and then
//! refuses new ones (TCP RST) on the port nobody listens on any more. A partition never produces
//! that (packets are dropped, a dial times out), so a refused dial is strong evidence, the same a
//! closed connection is to Erlang's distribution (`nodedown` within milliseconds).
//!
//! Strong is not certain (a firewall may `reject` instead of `drop`), so the evidence goes
//! through SWIM's own safety net rather than around it:
//! 1. the first refusal of a live member's incarnation makes this node **suspect** it (gossiped:
//!    a live member hears it and refutes with a higher incarnation, as for any suspicion);
//! 2. if the member is still at that incarnation [`CONFIRM_AFTER`] later and its port refused
//!    again in between, this node declares it **down**;
//! 3. a member that refuted is not suspected on this evidence again for [`QUIET_AFTER_REFUTATION`]
//!    (a rejecting firewall must not make it flap).
//!
//! Invariants: pure (the caller passes the time and foca's view); one entry per member, so bounded
//! by the membership view ([`MAX_TRACKED`] on top, counted by the caller when refused); ordered
//! maps only, so the members declared down come out sorted (the simulator's determinism).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a member suspected on a refused connection has to refute before it is declared down.
/// Long enough for the suspicion to reach it through gossip and its refutation to come back
/// (two gossip periods and a probe round trip), short enough that a killed node is down
/// everywhere within a second.
pub(crate) const CONFIRM_AFTER: Duration = Duration::from_millis(500);

/// How long refused connections to a member that refuted such a suspicion are ignored.
pub(crate) const QUIET_AFTER_REFUTATION: Duration = Duration::from_secs(30);

/// How long a single refusal is remembered without a second one.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(5);

/// The most members tracked at once (the membership view bounds it already; this is the guard
/// against a transport reporting names membership never had).
pub(crate) const MAX_TRACKED: usize = 4096;

/// What the caller should do about a report.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing now.
    Wait,
    /// Suspect the member at this incarnation (first evidence).
    Suspect,
    /// Refused: the table is full.
    Full,
}

#[derive(Debug)]
struct Entry {
    incarnation: u64,
    first: Instant,
    refusals: u32,
}

/// Refusal evidence per member key `K`.
#[derive(Debug)]
pub(crate) struct Refusals<K> {
    entries: BTreeMap<K, Entry>,
    quiet_until: BTreeMap<K, Instant>,
}

impl<K> Default for Refusals<K> {
    fn default() -> Self {
        Self { entries: BTreeMap::new(), quiet_until: BTreeMap::new() }
    }
}

impl<K: Ord + Clone> Refusals<K> {
    /// A refused connection to `key`, which foca lists as alive at `incarnation`.
    pub(crate) fn report(&mut self, now: Instant, key: K, incarnation: u64) -> Verdict {
        if self.quiet_until.get(&key).is_some_and(|until| now < *until) {
            return Verdict::Wait;
        }
        self.quiet_until.remove(&key);
        match self.entries.get_mut(&key) {
            Some(entry) if entry.incarnation == incarnation => {
                entry.refusals = entry.refusals.saturating_add(1);
                Verdict::Wait
            }
            existing => {
                if existing.is_none() && self.entries.len() >= MAX_TRACKED {
                    return Verdict::Full;
                }
                self.entries.insert(key, Entry { incarnation, first: now, refusals: 1 });
                Verdict::Suspect
            }
        }
    }

    /// Takes foca's current view of the tracked members (`None`: gone or down) at `now`; returns
    /// those to declare down (at their incarnation), sorted, and forgets them. A member seen at a
    /// higher incarnation refuted: it is forgotten and quiet for [`QUIET_AFTER_REFUTATION`].
    pub(crate) fn observe(&mut self, now: Instant, incarnation_of: impl Fn(&K) -> Option<u64>) -> Vec<(K, u64)> {
        let mut down = Vec::new();
        let mut refuted = Vec::new();
        self.entries.retain(|key, entry| match incarnation_of(key) {
            None => false,
            Some(current) if current > entry.incarnation => {
                refuted.push(key.clone());
                false
            }
            Some(_) if now >= entry.first + CONFIRM_AFTER && entry.refusals >= 2 => {
                down.push((key.clone(), entry.incarnation));
                false
            }
            Some(_) => now < entry.first + FORGET_AFTER,
        });
        for key in refuted {
            self.quiet_until.insert(key, now + QUIET_AFTER_REFUTATION);
        }
        self.quiet_until.retain(|_, until| now < *until);
        down
    }

    /// When [`Refusals::observe`] next has something to decide: the earliest confirmation
    /// deadline of a member refused twice (one refused once waits for a second report, which
    /// comes with its own call). `observe` removes every entry it decides, so this never stays
    /// in the past.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.entries.values().filter(|entry| entry.refusals >= 2).map(|entry| entry.first + CONFIRM_AFTER).min()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_member_refused_twice_and_silent_for_the_confirmation_window_is_declared_down() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.report(t0, "b", 7), Verdict::Suspect);
        assert_eq!(r.next_due(), None, "one refusal decides nothing");
        assert_eq!(r.report(t0 + 200 * MS, "b", 7), Verdict::Wait);
        assert_eq!(r.next_due(), Some(t0 + CONFIRM_AFTER));
        assert!(r.observe(t0 + 499 * MS, |_| Some(7)).is_empty(), "not before the window ends");
        assert_eq!(r.observe(t0 + CONFIRM_AFTER, |_| Some(7)), vec![("b", 7)]);
        assert_eq!(r.len(), 0, "declared once");
    }

    #[test]
    fn one_refusal_alone_never_downs_and_is_forgotten() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        r.report(t0, "b", 7);
        assert!(r.observe(t0 + 2 * CONFIRM_AFTER, |_| Some(7)).is_empty());
        assert_eq!(r.len(), 1);
        assert!(r.observe(t0 + FORGET_AFTER, |_| Some(7)).is_empty());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_refutation_forgets_the_evidence_and_quiets_the_member() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        r.report(t0, "b", 7);
        r.report(t0 + 100 * MS, "b", 7);
        // b heard the suspicion and renewed: alive at 8.
        assert!(r.observe(t0 + 300 * MS, |_| Some(8)).is_empty());
        assert_eq!(r.len(), 0);
        assert_eq!(r.report(t0 + 400 * MS, "b", 8), Verdict::Wait, "quiet after a refutation");
        assert!(r.observe(t0 + QUIET_AFTER_REFUTATION + 300 * MS, |_| Some(8)).is_empty());
        assert_eq!(r.report(t0 + QUIET_AFTER_REFUTATION + 400 * MS, "b", 8), Verdict::Suspect);
    }

    #[test]
    fn a_member_already_gone_is_forgotten_and_a_new_incarnation_starts_over() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        r.report(t0, "b", 7);
        r.report(t0, "c", 1);
        r.report(t0 + MS, "c", 1);
        assert!(r.observe(t0 + CONFIRM_AFTER, |k| (*k == "c").then_some(1)).contains(&("c", 1)));
        assert_eq!(r.len(), 0, "b went down by other means");
        assert_eq!(r.report(t0, "d", 1), Verdict::Suspect);
        assert_eq!(r.report(t0, "d", 2), Verdict::Suspect, "another incarnation is new evidence");
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        for i in 0..MAX_TRACKED {
            assert_eq!(r.report(t0, i, 1), Verdict::Suspect);
        }
        assert_eq!(r.report(t0, MAX_TRACKED, 1), Verdict::Full);
        assert_eq!(r.report(t0, 0, 1), Verdict::Wait, "a tracked member is still counted");
    }
}
