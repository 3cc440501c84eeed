//! The consistent registry's state machine: a pure, deterministic name -> owner map fed by the raft log.
//!
//! Role: [`RegistryFsm`] applies committed [`Proposal`]s (register, unregister, remove-by-pid,
//! remove-by-node, no-op) in log order and answers lookups and fencing checks. The raft core feeds it
//! committed entries and snapshots; nothing here touches a clock, a socket or a file.
//!
//! Invariants:
//! - Determinism: the state after applying a log depends only on the log (entry bytes and their
//!   index/term). Every limit that changes an outcome ([`FsmLimits`]) is part of that function, so
//!   all replicas must run the same limits (the defaults are the named constants).
//! - First committed wins: a registration of a taken name answers
//!   [`CommandResult::AlreadyRegistered`] with the owner and its fencing token.
//! - The fencing token of a registration is the log index of the entry that applied it, so tokens
//!   are unique and increase along the log.
//! - Idempotence: a proposal carrying a [`RequestId`] already applied returns the cached result (the
//!   same token) and changes nothing; the cache holds the last [`MAX_REQUEST_CACHE`] ids, evicted in
//!   apply order (deterministic).
//! - A bad entry (undecodable bytes, unknown version, invalid name) is applied as a no-op with a
//!   [`CommandResult::Malformed`] result on every replica alike: a log entry never panics the node.
//! - A snapshot ([`RegistryFsm::encode_snapshot`]) is versioned and validated on decode; applying the
//!   rest of the log to a restored snapshot gives the same state as applying the whole log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cohort_actors::Pid;
use cohort_actors::pid::is_valid_node_name;
use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

use super::planes::{Admission, RootToken};

/// Longest registered name, in bytes (the same bound as the eventual tier, so a name fits both).
pub const MAX_NAME_BYTES: usize = 255;

/// Most names the consistent tier holds (SPEC 7 asks for at least 200,000). Every replica holds
/// the whole map in memory and every snapshot carries it: at the largest sizes (a 255-byte name
/// owned by a pid of a 64-byte node name) that is 250k x [`MAX_SNAPSHOT_BYTES_PER_NAME`] = 85 MiB
/// of snapshot, sent to a follower in bounded chunks (`snapshot_transfer`); with names of a few
/// dozen bytes it is about 10 MiB (docs/BENCHMARKS.md "Snapshot catch-up").
pub const MAX_NAMES: usize = 250_000;

/// Most request ids remembered for idempotent retries. A client retries within seconds; at 20k
/// writes/s this keeps the last ~0.8 s of ids at full load and minutes at normal rates.
pub const MAX_REQUEST_CACHE: usize = 16_384;

/// Most departed node incarnations remembered (late registrations from them are refused).
pub const MAX_DEPARTED_NODES: usize = 1_024;

/// Most raft ids in the address book (raft id -> NodeId), learned from configuration entries.
pub const MAX_MEMBERS: usize = 1_024;

/// Names removed by one remove-by-node or remove-by-pid command. Bounds the work of one apply (and
/// so the latency every other write sees behind it); the leader re-proposes while names remain.
pub const REMOVE_CHUNK: u32 = 512;

/// Largest encoded proposal, in bytes: a name, a pid, a request id and framing.
pub const MAX_COMMAND_BYTES: usize = 1_024;

/// Largest encoded snapshot accepted, in bytes: a full registry at the largest sizes fits (the
/// assertion below), with room to spare for a format that grows a little.
pub const MAX_SNAPSHOT_BYTES: usize = 96 * 1024 * 1024;

/// Most bytes one name takes in an encoded snapshot (msgpack, structs as arrays): the name
/// (`str8`, 2 + 255), its registration (pid = node name `str8` 2 + 64, incarnation, local id, fencing
/// token: three `u64` of 9 bytes at their widest) and 4 array headers. Measured by the test
/// `a_name_of_the_largest_sizes_takes_at_most_the_named_snapshot_bytes`.
pub const MAX_SNAPSHOT_BYTES_PER_NAME: usize = 354;

/// Most bytes one remembered request id and its result take in a snapshot: the request id (node
/// name of 64 bytes, incarnation, sequence) and the largest result (`AlreadyRegistered` with its
/// owner pid and token), with framing (measured by the same test).
pub const MAX_SNAPSHOT_BYTES_PER_REQUEST: usize = 202;

/// Most bytes one departed node or address-book entry takes in a snapshot (a node id of a
/// 64-byte name and its incarnation, plus a raft id for a member).
pub const MAX_SNAPSHOT_BYTES_PER_NODE: usize = 86;

/// The snapshot's fixed part (version, applied token, five array headers), generously.
const SNAPSHOT_FIXED_BYTES: usize = 64;

// A registry full to every limit, at the largest sizes, encodes within MAX_SNAPSHOT_BYTES: the
// leader can always send the snapshot a follower needs, and the follower accepts it.
const _: () = assert!(
    MAX_NAMES * MAX_SNAPSHOT_BYTES_PER_NAME
        + MAX_REQUEST_CACHE * MAX_SNAPSHOT_BYTES_PER_REQUEST
        + (MAX_DEPARTED_NODES + MAX_MEMBERS) * MAX_SNAPSHOT_BYTES_PER_NODE
        + SNAPSHOT_FIXED_BYTES
        <= MAX_SNAPSHOT_BYTES
);

const COMMAND_VERSION: u8 = 1;
const SNAPSHOT_VERSION: u8 = 1;

/// A client's request id: who asked and its own sequence number. Unique per requesting node
/// incarnation, so a retry carries the same id and a new request a new one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The node that issued the request.
    pub node: NodeId,
    /// The requester's sequence number.
    pub seq: u64,
}

impl RequestId {
    /// A request id from its parts.
    pub fn new(node: NodeId, seq: u64) -> Self {
        Self { node, seq }
    }
}

/// A registry command, as committed in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Register `name` to `pid`; first committed wins.
    Register {
        /// The name.
        name: String,
        /// The owner.
        pid: Pid,
    },
    /// Remove `name` if `pid` holds it.
    Unregister {
        /// The name.
        name: String,
        /// The owner expected.
        pid: Pid,
    },
    /// Remove the names `pid` holds (its process exited), at most [`REMOVE_CHUNK`] per command.
    RemoveByPid {
        /// The exited process.
        pid: Pid,
    },
    /// Remove the names of every process on `node` (declared down or left), at most
    /// [`REMOVE_CHUNK`] per command, and refuse later registrations from it.
    RemoveByNode {
        /// The departed node incarnation.
        node: NodeId,
    },
    /// Nothing (used to commit an entry in a new term, or as a barrier).
    Noop,
    /// `node` (the same incarnation) is a live member again after it was declared departed (a
    /// partition that healed): its new registrations are accepted again. Its names removed while it
    /// was away stay removed (they lived under its lease). Appended last: older logs still decode.
    Readmit {
        /// The node incarnation to accept registrations from again.
        node: NodeId,
    },
}

/// What the log carries: a command and, for client writes, the request id that makes it idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The request id, when the caller may retry.
    pub request_id: Option<RequestId>,
    /// The command.
    pub command: Command,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u8,
    request_id: Option<RequestId>,
    command: Command,
}

/// Why a proposal or snapshot could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsmError {
    /// The bytes are longer than the bound for their kind.
    #[error("{len} bytes, at most {max} allowed")]
    TooLarge {
        /// The length found.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes do not decode.
    #[error("undecodable: {0}")]
    Decode(String),
    /// The encoding version is not one this build reads.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The content breaks an invariant (bad name, duplicate, bound exceeded).
    #[error("invalid content: {0}")]
    Invalid(String),
    /// An entry was offered at or below the applied index.
    #[error("entry {offered} is not after the applied index {applied}")]
    NotAfterApplied {
        /// The index offered.
        offered: u64,
        /// The index already applied.
        applied: u64,
    },
}

impl Proposal {
    /// A client write with a request id.
    pub fn new(request_id: RequestId, command: Command) -> Self {
        Self { request_id: Some(request_id), command }
    }

    /// Encodes for the log; refuses an invalid name or an encoding above [`MAX_COMMAND_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, FsmError> {
        validate_command(&self.command)?;
        let envelope =
            Envelope { version: COMMAND_VERSION, request_id: self.request_id.clone(), command: self.command.clone() };
        let bytes = rmp_serde::to_vec(&envelope).map_err(|e| FsmError::Decode(e.to_string()))?;
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(FsmError::TooLarge { len: bytes.len(), max: MAX_COMMAND_BYTES });
        }
        Ok(bytes)
    }

    /// Decodes a log entry's bytes, validating size, version and content.
    pub fn decode(bytes: &[u8]) -> Result<Self, FsmError> {
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(FsmError::TooLarge { len: bytes.len(), max: MAX_COMMAND_BYTES });
        }
        let envelope: Envelope = rmp_serde::from_slice(bytes).map_err(|e| FsmError::Decode(e.to_string()))?;
        if envelope.version != COMMAND_VERSION {
            return Err(FsmError::UnsupportedVersion(envelope.version));
        }
        validate_command(&envelope.command)?;
        Ok(Self { request_id: envelope.request_id, command: envelope.command })
    }
}

fn validate_name(name: &str) -> Result<(), FsmError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(FsmError::Invalid(format!("a name must be 1-{MAX_NAME_BYTES} bytes")));
    }
    Ok(())
}

fn validate_node(node: &NodeId) -> Result<(), FsmError> {
    if !is_valid_node_name(&node.name) {
        return Err(FsmError::Invalid("invalid node name".into()));
    }
    Ok(())
}

fn validate_command(command: &Command) -> Result<(), FsmError> {
    match command {
        Command::Register { name, pid } | Command::Unregister { name, pid } => {
            validate_name(name)?;
            validate_node(&pid.node)
        }
        Command::RemoveByPid { pid } => validate_node(&pid.node),
        Command::RemoveByNode { node } | Command::Readmit { node } => validate_node(node),
        Command::Noop => Ok(()),
    }
}

/// A name's current registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The owner.
    pub pid: Pid,
    /// The fencing token: the log index that applied the registration.
    pub fence_token: u64,
}

/// The result of applying one entry (also what a retry with the same request id gets back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The name is now held by the proposer's pid, guarded by `fence_token`.
    Registered {
        /// The fencing token (the applying log index).
        fence_token: u64,
    },
    /// Another owner committed first.
    AlreadyRegistered {
        /// The owner.
        owner: Pid,
        /// The owner's fencing token.
        fence_token: u64,
    },
    /// The name was removed.
    Unregistered,
    /// The name is not registered.
    NotRegistered,
    /// The name is held by another pid; nothing changed.
    NotOwner {
        /// The actual owner.
        owner: Pid,
    },
    /// Names removed by a remove-by-pid or remove-by-node command.
    Removed {
        /// How many were removed by this command.
        count: u32,
        /// Whether names of that pid/node remain (the leader proposes another chunk).
        remaining: bool,
    },
    /// The pid's node was declared departed; its registrations are refused.
    OwnerDeparted,
    /// The registry holds its maximum number of names.
    TooManyNames {
        /// The bound.
        max: usize,
    },
    /// Nothing to do (no-op entry).
    Noop,
    /// The entry did not decode; it was applied as a no-op on every replica.
    Malformed {
        /// Why.
        reason: String,
    },
}

/// One applied entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The token of the applying entry.
    pub token: RootToken,
    /// The proposal's request id, when it had one.
    pub request_id: Option<RequestId>,
    /// The result.
    pub result: CommandResult,
    /// Whether the result came from the request-id cache (a retry of an applied request).
    pub duplicate: bool,
}

/// The limits one FSM enforces. They shape outcomes, so every replica must use the same values;
/// [`FsmLimits::default`] is the named constants, smaller values let tests reach the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsmLimits {
    /// See [`MAX_NAMES`].
    pub max_names: usize,
    /// See [`MAX_REQUEST_CACHE`].
    pub max_request_cache: usize,
    /// See [`MAX_DEPARTED_NODES`].
    pub max_departed: usize,
    /// See [`REMOVE_CHUNK`].
    pub remove_chunk: u32,
    /// Test-only: a deliberate defect, so that a test can prove the simulator's seed budget
    /// catches a broken FSM. Always `None` on real nodes.
    #[doc(hidden)]
    pub mutation: Option<FsmMutation>,
}

impl Default for FsmLimits {
    fn default() -> Self {
        Self {
            max_names: MAX_NAMES,
            max_request_cache: MAX_REQUEST_CACHE,
            max_departed: MAX_DEPARTED_NODES,
            remove_chunk: REMOVE_CHUNK,
            mutation: None,
        }
    }
}

/// Test-only deliberate defects of the FSM (see [`FsmLimits::mutation`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsmMutation {
    /// A registration of a name another pid holds takes it over (two owners over time with no
    /// unregister between: not linearizable).
    SecondOwnerWins,
}

/// Local counters (not replicated, not in snapshots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsmStats {
    /// Entries applied.
    pub applied_entries: u64,
    /// Proposals answered from the request-id cache.
    pub duplicate_requests: u64,
    /// Entries that did not decode (applied as no-ops).
    pub malformed_entries: u64,
    /// Request ids evicted from the cache by its bound.
    pub request_cache_evictions: u64,
    /// Departed-node markers evicted by their bound.
    pub departed_evictions: u64,
    /// Registrations refused by [`FsmLimits::max_names`].
    pub refused_too_many_names: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    version: u8,
    applied: RootToken,
    names: Vec<(String, Registration)>,
    requests: Vec<(RequestId, CommandResult)>,
    departed: Vec<NodeId>,
    members: Vec<(u64, NodeId)>,
}

/// The consistent registry's replicated state (see the module docs for its invariants).
#[derive(Clone, Debug)]
pub struct RegistryFsm {
    limits: FsmLimits,
    applied: RootToken,
    names: BTreeMap<String, Registration>,
    by_pid: BTreeMap<Pid, BTreeSet<String>>,
    requests: BTreeMap<RequestId, CommandResult>,
    request_order: VecDeque<RequestId>,
    departed: BTreeSet<NodeId>,
    departed_order: VecDeque<NodeId>,
    members: BTreeMap<u64, NodeId>,
    stats: FsmStats,
    /// Names whose registration changed since the last [`RegistryFsm::take_touched`] (local, not
    /// replicated): the owner mirrors the view for lock-free reads from them.
    touched: Vec<String>,
    touched_overflow: bool,
}

/// Names tracked by [`RegistryFsm::take_touched`] between two calls; beyond it the caller is told
/// to rebuild its mirror from [`RegistryFsm::names`] instead (one `Ready` rarely touches more).
pub const MAX_TOUCHED: usize = 65_536;

impl Default for RegistryFsm {
    fn default() -> Self {
        Self::new(FsmLimits::default())
    }
}

impl RegistryFsm {
    /// An empty registry at token `0@0`.
    pub fn new(limits: FsmLimits) -> Self {
        Self {
            limits,
            applied: RootToken::default(),
            names: BTreeMap::new(),
            by_pid: BTreeMap::new(),
            requests: BTreeMap::new(),
            request_order: VecDeque::new(),
            departed: BTreeSet::new(),
            departed_order: VecDeque::new(),
            members: BTreeMap::new(),
            stats: FsmStats::default(),
            touched: Vec::new(),
            touched_overflow: false,
        }
    }

    /// The names whose registration changed since the last call, or `None` when more than
    /// [`MAX_TOUCHED`] did (rebuild from [`RegistryFsm::names`]).
    pub fn take_touched(&mut self) -> Option<Vec<String>> {
        let names = std::mem::take(&mut self.touched);
        if std::mem::take(&mut self.touched_overflow) { None } else { Some(names) }
    }

    fn touch(&mut self, name: &str) {
        if self.touched.len() >= MAX_TOUCHED {
            self.touched_overflow = true;
            self.touched.clear();
        } else if !self.touched_overflow {
            self.touched.push(name.to_string());
        }
    }

    /// The distinct nodes whose processes hold names (the leader checks them against membership).
    pub fn owner_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = Vec::new();
        for pid in self.by_pid.keys() {
            if nodes.last() != Some(&pid.node) {
                nodes.push(pid.node.clone());
            }
        }
        nodes.dedup();
        nodes
    }

    /// The token of the last applied entry.
    pub fn applied(&self) -> RootToken {
        self.applied
    }

    /// Local counters.
    pub fn stats(&self) -> FsmStats {
        self.stats
    }

    /// The limits in force.
    pub fn limits(&self) -> FsmLimits {
        self.limits
    }

    /// The registration of `name`, if any.
    pub fn lookup(&self, name: &str) -> Option<&Registration> {
        self.names.get(name)
    }

    /// Every registration, by name.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Registration)> {
        self.names.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// How many names are registered.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is registered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// How many names processes of `node` hold (the leader proposes remove-by-node while non-zero).
    pub fn names_of_node(&self, node: &NodeId) -> usize {
        self.pids_of_node(node).map(|(_, names)| names.len()).sum()
    }

    /// Whether `node` was declared departed.
    pub fn is_departed(&self, node: &NodeId) -> bool {
        self.departed.contains(node)
    }

    /// The node a raft id belongs to, learned from configuration entries.
    pub fn member(&self, raft_id: u64) -> Option<&NodeId> {
        self.members.get(&raft_id)
    }

    /// The whole address book.
    pub fn members(&self) -> &BTreeMap<u64, NodeId> {
        &self.members
    }

    /// Fencing check for a send by name: `Ok` with the registration when `fence_token` is the
    /// name's current token, `EpochMismatch` when it is stale (or newer than this view, or the name
    /// is gone): the receiver refuses the message and counts it.
    pub fn fence_check(&self, name: &str, fence_token: u64) -> Result<&Registration, Admission> {
        match self.names.get(name) {
            Some(reg) if reg.fence_token == fence_token => Ok(reg),
            _ => Err(Admission::EpochMismatch),
        }
    }

    /// Records raft id -> node mappings carried by a configuration entry at `token` (applied by the
    /// raft core in log order, so every replica builds the same book). Ids beyond [`MAX_MEMBERS`]
    /// are not recorded.
    pub fn record_members(&mut self, added: &[(u64, NodeId)], removed: &[u64]) {
        for id in removed {
            self.members.remove(id);
        }
        for (id, node) in added {
            if *id != 0 && (self.members.len() < MAX_MEMBERS || self.members.contains_key(id)) {
                self.members.insert(*id, node.clone());
            }
        }
    }

    /// Moves the applied token past an entry that carries no registry command (an empty entry a new
    /// leader commits, a configuration change).
    pub fn skip(&mut self, token: RootToken) -> Result<(), FsmError> {
        self.check_next(token)?;
        self.applied = token;
        self.stats.applied_entries += 1;
        Ok(())
    }

    fn check_next(&self, token: RootToken) -> Result<(), FsmError> {
        if token.index <= self.applied.index && self.applied.index != 0 {
            return Err(FsmError::NotAfterApplied { offered: token.index, applied: self.applied.index });
        }
        Ok(())
    }

    /// Applies one committed entry's bytes at `token`. Undecodable bytes are applied as a no-op with
    /// a [`CommandResult::Malformed`] result; the only error is an index not after the applied one.
    pub fn apply(&mut self, token: RootToken, data: &[u8]) -> Result<Applied, FsmError> {
        self.check_next(token)?;
        self.applied = token;
        self.stats.applied_entries += 1;
        let proposal = match Proposal::decode(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed_entries += 1;
                let result = CommandResult::Malformed { reason: e.to_string() };
                return Ok(Applied { token, request_id: None, result, duplicate: false });
            }
        };
        if let Some(id) = &proposal.request_id
            && let Some(cached) = self.requests.get(id)
        {
            self.stats.duplicate_requests += 1;
            return Ok(Applied { token, request_id: proposal.request_id, result: cached.clone(), duplicate: true });
        }
        let result = self.execute(token.index, proposal.command);
        if let Some(id) = &proposal.request_id {
            self.remember(id.clone(), result.clone());
        }
        Ok(Applied { token, request_id: proposal.request_id, result, duplicate: false })
    }

    fn remember(&mut self, id: RequestId, result: CommandResult) {
        if self.limits.max_request_cache == 0 {
            return;
        }
        while self.request_order.len() >= self.limits.max_request_cache {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
                self.stats.request_cache_evictions += 1;
            }
        }
        self.request_order.push_back(id.clone());
        self.requests.insert(id, result);
    }

    fn execute(&mut self, index: u64, command: Command) -> CommandResult {
        match command {
            Command::Register { name, pid } => self.register(index, name, pid),
            Command::Unregister { name, pid } => match self.names.get(&name) {
                None => CommandResult::NotRegistered,
                Some(reg) if reg.pid != pid => CommandResult::NotOwner { owner: reg.pid.clone() },
                Some(_) => {
                    self.remove_name(&name);
                    CommandResult::Unregistered
                }
            },
            Command::RemoveByPid { pid } => {
                let chunk = self.limits.remove_chunk as usize;
                let names: Vec<String> =
                    self.by_pid.get(&pid).map(|n| n.iter().take(chunk).cloned().collect()).unwrap_or_default();
                for name in &names {
                    self.remove_name(name);
                }
                CommandResult::Removed { count: names.len() as u32, remaining: self.by_pid.contains_key(&pid) }
            }
            Command::RemoveByNode { node } => {
                self.mark_departed(&node);
                let chunk = self.limits.remove_chunk as usize;
                let names: Vec<String> =
                    self.pids_of_node(&node).flat_map(|(_, names)| names.iter().cloned()).take(chunk).collect();
                for name in &names {
                    self.remove_name(name);
                }
                let remaining = self.pids_of_node(&node).next().is_some();
                CommandResult::Removed { count: names.len() as u32, remaining }
            }
            Command::Noop => CommandResult::Noop,
            Command::Readmit { node } => {
                if self.departed.remove(&node) {
                    self.departed_order.retain(|n| *n != node);
                }
                CommandResult::Noop
            }
        }
    }

    fn register(&mut self, index: u64, name: String, pid: Pid) -> CommandResult {
        if let Some(reg) = self.names.get(&name) {
            // The owner re-registering its own name is a retry without an id: same token.
            if reg.pid == pid {
                return CommandResult::Registered { fence_token: reg.fence_token };
            }
            if self.limits.mutation != Some(FsmMutation::SecondOwnerWins) {
                return CommandResult::AlreadyRegistered { owner: reg.pid.clone(), fence_token: reg.fence_token };
            }
            self.remove_name(&name);
        }
        if self.departed.contains(&pid.node) {
            return CommandResult::OwnerDeparted;
        }
        if self.names.len() >= self.limits.max_names {
            self.stats.refused_too_many_names += 1;
            return CommandResult::TooManyNames { max: self.limits.max_names };
        }
        self.by_pid.entry(pid.clone()).or_default().insert(name.clone());
        self.touch(&name);
        self.names.insert(name, Registration { pid, fence_token: index });
        CommandResult::Registered { fence_token: index }
    }

    fn remove_name(&mut self, name: &str) {
        self.touch(name);
        if let Some(reg) = self.names.remove(name)
            && let Some(set) = self.by_pid.get_mut(&reg.pid)
        {
            set.remove(name);
            if set.is_empty() {
                self.by_pid.remove(&reg.pid);
            }
        }
    }

    fn mark_departed(&mut self, node: &NodeId) {
        if self.limits.max_departed == 0 || !self.departed.insert(node.clone()) {
            return;
        }
        self.departed_order.push_back(node.clone());
        while self.departed_order.len() > self.limits.max_departed {
            if let Some(old) = self.departed_order.pop_front() {
                self.departed.remove(&old);
                self.stats.departed_evictions += 1;
            }
        }
    }

    fn pids_of_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = (&'a Pid, &'a BTreeSet<String>)> + 'a {
        let start = Pid::new(node.clone(), 0);
        let node = node.clone();
        self.by_pid.range(start..).take_while(move |(pid, _)| pid.node == node)
    }

    /// Encodes the whole replicated state (versioned; deterministic: equal states give equal bytes).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let snapshot = SnapshotV1 {
            version: SNAPSHOT_VERSION,
            applied: self.applied,
            names: self.names.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
            requests: self
                .request_order
                .iter()
                .filter_map(|id| Some((id.clone(), self.requests.get(id)?.clone())))
                .collect(),
            departed: self.departed_order.iter().cloned().collect(),
            members: self.members.iter().map(|(id, n)| (*id, n.clone())).collect(),
        };
        // Encoding plain owned data into a Vec cannot fail; an empty result would be refused on decode.
        rmp_serde::to_vec(&snapshot).unwrap_or_default()
    }

    /// Rebuilds a registry from snapshot bytes, validating everything (bad bytes are an error, never
    /// a panic). Local counters start at zero.
    pub fn restore(limits: FsmLimits, bytes: &[u8]) -> Result<Self, FsmError> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(FsmError::TooLarge { len: bytes.len(), max: MAX_SNAPSHOT_BYTES });
        }
        let snap: SnapshotV1 = rmp_serde::from_slice(bytes).map_err(|e| FsmError::Decode(e.to_string()))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(FsmError::UnsupportedVersion(snap.version));
        }
        let invalid = |what: &str| FsmError::Invalid(what.to_string());
        if snap.names.len() > limits.max_names {
            return Err(invalid("more names than the limit"));
        }
        if snap.requests.len() > limits.max_request_cache {
            return Err(invalid("more request ids than the limit"));
        }
        if snap.departed.len() > limits.max_departed {
            return Err(invalid("more departed nodes than the limit"));
        }
        if snap.members.len() > MAX_MEMBERS {
            return Err(invalid("more members than the limit"));
        }
        let mut fsm = Self::new(limits);
        fsm.applied = snap.applied;
        for (name, reg) in snap.names {
            validate_name(&name)?;
            validate_node(&reg.pid.node)?;
            if reg.fence_token == 0 || reg.fence_token > snap.applied.index {
                return Err(invalid("fencing token outside the applied log"));
            }
            fsm.by_pid.entry(reg.pid.clone()).or_default().insert(name.clone());
            if fsm.names.insert(name, reg).is_some() {
                return Err(invalid("duplicate name"));
            }
        }
        for (id, result) in snap.requests {
            fsm.request_order.push_back(id.clone());
            if fsm.requests.insert(id, result).is_some() {
                return Err(invalid("duplicate request id"));
            }
        }
        for node in snap.departed {
            fsm.departed_order.push_back(node.clone());
            if !fsm.departed.insert(node) {
                return Err(invalid("duplicate departed node"));
            }
        }
        for (id, node) in snap.members {
            if id == 0 {
                return Err(invalid("raft id 0"));
            }
            fsm.members.insert(id, node);
        }
        Ok(fsm)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n, 1)
    }

    fn pid(n: &str, local: u64) -> Pid {
        Pid::new(node(n), local)
    }

    fn rid(seq: u64) -> RequestId {
        RequestId::new(node("client"), seq)
    }

    fn enc(request: Option<u64>, command: Command) -> Vec<u8> {
        Proposal { request_id: request.map(rid), command }.encode().unwrap()
    }

    fn reg(name: &str, p: Pid) -> Command {
        Command::Register { name: name.into(), pid: p }
    }

    fn at(index: u64) -> RootToken {
        RootToken::new(1, index)
    }

    #[test]
    fn first_committed_wins_and_token_is_the_applying_index() {
        let mut fsm = RegistryFsm::default();
        let a = fsm.apply(at(5), &enc(Some(1), reg("svc", pid("a", 1)))).unwrap();
        assert_eq!(a.result, CommandResult::Registered { fence_token: 5 });
        let b = fsm.apply(at(6), &enc(Some(2), reg("svc", pid("b", 1)))).unwrap();
        assert_eq!(b.result, CommandResult::AlreadyRegistered { owner: pid("a", 1), fence_token: 5 });
        assert_eq!(fsm.lookup("svc").unwrap().pid, pid("a", 1));
    }

    #[test]
    fn retry_with_same_request_id_returns_the_same_token_and_changes_nothing() {
        let mut fsm = RegistryFsm::default();
        fsm.apply(at(1), &enc(Some(7), reg("svc", pid("a", 1)))).unwrap();
        fsm.apply(at(2), &enc(Some(8), Command::Unregister { name: "svc".into(), pid: pid("a", 1) })).unwrap();
        let retry = fsm.apply(at(3), &enc(Some(7), reg("svc", pid("a", 1)))).unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.result, CommandResult::Registered { fence_token: 1 });
        assert!(fsm.lookup("svc").is_none(), "a retry must not re-register");
    }

    #[test]
    fn request_cache_is_bounded_and_evicts_oldest() {
        let limits = FsmLimits { max_request_cache: 2, ..FsmLimits::default() };
        let mut fsm = RegistryFsm::new(limits);
        for i in 1..=3 {
            fsm.apply(at(i), &enc(Some(i), reg(&format!("n{i}"), pid("a", i)))).unwrap();
        }
        assert_eq!(fsm.stats().request_cache_evictions, 1);
        // id 1 was evicted: a late retry is executed again (and finds its own registration).
        let late = fsm.apply(at(4), &enc(Some(1), reg("n1", pid("a", 1)))).unwrap();
        assert!(!late.duplicate);
        assert_eq!(late.result, CommandResult::Registered { fence_token: 1 });
        let cached = fsm.apply(at(5), &enc(Some(3), reg("n3", pid("a", 3)))).unwrap();
        assert!(cached.duplicate);
    }

    #[test]
    fn names_are_bounded() {
        let mut fsm = RegistryFsm::new(FsmLimits { max_names: 1, ..FsmLimits::default() });
        fsm.apply(at(1), &enc(None, reg("a", pid("a", 1)))).unwrap();
        let refused = fsm.apply(at(2), &enc(None, reg("b", pid("a", 1)))).unwrap();
        assert_eq!(refused.result, CommandResult::TooManyNames { max: 1 });
        assert_eq!(fsm.stats().refused_too_many_names, 1);
    }

    #[test]
    fn unregister_only_by_owner() {
        let mut fsm = RegistryFsm::default();
        fsm.apply(at(1), &enc(None, reg("svc", pid("a", 1)))).unwrap();
        let r = fsm.apply(at(2), &enc(None, Command::Unregister { name: "svc".into(), pid: pid("b", 1) })).unwrap();
        assert_eq!(r.result, CommandResult::NotOwner { owner: pid("a", 1) });
        let r = fsm.apply(at(3), &enc(None, Command::Unregister { name: "svc".into(), pid: pid("a", 1) })).unwrap();
        assert_eq!(r.result, CommandResult::Unregistered);
        let r = fsm.apply(at(4), &enc(None, Command::Unregister { name: "svc".into(), pid: pid("a", 1) })).unwrap();
        assert_eq!(r.result, CommandResult::NotRegistered);
    }

    #[test]
    fn remove_by_node_works_in_bounded_chunks_and_refuses_later_registrations() {
        let mut fsm = RegistryFsm::new(FsmLimits { remove_chunk: 2, ..FsmLimits::default() });
        let mut i = 0;
        for n in 0..5 {
            i += 1;
            fsm.apply(at(i), &enc(None, reg(&format!("x{n}"), pid("x", n)))).unwrap();
        }
        i += 1;
        fsm.apply(at(i), &enc(None, reg("other", pid("y", 1)))).unwrap();
        let mut chunks = 0;
        loop {
            i += 1;
            let r = fsm.apply(at(i), &enc(None, Command::RemoveByNode { node: node("x") })).unwrap();
            chunks += 1;
            let CommandResult::Removed { count, remaining } = r.result else { panic!("{r:?}") };
            assert!(count <= 2);
            if !remaining {
                break;
            }
        }
        assert_eq!(chunks, 3);
        assert_eq!(fsm.names_of_node(&node("x")), 0);
        assert_eq!(fsm.len(), 1);
        i += 1;
        let late = fsm.apply(at(i), &enc(None, reg("late", pid("x", 9)))).unwrap();
        assert_eq!(late.result, CommandResult::OwnerDeparted);
        // Another incarnation of the same node name is a different node.
        i += 1;
        let fresh = fsm.apply(at(i), &enc(None, reg("late", Pid::new(NodeId::new("x", 2), 1)))).unwrap();
        assert!(matches!(fresh.result, CommandResult::Registered { .. }));
    }

    #[test]
    fn a_readmitted_node_registers_again_and_its_old_names_stay_removed() {
        let mut fsm = RegistryFsm::default();
        fsm.apply(at(1), &enc(None, reg("before", pid("x", 1)))).unwrap();
        fsm.apply(at(2), &enc(None, Command::RemoveByNode { node: node("x") })).unwrap();
        assert!(fsm.is_departed(&node("x")));
        let refused = fsm.apply(at(3), &enc(None, reg("during", pid("x", 1)))).unwrap();
        assert_eq!(refused.result, CommandResult::OwnerDeparted);
        fsm.apply(at(4), &enc(None, Command::Readmit { node: node("x") })).unwrap();
        assert!(!fsm.is_departed(&node("x")));
        let again = fsm.apply(at(5), &enc(None, reg("after", pid("x", 1)))).unwrap();
        assert_eq!(again.result, CommandResult::Registered { fence_token: 5 });
        assert!(fsm.lookup("before").is_none(), "names removed under the lease stay removed");
        // The readmission survives a snapshot.
        let restored = RegistryFsm::restore(FsmLimits::default(), &fsm.encode_snapshot()).unwrap();
        assert!(!restored.is_departed(&node("x")));
    }

    #[test]
    fn remove_by_pid_removes_only_that_pid() {
        let mut fsm = RegistryFsm::default();
        fsm.apply(at(1), &enc(None, reg("a", pid("x", 1)))).unwrap();
        fsm.apply(at(2), &enc(None, reg("b", pid("x", 1)))).unwrap();
        fsm.apply(at(3), &enc(None, reg("c", pid("x", 2)))).unwrap();
        let r = fsm.apply(at(4), &enc(None, Command::RemoveByPid { pid: pid("x", 1) })).unwrap();
        assert_eq!(r.result, CommandResult::Removed { count: 2, remaining: false });
        assert_eq!(fsm.names().map(|(n, _)| n).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn fence_check_refuses_stale_tokens() {
        let mut fsm = RegistryFsm::default();
        fsm.apply(at(3), &enc(None, reg("lock", pid("a", 1)))).unwrap();
        assert!(fsm.fence_check("lock", 3).is_ok());
        fsm.apply(at(4), &enc(None, Command::RemoveByPid { pid: pid("a", 1) })).unwrap();
        fsm.apply(at(5), &enc(None, reg("lock", pid("b", 1)))).unwrap();
        assert_eq!(fsm.fence_check("lock", 3).unwrap_err(), Admission::EpochMismatch);
        assert_eq!(fsm.fence_check("lock", 5).unwrap().pid, pid("b", 1));
        assert_eq!(fsm.fence_check("nothing", 5).unwrap_err(), Admission::EpochMismatch);
    }

    #[test]
    fn malformed_entries_apply_as_noops_and_stale_indexes_are_refused() {
        let mut fsm = RegistryFsm::default();
        let r = fsm.apply(at(1), b"\xff\x00garbage").unwrap();
        assert!(matches!(r.result, CommandResult::Malformed { .. }));
        assert_eq!(fsm.applied(), at(1));
        let big = vec![0u8; MAX_COMMAND_BYTES + 1];
        assert!(matches!(fsm.apply(at(2), &big).unwrap().result, CommandResult::Malformed { .. }));
        assert!(matches!(fsm.apply(at(2), &[]), Err(FsmError::NotAfterApplied { .. })));
        assert_eq!(fsm.stats().malformed_entries, 2);
    }

    #[test]
    fn proposal_encoding_refuses_bad_names() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(Proposal { request_id: None, command: reg(&long, pid("a", 1)) }.encode().is_err());
        assert!(Proposal { request_id: None, command: reg("", pid("a", 1)) }.encode().is_err());
        assert!(Proposal { request_id: None, command: reg("ok", pid("bad name", 1)) }.encode().is_err());
    }

    #[test]
    fn snapshot_restore_refuses_bad_bytes_without_panicking() {
        for bytes in [&b""[..], b"\x00", b"\x95\x01", &[0xffu8; 64]] {
            assert!(RegistryFsm::restore(FsmLimits::default(), bytes).is_err());
        }
        let mut fsm = RegistryFsm::default();
        fsm.apply(at(1), &enc(Some(1), reg("a", pid("a", 1)))).unwrap();
        let bytes = fsm.encode_snapshot();
        // A snapshot over a smaller limit is refused rather than silently truncated.
        assert!(RegistryFsm::restore(FsmLimits { max_names: 0, ..FsmLimits::default() }, &bytes).is_err());
        for cut in 0..bytes.len() {
            assert!(RegistryFsm::restore(FsmLimits::default(), &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_name_of_the_largest_sizes_takes_at_most_the_named_snapshot_bytes() {
        use cohort_actors::pid::MAX_NODE_NAME_BYTES;
        // Every integer at its widest msgpack encoding (9 bytes), every string at its bound.
        let widest = |c: &str| NodeId::new(c.repeat(MAX_NODE_NAME_BYTES), u64::MAX);
        let owner = Pid::new(widest("o"), u64::MAX);
        let name = |i: usize| format!("{i:0>width$}", width = MAX_NAME_BYTES);
        let mut index = 1u64 << 40;
        let mut fsm = RegistryFsm::default();
        fsm.skip(RootToken::new(u64::MAX, index)).unwrap();
        let mut apply = |fsm: &mut RegistryFsm, proposal: Proposal| {
            index += 1;
            fsm.apply(RootToken::new(u64::MAX, index), &proposal.encode().unwrap()).unwrap()
        };
        let size = |fsm: &RegistryFsm| fsm.encode_snapshot().len();
        let empty = size(&fsm);
        for i in 0..10 {
            apply(&mut fsm, Proposal { request_id: None, command: reg(&name(i), owner.clone()) });
        }
        let per_name = (size(&fsm) - empty) / 10;
        let before = size(&fsm);
        for i in 0..10u64 {
            let id = RequestId::new(widest("r"), u64::MAX - i);
            let other = Pid::new(widest("p"), u64::MAX);
            let applied = apply(&mut fsm, Proposal::new(id, reg(&name(0), other)));
            assert!(matches!(applied.result, CommandResult::AlreadyRegistered { .. }), "{applied:?}");
        }
        let per_request = (size(&fsm) - before) / 10;
        let before = size(&fsm);
        let departed: Vec<NodeId> =
            (0..10).map(|i| NodeId::new("d".repeat(MAX_NODE_NAME_BYTES), u64::MAX - i)).collect();
        for node in &departed {
            apply(&mut fsm, Proposal { request_id: None, command: Command::RemoveByNode { node: node.clone() } });
        }
        let per_departed = (size(&fsm) - before) / 10;
        let before = size(&fsm);
        let members: Vec<(u64, NodeId)> = (0..10).map(|i| (u64::MAX - i, widest("m"))).collect();
        fsm.record_members(&members, &[]);
        let per_member = (size(&fsm) - before) / 10;
        assert!(per_name <= MAX_SNAPSHOT_BYTES_PER_NAME, "{per_name} bytes per name");
        assert!(per_request <= MAX_SNAPSHOT_BYTES_PER_REQUEST, "{per_request} bytes per request id");
        assert!(per_departed.max(per_member) <= MAX_SNAPSHOT_BYTES_PER_NODE, "{per_departed}, {per_member} per node");
        assert!(empty <= SNAPSHOT_FIXED_BYTES, "{empty} fixed bytes");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reg { name: u8, node: u8, local: u8, req: Option<u8> },
        Unreg { name: u8, node: u8, local: u8, req: Option<u8> },
        ByPid { node: u8, local: u8 },
        ByNode { node: u8 },
        Garbage,
        Empty,
    }

    fn op() -> impl Strategy<Value = Op> {
        let req = proptest::option::of(0u8..6);
        prop_oneof![
            4 => (0u8..5, 0u8..3, 0u8..3, req.clone()).prop_map(|(name, node, local, req)| Op::Reg { name, node, local, req }),
            2 => (0u8..5, 0u8..3, 0u8..3, req).prop_map(|(name, node, local, req)| Op::Unreg { name, node, local, req }),
            1 => (0u8..3, 0u8..3).prop_map(|(node, local)| Op::ByPid { node, local }),
            1 => (0u8..3).prop_map(|node| Op::ByNode { node }),
            1 => Just(Op::Garbage),
            1 => Just(Op::Empty),
        ]
    }

    fn entry(op: &Op) -> Option<Vec<u8>> {
        let p = |node: u8, local: u8| Pid::new(NodeId::new(format!("n{node}"), 1), u64::from(local));
        let command = |req: Option<u8>, command| Some(enc(req.map(u64::from), command));
        match op {
            Op::Reg { name, node, local, req } => command(*req, reg(&format!("k{name}"), p(*node, *local))),
            Op::Unreg { name, node, local, req } => {
                command(*req, Command::Unregister { name: format!("k{name}"), pid: p(*node, *local) })
            }
            Op::ByPid { node, local } => command(None, Command::RemoveByPid { pid: p(*node, *local) }),
            Op::ByNode { node } => command(None, Command::RemoveByNode { node: NodeId::new(format!("n{node}"), 1) }),
            Op::Garbage => Some(vec![0xc1, 0x00]),
            Op::Empty => None,
        }
    }

    fn run(fsm: &mut RegistryFsm, ops: &[Op], first_index: u64) -> Vec<Applied> {
        let mut out = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let index = first_index + i as u64;
            let token = RootToken::new(1 + (index - 1) / 7, index);
            match entry(op) {
                Some(bytes) => out.push(fsm.apply(token, &bytes).unwrap()),
                None => fsm.skip(token).unwrap(),
            }
        }
        out
    }

    fn small_limits() -> FsmLimits {
        FsmLimits { max_names: 4, max_request_cache: 3, max_departed: 2, remove_chunk: 1, mutation: None }
    }

    proptest! {
        #[test]
        fn same_log_gives_same_state(ops in proptest::collection::vec(op(), 0..60)) {
            let mut a = RegistryFsm::new(small_limits());
            let mut b = RegistryFsm::new(small_limits());
            let ra = run(&mut a, &ops, 1);
            let rb = run(&mut b, &ops, 1);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a.encode_snapshot(), b.encode_snapshot());
        }

        #[test]
        fn snapshot_plus_rest_equals_full_log(ops in proptest::collection::vec(op(), 0..60), cut in 0usize..60) {
            let cut = cut.min(ops.len());
            let mut full = RegistryFsm::new(small_limits());
            let full_results = run(&mut full, &ops, 1);
            let mut head = RegistryFsm::new(small_limits());
            run(&mut head, &ops[..cut], 1);
            let mut restored = RegistryFsm::restore(small_limits(), &head.encode_snapshot()).unwrap();
            let tail_results = run(&mut restored, &ops[cut..], 1 + cut as u64);
            prop_assert_eq!(restored.encode_snapshot(), full.encode_snapshot());
            let full_tail: Vec<_> = full_results.iter().filter(|a| a.token.index > cut as u64).cloned().collect();
            prop_assert_eq!(tail_results, full_tail);
        }

        #[test]
        fn retries_are_idempotent(ops in proptest::collection::vec(op(), 1..40)) {
            // Applying every request twice in a row (a retry right after the original) leaves the
            // same registry as applying it once, and the retry gets the original's result.
            let limits = FsmLimits { max_request_cache: 64, remove_chunk: 64, ..small_limits() };
            let mut once = RegistryFsm::new(limits);
            let mut twice = RegistryFsm::new(limits);
            let mut index = 0;
            for (i, op) in ops.iter().enumerate() {
                let Some(bytes) = entry(op) else { continue };
                let first = once.apply(RootToken::new(1, i as u64 + 1), &bytes).unwrap();
                index += 1;
                let a = twice.apply(RootToken::new(1, index), &bytes).unwrap();
                index += 1;
                let b = twice.apply(RootToken::new(1, index), &bytes).unwrap();
                if a.request_id.is_some() && !a.duplicate {
                    prop_assert!(b.duplicate);
                    prop_assert_eq!(&a.result, &b.result);
                }
                // Results are equal up to the index-derived token.
                prop_assert_eq!(std::mem::discriminant(&first.result), std::mem::discriminant(&a.result));
            }
            let names = |f: &RegistryFsm| f.names().map(|(n, r)| (n.to_string(), r.pid.clone())).collect::<Vec<_>>();
            // Request-less commands (remove-by-*) are not idempotent by id, but they are by content.
            prop_assert_eq!(names(&once), names(&twice));
        }

        #[test]
        fn first_committed_wins_for_any_order(owners in proptest::collection::vec((0u8..4, 0u8..4), 1..10)) {
            let mut fsm = RegistryFsm::default();
            let mut winner: Option<(Pid, u64)> = None;
            for (i, (n, l)) in owners.iter().enumerate() {
                let p = Pid::new(NodeId::new(format!("n{n}"), 1), u64::from(*l));
                let index = i as u64 + 1;
                let r = fsm.apply(RootToken::new(1, index), &enc(None, reg("one", p.clone()))).unwrap();
                match &winner {
                    None => {
                        prop_assert_eq!(r.result, CommandResult::Registered { fence_token: index });
                        winner = Some((p, index));
                    }
                    Some((w, token)) if *w == p => prop_assert_eq!(r.result, CommandResult::Registered { fence_token: *token }),
                    Some((w, token)) => prop_assert_eq!(r.result, CommandResult::AlreadyRegistered { owner: w.clone(), fence_token: *token }),
                }
            }
        }
    }
}
