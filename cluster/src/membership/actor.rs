//! The membership actor: the shell around the [`MembershipDriver`] (STYLE section 7, as `quinn`
//! is to `quinn-proto`). It owns the I/O and nothing it decides: the gossip socket (authentication,
//! fault injection, delayed datagrams), the clock, the command and broadcast channels, the seed
//! resolver's watch, and what it publishes for the handles.
//!
//! Role: every step is one input: a command, a deadline (the driver's [`poll_timeout`] or the
//! socket's next delayed datagram), a batch of custom broadcast items, or a received envelope;
//! it is fed to the driver with `Instant::now()`, then the driver's outputs are performed in
//! order: envelopes sent (`try_send_to`, never blocking), events published on the broadcast
//! channel, the view and its gauges stored if it changed, the driver's counters added to the
//! metrics. Joining, failure detection, local health, stuck suspicions and the leave's re-gossip
//! rounds are the driver's (see `super::driver` for how and why).
//!
//! Invariants: nothing blocks the loop (sends are `try_send_to`, DNS runs in its own task); the
//! event order subscribers see is the order the driver reports; commands come first, then
//! deadlines, then broadcasts, then datagrams when several are ready.
//!
//! [`poll_timeout`]: MembershipDriver::poll_timeout

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use super::driver::{DriverStats, MembershipDriver};
use crate::net::gossip::{Envelope, GossipMetrics, GossipSocket, Inbound};
use crate::{MemberState, MemberView, NodeId};

/// The back-off after a socket receive error, so a persistent error cannot spin the loop.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The most custom broadcast items the actor takes from its queue in one step, so a burst cannot
/// hold the loop away from timers and datagrams.
const BROADCAST_BATCH: usize = 256;

/// What a handle asks of the actor.
pub(super) enum Command {
    /// Leave gracefully, answer, and stop.
    Leave(oneshot::Sender<()>),
    /// The transport's evidence that this member's process is gone (a refused connection).
    ConnectionRefused(NodeId),
}

/// Where the actor's seed addresses come from.
pub(super) enum Seeds {
    /// Literal socket addresses, fixed.
    Fixed(Vec<SocketAddr>),
    /// Host names, kept resolved by a background task (aborted with the actor).
    Resolved { addrs: watch::Receiver<Vec<SocketAddr>>, _resolver: AbortOnDrop },
}

impl Seeds {
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

enum Step {
    Command(Option<Command>),
    Deadline,
    Broadcast(Option<Vec<u8>>),
    Received(io::Result<Inbound>),
}

/// The membership actor.
pub(super) struct Actor {
    driver: MembershipDriver,
    socket: GossipSocket,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    broadcasts: mpsc::Receiver<Vec<u8>>,
    seeds: Seeds,
    /// The socket's bound address: a seed list usually names every seed, this node included.
    local_addr: Option<SocketAddr>,
    /// The driver's counters as last added to the metrics.
    published: DriverStats,
    inbound: Vec<Inbound>,
}

impl Actor {
    pub(super) fn new(
        driver: MembershipDriver,
        socket: GossipSocket,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        broadcasts: mpsc::Receiver<Vec<u8>>,
        seeds: Seeds,
    ) -> Self {
        let local_addr = socket.local_addr().ok();
        // This node is not a peer of itself.
        let seeds = match seeds {
            Seeds::Fixed(addrs) => Seeds::Fixed(addrs.into_iter().filter(|addr| Some(*addr) != local_addr).collect()),
            resolved => resolved,
        };
        let mut actor = Self {
            driver,
            socket,
            shared,
            commands,
            broadcasts,
            seeds,
            local_addr,
            published: DriverStats::default(),
            inbound: Vec::new(),
        };
        if let Seeds::Fixed(addrs) = &actor.seeds {
            actor.driver.handle_seeds(Instant::now(), addrs.iter().copied());
        }
        actor
    }

    /// Runs until a leave completes or every handle is gone.
    pub(super) async fn run(mut self) {
        self.settle();
        loop {
            let deadline = self.next_deadline();
            let step = tokio::select! {
                biased;
                command = self.commands.recv() => Step::Command(command),
                () = sleep_until(deadline) => Step::Deadline,
                item = self.broadcasts.recv() => Step::Broadcast(item),
                received = self.socket.recv() => Step::Received(received),
            };
            match step {
                Step::Command(Some(Command::Leave(reply))) => {
                    self.leave().await;
                    let _ = reply.send(());
                    return;
                }
                Step::Command(Some(Command::ConnectionRefused(peer))) => {
                    self.driver.handle_connection_refused(Instant::now(), &peer);
                }
                Step::Command(None) => return,
                Step::Deadline => {
                    let now = Instant::now();
                    self.refresh_seeds(now);
                    self.driver.handle_timeout(now);
                    self.release_delayed(now);
                }
                Step::Broadcast(Some(first)) => {
                    let mut items = vec![first];
                    while items.len() < BROADCAST_BATCH {
                        let Ok(item) = self.broadcasts.try_recv() else { break };
                        items.push(item);
                    }
                    self.driver.handle_broadcast_items(Instant::now(), items);
                }
                // Every handle is gone; the command arm ends the loop.
                Step::Broadcast(None) => {}
                Step::Received(Ok(inbound)) => self.deliver(Instant::now(), &inbound),
                Step::Received(Err(error)) => {
                    tracing::debug!(%error, "gossip socket receive failed");
                    self.socket.metrics().dropped("recv_failed");
                    tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                }
            }
            self.settle();
        }
    }

    /// The earlier of the driver's timeout and the socket's next delayed datagram.
    fn next_deadline(&self) -> Option<Instant> {
        match (self.driver.poll_timeout(), self.socket.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Feeds the driver the seed resolver's latest addresses, if they changed.
    fn refresh_seeds(&mut self, now: Instant) {
        let Seeds::Resolved { addrs, .. } = &mut self.seeds else { return };
        if !addrs.has_changed().unwrap_or(false) {
            return;
        }
        let local_addr = self.local_addr;
        let current: Vec<SocketAddr> = addrs.borrow_and_update().iter().copied().collect();
        self.driver.handle_seeds(now, current.into_iter().filter(|addr| Some(*addr) != local_addr));
    }

    /// Hands the driver the fault-delayed inbound envelopes now due (and sends the due outbound).
    fn release_delayed(&mut self, now: Instant) {
        self.socket.release_due(now, &mut self.inbound);
        for inbound in std::mem::take(&mut self.inbound) {
            self.deliver(now, &inbound);
        }
    }

    fn deliver(&mut self, now: Instant, inbound: &Inbound) {
        let envelope = Envelope { kind: inbound.kind, sender: &inbound.sender, body: &inbound.body };
        self.driver.handle_envelope(now, inbound.from, envelope);
    }

    /// Performs the driver's outputs: sends, then events, then the view, gauges and counters.
    fn settle(&mut self) {
        while let Some(transmit) = self.driver.poll_transmit() {
            self.socket.send(transmit.to_name.as_deref().unwrap_or(""), transmit.to, &transmit.payload);
        }
        self.shared.touch();
        while let Some(event) = self.driver.poll_event() {
            // An error only means nobody subscribes right now.
            let _ = self.shared.events.send(event);
        }
        let joined = self.seeds.is_empty() || self.driver.has_live_peers();
        self.shared.joined.store(joined, Ordering::Relaxed);
        self.shared.set_health_factor(self.driver.health_factor());
        self.publish_stats();
        if let Some(view) = self.driver.poll_view() {
            self.shared.metrics.set_members(count_states(&view));
            self.shared.members.store(Arc::new(view));
        }
    }

    /// Adds what the driver counted since the last call to the metrics.
    fn publish_stats(&mut self) {
        let now = self.driver.stats();
        if now == self.published {
            return;
        }
        let was = std::mem::replace(&mut self.published, now);
        let metrics = self.socket.metrics();
        bump(metrics, "rejected", now.rejected, was.rejected);
        bump(metrics, "malformed", now.malformed, was.malformed);
        bump(metrics, "timer_overflow", now.timer_overflow, was.timer_overflow);
        bump(metrics, "members_overflow", now.members_overflow, was.members_overflow);
        bump(metrics, "members_overflow", now.events_dropped, was.events_dropped);
        bump(metrics, "send_failed", now.transmits_dropped, was.transmits_dropped);
        self.shared.metrics.stuck_suspicions.inc_by(now.stuck_suspicions.saturating_sub(was.stuck_suspicions));
        let refused = &self.shared.metrics.refused_connections;
        for (action, current, before) in [
            ("suspect", now.refused_suspicions, was.refused_suspicions),
            ("down", now.refused_downs, was.refused_downs),
            ("untracked", now.refusals_untracked, was.refusals_untracked),
        ] {
            refused.with_label_values(&[action]).inc_by(current.saturating_sub(before));
        }
    }

    /// Leaves through the driver, then lingers until its re-gossip rounds are done: still
    /// receiving (a peer that talks to us now, even one we had not learned of yet, becomes a
    /// gossip target) and sending.
    async fn leave(&mut self) {
        self.driver.handle_leave(Instant::now());
        self.settle();
        while !self.driver.has_left() {
            let received = tokio::select! {
                biased;
                () = sleep_until(self.next_deadline()) => None,
                received = self.socket.recv() => Some(received),
            };
            let now = Instant::now();
            match received {
                Some(Ok(inbound)) => self.deliver(now, &inbound),
                Some(Err(_)) => self.socket.metrics().dropped("recv_failed"),
                None => {}
            }
            self.release_delayed(now);
            self.driver.handle_timeout(now);
            self.settle();
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Adds `now - was` drops of `reason`.
fn bump(metrics: &GossipMetrics, reason: &'static str, now: u64, was: u64) {
    metrics.dropped_many(reason, now.saturating_sub(was));
}

/// Members per state, indexed like [`MemberState::ALL`].
fn count_states(view: &[MemberView]) -> [i64; 4] {
    let mut counts = [0i64; 4];
    for row in view {
        if let Some(index) = MemberState::ALL.iter().position(|state| *state == row.state) {
            counts[index] += 1;
        }
    }
    counts
}
