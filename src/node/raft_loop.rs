//! The raft thread: owns the `RawNode`, ticks it, batches proposals and ReadIndex requests from
//! the inbox into one Ready, persists it, hands committed entries to the apply thread and
//! applies the configuration changes the apply thread applied.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{Entry, Message};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::{
    ApplyTask, INBOX_CAPACITY, LOG_CATCHUP_ENTRIES, NodeConfig, NodeError, NodeMsg, PeerProgress,
    READ_INDEX_RETRY_TICKS, Shared, Traced, Transport,
};
use crate::apply::{ApplyError, Waiters};
use crate::metrics::Metrics;
use crate::proto::oxetcdpb::InternalRequest;
use crate::raft::RaftLogStore;
use crate::storage::{Batch, Engine, StorageError};

/// Where a ReadIndex answer (the index to wait for) is sent.
pub(super) type ReadWaiter = oneshot::Sender<Result<u64, NodeError>>;

#[derive(Default)]
pub(super) struct Reads {
    waiting: Vec<ReadWaiter>,
    /// By request counter: the tick it was issued at and who waits for it. The context raft
    /// carries is this member's ID then the counter (16 bytes), because the leader drops a
    /// ReadIndex whose context equals one still pending, whichever member sent it.
    in_flight: HashMap<u64, (u64, Vec<ReadWaiter>)>,
    next_ctx: u64,
}

pub(super) struct RaftLoop {
    pub(super) raw: RawNode<RaftLogStore>,
    pub(super) engine: Arc<Engine>,
    pub(super) inbox: Receiver<NodeMsg>,
    pub(super) apply_tx: SyncSender<ApplyTask>,
    pub(super) shared: Arc<Shared>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) cfg: NodeConfig,
    pub(super) transport: Box<dyn Transport>,
    pub(super) reads: Reads,
    pub(super) ticks: u64,
    pub(super) applied_seen: u64,
    pub(super) last_active: HashMap<u64, Instant>,
    pub(super) metrics: Arc<Metrics>,
    /// Sampled proposals not yet committed, by request ID.
    pub(super) traced: HashMap<u64, Box<Traced>>,
    /// When this member last lost its leader (or started without one).
    pub(super) leaderless_since: Option<Instant>,
    /// When this member last started an election it has not seen decided yet.
    pub(super) election_started: Option<Instant>,
    /// While leader: when a heartbeat last went to each peer.
    pub(super) heartbeats: HashMap<u64, Instant>,
    /// Work for the apply thread that its full queue could not take yet, oldest first; the raft
    /// thread never waits for the apply thread.
    pub(super) apply_backlog: VecDeque<ApplyTask>,
    /// The longest single step of this loop so far, logged when it grows past
    /// [`STEP_WARN_AFTER`].
    pub(super) longest_step: Duration,
}

/// A raft thread step longer than this is logged (with the longest so far): peers count this
/// member as silent while it lasts.
const STEP_WARN_AFTER: Duration = Duration::from_millis(500);

impl RaftLoop {
    pub(super) fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            self.shared.raft_busy.idle();
            let received = self.inbox.recv_timeout(wait);
            self.shared.raft_busy.busy();
            let step_started = Instant::now();
            match received {
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
            flush_apply_backlog(&self.apply_tx, &mut self.apply_backlog, &self.shared);
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
                heartbeats: &mut self.heartbeats,
                heartbeat_interval: self.cfg.tick,
                apply_backlog: &mut self.apply_backlog,
            };
            crate::raft::handle_ready(&mut self.raw, &mut sink);
            self.publish_status();
            self.observe_step(step_started.elapsed());
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

    /// Logs a step of this loop that took longer than [`STEP_WARN_AFTER`] and is the longest
    /// yet: peers heard nothing from this member meanwhile.
    fn observe_step(&mut self, took: Duration) {
        if took > self.longest_step {
            self.longest_step = took;
            if took > STEP_WARN_AFTER {
                tracing::warn!(
                    took = ?took,
                    "raft thread step took long; peers heard nothing from this member meanwhile"
                );
            } else {
                tracing::debug!(took = ?took, "longest raft thread step so far");
            }
        }
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
            // here rather than for the retry. A read its caller gave up on went unanswered:
            // etcd counts that as a slow read index.
            let before = self.reads.waiting.len();
            self.reads.waiting.retain(|w| !w.is_closed());
            let abandoned = before - self.reads.waiting.len();
            if abandoned > 0 {
                self.metrics.slow_read_indexes.inc_by(abandoned as u64);
            }
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
            // Unanswered in time: etcd counts such a read index as slow (and retries it too).
            self.metrics.slow_read_indexes.inc();
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
    heartbeats: &'a mut HashMap<u64, Instant>,
    heartbeat_interval: std::time::Duration,
    apply_backlog: &'a mut VecDeque<ApplyTask>,
}

/// Hands the held-back apply work to the apply thread as far as its queue has room, in order.
fn flush_apply_backlog(
    apply_tx: &SyncSender<ApplyTask>,
    backlog: &mut VecDeque<ApplyTask>,
    shared: &Shared,
) {
    while let Some(task) = backlog.pop_front() {
        match apply_tx.try_send(task) {
            Ok(()) => {}
            Err(TrySendError::Full(task)) => {
                backlog.push_front(task);
                break;
            }
            Err(TrySendError::Disconnected(_)) => {
                crate::fatal("handing work to the apply thread", &"apply thread stopped")
            }
        }
    }
    shared
        .apply_backlogged
        .store(!backlog.is_empty(), Ordering::Release);
}

impl LoopSink<'_> {
    /// Queues `task` for the apply thread behind anything held back; never waits.
    fn hand_to_apply(&mut self, task: ApplyTask) {
        self.apply_backlog.push_back(task);
        flush_apply_backlog(self.apply_tx, self.apply_backlog, self.shared);
    }

    /// etcd's heartbeat check: a leader heartbeat to a peer more than twice the heartbeat
    /// interval after the previous one counts as a heartbeat send failure (the leader was too
    /// busy, usually waiting on a slow disk).
    fn observe_heartbeats(&mut self, messages: &[Message]) {
        let now = Instant::now();
        let late_after = 2 * self.heartbeat_interval;
        for m in messages {
            if m.get_msg_type() != raft::eraftpb::MessageType::MsgHeartbeat {
                continue;
            }
            if let Some(last) = self.heartbeats.insert(m.to, now)
                && now.duration_since(last) > late_after
            {
                self.metrics.heartbeat_send_failures.inc();
                tracing::warn!(
                    to = %format!("{:x}", m.to),
                    late = ?(now.duration_since(last) - late_after),
                    "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk"
                );
            }
        }
    }
}

/// The raft log and hard state write after a Ready, between its failpoints (see
/// `failpoints.rs`): `raft_log_before_fsync` can return an injected I/O error.
fn write_raft_log(engine: &Engine, batch: Batch, sync: bool) -> Result<(), StorageError> {
    failpoint!("raft_log_before_fsync", |_| Err(StorageError::Io {
        path: "raft log".into(),
        source: std::io::Error::other("injected by failpoint raft_log_before_fsync"),
    }));
    engine.write(batch, sync)?;
    failpoint!("raft_log_after_fsync");
    Ok(())
}

impl crate::raft::ReadySink for LoopSink<'_> {
    fn send(&mut self, messages: Vec<Message>) {
        if !messages.is_empty() {
            self.observe_heartbeats(&messages);
            self.transport.send(messages);
        }
    }

    fn write(&mut self, batch: Batch, sync: bool) {
        let started = Instant::now();
        if let Err(e) = write_raft_log(self.engine, batch, sync) {
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
        self.hand_to_apply(ApplyTask::Entries(entries, traces));
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
        let was_leader = self
            .shared
            .is_leader
            .swap(role == StateRole::Leader, Ordering::AcqRel);
        if was_leader != (role == StateRole::Leader) {
            // Heartbeat timing starts over with each term of leadership.
            self.heartbeats.clear();
        }
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
        self.hand_to_apply(ApplyTask::Snapshot {
            file,
            index: meta.index,
            term: meta.term,
        });
        self.shared.commit.fetch_max(meta.index, Ordering::AcqRel);
    }
}
