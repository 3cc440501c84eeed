//! The name registry's local and eventual tiers through the admin API, on real node processes
//! (SPEC 7, 9.2): visibility everywhere, owner exit, node death, concurrent registrations across a
//! partition (one owner after heal, the loser told once), anti-entropy repair, and refusals.

mod common;

use std::time::Duration;

use common::{Cluster, get, metric_sum, request, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "registry-test-token-0123456789";

/// How long registry changes may take to propagate: gossip rounds and anti-entropy take about a
/// second on a quiet machine; CI runs several clusters at once on 2 cores.
const PROPAGATION: Duration = Duration::from_secs(30);

async fn cluster(n: usize) -> Cluster {
    common::chaos_cluster("registry", n, TOKEN).await
}

async fn post(url: &str, path: &str, body: Value) -> (u16, Value) {
    common::post_json(url, path, TOKEN, body).await
}

async fn spawn(url: &str) -> String {
    let (status, j) = post(url, "/admin/probe/spawn", json!({ "count": 1 })).await;
    assert_eq!(status, 200, "{j}");
    j["pids"][0].as_str().unwrap().to_string()
}

/// The pid `url` resolves `name` to in `tier`, or None on 404.
async fn lookup(url: &str, tier: &str, name: &str) -> Option<String> {
    let a = get(url, &format!("/admin/registry/lookup/{name}?tier={tier}")).await;
    match a.status {
        200 => Some(a.json()["pid"].as_str().unwrap().to_string()),
        404 => None,
        other => panic!("lookup answered {other}: {}", a.body),
    }
}

async fn wait_everywhere(c: &Cluster, urls: &[String], name: &str, want: Option<&str>) {
    for u in urls {
        let what = format!("{name} -> {want:?} on {u}");
        wait_for(PROPAGATION, &what, || async { (lookup(u, "eventual", name).await.as_deref() == want).then_some(()) })
            .await;
    }
    let _ = c;
}

async fn revoked_total(c: &Cluster) -> u64 {
    let mut total = 0;
    for u in &c.urls {
        total += get(u, "/admin/probe/stats").await.json()["revoked_total"].as_u64().unwrap();
    }
    total
}

#[tokio::test]
async fn an_eventual_name_is_visible_everywhere_and_gone_when_its_owner_exits() {
    let c = cluster(3).await;
    let pid = spawn(&c.urls[0]).await;
    let (status, j) =
        post(&c.urls[0], "/admin/probe/register", json!({"tier": "eventual", "name": "svc", "pid": pid})).await;
    assert_eq!(status, 200, "{j}");
    wait_everywhere(&c, &c.urls, "svc", Some(&pid)).await;
    // The default resolution order finds it in the eventual tier, and the listing shows it.
    let found = get(&c.urls[2], "/admin/registry/lookup/svc").await.json();
    assert_eq!((found["tier"].as_str(), found["pid"].as_str()), (Some("eventual"), Some(pid.as_str())));
    let listed = get(&c.urls[1], "/admin/registry/eventual").await.json();
    assert_eq!(listed["names"], json!([{"name": "svc", "pid": pid}]));

    // A visible name is refused to anyone else, with its holder.
    let other = spawn(&c.urls[1]).await;
    let (status, j) =
        post(&c.urls[1], "/admin/probe/register", json!({"tier": "eventual", "name": "svc", "pid": other})).await;
    assert_eq!((status, j["error"].as_str()), (409, Some("AlreadyRegistered")), "{j}");

    // The owner's exit removes the name everywhere.
    assert_eq!(post(&c.urls[0], "/admin/probe/exit", json!({"pids": [pid], "reason": "kill"})).await.0, 200);
    wait_everywhere(&c, &c.urls, "svc", None).await;
    let metrics = get(&c.urls[0], "/metrics").await.body;
    assert!(metric_sum(&metrics, "cohort_registry_gossip_deltas_total") >= 2.0, "{metrics}");
    common::promtool_check(&metrics);
}

#[tokio::test]
async fn the_local_tier_is_per_node_first_wins_and_shadows_the_eventual_tier() {
    let c = cluster(2).await;
    let (a, b) = (spawn(&c.urls[0]).await, spawn(&c.urls[0]).await);
    assert_eq!(
        post(&c.urls[0], "/admin/probe/register", json!({"tier": "local", "name": "db", "pid": a})).await.0,
        200
    );
    let (status, j) = post(&c.urls[0], "/admin/probe/register", json!({"tier": "local", "name": "db", "pid": b})).await;
    assert_eq!((status, j["error"].as_str()), (409, Some("AlreadyRegistered")), "{j}");
    // SPEC 7: the eventual tier refuses a name this node holds locally.
    let (status, j) =
        post(&c.urls[0], "/admin/probe/register", json!({"tier": "eventual", "name": "db", "pid": b})).await;
    assert_eq!((status, j["error"].as_str()), (409, Some("AlreadyRegistered")), "{j}");
    assert_eq!(lookup(&c.urls[0], "local", "db").await.as_deref(), Some(a.as_str()));
    assert_eq!(lookup(&c.urls[1], "local", "db").await, None);
    let listed = get(&c.urls[0], "/admin/registry/local").await.json();
    assert_eq!(listed["names"], json!([{"name": "db", "pid": a}]));

    // Another node may register the name in the eventual tier; node 0 still resolves its own.
    let remote = spawn(&c.urls[1]).await;
    assert_eq!(
        post(&c.urls[1], "/admin/probe/register", json!({"tier": "eventual", "name": "db", "pid": remote})).await.0,
        200
    );
    wait_everywhere(&c, &c.urls, "db", Some(&remote)).await;
    let first = get(&c.urls[0], "/admin/registry/lookup/db").await.json();
    assert_eq!((first["tier"].as_str(), first["pid"].as_str()), (Some("local"), Some(a.as_str())));

    // Unregister needs the holder; then the name is free.
    let (status, _) =
        post(&c.urls[0], "/admin/probe/unregister", json!({"tier": "local", "name": "db", "pid": b})).await;
    assert_eq!(status, 404);
    assert_eq!(
        post(&c.urls[0], "/admin/probe/unregister", json!({"tier": "local", "name": "db", "pid": a})).await.0,
        200
    );
    assert_eq!(
        post(&c.urls[0], "/admin/probe/register", json!({"tier": "local", "name": "db", "pid": b})).await.0,
        200
    );
    // The owner's exit removes a local name.
    assert_eq!(post(&c.urls[0], "/admin/probe/exit", json!({"pids": [b], "reason": "normal"})).await.0, 200);
    wait_for(PROPAGATION, "local name removed on exit", || async {
        lookup(&c.urls[0], "local", "db").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn concurrent_registrations_across_a_partition_resolve_to_one_owner_and_the_loser_is_told_once() {
    let c = cluster(3).await;
    let (a, z) = (spawn(&c.urls[0]).await, spawn(&c.urls[2]).await);
    let cut =
        |peers: &[&str]| json!({"rules": peers.iter().map(|p| json!({"peer": p, "drop": 1.0})).collect::<Vec<_>>()});
    assert_eq!(post(&c.urls[0], "/admin/faults", cut(&["n2"])).await.0, 200);
    assert_eq!(post(&c.urls[1], "/admin/faults", cut(&["n2"])).await.0, 200);
    assert_eq!(post(&c.urls[2], "/admin/faults", cut(&["n0", "n1"])).await.0, 200);
    // Both sides register the same name; each side sees its own owner.
    assert_eq!(
        post(&c.urls[0], "/admin/probe/register", json!({"tier": "eventual", "name": "leader", "pid": a})).await.0,
        200
    );
    assert_eq!(
        post(&c.urls[2], "/admin/probe/register", json!({"tier": "eventual", "name": "leader", "pid": z})).await.0,
        200
    );
    wait_everywhere(&c, &c.urls[..2], "leader", Some(&a)).await;
    assert_eq!(lookup(&c.urls[2], "eventual", "leader").await.as_deref(), Some(z.as_str()));

    let auth = format!("Bearer {TOKEN}");
    for u in &c.urls {
        assert_eq!(request("DELETE", u, "/admin/faults", &[("Authorization", &auth)], None).await.status, 200);
    }
    // After the heal every node shows the same single owner ...
    let winner = wait_for(PROPAGATION, "one owner everywhere", || async {
        let mut seen = Vec::new();
        for u in &c.urls {
            seen.push(lookup(u, "eventual", "leader").await);
        }
        (seen.iter().all(|s| s.is_some() && *s == seen[0])).then(|| seen[0].clone().unwrap())
    })
    .await;
    assert!(winner == a || winner == z, "{winner}");
    // ... and the loser was told exactly once, also after more anti-entropy rounds.
    wait_for(PROPAGATION, "the loser told", || async { (revoked_total(&c).await == 1).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(revoked_total(&c).await, 1);
    let mut revocations = 0.0;
    for u in &c.urls {
        revocations += metric_sum(&get(u, "/metrics").await.body, "cohort_registry_revocations_total");
    }
    assert_eq!(revocations, 1.0);
    // The losing node's decision log says who lost to whom, and by which rule.
    let (loser, loser_url) = if winner == a { (&z, &c.urls[2]) } else { (&a, &c.urls[0]) };
    let decision = wait_for(PROPAGATION, "NameRevoked in the loser's decision log", || async {
        let page = get(loser_url, "/admin/events?kind=NameRevoked").await.json();
        page["events"].as_array()?.iter().find(|e| e["subject"] == "leader").cloned()
    })
    .await;
    assert_eq!(decision["evidence"]["loser"].as_str(), Some(loser.as_str()), "{decision}");
    assert_eq!(decision["evidence"]["winner"].as_str(), Some(winner.as_str()), "{decision}");
    assert!(decision["evidence"]["rule"].as_str().is_some_and(|r| r.contains("SHA-256")), "{decision}");
    // The loser no longer holds the name: when the winner exits, the name is free everywhere.
    let owner_url = if winner == a { &c.urls[0] } else { &c.urls[2] };
    assert_eq!(post(owner_url, "/admin/probe/exit", json!({"pids": [winner], "reason": "kill"})).await.0, 200);
    wait_everywhere(&c, &c.urls, "leader", None).await;
}

#[tokio::test]
async fn a_dead_nodes_names_disappear_everywhere() {
    let mut c = cluster(3).await;
    let pid = spawn(&c.urls[2]).await;
    assert_eq!(
        post(&c.urls[2], "/admin/probe/register", json!({"tier": "eventual", "name": "doomed", "pid": pid})).await.0,
        200
    );
    wait_everywhere(&c, &c.urls, "doomed", Some(&pid)).await;
    c.procs[2].signal(libc::SIGKILL);
    let survivors = c.urls[..2].to_vec();
    wait_everywhere(&c, &survivors, "doomed", None).await;
    let _ = c.procs[2].wait_exit(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn anti_entropy_alone_repairs_writes_gossip_never_carried() {
    let config =
        std::env::temp_dir().join(format!("cohort-registry-ae-{}-{}.toml", std::process::id(), common::rand_suffix()));
    std::fs::write(&config, "[registry]\ngossip_deltas = false\nanti_entropy_interval_ms = 300\n").unwrap();
    let c = common::chaos_cluster_with("registry-ae", 3, TOKEN, &["--config", &config.display().to_string()]).await;
    let mut pids = Vec::new();
    for (i, u) in c.urls.iter().enumerate() {
        let pid = spawn(u).await;
        let name = format!("s{i}");
        assert_eq!(
            post(u, "/admin/probe/register", json!({"tier": "eventual", "name": name, "pid": pid})).await.0,
            200
        );
        pids.push((name, pid));
    }
    for (name, pid) in &pids {
        wait_everywhere(&c, &c.urls, name, Some(pid)).await;
    }
    let metrics = get(&c.urls[0], "/metrics").await.body;
    assert_eq!(metric_sum(&metrics, "cohort_registry_delta_bytes_total{direction=\"out\",path=\"gossip\"}"), 0.0);
    assert!(metric_sum(&metrics, "cohort_registry_anti_entropy_shards_repaired_total") >= 1.0, "{metrics}");
}

#[tokio::test]
async fn registry_endpoints_validate_their_input() {
    let c = cluster(1).await;
    let u = &c.urls[0];
    let pid = spawn(u).await;
    let bad = |tier: &str, name: &str, pid: &str| json!({"tier": tier, "name": name, "pid": pid});
    assert_eq!(post(u, "/admin/probe/register", bad("eventual", "", &pid)).await.0, 400);
    assert_eq!(post(u, "/admin/probe/register", bad("eventual", &"x".repeat(300), &pid)).await.0, 400);
    assert_eq!(post(u, "/admin/probe/register", bad("galactic", "n", &pid)).await.0, 400);
    assert_eq!(post(u, "/admin/probe/register", bad("eventual", "n", "not-a-pid")).await.0, 400);
    assert_eq!(post(u, "/admin/probe/register", bad("eventual", "n", "<n0.1.999>")).await.0, 404);
    // A single node leads its own one-voter raft group: a consistent registration commits.
    let (status, j) = post(u, "/admin/probe/register", bad("consistent", "n", &pid)).await;
    assert_eq!(status, 200, "{j}");
    assert!(j["fence_token"].as_u64().is_some(), "{j}");
    assert_eq!(get(u, "/admin/registry/lookup/n?freshness=fresh").await.status, 400);
    assert_eq!(post(u, "/admin/probe/register", json!({"tier": "local"})).await.0, 422);
    assert_eq!(get(u, "/admin/registry/galactic").await.status, 400);
    assert_eq!(get(u, "/admin/registry/lookup/nobody").await.json()["error"], "NotFound");
    assert_eq!(get(u, "/admin/registry/lookup/n?color=blue").await.status, 400);
    // Without the token, mutations are refused.
    let a = request("POST", u, "/admin/probe/register", &[], Some(&bad("local", "n", &pid).to_string())).await;
    assert_eq!(a.status, 401);
    assert_eq!(get(u, "/livez").await.status, 200);
}
