//! The eventual tier (SPEC section 7, issue #5): a name -> owner map replicated as a CRDT.
//!
//! Role: [`crdt`] holds the replicated state ([`EventualState`]: one dot per origin per name,
//! deterministic winner, departures, acknowledgements and tombstone collection, loser reporting);
//! [`digest`] holds the sharded, incrementally maintained digests for anti-entropy; `store`
//! (private) is the compact in-memory form of the dots (interned origins, 24-byte dots, per-shard
//! name maps). [`driver`] holds the protocol around the state, still without I/O:
//! [`EventualDriver`] owns one [`EventualState`], queues local deltas for gossip, answers whether
//! a peer's delta was new ([`ApplyOutcome::changed`]) so gossip re-spreads only those, exchanges
//! digests together with [`EventualState::version_vector`] periodically, pulls differing shards,
//! calls [`EventualState::adopt_peer_clock`] when digests are equal, collects tombstones with the
//! meet of the live nodes' version vectors, calls [`EventualState::depart`] on membership
//! departures and reports losers. [`service`] is the I/O shell the node runs ([`EventualTier`]):
//! clock, lock, gossip, transport, revocation notices, metrics.
//!
//! Invariants: every replica that has received the same dots shows the same winner for every name,
//! whatever the delivery order; peer input is validated and bounded before it touches the state;
//! a tombstone is collected only once every live node acknowledged a contiguous prefix of its
//! origin's counters covering it. Bounds and known limits: see [`crdt`].
//!
//! ```
//! use cohort_actors::Pid;
//! use cohort_cluster::NodeId;
//! use cohort_registry::eventual::EventualState;
//!
//! let (a, b) = (NodeId::new("a", 1), NodeId::new("b", 1));
//! let mut on_a = EventualState::new(a.clone());
//! let mut on_b = EventualState::new(b.clone());
//! let from_a = on_a.register("svc", Pid::new(a, 1), 0).unwrap();
//! let from_b = on_b.register("svc", Pid::new(b, 1), 0).unwrap();
//! on_a.apply(&from_b).unwrap();
//! on_b.apply(&from_a).unwrap();
//! assert_eq!(on_a.winner("svc"), on_b.winner("svc"));
//! assert_eq!(on_a.digest(), on_b.digest());
//! ```

pub mod crdt;
pub mod digest;
pub mod driver;
#[cfg(test)]
mod proptests;
pub mod service;
mod store;
pub mod wire;

pub use crdt::{
    ApplyOutcome, Delta, Dot, EventualError, EventualState, EventualStats, Limits, Live, MAX_ACK_GAPS, MAX_DELTA_BYTES,
    MAX_DEPARTED_ORIGINS, MAX_KNOWN_ORIGINS, MAX_NAME_BYTES, MAX_NAMES, MAX_ORIGINS_PER_NAME, MAX_TOMBSTONES,
    MergeOutcome, Value, VersionVector, WinnerChange, rank, validate_delta, validate_name,
};
pub use digest::{Digest, MAX_SHARD_ENTRIES, SHARD_COUNT, ShardState, differing_shards, shard_of};
pub use driver::{
    Broadcast, DriverStats, Event, EventualConfig, EventualDriver, EventualSummary, MAX_PEERS, MAX_PENDING_BROADCASTS,
    MAX_PENDING_EVENTS, MAX_PENDING_TRANSMITS, MemberChange, Outgoing, Transmit,
};
pub use service::{EventualTier, RevokeSink};
pub use wire::{Frame, ShardFramer};
