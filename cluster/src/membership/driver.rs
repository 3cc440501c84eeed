//! SWIM membership without I/O: [`MembershipDriver`] decides everything the membership actor does
//! with foca (what to send to whom, which timer fires when, what subscribers are told, what the
//! view shows) and performs none of it. STYLE section 7, in the shape of quinn-proto's
//! `Connection`; the actor (`super::actor`) is the shell that owns the socket, the clock, the
//! seed resolver and the channels, and a simulator can run many drivers in one thread on a
//! virtual clock.
//!
//! Role: the driver owns the `foca::Foca` value (with its RNG, seeded from the constructor's
//! `seed`), foca's timer queue, the join schedule (`Discover` envelopes to the seeds and announces
//! to the members held down while this node has no live peer), the local-health factor with its
//! suspicion stretching (`set_config` with hysteresis, deferral of already-armed suspicion
//! timers), the stuck-suspicion guard, the graceful leave with its re-gossip rounds, and the
//! event tracker that turns foca's notifications into [`MembershipEvent`]s.
//!
//! Inputs, each with the caller's `now` (the driver never reads a clock):
//! - [`MembershipDriver::handle_datagram`]: an envelope (the gossip wire format of
//!   [`crate::net::gossip`], version, kind, sender name, body; authentication is the shell's and
//!   already removed) received from an address;
//! - [`MembershipDriver::handle_timeout`], once [`MembershipDriver::poll_timeout`] has passed: due
//!   foca timers, the health tick, a join attempt, a leave round, all in one call;
//! - [`MembershipDriver::handle_broadcast`]: a custom gossip item of this node (a registry delta);
//! - [`MembershipDriver::handle_seeds`]: the seed addresses as currently resolved;
//! - [`MembershipDriver::handle_leave`]: leave gracefully.
//!
//! Outputs, polled after every input: [`MembershipDriver::poll_transmit`] (envelopes to send,
//! [`Transmit`]), [`MembershipDriver::poll_event`] (`Up`/`Down`/`Left` in foca's order),
//! [`MembershipDriver::poll_view`] (the member view when it changed; [`MembershipDriver::members`]
//! builds it on demand), [`MembershipDriver::poll_timeout`] (when to call `handle_timeout`), and
//! [`MembershipDriver::stats`] (what a bound refused, for the shell's metrics).
//!
//! ```text
//!  handle_datagram ── Foca ──────► foca.handle_data ──┐
//!                  ── Discover ──► Transmit DiscoverReply (our identity)
//!                  ── DiscoverReply ► foca.announce ───┤
//!  handle_timeout ── health tick ► restretch, stuck suspicions ─┤
//!                 ── due timers ─► deferred? : foca.handle_timer┼─► drain: Transmit (Foca), timers,
//!                 ── join due ───► Transmit Discover to seeds,  │           notifications ─► events
//!                                  foca.announce to down ───────┤
//!                 ── leave round ► foca.gossip ─────────────────┘
//! ```
//!
//! Invariants:
//! - No I/O, no clock, no threads, no channels; randomness only from the seeded `StdRng` foca
//!   owns. Every collection walked to make a decision is ordered (the timer queue by due instant
//!   then arming order, the stuck suspicions and the event tracker by `BTreeMap`, foca's own
//!   member list shuffled by the seeded RNG): the same seed and the same inputs at the same
//!   instants give the same outputs in the same order. foca 2.0 itself holds no hashed collection
//!   (its members are a `Vec`, its broadcast backlog a `BinaryHeap`).
//! - Every timer foca arms is delivered unless the timer queue's bound ([`MAX_PENDING_TIMERS`])
//!   refuses it (counted). After a leave only the re-gossip rounds run: the node is going away and
//!   foca is defunct, as the actor always did.
//! - The outputs are bounded ([`MAX_PENDING_TRANSMITS`], [`MAX_PENDING_EVENTS`]); the shell drains
//!   them after every input, so a bound is reached only by a shell that stopped polling, and what
//!   it refuses is counted in [`DriverStats`].
//! - Nothing a peer sends panics the driver: envelopes are decoded with their lengths checked, foca
//!   refuses bad packets with an error (counted as `rejected`).

use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, Incarnation, Member, OwnedNotification, PostcardCodec, State, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::channels::{
    self, BroadcastError, BroadcastMetrics, ChannelTable, Channels, GossipChannel, ITEM_HEADER_BYTES,
    MAX_BROADCAST_BACKLOG,
};
use super::events::EventTracker;
use super::health::{self, HEALTH_TICK, LocalHealth, MAX_HEALTH_FACTOR};
use super::identity::GossipIdentity;
use super::refusals::{Refusals, Verdict};
use super::suspicion::StuckSuspicions;
use super::timers::{Armed, TimerQueue};
use super::{MAX_ADDRS_PER_SEED, MAX_SEEDS, MembershipConfig, MembershipError, validate_local};
use crate::net::gossip::{Envelope, EnvelopeKind, MAX_ENVELOPE_OVERHEAD, decode_envelope, encode_envelope};
use crate::{MemberInfo, MemberState, MemberView, MembershipEvent, NodeId};

/// The foca instance the driver owns.
pub(super) type FocaInstance = Foca<GossipIdentity, PostcardCodec, StdRng, Channels>;

/// The most timers armed at once (see `super::timers` for why this is never reached).
pub const MAX_PENDING_TIMERS: usize = 65_536;

/// The most envelopes waiting for [`MembershipDriver::poll_transmit`].
///
/// Why: one input makes a few datagrams per due timer, per seed and per gossip fan-out, and the
/// shell drains after every input; 8192 datagrams of at most 1400 bytes (11 MiB) is reached only
/// by a shell that stopped polling. Beyond it an envelope is dropped and counted
/// ([`DriverStats::transmits_dropped`]); SWIM tolerates it like any lost datagram.
pub const MAX_PENDING_TRANSMITS: usize = 8192;

/// The most events waiting for [`MembershipDriver::poll_event`].
///
/// Why: an input reports at most two events per member (a superseded run's `Down` and its
/// successor's `Up`) and members are bounded by `max_members` (4096 by default); the shell drains
/// after every input. Beyond it an event is dropped and counted ([`DriverStats::events_dropped`]);
/// subscribers then resynchronise from the view, as after any lag.
pub const MAX_PENDING_EVENTS: usize = 16_384;

/// The most seed addresses kept (every seed resolved to its most addresses).
pub const MAX_SEED_ADDRS: usize = MAX_SEEDS * MAX_ADDRS_PER_SEED;

/// The most down members an isolated node announces to per join attempt.
///
/// Why: enough to find the rest of a partitioned cluster in a few attempts, small enough that a
/// node that has seen many departures does not flood dead addresses.
const MAX_DOWN_ANNOUNCES: usize = 4;

/// How many times a leaving node re-gossips its departure.
const LEAVE_REGOSSIP_ROUNDS: u32 = 3;

/// The pause between those rounds: 3 x 100 ms bounds the linger of a leave to 0.3 s.
const LEAVE_REGOSSIP_INTERVAL: Duration = Duration::from_millis(100);

/// A change of at least this fraction of the base suspicion timeout is pushed into foca's config
/// (hysteresis: no `set_config` on every tick of a slowly decaying factor).
const RESTRETCH_FRACTION: f64 = 0.1;

/// How much longer than the longest stretched suspicion a suspicion may last before this node
/// declares the member down itself (see `super::suspicion`).
const STUCK_SUSPICION_MARGIN: Duration = Duration::from_secs(2);

/// The settings a driver runs with, derived from a validated [`MembershipConfig`].
///
/// `DriverSettings::default()` is what a node with the default config runs.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    foca: foca::Config,
    /// foca's packet budget: the datagram budget minus the largest envelope overhead.
    max_packet: usize,
    join_retry_period: Duration,
    base_suspicion: Duration,
    max_members: usize,
}

impl DriverSettings {
    /// The settings of `config` (validated; its seeds are the shell's, see
    /// [`MembershipDriver::handle_seeds`]).
    pub fn from_config(config: &MembershipConfig) -> Result<Self, MembershipError> {
        config.validate()?;
        let max_packet = config.max_datagram_bytes - MAX_ENVELOPE_OVERHEAD;
        Ok(Self {
            foca: config.foca_config(max_packet)?,
            max_packet,
            join_retry_period: config.join_retry_period,
            base_suspicion: config.suspect_to_down_after,
            max_members: config.max_members,
        })
    }

    /// The largest custom broadcast payload: an item (with foca's 2-byte length prefix) takes at
    /// most a quarter of a packet, so it fits beside the header's two identities and some member
    /// updates.
    pub fn max_broadcast_payload(&self) -> usize {
        (self.max_packet / 4).saturating_sub(ITEM_HEADER_BYTES + 2)
    }

    /// foca's packet budget in bytes.
    pub(super) fn max_packet(&self) -> usize {
        self.max_packet
    }
}

impl Default for DriverSettings {
    fn default() -> Self {
        Self::from_config(&MembershipConfig::default()).expect("the default membership config is valid")
    }
}

/// An envelope to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The destination address.
    pub to: SocketAddr,
    /// The destination's node name, or `None` for a `Discover` to a seed address whose node is
    /// not known yet (the shell's fault rules match on names).
    pub to_name: Option<String>,
    /// The envelope (version, kind, this node's name, body), not yet authenticated: the shell
    /// seals it with the cluster key; a simulator delivers it as is to
    /// [`MembershipDriver::handle_datagram`].
    pub payload: Vec<u8>,
}

/// What the driver counted since it was created: each a monotonic counter, published by the
/// shell as differences (the `reason` of `cohort_gossip_dropped_total` in brackets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// foca packets foca refused (`rejected`).
    pub rejected: u64,
    /// Envelopes or discover replies that did not decode (`malformed`).
    pub malformed: u64,
    /// Timers refused by the timer queue's bound (`timer_overflow`).
    pub timer_overflow: u64,
    /// `Up`s refused by the event tracker's bound (`members_overflow`).
    pub members_overflow: u64,
    /// Envelopes refused by [`MAX_PENDING_TRANSMITS`] (`send_failed`).
    pub transmits_dropped: u64,
    /// Events refused by [`MAX_PENDING_EVENTS`] (`members_overflow`).
    pub events_dropped: u64,
    /// Members this node declared down because their suspicion outlived every timeout
    /// (`cohort_membership_stuck_suspicions_total`).
    pub stuck_suspicions: u64,
    /// Members suspected because their internode port refused a connection
    /// (`cohort_membership_refused_connections_total{action="suspect"}`).
    pub refused_suspicions: u64,
    /// Members declared down on that evidence after the confirmation window (`action="down"`).
    pub refused_downs: u64,
    /// Refusals not tracked: the table was full (`action="untracked"`).
    pub refusals_untracked: u64,
}

/// Where a leave stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// A member.
    Member,
    /// Left; `rounds` re-gossip rounds done, the next at `next_round`.
    Lingering { rounds: u32, next_round: Instant },
    /// Every round done: nothing more to do.
    Done,
}

/// One node's SWIM membership, without I/O (see the module docs).
///
/// Two drivers on a virtual clock, every datagram delivered at once:
///
/// ```
/// use std::time::{Duration, Instant};
/// use cohort_cluster::membership::{DriverSettings, MembershipDriver};
/// use cohort_cluster::{MemberAddrs, MemberInfo, MemberState, NodeId};
///
/// let info = |i: u8| {
///     let gossip = format!("10.0.0.{i}:7946").parse().unwrap();
///     let addrs = MemberAddrs { gossip, internode: gossip, http: gossip };
///     MemberInfo { id: NodeId::new(format!("n{i}"), 1), addrs, raft_eligible: true, failure_domain: String::new() }
/// };
/// let t0 = Instant::now();
/// let mut nodes = [
///     MembershipDriver::new(info(1), DriverSettings::default(), 1, t0).unwrap(),
///     MembershipDriver::new(info(2), DriverSettings::default(), 2, t0).unwrap(),
/// ];
/// let addrs = [nodes[0].local().addrs.gossip, nodes[1].local().addrs.gossip];
/// nodes[1].handle_seeds(t0, [addrs[0]]);
/// let mut now = t0;
/// while now < t0 + Duration::from_secs(2) {
///     for node in &mut nodes {
///         if node.poll_timeout().is_some_and(|due| due <= now) {
///             node.handle_timeout(now);
///         }
///     }
///     loop {
///         let mut sent = Vec::new();
///         for (from, node) in nodes.iter_mut().enumerate() {
///             while let Some(transmit) = node.poll_transmit() {
///                 sent.push((from, transmit));
///             }
///         }
///         if sent.is_empty() {
///             break;
///         }
///         for (from, transmit) in sent {
///             let to = addrs.iter().position(|addr| *addr == transmit.to).unwrap();
///             nodes[to].handle_datagram(now, addrs[from], &transmit.payload);
///         }
///     }
///     now += Duration::from_millis(10);
/// }
/// let view = nodes[0].members();
/// assert_eq!(view.len(), 2);
/// assert!(view.iter().all(|row| row.state == MemberState::Alive));
/// ```
pub struct MembershipDriver {
    foca: FocaInstance,
    runtime: AccumulatingRuntime<GossipIdentity>,
    channels: Arc<ChannelTable>,
    timers: TimerQueue<Timer<GossipIdentity>>,
    health: LocalHealth,
    /// The factor foca's config currently carries.
    applied_factor: f64,
    tracker: EventTracker,
    /// Keyed by (node id, renew, leaving): an identity's ordered parts.
    suspicions: StuckSuspicions<(NodeId, u32, bool)>,
    /// Refused connections reported by the transport, same keys.
    refusals: Refusals<(NodeId, u32, bool)>,
    settings: DriverSettings,
    local_name: String,
    local_addr: SocketAddr,
    seeds: Vec<SocketAddr>,
    leave: Leave,
    next_health_tick: Instant,
    next_join_attempt: Instant,
    /// Set by foca's `Rejoin` (it renewed our identity after being told we are down, and is
    /// disconnected until a member answers), cleared by `Active`. See `try_join`.
    rejoining: bool,
    view_fingerprint: Option<u64>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MembershipEvent>,
    stats: DriverStats,
}

impl std::fmt::Debug for MembershipDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipDriver").field("local", &self.foca.identity().info.id).finish_non_exhaustive()
    }
}

impl MembershipDriver {
    /// A driver for `local` (its `addrs.gossip` is where peers reach it), with foca's RNG seeded
    /// from `seed`, at `now`. No seeds yet ([`MembershipDriver::handle_seeds`]); custom broadcast
    /// items are dispatched to the channels registered with
    /// [`MembershipDriver::register_channel`] (their counters live in a private registry).
    pub fn new(local: MemberInfo, settings: DriverSettings, seed: u64, now: Instant) -> Result<Self, MembershipError> {
        let metrics = BroadcastMetrics::register(&prometheus::Registry::new())?;
        Self::with_channels(local, settings, seed, now, Arc::new(ChannelTable::new(metrics)))
    }

    /// [`MembershipDriver::new`] with the node's channel table (shared with the handle, which
    /// registers channels and counts into the node's registry).
    pub(super) fn with_channels(
        local: MemberInfo,
        settings: DriverSettings,
        seed: u64,
        now: Instant,
        channels: Arc<ChannelTable>,
    ) -> Result<Self, MembershipError> {
        let identity = GossipIdentity::new(local);
        validate_local(&identity, settings.max_packet)?;
        let local_name = identity.name().to_owned();
        let local_addr = identity.info.addrs.gossip;
        let foca = Foca::with_custom_broadcast(
            identity,
            settings.foca.clone(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
            Channels(channels.clone()),
        );
        Ok(Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            channels,
            timers: TimerQueue::new(MAX_PENDING_TIMERS),
            health: LocalHealth::default(),
            applied_factor: 1.0,
            tracker: EventTracker::new(settings.max_members),
            suspicions: StuckSuspicions::new(
                settings.base_suspicion.mul_f64(MAX_HEALTH_FACTOR) + STUCK_SUSPICION_MARGIN,
            ),
            refusals: Refusals::default(),
            settings,
            local_name,
            local_addr,
            seeds: Vec::new(),
            leave: Leave::Member,
            next_health_tick: now + HEALTH_TICK,
            next_join_attempt: now,
            rejoining: false,
            view_fingerprint: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: DriverStats::default(),
        })
    }

    /// Registers the receiver of custom gossip broadcasts on `channel`.
    pub fn register_channel(&self, channel: u8, handler: Arc<dyn GossipChannel>) -> Result<(), BroadcastError> {
        self.channels.register(channel, handler)
    }

    /// The seed addresses to discover while this node has no live peer, in the order to try them
    /// (replaces the previous list; this node's own gossip address is skipped; at most
    /// [`MAX_SEED_ADDRS`] are kept). Read at the next join attempt.
    pub fn handle_seeds(&mut self, _now: Instant, seeds: impl IntoIterator<Item = SocketAddr>) {
        let local = self.local_addr;
        self.seeds = seeds.into_iter().filter(|seed| *seed != local).take(MAX_SEED_ADDRS).collect();
    }

    /// An envelope received from `from` (authentication already checked by the shell). Whatever
    /// its bytes, it is decoded with its lengths checked; a malformed one is counted.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        match decode_envelope(payload) {
            Ok(envelope) => self.handle_envelope(now, from, envelope),
            Err(error) => {
                tracing::debug!(%from, %error, "malformed gossip envelope");
                self.stats.malformed += 1;
            }
        }
    }

    /// A decoded envelope from `from` (the shell decodes first to apply its fault rules by sender).
    pub(super) fn handle_envelope(&mut self, now: Instant, from: SocketAddr, envelope: Envelope<'_>) {
        match envelope.kind {
            EnvelopeKind::Foca => {
                let backlog = self.foca.custom_broadcast_backlog();
                if let Err(error) = self.foca.handle_data(envelope.body, &mut self.runtime) {
                    tracing::debug!(sender = %envelope.sender, %error, "foca refused a packet");
                    self.stats.rejected += 1;
                }
                // New custom items arrived: push them on at once (epidemic push) rather than at
                // the next gossip round, so a registry delta crosses a cluster in a few hops.
                if self.foca.custom_broadcast_backlog() > backlog
                    && let Err(error) = self.foca.broadcast(&mut self.runtime)
                {
                    tracing::debug!(%error, "foca could not send broadcasts");
                }
                self.drain(now);
            }
            EnvelopeKind::Discover => {
                if self.is_leaving() || envelope.sender == self.local_name {
                    return;
                }
                match postcard::to_allocvec(self.foca.identity()) {
                    Ok(body) => self.send(Some(envelope.sender), from, EnvelopeKind::DiscoverReply, &body),
                    Err(error) => tracing::debug!(%error, "could not encode our identity"),
                }
            }
            EnvelopeKind::DiscoverReply => match postcard::from_bytes::<GossipIdentity>(envelope.body) {
                Ok(seed) if seed.name() == envelope.sender && seed.name() != self.local_name => {
                    if self.is_leaving() {
                        return;
                    }
                    if let Err(error) = self.foca.announce(seed, &mut self.runtime) {
                        tracing::debug!(%error, "could not announce to a seed");
                    }
                    self.drain(now);
                }
                Ok(_) | Err(_) => self.stats.malformed += 1,
            },
        }
        self.after_input();
    }

    /// A custom gossip item of this node on `channel`: `(channel, id)` names what it is about and
    /// a larger `version` replaces an older item still waiting. It joins foca's backlog (piggybacked
    /// on later messages) and goes to a few random members at once.
    pub fn handle_broadcast(
        &mut self,
        now: Instant,
        channel: u8,
        id: u64,
        version: u64,
        payload: &[u8],
    ) -> Result<(), BroadcastError> {
        if usize::from(channel) >= channels::MAX_CHANNELS {
            return Err(BroadcastError::NoSuchChannel(channel));
        }
        let max = self.settings.max_broadcast_payload();
        if payload.is_empty() || payload.len() > max {
            self.channels.metrics.count("too_large");
            return Err(BroadcastError::TooLarge { len: payload.len(), max });
        }
        self.handle_broadcast_items(now, [channels::encode_item(channel, id, version, payload)]);
        Ok(())
    }

    /// Encoded items (a batch the shell took from its queue): each joins foca's backlog unless it
    /// is full (counted, left to the channel's anti-entropy), then one push to a few members.
    /// Ignored while leaving.
    pub(super) fn handle_broadcast_items(&mut self, now: Instant, items: impl IntoIterator<Item = Vec<u8>>) {
        if self.is_leaving() {
            return;
        }
        for item in items {
            if self.foca.custom_broadcast_backlog() >= MAX_BROADCAST_BACKLOG {
                self.channels.metrics.count("backlog_full");
            } else if let Err(error) = self.foca.add_broadcast(&item) {
                tracing::debug!(%error, "foca refused a broadcast item");
                self.channels.metrics.count("too_large");
            } else {
                self.channels.metrics.count("queued");
            }
        }
        if let Err(error) = self.foca.broadcast(&mut self.runtime) {
            tracing::debug!(%error, "foca could not send broadcasts");
        }
        self.drain(now);
        self.after_input();
    }

    /// Everything due by `now`: the health tick (stretching, stuck suspicions), foca's timers, a
    /// join attempt; while leaving, only the re-gossip rounds.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.leave {
            Leave::Member => {}
            Leave::Lingering { rounds, next_round } => {
                if now >= next_round {
                    let rounds = rounds + 1;
                    self.leave = if rounds >= LEAVE_REGOSSIP_ROUNDS {
                        tracing::info!("membership: left the cluster");
                        Leave::Done
                    } else {
                        Leave::Lingering { rounds, next_round: now + LEAVE_REGOSSIP_INTERVAL }
                    };
                    if let Err(error) = self.foca.gossip(&mut self.runtime) {
                        tracing::debug!(%error, "could not re-gossip the leave");
                    }
                    self.drain(now);
                }
                self.after_input();
                return;
            }
            Leave::Done => return,
        }
        if now >= self.next_health_tick {
            let factor = self.health.observe(now.saturating_duration_since(self.next_health_tick));
            self.restretch(factor);
            self.next_health_tick = now + HEALTH_TICK;
            self.expire_stuck_suspicions(now);
        }
        self.decide_refusals(now);
        while let Some(armed) = self.timers.pop_due(now) {
            if let Some(later) = self.deferred_due(&armed, now) {
                let deferred = Armed { due: later, ..armed };
                if self.timers.push(deferred).is_err() {
                    self.stats.timer_overflow += 1;
                }
                continue;
            }
            if let Err(error) = self.foca.handle_timer(armed.timer, &mut self.runtime) {
                tracing::debug!(%error, "foca refused a timer");
            }
            self.drain(now);
        }
        if now >= self.next_join_attempt {
            self.next_join_attempt = now + self.settings.join_retry_period;
            self.try_join(now);
        }
        self.after_input();
    }

    /// Leaves gracefully: switches to the leaving identity (peers then report `Left`, not `Down`),
    /// gossips it, and re-gossips it 3 times (`LEAVE_REGOSSIP_ROUNDS`), one every 100 ms, through
    /// [`MembershipDriver::handle_timeout`]; [`MembershipDriver::has_left`] tells when done.
    /// Envelopes still received meanwhile are handled (a peer that talks to us now becomes a
    /// gossip target). A second call does nothing.
    pub fn handle_leave(&mut self, now: Instant) {
        if self.leave != Leave::Member {
            return;
        }
        self.leave = Leave::Lingering { rounds: 0, next_round: now + LEAVE_REGOSSIP_INTERVAL };
        if let Some(leaving) = self.foca.identity().leaving() {
            if let Err(error) = self.foca.change_identity(leaving, &mut self.runtime) {
                tracing::debug!(%error, "could not switch to the leaving identity");
            }
            if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
                tracing::debug!(%error, "foca could not leave");
            }
            self.drain(now);
        }
        self.after_input();
    }

    /// The next envelope to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for subscribers, in the order foca notified.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// When to call [`MembershipDriver::handle_timeout`] next; `None` once a leave is done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.leave {
            Leave::Member => {
                let mut due = self.next_health_tick.min(self.next_join_attempt);
                if let Some(timer) = self.timers.next_due() {
                    due = due.min(timer);
                }
                if let Some(confirm) = self.refusals.next_due() {
                    due = due.min(confirm);
                }
                Some(due)
            }
            Leave::Lingering { next_round, .. } => Some(next_round),
            Leave::Done => None,
        }
    }

    /// The member view if it changed since the last call (the first call always returns it):
    /// what [`MembershipDriver::members`] returns.
    pub fn poll_view(&mut self) -> Option<Vec<MemberView>> {
        let fingerprint = self.fingerprint();
        if self.view_fingerprint == Some(fingerprint) {
            return None;
        }
        self.view_fingerprint = Some(fingerprint);
        Some(self.members())
    }

    /// The member view: every member foca knows plus this node, sorted by name; a member that
    /// left shows `left`, this node `left` once it leaves.
    pub fn members(&self) -> Vec<MemberView> {
        build_view(
            self.foca.identity(),
            self.is_leaving(),
            self.foca.iter_membership_state().map(|member| (member.id(), member.state())),
        )
    }

    /// Whether foca holds at least one other member alive or suspect.
    pub fn has_live_peers(&self) -> bool {
        self.foca.num_members() > 0
    }

    /// Whether [`MembershipDriver::handle_leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leave != Leave::Member
    }

    /// Whether a leave finished its re-gossip rounds (the shell may stop).
    pub fn has_left(&self) -> bool {
        self.leave == Leave::Done
    }

    /// The local health factor in `[1, 8]` (1 = healthy): how much suspicion timeouts are
    /// stretched because `handle_timeout` was called late.
    pub fn health_factor(&self) -> f64 {
        self.health.factor()
    }

    /// This node's member info.
    pub fn local(&self) -> &MemberInfo {
        &self.foca.identity().info
    }

    /// The counters (see [`DriverStats`]).
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// After every input: foca's backlog length for the broadcast handler's re-spread bound.
    fn after_input(&mut self) {
        self.channels.set_backlog(self.foca.custom_broadcast_backlog());
    }

    fn send(&mut self, to_name: Option<&str>, to: SocketAddr, kind: EnvelopeKind, body: &[u8]) {
        if self.transmits.len() >= MAX_PENDING_TRANSMITS {
            self.stats.transmits_dropped += 1;
            return;
        }
        let mut payload = Vec::new();
        if encode_envelope(kind, &self.local_name, body, &mut payload).is_err() {
            // Our own name was validated at construction; this would be a bug, not input.
            self.stats.malformed += 1;
            return;
        }
        self.transmits.push_back(Transmit { to, to_name: to_name.map(str::to_owned), payload });
    }

    /// When a suspicion timer armed under a smaller health factor should fire instead, if later
    /// than `now`: the node became starved while the suspicion ran, so it gives the suspect the
    /// stretched time it would have had.
    fn deferred_due(&self, armed: &Armed<Timer<GossipIdentity>>, now: Instant) -> Option<Instant> {
        if !matches!(armed.timer, Timer::ChangeSuspectToDown { .. }) {
            return None;
        }
        let current = self.health.factor();
        if current <= armed.factor {
            return None;
        }
        let stretched = armed.after.mul_f64(current / health::clamp_factor(armed.factor));
        let due = armed.armed_at + stretched;
        (due > now).then_some(due)
    }

    /// Evidence from the transport that `peer`'s process is gone: its internode port refused a
    /// connection, or answered as a later incarnation of the node (`super::refusals`). The
    /// first report of a live member's incarnation makes this node suspect it (gossiped, so a
    /// live member refutes); a second report and [`super::refusals::CONFIRM_AFTER`] without a
    /// refutation make it down. Ignored while leaving and for members not alive or suspect.
    pub fn handle_connection_refused(&mut self, now: Instant, peer: &NodeId) {
        if self.leave != Leave::Member {
            return;
        }
        let found = self
            .foca
            .iter_membership_state()
            .find(|member| {
                member.id().info.id == *peer
                    && matches!(member.state(), State::Alive | State::Suspect)
                    && !member.id().leaving
            })
            .map(|member| (member.id().clone(), member.incarnation(), member.state()));
        let Some((id, incarnation, state)) = found else { return };
        match self.refusals.report(now, identity_key(&id), u64::from(incarnation)) {
            Verdict::Suspect if state == State::Alive => {
                tracing::info!(member = id.name(), "membership: internode connection refused; suspecting it");
                self.stats.refused_suspicions += 1;
                let suspect = std::iter::once(Member::new(id, incarnation, State::Suspect));
                if let Err(error) = self.foca.apply_many(suspect, true, &mut self.runtime) {
                    tracing::debug!(%error, "foca refused the suspect update");
                }
                self.drain(now);
            }
            Verdict::Suspect | Verdict::Wait => {}
            Verdict::Full => self.stats.refusals_untracked += 1,
        }
        self.decide_refusals(now);
        self.after_input();
    }

    /// Declares down the members refused twice and silent for the confirmation window.
    fn decide_refusals(&mut self, now: Instant) {
        let active: std::collections::BTreeMap<(NodeId, u32, bool), (GossipIdentity, u64)> = self
            .foca
            .iter_membership_state()
            .filter(|member| matches!(member.state(), State::Alive | State::Suspect))
            .map(|member| (identity_key(member.id()), (member.id().clone(), u64::from(member.incarnation()))))
            .collect();
        let down = self.refusals.observe(now, |key| active.get(key).map(|(_, incarnation)| *incarnation));
        if down.is_empty() {
            return;
        }
        for (key, incarnation) in down {
            let Some((id, _)) = active.get(&key).cloned() else { continue };
            let Ok(incarnation) = Incarnation::try_from(incarnation) else { continue };
            tracing::info!(
                member = id.name(),
                "membership: internode connections refused and no refutation; declaring it down"
            );
            self.stats.refused_downs += 1;
            let down = std::iter::once(Member::new(id, incarnation, State::Down));
            if let Err(error) = self.foca.apply_many(down, true, &mut self.runtime) {
                tracing::debug!(%error, "foca refused the down update");
            }
        }
        self.drain(now);
    }

    /// Declares down the members whose suspicion outlived every suspicion timeout here too.
    fn expire_stuck_suspicions(&mut self, now: Instant) {
        let key = identity_key;
        let suspects: Vec<(GossipIdentity, u64)> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.state() == State::Suspect)
            .map(|member| (member.id().clone(), u64::from(member.incarnation())))
            .collect();
        let stuck = self.suspicions.observe(now, suspects.iter().map(|(id, inc)| (key(id), *inc)));
        if stuck.is_empty() {
            return;
        }
        for (stuck_key, incarnation) in stuck {
            let Some(id) = suspects.iter().map(|(id, _)| id).find(|id| key(id) == stuck_key).cloned() else { continue };
            let Ok(incarnation) = Incarnation::try_from(incarnation) else { continue };
            tracing::info!(member = id.name(), "membership: a suspicion outlived every timeout; declaring it down");
            self.stats.stuck_suspicions += 1;
            let down = std::iter::once(Member::new(id, incarnation, State::Down));
            if let Err(error) = self.foca.apply_many(down, true, &mut self.runtime) {
                tracing::debug!(%error, "foca refused the down update");
            }
        }
        self.drain(now);
    }

    /// Pushes a stretched suspicion timeout into foca's config when it moved enough.
    fn restretch(&mut self, factor: f64) {
        let base = self.settings.base_suspicion;
        let wanted = health::stretch(base, factor);
        let applied = health::stretch(base, self.applied_factor);
        let moved = wanted.abs_diff(applied).as_secs_f64() >= base.as_secs_f64() * RESTRETCH_FRACTION;
        let recovered = factor <= 1.0 && self.applied_factor > 1.0;
        if !(moved || recovered) {
            return;
        }
        let mut config = self.settings.foca.clone();
        config.suspect_to_down_after = wanted;
        match self.foca.set_config(config) {
            Ok(()) => self.applied_factor = factor,
            Err(error) => tracing::debug!(%error, "foca refused the stretched config"),
        }
    }

    /// One join attempt, only while this node has no live peer: a `Discover` to every seed and an
    /// announce to a few members held down (so an isolated node heals without any seed).
    fn try_join(&mut self, now: Instant) {
        // After a `Rejoin` foca is disconnected (its timers stopped) while it still lists the
        // members it knew: it reconnects only when one of them sends it member updates. When a
        // peer's `TurnUndead` caused the renewal, nothing else re-arms it, and if that peer then
        // dies nothing ever will: the node would sit alone, probing nobody, for good (found by the
        // simulator: 3 nodes, composed faults, seed 357). So while rejoining, announce to the
        // members still listed as well as to the seeds and the members held down.
        if self.is_leaving() || (self.foca.num_members() > 0 && !self.rejoining) {
            return;
        }
        if self.rejoining {
            let active: Vec<GossipIdentity> =
                self.foca.iter_members().take(MAX_DOWN_ANNOUNCES).map(|member| member.id().clone()).collect();
            for member in active {
                if let Err(error) = self.foca.announce(member, &mut self.runtime) {
                    tracing::debug!(%error, "could not announce to a member while rejoining");
                }
            }
        }
        for index in 0..self.seeds.len() {
            // The seed's name is unknown until it answers: no fault rule can name it yet. Its
            // answer passes the rules for its name on both sides.
            let seed = self.seeds[index];
            self.send(None, seed, EnvelopeKind::Discover, &[]);
        }
        let down: Vec<GossipIdentity> = self
            .foca
            .iter_membership_state()
            .filter(|member| member.state() == State::Down && !member.id().leaving)
            .take(MAX_DOWN_ANNOUNCES)
            .map(|member| member.id().clone())
            .collect();
        for member in down {
            if let Err(error) = self.foca.announce(member, &mut self.runtime) {
                tracing::debug!(%error, "could not announce to a down member");
            }
        }
        self.drain(now);
    }

    /// Everything foca asked for since the last call: sends, timers, notifications, in order.
    fn drain(&mut self, now: Instant) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(Some(to.name()), to.info.addrs.gossip, EnvelopeKind::Foca, &data);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let armed = Armed { due: now + after, armed_at: now, after, factor: self.applied_factor, timer };
            if self.timers.push(armed).is_err() {
                tracing::debug!("timer queue full");
                self.stats.timer_overflow += 1;
            }
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.on_notification(notification, now);
        }
    }

    fn on_notification(&mut self, notification: OwnedNotification<GossipIdentity>, now: Instant) {
        let mut out = Vec::new();
        let accepted = match notification {
            OwnedNotification::MemberUp(member) => self.tracker.member_up(&member, &mut out),
            OwnedNotification::MemberDown(member) => {
                self.tracker.member_down(&member, &mut out);
                true
            }
            OwnedNotification::Rename(old, new) => {
                let active = self.is_active(&new);
                self.tracker.renamed(&old, &new, active, &mut out)
            }
            OwnedNotification::Active => {
                tracing::info!("membership: joined the cluster");
                self.rejoining = false;
                true
            }
            OwnedNotification::Idle => {
                tracing::info!("membership: no live peer left; retrying seeds");
                self.next_join_attempt = now;
                true
            }
            OwnedNotification::Defunct => {
                if !self.is_leaving() {
                    tracing::warn!("membership: declared down by the cluster and cannot renew");
                }
                true
            }
            OwnedNotification::Rejoin(identity) => {
                tracing::info!(renew = identity.renew, "membership: rejoined after being declared down");
                self.rejoining = true;
                self.next_join_attempt = now;
                true
            }
            #[allow(unreachable_patterns)]
            _ => true,
        };
        if !accepted {
            self.stats.members_overflow += 1;
        }
        for event in out {
            if self.events.len() >= MAX_PENDING_EVENTS {
                self.stats.events_dropped += 1;
            } else {
                self.events.push_back(event);
            }
        }
    }

    fn is_active(&self, identity: &GossipIdentity) -> bool {
        self.foca.iter_membership_state().any(|member| member.id() == identity && member.state() != State::Down)
    }

    /// An order-independent digest of the view (foca reshuffles its member list). `DefaultHasher`
    /// with its fixed keys: the same view gives the same digest in every process.
    fn fingerprint(&self) -> u64 {
        let mut digest = hash_one(&(self.foca.identity().renew, self.is_leaving()));
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            let state = view_state(member.state(), id.leaving);
            digest = digest.wrapping_add(hash_one(&(id.name(), id.info.id.incarnation, id.renew, state)));
        }
        digest
    }
}

fn hash_one<T: Hash>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The state a member shows: foca's, with a down leaving identity shown as `left`.
fn view_state(state: State, leaving: bool) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down if leaving => MemberState::Left,
        State::Down => MemberState::Down,
    }
}

/// The published view: every member foca knows plus this node, sorted by name.
fn build_view<'a>(
    local: &GossipIdentity,
    leaving: bool,
    members: impl Iterator<Item = (&'a GossipIdentity, State)>,
) -> Vec<MemberView> {
    let mut view: Vec<MemberView> = members
        .map(|(id, state)| MemberView { info: id.info.clone(), state: view_state(state, id.leaving), is_self: false })
        .collect();
    let local_state = if leaving { MemberState::Left } else { MemberState::Alive };
    view.push(MemberView { info: local.info.clone(), state: local_state, is_self: true });
    view.sort_by(|a, b| a.info.id.name.cmp(&b.info.id.name));
    view
}

/// An identity's ordered parts: (node id, renew, leaving).
fn identity_key(id: &GossipIdentity) -> (NodeId, u32, bool) {
    (id.info.id.clone(), id.renew, id.leaving)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::identity::tests::info;
    use proptest::prelude::*;

    fn foca(name: &str) -> FocaInstance {
        let config = MembershipConfig::default();
        let foca_config = config.foca_config(config.max_datagram_bytes - MAX_ENVELOPE_OVERHEAD).unwrap();
        let metrics = crate::membership::channels::BroadcastMetrics::register(&prometheus::Registry::new()).unwrap();
        Foca::with_custom_broadcast(
            GossipIdentity::new(info(name, 1)),
            foca_config,
            StdRng::seed_from_u64(1),
            PostcardCodec,
            Channels(Arc::new(ChannelTable::new(metrics))),
        )
    }

    /// A real announce from `a` to `b`, as bytes.
    fn announce_bytes() -> Vec<u8> {
        let mut a = foca("a");
        let mut runtime = AccumulatingRuntime::new();
        a.announce(GossipIdentity::new(info("b", 1)), &mut runtime).unwrap();
        runtime.to_send().unwrap().1.to_vec()
    }

    proptest! {
        // The authenticated body of a datagram still comes from the network: whatever it holds,
        // foca with our identity and codec refuses it with an error, never a panic.
        #[test]
        fn foca_never_panics_on_random_or_truncated_packets(
            random in proptest::collection::vec(any::<u8>(), 0..1500),
            cut in 0usize..400,
            flip in any::<(usize, u8)>(),
        ) {
            let mut b = foca("b");
            let mut runtime = AccumulatingRuntime::new();
            let _ = b.handle_data(&random, &mut runtime);
            let valid = announce_bytes();
            let _ = b.handle_data(&valid[..cut.min(valid.len())], &mut runtime);
            let mut corrupted = valid.clone();
            let index = flip.0 % corrupted.len();
            corrupted[index] ^= flip.1;
            let _ = b.handle_data(&corrupted, &mut runtime);
            let _ = postcard::from_bytes::<GossipIdentity>(&random);
        }
    }

    #[test]
    fn a_valid_announce_is_answered_with_a_feed() {
        let mut b = foca("b");
        let mut runtime = AccumulatingRuntime::new();
        b.handle_data(&announce_bytes(), &mut runtime).unwrap();
        let (to, _) = runtime.to_send().unwrap();
        assert_eq!(to.name(), "a");
        assert_eq!(b.num_members(), 1);
    }

    #[test]
    fn view_includes_self_sorted_and_shows_leaving_down_as_left() {
        let local = GossipIdentity::new(info("b", 1));
        let a = GossipIdentity::new(info("a", 1));
        let c = GossipIdentity::new(info("c", 1)).leaving().unwrap();
        let d = GossipIdentity::new(info("d", 1));
        let e = GossipIdentity::new(info("e", 1));
        let members = [(&e, State::Suspect), (&c, State::Down), (&a, State::Alive), (&d, State::Down)];
        let view = build_view(&local, false, members.into_iter());
        let rows: Vec<(&str, MemberState, bool)> =
            view.iter().map(|row| (row.info.id.name.as_str(), row.state, row.is_self)).collect();
        assert_eq!(
            rows,
            [
                ("a", MemberState::Alive, false),
                ("b", MemberState::Alive, true),
                ("c", MemberState::Left, false),
                ("d", MemberState::Down, false),
                ("e", MemberState::Suspect, false),
            ]
        );
        let view = build_view(&local, true, std::iter::empty());
        assert_eq!(view[0].state, MemberState::Left);
    }

    // ---- Several drivers on a virtual clock and a tiny in-test network ----

    use std::collections::{BTreeMap, BTreeSet};

    use crate::{MemberAddrs, NodeId};

    /// One way, every datagram: small beside every timeout, so the network is not what is tested.
    const ONE_WAY: Duration = Duration::from_millis(1);

    /// What a run did, in order: the determinism test compares two of these.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Traced {
        Sent { at: Duration, from: usize, to: SocketAddr, payload: Vec<u8>, dropped: bool },
        Event { at: Duration, node: usize, event: MembershipEvent },
    }

    /// Drivers at 10.0.0.N:7946 (node `i` is `n{i}`), a FIFO network with a fixed delay, and a
    /// set of cut-off nodes whose datagrams are dropped both ways.
    struct Net {
        t0: Instant,
        now: Instant,
        nodes: Vec<MembershipDriver>,
        addrs: Vec<SocketAddr>,
        /// (due, sequence) -> (to, from address, payload).
        in_flight: BTreeMap<(Instant, u64), (usize, SocketAddr, Vec<u8>)>,
        seq: u64,
        cut: BTreeSet<usize>,
        trace: Vec<Traced>,
    }

    fn member(index: usize) -> MemberInfo {
        let gossip: SocketAddr = format!("10.0.0.{}:7946", index + 1).parse().unwrap();
        MemberInfo {
            id: NodeId::new(format!("n{index}"), 1),
            addrs: MemberAddrs { gossip, internode: gossip, http: gossip },
            raft_eligible: true,
            failure_domain: String::new(),
        }
    }

    impl Net {
        /// `count` drivers whose RNGs derive from `seed`; node 0 is every other node's seed.
        fn new(count: usize, seed: u64) -> Self {
            let t0 = Instant::now();
            let addrs: Vec<SocketAddr> = (0..count).map(|i| member(i).addrs.gossip).collect();
            let nodes = (0..count)
                .map(|i| {
                    let node_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64);
                    let mut driver =
                        MembershipDriver::new(member(i), DriverSettings::default(), node_seed, t0).unwrap();
                    // Node 0 is given itself, as a shared seed list would: it must skip it.
                    driver.handle_seeds(t0, [addrs[0]]);
                    driver
                })
                .collect();
            let mut net = Self {
                t0,
                now: t0,
                nodes,
                addrs,
                in_flight: BTreeMap::new(),
                seq: 0,
                cut: BTreeSet::new(),
                trace: Vec::new(),
            };
            for node in 0..count {
                net.collect(node);
            }
            net
        }

        fn elapsed(&self) -> Duration {
            self.now - self.t0
        }

        /// Moves `node`'s outputs into the network and the trace.
        fn collect(&mut self, node: usize) {
            let at = self.elapsed();
            while let Some(transmit) = self.nodes[node].poll_transmit() {
                let to = self.addrs.iter().position(|addr| *addr == transmit.to);
                let dropped = to.is_none_or(|to| self.cut.contains(&to)) || self.cut.contains(&node);
                if let (Some(to), false) = (to, dropped) {
                    self.seq += 1;
                    self.in_flight
                        .insert((self.now + ONE_WAY, self.seq), (to, self.addrs[node], transmit.payload.clone()));
                }
                self.trace.push(Traced::Sent { at, from: node, to: transmit.to, payload: transmit.payload, dropped });
            }
            while let Some(event) = self.nodes[node].poll_event() {
                self.trace.push(Traced::Event { at, node, event });
            }
        }

        /// Advances to the next datagram or timeout and handles everything due then.
        fn step(&mut self) {
            let next_datagram = self.in_flight.keys().next().map(|(due, _)| *due);
            let next_timeout = self.nodes.iter().filter_map(MembershipDriver::poll_timeout).min();
            let Some(next) = [next_datagram, next_timeout].into_iter().flatten().min() else {
                self.now += Duration::from_millis(100);
                return;
            };
            self.now = self.now.max(next);
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (to, from, payload) = entry.remove();
                self.nodes[to].handle_datagram(self.now, from, &payload);
                self.collect(to);
            }
            for node in 0..self.nodes.len() {
                if self.nodes[node].poll_timeout().is_some_and(|due| due <= self.now) {
                    self.nodes[node].handle_timeout(self.now);
                    self.collect(node);
                }
            }
        }

        /// Runs until `done` holds (returns the simulated time it took) or `limit` passes.
        fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> Option<Duration> {
            let start = self.now;
            while self.now - start <= limit {
                if done(self) {
                    return Some(self.now - start);
                }
                self.step();
            }
            None
        }

        /// The state `observer` shows for node `subject`.
        fn state(&self, observer: usize, subject: usize) -> Option<MemberState> {
            let name = format!("n{subject}");
            self.nodes[observer].members().into_iter().find(|row| row.info.id.name == name).map(|row| row.state)
        }

        /// Whether every node in `observers` shows every node of `subjects` in `state`.
        fn all_show(&self, observers: &[usize], subjects: &[usize], state: MemberState) -> bool {
            observers.iter().all(|o| subjects.iter().all(|s| self.state(*o, *s) == Some(state)))
        }

        /// The events `node` reported about `subject`, in order.
        fn events_about(&self, node: usize, subject: usize) -> Vec<MembershipEvent> {
            let name = format!("n{subject}");
            self.trace
                .iter()
                .filter_map(|traced| match traced {
                    Traced::Event { node: n, event, .. } if *n == node => Some(event.clone()),
                    _ => None,
                })
                .filter(|event| match event {
                    MembershipEvent::Up(info) | MembershipEvent::Down(info) | MembershipEvent::Left(info) => {
                        info.id.name == name
                    }
                })
                .collect()
        }
    }

    fn everyone(count: usize) -> Vec<usize> {
        (0..count).collect()
    }

    /// Joined, the bound the other tests start from.
    fn joined(count: usize, seed: u64) -> Net {
        let mut net = Net::new(count, seed);
        let all = everyone(count);
        net.run_until(Duration::from_secs(5), |net| net.all_show(&all, &all, MemberState::Alive))
            .expect("the cluster forms within 5 s");
        net
    }

    #[test]
    fn nodes_join_through_a_seed_and_all_see_each_other_alive() {
        let mut net = Net::new(5, 1);
        let all = everyone(5);
        // Before any datagram moved, every node shows only itself.
        assert!(net.nodes.iter().all(|node| node.members().len() == 1 && !node.has_live_peers()));
        let took = net
            .run_until(Duration::from_secs(5), |net| net.all_show(&all, &all, MemberState::Alive))
            .expect("5 nodes joined through node 0 see each other alive within 5 s");
        // Discover (a round trip), announce and feed (another), then gossip spreads the roster:
        // a few hundred milliseconds (at most 204 ms over seeds 0-199 of 4 nodes), far under the
        // 10 s periodic announce.
        assert!(took < Duration::from_secs(1), "{took:?}");
        for observer in 0..5 {
            for subject in (0..5).filter(|s| *s != observer) {
                assert_eq!(net.events_about(observer, subject), [MembershipEvent::Up(member(subject))]);
            }
        }
        // Node 0 never sent a Discover to itself although it is in its own seed list.
        assert!(!net.trace.iter().any(|t| matches!(t, Traced::Sent { from: 0, to, .. } if *to == net.addrs[0])));
        assert_eq!(net.nodes[0].stats(), DriverStats::default());
    }

    #[test]
    fn a_cut_off_node_is_declared_down_and_rejoins_after_the_heal() {
        let mut net = joined(4, 2);
        let others = [0, 1, 2];
        net.cut.insert(3);
        // SPEC 5.1: a dead node is down everywhere within 5 s (probe, indirect probes,
        // suspicion, a gossip hop; with the local-health factor at 1 on a punctual clock).
        let took = net
            .run_until(Duration::from_secs(6), |net| net.all_show(&others, &[3], MemberState::Down))
            .expect("the cut-off node is down on every other node within the foca timeouts");
        // At most 4.2 s over seeds 0-199 of 4 nodes, as measured on loopback (module docs of
        // `super`).
        assert!(took <= Duration::from_secs(5), "{took:?}");
        // The cut-off node holds everyone else down too.
        net.run_until(Duration::from_secs(6), |net| net.all_show(&[3], &others, MemberState::Down))
            .expect("the cut-off node declares the others down");
        net.cut.clear();
        // Both sides announce to the members they hold down (every 2 s once joined, every join
        // attempt when isolated); the node told it is down renews its identity and rejoins.
        let all = everyone(4);
        let healed = net
            .run_until(Duration::from_secs(10), |net| net.all_show(&all, &all, MemberState::Alive))
            .expect("everyone is alive again within 10 s of the heal");
        // At most 1.2 s over seeds 0-199 of 4 nodes (the isolated node announces to the members
        // it holds down at every join attempt, once a second).
        assert!(healed <= Duration::from_secs(3), "{healed:?}");
        for observer in others {
            // The same run came back: Down then Up of the same NodeId, nothing in between.
            assert_eq!(
                net.events_about(observer, 3),
                [MembershipEvent::Up(member(3)), MembershipEvent::Down(member(3)), MembershipEvent::Up(member(3))],
                "node {observer}"
            );
        }
        assert!(net.nodes.iter().all(|node| node.health_factor() == 1.0));
    }

    /// The transport of `observer` reports `subject`'s port refused (what a dial does every
    /// backoff step once `subject`'s process is gone).
    fn refused(net: &mut Net, observer: usize, subject: usize) {
        let now = net.now;
        net.nodes[observer].handle_connection_refused(now, &member(subject).id);
        net.collect(observer);
    }

    #[test]
    fn a_killed_node_whose_port_refuses_is_down_everywhere_well_before_swim_would_say_so() {
        let mut net = joined(4, 5);
        let others = [0, 1, 2];
        // Killed: its datagrams stop and its port refuses. Two survivors' links notice.
        net.cut.insert(3);
        refused(&mut net, 0, 3);
        assert_eq!(net.state(0, 3), Some(MemberState::Suspect), "the first refusal suspects it");
        net.run_until(Duration::from_millis(100), |_| false);
        refused(&mut net, 0, 3);
        refused(&mut net, 1, 3);
        let took = net
            .run_until(Duration::from_secs(3), |net| net.all_show(&others, &[3], MemberState::Down))
            .expect("down everywhere");
        // The confirmation window (500 ms after the first refusal) and a gossip hop; SWIM alone
        // takes 2-4 s here (a_cut_off_node_is_declared_down_and_rejoins_after_the_heal).
        assert!(took + Duration::from_millis(100) <= Duration::from_millis(800), "{took:?}");
        assert_eq!((net.nodes[0].stats().refused_suspicions, net.nodes[0].stats().refused_downs), (1, 1));
    }

    #[test]
    fn a_live_node_refused_by_a_firewall_refutes_and_is_not_suspected_again_for_a_while() {
        let mut net = joined(3, 6);
        // n2 is alive and reachable over gossip; only its internode port refuses n0.
        refused(&mut net, 0, 2);
        net.run_until(Duration::from_millis(100), |_| false);
        refused(&mut net, 0, 2);
        let all = everyone(3);
        net.run_until(Duration::from_secs(2), |_| false);
        assert!(net.all_show(&all, &all, MemberState::Alive), "refuted: alive everywhere");
        assert_eq!(net.nodes[0].stats().refused_downs, 0);
        assert!(!net.events_about(0, 2).iter().any(|e| matches!(e, MembershipEvent::Down(_))));
        // More refusals while quiet change nothing.
        for _ in 0..5 {
            refused(&mut net, 0, 2);
            net.run_until(Duration::from_millis(200), |_| false);
        }
        assert!(net.all_show(&all, &all, MemberState::Alive));
        assert_eq!(net.nodes[0].stats().refused_suspicions, 1);
    }

    #[test]
    fn a_graceful_leave_shows_left_everywhere() {
        let mut net = joined(3, 3);
        net.nodes[2].handle_leave(net.now);
        net.collect(2);
        assert!(net.nodes[2].is_leaving() && !net.nodes[2].has_left());
        assert_eq!(net.state(2, 2), Some(MemberState::Left));
        net.run_until(Duration::from_secs(2), |net| net.all_show(&[0, 1], &[2], MemberState::Left))
            .expect("the others show the leaver left");
        for observer in [0, 1] {
            assert_eq!(
                net.events_about(observer, 2),
                [MembershipEvent::Up(member(2)), MembershipEvent::Left(member(2))]
            );
        }
        // The linger ends after its rounds (0.3 s); then the driver asks for nothing more.
        net.run_until(Duration::from_secs(1), |net| net.nodes[2].has_left()).expect("the leave completes");
        assert_eq!(net.nodes[2].poll_timeout(), None);
        // The others keep each other alive.
        assert!(net.all_show(&[0, 1], &[0, 1], MemberState::Alive));
    }

    /// A fixed scenario: join, cut a node off, heal, leave one; everything each driver output.
    fn scenario(seed: u64) -> Vec<Traced> {
        let mut net = joined(5, seed);
        net.cut.insert(4);
        net.run_until(Duration::from_secs(4), |_| false);
        net.cut.clear();
        net.run_until(Duration::from_secs(6), |_| false);
        net.nodes[1].handle_leave(net.now);
        net.collect(1);
        net.run_until(Duration::from_secs(2), |_| false);
        net.trace
    }

    #[test]
    fn the_same_seed_and_inputs_give_the_same_outputs() {
        let first = scenario(7);
        let again = scenario(7);
        assert!(first.len() > 300, "{}", first.len());
        assert!(
            first == again,
            "seed 7 did not replay: first difference at {:?}",
            first.iter().zip(&again).position(|(a, b)| a != b)
        );
        // The trace does depend on the seed (foca's probe order and gossip targets), so the
        // comparison above is not comparing constants.
        assert!(scenario(8) != first);
    }

    #[test]
    fn late_timeouts_raise_the_health_factor_and_hostile_envelopes_are_counted() {
        let t0 = Instant::now();
        let mut driver = MembershipDriver::new(member(0), DriverSettings::default(), 1, t0).unwrap();
        driver.handle_timeout(t0);
        let due = driver.poll_timeout().unwrap();
        // The shell's loop stalled for a second past the health tick.
        driver.handle_timeout(due + Duration::from_secs(1));
        assert!(driver.health_factor() >= 2.0, "{}", driver.health_factor());
        let from = "10.0.0.9:7946".parse().unwrap();
        driver.handle_datagram(due, from, &[9, 9, 9]);
        let mut foca_garbage = Vec::new();
        encode_envelope(EnvelopeKind::Foca, "n9", &[1, 2, 3, 4], &mut foca_garbage).unwrap();
        driver.handle_datagram(due, from, &foca_garbage);
        let mut bad_reply = Vec::new();
        encode_envelope(EnvelopeKind::DiscoverReply, "n9", &[0xff; 8], &mut bad_reply).unwrap();
        driver.handle_datagram(due, from, &bad_reply);
        assert_eq!(driver.stats(), DriverStats { malformed: 2, rejected: 1, ..DriverStats::default() });
        assert!(driver.poll_transmit().is_none() && driver.poll_event().is_none());
    }
}
