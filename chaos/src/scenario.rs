//! The scenario file (TOML): what a chaos run starts, does and checks (SPEC section 11).
//!
//! Role: parse and validate a scenario into a [`Scenario`] the runner can execute without further
//! checks. A scenario names the node count and node settings, the workload (probes per node, pg
//! groups and joins, broadcast rate, names per tier and their churn), a time-ordered fault schedule,
//! the run's timing (chaos phase, settle window, sample period) and the bounds the invariants hold
//! the nodes to.
//!
//! Invariants of a validated [`Scenario`]:
//! - every node reference names a node of the run (`node-1` .. `node-N`) or a selector resolved
//!   when the fault starts (`leader`, `follower`, and `rest` in a partition's sets); a partition
//!   that uses selectors names no node by number, since a selector may pick that same node;
//! - replaying the schedule in time order never kills a dead node, restarts a running one, pauses a
//!   paused one or resumes a running one; every paused node is resumed and every network fault is
//!   healed (by `for_s` or a `heal`) before `duration_s`, so the settle window starts from a
//!   fault-free network;
//! - every number is inside its named limit ([`MAX_NODES`], [`MAX_DURATION_S`], ...).
//!
//! Errors name the line: TOML syntax and shape errors carry `toml`'s span, semantic errors the line
//! of the offending key or `[[faults]]` entry.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;

/// Most nodes one scenario starts (each is a real process on this machine).
pub const MAX_NODES: u16 = 16;
/// Longest chaos phase, in seconds.
pub const MAX_DURATION_S: f64 = 3600.0;
/// Longest settle window, in seconds.
pub const MAX_SETTLE_S: f64 = 600.0;
/// Shortest sample period: below it sampling itself loads the nodes it measures.
pub const MIN_SAMPLE_PERIOD_MS: u64 = 100;
/// Longest sample period: beyond it convergence times are too coarse to mean anything.
pub const MAX_SAMPLE_PERIOD_MS: u64 = 10_000;
/// Most probes per node the workload spawns (the node's own bound is far higher).
pub const MAX_PROBES_PER_NODE: u32 = 1000;
/// Most pg groups in a workload: each is sampled on every node every period.
pub const MAX_GROUPS: usize = 16;
/// Most names per tier (per node for `local` and `eventual`, cluster-wide for `consistent`).
pub const MAX_NAMES_PER_TIER: u32 = 1000;
/// Highest rate of any workload activity or flood, per second.
pub const MAX_RATE_PER_S: f64 = 10_000.0;
/// Largest broadcast payload (the node's own limit on probe broadcasts).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most `[[faults]]` entries.
pub const MAX_FAULTS: usize = 256;
/// Largest delay or jitter of a link fault (the node's `MAX_FAULT_DELAY_MS`).
pub const MAX_DELAY_MS: u64 = 60_000;
/// Largest scenario file read.
pub const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;

/// A scenario file that cannot be run.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SCENARIO_BYTES`].
    #[error("{path}: larger than {MAX_SCENARIO_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// TOML syntax or shape error (unknown key, wrong type), with the line it is on.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but cannot be run, with the line of the key or fault entry.
    #[error("line {line}: {message}")]
    Invalid {
        /// 1-based line (0 when the key is absent and its default is what is wrong).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl ScenarioError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse { line, .. } | Self::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// A validated scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    /// Short name (used in the report).
    pub name: String,
    /// What the scenario proves, for the report.
    pub description: String,
    /// Number of nodes, named `node-1` .. `node-N`.
    pub nodes: u16,
    /// Length of the chaos phase (workload + faults), in seconds.
    pub duration_s: f64,
    /// Upper bound on convergence after the last fault ends and the workload stops, in seconds.
    pub settle_s: f64,
    /// Consecutive converged samples that end the settle phase early.
    pub stable_samples: u32,
    /// Sampling period, in milliseconds.
    pub sample_period_ms: u64,
    /// Seed of the workload's random choices (`--seed` overrides it).
    pub seed: u64,
    /// How nodes are started.
    pub node: NodeSettings,
    /// What the probes do.
    pub workload: Workload,
    /// Bounds the nodes must stay within.
    pub bounds: Bounds,
    /// The fault schedule, sorted by `at_s` (stable for equal times).
    pub faults: Vec<Fault>,
}

/// How each node is started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// `RUST_LOG`-style filter for the nodes' logs (default `info`).
    pub log_filter: Option<String>,
    /// Extra node configuration (the keys of `docs/operations.md`), written to a config file each
    /// node reads; the runner's flags (name, addresses, seeds, data dir, secret, token, chaos) win.
    pub config: Option<toml::Table>,
}

/// The probe workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// The pg scope the probes join groups in.
    pub scope: String,
    /// Probes spawned on each node (and again on each restart).
    pub probes_per_node: u32,
    /// Group names.
    pub groups: Vec<String>,
    /// Groups each probe joins (round robin over `groups`).
    pub joins_per_probe: u32,
    /// Background broadcasts per second across the cluster during the chaos phase.
    pub broadcast_per_s: f64,
    /// Payload of each background broadcast, in bytes.
    pub payload_bytes: usize,
    /// Leave + re-join pairs per second during the chaos phase (pg churn).
    pub join_churn_per_s: f64,
    /// Broadcasts each node sends to each group in a fault-free verification round (before the
    /// first fault and after settling); 0 disables the rounds.
    pub verify_broadcasts: u32,
    /// Names per tier and their churn.
    pub names: NamesWorkload,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            scope: "chaos".to_string(),
            probes_per_node: 4,
            groups: vec!["g1".to_string(), "g2".to_string()],
            joins_per_probe: 1,
            broadcast_per_s: 2.0,
            payload_bytes: 64,
            join_churn_per_s: 0.5,
            verify_broadcasts: 5,
            names: NamesWorkload::default(),
        }
    }
}

/// Names registered through `POST /admin/probe/register`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamesWorkload {
    /// `local` tier names per node.
    pub local: u32,
    /// `eventual` tier names per node (each node registers its own, so the truth is known).
    pub eventual: u32,
    /// `consistent` tier names, cluster-wide (nodes compete for them: first committed wins).
    pub consistent: u32,
    /// Unregister/register operations per second across tiers during the chaos phase.
    pub churn_per_s: f64,
    /// `Strong` lookups of consistent names per second during the chaos phase.
    pub lookups_per_s: f64,
    /// Which node each `Strong` lookup is sent to.
    pub strong_on: StrongOn,
}

impl Default for NamesWorkload {
    fn default() -> Self {
        Self { local: 2, eventual: 2, consistent: 4, churn_per_s: 1.0, lookups_per_s: 2.0, strong_on: StrongOn::Leader }
    }
}

/// Where the workload sends its `Strong` lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrongOn {
    /// The raft leader the latest samples name (a random responsive node when none is known), so
    /// that a tier which serves `Strong` on the leader only answers most of them.
    #[default]
    Leader,
    /// A random responsive node: followers and learners must serve `Strong` too (a ReadIndex
    /// forwarded to the leader), or refuse it; the history must stay linearizable either way.
    Any,
}

/// Bounds every node must stay within for the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounds {
    /// Largest depth of any transport class queue to any peer, in frames (absent: the queue's
    /// own capacity is the bound).
    pub queue_depth: Option<u64>,
    /// Largest resident set size of any node, in MiB.
    pub rss_mb: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { queue_depth: None, rss_mb: 1024 }
    }
}

/// A node named in the schedule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum NodeRef {
    /// `node-K`, 1-based.
    Index(u16),
    /// The raft leader when the fault starts (`/admin/raft`); without raft, the lowest-named live node.
    Leader,
    /// A responsive node other than the one `leader` resolves to, picked when the fault starts with
    /// a random generator seeded from the run's seed. Nodes that no active fault names are
    /// preferred, and one fault never picks the same node twice.
    Follower,
    /// In a partition's `sets` only: every node that no other set names (dead ones included, so a
    /// node restarted during the partition lands on this side).
    Rest,
}

impl NodeRef {
    /// Whether the node is only known when the fault starts.
    pub fn is_selector(&self) -> bool {
        !matches!(self, Self::Index(_))
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{}", node_name(*i)),
            Self::Leader => f.write_str("leader"),
            Self::Follower => f.write_str("follower"),
            Self::Rest => f.write_str("rest"),
        }
    }
}

/// The name of the `index`-th node (1-based).
pub fn node_name(index: u16) -> String {
    format!("node-{index}")
}

/// One validated fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fault {
    /// Seconds after the chaos phase starts.
    pub at_s: f64,
    /// How long it lasts (network faults, pause, kill, flood); `None` = until a `heal`/`resume`/
    /// `restart` or, for a kill, for good.
    pub for_s: Option<f64>,
    /// What it does.
    pub action: FaultAction,
    /// Line of its `[[faults]]` entry in the file.
    pub line: usize,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum FaultAction {
    /// Drop everything between nodes of different sets (both directions); nodes in no set keep
    /// every link.
    Partition {
        /// Disjoint node sets.
        sets: Vec<Vec<NodeRef>>,
    },
    /// Drop everything between `node` and every other node.
    Isolate {
        /// The node.
        node: NodeRef,
    },
    /// Drop what `from` nodes send to `to` nodes; the reverse direction still works.
    Asymmetric {
        /// Senders whose packets are lost.
        from: Vec<NodeRef>,
        /// Receivers that do not hear them.
        to: Vec<NodeRef>,
    },
    /// Clear every network fault on every node.
    Heal,
    /// Drop each packet sent between the nodes with this probability.
    Drop {
        /// In `[0, 1]`.
        probability: f64,
        /// Nodes whose outgoing packets are affected (all when empty).
        nodes: Vec<NodeRef>,
    },
    /// Delay each packet by `delay_ms +/- jitter_ms` (uniform).
    Delay {
        /// Mean delay.
        delay_ms: u64,
        /// Half-width of the uniform spread; at most `delay_ms`.
        jitter_ms: u64,
        /// Nodes whose outgoing packets are affected (all when empty).
        nodes: Vec<NodeRef>,
    },
    /// `kill -9`; with `for_s`, restarted after it.
    Kill {
        /// The node.
        node: NodeRef,
    },
    /// Start a killed node again (a new incarnation, same data dir).
    Restart {
        /// The node.
        node: NodeRef,
    },
    /// `SIGSTOP`; with `for_s`, `SIGCONT` after it.
    Pause {
        /// The node.
        node: NodeRef,
    },
    /// `SIGCONT` a paused node.
    Resume {
        /// The node.
        node: NodeRef,
    },
    /// Broadcast as fast as `rate_per_s` from `nodes` to `group` for `for_s`.
    Flood {
        /// Senders (all when empty).
        nodes: Vec<NodeRef>,
        /// Target group (default: the workload's first group).
        group: String,
        /// Broadcasts per second per sender.
        rate_per_s: f64,
        /// Payload bytes per broadcast.
        payload_bytes: usize,
    },
}

impl FaultAction {
    /// The `action` keyword.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Partition { .. } => "partition",
            Self::Isolate { .. } => "isolate",
            Self::Asymmetric { .. } => "asymmetric",
            Self::Heal => "heal",
            Self::Drop { .. } => "drop",
            Self::Delay { .. } => "delay",
            Self::Kill { .. } => "kill",
            Self::Restart { .. } => "restart",
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
            Self::Flood { .. } => "flood",
        }
    }

    /// Whether this fault changes the network (cleared by `heal`).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Self::Partition { .. }
                | Self::Isolate { .. }
                | Self::Asymmetric { .. }
                | Self::Drop { .. }
                | Self::Delay { .. }
        )
    }

    /// A one-line description for the report.
    pub fn describe(&self) -> String {
        let list = |v: &[NodeRef]| {
            if v.is_empty() { "all".to_string() } else { v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",") }
        };
        match self {
            Self::Partition { sets } => {
                format!("partition {}", sets.iter().map(|s| format!("[{}]", list(s))).collect::<Vec<_>>().join(" | "))
            }
            Self::Isolate { node } => format!("isolate {node}"),
            Self::Asymmetric { from, to } => format!("asymmetric {} -/-> {}", list(from), list(to)),
            Self::Heal => "heal".to_string(),
            Self::Drop { probability, nodes } => format!("drop {:.0}% from {}", probability * 100.0, list(nodes)),
            Self::Delay { delay_ms, jitter_ms, nodes } => {
                format!("delay {delay_ms}+/-{jitter_ms} ms from {}", list(nodes))
            }
            Self::Kill { node } => format!("kill -9 {node}"),
            Self::Restart { node } => format!("restart {node}"),
            Self::Pause { node } => format!("SIGSTOP {node}"),
            Self::Resume { node } => format!("SIGCONT {node}"),
            Self::Flood { nodes, group, rate_per_s, payload_bytes } => {
                format!("flood {group} {rate_per_s}/s x {payload_bytes} B from {}", list(nodes))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    nodes: u16,
    duration_s: f64,
    settle_s: f64,
    #[serde(default = "default_stable_samples")]
    stable_samples: u32,
    #[serde(default = "default_sample_period_ms")]
    sample_period_ms: u64,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    node: NodeSettings,
    #[serde(default)]
    workload: Workload,
    #[serde(default)]
    bounds: Bounds,
    #[serde(default)]
    faults: Vec<Spanned<FaultFile>>,
}

fn default_stable_samples() -> u32 {
    3
}

fn default_sample_period_ms() -> u64 {
    1000
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ActionKeyword {
    Partition,
    Isolate,
    Asymmetric,
    Heal,
    Drop,
    Delay,
    Kill,
    Restart,
    Pause,
    Resume,
    Flood,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    at_s: f64,
    action: ActionKeyword,
    for_s: Option<f64>,
    node: Option<String>,
    nodes: Option<Vec<String>>,
    sets: Option<Vec<Vec<String>>>,
    from: Option<Vec<String>>,
    to: Option<Vec<String>>,
    probability: Option<f64>,
    delay_ms: Option<u64>,
    jitter_ms: Option<u64>,
    group: Option<String>,
    rate_per_s: Option<f64>,
    payload_bytes: Option<usize>,
}

/// Read and validate a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ScenarioError::Read { path: shown.clone(), source })?;
    let mut text = String::new();
    file.take(MAX_SCENARIO_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| ScenarioError::Read { path: shown.clone(), source })?;
    if text.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge { path: shown });
    }
    parse(&text)
}

/// Parse and validate scenario text.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        message: e.message().to_string(),
    })?;
    Validator { text }.validate(file)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Validator<'a> {
    text: &'a str,
}

impl Validator<'_> {
    /// The line of `key = ...` inside `[table]` (top level when `table` is empty); 0 when absent.
    fn key_line(&self, table: &str, key: &str) -> usize {
        let mut current = String::new();
        for (i, raw) in self.text.lines().enumerate() {
            let line = raw.trim();
            if let Some(header) = line.strip_prefix('[') {
                current = header.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
                continue;
            }
            let Some((k, _)) = line.split_once('=') else { continue };
            if current == table && k.trim() == key {
                return i + 1;
            }
        }
        0
    }

    fn invalid(&self, table: &str, key: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid { line: self.key_line(table, key), message: message.into() }
    }

    fn validate(&self, f: ScenarioFile) -> Result<Scenario, ScenarioError> {
        if f.name.trim().is_empty() {
            return Err(self.invalid("", "name", "`name` must not be empty"));
        }
        if f.nodes == 0 || f.nodes > MAX_NODES {
            return Err(self.invalid("", "nodes", format!("`nodes` must be in 1..={MAX_NODES}, got {}", f.nodes)));
        }
        if !(f.duration_s > 0.0 && f.duration_s <= MAX_DURATION_S) {
            return Err(self.invalid("", "duration_s", format!("`duration_s` must be in (0, {MAX_DURATION_S}]")));
        }
        if !(f.settle_s > 0.0 && f.settle_s <= MAX_SETTLE_S) {
            return Err(self.invalid("", "settle_s", format!("`settle_s` must be in (0, {MAX_SETTLE_S}]")));
        }
        if !(MIN_SAMPLE_PERIOD_MS..=MAX_SAMPLE_PERIOD_MS).contains(&f.sample_period_ms) {
            return Err(self.invalid(
                "",
                "sample_period_ms",
                format!("`sample_period_ms` must be in {MIN_SAMPLE_PERIOD_MS}..={MAX_SAMPLE_PERIOD_MS}"),
            ));
        }
        if f.stable_samples == 0 || f.stable_samples > 100 {
            return Err(self.invalid("", "stable_samples", "`stable_samples` must be in 1..=100"));
        }
        self.validate_workload(&f.workload)?;
        if f.bounds.rss_mb == 0 {
            return Err(self.invalid("bounds", "rss_mb", "`rss_mb` must be at least 1"));
        }
        if f.bounds.queue_depth == Some(0) {
            return Err(self.invalid("bounds", "queue_depth", "`queue_depth` must be at least 1"));
        }
        if let Some(filter) = &f.node.log_filter
            && filter.trim().is_empty()
        {
            return Err(self.invalid("node", "log_filter", "`log_filter` must not be empty"));
        }
        if f.faults.len() > MAX_FAULTS {
            return Err(self.invalid("", "faults", format!("at most {MAX_FAULTS} faults")));
        }
        let mut faults = Vec::with_capacity(f.faults.len());
        for spanned in f.faults {
            let line = line_of(self.text, spanned.span().start);
            faults.push(fault(spanned.into_inner(), line, f.nodes, f.duration_s, &f.workload)?);
        }
        faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        check_schedule(&faults, f.nodes, f.duration_s)?;
        Ok(Scenario {
            name: f.name,
            description: f.description,
            nodes: f.nodes,
            duration_s: f.duration_s,
            settle_s: f.settle_s,
            stable_samples: f.stable_samples,
            sample_period_ms: f.sample_period_ms,
            seed: f.seed,
            node: f.node,
            workload: f.workload,
            bounds: f.bounds,
            faults,
        })
    }

    fn validate_workload(&self, w: &Workload) -> Result<(), ScenarioError> {
        let bad = |key: &str, msg: String| Err(self.invalid("workload", key, msg));
        if w.scope.is_empty() || w.scope.len() > 64 {
            return bad("scope", "`scope` must be 1..=64 bytes".into());
        }
        if w.probes_per_node > MAX_PROBES_PER_NODE {
            return bad("probes_per_node", format!("`probes_per_node` must be at most {MAX_PROBES_PER_NODE}"));
        }
        if w.groups.len() > MAX_GROUPS {
            return bad("groups", format!("at most {MAX_GROUPS} groups"));
        }
        let mut seen = BTreeSet::new();
        for g in &w.groups {
            if g.is_empty() || g.len() > 128 || g.contains('/') {
                return bad("groups", format!("group `{g}`: 1..=128 bytes, no `/`"));
            }
            if !seen.insert(g) {
                return bad("groups", format!("group `{g}` listed twice"));
            }
        }
        if w.joins_per_probe as usize > w.groups.len() {
            return bad("joins_per_probe", format!("`joins_per_probe` must be at most the {} groups", w.groups.len()));
        }
        for (key, rate) in [("broadcast_per_s", w.broadcast_per_s), ("join_churn_per_s", w.join_churn_per_s)] {
            if !(0.0..=MAX_RATE_PER_S).contains(&rate) {
                return bad(key, format!("`{key}` must be in 0..={MAX_RATE_PER_S}"));
            }
        }
        if w.payload_bytes > MAX_PAYLOAD_BYTES {
            return bad("payload_bytes", format!("`payload_bytes` must be at most {MAX_PAYLOAD_BYTES}"));
        }
        if w.verify_broadcasts > 10_000 {
            return bad("verify_broadcasts", "`verify_broadcasts` must be at most 10000".into());
        }
        let n = &w.names;
        for (key, count) in [("local", n.local), ("eventual", n.eventual), ("consistent", n.consistent)] {
            if count > MAX_NAMES_PER_TIER {
                return Err(self.invalid(
                    "workload.names",
                    key,
                    format!("`{key}` must be at most {MAX_NAMES_PER_TIER}"),
                ));
            }
        }
        for (key, rate) in [("churn_per_s", n.churn_per_s), ("lookups_per_s", n.lookups_per_s)] {
            if !(0.0..=MAX_RATE_PER_S).contains(&rate) {
                return Err(self.invalid("workload.names", key, format!("`{key}` must be in 0..={MAX_RATE_PER_S}")));
            }
        }
        Ok(())
    }
}

fn fault(f: FaultFile, line: usize, nodes: u16, duration_s: f64, workload: &Workload) -> Result<Fault, ScenarioError> {
    let err = |message: String| ScenarioError::Invalid { line, message };
    let keyword = match f.action {
        ActionKeyword::Partition => "partition",
        ActionKeyword::Isolate => "isolate",
        ActionKeyword::Asymmetric => "asymmetric",
        ActionKeyword::Heal => "heal",
        ActionKeyword::Drop => "drop",
        ActionKeyword::Delay => "delay",
        ActionKeyword::Kill => "kill",
        ActionKeyword::Restart => "restart",
        ActionKeyword::Pause => "pause",
        ActionKeyword::Resume => "resume",
        ActionKeyword::Flood => "flood",
    };
    if !(f.at_s >= 0.0 && f.at_s < duration_s) {
        return Err(err(format!("`at_s` must be in [0, duration_s = {duration_s}), got {}", f.at_s)));
    }
    if let Some(d) = f.for_s {
        // Written so NaN is refused too.
        if d.is_nan() || d <= 0.0 {
            return Err(err(format!("`for_s` must be positive, got {d}")));
        }
        if f.at_s + d > duration_s {
            return Err(err(format!("{keyword} at {} for {d} s ends after duration_s = {duration_s}", f.at_s)));
        }
    }
    // `selectors_ok`: `leader` and `follower` may be used; `rest` only ever in a partition's sets.
    let node_ref = |s: &str, selectors_ok: bool, rest_ok: bool| -> Result<NodeRef, ScenarioError> {
        let selector = match s {
            "leader" => Some((NodeRef::Leader, selectors_ok)),
            "follower" => Some((NodeRef::Follower, selectors_ok)),
            "rest" => Some((NodeRef::Rest, rest_ok)),
            _ => None,
        };
        if let Some((r, allowed)) = selector {
            return if allowed { Ok(r) } else { Err(err(format!("`{s}` is not allowed in {keyword}"))) };
        }
        match s.strip_prefix("node-").and_then(|i| i.parse::<u16>().ok()) {
            Some(i) if (1..=nodes).contains(&i) => Ok(NodeRef::Index(i)),
            _ => Err(err(format!("unknown node `{s}` (nodes are node-1..node-{nodes}, `leader` or `follower`)"))),
        }
    };
    let list = |v: &Option<Vec<String>>,
                key: &str,
                required: bool,
                selectors_ok: bool|
     -> Result<Vec<NodeRef>, ScenarioError> {
        let Some(v) = v else {
            return if required { Err(err(format!("{keyword} needs `{key}`"))) } else { Ok(Vec::new()) };
        };
        let refs = v.iter().map(|s| node_ref(s, selectors_ok, selectors_ok)).collect::<Result<Vec<_>, _>>()?;
        // `follower` may repeat: each one picks another node.
        let named: Vec<_> = refs.iter().filter(|r| **r != NodeRef::Follower).collect();
        let distinct: BTreeSet<_> = named.iter().collect();
        if distinct.len() != named.len() {
            return Err(err(format!("`{key}` names a node twice")));
        }
        if required && refs.is_empty() {
            return Err(err(format!("`{key}` must not be empty")));
        }
        Ok(refs)
    };
    let single = |selectors_ok: bool| -> Result<NodeRef, ScenarioError> {
        let Some(n) = &f.node else { return Err(err(format!("{keyword} needs `node`"))) };
        node_ref(n, selectors_ok, false)
    };
    // Keys an action does not use are refused, so a typo'd schedule is not silently different.
    let used: &[&str] = match f.action {
        ActionKeyword::Partition => &["sets"],
        ActionKeyword::Isolate | ActionKeyword::Kill | ActionKeyword::Pause => &["node"],
        ActionKeyword::Restart | ActionKeyword::Resume => &["node"],
        ActionKeyword::Asymmetric => &["from", "to"],
        ActionKeyword::Heal => &[],
        ActionKeyword::Drop => &["probability", "nodes"],
        ActionKeyword::Delay => &["delay_ms", "jitter_ms", "nodes"],
        ActionKeyword::Flood => &["nodes", "group", "rate_per_s", "payload_bytes"],
    };
    let present: [(&str, bool); 11] = [
        ("node", f.node.is_some()),
        ("nodes", f.nodes.is_some()),
        ("sets", f.sets.is_some()),
        ("from", f.from.is_some()),
        ("to", f.to.is_some()),
        ("probability", f.probability.is_some()),
        ("delay_ms", f.delay_ms.is_some()),
        ("jitter_ms", f.jitter_ms.is_some()),
        ("group", f.group.is_some()),
        ("rate_per_s", f.rate_per_s.is_some()),
        ("payload_bytes", f.payload_bytes.is_some()),
    ];
    if let Some((key, _)) = present.iter().find(|(k, p)| *p && !used.contains(k)) {
        return Err(err(format!("`{key}` does not apply to {keyword}")));
    }
    let no_duration = matches!(f.action, ActionKeyword::Heal | ActionKeyword::Restart | ActionKeyword::Resume);
    if no_duration && f.for_s.is_some() {
        return Err(err(format!("`for_s` does not apply to {keyword}")));
    }
    let action = match f.action {
        ActionKeyword::Partition => {
            let Some(raw) = &f.sets else { return Err(err("partition needs `sets`".into())) };
            if raw.len() < 2 {
                return Err(err("partition needs at least two `sets`".into()));
            }
            let mut sets = Vec::new();
            let mut seen = BTreeSet::new();
            for set in raw {
                let refs = list(&Some(set.clone()), "sets", true, true)?;
                for r in refs.iter().filter(|r| **r != NodeRef::Follower) {
                    if !seen.insert(r.clone()) {
                        return Err(err(format!("partition sets overlap on {r}")));
                    }
                }
                if refs.contains(&NodeRef::Rest) && refs.len() > 1 {
                    return Err(err("`rest` must be alone in its set".into()));
                }
                sets.push(refs);
            }
            let all: Vec<&NodeRef> = sets.iter().flatten().collect();
            if all.iter().any(|r| r.is_selector()) && all.iter().any(|r| !r.is_selector()) {
                return Err(err(
                    "a partition with `leader`, `follower` or `rest` cannot also name nodes: a selector may pick the same node"
                        .into(),
                ));
            }
            let picked = all.iter().filter(|r| matches!(r, NodeRef::Leader | NodeRef::Follower)).count();
            if picked > usize::from(nodes) {
                return Err(err(format!("the sets pick {picked} nodes, but the run has {nodes}")));
            }
            FaultAction::Partition { sets }
        }
        ActionKeyword::Isolate => FaultAction::Isolate { node: single(true)? },
        ActionKeyword::Asymmetric => {
            let from = list(&f.from, "from", true, false)?;
            let to = list(&f.to, "to", true, false)?;
            if let Some(n) = from.iter().find(|n| to.contains(n)) {
                return Err(err(format!("{n} is in both `from` and `to`")));
            }
            FaultAction::Asymmetric { from, to }
        }
        ActionKeyword::Heal => FaultAction::Heal,
        ActionKeyword::Drop => {
            let Some(p) = f.probability else { return Err(err("drop needs `probability`".into())) };
            if !(0.0..=1.0).contains(&p) {
                return Err(err(format!("`probability` must be in [0, 1], got {p}")));
            }
            FaultAction::Drop { probability: p, nodes: list(&f.nodes, "nodes", false, false)? }
        }
        ActionKeyword::Delay => {
            let Some(delay_ms) = f.delay_ms else { return Err(err("delay needs `delay_ms`".into())) };
            let jitter_ms = f.jitter_ms.unwrap_or(0);
            if delay_ms > MAX_DELAY_MS {
                return Err(err(format!("`delay_ms` must be at most {MAX_DELAY_MS}")));
            }
            if jitter_ms > delay_ms {
                return Err(err(format!("`jitter_ms` ({jitter_ms}) must be at most `delay_ms` ({delay_ms})")));
            }
            FaultAction::Delay { delay_ms, jitter_ms, nodes: list(&f.nodes, "nodes", false, false)? }
        }
        ActionKeyword::Kill => FaultAction::Kill { node: single(true)? },
        ActionKeyword::Restart => FaultAction::Restart { node: single(false)? },
        ActionKeyword::Pause => FaultAction::Pause { node: single(true)? },
        ActionKeyword::Resume => FaultAction::Resume { node: single(false)? },
        ActionKeyword::Flood => {
            let Some(rate) = f.rate_per_s else { return Err(err("flood needs `rate_per_s`".into())) };
            if !(rate > 0.0 && rate <= MAX_RATE_PER_S) {
                return Err(err(format!("`rate_per_s` must be in (0, {MAX_RATE_PER_S}]")));
            }
            let payload_bytes = f.payload_bytes.unwrap_or(1024);
            if payload_bytes > MAX_PAYLOAD_BYTES {
                return Err(err(format!("`payload_bytes` must be at most {MAX_PAYLOAD_BYTES}")));
            }
            if f.for_s.is_none() {
                return Err(err("flood needs `for_s`".into()));
            }
            let group = match &f.group {
                Some(g) => g.clone(),
                None => match workload.groups.first() {
                    Some(g) => g.clone(),
                    None => return Err(err("flood needs `group` (the workload has no groups)".into())),
                },
            };
            if !workload.groups.contains(&group) {
                return Err(err(format!("flood group `{group}` is not one of the workload's groups")));
            }
            FaultAction::Flood { nodes: list(&f.nodes, "nodes", false, false)?, group, rate_per_s: rate, payload_bytes }
        }
    };
    if action.is_network() && matches!(action, FaultAction::Drop { probability, .. } if probability == 0.0) {
        return Err(err("a drop with probability 0 does nothing".into()));
    }
    Ok(Fault { at_s: f.at_s, for_s: f.for_s, action, line })
}

/// Replay the schedule's process and network state in time order and refuse impossible steps.
fn check_schedule(faults: &[Fault], nodes: u16, duration_s: f64) -> Result<(), ScenarioError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Life {
        Running,
        Paused,
        Dead,
    }
    // Events: (time, order, fault index, is the implicit end of a `for_s`).
    let mut events: Vec<(f64, usize, bool)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        events.push((f.at_s, i, false));
        if let Some(d) = f.for_s {
            events.push((f.at_s + d, i, true));
        }
    }
    // Ends before starts at the same instant, so `for_s` windows may be back to back.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.2.cmp(&a.2)).then(a.1.cmp(&b.1)));
    let mut life = vec![Life::Running; usize::from(nodes) + 1];
    let mut open_network: Vec<usize> = Vec::new();
    // `leader` and `follower` are only known at run time: such faults are checked for shape (the
    // runner picks among the running nodes), and a schedule that kills or pauses a selector may not
    // also name nodes in process faults that could be the same node.
    let uses_selector_process_fault = faults.iter().any(|f| match &f.action {
        FaultAction::Kill { node } | FaultAction::Pause { node } => node.is_selector(),
        _ => false,
    });
    for (_, i, is_end) in events {
        let f = &faults[i];
        let err = |message: String| ScenarioError::Invalid { line: f.line, message };
        let index = |n: &NodeRef| match n {
            NodeRef::Index(i) => Some(usize::from(*i)),
            _ => None,
        };
        match (&f.action, is_end) {
            (a, false) if a.is_network() => open_network.push(i),
            (a, true) if a.is_network() => open_network.retain(|&j| j != i),
            (FaultAction::Heal, _) => open_network.clear(),
            (FaultAction::Kill { node } | FaultAction::Pause { node } | FaultAction::Restart { node }, _)
            | (FaultAction::Resume { node }, _)
                if uses_selector_process_fault && !node.is_selector() =>
            {
                return Err(err(format!(
                    "{} names {node} while another fault kills or pauses `leader` or `follower`, which may be the same node",
                    f.action.keyword()
                )));
            }
            (FaultAction::Kill { node }, end) => {
                let Some(n) = index(node) else { continue };
                if end {
                    life[n] = Life::Running;
                } else if life[n] != Life::Running {
                    return Err(err(format!("kill of {node}, which is not running then")));
                } else {
                    life[n] = Life::Dead;
                }
            }
            (FaultAction::Restart { node }, _) => {
                let Some(n) = index(node) else { continue };
                if life[n] != Life::Dead {
                    return Err(err(format!("restart of {node}, which is not dead then")));
                }
                life[n] = Life::Running;
            }
            (FaultAction::Pause { node }, end) => {
                let Some(n) = index(node) else { continue };
                if end {
                    life[n] = Life::Running;
                } else if life[n] != Life::Running {
                    return Err(err(format!("pause of {node}, which is not running then")));
                } else {
                    life[n] = Life::Paused;
                }
            }
            (FaultAction::Resume { node }, _) => {
                let Some(n) = index(node) else { continue };
                if life[n] != Life::Paused {
                    return Err(err(format!("resume of {node}, which is not paused then")));
                }
                life[n] = Life::Running;
            }
            _ => {}
        }
    }
    if let Some(&i) = open_network.first() {
        let f = &faults[i];
        return Err(ScenarioError::Invalid {
            line: f.line,
            message: format!(
                "{} is still active at duration_s = {duration_s}: give it `for_s` or add a `heal` before the end",
                f.action.keyword()
            ),
        });
    }
    for (i, f) in faults.iter().enumerate() {
        if let FaultAction::Pause { node } = &f.action
            && node.is_selector()
            && f.for_s.is_none()
        {
            return Err(ScenarioError::Invalid {
                line: faults[i].line,
                message: format!("pause of `{node}` needs `for_s`"),
            });
        }
    }
    if let Some(n) = (1..=usize::from(nodes)).find(|&n| life[n] == Life::Paused) {
        let line = faults
            .iter()
            .rev()
            .find(|f| matches!(&f.action, FaultAction::Pause { node: NodeRef::Index(i) } if usize::from(*i) == n))
            .map(|f| f.line)
            .unwrap_or(0);
        return Err(ScenarioError::Invalid {
            line,
            message: format!(
                "{} is still paused at duration_s = {duration_s}: add `for_s` or a `resume`",
                node_name(n as u16)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"t\"\nnodes = 3\nduration_s = 20\nsettle_s = 10\n";

    fn with(extra: &str) -> Result<Scenario, ScenarioError> {
        parse(&format!("{BASE}{extra}"))
    }

    fn err_line(r: Result<Scenario, ScenarioError>) -> (usize, String) {
        match r {
            Err(e) => (e.line().unwrap_or(0), e.to_string()),
            Ok(s) => panic!("expected an error, got {s:?}"),
        }
    }

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = with("").unwrap();
        assert_eq!(s.nodes, 3);
        assert_eq!(s.sample_period_ms, 1000);
        assert_eq!(s.workload.groups, vec!["g1", "g2"]);
        assert!(s.faults.is_empty());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let (line, msg) = err_line(with("bogus = 1\n"));
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn unknown_fault_key_names_its_line() {
        let (line, msg) = err_line(with("[[faults]]\nat_s = 1\naction = \"heal\"\nnode_name = \"x\"\n"));
        assert_eq!(line, 8, "{msg}");
        assert!(msg.contains("node_name"), "{msg}");
    }

    #[test]
    fn bad_node_count_names_the_nodes_line() {
        let (line, msg) = err_line(parse("name = \"t\"\nnodes = 99\nduration_s = 20\nsettle_s = 10\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("nodes"), "{msg}");
    }

    #[test]
    fn unknown_node_in_fault_names_the_fault_line() {
        let (line, msg) = err_line(with("\n[[faults]]\nat_s = 1\naction = \"kill\"\nnode = \"node-7\"\n"));
        assert_eq!(line, 6, "{msg}");
        assert!(msg.contains("node-7"), "{msg}");
    }

    #[test]
    fn unhealed_partition_is_refused() {
        let (line, msg) = err_line(with(
            "[[faults]]\nat_s = 1\naction = \"partition\"\nsets = [[\"node-1\"], [\"node-2\", \"node-3\"]]\n",
        ));
        assert_eq!(line, 5);
        assert!(msg.contains("still active"), "{msg}");
    }

    #[test]
    fn partition_healed_by_heal_or_for_s_is_accepted() {
        let s = with(
            "[[faults]]\nat_s = 1\naction = \"partition\"\nsets = [[\"node-1\"], [\"node-2\", \"node-3\"]]\n\
             [[faults]]\nat_s = 5\naction = \"heal\"\n\
             [[faults]]\nat_s = 6\nfor_s = 3\naction = \"isolate\"\nnode = \"leader\"\n",
        )
        .unwrap();
        assert_eq!(s.faults.len(), 3);
        assert_eq!(s.faults[2].action, FaultAction::Isolate { node: NodeRef::Leader });
    }

    #[test]
    fn overlapping_partition_sets_are_refused() {
        let (_, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"partition\"\nsets = [[\"node-1\"], [\"node-1\", \"node-3\"]]\n",
        ));
        assert!(msg.contains("overlap"), "{msg}");
    }

    #[test]
    fn killing_a_dead_node_is_refused() {
        let (line, msg) = err_line(with(
            "[[faults]]\nat_s = 1\naction = \"kill\"\nnode = \"node-2\"\n\
             [[faults]]\nat_s = 3\naction = \"kill\"\nnode = \"node-2\"\n",
        ));
        assert_eq!(line, 9);
        assert!(msg.contains("not running"), "{msg}");
    }

    #[test]
    fn restart_of_a_running_node_is_refused_but_after_a_kill_is_fine() {
        let (_, msg) = err_line(with("[[faults]]\nat_s = 1\naction = \"restart\"\nnode = \"node-2\"\n"));
        assert!(msg.contains("not dead"), "{msg}");
        with(
            "[[faults]]\nat_s = 1\naction = \"kill\"\nnode = \"node-2\"\n\
             [[faults]]\nat_s = 3\naction = \"restart\"\nnode = \"node-2\"\n",
        )
        .unwrap();
    }

    #[test]
    fn pause_without_resume_is_refused() {
        let (line, msg) = err_line(with("[[faults]]\nat_s = 1\naction = \"pause\"\nnode = \"node-2\"\n"));
        assert_eq!(line, 5);
        assert!(msg.contains("still paused"), "{msg}");
    }

    #[test]
    fn keys_that_do_not_apply_are_refused() {
        let (_, msg) = err_line(with("[[faults]]\nat_s = 1\naction = \"heal\"\nnode = \"node-2\"\n"));
        assert!(msg.contains("does not apply"), "{msg}");
    }

    #[test]
    fn jitter_larger_than_delay_is_refused() {
        let (_, msg) =
            err_line(with("[[faults]]\nat_s = 1\nfor_s = 2\naction = \"delay\"\ndelay_ms = 100\njitter_ms = 200\n"));
        assert!(msg.contains("jitter_ms"), "{msg}");
    }

    #[test]
    fn fault_after_duration_is_refused() {
        let (_, msg) = err_line(with("[[faults]]\nat_s = 25\naction = \"heal\"\n"));
        assert!(msg.contains("at_s"), "{msg}");
        let (_, msg) = err_line(with("[[faults]]\nat_s = 15\nfor_s = 10\naction = \"pause\"\nnode = \"node-1\"\n"));
        assert!(msg.contains("ends after"), "{msg}");
    }

    #[test]
    fn workload_errors_name_the_key_line() {
        let (line, msg) = err_line(with("[workload]\ngroups = [\"a\"]\njoins_per_probe = 3\n"));
        assert_eq!(line, 7, "{msg}");
        let (line, msg) = err_line(with("[workload.names]\nconsistent = 5000\n"));
        assert_eq!(line, 6, "{msg}");
    }

    #[test]
    fn leader_and_named_process_faults_cannot_be_mixed() {
        let (_, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"pause\"\nnode = \"leader\"\n\
             [[faults]]\nat_s = 5\nfor_s = 2\naction = \"kill\"\nnode = \"node-1\"\n",
        ));
        assert!(msg.contains("same node"), "{msg}");
    }

    #[test]
    fn flood_group_must_be_a_workload_group() {
        let (_, msg) =
            err_line(with("[[faults]]\nat_s = 1\nfor_s = 2\naction = \"flood\"\nrate_per_s = 10\ngroup = \"zz\"\n"));
        assert!(msg.contains("zz"), "{msg}");
    }

    #[test]
    fn follower_and_leader_selectors_compose_in_one_schedule() {
        let s = with(
            "[[faults]]\nat_s = 1\nfor_s = 6\naction = \"isolate\"\nnode = \"follower\"\n\
             [[faults]]\nat_s = 2\nfor_s = 3\naction = \"partition\"\nsets = [[\"leader\", \"follower\"], [\"rest\"]]\n\
             [[faults]]\nat_s = 8\nfor_s = 3\naction = \"kill\"\nnode = \"leader\"\n\
             [[faults]]\nat_s = 9\nfor_s = 3\naction = \"kill\"\nnode = \"follower\"\n\
             [[faults]]\nat_s = 13\nfor_s = 2\naction = \"pause\"\nnode = \"follower\"\n",
        )
        .unwrap();
        assert_eq!(s.faults[0].action, FaultAction::Isolate { node: NodeRef::Follower });
        assert_eq!(
            s.faults[1].action,
            FaultAction::Partition { sets: vec![vec![NodeRef::Leader, NodeRef::Follower], vec![NodeRef::Rest]] }
        );
        assert_eq!(s.faults[3].action, FaultAction::Kill { node: NodeRef::Follower });
    }

    #[test]
    fn follower_may_repeat_in_a_partition_but_leader_may_not() {
        with("[[faults]]\nat_s = 1\nfor_s = 2\naction = \"partition\"\nsets = [[\"follower\"], [\"follower\"]]\n")
            .unwrap();
        let (_, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"partition\"\nsets = [[\"leader\"], [\"leader\", \"follower\"]]\n",
        ));
        assert!(msg.contains("overlap on leader"), "{msg}");
        // Three nodes cannot hold a leader and three followers.
        let (_, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"partition\"\nsets = [[\"leader\", \"follower\"], [\"follower\", \"follower\"]]\n",
        ));
        assert!(msg.contains("pick 4 nodes"), "{msg}");
    }

    #[test]
    fn a_partition_with_selectors_names_no_node() {
        let (line, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"partition\"\nsets = [[\"leader\"], [\"node-2\"]]\n",
        ));
        assert_eq!(line, 5);
        assert!(msg.contains("same node"), "{msg}");
    }

    #[test]
    fn rest_is_alone_in_a_partition_set_and_nowhere_else() {
        let (_, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"partition\"\nsets = [[\"leader\"], [\"rest\", \"follower\"]]\n",
        ));
        assert!(msg.contains("alone"), "{msg}");
        let (_, msg) = err_line(with("[[faults]]\nat_s = 1\nfor_s = 2\naction = \"isolate\"\nnode = \"rest\"\n"));
        assert!(msg.contains("`rest` is not allowed in isolate"), "{msg}");
    }

    #[test]
    fn selectors_cannot_be_restarted_resumed_or_paused_for_good() {
        let (_, msg) = err_line(with("[[faults]]\nat_s = 1\naction = \"restart\"\nnode = \"follower\"\n"));
        assert!(msg.contains("`follower` is not allowed in restart"), "{msg}");
        let (_, msg) = err_line(with("[[faults]]\nat_s = 1\naction = \"pause\"\nnode = \"follower\"\n"));
        assert!(msg.contains("pause of `follower` needs `for_s`"), "{msg}");
    }

    #[test]
    fn a_killed_follower_and_a_named_kill_cannot_be_mixed() {
        let (_, msg) = err_line(with(
            "[[faults]]\nat_s = 1\nfor_s = 2\naction = \"kill\"\nnode = \"follower\"\n\
             [[faults]]\nat_s = 5\nfor_s = 2\naction = \"kill\"\nnode = \"node-1\"\n",
        ));
        assert!(msg.contains("same node"), "{msg}");
    }

    #[test]
    fn strong_lookups_go_to_the_leader_unless_any_node_is_asked_for() {
        assert_eq!(with("").unwrap().workload.names.strong_on, StrongOn::Leader);
        let s = with("[workload.names]\nstrong_on = \"any\"\n").unwrap();
        assert_eq!(s.workload.names.strong_on, StrongOn::Any);
        let (line, _) = err_line(with("[workload.names]\nstrong_on = \"followers\"\n"));
        assert_eq!(line, 6);
    }
}

#[cfg(test)]
mod shipped {
    #[test]
    fn every_shipped_scenario_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = super::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(Some(s.name.as_str()), path.file_stem().and_then(|s| s.to_str()), "name = file name");
                names.push(s.name);
            }
        }
        names.sort();
        for expected in [
            "asymmetric-partition",
            "broadcast-flood",
            "ci-smoke",
            "composed-faults",
            "flapping-partition",
            "isolate-leader",
            "kill-restart",
            "lossy-network",
            "partition-halves",
            "pause-resume",
            "slow-network",
        ] {
            assert!(names.iter().any(|n| n == expected), "missing {expected}: {names:?}");
        }
    }
}
