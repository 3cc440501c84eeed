//! `cohort up`, the embedded default: N nodes on 127.0.0.1 that answer /livez, /readyz,
//! /admin/node and a promtool-clean /metrics; and no orphans whichever way it ends.

mod common;

use std::time::Duration;

use common::{Proc, field, get, identity, promtool_check, still_serves, wait_for};

/// Start `cohort up --nodes n`; returns the process, the node URLs and their pids.
async fn up(n: usize) -> (Proc, Vec<String>, Vec<i32>) {
    let p = Proc::spawn(&["up", "--nodes", &n.to_string(), "--log-filter", "warn"]);
    p.wait_stdout("admin token:", Duration::from_secs(60)).await;
    let lines: Vec<String> =
        p.stdout.lock().unwrap().iter().filter(|l| l.contains("http://127.0.0.1:")).cloned().collect();
    let mut urls = Vec::new();
    let mut pids = Vec::new();
    for l in lines.iter().filter(|l| l.trim_start().starts_with("node-")) {
        urls.push(l.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string());
        pids.push(l.split_whitespace().last().unwrap().parse().unwrap());
    }
    assert_eq!(urls.len(), n, "stdout:\n{}", p.stdout_text());
    (p, urls, pids)
}

/// Every local user can read a process's argv (`ps`, `/proc/PID/cmdline`): the children of
/// `cohort up` must get the cluster key and the admin token by file, never as arguments.
fn assert_no_secret_in_argv(p: &Proc, token: &str, pids: &[i32]) {
    let out = p.stdout_text();
    let work_dir = out.split("(work dir ").nth(1).and_then(|rest| rest.split(')').next()).expect("work dir printed");
    let key = std::fs::read_to_string(std::path::Path::new(work_dir).join("cluster.key")).unwrap();
    let key = key.trim();
    assert_eq!(cohort::cluster::auth::ClusterSecret::from_text(key).unwrap().len(), 32);
    let token_file = out.lines().find_map(|l| l.strip_prefix("admin token file: ")).expect("token file printed");
    assert_eq!(std::fs::read_to_string(token_file).unwrap().trim(), token);
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains("--admin-token-file"), "pid {pid}: {cmdline}");
        assert!(!cmdline.contains(token), "pid {pid} has the admin token in argv: {cmdline}");
        assert!(!cmdline.contains(key), "pid {pid} has the cluster key in argv: {cmdline}");
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence; a zombie counts as gone for this purpose only
    // after its parent reaps it, so callers poll.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn up_starts_three_healthy_nodes_and_sigterm_stops_them_all() {
    let (mut p, urls, pids) = up(3).await;
    let token = p.stdout_text().lines().find_map(|l| l.strip_prefix("admin token: ").map(str::to_string)).unwrap();
    assert!(token.len() >= 16);
    assert_no_secret_in_argv(&p, &token, &pids);
    let mut names = Vec::new();
    for url in &urls {
        assert_eq!(get(url, "/livez").await.status, 200, "{url}");
        assert_eq!(get(url, "/readyz").await.status, 200, "{url}");
        let node = get(url, "/admin/node").await.json();
        names.push(node["node"].as_str().unwrap().to_string());
        let metrics = get(url, "/metrics").await;
        assert_eq!(metrics.status, 200);
        promtool_check(&metrics.body);
    }
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    // They form one cluster: every node lists every member alive, and its transport is connected
    // to the two others.
    for url in &urls {
        let url = url.clone();
        wait_for(Duration::from_secs(10), "every member alive on every node", || {
            let url = url.clone();
            async move {
                let j = get(&url, "/admin/cluster/members").await.json();
                let members = j["members"].as_array()?.clone();
                let alive = members.iter().filter(|m| m["state"] == "alive").count();
                (members.len() == 3 && alive == 3).then_some(())
            }
        })
        .await;
        let url2 = url.clone();
        wait_for(Duration::from_secs(10), "transport connected to both peers", || {
            let url = url2.clone();
            async move {
                let j = get(&url, "/admin/transport").await.json();
                let peers = j["peers"].as_array()?.clone();
                (peers.len() == 2 && peers.iter().all(|p| p["connected"] == true)).then_some(())
            }
        })
        .await;
    }
    // Chaos is enabled and the token is in force: a mutating endpoint accepts the printed token.
    let auth = format!("Bearer {token}");
    let a = common::request(
        "POST",
        &urls[0],
        "/admin/log-filter",
        &[("Authorization", &auth)],
        Some(r#"{"filter":"warn"}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    let mut ids = Vec::new();
    for url in &urls {
        ids.push(identity(url).await.expect("node answers"));
    }
    p.signal(libc::SIGTERM);
    let (code, took) = p.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", p.stderr_text());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for (url, id) in urls.iter().zip(&ids) {
        assert!(!still_serves(url, id).await, "{url} still serving after cohort up stopped");
    }
}

#[tokio::test]
async fn a_dead_child_stops_the_others_and_up_exits_1() {
    let (mut p, urls, pids) = up(2).await;
    let first = identity(&urls[0]).await.expect("node-1 answers");
    // SAFETY: killing a child of the process under test.
    unsafe {
        libc::kill(pids[1], libc::SIGKILL);
    }
    let (code, _) = p.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(1), "{}", p.stderr_text());
    assert!(p.stderr_text().contains("node-2 exited"), "{}", p.stderr_text());
    assert!(!still_serves(&urls[0], &first).await, "node-1 must be stopped too");
}

#[tokio::test]
async fn killing_up_with_sigkill_leaves_no_orphans() {
    let (mut p, urls, pids) = up(2).await;
    let mut ids = Vec::new();
    for url in &urls {
        ids.push(identity(url).await.expect("node answers"));
    }
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5)).await;
    // The children get SIGTERM from the kernel (PR_SET_PDEATHSIG) and exit; init reaps them.
    wait_for(Duration::from_secs(10), "children to exit", || {
        let gone = pids.iter().all(|&pid| !alive(pid));
        async move { gone.then_some(()) }
    })
    .await;
    for (url, id) in urls.iter().zip(&ids) {
        assert!(!still_serves(url, id).await);
    }
}

#[test]
fn up_refuses_a_bad_node_count() {
    let out = std::process::Command::new(common::BIN).args(["up", "--nodes", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
    let _ = field("", "");
}
