//! The internode transport (SPEC 5.2): authenticated TCP links between nodes with per-peer,
//! per-class bounded send queues.
//!
//! Role: carry [`Frame`]s of the five [`Class`]es to and from the other members. It owns the
//! listening socket, two outbound links per peer and the inbound connections; the protocol cores
//! it drives ([`PeerQueues`], the [`auth`](crate::auth) handshake, the [`frame`](crate::frame)
//! codec, the `backoff` schedule, the class-to-link `route`) are pure and tested on their own.
//!
//! ```text
//!  send(peer, class, ..) ─┬─ control, raft ──────► priority PeerQueues (control > raft)
//!                         └─ pg, registry, user ─► bulk PeerQueues (weighted pg/registry/user)
//!                                 │ Notify (per link)
//!                                 ▼
//!                      one task per link: pop_batch, fault filter (Out), encode, one write_all
//!                                 ▼
//!  ═══ TCP, dialled by the sender: two connections per ordered pair (priority, bulk) ═══
//!                                 ▼
//!                      inbound task per connection: FrameDecoder (max frame), fault filter (In)
//!                                 │ try_send, never waits
//!                                 ▼
//!                       per-class bounded mpsc ──► subscribe(class)
//! ```
//!
//! Why two connections: the class priorities only order frames still in our queues. On one
//! shared connection a `raft` frame also waited behind every `user` byte already in the kernel's
//! socket buffers (autotuned to MiBs), so under a saturating 4 KiB `user` flood its round-trip
//! p99 was 4.7–13.6x the unloaded p99 (0.8–5.1 ms, docs/BENCHMARKS.md), against SPEC 5.2's goal
//! of 2x. On its own priority link it waits only behind other `control` and `raft` frames.
//! The bulk link's writer and reader also yield after each batch, so a flooded bulk link holds
//! a shared worker for one batch at a time, not for a whole coop budget. With both changes, the
//! same benchmark on a quiet machine measures 81–297 µs, or 0.22–1.62x (docs/BENCHMARKS.md).
//! SPEC 5.2 allows "one per class, if measured better"; two links are enough, since `control`
//! and `raft` are both small and latency-critical, and pg/registry/user are weighted against
//! each other on purpose.
//!
//! Invariants:
//! - Two connections per **ordered** pair: A dials B for A→B traffic, and B's own dials carry
//!   B→A. The initiator's hello frame kind names the link ([`KIND_HELLO`] priority,
//!   [`KIND_HELLO_BULK`] bulk); both run the same authenticated handshake. Accepted connections
//!   are receive-only; the dialling side never reads frames, and a byte (or EOF) from the
//!   accepting side tells it the connection is gone.
//! - A class always travels on the same link (`route`), so delivery is in order per
//!   class. The two links of a peer are independent: each has its own queues, task, socket,
//!   backoff and reconnects; a peer is `connected` in the snapshot when both are up.
//! - Nothing is unbounded: send queues per [`QueueConfig`], inbound channels, concurrent
//!   handshakes ([`MAX_CONCURRENT_HANDSHAKES`]), inbound connections
//!   ([`MAX_INBOUND_CONNECTIONS`]), peers ([`MAX_PEERS`]), frame sizes (checked before
//!   allocating), socket buffers (`SO_SNDBUF`, `SO_RCVBUF` in [`TransportConfig`]), every
//!   timeout and backoff.
//! - Nothing is dropped silently: every frame that does not reach its subscriber is counted in
//!   `cohort_internode_dropped_total{class,reason}` under a [`DropCause`]; a refused `user` send
//!   is also returned to the caller as [`SendError::QueueSaturated`].
//! - Delivery is at most once and in order per class per connection. Frames already handed to
//!   the kernel when a connection dies are lost without a count (TCP gives no receipt); raft
//!   retransmits, pg resyncs and registry anti-entropy repair, user sends are fire-and-forget
//!   as in Erlang.
//! - No input from the network panics the node: handshake and frame readers check every length
//!   before allocating; a bad handshake or frame closes that connection and is counted.
//!
//! Every [`Transport`] method is cancel-safe: `send`, `peer_up`, `peer_down`, `snapshot` never
//! wait; dropping the `shutdown` future early only shortens the flush grace.

mod backoff;
mod config;
mod delay;
mod handshake;
mod inbound;
mod link;
mod metrics;
mod route;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::NodeId;
use crate::auth::{EncodeError, MAX_NAME_BYTES};
use crate::frame::{Frame, FrameError, HEADER_BYTES};
use crate::member::MemberInfo;
use crate::net::FaultInjector;
use crate::queue::{Class, PeerQueues, PushOutcome, QueueConfig};
use crate::secure::{Keyring, RecordError};

pub use config::{
    MAX_IO_BUFFER_BYTES, MAX_TIMEOUT, MAX_WRITE_BATCH_FRAMES, MIN_IO_BUFFER_BYTES, TransportConfig,
    TransportConfigError,
};
pub use handshake::{
    HandshakeFailure, KIND_HELLO, KIND_HELLO_ACK, KIND_HELLO_BULK, KIND_PROOF, MAX_HANDSHAKE_MESSAGE_BYTES,
};
pub use metrics::DropCause;

use metrics::Metrics;
use route::Link;

/// The most connections allowed in the handshake at once; more are closed at accept and counted
/// (`reason="busy"`).
///
/// Why: a handshake costs a task, a 1 KiB buffer and two HMACs, and a silent stranger holds its
/// slot for `handshake_timeout`; 64 is far above what a cluster's restarts need at once, and
/// keeps a connection flood from costing more than 64 tasks.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// The most authenticated inbound connections at once.
///
/// Why: each peer keeps two connections to us, its priority and bulk links (a newer one of the
/// same link from the same node replaces the older), so this serves as many peers as
/// [`MAX_PEERS`], well above Cohort's target of tens of nodes.
pub const MAX_INBOUND_CONNECTIONS: usize = 2 * MAX_PEERS;

/// The most peers [`Transport::peer_up`] tracks; beyond this, new peers are ignored and logged.
///
/// Why: each peer holds its queues (up to ~16k frames at the default capacities) and two link
/// tasks; the bound keeps a membership bug from exhausting memory.
pub const MAX_PEERS: usize = 1024;

/// How long the accept loop pauses after an accept error (e.g. out of file descriptors), so it
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Warn-level log lines per second the transport may write on its hot paths (SPEC 10).
const WARN_LOGS_PER_SECOND: u32 = 10;

/// A frame received from a peer, delivered to the subscriber of its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The authenticated sender (name and incarnation, from the handshake).
    pub from: NodeId,
    /// The message kind within the class.
    pub kind: u8,
    /// The message body.
    pub payload: Bytes,
}

/// What [`Transport::send`] did with a frame it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The frame is queued for the peer.
    Queued,
    /// The frame is queued; the class queue was full (`raft`, `control`: drop-oldest), so the
    /// oldest queued frame of the class was dropped and counted.
    QueuedDroppedOldest,
    /// The class queue was full (`pg`, `registry`: drop-newest); this frame was dropped and
    /// counted. `resync` is true for `pg`: the peer's view is now stale and the caller must
    /// schedule a full sync (see [`Transport::take_resync`]).
    DroppedNewest {
        /// Whether the peer needs a full resync of the class's state.
        resync: bool,
    },
}

/// Why [`Transport::send`] refused a frame. Each maps onto SPEC 8's `Admission` vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    /// The class queue to this peer is full and its policy is to refuse (`user`): the sender
    /// should back off. Maps to `Admission::QueueSaturated { class }`. Counted as
    /// `reason="queue_full_refused"`.
    #[error("QueueSaturated: the {class} queue to this peer is full")]
    QueueSaturated {
        /// The class whose queue was full.
        class: Class,
    },
    /// The transport does not know the peer (never up, down, or left). Maps to
    /// `Admission::NotHosted` for a remote pid: the node that hosted it is gone.
    #[error("unknown peer")]
    UnknownPeer,
    /// The payload does not fit in one frame. Maps to a 4xx at the API (a caller bug, not a
    /// load condition). Counted as `reason="too_large"`.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame `len` (payload + 2 header bytes).
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The transport is shutting down. Maps to `Admission::Canceled`.
    #[error("transport is shutting down")]
    ShuttingDown,
}

/// Why [`Transport::start`] failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The configuration is out of bounds.
    #[error("transport config: {0}")]
    Config(#[from] TransportConfigError),
    /// The node name or cluster name cannot go in a handshake (empty or over 255 bytes).
    #[error("transport identity: {0}")]
    Identity(#[from] EncodeError),
    /// The listener could not be handed to tokio.
    #[error("transport listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The metrics could not be registered (already registered in this registry?).
    #[error("transport metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How an inbound connection served by [`Transport::serve_inbound`] ended badly.
#[derive(Debug, Error)]
pub enum InboundError {
    /// The handshake failed (counted in `cohort_internode_handshake_failures_total`).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeFailure),
    /// The authenticated peer sent a malformed frame (counted in
    /// `cohort_internode_frame_errors_total`); the connection was closed.
    #[error("frame from {peer}: {error}")]
    Frame {
        /// The peer.
        peer: NodeId,
        /// What was wrong.
        error: FrameError,
    },
    /// A record failed authentication (altered, replayed, reordered or dropped on the way);
    /// counted in `cohort_internode_frame_errors_total`; the connection was closed.
    #[error("record from {peer}: {error}")]
    Record {
        /// The peer.
        peer: NodeId,
        /// What was wrong.
        error: RecordError,
    },
    /// Reading the connection failed.
    #[error("read from {peer}: {error}")]
    Io {
        /// The peer.
        peer: NodeId,
        /// The error.
        error: std::io::Error,
    },
}

/// The transport's state for `GET /admin/transport`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransportSnapshot {
    /// Every known peer, sorted by name.
    pub peers: Vec<PeerSnapshot>,
}

/// One peer in a [`TransportSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerSnapshot {
    /// The peer's identity (`{"name","incarnation"}`).
    pub node: NodeId,
    /// Whether both outbound links (priority and bulk) are established.
    pub connected: bool,
    /// One row per class, in drain-priority order.
    pub classes: Vec<ClassSnapshot>,
}

/// One class of one peer in a [`PeerSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassSnapshot {
    /// The class (`"control"`, `"raft"`, `"pg"`, `"registry"`, `"user"`).
    pub class: Class,
    /// Frames queued now.
    pub depth: usize,
    /// The queue's capacity in frames.
    pub capacity: usize,
    /// Frames of this class to or from this peer dropped or refused, all reasons.
    pub dropped: u64,
    /// Frame bytes written to this peer (headers included).
    pub bytes_out: u64,
    /// Frame bytes received from this peer (headers included).
    pub bytes_in: u64,
}

/// The internode transport of one node. Cheap to clone (an `Arc` inside); `Send + Sync`.
///
/// Its tasks hold the transport alive until [`shutdown`](Self::shutdown): call it before
/// dropping the last handle.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("local", &self.inner.local).field("addr", &self.inner.local_addr).finish()
    }
}

/// One class's inbound channel.
struct InboundSlot {
    /// Cloned by each connection's reader when it starts; taken at shutdown so subscribers see
    /// their channel close once the readers are gone.
    sender: Mutex<Option<mpsc::Sender<Inbound>>>,
    receiver: Mutex<Option<mpsc::Receiver<Inbound>>>,
    subscribed: AtomicBool,
}

/// Per-peer counters for the snapshot, indexed by class code.
#[derive(Default)]
struct PeerStats {
    dropped: [AtomicU64; 5],
    bytes_out: [AtomicU64; 5],
    bytes_in: [AtomicU64; 5],
}

/// Why a peer's links were stopped, so frames they held in flight are counted right.
const RETIRED_NO: u8 = 0;
const RETIRED_PEER_DOWN: u8 = 1;
const RETIRED_SHUTDOWN: u8 = 2;

/// One peer: its two outbound links and counters.
struct Peer {
    id: NodeId,
    addr: SocketAddr,
    /// Indexed by [`Link::index`].
    links: [PeerLink; 2],
    stats: PeerStats,
    retired: AtomicU8,
}

/// One outbound link to a peer: the queues of the classes it carries, its task's wake-up.
struct PeerLink {
    /// Only the classes of this link are ever pushed here, so its `pop_batch` drains exactly
    /// them, in their priority / weighted order.
    queues: Mutex<PeerQueues<Frame>>,
    /// Woken by `send` after a push; the link task drains when woken.
    notify: Notify,
    connected: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
}

impl PeerLink {
    fn new(config: QueueConfig) -> Option<Self> {
        Some(Self {
            queues: Mutex::new(PeerQueues::new(config).ok()?),
            notify: Notify::new(),
            connected: AtomicBool::new(false),
            task: Mutex::new(None),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data (no invariant spans
    // the critical sections), so poisoning is ignored rather than spread.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Peer {
    fn new(member: &MemberInfo, config: QueueConfig) -> Option<Self> {
        Some(Self {
            id: member.id.clone(),
            addr: member.addrs.internode,
            links: [PeerLink::new(config)?, PeerLink::new(config)?],
            stats: PeerStats::default(),
            retired: AtomicU8::new(RETIRED_NO),
        })
    }

    /// One of the peer's two links.
    fn link(&self, link: Link) -> &PeerLink {
        &self.links[link.index()]
    }

    /// The link whose queues hold `class`.
    fn link_of(&self, class: Class) -> &PeerLink {
        self.link(Link::of(class))
    }

    /// The queue capacity of `class` towards this peer.
    fn capacity(&self, class: Class) -> usize {
        lock(&self.link_of(class).queues).queue(class).capacity()
    }

    /// Whether both links are established.
    fn is_connected(&self) -> bool {
        self.links.iter().all(|link| link.connected.load(Ordering::Relaxed))
    }

    /// The cause to count frames lost in flight under (a failed write unless the peer was
    /// retired).
    fn lost_cause(&self) -> DropCause {
        match self.retired.load(Ordering::Acquire) {
            RETIRED_PEER_DOWN => DropCause::PeerDown,
            RETIRED_SHUTDOWN => DropCause::Shutdown,
            _ => DropCause::ConnectionLost,
        }
    }

    fn snapshot(&self) -> PeerSnapshot {
        let classes = Class::ALL
            .iter()
            .map(|&class| {
                let i = class.code() as usize;
                let queues = lock(&self.link_of(class).queues);
                let queue = queues.queue(class);
                ClassSnapshot {
                    class,
                    depth: queue.depth(),
                    capacity: queue.capacity(),
                    dropped: self.stats.dropped[i].load(Ordering::Relaxed),
                    bytes_out: self.stats.bytes_out[i].load(Ordering::Relaxed),
                    bytes_in: self.stats.bytes_in[i].load(Ordering::Relaxed),
                }
            })
            .collect();
        PeerSnapshot { node: self.id.clone(), connected: self.is_connected(), classes }
    }
}

struct Inner {
    local: NodeId,
    /// The keys of the cluster secret (and of the next one during a rotation).
    keys: Keyring,
    faults: FaultInjector,
    config: TransportConfig,
    local_addr: SocketAddr,
    peers: DashMap<String, Arc<Peer>>,
    inbound: [InboundSlot; 5],
    /// The authenticated inbound connection per node name and link: its id and how to close it.
    inbound_conns: DashMap<(String, Link), (u64, Arc<Notify>)>,
    next_conn_id: AtomicU64,
    metrics: Metrics,
    handshake_slots: Arc<Semaphore>,
    connection_slots: Arc<Semaphore>,
    reconnect_limiter: DefaultDirectRateLimiter,
    log_limiter: DefaultDirectRateLimiter,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
    /// The runtime `start` ran on: tasks are spawned there, so `peer_up` works from any thread.
    runtime: tokio::runtime::Handle,
    /// Who is told that a peer's process is gone by the evidence of a dial
    /// ([`Transport::on_peer_gone`]).
    gone_hook: std::sync::OnceLock<GoneHook>,
}

/// What [`Transport::on_peer_gone`] calls.
pub type GoneHook = Box<dyn Fn(&NodeId) + Send + Sync>;

impl Inner {
    /// Tells the hook of [`Transport::on_peer_gone`] that `peer`'s process is gone.
    fn report_gone(&self, peer: &NodeId) {
        if let Some(hook) = self.gone_hook.get() {
            hook(peer);
        }
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether a warn-level line may be logged now (rate limit of SPEC 10).
    fn may_warn(&self) -> bool {
        self.log_limiter.check().is_ok()
    }

    /// Spawns a task the transport owns (aborted at shutdown); `None` once shutting down.
    fn spawn<F>(&self, task: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        if self.is_shutting_down() {
            return None;
        }
        // Reap finished tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        Some(tasks.spawn_on(task, &self.runtime))
    }

    /// Counts `n` dropped frames of `class`, also against the peer's snapshot counters.
    fn count_drop(&self, peer: Option<&Peer>, class: Class, cause: DropCause, n: u64) {
        self.metrics.dropped(class, cause, n);
        if let Some(peer) = peer {
            peer.stats.dropped[class.code() as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Stops a peer's links and drops their queued frames, counting them under `cause`.
    fn retire(&self, peer: &Peer, cause: DropCause) {
        let code = if cause == DropCause::Shutdown { RETIRED_SHUTDOWN } else { RETIRED_PEER_DOWN };
        peer.retired.store(code, Ordering::Release);
        for link in &peer.links {
            if let Some(task) = lock(&link.task).take() {
                task.abort();
            }
            link.connected.store(false, Ordering::Relaxed);
        }
        let mut dropped = [0u64; 5];
        for link in &peer.links {
            for (class, _) in lock(&link.queues).pop_batch(usize::MAX, usize::MAX) {
                dropped[class.code() as usize] += 1;
            }
        }
        for class in Class::ALL {
            let i = class.code() as usize;
            self.count_drop(Some(peer), class, cause, dropped[i]);
            self.metrics.depth[i].sub(dropped[i] as i64);
            self.metrics.capacity[i].sub(peer.capacity(class) as i64);
        }
    }

    /// Starts the task of each of the peer's links; false once shutting down.
    fn spawn_links(self: &Arc<Self>, peer: &Arc<Peer>) -> bool {
        for link in Link::ALL {
            let task = link::run_link(Arc::clone(self), Arc::clone(peer), link);
            let Some(handle) = self.spawn(task) else { return false };
            *lock(&peer.link(link).task) = Some(handle);
        }
        true
    }
}

/// Checks that a name fits a handshake (1..=255 bytes), so no handshake can later fail on our
/// side.
fn check_handshake_name(field: &'static str, name: &str) -> Result<(), EncodeError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(EncodeError::BadName { field, len: name.len(), max: MAX_NAME_BYTES });
    }
    Ok(())
}

impl Transport {
    /// Starts the transport on `listener` (already bound by the node; port 0 is fine) and
    /// registers its metrics in `registry`. Must be called inside a tokio runtime.
    pub async fn start(
        local: NodeId,
        keys: Keyring,
        listener: std::net::TcpListener,
        faults: FaultInjector,
        config: TransportConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, TransportError> {
        config.validate()?;
        check_handshake_name("cluster", keys.cluster())?;
        check_handshake_name("node", &local.name)?;
        if let Some(bytes) = config.socket_recv_buffer_bytes {
            inbound::set_recv_buffer(&listener, bytes)?;
        }
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        let metrics = Metrics::register(registry)?;
        let inbound = Class::ALL.map(|class| {
            let (sender, receiver) = mpsc::channel(config.inbound_capacity.get(class));
            InboundSlot {
                sender: Mutex::new(Some(sender)),
                receiver: Mutex::new(Some(receiver)),
                subscribed: AtomicBool::new(false),
            }
        });
        let reconnect_quota = Quota::per_second(config.reconnect_attempts_per_second);
        let log_quota =
            Quota::per_second(std::num::NonZeroU32::new(WARN_LOGS_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN));
        let inner = Arc::new(Inner {
            local,
            keys,
            faults,
            config,
            local_addr,
            peers: DashMap::new(),
            inbound,
            inbound_conns: DashMap::new(),
            next_conn_id: AtomicU64::new(0),
            metrics,
            handshake_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES)),
            connection_slots: Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS)),
            reconnect_limiter: RateLimiter::direct(reconnect_quota),
            log_limiter: RateLimiter::direct(log_quota),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            tasks: Mutex::new(JoinSet::new()),
            runtime: tokio::runtime::Handle::current(),
            gone_hook: std::sync::OnceLock::new(),
        });
        inner.spawn(inbound::accept_loop(Arc::clone(&inner), listener));
        tracing::info!(node = %inner.local, addr = %local_addr, "internode transport listening");
        Ok(Self { inner })
    }

    /// Sets who is told that a peer's process is gone by the evidence of a dial: its internode
    /// port refused the connection (nothing listens there: the process exited or was killed; a
    /// partition drops packets and never refuses), or a later incarnation of the node answered.
    /// Called on the link's task at every such dial (at most once per backoff step), so it must
    /// not block; the node passes `Membership::report_connection_refused`, which turns it into a
    /// fast, confirmed `down`. Only the first hook set is kept (returns false for later ones).
    pub fn on_peer_gone(&self, hook: GoneHook) -> bool {
        self.inner.gone_hook.set(hook).is_ok()
    }

    /// The receiver of every frame of `class` from any peer. One consumer per class: the first
    /// call takes the receiver, later calls return `None`.
    pub fn subscribe(&self, class: Class) -> Option<mpsc::Receiver<Inbound>> {
        let slot = &self.inner.inbound[class.code() as usize];
        let receiver = lock(&slot.receiver).take()?;
        slot.subscribed.store(true, Ordering::Release);
        Some(receiver)
    }

    /// Starts (re)connecting to `member.addrs.internode`. A newer incarnation of a known peer
    /// replaces it (its queued frames are dropped as `peer_down`: they were meant for a run of the
    /// node that is gone); the same incarnation at the same address is a no-op; an older one, or
    /// this node itself, is ignored.
    pub fn peer_up(&self, member: &MemberInfo) {
        let inner = &self.inner;
        if inner.is_shutting_down() || member.id.name == inner.local.name {
            return;
        }
        if !inner.peers.contains_key(&member.id.name) && inner.peers.len() >= MAX_PEERS {
            if inner.may_warn() {
                tracing::warn!(peer = %member.id, max = MAX_PEERS, "internode peer limit reached; peer ignored");
            }
            return;
        }
        let Some(peer) = Peer::new(member, inner.config.queue) else { return };
        let peer = Arc::new(peer);
        let replaced = match inner.peers.entry(member.id.name.clone()) {
            Entry::Occupied(mut entry) => {
                let current = entry.get();
                if current.id.incarnation > member.id.incarnation
                    || (current.id == member.id && current.addr == member.addrs.internode)
                {
                    return;
                }
                if !inner.spawn_links(&peer) {
                    return;
                }
                Some(entry.insert(Arc::clone(&peer)))
            }
            Entry::Vacant(entry) => {
                if !inner.spawn_links(&peer) {
                    return;
                }
                entry.insert(Arc::clone(&peer));
                None
            }
        };
        for class in Class::ALL {
            inner.metrics.capacity[class.code() as usize].add(peer.capacity(class) as i64);
        }
        if let Some(old) = replaced {
            tracing::debug!(old = %old.id, new = %member.id, "internode peer replaced by a newer incarnation");
            inner.retire(&old, DropCause::PeerDown);
        }
    }

    /// Stops the link to `member` and drops its queued frames (counted as `peer_down`). A down
    /// event for an older incarnation than the one known is ignored.
    pub fn peer_down(&self, member: &MemberInfo) {
        let removed =
            self.inner.peers.remove_if(&member.id.name, |_, peer| peer.id.incarnation <= member.id.incarnation);
        if let Some((_, peer)) = removed {
            self.inner.retire(&peer, DropCause::PeerDown);
        }
    }

    /// Queues one frame for `peer` (a node name). Never blocks.
    ///
    /// A full queue applies its class's policy: `user` refuses with
    /// [`SendError::QueueSaturated`]; `raft` and `control` drop their oldest frame
    /// ([`SendOutcome::QueuedDroppedOldest`]); `pg` and `registry` drop this one
    /// ([`SendOutcome::DroppedNewest`]). Every drop and refusal is counted.
    pub fn send(&self, peer: &str, class: Class, kind: u8, payload: Bytes) -> Result<SendOutcome, SendError> {
        let inner = &self.inner;
        if inner.is_shutting_down() {
            return Err(SendError::ShuttingDown);
        }
        let len = payload.len().saturating_add(HEADER_BYTES);
        let max = inner.config.max_frame_bytes;
        if len > max {
            inner.count_drop(inner.peers.get(peer).as_deref().map(|p| &**p), class, DropCause::TooLarge, 1);
            return Err(SendError::TooLarge { len, max });
        }
        let peer = inner.peers.get(peer).ok_or(SendError::UnknownPeer)?;
        let link = peer.link_of(class);
        let outcome = lock(&link.queues).push(class, Frame { class, kind, payload });
        let i = class.code() as usize;
        // Drops beyond the one `outcome_reason` counts (a large frame may evict several).
        let mut evicted_extra = 0;
        let result = match outcome {
            PushOutcome::Enqueued => {
                inner.metrics.depth[i].inc();
                Ok(SendOutcome::Queued)
            }
            PushOutcome::DroppedOldest(evicted) => {
                // One in, `evicted` out: the depth moves by their difference.
                inner.metrics.depth[i].add(1 - evicted.len() as i64);
                evicted_extra = evicted.len().saturating_sub(1) as u64;
                Ok(SendOutcome::QueuedDroppedOldest)
            }
            PushOutcome::DroppedNewest(_) => Ok(SendOutcome::DroppedNewest { resync: class == Class::Pg }),
            PushOutcome::Refused(_) => Err(SendError::QueueSaturated { class }),
        };
        if let Some(reason) = outcome_reason(&result) {
            inner.count_drop(Some(&peer), class, DropCause::Queue(reason), 1 + evicted_extra);
        }
        if matches!(result, Ok(SendOutcome::Queued | SendOutcome::QueuedDroppedOldest)) {
            link.notify.notify_one();
        }
        result
    }

    /// Whether a `pg` frame to `peer` was dropped since the last call (the mark is cleared): the
    /// caller then schedules a full pg sync with that peer.
    pub fn take_resync(&self, peer: &str) -> bool {
        self.inner.peers.get(peer).is_some_and(|p| lock(&p.link_of(Class::Pg).queues).take_resync())
    }

    /// The per-peer, per-class state (for `GET /admin/transport`).
    pub fn snapshot(&self) -> TransportSnapshot {
        let mut peers: Vec<PeerSnapshot> = self.inner.peers.iter().map(|entry| entry.value().snapshot()).collect();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        TransportSnapshot { peers }
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's identity.
    pub fn local(&self) -> &NodeId {
        &self.inner.local
    }

    /// Runs the responder side of one inbound connection on any byte stream: handshake (under
    /// `handshake_timeout`), then frames until EOF, a bad frame, replacement by a newer
    /// connection from the same node, or shutdown. The accept loop calls this for every TCP
    /// connection; a simulated network or a test can hand it an in-memory stream.
    ///
    /// Returns the authenticated peer when the connection ended cleanly. Failures are counted
    /// (handshake failures, frame errors) before they are returned.
    pub async fn serve_inbound<S>(&self, stream: S) -> Result<NodeId, InboundError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Ok(permit) = Arc::clone(&self.inner.handshake_slots).try_acquire_owned() else {
            self.inner.metrics.handshake_failed(&HandshakeFailure::Busy);
            return Err(HandshakeFailure::Busy.into());
        };
        self.inner.serve(stream, permit).await
    }

    /// Stops accepting, lets links flush their queues for up to `shutdown_grace`, then aborts
    /// every task and drops what is still queued (counted as `shutdown`). Bounded by
    /// `shutdown_grace` plus a short abort wait. Subscribers' channels close once the readers are
    /// gone. Later `send`s return [`SendError::ShuttingDown`].
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        {
            let _tasks = lock(&inner.tasks);
            inner.shutting_down.store(true, Ordering::Release);
        }
        inner.shutdown.send_replace(true);
        let mut tasks = std::mem::take(&mut *lock(&inner.tasks));
        let _ = tokio::time::timeout(inner.config.shutdown_grace, async { while tasks.join_next().await.is_some() {} })
            .await;
        for peer in inner.peers.iter() {
            peer.retired.store(RETIRED_SHUTDOWN, Ordering::Release);
        }
        tasks.abort_all();
        // Aborted tasks finish at their next poll; the bound only guards against a task stuck in
        // a blocking call, which this module never makes.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), async { while tasks.join_next().await.is_some() {} }).await;
        let names: Vec<String> = inner.peers.iter().map(|entry| entry.key().clone()).collect();
        for name in names {
            if let Some((_, peer)) = inner.peers.remove(&name) {
                inner.retire(&peer, DropCause::Shutdown);
            }
        }
        for slot in &inner.inbound {
            lock(&slot.sender).take();
        }
        tracing::info!(node = %inner.local, "internode transport stopped");
    }
}

/// The queue-policy reason to count for a send result, if it dropped or refused something.
fn outcome_reason(result: &Result<SendOutcome, SendError>) -> Option<crate::queue::DropReason> {
    use crate::queue::DropReason;
    match result {
        Ok(SendOutcome::Queued) => None,
        Ok(SendOutcome::QueuedDroppedOldest) => Some(DropReason::QueueFullDropOldest),
        Ok(SendOutcome::DroppedNewest { .. }) => Some(DropReason::QueueFullDropNewest),
        Err(SendError::QueueSaturated { .. }) => Some(DropReason::QueueFullRefused),
        Err(_) => None,
    }
}
