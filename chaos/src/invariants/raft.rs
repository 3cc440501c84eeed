//! `raft_healthy` (when the nodes have raft): the term never changes while the only active faults
//! are broadcast floods (bulk traffic must not starve raft heartbeats: SPEC 5.2's priority
//! writer), and after the settle window every running node names the same running leader.

use std::collections::BTreeMap;

use super::{Evidence, Verdict};
use crate::record::Recording;

/// `raft_healthy`.
pub fn healthy(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "raft_healthy",
        "no election while only broadcast floods are active, and one agreed leader after settling",
    );
    if !rec.presence.raft {
        return v.skip("the nodes have no raft (GET /admin/raft answered 404)");
    }
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    // Windows where a flood runs and nothing else does.
    let flood_only: Vec<(f64, f64)> = rec
        .faults
        .iter()
        .filter(|f| f.action == "flood")
        .filter(|f| !rec.faults.iter().any(|g| g.action != "flood" && g.start_s < f.end_s && g.end_s > f.start_s))
        .map(|f| (f.start_s, f.end_s))
        .collect();
    let mut samples: Vec<_> = rec.samples.iter().filter(|s| s.raft.is_some()).collect();
    samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    for (start, end) in &flood_only {
        let mut term_at_start: BTreeMap<&str, u64> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.t_s >= *start && s.t_s <= *end) {
            let term = s.raft.as_ref().map_or(0, |r| r.term);
            match term_at_start.get(s.node.as_str()) {
                None => {
                    term_at_start.insert(s.node.as_str(), term);
                }
                Some(t0) if term > *t0 => {
                    first = Some(first.map_or(s.t_s, |f: f64| f.min(s.t_s)));
                    evidence.push(Evidence::at(s.t_s, s.node.clone(), format!("term {t0} -> {term} during a flood")));
                    term_at_start.insert(s.node.as_str(), term);
                }
                Some(_) => {}
            }
        }
    }
    // The last tick: every running node agrees on one running leader.
    let last_tick = rec.samples.iter().map(|s| s.tick).max().unwrap_or(0);
    let mut leaders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, inc) in &rec.truth.members {
        let s = rec.samples.iter().find(|s| s.tick == last_tick && &s.node == node && s.incarnation == Some(*inc));
        let leader = s.and_then(|s| s.raft.as_ref()).and_then(|r| r.leader.clone()).unwrap_or_else(|| "(none)".into());
        leaders.entry(leader).or_default().push(node.clone());
    }
    let agreed = leaders.len() == 1 && leaders.keys().all(|l| rec.truth.members.contains_key(l));
    if !agreed {
        let t = rec.end_s;
        first = Some(first.map_or(t, |f: f64| f.min(t)));
        for (leader, nodes) in &leaders {
            evidence.push(Evidence::when(t, format!("{} name leader {leader}", nodes.join(","))));
        }
    }
    if evidence.is_empty() {
        let leader = leaders.keys().next().cloned().unwrap_or_default();
        v.pass(format!("{} flood-only windows without an election; final leader {leader}", flood_only.len()))
    } else {
        v.fail("raft was disturbed", first, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::recording;
    use super::*;
    use crate::record::{FaultWindow, RaftSample};

    fn rec(term_bump_at: Option<u64>, leader_of_node_3: &str) -> Recording {
        let mut rec = recording(&["node-1", "node-2", "node-3"], 12, |tick, n, s| {
            let term = if term_bump_at.is_some_and(|t| tick >= t) { 3 } else { 2 };
            let leader = if n == "node-3" && tick == 12 { leader_of_node_3 } else { "node-1" };
            s.raft = Some(RaftSample {
                role: "follower".into(),
                term,
                leader: Some(leader.into()),
                commit_index: 1,
                voters: Vec::new(),
            });
        });
        rec.presence.raft = true;
        rec.faults.push(FaultWindow {
            action: "flood".into(),
            label: "flood".into(),
            nodes: vec![],
            start_s: 2.0,
            end_s: 8.0,
            line: 1,
        });
        rec
    }

    #[test]
    fn stable_term_and_agreed_leader_pass() {
        assert_eq!(healthy(&rec(Some(10), "node-1")).status, Status::Pass);
    }

    #[test]
    fn an_election_during_a_flood_fails() {
        let v = healthy(&rec(Some(5), "node-1"));
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(5.0));
    }

    #[test]
    fn disagreeing_leaders_at_the_end_fail() {
        assert_eq!(healthy(&rec(None, "node-2")).status, Status::Fail);
    }

    #[test]
    fn without_raft_it_is_skipped() {
        let mut r = rec(None, "node-1");
        r.presence.raft = false;
        assert_eq!(healthy(&r).status, Status::Skipped);
    }
}
