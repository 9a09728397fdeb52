//! [`NodeHandle`], the only way into consensus: proposals, ReadIndex barriers, leader transfer
//! and status, each a message to the raft thread over its bounded inbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::SnapshotStatus;
use raft::eraftpb::{ConfChange, Message};
use tokio::sync::{oneshot, watch};

use super::proposal::{self, Origin, Proposal, ProposeError};
use super::{NodeConfig, NodeError, NodeMsg, NodeStatus, PeerProgress, Shared, Traced, id};
use crate::apply::{ApplyError, Reply, Waiters};
use crate::metrics::Metrics;
use crate::proto::etcdserverpb::{Member, ResponseHeader};
use crate::proto::oxetcdpb::InternalRequest;
use crate::telemetry::TRACE_TARGET;

pub(super) struct HandleInner {
    pub(super) tx: SyncSender<NodeMsg>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) shared: Arc<Shared>,
    pub(super) applied_rx: watch::Receiver<u64>,
    pub(super) ids: id::IdGen,
    pub(super) cfg: NodeConfig,
    pub(super) metrics: Arc<Metrics>,
}

/// The way into consensus. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) inner: Arc<HandleInner>,
}

/// The running node's threads; join them after every handle is dropped.
pub struct NodeThreads {
    pub(super) raft: JoinHandle<()>,
    pub(super) apply: JoinHandle<()>,
}

impl NodeThreads {
    pub fn join(self) {
        let _ = self.raft.join();
        let _ = self.apply.join();
    }
}

impl NodeHandle {
    /// A fresh cluster-unique ID (requests, leases).
    pub fn next_id(&self) -> u64 {
        self.inner.ids.next()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    pub fn status(&self) -> NodeStatus {
        let s = &self.inner.shared;
        NodeStatus {
            member_id: self.inner.cfg.member_id,
            cluster_id: self.inner.cfg.cluster_id,
            leader_id: s.leader_id.load(Ordering::Acquire),
            term: s.term.load(Ordering::Acquire),
            commit_index: s.commit.load(Ordering::Acquire),
            applied_index: s.applied.load(Ordering::Acquire),
            is_leader: s.is_leader.load(Ordering::Acquire),
            leader_changes: s.leader_changes.load(Ordering::Acquire),
            raft_first_index: s.raft_first.load(Ordering::Acquire),
            raft_last_index: s.raft_last.load(Ordering::Acquire),
        }
    }

    fn send(&self, msg: NodeMsg) -> Result<(), NodeError> {
        self.inner.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => NodeError::TooManyRequests,
            TrySendError::Disconnected(_) => NodeError::Stopped,
        })
    }

    /// Hands a raft message from a peer to raft. Fails with `TooManyRequests` when the inbox is
    /// full (the peer's transport retries; raft tolerates lost messages).
    pub fn step(&self, message: Message) -> Result<(), NodeError> {
        self.send(NodeMsg::Step(Box::new(message)))
    }

    /// Tells raft that messages to `peer` could not be delivered.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.send(NodeMsg::Unreachable(peer));
    }

    /// Tells raft how sending a snapshot to `peer` ended.
    pub fn report_snapshot(&self, peer: u64, status: SnapshotStatus) {
        let _ = self.send(NodeMsg::SnapshotStatus(peer, status));
    }

    /// Asks the leader to hand leadership to `target` (raft's leader transfer: the target is
    /// brought up to date, then told to campaign at once). Returns when the request is queued;
    /// watch [`NodeHandle::status`] for the outcome.
    pub fn transfer_leader(&self, target: u64) -> Result<(), NodeError> {
        self.send(NodeMsg::TransferLeader(target))
    }

    /// The raft or apply thread, if one has been busy with a single step of its loop for at
    /// least `threshold` (stuck on a disk, a lock, a bug), and for how long. Threads waiting
    /// for work are not stalled.
    pub fn stalled_thread(&self, threshold: Duration) -> Option<(&'static str, Duration)> {
        let shared = &self.inner.shared;
        [("raft", &shared.raft_busy), ("apply", &shared.apply_busy)]
            .into_iter()
            .filter_map(|(name, stamp)| stamp.busy_for().map(|busy| (name, busy)))
            .find(|(_, busy)| *busy >= threshold)
    }

    /// On the leader: each member's replication progress (this member included).
    pub fn progress(&self) -> Vec<PeerProgress> {
        self.inner
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Proposes a membership change whose context is a `MemberChange` naming `request_id`;
    /// waits until it is applied on this member and returns the member list after it.
    pub async fn propose_conf_change(
        &self,
        request_id: u64,
        cc: ConfChange,
    ) -> Result<Vec<Member>, ProposeError> {
        let rx = self.inner.waiters.register(request_id);
        if let Err(e) = self.send(NodeMsg::ProposeConfChange { id: request_id, cc }) {
            self.inner.waiters.cancel(request_id);
            return Err(e.into());
        }
        let reply = self
            .outcome(request_id, rx, self.inner.cfg.request_timeout)
            .await?;
        proposal::members(reply?).ok_or(ProposeError::UnexpectedResponse {
            request: "membership change",
        })
    }

    /// Asks the raft thread to stop after what it already took in; the apply thread follows once
    /// it has applied everything handed to it. Later requests fail with `Stopped`.
    pub fn stop(&self) {
        // A full inbox cannot take the message; blocking here is fine: the raft thread drains it.
        let _ = self.inner.tx.send(NodeMsg::Stop);
    }

    /// Proposes `request`, waits until it is applied on this member and returns its response,
    /// whose header (if it has one) carries this member's identity and current term.
    pub async fn propose<P: Proposal>(
        &self,
        request: P,
        origin: Origin,
    ) -> Result<P::Response, ProposeError> {
        self.propose_entry(request, origin, 0, self.inner.cfg.request_timeout)
            .await
    }

    /// [`NodeHandle::propose`] for a write the backend quota limits (Put, Txn, LeaseGrant):
    /// `quota_bytes` (0: none) travels in the entry, and every member refuses the write at apply
    /// with `ApplyError::NoSpace` if it would outgrow it.
    pub async fn propose_within_quota<P: Proposal>(
        &self,
        request: P,
        origin: Origin,
        quota_bytes: u64,
    ) -> Result<P::Response, ProposeError> {
        self.propose_entry(request, origin, quota_bytes, self.inner.cfg.request_timeout)
            .await
    }

    /// [`propose`](Self::propose), giving up after `timeout` instead of the request timeout: for
    /// a member's own idempotent requests that are better retried soon than waited for (a
    /// proposal forwarded to the leader is lost, not refused, when the link drops it).
    pub async fn propose_within<P: Proposal>(
        &self,
        request: P,
        origin: Origin,
        timeout: Duration,
    ) -> Result<P::Response, ProposeError> {
        self.propose_entry(request, origin, 0, timeout).await
    }

    async fn propose_entry<P: Proposal>(
        &self,
        request: P,
        origin: Origin,
        quota_bytes: u64,
        timeout: Duration,
    ) -> Result<P::Response, ProposeError> {
        let id = self.next_id();
        let data = InternalRequest {
            id,
            caller: origin.into_caller(),
            request: Some(request.into_request()),
            quota_bytes,
        }
        .encode_to_vec();
        if data.len() > self.inner.cfg.max_request_bytes {
            return Err(NodeError::RequestTooLarge.into());
        }
        let shared = &self.inner.shared;
        let committed = shared.commit.load(Ordering::Acquire);
        if committed > shared.applied.load(Ordering::Acquire) + super::APPLY_GAP_MAX {
            return Err(NodeError::TooManyRequests.into());
        }
        let rx = self.inner.waiters.register(id);
        let propose_span = tracing::info_span!(target: TRACE_TARGET, "propose", request_id = id);
        let trace = (!propose_span.is_disabled()).then(|| {
            Box::new(Traced {
                request: tracing::Span::current(),
                commit: tracing::info_span!(target: TRACE_TARGET, "commit", raft_index = tracing::field::Empty),
                since: Instant::now(),
            })
        });
        let sent = propose_span.in_scope(|| self.send(NodeMsg::Propose { id, data, trace }));
        drop(propose_span);
        if let Err(e) = sent {
            self.inner.waiters.cancel(id);
            self.inner.metrics.proposals_failed.inc();
            return Err(e.into());
        }
        let reply = match self.outcome(id, rx, timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                self.inner.metrics.proposals_failed.inc();
                return Err(e.into());
            }
        };
        let mut response = P::from_response(reply?)
            .ok_or(ProposeError::UnexpectedResponse { request: P::NAME })?;
        if let Some(header) = P::header_mut(&mut response) {
            *header = self.header(header.revision);
        }
        Ok(response)
    }

    /// Waits for the apply thread's reply to request `id`, at most `timeout`. A
    /// proposal raft dropped (no leader to take it) reads as `NoLeader`.
    async fn outcome(
        &self,
        id: u64,
        rx: oneshot::Receiver<Reply>,
        timeout: Duration,
    ) -> Result<Reply, NodeError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Err(ApplyError::Dropped))) => Err(NodeError::NoLeader),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => {
                self.inner.waiters.cancel(id);
                Err(NodeError::Timeout)
            }
        }
    }

    /// The response header every reply of this member carries: the cluster, this member, the
    /// current raft term and the given store revision (0 for calls that do not touch the
    /// key-value store). The only place a header is made.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let status = self.status();
        ResponseHeader {
            cluster_id: status.cluster_id,
            member_id: status.member_id,
            revision,
            raft_term: status.term,
        }
    }

    /// Proposals waiting on this member for their outcome.
    pub fn pending_proposals(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Waits until this member has applied everything committed when the call started, as
    /// confirmed by the leader (ReadIndex). Reads made after it are linearizable.
    ///
    /// A ReadIndex that fails for a reason other than time counts in
    /// `etcd_server_read_indexes_failed_total`; the raft thread counts those that go unanswered
    /// as slow.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.request_timeout;
        let (tx, rx) = oneshot::channel();
        let index = match self.send(NodeMsg::ReadIndex(tx)) {
            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(NodeError::Stopped),
                Err(_) => return Err(NodeError::Timeout),
            },
            Err(e) => Err(e),
        };
        let index = index.inspect_err(|_| {
            self.inner.metrics.read_indexes_failed.inc();
        })?;
        self.wait_applied(index, deadline).await
    }

    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), NodeError> {
        let mut applied = self.inner.applied_rx.clone();
        match tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }
}
