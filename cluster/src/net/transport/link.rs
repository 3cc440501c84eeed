//! One outbound link to one peer (its priority or its bulk link, see [`Link`]): dial, handshake
//! naming the link, then drain that link's queues in batches onto the connection, each batch
//! encoded straight into encrypted records ([`Sealer`], sealed in place) and written with one
//! `write_all`; on any failure, back off (exponential, jittered, rate-limited across peers) and
//! dial again, while frames keep queuing under their class policies. The two links of a peer are
//! independent tasks: one being slow, blocked or redialling never holds up the other.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use governor::clock::{Clock, DefaultClock};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use super::backoff::backoff_delay;
use super::delay::DelayLine;
use super::handshake::{self, HandshakeFailure};
use super::metrics::{ConnGauge, ConnState, DropCause};
use super::route::Link;
use super::{Inner, Peer, PeerLink, lock};
use crate::faults::{Direction, Verdict};
use crate::frame::Frame;
use crate::queue::Class;
use crate::secure::{MAX_RECORD_PLAINTEXT, RecordStart, Sealer};

/// Why a link's connection ended.
#[derive(Debug, PartialEq, Eq)]
enum LinkEnd {
    /// The transport is shutting down and the queues are flushed.
    Shutdown,
    /// The connection failed or the peer closed it; dial again.
    Lost,
}

/// Why a dial did not produce a connection.
#[derive(Debug)]
enum DialError {
    /// The TCP connect failed or timed out (not counted as a handshake failure).
    Connect(io::Error),
    /// The connection was made but the handshake failed.
    Handshake(HandshakeFailure),
}

/// Resolves when the transport starts shutting down.
pub(super) async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens when the transport is dropped.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// The task of one link of one peer; runs until aborted (peer down) or the transport shuts down.
pub(super) async fn run_link(inner: Arc<Inner>, peer: Arc<Peer>, link: Link) {
    let mut gauge = ConnGauge::new(&inner.metrics, ConnState::Connecting);
    let mut shutdown = inner.shutdown.subscribe();
    let mut failures: u32 = 0;
    let mut first_dial = true;
    let mut buf = Buffers::new(&inner.config);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !first_dial {
            inner.metrics.reconnects.inc();
        }
        first_dial = false;
        if !wait_for_dial_permit(&inner, &mut shutdown).await {
            return;
        }
        let dialled = tokio::select! {
            dialled = dial(&inner, &peer, link) => dialled,
            () = shutdown_signalled(&mut shutdown) => return,
        };
        let state = peer.link(link);
        match dialled {
            Ok((stream, sealer)) => {
                failures = 0;
                gauge.set(&inner.metrics, ConnState::Connected);
                state.connected.store(true, Ordering::Relaxed);
                tracing::debug!(peer = %peer.id, addr = %peer.addr, %link, "internode link connected");
                let end = write_loop(&inner, &peer, link, stream, sealer, &mut buf, &mut shutdown).await;
                state.connected.store(false, Ordering::Relaxed);
                gauge.set(&inner.metrics, ConnState::Connecting);
                if end == LinkEnd::Shutdown {
                    return;
                }
                tracing::debug!(peer = %peer.id, %link, "internode link lost; reconnecting");
            }
            Err(DialError::Handshake(failure)) => {
                inner.metrics.handshake_failed(&failure);
                if inner.may_warn() {
                    tracing::warn!(peer = %peer.id, addr = %peer.addr, %link, reason = failure.as_str(), error = %failure,
                        "internode handshake failed");
                }
            }
            Err(DialError::Connect(error)) => {
                tracing::debug!(peer = %peer.id, addr = %peer.addr, %link, %error, "internode connect failed");
                if error.kind() == io::ErrorKind::ConnectionRefused {
                    inner.report_gone(&peer.id);
                }
            }
        }
        failures = failures.saturating_add(1);
        let jitter: f64 = rand::rng().random();
        let config = &inner.config;
        let delay = backoff_delay(failures, config.reconnect_backoff_min, config.reconnect_backoff_max, jitter);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown_signalled(&mut shutdown) => return,
        }
    }
}

/// Waits for the transport-wide dial rate limit; false if the transport shut down meanwhile.
async fn wait_for_dial_permit(inner: &Inner, shutdown: &mut watch::Receiver<bool>) -> bool {
    let clock = DefaultClock::default();
    loop {
        let wait = match inner.reconnect_limiter.check() {
            Ok(()) => return true,
            Err(not_until) => not_until.wait_time_from(clock.now()),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown_signalled(shutdown) => return false,
        }
    }
}

/// Connects to the peer (under `connect_timeout`) and runs the initiator handshake of `link`
/// (under `handshake_timeout`), checking that the node that answers is the one dialled.
async fn dial(inner: &Inner, peer: &Peer, link: Link) -> Result<(TcpStream, Sealer), DialError> {
    let config = &inner.config;
    let socket = if peer.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    let socket = socket.map_err(DialError::Connect)?;
    if let Some(bytes) = config.socket_send_buffer_bytes {
        socket.set_send_buffer_size(bytes).map_err(DialError::Connect)?;
    }
    // Frames are batched by the writer; Nagle would only add latency to the last one.
    socket.set_nodelay(true).map_err(DialError::Connect)?;
    let mut stream = match tokio::time::timeout(config.connect_timeout, socket.connect(peer.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(DialError::Connect(error)),
        Err(_) => return Err(DialError::Connect(io::ErrorKind::TimedOut.into())),
    };
    let handshake = handshake::initiate(&mut stream, &inner.keys, &inner.local, &peer.id.name, link);
    match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok((established, sealer))) => {
            if established.peer != peer.id {
                // Same name, other incarnation: membership will tell us about the new run soon;
                // until then the link carries traffic for the node name. A later incarnation
                // answering on the address means the run we dialled is over.
                tracing::debug!(expected = %peer.id, found = %established.peer, "internode peer has another incarnation");
                if established.peer.incarnation > peer.id.incarnation {
                    inner.report_gone(&peer.id);
                }
            }
            Ok((stream, sealer))
        }
        Ok(Err(failure)) => Err(DialError::Handshake(failure)),
        Err(_) => Err(DialError::Handshake(HandshakeFailure::Timeout)),
    }
}

/// Drains one link's queues onto its connection until it fails or the transport shuts down.
async fn write_loop(
    inner: &Inner,
    peer: &Peer,
    kind: Link,
    mut stream: TcpStream,
    mut sealer: Sealer,
    buf: &mut Buffers,
    shutdown: &mut watch::Receiver<bool>,
) -> LinkEnd {
    let link = peer.link(kind);
    let (mut reader, mut writer) = stream.split();
    let mut probe = [0u8; 64];
    let config = &inner.config;
    // Frames a chaos `Delay` fault holds back; empty (and free) unless one is installed.
    let mut held = Held { inner, peer, line: DelayLine::default() };
    loop {
        if !held.line.is_empty() {
            let due = held.line.pop_due(Instant::now(), |(_, frame)| frame.encoded_len());
            if let Err(error) = write_frames(inner, peer, &mut writer, due, &mut sealer, buf).await {
                tracing::debug!(peer = %peer.id, %error, "internode write failed");
                return LinkEnd::Lost;
            }
        }
        let room = held.line.has_room();
        let batch = if room { pop_batch(inner, link) } else { Vec::new() };
        if batch.is_empty() {
            if held.line.is_empty() && *shutdown.borrow_and_update() {
                let _ = writer.shutdown().await;
                return LinkEnd::Shutdown;
            }
            let next_due = held.line.next_due();
            tokio::select! {
                () = link.notify.notified(), if room => {}
                _ = shutdown.changed() => {}
                // The accepting side never writes: a byte or EOF means the connection is gone
                // (peer restarted or closed it), found before the next frame is lost in it.
                _ = reader.read(&mut probe) => return LinkEnd::Lost,
                () = sleep_until_due(next_due) => {}
            }
            continue;
        }
        let ready = judge(inner, peer, batch, &mut held.line);
        if let Err(error) = write_frames(inner, peer, &mut writer, ready, &mut sealer, buf).await {
            tracing::debug!(peer = %peer.id, %error, "internode write failed");
            return LinkEnd::Lost;
        }
        // A rare huge frame must not pin its buffer for the life of the link.
        if buf.sealed.capacity() > 4 * config.write_batch_max_bytes || buf.large.capacity() > 0 {
            *buf = Buffers::new(config);
        }
        if kind == Link::Bulk {
            // One batch per poll. Otherwise, while the peer's receive window is open, a flooded
            // bulk link writes batch after batch until tokio's coop budget runs out (128 writes,
            // up to 8 MiB and milliseconds of copying on loopback), and the priority link's tasks
            // on this worker, and the I/O driver that wakes them, wait for all of it.
            tokio::task::yield_now().await;
        }
    }
}

/// Resolves at `due`, or never without one.
pub(super) async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Passes a batch through the fault filter: dropped frames are counted, delayed ones (and every
/// frame behind a held one, to keep the stream's order) go into `line`; returns what goes now.
fn judge(
    inner: &Inner,
    peer: &Peer,
    batch: Vec<(Class, Frame)>,
    line: &mut DelayLine<(Class, Frame)>,
) -> Vec<(Class, Frame)> {
    if !inner.faults.is_enabled() {
        // Without chaos nothing is ever held: the batch goes as it is, with no copy.
        return batch;
    }
    let now = Instant::now();
    let mut ready = Vec::with_capacity(batch.len());
    for (class, frame) in batch {
        match inner.faults.decide(&peer.id.name, Direction::Out) {
            Verdict::Pass if line.is_empty() => ready.push((class, frame)),
            Verdict::Pass => line.push(now, Duration::ZERO, frame.encoded_len(), (class, frame)),
            Verdict::Drop => inner.count_drop(Some(peer), class, DropCause::FaultInjected, 1),
            Verdict::Delay(delay) => line.push(now, delay, frame.encoded_len(), (class, frame)),
        }
    }
    ready
}

/// Frames held by a delay fault; dropping it (a failed write, the task aborted by
/// `peer_down`/shutdown) counts what is left, as [`InFlight`] does for a batch.
struct Held<'a> {
    inner: &'a Inner,
    peer: &'a Peer,
    line: DelayLine<(Class, Frame)>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let cause = self.peer.lost_cause();
        for (class, _) in self.line.take_all() {
            self.inner.count_drop(Some(self.peer), class, cause, 1);
        }
    }
}

/// Takes the next batch off the link's queues and lowers the depth gauges.
fn pop_batch(inner: &Inner, link: &PeerLink) -> Vec<(Class, Frame)> {
    let config = &inner.config;
    let batch = lock(&link.queues).pop_batch(config.write_batch_max_frames, config.write_batch_max_bytes);
    let mut popped = [0i64; 5];
    for (class, _) in &batch {
        popped[class.code() as usize] += 1;
    }
    for (i, n) in popped.into_iter().enumerate() {
        if n > 0 {
            inner.metrics.depth[i].sub(n);
        }
    }
    batch
}

/// Frames taken off the queues and not yet written or counted as dropped. Dropping it counts
/// what is left (a failed write, or the task aborted by `peer_down`/shutdown), so no popped
/// frame goes uncounted.
struct InFlight<'a> {
    inner: &'a Inner,
    peer: &'a Peer,
    /// Frames not yet written or dropped, per class.
    pending: [u64; 5],
    /// Frames and bytes encoded into the buffer and not yet written, per class.
    encoded: [(u64, u64); 5],
}

impl InFlight<'_> {
    fn drop_one(&mut self, class: Class, cause: DropCause) {
        let i = class.code() as usize;
        self.pending[i] = self.pending[i].saturating_sub(1);
        self.inner.count_drop(Some(self.peer), class, cause, 1);
    }

    /// The buffer was written: count its frames out.
    fn written(&mut self) {
        let metrics = &self.inner.metrics;
        for (i, (frames, bytes)) in std::mem::take(&mut self.encoded).into_iter().enumerate() {
            if frames > 0 {
                self.pending[i] = self.pending[i].saturating_sub(frames);
                metrics.frames_out[i].inc_by(frames);
                metrics.bytes_out[i].inc_by(bytes);
                self.peer.stats.bytes_out[i].fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let cause = self.peer.lost_cause();
        for class in Class::ALL {
            self.inner.count_drop(Some(self.peer), class, cause, self.pending[class.code() as usize]);
        }
    }
}

/// A link's write buffers, kept across batches.
struct Buffers {
    /// The batch's records: frames are encoded straight into them and sealed in place.
    sealed: BytesMut,
    /// A frame too large for one record, encoded before it is cut into records (rare).
    large: BytesMut,
}

impl Buffers {
    fn new(config: &super::TransportConfig) -> Self {
        Self {
            sealed: BytesMut::with_capacity(Sealer::sealed_len(config.write_batch_max_bytes + 1024)),
            large: BytesMut::new(),
        }
    }
}

/// Encodes the frames into records, seals them and writes them with one `write_all` (the
/// fault filter has already judged them, see [`judge`]).
///
/// A record holds whole frames, as many as fit in [`MAX_RECORD_PLAINTEXT`], encoded in place
/// after its length and sealed where they are; only a frame larger than a record is encoded
/// apart and cut into records of its own. So the reader can usually decode a record's frames
/// without keeping a partial frame back for the next one.
async fn write_frames<W: AsyncWrite + Unpin>(
    inner: &Inner,
    peer: &Peer,
    writer: &mut W,
    frames: Vec<(Class, Frame)>,
    sealer: &mut Sealer,
    buf: &mut Buffers,
) -> io::Result<()> {
    if frames.is_empty() {
        return Ok(());
    }
    let mut in_flight = InFlight { inner, peer, pending: [0; 5], encoded: [(0, 0); 5] };
    for (class, _) in &frames {
        in_flight.pending[class.code() as usize] += 1;
    }
    let max_frame_bytes = inner.config.max_frame_bytes;
    buf.sealed.clear();
    let mut record: Option<RecordStart> = None;
    for (class, frame) in frames {
        let len = frame.encoded_len();
        let encoded = if len > MAX_RECORD_PLAINTEXT {
            if let Some(start) = record.take() {
                finish_record(sealer, &mut buf.sealed, start)?;
            }
            buf.large.clear();
            let encoded = frame.encode_into(&mut buf.large, max_frame_bytes).is_ok();
            if encoded {
                // Fails only when the connection's 2^64 nonces are used up: a new connection
                // starts over.
                sealer.seal(&buf.large, &mut buf.sealed).map_err(io::Error::other)?;
            }
            buf.large.clear();
            encoded
        } else {
            let start = match record.take() {
                Some(start) if start.plaintext_len(&buf.sealed) + len <= MAX_RECORD_PLAINTEXT => start,
                Some(full) => {
                    finish_record(sealer, &mut buf.sealed, full)?;
                    Sealer::start_record(&mut buf.sealed)
                }
                None => Sealer::start_record(&mut buf.sealed),
            };
            record = Some(start);
            // Writes nothing when it fails.
            frame.encode_into(&mut buf.sealed, max_frame_bytes).is_ok()
        };
        if !encoded {
            // `send` checked the size; only a config change could get here.
            in_flight.drop_one(class, DropCause::TooLarge);
            continue;
        }
        let entry = &mut in_flight.encoded[class.code() as usize];
        entry.0 += 1;
        entry.1 += len as u64;
    }
    if let Some(start) = record {
        finish_record(sealer, &mut buf.sealed, start)?;
    }
    if !buf.sealed.is_empty() {
        writer.write_all(&buf.sealed).await?;
        buf.sealed.clear();
    }
    in_flight.written();
    Ok(())
}

/// Seals the record begun at `start`, or drops it if no frame went into it.
fn finish_record(sealer: &mut Sealer, sealed: &mut BytesMut, start: RecordStart) -> io::Result<()> {
    if start.plaintext_len(sealed) == 0 {
        start.cancel(sealed);
        return Ok(());
    }
    // Fails only when the connection's 2^64 nonces are used up: a new connection starts over.
    sealer.finish_record(sealed, start).map_err(io::Error::other)
}
