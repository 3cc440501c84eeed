//! The consistent name tier on real `cohort node` processes, through the admin API (SPEC 7, 8,
//! 9.2): leader election and the voter ladder, registration visible everywhere with one fencing
//! token, first-committed-wins races, isolation (no silent downgrade), leader loss, a durable
//! restart (`RestartState::Recovered`), stale fencing tokens, a removed node's names, Strong reads
//! on followers, and composed faults (a follower partition, the heal, then a leader crash).

mod common;

use std::time::Duration;

use common::{Cluster, get, metric_sum, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "consistent-test-token-0123456789";

/// Elections, ladder steps and SWIM failure detection take seconds; CI runs several clusters at
/// once on 2 cores.
const WITHIN: Duration = Duration::from_secs(60);

fn config_file(storage: &str) -> String {
    let dir = std::env::temp_dir().join(format!("cohort-consistent-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, format!("[raft]\nstorage = \"{storage}\"\n")).unwrap();
    path.display().to_string()
}

async fn cluster(prefix: &str, storage: &str) -> Cluster {
    cluster_of(prefix, 3, storage).await
}

async fn cluster_of(prefix: &str, n: usize, storage: &str) -> Cluster {
    let config = config_file(storage);
    let c = common::chaos_cluster_with(prefix, n, TOKEN, &["--config", &config]).await;
    wait_for_voters(&c.urls, n.min(5)).await;
    c
}

async fn post(url: &str, path: &str, body: Value) -> (u16, Value) {
    common::post_json(url, path, TOKEN, body).await
}

async fn raft(url: &str) -> Value {
    get(url, "/admin/raft").await.json()
}

/// Waits until every node in `urls` reports the same leader and `voters` voters; returns the
/// leader's name.
async fn wait_for_voters(urls: &[String], voters: usize) -> String {
    wait_for(WITHIN, &format!("one leader and {voters} voters on every node"), || async {
        let mut leader: Option<String> = None;
        for u in urls {
            let r = raft(u).await;
            let this = r["leader"].as_str()?.to_string();
            if r["voters"].as_array()?.len() != voters || leader.as_ref().is_some_and(|l| *l != this) {
                return None;
            }
            leader = Some(this);
        }
        leader
    })
    .await
}

fn index_of(c: &Cluster, name: &str) -> usize {
    name.trim_start_matches('n').parse::<usize>().unwrap_or_else(|_| panic!("node name {name}")).min(c.urls.len() - 1)
}

async fn spawn(url: &str) -> String {
    let (status, j) = post(url, "/admin/probe/spawn", json!({ "count": 1 })).await;
    assert_eq!(status, 200, "{j}");
    j["pids"][0].as_str().unwrap().to_string()
}

async fn register(url: &str, name: &str, pid: &str) -> (u16, Value) {
    post(url, "/admin/probe/register", json!({"tier": "consistent", "name": name, "pid": pid})).await
}

/// The consistent lookup of `name` on `url` at `freshness` (status, body).
async fn lookup(url: &str, name: &str, freshness: &str) -> (u16, Value) {
    let a = get(url, &format!("/admin/registry/lookup/{name}?tier=consistent&freshness={freshness}")).await;
    (a.status, a.json())
}

async fn wait_visible(url: &str, name: &str, pid: &str, token: u64) {
    wait_for(WITHIN, &format!("{name} -> {pid} at token {token} on {url}"), || async {
        let (status, j) = lookup(url, name, "best_effort").await;
        (status == 200 && j["pid"] == pid && j["fence_token"] == token).then_some(())
    })
    .await;
}

async fn wait_gone(url: &str, name: &str) {
    wait_for(WITHIN, &format!("{name} gone on {url}"), || async {
        (lookup(url, name, "best_effort").await.0 == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_name_registered_on_a_follower_is_visible_everywhere_with_one_token() {
    let c = cluster("consistent-visible", "memory").await;
    let leader = wait_for_voters(&c.urls, 3).await;
    let follower = (0..3).find(|i| format!("n{i}") != leader).unwrap();
    let pid = spawn(&c.urls[follower]).await;
    let (status, j) = register(&c.urls[follower], "svc", &pid).await;
    assert_eq!(status, 200, "{j}");
    let token = j["fence_token"].as_u64().expect("a fencing token");
    assert!(token > 0);
    // Read-your-writes on the writing node at once, at Bounded freshness.
    let (status, j) = lookup(&c.urls[follower], "svc", "bounded").await;
    assert_eq!((status, j["fence_token"].as_u64()), (200, Some(token)), "{j}");
    assert_eq!(j["witness"]["served_freshness"], "bounded");
    for u in &c.urls {
        wait_visible(u, "svc", &pid, token).await;
    }
    // Strong is served by the leader and by a follower (forwarded ReadIndex, answered from the
    // follower's own view), with the same token and a witness that says who served it.
    let leader_url = &c.urls[index_of(&c, &leader)];
    let (status, j) = lookup(leader_url, "svc", "strong").await;
    assert_eq!((status, j["fence_token"].as_u64()), (200, Some(token)), "{j}");
    assert_eq!((j["witness"]["served_by_leader"].as_bool(), j["witness"]["root_lag"].as_u64()), (Some(true), Some(0)));
    let (status, j) = lookup(&c.urls[follower], "svc", "strong").await;
    assert_eq!((status, j["fence_token"].as_u64()), (200, Some(token)), "{j}");
    assert_eq!(j["witness"]["served_by_leader"].as_bool(), Some(false), "{j}");
    assert_eq!(j["witness"]["served_freshness"], "strong", "{j}");
    assert!(j["witness"]["served_root_token"]["index"].as_u64().unwrap() >= token, "{j}");

    // The listing, the planes and the metrics agree.
    let listed = get(&c.urls[0], "/admin/registry/consistent").await.json();
    assert_eq!(listed["names"], json!([{"name": "svc", "pid": pid, "fence_token": token}]));
    let planes = get(&c.urls[follower], "/admin/planes").await.json();
    assert_eq!(planes["execution"]["restart_state"]["state"], "clean");
    assert!(planes["execution"]["admission"]["Accepted"].as_u64().unwrap() >= 1, "{planes}");
    assert!(planes["execution"]["outcomes"]["applied"].as_u64().unwrap() >= 1, "{planes}");
    assert!(planes["control"]["root_token"]["index"].as_u64().unwrap() >= token, "{planes}");
    let metrics = get(&c.urls[follower], "/metrics").await.body;
    assert!(metric_sum(&metrics, "cohort_raft_term") >= 1.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "cohort_registry_fence_rejections_total"), 0.0);
    common::promtool_check(&metrics);
    // /livez passes with the raft check on a voter.
    let live = get(&c.urls[follower], "/livez").await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert!(live.body.contains("\"raft\""), "{}", live.body);

    // Owner exit removes the name everywhere (a committed RemoveByPid).
    assert_eq!(post(&c.urls[follower], "/admin/probe/exit", json!({"pids": [pid], "reason": "kill"})).await.0, 200);
    for u in &c.urls {
        wait_gone(u, "svc").await;
    }
}

#[tokio::test]
async fn two_concurrent_registrations_of_one_name_exactly_one_wins() {
    let c = cluster("consistent-race", "memory").await;
    let (a, b) = (spawn(&c.urls[1]).await, spawn(&c.urls[2]).await);
    let (first, second) = tokio::join!(register(&c.urls[1], "lock", &a), register(&c.urls[2], "lock", &b));
    let outcomes = [(first.0, first.1.clone()), (second.0, second.1.clone())];
    let winners: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 200).collect();
    let losers: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!((winners.len(), losers.len()), (1, 1), "{outcomes:?}");
    assert_eq!(losers[0].1["error"], "AlreadyRegistered", "{outcomes:?}");
    let token = winners[0].1["fence_token"].as_u64().unwrap();
    let winner_pid = if first.0 == 200 { &a } else { &b };
    for u in &c.urls {
        wait_visible(u, "lock", winner_pid, token).await;
    }
    // A retry by the loser is refused the same way; the winner's own retry keeps its token.
    let loser_pid = if first.0 == 200 { (&c.urls[2], &b) } else { (&c.urls[1], &a) };
    let (status, j) = register(loser_pid.0, "lock", loser_pid.1).await;
    assert_eq!((status, j["error"].as_str()), (409, Some("AlreadyRegistered")), "{j}");
    let winner_url = if first.0 == 200 { &c.urls[1] } else { &c.urls[2] };
    let (status, j) = register(winner_url, "lock", winner_pid).await;
    assert_eq!((status, j["fence_token"].as_u64()), (200, Some(token)), "{j}");
    // SPEC 7: the eventual tier refuses a name the consistent tier holds.
    let other = spawn(&c.urls[0]).await;
    let (status, j) =
        post(&c.urls[0], "/admin/probe/register", json!({"tier": "eventual", "name": "lock", "pid": other})).await;
    assert_eq!((status, j["error"].as_str()), (409, Some("AlreadyRegistered")), "{j}");
}

#[tokio::test]
async fn an_isolated_node_refuses_strong_and_bounded_and_serves_best_effort_marked_stale() {
    let c = cluster("consistent-isolated", "memory").await;
    let leader = wait_for_voters(&c.urls, 3).await;
    let pid = spawn(&c.urls[0]).await;
    let (status, j) = register(&c.urls[0], "cfg", &pid).await;
    assert_eq!(status, 200, "{j}");
    let token = j["fence_token"].as_u64().unwrap();
    let victim = (0..3).find(|i| format!("n{i}") != leader).unwrap();
    for u in &c.urls {
        wait_visible(u, "cfg", &pid, token).await;
    }
    // Cut the victim off from both peers, gossip and internode alike.
    let peers: Vec<Value> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| json!({"peer": format!("n{i}"), "direction": "both", "drop": 1.0}))
        .collect();
    let (status, j) = post(&c.urls[victim], "/admin/faults", json!({ "rules": peers })).await;
    assert_eq!(status, 200, "{j}");
    let url = &c.urls[victim];
    let mode = wait_for(WITHIN, "the victim notices it lost the quorum", || async {
        let planes = get(url, "/admin/planes").await.json();
        let mode = planes["control"]["degraded_mode"].as_str()?.to_string();
        matches!(mode.as_str(), "view_only" | "root_unavailable").then_some(mode)
    })
    .await;
    // No silent downgrade: Strong and Bounded are refused with a reason...
    let (status, j) = lookup(url, "cfg", "strong").await;
    assert_eq!(status, 503, "{j}");
    assert!(matches!(j["error"].as_str(), Some("Unavailable" | "NotLeader")), "{j}");
    let (status, j) = lookup(url, "cfg", "bounded").await;
    assert_eq!((status, j["error"].as_str()), (503, Some("Unavailable")), "{j}");
    // ...while BestEffort answers from the local view and says it is degraded.
    let (status, j) = lookup(url, "cfg", "best_effort").await;
    assert_eq!((status, j["pid"].as_str(), j["fence_token"].as_u64()), (200, Some(pid.as_str()), Some(token)), "{j}");
    let served_mode = j["witness"]["degraded_mode"].as_str().unwrap();
    assert!(matches!(served_mode, "view_only" | "root_unavailable"), "{j} (planes said {mode})");
    // The gauges say so too, so an alert can fire on it (deploy/prometheus, CohortNodeWithoutQuorum).
    let m = get(url, "/metrics").await.body;
    let cut_off = metric_sum(&m, "cohort_degraded_mode{mode=\"view_only\"}")
        + metric_sum(&m, "cohort_degraded_mode{mode=\"root_unavailable\"}");
    assert_eq!((cut_off, metric_sum(&m, "cohort_degraded_mode")), (1.0, 1.0), "{m}");
    assert_eq!(j["witness"]["served_freshness"], "best_effort");
    // Admission during failover: a write on the cut-off node is answered within request_timeout
    // (5 s, plus a tick and the HTTP hop) with a typed refusal, never later.
    let local = spawn(url).await;
    let asked = std::time::Instant::now();
    let (status, j) = register(url, "from-the-cut-off-node", &local).await;
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(6_500), "answered after {took:?}: {j}");
    assert!(
        matches!((status, j["error"].as_str()), (503, Some("NotLeader")) | (504, Some("TimedOut"))),
        "{status} {j}"
    );
    // The majority side keeps committing.
    let majority = (0..3).find(|i| *i != victim).unwrap();
    let other = spawn(&c.urls[majority]).await;
    wait_for(WITHIN, "a write on the majority side", || async {
        (register(&c.urls[majority], "after-cut", &other).await.0 == 200).then_some(())
    })
    .await;
    let (status, _) = lookup(url, "after-cut", "best_effort").await;
    assert_eq!(status, 404, "the isolated node cannot have seen the new name");
}

#[tokio::test]
async fn killing_the_leader_elects_a_new_one_and_writes_continue() {
    let mut c = cluster("consistent-leader-loss", "memory").await;
    let leader = wait_for_voters(&c.urls, 3).await;
    let dead = index_of(&c, &leader);
    c.procs[dead].signal(libc::SIGKILL);
    c.procs[dead].wait_exit(Duration::from_secs(10)).await;
    let alive: Vec<String> = (0..3).filter(|i| *i != dead).map(|i| c.urls[i].clone()).collect();
    // A write right after the kill (its forward may be lost with the dead leader) is answered
    // within request_timeout: committed, or a typed refusal; never later (issue 11).
    let early = spawn(&alive[0]).await;
    let asked = std::time::Instant::now();
    let (status, j) = register(&alive[0], "right-after-the-kill", &early).await;
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(6_500), "answered after {took:?}: {j}");
    assert!(
        matches!((status, j["error"].as_str()), (200, _) | (503, Some("NotLeader")) | (504, Some("TimedOut"))),
        "{status} {j}"
    );
    let new_leader = wait_for(WITHIN, "a new leader among the survivors", || async {
        let mut seen: Option<String> = None;
        for u in &alive {
            let l = raft(u).await["leader"].as_str()?.to_string();
            if l == leader || seen.as_ref().is_some_and(|s| *s != l) {
                return None;
            }
            seen = Some(l);
        }
        seen
    })
    .await;
    assert_ne!(new_leader, leader);
    let pid = spawn(&alive[0]).await;
    let token = wait_for(WITHIN, "a write after the leader loss", || async {
        let (status, j) = register(&alive[0], "after-loss", &pid).await;
        (status == 200).then(|| j["fence_token"].as_u64()).flatten()
    })
    .await;
    for u in &alive {
        wait_visible(u, "after-loss", &pid, token).await;
    }
    let metrics = get(&alive[0], "/metrics").await.body;
    assert!(metric_sum(&metrics, "cohort_raft_leader_changes_total") >= 2.0, "{metrics}");
}

#[tokio::test]
async fn a_stale_fencing_token_is_refused_where_the_message_lands() {
    let c = cluster("consistent-fence", "memory").await;
    let holder = spawn(&c.urls[1]).await;
    let (status, j) = register(&c.urls[1], "writer", &holder).await;
    assert_eq!(status, 200, "{j}");
    let t1 = j["fence_token"].as_u64().unwrap();
    wait_visible(&c.urls[0], "writer", &holder, t1).await;
    let received =
        |u: String| async move { get(&u, "/admin/probe/stats").await.json()["received_total"].as_u64().unwrap() };
    let rejections = |u: String| async move {
        metric_sum(&get(&u, "/metrics").await.body, "cohort_registry_fence_rejections_total") as u64
    };
    // The current token is delivered across nodes.
    let (status, j) = post(&c.urls[0], "/admin/probe/send", json!({"name": "writer", "fence_token": t1})).await;
    assert_eq!(status, 200, "{j}");
    wait_for(WITHIN, "the fenced send delivered", || async { (received(c.urls[1].clone()).await == 1).then_some(()) })
        .await;
    // A stale token is refused on the receiving node, counted, and not delivered.
    let (status, j) = post(&c.urls[0], "/admin/probe/send", json!({"name": "writer", "fence_token": t1 - 1})).await;
    assert_eq!(status, 200, "remote fenced sends are fire-and-forget: {j}");
    wait_for(WITHIN, "the stale send refused on the holder's node", || async {
        (rejections(c.urls[1].clone()).await >= 1).then_some(())
    })
    .await;
    // A new registration of the name makes the old token stale; a local stale send is refused
    // synchronously with the SPEC word.
    assert_eq!(
        post(&c.urls[1], "/admin/probe/unregister", json!({"tier": "consistent", "name": "writer", "pid": holder}))
            .await
            .0,
        200
    );
    let (status, j) = register(&c.urls[1], "writer", &holder).await;
    assert_eq!(status, 200, "{j}");
    let t2 = j["fence_token"].as_u64().unwrap();
    assert!(t2 > t1, "tokens grow: {t1} then {t2}");
    let (status, j) = post(&c.urls[1], "/admin/probe/send", json!({"name": "writer", "fence_token": t1})).await;
    assert_eq!((status, j["error"].as_str()), (409, Some("EpochMismatch")), "{j}");
    let (status, _) = post(&c.urls[1], "/admin/probe/send", json!({"name": "writer"})).await;
    assert_eq!(status, 200, "a plain send carries the current token");
    wait_for(WITHIN, "the current-token sends delivered", || async {
        (received(c.urls[1].clone()).await == 2).then_some(())
    })
    .await;
    assert!(rejections(c.urls[1].clone()).await >= 2);
    let planes = get(&c.urls[1], "/admin/planes").await.json();
    assert!(planes["execution"]["admission"]["EpochMismatch"].as_u64().unwrap() >= 2, "{planes}");
}

#[tokio::test]
async fn a_removed_node_s_names_disappear_everywhere() {
    let mut c = cluster("consistent-removed", "memory").await;
    let leader = wait_for_voters(&c.urls, 3).await;
    let victim = (0..3).find(|i| format!("n{i}") != leader).unwrap();
    let pid = spawn(&c.urls[victim]).await;
    let (status, j) = register(&c.urls[victim], "on-victim", &pid).await;
    assert_eq!(status, 200, "{j}");
    let token = j["fence_token"].as_u64().unwrap();
    let alive: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| c.urls[i].clone()).collect();
    for u in &alive {
        wait_visible(u, "on-victim", &pid, token).await;
    }
    c.procs[victim].signal(libc::SIGKILL);
    c.procs[victim].wait_exit(Duration::from_secs(10)).await;
    // Membership declares it down; the leader commits RemoveByNode.
    for u in &alive {
        wait_gone(u, "on-victim").await;
    }
}

/// Starts `cohort node` named `name` with its data in `dir` (kept across restarts).
fn start_node(name: &str, dir: &std::path::Path, secret: &std::path::Path, seed: Option<&str>) -> common::Proc {
    start_node_with(name, dir, secret, seed, &[])
}

/// [`start_node`] with extra flags.
fn start_node_with(
    name: &str,
    dir: &std::path::Path,
    secret: &std::path::Path,
    seed: Option<&str>,
    extra: &[&str],
) -> common::Proc {
    let mut args = common::node_args_in(name, &dir.join(name));
    args.extend(["--chaos", "--log-filter", "warn"].iter().map(|s| s.to_string()));
    args.extend(["--cluster-secret-file".into(), secret.display().to_string()]);
    if let Some(seed) = seed {
        args.extend(["--seeds".into(), seed.to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    // The token by environment, the other way `cohort node` takes it (the helpers use a file).
    common::Proc::spawn_env(&common::as_strs(&args), &[("COHORT_ADMIN_TOKEN", TOKEN)])
}

#[tokio::test]
async fn a_killed_node_restarts_recovered_from_its_durable_log_and_catches_up() {
    let dir = std::env::temp_dir().join(format!(
        "cohort-consistent-durable-{}-{}",
        std::process::id(),
        common::rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    common::write_test_key(&secret);
    let mut procs = vec![start_node("n0", &dir, &secret, None)];
    let first = procs[0].wait_stdout("cohort node listening", Duration::from_secs(20)).await;
    let seed = common::field(&first, "gossip").unwrap();
    let mut urls = vec![common::field(&first, "http").unwrap()];
    for name in ["n1", "n2"] {
        let p = start_node(name, &dir, &secret, Some(&seed));
        urls.push(p.node_url().await);
        procs.push(p);
    }
    wait_for_voters(&urls, 3).await;
    let pid = spawn(&urls[0]).await;
    let (status, j) = register(&urls[0], "before", &pid).await;
    assert_eq!(status, 200, "{j}");
    let token = j["fence_token"].as_u64().unwrap();
    wait_visible(&urls[2], "before", &pid, token).await;
    let applied_before = raft(&urls[2]).await["applied_index"].as_u64().unwrap();

    // SIGKILL n2 (no graceful anything), write while it is down, restart it on the same data dir.
    procs[2].signal(libc::SIGKILL);
    procs[2].wait_exit(Duration::from_secs(10)).await;
    let other = spawn(&urls[1]).await;
    let late = wait_for(WITHIN, "a write while n2 is down", || async {
        let (status, j) = register(&urls[1], "while-down", &other).await;
        (status == 200).then(|| j["fence_token"].as_u64()).flatten()
    })
    .await;
    let restarted = start_node("n2", &dir, &secret, Some(&seed));
    let url = restarted.node_url().await;
    procs[2] = restarted;
    let planes = get(&url, "/admin/planes").await.json();
    assert_eq!(planes["execution"]["restart_state"]["state"], "recovered", "{planes}");
    assert!(
        planes["execution"]["restart_state"]["applied_index"].as_u64().unwrap() >= applied_before,
        "recovers at least what it had applied ({applied_before}): {planes}"
    );
    // It keeps its recorded raft id and catches up with what it missed.
    wait_visible(&url, "while-down", &other, late).await;
    wait_visible(&url, "before", &pid, token).await;
    wait_for(WITHIN, "the restarted node fresh at bounded freshness", || async {
        (lookup(&url, "while-down", "bounded").await.0 == 200).then_some(())
    })
    .await;
}

/// `name -> state` as `/admin/cluster/members` on `url` reports it.
async fn member_states(url: &str) -> Vec<(String, String)> {
    let j = get(url, "/admin/cluster/members").await.json();
    j["members"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(|m| Some((m["node"].as_str()?.to_string(), m["state"].as_str()?.to_string()))).collect()
        })
        .unwrap_or_default()
}

/// Issue 11 (1): a follower is cut off long enough to be declared down, the cut heals, and the
/// leader is killed right after membership converges. Plain Raft with a fixed voter set survives
/// this; so must the ladder: the cut changed no voter, so the survivors elect a leader and commit
/// within 10 s of the kill.
async fn partition_then_heal_then_leader_crash(n: usize) {
    let mut c = cluster_of(&format!("consistent-composed-{n}"), n, "memory").await;
    let voters = n.min(5);
    let leader = wait_for_voters(&c.urls, voters).await;
    let dead = index_of(&c, &leader);
    let victim = (0..n).find(|i| *i != dead).unwrap();
    let cut: Vec<Value> = (0..n)
        .filter(|i| *i != victim)
        .map(|i| json!({"peer": format!("n{i}"), "direction": "both", "drop": 1.0}))
        .collect();
    let (status, j) = post(&c.urls[victim], "/admin/faults", json!({ "rules": cut })).await;
    assert_eq!(status, 200, "{j}");
    let started = std::time::Instant::now();
    let victim_name = format!("n{victim}");
    wait_for(WITHIN, "the leader sees the cut-off follower down", || async {
        member_states(&c.urls[dead])
            .await
            .iter()
            .any(|(name, state)| *name == victim_name && state == "down")
            .then_some(())
    })
    .await;
    // Hold the cut for 8 s in all (the report's figure), well past the ladder's debounce.
    while started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = raft(&c.urls[dead]).await;
    assert_eq!(during["voters"].as_array().unwrap().len(), voters, "a partition changes no voter: {during}");
    assert!(during["voters"].as_array().unwrap().contains(&json!(victim_name)), "{during}");
    let auth = format!("Bearer {TOKEN}");
    let cleared = common::request("DELETE", &c.urls[victim], "/admin/faults", &[("Authorization", &auth)], None).await;
    assert_eq!(cleared.status, 200);
    let healed = std::time::Instant::now();
    for u in &c.urls {
        wait_for(WITHIN, "membership converged after the heal", || async {
            let states = member_states(u).await;
            (states.len() == n && states.iter().all(|(_, s)| s == "alive")).then_some(())
        })
        .await;
    }
    // Within 10 s of the heal the healed node follows the leader again as a voter.
    let within = Duration::from_secs(10).saturating_sub(healed.elapsed());
    wait_for(within, "the healed node a voting follower within 10 s of the heal", || async {
        let r = raft(&c.urls[victim]).await;
        (r["role"] == "follower" && r["leader"] == leader.as_str() && r["voters"].as_array()?.len() == voters)
            .then_some(())
    })
    .await;
    // Right after the heal, kill -9 the leader.
    c.procs[dead].signal(libc::SIGKILL);
    c.procs[dead].wait_exit(Duration::from_secs(10)).await;
    let killed = std::time::Instant::now();
    let survivors: Vec<usize> = (0..n).filter(|i| *i != dead).collect();
    // The healed node writes: it was declared down (its names removed under its lease) and must
    // be readmitted to register again.
    let writer = victim;
    let pid = spawn(&c.urls[writer]).await;
    let token = wait_for(Duration::from_secs(10), "a write within 10 s of the leader's kill", || async {
        let (status, j) = register(&c.urls[writer], "after-composed", &pid).await;
        (status == 200).then(|| j["fence_token"].as_u64()).flatten()
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "first successful write {took:?} after the kill");
    // Every survivor is a voter or a learner of the new configuration, within 10 s of the heal,
    // and serves the write (the healed node too).
    for i in &survivors {
        wait_visible(&c.urls[*i], "after-composed", &pid, token).await;
        let r = raft(&c.urls[*i]).await;
        let role = r["role"].as_str().unwrap_or_default().to_string();
        assert!(matches!(role.as_str(), "leader" | "follower" | "learner"), "n{i} is {role}: {r}");
    }
    let r = raft(&c.urls[victim]).await;
    assert!(matches!(r["role"].as_str(), Some("follower" | "leader")), "the healed node votes again: {r}");
    // Strong reads work on every survivor.
    for i in &survivors {
        let (status, j) = lookup(&c.urls[*i], "after-composed", "strong").await;
        assert_eq!((status, j["fence_token"].as_u64()), (200, Some(token)), "n{i}: {j}");
    }
}

#[tokio::test]
async fn three_nodes_survive_a_follower_partition_then_a_leader_crash() {
    partition_then_heal_then_leader_crash(3).await;
}

#[tokio::test]
async fn five_nodes_survive_a_follower_partition_then_a_leader_crash() {
    partition_then_heal_then_leader_crash(5).await;
}

/// The value of `name{label}` in a Prometheus text page (0 when absent).
fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// SPEC 7: a raft message raft-rs would abort on is refused and counted before `step`; a panic
/// anyway restarts the raft actor from its durable state, counted and visible, and the tier serves.
#[tokio::test]
async fn the_raft_actor_refuses_a_malformed_heartbeat_and_is_restarted_after_a_panic() {
    let c = cluster("consistent-supervised", "memory").await;
    let leader = wait_for_voters(&c.urls, 3).await;
    let f = (0..3).find(|i| format!("n{i}") != leader).unwrap();
    let url = &c.urls[f];
    let pid = spawn(url).await;
    let (status, j) = register(url, "before-faults", &pid).await;
    assert_eq!(status, 200, "{j}");
    let token = j["fence_token"].as_u64().unwrap();

    let (status, j) = post(url, "/admin/raft/inject", json!({"fault": "malformed_heartbeat"})).await;
    assert_eq!(status, 200, "{j}");
    wait_for(WITHIN, "the malformed heartbeat counted as unsafe", || async {
        let m = get(url, "/metrics").await.body;
        (metric_with(&m, "cohort_raft_frames_dropped_total", "reason=\"unsafe\"") >= 1.0).then_some(())
    })
    .await;
    let (status, j) = register(url, "after-heartbeat", &pid).await;
    assert_eq!(status, 200, "the tier keeps serving: {j}");
    assert_eq!(get(url, "/livez").await.status, 200);
    let planes = get(url, "/admin/planes").await.json();
    assert_eq!(planes["execution"]["raft_actor_restarts"], 0, "{planes}");

    // A panic inside the actor: restarted from its durable state (memory mode: the same image).
    let (status, j) = post(url, "/admin/raft/inject", json!({"fault": "panic"})).await;
    assert_eq!(status, 200, "{j}");
    let planes = wait_for(WITHIN, "the raft actor restarted", || async {
        let planes = get(url, "/admin/planes").await.json();
        (planes["execution"]["raft_actor_restarts"] == 1).then_some(planes)
    })
    .await;
    assert_eq!(planes["execution"]["restart_state"]["state"], "recovered", "{planes}");
    let m = get(url, "/metrics").await.body;
    assert_eq!(metric_sum(&m, "cohort_raft_actor_restarts_total"), 1.0);
    // The restart state gauge follows the restart: recovered is the one series at 1.
    assert_eq!(metric_sum(&m, "cohort_restart_state{state=\"recovered\"}"), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "cohort_restart_state"), 1.0, "{m}");
    common::promtool_check(&m);
    assert_eq!(get(url, "/livez").await.status, 200);
    // It rebuilt its view from the log and serves reads and writes again.
    wait_for(WITHIN, "a Strong read on the restarted follower", || async {
        let (status, j) = lookup(url, "before-faults", "strong").await;
        (status == 200 && j["fence_token"].as_u64() == Some(token)).then_some(())
    })
    .await;
    wait_for(WITHIN, "a write through the restarted follower", || async {
        (register(url, "after-panic", &pid).await.0 == 200).then_some(())
    })
    .await;
    // The leader too: a restarted leader keeps its term's log; the group writes on.
    let leader_url = &c.urls[index_of(&c, &leader)];
    assert_eq!(post(leader_url, "/admin/raft/inject", json!({"fault": "panic"})).await.0, 200);
    let other = spawn(leader_url).await;
    wait_for(WITHIN, "a write after the leader's actor restarted", || async {
        (register(leader_url, "after-leader-panic", &other).await.0 == 200).then_some(())
    })
    .await;
    // Unknown faults are a 4xx naming the field, not a panic.
    let (status, j) = post(url, "/admin/raft/inject", json!({"fault": "meteor"})).await;
    assert_eq!((status, j["error"].as_str()), (422, Some("BadRequest")), "{j}");
}

/// SPEC 7: a voter dead for `dead_voter_after` is replaced by a caught-up learner in one joint
/// change whose reason names it; when it comes back on its durable state it learns its removal
/// from the log and rejoins as a learner.
#[tokio::test]
async fn a_dead_voter_is_replaced_by_a_learner_and_rejoins_as_a_learner_when_it_returns() {
    let dir = std::env::temp_dir().join(format!(
        "cohort-consistent-dead-voter-{}-{}",
        std::process::id(),
        common::rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    common::write_test_key(&secret);
    let config = dir.join("node.toml");
    std::fs::write(&config, "[raft]\nstorage = \"durable\"\nmax_voters = 3\ndead_voter_after_ms = 3000\n").unwrap();
    let config = config.display().to_string();
    let extra = ["--config", config.as_str()];
    let mut procs = vec![start_node_with("n0", &dir, &secret, None, &extra)];
    let first = procs[0].wait_stdout("cohort node listening", Duration::from_secs(20)).await;
    let seed = common::field(&first, "gossip").unwrap();
    let mut urls = vec![common::field(&first, "http").unwrap()];
    for name in ["n1", "n2", "n3"] {
        let p = start_node_with(name, &dir, &secret, Some(&seed), &extra);
        urls.push(p.node_url().await);
        procs.push(p);
    }
    let leader = wait_for_voters(&urls, 3).await;
    let leader_url = urls[leader.trim_start_matches('n').parse::<usize>().unwrap()].clone();
    let learner = wait_for(WITHIN, "one learner", || async {
        let r = raft(&leader_url).await;
        let learners = r["learners"].as_array()?.clone();
        (learners.len() == 1).then(|| learners[0].as_str().map(str::to_string)).flatten()
    })
    .await;
    let victim_name = (0..4).map(|i| format!("n{i}")).find(|n| *n != leader && *n != learner).unwrap();
    let victim = victim_name.trim_start_matches('n').parse::<usize>().unwrap();
    procs[victim].signal(libc::SIGKILL);
    procs[victim].wait_exit(Duration::from_secs(10)).await;
    let replaced = wait_for(WITHIN, "the dead voter replaced by the learner", || async {
        let r = raft(&leader_url).await;
        let voters: Vec<String> =
            r["voters"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        (voters.len() == 3 && voters.contains(&learner) && !voters.contains(&victim_name)).then_some(r)
    })
    .await;
    assert!(
        replaced["learners"].as_array().unwrap().is_empty(),
        "the dead node is out of the configuration: {replaced}"
    );
    let planes = get(&leader_url, "/admin/planes").await.json();
    let swap = planes["control"]["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["reason"].as_str().is_some_and(|r| r.contains(&format!("replace voter {victim_name}"))))
        .unwrap_or_else(|| panic!("no replacement transition with its reason: {planes}"))
        .clone();
    assert_eq!(swap["steps"].as_array().unwrap().len(), 2, "one joint change: {swap}");
    assert!(swap["reason"].as_str().unwrap().contains("dead_voter_after 3 s"), "{swap}");
    // It comes back on its durable state: it learns its removal and rejoins as a learner.
    let back = start_node_with(&victim_name, &dir, &secret, Some(&seed), &extra);
    let back_url = back.node_url().await;
    procs[victim] = back;
    wait_for(WITHIN, "the returned node rejoins as a learner", || async {
        let mine = raft(&back_url).await;
        let theirs = raft(&leader_url).await;
        (mine["role"] == "learner" && theirs["learners"].as_array()?.contains(&json!(victim_name))).then_some(())
    })
    .await;
    // And it serves Strong reads as a learner.
    let pid = spawn(&leader_url).await;
    let (status, j) = register(&leader_url, "after-return", &pid).await;
    assert_eq!(status, 200, "{j}");
    let token = j["fence_token"].as_u64().unwrap();
    wait_for(WITHIN, "a Strong read on the returned learner", || async {
        let (status, j) = lookup(&back_url, "after-return", "strong").await;
        (status == 200 && j["fence_token"].as_u64() == Some(token)).then_some(())
    })
    .await;
}
