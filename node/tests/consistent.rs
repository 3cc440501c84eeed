//! The consistent name tier on real `cohort node` processes, through the admin API (SPEC 7, 8,
//! 9.2): leader election and the voter ladder, registration visible everywhere with one fencing
//! token, first-committed-wins races, isolation (no silent downgrade), leader loss, a durable
//! restart (`RestartState::Recovered`), stale fencing tokens, and a removed node's names.

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
    let config = config_file(storage);
    let c = common::chaos_cluster_with(prefix, 3, TOKEN, &["--config", &config]).await;
    wait_for_voters(&c.urls, 3).await;
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
    // Strong is served by the leader, with the same token, and refused elsewhere with its hint.
    let leader_url = &c.urls[index_of(&c, &leader)];
    let (status, j) = lookup(leader_url, "svc", "strong").await;
    assert_eq!((status, j["fence_token"].as_u64()), (200, Some(token)), "{j}");
    assert_eq!((j["witness"]["served_by_leader"].as_bool(), j["witness"]["root_lag"].as_u64()), (Some(true), Some(0)));
    let (status, j) = lookup(&c.urls[follower], "svc", "strong").await;
    assert_eq!((status, j["error"].as_str()), (503, Some("NotLeader")), "{j}");
    assert!(j["detail"].as_str().unwrap().contains(&leader), "{j}");

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
