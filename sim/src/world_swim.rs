//! Membership in the simulator with the production SWIM code: each node runs a
//! [`MembershipDriver`] (foca with its timers, joins through a seed, suspicion, the health
//! factor, the stuck-suspicion guard), its envelopes travel on the simulated links between
//! fake addresses (`10.0.<i/250>.<i%250 + 1>:7946`, never a socket), and its timers are
//! events on the virtual clock. The consistent and eventual tiers read its member view.
//!
//! Invariant: foca's RNG is seeded from the run's seed, the node and its incarnation, so the
//! run stays a function of the seed.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;

use bytes::Bytes;
use cohort_cluster::member::{MemberAddrs, MemberInfo, MemberView};
use cohort_cluster::membership::{DriverSettings, MembershipDriver};

use super::{Ev, World};
use crate::nemesis::FaultProfile;
use crate::shell::Wake;

/// Sim frame kind of a membership envelope.
pub(super) const KIND_SWIM: u8 = 201;

/// The fake gossip address of node `i`.
pub(super) fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7946))
}

/// The node index of a fake gossip address.
pub(super) fn node_of(addr: &SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(v4) if v4.port() == 7946 => {
            let [a, b, c, d] = v4.ip().octets();
            (a == 10 && b == 0 && (1..=250).contains(&d)).then(|| usize::from(c) * 250 + usize::from(d) - 1)
        }
        _ => None,
    }
}

/// A node's SWIM side.
#[derive(Default)]
pub(super) struct SwimSide {
    pub(super) driver: Option<MembershipDriver>,
    /// The next wake-up scheduled.
    wake: Wake,
}

impl World {
    pub(super) fn swim_boot(&mut self, i: usize) {
        let id = self.nodes[i].id.clone();
        let addr = gossip_addr(i);
        let info = MemberInfo {
            id: id.clone(),
            addrs: MemberAddrs { gossip: addr, internode: addr, http: addr },
            raft_eligible: true,
            failure_domain: String::new(),
        };
        let mut hasher = DefaultHasher::new();
        (self.cfg.seed, i, id.incarnation).hash(&mut hasher);
        let now = self.node_now(i);
        let mut driver = match MembershipDriver::new(info, DriverSettings::default(), hasher.finish(), now) {
            Ok(driver) => driver,
            Err(error) => {
                self.line(true, || format!("n{i}: membership did not start: {error}"));
                return;
            }
        };
        // Every node knows node 0's address as its seed (node 0 skips its own). With churn (`all`) the
        // first three nodes are seeds, as a real deployment lists several: a spare must be able
        // to join while node 0 is away.
        let seeds = if self.cfg.faults == FaultProfile::All { 3.min(self.cfg.nodes) } else { 1 };
        driver.handle_seeds(now, (0..seeds).map(gossip_addr));
        self.nodes[i].swim = SwimSide { driver: Some(driver), wake: Wake::default() };
        self.swim_flush(i);
    }

    pub(super) fn swim_deliver(&mut self, to: usize, from: usize, payload: &Bytes) {
        let now = self.node_now(to);
        let Some(driver) = self.nodes[to].swim.driver.as_mut() else { return };
        driver.handle_datagram(now, gossip_addr(from), payload);
        self.swim_flush(to);
    }

    /// A wake-up of node `i`'s membership timers.
    pub(super) fn swim_wake(&mut self, i: usize, at: u64) {
        self.nodes[i].swim.wake.fired(at);
        let now = self.node_now(i);
        let Some(driver) = self.nodes[i].swim.driver.as_mut() else { return };
        if driver.poll_timeout().is_some_and(|t| t <= now) {
            driver.handle_timeout(now);
        }
        self.swim_flush(i);
    }

    /// Sends the driver's envelopes and schedules its next timer.
    pub(super) fn swim_flush(&mut self, i: usize) {
        let from = self.nodes[i].id.clone();
        let inc = from.incarnation;
        let node_now = self.node_now(i);
        let mut sends = Vec::new();
        let mut events = Vec::new();
        let n = self.nodes.len();
        let timeout = {
            let Some(driver) = self.nodes[i].swim.driver.as_mut() else { return };
            while let Some(transmit) = driver.poll_transmit() {
                if let Some(j) = node_of(&transmit.to).filter(|j| *j < n && *j != i) {
                    sends.push((j, Bytes::from(transmit.payload)));
                }
            }
            while let Some(event) = driver.poll_event() {
                events.push(event);
            }
            driver.poll_timeout()
        };
        // A leave is done once its re-gossip rounds are: the node is gone.
        if !self.nodes[i].running() && self.nodes[i].swim.driver.as_ref().is_some_and(MembershipDriver::has_left) {
            self.nodes[i].swim = SwimSide::default();
            self.line(false, || format!("n{i} membership: left"));
        }
        for event in events {
            self.line(false, || format!("n{i} membership: {event:?}"));
        }
        for (j, payload) in sends {
            self.send(i, j, from.clone(), KIND_SWIM, payload);
        }
        if let Some(at) = timeout.and_then(|due| self.nodes[i].swim.wake.arm(self.now, node_now, due)) {
            self.schedule(at, Ev::Swim { node: i, inc, at });
        }
    }

    pub(super) fn swim_members(&self, i: usize) -> Vec<MemberView> {
        self.nodes[i].swim.driver.as_ref().map(MembershipDriver::members).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_addresses_map_back_to_their_node() {
        for i in [0, 1, 249, 250, 255, 256, 499] {
            assert_eq!(node_of(&gossip_addr(i)), Some(i));
        }
        assert_eq!(node_of(&SocketAddr::from(([127, 0, 0, 1], 7946))), None);
    }
}
