//! Write txns: [`WriteTxn`] (private changes with read-your-writes), [`Pending`] (finished,
//! waiting for the caller's batch) and [`MvccStore::publish`] (making them visible).

use std::collections::BTreeMap;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;

use prost::Message;

use super::key_index::{KeyAt, KeyRange, record_bytes};
use super::revision::Revision;
use super::store::{MvccStore, decode_kv, fetch_values, resolve_read_rev};
use super::{MvccError, RangeResult};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::storage::{Batch, Cf};

/// The writer's view of the store: revisions handed out to finished txns and compactions
/// scheduled, including ones not yet published.
#[derive(Debug)]
pub(super) struct WriterState {
    /// Revision of the last finished txn that changed something (≥ the published revision).
    pub(super) head_rev: i64,
    /// Revision of the last scheduled compaction (≥ the published compaction revision).
    pub(super) head_compact_rev: i64,
    /// State of each key changed by finished txns, per revision, for keys whose changes may
    /// not be published yet. Entries at or below the published revision are redundant with
    /// the index and are pruned when the next txn starts.
    staged: BTreeMap<Vec<u8>, Vec<StagedRev>>,
}

impl WriterState {
    pub(super) fn new(head_rev: i64, head_compact_rev: i64) -> WriterState {
        WriterState {
            head_rev,
            head_compact_rev,
            staged: BTreeMap::new(),
        }
    }
}

/// A key's state at the end of the txn that committed at `main`.
#[derive(Debug)]
struct StagedRev {
    main: i64,
    /// `None` when the txn deleted the key.
    kv: Option<KeyValue>,
}

/// One change of a txn.
#[derive(Debug, Clone)]
struct Change {
    rev: Revision,
    tombstone: bool,
    /// The stored key-value of a put; for a delete, the key and the deletion revision (the
    /// form a DELETE event carries).
    kv: KeyValue,
    /// The key's value before this change.
    prev: Option<KeyValue>,
    /// Bytes of the change's record (revision key plus value); set by `finish`.
    bytes: u32,
}

/// A write txn in progress. All its changes share one main revision ([`WriteTxn::rev`]) with
/// increasing sub revisions; they stay private until [`WriteTxn::finish`]. Dropping it
/// discards them.
pub struct WriteTxn<'a> {
    store: &'a MvccStore,
    writer: MutexGuard<'a, WriterState>,
    rev: i64,
    changes: Vec<Change>,
    /// Key → index in `changes` of its latest change in this txn.
    latest: BTreeMap<Vec<u8>, usize>,
}

/// A finished txn whose changes are in the caller's batch; pass it to [`MvccStore::publish`]
/// once that batch is written.
#[must_use = "a finished txn must be published after its batch is written"]
#[derive(Debug)]
pub struct Pending {
    rev: i64,
    changes: Vec<Change>,
    /// Bytes of the revision records `finish` added to the batch.
    stored_bytes: u64,
}

impl Pending {
    /// The revision the txn committed at (the unchanged current revision if it changed nothing).
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// True when the txn changed nothing (publishing it is a no-op).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// What a published txn did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnOutcome {
    /// The store revision after the txn.
    pub rev: i64,
    /// One event per change, in order. `prev_kv` is filled whenever the key had a value
    /// before the change (for lease bookkeeping; watchers get it only if they asked).
    pub events: Vec<Event>,
}

/// Where a merged range entry's value comes from.
enum Source<'t> {
    Disk(Revision),
    Mem(&'t KeyValue),
}

impl MvccStore {
    /// Starts a write txn. The store has a single writer: call this from the apply thread
    /// only, with no other `WriteTxn` alive and no compaction call in between.
    pub fn write_txn(&self) -> WriteTxn<'_> {
        let mut writer = self
            .writer
            .try_lock()
            .expect("mvcc has one writer: a write txn is already open or the lock is poisoned");
        if !writer.staged.is_empty() {
            let current = self.current_revision();
            writer.staged.retain(|_, revs| {
                revs.retain(|s| s.main > current);
                !revs.is_empty()
            });
        }
        let rev = writer.head_rev + 1;
        WriteTxn {
            store: self,
            writer,
            rev,
            changes: Vec::new(),
            latest: BTreeMap::new(),
        }
    }

    /// Makes a finished txn visible to readers: updates the index and the current revision.
    /// Call only after the batch `finish` wrote into has been written, and in finish order.
    pub fn publish(&self, pending: Pending) -> TxnOutcome {
        if pending.changes.is_empty() {
            return TxnOutcome {
                rev: pending.rev,
                events: Vec::new(),
            };
        }
        {
            let mut index = self.write_index();
            let current = self.current_revision();
            assert_eq!(
                pending.rev,
                current + 1,
                "finished txns must be published in the order they were finished"
            );
            for c in &pending.changes {
                if c.tombstone {
                    let deleted = index.tombstone(&c.kv.key, c.rev, c.bytes);
                    assert!(
                        deleted,
                        "txn at {} deleted a key that does not exist",
                        c.rev
                    );
                } else {
                    index.put(&c.kv.key, c.rev, c.bytes);
                }
            }
            self.stored_bytes
                .fetch_add(pending.stored_bytes, Ordering::AcqRel);
            self.used_bytes.store(index.bytes(), Ordering::Release);
            self.current_rev.store(pending.rev, Ordering::Release);
        }
        let events = pending
            .changes
            .into_iter()
            .map(|c| Event {
                r#type: (if c.tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                }) as i32,
                kv: Some(c.kv),
                prev_kv: c.prev,
            })
            .collect();
        TxnOutcome {
            rev: pending.rev,
            events,
        }
    }
}

impl<'a> WriteTxn<'a> {
    /// The revision this txn's changes get (one above the writer's head revision).
    pub fn rev(&self) -> i64 {
        self.rev
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The revision reads in this txn are served at: [`WriteTxn::rev`] once the txn has
    /// changed something, the revision before it otherwise (etcd's `storeTxnWrite.Range`).
    pub fn read_rev(&self) -> i64 {
        if self.has_changes() {
            self.rev
        } else {
            self.rev - 1
        }
    }

    /// The compaction revision as this txn sees it (including scheduled compactions).
    pub fn compact_revision(&self) -> i64 {
        self.writer.head_compact_rev
    }

    /// A marker to [`WriteTxn::rollback_to`]: the number of changes so far.
    pub fn savepoint(&self) -> usize {
        self.changes.len()
    }

    /// Drops every change made after `savepoint`.
    pub fn rollback_to(&mut self, savepoint: usize) {
        if savepoint >= self.changes.len() {
            return;
        }
        self.changes.truncate(savepoint);
        self.latest.clear();
        for (i, c) in self.changes.iter().enumerate() {
            self.latest.insert(c.kv.key.clone(), i);
        }
    }

    /// The current value of `key`, including this txn's own changes.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        if let Some(&i) = self.latest.get(key) {
            let c = &self.changes[i];
            return Ok((!c.tombstone).then(|| c.kv.clone()));
        }
        if let Some(last) = self.writer.staged.get(key).and_then(|revs| revs.last()) {
            return Ok(last.kv.clone());
        }
        let Some(found) = self.store.read_index().get(key, i64::MAX) else {
            return Ok(None);
        };
        // Only this thread writes, so the latest revision cannot vanish under us: a plain
        // read needs no snapshot.
        let bytes = self
            .store
            .engine
            .get(Cf::Kv, &found.modified.to_key())?
            .ok_or_else(|| {
                MvccError::Corrupt(format!(
                    "revision {} is indexed but missing from the kv column family",
                    found.modified
                ))
            })?;
        decode_kv(found.modified, &bytes).map(Some)
    }

    /// Like [`MvccStore::range`], but sees this txn's changes and those of finished,
    /// unpublished txns. `rev` above [`WriteTxn::read_rev`] is a future revision.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
    ) -> Result<RangeResult, MvccError> {
        self.read(key, range_end, rev, limit, false)
    }

    /// Like [`WriteTxn::range`] but only counts.
    pub fn count(&self, key: &[u8], range_end: &[u8], rev: i64) -> Result<RangeResult, MvccError> {
        self.read(key, range_end, rev, 0, true)
    }

    fn read(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult, MvccError> {
        let range = KeyRange::new(key, range_end);
        let read_rev = self.read_rev();
        let at = resolve_read_rev(rev, read_rev, self.compact_revision())?;
        let with_own = at >= self.rev;

        let mut overlaid = false;
        range.visit(&self.writer.staged, |_, _| {
            overlaid = true;
            false
        });
        if with_own && !overlaid {
            range.visit(&self.latest, |_, _| {
                overlaid = true;
                false
            });
        }

        if !overlaid {
            // Nothing unpublished in range: the index alone answers.
            let index = self.store.read_index();
            if count_only {
                return Ok(RangeResult {
                    kvs: Vec::new(),
                    count: index.count(&range, at),
                    rev: read_rev,
                });
            }
            let (revs, count) = index.revisions(&range, at, limit);
            drop(index);
            let kvs = if revs.is_empty() {
                Vec::new()
            } else {
                fetch_values(&self.store.engine.view(), &revs)?
            };
            return Ok(RangeResult {
                kvs,
                count,
                rev: read_rev,
            });
        }

        let mut merged: BTreeMap<Vec<u8>, Source<'_>> = BTreeMap::new();
        {
            let index = self.store.read_index();
            index.visit_live(&range, at, |k, found: KeyAt| {
                merged.insert(k.to_vec(), Source::Disk(found.modified));
                true
            });
        }
        range.visit(&self.writer.staged, |k, revs| {
            let n = revs.partition_point(|s| s.main <= at);
            if let Some(s) = n.checked_sub(1).map(|i| &revs[i]) {
                match &s.kv {
                    Some(kv) => {
                        merged.insert(k.clone(), Source::Mem(kv));
                    }
                    None => {
                        merged.remove(k);
                    }
                }
            }
            true
        });
        if with_own {
            range.visit(&self.latest, |k, &i| {
                let c = &self.changes[i];
                if c.tombstone {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), Source::Mem(&c.kv));
                }
                true
            });
        }

        let count = merged.len();
        if count_only {
            return Ok(RangeResult {
                kvs: Vec::new(),
                count,
                rev: read_rev,
            });
        }
        let take = if limit == 0 { count } else { limit.min(count) };
        let picked: Vec<Source<'_>> = merged.into_values().take(take).collect();
        let disk: Vec<Revision> = picked
            .iter()
            .filter_map(|s| match s {
                Source::Disk(r) => Some(*r),
                Source::Mem(_) => None,
            })
            .collect();
        let mut from_disk = if disk.is_empty() {
            Vec::new()
        } else {
            fetch_values(&self.store.engine.view(), &disk)?
        }
        .into_iter();
        let kvs = picked
            .into_iter()
            .map(|s| match s {
                Source::Mem(kv) => Ok(kv.clone()),
                Source::Disk(r) => from_disk.next().ok_or_else(|| {
                    MvccError::Corrupt(format!("revision {r} vanished during a range"))
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResult {
            kvs,
            count,
            rev: read_rev,
        })
    }

    /// Sets `key` to `value` with `lease` (0 = none). Returns the previous value.
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Option<KeyValue>, MvccError> {
        let prev = self.get(key)?;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (self.rev, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: self.rev,
            version,
            value: value.to_vec(),
            lease,
        };
        self.push(false, kv, prev.clone());
        Ok(prev)
    }

    /// Deletes every key in `key`..`range_end` (etcd's range convention). Returns the deleted
    /// key-values, in key order.
    pub fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<KeyValue>, MvccError> {
        let live = self.range(key, range_end, 0, 0)?.kvs;
        for kv in &live {
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: self.rev,
                ..KeyValue::default()
            };
            self.push(true, tombstone, Some(kv.clone()));
        }
        Ok(live)
    }

    fn push(&mut self, tombstone: bool, kv: KeyValue, prev: Option<KeyValue>) {
        let rev = Revision::new(self.rev, self.changes.len() as i64);
        self.latest.insert(kv.key.clone(), self.changes.len());
        self.changes.push(Change {
            rev,
            tombstone,
            kv,
            prev,
            bytes: 0,
        });
    }

    /// Adds the txn's revisions to `batch` and stages its changes for later txns. The caller
    /// writes the batch, then calls [`MvccStore::publish`] with the returned [`Pending`].
    pub fn finish(mut self, batch: &mut Batch) -> Pending {
        if self.changes.is_empty() {
            return Pending {
                rev: self.rev - 1,
                changes: Vec::new(),
                stored_bytes: 0,
            };
        }
        let engine = &self.store.engine;
        let mut stored_bytes = 0u64;
        for c in &mut self.changes {
            let value = if c.tombstone {
                // etcd stores a tombstone's value as the bare key.
                KeyValue {
                    key: c.kv.key.clone(),
                    ..KeyValue::default()
                }
                .encode_to_vec()
            } else {
                c.kv.encode_to_vec()
            };
            let key = c.rev.to_key_vec(c.tombstone);
            stored_bytes += (key.len() + value.len()) as u64;
            c.bytes = record_bytes(key.len() + value.len());
            batch.put(engine, Cf::Kv, &key, &value);
        }
        for (key, &i) in &self.latest {
            let c = &self.changes[i];
            self.writer
                .staged
                .entry(key.clone())
                .or_default()
                .push(StagedRev {
                    main: self.rev,
                    kv: (!c.tombstone).then(|| c.kv.clone()),
                });
        }
        self.writer.head_rev = self.rev;
        Pending {
            rev: self.rev,
            changes: std::mem::take(&mut self.changes),
            stored_bytes,
        }
    }
}
