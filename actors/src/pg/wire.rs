//! Peer messages between the scope actors of one scope on different nodes (internode class `pg`).
//!
//! The exchange follows OTP's `pg`: a scope that starts, or sees a node come up, sends `Discover`;
//! the receiver answers with `Sync`, its full local state, and from then on sends that peer every
//! local `Join` and `Leave` batch in order. The receiver applies a sync as the difference against
//! what it held for the sender ([`super::ScopeTable::sync_peer`]).
//!
//! Every frame carries [`PG_WIRE_VERSION`]. Payloads are MessagePack (rmp-serde) inside a transport
//! frame whose size is checked before allocation (at most 16 MiB), so decoding allocates at most a
//! bounded multiple of that; [`PgFrame::validate`] then checks every bound below before anything
//! reaches the scope table. A full state larger than one frame is sent as numbered [`SyncChunk`]s
//! ([`sync_chunks`]) and reassembled with [`SyncAssembler`].
//!
//! Size of a pid on the wire: at most ~85 bytes (64-byte node name, two u64, array headers).

use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

use super::state::{Event, EventKind, Group, NodeState, Origin};
use super::{MAX_GROUPS_PER_SCOPE, MAX_PIDS_PER_BATCH};
use crate::pid::{MAX_NODE_NAME_BYTES, Pid, is_valid_node_name};

/// The pg wire protocol version this build speaks. A frame with another version is refused
/// ([`WireError::UnsupportedVersion`]) and counted; the peer is then treated as not in the scope.
pub const PG_WIRE_VERSION: u16 = 1;

/// Longest scope name, in bytes: scope names are configuration identifiers, short in practice.
pub const MAX_SCOPE_NAME_BYTES: usize = 255;

/// Most pids in one sync chunk: 16,384 × ~85 bytes ≈ 1.4 MB, well under the 16 MiB frame limit even
/// with [`MAX_GROUPS_PER_SYNC_CHUNK`] names of 255 bytes (≈ 4.2 MB) in the same chunk.
pub const MAX_PIDS_PER_SYNC_CHUNK: usize = 16_384;

/// Most groups in one sync chunk (see [`MAX_PIDS_PER_SYNC_CHUNK`] for the size budget).
pub const MAX_GROUPS_PER_SYNC_CHUNK: usize = 16_384;

/// Most memberships a reassembled sync may hold: the whole state is buffered until its last chunk,
/// so this bounds that buffer (~2M × ~80 bytes in memory ≈ 160 MB in the worst case).
pub const MAX_SYNC_PIDS: usize = 2_000_000;

/// One pg message from a peer scope, with its envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgFrame {
    /// Protocol version, [`PG_WIRE_VERSION`] when sent by this build.
    pub version: u16,
    /// The scope (at most [`MAX_SCOPE_NAME_BYTES`]).
    pub scope: String,
    /// The sending node (the transport has authenticated it; checked against it by the actor).
    pub from: NodeId,
    /// The message.
    pub message: PgMessage,
}

/// What a peer scope says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgMessage {
    /// "I run this scope: send me your state." Answered with a [`PgMessage::Sync`].
    Discover,
    /// One chunk of the sender's full local state.
    Sync(SyncChunk),
    /// Local pids of the sender joined a group (repeated per occurrence; at most [`MAX_PIDS_PER_BATCH`]).
    Join {
        /// The group.
        group: Group,
        /// The pids that joined.
        pids: Vec<Pid>,
    },
    /// Local pids of the sender left a group (one occurrence each; at most [`MAX_PIDS_PER_BATCH`]).
    Leave {
        /// The group.
        group: Group,
        /// The pids that left.
        pids: Vec<Pid>,
    },
}

/// A numbered part of a full state. Chunks of one sync share `sync_id`, are numbered from 0 and sent
/// in order; `last` marks the end. A group may span several chunks (its pids are concatenated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncChunk {
    /// Identifies one full-state transfer from the sender; a new one supersedes an unfinished one.
    pub sync_id: u64,
    /// Position of this chunk, from 0.
    pub index: u32,
    /// Whether this is the final chunk.
    pub last: bool,
    /// Groups and their pids (at most [`MAX_GROUPS_PER_SYNC_CHUNK`] groups and
    /// [`MAX_PIDS_PER_SYNC_CHUNK`] pids in total).
    pub groups: NodeState,
}

/// Why a decoded frame is refused. Counted by the actor; never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame speaks another protocol version.
    #[error("pg wire version {found}, this node speaks {supported}")]
    UnsupportedVersion {
        /// The frame's version.
        found: u16,
        /// [`PG_WIRE_VERSION`].
        supported: u16,
    },
    /// The scope name is empty or too long.
    #[error("scope name of {len} bytes, 1 to {max} allowed")]
    BadScopeName {
        /// Its length.
        len: usize,
        /// [`MAX_SCOPE_NAME_BYTES`].
        max: usize,
    },
    /// A node name (sender or in a pid) is not 1-64 characters of `[A-Za-z0-9_-]`.
    #[error("node name is not 1-{MAX_NODE_NAME_BYTES} characters of [A-Za-z0-9_-]")]
    BadNodeName,
    /// A join/leave batch is empty or larger than [`MAX_PIDS_PER_BATCH`].
    #[error("batch of {len} pids, 1 to {max} allowed")]
    BadBatch {
        /// Pids in the batch.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A sync chunk holds too many groups or pids.
    #[error("sync chunk of {groups} groups and {pids} pids exceeds its bounds")]
    ChunkTooLarge {
        /// Groups in the chunk.
        groups: usize,
        /// Pids in the chunk.
        pids: usize,
    },
    /// A sync chunk arrived out of order; the transfer is dropped (the sender resyncs).
    #[error("sync chunk {found} where {expected} was expected")]
    ChunkOutOfOrder {
        /// The index expected.
        expected: u32,
        /// The index received.
        found: u32,
    },
    /// A reassembled sync would exceed [`MAX_GROUPS_PER_SCOPE`] groups or [`MAX_SYNC_PIDS`] pids.
    #[error("sync state exceeds {max_groups} groups or {max_pids} pids")]
    SyncTooLarge {
        /// [`MAX_GROUPS_PER_SCOPE`].
        max_groups: usize,
        /// [`MAX_SYNC_PIDS`].
        max_pids: usize,
    },
}

impl PgFrame {
    /// A frame of this build's version.
    pub fn new(scope: impl Into<String>, from: NodeId, message: PgMessage) -> Self {
        Self { version: PG_WIRE_VERSION, scope: scope.into(), from, message }
    }

    /// Checks every bound of a decoded frame (group names were checked while decoding).
    pub fn validate(&self) -> Result<(), WireError> {
        if self.version != PG_WIRE_VERSION {
            return Err(WireError::UnsupportedVersion { found: self.version, supported: PG_WIRE_VERSION });
        }
        if self.scope.is_empty() || self.scope.len() > MAX_SCOPE_NAME_BYTES {
            return Err(WireError::BadScopeName { len: self.scope.len(), max: MAX_SCOPE_NAME_BYTES });
        }
        if !is_valid_node_name(&self.from.name) {
            return Err(WireError::BadNodeName);
        }
        match &self.message {
            PgMessage::Discover => Ok(()),
            PgMessage::Join { pids, .. } | PgMessage::Leave { pids, .. } => {
                if pids.is_empty() || pids.len() > MAX_PIDS_PER_BATCH {
                    return Err(WireError::BadBatch { len: pids.len(), max: MAX_PIDS_PER_BATCH });
                }
                check_node_names(pids)
            }
            PgMessage::Sync(chunk) => {
                let pids: usize = chunk.groups.iter().map(|(_, pids)| pids.len()).sum();
                if chunk.groups.len() > MAX_GROUPS_PER_SYNC_CHUNK || pids > MAX_PIDS_PER_SYNC_CHUNK {
                    return Err(WireError::ChunkTooLarge { groups: chunk.groups.len(), pids });
                }
                chunk.groups.iter().try_for_each(|(_, pids)| check_node_names(pids))
            }
        }
    }
}

fn check_node_names(pids: &[Pid]) -> Result<(), WireError> {
    if pids.iter().all(|pid| is_valid_node_name(&pid.node.name)) { Ok(()) } else { Err(WireError::BadNodeName) }
}

impl PgMessage {
    /// The message that tells peers about a local event; `None` for remote events (peers know).
    pub fn from_local_event(event: &Event) -> Option<Self> {
        if event.origin != Origin::Local {
            return None;
        }
        let (group, pids) = (event.group.clone(), event.pids.clone());
        Some(match event.kind {
            EventKind::Join => PgMessage::Join { group, pids },
            EventKind::Leave => PgMessage::Leave { group, pids },
        })
    }
}

/// Splits a full local state (from [`super::ScopeTable::local_state`]) into chunks within the
/// per-chunk bounds. Always returns at least one chunk (an empty state is one empty, last chunk).
pub fn sync_chunks(sync_id: u64, state: NodeState) -> Vec<SyncChunk> {
    let mut chunks = Vec::new();
    let mut current: NodeState = Vec::new();
    let mut pids_in_current = 0;
    for (group, pids) in state {
        let mut rest = pids.as_slice();
        loop {
            if current.len() == MAX_GROUPS_PER_SYNC_CHUNK || pids_in_current == MAX_PIDS_PER_SYNC_CHUNK {
                chunks.push(std::mem::take(&mut current));
                pids_in_current = 0;
            }
            let take = rest.len().min(MAX_PIDS_PER_SYNC_CHUNK - pids_in_current);
            current.push((group.clone(), rest[..take].to_vec()));
            pids_in_current += take;
            rest = &rest[take..];
            if rest.is_empty() {
                break;
            }
        }
    }
    chunks.push(current);
    let count = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, groups)| SyncChunk { sync_id, index: index as u32, last: index + 1 == count, groups })
        .collect()
}

/// Reassembles one peer's sync chunks into its full state, within [`MAX_GROUPS_PER_SCOPE`] groups
/// and [`MAX_SYNC_PIDS`] pids. Keep one per peer in the scope actor.
#[derive(Debug, Default)]
pub struct SyncAssembler {
    in_progress: Option<(u64, u32)>,
    groups: NodeState,
    pids: usize,
}

impl SyncAssembler {
    /// An assembler with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next chunk; returns the full state once the last chunk arrived. A chunk 0 starts a
    /// new transfer (dropping an unfinished one); any other gap drops the transfer with an error.
    pub fn accept(&mut self, chunk: SyncChunk) -> Result<Option<NodeState>, WireError> {
        let expected = match self.in_progress {
            Some((sync_id, next)) if sync_id == chunk.sync_id => next,
            _ => 0,
        };
        if chunk.index == 0 {
            self.reset();
        } else if chunk.index != expected || self.in_progress.is_none() {
            self.reset();
            return Err(WireError::ChunkOutOfOrder { expected, found: chunk.index });
        }
        self.pids += chunk.groups.iter().map(|(_, pids)| pids.len()).sum::<usize>();
        self.groups.extend(chunk.groups);
        if self.groups.len() > MAX_GROUPS_PER_SCOPE || self.pids > MAX_SYNC_PIDS {
            self.reset();
            return Err(WireError::SyncTooLarge { max_groups: MAX_GROUPS_PER_SCOPE, max_pids: MAX_SYNC_PIDS });
        }
        if chunk.last {
            let state = std::mem::take(&mut self.groups);
            self.reset();
            return Ok(Some(state));
        }
        self.in_progress = Some((chunk.sync_id, chunk.index + 1));
        Ok(None)
    }

    fn reset(&mut self) {
        self.in_progress = None;
        self.groups.clear();
        self.pids = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::new("b", 3)
    }

    fn group(name: &str) -> Group {
        Group::new(name).unwrap()
    }

    #[test]
    fn frames_round_trip_through_messagepack() {
        let pid = Pid::new(node(), 9);
        let messages = [
            PgMessage::Discover,
            PgMessage::Join { group: group("g"), pids: vec![pid.clone(), pid.clone()] },
            PgMessage::Leave { group: group("g"), pids: vec![pid.clone()] },
            PgMessage::Sync(SyncChunk { sync_id: 1, index: 0, last: true, groups: vec![(group("g"), vec![pid])] }),
        ];
        for message in messages {
            let frame = PgFrame::new("default", node(), message);
            let bytes = rmp_serde::to_vec(&frame).unwrap();
            let decoded: PgFrame = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(decoded.validate(), Ok(()));
            assert_eq!(decoded, frame);
        }
    }

    #[test]
    fn validate_refuses_other_versions_and_oversized_batches() {
        let mut frame = PgFrame::new("default", node(), PgMessage::Discover);
        frame.version = 2;
        assert_eq!(frame.validate(), Err(WireError::UnsupportedVersion { found: 2, supported: PG_WIRE_VERSION }));
        let pids = vec![Pid::new(node(), 1); MAX_PIDS_PER_BATCH + 1];
        let frame = PgFrame::new("default", node(), PgMessage::Join { group: group("g"), pids });
        assert_eq!(frame.validate(), Err(WireError::BadBatch { len: MAX_PIDS_PER_BATCH + 1, max: MAX_PIDS_PER_BATCH }));
        let frame = PgFrame::new("default", node(), PgMessage::Leave { group: group("g"), pids: vec![] });
        assert!(matches!(frame.validate(), Err(WireError::BadBatch { len: 0, .. })));
        let frame = PgFrame::new("", node(), PgMessage::Discover);
        assert!(matches!(frame.validate(), Err(WireError::BadScopeName { .. })));
        let bad = Pid::new(NodeId::new("bad name", 1), 1);
        let frame = PgFrame::new("default", node(), PgMessage::Join { group: group("g"), pids: vec![bad] });
        assert_eq!(frame.validate(), Err(WireError::BadNodeName));
    }

    #[test]
    fn garbage_bytes_decode_to_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\x00", b"\x93\x01\xa1x", b"\xdd\xff\xff\xff\xff"] {
            assert!(rmp_serde::from_slice::<PgFrame>(bytes).is_err());
        }
    }

    #[test]
    fn sync_chunks_reassemble_to_the_original_state() {
        let pids: Vec<Pid> = (0..(MAX_PIDS_PER_SYNC_CHUNK as u64 + 10)).map(|l| Pid::new(node(), l)).collect();
        let state = vec![(group("big"), pids), (group("small"), vec![Pid::new(node(), 1)])];
        let chunks = sync_chunks(7, state.clone());
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.groups.iter().map(|(_, p)| p.len()).sum::<usize>() <= MAX_PIDS_PER_SYNC_CHUNK));
        let mut assembler = SyncAssembler::new();
        assert_eq!(assembler.accept(chunks[0].clone()), Ok(None));
        let full = assembler.accept(chunks[1].clone()).unwrap().unwrap();
        // The big group spans two chunks; concatenating per group gives the original.
        let mut merged: NodeState = Vec::new();
        for (g, p) in full {
            match merged.iter_mut().find(|(m, _)| *m == g) {
                Some((_, held)) => held.extend(p),
                None => merged.push((g, p)),
            }
        }
        assert_eq!(merged, state);
    }

    #[test]
    fn empty_state_is_one_last_chunk() {
        let chunks = sync_chunks(1, Vec::new());
        assert_eq!(chunks, vec![SyncChunk { sync_id: 1, index: 0, last: true, groups: vec![] }]);
    }

    #[test]
    fn out_of_order_chunk_drops_the_transfer() {
        let chunk = |index, last| SyncChunk { sync_id: 1, index, last, groups: vec![] };
        let mut assembler = SyncAssembler::new();
        assert_eq!(assembler.accept(chunk(1, true)), Err(WireError::ChunkOutOfOrder { expected: 0, found: 1 }));
        assert_eq!(assembler.accept(chunk(0, false)), Ok(None));
        assert_eq!(assembler.accept(chunk(2, true)), Err(WireError::ChunkOutOfOrder { expected: 1, found: 2 }));
        assert_eq!(assembler.accept(chunk(0, true)), Ok(Some(vec![])));
    }
}
