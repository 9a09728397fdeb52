//! The raft transport between members: [`transport`] carries this member's raft messages to its
//! peers, [`service`] takes theirs in, both over the `oxetcdpb.Peer` gRPC service on the peer URLs.
//!
//! Each direction between two members is one long-lived client stream of [`RaftBatch`]es
//! (pipelined, never acknowledged batch by batch: raft retransmits what is lost). Every batch
//! names the cluster and both members; a receiver refuses batches for another cluster or another
//! member. A transport failure is reported to raft (`report_unreachable`) so replication to that
//! peer falls back to probing instead of waiting on a dead stream.
//!
//! A raft snapshot travels on its own `Peer/Snapshot` stream: the raft message first, then the
//! snapshot file (named by the snapshot's term and index, see [`crate::raft::snapshots`]) in
//! chunks; the receiver checks the file's CRC and position before it steps the message into
//! raft, and the sender reports the outcome to raft (`report_snapshot`).
//!
//! Followers forward lease keep-alives, time-to-live queries and membership changes to the leader
//! ([`forward`]);
//! a member joining an existing cluster asks a peer for the member list (`Peer/Members`); the
//! corruption checks ask peers for their KV hash (`Peer/HashKV`).
//!
//! Every channel to a peer is opened by [`dial::PeerDialer`]: plain for http:// peer URLs, over
//! rustls for https:// ones (the client configuration comes from the `tls` module through
//! `server`).
//!
//! [`RaftBatch`]: crate::proto::oxetcdpb::RaftBatch

pub mod dial;
pub mod forward;
pub mod service;
pub mod transport;

pub use service::PeerService;

use std::path::Path;

use crate::proto::oxetcdpb::{
    LeaseTimeToLiveAnswer, MemberChangeResponse, MembersResponse, PeerHashKvResponse,
    member_change_request,
};

/// What the peer service and the leader forwarder ask of the rest of the member (implemented by
/// the API layer, which owns the lessor, the membership and the snapshot format).
#[tonic::async_trait]
pub trait PeerHandlers: Send + Sync + 'static {
    /// Renews lease `id` on this member, which must be the leader; returns the new TTL in
    /// seconds, 0 when the lease does not exist.
    async fn lease_renew(&self, id: i64) -> Result<i64, tonic::Status>;
    /// The lease's remaining TTL as this member (the leader) sees it.
    async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveAnswer, tonic::Status>;
    /// The cluster ID, this member's ID and the member list.
    fn members(&self) -> MembersResponse;
    /// The peer URLs of member `member_id` (empty when it is not in the member list).
    fn peer_urls(&self, member_id: u64) -> Vec<String>;
    /// Reads a received snapshot file through, checking its structure and checksum; returns the
    /// raft position it holds as (index, term), or why it is damaged. Blocks on file I/O.
    fn verify_snapshot(&self, file: &Path) -> Result<(u64, u64), String>;
    /// Runs a membership change forwarded by a follower on this member, which must be the
    /// leader (else the error status `etcdserver: not leader`, and nothing is done); a refusal
    /// of the change itself is answered in the response.
    async fn member_change(
        &self,
        change: member_change_request::Change,
    ) -> Result<MemberChangeResponse, tonic::Status>;
    /// This member's KV hash at `revision` (0: its current revision), as Maintenance/HashKV
    /// computes it, with etcd's errors for a future or compacted revision.
    async fn hash_kv(&self, revision: i64) -> Result<PeerHashKvResponse, tonic::Status>;
}
pub use dial::PeerDialer;
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
    #[error("raft messages from {from:x}, which is not in this member's member list")]
    UnknownSender { from: u64 },
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
            PeerError::UnknownSender { .. } => tonic::Status::permission_denied(e.to_string()),
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

/// The largest snapshot file a member accepts from a peer: twice the backend quota (the
/// revisions a snapshot carries are what the quota bounds, plus their framing) and 64 MiB of
/// slack for leases, users and members (a million leases take about 40 MB). A larger stream is
/// refused and its partial file removed, so a confused or hostile sender cannot fill the data
/// directory's disk.
pub fn snapshot_bytes_limit(quota_backend_bytes: u64) -> u64 {
    quota_backend_bytes
        .saturating_mul(2)
        .saturating_add(SNAPSHOT_SLACK_BYTES)
}

/// See [`snapshot_bytes_limit`].
pub const SNAPSHOT_SLACK_BYTES: u64 = 64 << 20;

/// Short form of a member ID for logs, as etcd prints them.
fn hex(id: u64) -> String {
    format!("{id:x}")
}
