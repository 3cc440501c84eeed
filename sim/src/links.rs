//! The transport's class queues in the simulator: every ordered pair of nodes has the real
//! transport's two links (priority: `control` and `raft`; bulk: `pg`, `registry` and `user`),
//! each a production [`PeerQueues`] with its class policies (raft drop-oldest, pg drop-newest
//! and resync, registry drop-newest), drained by a writer at the link's bandwidth.
//!
//! A healthy link's bandwidth is unbounded here: the writer takes every frame at once, so a
//! frame leaves at the instant it was sent and the simulated network (`net.rs`) alone decides
//! when it arrives. A congestion window gives a node's outbound links a bandwidth in bytes per
//! second: frames then wait in their class queues (raft ahead of the bulk classes, the bulk
//! classes by weighted round robin, as the real writer drains them), full queues apply their
//! policies, and what they drop is counted. The frame on the wire leaves the link when its bytes
//! have gone at that bandwidth; when the window ends, it and the backlog go at once (a real link
//! whose bandwidth recovers finishes the rest of a frame at full speed).
//!
//! Invariants: a link with a frame in flight or queued under congestion always has a writer
//! wake-up pending (returned by
//! [`Links::pump`] exactly once until it fires); nothing here reads a clock or draws a random
//! number, so a seed replays exactly.

use std::collections::BTreeMap;

use bytes::Bytes;
use cohort_cluster::NodeId;
use cohort_cluster::queue::{Class, PeerQueues, PushOutcome, QueueConfig, QueueItem};

/// Bytes a frame takes on the wire beyond its payload (the transport's frame header).
pub const FRAME_OVERHEAD: usize = 8;

/// A frame waiting in a class queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// The frame kind (the simulator's, which says the service).
    pub kind: u8,
    /// The sending node's run.
    pub from: NodeId,
    /// The incarnation of the receiving node when the frame was sent (a frame for a run that is
    /// gone is lost, as its connection was).
    pub to_inc: u64,
    /// The body.
    pub payload: Bytes,
}

impl QueueItem for Queued {
    fn wire_len(&self) -> usize {
        self.payload.len() + FRAME_OVERHEAD
    }
}

/// Which of a peer's two connections a class travels on (the transport's `Link`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// `control` and `raft`.
    Priority,
    /// `pg`, `registry` and `user`.
    Bulk,
}

impl Lane {
    /// The lane of `class`, as the transport routes it.
    pub const fn of(class: Class) -> Lane {
        match class {
            Class::Control | Class::Raft => Lane::Priority,
            Class::Pg | Class::Registry | Class::User => Lane::Bulk,
        }
    }
}

/// What the queues did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames pushed into a class queue.
    pub queued: u64,
    /// Oldest frames evicted by a full drop-oldest queue (`raft`, `control`).
    pub dropped_oldest: u64,
    /// New frames dropped by a full drop-newest queue (`pg`, which then resyncs, `registry`).
    pub dropped_newest: u64,
    /// The deepest any one link's queues got, in frames.
    pub max_depth: usize,
}

struct LinkState {
    queues: PeerQueues<Queued>,
    /// The frame on the wire under congestion: it leaves the link at `busy_until`.
    in_flight: Option<Queued>,
    /// Until when the writer is busy with the frame in flight (simulated µs).
    busy_until: u64,
    /// The writer wake-up already handed out, if any.
    wake: Option<u64>,
}

/// Every link's queues and the congestion windows.
pub struct Links {
    config: QueueConfig,
    links: BTreeMap<(usize, usize, Lane), LinkState>,
    /// Per active congestion window: the node whose outbound links it slows, and their bandwidth
    /// in bytes per second.
    congested: BTreeMap<u64, (usize, u64)>,
    /// Counters.
    pub stats: LinkStats,
}

impl Links {
    /// Links whose queues use `config` (validated: an invalid one falls back to the defaults).
    pub fn new(config: QueueConfig) -> Self {
        let config = if config.validate().is_ok() { config } else { QueueConfig::default() };
        Self { config, links: BTreeMap::new(), congested: BTreeMap::new(), stats: LinkStats::default() }
    }

    /// Queues `item` of `class` on `from -> to`; the outcome says what a full queue did.
    pub fn push(&mut self, from: usize, to: usize, class: Class, item: Queued) -> PushOutcome<Queued> {
        let config = self.config;
        let link = self.links.entry((from, to, Lane::of(class))).or_insert_with(|| LinkState {
            queues: PeerQueues::new(config).unwrap_or_else(|_| unreachable_config()),
            in_flight: None,
            busy_until: 0,
            wake: None,
        });
        let outcome = link.queues.push(class, item);
        self.stats.queued += 1;
        match &outcome {
            PushOutcome::DroppedOldest(evicted) => self.stats.dropped_oldest += evicted.len() as u64,
            PushOutcome::DroppedNewest(_) | PushOutcome::Refused(_) => self.stats.dropped_newest += 1,
            PushOutcome::Enqueued => {}
        }
        self.stats.max_depth = self.stats.max_depth.max(link.queues.depth());
        outcome
    }

    /// Clears the pg resync mark of `from -> to` (each scope resyncs on its own drops, as the
    /// real pg shell does).
    pub fn take_resync(&mut self, from: usize, to: usize) -> bool {
        self.links.get_mut(&(from, to, Lane::Bulk)).is_some_and(|l| l.queues.take_resync())
    }

    /// The writer of `from -> to` on `lane` at `now`: the frames that have left the link (each
    /// with that instant, `now`), and the wake-up to schedule (the caller calls `pump` again
    /// then).
    pub fn pump(&mut self, now: u64, from: usize, to: usize, lane: Lane) -> (Vec<(u64, Queued)>, Option<u64>) {
        let bandwidth = self.bandwidth(from);
        let Some(link) = self.links.get_mut(&(from, to, lane)) else { return (Vec::new(), None) };
        if link.wake.is_some_and(|at| at <= now) {
            link.wake = None;
        }
        if now < link.busy_until {
            // A frame is still going out: the writer wakes when it is done.
            if link.wake.is_some() {
                return (Vec::new(), None);
            }
            link.wake = Some(link.busy_until);
            return (Vec::new(), link.wake);
        }
        let mut out: Vec<(u64, Queued)> = link.in_flight.take().map(|f| (now, f)).into_iter().collect();
        let Some(bytes_per_second) = bandwidth else {
            out.extend(link.queues.pop_batch(usize::MAX, usize::MAX).into_iter().map(|(_, f)| (now, f)));
            return (out, None);
        };
        let Some((_, frame)) = link.queues.pop() else { return (out, None) };
        let took = (frame.wire_len() as u64 * 1_000_000).div_ceil(bytes_per_second.max(1)).max(1);
        link.busy_until = now + took;
        link.in_flight = Some(frame);
        link.wake = Some(link.busy_until);
        (out, link.wake)
    }

    /// Slows `node`'s outbound links to `bytes_per_second` under fault `id`.
    pub fn congest(&mut self, id: u64, node: usize, bytes_per_second: u64) {
        self.congested.insert(id, (node, bytes_per_second));
    }

    /// Ends congestion window `id`, if it was one, at `now`: the links it slowed that no other
    /// window slows finish the frame in flight at once (the rest of it goes at full speed, as
    /// on a real link whose bandwidth recovers) and are returned, for the caller to pump now.
    pub fn heal(&mut self, id: u64, now: u64) -> Vec<(usize, usize, Lane)> {
        let Some((node, _)) = self.congested.remove(&id) else { return Vec::new() };
        if self.bandwidth(node).is_some() {
            return Vec::new();
        }
        self.release(now, |from| from == node)
    }

    /// Links out of the nodes `which` selects that are busy past `now`: no longer busy, and the
    /// ones with frames waiting, to pump.
    fn release(&mut self, now: u64, which: impl Fn(usize) -> bool) -> Vec<(usize, usize, Lane)> {
        let mut pump = Vec::new();
        for (&(from, to, lane), link) in self.links.iter_mut().filter(|((from, _, _), _)| which(*from)) {
            if link.busy_until > now {
                link.busy_until = now;
                link.wake = None;
                pump.push((from, to, lane));
            }
        }
        pump
    }

    /// Whether any congestion window is active (availability is then a matter of degree).
    pub fn congested(&self) -> bool {
        !self.congested.is_empty()
    }

    /// Ends every congestion window at `now`; the links to pump now (see [`Links::heal`]).
    pub fn heal_all(&mut self, now: u64) -> Vec<(usize, usize, Lane)> {
        self.congested.clear();
        self.release(now, |_| true)
    }

    /// `node` stopped: its outbound queues are lost with it.
    pub fn clear_node(&mut self, node: usize) {
        self.links.retain(|(from, _, _), _| *from != node);
    }

    /// The bandwidth of `node`'s outbound links: the narrowest active window's, or unbounded.
    fn bandwidth(&self, node: usize) -> Option<u64> {
        self.congested.values().filter(|(n, _)| *n == node).map(|(_, b)| *b).min()
    }
}

/// `Links::new` validated the configuration, so `PeerQueues::new` cannot refuse it.
fn unreachable_config() -> PeerQueues<Queued> {
    PeerQueues::new(QueueConfig::default()).expect("the default queue configuration is valid")
}

#[cfg(test)]
mod tests {
    use cohort_cluster::queue::ClassCapacities;

    use super::*;

    fn frame(kind: u8, len: usize) -> Queued {
        Queued { kind, from: NodeId::new("n0", 1), to_inc: 1, payload: Bytes::from(vec![0; len]) }
    }

    fn tight(capacity: usize) -> QueueConfig {
        QueueConfig {
            capacity: ClassCapacities {
                control: capacity,
                raft: capacity,
                pg: capacity,
                registry: capacity,
                user: capacity,
            },
            ..QueueConfig::default()
        }
    }

    #[test]
    fn a_healthy_link_sends_every_frame_at_once_in_order() {
        let mut links = Links::new(QueueConfig::default());
        for i in 0..3 {
            assert!(links.push(0, 1, Class::Raft, frame(i, 100)).is_enqueued());
        }
        let (frames, wake) = links.pump(50, 0, 1, Lane::Priority);
        assert_eq!(frames.iter().map(|(at, f)| (*at, f.kind)).collect::<Vec<_>>(), vec![(50, 0), (50, 1), (50, 2)]);
        assert_eq!(wake, None);
    }

    #[test]
    fn a_congested_link_paces_frames_by_bandwidth_with_one_wake_up_pending() {
        let mut links = Links::new(QueueConfig::default());
        links.congest(9, 0, 1_000); // 1 kB/s: a 92-byte payload (100 on the wire) takes 100 ms
        for i in 0..3 {
            let _ = links.push(0, 1, Class::Raft, frame(i, 92));
        }
        // The first frame goes on the wire; it has left at 100 ms.
        assert_eq!(links.pump(0, 0, 1, Lane::Priority), (Vec::new(), Some(100_000)));
        // More frames meanwhile: no second wake-up while one is pending.
        let _ = links.push(0, 1, Class::Raft, frame(3, 92));
        assert_eq!(links.pump(10, 0, 1, Lane::Priority), (Vec::new(), None));
        let (frames, wake) = links.pump(100_000, 0, 1, Lane::Priority);
        assert_eq!((frames.len(), frames[0].0, frames[0].1.kind, wake), (1, 100_000, 0, Some(200_000)));
        // The window ends: the frame in flight and the rest go at once.
        assert_eq!(links.heal(9, 150_000), vec![(0, 1, Lane::Priority)]);
        let (frames, wake) = links.pump(150_000, 0, 1, Lane::Priority);
        assert_eq!(
            frames.iter().map(|(at, f)| (*at, f.kind)).collect::<Vec<_>>(),
            vec![(150_000, 1), (150_000, 2), (150_000, 3)]
        );
        assert_eq!(wake, None);
    }

    #[test]
    fn full_queues_apply_their_class_policies_and_raft_goes_first() {
        let mut links = Links::new(tight(2));
        links.congest(1, 0, 10);
        for i in 0..4 {
            let _ = links.push(0, 1, Class::Raft, frame(i, 10));
        }
        assert!(matches!(links.push(0, 1, Class::Pg, frame(10, 10)), PushOutcome::Enqueued));
        assert!(matches!(links.push(0, 1, Class::Pg, frame(11, 10)), PushOutcome::Enqueued));
        assert!(matches!(links.push(0, 1, Class::Pg, frame(12, 10)), PushOutcome::DroppedNewest(_)));
        assert!(links.take_resync(0, 1));
        assert!(!links.take_resync(0, 1));
        assert_eq!((links.stats.dropped_oldest, links.stats.dropped_newest), (2, 1));
        // Raft kept its two newest.
        links.heal(1, 0);
        let (frames, _) = links.pump(0, 0, 1, Lane::Priority);
        assert_eq!(frames.iter().map(|(_, f)| f.kind).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_frame_in_flight_when_the_window_ends_finishes_at_full_speed() {
        let mut links = Links::new(QueueConfig::default());
        links.congest(1, 0, 100); // 100 B/s: a 1 MiB frame would take three hours
        let _ = links.push(0, 1, Class::Raft, frame(1, 1 << 20));
        let _ = links.push(0, 1, Class::Raft, frame(2, 10));
        let (none, wake) = links.pump(0, 0, 1, Lane::Priority);
        assert!(none.is_empty() && wake.is_some_and(|at| at > 3_600_000_000));
        // The window ends after 2 s: the big frame finishes at once, the small one follows.
        assert_eq!(links.heal(1, 2_000_000), vec![(0, 1, Lane::Priority)]);
        let (rest, wake) = links.pump(2_000_000, 0, 1, Lane::Priority);
        assert_eq!(rest.iter().map(|(at, f)| (*at, f.kind)).collect::<Vec<_>>(), vec![(2_000_000, 1), (2_000_000, 2)]);
        assert_eq!(wake, None);
    }

    #[test]
    fn a_stopped_node_loses_its_outbound_queues() {
        let mut links = Links::new(QueueConfig::default());
        links.congest(1, 0, 10);
        let _ = links.push(0, 1, Class::Registry, frame(1, 10));
        links.clear_node(0);
        assert_eq!(links.pump(1_000_000_000, 0, 1, Lane::Bulk), (Vec::new(), None));
    }
}
