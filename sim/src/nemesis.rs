//! The nemesis: a schedule of composed faults drawn from the seed before the run starts.
//!
//! Faults overlap (a new one may start while others are active), target the node that leads at
//! the moment they start or a follower or any node, and each ends on its own after its duration.
//! The schedule is printed in the trace, so a failing seed says which sequence broke what.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;

/// Which faults a run composes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultProfile {
    /// No faults (a baseline).
    None,
    /// Network faults only: isolations, minority partitions, one-way cuts.
    Partitions,
    /// Process faults only: crashes (durable state kept) and pauses.
    Crashes,
    /// Everything: partitions, crashes, pauses, clock jumps, loss, duplication, delay, reordering.
    #[default]
    Composed,
    /// `composed` plus membership churn (graceful leaves, after which the node rejoins with a
    /// new incarnation and its durable log, and spare nodes joining the running cluster) and
    /// congested links, on transport queues drawn small enough to fill.
    All,
}

impl FromStr for FaultProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "partitions" => Ok(Self::Partitions),
            "crashes" => Ok(Self::Crashes),
            "composed" => Ok(Self::Composed),
            "all" => Ok(Self::All),
            other => Err(format!("unknown fault profile {other:?} (none, partitions, crashes, composed, all)")),
        }
    }
}

impl fmt::Display for FaultProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Partitions => "partitions",
            Self::Crashes => "crashes",
            Self::Composed => "composed",
            Self::All => "all",
        })
    }
}

/// Whom a fault hits, resolved when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The node that leads the raft group then (any node when none does).
    Leader,
    /// A running node that does not lead.
    Follower,
    /// Any node.
    Any,
}

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Cut every link of one node, both ways.
    Isolate(Target),
    /// Split a random minority of this size (with the target in it) from the rest.
    Partition(Target, usize),
    /// Cut one direction between the target and another node.
    OneWay(Target),
    /// Kill the node (its durable raft state survives) and restart it, with a new incarnation,
    /// when the fault ends.
    Crash(Target),
    /// Stop the node's processing (timers and inbound frames wait) until the fault ends.
    Pause(Target),
    /// Move the node's clock forward by this much at once (its timers fire late, then catch up).
    ClockJump(Target, Duration),
    /// Drop (and sometimes duplicate) frames with this probability on every link.
    Lossy(f64),
    /// Delay frames by up to this much more on every link, reordering them.
    Slow(Duration),
    /// The node leaves the cluster gracefully (membership says `Left`, its services stop) and,
    /// when the fault ends, starts again with a new incarnation from its durable log.
    Leave(Target),
    /// A node that was never started (a spare) joins the running cluster for good.
    Join,
    /// The node's outbound transport links carry only this many bytes per second: frames wait
    /// in their class queues, full queues drop by their class's policy.
    Congest(Target, u64),
}

/// A fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    /// When it starts (simulated time since the run began).
    pub at: Duration,
    /// What it is.
    pub fault: Fault,
    /// How long it lasts (zero for a clock jump).
    pub lasts: Duration,
}

fn secs(rng: &mut StdRng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(lo..hi))
}

fn target(rng: &mut StdRng) -> Target {
    match rng.random_range(0..3) {
        0 => Target::Leader,
        1 => Target::Follower,
        _ => Target::Any,
    }
}

/// How many spare nodes an `all` run has: they join the running cluster (one [`Fault::Join`]
/// each at most).
pub const CHURN_SPARES: usize = 2;

/// The schedule of a run: faults starting between `start` and `end` (the nemesis is quiet
/// outside), drawn from `rng`. `nodes` counts the nodes started at the beginning (spares apart).
pub fn plan(rng: &mut StdRng, profile: FaultProfile, nodes: usize, start: Duration, end: Duration) -> Vec<Planned> {
    let mut out = Vec::new();
    if profile == FaultProfile::None || nodes < 2 {
        return out;
    }
    let mut joins = 0;
    let mut at = start + secs(rng, 0.0, 3.0);
    while at < end {
        let pick = match profile {
            FaultProfile::Partitions => rng.random_range(0..3),
            FaultProfile::Crashes => 3 + rng.random_range(0..2),
            FaultProfile::All => rng.random_range(0..15),
            _ => rng.random_range(0..10),
        };
        // A leave lasts long enough for the ladder to replace the node (it is `Left` at
        // once) and for the rejoin to be a real reconfiguration.
        let pick = if pick == 12 && joins == CHURN_SPARES { 10 } else { pick };
        if pick == 12 {
            joins += 1;
        }
        let (fault, lasts) = match pick {
            0 | 8 => (Fault::Isolate(target(rng)), secs(rng, 1.0, 15.0)),
            1 => {
                let largest = ((nodes - 1) / 2).max(1);
                (Fault::Partition(target(rng), 1 + rng.random_range(0..largest)), secs(rng, 1.0, 15.0))
            }
            2 => (Fault::OneWay(target(rng)), secs(rng, 1.0, 10.0)),
            3 | 9 => (Fault::Crash(target(rng)), secs(rng, 0.5, 15.0)),
            4 => (Fault::Pause(target(rng)), secs(rng, 0.3, 5.0)),
            5 => (Fault::ClockJump(target(rng), secs(rng, 0.5, 10.0)), Duration::ZERO),
            6 => (Fault::Lossy(rng.random_range(0.05..0.3)), secs(rng, 1.0, 10.0)),
            10 | 11 => (Fault::Leave(target(rng)), secs(rng, 3.0, 25.0)),
            12 => (Fault::Join, Duration::ZERO),
            13 | 14 => (Fault::Congest(target(rng), rng.random_range(100..2_000)), secs(rng, 1.0, 10.0)),
            _ => (Fault::Slow(Duration::from_micros(rng.random_range(5_000..300_000))), secs(rng, 1.0, 10.0)),
        };
        out.push(Planned { at, fault, lasts });
        at += secs(rng, 0.5, 6.0);
    }
    out
}
