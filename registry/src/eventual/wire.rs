//! What the eventual tier puts on the wire: gossip deltas (through membership's custom
//! broadcasts) and anti-entropy frames (over the internode `registry` class).
//!
//! Role: versioned MessagePack (rmp-serde) encodings, decoded with bounds checked before any
//! allocation the peer controls, never panicking. A gossip delta drops the pid's node (always the
//! dot's origin, see `crdt`) so one fits easily in a quarter of a gossip packet.
//!
//! Anti-entropy, per pair of nodes (see `service`):
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
}

impl WireError {
    /// A bounded metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireError::Malformed => "malformed",
            WireError::Version(_) => "version",
            WireError::OutOfBounds => "out_of_bounds",
            WireError::TooLarge => "too_large",
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
