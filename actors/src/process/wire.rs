//! Frames between the process runtimes of two nodes, on the internode `user` class.
//!
//! | kind | frame | direction |
//! |---|---|---|
//! | [`KIND_SEND`] | `[version u8][incarnation u64 BE][local u64 BE][rmp-serde message]` | sender → target's node |
//! | [`KIND_MONITOR`] | [`MonitorRequest`] (rmp-serde) | watcher's node → target's node |
//! | [`KIND_DEMONITOR`] | [`DemonitorRequest`] (rmp-serde) | watcher's node → target's node |
//! | [`KIND_DOWN`] | [`DownNotice`] (rmp-serde) | target's node → watcher's node |
//! | [`KIND_SEND_FENCED`] | `[version u8][incarnation u64 BE][local u64 BE][fence u64 BE][name_len u16 BE][name][rmp-serde message]` | sender → target's node |
//!
//! The message of a send is not re-encoded inside an envelope: the fixed 17-byte header is followed
//! by the caller's rmp-serde bytes, which the receiver hands, zero-copy, to the target's decoder.
//! The header carries the target's node incarnation so a frame meant for an older run of a node
//! that restarted under the same name is recognised and dropped (`NotHosted`).
//!
//! Every frame carries a version ([`SEND_WIRE_VERSION`], [`PROCESS_WIRE_VERSION`]). Frames come
//! from peers and are outside input: lengths are checked before decoding
//! ([`MAX_CONTROL_FRAME_BYTES`]), every pid's node name is checked, and decoding never panics.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::config::MAX_EXIT_REASON_BYTES;
use super::monitor::MonitorRef;
use crate::host::ExitReason;
use crate::pid::{Pid, is_valid_node_name};

/// Kind of a message send frame.
pub const KIND_SEND: u8 = 1;
/// Kind of a monitor request frame.
pub const KIND_MONITOR: u8 = 2;
/// Kind of a demonitor frame.
pub const KIND_DEMONITOR: u8 = 3;
/// Kind of a DOWN notice frame.
pub const KIND_DOWN: u8 = 4;

/// Kind of a send by consistent-tier name that carries its fencing token (SPEC 7).
pub const KIND_SEND_FENCED: u8 = 5;

/// Longest name in a [`KIND_SEND_FENCED`] frame, in bytes (the registry's name bound).
pub const MAX_FENCED_NAME_BYTES: usize = 255;

/// Version byte of [`KIND_SEND`] frames built by this code.
pub const SEND_WIRE_VERSION: u8 = 1;

/// Version of the rmp-serde frames ([`MonitorRequest`], [`DemonitorRequest`], [`DownNotice`]).
pub const PROCESS_WIRE_VERSION: u16 = 1;

/// Bytes of the [`KIND_SEND`] header: version, incarnation, local.
pub const SEND_HEADER_BYTES: usize = 1 + 8 + 8;

/// Largest monitor, demonitor or DOWN frame accepted, in bytes.
///
/// Why: the largest holds two pids (~85 bytes each with a 64-byte node name), a monitor ref and a
/// reason text of at most [`MAX_EXIT_REASON_BYTES`]; 1 KiB is ample and refuses a hostile frame
/// before rmp-serde allocates anything for it.
pub const MAX_CONTROL_FRAME_BYTES: usize = 1024;

/// Why a frame from a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its fixed header.
    #[error("frame of {len} bytes is shorter than its header")]
    TooShort {
        /// The frame's length.
        len: usize,
    },
    /// Longer than [`MAX_CONTROL_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds {MAX_CONTROL_FRAME_BYTES}")]
    TooLong {
        /// The frame's length.
        len: usize,
    },
    /// Another protocol version.
    #[error("unsupported process wire version {0}")]
    UnsupportedVersion(u16),
    /// Not a valid rmp-serde encoding of the frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A pid with an invalid node name, or an over-long reason text.
    #[error("frame field out of bounds")]
    OutOfBounds,
}

/// Builds a [`KIND_SEND`] frame: header, then `message` encoded with rmp-serde.
pub fn encode_send<M: Serialize>(target: &Pid, message: &M) -> Result<Bytes, rmp_serde::encode::Error> {
    let mut frame = BytesMut::with_capacity(SEND_HEADER_BYTES + 64);
    frame.put_u8(SEND_WIRE_VERSION);
    frame.put_u64(target.node.incarnation);
    frame.put_u64(target.local);
    let mut writer = frame.writer();
    rmp_serde::encode::write(&mut writer, message)?;
    Ok(writer.into_inner().freeze())
}

/// The target and message bytes of a [`KIND_SEND`] frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFrame {
    /// The incarnation of the node the sender meant.
    pub incarnation: u64,
    /// The target's local process number.
    pub local: u64,
    /// The rmp-serde message (a zero-copy slice of the frame).
    pub message: Bytes,
}

/// Splits a [`KIND_SEND`] frame.
pub fn decode_send(frame: &Bytes) -> Result<SendFrame, WireError> {
    if frame.len() < SEND_HEADER_BYTES {
        return Err(WireError::TooShort { len: frame.len() });
    }
    if frame[0] != SEND_WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(u16::from(frame[0])));
    }
    let mut incarnation = [0u8; 8];
    incarnation.copy_from_slice(&frame[1..9]);
    let mut local = [0u8; 8];
    local.copy_from_slice(&frame[9..17]);
    Ok(SendFrame {
        incarnation: u64::from_be_bytes(incarnation),
        local: u64::from_be_bytes(local),
        message: frame.slice(SEND_HEADER_BYTES..),
    })
}

/// Builds a [`KIND_SEND_FENCED`] frame. `name` must be at most [`MAX_FENCED_NAME_BYTES`].
pub fn encode_send_fenced<M: Serialize>(
    target: &Pid,
    name: &str,
    fence_token: u64,
    message: &M,
) -> Result<Bytes, rmp_serde::encode::Error> {
    let mut frame = BytesMut::with_capacity(SEND_HEADER_BYTES + 10 + name.len() + 64);
    frame.put_u8(SEND_WIRE_VERSION);
    frame.put_u64(target.node.incarnation);
    frame.put_u64(target.local);
    frame.put_u64(fence_token);
    frame.put_u16(name.len() as u16);
    frame.put_slice(name.as_bytes());
    let mut writer = frame.writer();
    rmp_serde::encode::write(&mut writer, message)?;
    Ok(writer.into_inner().freeze())
}

/// A decoded [`KIND_SEND_FENCED`] frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedSendFrame {
    /// Target and message.
    pub send: SendFrame,
    /// The consistent-tier name the sender resolved.
    pub name: String,
    /// The fencing token it resolved it with.
    pub fence_token: u64,
}

/// Splits a [`KIND_SEND_FENCED`] frame, checking every length before use.
pub fn decode_send_fenced(frame: &Bytes) -> Result<FencedSendFrame, WireError> {
    const FIXED: usize = SEND_HEADER_BYTES + 8 + 2;
    if frame.len() < FIXED {
        return Err(WireError::TooShort { len: frame.len() });
    }
    let header = decode_send(&frame.slice(..SEND_HEADER_BYTES))?;
    let mut token = [0u8; 8];
    token.copy_from_slice(&frame[SEND_HEADER_BYTES..SEND_HEADER_BYTES + 8]);
    let name_len = usize::from(u16::from_be_bytes([frame[SEND_HEADER_BYTES + 8], frame[SEND_HEADER_BYTES + 9]]));
    if name_len == 0 || name_len > MAX_FENCED_NAME_BYTES || frame.len() < FIXED + name_len {
        return Err(WireError::OutOfBounds);
    }
    let name = std::str::from_utf8(&frame[FIXED..FIXED + name_len]).map_err(|_| WireError::OutOfBounds)?.to_string();
    Ok(FencedSendFrame {
        send: SendFrame { message: frame.slice(FIXED + name_len..), ..header },
        name,
        fence_token: u64::from_be_bytes(token),
    })
}

/// "Tell me when `target` exits": sent by the watcher's node to the target's node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRequest {
    /// [`PROCESS_WIRE_VERSION`].
    pub version: u16,
    /// The monitor, unique on the watcher's node.
    pub monitor: MonitorRef,
    /// The watcher (a process of the sending node).
    pub watcher: Pid,
    /// The target (a process of the receiving node).
    pub target: Pid,
}

/// "Forget this monitor": sent by the watcher's node after `demonitor` or the watcher's exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemonitorRequest {
    /// [`PROCESS_WIRE_VERSION`].
    pub version: u16,
    /// The monitor, unique on the sending node.
    pub monitor: MonitorRef,
    /// The target (a process of the receiving node).
    pub target: Pid,
}

/// "`pid` is down": sent by the target's node to the watcher's node, once per monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownNotice {
    /// [`PROCESS_WIRE_VERSION`].
    pub version: u16,
    /// The monitor, unique on the receiving node.
    pub monitor: MonitorRef,
    /// The incarnation of the watcher's node that installed the monitor: a notice meant for an
    /// older run of a node restarted under the same name is dropped (its monitor refs restart).
    pub watcher_incarnation: u64,
    /// The process that exited (a process of the sending node).
    pub pid: Pid,
    /// Why.
    pub reason: ExitReason,
}

/// A frame with a version and pids whose bounds can be checked after decoding.
pub(crate) trait ControlFrame: Serialize + for<'de> Deserialize<'de> {
    fn version(&self) -> u16;
    fn is_within_bounds(&self) -> bool;
}

fn pid_is_valid(pid: &Pid) -> bool {
    is_valid_node_name(&pid.node.name)
}

impl ControlFrame for MonitorRequest {
    fn version(&self) -> u16 {
        self.version
    }
    fn is_within_bounds(&self) -> bool {
        pid_is_valid(&self.watcher) && pid_is_valid(&self.target)
    }
}

impl ControlFrame for DemonitorRequest {
    fn version(&self) -> u16 {
        self.version
    }
    fn is_within_bounds(&self) -> bool {
        pid_is_valid(&self.target)
    }
}

impl ControlFrame for DownNotice {
    fn version(&self) -> u16 {
        self.version
    }
    fn is_within_bounds(&self) -> bool {
        let reason_ok = match &self.reason {
            ExitReason::Error(text) => text.len() <= MAX_EXIT_REASON_BYTES,
            _ => true,
        };
        pid_is_valid(&self.pid) && reason_ok
    }
}

/// Encodes a monitor, demonitor or DOWN frame.
pub(crate) fn encode_control<F: ControlFrame>(frame: &F) -> Result<Bytes, rmp_serde::encode::Error> {
    rmp_serde::to_vec(frame).map(Bytes::from)
}

/// Decodes and checks a monitor, demonitor or DOWN frame from a peer.
pub(crate) fn decode_control<F: ControlFrame>(bytes: &[u8]) -> Result<F, WireError> {
    if bytes.len() > MAX_CONTROL_FRAME_BYTES {
        return Err(WireError::TooLong { len: bytes.len() });
    }
    let frame: F = rmp_serde::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if frame.version() != PROCESS_WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(frame.version()));
    }
    if !frame.is_within_bounds() {
        return Err(WireError::OutOfBounds);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_cluster::NodeId;
    use proptest::prelude::*;

    fn pid(name: &str, incarnation: u64, local: u64) -> Pid {
        Pid::new(NodeId::new(name, incarnation), local)
    }

    #[test]
    fn fenced_send_frame_round_trips_and_refuses_bad_lengths() {
        let target = pid("b", 7, 42);
        let frame = encode_send_fenced(&target, "leader", 99, &("write", 1u8)).unwrap();
        let decoded = decode_send_fenced(&frame).unwrap();
        assert_eq!((decoded.name.as_str(), decoded.fence_token), ("leader", 99));
        assert_eq!((decoded.send.incarnation, decoded.send.local), (7, 42));
        let message: (String, u8) = rmp_serde::from_slice(&decoded.send.message).unwrap();
        assert_eq!(message, ("write".to_string(), 1));
        // A name length pointing past the end, and a truncated header, are refused.
        let mut bad = frame.to_vec();
        bad[SEND_HEADER_BYTES + 8] = 0xFF;
        assert_eq!(decode_send_fenced(&Bytes::from(bad)), Err(WireError::OutOfBounds));
        assert!(matches!(decode_send_fenced(&frame.slice(..20)), Err(WireError::TooShort { .. })));
    }

    #[test]
    fn send_frame_round_trips_header_and_message() {
        let target = pid("b", 7, 42);
        let frame = encode_send(&target, &("hello", 3u8)).unwrap();
        let decoded = decode_send(&frame).unwrap();
        assert_eq!((decoded.incarnation, decoded.local), (7, 42));
        let message: (String, u8) = rmp_serde::from_slice(&decoded.message).unwrap();
        assert_eq!(message, ("hello".to_owned(), 3));
    }

    #[test]
    fn send_frame_with_another_version_or_short_header_is_refused() {
        let mut frame = encode_send(&pid("b", 1, 1), &1u8).unwrap().to_vec();
        assert_eq!(decode_send(&Bytes::from(frame[..5].to_vec())), Err(WireError::TooShort { len: 5 }));
        frame[0] = 9;
        assert_eq!(decode_send(&Bytes::from(frame)), Err(WireError::UnsupportedVersion(9)));
    }

    #[test]
    fn control_frames_round_trip() {
        let down = DownNotice {
            version: PROCESS_WIRE_VERSION,
            monitor: MonitorRef::new(3),
            watcher_incarnation: 1,
            pid: pid("b", 1, 9),
            reason: ExitReason::Error("boom".into()),
        };
        let bytes = encode_control(&down).unwrap();
        assert_eq!(decode_control::<DownNotice>(&bytes), Ok(down));
    }

    #[test]
    fn control_frames_with_bad_version_or_fields_are_refused() {
        let request =
            MonitorRequest { version: 2, monitor: MonitorRef::new(1), watcher: pid("a", 1, 1), target: pid("b", 1, 1) };
        let bytes = encode_control(&request).unwrap();
        assert_eq!(decode_control::<MonitorRequest>(&bytes), Err(WireError::UnsupportedVersion(2)));
        let request = MonitorRequest { version: PROCESS_WIRE_VERSION, watcher: pid("a b", 1, 1), ..request };
        let bytes = encode_control(&request).unwrap();
        assert_eq!(decode_control::<MonitorRequest>(&bytes), Err(WireError::OutOfBounds));
        let long = vec![0u8; MAX_CONTROL_FRAME_BYTES + 1];
        assert_eq!(
            decode_control::<MonitorRequest>(&long),
            Err(WireError::TooLong { len: MAX_CONTROL_FRAME_BYTES + 1 })
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_send(&Bytes::from(bytes.clone()));
            let _ = decode_control::<MonitorRequest>(&bytes);
            let _ = decode_control::<DemonitorRequest>(&bytes);
            let _ = decode_control::<DownNotice>(&bytes);
        }
    }
}
