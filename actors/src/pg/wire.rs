//! Peer messages between the scope actors of one scope on different nodes (internode class `pg`).
//!
//! The exchange follows OTP's `pg`: a scope that starts, or sees a node come up, sends `Discover`;
//! the receiver answers with `Sync`, its full local state, and from then on sends that peer every
//! local change in order, batched as one [`PgMessage::Batch`] per drain of its scope actor (the
//! single `Join`/`Leave` messages are still accepted). [`PgMessage::Broadcast`] carries one group
//! message to a node, which delivers it to its own local members. The receiver applies a sync as the difference against
//! what it held for the sender ([`super::ScopeTable::sync_peer`]). [`PgMessage::Digest`] is the
//! periodic anti-entropy: the sender's [`MembershipDigest`], which the receiver compares with its
//! view of the sender, answering a mismatch with a `Discover` (see [`super::digest`]).
//!
//! Compatibility: a message added to [`PgMessage`] (as `Digest` was) keeps [`PG_WIRE_VERSION`], so
//! a mixed cluster keeps exchanging everything else; an older build fails to decode the new
//! message and drops it, counted as `cohort_pg_frames_rejected_total{reason="decode"}`, never a
//! panic (and a peer that sends no digests is still repaired by the full-state backstop).
//!
//! Every frame carries [`PG_WIRE_VERSION`]. Payloads are MessagePack (rmp-serde) inside a transport
//! frame whose size is checked before allocation (at most 16 MiB), so decoding allocates at most a
//! bounded multiple of that; [`PgFrame::validate`] then checks every bound below before anything
//! reaches the scope table. A full state larger than one frame is sent as numbered [`SyncChunk`]s
//! ([`sync_chunks`]) and reassembled with [`SyncAssembler`].
//!
//! Size of a pid on the wire: at most ~85 bytes (64-byte node name, two u64, array headers).

use bytes::Bytes;
use cohort_cluster::NodeId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::digest::MembershipDigest;
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

/// The transport `kind` byte of every pg frame on `Class::Pg`: the body is one MessagePack
/// [`PgFrame`]. Any other kind is refused and counted (`reason="unknown_kind"`).
pub const PG_FRAME_KIND: u8 = 1;

/// Most operations in one [`PgMessage::Batch`]: the scope actor drains at most this many events
/// per step, so one drain is one frame per peer in the common case.
pub const MAX_OPS_PER_BATCH_FRAME: usize = 4_096;

/// Most pids, summed over its operations, in one [`PgMessage::Batch`]: the same ~1.4 MB budget as a
/// sync chunk ([`MAX_PIDS_PER_SYNC_CHUNK`]); a drain holding more is split into several frames.
pub const MAX_PIDS_PER_BATCH_FRAME: usize = MAX_PIDS_PER_SYNC_CHUNK;

/// Largest broadcast payload, in bytes: half the transport's 16 MiB frame limit, leaving room for
/// the envelope (scope, group, sender) with a wide margin.
pub const MAX_BROADCAST_BYTES: usize = 8 * 1024 * 1024;

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
    /// Several local joins and leaves of the sender, in the order they happened (one drain of its
    /// scope actor): at most [`MAX_OPS_PER_BATCH_FRAME`] operations and
    /// [`MAX_PIDS_PER_BATCH_FRAME`] pids.
    Batch(Vec<PgOp>),
    /// Deliver `payload` to every local member of `group` (once per distinct pid). Sent once per
    /// node that has members; the receiver fans out locally.
    Broadcast {
        /// The group.
        group: Group,
        /// The message, already encoded for the members' message type (at most
        /// [`MAX_BROADCAST_BYTES`]).
        payload: WireBytes,
    },
    /// The digest of the sender's own memberships in this scope, sent to every peer every
    /// digest period. Fixed size; the receiver pulls a full sync if its view differs.
    Digest(MembershipDigest),
}

impl PgMessage {
    /// A bounded label for metrics: `discover`, `sync`, `join`, `leave`, `batch`, `broadcast`,
    /// `digest`.
    pub const fn name(&self) -> &'static str {
        match self {
            PgMessage::Discover => "discover",
            PgMessage::Sync(_) => "sync",
            PgMessage::Join { .. } => "join",
            PgMessage::Leave { .. } => "leave",
            PgMessage::Batch(_) => "batch",
            PgMessage::Broadcast { .. } => "broadcast",
            PgMessage::Digest(_) => "digest",
        }
    }

    /// Every value of [`PgMessage::name`], for exporting counters at 0.
    pub const NAMES: [&'static str; 7] = ["discover", "sync", "join", "leave", "batch", "broadcast", "digest"];
}

/// One join or leave inside a [`PgMessage::Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgOp {
    /// Join or leave.
    pub kind: EventKind,
    /// The group.
    pub group: Group,
    /// The sender's pids (repeated per occurrence; 1 to [`MAX_PIDS_PER_BATCH`]).
    pub pids: Vec<Pid>,
}

impl PgOp {
    /// The operation that tells peers about a local event; `None` for remote events (peers know).
    pub fn from_local_event(event: &Event) -> Option<Self> {
        (event.origin == Origin::Local).then(|| PgOp {
            kind: event.kind,
            group: event.group.clone(),
            pids: event.pids.clone(),
        })
    }
}

/// Opaque bytes encoded as one MessagePack `bin` (not an array of integers), cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireBytes(pub Bytes);

impl Serialize for WireBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WireBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<WireBytes, E> {
                Ok(WireBytes(Bytes::copy_from_slice(bytes)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<WireBytes, E> {
                Ok(WireBytes(Bytes::from(bytes)))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Encodes a frame for the transport; `None` (logged) if serialisation fails, which cannot happen
/// for these types, so a caller treats it as a send that failed and never panics on it.
pub(crate) fn encode_frame(frame: &PgFrame) -> Option<Bytes> {
    match rmp_serde::to_vec(frame) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::error!(%error, "pg frame encoding failed");
            None
        }
    }
}

/// Splits local operations into [`PgMessage::Batch`] bodies within [`MAX_OPS_PER_BATCH_FRAME`]
/// and [`MAX_PIDS_PER_BATCH_FRAME`], keeping their order. Each op already holds at most
/// [`MAX_PIDS_PER_BATCH`] pids (the scope table's batch bound).
pub fn batch_frames(ops: Vec<PgOp>) -> Vec<Vec<PgOp>> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut pids = 0;
    for op in ops {
        if !current.is_empty()
            && (current.len() == MAX_OPS_PER_BATCH_FRAME || pids + op.pids.len() > MAX_PIDS_PER_BATCH_FRAME)
        {
            frames.push(std::mem::take(&mut current));
            pids = 0;
        }
        pids += op.pids.len();
        current.push(op);
    }
    if !current.is_empty() {
        frames.push(current);
    }
    frames
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
    /// A batch frame is empty or holds too many operations or pids.
    #[error("batch frame of {ops} operations and {pids} pids exceeds its bounds")]
    BatchFrameTooLarge {
        /// Operations in the frame.
        ops: usize,
        /// Pids in the frame.
        pids: usize,
    },
    /// A broadcast payload is larger than [`MAX_BROADCAST_BYTES`].
    #[error("broadcast payload of {len} bytes, at most {max} allowed")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
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
            PgMessage::Discover | PgMessage::Digest(_) => Ok(()),
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
            PgMessage::Batch(ops) => {
                let pids: usize = ops.iter().map(|op| op.pids.len()).sum();
                if ops.is_empty() || ops.len() > MAX_OPS_PER_BATCH_FRAME || pids > MAX_PIDS_PER_BATCH_FRAME {
                    return Err(WireError::BatchFrameTooLarge { ops: ops.len(), pids });
                }
                for op in ops {
                    if op.pids.is_empty() || op.pids.len() > MAX_PIDS_PER_BATCH {
                        return Err(WireError::BadBatch { len: op.pids.len(), max: MAX_PIDS_PER_BATCH });
                    }
                    check_node_names(&op.pids)?;
                }
                Ok(())
            }
            PgMessage::Broadcast { payload, .. } => {
                if payload.0.len() > MAX_BROADCAST_BYTES {
                    return Err(WireError::PayloadTooLarge { len: payload.0.len(), max: MAX_BROADCAST_BYTES });
                }
                Ok(())
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
            PgMessage::Digest(MembershipDigest { hash: u64::MAX, memberships: 3 }),
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

    /// What an older build does with a message it does not know (how `Digest` reaches a build
    /// from before it): a decode error, which the router counts, not a panic; and it is refused
    /// here the same way, via a made-up variant.
    #[test]
    fn an_unknown_message_is_a_decode_error_not_a_panic() {
        #[derive(Serialize)]
        enum FutureMessage {
            Gossip(u64),
        }
        #[derive(Serialize)]
        struct FutureFrame {
            version: u16,
            scope: String,
            from: NodeId,
            message: FutureMessage,
        }
        let future = FutureFrame {
            version: PG_WIRE_VERSION,
            scope: "default".into(),
            from: node(),
            message: FutureMessage::Gossip(1),
        };
        let bytes = rmp_serde::to_vec(&future).unwrap();
        assert!(rmp_serde::from_slice::<PgFrame>(&bytes).is_err());
        // A digest frame is small: a few dozen bytes beside the scope name and the sender.
        let digest = PgFrame::new(
            "default",
            node(),
            PgMessage::Digest(MembershipDigest { hash: u64::MAX, memberships: 1 << 40 }),
        );
        assert!(rmp_serde::to_vec(&digest).unwrap().len() < 64);
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
    fn batch_and_broadcast_round_trip_and_payload_is_one_bin() {
        let pid = Pid::new(node(), 9);
        let op = |kind| PgOp { kind, group: group("g"), pids: vec![pid.clone()] };
        let batch = PgFrame::new("default", node(), PgMessage::Batch(vec![op(EventKind::Join), op(EventKind::Leave)]));
        let payload = WireBytes(Bytes::from(vec![0xff; 1000]));
        let broadcast =
            PgFrame::new("default", node(), PgMessage::Broadcast { group: group("g"), payload: payload.clone() });
        for frame in [batch, broadcast.clone()] {
            let decoded: PgFrame = rmp_serde::from_slice(&rmp_serde::to_vec(&frame).unwrap()).unwrap();
            assert_eq!(decoded.validate(), Ok(()));
            assert_eq!(decoded, frame);
        }
        // A bin: 1000 bytes of 0xff cost ~1000 bytes, not ~2000 as an array of integers would.
        assert!(rmp_serde::to_vec(&broadcast).unwrap().len() < 1100);
        let empty = PgFrame::new("default", node(), PgMessage::Batch(vec![]));
        assert!(matches!(empty.validate(), Err(WireError::BatchFrameTooLarge { ops: 0, .. })));
        let hollow = PgFrame::new(
            "default",
            node(),
            PgMessage::Batch(vec![PgOp { kind: EventKind::Join, group: group("g"), pids: vec![] }]),
        );
        assert!(matches!(hollow.validate(), Err(WireError::BadBatch { len: 0, .. })));
    }

    #[test]
    fn batch_frames_split_on_the_pid_budget_and_keep_order() {
        let pids: Vec<Pid> = (0..MAX_PIDS_PER_BATCH as u64).map(|l| Pid::new(node(), l)).collect();
        let ops: Vec<PgOp> =
            (0..5).map(|_| PgOp { kind: EventKind::Join, group: group("g"), pids: pids.clone() }).collect();
        let frames = batch_frames(ops.clone());
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f.iter().map(|op| op.pids.len()).sum::<usize>() <= MAX_PIDS_PER_BATCH_FRAME));
        assert_eq!(frames.concat(), ops);
        assert!(batch_frames(Vec::new()).is_empty());
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
