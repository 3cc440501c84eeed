//! Membership wiring on real UDP sockets (127.0.0.1, port 0), several nodes in one process.
//!
//! Every assertion polls with a deadline; no bare sleep is an assertion. Timings use the
//! production defaults so the failure-detection bound (SPEC 5.1: down everywhere in <= 5 s) is
//! what is tested.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use cohort_cluster::auth::ClusterSecret;
use cohort_cluster::faults::{Direction, FaultRule, FaultRules};
use cohort_cluster::membership::{Membership, MembershipConfig, MembershipEvents};
use cohort_cluster::secure::Keyring;
use cohort_cluster::{FaultInjector, MemberAddrs, MemberInfo, MemberState, MembershipEvent, NodeId};

const CLUSTER: &str = "test";

/// SPEC 5.1: a killed node is down on every other node within this bound.
const DETECTION_BOUND: Duration = Duration::from_secs(5);

/// Generous bound for a cluster to form (joins take one retry period, about 1 s).
const FORM_BOUND: Duration = Duration::from_secs(10);

fn secret(byte: u8) -> ClusterSecret {
    ClusterSecret::from_bytes(&[byte; 32]).unwrap()
}

struct Node {
    name: String,
    membership: Membership,
    registry: prometheus::Registry,
    faults: FaultInjector,
    gossip: std::net::SocketAddr,
}

impl Node {
    fn view(&self) -> BTreeMap<String, MemberState> {
        self.membership.members().iter().map(|row| (row.info.id.name.clone(), row.state)).collect()
    }

    fn state_of(&self, name: &str) -> Option<MemberState> {
        self.view().get(name).copied()
    }

    fn counter(&self, family: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()).collect::<Vec<_>>())
            .sum()
    }

    fn seed(&self) -> String {
        self.gossip.to_string()
    }

    /// One series of a counter family.
    fn counter_with(&self, family: &str, label: &str, value: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == label && l.value() == value))
            .map(|m| m.get_counter().get_value())
            .sum()
    }
}

async fn start_node(
    name: &str,
    incarnation: u64,
    seeds: Vec<String>,
    secret: ClusterSecret,
    config: MembershipConfig,
) -> Node {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gossip = socket.local_addr().unwrap();
    let info = MemberInfo {
        id: NodeId::new(name, incarnation),
        addrs: MemberAddrs { gossip, internode: gossip, http: gossip },
        raft_eligible: true,
        failure_domain: String::new(),
    };
    let registry = prometheus::Registry::new();
    let faults = FaultInjector::enabled();
    let config = MembershipConfig { seeds, ..config };
    let membership =
        Membership::start(info, Keyring::new(CLUSTER, &secret, None), socket, faults.clone(), config, &registry)
            .await
            .unwrap();
    Node { name: name.to_owned(), membership, registry, faults, gossip }
}

/// Starts `count` nodes n0..n{count-1}; every node after the first seeds from n0.
async fn start_cluster(prefix: &str, count: usize) -> Vec<Node> {
    let first = start_node(&format!("{prefix}0"), 1, vec![], secret(1), MembershipConfig::default()).await;
    let seed = first.seed();
    let mut nodes = vec![first];
    for i in 1..count {
        nodes.push(
            start_node(&format!("{prefix}{i}"), 1, vec![seed.clone()], secret(1), MembershipConfig::default()).await,
        );
    }
    nodes
}

/// Polls `condition` every 20 ms until it holds or `bound` passes; returns the time it took.
async fn eventually(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "timed out after {bound:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sees_all(node: &Node, names: &[&str], state: MemberState) -> bool {
    names.iter().all(|name| node.state_of(name) == Some(state))
}

fn names(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.name.clone()).collect()
}

async fn wait_formed(nodes: &[Node]) -> Duration {
    let all = names(nodes);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    eventually("every node sees every member alive", FORM_BOUND, || {
        nodes.iter().all(|n| n.view().len() == all.len() && sees_all(n, &all, MemberState::Alive))
    })
    .await
}

/// Collects events until `done` holds for the list or the bound passes.
async fn collect_events(
    events: &mut MembershipEvents,
    bound: Duration,
    done: impl Fn(&[MembershipEvent]) -> bool,
) -> Vec<MembershipEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(error)) => panic!("event stream failed: {error}; seen {seen:?}"),
            Err(_) => panic!("timed out waiting for events; seen {seen:?}"),
        }
    }
    seen
}

fn partition(node: &Node, peers: &[&str]) {
    let rules = peers
        .iter()
        .map(|peer| {
            let mut rule = FaultRule::new(*peer, Direction::Both);
            rule.drop = 1.0;
            rule
        })
        .collect();
    node.faults.install(FaultRules { rules }).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_and_five_nodes_form_a_cluster_with_everyone_alive() {
    let three = start_cluster("t", 3).await;
    let took = wait_formed(&three).await;
    eprintln!("3 nodes formed in {took:?}");
    for node in &three {
        assert!(node.membership.is_joined());
        let own = node.membership.members().iter().filter(|row| row.is_self).count();
        assert_eq!(own, 1, "each view lists itself once");
        assert_eq!(node.counter("cohort_gossip_auth_failures_total"), 0.0);
    }
    let five = start_cluster("f", 5).await;
    let took = wait_formed(&five).await;
    eprintln!("5 nodes formed in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_down_everywhere_within_five_seconds() {
    let mut nodes = start_cluster("k", 4).await;
    wait_formed(&nodes).await;
    let victim = nodes.pop().unwrap();
    let victim_name = victim.name.clone();
    // Dropping the last handle aborts the actor and closes its socket: a crash, no leave.
    drop(victim);
    let took = eventually("the killed node is down on every other node", DETECTION_BOUND, || {
        nodes.iter().all(|n| n.state_of(&victim_name) == Some(MemberState::Down))
    })
    .await;
    eprintln!("killed node detected down everywhere in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_shows_as_left_everywhere() {
    let nodes = start_cluster("l", 4).await;
    wait_formed(&nodes).await;
    let mut events = nodes[0].membership.subscribe();
    let started = Instant::now();
    nodes[3].membership.leave().await;
    assert!(started.elapsed() < Duration::from_secs(3), "leave is bounded");
    assert_eq!(nodes[3].state_of("l3"), Some(MemberState::Left), "the leaver shows itself left");
    let took = eventually("the leaver is left on every other node", Duration::from_secs(3), || {
        nodes[..3].iter().all(|n| n.state_of("l3") == Some(MemberState::Left))
    })
    .await;
    eprintln!("leave seen everywhere in {took:?}");
    let seen = collect_events(&mut events, Duration::from_secs(2), |seen| !seen.is_empty()).await;
    assert!(matches!(&seen[0], MembershipEvent::Left(info) if info.id.name == "l3"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_splits_the_views_and_healing_reunites_them() {
    let nodes = start_cluster("p", 4).await;
    wait_formed(&nodes).await;
    let (left, right) = (["p0", "p1"], ["p2", "p3"]);
    for node in &nodes {
        partition(node, if left.contains(&node.name.as_str()) { &right } else { &left });
    }
    let took = eventually("each side sees the other down", Duration::from_secs(10), || {
        nodes.iter().all(|n| {
            let other: &[&str] = if left.contains(&n.name.as_str()) { &right } else { &left };
            let own: &[&str] = if left.contains(&n.name.as_str()) { &left } else { &right };
            sees_all(n, other, MemberState::Down) && sees_all(n, own, MemberState::Alive)
        })
    })
    .await;
    eprintln!("partition split the views in {took:?}");
    for node in &nodes {
        node.faults.clear().unwrap();
    }
    let took = wait_formed(&nodes).await;
    eprintln!("partition healed in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_the_wrong_secret_never_joins_and_is_counted() {
    let nodes = start_cluster("s", 2).await;
    wait_formed(&nodes).await;
    let intruder = start_node("s-intruder", 1, vec![nodes[0].seed()], secret(2), MembershipConfig::default()).await;
    eventually("the seed counts auth failures", Duration::from_secs(5), || {
        nodes[0].counter("cohort_gossip_auth_failures_total") > 0.0
    })
    .await;
    // Give it a few join attempts (1 s apart); it must stay alone and unseen throughout.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert!(!intruder.membership.is_joined());
        assert_eq!(intruder.view().len(), 1);
        assert!(nodes.iter().all(|n| n.state_of("s-intruder").is_none()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A different cluster name with the same secret is refused the same way.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gossip = socket.local_addr().unwrap();
    let info = MemberInfo {
        id: NodeId::new("s-other-cluster", 1),
        addrs: MemberAddrs { gossip, internode: gossip, http: gossip },
        raft_eligible: false,
        failure_domain: String::new(),
    };
    let config = MembershipConfig { seeds: vec![nodes[1].seed()], ..MembershipConfig::default() };
    let registry = prometheus::Registry::new();
    let other = Membership::start(
        info,
        Keyring::new("another-cluster", &secret(1), None),
        socket,
        FaultInjector::disabled(),
        config,
        &registry,
    )
    .await
    .unwrap();
    eventually("the other cluster's datagrams are refused", Duration::from_secs(5), || {
        nodes[1].counter("cohort_gossip_auth_failures_total") > 0.0
    })
    .await;
    assert!(!other.is_joined());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_replaces_its_old_incarnation() {
    let mut nodes = start_cluster("r", 3).await;
    wait_formed(&nodes).await;
    let mut events = nodes[0].membership.subscribe();
    let old = nodes.pop().unwrap();
    drop(old);
    let restarted = start_node("r2", 2, vec![nodes[0].seed()], secret(1), MembershipConfig::default()).await;
    nodes.push(restarted);
    eventually("the new incarnation is alive everywhere", FORM_BOUND, || {
        nodes.iter().all(|n| {
            n.membership
                .members()
                .iter()
                .any(|row| row.info.id == NodeId::new("r2", 2) && row.state == MemberState::Alive)
                && n.view().len() == 3
        })
    })
    .await;
    let seen = collect_events(&mut events, Duration::from_secs(5), |seen| {
        seen.iter().any(|e| matches!(e, MembershipEvent::Up(info) if info.id == NodeId::new("r2", 2)))
    })
    .await;
    let down_old = seen.iter().position(|e| matches!(e, MembershipEvent::Down(i) if i.id == NodeId::new("r2", 1)));
    let up_new = seen.iter().position(|e| matches!(e, MembershipEvent::Up(i) if i.id == NodeId::new("r2", 2)));
    assert!(down_old.is_some() && down_old < up_new, "old run down before new run up: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_links_cause_no_false_positive() {
    let nodes = start_cluster("d", 4).await;
    wait_formed(&nodes).await;
    // 200 ms +/- 100 ms per direction between d0 and every peer.
    let rules = ["d1", "d2", "d3"]
        .iter()
        .map(|peer| {
            let mut rule = FaultRule::new(*peer, Direction::Both);
            rule.delay_ms = 100;
            rule.jitter_ms = 200;
            rule
        })
        .collect();
    nodes[0].faults.install(FaultRules { rules }).unwrap();
    let mut events: Vec<MembershipEvents> = nodes.iter().map(|n| n.membership.subscribe()).collect();
    let all = ["d0", "d1", "d2", "d3"];
    let watch_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch_until {
        for node in &nodes {
            let view = node.view();
            assert!(
                view.values().all(|state| matches!(state, MemberState::Alive | MemberState::Suspect)),
                "{} declared someone down under delay: {view:?}",
                node.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (node, events) in nodes.iter().zip(&mut events) {
        while let Some(event) = events.try_recv().unwrap() {
            assert!(matches!(event, MembershipEvent::Up(_)), "{}: unexpected {event:?}", node.name);
        }
        assert!(sees_all(node, &all, MemberState::Alive) || node.view().len() == 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order() {
    let first = start_node("e0", 1, vec![], secret(1), MembershipConfig::default()).await;
    let mut events = first.membership.subscribe();
    let second = start_node("e1", 1, vec![first.seed()], secret(1), MembershipConfig::default()).await;
    let third = start_node("e2", 1, vec![first.seed()], secret(1), MembershipConfig::default()).await;
    let ups = collect_events(&mut events, FORM_BOUND, |seen| seen.len() >= 2).await;
    // Everyone must know everyone before the leave, or the leaver may have no peer to tell.
    let all = ["e0", "e1", "e2"];
    eventually("all three see each other alive", FORM_BOUND, || {
        [&first, &second, &third].iter().all(|n| n.view().len() == 3 && sees_all(n, &all, MemberState::Alive))
    })
    .await;
    let mut up_names: Vec<&str> = ups
        .iter()
        .map(|e| match e {
            MembershipEvent::Up(info) => info.id.name.as_str(),
            other => panic!("expected only ups, got {other:?}"),
        })
        .collect();
    up_names.sort_unstable();
    assert_eq!(up_names, ["e1", "e2"]);
    third.membership.leave().await;
    drop(second);
    let rest = collect_events(&mut events, Duration::from_secs(8), |seen| seen.len() >= 2).await;
    assert!(matches!(&rest[0], MembershipEvent::Left(info) if info.id.name == "e2"), "{rest:?}");
    assert!(matches!(&rest[1], MembershipEvent::Down(info) if info.id.name == "e1"), "{rest:?}");
}

// ---------------------------------------------------------------------------------------------
// Measurements (ignored: they take minutes). Run with
// cargo test -p cohort-cluster --test membership -- --ignored --nocapture --test-threads 1
// ---------------------------------------------------------------------------------------------

/// Samples every view every 20 ms for `window`; returns (suspect sightings, down-or-left sightings).
async fn watch_for_suspicion(nodes: &[Node], window: Duration) -> (usize, usize) {
    let (mut suspects, mut downs) = (0, 0);
    let until = Instant::now() + window;
    while Instant::now() < until {
        for node in nodes {
            for state in node.view().values() {
                match state {
                    MemberState::Suspect => suspects += 1,
                    MemberState::Down | MemberState::Left => downs += 1,
                    MemberState::Alive => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (suspects, downs)
}

fn delay_everything_from(node: &Node, peers: &[String]) {
    let rules = peers
        .iter()
        .filter(|peer| **peer != node.name)
        .map(|peer| {
            let mut rule = FaultRule::new(peer.as_str(), Direction::Both);
            rule.delay_ms = 100;
            rule.jitter_ms = 200;
            rule
        })
        .collect();
    node.faults.install(FaultRules { rules }).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: about 80 s"]
async fn measure_detection_time() {
    let mut samples = Vec::new();
    for trial in 0..20 {
        let mut nodes = start_cluster(&format!("m{trial}x"), 5).await;
        wait_formed(&nodes).await;
        let victim = nodes.pop().unwrap();
        let name = victim.name.clone();
        drop(victim);
        let took = eventually("down everywhere", Duration::from_secs(30), || {
            nodes.iter().all(|n| n.state_of(&name) == Some(MemberState::Down))
        })
        .await;
        samples.push(took);
    }
    samples.sort();
    eprintln!(
        "detection (5 nodes, 20 kills): min {:?} median {:?} max {:?}",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: about 60 s"]
async fn measure_false_positives_under_delay() {
    let nodes = start_cluster("fd", 5).await;
    wait_formed(&nodes).await;
    delay_everything_from(&nodes[0], &names(&nodes));
    let (suspects, downs) = watch_for_suspicion(&nodes, Duration::from_secs(60)).await;
    eprintln!("200 +/- 100 ms delay on one of 5 nodes, 60 s: {suspects} suspect sightings, {downs} down sightings");
    assert_eq!(downs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: about 45 s"]
async fn measure_false_positives_under_cpu_saturation() {
    let nodes = start_cluster("fc", 5).await;
    wait_formed(&nodes).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four spinning threads on a 2-core machine: the runtime's workers get a fraction of a core.
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let (suspects, downs) = watch_for_suspicion(&nodes, Duration::from_secs(40)).await;
    let factors: Vec<String> = nodes.iter().map(|n| format!("{:.2}", n.membership.local_health_factor())).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    eprintln!(
        "4 spinning threads on 2 cores, 5 nodes, 40 s: {suspects} suspect sightings, {downs} down sightings, \
         health factors at the end {factors:?}"
    );
    assert_eq!(downs, 0);
}

/// Wire security (issue 14): a gossip datagram sealed with the cluster's key is accepted once;
/// the same datagram again is refused as `replayed`, one sent a minute ago as `stale`, one
/// altered in flight as `bad_tag`, and each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stale_and_altered_gossip_datagrams_are_refused_and_counted() {
    let node = start_node("g-target", 1, Vec::new(), secret(1), MembershipConfig::default()).await;
    let keys = Keyring::new(CLUSTER, &secret(1), None);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let refused = |reason: &str| node.counter_with("cohort_gossip_auth_failures_total", "reason", reason);

    let captured = cohort_cluster::secure::seal_datagram(&keys, now_ms, b"\x01\x00\x01x", &mut rand::rng());
    attacker.send_to(&captured, node.gossip).unwrap();
    attacker.send_to(&captured, node.gossip).unwrap();
    eventually("the replay is refused", Duration::from_secs(5), || refused("replayed") == 1.0).await;

    let old = cohort_cluster::secure::seal_datagram(&keys, now_ms - 60_000, b"\x01\x00\x01x", &mut rand::rng());
    attacker.send_to(&old, node.gossip).unwrap();
    eventually("the old datagram is refused", Duration::from_secs(5), || refused("stale") == 1.0).await;

    let mut altered = cohort_cluster::secure::seal_datagram(&keys, now_ms, b"\x01\x00\x01x", &mut rand::rng());
    let last = altered.len() - 1;
    altered[last] ^= 1;
    attacker.send_to(&altered, node.gossip).unwrap();
    eventually("the altered datagram is refused", Duration::from_secs(5), || refused("bad_tag") == 1.0).await;
    assert_eq!(node.view().len(), 1, "nothing reached membership");
}
