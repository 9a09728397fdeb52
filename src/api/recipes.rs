//! What the Lock and Election services share, after etcd's client concurrency recipes (which
//! etcd's own servers for these services run against the local member): a key per lease under
//! a prefix, put if absent by a client txn through raft, and waiting until no key under the
//! prefix was created before it.
//!
//! Everything here acts as the caller: reads are checked against its permissions and writes
//! carry it to the apply thread, as the KV service does. Waiting reads the prefix, then watches
//! the newest older key through the watch hub until it is deleted, and reads again; a watch that
//! lost its history to a compaction reads again too. A wait that is dropped (the client went
//! away) withdraws the candidate key through a [`Withdrawal`], as etcd does when a waiting
//! call's context ends.

use tokio::sync::mpsc;

use super::{EtcdError, ServerCtx, blocking};
use crate::auth::requests;
use crate::node::Origin;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::proto::oxetcdpb::Caller;
use crate::txn;
use crate::watch::{HubEvent, HubWatcherId, WatchSpec};

/// The status a client gets for `error`: etcd runs these services as a client of its own
/// member, and the errors of its client calls are not gRPC statuses, so every one of them
/// reaches the caller with code Unknown and its message.
pub fn status(error: EtcdError) -> tonic::Status {
    tonic::Status::new(tonic::Code::Unknown, error.to_string())
}

/// TTL of the lease granted for a call that names none (etcd's default session TTL).
pub const SESSION_TTL_SECS: i64 = 60;

/// Messages queued from the hub for one waiter; when full, the hub moves the watcher to
/// catch-up and it is fed from history later.
const WAIT_SINK_CAPACITY: usize = 16;

/// The key a lease holds under `name`: `<name>/<lease in hex>`, as etcd spells it.
pub fn lease_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix_of(name);
    // Go's %x of a signed number: a minus sign and the magnitude.
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key
}

/// Every key of the election or lock `name` starts with this.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// The range end covering every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: to the end of the keyspace.
    vec![0]
}

/// `create_revision(key) == revision`.
pub fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

pub fn put_op(key: &[u8], value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..PutRequest::default()
        })),
    }
}

pub fn get_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })),
    }
}

pub fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        })),
    }
}

/// The key under `prefix` created first (`first`) or last, among those created at or before
/// `max_create_revision` (0: any).
fn by_creation(prefix: &[u8], first: bool, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first {
            SortOrder::Ascend
        } else {
            SortOrder::Descend
        } as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..RangeRequest::default()
    }
}

/// A range op reading the key created first under `prefix` (etcd's `WithFirstCreate`).
pub fn first_created_op(prefix: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(by_creation(prefix, true, 0))),
    }
}

/// The key-values of the range answering the `index`th op of a txn.
pub fn range_kvs(resp: &TxnResponse, index: usize) -> &[KeyValue] {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

/// A hub watcher on a key or range, removed from the hub when dropped.
pub struct HubWatch<'a> {
    ctx: &'a ServerCtx,
    id: HubWatcherId,
    messages: mpsc::Receiver<HubEvent>,
}

impl HubWatch<'_> {
    /// The events of the next revisions it delivers and the last of those revisions; `None`
    /// once the history it needed was compacted (the caller reads the state again).
    pub async fn next(&mut self) -> Result<Option<(i64, Vec<Event>)>, EtcdError> {
        loop {
            let message = tokio::select! {
                message = self.messages.recv() => message,
                () = self.ctx.stopping() => return Err(EtcdError::Stopped),
            };
            match message {
                Some(HubEvent::Events {
                    revision, events, ..
                }) => return Ok(Some((revision, events))),
                Some(HubEvent::Progress { .. }) => {}
                // Without its history (or removed from the hub) the watcher cannot go on.
                Some(HubEvent::Compacted { .. }) | None => return Ok(None),
            }
        }
    }
}

impl Drop for HubWatch<'_> {
    fn drop(&mut self) {
        self.ctx.watch.cancel(self.id);
    }
}

/// One call's access to the store, as its caller.
pub struct Session {
    pub ctx: ServerCtx,
    pub caller: Caller,
}

impl Session {
    pub fn new(ctx: ServerCtx, caller: Caller) -> Session {
        Session { ctx, caller }
    }

    /// The lease a call names, or a new one of [`SESSION_TTL_SECS`] when it names none (as
    /// etcd's session does; nothing keeps it alive).
    pub async fn lease_or_grant(&self, lease: i64) -> Result<i64, EtcdError> {
        if lease != 0 {
            return Ok(lease);
        }
        let mut req = LeaseGrantRequest {
            ttl: SESSION_TTL_SECS,
            id: 0,
        };
        while req.id == 0 {
            req.id = (self.ctx.node.next_id() & i64::MAX as u64) as i64;
        }
        let resp = self
            .ctx
            .propose_within_quota(req, Origin::Client(self.caller.clone()))
            .await?;
        Ok(resp.id)
    }

    /// A txn as the KV service runs one: checked, quota-checked, proposed through raft.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        txn::check_txn(&req, self.ctx.config.txn_ops_max as usize)?;
        self.ctx
            .propose_within_quota(req, Origin::Client(self.caller.clone()))
            .await
    }

    /// A linearizable Range, checked against the caller's permissions.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.ctx
            .permit(&self.caller, &requests::range(&req), false)?;
        self.ctx.node.read_barrier().await?;
        let mvcc = self.ctx.mvcc.clone();
        let mut resp = blocking(move || txn::range(&mvcc, &req).map_err(EtcdError::from)).await?;
        resp.header = self.ctx.fill_header(resp.header);
        Ok(resp)
    }

    /// The key created first under `prefix`, if any, and the header of the read.
    pub async fn first_created(
        &self,
        prefix: &[u8],
    ) -> Result<(ResponseHeader, Option<KeyValue>), EtcdError> {
        let resp = self.range(by_creation(prefix, true, 0)).await?;
        let header = resp.header.unwrap_or_default();
        Ok((header, resp.kvs.into_iter().next()))
    }

    /// The current value of `key`, if it exists, and the header of the read.
    pub async fn get(&self, key: &[u8]) -> Result<(ResponseHeader, Option<KeyValue>), EtcdError> {
        let resp = self
            .range(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        Ok((header, resp.kvs.into_iter().next()))
    }

    /// Waits until no key under `prefix` has a create revision at or below
    /// `max_create_revision`, and returns the header of the read that found none (etcd's
    /// `waitDeletes`): each round waits for the deletion of the newest such key.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<ResponseHeader, EtcdError> {
        loop {
            let resp = self
                .range(by_creation(prefix, false, max_create_revision))
                .await?;
            let header = resp.header.unwrap_or_default();
            let Some(newest) = resp.kvs.into_iter().next() else {
                return Ok(header);
            };
            // Deleted or compacted, the state is read again.
            self.wait_delete(&newest.key, header.revision + 1).await?;
        }
    }

    /// Waits for a deletion of `key` at `from_revision` or later, or for the history it needs
    /// to be compacted.
    async fn wait_delete(&self, key: &[u8], from_revision: i64) -> Result<(), EtcdError> {
        let mut watch = self.watch(key, Vec::new(), from_revision);
        while let Some((_, events)) = watch.next().await? {
            if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                break;
            }
        }
        Ok(())
    }

    /// Watches `[key, range_end)` (`range_end` empty: the key alone) from `from_revision` on.
    pub fn watch(&self, key: &[u8], range_end: Vec<u8>, from_revision: i64) -> HubWatch<'_> {
        let (sink, messages) = mpsc::channel(WAIT_SINK_CAPACITY);
        let spec = WatchSpec {
            key: key.to_vec(),
            range_end,
            start_rev: from_revision,
            prev_kv: false,
            no_put: false,
            no_delete: false,
        };
        HubWatch {
            ctx: &self.ctx,
            id: self.ctx.watch.watch(spec, sink),
            messages,
        }
    }
}

/// A candidate key to take back if the call waiting on it ends early: dropped while armed, it
/// proposes its txn from a task of `client-streams` (as etcd deletes a waiter's key when the
/// call's context ends). Nothing is withdrawn once the member is stopping; the lease then ends
/// the key.
pub struct Withdrawal {
    session: Option<(ServerCtx, Caller)>,
    txn: TxnRequest,
}

impl Withdrawal {
    pub fn new(session: &Session, txn: TxnRequest) -> Withdrawal {
        Withdrawal {
            session: Some((session.ctx.clone(), session.caller.clone())),
            txn,
        }
    }

    /// The wait ended as it should: nothing to take back.
    pub fn disarm(mut self) {
        self.session = None;
    }

    /// Takes the key back now.
    pub async fn now(mut self) -> Result<TxnResponse, EtcdError> {
        let (ctx, caller) = self
            .session
            .take()
            .expect("a withdrawal is armed until it is used or disarmed");
        Session::new(ctx, caller)
            .txn(std::mem::take(&mut self.txn))
            .await
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        let Some((ctx, caller)) = self.session.take() else {
            return;
        };
        let txn = std::mem::take(&mut self.txn);
        let streams = ctx.streams.clone();
        let withdraw = async move {
            if let Err(e) = Session::new(ctx, caller).txn(txn).await {
                tracing::debug!(error = %e, "withdrawing an abandoned waiter's key failed");
            }
        };
        if streams.spawn("recipe-withdraw", withdraw).is_err() {
            tracing::debug!("member stopping: an abandoned waiter's key is left to its lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{lease_key, prefix_end};

    #[test]
    fn keys_are_named_after_the_lease_in_hex() {
        assert_eq!(lease_key(b"lock", 0x694d_7a1b_2c3d), b"lock/694d7a1b2c3d");
        assert_eq!(lease_key(b"", 255), b"/ff");
        assert_eq!(lease_key(b"x", -1), b"x/-1");
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
