//! The membership actor: the one task that owns the `Foca` value, the gossip socket, foca's timers
//! and its notifications.
//!
//! Role: drive the sans-I/O foca state. Every step is one input (a command, a due deadline or a
//! datagram) fed to foca, then a full drain of foca's runtime in order: datagrams to send, timers
//! to arm, notifications to turn into events; then the events are published and, if the view
//! changed, a new snapshot.
//!
//! Joining (SPEC 5.1): a seed is only a `host:port`, but a foca announce must be addressed to an
//! identity whose name matches the receiver's. So while this node has no live peer it sends a
//! `Discover` envelope to every seed address each `join_retry_period`; a seed answers with its
//! identity and the node announces to it. The same loop also announces to the members it holds
//! down, so an isolated node heals without any seed. Once joined, foca's own extensions keep the
//! cluster whole: `periodic_announce` (discover the full roster), `periodic_gossip` (spread
//! updates fast) and `periodic_announce_to_down_members` with `notify_down_members` (after a
//! partition heals, each side tells the other "you are down to me"; the member told renews its
//! identity (`Identity::renew`) and rejoins; see foca's changelog for v0.17).
//!
//! Leaving: the node switches to a `leaving` identity (which wins over its current one), then
//! calls foca's `leave_cluster`, which gossips that identity as down; peers that see a leaving
//! identity go down report `Left`. The actor re-gossips a few times over a bounded linger so the
//! news survives a lost datagram, then stops.
//!
//! Invariants: every timer foca arms is delivered (the queue's bound is counted if ever hit);
//! nothing blocks the loop (sends are `try_send_to`, DNS runs in its own task); the event order
//! subscribers see is the order foca notified; timers come before datagrams when both are ready.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, Incarnation, Member, OwnedNotification, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use super::channels::{ChannelTable, Channels, MAX_BROADCAST_BACKLOG};
use super::events::EventTracker;
use super::health::{self, HEALTH_TICK, LocalHealth, MAX_HEALTH_FACTOR};
use super::identity::GossipIdentity;
use super::suspicion::StuckSuspicions;
use super::timers::{Armed, TimerQueue};
use crate::net::gossip::{EnvelopeKind, GossipSocket, Inbound};
use crate::{MemberState, MemberView, MembershipEvent};

/// The foca instance the actor owns.
pub(super) type FocaInstance = Foca<GossipIdentity, PostcardCodec, StdRng, Channels>;

/// The most timers armed at once (see `super::timers` for why this is never reached).
pub(super) const MAX_PENDING_TIMERS: usize = 65_536;

/// The most down members an isolated node announces to per join attempt.
///
/// Why: enough to find the rest of a partitioned cluster in a few attempts, small enough that a
/// node that has seen many departures does not flood dead addresses.
const MAX_DOWN_ANNOUNCES: usize = 4;

/// How many times a leaving node re-gossips its departure.
const LEAVE_REGOSSIP_ROUNDS: u32 = 3;

/// The pause between those rounds: 3 x 100 ms bounds the linger of `leave` to 0.3 s.
const LEAVE_REGOSSIP_INTERVAL: Duration = Duration::from_millis(100);

/// A change of at least this fraction of the base suspicion timeout is pushed into foca's config
/// (hysteresis: no `set_config` on every tick of a slowly decaying factor).
const RESTRETCH_FRACTION: f64 = 0.1;

/// The back-off after a socket receive error, so a persistent error cannot spin the loop.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The most custom broadcast items the actor takes from its queue in one step, so a burst cannot
/// hold the loop away from timers and datagrams.
const BROADCAST_BATCH: usize = 256;

/// How much longer than the longest stretched suspicion a suspicion may last before this node
/// declares the member down itself (see `super::suspicion`).
const STUCK_SUSPICION_MARGIN: Duration = Duration::from_secs(2);

/// What a handle asks of the actor.
pub(super) enum Command {
    /// Leave gracefully, answer, and stop.
    Leave(oneshot::Sender<()>),
}

/// Where the actor's seed addresses come from.
pub(super) enum Seeds {
    /// Literal socket addresses, fixed.
    Fixed(Vec<SocketAddr>),
    /// Host names, kept resolved by a background task (aborted with the actor).
    Resolved { addrs: watch::Receiver<Vec<SocketAddr>>, _resolver: AbortOnDrop },
}

impl Seeds {
    fn current(&self) -> Vec<SocketAddr> {
        match self {
            Seeds::Fixed(addrs) => addrs.clone(),
            Seeds::Resolved { addrs, .. } => addrs.borrow().clone(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Seeds::Fixed(addrs) => addrs.is_empty(),
            Seeds::Resolved { .. } => false,
        }
    }
}

/// Aborts a helper task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The timings the actor needs from the config.
pub(super) struct ActorSettings {
    pub(super) join_retry_period: Duration,
    pub(super) base_suspicion: Duration,
    pub(super) foca_config: foca::Config,
    pub(super) max_tracked_members: usize,
}

enum Step {
    Command(Option<Command>),
    Deadline,
    Broadcast(Option<Vec<u8>>),
    Received(io::Result<Inbound>),
}

/// The membership actor.
pub(super) struct Actor {
    foca: FocaInstance,
    runtime: AccumulatingRuntime<GossipIdentity>,
    socket: GossipSocket,
    timers: TimerQueue<Timer<GossipIdentity>>,
    health: LocalHealth,
    /// The factor foca's config currently carries.
    applied_factor: f64,
    tracker: EventTracker,
    /// Keyed by (node id, renew, leaving): an identity's hashable parts.
    suspicions: StuckSuspicions<(crate::NodeId, u32, bool)>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    broadcasts: mpsc::Receiver<Vec<u8>>,
    channels: Arc<ChannelTable>,
    seeds: Seeds,
    settings: ActorSettings,
    local_name: String,
    local_addr: Option<SocketAddr>,
    leaving: bool,
    next_health_tick: Instant,
    next_join_attempt: Instant,
    view_fingerprint: Option<u64>,
    events: Vec<MembershipEvent>,
    inbound: Vec<Inbound>,
}

impl Actor {
    pub(super) fn new(
        foca: FocaInstance,
        socket: GossipSocket,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        broadcasts: mpsc::Receiver<Vec<u8>>,
        seeds: Seeds,
        settings: ActorSettings,
    ) -> Self {
        let channels = shared.channels.clone();
        let now = Instant::now();
        let local_name = foca.identity().name().to_owned();
        let local_addr = socket.local_addr().ok();
        // A seed list usually names every seed, this node included; it is not a peer of itself.
        let seeds = match seeds {
            Seeds::Fixed(addrs) => Seeds::Fixed(addrs.into_iter().filter(|addr| Some(*addr) != local_addr).collect()),
            resolved => resolved,
        };
        Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            timers: TimerQueue::new(MAX_PENDING_TIMERS),
            health: LocalHealth::default(),
            applied_factor: 1.0,
            tracker: EventTracker::new(settings.max_tracked_members),
            suspicions: StuckSuspicions::new(
                settings.base_suspicion.mul_f64(MAX_HEALTH_FACTOR) + STUCK_SUSPICION_MARGIN,
            ),
            shared,
            commands,
            broadcasts,
            channels,
            seeds,
            settings,
            local_name,
            local_addr,
            leaving: false,
            next_health_tick: now + HEALTH_TICK,
            next_join_attempt: now,
            view_fingerprint: None,
            events: Vec::new(),
            inbound: Vec::new(),
        }
    }

    /// Runs until a leave completes or every handle is gone.
    pub(super) async fn run(mut self) {
        self.settle();
        loop {
            let deadline = self.next_deadline();
            let step = tokio::select! {
                biased;
                command = self.commands.recv() => Step::Command(command),
                () = tokio::time::sleep_until(deadline.into()) => Step::Deadline,
                item = self.broadcasts.recv() => Step::Broadcast(item),
                received = self.socket.recv() => Step::Received(received),
            };
            match step {
                Step::Command(Some(Command::Leave(reply))) => {
                    self.leave().await;
                    let _ = reply.send(());
                    return;
                }
                Step::Command(None) => return,
                Step::Deadline => self.on_deadline(Instant::now()),
                Step::Broadcast(Some(item)) => self.on_broadcasts(item),
                // Every handle is gone; the command arm ends the loop.
                Step::Broadcast(None) => {}
                Step::Received(Ok(inbound)) => self.on_inbound(inbound),
                Step::Received(Err(error)) => {
                    tracing::debug!(%error, "gossip socket receive failed");
                    self.socket.metrics().dropped("recv_failed");
                    tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                }
            }
            self.settle();
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_health_tick.min(self.next_join_attempt);
        if let Some(due) = self.timers.next_due() {
            deadline = deadline.min(due);
        }
        if let Some(due) = self.socket.next_due() {
            deadline = deadline.min(due);
        }
        deadline
    }

    fn on_deadline(&mut self, now: Instant) {
        if now >= self.next_health_tick {
            let factor = self.health.observe(now.saturating_duration_since(self.next_health_tick));
            self.shared.set_health_factor(factor);
            self.restretch(factor);
            self.next_health_tick = now + HEALTH_TICK;
            self.expire_stuck_suspicions(now);
        }
        while let Some(armed) = self.timers.pop_due(now) {
            if let Some(later) = self.deferred_due(&armed, now) {
                let deferred = Armed { due: later, ..armed };
                if self.timers.push(deferred).is_err() {
                    self.socket.metrics().dropped("timer_overflow");
                }
                continue;
            }
            if let Err(error) = self.foca.handle_timer(armed.timer, &mut self.runtime) {
                tracing::debug!(%error, "foca refused a timer");
            }
            self.drain(now);
        }
        self.socket.release_due(now, &mut self.inbound);
        for inbound in std::mem::take(&mut self.inbound) {
            self.on_inbound(inbound);
        }
        if now >= self.next_join_attempt {
            self.next_join_attempt = now + self.settings.join_retry_period;
            self.try_join(now);
        }
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

    /// Declares down the members whose suspicion outlived every suspicion timeout here too.
    fn expire_stuck_suspicions(&mut self, now: Instant) {
        let key = |id: &GossipIdentity| (id.info.id.clone(), id.renew, id.leaving);
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
            self.shared.metrics.stuck_suspicions.inc();
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
        let mut config = self.settings.foca_config.clone();
        config.suspect_to_down_after = wanted;
        match self.foca.set_config(config) {
            Ok(()) => self.applied_factor = factor,
            Err(error) => tracing::debug!(%error, "foca refused the stretched config"),
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound.kind {
            EnvelopeKind::Foca => {
                let backlog = self.foca.custom_broadcast_backlog();
                if let Err(error) = self.foca.handle_data(&inbound.body, &mut self.runtime) {
                    tracing::debug!(sender = %inbound.sender, %error, "foca refused a packet");
                    self.socket.metrics().dropped("rejected");
                }
                // New custom items arrived: push them on at once (epidemic push) rather than at
                // the next gossip round, so a registry delta crosses a cluster in a few hops.
                if self.foca.custom_broadcast_backlog() > backlog
                    && let Err(error) = self.foca.broadcast(&mut self.runtime)
                {
                    tracing::debug!(%error, "foca could not send broadcasts");
                }
                self.drain(Instant::now());
            }
            EnvelopeKind::Discover => {
                if self.leaving || inbound.sender == self.local_name {
                    return;
                }
                match postcard::to_allocvec(self.foca.identity()) {
                    Ok(body) => self.socket.send(&inbound.sender, inbound.from, EnvelopeKind::DiscoverReply, &body),
                    Err(error) => tracing::debug!(%error, "could not encode our identity"),
                }
            }
            EnvelopeKind::DiscoverReply => match postcard::from_bytes::<GossipIdentity>(&inbound.body) {
                Ok(seed) if seed.name() == inbound.sender && seed.name() != self.local_name => {
                    if self.leaving {
                        return;
                    }
                    if let Err(error) = self.foca.announce(seed, &mut self.runtime) {
                        tracing::debug!(%error, "could not announce to a seed");
                    }
                    self.drain(Instant::now());
                }
                Ok(_) | Err(_) => self.socket.metrics().dropped("malformed"),
            },
        }
    }

    /// Adds local items (and whatever else is queued, up to a batch) to foca's backlog, then sends
    /// them to a few random members at once instead of waiting for the next gossip round.
    fn on_broadcasts(&mut self, first: Vec<u8>) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(item) = next.take() {
            taken += 1;
            if self.foca.custom_broadcast_backlog() >= MAX_BROADCAST_BACKLOG {
                self.channels.metrics.count("backlog_full");
            } else if let Err(error) = self.foca.add_broadcast(&item) {
                tracing::debug!(%error, "foca refused a broadcast item");
                self.channels.metrics.count("too_large");
            } else {
                self.channels.metrics.count("queued");
            }
            if taken < BROADCAST_BATCH {
                next = self.broadcasts.try_recv().ok();
            }
        }
        if let Err(error) = self.foca.broadcast(&mut self.runtime) {
            tracing::debug!(%error, "foca could not send broadcasts");
        }
        self.drain(Instant::now());
    }

    /// One join attempt, only while this node has no live peer.
    fn try_join(&mut self, now: Instant) {
        if self.leaving || self.foca.num_members() > 0 {
            return;
        }
        for seed in self.seeds.current() {
            if Some(seed) == self.local_addr {
                continue;
            }
            // The seed's name is unknown until it answers: no fault rule can name it yet. Its
            // answer passes the rules for its name on both sides.
            self.socket.send("", seed, EnvelopeKind::Discover, &[]);
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
            self.socket.send(to.name(), to.info.addrs.gossip, EnvelopeKind::Foca, &data);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let armed = Armed { due: now + after, armed_at: now, after, factor: self.applied_factor, timer };
            if self.timers.push(armed).is_err() {
                tracing::debug!("timer queue full");
                self.socket.metrics().dropped("timer_overflow");
            }
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.on_notification(notification, now);
        }
    }

    fn on_notification(&mut self, notification: OwnedNotification<GossipIdentity>, now: Instant) {
        let accepted = match notification {
            OwnedNotification::MemberUp(member) => self.tracker.member_up(&member, &mut self.events),
            OwnedNotification::MemberDown(member) => {
                self.tracker.member_down(&member, &mut self.events);
                true
            }
            OwnedNotification::Rename(old, new) => {
                let active = self.is_active(&new);
                self.tracker.renamed(&old, &new, active, &mut self.events)
            }
            OwnedNotification::Active => {
                tracing::info!("membership: joined the cluster");
                true
            }
            OwnedNotification::Idle => {
                tracing::info!("membership: no live peer left; retrying seeds");
                self.next_join_attempt = now;
                true
            }
            OwnedNotification::Defunct => {
                if !self.leaving {
                    tracing::warn!("membership: declared down by the cluster and cannot renew");
                }
                true
            }
            OwnedNotification::Rejoin(identity) => {
                tracing::info!(renew = identity.renew, "membership: rejoined after being declared down");
                true
            }
            #[allow(unreachable_patterns)]
            _ => true,
        };
        if !accepted {
            self.socket.metrics().dropped("members_overflow");
        }
    }

    fn is_active(&self, identity: &GossipIdentity) -> bool {
        self.foca.iter_membership_state().any(|member| member.id() == identity && member.state() != State::Down)
    }

    /// Publishes pending events, then the view and gauges if the view changed.
    fn settle(&mut self) {
        self.shared.touch();
        self.channels.set_backlog(self.foca.custom_broadcast_backlog());
        for event in self.events.drain(..) {
            // An error only means nobody subscribes right now.
            let _ = self.shared.events.send(event);
        }
        let joined = self.seeds.is_empty() || self.foca.num_members() > 0;
        self.shared.joined.store(joined, Ordering::Relaxed);
        let fingerprint = self.fingerprint();
        if self.view_fingerprint == Some(fingerprint) {
            return;
        }
        self.view_fingerprint = Some(fingerprint);
        let view = build_view(
            self.foca.identity(),
            self.leaving,
            self.foca.iter_membership_state().map(|member| (member.id(), member.state())),
        );
        let mut counts = [0i64; 4];
        for row in &view {
            if let Some(index) = MemberState::ALL.iter().position(|state| *state == row.state) {
                counts[index] += 1;
            }
        }
        self.shared.metrics.set_members(counts);
        self.shared.members.store(Arc::new(view));
    }

    /// An order-independent digest of the view (foca reshuffles its member list).
    fn fingerprint(&self) -> u64 {
        let mut digest = hash_one(&(self.foca.identity().renew, self.leaving));
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            let state = view_state(member.state(), id.leaving);
            digest = digest.wrapping_add(hash_one(&(id.name(), id.info.id.incarnation, id.renew, state)));
        }
        digest
    }

    async fn leave(&mut self) {
        self.leaving = true;
        let now = Instant::now();
        if let Some(leaving) = self.foca.identity().leaving() {
            if let Err(error) = self.foca.change_identity(leaving, &mut self.runtime) {
                tracing::debug!(%error, "could not switch to the leaving identity");
            }
            if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
                tracing::debug!(%error, "foca could not leave");
            }
            self.drain(now);
        }
        self.settle();
        // Linger: keep receiving (a peer that talks to us now, even one we had not learned of
        // yet, becomes a gossip target) and re-gossip the leave a few times.
        let mut next_round = now + LEAVE_REGOSSIP_INTERVAL;
        let mut rounds = 0;
        while rounds < LEAVE_REGOSSIP_ROUNDS {
            let wake = self.socket.next_due().map_or(next_round, |due| due.min(next_round));
            let received = tokio::select! {
                biased;
                () = tokio::time::sleep_until(wake.into()) => None,
                received = self.socket.recv() => Some(received),
            };
            let now = Instant::now();
            match received {
                Some(Ok(inbound)) => self.on_inbound(inbound),
                Some(Err(_)) => self.socket.metrics().dropped("recv_failed"),
                None => {}
            }
            self.socket.release_due(now, &mut self.inbound);
            for inbound in std::mem::take(&mut self.inbound) {
                self.on_inbound(inbound);
            }
            if now >= next_round {
                rounds += 1;
                next_round = now + LEAVE_REGOSSIP_INTERVAL;
                if let Err(error) = self.foca.gossip(&mut self.runtime) {
                    tracing::debug!(%error, "could not re-gossip the leave");
                }
                self.drain(now);
            }
            self.settle();
        }
        tracing::info!("membership: left the cluster");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MembershipConfig;
    use crate::membership::identity::tests::info;
    use crate::net::gossip::MAX_ENVELOPE_OVERHEAD;
    use proptest::prelude::*;
    use rand::SeedableRng;

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
}
