//! Read views: the consistent sources that range and compare execution read from (the live
//! store, the store pinned at one revision for a read-only txn, or a write txn).

use crate::mvcc::{MvccError, MvccStore, RangeResult, WriteTxn};

/// A consistent source of ranges: the live store, a revision-pinned store, or a write txn.
pub(super) trait ReadView {
    /// Range at `rev` (≤ 0 = this view's revision); `limit` 0 = no limit.
    fn range(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        limit: usize,
    ) -> Result<RangeResult, MvccError>;
    fn count(&self, key: &[u8], end: &[u8], rev: i64) -> Result<RangeResult, MvccError>;
    /// The view's current revision (etcd's `ReadView.Rev`).
    fn rev(&self) -> i64;
    /// The compaction revision (etcd's `ReadView.FirstRev`).
    fn first_rev(&self) -> i64;
}

impl ReadView for MvccStore {
    fn range(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        limit: usize,
    ) -> Result<RangeResult, MvccError> {
        MvccStore::range(self, key, end, rev, limit)
    }
    fn count(&self, key: &[u8], end: &[u8], rev: i64) -> Result<RangeResult, MvccError> {
        MvccStore::count(self, key, end, rev)
    }
    fn rev(&self) -> i64 {
        self.current_revision()
    }
    fn first_rev(&self) -> i64 {
        self.compact_revision()
    }
}

impl ReadView for WriteTxn<'_> {
    fn range(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        limit: usize,
    ) -> Result<RangeResult, MvccError> {
        WriteTxn::range(self, key, end, rev, limit)
    }
    fn count(&self, key: &[u8], end: &[u8], rev: i64) -> Result<RangeResult, MvccError> {
        WriteTxn::count(self, key, end, rev)
    }
    fn rev(&self) -> i64 {
        self.read_rev()
    }
    fn first_rev(&self) -> i64 {
        self.compact_revision()
    }
}

/// The store pinned at one revision, so that all reads of a read-only txn see the same state.
/// If a compaction overtakes the pinned revision mid-txn, `raced` is set and the txn is rerun.
pub(super) struct Pinned<'s> {
    store: &'s MvccStore,
    rev: i64,
    first_rev: i64,
    raced: std::cell::Cell<bool>,
}

impl<'s> Pinned<'s> {
    pub(super) fn new(store: &'s MvccStore) -> Pinned<'s> {
        // Compaction revision first: it never exceeds the current revision, which only grows,
        // so the pinned pair is ordered.
        let first_rev = store.compact_revision();
        Pinned {
            store,
            rev: store.current_revision(),
            first_rev,
            raced: std::cell::Cell::new(false),
        }
    }

    /// Whether a compaction overtook the pinned revision during a read (the txn must rerun).
    pub(super) fn raced(&self) -> bool {
        self.raced.get()
    }

    fn pin<T>(
        &self,
        rev: i64,
        read: impl FnOnce(i64) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        if rev > self.rev {
            return Err(MvccError::FutureRev {
                requested: rev,
                current: self.rev,
            });
        }
        let at = if rev <= 0 { self.rev } else { rev };
        let result = read(at);
        if rev <= 0 && matches!(result, Err(MvccError::Compacted { .. })) {
            self.raced.set(true);
        }
        result
    }
}

impl ReadView for Pinned<'_> {
    fn range(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        limit: usize,
    ) -> Result<RangeResult, MvccError> {
        let mut r = self.pin(rev, |at| self.store.range(key, end, at, limit))?;
        r.rev = self.rev;
        Ok(r)
    }
    fn count(&self, key: &[u8], end: &[u8], rev: i64) -> Result<RangeResult, MvccError> {
        let mut r = self.pin(rev, |at| self.store.count(key, end, at))?;
        r.rev = self.rev;
        Ok(r)
    }
    fn rev(&self) -> i64 {
        self.rev
    }
    fn first_rev(&self) -> i64 {
        self.first_rev
    }
}
