//! Pure pg state: group names, one group's membership as an immutable value, the multiset diff used
//! when a peer re-synchronises, and the events a change produces.
//!
//! Nothing here locks, allocates a thread or reads a clock: [`GroupSnapshot`] transitions take the
//! current value and return the next one (copy-on-write), so [`super::snapshot::ScopeTable`] can
//! publish each result whole for lock-free readers, and tests can drive every rule directly.
//!
//! Invariants of a [`GroupSnapshot`]:
//! - it is a multiset: a pid appears once per join occurrence (Erlang's multi-join counting);
//! - local members come first (`members()[..local_len]`), so `local_members()` is a sub-slice and
//!   costs nothing extra in memory;
//! - `version` is the sequence number of the last [`Event`] that changed the group, so a monitor
//!   given a snapshot at version `v` must then receive exactly the events of that group with `seq > v`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cohort_cluster::NodeId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{MAX_GROUP_NAME_BYTES, PgError};
use crate::pid::Pid;

/// A process group name within a scope: 1 to [`MAX_GROUP_NAME_BYTES`] bytes of UTF-8.
///
/// Cheap to clone (an `Arc<str>`); borrows as `&str`, so lookups by name do not allocate.
/// Deserialising checks the same bounds as [`Group::new`], so a decoded frame never holds an
/// oversized name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group(Arc<str>);

impl Group {
    /// A group name, refused if empty or longer than [`MAX_GROUP_NAME_BYTES`].
    pub fn new(name: &str) -> Result<Self, PgError> {
        if name.is_empty() {
            return Err(PgError::EmptyGroupName);
        }
        if name.len() > MAX_GROUP_NAME_BYTES {
            return Err(PgError::GroupNameTooLong { len: name.len(), max: MAX_GROUP_NAME_BYTES });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Group {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Group {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Group::new(&name).map_err(serde::de::Error::custom)
    }
}

/// One node's memberships per group, as a sync carries them: each group with its pids, repeated
/// per join occurrence. A group may appear more than once (its pids are then concatenated).
pub type NodeState = Vec<(Group, Vec<Pid>)>;

/// What happened to a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// Pids joined (one entry per join occurrence).
    Join,
    /// Pids left (one entry per occurrence that left).
    Leave,
}

/// Where a change came from, which decides whether peers must hear about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A local join, leave or process exit: the scope actor sends it to every peer.
    Local,
    /// A peer's join, leave or sync, or a node going down: already known to the cluster.
    Remote,
}

/// One membership change, `{Join|Leave, group, pids}` as Erlang's `pg` monitors receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the scope's event stream: increasing, unique, not necessarily contiguous.
    /// Within a group, events are produced in `seq` order and the group's snapshot carries the
    /// `seq` of the last one applied (see [`GroupSnapshot::version`]).
    pub seq: u64,
    /// Join or leave.
    pub kind: EventKind,
    /// The group that changed.
    pub group: Group,
    /// The pids that joined or left, repeated per occurrence; never empty.
    pub pids: Vec<Pid>,
    /// Local (to propagate) or remote.
    pub origin: Origin,
}

/// One group's members at one version: an immutable value, replaced whole on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    version: u64,
    local_len: usize,
    pids: Box<[Pid]>,
}

impl GroupSnapshot {
    /// The empty group (version 0).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The `seq` of the last event applied to this group (0: never changed).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every member, local ones first, one entry per join occurrence.
    pub fn members(&self) -> &[Pid] {
        &self.pids
    }

    /// The members hosted by this node.
    pub fn local_members(&self) -> &[Pid] {
        &self.pids[..self.local_len]
    }

    /// The members hosted by other nodes.
    pub fn remote_members(&self) -> &[Pid] {
        &self.pids[self.local_len..]
    }

    /// Number of memberships (join occurrences), local and remote.
    pub fn len(&self) -> usize {
        self.pids.len()
    }

    /// Whether the group has no member at all.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// How many times `pid` is a member.
    pub fn count(&self, pid: &Pid) -> usize {
        self.pids.iter().filter(|p| *p == pid).count()
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        debug_assert!(version > self.version, "group versions only grow");
        self.version = version;
    }

    fn from_parts(local: impl IntoIterator<Item = Pid>, remote: impl IntoIterator<Item = Pid>, version: u64) -> Self {
        let mut pids: Vec<Pid> = local.into_iter().collect();
        let local_len = pids.len();
        pids.extend(remote);
        Self { version, local_len, pids: pids.into_boxed_slice() }
    }

    /// Local `pids` join (each once per occurrence in the slice). The caller checked they are local.
    pub(crate) fn join_local(&self, pids: &[Pid]) -> Self {
        let local = self.local_members().iter().chain(pids).cloned();
        Self::from_parts(local, self.remote_members().iter().cloned(), self.version)
    }

    /// Local `pids` leave, one occurrence each; refused with the first pid that does not have
    /// enough occurrences left (the whole batch is refused, nothing changes).
    pub(crate) fn leave_local(&self, pids: &[Pid]) -> Result<Self, Pid> {
        let local = self.local_members();
        let kept: Vec<Pid> = if let [pid] = pids {
            // The common case: no map. Newest occurrence first, as Erlang's newest-first list.
            let at = local.iter().rposition(|p| p == pid).ok_or_else(|| pid.clone())?;
            local.iter().enumerate().filter(|(i, _)| *i != at).map(|(_, p)| p.clone()).collect()
        } else {
            let mut pending = counts(pids);
            let kept = local
                .iter()
                .filter(|p| match pending.get_mut(p) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        false
                    }
                    _ => true,
                })
                .cloned()
                .collect();
            if let Some(missing) = pids.iter().find(|p| pending.get(p).is_some_and(|n| *n > 0)) {
                return Err(missing.clone());
            }
            kept
        };
        Ok(Self::from_parts(kept, self.remote_members().iter().cloned(), self.version))
    }

    /// Remote `pids` join. The caller checked they belong to the sending peer.
    pub(crate) fn join_remote(&self, pids: &[Pid]) -> Self {
        let remote = self.remote_members().iter().chain(pids).cloned();
        Self::from_parts(self.local_members().iter().cloned(), remote, self.version)
    }

    /// Remote `pids` leave, one occurrence each. Lenient like Erlang: pids that are not members are
    /// ignored (a leave can race with a sync or a node-down). Returns the next value and what left.
    pub(crate) fn leave_remote(&self, pids: &[Pid]) -> (Self, Vec<Pid>) {
        let mut pending = counts(pids);
        let mut left = Vec::new();
        let kept: Vec<Pid> = self
            .remote_members()
            .iter()
            .filter(|p| match pending.get_mut(p) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    left.push((*p).clone());
                    false
                }
                _ => true,
            })
            .cloned()
            .collect();
        (Self::from_parts(self.local_members().iter().cloned(), kept, self.version), left)
    }

    /// The members hosted by exactly `node` (name and incarnation).
    pub(crate) fn node_members(&self, node: &NodeId) -> Vec<Pid> {
        self.remote_members().iter().filter(|p| p.node == *node).cloned().collect()
    }

    /// Replaces everything hosted by `node` with `pids` (a peer's full state for this group).
    pub(crate) fn with_node_members(&self, node: &NodeId, pids: &[Pid]) -> Self {
        let others = self.remote_members().iter().filter(|p| p.node != *node);
        Self::from_parts(self.local_members().iter().cloned(), others.chain(pids).cloned(), self.version)
    }

    /// Removes every occurrence of every pid matching `drop`; `None` when nothing matches.
    pub(crate) fn without(&self, drop: impl Fn(&Pid) -> bool) -> Option<(Self, Vec<Pid>)> {
        if !self.pids.iter().any(&drop) {
            return None;
        }
        let removed: Vec<Pid> = self.pids.iter().filter(|p| drop(p)).cloned().collect();
        let local = self.local_members().iter().filter(|p| !drop(p)).cloned();
        let remote = self.remote_members().iter().filter(|p| !drop(p)).cloned();
        Some((Self::from_parts(local, remote, self.version), removed))
    }
}

fn counts(pids: &[Pid]) -> HashMap<&Pid, usize> {
    let mut counts = HashMap::with_capacity(pids.len());
    for pid in pids {
        *counts.entry(pid).or_insert(0) += 1;
    }
    counts
}

/// The multiset difference that turns `old` into `new`: `(left, joined)`, where `left` holds each
/// pid as many times as it must leave and `joined` as many times as it must join. A pid present
/// in both with the same count appears in neither, so a sync emits events only for real changes.
/// Order follows the inputs, so the result is deterministic.
pub fn multiset_diff(old: &[Pid], new: &[Pid]) -> (Vec<Pid>, Vec<Pid>) {
    if old == new {
        return (Vec::new(), Vec::new());
    }
    let mut balance: HashMap<&Pid, isize> = HashMap::with_capacity(old.len() + new.len());
    for pid in old {
        *balance.entry(pid).or_insert(0) += 1;
    }
    for pid in new {
        *balance.entry(pid).or_insert(0) -= 1;
    }
    let mut left = Vec::new();
    for pid in old {
        if let Some(n) = balance.get_mut(pid).filter(|n| **n > 0) {
            *n -= 1;
            left.push(pid.clone());
        }
    }
    let mut joined = Vec::new();
    for pid in new {
        if let Some(n) = balance.get_mut(pid).filter(|n| **n < 0) {
            *n += 1;
            joined.push(pid.clone());
        }
    }
    (left, joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pid(node: &str, local: u64) -> Pid {
        Pid::new(NodeId::new(node, 1), local)
    }

    fn sorted(mut pids: Vec<Pid>) -> Vec<Pid> {
        pids.sort();
        pids
    }

    #[test]
    fn group_name_bounds_are_typed_refusals() {
        assert_eq!(Group::new(""), Err(PgError::EmptyGroupName));
        let long = "g".repeat(MAX_GROUP_NAME_BYTES + 1);
        assert_eq!(Group::new(&long), Err(PgError::GroupNameTooLong { len: long.len(), max: MAX_GROUP_NAME_BYTES }));
        assert!(Group::new(&"g".repeat(MAX_GROUP_NAME_BYTES)).is_ok());
    }

    #[test]
    fn group_deserialisation_checks_the_bounds() {
        let long = rmp_serde::to_vec(&"g".repeat(MAX_GROUP_NAME_BYTES + 1)).unwrap();
        assert!(rmp_serde::from_slice::<Group>(&long).is_err());
        let ok = rmp_serde::to_vec(&Group::new("chat").unwrap()).unwrap();
        assert_eq!(rmp_serde::from_slice::<Group>(&ok).unwrap().as_str(), "chat");
    }

    #[test]
    fn local_members_come_first_and_remote_after() {
        let g = GroupSnapshot::empty().join_remote(&[pid("b", 1)]).join_local(&[pid("a", 1), pid("a", 1)]);
        assert_eq!(g.local_members(), &[pid("a", 1), pid("a", 1)]);
        assert_eq!(g.remote_members(), &[pid("b", 1)]);
        assert_eq!(g.count(&pid("a", 1)), 2);
    }

    #[test]
    fn leave_local_removes_one_occurrence_per_pid_or_refuses_the_batch() {
        let g = GroupSnapshot::empty().join_local(&[pid("a", 1), pid("a", 2), pid("a", 1)]);
        let once = g.leave_local(&[pid("a", 1)]).unwrap();
        assert_eq!(once.count(&pid("a", 1)), 1);
        assert_eq!(g.leave_local(&[pid("a", 1), pid("a", 1), pid("a", 1)]), Err(pid("a", 1)));
        assert_eq!(g.leave_local(&[pid("a", 2), pid("a", 3)]), Err(pid("a", 3)));
        let both = g.leave_local(&[pid("a", 1), pid("a", 2)]).unwrap();
        assert_eq!(both.local_members(), &[pid("a", 1)]);
    }

    #[test]
    fn leave_remote_ignores_non_members_and_reports_what_left() {
        let g = GroupSnapshot::empty().join_remote(&[pid("b", 1), pid("b", 1)]);
        let (next, left) = g.leave_remote(&[pid("b", 1), pid("b", 9)]);
        assert_eq!(left, vec![pid("b", 1)]);
        assert_eq!(next.remote_members(), &[pid("b", 1)]);
    }

    #[test]
    fn diff_of_equal_multisets_is_empty_even_when_reordered() {
        let (left, joined) = multiset_diff(&[pid("b", 1), pid("b", 2)], &[pid("b", 2), pid("b", 1)]);
        assert!(left.is_empty() && joined.is_empty());
    }

    #[test]
    fn diff_counts_occurrences() {
        let (left, joined) = multiset_diff(&[pid("b", 1), pid("b", 1), pid("b", 2)], &[pid("b", 1), pid("b", 3)]);
        assert_eq!(left, vec![pid("b", 1), pid("b", 2)]);
        assert_eq!(joined, vec![pid("b", 3)]);
    }

    fn pids() -> impl Strategy<Value = Vec<Pid>> {
        prop::collection::vec((0u64..4).prop_map(|l| pid("b", l)), 0..8)
    }

    proptest! {
        #[test]
        fn diff_applied_to_old_yields_new(old in pids(), new in pids()) {
            let (left, joined) = multiset_diff(&old, &new);
            let mut result = old.clone();
            for pid in &left {
                let at = result.iter().position(|p| p == pid);
                prop_assert!(at.is_some(), "leave of a pid that is not in old");
                result.remove(at.unwrap());
            }
            result.extend(joined.iter().cloned());
            prop_assert_eq!(sorted(result), sorted(new));
            // Minimal: no pid both leaves and joins.
            prop_assert!(left.iter().all(|p| !joined.contains(p)));
        }
    }
}
