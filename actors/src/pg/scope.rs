//! One pg scope on one node: the [`Scope`] handle and the scope actor (SPEC 6.2).
//!
//! # Shell and driver
//! The peer protocol (every decision about what to send to which peer, and when) lives in the
//! sans-I/O driver [`Peers`] (`pg/peers.rs`); this module is its shell. The actor feeds the driver
//! its inputs with the current time (`handle_peer_up`/`down` from the service's membership work,
//! `handle_message` for each routed frame of an up member, `handle_drained` for each drain of the
//! outbox, `handle_frame_lost` when its inbound queue was full, `handle_timeout` when the
//! driver's deadline passes) and, after each input, performs the outputs: every
//! `poll_transmit` goes to the transport's pg queue (a refusal goes back as
//! `handle_send_failure`), every `poll_event` is counted in the metrics, logged, or (a peer's
//! broadcast) delivered to the local members, and one tokio sleep is armed to `poll_timeout`.
//! What stays here is I/O and local work: the tokio loop and its mailbox, the transport, the
//! metrics and logs, monitors (registration, snapshot cuts, dispatch), the member-lock check on
//! inbound frames, local broadcast fan-out, supervision and the crash hook. The sections below
//! describe the protocol as a whole; [`Peers`] documents its own inputs, outputs and invariants.
//!
//! # Roles
//! - [`Scope`] (cheap to clone) is what callers use. `join`/`leave` write the [`ScopeTable`]
//!   directly in the caller's thread (read-your-writes, no actor round trip) and wake the actor;
//!   reads are lock-free snapshot loads; `broadcast` reads the members and sends directly.
//! - The **scope actor** is one tokio task per scope per node (a plain task, not a ractor actor:
//!   it needs a `select!` over five sources), run as the one `Permanent` child of the scope's
//!   [`Supervisor`](crate::supervisor::Supervisor), which the service owns (see "Restarts"). It
//!   owns all of the scope's I/O and, through its [`Peers`] driver, all peer state: it drains the
//!   table's event outbox, dispatches events to monitors, and has the driver send local changes to
//!   peers (one `Batch` frame per peer per drain), answer `Discover` with its full state, apply
//!   peers' syncs and batches, run anti-entropy (digests, and the full-state backstop) and resync
//!   peers whose pg queue overflowed.
//!
//! # Wake-ups
//! Writers call `Notify::notify_one` after each write (a stored permit if the actor is busy, so no
//! wake-up is lost). The actor loops: take pending membership work, flush the outbox, then wait for
//! the first of: its stop signal, a monitor command, an inbound frame (routed by the service), the notify,
//! the driver's deadline ([`Peers::poll_timeout`]: the earliest of the anti-entropy push, the
//! digest round, the pending resyncs and pulls, and the unanswered discovers).
//!
//! # Anti-entropy: digests every 2 s, full state every 30 s
//! A pg frame can be lost while the link stays up (a fault injected on a live link, a frame
//! written into a connection that then dies). Every `digest_interval` the actor sends each peer
//! that answered it (not awaiting, see below) a `Digest`: the
//! [`MembershipDigest`](super::digest::MembershipDigest) of its local memberships as drained so
//! far ([`ScopeTable::local_digest`]). It is queued behind every batch of those drained events on
//! the same ordered pg queue, so a receiver that lost nothing holds exactly that digest for us
//! when it reads it ([`ScopeTable::peer_digest`]). On a mismatch the receiver pulls our full state
//! with a `Discover`, rate-limited by its [`DigestRepair`](super::digest::DigestRepair) for us (at
//! most one pull per peer per period; a deferred mismatch is pulled at its own digest tick). So a
//! lost join or leave is repaired within about two periods, and a lost pull or sync is simply
//! detected again by the next digest. Every `anti_entropy_interval` the actor still pushes its full
//! state to one peer (round robin): a backstop for what digests cannot see (a hash collision, a
//! peer of an older build that sends none).
//!
//! # Consistency with snapshots (the seq/version design of [`ScopeTable`])
//! A monitor or a peer that is given a snapshot must then see exactly the events the snapshot does
//! not reflect. The actor registers monitors and takes peer-sync snapshots itself, between drains,
//! and attaches a `SnapshotCut` (per-group versions plus a floor for other groups): events the cut
//! reflects are skipped. A cut is needed only until the outbox has been drained empty once (every
//! event it reflects was pushed before the snapshot was read, so it has then been seen) and is
//! dropped then.
//!
//! Monitors get exact snapshots: [`ScopeTable::monitor_snapshot`] and
//! [`ScopeTable::monitor_scope_snapshot`] read each group under its writer lock together with its
//! cut (a scope-wide read also keeps groups from being created or removed meanwhile), so no write
//! is half reflected, nothing is retried, and every event drained before the registration is
//! reflected by the cut (checked in debug builds). Empty groups of a scope read are kept in the
//! cut and left out of the monitor's snapshot.
//!
//! Peer syncs, which are periodic, use the lock-free [`ScopeTable::sync_snapshot`] instead, so they
//! never delay writers: events drained but not yet published when it was read (a writer between
//! its outbox push and its publish) are found in a small replay ring of recently drained events
//! and sent after the sync; peers ignore leaves of pids they do not hold, and anti-entropy repairs
//! anything the ring no longer covers.
//!
//! # Connecting: a discover is re-sent until the peer's full state arrives
//! On `member_up` (and on a restart) the actor sends the peer a `Discover` and our full state; the
//! peer answers the discover with its full state. Either may be lost: the peer may not consider us
//! up yet (it ignores our frames until its own `member_up`), or the transport link may die under
//! them (e.g. the responder's handshake timing out after the initiator's side completed, on a
//! loaded machine: the frames written meanwhile die with the connection). Nothing else would
//! repair that before anti-entropy (30 s by default), so the actor keeps each peer it discovered
//! as *awaiting* until a complete sync from it arrives, and re-sends the discover after
//! `resync_delay`, doubling up to the anti-entropy period. The peer runs the same rule, so each
//! side ends up holding the other's full state. A peer that does not run this scope never
//! answers: it gets one discover per anti-entropy period (counted there as `unknown_scope`), and
//! no digests (those go only to peers that answered).
//!
//! # Restarts (SPEC 6.1: restarted and re-synchronised, not silently lost)
//! The actor runs under a supervisor; a crash (a panic: a bug) starts a new incarnation from
//! `ScopeRunner::run`. What outlives an incarnation is in the `Arc`s the runner holds: the
//! [`ScopeTable`] (so local reads and writes never stop, and the groups are intact), the
//! monitors registry, the pending membership work, and the mailbox (the receivers of commands and
//! routed frames: whatever was queued and not yet taken is served by the next incarnation).
//! Everything else is per incarnation and starts empty: the [`Peers`] driver (peer states and
//! cuts, sync assemblers, the replay ring, pending resyncs, digest repair states). The local digest lives in the table:
//! it counts the events drained by any incarnation, including those a crash lost before sending
//! (the restart's full syncs carry them).
//!
//! What a crash can lose is what the dying incarnation had taken and not finished: events drained
//! from the outbox and not yet dispatched or sent, a routed frame or a sync half applied. So a
//! restarted incarnation, before anything else, re-synchronises as on `member_up`: it sends every
//! up member a `Discover` (the peer answers with its full state, replacing what we hold of it)
//! and our full state (replacing what the peer holds of us; `cohort_pg_syncs_total{reason=
//! "restart"}`). Both sides converge with events only for real differences.
//!
//! Monitors are closed by a restart (their `recv` returns `None`): they may have missed events
//! the dying incarnation had drained, and a monitor must never silently drift. As in Erlang,
//! where a crashed pg scope process takes its monitors with it, a subscriber re-monitors and gets
//! a fresh snapshot. A `monitor` call whose command the dying incarnation had taken fails with
//! [`PgError::ScopeStopped`]; later ones are served by the new incarnation.
//!
//! # Invariants
//! - Only the actor reads the outbox, sends pg frames of this scope, or changes peer state (through
//!   its driver, which it alone holds, and whose outputs it drains after every input); frames
//!   from a node are applied only while it is an up member (checked under the service's member
//!   lock, which `member_down` holds while removing the node's members, so a late frame can never
//!   re-add a node that went down).
//! - To a peer, a full sync always precedes the batches that follow it (one ordered pg queue), and
//!   a digest follows the batches of every event it counts.
//! - A persistent digest mismatch with one peer costs at most one full sync per digest period
//!   (fewer when its syncs are refused by our bounds: see
//!   [`DigestRepair`](super::digest::DigestRepair)).
//! - Every channel and buffer is bounded: commands, routed frames, monitor channels (a full one
//!   drops that monitor, counted), the replay ring, events per drain, drains per wake-up.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use bytes::Bytes;
use cohort_cluster::NodeId;
use cohort_cluster::net::transport::{SendError, SendOutcome, Transport};
use cohort_cluster::queue::Class;
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::PgError;
use super::metrics::{PgMetrics, delivery, reject};
use super::peers::{DigestCheck, Peers, PeersConfig, PeersEvent, SendFailure, SyncReason};
use super::service::PgConfig;
use super::snapshot::{Members, ScopeTable, SnapshotCut};
use super::state::{Event, EventKind, Group, GroupSnapshot};
use super::wire::{
    MAX_BROADCAST_BYTES, MAX_OPS_PER_BATCH_FRAME, PG_FRAME_KIND, PgFrame, PgMessage, WireBytes, WireError, encode_frame,
};
use crate::host::{DeliveryError, ProcessHost};
use crate::pid::Pid;
use crate::supervisor::{ChildError, StopSignal};

/// Drains (of up to [`MAX_OPS_PER_BATCH_FRAME`] events each) per wake-up before the actor serves
/// its other inputs again, so a write flood cannot starve inbound frames and commands.
const MAX_DRAINS_PER_FLUSH: usize = 16;

/// Refusals listed one by one in a [`BroadcastReport`]; the rest are only counted.
pub const MAX_REFUSALS_REPORTED: usize = 64;

/// Monitor commands waiting for the actor.
const COMMAND_CAPACITY: usize = 256;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; the data stays consistent, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A membership change as a monitor receives it: Erlang's `{join|leave, group, pids}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgEvent {
    /// Join or leave.
    pub kind: EventKind,
    /// The group that changed.
    pub group: Group,
    /// The pids that joined or left, repeated per join occurrence; never empty.
    pub pids: Vec<Pid>,
}

/// What a [`Monitor`] watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorTarget {
    /// One group.
    Group(Group),
    /// Every group of the scope.
    Scope,
}

impl MonitorTarget {
    fn matches(&self, group: &Group) -> bool {
        match self {
            MonitorTarget::Group(g) => g == group,
            MonitorTarget::Scope => true,
        }
    }
}

/// A subscription to a group or a whole scope, with the snapshot it starts from.
///
/// Applying [`Monitor::recv`]'s events in order to [`Monitor::snapshot`] gives the current
/// membership: no event is missing or repeated between the two. Dropping the monitor (or
/// [`Scope::demonitor`]) unsubscribes synchronously. The event channel closes (`recv` returns
/// `None`) when the monitor was dropped by the scope: its channel overflowed (re-monitor to get a
/// fresh snapshot), its owner process exited, or the service shut down.
pub struct Monitor {
    id: u64,
    target: MonitorTarget,
    snapshot: Vec<(Group, Arc<GroupSnapshot>)>,
    events: mpsc::Receiver<PgEvent>,
    shared: Arc<ScopeShared>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("id", &self.id).field("target", &self.target).finish_non_exhaustive()
    }
}

impl Monitor {
    /// What this monitor watches.
    pub fn target(&self) -> &MonitorTarget {
        &self.target
    }

    /// The non-empty watched groups when the subscription started, with their members.
    pub fn snapshot(&self) -> &[(Group, Arc<GroupSnapshot>)] {
        &self.snapshot
    }

    /// The members of `group` in the starting snapshot (empty if it had none).
    pub fn snapshot_members(&self, group: &str) -> &[Pid] {
        self.snapshot.iter().find(|(g, _)| g.as_str() == group).map(|(_, s)| s.members()).unwrap_or(&[])
    }

    /// The next event; `None` once the scope dropped this monitor. Cancel-safe.
    pub async fn recv(&mut self) -> Option<PgEvent> {
        self.events.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<PgEvent, mpsc::error::TryRecvError> {
        self.events.try_recv()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.unsubscribe(self.id);
    }
}

/// A broadcast target that did not get the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BroadcastRefusal {
    /// A local member refused the delivery (not hosted any more, mailbox full, undecodable).
    Local {
        /// The member.
        pid: Pid,
        /// Why.
        error: DeliveryError,
    },
    /// The frame to a node with members was not queued (`QueueSaturated` when the pg queue to it
    /// is full, `UnknownPeer` when the transport does not know it, ...).
    Remote {
        /// The node.
        node: NodeId,
        /// Why.
        error: SendError,
    },
}

/// What a broadcast did on this node. Deliveries on receiving nodes are counted there
/// (`cohort_pg_broadcast_deliveries_total`), not reported back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Local members the message was delivered to (each distinct pid once).
    pub local_delivered: usize,
    /// Remote nodes a frame was queued for (one per node with members).
    pub remote_nodes: usize,
    /// Refusals, the first [`MAX_REFUSALS_REPORTED`] of them.
    pub refused: Vec<BroadcastRefusal>,
    /// Every refusal, listed or not.
    pub refused_total: usize,
}

impl BroadcastReport {
    fn refuse(&mut self, refusal: BroadcastRefusal) {
        self.refused_total += 1;
        if self.refused.len() < MAX_REFUSALS_REPORTED {
            self.refused.push(refusal);
        }
    }
}

struct Subscriber {
    target: MonitorTarget,
    sender: mpsc::Sender<PgEvent>,
    owner: Option<Pid>,
    cut: Option<SnapshotCut>,
}

/// The monitors of a scope, indexed by group and by owner.
#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_id: HashMap<u64, Subscriber>,
    by_group: HashMap<Group, Vec<u64>>,
    scope_wide: Vec<u64>,
    by_owner: HashMap<Pid, Vec<u64>>,
}

impl Subscribers {
    fn insert(&mut self, subscriber: Subscriber) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        match &subscriber.target {
            MonitorTarget::Group(group) => self.by_group.entry(group.clone()).or_default().push(id),
            MonitorTarget::Scope => self.scope_wide.push(id),
        }
        if let Some(owner) = &subscriber.owner {
            self.by_owner.entry(owner.clone()).or_default().push(id);
        }
        self.by_id.insert(id, subscriber);
        id
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(subscriber) = self.by_id.remove(&id) else { return false };
        match &subscriber.target {
            MonitorTarget::Group(group) => {
                if let Some(ids) = self.by_group.get_mut(group) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.by_group.remove(group);
                    }
                }
            }
            MonitorTarget::Scope => self.scope_wide.retain(|i| *i != id),
        }
        if let Some(owner) = &subscriber.owner
            && let Some(ids) = self.by_owner.get_mut(owner)
        {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_owner.remove(owner);
            }
        }
        true
    }

    /// Sends `event` to every matching subscriber whose cut does not reflect it; returns the ids
    /// to drop (channel full or closed) and how many of them overflowed.
    fn dispatch(&self, event: &Event, drop: &mut Vec<(u64, bool)>) {
        let group_ids = self.by_group.get(&event.group).map(Vec::as_slice).unwrap_or(&[]);
        for id in group_ids.iter().chain(&self.scope_wide) {
            let Some(subscriber) = self.by_id.get(id) else { continue };
            if subscriber.cut.as_ref().is_some_and(|cut| cut.reflects(event)) {
                continue;
            }
            let pg_event = PgEvent { kind: event.kind, group: event.group.clone(), pids: event.pids.clone() };
            match subscriber.sender.try_send(pg_event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => drop.push((*id, true)),
                Err(mpsc::error::TrySendError::Closed(_)) => drop.push((*id, false)),
            }
        }
    }
}

/// Membership work handed to the actor by the service (sets: idempotent, bounded by the peers;
/// ordered, so the driver is fed in the same order every run).
#[derive(Default)]
struct PendingWork {
    /// Nodes that came up (or up again): send them a discover and our full state.
    connect: BTreeSet<String>,
    /// Nodes that went down: forget their peer state (their members are already removed).
    down: BTreeSet<String>,
    /// Nodes to pull a full sync from (send them a discover): we dropped one of their frames.
    pull: BTreeSet<String>,
}

enum Command {
    Monitor { target: MonitorTarget, owner: Option<Pid>, reply: oneshot::Sender<Result<Monitor, PgError>> },
}

/// State of one scope shared by its handles, the service and its actor.
pub(crate) struct ScopeShared {
    name: Arc<str>,
    node: NodeId,
    pub(crate) table: ScopeTable,
    host: Arc<dyn ProcessHost>,
    transport: Option<Transport>,
    metrics: Arc<PgMetrics>,
    config: PgConfig,
    /// The service's up members by name (see the module invariants).
    members: Arc<RwLock<HashMap<String, NodeId>>>,
    notify: Notify,
    pending: Mutex<PendingWork>,
    subscribers: Mutex<Subscribers>,
    commands: mpsc::Sender<Command>,
    inbound: mpsc::Sender<(NodeId, PgFrame)>,
    /// Incarnations of the actor started so far (restarts are this minus one).
    starts: AtomicU64,
    /// What this scope last added to the node's `cohort_pg_groups` gauge (kept across restarts).
    groups_reported: AtomicI64,
    /// Set by the test hook; the actor panics at its next turn.
    crash_requested: AtomicBool,
}

impl ScopeShared {
    /// Restarts of the scope's actor so far.
    pub(crate) fn restarts(&self) -> u64 {
        self.starts.load(Ordering::Acquire).saturating_sub(1)
    }

    /// Asks the actor to crash (test hook, see [`super::PgService::crash_scope_for_test`]).
    pub(crate) fn request_crash(&self) {
        self.crash_requested.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn unsubscribe(&self, id: u64) {
        if lock(&self.subscribers).remove(id) {
            self.metrics.monitors.dec();
        }
    }

    /// A local process exited: leave every group, drop the monitors it owned.
    pub(crate) fn process_exit(&self, pid: &Pid) {
        if !pid.is_local_to(&self.node) {
            return;
        }
        if self.table.process_exit(pid).unwrap_or(0) > 0 {
            self.notify.notify_one();
        }
        let mut subscribers = lock(&self.subscribers);
        if let Some(ids) = subscribers.by_owner.get(pid).cloned() {
            for id in ids {
                if subscribers.remove(id) {
                    self.metrics.monitors.dec();
                }
            }
        }
    }

    pub(crate) fn connect(&self, name: &str) {
        lock(&self.pending).connect.insert(name.to_owned());
        self.notify.notify_one();
    }

    pub(crate) fn down(&self, name: &str) {
        lock(&self.pending).down.insert(name.to_owned());
        self.notify.notify_one();
    }

    /// Hands a validated frame to the actor; if its queue is full the frame is dropped, counted,
    /// and a full sync is pulled from the sender instead.
    pub(crate) fn route(&self, from: NodeId, frame: PgFrame) {
        match self.inbound.try_send((from, frame)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((from, _))) => {
                self.metrics.reject(reject::SCOPE_BUSY);
                lock(&self.pending).pull.insert(from.name);
                self.notify.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Delivers `payload` once to each distinct local member of `group`.
    pub(crate) fn fan_out_local(&self, group: &str, payload: &Bytes, report: &mut BroadcastReport) {
        let members = self.table.get_local_members(group);
        let mut seen: HashSet<&Pid> = HashSet::new();
        let (mut not_hosted, mut full, mut undecodable) = (0, 0, 0);
        for pid in members.iter() {
            if members.len() > 1 && !seen.insert(pid) {
                continue;
            }
            match self.host.deliver_local(pid, payload.clone()) {
                Ok(()) => report.local_delivered += 1,
                Err(error) => {
                    match error {
                        DeliveryError::NotHosted(_) => not_hosted += 1,
                        DeliveryError::MailboxFull(_) => full += 1,
                        DeliveryError::Undecodable(_) => undecodable += 1,
                    }
                    report.refuse(BroadcastRefusal::Local { pid: pid.clone(), error });
                }
            }
        }
        self.metrics.delivery(delivery::DELIVERED, report.local_delivered as u64);
        self.metrics.delivery(delivery::NOT_HOSTED, not_hosted);
        self.metrics.delivery(delivery::MAILBOX_FULL, full);
        self.metrics.delivery(delivery::UNDECODABLE, undecodable);
    }

    fn is_up(&self, node: &NodeId, members: &HashMap<String, NodeId>) -> bool {
        members.get(&node.name) == Some(node)
    }
}

/// A handle on one pg scope of this node. Cheap to clone (an `Arc` inside), `Send + Sync`.
///
/// Writes apply at once in the caller's thread (the caller reads its own write); the scope actor
/// then tells monitors and peers, in order. Obtain it from [`super::PgService::scope`].
#[derive(Clone)]
pub struct Scope {
    pub(crate) shared: Arc<ScopeShared>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").field("name", &self.shared.name).field("node", &self.shared.node).finish()
    }
}

impl Scope {
    /// The scope's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Joins local, hosted `pids` to `group`, once per occurrence in the slice (a pid may join
    /// several times and must leave as many times). Refused with [`PgError::NotLocal`] for a pid
    /// of another node and [`PgError::NotHosted`] for a pid that is not a live local process;
    /// otherwise by a bound. Visible to this node's readers when it returns; peers and monitors
    /// hear of it shortly after, in order.
    pub fn join(&self, group: &Group, pids: &[Pid]) -> Result<(), PgError> {
        let result = self.join_hosted(group, pids);
        match &result {
            Ok(()) => self.shared.metrics.join_ok.inc(),
            Err(error) => self.shared.metrics.operation("join", Err(error.reason())),
        }
        result
    }

    fn join_hosted(&self, group: &Group, pids: &[Pid]) -> Result<(), PgError> {
        let shared = &*self.shared;
        for pid in pids {
            if !pid.is_local_to(&shared.node) {
                return Err(PgError::NotLocal { pid: pid.clone() });
            }
            if !shared.host.is_hosted(pid) {
                return Err(PgError::NotHosted { pid: pid.clone() });
            }
        }
        shared.table.join(group, pids)?;
        shared.notify.notify_one();
        // An exit racing with this join may have run its hook before the join landed: the process
        // table drops a pid before running the exit hooks, so re-checking here catches every such
        // race (either we see it gone, or its hook runs after our join and removes it).
        if let Some(gone) = pids.iter().find(|pid| !shared.host.is_hosted(pid)) {
            shared.process_exit(gone);
            return Err(PgError::NotHosted { pid: gone.clone() });
        }
        Ok(())
    }

    /// Removes one join occurrence of each of the local `pids` from `group`. All or nothing: if a
    /// pid has no occurrence left, nothing changes and [`PgError::NotJoined`] names it.
    pub fn leave(&self, group: &Group, pids: &[Pid]) -> Result<(), PgError> {
        let result = self.shared.table.leave(group, pids).map(|_| ());
        match &result {
            Ok(()) => {
                self.shared.notify.notify_one();
                self.shared.metrics.leave_ok.inc();
            }
            Err(error) => self.shared.metrics.operation("leave", Err(error.reason())),
        }
        result
    }

    /// Every member of `group` in the cluster as this node knows it, local first, one entry per
    /// join occurrence. Lock-free, O(1).
    pub fn get_members(&self, group: &str) -> Members {
        self.shared.table.get_members(group)
    }

    /// The members of `group` hosted by this node. Lock-free, O(1).
    pub fn get_local_members(&self, group: &str) -> Members {
        self.shared.table.get_local_members(group)
    }

    /// Every non-empty group of the scope.
    pub fn which_groups(&self) -> Vec<Group> {
        self.shared.table.which_groups()
    }

    /// Every group with a local member.
    pub fn which_local_groups(&self) -> Vec<Group> {
        self.shared.table.which_local_groups()
    }

    /// Subscribes to `group`: the returned [`Monitor`] holds the group's members now and then
    /// receives every later change, with no gap and no duplicate. If `owner` (a local, hosted pid)
    /// exits, the monitor is dropped. One actor round trip (it includes this caller's own earlier
    /// writes). Cancel-safe: a monitor registered for a dropped call is unsubscribed at once.
    pub async fn monitor(&self, group: &Group, owner: Option<Pid>) -> Result<Monitor, PgError> {
        self.subscribe("monitor", MonitorTarget::Group(group.clone()), owner).await
    }

    /// Subscribes to every group of the scope, like [`Scope::monitor`].
    pub async fn monitor_scope(&self, owner: Option<Pid>) -> Result<Monitor, PgError> {
        self.subscribe("monitor_scope", MonitorTarget::Scope, owner).await
    }

    async fn subscribe(&self, op: &'static str, target: MonitorTarget, owner: Option<Pid>) -> Result<Monitor, PgError> {
        let (reply, answer) = oneshot::channel();
        let result = match self.shared.commands.send(Command::Monitor { target, owner, reply }).await {
            Ok(()) => answer.await.unwrap_or(Err(PgError::ScopeStopped)),
            Err(_) => Err(PgError::ScopeStopped),
        };
        self.shared.metrics.operation(op, result.as_ref().map(|_| ()).map_err(PgError::reason));
        result
    }

    /// Unsubscribes `monitor` synchronously: no event reaches it after this returns (it is
    /// consumed). The same as dropping it.
    pub fn demonitor(&self, monitor: Monitor) {
        drop(monitor);
    }

    /// Sends `payload` (encoded for the members' message type) to every member of `group` in the
    /// cluster: each distinct local member once, and one frame per remote node with members, whose
    /// pg service delivers it once to each of its distinct local members.
    ///
    /// Unlike Erlang (`[Pid ! Msg || Pid <- pg:get_members(G)]`, where a pid joined twice receives
    /// twice), a member receives a broadcast once however many times it joined: a broadcast is a
    /// message to the group's processes, and join counting is about membership lifetime.
    pub fn broadcast(&self, group: &str, payload: Bytes) -> Result<BroadcastReport, PgError> {
        let result = self.broadcast_inner(group, payload, true);
        self.shared.metrics.operation("broadcast", result.as_ref().map(|_| ()).map_err(PgError::reason));
        result
    }

    /// Sends `payload` to each distinct local member of `group` only.
    pub fn broadcast_local(&self, group: &str, payload: Bytes) -> Result<BroadcastReport, PgError> {
        let result = self.broadcast_inner(group, payload, false);
        self.shared.metrics.operation("broadcast_local", result.as_ref().map(|_| ()).map_err(PgError::reason));
        result
    }

    fn broadcast_inner(&self, group: &str, payload: Bytes, remote: bool) -> Result<BroadcastReport, PgError> {
        let group = Group::new(group)?;
        if payload.len() > MAX_BROADCAST_BYTES {
            return Err(PgError::PayloadTooLarge { len: payload.len(), max: MAX_BROADCAST_BYTES });
        }
        let shared = &*self.shared;
        let mut report = BroadcastReport::default();
        shared.fan_out_local(group.as_str(), &payload, &mut report);
        if !remote {
            return Ok(report);
        }
        let members = shared.table.get_members(group.as_str());
        let mut nodes: Vec<&NodeId> = Vec::new();
        for pid in members.snapshot().remote_members() {
            if !nodes.contains(&&pid.node) {
                nodes.push(&pid.node);
            }
        }
        if nodes.is_empty() {
            return Ok(report);
        }
        let frame = PgFrame::new(
            &*shared.name,
            shared.node.clone(),
            PgMessage::Broadcast { group, payload: WireBytes(payload) },
        );
        let bytes = encode_frame(&frame);
        let (mut sent, mut refused) = (0, 0);
        for node in nodes {
            let outcome = match (&shared.transport, &bytes) {
                (Some(transport), Some(bytes)) => transport.send(&node.name, Class::Pg, PG_FRAME_KIND, bytes.clone()),
                _ => Err(SendError::UnknownPeer),
            };
            match outcome {
                Ok(SendOutcome::Queued | SendOutcome::QueuedDroppedOldest) => {
                    sent += 1;
                    shared.metrics.frame("broadcast", "out");
                }
                Ok(SendOutcome::DroppedNewest { .. }) => {
                    // A dropped broadcast changes no membership, so no resync is needed; clear the
                    // transport's mark (each scope resyncs on its own drops, see the actor).
                    if let Some(transport) = &shared.transport {
                        transport.take_resync(&node.name);
                    }
                    refused += 1;
                    let error = SendError::QueueSaturated { class: Class::Pg };
                    shared.metrics.remote_refused(&error);
                    report.refuse(BroadcastRefusal::Remote { node: node.clone(), error });
                }
                Err(error) => {
                    refused += 1;
                    shared.metrics.remote_refused(&error);
                    report.refuse(BroadcastRefusal::Remote { node: node.clone(), error });
                }
            }
        }
        report.remote_nodes = sent;
        shared.metrics.delivery(delivery::REMOTE_SENT, sent as u64);
        shared.metrics.delivery(delivery::REMOTE_REFUSED, refused);
        Ok(report)
    }
}

/// Creates a scope: its shared state and the [`ScopeRunner`] that runs its actor (not started:
/// the service runs it under a supervisor).
pub(crate) fn new_scope(
    name: &str,
    host: Arc<dyn ProcessHost>,
    transport: Option<Transport>,
    metrics: Arc<PgMetrics>,
    config: PgConfig,
    members: Arc<RwLock<HashMap<String, NodeId>>>,
) -> (Scope, ScopeRunner) {
    let node = host.node().clone();
    let (commands, command_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (inbound, inbound_rx) = mpsc::channel(config.scope_inbound_capacity.max(1));
    let shared = Arc::new(ScopeShared {
        name: Arc::from(name),
        table: ScopeTable::with_limits(node.clone(), config.limits),
        node,
        host,
        transport,
        metrics,
        config,
        members,
        notify: Notify::new(),
        pending: Mutex::new(PendingWork::default()),
        subscribers: Mutex::new(Subscribers::default()),
        commands,
        inbound,
        starts: AtomicU64::new(0),
        groups_reported: AtomicI64::new(0),
        crash_requested: AtomicBool::new(false),
    });
    let mailbox = Mailbox { commands: command_rx, inbound: inbound_rx };
    let runner = ScopeRunner { shared: Arc::clone(&shared), mailbox: Arc::new(AsyncMutex::new(mailbox)) };
    (Scope { shared }, runner)
}

/// A random u64 from std's per-process random hash keys (no `rand` dependency needed for picking
/// an anti-entropy starting point).
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// The receiving ends of the scope's queues. They outlive any one incarnation of the actor (an
/// incarnation holds them locked while it runs; a panic unlocks them as it unwinds), so nothing
/// queued for the scope is lost when its actor crashes, and callers never see a closed channel
/// while the scope is supervised.
struct Mailbox {
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Receiver<(NodeId, PgFrame)>,
}

/// Runs incarnations of one scope's actor: the factory of the scope's supervised child. What
/// must survive a crash is here (the shared state: table, monitors, pending membership work; and
/// the mailbox); each [`ScopeRunner::run`] builds a fresh actor around it and re-synchronises
/// (see the module docs, "Restarts").
#[derive(Clone)]
pub(crate) struct ScopeRunner {
    shared: Arc<ScopeShared>,
    mailbox: Arc<AsyncMutex<Mailbox>>,
}

impl ScopeRunner {
    /// One incarnation of the actor, until `stop` fires.
    pub(crate) async fn run(self, stop: StopSignal) -> Result<(), ChildError> {
        // Free at once: the supervisor starts an incarnation only after the previous one ended.
        let mut mailbox = self.mailbox.lock_owned().await;
        let start = self.shared.starts.fetch_add(1, Ordering::AcqRel);
        let peers = Peers::new(
            &self.shared.name,
            self.shared.node.clone(),
            PeersConfig::from_pg(&self.shared.config),
            now(),
            random_u64(),
        );
        let mut actor = ScopeActor { shared: self.shared, peers };
        if start > 0 {
            actor.restarted();
        }
        actor.run(&mut mailbox, &stop).await;
        Ok(())
    }
}

/// The clock the shell feeds the driver: tokio's, so a paused test clock drives it too.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The scope actor (one incarnation): the shell around its [`Peers`] driver (see the module docs).
struct ScopeActor {
    shared: Arc<ScopeShared>,
    /// Every peer protocol decision and its state; per incarnation.
    peers: Peers,
}

impl ScopeActor {
    async fn run(&mut self, mailbox: &mut Mailbox, stop: &StopSignal) {
        loop {
            if self.shared.crash_requested.swap(false, Ordering::AcqRel) {
                self.crash_for_test(mailbox);
            }
            self.take_pending_work();
            self.flush();
            let wake_at = self.peers.poll_timeout().map(Instant::from_std);
            let timer_due = async move {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let shared = Arc::clone(&self.shared);
            tokio::select! {
                biased;
                () = stop.wait() => break,
                command = mailbox.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                frame = mailbox.inbound.recv() => match frame {
                    Some((from, frame)) => self.handle_frame(from, frame),
                    None => break,
                },
                () = shared.notify.notified() => {}
                () = timer_due => {
                    self.peers.handle_timeout(now(), &self.shared.table);
                    self.perform();
                }
            }
        }
        // Close every monitor: their receivers see the end of the stream.
        self.close_monitors();
    }

    /// Drops every monitor (their receivers see the end of the stream).
    fn close_monitors(&self) {
        let mut subscribers = lock(&self.shared.subscribers);
        let ids: Vec<u64> = subscribers.by_id.keys().copied().collect();
        for id in ids {
            if subscribers.remove(id) {
                self.shared.metrics.monitors.dec();
            }
        }
    }

    /// The start of an incarnation after a crash (see the module docs, "Restarts"): the monitors
    /// of the crashed incarnation are closed (they may have missed events it had drained), and
    /// every up member is sent a discover and our full state, as on `member_up`, so both sides
    /// converge again whatever the crashed incarnation had taken and not delivered.
    fn restarted(&mut self) {
        let monitors = lock(&self.shared.subscribers).by_id.len();
        self.close_monitors();
        let mut up: Vec<NodeId> = {
            let members = self.shared.members.read().unwrap_or_else(PoisonError::into_inner);
            members.values().cloned().collect()
        };
        up.sort_by(|a, b| a.name.cmp(&b.name));
        tracing::warn!(
            scope = %self.shared.name,
            restart = self.shared.starts.load(Ordering::Relaxed).saturating_sub(1),
            peers = up.len(),
            monitors_closed = monitors,
            "pg scope actor restarted; re-synchronising with every peer"
        );
        for node in up {
            self.peers.handle_peer_up(now(), &self.shared.table, &node, SyncReason::Restart);
            // One peer's sync at a time, as before the driver: its chunks go to the transport
            // before the next peer's state is copied.
            self.perform();
        }
    }

    /// Test hook ([`super::PgService::crash_scope_for_test`]): the worst crash there is. Everything
    /// this incarnation could have taken and not yet delivered is lost (the queued inbound frames
    /// and the undrained events; their metrics are counted as a drain would), then it panics.
    fn crash_for_test(&mut self, mailbox: &mut Mailbox) -> ! {
        while mailbox.inbound.try_recv().is_ok() {}
        let events = self.shared.table.drain_events(usize::MAX);
        self.count_events(&events);
        panic!("pg scope {} crashed on request (test hook)", self.shared.name);
    }

    // ---- the shell: performing the driver's outputs ----

    /// Queues the driver's transmits on the transport (reporting each refusal back to the driver
    /// before the next is polled), then counts and performs its events.
    fn perform(&mut self) {
        while let Some(transmit) = self.peers.poll_transmit() {
            let Some(transport) = &self.shared.transport else {
                self.peers.handle_send_failure(now(), SendFailure::NotSent);
                continue;
            };
            match transport.send(&transmit.peer, Class::Pg, PG_FRAME_KIND, transmit.bytes) {
                Ok(SendOutcome::Queued | SendOutcome::QueuedDroppedOldest) => {
                    self.shared.metrics.frame(transmit.message, "out");
                    if let Some(reason) = transmit.completes_sync {
                        self.shared.metrics.syncs.with_label_values(&[reason.label()]).inc();
                    }
                }
                Ok(SendOutcome::DroppedNewest { .. }) => {
                    // Each scope resyncs on its own drops: clear the transport's mark.
                    transport.take_resync(&transmit.peer);
                    self.peers.handle_send_failure(now(), SendFailure::Overflowed);
                }
                Err(error) => {
                    tracing::debug!(scope = %self.shared.name, peer = %transmit.peer, %error, "pg frame not sent");
                    self.peers.handle_send_failure(now(), SendFailure::NotSent);
                }
            }
        }
        while let Some(event) = self.peers.poll_event() {
            self.perform_event(event);
        }
    }

    fn perform_event(&self, event: PeersEvent) {
        let shared = &*self.shared;
        match event {
            PeersEvent::Broadcast { group, payload } => {
                let mut report = BroadcastReport::default();
                shared.fan_out_local(group.as_str(), &payload, &mut report);
            }
            PeersEvent::Accepted { message } => shared.metrics.frame(message, "in"),
            PeersEvent::Refused { peer, error } => {
                shared.metrics.reject(reject::REFUSED);
                tracing::debug!(scope = %shared.name, %peer, %error, "pg frame refused");
            }
            PeersEvent::SyncChunkRefused { peer, error } => {
                shared.metrics.reject(reject::SYNC_CHUNK);
                tracing::debug!(scope = %shared.name, %peer, %error, "pg sync chunk dropped");
            }
            PeersEvent::SyncPartlyRefused { peer, groups_refused } => {
                tracing::debug!(scope = %shared.name, %peer, refused = groups_refused, "pg sync partly refused by bounds");
            }
            PeersEvent::DigestChecked { peer, check, held, theirs } => {
                shared.metrics.digest_check(check.label());
                if check == DigestCheck::Pull {
                    tracing::debug!(scope = %shared.name, %peer, ?held, ?theirs, "pg digest mismatch; pulling the peer's state");
                }
            }
            PeersEvent::DiscoverRetried { peer, retries } => {
                tracing::debug!(scope = %shared.name, %peer, retries, "pg discover unanswered; sent again");
            }
        }
    }

    // ---- membership work ----

    fn take_pending_work(&mut self) {
        let work = std::mem::take(&mut *lock(&self.shared.pending));
        for name in &work.down {
            self.peers.handle_peer_down(now(), name);
        }
        if !work.connect.is_empty() {
            let up: Vec<NodeId> = {
                let members = self.shared.members.read().unwrap_or_else(PoisonError::into_inner);
                work.connect.iter().filter_map(|name| members.get(name).cloned()).collect()
            };
            for node in up {
                self.peers.handle_peer_up(now(), &self.shared.table, &node, SyncReason::Connect);
                self.perform();
            }
        }
        for name in &work.pull {
            self.peers.handle_frame_lost(now(), name);
        }
        self.perform();
    }

    // ---- the outbox ----

    /// Drains the outbox to monitors and peers. Returns whether it was drained empty (then every
    /// snapshot cut has served its purpose and is dropped).
    fn flush(&mut self) -> bool {
        for _ in 0..MAX_DRAINS_PER_FLUSH {
            let events = self.shared.table.drain_events(MAX_OPS_PER_BATCH_FRAME);
            let complete = events.len() < MAX_OPS_PER_BATCH_FRAME;
            // First, before anything that could fail: a crash after a drain loses the events'
            // deliveries (repaired by the restart's re-synchronisation), never their accounting.
            self.count_events(&events);
            self.dispatch(events.iter());
            if complete {
                self.clear_monitor_cuts();
            }
            if !events.is_empty() || complete {
                self.peers.handle_drained(now(), events, complete);
                self.perform();
            }
            if complete {
                self.report_groups();
                return true;
            }
        }
        // More waits: serve other inputs first, then come back.
        self.shared.notify.notify_one();
        self.report_groups();
        false
    }

    fn clear_monitor_cuts(&mut self) {
        let mut subscribers = lock(&self.shared.subscribers);
        for subscriber in subscribers.by_id.values_mut() {
            subscriber.cut = None;
        }
    }

    fn report_groups(&mut self) {
        let groups = self.shared.table.group_count() as i64;
        let reported = self.shared.groups_reported.swap(groups, Ordering::AcqRel);
        self.shared.metrics.groups.add(groups - reported);
    }

    fn count_events(&self, events: &[Event]) {
        let metrics = &self.shared.metrics;
        for event in events {
            let n = event.pids.len() as i64;
            match event.kind {
                EventKind::Join => {
                    metrics.events_join.inc();
                    metrics.memberships.add(n);
                }
                EventKind::Leave => {
                    metrics.events_leave.inc();
                    metrics.memberships.sub(n);
                }
            }
        }
    }

    fn dispatch<'e>(&self, events: impl Iterator<Item = &'e Event>) {
        let mut subscribers = lock(&self.shared.subscribers);
        if subscribers.by_id.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        for event in events {
            subscribers.dispatch(event, &mut dropped);
        }
        for (id, overflowed) in dropped {
            if subscribers.remove(id) {
                self.shared.metrics.monitors.dec();
                if overflowed {
                    self.shared.metrics.monitor_overflow.inc();
                }
            }
        }
    }

    // ---- inbound ----

    fn handle_frame(&mut self, from: NodeId, frame: PgFrame) {
        let members = Arc::clone(&self.shared.members);
        {
            // Held while applying: `member_down` takes it for writing, so a node that went down
            // can never be re-added by one of its late frames.
            let up = members.read().unwrap_or_else(PoisonError::into_inner);
            if !self.shared.is_up(&from, &up) {
                self.shared.metrics.reject(reject::PEER_NOT_UP);
                return;
            }
            self.peers.handle_message(now(), &self.shared.table, &from, frame.message);
        }
        self.perform();
    }
    // ---- monitors ----

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Monitor { target, owner, reply } => {
                let result = self.register(target, owner);
                // If the caller went away, dropping the monitor here unsubscribes it.
                let _ = reply.send(result);
            }
        }
    }

    fn register(&mut self, target: MonitorTarget, owner: Option<Pid>) -> Result<Monitor, PgError> {
        let shared = Arc::clone(&self.shared);
        if let Some(owner) = &owner {
            if !owner.is_local_to(&shared.node) {
                return Err(PgError::NotLocal { pid: owner.clone() });
            }
            if !shared.host.is_hosted(owner) {
                return Err(PgError::NotHosted { pid: owner.clone() });
            }
        }
        let max = shared.config.max_monitors_per_scope;
        if lock(&shared.subscribers).by_id.len() >= max {
            return Err(PgError::TooManyMonitors { max });
        }
        // Dispatch everything already produced to the existing subscribers first, so the snapshot
        // below is as fresh as possible (it includes the caller's own earlier writes).
        self.flush();
        let (snapshot, cut) = match &target {
            MonitorTarget::Group(group) => {
                let snapshot = shared.table.monitor_snapshot(group.as_str());
                let cut = SnapshotCut { floor: snapshot.version(), versions: HashMap::new() };
                (vec![(group.clone(), snapshot)], cut)
            }
            MonitorTarget::Scope => {
                let (floor, groups) = shared.table.monitor_scope_snapshot();
                let versions = groups.iter().map(|(g, s)| (g.clone(), s.version())).collect();
                (groups, SnapshotCut { floor, versions })
            }
        };
        // Exact snapshots: everything drained so far (the ring's window included) is reflected, so
        // there is nothing to replay; undrained events are filtered by the cut as they come.
        debug_assert!(
            self.peers.replay_ring().all(|e| !target.matches(&e.group) || cut.reflects(e)),
            "a monitor snapshot missed an event drained before it was read"
        );
        // Groups read empty (being created, or just emptied) only contribute their cut.
        let snapshot: Vec<(Group, Arc<GroupSnapshot>)> = snapshot.into_iter().filter(|(_, s)| !s.is_empty()).collect();
        let (sender, events) = mpsc::channel(shared.config.monitor_capacity.max(1));
        let id = lock(&shared.subscribers).insert(Subscriber {
            target: target.clone(),
            sender,
            owner: owner.clone(),
            cut: Some(cut),
        });
        shared.metrics.monitors.inc();
        let monitor = Monitor { id, target, snapshot, events, shared: Arc::clone(&shared) };
        if let Some(owner) = &owner
            && !shared.host.is_hosted(owner)
        {
            // The owner exited while we registered; its exit hook may have run before the insert.
            return Err(PgError::NotHosted { pid: owner.clone() });
        }
        Ok(monitor)
    }
}

/// The refusal label of a wire error.
pub(crate) fn wire_reject_reason(error: &WireError) -> &'static str {
    match error {
        WireError::UnsupportedVersion { .. } => reject::VERSION,
        _ => reject::INVALID,
    }
}
