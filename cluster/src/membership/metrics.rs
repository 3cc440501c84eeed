//! Membership metrics: the member count per state, the local health factor and lagged events.
//!
//! Invariants: registered once per node at boot with every series present (one per
//! [`MemberState`], factor 1, lag 0); no node name or pid is ever a label.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::MemberState;

/// Membership's own series (the gossip socket's live in `net::gossip`).
#[derive(Clone)]
pub(crate) struct MembershipMetrics {
    members: IntGaugeVec,
    pub(crate) health_factor: Gauge,
    pub(crate) events_lagged: IntCounter,
    pub(crate) stuck_suspicions: IntCounter,
    /// By `action`: `suspect`, `down`, `untracked` (see `super::refusals`).
    pub(crate) refused_connections: IntCounterVec,
}

impl MembershipMetrics {
    /// Creates and registers the series.
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let members = IntGaugeVec::new(
            Opts::new("cohort_cluster_members", "Members in this node's view (itself included), by state."),
            &["state"],
        )?;
        let health_factor = Gauge::new(
            "cohort_gossip_local_health_factor",
            "How much this node stretches its suspicion timeout because its own timers fire late (1 = healthy, max 8).",
        )?;
        let events_lagged = IntCounter::new(
            "cohort_membership_events_lagged_total",
            "Membership events a subscriber missed because it fell behind the bounded event channel.",
        )?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(health_factor.clone()))?;
        let stuck_suspicions = IntCounter::new(
            "cohort_membership_stuck_suspicions_total",
            "Members this node declared down because their suspicion outlived every suspicion timeout (the suspecting node's timer was lost).",
        )?;
        registry.register(Box::new(events_lagged.clone()))?;
        registry.register(Box::new(stuck_suspicions.clone()))?;
        let refused_connections = IntCounterVec::new(
            Opts::new(
                "cohort_membership_refused_connections_total",
                "What this node did on the transport's evidence that a member's internode port refused a connection: suspect (first refusal), down (refused again and no refutation within the confirmation window), untracked (table full).",
            ),
            &["action"],
        )?;
        registry.register(Box::new(refused_connections.clone()))?;
        for action in ["suspect", "down", "untracked"] {
            refused_connections.with_label_values(&[action]).inc_by(0);
        }
        for state in MemberState::ALL {
            members.with_label_values(&[state.as_str()]).set(0);
        }
        health_factor.set(1.0);
        Ok(Self { members, health_factor, events_lagged, stuck_suspicions, refused_connections })
    }

    /// Sets the member gauges from per-state counts (indexed like [`MemberState::ALL`]).
    pub(crate) fn set_members(&self, counts: [i64; 4]) {
        for (state, count) in MemberState::ALL.into_iter().zip(counts) {
            self.members.with_label_values(&[state.as_str()]).set(count);
        }
    }
}
