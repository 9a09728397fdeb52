//! The Election service (`v3electionpb.Election`): etcd's election recipe run for the client on
//! this member.
//!
//! A candidate's key is `<name>/<lease hex>`, put with its value and lease if absent; the
//! candidate whose key under `<name>/` was created first leads. Campaign waits until that is the
//! caller (a campaign whose call ends early resigns); Proclaim and Resign act only while the
//! leader key given still has the create revision given; Leader reads the first-created key and
//! Observe streams it and every change of it, from one leader to the next. Errors of the recipe
//! reach the client as etcd's do (see [`recipes::status`]).

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::recipes::{self, Session, Withdrawal};
use super::{EtcdError, ServerCtx};
use crate::proto::etcdserverpb::{ResponseHeader, TxnRequest};
use crate::proto::mvccpb::KeyValue;
use crate::proto::mvccpb::event::EventType;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

pub const NOT_LEADER: &str = "election: not leader";
pub const NO_LEADER: &str = "election: no leader";
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// Leader announcements queued for an Observe client; when full, the stream waits for it.
const OBSERVE_QUEUE_CAPACITY: usize = 16;

pub struct ElectionService {
    ctx: ServerCtx,
}

impl ElectionService {
    pub fn new(ctx: ServerCtx) -> ElectionService {
        ElectionService { ctx }
    }
}

fn refused(message: &str) -> EtcdError {
    EtcdError::Other(message.to_string())
}

/// Deletes `key` if it still has create revision `revision`.
fn resign_txn(key: &[u8], revision: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![recipes::created_at(key, revision)],
        success: vec![recipes::delete_op(key)],
        failure: Vec::new(),
    }
}

/// Replaces the leader's value if `leader` still leads.
async fn proclaim(
    session: &Session,
    leader: &LeaderKey,
    value: Vec<u8>,
) -> Result<ResponseHeader, EtcdError> {
    let txn = TxnRequest {
        compare: vec![recipes::created_at(&leader.key, leader.rev)],
        success: vec![recipes::put_op(&leader.key, value, leader.lease)],
        failure: Vec::new(),
    };
    let resp = session.txn(txn).await?;
    if !resp.succeeded {
        return Err(refused(NOT_LEADER));
    }
    Ok(resp.header.unwrap_or_default())
}

async fn campaign(session: Session, req: CampaignRequest) -> Result<CampaignResponse, EtcdError> {
    let lease = session.lease_or_grant(req.lease).await?;
    let prefix = recipes::prefix_of(&req.name);
    let key = recipes::lease_key(&req.name, lease);
    let stand = TxnRequest {
        compare: vec![recipes::created_at(&key, 0)],
        success: vec![recipes::put_op(&key, req.value.clone(), lease)],
        failure: vec![recipes::get_op(&key)],
    };
    let stood = session.txn(stand).await?;
    let header = stood.header.unwrap_or_default();
    let mut leader = LeaderKey {
        name: req.name,
        key,
        rev: header.revision,
        lease,
    };
    if !stood.succeeded {
        // This lease is a candidate already: campaign with that key, and this value.
        let existing = recipes::range_kvs(&stood, 0)
            .first()
            .ok_or_else(|| refused(NOT_LEADER))?;
        leader.rev = existing.create_revision;
        if existing.value != req.value
            && let Err(e) = proclaim(&session, &leader, req.value).await
        {
            let _ = session.txn(resign_txn(&leader.key, leader.rev)).await;
            return Err(e);
        }
    }

    let withdrawal = Withdrawal::new(&session, resign_txn(&leader.key, leader.rev));
    let waited = session.wait_deletes(&prefix, leader.rev - 1).await;
    // Only a call that ends early resigns (the withdrawal, dropped with it).
    withdrawal.disarm();
    waited?;
    Ok(CampaignResponse {
        header: Some(header),
        leader: Some(leader),
    })
}

async fn leader(session: Session, req: LeaderRequest) -> Result<LeaderResponse, EtcdError> {
    let (header, first) = session
        .first_created(&recipes::prefix_of(&req.name))
        .await?;
    let kv = first.ok_or_else(|| refused(NO_LEADER))?;
    Ok(LeaderResponse {
        header: Some(header),
        kv: Some(kv),
    })
}

async fn resign(session: Session, req: ResignRequest) -> Result<ResignResponse, EtcdError> {
    let leader = req.leader.ok_or_else(|| refused(MISSING_LEADER_KEY))?;
    let resp = session.txn(resign_txn(&leader.key, leader.rev)).await?;
    Ok(ResignResponse {
        header: resp.header,
    })
}

impl ElectionService {
    async fn session<T>(&self, request: &Request<T>) -> Result<Session, Status> {
        let caller = self.ctx.caller(request).await.map_err(recipes::status)?;
        Ok(Session::new(self.ctx.clone(), caller))
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let session = self.session(&request).await?;
        campaign(session, request.into_inner())
            .await
            .map(Response::new)
            .map_err(recipes::status)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let session = self.session(&request).await?;
        let req = request.into_inner();
        let leader = req
            .leader
            .ok_or_else(|| recipes::status(refused(MISSING_LEADER_KEY)))?;
        let header = proclaim(&session, &leader, req.value)
            .await
            .map_err(recipes::status)?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let session = self.session(&request).await?;
        leader(session, request.into_inner())
            .await
            .map(Response::new)
            .map_err(recipes::status)
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let session = self.session(&request).await?;
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE_CAPACITY);
        let task = async move {
            let prefix = recipes::prefix_of(&req.name);
            tokio::select! {
                ended = observe(&session, &prefix, &tx) => match ended {
                    Err(EtcdError::Stopped) => {
                        let _ = tx.send(Err(EtcdError::Stopped.into())).await;
                    }
                    // As in etcd, a failed read or watch ends the stream quietly.
                    Err(e) => tracing::debug!(error = %e, "election observe ended"),
                    Ok(()) => {}
                },
                () = tx.closed() => {}
            }
        };
        self.ctx
            .streams
            .spawn("election-observe", task)
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let session = self.session(&request).await?;
        resign(session, request.into_inner())
            .await
            .map(Response::new)
            .map_err(recipes::status)
    }
}

/// Sends the leader's key-value and each of its changes to `tx`, then the next leader's, and so
/// on, until the client goes away (`Ok`) or a read fails.
async fn observe(
    session: &Session,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), EtcdError> {
    let announce = |revision: i64, kv: KeyValue| LeaderResponse {
        header: Some(session.ctx.header(revision)),
        kv: Some(kv),
    };
    loop {
        let (header, first) = session.first_created(prefix).await?;
        let (revision, leader) = match first {
            Some(kv) => (header.revision, kv),
            None => match first_put(session, prefix, header.revision + 1).await? {
                Some(kv) => (kv.mod_revision, kv),
                None => continue,
            },
        };
        let key = leader.key.clone();
        if tx.send(Ok(announce(revision, leader))).await.is_err() {
            return Ok(());
        }
        let mut watch = session.watch(&key, Vec::new(), revision + 1);
        'leader: while let Some((revision, events)) = watch.next().await? {
            for event in events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                if let Some(kv) = event.kv
                    && tx.send(Ok(announce(revision, kv))).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The first key put under `prefix` from `from_revision` on; `None` when the history needed
/// was compacted (the caller reads again).
async fn first_put(
    session: &Session,
    prefix: &[u8],
    from_revision: i64,
) -> Result<Option<KeyValue>, EtcdError> {
    let mut watch = session.watch(prefix, recipes::prefix_end(prefix), from_revision);
    while let Some((_, events)) = watch.next().await? {
        if let Some(kv) = events
            .into_iter()
            .find(|e| e.r#type == EventType::Put as i32)
            .and_then(|e| e.kv)
        {
            return Ok(Some(kv));
        }
    }
    Ok(None)
}
