//! Deterministic simulated network for the consistent tier's `RaftCore` (issue 6).
//!
//! The harness owns 3 or 5 cores and delivers their messages itself: nothing runs on a clock or a
//! socket, so every test is a fixed sequence of ticks and deliveries. Partitions drop messages
//! between chosen nodes; a "killed" node neither ticks nor receives and its core is dropped (its
//! durable backend survives, so it can be reopened).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use cohort_actors::Pid;
use cohort_cluster::{MemberState, NodeId};
use cohort_registry::consistent::core::{CoreConfig, ProposalId, RaftCore, ReadId};
use cohort_registry::consistent::freshness::decide;
use cohort_registry::consistent::fsm::{Command, CommandResult, Proposal, RequestId};
use cohort_registry::consistent::ladder::{LadderMember, LadderPolicy, RaftConfig, raft_id_for, reconcile};
use cohort_registry::consistent::storage::{LogBackend, MemoryBackend, RedbBackend};
use cohort_registry::consistent::{
    Admission, ConfStep, ConfStepKind, DegradedMode, Freshness, ReadRequest, RestartState, Transition, TransitionPhase,
};
use raft::eraftpb::Message;

/// Bound on harness loops: a test that needs more has found a liveness bug.
const MAX_ROUNDS: usize = 2_000;

enum Disk {
    Memory(MemoryBackend),
    Redb(PathBuf),
}

impl Disk {
    fn backend(&self) -> Box<dyn LogBackend> {
        match self {
            Disk::Memory(m) => Box::new(m.clone()),
            Disk::Redb(dir) => Box::new(RedbBackend::open(dir).expect("open redb")),
        }
    }
}

struct SimNode {
    id: NodeId,
    disk: Disk,
    core: Option<RaftCore>,
    results: BTreeMap<ProposalId, Result<CommandResult, Admission>>,
    reads: BTreeMap<ReadId, u64>,
}

struct Sim {
    nodes: BTreeMap<u64, SimNode>,
    order: Vec<u64>,
    in_flight: VecDeque<Message>,
    cut: BTreeSet<(u64, u64)>,
    config: fn(u64, NodeId) -> CoreConfig,
    seq: u64,
}

fn default_config(raft_id: u64, node: NodeId) -> CoreConfig {
    CoreConfig::new(raft_id, node)
}

impl Sim {
    /// `voters` seed nodes bootstrapped together, plus `joiners` uninitialised nodes.
    fn new(voters: usize, joiners: usize, config: fn(u64, NodeId) -> CoreConfig, redb_for: Option<usize>) -> Self {
        let ids: Vec<NodeId> = (0..voters + joiners).map(|i| NodeId::new(format!("n{i}"), 1)).collect();
        let seed: Vec<(u64, NodeId)> = ids[..voters].iter().map(|n| (raft_id_for(n), n.clone())).collect();
        let mut sim = Sim {
            nodes: BTreeMap::new(),
            order: Vec::new(),
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            config,
            seq: 0,
        };
        for (i, id) in ids.into_iter().enumerate() {
            let raft_id = raft_id_for(&id);
            let disk = if redb_for == Some(i) {
                let dir = std::env::temp_dir().join(format!("cohort-raft-sim-{}-{}", std::process::id(), raft_id));
                let _ = std::fs::remove_dir_all(&dir);
                Disk::Redb(dir)
            } else {
                Disk::Memory(MemoryBackend::new())
            };
            let bootstrap = (i < voters).then_some(seed.as_slice());
            let core = RaftCore::open(disk.backend(), config(raft_id, id.clone()), bootstrap).expect("open core");
            assert_eq!(core.restart_state(), &RestartState::Clean);
            sim.order.push(raft_id);
            sim.nodes.insert(
                raft_id,
                SimNode { id, disk, core: Some(core), results: BTreeMap::new(), reads: BTreeMap::new() },
            );
        }
        sim
    }

    fn id(&self, i: usize) -> u64 {
        self.order[i]
    }

    fn core(&self, raft_id: u64) -> &RaftCore {
        self.nodes[&raft_id].core.as_ref().expect("node is running")
    }

    fn core_mut(&mut self, raft_id: u64) -> &mut RaftCore {
        self.nodes.get_mut(&raft_id).and_then(|n| n.core.as_mut()).expect("node is running")
    }

    fn running(&self) -> Vec<u64> {
        self.order.iter().copied().filter(|id| self.nodes[id].core.is_some()).collect()
    }

    /// Handles every node's Ready and delivers messages until the network is quiet.
    fn pump(&mut self) {
        for _ in 0..MAX_ROUNDS {
            for id in self.running() {
                let node = self.nodes.get_mut(&id).unwrap();
                let out = node.core.as_mut().unwrap().handle_ready().expect("handle_ready");
                for a in out.applied {
                    node.results.insert(a.proposal_id, Ok(a.applied.result));
                }
                for f in out.failed {
                    node.results.insert(f.proposal_id, Err(f.admission));
                }
                for r in out.reads {
                    node.reads.insert(r.read_id, r.read_index);
                }
                self.in_flight.extend(out.messages);
            }
            if self.in_flight.is_empty() {
                return;
            }
            while let Some(msg) = self.in_flight.pop_front() {
                if self.cut.contains(&(msg.from, msg.to)) {
                    continue;
                }
                if std::env::var("SIM_TRACE").is_ok() {
                    eprintln!(
                        "{} -> {}: {:?} idx {} logterm {} reject {} snap {}",
                        msg.from % 1000,
                        msg.to % 1000,
                        msg.get_msg_type(),
                        msg.index,
                        msg.log_term,
                        msg.reject,
                        msg.get_snapshot().get_metadata().index
                    );
                }
                if let Some(core) = self.nodes.get_mut(&msg.to).and_then(|n| n.core.as_mut()) {
                    let _ = core.step(msg);
                }
            }
        }
        panic!("network did not quiesce");
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for id in self.running() {
                self.core_mut(id).tick();
            }
            self.pump();
        }
    }

    /// Ticks until the running nodes agree on one leader among them.
    fn leader(&mut self) -> u64 {
        for _ in 0..MAX_ROUNDS {
            self.pump();
            let running = self.running();
            let leaders: Vec<u64> = running.iter().copied().filter(|id| self.core(*id).is_leader()).collect();
            if let [leader] = leaders[..] {
                // Uninitialised joiners know no leader until they are added.
                let reachable = running
                    .iter()
                    .filter(|id| !self.cut.contains(&(leader, **id)) && !self.core(**id).conf_state().voters.is_empty())
                    .copied();
                if reachable.clone().all(|id| self.core(id).leader() == Some(leader)) {
                    return leader;
                }
            }
            self.tick(1);
        }
        panic!("no leader elected");
    }

    fn propose(&mut self, on: u64, command: Command) -> ProposalId {
        self.seq += 1;
        let request = RequestId::new(self.nodes[&on].id.clone(), self.seq);
        self.propose_with(on, request, command)
    }

    fn propose_with(&mut self, on: u64, request: RequestId, command: Command) -> ProposalId {
        self.core_mut(on).propose(&Proposal::new(request, command)).expect("proposal taken")
    }

    /// Drives the network until `on` has the result of `proposal`.
    fn result(&mut self, on: u64, proposal: ProposalId) -> Result<CommandResult, Admission> {
        for _ in 0..MAX_ROUNDS {
            self.pump();
            if let Some(r) = self.nodes.get_mut(&on).unwrap().results.remove(&proposal) {
                return r;
            }
            self.tick(1);
        }
        panic!("no result for proposal {proposal} on {on}");
    }

    /// Proposes and waits; retries with the same request id on `Failed` (as the actor will).
    fn write(&mut self, on: u64, command: Command) -> CommandResult {
        self.seq += 1;
        let request = RequestId::new(self.nodes[&on].id.clone(), self.seq);
        for _ in 0..20 {
            let Ok(p) = self.core_mut(on).propose(&Proposal::new(request.clone(), command.clone())) else {
                self.tick(1);
                continue;
            };
            match self.result(on, p) {
                Ok(r) => return r,
                Err(_) => self.tick(1),
            }
        }
        panic!("write never applied");
    }

    fn isolate(&mut self, id: u64) {
        for other in self.order.clone() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn kill(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().core = None;
        self.in_flight.retain(|m| m.to != id);
    }

    fn restart(&mut self, id: u64) -> RestartState {
        let node = &self.nodes[&id];
        let core = RaftCore::open(node.disk.backend(), (self.config)(id, node.id.clone()), None).expect("reopen");
        let state = core.restart_state().clone();
        self.nodes.get_mut(&id).unwrap().core = Some(core);
        state
    }

    /// Ticks until every running node has applied the leader's commit index.
    fn converge(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let running = self.running();
            let max = running.iter().map(|id| self.core(*id).stats().commit_index).max().unwrap_or(0);
            if running.iter().all(|id| self.core(*id).fsm().applied().index >= max) {
                return;
            }
            self.tick(1);
        }
        let state: Vec<_> = self
            .running()
            .iter()
            .map(|id| {
                let c = self.core(*id);
                (c.role(), c.fsm().applied().index, c.stats().commit_index, c.conf_state().clone(), c.store_stats())
            })
            .collect();
        panic!("nodes did not converge: {state:#?}");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            node.core = None;
            if let Disk::Redb(dir) = &node.disk {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn pid_on(sim: &Sim, raft_id: u64, local: u64) -> Pid {
    Pid::new(sim.nodes[&raft_id].id.clone(), local)
}

fn register(name: &str, pid: Pid) -> Command {
    Command::Register { name: name.into(), pid }
}

fn registered_token(r: &CommandResult) -> u64 {
    match r {
        CommandResult::Registered { fence_token } => *fence_token,
        other => panic!("expected Registered, got {other:?}"),
    }
}

fn small_snapshots(raft_id: u64, node: NodeId) -> CoreConfig {
    CoreConfig { snapshot_interval: 20, log_retain: 5, ..CoreConfig::new(raft_id, node) }
}

fn registration_on_follower_is_applied_everywhere_with_the_same_token(size: usize) {
    let mut sim = Sim::new(size, 0, default_config, None);
    let leader = sim.leader();
    let follower = sim.running().into_iter().find(|id| *id != leader).unwrap();
    let pid = pid_on(&sim, follower, 1);
    let result = sim.write(follower, register("svc", pid.clone()));
    let token = registered_token(&result);
    sim.converge();
    for id in sim.running() {
        let reg = sim.core(id).fsm().lookup("svc").expect("registered everywhere");
        assert_eq!((reg.pid.clone(), reg.fence_token), (pid.clone(), token), "node {id}");
    }
}

#[test]
fn three_nodes_registration_on_follower_is_visible_everywhere_with_same_token() {
    registration_on_follower_is_applied_everywhere_with_the_same_token(3);
}

#[test]
fn five_nodes_registration_on_follower_is_visible_everywhere_with_same_token() {
    registration_on_follower_is_applied_everywhere_with_the_same_token(5);
}

#[test]
fn concurrent_registrations_of_one_name_exactly_one_wins() {
    let mut sim = Sim::new(3, 0, default_config, None);
    sim.leader();
    let (a, b) = (sim.id(0), sim.id(1));
    let pa = sim.propose(a, register("lock", pid_on(&sim, a, 1)));
    let pb = sim.propose(b, register("lock", pid_on(&sim, b, 1)));
    let ra = sim.result(a, pa).expect("applied");
    let rb = sim.result(b, pb).expect("applied");
    let (winner, loser) = match (&ra, &rb) {
        (CommandResult::Registered { .. }, _) => (ra.clone(), rb.clone()),
        _ => (rb.clone(), ra.clone()),
    };
    let token = registered_token(&winner);
    let CommandResult::AlreadyRegistered { owner, fence_token } = loser else { panic!("loser got {loser:?}") };
    assert_eq!(fence_token, token);
    sim.converge();
    for id in sim.running() {
        assert_eq!(sim.core(id).fsm().lookup("lock").unwrap().pid, owner);
    }
}

#[test]
fn retried_request_id_returns_the_same_token() {
    let mut sim = Sim::new(3, 0, default_config, None);
    let leader = sim.leader();
    let request = RequestId::new(NodeId::new("client", 1), 77);
    let pid = pid_on(&sim, leader, 5);
    let first = sim.propose_with(leader, request.clone(), register("once", pid.clone()));
    let first = registered_token(&sim.result(leader, first).unwrap());
    let again = sim.propose_with(leader, request, register("once", pid));
    assert_eq!(registered_token(&sim.result(leader, again).unwrap()), first);
}

#[test]
fn killing_the_leader_elects_a_new_one_and_writes_continue() {
    let mut sim = Sim::new(5, 0, default_config, None);
    let old = sim.leader();
    let term_before = sim.core(old).stats().term;
    sim.write(old, register("before", pid_on(&sim, old, 1)));
    sim.kill(old);
    let new = sim.leader();
    assert_ne!(new, old);
    assert!(sim.core(new).stats().term > term_before);
    let token = registered_token(&sim.write(new, register("after", pid_on(&sim, new, 1))));
    sim.converge();
    for id in sim.running() {
        assert!(sim.core(id).fsm().lookup("before").is_some());
        assert_eq!(sim.core(id).fsm().lookup("after").unwrap().fence_token, token);
    }
}

#[test]
fn pending_proposal_fails_when_its_leader_is_lost() {
    let mut sim = Sim::new(3, 0, default_config, None);
    let leader = sim.leader();
    let follower = sim.running().into_iter().find(|id| *id != leader).unwrap();
    // The follower's forwarded proposal goes nowhere: the leader is cut off right away.
    sim.isolate(leader);
    let p = sim.propose(follower, register("orphan", pid_on(&sim, follower, 1)));
    let r = sim.result(follower, p);
    assert!(matches!(r, Err(Admission::NotLeader { .. }) | Err(Admission::TimedOut)), "{r:?}");
}

#[test]
fn restarted_node_recovers_from_redb_and_catches_up() {
    let mut sim = Sim::new(3, 0, default_config, Some(2));
    let leader = sim.leader();
    let durable = sim.id(2);
    sim.write(leader, register("early", pid_on(&sim, leader, 1)));
    sim.converge();
    let applied_before = sim.core(durable).fsm().applied().index;
    sim.kill(durable);
    let leader = sim.leader();
    sim.write(leader, register("while-down", pid_on(&sim, leader, 2)));
    let state = sim.restart(durable);
    let RestartState::Recovered { applied_index } = state else { panic!("got {state:?}") };
    assert!(applied_index >= 1 && applied_index <= applied_before, "{applied_index} vs {applied_before}");
    sim.converge();
    let fsm = sim.core(durable).fsm();
    assert!(fsm.lookup("early").is_some());
    assert!(fsm.lookup("while-down").is_some());
}

#[test]
fn far_behind_node_catches_up_by_snapshot() {
    let mut sim = Sim::new(3, 0, small_snapshots, None);
    let leader = sim.leader();
    let behind = sim.running().into_iter().find(|id| *id != leader).unwrap();
    sim.isolate(behind);
    for i in 0..60 {
        sim.write(leader, register(&format!("name-{i}"), pid_on(&sim, leader, i)));
    }
    assert!(sim.core(leader).stats().snapshots_created >= 2);
    sim.heal();
    sim.converge();
    let core = sim.core(behind);
    assert!(core.stats().snapshots_installed >= 1, "caught up by snapshot: {:?}", core.stats());
    assert_eq!(core.fsm().len(), 60);
    assert_eq!(core.fsm().encode_snapshot(), sim.core(leader).fsm().encode_snapshot());
}

#[test]
fn isolated_node_refuses_strong_and_bounded_and_serves_best_effort_marked() {
    let mut sim = Sim::new(3, 0, default_config, None);
    let leader = sim.leader();
    sim.write(leader, register("seen", pid_on(&sim, leader, 1)));
    sim.converge();
    let lonely = sim.running().into_iter().find(|id| *id != leader).unwrap();
    sim.isolate(lonely);
    sim.tick(60);
    let view = sim.core(lonely).control_view(None);
    assert!(!view.quorum_reachable);
    for f in [Freshness::Strong, Freshness::Bounded] {
        let refused = decide(&ReadRequest::new(f), &view).expect_err("refused");
        assert_eq!(refused.reason(), "Unavailable", "{f}: {refused:?}");
    }
    let witness = decide(&ReadRequest::new(Freshness::BestEffort), &view).expect("best effort served");
    assert!(matches!(witness.degraded_mode, DegradedMode::ViewOnly | DegradedMode::RootUnavailable), "{witness:?}");
    assert_eq!(witness.served_freshness, Freshness::BestEffort);
    assert!(sim.core(lonely).fsm().lookup("seen").is_some(), "the stale view is still served");
    // The majority side keeps serving Strong through ReadIndex on its leader.
    let leader = sim.leader();
    let read = sim.core_mut(leader).read_index().expect("read index");
    let mut ready = None;
    for _ in 0..50 {
        sim.pump();
        if let Some(index) = sim.nodes.get_mut(&leader).unwrap().reads.remove(&read) {
            ready = Some(index);
            break;
        }
        sim.tick(1);
    }
    let index = ready.expect("read index confirmed");
    let witness = decide(&ReadRequest::new(Freshness::Strong), &sim.core(leader).control_view(Some(index))).unwrap();
    assert!(witness.served_by_leader);
    assert_eq!(witness.degraded_mode, DegradedMode::Healthy);
}

#[test]
fn stale_fencing_token_is_refused_everywhere() {
    let mut sim = Sim::new(3, 0, default_config, None);
    let leader = sim.leader();
    let (a, b) = (pid_on(&sim, sim.id(0), 1), pid_on(&sim, sim.id(1), 1));
    let old = registered_token(&sim.write(leader, register("resource", a.clone())));
    sim.write(leader, Command::RemoveByPid { pid: a });
    let new = registered_token(&sim.write(leader, register("resource", b)));
    assert!(new > old);
    sim.converge();
    for id in sim.running() {
        assert_eq!(sim.core(id).fsm().fence_check("resource", old).unwrap_err(), Admission::EpochMismatch);
        assert!(sim.core(id).fsm().fence_check("resource", new).is_ok());
    }
}

#[test]
fn remove_by_node_removes_that_nodes_names_everywhere() {
    let mut sim = Sim::new(3, 0, default_config, None);
    let leader = sim.leader();
    let gone = sim.id(2);
    for i in 0..5 {
        sim.write(leader, register(&format!("g{i}"), pid_on(&sim, gone, i)));
    }
    sim.write(leader, register("kept", pid_on(&sim, sim.id(0), 1)));
    let node = sim.nodes[&gone].id.clone();
    loop {
        match sim.write(leader, Command::RemoveByNode { node: node.clone() }) {
            CommandResult::Removed { remaining: false, .. } => break,
            CommandResult::Removed { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    sim.converge();
    for id in sim.running() {
        let fsm = sim.core(id).fsm();
        assert_eq!(fsm.names_of_node(&node), 0);
        assert_eq!(fsm.names().map(|(n, _)| n.to_string()).collect::<Vec<_>>(), ["kept"]);
    }
}

#[test]
fn ladder_plan_grows_three_voters_to_five_through_transitions() {
    let mut sim = Sim::new(3, 2, default_config, None);
    let leader = sim.leader();
    let members: Vec<LadderMember> = sim
        .order
        .iter()
        .map(|id| LadderMember {
            node: sim.nodes[id].id.clone(),
            raft_id: *id,
            raft_eligible: true,
            failure_domain: String::new(),
            state: MemberState::Alive,
            down_for: std::time::Duration::ZERO,
        })
        .collect();
    // Both joiners as learners in one transition: two steps go through joint consensus and leave it
    // with the empty ConfChangeV2 entry.
    let joiners: Vec<u64> = sim.order[3..].to_vec();
    let both = Transition {
        id: sim.core(leader).next_transition_id(),
        steps: joiners
            .iter()
            .map(|id| ConfStep { kind: ConfStepKind::AddLearner, raft_id: *id, node: Some(sim.nodes[id].id.clone()) })
            .collect(),
        phase: TransitionPhase::Planned,
        reason: "test".into(),
    };
    let tid = sim.core_mut(leader).propose_transition(both).expect("proposed");
    sim.tick(5);
    let done = sim.core(leader).transitions().find(|t| t.id == tid).unwrap().phase;
    assert_eq!(done, TransitionPhase::Completed, "left joint consensus");
    assert!(sim.core(leader).conf_state().voters_outgoing.is_empty());
    for _ in 0..10 {
        let cs = sim.core(leader).conf_state().clone();
        let config =
            RaftConfig { voters: cs.voters.iter().copied().collect(), learners: cs.learners.iter().copied().collect() };
        let plan =
            reconcile(&members, &config, leader, &LadderPolicy::default(), sim.core(leader).next_transition_id());
        let Some(next) = plan.into_iter().next() else { break };
        sim.core_mut(leader).propose_transition(next).expect("proposed");
        sim.tick(5);
    }
    let cs = sim.core(leader).conf_state().clone();
    assert_eq!(cs.voters.len(), 5, "{cs:?}");
    sim.converge();
    // The joiners caught up (by snapshot, from an uninitialised start) and know every member's node.
    for id in &joiners {
        assert_eq!(sim.core(*id).conf_state().voters.len(), 5);
        assert_eq!(sim.core(*id).fsm().members().len(), 5);
    }
    let token = registered_token(&sim.write(joiners[0], register("on-joiner", pid_on(&sim, joiners[0], 1))));
    sim.converge();
    assert!(sim.running().iter().all(|id| sim.core(*id).fsm().lookup("on-joiner").unwrap().fence_token == token));
}

/// Starts a `Strong` read on `on` and pumps until it is confirmed and applied there.
fn strong_read(sim: &mut Sim, on: u64) -> u64 {
    let read = sim.core_mut(on).read_index().expect("read index taken");
    for _ in 0..50 {
        sim.pump();
        if let Some(index) = sim.nodes.get_mut(&on).unwrap().reads.remove(&read) {
            return index;
        }
        sim.tick(1);
    }
    panic!("read on {on} never confirmed");
}

#[test]
fn strong_reads_on_a_follower_and_a_learner_are_forwarded_and_served_from_their_own_view() {
    let mut sim = Sim::new(3, 1, default_config, None);
    let leader = sim.leader();
    let learner = sim.id(3);
    let add = Transition {
        id: sim.core(leader).next_transition_id(),
        steps: vec![ConfStep {
            kind: ConfStepKind::AddLearner,
            raft_id: learner,
            node: Some(sim.nodes[&learner].id.clone()),
        }],
        phase: TransitionPhase::Planned,
        reason: "test".into(),
    };
    sim.core_mut(leader).propose_transition(add).expect("proposed");
    sim.tick(5);
    sim.converge();
    let follower = sim.running().into_iter().find(|id| *id != leader && *id != learner).unwrap();
    // A write committed on the leader is seen by a Strong read that starts after it, anywhere.
    let token = registered_token(&sim.write(leader, register("fresh", pid_on(&sim, leader, 1))));
    for on in [follower, learner] {
        let index = strong_read(&mut sim, on);
        assert!(index >= token, "the read index covers the committed write");
        let witness =
            decide(&ReadRequest::new(Freshness::Strong), &sim.core(on).control_view(Some(index))).expect("served");
        assert!(!witness.served_by_leader);
        assert!(witness.served_root_token.index >= token);
        assert_eq!(sim.core(on).fsm().lookup("fresh").map(|r| r.fence_token), Some(token));
    }
    // Reads of several members are kept apart on the leader (their contexts are unique).
    let a = sim.core_mut(follower).read_index().unwrap();
    let b = sim.core_mut(learner).read_index().unwrap();
    let c = sim.core_mut(leader).read_index().unwrap();
    for _ in 0..20 {
        sim.pump();
        sim.tick(1);
    }
    assert!(sim.nodes[&follower].reads.contains_key(&a), "follower's read answered");
    assert!(sim.nodes[&learner].reads.contains_key(&b), "learner's read answered");
    assert!(sim.nodes[&leader].reads.contains_key(&c), "leader's read answered");
}

// rust-protobuf messages are built by assigning fields on a default value, as raft-proto does.
#[allow(clippy::field_reassign_with_default)]
#[test]
fn a_heartbeat_committing_past_the_log_is_refused_and_counted_and_the_tier_keeps_serving() {
    use raft::eraftpb::{Entry, MessageType};
    let mut sim = Sim::new(3, 0, default_config, None);
    let leader = sim.leader();
    sim.write(leader, register("before", pid_on(&sim, leader, 1)));
    sim.converge();
    let follower = sim.running().into_iter().find(|id| *id != leader).unwrap();
    let term = sim.core(follower).stats().term;
    let last = sim.core(follower).last_index();
    // raft-rs aborts the process on this one (`commit_to` past the last index).
    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.from = leader;
    heartbeat.to = follower;
    heartbeat.term = term;
    heartbeat.commit = last + 1_000;
    let err = sim.core_mut(follower).step(heartbeat).expect_err("refused");
    assert!(err.to_string().contains("heartbeat commits past the local log"), "{err}");
    // An append that rewrites a committed entry is refused the same way.
    let committed = sim.core(follower).stats().commit_index;
    let mut append = Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    append.from = leader;
    append.to = follower;
    append.term = term;
    append.index = committed - 1;
    append.log_term = term;
    let mut forged = Entry::default();
    forged.index = committed;
    forged.term = term + 7;
    append.mut_entries().push(forged);
    assert!(sim.core_mut(follower).step(append).is_err());
    assert_eq!(sim.core(follower).stats().messages_unsafe, 2);
    // The tier keeps serving: a write through the same follower commits everywhere.
    let token = registered_token(&sim.write(follower, register("after", pid_on(&sim, follower, 1))));
    sim.converge();
    for id in sim.running() {
        assert_eq!(sim.core(id).fsm().lookup("after").map(|r| r.fence_token), Some(token));
    }
}
