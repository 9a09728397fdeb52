//! etcd's KV request semantics (Range, Put, DeleteRange, Txn) over the MVCC store: request
//! validation, read execution for the API, and write execution for the apply thread.
//!
//! Follows etcd's `server/etcdserver/txn` and `api/v3rpc/key.go`:
//! - the `check_*` functions are the static checks the API runs before proposing;
//! - [`range`] and [`read_txn`] serve reads from local state (the caller decides between
//!   linearizable and serializable);
//! - `apply_*` execute writes inside a `WriteTxn`; they validate everything that can fail
//!   (leases, `ignore_*` on missing keys, revisions of nested ranges) before the first change,
//!   so an error leaves the txn as it was.
//!
//! Layout: `check` (static validation), `view` (what reads read from), `compare` (compare
//! evaluation and branch paths), `read` (Range and read-only txns), `write` (Put, DeleteRange,
//! Txn on the apply thread), `count` (the MVCC operations etcd counts for each request, used as
//! `txn::count::*`), `tests`. Everything else callers use is re-exported here, so paths stay
//! `crate::txn::*`.

mod check;
mod compare;
pub mod count;
mod read;
mod view;
mod write;

#[cfg(test)]
mod tests;

use crate::mvcc::MvccError;
use crate::proto::etcdserverpb::ResponseHeader;

pub use check::{
    check_delete_range, check_put, check_range, check_txn, has_writes, is_txn_read_only,
    is_txn_serializable,
};
pub use read::{range, read_txn};
pub use write::{apply_delete_range, apply_put, apply_txn};

/// Why a KV request was refused or failed, one variant per etcd error (plus ours), with the data
/// that explains it. Messages are plain; etcd's gRPC codes and `etcdserver: ...` strings are
/// assigned in `api::error`, the one place clients' wire contract lives.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("key is not provided")]
    KeyNotProvided,
    /// A put with `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A txn op with no request in it (etcd refuses it as key-not-found).
    #[error("txn op carries no request")]
    EmptyOp,
    #[error("value is provided with ignore_value")]
    ValueProvided,
    #[error("lease {lease_id} is provided with ignore_lease")]
    LeaseProvided { lease_id: i64 },
    /// `ops` is the largest of the compare, success and failure counts; `max` what the txn (or,
    /// for a nested txn, its parents) left.
    #[error("txn has {ops} operations, more than the {max} allowed")]
    TooManyOps { ops: usize, max: usize },
    #[error("key {} is written twice in one txn branch", .key.escape_ascii())]
    DuplicateKey { key: Vec<u8> },
    #[error("invalid sort option (order {sort_order}, target {sort_target})")]
    InvalidSortOption { sort_order: i32, sort_target: i32 },
    #[error("lease {lease_id} not found")]
    LeaseNotFound { lease_id: i64 },
    #[error("required revision {requested} has been compacted (compacted at {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("required revision {requested} is a future revision (current {current})")]
    FutureRev { requested: i64, current: i64 },
    /// `read_txn` was given a txn with writes (a caller bug: writes go through consensus).
    #[error("txn has write operations and cannot be served as a read")]
    NotReadOnly,
    /// The storage below failed; on the apply path this is fatal.
    #[error(transparent)]
    Storage(MvccError),
}

impl From<MvccError> for TxnError {
    fn from(e: MvccError) -> TxnError {
        match e {
            MvccError::Compacted {
                requested,
                compacted,
            } => TxnError::Compacted {
                requested,
                compacted,
            },
            MvccError::FutureRev { requested, current } => {
                TxnError::FutureRev { requested, current }
            }
            other => TxnError::Storage(other),
        }
    }
}

/// A response header carrying only `revision`; the API fills cluster, member and term.
fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}
