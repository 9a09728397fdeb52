//! The Cluster service: MemberList from this member's view of the membership, and membership
//! changes (add, remove, update, promote) carried through raft one at a time, with etcd's safety
//! checks and errors.
//!
//! Add, remove and promote are raft configuration changes (raft's ConfChange, one member at a
//! time, whose context carries the member record); update changes only peer URLs and is a normal
//! entry. Cluster responses carry no store revision (header revision 0), as in etcd.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{EtcdError, ServerCtx};
use crate::apply;
use crate::node::PeerProgress;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::proto::oxetcdpb::MemberChange;
use crate::proto::oxetcdpb::internal_request::Request as Internal;

/// A learner may be promoted once it has replicated this share of the leader's log (etcd's
/// `readyPercentThreshold`).
const LEARNER_READY_SHARE: f64 = 0.9;

/// Bound on connecting to the leader to forward a membership change.
const LEADER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One membership change at a time per member (raft itself accepts one pending change).
static CHANGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct ClusterService {
    ctx: ServerCtx,
}

impl ClusterService {
    pub fn new(ctx: ServerCtx) -> ClusterService {
        ClusterService { ctx }
    }

    /// The members in ID order, as etcd lists them.
    fn members(&self) -> Vec<Member> {
        let mut members = self
            .ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .clone();
        members.sort_by_key(|m| m.id);
        members
    }

    /// Fails with `member not found` unless `id` is a member.
    fn known_member(&self, id: u64) -> Result<Member, Status> {
        self.members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| EtcdError::MemberNotFound.into())
    }

    /// Refuses URLs another member (other than `except`) already has.
    fn check_peer_urls_free(&self, urls: &[String], except: u64) -> Result<(), Status> {
        let taken = self
            .members()
            .iter()
            .filter(|m| m.id != except)
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(EtcdError::PeerUrlExists.into());
        }
        Ok(())
    }

    /// Which voters this member can vouch for as up (itself always). On the leader: those raft
    /// heard from recently. A follower has no view of its peers, so it counts every voter that
    /// has published its attributes (started); etcd's followers judge from their own peer
    /// connections instead, which this member does not track.
    fn activity(&self) -> impl Fn(&Member) -> bool + use<> {
        let me = self.ctx.node.config().member_id;
        let progress = self.ctx.node.progress();
        move |m: &Member| {
            m.id == me
                || if progress.is_empty() {
                    is_started(m)
                } else {
                    progress
                        .iter()
                        .any(|p: &PeerProgress| p.member_id == m.id && p.recent_active)
                }
        }
    }

    /// etcd's `--strict-reconfig-check` for an add: a new voter needs a quorum of the grown
    /// cluster started (`not enough started members`), and any add needs every voter up
    /// (`unhealthy cluster`).
    fn check_add(&self, members: &[Member], learner: bool) -> Result<(), Status> {
        if !self.ctx.config.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        let started = voters.iter().filter(|m| is_started(m)).count();
        let after = voters.len() + 1;
        // Growing a one-member cluster to two (restoring a cluster from one member's data) is
        // allowed although the new member is not up yet, as in etcd.
        let growing_single = started == 1 && after == 2;
        if !learner && !growing_single && started < quorum(after) {
            return Err(EtcdError::NotEnoughStartedMembers.into());
        }
        let active = self.activity();
        if !voters.iter().all(|m| active(m)) {
            return Err(EtcdError::Unhealthy.into());
        }
        Ok(())
    }

    /// etcd's `--strict-reconfig-check` for removing `target`: a learner may always go; a
    /// voter only if a quorum of the remaining voters is started (`not enough started
    /// members`) and, unless it is down already, if the voters left up still form a quorum
    /// (`unhealthy cluster`).
    fn check_remove(&self, members: &[Member], target: &Member) -> Result<(), Status> {
        if !self.ctx.config.strict_reconfig_check || target.is_learner {
            return Ok(());
        }
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        let remaining = voters.iter().filter(|m| m.id != target.id).count();
        let remaining_started = voters
            .iter()
            .filter(|m| m.id != target.id && is_started(m))
            .count();
        if remaining_started < quorum(remaining) {
            return Err(EtcdError::NotEnoughStartedMembers.into());
        }
        let active = self.activity();
        let me = self.ctx.node.config().member_id;
        if target.id != me && !active(target) {
            // A member that is down is not part of the working quorum: removing it is safe.
            return Ok(());
        }
        let up = voters.iter().filter(|m| active(m)).count();
        if up.saturating_sub(1) < quorum(voters.len().saturating_sub(1)) {
            return Err(EtcdError::Unhealthy.into());
        }
        Ok(())
    }

    /// etcd's `--strict-reconfig-check` for a promotion: the learner (counted as started) and the
    /// started voters must be a quorum of the grown voter set.
    fn check_promote(&self, members: &[Member]) -> Result<(), Status> {
        if !self.ctx.config.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        let started = voters.iter().filter(|m| is_started(m)).count() + 1;
        if started < quorum(voters.len() + 1) {
            return Err(EtcdError::NotEnoughStartedMembers.into());
        }
        Ok(())
    }

    /// The leader's Cluster service when this member is not the leader: followers hand every
    /// membership change to the leader, which alone knows which members are up and how far each
    /// has replicated (etcd forwards promotions the same way).
    async fn leader(&self) -> Result<Option<ClusterClient<Channel>>, Status> {
        let status = self.ctx.node.status();
        if status.is_leader {
            return Ok(None);
        }
        if status.leader_id == 0 {
            return Err(EtcdError::NoLeader.into());
        }
        let urls = self
            .members()
            .into_iter()
            .find(|m| m.id == status.leader_id)
            .map(|m| m.client_ur_ls)
            .unwrap_or_default();
        // A leader that has not published its client URLs yet cannot be reached.
        let url = urls.first().ok_or(EtcdError::NoLeader)?;
        let unreachable = |e: tonic::transport::Error| {
            tracing::warn!(url = %url, error = %e, "cannot reach the leader for a membership change");
            Status::from(EtcdError::Timeout)
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(unreachable)?
            .connect_timeout(LEADER_CONNECT_TIMEOUT)
            .timeout(self.ctx.config.request_timeout)
            .connect()
            .await
            .map_err(unreachable)?;
        Ok(Some(ClusterClient::new(channel)))
    }

    async fn change(&self, cc_type: ConfChangeType, member: Member) -> Result<Vec<Member>, Status> {
        let request_id = self.ctx.node.next_id();
        let mut cc = ConfChange::default();
        cc.set_change_type(cc_type);
        cc.node_id = member.id;
        cc.context = MemberChange {
            request_id,
            member: Some(member),
        }
        .encode_to_vec();
        let reply = self
            .ctx
            .node
            .propose_conf_change(request_id, cc)
            .await
            .map_err(EtcdError::from)?;
        members_of(reply)
    }
}

fn members_of(reply: Result<apply::Response, apply::ApplyError>) -> Result<Vec<Member>, Status> {
    match reply {
        Ok(apply::Response::Members(mut members)) => {
            members.sort_by_key(|m| m.id);
            Ok(members)
        }
        Ok(other) => Err(Status::internal(format!(
            "unexpected result of a membership change: {other:?}"
        ))),
        Err(e) => Err(EtcdError::from(e).into()),
    }
}

/// Votes needed among `voters` voters.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A member that has published its name (and client URLs) since it joined.
fn is_started(member: &Member) -> bool {
    !member.name.is_empty()
}

/// Checks peer URLs by etcd's rules and returns them sorted, as etcd stores them.
fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    if urls.is_empty() || !urls.iter().all(|url| is_valid_peer_url(url)) {
        return Err(EtcdError::MemberBadUrls);
    }
    let mut sorted = urls.to_vec();
    sorted.sort();
    Ok(sorted)
}

/// etcd's rules for a peer URL: scheme `http` or `https`, an explicit `host:port`, no path
/// (etcd also takes `unix` and `unixs`, which the peer transport cannot dial). The `url` crate
/// hides a default port and shows an empty path as `/`, so those two are read from the text.
fn is_valid_peer_url(raw: &str) -> bool {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return false;
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return false;
    }
    let (authority, after) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if after.starts_with('/') {
        return false;
    }
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let has_port = match host_port.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, port)| port.starts_with(':')),
        None => host_port.matches(':').count() == 1,
    };
    has_port && url::Url::parse(raw).is_ok_and(|url| url.host_str().is_some())
}

/// A new member's ID: from its peer URLs, the cluster token and the time, so a member re-added
/// with the same URLs gets a new ID (as in etcd).
fn new_member_id(peer_urls: &[String], token: &str) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    crate::node::id::member_id(peer_urls, &format!("{token}/{now}"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        // etcd's order: the URLs' form, the cluster's health, then the change itself.
        let peer_urls = parse_peer_urls(&req.peer_ur_ls)?;
        if let Some(mut leader) = self.leader().await? {
            let mut resp = leader.member_add(req).await?.into_inner();
            resp.header = Some(self.ctx.header(0));
            return Ok(Response::new(resp));
        }
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let members = self.members();
        self.check_add(&members, req.is_learner)?;
        self.check_peer_urls_free(&peer_urls, 0)?;
        if req.is_learner {
            let learners = members.iter().filter(|m| m.is_learner).count();
            if learners >= self.ctx.config.learners_max as usize {
                return Err(EtcdError::TooManyLearners.into());
            }
        }
        let id = new_member_id(&peer_urls, &self.ctx.config.initial_cluster_token);
        if members.iter().any(|m| m.id == id) {
            return Err(EtcdError::MemberExists.into());
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        let cc_type = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self.change(cc_type, member.clone()).await?;
        tracing::info!(member_id = %format!("{id:x}"), learner = req.is_learner, "added member");
        Ok(Response::new(MemberAddResponse {
            header: Some(self.ctx.header(0)),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let req = request.into_inner();
        if let Some(mut leader) = self.leader().await? {
            let mut resp = leader.member_remove(req).await?.into_inner();
            resp.header = Some(self.ctx.header(0));
            return Ok(Response::new(resp));
        }
        let id = req.id;
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let member = self.known_member(id)?;
        self.check_remove(&self.members(), &member)?;
        let members = self.change(ConfChangeType::RemoveNode, member).await?;
        tracing::info!(member_id = %format!("{id:x}"), "removed member");
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.ctx.header(0)),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        if let Some(mut leader) = self.leader().await? {
            let mut resp = leader.member_update(req).await?.into_inner();
            resp.header = Some(self.ctx.header(0));
            return Ok(Response::new(resp));
        }
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let mut member = self.known_member(req.id)?;
        member.peer_ur_ls = parse_peer_urls(&req.peer_ur_ls)?;
        self.check_peer_urls_free(&member.peer_ur_ls, req.id)?;
        let change = MemberChange {
            request_id: 0,
            member: Some(member),
        };
        let reply = self
            .ctx
            .node
            .propose(Internal::MemberUpdate(change))
            .await
            .map_err(EtcdError::from)?;
        let members = members_of(reply)?;
        tracing::info!(member_id = %format!("{:x}", req.id), peer_urls = ?req.peer_ur_ls, "updated member");
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.ctx.header(0)),
            members,
        }))
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
        let req = request.into_inner();
        if let Some(mut leader) = self.leader().await? {
            let mut resp = leader.member_promote(req).await?.into_inner();
            resp.header = Some(self.ctx.header(0));
            return Ok(Response::new(resp));
        }
        let id = req.id;
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let member = self.known_member(id)?;
        if !member.is_learner {
            return Err(EtcdError::MemberNotLearner.into());
        }
        let progress = self.ctx.node.progress();
        if !progress.is_empty() {
            let leader = progress.iter().map(|p| p.matched).max().unwrap_or_default();
            let learner = progress
                .iter()
                .find(|p| p.member_id == id)
                .map(|p| p.matched)
                .unwrap_or_default();
            if (learner as f64) < (leader as f64) * LEARNER_READY_SHARE {
                return Err(EtcdError::LearnerNotReady.into());
            }
        }
        self.check_promote(&self.members())?;
        let members = self.change(ConfChangeType::AddNode, member).await?;
        tracing::info!(member_id = %format!("{id:x}"), "promoted learner");
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.ctx.header(0)),
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_follow_etcd_rules() {
        let cases = [
            ("http://127.0.0.1:2380", true),
            ("https://[::1]:2380", true),
            ("http://127.0.0.1:80", true),
            ("HTTP://example.com:2380", true),
            ("http://127.0.0.1:2380?x=1", true),
            ("http://127.0.0.1", false),
            ("http://[::1]", false),
            ("http://127.0.0.1:2380/", false),
            ("http://127.0.0.1:2380/raft", false),
            ("127.0.0.1:2380", false),
            ("ftp://127.0.0.1:2380", false),
            ("http//127.0.0.1:2380", false),
            ("", false),
        ];
        for (url, valid) in cases {
            assert_eq!(is_valid_peer_url(url), valid, "{url:?}");
        }
    }

    #[test]
    fn peer_urls_are_stored_sorted() {
        let urls = ["http://b:2".to_string(), "http://a:1".to_string()];
        assert_eq!(
            parse_peer_urls(&urls).expect("both URLs are valid"),
            ["http://a:1", "http://b:2"]
        );
        assert!(parse_peer_urls(&[]).is_err(), "no URL at all is refused");
    }
}
