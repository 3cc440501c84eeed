//! [`ScopeTable`]: one scope's groups on one node, shared by callers, readers and the scope actor.
//!
//! The role of Erlang's per-scope ETS table, plus the bookkeeping `pg.erl` keeps in its server state
//! (local pid -> groups, peer -> groups). No I/O, no clock, no runtime: it is driven by method calls,
//! so it is tested deterministically from plain threads.
//!
//! # Structure
//! - `groups: DashMap<Group, Arc<GroupSlot>>`; a slot is a writer mutex plus an
//!   `ArcSwap<GroupSnapshot>` holding the published, immutable membership of the group.
//! - Writers (a local caller's `join`/`leave`, or the scope actor) look the slot up (the map's shard
//!   lock is held only for that lookup), take the slot's mutex, build the next snapshot from the
//!   current one ([`GroupSnapshot`] transitions are pure), push its events to the outbox, publish it
//!   with one atomic store, and release. So a caller sees its own join at once (read-your-writes),
//!   and readers are never behind a writer's copy.
//! - Readers (`get_members`, `get_local_members`) do one map lookup and one `ArcSwap` load and get an
//!   `Arc` of the snapshot: O(1) in group size, no lock beyond the shard lookup, never waiting for
//!   a writer of the group.
//! - A group whose last member leaves is marked retired under its mutex and then, once the mutex
//!   is released, removed from the map (by that writer, or by any writer that finds the retired
//!   slot first and helps); a writer that raced to a retired slot retries the lookup instead of
//!   writing into a dead slot. So a slot mutex is never held while a map shard lock is taken: the
//!   lock order is `structure` -> map shard -> slot mutex, never the reverse.
//! - Events: one global `seq` counter, incremented under the group's mutex, so within a group
//!   events are produced in `seq` order and the published snapshot's `version` is the `seq` of the
//!   last one applied. Events go to a lock-free FIFO (`SegQueue`) while the mutex is held, so the
//!   outbox holds each group's events in order even when several threads write the same group. The
//!   scope actor drains it ([`ScopeTable::pop_event`]) to notify monitors and propagate local
//!   changes. A monitor is consistent when given the snapshot from [`ScopeTable::monitor_snapshot`]
//!   at version `v` followed by exactly that group's events with `seq > v`.
//! - Monitor snapshots are read under the writer locks, so each comes with an exact cut and no
//!   retry: a group's snapshot is read under its slot mutex (no write of the group is half done)
//!   together with the last allocated `seq` (its cut when empty). A scope-wide read also holds
//!   `structure` exclusively: writers hold it shared only to insert or remove a slot, so the set of
//!   groups is fixed while the read goes through them, and the `seq` read at the end is an exact
//!   cut for every group absent from the read. Writes to existing groups, and all reads, do not
//!   touch `structure`.
//! - `local_index: DashMap<u64, Vec<Group>>`: for each local pid, one entry per join occurrence,
//!   newest last (Erlang's per-process group list), so `process_exit` touches only the pid's groups
//!   and leaving the newest group is O(1).
//! - `peers`: per peer node name, its incarnation, the groups it may have members in (so a sync
//!   or a node-down touches only those groups) and the [`MembershipDigest`] of exactly what the
//!   table holds of it, kept by every change to its members (under the peers lock, from the delta
//!   the change computed), so answering a peer's digest costs one lookup. Only the scope actor
//!   writes peer state.
//! - The local digest ([`ScopeTable::local_digest`]) is the [`MembershipDigest`] of the local
//!   memberships whose events have been **drained**: kept by [`ScopeTable::pop_event`], not by the
//!   writers, so the join/leave hot path pays nothing for it, and it is exactly what peers have been
//!   sent (a digest sent after a drain is consistent with the batches queued before it, whatever
//!   writers do meanwhile). With an empty outbox it equals the digest of
//!   [`ScopeTable::local_state`] (every change of a local membership is one local event).
//!
//! # Trade-offs
//! - Copy-on-write: every change to a group copies its member array (O(group size), cloning each
//!   `Pid`, whose node name is a `String`, and later freeing the old copy). That makes reads O(1)
//!   and a plain `&[Pid]`, and keeps one copy of the members (no separate writer-side structure;
//!   local members are a prefix of the same array), so small groups, the common case, are cheap
//!   (join+leave ~0.8 µs, see `benches/pg.rs`). The price is writes to large groups: measured
//!   ~0.6 ms per join or leave in a 10,000-member group (~60 ns per pid copied), where Erlang's
//!   ETS rewrite of the list costs ~44 µs. The fix, if large groups churn in practice, is a chunked
//!   snapshot (`Arc<[Pid]>` chunks of ~64, shared between versions: a write copies one chunk and
//!   the chunk pointers), at the cost of readers iterating chunks instead of one slice.
//! - A `DashMap` shard lock is still taken by readers for the lookup (read mode). It is held by
//!   writers only to insert or remove a group, never across a snapshot copy; a group-monitor read
//!   holds it across a slot mutex only in the rare case that the group was emptied under it.
//! - A scope-monitor read ([`ScopeTable::monitor_scope_snapshot`]) delays group creations and
//!   removals (not other writes, not reads) for the time of one pass over the groups, taking each
//!   group's mutex in turn. Monitor registrations are rare; peer syncs, which are periodic, use the
//!   lock-free [`ScopeTable::sync_snapshot`] instead and are repaired by anti-entropy.
//! - The outbox bound is soft by at most the number of concurrent writers (the check and the push are
//!   not one atomic step); removals bypass it so cleanup can never be refused.
//! - Exit and join of the same pid racing: `process_exit` repeats until the pid has no index entry,
//!   but a join that starts after `process_exit` returned is accepted; the node refuses joins of
//!   pids no longer in its process table (`NotHosted`) before calling [`ScopeTable::join`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arc_swap::ArcSwap;
use cohort_cluster::NodeId;
use crossbeam::queue::SegQueue;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::digest::MembershipDigest;
use super::state::{Event, EventKind, Group, GroupSnapshot, NodeState, Origin, multiset_diff};
use super::{PgError, ScopeLimits};
use crate::pid::Pid;

/// The events a snapshot already reflects: per-group versions, and a floor for other groups (see
/// the scope module, "Consistency with snapshots"). Used for monitors and for peer syncs.
pub(crate) struct SnapshotCut {
    /// The `seq` read before the snapshot: reflects every event of a group absent from `versions`.
    pub(crate) floor: u64,
    /// Per group read, its published version. Looked up only, never iterated.
    pub(crate) versions: HashMap<Group, u64>,
}

impl SnapshotCut {
    /// Whether the snapshot this cut belongs to already reflects `event`.
    pub(crate) fn reflects(&self, event: &Event) -> bool {
        event.seq <= self.versions.get(&event.group).copied().unwrap_or(self.floor)
    }
}

/// A read of one group: the published snapshot, seen as all members or local members only.
/// Cloning is one reference-count increment; the slice never changes under the reader.
#[derive(Clone)]
pub struct Members {
    snapshot: Arc<GroupSnapshot>,
    local_only: bool,
}

impl Members {
    /// The snapshot this read came from (all members, local members, version).
    pub fn snapshot(&self) -> &Arc<GroupSnapshot> {
        &self.snapshot
    }

    /// The version of the group when read (0 if the group was absent; a group just emptied may read
    /// empty at its last version until its writer has removed it from the table).
    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }
}

impl Deref for Members {
    type Target = [Pid];

    fn deref(&self) -> &[Pid] {
        if self.local_only { self.snapshot.local_members() } else { self.snapshot.members() }
    }
}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What a peer sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Groups whose membership changed (each emitted one or two events).
    pub groups_changed: usize,
    /// Groups whose joins were refused by a bound (group count or group size); counted by the actor.
    pub groups_refused: usize,
}

struct GroupSlot {
    /// Writers serialise on this; `true` once the slot has been removed from the map.
    retired: Mutex<bool>,
    published: ArcSwap<GroupSnapshot>,
}

/// A peer scope: its current incarnation, the groups it may have members in (a superset), and
/// the digest of its members held here.
struct Peer {
    incarnation: u64,
    groups: HashSet<Group>,
    /// Invariant: the [`MembershipDigest`] of every membership in the table whose pid is hosted by
    /// exactly this peer (name and incarnation).
    digest: MembershipDigest,
}

/// The next value of a group and what changed; events are emitted leave first, then join.
struct Transition {
    next: GroupSnapshot,
    left: Vec<Pid>,
    joined: Vec<Pid>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; if it ever did, the protected data (a flag, the
    // peer map) is still consistent, so keep serving rather than poisoning the whole scope.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shared(gate: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    gate.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive(gate: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    gate.write().unwrap_or_else(PoisonError::into_inner)
}

/// An empty snapshot whose version is `version`: the cut of a group read empty.
fn empty_at(version: u64) -> Arc<GroupSnapshot> {
    let mut empty = GroupSnapshot::empty();
    if version > 0 {
        empty.set_version(version);
    }
    Arc::new(empty)
}

/// One scope's process groups on one node: concurrent, lock-free for readers, sans-I/O.
///
/// ```
/// use cohort_actors::pg::{EventKind, Group, ScopeTable};
/// use cohort_actors::Pid;
/// use cohort_cluster::NodeId;
///
/// let me = NodeId::new("a", 1);
/// let table = ScopeTable::new(me.clone());
/// let chat = Group::new("chat").unwrap();
/// let pid = Pid::new(me, 7);
/// table.join(&chat, &[pid.clone()]).unwrap();
/// assert_eq!(&*table.get_members("chat"), &[pid.clone()]); // read-your-writes
/// let event = table.pop_event().unwrap(); // for the scope actor: monitors and peers
/// assert_eq!((event.kind, event.pids), (EventKind::Join, vec![pid]));
/// ```
pub struct ScopeTable {
    node: NodeId,
    limits: ScopeLimits,
    groups: DashMap<Group, Arc<GroupSlot>>,
    /// Held shared by writers while they insert or remove a slot, exclusively by a scope-monitor
    /// read (see the module docs).
    structure: RwLock<()>,
    group_count: AtomicUsize,
    local_index: DashMap<u64, Vec<Group>>,
    peers: Mutex<HashMap<String, Peer>>,
    outbox: SegQueue<Event>,
    pending: AtomicUsize,
    /// The digest of the local memberships whose events were drained (see the module docs).
    drained_digest: Mutex<MembershipDigest>,
    /// The next event's `seq`; starts at 1 so version 0 means "never changed".
    next_seq: AtomicU64,
    empty: Arc<GroupSnapshot>,
}

impl ScopeTable {
    /// An empty scope table for the node `node`, with the default [`ScopeLimits`].
    pub fn new(node: NodeId) -> Self {
        Self::with_limits(node, ScopeLimits::default())
    }

    /// An empty scope table with explicit limits.
    pub fn with_limits(node: NodeId, limits: ScopeLimits) -> Self {
        Self {
            node,
            limits,
            groups: DashMap::new(),
            structure: RwLock::new(()),
            group_count: AtomicUsize::new(0),
            local_index: DashMap::new(),
            peers: Mutex::new(HashMap::new()),
            outbox: SegQueue::new(),
            pending: AtomicUsize::new(0),
            drained_digest: Mutex::new(MembershipDigest::EMPTY),
            next_seq: AtomicU64::new(1),
            empty: Arc::new(GroupSnapshot::empty()),
        }
    }

    /// The node this table belongs to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The limits this table enforces.
    pub fn limits(&self) -> &ScopeLimits {
        &self.limits
    }

    // ---- local writes (any thread) ----

    /// Joins local `pids` to `group`, once per occurrence in the slice (a pid may join several
    /// times and must then leave as many times). Visible to readers when this returns; the event
    /// (origin [`Origin::Local`], to be sent to peers) is queued for the scope actor.
    /// Returns the group's version after the join.
    pub fn join(&self, group: &Group, pids: &[Pid]) -> Result<u64, PgError> {
        self.check_local_batch(pids)?;
        if pids.is_empty() {
            return Ok(self.get_members(group.as_str()).version());
        }
        self.check_pending()?;
        let max = self.limits.max_members_per_group;
        if pids.len() > max {
            return Err(PgError::TooManyMembers { group: group.clone(), max });
        }
        self.update(group, true, Origin::Local, |current| {
            if current.len() + pids.len() > max {
                return Err(PgError::TooManyMembers { group: group.clone(), max });
            }
            for pid in pids {
                // Most pids are in one group: start at capacity 1 (16 bytes), not Vec's default 4.
                self.local_index.entry(pid.local).or_insert_with(|| Vec::with_capacity(1)).push(group.clone());
            }
            Ok(Some(Transition { next: current.join_local(pids), left: Vec::new(), joined: pids.to_vec() }))
        })
    }

    /// Removes one join occurrence of each of `pids` (local) from `group`. All or nothing: if a pid
    /// has no occurrence left, nothing changes and [`PgError::NotJoined`] names it.
    /// Returns the group's version after the leave.
    pub fn leave(&self, group: &Group, pids: &[Pid]) -> Result<u64, PgError> {
        self.check_local_batch(pids)?;
        if pids.is_empty() {
            return Ok(self.get_members(group.as_str()).version());
        }
        self.check_pending()?;
        self.update(group, false, Origin::Local, |current| {
            let next = current.leave_local(pids).map_err(|pid| PgError::NotJoined { group: group.clone(), pid })?;
            for pid in pids {
                self.forget_local_occurrence(pid.local, group);
            }
            Ok(Some(Transition { next, left: pids.to_vec(), joined: Vec::new() }))
        })
    }

    /// A local process exited: removes every join occurrence of `pid` from every group, one
    /// [`EventKind::Leave`] event per group (origin local, so peers hear of it). Never refused by
    /// the event bound. Returns the number of groups left.
    pub fn process_exit(&self, pid: &Pid) -> Result<usize, PgError> {
        if !pid.is_local_to(&self.node) {
            return Err(PgError::NotLocal { pid: pid.clone() });
        }
        let mut groups_left = 0;
        // Repeat: a join racing with this exit may add an index entry after the first removal.
        while let Some((_, mut groups)) = self.local_index.remove(&pid.local) {
            groups.sort_unstable();
            groups.dedup();
            for group in &groups {
                self.update(group, false, Origin::Local, |current| {
                    Ok(current.without(|p| p == pid).map(|(next, left)| Transition { next, left, joined: Vec::new() }))
                })?;
                groups_left += 1;
            }
        }
        Ok(groups_left)
    }

    // ---- peer input (the scope actor) ----

    /// A peer scope announced itself (Erlang's `discover`): it becomes a peer with no members yet,
    /// so its join/leave batches are accepted. A newer incarnation replaces an older one (whose
    /// members are removed first); an older one than known is refused with [`PgError::StalePeer`].
    pub fn add_peer(&self, node: &NodeId) -> Result<(), PgError> {
        let mut peers = lock(&self.peers);
        self.admit_peer(&mut peers, node).map(|_| ())
    }

    /// The peers currently known (discovered or synced, not since down).
    pub fn peers(&self) -> Vec<NodeId> {
        lock(&self.peers).iter().map(|(name, peer)| NodeId::new(name.clone(), peer.incarnation)).collect()
    }

    /// A peer's full state for this scope (on connect or reconnect): replaces everything held for
    /// `from` and emits events only for real changes, per group the leaves then the joins of the
    /// multiset difference. Admits `from` as a peer like [`ScopeTable::add_peer`]. The whole message
    /// is refused if it breaks a bound or names a pid `from` does not host; a group whose joins would
    /// exceed a bound because of other nodes' members is applied partially and counted in the report.
    pub fn sync_peer(&self, from: &NodeId, groups: NodeState) -> Result<SyncReport, PgError> {
        if groups.len() > self.limits.max_groups {
            return Err(PgError::TooManyGroups { max: self.limits.max_groups });
        }
        let max_members = self.limits.max_members_per_group;
        let mut state: HashMap<Group, Vec<Pid>> = HashMap::with_capacity(groups.len());
        for (group, pids) in groups {
            check_peer_pids(from, &pids)?;
            let held = state.entry(group.clone()).or_default();
            held.extend(pids);
            if held.len() > max_members {
                return Err(PgError::TooManyMembers { group, max: max_members });
            }
        }
        state.retain(|_, pids| !pids.is_empty());
        let mut peers = lock(&self.peers);
        let peer = self.admit_peer(&mut peers, from)?;
        let previous = std::mem::take(&mut peer.groups);
        let mut report = SyncReport::default();
        for group in previous.iter().filter(|group| !state.contains_key(*group)) {
            self.replace_node_members(group, from, &[], &mut report, &mut peer.digest);
        }
        for (group, pids) in &state {
            self.replace_node_members(group, from, pids, &mut report, &mut peer.digest);
        }
        peer.groups = state.into_keys().collect();
        Ok(report)
    }

    /// A peer's join batch. Refused if `from` is not a known peer (a late message after its
    /// node-down, or an outsider), if a pid is not hosted by `from`, or by a bound.
    pub fn remote_join(&self, from: &NodeId, group: &Group, pids: &[Pid]) -> Result<u64, PgError> {
        self.check_peer_batch(from, pids)?;
        let mut peers = lock(&self.peers);
        let peer = known_peer(&mut peers, from)?;
        if pids.is_empty() {
            return Ok(self.get_members(group.as_str()).version());
        }
        let max = self.limits.max_members_per_group;
        if pids.len() > max {
            return Err(PgError::TooManyMembers { group: group.clone(), max });
        }
        let version = self.update(group, true, Origin::Remote, |current| {
            if current.len() + pids.len() > max {
                return Err(PgError::TooManyMembers { group: group.clone(), max });
            }
            Ok(Some(Transition { next: current.join_remote(pids), left: Vec::new(), joined: pids.to_vec() }))
        })?;
        peer.groups.insert(group.clone());
        peer.digest = peer.digest.plus(MembershipDigest::of_group(group, pids));
        Ok(version)
    }

    /// A peer's leave batch. Pids that are not members are ignored (as in Erlang: the leave may race
    /// with a sync); refused like [`ScopeTable::remote_join`] for unknown peers and foreign pids.
    pub fn remote_leave(&self, from: &NodeId, group: &Group, pids: &[Pid]) -> Result<u64, PgError> {
        self.check_peer_batch(from, pids)?;
        let mut peers = lock(&self.peers);
        let peer = known_peer(&mut peers, from)?;
        let mut delta = MembershipDigest::EMPTY;
        let version = self.update(group, false, Origin::Remote, |current| {
            let (next, left) = current.leave_remote(pids);
            delta = MembershipDigest::delta(group, &left, &[]);
            Ok((!left.is_empty()).then_some(Transition { next, left, joined: Vec::new() }))
        })?;
        peer.digest = peer.digest.plus(delta);
        Ok(version)
    }

    /// The [`MembershipDigest`] of what this table holds of peer `node` (exact incarnation), to
    /// compare with the digest the peer sends of its own memberships; `None` if `node` is not a
    /// known peer (we hold nothing of it: a digest from it calls for a full sync). O(1).
    pub fn peer_digest(&self, node: &NodeId) -> Option<MembershipDigest> {
        lock(&self.peers).get(&node.name).filter(|peer| peer.incarnation == node.incarnation).map(|peer| peer.digest)
    }

    /// The [`MembershipDigest`] of this node's memberships as far as their events have been drained
    /// ([`ScopeTable::pop_event`]): what peers have been told. Equal to the digest of
    /// [`ScopeTable::local_state`] whenever the outbox is empty. O(1).
    pub fn local_digest(&self) -> MembershipDigest {
        *lock(&self.drained_digest)
    }

    /// Membership reported `node` down or left: removes every member hosted by it or by an older
    /// incarnation of it, with events, and forgets the peer (its late batches are then refused).
    /// Ignored if a newer incarnation of the node is the known peer. Returns the groups changed.
    pub fn node_down(&self, node: &NodeId) -> usize {
        let mut peers = lock(&self.peers);
        self.drop_peer(&mut peers, node)
    }

    // ---- reads (any thread, lock-free) ----

    /// Every member of `group`, local first, one entry per join occurrence. O(1): no copy.
    pub fn get_members(&self, group: &str) -> Members {
        Members { snapshot: self.snapshot(group), local_only: false }
    }

    /// The members of `group` hosted by this node. O(1): no copy.
    pub fn get_local_members(&self, group: &str) -> Members {
        Members { snapshot: self.snapshot(group), local_only: true }
    }

    /// Every non-empty group, in no particular order.
    pub fn which_groups(&self) -> Vec<Group> {
        self.groups.iter().filter(|slot| !slot.published.load().is_empty()).map(|slot| slot.key().clone()).collect()
    }

    /// Every group with at least one local member, in no particular order.
    pub fn which_local_groups(&self) -> Vec<Group> {
        self.groups
            .iter()
            .filter(|slot| !slot.published.load().local_members().is_empty())
            .map(|slot| slot.key().clone())
            .collect()
    }

    /// Number of non-empty groups (what the group bound counts).
    pub fn group_count(&self) -> usize {
        self.group_count.load(Ordering::Relaxed)
    }

    /// This node's memberships per group, for the sync message sent to a peer that discovers us.
    pub fn local_state(&self) -> NodeState {
        self.groups
            .iter()
            .filter_map(|slot| {
                let snapshot = slot.published.load();
                let local = snapshot.local_members();
                (!local.is_empty()).then(|| (slot.key().clone(), local.to_vec()))
            })
            .collect()
    }

    /// The snapshot a group monitor starts from: deliver to it exactly the events of `group` with
    /// `seq` greater than the returned snapshot's version.
    ///
    /// Read under the group's writer lock, so it is exact whatever writers do meanwhile: a
    /// non-empty snapshot is the group's published one (its version is the `seq` of the last event
    /// applied, and no later event of the group exists yet); an empty one (the group is absent,
    /// being created, or just emptied) carries the last `seq` allocated while the lock was held, so
    /// every earlier event of the group (of incarnations since emptied) counts as reflected and
    /// every later one is delivered. Never retries: if the slot found was emptied and retired
    /// meanwhile, the group is read again while its map shard is held, so no slot of the group can
    /// be created or removed during that second read.
    pub fn monitor_snapshot(&self, group: &str) -> Arc<GroupSnapshot> {
        let found = self.groups.get(group).map(|slot| Arc::clone(&slot));
        if let Some(slot) = found {
            let retired = lock(&slot.retired);
            if !*retired {
                return self.locked_snapshot(&slot);
            }
        }
        // Absent, or emptied and retired after the lookup (its removal may still be pending).
        let Ok(name) = Group::new(group) else {
            return empty_at(self.last_seq()); // not a valid name: never a group
        };
        match self.groups.entry(name) {
            Entry::Vacant(_held) => empty_at(self.last_seq()),
            Entry::Occupied(held) => {
                let slot = held.get();
                let _retired = lock(&slot.retired);
                self.locked_snapshot(slot)
            }
        }
    }

    /// The snapshot a scope monitor starts from: `(floor, groups)`, every group present in the
    /// table with its snapshot as [`ScopeTable::monitor_snapshot`] reads it, **empty ones
    /// included** (a group being created or just emptied: the caller filters them out of what the
    /// monitor is shown but keeps their versions for the cut). Deliver the events of a listed
    /// group with `seq` above its snapshot's version, and the events of any other group with
    /// `seq > floor`.
    ///
    /// Exact without retries: groups are neither created nor removed during the read (writers
    /// wait on `structure` for that), each group is read under its mutex, and `floor` is read last,
    /// so an absent group's earlier events all belong to incarnations already emptied and its later
    /// ones to incarnations created after the read. Costs one pass over the groups, during which
    /// group creations and removals wait (other writes and all reads do not).
    pub fn monitor_scope_snapshot(&self) -> (u64, Vec<(Group, Arc<GroupSnapshot>)>) {
        let _structure = exclusive(&self.structure);
        let groups = self
            .groups
            .iter()
            .map(|slot| {
                let _retired = lock(&slot.retired);
                (slot.key().clone(), self.locked_snapshot(slot.value()))
            })
            .collect();
        (self.last_seq(), groups)
    }

    /// A lock-free, best-effort [`ScopeTable::monitor_scope_snapshot`] for peer syncs: every
    /// group present (empty ones included, with their published versions: a group being created
    /// is at version 0, so its first event is never taken as reflected) and the floor read before
    /// the pass. A write in progress during the read may be reflected or not: the scope actor
    /// replays recently drained events above the cut, peers ignore leaves of non-members, and
    /// anti-entropy repairs the rest. Never delays a writer.
    pub fn sync_snapshot(&self) -> (u64, Vec<(Group, Arc<GroupSnapshot>)>) {
        let floor = self.last_seq();
        let groups = self.groups.iter().map(|slot| (slot.key().clone(), slot.published.load_full())).collect();
        (floor, groups)
    }

    // ---- the event outbox (the scope actor) ----

    /// The oldest undrained event; per group, events come out in `seq` order. A local event is
    /// added to [`ScopeTable::local_digest`].
    pub fn pop_event(&self) -> Option<Event> {
        let event = self.outbox.pop()?;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        if event.origin == Origin::Local {
            let delta = match event.kind {
                EventKind::Join => MembershipDigest::delta(&event.group, &[], &event.pids),
                EventKind::Leave => MembershipDigest::delta(&event.group, &event.pids, &[]),
            };
            let mut digest = lock(&self.drained_digest);
            *digest = digest.plus(delta);
        }
        Some(event)
    }

    /// Up to `max` undrained events, oldest first.
    pub fn drain_events(&self, max: usize) -> Vec<Event> {
        std::iter::from_fn(|| self.pop_event()).take(max).collect()
    }

    /// Number of undrained events.
    pub fn pending_events(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    // ---- internals ----

    /// The last `seq` allocated (0 if none).
    fn last_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst) - 1
    }

    /// Called with `slot`'s mutex held: its published snapshot if non-empty, else an empty one at
    /// the last `seq` allocated (see [`ScopeTable::monitor_snapshot`]).
    fn locked_snapshot(&self, slot: &GroupSlot) -> Arc<GroupSnapshot> {
        let published = slot.published.load_full();
        if published.is_empty() { empty_at(self.last_seq()) } else { published }
    }

    fn snapshot(&self, group: &str) -> Arc<GroupSnapshot> {
        match self.groups.get(group) {
            Some(slot) => slot.published.load_full(),
            None => Arc::clone(&self.empty),
        }
    }

    fn check_local_batch(&self, pids: &[Pid]) -> Result<(), PgError> {
        let max = self.limits.max_pids_per_batch;
        if pids.len() > max {
            return Err(PgError::BatchTooLarge { len: pids.len(), max });
        }
        match pids.iter().find(|pid| !pid.is_local_to(&self.node)) {
            Some(pid) => Err(PgError::NotLocal { pid: pid.clone() }),
            None => Ok(()),
        }
    }

    fn check_peer_batch(&self, from: &NodeId, pids: &[Pid]) -> Result<(), PgError> {
        let max = self.limits.max_pids_per_batch;
        if pids.len() > max {
            return Err(PgError::BatchTooLarge { len: pids.len(), max });
        }
        check_peer_pids(from, pids)
    }

    fn check_pending(&self) -> Result<(), PgError> {
        let pending = self.pending.load(Ordering::Relaxed);
        let max = self.limits.max_pending_events;
        if pending >= max { Err(PgError::EventsSaturated { pending, max }) } else { Ok(()) }
    }

    /// Runs `change` on `group`'s current snapshot under the group's mutex and commits the result:
    /// events to the outbox, then the new snapshot published, then, if the group is now empty, the
    /// slot retired (under the mutex) and removed from the map (after it).
    /// `create` makes the group if absent; otherwise `change` sees the empty snapshot.
    /// Returns the group's version afterwards.
    fn update(
        &self,
        group: &Group,
        create: bool,
        origin: Origin,
        change: impl FnOnce(&GroupSnapshot) -> Result<Option<Transition>, PgError>,
    ) -> Result<u64, PgError> {
        loop {
            let slot = match self.groups.get(group.as_str()) {
                Some(slot) => Arc::clone(&slot),
                None if create => self.insert_slot(group)?,
                None => {
                    let transition = change(&self.empty)?;
                    debug_assert!(transition.is_none(), "only removals run on an absent group");
                    return Ok(0);
                }
            };
            let mut retired = lock(&slot.retired);
            if *retired {
                // Emptied meanwhile; its writer may not have removed it yet: help, then look up
                // (or create) the live slot.
                drop(retired);
                self.remove_retired(group, &slot);
                continue;
            }
            let current = slot.published.load_full();
            let (result, last) = match change(&current) {
                Err(error) => (Err(error), current),
                Ok(None) => (Ok(current.version()), current),
                Ok(Some(Transition { mut next, left, joined })) => {
                    let mut version = current.version();
                    if !left.is_empty() {
                        version = self.emit(EventKind::Leave, group, left, origin);
                    }
                    if !joined.is_empty() {
                        version = self.emit(EventKind::Join, group, joined, origin);
                    }
                    if version == current.version() {
                        (Ok(version), current)
                    } else {
                        next.set_version(version);
                        let next = Arc::new(next);
                        slot.published.store(Arc::clone(&next));
                        (Ok(version), next)
                    }
                }
            };
            // An empty group leaves the map (Erlang deletes empty groups).
            let emptied = last.is_empty();
            *retired = emptied;
            drop(retired);
            if emptied {
                self.remove_retired(group, &slot);
            }
            return result;
        }
    }

    fn insert_slot(&self, group: &Group) -> Result<Arc<GroupSlot>, PgError> {
        let _structure = shared(&self.structure);
        match self.groups.entry(group.clone()) {
            Entry::Occupied(slot) => Ok(Arc::clone(slot.get())),
            Entry::Vacant(vacant) => {
                let max = self.limits.max_groups;
                self.group_count
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
                    .map_err(|_| PgError::TooManyGroups { max })?;
                let slot = Arc::new(GroupSlot {
                    retired: Mutex::new(false),
                    published: ArcSwap::new(Arc::clone(&self.empty)),
                });
                vacant.insert(Arc::clone(&slot));
                Ok(slot)
            }
        }
    }

    /// Removes a retired slot from the map, once (by the writer that retired it, or by one that
    /// found it retired first). Called without the slot's mutex (see the lock order).
    fn remove_retired(&self, group: &Group, slot: &Arc<GroupSlot>) {
        let _structure = shared(&self.structure);
        if self.groups.remove_if(group.as_str(), |_, live| Arc::ptr_eq(live, slot)).is_some() {
            self.group_count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn emit(&self, kind: EventKind, group: &Group, pids: Vec<Pid>, origin: Origin) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.outbox.push(Event { seq, kind, group: group.clone(), pids, origin });
        seq
    }

    fn forget_local_occurrence(&self, local: u64, group: &Group) {
        let now_empty = match self.local_index.get_mut(&local) {
            Some(mut groups) => {
                if let Some(at) = groups.iter().rposition(|g| g == group) {
                    groups.remove(at);
                }
                groups.is_empty()
            }
            None => false,
        };
        if now_empty {
            self.local_index.remove_if(&local, |_, groups| groups.is_empty());
        }
    }

    fn admit_peer<'p>(&self, peers: &'p mut HashMap<String, Peer>, node: &NodeId) -> Result<&'p mut Peer, PgError> {
        if node.name == self.node.name {
            return Err(PgError::UnknownPeer { node: node.clone() });
        }
        if let Some(peer) = peers.get(&node.name) {
            if peer.incarnation > node.incarnation {
                return Err(PgError::StalePeer { node: node.clone(), current: peer.incarnation });
            }
            if peer.incarnation < node.incarnation {
                let older = NodeId::new(node.name.clone(), peer.incarnation);
                self.drop_peer(peers, &older);
            }
        }
        Ok(peers.entry(node.name.clone()).or_insert_with(|| Peer {
            incarnation: node.incarnation,
            groups: HashSet::new(),
            digest: MembershipDigest::EMPTY,
        }))
    }

    fn drop_peer(&self, peers: &mut HashMap<String, Peer>, node: &NodeId) -> usize {
        match peers.get(&node.name) {
            Some(peer) if peer.incarnation <= node.incarnation => {}
            _ => return 0,
        }
        let Some(peer) = peers.remove(&node.name) else { return 0 };
        let gone = |pid: &Pid| pid.node.name == node.name && pid.node.incarnation <= node.incarnation;
        let mut changed = 0;
        for group in &peer.groups {
            // Removals are never refused, so the result carries no error worth reporting.
            let _ = self.update(group, false, Origin::Remote, |current| {
                let transition =
                    current.without(gone).map(|(next, left)| Transition { next, left, joined: Vec::new() });
                changed += usize::from(transition.is_some());
                Ok(transition)
            });
        }
        changed
    }

    /// Sets what `node` has in `group` to `pids` (one group of a sync), keeping `digest` (the
    /// node's, see [`Peer::digest`]) equal to what is held.
    fn replace_node_members(
        &self,
        group: &Group,
        node: &NodeId,
        pids: &[Pid],
        report: &mut SyncReport,
        digest: &mut MembershipDigest,
    ) {
        let max = self.limits.max_members_per_group;
        let (mut changed, mut refused) = (false, false);
        let result = self.update(group, !pids.is_empty(), Origin::Remote, |current| {
            let old = current.node_members(node);
            let (left, joined) = multiset_diff(&old, pids);
            if current.len() - left.len() + joined.len() > max {
                // Other nodes' members fill the group: apply only the removals, refuse the joins.
                refused = true;
                if left.is_empty() {
                    return Ok(None);
                }
                changed = true;
                let (next, left) = current.leave_remote(&left);
                *digest = digest.plus(MembershipDigest::delta(group, &left, &[]));
                return Ok(Some(Transition { next, left, joined: Vec::new() }));
            }
            if left.is_empty() && joined.is_empty() {
                return Ok(None);
            }
            changed = true;
            // `update` commits whatever `Some` this returns: the delta is applied exactly then.
            *digest = digest.plus(MembershipDigest::delta(group, &left, &joined));
            Ok(Some(Transition { next: current.with_node_members(node, pids), left, joined }))
        });
        // The only error is the group bound refusing to create the group.
        report.groups_refused += usize::from(refused || result.is_err());
        report.groups_changed += usize::from(changed);
    }
}

fn check_peer_pids(from: &NodeId, pids: &[Pid]) -> Result<(), PgError> {
    match pids.iter().find(|pid| pid.node != *from) {
        Some(pid) => Err(PgError::NotPeerPid { peer: from.clone(), pid: pid.clone() }),
        None => Ok(()),
    }
}

fn known_peer<'p>(peers: &'p mut HashMap<String, Peer>, node: &NodeId) -> Result<&'p mut Peer, PgError> {
    match peers.get_mut(&node.name) {
        Some(peer) if peer.incarnation == node.incarnation => Ok(peer),
        _ => Err(PgError::UnknownPeer { node: node.clone() }),
    }
}

#[cfg(test)]
mod tests {
    //! Monitor reads racing a writer, with the writer stopped at each step of its critical section
    //! (driving the table's internals directly), so every interleaving is reproduced on purpose.

    use std::time::Duration;

    use super::*;

    fn me() -> NodeId {
        NodeId::new("a", 1)
    }

    fn local(n: u64) -> Pid {
        Pid::new(me(), n)
    }

    fn group(name: &str) -> Group {
        Group::new(name).unwrap()
    }

    fn slot(table: &ScopeTable, name: &str) -> Arc<GroupSlot> {
        Arc::clone(&table.groups.get(name).expect("the slot is in the map"))
    }

    /// The members a monitor ends with: `members` at cut `cut`, then every event of `name` above
    /// the cut, in order. Panics on a leave of a pid the monitor does not hold.
    fn replayed(members: &[Pid], cut: u64, name: &str, log: &[Event]) -> Vec<Pid> {
        let mut held = members.to_vec();
        for event in log.iter().filter(|e| e.group.as_str() == name && e.seq > cut) {
            match event.kind {
                EventKind::Join => held.extend(event.pids.iter().cloned()),
                EventKind::Leave => {
                    for pid in &event.pids {
                        let at = held.iter().position(|p| p == pid).expect("leave of a pid the monitor never saw join");
                        held.remove(at);
                    }
                }
            }
        }
        held.sort();
        held
    }

    /// The cut and members a scope read gives `name`.
    fn in_scope_read(read: &(u64, Vec<(Group, Arc<GroupSnapshot>)>), name: &str) -> (u64, Vec<Pid>) {
        match read.1.iter().find(|(g, _)| g.as_str() == name) {
            Some((_, snapshot)) => (snapshot.version(), snapshot.members().to_vec()),
            None => (read.0, Vec::new()),
        }
    }

    /// Waits (bounded) until `reader` has had the time to block; it must not have finished.
    fn assert_blocked<T>(reader: &std::thread::ScopedJoinHandle<'_, T>) {
        std::thread::sleep(Duration::from_millis(30));
        assert!(!reader.is_finished(), "the monitor read must wait for the writer holding the group's lock");
    }

    /// Bug 1: a group whose slot exists at version 0 while its first event is already allocated
    /// (below the floor) used to be left out of the scope snapshot, so its first join was cut.
    #[test]
    fn a_group_being_created_is_in_the_scope_snapshot_and_its_first_join_is_delivered() {
        let table = ScopeTable::new(me());
        let (g, other) = (group("g"), group("other"));
        // An earlier incarnation of g, and another group, so the floor is well above 0.
        table.join(&g, &[local(9)]).unwrap();
        table.leave(&g, &[local(9)]).unwrap();
        table.join(&other, &[local(8)]).unwrap();

        // A writer creating g, stopped after allocating its first event, before publishing.
        let created = table.insert_slot(&g).unwrap();
        let writing = lock(&created.retired);
        let seq = table.emit(EventKind::Join, &g, vec![local(1)], Origin::Local);
        assert!(seq <= table.last_seq(), "the first event is below the floor");

        // The lock-free sync read lists the empty slot at version 0: its first join is not cut.
        let (floor, groups) = table.sync_snapshot();
        assert!(floor >= seq);
        let listed = groups.iter().find(|(name, _)| *name == g).expect("a slot being created is listed");
        assert_eq!((listed.1.version(), listed.1.len()), (0, 0));

        std::thread::scope(|s| {
            let scope_read = s.spawn(|| table.monitor_scope_snapshot());
            let group_read = s.spawn(|| table.monitor_snapshot("g"));
            assert_blocked(&scope_read);
            assert_blocked(&group_read);
            let mut next = GroupSnapshot::empty().join_local(&[local(1)]);
            next.set_version(seq);
            created.published.store(Arc::new(next));
            drop(writing);
            let scope_read = scope_read.join().unwrap();
            let group_read = group_read.join().unwrap();
            let log = table.drain_events(usize::MAX);
            assert_eq!(in_scope_read(&scope_read, "g"), (seq, vec![local(1)]));
            assert_eq!(replayed(&[local(1)], seq, "g", &log), vec![local(1)]);
            assert_eq!((group_read.version(), group_read.members()), (seq, &[local(1)][..]));
            assert_eq!(in_scope_read(&scope_read, "other").1, vec![local(8)]);
        });
    }

    /// Bug 1, the other order: the monitor read takes the new slot's lock before its writer. The
    /// empty slot is listed with a cut above the old incarnation's events and below the new ones.
    #[test]
    fn a_group_read_before_its_first_write_keeps_its_cut() {
        let table = ScopeTable::new(me());
        let g = group("g");
        table.join(&g, &[local(9)]).unwrap();
        table.leave(&g, &[local(9)]).unwrap();
        table.insert_slot(&g).unwrap(); // created, its writer not yet in its critical section
        let scope_read = table.monitor_scope_snapshot();
        let group_read = table.monitor_snapshot("g");
        let (cut, members) = in_scope_read(&scope_read, "g");
        assert!(members.is_empty());
        assert_eq!(cut, table.last_seq(), "empty: cut at the last seq allocated, not 0");
        table.join(&g, &[local(1)]).unwrap();
        let log = table.drain_events(usize::MAX);
        assert_eq!(log.len(), 3);
        assert_eq!(replayed(&members, cut, "g", &log), vec![local(1)]);
        assert_eq!(replayed(group_read.members(), group_read.version(), "g", &log), vec![local(1)]);
    }

    /// Bug 2: a group emptied (and removed) during a monitor read. Every stage of the emptying
    /// write is read, by a group read and a scope read: none may show a leave for a pid that is
    /// not in the snapshot, or lose a later join.
    #[test]
    fn a_group_emptied_during_a_monitor_read_never_shows_a_leave_without_its_join() {
        let table = ScopeTable::new(me());
        let g = group("g");
        table.join(&g, &[local(1)]).unwrap();
        let mut reads: Vec<(&str, u64, Vec<Pid>)> = Vec::new();
        let record = |stage: &'static str, table: &ScopeTable, reads: &mut Vec<(&str, u64, Vec<Pid>)>| {
            let one = table.monitor_snapshot("g");
            reads.push((stage, one.version(), one.members().to_vec()));
            let (cut, members) = in_scope_read(&table.monitor_scope_snapshot(), "g");
            reads.push((stage, cut, members));
        };
        record("before", &table, &mut reads);

        // The writer emptying g, stopped after allocating its leave: readers wait for it.
        let old = slot(&table, "g");
        let mut writing = lock(&old.retired);
        let seq = table.emit(EventKind::Leave, &g, vec![local(1)], Origin::Local);
        std::thread::scope(|s| {
            let group_read = s.spawn(|| table.monitor_snapshot("g"));
            let scope_read = s.spawn(|| table.monitor_scope_snapshot());
            assert_blocked(&group_read);
            assert_blocked(&scope_read);
            let mut emptied = GroupSnapshot::empty();
            emptied.set_version(seq);
            old.published.store(Arc::new(emptied));
            *writing = true; // retired under the lock, removal pending (after the lock)
            drop(writing);
            let one = group_read.join().unwrap();
            reads.push(("during", one.version(), one.members().to_vec()));
            let (cut, members) = in_scope_read(&scope_read.join().unwrap(), "g");
            reads.push(("during", cut, members));
        });
        // Retired but still in the map (the writer between its unlock and the removal).
        record("retired", &table, &mut reads);
        assert!(table.groups.contains_key("g"));
        table.remove_retired(&g, &old);
        assert!(!table.groups.contains_key("g"));
        record("removed", &table, &mut reads);

        // A new incarnation of g.
        table.join(&g, &[local(2)]).unwrap();
        record("recreated", &table, &mut reads);
        let log = table.drain_events(usize::MAX);
        assert_eq!(log.len(), 3);
        for (stage, cut, members) in &reads {
            assert!(*stage == "before" || *stage == "recreated" || (members.is_empty() && *cut >= seq), "{stage}");
            assert_eq!(replayed(members, *cut, "g", &log), vec![local(2)], "read {stage}");
        }
    }

    /// A writer that finds a retired slot still in the map removes it itself (once) and writes the
    /// new incarnation: no spinning on the retiring writer, and the group count stays exact.
    #[test]
    fn a_retired_slot_left_in_the_map_is_removed_by_the_next_writer() {
        let table = ScopeTable::new(me());
        let g = group("g");
        table.join(&g, &[local(1)]).unwrap();
        let old = slot(&table, "g");
        {
            let mut retired = lock(&old.retired);
            let seq = table.emit(EventKind::Leave, &g, vec![local(1)], Origin::Local);
            let mut emptied = GroupSnapshot::empty();
            emptied.set_version(seq);
            old.published.store(Arc::new(emptied));
            *retired = true;
        }
        assert_eq!(table.group_count(), 1, "not removed yet");
        table.join(&g, &[local(2)]).unwrap();
        assert!(!Arc::ptr_eq(&old, &slot(&table, "g")), "a new slot");
        assert_eq!(table.group_count(), 1);
        table.remove_retired(&g, &old); // the late removal of the retiring writer is a no-op
        assert_eq!(table.group_count(), 1);
        assert_eq!(&*table.get_members("g"), &[local(2)]);
    }
}
