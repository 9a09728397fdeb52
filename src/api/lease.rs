//! The Lease service (grant, revoke, keep-alive, time-to-live, list) and the leader's expiry loop.
//!
//! Grant, revoke and checkpoints go through raft and are applied to the lessor in log order.
//! Keep-alives renew on the leader only and are not replicated: deadlines live in the leader's
//! memory. A follower forwards keep-alives and time-to-live queries to the leader
//! ([`LeaderForwarder`]); the leader answers them with [`renew_on_leader`] and
//! [`time_to_live_on_leader`], for its own clients and for the peer service alike.
//! [`run_expiry`] is the leader's background task that proposes the revocation of leases nobody
//! renewed and, every `--experimental-lease-checkpoint-interval`, records the remaining TTL of
//! leases longer than that interval through raft, so a new leader counts from there instead of
//! handing them a fresh full TTL (see [`crate::lease::Lessor::promote`]).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdError, ServerCtx};
use crate::lease::{LeaseError, Lessor, MAX_LEASE_TTL_SECS};
use crate::node::{ApplyError, Origin, ProposeError};
use crate::peer::forward::{ForwardError, LeaderForwarder};
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::oxetcdpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseTimeToLiveAnswer};

/// Keep-alive responses queued per stream; when full the stream stops reading requests until the
/// client takes its responses.
const KEEPALIVE_QUEUE_CAPACITY: usize = 16;
/// The longest the expiry job sleeps: how late it notices a change of leadership, or a lease
/// whose deadline comes before the one it was waiting for (granted, or reset by a promotion).
/// Otherwise it wakes at the earliest deadline, so an expired lease's revocation is proposed at
/// once and applied one commit later.
const EXPIRY_WAKE_MAX: Duration = Duration::from_millis(100);
/// The shortest sleep between two rounds, so revocations that keep waiting do not spin.
const EXPIRY_WAKE_MIN: Duration = Duration::from_millis(5);
/// How long the job waits before retrying after a round with failed revocations.
const EXPIRY_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How often a new leader checks whether its lessor has been promoted yet (see
/// [`wait_primary`]).
const PROMOTION_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Revocations proposed per second at most (etcd's `leaseRevokeRate`): a round may propose as
/// many as this rate allows for the time since the previous round, at least one.
const REVOKES_PER_SECOND_MAX: f64 = 1000.0;
/// Revocations proposed by one round at most.
const REVOKES_PER_ROUND_MAX: usize = 500;
/// Revocation proposals in flight at once.
const REVOKES_IN_FLIGHT_MAX: usize = 64;
/// Leases per `LeaseCheckpoint` proposal.
const CHECKPOINTS_PER_PROPOSAL_MAX: usize = 1000;

pub struct LeaseService {
    pub ctx: ServerCtx,
    forwarder: LeaderForwarder,
}

impl LeaseService {
    pub fn new(ctx: ServerCtx) -> LeaseService {
        let handlers = std::sync::Arc::new(super::peer::PeerHandlersImpl::new(ctx.clone()));
        let forwarder =
            LeaderForwarder::new(ctx.node.clone(), handlers, ctx.config.peer_dialer.clone());
        LeaseService { ctx, forwarder }
    }
}

fn lock(lessor: &Mutex<Lessor>) -> MutexGuard<'_, Lessor> {
    lessor.lock().unwrap_or_else(|p| p.into_inner())
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL_SECS {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        while req.id == 0 {
            req.id = (self.ctx.node.next_id() & i64::MAX as u64) as i64;
        }
        let resp = self
            .ctx
            .propose_within_quota(req, Origin::Client(caller))
            .await?;
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        let resp = self
            .ctx
            .node
            .propose(req, Origin::Client(caller))
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE_CAPACITY);
        let ctx = self.ctx.clone();
        let forwarder = self.forwarder.clone();
        let keep_alive = async move {
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
                let reply = tokio::select! {
                    reply = keep_alive_once(&ctx, &forwarder, req.id) => reply,
                    () = ctx.stopping() => Err(EtcdError::Stopped),
                };
                let reply = reply.map_err(Status::from);
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        };
        self.ctx
            .streams
            .spawn("lease-keep-alive", keep_alive)
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let answer = time_to_live(&self.ctx, &self.forwarder, req.id, req.keys).await?;
        let header = Some(self.ctx.header_now());
        let resp = if answer.found {
            LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: answer.ttl,
                granted_ttl: answer.granted_ttl,
                keys: answer.keys,
            }
        } else {
            // etcd answers an unknown lease with TTL -1, not an error.
            LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }
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

/// Renews one lease for a keep-alive request, here or on the leader. An unknown or expired lease
/// is answered with TTL 0, not an error; the header is taken before the renewal, as etcd does.
async fn keep_alive_once(
    ctx: &ServerCtx,
    forwarder: &LeaderForwarder,
    id: i64,
) -> Result<LeaseKeepAliveResponse, EtcdError> {
    let header = Some(ctx.header_now());
    let ttl = renew(ctx, forwarder, id).await?;
    Ok(LeaseKeepAliveResponse { header, id, ttl })
}

/// Renews lease `id` locally when this member leads, else through the leader.
async fn renew(ctx: &ServerCtx, forwarder: &LeaderForwarder, id: i64) -> Result<i64, EtcdError> {
    if ctx.node.status().is_leader {
        match renew_on_leader(ctx, id).await {
            // Leadership moved on meanwhile: ask the new leader.
            Err(EtcdError::NotLeader) => {}
            other => return other,
        }
    }
    match forwarder.lease_renew(id).await {
        Ok(ttl) => Ok(ttl),
        Err(ForwardError::LocalLeader) => renew_on_leader(ctx, id).await,
        Err(e) => Err(e.into()),
    }
}

/// Lease `id`'s TTL, asked here when this member leads, else of the leader.
async fn time_to_live(
    ctx: &ServerCtx,
    forwarder: &LeaderForwarder,
    id: i64,
    keys: bool,
) -> Result<LeaseTimeToLiveAnswer, EtcdError> {
    if ctx.node.status().is_leader {
        match time_to_live_on_leader(ctx, id, keys).await {
            Err(EtcdError::NotLeader) => {}
            other => return other,
        }
    }
    match forwarder.lease_time_to_live(id, keys).await {
        Ok(answer) => Ok(answer),
        Err(ForwardError::LocalLeader) => time_to_live_on_leader(ctx, id, keys).await,
        Err(e) => Err(e.into()),
    }
}

/// Waits until this member leads and its lessor has been promoted (deadlines reset by
/// [`run_expiry`], at most one poll after the election); until then the lessor's deadlines are a
/// follower's guesses. Fails with `NotLeader` as soon as this member does not lead, and with
/// `Timeout` if the promotion does not come within the request timeout.
async fn wait_primary(ctx: &ServerCtx) -> Result<(), EtcdError> {
    let deadline = Instant::now() + ctx.node.config().request_timeout;
    loop {
        if !ctx.node.status().is_leader {
            return Err(EtcdError::NotLeader);
        }
        if lock(&ctx.lessor).is_primary() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(EtcdError::Timeout);
        }
        tokio::time::sleep(PROMOTION_POLL_INTERVAL).await;
    }
}

/// Renews lease `id` on this member, which must lead (else `NotLeader`, so a forwarding follower
/// tries again once it knows the new leader). Returns the TTL in seconds, 0 for an unknown or
/// expired lease. Serves this member's keep-alive streams and the peer service alike.
pub async fn renew_on_leader(ctx: &ServerCtx, id: i64) -> Result<i64, EtcdError> {
    wait_primary(ctx).await?;
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
        if let Err(e) = ctx.node.propose(clear, Origin::Member).await {
            tracing::warn!(lease_id = id, error = %e, "could not clear a lease checkpoint after renewal");
        }
    }
    Ok(ttl)
}

/// Lease `id`'s remaining and granted TTL (and its keys, when asked) as this member, which must
/// lead, sees them after a read barrier; `found` is false for an unknown lease.
pub async fn time_to_live_on_leader(
    ctx: &ServerCtx,
    id: i64,
    keys: bool,
) -> Result<LeaseTimeToLiveAnswer, EtcdError> {
    wait_primary(ctx).await?;
    ctx.node.read_barrier().await.map_err(EtcdError::from)?;
    let found = lock(&ctx.lessor).time_to_live(id, Instant::now());
    Ok(match found {
        None => LeaseTimeToLiveAnswer::default(),
        Some(ttl) => LeaseTimeToLiveAnswer {
            found: true,
            granted_ttl: ttl.granted_secs,
            ttl: ttl.remaining_secs,
            keys: if keys { ttl.keys } else { Vec::new() },
        },
    })
}

/// The leader's lease housekeeping, until `shutdown` turns true (or its sender is dropped).
///
/// It wakes at the earliest lease deadline, and at least every [`EXPIRY_WAKE_MAX`]. If this
/// member leads: after a change of leadership it first resets every deadline
/// ([`Lessor::promote`], extended by one election timeout), then proposes the revocation of the
/// expired leases (at most [`REVOKES_PER_SECOND_MAX`] a second, as etcd) and waits for them to
/// apply, and every checkpoint interval (`--experimental-lease-checkpoint-interval`) records
/// through raft the remaining TTL of the leases granted for longer than that interval. When this
/// member stops leading the lessor is demoted. Failed proposals are logged and retried after
/// [`EXPIRY_RETRY_INTERVAL`].
pub async fn run_expiry(ctx: ServerCtx, mut shutdown: watch::Receiver<bool>) {
    let mut leading_term: Option<u64> = None;
    let checkpoint_interval = ctx.config.lease_checkpoint_interval;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    let mut last_round = Instant::now();
    let mut wake = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        let now = Instant::now();
        wake = now + EXPIRY_WAKE_MAX;
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
            let extend = ctx.config.election_timeout;
            let leases = {
                let mut lessor = lock(&ctx.lessor);
                lessor.promote(now, extend);
                lessor.len()
            };
            next_checkpoint = now + checkpoint_interval;
            tracing::info!(
                term = status.term,
                leases,
                "lessor promoted; lease deadlines reset"
            );
        }
        let budget = (now.duration_since(last_round).as_secs_f64() * REVOKES_PER_SECOND_MAX)
            .clamp(1.0, REVOKES_PER_ROUND_MAX as f64) as usize;
        last_round = now;
        let round = async {
            let revoked = revoke_expired(&ctx, budget).await;
            if Instant::now() >= next_checkpoint {
                next_checkpoint = Instant::now() + checkpoint_interval;
                checkpoint_long_leases(&ctx, checkpoint_interval).await;
            }
            revoked
        };
        let revoked = tokio::select! {
            revoked = round => revoked,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        let now = Instant::now();
        wake = if revoked {
            match lock(&ctx.lessor).next_deadline() {
                Some(deadline) => deadline.clamp(now + EXPIRY_WAKE_MIN, now + EXPIRY_WAKE_MAX),
                None => now + EXPIRY_WAKE_MAX,
            }
        } else {
            now + EXPIRY_RETRY_INTERVAL
        };
    }
    tracing::info!("lease expiry task stopped");
}

/// Proposes the revocation of at most `limit` leases past their deadline and waits for them to
/// apply. False when some could not be revoked (they are tried again later).
async fn revoke_expired(ctx: &ServerCtx, limit: usize) -> bool {
    let expired = lock(&ctx.lessor).expired(Instant::now(), limit);
    if expired.is_empty() {
        return true;
    }
    let total = expired.len();
    let results: Vec<_> = futures::stream::iter(expired)
        .map(|id| async move {
            let result = ctx
                .node
                .propose(LeaseRevokeRequest { id }, Origin::Member)
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
            Ok(_) | Err(ProposeError::Refused(ApplyError::Lease(LeaseError::NotFound))) => {}
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
        false
    } else {
        tracing::debug!(revoked = total, "revoked expired leases");
        true
    }
}

/// Records the remaining TTL of every lease longer than `interval` through raft, so a new leader
/// does not hand them a fresh full TTL.
async fn checkpoint_long_leases(ctx: &ServerCtx, interval: Duration) {
    let remaining = lock(&ctx.lessor).remaining_for_checkpoint(Instant::now(), interval);
    for chunk in remaining.chunks(CHECKPOINTS_PER_PROPOSAL_MAX) {
        let request = LeaseCheckpointRequest {
            checkpoints: chunk
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        };
        if let Err(e) = ctx.node.propose(request, Origin::Member).await {
            tracing::warn!(error = %e, leases = chunk.len(), "could not checkpoint leases; retrying in the next interval");
            return;
        }
    }
    if !remaining.is_empty() {
        tracing::debug!(leases = remaining.len(), "checkpointed long leases");
    }
}
