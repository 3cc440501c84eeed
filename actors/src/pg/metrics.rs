//! The pg metrics of one node (SPEC 10), shared by the service, its router and every scope actor.
//!
//! Labels are bounded: no scope, group or pid label (scopes are summed); `op`, `result`, `kind`,
//! `message`, `direction`, `reason` take values from fixed sets. Every counter that guards safety
//! (rejections, overflows, refused deliveries) is created at 0 when the service starts. Counters
//! on the join/leave hot path are resolved once, so counting costs one atomic add.

use cohort_cluster::net::transport::SendError;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::wire::PgMessage;
use crate::admission::{self, AdmissionCounter};

/// Operations counted in `cohort_pg_operations_total{op}`.
pub(crate) const OPS: [&str; 6] = ["join", "leave", "monitor", "monitor_scope", "broadcast", "broadcast_local"];

/// Reasons of `cohort_pg_frames_rejected_total{reason}`.
pub(crate) mod reject {
    /// The payload is not a MessagePack `PgFrame`.
    pub const DECODE: &str = "decode";
    /// The frame speaks another wire version.
    pub const VERSION: &str = "version";
    /// A bound or a name in the frame is invalid.
    pub const INVALID: &str = "invalid";
    /// The frame's `from` is not the authenticated sender.
    pub const SENDER_MISMATCH: &str = "sender_mismatch";
    /// The transport kind byte is not a pg frame.
    pub const UNKNOWN_KIND: &str = "unknown_kind";
    /// No scope of that name runs on this node.
    pub const UNKNOWN_SCOPE: &str = "unknown_scope";
    /// The sender is not an up member (down, left, or an older incarnation).
    pub const PEER_NOT_UP: &str = "peer_not_up";
    /// The scope table refused the content (unknown peer, foreign pid, bound).
    pub const REFUSED: &str = "refused";
    /// A sync chunk arrived out of order or the reassembled state was too large.
    pub const SYNC_CHUNK: &str = "sync_chunk";
    /// The scope actor's inbound queue was full; a full sync is pulled from the sender instead.
    pub const SCOPE_BUSY: &str = "scope_busy";

    /// Every reason, for exporting them at 0.
    pub const ALL: [&str; 10] = [
        DECODE,
        VERSION,
        INVALID,
        SENDER_MISMATCH,
        UNKNOWN_KIND,
        UNKNOWN_SCOPE,
        PEER_NOT_UP,
        REFUSED,
        SYNC_CHUNK,
        SCOPE_BUSY,
    ];
}

/// Reasons of `cohort_pg_syncs_total{reason}`.
pub(crate) mod sync_reason {
    /// A peer came up or discovered us.
    pub const CONNECT: &str = "connect";
    /// The periodic full-state push to one peer.
    pub const ANTI_ENTROPY: &str = "anti_entropy";
    /// A pg frame to the peer was dropped (queue overflow or failed send).
    pub const RESYNC: &str = "resync";
    /// The scope's actor was restarted by its supervisor after a crash.
    pub const RESTART: &str = "restart";
    /// Every reason.
    pub const ALL: [&str; 4] = [CONNECT, ANTI_ENTROPY, RESYNC, RESTART];
}

/// Results of `cohort_pg_digest_checks_total{result}`: what a peer's digest led to.
pub(crate) mod digest_check {
    /// It matched our view of the peer.
    pub const IN_SYNC: &str = "in_sync";
    /// It differed (or we hold nothing of the peer): a discover was sent to pull its full state.
    pub const PULL: &str = "pull";
    /// It differed within the rate limit: pulled when the limit allows, unless a later one matches.
    pub const DEFERRED: &str = "deferred";
    /// A deferred mismatch was pulled at our digest tick (counted apart from `pull`, which counts
    /// digests; the two sum to the pulls sent).
    pub const DEFERRED_PULL: &str = "deferred_pull";
    /// Every result.
    pub const ALL: [&str; 4] = [IN_SYNC, PULL, DEFERRED, DEFERRED_PULL];
}

/// Results of `cohort_pg_broadcast_deliveries_total{result}`.
pub(crate) mod delivery {
    /// Delivered to a local mailbox (on the sending or a receiving node).
    pub const DELIVERED: &str = "delivered";
    /// The member is no longer hosted.
    pub const NOT_HOSTED: &str = "not_hosted";
    /// The member's mailbox is full.
    pub const MAILBOX_FULL: &str = "mailbox_full";
    /// The payload does not decode into the member's message type.
    pub const UNDECODABLE: &str = "undecodable";
    /// A frame to a remote node was queued.
    pub const REMOTE_SENT: &str = "remote_sent";
    /// A frame to a remote node was dropped or refused by the transport.
    pub const REMOTE_REFUSED: &str = "remote_refused";
    /// Every result.
    pub const ALL: [&str; 6] = [DELIVERED, NOT_HOSTED, MAILBOX_FULL, UNDECODABLE, REMOTE_SENT, REMOTE_REFUSED];
}

/// Every pg metric of a node.
pub(crate) struct PgMetrics {
    pub groups: IntGauge,
    pub memberships: IntGauge,
    pub operations: IntCounterVec,
    pub join_ok: IntCounter,
    pub leave_ok: IntCounter,
    pub events_join: IntCounter,
    pub events_leave: IntCounter,
    pub frames: IntCounterVec,
    pub rejected: IntCounterVec,
    pub syncs: IntCounterVec,
    pub digest_checks: IntCounterVec,
    pub monitors: IntGauge,
    pub monitor_overflow: IntCounter,
    pub deliveries: IntCounterVec,
    /// `cohort_admissions_total{work="broadcast"}`: one verdict per recipient (a local member's
    /// mailbox, or a frame towards a node with members).
    pub admissions: AdmissionCounter,
}

/// The admission verdict of a delivery result; `None` for `undecodable` (the sender's payload does
/// not fit the member's type: a caller bug) and `remote_refused` (counted with its transport
/// reason by [`PgMetrics::remote_refused`]).
fn delivery_admission(result: &str) -> Option<&'static str> {
    match result {
        delivery::DELIVERED | delivery::REMOTE_SENT => Some("Accepted"),
        delivery::NOT_HOSTED => Some("NotHosted"),
        delivery::MAILBOX_FULL => Some("QueueSaturated"),
        _ => None,
    }
}

impl PgMetrics {
    /// Creates and registers every metric, each labelled series at 0.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let groups = IntGauge::new("cohort_pg_groups", "Non-empty process groups, summed over the node's scopes")?;
        let memberships = IntGauge::new(
            "cohort_pg_memberships",
            "Group memberships (join occurrences, local and remote), summed over the node's scopes",
        )?;
        let operations = IntCounterVec::new(
            Opts::new("cohort_pg_operations_total", "pg API calls by operation and result (ok or a PgError reason)"),
            &["op", "result"],
        )?;
        let events = IntCounterVec::new(
            Opts::new("cohort_pg_events_total", "Membership change events produced, by kind"),
            &["kind"],
        )?;
        let frames = IntCounterVec::new(
            Opts::new("cohort_pg_frames_total", "pg frames sent (out) or accepted (in), by message"),
            &["message", "direction"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new("cohort_pg_frames_rejected_total", "Inbound pg frames dropped, by reason"),
            &["reason"],
        )?;
        let syncs = IntCounterVec::new(
            Opts::new("cohort_pg_syncs_total", "Full-state syncs sent to a peer, by reason"),
            &["reason"],
        )?;
        let digest_checks = IntCounterVec::new(
            Opts::new(
                "cohort_pg_digest_checks_total",
                "Peer membership digests received and what they led to (in_sync, pull, deferred, deferred_pull)",
            ),
            &["result"],
        )?;
        let monitors = IntGauge::new("cohort_pg_monitors", "Live group and scope monitors")?;
        let monitor_overflow = IntCounter::new(
            "cohort_pg_monitor_overflow_total",
            "Monitors dropped because their event channel was full",
        )?;
        let deliveries = IntCounterVec::new(
            Opts::new("cohort_pg_broadcast_deliveries_total", "Broadcast deliveries and remote frames, by result"),
            &["result"],
        )?;
        registry.register(Box::new(groups.clone()))?;
        registry.register(Box::new(memberships.clone()))?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(syncs.clone()))?;
        registry.register(Box::new(digest_checks.clone()))?;
        registry.register(Box::new(monitors.clone()))?;
        registry.register(Box::new(monitor_overflow.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        for op in OPS {
            operations.with_label_values(&[op, "ok"]);
        }
        for message in PgMessage::NAMES {
            for direction in ["in", "out"] {
                frames.with_label_values(&[message, direction]);
            }
        }
        for reason in reject::ALL {
            rejected.with_label_values(&[reason]);
        }
        for reason in sync_reason::ALL {
            syncs.with_label_values(&[reason]);
        }
        for result in digest_check::ALL {
            digest_checks.with_label_values(&[result]);
        }
        for result in delivery::ALL {
            deliveries.with_label_values(&[result]);
        }
        let admissions = AdmissionCounter::register(
            registry,
            admission::BROADCAST,
            &["Accepted", "NotHosted", "QueueSaturated", "Canceled"],
        )?;
        Ok(Self {
            join_ok: operations.with_label_values(&["join", "ok"]),
            leave_ok: operations.with_label_values(&["leave", "ok"]),
            events_join: events.with_label_values(&["join"]),
            events_leave: events.with_label_values(&["leave"]),
            groups,
            memberships,
            operations,
            frames,
            rejected,
            syncs,
            digest_checks,
            monitors,
            monitor_overflow,
            deliveries,
            admissions,
        })
    }

    /// Counts one API call's result.
    pub fn operation(&self, op: &'static str, result: Result<(), &'static str>) {
        self.operations.with_label_values(&[op, result.err().unwrap_or("ok")]).inc();
    }

    /// Counts a rejected inbound frame.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Counts a frame in a direction (`"in"` or `"out"`).
    pub fn frame(&self, message: &'static str, direction: &'static str) {
        self.frames.with_label_values(&[message, direction]).inc();
    }

    /// Counts what a peer's digest led to.
    pub fn digest_check(&self, result: &'static str) {
        self.digest_checks.with_label_values(&[result]).inc();
    }

    /// Counts a broadcast delivery result.
    pub fn delivery(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.deliveries.with_label_values(&[result]).inc_by(n);
            if let Some(reason) = delivery_admission(result) {
                self.admissions.count(reason, n);
            }
        }
    }

    /// Counts the admission verdict of a broadcast frame the transport refused towards one node
    /// (the frame itself is counted as `remote_refused` with the other remote results). A frame
    /// too large for the transport is the sender's bug, not a verdict, and is not counted here.
    pub fn remote_refused(&self, error: &SendError) {
        let reason = match error {
            SendError::QueueSaturated { .. } => "QueueSaturated",
            SendError::UnknownPeer => "NotHosted",
            SendError::ShuttingDown => "Canceled",
            SendError::TooLarge { .. } => return,
        };
        self.admissions.count(reason, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_recipients_are_counted_as_admissions() {
        let m = PgMetrics::register(&Registry::new()).unwrap();
        m.delivery(delivery::DELIVERED, 3);
        m.delivery(delivery::REMOTE_SENT, 1);
        m.delivery(delivery::MAILBOX_FULL, 2);
        m.delivery(delivery::UNDECODABLE, 5);
        m.remote_refused(&SendError::UnknownPeer);
        m.remote_refused(&SendError::TooLarge { len: 2, max: 1 });
        assert_eq!(m.admissions.get("Accepted"), 4);
        assert_eq!(m.admissions.get("QueueSaturated"), 2);
        assert_eq!(m.admissions.get("NotHosted"), 1);
        for result in delivery::ALL {
            if let Some(reason) = delivery_admission(result) {
                assert!(admission::REASONS.contains(&reason));
            }
        }
    }
}
