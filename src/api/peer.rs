//! What the peer service asks of the API layer ([`PeerHandlersImpl`]): leases renewed,
//! time-to-live queries and membership changes forwarded by followers, answered by this member as
//! leader, the member list for members joining the cluster, a member's peer URLs for the leader
//! forwarder, the check of a received snapshot file (the snapshot format's own) and this
//! member's KV hash for the corruption checks.

use std::path::Path;

use tonic::Status;

use super::{EtcdError, ServerCtx, cluster, lease};
use crate::peer::PeerHandlers;
use crate::proto::oxetcdpb::{
    LeaseTimeToLiveAnswer, MemberChangeRefusal, MemberChangeResponse, MembersResponse,
    PeerHashKvResponse, member_change_request,
};

/// The peer service's handlers, over the same [`ServerCtx`] as the client-facing services.
pub struct PeerHandlersImpl {
    ctx: ServerCtx,
}

impl PeerHandlersImpl {
    pub fn new(ctx: ServerCtx) -> PeerHandlersImpl {
        PeerHandlersImpl { ctx }
    }
}

#[tonic::async_trait]
impl PeerHandlers for PeerHandlersImpl {
    /// Answers `etcdserver: not leader` when this member does not lead, so the forwarding
    /// follower asks again once it knows the new leader.
    async fn lease_renew(&self, id: i64) -> Result<i64, Status> {
        lease::renew_on_leader(&self.ctx, id)
            .await
            .map_err(Status::from)
    }

    async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveAnswer, Status> {
        lease::time_to_live_on_leader(&self.ctx, id, keys)
            .await
            .map_err(Status::from)
    }

    fn members(&self) -> MembersResponse {
        let membership = self
            .ctx
            .membership
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        MembersResponse {
            cluster_id: membership.cluster_id,
            member_id: membership.member_id,
            members: membership.members.clone(),
        }
    }

    fn peer_urls(&self, member_id: u64) -> Vec<String> {
        let membership = self
            .ctx
            .membership
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        membership
            .members
            .iter()
            .find(|member| member.id == member_id)
            .map(|member| member.peer_ur_ls.clone())
            .unwrap_or_default()
    }

    fn verify_snapshot(&self, file: &Path) -> Result<(u64, u64), String> {
        crate::snapshot::format::verify_file(file)
            .map(|pos| (pos.index, pos.term))
            .map_err(|e| e.to_string())
    }

    /// Answers `etcdserver: not leader` as an error status when this member does not lead (the
    /// follower asks again); the leader's refusal travels in the response with etcd's code and
    /// message, so the follower passes it on unchanged.
    async fn member_change(
        &self,
        change: member_change_request::Change,
    ) -> Result<MemberChangeResponse, Status> {
        match cluster::change_on_leader(&self.ctx, change).await {
            Ok(changed) => Ok(changed),
            Err(EtcdError::NotLeader) => Err(EtcdError::NotLeader.into()),
            Err(refused) => Ok(MemberChangeResponse {
                refusal: Some(MemberChangeRefusal {
                    code: refused.code() as i32,
                    message: refused.to_string(),
                }),
                member: None,
                members: Vec::new(),
            }),
        }
    }

    async fn hash_kv(&self, revision: i64) -> Result<PeerHashKvResponse, Status> {
        Ok(hash_kv(&self.ctx, revision).await?)
    }
}

/// This member's KV hash at `revision` (0: current) on a blocking thread, as the peers' HashKV
/// answers it; the corruption checks take their own from here too.
pub async fn hash_kv(ctx: &ServerCtx, revision: i64) -> Result<PeerHashKvResponse, EtcdError> {
    let mvcc = ctx.mvcc.clone();
    let hashed = super::blocking(move || mvcc.hash_kv(revision).map_err(EtcdError::from)).await?;
    Ok(PeerHashKvResponse {
        member_id: ctx.node.config().member_id,
        revision: hashed.current_rev,
        hash: hashed.hash,
        compact_revision: hashed.compact_rev,
        hash_revision: hashed.hash_rev,
    })
}
