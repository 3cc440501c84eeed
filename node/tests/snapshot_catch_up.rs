//! A follower whose raft data was wiped catches up by a chunked snapshot (SPEC 7): "snapshots of
//! any size up to the tier's name limit are transferred in bounded chunks".
//!
//! Three nodes run in this test process (durable raft storage, real UDP gossip and TCP transport
//! on 127.0.0.1) and register N consistent names through the registry API, many in flight. One
//! follower is stopped, its data dir deleted, and it comes back as a `cohort node` child process
//! of the same name (a new incarnation, so a new raft id with an empty log): the leader's log is
//! compacted far past its start, so the only way in is the registry snapshot, which travels in
//! chunks of `raft.snapshot_chunk_bytes`. The test waits until the new process has applied
//! everything that was committed, checks the chunk and transfer counters on both sides and the
//! tokens of sampled names at `Bounded` freshness, and prints the catch-up time and the child's
//! peak resident memory (`VmHWM`).
//!
//! `the_200k_name_registry_catches_up_by_chunked_snapshot` is the SPEC-sized run, `#[ignore]`d
//! because it takes minutes in a debug build; its figures are in docs/BENCHMARKS.md
//! ("Snapshot catch-up") with the command.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::actors::Pid;
use cohort::config::RaftStorage;
use cohort::{Config, Node};
use common::{Proc, as_strs, field, get, metric_sum, wait_for};
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

/// Elections, the learner step and the transfer itself, on 2 shared cores in a debug build.
const WITHIN: Duration = Duration::from_secs(180);

/// Registrations in flight while filling the registry (the consistent benchmark's window).
const IN_FLIGHT: usize = 1_024;

fn config(name: &str, dir: &Path, secret: &Path, seeds: &[&Node], chunk: usize) -> Config {
    let mut c = Config {
        name: name.into(),
        data_dir: dir.join(name),
        cluster_secret_file: Some(secret.to_path_buf()),
        seeds: seeds.iter().map(|n| n.addrs().gossip.to_string()).collect(),
        ..Config::default()
    };
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.gossip.addr = "127.0.0.1:0".parse().unwrap();
    c.internode.addr = "127.0.0.1:0".parse().unwrap();
    c.raft.storage = RaftStorage::Durable;
    c.raft.snapshot_chunk_bytes = chunk;
    c.validate().unwrap();
    c
}

fn leader_of(nodes: &[Node]) -> Option<String> {
    nodes.iter().find_map(|n| n.registry().consistent()?.raft_status().leader)
}

/// The value of one exact series (`name{labels}`) in a Prometheus exposition.
fn series(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Peak and current resident memory of process `pid`, in KiB (`/proc/<pid>/status`).
fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (value("VmHWM:"), value("VmRSS:"))
}

async fn register_many(node: &Node, names: usize) -> Pid {
    let (owner, _) = node.spawn(Idle, ()).await.expect("spawn the owner");
    let pid = owner.clone();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::with_capacity(names);
    for i in 0..names {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let registry = node.registry().clone();
        let pid = pid.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("catch-up-{i:06}");
            // A write may time out under load (its id makes the retry safe): try a few times.
            let mut last = None;
            for _ in 0..5 {
                match registry.register_consistent_pid(&name, &pid).await {
                    Ok(token) => {
                        drop(permit);
                        return token;
                    }
                    Err(e) => last = Some(e),
                }
            }
            panic!("{name} not registered: {last:?}");
        }));
    }
    for task in tasks {
        task.await.expect("register task");
    }
    owner
}

struct Figures {
    names: usize,
    chunk_bytes: usize,
    fill: Duration,
    catch_up: Duration,
    chunks: f64,
    rss_at_start_kib: u64,
    peak_rss_kib: u64,
    rss_after_kib: u64,
}

async fn catch_up_scenario(names: usize, chunk: usize) -> Figures {
    let dir = std::env::temp_dir().join(format!("cohort-snapshot-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret: PathBuf = dir.join("secret");
    common::write_test_key(&secret);
    let s0 = Node::start(config("s0", &dir, &secret, &[], chunk)).await.unwrap();
    let s1 = Node::start(config("s1", &dir, &secret, &[&s0], chunk)).await.unwrap();
    let s2 = Node::start(config("s2", &dir, &secret, &[&s0], chunk)).await.unwrap();
    let mut nodes = vec![s0, s1, s2];
    wait_for(WITHIN, "a leader and 3 voters", || {
        let ok = nodes.iter().all(|n| {
            n.registry().consistent().is_some_and(|c| {
                let s = c.raft_status();
                s.leader.is_some() && s.voters.len() == 3 && s.learners.is_empty()
            })
        });
        async move { ok.then_some(()) }
    })
    .await;
    let leader_name = leader_of(&nodes).expect("a leader");
    let leader = nodes.iter().position(|n| n.id().name == leader_name).unwrap();

    let start = Instant::now();
    register_many(&nodes[leader], names).await;
    let fill = start.elapsed();
    eprintln!("{names} names registered in {fill:?}");

    // Stop a follower that is not the bootstrap node (s0 would bootstrap a new group on a clean
    // store), and delete its data dir: it comes back with nothing.
    let wiped = (1..3).find(|i| *i != leader).unwrap();
    let wiped_name = nodes[wiped].id().name.clone();
    let seed = nodes[leader].addrs().gossip.to_string();
    let stopped = nodes.remove(wiped);
    let wiped_dir = stopped.config().data_dir.clone();
    stopped.shutdown().await;
    std::fs::remove_dir_all(&wiped_dir).unwrap();
    let leader = nodes.iter().position(|n| n.id().name == leader_name).unwrap();
    let target = nodes[leader].registry().consistent().unwrap().raft_status().commit_index;

    let config_file = dir.join(format!("{wiped_name}.toml"));
    std::fs::write(&config_file, format!("[raft]\nstorage = \"durable\"\nsnapshot_chunk_bytes = {chunk}\n")).unwrap();
    let mut args = common::node_args_in(&wiped_name, &wiped_dir);
    args.extend([
        "--cluster-secret-file".into(),
        secret.display().to_string(),
        "--seeds".into(),
        seed,
        "--config".into(),
        config_file.display().to_string(),
        "--log-filter".into(),
        "warn".into(),
    ]);
    let restarted_at = Instant::now();
    let child = Proc::spawn(&as_strs(&args));
    let line = child.wait_stdout("cohort node listening", Duration::from_secs(30)).await;
    let url = field(&line, "http").expect("announce has http=");
    // Before the leader has added it as a learner (a hello and a 1 s debounce away): its baseline.
    let (_, rss_at_start_kib) = memory_kib(child.pid());

    // Caught up: everything committed before the restart is applied, and came by snapshot.
    let last = format!("catch-up-{:06}", names - 1);
    wait_for(WITHIN, &format!("{wiped_name} applied index {target} by snapshot"), || {
        let url = url.clone();
        let last = last.clone();
        async move {
            let m = get(&url, "/metrics").await.body;
            let installed = series(&m, "cohort_raft_snapshots_total{kind=\"installed\"}");
            let applied = metric_sum(&m, "cohort_raft_applied_index");
            if installed < 1.0 || applied < target as f64 {
                return None;
            }
            let a = get(&url, &format!("/admin/registry/lookup/{last}?tier=consistent&freshness=bounded")).await;
            (a.status == 200).then_some(())
        }
    })
    .await;
    let catch_up = restarted_at.elapsed();
    let (peak_rss_kib, rss_after_kib) = memory_kib(child.pid());

    // Both sides counted the chunks; the transfer completed and was reported to raft.
    let m = get(&url, "/metrics").await.body;
    let chunks = series(&m, "cohort_raft_snapshot_chunks_received_total");
    assert!(chunks >= 2.0, "the snapshot came in chunks: {chunks}");
    assert!(series(&m, "cohort_raft_snapshot_receives_total{result=\"completed\"}") >= 1.0);
    let leader_metrics = get(&format!("http://{}", nodes[leader].addrs().http), "/metrics").await.body;
    assert!(series(&leader_metrics, "cohort_raft_snapshot_chunks_sent_total") >= chunks);
    assert!(series(&leader_metrics, "cohort_raft_snapshot_transfers_total{result=\"completed\"}") >= 1.0);
    common::promtool_check(&m);

    // Sampled names are served at Bounded freshness with the leader's fencing tokens.
    let tier = nodes[leader].registry().consistent().unwrap().clone();
    for i in (0..names).step_by((names / 50).max(1)).chain([names - 1]) {
        let name = format!("catch-up-{i:06}");
        let expected = tier.lookup(&name).expect("registered on the leader");
        let a = get(&url, &format!("/admin/registry/lookup/{name}?tier=consistent&freshness=bounded")).await;
        assert_eq!(a.status, 200, "{name}: {}", a.body);
        let j = a.json();
        assert_eq!(j["fence_token"].as_u64(), Some(expected.fence_token), "{name}: {j}");
        assert_eq!(j["witness"]["served_freshness"], "bounded", "{j}");
        assert_eq!(j["pid"].as_str(), Some(expected.pid.to_string().as_str()), "{j}");
    }
    let figures =
        Figures { names, chunk_bytes: chunk, fill, catch_up, chunks, rss_at_start_kib, peak_rss_kib, rss_after_kib };
    eprintln!(
        "snapshot catch-up: {} names, {} chunks of {} bytes, filled in {:?}, caught up in {:?} after the restart; \
         restarted node RSS {} KiB at start, peak {} KiB (VmHWM), {} KiB after",
        figures.names,
        figures.chunks,
        figures.chunk_bytes,
        figures.fill,
        figures.catch_up,
        figures.rss_at_start_kib,
        figures.peak_rss_kib,
        figures.rss_after_kib
    );
    drop(child);
    for node in nodes {
        node.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_catches_up_by_chunked_snapshot_and_serves_bounded_reads() {
    // 30k names of ~45 snapshot bytes each are about 1.4 MB: with 64 KiB chunks, two dozen chunks
    // and several windows, in well under a minute of a debug build.
    let figures = catch_up_scenario(env_or("SNAPSHOT_NAMES", 30_000), env_or("SNAPSHOT_CHUNK_BYTES", 64 * 1024)).await;
    assert!(figures.chunks >= 16.0, "{} chunks", figures.chunks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "SPEC-sized: minutes in a debug build; run with --release (docs/BENCHMARKS.md)"]
async fn the_200k_name_registry_catches_up_by_chunked_snapshot() {
    let figures =
        catch_up_scenario(200_000, cohort::registry::consistent::snapshot_transfer::SNAPSHOT_CHUNK_BYTES).await;
    assert!(figures.chunks >= 2.0);
}
