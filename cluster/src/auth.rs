//! The cluster secret and the vocabulary of handshake refusals (SPEC sections 5.1 and 5.2).
//!
//! Role: read, validate and hold the shared [`ClusterSecret`] (32 to 64 bytes of key material,
//! written as hex or base64 in a secret file), and name why a handshake was refused
//! ([`HandshakeError`], whose [`as_str`](HandshakeError::as_str) is the metric `reason`). The
//! protocol itself (key derivation, the Noise handshake, records, sealed datagrams) is
//! [`crate::secure`]; no key used on the wire is the secret itself.
//!
//! Invariants: every parser checks lengths before reading or allocating and never panics; the
//! secret's bytes never appear in `Debug` output or error messages.

use std::fmt;

use base64::Engine as _;
use rand::{CryptoRng, TryRng};
use thiserror::Error;

/// The smallest accepted cluster secret, in bytes of key material (256 bits).
///
/// Why 32 and not 16: every wire key is derived from it, and one captured handshake or datagram
/// lets an outsider who knows the cluster name test guesses offline at hash speed, for as long as
/// the key lives. 256 bits puts that search out of reach whatever the attacker's budget, and it is
/// the size `cohort keygen` makes, so the floor costs an operator nothing.
pub const MIN_SECRET_BYTES: usize = 32;

/// The largest accepted cluster secret, in bytes.
///
/// Why: the keys derived from it are 32 bytes, so a longer secret adds no strength; the bound
/// also caps what a config file can make the node read.
pub const MAX_SECRET_BYTES: usize = 64;

/// The size of a secret made by [`ClusterSecret::generate`] (256 bits, the derived keys' size).
pub const GENERATED_SECRET_BYTES: usize = 32;

const _: () = assert!(MIN_SECRET_BYTES <= GENERATED_SECRET_BYTES && GENERATED_SECRET_BYTES <= MAX_SECRET_BYTES);

/// The first four bytes of every internode `Hello`: tells a Cohort peer from anything else on the
/// port.
pub const MAGIC: [u8; 4] = *b"CHRT";

/// The longest cluster name or node name in a `Hello`, in bytes (one length byte on the wire).
pub const MAX_NAME_BYTES: usize = 255;

/// The shared secret of a cluster. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Box<[u8]>,
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
        Ok(Self { bytes: bytes.into() })
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
        Self { bytes: bytes.into() }
    }

    /// A new random secret of [`GENERATED_SECRET_BYTES`] read straight from the operating
    /// system's generator (`getrandom(2)` on Linux), for keys that outlive the process:
    /// `cohort keygen`, `cohort up`, the chaos runner. Fails only when the OS has no generator
    /// to offer, which the caller reports rather than panics on.
    pub fn generate_from_os() -> Result<Self, rand::rngs::SysError> {
        let mut bytes = [0u8; GENERATED_SECRET_BYTES];
        rand::rngs::SysRng.try_fill_bytes(&mut bytes)?;
        Ok(Self { bytes: bytes.into() })
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
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
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
// Handshake refusals
// ---------------------------------------------------------------------------------------------

/// Why our own `Hello` could not be encoded (a local configuration problem, not a peer's).
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
        /// [`crate::secure::PROTOCOL_VERSION`].
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn secret_shorter_than_32_bytes_is_rejected() {
        assert_eq!(ClusterSecret::from_bytes(&[1; 31]).unwrap_err(), SecretError::TooShort { len: 31, min: 32 });
        assert_eq!(ClusterSecret::from_bytes(&[1; 16]).unwrap_err(), SecretError::TooShort { len: 16, min: 32 });
        assert!(ClusterSecret::from_bytes(&[1; 32]).is_ok());
        assert!(ClusterSecret::from_bytes(&[1; 64]).is_ok());
        assert_eq!(ClusterSecret::from_bytes(&[1; 65]).unwrap_err(), SecretError::TooLong { len: 65, max: 64 });
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
        assert_eq!(back.key_material(), secret.key_material());
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

    proptest! {
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
