//! etcd's KV request semantics (Range, Put, DeleteRange, Txn) over the MVCC store: request
//! validation, read execution for the API, and write execution for the apply thread.
//!
//! Follows etcd's `server/etcdserver/txn` and `api/v3rpc/key.go`:
//! - the `check_*` functions are the static checks the API runs before proposing;
//! - [`range`] and [`read_txn`] serve reads from local state (the caller decides between
//!   linearizable and serializable);
//! - `apply_*` execute writes inside a [`WriteTxn`]; they validate everything that can fail
//!   (leases, `ignore_*` on missing keys, revisions of nested ranges) before the first change,
//!   so an error leaves the txn as it was.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeSet;

use crate::mvcc::{MvccError, MvccStore, RangeResult, WriteTxn};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use crate::proto::mvccpb::KeyValue;

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

// ---------------------------------------------------------------------------------------------
// Static validation (the API runs these before proposing).

/// Range: a key is required and the sort options must be known enum values.
pub fn check_range(req: &RangeRequest) -> Result<(), TxnError> {
    if req.key.is_empty() {
        return Err(TxnError::KeyNotProvided);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(TxnError::InvalidSortOption);
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
        return Err(TxnError::LeaseProvided);
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
        return Err(TxnError::TooManyOps);
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
        None => Err(TxnError::KeyNotFound),
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
                return Err(TxnError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(TxnError::DuplicateKey);
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
            return Err(TxnError::DuplicateKey);
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

// ---------------------------------------------------------------------------------------------
// Read views: what range and compare execution read from.

/// A consistent source of ranges: the live store, a revision-pinned store, or a write txn.
trait ReadView {
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
struct Pinned<'s> {
    store: &'s MvccStore,
    rev: i64,
    first_rev: i64,
    raced: std::cell::Cell<bool>,
}

impl<'s> Pinned<'s> {
    fn new(store: &'s MvccStore) -> Pinned<'s> {
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

// ---------------------------------------------------------------------------------------------
// Range.

/// Serves a Range from local state. The header carries only `revision` (the store's current
/// revision, also for historical reads); the API fills cluster, member and term.
pub fn range(store: &MvccStore, req: &RangeRequest) -> Result<RangeResponse, TxnError> {
    Ok(execute_range(store, req)?)
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

/// etcd's `executeRange`: fetch (without limit when sorting or filtering, else limit + 1),
/// filter by min/max mod/create revision, sort, cut to `limit` setting `more`, strip values.
fn execute_range(view: &dyn ReadView, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
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

// ---------------------------------------------------------------------------------------------
// Compares.

fn compare_to_path(view: &dyn ReadView, req: &TxnRequest) -> Vec<bool> {
    let succeeded = req.compare.iter().all(|c| apply_compare(view, c));
    let mut path = vec![succeeded];
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            path.extend(compare_to_path(view, t));
        }
    }
    path
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
fn walk_taken_ops(
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
fn check_range_rev(view: &dyn ReadView, op: &RequestOp) -> Result<(), TxnError> {
    let Some(Request::RequestRange(r)) = &op.request else {
        return Ok(());
    };
    if r.revision == 0 {
        Ok(())
    } else if r.revision > view.rev() {
        Err(TxnError::FutureRev)
    } else if r.revision < view.first_rev() {
        Err(TxnError::Compacted)
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Read-only txns.

/// How often a read-only txn is rerun when a compaction overtakes its pinned revision.
const READ_TXN_ATTEMPTS: usize = 3;

/// Serves a read-only txn (see [`is_txn_read_only`]) from local state; all its compares and
/// ranges see one revision, which the response header carries.
pub fn read_txn(store: &MvccStore, req: &TxnRequest) -> Result<TxnResponse, TxnError> {
    if !is_txn_read_only(req) {
        return Err(TxnError::NotReadOnly);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let view = Pinned::new(store);
        let result = execute_read_txn(&view, req);
        if !view.raced.get() || attempt == READ_TXN_ATTEMPTS {
            return result;
        }
    }
}

fn execute_read_txn(view: &Pinned<'_>, req: &TxnRequest) -> Result<TxnResponse, TxnError> {
    let path = compare_to_path(view, req);
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
    Ok(TxnResponse {
        header: header(view.rev),
        succeeded: path[0],
        responses,
    })
}

// ---------------------------------------------------------------------------------------------
// Writes (apply thread).

/// Applies a Put. A lease that does not exist fails `LeaseNotFound`; `ignore_value` /
/// `ignore_lease` on a missing key fail `KeyNotFound`; nothing changes on error.
pub fn apply_put(
    txn: &mut WriteTxn<'_>,
    req: &PutRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<PutResponse, TxnError> {
    if req.lease != 0 && !lease_exists(req.lease) {
        return Err(TxnError::LeaseNotFound);
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
pub fn apply_txn(
    txn: &mut WriteTxn<'_>,
    req: &TxnRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<TxnResponse, TxnError> {
    let path = compare_to_path(&*txn, req);
    if !is_txn_read_only(req) {
        walk_taken_ops(req, &path, &mut |op| {
            let Some(Request::RequestPut(p)) = &op.request else {
                return Ok(());
            };
            if (p.ignore_value || p.ignore_lease) && txn.get(&p.key)?.is_none() {
                return Err(TxnError::KeyNotFound);
            }
            if p.lease != 0 && !lease_exists(p.lease) {
                return Err(TxnError::LeaseNotFound);
            }
            Ok(())
        })?;
    }
    walk_taken_ops(req, &path, &mut |op| check_range_rev(&*txn, op))?;

    let savepoint = txn.savepoint();
    match execute_txn(txn, req, &path) {
        Ok((mut resp, _)) => {
            resp.header = header(txn.read_rev());
            Ok(resp)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::TxnOutcome;
    use crate::storage::{Batch, Engine};

    fn open_store() -> (tempfile::TempDir, MvccStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(Engine::open(dir.path(), false).unwrap()).unwrap();
        (dir, store)
    }

    /// Runs `f` in one write txn; commits whatever it changed (also on error, which must be
    /// nothing) and returns its result with the published outcome.
    fn commit<T>(
        store: &MvccStore,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, TxnError>,
    ) -> (Result<T, TxnError>, TxnOutcome) {
        let mut txn = store.write_txn();
        let result = f(&mut txn);
        let mut batch = Batch::new();
        let pending = txn.finish(&mut batch);
        store.engine().write(batch, false).unwrap();
        (result, store.publish(pending))
    }

    fn no_leases(_: i64) -> bool {
        false
    }

    fn any_lease(_: i64) -> bool {
        true
    }

    fn put_req(k: &str, v: &str) -> PutRequest {
        PutRequest {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            ..PutRequest::default()
        }
    }

    fn put(store: &MvccStore, k: &str, v: &str, lease: i64) -> i64 {
        let req = PutRequest {
            lease,
            ..put_req(k, v)
        };
        let (r, out) = commit(store, |t| apply_put(t, &req, &any_lease));
        r.unwrap();
        out.rev
    }

    fn range_req(k: &str, end: &str) -> RangeRequest {
        RangeRequest {
            key: k.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            ..RangeRequest::default()
        }
    }

    fn op(request: Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    fn op_put(k: &str, v: &str) -> RequestOp {
        op(Request::RequestPut(put_req(k, v)))
    }

    fn op_range(k: &str, end: &str) -> RequestOp {
        op(Request::RequestRange(range_req(k, end)))
    }

    fn op_del(k: &str, end: &str) -> RequestOp {
        op(Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            prev_kv: false,
        }))
    }

    fn op_txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        op(Request::RequestTxn(TxnRequest {
            compare: Vec::new(),
            success,
            failure,
        }))
    }

    fn keys(kvs: &[KeyValue]) -> Vec<String> {
        kvs.iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    }

    #[derive(Clone, Copy, Debug)]
    enum Want {
        Version(i64),
        Create(i64),
        Mod(i64),
        Value(&'static str),
        Lease(i64),
    }

    fn compare(key: &str, end: &str, result: CompareResult, want: Want) -> Compare {
        let (target, union) = match want {
            Want::Version(v) => (CompareTarget::Version, TargetUnion::Version(v)),
            Want::Create(v) => (CompareTarget::Create, TargetUnion::CreateRevision(v)),
            Want::Mod(v) => (CompareTarget::Mod, TargetUnion::ModRevision(v)),
            Want::Value(v) => (
                CompareTarget::Value,
                TargetUnion::Value(v.as_bytes().to_vec()),
            ),
            Want::Lease(v) => (CompareTarget::Lease, TargetUnion::Lease(v)),
        };
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            target_union: Some(union),
        }
    }

    #[test]
    fn compares_per_target_result_and_presence() {
        let (_dir, store) = open_store();
        put(&store, "k", "v", 5); // rev 2
        put(&store, "k", "v", 5); // rev 3: create 2, mod 3, version 2, lease 5
        put(&store, "r1", "a", 0); // rev 4
        put(&store, "r2", "b", 0); // rev 5
        use CompareResult::{Equal as EQ, Greater as GT, Less as LT, NotEqual as NE};
        use Want::*;
        // (key, range_end, result, target value, expected)
        let table: &[(&str, &str, CompareResult, Want, bool)] = &[
            // Present key: each target against its actual value, below and above.
            ("k", "", EQ, Version(2), true),
            ("k", "", EQ, Version(3), false),
            ("k", "", NE, Version(2), false),
            ("k", "", NE, Version(1), true),
            ("k", "", GT, Version(1), true),
            ("k", "", GT, Version(2), false),
            ("k", "", LT, Version(3), true),
            ("k", "", LT, Version(2), false),
            ("k", "", EQ, Create(2), true),
            ("k", "", GT, Create(1), true),
            ("k", "", LT, Create(2), false),
            ("k", "", NE, Create(3), true),
            ("k", "", EQ, Mod(3), true),
            ("k", "", GT, Mod(3), false),
            ("k", "", LT, Mod(4), true),
            ("k", "", NE, Mod(3), false),
            ("k", "", EQ, Value("v"), true),
            ("k", "", EQ, Value("w"), false),
            ("k", "", GT, Value("u"), true),
            ("k", "", GT, Value("v"), false),
            ("k", "", LT, Value("w"), true),
            ("k", "", LT, Value("va"), true),
            ("k", "", NE, Value("v"), false),
            ("k", "", EQ, Lease(5), true),
            ("k", "", GT, Lease(4), true),
            ("k", "", LT, Lease(5), false),
            ("k", "", NE, Lease(0), true),
            // Absent key: VALUE is always false, the rest compare against zero.
            ("nokey", "", EQ, Value(""), false),
            ("nokey", "", NE, Value("x"), false),
            ("nokey", "", GT, Value(""), false),
            ("nokey", "", EQ, Version(0), true),
            ("nokey", "", GT, Version(0), false),
            ("nokey", "", EQ, Create(0), true),
            ("nokey", "", LT, Mod(1), true),
            ("nokey", "", EQ, Mod(0), true),
            ("nokey", "", EQ, Lease(0), true),
            ("nokey", "", NE, Lease(0), false),
            // Ranges: every key in range must satisfy the compare.
            ("r", "s", EQ, Version(1), true),
            ("r", "s", EQ, Value("a"), false),
            ("r", "s", GT, Value(""), true),
            ("r", "s", LT, Mod(5), false),
            ("r", "s", LT, Mod(6), true),
            ("r", "s", GT, Create(3), true),
            ("r2", "\0", EQ, Value("b"), true),
            ("\0", "\0", GT, Mod(1), true),
            ("\0", "\0", EQ, Lease(0), false),
            ("x", "y", EQ, Version(0), true),
            ("x", "y", EQ, Value(""), false),
        ];
        for &(key, end, result, want, expected) in table {
            let req = TxnRequest {
                compare: vec![compare(key, end, result, want)],
                success: vec![op_range("k", "")],
                failure: Vec::new(),
            };
            let resp = read_txn(&store, &req).unwrap();
            assert_eq!(
                resp.succeeded, expected,
                "{key:?}..{end:?} {result:?} {want:?}"
            );
            // The write path evaluates compares identically.
            let (r, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
            assert_eq!(
                r.unwrap().succeeded,
                expected,
                "apply: {key:?} {result:?} {want:?}"
            );
            assert!(out.events.is_empty());
        }
        // A conjunction: all must hold.
        let req = TxnRequest {
            compare: vec![
                compare("k", "", EQ, Version(2)),
                compare("nokey", "", EQ, Value("")),
            ],
            ..TxnRequest::default()
        };
        assert!(!read_txn(&store, &req).unwrap().succeeded);
    }

    #[test]
    fn static_validation() {
        let ops = |prefix: &str, n: usize| {
            (0..n)
                .map(|i| op_put(&format!("{prefix}{i}"), "v"))
                .collect::<Vec<_>>()
        };
        let cmps = |n: usize| {
            (0..n)
                .map(|_| compare("k", "", CompareResult::Equal, Want::Version(0)))
                .collect::<Vec<_>>()
        };
        let txn =
            |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
                compare,
                success,
                failure,
            };
        let ok = |r: Result<(), TxnError>| r.is_ok();
        let err = |r: Result<(), TxnError>| r.err().map(|e| e.to_string()).unwrap_or_default();

        assert!(ok(check_txn(
            &txn(cmps(128), ops("k", 128), ops("k", 128)),
            128
        )));
        assert_eq!(
            err(check_txn(&txn(cmps(129), vec![], vec![]), 128)),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            err(check_txn(&txn(vec![], vec![], ops("k", 129)), 128)),
            "etcdserver: too many operations in txn request"
        );
        // A nested txn gets the budget its parent leaves: 128 - 100.
        let mut outer = ops("k", 99);
        outer.push(op_txn(ops("n", 28), vec![]));
        assert!(ok(check_txn(&txn(vec![], outer.clone(), vec![]), 128)));
        outer.pop();
        outer.push(op_txn(ops("n", 29), vec![]));
        assert_eq!(
            err(check_txn(&txn(vec![], outer, vec![]), 128)),
            "etcdserver: too many operations in txn request"
        );

        let mut c = compare("", "", CompareResult::Equal, Want::Version(0));
        assert_eq!(
            err(check_txn(&txn(vec![c.clone()], vec![], vec![]), 128)),
            "etcdserver: key is not provided"
        );
        c.key = b"k".to_vec();
        assert!(ok(check_txn(&txn(vec![c], vec![], vec![]), 128)));
        assert_eq!(
            err(check_txn(
                &txn(vec![], vec![RequestOp { request: None }], vec![]),
                128
            )),
            "etcdserver: key not found"
        );
        assert_eq!(
            err(check_txn(&txn(vec![], vec![], vec![op_put("", "v")]), 128)),
            "etcdserver: key is not provided"
        );
        assert_eq!(
            err(check_txn(&txn(vec![], vec![op_del("", "")], vec![]), 128)),
            "etcdserver: key is not provided"
        );
        let mut bad_sort = range_req("a", "");
        bad_sort.sort_order = 3;
        assert_eq!(
            err(check_range(&bad_sort)),
            "etcdserver: invalid sort option"
        );
        bad_sort.sort_order = 2;
        bad_sort.sort_target = 5;
        assert_eq!(
            err(check_range(&bad_sort)),
            "etcdserver: invalid sort option"
        );
        bad_sort.sort_target = 4;
        assert!(ok(check_range(&bad_sort)));
        assert_eq!(
            err(check_txn(
                &txn(
                    vec![],
                    vec![op(Request::RequestRange(RangeRequest {
                        sort_target: 9,
                        ..range_req("a", "")
                    }))],
                    vec![]
                ),
                128
            )),
            "etcdserver: invalid sort option"
        );
        assert_eq!(
            err(check_range(&range_req("", ""))),
            "etcdserver: key is not provided"
        );
        let p = PutRequest {
            ignore_value: true,
            ..put_req("k", "v")
        };
        assert_eq!(err(check_put(&p)), "etcdserver: value is provided");
        let p = PutRequest {
            ignore_lease: true,
            lease: 3,
            ..put_req("k", "")
        };
        assert_eq!(err(check_put(&p)), "etcdserver: lease is provided");
        let p = PutRequest {
            ignore_lease: true,
            ignore_value: true,
            ..put_req("k", "")
        };
        assert!(ok(check_put(&p)));
    }

    #[test]
    fn duplicate_keys_in_a_branch() {
        let dup = "etcdserver: duplicate key given in txn request";
        // (success ops, expected error)
        let table: Vec<(Vec<RequestOp>, Option<&str>)> = vec![
            (vec![op_put("a", "1"), op_put("a", "2")], Some(dup)),
            (vec![op_put("a", "1"), op_put("b", "2")], None),
            (vec![op_del("a", "c"), op_put("b", "1")], Some(dup)),
            (vec![op_put("c", "1"), op_del("a", "c")], None),
            (vec![op_del("a", ""), op_put("a", "1")], Some(dup)),
            (vec![op_del("a", ""), op_put("ab", "1")], None),
            // etcd compares "\0" as a plain range end here, so from-key deletes never conflict.
            (vec![op_del("a", "\0"), op_put("b", "1")], None),
            (vec![op_del("a", "c"), op_del("b", "d")], None),
            (vec![op_range("a", ""), op_put("a", "1")], None),
            (
                vec![op_txn(vec![op_put("a", "1")], vec![op_put("a", "2")])],
                None,
            ),
            (
                vec![op_put("a", "1"), op_txn(vec![op_put("a", "2")], vec![])],
                Some(dup),
            ),
            (
                vec![op_put("a", "1"), op_txn(vec![], vec![op_put("a", "2")])],
                Some(dup),
            ),
            (
                vec![
                    op_txn(vec![op_put("a", "1")], vec![]),
                    op_txn(vec![], vec![op_put("a", "2")]),
                ],
                Some(dup),
            ),
            (
                vec![
                    op_txn(vec![op_put("a", "1")], vec![]),
                    op_txn(vec![op_put("a", "2")], vec![]),
                ],
                Some(dup),
            ),
            (
                vec![op_del("a", "c"), op_txn(vec![op_put("b", "1")], vec![])],
                Some(dup),
            ),
            (
                vec![op_txn(vec![op_del("a", "c")], vec![]), op_put("b", "1")],
                Some(dup),
            ),
            (
                vec![
                    op_txn(vec![op_txn(vec![op_put("a", "1")], vec![])], vec![]),
                    op_put("a", "2"),
                ],
                Some(dup),
            ),
        ];
        for (i, (ops, want)) in table.into_iter().enumerate() {
            for in_failure in [false, true] {
                let req = if in_failure {
                    TxnRequest {
                        failure: ops.clone(),
                        ..TxnRequest::default()
                    }
                } else {
                    TxnRequest {
                        success: ops.clone(),
                        ..TxnRequest::default()
                    }
                };
                let got = check_txn(&req, 128).err().map(|e| e.to_string());
                assert_eq!(
                    got.as_deref(),
                    want,
                    "case {i} (failure branch: {in_failure})"
                );
            }
        }
    }

    /// a: create 2 mod 2 ver 1 "z"; b: create 3 mod 7 ver 3 "x3"; c: create 4 mod 6 ver 2 "y2".
    fn populate_sorting(store: &MvccStore) {
        for (k, v) in [
            ("a", "z"),
            ("b", "x"),
            ("c", "y"),
            ("b", "x2"),
            ("c", "y2"),
            ("b", "x3"),
        ] {
            put(store, k, v, 0);
        }
        assert_eq!(store.current_revision(), 7);
    }

    #[test]
    fn range_sort_filter_limit_more_count() {
        let (_dir, store) = open_store();
        populate_sorting(&store);
        let all = range_req("\0", "\0");
        let with = |f: &dyn Fn(&mut RangeRequest)| {
            let mut r = all.clone();
            f(&mut r);
            r
        };
        use SortOrder::{Ascend, Descend};
        use SortTarget::{Create, Key, Mod, Value, Version};
        // (request, keys, more, count)
        let table: Vec<(RangeRequest, &[&str], bool, i64)> = vec![
            (all.clone(), &["a", "b", "c"], false, 3),
            (with(&|r| r.limit = 2), &["a", "b"], true, 3),
            (with(&|r| r.limit = 3), &["a", "b", "c"], false, 3),
            (with(&|r| r.limit = -1), &["a", "b", "c"], false, 3),
            (
                with(&|r| r.sort_target = Version as i32),
                &["a", "c", "b"],
                false,
                3,
            ),
            (
                with(&|r| {
                    r.sort_target = Version as i32;
                    r.sort_order = Descend as i32
                }),
                &["b", "c", "a"],
                false,
                3,
            ),
            (
                with(&|r| r.sort_order = Descend as i32),
                &["c", "b", "a"],
                false,
                3,
            ),
            (
                with(&|r| {
                    r.sort_order = Descend as i32;
                    r.limit = 1
                }),
                &["c"],
                true,
                3,
            ),
            (
                with(&|r| {
                    r.sort_order = Ascend as i32;
                    r.sort_target = Key as i32
                }),
                &["a", "b", "c"],
                false,
                3,
            ),
            (
                with(&|r| {
                    r.sort_order = Ascend as i32;
                    r.sort_target = Mod as i32
                }),
                &["a", "c", "b"],
                false,
                3,
            ),
            (
                with(&|r| {
                    r.sort_order = Descend as i32;
                    r.sort_target = Create as i32
                }),
                &["c", "b", "a"],
                false,
                3,
            ),
            (
                with(&|r| {
                    r.sort_order = Ascend as i32;
                    r.sort_target = Value as i32
                }),
                &["b", "c", "a"],
                false,
                3,
            ),
            (
                with(&|r| {
                    r.sort_target = Version as i32;
                    r.limit = 2
                }),
                &["a", "c"],
                true,
                3,
            ),
            (with(&|r| r.min_mod_revision = 6), &["b", "c"], false, 3),
            (with(&|r| r.max_mod_revision = 6), &["a", "c"], false, 3),
            (with(&|r| r.min_create_revision = 3), &["b", "c"], false, 3),
            (with(&|r| r.max_create_revision = 3), &["a", "b"], false, 3),
            (
                with(&|r| {
                    r.max_mod_revision = 6;
                    r.limit = 1
                }),
                &["a"],
                true,
                3,
            ),
            (
                with(&|r| {
                    r.min_mod_revision = 6;
                    r.sort_order = Descend as i32;
                    r.sort_target = Mod as i32
                }),
                &["b", "c"],
                false,
                3,
            ),
            (with(&|r| r.count_only = true), &[], false, 3),
            (
                with(&|r| {
                    r.count_only = true;
                    r.limit = 1
                }),
                &[],
                false,
                3,
            ),
            (with(&|r| r.revision = 4), &["a", "b", "c"], false, 3),
            (with(&|r| r.revision = 3), &["a", "b"], false, 2),
            (range_req("b", ""), &["b"], false, 1),
            (range_req("a", "c"), &["a", "b"], false, 2),
        ];
        for (i, (req, want, more, count)) in table.into_iter().enumerate() {
            let resp = range(&store, &req).unwrap();
            assert_eq!(keys(&resp.kvs), want, "case {i}: keys");
            assert_eq!(
                (resp.more, resp.count),
                (more, count),
                "case {i}: more, count"
            );
            assert_eq!(
                resp.header.unwrap().revision,
                7,
                "case {i}: header revision"
            );
        }
        let resp = range(&store, &with(&|r| r.keys_only = true)).unwrap();
        assert!(
            resp.kvs
                .iter()
                .all(|kv| kv.value.is_empty() && kv.mod_revision > 0)
        );
        let old = range(&store, &with(&|r| r.revision = 4)).unwrap();
        let values: Vec<_> = old
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
            .collect();
        assert_eq!(values, ["z", "x", "y"]);
        assert_eq!(
            range(&store, &with(&|r| r.revision = 8))
                .unwrap_err()
                .to_string(),
            "etcdserver: mvcc: required revision is a future revision"
        );
    }

    #[test]
    fn txn_compare_and_swap_with_sub_response_headers() {
        let (_dir, store) = open_store();
        assert_eq!(put(&store, "k", "v", 0), 2);
        let req = TxnRequest {
            compare: vec![compare("k", "", CompareResult::Equal, Want::Mod(2))],
            success: vec![
                op_range("k", ""),
                op(Request::RequestPut(PutRequest {
                    prev_kv: true,
                    ..put_req("k", "v2")
                })),
                op_range("k", ""),
                op_del("nothing", ""),
            ],
            failure: vec![op_range("k", "")],
        };
        let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
        let resp = resp.unwrap();
        assert!(resp.succeeded);
        assert_eq!(out.rev, 3);
        assert_eq!(resp.header.unwrap().revision, 3);
        let revs: Vec<i64> = resp
            .responses
            .iter()
            .map(|r| match r.response.as_ref().unwrap() {
                Response::ResponseRange(x) => x.header.unwrap().revision,
                Response::ResponsePut(x) => x.header.unwrap().revision,
                Response::ResponseDeleteRange(x) => x.header.unwrap().revision,
                Response::ResponseTxn(x) => x.header.unwrap().revision,
            })
            .collect();
        // etcd: a range before the first change reads (and reports) the previous revision.
        assert_eq!(revs, [2, 3, 3, 3]);
        match (&resp.responses[1].response, &resp.responses[2].response) {
            (Some(Response::ResponsePut(p)), Some(Response::ResponseRange(r))) => {
                assert_eq!(p.prev_kv.as_ref().unwrap().value, b"v");
                assert_eq!(r.kvs[0].value, b"v2");
                assert_eq!(r.kvs[0].version, 2);
            }
            other => panic!("unexpected responses {other:?}"),
        }
        // The same txn now fails its compare and only reads.
        let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
        let resp = resp.unwrap();
        assert!(!resp.succeeded);
        assert_eq!((out.rev, resp.header.unwrap().revision), (3, 3));
        assert!(out.events.is_empty());
    }

    #[test]
    fn failing_txns_change_nothing() {
        let (_dir, store) = open_store();
        put(&store, "k", "v", 0);
        let lease_is_7 = |l: i64| l == 7;
        let with_lease = |k: &str, lease| {
            op(Request::RequestPut(PutRequest {
                lease,
                ..put_req(k, "x")
            }))
        };
        // (txn, error)
        let table: Vec<(TxnRequest, &str)> = vec![
            (
                TxnRequest {
                    success: vec![op_put("a", "1"), with_lease("b", 99)],
                    ..TxnRequest::default()
                },
                "etcdserver: requested lease not found",
            ),
            (
                TxnRequest {
                    success: vec![op_put("a", "1"), op_txn(vec![with_lease("b", 99)], vec![])],
                    ..TxnRequest::default()
                },
                "etcdserver: requested lease not found",
            ),
            (
                TxnRequest {
                    success: vec![
                        op_del("k", ""),
                        op(Request::RequestPut(PutRequest {
                            ignore_value: true,
                            ..put_req("missing", "")
                        })),
                    ],
                    ..TxnRequest::default()
                },
                "etcdserver: key not found",
            ),
            (
                TxnRequest {
                    success: vec![
                        op_put("a", "1"),
                        op(Request::RequestRange(RangeRequest {
                            revision: 3,
                            ..range_req("k", "")
                        })),
                    ],
                    ..TxnRequest::default()
                },
                "etcdserver: mvcc: required revision is a future revision",
            ),
        ];
        for (i, (req, want)) in table.into_iter().enumerate() {
            let (r, out) = commit(&store, |t| {
                let r = apply_txn(t, &req, &lease_is_7);
                assert!(!t.has_changes(), "case {i}: partial changes");
                r
            });
            assert_eq!(r.unwrap_err().to_string(), want, "case {i}");
            assert!(out.events.is_empty());
            assert_eq!(store.current_revision(), 2);
        }
        // The lease check only covers the branch taken.
        let req = TxnRequest {
            compare: vec![compare("k", "", CompareResult::Equal, Want::Value("nope"))],
            success: vec![with_lease("b", 99)],
            failure: vec![with_lease("b", 7)],
        };
        let (r, out) = commit(&store, |t| apply_txn(t, &req, &lease_is_7));
        assert!(!r.unwrap().succeeded);
        assert_eq!(out.events[0].kv.as_ref().unwrap().lease, 7);
    }

    #[test]
    fn nested_txns_evaluate_compares_before_writing() {
        let (_dir, store) = open_store();
        let req = TxnRequest {
            compare: vec![],
            success: vec![
                op_put("x", "1"),
                op(Request::RequestTxn(TxnRequest {
                    // Evaluated before the outer put: x does not exist yet.
                    compare: vec![compare("x", "", CompareResult::Equal, Want::Value("1"))],
                    success: vec![op_put("then", "1")],
                    failure: vec![op_put("else", "1"), op_range("x", "")],
                })),
                op_txn(vec![op_put("second", "1")], vec![]),
            ],
            failure: vec![],
        };
        let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
        let resp = resp.unwrap();
        assert_eq!(out.rev, 2);
        let written: Vec<_> = out
            .events
            .iter()
            .map(|e| String::from_utf8(e.kv.clone().unwrap().key).unwrap())
            .collect();
        assert_eq!(written, ["x", "else", "second"]);
        let Some(Response::ResponseTxn(nested)) = &resp.responses[1].response else {
            panic!("nested txn response expected");
        };
        assert!(!nested.succeeded);
        assert_eq!(
            nested.header.unwrap().revision,
            0,
            "nested txn headers are empty, as in etcd"
        );
        let Some(Response::ResponseRange(r)) = &nested.responses[1].response else {
            panic!("range response expected");
        };
        assert_eq!(
            keys(&r.kvs),
            ["x"],
            "ops see earlier writes of the same txn"
        );
        let Some(Response::ResponseTxn(second)) = &resp.responses[2].response else {
            panic!("nested txn response expected");
        };
        assert!(second.succeeded);
        assert_eq!(resp.header.unwrap().revision, 2);
    }

    #[test]
    fn put_options_and_delete_range() {
        let (_dir, store) = open_store();
        let leases = |l: i64| l == 5;
        let (r, _) = commit(&store, |t| {
            apply_put(
                t,
                &PutRequest {
                    lease: 5,
                    ..put_req("k", "v")
                },
                &leases,
            )
        });
        assert_eq!(r.unwrap().header.unwrap().revision, 2);
        // ignore_value keeps the value, ignore_lease the lease.
        let req = PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put_req("k", "")
        };
        let (r, out) = commit(&store, |t| apply_put(t, &req, &leases));
        assert_eq!(r.unwrap().prev_kv.unwrap().value, b"v");
        let kv = out.events[0].kv.clone().unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.lease, kv.version),
            (&b"v"[..], 0, 2)
        );
        let (r, out) = commit(&store, |t| {
            apply_put(
                t,
                &PutRequest {
                    lease: 5,
                    ..put_req("k", "v")
                },
                &leases,
            )
        });
        r.unwrap();
        assert_eq!(out.rev, 4);
        let req = PutRequest {
            ignore_lease: true,
            ..put_req("k", "w")
        };
        let (r, out) = commit(&store, |t| apply_put(t, &req, &leases));
        assert!(r.unwrap().prev_kv.is_none(), "prev_kv only when asked");
        let kv = out.events[0].kv.clone().unwrap();
        assert_eq!((kv.value.as_slice(), kv.lease), (&b"w"[..], 5));
        // Errors: lease first, then the missing key.
        let req = PutRequest {
            ignore_value: true,
            lease: 9,
            ..put_req("missing", "")
        };
        let (r, out) = commit(&store, |t| apply_put(t, &req, &leases));
        assert_eq!(
            r.unwrap_err().to_string(),
            "etcdserver: requested lease not found"
        );
        assert!(out.events.is_empty());
        let req = PutRequest {
            ignore_value: true,
            ..put_req("missing", "")
        };
        let (r, _) = commit(&store, |t| apply_put(t, &req, &leases));
        assert_eq!(r.unwrap_err().to_string(), "etcdserver: key not found");

        put(&store, "k2", "x", 0); // rev 6
        let del = |k: &str, end: &str, prev_kv: bool| DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            prev_kv,
        };
        let (r, out) = commit(&store, |t| {
            apply_delete_range(t, &del("zz", "", true), &no_leases)
        });
        let r = r.unwrap();
        assert_eq!((r.deleted, r.header.unwrap().revision, out.rev), (0, 6, 6));
        let (r, out) = commit(&store, |t| {
            apply_delete_range(t, &del("k", "\0", true), &no_leases)
        });
        let r = r.unwrap();
        assert_eq!((r.deleted, r.header.unwrap().revision, out.rev), (2, 7, 7));
        assert_eq!(keys(&r.prev_kvs), ["k", "k2"]);
        assert!(
            out.events
                .iter()
                .all(|e| e.r#type == crate::proto::mvccpb::event::EventType::Delete as i32)
        );
        assert_eq!(
            out.events[0].prev_kv.as_ref().unwrap().lease,
            5,
            "events keep prev_kv for lease detach"
        );
        let (r, _) = commit(&store, |t| {
            apply_delete_range(t, &del("k", "\0", false), &no_leases)
        });
        assert!(r.unwrap().prev_kvs.is_empty());
    }

    #[test]
    fn ranges_inside_a_write_txn_see_its_writes() {
        let (_dir, store) = open_store();
        put(&store, "a", "1", 0);
        let count_all = RangeRequest {
            count_only: true,
            ..range_req("\0", "\0")
        };
        let req = TxnRequest {
            success: vec![
                op(Request::RequestRange(count_all.clone())),
                op_put("b", "1"),
                op_del("a", ""),
                op_put("c", "1"),
                op(Request::RequestRange(count_all)),
                op(Request::RequestRange(RangeRequest {
                    limit: 1,
                    ..range_req("\0", "\0")
                })),
            ],
            ..TxnRequest::default()
        };
        let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
        let resp = resp.unwrap();
        let ranges: Vec<(Vec<String>, i64, bool, i64)> = resp
            .responses
            .iter()
            .filter_map(|r| match &r.response {
                Some(Response::ResponseRange(x)) => {
                    Some((keys(&x.kvs), x.count, x.more, x.header.unwrap().revision))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                (vec![], 1, false, 2),
                (vec![], 2, false, 3),
                (vec!["b".to_owned()], 2, true, 3),
            ]
        );
        assert_eq!(out.rev, 3);
    }

    #[test]
    fn read_only_txns() {
        let (_dir, store) = open_store();
        put(&store, "a", "1", 0);
        put(&store, "a", "2", 0);
        let req = TxnRequest {
            compare: vec![compare("a", "", CompareResult::Equal, Want::Version(2))],
            success: vec![
                op_range("a", ""),
                op(Request::RequestRange(RangeRequest {
                    revision: 2,
                    ..range_req("a", "")
                })),
            ],
            failure: vec![],
        };
        assert!(is_txn_read_only(&req));
        assert!(!is_txn_serializable(&req));
        let resp = read_txn(&store, &req).unwrap();
        assert!(resp.succeeded);
        assert_eq!(resp.header.unwrap().revision, 3);
        let values: Vec<_> = resp
            .responses
            .iter()
            .map(|r| match &r.response {
                Some(Response::ResponseRange(x)) => {
                    (x.kvs[0].value.clone(), x.header.unwrap().revision)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(values, [(b"2".to_vec(), 3), (b"1".to_vec(), 3)]);

        let mut batch = Batch::new();
        let job = store.compact(3, &mut batch).unwrap();
        store.engine().write(batch, false).unwrap();
        store.publish_compaction(&job);
        job.run(store.engine()).unwrap();
        assert_eq!(
            read_txn(&store, &req).unwrap_err().to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );

        let writes = TxnRequest {
            success: vec![op_put("a", "3")],
            ..TxnRequest::default()
        };
        assert!(!is_txn_read_only(&writes));
        assert!(matches!(
            read_txn(&store, &writes),
            Err(TxnError::NotReadOnly)
        ));
        let nested = TxnRequest {
            success: vec![op_txn(vec![op_range("a", "")], vec![])],
            ..TxnRequest::default()
        };
        assert!(
            !is_txn_read_only(&nested),
            "a nested txn makes a txn a write, as in etcd"
        );
    }
}
