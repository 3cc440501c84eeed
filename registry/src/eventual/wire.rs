//! What the eventual tier puts on the wire: gossip deltas (through membership's custom
//! broadcasts) and anti-entropy frames (over the internode `registry` class).
//!
//! Role: versioned MessagePack (rmp-serde) encodings, decoded with bounds checked before any
//! allocation the peer controls, never panicking. A gossip delta drops the pid's node (always the
//! dot's origin, see `crdt`) so one fits easily in a quarter of a gossip packet.
//!
//! Anti-entropy, per pair of nodes (decided by `driver`, sent by `service`):
//! ```text
//!  A ── Digest { digest, acked } ──► B        (every round, to every live peer)
//!  B: shards that differ = D; none: B adopts A's acknowledgement (equal content)
//!  B ── Shards { pull: None, B's shards D } ──► A      (A merges)
//!  B ── Pull { id, D } ──► A
//!  A ── Shards { pull: Some(id), A's shards D, last } ──► B   (B merges)
//! ```

use cohort_actors::Pid;
use cohort_cluster::NodeId;
use serde::{Deserialize, Serialize};

use super::crdt::{Delta, Dot, Live, Value};
use super::digest::{SHARD_COUNT, ShardState};

/// Wire version of every eventual-tier message.
pub const WIRE_VERSION: u8 = 1;

/// Transport kind of a [`DigestMsg`] on `Class::Registry`.
pub const KIND_DIGEST: u8 = 1;
/// Transport kind of a [`ShardsMsg`].
pub const KIND_SHARDS: u8 = 2;
/// Transport kind of a [`PullMsg`].
pub const KIND_PULL: u8 = 3;

/// Most shard bytes packed into one [`ShardsMsg`] frame (1 MiB): large enough to move a busy
/// shard in one frame, small enough that a frame never holds the registry queue for long.
pub const MAX_SHARDS_FRAME_BYTES: usize = 1024 * 1024;

/// Largest anti-entropy frame accepted: a frame carries at least one whole shard, and a shard holds
/// at most `MAX_SHARD_ENTRIES` dots of at most `MAX_DELTA_BYTES`; the transport's own 16 MiB frame
/// bound is the hard limit.
pub const MAX_AE_FRAME_BYTES: usize = cohort_cluster::frame::MAX_FRAME_BYTES;

/// One dot for one name, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipDelta {
    /// [`WIRE_VERSION`].
    pub v: u8,
    /// The name.
    pub name: String,
    /// The origin (the writing node; a live pid is always its process).
    pub origin: NodeId,
    /// The origin's counter.
    pub counter: u64,
    /// `Some((pid local number, priority))` for a registration, `None` for a tombstone.
    pub live: Option<(u64, u8)>,
}

impl GossipDelta {
    /// The compact form of `delta`.
    pub fn from_delta(delta: &Delta) -> Self {
        let live = match &delta.dot.value {
            Value::Live(live) => Some((live.pid.local, live.priority)),
            Value::Tombstone => None,
        };
        Self {
            v: WIRE_VERSION,
            name: delta.name.clone(),
            origin: delta.dot.origin.clone(),
            counter: delta.dot.counter,
            live,
        }
    }

    /// Back to a [`Delta`] (validated by the state when applied).
    pub fn into_delta(self) -> Delta {
        let value = match self.live {
            Some((local, priority)) => Value::Live(Live { pid: Pid::new(self.origin.clone(), local), priority }),
            None => Value::Tombstone,
        };
        Delta { name: self.name, dot: Dot { origin: self.origin, counter: self.counter, value } }
    }
}

/// "Here is my digest": the first step of an anti-entropy exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestMsg {
    /// [`WIRE_VERSION`].
    pub v: u8,
    /// The sender's per-shard digests ([`SHARD_COUNT`] of them).
    pub digest: Vec<u64>,
    /// What the sender acknowledges of every origin (its version vector: the contiguous prefix of
    /// each origin's writes it holds), for tombstone collection.
    pub acked: Vec<(NodeId, u64)>,
}

/// Shard contents, pushed after a digest or in answer to a [`PullMsg`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsMsg {
    /// [`WIRE_VERSION`].
    pub v: u8,
    /// The pull this answers (`None`: a push beside our own pull).
    pub pull: Option<u64>,
    /// Whether this is the last frame of the answer.
    pub last: bool,
    /// The sender's own write counter, read before it copied these shards: a live entry of the
    /// sender at or below it that its copy lacks was superseded (see
    /// `EventualState::prune_superseded_by_origin`).
    pub origin_counter: u64,
    /// The shards.
    pub shards: Vec<ShardState>,
}

/// "Send me these shards".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullMsg {
    /// [`WIRE_VERSION`].
    pub v: u8,
    /// Names the answer.
    pub id: u64,
    /// Shard indices, each below [`SHARD_COUNT`], at most [`SHARD_COUNT`] of them.
    pub shards: Vec<u16>,
}

/// Why a frame was refused (counted by reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes are not this message.
    #[error("malformed")]
    Malformed,
    /// Another wire version.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// A count or index out of its bound.
    #[error("out of bounds")]
    OutOfBounds,
    /// The frame is larger than accepted.
    #[error("frame too large")]
    TooLarge,
    /// A transport kind that is none of [`KIND_DIGEST`], [`KIND_SHARDS`], [`KIND_PULL`].
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

impl WireError {
    /// A bounded metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireError::Malformed => "malformed",
            WireError::Version(_) => "version",
            WireError::OutOfBounds => "out_of_bounds",
            WireError::TooLarge => "too_large",
            WireError::UnknownKind(_) => "unknown_kind",
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge);
    }
    // rmp-serde allocates by the lengths it reads, but never beyond the input (every element
    // takes at least one byte), so the size check above bounds what a peer can make us allocate.
    rmp_serde::from_slice(bytes).map_err(|_| WireError::Malformed)
}

/// Decodes a gossip delta (at most `max` bytes).
pub fn decode_gossip(bytes: &[u8], max: usize) -> Result<GossipDelta, WireError> {
    let delta: GossipDelta = decode(bytes, max)?;
    if delta.v != WIRE_VERSION {
        return Err(WireError::Version(delta.v));
    }
    Ok(delta)
}

/// Decodes a digest frame.
pub fn decode_digest(bytes: &[u8]) -> Result<DigestMsg, WireError> {
    let msg: DigestMsg = decode(bytes, 64 * 1024)?;
    if msg.v != WIRE_VERSION {
        return Err(WireError::Version(msg.v));
    }
    if msg.digest.len() != SHARD_COUNT || msg.acked.len() > super::crdt::MAX_KNOWN_ORIGINS {
        return Err(WireError::OutOfBounds);
    }
    Ok(msg)
}

/// Decodes a shards frame (each shard is validated in full when merged).
pub fn decode_shards(bytes: &[u8]) -> Result<ShardsMsg, WireError> {
    let msg: ShardsMsg = decode(bytes, MAX_AE_FRAME_BYTES)?;
    if msg.v != WIRE_VERSION {
        return Err(WireError::Version(msg.v));
    }
    if msg.shards.len() > SHARD_COUNT {
        return Err(WireError::OutOfBounds);
    }
    Ok(msg)
}

/// Decodes a pull frame.
pub fn decode_pull(bytes: &[u8]) -> Result<PullMsg, WireError> {
    let msg: PullMsg = decode(bytes, 4 * 1024)?;
    if msg.v != WIRE_VERSION {
        return Err(WireError::Version(msg.v));
    }
    if msg.shards.len() > SHARD_COUNT || msg.shards.iter().any(|&s| usize::from(s) >= SHARD_COUNT) {
        return Err(WireError::OutOfBounds);
    }
    Ok(msg)
}

/// One decoded anti-entropy frame of the `registry` class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// [`KIND_DIGEST`].
    Digest(DigestMsg),
    /// [`KIND_PULL`].
    Pull(PullMsg),
    /// [`KIND_SHARDS`].
    Shards(ShardsMsg),
}

impl Frame {
    /// Decodes a frame of transport kind `kind`, with the bounds of the `decode_*` functions.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Frame, WireError> {
        match kind {
            KIND_DIGEST => decode_digest(payload).map(Frame::Digest),
            KIND_PULL => decode_pull(payload).map(Frame::Pull),
            KIND_SHARDS => decode_shards(payload).map(Frame::Shards),
            other => Err(WireError::UnknownKind(other)),
        }
    }

    /// The transport kind and the encoded payload.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Digest(msg) => (KIND_DIGEST, encode(msg)),
            Frame::Pull(msg) => (KIND_PULL, encode(msg)),
            Frame::Shards(msg) => (KIND_SHARDS, encode(msg)),
        }
    }
}

/// Packs shard states into [`ShardsMsg`] frames of about [`MAX_SHARDS_FRAME_BYTES`] each, the last
/// frame marked `last`. Pure: the caller copies each shard when it likes (the node's shell takes
/// one short lock hold per shard) and sends the frames it gets back.
#[derive(Debug)]
pub struct ShardFramer {
    pull: Option<u64>,
    origin_counter: u64,
    remaining: usize,
    pushed: usize,
    batch: Vec<ShardState>,
    batch_bytes: usize,
}

impl ShardFramer {
    /// A framer for an answer of `total` shards to pull `pull` (`None`: a push), carrying the
    /// sender's own write counter `origin_counter` (read before the first shard was copied).
    pub fn new(pull: Option<u64>, origin_counter: u64, total: usize) -> Self {
        Self { pull, origin_counter, remaining: total, pushed: 0, batch: Vec::new(), batch_bytes: 0 }
    }

    /// Adds one shard; returns a frame to send once the batch reaches [`MAX_SHARDS_FRAME_BYTES`]
    /// or this was the last of the `total` shards announced.
    pub fn push(&mut self, shard: ShardState) -> Option<ShardsMsg> {
        // A cheap size estimate: names and node names dominate; 48 bytes covers the rest.
        self.batch_bytes += shard.entries.iter().map(|d| d.name.len() + d.dot.origin.name.len() + 48).sum::<usize>();
        self.batch.push(shard);
        self.pushed += 1;
        self.remaining = self.remaining.saturating_sub(1);
        let last = self.remaining == 0;
        (self.batch_bytes >= MAX_SHARDS_FRAME_BYTES || last).then(|| self.take(last))
    }

    /// What is left to send: the rest of the batch if a shard announced was never pushed, or an
    /// empty last frame answering a pull of no shards (the puller learns the answer is complete).
    pub fn finish(mut self) -> Option<ShardsMsg> {
        if !self.batch.is_empty() {
            return Some(self.take(true));
        }
        (self.pushed == 0 && self.pull.is_some()).then(|| self.take(true))
    }

    fn take(&mut self, last: bool) -> ShardsMsg {
        self.batch_bytes = 0;
        ShardsMsg {
            v: WIRE_VERSION,
            pull: self.pull,
            last,
            origin_counter: self.origin_counter,
            shards: std::mem::take(&mut self.batch),
        }
    }
}

/// Encodes any of the messages above.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding plain structs of strings and integers into a Vec cannot fail.
    rmp_serde::to_vec(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gossip_delta_round_trips_and_stays_small() {
        let origin = NodeId::new("node-1", 7);
        let delta = Delta {
            name: "session:1234".into(),
            dot: Dot {
                origin: origin.clone(),
                counter: 9,
                value: Value::Live(Live { pid: Pid::new(origin, 3), priority: 0 }),
            },
        };
        let bytes = encode(&GossipDelta::from_delta(&delta));
        assert!(bytes.len() < 48, "{} bytes", bytes.len());
        assert_eq!(decode_gossip(&bytes, 1024).unwrap().into_delta(), delta);
    }

    #[test]
    fn the_framer_marks_the_last_frame_and_answers_an_empty_pull() {
        let shard = |i: usize| ShardState { shard: i, entries: vec![] };
        let mut framer = ShardFramer::new(Some(7), 3, 2);
        assert_eq!(framer.push(shard(0)), None);
        let frame = framer.push(shard(1)).expect("the last shard closes the frame");
        assert!(frame.last);
        assert_eq!((frame.pull, frame.origin_counter, frame.shards.len()), (Some(7), 3, 2));
        assert_eq!(framer.finish(), None);
        let empty = ShardFramer::new(Some(8), 0, 0).finish().expect("an empty pull is answered");
        assert!(empty.last && empty.shards.is_empty());
        assert_eq!(ShardFramer::new(None, 0, 0).finish(), None);
    }

    #[test]
    fn a_frame_round_trips_by_kind_and_unknown_kinds_are_refused() {
        let frame = Frame::Pull(PullMsg { v: WIRE_VERSION, id: 4, shards: vec![1, 2] });
        let (kind, bytes) = frame.encode();
        assert_eq!(Frame::decode(kind, &bytes), Ok(frame));
        assert_eq!(Frame::decode(99, &bytes), Err(WireError::UnknownKind(99)));
    }

    #[test]
    fn garbage_and_out_of_bounds_frames_are_refused() {
        assert_eq!(decode_gossip(&[0xc1, 2, 3], 1024), Err(WireError::Malformed));
        assert_eq!(decode_gossip(&[0u8; 2048], 1024), Err(WireError::TooLarge));
        let pull = PullMsg { v: WIRE_VERSION, id: 1, shards: vec![SHARD_COUNT as u16] };
        assert_eq!(decode_pull(&encode(&pull)), Err(WireError::OutOfBounds));
        let digest = DigestMsg { v: WIRE_VERSION, digest: vec![0; 3], acked: vec![] };
        assert_eq!(decode_digest(&encode(&digest)), Err(WireError::OutOfBounds));
        let wrong = PullMsg { v: 9, id: 1, shards: vec![] };
        assert_eq!(decode_pull(&encode(&wrong)), Err(WireError::Version(9)));
    }
}
