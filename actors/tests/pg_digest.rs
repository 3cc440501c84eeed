//! pg's digest anti-entropy, sans I/O: two `ScopeTable`s joined by a simulated link that can lose
//! frames, driven step by step through the digest exchange the scope actor runs (digest out,
//! compare, pull with a discover, full state back). No runtime, no clock, no full-state round
//! robin: what repairs the loss here is the digest comparison alone.

use std::collections::BTreeMap;

use cohort_actors::pg::{
    DigestRepair, DigestVerdict, Event, EventKind, Group, MembershipDigest, NodeState, Origin, ScopeLimits, ScopeTable,
};
use cohort_actors::{PgError, Pid};
use cohort_cluster::NodeId;
use proptest::prelude::*;

fn a() -> NodeId {
    NodeId::new("a", 1)
}

fn b() -> NodeId {
    NodeId::new("b", 2)
}

fn group(name: &str) -> Group {
    Group::new(name).unwrap()
}

/// What `from` holds of `node`, per group (sorted pids), read through the public API.
fn view_of(table: &ScopeTable, node: &NodeId) -> BTreeMap<String, Vec<Pid>> {
    let mut view = BTreeMap::new();
    for g in table.which_groups() {
        let mut pids: Vec<Pid> = table.get_members(g.as_str()).iter().filter(|p| p.node == *node).cloned().collect();
        if !pids.is_empty() {
            pids.sort();
            view.insert(g.to_string(), pids);
        }
    }
    view
}

/// `node`'s memberships held by `table`, as a sync would carry them.
fn held_state(table: &ScopeTable, node: &NodeId) -> NodeState {
    view_of(table, node).into_iter().map(|(g, pids)| (group(&g), pids)).collect()
}

/// The batch frame of one drain of `sender`'s actor: its local events as remote operations.
fn drain_batch(sender: &ScopeTable) -> Vec<Event> {
    sender.drain_events(usize::MAX).into_iter().filter(|e| e.origin == Origin::Local).collect()
}

/// The receiver applies a batch frame that arrived, as the scope actor does.
fn deliver(receiver: &ScopeTable, from: &NodeId, batch: &[Event]) {
    for event in batch {
        match event.kind {
            EventKind::Join => receiver.remote_join(from, &event.group, &event.pids).map(drop).unwrap(),
            EventKind::Leave => receiver.remote_leave(from, &event.group, &event.pids).map(drop).unwrap(),
        }
    }
}

/// One digest from `sender` (node `from`) to `receiver`: the verdict of the receiver's repair
/// rule, as the actor computes it.
fn digest_arrives(
    sender: &ScopeTable,
    receiver: &ScopeTable,
    from: &NodeId,
    repair: &mut DigestRepair,
) -> DigestVerdict {
    let digest = sender.local_digest();
    repair.on_digest(receiver.peer_digest(from) == Some(digest))
}

/// The answer to a pull (a discover): the sender's full local state, applied by the receiver.
fn pull_answered(sender: &ScopeTable, receiver: &ScopeTable, from: &NodeId, repair: &mut DigestRepair) -> Vec<Event> {
    let report = receiver.sync_peer(from, sender.local_state()).unwrap();
    repair.on_sync(report.groups_refused > 0, 15);
    receiver.drain_events(usize::MAX)
}

/// `(kind, group, pids)` of each event, joins first, then by group.
fn shapes(events: &[Event]) -> Vec<(EventKind, String, Vec<Pid>)> {
    let mut shapes: Vec<_> = events.iter().map(|e| (e.kind, e.group.to_string(), e.pids.clone())).collect();
    shapes.sort_by(|x, y| (x.0 == EventKind::Leave, &x.1, &x.2).cmp(&(y.0 == EventKind::Leave, &y.1, &y.2)));
    shapes
}

#[test]
fn a_lost_join_and_a_lost_leave_are_repaired_by_the_digest_exchange() {
    let (sender, receiver) = (ScopeTable::new(a()), ScopeTable::new(b()));
    let mut repair = DigestRepair::new();
    let pid = |n| Pid::new(a(), n);
    // Connected: the receiver holds the sender's (empty) full state; a first batch arrives.
    receiver.sync_peer(&a(), sender.local_state()).unwrap();
    sender.join(&group("g"), &[pid(1), pid(2)]).unwrap();
    deliver(&receiver, &a(), &drain_batch(&sender));
    receiver.drain_events(usize::MAX);
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::InSync);

    // A batch lost on the live link: a join and a leave (balanced in count), and a join elsewhere.
    sender.join(&group("g"), &[pid(3)]).unwrap();
    sender.leave(&group("g"), &[pid(1)]).unwrap();
    sender.join(&group("h"), &[pid(1)]).unwrap();
    let lost = drain_batch(&sender);
    assert_eq!(lost.len(), 3);
    // The next batch arrives: the link is up, nothing tells the receiver what it missed.
    sender.join(&group("k"), &[pid(4)]).unwrap();
    deliver(&receiver, &a(), &drain_batch(&sender));
    receiver.drain_events(usize::MAX);
    assert_ne!(view_of(&receiver, &a()), view_of(&sender, &a()));

    // The digest reveals it: pull. The answer is lost too.
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::Pull);
    // The next digest, within the same period, still differs: deferred, no second pull yet.
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::Deferred);
    assert!(!repair.on_tick(), "the receiver's tick ending the period of the first pull");
    assert!(repair.on_tick(), "a whole period later the deferred mismatch is pulled again");
    let events = pull_answered(&sender, &receiver, &a(), &mut repair);

    // Repaired, with events for the real differences only (not for g's pid 2, nor for k).
    assert_eq!(view_of(&receiver, &a()), view_of(&sender, &a()));
    assert_eq!(
        shapes(&events),
        vec![
            (EventKind::Join, "g".to_owned(), vec![pid(3)]),
            (EventKind::Join, "h".to_owned(), vec![pid(1)]),
            (EventKind::Leave, "g".to_owned(), vec![pid(1)]),
        ]
    );
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::InSync);
    assert!(!repair.is_pending());
}

#[test]
fn a_digest_from_a_peer_we_hold_nothing_of_pulls_its_state() {
    let (sender, receiver) = (ScopeTable::new(a()), ScopeTable::new(b()));
    let mut repair = DigestRepair::new();
    sender.join(&group("g"), &[Pid::new(a(), 1)]).unwrap();
    drain_batch(&sender); // its sync and this batch were both lost
    assert_eq!(receiver.peer_digest(&a()), None);
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::Pull);
    pull_answered(&sender, &receiver, &a(), &mut repair);
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::InSync);
    // An older incarnation's digest is not ours to compare: the table knows incarnation 1 only.
    assert_eq!(receiver.peer_digest(&NodeId::new("a", 0)), None);
}

#[test]
fn a_digest_is_sent_only_for_drained_events_so_undrained_writes_never_look_like_a_loss() {
    let (sender, receiver) = (ScopeTable::new(a()), ScopeTable::new(b()));
    let mut repair = DigestRepair::new();
    receiver.sync_peer(&a(), sender.local_state()).unwrap();
    // Written but not drained: not sent yet, and not in the digest yet either.
    sender.join(&group("g"), &[Pid::new(a(), 1)]).unwrap();
    assert_eq!(sender.local_digest(), MembershipDigest::EMPTY);
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::InSync);
    deliver(&receiver, &a(), &drain_batch(&sender));
    assert_eq!(digest_arrives(&sender, &receiver, &a(), &mut repair), DigestVerdict::InSync);
}

/// A group the receiver cannot take (its bound is full of other nodes' members) keeps the
/// digests apart after every sync: the pulls back off instead of repeating every period.
#[test]
fn a_mismatch_our_bounds_cause_backs_off() {
    let limits = ScopeLimits { max_members_per_group: 2, ..ScopeLimits::default() };
    let (sender, receiver) = (ScopeTable::new(a()), ScopeTable::with_limits(b(), limits));
    receiver.join(&group("g"), &[Pid::new(b(), 1), Pid::new(b(), 2)]).unwrap();
    sender.join(&group("g"), &[Pid::new(a(), 1)]).unwrap();
    drain_batch(&sender);
    let mut repair = DigestRepair::new();
    let mut pulls = 0;
    for _ in 0..40 {
        if digest_arrives(&sender, &receiver, &a(), &mut repair) == DigestVerdict::Pull || repair.on_tick() {
            pulls += 1;
            pull_answered(&sender, &receiver, &a(), &mut repair);
        }
    }
    assert!((2..=8).contains(&pulls), "{pulls} pulls in 40 periods: backed off, still trying");
    assert_ne!(receiver.peer_digest(&a()), Some(sender.local_digest()));
}

// ---- the digests always describe the state ----

#[derive(Clone, Debug)]
enum PeerOp {
    Join(u8, Vec<u64>),
    Leave(u8, Vec<u64>),
    Sync(Vec<(u8, Vec<u64>)>),
    Down,
}

fn pids() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..5, 1..4)
}

fn peer_op() -> impl Strategy<Value = PeerOp> {
    prop_oneof![
        4 => (0u8..4, pids()).prop_map(|(g, p)| PeerOp::Join(g, p)),
        4 => (0u8..4, pids()).prop_map(|(g, p)| PeerOp::Leave(g, p)),
        2 => prop::collection::vec((0u8..4, pids()), 0..4).prop_map(PeerOp::Sync),
        1 => Just(PeerOp::Down),
    ]
}

#[derive(Clone, Debug)]
enum LocalOp {
    Join(u8, Vec<u64>),
    Leave(u8, Vec<u64>),
    Exit(u64),
    Drain,
}

fn local_op() -> impl Strategy<Value = LocalOp> {
    prop_oneof![
        4 => (0u8..4, pids()).prop_map(|(g, p)| LocalOp::Join(g, p)),
        4 => (0u8..4, pids()).prop_map(|(g, p)| LocalOp::Leave(g, p)),
        1 => (0u64..5).prop_map(LocalOp::Exit),
        2 => Just(LocalOp::Drain),
    ]
}

proptest! {
    /// Whatever a peer's frames do (including joins refused by a small group bound, leaves of
    /// non-members, syncs, a node-down), the digest the table keeps of that peer is the digest
    /// of exactly the peer's memberships it holds.
    #[test]
    fn the_peer_digest_is_always_the_digest_of_what_is_held(ops in prop::collection::vec(peer_op(), 1..40)) {
        let limits = ScopeLimits { max_members_per_group: 6, ..ScopeLimits::default() };
        let table = ScopeTable::with_limits(b(), limits);
        table.join(&group("g0"), &[Pid::new(b(), 1), Pid::new(b(), 1)]).unwrap();
        table.add_peer(&a()).unwrap();
        let peer_pids = |locals: &[u64]| -> Vec<Pid> { locals.iter().map(|l| Pid::new(a(), *l)).collect() };
        for op in ops {
            let result: Result<(), PgError> = match &op {
                PeerOp::Join(g, p) => table.remote_join(&a(), &group(&format!("g{g}")), &peer_pids(p)).map(drop),
                PeerOp::Leave(g, p) => table.remote_leave(&a(), &group(&format!("g{g}")), &peer_pids(p)).map(drop),
                PeerOp::Sync(state) => {
                    let state = state.iter().map(|(g, p)| (group(&format!("g{g}")), peer_pids(p))).collect();
                    table.sync_peer(&a(), state).map(drop)
                }
                PeerOp::Down => {
                    table.node_down(&a());
                    prop_assert_eq!(table.peer_digest(&a()), None);
                    table.add_peer(&a()).map(drop)
                }
            };
            // Refusals (a full group) are part of the test; the digest must follow what stayed.
            let _ = result;
            let recomputed = MembershipDigest::of_state(&held_state(&table, &a()));
            prop_assert_eq!(table.peer_digest(&a()), Some(recomputed), "after {:?}", op);
        }
    }

    /// The local digest counts exactly the drained events: after a complete drain it is the
    /// digest of the local state, whatever joins, leaves and exits happened.
    #[test]
    fn the_local_digest_after_a_drain_is_the_digest_of_the_local_state(ops in prop::collection::vec(local_op(), 1..40)) {
        let table = ScopeTable::new(a());
        let local = |locals: &[u64]| -> Vec<Pid> { locals.iter().map(|l| Pid::new(a(), *l)).collect() };
        for op in ops {
            match &op {
                LocalOp::Join(g, p) => { let _ = table.join(&group(&format!("g{g}")), &local(p)); }
                LocalOp::Leave(g, p) => { let _ = table.leave(&group(&format!("g{g}")), &local(p)); }
                LocalOp::Exit(l) => { let _ = table.process_exit(&Pid::new(a(), *l)); }
                LocalOp::Drain => {
                    table.drain_events(usize::MAX);
                    prop_assert_eq!(table.local_digest(), MembershipDigest::of_state(&table.local_state()));
                }
            }
        }
        table.drain_events(usize::MAX);
        prop_assert_eq!(table.local_digest(), MembershipDigest::of_state(&table.local_state()));
    }
}
