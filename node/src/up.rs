//! `cohort up`: a local cluster in one command (the embedded default of SPEC 9.1).
//!
//! Starts N `cohort node` child processes on 127.0.0.1 with free ports (port 0), one generated
//! cluster key and one generated admin token, chaos enabled. Each node after the first gets every
//! earlier node's gossip address as a seed. Their log lines are forwarded with a `[name]` prefix.
//! It prints each node's name, HTTP URL and pid, and the admin token.
//!
//! Secrets: the key (32 bytes) and the token (24 bytes) come straight from the operating system's
//! generator, and each is written to a 0600 file in the work directory (`cluster.key`,
//! `admin.token`) that the children are given by path. Neither ever appears in a child's argv, which
//! every local user can read in `/proc/PID/cmdline`.
//!
//! No orphans, whatever happens: children run in their own process group (so a terminal's Ctrl-C
//! reaches only `cohort up`, which then stops them in order) with `PR_SET_PDEATHSIG = SIGTERM` (so
//! they stop if `cohort up` itself is killed), and `kill_on_drop` as a last resort. When a child dies
//! on its own, the others are stopped and `cohort up` exits 1; on SIGINT/SIGTERM they are all sent
//! SIGTERM, given [`CHILD_STOP_GRACE`] and then SIGKILL, and `cohort up` exits 0.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use cohort_chaos::process::{generate_token, write_secret};
use cohort_cluster::auth::ClusterSecret;
use rand::RngExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cli::{EXIT_FAILURE, wait_for_signal};

/// Most nodes `cohort up` starts: it is a laptop tool; a real cluster runs `cohort node`.
pub const MAX_UP_NODES: u16 = 16;
/// How long a child may take to announce its addresses.
pub const CHILD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long children get to exit after SIGTERM before SIGKILL (a node stops within 5 s).
pub const CHILD_STOP_GRACE: Duration = Duration::from_secs(7);
/// Longest forwarded log line; longer lines are split, so a runaway child cannot grow our buffers.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// Flags of `cohort up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=MAX_UP_NODES as i64))]
    pub nodes: u16,
    /// Work directory for secrets and node data (default: a fresh temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Log filter for every node (RUST_LOG syntax).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log_filter: String,
}

/// What a child announced on its stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Node name.
    pub name: String,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// Gossip `host:port`.
    pub gossip: String,
}

/// Parse `cohort node listening name=.. http=.. gossip=.. ...`.
pub fn parse_announce(line: &str) -> Option<Announce> {
    let rest = line.strip_prefix("cohort node listening ")?;
    let fields: HashMap<&str, &str> = rest.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
    Some(Announce {
        name: fields.get("name")?.to_string(),
        http: fields.get("http")?.to_string(),
        gossip: fields.get("gossip")?.to_string(),
    })
}

struct Running {
    name: String,
    pid: u32,
}

/// Run `cohort up`.
pub fn run(args: UpArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohort up: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("cohort-up-{}-{:08x}", std::process::id(), rand::rng().random::<u32>())),
            true,
        ),
    };
    let code = rt.block_on(up(&args, &dir));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// The files `cohort up` gives its children.
struct Secrets {
    key_file: PathBuf,
    token_file: PathBuf,
    token: String,
}

fn make_secrets(dir: &Path) -> Result<Secrets, String> {
    let key = ClusterSecret::generate_from_os().map_err(|e| format!("cannot generate the cluster key: {e}"))?;
    let token = generate_token().map_err(|e| format!("cannot generate the admin token: {e}"))?;
    let key_file = dir.join("cluster.key");
    write_secret(&key_file, &key.to_base64()).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    let token_file = dir.join("admin.token");
    write_secret(&token_file, &token).map_err(|e| format!("cannot write {}: {e}", token_file.display()))?;
    Ok(Secrets { key_file, token_file, token })
}

async fn up(args: &UpArgs, dir: &Path) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("cohort up: {msg}");
        ExitCode::from(EXIT_FAILURE)
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return fail(format!("cannot create {}: {e}", dir.display()));
    }
    let secrets = match make_secrets(dir) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find the cohort binary: {e}")),
    };

    let (exit_tx, mut exit_rx) =
        mpsc::channel::<(String, std::io::Result<std::process::ExitStatus>)>(usize::from(args.nodes));
    let mut running: Vec<Running> = Vec::new();
    let mut announced: Vec<Announce> = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("node-{i}");
        let seeds: Vec<&str> = announced.iter().map(|a| a.gossip.as_str()).collect();
        let cmd = node_command(&exe, &name, dir, &secrets, &seeds, &args.log_filter);
        let started = spawn_node(cmd, &exe, &name).await;
        let (child, announce) = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cohort up: {name} did not start: {e}");
                stop_all(&running, &mut exit_rx).await;
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        running.push(Running { name: name.clone(), pid: child.id().unwrap_or(0) });
        announced.push(announce);
        let tx = exit_tx.clone();
        tokio::spawn(async move {
            let mut child = child;
            let status = child.wait().await;
            let _ = tx.send((name, status)).await;
        });
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "cohort up: {} nodes on 127.0.0.1 (work dir {}); Ctrl-C stops them all",
        args.nodes,
        dir.display()
    );
    for (r, a) in running.iter().zip(&announced) {
        let _ = writeln!(out, "  {:<8} {}  pid {}", r.name, a.http, r.pid);
    }
    let _ = writeln!(out, "admin token: {}", secrets.token);
    let _ = writeln!(out, "admin token file: {}", secrets.token_file.display());
    if let Some(first) = announced.first() {
        let _ = writeln!(out, "try: curl {}/livez   curl {}/metrics", first.http, first.http);
    }
    let _ = out.flush();
    drop(out);

    tokio::select! {
        signal = wait_for_signal() => {
            eprintln!("cohort up: {signal}: stopping {} nodes", running.len());
            let clean = stop_all(&running, &mut exit_rx).await;
            if clean { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
        }
        Some((name, status)) = exit_rx.recv() => {
            let how = match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            eprintln!("cohort up: {name} exited ({how}); stopping the others");
            let others: Vec<Running> = running.into_iter().filter(|r| r.name != name).collect();
            stop_all(&others, &mut exit_rx).await;
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// SIGTERM every child, wait for their exits up to the grace, then SIGKILL the rest.
/// Returns whether every child exited on its own with status 0.
async fn stop_all(
    running: &[Running],
    exits: &mut mpsc::Receiver<(String, std::io::Result<std::process::ExitStatus>)>,
) -> bool {
    for r in running {
        signal_pid(r.pid, libc::SIGTERM);
    }
    let mut pending: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
    let mut clean = true;
    let deadline = tokio::time::Instant::now() + CHILD_STOP_GRACE;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some((name, status))) => {
                pending.retain(|p| *p != name);
                if !matches!(&status, Ok(s) if s.success()) {
                    clean = false;
                }
            }
            Ok(None) => break,
            Err(_) => {
                clean = false;
                for r in running.iter().filter(|r| pending.contains(&r.name.as_str())) {
                    eprintln!("cohort up: {} did not stop in time; killing it", r.name);
                    signal_pid(r.pid, libc::SIGKILL);
                }
                // Reap what we just killed (bounded: SIGKILL cannot be refused).
                let reap = tokio::time::Instant::now() + Duration::from_secs(2);
                while !pending.is_empty() {
                    match tokio::time::timeout_at(reap, exits.recv()).await {
                        Ok(Some((name, _))) => pending.retain(|p| *p != name),
                        _ => break,
                    }
                }
                break;
            }
        }
    }
    clean
}

fn signal_pid(pid: u32, signal: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (the waiter task reaps it).
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// The command line of one child: secrets by file path only.
fn node_command(exe: &Path, name: &str, dir: &Path, secrets: &Secrets, seeds: &[&str], log_filter: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .args(["--name", name])
        .args(["--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--internode", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg("--cluster-secret-file")
        .arg(&secrets.key_file)
        .arg("--admin-token-file")
        .arg(&secrets.token_file)
        .args(["--chaos", "--log-filter", log_filter]);
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    // The child must not inherit settings meant for `cohort up` itself, nor another key, token
    // or next key from the environment.
    for var in [
        "COHORT_CONFIG",
        "COHORT_SEEDS",
        "COHORT_HTTP",
        "COHORT_GOSSIP",
        "COHORT_INTERNODE",
        "COHORT_NAME",
        "COHORT_CLUSTER_SECRET_FILE_NEXT",
        crate::config::ADMIN_TOKEN_ENV,
    ] {
        cmd.env_remove(var);
    }
    cmd
}

async fn spawn_node(mut cmd: Command, exe: &Path, name: &str) -> Result<(Child, Announce), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                return Err(std::io::Error::other("cohort up exited while starting this node"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", exe.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let prefix = format!("[{name}] ");
    tokio::spawn(forward(BufReader::new(stderr), prefix.clone(), false));

    let mut stdout = BufReader::new(stdout);
    let announce = tokio::time::timeout(CHILD_START_TIMEOUT, async {
        let mut buf = Vec::new();
        while next_line(&mut stdout, &mut buf, MAX_LOG_LINE_BYTES).await.map_err(|e| e.to_string())? {
            let line = String::from_utf8_lossy(&buf);
            if let Some(a) = parse_announce(&line) {
                return Ok(a);
            }
            println!("{prefix}{line}");
        }
        Err("exited before announcing its addresses".to_string())
    })
    .await
    .map_err(|_| format!("no announce line within {} s", CHILD_START_TIMEOUT.as_secs()))??;
    tokio::spawn(forward(stdout, prefix, true));
    Ok((child, announce))
}

async fn forward<R: AsyncBufRead + Unpin>(mut reader: R, prefix: String, to_stdout: bool) {
    let mut buf = Vec::new();
    while let Ok(true) = next_line(&mut reader, &mut buf, MAX_LOG_LINE_BYTES).await {
        let line = String::from_utf8_lossy(&buf);
        if to_stdout {
            println!("{prefix}{line}");
        } else {
            eprintln!("{prefix}{line}");
        }
    }
}

/// Read one line (without its newline) into `buf`, at most `max` bytes (a longer line is split).
/// Returns false at end of input with nothing read.
async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let room = max - buf.len();
        let window = &available[..available.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&window[..i]);
            reader.consume(i + 1);
            return Ok(true);
        }
        let n = window.len();
        buf.extend_from_slice(window);
        reader.consume(n);
        if buf.len() >= max {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_the_key_and_token_by_file_never_in_argv() {
        let dir = std::env::temp_dir().join(format!("cohort-up-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = make_secrets(&dir).unwrap();
        let key = std::fs::read_to_string(&secrets.key_file).unwrap();
        assert_eq!(ClusterSecret::from_text(&key).unwrap().len(), 32);
        assert_eq!(std::fs::read_to_string(&secrets.token_file).unwrap().trim(), secrets.token);
        assert_eq!(secrets.token.len(), 2 * cohort_chaos::process::TOKEN_BYTES);
        for file in [&secrets.key_file, &secrets.token_file] {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());
        }
        let cmd = node_command(Path::new("/bin/cohort"), "node-1", &dir, &secrets, &["127.0.0.1:1"], "info");
        let args: Vec<String> = cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.iter().any(|a| a == "--admin-token-file"), "{args:?}");
        for arg in &args {
            assert!(!arg.contains(&secrets.token) && !arg.contains(key.trim()), "secret in argv: {args:?}");
            assert_ne!(arg, "--admin-token");
        }
        assert_ne!(generate_token().unwrap(), secrets.token);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn announce_line_parses() {
        let a = parse_announce(
            "cohort node listening name=node-1 incarnation=5 http=http://127.0.0.1:4000 gossip=127.0.0.1:4001 internode=127.0.0.1:4002",
        )
        .unwrap();
        assert_eq!(a.name, "node-1");
        assert_eq!(a.http, "http://127.0.0.1:4000");
        assert_eq!(a.gossip, "127.0.0.1:4001");
        assert!(parse_announce("some log line").is_none());
        assert!(parse_announce("cohort node listening name=x").is_none());
    }

    #[tokio::test]
    async fn long_lines_are_split_at_the_limit() {
        let input = format!("{}\nshort\n", "x".repeat(10));
        let mut r = BufReader::with_capacity(4, input.as_bytes());
        let mut buf = Vec::new();
        assert!(next_line(&mut r, &mut buf, 6).await.unwrap());
        assert_eq!(buf, b"xxxxxx");
        assert!(next_line(&mut r, &mut buf, 6).await.unwrap());
        assert_eq!(buf, b"xxxx");
        assert!(next_line(&mut r, &mut buf, 6).await.unwrap());
        assert_eq!(buf, b"short");
        assert!(!next_line(&mut r, &mut buf, 6).await.unwrap());
    }
}
