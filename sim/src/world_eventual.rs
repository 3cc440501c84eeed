//! The eventual tier in the simulator: each node runs the production [`EventualDriver`]; its
//! deltas are gossiped to the live peers of the node's membership view (one datagram each, the
//! network's loss applies, nobody forwards: anti-entropy repairs what gossip loses), its
//! anti-entropy frames (digest, pull, shards) travel encoded on the simulated links, and the
//! failure detector's verdicts become its `Up`/`Down` changes and live peers.
//!
//! Invariant: a crash loses the node's eventual state (the tier keeps none on disk); the restarted
//! incarnation starts empty and learns the names back from its peers.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use cohort_cluster::NodeId;
use cohort_cluster::member::MemberView;
use cohort_registry::eventual::driver::{Event, MemberChange, Outgoing};
use cohort_registry::eventual::wire::{self, GossipDelta};
use cohort_registry::eventual::{EventualConfig, EventualDriver, Frame};
use rand::RngExt;

use super::{Status, Verdict, World};
use crate::shell::{ViewChange, follow_view};

/// Sim frame kinds of the eventual tier's anti-entropy: this plus the wire kind (1-3).
pub(super) const KIND_EVENTUAL_BASE: u8 = 110;
/// Sim frame kind of a gossiped delta.
pub(super) const KIND_EVENTUAL_DELTA: u8 = 120;
/// Eventual names the clients use.
const EVENTUAL_NAMES: usize = 6;
/// Largest gossiped delta accepted (the membership layer's broadcast bound on real nodes).
const MAX_DELTA_BYTES: usize = 1_200;

/// What a node's eventual tier followed of its membership view.
#[derive(Default)]
pub(super) struct EventualSide {
    pub(super) driver: Option<EventualDriver>,
    /// Per peer name: the incarnation last seen and whether it was given as up.
    view: BTreeMap<String, (NodeId, bool)>,
}

impl World {
    pub(super) fn eventual_boot(&mut self, i: usize, now: Instant) {
        let local = self.nodes[i].id.clone();
        self.nodes[i].eventual = EventualSide {
            driver: Some(EventualDriver::new(local, EventualConfig::default(), now)),
            view: BTreeMap::new(),
        };
    }

    pub(super) fn eventual_deliver(&mut self, to: usize, from: &NodeId, kind: u8, payload: &Bytes) {
        let now = self.node_now(to);
        let Some(driver) = self.nodes[to].eventual.driver.as_mut() else { return };
        if kind == KIND_EVENTUAL_DELTA {
            match wire::decode_gossip(payload, MAX_DELTA_BYTES) {
                Ok(delta) => {
                    driver.handle_delta(now, &delta.into_delta());
                }
                Err(_) => self.stats.malformed += 1,
            }
        } else {
            match Frame::decode(kind - KIND_EVENTUAL_BASE, payload) {
                Ok(frame) => driver.handle_frame(now, from, frame),
                Err(_) => self.stats.malformed += 1,
            }
        }
        self.eventual_flush(to);
    }

    /// Membership changes and the round timer.
    pub(super) fn eventual_tick(&mut self, i: usize, members: &[MemberView]) {
        let now = self.node_now(i);
        let side = &mut self.nodes[i].eventual;
        let Some(driver) = side.driver.as_mut() else { return };
        let changes = follow_view(&mut side.view, members);
        let live = side.view.values().filter(|(_, up)| *up).map(|(id, _)| id.clone());
        for change in &changes {
            let change = match change {
                ViewChange::Up(id) => MemberChange::Up(id.clone()),
                ViewChange::Down(id) => MemberChange::Down(id.clone()),
            };
            driver.handle_member_change(now, change);
        }
        driver.handle_live_peers(now, live.collect::<Vec<_>>());
        if driver.poll_timeout().is_some_and(|t| t <= now) {
            driver.handle_timeout(now);
        }
        for change in changes {
            self.line(false, || format!("n{i} eventual: {change:?}"));
        }
        self.eventual_flush(i);
    }

    /// Sends what the driver asks for.
    pub(super) fn eventual_flush(&mut self, i: usize) {
        let from = self.nodes[i].id.clone();
        let live: Vec<usize> = self.nodes[i]
            .eventual
            .view
            .values()
            .filter(|(_, up)| *up)
            .filter_map(|(id, _)| self.index_of(&id.name))
            .collect();
        let index: BTreeMap<String, usize> = self.nodes.iter().enumerate().map(|(j, n)| (n.name.clone(), j)).collect();
        let mut frames: Vec<(usize, u8, Bytes)> = Vec::new();
        {
            let Some(driver) = self.nodes[i].eventual.driver.as_mut() else { return };
            while let Some(broadcast) = driver.poll_broadcast() {
                let body = Bytes::from(wire::encode(&GossipDelta::from_delta(&broadcast.delta)));
                for j in &live {
                    frames.push((*j, KIND_EVENTUAL_DELTA, body.clone()));
                }
            }
            while let Some(transmit) = driver.poll_transmit() {
                let Some(&j) = index.get(&transmit.to.name) else { continue };
                let encoded: Vec<Frame> = match transmit.message {
                    Outgoing::Digest(msg) => vec![Frame::Digest(msg)],
                    Outgoing::Pull(msg) => vec![Frame::Pull(msg)],
                    Outgoing::Shards { pull, origin_counter, shards } => {
                        driver.shard_frames(pull, origin_counter, &shards).into_iter().map(Frame::Shards).collect()
                    }
                };
                for frame in encoded {
                    let (kind, body) = frame.encode();
                    frames.push((j, KIND_EVENTUAL_BASE + kind, Bytes::from(body)));
                }
            }
            while let Some(Event::Revoked { .. }) = driver.poll_event() {
                self.stats.eventual_revoked += 1;
            }
        }
        for (j, kind, body) in frames {
            self.send(i, j, from.clone(), kind, body);
        }
    }

    /// One eventual client operation on node `i`: register (60%) or unregister a name.
    pub(super) fn eventual_client(&mut self, i: usize) {
        let name = format!("ev-{}", self.rng.random_range(0..EVENTUAL_NAMES));
        let local = 1 + self.rng.random_range(0..super::PIDS_PER_NODE);
        let pid = self.pid(i, local);
        let register = self.rng.random_range(0..100) < 60;
        let now = self.node_now(i);
        let Some(driver) = self.nodes[i].eventual.driver.as_mut() else { return };
        let ok = if register {
            driver.handle_register(now, &name, &pid, 0).is_ok()
        } else {
            driver.handle_unregister(now, &name, Some(&pid)).is_ok()
        };
        if ok {
            self.stats.eventual_writes_ok += 1;
        }
        self.eventual_flush(i);
    }

    /// Whether every running node holds the same eventual names, none owned by a process of an
    /// incarnation that is gone.
    pub(super) fn eventual_agree(&self) -> Result<usize, String> {
        let mut reference: Option<(&str, Vec<(String, String)>)> = None;
        for node in self.nodes.iter().filter(|n| n.member) {
            let Some(driver) = node.eventual.driver.as_ref() else {
                return Err(format!("{} is not running", node.name));
            };
            let names: Vec<(String, String)> = driver.list().into_iter().map(|(n, p)| (n, p.to_string())).collect();
            for (name, pid) in &names {
                let owner = self.nodes.iter().find(|n| pid.starts_with(&format!("<{}.", n.name)));
                if let Some(owner) = owner
                    && !pid.starts_with(&format!("<{}.{}.", owner.name, owner.id.incarnation))
                {
                    return Err(format!(
                        "{} shows {name} owned by {pid}, a process of an incarnation that is gone",
                        node.name
                    ));
                }
            }
            match &reference {
                None => reference = Some((&node.name, names)),
                Some((first, reference)) if *reference != names => {
                    return Err(format!(
                        "{} and {first} hold different eventual names: {names:?} vs {reference:?}",
                        node.name
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(reference.map_or(0, |(_, names)| names.len()))
    }

    /// After the clients stopped: the first instant every node agrees (checked on ticks).
    pub(super) fn eventual_watch(&mut self) {
        if self.now >= self.client_stop && self.eventual_converged_at.is_none() && self.eventual_agree().is_ok() {
            self.eventual_converged_at = Some(self.now);
        }
    }

    /// `eventual_converged`: at the end every node holds the same names (the detail says how long
    /// after the last write they first agreed).
    pub(super) fn eventual_converged(&self) -> Verdict {
        const NAME: &str = "eventual_converged";
        match (self.eventual_agree(), self.eventual_converged_at) {
            (Err(detail), _) => Verdict { name: NAME, status: Status::Fail, detail },
            (Ok(names), Some(at)) => {
                let after = at.saturating_sub(self.client_stop) as f64 / 1e6;
                Verdict {
                    name: NAME,
                    status: Status::Pass,
                    detail: format!("{names} names on every node {after:.3} s after the last write"),
                }
            }
            (Ok(_), None) => Verdict { name: NAME, status: Status::Fail, detail: "never observed converged".into() },
        }
    }
}
