//! `consistent_available_after_heal`: after every step of the schedule that removes a fault (a
//! `heal`, the end of a network fault's `for_s`, a restart, a resume) and leaves a majority of the
//! raft voters alive and pairwise connected, a consistent write (a `register` or `unregister` of
//! the consistent tier answered 2xx) called at or after that step succeeds within
//! [`WRITE_DEADLINE_S`].
//!
//! Why: the consistent tier must be available whenever a majority of voters can talk to each other
//! (SPEC 7), not only after the simple faults of the other scenarios. A follower partition followed
//! by a leader crash can leave a cluster that has its majority back but no raft leader; the safety
//! invariants (`consistent_linearizable`, ...) hold vacuously on such a cluster, this one does not.
//!
//! What counts, all from the recording ([`TopologyChange`] after each step of the schedule):
//! - the voters are the list most nodes reported in their last `/admin/raft` sample at or before
//!   the step (the voter ladder shrinks and grows it as nodes die and return); every node when no
//!   sample listed voters;
//! - alive and connected: running, not paused, and every pair within the group has a link that the
//!   active partition, isolate and asymmetric rules do not cut (a clique: then raft is sure to
//!   elect a leader and commit; a chain of half-connected nodes is not judged);
//! - a step is not judged, with the reason in the evidence, when it leaves no such majority, when
//!   lossy or delaying links (`drop`, `delay`) are active (availability there is a matter of
//!   degree), when a later step takes the majority away before a write succeeded (interrupted), when
//!   its deadline falls after the end of the workload with no success before, or when the runner
//!   gave the cluster no chance: no consistent write went, at least [`ANSWER_TIME_S`] before the
//!   deadline, to a node that could reach the majority (a write sent to a node cut off since is
//!   refused or times out whatever the majority does).
//!
//! Skipped, with the reason, without a consistent tier, without consistent writes in the workload,
//! without such steps, or when no step could be judged.

use std::collections::BTreeMap;

use super::{Evidence, MAX_EVIDENCE, Verdict};
use crate::record::{OpResult, Operation, Recording, TopologyChange};

/// How long after a recovery step a consistent write must have succeeded, in seconds. An election
/// takes 1-2 s (10 ticks of 100 ms, randomised up to twice that), the runner's requests give up
/// after 2 s and its churn calls a consistent write about every second: 10 s leaves room for two
/// elections and several attempts, and still catches a cluster that has lost its leader for good.
pub const WRITE_DEADLINE_S: f64 = 10.0;

/// Largest voter set judged: finding the largest connected group tries every subset (2^16 here).
const MAX_VOTERS: usize = 16;

/// How long before the deadline a write must have been called to count as a chance the cluster
/// had, in seconds: the runner's request timeout, the longest a write it calls can take.
pub const ANSWER_TIME_S: f64 = 2.0;

/// How one recovery step was judged.
enum Judgement<'a> {
    /// A write called at or after the step succeeded this many seconds after it.
    Held { write: &'a Operation, after_s: f64 },
    /// A majority was there and nothing succeeded by the deadline.
    Missed(Vec<Evidence>),
    /// Not judged, and why.
    NotJudged(String),
}

/// `consistent_available_after_heal`.
pub fn available_after_heal(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "consistent_available_after_heal",
        "after every heal or restart that leaves a majority of voters alive and connected, a consistent write succeeds within 10 s",
    );
    if !rec.presence.consistent {
        return v.skip(
            "the nodes have no consistent tier (GET /admin/registry/consistent answered 404 or 503 Unavailable)",
        );
    }
    let writes: Vec<&Operation> = rec.ops.iter().filter(|o| is_consistent_write(o)).collect();
    if writes.is_empty() {
        return v.skip("the workload called no consistent write (`workload.names.consistent` or `churn_per_s` is 0)");
    }
    let steps: Vec<usize> = (0..rec.topology.len()).filter(|&i| rec.topology[i].recovery).collect();
    if steps.is_empty() {
        return v.skip("the schedule has no heal, end of a network fault, restart or resume");
    }
    let (mut missed, mut held, mut not_judged) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_missed: Option<f64> = None;
    let mut slowest: f64 = 0.0;
    for &i in &steps {
        let step = &rec.topology[i];
        match judge(rec, i, &writes) {
            Judgement::Held { write, after_s } => {
                slowest = slowest.max(after_s);
                held.push(Evidence::at(
                    step.t_s,
                    write.node.clone(),
                    format!("{}: write op {} ({}) succeeded {after_s:.1} s later", step.cause, write.id, write.kind),
                ));
            }
            Judgement::Missed(evidence) => {
                let deadline = step.t_s + WRITE_DEADLINE_S;
                first_missed = Some(first_missed.map_or(deadline, |f: f64| f.min(deadline)));
                missed.push(evidence);
            }
            Judgement::NotJudged(why) => {
                not_judged.push(Evidence::when(step.t_s, format!("{}: not judged: {why}", step.cause)));
            }
        }
    }
    let judged = held.len() + missed.len();
    let not_judged_count = not_judged.len();
    if !missed.is_empty() {
        let count = missed.len();
        let evidence = missed.into_iter().flatten().chain(held).chain(not_judged).collect();
        return v.fail(
            format!(
                "{count} of {judged} recovery steps that left a majority of voters alive and connected were not followed by a successful consistent write within {WRITE_DEADLINE_S} s"
            ),
            first_missed,
            evidence,
        );
    }
    let evidence: Vec<Evidence> = held.into_iter().chain(not_judged).take(MAX_EVIDENCE).collect();
    let mut v = if judged > 0 {
        v.pass(format!(
            "{judged} recovery steps with a majority alive and connected, each followed by a consistent write within {slowest:.1} s (deadline {WRITE_DEADLINE_S} s); {not_judged_count} not judged"
        ))
    } else {
        v.skip(format!("none of the {not_judged_count} recovery steps could be judged (see the facts)"))
    };
    v.evidence = evidence;
    v
}

fn is_consistent_write(op: &Operation) -> bool {
    matches!(op.kind.as_str(), "register" | "unregister")
        && op.request.get("tier").and_then(|t| t.as_str()) == Some("consistent")
}

fn judge<'a>(rec: &Recording, i: usize, writes: &[&'a Operation]) -> Judgement<'a> {
    let step = &rec.topology[i];
    if let Err(why) = majority_after(rec, step) {
        return Judgement::NotJudged(why);
    }
    let deadline = step.t_s + WRITE_DEADLINE_S;
    let first_success = writes
        .iter()
        .filter(|w| w.result.is_ok() && w.invoke_s >= step.t_s)
        .min_by(|a, b| a.complete_s.total_cmp(&b.complete_s))
        .copied();
    let in_time = first_success.filter(|w| w.complete_s <= deadline);
    let watched_until = in_time.map_or(deadline, |w| w.complete_s);
    // A later step inside the window that takes the majority away ends what can be asked of it.
    for later in rec.topology[i + 1..].iter().take_while(|c| c.t_s <= watched_until) {
        if let Err(why) = majority_after(rec, later) {
            return Judgement::NotJudged(format!("interrupted at {:.1} s by {}: {why}", later.t_s, later.cause));
        }
    }
    if let Some(w) = in_time {
        return Judgement::Held { write: w, after_s: w.complete_s - step.t_s };
    }
    if deadline > rec.workload_end_s {
        return Judgement::NotJudged(format!(
            "the workload stopped at {:.1} s, before the deadline {deadline:.1} s",
            rec.workload_end_s
        ));
    }
    let attempts: Vec<&Operation> =
        writes.iter().filter(|w| w.invoke_s >= step.t_s && w.invoke_s <= deadline).copied().collect();
    let fair = attempts.iter().filter(|w| w.invoke_s <= deadline - ANSWER_TIME_S && reaches_majority(rec, w)).count();
    if fair == 0 {
        return Judgement::NotJudged(format!(
            "none of the {} consistent writes called between {:.1} s and {deadline:.1} s went to a node connected to the majority at least {ANSWER_TIME_S} s before the deadline",
            attempts.len(),
            step.t_s
        ));
    }
    let voters = voters_at(rec, step.t_s).unwrap_or_else(|| rec.nodes.clone());
    let group = largest_connected_voters(&voters, &step.alive, &step.cut);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for w in &attempts {
        let key = match &w.result {
            OpResult::Ok { .. } | OpResult::Done => "answered 2xx after the deadline".to_string(),
            OpResult::Refused { reason, .. } => format!("refused {reason}"),
            OpResult::Indeterminate { .. } => "no answer".to_string(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let mut leaders: BTreeMap<String, usize> = BTreeMap::new();
    for s in rec.samples.iter().filter(|s| s.t_s >= step.t_s && s.t_s <= deadline && step.alive.contains(&s.node)) {
        let leader = s.raft.as_ref().and_then(|r| r.leader.clone()).unwrap_or_else(|| "(none)".into());
        *leaders.entry(leader).or_default() += 1;
    }
    let counts =
        |m: &BTreeMap<String, usize>| m.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ");
    let next = match first_success {
        Some(w) => format!(
            "the next consistent write succeeded at {:.1} s (op {} on {}), {:.1} s after the step",
            w.complete_s,
            w.id,
            w.node,
            w.complete_s - step.t_s
        ),
        None => format!(
            "no consistent write called after the step succeeded before the workload stopped at {:.1} s",
            rec.workload_end_s
        ),
    };
    Judgement::Missed(vec![
        Evidence::when(
            step.t_s,
            format!(
                "{}: voters [{}], of which [{}] alive and connected, yet no consistent write succeeded by {deadline:.1} s",
                step.cause,
                voters.join(","),
                group.join(",")
            ),
        ),
        Evidence::when(
            step.t_s,
            format!(
                "{} writes called before the deadline ({fair} to a node connected to the majority in time): {}",
                attempts.len(),
                counts(&outcomes)
            ),
        ),
        Evidence::when(step.t_s, format!("raft leader named in the samples of the window: {}", counts(&leaders))),
        Evidence::when(step.t_s, next),
    ])
}

/// The largest group of alive, pairwise connected voters after the step when it is a majority of
/// the voters, else why there is none.
fn majority_after(rec: &Recording, step: &TopologyChange) -> Result<Vec<String>, String> {
    if !step.impaired.is_empty() {
        return Err(format!("lossy or delaying links are active ({})", step.impaired.join("; ")));
    }
    let voters = voters_at(rec, step.t_s).unwrap_or_else(|| rec.nodes.clone());
    if voters.len() > MAX_VOTERS {
        return Err(format!("{} voters, more than the {MAX_VOTERS} this check handles", voters.len()));
    }
    let group = largest_connected_voters(&voters, &step.alive, &step.cut);
    if group.len() * 2 > voters.len() {
        Ok(group)
    } else {
        Err(format!(
            "no majority of the {} voters [{}] alive and connected (largest group: [{}])",
            voters.len(),
            voters.join(","),
            group.join(",")
        ))
    }
}

/// Whether a write went to a node that could reach the majority when it was called: alive and in,
/// or cut from no member of, the connected majority group after the latest step at or before the
/// call. A write sent to a node the schedule has cut off since (the old leader isolated right
/// after a heal) is no chance the cluster missed.
fn reaches_majority(rec: &Recording, write: &Operation) -> bool {
    let Some(step) = rec.topology.iter().rev().find(|c| c.t_s <= write.invoke_s) else { return false };
    let Ok(group) = majority_after(rec, step) else { return false };
    let node = write.node.as_str();
    let cut = |m: &str| step.cut.iter().any(|[x, y]| (x == node && y == m) || (x == m && y == node));
    step.alive.iter().any(|a| a == node) && group.iter().all(|m| m == node || !cut(m))
}

/// The voter list most nodes reported in their last sample at or before `t_s` (ties: the list of
/// the latest sample); `None` when no sample listed voters.
fn voters_at(rec: &Recording, t_s: f64) -> Option<Vec<String>> {
    let mut latest: BTreeMap<&str, (f64, Vec<String>)> = BTreeMap::new();
    for s in rec.samples.iter().filter(|s| s.t_s <= t_s) {
        let Some(raft) = &s.raft else { continue };
        if raft.voters.is_empty() {
            continue;
        }
        if latest.get(s.node.as_str()).is_none_or(|(t, _)| *t <= s.t_s) {
            let mut voters = raft.voters.clone();
            voters.sort();
            latest.insert(s.node.as_str(), (s.t_s, voters));
        }
    }
    let mut tally: BTreeMap<Vec<String>, (usize, f64)> = BTreeMap::new();
    for (t, voters) in latest.into_values() {
        let e = tally.entry(voters).or_insert((0, t));
        e.0 += 1;
        e.1 = e.1.max(t);
    }
    tally.into_iter().max_by(|a, b| a.1.0.cmp(&b.1.0).then(a.1.1.total_cmp(&b.1.1))).map(|(voters, _)| voters)
}

/// The largest group of alive voters in which every pair has an uncut link, in voter order (the
/// first such group found when several are as large).
pub fn largest_connected_voters(voters: &[String], alive: &[String], cut: &[[String; 2]]) -> Vec<String> {
    let live: Vec<&String> = voters.iter().filter(|v| alive.contains(v)).take(MAX_VOTERS).collect();
    let n = live.len();
    let linked = |a: &str, b: &str| !cut.iter().any(|[x, y]| (x == a && y == b) || (x == b && y == a));
    let mut neighbours = vec![0u32; n];
    for i in 0..n {
        for j in 0..n {
            if i != j && linked(live[i], live[j]) {
                neighbours[i] |= 1 << j;
            }
        }
    }
    let mut best = 0u32;
    for group in 1u32..(1u32 << n) {
        if group.count_ones() <= best.count_ones() {
            continue;
        }
        let clique = (0..n).filter(|i| group & (1 << i) != 0).all(|i| group & !(neighbours[i] | (1 << i)) == 0);
        if clique {
            best = group;
        }
    }
    (0..n).filter(|i| best & (1 << i) != 0).map(|i| live[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::recording;
    use super::*;
    use crate::record::RaftSample;

    const NODES: [&str; 5] = ["node-1", "node-2", "node-3", "node-4", "node-5"];

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pair(a: &str, b: &str) -> [String; 2] {
        [a.to_string(), b.to_string()]
    }

    /// Five nodes, workload until 40 s; a partition of node-1 at 2 s, healed at 5 s with every
    /// node alive and connected.
    fn healed_at_5() -> Recording {
        let mut rec = recording(&NODES, 40, |_, _, _| {});
        rec.presence.consistent = true;
        rec.workload_end_s = 40.0;
        rec.topology = vec![
            change(2.0, "partition [node-1] | [rest] (line 9)", false, &NODES, &[pair("node-1", "node-2")]),
            change(5.0, "heal (line 14)", true, &NODES, &[]),
        ];
        rec
    }

    fn change(t_s: f64, cause: &str, recovery: bool, alive: &[&str], cut: &[[String; 2]]) -> TopologyChange {
        TopologyChange {
            t_s,
            cause: cause.into(),
            recovery,
            alive: names(alive),
            cut: cut.to_vec(),
            impaired: Vec::new(),
        }
    }

    fn write(rec: &mut Recording, invoke_s: f64, complete_s: f64, result: OpResult) {
        write_on(rec, "node-2", invoke_s, complete_s, result);
    }

    fn write_on(rec: &mut Recording, node: &str, invoke_s: f64, complete_s: f64, result: OpResult) {
        let id = rec.ops.len() as u64 + 1;
        rec.ops.push(Operation {
            id,
            node: node.into(),
            kind: "register".into(),
            request: serde_json::json!({"tier": "consistent", "name": "chaos-c-0", "pid": "<node-2.1.1>"}),
            invoke_s,
            complete_s,
            result,
        });
    }

    fn ok() -> OpResult {
        OpResult::Ok { body: serde_json::json!({"fence_token": 3}) }
    }

    fn refused(reason: &str) -> OpResult {
        OpResult::Refused { status: 503, reason: reason.into(), detail: String::new() }
    }

    #[test]
    fn no_successful_write_within_10_s_after_a_heal_fails() {
        let mut rec = healed_at_5();
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        write(&mut rec, 9.0, 9.1, refused("NotLeader"));
        write(&mut rec, 14.0, 16.0, ok()); // called in time, answered after the deadline
        write(&mut rec, 20.0, 20.5, ok());
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Fail, "{v:?}");
        assert_eq!(v.first_violation_s, Some(15.0));
        let facts: Vec<&str> = v.evidence.iter().map(|e| e.detail.as_str()).collect();
        assert!(facts[0].starts_with("heal (line 14)"), "{facts:?}");
        assert!(facts[1].contains("3 writes") && facts[1].contains("refused NotLeader x1"), "{facts:?}");
        assert!(facts[1].contains("no answer x1") && facts[1].contains("after the deadline x1"), "{facts:?}");
        assert!(facts[2].contains("(none)"), "{facts:?}");
        assert!(facts[3].contains("16.0 s"), "{facts:?}");
    }

    #[test]
    fn a_write_3_s_after_the_heal_passes() {
        let mut rec = healed_at_5();
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        write(&mut rec, 7.5, 8.0, ok());
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Pass, "{v:?}");
        assert!(v.summary.contains("within 3.0 s"), "{}", v.summary);
        assert!(v.evidence[0].detail.contains("op 2"), "{:?}", v.evidence);
    }

    #[test]
    fn a_write_called_before_the_heal_does_not_count() {
        let mut rec = healed_at_5();
        write(&mut rec, 4.0, 6.0, ok());
        write(&mut rec, 8.0, 8.2, refused("NotLeader"));
        assert_eq!(available_after_heal(&rec).status, Status::Fail);
    }

    #[test]
    fn writes_sent_to_a_node_cut_off_since_or_too_late_are_no_chance_missed() {
        let mut rec = healed_at_5();
        // node-1 isolated one second after the heal: the other four stay connected.
        let cut: Vec<[String; 2]> =
            ["node-2", "node-3", "node-4", "node-5"].iter().map(|n| pair("node-1", n)).collect();
        rec.topology.push(change(6.0, "isolate node-1 (line 16)", false, &NODES, &cut));
        write_on(&mut rec, "node-1", 7.0, 9.0, OpResult::Indeterminate { error: "timeout".into() });
        write_on(&mut rec, "node-2", 13.5, 15.5, OpResult::Indeterminate { error: "timeout".into() });
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Skipped, "{v:?}");
        assert!(v.evidence[0].detail.contains("none of the 2 consistent writes"), "{:?}", v.evidence);
        // A write to a node of the majority, called in time, was a chance.
        write_on(&mut rec, "node-3", 8.0, 8.1, refused("NotLeader"));
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Fail, "{v:?}");
        assert!(v.evidence[1].detail.contains("3 writes called before the deadline (1 to a node"), "{:?}", v.evidence);
    }

    #[test]
    fn a_heal_that_leaves_no_majority_alive_is_not_judged() {
        let mut rec = healed_at_5();
        rec.topology[1].alive = names(&["node-1", "node-2"]);
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Skipped, "{v:?}");
        assert!(v.evidence[0].detail.contains("no majority of the 5 voters"), "{:?}", v.evidence);
        // Judged steps next to it are still judged.
        rec.topology.push(change(20.0, "restart node-3 (line 20)", true, &["node-1", "node-2", "node-3"], &[]));
        write(&mut rec, 21.0, 21.5, ok());
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Pass, "{v:?}");
        assert!(v.summary.contains("1 recovery steps") && v.summary.contains("1 not judged"), "{}", v.summary);
    }

    #[test]
    fn alive_nodes_split_by_cuts_are_no_majority() {
        let mut rec = healed_at_5();
        // The end of one fault while another still splits {1,2} | {3,4} and isolates node-5.
        let mut cut = Vec::new();
        for (a, b) in [("node-1", "node-3"), ("node-1", "node-4"), ("node-2", "node-3"), ("node-2", "node-4")] {
            cut.push(pair(a, b));
        }
        for n in ["node-1", "node-2", "node-3", "node-4"] {
            cut.push(pair(n, "node-5"));
        }
        rec.topology[1].cut = cut;
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        assert_eq!(available_after_heal(&rec).status, Status::Skipped);
    }

    #[test]
    fn largest_connected_group_is_a_clique_of_alive_voters() {
        let voters = names(&NODES);
        let all = names(&NODES);
        assert_eq!(largest_connected_voters(&voters, &all, &[]).len(), 5);
        // node-1 cut from node-2 only: a chain is not a group; the largest group has 4.
        let g = largest_connected_voters(&voters, &all, &[pair("node-1", "node-2")]);
        assert_eq!(g, names(&["node-1", "node-3", "node-4", "node-5"]));
        let g = largest_connected_voters(&voters, &names(&["node-1", "node-5"]), &[]);
        assert_eq!(g, names(&["node-1", "node-5"]));
    }

    #[test]
    fn the_voters_are_those_the_samples_report() {
        // Three voters of five nodes: node-3 and node-4 dead leave node-1, node-2 and node-5 alive,
        // two of the three voters.
        let mut rec = recording(&NODES, 40, |_, _, s| {
            s.raft = Some(RaftSample {
                role: "follower".into(),
                term: 2,
                leader: None,
                commit_index: 1,
                voters: names(&["node-3", "node-1", "node-2"]),
            });
        });
        rec.presence.consistent = true;
        rec.workload_end_s = 40.0;
        rec.topology = vec![change(5.0, "restart node-5 (line 9)", true, &["node-1", "node-2", "node-5"], &[])];
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Fail, "{v:?}");
        assert!(v.evidence[0].detail.contains("voters [node-1,node-2,node-3]"), "{:?}", v.evidence);
        // With node-2 dead too, one voter of three is no majority, though three nodes of five live.
        rec.topology[0].alive = names(&["node-1", "node-4", "node-5"]);
        assert_eq!(available_after_heal(&rec).status, Status::Skipped);
    }

    #[test]
    fn a_later_step_that_takes_the_majority_away_interrupts_the_window() {
        let mut rec = healed_at_5();
        rec.topology.push(change(7.0, "kill -9 node-3 (line 16)", false, &["node-1", "node-2"], &[]));
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Skipped, "{v:?}");
        assert!(v.evidence[0].detail.contains("interrupted at 7.0 s by kill -9 node-3"), "{:?}", v.evidence);
        // A later step that keeps the majority (killing one of five) does not excuse the miss.
        rec.topology[2].alive = names(&["node-1", "node-2", "node-4", "node-5"]);
        assert_eq!(available_after_heal(&rec).status, Status::Fail);
    }

    #[test]
    fn lossy_links_and_a_deadline_after_the_workload_are_not_judged() {
        let mut rec = healed_at_5();
        write(&mut rec, 6.0, 8.0, OpResult::Indeterminate { error: "timeout".into() });
        rec.topology[1].impaired = vec!["drop 30% from all".into()];
        assert_eq!(available_after_heal(&rec).status, Status::Skipped);
        rec.topology[1].impaired.clear();
        rec.workload_end_s = 12.0;
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Skipped);
        assert!(v.evidence[0].detail.contains("workload stopped at 12.0 s"), "{:?}", v.evidence);
    }

    #[test]
    fn without_a_consistent_workload_or_tier_it_is_skipped() {
        let rec = healed_at_5();
        let v = available_after_heal(&rec);
        assert_eq!(v.status, Status::Skipped);
        assert!(v.summary.contains("no consistent write"), "{}", v.summary);
        let mut rec = healed_at_5();
        write(&mut rec, 6.0, 7.0, ok());
        rec.presence.consistent = false;
        assert!(available_after_heal(&rec).summary.contains("no consistent tier"));
        rec.presence.consistent = true;
        rec.topology.retain(|c| !c.recovery);
        assert!(available_after_heal(&rec).summary.contains("no heal"));
    }
}
