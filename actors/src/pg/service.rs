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
//! Lock order: the member lock, then the scope map lock (never the reverse).
//!
//! Invariants: no frame from a node that membership does not consider up (with that exact
//! incarnation) changes any scope; every dropped inbound frame is counted by reason; nothing here
//! panics on network input; all queues are bounded (see [`PgConfig`] and the scope module).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
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

/// The scope every node runs, as Erlang's `pg` default scope.
pub const DEFAULT_SCOPE: &str = "default";

/// Most scopes one node runs. Each costs a task, a table and a share of every peer's sync traffic;
/// scopes are configuration-level names (a handful in practice), so 64 leaves wide room while a
/// bug that derives scope names from data is refused ([`PgError::TooManyScopes`]).
pub const MAX_SCOPES: usize = 64;

/// Default period of anti-entropy: each scope sends its full local state to one peer (round robin
/// from a random start), so a lost frame is repaired within `peers × 30 s` at worst while the
/// steady cost stays one sync per scope per 30 s.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(30);

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
    /// Anti-entropy period ([`DEFAULT_ANTI_ENTROPY_INTERVAL`]).
    pub anti_entropy_interval: Duration,
    /// Resync delay ([`DEFAULT_RESYNC_DELAY`]).
    pub resync_delay: Duration,
    /// Events buffered per monitor ([`DEFAULT_MONITOR_CAPACITY`]).
    pub monitor_capacity: usize,
    /// Monitors per scope ([`DEFAULT_MAX_MONITORS_PER_SCOPE`]).
    pub max_monitors_per_scope: usize,
    /// Routed inbound frames per scope ([`DEFAULT_SCOPE_INBOUND_CAPACITY`]).
    pub scope_inbound_capacity: usize,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            limits: ScopeLimits::default(),
            anti_entropy_interval: DEFAULT_ANTI_ENTROPY_INTERVAL,
            resync_delay: DEFAULT_RESYNC_DELAY,
            monitor_capacity: DEFAULT_MONITOR_CAPACITY,
            max_monitors_per_scope: DEFAULT_MAX_MONITORS_PER_SCOPE,
            scope_inbound_capacity: DEFAULT_SCOPE_INBOUND_CAPACITY,
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
    scopes: RwLock<HashMap<String, Scope>>,
    /// Up members by name, with the incarnation membership reported.
    members: Arc<RwLock<HashMap<String, NodeId>>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
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
    pub fn start(
        host: Arc<dyn ProcessHost>,
        transport: Option<Transport>,
        config: PgConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, PgStartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| PgStartError::NoRuntime)?;
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
        service.scope(DEFAULT_SCOPE).map_err(|_| PgStartError::NoRuntime)?;
        Ok(service)
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// The scope `name`, started on first use. Refused for a name of 0 or more than
    /// [`MAX_SCOPE_NAME_BYTES`] bytes, beyond [`MAX_SCOPES`], or after shutdown.
    pub fn scope(&self, name: &str) -> Result<Scope, PgError> {
        if let Some(scope) = read(&self.inner.scopes).get(name) {
            return Ok(scope.clone());
        }
        if name.is_empty() || name.len() > MAX_SCOPE_NAME_BYTES {
            return Err(PgError::BadScopeName { len: name.len(), max: MAX_SCOPE_NAME_BYTES });
        }
        let inner = &self.inner;
        let mut scopes = write(&inner.scopes);
        if let Some(scope) = scopes.get(name) {
            return Ok(scope.clone());
        }
        if *inner.shutdown.borrow() {
            return Err(PgError::ScopeStopped);
        }
        if scopes.len() >= MAX_SCOPES {
            return Err(PgError::TooManyScopes { max: MAX_SCOPES });
        }
        let (scope, actor) = new_scope(
            name,
            Arc::clone(&inner.host),
            inner.transport.clone(),
            Arc::clone(&inner.metrics),
            inner.config.clone(),
            Arc::clone(&inner.members),
            inner.shutdown.subscribe(),
        );
        let task = inner.runtime.spawn(actor);
        inner.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
        scopes.insert(name.to_owned(), scope.clone());
        drop(scopes);
        // A fresh scope discovers every node already up, as `pg.erl`'s init does. Read after the
        // scope lock is released: `member_down` takes the member lock, then the scope lock.
        for name in read(&inner.members).keys() {
            scope.shared.connect(name);
        }
        Ok(scope)
    }

    /// The names of the running scopes.
    pub fn scope_names(&self) -> Vec<String> {
        read(&self.inner.scopes).keys().cloned().collect()
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
                    for scope in read(&inner.scopes).values() {
                        scope.shared.table.node_down(&older);
                    }
                }
            }
            members.insert(member.id.name.clone(), member.id.clone());
        }
        if let Some(transport) = &inner.transport {
            transport.peer_up(member);
        }
        for scope in read(&inner.scopes).values() {
            scope.shared.connect(&member.id.name);
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
        for scope in read(&inner.scopes).values() {
            scope.shared.table.node_down(node);
            scope.shared.down(&node.name);
        }
    }

    /// Stops the router and every scope actor (their monitors' channels close) and waits for them,
    /// at most one second. Later `scope` calls fail with [`PgError::ScopeStopped`]. The transport
    /// is the node's to shut down.
    pub async fn shutdown(&self) {
        let tasks = {
            let _scopes = write(&self.inner.scopes);
            self.inner.shutdown.send_replace(true);
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(PoisonError::into_inner))
        };
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(1), all).await.is_err() {
            tracing::warn!(node = %self.inner.node, "pg service tasks did not stop within 1 s");
        }
    }
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
        let Some(scope) = read(&self.scopes).get(&frame.scope).cloned() else {
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
        for scope in read(&inner.scopes).values() {
            scope.shared.process_exit(pid);
        }
    }
}
