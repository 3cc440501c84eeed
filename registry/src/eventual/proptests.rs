//! Property tests of the compact eventual state (issue #5, beyond `tests/eventual_crdt.rs`):
//! tombstone collection interleaved with concurrent writes, out-of-order delivery, merges, shard
//! pulls and clock adoption converges; every permutation of a delta set converges; merge laws on
//! states with departures and different origin numbering; incremental digests equal recomputed ones
//! and are equal iff shard contents are; departure of `(name, n)` covers older incarnations and
//! ignores their late deltas in any order.

use std::collections::BTreeMap;

use cohort_actors::Pid;
use cohort_cluster::NodeId;
use proptest::prelude::*;

use super::*;

const NODES: [&str; 3] = ["a", "b", "c"];
const NAMES: [&str; 4] = ["x", "y", "z", "w"];

/// Origins: three node names with incarnations 1..=3, so departures can cover older runs.
fn origin(node: usize, incarnation: u64) -> NodeId {
    NodeId::new(NODES[node], incarnation)
}

fn arb_delta() -> impl Strategy<Value = Delta> {
    (0..NAMES.len(), 0..NODES.len(), 1u64..4, 1u64..6, prop::option::of((0u64..3, 0u8..3))).prop_map(
        |(name, node, incarnation, counter, live)| {
            let o = origin(node, incarnation);
            let value = match live {
                Some((local, priority)) => Value::Live(Live { pid: Pid::new(o.clone(), local), priority }),
                None => Value::Tombstone,
            };
            Delta { name: NAMES[name].to_owned(), dot: Dot { origin: o, counter, value } }
        },
    )
}

#[derive(Clone, Debug)]
enum Event {
    Delta(Delta),
    Depart(NodeId),
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    let depart = (0..NODES.len(), 1u64..4).prop_map(|(node, incarnation)| Event::Depart(origin(node, incarnation)));
    prop::collection::vec(prop_oneof![5 => arb_delta().prop_map(Event::Delta), 1 => depart], 0..24)
}

fn run(local: &str, events: &[Event]) -> EventualState {
    let mut state = EventualState::new(NodeId::new(local, 1));
    for event in events {
        match event {
            Event::Delta(delta) => {
                state.apply(delta).expect("generated deltas are valid");
            }
            Event::Depart(o) => {
                state.depart(o);
            }
        }
    }
    state
}

fn winners(state: &EventualState) -> Vec<(String, Live)> {
    state.winners().map(|(name, live)| (name.to_owned(), live)).collect()
}

fn entries(state: &EventualState) -> Vec<(String, Dot)> {
    state.entries().map(|(name, dot)| (name.to_owned(), dot)).collect()
}

/// All orderings of `items` (Heap's algorithm).
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn go<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            go(k - 1, items, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    go(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// One step of the collection simulation over three replicas (one per node of `NODES`, incarnation 1).
#[derive(Clone, Debug)]
enum Step {
    /// Replica `at` registers (`Some((local, priority))`) or unregisters `NAMES[name]`.
    Write { at: usize, name: usize, live: Option<(u64, u8)> },
    /// Deliver the `pick`-th (mod len) pending delta of replica `to`: any order, duplicates allowed.
    Deliver { to: usize, pick: usize, keep: bool },
    /// `to` merges `from`'s whole state.
    Merge { from: usize, to: usize },
    /// `to` pulls the shards where its digest differs from `from`'s.
    Pull { from: usize, to: usize },
    /// `to` adopts `from`'s acknowledgement if their digests are equal.
    Adopt { from: usize, to: usize },
    /// Replica `at` collects with the meet of every replica's acknowledgement.
    Collect { at: usize },
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    let replica = 0..NODES.len();
    let step = prop_oneof![
        4 => (replica.clone(), 0..NAMES.len(), prop::option::of((0u64..3, 0u8..3)))
            .prop_map(|(at, name, live)| Step::Write { at, name, live }),
        5 => (replica.clone(), any::<usize>(), any::<bool>()).prop_map(|(to, pick, keep)| Step::Deliver { to, pick, keep }),
        1 => (replica.clone(), replica.clone()).prop_map(|(from, to)| Step::Merge { from, to }),
        1 => (replica.clone(), replica.clone()).prop_map(|(from, to)| Step::Pull { from, to }),
        1 => (replica.clone(), replica.clone()).prop_map(|(from, to)| Step::Adopt { from, to }),
        3 => replica.prop_map(|at| Step::Collect { at }),
    ];
    prop::collection::vec(step, 0..60)
}

fn meet(replicas: &[EventualState]) -> VersionVector {
    let mut all = replicas[0].version_vector().clone();
    for replica in &replicas[1..] {
        all = all.meet(replica.version_vector());
    }
    all
}

fn pull(replicas: &mut [EventualState], from: usize, to: usize) {
    let theirs = replicas[from].digest();
    for shard in differing_shards(&replicas[to].digest(), &theirs) {
        let state = replicas[from].shard_state(shard).unwrap();
        replicas[to].merge_shard(&state).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn collection_interleaved_with_writes_delivery_and_merges_converges(steps in arb_steps()) {
        let mut replicas: Vec<EventualState> =
            NODES.iter().map(|node| EventualState::new(NodeId::new(*node, 1))).collect();
        let mut pending: Vec<Vec<Delta>> = vec![Vec::new(); NODES.len()];
        // The expected outcome: the last write of each (name, origin).
        let mut last: BTreeMap<(String, usize), Option<(u64, u8)>> = BTreeMap::new();
        for step in &steps {
            match *step {
                Step::Write { at, name, live } => {
                    let pid = |local| Pid::new(NodeId::new(NODES[at], 1), local);
                    let written = match live {
                        Some((local, priority)) => replicas[at].register(NAMES[name], pid(local), priority),
                        None => replicas[at].unregister(NAMES[name]),
                    };
                    if let Ok(delta) = written {
                        last.insert((NAMES[name].to_owned(), at), live);
                        for (to, queue) in pending.iter_mut().enumerate() {
                            if to != at {
                                queue.push(delta.clone());
                            }
                        }
                    }
                }
                Step::Deliver { to, pick, keep } => {
                    if !pending[to].is_empty() {
                        let at = pick % pending[to].len();
                        // `keep` re-delivers the same delta later: duplicates must be harmless.
                        let delta = if keep { pending[to][at].clone() } else { pending[to].remove(at) };
                        replicas[to].apply(&delta).unwrap();
                    }
                }
                Step::Merge { from, to } => {
                    let other = replicas[from].clone();
                    prop_assert_eq!(replicas[to].merge(&other).refused, 0);
                }
                Step::Pull { from, to } => pull(&mut replicas, from, to),
                Step::Adopt { from, to } => {
                    let (digest, clock) = (replicas[from].digest(), replicas[from].version_vector().clone());
                    replicas[to].adopt_peer_clock(&digest, &clock);
                }
                Step::Collect { at } => {
                    let seen = meet(&replicas);
                    replicas[at].collect_tombstones(&seen);
                }
            }
        }
        for (to, queue) in pending.iter_mut().enumerate() {
            for delta in queue.drain(..) {
                replicas[to].apply(&delta).unwrap();
            }
        }
        let seen = meet(&replicas);
        for replica in &mut replicas {
            replica.collect_tombstones(&seen);
        }
        for replica in &replicas {
            prop_assert!(replica.same_content(&replicas[0]));
            prop_assert_eq!(replica.digest(), replicas[0].digest());
            prop_assert_eq!(winners(replica), winners(&replicas[0]));
            // Every write was delivered everywhere, so every tombstone is acknowledged by all.
            prop_assert_eq!(replica.tombstone_count(), 0);
            prop_assert_eq!(replica.stats().tombstones_collected_early, 0);
        }
        // And the content is exactly each origin's last live write per name.
        let expected: Vec<(String, NodeId, u64, u8)> = last
            .iter()
            .filter_map(|((name, at), live)| live.map(|(local, priority)| (name.clone(), NodeId::new(NODES[*at], 1), local, priority)))
            .collect();
        let mut held: Vec<(String, NodeId, u64, u8)> = replicas[0]
            .entries()
            .map(|(name, dot)| match dot.value {
                Value::Live(live) => (name.to_owned(), dot.origin, live.pid.local, live.priority),
                Value::Tombstone => unreachable!("no tombstone is left"),
            })
            .collect();
        held.sort();
        prop_assert_eq!(held, expected);
    }

    #[test]
    fn every_permutation_of_a_delta_set_converges(deltas in prop::collection::vec(arb_delta(), 0..=5)) {
        let events: Vec<Event> = deltas.into_iter().map(Event::Delta).collect();
        let reference = run("r0", &events);
        for order in permutations(&events) {
            let state = run("r1", &order);
            prop_assert!(state.same_content(&reference));
            prop_assert_eq!(entries(&state), entries(&reference));
            prop_assert_eq!(winners(&state), winners(&reference));
            prop_assert_eq!(state.digest(), reference.digest());
        }
    }

    #[test]
    fn every_permutation_of_deltas_and_departures_converges(events in arb_events().prop_map(|mut e| { e.truncate(5); e })) {
        let reference = run("r0", &events);
        for order in permutations(&events) {
            let state = run("r1", &order);
            prop_assert!(state.same_content(&reference));
            prop_assert_eq!(winners(&state), winners(&reference));
        }
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent_with_departures(
        e1 in arb_events(),
        e2 in arb_events(),
        e3 in arb_events(),
    ) {
        // Different replicas intern origins in different orders, so slots differ between them.
        let (a, b, c) = (run("r1", &e1), run("r2", &e2), run("r3", &e3));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert!(ab.same_content(&ba));
        prop_assert_eq!(winners(&ab), winners(&ba));
        prop_assert_eq!(ab.digest(), ba.digest());

        let mut left = ab.clone();
        left.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut right = a.clone();
        right.merge(&bc);
        prop_assert!(left.same_content(&right));
        prop_assert_eq!(left.digest(), right.digest());

        let mut again = left.clone();
        let outcome = again.merge(&left);
        prop_assert!(!outcome.changed);
        prop_assert!(again.same_content(&left));
    }

    #[test]
    fn incremental_digest_equals_the_recomputed_digest(events in arb_events(), collect_at in any::<Vec<(u8, u64)>>()) {
        let mut state = EventualState::new(NodeId::new("r", 1));
        let mut clock = VersionVector::new();
        for (i, event) in events.iter().enumerate() {
            match event {
                Event::Delta(delta) => {
                    state.apply(delta).unwrap();
                }
                Event::Depart(o) => {
                    state.depart(o);
                }
            }
            if let Some((node, counter)) = collect_at.get(i) {
                clock.observe(&origin(*node as usize % NODES.len(), 1 + counter % 3), counter % 6);
                state.collect_tombstones(&clock);
            }
            prop_assert_eq!(state.digest(), state.recomputed_digest());
        }
    }

    #[test]
    fn digests_are_equal_iff_shard_contents_are_equal(
        (events, shuffled) in arb_events().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
        extra in prop::collection::vec(arb_delta(), 0..3),
    ) {
        let a = run("r1", &events);
        let mut b = run("r2", &shuffled);
        for delta in &extra {
            b.apply(delta).unwrap();
        }
        let (da, db) = (a.digest(), b.digest());
        for shard in 0..SHARD_COUNT {
            let equal = a.shard_state(shard).unwrap() == b.shard_state(shard).unwrap();
            prop_assert_eq!(da[shard] == db[shard], equal);
        }
        prop_assert_eq!(da == db, entries(&a) == entries(&b));
    }

    #[test]
    fn after_departure_late_deltas_of_the_node_and_its_older_runs_are_ignored_in_any_order(
        (deltas, node, incarnation) in (prop::collection::vec(arb_delta(), 0..16), 0..NODES.len(), 1u64..4),
        at in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let gone = origin(node, incarnation);
        let covered = |o: &NodeId| o.name == gone.name && o.incarnation <= gone.incarnation;
        // Depart somewhere in the stream, then shuffle the rest deterministically from `seed`.
        let mut late = deltas.clone();
        let split = at.index(late.len() + 1);
        let early: Vec<Delta> = late.drain(..split).collect();
        let mut rng = seed;
        for i in (1..late.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            late.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let mut state = EventualState::new(NodeId::new("r", 1));
        for delta in &early {
            state.apply(delta).unwrap();
        }
        state.depart(&gone);
        for delta in &late {
            let outcome = state.apply(delta).unwrap();
            if covered(&delta.dot.origin) {
                prop_assert!(!outcome.changed);
            }
        }
        prop_assert!(state.is_departed(&gone));
        prop_assert!(state.entries().all(|(_, dot)| !covered(&dot.origin)));
        // Same content as applying every delta first and departing last.
        let mut reference = EventualState::new(NodeId::new("r", 1));
        for delta in &deltas {
            reference.apply(delta).unwrap();
        }
        reference.depart(&gone);
        prop_assert!(state.same_content(&reference));
        prop_assert_eq!(winners(&state), winners(&reference));
        // Later incarnations of the node are untouched.
        let newer = deltas.iter().any(|d| d.dot.origin.name == gone.name && d.dot.origin.incarnation > gone.incarnation);
        prop_assert_eq!(newer, state.entries().any(|(_, dot)| dot.origin.name == gone.name));
    }
}

#[test]
fn permutations_are_all_orderings() {
    let all = permutations(&[1, 2, 3, 4]);
    assert_eq!(all.len(), 24);
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 24);
}
