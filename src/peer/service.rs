//! The receiving side of the raft transport: the `oxetcdpb.Peer` gRPC service, which checks each
//! batch's cluster and member IDs and steps its messages into raft, receives snapshot files, and
//! answers the requests followers forward to the leader.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::{PeerError, PeerHandlers, hex};
use crate::metrics::{Metrics, PeerLabel};
use crate::node::{NodeError, NodeHandle};
use crate::proto::oxetcdpb::peer_server::Peer;
use crate::proto::oxetcdpb::{
    LeaseRenewRequest, LeaseRenewResponse, LeaseTimeToLiveAnswer, LeaseTimeToLiveQuery,
    MemberChangeRequest, MemberChangeResponse, MembersRequest, MembersResponse, PeerHashKvRequest,
    PeerHashKvResponse, RaftBatch, RaftStreamEnd, SnapshotChunk, SnapshotReceived,
};
use crate::raft::codec::decode;
use crate::raft::snapshots;

/// How long a received snapshot may wait for room in a full raft inbox.
const SNAPSHOT_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves peers' raft streams for this member.
pub struct PeerService {
    node: NodeHandle,
    shutdown: watch::Receiver<bool>,
    handlers: Arc<dyn PeerHandlers>,
    snap_dir: PathBuf,
    snapshot_bytes_max: u64,
    metrics: Arc<Metrics>,
}

impl PeerService {
    /// A service stepping into `node`; open streams end when `shutdown` turns true. Received
    /// snapshots go to `snap_dir`, each at most `snapshot_bytes_max` bytes long.
    pub fn new(
        node: NodeHandle,
        shutdown: watch::Receiver<bool>,
        handlers: Arc<dyn PeerHandlers>,
        snap_dir: PathBuf,
        snapshot_bytes_max: u64,
        metrics: Arc<Metrics>,
    ) -> PeerService {
        PeerService {
            node,
            shutdown,
            handlers,
            snap_dir,
            snapshot_bytes_max,
            metrics,
        }
    }

    /// Refuses a sender that is not in this member's member list: a removed member, or one of
    /// another cluster's that shares its ID space. Raft steps messages from any ID it is given,
    /// and a stranger's heartbeat with a commit index beyond this member's log would stop it.
    fn check_sender(&self, from: u64) -> Result<(), PeerError> {
        if self.handlers.peer_urls(from).is_empty() {
            return Err(PeerError::UnknownSender { from });
        }
        Ok(())
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        let local = self.node.config().cluster_id;
        if cluster_id != local {
            return Err(PeerError::ClusterMismatch {
                local,
                remote: cluster_id,
                from: 0,
            }
            .into());
        }
        Ok(())
    }

    /// Writes the snapshot stream after its first chunk to its file, checks it, and returns the
    /// raft message to step.
    async fn receive_snapshot(
        &self,
        first: SnapshotChunk,
        stream: &mut Streaming<SnapshotChunk>,
    ) -> Result<Message, Status> {
        failpoint!("snapshot_receive");
        self.check_cluster(first.cluster_id)?;
        let message: Message = decode(&first.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot message: {e}")))?;
        let me = self.node.config().member_id;
        if message.get_msg_type() != MessageType::MsgSnapshot || message.to != me {
            return Err(Status::invalid_argument(format!(
                "expected a snapshot message for {}, got {:?} for {}",
                hex(me),
                message.get_msg_type(),
                hex(message.to)
            )));
        }
        self.check_sender(message.from)?;
        let meta = message.get_snapshot().get_metadata();
        let (index, term) = (meta.index, meta.term);
        let path = snapshots::snapshot_path(&self.snap_dir, term, index);
        let part = snapshots::part_path(&path);
        let io = |e: std::io::Error| Status::internal(format!("writing the snapshot: {e}"));
        let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut bytes = 0u64;
        let mut chunk = Some(first.data);
        while let Some(data) = chunk {
            bytes += data.len() as u64;
            if bytes > self.snapshot_bytes_max {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(Status::resource_exhausted(format!(
                    "snapshot from {} is larger than this member accepts ({} bytes)",
                    hex(message.from),
                    self.snapshot_bytes_max
                )));
            }
            file.write_all(&data).await.map_err(io)?;
            chunk = stream.message().await?.map(|c| c.data);
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let check = part.clone();
        let handlers = self.handlers.clone();
        let (got_index, got_term) =
            tokio::task::spawn_blocking(move || handlers.verify_snapshot(&check))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::data_loss(format!("received snapshot is damaged: {e}")))?;
        if (got_index, got_term) != (index, term) {
            return Err(Status::data_loss(format!(
                "received snapshot holds index {got_index} term {got_term}, its message says \
                 {index} {term}"
            )));
        }
        tokio::fs::rename(&part, &path).await.map_err(io)?;
        snapshots::sync_dir(&self.snap_dir).map_err(io)?;
        tracing::info!(
            from = %hex(message.from),
            index,
            term,
            bytes,
            "received a snapshot"
        );
        Ok(message)
    }

    /// Refuses a batch meant for another cluster or another member, or sent by a stranger.
    fn check(&self, batch: &RaftBatch) -> Result<(), PeerError> {
        let cfg = self.node.config();
        if batch.cluster_id != cfg.cluster_id {
            return Err(PeerError::ClusterMismatch {
                local: cfg.cluster_id,
                remote: batch.cluster_id,
                from: batch.from,
            });
        }
        if batch.to != cfg.member_id {
            return Err(PeerError::MemberMismatch {
                local: cfg.member_id,
                to: batch.to,
                from: batch.from,
            });
        }
        self.check_sender(batch.from)
    }

    /// Whether `message`, whose sender is not the batch's, is one raft-rs passes on unchanged:
    /// a follower forwards a proposal, a ReadIndex request or a leadership transfer to its
    /// leader keeping the original `from` (another member whose request reached it, or the
    /// transferee), so after a leadership change such a message arrives in another member's
    /// batch. Its `from` must still be a member.
    fn forwarded_by_raft(&self, message: &Message) -> bool {
        matches!(
            message.get_msg_type(),
            MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgTransferLeader
        ) && !self.handlers.peer_urls(message.from).is_empty()
    }

    /// Steps every message of an accepted batch. A full raft inbox drops the rest of the batch
    /// (raft retransmits); a stopped node ends the stream.
    fn step_all(&self, batch: RaftBatch) -> Result<(), PeerError> {
        let count = batch.messages.len();
        for (i, bytes) in batch.messages.into_iter().enumerate() {
            let message: Message = decode(&bytes).map_err(|e| PeerError::BadMessage {
                from: batch.from,
                reason: e.to_string(),
            })?;
            if message.to != batch.to
                || (message.from != batch.from && !self.forwarded_by_raft(&message))
            {
                return Err(PeerError::BadMessage {
                    from: batch.from,
                    reason: format!(
                        "{:?} from {} to {} in a batch from {} to {}",
                        message.get_msg_type(),
                        hex(message.from),
                        hex(message.to),
                        hex(batch.from),
                        hex(batch.to)
                    ),
                });
            }
            match self.node.step(message) {
                Ok(()) => {}
                Err(NodeError::TooManyRequests) => {
                    tracing::debug!(
                        from = %hex(batch.from),
                        dropped = count - i,
                        "raft inbox full; dropped peer messages"
                    );
                    return Ok(());
                }
                Err(_) => return Err(PeerError::Stopped),
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotReceived>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        // Counted by sender (etcd's `From`) once the first chunk names it.
        let label: Option<PeerLabel> = decode::<Message>(&first.message)
            .ok()
            .map(|m| [("From", hex(m.from))]);
        let started = std::time::Instant::now();
        let inflight = label.as_ref().map(|l| {
            self.metrics
                .snapshot_receive_inflights
                .get_or_create_owned(l)
        });
        if let Some(g) = &inflight {
            g.inc();
        }
        let received = self.receive_snapshot(first, &mut stream).await;
        if let Some(g) = &inflight {
            g.dec();
        }
        let message = match received {
            Ok(message) => message,
            Err(status) => {
                tracing::warn!(error = %status.message(), "receiving a snapshot failed");
                if let Some(l) = &label {
                    self.metrics
                        .snapshot_receive_failures
                        .get_or_create(l)
                        .inc();
                }
                return Err(status);
            }
        };
        let deadline = tokio::time::Instant::now() + SNAPSHOT_STEP_TIMEOUT;
        loop {
            match self.node.step(message.clone()) {
                Ok(()) => break,
                Err(NodeError::TooManyRequests) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(Status::unavailable(format!("etcdserver: {e}"))),
            }
        }
        if let Some(l) = &label {
            self.metrics.snapshot_receive_success.get_or_create(l).inc();
            self.metrics
                .snapshot_receive_seconds
                .get_or_create(l)
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(Response::new(SnapshotReceived {}))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(self.handlers.members()))
    }

    async fn lease_renew(
        &self,
        request: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id)?;
        let ttl = self.handlers.lease_renew(req.id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveQuery>,
    ) -> Result<Response<LeaseTimeToLiveAnswer>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id)?;
        Ok(Response::new(
            self.handlers.lease_time_to_live(req.id, req.keys).await?,
        ))
    }

    async fn hash_kv(
        &self,
        request: Request<PeerHashKvRequest>,
    ) -> Result<Response<PeerHashKvResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id)?;
        Ok(Response::new(self.handlers.hash_kv(req.revision).await?))
    }

    async fn member_change(
        &self,
        request: Request<MemberChangeRequest>,
    ) -> Result<Response<MemberChangeResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id)?;
        let change = req
            .change
            .ok_or_else(|| Status::invalid_argument("a membership change names no change"))?;
        Ok(Response::new(self.handlers.member_change(change).await?))
    }

    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftStreamEnd>, Status> {
        let mut stream = request.into_inner();
        let mut shutdown = self.shutdown.clone();
        let mut from = None;
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = shutdown.wait_for(|stopping| *stopping) => {
                    return Ok(Response::new(RaftStreamEnd {}));
                }
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => return Ok(Response::new(RaftStreamEnd {})),
                Err(status) => {
                    let from = from.map_or_else(|| "unknown".to_owned(), hex);
                    tracing::debug!(from = %from, error = %status, "peer stream broke");
                    return Err(status);
                }
            };
            if let Err(e) = self.check(&batch) {
                tracing::warn!(error = %e, "refused raft messages from a peer");
                return Err(e.into());
            }
            let bytes: usize = batch.messages.iter().map(Vec::len).sum();
            self.metrics
                .peer_received_bytes
                .get_or_create(&[("From", hex(batch.from))])
                .inc_by(bytes as u64);
            if from.is_none() {
                from = Some(batch.from);
                tracing::debug!(from = %hex(batch.from), "accepted a raft stream from a peer");
            }
            if let Err(e) = self.step_all(batch) {
                if e != PeerError::Stopped {
                    tracing::warn!(error = %e, "refused raft messages from a peer");
                }
                return Err(e.into());
            }
        }
    }
}
