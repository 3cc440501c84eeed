//! A linearizability checker for the consistent tier: a map of name -> owner pid with
//! `register` (first wins, else `AlreadyRegistered`), `unregister` (only the owner's) and a `Strong`
//! `lookup`, plus `evict` (the owner's node departed or the owner exited: the registry may remove the
//! name at any time after).
//!
//! Algorithm: Wing & Gong's search with Lowe's memoisation, in the form of Knossos/porcupine. The
//! history is split per name first (linearizability is local: a history of independent objects is
//! linearizable iff each object's sub-history is; Herlihy & Wing 1990), so each search is small.
//! Calls and returns are ordered by time (a call before a return at the same instant, so touching
//! operations count as concurrent, never as a false violation); an operation whose answer never
//! came (timeout, connection lost) returns at infinity with any output, which is the same as "took
//! effect at some point after its call, or never". The search is bounded by a step budget;
//! exceeding it answers [`Outcome::Inconclusive`], never a pass.
//!
//! Invariant: [`check`] answers [`Outcome::Linearizable`] only when a total order of the operations
//! exists that respects real time (an operation that returned before another was called comes
//! first) and the map's sequential semantics.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

/// What an operation asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", content = "pid", rename_all = "snake_case")]
pub enum Input {
    /// Register the name to `pid`.
    Register(String),
    /// Unregister the name if `pid` owns it.
    Unregister(String),
    /// `Strong` lookup.
    Lookup,
    /// The registry may drop the name if `pid` owns it (owner exited or its node departed).
    Evict(String),
}

/// What it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "out", content = "pid", rename_all = "snake_case")]
pub enum Output {
    /// Register succeeded.
    Registered,
    /// Register refused: someone else owns it.
    AlreadyRegistered,
    /// Unregister succeeded.
    Unregistered,
    /// Unregister refused: the pid does not own it.
    NotRegistered,
    /// Lookup found this owner.
    Found(String),
    /// Lookup found nothing.
    NotFound,
    /// No answer: any output, and the effect may or may not have happened.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryOp {
    /// Identifier (the recording's operation id).
    pub id: u64,
    /// The name it is about.
    pub name: String,
    /// The node it was sent to.
    pub node: String,
    /// Request.
    pub input: Input,
    /// Answer.
    pub output: Output,
    /// Call time.
    pub invoke_s: f64,
    /// Return time; `None` = never returned (return at infinity).
    pub complete_s: Option<f64>,
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    /// Every name's sub-history is linearizable.
    Linearizable,
    /// This name's sub-history is not.
    NotLinearizable {
        /// The name.
        name: String,
        /// Its operations, in call order.
        ops: Vec<HistoryOp>,
        /// The most operations any partial linearization placed.
        longest_prefix: usize,
    },
    /// The step budget ran out on this name.
    Inconclusive {
        /// The name.
        name: String,
    },
}

/// Default step budget per name.
pub const DEFAULT_MAX_STEPS: usize = 2_000_000;

type Owner = u32; // 0 = no owner, else 1 + index into the pid table

fn step(state: Owner, input: &Input, output: &Output, pid_index: &HashMap<&str, Owner>) -> Option<Owner> {
    let id = |p: &str| pid_index.get(p).copied().unwrap_or(u32::MAX);
    let any = *output == Output::Unknown;
    match input {
        Input::Register(p) => {
            let p = id(p);
            if state == 0 {
                (any || *output == Output::Registered).then_some(p)
            } else if state == p {
                // Re-registering the current owner: either answer is a faithful map.
                (any || matches!(output, Output::Registered | Output::AlreadyRegistered)).then_some(state)
            } else {
                (any || *output == Output::AlreadyRegistered).then_some(state)
            }
        }
        Input::Unregister(p) => {
            if state != 0 && state == id(p) {
                (any || *output == Output::Unregistered).then_some(0)
            } else {
                (any || *output == Output::NotRegistered).then_some(state)
            }
        }
        Input::Lookup => match output {
            Output::Unknown => Some(state),
            Output::NotFound => (state == 0).then_some(state),
            Output::Found(p) => (state != 0 && state == id(p)).then_some(state),
            _ => None,
        },
        Input::Evict(p) => Some(if state != 0 && state == id(p) { 0 } else { state }),
    }
}

/// Check a whole history (any names) with a step budget per name.
pub fn check(history: &[HistoryOp], max_steps: usize) -> Outcome {
    let mut by_name: BTreeMap<&str, Vec<&HistoryOp>> = BTreeMap::new();
    for op in history {
        by_name.entry(op.name.as_str()).or_default().push(op);
    }
    for (name, ops) in by_name {
        match check_one(&ops, max_steps) {
            One::Ok => {}
            One::Violation { longest_prefix } => {
                let mut ops: Vec<HistoryOp> = ops.into_iter().cloned().collect();
                ops.sort_by(|a, b| a.invoke_s.total_cmp(&b.invoke_s));
                return Outcome::NotLinearizable { name: name.to_string(), ops, longest_prefix };
            }
            One::Budget => return Outcome::Inconclusive { name: name.to_string() },
        }
    }
    Outcome::Linearizable
}

enum One {
    Ok,
    Violation { longest_prefix: usize },
    Budget,
}

fn check_one(ops: &[&HistoryOp], max_steps: usize) -> One {
    let n = ops.len();
    if n == 0 {
        return One::Ok;
    }
    let mut pid_index: HashMap<&str, Owner> = HashMap::new();
    for op in ops {
        let p = match &op.input {
            Input::Register(p) | Input::Unregister(p) | Input::Evict(p) => Some(p.as_str()),
            Input::Lookup => None,
        };
        for p in p.into_iter().chain(match &op.output {
            Output::Found(p) => Some(p.as_str()),
            _ => None,
        }) {
            let next = pid_index.len() as Owner + 1;
            pid_index.entry(p).or_insert(next);
        }
    }
    // Events: (time, is_return, op). Calls sort before returns at equal times.
    let mut events: Vec<(f64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_s, false, i));
        events.push((op.complete_s.unwrap_or(f64::INFINITY).max(op.invoke_s), true, i));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    // A doubly linked list over the events; index `len` is the head sentinel.
    let len = events.len();
    let head = len;
    let mut next: Vec<usize> = (1..=len).chain([0]).collect(); // next[head] = 0
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..len - 1).chain([usize::MAX]).collect();
    next[len - 1] = usize::MAX;
    let mut return_of = vec![0usize; n];
    for (i, e) in events.iter().enumerate() {
        if e.1 {
            return_of[e.2] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != usize::MAX {
            prev[nx] = i;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Owner)> = HashSet::new();
    let mut stack: Vec<(usize, Owner)> = Vec::new();
    let mut state: Owner = 0;
    let mut entry = next[head];
    let mut steps = 0usize;
    let mut longest = 0usize;
    while next[head] != usize::MAX {
        steps += 1;
        if steps > max_steps {
            return One::Budget;
        }
        if entry == usize::MAX {
            // Every remaining call was tried at this point; backtrack.
            let Some((call, s)) = stack.pop() else { return One::Violation { longest_prefix: longest } };
            let op = events[call].2;
            state = s;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, return_of[op]);
            relink(&mut next, &mut prev, call);
            entry = next[call];
            continue;
        }
        let (_, is_return, op) = events[entry];
        if !is_return {
            if let Some(new_state) = step(state, &ops[op].input, &ops[op].output, &pid_index) {
                let mut bits = linearized.clone();
                bits[op / 64] |= 1 << (op % 64);
                if cache.insert((bits.clone(), new_state)) {
                    stack.push((entry, state));
                    longest = longest.max(stack.len());
                    state = new_state;
                    linearized = bits;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, return_of[op]);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // The earliest pending return: its operation must be placed before anything later.
            let Some((call, s)) = stack.pop() else { return One::Violation { longest_prefix: longest } };
            let op = events[call].2;
            state = s;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, return_of[op]);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    One::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, input: Input, output: Output, invoke: f64, complete: Option<f64>) -> HistoryOp {
        HistoryOp { id, name: "n".into(), node: "node-1".into(), input, output, invoke_s: invoke, complete_s: complete }
    }
    fn reg(p: &str) -> Input {
        Input::Register(p.into())
    }
    fn found(p: &str) -> Output {
        Output::Found(p.into())
    }

    #[test]
    fn sequential_register_then_lookup_is_linearizable() {
        let h = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(1.0)),
            op(2, Input::Lookup, found("a"), 2.0, Some(3.0)),
            op(3, reg("b"), Output::AlreadyRegistered, 4.0, Some(5.0)),
            op(4, Input::Unregister("a".into()), Output::Unregistered, 6.0, Some(7.0)),
            op(5, Input::Lookup, Output::NotFound, 8.0, Some(9.0)),
        ];
        assert_eq!(check(&h, DEFAULT_MAX_STEPS), Outcome::Linearizable);
    }

    #[test]
    fn two_successful_registrations_by_different_pids_are_not_linearizable() {
        let h = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(2.0)),
            op(2, reg("b"), Output::Registered, 1.0, Some(3.0)),
        ];
        assert!(matches!(check(&h, DEFAULT_MAX_STEPS), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable() {
        // Register completes at 1; a Strong lookup called at 2 must see it.
        let h = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(1.0)),
            op(2, Input::Lookup, Output::NotFound, 2.0, Some(3.0)),
        ];
        let out = check(&h, DEFAULT_MAX_STEPS);
        match out {
            Outcome::NotLinearizable { name, ops, longest_prefix } => {
                assert_eq!(name, "n");
                assert_eq!(ops.len(), 2);
                assert_eq!(longest_prefix, 1);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(4.0)),
            op(2, Input::Lookup, Output::NotFound, 1.0, Some(2.0)),
            op(3, Input::Lookup, found("a"), 2.5, Some(3.0)),
        ];
        assert_eq!(check(&h, DEFAULT_MAX_STEPS), Outcome::Linearizable);
    }

    #[test]
    fn reads_going_back_in_time_are_not_linearizable() {
        // Both reads overlap the write, but the first sees the new value and a later one the old.
        let h = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(10.0)),
            op(2, Input::Lookup, found("a"), 1.0, Some(2.0)),
            op(3, Input::Lookup, Output::NotFound, 3.0, Some(4.0)),
        ];
        assert!(matches!(check(&h, DEFAULT_MAX_STEPS), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn timed_out_register_may_or_may_not_take_effect() {
        let took_effect =
            vec![op(1, reg("a"), Output::Unknown, 0.0, None), op(2, Input::Lookup, found("a"), 5.0, Some(6.0))];
        assert_eq!(check(&took_effect, DEFAULT_MAX_STEPS), Outcome::Linearizable);
        let did_not = vec![
            op(1, reg("a"), Output::Unknown, 0.0, None),
            op(2, Input::Lookup, Output::NotFound, 5.0, Some(6.0)),
            op(3, reg("b"), Output::Registered, 7.0, Some(8.0)),
        ];
        assert_eq!(check(&did_not, DEFAULT_MAX_STEPS), Outcome::Linearizable);
        // But it cannot take effect twice: after b's registration wins, a cannot be found.
        let impossible = vec![
            op(1, reg("a"), Output::Unknown, 0.0, None),
            op(2, reg("b"), Output::Registered, 1.0, Some(2.0)),
            op(3, Input::Lookup, found("a"), 3.0, Some(4.0)),
        ];
        assert!(matches!(check(&impossible, DEFAULT_MAX_STEPS), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn unregister_by_a_non_owner_cannot_succeed() {
        let h = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(1.0)),
            op(2, Input::Unregister("b".into()), Output::Unregistered, 2.0, Some(3.0)),
        ];
        assert!(matches!(check(&h, DEFAULT_MAX_STEPS), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn eviction_explains_a_disappearing_name_but_only_after_it_was_possible() {
        let evicted = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(1.0)),
            op(2, Input::Evict("a".into()), Output::Unknown, 2.0, None),
            op(3, Input::Lookup, Output::NotFound, 5.0, Some(6.0)),
        ];
        assert_eq!(check(&evicted, DEFAULT_MAX_STEPS), Outcome::Linearizable);
        let too_early = vec![
            op(1, reg("a"), Output::Registered, 0.0, Some(1.0)),
            op(3, Input::Lookup, Output::NotFound, 2.0, Some(3.0)),
            op(2, Input::Evict("a".into()), Output::Unknown, 4.0, None),
        ];
        assert!(matches!(check(&too_early, DEFAULT_MAX_STEPS), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn names_are_checked_independently() {
        let mut h =
            vec![op(1, reg("a"), Output::Registered, 0.0, Some(1.0)), op(2, Input::Lookup, found("a"), 2.0, Some(3.0))];
        let mut other = op(3, Input::Lookup, Output::NotFound, 2.0, Some(3.0));
        other.name = "m".into();
        h.push(other);
        assert_eq!(check(&h, DEFAULT_MAX_STEPS), Outcome::Linearizable);
    }

    #[test]
    fn a_tiny_budget_is_inconclusive_never_a_pass() {
        let h: Vec<HistoryOp> =
            (0..12).map(|i| op(i, reg(&format!("p{i}")), Output::AlreadyRegistered, 0.0, Some(100.0))).collect();
        assert!(matches!(check(&h, 3), Outcome::Inconclusive { .. }));
    }

    #[test]
    fn many_concurrent_operations_finish_within_the_budget() {
        // 40 overlapping lookups around one register: the memo keeps the search polynomial.
        let mut h = vec![op(0, reg("a"), Output::Registered, 0.0, Some(50.0))];
        for i in 1..=40 {
            let out = if i <= 20 { Output::NotFound } else { found("a") };
            h.push(op(i, Input::Lookup, out, i as f64, Some(i as f64 + 0.5)));
        }
        assert_eq!(check(&h, DEFAULT_MAX_STEPS), Outcome::Linearizable);
    }
}
