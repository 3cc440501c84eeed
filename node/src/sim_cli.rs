//! `cohort sim`: the deterministic whole-cluster simulator (issue 12; docs/simulation.md).
//!
//! One line per seed with its verdict; for a failure the exact command that replays it and, with
//! `--trace FILE`, the full event trace of that seed. Seeds of a range run on `--jobs` threads
//! (each seed is single-threaded and deterministic; the order of the lines is the seeds' order).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use cohort_registry::consistent::ladder::LadderRule;
use cohort_sim::scale::ScaleConfig;
use cohort_sim::{FaultProfile, MembershipModel, SimConfig, SimReport, Status};

use crate::cli::{EXIT_FAILURE, EXIT_USAGE};

/// Most seeds one invocation runs.
pub const MAX_SEEDS: u64 = 10_000_000;

/// The voter ladder's rule, as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuleFlag {
    /// A voter is replaced only after it was down for dead_voter_after, never below 3 voters (real nodes' rule).
    Autopilot,
    /// Test-only: the old rule, which reconciles the voters to the live members at once.
    LiveMembers,
}

/// Flags of `cohort sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Run this one seed.
    #[arg(long, value_name = "S", conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds: `A..B` (B excluded) or `A..=B`.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Nodes in the simulated cluster.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=cohort_sim::MAX_NODES as i64))]
    nodes: u16,
    /// Simulated seconds per seed (at least 40: warm-up, faults, cool-down).
    #[arg(long, value_name = "SIM_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(40..=86_400))]
    duration: u64,
    /// Fault profile: none, partitions, crashes, composed (partitions, crashes, pauses, clock
    /// jumps, loss, delay), or all (composed plus nodes leaving, rejoining and joining, and
    /// congested links on small transport queues).
    #[arg(long, value_name = "PROFILE", default_value = "all", value_parser = parse_profile)]
    faults: FaultProfile,
    /// Membership the nodes run: swim (the production foca driver) or heartbeat (a simple failure detector).
    #[arg(long, value_name = "MODEL", default_value = "swim", value_parser = parse_membership)]
    membership: MembershipModel,
    /// Write the full event trace of the seed (of the first failing seed of a range) to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Threads for a range of seeds (default: the machine's cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Instead of the full simulation: N nodes running only SWIM membership and a pg scope; prints
    /// per seed the simulated seconds until every node sees every other (join), sees the other
    /// half down after a split in two (detect), and sees every node again after the heal (heal),
    /// and the same three for pg (every node's process in the groups; only its half's; all again).
    #[arg(long, visible_alias = "scale", value_name = "N", value_parser = clap::value_parser!(u16).range(2..=cohort_sim::scale::MAX_SCALE_NODES as i64))]
    membership_scale: Option<u16>,
    /// With --membership-scale: the longest a phase may take, in simulated seconds.
    #[arg(long, value_name = "SIM_SECONDS", default_value_t = cohort_sim::scale::PHASE_LIMIT_US / 1_000_000, value_parser = clap::value_parser!(u64).range(1..=cohort_sim::scale::MAX_PHASE_LIMIT_US / 1_000_000))]
    phase_limit: u64,
    /// Run without pg (the workload before pg joined the simulator: its regression seeds replay
    /// so; with --membership-scale, membership alone).
    #[arg(long)]
    no_pg: bool,
    /// Only print failing seeds and the summary.
    #[arg(long)]
    quiet: bool,
    /// Test-only: the voter ladder's rule (live-members is the old rule the regression seed shows failing).
    #[arg(long, value_name = "RULE", default_value = "autopilot", hide = true)]
    ladder_rule: RuleFlag,
}

/// Prints a line; a closed stdout (`cohort sim ... | head`) is not an error of the run.
fn out(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn parse_profile(s: &str) -> Result<FaultProfile, String> {
    s.parse()
}

fn parse_membership(s: &str) -> Result<MembershipModel, String> {
    s.parse()
}

/// Parses `A..B` (B excluded) or `A..=B`.
pub fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || format!("--seeds {s:?}: expected A..B or A..=B with decimal seeds");
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(bad());
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let end = if inclusive { b.checked_add(1).ok_or_else(bad)? } else { b };
    if end <= a {
        return Err(format!("--seeds {s:?}: the range is empty"));
    }
    if end - a > MAX_SEEDS {
        return Err(format!("--seeds {s:?}: at most {MAX_SEEDS} seeds per run"));
    }
    Ok(a..end)
}

impl SimArgs {
    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: usize::from(self.nodes),
            duration: Duration::from_secs(self.duration),
            faults: self.faults,
            membership: self.membership,
            pg: !self.no_pg,
            ladder_rule: match self.ladder_rule {
                RuleFlag::Autopilot => LadderRule::Autopilot,
                RuleFlag::LiveMembers => LadderRule::LiveMembers,
            },
            full_trace: false,
            fsm_mutation: None,
        }
    }

    fn replay(&self, seed: u64) -> String {
        let mut rule = match self.ladder_rule {
            RuleFlag::Autopilot => String::new(),
            RuleFlag::LiveMembers => " --ladder-rule live-members".into(),
        };
        if self.no_pg {
            rule.push_str(" --no-pg");
        }
        format!(
            "cohort sim --seed {seed} --nodes {} --duration {} --faults {} --membership {}{rule} --trace sim-{seed}.trace",
            self.nodes, self.duration, self.faults, self.membership
        )
    }
}

fn write_trace(path: &PathBuf, report: &SimReport) -> std::io::Result<()> {
    let mut text = String::new();
    for line in &report.trace {
        text.push_str(line);
        text.push('\n');
    }
    for v in &report.verdicts {
        text.push_str(&format!("verdict {:?} {} {}\n", v.status, v.name, v.detail));
    }
    text.push_str(&format!("trace_hash {:016x}\n", report.trace_hash));
    std::fs::write(path, text)
}

/// Runs `cohort sim`. `COHORT_SIM_LOG=<filter>` (e.g. `cohort_cluster=debug`) prints the nodes'
/// logs on stderr, in event order (use it with one seed and `--jobs 1`).
pub fn run(args: SimArgs) -> ExitCode {
    if let Ok(filter) = std::env::var("COHORT_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
    let seeds = match (&args.seed, &args.seeds) {
        (Some(seed), _) => *seed..seed.saturating_add(1),
        (None, Some(range)) => match parse_seeds(range) {
            Ok(range) => range,
            Err(e) => {
                eprintln!("cohort sim: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, None) => 1..2,
    };
    let count = seeds.end - seeds.start;
    if let Some(nodes) = args.membership_scale {
        let mut ok = true;
        for seed in seeds {
            let started = Instant::now();
            let config = ScaleConfig {
                nodes: usize::from(nodes),
                seed,
                pg: !args.no_pg,
                phase_limit: Duration::from_secs(args.phase_limit),
            };
            let r = cohort_sim::scale::run_scale(&config);
            let s = |v: Option<f64>| v.map_or_else(|| "never".to_string(), |v| format!("{v:.3} s"));
            // pg's time with its lag behind membership's, when both converged.
            let pg_s = |pg: Option<f64>, membership: Option<f64>| match (pg, membership) {
                (Some(pg), Some(membership)) => format!("{} (+{:.0} ms)", s(Some(pg)), (pg - membership) * 1e3),
                (pg, _) => s(pg),
            };
            ok &= r.join_s.is_some() && r.detect_s.is_some() && r.heal_s.is_some();
            let pg = if config.pg {
                ok &= r.pg_join_s.is_some() && r.pg_detect_s.is_some() && r.pg_heal_s.is_some();
                format!(
                    "; pg join {} detect {} heal {} ({} pg frames)",
                    pg_s(r.pg_join_s, r.join_s),
                    pg_s(r.pg_detect_s, r.detect_s),
                    pg_s(r.pg_heal_s, r.heal_s),
                    r.pg_frames
                )
            } else {
                String::new()
            };
            out(&format!(
                "membership {} nodes seed {seed}: join {} detect {} heal {}{pg} ({} datagrams, {} events, {:.1} s wall)",
                r.nodes,
                s(r.join_s),
                s(r.detect_s),
                s(r.heal_s),
                r.datagrams,
                r.events,
                started.elapsed().as_secs_f64()
            ));
        }
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) };
    }
    let jobs = args
        .jobs
        .map(u64::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
        .min(count)
        .max(1);
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let results: Mutex<Vec<SimReport>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let report = cohort_sim::run(&args.config(seed));
                    if !args.quiet || !report.passed() {
                        out(&report.summary());
                        if !report.passed() {
                            out(&format!("  replay: {}", args.replay(seed)));
                        }
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(report);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|r| r.config.seed);
    let failed: Vec<u64> = results.iter().filter(|r| !r.passed()).map(|r| r.config.seed).collect();
    let inconclusive = results.iter().filter(|r| r.verdicts.iter().any(|v| v.status == Status::Inconclusive)).count();
    let elapsed = started.elapsed().as_secs_f64();
    let sim_hours = count as f64 * args.duration as f64 / 3600.0;
    out(&format!(
        "{} of {count} seeds passed ({} failed, {inconclusive} inconclusive), {sim_hours:.2} simulated hours in {elapsed:.1} s on {jobs} threads ({:.0} seeds/hour)",
        count - failed.len() as u64,
        failed.len(),
        count as f64 / elapsed.max(1e-9) * 3600.0,
    ));
    if !failed.is_empty() {
        out(&format!("failing seeds: {failed:?}"));
    }
    if let Some(path) = &args.trace {
        let seed = failed.first().copied().unwrap_or(seeds.start);
        let mut config = args.config(seed);
        config.full_trace = true;
        let report = cohort_sim::run(&config);
        if let Err(e) = write_trace(path, &report) {
            eprintln!("cohort sim: cannot write the trace to {}: {e}", path.display());
            return ExitCode::from(EXIT_FAILURE);
        }
        out(&format!("trace of seed {seed} written to {} ({} lines)", path.display(), report.trace.len()));
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_half_open_and_inclusive_and_refuse_nonsense() {
        assert_eq!(parse_seeds("1..4"), Ok(1..4));
        assert_eq!(parse_seeds("1..=4"), Ok(1..5));
        assert!(parse_seeds("4..4").is_err());
        assert!(parse_seeds("a..b").is_err());
        assert!(parse_seeds("7").is_err());
        assert!(parse_seeds("0..=18446744073709551615").is_err());
    }
}
