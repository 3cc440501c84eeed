//! Node identity (SPEC section 4).
//!
//! A [`NodeId`] is a node name, unique in the cluster, plus an incarnation that is new at every
//! start. Anything (a pid, a registration) that carries an older incarnation of a node is dead by
//! definition, so comparing incarnations is how the cluster tells a restarted node from its past.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity: its name and the incarnation of this run.
///
/// ```
/// use cohort_cluster::NodeId;
/// let id = NodeId::new("alpha", 7);
/// assert_eq!(id.to_string(), "alpha.7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// The node name, unique in the cluster.
    pub name: String,
    /// New at every start of the node; a larger incarnation supersedes a smaller one.
    pub incarnation: u64,
}

impl NodeId {
    /// A node id from its parts.
    pub fn new(name: impl Into<String>, incarnation: u64) -> Self {
        Self { name: name.into(), incarnation }
    }

    /// A fresh incarnation for a node starting now: the wall clock in microseconds, so a restart
    /// (even of the same process image, seconds later) gets a larger one without any durable state.
    pub fn fresh_incarnation() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
    }

    /// Whether `self` is an older run of the same node as `other`.
    pub fn is_superseded_by(&self, other: &NodeId) -> bool {
        self.name == other.name && self.incarnation < other.incarnation
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_incarnation_is_superseded_by_newer_one() {
        let old = NodeId::new("a", 1);
        let new = NodeId::new("a", 2);
        assert!(old.is_superseded_by(&new));
        assert!(!new.is_superseded_by(&old));
        assert!(!old.is_superseded_by(&NodeId::new("b", 9)));
    }
}
