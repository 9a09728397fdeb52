//! etcd's multi-version store: revisions, the in-memory key index, ranges at any retained
//! revision, write txns, compaction, watch history and hashes, over the `kv` column family.
//!
//! Layout on disk (byte-identical to etcd's `key` bucket): `Cf::Kv` maps a revision key
//! (`BE(main) '_' BE(sub)`, plus `'t'` for a tombstone) to a prost-encoded
//! [`mvccpb::KeyValue`](crate::proto::mvccpb::KeyValue); a tombstone's value holds only the key.
//! `Cf::Meta` holds `scheduledCompactRev` / `finishedCompactRev` (big-endian i64).
//!
//! Threads: one writer (the apply thread) and any number of readers.
//! - A write goes through a [`WriteTxn`]: its changes stay private until
//!   [`WriteTxn::finish`] adds them to the caller's [`Batch`](crate::storage::Batch); once the
//!   caller has written that batch it calls [`MvccStore::publish`], which updates the index and
//!   the current revision under the index write lock. Readers therefore never see an index
//!   entry whose value is not yet in RocksDB. Several finished txns may wait for one batch: a
//!   later txn sees the earlier ones' changes (they are *staged*), and they must be published
//!   in the order they were finished.
//! - A reader takes the index read lock, resolves revisions, takes a RocksDB snapshot while
//!   still holding the lock, releases it, then reads the values from the snapshot.
//! - Compaction: [`MvccStore::compact`] validates and schedules (a meta write in the caller's
//!   batch), [`MvccStore::publish_compaction`] compacts the index, and [`CompactJob::run`]
//!   deletes obsolete revisions from RocksDB, on any thread. When one batch carries several
//!   txns and compactions, publish them in the order they were created.
//! - Compaction keeps, per key, the greatest revision ≤ the compaction revision unless it is a
//!   tombstone below it (a tombstone exactly at it is kept, as in current etcd, so a watch
//!   starting at the compaction revision still sees deletions made there).
//!
//! Semantics follow etcd's `server/storage/mvcc`: an empty store is at revision 1; a write txn
//! takes one main revision if and only if it changes something; a key's version counts its
//! modifications since creation; reads at the compaction revision itself are allowed.

mod compaction;
mod hash;
mod key_index;
mod revision;
mod store;
mod write;

#[cfg(test)]
#[allow(clippy::type_complexity)] // the test tables are tuples on purpose
mod tests;

use crate::proto::mvccpb::KeyValue;
use crate::storage::StorageError;

pub use compaction::{CompactJob, CompactStats, DEFAULT_BATCH_LIMIT, DEFAULT_BATCH_PAUSE};
pub use hash::KvHash;
pub use key_index::KeyRange;
pub use revision::{Revision, decode_rev_key};
pub use store::MvccStore;
pub use write::{Pending, TxnOutcome, WriteTxn};

/// `Cf::Meta` key of the last compaction revision made durable (scheduled).
pub const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
/// `Cf::Meta` key of the last compaction whose deletions all reached RocksDB.
pub const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";

/// What the MVCC layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error(
        "mvcc: required revision has been compacted (requested {requested}, compacted {compacted})"
    )]
    Compacted { requested: i64, compacted: i64 },
    #[error(
        "mvcc: required revision is a future revision (requested {requested}, current {current})"
    )]
    FutureRev { requested: i64, current: i64 },
    #[error("mvcc storage: {0}")]
    Storage(#[from] StorageError),
    #[error("corrupt mvcc data: {0}")]
    Corrupt(String),
}

/// The result of a range read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// The key-values, in key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at the read revision, regardless of `limit`.
    pub count: usize,
    /// The current revision of the view the read was served from (etcd's header revision),
    /// not the historical revision that was read.
    pub rev: i64,
}
