//! The Cluster service: MemberList from this member's view of the membership; member changes
//! are refused until multi-member support exists (with etcd's errors for unknown member IDs).
//!
//! Cluster responses carry no store revision (header revision 0), as in etcd.

use tonic::{Request, Response, Status};

use super::{EtcdError, ServerCtx};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};

const MEMBER_CHANGES_UNSUPPORTED: &str = "member changes arrive with multi-member support";

pub struct ClusterService {
    ctx: ServerCtx,
}

impl ClusterService {
    pub fn new(ctx: ServerCtx) -> ClusterService {
        ClusterService { ctx }
    }

    fn members(&self) -> Vec<Member> {
        self.ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .clone()
    }

    fn member(&self, id: u64) -> Option<Member> {
        self.ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .iter()
            .find(|m| m.id == id)
            .cloned()
    }

    /// Fails with `member not found` unless `id` is a member.
    fn known_member(&self, id: u64) -> Result<Member, Status> {
        self.member(id)
            .ok_or_else(|| EtcdError::MemberNotFound.into())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Status::unimplemented(MEMBER_CHANGES_UNSUPPORTED))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.known_member(request.into_inner().id)?;
        Err(Status::unimplemented(MEMBER_CHANGES_UNSUPPORTED))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.known_member(request.into_inner().id)?;
        Err(Status::unimplemented(MEMBER_CHANGES_UNSUPPORTED))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.ctx
                .node
                .read_barrier()
                .await
                .map_err(EtcdError::from)?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.header(0)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let member = self.known_member(request.into_inner().id)?;
        if !member.is_learner {
            return Err(EtcdError::MemberNotLearner.into());
        }
        Err(Status::unimplemented(MEMBER_CHANGES_UNSUPPORTED))
    }
}
