//! Membership at scale in the simulator: N nodes running only the production SWIM driver
//! (`MembershipDriver`), to say how Cohort's membership behaves past what one machine can run
//! for real (issue 12's 100- and 500-node figures).
//!
//! One run: every node boots within the first second with node 0 as its seed; then the time
//! until every node sees every other alive (join). Then the cluster is split in two halves (every
//! link between them cut): the time until every node sees the other half down (detection). Then
//! the split heals: the time until every node sees every other alive again (heal). Each phase is
//! bounded by [`PHASE_LIMIT_US`]; a phase that does not converge says so (`None`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cohort_cluster::member::{MemberAddrs, MemberInfo};
use cohort_cluster::membership::{DriverSettings, MembershipDriver};
use cohort_cluster::{MembershipEvent, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::net::Net;
use crate::shell::Wake;

/// Longest a phase may take before it is reported as not converged (simulated µs).
pub const PHASE_LIMIT_US: u64 = 300_000_000;
/// Most nodes a scale run takes.
pub const MAX_SCALE_NODES: usize = 2_000;

/// What a scale run measured (simulated seconds).
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
    /// Envelopes sent in the whole run.
    pub datagrams: u64,
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
    names: BTreeMap<String, usize>,
    datagrams: u64,
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
        let id = NodeId::new(format!("m{i}"), 1);
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
        self.flush(i);
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
        for event in events {
            match event {
                MembershipEvent::Up(m) => {
                    if let Some(j) = self.names.get(&m.id.name) {
                        self.alive[i].insert(*j);
                    }
                }
                MembershipEvent::Down(m) | MembershipEvent::Left(m) => {
                    if let Some(j) = self.names.get(&m.id.name) {
                        self.alive[i].remove(j);
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
        }
        true
    }

    /// Runs until `done` holds (checked every 100 ms simulated) or the phase limit; the time it
    /// took, in seconds.
    fn until(&mut self, done: impl Fn(&Self) -> bool) -> Option<f64> {
        let start = self.now;
        let mut next_check = self.now;
        loop {
            if self.now >= next_check {
                if done(self) {
                    return Some((self.now - start) as f64 / 1e6);
                }
                next_check = self.now + 100_000;
            }
            if self.now - start > PHASE_LIMIT_US || !self.step() {
                return None;
            }
        }
    }
}

/// One scale run of `nodes` nodes (see the module docs).
pub fn membership_scale(nodes: usize, seed: u64) -> ScaleReport {
    let nodes = nodes.clamp(2, MAX_SCALE_NODES);
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
        names: (0..nodes).map(|i| (format!("m{i}"), i)).collect(),
        datagrams: 0,
        processed: 0,
    };
    for i in 0..nodes {
        let at = if i == 0 { 0 } else { sim.rng.random_range(0..1_000_000) };
        sim.schedule(at, Ev::Boot { node: i });
    }
    let everyone = |s: &Scale| s.alive.iter().all(|a| a.len() == nodes - 1);
    let join_s = sim.until(everyone);
    // Split into halves: every link between them cut, both ways.
    let half = nodes / 2;
    let links: BTreeSet<(usize, usize)> =
        (0..half).flat_map(|a| (half..nodes).flat_map(move |b| [(a, b), (b, a)])).collect();
    let settle = sim.now + 5_000_000;
    sim.until(|s| s.now >= settle);
    sim.net.cut(1, links);
    let separated = |s: &Scale| {
        s.alive.iter().enumerate().all(|(i, a)| a.iter().all(|j| (i < half) == (*j < half)))
            && s.alive.iter().enumerate().all(|(i, a)| a.len() == if i < half { half - 1 } else { nodes - half - 1 })
    };
    let detect_s = sim.until(separated);
    sim.net.heal(1);
    let heal_s = sim.until(everyone);
    ScaleReport { nodes, seed, join_s, detect_s, heal_s, datagrams: sim.datagrams, events: sim.processed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_nodes_join_detect_a_split_and_heal_and_a_seed_replays() {
        let a = membership_scale(10, 4);
        assert!(a.join_s.is_some_and(|s| s < 30.0), "{a:?}");
        assert!(a.detect_s.is_some_and(|s| s < 60.0), "{a:?}");
        assert!(a.heal_s.is_some_and(|s| s < 30.0), "{a:?}");
        assert_eq!(a, membership_scale(10, 4));
    }

    #[test]
    fn fake_addresses_map_back_to_their_node() {
        for i in [0, 1, 255, 256, 1_999] {
            assert_eq!(index(&addr(i)), Some(i));
        }
    }
}
