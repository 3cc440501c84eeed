//! The registry's Prometheus series (SPEC 10): names by tier, operations by result, conflicts,
//! revocations, tombstones, anti-entropy rounds and shards repaired, delta bytes.
//!
//! Invariants: registered once per node at boot with every labelled series present at 0 (the
//! safety counters especially: conflicts, revocations, refused frames); labels are bounded enums
//! (tier, operation, result, reason), never a name or a pid.

use cohort_actors::admission::{self, AdmissionCounter};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::{RegistryError, Tier};

/// Results an operation is counted under.
pub const RESULTS: [&str; 13] = [
    "ok",
    "already_registered",
    "not_hosted",
    "not_registered",
    "not_found",
    "invalid_name",
    "too_many_names",
    "held_in_other_tier",
    "unavailable",
    "not_leader",
    "timed_out",
    "queue_saturated",
    "read_refused",
];

/// Operations counted.
pub const OPERATIONS: [&str; 3] = ["register", "unregister", "lookup"];

/// Reasons an anti-entropy or gossip input is refused.
pub const REFUSALS: [&str; 10] = [
    "malformed",
    "version",
    "out_of_bounds",
    "too_large",
    "invalid_dot",
    "rate_limited",
    "unknown_kind",
    "busy",
    "departed_peer",
    "over_bound",
];

/// The registry's series.
#[derive(Clone)]
pub struct RegistryMetrics {
    names: IntGaugeVec,
    operations: IntCounterVec,
    pub(crate) conflicts: IntCounter,
    pub(crate) revocations: IntCounter,
    pub(crate) tombstones: IntGauge,
    pub(crate) tombstones_collected: IntCounterVec,
    pub(crate) ae_rounds: IntCounterVec,
    pub(crate) shards_repaired: IntCounter,
    pub(crate) delta_bytes: IntCounterVec,
    pub(crate) deltas: IntCounterVec,
    pub(crate) refused: IntCounterVec,
    /// `cohort_admissions_total{work="registry_local|registry_eventual|registry_consistent"}`,
    /// indexed like [`Tier::ALL`].
    admissions: [AdmissionCounter; 3],
}

/// The admission reasons a write of `tier` can end with (see [`RegistryError::write_admission`]).
fn write_reasons(tier: Tier) -> &'static [&'static str] {
    match tier {
        Tier::Local | Tier::Eventual => &["Accepted", "NotHosted", "QueueSaturated"],
        Tier::Consistent => &["Accepted", "NotHosted", "NotLeader", "TimedOut", "QueueSaturated", "Canceled"],
    }
}

fn admission_work(tier: Tier) -> &'static str {
    match tier {
        Tier::Local => admission::REGISTRY_LOCAL,
        Tier::Eventual => admission::REGISTRY_EVENTUAL,
        Tier::Consistent => admission::REGISTRY_CONSISTENT,
    }
}

fn tier_index(tier: Tier) -> usize {
    Tier::ALL.iter().position(|t| *t == tier).unwrap_or(0)
}

impl RegistryMetrics {
    /// Creates and registers every series, at 0.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let names = IntGaugeVec::new(
            Opts::new(
                "cohort_registry_names",
                "Names visible on this node, by tier (eventual: names with a live owner).",
            ),
            &["tier"],
        )?;
        let operations = IntCounterVec::new(
            Opts::new(
                "cohort_registry_operations_total",
                "Registry operations on this node by tier, operation and result.",
            ),
            &["tier", "operation", "result"],
        )?;
        let conflicts = IntCounter::new(
            "cohort_registry_conflicts_total",
            "Eventual-tier merges that moved a name from one live owner to another (concurrent registrations).",
        )?;
        let revocations = IntCounter::new(
            "cohort_registry_revocations_total",
            "Local processes told NameRevoked because another owner won their eventual name.",
        )?;
        let tombstones =
            IntGauge::new("cohort_registry_tombstones", "Eventual-tier tombstones held, awaiting collection.")?;
        let tombstones_collected = IntCounterVec::new(
            Opts::new(
                "cohort_registry_tombstones_collected_total",
                "Eventual-tier tombstones collected: normally (seen by every live node) or early (over the bound).",
            ),
            &["how"],
        )?;
        let ae_rounds = IntCounterVec::new(
            Opts::new(
                "cohort_registry_anti_entropy_rounds_total",
                "Anti-entropy digest exchanges answered by this node: matched (nothing to repair) or repaired.",
            ),
            &["result"],
        )?;
        let shards_repaired = IntCounter::new(
            "cohort_registry_anti_entropy_shards_repaired_total",
            "Eventual-tier shards received from a peer whose merge changed this node's state.",
        )?;
        let delta_bytes = IntCounterVec::new(
            Opts::new(
                "cohort_registry_delta_bytes_total",
                "Bytes of eventual-tier gossip deltas and anti-entropy frames, by direction and path.",
            ),
            &["direction", "path"],
        )?;
        let deltas = IntCounterVec::new(
            Opts::new(
                "cohort_registry_gossip_deltas_total",
                "Eventual-tier gossip deltas: sent, received new or stale, or not gossiped (left to anti-entropy).",
            ),
            &["outcome"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "cohort_registry_refused_total",
                "Eventual-tier peer input refused (and dropped) by reason; the node keeps running.",
            ),
            &["reason"],
        )?;
        for collector in [
            Box::new(names.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(operations.clone()),
            Box::new(conflicts.clone()),
            Box::new(revocations.clone()),
            Box::new(tombstones.clone()),
            Box::new(tombstones_collected.clone()),
            Box::new(ae_rounds.clone()),
            Box::new(shards_repaired.clone()),
            Box::new(delta_bytes.clone()),
            Box::new(deltas.clone()),
            Box::new(refused.clone()),
        ] {
            registry.register(collector)?;
        }
        for tier in Tier::ALL {
            names.with_label_values(&[tier.as_str()]).set(0);
            for operation in OPERATIONS {
                for result in RESULTS {
                    operations.with_label_values(&[tier.as_str(), operation, result]).inc_by(0);
                }
            }
        }
        for how in ["normal", "early"] {
            tombstones_collected.with_label_values(&[how]).inc_by(0);
        }
        for result in ["matched", "repaired"] {
            ae_rounds.with_label_values(&[result]).inc_by(0);
        }
        for direction in ["out", "in"] {
            for path in ["gossip", "anti_entropy"] {
                delta_bytes.with_label_values(&[direction, path]).inc_by(0);
            }
        }
        for outcome in ["sent", "received_new", "received_stale", "not_gossiped"] {
            deltas.with_label_values(&[outcome]).inc_by(0);
        }
        for reason in REFUSALS {
            refused.with_label_values(&[reason]).inc_by(0);
        }
        let admission = |tier| AdmissionCounter::register(registry, admission_work(tier), write_reasons(tier));
        let admissions = [admission(Tier::ALL[0])?, admission(Tier::ALL[1])?, admission(Tier::ALL[2])?];
        Ok(Self {
            names,
            operations,
            conflicts,
            revocations,
            tombstones,
            tombstones_collected,
            ae_rounds,
            shards_repaired,
            delta_bytes,
            deltas,
            refused,
            admissions,
        })
    }

    /// Counts the admission verdict of one register or unregister in `tier` (`None`: it succeeded).
    pub(crate) fn write_admission(&self, tier: Tier, error: Option<&RegistryError>) {
        let reason = match error {
            None => "Accepted",
            Some(error) => match error.write_admission() {
                Some(reason) => reason,
                None => return,
            },
        };
        self.admissions[tier_index(tier)].count(reason, 1);
    }

    /// Counts one operation.
    pub(crate) fn operation(&self, tier: Tier, operation: &str, result: &str) {
        self.operations.with_label_values(&[tier.as_str(), operation, result]).inc();
    }

    /// Sets the visible-name gauge of `tier`.
    pub(crate) fn set_names(&self, tier: Tier, count: usize) {
        self.names.with_label_values(&[tier.as_str()]).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn refuse(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    pub(crate) fn bytes(&self, direction: &str, path: &str, n: usize) {
        self.delta_bytes.with_label_values(&[direction, path]).inc_by(n as u64);
    }

    pub(crate) fn delta(&self, outcome: &str) {
        self.deltas.with_label_values(&[outcome]).inc();
    }
}

#[cfg(test)]
mod tests {
    use cohort_actors::Pid;
    use cohort_cluster::NodeId;

    use super::*;

    #[test]
    fn registry_writes_count_admissions_by_tier_with_declared_reasons() {
        let m = RegistryMetrics::register(&Registry::new()).unwrap();
        let pid = Pid::new(NodeId::new("a", 1), 1);
        let errors = [
            RegistryError::AlreadyRegistered { tier: Tier::Local, pid: pid.clone() },
            RegistryError::NotRegistered { tier: Tier::Eventual },
            RegistryError::NotHosted { pid },
            RegistryError::TooManyNames { tier: Tier::Eventual, max: 1 },
            RegistryError::NotLeader { leader_hint: None },
            RegistryError::TimedOut,
            RegistryError::QueueSaturated { class: "raft_mailbox".into() },
            RegistryError::Canceled,
            RegistryError::InvalidName { reason: String::new() },
            RegistryError::Unavailable { reason: String::new() },
        ];
        // Local and eventual writes end only with these; consistent writes with any of them.
        let local_errors = &errors[..4];
        for error in &errors {
            if let Some(reason) = error.write_admission() {
                assert!(write_reasons(Tier::Consistent).contains(&reason), "{error:?} -> {reason}");
            }
        }
        for error in local_errors {
            let reason = error.write_admission().unwrap();
            assert!(write_reasons(Tier::Local).contains(&reason), "{error:?} -> {reason}");
        }
        m.write_admission(Tier::Eventual, None);
        m.write_admission(Tier::Eventual, Some(&errors[3]));
        m.write_admission(Tier::Eventual, Some(&errors[8]));
        let eventual = &m.admissions[tier_index(Tier::Eventual)];
        assert_eq!((eventual.get("Accepted"), eventual.get("QueueSaturated")), (1, 1));
        assert_eq!(m.admissions[tier_index(Tier::Local)].get("Accepted"), 0);
    }
}
