//! Writes executed by the apply thread inside a [`WriteTxn`]: Put, DeleteRange and Txn. Each
//! validates everything that can fail before its first change, so an error leaves the txn as it
//! was.

use super::check::is_txn_read_only;
use super::compare::{check_range_rev, compare_to_path, walk_taken_ops};
use super::read::execute_range;
use super::{TxnError, count, header};
use crate::metrics::MvccOps;
use crate::mvcc::WriteTxn;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse, request_op::Request, response_op::Response,
};

/// Applies a Put. A lease that does not exist fails `LeaseNotFound`; `ignore_value` /
/// `ignore_lease` on a missing key fail `KeyNotFound`; nothing changes on error.
pub fn apply_put(
    txn: &mut WriteTxn<'_>,
    req: &PutRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<PutResponse, TxnError> {
    if req.lease != 0 && !lease_exists(req.lease) {
        return Err(TxnError::LeaseNotFound {
            lease_id: req.lease,
        });
    }
    execute_put(txn, req)
}

/// etcd's `put`: reads the previous value when asked for or needed, then writes.
fn execute_put(txn: &mut WriteTxn<'_>, req: &PutRequest) -> Result<PutResponse, TxnError> {
    let prev = if req.ignore_value || req.ignore_lease || req.prev_kv {
        txn.get(&req.key)?
    } else {
        None
    };
    let (value, lease) = match (&prev, req.ignore_value, req.ignore_lease) {
        (None, true, _) | (None, _, true) => return Err(TxnError::KeyNotFound),
        (Some(p), iv, il) => (
            if iv {
                p.value.clone()
            } else {
                req.value.clone()
            },
            if il { p.lease } else { req.lease },
        ),
        (None, false, false) => (req.value.clone(), req.lease),
    };
    txn.put(&req.key, &value, lease)?;
    Ok(PutResponse {
        header: header(txn.rev()),
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

/// Applies a DeleteRange. (`lease_exists` is unused; it keeps the three `apply_*` alike.)
pub fn apply_delete_range(
    txn: &mut WriteTxn<'_>,
    req: &DeleteRangeRequest,
    _lease_exists: &dyn Fn(i64) -> bool,
) -> Result<DeleteRangeResponse, TxnError> {
    let deleted = txn.delete_range(&req.key, &req.range_end)?;
    // etcd: the txn's revision if anything changed so far, else the unchanged revision.
    let revision = txn.read_rev();
    Ok(DeleteRangeResponse {
        header: header(revision),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    })
}

/// Applies a Txn: evaluates every compare on the path first (nested ones too, all against the
/// state before the txn), validates the taken branches (puts' leases and `ignore_*`, ranges'
/// revisions), then executes. Sub-responses carry a header with only `revision` set, as etcd
/// sets it (a put's is the txn revision; a range's is the revision it read at); nested txn
/// responses carry an empty header; the top-level header revision is the txn's revision.
///
/// Also returns the MVCC operations it made, as etcd counts them.
pub fn apply_txn(
    txn: &mut WriteTxn<'_>,
    req: &TxnRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<(TxnResponse, MvccOps), TxnError> {
    let (path, compares) = compare_to_path(&*txn, req);
    if !is_txn_read_only(req) {
        walk_taken_ops(req, &path, &mut |op| {
            let Some(Request::RequestPut(p)) = &op.request else {
                return Ok(());
            };
            if (p.ignore_value || p.ignore_lease) && txn.get(&p.key)?.is_none() {
                return Err(TxnError::KeyNotFound);
            }
            if p.lease != 0 && !lease_exists(p.lease) {
                return Err(TxnError::LeaseNotFound { lease_id: p.lease });
            }
            Ok(())
        })?;
    }
    walk_taken_ops(req, &path, &mut |op| check_range_rev(&*txn, op))?;

    let savepoint = txn.savepoint();
    match execute_txn(txn, req, &path) {
        Ok((mut resp, _)) => {
            resp.header = header(txn.read_rev());
            Ok((resp, count::txn(req, &path, compares)))
        }
        Err(e) => {
            // Unreachable after the checks above unless storage failed; keep the txn atomic.
            txn.rollback_to(savepoint);
            Err(e)
        }
    }
}

/// Executes the branch `path[0]` selects; returns the response and the number of nested txns
/// consumed from `path`.
fn execute_txn(
    txn: &mut WriteTxn<'_>,
    req: &TxnRequest,
    path: &[bool],
) -> Result<(TxnResponse, usize), TxnError> {
    let ops = if path[0] { &req.success } else { &req.failure };
    let mut rest = &path[1..];
    let mut nested = 0;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                Some(Response::ResponseRange(execute_range(&*txn, r)?))
            }
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(execute_put(txn, p)?)),
            Some(Request::RequestDeleteRange(d)) => Some(Response::ResponseDeleteRange(
                apply_delete_range(txn, d, &|_| true)?,
            )),
            Some(Request::RequestTxn(t)) => {
                let (resp, n) = execute_txn(txn, t, rest)?;
                nested += n + 1;
                rest = &rest[n + 1..];
                Some(Response::ResponseTxn(resp))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok((
        TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: path[0],
            responses,
        },
        nested,
    ))
}
