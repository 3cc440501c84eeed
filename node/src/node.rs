//! The [`Node`]: one Cohort cluster member, owning all of its state.
//!
//! A node binds its three listeners first (HTTP over TCP, gossip over UDP, internode over TCP), so
//! a taken port fails the start at once rather than after the node announced itself; then it starts
//! its subsystems in a fixed order and, on [`Node::shutdown`], stops them in the reverse order within
//! `shutdown.timeout_ms`. A subsystem that does not stop in its share of the budget is aborted and
//! the fact logged.
//!
//! Invariants: everything a node holds (health registry, metrics registry, listeners, subsystems)
//! is owned by its `Node` value, never by a process-global, so several nodes can run in one process.
//!
//! Start order: `membership`, `transport`, `processes`, `pg`, `registry` (local, eventual and
//! consistent tiers: the raft actor runs on its own thread), `supervisor` (an OTP-style
//! one_for_one supervisor over the node's restartable loops: the runtime `watchdog` and the `cluster`
//! pump from membership events to transport peers, remote monitors, pg scopes and the registry),
//! `http`. Stop order is the
//! reverse: HTTP stops taking requests first; hosted processes stop while pg and the transport can
//! still tell peers; membership leaves the cluster gracefully (peers see `left`) last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::events::{DecisionLog, Observed, Observer, RaftObserved};
use cohort_actors::pg::{PgConfig, PgService};
use cohort_actors::supervisor::{
    ChildSpec, Restart, RestartIntensity, StopSignal, Strategy, Supervisor, SupervisorMetrics, SupervisorSpec,
    SupervisorStatus,
};
use cohort_actors::{Pid, ProcessConfig, ProcessRef, Processes};
use cohort_cluster::membership::Membership;
use cohort_cluster::net::transport::Transport;
use cohort_cluster::{FaultInjector, MemberAddrs, NodeId};
use cohort_registry::Registry;
use cohort_registry::consistent::ladder::MaxVoters;
use cohort_registry::consistent::service::{ConsistentConfig, StorageMode};
use cohort_registry::eventual::EventualConfig;

use crate::cluster_subsystems::{self as cluster, ClusterStartError, Followers};
use crate::config::Config;
use crate::health::{CheckResult, Health, HealthError};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::probe::Probes;
use crate::telemetry::LogControl;

/// How often the decision observer compares what the subsystems publish (`crate::events`).
pub const DECISIONS_PERIOD: Duration = Duration::from_secs(1);

/// What the decision observer reads each turn.
#[derive(Clone)]
struct Sources {
    membership: Membership,
    transport: Transport,
    registry: Registry,
}

impl Sources {
    fn gather(&self) -> Observed {
        let mut observed = Observed {
            members: self.membership.members().as_ref().clone(),
            local_health_factor: self.membership.local_health_factor(),
            ..Observed::default()
        };
        for peer in self.transport.snapshot().peers {
            for class in peer.classes {
                observed.queue_drops.insert((peer.node.name.clone(), class.class.to_string()), class.dropped);
            }
        }
        let (revocations, dropped) = self.registry.eventual().take_revocations();
        observed.revocations =
            revocations.into_iter().map(|r| (r.name, r.loser.to_string(), r.winner.map(|w| w.to_string()))).collect();
        observed.revocations_dropped = dropped;
        if let Some(tier) = self.registry.consistent() {
            let status = tier.raft_status();
            let planes = tier.planes();
            observed.restarts.insert("raft".into(), planes.execution.raft_actor_restarts);
            observed.raft = Some(RaftObserved {
                term: status.term,
                leader: status.leader.clone(),
                voters: status.voters.clone(),
                degraded_mode: planes.control.degraded_mode.as_str().to_string(),
                catch_up_state: planes.control.catch_up_state.as_str().to_string(),
                root_lag: planes.control.root_lag,
                quorum_reachable: planes.control.quorum_reachable,
                transitions: planes
                    .control
                    .transitions
                    .iter()
                    .map(|t| {
                        let steps = serde_json::to_string(&t.steps).unwrap_or_default();
                        (t.id.to_string(), (json_name(&t.phase), t.reason.clone(), steps))
                    })
                    .collect(),
            });
        }
        observed
    }
}

/// A plane value's name as `/admin/planes` writes it (its serde form: a string for the unit
/// enums the observer reads).
fn json_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// How often the runtime watchdog beats its activity check.
pub const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);
/// Silence after which the runtime watchdog check fails: a Tokio runtime that cannot run a timer
/// task for this long is starved or deadlocked.
pub const WATCHDOG_MAX_SILENCE: Duration = Duration::from_secs(5);
/// Restart intensity of the node supervisor: OTP's spirit (a few restarts are a glitch, a restart
/// loop is a bug), scaled for loops that restart in microseconds.
pub const NODE_RESTART_INTENSITY: RestartIntensity = RestartIntensity::new(5, Duration::from_secs(10));
/// Boot grace of node-level health checks.
pub const BOOT_GRACE: Duration = Duration::from_secs(10);
/// Boot grace of the `raft` liveness check: a joining node waits for the leader to add it, and a
/// voter of a group that lost its quorum waits for the rest of the group to come back.
pub const RAFT_BOOT_GRACE: Duration = Duration::from_secs(30);
/// The raft log's directory under `data_dir`.
pub const RAFT_DIR: &str = "raft";

/// The consistent tier's settings from the node's config.
pub fn consistent_config(config: &Config) -> ConsistentConfig {
    ConsistentConfig {
        storage: match config.raft.storage {
            crate::config::RaftStorage::Durable => StorageMode::Durable(config.data_dir.join(RAFT_DIR)),
            crate::config::RaftStorage::Memory => StorageMode::Memory,
        },
        max_voters: MaxVoters::new(config.raft.max_voters).unwrap_or_default(),
        tick: Duration::from_millis(config.raft.tick_interval_ms),
        request_timeout: Duration::from_millis(config.raft.request_timeout_ms),
        reconcile_debounce: Duration::from_secs(1),
        dead_voter_after: Duration::from_millis(config.raft.dead_voter_after_ms),
        snapshot_chunk_bytes: config.raft.snapshot_chunk_bytes,
        bootstrap: config.raft_bootstrap(),
    }
}

/// A node's three addresses: as bound ([`Node::bound_addrs`]) or as announced to peers
/// ([`Node::addrs`]). Ports are real, also when the config asked for port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddrs {
    /// HTTP surface.
    pub http: SocketAddr,
    /// Gossip (UDP).
    pub gossip: SocketAddr,
    /// Internode transport (TCP).
    pub internode: SocketAddr,
}

/// The address announced for a listener bound at `bound`: the advertised IP when there is one,
/// else the bound IP; `port` when set, else the bound port.
fn announced(ip: Option<std::net::IpAddr>, bound: SocketAddr, port: Option<u16>) -> SocketAddr {
    SocketAddr::new(ip.unwrap_or(bound.ip()), port.unwrap_or(bound.port()))
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        /// `http`, `gossip` or `internode`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The advertised host did not resolve to an address.
    #[error("advertise: {reason}")]
    Advertise {
        /// What went wrong, naming the host.
        reason: String,
    },
    /// The data directory could not be created.
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The metrics registry refused a collector (a duplicate name: a bug).
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A health check could not be registered.
    #[error("health registry: {0}")]
    Health(#[from] HealthError),
    /// A file the configuration names (the admin token file) could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Membership or the transport could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterStartError),
    /// The process table could not start.
    #[error("processes: {0}")]
    Processes(String),
    /// The registry could not start.
    #[error("registry: {0}")]
    Registry(String),
    /// The pg service could not start.
    #[error("pg: {0}")]
    Pg(String),
    /// The node supervisor refused its spec.
    #[error("supervisor: {0}")]
    Supervisor(String),
}

/// A running subsystem: a task and the trigger that asks it to stop.
struct Subsystem {
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// What [`Node::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Subsystems in the order they were stopped.
    pub stopped: Vec<&'static str>,
    /// Subsystems that missed their deadline and were aborted.
    pub aborted: Vec<&'static str>,
    /// Total time taken.
    pub elapsed: Duration,
}

/// Options for embedding a node.
#[derive(Default)]
pub struct NodeBuilder {
    config: Config,
    log_control: Option<LogControl>,
}

impl NodeBuilder {
    /// Let `POST /admin/log-filter` change the process's log filter.
    pub fn log_control(mut self, control: LogControl) -> Self {
        self.log_control = Some(control);
        self
    }

    /// Bind the listeners and start the subsystems.
    pub async fn start(self) -> Result<Node, StartError> {
        Node::start_with(self.config, self.log_control).await
    }
}

/// One running Cohort node.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use cohort::{Config, Node};
/// let mut config = Config::default();
/// config.http.addr = "127.0.0.1:0".parse()?;
/// config.gossip.addr = "127.0.0.1:0".parse()?;
/// config.internode.addr = "127.0.0.1:0".parse()?;
/// let node = Node::start(config).await?;
/// println!("/livez at http://{}/livez", node.addrs().http);
/// node.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Node {
    id: NodeId,
    addrs: NodeAddrs,
    bound: NodeAddrs,
    decisions: DecisionLog,
    config: Arc<Config>,
    health: Health,
    metrics: Metrics,
    faults: FaultInjector,
    membership: Membership,
    transport: Transport,
    processes: Processes,
    pg: PgService,
    registry: Registry,
    probes: Option<Probes>,
    supervisor_metrics: SupervisorMetrics,
    subsystems: Vec<Subsystem>,
}

impl Node {
    /// A builder for `config` (validate it first: [`Config::validate`]).
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder { config, log_control: None }
    }

    /// Start a node with `config` and no log control.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, None).await
    }

    async fn start_with(config: Config, log_control: Option<LogControl>) -> Result<Self, StartError> {
        let started = Instant::now();
        // Read before anything binds: a token file that went missing since validation stops the
        // start rather than leaving the admin API without its token.
        let admin_token = config.admin_token()?;
        if let Some(path) = &config.admin_token_file {
            crate::config::warn_if_readable_by_others("admin_token_file", path);
        }
        let id = NodeId::new(config.name.clone(), NodeId::fresh_incarnation());
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;

        let http_listener = tokio::net::TcpListener::bind(config.http.addr)
            .await
            .map_err(|source| StartError::Bind { listener: "http", addr: config.http.addr, source })?;
        let gossip_socket = std::net::UdpSocket::bind(config.gossip.addr).map_err(|source| StartError::Bind {
            listener: "gossip",
            addr: config.gossip.addr,
            source,
        })?;
        let internode_listener = std::net::TcpListener::bind(config.internode.addr)
            .map_err(|source| StartError::Bind { listener: "internode", addr: config.internode.addr, source })?;
        let local = |r: std::io::Result<SocketAddr>, listener, addr| {
            r.map_err(|source| StartError::Bind { listener, addr, source })
        };
        let bound = NodeAddrs {
            http: local(http_listener.local_addr(), "http", config.http.addr)?,
            gossip: local(gossip_socket.local_addr(), "gossip", config.gossip.addr)?,
            internode: local(internode_listener.local_addr(), "internode", config.internode.addr)?,
        };
        let advertise_ip = crate::config::resolve_advertise(config.advertise.as_deref(), bound.gossip)
            .await
            .map_err(|reason| StartError::Advertise { reason })?;
        let addrs = NodeAddrs {
            // HTTP is announced for operators only: the advertised host when it binds a wildcard.
            http: announced(advertise_ip.filter(|_| bound.http.ip().is_unspecified()), bound.http, None),
            gossip: announced(advertise_ip, bound.gossip, config.gossip.advertise_port),
            internode: announced(advertise_ip, bound.internode, config.internode.advertise_port),
        };

        let health = Health::new(started);
        let metrics = Metrics::new(&id.name)?;
        let decisions = DecisionLog::new(config.events.capacity, metrics.registry())?;
        let startup_gate = health.register_gate("startup")?;
        let cluster_gate = health.register_gate("cluster")?;
        let faults = if config.chaos.enabled { FaultInjector::enabled() } else { FaultInjector::disabled() };
        let member_addrs = MemberAddrs { gossip: addrs.gossip, internode: addrs.internode, http: addrs.http };
        let handles =
            cluster::start(&config, &id, member_addrs, gossip_socket, internode_listener, &faults, metrics.registry())
                .await?;
        cluster::register_checks(&health, &handles.membership)?;
        let process_config = ProcessConfig {
            mailbox_capacity: config.processes.mailbox_capacity,
            max_processes: config.processes.max_processes,
            ..ProcessConfig::default()
        };
        let processes =
            Processes::start(id.clone(), Some(handles.transport.clone()), process_config, metrics.registry())
                .await
                .map_err(|e| StartError::Processes(e.to_string()))?;
        // One registration per node registry, shared by every supervisor of the node.
        let supervisor_metrics = SupervisorMetrics::register(metrics.registry())?;
        let pg = PgService::start_supervised(
            Arc::new(processes.clone()),
            Some(handles.transport.clone()),
            PgConfig::default(),
            metrics.registry(),
            &supervisor_metrics,
        )
        .map_err(|e| StartError::Pg(e.to_string()))?;
        let registry = Registry::start(
            processes.clone(),
            handles.membership.clone(),
            handles.transport.clone(),
            metrics.registry(),
            EventualConfig {
                anti_entropy_interval: Duration::from_millis(config.registry.anti_entropy_interval_ms),
                // Answer a peer's digest at most 4 times per round it is configured to send.
                min_exchange_interval: Duration::from_millis(
                    (config.registry.anti_entropy_interval_ms / 4).clamp(10, 250),
                ),
                gossip_deltas: config.registry.gossip_deltas,
                ..EventualConfig::default()
            },
            Some(consistent_config(&config)),
        )
        .map_err(|e| StartError::Registry(e.to_string()))?;
        if let Some(consistent) = registry.consistent() {
            let consistent = consistent.clone();
            health.register("raft", RAFT_BOOT_GRACE, move |now| {
                let verdict = consistent.health(now);
                CheckResult { ok: verdict.ok, detail: verdict.detail }
            })?;
        }
        let probes = config.chaos.enabled.then(|| Probes::new(processes.clone()));
        let mut node = Self {
            id,
            addrs,
            bound,
            decisions,
            config: Arc::new(config),
            health,
            metrics,
            faults,
            membership: handles.membership,
            transport: handles.transport,
            processes,
            pg,
            registry,
            probes,
            supervisor_metrics,
            subsystems: Vec::new(),
        };

        node.start_cluster();
        node.start_supervised(cluster_gate)?;
        node.start_http(http_listener, log_control, admin_token);
        startup_gate.set(true);
        tracing::info!(
            node = %node.id,
            http = %node.addrs.http,
            gossip = %node.addrs.gossip,
            internode = %node.addrs.internode,
            bound_gossip = %node.bound.gossip,
            bound_internode = %node.bound.internode,
            chaos = node.config.chaos.enabled,
            "node started"
        );
        Ok(node)
    }

    fn push_subsystem(&mut self, name: &'static str, stop: oneshot::Sender<()>, task: JoinHandle<()>) {
        tracing::info!(subsystem = name, "subsystem started");
        self.subsystems.push(Subsystem { name, stop: Some(stop), task });
    }

    /// Register a component that already runs as a subsystem: `stop` (lazy until then) runs when
    /// the node stops it, in reverse start order.
    fn push_stopper(&mut self, name: &'static str, stop: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stop_rx.await;
            stop.await;
        });
        self.push_subsystem(name, stop_tx, task);
    }

    /// Membership and the transport already run (started before the node announced anything);
    /// here they become subsystems with a stop order, and the pump links them.
    fn start_cluster(&mut self) {
        let membership = self.membership.clone();
        self.push_stopper("membership", async move { membership.leave().await });
        let transport = self.transport.clone();
        self.push_stopper("transport", async move { transport.shutdown().await });
        let processes = self.processes.clone();
        self.push_stopper("processes", async move { processes.shutdown().await });
        let pg = self.pg.clone();
        self.push_stopper("pg", async move { pg.shutdown().await });
        let registry = self.registry.clone();
        self.push_stopper("registry", async move { registry.shutdown().await });
    }

    /// The node's own restartable loops under an OTP-style supervisor (one_for_one): the runtime
    /// `watchdog` and the membership pump (`cluster`), which resynchronises from membership's view
    /// each time it starts. If they crash more often than the restart intensity allows, the
    /// supervisor escalates and the `supervision` liveness check fails.
    fn start_supervised(&mut self, gate: crate::health::ReadinessGate) -> Result<(), StartError> {
        let activity = self.health.register_activity("runtime", WATCHDOG_MAX_SILENCE, BOOT_GRACE)?;
        let watchdog = ChildSpec::new("watchdog", Restart::Permanent, move |stop: StopSignal| {
            let activity = activity.clone();
            async move {
                let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.wait() => return Ok(()),
                        _ = tick.tick() => activity.beat(),
                    }
                }
            }
        });
        let followers = Followers {
            transport: self.transport.clone(),
            processes: self.processes.clone(),
            pg: self.pg.clone(),
            registry: self.registry.clone(),
            decisions: self.decisions.clone(),
        };
        let observed = Sources {
            membership: self.membership.clone(),
            transport: self.transport.clone(),
            registry: self.registry.clone(),
        };
        let decisions = self.decisions.clone();
        let observer = ChildSpec::new("decisions", Restart::Permanent, move |stop: StopSignal| {
            let observed = observed.clone();
            let decisions = decisions.clone();
            async move {
                // A fresh observer after a restart primes itself again: nothing is reported twice.
                let mut observer = Observer::default();
                let mut tick = tokio::time::interval(DECISIONS_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.wait() => return Ok(()),
                        _ = tick.tick() => {
                            for decision in observer.observe(&observed.gather()) {
                                decisions.record(decision);
                            }
                        }
                    }
                }
            }
        });
        let membership = self.membership.clone();
        let pump = ChildSpec::new("cluster", Restart::Permanent, move |stop: StopSignal| {
            cluster::pump(membership.clone(), followers.clone(), gate.clone(), stop)
        });
        let spec = SupervisorSpec::new("node", Strategy::OneForOne)
            .with_intensity(NODE_RESTART_INTENSITY)
            .with_child(watchdog)
            .with_child(pump)
            .with_child(observer);
        let supervisor =
            Supervisor::start(spec, &self.supervisor_metrics).map_err(|e| StartError::Supervisor(e.to_string()))?;
        let watched = supervisor.clone();
        let pg = self.pg.clone();
        self.health.register("supervision", Duration::ZERO, move |_| match (watched.status(), pg.status()) {
            (SupervisorStatus::Escalated { child, exit }, _) => CheckResult {
                ok: false,
                detail: format!(
                    "node supervisor gave up: `{child}` exited ({exit}) more often than its restart intensity allows"
                ),
            },
            (_, SupervisorStatus::Escalated { child, exit }) => CheckResult {
                ok: false,
                detail: format!("pg scope `{child}` crashed ({exit}) more often than its restart intensity allows"),
            },
            (node, _) => CheckResult {
                ok: true,
                detail: format!("node supervisor {node:?}; {} pg scope(s) supervised", pg.scope_names().len())
                    .to_lowercase(),
            },
        })?;
        self.push_stopper("supervisor", async move {
            supervisor.shutdown().await;
        });
        Ok(())
    }

    fn start_http(
        &mut self,
        listener: tokio::net::TcpListener,
        log_control: Option<LogControl>,
        admin_token: Option<String>,
    ) {
        let state = HttpState {
            id: self.id.clone(),
            started: self.health.boot(),
            addrs: self.addrs,
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            admin_token: admin_token.map(Arc::from),
            in_flight: Arc::new(Semaphore::new(self.config.http.max_in_flight)),
            log_control,
            faults: self.faults.clone(),
            membership: self.membership.clone(),
            transport: self.transport.clone(),
            pg: self.pg.clone(),
            registry: self.registry.clone(),
            probes: self.probes.clone(),
            decisions: self.decisions.clone(),
            streams: Arc::new(Semaphore::new(crate::http_events::MAX_EVENT_STREAMS)),
        };
        let app = http::router(state, self.config.http.max_body_bytes);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        self.push_subsystem("http", stop_tx, task);
    }

    /// This node's identity.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The addresses peers and clients reach this node at: the advertised ones
    /// ([`Config::advertise`](crate::config::Config::advertise)), which are the bound ones unless
    /// advertise is set. Seeds for other nodes come from here.
    pub fn addrs(&self) -> NodeAddrs {
        self.addrs
    }

    /// The decision log (`GET /admin/events`).
    pub fn decisions(&self) -> &DecisionLog {
        &self.decisions
    }

    /// The addresses the listeners are bound to (real ports, also when the config asked for port 0).
    pub fn bound_addrs(&self) -> NodeAddrs {
        self.bound
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The health registry (subsystems add their checks here).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The metrics registry (subsystems add their collectors here).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The fault injector every gossip datagram and internode frame passes (rules only with chaos).
    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    /// The membership handle (cluster view, events).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The internode transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The node's process table: spawn, send, monitor (SPEC 6.1).
    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    /// The node's name registry (SPEC 7): `node.registry().register(Tier::Eventual, "name", &process)`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The node's process groups (SPEC 6.2): `node.pg().scope("default")?.join(...)`.
    pub fn pg(&self) -> &PgService {
        &self.pg
    }

    /// Host a ractor actor as a cluster-visible process: its `Pid` and a typed local handle.
    /// Its messages must deserialize, so other nodes can send to it by pid.
    pub async fn spawn<A>(
        &self,
        actor: A,
        args: A::Arguments,
    ) -> Result<(Pid, ProcessRef<A::Msg>), cohort_actors::process::SpawnError>
    where
        A: ractor::Actor,
        A::Msg: serde::de::DeserializeOwned,
    {
        self.processes.spawn(actor, args).await
    }

    /// Stop every subsystem in the reverse of the start order, within `shutdown.timeout_ms`.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let begin = Instant::now();
        let deadline = begin + Duration::from_millis(self.config.shutdown.timeout_ms);
        let mut report = ShutdownReport { stopped: Vec::new(), aborted: Vec::new(), elapsed: Duration::ZERO };
        tracing::info!(node = %self.id, "node stopping");
        while let Some(mut s) = self.subsystems.pop() {
            if let Some(stop) = s.stop.take() {
                let _ = stop.send(());
            }
            let budget = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(budget, &mut s.task).await {
                Ok(_) => {
                    tracing::info!(subsystem = s.name, "subsystem stopped");
                    report.stopped.push(s.name);
                }
                Err(_) => {
                    s.task.abort();
                    tracing::warn!(subsystem = s.name, "subsystem missed the shutdown deadline; aborted");
                    report.aborted.push(s.name);
                }
            }
        }
        report.elapsed = begin.elapsed();
        tracing::info!(node = %self.id, elapsed_ms = report.elapsed.as_millis() as u64, "node stopped");
        report
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A node dropped without shutdown() must not leave its tasks serving a dead node.
        for s in &self.subsystems {
            s.task.abort();
        }
    }
}
