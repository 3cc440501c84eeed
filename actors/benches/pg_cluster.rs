//! Cross-node pg benchmarks: join/leave propagation latency and broadcast throughput on 2 and 3
//! nodes, in the shapes of the Erlang/OTP 25 anchor (`shared/anchors/erlang/src/anchor_dist.erl`)
//! so the figures compare one to one.
//!
//! Run: `cargo bench -p cohort-actors --bench pg_cluster` (about 15 s after the build; prints a Markdown table).
//!
//! Setup: every node runs in this one OS process on its own tokio runtime with ONE worker thread
//! (as if each were a machine; the VM has 2 cores, so 2 or 3 node threads share them, as the
//! Erlang anchor's 2 or 3 BEAM VMs did), with a real internode transport on 127.0.0.1, a real
//! process table ([`Processes`]) and a [`PgService`]. Nodes are connected by telling each of them
//! the others are up (`member_up`, which also starts the transport links). Clock: `Instant`
//! (CLOCK_MONOTONIC, one clock for every thread of the process).
//!
//! What is timed (mirrors the anchor):
//! - propagation via monitor: a watcher task on each other node holds `Scope::monitor(group)`;
//!   on each event it reads `get_members` on its own node, checks the change is visible, takes its
//!   timestamp and acks to the coordinator. Latency = that timestamp minus the time just before
//!   `join`/`leave` on node a (a task on a's runtime, joining a hosted idle process). Joins and
//!   leaves alternate; the next one starts when every peer acked. Warm-up first.
//! - propagation via busy-poll (2 nodes): a poller spins on `get_members` (yielding between polls)
//!   until the pid appears/disappears; armed before each join/leave, as in the anchor. Done twice:
//!   as a task on b's one-worker runtime (the spinner shares b's only thread with b's transport and
//!   pg tasks) and as a dedicated OS thread (like the anchor's spinner, which had its own scheduler
//!   on b).
//! - broadcast: 100 counting processes spread round-robin (34 on a, 33 on b, 33 on c) join one
//!   group; a sender task on a calls `Scope::broadcast` N times; every member counts to N and
//!   records its last receive time. Rate = 100·N / (last delivery − start). Flow control: the
//!   sender keeps at most [`BROADCAST_WINDOW`] rounds ahead of the slowest node's members (the
//!   pg class queue drops the newest frame when full, where Erlang's `!` suspends the sender on a
//!   busy distribution port); drops are counted and reported (they must be 0).
//! - plain message round trip a→b→a between two processes (`send_to` by pid), as reference.
//! - optional: full sync of a scope with 100,000 groups on connect.
//!
//! Noise: on the shared 2-vCPU VM the latencies move between runs by up to 5x (p50 of the 2-node
//! monitor path seen from 9 µs to 52 µs): they are dominated by waking a parked node thread, which
//! costs little when the scheduler puts it on a busy vCPU and tens of µs when it must wake a halted
//! one. Run it several times and report the spread, not one run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_actors::pg::{EventKind, Group, PgConfig, PgService, Scope};
use cohort_actors::process::{ProcessConfig, Processes};
use cohort_actors::{ExitSignal, Pid};
use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::net::transport::{Transport, TransportConfig};
use cohort_cluster::secure::Keyring;
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, NodeId};
use prometheus::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, mpsc};

/// Timed join+leave pairs per propagation measurement (each pair gives one join and one leave
/// sample), after [`WARMUP_PAIRS`] untimed ones.
const PAIRS: usize = 5_000;
const WARMUP_PAIRS: usize = 300;
/// Timed round trips of the plain-message reference.
const PINGS: usize = 5_000;
/// Broadcast members, and repetitions per payload (fresh members each time, as in the anchor).
const MEMBERS: usize = 100;
const BROADCAST_REPS: usize = 3;
/// Rounds per broadcast run (the anchor used 10,000 and 2,000: about 1.3 s and 0.9 s for it; ours
/// are larger so that each run lasts about a second here too).
const ROUNDS_SMALL: u64 = 50_000;
const ROUNDS_1K: u64 = 10_000;
/// Most broadcast rounds the sender is ahead of the slowest node's members (below the pg queue's
/// 2048 frames and the receiver's 2048-frame inbound channel, so nothing is dropped).
const BROADCAST_WINDOW: u64 = 1_024;
/// The optional sync-on-connect measurement: processes × groups each (one member per group).
const SYNC_PROCESSES: u64 = 1_000;
const SYNC_GROUPS_PER_PROCESS: u64 = 100;
/// Bound on every wait of the bench.
const DEADLINE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------ processes

/// What a benchmark process receives (rmp-serde encoded for broadcasts and remote sends).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    /// The anchor's small payload (`{m, small}`).
    Small,
    /// The anchor's 1 KiB binary (a string: rmp-serde decodes it with one copy).
    Bin(String),
    /// Echo request: reply `Pong` to this pid.
    Ping(Pid),
    Pong,
}

/// Shared by the members of one broadcast run.
struct BroadcastRun {
    rounds: u64,
    members: usize,
    /// Deliveries per node index.
    delivered: [AtomicU64; 3],
    /// Members that got all `rounds` messages, and the latest of their last receive times.
    done: AtomicUsize,
    last: Mutex<Option<Instant>>,
    /// Woken as members progress (the sender's window) and when the last member is done.
    progress: Notify,
    all_done: Notify,
}

impl BroadcastRun {
    fn new(rounds: u64, members: usize) -> Self {
        Self {
            rounds,
            members,
            delivered: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            done: AtomicUsize::new(0),
            last: Mutex::new(None),
            progress: Notify::new(),
            all_done: Notify::new(),
        }
    }
}

/// A broadcast member: counts messages (the anchor's `bcast_recv`).
struct Counter;

struct CounterState {
    count: u64,
    node: usize,
    run: Arc<BroadcastRun>,
}

impl Actor for Counter {
    type Msg = Msg;
    type State = CounterState;
    type Arguments = (usize, Arc<BroadcastRun>);

    async fn pre_start(
        &self,
        _: ActorRef<Msg>,
        (node, run): Self::Arguments,
    ) -> Result<CounterState, ActorProcessingErr> {
        Ok(CounterState { count: 0, node, run })
    }

    async fn handle(&self, _: ActorRef<Msg>, _: Msg, state: &mut CounterState) -> Result<(), ActorProcessingErr> {
        state.count += 1;
        let run = &state.run;
        run.delivered[state.node].fetch_add(1, Ordering::Relaxed);
        if state.count.is_multiple_of(32) {
            run.progress.notify_one();
        }
        if state.count == run.rounds {
            let now = Instant::now();
            {
                let mut last = run.last.lock().unwrap();
                *last = Some(last.map_or(now, |l| l.max(now)));
            }
            if run.done.fetch_add(1, Ordering::AcqRel) + 1 == run.members {
                run.all_done.notify_one();
            }
        }
        Ok(())
    }
}

/// The coordinator's hosted process (it joins groups) and the ping reference's two ends: answers
/// `Ping(from)` with `Pong`, forwards each `Pong`'s arrival time to `pongs`.
struct Endpoint;

struct EndpointArgs {
    processes: Processes,
    pongs: Option<mpsc::UnboundedSender<Instant>>,
}

impl Actor for Endpoint {
    type Msg = Msg;
    type State = EndpointArgs;
    type Arguments = EndpointArgs;

    async fn pre_start(&self, _: ActorRef<Msg>, args: EndpointArgs) -> Result<EndpointArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(&self, _: ActorRef<Msg>, msg: Msg, state: &mut EndpointArgs) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Ping(from) => {
                let _ = state.processes.send_to(&from, Msg::Pong);
            }
            Msg::Pong => {
                if let Some(pongs) = &state.pongs {
                    let _ = pongs.send(Instant::now());
                }
            }
            Msg::Small | Msg::Bin(_) => {}
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------- nodes

struct Node {
    index: usize,
    rt: Runtime,
    transport: Transport,
    processes: Processes,
    pg: PgService,
    scope: Scope,
    registry: Registry,
}

impl Node {
    fn start(index: usize, name: &str, pg_config: PgConfig) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("node-{name}"))
            .enable_all()
            .build()
            .expect("runtime");
        let registry = Registry::new();
        let id = NodeId::new(name, 1);
        let (transport, processes, pg) = rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let secret = ClusterSecret::from_bytes(&[7; 32]).expect("secret");
            let transport_config = TransportConfig {
                connect_timeout: Duration::from_secs(1),
                handshake_timeout: Duration::from_millis(500),
                reconnect_backoff_min: Duration::from_millis(10),
                reconnect_backoff_max: Duration::from_millis(100),
                shutdown_grace: Duration::from_millis(100),
                ..TransportConfig::default()
            };
            let transport = Transport::start(
                id.clone(),
                Keyring::new("pg-bench", &secret, None),
                listener,
                FaultInjector::disabled(),
                transport_config,
                &registry,
            )
            .await
            .expect("transport");
            let processes = Processes::start(id.clone(), Some(transport.clone()), ProcessConfig::default(), &registry)
                .await
                .expect("processes");
            let pg = PgService::start(Arc::new(processes.clone()), Some(transport.clone()), pg_config, &registry)
                .expect("pg");
            (transport, processes, pg)
        });
        let scope = pg.scope("default").expect("scope");
        Node { index, rt, transport, processes, pg, scope, registry }
    }

    fn member(&self) -> MemberInfo {
        let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
        MemberInfo {
            id: self.transport.local().clone(),
            addrs: MemberAddrs { gossip: unused, internode: self.transport.local_addr(), http: unused },
            raft_eligible: false,
            failure_domain: String::new(),
        }
    }

    fn spawn<A>(&self, actor: A, args: A::Arguments) -> Pid
    where
        A: Actor<Msg = Msg>,
    {
        self.rt.block_on(self.processes.spawn(actor, args)).expect("spawn").0
    }

    /// Sum of a counter/gauge family in this node's registry, over the label values given.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = self.registry.gather();
        let Some(family) = families.iter().find(|f| f.name() == name) else { return 0.0 };
        family
            .get_metric()
            .iter()
            .filter(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }

    fn stop(self) {
        let Node { rt, transport, processes, pg, .. } = self;
        rt.block_on(async {
            pg.shutdown().await;
            processes.shutdown().await;
            transport.shutdown().await;
        });
        rt.shutdown_timeout(Duration::from_secs(2));
    }
}

fn group(name: &str) -> Group {
    Group::new(name).expect("group name")
}

/// Polls `condition` (from the main thread) until it holds; panics after [`DEADLINE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `names.len()` nodes, each told the others are up; returns once a join on every node is visible
/// on every node (transport links, discover and sync done everywhere).
fn cluster(names: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> =
        names.iter().enumerate().map(|(i, name)| Node::start(i, name, PgConfig::default())).collect();
    for a in &nodes {
        for b in &nodes {
            if a.index != b.index {
                a.pg.member_up(&b.member());
            }
        }
    }
    let ready = group("ready");
    let pids: Vec<(usize, Pid)> = nodes
        .iter()
        .map(|n| (n.index, n.spawn(Endpoint, EndpointArgs { processes: n.processes.clone(), pongs: None })))
        .collect();
    for (i, pid) in &pids {
        nodes[*i].scope.join(&ready, std::slice::from_ref(pid)).expect("join");
    }
    wait_until("every node sees every node's member", || {
        nodes.iter().all(|n| n.scope.get_members("ready").len() == nodes.len())
    });
    for (i, pid) in &pids {
        nodes[*i].processes.exit(pid, ExitSignal::Normal).expect("exit");
    }
    wait_until("the ready group is gone everywhere", || nodes.iter().all(|n| n.scope.get_members("ready").is_empty()));
    nodes
}

fn stop_all(nodes: Vec<Node>) {
    for node in nodes {
        node.stop();
    }
}

// ----------------------------------------------------------------------------------------- stats

/// Percentiles of one sample set, in microseconds.
#[derive(Clone, Copy, Debug)]
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    min: f64,
    n: usize,
}

fn summary(samples: &[Duration]) -> Summary {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
    Summary { p50: at(0.50), p90: at(0.90), p99: at(0.99), min: us[0], n: us.len() }
}

/// One line of the final table.
struct Row {
    what: String,
    ours: String,
    erlang: Option<f64>,
    /// Our figure compared with Erlang's: the p50 for latencies, the rate for throughput.
    ours_value: f64,
    unit: &'static str,
}

impl Row {
    fn latency(what: &str, s: Summary, erlang: Option<f64>) -> Row {
        Row {
            what: what.to_owned(),
            ours: format!("p50 {:.1} / p90 {:.1} / p99 {:.1} (min {:.1}, n={})", s.p50, s.p90, s.p99, s.min, s.n),
            erlang,
            ours_value: s.p50,
            unit: "us",
        }
    }
}

// ------------------------------------------------------------------------------------ round trip

/// Plain message round trip a→b→a between two processes (`send_to` by pid; the anchor's `ping`).
fn ping(a: &Node, b: &Node) -> Summary {
    let (pongs, mut arrivals) = mpsc::unbounded_channel();
    let me = a.spawn(Endpoint, EndpointArgs { processes: a.processes.clone(), pongs: Some(pongs) });
    let echo = b.spawn(Endpoint, EndpointArgs { processes: b.processes.clone(), pongs: None });
    let processes = a.processes.clone();
    let (me2, echo2) = (me.clone(), echo.clone());
    let samples =
        a.rt.block_on(a.rt.spawn(async move {
            let mut samples = Vec::with_capacity(PINGS);
            for i in 0..WARMUP_PAIRS + PINGS {
                let t0 = Instant::now();
                processes.send_to(&echo2, Msg::Ping(me2.clone())).expect("ping");
                let t1 = tokio::time::timeout(DEADLINE, arrivals.recv()).await.expect("pong timeout").expect("pong");
                if i >= WARMUP_PAIRS {
                    samples.push(t1 - t0);
                }
            }
            samples
        }))
        .expect("ping task");
    a.processes.exit(&me, ExitSignal::Normal).expect("exit");
    b.processes.exit(&echo, ExitSignal::Normal).expect("exit");
    summary(&samples)
}

// ----------------------------------------------------------------------------------- propagation

/// One watcher's report: the anchor's `{seen, Node, Kind, T, Ok}`.
struct Seen {
    peer: usize,
    kind: EventKind,
    at: Instant,
    ok: bool,
}

struct PropResult {
    /// Per peer (in `nodes[1..]` order): join and leave latencies.
    join_to: Vec<Summary>,
    leave_to: Vec<Summary>,
    /// Until every peer saw it.
    join_all: Summary,
    leave_all: Summary,
    /// Until every peer's ack was back at the coordinator.
    join_roundtrip: Summary,
}

/// The anchor's `prop_monitor`: watchers on every other node, alternate join/leave on `nodes[0]`.
fn prop_monitor(nodes: &[Node], name: &str) -> PropResult {
    let (a, peers) = (&nodes[0], &nodes[1..]);
    let g = group(name);
    let (acks, mut seen) = mpsc::unbounded_channel::<Seen>();
    let mut watchers = Vec::new();
    for (p, peer) in peers.iter().enumerate() {
        let mut monitor = peer.rt.block_on(peer.scope.monitor(&g, None)).expect("monitor");
        let (scope, g, acks) = (peer.scope.clone(), g.clone(), acks.clone());
        watchers.push(peer.rt.spawn(async move {
            while let Some(event) = monitor.recv().await {
                let members = scope.get_members(g.as_str());
                let at = Instant::now();
                let ok = match event.kind {
                    EventKind::Join => event.pids.iter().all(|pid| members.contains(pid)),
                    EventKind::Leave => !event.pids.iter().any(|pid| members.contains(pid)),
                };
                if acks.send(Seen { peer: p, kind: event.kind, at, ok }).is_err() {
                    return;
                }
            }
        }));
    }
    drop(acks);
    let me = a.spawn(Endpoint, EndpointArgs { processes: a.processes.clone(), pongs: None });
    let (scope, pid, n) = (a.scope.clone(), me.clone(), peers.len());
    let (joins, leaves, rts) =
        a.rt.block_on(a.rt.spawn(async move {
            let (mut joins, mut leaves, mut rts) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..WARMUP_PAIRS + PAIRS {
                for kind in [EventKind::Join, EventKind::Leave] {
                    let t0 = Instant::now();
                    match kind {
                        EventKind::Join => scope.join(&g, std::slice::from_ref(&pid)).expect("join"),
                        EventKind::Leave => scope.leave(&g, std::slice::from_ref(&pid)).expect("leave"),
                    }
                    let mut per_peer = vec![Duration::ZERO; n];
                    for _ in 0..n {
                        let s = tokio::time::timeout(DEADLINE, seen.recv()).await.expect("ack timeout").expect("ack");
                        assert!(s.ok && s.kind == kind, "watcher saw a wrong state");
                        per_peer[s.peer] = s.at - t0;
                    }
                    let roundtrip = t0.elapsed();
                    if i >= WARMUP_PAIRS {
                        match kind {
                            EventKind::Join => {
                                joins.push(per_peer);
                                rts.push(roundtrip);
                            }
                            EventKind::Leave => leaves.push(per_peer),
                        }
                    }
                }
            }
            (joins, leaves, rts)
        }))
        .expect("coordinator");
    for watcher in watchers {
        watcher.abort();
    }
    a.processes.exit(&me, ExitSignal::Normal).expect("exit");
    let column = |rows: &[Vec<Duration>], p: usize| summary(&rows.iter().map(|r| r[p]).collect::<Vec<_>>());
    let max = |rows: &[Vec<Duration>]| summary(&rows.iter().map(|r| *r.iter().max().unwrap()).collect::<Vec<_>>());
    PropResult {
        join_to: (0..n).map(|p| column(&joins, p)).collect(),
        leave_to: (0..n).map(|p| column(&leaves, p)).collect(),
        join_all: max(&joins),
        leave_all: max(&leaves),
        join_roundtrip: summary(&rts),
    }
}

/// How the busy-poller runs on node b.
#[derive(Clone, Copy)]
enum Poller {
    /// A task on b's one-worker runtime, `yield_now` between polls.
    Task,
    /// A dedicated OS thread, `std::thread::yield_now` between polls.
    Thread,
}

/// The anchor's `prop_poll`: b spins on `get_members` until the pid appears / disappears.
fn prop_poll(a: &Node, b: &Node, poller: Poller, name: &str) -> (Summary, Summary) {
    let g = group(name);
    let me = a.spawn(Endpoint, EndpointArgs { processes: a.processes.clone(), pongs: None });
    let (arm, mut armed_rx) = mpsc::unbounded_channel::<bool>();
    let (armed, mut armed_ack) = mpsc::unbounded_channel::<()>();
    let (polled, mut polled_rx) = mpsc::unbounded_channel::<Instant>();
    let (scope_b, g_b, pid_b) = (b.scope.clone(), g.clone(), me.clone());
    let present = move || scope_b.get_members(g_b.as_str()).contains(&pid_b);
    let mut thread = None;
    match poller {
        Poller::Task => {
            b.rt.spawn(async move {
                while let Some(want) = armed_rx.recv().await {
                    let _ = armed.send(());
                    while present() != want {
                        tokio::task::yield_now().await;
                    }
                    let _ = polled.send(Instant::now());
                }
            });
        }
        Poller::Thread => {
            thread = Some(std::thread::spawn(move || {
                while let Some(want) = armed_rx.blocking_recv() {
                    let _ = armed.send(());
                    while present() != want {
                        std::thread::yield_now();
                    }
                    let _ = polled.send(Instant::now());
                }
            }));
        }
    }
    let (scope, pid) = (a.scope.clone(), me.clone());
    let (joins, leaves) =
        a.rt.block_on(a.rt.spawn(async move {
            let (mut joins, mut leaves) = (Vec::new(), Vec::new());
            for i in 0..WARMUP_PAIRS + PAIRS {
                for want in [true, false] {
                    arm.send(want).expect("arm");
                    armed_ack.recv().await.expect("armed");
                    let t0 = Instant::now();
                    if want {
                        scope.join(&g, std::slice::from_ref(&pid)).expect("join");
                    } else {
                        scope.leave(&g, std::slice::from_ref(&pid)).expect("leave");
                    }
                    let at =
                        tokio::time::timeout(DEADLINE, polled_rx.recv()).await.expect("poll timeout").expect("poll");
                    if i >= WARMUP_PAIRS {
                        if want { joins.push(at - t0) } else { leaves.push(at - t0) }
                    }
                }
            }
            (joins, leaves)
        }))
        .expect("coordinator");
    // `arm` was moved into the coordinator and is dropped: the poller's loop ends.
    if let Some(thread) = thread {
        thread.join().expect("poller thread");
    }
    a.processes.exit(&me, ExitSignal::Normal).expect("exit");
    (summary(&joins), summary(&leaves))
}

// ------------------------------------------------------------------------------------- broadcast

struct BroadcastResult {
    msgs_per_s: f64,
    all_delivered_s: f64,
    sender_loop_s: f64,
    /// Refusals reported by `broadcast` plus frames dropped anywhere (transport, delivery).
    lost: f64,
}

/// The anchor's `bcast`: fresh members spread round-robin over `nodes`, `rounds` broadcasts from a
/// sender task on `nodes[0]`.
fn broadcast(nodes: &[Node], rounds: u64, message: &Msg) -> BroadcastResult {
    let run = Arc::new(BroadcastRun::new(rounds, MEMBERS));
    let g = group("bcast");
    let mut pids = Vec::new();
    let mut per_node = vec![0u64; nodes.len()];
    for i in 0..MEMBERS {
        let node = &nodes[i % nodes.len()];
        let pid = node.spawn(Counter, (node.index, Arc::clone(&run)));
        node.scope.join(&g, std::slice::from_ref(&pid)).expect("join");
        per_node[node.index] += 1;
        pids.push((node.index, pid));
    }
    wait_until("every node sees the 100 members", || {
        nodes.iter().all(|n| n.scope.get_members("bcast").len() == MEMBERS)
    });
    let lost_before = lost(nodes);
    let payload = Bytes::from(rmp_serde::to_vec(message).expect("encode"));
    let hosts: Vec<(usize, u64)> = (0..nodes.len()).map(|i| (i, per_node[i])).collect();
    let (scope, sender_run) = (nodes[0].scope.clone(), Arc::clone(&run));
    let a = &nodes[0];
    let (t0, sent, refused) =
        a.rt.block_on(a.rt.spawn(async move {
            let run = sender_run;
            let mut refused = 0;
            let t0 = Instant::now();
            for round in 0..rounds {
                loop {
                    let slowest = hosts
                        .iter()
                        .map(|&(i, members)| run.delivered[i].load(Ordering::Acquire) / members)
                        .min()
                        .unwrap_or(round);
                    if round.saturating_sub(slowest) < BROADCAST_WINDOW {
                        break;
                    }
                    run.progress.notified().await;
                }
                refused += scope.broadcast("bcast", payload.clone()).expect("broadcast").refused_total;
            }
            (t0, Instant::now(), refused)
        }))
        .expect("sender");
    let finished = a.rt.block_on(async { tokio::time::timeout(DEADLINE, run.all_done.notified()).await });
    let delivered: u64 = run.delivered.iter().map(|d| d.load(Ordering::Acquire)).sum();
    assert!(finished.is_ok(), "not every message arrived: {delivered} of {}", rounds * MEMBERS as u64);
    let last = run.last.lock().unwrap().expect("last delivery");
    for (i, pid) in &pids {
        nodes[*i].processes.exit(pid, ExitSignal::Normal).expect("exit");
    }
    wait_until("the members are gone everywhere", || nodes.iter().all(|n| n.scope.get_members("bcast").is_empty()));
    let all = (last - t0).as_secs_f64();
    BroadcastResult {
        msgs_per_s: (rounds * MEMBERS as u64) as f64 / all,
        all_delivered_s: all,
        sender_loop_s: (sent - t0).as_secs_f64(),
        lost: refused as f64 + lost(nodes) - lost_before,
    }
}

/// Frames or deliveries dropped on any node so far.
fn lost(nodes: &[Node]) -> f64 {
    nodes
        .iter()
        .map(|n| {
            n.metric("cohort_internode_dropped_total", &[])
                + ["not_hosted", "mailbox_full", "undecodable", "remote_refused"]
                    .iter()
                    .map(|r| n.metric("cohort_pg_broadcast_deliveries_total", &[("result", r)]))
                    .sum::<f64>()
        })
        .sum()
}

// -------------------------------------------------------------------------------- sync on connect

/// Node a holds SYNC_PROCESSES × SYNC_GROUPS_PER_PROCESS groups of one local member each; then a
/// and b are told of each other (transport connect + discover + full sync): time until b's scope
/// actor has applied every membership (its `cohort_pg_memberships` gauge, polled every 1 ms).
fn sync_on_connect() -> (Duration, f64) {
    let a = Node::start(0, "sa", PgConfig::default());
    let b = Node::start(1, "sb", PgConfig::default());
    let total = (SYNC_PROCESSES * SYNC_GROUPS_PER_PROCESS) as f64;
    for p in 0..SYNC_PROCESSES {
        let pid = a.spawn(Endpoint, EndpointArgs { processes: a.processes.clone(), pongs: None });
        for j in 0..SYNC_GROUPS_PER_PROCESS {
            a.scope.join(&group(&format!("sync-{p}-{j}")), std::slice::from_ref(&pid)).expect("join");
        }
        if p % 100 == 99 {
            // Let a's actor drain its outbox (bounded) before more joins.
            let want = ((p + 1) * SYNC_GROUPS_PER_PROCESS) as f64;
            wait_until("a drained its joins", || a.metric("cohort_pg_memberships", &[]) >= want);
        }
    }
    let t0 = Instant::now();
    a.pg.member_up(&b.member());
    b.pg.member_up(&a.member());
    wait_until("b has every membership", || b.metric("cohort_pg_memberships", &[]) >= total);
    let took = t0.elapsed();
    // Let the exchange finish, then count a's full syncs to b (connect and discover replies).
    std::thread::sleep(Duration::from_millis(500));
    let syncs = a.metric("cohort_pg_syncs_total", &[("reason", "connect")]);
    a.stop();
    b.stop();
    (took, syncs)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------------------------------ main

fn main() {
    let started = Instant::now();
    let load_start = loadavg();
    let mut rows: Vec<Row> = Vec::new();

    eprintln!("2 nodes ...");
    let nodes = cluster(&["a", "b"]);
    rows.push(Row::latency(
        "2 nodes: plain message round trip a->b->a (reference)",
        ping(&nodes[0], &nodes[1]),
        Some(20.4),
    ));
    let prop = prop_monitor(&nodes, "probe2");
    rows.push(Row::latency(
        "2 nodes: join on a -> b notified (monitor) + get_members shows it",
        prop.join_to[0],
        Some(31.1),
    ));
    rows.push(Row::latency(
        "2 nodes: leave on a -> b notified (monitor) + get_members updated",
        prop.leave_to[0],
        Some(31.1),
    ));
    rows.push(Row::latency("2 nodes: join + b's ack back at a", prop.join_roundtrip, Some(62.7)));
    let (join, leave) = prop_poll(&nodes[0], &nodes[1], Poller::Task, "pprobe-task");
    rows.push(Row::latency(
        "2 nodes: join on a -> visible in get_members on b (b busy-polls, task on b's runtime)",
        join,
        Some(14.7),
    ));
    rows.push(Row::latency("2 nodes: leave on a -> gone from get_members on b (busy-poll, task)", leave, Some(14.1)));
    let (join, leave) = prop_poll(&nodes[0], &nodes[1], Poller::Thread, "pprobe-thread");
    rows.push(Row::latency("2 nodes: join on a -> visible on b (busy-poll, own OS thread)", join, Some(14.7)));
    rows.push(Row::latency("2 nodes: leave on a -> gone on b (busy-poll, own OS thread)", leave, Some(14.1)));
    stop_all(nodes);

    eprintln!("3 nodes ...");
    let nodes = cluster(&["a", "b", "c"]);
    rows.push(Row::latency("3 nodes: plain message round trip a->b->a", ping(&nodes[0], &nodes[1]), Some(21.5)));
    let prop = prop_monitor(&nodes, "probe3");
    rows.push(Row::latency("3 nodes: join on a -> seen on BOTH b and c (monitor)", prop.join_all, Some(55.8)));
    rows.push(Row::latency("3 nodes: leave on a -> gone on BOTH b and c", prop.leave_all, Some(55.2)));
    rows.push(Row::latency("3 nodes: join on a -> seen on b", prop.join_to[0], Some(37.2)));
    rows.push(Row::latency("3 nodes: join on a -> seen on c", prop.join_to[1], Some(39.8)));
    rows.push(Row::latency("3 nodes: leave on a -> gone on b", prop.leave_to[0], None));
    rows.push(Row::latency("3 nodes: leave on a -> gone on c", prop.leave_to[1], None));
    let cases =
        [("small", ROUNDS_SMALL, Msg::Small, 780_654.0), ("bin1k", ROUNDS_1K, Msg::Bin("x".repeat(1024)), 440_009.0)];
    for (label, rounds, message, erlang) in cases {
        let mut results: Vec<BroadcastResult> =
            (0..BROADCAST_REPS).map(|_| broadcast(&nodes, rounds, &message)).collect();
        results.sort_by(|x, y| x.msgs_per_s.total_cmp(&y.msgs_per_s));
        let median = &results[results.len() / 2];
        let lost: f64 = results.iter().map(|r| r.lost).sum();
        let rates: Vec<String> = results.iter().map(|r| format!("{:.0}", r.msgs_per_s)).collect();
        rows.push(Row {
            what: format!(
                "3 nodes: broadcast to 100 members (34/33/33), {rounds} rounds, payload {label}, {BROADCAST_REPS} reps"
            ),
            ours: format!(
                "median {:.0} msgs/s (reps {}; all delivered {:.3} s, sender loop {:.3} s; lost {lost})",
                median.msgs_per_s,
                rates.join(", "),
                median.all_delivered_s,
                median.sender_loop_s
            ),
            erlang: Some(erlang),
            ours_value: median.msgs_per_s,
            unit: "msgs/s",
        });
    }
    stop_all(nodes);

    eprintln!("sync on connect ...");
    let (took, syncs) = sync_on_connect();
    rows.push(Row {
        what: format!(
            "2 nodes: full sync on connect, {} groups x 1 member, until b applied all",
            SYNC_PROCESSES * SYNC_GROUPS_PER_PROCESS
        ),
        ours: format!("{:.1} ms (one sample; a sent {syncs} full syncs to b)", took.as_secs_f64() * 1e3),
        erlang: None,
        ours_value: took.as_secs_f64() * 1e3,
        unit: "ms",
    });

    println!();
    println!("pg across nodes: each node one tokio runtime with 1 worker thread, real transports on 127.0.0.1");
    println!("latencies in us; ratio = ours / Erlang (p50 vs the anchor's median p50; < 1 is faster for latency,");
    println!("> 1 is faster for throughput)");
    println!();
    println!("| measurement | ours | Erlang/OTP 25 | ratio |");
    println!("|---|---|---|---|");
    for row in &rows {
        let (erlang, ratio) = match row.erlang {
            Some(e) => (format!("{e} {}", row.unit), format!("{:.2}", row.ours_value / e)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!("| {} | {} | {} | {} |", row.what, row.ours, erlang, ratio);
    }
    println!();
    println!(
        "bench wall time: {:.1} s; loadavg at start {load_start}, at end {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
