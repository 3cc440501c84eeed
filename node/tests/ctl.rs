//! `cohort ctl` as an operator and a script run it, against real nodes: tables and `-o json` of
//! `members`, `status`, `raft`, `names`, `lookup`, `pg`, `faults`; a partition set with
//! `faults set` shows in `members` and `faults clear --all` heals it; the exit codes (1 for a node
//! that cannot be reached, answers garbage or never answers, 2 for a bad flag or a missing token,
//! 3 for a name that is not registered); no panic on a malformed answer.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const TOKEN: &str = "ctl-test-token-0123456789";

/// What one `cohort ctl` run printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The table's rows as whitespace-split fields, header included.
    fn rows(&self) -> Vec<Vec<String>> {
        self.stdout.lines().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    }

    fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }
}

/// `cohort ctl --node URL ARGS` with a clean COHORT_* environment plus `env`; stdout is a pipe,
/// so never coloured.
async fn ctl_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(common::BIN);
    cmd.arg("ctl").args(["--node", url]).args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("COHORT_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run cohort ctl")).await.unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "cohort ctl panicked: {run:?}");
    assert!(!run.stdout.contains('\x1b'), "colours on a pipe: {run:?}");
    run
}

async fn ctl(url: &str, args: &[&str]) -> Run {
    ctl_env(url, args, &[]).await
}

/// `(name, state)` of each member in a `members -o json` answer.
fn states(members: &Value) -> Vec<(String, String)> {
    members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["node"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
        .collect()
}

/// Poll `members -o json` at `url` until it shows exactly `want`.
async fn wait_members(url: &str, want: &[(&str, &str)], within: Duration) {
    let want: Vec<(String, String)> = want.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
    let what = format!("{url} to see {want:?}");
    common::wait_for(within, &what, || {
        let want = want.clone();
        async move {
            let run = ctl(url, &["members", "-o", "json"]).await;
            (run.code == Some(0) && states(&run.json()) == want).then_some(())
        }
    })
    .await;
}

const ALL_ALIVE: [(&str, &str); 3] = [("n0", "alive"), ("n1", "alive"), ("n2", "alive")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reads_a_cluster_and_partitions_and_heals_it() {
    let cluster = common::chaos_cluster("ctl", 3, TOKEN).await;
    let urls = cluster.urls.clone();
    let n0 = urls[0].as_str();
    for u in &urls {
        wait_members(u, &ALL_ALIVE, Duration::from_secs(15)).await;
    }

    // members: JSON as the endpoint documents it, and an aligned table with this node marked.
    let members = ctl(n0, &["members", "-o", "json"]).await.assert_ok().json();
    let self_rows: Vec<&Value> =
        members["members"].as_array().unwrap().iter().filter(|m| m["self"] == json!(true)).collect();
    assert_eq!(self_rows.len(), 1);
    assert_eq!(self_rows[0]["node"], "n0");
    let table = ctl(n0, &["members"]).await;
    let rows = table.assert_ok().rows();
    assert_eq!(rows[0], ["NODE", "STATE", "INCARNATION", "HTTP", "GOSSIP", "INTERNODE", "RAFT", "DOMAIN"], "{table:?}");
    assert_eq!(rows.len(), 4, "{table:?}");
    assert_eq!(&rows[1][..2], ["n0*", "alive"], "{table:?}");
    assert_eq!(&rows[2][..2], ["n1", "alive"], "{table:?}");
    assert_eq!(rows[1][3], n0.trim_start_matches("http://"), "{table:?}");
    // Columns line up: every row's second field starts where the header's does.
    let column = table.stdout.lines().next().unwrap().find("STATE").unwrap();
    assert!(table.stdout.lines().all(|l| l[column..].starts_with(['S', 'a'])), "{table:?}");

    // raft: the voter set settles at the three nodes, with a leader.
    let leader = common::wait_for(Duration::from_secs(20), "three voters and a leader", || async move {
        let r = ctl(n0, &["raft", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        (r.code == Some(0) && v["voters"].as_array().map(Vec::len) == Some(3))
            .then(|| v["leader"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    let raft = ctl(n0, &["raft"]).await;
    assert!(raft.assert_ok().stdout.contains("voters         n0, n1, n2\n"), "{raft:?}");
    assert!(raft.stdout.contains(&format!("leader         {leader}\n")), "{raft:?}");

    // status: one screen, exit 0 when live and ready; JSON with every section.
    let status = ctl(n0, &["status"]).await;
    let text = &status.assert_ok().stdout;
    for needle in ["node              n0 (incarnation ", "live              yes\n", "ready             yes\n"] {
        assert!(text.contains(needle), "missing {needle:?}: {status:?}");
    }
    assert!(text.contains("degraded mode     ") && text.contains("PEER  CONNECTED  QUEUED"), "{status:?}");
    let status = ctl(n0, &["status", "-o", "json"]).await;
    let v = status.assert_ok().json();
    assert_eq!(
        (v["live"].clone(), v["ready"].clone(), v["node"]["node"].clone()),
        (json!(true), json!(true), json!("n0"))
    );
    assert!(v["raft"]["term"].is_u64() && v["planes"]["control"]["degraded_mode"].is_string(), "{v}");
    assert_eq!(v["transport"]["peers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["errors"], json!({}));

    // names and lookup, through a probe registered in two tiers.
    let (s, spawned) = common::post_json(n0, "/admin/probe/spawn", TOKEN, json!({"count": 1})).await;
    assert_eq!(s, 200, "{spawned}");
    let pid = spawned["pids"][0].as_str().unwrap().to_string();
    for (tier, name) in [("eventual", "ctl/eventual name"), ("consistent", "ctl-consistent")] {
        let (s, body) =
            common::post_json(n0, "/admin/probe/register", TOKEN, json!({"tier": tier, "name": name, "pid": pid}))
                .await;
        assert_eq!(s, 200, "{tier}: {body}");
    }
    let names = ctl(n0, &["names", "--tier", "consistent", "-o", "json"]).await;
    let v = names.assert_ok().json();
    assert_eq!(v["names"][0]["name"], "ctl-consistent", "{v}");
    assert!(v["names"][0]["fence_token"].is_u64() && v["witness"]["degraded_mode"].is_string(), "{v}");
    let names = ctl(n0, &["names"]).await;
    let text = &names.assert_ok().stdout;
    assert!(text.starts_with("TIER        NAME"), "{names:?}");
    assert!(text.lines().any(|l| l.starts_with("eventual    ctl/eventual name  ") && l.contains(&pid)), "{names:?}");
    assert!(text.lines().any(|l| l.starts_with("consistent  ctl-consistent") && l.contains(&pid)), "{names:?}");
    let all = ctl(n0, &["names", "-o", "json"]).await.json();
    assert!(all["local"]["names"].is_array() && all["eventual"]["names"].is_array(), "{all}");
    // A name with a slash and a space is one path segment.
    let found = ctl(n0, &["lookup", "ctl/eventual name", "-o", "json"]).await;
    assert_eq!(found.assert_ok().json()["pid"], json!(pid));
    let strong = ctl(urls[1].as_str(), &["lookup", "ctl-consistent", "--freshness", "strong"]).await;
    let text = &strong.assert_ok().stdout;
    assert!(text.contains("tier           consistent\n") && text.contains("freshness      strong"), "{strong:?}");
    let missing = ctl(n0, &["lookup", "no-such-name"]).await;
    assert_eq!(missing.code, Some(3), "{missing:?}");
    assert!(missing.stderr.contains("`no-such-name` is not registered"), "{missing:?}");
    assert!(missing.stdout.is_empty(), "{missing:?}");

    // pg: a group joined twice by one pid.
    let (s, body) = common::post_json(
        n0,
        "/admin/probe/join",
        TOKEN,
        json!({"group": "ctl-workers", "pids": [pid.clone(), pid.clone()]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let groups = ctl(n0, &["pg", "groups", "-o", "json"]).await;
    let g = groups.assert_ok().json();
    let row = g["groups"].as_array().unwrap().iter().find(|r| r["group"] == "ctl-workers").cloned();
    assert_eq!(row, Some(json!({"group": "ctl-workers", "members": 2, "local_members": 2})), "{g}");
    let members = ctl(n0, &["pg", "members", "ctl-workers"]).await;
    assert_eq!(members.assert_ok().rows(), [vec!["PID", "JOINS", "LOCAL"], vec![pid.as_str(), "2", "yes"]]);
    let no_scope = ctl(n0, &["pg", "groups", "--scope", "absent"]).await;
    assert_eq!(no_scope.code, Some(1), "{no_scope:?}");
    assert!(no_scope.stderr.contains("404 NotFound"), "{no_scope:?}");

    // faults: mutations need the token (missing: exit 2; wrong: the node's 401, exit 1).
    let no_token = ctl(n0, &["faults", "set", "--peer", "n2", "--drop", "1"]).await;
    assert_eq!(no_token.code, Some(2), "{no_token:?}");
    assert!(no_token.stderr.contains("COHORT_ADMIN_TOKEN"), "{no_token:?}");
    let wrong = ctl_env(n0, &["faults", "clear"], &[("COHORT_ADMIN_TOKEN", "not-the-token-0123456789")]).await;
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    assert!(wrong.stderr.contains("401 Unauthorized"), "{wrong:?}");

    // Someone watches n0's decision log live while the partition happens, from what it holds
    // now on.
    let now = ctl(n0, &["events", "-o", "json"]).await.assert_ok().json()["next"].to_string();
    let follow = common::Proc::spawn_env(
        &["ctl", "events", "--follow", "--kind", "MemberSuspected,MemberDown,MemberUp", "--since", &now, "--node", n0],
        &[],
    );

    // {n0, n1} | {n2}: the token from the environment on one side, from a file on the other.
    let env = [("COHORT_ADMIN_TOKEN", TOKEN)];
    for u in &urls[..2] {
        let set = ctl_env(u, &["faults", "set", "--peer", "n2", "--drop", "1"], &env).await;
        assert_eq!(
            set.assert_ok().rows(),
            [vec!["PEER", "DIRECTION", "DROP", "DELAY", "JITTER"], vec!["n2", "both", "1", "0ms", "0ms"]]
        );
    }
    let dir = std::env::temp_dir().join(format!("cohort-ctl-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = common::write_token_file(&dir, TOKEN);
    let token_file = token_file.to_str().unwrap();
    let set = ctl(
        &urls[2],
        &["faults", "set", "--peer", "n0", "--peer", "n1", "--drop", "1.0", "--admin-token-file", token_file],
    )
    .await;
    set.assert_ok();
    let shown = ctl(&urls[2], &["faults", "show", "-o", "json"]).await;
    let peers: Vec<Value> =
        shown.assert_ok().json()["rules"]["rules"].as_array().unwrap().iter().map(|r| r["peer"].clone()).collect();
    assert_eq!(peers, [json!("n0"), json!("n1")]);

    let split = Duration::from_secs(20);
    wait_members(n0, &[("n0", "alive"), ("n1", "alive"), ("n2", "down")], split).await;
    wait_members(&urls[2], &[("n0", "down"), ("n1", "down"), ("n2", "alive")], split).await;
    let table = ctl(n0, &["members"]).await;
    let down: Vec<String> = table.rows().into_iter().filter(|r| r[1] == "down").map(|r| r[0].clone()).collect();
    assert_eq!(down, ["n2"], "{table:?}");
    // The cut-off node is not ready: `status` says so and exits 3.
    let cut = common::wait_for(Duration::from_secs(10), "n2 not ready", || {
        let u = urls[2].clone();
        async move {
            let r = ctl(&u, &["status"]).await;
            (r.code == Some(3)).then_some(r)
        }
    })
    .await;
    assert!(cut.stdout.contains("ready             no ("), "{cut:?}");

    // `events --follow` printed the downing of n2 as it happened; `events` shows it with its
    // evidence in JSON.
    follow.wait_stdout("MemberDown", Duration::from_secs(10)).await;
    let downs = ctl(n0, &["events", "--kind", "MemberDown", "-o", "json"]).await;
    let downs = downs.assert_ok().json();
    let n2_down =
        downs["events"].as_array().unwrap().iter().find(|e| e["subject"].as_str().unwrap_or("").starts_with("n2."));
    assert!(n2_down.is_some_and(|e| e["evidence"]["detail"].is_string()), "{downs}");
    let table = ctl(n0, &["events", "--kind", "MemberDown"]).await;
    assert_eq!(table.assert_ok().rows()[0], ["SEQ", "UTC", "KIND", "SUBJECT", "SUMMARY"]);
    assert_eq!(ctl(n0, &["events", "--kind", "Nope"]).await.code, Some(1), "the node refuses an unknown kind");

    // Heal from one node: every member's rules cleared, every view whole again.
    let cleared = ctl(n0, &["faults", "clear", "--all", "-o", "json", "--admin-token-file", token_file]).await;
    let nodes = cleared.assert_ok().json()["nodes"].clone();
    assert_eq!(nodes.as_array().unwrap().len(), 3, "{nodes}");
    assert!(nodes.as_array().unwrap().iter().all(|n| n["result"] == "cleared"), "{nodes}");
    for u in &urls {
        let shown = ctl(u, &["faults", "show"]).await;
        assert_eq!(shown.assert_ok().stdout, "no fault rules\n");
    }
    for u in &urls {
        wait_members(u, &ALL_ALIVE, Duration::from_secs(30)).await;
    }
    follow.wait_stdout("MemberUp", Duration::from_secs(10)).await;
    drop(follow);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A fake node on 127.0.0.1 that answers every request with `response(its url)` (raw HTTP), or
/// never answers when that is `None`. Its thread lives as long as the test process.
fn fake_node(response: impl Fn(&str) -> Option<String> + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = response(&url);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut buf);
            match &answer {
                Some(r) => {
                    let _ = stream.write_all(r.as_bytes());
                }
                None => held.push(stream),
            }
        }
    });
    url
}

fn http_200(body: &str) -> Option<String> {
    Some(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_an_unreachable_node_a_bad_answer_and_bad_usage_apart() {
    // Nothing listens: exit 1, "cannot reach".
    let closed = closed_port_url();
    for args in [&["members"][..], &["status"], &["names"], &["faults", "show"]] {
        let r = ctl(&closed, args).await;
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains("cannot reach the node at") && r.stderr.contains("refused"), "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }

    // A node that accepts but never answers: exit 1 within the timeout.
    let hung = fake_node(|_| None);
    let start = std::time::Instant::now();
    let r = ctl(&hung, &["raft", "--timeout", "500ms"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("no answer within 0.5 s"), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    // Garbage and wrong shapes: exit 1 with the request named, never a panic.
    let garbage = fake_node(|_| http_200("<html>not json</html>"));
    let r = ctl(&garbage, &["members"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("GET /admin/cluster/members") && r.stderr.contains("not JSON"), "{r:?}");
    let wrong = fake_node(|_| http_200(r#"{"members": 5, "peers": [{"node": 1}], "role": []}"#));
    for args in [&["members"][..], &["raft"], &["names", "--tier", "local"], &["pg", "groups"], &["faults", "show"]] {
        let r = ctl(&wrong, args).await;
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains("is not what cohort ctl understands"), "{args:?}: {r:?}");
    }
    // `-o json` passes the node's JSON through, whatever its shape.
    let r = ctl(&wrong, &["members", "-o", "json"]).await;
    assert_eq!(r.assert_ok().json()["members"], json!(5));
    let r = ctl(&wrong, &["status"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    // An error page that is not JSON still names the status.
    let proxy = fake_node(|_| {
        Some("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad gateway".into())
    });
    let r = ctl(&proxy, &["raft"]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("502 Http502: bad gateway"), "{r:?}");

    // `faults clear --all` sends nothing to an address that does not answer as the member (another
    // node on this machine behind a member's loopback address) nor to a wildcard address.
    let impostor = fake_node(|url| {
        let me = url.trim_start_matches("http://");
        let addrs = json!({"http": me, "gossip": me, "internode": me});
        let wild = json!({"http": "0.0.0.0:7480", "gossip": me, "internode": me});
        http_200(
            &json!({
                "members": [
                    {"node": "ghost", "incarnation": 1, "state": "alive", "addrs": addrs, "raft_eligible": true, "self": true},
                    {"node": "wild", "incarnation": 3, "state": "alive", "addrs": wild, "raft_eligible": true, "self": false},
                    {"node": "gone", "incarnation": 4, "state": "left", "addrs": wild, "raft_eligible": true, "self": false},
                ],
                "node": "other", "incarnation": 2, "version": "0", "uptime_s": 1, "addrs": addrs,
            })
            .to_string(),
        )
    });
    let r = ctl_env(&impostor, &["faults", "clear", "--all"], &[("COHORT_ADMIN_TOKEN", TOKEN)]).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(
        r.rows().iter().map(|row| row[2].as_str()).collect::<Vec<_>>(),
        ["RESULT", "failed", "failed", "skipped"]
    );
    assert!(r.stderr.contains("ghost: ") && r.stderr.contains("answers as other (incarnation 2)"), "{r:?}");
    assert!(r.stderr.contains("wild: ") && r.stderr.contains("wildcard HTTP address 0.0.0.0:7480"), "{r:?}");

    // Bad usage: exit 2 before any request.
    for args in [
        &["members", "--bogus"][..],
        &["-o", "yaml", "members"],
        &["frobnicate"],
        &["lookup"],
        &["names", "--tier", "global"],
        &["lookup", "x", "--tier", "local", "--freshness", "strong"],
        &["faults", "set", "--peer", "n1"],
        &["faults", "set", "--peer", "n1", "--drop", "2"],
        &["faults", "set", "--peer", "n1", "--direction", "sideways", "--drop", "1"],
        &["members", "--timeout", "0"],
        &["members", "--admin-token", "secret-in-argv"],
    ] {
        let r = ctl(&closed, args).await;
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("cannot reach"), "{args:?} reached for the node: {r:?}");
    }
    let r = ctl("https://127.0.0.1:1", &["members"]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("plain HTTP"), "{r:?}");
    let r = ctl_env(&closed, &["faults", "clear"], &[("COHORT_ADMIN_TOKEN_FILE", "/nonexistent/admin.token")]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("/nonexistent/admin.token"), "{r:?}");
}
