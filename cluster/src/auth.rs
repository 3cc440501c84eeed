//! Authentication with the cluster secret: the internode handshake and gossip datagram tags
//! (SPEC sections 5.1 and 5.2).
//!
//! Role: prove, without sending it, that a peer knows the shared [`ClusterSecret`], and refuse
//! everything else with a typed reason a metric can count. Everything here is pure: nonces and
//! randomness come from the caller, bytes go in and out, no socket and no clock.
//!
//! Handshake (three messages inside `control` frames, initiator = the side that dialled):
//!
//! ```text
//! initiator -> responder   Hello     {magic "CHRT", version, cluster, node, nonce_i}
//! responder -> initiator   HelloAck  {Hello {.., nonce_r}, proof_r}
//! initiator -> responder   Proof     proof_i
//!
//! proof_x = HMAC-SHA256(secret, "cohort handshake v1" | role_x | peer's nonce | own Hello fields)
//! ```
//!
//! Invariants: a proof binds the prover's role (so a proof reflected back to the side that made
//! it fails), the verifier's fresh nonce (so a recorded proof cannot be replayed) and the prover's
//! own hello fields (so a proof cannot vouch for another node name or cluster). Tags are compared
//! in constant time (`Mac::verify_slice`). Every decoder checks lengths before reading or
//! allocating and never panics; the secret's bytes never appear in `Debug` output.
//!
//! Gossip datagrams are `payload | tag`, `tag = HMAC-SHA256(secret, "cohort gossip v1" | payload)`
//! ([`seal`] and [`open`]). The domain labels keep a gossip tag from ever passing as a handshake
//! proof and the reverse.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, TryRng};
use sha2::Sha256;
use thiserror::Error;

use crate::identity::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// The smallest accepted cluster secret, in bytes of key material (256 bits).
///
/// Why 32 and not 16: the secret keys every tag and proof, and one captured handshake or datagram
/// lets an outsider who knows the cluster name test guesses offline at hash speed, for as long as
/// the key lives. 256 bits puts that search out of reach whatever the attacker's budget, and it is
/// the size `cohort keygen` makes, so the floor costs an operator nothing.
pub const MIN_SECRET_BYTES: usize = 32;

/// The largest accepted cluster secret, in bytes.
///
/// Why: HMAC-SHA256 hashes any key longer than its 64-byte block down to 32 bytes, so a longer
/// secret adds no strength; the bound also caps what a config file can make the node read.
pub const MAX_SECRET_BYTES: usize = 64;

/// The size of a secret made by [`ClusterSecret::generate`] (256 bits, the HMAC output size).
pub const GENERATED_SECRET_BYTES: usize = 32;

const _: () = assert!(MIN_SECRET_BYTES <= GENERATED_SECRET_BYTES && GENERATED_SECRET_BYTES <= MAX_SECRET_BYTES);

/// The size of an HMAC-SHA256 tag or proof.
pub const TAG_BYTES: usize = 32;

/// The size of a handshake nonce.
pub const NONCE_BYTES: usize = 32;

/// The first four bytes of every [`Hello`]: tells a Cohort peer from anything else on the port.
pub const MAGIC: [u8; 4] = *b"CHRT";

/// The internode protocol version this build speaks; peers must match it exactly.
pub const PROTOCOL_VERSION: u16 = 1;

/// The longest cluster name or node name in a [`Hello`], in bytes (one length byte on the wire).
pub const MAX_NAME_BYTES: usize = 255;

/// Domain label of handshake proofs.
const HANDSHAKE_LABEL: &[u8] = b"cohort handshake v1\0";

/// Domain label of gossip datagram tags.
const GOSSIP_LABEL: &[u8] = b"cohort gossip v1\0";

/// A handshake nonce: fresh random bytes per handshake.
pub type Nonce = [u8; NONCE_BYTES];

/// A fresh nonce from a cryptographically secure generator (e.g. `rand::rng()`).
pub fn random_nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> Nonce {
    let mut nonce = [0; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// The shared secret of a cluster. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Box<[u8]>,
    /// HMAC state already keyed with `bytes`, cloned per use (saves rehashing the key pads).
    keyed: HmacSha256,
}

/// Why bytes or text were refused as a [`ClusterSecret`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SecretError {
    /// Fewer than [`MIN_SECRET_BYTES`] bytes of key material (after decoding, for text).
    #[error("cluster secret holds {len} bytes of key material; at least {min} are needed")]
    TooShort {
        /// The length given, or decoded.
        len: usize,
        /// [`MIN_SECRET_BYTES`].
        min: usize,
    },
    /// More than [`MAX_SECRET_BYTES`] bytes of key material (after decoding, for text).
    #[error("cluster secret holds {len} bytes of key material; at most {max} are accepted")]
    TooLong {
        /// The length given, or decoded.
        len: usize,
        /// [`MAX_SECRET_BYTES`].
        max: usize,
    },
    /// The text is neither hex nor standard base64 (raw text is not key material).
    #[error("cluster secret is neither hex nor standard base64: {problem}")]
    Undecodable {
        /// What is wrong with it as base64.
        problem: Base64Problem,
    },
    /// The hex text has an odd number of digits.
    #[error("cluster secret hex has an odd number of digits ({digits})")]
    OddHexDigits {
        /// The number of hex digits.
        digits: usize,
    },
    /// A character of the hex text is not a hex digit.
    #[error("cluster secret hex has a non-hex character at position {position}")]
    InvalidHexDigit {
        /// The byte offset of the bad character in the trimmed text.
        position: usize,
    },
}

/// Why text that is not all hex digits failed to decode as standard base64 (see
/// [`ClusterSecret::from_text`]). Positions are byte offsets into the trimmed text; the offending
/// character itself is never echoed, since it is part of a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Base64Problem {
    /// A character outside `A-Z a-z 0-9 + /`, or an `=` that is not trailing padding.
    #[error("the character at position {position} is not base64 there (A-Z a-z 0-9 + /, and `=` only at the end)")]
    InvalidCharacter {
        /// Byte offset in the trimmed text.
        position: usize,
    },
    /// A length no base64 encoding has (one character past a multiple of four).
    #[error("{characters} characters is not the length of any base64 text")]
    InvalidLength {
        /// The number of base64 characters.
        characters: usize,
    },
    /// The last character has bits set past the end of the key: the text was cut or altered.
    #[error("the last character (position {position}) does not end a base64 text: truncated or altered")]
    InvalidLastCharacter {
        /// Byte offset in the trimmed text.
        position: usize,
    },
    /// Padding of the wrong length for the text before it.
    #[error("wrong `=` padding")]
    InvalidPadding,
}

/// Standard alphabet, `=` padding accepted but not required, no stray bits (so every key has
/// exactly one text that decodes to it, up to padding).
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;

impl ClusterSecret {
    /// A secret from raw bytes; refuses fewer than [`MIN_SECRET_BYTES`] or more than
    /// [`MAX_SECRET_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        let len = bytes.len();
        if len < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { len, min: MIN_SECRET_BYTES });
        }
        if len > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong { len, max: MAX_SECRET_BYTES });
        }
        Ok(Self { bytes: bytes.into(), keyed: keyed_mac(bytes) })
    }

    /// A new random secret of [`GENERATED_SECRET_BYTES`] from the thread-local CSPRNG (for
    /// `cohort up` and first-time setup).
    pub fn generate() -> Self {
        Self::generate_with(&mut rand::rng())
    }

    /// A new random secret of [`GENERATED_SECRET_BYTES`] from the given CSPRNG.
    pub fn generate_with<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; GENERATED_SECRET_BYTES];
        rng.fill_bytes(&mut bytes);
        Self { bytes: bytes.into(), keyed: keyed_mac(&bytes) }
    }

    /// A new random secret of [`GENERATED_SECRET_BYTES`] read straight from the operating
    /// system's generator (`getrandom(2)` on Linux), for keys that outlive the process:
    /// `cohort keygen`, `cohort up`, the chaos runner. Fails only when the OS has no generator
    /// to offer, which the caller reports rather than panics on.
    pub fn generate_from_os() -> Result<Self, rand::rngs::SysError> {
        let mut bytes = [0u8; GENERATED_SECRET_BYTES];
        rand::rngs::SysRng.try_fill_bytes(&mut bytes)?;
        Ok(Self { bytes: bytes.into(), keyed: keyed_mac(&bytes) })
    }

    /// A secret from the text of a secret file: hex or standard base64 (padding optional),
    /// surrounding whitespace ignored, [`MIN_SECRET_BYTES`] to [`MAX_SECRET_BYTES`] bytes once
    /// decoded.
    ///
    /// Text made only of hex digits is read as hex, anything else as base64. The two cannot be
    /// confused for a key `cohort keygen` made: its base64 form ends in `=` (and has an odd
    /// length without it), and the odds that 43 random base64 characters are all hex digits are
    /// below 10^-19. Raw text (a password) is refused: it is rarely 32 bytes of entropy.
    ///
    /// ```
    /// use cohort_cluster::auth::{ClusterSecret, SecretError};
    /// let hex = ClusterSecret::from_text(&"ab".repeat(32)).unwrap();
    /// let base64 = ClusterSecret::from_text("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n").unwrap();
    /// assert_eq!(hex.to_hex(), base64.to_hex());
    /// assert_eq!(ClusterSecret::from_text("c2hvcnQ").unwrap_err(), SecretError::TooShort { len: 5, min: 32 });
    /// assert!(matches!(ClusterSecret::from_text("correct horse"), Err(SecretError::Undecodable { .. })));
    /// ```
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Self::from_hex(text);
        }
        // Length checks first, as for hex: nothing is decoded for text that cannot be a secret.
        let unpadded = text.trim_end_matches('=').len();
        let len = unpadded * 3 / 4;
        if len > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong { len, max: MAX_SECRET_BYTES });
        }
        // Room for the decoder's conservative estimate (whole quads of 3 bytes); `from_bytes`
        // still enforces the maximum on what was actually decoded.
        let mut bytes = [0u8; MAX_SECRET_BYTES + 3];
        let decoded = BASE64.decode_slice(text, &mut bytes).map_err(|e| {
            use base64::{DecodeError, DecodeSliceError};
            let problem = match e {
                DecodeSliceError::DecodeError(DecodeError::InvalidByte(position, _)) => {
                    Base64Problem::InvalidCharacter { position }
                }
                DecodeSliceError::DecodeError(DecodeError::InvalidLength(characters)) => {
                    Base64Problem::InvalidLength { characters }
                }
                DecodeSliceError::DecodeError(DecodeError::InvalidLastSymbol { offset, .. }) => {
                    Base64Problem::InvalidLastCharacter { position: offset }
                }
                // With the length checked above, only a run of `=` can make the decoder's
                // estimate outgrow the buffer.
                DecodeSliceError::DecodeError(DecodeError::InvalidPadding) | DecodeSliceError::OutputSliceTooSmall => {
                    Base64Problem::InvalidPadding
                }
            };
            SecretError::Undecodable { problem }
        })?;
        Self::from_bytes(&bytes[..decoded])
    }

    /// A secret from hex text, as stored in a secret file; surrounding whitespace (a trailing
    /// newline) is ignored, upper and lower case are accepted.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let digits = text.trim().as_bytes();
        // Length checks first: nothing is allocated for text that cannot be a secret.
        if !digits.len().is_multiple_of(2) {
            return Err(SecretError::OddHexDigits { digits: digits.len() });
        }
        let len = digits.len() / 2;
        if len < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { len, min: MIN_SECRET_BYTES });
        }
        if len > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong { len, max: MAX_SECRET_BYTES });
        }
        let mut bytes = [0u8; MAX_SECRET_BYTES];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let high = hex_value(pair[0]).ok_or(SecretError::InvalidHexDigit { position: 2 * i })?;
            let low = hex_value(pair[1]).ok_or(SecretError::InvalidHexDigit { position: 2 * i + 1 })?;
            bytes[i] = (high << 4) | low;
        }
        Self::from_bytes(&bytes[..len])
    }

    /// The secret as standard base64 with padding (44 characters for 32 bytes), the form
    /// `cohort keygen` prints; [`from_text`](Self::from_text) reads it back.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.bytes)
    }

    /// The secret as lower-case hex, for writing a secret file.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(self.bytes.len() * 2);
        for byte in self.bytes.iter() {
            text.push(DIGITS[usize::from(byte >> 4)] as char);
            text.push(DIGITS[usize::from(byte & 0x0f)] as char);
        }
        text
    }

    /// The secret's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a secret has at least [`MIN_SECRET_BYTES`] bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The secret's bytes, as key derivation input (see [`crate::secure::Keyring`]).
    pub(crate) fn key_material(&self) -> &[u8] {
        &self.bytes
    }

    /// A fresh HMAC keyed with the secret, already fed `label`.
    fn mac(&self, label: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(label);
        mac
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// An HMAC-SHA256 keyed with `bytes` (at most [`MAX_SECRET_BYTES`], checked by the callers).
///
/// RFC 2104 zero-pads a key shorter than the hash's 64-byte block, so keying with the padded block
/// is the same HMAC as keying with the bytes, through a constructor that cannot fail (no `unwrap`
/// on a `Result` that "cannot" be an error).
fn keyed_mac(bytes: &[u8]) -> HmacSha256 {
    debug_assert!(bytes.len() <= MAX_SECRET_BYTES);
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    for (dst, src) in block.iter_mut().zip(bytes) {
        *dst = *src;
    }
    <HmacSha256 as Mac>::new(&block)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// Which side of the handshake a proof comes from; part of what the proof signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that opened the connection and sent the first [`Hello`].
    Initiator,
    /// The side that accepted the connection and answered with a [`HelloAck`].
    Responder,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Initiator => b"initiator\0",
            Role::Responder => b"responder\0",
        }
    }
}

/// The first handshake message of each side: who it is, and a fresh nonce for the other side to
/// prove over.
///
/// Wire layout (all integers big-endian):
///
/// ```text
/// magic [4] | version u16 | cluster_len u8 | cluster | name_len u8 | node name | incarnation u64 | nonce [32]
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Always [`MAGIC`] for a Cohort peer.
    pub magic: [u8; 4],
    /// The sender's protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The cluster name; peers of different clusters refuse each other.
    pub cluster: String,
    /// The sender's identity.
    pub node: NodeId,
    /// Fresh random bytes the other side proves over.
    pub nonce: Nonce,
}

/// Why a [`Hello`] could not be encoded (a local configuration problem, not a peer's).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A name is empty or longer than [`MAX_NAME_BYTES`].
    #[error("{field} must be 1..={max} bytes, is {len}")]
    BadName {
        /// `"cluster"` or `"node"`.
        field: &'static str,
        /// The name's length in bytes.
        len: usize,
        /// [`MAX_NAME_BYTES`].
        max: usize,
    },
}

/// Why a handshake was refused; [`as_str`](Self::as_str) is the metric `reason` label.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// `bad_magic`: the peer is not speaking the Cohort protocol.
    #[error("bad magic {found:?}")]
    BadMagic {
        /// The first four bytes received.
        found: [u8; 4],
    },
    /// `version_mismatch`: the peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// `cluster_mismatch`: the peer belongs to another cluster.
    #[error("cluster mismatch: ours {ours:?}, theirs {theirs:?}")]
    ClusterMismatch {
        /// Our cluster name.
        ours: String,
        /// The peer's cluster name (at most [`MAX_NAME_BYTES`]).
        theirs: String,
    },
    /// `bad_proof`: the peer does not know the cluster secret (or replayed or reflected a proof).
    #[error("bad handshake proof")]
    BadProof,
    /// `self_connection`: the peer claims this node's own name (a reflected hello, or a node
    /// dialling itself).
    #[error("peer claims this node's own name {name:?}")]
    SelfConnection {
        /// The name.
        name: String,
    },
    /// `malformed`: the message does not parse.
    #[error("malformed handshake message: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
}

impl HandshakeError {
    /// Every reason label, so the counters can be exported at 0 from boot.
    pub const REASONS: [&'static str; 6] =
        ["bad_magic", "version_mismatch", "cluster_mismatch", "bad_proof", "self_connection", "malformed"];

    /// The metric `reason` label of this refusal.
    pub const fn as_str(&self) -> &'static str {
        match self {
            HandshakeError::BadMagic { .. } => "bad_magic",
            HandshakeError::VersionMismatch { .. } => "version_mismatch",
            HandshakeError::ClusterMismatch { .. } => "cluster_mismatch",
            HandshakeError::BadProof => "bad_proof",
            HandshakeError::SelfConnection { .. } => "self_connection",
            HandshakeError::Malformed { .. } => "malformed",
        }
    }
}

fn malformed(what: &'static str) -> HandshakeError {
    HandshakeError::Malformed { what }
}

/// A bounds-checked reader over a received message.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HandshakeError> {
        if self.rest.len() < n {
            return Err(malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], HandshakeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn name(&mut self, what: &'static str) -> Result<String, HandshakeError> {
        let [len] = self.array::<1>(what)?;
        if len == 0 {
            return Err(malformed(what));
        }
        let bytes = self.take(usize::from(len), what)?;
        let name = std::str::from_utf8(bytes).map_err(|_| malformed(what))?;
        Ok(name.to_owned())
    }

    fn finish(&self) -> Result<(), HandshakeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(malformed("trailing bytes")) }
    }
}

fn check_name(field: &'static str, name: &str) -> Result<u8, EncodeError> {
    match u8::try_from(name.len()) {
        Ok(len) if len > 0 => Ok(len),
        _ => Err(EncodeError::BadName { field, len: name.len(), max: MAX_NAME_BYTES }),
    }
}

impl Hello {
    /// A hello of this build ([`MAGIC`], [`PROTOCOL_VERSION`]).
    pub fn new(cluster: impl Into<String>, node: NodeId, nonce: Nonce) -> Self {
        Self { magic: MAGIC, version: PROTOCOL_VERSION, cluster: cluster.into(), node, nonce }
    }

    /// The wire bytes; refuses empty names or names over [`MAX_NAME_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let cluster_len = check_name("cluster", &self.cluster)?;
        let name_len = check_name("node", &self.node.name)?;
        let mut out = Vec::with_capacity(4 + 2 + 2 + self.cluster.len() + self.node.name.len() + 8 + NONCE_BYTES);
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(cluster_len);
        out.extend_from_slice(self.cluster.as_bytes());
        out.push(name_len);
        out.extend_from_slice(self.node.name.as_bytes());
        out.extend_from_slice(&self.node.incarnation.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        Ok(out)
    }

    /// Parses a hello that must fill `bytes` exactly. The magic and version are checked before
    /// the rest is parsed, so an old or foreign peer is told apart from a garbled one.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let mut reader = Reader { rest: bytes };
        let hello = Self::read(&mut reader)?;
        reader.finish()?;
        Ok(hello)
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        let magic = reader.array::<4>("truncated magic")?;
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic { found: magic });
        }
        let version = u16::from_be_bytes(reader.array::<2>("truncated version")?);
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version });
        }
        let cluster = reader.name("bad cluster name")?;
        let name = reader.name("bad node name")?;
        let incarnation = u64::from_be_bytes(reader.array::<8>("truncated incarnation")?);
        let nonce = reader.array::<NONCE_BYTES>("truncated nonce")?;
        Ok(Self { magic, version, cluster, node: NodeId { name, incarnation }, nonce })
    }

    /// Checks the peer's hello against our expectations: same cluster, not ourselves.
    /// (Magic and version are checked by [`decode`](Self::decode).)
    pub fn check_peer(&self, own: &Hello) -> Result<(), HandshakeError> {
        if self.magic != MAGIC {
            return Err(HandshakeError::BadMagic { found: self.magic });
        }
        if self.version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: self.version });
        }
        if self.cluster != own.cluster {
            return Err(HandshakeError::ClusterMismatch { ours: own.cluster.clone(), theirs: self.cluster.clone() });
        }
        if self.node.name == own.node.name {
            return Err(HandshakeError::SelfConnection { name: self.node.name.clone() });
        }
        Ok(())
    }

    /// Feeds the hello's fields into a MAC, each length-prefixed so no two hellos feed the same
    /// bytes.
    fn feed(&self, mac: &mut HmacSha256) {
        mac.update(&self.magic);
        mac.update(&self.version.to_be_bytes());
        mac.update(&(self.cluster.len() as u64).to_be_bytes());
        mac.update(self.cluster.as_bytes());
        mac.update(&(self.node.name.len() as u64).to_be_bytes());
        mac.update(self.node.name.as_bytes());
        mac.update(&self.node.incarnation.to_be_bytes());
        mac.update(&self.nonce);
    }
}

/// A handshake proof: an HMAC tag showing knowledge of the cluster secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof(pub [u8; TAG_BYTES]);

impl Proof {
    /// The wire bytes (the initiator's last message).
    pub fn encode(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// Parses a proof that must be exactly [`TAG_BYTES`] long.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let tag = <[u8; TAG_BYTES]>::try_from(bytes).map_err(|_| malformed("proof is not 32 bytes"))?;
        Ok(Self(tag))
    }
}

/// The responder's answer: its own hello and its proof over the initiator's nonce.
///
/// Wire layout: the [`Hello`] bytes followed by the 32 proof bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck {
    /// The responder's hello (its nonce is the one the initiator proves over).
    pub hello: Hello,
    /// The responder's proof over the initiator's nonce.
    pub proof: Proof,
}

impl HelloAck {
    /// The wire bytes; refuses what [`Hello::encode`] refuses.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = self.hello.encode()?;
        out.extend_from_slice(&self.proof.0);
        Ok(out)
    }

    /// Parses an ack that must fill `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let mut reader = Reader { rest: bytes };
        let hello = Hello::read(&mut reader)?;
        let proof = Proof(reader.array::<TAG_BYTES>("truncated proof")?);
        reader.finish()?;
        Ok(Self { hello, proof })
    }
}

fn proof_mac(secret: &ClusterSecret, role: Role, prover: &Hello, verifier_nonce: &Nonce) -> HmacSha256 {
    let mut mac = secret.mac(HANDSHAKE_LABEL);
    mac.update(role.label());
    mac.update(verifier_nonce);
    prover.feed(&mut mac);
    mac
}

/// The proof the side in `role`, whose hello is `own`, sends over the other side's nonce.
pub fn prove(secret: &ClusterSecret, role: Role, own: &Hello, peer_nonce: &Nonce) -> Proof {
    Proof(proof_mac(secret, role, own, peer_nonce).finalize().into_bytes().into())
}

/// Checks, in constant time, that `proof` is what a holder of `secret` in `prover_role` with
/// hello `prover` sends over our nonce `own_nonce`.
pub fn verify_proof(
    secret: &ClusterSecret,
    prover_role: Role,
    prover: &Hello,
    own_nonce: &Nonce,
    proof: &Proof,
) -> Result<(), HandshakeError> {
    proof_mac(secret, prover_role, prover, own_nonce).verify_slice(&proof.0).map_err(|_| HandshakeError::BadProof)
}

/// A completed handshake: the peer is a member of our cluster holding the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Established {
    /// The authenticated peer.
    pub peer: NodeId,
}

/// The dialling side of a handshake, waiting for the [`HelloAck`].
///
/// ```
/// use cohort_cluster::auth::*;
/// use cohort_cluster::NodeId;
///
/// let secret = ClusterSecret::generate();
/// let mut rng = rand::rng();
/// let (initiator, hello) =
///     InitiatorHandshake::start(Hello::new("prod", NodeId::new("a", 1), random_nonce(&mut rng))).unwrap();
/// let responder = ResponderHandshake::new(Hello::new("prod", NodeId::new("b", 1), random_nonce(&mut rng))).unwrap();
///
/// let (responder, ack) = responder.on_hello(&secret, &hello).unwrap();
/// let (at_initiator, proof) = initiator.on_ack(&secret, &ack).unwrap();
/// let at_responder = responder.on_proof(&secret, &proof).unwrap();
/// assert_eq!(at_initiator.peer, NodeId::new("b", 1));
/// assert_eq!(at_responder.peer, NodeId::new("a", 1));
/// ```
#[derive(Debug)]
pub struct InitiatorHandshake {
    own: Hello,
}

impl InitiatorHandshake {
    /// Starts a handshake: returns the state and the [`Hello`] bytes to send.
    pub fn start(own: Hello) -> Result<(Self, Vec<u8>), EncodeError> {
        let hello = own.encode()?;
        Ok((Self { own }, hello))
    }

    /// Checks the responder's ack (magic, version, cluster, not ourselves, proof over our nonce)
    /// and returns the result and our [`Proof`] bytes to send.
    pub fn on_ack(self, secret: &ClusterSecret, ack: &[u8]) -> Result<(Established, Vec<u8>), HandshakeError> {
        let ack = HelloAck::decode(ack)?;
        ack.hello.check_peer(&self.own)?;
        verify_proof(secret, Role::Responder, &ack.hello, &self.own.nonce, &ack.proof)?;
        let proof = prove(secret, Role::Initiator, &self.own, &ack.hello.nonce);
        Ok((Established { peer: ack.hello.node }, proof.encode()))
    }
}

/// The accepting side of a handshake, waiting for the initiator's [`Hello`].
#[derive(Debug)]
pub struct ResponderHandshake {
    own: Hello,
}

impl ResponderHandshake {
    /// A responder with its own hello (checked to be encodable now, so later steps cannot fail
    /// on our side).
    pub fn new(own: Hello) -> Result<Self, EncodeError> {
        own.encode()?;
        Ok(Self { own })
    }

    /// Checks the initiator's hello (magic, version, cluster, not ourselves) and returns the
    /// next state and the [`HelloAck`] bytes to send.
    pub fn on_hello(
        self,
        secret: &ClusterSecret,
        hello: &[u8],
    ) -> Result<(ResponderAwaitingProof, Vec<u8>), HandshakeError> {
        let peer = Hello::decode(hello)?;
        peer.check_peer(&self.own)?;
        let proof = prove(secret, Role::Responder, &self.own, &peer.nonce);
        let ack = HelloAck { hello: self.own, proof };
        let bytes = ack.encode().map_err(|_| malformed("own hello not encodable"))?;
        Ok((ResponderAwaitingProof { own: ack.hello, peer }, bytes))
    }
}

/// The accepting side of a handshake, waiting for the initiator's [`Proof`].
#[derive(Debug)]
pub struct ResponderAwaitingProof {
    own: Hello,
    peer: Hello,
}

impl ResponderAwaitingProof {
    /// Checks the initiator's proof over our nonce.
    pub fn on_proof(self, secret: &ClusterSecret, proof: &[u8]) -> Result<Established, HandshakeError> {
        let proof = Proof::decode(proof)?;
        verify_proof(secret, Role::Initiator, &self.peer, &self.own.nonce, &proof)?;
        Ok(Established { peer: self.peer.node })
    }
}

// ---------------------------------------------------------------------------------------------
// Gossip datagrams
// ---------------------------------------------------------------------------------------------

/// Why a gossip datagram was refused; [`as_str`](Self::as_str) is the metric `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum AuthError {
    /// `truncated`: shorter than a tag.
    #[error("datagram of {len} bytes is shorter than its {TAG_BYTES}-byte tag")]
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// `bad_tag`: the tag does not match (wrong secret, or altered in flight).
    #[error("datagram tag does not match")]
    BadTag,
}

impl AuthError {
    /// Every reason label, so the counters can be exported at 0 from boot.
    pub const REASONS: [&'static str; 2] = ["truncated", "bad_tag"];

    /// The metric `reason` label of this refusal.
    pub const fn as_str(&self) -> &'static str {
        match self {
            AuthError::Truncated { .. } => "truncated",
            AuthError::BadTag => "bad_tag",
        }
    }
}

fn gossip_mac(secret: &ClusterSecret, payload: &[u8]) -> HmacSha256 {
    let mut mac = secret.mac(GOSSIP_LABEL);
    mac.update(payload);
    mac
}

/// `payload` followed by its [`TAG_BYTES`]-byte tag.
pub fn seal(secret: &ClusterSecret, payload: &[u8]) -> Vec<u8> {
    let tag = gossip_mac(secret, payload).finalize().into_bytes();
    let mut datagram = Vec::with_capacity(payload.len() + TAG_BYTES);
    datagram.extend_from_slice(payload);
    datagram.extend_from_slice(&tag);
    datagram
}

/// The payload of a datagram made by [`seal`] with the same secret, or why it is refused.
pub fn open<'a>(secret: &ClusterSecret, datagram: &'a [u8]) -> Result<&'a [u8], AuthError> {
    let Some(payload_len) = datagram.len().checked_sub(TAG_BYTES) else {
        return Err(AuthError::Truncated { len: datagram.len() });
    };
    let (payload, tag) = datagram.split_at(payload_len);
    gossip_mac(secret, payload).verify_slice(tag).map_err(|_| AuthError::BadTag)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn secret(byte: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[byte; 32]).unwrap()
    }

    fn hello(name: &str, nonce: u8) -> Hello {
        Hello::new("prod", NodeId::new(name, 7), [nonce; NONCE_BYTES])
    }

    /// Runs a full handshake, returning both sides' results.
    fn handshake(
        initiator_secret: &ClusterSecret,
        responder_secret: &ClusterSecret,
        initiator_hello: Hello,
        responder_hello: Hello,
    ) -> (Result<Established, HandshakeError>, Result<Established, HandshakeError>) {
        let (initiator, hello_bytes) = InitiatorHandshake::start(initiator_hello).unwrap();
        let responder = ResponderHandshake::new(responder_hello).unwrap();
        let (responder, ack) = match responder.on_hello(responder_secret, &hello_bytes) {
            Ok(next) => next,
            Err(e) => return (Err(malformed("not reached")), Err(e)),
        };
        let (at_initiator, proof) = match initiator.on_ack(initiator_secret, &ack) {
            Ok(next) => next,
            Err(e) => return (Err(e), Err(malformed("not reached"))),
        };
        (Ok(at_initiator), responder.on_proof(responder_secret, &proof))
    }

    #[test]
    fn secret_shorter_than_32_bytes_is_rejected() {
        assert_eq!(ClusterSecret::from_bytes(&[1; 31]).unwrap_err(), SecretError::TooShort { len: 31, min: 32 });
        assert_eq!(ClusterSecret::from_bytes(&[1; 16]).unwrap_err(), SecretError::TooShort { len: 16, min: 32 });
        assert!(ClusterSecret::from_bytes(&[1; 32]).is_ok());
        assert!(ClusterSecret::from_bytes(&[1; 64]).is_ok());
        assert_eq!(ClusterSecret::from_bytes(&[1; 65]).unwrap_err(), SecretError::TooLong { len: 65, max: 64 });
    }

    #[test]
    fn padded_key_block_gives_the_same_hmac_as_the_raw_secret() {
        for len in MIN_SECRET_BYTES..=MAX_SECRET_BYTES {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37).wrapping_add(1)).collect();
            let mut reference = HmacSha256::new_from_slice(&bytes).unwrap();
            reference.update(b"payload");
            let mut ours = keyed_mac(&bytes);
            ours.update(b"payload");
            assert_eq!(ours.finalize().into_bytes(), reference.finalize().into_bytes(), "len {len}");
        }
    }

    #[test]
    fn secret_debug_does_not_leak_bytes() {
        let secret = ClusterSecret::from_bytes(&[0xab; 32]).unwrap();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "ClusterSecret(<redacted>)");
        assert!(!debug.contains("ab") && !debug.contains("171"));
    }

    #[test]
    fn generated_secrets_are_32_random_bytes() {
        let a = ClusterSecret::generate();
        let b = ClusterSecret::generate();
        assert_eq!(a.len(), GENERATED_SECRET_BYTES);
        assert_ne!(a.to_hex(), b.to_hex());
        let seeded = ClusterSecret::generate_with(&mut StdRng::seed_from_u64(1));
        assert_eq!(seeded.to_hex(), ClusterSecret::generate_with(&mut StdRng::seed_from_u64(1)).to_hex());
    }

    #[test]
    fn hex_roundtrips_and_tolerates_surrounding_whitespace() {
        let secret = ClusterSecret::generate();
        let text = format!("  {}\n", secret.to_hex().to_uppercase());
        let back = ClusterSecret::from_hex(&text).unwrap();
        assert_eq!(back.to_hex(), secret.to_hex());
        assert_eq!(seal(&back, b"x"), seal(&secret, b"x"));
    }

    #[test]
    fn bad_hex_is_rejected_with_its_reason() {
        assert_eq!(ClusterSecret::from_hex("abc").unwrap_err(), SecretError::OddHexDigits { digits: 3 });
        assert_eq!(ClusterSecret::from_hex("00").unwrap_err(), SecretError::TooShort { len: 1, min: 32 });
        assert_eq!(ClusterSecret::from_hex(&"00".repeat(16)).unwrap_err(), SecretError::TooShort { len: 16, min: 32 });
        let mut text = "00".repeat(32);
        text.replace_range(5..6, "g");
        assert_eq!(ClusterSecret::from_hex(&text).unwrap_err(), SecretError::InvalidHexDigit { position: 5 });
        assert_eq!(ClusterSecret::from_hex(&"00".repeat(65)).unwrap_err(), SecretError::TooLong { len: 65, max: 64 });
        assert!(ClusterSecret::from_hex("é".repeat(32).as_str()).is_err());
    }

    #[test]
    fn text_secret_is_read_as_hex_or_base64_whichever_it_is() {
        let secret = ClusterSecret::generate();
        let base64 = secret.to_base64();
        assert_eq!(base64.len(), 44);
        assert!(base64.ends_with('='));
        for text in [
            base64.clone(),
            format!("\n  {base64}\n\n"),
            base64.trim_end_matches('=').to_string(),
            secret.to_hex(),
            format!("{}\r\n", secret.to_hex().to_uppercase()),
        ] {
            assert_eq!(ClusterSecret::from_text(&text).unwrap().to_hex(), secret.to_hex(), "{text:?}");
        }
        // 64 bytes, the most accepted, in both forms.
        let longest = ClusterSecret::from_bytes(&[0xa5; 64]).unwrap();
        assert_eq!(ClusterSecret::from_text(&longest.to_base64()).unwrap().len(), 64);
        assert_eq!(ClusterSecret::from_text(&longest.to_hex()).unwrap().len(), 64);
    }

    #[test]
    fn short_text_secret_names_what_it_decodes_to() {
        // The 32-digit hex the tests used to write is 16 bytes now, not 32.
        assert_eq!(
            ClusterSecret::from_text("0123456789abcdef0123456789abcdef").unwrap_err(),
            SecretError::TooShort { len: 16, min: 32 }
        );
        let short = ClusterSecret::from_bytes(&[1; 64]).unwrap().to_base64();
        assert_eq!(ClusterSecret::from_text(&short[..40]).unwrap_err(), SecretError::TooShort { len: 30, min: 32 });
        assert_eq!(ClusterSecret::from_text("").unwrap_err(), SecretError::TooShort { len: 0, min: 32 });
        assert_eq!(ClusterSecret::from_text(" \n").unwrap_err(), SecretError::TooShort { len: 0, min: 32 });
        let long = "QUJD".repeat(22); // 66 bytes
        assert_eq!(ClusterSecret::from_text(&long).unwrap_err(), SecretError::TooLong { len: 66, max: 64 });
        let error = ClusterSecret::from_text("c2hvcnQ=").unwrap_err().to_string();
        assert!(error.contains("5 bytes") && error.contains("32"), "{error}");
    }

    #[test]
    fn raw_text_and_broken_base64_are_refused_as_undecodable() {
        let undecodable = |text: &str| match ClusterSecret::from_text(text) {
            Err(SecretError::Undecodable { problem }) => problem,
            other => panic!("{text:?}: {other:?}"),
        };
        // The old raw-text secrets: a pass phrase, and the form the examples used.
        assert_eq!(undecodable("correct horse battery staple"), Base64Problem::InvalidCharacter { position: 7 });
        assert_eq!(undecodable(&format!("example-secret-{:032x}", 7)), Base64Problem::InvalidCharacter { position: 7 });
        // URL-safe base64 is not the standard alphabet.
        let url_safe = ClusterSecret::from_bytes(&[0xfb; 32]).unwrap().to_base64().replace('+', "-").replace('/', "_");
        assert!(matches!(undecodable(&url_safe), Base64Problem::InvalidCharacter { .. }));
        let good = ClusterSecret::from_bytes(&[0xff; 32]).unwrap().to_base64();
        let unpadded = good.trim_end_matches('=');
        assert_eq!(undecodable(&format!("{unpadded}AA")), Base64Problem::InvalidLength { characters: 45 });
        // 43 characters carry 258 bits: the last one's low 2 bits must be zero.
        assert_eq!(undecodable(&format!("{}/", &unpadded[..42])), Base64Problem::InvalidLastCharacter { position: 42 });
        // A stray `=` is a character out of place.
        assert_eq!(undecodable(&format!("{good}=")), Base64Problem::InvalidCharacter { position: 43 });
        assert_eq!(undecodable(&format!("={unpadded}")), Base64Problem::InvalidCharacter { position: 0 });
        // The message never shows the offending character (it is part of a secret).
        let message = ClusterSecret::from_text("abcdefghijklmnopqrstuvwxyz0123456789abcdefg!").unwrap_err().to_string();
        assert!(message.contains("position 43") && !message.contains('!'), "{message}");
    }

    #[test]
    fn handshake_with_shared_secret_establishes_both_sides() {
        let (a, b) = handshake(&secret(1), &secret(1), hello("a", 1), hello("b", 2));
        assert_eq!(a.unwrap().peer, NodeId::new("b", 7));
        assert_eq!(b.unwrap().peer, NodeId::new("a", 7));
    }

    #[test]
    fn handshake_with_wrong_secret_fails_with_bad_proof_on_both_sides() {
        // The initiator sees the responder's bad proof first.
        let (a, _) = handshake(&secret(1), &secret(2), hello("a", 1), hello("b", 2));
        assert_eq!(a.unwrap_err().as_str(), "bad_proof");

        // The responder refuses an initiator whose proof was made with another secret.
        let (_, hello_bytes) = InitiatorHandshake::start(hello("a", 1)).unwrap();
        let (responder, _) =
            ResponderHandshake::new(hello("b", 2)).unwrap().on_hello(&secret(1), &hello_bytes).unwrap();
        let wrong = prove(&secret(2), Role::Initiator, &hello("a", 1), &[2; NONCE_BYTES]);
        assert_eq!(responder.on_proof(&secret(1), &wrong.encode()), Err(HandshakeError::BadProof));
    }

    #[test]
    fn reflected_proof_is_refused() {
        let s = secret(1);
        let a = hello("a", 1);
        let nonce = [9; NONCE_BYTES];
        let responder_proof = prove(&s, Role::Responder, &a, &nonce);
        assert_eq!(verify_proof(&s, Role::Responder, &a, &nonce, &responder_proof), Ok(()));
        assert_eq!(verify_proof(&s, Role::Initiator, &a, &nonce, &responder_proof), Err(HandshakeError::BadProof));

        // The responder's own ack proof, sent back to it as the initiator's proof, fails.
        let (_, hello_bytes) = InitiatorHandshake::start(hello("a", 1)).unwrap();
        let (responder, ack) = ResponderHandshake::new(hello("b", 2)).unwrap().on_hello(&s, &hello_bytes).unwrap();
        let reflected = HelloAck::decode(&ack).unwrap().proof;
        assert_eq!(responder.on_proof(&s, &reflected.encode()), Err(HandshakeError::BadProof));
    }

    #[test]
    fn reflected_hello_is_refused_as_self_connection() {
        let (_, hello_bytes) = InitiatorHandshake::start(hello("a", 1)).unwrap();
        let error = ResponderHandshake::new(hello("a", 2)).unwrap().on_hello(&secret(1), &hello_bytes).unwrap_err();
        assert_eq!(error.as_str(), "self_connection");
    }

    #[test]
    fn proof_replayed_against_a_fresh_nonce_is_refused() {
        let s = secret(1);
        let old = prove(&s, Role::Initiator, &hello("a", 1), &[2; NONCE_BYTES]);
        assert_eq!(
            verify_proof(&s, Role::Initiator, &hello("a", 1), &[3; NONCE_BYTES], &old),
            Err(HandshakeError::BadProof)
        );
    }

    #[test]
    fn proof_does_not_vouch_for_another_node_name() {
        let s = secret(1);
        let proof = prove(&s, Role::Initiator, &hello("a", 1), &[2; NONCE_BYTES]);
        assert_eq!(
            verify_proof(&s, Role::Initiator, &hello("mallory", 1), &[2; NONCE_BYTES], &proof),
            Err(HandshakeError::BadProof)
        );
    }

    #[test]
    fn hello_refusals_carry_their_metric_reason() {
        let mut bad_magic = hello("a", 1);
        bad_magic.magic = *b"HTTP";
        let mut old_version = hello("a", 1);
        old_version.version = PROTOCOL_VERSION + 1;
        let other_cluster = Hello::new("staging", NodeId::new("a", 1), [1; NONCE_BYTES]);
        let cases = [(bad_magic, "bad_magic"), (old_version, "version_mismatch"), (other_cluster, "cluster_mismatch")];
        for (peer, reason) in cases {
            let bytes = peer.encode().unwrap();
            let error = ResponderHandshake::new(hello("b", 2)).unwrap().on_hello(&secret(1), &bytes).unwrap_err();
            assert_eq!(error.as_str(), reason, "{error}");
        }
        let bytes = hello("a", 1).encode().unwrap();
        for bad in [&bytes[..bytes.len() - 1], &[bytes.as_slice(), &[0]].concat()[..], &bytes[..3]] {
            let error = Hello::decode(bad).unwrap_err();
            assert_eq!(error.as_str(), "malformed", "{error}");
        }
    }

    #[test]
    fn hello_with_invalid_utf8_or_empty_name_is_malformed() {
        let mut bytes = hello("ab", 1).encode().unwrap();
        let name_at = 4 + 2 + 1 + "prod".len() + 1;
        bytes[name_at] = 0xff;
        assert_eq!(Hello::decode(&bytes).unwrap_err(), malformed("bad node name"));
        let mut bytes = hello("a", 1).encode().unwrap();
        bytes[6] = 0; // empty cluster name
        assert!(matches!(Hello::decode(&bytes), Err(HandshakeError::Malformed { .. })));
    }

    #[test]
    fn encoding_refuses_empty_or_overlong_names() {
        let long = Hello::new("x".repeat(MAX_NAME_BYTES + 1), NodeId::new("a", 1), [0; NONCE_BYTES]);
        assert_eq!(long.encode().unwrap_err(), EncodeError::BadName { field: "cluster", len: 256, max: 255 });
        let empty = Hello::new("prod", NodeId::new("", 1), [0; NONCE_BYTES]);
        assert!(ResponderHandshake::new(empty).is_err());
        let longest = Hello::new("x".repeat(MAX_NAME_BYTES), NodeId::new("a", 1), [0; NONCE_BYTES]);
        assert_eq!(Hello::decode(&longest.encode().unwrap()).unwrap(), longest);
    }

    #[test]
    fn gossip_datagram_opens_with_the_same_secret_only() {
        let datagram = seal(&secret(1), b"members");
        assert_eq!(datagram.len(), 7 + TAG_BYTES);
        assert_eq!(open(&secret(1), &datagram), Ok(&b"members"[..]));
        assert_eq!(open(&secret(2), &datagram), Err(AuthError::BadTag));
        assert_eq!(open(&secret(1), &seal(&secret(1), b"")), Ok(&b""[..]));
    }

    #[test]
    fn truncated_gossip_datagram_is_refused() {
        let datagram = seal(&secret(1), b"members");
        assert_eq!(open(&secret(1), &datagram[..TAG_BYTES - 1]), Err(AuthError::Truncated { len: 31 }));
        assert_eq!(open(&secret(1), &datagram[..datagram.len() - 1]), Err(AuthError::BadTag));
        assert_eq!(open(&secret(1), &[]).unwrap_err().as_str(), "truncated");
    }

    #[test]
    fn gossip_tag_never_passes_as_handshake_proof() {
        let s = secret(1);
        let a = hello("a", 1);
        let nonce = [5; NONCE_BYTES];
        let mut transcript = Role::Initiator.label().to_vec();
        transcript.extend_from_slice(&nonce);
        let datagram = seal(&s, &transcript);
        let tag = Proof::decode(&datagram[transcript.len()..]).unwrap();
        assert_eq!(verify_proof(&s, Role::Initiator, &a, &nonce, &tag), Err(HandshakeError::BadProof));
    }

    fn arbitrary_hello() -> impl Strategy<Value = Hello> {
        ("[a-z]{1,20}", "[a-zA-Z0-9é._-]{1,40}", any::<u64>(), any::<[u8; NONCE_BYTES]>())
            .prop_map(|(cluster, name, inc, nonce)| Hello::new(cluster, NodeId::new(name, inc), nonce))
    }

    proptest! {
        #[test]
        fn hello_and_ack_roundtrip(hello in arbitrary_hello(), proof in any::<[u8; TAG_BYTES]>()) {
            prop_assert_eq!(Hello::decode(&hello.encode().unwrap()).unwrap(), hello.clone());
            let ack = HelloAck { hello, proof: Proof(proof) };
            prop_assert_eq!(HelloAck::decode(&ack.encode().unwrap()).unwrap(), ack);
        }

        #[test]
        fn random_handshake_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Hello::decode(&bytes);
            let _ = HelloAck::decode(&bytes);
            let _ = Proof::decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
            with_magic.extend_from_slice(&bytes);
            let _ = Hello::decode(&with_magic);
            let _ = HelloAck::decode(&with_magic);
            let responder = ResponderHandshake::new(hello("b", 2)).unwrap();
            let _ = responder.on_hello(&secret(1), &with_magic);
        }

        #[test]
        fn flipping_any_bit_of_a_datagram_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut datagram = seal(&secret(1), &payload);
            let bit = bit.index(datagram.len() * 8);
            datagram[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(open(&secret(1), &datagram), Err(AuthError::BadTag));
        }

        #[test]
        fn random_datagrams_never_panic_and_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(open(&secret(1), &bytes).is_err());
        }

        #[test]
        fn secret_from_any_text_never_panics(text in ".{0,200}") {
            let _ = ClusterSecret::from_hex(&text);
            let _ = ClusterSecret::from_text(&text);
        }

        #[test]
        fn base64_like_text_never_panics(text in "[A-Za-z0-9+/=\\s-]{0,120}") {
            let _ = ClusterSecret::from_text(&text);
        }

        #[test]
        fn every_accepted_secret_roundtrips_through_both_text_forms(
            bytes in proptest::collection::vec(any::<u8>(), MIN_SECRET_BYTES..=MAX_SECRET_BYTES),
        ) {
            let secret = ClusterSecret::from_bytes(&bytes).unwrap();
            prop_assert_eq!(ClusterSecret::from_text(&secret.to_base64()).unwrap().to_hex(), secret.to_hex());
            prop_assert_eq!(ClusterSecret::from_text(&secret.to_hex()).unwrap().to_hex(), secret.to_hex());
        }
    }
}
