//! Consistent-tier benchmarks (issue 6, SPEC 7/8): register latency on 3 nodes (sequential and with
//! 64 in flight), registrations per second pipelined, and Strong vs Bounded vs BestEffort read
//! latency, with the raft log in memory and durable (redb, one fsync per batched Ready).
//!
//! Run: `cargo bench -p cohort --bench consistent` (prints a Markdown table). `BENCH_PIPELINED=N`
//! changes the pipelined workload (default 20,000 registrations, 1,024 in flight);
//! `BENCH_MODES=memory` (or `durable`) runs one storage mode only.
//!
//! Setup: 3 real `Node`s (membership over UDP, transport over TCP on 127.0.0.1, the raft actor on
//! its own thread per node) in this one OS process, on a tokio runtime with 2 worker threads (the
//! VM has 2 cores; the 3 raft threads share them too). Each mode waits for a leader and 3 voters
//! first. A registration is `Registry::register_consistent_pid` on the raft leader (the
//! "from a follower" row: on a follower, which forwards to the leader): it returns once the entry
//! is committed by a quorum and applied on the calling node. Latency is per call (`Instant`),
//! 2,000 sequential calls, 4,000 calls at 64 in flight. Reads are 2,000 sequential
//! `lookup_consistent` calls of one registered name: Strong on the leader (ReadIndex round to a
//! quorum) and on a follower (the ReadIndex forwarded to the leader, answered from the follower's
//! view once applied), Bounded and BestEffort on a follower (its published view, no round trip). Durable
//! mode writes `data_dir/raft/raft.redb` under the system temp dir (tmpfs or disk: see the
//! machine notes in docs/BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::Node;
use cohort::actors::Pid;
use cohort::config::RaftStorage;
use cohort::registry::consistent::{Freshness, ReadRequest};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Debug, Serialize, Deserialize)]
enum Msg {}

struct Idle;

impl Actor for Idle {
    type Msg = Msg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
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

async fn cluster(storage: RaftStorage) -> Vec<Node> {
    let nodes = cohort_examples::local_cluster_with(&["r0", "r1", "r2"], Duration::from_secs(30), |c| {
        c.raft.storage = storage;
    })
    .await
    .expect("cluster");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.iter().all(|n| {
            n.registry().consistent().is_some_and(|c| {
                let s = c.raft_status();
                s.leader.is_some() && s.voters.len() == 3 && s.learners.is_empty()
            })
        });
        if ready {
            return nodes;
        }
        assert!(Instant::now() < deadline, "no 3-voter raft group");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leader_index(nodes: &[Node]) -> usize {
    let leader = nodes[0].registry().consistent().and_then(|c| c.raft_status().leader).expect("a leader");
    nodes.iter().position(|n| n.id().name == leader).expect("leader is a node")
}

async fn owner(node: &Node) -> Pid {
    node.spawn(Idle, ()).await.expect("spawn").0
}

async fn sequential(node: &Node, prefix: &str, n: usize) -> Summary {
    let pid = owner(node).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        node.registry().register_consistent_pid(&format!("{prefix}-{i}"), &pid).await.expect("register");
        samples.push(start.elapsed());
    }
    summary(samples)
}

/// `n` registrations with `window` in flight; per-call latencies and the total time.
async fn pipelined(node: &Node, prefix: &str, n: usize, window: usize) -> (Summary, Duration) {
    let pid = owner(node).await;
    let permits = Arc::new(Semaphore::new(window));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let registry = node.registry().clone();
        let pid = pid.clone();
        let name = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            registry.register_consistent_pid(&name, &pid).await.expect("register");
            drop(permit);
            t.elapsed()
        }));
    }
    let mut samples = Vec::with_capacity(n);
    for task in tasks {
        samples.push(task.await.expect("task"));
    }
    (summary(samples), start.elapsed())
}

async fn reads(node: &Node, name: &str, freshness: Freshness, n: usize) -> Summary {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        node.registry().lookup_consistent(name, ReadRequest::new(freshness)).await.expect("read");
        samples.push(start.elapsed());
    }
    summary(samples)
}

fn row(what: &str, s: Summary) -> String {
    format!("| {what} | {:?} | {:?} | {:?} |", s.p50, s.p99, s.max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::var("BENCH_PIPELINED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "memory,durable".into());
    for (storage, label) in [(RaftStorage::Memory, "memory"), (RaftStorage::Durable, "durable")] {
        if !modes.split(',').any(|m| m == label) {
            continue;
        }
        let nodes = cluster(storage).await;
        let leader = leader_index(&nodes);
        let follower = (leader + 1) % nodes.len();
        // Warm up connections and the allocator.
        sequential(&nodes[leader], &format!("warm-{label}"), 200).await;
        rows.push(row(
            &format!("register, {label}, sequential, on the leader"),
            sequential(&nodes[leader], &format!("seq-{label}"), 2_000).await,
        ));
        rows.push(row(
            &format!("register, {label}, sequential, from a follower"),
            sequential(&nodes[follower], &format!("fseq-{label}"), 2_000).await,
        ));
        let (s, _) = pipelined(&nodes[leader], &format!("w64-{label}"), 4_000, 64).await;
        rows.push(row(&format!("register, {label}, 64 in flight"), s));
        let (s, took) = pipelined(&nodes[leader], &format!("pipe-{label}"), total, 1_024).await;
        rows.push(row(&format!("register, {label}, 1024 in flight"), s));
        rates.push(format!(
            "{label}: {total} registrations with 1,024 in flight in {took:?} = {:.0} registrations/s",
            total as f64 / took.as_secs_f64()
        ));
        // Reads of one name, visible everywhere.
        let pid = owner(&nodes[leader]).await;
        nodes[leader].registry().register_consistent_pid(&format!("read-{label}"), &pid).await.expect("register");
        let name = format!("read-{label}");
        while nodes[follower].registry().consistent().and_then(|c| c.lookup(&name)).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rows.push(row(
            &format!("read Strong ({label}), on the leader"),
            reads(&nodes[leader], &name, Freshness::Strong, 2_000).await,
        ));
        rows.push(row(
            &format!("read Strong ({label}), on a follower"),
            reads(&nodes[follower], &name, Freshness::Strong, 2_000).await,
        ));
        rows.push(row(
            &format!("read Bounded ({label}), on a follower"),
            reads(&nodes[follower], &name, Freshness::Bounded, 2_000).await,
        ));
        rows.push(row(
            &format!("read BestEffort ({label}), on a follower"),
            reads(&nodes[follower], &name, Freshness::BestEffort, 2_000).await,
        ));
        for node in nodes {
            node.shutdown().await;
        }
    }
    println!("| measurement (3 nodes) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    for rate in rates {
        println!("{rate}");
    }
}
