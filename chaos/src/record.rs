//! What a chaos run recorded: samples of every node's state, the operations the runner issued with
//! their results and times, node lives, fault windows, the connectivity after each step of the
//! schedule, broadcast verification rounds and the ground truth at the end of the workload.
//!
//! Role: the one input of the invariant checkers and the report. A [`Recording`] is plain data
//! (serde, written as `recording.json` next to the report), so every checker is a pure function of
//! it and can be re-run or tested on hand-made recordings.
//!
//! Conventions: every time is in seconds since the run started (`t_s`); a sample belongs to the
//! sampling tick `tick` (tick `k` is taken at `k * sample_period`), so samples of different nodes
//! at one tick can be compared; an `Option` field is `None` when that endpoint did not answer
//! (node unreachable, timeout) and a [`TierSample::Absent`] when the node has no such endpoint (404).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One member row of `GET /admin/cluster/members`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberRow {
    /// Node name.
    pub node: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
}

/// One name row of `GET /admin/registry/{tier}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NameRow {
    /// The name.
    pub name: String,
    /// Its owner pid.
    pub pid: String,
    /// Consistent tier only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<u64>,
}

/// A registry tier's answer in one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "names", rename_all = "snake_case")]
pub enum TierSample {
    /// The endpoint answered 404: the node has no such tier.
    Absent,
    /// Not sampled or no answer.
    #[default]
    Unknown,
    /// The rows.
    Names(Vec<NameRow>),
}

/// `GET /admin/raft`, the fields the checkers and plots use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RaftSample {
    /// `leader`, `follower`, `candidate`, `learner`, ...
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader's node name, if known.
    pub leader: Option<String>,
    /// Commit index.
    pub commit_index: u64,
    /// The voters this node knows of (node names; a raft id when its address is unknown).
    #[serde(default)]
    pub voters: Vec<String>,
}

/// Transport queues summed up for one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportSample {
    /// Per `peer/class`: `(depth, capacity)`.
    pub queues: BTreeMap<String, (u64, u64)>,
    /// Frames dropped or refused, all peers and classes (cumulative since the node started).
    pub dropped_total: u64,
}

impl TransportSample {
    /// The deepest queue.
    pub fn max_depth(&self) -> u64 {
        self.queues.values().map(|(d, _)| *d).max().unwrap_or(0)
    }
}

/// One node's state at one tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Sampling tick.
    pub tick: u64,
    /// When the sample was started.
    pub t_s: f64,
    /// The node slot sampled.
    pub node: String,
    /// The incarnation that answered `/admin/node` (`None`: no answer).
    pub incarnation: Option<u64>,
    /// Why the node did not answer, if it did not.
    pub error: Option<String>,
    /// Its membership view.
    pub members: Option<Vec<MemberRow>>,
    /// Its view of each workload group: member pids (a pid repeated per join).
    pub groups: Option<BTreeMap<String, Vec<String>>>,
    /// `local` tier names.
    pub local: TierSample,
    /// `eventual` tier names.
    pub eventual: TierSample,
    /// `consistent` tier names.
    pub consistent: TierSample,
    /// Raft status, when the node has raft.
    pub raft: Option<RaftSample>,
    /// `GET /admin/planes` as returned, when present.
    pub planes: Option<serde_json::Value>,
    /// Transport queues.
    pub transport: Option<TransportSample>,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: Option<u64>,
    /// `cohort_gossip_dropped_total` summed over labels.
    pub gossip_dropped: Option<u64>,
    /// Payloads this node's probes received since it started.
    pub probe_received: Option<u64>,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpResult {
    /// 2xx, with the body.
    Ok {
        /// The JSON body.
        body: serde_json::Value,
    },
    /// A 4xx/5xx with the SPEC reason: the node answered and refused.
    Refused {
        /// HTTP status.
        status: u16,
        /// `error` of the body (`AlreadyRegistered`, `NotLeader`, ...).
        reason: String,
        /// `detail` of the body.
        detail: String,
    },
    /// No answer (connect error, timeout): the effect is unknown.
    Indeterminate {
        /// What failed.
        error: String,
    },
    /// A signal or a local action of the runner.
    Done,
}

impl OpResult {
    /// Whether the node answered 2xx (or a local action completed).
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. } | Self::Done)
    }
}

/// One operation the runner issued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Sequence number.
    pub id: u64,
    /// Target node slot.
    pub node: String,
    /// `register`, `unregister`, `lookup`, `join`, `leave`, `spawn`, `broadcast`, `faults`, `signal`, ...
    pub kind: String,
    /// The request (body, or a description for signals).
    pub request: serde_json::Value,
    /// When it was sent.
    pub invoke_s: f64,
    /// When its answer arrived (or it gave up).
    pub complete_s: f64,
    /// Its result.
    pub result: OpResult,
}

/// Why a node life ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum EndCause {
    /// The schedule killed it (`kill -9`).
    Killed,
    /// The runner stopped it at the end of the run.
    Stopped,
    /// It exited on its own.
    Died {
        /// Exit status as text.
        status: String,
    },
}

/// One run of one node (a new incarnation at each start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLife {
    /// Node name.
    pub node: String,
    /// Incarnation it announced.
    pub incarnation: u64,
    /// OS process id.
    pub os_pid: u32,
    /// Start time.
    pub start_s: f64,
    /// When it was seen gone.
    pub end_s: Option<f64>,
    /// Why.
    pub end: Option<EndCause>,
}

/// A fault's active window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The fault's action keyword.
    pub action: String,
    /// Human description (`partition [node-1] | [node-2,node-3]`).
    pub label: String,
    /// Nodes it was applied to (resolved `leader`).
    pub nodes: Vec<String>,
    /// Start.
    pub start_s: f64,
    /// End (equal to start for instantaneous steps such as a kill without restart).
    pub end_s: f64,
    /// Line of the fault in the scenario file.
    pub line: usize,
}

/// Who could talk to whom right after a step of the fault schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopologyChange {
    /// When the step completed (after the rules were installed, or the restarted node was ready).
    pub t_s: f64,
    /// The step (`heal (line 40)`, `end of isolate follower (line 31)`, `restart node-2`, ...).
    pub cause: String,
    /// Whether the step removed a fault: a heal, the end of a network fault, a restart or a resume.
    pub recovery: bool,
    /// Nodes running and not paused after it.
    pub alive: Vec<String>,
    /// Node pairs whose link drops every packet in at least one direction, each sorted.
    pub cut: Vec<[String; 2]>,
    /// Active faults that drop part of the packets or delay them: links neither up nor cut.
    pub impaired: Vec<String>,
}

/// A fault-free broadcast verification round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BroadcastRound {
    /// `baseline` (before the first fault) or `final` (after settling).
    pub label: String,
    /// When the broadcasts were sent.
    pub t_s: f64,
    /// Broadcasts sent (accepted by the senders).
    pub sent: u64,
    /// Deliveries expected: for each broadcast, the distinct live members of its group.
    pub expected: u64,
    /// Deliveries counted by the probes (sum of `received_total` deltas).
    pub delivered: u64,
    /// Broadcast requests that failed or were refused.
    pub failed_requests: u64,
    /// Whether network faults or dead/paused nodes could affect the path (never for these rounds;
    /// kept so a checker can refuse rounds that were not fault-free).
    pub fault_free: bool,
}

/// What one name is expected to be after the workload stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "expect", content = "pid", rename_all = "snake_case")]
pub enum Expected {
    /// Registered to this pid.
    Present(String),
    /// Not registered.
    Absent,
    /// An operation on it had an unknown outcome: present with this pid or absent.
    Either(String),
}

/// The ground truth after the workload stopped (and every fault ended).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Running node lives: name -> incarnation.
    pub members: BTreeMap<String, u64>,
    /// Per group: the member pids, a pid repeated per join, sorted.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Groups with an operation of unknown outcome: only agreement between nodes is required.
    pub uncertain_groups: Vec<String>,
    /// `local` names per node.
    pub local: BTreeMap<String, BTreeMap<String, Expected>>,
    /// `eventual` names (the same on every node).
    pub eventual: BTreeMap<String, Expected>,
}

/// Which optional subsystems the nodes have (a 404 on their endpoint = absent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// `GET /admin/registry/local`.
    pub local: bool,
    /// `GET /admin/registry/eventual`.
    pub eventual: bool,
    /// `GET /admin/registry/consistent`.
    pub consistent: bool,
    /// `GET /admin/raft`.
    pub raft: bool,
    /// `GET /admin/planes`.
    pub planes: bool,
}

/// Everything a run recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// Scenario name.
    pub scenario: String,
    /// Node slots, `node-1` ..
    pub nodes: Vec<String>,
    /// Seed used.
    pub seed: u64,
    /// Sample period, in seconds.
    pub sample_period_s: f64,
    /// When the chaos phase started.
    pub chaos_start_s: f64,
    /// When the workload stopped (end of the chaos phase).
    pub workload_end_s: f64,
    /// The settle window, in seconds.
    pub settle_s: f64,
    /// When the run ended.
    pub end_s: f64,
    /// Queue depth bound (frames), if the scenario set one.
    pub queue_depth_bound: Option<u64>,
    /// RSS bound, bytes.
    pub rss_bound_bytes: u64,
    /// Optional subsystems found.
    pub presence: Presence,
    /// Notes for the report (e.g. how `leader` was resolved).
    pub notes: Vec<String>,
    /// Fault windows.
    pub faults: Vec<FaultWindow>,
    /// The connectivity after each step of the schedule, in time order.
    #[serde(default)]
    pub topology: Vec<TopologyChange>,
    /// Node lives.
    pub lives: Vec<NodeLife>,
    /// Samples, in the order they were taken.
    pub samples: Vec<Sample>,
    /// Operations, in the order they were issued.
    pub ops: Vec<Operation>,
    /// Broadcast verification rounds.
    pub broadcast_rounds: Vec<BroadcastRound>,
    /// Ground truth after the workload.
    pub truth: Truth,
}

impl Recording {
    /// When the last fault window ended (the chaos phase start when there were none).
    pub fn last_fault_end_s(&self) -> f64 {
        self.faults.iter().map(|f| f.end_s).fold(self.chaos_start_s, f64::max)
    }

    /// Where convergence is measured from: the later of the last fault's end and the workload's end.
    pub fn convergence_anchor_s(&self) -> f64 {
        self.last_fault_end_s().max(self.workload_end_s)
    }

    /// The node life `(node, incarnation)`, if recorded.
    pub fn life(&self, node: &str, incarnation: u64) -> Option<&NodeLife> {
        self.lives.iter().find(|l| l.node == node && l.incarnation == incarnation)
    }
}
