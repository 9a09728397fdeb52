//! The async shell around consensus: one OS thread owns the `RawNode`, another applies committed
//! entries; a cloneable [`NodeHandle`] is the only way in.
//!
//! Requests reach the raft thread over one bounded channel (full → `too many requests`). The raft
//! thread batches everything it drained into one Ready: one synced RocksDB write per Ready, then
//! the committed entries go to the apply thread, which answers each proposer through its waiter.
//! Proposals are typed ([`Proposal`]): `propose(PutRequest)` answers a `PutResponse` with its
//! header complete, or one [`ProposeError`].

mod apply_loop;
mod handle;
pub mod id;
mod proposal;
mod raft_loop;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, Entry, Message};
use raft::{RawNode, SnapshotStatus};
use tokio::sync::watch;

use crate::apply::Applier;
use crate::metrics::Metrics;
use crate::raft::RaftLogStore;
use crate::storage::Engine;

/// Why applying a proposal refused it ([`ProposeError::Refused`]): the state machine's answer,
/// named here because callers reach the state machine only through the node.
pub use crate::apply::ApplyError;
use handle::HandleInner;
pub use handle::{NodeHandle, NodeThreads};
pub use proposal::{Compaction, IssueToken, MemberPeerUrls, Origin, Proposal, ProposeError};
use raft_loop::{RaftLoop, ReadWaiter, Reads};

/// Messages queued for the raft thread before it pushes back.
const INBOX_CAPACITY: usize = 8192;
/// Committed-entry batches queued for the apply thread before the raft thread waits.
const APPLY_QUEUE_CAPACITY: usize = 256;
/// Entries kept behind the applied index when the log is truncated, for slow followers.
const LOG_CATCHUP_ENTRIES: u64 = 5000;

/// Proposals are refused with `TooManyRequests` while the entries committed but not yet applied
/// on this member exceed this many (etcd's `maxGapBetweenApplyAndCommitIndex`): the raft thread
/// keeps committing while the apply thread is busy, for example installing a snapshot, and this
/// bounds what piles up for it.
const APPLY_GAP_MAX: u64 = 5000;
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

/// Since when a thread has been busy with one step of its loop, for `/livez`: set when it wakes
/// with work, cleared when it goes back to waiting, so an idle thread is never "stalled".
#[derive(Default)]
struct BusyStamp {
    /// Milliseconds since [`busy_clock_origin`], plus one; 0 while waiting for work.
    since_ms: AtomicU64,
}

/// The monotonic origin of every [`BusyStamp`].
fn busy_clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl BusyStamp {
    fn busy(&self) {
        let ms = busy_clock_origin().elapsed().as_millis() as u64 + 1;
        self.since_ms.store(ms, Ordering::Release);
    }

    fn idle(&self) {
        self.since_ms.store(0, Ordering::Release);
    }

    /// How long the current step has taken so far; `None` while waiting for work.
    fn busy_for(&self) -> Option<Duration> {
        match self.since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => {
                let now = busy_clock_origin().elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(ms)))
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    /// The raft and apply threads' current step, for [`NodeHandle::stalled_thread`].
    raft_busy: BusyStamp,
    apply_busy: BusyStamp,
    leader_id: AtomicU64,
    term: AtomicU64,
    commit: AtomicU64,
    applied: AtomicU64,
    /// The raft thread holds work the full apply queue could not take (the apply thread wakes
    /// it after each task while this is set).
    apply_backlogged: AtomicBool,
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
    /// Replace the state machine with a snapshot file (the raft log already starts after it).
    Snapshot {
        file: std::path::PathBuf,
        index: u64,
        term: u64,
    },
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
        .spawn(move || {
            crate::tasks::mark_thread_owns_state();
            apply_loop::run_apply(applier, apply_rx, apply_shared, applied_tx, wake)
        })
        .expect("spawning the apply thread");

    let raft_shared = shared.clone();
    let raft_waiters = waiters.clone();
    let loop_cfg = cfg.clone();
    let loop_metrics = metrics.clone();
    let raft = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            crate::tasks::mark_thread_owns_state();
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
                heartbeats: HashMap::new(),
                apply_backlog: std::collections::VecDeque::new(),
                longest_step: Duration::ZERO,
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
