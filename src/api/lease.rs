//! The Lease service (grant, revoke, keep-alive, time-to-live, list) and the leader's expiry loop.
//!
//! Grant, revoke and checkpoints go through raft and are applied to the lessor in log order.
//! Keep-alives renew on the leader only and are not replicated: deadlines live in the leader's
//! memory, and a new leader resets them (see [`crate::lease::Lessor::promote`]). [`run_expiry`] is
//! the leader's background task that proposes the revocation of leases nobody renewed.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdError, ServerCtx};
use crate::apply::{self, ApplyError};
use crate::lease::{CHECKPOINT_INTERVAL, LeaseError, Lessor, MAX_LEASE_TTL_SECS};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::oxetcdpb::internal_request::Request as Internal;
use crate::proto::oxetcdpb::{LeaseCheckpoint, LeaseCheckpointRequest};

/// Keep-alive responses queued per stream; when full the stream stops reading requests until the
/// client takes its responses.
const KEEPALIVE_QUEUE_CAPACITY: usize = 16;
/// How often the leader looks for expired leases.
const EXPIRY_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// Revocations proposed per poll: with the poll interval, at most etcd's 1000 leases a second.
const REVOKES_PER_POLL_MAX: usize = 500;
/// Revocation proposals in flight at once.
const REVOKES_IN_FLIGHT_MAX: usize = 64;
/// Leases per `LeaseCheckpoint` proposal.
const CHECKPOINTS_PER_PROPOSAL_MAX: usize = 1000;

pub struct LeaseService {
    pub ctx: ServerCtx,
}

impl LeaseService {
    pub fn new(ctx: ServerCtx) -> LeaseService {
        LeaseService { ctx }
    }
}

fn lock(lessor: &Mutex<Lessor>) -> MutexGuard<'_, Lessor> {
    lessor.lock().unwrap_or_else(|p| p.into_inner())
}

fn unexpected(what: &str) -> Status {
    EtcdError::Other(format!("unexpected apply result for {what}")).into()
}

async fn propose(ctx: &ServerCtx, request: Internal) -> Result<apply::Response, EtcdError> {
    Ok(ctx.node.propose(request).await??)
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL_SECS {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        self.ctx.check_quota(req.encoded_len() as u64).await?;
        while req.id == 0 {
            req.id = (self.ctx.node.next_id() & i64::MAX as u64) as i64;
        }
        match propose(&self.ctx, Internal::LeaseGrant(req)).await? {
            apply::Response::LeaseGrant(mut resp) => {
                resp.header = self.ctx.fill_header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease grant")),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        match propose(&self.ctx, Internal::LeaseRevoke(req)).await? {
            apply::Response::LeaseRevoke(mut resp) => {
                resp.header = self.ctx.fill_header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("lease revoke")),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE_CAPACITY);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    () = tx.closed() => break,
                    () = ctx.stopping() => {
                        let _ = tx.send(Err(EtcdError::Stopped.into())).await;
                        break;
                    }
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    // The client closed its side.
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(error = %status, "keep-alive stream broke");
                        break;
                    }
                };
                let reply = keep_alive_once(&ctx, req.id).await.map_err(Status::from);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        self.ctx
            .node
            .read_barrier()
            .await
            .map_err(EtcdError::from)?;
        let header = Some(self.ctx.header_now());
        let found = lock(&self.ctx.lessor).time_to_live(req.id, Instant::now());
        let resp = match found {
            None => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(ttl) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: ttl.remaining_secs,
                granted_ttl: ttl.granted_secs,
                keys: if req.keys { ttl.keys } else { Vec::new() },
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let header = Some(self.ctx.header_now());
        let ids = lock(&self.ctx.lessor).ids();
        Ok(Response::new(LeaseLeasesResponse {
            header,
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}

/// Renews one lease for a keep-alive request. An unknown or expired lease is answered with TTL 0,
/// not an error; the header is taken before the renewal, as etcd does.
async fn keep_alive_once(ctx: &ServerCtx, id: i64) -> Result<LeaseKeepAliveResponse, EtcdError> {
    let header = Some(ctx.header_now());
    if !ctx.node.status().is_leader {
        return Err(EtcdError::NotLeader);
    }
    let (renewed, clear_checkpoint) = {
        let mut lessor = lock(&ctx.lessor);
        let renewed = lessor.renew(id, Instant::now());
        let clear = renewed.is_ok() && lessor.has_checkpoint(id);
        (renewed, clear)
    };
    let ttl = match renewed {
        Ok(ttl) => ttl,
        Err(LeaseError::NotFound) => 0,
        Err(e) => return Err(e.into()),
    };
    if clear_checkpoint {
        // The renewal makes the recorded remaining TTL stale; a later leader must count from the
        // full TTL. On failure the next keep-alive tries again.
        let clear = LeaseCheckpointRequest {
            checkpoints: vec![LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            }],
        };
        if let Err(e) = propose(ctx, Internal::LeaseCheckpoint(clear)).await {
            tracing::warn!(lease_id = id, error = %e, "could not clear a lease checkpoint after renewal");
        }
    }
    Ok(LeaseKeepAliveResponse { header, id, ttl })
}

/// The leader's lease housekeeping, until `shutdown` turns true (or its sender is dropped).
///
/// Every [`EXPIRY_POLL_INTERVAL`], if this member leads: after a change of leadership it first
/// resets every deadline ([`Lessor::promote`], extended by one election timeout), then proposes the
/// revocation of up to [`REVOKES_PER_POLL_MAX`] expired leases, and every [`CHECKPOINT_INTERVAL`]
/// records the remaining TTL of long leases through raft. When this member stops leading the
/// lessor is demoted. Failed proposals are logged and retried on a later poll.
pub async fn run_expiry(ctx: ServerCtx, mut shutdown: watch::Receiver<bool>) {
    let mut poll = tokio::time::interval(EXPIRY_POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_term: Option<u64> = None;
    let mut next_checkpoint = Instant::now() + CHECKPOINT_INTERVAL;
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = poll.tick() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        let status = ctx.node.status();
        if !status.is_leader {
            if leading_term.take().is_some() {
                lock(&ctx.lessor).demote();
                tracing::info!(
                    term = status.term,
                    "lessor demoted; leases no longer expire here"
                );
            }
            continue;
        }
        if leading_term != Some(status.term) {
            leading_term = Some(status.term);
            let extend = ctx.config.election_timeout();
            let leases = {
                let mut lessor = lock(&ctx.lessor);
                lessor.promote(Instant::now(), extend);
                lessor.len()
            };
            next_checkpoint = Instant::now() + CHECKPOINT_INTERVAL;
            tracing::info!(
                term = status.term,
                leases,
                "lessor promoted; lease deadlines reset"
            );
        }
        let round = async {
            revoke_expired(&ctx).await;
            if Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + CHECKPOINT_INTERVAL;
                checkpoint_long_leases(&ctx).await;
            }
        };
        tokio::select! {
            () = round => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!("lease expiry task stopped");
}

/// Proposes the revocation of the leases past their deadline, a bounded number at a time.
async fn revoke_expired(ctx: &ServerCtx) {
    let expired = lock(&ctx.lessor).expired(Instant::now(), REVOKES_PER_POLL_MAX);
    if expired.is_empty() {
        return;
    }
    let total = expired.len();
    let results: Vec<_> = futures::stream::iter(expired)
        .map(|id| async move {
            let result = ctx
                .node
                .propose(Internal::LeaseRevoke(LeaseRevokeRequest { id }))
                .await;
            (id, result)
        })
        .buffer_unordered(REVOKES_IN_FLIGHT_MAX)
        .collect()
        .await;
    let mut failed = 0usize;
    let mut first_error = None;
    for (id, result) in results {
        match result {
            // Revoked, or a client revoked it first.
            Ok(Ok(_)) | Ok(Err(ApplyError::Lease(LeaseError::NotFound))) => {}
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert((id, e.to_string()));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert((id, e.to_string()));
            }
        }
    }
    if let Some((lease_id, error)) = first_error {
        tracing::warn!(
            lease_id,
            error = %error,
            failed,
            total,
            "could not revoke expired leases; retrying"
        );
    } else {
        tracing::debug!(revoked = total, "revoked expired leases");
    }
}

/// Records the remaining TTL of every long lease through raft, so a new leader does not hand them
/// a fresh full TTL.
async fn checkpoint_long_leases(ctx: &ServerCtx) {
    let remaining = lock(&ctx.lessor).remaining_for_checkpoint(Instant::now());
    for chunk in remaining.chunks(CHECKPOINTS_PER_PROPOSAL_MAX) {
        let request = LeaseCheckpointRequest {
            checkpoints: chunk
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        };
        if let Err(e) = propose(ctx, Internal::LeaseCheckpoint(request)).await {
            tracing::warn!(error = %e, leases = chunk.len(), "could not checkpoint leases; retrying in the next interval");
            return;
        }
    }
    if !remaining.is_empty() {
        tracing::debug!(leases = remaining.len(), "checkpointed long leases");
    }
}
