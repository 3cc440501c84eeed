//! The invariant checkers: pure, deterministic functions from a [`Recording`] to a [`Verdict`].
//!
//! Role: decide whether a run held each invariant of SPEC section 11 and say why, with evidence a
//! person can follow (times, nodes, values). No checker does I/O or reads a clock, so each is
//! tested on hand-made recordings that break it and on ones that hold it.
//!
//! Invariants: a checker whose subsystem is absent from the nodes (its endpoint answered 404)
//! answers [`Status::Skipped`] with the reason, never [`Status::Pass`]; evidence lists are capped at
//! [`MAX_EVIDENCE`] entries (the summary says how many were left out); `first_violation_s` is the
//! earliest time the recording shows the invariant broken (or the deadline it missed).

pub mod availability;
pub mod bounds;
pub mod broadcast;
pub mod consistent;
pub mod convergence;
pub mod linearizability;
pub mod liveness;
pub mod raft;

use serde::Serialize;

use crate::record::Recording;

/// Most evidence entries one verdict carries.
pub const MAX_EVIDENCE: usize = 20;

/// Whether an invariant held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It held.
    Pass,
    /// It was broken (evidence says where and when).
    Fail,
    /// It could not be checked (its subsystem is absent or the workload did not exercise it).
    Skipped,
}

/// One fact backing a verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// When (seconds since the run started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_s: Option<f64>,
    /// Which node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What was seen.
    pub detail: String,
}

impl Evidence {
    /// Evidence at a time on a node.
    pub fn at(t_s: f64, node: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { t_s: Some(t_s), node: Some(node.into()), detail: detail.into() }
    }

    /// Evidence at a time.
    pub fn when(t_s: f64, detail: impl Into<String>) -> Self {
        Self { t_s: Some(t_s), node: None, detail: detail.into() }
    }

    /// Evidence with neither time nor node.
    pub fn note(detail: impl Into<String>) -> Self {
        Self { t_s: None, node: None, detail: detail.into() }
    }
}

/// The verdict on one invariant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Stable identifier (`membership_converges`, ...).
    pub name: String,
    /// What the invariant says.
    pub description: String,
    /// Pass, fail or skipped.
    pub status: Status,
    /// One line: why it passed, failed or was skipped.
    pub summary: String,
    /// Earliest time the recording shows it broken.
    pub first_violation_s: Option<f64>,
    /// Facts, at most [`MAX_EVIDENCE`].
    pub evidence: Vec<Evidence>,
}

impl Verdict {
    pub(crate) fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.to_string(),
            description: description.to_string(),
            status: Status::Pass,
            summary: String::new(),
            first_violation_s: None,
            evidence: Vec::new(),
        }
    }

    pub(crate) fn pass(mut self, summary: impl Into<String>) -> Self {
        self.status = Status::Pass;
        self.summary = summary.into();
        self
    }

    pub(crate) fn skip(mut self, reason: impl Into<String>) -> Self {
        self.status = Status::Skipped;
        self.summary = reason.into();
        self
    }

    pub(crate) fn fail(mut self, summary: impl Into<String>, first: Option<f64>, evidence: Vec<Evidence>) -> Self {
        self.status = Status::Fail;
        let total = evidence.len();
        let mut summary = summary.into();
        if total > MAX_EVIDENCE {
            summary.push_str(&format!(" ({} more facts left out)", total - MAX_EVIDENCE));
        }
        self.summary = summary;
        self.first_violation_s = first;
        self.evidence = evidence.into_iter().take(MAX_EVIDENCE).collect();
        self
    }

    /// Whether it held (skipped counts as holding for the exit code; the report shows it).
    pub fn held(&self) -> bool {
        self.status != Status::Fail
    }
}

/// Run every checker on a recording, in report order.
pub fn check_all(rec: &Recording) -> Vec<Verdict> {
    vec![
        convergence::membership(rec),
        convergence::pg(rec),
        convergence::local_names(rec),
        convergence::eventual_names(rec),
        consistent::single_owner_per_token(rec),
        consistent::tokens_monotonic(rec),
        consistent::linearizable(rec),
        availability::available_after_heal(rec),
        bounds::queue_depth(rec),
        bounds::rss(rec),
        liveness::no_unexpected_death(rec),
        broadcast::deliveries(rec),
        raft::healthy(rec),
    ]
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small recordings for the checkers' tests.
    use std::collections::BTreeMap;

    use crate::record::*;

    /// A recording of `nodes` nodes (incarnation 1 each) sampled every second from t=0 to t=`end`,
    /// chaos phase 0..10, settle 10 s; each sample filled by `fill(tick, node)`.
    pub fn recording(nodes: &[&str], end: u64, fill: impl Fn(u64, &str, &mut Sample)) -> Recording {
        let mut rec = Recording {
            scenario: "test".into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            sample_period_s: 1.0,
            chaos_start_s: 0.0,
            workload_end_s: 10.0,
            settle_s: 10.0,
            end_s: end as f64,
            rss_bound_bytes: 1 << 30,
            ..Default::default()
        };
        for n in nodes {
            rec.lives.push(NodeLife {
                node: n.to_string(),
                incarnation: 1,
                os_pid: 1,
                start_s: 0.0,
                end_s: Some(end as f64),
                end: Some(EndCause::Stopped),
            });
            rec.truth.members.insert(n.to_string(), 1);
        }
        for tick in 0..=end {
            for n in nodes {
                let mut s =
                    Sample { tick, t_s: tick as f64, node: n.to_string(), incarnation: Some(1), ..Default::default() };
                fill(tick, n, &mut s);
                rec.samples.push(s);
            }
        }
        rec
    }

    /// Every node alive at incarnation 1.
    pub fn all_alive(nodes: &[&str]) -> Vec<MemberRow> {
        nodes.iter().map(|n| MemberRow { node: n.to_string(), incarnation: 1, state: "alive".into() }).collect()
    }

    /// A groups map.
    pub fn groups(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(g, pids)| (g.to_string(), pids.iter().map(|p| p.to_string()).collect())).collect()
    }
}
