//! The transport's limits and timeouts, each with the reason for its default.

use std::num::NonZeroU32;
use std::time::Duration;

use thiserror::Error;

use crate::frame::{HEADER_BYTES, MAX_FRAME_BYTES};
use crate::queue::{Class, ClassCapacities, MAX_CLASS_CAPACITY, QueueConfig, QueueConfigError};

/// The longest accepted timeout, backoff or grace period.
///
/// Why: every wait in the transport must be bounded; a value above five minutes is a typo (a
/// millisecond count given as seconds), not a tuning choice.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The largest accepted write batch, in frames.
///
/// Why: the batch is a `Vec` sized per drain; beyond this the encode buffer, not the syscall
/// count, dominates.
pub const MAX_WRITE_BATCH_FRAMES: usize = 65_536;

/// The largest accepted write batch or read buffer, in bytes (16 MiB, one maximal frame).
pub const MAX_IO_BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// The smallest accepted write batch or read buffer, in bytes.
///
/// Why: below a page, every frame costs a syscall and throughput collapses.
pub const MIN_IO_BUFFER_BYTES: usize = 4 * 1024;

/// Configuration of a [`Transport`](super::Transport). `Default` is what a node runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Per-peer, per-class send queue capacities and drain weights (SPEC 5.2 table).
    pub queue: QueueConfig,
    /// Capacity of the inbound channel of each class, in frames (default: the same as the send
    /// queue table). A frame arriving while its class's channel is full is dropped and counted
    /// (`reason="inbound_full"`): the reader never waits for a slow consumer, so one stuck
    /// subscriber cannot stall the other classes of the connection.
    pub inbound_capacity: ClassCapacities,
    /// The largest frame `len` (class + kind + payload) sent or accepted, in bytes (default
    /// [`MAX_FRAME_BYTES`], 16 MiB): bounds the memory one forged length can claim.
    pub max_frame_bytes: usize,
    /// How long one TCP connect may take (default 2 s). Loopback and LAN connects take
    /// milliseconds; a black-holed address must not hold the link for the kernel's ~2 min of
    /// SYN retries.
    pub connect_timeout: Duration,
    /// How long the whole three-message handshake may take, on either side (default 3 s). Bounds
    /// how long a silent or slow connection holds one of the accept loop's handshake slots.
    pub handshake_timeout: Duration,
    /// The first reconnect delay after a failed dial or a lost connection (default 100 ms): a
    /// restarted peer is reached again within a fraction of a second.
    pub reconnect_backoff_min: Duration,
    /// The largest reconnect delay (default 5 s): a dead peer costs one dial per 5 s until
    /// membership declares it down (SWIM detects within ~5 s).
    pub reconnect_backoff_max: Duration,
    /// Dial attempts per second over all peers together, enforced with governor (default 20,
    /// also the burst). Why: when a whole rack comes back, every link redials at once; the
    /// limit spreads the storm of connects and handshakes (each costs two HMACs on both sides).
    pub reconnect_attempts_per_second: NonZeroU32,
    /// The most frames one write takes from the queues (default 512).
    pub write_batch_max_frames: usize,
    /// The most bytes one write takes from the queues (default 64 KiB; one frame larger than
    /// this still goes out alone). Why: a batch is what a newly queued raft frame may wait
    /// behind; 64 KiB keeps that wait to tens of microseconds on loopback while still cutting
    /// the syscall count of small frames by ~100x. See docs/BENCHMARKS.md.
    pub write_batch_max_bytes: usize,
    /// The read buffer of an accepted connection, in bytes (default 64 KiB): how much one
    /// `read` syscall can return.
    pub read_buffer_bytes: usize,
    /// `SO_SNDBUF` of both dialled links in bytes, or `None` for the kernel's autotuning
    /// (default 64 KiB, which Linux doubles to 128 KiB). Why: the class priorities only order
    /// frames still in our queues; bytes already in the kernel go first. Autotuning grows the
    /// send buffer to `tcp_wmem` max (4 MiB): on one shared connection a raft heartbeat waited
    /// behind megabytes of a `user` flood (p99 14 ms on loopback, docs/BENCHMARKS.md). Raft now
    /// has its own link, but on the bulk link a `pg` or `registry` frame still waits behind the
    /// `user` bytes in the kernel, and on the priority link a `control` frame behind raft's.
    /// 128 KiB covers the bandwidth-delay product of a 1 Gbit/s LAN at 1 ms RTT.
    pub socket_send_buffer_bytes: Option<u32>,
    /// `SO_RCVBUF` of accepted links in bytes (set on the listener, which accepted sockets
    /// inherit), or `None` for the kernel's autotuning (default: see docs/BENCHMARKS.md). Why:
    /// autotuning grows a flooded receive buffer to `tcp_rmem` max (32 MiB here), the other
    /// half of the kernel queue a bulk-link frame waits behind. Linux doubles the value and caps
    /// it at `net.core.rmem_max`.
    pub socket_recv_buffer_bytes: Option<u32>,
    /// How long [`Transport::shutdown`](super::Transport::shutdown) lets writers flush their
    /// queues before aborting every task (default 1 s).
    pub shutdown_grace: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            queue: QueueConfig::default(),
            inbound_capacity: ClassCapacities::default(),
            max_frame_bytes: MAX_FRAME_BYTES,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(3),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            reconnect_attempts_per_second: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            write_batch_max_frames: 512,
            write_batch_max_bytes: 64 * 1024,
            read_buffer_bytes: 64 * 1024,
            socket_send_buffer_bytes: Some(64 * 1024),
            socket_recv_buffer_bytes: Some(256 * 1024),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// A [`TransportConfig`] value out of bounds; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TransportConfigError {
    /// A queue capacity or weight is out of bounds.
    #[error("queue.{0}")]
    Queue(#[from] QueueConfigError),
    /// A field is outside its accepted range.
    #[error("{field}: {value} is outside {range}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The configured value, printed.
        value: String,
        /// The accepted range, printed.
        range: String,
    },
}

fn check_range<T: PartialOrd + std::fmt::Debug>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), TransportConfigError> {
    if value < min || value > max {
        return Err(TransportConfigError::OutOfRange {
            field,
            value: format!("{value:?}"),
            range: format!("{min:?}..={max:?}"),
        });
    }
    Ok(())
}

impl TransportConfig {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), TransportConfigError> {
        self.queue.validate()?;
        for class in Class::ALL {
            let field = match class {
                Class::Control => "inbound_capacity.control",
                Class::Raft => "inbound_capacity.raft",
                Class::Pg => "inbound_capacity.pg",
                Class::Registry => "inbound_capacity.registry",
                Class::User => "inbound_capacity.user",
            };
            check_range(field, self.inbound_capacity.get(class), 1, MAX_CLASS_CAPACITY)?;
        }
        check_range("max_frame_bytes", self.max_frame_bytes, HEADER_BYTES, MAX_FRAME_BYTES)?;
        let millisecond = Duration::from_millis(1);
        check_range("connect_timeout", self.connect_timeout, millisecond, MAX_TIMEOUT)?;
        check_range("handshake_timeout", self.handshake_timeout, millisecond, MAX_TIMEOUT)?;
        check_range("reconnect_backoff_min", self.reconnect_backoff_min, millisecond, MAX_TIMEOUT)?;
        check_range("reconnect_backoff_max", self.reconnect_backoff_max, self.reconnect_backoff_min, MAX_TIMEOUT)?;
        check_range("write_batch_max_frames", self.write_batch_max_frames, 1, MAX_WRITE_BATCH_FRAMES)?;
        check_range("write_batch_max_bytes", self.write_batch_max_bytes, MIN_IO_BUFFER_BYTES, MAX_IO_BUFFER_BYTES)?;
        check_range("read_buffer_bytes", self.read_buffer_bytes, MIN_IO_BUFFER_BYTES, MAX_IO_BUFFER_BYTES)?;
        if let Some(bytes) = self.socket_send_buffer_bytes {
            check_range("socket_send_buffer_bytes", bytes as usize, MIN_IO_BUFFER_BYTES, MAX_IO_BUFFER_BYTES)?;
        }
        if let Some(bytes) = self.socket_recv_buffer_bytes {
            check_range("socket_recv_buffer_bytes", bytes as usize, MIN_IO_BUFFER_BYTES, MAX_IO_BUFFER_BYTES)?;
        }
        check_range("shutdown_grace", self.shutdown_grace, Duration::ZERO, MAX_TIMEOUT)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        TransportConfig::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let mut config = TransportConfig { write_batch_max_bytes: 10, ..TransportConfig::default() };
        let error = config.validate().unwrap_err();
        assert!(error.to_string().starts_with("write_batch_max_bytes: 10"), "{error}");

        config = TransportConfig { reconnect_backoff_max: Duration::from_millis(1), ..TransportConfig::default() };
        assert!(config.validate().unwrap_err().to_string().starts_with("reconnect_backoff_max"));

        config = TransportConfig::default();
        config.inbound_capacity.user = 0;
        assert!(config.validate().unwrap_err().to_string().starts_with("inbound_capacity.user"));

        config = TransportConfig::default();
        config.queue.capacity.raft = 0;
        assert!(config.validate().unwrap_err().to_string().starts_with("queue.capacity.raft"));

        config = TransportConfig { max_frame_bytes: MAX_FRAME_BYTES + 1, ..TransportConfig::default() };
        assert!(config.validate().is_err());
    }
}
