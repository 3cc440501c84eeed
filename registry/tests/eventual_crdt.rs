//! Property tests of the eventual tier's CRDT core (`cohort_registry::eventual`): merge laws,
//! convergence under every delivery order, deterministic winner, delete-wins, tombstones that never
//! hide another origin, order-independent departure, digests that match iff contents match, and
//! loser reports that never repeat.

use cohort_actors::Pid;
use cohort_cluster::NodeId;
use cohort_registry::eventual::{
    Delta, Dot, EventualState, Live, SHARD_COUNT, ShardState, Value, differing_shards, rank,
};
use proptest::prelude::*;

const ORIGINS: [&str; 3] = ["a", "b", "c"];
const NAMES: [&str; 4] = ["x", "y", "z", "w"];

fn origin(i: usize) -> NodeId {
    NodeId::new(ORIGINS[i], 1)
}

fn replica(name: &str) -> EventualState {
    EventualState::new(NodeId::new(name, 1))
}

/// Any well-formed dot from one of a few origins: small counters so equal-counter conflicts occur.
fn arb_delta() -> impl Strategy<Value = Delta> {
    (0..NAMES.len(), 0..ORIGINS.len(), 1u64..6, prop::option::of((0u64..3, 0u8..3))).prop_map(
        |(name, o, counter, live)| {
            let value = match live {
                Some((local, priority)) => Value::Live(Live { pid: Pid::new(origin(o), local), priority }),
                None => Value::Tombstone,
            };
            Delta { name: NAMES[name].to_owned(), dot: Dot { origin: origin(o), counter, value } }
        },
    )
}

fn arb_deltas() -> impl Strategy<Value = Vec<Delta>> {
    prop::collection::vec(arb_delta(), 0..24)
}

fn state_of(local: &str, deltas: &[Delta]) -> EventualState {
    let mut state = replica(local);
    for delta in deltas {
        state.apply(delta).expect("generated deltas are valid");
    }
    state
}

fn winners(state: &EventualState) -> Vec<(String, Live)> {
    state.winners().map(|(n, l)| (n.to_owned(), l.clone())).collect()
}

#[derive(Clone, Debug)]
enum Event {
    Delta(Delta),
    Depart(usize),
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    let event = prop_oneof![4 => arb_delta().prop_map(Event::Delta), 1 => (0..ORIGINS.len()).prop_map(Event::Depart)];
    prop::collection::vec(event, 0..24)
}

fn run_events(local: &str, events: &[Event]) -> EventualState {
    let mut state = replica(local);
    for event in events {
        match event {
            Event::Delta(delta) => {
                state.apply(delta).expect("generated deltas are valid");
            }
            Event::Depart(o) => {
                state.depart(&origin(*o));
            }
        }
    }
    state
}

proptest! {
    #[test]
    fn merge_is_commutative(d1 in arb_deltas(), d2 in arb_deltas()) {
        let (a, b) = (state_of("r1", &d1), state_of("r2", &d2));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        prop_assert!(ab.same_content(&ba));
        prop_assert_eq!(winners(&ab), winners(&ba));
    }

    #[test]
    fn merge_is_associative(d1 in arb_deltas(), d2 in arb_deltas(), d3 in arb_deltas()) {
        let (a, b, c) = (state_of("r1", &d1), state_of("r2", &d2), state_of("r3", &d3));
        let mut left = a.clone();
        left.merge(&b);
        left.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut right = a.clone();
        right.merge(&bc);
        prop_assert!(left.same_content(&right));
    }

    #[test]
    fn merge_is_idempotent(d in arb_deltas()) {
        let a = state_of("r1", &d);
        let mut aa = a.clone();
        let outcome = aa.merge(&a);
        prop_assert!(!outcome.changed);
        prop_assert!(aa.same_content(&a));
    }

    #[test]
    fn every_delivery_order_converges_to_the_same_state_and_winners(
        (deltas, shuffled) in arb_deltas().prop_flat_map(|d| (Just(d.clone()), Just(d).prop_shuffle())),
    ) {
        let in_order = state_of("r1", &deltas);
        let mut twice = shuffled.clone();
        twice.extend(shuffled.iter().rev().cloned());
        let reordered = state_of("r2", &twice);
        prop_assert!(in_order.same_content(&reordered));
        prop_assert_eq!(winners(&in_order), winners(&reordered));
        prop_assert_eq!(in_order.digest(), reordered.digest());
    }

    #[test]
    fn winner_is_the_highest_ranked_live_dot_on_every_replica(
        (deltas, shuffled) in arb_deltas().prop_flat_map(|d| (Just(d.clone()), Just(d).prop_shuffle())),
    ) {
        let (one, other) = (state_of("r1", &deltas), state_of("r2", &shuffled));
        for name in NAMES {
            let expected = one
                .dots(name)
                .filter_map(|dot| match &dot.value {
                    Value::Live(live) => Some((rank(name, &dot.origin, live.priority), live.clone())),
                    Value::Tombstone => None,
                })
                .max_by(|x, y| x.0.cmp(&y.0))
                .map(|(_, live)| live);
            prop_assert_eq!(one.winner(name), expected.clone());
            prop_assert_eq!(other.winner(name), expected);
        }
    }

    #[test]
    fn delete_beats_an_equal_counter_write_from_the_same_origin(
        live in arb_delta().prop_filter("live", |d| matches!(d.dot.value, Value::Live(_))),
        delete_first: bool,
    ) {
        let tomb = Delta { name: live.name.clone(), dot: Dot { value: Value::Tombstone, ..live.dot.clone() } };
        let order = if delete_first { [tomb.clone(), live.clone()] } else { [live.clone(), tomb.clone()] };
        let state = state_of("r1", &order);
        let dots: Vec<Dot> = state.dots(&live.name).collect();
        prop_assert_eq!(dots, vec![tomb.dot.clone()]);
        prop_assert_eq!(state.winner(&live.name), None);
    }

    #[test]
    fn a_tombstone_never_hides_another_origins_live_entry(deltas in arb_deltas()) {
        let state = state_of("r1", &deltas);
        for name in NAMES {
            let any_live = state.dots(name).any(|dot| matches!(dot.value, Value::Live(_)));
            prop_assert_eq!(state.winner(name).is_some(), any_live);
        }
    }

    #[test]
    fn departure_is_order_independent(
        (events, shuffled) in arb_events().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
    ) {
        let (one, other) = (run_events("r1", &events), run_events("r2", &shuffled));
        prop_assert!(one.same_content(&other));
        prop_assert_eq!(winners(&one), winners(&other));
        for event in &events {
            if let Event::Depart(o) = event {
                prop_assert!(one.entries().all(|(_, dot)| dot.origin != origin(*o)));
            }
        }
    }

    #[test]
    fn digests_are_equal_iff_shard_contents_are_equal(d1 in arb_deltas(), d2 in arb_deltas()) {
        let (a, b) = (state_of("r1", &d1), state_of("r2", &d2));
        prop_assert_eq!(a.digest() == b.digest(), a.same_content(&b));
        let differing = differing_shards(&a.digest(), &b.digest());
        for shard in 0..SHARD_COUNT {
            let equal = a.shard_state(shard).unwrap() == b.shard_state(shard).unwrap();
            prop_assert_eq!(equal, !differing.contains(&shard));
        }
    }

    #[test]
    fn pulling_differing_shards_makes_replicas_equal(d1 in arb_deltas(), d2 in arb_deltas()) {
        let (mut a, mut b) = (state_of("r1", &d1), state_of("r2", &d2));
        for shard in differing_shards(&a.digest(), &b.digest()) {
            let (from_a, from_b) = (a.shard_state(shard).unwrap(), b.shard_state(shard).unwrap());
            a.merge_shard(&from_b).unwrap();
            b.merge_shard(&from_a).unwrap();
        }
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert!(a.same_content(&b));
    }

    #[test]
    fn a_delta_applied_twice_reports_a_loser_at_most_once(
        priority in 0u8..3,
        deltas in arb_deltas(),
    ) {
        // The replica is origin "a" and holds a registration of its own; peers' deltas arrive twice.
        let mut state = EventualState::new(origin(0));
        let mine = Pid::new(origin(0), 9);
        state.register("x", mine.clone(), priority).unwrap();
        let mut reports = 0;
        for delta in deltas.iter().filter(|d| d.dot.origin != origin(0)) {
            let first = state.apply(delta).unwrap();
            let second = state.apply(delta).unwrap();
            prop_assert!(!second.changed);
            prop_assert_eq!(second.lost, None);
            if let Some((name, pid)) = first.lost {
                prop_assert_eq!((name.as_str(), &pid), ("x", &mine));
                reports += 1;
            }
        }
        prop_assert!(reports <= 1);
    }

    #[test]
    fn arbitrary_peer_input_never_panics(
        name in "\\PC{0,300}",
        origin_name in "\\PC{0,70}",
        pid_node in "\\PC{0,10}",
        counter: u64,
        live: Option<(u64, u8)>,
    ) {
        let o = NodeId::new(origin_name, 1);
        let value = match live {
            Some((local, priority)) => Value::Live(Live { pid: Pid::new(NodeId::new(pid_node, 1), local), priority }),
            None => Value::Tombstone,
        };
        let delta = Delta { name: name.clone(), dot: Dot { origin: o, counter, value } };
        let mut state = replica("r1");
        let _ = state.apply(&delta);
        let _ = state.merge_shard(&ShardState { shard: counter as usize, entries: vec![delta] });
        let _ = state.winner(&name);
        let _ = state.digest();
    }

    #[test]
    fn deltas_and_shards_round_trip_through_msgpack(deltas in arb_deltas()) {
        let state = state_of("r1", &deltas);
        for delta in &deltas {
            let bytes = rmp_serde::to_vec(delta).unwrap();
            prop_assert!(bytes.len() <= cohort_registry::eventual::MAX_DELTA_BYTES);
            prop_assert_eq!(&rmp_serde::from_slice::<Delta>(&bytes).unwrap(), delta);
        }
        let shard = state.shard_state(0).unwrap();
        let bytes = rmp_serde::to_vec(&shard).unwrap();
        prop_assert_eq!(rmp_serde::from_slice::<ShardState>(&bytes).unwrap(), shard);
    }
}
