//! The raft transport between members: [`transport`] carries this member's raft messages to its
//! peers, [`service`] takes theirs in, both over the `oxetcdpb.Peer` gRPC service on the peer URLs.
//!
//! Each direction between two members is one long-lived client stream of [`RaftBatch`]es
//! (pipelined, never acknowledged batch by batch: raft retransmits what is lost). Every batch
//! names the cluster and both members; a receiver refuses batches for another cluster or another
//! member. A transport failure is reported to raft (`report_unreachable`) so replication to that
//! peer falls back to probing instead of waiting on a dead stream.
//!
//! Raft snapshots are not carried yet: a `MsgSnapshot` is reported to raft as failed at once.
//!
//! [`RaftBatch`]: crate::proto::oxetcdpb::RaftBatch

pub mod service;
pub mod transport;

pub use service::PeerService;
pub use transport::{PeerLinks, PeerTransport, TransportConfig};

/// Soft bound on the encoded raft messages in one batch: a batch stops growing once it reaches
/// this, so it is at most this plus one message.
pub const BATCH_BYTES_MAX: usize = 4 << 20;

/// Why a peer's batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("cluster ID mismatch: ours {local:x}, the sender's {remote:x} (member {from:x})")]
    ClusterMismatch { local: u64, remote: u64, from: u64 },
    #[error(
        "member ID mismatch: this is member {local:x}, the batch is for {to:x} (from {from:x})"
    )]
    MemberMismatch { local: u64, to: u64, from: u64 },
    #[error("undecodable raft message from member {from:x}: {reason}")]
    BadMessage { from: u64, reason: String },
    #[error("server stopped")]
    Stopped,
}

impl From<PeerError> for tonic::Status {
    fn from(e: PeerError) -> tonic::Status {
        match e {
            PeerError::ClusterMismatch { .. } => {
                tonic::Status::failed_precondition("etcdserver: cluster ID mismatch")
            }
            PeerError::MemberMismatch { .. } => {
                tonic::Status::failed_precondition("etcdserver: member ID mismatch")
            }
            PeerError::BadMessage { .. } => tonic::Status::invalid_argument(e.to_string()),
            PeerError::Stopped => tonic::Status::unavailable("etcdserver: server stopped"),
        }
    }
}

/// The largest batch a member accepts from a peer: [`BATCH_BYTES_MAX`] plus one raft message,
/// which holds at most one entry beyond raft's 1 MiB per-message limit, and an entry carries at
/// most `request_bytes_max` of request.
pub fn batch_bytes_limit(request_bytes_max: usize) -> usize {
    BATCH_BYTES_MAX + (1 << 20) + request_bytes_max + (64 << 10)
}

/// Short form of a member ID for logs, as etcd prints them.
fn hex(id: u64) -> String {
    format!("{id:x}")
}
