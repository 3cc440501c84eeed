//! The `cohort` binary as an operator runs it: config errors exit 2 naming the key, flags and
//! `COHORT_*` variables override the file, SIGTERM/SIGINT stop the node with exit 0 in under 5 s
//! with subsystems stopped in reverse start order, the admin API validates its input, `cohort
//! keygen` makes keys a node accepts, and no secret is taken from the command line.

mod common;

use std::time::Duration;

use common::{Proc, as_strs, get, node_args, request};

const TOKEN: &str = "cli-test-token-0123456789";

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cohort-cli-{}-{}", std::process::id(), common::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Run `cohort ARGS` to completion; returns (exit code, stderr).
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut p = Proc::spawn_env(args, env);
    let (code, _) = p.wait_exit(Duration::from_secs(20)).await;
    // Give the reader threads a moment to drain the pipes after exit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (code, p.stderr_text())
}

#[tokio::test]
async fn unknown_config_key_exits_2_naming_the_key() {
    let file = temp_file("node.toml", "name = \"a\"\n[http]\naddr = \"127.0.0.1:0\"\nprot = 1\n");
    let (code, err) = run_to_exit(&["node", "--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("http.prot"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[tokio::test]
async fn bad_config_value_exits_2_naming_the_key() {
    let file = temp_file("node.toml", "[gossip]\naddr = \"localhost\"\n");
    let (code, err) = run_to_exit(&["node", "--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gossip.addr"), "{err}");

    let file = temp_file("node.toml", "[log]\nformat = \"xml\"\n");
    let (code, err) = run_to_exit(&["node", "--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("log.format"), "{err}");
}

#[tokio::test]
async fn invalid_values_after_parsing_exit_2_naming_the_key() {
    let (code, err) = run_to_exit(&["node", "--name", "bad name"], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`name`"), "{err}");
    let secret = temp_file("short.secret", "tiny");
    let (code, err) = run_to_exit(&["node", "--cluster-secret-file", secret.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cluster_secret_file"), "{err}");
    let (code, err) = run_to_exit(&["node"], &[("COHORT_ADMIN_TOKEN", "short")]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin_token"), "{err}");
}

#[tokio::test]
async fn a_secret_file_that_is_not_32_bytes_of_hex_or_base64_exits_2_naming_the_file() {
    // 32 hex digits passed before (16 raw bytes); they decode to 16 bytes of key material.
    let short = temp_file("old.secret", "0123456789abcdef0123456789abcdef\n");
    let (code, err) = run_to_exit(&["node", "--cluster-secret-file", short.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(short.to_str().unwrap()), "{err}");
    assert!(err.contains("decodes to 16 bytes") && err.contains("at least 32"), "{err}");
    assert!(err.contains("cohort keygen"), "{err}");

    let raw = temp_file("raw.secret", "a long pass phrase that is not a key\n");
    let (code, err) = run_to_exit(&["node", "--cluster-secret-file", raw.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(raw.to_str().unwrap()) && err.contains("neither hex nor standard base64"), "{err}");

    // The next key is checked the same way, and names its own key.
    let good = temp_file("good.secret", common::TEST_KEY);
    let (code, err) = run_to_exit(
        &[
            "node",
            "--cluster-secret-file",
            good.to_str().unwrap(),
            "--cluster-secret-file-next",
            short.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cluster_secret_file_next") && err.contains(short.to_str().unwrap()), "{err}");
}

#[tokio::test]
async fn admin_token_on_the_command_line_is_refused_with_exit_2_and_not_echoed() {
    let (code, err) = run_to_exit(&["node", "--admin-token", "hunter2-hunter2-hunter2"], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--admin-token-file") && err.contains("COHORT_ADMIN_TOKEN"), "{err}");
    assert!(!err.contains("hunter2"), "the refused token is echoed: {err}");
    let (code, err) = run_to_exit(&["node", "--admin-token=hunter2-hunter2-hunter2"], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // Empty is refused wherever it comes from.
    let (code, err) = run_to_exit(&["node"], &[("COHORT_ADMIN_TOKEN", "")]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("COHORT_ADMIN_TOKEN") && err.contains("empty"), "{err}");
    let empty = temp_file("empty.token", "\n");
    let (code, err) = run_to_exit(&["node", "--admin-token-file", empty.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin_token_file") && err.contains("is empty"), "{err}");
}

#[tokio::test]
async fn admin_token_file_wins_over_the_environment() {
    let file = temp_file("admin.token", "token-from-the-file-0123456789\n");
    let mut args = node_args("tokenfile");
    args.extend(["--admin-token-file".into(), file.display().to_string()]);
    let p = Proc::spawn_env(&as_strs(&args), &[("COHORT_ADMIN_TOKEN", TOKEN)]);
    let url = p.node_url().await;
    let post = |token: &'static str| {
        let url = url.clone();
        async move {
            let auth = format!("Bearer {token}");
            request("POST", &url, "/admin/log-filter", &[("Authorization", &auth)], Some(r#"{"filter":"info"}"#))
                .await
                .status
        }
    };
    assert_eq!(post("token-from-the-file-0123456789").await, 200);
    assert_eq!(post(TOKEN).await, 401);
}

/// `cohort keygen [--hex]`: its stdout, which must be exactly one line.
fn keygen(extra: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN).arg("keygen").args(extra).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(text.ends_with('\n'), "{text:?}");
    text
}

#[tokio::test]
async fn keygen_prints_a_fresh_32_byte_key_that_a_node_accepts() {
    use cohort::cluster::auth::ClusterSecret;
    let first = keygen(&[]);
    let second = keygen(&[]);
    assert_ne!(first, second, "two runs must give two keys");
    assert_eq!(first.trim().len(), 44, "32 bytes of padded base64: {first:?}");
    assert_eq!(ClusterSecret::from_text(&first).unwrap().len(), 32);
    let hex = keygen(&["--hex"]);
    assert_eq!(hex.trim().len(), 64);
    assert!(hex.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{hex:?}");
    assert_eq!(ClusterSecret::from_text(&hex).unwrap().len(), 32);

    // `cohort keygen > cluster.key` is a key file a node starts with (both forms).
    for (name, key) in [("cluster.key", &first), ("cluster-hex.key", &hex)] {
        let file = temp_file(name, key);
        let mut args = node_args("keyed");
        args.extend(["--cluster-secret-file".into(), file.display().to_string()]);
        let mut p = Proc::spawn(&as_strs(&args));
        let url = p.node_url().await;
        assert_eq!(get(&url, "/livez").await.status, 200);
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit(Duration::from_secs(10)).await.0, Some(0), "{}", p.stderr_text());
    }

    let help = std::process::Command::new(common::BIN).args(["keygen", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("cohort keygen > cluster.key; chmod 600 cluster.key"), "{help}");
    assert!(help.contains("--hex"), "{help}");
}

#[tokio::test]
async fn bad_flags_and_env_values_exit_2_naming_them() {
    let (code, err) = run_to_exit(&["node", "--http", "not-an-addr"], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--http"), "{err}");
    let (code, err) = run_to_exit(&["node", "--no-such-flag"], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, err) = run_to_exit(&["node"], &[("COHORT_GOSSIP", "nope")]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--gossip"), "{err}");
    let (code, err) = run_to_exit(&["node", "--config", "/nonexistent/cohort.toml"], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/cohort.toml"), "{err}");
}

#[tokio::test]
async fn version_flag_prints_the_version() {
    let mut p = Proc::spawn(&["--version"]);
    let (code, _) = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    p.wait_stdout(env!("CARGO_PKG_VERSION"), Duration::from_secs(2)).await;
}

#[tokio::test]
async fn flags_and_env_override_the_config_file() {
    let file = temp_file(
        "node.toml",
        "name = \"from-file\"\ncluster_name = \"filecluster\"\n[http]\naddr = \"127.0.0.1:1\"\n",
    );
    let mut args = node_args("from-flag");
    args.extend(["--config".into(), file.display().to_string()]);
    // The file's http address (port 1) is overridden by the flag (port 0) from node_args.
    let p = Proc::spawn_env(&as_strs(&args), &[("COHORT_ADMIN_TOKEN", TOKEN)]);
    let url = p.node_url().await;
    let j = get(&url, "/admin/node").await.json();
    assert_eq!(j["node"], "from-flag");
    // The env token is in force: a POST with it reaches the handler.
    let auth = format!("Bearer {TOKEN}");
    let a = request("POST", &url, "/admin/log-filter", &[("Authorization", &auth)], Some(r#"{"filter":"info"}"#)).await;
    assert_eq!(a.status, 200, "{a:?}");
}

async fn sigterm_stops_node(signal: i32) {
    let mut args = node_args("stopper");
    args.extend(["--log-format".into(), "json".into()]);
    let mut p = Proc::spawn(&as_strs(&args));
    let url = p.node_url().await;
    assert_eq!(get(&url, "/livez").await.status, 200);
    p.signal(signal);
    let (code, took) = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", p.stderr_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // JSON logs: every subsystem started and stopped, in reverse order.
    let events: Vec<serde_json::Value> =
        p.stderr.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let names = |msg: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["message"] == msg)
            .map(|e| e["subsystem"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let started = names("subsystem started");
    let mut stopped = names("subsystem stopped");
    assert!(!started.is_empty(), "no start events in:\n{}", p.stderr_text());
    stopped.reverse();
    assert_eq!(started, stopped, "subsystems must stop in reverse start order");
}

#[tokio::test]
async fn sigterm_stops_the_node_with_exit_0_in_under_5s() {
    sigterm_stops_node(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_stops_the_node_with_exit_0_in_under_5s() {
    sigterm_stops_node(libc::SIGINT).await;
}

#[tokio::test]
async fn log_filter_endpoint_validates_its_input() {
    let mut args = node_args("logs");
    let token_file = temp_file("admin.token", TOKEN);
    args.extend(["--admin-token-file".into(), token_file.display().to_string()]);
    let p = Proc::spawn(&as_strs(&args));
    let url = p.node_url().await;
    let auth = format!("Bearer {TOKEN}");
    let h = [("Authorization", auth.as_str())];
    assert_eq!(get(&url, "/admin/log-filter").await.json()["filter"], "info");

    let ok = request("POST", &url, "/admin/log-filter", &h, Some(r#"{"filter":"cohort=debug,warn"}"#)).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(get(&url, "/admin/log-filter").await.json()["filter"], "cohort=debug,warn");

    for (body, status) in
        [(r#"{"filter":"=[broken"}"#, 400), (r#"{"filter": 5}"#, 422), (r#"{"filtre":"info"}"#, 422), ("not json", 400)]
    {
        let a = request("POST", &url, "/admin/log-filter", &h, Some(body)).await;
        assert_eq!(a.status, status, "{body}: {a:?}");
        let j = a.json();
        assert_eq!(j["error"], "BadRequest", "{body}: {j}");
        assert!(j["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let huge = format!(r#"{{"filter":"{}"}}"#, "a".repeat(2 * 1024 * 1024));
    let a = request("POST", &url, "/admin/log-filter", &h, Some(&huge)).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.json()["error"], "PayloadTooLarge");
    // JSON is parsed whatever the content type (curl -d sends a form type).
    let form = request(
        "POST",
        &url,
        "/admin/log-filter",
        &[("Authorization", &auth), ("Content-Type", "application/x-www-form-urlencoded")],
        Some(r#"{"filter":"cohort=debug,warn"}"#),
    )
    .await;
    assert_eq!(form.status, 200, "{form:?}");
    // The filter in force did not change, and the node is still healthy.
    assert_eq!(get(&url, "/admin/log-filter").await.json()["filter"], "cohort=debug,warn");
    assert_eq!(get(&url, "/livez").await.status, 200);
}

#[tokio::test]
async fn sim_runs_seeds_prints_a_line_each_and_refuses_bad_flags_with_2() {
    let mut p = Proc::spawn(&["sim", "--seeds", "1..3", "--nodes", "3", "--duration", "40", "--jobs", "1"]);
    let (code, _) = p.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{}", p.stderr_text());
    p.wait_stdout("seed 1 PASS nodes=3", Duration::from_secs(2)).await;
    p.wait_stdout("seed 2 PASS nodes=3", Duration::from_secs(2)).await;
    p.wait_stdout("2 of 2 seeds passed", Duration::from_secs(2)).await;
    for bad in [&["sim", "--seeds", "5..2"][..], &["sim", "--nodes", "10"], &["sim", "--faults", "everything"]] {
        let (code, err) = run_to_exit(bad, &[]).await;
        assert_eq!(code, Some(2), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn a_wildcard_bind_needs_advertise_and_announces_the_advertised_host() {
    let mut args = common::node_args("wild");
    let gossip = args.iter().position(|a| a == "--gossip").unwrap() + 1;
    args[gossip] = "0.0.0.0:0".into();
    let (code, err) = run_to_exit(&common::as_strs(&args), &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gossip.addr") && err.contains("--advertise"), "{err}");

    let (code, err) = run_to_exit(&common::as_strs(&args), &[("COHORT_ADVERTISE", "no-such-host.invalid")]).await;
    assert_eq!(code, Some(1), "a name that does not resolve is the outside world's failure: {err}");
    assert!(err.contains("no-such-host.invalid"), "{err}");

    let p = Proc::spawn_env(&common::as_strs(&args), &[("COHORT_ADVERTISE", "127.0.0.1")]);
    let line = p.wait_stdout("cohort node listening", Duration::from_secs(20)).await;
    let announced = common::field(&line, "gossip").unwrap();
    assert!(announced.starts_with("127.0.0.1:") && !announced.ends_with(":0"), "{line}");
}
