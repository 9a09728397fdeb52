//! Reads served from local state: Range (etcd's `executeRange`: filters, sort, limit) and
//! read-only txns, all of whose compares and ranges see one pinned revision.

use std::cmp::Ordering as CmpOrdering;

use super::check::is_txn_read_only;
use super::compare::{check_range_rev, compare_to_path, walk_taken_ops};
use super::view::{Pinned, ReadView};
use super::{TxnError, count, header};
use crate::metrics::MvccOps;
use crate::mvcc::{MvccError, MvccStore};
use crate::proto::etcdserverpb::{
    RangeRequest, RangeResponse, ResponseOp, TxnRequest, TxnResponse,
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use crate::proto::mvccpb::KeyValue;

/// Serves a Range from local state. The header carries only `revision` (the store's current
/// revision, also for historical reads); the API fills cluster, member and term.
pub fn range(store: &MvccStore, req: &RangeRequest) -> Result<RangeResponse, TxnError> {
    Ok(execute_range(store, req)?)
}

/// etcd's `executeRange`: fetch (without limit when sorting or filtering, else limit + 1),
/// filter by min/max mod/create revision, sort, cut to `limit` setting `more`, strip values.
pub(super) fn execute_range(
    view: &dyn ReadView,
    req: &RangeRequest,
) -> Result<RangeResponse, MvccError> {
    let fetch_limit = if req.sort_order != SortOrder::None as i32
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
    {
        0
    } else if req.limit > 0 {
        req.limit.saturating_add(1)
    } else {
        0
    };
    let rr = if req.count_only {
        view.count(&req.key, &req.range_end, req.revision)?
    } else {
        view.range(
            &req.key,
            &req.range_end,
            req.revision,
            usize::try_from(fetch_limit).unwrap_or(usize::MAX),
        )?
    };
    let mut kvs = rr.kvs;
    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });
    sort_kvs(&mut kvs, req);

    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs,
        more,
        count: rr.count as i64,
    })
}

/// Sorting as etcd does it: results arrive in ascending key order; a non-key target with no
/// order means ascending; ties keep key order (etcd's sort is unstable, so any order of ties
/// is etcd-compatible).
fn sort_kvs(kvs: &mut [KeyValue], req: &RangeRequest) {
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| -> CmpOrdering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(cmp),
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
    }
}

/// How often a read-only txn is rerun when a compaction overtakes its pinned revision.
const READ_TXN_ATTEMPTS: usize = 3;

/// Serves a read-only txn (see [`is_txn_read_only`]) from local state; all its compares and
/// ranges see one revision, which the response header carries.
/// Also returns the MVCC operations it made, as etcd counts them.
pub fn read_txn(store: &MvccStore, req: &TxnRequest) -> Result<(TxnResponse, MvccOps), TxnError> {
    if !is_txn_read_only(req) {
        return Err(TxnError::NotReadOnly);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let view = Pinned::new(store);
        let result = execute_read_txn(&view, req);
        if !view.raced() || attempt == READ_TXN_ATTEMPTS {
            return result;
        }
    }
}

fn execute_read_txn(
    view: &Pinned<'_>,
    req: &TxnRequest,
) -> Result<(TxnResponse, MvccOps), TxnError> {
    let (path, compares) = compare_to_path(view, req);
    walk_taken_ops(req, &path, &mut |op| check_range_rev(view, op))?;
    let ops = if path[0] { &req.success } else { &req.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                Some(Response::ResponseRange(execute_range(view, r)?))
            }
            _ => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok((
        TxnResponse {
            header: header(view.rev()),
            succeeded: path[0],
            responses,
        },
        count::txn(req, &path, compares),
    ))
}
