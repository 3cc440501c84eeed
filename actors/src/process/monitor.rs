//! Process monitors (Erlang `monitor(process, Pid)`): [`MonitorRef`], the [`Down`] message, and
//! [`MonitorTable`], the node's sans-I/O bookkeeping of who watches whom.
//!
//! The table holds two kinds of records:
//! - *local monitors*: the watcher is a process of this node; the target is local or remote. Each
//!   carries the sink that puts a [`Down`] into the watcher's mailbox.
//! - *remote watches*: the watcher is on another node, the target is local. On the target's exit a
//!   DOWN notice frame goes back to the watcher's node.
//!
//! Invariants: a record is removed exactly once, by whichever comes first of the target's exit,
//! `demonitor`, the watcher's exit, or the target's (local monitor) or watcher's (remote watch) node
//! going down; whoever removes it is the only one that may deliver its [`Down`], so each monitor
//! yields at most one [`Down`] (exactly one unless demonitored or its watcher died). Both per-process
//! counts (as watcher, as target) and the node total are bounded; the table refuses beyond them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

use crate::host::ExitReason;
use crate::pid::Pid;

/// Names one monitor; unique on the watcher's node for the life of its process runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MonitorRef {
    id: u64,
}

impl MonitorRef {
    /// A monitor reference from its number (for tests and wire decoding).
    pub fn new(id: u64) -> Self {
        Self { id }
    }

    /// Its number.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Display for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Ref<{}>", self.id)
    }
}

/// The message a watcher receives when a monitored process exits (Erlang's
/// `{'DOWN', Ref, process, Pid, Reason}`). The watcher's message type implements `From<Down>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Down {
    /// The monitor that fired (as returned by `monitor`).
    pub monitor: MonitorRef,
    /// The process that exited (or was never reachable).
    pub pid: Pid,
    /// Why: its exit reason, `NoProc` if it was not alive when monitored, `NoConnection` if its node
    /// went down.
    pub reason: ExitReason,
}

/// Why the table refused a monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `pid` (watcher or target) is at the per-process bound.
    ProcessLimit(Pid),
    /// The node is at its bound.
    NodeLimit,
}

/// A monitor whose watcher is a process of this node.
#[derive(Clone, Debug)]
pub(crate) struct LocalMonitor<S> {
    /// The watcher's local process number.
    pub(crate) watcher: u64,
    /// The monitored process (local or remote).
    pub(crate) target: Pid,
    /// Delivers the [`Down`] into the watcher's mailbox.
    pub(crate) sink: S,
}

/// What the exit of a local process releases.
#[derive(Debug)]
pub(crate) struct Exited<S> {
    /// Local monitors on the process: each gets a [`Down`] with the exit reason.
    pub(crate) watched_by: Vec<(MonitorRef, LocalMonitor<S>)>,
    /// Remote watchers of the process: each gets a DOWN notice frame (watcher node, monitor).
    pub(crate) remote_watchers: Vec<(NodeId, MonitorRef)>,
    /// Monitors the process held as a watcher on remote targets: their nodes are told to forget
    /// them (monitor, target). Its monitors on local targets are simply dropped.
    pub(crate) remote_targets: Vec<(MonitorRef, Pid)>,
}

/// Key of a remote watch: the watcher's node and its monitor.
type RemoteKey = (NodeId, MonitorRef);

/// The monitor bookkeeping of one node (see the module docs). `S` is the DOWN sink.
#[derive(Debug)]
pub(crate) struct MonitorTable<S> {
    node: NodeId,
    max_per_process: usize,
    max_per_node: usize,
    next_id: u64,
    local: HashMap<MonitorRef, LocalMonitor<S>>,
    by_target: HashMap<Pid, HashSet<MonitorRef>>,
    by_watcher: HashMap<u64, HashSet<MonitorRef>>,
    remote: HashMap<RemoteKey, u64>,
    remote_by_target: HashMap<u64, HashSet<RemoteKey>>,
}

fn remove_from_index<K, V>(index: &mut HashMap<K, HashSet<V>>, key: &K, value: &V)
where
    K: std::hash::Hash + Eq,
    V: std::hash::Hash + Eq,
{
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

impl<S> MonitorTable<S> {
    pub(crate) fn new(node: NodeId, max_per_process: usize, max_per_node: usize) -> Self {
        Self {
            node,
            max_per_process,
            max_per_node,
            next_id: 0,
            local: HashMap::new(),
            by_target: HashMap::new(),
            by_watcher: HashMap::new(),
            remote: HashMap::new(),
            remote_by_target: HashMap::new(),
        }
    }

    /// Records held (local monitors and remote watches).
    pub(crate) fn len(&self) -> usize {
        self.local.len() + self.remote.len()
    }

    /// A fresh reference, for a monitor that is answered at once (`NoProc`) and never stored.
    pub(crate) fn next_ref(&mut self) -> MonitorRef {
        self.next_id += 1;
        MonitorRef::new(self.next_id)
    }

    /// Monitors on `target` (local monitors, plus remote watches when it is local).
    fn target_count(&self, target: &Pid) -> usize {
        let local = self.by_target.get(target).map_or(0, HashSet::len);
        let remote =
            if target.node == self.node { self.remote_by_target.get(&target.local).map_or(0, HashSet::len) } else { 0 };
        local + remote
    }

    /// Installs a monitor of the local process `watcher` on `target`.
    pub(crate) fn add_local(&mut self, watcher: u64, target: Pid, sink: S) -> Result<MonitorRef, Refusal> {
        if self.len() >= self.max_per_node {
            return Err(Refusal::NodeLimit);
        }
        if self.by_watcher.get(&watcher).map_or(0, HashSet::len) >= self.max_per_process {
            return Err(Refusal::ProcessLimit(Pid::new(self.node.clone(), watcher)));
        }
        if self.target_count(&target) >= self.max_per_process {
            return Err(Refusal::ProcessLimit(target));
        }
        let monitor = self.next_ref();
        self.by_target.entry(target.clone()).or_default().insert(monitor);
        self.by_watcher.entry(watcher).or_default().insert(monitor);
        self.local.insert(monitor, LocalMonitor { watcher, target, sink });
        Ok(monitor)
    }

    /// Removes a local monitor (demonitor, or its DOWN arrived); `None` if it is gone already.
    pub(crate) fn remove_local(&mut self, monitor: MonitorRef) -> Option<LocalMonitor<S>> {
        let record = self.local.remove(&monitor)?;
        remove_from_index(&mut self.by_target, &record.target, &monitor);
        remove_from_index(&mut self.by_watcher, &record.watcher, &monitor);
        Some(record)
    }

    /// Removes the local monitor `monitor` if it watches `pid` (a DOWN notice from `pid`'s node).
    pub(crate) fn remove_local_on(&mut self, monitor: MonitorRef, pid: &Pid) -> Option<LocalMonitor<S>> {
        if self.local.get(&monitor).is_some_and(|record| record.target == *pid) {
            self.remove_local(monitor)
        } else {
            None
        }
    }

    /// Records that `monitor` of the remote `watcher_node` watches the local process `target`. A
    /// repeated request for the same monitor is a no-op.
    pub(crate) fn add_remote(&mut self, watcher_node: NodeId, monitor: MonitorRef, target: u64) -> Result<(), Refusal> {
        let key = (watcher_node, monitor);
        if self.remote.contains_key(&key) {
            return Ok(());
        }
        if self.len() >= self.max_per_node {
            return Err(Refusal::NodeLimit);
        }
        let target_pid = Pid::new(self.node.clone(), target);
        if self.target_count(&target_pid) >= self.max_per_process {
            return Err(Refusal::ProcessLimit(target_pid));
        }
        self.remote_by_target.entry(target).or_default().insert(key.clone());
        self.remote.insert(key, target);
        Ok(())
    }

    /// Forgets a remote watch (the watcher's node demonitored); false if unknown.
    pub(crate) fn remove_remote(&mut self, watcher_node: &NodeId, monitor: MonitorRef, target: u64) -> bool {
        let key = (watcher_node.clone(), monitor);
        if self.remote.get(&key) != Some(&target) {
            return false;
        }
        self.remote.remove(&key);
        remove_from_index(&mut self.remote_by_target, &target, &key);
        true
    }

    /// Takes every record the exit of the local process `local` releases.
    pub(crate) fn take_exited(&mut self, local: u64) -> Exited<S> {
        let pid = Pid::new(self.node.clone(), local);
        let watched_refs = self.by_target.remove(&pid).unwrap_or_default();
        let mut watched_by = Vec::with_capacity(watched_refs.len());
        for monitor in watched_refs {
            if let Some(record) = self.local.remove(&monitor) {
                remove_from_index(&mut self.by_watcher, &record.watcher, &monitor);
                watched_by.push((monitor, record));
            }
        }
        watched_by.sort_by_key(|(monitor, _)| *monitor);
        let remote_keys = self.remote_by_target.remove(&local).unwrap_or_default();
        let mut remote_watchers = Vec::with_capacity(remote_keys.len());
        for key in remote_keys {
            self.remote.remove(&key);
            remote_watchers.push(key);
        }
        let held = self.by_watcher.remove(&local).unwrap_or_default();
        let mut remote_targets = Vec::new();
        for monitor in held {
            if let Some(record) = self.local.remove(&monitor) {
                remove_from_index(&mut self.by_target, &record.target, &monitor);
                if record.target.node != self.node {
                    remote_targets.push((monitor, record.target));
                }
            }
        }
        Exited { watched_by, remote_watchers, remote_targets }
    }

    /// Takes every record that `node` (and its older incarnations) going down releases: local
    /// monitors on its processes (each gets `NoConnection`); remote watches of its processes are
    /// dropped. Returns the local monitors.
    pub(crate) fn take_node_down(&mut self, node: &NodeId) -> Vec<(MonitorRef, LocalMonitor<S>)> {
        let is_gone = |id: &NodeId| id.name == node.name && id.incarnation <= node.incarnation;
        let targets: Vec<Pid> = self.by_target.keys().filter(|pid| is_gone(&pid.node)).cloned().collect();
        let mut released = Vec::new();
        for target in targets {
            for monitor in self.by_target.remove(&target).unwrap_or_default() {
                if let Some(record) = self.local.remove(&monitor) {
                    remove_from_index(&mut self.by_watcher, &record.watcher, &monitor);
                    released.push((monitor, record));
                }
            }
        }
        released.sort_by_key(|(monitor, _)| *monitor);
        let keys: Vec<RemoteKey> = self.remote.keys().filter(|(watcher, _)| is_gone(watcher)).cloned().collect();
        for key in keys {
            if let Some(target) = self.remote.remove(&key) {
                remove_from_index(&mut self.remote_by_target, &target, &key);
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> NodeId {
        NodeId::new("a", 1)
    }

    fn local(n: u64) -> Pid {
        Pid::new(me(), n)
    }

    fn remote(n: u64) -> Pid {
        Pid::new(NodeId::new("b", 3), n)
    }

    fn table() -> MonitorTable<()> {
        MonitorTable::new(me(), 2, 5)
    }

    #[test]
    fn exit_releases_watchers_remote_watchers_and_held_monitors_once() {
        let mut t = MonitorTable::new(me(), 4, 10);
        let m1 = t.add_local(1, local(2), ()).unwrap();
        let m2 = t.add_local(3, local(2), ()).unwrap();
        let held = t.add_local(2, remote(7), ()).unwrap();
        t.add_remote(NodeId::new("b", 3), MonitorRef::new(99), 2).unwrap();
        assert_eq!(t.len(), 4);
        let exited = t.take_exited(2);
        let refs: Vec<MonitorRef> = exited.watched_by.iter().map(|(m, _)| *m).collect();
        assert_eq!(refs, [m1, m2]);
        assert_eq!(exited.remote_watchers, [(NodeId::new("b", 3), MonitorRef::new(99))]);
        assert_eq!(exited.remote_targets, [(held, remote(7))]);
        assert_eq!(t.len(), 0);
        let again = t.take_exited(2);
        assert!(again.watched_by.is_empty() && again.remote_watchers.is_empty() && again.remote_targets.is_empty());
    }

    #[test]
    fn demonitor_removes_the_record_so_exit_releases_nothing() {
        let mut t = table();
        let m = t.add_local(1, local(2), ()).unwrap();
        assert!(t.remove_local(m).is_some());
        assert!(t.remove_local(m).is_none());
        assert!(t.take_exited(2).watched_by.is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn per_process_and_per_node_bounds_refuse() {
        let mut t = table();
        t.add_local(1, local(10), ()).unwrap();
        t.add_local(1, local(11), ()).unwrap();
        assert_eq!(t.add_local(1, local(12), ()), Err(Refusal::ProcessLimit(local(1))));
        t.add_local(2, local(10), ()).unwrap();
        assert_eq!(t.add_local(3, local(10), ()), Err(Refusal::ProcessLimit(local(10))));
        assert_eq!(t.add_remote(NodeId::new("b", 3), MonitorRef::new(1), 10), Err(Refusal::ProcessLimit(local(10))));
        t.add_local(3, local(12), ()).unwrap();
        t.add_local(4, local(13), ()).unwrap();
        assert_eq!(t.add_local(5, local(14), ()), Err(Refusal::NodeLimit));
    }

    #[test]
    fn node_down_releases_monitors_on_its_pids_and_its_watches() {
        let mut t = table();
        let on_b = t.add_local(1, remote(7), ()).unwrap();
        let on_newer_b = t.add_local(1, Pid::new(NodeId::new("b", 4), 7), ()).unwrap();
        t.add_remote(NodeId::new("b", 3), MonitorRef::new(5), 1).unwrap();
        let released = t.take_node_down(&NodeId::new("b", 3));
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0, on_b);
        assert_eq!(t.len(), 1);
        assert!(t.remove_local(on_newer_b).is_some());
    }

    #[test]
    fn remote_down_notice_only_removes_a_monitor_of_that_pid() {
        let mut t = table();
        let m = t.add_local(1, remote(7), ()).unwrap();
        assert!(t.remove_local_on(m, &remote(8)).is_none());
        assert!(t.remove_local_on(m, &remote(7)).is_some());
    }

    #[test]
    fn remote_watch_is_forgotten_only_by_its_key_and_target() {
        let mut t = table();
        let b = NodeId::new("b", 3);
        t.add_remote(b.clone(), MonitorRef::new(5), 1).unwrap();
        t.add_remote(b.clone(), MonitorRef::new(5), 1).unwrap();
        assert_eq!(t.len(), 1);
        assert!(!t.remove_remote(&b, MonitorRef::new(5), 2));
        assert!(t.remove_remote(&b, MonitorRef::new(5), 1));
        assert_eq!(t.len(), 0);
    }
}
