//! Behaviour of the node's process runtime (SPEC 4, 6.1): pids, typed and by-pid sends, the bounded
//! mailbox, the exit pipeline for every exit kind, process monitors, and the remote paths over real
//! transports on 127.0.0.1 (port 0). Waits are bounded polls with deadlines; no assertion rests on a
//! sleep.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort_actors::Pid;
use cohort_actors::host::{DeliveryError, ExitHook, ExitReason, ProcessHost};
use cohort_actors::process::{
    Down, ExitSignal, MonitorError, MonitorRef, ProcessConfig, ProcessRef, Processes, SendError, SpawnError,
};
use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::net::transport::{Transport, TransportConfig};
use cohort_cluster::queue::Class;
use cohort_cluster::secure::Keyring;
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, NodeId};
use prometheus::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

/// How long a test waits for a behaviour before failing.
const DEADLINE: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------- probe

/// The probe process's messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    /// Waits in the handler until the test opens the gate.
    Block,
    /// Stops itself normally.
    Stop,
    /// Returns an error from the handler.
    Fail,
    /// Panics in the handler.
    Panic,
    Down(Down),
}

impl From<Down> for Msg {
    fn from(down: Down) -> Self {
        Msg::Down(down)
    }
}

/// A process that reports every message it takes to the test, then acts on it.
struct Probe {
    seen: mpsc::UnboundedSender<Msg>,
    gate: Arc<Semaphore>,
}

impl Actor for Probe {
    type Msg = Msg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Msg>, message: Msg, _: &mut ()) -> Result<(), ActorProcessingErr> {
        let _ = self.seen.send(message.clone());
        match message {
            Msg::Block => {
                if let Ok(permit) = self.gate.acquire().await {
                    permit.forget();
                }
            }
            Msg::Stop => myself.stop(None),
            Msg::Fail => return Err("boom".into()),
            Msg::Panic => panic!("probe panicked on purpose"),
            Msg::Ping(_) | Msg::Down(_) => {}
        }
        Ok(())
    }
}

/// What the test holds of one probe.
struct Spawned {
    pid: Pid,
    process: ProcessRef<Msg>,
    seen: mpsc::UnboundedReceiver<Msg>,
    gate: Arc<Semaphore>,
}

impl Spawned {
    async fn next(&mut self) -> Msg {
        tokio::time::timeout(DEADLINE, self.seen.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("closed")
    }

    /// The next DOWN the process takes, skipping nothing else: any other message first fails.
    async fn next_down(&mut self) -> Down {
        match self.next().await {
            Msg::Down(down) => down,
            other => panic!("expected a DOWN, got {other:?}"),
        }
    }

    /// Pings the process and waits for the ping: every message sent before it was taken, and no
    /// DOWN came in between (the mailbox is FIFO).
    async fn flush(&mut self, n: u64) {
        self.process.send(Msg::Ping(n)).unwrap();
        assert_eq!(self.next().await, Msg::Ping(n), "an unexpected message arrived before the flush ping");
    }
}

async fn spawn_probe(processes: &Processes) -> Spawned {
    let (tx, seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let (pid, process) = processes.spawn(Probe { seen: tx, gate: Arc::clone(&gate) }, ()).await.unwrap();
    Spawned { pid, process, seen, gate }
}

// ------------------------------------------------------------------------------------------- hooks

/// Records every exit the pipeline reports, and whether the process was still hosted then.
struct Recorder {
    exits: Mutex<Vec<(Pid, ExitReason, bool)>>,
    host: Mutex<Option<Processes>>,
}

impl Recorder {
    fn install(processes: &Processes) -> Arc<Self> {
        let recorder = Arc::new(Self { exits: Mutex::new(Vec::new()), host: Mutex::new(Some(processes.clone())) });
        processes.add_exit_hook(recorder.clone());
        recorder
    }

    fn exits_of(&self, pid: &Pid) -> Vec<ExitReason> {
        let exits = self.exits.lock().unwrap();
        exits.iter().filter(|(p, _, _)| p == pid).map(|(_, reason, _)| reason.clone()).collect()
    }

    fn was_hosted_during_hook(&self, pid: &Pid) -> bool {
        self.exits.lock().unwrap().iter().any(|(p, _, hosted)| p == pid && *hosted)
    }
}

impl ExitHook for Recorder {
    fn on_exit(&self, pid: &Pid, reason: &ExitReason) {
        let hosted = self.host.lock().unwrap().as_ref().is_some_and(|host| host.is_hosted(pid));
        self.exits.lock().unwrap().push((pid.clone(), reason.clone(), hosted));
    }
}

// ------------------------------------------------------------------------------------------- nodes

fn small_config() -> ProcessConfig {
    ProcessConfig { shutdown_timeout: Duration::from_secs(2), ..ProcessConfig::default() }
}

async fn single_node(name: &str, incarnation: u64, config: ProcessConfig) -> (Processes, Registry) {
    let registry = Registry::new();
    let processes = Processes::start(NodeId::new(name, incarnation), None, config, &registry).await.unwrap();
    (processes, registry)
}

fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let families = registry.gather();
    let Some(family) = families.iter().find(|f| f.name() == name) else { return f64::NAN };
    for m in family.get_metric() {
        let matches = labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v));
        if matches {
            return m.get_counter().get_value() + m.get_gauge().get_value();
        }
    }
    f64::NAN
}

/// Polls `condition` until it holds or the deadline passes.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Networked {
    processes: Processes,
    transport: Transport,
    registry: Registry,
}

impl Networked {
    fn member(&self) -> MemberInfo {
        let unused = "127.0.0.1:9".parse().unwrap();
        MemberInfo {
            id: self.transport.local().clone(),
            addrs: MemberAddrs { gossip: unused, internode: self.transport.local_addr(), http: unused },
            raft_eligible: false,
            failure_domain: String::new(),
        }
    }

    fn connected_to(&self, peer: &str) -> bool {
        self.transport.snapshot().peers.iter().any(|p| p.node.name == peer && p.connected)
    }

    async fn stop(&self) {
        self.processes.shutdown().await;
        self.transport.shutdown().await;
    }
}

async fn networked(name: &str) -> Networked {
    let registry = Registry::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = TransportConfig {
        connect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_millis(500),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(100),
        reconnect_attempts_per_second: std::num::NonZeroU32::new(1000).unwrap(),
        shutdown_grace: Duration::from_millis(100),
        ..TransportConfig::default()
    };
    let secret = ClusterSecret::from_bytes(&[7; 32]).unwrap();
    let id = NodeId::new(name, 1);
    let transport = Transport::start(
        id.clone(),
        Keyring::new("test", &secret, None),
        listener,
        FaultInjector::disabled(),
        config,
        &registry,
    )
    .await
    .unwrap();
    let processes = Processes::start(id, Some(transport.clone()), small_config(), &registry).await.unwrap();
    Networked { processes, transport, registry }
}

/// Two connected nodes.
async fn pair() -> (Networked, Networked) {
    let a = networked("a").await;
    let b = networked("b").await;
    a.transport.peer_up(&b.member());
    b.transport.peer_up(&a.member());
    eventually("a and b connected", || a.connected_to("b") && b.connected_to("a")).await;
    (a, b)
}

// ------------------------------------------------------------------------------------- local tests

#[tokio::test]
async fn spawn_gives_distinct_pids_and_typed_and_by_pid_sends_arrive() {
    let (processes, registry) = single_node("alpha", 7, small_config()).await;
    let mut one = spawn_probe(&processes).await;
    let mut two = spawn_probe(&processes).await;
    assert_eq!(one.pid.to_string(), "<alpha.7.1>");
    assert_eq!(two.pid.to_string(), "<alpha.7.2>");
    assert_eq!(processes.len(), 2);
    assert!(processes.is_hosted(&one.pid) && processes.is_hosted(&two.pid));
    assert_eq!(metric(&registry, "cohort_process_spawned_total", &[]), 2.0);
    assert_eq!(metric(&registry, "cohort_processes", &[]), 2.0);

    one.process.send(Msg::Ping(1)).unwrap();
    assert_eq!(one.next().await, Msg::Ping(1));
    processes.send_to(&two.pid, Msg::Ping(2)).unwrap();
    assert_eq!(two.next().await, Msg::Ping(2));

    // Another Serde type by pid goes through the process's decoder: accepted when it decodes...
    processes.deliver_local(&one.pid, Bytes::from(rmp_serde::to_vec(&Msg::Ping(3)).unwrap())).unwrap();
    assert_eq!(one.next().await, Msg::Ping(3));
    // ...and dropped, counted and refused when it does not: never a panic.
    assert_eq!(processes.send_to(&one.pid, vec![1u32, 2, 3]), Err(SendError::Undecodable(one.pid.clone())));
    assert_eq!(
        processes.deliver_local(&one.pid, Bytes::from_static(&[0xc1, 0xff, 0x00])),
        Err(DeliveryError::Undecodable(one.pid.clone()))
    );
    assert_eq!(metric(&registry, "cohort_process_undecodable_total", &[]), 2.0);
    one.flush(4).await;

    let looked_up = processes.lookup::<Msg>(&two.pid).unwrap();
    assert_eq!(looked_up.pid(), &two.pid);
    assert!(processes.lookup::<u64>(&two.pid).is_none());
    assert_eq!(processes.pid_of(&two.process.actor_ref().get_cell()), Some(two.pid.clone()));
    processes.shutdown().await;
}

#[tokio::test]
async fn sends_to_unknown_superseded_or_unreachable_pids_are_not_hosted() {
    let (processes, _registry) = single_node("alpha", 2, small_config()).await;
    let never = Pid::new(NodeId::new("alpha", 2), 99);
    let older = Pid::new(NodeId::new("alpha", 1), 1);
    let remote = Pid::new(NodeId::new("beta", 1), 1);
    for pid in [&never, &older, &remote] {
        assert_eq!(processes.send_to(pid, Msg::Ping(0)), Err(SendError::NotHosted(pid.clone())), "{pid}");
        assert!(!processes.is_hosted(pid));
    }
    assert_eq!(processes.deliver_local(&older, Bytes::new()), Err(DeliveryError::NotHosted(older.clone())));
    assert_eq!(processes.exit(&never, ExitSignal::Kill), Err(SendError::NotHosted(never.clone())));
    processes.shutdown().await;
}

#[tokio::test]
async fn a_full_mailbox_refuses_sends_with_queue_saturated_and_counts_them() {
    let config = ProcessConfig { mailbox_capacity: 4, ..small_config() };
    let (processes, registry) = single_node("alpha", 1, config).await;
    let mut probe = spawn_probe(&processes).await;
    probe.process.send(Msg::Block).unwrap();
    assert_eq!(probe.next().await, Msg::Block);
    // The handler is blocked: the mailbox fills to exactly its capacity.
    for n in 0..4 {
        probe.process.send(Msg::Ping(n)).unwrap();
    }
    assert_eq!(probe.process.mailbox_len(), 4);
    let refused = probe.process.send(Msg::Ping(99)).unwrap_err();
    assert_eq!(refused, SendError::MailboxFull(probe.pid.clone()));
    assert_eq!(refused.admission(), "QueueSaturated");
    assert_eq!(processes.send_to(&probe.pid, Msg::Ping(99)), Err(SendError::MailboxFull(probe.pid.clone())));
    assert_eq!(
        processes.deliver_local(&probe.pid, Bytes::from(rmp_serde::to_vec(&Msg::Ping(99)).unwrap())),
        Err(DeliveryError::MailboxFull(probe.pid.clone()))
    );
    assert_eq!(metric(&registry, "cohort_process_mailbox_refused_total", &[]), 3.0);

    // Once the handler moves on, the admitted messages arrive in order and room comes back.
    probe.gate.add_permits(1);
    for n in 0..4 {
        assert_eq!(probe.next().await, Msg::Ping(n));
    }
    probe.flush(5).await;
    assert_eq!(probe.process.mailbox_len(), 0);
    processes.shutdown().await;
}

#[tokio::test]
async fn the_process_table_is_bounded() {
    let config = ProcessConfig { max_processes: 2, ..small_config() };
    let (processes, registry) = single_node("alpha", 1, config).await;
    let mut first = spawn_probe(&processes).await;
    let _second = spawn_probe(&processes).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let refused = processes.spawn(Probe { seen: tx, gate: Arc::new(Semaphore::new(0)) }, ()).await.unwrap_err();
    assert_eq!(refused, SpawnError::TableFull { max: 2 });
    assert_eq!(metric(&registry, "cohort_process_spawn_refused_total", &[]), 1.0);
    // An exit frees a place.
    first.process.send(Msg::Stop).unwrap();
    assert_eq!(first.next().await, Msg::Stop);
    eventually("first removed", || !processes.is_hosted(&first.pid)).await;
    let _third = spawn_probe(&processes).await;
    processes.shutdown().await;
}

/// How a test makes the target exit.
#[derive(Clone, Copy, Debug)]
enum ExitKind {
    StopsItself,
    HandlerError,
    HandlerPanic,
    Killed,
    ExitNormal,
    ExitError,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_kind_reaches_hooks_once_removes_the_process_and_downs_monitors_once() {
    let (processes, registry) = single_node("alpha", 1, small_config()).await;
    let recorder = Recorder::install(&processes);
    let mut watcher = spawn_probe(&processes).await;
    let cases = [
        (ExitKind::StopsItself, ExitReason::Normal),
        (ExitKind::HandlerError, ExitReason::Error("boom".into())),
        (ExitKind::HandlerPanic, ExitReason::Panic),
        (ExitKind::Killed, ExitReason::Killed),
        (ExitKind::ExitNormal, ExitReason::Normal),
        (ExitKind::ExitError, ExitReason::Error("asked to".into())),
    ];
    for (round, (kind, expected)) in cases.into_iter().enumerate() {
        let mut target = spawn_probe(&processes).await;
        let monitor = processes.monitor(&watcher.process, &target.pid).unwrap();
        assert_eq!(metric(&registry, "cohort_process_monitors", &[]), 1.0);
        match kind {
            ExitKind::StopsItself => target.process.send(Msg::Stop).unwrap(),
            ExitKind::HandlerError => target.process.send(Msg::Fail).unwrap(),
            ExitKind::HandlerPanic => target.process.send(Msg::Panic).unwrap(),
            ExitKind::Killed => {
                // Killed while blocked in its handler: post_stop never runs.
                target.process.send(Msg::Block).unwrap();
                assert_eq!(target.next().await, Msg::Block);
                processes.exit(&target.pid, ExitSignal::Kill).unwrap();
            }
            ExitKind::ExitNormal => processes.exit(&target.pid, ExitSignal::Normal).unwrap(),
            ExitKind::ExitError => processes.exit(&target.pid, ExitSignal::Error("asked to".into())).unwrap(),
        }
        let down = watcher.next_down().await;
        assert_eq!(down, Down { monitor, pid: target.pid.clone(), reason: expected.clone() }, "{kind:?}");
        // Hooks ran before the DOWN was delivered, after the process left the table.
        assert_eq!(recorder.exits_of(&target.pid), [expected], "{kind:?}");
        assert!(!recorder.was_hosted_during_hook(&target.pid), "{kind:?}");
        assert!(!processes.is_hosted(&target.pid));
        assert_eq!(processes.send_to(&target.pid, Msg::Ping(0)), Err(SendError::NotHosted(target.pid.clone())));
        assert_eq!(target.process.send(Msg::Ping(0)), Err(SendError::NotHosted(target.pid.clone())));
        assert_eq!(metric(&registry, "cohort_process_monitors", &[]), 0.0);

        // Run one more exit through the pipeline (so the target's backstop report has been handled
        // too), then check nothing was reported twice.
        let marker = spawn_probe(&processes).await;
        processes.exit(&marker.pid, ExitSignal::Normal).unwrap();
        eventually("marker exit", || !recorder.exits_of(&marker.pid).is_empty()).await;
        watcher.flush(round as u64).await;
        assert_eq!(recorder.exits_of(&target.pid).len(), 1, "{kind:?}");
    }
    assert_eq!(metric(&registry, "cohort_process_exits_total", &[("reason", "normal")]), 2.0 + 6.0);
    assert_eq!(metric(&registry, "cohort_process_exits_total", &[("reason", "error")]), 2.0);
    assert_eq!(metric(&registry, "cohort_process_exits_total", &[("reason", "panic")]), 1.0);
    assert_eq!(metric(&registry, "cohort_process_exits_total", &[("reason", "killed")]), 1.0);
    assert_eq!(processes.len(), 1);
    processes.shutdown().await;
    assert_eq!(recorder.exits_of(&watcher.pid), [ExitReason::Normal]);
    assert!(processes.is_empty());
    assert_eq!(metric(&registry, "cohort_processes", &[]), 0.0);
    recorder.host.lock().unwrap().take();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exits_of_many_processes_are_each_processed_exactly_once() {
    const PROCESSES: usize = 200;
    let (processes, registry) = single_node("alpha", 1, small_config()).await;
    let recorder = Recorder::install(&processes);
    let mut watcher = spawn_probe(&processes).await;
    let mut targets = Vec::new();
    let mut monitors = std::collections::HashMap::new();
    for _ in 0..PROCESSES {
        let target = spawn_probe(&processes).await;
        monitors.insert(processes.monitor(&watcher.process, &target.pid).unwrap(), target.pid.clone());
        targets.push(target);
    }
    // Exits of every kind, from several tasks at once, racing the monitors' DOWN deliveries.
    let mut tasks = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let processes = processes.clone();
        let (pid, process) = (target.pid.clone(), target.process.clone());
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => process.send(Msg::Panic).unwrap(),
                1 => process.send(Msg::Fail).unwrap(),
                2 => processes.exit(&pid, ExitSignal::Kill).unwrap(),
                _ => process.send(Msg::Stop).unwrap(),
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut downs = std::collections::HashMap::new();
    for _ in 0..PROCESSES {
        let down = watcher.next_down().await;
        assert_eq!(monitors.get(&down.monitor), Some(&down.pid));
        assert!(downs.insert(down.monitor, down.reason).is_none(), "two DOWNs for one monitor");
    }
    watcher.flush(0).await;
    eventually("every exit hooked", || recorder.exits.lock().unwrap().len() == PROCESSES).await;
    for target in &targets {
        assert_eq!(recorder.exits_of(&target.pid).len(), 1);
        assert!(!processes.is_hosted(&target.pid));
    }
    assert_eq!(processes.len(), 1);
    assert_eq!(metric(&registry, "cohort_process_monitors", &[]), 0.0);
    assert_eq!(metric(&registry, "cohort_process_exits_total", &[("reason", "panic")]), (PROCESSES / 4) as f64);
    assert_eq!(metric(&registry, "cohort_process_exits_total", &[("reason", "killed")]), (PROCESSES / 4) as f64);
    processes.shutdown().await;
    recorder.host.lock().unwrap().take();
}

#[tokio::test]
async fn demonitor_is_synchronous_and_a_dead_pid_yields_noproc() {
    let (processes, registry) = single_node("alpha", 1, small_config()).await;
    let mut watcher = spawn_probe(&processes).await;
    let mut target = spawn_probe(&processes).await;
    let kept = processes.monitor(&watcher.process, &target.pid).unwrap();
    let dropped = processes.monitor(&watcher.process, &target.pid).unwrap();
    assert_ne!(kept, dropped);
    assert!(processes.demonitor(dropped));
    assert!(!processes.demonitor(dropped));
    target.process.send(Msg::Stop).unwrap();
    assert_eq!(target.next().await, Msg::Stop);
    // All DOWNs of one exit are delivered together: the kept one arrives, the dropped one never.
    assert_eq!(watcher.next_down().await.monitor, kept);
    watcher.flush(1).await;
    assert!(!processes.demonitor(kept));

    // Monitoring a process that is gone, never existed, or belongs to an older incarnation.
    for pid in [target.pid.clone(), Pid::new(NodeId::new("alpha", 1), 999), Pid::new(NodeId::new("alpha", 0), 1)] {
        let monitor = processes.monitor(&watcher.process, &pid).unwrap();
        assert_eq!(watcher.next_down().await, Down { monitor, pid, reason: ExitReason::NoProc });
    }
    // Without a transport, a remote pid is unreachable.
    let remote = Pid::new(NodeId::new("beta", 1), 1);
    let monitor = processes.monitor(&watcher.process, &remote).unwrap();
    assert_eq!(watcher.next_down().await, Down { monitor, pid: remote, reason: ExitReason::NoConnection });
    assert_eq!(metric(&registry, "cohort_process_monitors", &[]), 0.0);
    processes.shutdown().await;
}

#[tokio::test]
async fn a_watcher_that_exits_is_unsubscribed() {
    let (processes, registry) = single_node("alpha", 1, small_config()).await;
    let mut watcher = spawn_probe(&processes).await;
    let target = spawn_probe(&processes).await;
    let monitor = processes.monitor(&watcher.process, &target.pid).unwrap();
    assert_eq!(metric(&registry, "cohort_process_monitors", &[]), 1.0);
    watcher.process.send(Msg::Stop).unwrap();
    assert_eq!(watcher.next().await, Msg::Stop);
    eventually("watcher removed", || !processes.is_hosted(&watcher.pid)).await;
    assert_eq!(metric(&registry, "cohort_process_monitors", &[]), 0.0);
    assert!(!processes.demonitor(monitor));
    // A dead watcher cannot monitor.
    assert_eq!(processes.monitor(&watcher.process, &target.pid), Err(MonitorError::NotHosted(watcher.pid.clone())));
    processes.shutdown().await;
}

#[tokio::test]
async fn monitors_are_bounded_per_process_and_per_node() {
    let config = ProcessConfig { max_monitors_per_process: 1, max_monitors_per_node: 2, ..small_config() };
    let (processes, registry) = single_node("alpha", 1, config).await;
    let w1 = spawn_probe(&processes).await;
    let w2 = spawn_probe(&processes).await;
    let w3 = spawn_probe(&processes).await;
    let t1 = spawn_probe(&processes).await;
    let t2 = spawn_probe(&processes).await;
    let t3 = spawn_probe(&processes).await;
    processes.monitor(&w1.process, &t1.pid).unwrap();
    assert_eq!(
        processes.monitor(&w1.process, &t2.pid),
        Err(MonitorError::ProcessLimit { pid: w1.pid.clone(), max: 1 })
    );
    assert_eq!(
        processes.monitor(&w2.process, &t1.pid),
        Err(MonitorError::ProcessLimit { pid: t1.pid.clone(), max: 1 })
    );
    processes.monitor(&w2.process, &t2.pid).unwrap();
    assert_eq!(processes.monitor(&w3.process, &t3.pid), Err(MonitorError::NodeLimit { max: 2 }));
    assert_eq!(metric(&registry, "cohort_process_monitor_refused_total", &[("reason", "process_limit")]), 2.0);
    assert_eq!(metric(&registry, "cohort_process_monitor_refused_total", &[("reason", "node_limit")]), 1.0);
    processes.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_every_process_through_the_pipeline_and_refuses_new_spawns() {
    let (processes, registry) = single_node("alpha", 1, small_config()).await;
    let recorder = Recorder::install(&processes);
    let mut blocked = spawn_probe(&processes).await;
    let idle = spawn_probe(&processes).await;
    blocked.process.send(Msg::Block).unwrap();
    assert_eq!(blocked.next().await, Msg::Block);
    processes.shutdown().await;
    assert!(processes.is_empty());
    assert_eq!(recorder.exits_of(&idle.pid), [ExitReason::Normal]);
    // Blocked in its handler, it ignores the stop and is killed after the grace.
    assert_eq!(recorder.exits_of(&blocked.pid), [ExitReason::Killed]);
    assert_eq!(metric(&registry, "cohort_processes", &[]), 0.0);
    let (tx, _rx) = mpsc::unbounded_channel();
    let refused = processes.spawn(Probe { seen: tx, gate: Arc::new(Semaphore::new(0)) }, ()).await.unwrap_err();
    assert_eq!(refused, SpawnError::Canceled);
    recorder.host.lock().unwrap().take();
}

#[tokio::test]
async fn many_nodes_in_one_test_process_stay_independent() {
    let mut nodes = Vec::new();
    for incarnation in 1..=3 {
        let (processes, registry) = single_node("same-name", incarnation, small_config()).await;
        let recorder = Recorder::install(&processes);
        nodes.push((processes, registry, recorder));
    }
    let mut probes = Vec::new();
    for (processes, _, _) in &nodes {
        probes.push(spawn_probe(processes).await);
    }
    // Same local number, different incarnations: different pids, each hosted by its node only.
    for (i, probe) in probes.iter().enumerate() {
        assert_eq!(probe.pid.local, 1);
        for (j, (processes, _, _)) in nodes.iter().enumerate() {
            assert_eq!(processes.is_hosted(&probe.pid), i == j);
        }
    }
    assert_eq!(nodes[0].0.send_to(&probes[1].pid, Msg::Ping(1)), Err(SendError::NotHosted(probes[1].pid.clone())));
    nodes[1].0.exit(&probes[1].pid, ExitSignal::Kill).unwrap();
    eventually("node 1's probe exited", || !nodes[1].0.is_hosted(&probes[1].pid)).await;
    assert_eq!(nodes[1].2.exits_of(&probes[1].pid), [ExitReason::Killed]);
    assert!(nodes[0].2.exits.lock().unwrap().is_empty());
    assert!(nodes[2].2.exits.lock().unwrap().is_empty());
    probes[0].process.send(Msg::Ping(0)).unwrap();
    assert_eq!(probes[0].next().await, Msg::Ping(0));
    for (processes, registry, recorder) in &nodes {
        processes.shutdown().await;
        assert_eq!(metric(registry, "cohort_process_spawned_total", &[]), 1.0);
        recorder.host.lock().unwrap().take();
    }
}

// ------------------------------------------------------------------------------------ remote tests

#[tokio::test]
async fn remote_send_arrives_and_a_wrong_type_is_counted_undecodable() {
    let (a, b) = pair().await;
    let mut on_b = spawn_probe(&b.processes).await;
    a.processes.send_to(&on_b.pid, Msg::Ping(42)).unwrap();
    assert_eq!(on_b.next().await, Msg::Ping(42));
    assert_eq!(metric(&a.registry, "cohort_process_remote_sends_total", &[("result", "queued")]), 1.0);

    // A payload of another type is dropped and counted on the receiving node; nothing panics.
    a.processes.send_to(&on_b.pid, vec![1u32, 2, 3]).unwrap();
    eventually("undecodable counted on b", || metric(&b.registry, "cohort_process_undecodable_total", &[]) == 1.0)
        .await;
    // A pid of b that does not exist: fire-and-forget, dropped and counted on b.
    a.processes.send_to(&Pid::new(b.processes.node().clone(), 999), Msg::Ping(1)).unwrap();
    eventually("not-hosted drop counted on b", || {
        metric(&b.registry, "cohort_process_inbound_dropped_total", &[("reason", "not_hosted")]) == 1.0
    })
    .await;
    // The mailbox still works, in order.
    a.processes.send_to(&on_b.pid, Msg::Ping(43)).unwrap();
    assert_eq!(on_b.next().await, Msg::Ping(43));

    // A node the transport does not know: NotHosted at the sender.
    let unknown = Pid::new(NodeId::new("zeta", 1), 1);
    assert_eq!(a.processes.send_to(&unknown, Msg::Ping(0)), Err(SendError::NotHosted(unknown.clone())));
    assert_eq!(metric(&a.registry, "cohort_process_remote_sends_total", &[("result", "not_hosted")]), 1.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn raw_frames_from_a_peer_are_checked_never_a_panic() {
    let (a, b) = pair().await;
    let mut on_b = spawn_probe(&b.processes).await;
    let garbage: [&[u8]; 4] = [&[], &[1, 2, 3], &[0xff; 40], &[0x93, 0x01, 0x02, 0x03]];
    for kind in 0..=6u8 {
        for payload in garbage {
            a.transport.send("b", Class::User, kind, Bytes::copy_from_slice(payload)).unwrap();
        }
    }
    a.processes.send_to(&on_b.pid, Msg::Ping(7)).unwrap();
    assert_eq!(on_b.next().await, Msg::Ping(7));
    assert!(metric(&b.registry, "cohort_process_inbound_dropped_total", &[("reason", "malformed")]) >= 20.0);
    assert!(b.processes.is_hosted(&on_b.pid));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_monitor_gets_down_across_nodes_and_node_down_yields_noconnection() {
    let (a, b) = pair().await;
    let recorder_b = Recorder::install(&b.processes);
    let mut watcher = spawn_probe(&a.processes).await;
    let mut target = spawn_probe(&b.processes).await;
    let other = spawn_probe(&b.processes).await;

    // DOWN with the exit reason crosses from b to a, once.
    let monitor = a.processes.monitor(&watcher.process, &target.pid).unwrap();
    eventually("b holds the remote watch", || metric(&b.registry, "cohort_process_monitors", &[]) == 1.0).await;
    target.process.send(Msg::Fail).unwrap();
    assert_eq!(target.next().await, Msg::Fail);
    let down = watcher.next_down().await;
    assert_eq!(down, Down { monitor, pid: target.pid.clone(), reason: ExitReason::Error("boom".into()) });
    assert_eq!(recorder_b.exits_of(&target.pid).len(), 1);
    assert_eq!(metric(&a.registry, "cohort_process_monitors", &[]), 0.0);
    assert_eq!(metric(&b.registry, "cohort_process_monitors", &[]), 0.0);

    // A remote target that is already dead: NoProc from its node.
    let monitor = a.processes.monitor(&watcher.process, &target.pid).unwrap();
    assert_eq!(watcher.next_down().await, Down { monitor, pid: target.pid.clone(), reason: ExitReason::NoProc });

    // Demonitor of a remote monitor: b forgets it too.
    let monitor = a.processes.monitor(&watcher.process, &other.pid).unwrap();
    eventually("b holds the remote watch", || metric(&b.registry, "cohort_process_monitors", &[]) == 1.0).await;
    assert!(a.processes.demonitor(monitor));
    eventually("b forgot the remote watch", || metric(&b.registry, "cohort_process_monitors", &[]) == 0.0).await;

    // b goes down: every monitor on b's processes fires with NoConnection, and sends are refused.
    let monitor = a.processes.monitor(&watcher.process, &other.pid).unwrap();
    a.processes.node_down(b.processes.node());
    assert_eq!(watcher.next_down().await, Down { monitor, pid: other.pid.clone(), reason: ExitReason::NoConnection });
    assert_eq!(a.processes.send_to(&other.pid, Msg::Ping(0)), Err(SendError::NotHosted(other.pid.clone())));
    let monitor = a.processes.monitor(&watcher.process, &other.pid).unwrap();
    assert_eq!(watcher.next_down().await, Down { monitor, pid: other.pid.clone(), reason: ExitReason::NoConnection });
    watcher.flush(1).await;
    assert_eq!(metric(&a.registry, "cohort_process_monitors", &[]), 0.0);
    recorder_b.host.lock().unwrap().take();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn remote_watcher_that_exits_makes_the_target_node_forget_it() {
    let (a, b) = pair().await;
    let mut watcher = spawn_probe(&a.processes).await;
    let target = spawn_probe(&b.processes).await;
    let _monitor: MonitorRef = a.processes.monitor(&watcher.process, &target.pid).unwrap();
    eventually("b holds the remote watch", || metric(&b.registry, "cohort_process_monitors", &[]) == 1.0).await;
    watcher.process.send(Msg::Stop).unwrap();
    assert_eq!(watcher.next().await, Msg::Stop);
    eventually("b forgot the remote watch", || metric(&b.registry, "cohort_process_monitors", &[]) == 0.0).await;
    assert_eq!(metric(&a.registry, "cohort_process_monitors", &[]), 0.0);
    a.stop().await;
    b.stop().await;
}
