//! The process runtime's Prometheus metrics (SPEC 10): registered in the node's registry, every
//! counter and label value created at 0, no pid label.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::admission::{self, AdmissionCounter};
use crate::host::ExitReason;

/// Exit reasons a hosted process can have (the `reason` label of `cohort_process_exits_total`).
const EXIT_LABELS: [&str; 4] = ["normal", "error", "panic", "killed"];

/// Results of a remote send (the `result` label of `cohort_process_remote_sends_total`).
pub(crate) const REMOTE_QUEUED: &str = "queued";
pub(crate) const REMOTE_QUEUE_SATURATED: &str = "queue_saturated";
pub(crate) const REMOTE_NOT_HOSTED: &str = "not_hosted";
pub(crate) const REMOTE_TOO_LARGE: &str = "too_large";
pub(crate) const REMOTE_CANCELED: &str = "canceled";
pub(crate) const REMOTE_UNENCODABLE: &str = "unencodable";
const REMOTE_RESULTS: [&str; 6] =
    [REMOTE_QUEUED, REMOTE_QUEUE_SATURATED, REMOTE_NOT_HOSTED, REMOTE_TOO_LARGE, REMOTE_CANCELED, REMOTE_UNENCODABLE];

/// Why an inbound `user` frame was dropped (the `reason` label of
/// `cohort_process_inbound_dropped_total`; undecodable payloads have their own counter).
pub(crate) const INBOUND_MALFORMED: &str = "malformed";
pub(crate) const INBOUND_NOT_HOSTED: &str = "not_hosted";
pub(crate) const INBOUND_MAILBOX_FULL: &str = "mailbox_full";
pub(crate) const INBOUND_FORGED: &str = "forged";
pub(crate) const INBOUND_EPOCH_MISMATCH: &str = "epoch_mismatch";
const INBOUND_REASONS: [&str; 5] =
    [INBOUND_MALFORMED, INBOUND_NOT_HOSTED, INBOUND_MAILBOX_FULL, INBOUND_FORGED, INBOUND_EPOCH_MISMATCH];

/// Why a monitor was refused (the `reason` label of `cohort_process_monitor_refused_total`).
pub(crate) const MONITOR_PROCESS_LIMIT: &str = "process_limit";
pub(crate) const MONITOR_NODE_LIMIT: &str = "node_limit";
pub(crate) const MONITOR_QUEUE_SATURATED: &str = "queue_saturated";
const MONITOR_REASONS: [&str; 3] = [MONITOR_PROCESS_LIMIT, MONITOR_NODE_LIMIT, MONITOR_QUEUE_SATURATED];

/// The metric handles (cheap clones of Arc-backed Prometheus values).
#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) processes: IntGauge,
    pub(crate) spawned: IntCounter,
    pub(crate) spawn_refused: IntCounter,
    exits: IntCounterVec,
    pub(crate) mailbox_refused: IntCounter,
    pub(crate) undecodable: IntCounter,
    remote_sends: IntCounterVec,
    inbound_dropped: IntCounterVec,
    pub(crate) monitors: IntGauge,
    monitor_refused: IntCounterVec,
    pub(crate) hook_panics: IntCounter,
    /// `cohort_admissions_total{work="remote_send"}`, derived from each remote send's result.
    remote_admissions: AdmissionCounter,
    /// `cohort_admissions_total{work="fenced_send"}`: the fence guard's verdicts on this node.
    fenced_admissions: AdmissionCounter,
}

/// The admission verdict of a remote send result; `None` for the caller's bugs (a message that
/// does not encode or fit in a frame), which are not a verdict on the node's ability to take work.
fn remote_admission(result: &str) -> Option<&'static str> {
    match result {
        REMOTE_QUEUED => Some("Accepted"),
        REMOTE_QUEUE_SATURATED => Some("QueueSaturated"),
        REMOTE_NOT_HOSTED => Some("NotHosted"),
        REMOTE_CANCELED => Some("Canceled"),
        _ => None,
    }
}

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            processes: IntGauge::new("cohort_processes", "Live hosted processes on this node")?,
            spawned: IntCounter::new("cohort_process_spawned_total", "Processes spawned on this node")?,
            spawn_refused: IntCounter::new(
                "cohort_process_spawn_refused_total",
                "Spawns refused because the process table was full",
            )?,
            exits: IntCounterVec::new(
                Opts::new("cohort_process_exits_total", "Hosted process exits by reason"),
                &["reason"],
            )?,
            mailbox_refused: IntCounter::new(
                "cohort_process_mailbox_refused_total",
                "Messages refused because the target's mailbox was full",
            )?,
            undecodable: IntCounter::new(
                "cohort_process_undecodable_total",
                "Encoded messages dropped because they do not decode into the target's message type",
            )?,
            remote_sends: IntCounterVec::new(
                Opts::new("cohort_process_remote_sends_total", "Sends to processes of other nodes by result"),
                &["result"],
            )?,
            inbound_dropped: IntCounterVec::new(
                Opts::new(
                    "cohort_process_inbound_dropped_total",
                    "Inbound user-class frames dropped before reaching a mailbox, by reason",
                ),
                &["reason"],
            )?,
            monitors: IntGauge::new("cohort_process_monitors", "Process monitors held on this node")?,
            monitor_refused: IntCounterVec::new(
                Opts::new("cohort_process_monitor_refused_total", "Process monitors refused, by reason"),
                &["reason"],
            )?,
            hook_panics: IntCounter::new(
                "cohort_process_exit_hook_panics_total",
                "Exit hooks that panicked (caught; the exit pipeline went on)",
            )?,
            remote_admissions: AdmissionCounter::register(
                registry,
                admission::REMOTE_SEND,
                &["Accepted", "NotHosted", "QueueSaturated", "Canceled"],
            )?,
            fenced_admissions: AdmissionCounter::register(
                registry,
                admission::FENCED_SEND,
                &["Accepted", "EpochMismatch"],
            )?,
        };
        for label in EXIT_LABELS {
            metrics.exits.with_label_values(&[label]);
        }
        for label in REMOTE_RESULTS {
            metrics.remote_sends.with_label_values(&[label]);
        }
        for label in INBOUND_REASONS {
            metrics.inbound_dropped.with_label_values(&[label]);
        }
        for label in MONITOR_REASONS {
            metrics.monitor_refused.with_label_values(&[label]);
        }
        registry.register(Box::new(metrics.processes.clone()))?;
        registry.register(Box::new(metrics.spawned.clone()))?;
        registry.register(Box::new(metrics.spawn_refused.clone()))?;
        registry.register(Box::new(metrics.exits.clone()))?;
        registry.register(Box::new(metrics.mailbox_refused.clone()))?;
        registry.register(Box::new(metrics.undecodable.clone()))?;
        registry.register(Box::new(metrics.remote_sends.clone()))?;
        registry.register(Box::new(metrics.inbound_dropped.clone()))?;
        registry.register(Box::new(metrics.monitors.clone()))?;
        registry.register(Box::new(metrics.monitor_refused.clone()))?;
        registry.register(Box::new(metrics.hook_panics.clone()))?;
        Ok(metrics)
    }

    pub(crate) fn exit(&self, reason: &ExitReason) {
        self.exits.with_label_values(&[reason.as_str()]).inc();
    }

    pub(crate) fn remote_send(&self, result: &'static str) {
        self.remote_sends.with_label_values(&[result]).inc();
        if let Some(reason) = remote_admission(result) {
            self.remote_admissions.count(reason, 1);
        }
    }

    /// Counts the fence guard's verdict on one fenced send to a process of this node.
    pub(crate) fn fenced_send(&self, admitted: bool) {
        self.fenced_admissions.count(if admitted { "Accepted" } else { "EpochMismatch" }, 1);
    }

    pub(crate) fn inbound_dropped(&self, reason: &'static str) {
        self.inbound_dropped.with_label_values(&[reason]).inc();
    }

    pub(crate) fn monitor_refused(&self, reason: &'static str) {
        self.monitor_refused.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_remote_result_is_an_admission_or_a_caller_bug() {
        for result in REMOTE_RESULTS {
            match remote_admission(result) {
                Some(reason) => assert!(admission::REASONS.contains(&reason), "{result} -> {reason}"),
                None => assert!([REMOTE_TOO_LARGE, REMOTE_UNENCODABLE].contains(&result), "{result}"),
            }
        }
        let m = Metrics::register(&Registry::new()).unwrap();
        m.remote_send(REMOTE_QUEUED);
        m.remote_send(REMOTE_TOO_LARGE);
        m.fenced_send(false);
        assert_eq!(m.remote_admissions.get("Accepted"), 1);
        assert_eq!(m.fenced_admissions.get("EpochMismatch"), 1);
        assert_eq!(m.fenced_admissions.get("Accepted"), 0);
    }
}
