//! The handshake on a fresh connection: the three [`secure`](crate::secure) messages (`Hello`,
//! `HelloAck`, `Confirm`, protocol version 2), each inside a `control` frame
//! (`[len u32][class 0][kind][message]`), read with a [`FrameDecoder`] whose maximum is
//! [`MAX_HANDSHAKE_MESSAGE_BYTES`], so a forged length is refused before anything is allocated
//! for it. What follows on the connection is encrypted records only.
//!
//! The frame `kind` of the initiator's `Hello` names the link the connection opens:
//! [`KIND_HELLO`] for the priority link (`control` + `raft`), [`KIND_HELLO_BULK`] for the bulk
//! link (`pg` + `registry` + `user`). The kind is part of the Noise prologue, so a hello moved to
//! the other link fails; the responder still delivers every frame by its class.
//!
//! The drivers ([`initiate`], [`respond`]) work over any `AsyncRead + AsyncWrite` (a TCP stream
//! or an in-memory duplex in tests) and leave whatever followed the last handshake message (the
//! first records) in the read buffer, for the record reader. Timeouts are the caller's.

use std::io;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NodeId;
use crate::auth::HandshakeError;
use crate::frame::{FrameDecoder, FrameError, encode_into};
use crate::queue::Class;
use crate::secure::{Initiator, Keyring, Opener, Peer, Responder, Sealer};

use super::route::Link;

/// Frame `kind` of the initiator's `Hello` (see [`crate::secure`]) on the priority link
/// (`control` + `raft`).
pub const KIND_HELLO: u8 = 1;
/// Frame `kind` of the initiator's `Hello` (see [`crate::secure`]) on the bulk link (`pg` +
/// `registry` + `user`). Same message as [`KIND_HELLO`]; only the kind differs.
pub const KIND_HELLO_BULK: u8 = 4;
/// Frame `kind` of the responder's `HelloAck`.
pub const KIND_HELLO_ACK: u8 = 2;
/// Frame `kind` of the initiator's `Confirm` (its first encrypted message).
pub const KIND_PROOF: u8 = 3;

/// The largest handshake frame `len` accepted, in bytes.
///
/// Why: the largest message, a `Hello` with a 255-byte cluster name and a 255-byte node name, is
/// 574 bytes plus the two header bytes; 1 KiB leaves room and caps what an unauthenticated stranger can make the node
/// buffer per connection.
pub const MAX_HANDSHAKE_MESSAGE_BYTES: usize = 1024;

/// How much the handshake reader asks the socket for at a time.
const HANDSHAKE_READ_CHUNK: usize = 1024;

/// Why a handshake did not complete; [`as_str`](Self::as_str) is the `reason` label of
/// `cohort_internode_handshake_failures_total`.
#[derive(Debug, Error)]
pub enum HandshakeFailure {
    /// The peer's message was refused by the [`auth`](crate::auth) state machine (bad magic,
    /// version, cluster, proof, self connection, malformed message).
    #[error(transparent)]
    Refused(#[from] HandshakeError),
    /// `oversized`: a handshake frame's length prefix is above [`MAX_HANDSHAKE_MESSAGE_BYTES`].
    #[error("handshake message of {len} bytes exceeds {MAX_HANDSHAKE_MESSAGE_BYTES}")]
    Oversized {
        /// The announced length.
        len: u64,
    },
    /// `unexpected_peer`: the node that answered a dial is not the one dialled (an address
    /// reused by another node).
    #[error("dialled {expected:?} but {found:?} answered")]
    UnexpectedPeer {
        /// The name we dialled.
        expected: String,
        /// The name that answered.
        found: String,
    },
    /// `timeout`: the handshake did not finish within `handshake_timeout`.
    #[error("handshake timed out")]
    Timeout,
    /// `closed`: the peer closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
    /// `io`: reading or writing the socket failed.
    #[error("handshake i/o: {0}")]
    Io(#[from] io::Error),
    /// `busy`: too many connections are handshaking (or established) already.
    #[error("too many concurrent connections")]
    Busy,
}

impl HandshakeFailure {
    /// Every reason label: the [`HandshakeError`] ones, then the transport's own, so the counters
    /// can be exported at 0 from boot.
    pub const REASONS: [&'static str; 12] = [
        HandshakeError::REASONS[0],
        HandshakeError::REASONS[1],
        HandshakeError::REASONS[2],
        HandshakeError::REASONS[3],
        HandshakeError::REASONS[4],
        HandshakeError::REASONS[5],
        "oversized",
        "unexpected_peer",
        "timeout",
        "closed",
        "io",
        "busy",
    ];

    /// The metric `reason` label.
    pub fn as_str(&self) -> &'static str {
        match self {
            HandshakeFailure::Refused(error) => error.as_str(),
            HandshakeFailure::Oversized { .. } => "oversized",
            HandshakeFailure::UnexpectedPeer { .. } => "unexpected_peer",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Io(_) => "io",
            HandshakeFailure::Busy => "busy",
        }
    }
}

/// Encodes one handshake message as a `control` frame.
pub(crate) fn encode_message(kind: u8, message: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(message.len() + 6);
    // Our own messages are at most 592 bytes: the size check cannot fail.
    let encoded = encode_into(&mut out, Class::Control, kind, message, MAX_HANDSHAKE_MESSAGE_BYTES);
    debug_assert!(encoded.is_ok());
    out
}

/// Takes the next handshake message of `kind` off `buf`: `Ok(None)` while incomplete, an error
/// for an oversized, malformed or unexpected frame. Pure: no I/O.
pub(crate) fn take_message(buf: &mut BytesMut, kind: u8) -> Result<Option<Bytes>, HandshakeFailure> {
    Ok(take_message_of(buf, |found| found == kind)?.map(|(_, payload)| payload))
}

/// Takes the initiator's hello off `buf`, with the link its frame kind names. Pure: no I/O.
pub(crate) fn take_hello(buf: &mut BytesMut) -> Result<Option<(Link, Bytes)>, HandshakeFailure> {
    let Some((kind, payload)) = take_message_of(buf, |kind| Link::from_hello_kind(kind).is_some())? else {
        return Ok(None);
    };
    let link = Link::from_hello_kind(kind).ok_or(HandshakeError::Malformed { what: "hello kind" })?;
    Ok(Some((link, payload)))
}

/// Takes the next handshake message off `buf` if `accept` takes its kind; see [`take_message`].
fn take_message_of(buf: &mut BytesMut, accept: impl Fn(u8) -> bool) -> Result<Option<(u8, Bytes)>, HandshakeFailure> {
    let decoder = FrameDecoder::new(MAX_HANDSHAKE_MESSAGE_BYTES);
    match decoder.decode(buf) {
        Ok(None) => Ok(None),
        Ok(Some(frame)) if frame.class == Class::Control && accept(frame.kind) => Ok(Some((frame.kind, frame.payload))),
        Ok(Some(_)) => Err(HandshakeError::Malformed { what: "unexpected handshake message" }.into()),
        Err(FrameError::TooLarge { len, .. }) => Err(HandshakeFailure::Oversized { len }),
        Err(FrameError::TooShort { .. }) => Err(HandshakeError::Malformed { what: "handshake frame too short" }.into()),
        Err(FrameError::UnknownClass(_)) => Err(HandshakeError::Malformed { what: "handshake frame class" }.into()),
    }
}

/// Reads until one whole handshake message of `kind` is in `buf`, and takes it.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    kind: u8,
) -> Result<Bytes, HandshakeFailure> {
    read_until(stream, buf, |buf| take_message(buf, kind)).await
}

/// Reads until `take` finds a whole message in `buf`.
async fn read_until<S: AsyncRead + Unpin, T>(
    stream: &mut S,
    buf: &mut BytesMut,
    take: impl Fn(&mut BytesMut) -> Result<Option<T>, HandshakeFailure>,
) -> Result<T, HandshakeFailure> {
    loop {
        if let Some(message) = take(buf)? {
            return Ok(message);
        }
        // The buffer never holds more than one chunk beyond a (bounded) handshake frame.
        buf.reserve(HANDSHAKE_READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Err(HandshakeFailure::Closed);
        }
    }
}

async fn write_message<S: AsyncWrite + Unpin>(stream: &mut S, kind: u8, message: &[u8]) -> io::Result<()> {
    stream.write_all(&encode_message(kind, message)).await?;
    stream.flush().await
}

/// The dialling side of `link`: sends our hello (its frame kind names the link), reads the ack
/// (checking that the node that answered is `expected_peer`), sends our confirm. Records may
/// follow on the stream right away, sealed with the returned [`Sealer`].
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    keys: &Keyring,
    own: &NodeId,
    expected_peer: &str,
    link: Link,
) -> Result<(Peer, Sealer), HandshakeFailure> {
    let (initiator, hello) = Initiator::start(keys, own, link.hello_kind())?;
    write_message(stream, link.hello_kind(), &hello).await?;
    let mut buf = BytesMut::new();
    let ack = read_message(stream, &mut buf, KIND_HELLO_ACK).await?;
    let (peer, confirm, sealer) = initiator.on_ack(&ack)?;
    if peer.peer.name != expected_peer {
        return Err(HandshakeFailure::UnexpectedPeer { expected: expected_peer.to_owned(), found: peer.peer.name });
    }
    write_message(stream, KIND_PROOF, &confirm).await?;
    Ok((peer, sealer))
}

/// The accepting side: reads the hello (and from its kind, the link), answers with our ack,
/// checks the confirm. Bytes after the confirm (the first records) stay in `buf`, to be opened
/// with the returned [`Opener`].
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    keys: &Keyring,
    own: &NodeId,
) -> Result<(Peer, Link, Opener), HandshakeFailure> {
    let (link, hello) = read_until(stream, buf, take_hello).await?;
    let (awaiting, ack) = Responder::on_hello(keys, own, link.hello_kind(), &hello)?;
    write_message(stream, KIND_HELLO_ACK, &ack).await?;
    let confirm = read_message(stream, buf, KIND_PROOF).await?;
    let (peer, opener) = awaiting.on_confirm(&confirm)?;
    Ok((peer, link, opener))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClusterSecret;
    use proptest::prelude::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name, 1)
    }

    #[test]
    fn message_roundtrips_and_partial_input_waits() {
        let wire = encode_message(KIND_PROOF, &[7; 32]);
        let mut buf = BytesMut::from(&wire[..10]);
        assert!(take_message(&mut buf, KIND_PROOF).unwrap().is_none());
        buf.extend_from_slice(&wire[10..]);
        buf.extend_from_slice(b"next");
        assert_eq!(&take_message(&mut buf, KIND_PROOF).unwrap().unwrap()[..], [7; 32]);
        assert_eq!(&buf[..], b"next", "what follows stays for the frame reader");
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let error = take_message(&mut buf, KIND_HELLO).unwrap_err();
        assert_eq!(error.as_str(), "oversized");
        assert!(buf.capacity() < 1024 * 1024, "nothing reserved for the forged length");
    }

    #[test]
    fn wrong_kind_or_class_is_malformed() {
        let mut buf = encode_message(KIND_PROOF, b"x");
        assert_eq!(take_message(&mut buf, KIND_HELLO).unwrap_err().as_str(), "malformed");
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 4, 1, 0][..]);
        assert_eq!(take_message(&mut buf, KIND_HELLO).unwrap_err().as_str(), "malformed");
    }

    #[test]
    fn reasons_are_unique_and_cover_every_failure() {
        let mut reasons = HandshakeFailure::REASONS.to_vec();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), HandshakeFailure::REASONS.len());
        for failure in [
            HandshakeFailure::Oversized { len: 1 },
            HandshakeFailure::UnexpectedPeer { expected: "a".into(), found: "b".into() },
            HandshakeFailure::Timeout,
            HandshakeFailure::Closed,
            HandshakeFailure::Io(io::ErrorKind::Other.into()),
            HandshakeFailure::Busy,
        ] {
            assert!(HandshakeFailure::REASONS.contains(&failure.as_str()));
        }
    }

    #[tokio::test]
    async fn initiator_and_responder_agree_over_a_duplex_on_the_link_dialled() {
        for link in Link::ALL {
            let keys = Keyring::new("c", &ClusterSecret::generate(), None);
            let (mut a, mut b) = tokio::io::duplex(4096);
            let responder_keys = keys.clone();
            let responder = tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let (peer, link, mut opener) = respond(&mut b, &mut buf, &responder_keys, &node("b")).await?;
                // The first record may still be on its way.
                let mut plain = BytesMut::new();
                while opener.open(&mut buf, &mut plain).map_err(|_| HandshakeFailure::Closed)? == 0 {
                    if b.read_buf(&mut buf).await? == 0 {
                        return Err(HandshakeFailure::Closed);
                    }
                }
                Ok::<_, HandshakeFailure>((peer, link, plain))
            });
            let (at_a, mut sealer) = initiate(&mut a, &keys, &node("a"), "b", link).await.unwrap();
            let mut record = BytesMut::new();
            sealer.seal(b"frames", &mut record).unwrap();
            a.write_all(&record).await.unwrap();
            assert_eq!(at_a.peer.name, "b");
            let (at_b, responder_link, plain) = responder.await.unwrap().unwrap();
            assert_eq!((at_b.peer.name.as_str(), responder_link), ("a", link));
            assert_eq!(&plain[..], b"frames");
        }
    }

    #[test]
    fn hello_of_either_link_kind_is_taken_and_anything_else_first_is_malformed() {
        let mut buf = encode_message(KIND_HELLO_BULK, b"hello");
        let (link, payload) = take_hello(&mut buf).unwrap().unwrap();
        assert_eq!((link, &payload[..]), (Link::Bulk, &b"hello"[..]));
        let mut buf = encode_message(KIND_HELLO, b"hello");
        assert_eq!(take_hello(&mut buf).unwrap().unwrap().0, Link::Priority);
        let mut buf = encode_message(KIND_PROOF, b"proof");
        assert_eq!(take_hello(&mut buf).unwrap_err().as_str(), "malformed");
    }

    #[tokio::test]
    async fn initiator_refuses_a_node_it_did_not_dial() {
        let keys = Keyring::new("c", &ClusterSecret::generate(), None);
        let (mut a, mut b) = tokio::io::duplex(4096);
        let responder_keys = keys.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let _ = respond(&mut b, &mut buf, &responder_keys, &node("imposter")).await;
        });
        let error = initiate(&mut a, &keys, &node("a"), "b", Link::Bulk).await.unwrap_err();
        assert_eq!(error.as_str(), "unexpected_peer");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn responder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (mut peer, mut ours) = tokio::io::duplex(8192);
                peer.write_all(&bytes).await.unwrap();
                drop(peer);
                let mut buf = BytesMut::new();
                let keys = Keyring::new("c", &ClusterSecret::generate(), None);
                let result = respond(&mut ours, &mut buf, &keys, &node("b")).await;
                prop_assert!(result.is_err());
                prop_assert!(buf.capacity() <= 8 * 1024);
                Ok(())
            })?;
        }
    }
}
