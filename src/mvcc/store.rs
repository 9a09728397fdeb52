//! [`MvccStore`]: opening (index rebuild), the read paths, watch history and lease discovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;

use super::compaction::CompactJob;
use super::key_index::{Index, KeyRange, record_bytes};
use super::revision::{Revision, decode_rev_key};
use super::write::WriterState;
use super::{FINISHED_COMPACT_KEY, MvccError, RangeResult, SCHEDULED_COMPACT_KEY};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::storage::{Cf, Engine, View};

/// Values fetched per `multi_get` when a read walks many keys.
const FETCH_CHUNK: usize = 1024;

/// etcd's revision store over the `kv` column family. Cheap to share (`Arc<MvccStore>`): reads
/// take `&self` from any thread; writes come from one thread (see [`MvccStore::write_txn`]).
pub struct MvccStore {
    pub(super) engine: Arc<Engine>,
    pub(super) index: RwLock<Index>,
    /// Revision of the last published write txn; changes only under the index write lock.
    pub(super) current_rev: AtomicI64,
    /// Revision of the last published compaction (-1 = never compacted, as in etcd); changes
    /// only under the index write lock.
    pub(super) compact_rev: AtomicI64,
    /// Bytes of every revision record in the `kv` column family (key plus value): grows when a
    /// txn is published, shrinks as a compaction deletes revisions. Derived from applied state
    /// only, so every member counts the same bytes at the same revision once its compactions
    /// have finished; the backend quota is checked against it.
    pub(super) stored_bytes: Arc<AtomicU64>,
    /// [`Index::bytes`] as of the last publish: the bytes of the revision records as if every
    /// published compaction had finished, the same on every member at the same applied index.
    /// Changes only under the index write lock.
    pub(super) used_bytes: AtomicU64,
    pub(super) writer: Mutex<WriterState>,
    /// Every live key attached to a lease as of the last open or reload, collected by the scan
    /// that rebuilds the index; see [`MvccStore::take_restored_leases`].
    restored_leases: Mutex<Vec<(i64, Vec<u8>)>>,
}

impl std::fmt::Debug for MvccStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore")
            .field("current_rev", &self.current_revision())
            .field("compact_rev", &self.compact_revision())
            .finish_non_exhaustive()
    }
}

impl MvccStore {
    /// Opens the store: rebuilds the index by scanning every revision in order, restores the
    /// compaction revision and finishes a compaction that was scheduled but not completed.
    pub fn open(engine: Arc<Engine>) -> Result<MvccStore, MvccError> {
        let finished = read_meta_rev(&engine, FINISHED_COMPACT_KEY)?;
        let scheduled = read_meta_rev(&engine, SCHEDULED_COMPACT_KEY)?;

        let mut index = Index::default();
        let mut last_main = 1;
        let mut revisions = 0u64;
        let mut stored_bytes = 0u64;
        let mut leased: HashMap<Vec<u8>, i64> = HashMap::new();
        for item in engine.scan(Cf::Kv, &[], None) {
            let (k, v) = item?;
            stored_bytes += (k.len() + v.len()) as u64;
            let (rev, tombstone) = decode_rev_key(&k).ok_or_else(|| {
                MvccError::Corrupt(format!("kv column family holds a non-revision key {k:?}"))
            })?;
            let kv = StoredHeader::decode(&*v).map_err(|e| {
                MvccError::Corrupt(format!("value of revision {rev} does not decode: {e}"))
            })?;
            let bytes = record_bytes(k.len() + v.len());
            // Revisions arrive in order, so the last word on a key's lease is its latest one.
            if tombstone || kv.lease == 0 {
                if !leased.is_empty() {
                    leased.remove(&kv.key);
                }
            } else {
                leased.insert(kv.key.clone(), kv.lease);
            }
            index.restore(
                kv.key,
                rev,
                tombstone,
                kv.create_revision,
                kv.version,
                bytes,
            );
            last_main = last_main.max(rev.main);
            revisions += 1;
        }

        let compact = finished.unwrap_or(-1);
        let resume = scheduled.filter(|&s| s > compact);
        // A compaction at a revision whose changes were all superseded can leave no revision
        // key at or above it; the store revision never goes below a compaction revision.
        let current = last_main.max(compact).max(resume.unwrap_or(-1));
        let used_bytes = index.bytes();
        let mut restored_leases: Vec<(i64, Vec<u8>)> = leased
            .into_iter()
            .map(|(key, lease)| (lease, key))
            .collect();
        restored_leases.sort_by(|a, b| a.1.cmp(&b.1));
        let store = MvccStore {
            engine,
            index: RwLock::new(index),
            current_rev: AtomicI64::new(current),
            compact_rev: AtomicI64::new(compact),
            stored_bytes: Arc::new(AtomicU64::new(stored_bytes)),
            used_bytes: AtomicU64::new(used_bytes),
            writer: Mutex::new(WriterState::new(current, resume.unwrap_or(compact))),
            restored_leases: Mutex::new(restored_leases),
        };
        tracing::info!(
            revision = current,
            compact_revision = compact,
            revisions,
            stored_bytes,
            used_bytes,
            keys = store.read_index().len(),
            "mvcc store restored"
        );
        if let Some(rev) = resume {
            tracing::info!(compact_revision = rev, "resuming an unfinished compaction");
            let job = CompactJob::new(rev);
            store.publish_compaction(&job);
            job.run(&store.engine)?;
        }
        Ok(store)
    }

    /// Rebuilds the in-memory state from the engine after its contents were replaced (a raft
    /// snapshot was installed). Called by the single writer (the apply thread).
    pub fn reload(&self) -> Result<(), MvccError> {
        let fresh = MvccStore::open(self.engine.clone())?;
        let stored_bytes = fresh.stored_bytes();
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.write_index();
        *index = fresh
            .index
            .into_inner()
            .expect("a store nobody else has seen has an unpoisoned lock");
        *writer = fresh
            .writer
            .into_inner()
            .expect("a store nobody else has seen has an unpoisoned lock");
        self.current_rev
            .store(fresh.current_rev.load(Ordering::Acquire), Ordering::Release);
        self.compact_rev
            .store(fresh.compact_rev.load(Ordering::Acquire), Ordering::Release);
        self.stored_bytes.store(stored_bytes, Ordering::Release);
        self.used_bytes.store(index.bytes(), Ordering::Release);
        *self
            .restored_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = fresh
            .restored_leases
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        Ok(())
    }

    /// [`MvccStore::live_leases`] as of the last open or reload, without reading every value
    /// again (the scan that rebuilt the index saw them); empty after the first call. The
    /// lessor is built from it at startup and after a snapshot install, before any write.
    pub fn take_restored_leases(&self) -> Vec<(i64, Vec<u8>)> {
        std::mem::take(
            &mut *self
                .restored_leases
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// The engine this store writes to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Revision of the last published write (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.current_rev.load(Ordering::Acquire)
    }

    /// Revision of the last published compaction; -1 if the store was never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev.load(Ordering::Acquire)
    }

    /// Bytes of the revisions stored (keys plus values of the `kv` column family), as of the
    /// last published txn and the compactions finished so far. Unlike the on-disk size it does
    /// not depend on when RocksDB flushes or compacts, but it does on when this member's
    /// compactor gets to a compaction; see [`MvccStore::used_bytes`] for the size the quota counts.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Acquire)
    }

    /// Bytes of the revision records (keys plus values of the `kv` column family) as of the last
    /// published txn, counting every published compaction as finished: the size the backend
    /// quota counts. It depends only on what was applied, so every member has the same at the
    /// same applied index; it equals [`MvccStore::stored_bytes`] once the compactions finish.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    /// Keys that exist at the current revision (etcd's `etcd_debugging_mvcc_keys_total`).
    pub fn live_keys(&self) -> usize {
        self.read_index().live_len()
    }

    pub(super) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .expect("mvcc index lock poisoned: a panic interrupted an index update")
    }

    pub(super) fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .expect("mvcc index lock poisoned: a panic interrupted an index update")
    }

    /// Up to `limit` (0 = no limit) key-values of the keys in `key`..`range_end` (etcd's range
    /// convention, see [`KeyRange::new`]) at revision `rev` (≤ 0 = current), in key order.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
    ) -> Result<RangeResult, MvccError> {
        let range = KeyRange::new(key, range_end);
        let index = self.read_index();
        let current = self.current_revision();
        let at = resolve_read_rev(rev, current, self.compact_revision())?;
        let (revs, count) = index.revisions(&range, at, limit);
        if revs.is_empty() {
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                rev: current,
            });
        }
        // The snapshot is taken under the lock: every indexed revision is in it, and a
        // compaction published later cannot remove what this read needs.
        let view = self.engine.view();
        drop(index);
        let kvs = fetch_values(&view, &revs)?;
        Ok(RangeResult {
            kvs,
            count,
            rev: current,
        })
    }

    /// Like [`MvccStore::range`] but only counts: `kvs` is empty, nothing is read from disk.
    pub fn count(&self, key: &[u8], range_end: &[u8], rev: i64) -> Result<RangeResult, MvccError> {
        let range = KeyRange::new(key, range_end);
        let index = self.read_index();
        let current = self.current_revision();
        let at = resolve_read_rev(rev, current, self.compact_revision())?;
        Ok(RangeResult {
            kvs: Vec::new(),
            count: index.count(&range, at),
            rev: current,
        })
    }

    /// The value of `key` at revision `rev` (≤ 0 = current), e.g. a watch event's previous
    /// value at `mod_revision - 1`.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
        Ok(self.range(key, &[], rev, 1)?.kvs.into_iter().next())
    }

    /// The events of main revisions `from_rev..=to_rev` (capped at the current revision), at
    /// most `max_revs` revisions (0 = no limit), read from disk in revision order. A DELETE
    /// event's kv holds the key and the deletion revision. `prev_kv` is never filled.
    /// Fails with `Compacted` if `from_rev` is below the compaction revision.
    pub fn events_since(
        &self,
        from_rev: i64,
        to_rev: i64,
        max_revs: usize,
    ) -> Result<Vec<(i64, Vec<Event>)>, MvccError> {
        let index = self.read_index();
        let current = self.current_revision();
        let compact = self.compact_revision();
        if from_rev < compact {
            return Err(MvccError::Compacted {
                requested: from_rev,
                compacted: compact,
            });
        }
        let from = from_rev.max(1);
        let to = to_rev.min(current);
        if from > to {
            return Ok(Vec::new());
        }
        // Revisions above `current` may already be in RocksDB (written, not yet published);
        // the upper bound excludes them.
        let view = self.engine.view();
        drop(index);

        let start = Revision::key_of_main(from);
        let end = Revision::key_of_main(to + 1);
        let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
        for item in view.scan(Cf::Kv, &start, Some(&end)) {
            let (k, v) = item?;
            let (rev, tombstone) = decode_rev_key(&k).ok_or_else(|| {
                MvccError::Corrupt(format!("kv column family holds a non-revision key {k:?}"))
            })?;
            let kv = decode_kv(rev, &v)?;
            if out.last().is_none_or(|(main, _)| *main != rev.main) {
                if max_revs != 0 && out.len() == max_revs {
                    break;
                }
                out.push((rev.main, Vec::new()));
            }
            let event = if tombstone {
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: kv.key,
                        mod_revision: rev.main,
                        ..KeyValue::default()
                    }),
                    prev_kv: None,
                }
            } else {
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: None,
                }
            };
            out.last_mut()
                .expect("a revision group was pushed above")
                .1
                .push(event);
        }
        Ok(out)
    }

    /// Every live key that is attached to a lease, as `(lease, key)`, at the current revision:
    /// what the lessor needs to rebuild its attachments at startup.
    pub fn live_leases(&self) -> Result<Vec<(i64, Vec<u8>)>, MvccError> {
        let index = self.read_index();
        let current = self.current_revision();
        let (revs, _) = index.revisions(
            &KeyRange::Span {
                start: &[],
                end: None,
            },
            current,
            0,
        );
        let view = self.engine.view();
        drop(index);
        let mut out = Vec::new();
        for chunk in revs.chunks(FETCH_CHUNK) {
            for kv in fetch_values(&view, chunk)? {
                if kv.lease != 0 {
                    out.push((kv.lease, kv.key));
                }
            }
        }
        Ok(out)
    }
}

/// The revision a read at `rev` (≤ 0 = current) is served at, per etcd's checks: above the
/// current revision is a future revision; below the compaction revision is compacted; the
/// compaction revision itself is readable.
pub(super) fn resolve_read_rev(rev: i64, current: i64, compact: i64) -> Result<i64, MvccError> {
    if rev > current {
        return Err(MvccError::FutureRev {
            requested: rev,
            current,
        });
    }
    let at = if rev <= 0 { current } else { rev };
    if at < compact {
        return Err(MvccError::Compacted {
            requested: at,
            compacted: compact,
        });
    }
    Ok(at)
}

/// Reads and decodes the values of live revisions, in the order given.
pub(super) fn fetch_values(view: &View<'_>, revs: &[Revision]) -> Result<Vec<KeyValue>, MvccError> {
    let keys: Vec<Vec<u8>> = revs.iter().map(|r| r.to_key().to_vec()).collect();
    let values = view.multi_get(Cf::Kv, &keys)?;
    revs.iter()
        .zip(values)
        .map(|(rev, value)| match value {
            Some(bytes) => decode_kv(*rev, &bytes),
            None => Err(MvccError::Corrupt(format!(
                "revision {rev} is indexed but missing from the kv column family"
            ))),
        })
        .collect()
}

/// The fields of a stored `mvccpb.KeyValue` the startup scan needs: the same field numbers,
/// without the value (prost skips it), so rebuilding the index neither copies nor allocates
/// the values.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredHeader {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

pub(super) fn decode_kv(rev: Revision, bytes: &[u8]) -> Result<KeyValue, MvccError> {
    KeyValue::decode(bytes)
        .map_err(|e| MvccError::Corrupt(format!("value of revision {rev} does not decode: {e}")))
}

/// Reads a compaction mark: 8 bytes big-endian, or etcd's 17-byte revision form.
fn read_meta_rev(engine: &Engine, key: &[u8]) -> Result<Option<i64>, MvccError> {
    let Some(bytes) = engine.get(Cf::Meta, key)? else {
        return Ok(None);
    };
    match bytes.len() {
        8 | 17 => {
            let main: [u8; 8] = bytes[..8].try_into().expect("length checked above");
            Ok(Some(i64::from_be_bytes(main)))
        }
        n => Err(MvccError::Corrupt(format!(
            "meta key {} holds {n} bytes, expected 8",
            String::from_utf8_lossy(key)
        ))),
    }
}
