//! The voter ladder (SPEC 7): which members vote, which only learn, and how to get there without
//! ever costing fault tolerance (the rule of Consul's autopilot and CockroachDB's dead-store
//! handling, not a reaction to every membership event).
//!
//! Role: pure functions over the membership view, how long each member has been unreachable, and
//! the current raft configuration. [`standing_of`] classifies every raft id ([`Standing`]);
//! [`target_voters`] picks at most `max_voters` voters (odd sizes 1, 3, 5) spread over failure
//! domains, preferring current voters; [`reconcile`] turns the difference into an ordered plan of
//! [`Transition`]s that the leader proposes one at a time. [`raft_id_for`] maps a node incarnation
//! to its raft id.
//!
//! The rules, and why:
//! - A voter that is suspect, down or cut off stays a voter until it has been down for
//!   `dead_voter_after` ([`LadderPolicy`], default 30 s). Reacting sooner is what made one partition
//!   plus one crash fatal: the leader shrank the set to the live side, so the next crash of the
//!   leader left no quorum, where plain Raft with a fixed set would have survived.
//! - A dead voter is *replaced* by a caught-up learner in ONE joint-consensus change
//!   (`[Promote new, Remove old]`): the set never passes through a smaller size.
//! - With no learner to replace it, a 5-voter set may shrink to 3, but no set shrinks below 3
//!   voters while 3 raft-eligible members that did not leave exist: a dead voter is kept to fill
//!   the floor (a 3-voter set with one dead member tolerates what a 1-voter set would, and more
//!   once it returns).
//! - A member that left gracefully, or whose node restarted with a new raft id (its old log is
//!   gone: memory storage, a wiped data dir), departs at once; nothing of it can come back.
//! - A live member not in the configuration is added as a learner: that includes a node removed
//!   while it was away, which so learns its removal from the log and rejoins.
//!
//! Invariants:
//! - Deterministic: the same inputs give the same target and plan on every node.
//! - A plan never removes or demotes the leader itself, and no step leaves the new voter set
//!   without a quorum of live voters.
//! - Growth before shrink: learners are added and promoted (or swapped in) before departed
//!   members are removed and surplus voters demoted.
//! - A raft id is a non-zero hash of (name, incarnation): a node's next run with a clean store gets a
//!   new id; a node that recovered its store keeps the id it recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cohort_cluster::{MemberState, NodeId};
use sha2::{Digest, Sha256};

use super::planes::{ConfStep, ConfStepKind, Transition, TransitionId, TransitionPhase};

/// Default voter count (SPEC 7): five voters survive two failures.
pub const DEFAULT_MAX_VOTERS: usize = 5;

/// Voter counts the ladder allows. Even sizes add no fault tolerance over the odd size below them.
pub const VOTER_LADDER: [usize; 3] = [1, 3, 5];

/// The smallest set the ladder shrinks to while enough members exist (SPEC 7).
pub const MIN_VOTERS_FLOOR: usize = 3;

/// Default `raft.dead_voter_after` (SPEC 7): long enough that a partition, a restart or a long GC
/// pause changes no voter; short enough that a machine that died is replaced within a minute.
pub const DEFAULT_DEAD_VOTER_AFTER: Duration = Duration::from_secs(30);

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
    /// Its membership state (a raft id the membership view no longer lists is given as `Down`).
    pub state: MemberState,
    /// How long it has been down without interruption, as the leader measured it (zero while
    /// alive or suspect). Compared with [`LadderPolicy::dead_voter_after`].
    pub down_for: Duration,
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

/// The ladder's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LadderPolicy {
    /// Most voters.
    pub max_voters: MaxVoters,
    /// How long a member must have been down before it is replaced (`raft.dead_voter_after`).
    pub dead_voter_after: Duration,
    /// Which rule decides (always [`LadderRule::Autopilot`] outside regression tests).
    pub rule: LadderRule,
}

impl Default for LadderPolicy {
    fn default() -> Self {
        Self {
            max_voters: MaxVoters::default(),
            dead_voter_after: DEFAULT_DEAD_VOTER_AFTER,
            rule: LadderRule::Autopilot,
        }
    }
}

/// The voter ladder's rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LadderRule {
    /// SPEC 7: a down voter keeps its vote for `dead_voter_after`, the set never shrinks below
    /// [`MIN_VOTERS_FLOOR`] while that many eligible members exist.
    #[default]
    Autopilot,
    /// Test-only: the rule before issue 11, which reconciled the voters to the live members on
    /// every membership change (a down voter departs at once, no floor). A follower partition
    /// followed by a leader crash then leaves a two-voter set with one voter alive: the tier is
    /// unavailable although a majority of the nodes is back. Kept so the simulator's regression
    /// seed can show that it finds that loss (`cohort sim --ladder-rule live-members`).
    #[doc(hidden)]
    LiveMembers,
}

/// Where a raft id stands for the ladder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Alive in membership.
    Live,
    /// Suspect, or down for less than `dead_voter_after`: a voter keeps its vote.
    Unreachable,
    /// Down for at least `dead_voter_after`: replaced when a learner can take its place.
    Dead,
    /// Left gracefully: departs at once.
    Left,
    /// Its node name runs again under a newer incarnation with another raft id (the old log is
    /// gone): departs at once.
    Replaced,
}

impl Standing {
    /// Whether this member is gone for good (it departs without waiting).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Left | Self::Replaced)
    }
}

/// How alive a membership state is (lower is livelier): picks one row per raft id.
pub(crate) fn rank(s: MemberState) -> u8 {
    match s {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Down => 2,
        MemberState::Left => 3,
    }
}

/// Members by raft id; when one id appears twice (an old and a new row) the livelier state wins.
fn by_id(members: &[LadderMember]) -> BTreeMap<u64, &LadderMember> {
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

/// The standing of `m` among `members` under `policy` (see [`Standing`]).
pub fn standing_of(m: &LadderMember, members: &[LadderMember], policy: &LadderPolicy) -> Standing {
    let replaced = members.iter().any(|other| {
        other.node.name == m.node.name
            && other.node.incarnation > m.node.incarnation
            && other.raft_id != m.raft_id
            && other.state == MemberState::Alive
    });
    if replaced {
        return Standing::Replaced;
    }
    match m.state {
        MemberState::Alive => Standing::Live,
        MemberState::Suspect => Standing::Unreachable,
        MemberState::Down if m.down_for >= policy.dead_voter_after || policy.rule == LadderRule::LiveMembers => {
            Standing::Dead
        }
        MemberState::Down => Standing::Unreachable,
        MemberState::Left => Standing::Left,
    }
}

struct Classified<'a> {
    rows: BTreeMap<u64, (&'a LadderMember, Standing)>,
}

impl<'a> Classified<'a> {
    fn new(members: &'a [LadderMember], policy: &LadderPolicy) -> Self {
        let rows = by_id(members).into_iter().map(|(id, m)| (id, (m, standing_of(m, members, policy)))).collect();
        Self { rows }
    }

    /// A raft id without any row counts as dead (the caller lists every configured id it knows).
    fn standing(&self, id: u64) -> Standing {
        self.rows.get(&id).map_or(Standing::Dead, |(_, s)| s.clone())
    }

    fn is_live(&self, id: u64) -> bool {
        self.standing(id) == Standing::Live
    }

    fn name(&self, id: u64) -> Option<NodeId> {
        self.rows.get(&id).map(|(m, _)| m.node.clone())
    }

    fn label(&self, id: u64) -> String {
        self.rows.get(&id).map_or_else(|| format!("raft id {id}"), |(m, _)| m.node.name.clone())
    }
}

/// The target voter set (see the module docs). Empty when no member is eligible.
pub fn target_voters(members: &[LadderMember], config: &RaftConfig, policy: &LadderPolicy) -> BTreeSet<u64> {
    let classified = Classified::new(members, policy);
    target_of(&classified, config, policy)
}

fn target_of(classified: &Classified<'_>, config: &RaftConfig, policy: &LadderPolicy) -> BTreeSet<u64> {
    let is_voter = |id: u64| config.voters.contains(&id);
    // A learner is promoted only while alive; a voter keeps its place while merely unreachable
    // (suspicion is often a GC pause, a down verdict often a partition that heals).
    let candidates: Vec<&LadderMember> = classified
        .rows
        .values()
        .filter(|(m, s)| {
            m.raft_eligible && (*s == Standing::Live || (*s == Standing::Unreachable && is_voter(m.raft_id)))
        })
        .map(|(m, _)| *m)
        .collect();
    let max = policy.max_voters.get();
    let size = VOTER_LADDER.iter().rev().copied().find(|n| *n <= max.min(candidates.len())).unwrap_or(0);
    // The floor: dead (not departed) eligible voters fill the set up to three rather than let it
    // shrink below what the members that exist could give.
    let fill: Vec<u64> = classified
        .rows
        .values()
        .filter(|(m, s)| m.raft_eligible && *s == Standing::Dead && is_voter(m.raft_id))
        .map(|(m, _)| m.raft_id)
        .collect();
    if policy.rule == LadderRule::Autopilot
        && size < MIN_VOTERS_FLOOR
        && max >= MIN_VOTERS_FLOOR
        && candidates.len() + fill.len() >= MIN_VOTERS_FLOOR
    {
        let mut target: BTreeSet<u64> = candidates.iter().map(|m| m.raft_id).collect();
        for id in fill {
            if target.len() == MIN_VOTERS_FLOOR {
                break;
            }
            target.insert(id);
        }
        return target;
    }
    let mut domains: BTreeMap<&str, Vec<&LadderMember>> = BTreeMap::new();
    for m in &candidates {
        domains.entry(m.failure_domain.as_str()).or_default().push(m);
    }
    for list in domains.values_mut() {
        list.sort_by_key(|m| (!is_voter(m.raft_id), m.state != MemberState::Alive, m.raft_id));
    }
    let mut order: Vec<(&str, Vec<&LadderMember>)> = domains.into_iter().collect();
    // Domains already holding voters first, so a small target keeps existing voters' domains.
    order.sort_by_key(|(domain, list)| (!list.iter().any(|m| is_voter(m.raft_id)), *domain));
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

fn departure_reason(standing: &Standing, down_for: Option<Duration>, policy: &LadderPolicy) -> String {
    match standing {
        Standing::Left => "left the cluster".into(),
        Standing::Replaced => "restarted with a new raft id (its old log is gone)".into(),
        Standing::Dead => match down_for {
            Some(d) if d > Duration::ZERO => {
                format!("down for {} s (dead_voter_after {} s)", d.as_secs(), policy.dead_voter_after.as_secs())
            }
            _ => format!("not a member for dead_voter_after ({} s)", policy.dead_voter_after.as_secs()),
        },
        Standing::Live | Standing::Unreachable => "not in the target voter set".into(),
    }
}

/// The ordered plan from `config` to the ladder's target, as transitions with ids `first_id`,
/// `first_id.next()`, ... in phase `Planned`. The leader proposes the first, waits for it to
/// complete, and recomputes (membership may have moved meanwhile).
pub fn reconcile(
    members: &[LadderMember],
    config: &RaftConfig,
    leader: u64,
    policy: &LadderPolicy,
    first_id: TransitionId,
) -> Vec<Transition> {
    let classified = Classified::new(members, policy);
    let target = target_of(&classified, config, policy);
    let down_for = |id: u64| classified.rows.get(&id).map(|(m, _)| m.down_for);
    let mut sim = config.clone();
    let mut plan = Vec::new();
    let mut id = first_id;
    let mut push = |steps: Vec<(ConfStepKind, u64)>, reason: String, plan: &mut Vec<Transition>| {
        let steps = steps.into_iter().map(|(kind, raft_id)| ConfStep { kind, raft_id, node: classified.name(raft_id) });
        plan.push(Transition { id, steps: steps.collect(), phase: TransitionPhase::Planned, reason });
        id = id.next();
    };
    // A voter-set change is allowed only if the new set keeps a quorum of live voters.
    let keeps_quorum = |voters: &BTreeSet<u64>| {
        !voters.is_empty() && voters.iter().filter(|v| classified.is_live(**v)).count() >= majority(voters.len())
    };
    let departed = |id: u64| {
        id != leader && matches!(classified.standing(id), Standing::Dead | Standing::Left | Standing::Replaced)
    };

    // 1. Every live member receives the log (a node removed while away rejoins this way).
    for (m, s) in classified.rows.values() {
        if *s == Standing::Live && !sim.contains(m.raft_id) {
            sim.learners.insert(m.raft_id);
            push(
                vec![(ConfStepKind::AddLearner, m.raft_id)],
                format!("{} is a live member not in the configuration", m.node.name),
                &mut plan,
            );
        }
    }
    // 2. Departed voters are swapped for learners of the target in one joint change each.
    let newcomers: Vec<u64> = target.iter().copied().filter(|v| sim.learners.contains(v)).collect();
    let leaving: Vec<u64> = sim.voters.iter().copied().filter(|v| !target.contains(v) && departed(*v)).collect();
    let mut newcomers = newcomers.into_iter();
    let mut unpaired_leaving = Vec::new();
    for old in leaving {
        let Some(new) = newcomers.next() else {
            unpaired_leaving.push(old);
            continue;
        };
        let mut voters = sim.voters.clone();
        voters.remove(&old);
        voters.insert(new);
        if keeps_quorum(&voters) {
            sim.voters = voters;
            sim.learners.remove(&new);
            let why = departure_reason(&classified.standing(old), down_for(old), policy);
            push(
                vec![(ConfStepKind::Promote, new), (ConfStepKind::Remove, old)],
                format!(
                    "replace voter {} ({why}) with caught-up learner {}",
                    classified.label(old),
                    classified.label(new)
                ),
                &mut plan,
            );
        } else {
            unpaired_leaving.push(old);
        }
    }
    // 3. Growth: the remaining learners of the target are promoted.
    for new in newcomers {
        let mut voters = sim.voters.clone();
        voters.insert(new);
        if keeps_quorum(&voters) {
            sim.learners.remove(&new);
            sim.voters = voters;
            push(
                vec![(ConfStepKind::Promote, new)],
                format!("{} is in the target voter set", classified.label(new)),
                &mut plan,
            );
        }
    }
    // 4. Departed voters with no replacement (the set shrinks, never below the floor: the
    //    target keeps dead voters that fill it), then departed learners.
    for old in unpaired_leaving {
        let mut voters = sim.voters.clone();
        voters.remove(&old);
        if keeps_quorum(&voters) {
            sim.voters = voters;
            let why = departure_reason(&classified.standing(old), down_for(old), policy);
            push(
                vec![(ConfStepKind::Remove, old)],
                format!("remove voter {} ({why}); no learner to replace it", classified.label(old)),
                &mut plan,
            );
        }
    }
    let gone_learners: Vec<u64> = sim.learners.iter().copied().filter(|l| departed(*l)).collect();
    for old in gone_learners {
        sim.learners.remove(&old);
        let why = departure_reason(&classified.standing(old), down_for(old), policy);
        push(vec![(ConfStepKind::Remove, old)], format!("remove learner {} ({why})", classified.label(old)), &mut plan);
    }
    // 5. Surplus voters that are still members become learners.
    if !target.is_empty() {
        let surplus: Vec<u64> = sim.voters.iter().copied().filter(|v| !target.contains(v) && *v != leader).collect();
        for v in surplus {
            let mut voters = sim.voters.clone();
            voters.remove(&v);
            if keeps_quorum(&voters) {
                sim.voters = voters;
                let (kind, what) = if departed(v) {
                    (ConfStepKind::Remove, "remove")
                } else {
                    sim.learners.insert(v);
                    (ConfStepKind::Demote, "demote")
                };
                push(
                    vec![(kind, v)],
                    format!("{what} voter {}: not in the target voter set", classified.label(v)),
                    &mut plan,
                );
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_secs(30);

    fn m(name: &str, domain: &str, state: MemberState) -> LadderMember {
        let node = NodeId::new(name, 1);
        LadderMember {
            raft_id: raft_id_for(&node),
            node,
            raft_eligible: true,
            failure_domain: domain.into(),
            state,
            down_for: Duration::ZERO,
        }
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

    fn policy(max: usize) -> LadderPolicy {
        LadderPolicy { max_voters: MaxVoters::new(max).unwrap(), dead_voter_after: DEAD, rule: LadderRule::Autopilot }
    }

    fn down(member: &mut LadderMember, for_s: u64) {
        member.state = MemberState::Down;
        member.down_for = Duration::from_secs(for_s);
    }

    fn cfg(voters: &[&str], learners: &[&str]) -> RaftConfig {
        RaftConfig { voters: ids(voters), learners: ids(learners) }
    }

    /// The configuration after applying every step of `plan`.
    fn apply(config: &RaftConfig, plan: &[Transition]) -> RaftConfig {
        let mut c = config.clone();
        for t in plan {
            for s in &t.steps {
                match s.kind {
                    ConfStepKind::AddLearner | ConfStepKind::Demote => {
                        c.voters.remove(&s.raft_id);
                        c.learners.insert(s.raft_id);
                    }
                    ConfStepKind::Promote => {
                        c.learners.remove(&s.raft_id);
                        c.voters.insert(s.raft_id);
                    }
                    ConfStepKind::Remove => {
                        c.voters.remove(&s.raft_id);
                        c.learners.remove(&s.raft_id);
                    }
                }
            }
        }
        c
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
        assert_eq!(target_voters(&members, &cfg, &policy(5)).len(), 5);
        assert_eq!(target_voters(&members[..4], &cfg, &policy(5)).len(), 3);
        assert_eq!(target_voters(&members[..2], &cfg, &policy(5)).len(), 1);
        assert_eq!(target_voters(&members, &cfg, &policy(3)).len(), 3);
        assert!(target_voters(&[], &cfg, &policy(5)).is_empty());
    }

    #[test]
    fn target_spreads_over_failure_domains() {
        let members = alive(&[("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("c1", "C")]);
        let target = target_voters(&members, &RaftConfig::default(), &policy(3));
        // One voter per domain: b1, c1 and exactly one of the a's (the lowest raft id).
        assert!(target.contains(&id("b1")) && target.contains(&id("c1")));
        let a_lowest = [id("a1"), id("a2"), id("a3")].into_iter().min().unwrap();
        assert!(target.contains(&a_lowest), "{target:?}");
    }

    #[test]
    fn target_prefers_current_voters_and_ignores_ineligible_and_dead() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        members[0].raft_eligible = false;
        down(&mut members[1], 60);
        let cfg = cfg(&["e", "d", "c"], &[]);
        let target = target_voters(&members, &cfg, &policy(3));
        assert_eq!(target, ids(&["c", "d", "e"]));
        // Same inputs in another order: same answer.
        members.reverse();
        assert_eq!(target_voters(&members, &cfg, &policy(3)), target);
    }

    #[test]
    fn suspect_voter_is_kept_but_suspect_learner_not_promoted() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        members[2].state = MemberState::Suspect;
        members[3].state = MemberState::Suspect;
        let cfg = cfg(&["a", "b", "c"], &["d"]);
        assert_eq!(target_voters(&members, &cfg, &policy(5)), ids(&["a", "b", "c"]));
    }

    fn kinds(plan: &[Transition]) -> Vec<Vec<(ConfStepKind, u64)>> {
        plan.iter().map(|t| t.steps.iter().map(|s| (s.kind, s.raft_id)).collect()).collect()
    }

    #[test]
    fn a_partitioned_voter_keeps_its_vote_until_dead_voter_after() {
        // The defect of issue 11: one follower cut off made the leader shrink the set to itself.
        let mut members = alive(&[("a", ""), ("b", ""), ("c", "")]);
        let config = cfg(&["a", "b", "c"], &[]);
        for secs in [0, 1, 8, 29] {
            down(&mut members[2], secs);
            let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
            assert!(plan.is_empty(), "down {secs} s: {plan:?}");
        }
        // Suspect and partitioned: the same.
        members[2].state = MemberState::Suspect;
        members[2].down_for = Duration::ZERO;
        assert!(reconcile(&members, &config, id("a"), &policy(5), TransitionId::default()).is_empty());
    }

    #[test]
    fn the_old_live_members_rule_removes_a_partitioned_voter_at_once() {
        // The regression switch of the simulator: the rule of before issue 11 must still show
        // the shrink (else the simulator's regression seed proves nothing).
        let mut members = alive(&[("a", ""), ("b", ""), ("c", "")]);
        let config = cfg(&["a", "b", "c"], &[]);
        down(&mut members[2], 0);
        let old = LadderPolicy { rule: LadderRule::LiveMembers, ..policy(5) };
        let plan = reconcile(&members, &config, id("a"), &old, TransitionId::default());
        assert_eq!(kinds(&plan), vec![vec![(ConfStepKind::Remove, id("c"))]]);
        assert!(reconcile(&members, &config, id("a"), &policy(5), TransitionId::default()).is_empty());
    }

    #[test]
    fn a_five_voter_set_with_a_cut_off_minority_does_not_change() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        down(&mut members[3], 10);
        down(&mut members[4], 10);
        let config = cfg(&["a", "b", "c", "d", "e"], &[]);
        assert!(reconcile(&members, &config, id("a"), &policy(5), TransitionId::default()).is_empty());
    }

    #[test]
    fn a_dead_voter_with_no_learner_stays_to_keep_three_voters() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", "")]);
        down(&mut members[2], 3_600);
        let config = cfg(&["a", "b", "c"], &[]);
        assert_eq!(target_voters(&members, &config, &policy(5)), config.voters);
        assert!(reconcile(&members, &config, id("a"), &policy(5), TransitionId::default()).is_empty());
    }

    #[test]
    fn a_dead_voter_is_replaced_by_a_caught_up_learner_in_one_joint_change() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        down(&mut members[2], 31);
        let config = cfg(&["a", "b", "c"], &["d"]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(kinds(&plan), vec![vec![(ConfStepKind::Promote, id("d")), (ConfStepKind::Remove, id("c"))]]);
        assert!(plan[0].reason.contains("down for 31 s") && plan[0].reason.contains("replace voter c"), "{plan:?}");
        assert_eq!(apply(&config, &plan), cfg(&["a", "b", "d"], &[]));
    }

    #[test]
    fn a_five_voter_set_may_shrink_to_three_but_not_below() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        down(&mut members[3], 40);
        down(&mut members[4], 40);
        let config = cfg(&["a", "b", "c", "d", "e"], &[]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(apply(&config, &plan).voters, ids(&["a", "b", "c"]), "{plan:?}");
        // A third death: the set stays at three (the dead one fills the floor).
        down(&mut members[2], 40);
        let three = cfg(&["a", "b", "c"], &[]);
        assert!(reconcile(&members, &three, id("a"), &policy(5), TransitionId::default()).is_empty());
    }

    #[test]
    fn a_node_that_left_or_restarted_with_a_new_raft_id_is_replaced_at_once() {
        // c left gracefully a moment ago; d is a caught-up learner.
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        members[2].state = MemberState::Left;
        let config = cfg(&["a", "b", "c"], &["d"]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(kinds(&plan), vec![vec![(ConfStepKind::Promote, id("d")), (ConfStepKind::Remove, id("c"))]]);
        // c restarted with a clean store: incarnation 2, a new raft id; its old id is replaced by it
        // once it is a learner, and was never kept waiting for dead_voter_after.
        let mut members = alive(&[("a", ""), ("b", "")]);
        let mut old_c = m("c", "", MemberState::Down);
        old_c.down_for = Duration::from_secs(1);
        let new_c_node = NodeId::new("c", 2);
        let new_c = LadderMember {
            node: new_c_node.clone(),
            raft_id: raft_id_for(&new_c_node),
            ..m("c", "", MemberState::Alive)
        };
        members.extend([old_c, new_c.clone()]);
        let config = cfg(&["a", "b", "c"], &[]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(kinds(&plan)[0], vec![(ConfStepKind::AddLearner, new_c.raft_id)]);
        let after = apply(&config, &plan);
        assert_eq!(after.voters, [id("a"), id("b"), new_c.raft_id].into_iter().collect(), "{plan:?}");
        assert!(plan.iter().any(|t| t.reason.contains("new raft id")), "{plan:?}");
    }

    #[test]
    fn a_member_removed_while_away_is_added_back_as_a_learner() {
        let members = alive(&[("a", ""), ("b", ""), ("c", "")]);
        let config = cfg(&["a", "b"], &[]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(kinds(&plan)[0], vec![(ConfStepKind::AddLearner, id("c"))]);
        assert_eq!(apply(&config, &plan).voters, ids(&["a", "b", "c"]));
    }

    #[test]
    fn plan_grows_before_it_shrinks_and_ids_are_sequential() {
        // Voters a, b, c; c died long ago; d and e joined.
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        down(&mut members[2], 100);
        let config = cfg(&["a", "b", "c"], &[]);
        let first = TransitionId { term: 4, seq: 0 };
        let plan = reconcile(&members, &config, id("a"), &policy(3), first);
        let k = kinds(&plan);
        assert_eq!(&k[..2], &[vec![(ConfStepKind::AddLearner, id("d"))], vec![(ConfStepKind::AddLearner, id("e"))]]);
        assert_eq!(k[2].len(), 2, "one joint swap: {k:?}");
        assert_eq!((k[2][0].0, k[2][1]), (ConfStepKind::Promote, (ConfStepKind::Remove, id("c"))));
        assert_eq!(apply(&config, &plan).voters.len(), 3);
        assert_eq!(plan.iter().map(|t| t.id.seq).collect::<Vec<_>>(), (0..plan.len() as u64).collect::<Vec<_>>());
        assert!(plan.iter().all(|t| t.phase == TransitionPhase::Planned && t.id.term == 4));
    }

    #[test]
    fn plan_never_demotes_or_removes_the_leader() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        members[0].raft_eligible = false; // the leader lost eligibility
        let config = cfg(&["a", "b", "c"], &["d"]);
        let touches_a = |plan: &[Transition]| plan.iter().flat_map(|t| &t.steps).any(|s| s.raft_id == id("a"));
        let plan = reconcile(&members, &config, id("a"), &policy(3), TransitionId::default());
        assert!(!touches_a(&plan), "{plan:?}");
        members[0].state = MemberState::Left;
        let plan = reconcile(&members, &config, id("a"), &policy(3), TransitionId::default());
        assert!(!touches_a(&plan), "{plan:?}");
    }

    #[test]
    fn plan_never_leaves_a_voter_set_without_live_quorum() {
        // Five voters, three dead: removing any dead voter from {2 live, 3 dead} gives 2 live of 4
        // (quorum 3): refused, one step at a time, until it would hold.
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("e", "")]);
        for member in &mut members[2..] {
            down(member, 100);
        }
        let config = cfg(&["a", "b", "c", "d", "e"], &[]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        let mut c = config.clone();
        for t in &plan {
            c = apply(&c, std::slice::from_ref(t));
            let live = c.voters.iter().filter(|v| **v == id("a") || **v == id("b")).count();
            assert!(live >= majority(c.voters.len()), "{t:?} leaves {live} live of {}", c.voters.len());
        }
    }

    #[test]
    fn plan_adds_non_eligible_members_as_learners_only() {
        let mut members = alive(&[("a", ""), ("b", "")]);
        members[1].raft_eligible = false;
        let config = cfg(&["a"], &[]);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(kinds(&plan), vec![vec![(ConfStepKind::AddLearner, id("b"))]]);
    }

    #[test]
    fn a_down_learner_is_kept_until_dead_then_removed() {
        let mut members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        let config = cfg(&["a", "b", "c"], &["d"]);
        down(&mut members[3], 5);
        assert!(reconcile(&members, &config, id("a"), &policy(5), TransitionId::default()).is_empty());
        down(&mut members[3], 30);
        let plan = reconcile(&members, &config, id("a"), &policy(5), TransitionId::default());
        assert_eq!(kinds(&plan), vec![vec![(ConfStepKind::Remove, id("d"))]]);
    }

    #[test]
    fn converged_configuration_plans_nothing() {
        let members = alive(&[("a", ""), ("b", ""), ("c", ""), ("d", "")]);
        let config = cfg(&["a", "b", "c"], &["d"]);
        let target = target_voters(&members, &config, &policy(5));
        assert_eq!(target, config.voters);
        assert!(reconcile(&members, &config, id("a"), &policy(5), TransitionId::default()).is_empty());
    }
}
