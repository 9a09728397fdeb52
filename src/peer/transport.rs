//! The sending side of the raft transport: [`PeerTransport`] (called on the raft thread, never
//! blocks) queues each message for its peer; one tokio task per peer ([`PeerLinks::spawn`]) batches
//! what is queued onto one long-lived gRPC stream, and reconnects with capped backoff when the
//! stream breaks.
//!
//! Queues: per peer [`PEER_QUEUE_MESSAGES`] raft messages (full → the message is dropped and the
//! peer reported unreachable), then at most [`STREAM_BATCHES_MAX`] batches handed to the gRPC
//! stream (full → the peer task waits, so its queue fills and the rule above applies).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::Instrument as _;

use super::dial::{DialError, PeerDialer};
use super::{BATCH_BYTES_MAX, hex};
use crate::metrics::{Metrics, PeerLabel};
use crate::node::{NodeHandle, Transport};
use crate::proto::oxetcdpb::peer_client::PeerClient;
use crate::proto::oxetcdpb::{RaftBatch, SnapshotChunk};
use crate::raft::codec::encode;
use crate::tasks::TaskSet;

/// Raft messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_MESSAGES: usize = 4096;
/// Batches handed to one peer's gRPC stream and not yet written to the connection.
const STREAM_BATCHES_MAX: usize = 16;
/// First wait before reconnecting to a peer; doubled after each failure up to the maximum.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A stream that lived this long resets the backoff.
const STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(2);
/// Bound on a `Peer/Members` call made while joining.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the round trip to each peer is measured, and how long a probe may take.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes per snapshot chunk sent to a peer.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot chunks read ahead of the gRPC stream.
const SNAPSHOT_CHUNKS_QUEUED: usize = 4;

/// What the transport needs to know about this member.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub cluster_id: u64,
    pub member_id: u64,
    /// Where the snapshot files raft sends live.
    pub snap_dir: std::path::PathBuf,
    /// Opens the channels to peers (with the peer TLS client configuration for https://).
    pub dialer: PeerDialer,
}

/// The node's [`Transport`]: routes each raft message to its peer's queue. Cheap to clone; the
/// set of peers follows the membership ([`PeerTransport::set_peers`]).
#[derive(Clone)]
pub struct PeerTransport {
    shared: Arc<TransportShared>,
}

struct TransportShared {
    cfg: TransportConfig,
    metrics: Arc<Metrics>,
    peers: RwLock<HashMap<u64, PeerQueue>>,
    node: OnceLock<NodeHandle>,
    /// Owns the peer tasks, whose stop signal ends them; set by [`PeerLinks::spawn`].
    tasks: OnceLock<TaskSet>,
    /// Peer tasks built before their owner was known.
    unstarted: Mutex<Vec<PeerLink>>,
}

struct PeerQueue {
    urls: Vec<String>,
    tx: mpsc::Sender<Message>,
    /// Set when the queue overflowed, cleared by the peer task once it caught up; only the first
    /// overflow of an episode is logged.
    congested: Arc<AtomicBool>,
}

/// Starts the peer tasks once the node runs.
pub struct PeerLinks {
    shared: Arc<TransportShared>,
}

struct PeerLink {
    peer_id: u64,
    urls: Vec<String>,
    queue: mpsc::Receiver<Message>,
    congested: Arc<AtomicBool>,
}

impl PeerTransport {
    /// Builds the transport for `peers` (member ID, peer URLs; this member excluded) and the tasks that
    /// will carry its messages.
    pub fn new(
        cfg: TransportConfig,
        peers: &[(u64, Vec<String>)],
        metrics: Arc<Metrics>,
    ) -> (PeerTransport, PeerLinks) {
        let shared = Arc::new(TransportShared {
            cfg,
            metrics,
            peers: RwLock::new(HashMap::new()),
            node: OnceLock::new(),
            tasks: OnceLock::new(),
            unstarted: Mutex::new(Vec::new()),
        });
        let transport = PeerTransport {
            shared: shared.clone(),
        };
        transport.set_peers(peers);
        (transport, PeerLinks { shared })
    }

    /// Makes the peers exactly `peers` (this member excluded): new ones get a queue and a task,
    /// removed ones lose theirs (the task ends when its queue closes), and a peer whose URLs
    /// changed is reconnected.
    pub fn set_peers(&self, peers: &[(u64, Vec<String>)]) {
        let me = self.shared.cfg.member_id;
        let mut map = self.shared.peers.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, queue| {
            peers
                .iter()
                .any(|(peer, urls)| peer == id && *urls == queue.urls)
        });
        for (peer_id, urls) in peers {
            if *peer_id == me || map.contains_key(peer_id) || urls.is_empty() {
                continue;
            }
            // The peer's snapshot counters start at zero, so the first transfer shows in a rate.
            let metrics = &self.shared.metrics;
            let (to, from) = ([("To", hex(*peer_id))], [("From", hex(*peer_id))]);
            metrics.snapshot_send_success.get_or_create_owned(&to);
            metrics.snapshot_send_failures.get_or_create_owned(&to);
            metrics.snapshot_receive_success.get_or_create_owned(&from);
            metrics.snapshot_receive_failures.get_or_create_owned(&from);
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
            let congested = Arc::new(AtomicBool::new(false));
            map.insert(
                *peer_id,
                PeerQueue {
                    urls: urls.clone(),
                    tx,
                    congested: congested.clone(),
                },
            );
            let link = PeerLink {
                peer_id: *peer_id,
                urls: urls.clone(),
                queue: rx,
                congested,
            };
            match (self.shared.tasks.get(), self.shared.node.get()) {
                (Some(tasks), Some(node)) => {
                    tracing::info!(peer = %hex(*peer_id), urls = ?urls, "added peer");
                    let (future, span) =
                        self.shared.sender(link, node.clone(), tasks.stop_signal());
                    // Refused only once the member is stopping: the peer is not needed then.
                    if let Err(e) = tasks.spawn("peer-sender", future.instrument(span)) {
                        tracing::debug!(peer = %hex(*peer_id), error = %e, "peer sender not started");
                    }
                }
                _ => self
                    .shared
                    .unstarted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(link),
            }
        }
    }
}

impl Transport for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        // The handle is missing only between node::start and PeerLinks::spawn; messages are
        // queued then all the same, and failures cannot be reported yet.
        self.enqueue(messages, self.shared.node.get());
    }
}

impl TransportShared {
    fn sender(
        &self,
        link: PeerLink,
        node: NodeHandle,
        shutdown: watch::Receiver<bool>,
    ) -> (
        impl std::future::Future<Output = ()> + Send + 'static,
        tracing::Span,
    ) {
        let span = tracing::info_span!("peer_sender", peer = %hex(link.peer_id));
        let label: PeerLabel = [("To", hex(link.peer_id))];
        let probe = probe_round_trips(
            self.cfg.dialer.clone(),
            link.urls.clone(),
            label.clone(),
            self.metrics.clone(),
        );
        let sender = PeerSender {
            cfg: self.cfg.clone(),
            link,
            node,
            metrics: self.metrics.clone(),
            label,
        };
        let future = async move {
            // The probe lives as long as the link: it stops when the sender does.
            tokio::select! {
                _ = sender.run(shutdown) => {}
                _ = probe => {}
            }
        };
        (future, span)
    }
}

impl PeerTransport {
    fn enqueue(&self, messages: Vec<Message>, node: Option<&NodeHandle>) {
        let mut unreachable: Vec<u64> = Vec::new();
        let peers = self.shared.peers.read().unwrap_or_else(|p| p.into_inner());
        for message in messages {
            let to = message.to;
            let Some(peer) = peers.get(&to) else {
                tracing::debug!(to = %hex(to), "raft message for a member this transport does not know; dropped");
                if let Some(node) = node {
                    node.report_unreachable(to);
                }
                continue;
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(message, peer.urls.clone(), node);
                continue;
            }
            match peer.tx.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !peer.congested.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            peer = %hex(to),
                            queued = PEER_QUEUE_MESSAGES,
                            "raft message queue to peer is full; dropping messages"
                        );
                    }
                    if !unreachable.contains(&to) {
                        unreachable.push(to);
                    }
                    self.shared
                        .metrics
                        .peer_sent_failures
                        .get_or_create(&[("To", hex(to))])
                        .inc();
                }
                // The peer task stopped: the member is shutting down.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        drop(peers);
        if let Some(node) = node {
            for peer in unreachable {
                node.report_unreachable(peer);
            }
        }
    }

    /// Streams the snapshot file named by `message` to the peer on its own task and reports
    /// the outcome to raft.
    fn send_snapshot(&self, message: Message, urls: Vec<String>, node: Option<&NodeHandle>) {
        let to = message.to;
        let (Some(node), Some(tasks)) = (node, self.shared.tasks.get()) else {
            return;
        };
        let dir = self.shared.cfg.snap_dir.clone();
        let node = node.clone();
        let cluster_id = self.shared.cfg.cluster_id;
        let dialer = self.shared.cfg.dialer.clone();
        let metrics = self.shared.metrics.clone();
        let send = async move {
            let meta = message.get_snapshot().get_metadata();
            let (index, term) = (meta.index, meta.term);
            let started = Instant::now();
            let label: PeerLabel = [("To", hex(to))];
            let outcome = SendOutcome::new(
                node,
                to,
                metrics.snapshot_send_inflights.get_or_create_owned(&label),
            );
            let mut last_error = String::new();
            for url in &urls {
                match stream_snapshot(&dialer, url, cluster_id, &dir, &message).await {
                    Ok(bytes) => {
                        metrics.snapshot_send_success.get_or_create(&label).inc();
                        metrics
                            .snapshot_send_seconds
                            .get_or_create(&label)
                            .observe(started.elapsed().as_secs_f64());
                        tracing::info!(
                            peer = %hex(to),
                            index,
                            term,
                            bytes,
                            took = ?started.elapsed(),
                            "sent a snapshot"
                        );
                        outcome.finished();
                        return;
                    }
                    Err(e) => last_error = e,
                }
            }
            metrics.snapshot_send_failures.get_or_create(&label).inc();
            tracing::warn!(peer = %hex(to), index, error = %last_error, "sending a snapshot failed");
            // Dropping `outcome` reports the failure.
        };
        // Refused only once the member is stopping: raft no longer waits for the outcome.
        if let Err(e) = tasks.spawn("peer-snapshot-send", send) {
            tracing::debug!(peer = %hex(to), error = %e, "snapshot not sent");
        }
    }
}

/// One snapshot send's report to raft and its in-flight count. Unless [`SendOutcome::finished`]
/// is called, dropping it reports a failure, so a send task that panics or is cancelled still
/// lets raft send the snapshot again instead of leaving the follower waiting for it forever.
struct SendOutcome {
    node: NodeHandle,
    to: u64,
    inflight: prometheus_client::metrics::gauge::Gauge,
    finished: bool,
}

impl SendOutcome {
    fn new(node: NodeHandle, to: u64, inflight: prometheus_client::metrics::gauge::Gauge) -> Self {
        inflight.inc();
        SendOutcome {
            node,
            to,
            inflight,
            finished: false,
        }
    }

    fn finished(mut self) {
        self.finished = true;
        self.node.report_snapshot(self.to, SnapshotStatus::Finish);
    }
}

impl Drop for SendOutcome {
    fn drop(&mut self) {
        self.inflight.dec();
        if !self.finished {
            self.node.report_snapshot(self.to, SnapshotStatus::Failure);
        }
    }
}

/// Sends one snapshot over a `Peer/Snapshot` stream; returns the file's size.
async fn stream_snapshot(
    dialer: &PeerDialer,
    url: &str,
    cluster_id: u64,
    dir: &std::path::Path,
    message: &Message,
) -> Result<u64, String> {
    use tokio::io::AsyncReadExt as _;
    failpoint!("snapshot_send");
    let meta = message.get_snapshot().get_metadata();
    let path = crate::raft::snapshots::snapshot_path(dir, meta.term, meta.index);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let channel = dialer.connect(url).await.map_err(|e| error_chain(&e))?;
    let mut client = PeerClient::new(channel).max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(SNAPSHOT_CHUNKS_QUEUED);
    let first_message = encode(message);
    let reader = async move {
        let mut first = true;
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| format!("reading the snapshot: {e}"))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            total += filled as u64;
            let done = filled == 0;
            if !done || first {
                let chunk = SnapshotChunk {
                    cluster_id: if first { cluster_id } else { 0 },
                    message: if first {
                        first_message.clone()
                    } else {
                        Vec::new()
                    },
                    data: buf,
                };
                first = false;
                if tx.send(chunk).await.is_err() {
                    return Ok::<u64, String>(total);
                }
            }
            if done {
                return Ok(total);
            }
        }
    };
    let call = client.snapshot(ReceiverStream::new(rx));
    let (read, sent) = tokio::join!(reader, call);
    sent.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    read
}

impl PeerLinks {
    /// Starts the peer tasks, now and as peers are added, owned by `tasks`; they report to
    /// `node` and stop when `tasks` stops.
    pub fn spawn(self, node: NodeHandle, tasks: &TaskSet) {
        let _ = self.shared.node.set(node.clone());
        let _ = self.shared.tasks.set(tasks.clone());
        let links = std::mem::take(
            &mut *self
                .shared
                .unstarted
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for link in links {
            let peer_id = link.peer_id;
            let (future, span) = self.shared.sender(link, node.clone(), tasks.stop_signal());
            if let Err(e) = tasks.spawn("peer-sender", future.instrument(span)) {
                tracing::debug!(peer = %hex(peer_id), error = %e, "peer sender not started");
            }
        }
    }
}

/// One peer's task.
struct PeerSender {
    cfg: TransportConfig,
    link: PeerLink,
    node: NodeHandle,
    metrics: Arc<Metrics>,
    label: PeerLabel,
}

/// How a stream to the peer ended.
enum StreamEnd {
    /// Could not connect.
    Connect(DialError),
    /// The stream was open and broke (or the peer ended it, or refused our batches).
    Broken(Option<tonic::Status>),
    /// The transport was dropped: the raft thread stopped.
    QueueClosed,
}

impl PeerSender {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        let mut url_index = 0;
        let mut failing = false;
        loop {
            let url = self.link.urls[url_index % self.link.urls.len()].clone();
            let started = Instant::now();
            let end = tokio::select! {
                end = self.stream(&url, &mut failing) => end,
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            };
            match end {
                StreamEnd::QueueClosed => break,
                StreamEnd::Connect(e) => {
                    url_index += 1;
                    let error = error_chain(&e);
                    if !failing {
                        failing = true;
                        tracing::warn!(url = %url, error = %error, "cannot connect to peer");
                    } else {
                        tracing::debug!(url = %url, error = %error, "cannot connect to peer");
                    }
                }
                StreamEnd::Broken(status) => {
                    let reason = status.map_or_else(
                        || "stream ended".to_owned(),
                        |s| match std::error::Error::source(&s) {
                            Some(source) => {
                                format!("{}: {}: {}", s.code(), s.message(), error_chain(source))
                            }
                            None => format!("{}: {}", s.code(), s.message()),
                        },
                    );
                    if !failing {
                        failing = true;
                        tracing::warn!(url = %url, reason = %reason, "lost the raft stream to peer");
                    } else {
                        tracing::debug!(url = %url, reason = %reason, "lost the raft stream to peer");
                    }
                }
            }
            self.node.report_unreachable(self.link.peer_id);
            self.metrics
                .peer_sent_failures
                .get_or_create(&self.label)
                .inc();
            if started.elapsed() >= STREAM_HEALTHY_AFTER {
                backoff = RECONNECT_BACKOFF_MIN;
            }
            self.discard_queued();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            }
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            // What raft queued while the peer was unreachable is stale; it resends from its
            // progress once the stream is back.
            self.discard_queued();
        }
        tracing::debug!("peer sender stopped");
    }

    /// Connects to `url` and streams batches until something breaks.
    async fn stream(&mut self, url: &str, failing: &mut bool) -> StreamEnd {
        let channel = match self.cfg.dialer.connect(url).await {
            Ok(channel) => channel,
            Err(e) => return StreamEnd::Connect(e),
        };
        let mut client = PeerClient::new(channel).max_encoding_message_size(usize::MAX);
        let (batches_tx, batches_rx) = mpsc::channel(STREAM_BATCHES_MAX);
        let call = client.raft(ReceiverStream::new(batches_rx));
        tokio::pin!(call);
        if std::mem::take(failing) {
            tracing::info!(url = %url, "raft stream to peer established");
        } else {
            tracing::debug!(url = %url, "raft stream to peer established");
        }
        loop {
            let first = tokio::select! {
                ended = &mut call => return StreamEnd::Broken(ended.err()),
                next = self.link.queue.recv() => match next {
                    Some(message) => message,
                    None => return StreamEnd::QueueClosed,
                },
            };
            let batch = self.batch(first);
            tokio::select! {
                ended = &mut call => return StreamEnd::Broken(ended.err()),
                sent = batches_tx.send(batch) => {
                    if sent.is_err() {
                        return StreamEnd::Broken(None);
                    }
                }
            }
        }
    }

    /// `first` and whatever else is queued, up to [`BATCH_BYTES_MAX`] (plus one message).
    fn batch(&mut self, first: Message) -> RaftBatch {
        let mut messages = vec![encode(&first)];
        let mut bytes = messages[0].len();
        while bytes < BATCH_BYTES_MAX {
            match self.link.queue.try_recv() {
                Ok(message) => {
                    let encoded = encode(&message);
                    bytes += encoded.len();
                    messages.push(encoded);
                }
                Err(_) => {
                    if self.link.congested.swap(false, Ordering::AcqRel) {
                        tracing::info!("raft message queue to peer drained");
                    }
                    break;
                }
            }
        }
        self.metrics
            .peer_sent_bytes
            .get_or_create(&self.label)
            .inc_by(bytes as u64);
        RaftBatch {
            cluster_id: self.cfg.cluster_id,
            from: self.cfg.member_id,
            to: self.link.peer_id,
            messages,
        }
    }

    /// Drops every queued message (the peer could not take them).
    fn discard_queued(&mut self) {
        let mut dropped = 0usize;
        while let Ok(message) = self.link.queue.try_recv() {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.node
                    .report_snapshot(self.link.peer_id, SnapshotStatus::Failure);
            }
            dropped += 1;
        }
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "discarded raft messages queued for an unreachable peer"
            );
        }
        self.link.congested.store(false, Ordering::Release);
    }
}

/// An error and its sources, `outer: inner: ...` (tonic's own text is often just "transport
/// error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

/// Measures the round trip to a peer every [`PROBE_INTERVAL`] with a small `Peer/Members` call
/// on its own connection (etcd's prober), into `etcd_network_peer_round_trip_time_seconds`.
async fn probe_round_trips(
    dialer: PeerDialer,
    urls: Vec<String>,
    label: PeerLabel,
    metrics: Arc<Metrics>,
) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<PeerClient<Channel>> = None;
    loop {
        interval.tick().await;
        if client.is_none() {
            for url in &urls {
                if let Ok(channel) = dialer.connect(url).await {
                    client = Some(PeerClient::new(channel));
                    break;
                }
            }
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let request = tonic::Request::new(crate::proto::oxetcdpb::MembersRequest {});
        match tokio::time::timeout(PROBE_TIMEOUT, c.members(request)).await {
            Ok(Ok(_)) => metrics
                .peer_rtt_seconds
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64()),
            _ => client = None,
        }
    }
}

/// Asks the member at peer URL `url` for the cluster's member list (`Peer/Members`).
pub async fn fetch_members(
    dialer: &PeerDialer,
    url: &str,
) -> Result<crate::proto::oxetcdpb::MembersResponse, String> {
    let channel = dialer.connect(url).await.map_err(|e| error_chain(&e))?;
    let mut client = PeerClient::new(channel);
    let request = tonic::Request::new(crate::proto::oxetcdpb::MembersRequest {});
    tokio::time::timeout(MEMBERS_TIMEOUT, client.members(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map(|r| r.into_inner())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}
