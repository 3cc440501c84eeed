//! pg in the simulator: each node runs one scope ("default") of the production pg code, its
//! [`ScopeTable`] (written by the node's clients) and its [`Peers`] driver (discover retries,
//! syncs and their cuts, batches, digests and pulls, anti-entropy); its frames travel encoded on
//! the simulated links; the membership view's changes become the service's `member_up` /
//! `member_down` work (an older incarnation's members removed first, as the service does).
//!
//! Invariant: a crash loses the node's pg state (the tier keeps none on disk); the restarted
//! incarnation starts empty and joins its groups again through its clients.

use std::collections::BTreeMap;

use bytes::Bytes;
use cohort_actors::pg::PgConfig;
use cohort_actors::pg::peers::{Peers, PeersConfig, SendFailure, SyncReason};
use cohort_actors::pg::snapshot::ScopeTable;
use cohort_actors::pg::state::Group;
use cohort_actors::pg::wire::PgFrame;
use cohort_cluster::NodeId;
use cohort_cluster::member::MemberView;
use rand::RngExt;

use super::{Status, Verdict, World};
use crate::shell::{ViewChange, follow_view};

/// Sim frame kind of a pg frame.
pub(super) const KIND_PG: u8 = 130;
/// Groups the clients join and leave.
const GROUPS: usize = 4;
/// Events drained from the outbox per batch (the scope actor's frame size).
const DRAIN: usize = 256;

/// What one node sees: per group, its members (pid strings, sorted).
type GroupView = Vec<(String, Vec<String>)>;

/// A node's pg side.
#[derive(Default)]
pub(super) struct PgSide {
    table: Option<ScopeTable>,
    peers: Option<Peers>,
    /// Per peer name: the incarnation last seen and whether it was up.
    view: BTreeMap<String, (NodeId, bool)>,
}

impl World {
    pub(super) fn pg_boot(&mut self, i: usize) {
        let id = self.nodes[i].id.clone();
        let now = self.node_now(i);
        let seed = self.rng.random_range(0..u64::MAX);
        let config = PeersConfig::from_pg(&PgConfig::default());
        self.nodes[i].pg = PgSide {
            table: Some(ScopeTable::new(id.clone())),
            peers: Some(Peers::new("default", id, config, now, seed)),
            view: BTreeMap::new(),
        };
    }

    pub(super) fn pg_deliver(&mut self, to: usize, from: &NodeId, payload: &Bytes) {
        let now = self.node_now(to);
        let side = &mut self.nodes[to].pg;
        let (Some(table), Some(peers)) = (side.table.as_ref(), side.peers.as_mut()) else { return };
        // The service drops frames of a node it does not hold up (and of an older incarnation).
        if side.view.get(&from.name).is_none_or(|(known, up)| known != from || !up) {
            return;
        }
        match rmp_serde::from_slice::<PgFrame>(payload) {
            Ok(frame) if frame.from == *from => peers.handle_message(now, table, from, frame.message),
            _ => self.stats.malformed += 1,
        }
        self.pg_flush(to);
    }

    /// Membership changes, the driver's timer, and the outbox.
    pub(super) fn pg_tick(&mut self, i: usize, members: &[MemberView]) {
        let now = self.node_now(i);
        let side = &mut self.nodes[i].pg;
        let (Some(table), Some(peers)) = (side.table.as_ref(), side.peers.as_mut()) else { return };
        for change in follow_view(&mut side.view, members) {
            match change {
                ViewChange::Up(id) => {
                    let _ = table.add_peer(&id);
                    peers.handle_peer_up(now, table, &id, SyncReason::Connect);
                }
                // A newer run's older one goes first (the service's member_up), as a down does.
                ViewChange::Down(id) => {
                    table.node_down(&id);
                    peers.handle_peer_down(now, &id.name);
                }
            }
        }
        if peers.poll_timeout().is_some_and(|t| t <= now) {
            peers.handle_timeout(now, table);
        }
        self.pg_flush(i);
    }

    /// Drains the outbox into the driver and sends what it asks for.
    pub(super) fn pg_flush(&mut self, i: usize) {
        let now = self.node_now(i);
        let from = self.nodes[i].id.clone();
        let index: BTreeMap<String, usize> = self.nodes.iter().enumerate().map(|(j, n)| (n.name.clone(), j)).collect();
        {
            let side = &mut self.nodes[i].pg;
            let (Some(table), Some(peers)) = (side.table.as_ref(), side.peers.as_mut()) else { return };
            loop {
                let events = table.drain_events(DRAIN);
                let complete = events.len() < DRAIN;
                if !events.is_empty() || complete {
                    peers.handle_drained(now, events, complete);
                }
                if complete {
                    break;
                }
            }
        }
        // Each transmit is queued before the next is polled, and a full pg queue is reported back
        // to the driver (it resyncs the peer), as the pg scope's shell does.
        while let Some(transmit) = self.nodes[i].pg.peers.as_mut().and_then(Peers::poll_transmit) {
            let Some(&j) = index.get(&transmit.peer) else { continue };
            if !self.send(i, j, from.clone(), KIND_PG, transmit.bytes) {
                self.links.take_resync(i, j);
                if let Some(peers) = self.nodes[i].pg.peers.as_mut() {
                    peers.handle_send_failure(now, SendFailure::Overflowed);
                }
            }
        }
        if let Some(peers) = self.nodes[i].pg.peers.as_mut() {
            while peers.poll_event().is_some() {}
        }
    }

    /// One pg client operation on node `i`: join (60%) or leave a group.
    pub(super) fn pg_client(&mut self, i: usize) {
        let Ok(group) = Group::new(&format!("g{}", self.rng.random_range(0..GROUPS))) else { return };
        let local = 1 + self.rng.random_range(0..super::PIDS_PER_NODE);
        let pid = self.pid(i, local);
        let join = self.rng.random_range(0..100) < 60;
        let Some(table) = self.nodes[i].pg.table.as_ref() else { return };
        let ok = if join { table.join(&group, &[pid]).is_ok() } else { table.leave(&group, &[pid]).is_ok() };
        if ok {
            self.stats.pg_writes_ok += 1;
        }
        self.pg_flush(i);
    }

    /// Whether every running node sees the same members in every group, none a process of a run
    /// that is gone.
    pub(super) fn pg_agree(&self) -> Result<usize, String> {
        let mut reference: Option<(&str, GroupView)> = None;
        for node in self.nodes.iter().filter(|n| n.member) {
            let Some(table) = node.pg.table.as_ref() else { return Err(format!("{} is not running", node.name)) };
            let mut groups = Vec::new();
            for g in 0..GROUPS {
                let name = format!("g{g}");
                let mut members: Vec<String> = table.get_members(&name).iter().map(|p| p.to_string()).collect();
                members.sort();
                for pid in &members {
                    let owner = self.nodes.iter().find(|n| pid.starts_with(&format!("<{}.", n.name)));
                    if let Some(owner) = owner
                        && !pid.starts_with(&format!("<{}.{}.", owner.name, owner.id.incarnation))
                    {
                        return Err(format!("{} shows {pid} in {name}, a process of a run that is gone", node.name));
                    }
                }
                groups.push((name, members));
            }
            match &reference {
                None => reference = Some((&node.name, groups)),
                Some((first, reference)) if *reference != groups => {
                    return Err(format!(
                        "{} and {first} see different pg members: {groups:?} vs {reference:?}",
                        node.name
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(reference.map_or(0, |(_, groups)| groups.iter().map(|(_, m)| m.len()).sum()))
    }

    /// After the clients stopped: the first instant every node agrees (checked on ticks).
    pub(super) fn pg_watch(&mut self) {
        if self.now >= self.client_stop && self.pg_converged_at.is_none() && self.pg_agree().is_ok() {
            self.pg_converged_at = Some(self.now);
        }
    }

    /// `pg_converged`: at the end every node sees the same group members.
    pub(super) fn pg_converged(&self) -> Verdict {
        const NAME: &str = "pg_converged";
        match (self.pg_agree(), self.pg_converged_at) {
            (Err(detail), _) => Verdict { name: NAME, status: Status::Fail, detail },
            (Ok(members), Some(at)) => Verdict {
                name: NAME,
                status: Status::Pass,
                detail: format!(
                    "{members} memberships on every node {:.3} s after the last write",
                    at.saturating_sub(self.client_stop) as f64 / 1e6
                ),
            },
            (Ok(_), None) => Verdict { name: NAME, status: Status::Fail, detail: "never observed converged".into() },
        }
    }
}
