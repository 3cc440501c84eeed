//! The shipped dashboard and rules against a real Prometheus server scraping three real nodes
//! (issue 13 item 5; docs/operations.md "Dashboards and alerts").
//!
//! The test starts a 3-node cluster, drives a small workload through the probe API (a pg broadcast,
//! a name in each registry tier, fenced sends with a current and a stale token), then starts the
//! `prometheus` binary (Debian's `prometheus` package, which `scripts/test` installs) on a free
//! loopback port with a generated config: the three nodes as job `cohort`, `scrape_interval` and
//! `evaluation_interval` 1 s, `deploy/prometheus/cohort-rules.yml` as its rule file, a temporary
//! storage directory. Prometheus is killed and its directory removed at the end.
//!
//! What must hold, through Prometheus's HTTP API:
//! - every rule of the file is loaded (`/api/v1/rules` lists as many rules as the file defines) and
//!   evaluates with health `ok`;
//! - every metric name in every dashboard query, template variable and rule expression is one the
//!   nodes expose on `/metrics` (or a rule records, or `up`), so a typo cannot ship;
//! - every dashboard query, every recording rule and the left side of every alert (an alert is
//!   `<expression> <comparison> <number>`, checked) evaluates with `status: success` **and** returns
//!   at least one series. An alert's full expression is legitimately empty on a healthy cluster;
//!   its left side never is, which also catches a label value typo. Nothing is exempt: a query that
//!   may legitimately be empty would have to be listed here with why;
//! - `cohort_admissions_total` counts the workload under every `work`, and the stale fenced send as
//!   `EpochMismatch`;
//! - no alert fires on the healthy cluster; after a follower is cut off from both peers
//!   (`POST /admin/faults`, drop 1.0 both ways) `CohortNodeWithoutQuorum` fires for that node (its
//!   `for: 30s` as shipped: the file is not altered) and for no other.
//!
//! Without the `prometheus` binary the test passes as skipped, saying why, unless it runs as root
//! (where `scripts/test` would have installed it) and `COHORT_ALLOW_NO_PROMTOOL` is not 1.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Proc, get, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "prometheus-test-token-0123456789";

/// Elections and SWIM take seconds; CI runs several clusters at once on 2 cores.
const WITHIN: Duration = Duration::from_secs(60);

/// The shipped rules and dashboard.
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/cohort-rules.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/cohort.json");

/// Grafana's variables, as a user looking at the whole cluster has them.
const VARIABLES: [(&str, &str); 3] = [("$__rate_interval", "1m"), ("$job", "cohort"), ("$instance", ".*")];

/// The alert driven to firing by the fault.
const FAULT_ALERT: &str = "CohortNodeWithoutQuorum";

fn prometheus_binary() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/prometheus");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("prometheus")).find(|p| p.is_file())
}

/// A port nothing listens on right now (the OS picks it; Prometheus binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running Prometheus; killed (by `Proc`'s drop) and its storage removed when dropped.
struct Prometheus {
    proc: Proc,
    url: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    async fn start(binary: &Path, targets: &[String]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cohort-prometheus-{}-{}", std::process::id(), common::rand_suffix()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let rules = std::fs::canonicalize(RULES).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: cohort\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let args = [
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_string(),
        ];
        let proc = Proc::spawn_program(binary.to_str().unwrap(), &common::as_strs(&args), &[]);
        let url = format!("http://127.0.0.1:{port}");
        let mut prometheus = Self { proc, url, dir };
        let deadline = Instant::now() + WITHIN;
        loop {
            if common::is_listening(&prometheus.url).await && get(&prometheus.url, "/-/ready").await.status == 200 {
                return prometheus;
            }
            if let Ok(Some(status)) = prometheus.proc.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.proc.stderr_text());
            }
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", prometheus.proc.stderr_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/query`: the whole answer (`status`, `data` or `error`).
    async fn query(&self, expr: &str) -> Value {
        let a = get(&self.url, &format!("/api/v1/query?query={}", percent_encode(expr))).await;
        serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("query {expr}: not JSON ({e}): {}", a.body))
    }

    /// The result vector of a query that must succeed.
    async fn series(&self, expr: &str) -> Vec<Value> {
        let answer = self.query(expr).await;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Value {
        let a = get(&self.url, path).await;
        let v: Value = serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", a.body));
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sample names of a text exposition (`foo_bucket`, `foo_sum` and `foo_count` of histograms
/// included).
fn exposed_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The metric names a PromQL expression (or a Grafana `label_values(...)` query) reads: every
/// identifier outside string literals that is `up` or starts with `cohort_`, `cohort:` or
/// `process_`. Label names, functions and keywords never do in these files.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word == "up" || ["cohort_", "cohort:", "process_"].iter().any(|p| word.starts_with(p)) {
            names.push(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word);
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                if !(word.is_empty() && c.is_ascii_digit()) {
                    word.push(c);
                } else {
                    // A number or a duration (`5m`): skip its characters.
                    while chars.peek().is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.') {
                        chars.next();
                    }
                }
            }
            _ => flush(&mut word),
        }
    }
    flush(&mut word);
    names
}

/// Splits an alert expression `<expression> <comparison> <number>` at its last top-level
/// comparison; `None` when it does not have that shape.
fn alert_left_side(expr: &str) -> Option<&str> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut last) = (0i32, None::<u8>, None::<(usize, usize)>);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'"' | b'\'' | b'`' => quote = Some(b),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                b'=' | b'!' | b'>' | b'<' if depth == 0 => {
                    let two = bytes.get(i + 1) == Some(&b'=');
                    if two || b == b'>' || b == b'<' {
                        last = Some((i, if two { 2 } else { 1 }));
                        i += usize::from(two);
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    let (at, len) = last?;
    expr[at + len..].trim().parse::<f64>().ok()?;
    Some(expr[..at].trim())
}

/// Every query of the dashboard, `(panel title, expression)` with Grafana's variables replaced,
/// and the template variables' queries.
fn dashboard_queries() -> (Vec<(String, String)>, Vec<String>) {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let mut expr =
                    target["expr"].as_str().unwrap_or_else(|| panic!("a target without expr: {panel}")).to_string();
                for (name, value) in VARIABLES {
                    expr = expr.replace(name, value);
                }
                assert!(!expr.contains('$'), "panel {:?}: a variable the test does not know: {expr}", panel["title"]);
                out.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
            }
            walk(panel["panels"].as_array().map_or(&[][..], Vec::as_slice), out);
        }
    }
    let mut queries = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut queries);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["definition"].as_str().map(str::to_string))
        .collect();
    (queries, variables)
}

async fn post(url: &str, path: &str, body: Value) -> Value {
    let (status, j) = common::post_json(url, path, TOKEN, body.clone()).await;
    assert_eq!(status, 200, "{path} {body}: {j}");
    j
}

/// Work for every `work` of `cohort_admissions_total`: a broadcast to a group with a member on
/// each node, a name in each tier, and fenced sends from node 0 to node 1's named probe with the
/// current token and a stale one.
async fn workload(urls: &[String]) {
    let mut pids = Vec::new();
    for u in urls {
        let j = post(u, "/admin/probe/spawn", json!({"count": 1})).await;
        let pid = j["pids"][0].as_str().unwrap().to_string();
        post(u, "/admin/probe/join", json!({"group": "obs", "pids": [pid.clone()]})).await;
        pids.push(pid);
    }
    wait_for(WITHIN, "the group spans the 3 nodes on node 0", || async {
        let j = get(&urls[0], "/admin/pg/default/groups/obs").await;
        (j.status == 200 && j.json()["members"].as_array().map_or(0, Vec::len) == 3).then_some(())
    })
    .await;
    post(&urls[0], "/admin/probe/broadcast", json!({"group": "obs", "count": 3, "payload_bytes": 16})).await;
    post(&urls[2], "/admin/probe/register", json!({"tier": "local", "name": "obs-local", "pid": pids[2]})).await;
    post(&urls[0], "/admin/probe/register", json!({"tier": "eventual", "name": "obs-eventual", "pid": pids[0]})).await;
    let j =
        post(&urls[1], "/admin/probe/register", json!({"tier": "consistent", "name": "obs-writer", "pid": pids[1]}))
            .await;
    let token = j["fence_token"].as_u64().unwrap();
    wait_for(WITHIN, "node 0 sees obs-writer", || async {
        (get(&urls[0], "/admin/registry/lookup/obs-writer?tier=consistent").await.status == 200).then_some(())
    })
    .await;
    post(&urls[0], "/admin/probe/send", json!({"name": "obs-writer", "fence_token": token})).await;
    post(&urls[0], "/admin/probe/send", json!({"name": "obs-writer", "fence_token": token - 1})).await;
}

#[tokio::test]
async fn dashboard_and_rules_evaluate_against_a_real_prometheus_and_an_alert_fires_on_a_fault() {
    let Some(binary) = prometheus_binary() else {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let allowed = std::env::var("COHORT_ALLOW_NO_PROMTOOL").as_deref() == Ok("1");
        assert!(
            !root || allowed,
            "the prometheus binary is missing: run scripts/test (it installs Debian's prometheus package) \
             or apt-get install prometheus (or set COHORT_ALLOW_NO_PROMTOOL=1 to skip)"
        );
        eprintln!(
            "prometheus test skipped: no prometheus binary (apt-get install prometheus, or run scripts/test as root)"
        );
        return;
    };
    let started = Instant::now();
    let c = common::chaos_cluster("prometheus", 3, TOKEN).await;
    let leader = wait_for(WITHIN, "one leader and 3 voters", || async {
        let mut leader = None;
        for u in &c.urls {
            let r = get(u, "/admin/raft").await.json();
            let this = r["leader"].as_str()?.to_string();
            if r["voters"].as_array()?.len() != 3 || leader.as_ref().is_some_and(|l| *l != this) {
                return None;
            }
            leader = Some(this);
        }
        leader
    })
    .await;
    workload(&c.urls).await;
    let targets: Vec<String> = c.urls.iter().map(|u| u.trim_start_matches("http://").to_string()).collect();
    let mut exposed: HashSet<String> = HashSet::from(["up".to_string()]);
    for u in &c.urls {
        let metrics = get(u, "/metrics").await;
        assert_eq!(metrics.status, 200);
        exposed.extend(exposed_names(&metrics.body));
    }

    let prometheus = Prometheus::start(&binary, &targets).await;
    let p = &prometheus;
    wait_for(WITHIN, "prometheus scrapes the 3 nodes", || async {
        let up = p.series("up{job=\"cohort\"} == 1").await;
        (up.len() == 3).then_some(())
    })
    .await;

    // Every rule of the file is loaded and evaluates cleanly.
    let defined = std::fs::read_to_string(RULES)
        .unwrap()
        .lines()
        .filter(|l| ["- record:", "- alert:"].iter().any(|k| l.trim_start().starts_with(k)))
        .count();
    let rules: Vec<Value> = wait_for(WITHIN, "every rule evaluated with health ok", || async {
        let groups = p.api("/api/v1/rules").await["groups"].as_array().cloned().unwrap_or_default();
        let rules: Vec<Value> =
            groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        (rules.len() == defined && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    })
    .await;
    let recorded: HashSet<String> =
        rules.iter().filter(|r| r["type"] == "recording").map(|r| r["name"].as_str().unwrap().to_string()).collect();

    // The expressions: dashboard queries, recording rules, alerts' left sides.
    let (mut checks, variables) = dashboard_queries();
    let dashboard_count = checks.len();
    for rule in &rules {
        let (name, query) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
        if rule["type"] == "alerting" {
            let left = alert_left_side(query)
                .unwrap_or_else(|| panic!("alert {name} is not `<expression> <comparison> <number>`: {query}"));
            checks.push((format!("alert {name} (left side)"), left.to_string()));
        } else {
            checks.push((format!("record {name}"), query.to_string()));
        }
    }

    // No metric name the nodes do not expose (or a rule does not record).
    let mut referenced = BTreeSet::new();
    let mut unknown = Vec::new();
    for (what, expr) in
        checks.iter().map(|(w, e)| (w.as_str(), e.as_str())).chain(variables.iter().map(|v| ("variable", v.as_str())))
    {
        for name in metric_names(expr) {
            if !exposed.contains(&name) && !recorded.contains(&name) {
                unknown.push(format!("{what}: {name}"));
            }
            referenced.insert(name);
        }
    }
    assert!(unknown.is_empty(), "metric names no node exposes: {unknown:#?}");
    assert!(referenced.len() >= 30, "the name check found too few names to mean anything: {referenced:?}");

    // Every expression evaluates and returns series (rates need two scrapes: polled).
    let mut pending: Vec<(String, String)> = checks.clone();
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut empty = Vec::new();
        for (what, expr) in pending {
            let answer = p.query(&expr).await;
            assert_eq!(answer["status"], "success", "{what}: {expr}: {answer}");
            if answer["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                empty.push((what, expr));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "expressions that return nothing on a healthy cluster: {empty:#?}");
        pending = empty;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "prometheus test: {} dashboard queries, {} rules, {} metric names checked ({:?} since start)",
        dashboard_count,
        rules.len(),
        referenced.len(),
        started.elapsed()
    );

    // The workload reached cohort_admissions_total under every kind of work, and the stale token
    // was refused where the named process lives.
    for work in
        ["remote_send", "fenced_send", "broadcast", "registry_local", "registry_eventual", "registry_consistent"]
    {
        let expr = format!("sum(cohort_admissions_total{{job=\"cohort\", work=\"{work}\", reason=\"Accepted\"}}) >= 1");
        assert_eq!(p.series(&expr).await.len(), 1, "{expr}");
    }
    let expr = "sum(cohort_admissions_total{job=\"cohort\", work=\"fenced_send\", reason=\"EpochMismatch\"}) >= 1";
    assert_eq!(p.series(expr).await.len(), 1, "{expr}");

    // Nothing fires on the healthy cluster.
    let alerts = p.api("/api/v1/alerts").await["alerts"].as_array().cloned().unwrap_or_default();
    let firing: Vec<&Value> = alerts.iter().filter(|a| a["state"] == "firing").collect();
    assert!(firing.is_empty(), "alerts firing on a healthy cluster: {firing:#?}");

    // Cut a follower off from both peers: it loses the quorum and the alert fires for it alone.
    let victim = (0..3).find(|i| format!("n{i}") != leader).unwrap();
    let rules: Vec<Value> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| json!({"peer": format!("n{i}"), "direction": "both", "drop": 1.0}))
        .collect();
    post(&c.urls[victim], "/admin/faults", json!({ "rules": rules })).await;
    let cut_at = Instant::now();
    let instance = &targets[victim];
    let alert = wait_for(Duration::from_secs(120), &format!("{FAULT_ALERT} firing for {instance}"), || async {
        let alerts = p.api("/api/v1/alerts").await["alerts"].as_array().cloned().unwrap_or_default();
        alerts.into_iter().find(|a| {
            a["labels"]["alertname"] == FAULT_ALERT
                && a["labels"]["instance"] == instance.as_str()
                && a["state"] == "firing"
        })
    })
    .await;
    let fired_after = cut_at.elapsed();
    assert!(fired_after >= Duration::from_secs(30), "fired before its for: 30s ({fired_after:?}): {alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    let firing = p.series(&format!("ALERTS{{alertname=\"{FAULT_ALERT}\", alertstate=\"firing\"}}")).await;
    let instances: Vec<&str> = firing.iter().filter_map(|s| s["metric"]["instance"].as_str()).collect();
    assert_eq!(instances, [instance.as_str()], "{firing:?}");
    eprintln!("prometheus test: {FAULT_ALERT} fired {fired_after:?} after the cut ({:?} in all)", started.elapsed());
}

#[test]
fn metric_names_and_alert_sides_are_parsed_as_promql_reads_them() {
    assert_eq!(
        metric_names(
            r#"sum by (le) (rate(cohort_http_request_duration_seconds_bucket{job=~"$job", route="cohort_x"}[5m])) / up"#
        ),
        ["cohort_http_request_duration_seconds_bucket", "up"]
    );
    assert_eq!(
        metric_names("cohort:raft_leaders:sum * 2 + process_threads offset 1m"),
        ["cohort:raft_leaders:sum", "process_threads"]
    );
    assert_eq!(
        alert_left_side(r#"max by (instance) (cohort_degraded_mode{mode=~"view_only|root_unavailable"}) == 1"#),
        Some(r#"max by (instance) (cohort_degraded_mode{mode=~"view_only|root_unavailable"})"#)
    );
    assert_eq!(alert_left_side("rate(x[2m]) > 0.5"), Some("rate(x[2m])"));
    assert_eq!(alert_left_side(r#"up{job="a=b"} >= 1"#), Some(r#"up{job="a=b"}"#));
    assert_eq!(alert_left_side("a > b"), None);
    assert_eq!(alert_left_side("absent(up)"), None);
    assert_eq!(percent_encode("a{b=\"c\"} > 1"), "a%7Bb%3D%22c%22%7D%20%3E%201");
}
