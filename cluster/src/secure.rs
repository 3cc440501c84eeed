//! Wire security (SPEC 5.1 and 5.2, protocol version 2): per-purpose keys derived from the
//! cluster secret, the encrypted internode handshake and record layer, and sealed gossip
//! datagrams. Pure: bytes in, bytes out; randomness only for ephemeral keys and datagram nonces;
//! the time of a datagram is passed in.
//!
//! **Keys.** Every key is `HKDF-SHA256(salt = "cohort keys v2", ikm = cluster secret,
//! info = purpose | 0 | cluster name)`, so the internode and gossip keys are unrelated, and two
//! clusters sharing a secret but not a name share no key. A [`Keyring`] holds the keys of the
//! current secret and, during a rotation, of the next one: senders use the current key, receivers
//! accept either (as Consul's keyring does).
//!
//! **Internode connections** run `Noise_NNpsk0_25519_AESGCM_SHA256` (the `snow` crate, AES-GCM
//! from `ring`'s assembly, which uses the CPU's AES instructions): a
//! vetted protocol whose pre-shared key authenticates both sides as cluster members and whose
//! ephemeral Diffie-Hellman gives every connection fresh keys (forward secrecy: a secret leaked
//! later does not decrypt recorded traffic). Three messages, each in a `control` frame:
//!
//! ```text
//! initiator -> responder  Hello    magic "CHRT" | version u16 (2) | cluster_len u8 | cluster | noise(psk, e; identity)
//! responder -> initiator  HelloAck noise(e, ee; identity)
//! initiator -> responder  Confirm  noise transport message (empty)
//! identity = name_len u8 | node name | incarnation u64
//! ```
//!
//! The clear prefix lets an old or foreign peer be refused with a precise reason before any
//! cryptography; it and the link's hello kind are the Noise prologue, so both are authenticated.
//! The responder accepts the connection only after the `Confirm`, which only the holder of the
//! initiator's ephemeral key can produce: a recorded `Hello` replayed later opens nothing.
//! A responder that cannot decrypt a `Hello` sends nothing back, so a stranger who knows the
//! cluster name gets no answer to guess the secret against.
//!
//! After the handshake the data flows one way (the initiator writes, the responder reads) as
//! **records**: `len u16 | ciphertext` with at most [`MAX_RECORD_PLAINTEXT`] bytes of frames
//! inside. Each direction's nonce is a counter, so a replayed, reordered, dropped or altered
//! record fails to decrypt and closes the connection. A record is exactly the Noise transport
//! message snow would make at that counter; it is sealed and opened with `ring`'s AES-256-GCM
//! directly, under the key the Noise split gave its direction and with Noise's nonce, so that
//! frames are encrypted where they were encoded and decrypted where they were read (snow's
//! `write_message`/`read_message` copy into a second, zero-filled buffer). docs/protocol.md,
//! "Records", says why this is the same construction.
//!
//! **Gossip datagrams** are `version u8 (2) | nonce [24] | XChaCha20-Poly1305(key, nonce,
//! aad = version, sent_ms u64 | envelope)`. A datagram whose send time is more than the window
//! away from the receiver's clock is refused (`stale`), and one seen before within the window
//! is refused (`replayed`) by a bounded [`ReplayGuard`].
//!
//! Invariants: nothing here panics on any input; every refusal is a typed reason with a metric
//! label; secret and key bytes never appear in `Debug` output.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use bytes::{BufMut, BytesMut};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::CryptoRng;
use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;
use snow::{HandshakeState, TransportState};
use thiserror::Error;

use crate::auth::{ClusterSecret, HandshakeError, MAGIC, MAX_NAME_BYTES};
use crate::identity::NodeId;

/// The internode protocol version this build speaks; peers must match it exactly.
pub const PROTOCOL_VERSION: u16 = 2;

/// The Noise protocol of internode connections.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// The size of every derived key.
pub const KEY_BYTES: usize = 32;

/// The largest Noise message (the Noise specification's limit).
const MAX_NOISE_MESSAGE: usize = 65_535;

/// The buffer of one handshake message: an ephemeral key (32), an identity (at most 1 + 255 + 8)
/// and a tag (16) fit with room to spare.
///
/// Why not [`MAX_NOISE_MESSAGE`]: the responder runs for any stranger who connects, and four
/// zeroed 64 KiB buffers per attempt would be work and memory spent on nothing.
const HANDSHAKE_BUFFER: usize = 1024;

/// The size of a Noise (AES-GCM) tag.
const NOISE_TAG_BYTES: usize = 16;

/// The most frame bytes one record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_NOISE_MESSAGE - NOISE_TAG_BYTES;

/// Bytes before a record's ciphertext (its length).
pub const RECORD_HEADER_BYTES: usize = 2;

/// The most bytes one record takes on the wire: its length and the longest Noise message.
pub const MAX_RECORD_BYTES: usize = RECORD_HEADER_BYTES + MAX_NOISE_MESSAGE;

/// The version byte of a sealed gossip datagram.
pub const DATAGRAM_VERSION: u8 = 2;

/// The size of a gossip datagram nonce (XChaCha20).
pub const DATAGRAM_NONCE_BYTES: usize = 24;

/// What sealing adds to a gossip envelope: version, nonce, send time, tag.
pub const DATAGRAM_OVERHEAD: usize = 1 + DATAGRAM_NONCE_BYTES + 8 + 16;

/// HKDF salt of every derived key.
const KDF_SALT: &[u8] = b"cohort keys v2";
/// HKDF purpose of the internode pre-shared key.
const PURPOSE_INTERNODE: &[u8] = b"internode";
/// HKDF purpose of the gossip datagram key.
const PURPOSE_GOSSIP: &[u8] = b"gossip";
/// Start of the Noise prologue.
const PROLOGUE_LABEL: &[u8] = b"cohort internode v2\0";

/// One derived key. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_BYTES]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    fn derive(secret: &ClusterSecret, purpose: &[u8], cluster: &str) -> Self {
        let kdf = Hkdf::<Sha256>::new(Some(KDF_SALT), secret.key_material());
        let mut info = Vec::with_capacity(purpose.len() + 1 + cluster.len());
        info.extend_from_slice(purpose);
        info.push(0);
        info.extend_from_slice(cluster.as_bytes());
        let mut key = [0u8; KEY_BYTES];
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: expand cannot fail.
        let _ = kdf.expand(&info, &mut key);
        Self(key)
    }
}

/// The keys of the current cluster secret and, during a rotation, of the next one.
#[derive(Clone, Debug)]
pub struct Keyring {
    cluster: String,
    /// Internode pre-shared keys, the current one first.
    internode: Vec<Key>,
    /// Gossip keys, the current one first.
    gossip: Vec<Key>,
}

impl Keyring {
    /// The keys of `current` (used to send and accepted) and of `next` (accepted too) for the
    /// cluster named `cluster`.
    pub fn new(cluster: &str, current: &ClusterSecret, next: Option<&ClusterSecret>) -> Self {
        let secrets: Vec<&ClusterSecret> = std::iter::once(current).chain(next).collect();
        Self {
            cluster: cluster.to_owned(),
            internode: secrets.iter().map(|s| Key::derive(s, PURPOSE_INTERNODE, cluster)).collect(),
            gossip: secrets.iter().map(|s| Key::derive(s, PURPOSE_GOSSIP, cluster)).collect(),
        }
    }

    /// The cluster name the keys are bound to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }
}

// ---------------------------------------------------------------------------------------------
// Internode handshake
// ---------------------------------------------------------------------------------------------

/// A completed handshake: the peer holds a key of our keyring and names itself `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's identity, as it sent it under encryption.
    pub peer: NodeId,
}

fn noise_failure(what: &'static str) -> HandshakeError {
    HandshakeError::Malformed { what }
}

/// A Noise handshake state of [`NOISE_PARAMS`] with `psk` and `prologue`.
fn noise(psk: &Key, prologue: &[u8], initiator: bool) -> Result<HandshakeState, snow::Error> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse()?;
    let builder = snow::Builder::new(params).psk(0, &psk.0)?.prologue(prologue)?;
    if initiator { builder.build_initiator() } else { builder.build_responder() }
}

/// The clear prefix of a `Hello`: magic, version, cluster.
fn clear_prefix(cluster: &str) -> Result<Vec<u8>, HandshakeError> {
    let len = u8::try_from(cluster.len()).ok().filter(|l| *l > 0).ok_or(noise_failure("bad cluster name"))?;
    let mut out = Vec::with_capacity(4 + 2 + 1 + cluster.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.push(len);
    out.extend_from_slice(cluster.as_bytes());
    Ok(out)
}

fn prologue(hello_kind: u8, prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PROLOGUE_LABEL.len() + 1 + prefix.len());
    out.extend_from_slice(PROLOGUE_LABEL);
    out.push(hello_kind);
    out.extend_from_slice(prefix);
    out
}

fn encode_identity(node: &NodeId) -> Result<Vec<u8>, HandshakeError> {
    let len = u8::try_from(node.name.len()).ok().filter(|l| *l > 0).ok_or(noise_failure("bad node name"))?;
    let mut out = Vec::with_capacity(1 + node.name.len() + 8);
    out.push(len);
    out.extend_from_slice(node.name.as_bytes());
    out.extend_from_slice(&node.incarnation.to_be_bytes());
    Ok(out)
}

fn decode_identity(bytes: &[u8]) -> Result<NodeId, HandshakeError> {
    let (&len, rest) = bytes.split_first().ok_or(noise_failure("empty identity"))?;
    let len = usize::from(len);
    if len == 0 || rest.len() != len + 8 {
        return Err(noise_failure("bad identity length"));
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| noise_failure("identity name not UTF-8"))?;
    let mut incarnation = [0u8; 8];
    incarnation.copy_from_slice(&rest[len..]);
    Ok(NodeId::new(name, u64::from_be_bytes(incarnation)))
}

/// Splits a `Hello` into its clear prefix fields and the Noise message, checking magic, version
/// and cluster first (so an old or foreign peer gets a precise reason).
fn parse_hello<'a>(hello: &'a [u8], own_cluster: &str) -> Result<(&'a [u8], &'a [u8]), HandshakeError> {
    let magic: [u8; 4] = hello.get(..4).and_then(|m| m.try_into().ok()).ok_or(noise_failure("truncated magic"))?;
    if magic != MAGIC {
        return Err(HandshakeError::BadMagic { found: magic });
    }
    let version = hello.get(4..6).ok_or(noise_failure("truncated version"))?;
    let version = u16::from_be_bytes([version[0], version[1]]);
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version });
    }
    let len = usize::from(*hello.get(6).ok_or(noise_failure("truncated cluster"))?);
    let cluster = hello.get(7..7 + len).ok_or(noise_failure("truncated cluster"))?;
    if len == 0 || len > MAX_NAME_BYTES {
        return Err(noise_failure("bad cluster name"));
    }
    if cluster != own_cluster.as_bytes() {
        return Err(HandshakeError::ClusterMismatch {
            ours: own_cluster.to_owned(),
            theirs: String::from_utf8_lossy(cluster).into_owned(),
        });
    }
    Ok(hello.split_at(7 + len))
}

/// The dialling side, waiting for the `HelloAck`.
pub struct Initiator {
    state: HandshakeState,
    own: NodeId,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator").field("own", &self.own).finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake on the link whose hello frame kind is `hello_kind`: the state and the
    /// `Hello` bytes to send.
    pub fn start(keys: &Keyring, own: &NodeId, hello_kind: u8) -> Result<(Self, Vec<u8>), HandshakeError> {
        let prefix = clear_prefix(&keys.cluster)?;
        let identity = encode_identity(own)?;
        let psk = keys.internode.first().ok_or(noise_failure("no key"))?;
        let mut state =
            noise(psk, &prologue(hello_kind, &prefix), true).map_err(|_| noise_failure("noise initiator"))?;
        let mut message = vec![0u8; HANDSHAKE_BUFFER];
        let n = state.write_message(&identity, &mut message).map_err(|_| noise_failure("noise hello"))?;
        let mut hello = prefix;
        hello.extend_from_slice(&message[..n]);
        Ok((Self { state, own: own.clone() }, hello))
    }

    /// Reads the responder's `HelloAck`: the peer, the `Confirm` bytes to send, and the sealer
    /// of the connection's records.
    pub fn on_ack(mut self, ack: &[u8]) -> Result<(Peer, Vec<u8>, Sealer), HandshakeError> {
        let mut identity = vec![0u8; HANDSHAKE_BUFFER];
        let n = self.state.read_message(ack, &mut identity).map_err(|_| HandshakeError::BadProof)?;
        let peer = decode_identity(&identity[..n])?;
        if peer.name == self.own.name {
            return Err(HandshakeError::SelfConnection { name: peer.name });
        }
        let (to_responder, _) = self.state.dangerously_get_raw_split();
        let mut transport = self.state.into_transport_mode().map_err(|_| noise_failure("noise transport"))?;
        let mut confirm = vec![0u8; NOISE_TAG_BYTES];
        let n = transport.write_message(&[], &mut confirm).map_err(|_| noise_failure("noise confirm"))?;
        confirm.truncate(n);
        // The records continue the initiator's Noise cipher state: same key, next nonce (1).
        let sealer = Sealer { cipher: RecordCipher::new(to_responder, transport.sending_nonce())? };
        Ok((Peer { peer }, confirm, sealer))
    }
}

/// The accepting side, before the `Hello`.
#[derive(Debug)]
pub struct Responder;

impl Responder {
    /// Reads the initiator's `Hello` on the link named by `hello_kind` (trying every key of the
    /// keyring): the state waiting for the `Confirm` and the `HelloAck` bytes to send.
    pub fn on_hello(
        keys: &Keyring,
        own: &NodeId,
        hello_kind: u8,
        hello: &[u8],
    ) -> Result<(AwaitingConfirm, Vec<u8>), HandshakeError> {
        let (prefix, message) = parse_hello(hello, &keys.cluster)?;
        let prologue = prologue(hello_kind, prefix);
        let mut identity = vec![0u8; HANDSHAKE_BUFFER];
        let mut opened = None;
        for psk in &keys.internode {
            let Ok(mut state) = noise(psk, &prologue, false) else {
                return Err(noise_failure("noise responder"));
            };
            if let Ok(n) = state.read_message(message, &mut identity) {
                opened = Some((state, n));
                break;
            }
        }
        let (mut state, n) = opened.ok_or(HandshakeError::BadProof)?;
        let peer = decode_identity(&identity[..n])?;
        if peer.name == own.name {
            return Err(HandshakeError::SelfConnection { name: peer.name });
        }
        let mut ack = vec![0u8; HANDSHAKE_BUFFER];
        let n = state.write_message(&encode_identity(own)?, &mut ack).map_err(|_| noise_failure("noise ack"))?;
        ack.truncate(n);
        let (from_initiator, _) = state.dangerously_get_raw_split();
        let transport = state.into_transport_mode().map_err(|_| noise_failure("noise transport"))?;
        Ok((AwaitingConfirm { transport, from_initiator: Key(from_initiator), peer }, ack))
    }
}

/// The accepting side, waiting for the initiator's `Confirm`.
pub struct AwaitingConfirm {
    transport: TransportState,
    /// The initiator-to-responder key of the Noise split, for the records after the `Confirm`.
    from_initiator: Key,
    peer: NodeId,
}

impl fmt::Debug for AwaitingConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitingConfirm").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl AwaitingConfirm {
    /// Checks the `Confirm`: the peer and the opener of the connection's records.
    pub fn on_confirm(mut self, confirm: &[u8]) -> Result<(Peer, Opener), HandshakeError> {
        let mut empty = [0u8; 1];
        match self.transport.read_message(confirm, &mut empty) {
            Ok(0) => {
                // The records continue the initiator's Noise cipher state: same key, next nonce.
                let cipher = RecordCipher::new(self.from_initiator.0, self.transport.receiving_nonce())?;
                Ok((Peer { peer: self.peer }, Opener { cipher }))
            }
            Ok(_) => Err(noise_failure("confirm carries data")),
            Err(_) => Err(HandshakeError::BadProof),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// Why a record was refused; the connection closes. [`as_str`](Self::as_str) is the `reason`
/// label of `cohort_internode_frame_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RecordError {
    /// `record_auth`: the record does not decrypt under the next nonce (altered, replayed,
    /// reordered or dropped on the way, or not from the peer that made the handshake).
    #[error("record failed authentication")]
    Auth,
    /// `record_length`: a record's length is shorter than its tag.
    #[error("record of {len} bytes is shorter than its tag")]
    Length {
        /// The announced length.
        len: usize,
    },
}

impl RecordError {
    /// Every reason label, so the counters can be exported at 0 from boot.
    pub const REASONS: [&'static str; 2] = ["record_auth", "record_length"];

    /// The metric `reason` label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            RecordError::Auth => "record_auth",
            RecordError::Length { .. } => "record_length",
        }
    }
}

/// One direction's record cipher: AES-256-GCM (ring) under the key the Noise split gave that
/// direction, with the nonce of Noise's `AESGCM` cipher functions (32 zero bits, then the
/// counter as 64 bits big-endian) and empty associated data. A record is therefore byte for byte
/// the Noise transport message snow would make at that counter; what ring adds is sealing and
/// opening in place, where snow's `write_message`/`read_message` copy into a second buffer.
///
/// Not `Clone`: one counter per direction and connection, so no nonce is used twice.
struct RecordCipher {
    key: LessSafeKey,
    /// The counter of the next record; `u64::MAX` is never used (Noise reserves it).
    next: u64,
}

impl RecordCipher {
    /// The cipher of one direction from its key of the Noise split, continuing at `next`.
    fn new(key: [u8; KEY_BYTES], next: u64) -> Result<Self, HandshakeError> {
        // A 32-byte key is always a valid AES-256 key: this cannot fail.
        let key = UnboundKey::new(&aead::AES_256_GCM, &key).map_err(|_| noise_failure("record key"))?;
        Ok(Self { key: LessSafeKey::new(key), next })
    }

    /// The next record's nonce, or `None` when the counter is used up (2^64 - 1 records, as
    /// snow's `validate_nonce`): the connection must close.
    fn nonce(&mut self) -> Option<Nonce> {
        if self.next == u64::MAX {
            return None;
        }
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        Some(Nonce::assume_unique_for_key(nonce))
    }
}

/// Seals the frames a connection writes into records (the initiator's side).
///
/// In place: [`start_record`](Self::start_record) reserves a record's length at the end of the
/// write buffer, the caller encodes frames right after it, and
/// [`finish_record`](Self::finish_record) encrypts them where they are and appends the tag.
pub struct Sealer {
    cipher: RecordCipher,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// Where a record being built in a write buffer starts; see [`Sealer::start_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a started record must be finished"]
pub struct RecordStart(usize);

impl RecordStart {
    /// The frame bytes appended to `out` since the record started.
    pub fn plaintext_len(self, out: &BytesMut) -> usize {
        out.len().saturating_sub(self.0 + RECORD_HEADER_BYTES)
    }

    /// Drops the record from `out` (its length and whatever was appended after it) without
    /// sealing it: no nonce is used.
    pub fn cancel(self, out: &mut BytesMut) {
        out.truncate(self.0);
    }
}

impl Sealer {
    /// Starts a record at the end of `out` (room for its length); append at most
    /// [`MAX_RECORD_PLAINTEXT`] bytes of frames, then call [`finish_record`](Self::finish_record).
    pub fn start_record(out: &mut BytesMut) -> RecordStart {
        let start = out.len();
        out.put_u16(0);
        RecordStart(start)
    }

    /// Encrypts the bytes appended since `start` in place and appends the tag. Fails when they
    /// are more than [`MAX_RECORD_PLAINTEXT`] (a caller bug) or when the connection's nonces are
    /// used up (2^64 - 1 records): close the connection. On failure `out` is cut back to where
    /// the record started.
    pub fn finish_record(&mut self, out: &mut BytesMut, start: RecordStart) -> Result<(), RecordError> {
        let body = start.0 + RECORD_HEADER_BYTES;
        let plaintext_len = start.plaintext_len(out);
        if out.len() < body || plaintext_len > MAX_RECORD_PLAINTEXT {
            out.truncate(start.0);
            return Err(RecordError::Length { len: plaintext_len + NOISE_TAG_BYTES });
        }
        let Some(nonce) = self.cipher.nonce() else {
            out.truncate(start.0);
            return Err(RecordError::Auth);
        };
        let Ok(tag) = self.cipher.key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut out[body..]) else {
            out.truncate(start.0);
            return Err(RecordError::Auth);
        };
        out.extend_from_slice(tag.as_ref());
        // plaintext_len + 16 <= MAX_NOISE_MESSAGE = u16::MAX, checked above.
        let len = u16::try_from(plaintext_len + NOISE_TAG_BYTES).unwrap_or(u16::MAX);
        out[start.0..body].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Appends `plaintext` to `out` as records of at most [`MAX_RECORD_PLAINTEXT`] bytes each
    /// (a copy; the write path builds records in place). Fails only when the connection's
    /// nonces are exhausted: close it.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), RecordError> {
        out.reserve(Self::sealed_len(plaintext.len()));
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            let start = Self::start_record(out);
            out.extend_from_slice(chunk);
            self.finish_record(out, start)?;
        }
        Ok(())
    }

    /// The bytes `plaintext_len` bytes of frames take once sealed.
    pub fn sealed_len(plaintext_len: usize) -> usize {
        let records = plaintext_len.div_ceil(MAX_RECORD_PLAINTEXT).max(1);
        plaintext_len + records * (RECORD_HEADER_BYTES + NOISE_TAG_BYTES)
    }
}

/// Opens the records a connection reads (the responder's side).
pub struct Opener {
    cipher: RecordCipher,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Opener(..)")
    }
}

impl Opener {
    /// Opens every whole record at the front of `raw` in place and takes them off it: the
    /// plaintext of those records, in order (possibly empty); a partial record stays in `raw`.
    ///
    /// No copy: each record is decrypted onto the end of the plaintext of the ones before it, in
    /// `raw`'s own memory (which the returned buffer then shares). On an error nothing is
    /// returned and the connection must close (`raw` may then hold partly decrypted records).
    pub fn open_in_place(&mut self, raw: &mut BytesMut) -> Result<BytesMut, RecordError> {
        // `read` walks the records; `written` is where the plaintext so far ends.
        let (mut read, mut written) = (0usize, 0usize);
        while let Some(header) = raw.get(read..read + RECORD_HEADER_BYTES) {
            let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
            if len < NOISE_TAG_BYTES {
                return Err(RecordError::Length { len });
            }
            let body = read + RECORD_HEADER_BYTES;
            let end = body + len;
            if raw.len() < end {
                break;
            }
            let nonce = self.cipher.nonce().ok_or(RecordError::Auth)?;
            let tag_at = end - NOISE_TAG_BYTES;
            let mut tag = [0u8; NOISE_TAG_BYTES];
            tag.copy_from_slice(&raw[tag_at..end]);
            // The ciphertext at `body..tag_at` is decrypted to `written..`, which is at or
            // before it (ring reads each block before writing over it).
            self.cipher
                .key
                .open_in_place_separate_tag(
                    nonce,
                    Aad::empty(),
                    Tag::from(tag),
                    &mut raw[written..tag_at],
                    body - written..,
                )
                .map_err(|_| RecordError::Auth)?;
            written += len - NOISE_TAG_BYTES;
            read = end;
        }
        if read == 0 {
            // Nothing whole yet; an empty buffer that does not share `raw`'s memory.
            return Ok(BytesMut::new());
        }
        let mut plaintext = raw.split_to(read);
        plaintext.truncate(written);
        Ok(plaintext)
    }

    /// Decrypts every whole record at the front of `raw` (removing it) onto the end of
    /// `plaintext`; a partial record stays in `raw`. Returns the plaintext bytes added.
    pub fn open(&mut self, raw: &mut BytesMut, plaintext: &mut BytesMut) -> Result<usize, RecordError> {
        let opened = self.open_in_place(raw)?;
        plaintext.extend_from_slice(&opened);
        Ok(opened.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Gossip datagrams
// ---------------------------------------------------------------------------------------------

/// Why a gossip datagram was refused; [`as_str`](Self::as_str) is the `reason` label of
/// `cohort_gossip_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DatagramError {
    /// `truncated`: shorter than the sealing overhead.
    #[error("datagram of {len} bytes is shorter than its sealing")]
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// `version_mismatch`: sealed by another protocol version.
    #[error("datagram version {found}, ours {DATAGRAM_VERSION}")]
    Version {
        /// The version byte received.
        found: u8,
    },
    /// `bad_tag`: does not decrypt under any key of the keyring (wrong secret or cluster, or
    /// altered in flight).
    #[error("datagram failed authentication")]
    BadTag,
    /// `stale`: sent further from our clock than the window allows (an old capture replayed, or
    /// a clock far off).
    #[error("datagram sent {skew_ms} ms from our clock, outside the window")]
    Stale {
        /// How far its send time is from our clock.
        skew_ms: u64,
    },
    /// `replayed`: the same datagram was accepted before within the window.
    #[error("datagram seen before")]
    Replayed,
}

impl DatagramError {
    /// Every reason label, so the counters can be exported at 0 from boot.
    pub const REASONS: [&'static str; 5] = ["truncated", "version_mismatch", "bad_tag", "stale", "replayed"];

    /// The metric `reason` label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            DatagramError::Truncated { .. } => "truncated",
            DatagramError::Version { .. } => "version_mismatch",
            DatagramError::BadTag => "bad_tag",
            DatagramError::Stale { .. } => "stale",
            DatagramError::Replayed => "replayed",
        }
    }
}

/// Seals a gossip `envelope` sent at `now_ms` (milliseconds since the Unix epoch) with the
/// keyring's current gossip key.
pub fn seal_datagram<R: CryptoRng + ?Sized>(keys: &Keyring, now_ms: u64, envelope: &[u8], rng: &mut R) -> Vec<u8> {
    let mut nonce = [0u8; DATAGRAM_NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let mut plaintext = Vec::with_capacity(8 + envelope.len());
    plaintext.extend_from_slice(&now_ms.to_be_bytes());
    plaintext.extend_from_slice(envelope);
    let Some(key) = keys.gossip.first() else { return Vec::new() };
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let aad = [DATAGRAM_VERSION];
    // Encryption of an in-memory buffer under a valid key cannot fail.
    let sealed = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: &plaintext, aad: &aad }).unwrap_or_default();
    let mut out = Vec::with_capacity(1 + DATAGRAM_NONCE_BYTES + sealed.len());
    out.push(DATAGRAM_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a datagram made by [`seal_datagram`] with a key of `keys`, received at `now_ms`:
/// its envelope, or why it is refused. `guard` remembers what was accepted within the window.
pub fn open_datagram(
    keys: &Keyring,
    now_ms: u64,
    guard: &mut ReplayGuard,
    datagram: &[u8],
) -> Result<Vec<u8>, DatagramError> {
    if datagram.len() < DATAGRAM_OVERHEAD {
        return Err(DatagramError::Truncated { len: datagram.len() });
    }
    if datagram[0] != DATAGRAM_VERSION {
        return Err(DatagramError::Version { found: datagram[0] });
    }
    let (nonce, sealed) = datagram[1..].split_at(DATAGRAM_NONCE_BYTES);
    let aad = [DATAGRAM_VERSION];
    let plaintext = keys
        .gossip
        .iter()
        .find_map(|key| {
            let cipher = XChaCha20Poly1305::new((&key.0).into());
            cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad }).ok()
        })
        .ok_or(DatagramError::BadTag)?;
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&plaintext[..8]);
    let sent_ms = u64::from_be_bytes(sent);
    let mut id = [0u8; DATAGRAM_NONCE_BYTES];
    id.copy_from_slice(nonce);
    guard.check(now_ms, sent_ms, id)?;
    Ok(plaintext[8..].to_vec())
}

/// The datagrams accepted within the window, to refuse a second copy; bounded.
///
/// When it holds [`ReplayGuard::capacity`] entries it forgets the oldest and from then on refuses
/// anything sent before the newest forgotten one (as stale): it never accepts a replay, at the
/// cost of refusing very late honest datagrams under a flood, which SWIM tolerates as loss.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    /// Accepted (send time, nonce), ordered by send time.
    seen: BTreeSet<(u64, [u8; DATAGRAM_NONCE_BYTES])>,
    /// Insertion order, to evict when full.
    order: VecDeque<(u64, [u8; DATAGRAM_NONCE_BYTES])>,
    /// Send times below this are refused: forgotten entries lived there.
    floor_ms: u64,
}

impl ReplayGuard {
    /// A guard for datagrams sent within `window_ms` of the receiver's clock, remembering at most
    /// `capacity` of them.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self { window_ms, capacity: capacity.max(1), seen: BTreeSet::new(), order: VecDeque::new(), floor_ms: 0 }
    }

    /// The most datagrams remembered.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn check(&mut self, now_ms: u64, sent_ms: u64, nonce: [u8; DATAGRAM_NONCE_BYTES]) -> Result<(), DatagramError> {
        let skew_ms = now_ms.abs_diff(sent_ms);
        if skew_ms > self.window_ms || sent_ms < self.floor_ms {
            return Err(DatagramError::Stale { skew_ms });
        }
        // Forget what has left the window (it would be refused as stale now anyway).
        let horizon = now_ms.saturating_sub(self.window_ms);
        while self.seen.first().is_some_and(|(t, _)| *t < horizon) {
            self.seen.pop_first();
        }
        if !self.seen.insert((sent_ms, nonce)) {
            return Err(DatagramError::Replayed);
        }
        self.order.push_back((sent_ms, nonce));
        while self.seen.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            if self.seen.remove(&oldest) {
                self.floor_ms = self.floor_ms.max(oldest.0 + 1);
            }
        }
        // Keep the insertion log from outgrowing the set by entries already expired.
        while self.order.len() > 2 * self.capacity {
            self.order.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(byte: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[byte; 32]).unwrap()
    }

    fn keys(byte: u8) -> Keyring {
        Keyring::new("prod", &secret(byte), None)
    }

    /// A whole handshake: (initiator's view, responder's view, sealer, opener).
    fn handshake(a: &Keyring, b: &Keyring) -> Result<(Peer, Peer, Sealer, Opener), HandshakeError> {
        let (initiator, hello) = Initiator::start(a, &NodeId::new("a", 1), 1)?;
        let (awaiting, ack) = Responder::on_hello(b, &NodeId::new("b", 7), 1, &hello)?;
        let (at_a, confirm, sealer) = initiator.on_ack(&ack)?;
        let (at_b, opener) = awaiting.on_confirm(&confirm)?;
        Ok((at_a, at_b, sealer, opener))
    }

    #[test]
    fn both_sides_learn_each_other_and_records_flow() {
        let (at_a, at_b, mut sealer, mut opener) = handshake(&keys(1), &keys(1)).unwrap();
        assert_eq!((at_a.peer, at_b.peer), (NodeId::new("b", 7), NodeId::new("a", 1)));
        let mut raw = BytesMut::new();
        sealer.seal(b"frames", &mut raw).unwrap();
        sealer.seal(&vec![9u8; 3 * MAX_RECORD_PLAINTEXT + 5], &mut raw).unwrap();
        assert_eq!(raw.len(), Sealer::sealed_len(6) + Sealer::sealed_len(3 * MAX_RECORD_PLAINTEXT + 5));
        // Delivered in pieces: a partial record waits.
        let mut plain = BytesMut::new();
        let mut rest = raw.split_off(Sealer::sealed_len(6) + 10);
        assert_eq!(opener.open(&mut raw, &mut plain).unwrap(), 6);
        raw.unsplit(rest.split_to(100));
        opener.open(&mut raw, &mut plain).unwrap();
        raw.unsplit(rest);
        opener.open(&mut raw, &mut plain).unwrap();
        assert!(raw.is_empty());
        assert_eq!(plain.len(), 6 + 3 * MAX_RECORD_PLAINTEXT + 5);
        assert_eq!(&plain[..6], b"frames");
    }

    /// Records are Noise transport messages: what the ring sealer makes, snow's transport state
    /// opens, and the other way round, at the same counters, byte for byte.
    #[test]
    fn records_are_the_noise_transport_messages_of_the_split_keys() {
        let prologue = prologue(1, b"p");
        let psk = &keys(1).internode[0];
        let mut initiator = noise(psk, &prologue, true).unwrap();
        let mut responder = noise(psk, &prologue, false).unwrap();
        let (mut a, mut b) = (vec![0u8; HANDSHAKE_BUFFER], vec![0u8; HANDSHAKE_BUFFER]);
        let n = initiator.write_message(b"i", &mut a).unwrap();
        responder.read_message(&a[..n], &mut b).unwrap();
        let n = responder.write_message(b"r", &mut a).unwrap();
        initiator.read_message(&a[..n], &mut b).unwrap();
        let (to_responder, _) = initiator.dangerously_get_raw_split();
        let (from_initiator, _) = responder.dangerously_get_raw_split();
        let mut snow_sender = initiator.into_transport_mode().unwrap();
        let mut snow_receiver = responder.into_transport_mode().unwrap();
        let mut sealer = Sealer { cipher: RecordCipher::new(to_responder, 0).unwrap() };
        let mut opener = Opener { cipher: RecordCipher::new(from_initiator, 0).unwrap() };
        let mut message = vec![0u8; MAX_NOISE_MESSAGE];
        let mut payload = vec![0u8; MAX_NOISE_MESSAGE];
        for (i, len) in [0usize, 1, 15, 16, 17, 4102, MAX_RECORD_PLAINTEXT].into_iter().enumerate() {
            let plaintext: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            // Ours, opened by snow.
            let mut record = BytesMut::new();
            let start = Sealer::start_record(&mut record);
            record.extend_from_slice(&plaintext);
            sealer.finish_record(&mut record, start).unwrap();
            let n = snow_sender.write_message(&plaintext, &mut message).unwrap();
            assert_eq!(&record[..RECORD_HEADER_BYTES], &u16::try_from(n).unwrap().to_be_bytes());
            assert_eq!(&record[RECORD_HEADER_BYTES..], &message[..n], "same bytes as snow's at counter {i}");
            let m = snow_receiver.read_message(&record[RECORD_HEADER_BYTES..], &mut payload).unwrap();
            assert_eq!(&payload[..m], &plaintext[..]);
            // Snow's message, opened by ours.
            let mut raw = BytesMut::from(&u16::try_from(n).unwrap().to_be_bytes()[..]);
            raw.extend_from_slice(&message[..n]);
            assert_eq!(&opener.open_in_place(&mut raw).unwrap()[..], &plaintext[..]);
            assert!(raw.is_empty());
        }
    }

    /// 40 records built in place (0 to 6 pieces of 100 bytes each) and their plaintext.
    fn records_in_place(sealer: &mut Sealer) -> (BytesMut, Vec<u8>) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for i in 0..40usize {
            let start = Sealer::start_record(&mut wire);
            for j in 0..(i % 7) {
                wire.extend_from_slice(&[(i * 7 + j) as u8; 100]);
                expected.extend_from_slice(&[(i * 7 + j) as u8; 100]);
            }
            assert_eq!(start.plaintext_len(&wire), (i % 7) * 100);
            sealer.finish_record(&mut wire, start).unwrap();
        }
        (wire, expected)
    }

    #[test]
    fn records_built_in_place_open_in_place_whatever_the_reads() {
        for step in [1usize, 3, 17, 250, 4096, 1 << 20] {
            let (_, _, mut sealer, mut opener) = handshake(&keys(1), &keys(1)).unwrap();
            let (wire, expected) = records_in_place(&mut sealer);
            let mut raw = BytesMut::new();
            let mut plain = Vec::new();
            for piece in wire.chunks(step) {
                raw.extend_from_slice(piece);
                plain.extend_from_slice(&opener.open_in_place(&mut raw).unwrap());
            }
            assert!(raw.is_empty());
            assert_eq!(plain, expected, "reads of {step} bytes");
        }
        // A record over the limit is refused and taken back; the next one still opens.
        let (_, _, mut sealer, mut opener) = handshake(&keys(1), &keys(1)).unwrap();
        let mut wire = BytesMut::new();
        let too_long = Sealer::start_record(&mut wire);
        wire.extend_from_slice(&vec![0; MAX_RECORD_PLAINTEXT + 1]);
        assert!(sealer.finish_record(&mut wire, too_long).is_err());
        assert!(wire.is_empty(), "a refused record is taken back");
        sealer.seal(b"after", &mut wire).unwrap();
        assert_eq!(&opener.open_in_place(&mut wire).unwrap()[..], b"after");
    }

    #[test]
    fn a_replayed_reordered_or_altered_record_is_refused() {
        let (_, _, mut sealer, mut opener) = handshake(&keys(1), &keys(1)).unwrap();
        let (mut first, mut second) = (BytesMut::new(), BytesMut::new());
        sealer.seal(b"one", &mut first).unwrap();
        sealer.seal(b"two", &mut second).unwrap();
        let mut plain = BytesMut::new();
        // Reordered: the second record first.
        assert_eq!(opener.open(&mut second.clone(), &mut plain), Err(RecordError::Auth));
        let (_, _, mut sealer, mut opener) = handshake(&keys(1), &keys(1)).unwrap();
        let mut record = BytesMut::new();
        sealer.seal(b"one", &mut record).unwrap();
        let replay = record.clone();
        opener.open(&mut record, &mut plain).unwrap();
        assert_eq!(opener.open(&mut replay.clone(), &mut plain), Err(RecordError::Auth));
        let (_, _, mut sealer, mut opener) = handshake(&keys(1), &keys(1)).unwrap();
        let mut record = BytesMut::new();
        sealer.seal(b"one", &mut record).unwrap();
        let last = record.len() - 1;
        record[last] ^= 1;
        assert_eq!(opener.open(&mut record, &mut plain), Err(RecordError::Auth));
        let _ = first.split();
    }

    #[test]
    fn a_peer_without_the_key_or_of_another_cluster_or_version_is_refused() {
        assert_eq!(handshake(&keys(1), &keys(2)).unwrap_err(), HandshakeError::BadProof);
        let other = Keyring::new("staging", &secret(1), None);
        assert_eq!(handshake(&other, &keys(1)).unwrap_err().as_str(), "cluster_mismatch");
        let (_, mut hello) = Initiator::start(&keys(1), &NodeId::new("a", 1), 1).unwrap();
        hello[5] = 1; // version 1
        let refused = Responder::on_hello(&keys(1), &NodeId::new("b", 1), 1, &hello).unwrap_err();
        assert_eq!(refused, HandshakeError::VersionMismatch { ours: 2, theirs: 1 });
        // The link kind is in the prologue: a hello moved to the other link fails.
        let (_, hello) = Initiator::start(&keys(1), &NodeId::new("a", 1), 1).unwrap();
        assert!(Responder::on_hello(&keys(1), &NodeId::new("b", 1), 4, &hello).is_err());
    }

    #[test]
    fn a_responder_accepts_the_next_key_during_a_rotation_and_initiators_send_the_current() {
        let rotating = Keyring::new("prod", &secret(1), Some(&secret(2)));
        assert!(handshake(&keys(2), &rotating).is_ok(), "a node already on the new key");
        assert!(handshake(&keys(1), &rotating).is_ok(), "a node still on the old key");
        assert!(handshake(&rotating, &keys(1)).is_ok());
        assert!(handshake(&keys(3), &rotating).is_err());
    }

    #[test]
    fn a_replayed_hello_never_confirms() {
        let (initiator, hello) = Initiator::start(&keys(1), &NodeId::new("a", 1), 1).unwrap();
        let (awaiting, ack) = Responder::on_hello(&keys(1), &NodeId::new("b", 1), 1, &hello).unwrap();
        let (_, confirm, _) = initiator.on_ack(&ack).unwrap();
        assert!(awaiting.on_confirm(&confirm).is_ok());
        // An attacker replays the hello: the responder answers, but no confirm it can make (it
        // lacks the initiator's ephemeral key) is accepted; the original confirm is not either.
        let (awaiting, _) = Responder::on_hello(&keys(1), &NodeId::new("b", 1), 1, &hello).unwrap();
        assert_eq!(awaiting.on_confirm(&confirm).unwrap_err(), HandshakeError::BadProof);
    }

    #[test]
    fn self_connections_are_refused() {
        let (_, hello) = Initiator::start(&keys(1), &NodeId::new("a", 1), 1).unwrap();
        let refused = Responder::on_hello(&keys(1), &NodeId::new("a", 2), 1, &hello).unwrap_err();
        assert_eq!(refused.as_str(), "self_connection");
    }

    #[test]
    fn keys_differ_by_purpose_cluster_and_secret() {
        let a = keys(1);
        assert_ne!(a.internode[0], a.gossip[0]);
        assert_ne!(a.gossip[0], Keyring::new("staging", &secret(1), None).gossip[0]);
        assert_ne!(a.gossip[0], keys(2).gossip[0]);
        assert_eq!(format!("{:?}", a.gossip[0]), "Key(..)");
    }

    #[test]
    fn datagrams_open_once_within_the_window_under_either_key() {
        let mut rng = rand::rng();
        let keys_a = keys(1);
        let mut guard = ReplayGuard::new(30_000, 16);
        let sealed = seal_datagram(&keys_a, 1_000_000, b"envelope", &mut rng);
        assert_eq!(sealed.len(), b"envelope".len() + DATAGRAM_OVERHEAD);
        assert_eq!(open_datagram(&keys_a, 1_010_000, &mut guard, &sealed).unwrap(), b"envelope");
        assert_eq!(open_datagram(&keys_a, 1_010_001, &mut guard, &sealed), Err(DatagramError::Replayed));
        let old = seal_datagram(&keys_a, 1_000_000, b"x", &mut rng);
        assert_eq!(open_datagram(&keys_a, 1_040_001, &mut guard, &old).unwrap_err().as_str(), "stale");
        assert_eq!(open_datagram(&keys(2), 1_000_000, &mut guard, &sealed), Err(DatagramError::BadTag));
        let rotating = Keyring::new("prod", &secret(2), Some(&secret(1)));
        let fresh = seal_datagram(&keys_a, 1_000_000, b"y", &mut rng);
        assert_eq!(open_datagram(&rotating, 1_000_000, &mut guard, &fresh).unwrap(), b"y");
        let mut altered = seal_datagram(&keys_a, 1_000_000, b"z", &mut rng);
        altered[30] ^= 1;
        assert_eq!(open_datagram(&keys_a, 1_000_000, &mut guard, &altered), Err(DatagramError::BadTag));
    }

    #[test]
    fn a_full_replay_guard_refuses_what_it_forgot_instead_of_accepting_it() {
        let mut rng = rand::rng();
        let k = keys(1);
        let mut guard = ReplayGuard::new(30_000, 4);
        let sealed: Vec<Vec<u8>> = (0..6).map(|i| seal_datagram(&k, 1_000 + i, b"e", &mut rng)).collect();
        for d in &sealed {
            open_datagram(&k, 1_000, &mut guard, d).unwrap();
        }
        for d in &sealed {
            assert!(open_datagram(&k, 1_000, &mut guard, d).is_err(), "every copy refused");
        }
        assert!(guard.seen.len() <= guard.capacity());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn nothing_panics_on_random_input(bytes in proptest::collection::vec(any::<u8>(), 0..600), kind in any::<u8>()) {
            let k = keys(1);
            let _ = Responder::on_hello(&k, &NodeId::new("b", 1), kind, &bytes);
            let mut guard = ReplayGuard::new(1_000, 8);
            let _ = open_datagram(&k, 0, &mut guard, &bytes);
            if let Ok((_, _, _, mut opener)) = handshake(&k, &k) {
                let mut raw = BytesMut::from(&bytes[..]);
                let mut plain = BytesMut::new();
                let _ = opener.open(&mut raw, &mut plain);
                prop_assert!(plain.len() <= bytes.len());
            }
        }
    }
}
