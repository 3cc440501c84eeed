//! The simulated network: per-link delivery times drawn from the run's RNG, partitions as sets
//! of cut directed links, loss, duplication, delay and reordering windows.
//!
//! Invariants: a frame on a cut link is dropped (at send and, if the cut appeared while it was in
//! flight, at delivery: a TCP connection does not survive a partition); without a `slow` window a
//! link is FIFO (the real transport is one ordered stream per peer and class); every decision
//! draws from the RNG passed in, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};

use rand::RngExt;
use rand::rngs::StdRng;

/// One-way latency of a healthy link, in microseconds (a LAN: 150-600 µs).
pub const BASE_LATENCY_US: (u64, u64) = (150, 600);

/// What the network did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the network.
    pub sent: u64,
    /// Dropped on a cut link.
    pub dropped_cut: u64,
    /// Dropped by a loss window.
    pub dropped_loss: u64,
    /// Delivered twice by a loss window.
    pub duplicated: u64,
}

/// The network's fault state and per-link ordering.
#[derive(Debug, Default)]
pub struct Net {
    /// Cut directed links, per fault (a heal removes its fault's cuts only: faults overlap).
    cuts: BTreeMap<u64, BTreeSet<(usize, usize)>>,
    /// Loss probability per active loss window.
    loss: BTreeMap<u64, f64>,
    /// Extra delay bound (µs) per active slow window; links reorder while one is active.
    slow: BTreeMap<u64, u64>,
    /// The last delivery time per link (FIFO).
    tails: BTreeMap<(usize, usize), u64>,
    /// Counters.
    pub stats: NetStats,
}

impl Net {
    /// Cuts `links` under fault `id`.
    pub fn cut(&mut self, id: u64, links: BTreeSet<(usize, usize)>) {
        self.cuts.insert(id, links);
    }

    /// Starts a loss window.
    pub fn lossy(&mut self, id: u64, p: f64) {
        self.loss.insert(id, p);
    }

    /// Starts a slow (delaying, reordering) window.
    pub fn slow(&mut self, id: u64, max_extra_us: u64) {
        self.slow.insert(id, max_extra_us);
    }

    /// Ends fault `id`, whatever it was.
    pub fn heal(&mut self, id: u64) {
        self.cuts.remove(&id);
        self.loss.remove(&id);
        self.slow.remove(&id);
    }

    /// Ends every fault.
    pub fn heal_all(&mut self) {
        self.cuts.clear();
        self.loss.clear();
        self.slow.clear();
    }

    /// Whether `from -> to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cuts.values().any(|c| c.contains(&(from, to)))
    }

    /// Whether a loss or slow window is active (availability is then a matter of degree).
    pub fn degraded(&self) -> bool {
        !self.loss.is_empty() || !self.slow.is_empty()
    }

    /// The delivery times of one frame `from -> to` sent at `now_us` (none: dropped; two:
    /// duplicated).
    pub fn route(&mut self, rng: &mut StdRng, now_us: u64, from: usize, to: usize) -> Vec<u64> {
        self.stats.sent += 1;
        if self.is_cut(from, to) {
            self.stats.dropped_cut += 1;
            return Vec::new();
        }
        let loss = self.loss.values().copied().fold(0.0, f64::max);
        if loss > 0.0 && rng.random_bool(loss) {
            self.stats.dropped_loss += 1;
            return Vec::new();
        }
        let extra = self.slow.values().copied().max().unwrap_or(0);
        let mut at = now_us + rng.random_range(BASE_LATENCY_US.0..BASE_LATENCY_US.1);
        if extra > 0 {
            at += rng.random_range(0..extra);
        } else {
            let tail = self.tails.entry((from, to)).or_insert(0);
            at = at.max(*tail);
            *tail = at;
        }
        let mut times = vec![at];
        if loss > 0.0 && rng.random_bool(loss / 4.0) {
            self.stats.duplicated += 1;
            times.push(at + rng.random_range(BASE_LATENCY_US.0..BASE_LATENCY_US.1));
        }
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_cut_link_drops_one_direction_and_a_heal_restores_it() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut net = Net::default();
        net.cut(7, BTreeSet::from([(0, 1)]));
        assert!(net.route(&mut rng, 0, 0, 1).is_empty());
        assert_eq!(net.route(&mut rng, 0, 1, 0).len(), 1);
        net.heal(7);
        assert_eq!(net.route(&mut rng, 0, 0, 1).len(), 1);
        assert_eq!(net.stats.dropped_cut, 1);
    }

    #[test]
    fn a_healthy_link_is_fifo() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut net = Net::default();
        let times: Vec<u64> = (0..200).map(|i| net.route(&mut rng, i, 0, 1)[0]).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
}
