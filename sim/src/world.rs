//! The simulated world: nodes, the event queue on a virtual clock, the nemesis, the workload.
//!
//! One run: warm-up (node 0 bootstraps the raft group, the others join as learners and are
//! promoted by the voter ladder), the nemesis from [`WARMUP`] until [`COOLDOWN`] before the end,
//! then everything heals (crashed nodes restart, paused ones resume) and the cluster must
//! converge. Clients stop [`CLIENT_STOP_BEFORE_END`] before the end.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_actors::Pid;
use cohort_chaos::invariants::linearizability::{Input, Output as LinOutput};
use cohort_cluster::member::{MemberAddrs, MemberInfo, MemberView};
use cohort_cluster::queue::{Class, ClassCapacities, PushOutcome, QueueConfig};
use cohort_cluster::{MemberState, NodeId};
use cohort_registry::consistent::core::ELECTION_TICKS;
use cohort_registry::consistent::driver::{Driver, Output};
use cohort_registry::consistent::fsm::{Command, CommandResult, FsmMutation, Proposal, RequestId};
use cohort_registry::consistent::ladder::{self, LadderRule};
use cohort_registry::consistent::metrics::ConsistentMetrics;
use cohort_registry::consistent::service::{ConsistentConfig, open_core};
use cohort_registry::consistent::storage::MemoryBackend;
use cohort_registry::consistent::{Freshness, ReadRequest};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::check::{self, OpKind, Recorded, Topology};

#[path = "world_eventual.rs"]
mod eventual;
#[path = "world_pg.rs"]
mod pg;
#[path = "world_swim.rs"]
mod swim;
use crate::links::{Lane, Links, Queued};
use crate::nemesis::{self, Fault, FaultProfile, Planned, Target};
use crate::net::{Net, NetStats};

/// Most nodes a run simulates.
pub const MAX_NODES: usize = 9;
/// Shortest run: warm-up, some faults, cool-down.
pub const MIN_DURATION: Duration = Duration::from_secs(40);
/// The nemesis starts after this (the cluster forms first).
pub const WARMUP: Duration = Duration::from_secs(15);
/// Everything heals this long before the end.
pub const COOLDOWN: Duration = Duration::from_secs(20);
/// Clients stop this long before the end (the last writes settle).
pub const CLIENT_STOP_BEFORE_END: Duration = Duration::from_secs(3);
/// Membership heartbeat period.
const PING_INTERVAL_US: u64 = 250_000;
/// Silence after which a member is suspect.
const SUSPECT_AFTER_US: u64 = 1_000_000;
/// Silence after which a member is down.
const DOWN_AFTER_US: u64 = 3_000_000;
/// Frame kind of a membership heartbeat (not a raft-class kind).
const KIND_PING: u8 = 200;
/// Names the clients use (few, so that they contend).
const NAMES: usize = 6;
/// Pids per node incarnation that register names.
const PIDS_PER_NODE: u64 = 2;
/// Client think time between two operations of one node, in µs.
const CLIENT_GAP_US: (u64, u64) = (150_000, 600_000);
/// Extra ticks run at once after a clock jump (the timer wheel catching up), at most.
const MAX_CATCH_UP_TICKS: u64 = 100;
/// Events one run may process: a simulator bug that schedules an event for ever at the same
/// instant ends the run with a failed `sim_bounded` verdict instead of hanging (a healthy 9-node
/// minute is about 60,000 events).
const MAX_EVENTS: u64 = 20_000_000;
/// Trace lines kept (beyond them only the hash goes on).
const MAX_TRACE_LINES: usize = 2_000_000;

/// Which membership the simulated nodes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MembershipModel {
    /// The production SWIM code (`MembershipDriver`: foca, joins, suspicion, health).
    #[default]
    Swim,
    /// A heartbeat failure detector (alive, suspect after 1 s of silence, down after 3 s): the
    /// simulator's first model, kept because the regression seeds of the defects it found were
    /// found with it.
    Heartbeat,
}

impl std::str::FromStr for MembershipModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "swim" => Ok(Self::Swim),
            "heartbeat" => Ok(Self::Heartbeat),
            other => Err(format!("unknown membership model {other:?} (swim, heartbeat)")),
        }
    }
}

impl std::fmt::Display for MembershipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Swim => "swim",
            Self::Heartbeat => "heartbeat",
        })
    }
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: every random choice of the run comes from it.
    pub seed: u64,
    /// Nodes (1..=[`MAX_NODES`]).
    pub nodes: usize,
    /// Simulated duration (at least [`MIN_DURATION`]).
    pub duration: Duration,
    /// Which faults the nemesis composes. The default stays `composed` (the stored regression
    /// seeds of `sim/tests/seeds.rs` replay with it); `cohort sim` defaults to `all`.
    pub faults: FaultProfile,
    /// Which membership the nodes run.
    pub membership: MembershipModel,
    /// Whether the nodes run pg (a scope joined and left by the clients). Off gives the workload
    /// of the simulator before pg was added, which the regression seeds found before it replay.
    pub pg: bool,
    /// The voter ladder's rule (test-only switch: [`LadderRule::LiveMembers`] is the rule of
    /// before issue 11, kept to show that the simulator finds its loss of availability).
    pub ladder_rule: LadderRule,
    /// Keep every event in [`SimReport::trace`] (otherwise only the nemesis's lines).
    pub full_trace: bool,
    /// Test-only: a deliberate FSM defect, to prove the checkers catch a broken build.
    #[doc(hidden)]
    pub fsm_mutation: Option<FsmMutation>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            nodes: 5,
            duration: Duration::from_secs(60),
            faults: FaultProfile::Composed,
            membership: MembershipModel::Swim,
            pg: true,
            ladder_rule: LadderRule::Autopilot,
            full_trace: false,
            fsm_mutation: None,
        }
    }
}

/// A checker's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Held.
    Pass,
    /// Violated.
    Fail,
    /// Could not decide (the linearizability search ran out of budget): not a pass, not a fail.
    Inconclusive,
}

/// One checker's verdict with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The invariant (SPEC vocabulary, as in the chaos suite).
    pub name: &'static str,
    /// Held or not.
    pub status: Status,
    /// Evidence or what was checked.
    pub detail: String,
}

/// What the run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// The network's counters.
    pub net: NetStats,
    /// The transport class queues' counters.
    pub queues: crate::links::LinkStats,
    /// Faults started.
    pub faults: u64,
    /// Crashes (restarts follow).
    pub crashes: u64,
    /// Graceful leaves (`all`; a rejoin with a new incarnation follows).
    pub leaves: u64,
    /// Spare nodes that joined the running cluster (`all`).
    pub joins: u64,
    /// Client writes answered with a committed result.
    pub writes_ok: u64,
    /// Client writes refused or timed out.
    pub writes_failed: u64,
    /// `Strong` reads answered.
    pub reads_ok: u64,
    /// `Strong` reads refused.
    pub reads_refused: u64,
    /// Eventual-tier registrations and unregistrations accepted locally.
    pub eventual_writes_ok: u64,
    /// Eventual registrations that lost their name in a merge (revoked once).
    pub eventual_revoked: u64,
    /// pg joins and leaves accepted locally.
    pub pg_writes_ok: u64,
    /// Frames a node could not decode (none are expected: the simulator sends only what a
    /// driver encoded).
    pub malformed: u64,
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The configuration it ran.
    pub config: SimConfig,
    /// One per checker.
    pub verdicts: Vec<Verdict>,
    /// A hash of every event and its inputs: equal for equal configurations.
    pub trace_hash: u64,
    /// The nemesis's lines, or every event with [`SimConfig::full_trace`].
    pub trace: Vec<String>,
    /// Counters.
    pub stats: SimStats,
}

impl SimReport {
    /// Whether no checker failed.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.status != Status::Fail)
    }

    /// One line: seed, verdict, the failed checkers.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self
            .verdicts
            .iter()
            .filter(|v| v.status == Status::Fail)
            .map(|v| format!("{}: {}", v.name, v.detail))
            .collect();
        let inconclusive = self.verdicts.iter().filter(|v| v.status == Status::Inconclusive).count();
        format!(
            "seed {} {} nodes={} faults={} events={} writes_ok={} reads_ok={} crashes={}{} trace={:016x}{}{}",
            self.config.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.config.nodes,
            self.stats.faults,
            self.stats.events,
            self.stats.writes_ok,
            self.stats.reads_ok,
            self.stats.crashes,
            if self.config.faults == FaultProfile::All {
                format!(
                    " leaves={} joins={} queue_drops={}",
                    self.stats.leaves,
                    self.stats.joins,
                    self.stats.queues.dropped_oldest + self.stats.queues.dropped_newest
                )
            } else {
                String::new()
            },
            self.trace_hash,
            if inconclusive > 0 { format!(" inconclusive={inconclusive}") } else { String::new() },
            if failed.is_empty() { String::new() } else { format!(" | {}", failed.join(" | ")) },
        )
    }
}

enum Ev {
    Deliver {
        to: usize,
        inc: u64,
        from: NodeId,
        kind: u8,
        payload: Bytes,
    },
    Tick {
        node: usize,
        inc: u64,
    },
    Ping {
        node: usize,
        inc: u64,
    },
    Client {
        node: usize,
        inc: u64,
    },
    Swim {
        node: usize,
        inc: u64,
        at: u64,
    },
    FaultStart(Planned),
    FaultEnd(u64),
    FinalHeal,
    StableCheck,
    /// A link's writer is done with the frame it took (congestion).
    LinkWake {
        from: usize,
        to: usize,
        lane: Lane,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What an active fault holds, to undo it.
enum Hold {
    Net,
    Crash(usize),
    Pause(usize),
    Leave(usize),
    Congest,
}

struct SimNode {
    /// Part of the cluster: started at the beginning, or a spare that joined (`all`).
    member: bool,
    /// Started at least once (the first start bootstraps node 0 and keeps incarnation 1).
    booted: bool,
    name: String,
    id: NodeId,
    raft_id: u64,
    /// The durable raft log: survives a crash.
    disk: MemoryBackend,
    driver: Option<Driver<usize, usize>>,
    /// Faults holding the node crashed / paused.
    crash_holds: BTreeSet<u64>,
    pause_holds: BTreeSet<u64>,
    /// Faults holding the node out of the cluster after a graceful leave (`all`).
    leave_holds: BTreeSet<u64>,
    /// How far the node's clock is ahead of the world's.
    offset: Duration,
    /// Membership: per peer name, its latest incarnation and when it was last heard (node time).
    heard: BTreeMap<String, (NodeId, u64)>,
    /// Events that arrived while the node was paused, in order: run when it resumes.
    deferred: Vec<Ev>,
    /// The registry as this node last applied it (kept for the full trace only).
    applied: BTreeMap<String, String>,
    /// The eventual tier (lost on a crash).
    eventual: eventual::EventualSide,
    /// SWIM membership (lost on a crash).
    swim: swim::SwimSide,
    /// The pg scope (lost on a crash).
    pg: pg::PgSide,
}

impl SimNode {
    fn running(&self) -> bool {
        self.driver.is_some()
    }
    fn paused(&self) -> bool {
        !self.pause_holds.is_empty()
    }
    fn up(&self) -> bool {
        self.running() && !self.paused()
    }
    /// Whether a fault holds the node stopped (crashed or left).
    fn held_down(&self) -> bool {
        !self.crash_holds.is_empty() || !self.leave_holds.is_empty()
    }
}

struct World {
    cfg: SimConfig,
    base: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    rng: StdRng,
    net: Net,
    links: Links,
    nodes: Vec<SimNode>,
    holds: BTreeMap<u64, Hold>,
    next_fault: u64,
    ops: Vec<Recorded>,
    topology: Vec<Topology>,
    stable_voters: Vec<(u64, BTreeSet<usize>)>,
    /// Graceful leaves (µs, node): an operator's removal, not a fault (the availability checker
    /// does not judge across one).
    leaves_at: Vec<(u64, usize)>,
    formed: Option<String>,
    hasher: DefaultHasher,
    trace: Vec<String>,
    stats: SimStats,
    client_stop: u64,
    /// When, after the clients stopped, every node first held the same eventual names.
    eventual_converged_at: Option<u64>,
    /// When, after the clients stopped, every node first saw the same pg members.
    pg_converged_at: Option<u64>,
    /// Set when the run hit [`MAX_EVENTS`] (at that simulated instant).
    runaway: Option<u64>,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn consistent_config(bootstrap: bool) -> ConsistentConfig {
    ConsistentConfig { bootstrap, ..ConsistentConfig::default() }
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut cfg = cfg.clone();
    cfg.nodes = cfg.nodes.clamp(1, MAX_NODES);
    cfg.duration = cfg.duration.max(MIN_DURATION);
    let mut world = World::new(cfg);
    world.start();
    world.run_until(us(world.cfg.duration));
    world.finish()
}

impl World {
    fn new(cfg: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        let spares = if cfg.faults == FaultProfile::All { nemesis::CHURN_SPARES } else { 0 };
        let nodes = (0..cfg.nodes + spares)
            .map(|i| {
                let name = format!("n{i}");
                let id = NodeId::new(name.clone(), 1);
                SimNode {
                    member: i < cfg.nodes,
                    booted: false,
                    raft_id: ladder::raft_id_for(&id),
                    name,
                    id,
                    disk: MemoryBackend::new(),
                    driver: None,
                    crash_holds: BTreeSet::new(),
                    pause_holds: BTreeSet::new(),
                    leave_holds: BTreeSet::new(),
                    offset: Duration::ZERO,
                    heard: BTreeMap::new(),
                    deferred: Vec::new(),
                    applied: BTreeMap::new(),
                    eventual: eventual::EventualSide::default(),
                    swim: swim::SwimSide::default(),
                    pg: pg::PgSide::default(),
                }
            })
            .collect();
        let client_stop = us(cfg.duration.saturating_sub(CLIENT_STOP_BEFORE_END));
        let links = Links::new(queue_config(&cfg));
        Self {
            cfg,
            base: Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            net: Net::default(),
            links,
            nodes,
            holds: BTreeMap::new(),
            next_fault: 1,
            ops: Vec::new(),
            topology: Vec::new(),
            stable_voters: Vec::new(),
            leaves_at: Vec::new(),
            formed: None,
            hasher: DefaultHasher::new(),
            trace: Vec::new(),
            stats: SimStats::default(),
            client_stop,
            eventual_converged_at: None,
            pg_converged_at: None,
            runaway: None,
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, ev }));
    }

    fn line(&mut self, always: bool, text: impl FnOnce() -> String) {
        if (always || self.cfg.full_trace) && self.trace.len() < MAX_TRACE_LINES {
            let t = self.now as f64 / 1e6;
            self.trace.push(format!("{t:10.6} {}", text()));
        }
    }

    fn node_now(&self, i: usize) -> Instant {
        self.base + Duration::from_micros(self.now) + self.nodes[i].offset
    }

    fn start(&mut self) {
        let mut nemesis_rng = StdRng::seed_from_u64(self.cfg.seed ^ 0x6e65_6d65_7369_7321);
        let end = self.cfg.duration.saturating_sub(COOLDOWN);
        let plan = nemesis::plan(&mut nemesis_rng, self.cfg.faults, self.cfg.nodes, WARMUP, end);
        for planned in plan {
            self.schedule(us(planned.at), Ev::FaultStart(planned));
        }
        self.schedule(us(end), Ev::FinalHeal);
        self.schedule(us(WARMUP) - 1, Ev::StableCheck);
        for i in 0..self.cfg.nodes {
            self.boot(i);
        }
    }

    /// Starts node `i` (first boot or restart after a crash) from its durable log.
    fn boot(&mut self, i: usize) {
        let first = !self.nodes[i].booted;
        self.nodes[i].booted = true;
        if !first {
            let next = self.nodes[i].id.incarnation + 1;
            self.nodes[i].id = NodeId::new(self.nodes[i].name.clone(), next);
        }
        let local = self.nodes[i].id.clone();
        let config = consistent_config(i == 0 && first);
        let election = ELECTION_TICKS;
        let timeout = election + self.rng.random_range(0..election);
        let backend = Box::new(self.nodes[i].disk.clone());
        let mutation = self.cfg.fsm_mutation;
        let tune = |core: &mut cohort_registry::consistent::core::CoreConfig| {
            core.election_timeout_ticks = Some(timeout);
            core.fsm_limits.mutation = mutation;
        };
        let (core, _) = match open_core(backend, &local, &config, tune) {
            Ok(opened) => opened,
            Err(error) => {
                self.line(true, || format!("node {} could not start: {error}", local.name));
                return;
            }
        };
        self.nodes[i].raft_id = core.raft_id();
        let metrics = ConsistentMetrics::register(&prometheus::Registry::new()).expect("fresh registry");
        let now = self.node_now(i);
        let mut driver = Driver::new(now, core, local.clone(), config, metrics, Arc::new(AtomicU64::new(1)));
        driver.set_ladder_rule(self.cfg.ladder_rule);
        self.nodes[i].driver = Some(driver);
        self.eventual_boot(i, now);
        if self.cfg.pg {
            self.pg_boot(i);
        }
        self.nodes[i].heard.clear();
        let inc = local.incarnation;
        let tick_phase = self.rng.random_range(0..100_000);
        self.schedule(self.now + tick_phase, Ev::Tick { node: i, inc });
        match self.cfg.membership {
            MembershipModel::Heartbeat => {
                let ping_phase = self.rng.random_range(0..PING_INTERVAL_US);
                self.schedule(self.now + ping_phase, Ev::Ping { node: i, inc });
            }
            MembershipModel::Swim => self.swim_boot(i),
        }
        let client_phase = self.rng.random_range(CLIENT_GAP_US.0..CLIENT_GAP_US.1);
        self.schedule(self.now + client_phase, Ev::Client { node: i, inc });
        let raft_id = self.nodes[i].raft_id;
        self.line(true, || format!("boot {local} raft_id={raft_id:016x} election_timeout={timeout}"));
        self.after_input(i);
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > end {
                break;
            }
            if self.stats.events >= MAX_EVENTS {
                self.runaway = Some(self.now);
                break;
            }
            let Some(Reverse(Scheduled { at, ev, .. })) = self.queue.pop() else { break };
            self.now = at;
            self.stats.events += 1;
            self.handle(ev);
        }
        self.now = end;
    }

    /// The node an event is for, if it is paused or gone: deferred to its resume, or dropped.
    /// Membership events (`swim`) also reach a node that is leaving: its services stopped, its
    /// membership lingers to gossip the leave.
    fn target_state(&self, node: usize, inc: u64, swim: bool) -> Option<bool> {
        let n = &self.nodes[node];
        let alive = n.running() || (swim && n.swim.driver.is_some());
        if !alive || n.id.incarnation != inc {
            return None;
        }
        Some(n.paused())
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, inc, from, kind, payload } => {
                let from_index = self.index_of(&from.name);
                match self.target_state(to, inc, kind == swim::KIND_SWIM) {
                    None => {}
                    Some(true) => self.nodes[to].deferred.push(Ev::Deliver { to, inc, from, kind, payload }),
                    Some(false) => {
                        if from_index.is_some_and(|f| self.net.is_cut(f, to)) {
                            self.stats.net.dropped_cut += 1;
                            return;
                        }
                        (self.now, 1u8, to, inc, &from, kind, &payload[..]).hash(&mut self.hasher);
                        self.line(false, || format!("deliver {} -> n{to} kind={kind} len={}", from, payload.len()));
                        self.deliver(to, from, kind, payload);
                    }
                }
            }
            Ev::Tick { node, inc } => match self.target_state(node, inc, false) {
                None => {}
                Some(true) => self.nodes[node].deferred.push(Ev::Tick { node, inc }),
                Some(false) => {
                    (self.now, 2u8, node, inc).hash(&mut self.hasher);
                    self.tick(node);
                    let tick = us(consistent_config(false).tick);
                    self.schedule(self.now + tick, Ev::Tick { node, inc });
                }
            },
            Ev::Ping { node, inc } => match self.target_state(node, inc, false) {
                None => {}
                Some(true) => self.nodes[node].deferred.push(Ev::Ping { node, inc }),
                Some(false) => {
                    (self.now, 3u8, node, inc).hash(&mut self.hasher);
                    self.ping(node);
                    self.schedule(self.now + PING_INTERVAL_US, Ev::Ping { node, inc });
                }
            },
            Ev::Client { node, inc } => match self.target_state(node, inc, false) {
                None => {}
                Some(true) => self.nodes[node].deferred.push(Ev::Client { node, inc }),
                Some(false) if self.now < self.client_stop => {
                    (self.now, 4u8, node, inc).hash(&mut self.hasher);
                    self.client(node);
                    let gap = self.rng.random_range(CLIENT_GAP_US.0..CLIENT_GAP_US.1);
                    self.schedule(self.now + gap, Ev::Client { node, inc });
                }
                Some(false) => {}
            },
            Ev::Swim { node, inc, at } => match self.target_state(node, inc, true) {
                None => {}
                Some(true) => self.nodes[node].deferred.push(Ev::Swim { node, inc, at }),
                Some(false) => {
                    (self.now, 10u8, node, inc).hash(&mut self.hasher);
                    self.swim_wake(node, at);
                }
            },
            Ev::FaultStart(planned) => self.fault_start(planned),
            Ev::FaultEnd(id) => self.fault_end(id),
            Ev::FinalHeal => self.final_heal(),
            Ev::StableCheck => self.stable_check(),
            Ev::LinkWake { from, to, lane } => self.pump(from, to, lane),
        }
    }

    /// Node `i` resumes: what waited for it runs now, in the order it arrived. Its failure
    /// detector starts its timers over (as foca's probe cycle does after a pause: a member is
    /// suspected only after a probe of it went unanswered, never for the time the observer
    /// itself was stopped).
    fn resume(&mut self, i: usize) {
        let now = us(self.node_now(i) - self.base);
        for (_, at) in self.nodes[i].heard.values_mut() {
            *at = (*at).max(now);
        }
        for ev in std::mem::take(&mut self.nodes[i].deferred) {
            self.schedule(self.now, ev);
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n').and_then(|i| i.parse::<usize>().ok()).filter(|i| *i < self.nodes.len())
    }

    fn deliver(&mut self, to: usize, from: NodeId, kind: u8, payload: Bytes) {
        if kind == KIND_PING {
            let heard_at = us(self.node_now(to) - self.base);
            let entry = self.nodes[to].heard.entry(from.name.clone()).or_insert((from.clone(), heard_at));
            if from.incarnation >= entry.0.incarnation {
                *entry = (from, heard_at);
            }
            return;
        }
        if kind == swim::KIND_SWIM {
            if let Some(from_index) = self.index_of(&from.name) {
                self.swim_deliver(to, from_index, &payload);
            }
            return;
        }
        if kind == pg::KIND_PG {
            return self.pg_deliver(to, &from, &payload);
        }
        if kind >= eventual::KIND_EVENTUAL_BASE {
            return self.eventual_deliver(to, &from, kind, &payload);
        }
        let now = self.node_now(to);
        if let Some(driver) = self.nodes[to].driver.as_mut() {
            driver.handle_frame(now, &from, kind, &payload);
        }
        self.after_input(to);
    }

    fn members(&self, i: usize) -> Arc<Vec<MemberView>> {
        if self.cfg.membership == MembershipModel::Swim {
            return Arc::new(self.swim_members(i));
        }
        let node = &self.nodes[i];
        let now = us(self.node_now(i) - self.base);
        let info = |id: &NodeId| MemberInfo {
            id: id.clone(),
            addrs: MemberAddrs { gossip: addr(), internode: addr(), http: addr() },
            raft_eligible: true,
            failure_domain: String::new(),
        };
        let mut rows = vec![MemberView { info: info(&node.id), state: MemberState::Alive, is_self: true }];
        for (id, at) in node.heard.values() {
            let silence = now.saturating_sub(*at);
            let state = if silence < SUSPECT_AFTER_US {
                MemberState::Alive
            } else if silence < DOWN_AFTER_US {
                MemberState::Suspect
            } else {
                MemberState::Down
            };
            rows.push(MemberView { info: info(id), state, is_self: false });
        }
        Arc::new(rows)
    }

    fn tick(&mut self, i: usize) {
        let members = self.members(i);
        let now = self.node_now(i);
        if let Some(driver) = self.nodes[i].driver.as_mut() {
            driver.handle_members(members.clone());
            driver.handle_tick(now);
        }
        self.after_input(i);
        self.eventual_tick(i, &members);
        self.eventual_watch();
        self.pg_tick(i, &members);
        self.pg_watch();
    }

    fn ping(&mut self, i: usize) {
        let from = self.nodes[i].id.clone();
        for j in 0..self.nodes.len() {
            if j != i {
                self.send(i, j, from.clone(), KIND_PING, Bytes::new());
            }
        }
    }

    /// Sends a frame: membership datagrams straight onto the network, everything else through
    /// the transport's class queue of its service. False when a full queue dropped it (the
    /// sender is told, as the transport tells its caller).
    fn send(&mut self, from_index: usize, to: usize, from: NodeId, kind: u8, payload: Bytes) -> bool {
        let inc = self.nodes[to].id.incarnation;
        let Some(class) = class_of(kind) else {
            self.route(self.now, from_index, to, Queued { kind, from, to_inc: inc, payload });
            return true;
        };
        let outcome = self.links.push(from_index, to, class, Queued { kind, from, to_inc: inc, payload });
        self.pump(from_index, to, Lane::of(class));
        !matches!(outcome, PushOutcome::DroppedNewest(_) | PushOutcome::Refused(_))
    }

    /// The writer of one link: what it puts on the wire goes onto the network.
    fn pump(&mut self, from: usize, to: usize, lane: Lane) {
        let (frames, wake) = self.links.pump(self.now, from, to, lane);
        for (at, frame) in frames {
            self.route(at, from, to, frame);
        }
        if let Some(at) = wake {
            self.schedule(at, Ev::LinkWake { from, to, lane });
        }
    }

    /// One frame onto the network at `at`.
    fn route(&mut self, at: u64, from_index: usize, to: usize, frame: Queued) {
        let Queued { kind, from, to_inc, payload } = frame;
        for t in self.net.route(&mut self.rng, at, from_index, to) {
            self.schedule(t, Ev::Deliver { to, inc: to_inc, from: from.clone(), kind, payload: payload.clone() });
        }
    }

    /// One raft `Ready` of node `i`, then its outputs.
    fn after_input(&mut self, i: usize) {
        let now = self.node_now(i);
        let Some(driver) = self.nodes[i].driver.as_mut() else { return };
        if let Err(error) = driver.handle_ready(now) {
            let name = self.nodes[i].name.clone();
            self.line(true, || format!("{name}: raft storage failed: {error}; the node stops"));
            self.nodes[i].driver = None;
            self.links.clear_node(i);
            return;
        }
        if self.cfg.full_trace {
            self.trace_applied(i);
        }
        let mut outputs = Vec::new();
        while let Some(output) = self.nodes[i].driver.as_mut().and_then(Driver::poll_output) {
            outputs.push(output);
        }
        let from = self.nodes[i].id.clone();
        for output in outputs {
            match output {
                Output::Transmit { to, kind, payload, unsent } => match self.index_of(&to) {
                    Some(j) if j != i => {
                        // raft drops its oldest when full: a new frame is always queued.
                        self.send(i, j, from.clone(), kind, payload);
                    }
                    _ => {
                        if let Some(driver) = self.nodes[i].driver.as_mut() {
                            driver.handle_unsent(unsent);
                        }
                    }
                },
                Output::Written { reply, result } => self.answer_write(reply, result),
                Output::Read { reply, result } => self.answer_read(reply, result),
            }
        }
    }

    /// Full trace: what node `i` applied since the last look (names set and removed).
    fn trace_applied(&mut self, i: usize) {
        let Some(driver) = self.nodes[i].driver.as_ref() else { return };
        let index = driver.core().stats().applied_index;
        let now: BTreeMap<String, String> = driver
            .core()
            .fsm()
            .names()
            .map(|(n, r)| (n.to_string(), format!("{} token {}", r.pid, r.fence_token)))
            .collect();
        let old = std::mem::replace(&mut self.nodes[i].applied, now.clone());
        let mut lines = Vec::new();
        for (name, owner) in &now {
            if old.get(name) != Some(owner) {
                lines.push(format!("n{i} applied {index}: {name} = {owner}"));
            }
        }
        for name in old.keys().filter(|n| !now.contains_key(*n)) {
            lines.push(format!("n{i} applied {index}: {name} removed"));
        }
        for line in lines {
            self.line(false, || line);
        }
    }

    fn pid(&self, i: usize, local: u64) -> Pid {
        Pid::new(self.nodes[i].id.clone(), local)
    }

    fn client(&mut self, i: usize) {
        let roll = self.rng.random_range(0..100);
        match (self.cfg.pg, roll) {
            (false, 0..30) | (true, 0..25) => return self.eventual_client(i),
            (true, 25..45) => return self.pg_client(i),
            _ => {}
        }
        let name = format!("name-{}", self.rng.random_range(0..NAMES));
        let local = 1 + self.rng.random_range(0..PIDS_PER_NODE);
        let pid = self.pid(i, local);
        let roll = self.rng.random_range(0..100);
        let now = self.node_now(i);
        let deadline = now + consistent_config(false).request_timeout;
        let index = self.ops.len();
        let node = self.nodes[i].name.clone();
        let request = RequestId::new(self.nodes[i].id.clone(), index as u64 + 1);
        let (kind, input, command) = if roll < 45 {
            (OpKind::Write, Input::Register(pid.to_string()), Some(Command::Register { name: name.clone(), pid }))
        } else if roll < 65 {
            (OpKind::Write, Input::Unregister(pid.to_string()), Some(Command::Unregister { name: name.clone(), pid }))
        } else {
            (OpKind::Read, Input::Lookup, None)
        };
        self.ops.push(Recorded::called(kind, index as u64, name.clone(), node, input, self.now as f64 / 1e6));
        let Some(driver) = self.nodes[i].driver.as_mut() else { return };
        match command {
            Some(command) => driver.handle_propose(now, Proposal::new(request, command), Some(index), deadline),
            None => driver.handle_strong_read(now, name, ReadRequest::new(Freshness::Strong), index, deadline),
        }
        self.after_input(i);
    }

    fn answer_write(
        &mut self,
        index: usize,
        result: Result<cohort_registry::consistent::fsm::Applied, cohort_registry::consistent::Admission>,
    ) {
        let now_s = self.now as f64 / 1e6;
        (self.now, 5u8, index, result.is_ok()).hash(&mut self.hasher);
        let Some(op) = self.ops.get_mut(index) else { return };
        op.answered = true;
        match result {
            Ok(applied) => {
                let output = match applied.result {
                    CommandResult::Registered { fence_token } => {
                        op.token = Some(fence_token);
                        op.fresh = applied.token.index == fence_token;
                        Some(LinOutput::Registered)
                    }
                    CommandResult::AlreadyRegistered { .. } => Some(LinOutput::AlreadyRegistered),
                    CommandResult::Unregistered => Some(LinOutput::Unregistered),
                    CommandResult::NotRegistered | CommandResult::NotOwner { .. } => Some(LinOutput::NotRegistered),
                    // Refused without effect (the owner's node was declared departed).
                    _ => None,
                };
                match output {
                    Some(output) => {
                        op.op.output = output;
                        op.op.complete_s = Some(now_s);
                        op.ok = true;
                        self.stats.writes_ok += 1;
                    }
                    None => {
                        op.kind = OpKind::NoEffect;
                        self.stats.writes_failed += 1;
                    }
                }
            }
            // A refusal or a timeout: it may still commit later (same request id), so its output
            // stays unknown and it returns "at infinity".
            Err(_) => self.stats.writes_failed += 1,
        }
    }

    fn answer_read(
        &mut self,
        index: usize,
        result: Result<
            cohort_registry::consistent::service::ReadAnswer,
            cohort_registry::consistent::service::ReadError,
        >,
    ) {
        let now_s = self.now as f64 / 1e6;
        (self.now, 6u8, index, result.is_ok()).hash(&mut self.hasher);
        let Some(op) = self.ops.get_mut(index) else { return };
        op.answered = true;
        match result {
            Ok(answer) => {
                op.op.output = match answer.registration {
                    Some(reg) => LinOutput::Found(reg.pid.to_string()),
                    None => LinOutput::NotFound,
                };
                op.op.complete_s = Some(now_s);
                op.ok = true;
                self.stats.reads_ok += 1;
            }
            Err(_) => {
                op.kind = OpKind::NoEffect;
                self.stats.reads_refused += 1;
            }
        }
    }

    /// The node leading with the highest term, if any.
    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.driver.as_ref().filter(|d| d.core().is_leader()).map(|d| (d.core().stats().term, i)))
            .max()
            .map(|(_, i)| i)
    }

    fn resolve(&mut self, target: Target) -> usize {
        let n = self.nodes.len();
        let leader = self.leader();
        match target {
            Target::Leader => match leader {
                Some(i) => i,
                None => self.rng.random_range(0..n),
            },
            Target::Follower => {
                let candidates: Vec<usize> =
                    (0..n).filter(|i| Some(*i) != leader && self.nodes[*i].running()).collect();
                if candidates.is_empty() {
                    self.rng.random_range(0..n)
                } else {
                    candidates[self.rng.random_range(0..candidates.len())]
                }
            }
            Target::Any => self.rng.random_range(0..n),
        }
    }

    /// Every pid of node `i`'s current incarnation may lose its names from now on (its node may be
    /// declared down or replaced): the linearizability checker is told with an `Evict` per name
    /// the pid may hold (a registration of it that succeeded or whose answer is unknown).
    fn may_evict(&mut self, i: usize) {
        let node = self.nodes[i].id.clone();
        // Per (name, pid): whether a registration may have taken effect since the last Evict of
        // it was called (an Evict returns "at infinity", so one covers any later single loss).
        let prefix = format!("<{}.{}.", node.name, node.incarnation);
        let mut held: BTreeMap<(String, String), bool> = BTreeMap::new();
        for r in &self.ops {
            match (&r.op.input, r.kind) {
                (Input::Register(pid), OpKind::Write)
                    if pid.starts_with(&prefix) && (r.ok || r.op.complete_s.is_none()) =>
                {
                    held.insert((r.op.name.clone(), pid.clone()), true);
                }
                (Input::Evict(pid), OpKind::Evict) if pid.starts_with(&prefix) => {
                    held.insert((r.op.name.clone(), pid.clone()), false);
                }
                _ => {}
            }
        }
        for ((name, pid), _) in held.into_iter().filter(|(_, uncovered)| *uncovered) {
            let index = self.ops.len() as u64;
            let evict = Recorded::called(
                OpKind::Evict,
                index,
                name,
                node.name.clone(),
                Input::Evict(pid),
                self.now as f64 / 1e6,
            );
            self.ops.push(evict);
        }
    }

    /// Node `i` leaves gracefully, as a real node's shutdown does: its services stop (their
    /// state is lost, the durable log kept) and its membership says `Left` and lingers to
    /// gossip it (with the heartbeat model, which has no leave, the node just falls silent).
    fn leave(&mut self, i: usize) {
        self.may_evict(i);
        self.stats.leaves += 1;
        self.leaves_at.push((self.now, i));
        self.nodes[i].driver = None;
        self.links.clear_node(i);
        self.nodes[i].eventual = eventual::EventualSide::default();
        self.nodes[i].pg = pg::PgSide::default();
        let now = self.node_now(i);
        if let Some(driver) = self.nodes[i].swim.driver.as_mut() {
            driver.handle_leave(now);
        }
        self.swim_flush(i);
    }

    fn fault_start(&mut self, planned: Planned) {
        let id = self.next_fault;
        self.next_fault += 1;
        self.stats.faults += 1;
        let n = self.nodes.len();
        let lasts = us(planned.lasts);
        let description = match planned.fault {
            Fault::Isolate(target) => {
                let i = self.resolve(target);
                let links = (0..n).filter(|j| *j != i).flat_map(|j| [(i, j), (j, i)]).collect();
                self.net.cut(id, links);
                self.holds.insert(id, Hold::Net);
                self.may_evict(i);
                // The rest is cut off from it too: when the voters are down to this node alone (a
                // ladder of one after departures), it may evict theirs.
                if self.cfg.faults == FaultProfile::All {
                    for j in (0..n).filter(|j| *j != i) {
                        self.may_evict(j);
                    }
                }
                format!("isolate n{i} ({target:?})")
            }
            Fault::Partition(target, size) => {
                let i = self.resolve(target);
                let mut group = BTreeSet::from([i]);
                while group.len() < size.min(n - 1) {
                    group.insert(self.rng.random_range(0..n));
                }
                let mut links = BTreeSet::new();
                for a in &group {
                    for b in (0..n).filter(|b| !group.contains(b)) {
                        links.insert((*a, b));
                        links.insert((b, *a));
                    }
                }
                self.net.cut(id, links);
                self.holds.insert(id, Hold::Net);
                for g in group.clone() {
                    self.may_evict(g);
                }
                // The rest is cut off from the group as well: its pids may be evicted by a leader
                // inside the group.
                for j in (0..n).filter(|j| !group.contains(j)) {
                    self.may_evict(j);
                }
                format!("partition {group:?} from the rest ({target:?})")
            }
            Fault::OneWay(target) => {
                let i = self.resolve(target);
                let mut j = self.rng.random_range(0..n);
                if j == i {
                    j = (i + 1) % n;
                }
                let link = if self.rng.random_bool(0.5) { (i, j) } else { (j, i) };
                self.net.cut(id, BTreeSet::from([link]));
                self.holds.insert(id, Hold::Net);
                self.may_evict(i);
                self.may_evict(j);
                format!("cut n{} -> n{} ({target:?})", link.0, link.1)
            }
            Fault::Crash(target) => {
                let i = self.resolve(target);
                self.may_evict(i);
                self.nodes[i].crash_holds.insert(id);
                self.holds.insert(id, Hold::Crash(i));
                if self.nodes[i].driver.take().is_some() {
                    self.stats.crashes += 1;
                }
                self.links.clear_node(i);
                self.nodes[i].eventual = eventual::EventualSide::default();
                self.nodes[i].swim = swim::SwimSide::default();
                self.nodes[i].pg = pg::PgSide::default();
                format!("crash {} ({target:?})", self.nodes[i].id)
            }
            Fault::Pause(target) => {
                let i = self.resolve(target);
                self.may_evict(i);
                self.nodes[i].pause_holds.insert(id);
                self.holds.insert(id, Hold::Pause(i));
                format!("pause n{i} ({target:?})")
            }
            Fault::ClockJump(target, by) => {
                let i = self.resolve(target);
                // The jumped node sees every peer silent: as leader it may declare them down.
                for j in 0..n {
                    self.may_evict(j);
                }
                self.nodes[i].offset += by;
                if self.nodes[i].running() {
                    let inc = self.nodes[i].id.incarnation;
                    self.schedule(self.now, Ev::Swim { node: i, inc, at: self.now });
                }
                let tick = us(consistent_config(false).tick);
                let catch_up = (us(by) / tick).min(MAX_CATCH_UP_TICKS);
                if self.nodes[i].up() {
                    for _ in 0..catch_up {
                        self.tick(i);
                    }
                }
                format!("clock of n{i} jumps {:.3} s ({target:?}), {catch_up} ticks at once", by.as_secs_f64())
            }
            Fault::Lossy(p) => {
                for j in 0..n {
                    self.may_evict(j);
                }
                self.net.lossy(id, p);
                self.holds.insert(id, Hold::Net);
                format!("lose {:.0}% of frames, duplicate some", p * 100.0)
            }
            Fault::Slow(extra) => {
                self.net.slow(id, us(extra));
                self.holds.insert(id, Hold::Net);
                format!("delay frames up to {:.1} ms more, reordering", extra.as_secs_f64() * 1e3)
            }
            Fault::Leave(target) => {
                let i = self.resolve(target);
                if self.nodes[i].running() {
                    self.leave(i);
                    self.nodes[i].leave_holds.insert(id);
                    self.holds.insert(id, Hold::Leave(i));
                    format!("{} leaves the cluster ({target:?})", self.nodes[i].id)
                } else {
                    format!("n{i} is not running: no leave ({target:?})")
                }
            }
            Fault::Join => match self.nodes.iter().position(|n| !n.member) {
                Some(i) => {
                    self.nodes[i].member = true;
                    self.stats.joins += 1;
                    self.boot(i);
                    format!("n{i} joins the cluster")
                }
                None => "no spare node left to join".into(),
            },
            Fault::Congest(target, bytes_per_second) => {
                let i = self.resolve(target);
                self.links.congest(id, i, bytes_per_second);
                self.holds.insert(id, Hold::Congest);
                format!("congest the links out of n{i} to {bytes_per_second} bytes/s ({target:?})")
            }
        };
        self.line(true, || format!("fault {id} start: {description} for {:.3} s", lasts as f64 / 1e6));
        (self.now, 7u8, id).hash(&mut self.hasher);
        if lasts > 0 {
            self.schedule(self.now + lasts, Ev::FaultEnd(id));
        }
        self.record_topology(false);
    }

    fn fault_end(&mut self, id: u64) {
        let Some(hold) = self.holds.remove(&id) else { return };
        (self.now, 8u8, id).hash(&mut self.hasher);
        match hold {
            Hold::Net => self.net.heal(id),
            Hold::Congest => {
                for (from, to, lane) in self.links.heal(id, self.now) {
                    self.pump(from, to, lane);
                }
            }
            Hold::Crash(i) => {
                self.nodes[i].crash_holds.remove(&id);
                if self.nodes[i].member && !self.nodes[i].held_down() && !self.nodes[i].running() {
                    self.boot(i);
                }
            }
            Hold::Leave(i) => {
                self.nodes[i].leave_holds.remove(&id);
                if !self.nodes[i].held_down() && !self.nodes[i].running() {
                    self.boot(i);
                }
            }
            Hold::Pause(i) => {
                self.nodes[i].pause_holds.remove(&id);
                if self.nodes[i].pause_holds.is_empty() {
                    self.resume(i);
                }
            }
        }
        self.line(true, || format!("fault {id} end"));
        self.record_topology(true);
        self.schedule_stable_check();
    }

    fn final_heal(&mut self) {
        self.line(true, || "heal everything: partitions, loss, pauses; restart crashed and departed nodes".into());
        self.net.heal_all();
        for (from, to, lane) in self.links.heal_all(self.now) {
            self.pump(from, to, lane);
        }
        let ids: Vec<u64> = self.holds.keys().copied().collect();
        self.holds.clear();
        for i in 0..self.nodes.len() {
            let paused = self.nodes[i].paused();
            self.nodes[i].pause_holds.clear();
            self.nodes[i].crash_holds.clear();
            self.nodes[i].leave_holds.clear();
            if paused {
                self.resume(i);
            }
            if self.nodes[i].member && !self.nodes[i].running() {
                self.boot(i);
            }
        }
        (self.now, 9u8, ids.len()).hash(&mut self.hasher);
        self.record_topology(true);
        self.schedule_stable_check();
    }

    fn healthy(&self) -> bool {
        self.holds.is_empty() && self.nodes.iter().filter(|n| n.member).all(SimNode::up)
    }

    fn schedule_stable_check(&mut self) {
        if self.healthy() {
            self.schedule(self.now + 10_000_000, Ev::StableCheck);
        }
    }

    /// The voters the availability checker judges against: recorded when the cluster has been
    /// healthy (every node up, no fault) for 10 s, and once at the end of the warm-up.
    fn stable_check(&mut self) {
        let at_warmup = self.stable_voters.is_empty();
        let quiet_since = self.topology.last().map_or(0, |t| t.at_us);
        if !at_warmup && (!self.healthy() || self.now < quiet_since + 10_000_000) {
            return;
        }
        let Some(leader) = self.leader() else {
            if at_warmup {
                self.formed = Some("no leader at the end of the warm-up".into());
                self.stable_voters.push((self.now, BTreeSet::new()));
            }
            return;
        };
        let voters: BTreeSet<usize> = self.voters_of(leader);
        if at_warmup {
            let expected = expected_voters(self.cfg.nodes);
            if voters.len() != expected {
                self.formed = Some(format!(
                    "{} voters at the end of the warm-up, expected {expected} ({voters:?})",
                    voters.len()
                ));
            }
        }
        self.line(true, || format!("stable voters {voters:?}"));
        self.stable_voters.push((self.now, voters));
    }

    fn voters_of(&self, leader: usize) -> BTreeSet<usize> {
        let Some(driver) = self.nodes[leader].driver.as_ref() else { return BTreeSet::new() };
        let conf = driver.core().conf_state();
        conf.voters.iter().filter_map(|id| self.nodes.iter().position(|n| n.raft_id == *id)).collect()
    }

    fn record_topology(&mut self, recovery: bool) {
        let n = self.nodes.len();
        let mut cut = BTreeSet::new();
        for a in 0..n {
            for b in 0..n {
                if a != b && self.net.is_cut(a, b) {
                    cut.insert((a, b));
                }
            }
        }
        self.topology.push(Topology {
            at_us: self.now,
            recovery,
            up: self.nodes.iter().map(SimNode::up).collect(),
            cut,
            degraded: self.net.degraded() || self.links.congested(),
        });
    }

    fn finish(mut self) -> SimReport {
        let mut verdicts = Vec::new();
        if let Some(at) = self.runaway {
            verdicts.push(Verdict {
                name: "sim_bounded",
                status: Status::Fail,
                detail: format!("{MAX_EVENTS} events by {:.3} simulated s: the run was stopped", at as f64 / 1e6),
            });
        }
        verdicts.push(Verdict {
            name: "cluster_formed",
            status: if self.formed.is_none() { Status::Pass } else { Status::Fail },
            detail: self
                .formed
                .clone()
                .unwrap_or_else(|| "every node a voter (up to the ladder) after the warm-up".into()),
        });
        verdicts.push(check::linearizable(&self.ops));
        verdicts.push(check::single_owner_per_token(&self.ops));
        verdicts.push(check::tokens_monotonic(&self.ops));
        verdicts.push(check::available_after_heal(
            &self.ops,
            &self.topology,
            &self.stable_voters,
            &self.leaves_at,
            self.client_stop,
        ));
        verdicts.push(self.converged());
        verdicts.push(self.eventual_converged());
        if self.cfg.pg {
            verdicts.push(self.pg_converged());
        }
        self.stats.net = self.net.stats;
        self.stats.queues = self.links.stats;
        if self.cfg.full_trace {
            for r in &self.ops {
                let o = &r.op;
                self.trace.push(format!(
                    "op {} {:?} {} {} {:?} -> {:?} invoke {:.6} complete {:?} token {:?}",
                    o.id, r.kind, o.name, o.node, o.input, o.output, o.invoke_s, o.complete_s, r.token
                ));
            }
        }
        SimReport { config: self.cfg, verdicts, trace_hash: self.hasher.finish(), trace: self.trace, stats: self.stats }
    }

    /// At the end every node runs, one leader has every node in its configuration, and every
    /// node applied the same registry.
    fn converged(&self) -> Verdict {
        let fail = |detail: String| Verdict { name: "consistent_converged", status: Status::Fail, detail };
        let Some(leader) = self.leader() else { return fail("no leader at the end".into()) };
        let lead = self.nodes[leader].driver.as_ref().expect("a leader runs");
        let conf = lead.core().conf_state();
        let reference: Vec<(String, String, u64)> =
            lead.core().fsm().names().map(|(n, r)| (n.to_string(), r.pid.to_string(), r.fence_token)).collect();
        let applied = lead.core().stats().applied_index;
        let members: Vec<&SimNode> = self.nodes.iter().filter(|n| n.member).collect();
        for node in &members {
            let Some(driver) = node.driver.as_ref() else { return fail(format!("{} is not running", node.name)) };
            if !conf.voters.contains(&node.raft_id) && !conf.learners.contains(&node.raft_id) {
                return fail(format!("{} is neither a voter nor a learner of the leader's configuration", node.name));
            }
            let stats = driver.core().stats();
            if stats.applied_index != applied {
                return fail(format!("{} applied {} and the leader {applied}", node.name, stats.applied_index));
            }
            let names: Vec<(String, String, u64)> =
                driver.core().fsm().names().map(|(n, r)| (n.to_string(), r.pid.to_string(), r.fence_token)).collect();
            if names != reference {
                return fail(format!("{} holds another registry than the leader at index {applied}", node.name));
            }
        }
        Verdict {
            name: "consistent_converged",
            status: Status::Pass,
            detail: format!("{} nodes applied index {applied} with {} names", members.len(), reference.len()),
        }
    }
}

/// The transport class a simulated frame kind travels in (`None`: a membership datagram, not
/// transport traffic).
fn class_of(kind: u8) -> Option<Class> {
    match kind {
        KIND_PING | swim::KIND_SWIM => None,
        pg::KIND_PG => Some(Class::Pg),
        k if k >= eventual::KIND_EVENTUAL_BASE => Some(Class::Registry),
        _ => Some(Class::Raft),
    }
}

/// The nodes' transport queue configuration: the defaults, except with the `all` profile, where
/// every capacity is drawn between 4 and 64 frames (its own RNG stream) so that congestion
/// fills queues within a run and their policies act.
fn queue_config(cfg: &SimConfig) -> QueueConfig {
    if cfg.faults != FaultProfile::All {
        return QueueConfig::default();
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x7175_6575_6573_2121);
    let mut draw = || rng.random_range(4..=64);
    let capacity = ClassCapacities { control: draw(), raft: draw(), pg: draw(), registry: draw(), user: draw() };
    QueueConfig { capacity, ..QueueConfig::default() }
}

/// The voter count the ladder reaches with `nodes` eligible members (and the default
/// `max_voters` of 5).
fn expected_voters(nodes: usize) -> usize {
    ladder::VOTER_LADDER.iter().rev().copied().find(|n| *n <= nodes.min(ladder::DEFAULT_MAX_VOTERS)).unwrap_or(1)
}
