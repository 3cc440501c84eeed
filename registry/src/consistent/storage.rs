//! Raft log storage: a `raft::Storage` over a durable (redb) or in-memory backend.
//!
//! Role: [`LogStore`] keeps the raft log, hard state, latest snapshot (with the registry's snapshot
//! bytes) and the compaction mark in memory for raft's reads, and writes every change through a
//! [`LogBackend`]: [`RedbBackend`] (one redb file under the data dir) or [`MemoryBackend`] (tests and
//! the in-memory mode). Both backends are dumb key-value stores under the same encoding, validation
//! and bookkeeping code, so the in-memory mode exercises the durable code path.
//!
//! Invariants:
//! - One [`LogStore::persist`] (the entries, hard state and snapshot of one `Ready`) is one backend
//!   write, i.e. one redb write transaction and one fsync; memory changes only after it succeeded.
//! - `compacted.index <= snapshot.index <= last_index` and `snapshot.index <= hard_state.commit`
//!   (raft-rs panics on a commit below its first index, so [`LogStore::open`] checks it instead).
//! - The configuration raft starts from is the snapshot's: committed entries after the snapshot are
//!   replayed at boot, configuration changes included, so nothing is applied twice.
//! - Durable state is outside input: [`LogStore::open`] validates it and reports a
//!   [`RestartState`] (`Fatal` with a reason on anything inconsistent), never panics; an entry above
//!   [`MAX_ENTRY_BYTES`] is refused.

// rust-protobuf messages carry hidden fields (unknown_fields, cached_size): they are built by
// assigning fields on a default value, as raft-proto itself does.
#![allow(clippy::field_reassign_with_default)]
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::fsm::MAX_SNAPSHOT_BYTES;
use super::planes::RestartState;

/// Largest raft entry (data + context) stored, in bytes. Registry commands are under 1 KiB
/// ([`super::fsm::MAX_COMMAND_BYTES`]); configuration entries carry a few node ids. Anything larger
/// is not ours and is refused before it reaches the log.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// The redb file name under the data dir.
pub const RAFT_DB_FILE: &str = "raft.redb";

const FORMAT_VERSION: u8 = 1;
const KEY_FORMAT: &str = "format";
const KEY_RAFT_ID: &str = "raft_id";
const KEY_HARD_STATE: &str = "hard_state";
const KEY_SNAPSHOT: &str = "snapshot";
const KEY_COMPACTED: &str = "compacted";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// A storage failure. Raft stops on any of them (raft-rs: "the raft instance will become
/// inoperable"); the node reports it and the operator acts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend could not read or write.
    #[error("storage backend: {0}")]
    Backend(String),
    /// Stored or offered state breaks an invariant.
    #[error("inconsistent raft state: {0}")]
    Inconsistent(String),
    /// An entry or snapshot is over its bound.
    #[error("{what} is {len} bytes, at most {max} allowed")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// What a backend holds: opaque bytes under meta keys and entries by index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawImage {
    /// Meta records by key.
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Encoded entries by index.
    pub entries: BTreeMap<u64, Vec<u8>>,
}

/// One atomic backend write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawBatch {
    /// Meta records to put.
    pub put_meta: Vec<(&'static str, Vec<u8>)>,
    /// Delete every entry with index `<=` this (compaction, snapshot install).
    pub delete_through: Option<u64>,
    /// Delete every entry with index `>=` this (a conflicting suffix being replaced).
    pub delete_from: Option<u64>,
    /// Entries to put (after the deletions).
    pub put_entries: Vec<(u64, Vec<u8>)>,
}

/// Where the log lives. Implementations apply a [`RawBatch`] atomically and durably (for their
/// notion of durable) and load everything back.
pub trait LogBackend: Send {
    /// Everything stored.
    fn load(&self) -> Result<RawImage, StoreError>;
    /// Applies `batch` atomically.
    fn commit(&mut self, batch: &RawBatch) -> Result<(), StoreError>;
}

/// An in-memory backend. Clones share the same image, so a test can drop a node and reopen its
/// "disk" with a clone, as a restart would.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    image: Arc<Mutex<RawImage>>,
}

impl MemoryBackend {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces one stored meta record (tests: simulate corruption).
    pub fn corrupt_meta(&self, key: &str, bytes: Vec<u8>) {
        self.lock().meta.insert(key.to_string(), bytes);
    }

    /// Replaces one stored entry (tests: simulate corruption).
    pub fn corrupt_entry(&self, index: u64, bytes: Vec<u8>) {
        self.lock().entries.insert(index, bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RawImage> {
        // A panic while holding the lock leaves a whole image (batches are applied after validation).
        self.image.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LogBackend for MemoryBackend {
    fn load(&self) -> Result<RawImage, StoreError> {
        Ok(self.lock().clone())
    }

    fn commit(&mut self, batch: &RawBatch) -> Result<(), StoreError> {
        let mut image = self.lock();
        for (key, value) in &batch.put_meta {
            image.meta.insert((*key).to_string(), value.clone());
        }
        if let Some(through) = batch.delete_through {
            image.entries = image.entries.split_off(&through.saturating_add(1));
        }
        if let Some(from) = batch.delete_from {
            image.entries.split_off(&from);
        }
        for (index, bytes) in &batch.put_entries {
            image.entries.insert(*index, bytes.clone());
        }
        Ok(())
    }
}

/// A durable backend: one redb database file under a directory; each commit is one write
/// transaction (one fsync).
pub struct RedbBackend {
    db: redb::Database,
    path: PathBuf,
}

fn backend_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbBackend {
    /// Opens (or creates) `dir/raft.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend_err)?;
        let path = dir.join(RAFT_DB_FILE);
        let db = redb::Database::create(&path).map_err(backend_err)?;
        Ok(Self { db, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LogBackend for RedbBackend {
    fn load(&self) -> Result<RawImage, StoreError> {
        let txn = self.db.begin_read().map_err(backend_err)?;
        let mut image = RawImage::default();
        match txn.open_table(META) {
            Ok(table) => {
                for row in table.iter().map_err(backend_err)? {
                    let (k, v) = row.map_err(backend_err)?;
                    image.meta.insert(k.value().to_string(), v.value().to_vec());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(backend_err(e)),
        }
        match txn.open_table(ENTRIES) {
            Ok(table) => {
                for row in table.iter().map_err(backend_err)? {
                    let (k, v) = row.map_err(backend_err)?;
                    image.entries.insert(k.value(), v.value().to_vec());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(backend_err(e)),
        }
        Ok(image)
    }

    fn commit(&mut self, batch: &RawBatch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend_err)?;
        {
            let mut meta = txn.open_table(META).map_err(backend_err)?;
            for (key, value) in &batch.put_meta {
                meta.insert(*key, value.as_slice()).map_err(backend_err)?;
            }
            let mut entries = txn.open_table(ENTRIES).map_err(backend_err)?;
            if let Some(through) = batch.delete_through {
                entries.retain_in(..=through, |_, _| false).map_err(backend_err)?;
            }
            if let Some(from) = batch.delete_from {
                entries.retain_in(from.., |_, _| false).map_err(backend_err)?;
            }
            for (index, bytes) in &batch.put_entries {
                entries.insert(*index, bytes.as_slice()).map_err(backend_err)?;
            }
        }
        txn.commit().map_err(backend_err)
    }
}

/// What one `Ready` asks to persist.
#[derive(Clone, Debug, Default)]
pub struct ReadyWrite {
    /// A snapshot received from the leader (replaces the log).
    pub snapshot: Option<Snapshot>,
    /// Entries to append (may replace a conflicting suffix).
    pub entries: Vec<Entry>,
    /// The new hard state.
    pub hard_state: Option<HardState>,
}

/// Storage counters, for the integrator's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Backend writes (redb transactions).
    pub writes: u64,
    /// Entries appended.
    pub entries_appended: u64,
    /// Bytes written (encoded entries, hard states, snapshots).
    pub bytes_written: u64,
    /// Snapshots stored (received or created).
    pub snapshots_stored: u64,
    /// Entries removed by compaction.
    pub entries_compacted: u64,
}

/// The raft log storage (see the module docs).
pub struct LogStore {
    backend: Box<dyn LogBackend>,
    raft_id: Option<u64>,
    header_written: bool,
    hard_state: HardState,
    hard_state_dirty: bool,
    snapshot: Snapshot,
    compacted: (u64, u64),
    entries: VecDeque<Entry>,
    stats: StoreStats,
}

fn encode(msg: &impl protobuf::Message) -> Result<Vec<u8>, StoreError> {
    msg.write_to_bytes().map_err(|e| StoreError::Inconsistent(format!("encode: {e}")))
}

fn entry_size(e: &Entry) -> usize {
    e.data.len() + e.context.len()
}

impl LogStore {
    /// Opens the store over `backend` and validates what it holds. A store whose state is not
    /// usable is returned empty alongside `RestartState::Fatal`; the caller must not run raft on it.
    pub fn open(backend: Box<dyn LogBackend>) -> (Self, RestartState) {
        let mut store = Self {
            backend,
            raft_id: None,
            header_written: false,
            hard_state: HardState::default(),
            hard_state_dirty: false,
            snapshot: Snapshot::default(),
            compacted: (0, 0),
            entries: VecDeque::new(),
            stats: StoreStats::default(),
        };
        let image = match store.backend.load() {
            Ok(image) => image,
            Err(e) => return (store, RestartState::Fatal { reason: e.to_string() }),
        };
        if image.meta.is_empty() && image.entries.is_empty() {
            return (store, RestartState::Clean);
        }
        match store.load_image(image) {
            Ok(()) => {
                let applied_index = store.hard_state.commit;
                (store, RestartState::Recovered { applied_index })
            }
            Err(reason) => {
                store.raft_id = None;
                store.header_written = false;
                store.hard_state = HardState::default();
                store.snapshot = Snapshot::default();
                store.compacted = (0, 0);
                store.entries.clear();
                (store, RestartState::Fatal { reason })
            }
        }
    }

    fn load_image(&mut self, image: RawImage) -> Result<(), String> {
        let meta = |key: &str| image.meta.get(key).ok_or_else(|| format!("missing {key} record"));
        let format = meta(KEY_FORMAT)?;
        if format.as_slice() != [FORMAT_VERSION] {
            return Err(format!("unknown format {format:?}"));
        }
        let raft_id = u64::from_be_bytes(
            meta(KEY_RAFT_ID)?.as_slice().try_into().map_err(|_| "raft id record is not 8 bytes".to_string())?,
        );
        if raft_id == 0 {
            return Err("raft id 0".into());
        }
        // A joiner that only persisted a vote before its first snapshot has no snapshot or
        // compaction record yet: their absence means "empty", not corruption.
        let hard_state = match image.meta.get(KEY_HARD_STATE) {
            Some(bytes) => HardState::parse_from_bytes(bytes).map_err(|e| format!("hard state undecodable: {e}"))?,
            None => HardState::default(),
        };
        let snapshot = match image.meta.get(KEY_SNAPSHOT) {
            Some(bytes) => Snapshot::parse_from_bytes(bytes).map_err(|e| format!("snapshot undecodable: {e}"))?,
            None => Snapshot::default(),
        };
        let compacted = match image.meta.get(KEY_COMPACTED) {
            Some(bytes) if bytes.len() == 16 => (
                u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default()),
                u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default()),
            ),
            Some(_) => return Err("compaction record is not 16 bytes".into()),
            None => (0, 0),
        };
        let mut entries = VecDeque::with_capacity(image.entries.len());
        let mut expected = compacted.0 + 1;
        let mut last_term = compacted.1;
        for (index, bytes) in &image.entries {
            if *index != expected {
                return Err(format!("log gap: expected entry {expected}, found {index}"));
            }
            if bytes.len() > MAX_ENTRY_BYTES + 64 {
                return Err(format!("entry {index} is {} bytes", bytes.len()));
            }
            let entry = Entry::parse_from_bytes(bytes).map_err(|e| format!("entry {index} undecodable: {e}"))?;
            if entry.index != *index || entry.term < last_term {
                return Err(format!(
                    "entry {index} has index {} term {} after term {last_term}",
                    entry.index, entry.term
                ));
            }
            last_term = entry.term;
            expected += 1;
            entries.push_back(entry);
        }
        let last_index = expected - 1;
        let meta = snapshot.get_metadata().clone();
        if meta.index < compacted.0 || meta.index > last_index {
            return Err(format!("snapshot {} outside the log ({}..={last_index})", meta.index, compacted.0));
        }
        if hard_state.commit < meta.index || hard_state.commit > last_index {
            return Err(format!("commit {} outside {}..={last_index}", hard_state.commit, meta.index));
        }
        if snapshot.data.len() > MAX_SNAPSHOT_BYTES {
            return Err(format!("snapshot data is {} bytes", snapshot.data.len()));
        }
        self.raft_id = Some(raft_id);
        self.header_written = true;
        self.hard_state = hard_state;
        self.snapshot = snapshot;
        self.compacted = compacted;
        self.entries = entries;
        if self.term_of(meta.index) != Some(meta.term) {
            return Err(format!("snapshot term {} does not match the log at {}", meta.term, meta.index));
        }
        Ok(())
    }

    /// The raft id this state belongs to (`None` for a clean store not yet bootstrapped or joined).
    pub fn raft_id(&self) -> Option<u64> {
        self.raft_id
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest snapshot (metadata and registry bytes).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether the store holds a configuration (bootstrapped, or received a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.snapshot.get_metadata().get_conf_state() != &ConfState::default()
    }

    /// The index of the last stored entry (or of the compaction mark when the log is empty).
    pub fn last_index_value(&self) -> u64 {
        self.entries.back().map_or(self.compacted.0, |e| e.index)
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        let first = self.compacted.0 + 1;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }

    fn hard_state_meta(&self, hs: &HardState) -> Result<(&'static str, Vec<u8>), StoreError> {
        Ok((KEY_HARD_STATE, encode(hs)?))
    }

    fn compacted_meta(mark: (u64, u64)) -> (&'static str, Vec<u8>) {
        let mut bytes = mark.0.to_be_bytes().to_vec();
        bytes.extend_from_slice(&mark.1.to_be_bytes());
        (KEY_COMPACTED, bytes)
    }

    fn commit_batch(&mut self, batch: RawBatch) -> Result<(), StoreError> {
        let bytes: usize = batch.put_meta.iter().map(|(_, v)| v.len()).sum::<usize>()
            + batch.put_entries.iter().map(|(_, v)| v.len()).sum::<usize>();
        self.backend.commit(&batch)?;
        self.stats.writes += 1;
        self.stats.bytes_written += bytes as u64;
        Ok(())
    }

    /// Initialises a clean store for `raft_id` with `snapshot` (the bootstrap configuration and the
    /// registry's initial bytes), in one write. Every seed must bootstrap with the same snapshot.
    pub fn bootstrap(&mut self, raft_id: u64, snapshot: Snapshot) -> Result<(), StoreError> {
        if self.header_written || !self.entries.is_empty() {
            return Err(StoreError::Inconsistent("bootstrap of a store that holds state".into()));
        }
        self.raft_id = Some(raft_id);
        self.persist(ReadyWrite { snapshot: Some(snapshot), ..ReadyWrite::default() })
    }

    /// Records the raft id of a clean node that joins uninitialised (it waits for the leader's
    /// snapshot). Written with the first persisted `Ready`.
    pub fn assign_raft_id(&mut self, raft_id: u64) {
        if self.raft_id.is_none() {
            self.raft_id = Some(raft_id);
        }
    }

    /// Remembers a commit index learned after the last write (a light ready); it is written with
    /// the next [`LogStore::persist`]. A lost commit index is re-learned from the leader.
    pub fn note_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
            self.hard_state_dirty = true;
        }
    }

    /// Persists one `Ready` (snapshot, entries, hard state) in one backend write, then updates memory.
    pub fn persist(&mut self, write: ReadyWrite) -> Result<(), StoreError> {
        let ReadyWrite { snapshot, entries, hard_state } = write;
        if snapshot.is_none() && entries.is_empty() && hard_state.is_none() && !self.hard_state_dirty {
            return Ok(());
        }
        let mut batch = RawBatch::default();
        let hard_state_given = hard_state.is_some();
        let mut new_hs = hard_state.unwrap_or_else(|| self.hard_state.clone());
        new_hs.commit = new_hs.commit.max(self.hard_state.commit);
        let mut compacted = self.compacted;
        let mut last = self.last_index_value();
        if let Some(snap) = &snapshot {
            if snap.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(StoreError::TooLarge { what: "snapshot", len: snap.data.len(), max: MAX_SNAPSHOT_BYTES });
            }
            let meta = snap.get_metadata();
            compacted = (meta.index, meta.term);
            last = meta.index;
            new_hs.commit = new_hs.commit.max(meta.index);
            new_hs.term = new_hs.term.max(meta.term);
            batch.delete_through = Some(u64::MAX);
            batch.put_meta.push((KEY_SNAPSHOT, encode(snap)?));
            batch.put_meta.push(Self::compacted_meta(compacted));
        }
        let mut truncate_from = None;
        if let Some(first) = entries.first() {
            if first.index <= compacted.0 {
                return Err(StoreError::Inconsistent(format!(
                    "append at {} overwrites the compacted log (through {})",
                    first.index, compacted.0
                )));
            }
            if first.index > last + 1 {
                return Err(StoreError::Inconsistent(format!("append at {} leaves a gap after {last}", first.index)));
            }
            if first.index <= last && snapshot.is_none() {
                truncate_from = Some(first.index);
                batch.delete_from = Some(first.index);
            }
            for e in &entries {
                if entry_size(e) > MAX_ENTRY_BYTES {
                    return Err(StoreError::TooLarge { what: "entry", len: entry_size(e), max: MAX_ENTRY_BYTES });
                }
                batch.put_entries.push((e.index, encode(e)?));
            }
        }
        if !self.header_written {
            let id = self.raft_id.ok_or_else(|| StoreError::Inconsistent("write before a raft id".into()))?;
            batch.put_meta.push((KEY_FORMAT, vec![FORMAT_VERSION]));
            batch.put_meta.push((KEY_RAFT_ID, id.to_be_bytes().to_vec()));
        }
        if hard_state_given || self.hard_state_dirty || snapshot.is_some() {
            batch.put_meta.push(self.hard_state_meta(&new_hs)?);
        }
        self.commit_batch(batch)?;
        // Memory follows only a successful write.
        if let Some(snap) = snapshot {
            self.snapshot = snap;
            self.compacted = compacted;
            self.entries.clear();
            self.stats.snapshots_stored += 1;
        }
        if let Some(from) = truncate_from {
            let keep = (from - self.compacted.0 - 1) as usize;
            self.entries.truncate(keep);
        }
        self.stats.entries_appended += entries.len() as u64;
        self.entries.extend(entries);
        self.hard_state = new_hs;
        self.hard_state_dirty = false;
        self.header_written = true;
        Ok(())
    }

    /// Stores a snapshot this node made at `snapshot.metadata.index` (an applied, hence committed,
    /// index) and compacts the log up to `retain` entries before it, in one write.
    pub fn store_own_snapshot(&mut self, snapshot: Snapshot, retain: u64) -> Result<(), StoreError> {
        let index = snapshot.get_metadata().index;
        if index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        if index > self.last_index_value() || self.term_of(index) != Some(snapshot.get_metadata().term) {
            return Err(StoreError::Inconsistent(format!("own snapshot at {index} does not match the log")));
        }
        if snapshot.data.len() > MAX_SNAPSHOT_BYTES {
            return Err(StoreError::TooLarge { what: "snapshot", len: snapshot.data.len(), max: MAX_SNAPSHOT_BYTES });
        }
        let cut = index.saturating_sub(retain).max(self.compacted.0);
        let cut_term = self.term_of(cut).ok_or_else(|| StoreError::Inconsistent(format!("no term at {cut}")))?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(index);
        let mut batch = RawBatch::default();
        batch.put_meta.push((KEY_SNAPSHOT, encode(&snapshot)?));
        batch.put_meta.push(Self::compacted_meta((cut, cut_term)));
        batch.put_meta.push(self.hard_state_meta(&hs)?);
        if cut > self.compacted.0 {
            batch.delete_through = Some(cut);
        }
        self.commit_batch(batch)?;
        let removed = (cut - self.compacted.0) as usize;
        self.entries.drain(..removed);
        self.stats.entries_compacted += removed as u64;
        self.stats.snapshots_stored += 1;
        self.compacted = (cut, cut_term);
        self.snapshot = snapshot;
        self.hard_state = hs;
        self.hard_state_dirty = false;
        Ok(())
    }
}

fn raft_unavailable() -> raft::Error {
    raft::Error::Store(raft::StorageError::Unavailable)
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.snapshot.get_metadata().get_conf_state().clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.compacted.0 + 1;
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index_value() + 1 || low > high {
            return Err(raft_unavailable());
        }
        let mut out: Vec<Entry> =
            self.entries.range((low - first) as usize..(high - first) as usize).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.term_of(idx).ok_or_else(raft_unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_value())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // raft-rs refuses a snapshot whose configuration does not include the receiver (a learner
        // added after it was made); the core makes a fresh one after every configuration change,
        // so "not yet" is the right answer here.
        let cs = self.snapshot.get_metadata().get_conf_state();
        let includes = |ids: &[u64]| ids.contains(&to);
        let has_receiver = includes(&cs.voters)
            || includes(&cs.learners)
            || includes(&cs.voters_outgoing)
            || includes(&cs.learners_next);
        if has_receiver && self.snapshot.get_metadata().index >= request_index && self.snapshot.get_metadata().index > 0
        {
            Ok(self.snapshot.clone())
        } else {
            Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e
    }

    fn snap(index: u64, term: u64, voters: &[u64], data: &[u8]) -> Snapshot {
        let mut s = Snapshot::default();
        s.data = data.to_vec().into();
        let meta = s.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(ConfState::from((voters.to_vec(), vec![])));
        s
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        let mut h = HardState::default();
        h.term = term;
        h.vote = vote;
        h.commit = commit;
        h
    }

    fn bootstrapped(backend: Box<dyn LogBackend>) -> LogStore {
        let (mut store, state) = LogStore::open(backend);
        assert_eq!(state, RestartState::Clean);
        store.bootstrap(7, snap(1, 1, &[7], b"fsm")).unwrap();
        store
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn check_reopen(backend: Box<dyn LogBackend>, reopen: impl Fn() -> Box<dyn LogBackend>) {
        let mut store = bootstrapped(backend);
        let write = ReadyWrite {
            entries: (2..=6).map(|i| entry(i, 2, b"x")).collect(),
            hard_state: Some(hs(2, 7, 4)),
            ..ReadyWrite::default()
        };
        store.persist(write).unwrap();
        // A conflicting suffix from a new leader replaces 5 and 6.
        store
            .persist(ReadyWrite {
                entries: vec![entry(5, 3, b"y")],
                hard_state: Some(hs(3, 0, 4)),
                ..Default::default()
            })
            .unwrap();
        store.note_commit(5);
        drop(store);
        let (store, state) = LogStore::open(reopen());
        // The commit noted after the last write was not persisted: recovery is from commit 4.
        assert_eq!(state, RestartState::Recovered { applied_index: 4 });
        assert_eq!(store.raft_id(), Some(7));
        assert_eq!(store.first_index().unwrap(), 2);
        assert_eq!(store.last_index().unwrap(), 5);
        assert_eq!(store.term(5).unwrap(), 3);
        assert_eq!(store.term(1).unwrap(), 1);
        let rs = store.initial_state().unwrap();
        assert_eq!(rs.hard_state, hs(3, 0, 4));
        assert_eq!(rs.conf_state.voters, vec![7]);
        assert_eq!(store.entries(2, 6, None, ctx()).unwrap().len(), 4);
        assert_eq!(store.latest_snapshot().data.as_ref(), b"fsm");
    }

    #[test]
    fn memory_backend_reopens_what_was_persisted() {
        let backend = MemoryBackend::new();
        let again = backend.clone();
        check_reopen(Box::new(backend), move || Box::new(again.clone()));
    }

    #[test]
    fn redb_backend_reopens_what_was_persisted() {
        let dir = std::env::temp_dir().join(format!("cohort-raft-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.clone();
        check_reopen(Box::new(RedbBackend::open(&dir).unwrap()), move || Box::new(RedbBackend::open(&d).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_snapshot_compacts_and_keeps_retained_entries() {
        let backend = MemoryBackend::new();
        let mut store = bootstrapped(Box::new(backend.clone()));
        store
            .persist(ReadyWrite {
                entries: (2..=20).map(|i| entry(i, 2, b"x")).collect(),
                hard_state: Some(hs(2, 7, 20)),
                ..Default::default()
            })
            .unwrap();
        store.store_own_snapshot(snap(15, 2, &[7], b"at15"), 5).unwrap();
        assert_eq!(store.first_index().unwrap(), 11);
        assert_eq!(store.term(10).unwrap(), 2);
        assert!(matches!(store.term(9), Err(raft::Error::Store(raft::StorageError::Compacted))));
        assert!(matches!(store.entries(10, 12, None, ctx()), Err(raft::Error::Store(raft::StorageError::Compacted))));
        assert_eq!(store.snapshot(0, 7).unwrap().get_metadata().index, 15);
        assert!(store.snapshot(16, 7).is_err());
        assert!(store.snapshot(0, 8).is_err(), "a receiver outside the snapshot's configuration waits");
        assert_eq!(store.stats().entries_compacted, 9);
        drop(store);
        let (store, state) = LogStore::open(Box::new(backend));
        assert_eq!(state, RestartState::Recovered { applied_index: 20 });
        assert_eq!(store.first_index().unwrap(), 11);
        assert_eq!(store.latest_snapshot().data.as_ref(), b"at15");
        assert_eq!(store.initial_state().unwrap().conf_state.voters, vec![7]);
    }

    #[test]
    fn received_snapshot_replaces_the_log_in_one_write() {
        let mut store = bootstrapped(Box::new(MemoryBackend::new()));
        store.persist(ReadyWrite { entries: vec![entry(2, 1, b"")], ..Default::default() }).unwrap();
        let writes = store.stats().writes;
        store
            .persist(ReadyWrite {
                snapshot: Some(snap(50, 4, &[1, 7], b"leader")),
                entries: vec![entry(51, 4, b"z")],
                hard_state: Some(hs(4, 0, 50)),
            })
            .unwrap();
        assert_eq!(store.stats().writes, writes + 1);
        assert_eq!(store.first_index().unwrap(), 51);
        assert_eq!(store.last_index().unwrap(), 51);
        assert_eq!(store.term(50).unwrap(), 4);
        assert_eq!(store.hard_state().commit, 50);
    }

    #[test]
    fn joiner_without_bootstrap_records_its_id_with_the_snapshot() {
        let backend = MemoryBackend::new();
        let (mut store, state) = LogStore::open(Box::new(backend.clone()));
        assert_eq!(state, RestartState::Clean);
        assert!(!store.is_initialized());
        assert_eq!(store.first_index().unwrap(), 1);
        assert_eq!(store.last_index().unwrap(), 0);
        store.assign_raft_id(9);
        store.persist(ReadyWrite { hard_state: Some(hs(2, 1, 0)), ..Default::default() }).unwrap();
        drop(store);
        let (mut store, state) = LogStore::open(Box::new(backend.clone()));
        assert_eq!(state, RestartState::Recovered { applied_index: 0 }, "a vote alone is recovered");
        assert_eq!(store.raft_id(), Some(9));
        assert_eq!(store.hard_state().vote, 1);
        store.persist(ReadyWrite { snapshot: Some(snap(10, 2, &[1], b"s")), ..Default::default() }).unwrap();
        drop(store);
        let (store, state) = LogStore::open(Box::new(backend));
        assert_eq!(state, RestartState::Recovered { applied_index: 10 });
        assert_eq!(store.raft_id(), Some(9));
        assert!(store.is_initialized());
    }

    #[test]
    fn invalid_appends_and_oversized_entries_are_refused() {
        let mut store = bootstrapped(Box::new(MemoryBackend::new()));
        let gap = store.persist(ReadyWrite { entries: vec![entry(5, 1, b"")], ..Default::default() });
        assert!(matches!(gap, Err(StoreError::Inconsistent(_))));
        let compacted = store.persist(ReadyWrite { entries: vec![entry(1, 1, b"")], ..Default::default() });
        assert!(matches!(compacted, Err(StoreError::Inconsistent(_))));
        let big = vec![0u8; MAX_ENTRY_BYTES + 1];
        let too_big = store.persist(ReadyWrite { entries: vec![entry(2, 1, &big)], ..Default::default() });
        assert!(matches!(too_big, Err(StoreError::TooLarge { what: "entry", .. })));
        assert_eq!(store.last_index().unwrap(), 1, "a refused write changes nothing");
        assert!(store.entries(1, 2, None, ctx()).is_err());
        assert!(store.entries(2, 9, None, ctx()).is_err(), "out of range is an error, not a panic");
    }

    #[test]
    fn corrupt_state_is_fatal_with_a_reason_never_a_panic() {
        type Corruption = fn(&MemoryBackend);
        let cases: Vec<(&str, Corruption)> = vec![
            ("hard state", |b| b.corrupt_meta(KEY_HARD_STATE, vec![0xff; 9])),
            ("format", |b| b.corrupt_meta(KEY_FORMAT, vec![99])),
            ("raft id", |b| b.corrupt_meta(KEY_RAFT_ID, vec![1, 2])),
            ("entry bytes", |b| b.corrupt_entry(3, vec![0xff, 0xff, 0xff])),
            ("gap", |b| b.corrupt_entry(9, entry(9, 1, b"").write_to_bytes().unwrap())),
            ("commit past log", |b| b.corrupt_meta(KEY_HARD_STATE, hs(1, 0, 99).write_to_bytes().unwrap())),
            ("compaction mark", |b| b.corrupt_meta(KEY_COMPACTED, vec![0; 3])),
            ("missing raft id", |b| {
                b.lock().meta.remove(KEY_RAFT_ID);
            }),
        ];
        for (what, corrupt) in cases {
            let backend = MemoryBackend::new();
            let mut store = bootstrapped(Box::new(backend.clone()));
            store
                .persist(ReadyWrite {
                    entries: (2..=4).map(|i| entry(i, 1, b"x")).collect(),
                    hard_state: Some(hs(1, 7, 3)),
                    ..Default::default()
                })
                .unwrap();
            drop(store);
            corrupt(&backend);
            let (store, state) = LogStore::open(Box::new(backend));
            assert!(matches!(state, RestartState::Fatal { .. }), "{what}: {state:?}");
            assert_eq!(store.raft_id(), None, "{what}: a fatal store exposes no state");
        }
    }
}
