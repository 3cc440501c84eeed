//! The `cohort` command line (SPEC 9.1).
//!
//! Exit codes: 0 after a clean run or a graceful stop; 2 for a bad flag, config key or value (the
//! message names it); 1 for a failure of the outside world (a port already taken, a child that died).
//! Every `cohort node` flag can also come from a `COHORT_*` environment variable; flags win over
//! the environment, which wins over the config file.
//!
//! No secret is ever a flag value: argv is readable by every local user (`ps`,
//! `/proc/PID/cmdline`). The cluster key comes from a file, the admin token from a file or the
//! `COHORT_ADMIN_TOKEN` variable; `--admin-token` is refused with a message naming both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{ADMIN_TOKEN_ENV, Config, ConfigError, LogFormat, Overrides};
use crate::{Node, telemetry};

/// Exit code for usage and configuration errors (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "cohort", version, about = "Cohort: a distributed actor runtime node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one cluster node.
    Node(Box<NodeArgs>),
    /// Start a local cluster of N nodes on 127.0.0.1 with a generated key and admin token, chaos enabled.
    Up(crate::up::UpArgs),
    /// Print a new random 32-byte cluster key (base64) for `cluster_secret_file`.
    #[command(long_about = KEYGEN_ABOUT)]
    Keygen(KeygenArgs),
    /// Chaos scenarios: real nodes on 127.0.0.1, injected faults, checked invariants (docs/chaos.md).
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// Deterministic whole-cluster simulation: seeded composed faults on a simulated network and clock.
    Sim(crate::sim_cli::SimArgs),
    /// Operator commands against a running node's HTTP surface: members, status, raft, names, pg, faults.
    #[command(long_about = crate::ctl::CTL_ABOUT)]
    Ctl(crate::ctl::CtlArgs),
}

/// The long help of `cohort keygen`.
const KEYGEN_ABOUT: &str = "\
Print a new random cluster key on stdout: 32 bytes from the operating system's random number
generator, as one line of base64 (or hex with --hex). A node reads either form from
`cluster_secret_file` (or `cluster_secret_file_next` during a key rotation); every node of a
cluster needs the same key.

    cohort keygen > cluster.key; chmod 600 cluster.key
    cohort node --cluster-secret-file cluster.key ...

(`(umask 077; cohort keygen > cluster.key)` creates the file unreadable to others from the
start.) Copy the file to each node over a channel you trust; it never goes on a command line.";

/// Flags of `cohort keygen`.
#[derive(Args, Debug)]
struct KeygenArgs {
    /// Print the key as 64 lower-case hex digits instead of base64.
    #[arg(long)]
    hex: bool,
}

/// `cohort chaos ...`
#[derive(Subcommand, Debug)]
enum ChaosCommand {
    /// Run a scenario against real nodes; exit 0 when every invariant holds, 1 when one fails, 2 for a bad scenario.
    Run(ChaosRunArgs),
}

/// Flags of `cohort chaos run`.
#[derive(Args, Debug)]
struct ChaosRunArgs {
    /// The scenario file (TOML; see docs/chaos.md).
    #[arg(value_name = "SCENARIO.toml")]
    scenario: PathBuf,
    /// Report directory (default: chaos-reports/<scenario>-<unix time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seed of the workload's random choices (overrides the scenario's).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Run with this many nodes instead of the scenario's count.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(cohort_chaos::scenario::MAX_NODES)))]
    nodes: Option<u16>,
}

/// Flags of `cohort node`.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// TOML config file (see docs/operations.md).
    #[arg(long, env = "COHORT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name, unique in the cluster.
    #[arg(long, env = "COHORT_NAME", value_name = "N")]
    pub name: Option<String>,
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, env = "COHORT_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Gossip (UDP) listen address.
    #[arg(long, env = "COHORT_GOSSIP", value_name = "ADDR")]
    pub gossip: Option<SocketAddr>,
    /// Internode (TCP) listen address.
    #[arg(long, env = "COHORT_INTERNODE", value_name = "ADDR")]
    pub internode: Option<SocketAddr>,
    /// Comma-separated gossip addresses of nodes to join through.
    #[arg(long, env = "COHORT_SEEDS", value_name = "A,B", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// The host peers dial to reach this node (IP or DNS name), announced with the listeners'
    /// ports; needed when --gossip/--internode bind 0.0.0.0 or [::].
    #[arg(long, env = "COHORT_ADVERTISE", value_name = "HOST")]
    pub advertise: Option<String>,
    /// Directory for durable state.
    #[arg(long, env = "COHORT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the cluster key: 32-64 bytes as base64 or hex (`cohort keygen` makes one).
    #[arg(long, env = "COHORT_CLUSTER_SECRET_FILE", value_name = "F")]
    pub cluster_secret_file: Option<PathBuf>,
    /// File holding the next cluster key, accepted as a second key during a rotation window.
    #[arg(long, env = "COHORT_CLUSTER_SECRET_FILE_NEXT", value_name = "F")]
    pub cluster_secret_file_next: Option<PathBuf>,
    /// File holding the bearer token for mutating admin endpoints. The token may instead be given
    /// in the COHORT_ADMIN_TOKEN environment variable (the file wins); never on the command line.
    #[arg(long, env = "COHORT_ADMIN_TOKEN_FILE", value_name = "F")]
    pub admin_token_file: Option<PathBuf>,
    /// Removed: refused with a message, since a token in argv is readable by every local user.
    #[arg(long = "admin-token", hide = true, value_name = "T", num_args = 0..=1)]
    pub removed_admin_token: Option<Option<String>>,
    /// Enable chaos mode (fault injection, probe workload).
    #[arg(long, env = "COHORT_CHAOS")]
    pub chaos: bool,
    /// Log format.
    #[arg(long, env = "COHORT_LOG_FORMAT", value_enum, value_name = "pretty|json")]
    pub log_format: Option<LogFormat>,
    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", value_name = "FILTER")]
    pub log_filter: Option<String>,
    /// Base URL of an OTLP/HTTP collector.
    #[arg(long, env = "COHORT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl NodeArgs {
    /// The flags, plus `COHORT_ADMIN_TOKEN` (read here, not by clap: it must not be a flag).
    fn overrides(&self) -> Result<Overrides, ConfigError> {
        let admin_token = match std::env::var(ADMIN_TOKEN_ENV) {
            Ok(token) if token.is_empty() => {
                return Err(ConfigError::Invalid {
                    key: ADMIN_TOKEN_ENV,
                    reason: "is set but empty (unset it for a node without admin token)".into(),
                });
            }
            Ok(token) => Some(token),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError::Invalid { key: ADMIN_TOKEN_ENV, reason: "is not valid UTF-8".into() });
            }
        };
        Ok(Overrides {
            name: self.name.clone(),
            http: self.http,
            gossip: self.gossip,
            internode: self.internode,
            seeds: self.seeds.clone(),
            advertise: self.advertise.clone(),
            data_dir: self.data_dir.clone(),
            cluster_secret_file: self.cluster_secret_file.clone(),
            cluster_secret_file_next: self.cluster_secret_file_next.clone(),
            admin_token,
            admin_token_file: self.admin_token_file.clone(),
            chaos: self.chaos,
            log_format: self.log_format,
            log_filter: self.log_filter.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
        })
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors to stderr with exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match cli.command {
        Command::Node(args) => run_node(*args),
        Command::Up(args) => crate::up::run(args),
        Command::Keygen(args) => keygen(&args),
        Command::Chaos(ChaosCommand::Run(args)) => run_chaos(args),
        Command::Sim(args) => crate::sim_cli::run(args),
        Command::Ctl(args) => crate::ctl::run(args),
    }
}

fn run_chaos(args: ChaosRunArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cohort chaos run: cannot find the cohort binary: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let opts = cohort_chaos::RunOptions { node_binary: exe, out_dir: args.out, seed: args.seed, nodes: args.nodes };
    match cohort_chaos::run_file(&args.scenario, &opts) {
        Ok(outcome) => {
            for v in &outcome.verdicts {
                let status = match v.status {
                    cohort_chaos::invariants::Status::Pass => "pass",
                    cohort_chaos::invariants::Status::Fail => "FAIL",
                    cohort_chaos::invariants::Status::Skipped => "skip",
                };
                println!("{status:<5} {:<36} {}", v.name, v.summary);
            }
            let held = outcome.held();
            println!(
                "{} in {:.0} s; report: {}",
                if held { "every invariant held" } else { "INVARIANTS FAILED" },
                outcome.elapsed.as_secs_f64(),
                outcome.out_dir.join("report.html").display()
            );
            if held { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
        }
        Err(cohort_chaos::RunError::Scenario(e)) => {
            eprintln!("cohort chaos run: {}: {e}", args.scenario.display());
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("cohort chaos run: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("cohort").build()
}

/// `cohort keygen`: one line on stdout, nothing else (so `> FILE` captures exactly the key).
fn keygen(args: &KeygenArgs) -> ExitCode {
    use std::io::Write;
    let secret = match cohort_cluster::auth::ClusterSecret::generate_from_os() {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("cohort keygen: the operating system's random number generator failed: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let text = if args.hex { secret.to_hex() } else { secret.to_base64() };
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cohort keygen: cannot write the key: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_node(args: NodeArgs) -> ExitCode {
    if args.removed_admin_token.is_some() {
        eprintln!(
            "cohort node: --admin-token is no longer accepted: a token on the command line is readable by \
             every local user (ps, /proc/PID/cmdline). Put it in a file readable only by the node's user and \
             pass --admin-token-file FILE, or set the {ADMIN_TOKEN_ENV} environment variable"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let overrides = match args.overrides() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cohort node: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cohort node: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (log_control, otlp) = match telemetry::init(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cohort node: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohort node: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = rt.block_on(async {
        let node = match Node::builder(config).log_control(log_control).start().await {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(error = %e, "node failed to start");
                eprintln!("cohort node: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        if let Some(otlp) = &otlp {
            otlp.export_metrics(node.metrics().registry());
        }
        announce(&node);
        let signal = wait_for_signal().await;
        tracing::info!(signal, "stop requested");
        let report = node.shutdown().await;
        if report.aborted.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
    });
    // The OTLP flush blocks on HTTP; it runs after the node stopped, outside the runtime.
    drop(rt);
    if let Some(otlp) = otlp {
        otlp.shutdown();
    }
    code
}

/// One machine-readable line on stdout once the node serves: `cohort up` and scripts read the
/// real ports from it (logs go to stderr).
fn announce(node: &Node) {
    use std::io::Write;
    let a = node.addrs();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "cohort node listening name={} incarnation={} http=http://{} gossip={} internode={}",
        node.id().name,
        node.id().incarnation,
        a.http,
        a.gossip,
        a.internode
    );
    let _ = out.flush();
}

/// Wait for SIGTERM or SIGINT; returns the signal's name.
pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            // Installing handlers only fails when the runtime lacks signal support; Ctrl-C still works.
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
