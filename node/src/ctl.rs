//! `cohort ctl`: the operator's command line against one node's HTTP surface.
//!
//! Role: `members`, `status`, `raft`, `names`, `lookup`, `pg groups|members` and
//! `faults show|set|clear` read (or, for faults, change) one node through its admin API and print
//! aligned tables for people (colours only on a terminal, never with `NO_COLOR`) or, with
//! `-o json`, the node's JSON for scripts (docs/operations.md "cohort ctl").
//!
//! Exit codes a script can test: [`EXIT_OK`] 0; [`EXIT_FAILED`] 1 when the node cannot be reached
//! (the message says "cannot reach"), refused the request (it names the status and the reason) or
//! answered something unreadable; [`EXIT_USAGE`] 2 for a bad flag or a missing admin token;
//! [`EXIT_NO`] 3 when the node answered "no": `status` of a node that is not live or not ready,
//! `lookup` of a name that is not registered.
//!
//! Secrets: the admin token is only sent on mutating requests, and only read from a file
//! (`--admin-token-file` / `COHORT_ADMIN_TOKEN_FILE`) or `COHORT_ADMIN_TOKEN`, never from a flag
//! value (argv is readable by every local user), as for `cohort node`.

mod client;
mod commands;
mod events;
mod render;
mod status;
mod views;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::config::{ADMIN_TOKEN_ENV, DEFAULT_HTTP_ADDR, read_admin_token};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The node could not be reached, refused the request, or answered something unreadable.
pub const EXIT_FAILED: u8 = 1;
/// A bad flag or argument, or a missing admin token (the message names it).
pub const EXIT_USAGE: u8 = 2;
/// The node answered "no": not live or not ready (`status`), no such name (`lookup`).
pub const EXIT_NO: u8 = 3;

/// The long help of `cohort ctl`.
pub const CTL_ABOUT: &str = "\
Talk to a running node through its HTTP surface: its view of the members, its raft and readiness
state, the registry's names, process groups, and (chaos nodes) fault rules.

    cohort ctl members
    cohort ctl --node http://10.0.0.5:7480 status
    cohort ctl names --tier consistent -o json | jq '.names[].name'
    COHORT_ADMIN_TOKEN_FILE=admin.token cohort ctl faults set --peer n2 --drop 1

Tables for people (colours only on a terminal, and not with NO_COLOR), `-o json` for scripts:
the node's own JSON (docs/operations.md, \"HTTP endpoints\"). The admin token, needed by
`faults set|clear` only, comes from --admin-token-file / COHORT_ADMIN_TOKEN_FILE or
COHORT_ADMIN_TOKEN, never from a flag value.

Exit codes: 0 ok; 1 the node cannot be reached, refused the request or answered something
unreadable (the message says which); 2 a bad flag or a missing admin token; 3 the node answered
no: `status` of a node that is not live or not ready, `lookup` of a name that is not registered.";

/// `cohort ctl ...`
#[derive(Args, Debug)]
pub struct CtlArgs {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Flags every `cohort ctl` command takes (before or after the command's name).
#[derive(Args, Debug)]
struct Global {
    /// The node's HTTP base URL (`host:port` means http://host:port).
    #[arg(long, env = "COHORT_NODE", value_name = "URL", global = true, default_value_t = default_node())]
    node: String,
    /// Output: aligned tables for people, or the node's JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, value_name = "table|json", global = true, default_value_t = Output::Table)]
    output: Output,
    /// How long to wait for each answer: seconds, or with a unit (500ms, 2s).
    #[arg(long, value_name = "T", global = true, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
    /// File holding the admin token (for `faults set|clear`). The token may instead be given in
    /// the COHORT_ADMIN_TOKEN environment variable (the file wins); never on the command line.
    #[arg(long, env = "COHORT_ADMIN_TOKEN_FILE", value_name = "F", global = true)]
    admin_token_file: Option<PathBuf>,
    /// Refused with a message, since a token in argv is readable by every local user.
    #[arg(long = "admin-token", hide = true, value_name = "T", num_args = 0..=1, global = true)]
    removed_admin_token: Option<Option<String>>,
}

fn default_node() -> String {
    format!("http://{DEFAULT_HTTP_ADDR}")
}

/// `-o table|json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns.
    Table,
    /// The node's JSON, pretty-printed.
    Json,
}

/// The `cohort ctl` commands.
#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// This node's view of the cluster's members: state, addresses, raft role (like `consul members`).
    Members,
    /// One screen about the node; exit 3 when it is not live or not ready.
    ///
    /// Identity, liveness and readiness (with the failing checks), raft (role, term, leader,
    /// voters, learners, commit and applied indices, quorum), degraded mode, catch-up state, root
    /// lag, the raft actor's restarts, and per peer its connection, queued frames, drops and bytes.
    Status,
    /// The consistent tier's raft state on this node: role, term, leader, voters, learners, indices.
    Raft,
    /// Registered names as this node sees them (every tier unless --tier).
    Names(commands::NamesArgs),
    /// Resolve one name; exit 3 when it is not registered.
    ///
    /// Resolved in the local, then the consistent, then the eventual tier, or in --tier only; a
    /// consistent answer shows its fencing token and read witness (how fresh the view was).
    Lookup(commands::LookupArgs),
    /// Process groups of a pg scope.
    #[command(subcommand)]
    Pg(commands::PgCommand),
    /// Fault rules of a chaos node (`--chaos`): show, set (replace), clear.
    #[command(subcommand)]
    Faults(commands::FaultsCommand),
    /// The node's decision log: why members went down, leaders and voters changed, names were
    /// revoked, with the evidence (--follow to watch it live).
    Events(events::EventsArgs),
}

/// Why a command failed; [`CtlError::exit_code`] maps it onto the exit codes.
#[derive(Debug)]
pub enum CtlError {
    /// A bad flag or argument, a missing or unreadable token: exit 2.
    Usage(String),
    /// No answer: connection refused, reset, timed out.
    Unreachable {
        /// The node's base URL.
        node: String,
        /// `GET /admin/raft`.
        what: String,
        /// Why.
        reason: String,
    },
    /// The node answered with an error status.
    Refused {
        /// `GET /admin/raft`.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The error's reason (`NotFound`, `Unavailable`, ...).
        reason: String,
        /// Its detail.
        detail: String,
    },
    /// The node answered something that is not the documented JSON.
    BadAnswer {
        /// `GET /admin/raft`.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The node answered "no" (exit 3).
    No(String),
    /// Anything else (exit 1).
    Failed(String),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::No(_) => EXIT_NO,
            _ => EXIT_FAILED,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::No(m) | Self::Failed(m) => f.write_str(m),
            Self::Unreachable { node, what, reason } => {
                write!(f, "cannot reach the node at {} ({what}): {reason}", node.trim_end_matches('/'))
            }
            Self::Refused { what, status, reason, detail } => {
                write!(f, "the node refused {what}: {status} {reason}")?;
                if !detail.is_empty() {
                    write!(f, ": {}", render::clean(detail))?;
                }
                match status {
                    401 => write!(f, " (is it the token in the node's --admin-token-file or {ADMIN_TOKEN_ENV}?)"),
                    _ => Ok(()),
                }
            }
            Self::BadAnswer { what, problem } => {
                write!(f, "the node's answer to {what} is not what cohort ctl understands: {}", render::clean(problem))
            }
        }
    }
}

/// What a command printed and how the process ends.
pub(crate) struct Done {
    /// Text for stdout.
    out: String,
    /// Lines for stderr (a partial failure, a hint).
    notes: Vec<String>,
    /// The exit code.
    code: u8,
}

impl Done {
    fn ok(out: String) -> Self {
        Self { out, notes: Vec::new(), code: EXIT_OK }
    }
}

/// What every command needs.
pub(crate) struct Ctx {
    client: client::Client,
    json: bool,
    color: bool,
    timeout: Duration,
    token_file: Option<PathBuf>,
}

impl Ctx {
    /// The admin token, for a mutating request: the file's trimmed contents, else
    /// `COHORT_ADMIN_TOKEN`; neither is a usage error naming both.
    fn token(&self) -> Result<String, CtlError> {
        if let Some(path) = &self.token_file {
            return read_admin_token(path).map_err(|r| CtlError::Usage(format!("--admin-token-file: {r}")));
        }
        match std::env::var(ADMIN_TOKEN_ENV) {
            Ok(token) if token.trim().is_empty() => Err(CtlError::Usage(format!("{ADMIN_TOKEN_ENV} is set but empty"))),
            Ok(token) => Ok(token.trim().to_string()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(CtlError::Usage(format!("{ADMIN_TOKEN_ENV} is not valid UTF-8")))
            }
            Err(std::env::VarError::NotPresent) => Err(CtlError::Usage(format!(
                "this command changes the node, so it needs the admin token: pass --admin-token-file FILE \
                 (or set COHORT_ADMIN_TOKEN_FILE), or set {ADMIN_TOKEN_ENV}"
            ))),
        }
    }

    /// The JSON for `-o json`: pretty, one trailing newline.
    fn json_out(value: &Value) -> String {
        let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        s.push('\n');
        s
    }
}

/// `--timeout`: `5`, `2.5`, `500ms`, `2s`; from 10 ms to 10 minutes.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let seconds = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .map(|n| n * scale)
        .ok_or_else(|| format!("`{text}` is not a duration (5, 2.5s, 500ms)"))?;
    if !(0.01..=600.0).contains(&seconds) {
        return Err(format!("`{text}`: from 10ms to 600s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Whether to colour stdout: a terminal, and `NO_COLOR` unset or empty (no-color.org).
fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Entry point of `cohort ctl`.
pub fn run(args: CtlArgs) -> ExitCode {
    let result = context(&args.global).and_then(|ctx| dispatch(&ctx, args.command));
    match result {
        Ok(done) => {
            for note in &done.notes {
                eprintln!("cohort ctl: {note}");
            }
            let mut out = std::io::stdout().lock();
            match out.write_all(done.out.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::from(done.code),
                // `cohort ctl members | head -1`: the reader left, nothing to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(done.code),
                Err(e) => {
                    eprintln!("cohort ctl: cannot write the output: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Err(e) => {
            eprintln!("cohort ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn context(global: &Global) -> Result<Ctx, CtlError> {
    if global.removed_admin_token.is_some() {
        return Err(CtlError::Usage(format!(
            "--admin-token is not accepted: a token on the command line is readable by every local user (ps, \
             /proc/PID/cmdline). Pass --admin-token-file FILE, or set the {ADMIN_TOKEN_ENV} environment variable"
        )));
    }
    let base = client::parse_base(&global.node).map_err(|e| CtlError::Usage(format!("--node: {e}")))?;
    Ok(Ctx {
        client: client::Client::new(base, global.timeout)?,
        json: global.output == Output::Json,
        color: use_color(),
        timeout: global.timeout,
        token_file: global.admin_token_file.clone(),
    })
}

fn dispatch(ctx: &Ctx, command: CtlCommand) -> Result<Done, CtlError> {
    match command {
        CtlCommand::Members => commands::members(ctx),
        CtlCommand::Status => status::status(ctx),
        CtlCommand::Raft => commands::raft(ctx),
        CtlCommand::Names(args) => commands::names(ctx, &args),
        CtlCommand::Lookup(args) => commands::lookup(ctx, &args),
        CtlCommand::Pg(command) => commands::pg(ctx, &command),
        CtlCommand::Faults(command) => commands::faults(ctx, &command),
        CtlCommand::Events(args) => events::events(ctx, &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_take_seconds_or_a_unit() {
        assert_eq!(parse_timeout("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("1h").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("601").is_err());
    }

    #[test]
    fn errors_say_what_happened_and_map_to_exit_codes() {
        let e = CtlError::Refused {
            what: "DELETE /admin/faults".into(),
            status: 401,
            reason: "Unauthorized".into(),
            detail: "needs a token".into(),
        };
        assert_eq!(e.exit_code(), EXIT_FAILED);
        let text = e.to_string();
        assert!(text.starts_with("the node refused DELETE /admin/faults: 401 Unauthorized: needs a token"), "{text}");
        assert!(text.contains(ADMIN_TOKEN_ENV), "{text}");
        let e = CtlError::Unreachable { node: "http://h:1/".into(), what: "GET /livez".into(), reason: "x".into() };
        assert_eq!(e.to_string(), "cannot reach the node at http://h:1 (GET /livez): x");
        assert_eq!(CtlError::Usage(String::new()).exit_code(), EXIT_USAGE);
        assert_eq!(CtlError::No(String::new()).exit_code(), EXIT_NO);
    }
}
