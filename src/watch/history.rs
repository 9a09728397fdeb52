//! The hub's read-only view of MVCC history: what catch-up and `prev_kv` lookups need, as a trait
//! so tests can feed the hub from memory.

use crate::mvcc::{MvccError, MvccStore};
use crate::proto::mvccpb::{Event, KeyValue};

/// Why a history read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The requested revision is below the compaction point.
    #[error("required revision {requested} has been compacted (compacted at {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// Anything else (a storage failure); the caller retries later.
    #[error("reading history: {0}")]
    Other(String),
}

/// Revision history as the watch hub reads it.
pub trait History: Send + Sync + 'static {
    /// The store's current revision.
    fn current_revision(&self) -> i64;

    /// The store's compaction point; history below it is gone.
    fn compact_revision(&self) -> i64;

    /// Events of revisions `from_rev..=to_rev`, without `prev_kv`, one entry per main revision in
    /// ascending order, at most `revs_max` entries.
    fn events_since(
        &self,
        from_rev: i64,
        to_rev: i64,
        revs_max: usize,
    ) -> Result<Vec<(i64, Vec<Event>)>, HistoryError>;

    /// The key as it was at revision `rev`, if it existed then.
    fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, HistoryError>;
}

impl From<MvccError> for HistoryError {
    fn from(e: MvccError) -> HistoryError {
        match e {
            MvccError::Compacted {
                requested,
                compacted,
            } => HistoryError::Compacted {
                requested,
                compacted,
            },
            other => HistoryError::Other(other.to_string()),
        }
    }
}

impl History for MvccStore {
    fn current_revision(&self) -> i64 {
        MvccStore::current_revision(self)
    }

    fn compact_revision(&self) -> i64 {
        MvccStore::compact_revision(self)
    }

    fn events_since(
        &self,
        from_rev: i64,
        to_rev: i64,
        revs_max: usize,
    ) -> Result<Vec<(i64, Vec<Event>)>, HistoryError> {
        Ok(MvccStore::events_since(self, from_rev, to_rev, revs_max)?)
    }

    fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, HistoryError> {
        Ok(MvccStore::get_at(self, key, rev)?)
    }
}
