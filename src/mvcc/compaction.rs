//! Compaction: scheduling (validated, made durable in the caller's batch), the index step that
//! decides what to keep, and [`CompactJob`], which deletes obsolete revisions from RocksDB.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::revision::{Revision, decode_rev_key};
use super::store::MvccStore;
use super::{FINISHED_COMPACT_KEY, MvccError, SCHEDULED_COMPACT_KEY};
use crate::storage::{Batch, Cf, Engine};

/// Revisions examined per RocksDB write batch (etcd's `--compaction-batch-limit` default).
pub const DEFAULT_BATCH_LIMIT: usize = 1000;
/// Pause between batches (etcd's `--compaction-sleep-interval` default), so a large
/// compaction does not monopolise the disk.
pub const DEFAULT_BATCH_PAUSE: Duration = Duration::from_millis(10);

/// A compaction: created (validated, its `scheduledCompactRev` mark in the caller's batch) by
/// [`MvccStore::compact`]; after that batch is written, [`MvccStore::publish_compaction`]
/// compacts the index and decides what to keep; then [`CompactJob::run`] deletes the obsolete
/// revisions from disk, on any thread, concurrently with reads and later writes.
#[must_use = "a compaction must be published after its batch is written, then run"]
#[derive(Debug)]
pub struct CompactJob {
    rev: i64,
    /// The revisions ≤ `rev` to keep; set by `publish_compaction`.
    keep: OnceLock<HashSet<Revision>>,
    /// The store's count of stored bytes, lowered as revisions are deleted; set with `keep`.
    stored_bytes: OnceLock<Arc<AtomicU64>>,
}

/// What a [`CompactJob`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Revision keys examined (every key ≤ the compaction revision).
    pub scanned: usize,
    /// Revision keys deleted.
    pub deleted: usize,
    /// RocksDB write batches used.
    pub batches: usize,
    /// Bytes of the deleted revision records (keys plus values).
    pub deleted_bytes: u64,
}

impl MvccStore {
    /// Validates a compaction at `rev` and adds the `scheduledCompactRev` mark to `batch`.
    /// `rev` at or below the compaction revision fails `Compacted`; above the current revision
    /// (counting finished, unpublished txns) fails `FutureRev`. Like writes, call from the
    /// apply thread only, with no [`WriteTxn`](super::WriteTxn) open.
    pub fn compact(&self, rev: i64, batch: &mut Batch) -> Result<CompactJob, MvccError> {
        let mut writer = self
            .writer
            .try_lock()
            .expect("mvcc has one writer: a write txn is open or the lock is poisoned");
        if rev <= writer.head_compact_rev {
            return Err(MvccError::Compacted {
                requested: rev,
                compacted: writer.head_compact_rev,
            });
        }
        if rev > writer.head_rev {
            return Err(MvccError::FutureRev {
                requested: rev,
                current: writer.head_rev,
            });
        }
        writer.head_compact_rev = rev;
        batch.put(
            &self.engine,
            Cf::Meta,
            SCHEDULED_COMPACT_KEY,
            &rev.to_be_bytes(),
        );
        Ok(CompactJob::new(rev))
    }

    /// Compacts the index at the job's revision and publishes the new compaction revision
    /// (returned): from now on reads below it fail `Compacted`. Call after the batch holding the
    /// schedule mark is written and after every txn finished before the compaction is
    /// published.
    pub fn publish_compaction(&self, job: &CompactJob) -> i64 {
        let rev = job.rev;
        let (keep, dropped_bytes) = {
            let mut index = self.write_index();
            assert!(
                rev <= self.current_revision(),
                "compaction at {rev} published before the txns it covers"
            );
            let (keep, dropped_bytes) = index.compact(rev);
            self.used_bytes.store(index.bytes(), Ordering::Release);
            if rev > self.compact_revision() {
                self.compact_rev.store(rev, Ordering::Release);
            }
            (keep, dropped_bytes)
        };
        tracing::debug!(
            compact_revision = rev,
            kept = keep.len(),
            dropped_bytes,
            "index compacted"
        );
        // A second publish of the same job computes the same set; keep the first.
        let _ = job.keep.set(keep);
        let _ = job.stored_bytes.set(self.stored_bytes.clone());
        rev
    }
}

impl CompactJob {
    pub(super) fn new(rev: i64) -> CompactJob {
        CompactJob {
            rev,
            keep: OnceLock::new(),
            stored_bytes: OnceLock::new(),
        }
    }

    /// The compaction revision.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// Deletes the obsolete revisions with the default batch size and pause.
    pub fn run(&self, engine: &Engine) -> Result<CompactStats, MvccError> {
        self.run_with(engine, DEFAULT_BATCH_LIMIT, DEFAULT_BATCH_PAUSE)
    }

    /// Scans the revisions ≤ the compaction revision in batches of `batch_limit`, deletes those
    /// not kept, records `finishedCompactRev` with the last batch, then compacts the deleted
    /// key span in RocksDB to reclaim the space. Idempotent: a crash midway is finished by the
    /// next [`MvccStore::open`].
    pub fn run_with(
        &self,
        engine: &Engine,
        batch_limit: usize,
        pause: Duration,
    ) -> Result<CompactStats, MvccError> {
        let keep = self
            .keep
            .get()
            .expect("MvccStore::publish_compaction runs before CompactJob::run");
        let stored_bytes = self
            .stored_bytes
            .get()
            .expect("MvccStore::publish_compaction sets the byte count with the kept set");
        let batch_limit = batch_limit.max(1);
        let end = Revision::key_of_main(self.rev + 1);
        let mut from: Vec<u8> = Vec::new();
        let mut stats = CompactStats::default();
        let mut first_deleted: Option<Vec<u8>> = None;
        let mut last_deleted: Option<Vec<u8>> = None;
        loop {
            let mut batch = Batch::new();
            let mut scanned = 0;
            let mut batch_deleted_bytes = 0u64;
            let mut last_key: Option<Box<[u8]>> = None;
            for item in engine.scan(Cf::Kv, &from, Some(&end)).take(batch_limit) {
                let (k, v) = item?;
                scanned += 1;
                let (rev, _) = decode_rev_key(&k).ok_or_else(|| {
                    MvccError::Corrupt(format!("kv column family holds a non-revision key {k:?}"))
                })?;
                if !keep.contains(&rev) {
                    batch.delete(engine, Cf::Kv, &k);
                    stats.deleted += 1;
                    batch_deleted_bytes += (k.len() + v.len()) as u64;
                    if first_deleted.is_none() {
                        first_deleted = Some(k.to_vec());
                    }
                    last_deleted = Some(k.to_vec());
                }
                last_key = Some(k);
            }
            stats.scanned += scanned;
            let done = scanned < batch_limit;
            if done {
                batch.put(
                    engine,
                    Cf::Meta,
                    FINISHED_COMPACT_KEY,
                    &self.rev.to_be_bytes(),
                );
            }
            engine.write(batch, false)?;
            // Saturating: a reload (snapshot install) may have replaced the count meanwhile.
            let _ = stored_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(batch_deleted_bytes))
            });
            stats.deleted_bytes += batch_deleted_bytes;
            stats.batches += 1;
            if done {
                break;
            }
            // The smallest key after the last one scanned.
            let mut next = last_key
                .expect("a full batch scanned at least one key")
                .into_vec();
            next.push(0);
            from = next;
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        if let (Some(first), Some(mut last)) = (first_deleted, last_deleted) {
            last.push(0);
            engine.compact_range(Cf::Kv, &first, &last);
        }
        tracing::info!(
            compact_revision = self.rev,
            scanned = stats.scanned,
            deleted = stats.deleted,
            "compaction finished"
        );
        Ok(stats)
    }
}
