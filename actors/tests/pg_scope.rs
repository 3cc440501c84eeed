//! Behaviour of `ScopeTable`, the concurrent sans-I/O state of one pg scope: Erlang `pg` semantics
//! for local and remote changes, sync by difference, cleanup, events, bounds, and concurrent reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cohort_actors::pg::{Event, EventKind, Group, Origin, ScopeLimits, ScopeTable};
use cohort_actors::{PgError, Pid};
use cohort_cluster::NodeId;
use proptest::prelude::*;

fn me() -> NodeId {
    NodeId::new("a", 1)
}

fn peer() -> NodeId {
    NodeId::new("b", 5)
}

fn local(n: u64) -> Pid {
    Pid::new(me(), n)
}

fn remote(n: u64) -> Pid {
    Pid::new(peer(), n)
}

fn group(name: &str) -> Group {
    Group::new(name).unwrap()
}

fn sorted(mut pids: Vec<Pid>) -> Vec<Pid> {
    pids.sort();
    pids
}

fn members(table: &ScopeTable, name: &str) -> Vec<Pid> {
    sorted(table.get_members(name).to_vec())
}

/// `(kind, group, pids)` of every pending event, in order.
fn drain(table: &ScopeTable) -> Vec<(EventKind, String, Vec<Pid>)> {
    table.drain_events(usize::MAX).into_iter().map(|e| (e.kind, e.group.to_string(), e.pids)).collect()
}

/// Applies events to a multiset view, as a monitor would.
fn replay(view: &mut BTreeMap<String, Vec<Pid>>, events: &[Event]) {
    for event in events {
        let held = view.entry(event.group.to_string()).or_default();
        match event.kind {
            EventKind::Join => held.extend(event.pids.iter().cloned()),
            EventKind::Leave => {
                for pid in &event.pids {
                    let at = held.iter().position(|p| p == pid).expect("leave of a pid the view does not hold");
                    held.remove(at);
                }
            }
        }
        if held.is_empty() {
            view.remove(event.group.as_str());
        }
    }
}

fn view_of(table: &ScopeTable) -> BTreeMap<String, Vec<Pid>> {
    table.which_groups().into_iter().map(|g| (g.to_string(), members(table, g.as_str()))).collect()
}

fn normalised(view: BTreeMap<String, Vec<Pid>>) -> BTreeMap<String, Vec<Pid>> {
    view.into_iter().map(|(g, p)| (g, sorted(p))).collect()
}

#[test]
fn join_twice_leave_once_keeps_the_member() {
    let table = ScopeTable::new(me());
    let g = group("g");
    table.join(&g, &[local(1)]).unwrap();
    table.join(&g, &[local(1)]).unwrap();
    assert_eq!(members(&table, "g"), vec![local(1), local(1)]);
    table.leave(&g, &[local(1)]).unwrap();
    assert_eq!(members(&table, "g"), vec![local(1)]);
    table.leave(&g, &[local(1)]).unwrap();
    assert!(table.get_members("g").is_empty());
    assert!(table.which_groups().is_empty(), "an empty group is removed, as in Erlang");
}

#[test]
fn leave_of_non_member_returns_not_joined() {
    let table = ScopeTable::new(me());
    let g = group("g");
    assert_eq!(table.leave(&g, &[local(1)]), Err(PgError::NotJoined { group: g.clone(), pid: local(1) }));
    table.join(&g, &[local(2)]).unwrap();
    assert_eq!(table.leave(&g, &[local(1)]), Err(PgError::NotJoined { group: g.clone(), pid: local(1) }));
    assert_eq!(table.group_count(), 1);
}

#[test]
fn leave_batch_is_all_or_nothing() {
    let table = ScopeTable::new(me());
    let g = group("g");
    table.join(&g, &[local(1), local(2)]).unwrap();
    drain(&table);
    let refused = table.leave(&g, &[local(1), local(3)]);
    assert_eq!(refused, Err(PgError::NotJoined { group: g.clone(), pid: local(3) }));
    assert_eq!(members(&table, "g"), vec![local(1), local(2)]);
    assert!(drain(&table).is_empty(), "a refused leave emits nothing");
}

#[test]
fn remote_pids_are_refused_on_join() {
    let table = ScopeTable::new(me());
    let g = group("g");
    assert_eq!(table.join(&g, &[local(1), remote(1)]), Err(PgError::NotLocal { pid: remote(1) }));
    let older_self = Pid::new(NodeId::new("a", 0), 1);
    assert_eq!(table.join(&g, std::slice::from_ref(&older_self)), Err(PgError::NotLocal { pid: older_self }));
    assert!(table.get_members("g").is_empty(), "nothing of a refused batch is joined");
    assert_eq!(table.pending_events(), 0);
}

#[test]
fn get_members_sees_a_join_immediately() {
    let table = ScopeTable::new(me());
    let g = group("g");
    let version = table.join(&g, &[local(1)]).unwrap();
    let read = table.get_members("g");
    assert_eq!(&*read, &[local(1)]);
    assert_eq!(read.version(), version);
    assert_eq!(&*table.get_local_members("g"), &[local(1)]);
    table.leave(&g, &[local(1)]).unwrap();
    assert!(table.get_members("g").is_empty());
    assert_eq!(&*read, &[local(1)], "an earlier read is a stable snapshot");
}

#[test]
fn local_members_and_groups_exclude_remote_ones() {
    let table = ScopeTable::new(me());
    table.add_peer(&peer()).unwrap();
    table.join(&group("both"), &[local(1)]).unwrap();
    table.remote_join(&peer(), &group("both"), &[remote(1)]).unwrap();
    table.remote_join(&peer(), &group("remote-only"), &[remote(2)]).unwrap();
    assert_eq!(members(&table, "both"), vec![local(1), remote(1)]);
    assert_eq!(&*table.get_local_members("both"), &[local(1)]);
    assert!(table.get_local_members("remote-only").is_empty());
    let mut groups: Vec<String> = table.which_groups().iter().map(|g| g.to_string()).collect();
    groups.sort();
    assert_eq!(groups, ["both", "remote-only"]);
    assert_eq!(table.which_local_groups(), vec![group("both")]);
    assert_eq!(table.local_state(), vec![(group("both"), vec![local(1)])]);
}

#[test]
fn events_are_emitted_in_order_with_increasing_seq_and_origin() {
    let table = ScopeTable::new(me());
    table.add_peer(&peer()).unwrap();
    let g = group("g");
    table.join(&g, &[local(1), local(1)]).unwrap();
    table.remote_join(&peer(), &g, &[remote(7)]).unwrap();
    table.leave(&g, &[local(1)]).unwrap();
    let events = table.drain_events(10);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let summary: Vec<(EventKind, Origin, Vec<Pid>)> = events.into_iter().map(|e| (e.kind, e.origin, e.pids)).collect();
    assert_eq!(
        summary,
        [
            (EventKind::Join, Origin::Local, vec![local(1), local(1)]),
            (EventKind::Join, Origin::Remote, vec![remote(7)]),
            (EventKind::Leave, Origin::Local, vec![local(1)]),
        ]
    );
    assert_eq!(table.get_members("g").version(), seqs[2]);
}

#[test]
fn process_exit_removes_every_occurrence_from_every_group() {
    let table = ScopeTable::new(me());
    table.join(&group("x"), &[local(1), local(1), local(2)]).unwrap();
    table.join(&group("y"), &[local(1)]).unwrap();
    table.join(&group("x"), &[local(1)]).unwrap();
    drain(&table);
    assert_eq!(table.process_exit(&local(1)), Ok(2));
    assert_eq!(members(&table, "x"), vec![local(2)]);
    assert!(table.get_members("y").is_empty());
    let mut events = drain(&table);
    events.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        events,
        [
            (EventKind::Leave, "x".to_string(), vec![local(1), local(1), local(1)]),
            (EventKind::Leave, "y".to_string(), vec![local(1)]),
        ]
    );
    assert_eq!(table.process_exit(&local(1)), Ok(0), "a second exit finds nothing");
    assert_eq!(table.process_exit(&remote(1)), Err(PgError::NotLocal { pid: remote(1) }));
}

#[test]
fn exit_after_leave_does_not_touch_left_groups() {
    let table = ScopeTable::new(me());
    table.join(&group("x"), &[local(1)]).unwrap();
    table.join(&group("y"), &[local(1)]).unwrap();
    table.leave(&group("x"), &[local(1)]).unwrap();
    drain(&table);
    assert_eq!(table.process_exit(&local(1)), Ok(1));
    assert_eq!(drain(&table), [(EventKind::Leave, "y".to_string(), vec![local(1)])]);
}

#[test]
fn node_down_removes_everything_of_that_node_and_of_older_incarnations() {
    let table = ScopeTable::new(me());
    let old = NodeId::new("b", 4);
    let other = NodeId::new("c", 1);
    table.add_peer(&old).unwrap();
    table.add_peer(&other).unwrap();
    table.join(&group("g"), &[local(1)]).unwrap();
    table.remote_join(&old, &group("g"), &[Pid::new(old.clone(), 1)]).unwrap();
    table.remote_join(&other, &group("g"), &[Pid::new(other.clone(), 1)]).unwrap();
    // The node restarts: its new incarnation replaces the old one, whose pids are dropped.
    table.sync_peer(&peer(), vec![(group("h"), vec![remote(1), remote(1)])]).unwrap();
    assert_eq!(members(&table, "g"), vec![local(1), Pid::new(other.clone(), 1)]);
    drain(&table);

    assert_eq!(table.node_down(&peer()), 1);
    assert!(table.get_members("h").is_empty());
    assert_eq!(drain(&table), [(EventKind::Leave, "h".to_string(), vec![remote(1), remote(1)])]);
    assert_eq!(members(&table, "g"), vec![local(1), Pid::new(other.clone(), 1)], "other nodes are untouched");
    // Late input from the node that went down is refused, as Erlang ignores an unknown peer.
    assert_eq!(table.remote_join(&peer(), &group("h"), &[remote(2)]), Err(PgError::UnknownPeer { node: peer() }));
    assert!(table.get_members("h").is_empty());
}

#[test]
fn node_down_of_an_older_incarnation_keeps_the_newer_one() {
    let table = ScopeTable::new(me());
    table.sync_peer(&peer(), vec![(group("g"), vec![remote(1)])]).unwrap();
    assert_eq!(table.node_down(&NodeId::new("b", 4)), 0);
    assert_eq!(members(&table, "g"), vec![remote(1)]);
    assert_eq!(
        table.sync_peer(&NodeId::new("b", 4), vec![]),
        Err(PgError::StalePeer { node: NodeId::new("b", 4), current: 5 })
    );
}

#[test]
fn peers_may_only_announce_their_own_pids() {
    let table = ScopeTable::new(me());
    table.add_peer(&peer()).unwrap();
    let foreign = Pid::new(NodeId::new("c", 1), 1);
    let refused = table.remote_join(&peer(), &group("g"), &[remote(1), foreign.clone()]);
    assert_eq!(refused, Err(PgError::NotPeerPid { peer: peer(), pid: foreign.clone() }));
    let refused = table.sync_peer(&peer(), vec![(group("g"), vec![local(1)])]);
    assert_eq!(refused, Err(PgError::NotPeerPid { peer: peer(), pid: local(1) }));
    assert!(table.which_groups().is_empty());
    assert_eq!(table.add_peer(&me()), Err(PgError::UnknownPeer { node: me() }));
}

#[test]
fn remote_leave_of_a_non_member_is_ignored() {
    let table = ScopeTable::new(me());
    table.add_peer(&peer()).unwrap();
    table.remote_join(&peer(), &group("g"), &[remote(1)]).unwrap();
    drain(&table);
    table.remote_leave(&peer(), &group("g"), &[remote(1), remote(2)]).unwrap();
    assert_eq!(drain(&table), [(EventKind::Leave, "g".to_string(), vec![remote(1)])]);
    table.remote_leave(&peer(), &group("absent"), &[remote(1)]).unwrap();
    assert!(drain(&table).is_empty());
}

#[test]
fn sync_emits_events_only_for_real_changes() {
    let table = ScopeTable::new(me());
    let first = vec![
        (group("same"), vec![remote(1), remote(2)]),
        (group("changed"), vec![remote(1), remote(1), remote(3)]),
        (group("gone"), vec![remote(4)]),
    ];
    table.sync_peer(&peer(), first).unwrap();
    drain(&table);
    let second = vec![
        (group("same"), vec![remote(2), remote(1)]),
        (group("changed"), vec![remote(1), remote(5)]),
        (group("new"), vec![remote(6), remote(6)]),
    ];
    let report = table.sync_peer(&peer(), second).unwrap();
    assert_eq!(report.groups_changed, 3);
    let mut events = drain(&table);
    events.sort_by(|a, b| (&a.1, a.0 == EventKind::Join).cmp(&(&b.1, b.0 == EventKind::Join)));
    assert_eq!(
        events,
        [
            (EventKind::Leave, "changed".to_string(), vec![remote(1), remote(3)]),
            (EventKind::Join, "changed".to_string(), vec![remote(5)]),
            (EventKind::Leave, "gone".to_string(), vec![remote(4)]),
            (EventKind::Join, "new".to_string(), vec![remote(6), remote(6)]),
        ]
    );
    let report = table.sync_peer(&peer(), vec![(group("same"), vec![remote(1), remote(2)])]).unwrap();
    assert_eq!(report.groups_changed, 2, "changed and new are emptied");
    assert_eq!(members(&table, "same"), vec![remote(1), remote(2)]);
}

#[test]
fn sync_keeps_local_and_other_nodes_members() {
    let table = ScopeTable::new(me());
    let other = NodeId::new("c", 1);
    table.add_peer(&other).unwrap();
    table.join(&group("g"), &[local(1)]).unwrap();
    table.remote_join(&other, &group("g"), &[Pid::new(other.clone(), 1)]).unwrap();
    table.sync_peer(&peer(), vec![(group("g"), vec![remote(1)])]).unwrap();
    table.sync_peer(&peer(), vec![]).unwrap();
    assert_eq!(members(&table, "g"), vec![local(1), Pid::new(other, 1)]);
}

#[test]
fn monitor_snapshot_plus_later_events_gives_the_current_state() {
    let table = ScopeTable::new(me());
    table.add_peer(&peer()).unwrap();
    let g = group("g");
    table.join(&g, &[local(1)]).unwrap();
    table.remote_join(&peer(), &g, &[remote(1)]).unwrap();
    // Events before the snapshot are still undrained: the version tells the actor to skip them.
    let snapshot = table.monitor_snapshot("g");
    table.leave(&g, &[local(1)]).unwrap();
    table.join(&g, &[local(2)]).unwrap();
    let later: Vec<Event> = table.drain_events(100).into_iter().filter(|e| e.seq > snapshot.version()).collect();
    let mut view = BTreeMap::from([("g".to_string(), snapshot.members().to_vec())]);
    replay(&mut view, &later);
    assert_eq!(normalised(view), view_of(&table));

    // An absent group: its past events are all reflected (it is empty), later ones are not.
    table.join(&group("h"), &[local(3)]).unwrap();
    table.leave(&group("h"), &[local(3)]).unwrap();
    let absent = table.monitor_snapshot("h");
    assert!(absent.is_empty());
    table.join(&group("h"), &[local(4)]).unwrap();
    let later: Vec<Event> =
        table.drain_events(100).into_iter().filter(|e| e.group.as_str() == "h" && e.seq > absent.version()).collect();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].pids, vec![local(4)]);
}

#[test]
fn size_bounds_are_typed_refusals() {
    let limits = ScopeLimits { max_groups: 2, max_members_per_group: 3, max_pids_per_batch: 2, max_pending_events: 4 };
    let table = ScopeTable::with_limits(me(), limits);
    let g = group("g");
    assert_eq!(table.join(&g, &[local(1), local(2), local(3)]), Err(PgError::BatchTooLarge { len: 3, max: 2 }));
    table.join(&g, &[local(1), local(2)]).unwrap();
    assert_eq!(table.join(&g, &[local(1), local(2)]), Err(PgError::TooManyMembers { group: g.clone(), max: 3 }));
    table.join(&group("h"), &[local(1)]).unwrap();
    assert_eq!(table.join(&group("i"), &[local(1)]), Err(PgError::TooManyGroups { max: 2 }));
    assert_eq!(table.group_count(), 2);
    assert!(table.get_members("i").is_empty(), "a refused group is not created");
    // Two events pending; two more fill the outbox.
    table.join(&g, &[local(3)]).unwrap();
    table.leave(&g, &[local(3)]).unwrap();
    assert_eq!(table.join(&g, &[local(3)]), Err(PgError::EventsSaturated { pending: 4, max: 4 }));
    assert!(table.process_exit(&local(1)).is_ok(), "cleanup is never refused by the event bound");
    table.drain_events(100);
    table.join(&g, &[local(3)]).unwrap();
    assert_eq!(Group::new(&"n".repeat(256)), Err(PgError::GroupNameTooLong { len: 256, max: 255 }));
}

#[test]
fn sync_over_the_bounds_is_refused_whole_or_counted() {
    let limits = ScopeLimits { max_groups: 2, max_members_per_group: 2, max_pids_per_batch: 8, max_pending_events: 8 };
    let table = ScopeTable::with_limits(me(), limits);
    let too_big = vec![(group("g"), vec![remote(1), remote(2), remote(3)])];
    assert!(matches!(table.sync_peer(&peer(), too_big), Err(PgError::TooManyMembers { .. })));
    table.join(&group("g"), &[local(1), local(2)]).unwrap();
    let report = table.sync_peer(&peer(), vec![(group("g"), vec![remote(1)]), (group("h"), vec![remote(2)])]).unwrap();
    assert_eq!((report.groups_changed, report.groups_refused), (1, 1));
    assert_eq!(members(&table, "g"), vec![local(1), local(2)]);
    assert_eq!(members(&table, "h"), vec![remote(2)]);
}

fn peer_state() -> impl Strategy<Value = BTreeMap<String, Vec<Pid>>> {
    let pids = prop::collection::vec((0u64..4).prop_map(remote), 1..5);
    prop::collection::btree_map(prop::sample::select(vec!["g1", "g2", "g3", "g4"]).prop_map(String::from), pids, 0..4)
}

fn as_sync(state: &BTreeMap<String, Vec<Pid>>) -> Vec<(Group, Vec<Pid>)> {
    state.iter().map(|(g, p)| (group(g), p.clone())).collect()
}

proptest! {
    #[test]
    fn sync_applies_exactly_the_difference(a in peer_state(), b in peer_state()) {
        let table = ScopeTable::new(me());
        table.sync_peer(&peer(), as_sync(&a)).unwrap();
        prop_assert_eq!(view_of(&table), normalised(a.clone()));
        table.drain_events(usize::MAX);

        table.sync_peer(&peer(), as_sync(&b)).unwrap();
        prop_assert_eq!(view_of(&table), normalised(b.clone()));
        let events = table.drain_events(usize::MAX);
        // Replaying the emitted events on a copy of A yields B ...
        let mut replayed = a.clone();
        replay(&mut replayed, &events);
        prop_assert_eq!(normalised(replayed), normalised(b.clone()));
        // ... and they are minimal: per group, no pid both leaves and joins, and an unchanged
        // group emits nothing.
        for event in &events {
            prop_assert!(!event.pids.is_empty());
            let name = event.group.to_string();
            let before = sorted(a.get(&name).cloned().unwrap_or_default());
            let after = sorted(b.get(&name).cloned().unwrap_or_default());
            prop_assert_ne!(before, after);
            let opposite = events.iter().find(|e| e.group == event.group && e.kind != event.kind);
            if let Some(opposite) = opposite {
                prop_assert!(event.pids.iter().all(|p| !opposite.pids.contains(p)));
            }
        }
    }

    #[test]
    fn local_operations_match_a_multiset_model(ops in prop::collection::vec((0u8..3, 0usize..3, 0u64..3), 0..40)) {
        let table = ScopeTable::new(me());
        let mut model: BTreeMap<String, Vec<Pid>> = BTreeMap::new();
        for (op, g, p) in ops {
            let name = format!("g{g}");
            let pid = local(p);
            let held = model.entry(name.clone()).or_default();
            match op {
                0 => {
                    table.join(&group(&name), std::slice::from_ref(&pid)).unwrap();
                    held.push(pid);
                }
                1 => match held.iter().position(|x| *x == pid) {
                    Some(at) => {
                        held.remove(at);
                        table.leave(&group(&name), &[pid]).unwrap();
                    }
                    None => {
                        let refused = table.leave(&group(&name), std::slice::from_ref(&pid));
                        prop_assert_eq!(refused, Err(PgError::NotJoined { group: group(&name), pid }));
                    }
                },
                _ => {
                    table.process_exit(&pid).unwrap();
                    for held in model.values_mut() {
                        held.retain(|x| *x != pid);
                    }
                }
            }
            model.retain(|_, held| !held.is_empty());
            prop_assert_eq!(view_of(&table), normalised(model.clone()));
        }
        // The events, replayed from nothing, give the same state.
        let mut replayed = BTreeMap::new();
        replay(&mut replayed, &table.drain_events(usize::MAX));
        prop_assert_eq!(normalised(replayed), normalised(model));
    }
}

#[test]
fn concurrent_readers_never_block_and_see_consistent_snapshots() {
    const WRITERS: u64 = 2;
    const READERS: usize = 2;
    let table = Arc::new(ScopeTable::new(me()));
    let g = group("hot");
    // A big group makes every write copy 5,000 pids while readers keep reading.
    let base: Vec<Pid> = (1000..6000).map(local).collect();
    for chunk in base.chunks(1000) {
        table.join(&g, chunk).unwrap();
    }
    table.drain_events(usize::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);

    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (table, stop, reads) = (Arc::clone(&table), Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let started = Instant::now();
                    let members = table.get_members("hot");
                    slowest = slowest.max(started.elapsed());
                    // Each snapshot is whole: the base plus some of the writers' pids.
                    assert!(members.len() >= 5000 && members.len() <= 5000 + WRITERS as usize);
                    assert_eq!(members.snapshot().local_members().len(), members.len());
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                slowest
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (table, g) = (Arc::clone(&table), g.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let pid = local(w);
                    table.join(&g, std::slice::from_ref(&pid)).unwrap();
                    assert!(table.get_members("hot").contains(&pid), "read-your-writes");
                    table.leave(&g, &[pid]).unwrap();
                }
            })
        })
        .collect();
    let drainer = {
        let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut events = Vec::new();
            while !stop.load(Ordering::Relaxed) || table.pending_events() > 0 {
                events.extend(table.drain_events(1024));
                std::thread::yield_now();
            }
            events
        })
    };
    for writer in writers {
        writer.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let slowest = reader.join().unwrap();
        // Not a timing assertion on speed, a liveness bound: no read waited for a writer's copy.
        assert!(slowest < Duration::from_secs(1), "a read took {slowest:?}");
    }
    let events = drainer.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(Instant::now() < deadline + Duration::from_secs(1));
    assert_eq!(table.get_members("hot").len(), 5000);
    // Per group, the outbox delivers events in seq order even with concurrent writers.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events of one group come out in seq order");
    assert_eq!(events.len(), 2 * 300 * WRITERS as usize);
}

#[test]
fn concurrent_writers_on_many_groups_leave_a_consistent_table() {
    let table = Arc::new(ScopeTable::new(me()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let g = group(&format!("g{}", i % 7));
                    let pid = local(t * 1000 + i % 5);
                    table.join(&g, std::slice::from_ref(&pid)).unwrap();
                    if i % 3 == 0 {
                        table.leave(&g, std::slice::from_ref(&pid)).unwrap();
                    }
                    if i % 50 == 0 {
                        table.process_exit(&pid).unwrap();
                    }
                    if table.pending_events() > 10_000 {
                        table.drain_events(usize::MAX);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // Every pid exits: the table must end empty whatever the interleaving was.
    for t in 0..4u64 {
        for p in 0..5 {
            table.process_exit(&local(t * 1000 + p)).unwrap();
        }
    }
    assert!(table.which_groups().is_empty());
    assert_eq!(table.group_count(), 0);
}

/// What a monitor is given at registration: its groups' members and cuts, and the floor for the
/// groups not listed (`None` for a group monitor, which sees one group only).
struct MonitorRead {
    group: Option<String>,
    floor: u64,
    groups: BTreeMap<String, (u64, Vec<Pid>)>,
}

impl MonitorRead {
    fn of_group(table: &ScopeTable, name: &str) -> Self {
        let snapshot = table.monitor_snapshot(name);
        let groups = BTreeMap::from([(name.to_owned(), (snapshot.version(), snapshot.members().to_vec()))]);
        Self { group: Some(name.to_owned()), floor: snapshot.version(), groups }
    }

    fn of_scope(table: &ScopeTable) -> Self {
        let (floor, groups) = table.monitor_scope_snapshot();
        let groups = groups.into_iter().map(|(g, s)| (g.to_string(), (s.version(), s.members().to_vec()))).collect();
        Self { group: None, floor, groups }
    }

    /// The monitor's final view: its snapshot (empty groups left out, as the scope actor does)
    /// plus every event its cut does not reflect, in order; panics on a leave of a pid it does not
    /// hold.
    fn replay(&self, log: &[Event]) -> BTreeMap<String, Vec<Pid>> {
        let mut view: BTreeMap<String, Vec<Pid>> = self
            .groups
            .iter()
            .filter(|(_, (_, pids))| !pids.is_empty())
            .map(|(g, (_, pids))| (g.clone(), pids.clone()))
            .collect();
        let watched = |e: &&Event| self.group.as_deref().is_none_or(|g| g == e.group.as_str());
        let unreflected =
            |e: &&Event| e.seq > self.groups.get(e.group.as_str()).map(|(cut, _)| *cut).unwrap_or(self.floor);
        for event in log.iter().filter(watched).filter(unreflected) {
            replay(&mut view, std::slice::from_ref(event));
        }
        normalised(view)
    }
}

/// Monitor reads taken while writers create, fill, empty and remove groups: every read, replayed
/// with the full event log above its cut, gives the final table, never a leave of a pid it did not
/// hold, never a lost or repeated event. Bounded in time.
#[test]
fn monitor_reads_during_concurrent_writes_replay_to_the_final_table() {
    const WRITERS: u64 = 4;
    let limits = ScopeLimits { max_pending_events: usize::MAX, ..ScopeLimits::default() };
    let table = Arc::new(ScopeTable::with_limits(me(), limits));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(2);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
            std::thread::spawn(move || {
                // Few pids per group, so groups are created and removed all the time.
                for i in 0..5_000u64 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let g = group(&format!("g{}", (i * 5 + w) % 6));
                    let pid = local(w * 10 + i % 3);
                    match i % 7 {
                        0 | 2 | 4 => table.join(&g, std::slice::from_ref(&pid)).map(|_| ()).unwrap(),
                        6 => {
                            table.process_exit(&pid).unwrap();
                        }
                        _ => {
                            let _ = table.leave(&g, &[pid]); // NotJoined is fine
                        }
                    }
                }
            })
        })
        .collect();
    let mut reads = Vec::new();
    while writers.iter().any(|w| !w.is_finished()) && reads.len() < 300 {
        reads.push(if reads.len() % 2 == 0 {
            MonitorRead::of_scope(&table)
        } else {
            MonitorRead::of_group(&table, &format!("g{}", reads.len() % 6))
        });
        // Spread the reads over the writes (a scope read delays group creations and removals).
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(reads.len() >= 10, "reads taken while writing");
    let mut log = table.drain_events(usize::MAX);
    log.sort_by_key(|e| e.seq); // per group already in order; one order for all groups
    let truth = view_of(&table);
    for (i, read) in reads.iter().enumerate() {
        let wanted: BTreeMap<String, Vec<Pid>> = match &read.group {
            None => truth.clone(),
            Some(g) => truth.iter().filter(|(name, _)| *name == g).map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        assert_eq!(read.replay(&log), wanted, "read {i} replayed");
    }
}
