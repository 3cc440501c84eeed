//! Convergence invariants: after the last fault ends and the workload stops (the anchor), every
//! live node's view matches the ground truth within the settle window and keeps matching until the
//! run ends.
//!
//! - `membership_converges`: each running node sees exactly the running node lives (name and
//!   incarnation) as `alive`, and no other member as `alive` or `suspect`.
//! - `pg_converges`: each running node's view of each workload group is the multiset of live probe
//!   pids joined to it (a pid repeated per join); for a group whose operations had an unknown
//!   outcome, all nodes agree.
//! - `names_local_converge`, `names_eventual_converge`: each node's names of the tier are the
//!   expected ones ([`Expected`]); for eventual names of unknown outcome, all nodes agree.
//!
//! How: samples are grouped by tick; a tick converges when every node of the truth answered at that
//! tick with a matching view. The invariant holds when some tick at or after the anchor, no later
//! than anchor + settle, converges and so does every later tick.

use std::collections::{BTreeMap, BTreeSet};

use super::{Evidence, Verdict};
use crate::record::{Expected, NameRow, Recording, Sample, TierSample};

/// When views converged, or what still differed.
#[derive(Debug, PartialEq)]
pub struct ConvergenceResult {
    /// The first tick time from which every tick converged.
    pub converged_at_s: Option<f64>,
    /// Mismatches at the last non-converged tick.
    pub last_mismatch: Vec<Evidence>,
    /// Ticks examined.
    pub ticks: usize,
    /// Consecutive converged ticks at the end.
    pub converged_ticks: usize,
}

/// Examine the ticks at or after `anchor_s` with `mismatches(samples of the truth's nodes at that
/// tick)`; a node of the truth without a sample at a tick is a mismatch.
pub fn converge(
    rec: &Recording,
    anchor_s: f64,
    mut mismatches: impl FnMut(f64, &[&Sample]) -> Vec<Evidence>,
) -> ConvergenceResult {
    let mut by_tick: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in &rec.samples {
        // A sample started a little before the anchor tick still belongs to it (ticks are aligned).
        if s.t_s + 1e-6 >= anchor_s {
            by_tick.entry(s.tick).or_default().push(s);
        }
    }
    let mut converged_at = None;
    let mut last_mismatch = Vec::new();
    let mut converged_ticks = 0;
    for samples in by_tick.values() {
        let t = samples.iter().map(|s| s.t_s).fold(f64::INFINITY, f64::min);
        let live: Vec<&Sample> = samples
            .iter()
            .copied()
            .filter(|s| rec.truth.members.get(&s.node).is_some_and(|inc| s.incarnation == Some(*inc)))
            .collect();
        let mut wrong: Vec<Evidence> = rec
            .truth
            .members
            .iter()
            .filter(|(name, _)| !live.iter().any(|s| &s.node == *name))
            .map(|(name, inc)| {
                let why = samples
                    .iter()
                    .find(|s| &s.node == name)
                    .and_then(|s| s.error.clone())
                    .unwrap_or_else(|| format!("no answer from incarnation {inc}"));
                Evidence::at(t, name.clone(), format!("not sampled: {why}"))
            })
            .collect();
        wrong.extend(mismatches(t, &live));
        if wrong.is_empty() {
            converged_at.get_or_insert(t);
            converged_ticks += 1;
        } else {
            converged_at = None;
            converged_ticks = 0;
            last_mismatch = wrong;
        }
    }
    ConvergenceResult { converged_at_s: converged_at, last_mismatch, ticks: by_tick.len(), converged_ticks }
}

fn verdict_from(rec: &Recording, v: Verdict, what: &str, result: ConvergenceResult) -> Verdict {
    let anchor = rec.convergence_anchor_s();
    let deadline = anchor + rec.settle_s;
    if result.ticks == 0 {
        return v.fail(format!("no samples after the anchor at {anchor:.1} s"), Some(deadline), Vec::new());
    }
    match result.converged_at_s {
        Some(t) if t <= deadline + 1e-6 => {
            v.pass(format!("{what} converged at {t:.1} s, {:.1} s after the anchor at {anchor:.1} s", t - anchor))
        }
        Some(t) => v.fail(
            format!("{what} converged at {t:.1} s, after the deadline {deadline:.1} s (anchor {anchor:.1} s + settle)"),
            Some(deadline),
            vec![Evidence::when(t, format!("converged {:.1} s after the anchor", t - anchor))],
        ),
        None => v.fail(
            format!("{what} did not converge by the end of the run ({:.1} s); deadline {deadline:.1} s", rec.end_s),
            Some(deadline),
            result.last_mismatch,
        ),
    }
}

/// `membership_converges`.
pub fn membership(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "membership_converges",
        "after the last heal, every running node sees exactly the running node lives as alive, within the settle window",
    );
    verdict_from(rec, v, "membership", membership_result(rec))
}

fn membership_result(rec: &Recording) -> ConvergenceResult {
    converge(rec, rec.convergence_anchor_s(), |t, samples| {
        let mut wrong = Vec::new();
        for s in samples {
            let Some(members) = &s.members else {
                wrong.push(Evidence::at(t, s.node.clone(), "no membership answer"));
                continue;
            };
            for (name, inc) in &rec.truth.members {
                let row = members.iter().find(|m| &m.node == name && m.incarnation == *inc);
                match row {
                    Some(m) if m.state == "alive" => {}
                    Some(m) => wrong.push(Evidence::at(t, s.node.clone(), format!("sees {name}.{inc} as {}", m.state))),
                    None => wrong.push(Evidence::at(t, s.node.clone(), format!("does not list {name}.{inc}"))),
                }
            }
            for m in members {
                let expected = rec.truth.members.get(&m.node) == Some(&m.incarnation);
                if !expected && (m.state == "alive" || m.state == "suspect") {
                    wrong.push(Evidence::at(
                        t,
                        s.node.clone(),
                        format!("sees {}.{} as {}, but that node life is not running", m.node, m.incarnation, m.state),
                    ));
                }
            }
        }
        wrong
    })
}

fn pid_diff(seen: &[String], want: &[String]) -> String {
    let mut seen_sorted = seen.to_vec();
    seen_sorted.sort();
    fn count(v: &[String]) -> BTreeMap<&str, i64> {
        let mut m: BTreeMap<&str, i64> = BTreeMap::new();
        for p in v {
            *m.entry(p.as_str()).or_default() += 1;
        }
        m
    }
    let (a, b) = (count(&seen_sorted), count(want));
    let keys: BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    for k in keys {
        let d = a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0);
        if d < 0 {
            missing.push(format!("{k}x{}", -d));
        } else if d > 0 {
            extra.push(format!("{k}x{d}"));
        }
    }
    let show = |v: &[String]| v.iter().take(4).cloned().collect::<Vec<_>>().join(" ");
    format!(
        "{} members, expected {}; missing [{}]{}; extra [{}]{}",
        seen.len(),
        want.len(),
        show(&missing),
        if missing.len() > 4 { " ..." } else { "" },
        show(&extra),
        if extra.len() > 4 { " ..." } else { "" }
    )
}

/// `pg_converges`.
pub fn pg(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "pg_converges",
        "after the last heal, every running node's view of each group is the live probes joined to it, within the settle window",
    );
    if rec.truth.groups.is_empty() {
        return v.skip("the workload joins no groups");
    }
    verdict_from(rec, v, "pg groups", pg_result(rec))
}

fn pg_result(rec: &Recording) -> ConvergenceResult {
    let uncertain: BTreeSet<&String> = rec.truth.uncertain_groups.iter().collect();
    converge(rec, rec.convergence_anchor_s(), |t, samples| {
        let mut wrong = Vec::new();
        let mut first_view: BTreeMap<&String, (&str, Vec<String>)> = BTreeMap::new();
        for s in samples {
            let Some(groups) = &s.groups else {
                wrong.push(Evidence::at(t, s.node.clone(), "no pg answer"));
                continue;
            };
            for (group, want) in &rec.truth.groups {
                let mut seen = groups.get(group).cloned().unwrap_or_default();
                seen.sort();
                if uncertain.contains(group) {
                    match first_view.get(group) {
                        None => {
                            first_view.insert(group, (s.node.as_str(), seen));
                        }
                        Some((other, view)) if *view != seen => wrong.push(Evidence::at(
                            t,
                            s.node.clone(),
                            format!(
                                "group {group} (unknown-outcome ops): differs from {other}: {}",
                                pid_diff(&seen, view)
                            ),
                        )),
                        Some(_) => {}
                    }
                } else if &seen != want {
                    wrong.push(Evidence::at(t, s.node.clone(), format!("group {group}: {}", pid_diff(&seen, want))));
                }
            }
        }
        wrong
    })
}

/// Compare one node's rows of a tier with the expected names. Only names the workload owns (those
/// in `expected`, plus any other name with `prefix`) are compared.
fn names_mismatch(rows: &[NameRow], expected: &BTreeMap<String, Expected>, prefix: &str) -> Vec<String> {
    let seen: BTreeMap<&str, &str> = rows.iter().map(|r| (r.name.as_str(), r.pid.as_str())).collect();
    let mut wrong = Vec::new();
    for (name, exp) in expected {
        let got = seen.get(name.as_str()).copied();
        let ok = match exp {
            Expected::Present(p) => got == Some(p.as_str()),
            Expected::Absent => got.is_none(),
            Expected::Either(p) => got.is_none() || got == Some(p.as_str()),
        };
        if !ok {
            wrong.push(format!("{name}: has {}, expected {exp:?}", got.unwrap_or("nothing")));
        }
    }
    for (name, pid) in &seen {
        if name.starts_with(prefix) && !expected.contains_key(*name) {
            wrong.push(format!("{name}: has {pid}, never registered by the workload"));
        }
    }
    wrong
}

fn tier_rows<'a>(s: &'a Sample, tier: &str) -> &'a TierSample {
    match tier {
        "local" => &s.local,
        "eventual" => &s.eventual,
        _ => &s.consistent,
    }
}

fn names_verdict(rec: &Recording, v: Verdict, tier: &str, present: bool, per_node: bool) -> Verdict {
    if !present {
        return v.skip(format!("the nodes have no {tier} tier (GET /admin/registry/{tier} answered 404)"));
    }
    let any_expected =
        if per_node { rec.truth.local.values().any(|m| !m.is_empty()) } else { !rec.truth.eventual.is_empty() };
    if !any_expected {
        return v.skip(format!("the workload registers no {tier} names"));
    }
    verdict_from(rec, v, &format!("{tier} names"), names_result(rec, tier, per_node))
}

fn names_result(rec: &Recording, tier: &str, per_node: bool) -> ConvergenceResult {
    let empty = BTreeMap::new();
    let prefix = format!("chaos-{}-", &tier[..1]);
    converge(rec, rec.convergence_anchor_s(), |t, samples| {
        let mut wrong = Vec::new();
        let mut first_either: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
        for s in samples {
            let rows = match tier_rows(s, tier) {
                TierSample::Names(rows) => rows,
                TierSample::Absent => {
                    wrong.push(Evidence::at(t, s.node.clone(), format!("{tier} tier absent on this node")));
                    continue;
                }
                TierSample::Unknown => {
                    wrong.push(Evidence::at(t, s.node.clone(), format!("no {tier} names answer")));
                    continue;
                }
            };
            let expected = if per_node { rec.truth.local.get(&s.node).unwrap_or(&empty) } else { &rec.truth.eventual };
            for w in names_mismatch(rows, expected, &prefix) {
                wrong.push(Evidence::at(t, s.node.clone(), w));
            }
            if !per_node {
                for (name, exp) in expected {
                    if let Expected::Either(_) = exp {
                        let got = rows.iter().find(|r| &r.name == name).map(|r| r.pid.clone());
                        match first_either.get(name) {
                            None => {
                                first_either.insert(name.clone(), (s.node.clone(), got));
                            }
                            Some((other, g)) if *g != got => wrong.push(Evidence::at(
                                t,
                                s.node.clone(),
                                format!(
                                    "{name}: has {got:?}, {other} has {g:?} (unknown-outcome op; nodes must agree)"
                                ),
                            )),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        wrong
    })
}

/// Whether every convergence invariant that applies has held for at least `stable` consecutive
/// ticks at the end of the recording (the runner ends the settle phase early on it).
pub fn settled(rec: &Recording, stable: usize) -> bool {
    let ok = |r: ConvergenceResult| r.converged_ticks >= stable;
    if !ok(membership_result(rec)) {
        return false;
    }
    if !rec.truth.groups.is_empty() && !ok(pg_result(rec)) {
        return false;
    }
    if rec.presence.local && rec.truth.local.values().any(|m| !m.is_empty()) && !ok(names_result(rec, "local", true)) {
        return false;
    }
    if rec.presence.eventual && !rec.truth.eventual.is_empty() && !ok(names_result(rec, "eventual", false)) {
        return false;
    }
    true
}

/// `names_local_converge`.
pub fn local_names(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "names_local_converge",
        "every running node's local names are the ones registered on its current life, within the settle window",
    );
    names_verdict(rec, v, "local", rec.presence.local, true)
}

/// `names_eventual_converge`.
pub fn eventual_names(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "names_eventual_converge",
        "after the last heal, every running node's eventual names are the live registrations, within the settle window",
    );
    names_verdict(rec, v, "eventual", rec.presence.eventual, false)
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::*;
    use super::*;
    use crate::record::{MemberRow, NameRow};

    const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

    #[test]
    fn membership_that_converges_after_the_heal_passes() {
        let rec = recording(&NODES, 16, |tick, n, s| {
            let mut m = all_alive(&NODES);
            if tick < 12 && n == "node-1" {
                m[2].state = "suspect".into();
            }
            s.members = Some(m);
        });
        let v = membership(&rec);
        assert_eq!(v.status, Status::Pass, "{v:?}");
        assert!(v.summary.contains("12.0"), "{}", v.summary);
    }

    #[test]
    fn membership_that_never_converges_fails_with_the_node_and_view() {
        let rec = recording(&NODES, 25, |_, n, s| {
            let mut m = all_alive(&NODES);
            if n == "node-1" {
                m[2].state = "down".into();
            }
            s.members = Some(m);
        });
        let v = membership(&rec);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(20.0));
        assert!(
            v.evidence.iter().any(|e| e.node.as_deref() == Some("node-1") && e.detail.contains("node-3.1 as down"))
        );
    }

    #[test]
    fn membership_converging_after_the_deadline_fails() {
        let rec = recording(&NODES, 30, |tick, n, s| {
            let mut m = all_alive(&NODES);
            if tick < 24 && n == "node-2" {
                m.pop();
            }
            s.members = Some(m);
        });
        let v = membership(&rec);
        assert_eq!(v.status, Status::Fail, "{v:?}");
        assert!(v.summary.contains("after the deadline"), "{}", v.summary);
    }

    #[test]
    fn a_dead_node_seen_alive_breaks_membership() {
        let mut rec = recording(&NODES, 20, |_, _, s| {
            let mut m = all_alive(&NODES);
            m.push(MemberRow { node: "node-4".into(), incarnation: 7, state: "alive".into() });
            s.members = Some(m);
        });
        rec.truth.members.remove("node-4");
        let v = membership(&rec);
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence.iter().any(|e| e.detail.contains("node-4.7")));
    }

    #[test]
    fn a_missing_answer_is_not_convergence() {
        let rec = recording(&NODES, 20, |_, n, s| {
            if n == "node-3" {
                s.incarnation = None;
                s.error = Some("timeout".into());
            } else {
                s.members = Some(all_alive(&NODES));
            }
        });
        let v = membership(&rec);
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence.iter().any(|e| e.detail.contains("timeout")));
    }

    fn pg_rec(bad_until: u64) -> crate::record::Recording {
        let mut rec = recording(&NODES, 20, |tick, n, s| {
            let g1: &[&str] =
                if tick < bad_until && n == "node-2" { &["<node-1.1.1>"] } else { &["<node-1.1.1>", "<node-2.1.1>"] };
            s.groups = Some(groups(&[("g1", g1)]));
        });
        rec.truth.groups = groups(&[("g1", &["<node-1.1.1>", "<node-2.1.1>"])]);
        rec
    }

    #[test]
    fn pg_views_matching_the_probes_pass() {
        assert_eq!(pg(&pg_rec(13)).status, Status::Pass);
    }

    #[test]
    fn pg_view_missing_a_member_fails_with_the_pid() {
        let v = pg(&pg_rec(100));
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence.iter().any(|e| e.detail.contains("missing [<node-2.1.1>x1]")), "{:?}", v.evidence);
    }

    #[test]
    fn pg_uncertain_group_needs_agreement_only() {
        let mut rec = pg_rec(0);
        rec.truth.groups = groups(&[("g1", &["<node-9.1.1>"])]);
        rec.truth.uncertain_groups = vec!["g1".into()];
        assert_eq!(pg(&rec).status, Status::Pass);
        let mut rec = pg_rec(100);
        rec.truth.uncertain_groups = vec!["g1".into()];
        assert_eq!(pg(&rec).status, Status::Fail);
    }

    fn names_rec(stale_until: u64) -> crate::record::Recording {
        let mut rec = recording(&NODES, 20, |tick, n, s| {
            let mut rows = vec![NameRow { name: "chaos-e-a".into(), pid: "<node-1.1.1>".into(), fence_token: None }];
            if tick < stale_until && n == "node-3" {
                rows.push(NameRow { name: "chaos-e-b".into(), pid: "<node-2.1.1>".into(), fence_token: None });
            }
            s.eventual = TierSample::Names(rows);
        });
        rec.presence.eventual = true;
        rec.truth.eventual.insert("chaos-e-a".into(), Expected::Present("<node-1.1.1>".into()));
        rec.truth.eventual.insert("chaos-e-b".into(), Expected::Absent);
        rec
    }

    #[test]
    fn eventual_names_that_converge_pass() {
        assert_eq!(eventual_names(&names_rec(14)).status, Status::Pass);
    }

    #[test]
    fn eventual_name_left_behind_fails() {
        let v = eventual_names(&names_rec(100));
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence.iter().any(|e| e.node.as_deref() == Some("node-3") && e.detail.contains("chaos-e-b")));
    }

    #[test]
    fn absent_tier_is_skipped_not_passed() {
        let mut rec = names_rec(0);
        rec.presence.eventual = false;
        let v = eventual_names(&rec);
        assert_eq!(v.status, Status::Skipped);
        assert!(v.summary.contains("404"));
    }

    #[test]
    fn local_names_compare_per_node() {
        let mut rec = recording(&NODES, 20, |_, n, s| {
            let rows = if n == "node-2" {
                vec![NameRow { name: "chaos-l-x".into(), pid: "<node-1.1.1>".into(), fence_token: None }]
            } else {
                vec![]
            };
            s.local = TierSample::Names(rows);
        });
        rec.presence.local = true;
        rec.truth.local.insert("node-1".into(), [("chaos-l-x".to_string(), Expected::Absent)].into());
        rec.truth
            .local
            .insert("node-2".into(), [("chaos-l-x".to_string(), Expected::Present("<node-1.1.1>".into()))].into());
        assert_eq!(local_names(&rec).status, Status::Pass);
        rec.truth.local.insert("node-2".into(), [("chaos-l-y".to_string(), Expected::Absent)].into());
        let v = local_names(&rec);
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence[0].detail.contains("never registered"));
    }
}
