//! Compare evaluation and the branch path it selects through nested txns, shared by read-only
//! txns (served by the API) and write txns (executed by apply).

use std::cmp::Ordering as CmpOrdering;

use super::TxnError;
use super::view::ReadView;
use crate::proto::etcdserverpb::{
    Compare, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
};
use crate::proto::mvccpb::KeyValue;

/// Evaluates the compares of `req` and, depth first, of every nested txn on the branches they
/// select, all against `view`; returns those results in that order (the "path" that
/// [`walk_taken_ops`] and txn execution follow), and how many compares were evaluated (those of
/// a list stop at its first false one, as in etcd).
pub(super) fn compare_to_path(view: &dyn ReadView, req: &TxnRequest) -> (Vec<bool>, u64) {
    let mut compares = 0;
    let succeeded = req.compare.iter().all(|c| {
        compares += 1;
        apply_compare(view, c)
    });
    let mut path = vec![succeeded];
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let (nested, nested_compares) = compare_to_path(view, t);
            path.extend(nested);
            compares += nested_compares;
        }
    }
    (path, compares)
}

/// etcd's `applyCompare`: every key in the compared range must satisfy the compare; with no key
/// a VALUE compare is false and the others compare against a zero key-value.
fn apply_compare(view: &dyn ReadView, c: &Compare) -> bool {
    let Ok(rr) = view.range(&c.key, &c.range_end, 0, 0) else {
        return false;
    };
    if rr.kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int =
        |pick: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(pick).unwrap_or(0);
    let result = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int(|t| match t {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int(|t| match t {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int(|t| match t {
            TargetUnion::Lease(l) => Some(*l),
            _ => None,
        })),
        Err(_) => CmpOrdering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => result == CmpOrdering::Equal,
        Ok(CompareResult::NotEqual) => result != CmpOrdering::Equal,
        Ok(CompareResult::Greater) => result == CmpOrdering::Greater,
        Ok(CompareResult::Less) => result == CmpOrdering::Less,
        Err(_) => true,
    }
}

/// Calls `f` on every non-txn op of the branches `path` selects, depth first; returns how many
/// nested txns were walked (etcd's `checkRequests`).
pub(super) fn walk_taken_ops(
    req: &TxnRequest,
    path: &[bool],
    f: &mut dyn FnMut(&RequestOp) -> Result<(), TxnError>,
) -> Result<usize, TxnError> {
    let ops = if path[0] { &req.success } else { &req.failure };
    let mut rest = &path[1..];
    let mut nested = 0;
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let n = walk_taken_ops(t, rest, f)?;
            nested += n + 1;
            rest = &rest[n + 1..];
            continue;
        }
        f(op)?;
    }
    Ok(nested)
}

/// etcd's `checkRange` for ranges inside a txn, against the txn's read view.
pub(super) fn check_range_rev(view: &dyn ReadView, op: &RequestOp) -> Result<(), TxnError> {
    let Some(Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    if r.revision == 0 {
        Ok(())
    } else if r.revision > view.rev() {
        Err(TxnError::FutureRev {
            requested: r.revision,
            current: view.rev(),
        })
    } else if r.revision < view.first_rev() {
        Err(TxnError::Compacted {
            requested: r.revision,
            compacted: view.first_rev(),
        })
    } else {
        Ok(())
    }
}
