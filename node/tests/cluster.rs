//! Nodes forming a cluster, seen the way an operator sees it: through `/admin/cluster/members`,
//! `/admin/transport`, `/readyz`, `/metrics` and `POST /admin/faults`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cohort::{Config, Node};
use common::{Proc, as_strs, get, node_args, request, wait_for};

const TOKEN: &str = "cluster-test-token-0123456789";

fn secret_file(key: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cohort-cluster-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    path
}

fn config(name: &str, secret: &Path, seeds: &[&Node]) -> Config {
    let mut c = Config {
        name: name.into(),
        data_dir: std::env::temp_dir().join(format!(
            "cohort-cluster-{}-{name}-{}",
            std::process::id(),
            common::rand_suffix()
        )),
        admin_token: Some(TOKEN.into()),
        cluster_secret_file: Some(secret.to_path_buf()),
        seeds: seeds.iter().map(|n| n.addrs().gossip.to_string()).collect(),
        ..Config::default()
    };
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.gossip.addr = "127.0.0.1:0".parse().unwrap();
    c.internode.addr = "127.0.0.1:0".parse().unwrap();
    c.chaos.enabled = true;
    c.validate().unwrap();
    c
}

fn url(n: &Node) -> String {
    format!("http://{}", n.addrs().http)
}

/// `name -> state` as `/admin/cluster/members` of `n` reports it.
async fn states(n: &Node) -> Vec<(String, String)> {
    let j = get(&url(n), "/admin/cluster/members").await.json();
    j["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["node"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
        .collect()
}

async fn wait_states(n: &Node, want: &[(&str, &str)], within: Duration) {
    let mut want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    want.sort();
    let what = format!("{} to see {want:?}", n.id().name);
    wait_for(within, &what, || {
        let want = want.clone();
        async move {
            let mut got = states(n).await;
            got.sort();
            (got == want).then_some(())
        }
    })
    .await;
}

async fn three(secret: &Path) -> (Node, Node, Node) {
    let a = Node::start(config("a", secret, &[])).await.unwrap();
    let b = Node::start(config("b", secret, &[&a])).await.unwrap();
    let c = Node::start(config("c", secret, &[&a])).await.unwrap();
    (a, b, c)
}

const ALL_ALIVE: [(&str, &str); 3] = [("a", "alive"), ("b", "alive"), ("c", "alive")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_with_connected_transports_and_are_ready() {
    let secret = secret_file(common::TEST_KEY);
    let (a, b, c) = three(&secret).await;
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(10)).await;
        let u = url(n);
        wait_for(Duration::from_secs(10), "transport connected to both peers", || {
            let u = u.clone();
            async move {
                let j = get(&u, "/admin/transport").await.json();
                let peers = j["peers"].as_array()?.clone();
                let ok = peers.len() == 2
                    && peers.iter().all(|p| p["connected"] == true && p["classes"].as_array().map(Vec::len) == Some(5));
                ok.then_some(())
            }
        })
        .await;
        let ready = get(&u, "/readyz").await;
        assert_eq!(ready.status, 200, "{ready:?}");
        assert!(ready.body.contains("\"cluster\""));
        let live = get(&u, "/livez").await.json();
        assert!(live["checks"].as_array().unwrap().iter().any(|c| c["name"] == "gossip" && c["ok"] == true), "{live}");
        let m = get(&u, "/metrics").await.body;
        common::promtool_check(&m);
        assert!(m.contains("cohort_cluster_members{state=\"alive\"} 3"), "{m}");
    }
    for n in [c, b, a] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_installed_through_the_admin_api_splits_the_views_and_heal_reunites_them() {
    let secret = secret_file(common::TEST_KEY);
    let (a, b, c) = three(&secret).await;
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(10)).await;
    }
    let auth = format!("Bearer {TOKEN}");
    let h = [("Authorization", auth.as_str())];
    // {a, b} | {c}: every node drops all traffic with the other side.
    let cut_c = r#"{"rules":[{"peer":"c","direction":"both","drop":1.0}]}"#;
    let cut_ab = r#"{"rules":[{"peer":"a","drop":1.0},{"peer":"b","drop":1.0}]}"#;
    for (n, body) in [(&a, cut_c), (&b, cut_c), (&c, cut_ab)] {
        assert_eq!(request("POST", &url(n), "/admin/faults", &h, Some(body)).await.status, 200);
    }
    let split = Duration::from_secs(15);
    wait_states(&a, &[("a", "alive"), ("b", "alive"), ("c", "down")], split).await;
    wait_states(&b, &[("a", "alive"), ("b", "alive"), ("c", "down")], split).await;
    wait_states(&c, &[("a", "down"), ("b", "down"), ("c", "alive")], split).await;
    // The injected drops are counted.
    let m = get(&url(&a), "/metrics").await.body;
    assert!(
        m.lines()
            .any(|l| l.starts_with("cohort_gossip_dropped_total{reason=\"fault_injected\"}") && !l.ends_with(" 0")),
        "{m}"
    );

    for n in [&a, &b, &c] {
        assert_eq!(request("DELETE", &url(n), "/admin/faults", &h, None).await.status, 200);
    }
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(20)).await;
    }
    for n in [c, b, a] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_refused_and_counted() {
    let secret = secret_file(common::TEST_KEY);
    let other = secret_file(common::OTHER_KEY);
    let a = Node::start(config("a", &secret, &[])).await.unwrap();
    let intruder = Node::start(config("x", &other, &[&a])).await.unwrap();
    let u = url(&a);
    wait_for(Duration::from_secs(10), "gossip auth failures counted on a", || {
        let u = u.clone();
        async move {
            let m = get(&u, "/metrics").await.body;
            let failures = common::metric_sum(&m, "cohort_gossip_auth_failures_total");
            (failures > 0.0).then_some(failures)
        }
    })
    .await;
    assert_eq!(states(&a).await, vec![("a".to_string(), "alive".to_string())]);
    // The intruder never joins: not ready, and alone in its own view.
    assert_eq!(get(&url(&intruder), "/readyz").await.status, 503);
    assert_eq!(states(&intruder).await, vec![("x".to_string(), "alive".to_string())]);
    intruder.shutdown().await;
    a.shutdown().await;
}

/// Key rotation (issue 14): in the middle of a rotation (one node has only added the next key,
/// two have already switched to it and keep the old one as their next) every pair still
/// handshakes, both ways, and gossips: the cluster forms with every transport link connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_in_the_middle_of_a_key_rotation_form_a_cluster() {
    let (old, new) = (secret_file(common::TEST_KEY), secret_file(common::OTHER_KEY));
    let with_next = |mut c: Config, next: &Path| {
        c.cluster_secret_file_next = Some(next.to_path_buf());
        c.validate().unwrap();
        c
    };
    let a = Node::start(with_next(config("a", &old, &[]), &new)).await.unwrap();
    let b = Node::start(with_next(config("b", &new, &[&a]), &old)).await.unwrap();
    let c = Node::start(with_next(config("c", &new, &[&a]), &old)).await.unwrap();
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(15)).await;
        let u = url(n);
        wait_for(Duration::from_secs(15), "transport connected to both peers", || {
            let u = u.clone();
            async move {
                let j = get(&u, "/admin/transport").await.json();
                let peers = j["peers"].as_array()?.clone();
                (peers.len() == 2 && peers.iter().all(|p| p["connected"] == true)).then_some(())
            }
        })
        .await;
        let m = get(&u, "/metrics").await.body;
        assert_eq!(common::metric_sum(&m, "cohort_gossip_auth_failures_total"), 0.0, "{m}");
    }
    for n in [c, b, a] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_is_seen_as_left() {
    let secret = secret_file(common::TEST_KEY);
    let (a, b, c) = three(&secret).await;
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(10)).await;
    }
    c.shutdown().await;
    let want = [("a", "alive"), ("b", "alive"), ("c", "left")];
    wait_states(&a, &want, Duration::from_secs(10)).await;
    wait_states(&b, &want, Duration::from_secs(10)).await;
    // The transport dropped the peer that left.
    let j = get(&url(&a), "/admin/transport").await.json();
    assert!(j["peers"].as_array().unwrap().iter().all(|p| p["node"] != "c"), "{j}");
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_killed_node_process_is_marked_down_everywhere_on_its_refused_connections() {
    let secret = secret_file(common::TEST_KEY);
    let secret_arg = secret.display().to_string();
    let spawn = |name: &str, seeds: Option<String>| {
        let mut args = node_args(name);
        args.extend(["--cluster-secret-file".into(), secret_arg.clone(), "--log-filter".into(), "warn".into()]);
        if let Some(s) = seeds {
            args.extend(["--seeds".into(), s]);
        }
        Proc::spawn(&as_strs(&args))
    };
    let a = spawn("a", None);
    let a_line = a.wait_stdout("cohort node listening", Duration::from_secs(20)).await;
    let seed = common::field(&a_line, "gossip").unwrap();
    let b = spawn("b", Some(seed.clone()));
    let c = spawn("c", Some(seed));
    let urls = [a.node_url().await, b.node_url().await, c.node_url().await];
    for u in &urls {
        let u = u.clone();
        wait_for(Duration::from_secs(10), "three alive", || {
            let u = u.clone();
            async move {
                let j = get(&u, "/admin/cluster/members").await.json();
                (j["members"].as_array()?.iter().filter(|m| m["state"] == "alive").count() == 3).then_some(())
            }
        })
        .await;
    }
    c.signal(libc::SIGKILL);
    let killed = Instant::now();
    for u in &urls[..2] {
        let u = u.clone();
        wait_for(Duration::from_secs(5), "c down within 5 s", || {
            let u = u.clone();
            async move {
                let j = get(&u, "/admin/cluster/members").await.json();
                j["members"].as_array()?.iter().any(|m| m["node"] == "c" && m["state"] == "down").then_some(())
            }
        })
        .await;
    }
    eprintln!("killed node marked down on both survivors after {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(5));
    // The refused dials did it (a killed process's port refuses at once), not SWIM's probe and
    // suspicion timeouts: a survivor counts a down on that evidence.
    let mut downs = 0.0;
    for u in &urls[..2] {
        let m = get(u, "/metrics").await.body;
        downs += m
            .lines()
            .filter(|l| l.starts_with("cohort_membership_refused_connections_total") && l.contains("action=\"down\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(downs >= 1.0, "no survivor declared the killed node down on refused connections");
}

/// `config` with the gossip and internode listeners bound to `bind` (port 0) and `advertise`.
fn config_bound(name: &str, secret: &Path, seeds: Vec<String>, bind: &str, advertise: Option<&str>) -> Config {
    let mut c = config(name, secret, &[]);
    c.seeds = seeds;
    c.gossip.addr = format!("{bind}:0").parse().unwrap();
    c.internode.addr = format!("{bind}:0").parse().unwrap();
    c.advertise = advertise.map(str::to_string);
    c.validate().unwrap();
    c
}

/// The gossip address `observer` lists for `node` in `/admin/cluster/members`.
async fn listed_gossip_addr(observer: &Node, node: &str) -> Option<String> {
    let j = get(&url(observer), "/admin/cluster/members").await.json();
    let row = j["members"].as_array()?.iter().find(|m| m["node"] == node)?.clone();
    row["addrs"]["gossip"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_bound_to_wildcard_addresses_announce_their_advertised_host_and_join_through_a_dns_seed() {
    let secret = secret_file(common::TEST_KEY);
    // a: IPv4 wildcard; b: the dual-stack IPv6 wildcard, reached over IPv4 (it sends to IPv4
    // peers through their IPv4-mapped addresses); c: joins through a host name.
    let a = Node::start(config_bound("a", &secret, vec![], "0.0.0.0", Some("127.0.0.1"))).await.unwrap();
    assert!(a.bound_addrs().gossip.ip().is_unspecified());
    assert_eq!(a.addrs().gossip, format!("127.0.0.1:{}", a.bound_addrs().gossip.port()).parse().unwrap());
    assert_eq!(a.addrs().internode.port(), a.bound_addrs().internode.port());
    let seed = vec![a.addrs().gossip.to_string()];
    let b = Node::start(config_bound("b", &secret, seed, "[::]", Some("127.0.0.1"))).await.unwrap();
    assert!(b.bound_addrs().gossip.is_ipv6());
    let by_name = vec![format!("localhost:{}", a.addrs().gossip.port())];
    let c = Node::start(config_bound("c", &secret, by_name, "0.0.0.0", Some("localhost"))).await.unwrap();
    assert_eq!(c.addrs().gossip.ip().to_string(), "127.0.0.1", "localhost resolves in the bound family");
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(15)).await;
    }
    // Peers know each node by what it announced, never by the wildcard it bound.
    for (observer, node, addr) in
        [(&b, "a", a.addrs().gossip), (&a, "b", b.addrs().gossip), (&a, "c", c.addrs().gossip)]
    {
        assert_eq!(listed_gossip_addr(observer, node).await, Some(addr.to_string()));
    }
    let u = url(&b);
    wait_for(Duration::from_secs(10), "b's transport connected to both peers", || {
        let u = u.clone();
        async move {
            let j = get(&u, "/admin/transport").await.json();
            let peers = j["peers"].as_array()?.clone();
            (peers.len() == 2 && peers.iter().all(|p| p["connected"] == true)).then_some(())
        }
    })
    .await;
    for n in [c, b, a] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_nodes_form_a_cluster() {
    let secret = secret_file(common::TEST_KEY);
    let a = Node::start(config_bound("a", &secret, vec![], "[::1]", None)).await.unwrap();
    assert!(a.addrs().gossip.is_ipv6());
    let seed = vec![a.addrs().gossip.to_string()];
    let b = Node::start(config_bound("b", &secret, seed.clone(), "[::1]", None)).await.unwrap();
    let c = Node::start(config_bound("c", &secret, seed, "[::]", Some("::1"))).await.unwrap();
    assert_eq!(c.addrs().gossip.ip().to_string(), "::1");
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(15)).await;
    }
    for n in [c, b, a] {
        n.shutdown().await;
    }
}

/// Reads a Server-Sent Events stream from `base` + `path` until a `decision` event whose JSON
/// satisfies `want`, within `within`; returns that JSON.
async fn sse_until(
    base: &str,
    path: &str,
    within: Duration,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let deadline = Instant::now() + within;
    let mut text = String::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        for block in text.split("\n\n") {
            if !block.contains("event: decision") {
                continue;
            }
            let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&data)
                && want(&json)
            {
                return json;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching decision on the stream within {within:?}:\n{text}");
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("the stream closed:\n{text}"),
            Ok(Ok(n)) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("no matching decision on the stream within {within:?}:\n{text}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_explains_a_partition_the_downing_and_the_heal() {
    let secret = secret_file(common::TEST_KEY);
    let (a, b, c) = three(&secret).await;
    for n in [&a, &b, &c] {
        wait_states(n, &ALL_ALIVE, Duration::from_secs(10)).await;
    }
    // Every member's arrival is on record, with its address as evidence.
    let ups = get(&url(&a), "/admin/events?kind=MemberUp").await.json();
    let subjects: Vec<&str> = ups["events"].as_array().unwrap().iter().filter_map(|e| e["subject"].as_str()).collect();
    assert!(subjects.iter().any(|s| s.starts_with("c.")), "{ups}");
    assert_eq!(get(&url(&a), "/admin/events?kind=Nope").await.status, 400);
    let since = ups["next"].as_u64().unwrap();

    let auth = format!("Bearer {TOKEN}");
    let h = [("Authorization", auth.as_str())];
    let cut_c = r#"{"rules":[{"peer":"c","direction":"both","drop":1.0}]}"#;
    let cut_ab = r#"{"rules":[{"peer":"a","drop":1.0},{"peer":"b","drop":1.0}]}"#;
    for (n, body) in [(&a, cut_c), (&b, cut_c), (&c, cut_ab)] {
        assert_eq!(request("POST", &url(n), "/admin/faults", &h, Some(body)).await.status, 200);
    }
    // The suspicion, then the downing, each with its evidence, in that order.
    let page = wait_for(Duration::from_secs(20), "a records c suspected, then down", || async {
        let page = get(&url(&a), &format!("/admin/events?since={since}")).await.json();
        let events = page["events"].as_array()?.clone();
        let about_c = |kind: &str| {
            events.iter().position(|e| e["kind"] == kind && e["subject"].as_str().is_some_and(|s| s.starts_with("c.")))
        };
        match (about_c("MemberSuspected"), about_c("MemberDown")) {
            (Some(suspected), Some(down)) if suspected < down => Some(page),
            _ => None,
        }
    })
    .await;
    let down = page["events"].as_array().unwrap().iter().find(|e| e["kind"] == "MemberDown").unwrap().clone();
    assert!(down["seq"].as_u64().unwrap() > since && down["at_ms"].as_u64().unwrap() > 0, "{down}");
    assert!(down["evidence"]["detail"].as_str().is_some_and(|d| !d.is_empty()), "{down}");
    let suspected = page["events"].as_array().unwrap().iter().find(|e| e["kind"] == "MemberSuspected").unwrap().clone();
    assert!(suspected["evidence"]["local_health_factor"].as_f64().is_some(), "{suspected}");

    // A live reader sees the heal as it happens. It starts from the last sequence read, so a
    // decision recorded before its subscription is replayed from the ring, not lost.
    let before_heal = get(&url(&a), &format!("/admin/events?since={since}")).await.json()["next"].as_u64().unwrap();
    let base = url(&a);
    let watch = tokio::spawn(async move {
        let path = format!("/admin/events/stream?kind=MemberUp&since={before_heal}");
        sse_until(&base, &path, Duration::from_secs(30), |e| e["subject"].as_str().is_some_and(|s| s.starts_with("c.")))
            .await
    });
    for n in [&a, &b, &c] {
        assert_eq!(request("DELETE", &url(n), "/admin/faults", &h, None).await.status, 200);
    }
    let up = watch.await.unwrap();
    assert_eq!(up["kind"], "MemberUp", "{up}");
    let m = get(&url(&a), "/metrics").await.body;
    assert!(common::metric_sum(&m, "cohort_events_total") >= 4.0, "{m}");
    for n in [c, b, a] {
        n.shutdown().await;
    }
}
