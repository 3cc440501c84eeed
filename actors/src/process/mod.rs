//! The node's process runtime (SPEC 4 and 6.1): hosted ractor actors with pids, bounded mailboxes,
//! local and remote sends, one exit pipeline, and Erlang-style process monitors.
//!
//! [`Processes`] is the handle (one per node, `Arc` inside, no process-global state, so several
//! nodes run in one test process). It implements [`ProcessHost`] for pg scopes and registry tiers.
//!
//! ```text
//!  spawn(actor, args) ──► Hosted<A> wrapper ── pre_start: table.insert(pid) ──► linked to the
//!                          (bounded mailbox,                                    node supervisor
//!                           exit hints)
//!  ProcessRef::send ──► reserve 1 in the mailbox counter (refuse at capacity) ──► ractor cast
//!  send_to(pid) ── local ──► typed cast, or decode (type-erased decoder) ──► mailbox
//!               └─ remote ─► rmp-serde frame, transport `user` class ──► peer's inbound task ──► mailbox
//!  exit (stop, error, panic, kill) ──► supervision event  ─┐
//!                                 └──► join-handle backstop ┴► supervisor task: exit pipeline
//!        remove from table → exit hooks (pg, registry) → DOWN to monitors (local and remote)
//! ```
//!
//! Invariants:
//! - Every pid is `<name.incarnation.N>` with `N` from a per-node counter, never reused in a run.
//! - Every map and queue is bounded by [`ProcessConfig`]; each refusal is typed ([`SendError`],
//!   [`SpawnError`], [`MonitorError`], in SPEC 8's `Admission` words) and counted.
//! - Each exit runs the pipeline exactly once, in the order above; `post_stop` is never relied on.
//! - Each monitor yields at most one [`Down`], and exactly one unless it was demonitored or its
//!   watcher exited first; after [`Processes::demonitor`] returns, its [`Down`] is never delivered.
//! - Input from peers (frames) and encoded payloads never panic the node: bad ones are dropped,
//!   counted and logged at a limited rate.
//!
//! ```
//! use cohort_actors::process::{ProcessConfig, Processes};
//! use cohort_actors::ProcessHost;
//! use cohort_cluster::NodeId;
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//!
//! struct Counter;
//!
//! impl Actor for Counter {
//!     type Msg = u64;
//!     type State = u64;
//!     type Arguments = ();
//!     async fn pre_start(&self, _: ActorRef<u64>, _: ()) -> Result<u64, ActorProcessingErr> {
//!         Ok(0)
//!     }
//!     async fn handle(&self, _: ActorRef<u64>, n: u64, total: &mut u64) -> Result<(), ActorProcessingErr> {
//!         *total += n;
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let registry = prometheus::Registry::new();
//! let node = NodeId::new("alpha", 1);
//! let processes = Processes::start(node, None, ProcessConfig::default(), &registry).await.unwrap();
//! let (pid, counter) = processes.spawn(Counter, ()).await.unwrap();
//! assert_eq!(pid.to_string(), "<alpha.1.1>");
//! counter.send(5).unwrap(); // typed, no serialization
//! processes.send_to(&pid, 7u64).unwrap(); // by pid
//! assert!(processes.is_hosted(&pid));
//! processes.shutdown().await;
//! assert!(!processes.is_hosted(&pid));
//! # });
//! ```

mod config;
mod error;
mod hosted;
mod mailbox;
mod metrics;
mod monitor;
mod runtime;
mod supervisor;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use cohort_cluster::NodeId;
use cohort_cluster::net::transport::Transport;
use cohort_cluster::queue::Class;
use ractor::{Actor, ActorCell, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use config::{
    DEFAULT_MAILBOX_CAPACITY, DEFAULT_MAX_MONITORS_PER_NODE, DEFAULT_MAX_MONITORS_PER_PROCESS, DEFAULT_MAX_PROCESSES,
    DEFAULT_SHUTDOWN_TIMEOUT, MAX_EXIT_REASON_BYTES, ProcessConfig, ProcessConfigError,
};
pub use error::{MonitorError, SendError, SpawnError, StartError};
pub use mailbox::ProcessRef;
pub use monitor::{Down, MonitorRef};

use crate::host::{DeliveryError, ExitHook, ProcessHost};
use crate::pid::Pid;
use runtime::Shared;
use supervisor::NodeSupervisor;

/// How [`Processes::exit`] ends a process (Erlang's `exit(Pid, Reason)` for the probe workload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitSignal {
    /// Stop it now (its queued messages are dropped, as ractor's `stop` does); it exits `normal`.
    Normal,
    /// Stop it now with an error exit: it exits with `ExitReason::Error(text)` (text bounded to
    /// [`MAX_EXIT_REASON_BYTES`]), as a failing handler would.
    Error(String),
    /// Kill it (ractor's `kill`: its current handler is aborted, `post_stop` does not run); it
    /// exits `killed`.
    Kill,
}

/// The process runtime of one node (see the module docs). Cheap to clone; `Send + Sync`.
///
/// Call [`Processes::shutdown`] before dropping the last handle: hosted processes run on their own
/// tasks and are only stopped by it.
#[derive(Clone)]
pub struct Processes {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes").field("node", &self.shared.node).field("len", &self.shared.len()).finish()
    }
}

impl Processes {
    /// Starts the runtime of `node`: registers its metrics in `registry`, starts the node supervisor
    /// and, with a `transport`, consumes its `user` class (remote sends and monitors). `None` runs a
    /// single node: remote pids are then `NotHosted`. Must be called inside a tokio runtime.
    pub async fn start(
        node: NodeId,
        transport: Option<Transport>,
        config: ProcessConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let metrics = metrics::Metrics::register(registry)?;
        let inbound = match &transport {
            Some(transport) => Some(transport.subscribe(Class::User).ok_or(StartError::UserClassTaken)?),
            None => None,
        };
        let shared = Arc::new(Shared::new(node, transport, config, metrics));
        let supervisor = NodeSupervisor { node: Arc::downgrade(&shared) };
        let (supervisor, supervisor_task) =
            Actor::spawn(None, supervisor, ()).await.map_err(|e| StartError::Supervisor(e.to_string()))?;
        let inbound = inbound.map(|frames| tokio::spawn(runtime::run_inbound(Arc::downgrade(&shared), frames)));
        shared.attach(supervisor, supervisor_task, inbound);
        Ok(Self { shared })
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.shared.node
    }

    /// Live processes in the table.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether no process is live.
    pub fn is_empty(&self) -> bool {
        self.shared.len() == 0
    }

    /// Spawns `actor` as a process of this node, reachable by typed handle, by pid and from other
    /// nodes (its messages decode from rmp-serde). Its `pre_start` runs before this returns; a
    /// failure there is [`SpawnError::Startup`]. Refused with [`SpawnError::TableFull`] at
    /// `max_processes` and [`SpawnError::Canceled`] during shutdown.
    ///
    /// Not cancel-safe: dropping the future during `pre_start` may leave the process running
    /// without its pid having been returned (it still exits through the pipeline).
    pub async fn spawn<A>(&self, actor: A, args: A::Arguments) -> Result<(Pid, ProcessRef<A::Msg>), SpawnError>
    where
        A: Actor,
        A::Msg: DeserializeOwned,
    {
        self.shared.spawn(actor, args, Some(hosted::decoder::<A::Msg>)).await
    }

    /// Like [`Processes::spawn`], for a message type that cannot be decoded (e.g. one that carries
    /// reply ports): only typed sends reach it; encoded ones (remote, `deliver_local`, `send_to` with
    /// another type) are `Undecodable`.
    pub async fn spawn_local_only<A: Actor>(
        &self,
        actor: A,
        args: A::Arguments,
    ) -> Result<(Pid, ProcessRef<A::Msg>), SpawnError> {
        self.shared.spawn(actor, args, None).await
    }

    /// Sends `message` to `pid`, wherever it runs; never blocks.
    ///
    /// A local process whose message type is `M` gets it without serialization; another local one
    /// gets it encoded and decoded (`Undecodable` if its type does not accept it). A remote one gets
    /// one rmp-serde frame on the transport's `user` class; a refusal there is `QueueSaturated`
    /// (queue full) or `NotHosted` (unknown, down or superseded node). Delivery to a remote process
    /// is fire-and-forget, as in Erlang: its node drops and counts what it cannot deliver.
    pub fn send_to<M: Message + Serialize>(&self, pid: &Pid, message: M) -> Result<(), SendError> {
        self.shared.send_to(pid, message)
    }

    /// Sends `message` to `pid` as the holder of consistent-tier `name` under `fence_token`
    /// (SPEC 7): the node hosting `pid` delivers it only if its [`FenceGuard`] admits the token,
    /// and otherwise refuses it (`EpochMismatch`: returned here for a local target, dropped and
    /// counted on arrival for a remote one, fire-and-forget like every remote send).
    ///
    /// [`FenceGuard`]: crate::FenceGuard
    pub fn send_fenced<M: Message + Serialize>(
        &self,
        pid: &Pid,
        name: &str,
        fence_token: u64,
        message: M,
    ) -> Result<(), SendError> {
        self.shared.send_fenced(pid, name, fence_token, message)
    }

    /// Installs the node's fence guard (the consistent registry tier); once per node: a second
    /// call is ignored and returns false. Until one is installed every fenced send is refused.
    pub fn set_fence_guard(&self, guard: std::sync::Arc<dyn crate::FenceGuard>) -> bool {
        self.shared.set_fence_guard(guard)
    }

    /// The typed handle of a local process whose message type is `M`.
    pub fn lookup<M: Message>(&self, pid: &Pid) -> Option<ProcessRef<M>> {
        self.shared.lookup(pid)
    }

    /// The pid of a hosted process from its ractor cell (e.g. a handler's `myself.get_cell()`).
    pub fn pid_of(&self, actor: &ActorCell) -> Option<Pid> {
        self.shared.pid_of(actor.get_id())
    }

    /// Ends the local process `pid` (see [`ExitSignal`]); its exit then goes through the pipeline
    /// like any other. `NotHosted` if it is not a live process of this node.
    pub fn exit(&self, pid: &Pid, signal: ExitSignal) -> Result<(), SendError> {
        self.shared.exit(pid, signal)
    }

    /// Monitors `target` for `watcher` (Erlang `monitor(process, Pid)`): exactly one [`Down`] goes
    /// into the watcher's mailbox (never refused for capacity) when the target exits, or at once
    /// with `NoProc` if it is not alive (or belongs to another incarnation of its node), or with
    /// `NoConnection` when its node is unreachable or declared down ([`Processes::node_down`]).
    ///
    /// Refused, and counted, beyond the per-process and per-node bounds, or when the internode queue
    /// to a remote target's node is full.
    pub fn monitor<M>(&self, watcher: &ProcessRef<M>, target: &Pid) -> Result<MonitorRef, MonitorError>
    where
        M: Message + From<Down>,
    {
        self.shared.monitor(watcher, target)
    }

    /// Removes a monitor; synchronous: once this returns no [`Down`] for it is delivered (one may
    /// already be in the watcher's mailbox). True if the monitor was active.
    pub fn demonitor(&self, monitor: MonitorRef) -> bool {
        self.shared.demonitor(monitor)
    }

    /// `node` (and its older incarnations) went down or left: every monitor on its processes fires
    /// with `NoConnection`, its nodes' monitors on local processes are forgotten, and later sends to
    /// its pids are `NotHosted`. Called by the node on membership events; ignores this node's name.
    pub fn node_down(&self, node: &NodeId) {
        self.shared.node_down(node);
    }

    /// Stops every process (stop, then kill after `shutdown_timeout`, then a short grace after which
    /// leftovers are removed from the table), then the supervisor and the inbound task. Bounded by
    /// `shutdown_timeout` plus about two seconds; idempotent. Later spawns are `Canceled`.
    pub async fn shutdown(&self) {
        self.shared.shutdown().await;
    }
}

impl ProcessHost for Processes {
    fn node(&self) -> &NodeId {
        &self.shared.node
    }

    fn is_hosted(&self, pid: &Pid) -> bool {
        self.shared.is_hosted(pid)
    }

    fn deliver_local(&self, pid: &Pid, payload: Bytes) -> Result<(), DeliveryError> {
        self.shared.deliver_local(pid, &payload)
    }

    fn add_exit_hook(&self, hook: Arc<dyn ExitHook>) {
        self.shared.add_exit_hook(hook);
    }
}
