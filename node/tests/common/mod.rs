//! Shared helpers for the node's integration tests: a minimal HTTP/1.1 client (one request per
//! connection), a `cohort` child-process wrapper that reads the announce line, bounded polls, and
//! the promtool check.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `cohort` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request to `base` (`http://127.0.0.1:PORT` or `127.0.0.1:PORT`).
pub async fn request(method: &str, base: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req.push_str("Content-Type: application/json\r\n");
        }
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("read timed out").unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Answer { status, headers: head.to_string(), body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn get(base: &str, path: &str) -> Answer {
    request("GET", base, path, &[], None).await
}

/// Poll `f` until it returns Some or the deadline passes.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether something accepts TCP connections at `base`.
pub async fn is_listening(base: &str) -> bool {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// The `(node, incarnation)` that answers `/admin/node` at `base`, if anything does.
pub async fn identity(base: &str) -> Option<(String, u64)> {
    if !is_listening(base).await {
        return None;
    }
    let addr = base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let answer =
        tokio::time::timeout(Duration::from_secs(2), async move { get(&addr, "/admin/node").await }).await.ok()?;
    let j: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
    Some((j["node"].as_str()?.to_string(), j["incarnation"].as_u64()?))
}

/// Whether the node `id` (from [`identity`]) still serves at `base`. A stopped node's port may be
/// handed to another test's listener at once, so "nothing accepts" is too strict a check.
pub async fn still_serves(base: &str, id: &(String, u64)) -> bool {
    identity(base).await.as_ref() == Some(id)
}

/// Run `promtool check metrics` on an exposition. Fails the test when promtool is missing unless
/// COHORT_ALLOW_NO_PROMTOOL=1 (scripts/test installs it).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("COHORT_ALLOW_NO_PROMTOOL").as_deref() == Ok("1") {
                eprintln!("promtool not found ({e}); skipped because COHORT_ALLOW_NO_PROMTOOL=1");
                return;
            }
            panic!("promtool not found ({e}): run scripts/test, or apt-get install prometheus");
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `cohort` child process with its output captured.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Start `cohort ARGS` with a clean COHORT_* environment.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_env(args, &[])
    }

    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_program(BIN, args, env)
    }

    /// Start `PROGRAM ARGS` (a wrapper such as `ip netns exec NS cohort ...`) the same way.
    pub fn spawn_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("COHORT_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cohort");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (o, e) = (stdout.clone(), stderr.clone());
        std::thread::spawn(move || {
            BufReader::new(out).lines().map_while(Result::ok).for_each(|l| o.lock().unwrap().push(l))
        });
        std::thread::spawn(move || {
            BufReader::new(err).lines().map_while(Result::ok).for_each(|l| e.lock().unwrap().push(l))
        });
        Self { child, stdout, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Wait for an stdout line containing `needle`.
    pub async fn wait_stdout(&self, needle: &str, within: Duration) -> String {
        let lines = self.stdout.clone();
        wait_for(within, needle, || {
            let found = lines.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
            async move { found }
        })
        .await
    }

    /// The HTTP base URL from a `cohort node` announce line.
    pub async fn node_url(&self) -> String {
        let line = self.wait_stdout("cohort node listening", Duration::from_secs(20)).await;
        field(&line, "http").expect("announce has http=")
    }

    /// Wait for the process to exit within `within`; returns its exit code and how long it took.
    pub async fn wait_exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("process did not exit within {within:?}; stderr:\n{}", self.stderr_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=value` from a line of space-separated fields.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// The cluster key the test nodes share: 32 bytes of key material in base64 (the form `cohort
/// keygen` prints). Fixed rather than random so a failing test's files can be replayed by hand.
pub const TEST_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// Another valid key (hex this time), for a node that must be refused.
pub const OTHER_KEY: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// Write [`TEST_KEY`] to `path` (a key file as an operator would: one line).
pub fn write_test_key(path: &std::path::Path) {
    std::fs::write(path, format!("{TEST_KEY}\n")).unwrap();
}

/// Write an admin token file (0600, as `cohort up` does) in `dir`; returns its path.
pub fn write_token_file(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("admin.token");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).unwrap();
    writeln!(f, "{token}").unwrap();
    path
}

/// Flags for a node on free loopback ports with its data in a fresh temp dir.
pub fn node_args(name: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("cohort-test-{}-{name}-{}", std::process::id(), rand_suffix()));
    node_args_in(name, &dir)
}

/// [`node_args`] with the data dir given (kept across restarts of the node).
pub fn node_args_in(name: &str, dir: &std::path::Path) -> Vec<String> {
    vec![
        "node".into(),
        "--name".into(),
        name.into(),
        "--http".into(),
        "127.0.0.1:0".into(),
        "--gossip".into(),
        "127.0.0.1:0".into(),
        "--internode".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ]
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 32)
}

pub fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Sum of every sample of metric `name` (any labels) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A cluster of real `cohort node` processes with chaos enabled (probes, faults), one shared
/// secret and admin token, each node seeded with the first one's gossip address.
pub struct Cluster {
    pub procs: Vec<Proc>,
    pub urls: Vec<String>,
}

/// Starts `n` nodes named `n0..` and waits until every one is ready.
pub async fn chaos_cluster(prefix: &str, n: usize, token: &str) -> Cluster {
    chaos_cluster_with(prefix, n, token, &[]).await
}

/// [`chaos_cluster`] with extra flags for every node.
pub async fn chaos_cluster_with(prefix: &str, n: usize, token: &str, extra: &[&str]) -> Cluster {
    let dir = std::env::temp_dir().join(format!("cohort-{prefix}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    write_test_key(&secret);
    let token_file = write_token_file(&dir, token);
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    let mut seed: Option<String> = None;
    for i in 0..n {
        let mut args = node_args(&format!("n{i}"));
        args.extend([
            "--cluster-secret-file".into(),
            secret.display().to_string(),
            "--admin-token-file".into(),
            token_file.display().to_string(),
            "--chaos".into(),
            "--log-filter".into(),
            "warn".into(),
        ]);
        if let Some(s) = &seed {
            args.extend(["--seeds".into(), s.clone()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let p = Proc::spawn(&as_strs(&args));
        let line = p.wait_stdout("cohort node listening", Duration::from_secs(20)).await;
        seed.get_or_insert_with(|| field(&line, "gossip").unwrap());
        urls.push(field(&line, "http").unwrap());
        procs.push(p);
    }
    for u in &urls {
        let u = u.clone();
        wait_for(Duration::from_secs(15), "every node ready", || {
            let u = u.clone();
            async move { (get(&u, "/readyz").await.status == 200).then_some(()) }
        })
        .await;
    }
    Cluster { procs, urls }
}

/// `POST` a JSON body with the admin token; the status and the JSON answer.
pub async fn post_json(url: &str, path: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let a = request("POST", url, path, &[("Authorization", &auth)], Some(&body.to_string())).await;
    let status = a.status;
    (status, a.json())
}
