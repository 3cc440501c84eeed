//! The internode wire frame codec (SPEC section 5.2).
//!
//! Role: cut the authenticated internode byte stream into frames and back. Layout:
//!
//! ```text
//! [len u32 big-endian][class u8][kind u8][payload: len - 2 bytes]
//! ```
//!
//! `len` counts every byte after the length prefix (class, kind and payload), so a reader knows
//! the whole frame's extent from the first 4 bytes and `len >= 2` always. `class` is a
//! [`Class`] code; `kind` is the message kind within the class, opaque to this module.
//!
//! Invariants: a frame whose `len` exceeds the decoder's maximum, or its class's limit
//! ([`FrameDecoder::with_class_limits`]), is refused with [`FrameError::TooLarge`] before a single
//! byte is reserved for it (nothing is reserved before the class byte has arrived); an unknown class code is
//! refused as soon as its byte arrives; partial input is never an error (the decoder waits for
//! more); no input makes the decoder panic. After any error the stream is out of sync and the
//! connection must be closed. This module does no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::queue::{Class, QueueItem};

/// Bytes of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;

/// Bytes of the class and kind fields that follow the length prefix.
pub const HEADER_BYTES: usize = 2;

/// The default largest accepted `len` (class + kind + payload), in bytes: 16 MiB.
///
/// Why: large enough for the largest single message the node sends (a raft snapshot chunk or a pg
/// full-sync shard, both chunked well below this), small enough that a buggy or hostile
/// authenticated peer cannot make the node reserve gigabytes with one forged length, and bounded
/// per connection so memory stays bounded per peer.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The frame's `len` is above the configured maximum (checked before allocating).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame's `len` (class + kind + payload).
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The `len` field is smaller than the class and kind bytes it must cover.
    #[error("frame length {len} is shorter than its {HEADER_BYTES}-byte header")]
    TooShort {
        /// The `len` read from the wire.
        len: u32,
    },
    /// The class byte names no [`Class`].
    #[error("unknown class code {0}")]
    UnknownClass(u8),
}

impl FrameError {
    /// A short label for metrics (`cohort_internode_frame_errors_total{reason}`).
    pub const fn as_str(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::TooShort { .. } => "too_short",
            FrameError::UnknownClass(_) => "unknown_class",
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The traffic class, which decides the queue and priority.
    pub class: Class,
    /// The message kind within the class (opaque here).
    pub kind: u8,
    /// The message body.
    pub payload: Bytes,
}

impl Frame {
    /// A frame from its parts.
    pub fn new(class: Class, kind: u8, payload: impl Into<Bytes>) -> Self {
        Self { class, kind, payload: payload.into() }
    }

    /// The bytes this frame takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        LEN_PREFIX_BYTES + HEADER_BYTES + self.payload.len()
    }

    /// Appends this frame to `dst`; see [`encode_into`].
    pub fn encode_into(&self, dst: &mut BytesMut, max_frame_bytes: usize) -> Result<(), FrameError> {
        encode_into(dst, self.class, self.kind, &self.payload, max_frame_bytes)
    }
}

impl QueueItem for Frame {
    fn wire_len(&self) -> usize {
        self.encoded_len()
    }
}

/// Appends one frame to `dst`, refusing (and writing nothing) if `len` = 2 + `payload.len()`
/// exceeds `max_frame_bytes` (use [`MAX_FRAME_BYTES`] unless configured otherwise) or `u32::MAX`.
pub fn encode_into(
    dst: &mut BytesMut,
    class: Class,
    kind: u8,
    payload: &[u8],
    max_frame_bytes: usize,
) -> Result<(), FrameError> {
    let len = payload.len().saturating_add(HEADER_BYTES);
    let too_large = || FrameError::TooLarge { len: len as u64, max: max_frame_bytes };
    if len > max_frame_bytes {
        return Err(too_large());
    }
    let wire_len = u32::try_from(len).map_err(|_| too_large())?;
    dst.reserve(LEN_PREFIX_BYTES + len);
    dst.put_u32(wire_len);
    dst.put_u8(class.code());
    dst.put_u8(kind);
    dst.put_slice(payload);
    Ok(())
}

/// An incremental frame decoder over a connection's read buffer.
///
/// The caller appends whatever the socket gave into a `BytesMut` and calls
/// [`decode`](Self::decode) until it returns `Ok(None)`.
///
/// ```
/// use bytes::BytesMut;
/// use cohort_cluster::frame::{encode_into, FrameDecoder, MAX_FRAME_BYTES};
/// use cohort_cluster::queue::Class;
///
/// let mut wire = BytesMut::new();
/// encode_into(&mut wire, Class::Raft, 7, b"append", MAX_FRAME_BYTES).unwrap();
///
/// let decoder = FrameDecoder::default();
/// let mut read_buf = BytesMut::from(&wire[..3]);
/// assert_eq!(decoder.decode(&mut read_buf), Ok(None)); // partial: wait for more
/// read_buf.extend_from_slice(&wire[3..]);
/// let frame = decoder.decode(&mut read_buf).unwrap().unwrap();
/// assert_eq!((frame.class, frame.kind, &frame.payload[..]), (Class::Raft, 7, &b"append"[..]));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    /// Per class (by code), the largest accepted `len` (at most `max_frame_bytes`).
    class_max: [usize; 5],
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames whose `len` exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes, class_max: [max_frame_bytes; 5] }
    }

    /// The same decoder, also refusing a frame whose `len` exceeds its class's byte budget (the
    /// class queues' [`ClassByteCapacities`](crate::queue::ClassByteCapacities)): a peer cannot
    /// make the node reserve more for a frame that has not arrived than the class may hold.
    pub fn with_class_limits(mut self, limits: &crate::queue::ClassByteCapacities) -> Self {
        for class in Class::ALL {
            self.class_max[usize::from(class.code())] = limits.get(class).min(self.max_frame_bytes);
        }
        self
    }

    /// The largest accepted `len`.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Takes the next whole frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` and leaves `buf`'s content as is while the frame is incomplete (having
    /// reserved room for the rest once its length is known to be acceptable). The payload shares
    /// `buf`'s memory (no copy).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = buf.get(..LEN_PREFIX_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        // Checked before anything is reserved: a forged length costs the node nothing.
        if len as u64 > self.max_frame_bytes as u64 {
            return Err(FrameError::TooLarge { len: u64::from(len), max: self.max_frame_bytes });
        }
        if (len as usize) < HEADER_BYTES {
            return Err(FrameError::TooShort { len });
        }
        let len = len as usize;
        // Nothing is reserved before the class is known: its limit may be below the maximum.
        let Some(&code) = buf.get(LEN_PREFIX_BYTES) else { return Ok(None) };
        let class = Class::try_from(code).map_err(|_| FrameError::UnknownClass(code))?;
        let class_max = self.class_max[usize::from(class.code())];
        if len > class_max {
            return Err(FrameError::TooLarge { len: len as u64, max: class_max });
        }
        let total = LEN_PREFIX_BYTES + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_PREFIX_BYTES);
        let code = buf.get_u8();
        let class = Class::try_from(code).map_err(|_| FrameError::UnknownClass(code))?;
        let kind = buf.get_u8();
        let payload = buf.split_to(len - HEADER_BYTES).freeze();
        Ok(Some(Frame { class, kind, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ClassByteCapacities;
    use proptest::prelude::*;

    #[test]
    fn a_frame_over_its_class_limit_is_refused_before_anything_is_reserved() {
        let limits = ClassByteCapacities { control: 1024, ..ClassByteCapacities::default() };
        let decoder = FrameDecoder::new(MAX_FRAME_BYTES).with_class_limits(&limits);
        // A control frame claiming 1 MiB: refused once its class byte is in.
        let mut buf = BytesMut::from(&(1u32 << 20).to_be_bytes()[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "waits for the class byte");
        assert!(buf.capacity() < 4096, "nothing reserved before the class is known");
        buf.extend_from_slice(&[Class::Control.code()]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::TooLarge { len: 1 << 20, max: 1024 }));
        assert!(buf.capacity() < 4096);
        // The same length is fine for raft (32 MiB budget, 16 MiB frames).
        let mut buf = BytesMut::from(&(1u32 << 20).to_be_bytes()[..]);
        buf.extend_from_slice(&[Class::Raft.code()]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        (0..5usize, any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(c, kind, payload)| Frame::new(Class::ALL[c], kind, payload))
    }

    fn decode_all(decoder: &FrameDecoder, buf: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn empty_payload_roundtrips() {
        let mut buf = BytesMut::new();
        encode_into(&mut buf, Class::Control, 0, b"", MAX_FRAME_BYTES).unwrap();
        assert_eq!(&buf[..], [0, 0, 0, 2, 0, 0]);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame, Frame::new(Class::Control, 0, Bytes::new()));
        assert!(buf.is_empty());
    }

    #[test]
    fn wire_layout_is_big_endian_len_then_class_kind_payload() {
        let mut buf = BytesMut::new();
        Frame::new(Class::User, 9, &b"abc"[..]).encode_into(&mut buf, MAX_FRAME_BYTES).unwrap();
        assert_eq!(&buf[..], [0, 0, 0, 5, 4, 9, b'a', b'b', b'c']);
        assert_eq!(Frame::new(Class::User, 9, &b"abc"[..]).wire_len(), buf.len());
    }

    #[test]
    fn encode_refuses_payload_over_max_and_writes_nothing() {
        let mut buf = BytesMut::new();
        let error = encode_into(&mut buf, Class::Pg, 1, &[0; 9], 10).unwrap_err();
        assert_eq!(error, FrameError::TooLarge { len: 11, max: 10 });
        assert!(buf.is_empty());
        encode_into(&mut buf, Class::Pg, 1, &[0; 8], 10).unwrap();
    }

    #[test]
    fn unknown_class_is_refused_as_soon_as_its_byte_arrives() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 100, 5][..]);
        let error = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(error, FrameError::UnknownClass(5));
        assert_eq!(error.as_str(), "unknown_class");
    }

    #[test]
    fn length_shorter_than_header_is_refused() {
        for len in 0..2u8 {
            let mut buf = BytesMut::from(&[0, 0, 0, len][..]);
            assert_eq!(FrameDecoder::default().decode(&mut buf), Err(FrameError::TooShort { len: len as u32 }));
        }
    }

    #[test]
    fn frame_of_exactly_max_is_accepted() {
        let decoder = FrameDecoder::new(10);
        let mut buf = BytesMut::new();
        encode_into(&mut buf, Class::Raft, 0, &[7; 8], 10).unwrap();
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().payload.len(), 8);
    }

    proptest! {
        #[test]
        fn roundtrip_survives_any_split_into_chunks(
            frames in proptest::collection::vec(frame_strategy(), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                frame.encode_into(&mut wire, MAX_FRAME_BYTES).unwrap();
            }
            let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cut_points.push(wire.len());
            cut_points.sort_unstable();

            let decoder = FrameDecoder::new(1024);
            let mut read_buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut start = 0;
            for cut in cut_points {
                read_buf.extend_from_slice(&wire[start..cut]);
                start = cut;
                decoded.extend(decode_all(&decoder, &mut read_buf).unwrap());
            }
            prop_assert!(read_buf.is_empty());
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            max in prop_oneof![Just(0usize), 0..64usize, Just(MAX_FRAME_BYTES)],
        ) {
            let decoder = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_all(&decoder, &mut buf);
        }

        #[test]
        fn truncated_frame_yields_none_and_keeps_the_bytes(
            frame in frame_strategy(),
            keep in any::<prop::sample::Index>(),
        ) {
            let mut wire = BytesMut::new();
            frame.encode_into(&mut wire, MAX_FRAME_BYTES).unwrap();
            let keep = keep.index(wire.len()); // strictly shorter than the frame
            let mut buf = BytesMut::from(&wire[..keep]);
            prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(None));
            prop_assert_eq!(&buf[..], &wire[..keep]);
        }

        #[test]
        fn oversized_length_is_too_large_without_allocation(
            max in 2..(1usize << 20),
            excess in 1..=u32::MAX,
        ) {
            let len = (max as u64 + excess as u64).min(u32::MAX as u64) as u32;
            prop_assume!(len as usize > max);
            let mut buf = BytesMut::with_capacity(8);
            buf.put_u32(len);
            buf.put_u8(Class::User.code());
            let capacity_before = buf.capacity();
            let result = FrameDecoder::new(max).decode(&mut buf);
            prop_assert_eq!(result, Err(FrameError::TooLarge { len: len as u64, max }));
            prop_assert_eq!(buf.capacity(), capacity_before);
            prop_assert_eq!(buf.len(), 5);
        }
    }
}
