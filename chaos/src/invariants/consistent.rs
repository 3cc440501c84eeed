//! Consistent-tier invariants (SPEC 7 and 8):
//!
//! - `consistent_single_owner_per_token`: no two observations (a node's sampled view, a register
//!   answer, a `Strong` lookup answer) show two different owners of one name at one fencing token.
//! - `consistent_tokens_monotonic`: a node's view never shows a name at a smaller token than it
//!   showed before (across its restarts too: served tokens never go backward), and a registration
//!   that started after another one finished got a larger token (tokens are cluster-monotonic).
//! - `consistent_linearizable`: the recorded register / unregister / `Strong` lookup history is
//!   linearizable ([`super::linearizability`]), with evictions allowed after each fault starts
//!   (a departed owner's names are removed by the leader).
//!
//! All three are skipped, with the reason, when the nodes have no consistent tier.

use std::collections::BTreeMap;

use super::linearizability::{self, HistoryOp, Input, Outcome, Output};
use super::{Evidence, Verdict};
use crate::record::{OpResult, Operation, Recording, TierSample};

/// Refusals that happen before a write is proposed: the write certainly had no effect.
const NO_EFFECT_REASONS: &[&str] =
    &["NotLeader", "BadRequest", "NotHosted", "QueueSaturated", "SchedulerDegraded", "Forbidden", "Unauthorized"];

fn absent(v: Verdict) -> Verdict {
    v.skip("the nodes have no consistent tier (GET /admin/registry/consistent answered 404 or 503 Unavailable)")
}

fn tier_of(op: &Operation) -> Option<&str> {
    op.request.get("tier").and_then(|t| t.as_str())
}

fn name_of(op: &Operation) -> Option<String> {
    op.request.get("name").and_then(|t| t.as_str()).map(str::to_string)
}

fn token_of(body: &serde_json::Value) -> Option<u64> {
    body.get("fence_token").and_then(|t| t.as_u64())
}

/// The index of the entry that applied a write (`root_token.index` of a register's answer).
fn root_index_of(body: &serde_json::Value) -> Option<u64> {
    body.get("root_token").and_then(|t| t.get("index")).and_then(|i| i.as_u64())
}

/// The consistent-tier operations of a recording as a history for the linearizability checker.
pub fn history(rec: &Recording) -> Vec<HistoryOp> {
    let mut out = Vec::new();
    let mut pids_of_name: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
    for op in rec.ops.iter().filter(|o| tier_of(o) == Some("consistent")) {
        let Some(name) = name_of(op) else { continue };
        let pid = op.request.get("pid").and_then(|p| p.as_str()).unwrap_or_default().to_string();
        let (input, output) = match (op.kind.as_str(), &op.result) {
            ("register", OpResult::Ok { .. }) => (Input::Register(pid.clone()), Output::Registered),
            ("register", OpResult::Refused { reason, .. }) if reason == "AlreadyRegistered" => {
                (Input::Register(pid.clone()), Output::AlreadyRegistered)
            }
            ("unregister", OpResult::Ok { .. }) => (Input::Unregister(pid.clone()), Output::Unregistered),
            ("unregister", OpResult::Refused { reason, .. })
                if matches!(reason.as_str(), "NotFound" | "NotRegistered" | "NotOwner") =>
            {
                (Input::Unregister(pid.clone()), Output::NotRegistered)
            }
            ("register" | "unregister", OpResult::Refused { reason, .. })
                if NO_EFFECT_REASONS.contains(&reason.as_str()) =>
            {
                continue;
            }
            ("register", OpResult::Refused { .. } | OpResult::Indeterminate { .. }) => {
                (Input::Register(pid.clone()), Output::Unknown)
            }
            ("unregister", OpResult::Refused { .. } | OpResult::Indeterminate { .. }) => {
                (Input::Unregister(pid.clone()), Output::Unknown)
            }
            ("lookup", _) if op.request.get("freshness").and_then(|f| f.as_str()) != Some("strong") => continue,
            ("lookup", OpResult::Ok { body }) => match body.get("pid").and_then(|p| p.as_str()) {
                Some(p) => (Input::Lookup, Output::Found(p.to_string())),
                None => continue,
            },
            ("lookup", OpResult::Refused { status: 404, reason, .. }) if reason == "NotFound" => {
                (Input::Lookup, Output::NotFound)
            }
            // A read that failed or was refused has no effect and constrains nothing.
            _ => continue,
        };
        // Only a registration that may have taken the name can be evicted: one answered
        // `AlreadyRegistered` never owned it.
        if let Input::Register(p) = &input
            && output != Output::AlreadyRegistered
        {
            pids_of_name.entry(name.clone()).or_default().push((op.invoke_s, p.clone()));
        }
        let complete_s = if output == Output::Unknown { None } else { Some(op.complete_s) };
        out.push(HistoryOp {
            id: op.id,
            name,
            node: op.node.clone(),
            input,
            output,
            invoke_s: op.invoke_s,
            complete_s,
        });
    }
    // Each fault may make the cluster drop a name whose owner's node it touches (a departed or
    // partitioned-away owner): allow an eviction of every earlier registrant from then on.
    let mut next_id = rec.ops.iter().map(|o| o.id).max().unwrap_or(0) + 1;
    let mut evict = |out: &mut Vec<HistoryOp>, name: &str, pid: &str, at: f64| {
        out.push(HistoryOp {
            id: next_id,
            name: name.to_string(),
            node: "(cluster)".into(),
            input: Input::Evict(pid.to_string()),
            output: Output::Unknown,
            invoke_s: at,
            complete_s: None,
        });
        next_id += 1;
    };
    // One eviction per registration, from the first fault after it: its window never closes, so
    // it covers every later fault too, and a registration is evicted at most once. (One per fault
    // and registrant made the search space explode on composed-faults: 60 never-ending operations
    // on one name, and the checker ran out of its budget.)
    let mut starts: Vec<f64> = rec.faults.iter().map(|f| f.start_s).collect();
    starts.sort_by(f64::total_cmp);
    for (name, regs) in &pids_of_name {
        for (invoked, pid) in regs {
            if let Some(at) = starts.iter().find(|s| **s >= *invoked) {
                evict(&mut out, name, pid, *at);
            }
        }
    }
    // Membership may also declare an owner's node down outside any fault window (a flapping
    // partition's aftermath, a false suspicion); the leader then removes its names (SPEC 7). So
    // from one sample period before the first sample in which any node saw the owner's node down
    // or left after the registration, its eviction is allowed too.
    for (name, regs) in &pids_of_name {
        for (invoked, pid) in regs {
            let Some(node) = pid_node(pid) else { continue };
            let seen_down = rec
                .samples
                .iter()
                .filter(|s| s.t_s >= *invoked)
                .find(|s| {
                    s.members.as_ref().is_some_and(|rows| {
                        rows.iter().any(|row| row.node == node && (row.state == "down" || row.state == "left"))
                    })
                })
                .map(|s| s.t_s);
            if let Some(t) = seen_down {
                evict(&mut out, name, pid, (t - rec.sample_period_s).max(*invoked));
            }
        }
    }
    out
}

/// The node name of a pid string `<name.incarnation.local>`.
fn pid_node(pid: &str) -> Option<&str> {
    let inner = pid.strip_prefix('<')?.strip_suffix('>')?;
    let mut parts = inner.rsplitn(3, '.');
    let _local = parts.next()?;
    let _incarnation = parts.next()?;
    parts.next()
}

/// `consistent_linearizable`.
pub fn linearizable(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "consistent_linearizable",
        "the register / unregister / Strong lookup history of the consistent tier is linearizable",
    );
    if !rec.presence.consistent {
        return absent(v);
    }
    let h = history(rec);
    let real = h.iter().filter(|o| !matches!(o.input, Input::Evict(_))).count();
    if real == 0 {
        return v.skip("no consistent-tier operation was recorded");
    }
    match linearizability::check(&h, linearizability::DEFAULT_MAX_STEPS) {
        Outcome::Linearizable => v.pass(format!("{real} operations, linearizable")),
        Outcome::NotLinearizable { name, ops, longest_prefix } => {
            let first = ops.iter().map(|o| o.invoke_s).fold(f64::INFINITY, f64::min);
            let evidence = ops
                .iter()
                .map(|o| {
                    Evidence::at(
                        o.invoke_s,
                        o.node.clone(),
                        format!(
                            "op {} {:?} -> {:?} (returned {})",
                            o.id,
                            o.input,
                            o.output,
                            o.complete_s.map(|c| format!("{c:.3} s")).unwrap_or_else(|| "never".into())
                        ),
                    )
                })
                .collect();
            v.fail(
                format!(
                    "the history of `{name}` ({} ops) is not linearizable; at most {longest_prefix} ops could be ordered",
                    ops.len()
                ),
                Some(first),
                evidence,
            )
        }
        Outcome::Inconclusive { name } => v.fail(
            format!("the search on `{name}` ran out of its step budget: linearizability not shown"),
            None,
            Vec::new(),
        ),
    }
}

/// One observation of (name, token) -> pid.
struct Seen {
    t_s: f64,
    node: String,
    source: &'static str,
    pid: String,
}

/// `consistent_single_owner_per_token`.
pub fn single_owner_per_token(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "consistent_single_owner_per_token",
        "no name is ever shown with two different owners at one fencing token",
    );
    if !rec.presence.consistent {
        return absent(v);
    }
    let mut seen: BTreeMap<(String, u64), Seen> = BTreeMap::new();
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    let mut observations = 0usize;
    let mut observe = |name: &str, token: u64, s: Seen| {
        observations += 1;
        match seen.get(&(name.to_string(), token)) {
            None => {
                seen.insert((name.to_string(), token), s);
            }
            Some(prev) if prev.pid != s.pid => {
                first = Some(first.map_or(s.t_s, |f: f64| f.min(s.t_s)));
                evidence.push(Evidence::at(
                    s.t_s,
                    s.node.clone(),
                    format!(
                        "{name}@{token}: {} says {}, but {} ({} at {:.1} s) said {}",
                        s.source, s.pid, prev.node, prev.source, prev.t_s, prev.pid
                    ),
                ));
            }
            Some(_) => {}
        }
    };
    // Observations in time order, so the evidence names the later one as the violation.
    let mut events: Vec<(f64, String, u64, Seen)> = Vec::new();
    for s in &rec.samples {
        if let TierSample::Names(rows) = &s.consistent {
            for r in rows {
                if let Some(tok) = r.fence_token {
                    let seen = Seen { t_s: s.t_s, node: s.node.clone(), source: "view", pid: r.pid.clone() };
                    events.push((s.t_s, r.name.clone(), tok, seen));
                }
            }
        }
    }
    for op in rec.ops.iter().filter(|o| tier_of(o) == Some("consistent")) {
        let OpResult::Ok { body } = &op.result else { continue };
        let (Some(name), Some(tok)) = (name_of(op), token_of(body)) else { continue };
        let (source, pid) = match op.kind.as_str() {
            "register" => ("register answer", op.request.get("pid").and_then(|p| p.as_str())),
            "lookup" => ("lookup answer", body.get("pid").and_then(|p| p.as_str())),
            _ => continue,
        };
        let Some(pid) = pid else { continue };
        events.push((
            op.complete_s,
            name,
            tok,
            Seen { t_s: op.complete_s, node: op.node.clone(), source, pid: pid.into() },
        ));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, name, tok, s) in events {
        observe(&name, tok, s);
    }
    if evidence.is_empty() {
        if observations == 0 {
            return v.skip("no consistent name with a fencing token was observed");
        }
        v.pass(format!("{observations} observations of {} (name, token) pairs, one owner each", seen.len()))
    } else {
        v.fail(format!("{} (name, token) pairs with two owners", evidence.len()), first, evidence)
    }
}

/// `consistent_tokens_monotonic`.
pub fn tokens_monotonic(rec: &Recording) -> Verdict {
    let v = Verdict::new(
        "consistent_tokens_monotonic",
        "fencing tokens never go backwards: per node and name over time, and across registrations in real-time order",
    );
    if !rec.presence.consistent {
        return absent(v);
    }
    let mut evidence = Vec::new();
    let mut first: Option<f64> = None;
    let mut checked = 0usize;
    // Per node slot (all its lives) and name: the largest token shown so far.
    let mut last: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    let mut samples: Vec<_> = rec.samples.iter().collect();
    samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    for s in samples {
        let TierSample::Names(rows) = &s.consistent else { continue };
        for r in rows {
            let Some(tok) = r.fence_token else { continue };
            checked += 1;
            let key = (s.node.clone(), r.name.clone());
            match last.get(&key) {
                Some((prev, at)) if tok < *prev => {
                    first = Some(first.map_or(s.t_s, |f: f64| f.min(s.t_s)));
                    evidence.push(Evidence::at(
                        s.t_s,
                        s.node.clone(),
                        format!("{} at token {tok}, after showing token {prev} at {at:.1} s", r.name),
                    ));
                }
                _ => {
                    last.insert(key, (tok, s.t_s));
                }
            }
        }
    }
    // Registrations: one that was called after another returned has a larger token. Only writes
    // that created their registration count: the owner registering a name it already holds (its
    // earlier attempt timed out on the client but committed) is answered with the existing
    // registration's token, applied at a later index (`root_token.index > fence_token`). Such an
    // answer must come after an attempt of the same (name, pid), or the token came from nowhere.
    // A node's own retry of the proposal (same request id, `"duplicate": true`) is the same
    // registration: it counts as created by this operation.
    let all: Vec<(&Operation, u64, bool)> = rec
        .ops
        .iter()
        .filter(|o| o.kind == "register" && tier_of(o) == Some("consistent"))
        .filter_map(|o| match &o.result {
            OpResult::Ok { body } => {
                let duplicate = body.get("duplicate").and_then(serde_json::Value::as_bool) == Some(true);
                token_of(body).map(|t| (o, t, duplicate || root_index_of(body).is_none_or(|i| i == t)))
            }
            _ => None,
        })
        .collect();
    let same_target = |a: &Operation, b: &Operation| {
        a.request.get("name") == b.request.get("name") && a.request.get("pid") == b.request.get("pid")
    };
    for (b, tb, _) in all.iter().filter(|(_, _, created)| !created) {
        checked += 1;
        let attempted_before = rec
            .ops
            .iter()
            .any(|a| a.kind == "register" && a.id != b.id && a.invoke_s < b.invoke_s && same_target(a, b));
        if !attempted_before {
            first = Some(first.map_or(b.complete_s, |f: f64| f.min(b.complete_s)));
            evidence.push(Evidence::at(
                b.complete_s,
                b.node.clone(),
                format!("register op {} was answered with the existing token {tb}, but no earlier attempt of that name and pid exists", b.id),
            ));
        }
    }
    let regs: Vec<(&Operation, u64)> =
        all.iter().filter(|(_, _, created)| *created).map(|(o, t, _)| (*o, *t)).collect();
    for (b, tb) in &regs {
        checked += 1;
        if let Some((a, ta)) = regs.iter().filter(|(a, _)| a.complete_s < b.invoke_s).max_by_key(|(_, t)| *t)
            && tb <= ta
        {
            first = Some(first.map_or(b.complete_s, |f: f64| f.min(b.complete_s)));
            evidence.push(Evidence::at(
                b.complete_s,
                b.node.clone(),
                format!(
                    "register op {} got token {tb}, but op {} (finished at {:.3} s, before it started) got {ta}",
                    b.id, a.id, a.complete_s
                ),
            ));
        }
    }
    if evidence.is_empty() {
        if checked == 0 {
            return v.skip("no fencing token was observed");
        }
        v.pass(format!("{checked} token observations, none backwards"))
    } else {
        v.fail(format!("{} tokens went backwards", evidence.len()), first, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::fixtures::recording;
    use super::*;
    use crate::record::{FaultWindow, NameRow};
    use serde_json::json;

    fn row(name: &str, pid: &str, tok: u64) -> NameRow {
        NameRow { name: name.into(), pid: pid.into(), fence_token: Some(tok) }
    }

    fn op(id: u64, kind: &str, req: serde_json::Value, t: (f64, f64), result: OpResult) -> Operation {
        Operation { id, node: "node-1".into(), kind: kind.into(), request: req, invoke_s: t.0, complete_s: t.1, result }
    }

    fn ok(body: serde_json::Value) -> OpResult {
        OpResult::Ok { body }
    }

    #[test]
    fn everything_is_skipped_without_the_tier() {
        let rec = recording(&["node-1"], 3, |_, _, _| {});
        for v in [single_owner_per_token(&rec), tokens_monotonic(&rec), linearizable(&rec)] {
            assert_eq!(v.status, Status::Skipped, "{v:?}");
            assert!(v.summary.contains("404"));
        }
    }

    #[test]
    fn one_owner_per_token_passes() {
        let mut rec = recording(&["node-1", "node-2"], 3, |tick, _, s| {
            let rows = if tick < 2 { vec![row("c", "<node-1.1.1>", 5)] } else { vec![row("c", "<node-2.1.1>", 9)] };
            s.consistent = TierSample::Names(rows);
        });
        rec.presence.consistent = true;
        assert_eq!(single_owner_per_token(&rec).status, Status::Pass);
    }

    #[test]
    fn two_owners_at_one_token_fail() {
        let mut rec = recording(&["node-1", "node-2"], 3, |tick, n, s| {
            let pid = if n == "node-2" && tick == 2 { "<node-2.1.1>" } else { "<node-1.1.1>" };
            s.consistent = TierSample::Names(vec![row("c", pid, 5)]);
        });
        rec.presence.consistent = true;
        let v = single_owner_per_token(&rec);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(2.0));
        assert_eq!(v.evidence[0].node.as_deref(), Some("node-2"));
    }

    #[test]
    fn register_answer_conflicting_with_a_view_fails() {
        let mut rec = recording(&["node-1"], 2, |_, _, s| {
            s.consistent = TierSample::Names(vec![row("c", "<node-1.1.1>", 5)]);
        });
        rec.presence.consistent = true;
        rec.ops.push(op(
            1,
            "register",
            json!({"tier":"consistent","name":"c","pid":"<node-1.1.9>"}),
            (0.5, 0.6),
            ok(json!({"fence_token":5})),
        ));
        assert_eq!(single_owner_per_token(&rec).status, Status::Fail);
    }

    #[test]
    fn a_view_going_back_to_an_older_token_fails() {
        let mut rec = recording(&["node-1"], 4, |tick, _, s| {
            let tok = if tick == 3 { 4 } else { 7 };
            s.consistent = TierSample::Names(vec![row("c", "<node-1.1.1>", tok)]);
        });
        rec.presence.consistent = true;
        let v = tokens_monotonic(&rec);
        assert_eq!(v.status, Status::Fail);
        assert_eq!(v.first_violation_s, Some(3.0));
        let mut rec = recording(&["node-1"], 4, |tick, _, s| {
            s.consistent = TierSample::Names(vec![row("c", "<node-1.1.1>", 7 + tick)]);
        });
        rec.presence.consistent = true;
        assert_eq!(tokens_monotonic(&rec).status, Status::Pass);
    }

    #[test]
    fn a_later_registration_with_a_smaller_token_fails() {
        let mut rec = recording(&["node-1"], 1, |_, _, _| {});
        rec.presence.consistent = true;
        let req = |n: &str| json!({"tier":"consistent","name":n,"pid":"<node-1.1.1>"});
        rec.ops.push(op(1, "register", req("a"), (0.0, 1.0), ok(json!({"fence_token":10}))));
        rec.ops.push(op(2, "register", req("b"), (2.0, 3.0), ok(json!({"fence_token":8}))));
        let v = tokens_monotonic(&rec);
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence[0].detail.contains("op 2"));
        // Concurrent registrations may commit in either order.
        rec.ops[1].invoke_s = 0.5;
        assert_eq!(tokens_monotonic(&rec).status, Status::Pass);
    }

    #[test]
    fn an_owner_re_registering_its_name_may_get_the_older_token_of_its_earlier_attempt() {
        // Seen in composed-faults seed 3: op 161 timed out on the client but committed at token
        // 26; op 419 registered another name at 57; op 467, the same pid again, got 26 (applied
        // at index 60).
        let mut rec = recording(&["node-1"], 1, |_, _, _| {});
        rec.presence.consistent = true;
        let req = |n: &str| json!({"tier":"consistent","name":n,"pid":"<node-1.1.1>"});
        rec.ops.push(op(
            161,
            "register",
            req("c2"),
            (12.7, 14.7),
            OpResult::Indeterminate { error: "timed out".into() },
        ));
        rec.ops.push(op(
            419,
            "register",
            req("c4"),
            (27.5, 27.6),
            ok(json!({"fence_token":57,"root_token":{"term":4,"index":57}})),
        ));
        rec.ops.push(op(
            467,
            "register",
            req("c2"),
            (32.6, 32.7),
            ok(json!({"fence_token":26,"root_token":{"term":5,"index":60}})),
        ));
        assert_eq!(tokens_monotonic(&rec).status, Status::Pass, "{:?}", tokens_monotonic(&rec));
        // The same answer with no earlier attempt of that name and pid is a token from nowhere.
        rec.ops.remove(0);
        let v = tokens_monotonic(&rec);
        assert_eq!(v.status, Status::Fail);
        assert!(v.evidence[0].detail.contains("no earlier attempt"), "{v:?}");
        // A write that created its registration (token = applied index) is held to the order.
        rec.ops[1].result = ok(json!({"fence_token":26,"root_token":{"term":5,"index":26}}));
        assert_eq!(tokens_monotonic(&rec).status, Status::Fail);
    }

    #[test]
    fn a_registration_answered_by_the_nodes_own_retry_is_the_same_registration() {
        // Seen in the ci scenario: op 28's proposal committed at index 5, its answer was lost
        // during cluster formation, the node retried the same request id and the request-id
        // cache answered at index 6. It is op 28's own registration, not a token from nowhere.
        let mut rec = recording(&["node-2"], 1, |_, _, _| {});
        rec.presence.consistent = true;
        let req = json!({"tier":"consistent","name":"chaos-c-0","pid":"<node-2.1.1>"});
        let answer = json!({"fence_token":5,"root_token":{"term":2,"index":6},"duplicate":true});
        rec.ops.push(op(28, "register", req, (0.26, 1.37), ok(answer)));
        assert_eq!(tokens_monotonic(&rec).status, Status::Pass, "{:?}", tokens_monotonic(&rec));
        // Without the mark the same answer is still a token from nowhere.
        rec.ops[0].result = ok(json!({"fence_token":5,"root_token":{"term":2,"index":6}}));
        assert_eq!(tokens_monotonic(&rec).status, Status::Fail);
    }

    fn lin_rec(lookup_result: OpResult, fault_at: Option<f64>) -> Recording {
        let mut rec = recording(&["node-1"], 1, |_, _, _| {});
        rec.presence.consistent = true;
        rec.ops.push(op(
            1,
            "register",
            json!({"tier":"consistent","name":"c","pid":"<node-1.1.1>"}),
            (0.0, 1.0),
            ok(json!({"fence_token":3})),
        ));
        rec.ops.push(op(
            2,
            "lookup",
            json!({"tier":"consistent","name":"c","freshness":"strong"}),
            (5.0, 6.0),
            lookup_result,
        ));
        if let Some(t) = fault_at {
            rec.faults.push(FaultWindow {
                action: "kill".into(),
                label: "kill -9 node-1".into(),
                nodes: vec!["node-1".into()],
                start_s: t,
                end_s: t,
                line: 1,
            });
        }
        rec
    }

    #[test]
    fn each_registration_that_may_own_a_name_gets_one_eviction_however_many_faults_follow() {
        // composed-faults seed 2: 9 faults and 23 registrations of one name gave 60 never-ending
        // evictions and the search ran out of budget. Only registrations that may have taken the
        // name (not `AlreadyRegistered`) are evictable, once, from the first fault after them.
        let mut rec = lin_rec(ok(json!({"name":"c","pid":"<node-1.1.1>","fence_token":3})), Some(2.0));
        for (i, t) in [3.0, 4.0, 7.0, 9.0].into_iter().enumerate() {
            rec.faults.push(FaultWindow {
                action: "isolate".into(),
                label: format!("isolate {i}"),
                nodes: vec!["node-2".into()],
                start_s: t,
                end_s: t + 0.5,
                line: 2 + i,
            });
        }
        let taken = OpResult::Refused { status: 409, reason: "AlreadyRegistered".into(), detail: String::new() };
        for i in 0..20 {
            let req = json!({"tier":"consistent","name":"c","pid":format!("<node-2.1.{i}>")});
            rec.ops.push(op(10 + i, "register", req, (2.5 + i as f64 * 0.3, 2.6 + i as f64 * 0.3), taken.clone()));
        }
        let evictions = history(&rec).iter().filter(|o| matches!(o.input, Input::Evict(_))).count();
        assert_eq!(evictions, 1, "only the owner's registration, from the first fault after it");
        assert_eq!(linearizable(&rec).status, Status::Pass);
    }

    #[test]
    fn strong_lookup_that_misses_a_committed_name_is_not_linearizable() {
        let not_found = OpResult::Refused { status: 404, reason: "NotFound".into(), detail: String::new() };
        let v = linearizable(&lin_rec(not_found.clone(), None));
        assert_eq!(v.status, Status::Fail, "{v:?}");
        assert!(v.summary.contains("`c`"));
        // After a fault that may have evicted the owner, the miss is explained.
        assert_eq!(linearizable(&lin_rec(not_found, Some(2.0))).status, Status::Pass);
        let found = ok(json!({"name":"c","pid":"<node-1.1.1>","fence_token":3}));
        assert_eq!(linearizable(&lin_rec(found, None)).status, Status::Pass);
    }

    #[test]
    fn a_miss_is_explained_only_once_a_sample_shows_the_owners_node_down() {
        use crate::record::MemberRow;
        let with_down_seen_at = |down_tick: u64| {
            let mut rec = recording(&["node-1", "node-2"], 8, move |tick, n, s| {
                let state = if n == "node-2" && tick == down_tick { "down" } else { "alive" };
                s.members = Some(vec![
                    MemberRow { node: "node-1".into(), incarnation: 1, state: state.into() },
                    MemberRow { node: "node-2".into(), incarnation: 1, state: "alive".into() },
                ]);
            });
            let lin =
                lin_rec(OpResult::Refused { status: 404, reason: "NotFound".into(), detail: String::new() }, None);
            rec.presence.consistent = true;
            rec.ops = lin.ops;
            rec
        };
        // node-2 saw node-1 down at 4 s (no fault window): the leader may have removed its names.
        assert_eq!(linearizable(&with_down_seen_at(4)).status, Status::Pass);
        // Seen down only after the lookup answered: nothing explains the miss.
        assert_eq!(linearizable(&with_down_seen_at(8)).status, Status::Fail);
        assert_eq!(pid_node("<node-1.17.3>"), Some("node-1"));
        assert_eq!(pid_node("<a.b.c.1.2>"), Some("a.b.c"));
        assert_eq!(pid_node("node-1"), None);
    }

    #[test]
    fn refused_reads_and_no_effect_writes_leave_the_history() {
        let refused = OpResult::Refused { status: 503, reason: "NotLeader".into(), detail: String::new() };
        let mut rec = lin_rec(refused, None);
        rec.ops.push(op(
            3,
            "register",
            json!({"tier":"consistent","name":"c","pid":"<node-1.1.2>"}),
            (7.0, 8.0),
            OpResult::Refused { status: 503, reason: "NotLeader".into(), detail: String::new() },
        ));
        let h = history(&rec);
        assert_eq!(h.len(), 1);
        assert_eq!(linearizable(&rec).status, Status::Pass);
    }
}
