//! Processes and process groups through the admin API, on real node processes: the probe
//! workload (spawn, join, leave, exit, broadcast, stats) and `GET /admin/pg/...` (SPEC 6, 9.2).

mod common;

use std::time::Duration;

use common::{Cluster, get, request, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "pg-test-token-0123456789";

async fn cluster(n: usize) -> Cluster {
    common::chaos_cluster("pg", n, TOKEN).await
}

async fn post(url: &str, path: &str, body: Value) -> (u16, Value) {
    common::post_json(url, path, TOKEN, body).await
}

async fn spawn(url: &str, count: usize) -> Vec<String> {
    let (status, j) = post(url, "/admin/probe/spawn", json!({ "count": count })).await;
    assert_eq!(status, 200, "{j}");
    j["pids"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

async fn members(url: &str, group: &str) -> Vec<String> {
    let j = get(url, &format!("/admin/pg/default/groups/{group}")).await.json();
    j["members"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// How long membership changes may take to propagate: seconds on a quiet machine, but CI runs
/// several 3-node clusters at once on 2 cores.
const PROPAGATION: Duration = Duration::from_secs(30);

async fn wait_members(url: &str, group: &str, mut want: Vec<String>) {
    want.sort();
    let deadline = std::time::Instant::now() + PROPAGATION;
    loop {
        let mut got = members(url, group).await;
        got.sort();
        if got == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("{group} members on {url}: want {want:?}, got {got:?}\n{}", diagnostics(url).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the node at `url` knows, for a timeout message: its view of the cluster and the pg and
/// transport counters that say where frames went.
async fn diagnostics(url: &str) -> String {
    let members = get(url, "/admin/cluster/members").await.body;
    let metrics = get(url, "/metrics").await.body;
    let counters: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
        .filter(|l| {
            l.starts_with("cohort_pg_")
                || l.starts_with("cohort_internode_dropped")
                || l.starts_with("cohort_internode_connections")
        })
        .collect();
    format!("members: {members}\ncounters:\n{}", counters.join("\n"))
}

async fn stats(url: &str) -> (u64, u64) {
    let j = get(url, "/admin/probe/stats").await.json();
    (j["probes"].as_u64().unwrap(), j["received_total"].as_u64().unwrap())
}

#[tokio::test]
async fn groups_are_cluster_wide_and_follow_process_exits() {
    let c = cluster(3).await;
    let a = spawn(&c.urls[0], 2).await;
    let b = spawn(&c.urls[1], 1).await;
    assert_eq!(post(&c.urls[0], "/admin/probe/join", json!({"group": "room", "pids": a})).await.0, 200);
    assert_eq!(post(&c.urls[1], "/admin/probe/join", json!({"group": "room", "pids": b})).await.0, 200);
    let all: Vec<String> = a.iter().chain(&b).cloned().collect();
    for u in &c.urls {
        wait_members(u, "room", all.clone()).await;
    }
    // local_members and the groups listing agree.
    let j = get(&c.urls[0], "/admin/pg/default/groups").await.json();
    assert_eq!(j["groups"], json!([{"group": "room", "members": 3, "local_members": 2}]));

    // Join twice, leave once: still a member (listed once more while joined twice).
    assert_eq!(post(&c.urls[1], "/admin/probe/join", json!({"group": "room", "pids": b})).await.0, 200);
    assert_eq!(post(&c.urls[1], "/admin/probe/leave", json!({"group": "room", "pids": b})).await.0, 200);
    wait_members(&c.urls[2], "room", all.clone()).await;

    // Leave of a non-member: NotJoined. Join of another node's pid: NotHosted.
    let (status, j) = post(&c.urls[0], "/admin/probe/leave", json!({"group": "other", "pids": [a[0]]})).await;
    assert_eq!((status, j["error"].as_str()), (404, Some("NotJoined")), "{j}");
    let (status, j) = post(&c.urls[0], "/admin/probe/join", json!({"group": "room", "pids": b})).await;
    assert_eq!((status, j["error"].as_str()), (404, Some("NotHosted")), "{j}");
    let (status, _) = post(&c.urls[0], "/admin/probe/join", json!({"group": "room", "pids": ["not-a-pid"]})).await;
    assert_eq!(status, 400);

    // A panicking process leaves every group on every node; a killed one too.
    assert_eq!(post(&c.urls[0], "/admin/probe/exit", json!({"pids": [a[0]], "reason": "panic"})).await.0, 200);
    assert_eq!(post(&c.urls[1], "/admin/probe/exit", json!({"pids": b, "reason": "kill"})).await.0, 200);
    for u in &c.urls {
        wait_members(u, "room", vec![a[1].clone()]).await;
    }
    assert_eq!(stats(&c.urls[0]).await.0, 1);
    // An exited pid is no longer hosted.
    let (status, j) = post(&c.urls[0], "/admin/probe/join", json!({"group": "room", "pids": [a[0]]})).await;
    assert_eq!((status, j["error"].as_str()), (404, Some("NotHosted")), "{j}");
    drop(c.procs);
}

#[tokio::test]
async fn broadcast_reaches_every_member_once_across_three_nodes() {
    let c = cluster(3).await;
    let mut everyone = Vec::new();
    for u in &c.urls {
        let pids = spawn(u, 3).await;
        assert_eq!(post(u, "/admin/probe/join", json!({"group": "news", "pids": pids})).await.0, 200);
        everyone.extend(pids);
    }
    for u in &c.urls {
        wait_members(u, "news", everyone.clone()).await;
    }
    let (status, j) =
        post(&c.urls[0], "/admin/probe/broadcast", json!({"group": "news", "count": 20, "payload_bytes": 64})).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["sent"], 20);
    // One frame per remote node per broadcast, local members served directly.
    assert_eq!(j["remote_frames"], 40);
    assert_eq!(j["local_delivered"], 60);
    for u in &c.urls {
        let u = u.clone();
        wait_for(Duration::from_secs(10), "60 deliveries on every node", || {
            let u = u.clone();
            async move { (stats(&u).await.1 == 60).then_some(()) }
        })
        .await;
    }
    // Exactly once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for u in &c.urls {
        assert_eq!(stats(u).await, (3, 60));
    }
}

#[tokio::test]
async fn a_partitioned_nodes_members_disappear_and_come_back_after_heal() {
    let c = cluster(3).await;
    let mut everyone = Vec::new();
    for u in &c.urls {
        let pids = spawn(u, 1).await;
        assert_eq!(post(u, "/admin/probe/join", json!({"group": "g", "pids": pids})).await.0, 200);
        everyone.extend(pids);
    }
    for u in &c.urls {
        wait_members(u, "g", everyone.clone()).await;
    }
    // Cut n2 off from n0 and n1.
    let cut =
        |peers: &[&str]| json!({"rules": peers.iter().map(|p| json!({"peer": p, "drop": 1.0})).collect::<Vec<_>>()});
    assert_eq!(post(&c.urls[0], "/admin/faults", cut(&["n2"])).await.0, 200);
    assert_eq!(post(&c.urls[1], "/admin/faults", cut(&["n2"])).await.0, 200);
    assert_eq!(post(&c.urls[2], "/admin/faults", cut(&["n0", "n1"])).await.0, 200);
    wait_members(&c.urls[0], "g", everyone[..2].to_vec()).await;
    wait_members(&c.urls[2], "g", everyone[2..].to_vec()).await;
    // Heal: the full sync restores every member everywhere.
    let auth = format!("Bearer {TOKEN}");
    for u in &c.urls {
        assert_eq!(request("DELETE", u, "/admin/faults", &[("Authorization", &auth)], None).await.status, 200);
    }
    for u in &c.urls {
        wait_members(u, "g", everyone.clone()).await;
    }
}

#[tokio::test]
async fn probe_and_pg_endpoints_validate_their_input() {
    let c = cluster(1).await;
    let u = &c.urls[0];
    assert_eq!(post(u, "/admin/probe/spawn", json!({"count": 1_000_000})).await.0, 503);
    assert_eq!(post(u, "/admin/probe/spawn", json!({"cnt": 1})).await.0, 422);
    assert_eq!(post(u, "/admin/probe/exit", json!({"pids": [], "reason": "explode"})).await.0, 422);
    assert_eq!(post(u, "/admin/probe/broadcast", json!({"group": "g", "payload_bytes": 10_000_000})).await.0, 400);
    assert_eq!(post(u, "/admin/probe/join", json!({"group": "", "pids": []})).await.0, 400);
    assert_eq!(get(u, "/admin/pg/nosuchscope/groups").await.status, 404);
    assert_eq!(get(u, "/admin/pg/default/groups/unknown").await.json()["members"], json!([]));
    assert_eq!(get(u, "/livez").await.status, 200);
}
