//! Why the raft actor reports every snapshot transfer to raft (SPEC 7): a leader whose
//! `MsgSnapshot` was lost keeps the follower in its snapshot state and sends it nothing more until
//! it hears `report_snapshot`; a failure report makes it send a new snapshot after a heartbeat,
//! and a chunked transfer that arrives in full is installed and the follower replicates again.
//!
//! Two `RaftCore`s (a one-voter leader and a learner that joins with a clean store) and a
//! hand-driven network: deterministic, no clock, no socket.

#![allow(clippy::field_reassign_with_default)]

use std::time::Instant;

use cohort_actors::Pid;
use cohort_cluster::NodeId;
use cohort_registry::consistent::core::{CoreConfig, RaftCore};
use cohort_registry::consistent::fsm::{Command, Proposal, RequestId};
use cohort_registry::consistent::ladder::raft_id_for;
use cohort_registry::consistent::snapshot_transfer::{SnapshotOutcome, SnapshotTransfers, TransferLimits, Transmit};
use cohort_registry::consistent::storage::MemoryBackend;
use cohort_registry::consistent::{ConfStep, ConfStepKind, Transition, TransitionPhase};
use raft::eraftpb::{Message, MessageType};

struct Pair {
    leader: RaftCore,
    learner: RaftCore,
    leader_id: u64,
    learner_id: u64,
}

fn small_snapshots(raft_id: u64, node: NodeId) -> CoreConfig {
    CoreConfig { snapshot_interval: 20, log_retain: 5, ..CoreConfig::new(raft_id, node) }
}

impl Pair {
    /// A leader with 100 names applied (so its log is compacted past the start) and a learner
    /// just added, which can only catch up by snapshot.
    fn new() -> Self {
        let (a, b) = (NodeId::new("a", 1), NodeId::new("b", 1));
        let (leader_id, learner_id) = (raft_id_for(&a), raft_id_for(&b));
        let mut leader = RaftCore::open(
            Box::new(MemoryBackend::new()),
            small_snapshots(leader_id, a.clone()),
            Some(&[(leader_id, a.clone())]),
        )
        .unwrap();
        leader.campaign().unwrap();
        leader.handle_ready().unwrap();
        assert!(leader.is_leader());
        for i in 0..100 {
            let pid = Pid::new(a.clone(), 1);
            let proposal =
                Proposal::new(RequestId::new(a.clone(), i), Command::Register { name: format!("n{i}"), pid });
            leader.propose(&proposal).unwrap();
            leader.handle_ready().unwrap();
        }
        assert!(leader.stats().snapshots_created >= 1);
        let learner =
            RaftCore::open(Box::new(MemoryBackend::new()), small_snapshots(learner_id, b.clone()), None).unwrap();
        let add = Transition {
            id: leader.next_transition_id(),
            steps: vec![ConfStep { kind: ConfStepKind::AddLearner, raft_id: learner_id, node: Some(b) }],
            phase: TransitionPhase::Planned,
            reason: "test".into(),
        };
        leader.propose_transition(add).unwrap();
        let mut pair = Self { leader, learner, leader_id, learner_id };
        // The configuration commits on the one voter; the fresh snapshot after it includes the learner.
        pair.leader.handle_ready().unwrap();
        pair
    }

    /// Handles both Readys until quiet; snapshot messages to the learner are handed to `snapshot`
    /// instead of being delivered. Returns how many there were.
    fn pump(&mut self, mut snapshot: impl FnMut(&mut RaftCore, Message)) -> usize {
        let mut snapshots = 0;
        for _ in 0..1_000 {
            let mut moved = false;
            for msg in self.leader.handle_ready().unwrap().messages {
                moved = true;
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    snapshots += 1;
                    snapshot(&mut self.learner, msg);
                } else {
                    let _ = self.learner.step(msg);
                }
            }
            for msg in self.learner.handle_ready().unwrap().messages {
                moved = true;
                let _ = self.leader.step(msg);
            }
            if !moved {
                return snapshots;
            }
        }
        panic!("the pair did not quiesce");
    }

    fn tick(&mut self, ticks: usize, mut snapshot: impl FnMut(&mut RaftCore, Message)) -> usize {
        let mut snapshots = 0;
        for _ in 0..ticks {
            self.leader.tick();
            self.learner.tick();
            snapshots += self.pump(&mut snapshot);
        }
        snapshots
    }
}

#[test]
fn a_lost_snapshot_is_resent_only_after_raft_hears_it_failed() {
    let mut pair = Pair::new();
    // The first snapshot message is lost on the way.
    let lost = pair.tick(5, |_, _| {});
    assert_eq!(lost, 1, "the leader sends the learner one snapshot");
    // Without a report the leader waits for it forever: many heartbeats, no new snapshot.
    assert_eq!(pair.tick(50, |_, _| {}), 0, "no retry while the lost snapshot is unreported");
    assert_eq!(pair.learner.stats().snapshots_installed, 0);
    // Reported failed (the chunked transfer timed out): a new snapshot follows a heartbeat, and
    // delivered this time, it is installed and the learner replicates.
    pair.leader.report_snapshot(pair.learner_id, false);
    pair.leader.report_unreachable(pair.learner_id);
    let resent = pair.tick(5, |learner, msg| learner.step(msg).unwrap());
    assert_eq!(resent, 1);
    assert_eq!(pair.learner.stats().snapshots_installed, 1);
    pair.leader.report_snapshot(pair.learner_id, true);
    pair.tick(5, |learner, msg| learner.step(msg).unwrap());
    assert_eq!(pair.learner.fsm().len(), 100);
    assert_eq!(pair.learner.fsm().applied(), pair.leader.fsm().applied());
    assert_eq!(pair.leader.progress_matched(pair.learner_id), Some(pair.leader.last_index()));
    assert_eq!(pair.learner.leader(), Some(pair.leader_id));
}

#[test]
fn a_snapshot_carried_in_chunks_is_installed_like_the_original() {
    let mut pair = Pair::new();
    let now = Instant::now();
    let limits = TransferLimits { chunk_bytes: 512, window_bytes: 2_048, ..TransferLimits::default() };
    let mut sender = SnapshotTransfers::new(limits);
    let mut receiver = SnapshotTransfers::new(limits);
    let leader_node = NodeId::new("a", 1);
    let learner_node = NodeId::new("b", 1);
    let mut chunks = 0;
    let mut finished = Vec::new();
    let sent = pair.tick(5, |learner, msg| {
        sender.send_snapshot(now, "b", msg).unwrap();
        loop {
            let mut moved = false;
            while let Some(t) = sender.poll_transmit() {
                moved = true;
                let Transmit::Chunk { payload, .. } = t else { unreachable!("the sender only sends chunks") };
                chunks += 1;
                receiver.handle_chunk(now, &leader_node, &payload).unwrap();
            }
            while let Some(t) = receiver.poll_transmit() {
                moved = true;
                let Transmit::Ack { payload, .. } = t else { unreachable!("the receiver only acks") };
                sender.handle_ack(now, &learner_node, &payload).unwrap();
            }
            if !moved {
                break;
            }
        }
        while let Some(received) = receiver.poll_snapshot() {
            learner.step(received.message).unwrap();
        }
        while let Some(report) = sender.poll_report() {
            finished.push(report);
        }
    });
    assert_eq!(sent, 1);
    assert!(chunks > 2, "{chunks} chunks");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].outcome, SnapshotOutcome::Finished);
    pair.leader.report_snapshot(finished[0].to, true);
    pair.tick(5, |_, _| panic!("no second snapshot"));
    assert_eq!(pair.learner.stats().snapshots_installed, 1);
    assert_eq!(pair.learner.fsm().encode_snapshot(), pair.leader.fsm().encode_snapshot());
}
