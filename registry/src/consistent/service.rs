//! The consistent tier's I/O side: [`ConsistentTier`] runs one raft actor that owns the node's
//! [`RaftCore`], and publishes a read-only view of it for lock-free reads and the admin API.
//!
//! ```text
//!  callers ──Cmd (bounded mailbox)──►┐
//!  transport `raft` class ──frames──►├─► drain (≤ MAX_BATCH each) ─► core.handle_ready() ─► send
//!  timer (tick) ─────────────────────┘      (one storage write per batch: group commit)     │
//!                                     answers, view mirror, metrics ◄──────────────────────┘
//! ```
//!
//! - Raft messages travel on the internode `raft` class as protobuf ([`KIND_RAFT_MESSAGE`]); a
//!   frame is length-checked before parsing, and its `from` raft id must belong to the
//!   authenticated sender. Raft ids are discovered with a small [`Hello`] ([`KIND_HELLO`]) every
//!   node sends to every live peer each [`HELLO_INTERVAL`]: the leader learns a joining node's
//!   raft id (a hash of its incarnation) and a restarted node's recorded id from it.
//! - A raft snapshot (`MsgSnapshot`) of any size up to the tier's name limit travels in bounded
//!   chunks ([`KIND_SNAPSHOT_CHUNK`], acknowledged with [`KIND_SNAPSHOT_ACK`]; the
//!   [`SnapshotTransfers`] core), never as one frame; every transfer ends in a report to raft
//!   (`report_snapshot`, and `report_unreachable` on failure) so a lost snapshot is retried. A
//!   raft frame the transport refuses is reported with `report_unreachable`.
//! - Writes: [`ConsistentTier::propose`] queues a [`Proposal`] with a deadline. Raft-rs forwards
//!   a follower's or learner's proposal to the leader; when it fails (leader change, message lost)
//!   the actor re-proposes it with the same request id until the deadline, so a retry that was in
//!   fact committed returns the first result. With no leader known it waits (bounded by
//!   [`MAX_WAITING`]); at the deadline the caller gets `NotLeader{leader_hint}` if no leader is
//!   known, else `TimedOut`.
//! - Reads: `Strong` goes through the actor (ReadIndex on the leader); `Bounded` and `BestEffort`
//!   are served from the published view ([`ConsistentTier::read_local`]) with the same freshness
//!   decision ([`super::freshness::decide`]) and witness.
//! - The leader reconciles the voter set from membership with [`ladder::reconcile`] once
//!   membership has been quiet for `reconcile_debounce`, one transition at a time, promoting a
//!   learner only once it has caught up; and it commits `RemoveByNode` (in chunks, re-proposed
//!   while names remain) for node incarnations membership declares down or left or that a newer
//!   incarnation replaced.
//!
//! The decisions above live in the [`Driver`] (`driver.rs`, no I/O, `now` passed in); the actor
//! here is its shell: it turns mailbox commands, transport frames and ticks into the driver's
//! `handle_*` calls, publishes the view after each `Ready`, then performs the driver's outputs
//! (frames onto the transport, answers to callers), and supervises it (restart after a panic).
//!
//! Invariants: the actor is the only owner of the core. In durable mode it runs on a thread of its
//! own (a current-thread runtime), so a storage fsync never stalls the node's shared runtime; in
//! memory mode nothing blocks and it is a task of the node's runtime (cheaper wake-ups); every
//! queue and map here has a named bound; the published view is updated before a caller is
//! answered, so a caller reads its own write on this node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cohort_actors::{FenceGuard, Pid};
use cohort_cluster::NodeId;
use cohort_cluster::membership::Membership;
use cohort_cluster::net::transport::{Inbound, Transport};
use cohort_cluster::queue::Class;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::core::{CoreConfig, CoreError, CoreStats, RaftCore};
use super::driver::{Driver, Output};
use super::freshness::{ControlView, RaftRole, ReadRejection, decide};
use super::fsm::{Applied, Command, Proposal, Registration, RequestId};
use super::ladder::{self, MaxVoters};
use super::metrics::ConsistentMetrics;
use super::planes::{
    Admission, CatchUpState, DegradedMode, ExecutionOutcome, Freshness, ReadRequest, ReadWitness, RestartState,
    RootToken, Transition,
};
use super::snapshot_transfer::SNAPSHOT_CHUNK_BYTES;
use super::storage::{LogBackend, MemoryBackend, RedbBackend, StoreStats};

/// Raft-class frame kind: one protobuf-encoded raft `Message`.
pub const KIND_RAFT_MESSAGE: u8 = 1;
/// Raft-class frame kind: a [`Hello`] (rmp-serde).
pub const KIND_HELLO: u8 = 2;
/// Raft-class frame kind: one chunk of a raft snapshot (see [`super::snapshot_transfer`]).
pub const KIND_SNAPSHOT_CHUNK: u8 = 3;
/// Raft-class frame kind: the acknowledgement of snapshot chunks (or an abort).
pub const KIND_SNAPSHOT_ACK: u8 = 4;

/// Largest raft frame parsed, in bytes: the transport's frame bound. Snapshots do not travel in
/// one frame but in chunks ([`KIND_SNAPSHOT_CHUNK`]), so this bounds appends and chunks only.
pub const MAX_RAFT_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Largest hello frame parsed, in bytes (a node name of 64 bytes and three integers).
pub const MAX_HELLO_BYTES: usize = 512;

/// Commands queued for the actor. At the 20k writes/s goal this is about 3 s of writes; beyond it
/// a caller gets `QueueSaturated { class: "raft_mailbox" }`.
pub const MAILBOX_CAPACITY: usize = 65_536;

/// Commands and frames taken per loop turn before one `Ready` is handled: the group-commit batch.
/// Large enough that a pipelined burst shares one fsync, small enough that a turn stays short.
pub const MAX_BATCH: usize = 4_096;

/// Proposals waiting for a leader to be known (`QueueSaturated { class: "raft_waiting" }` beyond).
pub const MAX_WAITING: usize = 4_096;

/// How often every node tells every live peer its raft id.
pub const HELLO_INTERVAL: Duration = Duration::from_secs(1);

/// Raft ids remembered per peer (one per live node name): the transport's peer bound.
pub const MAX_KNOWN_PEERS: usize = 1_024;

/// A learner is promoted only once its log is within this many entries of the leader's.
pub const PROMOTE_MAX_LAG: u64 = 64;

/// How long a voter may go without quorum contact before `/livez` fails its raft check. Long
/// enough to ride out elections and short partitions; a voter cut off this long needs a look.
pub const RAFT_CONTACT_MAX_SILENCE: Duration = Duration::from_secs(30);

/// How long the actor loop may be silent before `/livez` fails (it turns every tick).
pub const RAFT_LOOP_MAX_SILENCE: Duration = Duration::from_secs(5);

pub(crate) const HELLO_VERSION: u8 = 1;

/// Where the raft log lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageMode {
    /// redb under this directory (`<data_dir>/raft`).
    Durable(PathBuf),
    /// In memory: lost at exit (tests and benchmarks).
    Memory,
}

impl StorageMode {
    /// `durable` or `memory`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Durable(_) => "durable",
            Self::Memory => "memory",
        }
    }
}

/// How the consistent tier runs.
#[derive(Clone, Debug)]
pub struct ConsistentConfig {
    /// Where the log lives.
    pub storage: StorageMode,
    /// Most voters (1, 3 or 5).
    pub max_voters: MaxVoters,
    /// The raft tick (100 ms): elections take 10-20 ticks, heartbeats every 2.
    pub tick: Duration,
    /// How long a write may take, retries included, before its caller is answered (5 s).
    pub request_timeout: Duration,
    /// How long membership must be quiet before the leader changes the voter set (1 s): a node
    /// that flaps is not added and removed on every flap.
    pub reconcile_debounce: Duration,
    /// Whether this node starts a one-voter group when its store is clean (the node without
    /// seeds; see docs/consistent.md "Bootstrap").
    pub bootstrap: bool,
    /// How long a voter (or learner) must have been down before the leader replaces it (30 s,
    /// `raft.dead_voter_after`; SPEC 7 and [`ladder`]).
    pub dead_voter_after: Duration,
    /// Bytes of raft snapshot per chunk frame (1 MiB, `raft.snapshot_chunk_bytes`; see
    /// [`super::snapshot_transfer`]).
    pub snapshot_chunk_bytes: usize,
}

impl Default for ConsistentConfig {
    fn default() -> Self {
        Self {
            storage: StorageMode::Memory,
            max_voters: MaxVoters::default(),
            tick: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
            reconcile_debounce: Duration::from_secs(1),
            bootstrap: false,
            dead_voter_after: ladder::DEFAULT_DEAD_VOTER_AFTER,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        }
    }
}

/// Why the tier could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsistentStartError {
    /// The durable store could not be opened, or its state is unusable (`RestartState::Fatal`).
    #[error("raft storage: {0}")]
    Storage(String),
    /// The raft core refused to start.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The transport's raft class already has a consumer.
    #[error("the raft transport class already has a consumer")]
    ClassTaken,
    /// The actor thread could not be started.
    #[error("raft actor thread: {0}")]
    Thread(String),
}

/// Why a Strong read (through the actor) was not served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The freshness decision refused it.
    #[error(transparent)]
    Rejected(#[from] ReadRejection),
    /// The execution plane refused it (queue full, timed out, shutting down, lost leadership).
    #[error("{0}")]
    Refused(Admission),
}

impl ReadError {
    /// The stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rejected(r) => r.reason(),
            Self::Refused(a) => a.reason(),
        }
    }
}

/// A served read: the registration (if any) and the witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAnswer {
    /// The name's registration in the served view.
    pub registration: Option<Registration>,
    /// How fresh the view was.
    pub witness: ReadWitness,
}

/// The raft-id announcement every node sends each live peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Wire version.
    pub v: u8,
    /// The sender (must equal the transport's authenticated peer).
    pub node: NodeId,
    /// Its raft id (recorded in its store; a hash of its incarnation for a fresh store).
    pub raft_id: u64,
}

/// `GET /admin/raft`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    /// This node's raft id.
    pub raft_id: u64,
    /// Its role.
    pub role: RaftRole,
    /// Current term.
    pub term: u64,
    /// The leader's node name, if known.
    pub leader: Option<String>,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Index the view applied.
    pub applied_index: u64,
    /// Voters (node names; a raft id when the address book does not know it).
    pub voters: Vec<String>,
    /// Learners.
    pub learners: Vec<String>,
    /// Milliseconds since this node last had quorum contact (`None`: never).
    pub last_contact_ms: Option<u64>,
    /// Whether a quorum is reachable now.
    pub quorum_reachable: bool,
    /// `durable` or `memory`.
    pub storage: &'static str,
}

/// The control half of `GET /admin/planes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlPlane {
    /// What the view applied.
    pub root_token: RootToken,
    /// Newest committed token known.
    pub current_root_token: RootToken,
    /// `current - root`, in entries.
    pub root_lag: u64,
    /// Catch-up state.
    pub catch_up_state: CatchUpState,
    /// Degraded mode.
    pub degraded_mode: DegradedMode,
    /// The leader's name, if known.
    pub leader: Option<String>,
    /// Whether a quorum is reachable.
    pub quorum_reachable: bool,
    /// Recent configuration transitions, oldest first.
    pub transitions: Vec<Transition>,
}

/// The execution half of `GET /admin/planes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecutionPlane {
    /// The durable state as found at boot, or at the raft actor's last supervised restart.
    pub restart_state: RestartState,
    /// Supervised restarts of the raft actor (a panic inside raft-rs), since boot.
    pub raft_actor_restarts: u64,
    /// Admission verdicts by reason.
    pub admission: std::collections::BTreeMap<&'static str, u64>,
    /// Writes by outcome.
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// Sends refused for a stale fencing token.
    pub fence_rejections: u64,
}

/// `GET /admin/planes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanesStatus {
    /// Control plane.
    pub control: ControlPlane,
    /// Execution plane.
    pub execution: ExecutionPlane,
}

/// The raft liveness check's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftHealth {
    /// Whether it passes.
    pub ok: bool,
    /// Why.
    pub detail: String,
}

type WriteReply = oneshot::Sender<Result<Applied, Admission>>;
type ReadReply = oneshot::Sender<Result<ReadAnswer, ReadError>>;

enum Cmd {
    Propose { proposal: Proposal, reply: Option<WriteReply>, deadline: Instant },
    StrongRead { name: String, request: ReadRequest, reply: ReadReply, deadline: Instant },
    Inject(RaftFault),
}

/// A fault fed to the raft actor by [`ConsistentTier::inject_fault`] (chaos mode and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftFault {
    /// A heartbeat from the leader that commits far past the local log (raft-rs would abort the
    /// process in `commit_to`): it must be refused and counted (`frames_dropped{reason="unsafe"}`).
    MalformedHeartbeat,
    /// A panic inside the actor's turn: the supervisor must restart it from its durable state.
    Panic,
}

/// Supervised restarts allowed within [`RESTART_WINDOW`] before the actor gives up (OTP's
/// restart intensity): a fault that recurs on every restart must stop, visibly, not spin.
pub const MAX_RESTARTS: usize = 5;

/// See [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Where the actor's durable state lives, to reopen it after a panic.
enum Disk {
    Durable(PathBuf),
    Memory(MemoryBackend),
}

impl Disk {
    fn open(&self) -> Result<Box<dyn LogBackend>, String> {
        match self {
            Self::Durable(dir) => Ok(Box::new(RedbBackend::open(dir).map_err(|e| e.to_string())?)),
            Self::Memory(image) => Ok(Box::new(image.clone())),
        }
    }
}

/// What the cached voter and learner names derive from: the configured ids and the size of the
/// replicated address book.
type StatusNamesKey = (Vec<u64>, Vec<u64>, usize);

/// One event of the actor loop, taken by the (async) select and handled by the (sync) turn.
enum Event {
    Stop,
    Cmd(Cmd),
    Frame(Inbound),
    InboundClosed,
    Tick,
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

struct View {
    /// The durable state as found at boot, or at the last supervised restart.
    restart_state: RestartState,
    /// Supervised restarts of the raft actor so far.
    actor_restarts: u64,
    /// Set when the actor stopped for good (restart intensity exceeded, storage unusable): `/livez`
    /// fails with this reason.
    down: Option<String>,
    names: HashMap<String, Registration>,
    owners: HashMap<Pid, u32>,
    control: ControlView,
    status: RaftStatus,
    transitions: Vec<Transition>,
    is_voter: bool,
    last_contact: Option<Instant>,
    last_loop: Instant,
}

struct Shared {
    local: NodeId,
    tx: mpsc::Sender<Cmd>,
    view: RwLock<View>,
    seq: Arc<AtomicU64>,
    metrics: ConsistentMetrics,
    request_timeout: Duration,
    stopped: AtomicBool,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

/// One node's consistent tier. Cheap to clone.
#[derive(Clone)]
pub struct ConsistentTier {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConsistentTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistentTier").field("local", &self.shared.local).finish_non_exhaustive()
    }
}

fn read_view(lock: &RwLock<View>) -> RwLockReadGuard<'_, View> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens the raft core of node `local` on `backend` with the settings `config` implies: what
/// [`ConsistentTier::start`] does, and the simulator for each (re)started node. A clean store
/// with `config.bootstrap` becomes the sole voter of a new group and campaigns at once.
/// `tune` adjusts the core's settings last (the simulator fixes raft's randomised election
/// timeout with it, drawn from its seed; real nodes change nothing).
pub fn open_core(
    backend: Box<dyn LogBackend>,
    local: &NodeId,
    config: &ConsistentConfig,
    tune: impl FnOnce(&mut CoreConfig),
) -> Result<(RaftCore, CoreConfig), ConsistentStartError> {
    let raft_id = ladder::raft_id_for(local);
    let mut core_config = CoreConfig::new(raft_id, local.clone());
    // A forwarded proposal lost with its message is retried by the actor well within the
    // caller's deadline: give each attempt about a third of it.
    let ticks = (config.request_timeout.as_millis() / config.tick.as_millis().max(1)) as u64;
    core_config.proposal_timeout_ticks = (ticks / 3).max(5);
    tune(&mut core_config);
    let bootstrap = [(raft_id, local.clone())];
    let mut core = RaftCore::open(backend, core_config.clone(), config.bootstrap.then_some(&bootstrap[..]))
        .map_err(|e| ConsistentStartError::Storage(e.to_string()))?;
    if core.restart_state() == &RestartState::Clean && config.bootstrap {
        // The sole voter of a new group: lead at once instead of after an election timeout.
        core.campaign()?;
    }
    Ok((core, core_config))
}

impl ConsistentTier {
    /// Opens the store, starts the raft actor on its own thread and takes the transport's `raft`
    /// class. A store whose state is unusable fails with [`ConsistentStartError::Storage`] (the
    /// caller reports `RestartState::Fatal`).
    pub fn start(
        local: NodeId,
        membership: Membership,
        transport: Transport,
        metrics: ConsistentMetrics,
        config: ConsistentConfig,
    ) -> Result<Self, ConsistentStartError> {
        let disk = match &config.storage {
            StorageMode::Durable(dir) => Disk::Durable(dir.clone()),
            // Clones share one image: the supervisor reopens the same "disk" after a panic.
            StorageMode::Memory => Disk::Memory(MemoryBackend::new()),
        };
        let backend = disk.open().map_err(ConsistentStartError::Storage)?;
        let (core, core_config) = open_core(backend, &local, &config, |_| {})?;
        let inbound = transport.subscribe(Class::Raft).ok_or(ConsistentStartError::ClassTaken)?;
        let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let control = core.control_view(None);
        // The planes gauges show the boot state before the actor's first turn (present from boot).
        metrics.observe_planes(&control, core.restart_state());
        let status = raft_status(&core, &control, &(Vec::new(), Vec::new()), &config.storage);
        let shared = Arc::new(Shared {
            local: local.clone(),
            tx,
            view: RwLock::new(View {
                restart_state: core.restart_state().clone(),
                actor_restarts: 0,
                down: None,
                names: HashMap::new(),
                owners: HashMap::new(),
                control,
                status,
                transitions: Vec::new(),
                is_voter: false,
                last_contact: None,
                last_loop: Instant::now(),
            }),
            seq: Arc::new(AtomicU64::new(1)),
            metrics,
            request_timeout: config.request_timeout,
            stopped: AtomicBool::new(false),
            stop: Mutex::new(Some(stop_tx)),
            done: Mutex::new(Some(done_rx)),
        });
        let durable = matches!(config.storage, StorageMode::Durable(_));
        let mut actor = Actor::new(core, shared.clone(), membership, transport, config);
        actor.disk = Some((disk, core_config));
        if !durable && let Ok(handle) = tokio::runtime::Handle::try_current() {
            // Nothing blocks in memory mode: the actor is a task of the node's runtime, where
            // waking it (and the transport tasks it feeds) costs no thread hand-off.
            handle.spawn(async move {
                actor.run(rx, inbound, stop_rx).await;
                let _ = done_tx.send(());
            });
            return Ok(Self { shared });
        }
        std::thread::Builder::new()
            .name(format!("raft-{}", local.name))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                    Ok(rt) => rt,
                    Err(error) => {
                        tracing::error!(%error, "raft actor runtime did not start");
                        let _ = done_tx.send(());
                        return;
                    }
                };
                runtime.block_on(actor.run(rx, inbound, stop_rx));
                let _ = done_tx.send(());
            })
            .map_err(|e| ConsistentStartError::Thread(e.to_string()))?;
        Ok(Self { shared })
    }

    /// This node.
    pub fn local(&self) -> &NodeId {
        &self.shared.local
    }

    /// A fresh request id of this node (a retry must reuse the id of its first attempt).
    pub fn next_request_id(&self) -> RequestId {
        RequestId::new(self.shared.local.clone(), self.shared.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Commits `proposal` and returns what applying it did, or why it was not taken. Retries
    /// (leader change, lost forward) are done inside with the same request id until
    /// `request_timeout`. Cancel-safe: dropping the future leaves the write to finish or time out.
    pub async fn propose(&self, proposal: Proposal) -> Result<Applied, Admission> {
        let (reply, answer) = oneshot::channel();
        let entered = Instant::now();
        let deadline = entered + self.shared.request_timeout;
        let result = match self.enqueue(Cmd::Propose { proposal, reply: Some(reply), deadline }) {
            Ok(()) => answer.await.unwrap_or(Err(Admission::Canceled)),
            Err(refusal) => Err(refusal),
        };
        self.shared.metrics.proposal_answered(entered.elapsed().as_secs_f64(), result.is_ok());
        result
    }

    fn enqueue(&self, cmd: Cmd) -> Result<(), Admission> {
        let refusal = match self.shared.tx.try_send(cmd) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Admission::QueueSaturated { class: "raft_mailbox".into() },
            Err(mpsc::error::TrySendError::Closed(_)) => Admission::Canceled,
        };
        self.shared.metrics.admission(&refusal);
        self.shared.metrics.outcome(ExecutionOutcome::Rejected);
        Err(refusal)
    }

    /// Serves a read of `name` at the requested freshness: `Strong` through the actor (ReadIndex
    /// on the leader), the others from the published view.
    pub async fn read(&self, name: &str, request: ReadRequest) -> Result<ReadAnswer, ReadError> {
        if request.freshness != Freshness::Strong {
            return self.read_local(name, request).map_err(ReadError::Rejected);
        }
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.shared.request_timeout;
        let cmd = Cmd::StrongRead { name: name.to_string(), request, reply, deadline };
        let result = match self.shared.tx.try_send(cmd) {
            Ok(()) => answer.await.unwrap_or(Err(ReadError::Refused(Admission::Canceled))),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(ReadError::Refused(Admission::QueueSaturated { class: "raft_mailbox".into() }))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ReadError::Refused(Admission::Canceled)),
        };
        // The actor counts the Strong reads it answers; refusals before it are counted here.
        if let Err(e @ ReadError::Refused(Admission::QueueSaturated { .. } | Admission::Canceled)) = &result {
            self.shared.metrics.read(Freshness::Strong, e.reason());
        }
        result
    }

    /// A `Bounded` or `BestEffort` read from the published view. A `Strong` read needs the
    /// actor's ReadIndex ([`ConsistentTier::read`]): the published view has none, so the decision
    /// refuses it here (`ReadIndexPending`, or `NotLeader`/`Unavailable` off the leader).
    pub fn read_local(&self, name: &str, request: ReadRequest) -> Result<ReadAnswer, ReadRejection> {
        let view = read_view(&self.shared.view);
        let result = decide(&request, &view.control)
            .map(|witness| ReadAnswer { registration: view.names.get(name).cloned(), witness });
        drop(view);
        self.shared.metrics.read(request.freshness, result.as_ref().map_or_else(|e| e.reason(), |_| "ok"));
        result
    }

    /// The registration of `name` in this node's view, without a freshness decision (the
    /// registry's default lookup order; `BestEffort`, see docs/consistent.md).
    pub fn lookup(&self, name: &str) -> Option<Registration> {
        read_view(&self.shared.view).names.get(name).cloned()
    }

    /// Every registration in this node's view, sorted by name, and the view's witness as a
    /// `BestEffort` read.
    pub fn list(&self) -> (Vec<(String, Registration)>, Option<ReadWitness>) {
        let view = read_view(&self.shared.view);
        let mut names: Vec<(String, Registration)> = view.names.iter().map(|(n, r)| (n.clone(), r.clone())).collect();
        let witness = decide(&ReadRequest::new(Freshness::BestEffort), &view.control).ok();
        drop(view);
        names.sort_by(|a, b| a.0.cmp(&b.0));
        (names, witness)
    }

    /// How many names the view holds.
    pub fn len(&self) -> usize {
        read_view(&self.shared.view).names.len()
    }

    /// Whether the view holds no name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `pid` holds a name in this node's view.
    pub fn holds_names(&self, pid: &Pid) -> bool {
        read_view(&self.shared.view).owners.contains_key(pid)
    }

    /// The exit pipeline's hook: `pid` exited on this node, so its names are removed by a
    /// committed `RemoveByPid` (fire-and-forget, retried by the actor until its deadline).
    pub fn remove_pid(&self, pid: &Pid) {
        if pid.node != self.shared.local || !self.holds_names(pid) {
            return;
        }
        let proposal = Proposal::new(self.next_request_id(), Command::RemoveByPid { pid: pid.clone() });
        let deadline = Instant::now() + self.shared.request_timeout;
        if self.enqueue(Cmd::Propose { proposal, reply: None, deadline }).is_err() {
            // The leader's departure sweep does not cover a live node's exited pids: say so.
            tracing::warn!(%pid, "consistent: the removal of an exited process's names was refused");
        }
    }

    /// `GET /admin/raft`.
    pub fn raft_status(&self) -> RaftStatus {
        let view = read_view(&self.shared.view);
        let mut status = view.status.clone();
        status.last_contact_ms = view.last_contact.map(|t| t.elapsed().as_millis() as u64);
        status
    }

    /// `GET /admin/planes`.
    pub fn planes(&self) -> PlanesStatus {
        let view = read_view(&self.shared.view);
        let c = &view.control;
        let current = c.current.max(c.applied);
        let control = ControlPlane {
            root_token: c.applied,
            current_root_token: current,
            root_lag: c.applied.lag_behind(&current),
            catch_up_state: c.catch_up_state,
            degraded_mode: c.degraded_mode,
            leader: c.leader_hint.clone(),
            quorum_reachable: c.quorum_reachable,
            transitions: view.transitions.clone(),
        };
        let restart_state = view.restart_state.clone();
        let raft_actor_restarts = view.actor_restarts;
        drop(view);
        let metrics = &self.shared.metrics;
        PlanesStatus {
            control,
            execution: ExecutionPlane {
                restart_state,
                raft_actor_restarts,
                admission: metrics.admission_counts().into_iter().collect(),
                outcomes: metrics.outcome_counts().into_iter().collect(),
                fence_rejections: metrics.fence_rejections(),
            },
        }
    }

    /// The durable state found at boot, or at the raft actor's last supervised restart.
    pub fn restart_state(&self) -> RestartState {
        read_view(&self.shared.view).restart_state.clone()
    }

    /// Test and chaos hook: feeds the raft actor a fault (a message raft-rs would abort on, or a
    /// panic), to prove the refusal and the supervised restart. Refused when the actor is gone.
    pub fn inject_fault(&self, fault: RaftFault) -> Result<(), Admission> {
        self.enqueue(Cmd::Inject(fault))
    }

    /// The `/livez` raft check: the actor loop turns, and a voter has had quorum contact within
    /// [`RAFT_CONTACT_MAX_SILENCE`].
    pub fn health(&self, now: Instant) -> RaftHealth {
        let view = read_view(&self.shared.view);
        if let Some(reason) = &view.down {
            return RaftHealth { ok: false, detail: format!("raft actor down: {reason}") };
        }
        let silent = now.saturating_duration_since(view.last_loop);
        if silent > RAFT_LOOP_MAX_SILENCE {
            return RaftHealth { ok: false, detail: format!("raft actor loop silent for {} ms", silent.as_millis()) };
        }
        if !view.is_voter {
            return RaftHealth { ok: true, detail: format!("{}: contact not checked", view.status.role.as_str()) };
        }
        match view.last_contact {
            Some(t) if now.saturating_duration_since(t) <= RAFT_CONTACT_MAX_SILENCE => RaftHealth {
                ok: true,
                detail: format!(
                    "voter ({}), quorum contact {} ms ago",
                    view.status.role.as_str(),
                    now.saturating_duration_since(t).as_millis()
                ),
            },
            Some(t) => RaftHealth {
                ok: false,
                detail: format!("voter without quorum contact for {} ms", now.saturating_duration_since(t).as_millis()),
            },
            None => RaftHealth { ok: false, detail: "voter that never had quorum contact".into() },
        }
    }

    /// Stops the actor: pending callers get `Canceled`. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        if let Some(stop) = lock(&self.shared.stop).take() {
            let _ = stop.send(());
        }
        let done = lock(&self.shared.done).take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}

impl FenceGuard for ConsistentTier {
    fn admit(&self, name: &str, fence_token: u64, target: &Pid) -> bool {
        let admitted = read_view(&self.shared.view)
            .names
            .get(name)
            .is_some_and(|reg| reg.fence_token == fence_token && reg.pid == *target);
        if !admitted {
            self.shared.metrics.fence_rejections.inc();
            self.shared.metrics.admission(&Admission::EpochMismatch);
        }
        admitted
    }
}

/// `names`: the voters' and learners' names (see `Actor::status_names`). `last_contact_ms` is
/// filled in when read.
fn raft_status(
    core: &RaftCore,
    control: &ControlView,
    names: &(Vec<String>, Vec<String>),
    storage: &StorageMode,
) -> RaftStatus {
    let stats = core.stats();
    RaftStatus {
        raft_id: core.raft_id(),
        role: core.role(),
        term: stats.term,
        leader: control.leader_hint.clone(),
        commit_index: stats.commit_index,
        applied_index: stats.applied_index,
        voters: names.0.clone(),
        learners: names.1.clone(),
        last_contact_ms: None,
        quorum_reachable: control.quorum_reachable,
        storage: storage.as_str(),
    }
}

/// The shell around the [`Driver`]: it owns the channels, the transport, the published view and
/// the supervisor; every protocol decision is the driver's.
struct Actor {
    driver: Driver<WriteReply, ReadReply>,
    shared: Arc<Shared>,
    membership: Membership,
    transport: Transport,
    /// The durable state and core settings to reopen after a panic (None in unit harnesses).
    disk: Option<(Disk, CoreConfig)>,
    /// Recent supervised restarts (bounded by [`MAX_RESTARTS`] within [`RESTART_WINDOW`]).
    restarts: Vec<Instant>,
    /// The voters' and learners' names for `/admin/raft`, keyed by what they derive from.
    status_names: (StatusNamesKey, (Vec<String>, Vec<String>)),
    last_stats: CoreStats,
    last_store: StoreStats,
    last_contact: Option<Instant>,
}

impl Actor {
    fn new(
        core: RaftCore,
        shared: Arc<Shared>,
        membership: Membership,
        transport: Transport,
        config: ConsistentConfig,
    ) -> Self {
        let driver =
            Driver::new(Instant::now(), core, shared.local.clone(), config, shared.metrics.clone(), shared.seq.clone());
        Self {
            driver,
            shared,
            membership,
            transport,
            disk: None,
            restarts: Vec::new(),
            status_names: ((Vec::new(), Vec::new(), usize::MAX), (Vec::new(), Vec::new())),
            last_stats: CoreStats::default(),
            last_store: StoreStats::default(),
            last_contact: None,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Cmd>,
        inbound: mpsc::Receiver<Inbound>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut inbound = Some(inbound);
        let mut ticker = tokio::time::interval(self.driver.config().tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        loop {
            let event = tokio::select! {
                biased;
                _ = &mut stop => Event::Stop,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => Event::Cmd(cmd),
                    None => Event::Stop,
                },
                frame = async {
                    match inbound.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match frame {
                    Some(frame) => Event::Frame(frame),
                    None => Event::InboundClosed,
                },
                _ = ticker.tick() => Event::Tick,
            };
            match event {
                Event::Stop => break,
                Event::InboundClosed => inbound = None,
                _ => {}
            }
            // The supervisor (SPEC 7): raft-rs panics on states it cannot handle; a panic in a
            // turn restarts the core from its durable state instead of killing the tier behind
            // a green /livez. Channels and callers live outside the turn and survive it.
            let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.turn(event, &mut commands, &mut inbound)
            }));
            let keep_going = match turn {
                Ok(keep_going) => keep_going,
                Err(payload) => self.restart_after_panic(panic_text(payload.as_ref())),
            };
            if !keep_going {
                break;
            }
        }
        self.drain_on_stop(&mut commands);
    }

    /// One turn: the event, then a batch of whatever else is queued, then one `Ready` (one storage
    /// write for the batch: group commit), the view, and the driver's outputs. False when the
    /// actor must stop.
    fn turn(
        &mut self,
        event: Event,
        commands: &mut mpsc::Receiver<Cmd>,
        inbound: &mut Option<mpsc::Receiver<Inbound>>,
    ) -> bool {
        let now = Instant::now();
        match event {
            Event::Cmd(cmd) => self.on_cmd(now, cmd),
            Event::Frame(frame) => self.driver.handle_frame(now, &frame.from, frame.kind, &frame.payload),
            Event::Tick => {
                self.driver.handle_members(self.membership.members());
                self.driver.handle_tick(now);
            }
            Event::Stop | Event::InboundClosed => {}
        }
        for _ in 0..MAX_BATCH {
            match commands.try_recv() {
                Ok(cmd) => self.on_cmd(now, cmd),
                Err(_) => break,
            }
        }
        if let Some(rx) = inbound.as_mut() {
            for _ in 0..MAX_BATCH {
                match rx.try_recv() {
                    Ok(frame) => self.driver.handle_frame(now, &frame.from, frame.kind, &frame.payload),
                    Err(_) => break,
                }
            }
        }
        if let Err(error) = self.driver.handle_ready(now) {
            // raft-rs: after a storage error the instance is inoperable. Stop taking work;
            // /livez fails with the reason and the operator sees it in the log.
            tracing::error!(%error, "consistent: raft storage failed; the raft actor stops");
            self.go_down(format!("raft storage failed: {error}"));
            self.perform();
            return false;
        }
        // The view mirror must show what was applied before any caller is answered: once per turn.
        self.publish();
        self.perform();
        true
    }

    /// Performs the driver's outputs: frames onto the transport (a refusal goes back to the
    /// driver), answers to callers.
    fn perform(&mut self) {
        while let Some(output) = self.driver.poll_output() {
            match output {
                Output::Transmit { to, kind, payload, unsent } => {
                    if self.transport.send(&to, Class::Raft, kind, payload).is_err() {
                        self.driver.handle_unsent(unsent);
                    }
                }
                Output::Written { reply, result } => {
                    let _ = reply.send(result);
                }
                Output::Read { reply, result } => {
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Reopens the core from its durable state after a panic (counted, logged, visible in
    /// `/admin/planes` and `RestartState`). In-flight writes go back to waiting with their
    /// request ids (a write that did commit answers from the FSM's cache), reads are asked again.
    /// False when the restart intensity is exceeded or the state cannot be reopened.
    fn restart_after_panic(&mut self, what: String) -> bool {
        self.shared.metrics.raft_actor_restarts.inc();
        tracing::error!(panic = %what, "consistent: the raft actor panicked; restarting it from its durable state");
        let now = Instant::now();
        self.restarts.retain(|t| now.saturating_duration_since(*t) < RESTART_WINDOW);
        self.restarts.push(now);
        if self.restarts.len() > MAX_RESTARTS {
            self.go_down(format!("{} panics within {} s; last: {what}", self.restarts.len(), RESTART_WINDOW.as_secs()));
            return false;
        }
        let Some((disk, mut core_config)) = self.disk.take() else {
            self.go_down(format!("no durable state to restart from after: {what}"));
            return false;
        };
        // The reopened core hands out proposal and read ids its previous run did not (entries
        // that run proposed may still commit; see `CoreConfig::run_nonce`).
        core_config.run_nonce = core_config.run_nonce.wrapping_add(1);
        // Close the old store first (redb holds a lock on its file), then reopen it.
        let scratch = RaftCore::open(Box::new(MemoryBackend::new()), core_config.clone(), None);
        let reopened = match scratch {
            Ok(scratch) => {
                drop(self.driver.replace_core(scratch));
                disk.open()
                    .and_then(|backend| RaftCore::open(backend, core_config.clone(), None).map_err(|e| e.to_string()))
            }
            Err(e) => Err(e.to_string()),
        };
        self.disk = Some((disk, core_config));
        match reopened {
            Ok(core) => drop(self.driver.replace_core(core)),
            Err(reason) => {
                self.go_down(format!("durable state could not be reopened after a panic: {reason}"));
                return false;
            }
        }
        self.last_stats = CoreStats::default();
        self.last_store = StoreStats::default();
        self.driver.restarted(now);
        {
            let mut view = self.shared.view.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            view.restart_state = self.driver.core().restart_state().clone();
            view.actor_restarts += 1;
        }
        self.publish();
        self.perform();
        true
    }

    fn go_down(&mut self, reason: String) {
        tracing::error!(%reason, "consistent: the raft actor is down");
        let mut view = self.shared.view.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        view.restart_state = RestartState::Fatal { reason: reason.clone() };
        self.shared.metrics.observe_restart_state(&view.restart_state);
        view.down = Some(reason);
    }

    fn inject(&mut self, fault: RaftFault) {
        match fault {
            RaftFault::MalformedHeartbeat => {
                let core = self.driver.core_mut();
                let stats = core.stats();
                let mut msg = Message::default();
                msg.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
                msg.from = core.leader().filter(|l| *l != core.raft_id()).unwrap_or(u64::MAX);
                msg.to = core.raft_id();
                msg.term = stats.term;
                msg.commit = core.last_index() + 1_000_000;
                tracing::warn!("consistent: injected a heartbeat that commits past the local log");
                if let Err(error) = core.step(msg) {
                    tracing::warn!(%error, "consistent: injected raft message refused");
                }
            }
            RaftFault::Panic => panic!("injected fault: raft actor panic"),
        }
    }

    fn drain_on_stop(&mut self, commands: &mut mpsc::Receiver<Cmd>) {
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Cmd::Propose { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Admission::Canceled));
                    }
                }
                Cmd::StrongRead { reply, .. } => {
                    let _ = reply.send(Err(ReadError::Refused(Admission::Canceled)));
                }
                Cmd::Inject(_) => {}
            }
        }
        self.driver.cancel_all();
        self.perform();
    }

    fn on_cmd(&mut self, now: Instant, cmd: Cmd) {
        match cmd {
            Cmd::Propose { proposal, reply, deadline } => self.driver.handle_propose(now, proposal, reply, deadline),
            Cmd::StrongRead { name, request, reply, deadline } => {
                self.driver.handle_strong_read(now, name, request, reply, deadline)
            }
            Cmd::Inject(fault) => self.inject(fault),
        }
    }

    /// Updates the published view (names mirror, control view, status) and the metrics.
    fn publish(&mut self) {
        let now = Instant::now();
        let changes = self.driver.core_mut().take_view_changes();
        let control = self.driver.core().control_view(None);
        if control.quorum_reachable {
            self.last_contact = Some(now);
        }
        // Names of voters and learners and the transitions list are rebuilt only when they
        // changed: publish runs on every turn of the actor, on the write path of every hop.
        let conf = self.driver.core().conf_state();
        let key = (conf.voters.clone(), conf.learners.clone(), self.driver.core().fsm().members().len());
        if self.status_names.0 != key {
            let name_of =
                |id: &u64| self.driver.core().fsm().member(*id).map_or_else(|| id.to_string(), |n| n.name.clone());
            let names = (conf.voters.iter().map(name_of).collect(), conf.learners.iter().map(name_of).collect());
            self.status_names = (key, names);
        }
        let status = raft_status(self.driver.core(), &control, &self.status_names.1, &self.driver.config().storage);
        let is_voter = self.driver.core().conf_state().voters.contains(&self.driver.core().raft_id());
        let transitions: Option<Vec<Transition>> =
            self.driver.take_transitions_dirty().then(|| self.driver.core().transitions().cloned().collect());
        {
            let mut view = self.shared.view.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if changes.reset {
                view.names.clear();
                view.owners.clear();
                for (name, reg) in self.driver.core().fsm().names() {
                    *view.owners.entry(reg.pid.clone()).or_default() += 1;
                    view.names.insert(name.to_string(), reg.clone());
                }
            } else {
                for name in changes.names {
                    let now_reg = self.driver.core().fsm().lookup(&name).cloned();
                    let old = match now_reg {
                        Some(reg) => {
                            *view.owners.entry(reg.pid.clone()).or_default() += 1;
                            view.names.insert(name, reg)
                        }
                        None => view.names.remove(&name),
                    };
                    if let Some(old) = old
                        && let Some(count) = view.owners.get_mut(&old.pid)
                    {
                        *count -= 1;
                        if *count == 0 {
                            view.owners.remove(&old.pid);
                        }
                    }
                }
            }
            view.control = control;
            view.status = status;
            if let Some(transitions) = transitions {
                view.transitions = transitions;
            }
            view.is_voter = is_voter;
            view.last_contact = self.last_contact;
            view.last_loop = now;
            self.shared.metrics.observe_planes(&view.control, &view.restart_state);
        }
        let stats = self.driver.core().stats();
        let store = self.driver.core().store_stats();
        let metrics = &self.shared.metrics;
        metrics.observe_core(&self.last_stats, &stats, &self.last_store, &store);
        metrics.is_leader.set(i64::from(self.driver.core().is_leader()));
        metrics.voters.set(self.driver.core().conf_state().voters.len() as i64);
        self.last_stats = stats;
        self.last_store = store;
    }
}
