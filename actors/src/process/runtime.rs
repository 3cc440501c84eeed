//! The state of one node's process runtime ([`Shared`], behind the `Processes` handle): the process
//! table, the exit pipeline, monitors, remote sends and the inbound `user` frames.
//!
//! Invariants:
//! - A process is in the table from the end of its wrapper's `pre_start` until the one run of the
//!   exit pipeline that removes it; `is_hosted` is exactly "in the table".
//! - The exit pipeline runs once per process, in this order: remove from the table, call every
//!   exit hook synchronously, then deliver DOWN to local watchers (under the monitor lock, so a
//!   `demonitor` that returns has either removed the monitor or seen its DOWN delivered) and send
//!   DOWN notices to remote watchers' nodes. It also drops the monitors the process held.
//! - A monitor is checked against the table under the monitor lock; since the pipeline removes
//!   from the table before it takes that lock, a monitor is either refused as `NoProc` or is
//!   released by the pipeline: never both, never neither.
//! - Frames from peers are outside input: decoded with bounds, checked against the authenticated
//!   sender, dropped and counted when wrong, never a panic.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use cohort_cluster::NodeId;
use cohort_cluster::net::transport::{Inbound, SendError as TransportSendError, Transport};
use cohort_cluster::queue::Class;
use dashmap::DashMap;
use ractor::{Actor, ActorId, ActorRef, Message};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::ExitSignal;
use super::config::{ProcessConfig, bounded_reason_text};
use super::error::{MonitorError, SendError, SpawnError};
use super::hosted::{Decoder, Entry, Hosted, HostedEntry};
use super::mailbox::{ProcessRef, Slot};
use super::metrics::{self, Metrics};
use super::monitor::{Down, MonitorRef, MonitorTable, Refusal};
use super::supervisor::{Observed, SupervisorMsg, exit_reason};
use super::wire::{
    self, DemonitorRequest, DownNotice, KIND_DEMONITOR, KIND_DOWN, KIND_MONITOR, KIND_SEND, KIND_SEND_FENCED,
    MAX_FENCED_NAME_BYTES, MonitorRequest, PROCESS_WIRE_VERSION,
};
use crate::host::{DeliveryError, ExitHook, ExitReason, FenceGuard};
use crate::pid::Pid;

/// Puts a [`Down`] into a watcher's mailbox (never refused for capacity).
pub(crate) type DownSink = Arc<dyn Fn(Down) + Send + Sync>;

/// Warn-level log lines per second on hot paths (undecodable payloads, bad frames): SPEC 10.
const WARN_LOGS_PER_SECOND: u32 = 10;

/// Peers whose incarnations the runtime remembers (to refuse sends to superseded or down pids).
///
/// Why: one small entry per node name ever heard from; the transport tracks at most 1024 peers,
/// so 4096 leaves room for restarts and renames while bounding the map.
const MAX_TRACKED_PEERS: usize = 4096;

/// How long `shutdown` waits for killed processes before it clears the table itself.
///
/// Why: a kill aborts the process's task at its next await, so it is prompt unless a handler
/// blocks its thread; one second bounds shutdown even then.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// What the runtime knows about another node's incarnations.
#[derive(Clone, Copy, Debug, Default)]
struct PeerIncarnations {
    /// The newest incarnation a frame came from.
    seen: u64,
    /// The newest incarnation declared down (`node_down`); 0 if none.
    down_up_to: u64,
}

/// Why a remote node cannot be reached for a pid.
enum Unreachable {
    /// A newer incarnation of the node exists: the pid is dead by definition.
    Superseded,
    /// The node is down (or there is no transport).
    Down,
}

/// A rate limit for warn-level log lines (a window of one second).
struct LogLimiter {
    window: Mutex<(Instant, u32)>,
}

impl LogLimiter {
    fn new() -> Self {
        Self { window: Mutex::new((Instant::now(), 0)) }
    }

    fn may_log(&self) -> bool {
        let mut window = lock(&self.window);
        let now = Instant::now();
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        if window.1 < WARN_LOGS_PER_SECOND {
            window.1 += 1;
            true
        } else {
            false
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent before anything that can panic
    // (sinks and hooks are outside code, caught or panic-free), so poisoning is ignored.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tasks owned by the runtime, stopped at shutdown.
#[derive(Default)]
struct Tasks {
    supervisor: Option<JoinHandle<()>>,
    inbound: Option<JoinHandle<()>>,
}

/// The state of one node's process runtime (see the module docs).
pub(crate) struct Shared {
    pub(crate) node: NodeId,
    config: ProcessConfig,
    transport: Option<Transport>,
    table: DashMap<u64, Arc<dyn HostedEntry>>,
    by_actor: DashMap<ActorId, u64>,
    /// Processes admitted (reserved at spawn, released by the pipeline): bounded by
    /// `config.max_processes`.
    live: AtomicUsize,
    next_local: AtomicU64,
    hooks: ArcSwap<Vec<Arc<dyn ExitHook>>>,
    fence_guard: OnceLock<Arc<dyn FenceGuard>>,
    monitors: Mutex<MonitorTable<DownSink>>,
    pub(crate) metrics: Metrics,
    supervisor: OnceLock<ActorRef<SupervisorMsg>>,
    tasks: Mutex<Tasks>,
    shutting_down: AtomicBool,
    emptied: Notify,
    peers: DashMap<String, PeerIncarnations>,
    log_limiter: LogLimiter,
}

impl Shared {
    pub(crate) fn new(node: NodeId, transport: Option<Transport>, config: ProcessConfig, metrics: Metrics) -> Self {
        let monitors = MonitorTable::new(node.clone(), config.max_monitors_per_process, config.max_monitors_per_node);
        Self {
            node,
            config,
            transport,
            table: DashMap::new(),
            by_actor: DashMap::new(),
            live: AtomicUsize::new(0),
            next_local: AtomicU64::new(0),
            hooks: ArcSwap::from_pointee(Vec::new()),
            fence_guard: OnceLock::new(),
            monitors: Mutex::new(monitors),
            metrics,
            supervisor: OnceLock::new(),
            tasks: Mutex::new(Tasks::default()),
            shutting_down: AtomicBool::new(false),
            emptied: Notify::new(),
            peers: DashMap::new(),
            log_limiter: LogLimiter::new(),
        }
    }

    /// Wires the supervisor actor and the inbound task in (once, from `Processes::start`).
    pub(crate) fn attach(
        &self,
        supervisor: ActorRef<SupervisorMsg>,
        supervisor_task: JoinHandle<()>,
        inbound: Option<JoinHandle<()>>,
    ) {
        let _ = self.supervisor.set(supervisor);
        let mut tasks = lock(&self.tasks);
        tasks.supervisor = Some(supervisor_task);
        tasks.inbound = inbound;
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn lock_monitors(&self) -> MutexGuard<'_, MonitorTable<DownSink>> {
        lock(&self.monitors)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn is_hosted(&self, pid: &Pid) -> bool {
        pid.node == self.node && self.table.contains_key(&pid.local)
    }

    fn entry(&self, pid: &Pid) -> Option<Arc<dyn HostedEntry>> {
        if pid.node != self.node {
            return None;
        }
        self.table.get(&pid.local).map(|entry| Arc::clone(entry.value()))
    }

    pub(crate) fn add_exit_hook(&self, hook: Arc<dyn ExitHook>) {
        self.hooks.rcu(|hooks| {
            let mut hooks = Vec::clone(hooks);
            hooks.push(Arc::clone(&hook));
            hooks
        });
    }

    // ---------------------------------------------------------------- spawn and the table

    /// Reserves a place in the table; false at `max_processes`.
    fn reserve(&self) -> bool {
        let max = self.config.max_processes;
        self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| (live < max).then_some(live + 1)).is_ok()
    }

    pub(crate) async fn spawn<A: Actor>(
        self: &Arc<Self>,
        actor: A,
        args: A::Arguments,
        decode: Option<Decoder<A::Msg>>,
    ) -> Result<(Pid, ProcessRef<A::Msg>), SpawnError> {
        if self.is_shutting_down() {
            return Err(SpawnError::Canceled);
        }
        let Some(supervisor) = self.supervisor.get().map(|s| s.get_cell()) else { return Err(SpawnError::Canceled) };
        if !self.reserve() {
            self.metrics.spawn_refused.inc();
            return Err(SpawnError::TableFull { max: self.config.max_processes });
        }
        let local = self.next_local.fetch_add(1, Ordering::Relaxed) + 1;
        let pid = Pid::new(self.node.clone(), local);
        let slot = Arc::new(Slot::new(pid.clone(), self.config.mailbox_capacity, self.metrics.mailbox_refused.clone()));
        let hosted = Hosted::new(actor, Arc::clone(&slot), Arc::downgrade(self), decode);
        match <Hosted<A> as Actor>::spawn_linked(None, hosted, args, supervisor).await {
            Ok((actor, join)) => {
                self.watch_join(local, join);
                Ok((pid, ProcessRef::new(actor, slot)))
            }
            Err(error) => {
                // Registered but not linked (the supervisor is stopping): it never ran, but it was
                // visible, so it leaves through the pipeline like any other exit.
                if !self.exit_pipeline(local, ExitReason::Error(bounded_reason_text(error.to_string()))) {
                    self.live.fetch_sub(1, Ordering::AcqRel);
                }
                if self.is_shutting_down() {
                    Err(SpawnError::Canceled)
                } else {
                    Err(SpawnError::Startup(bounded_reason_text(error.to_string())))
                }
            }
        }
    }

    /// Called by the wrapper at the end of `pre_start`; false once shutting down.
    pub(crate) fn register(&self, entry: Arc<dyn HostedEntry>, actor: ActorId) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        let local = entry.slot().pid.local;
        self.by_actor.insert(actor, local);
        self.table.insert(local, entry);
        self.metrics.processes.inc();
        self.metrics.spawned.inc();
        true
    }

    /// The backstop: when the process's task ends, make sure its exit reached the pipeline.
    fn watch_join(self: &Arc<Self>, local: u64, join: JoinHandle<()>) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let _ = join.await;
            let Some(node) = node.upgrade() else { return };
            if !node.table.contains_key(&local) {
                return;
            }
            // Through the supervisor, so its supervision event (already queued, and polled first)
            // is handled before this and names the exit; directly if the supervisor is gone.
            let sent = node.supervisor.get().is_some_and(|s| s.send_message(SupervisorMsg::Joined(local)).is_ok());
            if !sent {
                node.on_joined(local);
            }
        });
    }

    /// A supervision event for `actor` (on the supervisor's task).
    pub(crate) fn on_exit_observed(&self, actor: ActorId, observed: Observed) {
        let Some(local) = self.by_actor.get(&actor).map(|local| *local) else { return };
        let Some(entry) = self.table.get(&local).map(|e| Arc::clone(e.value())) else { return };
        self.exit_pipeline(local, exit_reason(observed, entry.slot().hints()));
    }

    /// The join handle of `local` resolved (on the supervisor's task, or here if it is gone).
    pub(crate) fn on_joined(&self, local: u64) {
        let Some(entry) = self.table.get(&local).map(|e| Arc::clone(e.value())) else { return };
        if self.log_limiter.may_log() {
            tracing::warn!(pid = %entry.slot().pid, "process exit seen by its join handle only");
        }
        self.exit_pipeline(local, exit_reason(Observed::Joined, entry.slot().hints()));
    }

    /// The exit pipeline (see the module docs). True if this call removed the process.
    pub(crate) fn exit_pipeline(&self, local: u64, reason: ExitReason) -> bool {
        let Some((_, entry)) = self.table.remove(&local) else { return false };
        self.by_actor.remove(&entry.cell().get_id());
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.metrics.processes.dec();
        self.metrics.exit(&reason);
        let pid = entry.slot().pid.clone();
        tracing::debug!(%pid, %reason, "process exited");

        for hook in self.hooks.load().iter() {
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook.on_exit(&pid, &reason)));
            if called.is_err() {
                self.metrics.hook_panics.inc();
                tracing::error!(%pid, "an exit hook panicked");
            }
        }

        let exited = {
            let mut monitors = self.lock_monitors();
            let exited = monitors.take_exited(local);
            for (monitor, record) in &exited.watched_by {
                (record.sink)(Down { monitor: *monitor, pid: pid.clone(), reason: reason.clone() });
            }
            self.metrics.monitors.set(monitors.len() as i64);
            exited
        };
        for (watcher_node, monitor) in exited.remote_watchers {
            let notice = DownNotice {
                version: PROCESS_WIRE_VERSION,
                monitor,
                watcher_incarnation: watcher_node.incarnation,
                pid: pid.clone(),
                reason: reason.clone(),
            };
            self.send_control(&watcher_node.name, KIND_DOWN, &notice);
        }
        for (monitor, target) in exited.remote_targets {
            let request = DemonitorRequest { version: PROCESS_WIRE_VERSION, monitor, target: target.clone() };
            self.send_control(&target.node.name, KIND_DEMONITOR, &request);
        }
        if self.table.is_empty() {
            self.emptied.notify_waiters();
        }
        true
    }

    // ---------------------------------------------------------------- sends

    /// Decodes and delivers an encoded message to a local process, counting undecodable payloads.
    pub(crate) fn deliver_local(&self, pid: &Pid, payload: &[u8]) -> Result<(), DeliveryError> {
        let entry = self.entry(pid).ok_or_else(|| DeliveryError::NotHosted(pid.clone()))?;
        self.deliver_to_entry(entry.as_ref(), payload)
    }

    fn deliver_to_entry(&self, entry: &dyn HostedEntry, payload: &[u8]) -> Result<(), DeliveryError> {
        let result = entry.deliver_encoded(payload);
        if let Err(DeliveryError::Undecodable(pid)) = &result {
            self.metrics.undecodable.inc();
            if self.log_limiter.may_log() {
                tracing::warn!(%pid, bytes = payload.len(), "message does not decode into the process's type; dropped");
            }
        }
        result
    }

    pub(crate) fn send_to<M: Message + Serialize>(&self, pid: &Pid, message: M) -> Result<(), SendError> {
        if pid.node == self.node {
            let entry = self.entry(pid).ok_or_else(|| SendError::NotHosted(pid.clone()))?;
            if let Some(typed) = entry.as_any().downcast_ref::<Entry<M>>() {
                return typed.process.send(message);
            }
            let bytes = rmp_serde::to_vec(&message).map_err(|e| SendError::Unencodable(e.to_string()))?;
            return self.deliver_to_entry(entry.as_ref(), &bytes).map_err(SendError::from);
        }
        let result = self.send_remote(pid, &message);
        self.metrics.remote_send(match &result {
            Ok(()) => metrics::REMOTE_QUEUED,
            Err(SendError::QueueSaturated { .. }) => metrics::REMOTE_QUEUE_SATURATED,
            Err(SendError::TooLarge { .. }) => metrics::REMOTE_TOO_LARGE,
            Err(SendError::Canceled) => metrics::REMOTE_CANCELED,
            Err(SendError::Unencodable(_)) => metrics::REMOTE_UNENCODABLE,
            Err(_) => metrics::REMOTE_NOT_HOSTED,
        });
        result
    }

    /// Installs the fence guard (once per node; later calls are ignored and return false).
    pub(crate) fn set_fence_guard(&self, guard: Arc<dyn FenceGuard>) -> bool {
        self.fence_guard.set(guard).is_ok()
    }

    fn fence_admits(&self, name: &str, fence_token: u64, pid: &Pid) -> bool {
        // Without a guard nobody can vouch for the token: refusing is the safe side.
        let admitted = self.fence_guard.get().is_some_and(|guard| guard.admit(name, fence_token, pid));
        self.metrics.fenced_send(admitted);
        admitted
    }

    /// A send by consistent-tier name carrying its fencing token: checked by the fence guard of
    /// the node that hosts `pid` (here for a local target, on arrival for a remote one).
    pub(crate) fn send_fenced<M: Message + Serialize>(
        &self,
        pid: &Pid,
        name: &str,
        fence_token: u64,
        message: M,
    ) -> Result<(), SendError> {
        if name.is_empty() || name.len() > MAX_FENCED_NAME_BYTES {
            return Err(SendError::Unencodable(format!("a fenced name must be 1-{MAX_FENCED_NAME_BYTES} bytes")));
        }
        if pid.node == self.node {
            if !self.fence_admits(name, fence_token, pid) {
                self.metrics.inbound_dropped(metrics::INBOUND_EPOCH_MISMATCH);
                return Err(SendError::EpochMismatch { name: name.to_string(), fence_token });
            }
            return self.send_to(pid, message);
        }
        // Counted like a plain remote send, refusals before the transport included.
        let result = self.send_fenced_remote(pid, name, fence_token, &message);
        self.metrics.remote_send(match &result {
            Ok(()) => metrics::REMOTE_QUEUED,
            Err(SendError::QueueSaturated { .. }) => metrics::REMOTE_QUEUE_SATURATED,
            Err(SendError::TooLarge { .. }) => metrics::REMOTE_TOO_LARGE,
            Err(SendError::Canceled) => metrics::REMOTE_CANCELED,
            Err(SendError::Unencodable(_)) => metrics::REMOTE_UNENCODABLE,
            Err(_) => metrics::REMOTE_NOT_HOSTED,
        });
        result
    }

    fn send_fenced_remote<M: Serialize>(
        &self,
        pid: &Pid,
        name: &str,
        fence_token: u64,
        message: &M,
    ) -> Result<(), SendError> {
        if self.reachability(&pid.node).is_some() {
            return Err(SendError::NotHosted(pid.clone()));
        }
        let Some(transport) = &self.transport else { return Err(SendError::NotHosted(pid.clone())) };
        let frame = wire::encode_send_fenced(pid, name, fence_token, message)
            .map_err(|e| SendError::Unencodable(e.to_string()))?;
        transport
            .send(&pid.node.name, Class::User, KIND_SEND_FENCED, frame)
            .map(|_| ())
            .map_err(|e| SendError::from_transport(e, pid))
    }

    fn on_fenced_send_frame(&self, from: &NodeId, payload: &Bytes) {
        let frame = match wire::decode_send_fenced(payload) {
            Ok(frame) => frame,
            Err(error) => return self.drop_frame(from, KIND_SEND_FENCED, metrics::INBOUND_MALFORMED, &error),
        };
        let pid = Pid::new(NodeId::new(self.node.name.clone(), frame.send.incarnation), frame.send.local);
        if !self.fence_admits(&frame.name, frame.fence_token, &pid) {
            return self.metrics.inbound_dropped(metrics::INBOUND_EPOCH_MISMATCH);
        }
        match self.deliver_local(&pid, &frame.send.message) {
            Ok(()) | Err(DeliveryError::Undecodable(_)) => {}
            Err(DeliveryError::NotHosted(_)) => self.metrics.inbound_dropped(metrics::INBOUND_NOT_HOSTED),
            Err(DeliveryError::MailboxFull(_)) => self.metrics.inbound_dropped(metrics::INBOUND_MAILBOX_FULL),
        }
    }

    fn send_remote<M: Serialize>(&self, pid: &Pid, message: &M) -> Result<(), SendError> {
        if pid.node.name == self.node.name || self.reachability(&pid.node).is_some() {
            return Err(SendError::NotHosted(pid.clone()));
        }
        let Some(transport) = &self.transport else { return Err(SendError::NotHosted(pid.clone())) };
        let frame = wire::encode_send(pid, message).map_err(|e| SendError::Unencodable(e.to_string()))?;
        transport
            .send(&pid.node.name, Class::User, KIND_SEND, frame)
            .map(|_| ())
            .map_err(|e| SendError::from_transport(e, pid))
    }

    /// Why `node` (another node) is unreachable, if the runtime knows it is.
    fn reachability(&self, node: &NodeId) -> Option<Unreachable> {
        if self.transport.is_none() {
            return Some(Unreachable::Down);
        }
        let known = self.peers.get(&node.name).map(|p| *p)?;
        if node.incarnation < known.seen {
            Some(Unreachable::Superseded)
        } else if node.incarnation <= known.down_up_to {
            Some(Unreachable::Down)
        } else {
            None
        }
    }

    fn update_peer(&self, name: &str, update: impl FnOnce(&mut PeerIncarnations)) {
        if let Some(mut peer) = self.peers.get_mut(name) {
            update(&mut peer);
            return;
        }
        if self.peers.len() >= MAX_TRACKED_PEERS {
            return;
        }
        let mut peer = self.peers.entry(name.to_owned()).or_default();
        update(&mut peer);
    }

    pub(crate) fn exit(&self, pid: &Pid, signal: ExitSignal) -> Result<(), SendError> {
        let entry = self.entry(pid).ok_or_else(|| SendError::NotHosted(pid.clone()))?;
        let cell = entry.cell();
        match signal {
            ExitSignal::Normal => {
                entry.slot().request_exit(ExitReason::Normal);
                cell.stop(Some("normal".to_owned()));
            }
            ExitSignal::Error(text) => {
                let text = bounded_reason_text(text);
                entry.slot().request_exit(ExitReason::Error(text.clone()));
                cell.stop(Some(text));
            }
            ExitSignal::Kill => {
                entry.slot().request_exit(ExitReason::Killed);
                cell.kill();
            }
        }
        Ok(())
    }

    pub(crate) fn lookup<M: Message>(&self, pid: &Pid) -> Option<ProcessRef<M>> {
        let entry = self.entry(pid)?;
        entry.as_any().downcast_ref::<Entry<M>>().map(|typed| typed.process.clone())
    }

    pub(crate) fn pid_of(&self, actor: ActorId) -> Option<Pid> {
        let local = self.by_actor.get(&actor).map(|local| *local)?;
        Some(Pid::new(self.node.clone(), local))
    }

    // ---------------------------------------------------------------- monitors

    fn refused(&self, refusal: Refusal) -> MonitorError {
        match refusal {
            Refusal::ProcessLimit(pid) => {
                self.metrics.monitor_refused(metrics::MONITOR_PROCESS_LIMIT);
                MonitorError::ProcessLimit { pid, max: self.config.max_monitors_per_process }
            }
            Refusal::NodeLimit => {
                self.metrics.monitor_refused(metrics::MONITOR_NODE_LIMIT);
                MonitorError::NodeLimit { max: self.config.max_monitors_per_node }
            }
        }
    }

    pub(crate) fn monitor<M>(&self, watcher: &ProcessRef<M>, target: &Pid) -> Result<MonitorRef, MonitorError>
    where
        M: Message + From<Down>,
    {
        let watcher_pid = watcher.pid().clone();
        if watcher_pid.node != self.node {
            return Err(MonitorError::NotHosted(watcher_pid));
        }
        if self.is_shutting_down() {
            return Err(MonitorError::Canceled);
        }
        let process = watcher.clone();
        let sink: DownSink = Arc::new(move |down: Down| {
            process.send_unbounded(M::from(down));
        });
        let mut monitors = self.lock_monitors();
        if !self.table.contains_key(&watcher_pid.local) {
            return Err(MonitorError::NotHosted(watcher_pid));
        }
        let immediate = if target.node == self.node {
            (!self.table.contains_key(&target.local)).then_some(ExitReason::NoProc)
        } else if target.node.name == self.node.name {
            // Another incarnation of this node: dead by definition.
            Some(ExitReason::NoProc)
        } else {
            match self.reachability(&target.node) {
                Some(Unreachable::Superseded) => Some(ExitReason::NoProc),
                Some(Unreachable::Down) => Some(ExitReason::NoConnection),
                None => None,
            }
        };
        if let Some(reason) = immediate {
            let monitor = monitors.next_ref();
            sink(Down { monitor, pid: target.clone(), reason });
            return Ok(monitor);
        }
        let monitor = monitors.add_local(watcher_pid.local, target.clone(), sink).map_err(|r| self.refused(r))?;
        self.metrics.monitors.set(monitors.len() as i64);
        drop(monitors);
        if target.node == self.node {
            return Ok(monitor);
        }

        let request =
            MonitorRequest { version: PROCESS_WIRE_VERSION, monitor, watcher: watcher_pid, target: target.clone() };
        let sent = match (&self.transport, wire::encode_control(&request)) {
            (Some(transport), Ok(frame)) => transport.send(&target.node.name, Class::User, KIND_MONITOR, frame),
            _ => Err(TransportSendError::UnknownPeer),
        };
        let Err(error) = sent else { return Ok(monitor) };
        let mut monitors = self.lock_monitors();
        // Gone already: node_down released it (and delivered its DOWN) meanwhile.
        let Some(record) = monitors.remove_local(monitor) else { return Ok(monitor) };
        self.metrics.monitors.set(monitors.len() as i64);
        if let TransportSendError::QueueSaturated { class } = error {
            self.metrics.monitor_refused(metrics::MONITOR_QUEUE_SATURATED);
            return Err(MonitorError::QueueSaturated { class });
        }
        // The target's node is not connected (or the transport is stopping): Erlang's noconnection.
        (record.sink)(Down { monitor, pid: target.clone(), reason: ExitReason::NoConnection });
        Ok(monitor)
    }

    pub(crate) fn demonitor(&self, monitor: MonitorRef) -> bool {
        let record = {
            let mut monitors = self.lock_monitors();
            let record = monitors.remove_local(monitor);
            self.metrics.monitors.set(monitors.len() as i64);
            record
        };
        let Some(record) = record else { return false };
        if record.target.node != self.node {
            let request = DemonitorRequest { version: PROCESS_WIRE_VERSION, monitor, target: record.target.clone() };
            self.send_control(&record.target.node.name, KIND_DEMONITOR, &request);
        }
        true
    }

    pub(crate) fn node_down(&self, node: &NodeId) {
        if node.name == self.node.name {
            return;
        }
        self.update_peer(&node.name, |peer| peer.down_up_to = peer.down_up_to.max(node.incarnation));
        let mut monitors = self.lock_monitors();
        for (monitor, record) in monitors.take_node_down(node) {
            (record.sink)(Down { monitor, pid: record.target.clone(), reason: ExitReason::NoConnection });
        }
        self.metrics.monitors.set(monitors.len() as i64);
    }

    // ---------------------------------------------------------------- frames

    fn send_control<F: wire::ControlFrame>(&self, peer: &str, kind: u8, frame: &F) {
        let Some(transport) = &self.transport else { return };
        let result = wire::encode_control(frame)
            .map_err(|e| e.to_string())
            .and_then(|bytes| transport.send(peer, Class::User, kind, bytes).map_err(|e| e.to_string()));
        if let Err(error) = result
            && self.log_limiter.may_log()
        {
            tracing::warn!(peer, kind, %error, "process control frame not sent");
        }
    }

    fn drop_frame(&self, from: &NodeId, kind: u8, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.metrics.inbound_dropped(reason);
        if self.log_limiter.may_log() {
            tracing::warn!(peer = %from, kind, reason, %detail, "user-class frame dropped");
        }
    }

    fn reply_down(&self, to: &NodeId, monitor: MonitorRef, pid: Pid, reason: ExitReason) {
        let notice =
            DownNotice { version: PROCESS_WIRE_VERSION, monitor, watcher_incarnation: to.incarnation, pid, reason };
        self.send_control(&to.name, KIND_DOWN, &notice);
    }

    /// One frame from a peer's `user` class.
    pub(crate) fn on_frame(&self, frame: Inbound) {
        let Inbound { from, kind, payload } = frame;
        self.update_peer(&from.name, |peer| peer.seen = peer.seen.max(from.incarnation));
        match kind {
            KIND_SEND => self.on_send_frame(&from, &payload),
            KIND_SEND_FENCED => self.on_fenced_send_frame(&from, &payload),
            KIND_MONITOR => match wire::decode_control::<MonitorRequest>(&payload) {
                Ok(request) => self.on_monitor_request(&from, request),
                Err(error) => self.drop_frame(&from, kind, metrics::INBOUND_MALFORMED, &error),
            },
            KIND_DEMONITOR => match wire::decode_control::<DemonitorRequest>(&payload) {
                Ok(request) => {
                    if request.target.node == self.node {
                        let mut monitors = self.lock_monitors();
                        monitors.remove_remote(&from, request.monitor, request.target.local);
                        self.metrics.monitors.set(monitors.len() as i64);
                    }
                }
                Err(error) => self.drop_frame(&from, kind, metrics::INBOUND_MALFORMED, &error),
            },
            KIND_DOWN => match wire::decode_control::<DownNotice>(&payload) {
                Ok(notice) => self.on_down_notice(&from, notice),
                Err(error) => self.drop_frame(&from, kind, metrics::INBOUND_MALFORMED, &error),
            },
            other => self.drop_frame(&from, other, metrics::INBOUND_MALFORMED, &"unknown kind"),
        }
    }

    fn on_send_frame(&self, from: &NodeId, payload: &Bytes) {
        let frame = match wire::decode_send(payload) {
            Ok(frame) => frame,
            Err(error) => return self.drop_frame(from, KIND_SEND, metrics::INBOUND_MALFORMED, &error),
        };
        let pid = Pid::new(NodeId::new(self.node.name.clone(), frame.incarnation), frame.local);
        match self.deliver_local(&pid, &frame.message) {
            Ok(()) | Err(DeliveryError::Undecodable(_)) => {}
            Err(DeliveryError::NotHosted(_)) => self.metrics.inbound_dropped(metrics::INBOUND_NOT_HOSTED),
            Err(DeliveryError::MailboxFull(_)) => self.metrics.inbound_dropped(metrics::INBOUND_MAILBOX_FULL),
        }
    }

    fn on_monitor_request(&self, from: &NodeId, request: MonitorRequest) {
        if request.watcher.node != *from {
            return self.drop_frame(from, KIND_MONITOR, metrics::INBOUND_FORGED, &"watcher is not the sender's");
        }
        let MonitorRequest { monitor, target, .. } = request;
        let mut monitors = self.lock_monitors();
        if target.node != self.node || !self.table.contains_key(&target.local) {
            drop(monitors);
            return self.reply_down(from, monitor, target, ExitReason::NoProc);
        }
        let added = monitors.add_remote(from.clone(), monitor, target.local);
        self.metrics.monitors.set(monitors.len() as i64);
        drop(monitors);
        if let Err(refusal) = added {
            // Erlang's monitor cannot fail; a watcher refused for a bound learns it as an
            // unreachable target, and the refusal is counted here.
            let _ = self.refused(refusal);
            self.reply_down(from, monitor, target, ExitReason::NoConnection);
        }
    }

    fn on_down_notice(&self, from: &NodeId, notice: DownNotice) {
        if notice.pid.node != *from {
            return self.drop_frame(from, KIND_DOWN, metrics::INBOUND_FORGED, &"pid is not the sender's");
        }
        if notice.watcher_incarnation != self.node.incarnation {
            return self.metrics.inbound_dropped(metrics::INBOUND_NOT_HOSTED);
        }
        let mut monitors = self.lock_monitors();
        if let Some(record) = monitors.remove_local_on(notice.monitor, &notice.pid) {
            (record.sink)(Down { monitor: notice.monitor, pid: notice.pid, reason: notice.reason });
        }
        self.metrics.monitors.set(monitors.len() as i64);
    }

    // ---------------------------------------------------------------- shutdown

    /// Waits until the table is empty or `deadline`; true if empty.
    async fn wait_empty(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.table.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.table.is_empty();
            }
        }
    }

    fn cells(&self) -> Vec<Arc<dyn HostedEntry>> {
        self.table.iter().map(|entry| Arc::clone(entry.value())).collect()
    }

    pub(crate) async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        for entry in self.cells() {
            entry.cell().stop(Some("shutdown".to_owned()));
        }
        let stopped = self.wait_empty(tokio::time::Instant::now() + self.config.shutdown_timeout).await;
        if !stopped {
            for entry in self.cells() {
                entry.slot().request_exit(ExitReason::Killed);
                entry.cell().kill();
            }
            if !self.wait_empty(tokio::time::Instant::now() + KILL_GRACE).await {
                let stuck: Vec<u64> = self.table.iter().map(|entry| *entry.key()).collect();
                tracing::warn!(count = stuck.len(), "processes did not stop; removed from the table");
                for local in stuck {
                    self.exit_pipeline(local, ExitReason::Killed);
                }
            }
        }
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        if let Some(supervisor) = self.supervisor.get() {
            supervisor.stop(None);
        }
        if let Some(task) = tasks.inbound {
            task.abort();
        }
        if let Some(task) = tasks.supervisor {
            let _ = tokio::time::timeout(KILL_GRACE, task).await;
        }
        tracing::info!(node = %self.node, "process runtime stopped");
    }
}

/// Consumes the transport's `user` class for the node until the channel closes or the runtime goes.
pub(crate) async fn run_inbound(node: std::sync::Weak<Shared>, mut frames: mpsc::Receiver<Inbound>) {
    while let Some(frame) = frames.recv().await {
        let Some(node) = node.upgrade() else { return };
        node.on_frame(frame);
    }
}
