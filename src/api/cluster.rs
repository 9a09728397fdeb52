//! The Cluster service: MemberList from this member's view of the membership, and membership
//! changes (add, remove, update, promote) carried through raft one at a time, with etcd's safety
//! checks and errors.
//!
//! Only the leader runs a change ([`change_on_leader`]): it alone knows which members are up and
//! how far each has replicated. A follower forwards the client's request to it over the peer
//! service ([`LeaderForwarder::member_change`]) and passes its answer, or its refusal with etcd's
//! code and message, back to the client.
//!
//! Add, remove and promote are raft configuration changes (raft's ConfChange, one member at a
//! time, whose context carries the member record); update changes only peer URLs and is a normal
//! entry. Cluster responses carry no store revision (header revision 0), as in etcd.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType};
use tonic::{Request, Response, Status};

use super::{EtcdError, ServerCtx};
use crate::node::{MemberPeerUrls, Origin, PeerProgress};
use crate::peer::forward::{ForwardError, LeaderForwarder};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::proto::oxetcdpb::member_change_request::Change;
use crate::proto::oxetcdpb::{MemberChange, MemberChangeResponse};

/// A learner may be promoted once it has replicated this share of the leader's log (etcd's
/// `readyPercentThreshold`).
const LEARNER_READY_SHARE: f64 = 0.9;

/// One membership change at a time per member (raft itself accepts one pending change).
static CHANGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct ClusterService {
    ctx: ServerCtx,
    forwarder: LeaderForwarder,
}

impl ClusterService {
    pub fn new(ctx: ServerCtx) -> ClusterService {
        let handlers = std::sync::Arc::new(super::peer::PeerHandlersImpl::new(ctx.clone()));
        let forwarder =
            LeaderForwarder::new(ctx.node.clone(), handlers, ctx.config.peer_dialer.clone());
        ClusterService { ctx, forwarder }
    }

    /// Runs `change` on the leader: here when this member leads, else forwarded to it. Fails
    /// at once with `no leader` when there is none.
    async fn change(&self, change: Change) -> Result<MemberChangeResponse, EtcdError> {
        if self.ctx.node.status().leader_id == 0 {
            return Err(EtcdError::NoLeader);
        }
        match self.forwarder.member_change(change.clone()).await {
            Err(ForwardError::LocalLeader) => change_on_leader(&self.ctx, change).await,
            other => other.map_err(EtcdError::from),
        }
    }
}

/// The members in ID order, as etcd lists them.
fn members(ctx: &ServerCtx) -> Vec<Member> {
    let mut members = ctx
        .membership
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .members
        .clone();
    members.sort_by_key(|m| m.id);
    members
}

/// Runs a client's membership change on this member, which must lead (else `not leader`, and
/// nothing is done): etcd's checks, then the change through raft. Serves this member's clients
/// and the changes followers forward alike.
pub async fn change_on_leader(
    ctx: &ServerCtx,
    change: Change,
) -> Result<MemberChangeResponse, EtcdError> {
    if !ctx.node.status().is_leader {
        return Err(EtcdError::NotLeader);
    }
    let leader = Leader { ctx };
    match change {
        Change::Add(req) => leader.add(req).await,
        Change::Remove(req) => leader.remove(req).await,
        Change::Update(req) => leader.update(req).await,
        Change::Promote(req) => leader.promote(req).await,
    }
}

/// The leader's side of membership changes.
struct Leader<'a> {
    ctx: &'a ServerCtx,
}

impl Leader<'_> {
    fn members(&self) -> Vec<Member> {
        members(self.ctx)
    }

    /// Fails with `member not found` unless `id` is a member.
    fn known_member(&self, id: u64) -> Result<Member, EtcdError> {
        self.members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(EtcdError::MemberNotFound)
    }

    /// Refuses URLs another member (other than `except`) already has.
    fn check_peer_urls_free(&self, urls: &[String], except: u64) -> Result<(), EtcdError> {
        let taken = self
            .members()
            .iter()
            .filter(|m| m.id != except)
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(EtcdError::PeerUrlExists);
        }
        Ok(())
    }

    /// Which voters the leader can vouch for as up: itself, and those raft heard from recently.
    /// (Should leadership have moved on meanwhile, the progress is empty and only members that
    /// have published their attributes count.)
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
    fn check_add(&self, members: &[Member], learner: bool) -> Result<(), EtcdError> {
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
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        let active = self.activity();
        if !voters.iter().all(|m| active(m)) {
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `--strict-reconfig-check` for removing `target`: a learner may always go; a
    /// voter only if a quorum of the remaining voters is started (`not enough started
    /// members`) and, unless it is down already, if the voters left up still form a quorum
    /// (`unhealthy cluster`).
    fn check_remove(&self, members: &[Member], target: &Member) -> Result<(), EtcdError> {
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
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        let active = self.activity();
        let me = self.ctx.node.config().member_id;
        if target.id != me && !active(target) {
            // A member that is down is not part of the working quorum: removing it is safe.
            return Ok(());
        }
        let up = voters.iter().filter(|m| active(m)).count();
        if up.saturating_sub(1) < quorum(voters.len().saturating_sub(1)) {
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `--strict-reconfig-check` for a promotion: the learner (counted as started) and the
    /// started voters must be a quorum of the grown voter set.
    fn check_promote(&self, members: &[Member]) -> Result<(), EtcdError> {
        if !self.ctx.config.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        let started = voters.iter().filter(|m| is_started(m)).count() + 1;
        if started < quorum(voters.len() + 1) {
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        Ok(())
    }

    /// Proposes a raft configuration change for `member` and returns the member list after it,
    /// in ID order.
    async fn conf_change(
        &self,
        cc_type: ConfChangeType,
        member: Member,
    ) -> Result<Vec<Member>, EtcdError> {
        let request_id = self.ctx.node.next_id();
        let mut cc = ConfChange::default();
        cc.set_change_type(cc_type);
        cc.node_id = member.id;
        cc.context = MemberChange {
            request_id,
            member: Some(member),
        }
        .encode_to_vec();
        let mut members = self.ctx.node.propose_conf_change(request_id, cc).await?;
        members.sort_by_key(|m| m.id);
        Ok(members)
    }

    async fn add(&self, req: MemberAddRequest) -> Result<MemberChangeResponse, EtcdError> {
        // etcd's order: the URLs' form, the cluster's health, then the change itself.
        let peer_urls = parse_peer_urls(&req.peer_ur_ls)?;
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let members = self.members();
        self.check_add(&members, req.is_learner)?;
        self.check_peer_urls_free(&peer_urls, 0)?;
        if req.is_learner {
            let learners = members.iter().filter(|m| m.is_learner).count();
            if learners >= self.ctx.config.learners_max as usize {
                return Err(EtcdError::TooManyLearners);
            }
        }
        let id = new_member_id(&peer_urls, &self.ctx.config.initial_cluster_token);
        if members.iter().any(|m| m.id == id) {
            return Err(EtcdError::MemberExists);
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
        let members = self.conf_change(cc_type, member.clone()).await?;
        tracing::info!(member_id = %format!("{id:x}"), learner = req.is_learner, "added member");
        Ok(changed(Some(member), members))
    }

    async fn remove(&self, req: MemberRemoveRequest) -> Result<MemberChangeResponse, EtcdError> {
        let id = req.id;
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let member = self.known_member(id)?;
        self.check_remove(&self.members(), &member)?;
        let members = self.conf_change(ConfChangeType::RemoveNode, member).await?;
        tracing::info!(member_id = %format!("{id:x}"), "removed member");
        Ok(changed(None, members))
    }

    async fn update(&self, req: MemberUpdateRequest) -> Result<MemberChangeResponse, EtcdError> {
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let mut member = self.known_member(req.id)?;
        member.peer_ur_ls = parse_peer_urls(&req.peer_ur_ls)?;
        self.check_peer_urls_free(&member.peer_ur_ls, req.id)?;
        // Root's call, checked where the client called (this may be the leader it was forwarded
        // to).
        let mut members = self
            .ctx
            .node
            .propose(MemberPeerUrls(member), Origin::Member)
            .await?;
        members.sort_by_key(|m| m.id);
        tracing::info!(member_id = %format!("{:x}", req.id), peer_urls = ?req.peer_ur_ls, "updated member");
        Ok(changed(None, members))
    }

    async fn promote(&self, req: MemberPromoteRequest) -> Result<MemberChangeResponse, EtcdError> {
        let id = req.id;
        let _one_at_a_time = CHANGE_LOCK.lock().await;
        let member = self.known_member(id)?;
        if !member.is_learner {
            return Err(EtcdError::MemberNotLearner);
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
                return Err(EtcdError::LearnerNotReady);
            }
        }
        self.check_promote(&self.members())?;
        let members = self.conf_change(ConfChangeType::AddNode, member).await?;
        tracing::info!(member_id = %format!("{id:x}"), "promoted learner");
        Ok(changed(None, members))
    }
}

/// A change's answer: the member added (add only) and the member list after it.
fn changed(member: Option<Member>, members: Vec<Member>) -> MemberChangeResponse {
    MemberChangeResponse {
        refusal: None,
        member,
        members,
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

/// etcd's rules for a peer URL: scheme `http`, `https` or `unix`, an explicit `host:port`, no
/// path (etcd also takes `unixs`, TLS over a unix socket, which the peer transport cannot
/// dial). The `url` crate
/// hides a default port and shows an empty path as `/`, so those two are read from the text.
fn is_valid_peer_url(raw: &str) -> bool {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return false;
    };
    if !["http", "https", "unix"]
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known))
    {
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
    crate::membership::member_id(peer_urls, &format!("{token}/{now}"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.ctx.admin(&request).await?;
        let req = request.into_inner();
        // Malformed URLs are refused here, before the leader is asked.
        parse_peer_urls(&req.peer_ur_ls)?;
        let changed = self.change(Change::Add(req)).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.ctx.header(0)),
            member: changed.member,
            members: changed.members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.ctx.admin(&request).await?;
        let changed = self.change(Change::Remove(request.into_inner())).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.ctx.header(0)),
            members: changed.members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.ctx.admin(&request).await?;
        let changed = self.change(Change::Update(request.into_inner())).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.ctx.header(0)),
            members: changed.members,
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
            members: members(&self.ctx),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.ctx.admin(&request).await?;
        let changed = self.change(Change::Promote(request.into_inner())).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.ctx.header(0)),
            members: changed.members,
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
            ("unix://localhost:2380", true),
            ("unix://localhost", false),
            ("unixs://localhost:2380", false),
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
