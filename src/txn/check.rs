//! Static request validation (the API runs these before proposing) and the read-only /
//! serializable classification of txns.

use std::collections::BTreeSet;

use super::TxnError;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    range_request::{SortOrder, SortTarget},
    request_op::Request,
};

/// Range: a key is required and the sort options must be known enum values.
pub fn check_range(req: &RangeRequest) -> Result<(), TxnError> {
    if req.key.is_empty() {
        return Err(TxnError::KeyNotProvided);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(TxnError::InvalidSortOption {
            sort_order: req.sort_order,
            sort_target: req.sort_target,
        });
    }
    Ok(())
}

/// Put: a key is required; `ignore_value` forbids a value and `ignore_lease` a lease.
pub fn check_put(req: &PutRequest) -> Result<(), TxnError> {
    if req.key.is_empty() {
        return Err(TxnError::KeyNotProvided);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(TxnError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(TxnError::LeaseProvided {
            lease_id: req.lease,
        });
    }
    Ok(())
}

/// DeleteRange: a key is required.
pub fn check_delete_range(req: &DeleteRangeRequest) -> Result<(), TxnError> {
    if req.key.is_empty() {
        return Err(TxnError::KeyNotProvided);
    }
    Ok(())
}

/// Txn: at most `max_txn_ops` compares / ops per branch (nested txns get what the parent
/// leaves), keys everywhere, no empty ops, valid sub-requests, and no key written twice in a
/// branch (two puts, or a put inside a deleted range).
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), TxnError> {
    check_txn_ops(req, max_txn_ops)?;
    // After the size checks, so the overlap check cannot be made quadratic by a huge txn.
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_ops(req: &TxnRequest, max_txn_ops: usize) -> Result<(), TxnError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_txn_ops {
        return Err(TxnError::TooManyOps {
            ops,
            max: max_txn_ops,
        });
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(TxnError::KeyNotProvided);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_request_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), TxnError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(p)) => check_put(p),
        Some(Request::RequestDeleteRange(d)) => check_delete_range(d),
        Some(Request::RequestTxn(t)) => check_txn_ops(t, max_txn_ops),
        None => Err(TxnError::EmptyOp),
    }
}

/// A deleted interval as etcd's conflict check sees it: `[key, range_end)` compared
/// byte-wise, or the single key. Note that etcd does not special-case `range_end == "\0"`
/// here, so a delete of "everything from key" conflicts with nothing; we keep that.
#[derive(Debug, Clone)]
struct DeletedSpan {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl DeletedSpan {
    fn covers(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => self.start.as_slice() <= key && key < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: returns the keys put and the spans deleted by `ops` (recursively),
/// or `DuplicateKey`. The then/else branches of a nested txn may put the same key.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<DeletedSpan>), TxnError> {
    let mut dels: Vec<DeletedSpan> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(DeletedSpan {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[DeletedSpan], k: &[u8]| dels.iter().any(|d| d.covers(k));

    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(TxnError::DuplicateKey { key: k.clone() });
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(TxnError::DuplicateKey { key: k });
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(TxnError::DuplicateKey { key: p.key.clone() });
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// True when every top-level op is a Range (a nested txn counts as a write), as in etcd.
pub fn is_txn_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// True when the txn may write: the opposite of [`is_txn_read_only`].
pub fn has_writes(req: &TxnRequest) -> bool {
    !is_txn_read_only(req)
}

/// True when every top-level op is a serializable Range.
pub fn is_txn_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(&op.request, Some(Request::RequestRange(r)) if r.serializable))
}
