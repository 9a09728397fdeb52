//! The Lock service (`v3lockpb.Lock`): etcd's mutex recipe run for the client on this member.
//!
//! Lock puts `<name>/<lease hex>` with the lease if it is absent (the same lease locking twice
//! is one acquisition), then waits until no key under `<name>/` was created before it; the
//! lock is held until Unlock deletes the key or the lease ends. A waiter whose call ends early
//! has its key deleted, as etcd does. Errors reach the client as etcd's do (see
//! [`recipes::status`]).

use tonic::{Request, Response, Status};

use super::recipes::{self, Session, Withdrawal};
use super::{EtcdError, ServerCtx};
use crate::node::Origin;
use crate::proto::etcdserverpb::{DeleteRangeRequest, TxnRequest};
use crate::proto::oxetcdpb::Caller;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

/// What etcd answers when the waiter's key was gone by the time the lock was its turn (its
/// lease ended, or someone deleted it).
pub const SESSION_EXPIRED: &str = "mutex: session is expired";

pub struct LockService {
    ctx: ServerCtx,
}

impl LockService {
    pub fn new(ctx: ServerCtx) -> LockService {
        LockService { ctx }
    }
}

fn session_expired() -> EtcdError {
    EtcdError::Other(SESSION_EXPIRED.to_string())
}

async fn lock(session: Session, req: LockRequest) -> Result<LockResponse, EtcdError> {
    let lease = session.lease_or_grant(req.lease).await?;
    let prefix = recipes::prefix_of(&req.name);
    let key = recipes::lease_key(&req.name, lease);
    // Queue up unless this lease already did; learn who holds the lock in the same txn.
    let acquire = TxnRequest {
        compare: vec![recipes::created_at(&key, 0)],
        success: vec![
            recipes::put_op(&key, Vec::new(), lease),
            recipes::first_created_op(&prefix),
        ],
        failure: vec![recipes::get_op(&key), recipes::first_created_op(&prefix)],
    };
    let acquired = session.txn(acquire).await?;
    let header = acquired.header.unwrap_or_default();
    let my_revision = if acquired.succeeded {
        header.revision
    } else {
        recipes::range_kvs(&acquired, 0)
            .first()
            .map(|kv| kv.create_revision)
            .ok_or_else(session_expired)?
    };
    let owner = recipes::range_kvs(&acquired, 1).first();
    if owner.is_none_or(|kv| kv.create_revision == my_revision) {
        return Ok(LockResponse {
            header: Some(header),
            key,
        });
    }

    let unlock = TxnRequest {
        success: vec![recipes::delete_op(&key)],
        ..TxnRequest::default()
    };
    let withdrawal = Withdrawal::new(&session, unlock);
    let waited = match session.wait_deletes(&prefix, my_revision - 1).await {
        // The turn came; the key must still be there (its lease may have ended meanwhile).
        Ok(_) => session.get(&key).await,
        Err(e) => Err(e),
    };
    match waited {
        Err(e) => {
            let _ = withdrawal.now().await;
            Err(e)
        }
        Ok((_, None)) => {
            withdrawal.disarm();
            Err(session_expired())
        }
        Ok((header, Some(_))) => {
            withdrawal.disarm();
            Ok(LockResponse {
                header: Some(header),
                key,
            })
        }
    }
}

async fn unlock(
    ctx: &ServerCtx,
    caller: Caller,
    req: UnlockRequest,
) -> Result<UnlockResponse, EtcdError> {
    let delete = DeleteRangeRequest {
        key: req.key,
        ..DeleteRangeRequest::default()
    };
    crate::txn::check_delete_range(&delete)?;
    let resp = ctx.node.propose(delete, Origin::Client(caller)).await?;
    Ok(UnlockResponse {
        header: resp.header,
    })
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = self.ctx.caller(&request).await.map_err(recipes::status)?;
        let session = Session::new(self.ctx.clone(), caller);
        lock(session, request.into_inner())
            .await
            .map(Response::new)
            .map_err(recipes::status)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = self.ctx.caller(&request).await.map_err(recipes::status)?;
        unlock(&self.ctx, caller, request.into_inner())
            .await
            .map(Response::new)
            .map_err(recipes::status)
    }
}
