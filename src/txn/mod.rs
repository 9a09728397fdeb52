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
//! Txn on the apply thread), `tests`. Everything callers use is re-exported here, so paths
//! stay `crate::txn::*`.

mod check;
mod compare;
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

/// etcd's KV request errors, one variant per etcd error; `Display` is etcd's exact message,
/// which clients match on.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// [`read_txn`] was given a txn with writes (a caller bug: writes go through consensus).
    #[error("txn has write operations and cannot be served as a read")]
    NotReadOnly,
    /// The storage below failed; on the apply path this is fatal.
    #[error(transparent)]
    Storage(MvccError),
}

impl From<MvccError> for TxnError {
    fn from(e: MvccError) -> TxnError {
        match e {
            MvccError::Compacted { .. } => TxnError::Compacted,
            MvccError::FutureRev { .. } => TxnError::FutureRev,
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
