//! The voter ladder (SPEC 7): which members vote, which only learn, and how to get there safely.
//!
//! Role: pure functions over the membership view and the current raft configuration.
//! [`target_voters`] picks at most `max_voters` voters (odd sizes 1, 3, 5) among raft-eligible
//! live members, spread over failure domains, preferring current voters so membership noise does
//! not churn the configuration. [`reconcile`] turns the difference into an ordered plan of
//! single-step [`Transition`]s (add learner, promote, remove, demote) that the leader proposes one at
//! a time. [`raft_id_for`] maps a node incarnation to its raft id.
//!
//! Invariants:
//! - Deterministic: the same inputs give the same target and plan on every node.
//! - A plan never removes or demotes the leader itself (it must hand over leadership first) and no
//!   step leaves the new voter set without a quorum of live voters.
//! - Growth before shrink: learners are added and promoted before dead members are removed and
//!   surplus voters demoted, so fault tolerance never dips below what the live members allow.
//! - A raft id is a non-zero hash of (name, incarnation): a node's next run gets a new id, so a
//!   removed id is never reused (raft-rs requires it).

use std::collections::{BTreeMap, BTreeSet};

use cohort_cluster::{MemberState, NodeId};
use sha2::{Digest, Sha256};

use super::planes::{ConfStep, ConfStepKind, Transition, TransitionId, TransitionPhase};

/// Default voter count (SPEC 7): five voters survive two failures.
pub const DEFAULT_MAX_VOTERS: usize = 5;

/// Voter counts the ladder allows. Even sizes add no fault tolerance over the odd size below them.
pub const VOTER_LADDER: [usize; 3] = [1, 3, 5];

/// A `max_voters` value outside [`VOTER_LADDER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("max_voters must be one of 1, 3, 5 (got {0})")]
pub struct InvalidMaxVoters(pub usize);

/// A validated `max_voters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxVoters(usize);

impl MaxVoters {
    /// Validates `n` against [`VOTER_LADDER`].
    pub fn new(n: usize) -> Result<Self, InvalidMaxVoters> {
        if VOTER_LADDER.contains(&n) { Ok(Self(n)) } else { Err(InvalidMaxVoters(n)) }
    }

    /// The count.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for MaxVoters {
    fn default() -> Self {
        Self(DEFAULT_MAX_VOTERS)
    }
}

/// The raft id of a node incarnation: non-zero, deterministic, different for every incarnation.
pub fn raft_id_for(node: &NodeId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"cohort-raft-id\0");
    hasher.update(node.name.as_bytes());
    hasher.update([0]);
    hasher.update(node.incarnation.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // Raft reserves id 0 for "none"; the odds of hitting it are 2^-64 but the fix is free.
    u64::from_be_bytes(bytes).max(1)
}

/// What the ladder needs to know about one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LadderMember {
    /// Name and incarnation.
    pub node: NodeId,
    /// Its raft id (see [`raft_id_for`]; a restarted node that recovered its log keeps its old id).
    pub raft_id: u64,
    /// Whether it may vote.
    pub raft_eligible: bool,
    /// Its failure domain (empty when unset: all unset members share one domain).
    pub failure_domain: String,
    /// Its membership state.
    pub state: MemberState,
}

/// The raft configuration as the leader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftConfig {
    /// Voting members.
    pub voters: BTreeSet<u64>,
    /// Learners.
    pub learners: BTreeSet<u64>,
}

impl RaftConfig {
    fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// Members by raft id; when one id appears twice (an old and a new row) the livelier state wins.
fn by_id(members: &[LadderMember]) -> BTreeMap<u64, &LadderMember> {
    let rank = |s: MemberState| match s {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Down => 2,
        MemberState::Left => 3,
    };
    let mut map: BTreeMap<u64, &LadderMember> = BTreeMap::new();
    for m in members {
        match map.get(&m.raft_id) {
            Some(old) if rank(old.state) <= rank(m.state) => {}
            _ => {
                map.insert(m.raft_id, m);
            }
        }
    }
    map
}

/// The target voter set (see the module docs). Empty when no member is eligible.
pub fn target_voters(members: &[LadderMember], config: &RaftConfig, max_voters: MaxVoters) -> BTreeSet<u64> {
    let members = by_id(members);
    // A suspect voter stays a candidate: suspicion is often a GC pause, and churning the voter set
    // on it costs two configuration changes for nothing.
    let candidates: Vec<&LadderMember> = members
        .values()
        .copied()
        .filter(|m| {
            m.raft_eligible
                && (m.state == MemberState::Alive
                    || (m.state == MemberState::Suspect && config.voters.contains(&m.raft_id)))
        })
        .collect();
    let size = VOTER_LADDER.iter().rev().copied().find(|n| *n <= max_voters.get().min(candidates.len())).unwrap_or(0);
    let mut domains: BTreeMap<&str, Vec<&LadderMember>> = BTreeMap::new();
    for m in &candidates {
        domains.entry(m.failure_domain.as_str()).or_default().push(m);
    }
    for list in domains.values_mut() {
        list.sort_by_key(|m| (!config.voters.contains(&m.raft_id), m.state != MemberState::Alive, m.raft_id));
    }
    let mut order: Vec<(&str, Vec<&LadderMember>)> = domains.into_iter().collect();
    // Domains already holding voters first, so a small target keeps existing voters' domains.
    order.sort_by_key(|(domain, list)| (!list.iter().any(|m| config.voters.contains(&m.raft_id)), *domain));
    let mut target = BTreeSet::new();
    let mut round = 0;
    while target.len() < size {
        let mut progressed = false;
        for (_, list) in &order {
            if target.len() == size {
                break;
            }
            if let Some(m) = list.get(round) {
                target.insert(m.raft_id);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
        round += 1;
    }
    target
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The ordered plan from `config` to the ladder's target, as single-step transitions with ids
/// `first_id`, `first_id.next()`, ... in phase `Planned`. The leader proposes the first, waits for it
/// to complete, and recomputes (membership may have moved meanwhile).
pub fn reconcile(
    members: &[LadderMember],
    config: &RaftConfig,
    leader: u64,
    max_voters: MaxVoters,
    first_id: TransitionId,
) -> Vec<Transition> {
    let by_id = by_id(members);
    let target = target_voters(members, config, max_voters);
    let is_live = |id: u64| by_id.get(&id).is_some_and(|m| m.state == MemberState::Alive);
    let name = |id: u64| by_id.get(&id).map(|m| m.node.clone());
    let mut sim = config.clone();
    let mut plan = Vec::new();
    let mut id = first_id;
    let mut push = |kind: ConfStepKind, raft_id: u64, reason: &str, plan: &mut Vec<Transition>| {
        plan.push(Transition {
            id,
            steps: vec![ConfStep { kind, raft_id, node: name(raft_id) }],
            phase: TransitionPhase::Planned,
            reason: reason.to_string(),
        });
        id = id.next();
    };
    // A voter-set change is allowed only if the new set keeps a quorum of live voters.
    let keeps_quorum = |voters: &BTreeSet<u64>| {
        !voters.is_empty() && voters.iter().filter(|v| is_live(**v)).count() >= majority(voters.len())
    };

    for m in by_id.values() {
        if m.state == MemberState::Alive && !sim.contains(m.raft_id) {
            sim.learners.insert(m.raft_id);
            push(ConfStepKind::AddLearner, m.raft_id, "live member not in the configuration", &mut plan);
        }
    }
    for v in &target {
        if !sim.voters.contains(v) && sim.learners.contains(v) {
            let mut voters = sim.voters.clone();
            voters.insert(*v);
            if keeps_quorum(&voters) {
                sim.learners.remove(v);
                sim.voters = voters;
                push(ConfStepKind::Promote, *v, "in the target voter set", &mut plan);
            }
        }
    }
    let departed: Vec<u64> = sim
        .voters
        .iter()
        .chain(sim.learners.iter())
        .copied()
        .filter(|id| {
            *id != leader && by_id.get(id).is_none_or(|m| matches!(m.state, MemberState::Down | MemberState::Left))
        })
        .collect();
    for gone in departed {
        let reason = match by_id.get(&gone).map(|m| m.state) {
            Some(MemberState::Left) => "member left",
            Some(_) => "member down",
            None => "not a member",
        };
        if sim.learners.remove(&gone) {
            push(ConfStepKind::Remove, gone, reason, &mut plan);
            continue;
        }
        let mut voters = sim.voters.clone();
        voters.remove(&gone);
        if keeps_quorum(&voters) {
            sim.voters = voters;
            push(ConfStepKind::Remove, gone, reason, &mut plan);
        }
    }
    let surplus: Vec<u64> = sim.voters.iter().copied().filter(|v| !target.contains(v) && *v != leader).collect();
    for v in surplus {
        // Only shrink toward a non-empty target: with no eligible member the current set stays.
        if target.is_empty() {
            break;
        }
        let mut voters = sim.voters.clone();
        voters.remove(&v);
        if keeps_quorum(&voters) {
            sim.voters = voters;
            sim.learners.insert(v);
            push(ConfStepKind::Demote, v, "not in the target voter set", &mut plan);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, domain: &str, state: MemberState) -> LadderMember {
        let node = NodeId::new(name, 1);
        LadderMember { raft_id: raft_id_for(&node), node, raft_eligible: true, failure_domain: domain.into(), state }
    }

    fn id(name: &str) -> u64 {
        raft_id_for(&NodeId::new(name, 1))
    }

    fn ids(names: &[&str]) -> BTreeSet<u64> {
        names.iter().map(|n| id(n)).collect()
    }

    fn alive(names: &[(&str, &str)]) -> Vec<LadderMember> {
        names.iter().map(|(n, d)| m(n, d, MemberState::Alive)).collect()
    }

    #[test]
    fn raft_ids_are_nonzero_deterministic_and_per_incarnation() {
        let a1 = raft_id_for(&NodeId::new("a", 1));
        assert_ne!(a1, 0);
        assert_eq!(a1, raft_id_for(&NodeId::new("a", 1)));
        assert_ne!(a1, raft_id_for(&NodeId::new("a", 2)));
        assert_ne!(a1, raft_id_for(&NodeId::new("b", 1)));
    }

    #[test]
    fn max_voters_accepts_only_the_odd_ladder() {
        assert!(MaxVoters::new(1).is_ok() && MaxVoters::new(3).is_ok() && MaxVoters::new(5).is_ok());
        for n in [0, 2, 4, 6, 7] {
            assert_eq!(MaxVoters::new(n), Err(InvalidMaxVoters(n)));
        }
        assert_eq!(MaxVoters::default().get(), 5);
    }

    #[test]
    fn target_size_is_the_largest_odd_size_available() {
        let cfg = RaftConfig::default();
        let members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", ""), ("f", ""), ("g", "")]);
        assert_eq!(target_voters(&members, &cfg, MaxVoters::default()).len(), 5);
        assert_eq!(target_voters(&members[..4], &cfg, MaxVoters::default()).len(), 3);
        assert_eq!(target_voters(&members[..2], &cfg, MaxVoters::default()).len(), 1);
        assert_eq!(target_voters(&members, &cfg, MaxVoters::new(3).unwrap()).len(), 3);
        assert!(target_voters(&[], &cfg, MaxVoters::default()).is_empty());
    }

    #[test]
    fn target_spreads_over_failure_domains() {
        let members = alive(&[("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("c1", "C")]);
        let target = target_voters(&members, &RaftConfig::default(), MaxVoters::new(3).unwrap());
        // One voter per domain: b1, c1 and exactly one of the a's (the lowest raft id).
        assert!(target.contains(&id("b1")) && target.contains(&id("c1")));
        let a_lowest = [id("a1"), id("a2"), id("a3")].into_iter().min().unwrap();
        assert!(target.contains(&a_lowest), "{target:?}");
    }

    #[test]
    fn target_prefers_current_voters_and_ignores_ineligible_and_dead() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        members[0].raft_eligible = false;
        members[1].state = MemberState::Down;
        let cfg = RaftConfig { voters: ids(&["e", "d", "c"]), learners: BTreeSet::new() };
        let target = target_voters(&members, &cfg, MaxVoters::new(3).unwrap());
        assert_eq!(target, ids(&["c", "d", "e"]));
        // Same inputs in another order: same answer.
        members.reverse();
        assert_eq!(target_voters(&members, &cfg, MaxVoters::new(3).unwrap()), target);
    }

    #[test]
    fn suspect_voter_is_kept_but_suspect_learner_not_promoted() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        members[2].state = MemberState::Suspect;
        members[3].state = MemberState::Suspect;
        let cfg = RaftConfig { voters: ids(&["a", "b", "c"]), learners: ids(&["d"]) };
        assert_eq!(target_voters(&members, &cfg, MaxVoters::default()), ids(&["a", "b", "c"]));
    }

    fn kinds(plan: &[Transition]) -> Vec<(ConfStepKind, u64)> {
        plan.iter().map(|t| (t.steps[0].kind, t.steps[0].raft_id)).collect()
    }

    #[test]
    fn plan_grows_before_it_shrinks_and_ids_are_sequential() {
        // Voters a, b, c; c died; d and e joined.
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        members[2].state = MemberState::Down;
        let cfg = RaftConfig { voters: ids(&["a", "b", "c"]), learners: BTreeSet::new() };
        let first = TransitionId { term: 4, seq: 0 };
        let plan = reconcile(&members, &cfg, id("a"), MaxVoters::new(3).unwrap(), first);
        let k = kinds(&plan);
        let pos = |kind, who: &str| k.iter().position(|s| *s == (kind, id(who))).unwrap();
        assert!(pos(ConfStepKind::AddLearner, "d") < pos(ConfStepKind::Remove, "c"));
        assert!(pos(ConfStepKind::AddLearner, "e") < pos(ConfStepKind::Remove, "c"));
        let promoted: Vec<_> = k.iter().filter(|(kind, _)| *kind == ConfStepKind::Promote).collect();
        assert_eq!(promoted.len(), 1, "exactly one replacement voter: {k:?}");
        assert!(
            pos(ConfStepKind::Promote, if promoted[0].1 == id("d") { "d" } else { "e" })
                < pos(ConfStepKind::Remove, "c")
        );
        assert_eq!(plan.iter().map(|t| t.id.seq).collect::<Vec<_>>(), (0..plan.len() as u64).collect::<Vec<_>>());
        assert!(plan.iter().all(|t| t.phase == TransitionPhase::Planned && t.id.term == 4));
    }

    #[test]
    fn plan_never_demotes_or_removes_the_leader() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        members[0].raft_eligible = false; // the leader lost eligibility
        let cfg = RaftConfig { voters: ids(&["a", "b", "c"]), learners: ids(&["d"]) };
        let plan = reconcile(&members, &cfg, id("a"), MaxVoters::new(3).unwrap(), TransitionId::default());
        assert!(kinds(&plan).iter().all(|(_, who)| *who != id("a")), "{plan:?}");
        members[0].state = MemberState::Left;
        let plan = reconcile(&members, &cfg, id("a"), MaxVoters::new(3).unwrap(), TransitionId::default());
        assert!(kinds(&plan).iter().all(|(_, who)| *who != id("a")), "{plan:?}");
    }

    #[test]
    fn plan_never_leaves_a_voter_set_without_live_quorum() {
        // Five voters, three down: removing any dead voter from {2 live, 3 dead} gives 2 live of 4
        // (quorum 3): refused, one step at a time, until it would hold.
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        for m in &mut members[2..] {
            m.state = MemberState::Down;
        }
        let cfg = RaftConfig { voters: ids(&["a", "b", "c", "d", "e"]), learners: BTreeSet::new() };
        let plan = reconcile(&members, &cfg, id("a"), MaxVoters::default(), TransitionId::default());
        let mut voters = cfg.voters.clone();
        for t in &plan {
            let s = &t.steps[0];
            match s.kind {
                ConfStepKind::Remove | ConfStepKind::Demote => {
                    voters.remove(&s.raft_id);
                }
                ConfStepKind::Promote => {
                    voters.insert(s.raft_id);
                }
                ConfStepKind::AddLearner => {}
            }
            let live = voters.iter().filter(|v| **v == id("a") || **v == id("b")).count();
            assert!(live >= majority(voters.len()), "step {s:?} leaves {live} live of {}", voters.len());
        }
    }

    #[test]
    fn plan_adds_non_eligible_members_as_learners_only() {
        let mut members = alive(&[("a", ""), ("b", "")]);
        members[1].raft_eligible = false;
        let cfg = RaftConfig { voters: ids(&["a"]), learners: BTreeSet::new() };
        let plan = reconcile(&members, &cfg, id("a"), MaxVoters::default(), TransitionId::default());
        assert_eq!(kinds(&plan), vec![(ConfStepKind::AddLearner, id("b"))]);
    }

    #[test]
    fn converged_configuration_plans_nothing() {
        let members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        let cfg = RaftConfig { voters: ids(&["a", "b", "c"]), learners: ids(&["d"]) };
        let target = target_voters(&members, &cfg, MaxVoters::default());
        assert_eq!(target, cfg.voters);
        assert!(reconcile(&members, &cfg, id("a"), MaxVoters::default(), TransitionId::default()).is_empty());
    }
}
