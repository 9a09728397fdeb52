//! The raft log and raft state in RocksDB: an implementation of `raft::Storage` plus the writes the
//! raft thread makes after each Ready.
//!
//! Layout (column families of [`crate::storage::Engine`]):
//! - `raft_log`: BE(u64 index) → encoded `Entry`.
//! - `raft_state`: `hs` → HardState, `cs` → ConfState, `trunc` → BE(index) BE(term) of the last
//!   entry removed by log truncation (so `term(first_index - 1)` keeps working).
//!
//! The tail of the log is cached in memory so that committed entries handed to the apply thread
//! right after they were persisted are not read back from disk.

use std::collections::VecDeque;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use super::codec::{RaftMessage, encode, encoded_len};
use crate::storage::{Batch, Cf, Engine, StorageError};

const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_CONF_STATE: &[u8] = b"cs";
const KEY_TRUNCATED: &[u8] = b"trunc";

/// Entries kept in memory after they were appended: at most this many, and at most
/// [`TAIL_CACHE_BYTES_MAX`] of entry data (a load of large txns would otherwise hold hundreds of
/// megabytes here; what falls out is read back from RocksDB's memtable when needed).
const TAIL_CACHE_ENTRIES_MAX: usize = 4096;
const TAIL_CACHE_BYTES_MAX: usize = 8 << 20;

/// What an entry costs the tail cache.
fn cached_bytes(entry: &Entry) -> usize {
    entry.data.len() + entry.context.len() + std::mem::size_of::<Entry>()
}

/// The raft log and state of this member.
pub struct RaftLogStore {
    engine: Arc<Engine>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry no longer in the log (0, 0 when nothing was truncated).
    truncated: (u64, u64),
    last_index: u64,
    tail: VecDeque<Entry>,
    /// [`cached_bytes`] summed over `tail`.
    tail_bytes: usize,
    /// Where snapshots for lagging peers come from (absent in tests that never send any).
    snapshots: Option<super::snapshots::SnapshotFiles>,
}

/// Where the stored raft log starts: the (index, term) just before its first entry, which is
/// the position of the last snapshot installed from the leader or of the last truncation; (0, 0)
/// for a log never truncated.
pub fn read_truncated(engine: &Engine) -> Result<(u64, u64), StorageError> {
    match engine.get(Cf::RaftState, KEY_TRUNCATED)? {
        Some(bytes) if bytes.len() == 16 => Ok((
            u64::from_be_bytes(bytes[..8].try_into().expect("length checked")),
            u64::from_be_bytes(bytes[8..].try_into().expect("length checked")),
        )),
        Some(_) => Err(StorageError::Corrupt {
            cf: Cf::RaftState.name(),
            key: KEY_TRUNCATED.to_vec(),
            reason: "truncation marker is not 16 bytes".into(),
        }),
        None => Ok((0, 0)),
    }
}

impl RaftLogStore {
    /// Loads the raft state from `engine`. A fresh store of a new cluster (`initial_voters` not
    /// empty) starts as if from a snapshot at index 1, term 1 holding that configuration, so the
    /// log of every member begins at index 2 and a member that joins later, having no log, is
    /// always brought up to date by a snapshot (which carries the configuration) rather than by
    /// replaying a log that does not say who the first members were. A member joining an
    /// existing cluster passes no voters and waits for that snapshot.
    pub fn open(engine: Arc<Engine>, initial_voters: &[u64]) -> Result<RaftLogStore, StorageError> {
        if engine.get(Cf::RaftState, KEY_CONF_STATE)?.is_none() && !initial_voters.is_empty() {
            let mut batch = Batch::new();
            Self::bootstrap_restored(&engine, &mut batch, 1, 1, initial_voters);
            engine.write(batch, true)?;
        }
        let hard_state = match engine.get(Cf::RaftState, KEY_HARD_STATE)? {
            Some(bytes) => decode(Cf::RaftState, KEY_HARD_STATE, &bytes)?,
            None => HardState::default(),
        };
        let conf_state = match engine.get(Cf::RaftState, KEY_CONF_STATE)? {
            Some(bytes) => decode(Cf::RaftState, KEY_CONF_STATE, &bytes)?,
            None => {
                let cs = ConfState::from((initial_voters.to_vec(), Vec::<u64>::new()));
                let mut batch = Batch::new();
                batch.put(&engine, Cf::RaftState, KEY_CONF_STATE, &encode(&cs));
                engine.write(batch, true)?;
                cs
            }
        };
        let truncated = read_truncated(&engine)?;
        let mut last_index = truncated.0;
        for item in engine.scan(Cf::RaftLog, &(truncated.0 + 1).to_be_bytes(), None) {
            let (key, _) = item?;
            last_index = index_of(&key)?;
        }
        Ok(RaftLogStore {
            engine,
            hard_state,
            conf_state,
            truncated,
            last_index,
            tail: VecDeque::new(),
            tail_bytes: 0,
            snapshots: None,
        })
    }

    /// Lets raft send snapshots from `files` to peers that need one.
    pub fn with_snapshots(mut self, files: super::snapshots::SnapshotFiles) -> RaftLogStore {
        self.snapshots = Some(files);
        self
    }

    /// The directory holding snapshot files, if this store sends them.
    pub fn snapshot_dir(&self) -> Option<&std::path::Path> {
        self.snapshots.as_ref().map(|f| f.dir())
    }

    /// Replaces the log with the position of an installed snapshot: every entry goes, the log
    /// continues after `index`, the commit index and term move up to it if behind, and the
    /// configuration becomes the snapshot's.
    pub fn apply_snapshot(&mut self, batch: &mut Batch, index: u64, term: u64, cs: ConfState) {
        if self.last_index >= self.first() {
            batch.delete_range(
                &self.engine,
                Cf::RaftLog,
                &self.first().to_be_bytes(),
                &(self.last_index + 1).to_be_bytes(),
            );
        }
        self.clear_tail();
        let mut marker = index.to_be_bytes().to_vec();
        marker.extend_from_slice(&term.to_be_bytes());
        batch.put(&self.engine, Cf::RaftState, KEY_TRUNCATED, &marker);
        self.truncated = (index, term);
        self.last_index = index;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(index);
        hs.term = hs.term.max(term);
        self.set_hard_state(batch, hs);
        self.set_conf_state(batch, cs);
    }

    /// Writes the raft state of a member restored from a state-machine snapshot taken at
    /// (`index`, `term`): an empty log that starts after `index`, committed up to it, with
    /// `voters` as its configuration.
    pub fn bootstrap_restored(
        engine: &Engine,
        batch: &mut Batch,
        index: u64,
        term: u64,
        voters: &[u64],
    ) {
        let hs = HardState {
            term,
            commit: index,
            ..HardState::default()
        };
        batch.put(engine, Cf::RaftState, KEY_HARD_STATE, &encode(&hs));
        let cs = ConfState::from((voters.to_vec(), Vec::<u64>::new()));
        batch.put(engine, Cf::RaftState, KEY_CONF_STATE, &encode(&cs));
        let mut marker = index.to_be_bytes().to_vec();
        marker.extend_from_slice(&term.to_be_bytes());
        batch.put(engine, Cf::RaftState, KEY_TRUNCATED, &marker);
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    pub fn last(&self) -> u64 {
        self.last_index
    }

    /// Adds `entries` (replacing any conflicting suffix) and, if given, the hard state to `batch`.
    /// The in-memory view is updated at once; the caller must write the batch before anything
    /// that depends on it leaves this member.
    pub fn append(&mut self, batch: &mut Batch, entries: &[Entry], hs: Option<&HardState>) {
        if let Some(first) = entries.first() {
            let first_index = first.index;
            if first_index <= self.last_index {
                batch.delete_range(
                    &self.engine,
                    Cf::RaftLog,
                    &first_index.to_be_bytes(),
                    &(self.last_index + 1).to_be_bytes(),
                );
                while self.tail.back().is_some_and(|e| e.index >= first_index) {
                    self.pop_tail_back();
                }
            }
            for entry in entries {
                batch.put(
                    &self.engine,
                    Cf::RaftLog,
                    &entry.index.to_be_bytes(),
                    &encode(entry),
                );
            }
            if self.tail.back().is_some_and(|e| e.index + 1 != first_index) {
                self.clear_tail();
            }
            for entry in entries {
                self.tail_bytes += cached_bytes(entry);
                self.tail.push_back(entry.clone());
            }
            while self.tail.len() > TAIL_CACHE_ENTRIES_MAX
                || (self.tail_bytes > TAIL_CACHE_BYTES_MAX && self.tail.len() > 1)
            {
                self.pop_tail_front();
            }
            self.last_index = entries.last().expect("entries is not empty").index;
        }
        if let Some(hs) = hs {
            self.set_hard_state(batch, hs.clone());
        }
    }

    /// Records a new commit index (a commit-only change needs no fsync: the entries are durable).
    pub fn set_commit(&mut self, batch: &mut Batch, commit: u64) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(batch, hs);
    }

    fn set_hard_state(&mut self, batch: &mut Batch, hs: HardState) {
        batch.put(&self.engine, Cf::RaftState, KEY_HARD_STATE, &encode(&hs));
        self.hard_state = hs;
    }

    /// Persists a configuration produced by applying a conf change.
    pub fn set_conf_state(&mut self, batch: &mut Batch, cs: ConfState) {
        batch.put(&self.engine, Cf::RaftState, KEY_CONF_STATE, &encode(&cs));
        self.conf_state = cs;
    }

    /// Removes log entries up to and including `index` (which must be applied).
    pub fn truncate_to(&mut self, batch: &mut Batch, index: u64) -> Result<(), StorageError> {
        if index <= self.truncated.0 || index > self.last_index {
            return Ok(());
        }
        let term = self.entry_term(index)?;
        batch.delete_range(
            &self.engine,
            Cf::RaftLog,
            &self.first().to_be_bytes(),
            &(index + 1).to_be_bytes(),
        );
        let mut marker = index.to_be_bytes().to_vec();
        marker.extend_from_slice(&term.to_be_bytes());
        batch.put(&self.engine, Cf::RaftState, KEY_TRUNCATED, &marker);
        self.truncated = (index, term);
        while self.tail.front().is_some_and(|e| e.index <= index) {
            self.pop_tail_front();
        }
        Ok(())
    }

    fn pop_tail_front(&mut self) {
        if let Some(e) = self.tail.pop_front() {
            self.tail_bytes -= cached_bytes(&e);
        }
    }

    fn pop_tail_back(&mut self) {
        if let Some(e) = self.tail.pop_back() {
            self.tail_bytes -= cached_bytes(&e);
        }
    }

    fn clear_tail(&mut self) {
        self.tail.clear();
        self.tail_bytes = 0;
    }

    fn entry_term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if let Some(e) = self.cached(index) {
            return Ok(e.term);
        }
        let key = index.to_be_bytes();
        let bytes = self
            .engine
            .get(Cf::RaftLog, &key)?
            .ok_or_else(|| StorageError::Corrupt {
                cf: Cf::RaftLog.name(),
                key: key.to_vec(),
                reason: format!(
                    "entry {index} missing inside the log [{}, {}]",
                    self.first(),
                    self.last_index
                ),
            })?;
        let entry: Entry = decode(Cf::RaftLog, &key, &bytes)?;
        Ok(entry.term)
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let front = self.tail.front()?.index;
        if index < front {
            return None;
        }
        self.tail.get((index - front) as usize)
    }
}

fn other(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

impl raft::Storage for RaftLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut push = |e: Entry, out: &mut Vec<Entry>| {
            size += encoded_len(&e);
            let keep = out.is_empty() || size <= max_size;
            if keep {
                out.push(e);
            }
            keep
        };
        let cache_front = self.tail.front().map(|e| e.index).unwrap_or(u64::MAX);
        if low >= cache_front {
            for index in low..high {
                let e = self
                    .cached(index)
                    .cloned()
                    .ok_or_else(|| raft::Error::Store(RaftStorageError::Unavailable))?;
                if !push(e, &mut out) {
                    break;
                }
            }
            return Ok(out);
        }
        for item in self
            .engine
            .scan(Cf::RaftLog, &low.to_be_bytes(), Some(&high.to_be_bytes()))
        {
            let (key, value) = item.map_err(other)?;
            let e: Entry = decode(Cf::RaftLog, &key, &value).map_err(other)?;
            if !push(e, &mut out) {
                break;
            }
        }
        if out.len() as u64 != high - low && size <= max_size {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == 0 {
            return Ok(0);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        self.entry_term(idx).map_err(other)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than the start of the log would leave a gap after it; it is written
        // on a background thread, and raft asks again on the peer's next response.
        let unavailable = raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable);
        let Some(files) = &self.snapshots else {
            return Err(unavailable);
        };
        files
            .ready_or_start(request_index.max(self.truncated.0).max(1), to)
            .ok_or(unavailable)
    }
}

fn index_of(key: &[u8]) -> Result<u64, StorageError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt {
            cf: Cf::RaftLog.name(),
            key: key.to_vec(),
            reason: "raft log key is not 8 bytes".into(),
        })
}

/// Decodes a raft message read from `cf` at `key`; undecodable bytes are corruption.
fn decode<M: RaftMessage>(cf: Cf, key: &[u8], bytes: &[u8]) -> Result<M, StorageError> {
    super::codec::decode(bytes).map_err(|e| StorageError::Corrupt {
        cf: cf.name(),
        key: key.to_vec(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 8],
            ..Entry::default()
        }
    }

    #[test]
    fn append_overwrite_truncate_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), true).unwrap();
        let mut store = RaftLogStore::open(engine.clone(), &[1]).unwrap();
        let mut b = Batch::new();
        store.append(
            &mut b,
            &(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            None,
        );
        engine.write(b, true).unwrap();
        // A new leader overwrites 4..: the old suffix must disappear.
        let mut b = Batch::new();
        store.append(&mut b, &[entry(4, 2)], None);
        engine.write(b, true).unwrap();
        assert_eq!(store.last_index().unwrap(), 4);
        assert_eq!(store.term(4).unwrap(), 2);
        let mut b = Batch::new();
        store.truncate_to(&mut b, 2).unwrap();
        engine.write(b, true).unwrap();
        assert_eq!(store.first_index().unwrap(), 3);
        assert_eq!(store.term(2).unwrap(), 1);
        drop(store);
        let store = RaftLogStore::open(engine, &[1]).unwrap();
        assert_eq!((store.first(), store.last()), (3, 4));
        let got = store
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(3, 1), (4, 2)]
        );
        assert!(
            store
                .entries(2, 3, None, GetEntriesContext::empty(false))
                .is_err()
        );
        assert_eq!(store.conf_state().voters, vec![1]);
    }

    /// Large entries fall out of the in-memory tail at the byte budget and are read back from
    /// the engine; the tail never holds more than the budget (beyond its newest entry).
    #[test]
    fn the_tail_cache_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), true).unwrap();
        let mut store = RaftLogStore::open(engine.clone(), &[1]).unwrap();
        let big = |index: u64| Entry {
            index,
            term: 1,
            data: vec![index as u8; 1 << 20],
            ..Entry::default()
        };
        for index in 1..=20 {
            let mut b = Batch::new();
            store.append(&mut b, &[big(index)], None);
            engine.write(b, true).unwrap();
            assert!(
                store.tail_bytes <= TAIL_CACHE_BYTES_MAX,
                "{}",
                store.tail_bytes
            );
            let summed: usize = store.tail.iter().map(cached_bytes).sum();
            assert_eq!(store.tail_bytes, summed);
        }
        assert!(store.tail.len() < 8, "{} entries cached", store.tail.len());
        assert_eq!(store.tail.back().unwrap().index, 20);
        let first = store.first_index().unwrap();
        let got = store
            .entries(first, 21, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len() as u64, 21 - first);
        assert!(
            got.iter()
                .zip(first..)
                .all(|(e, i)| e.index == i && e.data == big(i).data)
        );
        // Overwritten and truncated entries leave the count in step.
        let mut b = Batch::new();
        store.append(&mut b, &[entry(19, 2)], None);
        store.truncate_to(&mut b, 18).unwrap();
        engine.write(b, true).unwrap();
        let summed: usize = store.tail.iter().map(cached_bytes).sum();
        assert_eq!(store.tail_bytes, summed);
    }
}
