//! Membership and pg at scale in the simulator: N nodes running the production SWIM driver
//! (`MembershipDriver`) and, unless [`ScaleConfig::pg`] is off, one scope of the production pg
//! code (see [`crate::scale_pg`]), to say how Cohort's membership and process groups behave past
//! what one machine can run for real (issue 12's 100- and 500-node figures).
//!
//! One run: every node boots within the first second with node 0 as its seed, its one process
//! joined to its pg group; then the time until every node sees every other alive (join) and the
//! time until every node shows every node's process in the groups (pg join). Then the cluster is
//! split in two halves (every link between them cut, membership datagrams and pg frames alike):
//! the times until every node sees the other half down (detection) and shows only its own half's
//! processes (pg detection). Then the split heals: the times until every node sees every other
//! alive again (heal) and shows every process again (pg heal). Both times of a phase are measured
//! from the same start (the first boot, the cut, the heal); the phase lasts until both held once,
//! bounded by [`ScaleConfig::phase_limit`]; one that did not hold says so (`None`). The split
//! starts 5 simulated s after the join phase ended.
//!
//! Invariants: every random choice comes from the seed (one RNG; ordered maps only), so a
//! configuration always gives the same report; with pg off no pg code runs and no draw is made
//! for it, so the membership-only runs of before replay exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_cluster::member::{MemberAddrs, MemberInfo};
use cohort_cluster::membership::{DriverSettings, MembershipDriver};
use cohort_cluster::{MembershipEvent, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::net::Net;
use crate::scale_pg::PgNode;
use crate::shell::Wake;

/// Default longest a phase may take before it is reported as not converged (simulated µs): five
/// minutes, far past what an operator would wait for a roster to settle.
pub const PHASE_LIMIT_US: u64 = 300_000_000;
/// Most nodes a scale run takes. pg admits at most `cohort_actors::pg::peers::MAX_PEERS` (1024)
/// peers, so past 1025 nodes pg cannot converge by design.
pub const MAX_SCALE_NODES: usize = 2_000;
/// Longest phase limit a run takes (simulated µs): one hour.
pub const MAX_PHASE_LIMIT_US: u64 = 3_600_000_000;
/// How often a phase checks its conditions (simulated µs). Not the resolution of the figures: a
/// condition that holds is dated back to the last change of the state it reads (see
/// [`Scale::phase`]).
const CHECK_US: u64 = 100_000;
/// Simulated time between the end of the join phase and the split (µs): lets the last
/// announcements and syncs settle, so detection is measured on a quiet cluster.
const SETTLE_US: u64 = 5_000_000;

/// One scale run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleConfig {
    /// Nodes (clamped to `2..=MAX_SCALE_NODES`).
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Whether every node also runs a pg scope (off: membership only, as before pg joined).
    pub pg: bool,
    /// Longest a phase may take (clamped to [`MAX_PHASE_LIMIT_US`]).
    pub phase_limit: Duration,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self { nodes: 10, seed: 1, pg: true, phase_limit: Duration::from_micros(PHASE_LIMIT_US) }
    }
}

/// What a scale run measured (simulated seconds, each from its phase's start).
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleReport {
    /// Nodes.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// From the first boot until every node sees every other alive.
    pub join_s: Option<f64>,
    /// From the split until every node sees the other half down.
    pub detect_s: Option<f64>,
    /// From the heal until every node sees every other alive again.
    pub heal_s: Option<f64>,
    /// From the first boot until every node shows every node's process in the groups (`None`
    /// also when pg is off).
    pub pg_join_s: Option<f64>,
    /// From the split until every node shows only its own half's processes.
    pub pg_detect_s: Option<f64>,
    /// From the heal until every node shows every node's process again.
    pub pg_heal_s: Option<f64>,
    /// Membership envelopes sent in the whole run.
    pub datagrams: u64,
    /// pg frames sent in the whole run.
    pub pg_frames: u64,
    /// pg frames that did not decode or claimed another sender (0 unless a bug).
    pub pg_rejected: u64,
    /// Events processed.
    pub events: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i / 65_536) as u8, ((i / 256) % 256) as u8, (i % 256) as u8], 7946))
}

fn index(addr: &SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(v4) => {
            let [_, a, b, c] = v4.ip().octets();
            Some(usize::from(a) * 65_536 + usize::from(b) * 256 + usize::from(c))
        }
        SocketAddr::V6(_) => None,
    }
}

enum Ev {
    Deliver { to: usize, from: usize, payload: Vec<u8> },
    Wake { node: usize },
    Boot { node: usize },
    PgDeliver { to: usize, from: usize, payload: Bytes },
    PgWake { node: usize },
}

struct Scale {
    base: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    next_slot: usize,
    rng: StdRng,
    net: Net,
    drivers: Vec<Option<MembershipDriver>>,
    wake: Vec<Wake>,
    /// Per node: the peers it holds alive.
    alive: Vec<BTreeSet<usize>>,
    /// Per node: when its `alive` set last changed (µs).
    alive_changed_at: Vec<u64>,
    names: BTreeMap<String, usize>,
    ids: Vec<NodeId>,
    /// Whether the nodes run pg.
    pg_on: bool,
    pg: Vec<Option<PgNode>>,
    pg_wake: Vec<Wake>,
    /// Per node: when its pg table's content last changed (µs; it drained events).
    pg_changed_at: Vec<u64>,
    phase_limit_us: u64,
    datagrams: u64,
    pg_frames: u64,
    pg_rejected: u64,
    processed: u64,
}

impl Scale {
    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let slot = self.next_slot;
        self.next_slot += 1;
        self.events.insert(slot, ev);
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    fn boot(&mut self, i: usize, seed: u64) {
        let id = self.ids[i].clone();
        let info = MemberInfo {
            id,
            addrs: MemberAddrs { gossip: addr(i), internode: addr(i), http: addr(i) },
            raft_eligible: false,
            failure_domain: String::new(),
        };
        let now = self.instant();
        let Ok(mut driver) = MembershipDriver::new(info, DriverSettings::default(), seed ^ (i as u64) << 20, now)
        else {
            return;
        };
        driver.handle_seeds(now, [addr(0)]);
        self.drivers[i] = Some(driver);
        if self.pg_on {
            // Derived from the driver's seed, not drawn: pg must not shift the run's draws.
            self.pg[i] = Some(PgNode::boot(i, &self.ids[i], now, seed.rotate_left(32) ^ i as u64));
        }
        self.flush(i);
        self.pg_flush(i);
    }

    fn flush(&mut self, i: usize) {
        let now = self.instant();
        let Some(driver) = self.drivers[i].as_mut() else { return };
        let mut sends = Vec::new();
        while let Some(t) = driver.poll_transmit() {
            if let Some(j) = index(&t.to).filter(|j| *j != i && *j < self.alive.len()) {
                sends.push((j, t.payload));
            }
        }
        let mut events = Vec::new();
        while let Some(event) = driver.poll_event() {
            events.push(event);
        }
        let timeout = driver.poll_timeout();
        if let Some(pg) = self.pg[i].as_mut() {
            for event in &events {
                pg.member_event(now, event);
            }
        }
        let pg_changed = !events.is_empty();
        for event in events {
            match event {
                MembershipEvent::Up(m) => {
                    if let Some(j) = self.names.get(&m.id.name)
                        && self.alive[i].insert(*j)
                    {
                        self.alive_changed_at[i] = self.now;
                    }
                }
                MembershipEvent::Down(m) | MembershipEvent::Left(m) => {
                    if let Some(j) = self.names.get(&m.id.name)
                        && self.alive[i].remove(j)
                    {
                        self.alive_changed_at[i] = self.now;
                    }
                }
            }
        }
        for (j, payload) in sends {
            self.datagrams += 1;
            for at in self.net.route(&mut self.rng, self.now, i, j) {
                self.schedule(at, Ev::Deliver { to: j, from: i, payload: payload.clone() });
            }
        }
        if let Some(at) = timeout.and_then(|due| self.wake[i].arm(self.now, now, due)) {
            self.schedule(at, Ev::Wake { node: i });
        }
        if pg_changed {
            self.pg_flush(i);
        }
    }

    /// Sends node `i`'s pg frames and arms its pg timer.
    fn pg_flush(&mut self, i: usize) {
        let now = self.instant();
        let Some(pg) = self.pg[i].as_mut() else { return };
        let (changed, sends, due) = pg.flush(now);
        if changed {
            self.pg_changed_at[i] = self.now;
        }
        for (peer, bytes) in sends {
            let Some(&j) = self.names.get(&peer) else { continue };
            self.pg_frames += 1;
            for at in self.net.route(&mut self.rng, self.now, i, j) {
                self.schedule(at, Ev::PgDeliver { to: j, from: i, payload: bytes.clone() });
            }
        }
        if let Some(at) = due.and_then(|due| self.pg_wake[i].arm(self.now, now, due)) {
            self.schedule(at, Ev::PgWake { node: i });
        }
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, _, slot))) = self.queue.pop() else { return false };
        self.now = at;
        self.processed += 1;
        let Some(ev) = self.events.remove(&slot) else { return true };
        match ev {
            Ev::Boot { node } => {
                let seed = self.rng.random_range(0..u64::MAX);
                self.boot(node, seed);
            }
            Ev::Deliver { to, from, payload } => {
                if self.net.is_cut(from, to) {
                    return true;
                }
                let now = self.instant();
                if let Some(driver) = self.drivers[to].as_mut() {
                    driver.handle_datagram(now, addr(from), &payload);
                }
                self.flush(to);
            }
            Ev::Wake { node } => {
                self.wake[node].fired(at);
                let now = self.instant();
                if let Some(driver) = self.drivers[node].as_mut()
                    && driver.poll_timeout().is_some_and(|t| t <= now)
                {
                    driver.handle_timeout(now);
                }
                self.flush(node);
            }
            Ev::PgDeliver { to, from, payload } => {
                if self.net.is_cut(from, to) {
                    return true;
                }
                let now = self.instant();
                if let Some(pg) = self.pg[to].as_mut()
                    && !pg.deliver(now, &self.ids[from], &payload)
                {
                    self.pg_rejected += 1;
                }
                self.pg_flush(to);
            }
            Ev::PgWake { node } => {
                self.pg_wake[node].fired(at);
                let now = self.instant();
                if let Some(pg) = self.pg[node].as_mut() {
                    pg.wake(now);
                }
                self.pg_flush(node);
            }
        }
        true
    }

    /// Runs until `done` holds (checked every [`CHECK_US`]) or the phase limit; the time it
    /// took, in seconds.
    fn until(&mut self, done: impl Fn(&Self) -> bool) -> Option<f64> {
        self.phase(done, |_| true).0
    }

    /// Runs until `membership` and (with pg) `pg` have each held once (checked every
    /// [`CHECK_US`]) or the phase limit; for each, the seconds from the phase's start until it
    /// first held. Exact to the µs: each condition is one exact state per node (a roster, a set
    /// of processes), so one that holds at a check has held since the last change of any node's
    /// state it reads, and not just before it (every content change of a pg table drains events).
    fn phase(&mut self, membership: impl Fn(&Self) -> bool, pg: impl Fn(&Self) -> bool) -> (Option<f64>, Option<f64>) {
        let start = self.now;
        let mut next_check = self.now;
        let (mut membership_s, mut pg_s) = (None, None);
        let since =
            |changed_at: &[u64]| (changed_at.iter().copied().max().unwrap_or(0).max(start) - start) as f64 / 1e6;
        loop {
            if self.now >= next_check {
                if membership_s.is_none() && membership(self) {
                    membership_s = Some(since(&self.alive_changed_at));
                }
                if self.pg_on && pg_s.is_none() && pg(self) {
                    pg_s = Some(since(&self.pg_changed_at));
                }
                if membership_s.is_some() && (pg_s.is_some() || !self.pg_on) {
                    return (membership_s, pg_s);
                }
                next_check = self.now + CHECK_US;
            }
            if self.now - start > self.phase_limit_us || !self.step() {
                return (membership_s, pg_s);
            }
        }
    }

    /// Whether every node's pg table shows exactly the processes of the nodes `expected(i)`
    /// (group counts first, for every node, as they are cheap to compare).
    fn pg_shows(&self, expected: impl Fn(usize) -> std::ops::Range<usize>) -> bool {
        let index = |name: &str| self.names.get(name).copied();
        self.pg.iter().enumerate().all(|(i, pg)| pg.as_ref().is_some_and(|pg| pg.counts_match(&expected(i))))
            && self.pg.iter().enumerate().all(|(i, pg)| pg.as_ref().is_some_and(|pg| pg.shows(&expected(i), index)))
    }
}

/// One scale run of `nodes` nodes with pg and the default phase limit (see the module docs).
pub fn membership_scale(nodes: usize, seed: u64) -> ScaleReport {
    run_scale(&ScaleConfig { nodes, seed, ..ScaleConfig::default() })
}

/// One scale run (see the module docs).
pub fn run_scale(config: &ScaleConfig) -> ScaleReport {
    let nodes = config.nodes.clamp(2, MAX_SCALE_NODES);
    let seed = config.seed;
    let mut sim = Scale {
        base: Instant::now(),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        next_slot: 0,
        rng: StdRng::seed_from_u64(seed),
        net: Net::default(),
        drivers: (0..nodes).map(|_| None).collect(),
        wake: vec![Wake::default(); nodes],
        alive: vec![BTreeSet::new(); nodes],
        alive_changed_at: vec![0; nodes],
        names: (0..nodes).map(|i| (format!("m{i}"), i)).collect(),
        ids: (0..nodes).map(|i| NodeId::new(format!("m{i}"), 1)).collect(),
        pg_on: config.pg,
        pg: (0..nodes).map(|_| None).collect(),
        pg_wake: vec![Wake::default(); nodes],
        pg_changed_at: vec![0; nodes],
        phase_limit_us: u64::try_from(config.phase_limit.as_micros()).unwrap_or(u64::MAX).min(MAX_PHASE_LIMIT_US),
        datagrams: 0,
        pg_frames: 0,
        pg_rejected: 0,
        processed: 0,
    };
    for i in 0..nodes {
        let at = if i == 0 { 0 } else { sim.rng.random_range(0..1_000_000) };
        sim.schedule(at, Ev::Boot { node: i });
    }
    let everyone = |s: &Scale| s.alive.iter().all(|a| a.len() == nodes - 1);
    let pg_everyone = |s: &Scale| s.pg_shows(|_| 0..nodes);
    let (join_s, pg_join_s) = sim.phase(everyone, pg_everyone);
    // Split into halves: every link between them cut, both ways.
    let half = nodes / 2;
    let links: BTreeSet<(usize, usize)> =
        (0..half).flat_map(|a| (half..nodes).flat_map(move |b| [(a, b), (b, a)])).collect();
    let settle = sim.now + SETTLE_US;
    sim.until(|s| s.now >= settle);
    sim.net.cut(1, links);
    let separated = |s: &Scale| {
        s.alive.iter().enumerate().all(|(i, a)| a.iter().all(|j| (i < half) == (*j < half)))
            && s.alive.iter().enumerate().all(|(i, a)| a.len() == if i < half { half - 1 } else { nodes - half - 1 })
    };
    let pg_separated = |s: &Scale| s.pg_shows(|i| if i < half { 0..half } else { half..nodes });
    let (detect_s, pg_detect_s) = sim.phase(separated, pg_separated);
    sim.net.heal(1);
    let (heal_s, pg_heal_s) = sim.phase(everyone, pg_everyone);
    ScaleReport {
        nodes,
        seed,
        join_s,
        detect_s,
        heal_s,
        pg_join_s,
        pg_detect_s,
        pg_heal_s,
        datagrams: sim.datagrams,
        pg_frames: sim.pg_frames,
        pg_rejected: sim.pg_rejected,
        events: sim.processed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_nodes_join_detect_a_split_and_heal_membership_and_pg_and_a_seed_replays() {
        let a = membership_scale(10, 4);
        assert!(a.join_s.is_some_and(|s| s < 30.0), "{a:?}");
        assert!(a.detect_s.is_some_and(|s| s < 60.0), "{a:?}");
        assert!(a.heal_s.is_some_and(|s| s < 30.0), "{a:?}");
        // pg follows membership: never before it, and within a few seconds of it (a discover and
        // a sync after each member_up; a member_down removes at once).
        for (membership, pg) in [(a.join_s, a.pg_join_s), (a.detect_s, a.pg_detect_s), (a.heal_s, a.pg_heal_s)] {
            let (Some(membership), Some(pg)) = (membership, pg) else { panic!("pg did not converge: {a:?}") };
            assert!(pg >= membership && pg < membership + 5.0, "{a:?}");
        }
        assert!(a.pg_frames > 0 && a.pg_rejected == 0, "{a:?}");
        assert_eq!(a, membership_scale(10, 4));
    }

    #[test]
    fn without_pg_no_pg_frame_is_sent_and_membership_is_measured_alone() {
        let a = run_scale(&ScaleConfig { nodes: 10, seed: 4, pg: false, ..ScaleConfig::default() });
        assert!(a.join_s.is_some() && a.detect_s.is_some() && a.heal_s.is_some(), "{a:?}");
        assert_eq!((a.pg_join_s, a.pg_detect_s, a.pg_heal_s, a.pg_frames), (None, None, None, 0), "{a:?}");
        assert_eq!(a, run_scale(&ScaleConfig { nodes: 10, seed: 4, pg: false, ..ScaleConfig::default() }));
    }

    #[test]
    fn fake_addresses_map_back_to_their_node() {
        for i in [0, 1, 255, 256, 1_999] {
            assert_eq!(index(&addr(i)), Some(i));
        }
    }
}
