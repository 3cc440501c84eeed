//! `cohort node` child processes: start, signal, stop, reap.
//!
//! Role: the only place the runner touches processes. A node is started with free loopback ports
//! (port 0), chaos enabled, the run's cluster key and admin token; its announce line on stdout
//! gives its real addresses; its logs go to files in the report directory.
//!
//! The key and the token reach a node as paths of 0600 files, never as arguments: every local
//! user can read a process's argv (`ps`, `/proc/PID/cmdline`).
//!
//! No orphans, whatever happens:
//! - each child runs in its own process group (a terminal's Ctrl-C reaches only the runner) with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the runner dies. Linux sends that signal when the
//!   *thread* that spawned the child exits, so the runner spawns every node from its controller
//!   thread, which lives for the whole run;
//! - [`NodeProcess`]'s `Drop` sends SIGKILL (it works on a SIGSTOPped process too) and reaps the
//!   child, so a panic unwinding through the runner still cleans up.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long a node may take to print its announce line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node gets to exit after SIGTERM (it stops within 5 s by SPEC 9.1) before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(7);
/// Longest stdout line kept in memory while looking for the announce line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why a node could not be started.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// The binary could not be executed, or a log file created.
    #[error("{name}: cannot start {exe}: {source}")]
    Spawn {
        /// Node name.
        name: String,
        /// Binary.
        exe: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited or stayed silent before announcing its addresses.
    #[error("{name}: no announce line: {detail} (see {log})")]
    NoAnnounce {
        /// Node name.
        name: String,
        /// What happened.
        detail: String,
        /// Its stderr log.
        log: String,
    },
}

/// What a node printed once it served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Node name.
    pub name: String,
    /// Incarnation of this run.
    pub incarnation: u64,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    /// Gossip `host:port`.
    pub gossip: String,
}

/// Parse `cohort node listening name=.. incarnation=.. http=.. gossip=.. internode=..`.
pub fn parse_announce(line: &str) -> Option<Announce> {
    let rest = line.strip_prefix("cohort node listening ")?;
    let fields: HashMap<&str, &str> = rest.split_whitespace().filter_map(|kv| kv.split_once('=')).collect();
    Some(Announce {
        name: fields.get("name")?.to_string(),
        incarnation: fields.get("incarnation")?.parse().ok()?,
        http: fields.get("http")?.to_string(),
        gossip: fields.get("gossip")?.to_string(),
    })
}

/// How to start one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The `cohort` binary.
    pub exe: PathBuf,
    /// Node name.
    pub name: String,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// Cluster key file (0600).
    pub secret_file: PathBuf,
    /// Admin token file (0600).
    pub token_file: PathBuf,
    /// Gossip addresses to join through.
    pub seeds: Vec<String>,
    /// Extra config file, if the scenario has node settings.
    pub config_file: Option<PathBuf>,
    /// Log filter.
    pub log_filter: String,
    /// Where its logs go.
    pub log_dir: PathBuf,
    /// Which start of this node this is (1-based), for log file names.
    pub start_number: u32,
}

/// The command line of a node: secrets by file path only, no `COHORT_*` variable inherited.
fn node_command(spec: &NodeSpec) -> Command {
    let mut cmd = Command::new(&spec.exe);
    cmd.arg("node");
    if let Some(cfg) = &spec.config_file {
        cmd.arg("--config").arg(cfg);
    }
    cmd.args(["--name", &spec.name])
        .args(["--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--internode", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .arg("--cluster-secret-file")
        .arg(&spec.secret_file)
        .arg("--admin-token-file")
        .arg(&spec.token_file)
        .args(["--chaos", "--log-format", "json", "--log-filter", &spec.log_filter]);
    if !spec.seeds.is_empty() {
        cmd.args(["--seeds", &spec.seeds.join(",")]);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("COHORT_") || k == "RUST_LOG") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A running (or exited, not yet dropped) node process.
pub struct NodeProcess {
    child: Child,
    /// What it announced.
    pub announce: Announce,
    reaped: Option<ExitStatus>,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl NodeProcess {
    /// Start a node and wait for its announce line.
    pub fn spawn(spec: &NodeSpec) -> Result<Self, ProcessError> {
        let spawn_err =
            |source| ProcessError::Spawn { name: spec.name.clone(), exe: spec.exe.display().to_string(), source };
        let stem = format!("{}.{}", spec.name, spec.start_number);
        let log = spec.log_dir.join(format!("{stem}.log"));
        let stderr = File::create(&log).map_err(spawn_err)?;
        let stdout_log = OpenOptions::new().create(true).append(true).open(&log).map_err(spawn_err)?;
        let mut cmd = node_command(spec);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr));
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the chaos runner exited while starting this node"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = stdout {
            // The reader ends with the child's stdout; it only ever holds one bounded line.
            std::thread::spawn(move || forward_stdout(stdout, stdout_log, tx));
        }
        let mut node = Self {
            child,
            announce: Announce { name: spec.name.clone(), incarnation: 0, http: String::new(), gossip: String::new() },
            reaped: None,
            log: log.clone(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => {
                    node.announce = a;
                    return Ok(node);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) | Err(mpsc::RecvTimeoutError::Timeout)
                    if node.try_exit().is_some() =>
                {
                    let status = node.reaped.map(describe_status).unwrap_or_default();
                    return Err(ProcessError::NoAnnounce {
                        name: spec.name.clone(),
                        detail: format!("exited ({status})"),
                        log: log.display().to_string(),
                    });
                }
                _ if Instant::now() > deadline => {
                    return Err(ProcessError::NoAnnounce {
                        name: spec.name.clone(),
                        detail: format!("nothing within {} s", START_TIMEOUT.as_secs()),
                        log: log.display().to_string(),
                    });
                }
                _ => {}
            }
        }
    }

    /// OS process id.
    pub fn os_pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (ignored once reaped: the pid may belong to someone else by then).
    pub fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on our own child, which is not reaped yet, so its pid is still ours.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Reap it if it exited; its status.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.reaped = Some(status);
        }
        self.reaped
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.wait_for(Duration::from_secs(5))
    }

    fn wait_for(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: SIGCONT (in case it is paused), SIGTERM, then SIGKILL after [`STOP_GRACE`].
    /// Returns its exit status and whether it exited on its own after SIGTERM.
    pub fn stop(&mut self) -> (Option<ExitStatus>, bool) {
        if let Some(s) = self.try_exit() {
            return (Some(s), false);
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_for(STOP_GRACE) {
            return (Some(s), true);
        }
        (self.kill9(), false)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            self.kill9();
        }
    }
}

/// `exit code N` or `signal N (NAME)`.
pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGKILL => "SIGKILL",
                libc::SIGTERM => "SIGTERM",
                libc::SIGABRT => "SIGABRT",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGBUS => "SIGBUS",
                libc::SIGINT => "SIGINT",
                _ => "?",
            };
            format!("signal {sig} ({name})")
        }
        _ => "unknown".into(),
    }
}

fn forward_stdout(stdout: std::process::ChildStdout, mut log: File, tx: mpsc::Sender<Announce>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    let mut announced = false;
    loop {
        buf.clear();
        match std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        if !announced && let Some(a) = parse_announce(line.trim_end()) {
            announced = true;
            let _ = tx.send(a);
        }
        let _ = log.write_all(&buf);
    }
}

/// Random bytes of the run's admin token: 192 bits, written as 48 hex digits.
pub const TOKEN_BYTES: usize = 24;

/// A new admin token from the operating system's generator (never from the run's seed: a
/// reproducible run must not mean a guessable token), as hex.
pub fn generate_token() -> Result<String, rand::rngs::SysError> {
    use rand::TryRng;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write a secret file (the cluster key, the admin token): mode 0600 from its creation, and
/// forced to 0600 when it already existed.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_line_parses_with_incarnation() {
        let a = parse_announce(
            "cohort node listening name=node-1 incarnation=5 http=http://127.0.0.1:4000 gossip=127.0.0.1:4001 internode=127.0.0.1:4002",
        )
        .unwrap();
        assert_eq!(a.incarnation, 5);
        assert_eq!(a.http, "http://127.0.0.1:4000");
        assert!(parse_announce("cohort node listening name=x http=y gossip=z").is_none());
    }

    #[test]
    fn a_binary_that_exits_without_announcing_is_reported_with_its_status() {
        let dir = std::env::temp_dir().join(format!("cohort-chaos-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = NodeSpec {
            exe: PathBuf::from("/bin/false"),
            name: "node-1".into(),
            data_dir: dir.join("d"),
            secret_file: dir.join("s"),
            token_file: dir.join("t"),
            seeds: vec![],
            config_file: None,
            log_filter: "info".into(),
            log_dir: dir.clone(),
            start_number: 1,
        };
        let err = NodeProcess::spawn(&spec).err().expect("must fail");
        assert!(err.to_string().contains("exit code 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_node_gets_its_key_and_token_as_file_paths_never_in_argv() {
        let dir = std::env::temp_dir().join(format!("cohort-chaos-argv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = generate_token().unwrap();
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert_ne!(token, generate_token().unwrap());
        let key = cohort_cluster::auth::ClusterSecret::generate_from_os().unwrap().to_base64();
        let spec = NodeSpec {
            exe: PathBuf::from("/bin/cohort"),
            name: "node-1".into(),
            data_dir: dir.join("d"),
            secret_file: dir.join("cluster.key"),
            token_file: dir.join("admin.token"),
            seeds: vec!["127.0.0.1:1".into()],
            config_file: None,
            log_filter: "info".into(),
            log_dir: dir.clone(),
            start_number: 1,
        };
        write_secret(&spec.secret_file, &key).unwrap();
        write_secret(&spec.token_file, &token).unwrap();
        for file in [&spec.secret_file, &spec.token_file] {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let args: Vec<String> = node_command(&spec).get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.windows(2).any(|w| w[0] == "--admin-token-file" && w[1].ends_with("admin.token")), "{args:?}");
        assert!(args.iter().all(|a| !a.contains(&token) && !a.contains(&key) && a != "--admin-token"), "{args:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_descriptions_name_the_signal() {
        assert_eq!(describe_status(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
        assert_eq!(describe_status(ExitStatus::from_raw(2 << 8)), "exit code 2");
    }
}
