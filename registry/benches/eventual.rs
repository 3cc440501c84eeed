//! Benchmarks of the eventual tier's CRDT core (issue #5): local register, apply of a peer delta,
//! `digest()` and one shard's `shard_state` + `merge_shard` at 100,000 names, and the memory per
//! name (printed to stderr before the timings).
//!
//! Memory is measured with a counting global allocator (this bench binary only): the live heap
//! bytes after building a replica that holds 100,000 names, divided by 100,000. Two figures: the
//! bytes requested from the allocator, and an estimate of what glibc's malloc uses for them (a
//! chunk of `max(32, (size + 8) rounded up to 16)` bytes per allocation). The 5-origin case has
//! every name written by one of 5 nodes (round robin), as every node of a 5-node cluster holds it;
//! the 1-origin case has every name registered locally. For comparison the same content is also
//! built in the layout the state used before (`BTreeMap<String, BTreeMap<NodeId, Dot>>`).
//!
//! Run: `nice cargo bench -p cohort-registry --bench eventual`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cohort_actors::Pid;
use cohort_cluster::NodeId;
use cohort_registry::eventual::{Delta, Dot, EventualState, Limits, Live, SHARD_COUNT, Value, shard_of};
use criterion::{BatchSize, Criterion, criterion_group};

/// Counts live heap bytes: requested, and glibc-style chunk sizes.
struct Counting;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

fn count(size: usize, grow: bool) {
    if grow {
        REQUESTED.fetch_add(size, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk(size), Ordering::Relaxed);
    } else {
        REQUESTED.fetch_sub(size, Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk(size), Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size(), true);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size(), true);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), false);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(layout.size(), false);
            count(new_size, true);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NAMES: usize = 100_000;
const ORIGINS: usize = 5;

fn origin(i: usize) -> NodeId {
    NodeId::new(format!("node-{i}"), 1)
}

fn name(i: usize) -> String {
    format!("user-session-{i}")
}

/// The deltas of `NAMES` names written round robin by `origins` nodes (counters per origin from 1).
fn deltas(origins: usize) -> Vec<Delta> {
    (0..NAMES)
        .map(|i| {
            let o = origin(i % origins);
            let live = Live { pid: Pid::new(o.clone(), i as u64), priority: 0 };
            Delta { name: name(i), dot: Dot { origin: o, counter: (i / origins) as u64 + 1, value: Value::Live(live) } }
        })
        .collect()
}

/// A replica on `node-0` holding `deltas`: its own through `register`, the others through `apply`.
fn replica(deltas: &[Delta]) -> EventualState {
    let local = origin(0);
    let mut state = EventualState::new(local.clone());
    for delta in deltas {
        match &delta.dot.value {
            Value::Live(live) if delta.dot.origin == local => {
                state.register(&delta.name, live.pid.clone(), live.priority).expect("register");
            }
            _ => {
                state.apply(delta).expect("apply");
            }
        }
    }
    state
}

/// The same content in the layout used before the compact store.
fn old_layout(deltas: &[Delta]) -> BTreeMap<String, BTreeMap<NodeId, Dot>> {
    let mut names: BTreeMap<String, BTreeMap<NodeId, Dot>> = BTreeMap::new();
    for delta in deltas {
        names.entry(delta.name.clone()).or_default().insert(delta.dot.origin.clone(), delta.dot.clone());
    }
    names
}

/// Live heap (requested, chunk) bytes per name held by what `build` returns.
fn per_name<T>(build: impl FnOnce() -> T) -> (f64, f64) {
    let (requested, chunks) = (REQUESTED.load(Ordering::Relaxed), CHUNKS.load(Ordering::Relaxed));
    let built = build();
    let requested = REQUESTED.load(Ordering::Relaxed) - requested;
    let chunks = CHUNKS.load(Ordering::Relaxed) - chunks;
    drop(black_box(built));
    (requested as f64 / NAMES as f64, chunks as f64 / NAMES as f64)
}

fn report_memory() {
    for origins in [ORIGINS, 1] {
        let deltas = deltas(origins);
        let (requested, chunks) = per_name(|| replica(&deltas));
        let (old_requested, old_chunks) = per_name(|| old_layout(&deltas));
        eprintln!(
            "eventual memory, {NAMES} names from {origins} origin(s), names like {:?}: \
             {requested:.1} B/name requested, {chunks:.1} B/name with malloc chunks \
             (previous layout: {old_requested:.1} requested, {old_chunks:.1} with chunks)",
            name(NAMES - 1)
        );
    }
}

/// Time `op(state, k)` against a replica holding 100k names, `k` counting the operations since the
/// replica was last reset (untimed) from its template, which happens every `room` operations.
fn on_full_replica(c: &mut Criterion, id: &str, op: impl Fn(&mut EventualState, usize)) {
    let limits = Limits { max_names: 2 * NAMES, ..Limits::default() };
    let full = {
        let mut state = EventualState::with_limits(origin(0), limits);
        state.merge(&replica(&deltas(ORIGINS)));
        state
    };
    let room = NAMES / 2;
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut state = full.clone();
            let mut used = 0;
            for _ in 0..iters {
                if used == room {
                    state = full.clone();
                    used = 0;
                }
                let start = Instant::now();
                op(&mut state, used);
                total += start.elapsed();
                used += 1;
            }
            total
        })
    });
}

fn benches_ops(c: &mut Criterion) {
    on_full_replica(c, "register_local_at_100k", |state, k| {
        black_box(state.register(&name(NAMES + k), Pid::new(origin(0), k as u64), 0).unwrap());
    });
    on_full_replica(c, "apply_peer_delta_at_100k", |state, k| {
        // node-1's next counters, so its acknowledgement stays a contiguous prefix.
        let o = origin(1);
        let counter = (NAMES / ORIGINS + 1 + k) as u64;
        let live = Live { pid: Pid::new(o.clone(), counter), priority: 0 };
        let delta = Delta { name: name(NAMES + k), dot: Dot { origin: o, counter, value: Value::Live(live) } };
        black_box(state.apply(&delta).unwrap());
    });

    let full = replica(&deltas(ORIGINS));
    c.bench_function("digest_at_100k", |b| b.iter(|| black_box(full.digest())));
    c.bench_function("winner_at_100k", |b| b.iter(|| black_box(full.winner(black_box("user-session-4242")))));
    let shard = shard_of("user-session-4242");
    c.bench_function("shard_state_at_100k", |b| b.iter(|| black_box(full.shard_state(shard).unwrap())));
    let sent = full.shard_state(shard).unwrap();
    eprintln!("one shard of {NAMES} names holds {} entries ({SHARD_COUNT} shards)", sent.entries.len());
    c.bench_function("shard_state_and_merge_shard_into_equal_at_100k", |b| {
        let mut target = full.clone();
        b.iter(|| {
            let state = full.shard_state(shard).unwrap();
            black_box(target.merge_shard(&state).unwrap())
        })
    });
    c.bench_function("merge_shard_into_empty_replica", |b| {
        b.iter_batched(
            || EventualState::new(NodeId::new("fresh", 1)),
            |mut target| black_box(target.merge_shard(&sent).unwrap()),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, benches_ops);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
