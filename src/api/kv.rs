//! The KV service: Range, Put, DeleteRange, Txn and Compact.
//!
//! Writes are proposed through raft and answered once applied on this member; linearizable reads
//! wait for a ReadIndex barrier, serializable ones read local state at once.

use tonic::{Request, Response, Status};

use super::{EtcdError, ServerCtx, blocking};
use crate::auth::requests;
use crate::node::Origin;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::txn;

pub struct KvService {
    ctx: ServerCtx,
}

impl KvService {
    pub fn new(ctx: ServerCtx) -> KvService {
        KvService { ctx }
    }

    /// Serves a read from this member's state on a blocking thread, after a ReadIndex barrier
    /// when it must be linearizable.
    async fn read_locally<T, F>(&self, linearizable: bool, read: F) -> Result<T, EtcdError>
    where
        F: FnOnce(&crate::mvcc::MvccStore) -> Result<T, txn::TxnError> + Send + 'static,
        T: Send + 'static,
    {
        if linearizable {
            self.ctx.node.read_barrier().await?;
        }
        let mvcc = self.ctx.mvcc.clone();
        blocking(move || read(&mvcc).map_err(EtcdError::from)).await
    }
}

/// Compacts the key-value history up to `revision` through raft (the KV Compact call and the
/// auto-compactor alike); with `physical`, answers only once the compacted revisions are gone
/// from disk.
pub async fn compact(
    ctx: &ServerCtx,
    revision: i64,
    physical: bool,
    origin: Origin,
) -> Result<CompactionResponse, EtcdError> {
    let compaction = ctx
        .node
        .propose(CompactionRequest { revision, physical }, origin)
        .await?;
    if physical {
        let _ = compaction.physical_done.await;
    }
    Ok(compaction.response)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        txn::check_range(&req).map_err(EtcdError::from)?;
        self.ctx.permit(&caller, &requests::range(&req), false)?;
        let linearizable = !req.serializable;
        if linearizable && self.ctx.is_learner() {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        let mut resp = self
            .read_locally(linearizable, move |mvcc| txn::range(mvcc, &req))
            .await?;
        self.ctx.metrics.record_mvcc(txn::count::range());
        resp.header = self.ctx.fill_header(resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        txn::check_put(&req).map_err(EtcdError::from)?;
        let resp = self
            .ctx
            .propose_within_quota(req, Origin::Client(caller))
            .await?;
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        txn::check_delete_range(&req).map_err(EtcdError::from)?;
        let resp = self
            .ctx
            .node
            .propose(req, Origin::Client(caller))
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        txn::check_txn(&req, self.ctx.config.txn_ops_max as usize).map_err(EtcdError::from)?;
        if !txn::has_writes(&req) {
            // Served here, not through raft: checked here (a write txn is checked at apply).
            self.ctx
                .permit(&caller, &requests::txn(&req, &|_| Vec::new()), false)?;
            // A read-only txn is a set of reads at one revision: served locally like Range,
            // after a ReadIndex barrier unless every range in it is serializable.
            let linearizable = !txn::is_txn_serializable(&req);
            let (mut resp, ops) = self
                .read_locally(linearizable, move |mvcc| txn::read_txn(mvcc, &req))
                .await?;
            self.ctx.metrics.record_mvcc(ops);
            resp.header = self.ctx.fill_header(resp.header);
            return Ok(Response::new(resp));
        }
        let resp = self
            .ctx
            .propose_within_quota(req, Origin::Client(caller))
            .await?;
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        let resp = compact(
            &self.ctx,
            req.revision,
            req.physical,
            Origin::Client(caller),
        )
        .await?;
        Ok(Response::new(resp))
    }
}

/// The read behind the health endpoints (`/health`, `/livez`, `/readyz`): a one-key keys-only
/// Range from this member's state, after a ReadIndex barrier when `linearizable`, as etcd's
/// health checks read. Unlike the Range RPC it is served on learners too.
pub async fn probe_read(ctx: &ServerCtx, linearizable: bool) -> Result<(), EtcdError> {
    if linearizable {
        ctx.node.read_barrier().await?;
    }
    let mvcc = ctx.mvcc.clone();
    blocking(move || {
        let req = RangeRequest {
            key: vec![0],
            keys_only: true,
            limit: 1,
            serializable: !linearizable,
            ..RangeRequest::default()
        };
        txn::range(&mvcc, &req).map(|_| ()).map_err(EtcdError::from)
    })
    .await
}
