//! The receiving side: the accept loop, the responder handshake, and the frame reader of each
//! authenticated connection, which opens its encrypted records ([`Opener`]) and hands the frames
//! inside to the per-class channels without ever waiting. A record that fails authentication
//! (altered, replayed, reordered) closes the connection and is counted.
//!
//! Each peer has two connections to us, its priority and bulk links; the hello's frame kind says
//! which. Both are read the same way and every frame goes to its class's channel whichever link
//! it came on: the link only keys the replacement of an older connection (one per node name and
//! link) and the logs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};

use super::delay::DelayLine;
use super::handshake::{self, HandshakeFailure};
use super::link::{shutdown_signalled, sleep_until_due};
use super::metrics::{ConnGauge, ConnState, DropCause};
use super::route::Link;
use super::{ACCEPT_ERROR_PAUSE, Inbound, InboundError, Inner, lock};
use crate::NodeId;
use crate::faults::{Direction, Verdict};
use crate::frame::{Frame, FrameDecoder, FrameError};
use crate::queue::Class;
use crate::secure::{MAX_RECORD_BYTES, Opener};

/// Accepts connections until shutdown; each one is served by its own task.
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown_signalled(&mut shutdown) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                if inner.may_warn() {
                    tracing::warn!(%error, "internode accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    () = shutdown_signalled(&mut shutdown) => return,
                }
            }
        };
        let Ok(permit) = Arc::clone(&inner.handshake_slots).try_acquire_owned() else {
            // Closing at once (rather than waiting for a slot) keeps a flood of silent
            // connections from queueing honest peers behind their timeouts.
            inner.metrics.handshake_failed(&HandshakeFailure::Busy);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task_inner = Arc::clone(&inner);
        inner.spawn(async move {
            let _ = task_inner.serve(stream, permit).await;
        });
    }
}

/// Sets `SO_RCVBUF` on the listener; connections it accepts inherit it (and the window scale it
/// implies), which also turns off receive-buffer autotuning for them.
#[cfg(unix)]
pub(super) fn set_recv_buffer(listener: &std::net::TcpListener, bytes: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `setsockopt` on a socket fd the listener owns for this whole call, with a pointer to
    // a live `c_int` and its exact length; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Not supported off Unix: the kernel's default (autotuning) stays.
#[cfg(not(unix))]
pub(super) fn set_recv_buffer(_listener: &std::net::TcpListener, _bytes: u32) -> std::io::Result<()> {
    Ok(())
}

/// The most frames decoded before they are counted and delivered, which bounds the reader's
/// frame buffer (a 64 KiB read holds about 1000 frames of 64 B).
const FRAMES_PER_PASS: usize = 1024;

/// How a [`decode_pass`] ended.
enum Pass {
    /// It took [`FRAMES_PER_PASS`] frames; more may be buffered.
    Full,
    /// The buffer holds no whole frame any more.
    Drained,
}

/// Decodes up to [`FRAMES_PER_PASS`] whole frames off `buf` into `frames`, tallying them. Frames
/// decoded before a malformed one are kept in `frames`, for delivery before the error closes the
/// connection.
fn decode_pass(
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
    frames: &mut Vec<Frame>,
    tally: &mut Tally,
) -> Result<Pass, FrameError> {
    while frames.len() < FRAMES_PER_PASS {
        let Some(frame) = decoder.decode(buf)? else { return Ok(Pass::Drained) };
        let i = frame.class.code() as usize;
        tally.frames[i] += 1;
        tally.bytes[i] += frame.encoded_len() as u64;
        frames.push(frame);
    }
    Ok(Pass::Full)
}

/// The most read buffers a connection keeps for reuse besides the one it reads into.
///
/// Why: a buffer is reused once every frame decoded from it is gone (its subscriber took it), and
/// under a flood the reader gets ahead of the subscribers by a buffer or two. Memory: at most
/// `SPARE_READ_BUFFERS + 1` buffers of `read_buffer_bytes` + [`MAX_RECORD_BYTES`] per connection
/// while it streams, one when it does not (see [`ReadBuffers::after_read`]), besides buffers
/// still held by frames in the class channels (bounded by their capacity).
const SPARE_READ_BUFFERS: usize = 3;

/// The read buffers of one connection.
///
/// Records are opened in place and frames decoded straight out of the buffer they were read
/// into, so the frames share it. When it is nearly full the reader moves to another one; one
/// whose frames are all gone is taken back rather than freed, as allocating a fresh buffer for
/// every read made glibc map and unmap memory again and again (TLB shootdowns and page faults:
/// a quarter of the reader's time in the 4 KiB benchmark).
struct ReadBuffers {
    /// The size of every buffer: a read of `chunk` bytes fits behind a partial record.
    size: usize,
    /// Empty handles on earlier buffers, oldest first.
    spare: VecDeque<BytesMut>,
}

impl ReadBuffers {
    fn new(chunk: usize) -> Self {
        Self { size: chunk + MAX_RECORD_BYTES, spare: VecDeque::with_capacity(SPARE_READ_BUFFERS) }
    }

    /// Moves what is left in `raw` (a partial record) to a buffer with room for a full read:
    /// a spare one nobody else holds any more, or a new one.
    fn renew(&mut self, raw: &mut BytesMut) {
        let reclaimed = (0..self.spare.len()).find(|&i| self.spare[i].try_reclaim(self.size));
        let mut fresh = match reclaimed.and_then(|i| self.spare.remove(i)) {
            Some(spare) => spare,
            None => BytesMut::with_capacity(self.size),
        };
        fresh.extend_from_slice(raw);
        let mut old = std::mem::replace(raw, fresh);
        old.clear();
        if self.spare.len() == SPARE_READ_BUFFERS {
            self.spare.pop_front();
        }
        self.spare.push_back(old);
    }

    /// A read much shorter than `chunk` drained the socket: the link is not streaming, so the
    /// spares go (an idle link keeps one buffer, not `SPARE_READ_BUFFERS + 1`).
    fn after_read(&mut self, n: usize, chunk: usize) {
        if n < chunk / 4 {
            self.spare.clear();
        }
    }
}

/// Frames and bytes received per class during one decode pass, recorded once per pass.
#[derive(Default)]
struct Tally {
    frames: [u64; 5],
    bytes: [u64; 5],
}

impl Inner {
    /// Handshake then frames; see [`Transport::serve_inbound`](super::Transport::serve_inbound).
    pub(super) async fn serve<S>(
        &self,
        mut stream: S,
        handshake_permit: OwnedSemaphorePermit,
    ) -> Result<NodeId, InboundError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut buf = BytesMut::new();
        let handshake = handshake::respond(&mut stream, &mut buf, &self.keys, &self.local);
        let result = match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(HandshakeFailure::Timeout),
        };
        drop(handshake_permit);
        let (peer, link, opener) = match result {
            Ok((established, link, opener)) => (established.peer, link, opener),
            Err(failure) => {
                self.metrics.handshake_failed(&failure);
                if self.may_warn() {
                    tracing::warn!(reason = failure.as_str(), error = %failure, "internode inbound handshake refused");
                }
                return Err(failure.into());
            }
        };
        let Ok(_connection_permit) = Arc::clone(&self.connection_slots).try_acquire_owned() else {
            self.metrics.handshake_failed(&HandshakeFailure::Busy);
            return Err(HandshakeFailure::Busy.into());
        };
        let _gauge = ConnGauge::new(&self.metrics, ConnState::Accepted);
        let key = (peer.name.clone(), link);
        let (conn_id, close) = self.register_inbound(&key);
        tracing::debug!(peer = %peer, %link, "internode inbound link authenticated");
        let result = self.read_frames(&mut stream, buf, opener, &peer, link, &close).await;
        self.inbound_conns.remove_if(&key, |_, (id, _)| *id == conn_id);
        result.map(|()| peer)
    }

    /// Records the connection as the current `link` from the node, closing the previous one of
    /// that link (the peer dials a new connection of a link only when it lost the old one).
    fn register_inbound(&self, key: &(String, Link)) -> (u64, Arc<Notify>) {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        if let Some((_, old)) = self.inbound_conns.insert(key.clone(), (id, Arc::clone(&close))) {
            old.notify_one();
        }
        (id, close)
    }

    /// Reads records, opens them and delivers their frames until EOF, an error, replacement or
    /// shutdown. `raw` holds what the handshake read past its last message (the first records).
    async fn read_frames<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        mut raw: BytesMut,
        mut opener: Opener,
        from: &NodeId,
        link: Link,
        close: &Notify,
    ) -> Result<(), InboundError> {
        let decoder =
            FrameDecoder::new(self.config.max_frame_bytes).with_class_limits(&self.config.queue.capacity_bytes);
        let senders: [Option<mpsc::Sender<Inbound>>; 5] =
            std::array::from_fn(|i| lock(&self.inbound[i].sender).clone());
        let mut shutdown = self.shutdown.subscribe();
        let chunk = self.config.read_buffer_bytes;
        let mut frames = Vec::with_capacity(FRAMES_PER_PASS);
        // Frames a chaos `Delay` fault holds back; empty (and free) unless one is installed.
        let mut held = HeldIn { inbound: self, from, line: DelayLine::default() };
        let mut read_buffers = ReadBuffers::new(chunk);
        // Opened frame bytes not decoded yet: a frame whose rest is in records still to come.
        let mut buf = BytesMut::new();
        loop {
            // The records are opened in place in `raw`, and their frames decoded from there.
            match opener.open_in_place(&mut raw) {
                Ok(opened) if buf.is_empty() => buf = opened,
                // Only a frame split across records gets here: the writer fills records with
                // whole frames unless one is larger than a record.
                Ok(opened) => buf.extend_from_slice(&opened),
                Err(error) => {
                    self.metrics.record_error(&error);
                    if self.may_warn() {
                        tracing::warn!(peer = %from, %error, "internode record refused; closing the connection");
                    }
                    return Err(InboundError::Record { peer: from.clone(), error });
                }
            }
            let decoded = loop {
                let mut tally = Tally::default();
                let decoded = decode_pass(&decoder, &mut buf, &mut frames, &mut tally);
                // Counted before any of the pass's frames is visible to a subscriber: whoever
                // has received a frame also sees it in the counters and the snapshot.
                self.record(from, &tally);
                let now = Instant::now();
                for frame in frames.drain(..) {
                    match self.faults.decide(&from.name, Direction::In) {
                        Verdict::Pass if held.line.is_empty() => {}
                        Verdict::Pass => {
                            held.line.push(now, Duration::ZERO, frame.encoded_len(), frame);
                            continue;
                        }
                        Verdict::Drop => {
                            self.count_inbound_drop(from, frame.class, DropCause::FaultInjected);
                            continue;
                        }
                        Verdict::Delay(delay) => {
                            held.line.push(now, delay, frame.encoded_len(), frame);
                            continue;
                        }
                    }
                    let i = frame.class.code() as usize;
                    self.deliver(from, frame, &senders[i]);
                    // A chunk holds up to ~1000 small frames and the socket always has more
                    // under load: without yielding now and then, the reader would starve
                    // the subscribers on its worker and fill their channels with drops.
                    tokio::task::consume_budget().await;
                }
                match decoded {
                    Ok(Pass::Full) => {}
                    Ok(Pass::Drained) => break Ok(()),
                    Err(error) => break Err(error),
                }
            };
            if let Err(error) = decoded {
                self.metrics.frame_error(&error);
                if self.may_warn() {
                    tracing::warn!(peer = %from, %error, "internode frame refused; closing the connection");
                }
                return Err(InboundError::Frame { peer: from.clone(), error });
            }
            if raw.capacity() - raw.len() < chunk / 2 {
                read_buffers.renew(&mut raw);
            }
            if link == Link::Bulk {
                // One read per poll: the per-frame budget above bounds frames, not bytes; with
                // large frames one poll could copy megabytes while the priority link's reader on
                // this worker waits (the I/O driver only runs between polls).
                tokio::task::yield_now().await;
            }
            // A full delay line stops reading: the sender's writes back up, as behind a full
            // TCP window.
            let room = held.line.has_room();
            // At most `chunk` per read, though the buffer has room for more: one read is what
            // the next poll decrypts, and a bigger one would hold the priority link's reader on
            // this worker longer.
            let mut space = (&mut raw).limit(chunk);
            let read = tokio::select! {
                biased;
                () = shutdown_signalled(&mut shutdown) => return Ok(()),
                () = close.notified() => return Ok(()),
                () = sleep_until_due(held.line.next_due()) => {
                    for frame in held.line.pop_due(Instant::now(), Frame::encoded_len) {
                        let i = frame.class.code() as usize;
                        self.deliver(from, frame, &senders[i]);
                    }
                    continue;
                }
                read = stream.read_buf(&mut space), if room => read,
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(n) => read_buffers.after_read(n, chunk),
                Err(error) => return Err(InboundError::Io { peer: from.clone(), error }),
            }
        }
    }

    /// Counts what one decode pass received, globally and against the peer.
    fn record(&self, from: &NodeId, tally: &Tally) {
        let peer = self.peers.get(&from.name);
        for i in 0..5 {
            if tally.frames[i] > 0 {
                self.metrics.frames_in[i].inc_by(tally.frames[i]);
                self.metrics.bytes_in[i].inc_by(tally.bytes[i]);
                if let Some(peer) = &peer {
                    peer.stats.bytes_in[i].fetch_add(tally.bytes[i], Ordering::Relaxed);
                }
            }
        }
    }

    /// Hands one frame (already past the fault filter) to its class's channel, never waiting
    /// for the consumer.
    fn deliver(&self, from: &NodeId, frame: Frame, sender: &Option<mpsc::Sender<Inbound>>) {
        let class = frame.class;
        let subscribed = self.inbound[class.code() as usize].subscribed.load(Ordering::Acquire);
        let Some(sender) = sender.as_ref().filter(|_| subscribed) else {
            return self.count_inbound_drop(from, class, DropCause::NoSubscriber);
        };
        let inbound = Inbound { from: from.clone(), kind: frame.kind, payload: frame.payload };
        match sender.try_send(inbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.count_inbound_drop(from, class, DropCause::InboundFull),
            Err(mpsc::error::TrySendError::Closed(_)) => self.count_inbound_drop(from, class, DropCause::NoSubscriber),
        }
    }

    fn count_inbound_drop(&self, from: &NodeId, class: Class, cause: DropCause) {
        let peer = self.peers.get(&from.name);
        self.count_drop(peer.as_deref().map(|p| &**p), class, cause, 1);
    }
}

/// Frames a delay fault holds on one inbound connection; dropping it (the connection ended)
/// counts what is left as `connection_lost`, so no received frame goes uncounted.
struct HeldIn<'a> {
    inbound: &'a Inner,
    from: &'a NodeId,
    line: DelayLine<Frame>,
}

impl Drop for HeldIn<'_> {
    fn drop(&mut self) {
        for frame in self.line.take_all() {
            self.inbound.count_inbound_drop(self.from, frame.class, DropCause::ConnectionLost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_are_reused_once_their_frames_are_gone_and_dropped_when_idle() {
        let chunk = 1024;
        let mut buffers = ReadBuffers::new(chunk);
        let mut raw = BytesMut::new();
        buffers.renew(&mut raw);
        let first = raw.as_ptr();
        assert!(raw.capacity() >= chunk + MAX_RECORD_BYTES);
        // A read: a frame taken off the front (held by a subscriber), a partial record left.
        raw.extend_from_slice(&[1; 600]);
        let held = raw.split_to(500).freeze();
        buffers.renew(&mut raw);
        assert_eq!(&raw[..], &[1; 100], "the partial record moves along");
        assert_ne!(raw.as_ptr(), first);
        let second = raw.as_ptr();
        // The first buffer is still held: a third one; then the first comes back once free.
        raw.clear();
        buffers.renew(&mut raw);
        assert!(raw.as_ptr() != first && raw.as_ptr() != second);
        drop(held);
        raw.clear();
        buffers.renew(&mut raw);
        assert_eq!(raw.as_ptr(), first, "the first buffer is reused");
        assert!(buffers.spare.len() <= SPARE_READ_BUFFERS);
        buffers.after_read(chunk, chunk);
        assert!(!buffers.spare.is_empty(), "a full read keeps the spares");
        buffers.after_read(10, chunk);
        assert!(buffers.spare.is_empty(), "a short read drops them");
    }
}
