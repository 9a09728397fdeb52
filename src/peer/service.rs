//! The receiving side of the raft transport: the `oxetcdpb.Peer` gRPC service, which checks each
//! batch's cluster and member IDs and steps its messages into raft.

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::{PeerError, hex};
use crate::node::{NodeError, NodeHandle};
use crate::proto::oxetcdpb::peer_server::Peer;
use crate::proto::oxetcdpb::{RaftBatch, RaftStreamEnd};

/// Serves peers' raft streams for this member.
pub struct PeerService {
    node: NodeHandle,
    shutdown: watch::Receiver<bool>,
}

impl PeerService {
    /// A service stepping into `node`; open streams end when `shutdown` turns true.
    pub fn new(node: NodeHandle, shutdown: watch::Receiver<bool>) -> PeerService {
        PeerService { node, shutdown }
    }

    /// Refuses a batch meant for another cluster or another member.
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
        Ok(())
    }

    /// Steps every message of an accepted batch. A full raft inbox drops the rest of the batch
    /// (raft retransmits); a stopped node ends the stream.
    fn step_all(&self, batch: RaftBatch) -> Result<(), PeerError> {
        let count = batch.messages.len();
        for (i, bytes) in batch.messages.into_iter().enumerate() {
            let mut message = Message::default();
            message
                .merge_from_bytes(&bytes)
                .map_err(|e| PeerError::BadMessage {
                    from: batch.from,
                    reason: e.to_string(),
                })?;
            if message.from != batch.from || message.to != batch.to {
                return Err(PeerError::BadMessage {
                    from: batch.from,
                    reason: format!(
                        "message from {} to {} in a batch from {} to {}",
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
