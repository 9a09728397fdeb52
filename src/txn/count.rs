//! The MVCC operations etcd 3.4 counts for each request (`etcd_mvcc_{range,put,delete,txn}_total`).
//!
//! etcd counts per MVCC transaction: every range, put and delete call made in it, and the
//! transaction itself as a txn only when it made more than one call. Its requests make these:
//! - Range: one range.
//! - Put: a range first when it asks for `prev_kv` or ignores the value or the lease, then the
//!   put.
//! - DeleteRange: a range first with `prev_kv`, then the delete (counted whether or not
//!   anything matched).
//! - Txn: each compare is a range, stopping at the first false one, nested txns' compares on
//!   the taken branches included. A read-only txn runs its ops in that same transaction; a txn
//!   with writes ends it and runs its taken ops in a write transaction of their own.
//! - Compaction: one range (etcd reads the compacted store back for the response header).
//! - LeaseRevoke: a delete per attached key, in one transaction.

use super::check::is_txn_read_only;
use super::compare::walk_taken_ops;
use crate::metrics::MvccOps;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op::Request,
};

/// The calls of one MVCC transaction.
#[derive(Debug, Default, Clone, Copy)]
struct Calls {
    ranges: u64,
    puts: u64,
    deletes: u64,
}

impl Calls {
    fn add_op(&mut self, op: &RequestOp) {
        match &op.request {
            Some(Request::RequestRange(_)) => self.ranges += 1,
            Some(Request::RequestPut(p)) => {
                self.ranges += u64::from(put_reads(p));
                self.puts += 1;
            }
            Some(Request::RequestDeleteRange(d)) => {
                self.ranges += u64::from(d.prev_kv);
                self.deletes += 1;
            }
            // Nested txns are walked by the caller; an empty op makes no call.
            Some(Request::RequestTxn(_)) | None => {}
        }
    }

    /// The transaction's counts once it ends.
    fn end(self) -> MvccOps {
        MvccOps {
            ranges: self.ranges,
            puts: self.puts,
            deletes: self.deletes,
            txns: u64::from(self.ranges + self.puts + self.deletes > 1),
        }
    }
}

/// Whether a put reads the key before writing it.
fn put_reads(req: &PutRequest) -> bool {
    req.prev_kv || req.ignore_value || req.ignore_lease
}

/// A Range request.
pub fn range() -> MvccOps {
    Calls {
        ranges: 1,
        ..Calls::default()
    }
    .end()
}

/// An applied Put.
pub fn put(req: &PutRequest) -> MvccOps {
    Calls {
        ranges: u64::from(put_reads(req)),
        puts: 1,
        deletes: 0,
    }
    .end()
}

/// An applied DeleteRange.
pub fn delete_range(req: &DeleteRangeRequest) -> MvccOps {
    Calls {
        ranges: u64::from(req.prev_kv),
        puts: 0,
        deletes: 1,
    }
    .end()
}

/// An applied compaction.
pub fn compaction() -> MvccOps {
    range()
}

/// An applied lease revocation that deleted `keys` attached keys.
pub fn lease_revoke(keys: usize) -> MvccOps {
    Calls {
        deletes: keys as u64,
        ..Calls::default()
    }
    .end()
}

/// A txn that took `path` (see `compare::compare_to_path`) after evaluating `compares`
/// compares.
pub(super) fn txn(req: &TxnRequest, path: &[bool], compares: u64) -> MvccOps {
    let mut ops = Calls::default();
    walk_taken_ops(req, path, &mut |op| {
        ops.add_op(op);
        Ok(())
    })
    .expect("counting never fails");
    let reads = Calls {
        ranges: compares,
        ..Calls::default()
    };
    if is_txn_read_only(req) {
        Calls {
            ranges: compares + ops.ranges,
            ..ops
        }
        .end()
    } else {
        reads.end() + ops.end()
    }
}
