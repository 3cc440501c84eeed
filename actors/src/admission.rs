//! The execution plane's admission verdicts (SPEC 8) as one Prometheus family,
//! `cohort_admissions_total{work, reason}`: for each kind of work entering the node (remote sends,
//! fenced sends, group broadcasts, registry writes per tier), how often it was taken in (`Accepted`)
//! or refused, and why.
//!
//! Role: each subsystem that admits work registers its own slice of the family with
//! [`AdmissionCounter::register`], a constant `work` label and the reasons it can produce. The
//! `prometheus` registry merges collectors of one name into one family when it gathers, so
//! `/metrics` shows a single family without one handle threaded through every subsystem's start.
//!
//! Invariants: `work` is one of [`WORKS`] and `reason` one of [`REASONS`] (bounded, never a name,
//! a pid or a peer); every reason a slice declares is exported at 0 from registration; each slice
//! is registered once per node registry (a second one is refused as a duplicate).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The family's name.
pub const NAME: &str = "cohort_admissions_total";

/// One help text for every slice: the registry refuses slices of one name whose help differs.
const HELP: &str = "Work entering this node by kind of work and Admission verdict (Accepted or the refusal reason).";

/// The SPEC 8 `Admission` reasons, spelled as `cohort_registry`'s `Admission::reason` (a test
/// there checks the two lists are equal).
pub const REASONS: [&str; 8] = [
    "Accepted",
    "NotLeader",
    "EpochMismatch",
    "NotHosted",
    "Canceled",
    "TimedOut",
    "QueueSaturated",
    "SchedulerDegraded",
];

/// A send to a process of another node, at the sending node (plain or fenced).
pub const REMOTE_SEND: &str = "remote_send";
/// A send by consistent name carrying a fencing token, at the node hosting the target.
pub const FENCED_SEND: &str = "fenced_send";
/// One recipient of a pg broadcast: a local member's mailbox, or a frame towards a node with members.
pub const BROADCAST: &str = "broadcast";
/// A register or unregister in the local tier.
pub const REGISTRY_LOCAL: &str = "registry_local";
/// A register or unregister in the eventual tier.
pub const REGISTRY_EVENTUAL: &str = "registry_eventual";
/// A register or unregister in the consistent tier.
pub const REGISTRY_CONSISTENT: &str = "registry_consistent";

/// Every value of the `work` label.
pub const WORKS: [&str; 6] =
    [REMOTE_SEND, FENCED_SEND, BROADCAST, REGISTRY_LOCAL, REGISTRY_EVENTUAL, REGISTRY_CONSISTENT];

/// One subsystem's slice of `cohort_admissions_total`: a fixed `work`, counters by reason. Cheap to
/// clone.
#[derive(Clone)]
pub struct AdmissionCounter {
    by_reason: IntCounterVec,
    /// The declared reasons' counters, resolved once: counting on a send path is one atomic add.
    resolved: Vec<(&'static str, IntCounter)>,
}

impl AdmissionCounter {
    /// Registers the slice for `work` with `reasons` at 0. `work` must be one of [`WORKS`] and each
    /// reason one of [`REASONS`] (checked: a typo would create an undocumented series).
    pub fn register(
        registry: &Registry,
        work: &'static str,
        reasons: &[&'static str],
    ) -> Result<Self, prometheus::Error> {
        if !WORKS.contains(&work) {
            return Err(prometheus::Error::Msg(format!("{NAME}: unknown work {work:?}")));
        }
        if let Some(bad) = reasons.iter().find(|r| !REASONS.contains(r)) {
            return Err(prometheus::Error::Msg(format!("{NAME}: unknown reason {bad:?}")));
        }
        let by_reason = IntCounterVec::new(Opts::new(NAME, HELP).const_label("work", work), &["reason"])?;
        registry.register(Box::new(by_reason.clone()))?;
        let resolved = reasons.iter().map(|r| (*r, by_reason.with_label_values(&[r]))).collect();
        Ok(Self { by_reason, resolved })
    }

    /// Counts `n` verdicts of `reason` (one of [`REASONS`]; one the slice did not declare is still
    /// counted, as a series created on first use).
    pub fn count(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        debug_assert!(REASONS.contains(&reason), "{reason} is not an Admission reason");
        match self.resolved.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => counter.inc_by(n),
            None => self.by_reason.with_label_values(&[reason]).inc_by(n),
        }
    }

    /// The count of `reason` so far.
    pub fn get(&self, reason: &str) -> u64 {
        self.by_reason.with_label_values(&[reason]).get()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    fn render(registry: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn slices_of_several_subsystems_form_one_family_at_zero() {
        let registry = Registry::new();
        let sends = AdmissionCounter::register(&registry, REMOTE_SEND, &["Accepted", "NotHosted"]).unwrap();
        let _local = AdmissionCounter::register(&registry, REGISTRY_LOCAL, &["Accepted"]).unwrap();
        sends.count("NotHosted", 2);
        let text = render(&registry);
        assert_eq!(text.matches("# TYPE cohort_admissions_total counter").count(), 1, "{text}");
        assert!(text.contains("cohort_admissions_total{reason=\"Accepted\",work=\"remote_send\"} 0"), "{text}");
        assert!(text.contains("cohort_admissions_total{reason=\"NotHosted\",work=\"remote_send\"} 2"), "{text}");
        assert!(text.contains("cohort_admissions_total{reason=\"Accepted\",work=\"registry_local\"} 0"), "{text}");
        assert_eq!(sends.get("NotHosted"), 2);
    }

    #[test]
    fn unknown_words_and_a_second_slice_of_one_work_are_refused() {
        let registry = Registry::new();
        assert!(AdmissionCounter::register(&registry, "remote-send", &["Accepted"]).is_err());
        assert!(AdmissionCounter::register(&registry, BROADCAST, &["accepted"]).is_err());
        AdmissionCounter::register(&registry, BROADCAST, &["Accepted"]).unwrap();
        assert!(AdmissionCounter::register(&registry, BROADCAST, &["Accepted"]).is_err());
    }
}
