//! Chunked transfer of raft snapshots (SPEC 7): a `MsgSnapshot` of any size up to the tier's name
//! limit travels as bounded chunks with acknowledgements, and every transfer ends in a report to
//! raft, so a lost snapshot is retried by the leader instead of stalling the follower.
//!
//! Role: [`SnapshotTransfers`] is a sans-I/O core owned by the raft actor. The sending side takes
//! a raft `MsgSnapshot` ([`SnapshotTransfers::send_snapshot`]), splits it into a small *head*
//! (the message with its snapshot data emptied, protobuf) and the *data* (the registry's snapshot
//! bytes, shared with the log store: never copied whole), and emits chunk frames of the virtual
//! stream `head ++ data` while the bytes sent and not acknowledged fit in a window. The receiving
//! side keeps one assembly per sender, acknowledges every chunk taken in order, and yields the
//! rebuilt `Message` when the stream is complete. Time is passed in (`now`); outputs are polled:
//! [`SnapshotTransfers::poll_transmit`] (chunks and acks to send), [`SnapshotTransfers::poll_report`]
//! (what to tell raft: `report_snapshot` Finish, or Failure + `report_unreachable`) and
//! [`SnapshotTransfers::poll_snapshot`] (rebuilt messages to step).
//!
//! ```text
//!  leader                                           follower
//!  MsgSnapshot ─► head ++ data ─ chunk(id, off, total, head_len, bytes) ─►  assembly (≤ 1 per sender)
//!                 window ≤ 4 MiB unacked  ◄─────── ack(id, received) ───────  in order only
//!  all acked ─► report Finish                                             complete ─► Message ─► step
//!  no ack progress for 10 s, abort ack, refused ─► report Failure (+ unreachable): raft retries
//! ```
//!
//! Wire (big-endian, version 1; docs/protocol.md): a chunk is a 29-byte header `v:u8
//! transfer:u64 offset:u64 total:u64 head_len:u32` followed by the chunk's bytes; an ack is 18
//! bytes `v:u8 transfer:u64 received:u64 status:u8` (0 progress, 1 abort: the receiver dropped
//! the assembly, the sender fails at once instead of waiting for the timeout).
//!
//! Invariants:
//! - Memory is bounded on both sides: a sender holds no copy of the snapshot (it shares the
//!   store's buffer) and at most [`SNAPSHOT_WINDOW_BYTES`] of chunk frames per transfer, for at
//!   most [`MAX_OUTGOING_TRANSFERS`] transfers; a receiver holds at most
//!   [`MAX_INCOMING_TRANSFERS`] assemblies of at most [`MAX_TRANSFER_BYTES`] each, allocated only
//!   after the announced total was checked against that bound.
//! - A receiver takes chunks strictly in order: an out-of-order, overlapping or inconsistent chunk
//!   drops the assembly (counted) and aborts the sender; there is no retransmission inside a
//!   transfer, raft's own retry after the failure report is the retransmission.
//! - Every outgoing transfer ends in exactly one report (finished, failed, or refused at start),
//!   except one replaced by a newer snapshot to the same peer: raft already moved on to that one.
//! - No input panics: every length is checked with checked arithmetic before it is used.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use cohort_cluster::NodeId;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::fsm::MAX_SNAPSHOT_BYTES;
use super::service::MAX_RAFT_FRAME_BYTES;

/// Bytes of snapshot stream per chunk frame. A chunk queues ahead of raft heartbeats on the same
/// link: 1 MiB is 8 ms at 1 Gbit/s (raft's own appends are up to 1 MiB too, `MAX_MSG_BYTES`),
/// and it keeps a 200k-name snapshot (~25 MiB) to a few dozen frames.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Smallest chunk size a node may be configured with (`[raft] snapshot_chunk_bytes`): below this
/// the 29-byte header and one ack per chunk cost more than the data.
pub const MIN_SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024;

/// Largest chunk a node may be configured with: one window (a larger chunk could not be sent
/// without exceeding it).
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = SNAPSHOT_WINDOW_BYTES;

/// Bytes sent and not yet acknowledged, per transfer. 4 MiB keeps a 50 ms round trip at 80 MiB/s
/// while bounding what waits ahead of heartbeats on the link (32 ms at 1 Gbit/s).
pub const SNAPSHOT_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// How long a transfer may go without progress (an ack on the sending side, a chunk on the
/// receiving side) before it is dropped. An idle window of 4 MiB needs only milliseconds; 10 s
/// rides out a busy leader loop and a congested link, and a lost transfer is retried by raft
/// after its next heartbeat (200 ms) once reported.
pub const SNAPSHOT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent outgoing transfers (one per follower or learner that needs a snapshot). Four covers
/// a leader catching up every other voter of a 5-voter group at once; beyond, a transfer is
/// refused, counted, and reported failed so raft retries it after a heartbeat.
pub const MAX_OUTGOING_TRANSFERS: usize = 4;

/// Concurrent assemblies on a receiver, one per sender: the current leader's and a deposed
/// leader's that has not yet timed out. A third sender evicts the least recently active one.
pub const MAX_INCOMING_TRANSFERS: usize = 2;

/// Largest snapshot head (the raft `Message` with its snapshot data emptied): the configuration
/// lists at most `fsm::MAX_MEMBERS` (1,024) raft ids in each of its four sets, about 11 bytes
/// each, plus a few scalar fields: 48 KiB at worst.
pub const MAX_SNAPSHOT_HEAD_BYTES: usize = 64 * 1024;

/// Largest transfer (head + data) a receiver assembles.
pub const MAX_TRANSFER_BYTES: usize = MAX_SNAPSHOT_HEAD_BYTES + MAX_SNAPSHOT_BYTES;

/// Acks and rebuilt snapshots queued for the owner, who drains them after every input; the bound
/// only matters for an owner that stops polling.
pub const MAX_QUEUED_OUTPUTS: usize = 64;

/// Bytes of a chunk frame's header.
pub const CHUNK_HEADER_BYTES: usize = 1 + 8 + 8 + 8 + 4;

/// Bytes of an ack frame.
pub const ACK_BYTES: usize = 1 + 8 + 8 + 1;

const WIRE_VERSION: u8 = 1;
const ACK_PROGRESS: u8 = 0;
const ACK_ABORT: u8 = 1;

// A chunk frame (plus the transport's 2-byte kind/class header) fits in one raft frame, a window
// holds at least one chunk, and a whole snapshot stream fits the offsets of the wire.
const _: () = assert!(CHUNK_HEADER_BYTES + MAX_SNAPSHOT_CHUNK_BYTES + 2 <= MAX_RAFT_FRAME_BYTES);
const _: () = assert!(MIN_SNAPSHOT_CHUNK_BYTES <= SNAPSHOT_CHUNK_BYTES);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= MAX_SNAPSHOT_CHUNK_BYTES);
const _: () = assert!(MAX_SNAPSHOT_CHUNK_BYTES <= SNAPSHOT_WINDOW_BYTES);
const _: () = assert!(MAX_TRANSFER_BYTES as u64 <= u32::MAX as u64);

/// The limits of one [`SnapshotTransfers`]; [`TransferLimits::default`] is the named constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// See [`SNAPSHOT_CHUNK_BYTES`] (at most [`MAX_SNAPSHOT_CHUNK_BYTES`]).
    pub chunk_bytes: usize,
    /// See [`SNAPSHOT_WINDOW_BYTES`] (raised to `chunk_bytes` if smaller).
    pub window_bytes: usize,
    /// See [`SNAPSHOT_PROGRESS_TIMEOUT`].
    pub progress_timeout: Duration,
    /// See [`MAX_OUTGOING_TRANSFERS`].
    pub max_outgoing: usize,
    /// See [`MAX_INCOMING_TRANSFERS`].
    pub max_incoming: usize,
    /// See [`MAX_TRANSFER_BYTES`].
    pub max_transfer_bytes: usize,
}

impl Default for TransferLimits {
    fn default() -> Self {
        Self {
            chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            window_bytes: SNAPSHOT_WINDOW_BYTES,
            progress_timeout: SNAPSHOT_PROGRESS_TIMEOUT,
            max_outgoing: MAX_OUTGOING_TRANSFERS,
            max_incoming: MAX_INCOMING_TRANSFERS,
            max_transfer_bytes: MAX_TRANSFER_BYTES,
        }
    }
}

/// Identifies one outgoing transfer of this sender (increasing; a receiver keeps the newest).
pub type TransferId = u64;

/// Why a snapshot was not taken for sending. It is also reported failed ([`SnapshotReport`]), so
/// raft retries it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendRefusal {
    /// [`TransferLimits::max_outgoing`] transfers to other peers are in flight.
    #[error("{max} snapshot transfers already in flight")]
    TooManyTransfers {
        /// The bound.
        max: usize,
    },
    /// The message (head or whole) is over its bound.
    #[error("snapshot message of {len} bytes, at most {max} allowed")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The message is not a `MsgSnapshot`.
    #[error("not a snapshot message")]
    NotASnapshot,
    /// The head did not encode.
    #[error("snapshot head did not encode: {0}")]
    Encode(String),
}

/// Why an incoming chunk frame was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRefusal {
    /// Too short, unknown version, or fields that contradict each other.
    #[error("malformed snapshot chunk")]
    Malformed,
    /// The announced total is over [`TransferLimits::max_transfer_bytes`] (nothing allocated).
    #[error("snapshot transfer of {total} bytes, at most {max} allowed")]
    TooLarge {
        /// The announced total.
        total: u64,
        /// The bound.
        max: usize,
    },
    /// The chunk does not start where the assembly ends (lost or reordered frame).
    #[error("chunk at offset {offset}, expected {expected}")]
    OutOfOrder {
        /// Where the assembly ends.
        expected: u64,
        /// Where the chunk starts.
        offset: u64,
    },
    /// The chunk's total or head length differs from its transfer's first chunk.
    #[error("chunk inconsistent with its transfer")]
    Inconsistent,
    /// The chunk belongs to a transfer this sender already replaced.
    #[error("chunk of a replaced transfer")]
    Stale,
    /// The complete stream did not rebuild a snapshot message.
    #[error("the assembled snapshot message is invalid")]
    InvalidMessage,
}

impl ChunkRefusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::OutOfOrder { .. } => "out_of_order",
            Self::Inconsistent => "inconsistent",
            Self::Stale => "stale",
            Self::InvalidMessage => "invalid_message",
        }
    }
}

/// Why an incoming ack frame was not taken (stale acks are normal after a replaced transfer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckRefusal {
    /// Wrong length or version.
    #[error("malformed snapshot ack")]
    Malformed,
    /// No outgoing transfer has this id (finished, failed or replaced).
    #[error("ack of an unknown transfer")]
    UnknownTransfer,
    /// The ack came from a node other than the transfer's target.
    #[error("ack from a node that is not the transfer's target")]
    WrongPeer,
    /// It acknowledges bytes never sent, or fewer than already acknowledged.
    #[error("ack outside the bytes sent")]
    Inconsistent,
}

/// Why an outgoing transfer failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferFailure {
    /// No ack progress within [`TransferLimits::progress_timeout`].
    TimedOut,
    /// The receiver dropped its assembly and said so.
    Aborted,
    /// The transport did not take a chunk (peer unknown or shutting down).
    Unsent,
    /// Refused at start.
    Refused(SendRefusal),
}

/// How a snapshot sent to a peer ended: what the owner tells raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Every byte was acknowledged: `report_snapshot(to, Finish)`.
    Finished,
    /// `report_snapshot(to, Failure)` and `report_unreachable(to)`: raft retries after a heartbeat.
    Failed(TransferFailure),
}

/// A report for raft about the snapshot sent to raft id `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    /// The receiver's raft id.
    pub to: u64,
    /// How it ended.
    pub outcome: SnapshotOutcome,
}

/// A frame for the owner to send on the `raft` class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// A chunk of the transfer to raft id `to`, for node `peer`.
    Chunk {
        /// The receiver's raft id (pass it to [`SnapshotTransfers::abort`] if the send fails).
        to: u64,
        /// The receiver's node name.
        peer: String,
        /// The frame body.
        payload: Bytes,
    },
    /// An ack for node `peer`.
    Ack {
        /// The sender's node name.
        peer: String,
        /// The frame body.
        payload: Bytes,
    },
}

/// A snapshot message rebuilt from a complete transfer; the owner checks `from` against the
/// message's raft id and steps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSnapshot {
    /// The authenticated sender.
    pub from: NodeId,
    /// The raft `MsgSnapshot`, its data sharing the assembly's buffer.
    pub message: Message,
}

/// Cumulative counters (the owner mirrors them into metrics by difference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Chunk frames emitted.
    pub chunks_sent: u64,
    /// Chunk frames taken into an assembly.
    pub chunks_received: u64,
    /// Outgoing transfers fully acknowledged.
    pub sent_completed: u64,
    /// Outgoing transfers failed (timeout, abort, unsent).
    pub sent_failed: u64,
    /// Outgoing transfers refused at start.
    pub sent_refused: u64,
    /// Outgoing transfers replaced by a newer snapshot to the same peer.
    pub sent_replaced: u64,
    /// Assemblies completed into a message.
    pub received_completed: u64,
    /// Assemblies (or first chunks) dropped for a refused chunk.
    pub received_dropped: u64,
    /// Assemblies replaced by a newer transfer from the same sender.
    pub received_replaced: u64,
    /// Assemblies dropped for lack of progress.
    pub received_expired: u64,
    /// Assemblies evicted by a new sender at [`TransferLimits::max_incoming`].
    pub received_evicted: u64,
}

struct Outgoing {
    id: TransferId,
    peer: String,
    head: Bytes,
    data: Bytes,
    sent: usize,
    acked: usize,
    deadline: Instant,
}

impl Outgoing {
    fn total(&self) -> usize {
        self.head.len() + self.data.len()
    }

    /// Appends stream bytes `[from, from + len)` of `head ++ data` to `out`.
    fn copy_range(&self, from: usize, len: usize, out: &mut BytesMut) {
        let end = from + len;
        let head_len = self.head.len();
        if from < head_len {
            out.put_slice(&self.head[from..end.min(head_len)]);
        }
        if end > head_len {
            out.put_slice(&self.data[from.max(head_len) - head_len..end - head_len]);
        }
    }
}

struct Assembly {
    id: TransferId,
    total: usize,
    head_len: usize,
    buf: Vec<u8>,
    last_progress: Instant,
}

struct ChunkHeader {
    id: TransferId,
    offset: u64,
    total: u64,
    head_len: u32,
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn decode_chunk(payload: &[u8]) -> Result<(ChunkHeader, &[u8]), ChunkRefusal> {
    if payload.len() < CHUNK_HEADER_BYTES || payload[0] != WIRE_VERSION {
        return Err(ChunkRefusal::Malformed);
    }
    let field = |at| read_u64(payload, at).ok_or(ChunkRefusal::Malformed);
    let head_len = u32::from_be_bytes(payload[25..29].try_into().map_err(|_| ChunkRefusal::Malformed)?);
    Ok((ChunkHeader { id: field(1)?, offset: field(9)?, total: field(17)?, head_len }, &payload[CHUNK_HEADER_BYTES..]))
}

fn encode_ack(id: TransferId, received: u64, status: u8) -> Bytes {
    let mut out = BytesMut::with_capacity(ACK_BYTES);
    out.put_u8(WIRE_VERSION);
    out.put_u64(id);
    out.put_u64(received);
    out.put_u8(status);
    out.freeze()
}

/// The head and data of a `MsgSnapshot`: the message with its snapshot data emptied (protobuf)
/// and that data (shared, not copied).
pub fn split_snapshot_message(mut message: Message) -> Result<(Bytes, Bytes), SendRefusal> {
    if message.get_msg_type() != MessageType::MsgSnapshot {
        return Err(SendRefusal::NotASnapshot);
    }
    let data = std::mem::take(&mut message.mut_snapshot().data);
    let head = message.write_to_bytes().map_err(|e| SendRefusal::Encode(e.to_string()))?;
    Ok((Bytes::from(head), data))
}

/// Rebuilds a `MsgSnapshot` from its head and data (the inverse of [`split_snapshot_message`]);
/// `None` for anything else.
pub fn join_snapshot_message(head: &Bytes, data: Bytes) -> Option<Message> {
    let mut message = Message::parse_from_carllerche_bytes(head).ok()?;
    if message.get_msg_type() != MessageType::MsgSnapshot || !message.get_snapshot().data.is_empty() {
        return None;
    }
    message.mut_snapshot().data = data;
    Some(message)
}

/// Both sides of the chunked snapshot transfer (see the module docs).
pub struct SnapshotTransfers {
    limits: TransferLimits,
    /// By receiver raft id: at most one transfer per peer.
    outgoing: BTreeMap<u64, Outgoing>,
    /// By authenticated sender: at most one assembly per sender.
    incoming: BTreeMap<NodeId, Assembly>,
    next_id: TransferId,
    acks: VecDeque<Transmit>,
    reports: VecDeque<SnapshotReport>,
    received: VecDeque<ReceivedSnapshot>,
    stats: TransferStats,
}

impl SnapshotTransfers {
    /// An idle instance with `limits` (the chunk size is kept within 1 byte and
    /// [`MAX_SNAPSHOT_CHUNK_BYTES`], so a chunk frame always fits a raft frame; a window below one
    /// chunk is raised to one chunk).
    pub fn new(mut limits: TransferLimits) -> Self {
        limits.chunk_bytes = limits.chunk_bytes.clamp(1, MAX_SNAPSHOT_CHUNK_BYTES);
        limits.window_bytes = limits.window_bytes.max(limits.chunk_bytes);
        Self {
            limits,
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            next_id: 1,
            acks: VecDeque::new(),
            reports: VecDeque::new(),
            received: VecDeque::new(),
            stats: TransferStats::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> TransferLimits {
        self.limits
    }

    /// Counters.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    /// Outgoing transfers in flight.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Incoming assemblies in progress.
    pub fn incoming_len(&self) -> usize {
        self.incoming.len()
    }

    /// Starts sending raft's `MsgSnapshot` `message` to node `peer` (raft id `message.to`). A
    /// transfer already in flight to that raft id is replaced (raft made a newer snapshot
    /// message). A refusal is also queued as a failed report, so the owner's one path to raft
    /// handles it.
    pub fn send_snapshot(&mut self, now: Instant, peer: &str, message: Message) -> Result<TransferId, SendRefusal> {
        let to = message.to;
        let result = self.start(now, peer, message);
        if let Err(refusal) = &result {
            self.stats.sent_refused += 1;
            self.push_report(to, SnapshotOutcome::Failed(TransferFailure::Refused(refusal.clone())));
        }
        result
    }

    fn start(&mut self, now: Instant, peer: &str, message: Message) -> Result<TransferId, SendRefusal> {
        let to = message.to;
        let (head, data) = split_snapshot_message(message)?;
        if head.len() > MAX_SNAPSHOT_HEAD_BYTES {
            return Err(SendRefusal::TooLarge { len: head.len(), max: MAX_SNAPSHOT_HEAD_BYTES });
        }
        let total = head.len().saturating_add(data.len());
        if total > self.limits.max_transfer_bytes {
            return Err(SendRefusal::TooLarge { len: total, max: self.limits.max_transfer_bytes });
        }
        if self.outgoing.remove(&to).is_some() {
            self.stats.sent_replaced += 1;
        } else if self.outgoing.len() >= self.limits.max_outgoing {
            return Err(SendRefusal::TooManyTransfers { max: self.limits.max_outgoing });
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + self.limits.progress_timeout;
        self.outgoing.insert(to, Outgoing { id, peer: peer.to_string(), head, data, sent: 0, acked: 0, deadline });
        Ok(id)
    }

    /// Fails the transfer to raft id `to` (the transport refused one of its chunks).
    pub fn abort(&mut self, to: u64) {
        if self.outgoing.remove(&to).is_some() {
            self.fail(to, TransferFailure::Unsent);
        }
    }

    fn fail(&mut self, to: u64, failure: TransferFailure) {
        self.stats.sent_failed += 1;
        self.push_report(to, SnapshotOutcome::Failed(failure));
    }

    fn push_report(&mut self, to: u64, outcome: SnapshotOutcome) {
        // One report per transfer and at most `max_outgoing` transfers: this queue stays short as
        // long as the owner polls, and a newer report for the same peer supersedes an older one.
        self.reports.retain(|r| r.to != to);
        self.reports.push_back(SnapshotReport { to, outcome });
    }

    /// Takes an ack frame from `from`.
    pub fn handle_ack(&mut self, now: Instant, from: &NodeId, payload: &[u8]) -> Result<(), AckRefusal> {
        if payload.len() != ACK_BYTES || payload[0] != WIRE_VERSION {
            return Err(AckRefusal::Malformed);
        }
        let (Some(id), Some(received)) = (read_u64(payload, 1), read_u64(payload, 9)) else {
            return Err(AckRefusal::Malformed);
        };
        let status = payload[17];
        let Some((&to, transfer)) = self.outgoing.iter_mut().find(|(_, t)| t.id == id) else {
            return Err(AckRefusal::UnknownTransfer);
        };
        if transfer.peer != from.name {
            return Err(AckRefusal::WrongPeer);
        }
        match status {
            ACK_PROGRESS => {}
            ACK_ABORT => {
                self.outgoing.remove(&to);
                self.fail(to, TransferFailure::Aborted);
                return Ok(());
            }
            _ => return Err(AckRefusal::Malformed),
        }
        let received = usize::try_from(received).map_err(|_| AckRefusal::Inconsistent)?;
        if received < transfer.acked || received > transfer.sent {
            return Err(AckRefusal::Inconsistent);
        }
        if received > transfer.acked {
            transfer.acked = received;
            transfer.deadline = now + self.limits.progress_timeout;
        }
        if transfer.acked == transfer.total() {
            self.outgoing.remove(&to);
            self.stats.sent_completed += 1;
            self.push_report(to, SnapshotOutcome::Finished);
        }
        Ok(())
    }

    /// Takes a chunk frame from `from`. On success the chunk is acknowledged (see
    /// [`SnapshotTransfers::poll_transmit`]) and, if it completed the stream, the rebuilt message
    /// is ready in [`SnapshotTransfers::poll_snapshot`]. A refused chunk drops the sender's
    /// assembly (except a stale one) and aborts the sender.
    pub fn handle_chunk(&mut self, now: Instant, from: &NodeId, payload: &[u8]) -> Result<(), ChunkRefusal> {
        let result = self.take_chunk(now, from, payload);
        if result.is_err() {
            self.stats.received_dropped += 1;
        }
        result
    }

    fn take_chunk(&mut self, now: Instant, from: &NodeId, payload: &[u8]) -> Result<(), ChunkRefusal> {
        let (header, bytes) = decode_chunk(payload)?;
        let abort = |this: &mut Self, refusal: ChunkRefusal| {
            this.incoming.remove(from);
            this.queue_ack(Transmit::Ack { peer: from.name.clone(), payload: encode_ack(header.id, 0, ACK_ABORT) });
            Err(refusal)
        };
        let max = self.limits.max_transfer_bytes;
        let total = match usize::try_from(header.total) {
            Ok(total) if total <= max => total,
            _ => return abort(self, ChunkRefusal::TooLarge { total: header.total, max }),
        };
        let head_len = header.head_len as usize;
        let end = header.offset.checked_add(bytes.len() as u64);
        if total == 0
            || bytes.is_empty()
            || head_len > total
            || head_len > MAX_SNAPSHOT_HEAD_BYTES
            || end.is_none_or(|end| end > header.total)
        {
            return abort(self, ChunkRefusal::Malformed);
        }
        match self.incoming.get(from) {
            Some(a) if header.id < a.id => return Err(ChunkRefusal::Stale),
            Some(a) if header.id == a.id => {
                if a.total != total || a.head_len != head_len {
                    return abort(self, ChunkRefusal::Inconsistent);
                }
                if header.offset != a.buf.len() as u64 {
                    let expected = a.buf.len() as u64;
                    return abort(self, ChunkRefusal::OutOfOrder { expected, offset: header.offset });
                }
            }
            existing => {
                if header.offset != 0 {
                    return abort(self, ChunkRefusal::OutOfOrder { expected: 0, offset: header.offset });
                }
                if existing.is_some() {
                    self.stats.received_replaced += 1;
                } else if self.incoming.len() >= self.limits.max_incoming {
                    self.evict_least_recent();
                }
                // The total was checked against the bound above; pages are only touched as
                // chunks arrive.
                let assembly =
                    Assembly { id: header.id, total, head_len, buf: Vec::with_capacity(total), last_progress: now };
                self.incoming.insert(from.clone(), assembly);
            }
        }
        let Some(assembly) = self.incoming.get_mut(from) else { return Err(ChunkRefusal::Malformed) };
        assembly.buf.extend_from_slice(bytes);
        assembly.last_progress = now;
        self.stats.chunks_received += 1;
        let received = assembly.buf.len();
        if received < assembly.total {
            let ack = encode_ack(header.id, received as u64, ACK_PROGRESS);
            self.queue_ack(Transmit::Ack { peer: from.name.clone(), payload: ack });
            return Ok(());
        }
        let Some(assembly) = self.incoming.remove(from) else { return Err(ChunkRefusal::Malformed) };
        let mut stream = Bytes::from(assembly.buf);
        let data = stream.split_off(assembly.head_len);
        let Some(message) = join_snapshot_message(&stream, data) else {
            return abort(self, ChunkRefusal::InvalidMessage);
        };
        self.queue_ack(Transmit::Ack {
            peer: from.name.clone(),
            payload: encode_ack(header.id, received as u64, ACK_PROGRESS),
        });
        self.stats.received_completed += 1;
        if self.received.len() >= MAX_QUEUED_OUTPUTS {
            self.received.pop_front();
        }
        self.received.push_back(ReceivedSnapshot { from: from.clone(), message });
        Ok(())
    }

    fn evict_least_recent(&mut self) {
        let Some(oldest) = self.incoming.iter().min_by_key(|(_, a)| a.last_progress).map(|(n, _)| n.clone()) else {
            return;
        };
        if let Some(a) = self.incoming.remove(&oldest) {
            self.stats.received_evicted += 1;
            self.queue_ack(Transmit::Ack { peer: oldest.name.clone(), payload: encode_ack(a.id, 0, ACK_ABORT) });
        }
    }

    fn queue_ack(&mut self, ack: Transmit) {
        if self.acks.len() >= MAX_QUEUED_OUTPUTS {
            self.acks.pop_front();
        }
        self.acks.push_back(ack);
    }

    /// Fails outgoing transfers without ack progress and drops idle assemblies.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self.outgoing.iter().filter(|(_, t)| t.deadline <= now).map(|(to, _)| *to).collect();
        for to in expired {
            self.outgoing.remove(&to);
            self.fail(to, TransferFailure::TimedOut);
        }
        let timeout = self.limits.progress_timeout;
        let before = self.incoming.len();
        self.incoming.retain(|_, a| now.saturating_duration_since(a.last_progress) < timeout);
        self.stats.received_expired += (before - self.incoming.len()) as u64;
    }

    /// When [`SnapshotTransfers::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let outgoing = self.outgoing.values().map(|t| t.deadline);
        let incoming = self.incoming.values().map(|a| a.last_progress + self.limits.progress_timeout);
        outgoing.chain(incoming).min()
    }

    /// The next frame to send: queued acks first, then the next chunk of a transfer whose window
    /// has room. Call until `None`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(ack) = self.acks.pop_front() {
            return Some(ack);
        }
        let (chunk_bytes, window) = (self.limits.chunk_bytes, self.limits.window_bytes);
        for (&to, transfer) in self.outgoing.iter_mut() {
            let total = transfer.total();
            let len = chunk_bytes.min(total - transfer.sent);
            if len == 0 || transfer.sent - transfer.acked + len > window {
                continue;
            }
            let mut frame = BytesMut::with_capacity(CHUNK_HEADER_BYTES + len);
            frame.put_u8(WIRE_VERSION);
            frame.put_u64(transfer.id);
            frame.put_u64(transfer.sent as u64);
            frame.put_u64(total as u64);
            frame.put_u32(transfer.head.len() as u32);
            transfer.copy_range(transfer.sent, len, &mut frame);
            transfer.sent += len;
            self.stats.chunks_sent += 1;
            return Some(Transmit::Chunk { to, peer: transfer.peer.clone(), payload: frame.freeze() });
        }
        None
    }

    /// The next report for raft.
    pub fn poll_report(&mut self) -> Option<SnapshotReport> {
        self.reports.pop_front()
    }

    /// The next rebuilt snapshot message to step.
    pub fn poll_snapshot(&mut self) -> Option<ReceivedSnapshot> {
        self.received.pop_front()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::field_reassign_with_default)]
    use proptest::prelude::*;

    use super::*;

    fn leader() -> NodeId {
        NodeId::new("leader", 1)
    }

    fn follower() -> NodeId {
        NodeId::new("follower", 1)
    }

    fn snapshot_message(to: u64, data_len: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = to;
        m.from = 1;
        m.term = 3;
        let snap = m.mut_snapshot();
        snap.data = (0..data_len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        snap.mut_metadata().index = 77;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m
    }

    fn limits(chunk: usize, window: usize) -> TransferLimits {
        TransferLimits { chunk_bytes: chunk, window_bytes: window, ..TransferLimits::default() }
    }

    /// Moves every frame between `sender` and `receiver` until both are quiet; returns the chunk
    /// frames seen.
    fn pump(now: Instant, sender: &mut SnapshotTransfers, receiver: &mut SnapshotTransfers) -> usize {
        let mut chunks = 0;
        loop {
            let mut moved = false;
            while let Some(t) = sender.poll_transmit() {
                moved = true;
                match t {
                    Transmit::Chunk { payload, peer, .. } => {
                        assert_eq!(peer, "follower");
                        chunks += 1;
                        receiver.handle_chunk(now, &leader(), &payload).unwrap();
                    }
                    Transmit::Ack { .. } => panic!("the sender has nothing to ack"),
                }
            }
            while let Some(t) = receiver.poll_transmit() {
                moved = true;
                let Transmit::Ack { payload, peer } = t else { panic!("the receiver sends acks only") };
                assert_eq!(peer, "leader");
                sender.handle_ack(now, &follower(), &payload).unwrap();
            }
            if !moved {
                return chunks;
            }
        }
    }

    #[test]
    fn a_snapshot_sent_in_order_is_rebuilt_identically_and_reported_finished() {
        let now = Instant::now();
        let mut sender = SnapshotTransfers::new(limits(1_000, 4_000));
        let mut receiver = SnapshotTransfers::new(limits(1_000, 4_000));
        let message = snapshot_message(2, 10_500);
        sender.send_snapshot(now, "follower", message.clone()).unwrap();
        let chunks = pump(now, &mut sender, &mut receiver);
        assert!(chunks >= 11, "{chunks} chunks for 10.5 kB in 1 kB chunks");
        let received = receiver.poll_snapshot().expect("a rebuilt message");
        assert_eq!(received.from, leader());
        assert_eq!(received.message, message);
        assert_eq!(receiver.poll_snapshot(), None);
        assert_eq!(sender.poll_report(), Some(SnapshotReport { to: 2, outcome: SnapshotOutcome::Finished }));
        assert_eq!(sender.poll_report(), None);
        assert_eq!((sender.outgoing_len(), receiver.incoming_len()), (0, 0));
        assert_eq!(sender.stats().chunks_sent, chunks as u64);
        assert_eq!(receiver.stats().chunks_received, chunks as u64);
        assert_eq!((sender.stats().sent_completed, receiver.stats().received_completed), (1, 1));
    }

    #[test]
    fn a_snapshot_with_empty_data_still_travels_as_its_head() {
        let now = Instant::now();
        let mut sender = SnapshotTransfers::new(limits(8, 16));
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        let message = snapshot_message(2, 0);
        sender.send_snapshot(now, "follower", message.clone()).unwrap();
        pump(now, &mut sender, &mut receiver);
        assert_eq!(receiver.poll_snapshot().map(|r| r.message), Some(message));
        assert_eq!(sender.poll_report().map(|r| r.outcome), Some(SnapshotOutcome::Finished));
    }

    #[test]
    fn the_bytes_in_flight_never_exceed_the_window() {
        let now = Instant::now();
        let (chunk, window) = (1_000, 3_500);
        let mut sender = SnapshotTransfers::new(limits(chunk, window));
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        sender.send_snapshot(now, "follower", snapshot_message(2, 20_000)).unwrap();
        let (mut sent, mut acked) = (0usize, 0usize);
        let mut in_flight: VecDeque<Bytes> = VecDeque::new();
        loop {
            while let Some(Transmit::Chunk { payload, .. }) = sender.poll_transmit() {
                sent += payload.len() - CHUNK_HEADER_BYTES;
                assert!(sent - acked <= window, "{} bytes unacknowledged", sent - acked);
                in_flight.push_back(payload);
            }
            // Full chunks: at most 3 of 1000 fit in 3500 (the last, shorter one may add a 4th).
            let full = in_flight.iter().filter(|c| c.len() - CHUNK_HEADER_BYTES == chunk).count();
            assert!(full <= 3, "{full} full chunks in flight");
            let Some(chunk) = in_flight.pop_front() else { break };
            receiver.handle_chunk(now, &leader(), &chunk).unwrap();
            while let Some(Transmit::Ack { payload, .. }) = receiver.poll_transmit() {
                sender.handle_ack(now, &follower(), &payload).unwrap();
                acked = u64::from_be_bytes(payload[9..17].try_into().unwrap()) as usize;
            }
        }
        assert!(receiver.poll_snapshot().is_some());
        assert_eq!(sender.poll_report().map(|r| r.outcome), Some(SnapshotOutcome::Finished));
    }

    #[test]
    fn a_lost_ack_fails_the_transfer_after_the_progress_timeout() {
        let start = Instant::now();
        let mut sender = SnapshotTransfers::new(limits(1_000, 2_000));
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        sender.send_snapshot(start, "follower", snapshot_message(2, 5_000)).unwrap();
        while let Some(Transmit::Chunk { payload, .. }) = sender.poll_transmit() {
            receiver.handle_chunk(start, &leader(), &payload).unwrap();
        }
        // Every ack is lost: nothing more may be sent, and the deadline stands.
        while receiver.poll_transmit().is_some() {}
        assert_eq!(sender.poll_transmit(), None);
        let deadline = sender.poll_timeout().expect("a deadline");
        assert_eq!(deadline, start + SNAPSHOT_PROGRESS_TIMEOUT);
        sender.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(sender.poll_report(), None, "not before the deadline");
        sender.handle_timeout(deadline);
        assert_eq!(
            sender.poll_report(),
            Some(SnapshotReport { to: 2, outcome: SnapshotOutcome::Failed(TransferFailure::TimedOut) })
        );
        assert_eq!((sender.outgoing_len(), sender.stats().sent_failed), (0, 1));
        // The receiver drops its idle half-assembly on its own timeout.
        receiver.handle_timeout(start + SNAPSHOT_PROGRESS_TIMEOUT);
        assert_eq!((receiver.incoming_len(), receiver.stats().received_expired), (0, 1));
    }

    #[test]
    fn ack_progress_pushes_the_deadline_back() {
        let start = Instant::now();
        let mut sender = SnapshotTransfers::new(limits(1_000, 1_000));
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        sender.send_snapshot(start, "follower", snapshot_message(2, 5_000)).unwrap();
        let later = start + Duration::from_secs(7);
        let Some(Transmit::Chunk { payload, .. }) = sender.poll_transmit() else { panic!("a chunk") };
        receiver.handle_chunk(later, &leader(), &payload).unwrap();
        let Some(Transmit::Ack { payload, .. }) = receiver.poll_transmit() else { panic!("an ack") };
        sender.handle_ack(later, &follower(), &payload).unwrap();
        assert_eq!(sender.poll_timeout(), Some(later + SNAPSHOT_PROGRESS_TIMEOUT));
        sender.handle_timeout(start + SNAPSHOT_PROGRESS_TIMEOUT);
        assert_eq!(sender.poll_report(), None);
    }

    #[test]
    fn a_newer_transfer_from_the_same_sender_replaces_the_assembly() {
        let now = Instant::now();
        let mut sender = SnapshotTransfers::new(limits(1_000, 1_000));
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        sender.send_snapshot(now, "follower", snapshot_message(2, 3_000)).unwrap();
        let Some(Transmit::Chunk { payload: old_first, .. }) = sender.poll_transmit() else { panic!("a chunk") };
        receiver.handle_chunk(now, &leader(), &old_first).unwrap();
        // Raft makes a newer snapshot message for the same peer: the old transfer is replaced
        // without a report (raft already tracks the new one).
        let newer = snapshot_message(2, 2_500);
        sender.send_snapshot(now, "follower", newer.clone()).unwrap();
        assert_eq!(sender.stats().sent_replaced, 1);
        assert_eq!(sender.outgoing_len(), 1);
        while receiver.poll_transmit().is_some() {}
        let Some(Transmit::Chunk { payload: new_first, .. }) = sender.poll_transmit() else { panic!("a chunk") };
        receiver.handle_chunk(now, &leader(), &new_first).unwrap();
        assert_eq!(receiver.stats().received_replaced, 1);
        // A late chunk of the replaced transfer is stale and changes nothing.
        assert_eq!(receiver.handle_chunk(now, &leader(), &old_first), Err(ChunkRefusal::Stale));
        while let Some(Transmit::Ack { payload, .. }) = receiver.poll_transmit() {
            sender.handle_ack(now, &follower(), &payload).unwrap();
        }
        pump(now, &mut sender, &mut receiver);
        assert_eq!(receiver.poll_snapshot().map(|r| r.message), Some(newer));
        assert_eq!(sender.poll_report().map(|r| r.outcome), Some(SnapshotOutcome::Finished));
        assert_eq!(sender.poll_report(), None, "the replaced transfer is not reported");
        assert_eq!(receiver.incoming_len(), 0);
    }

    #[test]
    fn an_oversized_total_is_refused_before_allocating_and_aborts_the_sender() {
        let now = Instant::now();
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        let mut frame = BytesMut::new();
        frame.put_u8(WIRE_VERSION);
        frame.put_u64(9);
        frame.put_u64(0);
        frame.put_u64(u64::MAX);
        frame.put_u32(10);
        frame.put_slice(&[0; 10]);
        let refused = receiver.handle_chunk(now, &leader(), &frame);
        assert!(matches!(refused, Err(ChunkRefusal::TooLarge { total: u64::MAX, .. })), "{refused:?}");
        assert_eq!(receiver.incoming_len(), 0);
        let Some(Transmit::Ack { payload, peer }) = receiver.poll_transmit() else { panic!("an abort") };
        assert_eq!((peer.as_str(), payload[17]), ("leader", ACK_ABORT));
        // The sender side refuses a message over the bound too, and reports it failed.
        let mut sender = SnapshotTransfers::new(TransferLimits { max_transfer_bytes: 1_000, ..limits(100, 100) });
        let refused = sender.send_snapshot(now, "follower", snapshot_message(2, 2_000));
        assert!(matches!(refused, Err(SendRefusal::TooLarge { .. })), "{refused:?}");
        let report = sender.poll_report().unwrap();
        assert!(matches!(report.outcome, SnapshotOutcome::Failed(TransferFailure::Refused(_))), "{report:?}");
    }

    #[test]
    fn an_out_of_order_chunk_drops_the_assembly_and_the_abort_fails_the_sender_at_once() {
        let now = Instant::now();
        let mut sender = SnapshotTransfers::new(limits(1_000, 4_000));
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        sender.send_snapshot(now, "follower", snapshot_message(2, 5_000)).unwrap();
        let mut chunks = Vec::new();
        while let Some(Transmit::Chunk { payload, .. }) = sender.poll_transmit() {
            chunks.push(payload);
        }
        receiver.handle_chunk(now, &leader(), &chunks[0]).unwrap();
        let refused = receiver.handle_chunk(now, &leader(), &chunks[2]);
        assert_eq!(refused, Err(ChunkRefusal::OutOfOrder { expected: 1_000, offset: 2_000 }));
        assert_eq!((receiver.incoming_len(), receiver.stats().received_dropped), (0, 1));
        while let Some(Transmit::Ack { payload, .. }) = receiver.poll_transmit() {
            sender.handle_ack(now, &follower(), &payload).unwrap();
        }
        assert_eq!(
            sender.poll_report(),
            Some(SnapshotReport { to: 2, outcome: SnapshotOutcome::Failed(TransferFailure::Aborted) })
        );
        // A duplicate of an accepted chunk is out of order as well (no retransmission inside a
        // transfer).
        receiver.handle_chunk(now, &leader(), &chunks[0]).unwrap();
        assert!(matches!(receiver.handle_chunk(now, &leader(), &chunks[0]), Err(ChunkRefusal::OutOfOrder { .. })));
    }

    #[test]
    fn transfers_beyond_the_limit_are_refused_counted_and_reported() {
        let now = Instant::now();
        let mut sender = SnapshotTransfers::new(TransferLimits { max_outgoing: 2, ..TransferLimits::default() });
        sender.send_snapshot(now, "a", snapshot_message(2, 10)).unwrap();
        sender.send_snapshot(now, "b", snapshot_message(3, 10)).unwrap();
        let refused = sender.send_snapshot(now, "c", snapshot_message(4, 10));
        assert_eq!(refused, Err(SendRefusal::TooManyTransfers { max: 2 }));
        assert_eq!(sender.stats().sent_refused, 1);
        let report = sender.poll_report().unwrap();
        assert_eq!(report.to, 4);
        // A new snapshot to a peer already being served replaces its transfer instead.
        sender.send_snapshot(now, "a", snapshot_message(2, 20)).unwrap();
        assert_eq!(sender.outgoing_len(), 2);
        // A transfer whose chunk the transport refused fails at once.
        sender.abort(3);
        assert_eq!(
            sender.poll_report(),
            Some(SnapshotReport { to: 3, outcome: SnapshotOutcome::Failed(TransferFailure::Unsent) })
        );
    }

    #[test]
    fn a_third_sender_evicts_the_least_recently_active_assembly() {
        let start = Instant::now();
        let mut receiver = SnapshotTransfers::new(TransferLimits::default());
        let mut first_chunk = |name: &str, at: Instant| {
            let mut sender = SnapshotTransfers::new(limits(100, 100));
            sender.send_snapshot(at, "follower", snapshot_message(2, 1_000)).unwrap();
            let Some(Transmit::Chunk { payload, .. }) = sender.poll_transmit() else { panic!("a chunk") };
            receiver.handle_chunk(at, &NodeId::new(name, 1), &payload).unwrap();
        };
        first_chunk("old", start);
        first_chunk("mid", start + Duration::from_secs(1));
        first_chunk("new", start + Duration::from_secs(2));
        assert_eq!((receiver.incoming_len(), receiver.stats().received_evicted), (2, 1));
        let aborted: Vec<String> = std::iter::from_fn(|| receiver.poll_transmit())
            .filter_map(|t| match t {
                Transmit::Ack { peer, payload } if payload[17] == ACK_ABORT => Some(peer),
                _ => None,
            })
            .collect();
        assert_eq!(aborted, vec!["old".to_string()]);
    }

    #[test]
    fn garbage_chunks_and_acks_are_refused_and_change_nothing() {
        let now = Instant::now();
        let mut t = SnapshotTransfers::new(TransferLimits::default());
        for garbage in [&b""[..], b"\x01", &[0u8; 40], &[2u8; CHUNK_HEADER_BYTES + 4]] {
            assert_eq!(t.handle_chunk(now, &leader(), garbage), Err(ChunkRefusal::Malformed), "{garbage:?}");
            assert!(t.handle_ack(now, &follower(), garbage).is_err());
        }
        // A head that is not a snapshot message, complete in one chunk.
        let mut frame = BytesMut::new();
        frame.put_u8(WIRE_VERSION);
        frame.put_u64(1);
        frame.put_u64(0);
        frame.put_u64(4);
        frame.put_u32(4);
        frame.put_slice(b"\xff\xff\xff\xff");
        assert_eq!(t.handle_chunk(now, &leader(), &frame), Err(ChunkRefusal::InvalidMessage));
        // A head length beyond the total.
        frame[25..29].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(t.handle_chunk(now, &leader(), &frame), Err(ChunkRefusal::Malformed));
        assert_eq!(t.incoming_len(), 0);
        assert_eq!(t.poll_snapshot(), None);
        // An ack from the wrong node, or of bytes never sent, is refused.
        t.send_snapshot(now, "follower", snapshot_message(2, 100)).unwrap();
        assert!(t.handle_ack(now, &follower(), &encode_ack(1, 0, ACK_ABORT)).is_ok());
        t.send_snapshot(now, "follower", snapshot_message(2, 100)).unwrap();
        assert_eq!(t.handle_ack(now, &leader(), &encode_ack(2, 0, ACK_PROGRESS)), Err(AckRefusal::WrongPeer));
        assert_eq!(t.handle_ack(now, &follower(), &encode_ack(2, 50, ACK_PROGRESS)), Err(AckRefusal::Inconsistent));
        assert_eq!(t.handle_ack(now, &follower(), &encode_ack(9, 0, ACK_PROGRESS)), Err(AckRefusal::UnknownTransfer));
        assert_eq!(t.handle_ack(now, &follower(), &encode_ack(2, 0, 7)), Err(AckRefusal::Malformed));
    }

    #[test]
    fn split_and_join_round_trip_and_refuse_other_messages() {
        let message = snapshot_message(5, 300);
        let (head, data) = split_snapshot_message(message.clone()).unwrap();
        assert_eq!(data.len(), 300);
        assert_eq!(join_snapshot_message(&head, data), Some(message));
        let mut append = Message::default();
        append.set_msg_type(MessageType::MsgAppend);
        assert_eq!(split_snapshot_message(append.clone()), Err(SendRefusal::NotASnapshot));
        assert_eq!(join_snapshot_message(&Bytes::from(append.write_to_bytes().unwrap()), Bytes::new()), None);
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic_and_never_grow_state_beyond_the_bounds(
            frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..64),
            senders in 1usize..4,
        ) {
            let now = Instant::now();
            let mut t = SnapshotTransfers::new(TransferLimits { max_transfer_bytes: 4_096, ..TransferLimits::default() });
            for (i, (is_chunk, mut bytes)) in frames.into_iter().enumerate() {
                let from = NodeId::new(format!("n{}", i % senders), 1);
                if is_chunk && !bytes.is_empty() {
                    bytes[0] = WIRE_VERSION;
                    let _ = t.handle_chunk(now, &from, &bytes);
                } else {
                    let _ = t.handle_ack(now, &from, &bytes);
                }
                prop_assert!(t.incoming_len() <= MAX_INCOMING_TRANSFERS);
                prop_assert!(t.incoming.values().all(|a| a.buf.capacity() <= 4_096));
            }
        }
    }
}
