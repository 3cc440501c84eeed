//! `cohort chaos run` end to end, through the real binary: the CI scenario passes and writes its
//! report; an impossible bound makes the run fail with that invariant named; a bad scenario file
//! exits 2 naming the line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("cohort-chaos-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `cohort ARGS` with a deadline; returns (exit code, stdout, stderr).
fn run(args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("COHORT_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("spawn cohort");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cohort {args:?} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.code(), out_reader.join().unwrap(), err_reader.join().unwrap())
}

fn report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json exists");
    serde_json::from_str(&text).expect("report.json is JSON")
}

fn invariant<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no invariant {name} in {report}"))
}

const EXPECTED_INVARIANTS: [&str; 13] = [
    "membership_converges",
    "pg_converges",
    "names_local_converge",
    "names_eventual_converge",
    "consistent_single_owner_per_token",
    "consistent_tokens_monotonic",
    "consistent_linearizable",
    "consistent_available_after_heal",
    "queue_depth_bounded",
    "rss_bounded",
    "no_unexpected_node_death",
    "broadcast_deliveries",
    "raft_healthy",
];

#[test]
fn ci_scenario_passes_and_writes_a_readable_report() {
    let out = temp_dir("ci");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../chaos/scenarios/ci-smoke.toml");
    let (code, stdout, stderr) = run(
        &["chaos", "run", scenario.to_str().unwrap(), "--out", out.to_str().unwrap(), "--seed", "7"],
        Duration::from_secs(240),
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = report(&out);
    assert_eq!(report["passed"], true);
    assert_eq!(report["seed"], 7);
    let names: Vec<&str> =
        report["invariants"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, EXPECTED_INVARIANTS);
    // What exists today must have been exercised and passed, not skipped.
    for name in [
        "membership_converges",
        "pg_converges",
        "queue_depth_bounded",
        "rss_bounded",
        "no_unexpected_node_death",
        "broadcast_deliveries",
    ] {
        assert_eq!(invariant(&report, name)["status"], "pass", "{name}: {}", invariant(&report, name));
    }
    // A skipped invariant always says why.
    for v in report["invariants"].as_array().unwrap() {
        if v["status"] == "skipped" {
            assert!(!v["summary"].as_str().unwrap().is_empty(), "{v}");
        }
    }
    // The schedule ran: a partition and a kill, with their windows.
    let actions: Vec<&str> =
        report["faults"].as_array().unwrap().iter().map(|f| f["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["partition", "kill"]);
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html exists");
    assert!(html.contains("<svg"), "timeline plots are inline SVG");
    assert!(!html.contains("<script"), "the page runs no script");
    assert!(html.contains("membership_converges"));
    assert!(out.join("recording.json").exists());
    for secret in ["cluster.key", "admin.token"] {
        assert!(!out.join(secret).exists(), "{secret} is removed after the run");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_impossible_rss_bound_fails_the_run_and_names_the_invariant() {
    let out = temp_dir("rss");
    let scenario = out.join("tiny-rss.toml");
    std::fs::write(
        &scenario,
        "name = \"tiny-rss\"\nnodes = 1\nduration_s = 3\nsettle_s = 10\n\
         [workload]\nprobes_per_node = 1\ngroups = [\"g\"]\nbroadcast_per_s = 0\njoin_churn_per_s = 0\nverify_broadcasts = 1\n\
         [bounds]\nrss_mb = 1\n",
    )
    .unwrap();
    let report_dir = out.join("report");
    let (code, stdout, stderr) = run(
        &["chaos", "run", scenario.to_str().unwrap(), "--out", report_dir.to_str().unwrap()],
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("FAIL  rss_bounded"), "{stdout}");
    let report = report(&report_dir);
    assert_eq!(report["passed"], false);
    let rss = invariant(&report, "rss_bounded");
    assert_eq!(rss["status"], "fail");
    assert!(rss["first_violation_s"].as_f64().is_some(), "{rss}");
    assert!(!rss["evidence"].as_array().unwrap().is_empty());
    // The other invariants are judged on their own.
    assert_eq!(invariant(&report, "membership_converges")["status"], "pass");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_bad_scenario_exits_2_and_names_the_line() {
    let out = temp_dir("bad");
    let scenario = out.join("bad.toml");
    std::fs::write(
        &scenario,
        "name = \"bad\"\nnodes = 3\nduration_s = 10\nsettle_s = 5\n\n[[faults]]\nat_s = 1\naction = \"kill\"\nnode = \"node-9\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["chaos", "run", scenario.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 6") && stderr.contains("node-9"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}
