//! [`PgService`]: the pg subsystem of one node (SPEC 6.2).
//!
//! Role: owns the node's scopes (created on first use, at most [`MAX_SCOPES`], `"default"` from
//! the start), their actors and the pg metrics; is the one consumer of the transport's `pg` class
//! and routes each inbound frame to its scope (after decoding and validating it: version, bounds,
//! and `from` equal to the transport-authenticated sender); fans out broadcasts received from
//! peers to local members; applies membership changes (`member_up` → discover and sync every
//! scope with that node; `member_down` → remove its members from every scope) and process exits
//! (an exit hook on the [`ProcessHost`] removes the pid from every group and drops the monitors it
//! owned, synchronously, before anyone can observe the exit).
//!
//! Supervision (SPEC 6.1): each scope's actor is the one `Permanent` child of its own
//! one_for_one [`Supervisor`] (named `"pg"`, the child named after the scope), owned by the
//! service. A crashed actor is restarted and re-synchronises with every peer (see the scope
//! module, "Restarts"); restarts are counted in `cohort_supervisor_restarts_total{supervisor="pg",
//! child=<scope>}` and by [`PgService::health`]; a scope that crashes more often than
//! [`PgConfig::restart_intensity`] allows escalates: its actor stays stopped and
//! [`PgService::status`] reports it, for the node's `/livez`.
//!
//! Why one supervisor per scope rather than one for all: scopes are created at run time, while a
//! supervisor's children are fixed when it starts; one supervisor per scope needs no dynamic
//! children, and isolates the scopes (one scope's crash loop does not use up the others' restart
//! intensity nor stop them). Child names are `&'static str` (metric labels): each distinct scope
//! name is leaked once per process (interned), at most [`MAX_INTERNED_SCOPE_NAMES`] of them; a
//! node runs at most [`MAX_SCOPES`] scopes, and nodes in one process share the interned names.
//!
//! Lock order: the member lock, then the scope map lock (never the reverse).
//!
//! Invariants: no frame from a node that membership does not consider up (with that exact
//! incarnation) changes any scope; every dropped inbound frame is counted by reason; nothing here
//! panics on network input; all queues are bounded (see [`PgConfig`] and the scope module).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use cohort_cluster::net::transport::{Inbound, Transport};
use cohort_cluster::queue::Class;
use cohort_cluster::{MemberInfo, NodeId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::metrics::{PgMetrics, reject};
use super::scope::{BroadcastReport, Scope, new_scope, wire_reject_reason};
use super::wire::{MAX_SCOPE_NAME_BYTES, PG_FRAME_KIND, PgFrame, PgMessage};
use super::{PgError, ScopeLimits};
use crate::host::{ExitHook, ExitReason, ProcessHost};
use crate::pid::Pid;
use crate::supervisor::{
    ChildSpec, Restart, RestartIntensity, Strategy, Supervisor, SupervisorError, SupervisorMetrics, SupervisorSpec,
    SupervisorStatus,
};

/// The scope every node runs, as Erlang's `pg` default scope.
pub const DEFAULT_SCOPE: &str = "default";

/// Most scopes one node runs. Each costs a task, a table and a share of every peer's sync traffic;
/// scopes are configuration-level names (a handful in practice), so 64 leaves wide room while a
/// bug that derives scope names from data is refused ([`PgError::TooManyScopes`]).
pub const MAX_SCOPES: usize = 64;

/// Default period of the full-state backstop: each scope sends its full local state to one peer
/// (round robin from a random start). Lost frames are repaired by the digests
/// ([`DEFAULT_DIGEST_INTERVAL`]); this push is only for what digests cannot see (a hash collision,
/// a peer that sends no digests), so its steady cost stays one sync per scope per 30 s.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(30);

/// Default period of the digest exchange: each scope sends every peer that answered it a
/// [`MembershipDigest`](super::MembershipDigest) of its own memberships (one frame of ~60 bytes
/// per peer per period); a peer whose view differs pulls the full state, at most once per period
/// (see the `digest` module). 2 s repairs a frame lost on a live link within a few seconds, well
/// inside a chaos settle window, for 0.5 small frames per peer per second per scope.
pub const DEFAULT_DIGEST_INTERVAL: Duration = Duration::from_secs(2);

/// Default restart intensity of a scope's supervisor: more than 3 crashes within 10 s and the
/// scope gives up (escalates). Each restart costs a full sync with every peer, so a crash loop is
/// stopped quickly; an occasional crash is absorbed.
pub const DEFAULT_SCOPE_RESTART_INTENSITY: RestartIntensity = RestartIntensity::new(3, Duration::from_secs(10));

/// How long a scope's actor has to return after its supervisor asks it to stop (it returns at
/// its next turn), before its task is aborted.
pub const SCOPE_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Most distinct scope names leaked as `&'static str` supervisor child names per process (see the
/// module docs). Beyond it (only a process running many nodes with different scope names) a
/// scope's child is named [`OVERFLOW_CHILD_NAME`]; [`PgService::health`] still names the scope.
pub const MAX_INTERNED_SCOPE_NAMES: usize = 4 * MAX_SCOPES;

/// The supervisor child name of a scope whose name could not be interned.
pub const OVERFLOW_CHILD_NAME: &str = "pg-scope";

/// The supervisor name of every scope's supervisor.
pub const SUPERVISOR_NAME: &str = "pg";

/// Default delay before resending a full sync to a peer whose pg queue overflowed (or pulling one
/// from a peer whose frame we dropped): long enough for the queue to drain a little, short enough
/// that the peer is stale for well under a second.
pub const DEFAULT_RESYNC_DELAY: Duration = Duration::from_millis(250);

/// Default capacity of a monitor's event channel. A monitor that falls this far behind is dropped
/// (counted) rather than blocking the scope; it re-monitors for a fresh snapshot.
pub const DEFAULT_MONITOR_CAPACITY: usize = 1_024;

/// Default bound on monitors per scope (each holds a channel of up to
/// [`DEFAULT_MONITOR_CAPACITY`] events).
pub const DEFAULT_MAX_MONITORS_PER_SCOPE: usize = 10_000;

/// Default capacity of a scope actor's queue of routed inbound frames; past it frames are dropped
/// (`reason="scope_busy"`) and a full sync is pulled from their sender.
pub const DEFAULT_SCOPE_INBOUND_CAPACITY: usize = 1_024;

/// The pg service's configuration; [`Default`] is the named constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// Bounds of every scope table.
    pub limits: ScopeLimits,
    /// Full-state backstop period ([`DEFAULT_ANTI_ENTROPY_INTERVAL`]).
    pub anti_entropy_interval: Duration,
    /// Digest exchange period ([`DEFAULT_DIGEST_INTERVAL`]); also the unit of the pull rate limit.
    pub digest_interval: Duration,
    /// Resync delay ([`DEFAULT_RESYNC_DELAY`]).
    pub resync_delay: Duration,
    /// Events buffered per monitor ([`DEFAULT_MONITOR_CAPACITY`]).
    pub monitor_capacity: usize,
    /// Monitors per scope ([`DEFAULT_MAX_MONITORS_PER_SCOPE`]).
    pub max_monitors_per_scope: usize,
    /// Routed inbound frames per scope ([`DEFAULT_SCOPE_INBOUND_CAPACITY`]).
    pub scope_inbound_capacity: usize,
    /// Restart intensity of each scope's supervisor ([`DEFAULT_SCOPE_RESTART_INTENSITY`]).
    pub restart_intensity: RestartIntensity,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            limits: ScopeLimits::default(),
            anti_entropy_interval: DEFAULT_ANTI_ENTROPY_INTERVAL,
            digest_interval: DEFAULT_DIGEST_INTERVAL,
            resync_delay: DEFAULT_RESYNC_DELAY,
            monitor_capacity: DEFAULT_MONITOR_CAPACITY,
            max_monitors_per_scope: DEFAULT_MAX_MONITORS_PER_SCOPE,
            scope_inbound_capacity: DEFAULT_SCOPE_INBOUND_CAPACITY,
            restart_intensity: DEFAULT_SCOPE_RESTART_INTENSITY,
        }
    }
}

/// Why [`PgService::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PgStartError {
    /// Not called inside a tokio runtime.
    #[error("the pg service must be started inside a tokio runtime")]
    NoRuntime,
    /// The metrics could not be registered (already registered in this registry?).
    #[error("pg metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Another component already consumes the transport's `pg` class.
    #[error("the transport's pg class already has a subscriber")]
    PgClassTaken,
    /// The scopes' supervision could not be set up (an invalid [`PgConfig::restart_intensity`]).
    #[error("pg scope supervision: {0}")]
    Supervision(#[from] SupervisorError),
}

/// How one scope's supervision is doing (for the admin API and `/livez` details).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeHealth {
    /// The scope.
    pub scope: String,
    /// Its supervisor's status: `Running`, or `Escalated` once its actor crashed more often than
    /// the restart intensity allows (the actor then stays stopped), or stopped at shutdown.
    pub status: SupervisorStatus,
    /// Restarts of its actor so far.
    pub restarts: u64,
}

/// The pg subsystem of one node. Cheap to clone (an `Arc` inside), `Send + Sync`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use cohort_actors::pg::{Group, PgConfig, PgService};
/// use cohort_actors::{DeliveryError, ExitHook, Pid, ProcessHost};
/// use cohort_cluster::NodeId;
///
/// struct OneProcess(NodeId);
/// impl ProcessHost for OneProcess {
///     fn node(&self) -> &NodeId { &self.0 }
///     fn is_hosted(&self, pid: &Pid) -> bool { pid.local == 1 }
///     fn deliver_local(&self, _: &Pid, _: Bytes) -> Result<(), DeliveryError> { Ok(()) }
///     fn add_exit_hook(&self, _: Arc<dyn ExitHook>) {}
/// }
///
/// let me = NodeId::new("alpha", 1);
/// let host = Arc::new(OneProcess(me.clone()));
/// let pg = PgService::start(host, None, PgConfig::default(), &prometheus::Registry::new()).unwrap();
/// let scope = pg.scope("default").unwrap();
/// let room = Group::new("room").unwrap();
/// let pid = Pid::new(me.clone(), 1);
/// scope.join(&room, &[pid.clone()]).unwrap();
/// assert_eq!(&*scope.get_members("room"), &[pid.clone()]);
/// // Pid 2 is not a live process of this node.
/// assert!(scope.join(&room, &[Pid::new(me, 2)]).is_err());
/// assert_eq!(scope.broadcast("room", Bytes::from_static(b"hi")).unwrap().local_delivered, 1);
/// pg.shutdown().await;
/// # });
/// ```
#[derive(Clone)]
pub struct PgService {
    inner: Arc<ServiceInner>,
}

impl std::fmt::Debug for PgService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgService").field("node", &self.inner.node).finish_non_exhaustive()
    }
}

struct ServiceInner {
    node: NodeId,
    host: Arc<dyn ProcessHost>,
    transport: Option<Transport>,
    config: PgConfig,
    metrics: Arc<PgMetrics>,
    supervisor_metrics: SupervisorMetrics,
    scopes: RwLock<HashMap<String, ScopeEntry>>,
    /// Up members by name, with the incarnation membership reported.
    members: Arc<RwLock<HashMap<String, NodeId>>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
}

/// A running scope: its handle and the supervisor of its actor.
struct ScopeEntry {
    scope: Scope,
    supervisor: Supervisor,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl PgService {
    /// Starts the service inside the current tokio runtime: registers the metrics (all at 0) in
    /// `registry`, the exit hook on `host`, subscribes to the transport's `pg` class (if a
    /// transport is given; without one the node is alone) and starts the `"default"` scope.
    ///
    /// The scopes' supervisor metrics are registered in a registry of the service's own (so they
    /// never collide with the node's `SupervisorMetrics`); a node that exports them passes its
    /// own to [`PgService::start_supervised`].
    pub fn start(
        host: Arc<dyn ProcessHost>,
        transport: Option<Transport>,
        config: PgConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, PgStartError> {
        let supervisor_metrics = SupervisorMetrics::register(&prometheus::Registry::new())?;
        Self::start_supervised(host, transport, config, registry, &supervisor_metrics)
    }

    /// [`PgService::start`], with the scopes' supervisors counting restarts and escalations in
    /// `supervisor_metrics` (the node's, shared by all its supervisors).
    pub fn start_supervised(
        host: Arc<dyn ProcessHost>,
        transport: Option<Transport>,
        config: PgConfig,
        registry: &prometheus::Registry,
        supervisor_metrics: &SupervisorMetrics,
    ) -> Result<Self, PgStartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| PgStartError::NoRuntime)?;
        config.restart_intensity.validate()?;
        let metrics = Arc::new(PgMetrics::register(registry)?);
        let inbound = match &transport {
            Some(transport) => Some(transport.subscribe(Class::Pg).ok_or(PgStartError::PgClassTaken)?),
            None => None,
        };
        let inner = Arc::new(ServiceInner {
            node: host.node().clone(),
            host: Arc::clone(&host),
            transport,
            config,
            metrics,
            supervisor_metrics: supervisor_metrics.clone(),
            scopes: RwLock::new(HashMap::new()),
            members: Arc::new(RwLock::new(HashMap::new())),
            shutdown: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            runtime,
        });
        host.add_exit_hook(Arc::new(PgExitHook(Arc::downgrade(&inner))));
        if let Some(inbound) = inbound {
            let router = route(Arc::downgrade(&inner), inbound, inner.shutdown.subscribe());
            let task = inner.runtime.spawn(router);
            inner.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
        }
        let service = Self { inner };
        service.start_scope(DEFAULT_SCOPE)?;
        Ok(service)
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// The scope `name`, started on first use. Refused for a name of 0 or more than
    /// [`MAX_SCOPE_NAME_BYTES`] bytes, beyond [`MAX_SCOPES`], or after shutdown.
    pub fn scope(&self, name: &str) -> Result<Scope, PgError> {
        self.start_scope(name).map_err(|error| match error {
            ScopeStartError::Pg(error) => error,
            // Not reachable: the intensity was validated at start and the spec has one child.
            ScopeStartError::Supervision(_) => PgError::ScopeStopped,
        })
    }

    fn start_scope(&self, name: &str) -> Result<Scope, ScopeStartError> {
        if let Some(entry) = read(&self.inner.scopes).get(name) {
            return Ok(entry.scope.clone());
        }
        if name.is_empty() || name.len() > MAX_SCOPE_NAME_BYTES {
            return Err(PgError::BadScopeName { len: name.len(), max: MAX_SCOPE_NAME_BYTES }.into());
        }
        let inner = &self.inner;
        let mut scopes = write(&inner.scopes);
        if let Some(entry) = scopes.get(name) {
            return Ok(entry.scope.clone());
        }
        if *inner.shutdown.borrow() {
            return Err(PgError::ScopeStopped.into());
        }
        if scopes.len() >= MAX_SCOPES {
            return Err(PgError::TooManyScopes { max: MAX_SCOPES }.into());
        }
        let (scope, runner) = new_scope(
            name,
            Arc::clone(&inner.host),
            inner.transport.clone(),
            Arc::clone(&inner.metrics),
            inner.config.clone(),
            Arc::clone(&inner.members),
        );
        let child = ChildSpec::new(child_name(name), Restart::Permanent, move |stop| runner.clone().run(stop))
            .with_shutdown(SCOPE_SHUTDOWN_GRACE);
        let spec = SupervisorSpec::new(SUPERVISOR_NAME, Strategy::OneForOne)
            .with_intensity(inner.config.restart_intensity)
            .with_child(child);
        // `scope` may be called off the runtime's threads: the supervisor spawns on the service's.
        let supervisor = {
            let _runtime = inner.runtime.enter();
            Supervisor::start(spec, &inner.supervisor_metrics)?
        };
        scopes.insert(name.to_owned(), ScopeEntry { scope: scope.clone(), supervisor });
        drop(scopes);
        // A fresh scope discovers every node already up, as `pg.erl`'s init does. Read after the
        // scope lock is released: `member_down` takes the member lock, then the scope lock. (A
        // restarted actor reads the members itself; a fresh one must not: a `member_down` before
        // the scope is in the map would not reach it.)
        for name in read(&inner.members).keys() {
            scope.shared.connect(name);
        }
        Ok(scope)
    }

    /// The names of the running scopes.
    pub fn scope_names(&self) -> Vec<String> {
        read(&self.inner.scopes).keys().cloned().collect()
    }

    /// The supervision of the pg subsystem as a whole, for the node's `/livez`: `Escalated`
    /// (naming the scope: the child name) as soon as one scope gave up, `Stopped` after shutdown,
    /// `Running` otherwise.
    pub fn status(&self) -> SupervisorStatus {
        let scopes = read(&self.inner.scopes);
        if let Some(escalated) =
            scopes.values().map(|entry| entry.supervisor.status()).find(SupervisorStatus::is_escalated)
        {
            return escalated;
        }
        if *self.inner.shutdown.borrow() {
            return SupervisorStatus::Stopped;
        }
        SupervisorStatus::Running
    }

    /// Every scope's supervision status and restart count, sorted by scope name.
    pub fn health(&self) -> Vec<ScopeHealth> {
        let mut health: Vec<ScopeHealth> = read(&self.inner.scopes)
            .iter()
            .map(|(name, entry)| ScopeHealth {
                scope: name.clone(),
                status: entry.supervisor.status(),
                restarts: entry.scope.shared.restarts(),
            })
            .collect();
        health.sort_by(|a, b| a.scope.cmp(&b.scope));
        health
    }

    /// Test hook: makes the actor of scope `name` panic at its next turn, losing what it had
    /// taken and not yet delivered (queued inbound frames, undrained events), as the worst real
    /// crash would. Returns whether the scope exists. Not for production use.
    #[doc(hidden)]
    pub fn crash_scope_for_test(&self, name: &str) -> bool {
        match read(&self.inner.scopes).get(name) {
            Some(entry) => {
                entry.scope.shared.request_crash();
                true
            }
            None => false,
        }
    }

    /// Membership reports `member` up (or up again, or a new incarnation): every scope sends it a
    /// discover and its full state, and from then on its changes. Members of an older incarnation
    /// are removed first. Also asks the transport to connect (`peer_up` is idempotent); the node
    /// may already have done so.
    pub fn member_up(&self, member: &MemberInfo) {
        let inner = &self.inner;
        if member.id.name == inner.node.name {
            return;
        }
        {
            let mut members = write(&inner.members);
            if let Some(known) = members.get(&member.id.name) {
                if known.incarnation > member.id.incarnation {
                    return;
                }
                if known.incarnation < member.id.incarnation {
                    let older = known.clone();
                    for entry in read(&inner.scopes).values() {
                        entry.scope.shared.table.node_down(&older);
                    }
                }
            }
            members.insert(member.id.name.clone(), member.id.clone());
        }
        if let Some(transport) = &inner.transport {
            transport.peer_up(member);
        }
        for entry in read(&inner.scopes).values() {
            entry.scope.shared.connect(&member.id.name);
        }
    }

    /// Membership reports `node` down or left: its members (and an older incarnation's) are
    /// removed from every scope before this returns, with leave events for monitors, and its
    /// frames are ignored until it is up again. A down for an older incarnation than the known one
    /// is ignored. The transport link is the node's to stop (`Transport::peer_down`): it carries
    /// other classes too.
    pub fn member_down(&self, node: &NodeId) {
        let inner = &self.inner;
        let mut members = write(&inner.members);
        if members.get(&node.name).is_some_and(|known| known.incarnation > node.incarnation) {
            return;
        }
        members.remove(&node.name);
        // Under the member lock: no scope actor is applying a frame of this node meanwhile.
        for entry in read(&inner.scopes).values() {
            entry.scope.shared.table.node_down(node);
            entry.scope.shared.down(&node.name);
        }
    }

    /// Stops the router and every scope's supervisor (their actors stop; their monitors'
    /// channels close) and waits for them, at most one second. Later `scope` calls fail with
    /// [`PgError::ScopeStopped`]. The transport is the node's to shut down.
    pub async fn shutdown(&self) {
        let (tasks, supervisors) = {
            let scopes = write(&self.inner.scopes);
            self.inner.shutdown.send_replace(true);
            let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(PoisonError::into_inner));
            let supervisors: Vec<Supervisor> = scopes.values().map(|entry| entry.supervisor.clone()).collect();
            (tasks, supervisors)
        };
        let all = async {
            let mut stopping = tokio::task::JoinSet::new();
            for supervisor in supervisors {
                stopping.spawn(async move { supervisor.shutdown().await });
            }
            for task in tasks {
                let _ = task.await;
            }
            while stopping.join_next().await.is_some() {}
        };
        if tokio::time::timeout(Duration::from_secs(1), all).await.is_err() {
            tracing::warn!(node = %self.inner.node, "pg service tasks did not stop within 1 s");
        }
    }
}

/// Why a scope could not be started.
#[derive(Debug, thiserror::Error)]
enum ScopeStartError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Supervision(#[from] SupervisorError),
}

impl From<ScopeStartError> for PgStartError {
    fn from(error: ScopeStartError) -> Self {
        match error {
            ScopeStartError::Supervision(error) => PgStartError::Supervision(error),
            // The default scope's name is valid and the service is new: only a runtime problem.
            ScopeStartError::Pg(_) => PgStartError::NoRuntime,
        }
    }
}

/// The `&'static str` supervisor child name of scope `name`: interned (leaked once per distinct
/// name per process), at most [`MAX_INTERNED_SCOPE_NAMES`] names, then [`OVERFLOW_CHILD_NAME`].
fn child_name(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(interned) = names.get(name) {
        return interned;
    }
    if names.len() >= MAX_INTERNED_SCOPE_NAMES {
        return OVERFLOW_CHILD_NAME;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

impl ServiceInner {
    /// Decodes, validates and routes one inbound pg frame. Never panics; every drop is counted.
    fn route_one(&self, inbound: Inbound) {
        let metrics = &self.metrics;
        if inbound.kind != PG_FRAME_KIND {
            metrics.reject(reject::UNKNOWN_KIND);
            return;
        }
        let frame: PgFrame = match rmp_serde::from_slice(&inbound.payload) {
            Ok(frame) => frame,
            Err(error) => {
                metrics.reject(reject::DECODE);
                tracing::debug!(peer = %inbound.from, %error, "undecodable pg frame dropped");
                return;
            }
        };
        if let Err(error) = frame.validate() {
            metrics.reject(wire_reject_reason(&error));
            tracing::debug!(peer = %inbound.from, %error, "invalid pg frame dropped");
            return;
        }
        if frame.from != inbound.from {
            metrics.reject(reject::SENDER_MISMATCH);
            tracing::debug!(peer = %inbound.from, claimed = %frame.from, "pg frame with a forged sender dropped");
            return;
        }
        let Some(scope) = read(&self.scopes).get(&frame.scope).map(|entry| entry.scope.clone()) else {
            metrics.reject(reject::UNKNOWN_SCOPE);
            return;
        };
        if let PgMessage::Broadcast { group, payload } = &frame.message {
            // Stateless: fan out here, without a trip through the scope actor.
            if read(&self.members).get(&inbound.from.name) != Some(&inbound.from) {
                metrics.reject(reject::PEER_NOT_UP);
                return;
            }
            metrics.frame("broadcast", "in");
            scope.shared.fan_out_local(group.as_str(), &payload.0, &mut BroadcastReport::default());
            return;
        }
        scope.shared.route(inbound.from, frame);
    }
}

/// The router: the one consumer of the transport's pg class.
async fn route(inner: Weak<ServiceInner>, mut inbound: mpsc::Receiver<Inbound>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            frame = inbound.recv() => {
                let (Some(frame), Some(inner)) = (frame, inner.upgrade()) else { return };
                inner.route_one(frame);
            }
        }
    }
}

/// Removes an exited process from every group of every scope and drops the monitors it owned.
struct PgExitHook(Weak<ServiceInner>);

impl ExitHook for PgExitHook {
    fn on_exit(&self, pid: &Pid, _reason: &ExitReason) {
        let Some(inner) = self.0.upgrade() else { return };
        for entry in read(&inner.scopes).values() {
            entry.scope.shared.process_exit(pid);
        }
    }
}
