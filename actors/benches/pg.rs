//! pg scope benchmarks: the caller-side cost of local join+leave, the cost of reads, and memory per
//! membership, in the shapes of the Erlang/OTP 25 anchor (shared/anchors/erlang) for comparison.
//!
//! Run: `cargo bench -p cohort-actors --bench pg` (about two minutes). Memory is measured first with a
//! counting global allocator (bytes requested from the allocator, so malloc's own per-block header
//! is not included; the number of live blocks is printed so it can be estimated) and printed as
//! `memory/...` lines; then criterion runs the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use cohort_actors::Pid;
use cohort_actors::pg::{Group, ScopeTable};
use cohort_cluster::NodeId;
use criterion::{BenchmarkId, Criterion, criterion_group};

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A node name of a realistic length ("node-01"), as the pid's `String` costs memory per copy.
fn me() -> NodeId {
    NodeId::new("node-01", 1_732_000_000_000_000)
}

fn group(name: &str) -> Group {
    Group::new(name).unwrap()
}

/// A scope holding `n` groups of one distinct local member each (the Erlang anchor's filler).
fn scope_with_groups(n: u64) -> ScopeTable {
    let table = ScopeTable::new(me());
    for i in 0..n {
        table.join(&group(&format!("fill-{i}")), &[Pid::new(me(), 1_000_000 + i)]).unwrap();
        if table.pending_events() > 10_000 {
            table.drain_events(usize::MAX);
        }
    }
    table.drain_events(usize::MAX);
    table
}

/// Times `op` in batches, draining the event outbox (the scope actor's work, on another thread in a
/// node) outside the timed region.
fn timed_with_drain(table: &ScopeTable, iters: u64, mut op: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let batch = left.min(1_000);
        let started = Instant::now();
        for _ in 0..batch {
            op();
        }
        total += started.elapsed();
        table.drain_events(usize::MAX);
        left -= batch;
    }
    total
}

fn join_leave(c: &mut Criterion) {
    let mut bench = c.benchmark_group("join_leave");
    for groups in [1u64, 1_000, 100_000] {
        let table = scope_with_groups(groups);
        let probe_group = group("probe");
        let probe = [Pid::new(me(), 1)];
        bench.bench_with_input(BenchmarkId::new("scope_groups", groups), &groups, |b, _| {
            b.iter_custom(|iters| {
                timed_with_drain(&table, iters, || {
                    table.join(&probe_group, black_box(&probe)).unwrap();
                    table.leave(&probe_group, black_box(&probe)).unwrap();
                })
            })
        });
    }
    // The cost of copy-on-write: join+leave in a group that already has 10,000 members.
    let table = ScopeTable::new(me());
    let big = group("big");
    let members: Vec<Pid> = (10..10_010).map(|l| Pid::new(me(), l)).collect();
    for chunk in members.chunks(1_000) {
        table.join(&big, chunk).unwrap();
    }
    table.drain_events(usize::MAX);
    let probe = [Pid::new(me(), 1)];
    bench.bench_function("group_of_10000", |b| {
        b.iter_custom(|iters| {
            timed_with_drain(&table, iters, || {
                table.join(&big, black_box(&probe)).unwrap();
                table.leave(&big, black_box(&probe)).unwrap();
            })
        })
    });
    bench.finish();
}

fn get_members(c: &mut Criterion) {
    let mut bench = c.benchmark_group("get_members");
    for size in [1u64, 100, 10_000] {
        let table = ScopeTable::new(me());
        let g = group("g");
        let pids: Vec<Pid> = (0..size).map(|l| Pid::new(me(), l)).collect();
        for chunk in pids.chunks(1_000) {
            table.join(&g, chunk).unwrap();
        }
        table.drain_events(usize::MAX);
        bench.bench_with_input(BenchmarkId::new("members", size), &size, |b, _| {
            b.iter(|| black_box(table.get_members(black_box("g"))).len())
        });
    }
    bench.finish();
}

/// Bytes and blocks held per membership after building `n` memberships with `build`.
fn memory_per_membership(label: &str, n: u64, build: impl FnOnce(&ScopeTable)) {
    let table = ScopeTable::new(me());
    let (bytes_before, blocks_before) = (BYTES.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst));
    build(&table);
    table.drain_events(usize::MAX);
    let bytes = BYTES.load(Ordering::SeqCst) - bytes_before;
    let blocks = BLOCKS.load(Ordering::SeqCst) - blocks_before;
    println!(
        "memory/{label}: {:.0} bytes per membership ({:.2} allocations per membership; \
         with glibc's ~8-16 bytes of header per allocation: ~{:.0} bytes)",
        bytes as f64 / n as f64,
        blocks as f64 / n as f64,
        (bytes as f64 + blocks as f64 * 12.0) / n as f64
    );
    black_box(&table);
}

fn memory() {
    const N: u64 = 100_000;
    // The groups' names and pids handed to join are the caller's; build them before counting.
    let names: Vec<Group> = (0..N).map(|i| group(&format!("g-{i}"))).collect();
    let pids: Vec<Pid> = (0..N).map(|l| Pid::new(me(), l + 1)).collect();
    memory_per_membership("100k_pids_each_in_its_own_group", N, |table| {
        for (g, pid) in names.iter().zip(&pids) {
            table.join(g, std::slice::from_ref(pid)).unwrap();
            if table.pending_events() > 10_000 {
                table.drain_events(usize::MAX);
            }
        }
    });
    memory_per_membership("100k_pids_in_one_group", N, |table| {
        for chunk in pids.chunks(1_000) {
            table.join(&names[0], chunk).unwrap();
        }
    });
    memory_per_membership("1_pid_in_100k_groups", N, |table| {
        for g in &names {
            table.join(g, &pids[..1]).unwrap();
            if table.pending_events() > 10_000 {
                table.drain_events(usize::MAX);
            }
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = join_leave, get_members
}

fn main() {
    memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
