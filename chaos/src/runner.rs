//! The chaos runner: executes a [`Scenario`] against real `cohort node` processes.
//!
//! Phases, in order:
//! 1. **start**: N nodes on 127.0.0.1 (port 0, chaos on, one generated key and admin token), each
//!    seeded with the gossip addresses of the nodes before it; wait for `/readyz`; find which
//!    optional subsystems exist (a 404 on `/admin/registry/*`, `/admin/raft`, `/admin/planes` =
//!    absent); start one sampler thread per node.
//! 2. **workload setup**: probes on every node, their joins, the initial names; wait for membership
//!    and pg to converge; a *baseline* broadcast verification round.
//! 3. **chaos phase** (`duration_s`): the fault schedule (admin API `/admin/faults` and signals) and
//!    the background workload (broadcasts, join churn, name churn, `Strong` lookups). A fault that
//!    falls due goes before the next workload request; selectors (`leader`, `follower`, `rest`)
//!    are resolved when their fault starts; after each step the connectivity is recorded
//!    ([`TopologyChange`]).
//! 4. **settle**: the workload stops; sampling goes on until every convergence invariant has held
//!    for `stable_samples` ticks or the settle window ends; a *final* broadcast round.
//! 5. **stop**: SIGTERM to every node, invariants checked on the recording, report written.
//!
//! The runner drives nodes only through the admin API and signals. Every operation is recorded with
//! its call and return times and result; every node is sampled on a fixed period by its own thread
//! (so a paused node's timeouts do not delay the others). Children never outlive the runner (see
//! [`crate::process`]); they are spawned only from the thread that calls [`run`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_cluster::faults::{Direction, FaultRule, FaultRules};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use thiserror::Error;

use crate::client::{Admin, Reply, metric_sum};
use crate::invariants::{self, Verdict};
use crate::process::{NodeProcess, NodeSpec, describe_status, generate_token, write_secret};
use crate::record::*;
use crate::scenario::{self, Fault, FaultAction, NodeRef, Scenario, ScenarioError, StrongOn, node_name};
use crate::truth::{Outcome, TruthModel};

/// Timeout of one workload or fault request.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long all nodes get to become ready (and to converge before the chaos phase).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a verification round waits for deliveries to arrive.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Most operations recorded; beyond it the workload stops issuing (a scenario with absurd rates
/// must not exhaust the runner's memory).
pub const MAX_OPS: usize = 500_000;
/// Most samples recorded (a 1-hour run of 16 nodes at 10 Hz fits).
pub const MAX_SAMPLES: usize = 600_000;
/// Loop step of the controller.
const STEP: Duration = Duration::from_millis(50);
/// Longest the controller issues workload requests before it looks at the schedule again. A request
/// to a node that cannot answer (no raft leader, paused) waits for [`OP_TIMEOUT`]; without this
/// budget a backlog of such requests delayed a fault by tens of seconds, and a composed schedule
/// ("kill the leader right after the heal") is only meaningful if its steps run on time.
const WORKLOAD_STEP_BUDGET: Duration = Duration::from_secs(1);
/// Most workload requests of one kind per controller step (a slow node must not make the backlog
/// explode).
const MAX_OPS_PER_STEP: u32 = 20;
/// Mixed into the seed for the generator that resolves `follower`: the fault schedule's picks must
/// not depend on how many random choices the workload happened to make before them.
const FAULT_PICK_STREAM: u64 = 0x6661_756c_7470_6963;

/// Why a run could not be carried out (a failed invariant is not an error: see [`RunOutcome`]).
#[derive(Debug, Error)]
pub enum RunError {
    /// The scenario file is wrong (exit code 2).
    #[error("{0}")]
    Scenario(#[from] ScenarioError),
    /// Nodes could not be started or the report written (exit code 1).
    #[error("{0}")]
    Setup(String),
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `cohort` binary to start nodes with.
    pub node_binary: PathBuf,
    /// Report directory (default `chaos-reports/<scenario>-<unix time>`).
    pub out_dir: Option<PathBuf>,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the scenario's node count (the full suite runs everything with 5 nodes).
    pub nodes: Option<u16>,
}

/// What a run found.
#[derive(Debug)]
pub struct RunOutcome {
    /// One verdict per invariant, in report order.
    pub verdicts: Vec<Verdict>,
    /// Where the report is.
    pub out_dir: PathBuf,
    /// Wall-clock length of the run.
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Whether every invariant held (skipped ones count as held; the report lists them).
    pub fn held(&self) -> bool {
        self.verdicts.iter().all(Verdict::held)
    }
}

/// Load, validate and run a scenario file.
pub fn run_file(path: &Path, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let mut scenario = scenario::load(path)?;
    if let Some(n) = opts.nodes {
        let text = std::fs::read_to_string(path).map_err(|e| RunError::Setup(e.to_string()))?;
        scenario = with_node_count(&text, n)?;
    }
    run(&scenario, opts)
}

/// Re-validate a scenario with another node count (its faults must still name existing nodes).
fn with_node_count(text: &str, nodes: u16) -> Result<Scenario, ScenarioError> {
    let mut value: toml::Table =
        toml::from_str(text).map_err(|e| ScenarioError::Parse { line: 0, message: e.to_string() })?;
    value.insert("nodes".into(), toml::Value::Integer(i64::from(nodes)));
    let text = toml::to_string(&value).map_err(|e| ScenarioError::Parse { line: 0, message: e.to_string() })?;
    scenario::parse(&text).map_err(|e| ScenarioError::Invalid {
        line: 0,
        message: format!("with --nodes {nodes}: {e} (line numbers refer to the rewritten file)"),
    })
}

/// The run's secret files in the report directory (0600, removed once the nodes are stopped).
const KEY_FILE: &str = "cluster.key";
const TOKEN_FILE: &str = "admin.token";

/// Run a validated scenario.
pub fn run(sc: &Scenario, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let out_dir = opts.out_dir.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from("chaos-reports").join(format!("{}-{secs}", sc.name))
    });
    let setup = |e: std::io::Error, what: &str| RunError::Setup(format!("{what}: {e}"));
    std::fs::create_dir_all(out_dir.join("logs")).map_err(|e| setup(e, "creating the report directory"))?;
    std::fs::create_dir_all(out_dir.join("data")).map_err(|e| setup(e, "creating the data directory"))?;
    let seed = opts.seed.unwrap_or(sc.seed);
    let remove_secrets = || {
        for file in [KEY_FILE, TOKEN_FILE] {
            let _ = std::fs::remove_file(out_dir.join(file));
        }
    };
    let mut runner = Runner::new(sc, opts, &out_dir, seed).inspect_err(|_| remove_secrets())?;
    let result = runner.execute();
    // Whatever happened, stop every node before judging (Drop would SIGKILL them anyway).
    runner.stop_all();
    // No node needs the secrets any more; they go whether the run succeeded or not.
    remove_secrets();
    result?;
    let rec = runner.finish();
    let verdicts = invariants::check_all(&rec);
    crate::report::write(&out_dir, sc, &rec, &verdicts).map_err(|e| setup(e, "writing the report"))?;
    Ok(RunOutcome { verdicts, out_dir, elapsed: started.elapsed() })
}

/// One node slot as the samplers see it.
#[derive(Clone, Default)]
struct SlotView {
    http: Option<String>,
}

/// State shared with the sampler threads.
struct Shared {
    origin: Instant,
    period: Duration,
    slots: Mutex<Vec<SlotView>>,
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
    presence: Mutex<Presence>,
    scope: String,
    groups: Vec<String>,
}

impl Shared {
    fn now_s(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

/// A node slot owned by the controller.
struct Slot {
    name: String,
    process: Option<NodeProcess>,
    starts: u32,
    life: Option<usize>,
}

/// A fault window being executed.
struct Active {
    fault: usize,
    /// The fault with its selectors resolved (`leader`, `follower` and `rest` replaced by nodes).
    action: FaultAction,
    /// The nodes it names (for a partition, those of the sets other than `rest`).
    nodes: Vec<String>,
    window: usize,
}

/// The nodes one fault's selectors took so far: `leader` is asked for once per fault, and each
/// `follower` is a node no other reference of the fault took.
#[derive(Default)]
struct Picks {
    leader: Option<Option<String>>,
    taken: Vec<String>,
}

struct Runner<'a> {
    sc: &'a Scenario,
    shared: Arc<Shared>,
    admin: Admin,
    rng: StdRng,
    fault_rng: StdRng,
    slots: Vec<Slot>,
    exe: PathBuf,
    out_dir: PathBuf,
    secret_file: PathBuf,
    token_file: PathBuf,
    config_file: Option<PathBuf>,
    truth: TruthModel,
    rec: Recording,
    next_op: u64,
    samplers: Vec<std::thread::JoinHandle<()>>,
    progress: ProgressBar,
    active_net: Vec<Active>,
    active_other: Vec<Active>,
    consistent_owner: BTreeMap<String, (String, String)>,
    last_leader: Option<String>,
    truth_at_stop: Option<Truth>,
    flood_acc: BTreeMap<usize, f64>,
}

impl<'a> Runner<'a> {
    fn new(sc: &'a Scenario, opts: &RunOptions, out_dir: &Path, seed: u64) -> Result<Self, RunError> {
        let rng = StdRng::seed_from_u64(seed);
        // Secrets come from the OS, not the seed: a reproducible run must not mean a guessable key
        // or token. The key is 32 bytes of key material, what a node requires.
        let key = cohort_cluster::auth::ClusterSecret::generate_from_os()
            .map_err(|e| RunError::Setup(format!("generating the cluster key: {e}")))?;
        let token = generate_token().map_err(|e| RunError::Setup(format!("generating the admin token: {e}")))?;
        let secret_file = out_dir.join(KEY_FILE);
        write_secret(&secret_file, &key.to_base64())
            .map_err(|e| RunError::Setup(format!("writing {}: {e}", secret_file.display())))?;
        let token_file = out_dir.join(TOKEN_FILE);
        write_secret(&token_file, &token)
            .map_err(|e| RunError::Setup(format!("writing {}: {e}", token_file.display())))?;
        let config_file = match &sc.node.config {
            Some(table) => {
                let path = out_dir.join("node-config.toml");
                let text = toml::to_string(table).map_err(|e| RunError::Setup(format!("node config: {e}")))?;
                std::fs::write(&path, text).map_err(|e| RunError::Setup(format!("writing {}: {e}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        let admin = Admin::new(&token).map_err(RunError::Setup)?;
        let names: Vec<String> = (1..=sc.nodes).map(node_name).collect();
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            period: Duration::from_millis(sc.sample_period_ms),
            slots: Mutex::new(vec![SlotView::default(); names.len()]),
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            presence: Mutex::new(Presence::default()),
            scope: sc.workload.scope.clone(),
            groups: sc.workload.groups.clone(),
        });
        let progress = if std::io::stderr().is_terminal() {
            let pb = ProgressBar::with_draw_target(
                Some(((sc.duration_s + sc.settle_s) * 10.0) as u64),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {msg}") {
                pb.set_style(style);
            }
            pb
        } else {
            ProgressBar::hidden()
        };
        let rec = Recording {
            scenario: sc.name.clone(),
            nodes: names.clone(),
            seed,
            sample_period_s: sc.sample_period_ms as f64 / 1000.0,
            settle_s: sc.settle_s,
            queue_depth_bound: sc.bounds.queue_depth,
            rss_bound_bytes: sc.bounds.rss_mb.saturating_mul(1024 * 1024),
            ..Default::default()
        };
        Ok(Self {
            sc,
            shared,
            admin,
            rng,
            fault_rng: StdRng::seed_from_u64(seed ^ FAULT_PICK_STREAM),
            slots: names.into_iter().map(|name| Slot { name, process: None, starts: 0, life: None }).collect(),
            exe: opts.node_binary.clone(),
            out_dir: out_dir.to_path_buf(),
            secret_file,
            token_file,
            config_file,
            truth: TruthModel::new(&sc.workload.groups),
            rec,
            next_op: 1,
            samplers: Vec::new(),
            progress,
            active_net: Vec::new(),
            active_other: Vec::new(),
            consistent_owner: BTreeMap::new(),
            last_leader: None,
            truth_at_stop: None,
            flood_acc: BTreeMap::new(),
        })
    }

    fn say(&self, msg: String) {
        if self.progress.is_hidden() {
            eprintln!("chaos [{:7.1} s] {msg}", self.shared.now_s());
        } else {
            self.progress.println(format!("[{:7.1} s] {msg}", self.shared.now_s()));
        }
    }

    fn now(&self) -> f64 {
        self.shared.now_s()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    fn http(&self, name: &str) -> Option<String> {
        let i = self.index(name)?;
        self.slots[i].process.as_ref().map(|p| p.announce.http.clone())
    }

    // ---- operations ---------------------------------------------------------------------------

    /// Issue one admin request and record it.
    fn op(&mut self, node: &str, kind: &str, request: Value, send: impl FnOnce(&Admin, &str) -> Reply) -> Reply {
        let Some(base) = self.http(node) else {
            return Reply::NoAnswer("node not running".into());
        };
        let invoke_s = self.now();
        let reply = send(&self.admin, &base);
        let complete_s = self.now();
        if self.rec.ops.len() < MAX_OPS {
            self.rec.ops.push(Operation {
                id: self.next_op,
                node: node.to_string(),
                kind: kind.to_string(),
                request,
                invoke_s,
                complete_s,
                result: reply.clone().into(),
            });
            self.next_op += 1;
        }
        reply
    }

    fn post(&mut self, node: &str, kind: &str, path: &str, body: Value) -> Reply {
        let p = path.to_string();
        let b = body.clone();
        self.op(node, kind, body, move |a, base| a.post(base, &p, &b, OP_TIMEOUT))
    }

    fn record_local(&mut self, node: &str, kind: &str, request: Value) {
        let t = self.now();
        self.rec.ops.push(Operation {
            id: self.next_op,
            node: node.to_string(),
            kind: kind.to_string(),
            request,
            invoke_s: t,
            complete_s: t,
            result: OpResult::Done,
        });
        self.next_op += 1;
    }

    // ---- node lives ---------------------------------------------------------------------------

    fn start_node(&mut self, i: usize) -> Result<(), RunError> {
        let seeds: Vec<String> =
            self.slots.iter().filter_map(|s| s.process.as_ref()).map(|p| p.announce.gossip.clone()).collect();
        let name = self.slots[i].name.clone();
        self.slots[i].starts += 1;
        let spec = NodeSpec {
            exe: self.exe.clone(),
            name: name.clone(),
            data_dir: self.out_dir.join("data").join(&name),
            secret_file: self.secret_file.clone(),
            token_file: self.token_file.clone(),
            seeds,
            config_file: self.config_file.clone(),
            log_filter: self.sc.node.log_filter.clone().unwrap_or_else(|| "info".into()),
            log_dir: self.out_dir.join("logs"),
            start_number: self.slots[i].starts,
        };
        let t = self.now();
        let p = NodeProcess::spawn(&spec).map_err(|e| RunError::Setup(e.to_string()))?;
        self.rec.lives.push(NodeLife {
            node: name.clone(),
            incarnation: p.announce.incarnation,
            os_pid: p.os_pid(),
            start_s: t,
            end_s: None,
            end: None,
        });
        self.slots[i].life = Some(self.rec.lives.len() - 1);
        self.truth.started(&name, p.announce.incarnation);
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())[i].http = Some(p.announce.http.clone());
        self.record_local(&name, "start", json!({"incarnation": p.announce.incarnation, "os_pid": p.os_pid()}));
        self.slots[i].process = Some(p);
        Ok(())
    }

    fn end_life(&mut self, i: usize, cause: EndCause) {
        let name = self.slots[i].name.clone();
        self.slots[i].process = None;
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())[i].http = None;
        if let Some(l) = self.slots[i].life.take() {
            self.rec.lives[l].end_s = Some(self.now());
            self.rec.lives[l].end = Some(cause);
        }
        self.truth.ended(&name);
        self.consistent_owner.retain(|_, (owner, _)| owner != &name);
    }

    /// Reap nodes that exited on their own.
    fn reap_unexpected(&mut self) {
        for i in 0..self.slots.len() {
            let exited = self.slots[i].process.as_mut().and_then(|p| p.try_exit());
            if let Some(status) = exited {
                let name = self.slots[i].name.clone();
                self.say(format!("{name} exited on its own: {}", describe_status(status)));
                self.end_life(i, EndCause::Died { status: describe_status(status) });
                self.record_topology(format!("{name} exited on its own"), false);
            }
        }
    }

    fn wait_ready(&mut self, names: &[String], within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut pending: Vec<String> = names.to_vec();
        while !pending.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for n in pending {
                let ready = self.http(&n).is_some_and(|base| {
                    matches!(self.admin.get(&base, "/readyz", Duration::from_secs(1)), Reply::Ok(_))
                });
                if !ready {
                    still.push(n);
                }
            }
            pending = still;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        pending
    }

    fn detect_presence(&mut self) {
        let Some(base) = self.slots.iter().find_map(|s| s.process.as_ref().map(|p| p.announce.http.clone())) else {
            return;
        };
        // Present means served: a 404 (no such endpoint) or a 503 `Unavailable` (the tier is not
        // running on this node) both mean the workload and the invariants of that part are skipped,
        // never passed vacuously.
        let present = |path: &str| match self.admin.get(&base, path, OP_TIMEOUT) {
            Reply::Refused { status, .. } => status != 404 && status != 503,
            _ => true,
        };
        let p = Presence {
            local: present("/admin/registry/local"),
            eventual: present("/admin/registry/eventual"),
            consistent: present("/admin/registry/consistent"),
            raft: present("/admin/raft"),
            planes: present("/admin/planes"),
        };
        let absent: Vec<&str> = [
            ("registry/local", p.local),
            ("registry/eventual", p.eventual),
            ("registry/consistent", p.consistent),
            ("raft", p.raft),
            ("planes", p.planes),
        ]
        .iter()
        .filter(|(_, present)| !present)
        .map(|(n, _)| *n)
        .collect();
        if !absent.is_empty() {
            let note = format!(
                "absent on these nodes (404 or 503 Unavailable): {}; their workload and invariants are skipped",
                absent.join(", ")
            );
            self.say(note.clone());
            self.rec.notes.push(note);
        }
        *self.shared.presence.lock().unwrap_or_else(|p| p.into_inner()) = p.clone();
        self.rec.presence = p;
    }

    fn start_samplers(&mut self) {
        for i in 0..self.slots.len() {
            let shared = self.shared.clone();
            let admin = self.admin.clone();
            let name = self.slots[i].name.clone();
            self.samplers.push(std::thread::spawn(move || sampler(shared, admin, i, name)));
        }
    }

    // ---- workload -----------------------------------------------------------------------------

    fn spawn_probes(&mut self, node: &str) {
        let w = &self.sc.workload;
        if w.probes_per_node == 0 {
            return;
        }
        let reply = self.post(node, "spawn", "/admin/probe/spawn", json!({"count": w.probes_per_node}));
        let pids: Vec<String> = reply
            .ok()
            .and_then(|b| b.get("pids"))
            .and_then(|p| p.as_array())
            .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        self.truth.spawned(node, &pids);
        let groups = w.groups.clone();
        let joins = w.joins_per_probe as usize;
        let scope = w.scope.clone();
        for (j, pid) in pids.iter().enumerate() {
            for k in 0..joins {
                let group = &groups[(j + k) % groups.len()];
                self.join(node, &scope, group, pid);
            }
        }
    }

    fn join(&mut self, node: &str, scope: &str, group: &str, pid: &str) {
        let r = self.post(node, "join", "/admin/probe/join", json!({"scope": scope, "group": group, "pids": [pid]}));
        self.truth.join(group, pid, outcome(&r));
    }

    fn leave(&mut self, node: &str, scope: &str, group: &str, pid: &str) {
        let r = self.post(node, "leave", "/admin/probe/leave", json!({"scope": scope, "group": group, "pids": [pid]}));
        self.truth.leave(group, pid, outcome(&r));
    }

    fn register(&mut self, node: &str, tier: &str, name: &str, pid: &str) -> Reply {
        let r = self.post(node, "register", "/admin/probe/register", json!({"tier": tier, "name": name, "pid": pid}));
        if tier == "consistent" {
            if r.ok().is_some() {
                self.consistent_owner.insert(name.to_string(), (node.to_string(), pid.to_string()));
            }
        } else {
            self.truth.register(tier, node, name, pid, outcome(&r));
        }
        r
    }

    fn unregister(&mut self, node: &str, tier: &str, name: &str, pid: &str) -> Reply {
        let r =
            self.post(node, "unregister", "/admin/probe/unregister", json!({"tier": tier, "name": name, "pid": pid}));
        if tier == "consistent" {
            if r.ok().is_some() || matches!(r, Reply::Refused { .. }) {
                self.consistent_owner.remove(name);
            }
        } else {
            self.truth.unregister(tier, node, name, pid, outcome(&r));
        }
        r
    }

    fn local_names(&self, node: &str, tier: &str) -> Vec<String> {
        let count = if tier == "local" { self.sc.workload.names.local } else { self.sc.workload.names.eventual };
        (0..count).map(|k| format!("chaos-{}-{node}-{k}", &tier[..1])).collect()
    }

    /// Probes, joins and per-node names for a node's current life.
    fn node_workload(&mut self, node: &str) {
        self.spawn_probes(node);
        let probes = self.truth.probes(node).to_vec();
        if probes.is_empty() {
            return;
        }
        for tier in ["local", "eventual"] {
            let present = if tier == "local" { self.rec.presence.local } else { self.rec.presence.eventual };
            if !present {
                continue;
            }
            for (k, name) in self.local_names(node, tier).into_iter().enumerate() {
                let pid = probes[k % probes.len()].clone();
                self.register(node, tier, &name, &pid);
            }
        }
    }

    fn responsive(&self) -> Vec<String> {
        self.slots.iter().filter(|s| self.truth.is_responsive(&s.name)).map(|s| s.name.clone()).collect()
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() { None } else { Some(v[self.rng.random_range(0..v.len())].clone()) }
    }

    fn setup_workload(&mut self) {
        for n in self.responsive() {
            self.node_workload(&n);
        }
        if self.rec.presence.consistent {
            for k in 0..self.sc.workload.names.consistent {
                self.consistent_churn_one(&format!("chaos-c-{k}"));
            }
        }
    }

    fn consistent_churn_one(&mut self, name: &str) {
        let nodes = self.responsive();
        if let Some((owner, pid)) = self.consistent_owner.get(name).cloned()
            && nodes.contains(&owner)
        {
            self.unregister(&owner, "consistent", name, &pid);
            return;
        }
        let Some(node) = self.pick(&nodes) else { return };
        let probes = self.truth.probes(&node).to_vec();
        let Some(pid) = self.pick(&probes) else { return };
        self.register(&node, "consistent", name, &pid);
    }

    fn churn_names(&mut self) {
        let names = &self.sc.workload.names;
        let mut tiers = Vec::new();
        if self.rec.presence.local && names.local > 0 {
            tiers.push("local");
        }
        if self.rec.presence.eventual && names.eventual > 0 {
            tiers.push("eventual");
        }
        if self.rec.presence.consistent && names.consistent > 0 {
            tiers.push("consistent");
        }
        let Some(tier) = self.pick(&tiers) else { return };
        if tier == "consistent" {
            let k = self.rng.random_range(0..names.consistent);
            self.consistent_churn_one(&format!("chaos-c-{k}"));
            return;
        }
        let nodes = self.responsive();
        let Some(node) = self.pick(&nodes) else { return };
        let all = self.local_names(&node, tier);
        let Some(name) = self.pick(&all) else { return };
        match self.truth.name(tier, &node, &name) {
            Expected::Present(pid) => {
                self.unregister(&node, tier, &name, &pid);
            }
            Expected::Absent => {
                let probes = self.truth.probes(&node).to_vec();
                if let Some(pid) = self.pick(&probes) {
                    self.register(&node, tier, &name, &pid);
                }
            }
            // Unknown outcome: leave it alone so the truth stays decidable.
            Expected::Either(_) => {}
        }
    }

    fn lookup(&mut self) {
        let count = self.sc.workload.names.consistent;
        if !self.rec.presence.consistent || count == 0 {
            return;
        }
        let name = format!("chaos-c-{}", self.rng.random_range(0..count));
        let nodes = self.responsive();
        let target = match (self.sc.workload.names.strong_on, &self.last_leader) {
            // A tier that serves Strong on the leader only answers most of them when asked there.
            (StrongOn::Leader, Some(l)) if nodes.contains(l) => l.clone(),
            _ => match self.pick(&nodes) {
                Some(n) => n,
                None => return,
            },
        };
        let path = format!("/admin/registry/lookup/{name}?tier=consistent&freshness=strong");
        self.op(&target, "lookup", json!({"tier": "consistent", "name": name, "freshness": "strong"}), move |a, b| {
            a.get(b, &path, OP_TIMEOUT)
        });
    }

    fn broadcast_one(&mut self) {
        let nodes = self.responsive();
        let groups = self.sc.workload.groups.clone();
        let (Some(node), Some(group)) = (self.pick(&nodes), self.pick(&groups)) else { return };
        let body = json!({"scope": self.sc.workload.scope, "group": group, "count": 1,
                          "payload_bytes": self.sc.workload.payload_bytes});
        self.post(&node, "broadcast", "/admin/probe/broadcast", body);
    }

    fn join_churn_one(&mut self) {
        let nodes: Vec<String> = self.responsive().into_iter().filter(|n| !self.truth.probes(n).is_empty()).collect();
        let groups = self.sc.workload.groups.clone();
        let (Some(node), Some(group)) = (self.pick(&nodes), self.pick(&groups)) else { return };
        let probes = self.truth.probes(&node).to_vec();
        let Some(pid) = self.pick(&probes) else { return };
        let scope = self.sc.workload.scope.clone();
        if self.truth.members(&group).contains(&pid) {
            self.leave(&node, &scope, &group, &pid);
        } else {
            self.join(&node, &scope, &group, &pid);
        }
    }

    // ---- faults -------------------------------------------------------------------------------

    /// The node a reference of one fault stands for now (`rest` is resolved by its partition).
    fn resolve(&mut self, r: &NodeRef, picks: &mut Picks) -> Option<String> {
        let node = match r {
            NodeRef::Index(i) => Some(node_name(*i)),
            NodeRef::Leader => self.leader_for(picks),
            NodeRef::Follower => self.pick_follower(picks),
            NodeRef::Rest => None,
        };
        if let Some(n) = &node {
            picks.taken.push(n.clone());
        }
        node
    }

    /// What `leader` resolves to for this fault (asked once per fault).
    fn leader_for(&mut self, picks: &mut Picks) -> Option<String> {
        if picks.leader.is_none() {
            picks.leader = Some(self.find_leader());
        }
        picks.leader.clone().flatten()
    }

    /// What `follower` resolves to for this fault: a draw of the seeded fault generator from
    /// [`follower_pool`].
    fn pick_follower(&mut self, picks: &mut Picks) -> Option<String> {
        let leader = self.leader_for(picks);
        let named: BTreeSet<String> = self
            .active_net
            .iter()
            .chain(&self.active_other)
            .filter(|a| !matches!(a.action, FaultAction::Flood { .. }))
            .flat_map(|a| a.nodes.iter().cloned())
            .collect();
        let pool = follower_pool(&self.responsive(), leader.as_deref(), &picks.taken, &named);
        if pool.is_empty() {
            return None;
        }
        let n = pool[self.fault_rng.random_range(0..pool.len())].clone();
        let leader = leader.unwrap_or_else(|| "none".into());
        self.rec.notes.push(format!(
            "`follower` resolved to {n} at {:.1} s (leader {leader}; picked among {})",
            self.now(),
            pool.join(",")
        ));
        Some(n)
    }

    /// The raft leader most responsive nodes name; without raft or a known leader, the
    /// lowest-named responsive node (noted in the report).
    fn find_leader(&mut self) -> Option<String> {
        let running = self.responsive();
        if self.rec.presence.raft {
            let mut votes: BTreeMap<String, usize> = BTreeMap::new();
            for n in &running {
                let Some(base) = self.http(n) else { continue };
                if let Reply::Ok(b) = self.admin.get(&base, "/admin/raft", OP_TIMEOUT)
                    && let Some(l) = b.get("leader").and_then(leader_name)
                {
                    *votes.entry(l).or_default() += 1;
                }
            }
            if let Some((l, _)) = votes.into_iter().max_by_key(|(_, c)| *c)
                && running.contains(&l)
            {
                self.rec.notes.push(format!("`leader` resolved to {l} from /admin/raft at {:.1} s", self.now()));
                return Some(l);
            }
        }
        let lowest = running.iter().min_by_key(|n| n.trim_start_matches("node-").parse::<u32>().unwrap_or(0))?;
        let why = if self.rec.presence.raft { "no leader known" } else { "/admin/raft is absent" };
        let note = format!("`leader` resolved to {lowest}, the lowest-named live node ({why}) at {:.1} s", self.now());
        self.say(note.clone());
        self.rec.notes.push(note);
        Some(lowest.clone())
    }

    fn resolve_all(&mut self, refs: &[NodeRef]) -> Vec<String> {
        if refs.is_empty() {
            return self.slots.iter().map(|s| s.name.clone()).collect();
        }
        let mut picks = Picks::default();
        refs.iter().filter_map(|r| self.resolve(r, &mut picks)).collect()
    }

    /// A partition's sets with every selector replaced by a node, and the nodes of its sets other
    /// than `rest`; `None` when a selector found no node.
    fn resolve_partition(&mut self, sets: &[Vec<NodeRef>]) -> Option<(Vec<Vec<NodeRef>>, Vec<String>)> {
        let mut picks = Picks::default();
        let mut resolved: Vec<Vec<NodeRef>> = Vec::new();
        for set in sets {
            let mut out = Vec::new();
            for r in set.iter().filter(|r| **r != NodeRef::Rest) {
                let n = self.resolve(r, &mut picks)?;
                out.push(NodeRef::Index(self.index(&n)? as u16 + 1));
            }
            resolved.push(out);
        }
        let named = picks.taken.clone();
        for (set, out) in sets.iter().zip(resolved.iter_mut()) {
            if set.contains(&NodeRef::Rest) {
                for (i, slot) in self.slots.iter().enumerate() {
                    if !picks.taken.contains(&slot.name) {
                        out.push(NodeRef::Index(i as u16 + 1));
                    }
                }
            }
        }
        Some((resolved, named))
    }

    /// The rules each node should hold for the active network faults.
    fn desired_rules(&self) -> BTreeMap<String, Vec<FaultRule>> {
        let all: Vec<String> = self.slots.iter().map(|s| s.name.clone()).collect();
        let active: Vec<(&FaultAction, &[String])> =
            self.active_net.iter().map(|a| (&a.action, a.nodes.as_slice())).collect();
        network_rules(&all, &active)
    }

    /// Record who can talk to whom after a step of the schedule (see [`TopologyChange`]).
    fn record_topology(&mut self, cause: String, recovery: bool) {
        let cut = cut_pairs(&self.desired_rules());
        let impaired = self
            .active_net
            .iter()
            .filter(|a| matches!(a.action, FaultAction::Drop { .. } | FaultAction::Delay { .. }))
            .map(|a| self.rec.faults[a.window].label.clone())
            .collect();
        let alive = self.responsive();
        let t_s = self.now();
        self.rec.topology.push(TopologyChange { t_s, cause, recovery, alive, cut, impaired });
    }

    /// A fault that could not start because a selector found no node.
    fn not_started(&mut self, f: &Fault) {
        let note = format!("fault (line {}) {} not started: no node to pick", f.line, f.action.describe());
        self.say(note.clone());
        self.rec.notes.push(note);
    }

    fn apply_rules(&mut self) {
        for (node, rules) in self.desired_rules() {
            if !self.truth.running().contains_key(&node) {
                continue;
            }
            let reply = if rules.is_empty() {
                self.op(&node, "faults", json!({"clear": true}), |a, b| a.delete(b, "/admin/faults", OP_TIMEOUT))
            } else {
                let body = serde_json::to_value(FaultRules { rules }).unwrap_or(Value::Null);
                self.post(&node, "faults", "/admin/faults", body)
            };
            if !matches!(reply, Reply::Ok(_)) {
                self.say(format!("fault rules on {node} not installed: {reply:?}"));
            }
        }
    }

    /// Open the window of fault `fault`; `resolved` is the action with its selectors replaced, for
    /// the label, when that says more than the nodes column (a partition's sets).
    fn open_window(&mut self, fault: usize, nodes: Vec<String>, resolved: Option<&FaultAction>) -> usize {
        let f = &self.sc.faults[fault];
        let t = self.now();
        let label = match resolved {
            Some(r) => {
                let resolved = r.describe();
                let sets = resolved.strip_prefix(r.keyword()).unwrap_or(&resolved).trim_start();
                format!("{} = {sets}", f.action.describe())
            }
            None => f.action.describe(),
        };
        self.rec.faults.push(FaultWindow {
            action: f.action.keyword().to_string(),
            label,
            nodes,
            start_s: t,
            end_s: t,
            line: f.line,
        });
        self.rec.faults.len() - 1
    }

    fn close_window(&mut self, window: usize) {
        self.rec.faults[window].end_s = self.now();
    }

    fn start_fault(&mut self, i: usize) -> Result<(), RunError> {
        let f: Fault = self.sc.faults[i].clone();
        self.say(format!("fault (line {}): {}", f.line, f.action.describe()));
        let line = f.line;
        match &f.action {
            FaultAction::Partition { sets } => {
                let Some((resolved, named)) = self.resolve_partition(sets) else {
                    self.not_started(&f);
                    return Ok(());
                };
                let nodes = partition_nodes(&resolved);
                let action = FaultAction::Partition { sets: resolved };
                let has_selector = sets.iter().flatten().any(NodeRef::is_selector);
                let window = self.open_window(i, nodes, has_selector.then_some(&action));
                let label = self.rec.faults[window].label.clone();
                self.active_net.push(Active { fault: i, action, nodes: named, window });
                self.apply_rules();
                self.record_topology(format!("{label} (line {line})"), false);
            }
            FaultAction::Isolate { node } => {
                let Some(n) = self.resolve(node, &mut Picks::default()) else {
                    self.not_started(&f);
                    return Ok(());
                };
                let window = self.open_window(i, vec![n.clone()], None);
                self.active_net.push(Active { fault: i, action: f.action.clone(), nodes: vec![n.clone()], window });
                self.apply_rules();
                self.record_topology(format!("isolate {n} (line {line})"), false);
            }
            FaultAction::Asymmetric { from, to } => {
                let nodes: Vec<String> = from.iter().chain(to).map(|n| n.to_string()).collect();
                let window = self.open_window(i, nodes.clone(), None);
                self.active_net.push(Active { fault: i, action: f.action.clone(), nodes, window });
                self.apply_rules();
                self.record_topology(format!("{} (line {line})", f.action.describe()), false);
            }
            FaultAction::Drop { nodes, .. } | FaultAction::Delay { nodes, .. } => {
                let nodes = self.resolve_all(nodes);
                let window = self.open_window(i, nodes.clone(), None);
                self.active_net.push(Active { fault: i, action: f.action.clone(), nodes, window });
                self.apply_rules();
                self.record_topology(format!("{} (line {line})", f.action.describe()), false);
            }
            FaultAction::Heal => {
                let t = self.now();
                for a in std::mem::take(&mut self.active_net) {
                    self.rec.faults[a.window].end_s = t;
                }
                self.apply_rules();
                self.record_topology(format!("heal (line {line})"), true);
            }
            FaultAction::Kill { node } => {
                let Some(n) = self.resolve(node, &mut Picks::default()) else {
                    self.not_started(&f);
                    return Ok(());
                };
                let Some(idx) = self.index(&n) else { return Ok(()) };
                let window = self.open_window(i, vec![n.clone()], None);
                if let Some(p) = self.slots[idx].process.as_mut() {
                    p.kill9();
                }
                self.record_local(&n, "signal", json!({"signal": "SIGKILL"}));
                self.end_life(idx, EndCause::Killed);
                self.active_other.push(Active { fault: i, action: f.action.clone(), nodes: vec![n.clone()], window });
                self.record_topology(format!("kill -9 {n} (line {line})"), false);
            }
            FaultAction::Restart { node } => {
                let n = node.to_string();
                if let Some(pos) = self.active_other.iter().position(|a| {
                    matches!(self.sc.faults[a.fault].action, FaultAction::Kill { .. }) && a.nodes == [n.clone()]
                }) {
                    let a = self.active_other.remove(pos);
                    self.restart(&n, format!("restart {n} (line {line})"))?;
                    self.close_window(a.window);
                }
            }
            FaultAction::Pause { node } => {
                let Some(n) = self.resolve(node, &mut Picks::default()) else {
                    self.not_started(&f);
                    return Ok(());
                };
                let Some(idx) = self.index(&n) else { return Ok(()) };
                let window = self.open_window(i, vec![n.clone()], None);
                if let Some(p) = &self.slots[idx].process {
                    p.signal(libc::SIGSTOP);
                }
                self.record_local(&n, "signal", json!({"signal": "SIGSTOP"}));
                self.truth.set_paused(&n, true);
                self.active_other.push(Active { fault: i, action: f.action.clone(), nodes: vec![n.clone()], window });
                self.record_topology(format!("SIGSTOP {n} (line {line})"), false);
            }
            FaultAction::Resume { node } => {
                let n = node.to_string();
                if let Some(pos) = self.active_other.iter().position(|a| {
                    matches!(self.sc.faults[a.fault].action, FaultAction::Pause { .. }) && a.nodes == [n.clone()]
                }) {
                    let a = self.active_other.remove(pos);
                    self.resume(&n, format!("SIGCONT {n} (line {line})"));
                    self.close_window(a.window);
                }
            }
            FaultAction::Flood { nodes, .. } => {
                let nodes = self.resolve_all(nodes);
                let window = self.open_window(i, nodes.clone(), None);
                self.active_other.push(Active { fault: i, action: f.action.clone(), nodes, window });
            }
        }
        Ok(())
    }

    fn restart(&mut self, n: &str, cause: String) -> Result<(), RunError> {
        let Some(idx) = self.index(n) else { return Ok(()) };
        self.start_node(idx)?;
        let pending = self.wait_ready(&[n.to_string()], READY_TIMEOUT);
        if !pending.is_empty() {
            self.say(format!("{n} restarted but not ready within {} s", READY_TIMEOUT.as_secs()));
        }
        self.apply_rules();
        self.record_topology(cause, true);
        self.node_workload(n);
        Ok(())
    }

    fn resume(&mut self, n: &str, cause: String) {
        if let Some(idx) = self.index(n)
            && let Some(p) = &self.slots[idx].process
        {
            p.signal(libc::SIGCONT);
        }
        self.record_local(n, "signal", json!({"signal": "SIGCONT"}));
        self.truth.set_paused(n, false);
        self.record_topology(cause, true);
    }

    /// The end of a fault's `for_s`.
    fn end_fault(&mut self, i: usize) -> Result<(), RunError> {
        let f = self.sc.faults[i].clone();
        if f.action.is_network() {
            if let Some(pos) = self.active_net.iter().position(|a| a.fault == i) {
                let a = self.active_net.remove(pos);
                self.say(format!("end of (line {}): {}", f.line, f.action.describe()));
                self.close_window(a.window);
                self.apply_rules();
                let label = self.rec.faults[a.window].label.clone();
                // A partition's and an asymmetric fault's labels name their nodes already.
                let named = match a.action {
                    FaultAction::Partition { .. } | FaultAction::Asymmetric { .. } => String::new(),
                    _ => format!(" [{}]", a.nodes.join(",")),
                };
                self.record_topology(format!("end of {label}{named} (line {})", f.line), true);
            }
            return Ok(());
        }
        let Some(pos) = self.active_other.iter().position(|a| a.fault == i) else { return Ok(()) };
        let a = self.active_other.remove(pos);
        self.say(format!("end of (line {}): {}", f.line, f.action.describe()));
        let n = a.nodes.first().cloned().unwrap_or_default();
        match f.action {
            FaultAction::Kill { .. } => self.restart(&n, format!("restart {n} (end of line {})", f.line))?,
            FaultAction::Pause { .. } => self.resume(&n, format!("SIGCONT {n} (end of line {})", f.line)),
            _ => {}
        }
        self.close_window(a.window);
        Ok(())
    }

    fn flood_step(&mut self, dt: f64) {
        let floods: Vec<(usize, Vec<String>)> = self
            .active_other
            .iter()
            .filter(|a| matches!(self.sc.faults[a.fault].action, FaultAction::Flood { .. }))
            .map(|a| (a.fault, a.nodes.clone()))
            .collect();
        for (i, nodes) in floods {
            let FaultAction::Flood { group, rate_per_s, payload_bytes, .. } = self.sc.faults[i].action.clone() else {
                continue;
            };
            let acc = self.flood_acc.entry(i).or_insert(0.0);
            *acc = (*acc + rate_per_s * dt).min(rate_per_s);
            let count = acc.floor() as u64;
            if count == 0 {
                continue;
            }
            *acc -= count as f64;
            let senders: Vec<String> = nodes.iter().filter(|n| self.truth.is_responsive(n)).cloned().collect();
            for n in &senders {
                let body = json!({"scope": self.sc.workload.scope, "group": group, "count": count,
                                  "payload_bytes": payload_bytes});
                self.post(n, "broadcast", "/admin/probe/broadcast", body);
            }
        }
    }

    // ---- verification rounds ------------------------------------------------------------------

    fn received_total(&self) -> Option<u64> {
        let mut sum = 0;
        for n in self.truth.running().keys() {
            let base = self.http(n)?;
            let Reply::Ok(b) = self.admin.get(&base, "/admin/probe/stats", OP_TIMEOUT) else { return None };
            sum += b.get("received_total").and_then(|v| v.as_u64())?;
        }
        Some(sum)
    }

    /// Wait until the received counters stop moving (in-flight deliveries of earlier broadcasts).
    fn quiet_received(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        let mut last = self.received_total()?;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.received_total()?;
            if now == last || Instant::now() > deadline {
                return Some(now);
            }
            last = now;
        }
    }

    fn broadcast_round(&mut self, label: &str) {
        let w = self.sc.workload.clone();
        if w.verify_broadcasts == 0 || w.groups.is_empty() || w.probes_per_node == 0 {
            return;
        }
        let fault_free = self.active_net.is_empty() && self.active_other.is_empty();
        let t = self.now();
        let Some(before) = self.quiet_received(Duration::from_secs(10)) else {
            self.rec.broadcast_rounds.push(BroadcastRound {
                label: label.into(),
                t_s: t,
                sent: 0,
                expected: 0,
                delivered: 0,
                failed_requests: 1,
                fault_free,
            });
            return;
        };
        let (mut sent, mut expected, mut failed) = (0u64, 0u64, 0u64);
        let nodes: Vec<String> = self.truth.running().keys().cloned().collect();
        for n in &nodes {
            for g in &w.groups {
                let body = json!({"scope": w.scope, "group": g, "count": w.verify_broadcasts,
                                  "payload_bytes": w.payload_bytes});
                match self.post(n, "verify_broadcast", "/admin/probe/broadcast", body) {
                    Reply::Ok(b) => {
                        let s = b.get("sent").and_then(|v| v.as_u64()).unwrap_or(0);
                        sent += s;
                        expected += s * self.truth.distinct_members(g) as u64;
                    }
                    _ => failed += 1,
                }
            }
        }
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut delivered = 0;
        while Instant::now() < deadline {
            if let Some(now) = self.received_total() {
                delivered = now.saturating_sub(before);
                if delivered >= expected {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Let duplicates, if any, show up too.
        if let Some(now) = self.quiet_received(Duration::from_secs(3)) {
            delivered = now.saturating_sub(before);
        }
        self.say(format!("{label} broadcast round: {sent} broadcasts, {delivered}/{expected} deliveries"));
        self.rec.broadcast_rounds.push(BroadcastRound {
            label: label.into(),
            t_s: t,
            sent,
            expected,
            delivered,
            failed_requests: failed,
            fault_free,
        });
    }

    // ---- phases -------------------------------------------------------------------------------

    fn snapshot_recording(&self) -> Recording {
        let mut r = self.rec.clone();
        r.samples = self.shared.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.truth = self.truth.snapshot();
        r
    }

    fn wait_converged(&mut self, within: Duration, stable: usize, anchor: f64) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.reap_unexpected();
            let mut r = self.snapshot_recording();
            r.workload_end_s = anchor;
            r.chaos_start_s = anchor;
            // Only complete ticks: the current one may still be being sampled.
            let current = (self.now() / self.shared.period.as_secs_f64()) as u64;
            r.samples.retain(|s| s.tick + 1 < current);
            if invariants::convergence::settled(&r, stable) {
                return true;
            }
            self.progress.set_position((self.now() * 10.0) as u64);
            std::thread::sleep(self.shared.period / 2);
        }
        false
    }

    fn execute(&mut self) -> Result<(), RunError> {
        let sc = self.sc;
        self.progress.set_message("starting nodes");
        self.say(format!("scenario {}: {} nodes, seed {}", sc.name, sc.nodes, self.rec.seed));
        for i in 0..self.slots.len() {
            self.start_node(i)?;
        }
        let names: Vec<String> = self.slots.iter().map(|s| s.name.clone()).collect();
        let pending = self.wait_ready(&names, READY_TIMEOUT);
        if !pending.is_empty() {
            return Err(RunError::Setup(format!(
                "not ready within {} s: {}",
                READY_TIMEOUT.as_secs(),
                pending.join(", ")
            )));
        }
        self.detect_presence();
        self.start_samplers();
        self.progress.set_message("workload setup");
        self.setup_workload();
        let t = self.now();
        if !self.wait_converged(READY_TIMEOUT, 1, t) {
            let note = "the cluster had not converged before the chaos phase started".to_string();
            self.say(note.clone());
            self.rec.notes.push(note);
        }
        self.broadcast_round("baseline");

        // Chaos phase.
        self.progress.set_message("chaos phase");
        let t0 = Instant::now();
        self.rec.chaos_start_s = self.now();
        let base_s = self.rec.chaos_start_s;
        let mut events: Vec<(f64, bool, usize)> = Vec::new();
        for (i, f) in sc.faults.iter().enumerate() {
            events.push((f.at_s, false, i));
            if let Some(d) = f.for_s {
                events.push((f.at_s + d, true, i));
            }
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut next_event = 0;
        let w = sc.workload.clone();
        let mut acc = [0.0f64; 4];
        let rates = [w.broadcast_per_s, w.join_churn_per_s, w.names.churn_per_s, w.names.lookups_per_s];
        let mut last = Instant::now();
        let mut last_leader_check = Instant::now();
        while t0.elapsed().as_secs_f64() < sc.duration_s {
            let elapsed = t0.elapsed().as_secs_f64();
            while next_event < events.len() && events[next_event].0 <= elapsed {
                let (_, is_end, i) = events[next_event];
                next_event += 1;
                if is_end { self.end_fault(i)? } else { self.start_fault(i)? }
            }
            self.reap_unexpected();
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            if self.rec.ops.len() < MAX_OPS {
                let step_start = Instant::now();
                let mut issued = [0u32; 4];
                for (k, rate) in rates.iter().enumerate() {
                    acc[k] = (acc[k] + rate * dt).min(f64::from(MAX_OPS_PER_STEP));
                }
                // Round robin over the kinds, so requests that wait for their timeout in one kind
                // (Strong lookups without a leader) do not starve the others (the writes).
                let mut progressed = true;
                while progressed {
                    progressed = false;
                    for k in 0..rates.len() {
                        let fault_due = events.get(next_event).is_some_and(|e| e.0 <= t0.elapsed().as_secs_f64());
                        if fault_due || step_start.elapsed() > WORKLOAD_STEP_BUDGET {
                            progressed = false;
                            break;
                        }
                        if acc[k] < 1.0 || issued[k] >= MAX_OPS_PER_STEP {
                            continue;
                        }
                        acc[k] -= 1.0;
                        issued[k] += 1;
                        progressed = true;
                        match k {
                            0 => self.broadcast_one(),
                            1 => self.join_churn_one(),
                            2 => self.churn_names(),
                            _ => self.lookup(),
                        }
                    }
                }
                self.flood_step(dt);
            }
            if self.rec.presence.raft && last_leader_check.elapsed() > Duration::from_secs(2) {
                last_leader_check = Instant::now();
                self.last_leader = self.latest_leader();
            }
            self.progress.set_position(((self.now() - base_s).max(0.0) * 10.0) as u64);
            std::thread::sleep(STEP);
        }
        // Ends that fall exactly at duration_s.
        while next_event < events.len() {
            let (_, is_end, i) = events[next_event];
            next_event += 1;
            if is_end { self.end_fault(i)? } else { self.start_fault(i)? }
        }
        self.rec.workload_end_s = self.now();

        // Settle.
        self.progress.set_message("settling");
        self.say("workload stopped; settling".into());
        let anchor = self.snapshot_recording().convergence_anchor_s();
        let remaining = (anchor + sc.settle_s - self.now()).max(0.0) + self.shared.period.as_secs_f64();
        let settled = self.wait_converged(Duration::from_secs_f64(remaining), sc.stable_samples as usize, anchor);
        self.say(if settled { "settled".into() } else { "settle window over without convergence".into() });
        self.broadcast_round("final");
        Ok(())
    }

    fn latest_leader(&self) -> Option<String> {
        let samples = self.shared.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().rev().take(self.slots.len() * 2).find_map(|s| s.raft.as_ref().and_then(|r| r.leader.clone()))
    }

    /// Stop samplers, then every node (SIGTERM, SIGKILL after the grace).
    fn stop_all(&mut self) {
        self.progress.set_message("stopping");
        // The truth the views are judged against: the cluster as it was before the final stop.
        self.truth_at_stop = Some(self.truth.snapshot());
        self.shared.stop.store(true, Ordering::SeqCst);
        for h in self.samplers.drain(..) {
            let _ = h.join();
        }
        for i in 0..self.slots.len() {
            let Some(mut p) = self.slots[i].process.take() else { continue };
            let (status, own) = p.stop();
            let cause = match status {
                Some(s) if s.success() && own => EndCause::Stopped,
                Some(s) => EndCause::Died { status: format!("{} at the final SIGTERM", describe_status(s)) },
                None => EndCause::Died { status: "did not exit after SIGKILL".into() },
            };
            self.slots[i].process = Some(p);
            self.end_life(i, cause);
        }
        self.progress.finish_and_clear();
    }

    fn finish(&mut self) -> Recording {
        self.rec.end_s = self.now();
        self.rec.samples = std::mem::take(&mut *self.shared.samples.lock().unwrap_or_else(|p| p.into_inner()));
        let mut rec = std::mem::take(&mut self.rec);
        rec.truth = self.truth_at_stop.take().unwrap_or_default();
        rec
    }
}

/// The `/admin/faults` rules each node must hold for the active network faults (`nodes` is the
/// resolved node list of `isolate`, `drop` and `delay`). Partitions drop both ways on both sides;
/// an asymmetric fault drops on the senders' `out` and the receivers' `in`; drop and delay apply to
/// the listed nodes' outgoing packets only, so each packet meets exactly one such rule, and a delay
/// of `d +/- j` becomes the node's `delay_ms = d - j, jitter_ms = 2j`.
pub fn network_rules(all: &[String], active: &[(&FaultAction, &[String])]) -> BTreeMap<String, Vec<FaultRule>> {
    let mut rules: BTreeMap<String, Vec<FaultRule>> = all.iter().map(|n| (n.clone(), Vec::new())).collect();
    let rule = |peer: &str, dir: Direction, drop: f64, delay: u64, jitter: u64| {
        let mut r = FaultRule::new(peer, dir);
        r.drop = drop;
        r.delay_ms = delay;
        r.jitter_ms = jitter;
        r
    };
    for (action, nodes) in active {
        match action {
            FaultAction::Partition { sets } => {
                let set_of: BTreeMap<String, usize> =
                    sets.iter().enumerate().flat_map(|(i, s)| s.iter().map(move |n| (n.to_string(), i))).collect();
                for (x, sx) in &set_of {
                    for (y, sy) in &set_of {
                        if sx != sy {
                            rules.entry(x.clone()).or_default().push(rule(y, Direction::Both, 1.0, 0, 0));
                        }
                    }
                }
            }
            FaultAction::Isolate { .. } => {
                let Some(x) = nodes.first() else { continue };
                for y in all.iter().filter(|y| *y != x) {
                    rules.entry(x.clone()).or_default().push(rule(y, Direction::Both, 1.0, 0, 0));
                    rules.entry(y.clone()).or_default().push(rule(x, Direction::Both, 1.0, 0, 0));
                }
            }
            FaultAction::Asymmetric { from, to } => {
                for f in from {
                    for t in to {
                        let (f, t) = (f.to_string(), t.to_string());
                        rules.entry(f.clone()).or_default().push(rule(&t, Direction::Out, 1.0, 0, 0));
                        rules.entry(t.clone()).or_default().push(rule(&f, Direction::In, 1.0, 0, 0));
                    }
                }
            }
            FaultAction::Drop { probability, .. } => {
                for x in nodes.iter() {
                    for y in all.iter().filter(|y| *y != x) {
                        rules.entry(x.clone()).or_default().push(rule(y, Direction::Out, *probability, 0, 0));
                    }
                }
            }
            FaultAction::Delay { delay_ms, jitter_ms, .. } => {
                for x in nodes.iter() {
                    for y in all.iter().filter(|y| *y != x) {
                        let r = rule(y, Direction::Out, 0.0, delay_ms - jitter_ms, 2 * jitter_ms);
                        rules.entry(x.clone()).or_default().push(r);
                    }
                }
            }
            _ => {}
        }
    }
    rules
}

/// The nodes `follower` picks from, in node order: responsive, neither the fault's `leader` nor
/// one of its earlier picks, and, while there are such nodes, named by no active fault (so composed
/// faults hit different nodes).
fn follower_pool(
    responsive: &[String],
    leader: Option<&str>,
    taken: &[String],
    named: &BTreeSet<String>,
) -> Vec<String> {
    let candidates: Vec<String> =
        responsive.iter().filter(|n| Some(n.as_str()) != leader && !taken.contains(n)).cloned().collect();
    let idle: Vec<String> = candidates.iter().filter(|n| !named.contains(*n)).cloned().collect();
    if idle.is_empty() { candidates } else { idle }
}

/// The node pairs whose link drops every packet in at least one direction under `rules`, each
/// pair sorted, in order.
fn cut_pairs(rules: &BTreeMap<String, Vec<FaultRule>>) -> Vec<[String; 2]> {
    let mut cut: BTreeSet<[String; 2]> = BTreeSet::new();
    for (node, rules) in rules {
        for r in rules.iter().filter(|r| r.drop >= 1.0) {
            let mut pair = [node.clone(), r.peer.clone()];
            pair.sort();
            cut.insert(pair);
        }
    }
    cut.into_iter().collect()
}

/// Every node of a partition's sets, in order.
fn partition_nodes(sets: &[Vec<NodeRef>]) -> Vec<String> {
    sets.iter().flatten().map(|n| n.to_string()).collect()
}

fn outcome(r: &Reply) -> Outcome {
    match r {
        Reply::Ok(_) => Outcome::Applied,
        Reply::Refused { .. } => Outcome::Refused,
        Reply::NoAnswer(_) => Outcome::Unknown,
    }
}

fn leader_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("name").or_else(|| o.get("node")).and_then(|n| n.as_str()).map(str::to_string),
        _ => None,
    }
}

// ---- sampling ---------------------------------------------------------------------------------

fn sampler(shared: Arc<Shared>, admin: Admin, slot: usize, name: String) {
    let period = shared.period;
    let mut tick = (shared.origin.elapsed().as_secs_f64() / period.as_secs_f64()).ceil() as u64;
    // Each request gets most of a period; a paused node answers nothing and must not stall a tick.
    let timeout = (period * 8 / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let due = shared.origin + period * tick as u32;
        while Instant::now() < due {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let http = shared.slots.lock().unwrap_or_else(|p| p.into_inner())[slot].http.clone();
        let presence = shared.presence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let t_s = shared.now_s();
        let sample = match http {
            None => Sample { tick, t_s, node: name.clone(), error: Some("not running".into()), ..Default::default() },
            Some(base) => take_sample(&admin, &base, &name, tick, t_s, &presence, &shared, timeout),
        };
        {
            let mut samples = shared.samples.lock().unwrap_or_else(|p| p.into_inner());
            if samples.len() < MAX_SAMPLES {
                samples.push(sample);
            }
        }
        let now_tick = (shared.origin.elapsed().as_secs_f64() / period.as_secs_f64()).floor() as u64;
        tick = (tick + 1).max(now_tick + 1);
    }
}

#[allow(clippy::too_many_arguments)]
fn take_sample(
    admin: &Admin,
    base: &str,
    name: &str,
    tick: u64,
    t_s: f64,
    presence: &Presence,
    shared: &Shared,
    timeout: Duration,
) -> Sample {
    let mut s = Sample { tick, t_s, node: name.to_string(), ..Default::default() };
    match admin.get(base, "/admin/node", timeout) {
        Reply::Ok(b) => s.incarnation = b.get("incarnation").and_then(|v| v.as_u64()),
        other => {
            s.error = Some(match other {
                Reply::NoAnswer(e) => e,
                Reply::Refused { status, reason, .. } => format!("{status} {reason}"),
                Reply::Ok(_) => unreachable!(),
            });
            return s;
        }
    }
    if let Reply::Ok(b) = admin.get(base, "/admin/cluster/members", timeout) {
        s.members = b.get("members").and_then(|m| m.as_array()).map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some(MemberRow {
                        node: r.get("node")?.as_str()?.to_string(),
                        incarnation: r.get("incarnation")?.as_u64()?,
                        state: r.get("state")?.as_str()?.to_string(),
                    })
                })
                .collect()
        });
    }
    if !shared.groups.is_empty() {
        let mut groups = BTreeMap::new();
        let mut ok = true;
        for g in &shared.groups {
            match admin.get(base, &format!("/admin/pg/{}/groups/{g}", shared.scope), timeout) {
                Reply::Ok(b) => {
                    let pids = b
                        .get("members")
                        .and_then(|m| m.as_array())
                        .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    groups.insert(g.clone(), pids);
                }
                // The scope does not exist on this node yet: no member anywhere it knows of.
                r if r.is_not_found() => {
                    groups.insert(g.clone(), Vec::new());
                }
                _ => ok = false,
            }
        }
        if ok {
            s.groups = Some(groups);
        }
    }
    for (tier, present) in
        [("local", presence.local), ("eventual", presence.eventual), ("consistent", presence.consistent)]
    {
        let sample = if !present {
            TierSample::Absent
        } else {
            match admin.get(base, &format!("/admin/registry/{tier}"), timeout) {
                Reply::Ok(b) => TierSample::Names(parse_names(&b)),
                r if r.is_not_found() => TierSample::Absent,
                _ => TierSample::Unknown,
            }
        };
        match tier {
            "local" => s.local = sample,
            "eventual" => s.eventual = sample,
            _ => s.consistent = sample,
        }
    }
    if presence.raft
        && let Reply::Ok(b) = admin.get(base, "/admin/raft", timeout)
    {
        s.raft = Some(RaftSample {
            role: b.get("role").and_then(|v| v.as_str()).unwrap_or("").to_string(),
            term: b.get("term").and_then(|v| v.as_u64()).unwrap_or(0),
            leader: b.get("leader").and_then(leader_name),
            commit_index: b.get("commit_index").and_then(|v| v.as_u64()).unwrap_or(0),
            voters: b
                .get("voters")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        });
    }
    if presence.planes
        && let Reply::Ok(b) = admin.get(base, "/admin/planes", timeout)
    {
        s.planes = Some(b);
    }
    if let Reply::Ok(b) = admin.get(base, "/admin/transport", timeout) {
        let mut t = TransportSample::default();
        for p in b.get("peers").and_then(|p| p.as_array()).into_iter().flatten() {
            let peer = p.get("node").and_then(|n| n.as_str()).unwrap_or("?");
            for c in p.get("classes").and_then(|c| c.as_array()).into_iter().flatten() {
                let class = c.get("class").and_then(|n| n.as_str()).unwrap_or("?");
                let depth = c.get("depth").and_then(|v| v.as_u64()).unwrap_or(0);
                let capacity = c.get("capacity").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
                t.dropped_total += c.get("dropped").and_then(|v| v.as_u64()).unwrap_or(0);
                let key = format!("{peer}/{class}");
                let e = t.queues.entry(key).or_insert((0, capacity));
                e.0 = e.0.max(depth);
            }
        }
        s.transport = Some(t);
    }
    if let Ok(text) = admin.metrics(base, timeout) {
        s.rss_bytes = metric_sum(&text, "process_resident_memory_bytes").map(|v| v as u64);
        s.gossip_dropped = metric_sum(&text, "cohort_gossip_dropped_total").map(|v| v as u64);
    }
    if let Reply::Ok(b) = admin.get(base, "/admin/probe/stats", timeout) {
        s.probe_received = b.get("received_total").and_then(|v| v.as_u64());
    }
    s
}

fn parse_names(b: &Value) -> Vec<NameRow> {
    let mut rows: Vec<NameRow> = b
        .get("names")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(NameRow {
                name: r.get("name")?.as_str()?.to_string(),
                pid: r.get("pid")?.as_str()?.to_string(),
                fence_token: r.get("fence_token").and_then(|t| t.as_u64()),
            })
        })
        .collect();
    rows.sort();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partition_rules_drop_both_ways_between_sets_only() {
        let all = n(&["node-1", "node-2", "node-3"]);
        let p =
            FaultAction::Partition { sets: vec![vec![NodeRef::Index(1)], vec![NodeRef::Index(2), NodeRef::Index(3)]] };
        let rules = network_rules(&all, &[(&p, &[])]);
        let peers = |node: &str| rules[node].iter().map(|r| (r.peer.clone(), r.direction, r.drop)).collect::<Vec<_>>();
        assert_eq!(
            peers("node-1"),
            vec![("node-2".into(), Direction::Both, 1.0), ("node-3".into(), Direction::Both, 1.0)]
        );
        assert_eq!(peers("node-2"), vec![("node-1".into(), Direction::Both, 1.0)]);
        assert_eq!(peers("node-3"), vec![("node-1".into(), Direction::Both, 1.0)]);
    }

    #[test]
    fn asymmetric_rules_cut_one_direction_on_both_ends() {
        let all = n(&["node-1", "node-2"]);
        let a = FaultAction::Asymmetric { from: vec![NodeRef::Index(1)], to: vec![NodeRef::Index(2)] };
        let rules = network_rules(&all, &[(&a, &[])]);
        assert_eq!(rules["node-1"].len(), 1);
        assert_eq!(rules["node-1"][0].direction, Direction::Out);
        assert_eq!(rules["node-2"][0].direction, Direction::In);
        assert_eq!(rules["node-2"][0].peer, "node-1");
    }

    #[test]
    fn delay_and_drop_apply_to_outgoing_packets_once() {
        let all = n(&["node-1", "node-2", "node-3"]);
        let d = FaultAction::Delay { delay_ms: 200, jitter_ms: 100, nodes: vec![] };
        let listed = n(&["node-2"]);
        let rules = network_rules(&all, &[(&d, listed.as_slice())]);
        assert!(rules["node-1"].is_empty() && rules["node-3"].is_empty());
        assert_eq!(rules["node-2"].len(), 2);
        for r in &rules["node-2"] {
            assert_eq!((r.direction, r.delay_ms, r.jitter_ms, r.drop), (Direction::Out, 100, 200, 0.0));
        }
        let isolate = FaultAction::Isolate { node: NodeRef::Leader };
        let rules = network_rules(&all, &[(&isolate, listed.as_slice())]);
        assert_eq!(rules["node-2"].len(), 2);
        assert_eq!(rules["node-1"].len(), 1);
        // Every rule set is one the node accepts.
        for r in rules.values() {
            FaultRules { rules: r.clone() }.validate().unwrap();
        }
    }

    #[test]
    fn follower_pool_avoids_the_leader_earlier_picks_and_busy_nodes_while_it_can() {
        let up = n(&["node-1", "node-2", "node-3", "node-4"]);
        let busy: BTreeSet<String> = n(&["node-2"]).into_iter().collect();
        let pool = follower_pool(&up, Some("node-1"), &n(&["node-3"]), &busy);
        assert_eq!(pool, n(&["node-4"]));
        // Every candidate busy: any candidate will do.
        let busy: BTreeSet<String> = n(&["node-2", "node-4"]).into_iter().collect();
        assert_eq!(follower_pool(&up, Some("node-1"), &n(&["node-3"]), &busy), n(&["node-2", "node-4"]));
        assert!(follower_pool(&n(&["node-1"]), Some("node-1"), &[], &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_resolved_partition_with_an_isolated_node_cuts_the_pairs_between_sides() {
        let all = n(&["node-1", "node-2", "node-3", "node-4"]);
        let p = FaultAction::Partition {
            sets: vec![vec![NodeRef::Index(1), NodeRef::Index(2)], vec![NodeRef::Index(3), NodeRef::Index(4)]],
        };
        let isolate = FaultAction::Isolate { node: NodeRef::Follower };
        let resolved = n(&["node-4"]);
        let cut = cut_pairs(&network_rules(&all, &[(&p, &[]), (&isolate, resolved.as_slice())]));
        let expected: Vec<[String; 2]> = [
            ("node-1", "node-3"),
            ("node-1", "node-4"),
            ("node-2", "node-3"),
            ("node-2", "node-4"),
            ("node-3", "node-4"),
        ]
        .iter()
        .map(|(a, b)| [a.to_string(), b.to_string()])
        .collect();
        assert_eq!(cut, expected);
        // A one-way loss cuts the pair too; a lossy link does not.
        let a = FaultAction::Asymmetric { from: vec![NodeRef::Index(1)], to: vec![NodeRef::Index(2)] };
        let d = FaultAction::Drop { probability: 0.3, nodes: vec![] };
        let cut = cut_pairs(&network_rules(&all, &[(&a, &[]), (&d, all.as_slice())]));
        assert_eq!(cut, vec![["node-1".to_string(), "node-2".to_string()]]);
    }

    #[test]
    fn names_parse_with_and_without_tokens() {
        let rows = parse_names(&json!({"names":[
            {"name":"b","pid":"<n.1.2>"},
            {"name":"a","pid":"<n.1.1>","fence_token":7},
            {"name":"bad"}
        ]}));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "a");
        assert_eq!(rows[0].fence_token, Some(7));
        assert_eq!(rows[1].fence_token, None);
    }

    #[test]
    fn leader_field_accepts_a_name_or_an_object() {
        assert_eq!(leader_name(&json!("node-2")), Some("node-2".into()));
        assert_eq!(leader_name(&json!({"node":"node-3","incarnation":4})), Some("node-3".into()));
        assert_eq!(leader_name(&json!(null)), None);
        assert_eq!(leader_name(&json!("")), None);
    }

    #[test]
    fn node_count_override_revalidates_the_schedule() {
        let text = "name = \"t\"\nnodes = 3\nduration_s = 10\nsettle_s = 5\n[[faults]]\nat_s = 1\nfor_s = 2\naction = \"kill\"\nnode = \"node-3\"\n";
        assert_eq!(with_node_count(text, 5).unwrap().nodes, 5);
        let err = with_node_count(text, 2).unwrap_err();
        assert!(err.to_string().contains("node-3"), "{err}");
    }
}
