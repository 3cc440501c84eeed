//! Registry benchmarks (issue 5, SPEC 7): the cost of a registration on the local node, the time
//! until an eventual-tier name is visible on every node (3 and 5 nodes), the time for 100,000 names
//! registered across 5 nodes to converge, and the memory per name per node.
//!
//! Run: `cargo bench -p cohort --bench registry` (about a minute after the build; prints a
//! Markdown table). `BENCH_NAMES=N` changes the convergence workload (default 100,000).
//!
//! Setup: real `Node`s (membership over UDP, transport over TCP on 127.0.0.1, processes, registry)
//! in this one OS process on one tokio runtime with 2 worker threads (the VM has 2 cores).
//! Clock: `Instant`. Registration cost is timed in batches of 64 names on one process
//! (its per-process bound), unregistered untimed between batches. Visibility: a name is
//! registered on node 0 and every other node's `lookup` is polled (yielding between polls)
//! until all return it; one sample per name, 300 names, one at a time. Convergence: each of 5
//! nodes registers `BENCH_NAMES / 5` names (64 per process) as fast as it can; the time runs
//! from the first registration until every node shows every name. Memory: the process's resident
//! set (`/proc/self/statm`) before and after, divided by names x nodes; it includes every copy and
//! index the registry keeps, and the allocator's slack.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cohort::Node;
use cohort::actors::ProcessRef;
use cohort::registry::{NameRevoked, Tier};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

/// Counts the bytes live on the heap (this bench binary only), so memory per name is what the
/// registry holds rather than the resident set, which the allocator's retained free pages blur.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Revoked(NameRevoked),
}

impl From<NameRevoked> for Msg {
    fn from(notice: NameRevoked) -> Self {
        Msg::Revoked(notice)
    }
}

struct Idle;

impl Actor for Idle {
    type Msg = Msg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

#[derive(Clone, Copy)]
struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summary(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Summary { p50: at(0.5), p99: at(0.99), max: *samples.last().unwrap() }
}

async fn spawn_many(node: &Node, n: usize) -> Vec<ProcessRef<Msg>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(node.spawn(Idle, ()).await.expect("spawn").1);
    }
    out
}

/// Registration cost on the local node, per name (mean over batches of 64).
async fn register_cost(node: &Node, tier: Tier, rounds: usize) -> Summary {
    let process = spawn_many(node, 1).await.remove(0);
    let registry = node.registry();
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let names: Vec<String> = (0..64).map(|i| format!("cost-{}-{round}-{i}", tier.as_str())).collect();
        let start = Instant::now();
        for name in &names {
            registry.register(tier, name, &process).expect("register");
        }
        samples.push(start.elapsed() / 64);
        for name in &names {
            registry.unregister(tier, name).expect("unregister");
        }
    }
    summary(samples)
}

/// Time until a name registered on node 0 is visible on every node.
async fn visibility(nodes: &[Node], samples: usize) -> Summary {
    let owners = spawn_many(&nodes[0], samples.div_ceil(64)).await;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("vis-{}-{i}", nodes.len());
        let start = Instant::now();
        nodes[0].registry().register(Tier::Eventual, &name, &owners[i / 64]).expect("register");
        while !nodes[1..].iter().all(|n| n.registry().eventual().lookup(&name).is_some()) {
            tokio::task::yield_now().await;
        }
        out.push(start.elapsed());
    }
    summary(out)
}

async fn cluster(names: &[&str]) -> Vec<Node> {
    cohort_examples::local_cluster(names, Duration::from_secs(30)).await.expect("cluster")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::var("BENCH_NAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mut rows = Vec::new();

    let single = cluster(&["solo"]).await;
    for tier in [Tier::Local, Tier::Eventual] {
        let s = register_cost(&single[0], tier, 300).await;
        rows.push(format!("| register, {} tier, 1 node | {:?} | {:?} | {:?} |", tier, s.p50, s.p99, s.max));
    }
    for node in single {
        node.shutdown().await;
    }

    for n in [3usize, 5] {
        let names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        let nodes = cluster(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let s = visibility(&nodes, 300).await;
        rows.push(format!("| visible on all {n} nodes | {:?} | {:?} | {:?} |", s.p50, s.p99, s.max));
        for node in nodes {
            node.shutdown().await;
        }
    }

    let nodes = cluster(&["c0", "c1", "c2", "c3", "c4"]).await;
    let per_node = total / nodes.len();
    let mut owners = Vec::new();
    for node in &nodes {
        owners.push(spawn_many(node, per_node.div_ceil(64)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes();
    let live_before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let registry = node.registry().clone();
        let owners = owners[k].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_node {
                registry.register(Tier::Eventual, &format!("conv-{k}-{i}"), &owners[i / 64]).expect("register");
                if i % 1024 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("registration task");
    }
    let registered = start.elapsed();
    let want = per_node * nodes.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !nodes.iter().all(|n| n.registry().eventual().len() == want) {
        if Instant::now() >= deadline {
            for n in &nodes {
                let view: Vec<String> =
                    n.membership().members().iter().map(|m| format!("{}={}", m.info.id, m.state.as_str())).collect();
                eprintln!("{}: {:?} view {:?}", n.id(), n.registry().eventual().summary(), view);
                let text = prometheus::TextEncoder::new()
                    .encode_to_string(&n.metrics().registry().gather())
                    .unwrap_or_default();
                for line in text.lines().filter(|l| l.starts_with("cohort_registry") && !l.ends_with(" 0")) {
                    eprintln!("  {line}");
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {:?}",
            nodes.iter().map(|n| n.registry().eventual().len()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converged = start.elapsed();
    let after_raw = rss_bytes();
    // Let the last anti-entropy round finish, then hand freed memory back to the OS, so what
    // remains is what the registry keeps (the frames and shard copies of the exchanges are gone).
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let after = rss_bytes();
    let live_after = LIVE.load(Ordering::Relaxed);
    let copies = (want * nodes.len()) as f64;
    let per_name = after.saturating_sub(before) as f64 / copies;
    let raw_per_name = after_raw.saturating_sub(before) as f64 / copies;
    let heap_per_name = live_after.saturating_sub(live_before) as f64 / copies;
    for node in nodes {
        node.shutdown().await;
    }

    println!("| measurement | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!(
        "{want} names across 5 nodes: all registered after {registered:?}, converged on every node after {converged:?}"
    );
    println!(
        "heap held: +{} MiB for {want} names on 5 nodes = {heap_per_name:.0} bytes per name per node",
        live_after.saturating_sub(live_before) / (1024 * 1024)
    );
    println!(
        "resident memory after malloc_trim: +{} MiB for {want} names on 5 nodes = {per_name:.0} bytes per name per node",
        after.saturating_sub(before) / (1024 * 1024)
    );
    println!(
        "resident memory at convergence (freed exchange buffers included): {raw_per_name:.0} bytes per name per node"
    );
}
