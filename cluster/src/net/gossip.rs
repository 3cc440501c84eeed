//! The gossip socket (UDP): envelope codec, authentication, fault injection, delayed datagrams.
//!
//! Role: the only code that touches the membership actor's UDP socket. Outbound, it wraps a body
//! (a foca packet or a discovery message) in an envelope, seals it with the cluster's gossip key
//! and passes it through the node's [`FaultInjector`]; inbound, it does the same in reverse and
//! hands the actor only authenticated, fresh, well-formed envelopes that the fault plan let
//! through.
//!
//! Wire format (SPEC 5.1), encrypted inside [`crate::secure::seal_datagram`] (`version 2 | nonce
//! | XChaCha20-Poly1305(send time | envelope)`, with the per-cluster gossip key of the
//! [`Keyring`]; a datagram sent more than [`GOSSIP_WINDOW_MS`] from the receiver's clock, or
//! seen before, is refused):
//!
//! ```text
//! version u8 (= 1) | kind u8 | name_len u8 | sender node name (UTF-8, 1..=255 bytes) | body
//! ```
//!
//! `kind` is `0` foca packet, `1` discover ("who are you?", empty body, sent to a seed's
//! `host:port` whose node name we do not know yet), `2` discover reply (the seed's postcard-encoded
//! gossip identity, so the joiner can address a foca announce to it). The sender name travels
//! outside the foca packet so the receiver can apply `FaultInjector::decide(sender, In)` before
//! foca decodes anything.
//!
//! Cluster separation: the gossip key is derived from the secret and the cluster name (see
//! [`crate::secure`]), so two clusters sharing a secret but not a name never accept each other's
//! datagrams, at zero bytes per packet.
//!
//! Invariants: lengths are checked before reading; nothing here panics on any datagram; every
//! refused datagram is counted in `cohort_gossip_dropped_total{reason}` or
//! `cohort_gossip_auth_failures_total{reason}` (`truncated`, `version_mismatch`, `bad_tag`,
//! `stale`, `replayed`); the replay guard is bounded ([`GOSSIP_REPLAY_CAPACITY`]); datagrams held back by a `Delay` verdict are
//! bounded by a configured count, overflow is dropped and counted (`delay_overflow`); sends never
//! block the actor (`try_send_to`; a full socket buffer is a counted `send_failed` drop, which SWIM
//! tolerates like any lost datagram).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use thiserror::Error;
use tokio::net::UdpSocket;

use crate::faults::{Direction, Verdict};
use crate::net::FaultInjector;
use crate::secure::{self, DATAGRAM_OVERHEAD, DatagramError, Keyring, ReplayGuard};

/// How far a datagram's send time may be from the receiver's clock, in milliseconds.
///
/// Why: it bounds for how long a captured datagram could be replayed (never twice: the replay
/// guard remembers what it accepted within the window) and so how long the guard must remember;
/// 30 s is far above the clock skew of NTP-synchronised machines and a chaos delay.
pub const GOSSIP_WINDOW_MS: u64 = 30_000;

/// How many accepted datagrams the replay guard remembers.
///
/// Why: at about 100 bytes an entry this caps it near 2 MiB; beyond 16,384 datagrams in the
/// window (550 a second, far above a 100-node cluster's gossip to one node) the guard refuses the
/// oldest send times as stale rather than forget them, which SWIM treats as loss.
pub const GOSSIP_REPLAY_CAPACITY: usize = 16_384;

/// The envelope version this build writes and accepts.
pub(crate) const ENVELOPE_VERSION: u8 = 1;

/// Bytes before the sender name: version, kind, name length.
pub(crate) const ENVELOPE_HEADER_BYTES: usize = 3;

/// The longest sender node name an envelope carries (one length byte).
pub(crate) const MAX_SENDER_NAME_BYTES: usize = 255;

/// The most bytes an envelope and its tag add to a body, whatever the sender's name.
///
/// Why it matters: foca's packet budget is the datagram budget minus this, the same on every
/// node, so a packet one node produces is never too large for another to consume.
pub(crate) const MAX_ENVELOPE_OVERHEAD: usize = ENVELOPE_HEADER_BYTES + MAX_SENDER_NAME_BYTES + DATAGRAM_OVERHEAD;

/// Every `reason` label of `cohort_gossip_dropped_total`, exported at 0 from boot.
pub(crate) const DROP_REASONS: [&str; 9] = [
    "fault_injected",
    "malformed",
    "delay_overflow",
    "too_large",
    "send_failed",
    "recv_failed",
    "rejected",
    "timer_overflow",
    "members_overflow",
];

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EnvelopeKind {
    /// A foca packet.
    Foca,
    /// "Who are you?" to a seed address; empty body.
    Discover,
    /// The answer to [`EnvelopeKind::Discover`]: the sender's encoded gossip identity.
    DiscoverReply,
}

impl EnvelopeKind {
    const fn to_byte(self) -> u8 {
        match self {
            Self::Foca => 0,
            Self::Discover => 1,
            Self::DiscoverReply => 2,
        }
    }

    const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Foca),
            1 => Some(Self::Discover),
            2 => Some(Self::DiscoverReply),
            _ => None,
        }
    }
}

/// A decoded envelope, borrowing from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    /// What the body is.
    pub(crate) kind: EnvelopeKind,
    /// The sender's node name (non-empty, at most [`MAX_SENDER_NAME_BYTES`]).
    pub(crate) sender: &'a str,
    /// The rest of the payload.
    pub(crate) body: &'a [u8],
}

/// Why an (authenticated) payload is not a valid envelope. All are counted as `malformed`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub(crate) enum EnvelopeError {
    /// Shorter than the fixed header or than its declared sender name.
    #[error("envelope of {len} bytes is truncated")]
    Truncated {
        /// The payload length.
        len: usize,
    },
    /// A version this build does not speak.
    #[error("envelope version {0} is not supported")]
    UnknownVersion(u8),
    /// A kind byte this build does not know.
    #[error("envelope kind {0} is unknown")]
    UnknownKind(u8),
    /// The sender name is empty, longer than [`MAX_SENDER_NAME_BYTES`] or not UTF-8.
    #[error("envelope sender name is empty, too long or not UTF-8")]
    BadSenderName,
}

/// Appends the envelope of `body` from `sender` to `out`.
pub(crate) fn encode_envelope(
    kind: EnvelopeKind,
    sender: &str,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    let name = sender.as_bytes();
    let Ok(name_len) = u8::try_from(name.len()) else {
        return Err(EnvelopeError::BadSenderName);
    };
    if name_len == 0 {
        return Err(EnvelopeError::BadSenderName);
    }
    out.reserve(ENVELOPE_HEADER_BYTES + name.len() + body.len());
    out.extend_from_slice(&[ENVELOPE_VERSION, kind.to_byte(), name_len]);
    out.extend_from_slice(name);
    out.extend_from_slice(body);
    Ok(())
}

/// Decodes an envelope; never panics, whatever `payload` holds.
pub(crate) fn decode_envelope(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let truncated = EnvelopeError::Truncated { len: payload.len() };
    let [version, kind, name_len, rest @ ..] = payload else {
        return Err(truncated);
    };
    if *version != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnknownVersion(*version));
    }
    let kind = EnvelopeKind::from_byte(*kind).ok_or(EnvelopeError::UnknownKind(*kind))?;
    let name_len = usize::from(*name_len);
    if name_len == 0 {
        return Err(EnvelopeError::BadSenderName);
    }
    let Some((name, body)) = rest.split_at_checked(name_len) else {
        return Err(truncated);
    };
    let sender = std::str::from_utf8(name).map_err(|_| EnvelopeError::BadSenderName)?;
    Ok(Envelope { kind, sender, body })
}

/// The gossip metrics, registered at boot with every series at 0.
#[derive(Clone)]
pub(crate) struct GossipMetrics {
    packets_in: IntCounter,
    packets_out: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    dropped: IntCounterVec,
    auth_failures: IntCounterVec,
}

impl GossipMetrics {
    /// Creates and registers `cohort_gossip_{packets,bytes,dropped,auth_failures}_total`.
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let packets = IntCounterVec::new(
            Opts::new("cohort_gossip_packets_total", "Gossip datagrams sent or received, by direction."),
            &["direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("cohort_gossip_bytes_total", "Gossip datagram bytes sent or received, by direction."),
            &["direction"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new("cohort_gossip_dropped_total", "Gossip datagrams or membership items dropped, by reason."),
            &["reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "cohort_gossip_auth_failures_total",
                "Gossip datagrams refused by their sealing: not decryptable with the cluster key, \
                 outside the time window, or seen before, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        for reason in DROP_REASONS {
            dropped.with_label_values(&[reason]);
        }
        for reason in DatagramError::REASONS {
            auth_failures.with_label_values(&[reason]);
        }
        Ok(Self {
            packets_in: packets.with_label_values(&["in"]),
            packets_out: packets.with_label_values(&["out"]),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            dropped,
            auth_failures,
        })
    }

    /// Counts one drop; `reason` must be one of [`DROP_REASONS`].
    pub(crate) fn dropped(&self, reason: &'static str) {
        self.dropped_many(reason, 1);
    }

    /// Counts `count` drops; `reason` must be one of [`DROP_REASONS`].
    pub(crate) fn dropped_many(&self, reason: &'static str, count: u64) {
        debug_assert!(DROP_REASONS.contains(&reason), "unregistered drop reason {reason}");
        if count > 0 {
            self.dropped.with_label_values(&[reason]).inc_by(count);
        }
    }
}

/// An accepted inbound envelope, owned.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// What the body is.
    pub(crate) kind: EnvelopeKind,
    /// The sender's node name.
    pub(crate) sender: String,
    /// The datagram's source address (where a discover reply goes).
    pub(crate) from: SocketAddr,
    /// The body.
    pub(crate) body: Vec<u8>,
}

/// A datagram held back by a `Delay` verdict.
enum Delayed {
    /// A sealed datagram to send.
    Out { to: SocketAddr, datagram: Vec<u8> },
    /// An accepted envelope to hand to the actor.
    In(Inbound),
}

struct DelayedEntry {
    due: Instant,
    seq: u64,
    item: Delayed,
}

impl PartialEq for DelayedEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for DelayedEntry {}
impl PartialOrd for DelayedEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DelayedEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The membership actor's UDP socket with authentication and fault injection.
pub(crate) struct GossipSocket {
    socket: UdpSocket,
    keys: Keyring,
    guard: ReplayGuard,
    faults: FaultInjector,
    metrics: GossipMetrics,
    max_datagram_bytes: usize,
    max_delayed: usize,
    /// Whether the socket is IPv6 (`[::]` is dual-stack): IPv4 peers are then sent to at their
    /// IPv4-mapped address.
    ipv6: bool,
    recv_buf: Vec<u8>,
    delayed: BinaryHeap<Reverse<DelayedEntry>>,
    delayed_seq: u64,
}

impl GossipSocket {
    /// Wraps an already bound socket; datagrams are sealed with `keys`.
    pub(crate) fn new(
        socket: UdpSocket,
        keys: Keyring,
        faults: FaultInjector,
        metrics: GossipMetrics,
        max_datagram_bytes: usize,
        max_delayed: usize,
    ) -> Self {
        let ipv6 = socket.local_addr().is_ok_and(|addr| addr.is_ipv6());
        Self {
            socket,
            ipv6,
            keys,
            guard: ReplayGuard::new(GOSSIP_WINDOW_MS, GOSSIP_REPLAY_CAPACITY),
            faults,
            metrics,
            max_datagram_bytes,
            max_delayed,
            // One extra byte tells an oversized datagram from one of exactly the budget.
            recv_buf: vec![0; max_datagram_bytes + 1],
            delayed: BinaryHeap::new(),
            delayed_seq: 0,
        }
    }

    /// The metrics this socket counts into.
    pub(crate) fn metrics(&self) -> &GossipMetrics {
        &self.metrics
    }

    /// The socket's local address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Seals `envelope` (encoded by the membership driver) and sends it to the member named
    /// `to_name` (empty when unknown: a discover to a seed address) at `to`, through the fault
    /// plan. Never blocks.
    pub(crate) fn send(&mut self, to_name: &str, to: SocketAddr, envelope: &[u8]) {
        let datagram = secure::seal_datagram(&self.keys, wall_clock_ms(), envelope, &mut rand::rng());
        if datagram.len() > self.max_datagram_bytes {
            self.metrics.dropped("too_large");
            return;
        }
        match self.faults.decide(to_name, Direction::Out) {
            Verdict::Pass => self.transmit(to, &datagram),
            Verdict::Drop => self.metrics.dropped("fault_injected"),
            Verdict::Delay(delay) => self.hold(delay, Delayed::Out { to, datagram }),
        }
    }

    fn transmit(&self, to: SocketAddr, datagram: &[u8]) {
        match self.socket.try_send_to(datagram, dialable(self.ipv6, to)) {
            Ok(_) => {
                self.metrics.packets_out.inc();
                self.metrics.bytes_out.inc_by(datagram.len() as u64);
            }
            Err(error) => {
                tracing::debug!(%to, %error, "gossip send failed");
                self.metrics.dropped("send_failed");
            }
        }
    }

    fn hold(&mut self, delay: Duration, item: Delayed) {
        if self.delayed.len() >= self.max_delayed {
            self.metrics.dropped("delay_overflow");
            return;
        }
        self.delayed_seq = self.delayed_seq.wrapping_add(1);
        let due = Instant::now() + delay;
        self.delayed.push(Reverse(DelayedEntry { due, seq: self.delayed_seq, item }));
    }

    /// When the earliest delayed datagram is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse(entry)| entry.due)
    }

    /// Sends the delayed outbound datagrams due by `now` and appends the due inbound ones to
    /// `inbound`, in due order.
    pub(crate) fn release_due(&mut self, now: Instant, inbound: &mut Vec<Inbound>) {
        while self.delayed.peek().is_some_and(|Reverse(entry)| entry.due <= now) {
            let Some(Reverse(entry)) = self.delayed.pop() else { break };
            match entry.item {
                Delayed::Out { to, datagram } => self.transmit(to, &datagram),
                Delayed::In(accepted) => inbound.push(accepted),
            }
        }
    }

    /// Receives the next datagram that passes authentication, decoding and the fault plan.
    ///
    /// Cancel-safe: the only await is `recv_from`; everything after it runs to completion.
    pub(crate) async fn recv(&mut self) -> io::Result<Inbound> {
        loop {
            let (len, from) = self.socket.recv_from(&mut self.recv_buf).await?;
            // A dual-stack socket sees IPv4 peers as `::ffff:a.b.c.d`; peers know them as IPv4.
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            self.metrics.packets_in.inc();
            self.metrics.bytes_in.inc_by(len as u64);
            if len > self.max_datagram_bytes {
                self.metrics.dropped("too_large");
                continue;
            }
            let Some(accepted) = self.accept(len, from) else { continue };
            match self.faults.decide(&accepted.sender, Direction::In) {
                Verdict::Pass => return Ok(accepted),
                Verdict::Drop => self.metrics.dropped("fault_injected"),
                Verdict::Delay(delay) => self.hold(delay, Delayed::In(accepted)),
            }
        }
    }

    /// Authenticates and decodes `recv_buf[..len]`, counting what it refuses.
    fn accept(&mut self, len: usize, from: SocketAddr) -> Option<Inbound> {
        let datagram = self.recv_buf.get(..len)?;
        let payload = match secure::open_datagram(&self.keys, wall_clock_ms(), &mut self.guard, datagram) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::debug!(%from, reason = error.as_str(), "gossip datagram failed authentication");
                self.metrics.auth_failures.with_label_values(&[error.as_str()]).inc();
                return None;
            }
        };
        match decode_envelope(&payload) {
            Ok(envelope) => Some(Inbound {
                kind: envelope.kind,
                sender: envelope.sender.to_owned(),
                from,
                body: envelope.body.to_vec(),
            }),
            Err(error) => {
                tracing::debug!(%from, %error, "malformed gossip envelope");
                self.metrics.dropped("malformed");
                None
            }
        }
    }
}

/// `to` in a form the socket can send to: an IPv6 socket reaches an IPv4 peer at its
/// IPv4-mapped address. Linux also accepts an IPv4 address on a dual-stack socket; the BSDs and
/// macOS refuse it, so the mapping is made here rather than left to the kernel.
fn dialable(socket_ipv6: bool, to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if socket_ipv6 => SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        other => other,
    }
}

/// Milliseconds since the Unix epoch by the machine's clock (gossip freshness is judged across
/// machines, so it must be the wall clock, not a monotonic one); 0 before 1970.
fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(byte: u8) -> Keyring {
        Keyring::new("prod", &crate::auth::ClusterSecret::from_bytes(&[byte; 32]).unwrap(), None)
    }

    #[test]
    fn an_ipv6_socket_reaches_ipv4_peers_at_their_mapped_address() {
        let v4: SocketAddr = "10.0.0.7:7481".parse().unwrap();
        assert_eq!(dialable(true, v4), "[::ffff:10.0.0.7]:7481".parse::<SocketAddr>().unwrap());
        assert_eq!(dialable(false, v4), v4);
        let v6: SocketAddr = "[fd00::7]:7481".parse().unwrap();
        assert_eq!(dialable(true, v6), v6);
    }

    #[test]
    fn envelope_round_trips() {
        for kind in [EnvelopeKind::Foca, EnvelopeKind::Discover, EnvelopeKind::DiscoverReply] {
            let mut out = Vec::new();
            encode_envelope(kind, "alpha", b"body", &mut out).unwrap();
            assert_eq!(out[..3], [ENVELOPE_VERSION, kind.to_byte(), 5]);
            assert_eq!(decode_envelope(&out).unwrap(), Envelope { kind, sender: "alpha", body: b"body" });
        }
    }

    #[test]
    fn envelope_refuses_bad_sender_names_when_encoding() {
        let mut out = Vec::new();
        assert_eq!(encode_envelope(EnvelopeKind::Foca, "", b"", &mut out), Err(EnvelopeError::BadSenderName));
        let long = "x".repeat(MAX_SENDER_NAME_BYTES + 1);
        assert_eq!(encode_envelope(EnvelopeKind::Foca, &long, b"", &mut out), Err(EnvelopeError::BadSenderName));
        assert!(out.is_empty());
        let longest = "x".repeat(MAX_SENDER_NAME_BYTES);
        encode_envelope(EnvelopeKind::Foca, &longest, b"", &mut out).unwrap();
        assert_eq!(out.len(), MAX_ENVELOPE_OVERHEAD - DATAGRAM_OVERHEAD);
    }

    #[test]
    fn envelope_decode_names_each_refusal() {
        assert_eq!(decode_envelope(&[1, 0]), Err(EnvelopeError::Truncated { len: 2 }));
        assert_eq!(decode_envelope(&[2, 0, 1, b'a']), Err(EnvelopeError::UnknownVersion(2)));
        assert_eq!(decode_envelope(&[1, 9, 1, b'a']), Err(EnvelopeError::UnknownKind(9)));
        assert_eq!(decode_envelope(&[1, 0, 0]), Err(EnvelopeError::BadSenderName));
        assert_eq!(decode_envelope(&[1, 0, 3, b'a']), Err(EnvelopeError::Truncated { len: 4 }));
        assert_eq!(decode_envelope(&[1, 0, 1, 0xff]), Err(EnvelopeError::BadSenderName));
        assert_eq!(
            decode_envelope(&[1, 1, 1, b'a']),
            Ok(Envelope { kind: EnvelopeKind::Discover, sender: "a", body: b"" })
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_envelope(&bytes);
        }

        #[test]
        fn decode_of_any_truncation_never_panics_and_round_trips_whole(
            name in "[a-z0-9-]{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..400,
        ) {
            let mut out = Vec::new();
            encode_envelope(EnvelopeKind::Foca, &name, &body, &mut out).unwrap();
            let decoded = decode_envelope(&out).unwrap();
            prop_assert_eq!(decoded.sender, name.as_str());
            prop_assert_eq!(decoded.body, body.as_slice());
            let cut = cut.min(out.len());
            let _ = decode_envelope(&out[..cut]);
            // A sealed datagram cut anywhere fails authentication instead of decoding.
            let keys = keys(7);
            let sealed = secure::seal_datagram(&keys, 1_000, &out, &mut rand::rng());
            let mut guard = ReplayGuard::new(GOSSIP_WINDOW_MS, 8);
            let cut = cut.min(sealed.len().saturating_sub(1));
            prop_assert!(secure::open_datagram(&keys, 1_000, &mut guard, &sealed[..cut]).is_err());
        }
    }
}
