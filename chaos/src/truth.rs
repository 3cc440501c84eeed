//! The ground truth of a run: which node lives run, which probes live on them, which pids are
//! joined to which groups, which names are registered to whom, as the runner's own operations and
//! signals made them.
//!
//! Role: a plain state machine the runner feeds with every operation it issued and its outcome;
//! [`TruthModel::snapshot`] gives the [`Truth`] the convergence checkers compare views against.
//!
//! Invariants: an operation the node refused changes nothing; one whose outcome is unknown (no
//! answer) makes its group uncertain or its name [`Expected::Either`], never a guess; a node life
//! that ends takes its probes, their joins and their names with it (SPEC 6.2, 7: removed on exit /
//! node departure).

use std::collections::{BTreeMap, BTreeSet};

use crate::record::{Expected, Truth};

/// The outcome of one operation, as far as the truth is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Applied,
    /// The node refused: no effect.
    Refused,
    /// No answer: maybe applied.
    Unknown,
}

/// `(node, incarnation)` of a pid printed `<name.incarnation.local>`.
pub fn pid_node(pid: &str) -> Option<(String, u64)> {
    let inner = pid.strip_prefix('<')?.strip_suffix('>')?;
    let mut parts = inner.rsplitn(3, '.');
    let _local = parts.next()?;
    let inc = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_string(), inc))
}

/// The runner's model of what the cluster should be.
#[derive(Clone, Debug, Default)]
pub struct TruthModel {
    running: BTreeMap<String, u64>,
    paused: BTreeSet<String>,
    probes: BTreeMap<String, Vec<String>>,
    joins: BTreeMap<String, Vec<String>>,
    uncertain_groups: BTreeSet<String>,
    local: BTreeMap<String, BTreeMap<String, Expected>>,
    eventual: BTreeMap<String, Expected>,
}

impl TruthModel {
    /// An empty model declaring the workload's groups (so an empty group is still compared).
    pub fn new(groups: &[String]) -> Self {
        let mut m = Self::default();
        for g in groups {
            m.joins.insert(g.clone(), Vec::new());
        }
        m
    }

    /// A node life started.
    pub fn started(&mut self, node: &str, incarnation: u64) {
        self.running.insert(node.to_string(), incarnation);
        self.paused.remove(node);
        self.local.insert(node.to_string(), BTreeMap::new());
    }

    /// A node life ended (killed or died): its probes, joins and names go with it.
    pub fn ended(&mut self, node: &str) {
        let Some(inc) = self.running.remove(node) else { return };
        self.paused.remove(node);
        self.probes.remove(node);
        let of_life = |pid: &str| pid_node(pid).is_some_and(|(n, i)| n == node && i == inc);
        for members in self.joins.values_mut() {
            members.retain(|p| !of_life(p));
        }
        self.local.remove(node);
        for exp in self.eventual.values_mut() {
            if let Expected::Present(p) | Expected::Either(p) = exp
                && of_life(p)
            {
                *exp = Expected::Absent;
            }
        }
    }

    /// SIGSTOP / SIGCONT.
    pub fn set_paused(&mut self, node: &str, paused: bool) {
        if paused {
            self.paused.insert(node.to_string());
        } else {
            self.paused.remove(node);
        }
    }

    /// Running and not paused: the workload may talk to it.
    pub fn is_responsive(&self, node: &str) -> bool {
        self.running.contains_key(node) && !self.paused.contains(node)
    }

    /// Running node lives.
    pub fn running(&self) -> &BTreeMap<String, u64> {
        &self.running
    }

    /// Probes spawned on a node's current life.
    pub fn spawned(&mut self, node: &str, pids: &[String]) {
        self.probes.entry(node.to_string()).or_default().extend(pids.iter().cloned());
    }

    /// Live probes of a node.
    pub fn probes(&self, node: &str) -> &[String] {
        self.probes.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Current members of a group (a pid repeated per join).
    pub fn members(&self, group: &str) -> &[String] {
        self.joins.get(group).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Distinct members of a group.
    pub fn distinct_members(&self, group: &str) -> usize {
        self.members(group).iter().collect::<BTreeSet<_>>().len()
    }

    /// A join of `pid` to `group`.
    pub fn join(&mut self, group: &str, pid: &str, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.joins.entry(group.to_string()).or_default().push(pid.to_string()),
            Outcome::Refused => {}
            Outcome::Unknown => {
                self.uncertain_groups.insert(group.to_string());
            }
        }
    }

    /// A leave of `pid` from `group` (one join occurrence).
    pub fn leave(&mut self, group: &str, pid: &str, outcome: Outcome) {
        match outcome {
            Outcome::Applied => {
                if let Some(members) = self.joins.get_mut(group)
                    && let Some(i) = members.iter().position(|p| p == pid)
                {
                    members.remove(i);
                }
            }
            Outcome::Refused => {}
            Outcome::Unknown => {
                self.uncertain_groups.insert(group.to_string());
            }
        }
    }

    fn names_mut(&mut self, tier: &str, node: &str) -> Option<&mut BTreeMap<String, Expected>> {
        match tier {
            "local" => self.local.get_mut(node),
            "eventual" => Some(&mut self.eventual),
            _ => None,
        }
    }

    /// Current expectation of a name (`Absent` when never registered).
    pub fn name(&self, tier: &str, node: &str, name: &str) -> Expected {
        let map = match tier {
            "local" => self.local.get(node),
            "eventual" => Some(&self.eventual),
            _ => None,
        };
        map.and_then(|m| m.get(name)).cloned().unwrap_or(Expected::Absent)
    }

    /// A registration of `name` to `pid` on `node` (local and eventual tiers; the consistent tier
    /// is judged from its history instead).
    pub fn register(&mut self, tier: &str, node: &str, name: &str, pid: &str, outcome: Outcome) {
        let Some(map) = self.names_mut(tier, node) else { return };
        let current = map.get(name).cloned().unwrap_or(Expected::Absent);
        let next = match (outcome, current) {
            (Outcome::Applied, _) => Expected::Present(pid.to_string()),
            (Outcome::Refused, c) => c,
            (Outcome::Unknown, Expected::Absent) => Expected::Either(pid.to_string()),
            (Outcome::Unknown, c) => c,
        };
        map.insert(name.to_string(), next);
    }

    /// An unregistration of `name` held by `pid`.
    pub fn unregister(&mut self, tier: &str, node: &str, name: &str, pid: &str, outcome: Outcome) {
        let Some(map) = self.names_mut(tier, node) else { return };
        let current = map.get(name).cloned().unwrap_or(Expected::Absent);
        let next = match (outcome, current) {
            (Outcome::Applied, _) => Expected::Absent,
            (Outcome::Refused, c) => c,
            (Outcome::Unknown, Expected::Present(p)) if p == pid => Expected::Either(p),
            (Outcome::Unknown, c) => c,
        };
        map.insert(name.to_string(), next);
    }

    /// The truth now.
    pub fn snapshot(&self) -> Truth {
        Truth {
            members: self.running.clone(),
            groups: self
                .joins
                .iter()
                .map(|(g, m)| {
                    let mut m = m.clone();
                    m.sort();
                    (g.clone(), m)
                })
                .collect(),
            uncertain_groups: self.uncertain_groups.iter().cloned().collect(),
            local: self.local.clone(),
            eventual: self.eventual.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_parsing_finds_node_and_incarnation() {
        assert_eq!(pid_node("<node-1.17.3>"), Some(("node-1".into(), 17)));
        assert_eq!(pid_node("node-1.17.3"), None);
        assert_eq!(pid_node("<x.y.z>"), None);
    }

    #[test]
    fn a_killed_life_takes_its_probes_joins_and_names() {
        let mut m = TruthModel::new(&["g".into()]);
        m.started("node-1", 1);
        m.started("node-2", 1);
        m.spawned("node-1", &["<node-1.1.1>".into()]);
        m.join("g", "<node-1.1.1>", Outcome::Applied);
        m.join("g", "<node-2.1.1>", Outcome::Applied);
        m.register("eventual", "node-1", "chaos-e-a", "<node-1.1.1>", Outcome::Applied);
        m.register("local", "node-1", "chaos-l-a", "<node-1.1.1>", Outcome::Applied);
        m.ended("node-1");
        let t = m.snapshot();
        assert_eq!(t.groups["g"], vec!["<node-2.1.1>".to_string()]);
        assert_eq!(t.eventual["chaos-e-a"], Expected::Absent);
        assert!(!t.local.contains_key("node-1"));
        assert!(!t.members.contains_key("node-1"));
        m.started("node-1", 2);
        assert!(m.snapshot().local["node-1"].is_empty());
    }

    #[test]
    fn unknown_outcomes_are_never_guessed() {
        let mut m = TruthModel::new(&["g".into()]);
        m.started("node-1", 1);
        m.join("g", "<node-1.1.1>", Outcome::Unknown);
        m.register("eventual", "node-1", "a", "<node-1.1.1>", Outcome::Unknown);
        m.register("eventual", "node-1", "b", "<node-1.1.1>", Outcome::Applied);
        m.unregister("eventual", "node-1", "b", "<node-1.1.1>", Outcome::Unknown);
        m.register("eventual", "node-1", "c", "<node-1.1.1>", Outcome::Refused);
        let t = m.snapshot();
        assert_eq!(t.uncertain_groups, vec!["g".to_string()]);
        assert!(t.groups["g"].is_empty());
        assert_eq!(t.eventual["a"], Expected::Either("<node-1.1.1>".into()));
        assert_eq!(t.eventual["b"], Expected::Either("<node-1.1.1>".into()));
        assert_eq!(t.eventual["c"], Expected::Absent);
    }

    #[test]
    fn leave_removes_one_join_occurrence() {
        let mut m = TruthModel::new(&["g".into()]);
        m.join("g", "<n.1.1>", Outcome::Applied);
        m.join("g", "<n.1.1>", Outcome::Applied);
        m.leave("g", "<n.1.1>", Outcome::Applied);
        assert_eq!(m.members("g").len(), 1);
        assert_eq!(m.distinct_members("g"), 1);
    }
}
