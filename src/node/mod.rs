//! The async shell around consensus: one OS thread owns the `RawNode`, another applies committed
//! entries; a cloneable [`NodeHandle`] is the only way in.
//!
//! Requests reach the raft thread over one bounded channel (full → `too many requests`). The raft
//! thread batches everything it drained into one Ready: one synced RocksDB write per Ready, then
//! the committed entries go to the apply thread, which answers each proposer through its waiter.

pub mod id;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{ConfChange, Entry, Message};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use crate::apply::{Applier, ApplyError, Response, Waiters};
use crate::metrics::Metrics;
use crate::proto::oxetcdpb::{InternalRequest, internal_request};
use crate::raft::RaftLogStore;
use crate::storage::{Batch, Engine};
use crate::telemetry::TRACE_TARGET;

/// Messages queued for the raft thread before it pushes back.
const INBOX_CAPACITY: usize = 8192;
/// Committed-entry batches queued for the apply thread before the raft thread waits.
const APPLY_QUEUE_CAPACITY: usize = 256;
/// Entries kept behind the applied index when the log is truncated, for slow followers.
const LOG_CATCHUP_ENTRIES: u64 = 5000;
/// Ticks after which an unanswered ReadIndex is asked again (raft drops it silently when the
/// leader has not yet committed an entry in its term).
const READ_INDEX_RETRY_TICKS: u64 = 5;

/// Why a request could not be carried through consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("no leader")]
    NoLeader,
    #[error("server stopped")]
    Stopped,
    #[error("request timed out")]
    Timeout,
    #[error("too many requests")]
    TooManyRequests,
    #[error("request is too large")]
    RequestTooLarge,
}

/// A snapshot of this member's raft position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    pub member_id: u64,
    pub cluster_id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
    pub leader_changes: u64,
    /// First and last index of the raft log this member keeps (entries before the first were
    /// compacted away after a snapshot).
    pub raft_first_index: u64,
    pub raft_last_index: u64,
}

/// Settings the node needs from the configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub member_id: u64,
    pub cluster_id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub snapshot_count: u64,
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
}

enum NodeMsg {
    Propose {
        id: u64,
        data: Vec<u8>,
        trace: Option<Box<Traced>>,
    },
    ReadIndex(ReadWaiter),
    /// A raft message from a peer.
    Step(Box<Message>),
    /// The transport could not reach this peer.
    Unreachable(u64),
    /// A snapshot sent to this peer arrived (or failed).
    SnapshotStatus(u64, SnapshotStatus),
    /// Hand leadership to this member (only acted on by the leader).
    TransferLeader(u64),
    /// Propose a membership change; `id` names its waiter.
    ProposeConfChange {
        id: u64,
        cc: ConfChange,
    },
    /// Something was left for the raft thread in `Shared` (applied configuration changes).
    Wake,
    Stop,
}

/// Carries raft messages to peers. Implementations must not block: queue, and drop (reporting
/// the peer unreachable through [`NodeHandle::report_unreachable`]) when a queue is full.
pub trait Transport: Send + 'static {
    fn send(&self, messages: Vec<Message>);
}

/// The transport of a single-member cluster: it never has anything to carry.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, messages: Vec<Message>) {
        if !messages.is_empty() {
            tracing::warn!(
                count = messages.len(),
                "raft messages for peers, but this member knows no peers"
            );
        }
    }
}

#[derive(Default)]
struct Shared {
    leader_id: AtomicU64,
    term: AtomicU64,
    commit: AtomicU64,
    applied: AtomicU64,
    leader_changes: AtomicU64,
    is_leader: AtomicBool,
    raft_first: AtomicU64,
    raft_last: AtomicU64,
    /// Configuration changes the apply thread applied, for raft to apply in order.
    applied_conf_changes: std::sync::Mutex<Vec<ConfChange>>,
    /// The leader's view of each peer's replication (empty on followers).
    progress: std::sync::Mutex<Vec<PeerProgress>>,
}

/// How far the leader has replicated to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    pub member_id: u64,
    pub matched: u64,
    /// The leader heard from the member within the last two election timeouts.
    pub recent_active: bool,
}

/// The trace of one proposal whose client request is sampled: the request's span (the parent of
/// the apply span, and where the revision is recorded) and the commit span, which the raft
/// thread closes when the entry commits.
struct Traced {
    request: tracing::Span,
    commit: tracing::Span,
    since: Instant,
}

/// Work for the apply thread, in log order.
enum ApplyTask {
    /// Committed entries, with the request spans of the traced ones by request ID.
    Entries(Vec<Entry>, Vec<(u64, tracing::Span)>),
    /// Replace the state machine with a snapshot file; `done` is signalled once it is installed.
    Snapshot {
        file: std::path::PathBuf,
        index: u64,
        term: u64,
        done: SyncSender<()>,
    },
}

struct HandleInner {
    tx: SyncSender<NodeMsg>,
    waiters: Arc<Waiters>,
    shared: Arc<Shared>,
    applied_rx: watch::Receiver<u64>,
    ids: id::IdGen,
    cfg: NodeConfig,
    metrics: Arc<Metrics>,
}

/// The way into consensus. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<HandleInner>,
}

/// The running node's threads; join them after every handle is dropped.
pub struct NodeThreads {
    raft: JoinHandle<()>,
    apply: JoinHandle<()>,
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
    /// waits until it is applied on this member and returns the result.
    pub async fn propose_conf_change(
        &self,
        request_id: u64,
        cc: ConfChange,
    ) -> Result<Result<Response, ApplyError>, NodeError> {
        let rx = self.inner.waiters.register(request_id);
        if let Err(e) = self.send(NodeMsg::ProposeConfChange { id: request_id, cc }) {
            self.inner.waiters.cancel(request_id);
            return Err(e);
        }
        match tokio::time::timeout(self.inner.cfg.request_timeout, rx).await {
            Ok(Ok(Err(ApplyError::Dropped))) => Err(NodeError::NoLeader),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => {
                self.inner.waiters.cancel(request_id);
                Err(NodeError::Timeout)
            }
        }
    }

    /// Asks the raft thread to stop after what it already took in; the apply thread follows once
    /// it has applied everything handed to it. Later requests fail with `Stopped`.
    pub fn stop(&self) {
        // A full inbox cannot take the message; blocking here is fine: the raft thread drains it.
        let _ = self.inner.tx.send(NodeMsg::Stop);
    }

    /// Proposes `request`, waits until it is applied on this member and returns the result.
    pub async fn propose(
        &self,
        request: internal_request::Request,
    ) -> Result<Result<Response, ApplyError>, NodeError> {
        let id = self.next_id();
        let data = InternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.inner.cfg.max_request_bytes {
            return Err(NodeError::RequestTooLarge);
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
            return Err(e);
        }
        let outcome = match tokio::time::timeout(self.inner.cfg.request_timeout, rx).await {
            Ok(Ok(Err(ApplyError::Dropped))) => Err(NodeError::NoLeader),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => {
                self.inner.waiters.cancel(id);
                Err(NodeError::Timeout)
            }
        };
        if outcome.is_err() {
            self.inner.metrics.proposals_failed.inc();
        }
        outcome
    }

    /// Proposals waiting on this member for their outcome.
    pub fn pending_proposals(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Waits until this member has applied everything committed when the call started, as
    /// confirmed by the leader (ReadIndex). Reads made after it are linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.request_timeout;
        let (tx, rx) = oneshot::channel();
        self.send(NodeMsg::ReadIndex(tx))?;
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(NodeError::Stopped),
            Err(_) => return Err(NodeError::Timeout),
        };
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

/// How every member configures raft-rs (the deterministic test harness uses it too): one tick per
/// heartbeat, pre-vote and check-quorum on, 1 MiB appends, bounded in-flight and per-Ready sizes;
/// `applied` is the persisted consistent index, so committed entries are not delivered twice.
pub fn raft_config(member_id: u64, election_ticks: usize, applied: u64) -> raft::Config {
    raft::Config {
        id: member_id,
        election_tick: election_ticks,
        heartbeat_tick: 1,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 512,
        max_committed_size_per_ready: 16 << 20,
        ..raft::Config::default()
    }
}

/// Starts the raft and apply threads.
pub fn start(
    cfg: NodeConfig,
    store: RaftLogStore,
    engine: Arc<Engine>,
    applier: Applier,
    transport: Box<dyn Transport>,
    metrics: Arc<Metrics>,
) -> Result<(NodeHandle, NodeThreads), raft::Error> {
    let applied = applier.applied_index();
    let voters = store.conf_state().voters.clone();
    let raft_cfg = raft_config(cfg.member_id, cfg.election_ticks, applied);
    raft_cfg.validate()?;
    let mut raw = RawNode::new(&raft_cfg, store, &crate::raft::logger::logger())?;
    if voters == [cfg.member_id] {
        // A single-member cluster need not wait an election timeout to lead.
        tracing::info!(member_id = %format!("{:x}", cfg.member_id), "started as single-node; campaigning at once");
        raw.campaign()?;
    }

    let shared = Arc::new(Shared::default());
    shared.applied.store(applied, Ordering::Release);
    let (applied_tx, applied_rx) = watch::channel(applied);
    let (tx, rx) = mpsc::sync_channel(INBOX_CAPACITY);
    let (apply_tx, apply_rx) = mpsc::sync_channel::<ApplyTask>(APPLY_QUEUE_CAPACITY);
    let waiters = applier.waiters();

    let apply_shared = shared.clone();
    let wake = tx.clone();
    let apply = std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || run_apply(applier, apply_rx, apply_shared, applied_tx, wake))
        .expect("spawning the apply thread");

    let raft_shared = shared.clone();
    let raft_waiters = waiters.clone();
    let loop_cfg = cfg.clone();
    let loop_metrics = metrics.clone();
    let raft = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            RaftLoop {
                raw,
                engine,
                inbox: rx,
                apply_tx,
                shared: raft_shared,
                waiters: raft_waiters,
                cfg: loop_cfg,
                transport,
                reads: Reads::default(),
                ticks: 0,
                applied_seen: applied,
                last_active: HashMap::new(),
                metrics: loop_metrics,
                traced: HashMap::new(),
                leaderless_since: Some(Instant::now()),
                election_started: None,
            }
            .run()
        })
        .expect("spawning the raft thread");

    let handle = NodeHandle {
        inner: Arc::new(HandleInner {
            tx,
            waiters,
            shared,
            applied_rx,
            ids: id::IdGen::new(cfg.member_id),
            cfg,
            metrics: metrics.clone(),
        }),
    };
    Ok((handle, NodeThreads { raft, apply }))
}

fn run_apply(
    mut applier: Applier,
    rx: Receiver<ApplyTask>,
    shared: Arc<Shared>,
    applied_tx: watch::Sender<u64>,
    wake: SyncSender<NodeMsg>,
) {
    while let Ok(task) = rx.recv() {
        let applied = match task {
            ApplyTask::Entries(entries, traces) => {
                applier.trace(traces);
                applier.apply_entries(entries)
            }
            ApplyTask::Snapshot {
                file,
                index,
                term,
                done,
            } => {
                applier.install_snapshot(&file, index, term);
                let _ = done.send(());
                index
            }
        };
        let changes = applier.take_conf_changes();
        if !changes.is_empty() {
            shared
                .applied_conf_changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(changes);
            // A full inbox wakes the raft thread anyway; it drains the changes every loop.
            let _ = wake.try_send(NodeMsg::Wake);
        }
        shared.applied.store(applied, Ordering::Release);
        applied_tx.send_replace(applied);
    }
    tracing::info!("apply thread stopped");
}

/// Where a ReadIndex answer (the index to wait for) is sent.
type ReadWaiter = oneshot::Sender<Result<u64, NodeError>>;

#[derive(Default)]
struct Reads {
    waiting: Vec<ReadWaiter>,
    /// By request counter: the tick it was issued at and who waits for it. The context raft
    /// carries is this member's ID then the counter (16 bytes), because the leader drops a
    /// ReadIndex whose context equals one still pending, whichever member sent it.
    in_flight: HashMap<u64, (u64, Vec<ReadWaiter>)>,
    next_ctx: u64,
}

struct RaftLoop {
    raw: RawNode<RaftLogStore>,
    engine: Arc<Engine>,
    inbox: Receiver<NodeMsg>,
    apply_tx: SyncSender<ApplyTask>,
    shared: Arc<Shared>,
    waiters: Arc<Waiters>,
    cfg: NodeConfig,
    transport: Box<dyn Transport>,
    reads: Reads,
    ticks: u64,
    applied_seen: u64,
    last_active: HashMap<u64, Instant>,
    metrics: Arc<Metrics>,
    /// Sampled proposals not yet committed, by request ID.
    traced: HashMap<u64, Box<Traced>>,
    /// When this member last lost its leader (or started without one).
    leaderless_since: Option<Instant>,
    /// When this member last started an election it has not seen decided yet.
    election_started: Option<Instant>,
}

impl RaftLoop {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(msg) => {
                    let mut running = self.handle(msg);
                    for _ in 0..INBOX_CAPACITY {
                        if !running {
                            break;
                        }
                        match self.inbox.try_recv() {
                            Ok(msg) => running = self.handle(msg),
                            Err(_) => break,
                        }
                    }
                    if !running {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.ticks += 1;
                next_tick = (next_tick + self.cfg.tick).max(now);
                self.retry_stale_reads();
                self.publish_progress();
                if !self.traced.is_empty() {
                    // Proposals that never committed (their callers timed out) end their spans.
                    let timeout = self.cfg.request_timeout;
                    self.traced.retain(|_, t| t.since.elapsed() < timeout);
                }
            }
            if !self.apply_conf_changes() {
                tracing::warn!("this member was removed from the cluster; raft stopped");
                break;
            }
            self.issue_reads();
            self.follow_apply();
            let snap_dir = self.raw.store().snapshot_dir().map(|d| d.to_path_buf());
            let mut sink = LoopSink {
                engine: &self.engine,
                transport: self.transport.as_ref(),
                apply_tx: &self.apply_tx,
                shared: &self.shared,
                reads: &mut self.reads,
                term: self.raw.raft.term,
                snap_dir,
                metrics: &self.metrics,
                traced: &mut self.traced,
                leaderless_since: &mut self.leaderless_since,
                election_started: &mut self.election_started,
            };
            crate::raft::handle_ready(&mut self.raw, &mut sink);
            self.publish_status();
        }
        tracing::info!("raft thread stopped");
    }

    /// Takes one message in; returns false when the loop must stop.
    fn handle(&mut self, msg: NodeMsg) -> bool {
        match msg {
            NodeMsg::Propose { id, data, trace } => {
                if self.raw.propose(vec![], data).is_err() {
                    self.waiters.trigger(id, Err(ApplyError::Dropped));
                } else if let Some(trace) = trace {
                    self.traced.insert(id, trace);
                }
            }
            NodeMsg::ReadIndex(reply) => self.reads.waiting.push(reply),
            NodeMsg::Step(message) => {
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!(error = %e, "raft refused a peer message");
                }
            }
            NodeMsg::Unreachable(peer) => self.raw.report_unreachable(peer),
            NodeMsg::SnapshotStatus(peer, status) => self.raw.report_snapshot(peer, status),
            NodeMsg::ProposeConfChange { id, cc } => {
                if self.raw.propose_conf_change(vec![], cc).is_err() {
                    self.waiters.trigger(id, Err(ApplyError::Dropped));
                }
            }
            NodeMsg::Wake => {}
            NodeMsg::TransferLeader(target) => {
                if self.raw.raft.state == StateRole::Leader {
                    self.raw.transfer_leader(target);
                }
            }
            NodeMsg::Stop => return false,
        }
        true
    }

    /// Hands raft the configuration changes the apply thread applied, and persists the result.
    /// Returns false once this member itself was removed (raft must not run on without it).
    fn apply_conf_changes(&mut self) -> bool {
        let changes = std::mem::take(
            &mut *self
                .shared
                .applied_conf_changes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if changes.is_empty() {
            return true;
        }
        let mut batch = Batch::new();
        let mut removed = false;
        for cc in changes {
            removed |= cc.get_change_type() == raft::eraftpb::ConfChangeType::RemoveNode
                && cc.node_id == self.cfg.member_id;
            match self.raw.apply_conf_change(&cc) {
                Ok(cs) => self.raw.mut_store().set_conf_state(&mut batch, cs),
                Err(e) => {
                    tracing::error!(error = %e, "raft refused an applied configuration change")
                }
            }
        }
        self.write(batch, true, "persisting the raft configuration");
        !removed
    }

    /// On the leader, records each member's replication progress for the Cluster API checks.
    fn publish_progress(&mut self) {
        let raft = &self.raw.raft;
        // raft clears `recent_active` every election timeout (check-quorum), so a peer counts
        // as active if raft saw it active within the last two election timeouts.
        let now = Instant::now();
        let window = self.cfg.tick * (2 * self.cfg.election_ticks as u32);
        let progress = if raft.state == StateRole::Leader {
            let mut out = Vec::new();
            for (id, pr) in raft.prs().iter() {
                if pr.recent_active || *id == self.cfg.member_id {
                    self.last_active.insert(*id, now);
                }
                let active = self
                    .last_active
                    .get(id)
                    .is_some_and(|at| now.duration_since(*at) <= window);
                out.push(PeerProgress {
                    member_id: *id,
                    matched: pr.matched,
                    recent_active: active,
                });
            }
            out
        } else {
            self.last_active.clear();
            Vec::new()
        };
        *self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = progress;
    }

    fn issue_reads(&mut self) {
        if self.reads.waiting.is_empty() {
            return;
        }
        let raft = &self.raw.raft;
        let new_leader = raft.state == StateRole::Leader && !raft.commit_to_current_term();
        if raft.leader_id == raft::INVALID_ID || new_leader {
            // Without a leader the reads wait (until one is elected or their deadline passes,
            // which answers `request timed out`, as etcd does); callers that gave up are dropped.
            // A new leader would drop them until its first entry commits: they wait for that
            // here rather than for the retry.
            self.reads.waiting.retain(|w| !w.is_closed());
            return;
        }
        let waiting = std::mem::take(&mut self.reads.waiting);
        self.reads.next_ctx += 1;
        let ctx = self.reads.next_ctx;
        let mut request = self.cfg.member_id.to_be_bytes().to_vec();
        request.extend_from_slice(&ctx.to_be_bytes());
        self.raw.read_index(request);
        self.reads.in_flight.insert(ctx, (self.ticks, waiting));
    }

    fn retry_stale_reads(&mut self) {
        let ticks = self.ticks;
        let stale: Vec<u64> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, (issued, _))| ticks - issued >= READ_INDEX_RETRY_TICKS)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((_, waiters)) = self.reads.in_flight.remove(&ctx) {
                self.reads
                    .waiting
                    .extend(waiters.into_iter().filter(|w| !w.is_closed()));
            }
        }
    }

    fn follow_apply(&mut self) {
        let applied = self.shared.applied.load(Ordering::Acquire);
        if applied <= self.applied_seen {
            return;
        }
        self.raw.advance_apply_to(applied);
        self.applied_seen = applied;
        let store = self.raw.store();
        if applied > store.first() + self.cfg.snapshot_count + LOG_CATCHUP_ENTRIES {
            let mut batch = Batch::new();
            let upto = applied - LOG_CATCHUP_ENTRIES;
            if let Err(e) = self.raw.mut_store().truncate_to(&mut batch, upto) {
                crate::fatal("truncating the raft log", &e);
            }
            self.write(batch, false, "writing the raft log truncation");
            tracing::debug!(index = upto, "truncated raft log");
        }
    }

    fn write(&self, batch: Batch, sync: bool, what: &str) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.engine.write(batch, sync) {
            crate::fatal(what, &e);
        }
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        self.shared.term.store(raft.term, Ordering::Release);
        self.shared
            .commit
            .fetch_max(raft.raft_log.committed, Ordering::AcqRel);
        let store = self.raw.store();
        self.shared
            .raft_first
            .store(store.first(), Ordering::Release);
        self.shared.raft_last.store(store.last(), Ordering::Release);
    }
}

/// The raft thread's side of a Ready: writes go to RocksDB (a failure stops the member),
/// committed entries to the apply thread, ReadIndex answers to their waiters.
struct LoopSink<'a> {
    engine: &'a Engine,
    transport: &'a dyn Transport,
    apply_tx: &'a SyncSender<ApplyTask>,
    shared: &'a Shared,
    reads: &'a mut Reads,
    term: u64,
    snap_dir: Option<std::path::PathBuf>,
    metrics: &'a Metrics,
    traced: &'a mut HashMap<u64, Box<Traced>>,
    leaderless_since: &'a mut Option<Instant>,
    election_started: &'a mut Option<Instant>,
}

impl crate::raft::ReadySink for LoopSink<'_> {
    fn send(&mut self, messages: Vec<Message>) {
        if !messages.is_empty() {
            self.transport.send(messages);
        }
    }

    fn write(&mut self, batch: Batch, sync: bool) {
        let started = Instant::now();
        if let Err(e) = self.engine.write(batch, sync) {
            crate::fatal("persisting raft state", &e);
        }
        if sync {
            self.metrics
                .wal_fsync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last() else {
            return;
        };
        self.shared.commit.fetch_max(last.index, Ordering::AcqRel);
        let mut traces = Vec::new();
        if !self.traced.is_empty() {
            for entry in &entries {
                if entry.get_entry_type() != raft::eraftpb::EntryType::EntryNormal
                    || entry.data.is_empty()
                {
                    continue;
                }
                let Ok(req) = InternalRequest::decode(&entry.data[..]) else {
                    continue;
                };
                if let Some(t) = self.traced.remove(&req.id) {
                    t.commit.record("raft_index", entry.index);
                    traces.push((req.id, t.request));
                }
            }
        }
        if self
            .apply_tx
            .send(ApplyTask::Entries(entries, traces))
            .is_err()
        {
            crate::fatal(
                "handing entries to the apply thread",
                &"apply thread stopped",
            );
        }
    }

    fn read_states(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Some(Ok(bytes)) = rs.request_ctx.get(8..).map(<[u8; 8]>::try_from) else {
                continue;
            };
            if let Some((_, waiters)) = self.reads.in_flight.remove(&u64::from_be_bytes(bytes)) {
                for w in waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
    }

    fn soft_state(&mut self, leader_id: u64, role: StateRole) {
        let now = Instant::now();
        if matches!(role, StateRole::PreCandidate | StateRole::Candidate)
            && self.election_started.is_none()
        {
            *self.election_started = Some(now);
        }
        if leader_id == raft::INVALID_ID {
            self.leaderless_since.get_or_insert(now);
        } else {
            if let Some(since) = self.leaderless_since.take() {
                self.metrics
                    .leaderless_seconds
                    .observe(now.duration_since(since).as_secs_f64());
            }
            if let Some(since) = self.election_started.take() {
                self.metrics
                    .election_seconds
                    .observe(now.duration_since(since).as_secs_f64());
            }
        }
        let old = self.shared.leader_id.swap(leader_id, Ordering::AcqRel);
        self.shared
            .is_leader
            .store(role == StateRole::Leader, Ordering::Release);
        if old != leader_id {
            // As etcd counts: a change to a known leader, not the moment of having none.
            if leader_id != raft::INVALID_ID {
                self.shared.leader_changes.fetch_add(1, Ordering::AcqRel);
            }
            if leader_id == raft::INVALID_ID {
                tracing::warn!(term = self.term, "lost the leader");
            } else {
                tracing::info!(term = self.term, leader = %format!("{leader_id:x}"), "elected leader");
            }
        }
    }

    fn snapshot(&mut self, snapshot: &raft::eraftpb::Snapshot) {
        let meta = snapshot.get_metadata();
        let Some(dir) = &self.snap_dir else {
            crate::fatal(
                "installing a raft snapshot",
                &"this member has no snapshot directory",
            );
        };
        let file = crate::raft::snapshots::snapshot_path(dir, meta.term, meta.index);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installing a snapshot from the leader"
        );
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let task = ApplyTask::Snapshot {
            file: file.clone(),
            index: meta.index,
            term: meta.term,
            done: done_tx,
        };
        if self.apply_tx.send(task).is_err() || done_rx.recv().is_err() {
            crate::fatal("installing a raft snapshot", &"apply thread stopped");
        }
        self.shared.commit.fetch_max(meta.index, Ordering::AcqRel);
        crate::raft::snapshots::remove_other_files(dir, &file);
    }
}
