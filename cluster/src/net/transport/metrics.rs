//! The transport's Prometheus metrics, with every label combination resolved once at start (the
//! hot path touches plain atomics, never a label lookup) and every safety counter at 0 from boot.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::handshake::HandshakeFailure;
use crate::frame::FrameError;
use crate::queue::{Class, DropReason};
use crate::secure::RecordError;

/// Why a frame did not reach its peer or its subscriber; the `reason` label of
/// `cohort_internode_dropped_total{class,reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// A queue policy dropped or refused it (`queue_full_drop_oldest`, `queue_full_drop_newest`,
    /// `queue_full_refused`).
    Queue(DropReason),
    /// `peer_down`: it was queued for a peer that went down, left or was replaced by a newer
    /// incarnation.
    PeerDown,
    /// `fault_injected`: the chaos fault plan dropped it.
    FaultInjected,
    /// `inbound_full`: it arrived while its class's inbound channel was full.
    InboundFull,
    /// `no_subscriber`: it arrived for a class nobody subscribed to (or whose receiver is gone).
    NoSubscriber,
    /// `connection_lost`: it was in a write that failed; the link reconnects.
    ConnectionLost,
    /// `shutdown`: it was still queued when the transport shut down.
    Shutdown,
    /// `too_large`: its payload is above the maximum frame size (refused at `send`).
    TooLarge,
}

impl DropCause {
    /// Every cause, in label order, so the counters can be exported at 0.
    pub const ALL: [DropCause; 10] = [
        DropCause::Queue(DropReason::QueueFullDropOldest),
        DropCause::Queue(DropReason::QueueFullDropNewest),
        DropCause::Queue(DropReason::QueueFullRefused),
        DropCause::PeerDown,
        DropCause::FaultInjected,
        DropCause::InboundFull,
        DropCause::NoSubscriber,
        DropCause::ConnectionLost,
        DropCause::Shutdown,
        DropCause::TooLarge,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropCause::Queue(reason) => reason.as_str(),
            DropCause::PeerDown => "peer_down",
            DropCause::FaultInjected => "fault_injected",
            DropCause::InboundFull => "inbound_full",
            DropCause::NoSubscriber => "no_subscriber",
            DropCause::ConnectionLost => "connection_lost",
            DropCause::Shutdown => "shutdown",
            DropCause::TooLarge => "too_large",
        }
    }

    const fn index(self) -> usize {
        match self {
            DropCause::Queue(DropReason::QueueFullDropOldest) => 0,
            DropCause::Queue(DropReason::QueueFullDropNewest) => 1,
            DropCause::Queue(DropReason::QueueFullRefused) => 2,
            DropCause::PeerDown => 3,
            DropCause::FaultInjected => 4,
            DropCause::InboundFull => 5,
            DropCause::NoSubscriber => 6,
            DropCause::ConnectionLost => 7,
            DropCause::Shutdown => 8,
            DropCause::TooLarge => 9,
        }
    }
}

/// Frame error reasons of `cohort_internode_frame_errors_total{reason}`.
const FRAME_ERROR_REASONS: [&str; 5] = ["too_large", "too_short", "unknown_class", "record_auth", "record_length"];

/// The state label of `cohort_internode_connections{state}`; each of a peer's two links (priority
/// and bulk) counts once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// An outbound link that is dialling, handshaking or waiting out its backoff.
    Connecting,
    /// An outbound link with an established connection.
    Connected,
    /// An authenticated inbound (receive-only) connection.
    Accepted,
}

pub(crate) struct Metrics {
    pub depth: [IntGauge; 5],
    pub capacity: [IntGauge; 5],
    dropped: [[IntCounter; 10]; 5],
    pub frames_out: [IntCounter; 5],
    pub frames_in: [IntCounter; 5],
    pub bytes_out: [IntCounter; 5],
    pub bytes_in: [IntCounter; 5],
    connections: [IntGauge; 3],
    handshake_failures: IntCounterVec,
    frame_errors: IntCounterVec,
    pub reconnects: IntCounter,
}

fn class_index(class: Class) -> usize {
    class.code() as usize
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let depth = IntGaugeVec::new(
            Opts::new("cohort_internode_queue_depth", "Frames queued towards peers, summed over peers."),
            &["class"],
        )?;
        let capacity = IntGaugeVec::new(
            Opts::new("cohort_internode_queue_capacity", "Queue capacity towards peers in frames, summed over peers."),
            &["class"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new("cohort_internode_dropped_total", "Internode frames dropped or refused, by class and reason."),
            &["class", "reason"],
        )?;
        let frames = IntCounterVec::new(
            Opts::new("cohort_internode_frames_total", "Internode frames written or received."),
            &["class", "direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("cohort_internode_bytes_total", "Internode frame bytes written or received, headers included."),
            &["class", "direction"],
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "cohort_internode_connections",
                "Internode links by state (two per peer and direction: priority and bulk).",
            ),
            &["state"],
        )?;
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "cohort_internode_handshake_failures_total",
                "Internode handshakes refused or failed, by reason.",
            ),
            &["reason"],
        )?;
        let frame_errors = IntCounterVec::new(
            Opts::new(
                "cohort_internode_frame_errors_total",
                "Authenticated connections closed because of a malformed frame or a record that failed \
                 authentication (altered, replayed or reordered), by reason.",
            ),
            &["reason"],
        )?;
        let reconnects = IntCounter::new(
            "cohort_internode_reconnects_total",
            "Dials started by a link after a failed dial or a lost connection.",
        )?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(capacity.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(handshake_failures.clone()))?;
        registry.register(Box::new(frame_errors.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;

        for reason in HandshakeFailure::REASONS {
            handshake_failures.with_label_values(&[reason]);
        }
        for reason in FRAME_ERROR_REASONS {
            frame_errors.with_label_values(&[reason]);
        }
        let per_class = |vec: &IntCounterVec, direction: &str| {
            Class::ALL.map(|class| vec.with_label_values(&[class.as_str(), direction]))
        };
        Ok(Self {
            depth: Class::ALL.map(|class| depth.with_label_values(&[class.as_str()])),
            capacity: Class::ALL.map(|class| capacity.with_label_values(&[class.as_str()])),
            dropped: Class::ALL
                .map(|class| DropCause::ALL.map(|cause| dropped.with_label_values(&[class.as_str(), cause.as_str()]))),
            frames_out: per_class(&frames, "out"),
            frames_in: per_class(&frames, "in"),
            bytes_out: per_class(&bytes, "out"),
            bytes_in: per_class(&bytes, "in"),
            connections: ["connecting", "connected", "accepted"].map(|state| connections.with_label_values(&[state])),
            handshake_failures,
            frame_errors,
            reconnects,
        })
    }

    pub fn dropped(&self, class: Class, cause: DropCause, n: u64) {
        if n > 0 {
            self.dropped[class_index(class)][cause.index()].inc_by(n);
        }
    }

    pub fn handshake_failed(&self, failure: &HandshakeFailure) {
        self.handshake_failures.with_label_values(&[failure.as_str()]).inc();
    }

    pub fn frame_error(&self, error: &FrameError) {
        self.frame_errors.with_label_values(&[error.as_str()]).inc();
    }

    pub fn record_error(&self, error: &RecordError) {
        self.frame_errors.with_label_values(&[error.as_str()]).inc();
    }

    pub fn connection_gauge(&self, state: ConnState) -> &IntGauge {
        match state {
            ConnState::Connecting => &self.connections[0],
            ConnState::Connected => &self.connections[1],
            ConnState::Accepted => &self.connections[2],
        }
    }
}

/// Holds one unit of `cohort_internode_connections{state}` and gives it back when dropped (also
/// when the owning task is aborted).
pub(crate) struct ConnGauge {
    gauge: IntGauge,
}

impl ConnGauge {
    pub fn new(metrics: &Metrics, state: ConnState) -> Self {
        let gauge = metrics.connection_gauge(state).clone();
        gauge.inc();
        Self { gauge }
    }

    /// Moves the unit to another state.
    pub fn set(&mut self, metrics: &Metrics, state: ConnState) {
        self.gauge.dec();
        self.gauge = metrics.connection_gauge(state).clone();
        self.gauge.inc();
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_cause_labels_are_unique_and_indexed_in_order() {
        for (i, cause) in DropCause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), i);
        }
        let mut labels: Vec<_> = DropCause::ALL.iter().map(|c| c.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropCause::ALL.len());
    }

    #[test]
    fn every_safety_counter_is_exported_at_zero() {
        let registry = Registry::new();
        let _metrics = Metrics::register(&registry).unwrap();
        let families = registry.gather();
        let count = |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(count("cohort_internode_dropped_total"), 5 * DropCause::ALL.len());
        assert_eq!(count("cohort_internode_handshake_failures_total"), HandshakeFailure::REASONS.len());
        assert_eq!(count("cohort_internode_frame_errors_total"), FRAME_ERROR_REASONS.len());
        assert_eq!(count("cohort_internode_reconnects_total"), 1);
        assert_eq!(count("cohort_internode_connections"), 3);
        assert_eq!(count("cohort_internode_queue_depth"), 5);
    }
}
