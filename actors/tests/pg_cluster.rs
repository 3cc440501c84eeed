//! Wiring tests of the pg service and scope actors (SPEC 6.2): 1-3 nodes in one process with real
//! internode transports on 127.0.0.1 (port 0) and a fake process table per node that records
//! deliveries and runs the exit hooks when the test "exits" a pid. Every wait is a bounded poll
//! with a deadline; timing never decides an assertion.

// `[pid.clone()]` reads as "this one pid" in assertions; `slice::from_ref` everywhere would not.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort_actors::pg::wire::{PG_FRAME_KIND, PgFrame, PgMessage};
use cohort_actors::pg::{EventKind, Group, Monitor, PgConfig, PgEvent, PgService, Scope};
use cohort_actors::supervisor::{RestartIntensity, SupervisorMetrics, SupervisorStatus};
use cohort_actors::{DeliveryError, ExitHook, ExitReason, PgError, Pid, ProcessHost};
use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::faults::{Direction, FaultRule, FaultRules};
use cohort_cluster::net::transport::{Transport, TransportConfig};
use cohort_cluster::queue::Class;
use cohort_cluster::secure::Keyring;
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, NodeId};
use prometheus::Registry;

/// How long a test waits for a behaviour before failing. Nothing waits for a timer of the
/// product's longer than a few seconds (the full-state anti-entropy, at 30 s, is never what a test
/// relies on unless it sets a short period; digests come every 2 s), so this is only a margin for
/// a loaded CI machine.
const DEADLINE: Duration = Duration::from_secs(30);

// ---- a fake process table ----

struct FakeHost {
    node: NodeId,
    live: Mutex<HashSet<u64>>,
    hooks: Mutex<Vec<Arc<dyn ExitHook>>>,
    deliveries: Mutex<HashMap<Pid, Vec<Bytes>>>,
}

impl FakeHost {
    fn new(node: NodeId) -> Arc<Self> {
        Arc::new(Self {
            node,
            live: Mutex::new(HashSet::new()),
            hooks: Mutex::new(Vec::new()),
            deliveries: Mutex::new(HashMap::new()),
        })
    }

    fn spawn(&self, local: u64) -> Pid {
        self.live.lock().unwrap().insert(local);
        Pid::new(self.node.clone(), local)
    }

    /// Like the real table: drop the pid, then run the exit hooks.
    fn exit(&self, pid: &Pid) {
        self.live.lock().unwrap().remove(&pid.local);
        let hooks = self.hooks.lock().unwrap().clone();
        for hook in hooks {
            hook.on_exit(pid, &ExitReason::Normal);
        }
    }

    fn delivered(&self, pid: &Pid) -> Vec<Bytes> {
        self.deliveries.lock().unwrap().get(pid).cloned().unwrap_or_default()
    }
}

impl ProcessHost for FakeHost {
    fn node(&self) -> &NodeId {
        &self.node
    }

    fn is_hosted(&self, pid: &Pid) -> bool {
        pid.node == self.node && self.live.lock().unwrap().contains(&pid.local)
    }

    fn deliver_local(&self, pid: &Pid, payload: Bytes) -> Result<(), DeliveryError> {
        if !self.is_hosted(pid) {
            return Err(DeliveryError::NotHosted(pid.clone()));
        }
        self.deliveries.lock().unwrap().entry(pid.clone()).or_default().push(payload);
        Ok(())
    }

    fn add_exit_hook(&self, hook: Arc<dyn ExitHook>) {
        self.hooks.lock().unwrap().push(hook);
    }
}

// ---- nodes ----

struct Node {
    id: NodeId,
    host: Arc<FakeHost>,
    transport: Transport,
    faults: FaultInjector,
    registry: Registry,
    pg: PgService,
}

impl Node {
    fn member(&self) -> MemberInfo {
        let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
        MemberInfo {
            id: self.id.clone(),
            addrs: MemberAddrs { gossip: unused, internode: self.transport.local_addr(), http: unused },
            raft_eligible: false,
            failure_domain: String::new(),
        }
    }

    fn scope(&self) -> Scope {
        self.pg.scope("default").unwrap()
    }

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

    fn rejected(&self, reason: &str) -> f64 {
        self.metric("cohort_pg_frames_rejected_total", &[("reason", reason)])
    }

    fn frames(&self, message: &str, direction: &str) -> f64 {
        self.metric("cohort_pg_frames_total", &[("message", message), ("direction", direction)])
    }

    async fn stop(self) {
        self.pg.shutdown().await;
        self.transport.shutdown().await;
    }
}

fn transport_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_secs(1),
        // The product's default. A tighter one makes a loaded machine time out handshakes, which
        // loses the first frames of the link (repaired, see the scope module's "Connecting").
        handshake_timeout: Duration::from_secs(3),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(100),
        reconnect_attempts_per_second: std::num::NonZeroU32::new(1000).unwrap(),
        shutdown_grace: Duration::from_millis(100),
        ..TransportConfig::default()
    }
}

async fn start_node(name: &str, config: PgConfig) -> Node {
    start_node_with(name, config, transport_config()).await
}

async fn start_node_with(name: &str, config: PgConfig, transport: TransportConfig) -> Node {
    let id = NodeId::new(name, 1);
    let registry = Registry::new();
    let faults = FaultInjector::enabled();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secret = ClusterSecret::from_bytes(&[7; 32]).unwrap();
    let transport = Transport::start(
        id.clone(),
        Keyring::new("pg-test", &secret, None),
        listener,
        faults.clone(),
        transport,
        &registry,
    )
    .await
    .unwrap();
    let host = FakeHost::new(id.clone());
    let supervision = SupervisorMetrics::register(&registry).unwrap();
    let pg =
        PgService::start_supervised(host.clone(), Some(transport.clone()), config, &registry, &supervision).unwrap();
    NODES.with(|nodes| nodes.borrow_mut().push((name.to_owned(), registry.clone())));
    Node { id, host, transport, faults, registry, pg }
}

/// `names.len()` nodes, each told the others are up.
async fn cluster(names: &[&str], config: PgConfig) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(start_node(name, config.clone()).await);
    }
    for a in &nodes {
        for b in &nodes {
            if a.id != b.id {
                a.pg.member_up(&b.member());
            }
        }
    }
    nodes
}

thread_local! {
    /// The registries of the nodes this test started (libtest runs each test on its own thread,
    /// and the test's future runs on it), for the diagnostics of a failed wait.
    static NODES: RefCell<Vec<(String, Registry)>> = const { RefCell::new(Vec::new()) };
}

/// The non-zero pg and internode counters of every node of this test: what a timed-out wait
/// prints, so a failure says which frames were dropped, refused or never sent.
fn diagnostics() -> String {
    const FAMILIES: [&str; 8] = [
        "cohort_pg_frames_rejected_total",
        "cohort_pg_frames_total",
        "cohort_pg_syncs_total",
        "cohort_pg_digest_checks_total",
        "cohort_internode_dropped_total",
        "cohort_internode_handshake_failures_total",
        "cohort_internode_frame_errors_total",
        "cohort_internode_reconnects_total",
    ];
    NODES.with(|nodes| {
        let mut out = String::new();
        for (name, registry) in nodes.borrow().iter() {
            out.push_str(&format!("\n  node {name}:"));
            for family in registry.gather().iter().filter(|f| FAMILIES.contains(&f.name())) {
                for metric in family.get_metric() {
                    let value = metric.get_counter().get_value();
                    if value != 0.0 {
                        let labels: Vec<String> =
                            metric.get_label().iter().map(|l| format!("{}={}", l.name(), l.value())).collect();
                        out.push_str(&format!(" {}{{{}}}={value}", family.name(), labels.join(",")));
                    }
                }
            }
        }
        out
    })
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}{}", diagnostics());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn group(name: &str) -> Group {
    Group::new(name).unwrap()
}

fn sorted(mut pids: Vec<Pid>) -> Vec<Pid> {
    pids.sort();
    pids
}

fn members(node: &Node, group: &str) -> Vec<Pid> {
    sorted(node.scope().get_members(group).to_vec())
}

async fn next_event(monitor: &mut Monitor) -> PgEvent {
    match tokio::time::timeout(DEADLINE, monitor.recv()).await {
        Ok(event) => event.expect("monitor closed"),
        Err(_) => panic!("timed out waiting for an event{}", diagnostics()),
    }
}

/// `(kind, group, sorted pids)`, for comparing events whose pid order is not specified.
fn shape(event: &PgEvent) -> (EventKind, String, Vec<Pid>) {
    (event.kind, event.group.to_string(), sorted(event.pids.clone()))
}

/// Applies events to a view as a monitor user would; panics on a leave of a non-member.
fn apply(view: &mut BTreeMap<String, Vec<Pid>>, event: &PgEvent) {
    let held = view.entry(event.group.to_string()).or_default();
    match event.kind {
        EventKind::Join => held.extend(event.pids.iter().cloned()),
        EventKind::Leave => {
            for pid in &event.pids {
                let at = held.iter().position(|p| p == pid).expect("leave of a pid the monitor never saw join");
                held.remove(at);
            }
        }
    }
    if held.is_empty() {
        view.remove(event.group.as_str());
    }
}

fn view_of(monitor: &Monitor) -> BTreeMap<String, Vec<Pid>> {
    monitor.snapshot().iter().map(|(g, s)| (g.to_string(), s.members().to_vec())).collect()
}

fn normalised(view: &BTreeMap<String, Vec<Pid>>) -> BTreeMap<String, Vec<Pid>> {
    view.iter().map(|(g, p)| (g.clone(), sorted(p.clone()))).collect()
}

fn table_view(scope: &Scope) -> BTreeMap<String, Vec<Pid>> {
    scope.which_groups().iter().map(|g| (g.to_string(), sorted(scope.get_members(g.as_str()).to_vec()))).collect()
}

// ---- local semantics and propagation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_is_visible_on_every_node_and_counts_occurrences() {
    let nodes = cluster(&["a", "b", "c"], PgConfig::default()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let pid = a.host.spawn(1);
    let room = group("room");

    a.scope().join(&room, &[pid.clone()]).unwrap();
    assert_eq!(members(a, "room"), [pid.clone()], "read-your-writes on the joining node");
    eventually("b and c see the join", || members(b, "room") == [pid.clone()] && members(c, "room") == [pid.clone()])
        .await;

    a.scope().join(&room, &[pid.clone()]).unwrap();
    eventually("b and c see two occurrences", || members(b, "room").len() == 2 && members(c, "room").len() == 2).await;
    a.scope().leave(&room, &[pid.clone()]).unwrap();
    eventually("one occurrence left everywhere", || [a, b, c].iter().all(|n| members(n, "room") == [pid.clone()]))
        .await;
    assert_eq!(b.scope().which_groups(), [room.clone()]);
    assert!(b.scope().which_local_groups().is_empty());
    assert_eq!(&*b.scope().get_local_members("room"), &[] as &[Pid]);

    a.scope().leave(&room, &[pid.clone()]).unwrap();
    assert!(matches!(a.scope().leave(&room, &[pid.clone()]), Err(PgError::NotJoined { .. })));
    eventually("the group is gone everywhere", || [a, b, c].iter().all(|n| n.scope().which_groups().is_empty())).await;

    // Refusals: a local pid that is not a live process, and another node's pid.
    let ghost = Pid::new(a.id.clone(), 99);
    assert_eq!(a.scope().join(&room, &[ghost.clone()]), Err(PgError::NotHosted { pid: ghost }));
    let foreign = b.host.spawn(1);
    assert!(matches!(a.scope().join(&room, &[foreign]), Err(PgError::NotLocal { .. })));
    assert!(a.scope().which_groups().is_empty());
    assert_eq!(a.metric("cohort_pg_operations_total", &[("op", "join"), ("result", "NotHosted")]), 1.0);
    assert_eq!(a.metric("cohort_pg_operations_total", &[("op", "leave"), ("result", "NotJoined")]), 1.0);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exit_removes_the_pid_from_every_group_on_every_node() {
    let nodes = cluster(&["a", "b", "c"], PgConfig::default()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let other = a.pg.scope("other").unwrap();
    for n in [b, c] {
        n.pg.scope("other").unwrap();
    }
    let pid = a.host.spawn(1);
    let stays = a.host.spawn(2);
    a.scope().join(&group("g1"), &[pid.clone(), pid.clone(), stays.clone()]).unwrap();
    a.scope().join(&group("g2"), &[pid.clone()]).unwrap();
    other.join(&group("g1"), &[pid.clone()]).unwrap();
    eventually("everyone sees the joins", || {
        [b, c].iter().all(|n| {
            members(n, "g1").len() == 3
                && members(n, "g2").len() == 1
                && n.pg.scope("other").unwrap().get_members("g1").len() == 1
        })
    })
    .await;

    a.host.exit(&pid);
    // Synchronous on the exiting node: gone before the exit is observable.
    assert_eq!(members(a, "g1"), [stays.clone()]);
    assert!(other.which_groups().is_empty());
    eventually("gone on every node, every scope", || {
        [b, c].iter().all(|n| {
            members(n, "g1") == [stays.clone()]
                && members(n, "g2").is_empty()
                && n.pg.scope("other").unwrap().which_groups().is_empty()
        })
    })
    .await;
    for node in nodes {
        node.stop().await;
    }
}

// ---- monitors ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_gets_a_snapshot_then_exactly_the_later_events() {
    let nodes = cluster(&["a", "b"], PgConfig::default()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let chat = group("chat");
    let (a1, a2) = (a.host.spawn(1), a.host.spawn(2));
    let b1 = b.host.spawn(1);
    a.scope().join(&chat, &[a1.clone()]).unwrap();
    b.scope().join(&chat, &[b1.clone()]).unwrap();
    eventually("a sees b's member", || members(a, "chat").len() == 2).await;

    // The caller's own join just before monitoring is in the snapshot, not in the events.
    a.scope().join(&chat, &[a2.clone()]).unwrap();
    let mut monitor = a.scope().monitor(&chat, None).await.unwrap();
    let mut scope_monitor = a.scope().monitor_scope(None).await.unwrap();
    assert_eq!(sorted(monitor.snapshot_members("chat").to_vec()), sorted(vec![a1.clone(), a2.clone(), b1.clone()]));
    assert_eq!(view_of(&scope_monitor), view_of(&monitor));
    assert_eq!(a.metric("cohort_pg_monitors", &[]), 2.0);

    a.scope().leave(&chat, &[a1.clone()]).unwrap();
    b.scope().join(&chat, &[b1.clone()]).unwrap();
    a.scope().join(&group("other"), &[a1.clone()]).unwrap();
    let expected = [
        (EventKind::Leave, "chat".to_owned(), vec![a1.clone()]),
        (EventKind::Join, "chat".to_owned(), vec![b1.clone()]),
    ];
    assert_eq!(shape(&next_event(&mut monitor).await), expected[0]);
    assert_eq!(shape(&next_event(&mut monitor).await), expected[1]);
    let mut scope_events = Vec::new();
    for _ in 0..3 {
        scope_events.push(shape(&next_event(&mut scope_monitor).await));
    }
    assert!(scope_events.contains(&expected[0]) && scope_events.contains(&expected[1]));
    assert!(scope_events.contains(&(EventKind::Join, "other".to_owned(), vec![a1.clone()])));
    assert!(monitor.try_recv().is_err(), "no event for another group, no duplicate");

    // Synchronous demonitor: consumed, unsubscribed when it returns.
    a.scope().demonitor(monitor);
    assert_eq!(a.metric("cohort_pg_monitors", &[]), 1.0);
    drop(scope_monitor);
    assert_eq!(a.metric("cohort_pg_monitors", &[]), 0.0);
    a.scope().join(&chat, &[a1.clone()]).unwrap();
    let mut fresh = a.scope().monitor(&chat, None).await.unwrap();
    assert_eq!(fresh.snapshot_members("chat").len(), 4);
    assert!(fresh.try_recv().is_err());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_owned_by_a_process_that_exits_is_dropped() {
    let node = start_node("a", PgConfig::default()).await;
    let owner = node.host.spawn(1);
    let member = node.host.spawn(2);
    let g = group("g");
    let mut monitor = node.scope().monitor(&g, Some(owner.clone())).await.unwrap();
    node.scope().join(&g, &[member.clone()]).unwrap();
    assert_eq!(shape(&next_event(&mut monitor).await), (EventKind::Join, "g".to_owned(), vec![member.clone()]));
    node.host.exit(&owner);
    assert_eq!(node.metric("cohort_pg_monitors", &[]), 0.0, "dropped by the exit hook, synchronously");
    node.scope().leave(&g, &[member.clone()]).unwrap();
    let end = tokio::time::timeout(DEADLINE, monitor.recv()).await.unwrap();
    assert_eq!(end, None, "the channel is closed, no event after the owner's exit");
    // An owner that is not a live process is refused.
    assert!(matches!(node.scope().monitor(&g, Some(owner)).await, Err(PgError::NotHosted { .. })));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_registered_during_concurrent_writes_replay_to_the_table_state() {
    let config = PgConfig { monitor_capacity: 1 << 16, ..PgConfig::default() };
    let node = start_node("a", config).await;
    let scope = node.scope();
    let pids: Vec<Pid> = (1..=8).map(|i| node.host.spawn(i)).collect();
    let groups: Vec<Group> = (0..4).map(|i| group(&format!("g{i}"))).collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (scope, pids, groups) = (scope.clone(), pids.clone(), groups.clone());
            std::thread::spawn(move || {
                for i in 0..3_000usize {
                    let pid = &pids[(i + w * 3) % pids.len()];
                    let g = &groups[(i * 7 + w) % groups.len()];
                    if i % 3 == 2 {
                        let _ = scope.leave(g, std::slice::from_ref(pid));
                    } else {
                        scope.join(g, std::slice::from_ref(pid)).unwrap();
                    }
                }
            })
        })
        .collect();
    let mut monitors = Vec::new();
    for i in 0..6 {
        monitors.push(if i % 2 == 0 {
            scope.monitor_scope(None).await.unwrap()
        } else {
            scope.monitor(&groups[i % groups.len()], None).await.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for writer in writers {
        writer.join().unwrap();
    }
    let truth = table_view(&scope);
    for mut monitor in monitors {
        let mut view = view_of(&monitor);
        let wanted: BTreeMap<String, Vec<Pid>> = match monitor.target().clone() {
            cohort_actors::pg::MonitorTarget::Scope => truth.clone(),
            cohort_actors::pg::MonitorTarget::Group(g) => {
                truth.iter().filter(|(name, _)| **name == g.to_string()).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
        };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while normalised(&view) != wanted {
            let event = tokio::time::timeout_at(deadline, monitor.recv())
                .await
                .expect("monitor view did not converge to the table")
                .expect("monitor closed");
            apply(&mut view, &event);
        }
    }
    node.stop().await;
}

/// Scope and group monitors registered while writers keep creating, filling, emptying and removing
/// groups (joins, leaves, exits): once every event has been dispatched, each monitor's snapshot
/// plus everything it received is exactly the table, and no event names a pid it never saw join
/// (`apply` panics). Bounded in time: the writers stop at a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_registered_under_constant_writes_see_exactly_the_table() {
    const WRITERS: u64 = 3;
    let config = PgConfig { monitor_capacity: 1 << 17, ..PgConfig::default() };
    let node = start_node("a", config).await;
    let scope = node.scope();
    // The fence monitor is registered first: when it sees the fence join (written after every
    // writer stopped), every earlier event has been dispatched to every monitor.
    let fence_group = group("fence");
    let fence_pid = node.host.spawn(1_000);
    let mut fence = scope.monitor(&fence_group, None).await.unwrap();
    let groups: Vec<Group> = (0..6).map(|i| group(&format!("g{i}"))).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (scope, host, groups) = (scope.clone(), Arc::clone(&node.host), groups.clone());
            std::thread::spawn(move || {
                // Few pids per group, so groups are created and removed all the time.
                let pids: Vec<Pid> = (0..3).map(|p| host.spawn(w * 10 + p)).collect();
                for i in 0..10_000usize {
                    if std::time::Instant::now() > deadline {
                        break;
                    }
                    let g = &groups[(i * 5 + w as usize) % groups.len()];
                    let pid = &pids[i % pids.len()];
                    match i % 11 {
                        10 => {
                            host.exit(pid); // leaves every group, via the exit hook
                            host.spawn(pid.local);
                        }
                        0 | 2 | 4 | 6 => scope.join(g, std::slice::from_ref(pid)).unwrap(),
                        8 => scope.join(g, &pids[..2]).unwrap(),
                        _ => {
                            let _ = scope.leave(g, std::slice::from_ref(pid)); // NotJoined is fine
                        }
                    }
                }
            })
        })
        .collect();
    let mut monitors = Vec::new();
    while writers.iter().any(|w| !w.is_finished()) && monitors.len() < 40 {
        monitors.push(if monitors.len() % 2 == 0 {
            scope.monitor_scope(None).await.unwrap()
        } else {
            scope.monitor(&groups[monitors.len() % groups.len()], None).await.unwrap()
        });
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(monitors.len() >= 4, "monitors registered while writing");
    scope.join(&fence_group, std::slice::from_ref(&fence_pid)).unwrap();
    assert_eq!(shape(&next_event(&mut fence).await), (EventKind::Join, "fence".to_owned(), vec![fence_pid]));

    let truth = table_view(&scope);
    for (i, mut monitor) in monitors.into_iter().enumerate() {
        let target = monitor.target().clone();
        let mut view = view_of(&monitor);
        loop {
            match monitor.try_recv() {
                Ok(event) => {
                    let watched = match &target {
                        cohort_actors::pg::MonitorTarget::Scope => true,
                        cohort_actors::pg::MonitorTarget::Group(g) => *g == event.group,
                    };
                    assert!(watched, "monitor {i}: event of an unwatched group");
                    apply(&mut view, &event);
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => panic!("monitor {i} was dropped"),
            }
        }
        let wanted: BTreeMap<String, Vec<Pid>> = match &target {
            cohort_actors::pg::MonitorTarget::Scope => truth.clone(),
            cohort_actors::pg::MonitorTarget::Group(g) => {
                truth.iter().filter(|(name, _)| **name == g.to_string()).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
        };
        assert_eq!(normalised(&view), wanted, "monitor {i} ({target:?}): snapshot + events != table");
    }
    node.stop().await;
}

// ---- node down and reconnect ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_removes_its_members_and_reconnect_syncs_only_the_difference() {
    let nodes = cluster(&["a", "b"], PgConfig::default()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let g = group("g");
    let (a1, a2, a3) = (a.host.spawn(1), a.host.spawn(2), a.host.spawn(3));
    let b1 = b.host.spawn(1);
    a.scope().join(&g, &[a1.clone(), a2.clone()]).unwrap();
    b.scope().join(&g, &[b1.clone()]).unwrap();
    eventually("both see three members", || members(a, "g").len() == 3 && members(b, "g").len() == 3).await;
    let mut at_b = b.scope().monitor_scope(None).await.unwrap();
    let mut at_a = a.scope().monitor(&g, None).await.unwrap();

    // b's membership declares a down; the node stops b's link to a.
    b.pg.member_down(&a.id);
    b.transport.peer_down(&a.member());
    assert_eq!(members(b, "g"), [b1.clone()], "removed before member_down returns");
    assert_eq!(
        shape(&next_event(&mut at_b).await),
        (EventKind::Leave, "g".to_owned(), sorted(vec![a1.clone(), a2.clone()]))
    );

    // While b considers a down, a changes; its frames to b are ignored (and counted).
    a.scope().leave(&g, &[a2.clone()]).unwrap();
    a.scope().join(&g, &[a3.clone()]).unwrap();
    eventually("b ignores a's frames while a is down", || b.rejected("peer_not_up") >= 1.0).await;
    assert_eq!(members(b, "g"), [b1.clone()]);

    // a comes back: discover + sync restore exactly a's current members, in one join event.
    let a_syncs_in = a.frames("sync", "in");
    b.pg.member_up(&a.member());
    eventually("b sees a's current members", || members(b, "g") == sorted(vec![a1.clone(), a3.clone(), b1.clone()]))
        .await;
    assert_eq!(
        shape(&next_event(&mut at_b).await),
        (EventKind::Join, "g".to_owned(), sorted(vec![a1.clone(), a3.clone()]))
    );
    // a never lost b's members: b's sync to a changed nothing, so a's monitor saw only a's writes.
    eventually("a applied b's sync", || a.frames("sync", "in") > a_syncs_in).await;
    assert_eq!(shape(&next_event(&mut at_a).await), (EventKind::Leave, "g".to_owned(), vec![a2.clone()]));
    assert_eq!(shape(&next_event(&mut at_a).await), (EventKind::Join, "g".to_owned(), vec![a3.clone()]));

    // A redundant up (same incarnation) re-syncs and produces no event anywhere.
    let syncs_in = b.frames("sync", "in");
    b.pg.member_up(&a.member());
    eventually("b applied another sync from a", || b.frames("sync", "in") > syncs_in).await;
    // A marker change after it proves the channels are drained up to here.
    b.scope().leave(&g, &[b1.clone()]).unwrap();
    assert_eq!(shape(&next_event(&mut at_b).await), (EventKind::Leave, "g".to_owned(), vec![b1.clone()]));
    assert_eq!(shape(&next_event(&mut at_a).await), (EventKind::Leave, "g".to_owned(), vec![b1.clone()]));
    assert!(at_a.try_recv().is_err() && at_b.try_recv().is_err());
    for node in nodes {
        node.stop().await;
    }
}

// ---- broadcast ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_once_with_one_frame_per_remote_node() {
    let nodes = cluster(&["a", "b", "c"], PgConfig::default()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let g = group("news");
    let a1 = a.host.spawn(1);
    let (b1, b2) = (b.host.spawn(1), b.host.spawn(2));
    let c1 = c.host.spawn(1);
    a.scope().join(&g, &[a1.clone()]).unwrap();
    b.scope().join(&g, &[b1.clone(), b2.clone()]).unwrap();
    c.scope().join(&g, &[c1.clone()]).unwrap();
    eventually("a sees every member", || members(a, "news").len() == 4).await;

    let report = a.scope().broadcast("news", Bytes::from_static(b"one")).unwrap();
    assert_eq!((report.local_delivered, report.remote_nodes, report.refused_total), (1, 2, 0));
    assert_eq!(a.frames("broadcast", "out"), 2.0, "one frame per remote node, not per member");
    // A second broadcast behind the first on the same ordered links: once it arrived, any
    // duplicate of the first would have arrived too.
    a.scope().broadcast("news", Bytes::from_static(b"two")).unwrap();
    let everyone = [(a, &a1), (b, &b1), (b, &b2), (c, &c1)];
    eventually("both broadcasts delivered everywhere", || everyone.iter().all(|(n, p)| n.host.delivered(p).len() == 2))
        .await;
    for (node, pid) in everyone {
        assert_eq!(node.host.delivered(pid), [Bytes::from_static(b"one"), Bytes::from_static(b"two")], "{pid}");
    }
    assert_eq!((b.frames("broadcast", "in"), c.frames("broadcast", "in")), (2.0, 2.0));

    // A member joined twice still gets each broadcast once; broadcast_local stays on the node.
    a.scope().join(&g, &[a1.clone()]).unwrap();
    let report = a.scope().broadcast_local("news", Bytes::from_static(b"local")).unwrap();
    assert_eq!((report.local_delivered, report.remote_nodes), (1, 0));
    assert_eq!(a.host.delivered(&a1).len(), 3);
    // A member that exited without its hook having run yet is reported, not delivered to.
    b.host.live.lock().unwrap().remove(&b2.local);
    let report = b.scope().broadcast_local("news", Bytes::from_static(b"x")).unwrap();
    assert_eq!(report.refused_total, 1);
    assert_eq!(b.metric("cohort_pg_broadcast_deliveries_total", &[("result", "not_hosted")]), 1.0);
    for node in nodes {
        node.stop().await;
    }
}

// ---- anti-entropy ----

/// A period no test lasts: the anti-entropy given it is off.
const NEVER: Duration = Duration::from_secs(3_600);

/// The bug the chaos runner found (`lossy-network`): frames dropped while the link stays up were
/// repaired only by the full-state round robin, `peers × 30 s` later. Digests repair a lost join
/// and a lost leave with the full-state anti-entropy off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_leave_lost_on_a_live_link_are_repaired_by_digests() {
    let config =
        PgConfig { anti_entropy_interval: NEVER, digest_interval: Duration::from_millis(100), ..PgConfig::default() };
    let nodes = cluster(&["a", "b", "c"], config).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (early, lost) = (a.host.spawn(1), a.host.spawn(2));
    a.scope().join(&group("g"), &[early.clone()]).unwrap();
    eventually("b and c are in sync", || members(b, "g") == [early.clone()] && members(c, "g") == [early.clone()])
        .await;
    let in_sync = |n: &Node| n.metric("cohort_pg_digest_checks_total", &[("result", "in_sync")]);
    eventually("b has compared a's digest with its view", || in_sync(b) >= 1.0).await;

    let mut rule = FaultRule::new("b", Direction::Out);
    rule.drop = 1.0;
    a.faults.install(FaultRules { rules: vec![rule] }).unwrap();
    let dropped =
        |n: &Node| n.metric("cohort_internode_dropped_total", &[("class", "pg"), ("reason", "fault_injected")]);
    let before = dropped(a);
    a.scope().join(&group("g"), &[lost.clone()]).unwrap();
    a.scope().leave(&group("g"), &[early.clone()]).unwrap();
    eventually("c sees the join and the leave", || members(c, "g") == [lost.clone()]).await;
    eventually("a's frames to b were dropped on the live link", || dropped(a) > before).await;
    assert_eq!(members(b, "g"), [early.clone()], "b missed both");

    a.faults.clear().unwrap();
    eventually("digests repaired b", || members(b, "g") == [lost.clone()]).await;
    let pulls = |n: &Node| {
        n.metric("cohort_pg_digest_checks_total", &[("result", "pull")])
            + n.metric("cohort_pg_digest_checks_total", &[("result", "deferred_pull")])
    };
    assert!(pulls(b) >= 1.0, "b pulled a's state on a digest mismatch{}", diagnostics());
    for node in &nodes {
        assert_eq!(node.metric("cohort_pg_syncs_total", &[("reason", "anti_entropy")]), 0.0);
    }
    // In sync again: b's later digests from a match.
    let matched = in_sync(b);
    eventually("b's view of a matches a's digest again", || in_sync(b) > matched).await;
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_a_join_lost_on_the_wire() {
    // Digests off: the full-state backstop alone repairs.
    let config =
        PgConfig { anti_entropy_interval: Duration::from_millis(200), digest_interval: NEVER, ..PgConfig::default() };
    let nodes = cluster(&["a", "b"], config).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let early = a.host.spawn(1);
    a.scope().join(&group("g"), &[early.clone()]).unwrap();
    eventually("b is in sync", || members(b, "g") == [early.clone()]).await;

    let mut rule = FaultRule::new("b", Direction::Out);
    rule.drop = 1.0;
    a.faults.install(FaultRules { rules: vec![rule] }).unwrap();
    let dropped =
        |n: &Node| n.metric("cohort_internode_dropped_total", &[("class", "pg"), ("reason", "fault_injected")]);
    let before = dropped(a);
    let lost = a.host.spawn(2);
    a.scope().join(&group("g"), &[lost.clone()]).unwrap();
    eventually("the join frame was dropped on the wire", || dropped(a) > before).await;
    assert_eq!(members(b, "g"), [early.clone()]);

    a.faults.clear().unwrap();
    eventually("anti-entropy delivered the lost join", || members(b, "g") == sorted(vec![early.clone(), lost.clone()]))
        .await;
    assert!(a.metric("cohort_pg_syncs_total", &[("reason", "anti_entropy")]) >= 1.0);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_queue_overflow_schedules_a_resync_that_repairs_the_peer() {
    // Long anti-entropy, no digests: only the resync can repair within the deadline.
    let config = PgConfig { resync_delay: Duration::from_millis(50), digest_interval: NEVER, ..PgConfig::default() };
    let mut tiny = transport_config();
    tiny.queue.capacity.pg = 1;
    let a = start_node_with("a", config.clone(), tiny).await;
    let b = start_node("b", config).await;
    a.pg.member_up(&b.member());
    b.pg.member_up(&a.member());
    let first = a.host.spawn(100);
    a.scope().join(&group("g"), &[first.clone()]).unwrap();
    eventually("b is in sync", || members(&b, "g") == [first.clone()]).await;

    // Slow the link so the one-frame pg queue overflows on the next joins.
    let mut rule = FaultRule::new("b", Direction::Out);
    rule.delay_ms = 300;
    a.faults.install(FaultRules { rules: vec![rule] }).unwrap();
    let mut expected = vec![first];
    for i in 1..=6 {
        let pid = a.host.spawn(i);
        a.scope().join(&group("g"), &[pid.clone()]).unwrap();
        expected.push(pid);
        // Separate drains, so separate frames (pacing only; nothing is asserted on timing).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("a resync was sent", || a.metric("cohort_pg_syncs_total", &[("reason", "resync")]) >= 1.0).await;
    a.faults.clear().unwrap();
    let expected = sorted(expected);
    eventually("b converged on every join", || members(&b, "g") == expected).await;
    a.stop().await;
    b.stop().await;
}

/// The first discover and sync of a node are lost on the wire (as when the responder's handshake
/// times out on a loaded machine after the initiator's side completed): the peer re-sends its
/// unanswered discover until the answer arrives, so both converge with anti-entropy off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_discover_answer_is_repaired_by_discovering_again() {
    let config = PgConfig { anti_entropy_interval: NEVER, digest_interval: NEVER, ..PgConfig::default() };
    let a = start_node("a", config.clone()).await;
    let b = start_node("b", config).await;
    let early = a.host.spawn(1);
    a.scope().join(&group("g"), &[early.clone()]).unwrap();
    let mut rule = FaultRule::new("b", Direction::Out);
    rule.drop = 1.0;
    a.faults.install(FaultRules { rules: vec![rule] }).unwrap();
    a.pg.member_up(&b.member());
    b.pg.member_up(&a.member());
    // a's discover and sync to b, and its answer to b's discover: all dropped.
    let dropped =
        |n: &Node| n.metric("cohort_internode_dropped_total", &[("class", "pg"), ("reason", "fault_injected")]);
    eventually("a's discover, sync and answer were dropped", || dropped(&a) >= 3.0).await;
    assert!(members(&b, "g").is_empty());
    a.faults.clear().unwrap();
    eventually("b discovered a again and got its state", || members(&b, "g") == [early.clone()]).await;
    assert_eq!(a.metric("cohort_pg_syncs_total", &[("reason", "anti_entropy")]), 0.0);
    // And the link carries batches again.
    let later = a.host.spawn(2);
    a.scope().join(&group("g"), &[later.clone()]).unwrap();
    eventually("b sees the later join", || members(&b, "g") == sorted(vec![early.clone(), later.clone()])).await;
    a.stop().await;
    b.stop().await;
}

// ---- supervision (SPEC 6.1) ----

fn restarts(node: &Node, scope: &str) -> f64 {
    node.metric("cohort_supervisor_restarts_total", &[("supervisor", "pg"), ("child", scope)])
}

/// A scope's actor that crashes (losing the events and frames it had taken) is restarted by its
/// supervisor and re-synchronises: its groups are intact, writes made on either side around the
/// crash converge everywhere (anti-entropy off: only the restart's discovers and syncs can do
/// it), monitors of the crashed incarnation are closed, new ones work, broadcast works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_scope_restarts_and_resynchronises_with_its_peers() {
    let config = PgConfig { anti_entropy_interval: NEVER, digest_interval: NEVER, ..PgConfig::default() };
    let nodes = cluster(&["a", "b"], config).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let g = group("g");
    let (a1, a2) = (a.host.spawn(1), a.host.spawn(2));
    let (b1, b2) = (b.host.spawn(1), b.host.spawn(2));
    a.scope().join(&g, &[a1.clone()]).unwrap();
    b.scope().join(&g, &[b1.clone()]).unwrap();
    let both = sorted(vec![a1.clone(), b1.clone()]);
    eventually("both see both members", || members(a, "g") == both && members(b, "g") == both).await;
    let mut old_monitor = a.scope().monitor(&g, None).await.unwrap();
    assert_eq!(restarts(a, "default"), 0.0);

    // Crash a's scope; then, before or while it restarts, change both sides: a's event may be
    // drained and lost by the dying actor, b's frames may be taken and dropped by it.
    assert!(a.pg.crash_scope_for_test("default"));
    a.scope().join(&g, &[a2.clone()]).unwrap();
    b.scope().leave(&g, &[b1.clone()]).unwrap();
    b.scope().join(&g, &[b2.clone()]).unwrap();
    // Local state never depends on the actor: read-your-writes through the crash.
    assert!(members(a, "g").contains(&a1) && members(a, "g").contains(&a2));

    eventually("the supervisor restarted a's scope once", || restarts(a, "default") == 1.0).await;
    let health = a.pg.health();
    let default = health.iter().find(|h| h.scope == "default").unwrap();
    assert_eq!((default.restarts, &default.status), (1, &SupervisorStatus::Running));
    assert_eq!(a.pg.status(), SupervisorStatus::Running);
    // The crashed incarnation's monitors are closed (they may have missed events): re-monitor.
    // (Events dispatched before the crash may come first.)
    while tokio::time::timeout(DEADLINE, old_monitor.recv()).await.expect("old monitor not closed").is_some() {}

    let all = sorted(vec![a1.clone(), a2.clone(), b2.clone()]);
    eventually("both converged after the restart", || members(a, "g") == all && members(b, "g") == all).await;
    assert!(a.metric("cohort_pg_syncs_total", &[("reason", "restart")]) >= 1.0);
    assert_eq!(a.metric("cohort_pg_groups", &[]), 1.0, "the groups gauge is not counted twice");

    // A fresh monitor: the full snapshot, then later events.
    let mut monitor = a.scope().monitor(&g, None).await.unwrap();
    assert_eq!(sorted(monitor.snapshot_members("g").to_vec()), all);
    b.scope().leave(&g, &[b2.clone()]).unwrap();
    assert_eq!(shape(&next_event(&mut monitor).await), (EventKind::Leave, "g".to_owned(), vec![b2.clone()]));
    a.scope().leave(&g, &[a2.clone()]).unwrap();
    assert_eq!(shape(&next_event(&mut monitor).await), (EventKind::Leave, "g".to_owned(), vec![a2.clone()]));
    eventually("b sees a's leave", || members(b, "g") == [a1.clone()]).await;

    // Broadcast both ways.
    b.scope().join(&g, &[b2.clone()]).unwrap();
    eventually("a sees b's join", || members(a, "g").len() == 2).await;
    let report = a.scope().broadcast("g", Bytes::from_static(b"from a")).unwrap();
    assert_eq!((report.local_delivered, report.remote_nodes), (1, 1));
    b.scope().broadcast("g", Bytes::from_static(b"from b")).unwrap();
    let from_both = [Bytes::from_static(b"from a"), Bytes::from_static(b"from b")];
    eventually("both broadcasts delivered", || a.host.delivered(&a1).len() == 2 && b.host.delivered(&b2).len() == 2)
        .await;
    for delivered in [a.host.delivered(&a1), b.host.delivered(&b2)] {
        assert!(from_both.iter().all(|m| delivered.contains(m)), "{delivered:?}");
    }
    for node in nodes {
        node.stop().await;
    }
}

/// A scope that crashes more often than its restart intensity allows escalates: its actor stays
/// stopped, the service's status says which scope gave up (for `/livez`), monitors are refused,
/// other scopes keep running, and shutdown still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_crashing_beyond_its_restart_intensity_escalates() {
    let config =
        PgConfig { restart_intensity: RestartIntensity::new(1, Duration::from_secs(60)), ..PgConfig::default() };
    let node = start_node("a", config).await;
    let other = node.pg.scope("other").unwrap();
    let g = group("g");
    assert!(node.pg.crash_scope_for_test("default"));
    eventually("one restart", || restarts(&node, "default") == 1.0).await;
    assert_eq!(node.pg.status(), SupervisorStatus::Running);
    assert!(node.pg.crash_scope_for_test("default"));
    eventually("the second crash escalates", || node.pg.status().is_escalated()).await;
    match node.pg.status() {
        SupervisorStatus::Escalated { child, .. } => assert_eq!(child, "default"),
        status => panic!("{status:?}"),
    }
    assert_eq!(node.metric("cohort_supervisor_escalations_total", &[("supervisor", "pg")]), 1.0);
    let health = node.pg.health();
    assert!(health.iter().any(|h| h.scope == "default" && h.status.is_escalated()));
    assert!(health.iter().any(|h| h.scope == "other" && h.status == SupervisorStatus::Running));
    assert!(!node.pg.crash_scope_for_test("absent"));
    // The stopped scope refuses monitors; the other scope is unaffected.
    assert_eq!(node.scope().monitor(&g, None).await.unwrap_err(), PgError::ScopeStopped);
    let pid = node.host.spawn(1);
    let mut monitor = other.monitor(&g, None).await.unwrap();
    other.join(&g, &[pid.clone()]).unwrap();
    assert_eq!(shape(&next_event(&mut monitor).await), (EventKind::Join, "g".to_owned(), vec![pid]));
    node.pg.shutdown().await;
    assert!(node.pg.status().is_escalated(), "an escalation stays visible after shutdown");
    node.transport.shutdown().await;
}

// ---- bad input ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_counted_and_dropped_and_the_scope_keeps_working() {
    let nodes = cluster(&["a", "b"], PgConfig::default()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let good = a.host.spawn(1);
    a.scope().join(&group("g"), &[good.clone()]).unwrap();
    eventually("b is in sync", || members(b, "g") == [good.clone()]).await;

    let send = |kind: u8, payload: Vec<u8>| {
        a.transport.send("b", Class::Pg, kind, Bytes::from(payload)).unwrap();
    };
    let encode = |frame: &PgFrame| rmp_serde::to_vec(frame).unwrap();
    let forged_pid = Pid::new(NodeId::new("c", 1), 1);
    let join = |pids: Vec<Pid>| PgMessage::Join { group: group("g"), pids };

    // Counted from here: while the cluster formed, b may already have counted frames of a's
    // (e.g. a's first batch `refused` as from an unknown peer, if a's discover reached b before
    // b's membership reported a up; repaired by the discovers, see the scope module).
    let reasons = ["decode", "unknown_kind", "version", "sender_mismatch", "refused", "unknown_scope", "invalid"];
    let before: Vec<f64> = reasons.iter().map(|reason| b.rejected(reason)).collect();
    let counted = |b: &Node| reasons.iter().zip(&before).map(|(reason, n)| b.rejected(reason) - n).collect::<Vec<_>>();

    send(PG_FRAME_KIND, b"\xc1 garbage".to_vec());
    send(77, encode(&PgFrame::new("default", a.id.clone(), PgMessage::Discover)));
    let mut future = PgFrame::new("default", a.id.clone(), PgMessage::Discover);
    future.version = 99;
    send(PG_FRAME_KIND, encode(&future));
    send(PG_FRAME_KIND, encode(&PgFrame::new("default", NodeId::new("c", 1), join(vec![forged_pid.clone()]))));
    send(PG_FRAME_KIND, encode(&PgFrame::new("default", a.id.clone(), join(vec![forged_pid.clone()]))));
    send(PG_FRAME_KIND, encode(&PgFrame::new("nope", a.id.clone(), PgMessage::Discover)));
    send(PG_FRAME_KIND, encode(&PgFrame::new("default", a.id.clone(), join(vec![]))));
    eventually("every bad frame counted under its reason", || counted(b).iter().all(|n| *n >= 1.0)).await;
    assert_eq!(members(b, "g"), [good.clone()], "nothing was applied");

    let later = a.host.spawn(2);
    a.scope().join(&group("g"), &[later.clone()]).unwrap();
    eventually("good frames still flow", || members(b, "g") == sorted(vec![good.clone(), later.clone()])).await;
    assert_eq!(counted(b), vec![1.0; reasons.len()], "each bad frame counted once, under {reasons:?}");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported_at_zero_from_boot_and_scopes_are_bounded() {
    let node = start_node("a", PgConfig::default()).await;
    for (name, labels) in [
        ("cohort_pg_frames_rejected_total", vec![("reason", "decode")]),
        ("cohort_pg_monitor_overflow_total", vec![]),
        ("cohort_pg_syncs_total", vec![("reason", "resync")]),
        ("cohort_pg_broadcast_deliveries_total", vec![("result", "mailbox_full")]),
        ("cohort_pg_groups", vec![]),
        ("cohort_pg_memberships", vec![]),
    ] {
        let families = node.registry.gather();
        let family = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            family
                .get_metric()
                .iter()
                .any(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v))),
            "{name}{labels:?} missing"
        );
    }
    let pid = node.host.spawn(1);
    node.scope().join(&group("g"), &[pid.clone(), pid.clone()]).unwrap();
    eventually("gauges follow the scope", || {
        node.metric("cohort_pg_groups", &[]) == 1.0 && node.metric("cohort_pg_memberships", &[]) == 2.0
    })
    .await;
    assert!(matches!(node.pg.scope(""), Err(PgError::BadScopeName { .. })));
    for i in 1..cohort_actors::pg::MAX_SCOPES {
        node.pg.scope(&format!("s{i}")).unwrap();
    }
    assert_eq!(
        node.pg.scope("one-too-many").unwrap_err(),
        PgError::TooManyScopes { max: cohort_actors::pg::MAX_SCOPES }
    );
    node.stop().await;
}
