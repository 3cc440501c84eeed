//! The HTTP surface of an in-process node: /livez, /readyz, /metrics, /admin/node, the error shape
//! and the admin-token rule (SPEC 9.2).

mod common;

use std::time::Duration;

use cohort::{Config, Node};
use common::{get, promtool_check, request};

const TOKEN: &str = "test-admin-token-0123456789";

fn config(name: &str, token: Option<&str>) -> Config {
    config_with(name, token, false)
}

fn config_with(name: &str, token: Option<&str>, chaos: bool) -> Config {
    let mut c = Config {
        name: name.into(),
        data_dir: std::env::temp_dir().join(format!(
            "cohort-endpoints-{}-{name}-{}",
            std::process::id(),
            common::rand_suffix()
        )),
        admin_token: token.map(str::to_string),
        ..Config::default()
    };
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.gossip.addr = "127.0.0.1:0".parse().unwrap();
    c.internode.addr = "127.0.0.1:0".parse().unwrap();
    c.chaos.enabled = chaos;
    c.validate().unwrap();
    c
}

async fn start(name: &str, token: Option<&str>) -> (Node, String) {
    let node = Node::start(config(name, token)).await.expect("node starts");
    let url = format!("http://{}", node.addrs().http);
    (node, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_and_readyz_answer_200_with_checks() {
    let (node, url) = start("live", None).await;
    let a = get(&url, "/livez").await;
    assert_eq!(a.status, 200, "{a:?}");
    let j = a.json();
    assert_eq!(j["status"], "ok");
    let checks = j["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "runtime" && c["ok"] == true), "{j}");
    let r = get(&url, "/readyz").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "ready");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_node_reports_identity_and_real_addresses() {
    let (node, url) = start("ident", None).await;
    let j = get(&url, "/admin/node").await.json();
    assert_eq!(j["node"], "ident");
    assert_eq!(j["incarnation"].as_u64().unwrap(), node.id().incarnation);
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert!(j["uptime_s"].is_u64());
    let addrs = &j["addrs"];
    for key in ["http", "gossip", "internode"] {
        let a: std::net::SocketAddr = addrs[key].as_str().unwrap().parse().unwrap();
        assert!(a.ip().is_loopback());
        assert_ne!(a.port(), 0, "{key} must report the bound port, not 0");
    }
    assert_eq!(addrs["http"], node.addrs().http.to_string());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_requests() {
    let (node, url) = start("metrics", None).await;
    get(&url, "/livez").await;
    get(&url, "/no-such-page").await;
    let a = get(&url, "/metrics").await;
    assert_eq!(a.status, 200);
    assert!(a.headers.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{}", a.headers);
    promtool_check(&a.body);
    for needle in [
        "cohort_http_requests_total{method=\"GET\",route=\"/livez\",status=\"200\"} 1",
        "cohort_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "cohort_health_check_ok{check=\"runtime\"} 1",
        "cohort_http_rejected_total{reason=\"unauthorized\"} 0",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(a.body.contains(needle), "missing {needle} in\n{}", a.body);
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_endpoints_answer_403_without_a_configured_token() {
    let (node, url) = start("notoken", None).await;
    let a = request(
        "POST",
        &url,
        "/admin/log-filter",
        &[("Authorization", "Bearer anything-at-all-123")],
        Some(r#"{"filter":"debug"}"#),
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.json()["error"], "Forbidden");
    // Also for a path that has no handler: the rule is checked before routing.
    let a = request("DELETE", &url, "/admin/faults", &[], None).await;
    assert_eq!(a.status, 403);
    // Reads stay open.
    assert_eq!(get(&url, "/admin/node").await.status, 200);
    let m = get(&url, "/metrics").await.body;
    assert!(m.contains("cohort_http_rejected_total{reason=\"forbidden\"} 2"), "{m}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_endpoints_need_the_right_bearer_token() {
    let (node, url) = start("token", Some(TOKEN)).await;
    let body = Some(r#"{"filter":"debug"}"#);
    let none = request("POST", &url, "/admin/log-filter", &[], body).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(none.json()["error"], "Unauthorized");
    assert!(none.headers.to_ascii_lowercase().contains("www-authenticate: bearer"));
    let wrong =
        request("POST", &url, "/admin/log-filter", &[("Authorization", "Bearer not-the-token-000000")], body).await;
    assert_eq!(wrong.status, 401);
    let basic = request("POST", &url, "/admin/log-filter", &[("Authorization", &format!("Basic {TOKEN}"))], body).await;
    assert_eq!(basic.status, 401);
    // With the token the request reaches the handler; this node was embedded without a log
    // control, so the handler answers 503 Unavailable (not an auth error).
    let auth = format!("Bearer {TOKEN}");
    let ok = request("POST", &url, "/admin/log-filter", &[("Authorization", &auth)], body).await;
    assert_eq!(ok.status, 503, "{ok:?}");
    assert_eq!(ok.json()["error"], "Unavailable");
    // A route that does not exist, with the token: 404 NotFound.
    let missing = request("POST", &url, "/admin/nothing-here", &[("Authorization", &auth)], Some("{}")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "NotFound");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let (node, url) = start("errors", None).await;
    let a = get(&url, "/nope").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"], "NotFound");
    let a = request("PUT", &url, "/livez", &[], None).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.json()["error"], "MethodNotAllowed");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_one_process_keep_separate_state() {
    let (a, url_a) = start("twin-a", None).await;
    let (b, url_b) = start("twin-b", None).await;
    assert_ne!(a.addrs().http, b.addrs().http);
    for _ in 0..3 {
        get(&url_a, "/livez").await;
    }
    let ma = get(&url_a, "/metrics").await.body;
    let mb = get(&url_b, "/metrics").await.body;
    assert!(ma.contains("route=\"/livez\",status=\"200\"} 3"), "{ma}");
    assert!(!mb.contains("route=\"/livez\""), "{mb}");
    assert!(mb.contains("node=\"twin-b\""));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_subsystems_in_reverse_order_and_frees_the_port() {
    let (node, url) = start("stopper", None).await;
    let id = common::identity(&url).await.expect("the node answers before shutdown");
    assert_eq!(id, ("stopper".to_string(), node.id().incarnation));
    let report = node.shutdown().await;
    assert_eq!(report.stopped, vec!["http", "supervisor", "registry", "pg", "processes", "transport", "membership"]);
    assert!(report.aborted.is_empty());
    assert!(report.elapsed < Duration::from_secs(5));
    assert!(!common::still_serves(&url, &id).await, "the node still answers HTTP after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_start_with_a_named_listener() {
    let (node, _url) = start("first", None).await;
    let mut c = config("second", None);
    c.gossip.addr = node.addrs().gossip;
    let err = Node::start(c).await.err().expect("start must fail on a taken port");
    assert!(err.to_string().contains("gossip"), "{err}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rules_are_installed_validated_and_cleared_with_chaos_enabled() {
    let node = Node::start(config_with("faulty", Some(TOKEN), true)).await.unwrap();
    let url = format!("http://{}", node.addrs().http);
    let auth = format!("Bearer {TOKEN}");
    let h = [("Authorization", auth.as_str())];
    let j = get(&url, "/admin/faults").await.json();
    assert_eq!(j["enabled"], true);
    assert_eq!(j["rules"]["rules"].as_array().unwrap().len(), 0);

    let body = r#"{"rules":[{"peer":"b","direction":"both","drop":1.0},{"peer":"c","direction":"out","delay_ms":200,"jitter_ms":100}]}"#;
    let a = request("POST", &url, "/admin/faults", &h, Some(body)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["rules"]["rules"].as_array().unwrap().len(), 2);
    // The node's own injector now partitions it from b, in both directions, and only from b.
    use cohort_cluster::faults::{Direction, Verdict};
    assert_eq!(node.faults().decide("b", Direction::In), Verdict::Drop);
    assert_eq!(node.faults().decide("b", Direction::Out), Verdict::Drop);
    assert_eq!(node.faults().decide("d", Direction::Out), Verdict::Pass);
    assert!(
        matches!(node.faults().decide("c", Direction::Out), Verdict::Delay(d) if d.as_millis() >= 200 && d.as_millis() <= 300)
    );
    assert!(get(&url, "/metrics").await.body.contains("cohort_chaos_fault_rules 2"));

    // Invalid rules are refused with the field named, and the rules in force stay.
    let bad = request("POST", &url, "/admin/faults", &h, Some(r#"{"rules":[{"peer":"b","drop":1.5}]}"#)).await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.json()["detail"].as_str().unwrap().contains("rules[0].drop"), "{}", bad.body);
    let unknown = request("POST", &url, "/admin/faults", &h, Some(r#"{"rules":[{"peer":"b","dorp":1}]}"#)).await;
    assert_eq!(unknown.status, 422, "{unknown:?}");
    assert_eq!(get(&url, "/admin/faults").await.json()["rules"]["rules"].as_array().unwrap().len(), 2);

    // Without the token: 401, nothing changes.
    assert_eq!(request("DELETE", &url, "/admin/faults", &[], None).await.status, 401);
    let cleared = request("DELETE", &url, "/admin/faults", &h, None).await;
    assert_eq!(cleared.status, 200);
    assert_eq!(cleared.json()["rules"]["rules"].as_array().unwrap().len(), 0);
    assert_eq!(node.faults().decide("b", Direction::In), Verdict::Pass);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_endpoints_answer_404_without_chaos() {
    let (node, url) = start("nochaos", Some(TOKEN)).await;
    let auth = format!("Bearer {TOKEN}");
    let a = request("POST", &url, "/admin/faults", &[("Authorization", &auth)], Some(r#"{"rules":[]}"#)).await;
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.json()["detail"].as_str().unwrap().contains("chaos"));
    assert_eq!(get(&url, "/admin/faults").await.json()["enabled"], false);
    node.shutdown().await;
}
