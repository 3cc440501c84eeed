//! The checkers of a simulated run, on the recorded client operations and topology.
//!
//! - `consistent_linearizable`: the history of registers, unregisters and `Strong` reads (plus an
//!   `Evict` for every pid whose node a fault may have had declared down) is linearizable, with
//!   the chaos suite's checker ([`cohort_chaos::invariants::linearizability`]).
//! - `consistent_single_owner_per_token`: no fencing token was granted to two registrations.
//! - `consistent_tokens_monotonic`: a registration that starts after another one returned gets a
//!   larger token (tokens are log indexes), unless it is the same owner's idempotent repeat.
//! - `consistent_available_after_heal`: after every step that removes a fault and leaves a
//!   majority of the stable voters up and pairwise connected (no loss or delay window active), a
//!   write succeeds within [`WRITE_DEADLINE_US`] unless another fault interrupts it first. The
//!   stable voters are the leader's voters when the cluster was last healthy for 10 s: judging
//!   against them (not against the voters of the moment) is what catches a self-healing rule
//!   that shrank the set during the faults and so made the cluster less fault tolerant than doing
//!   nothing would have. A recovery after a stable voter **left gracefully** (since the stable
//!   snapshot) is not judged: a leave is an operator's removal, by design (docs/consistent.md,
//!   `Left` departs at once), so the stable voters no longer say what "doing nothing" would give
//!   (seeds 1038, 1133, 1766, 1926 of 3 nodes, `all`: a voter left, the 2 remaining voters
//!   became 1, then that one, the leader, left too; plain Raft with the operator's removal is
//!   unavailable there as well). The next snapshot, 10 s into a healthy cluster, is the new base.

use std::collections::{BTreeMap, BTreeSet};

use cohort_chaos::invariants::linearizability::{
    self, DEFAULT_MAX_STEPS, HistoryOp, Input, Outcome, Output as LinOutput,
};

use crate::world::{Status, Verdict};

/// How long after a recovery step a write must have succeeded (the chaos suite's 10 s).
pub const WRITE_DEADLINE_US: u64 = 10_000_000;

/// What an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A register or unregister.
    Write,
    /// A `Strong` read.
    Read,
    /// The registry may drop this pid's names from now on.
    Evict,
    /// Refused without effect (a read refused, a registration of a departed owner): not in the
    /// history.
    NoEffect,
}

/// One client operation as recorded.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// What it was.
    pub kind: OpKind,
    /// Its history entry (output `Unknown` and no completion while unanswered).
    pub op: HistoryOp,
    /// The fencing token a successful registration got.
    pub token: Option<u64>,
    /// Whether that token was minted by this registration (its log index), not an owner's
    /// repeat answered with the token it already held.
    pub fresh: bool,
    /// Whether an answer came (a refusal too).
    pub answered: bool,
    /// Whether it succeeded (a committed write, a served read).
    pub ok: bool,
}

impl Recorded {
    /// An operation called at `invoke_s` and not answered yet.
    pub fn called(kind: OpKind, id: u64, name: String, node: String, input: Input, invoke_s: f64) -> Self {
        Self {
            kind,
            op: HistoryOp { id, name, node, input, output: LinOutput::Unknown, invoke_s, complete_s: None },
            token: None,
            fresh: false,
            answered: false,
            ok: false,
        }
    }
}

/// The topology after a nemesis step.
#[derive(Clone, Debug)]
pub struct Topology {
    /// When (µs of simulated time).
    pub at_us: u64,
    /// Whether the step removed a fault (a heal, a restart, a resume, the end of a window).
    pub recovery: bool,
    /// Per node: running and not paused.
    pub up: Vec<bool>,
    /// Cut directed links.
    pub cut: BTreeSet<(usize, usize)>,
    /// A loss or delay window is active.
    pub degraded: bool,
}

fn verdict(name: &'static str, status: Status, detail: String) -> Verdict {
    Verdict { name, status, detail }
}

/// `consistent_linearizable`.
pub fn linearizable(ops: &[Recorded]) -> Verdict {
    let history: Vec<HistoryOp> = ops
        .iter()
        .filter(|r| match r.kind {
            OpKind::Write | OpKind::Evict => true,
            OpKind::Read => r.ok,
            OpKind::NoEffect => false,
        })
        .map(|r| r.op.clone())
        .collect();
    const NAME: &str = "consistent_linearizable";
    match linearizability::check(&history, DEFAULT_MAX_STEPS) {
        Outcome::Linearizable => verdict(NAME, Status::Pass, format!("{} operations", history.len())),
        Outcome::NotLinearizable { name, ops, longest_prefix } => {
            let shown: Vec<String> = ops
                .iter()
                .take(12)
                .map(|o| format!("[{} {:?} -> {:?} @{:.3}..{:?}]", o.node, o.input, o.output, o.invoke_s, o.complete_s))
                .collect();
            verdict(
                NAME,
                Status::Fail,
                format!(
                    "{name}: {} operations, no order places more than {longest_prefix}: {}",
                    ops.len(),
                    shown.join(" ")
                ),
            )
        }
        Outcome::Inconclusive { name } => verdict(NAME, Status::Inconclusive, format!("search budget spent on {name}")),
    }
}

fn registrations(ops: &[Recorded]) -> Vec<(&Recorded, u64)> {
    ops.iter().filter_map(|r| r.token.filter(|_| r.ok).map(|t| (r, t))).collect()
}

fn owner(r: &Recorded) -> (&str, String) {
    (r.op.name.as_str(), format!("{:?}", r.op.input))
}

/// `consistent_single_owner_per_token`.
pub fn single_owner_per_token(ops: &[Recorded]) -> Verdict {
    const NAME: &str = "consistent_single_owner_per_token";
    let mut by_token: BTreeMap<u64, &Recorded> = BTreeMap::new();
    let regs = registrations(ops);
    for (r, token) in &regs {
        if let Some(first) = by_token.get(token) {
            if owner(first) != owner(r) {
                return verdict(
                    NAME,
                    Status::Fail,
                    format!(
                        "token {token} granted to {:?} on {} and to {:?} on {}",
                        owner(first),
                        first.op.node,
                        owner(r),
                        r.op.node
                    ),
                );
            }
        } else {
            by_token.insert(*token, r);
        }
    }
    verdict(NAME, Status::Pass, format!("{} registrations, {} tokens", regs.len(), by_token.len()))
}

/// `consistent_tokens_monotonic`.
pub fn tokens_monotonic(ops: &[Recorded]) -> Verdict {
    const NAME: &str = "consistent_tokens_monotonic";
    let regs: Vec<(&Recorded, u64)> = registrations(ops).into_iter().filter(|(r, _)| r.fresh).collect();
    let mut by_complete: Vec<(f64, u64, &Recorded)> =
        regs.iter().map(|(r, t)| (r.op.complete_s.unwrap_or(f64::INFINITY), *t, *r)).collect();
    by_complete.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut by_invoke: Vec<(f64, u64, &Recorded)> = regs.iter().map(|(r, t)| (r.op.invoke_s, *t, *r)).collect();
    by_invoke.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut seen: BTreeMap<u64, &Recorded> = BTreeMap::new();
    let mut max: Option<(u64, &Recorded)> = None;
    let mut next = 0;
    for (invoke, token, r) in by_invoke {
        while next < by_complete.len() && by_complete[next].0 < invoke {
            let (_, t, a) = by_complete[next];
            seen.insert(t, a);
            if max.is_none_or(|(m, _)| t > m) {
                max = Some((t, a));
            }
            next += 1;
        }
        if let Some((m, a)) = max
            && token <= m
        {
            let repeat = seen.get(&token).is_some_and(|first| owner(first) == owner(r));
            if !repeat {
                return verdict(
                    NAME,
                    Status::Fail,
                    format!(
                        "{} on {} started at {invoke:.3} s got token {token}, after {} on {} returned token {m}",
                        r.op.name, r.op.node, a.op.name, a.op.node
                    ),
                );
            }
        }
    }
    verdict(NAME, Status::Pass, format!("{} registrations", regs.len()))
}

fn connected(t: &Topology, group: &[usize]) -> bool {
    group.iter().all(|a| t.up[*a]) && group.iter().all(|a| group.iter().all(|b| a == b || !t.cut.contains(&(*a, *b))))
}

/// The largest group of `voters` that is up and pairwise connected in `t`.
fn largest_group(t: &Topology, voters: &[usize]) -> Vec<usize> {
    let mut best = Vec::new();
    for mask in 0u32..(1u32 << voters.len()) {
        let group: Vec<usize> =
            voters.iter().enumerate().filter(|(k, _)| mask & (1 << k) != 0).map(|(_, v)| *v).collect();
        if group.len() > best.len() && connected(t, &group) {
            best = group;
        }
    }
    best
}

/// `consistent_available_after_heal`.
pub fn available_after_heal(
    ops: &[Recorded],
    topology: &[Topology],
    stable_voters: &[(u64, BTreeSet<usize>)],
    leaves_at: &[(u64, usize)],
    clients_stop_us: u64,
) -> Verdict {
    const NAME: &str = "consistent_available_after_heal";
    let writes: Vec<(f64, f64)> = ops
        .iter()
        .filter(|r| r.kind == OpKind::Write && r.ok)
        .filter_map(|r| r.op.complete_s.map(|c| (r.op.invoke_s, c)))
        .collect();
    let (mut judged, mut slowest) = (0usize, 0.0f64);
    for (i, t) in topology.iter().enumerate().filter(|(_, t)| t.recovery) {
        let Some((stable_at, voters)) = stable_voters.iter().rev().find(|(at, _)| *at <= t.at_us) else { continue };
        if voters.is_empty() || t.degraded {
            continue;
        }
        if leaves_at.iter().any(|(at, node)| voters.contains(node) && *at >= *stable_at && *at <= t.at_us) {
            continue;
        }
        let voters: Vec<usize> = voters.iter().copied().collect();
        let group = largest_group(t, &voters);
        if group.len() < voters.len() / 2 + 1 {
            continue;
        }
        let deadline = t.at_us + WRITE_DEADLINE_US;
        if deadline > clients_stop_us {
            continue;
        }
        let interrupted =
            topology[i + 1..].iter().take_while(|u| u.at_us <= deadline).any(|u| u.degraded || !connected(u, &group));
        if interrupted {
            continue;
        }
        judged += 1;
        let (from, until) = (t.at_us as f64 / 1e6, deadline as f64 / 1e6);
        let first = writes.iter().filter(|(i, c)| *i >= from && *c <= until).map(|(_, c)| *c).reduce(f64::min);
        match first {
            Some(c) => slowest = slowest.max(c - from),
            None => {
                return verdict(
                    NAME,
                    Status::Fail,
                    format!(
                        "after the recovery at {from:.3} s nodes {group:?} (a majority of voters {voters:?}) were up and connected, and no write succeeded by {until:.3} s"
                    ),
                );
            }
        }
    }
    verdict(NAME, Status::Pass, format!("{judged} recovery steps judged, slowest first write {slowest:.3} s after"))
}
