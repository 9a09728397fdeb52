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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;

use super::{BATCH_BYTES_MAX, hex};
use crate::node::{NodeHandle, Transport};
use crate::proto::oxetcdpb::RaftBatch;
use crate::proto::oxetcdpb::peer_client::PeerClient;

/// Raft messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_MESSAGES: usize = 4096;
/// Batches handed to one peer's gRPC stream and not yet written to the connection.
const STREAM_BATCHES_MAX: usize = 16;
/// First wait before reconnecting to a peer; doubled after each failure up to the maximum.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A stream that lived this long resets the backoff.
const STREAM_HEALTHY_AFTER: Duration = Duration::from_secs(2);
/// Bound on opening a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on an open connection, so a peer that vanished without closing is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the transport needs to know about this member.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// The node's [`Transport`]: routes each raft message to its peer's queue.
pub struct PeerTransport {
    peers: HashMap<u64, PeerQueue>,
    node: Arc<OnceLock<NodeHandle>>,
}

struct PeerQueue {
    tx: mpsc::Sender<Message>,
    /// Set when the queue overflowed, cleared by the peer task once it caught up; only the first
    /// overflow of an episode is logged.
    congested: Arc<AtomicBool>,
}

/// The peer tasks, built with the transport and started once the node runs.
pub struct PeerLinks {
    cfg: TransportConfig,
    links: Vec<PeerLink>,
    node: Arc<OnceLock<NodeHandle>>,
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
    pub fn new(cfg: TransportConfig, peers: &[(u64, Vec<String>)]) -> (PeerTransport, PeerLinks) {
        let node = Arc::new(OnceLock::new());
        let mut queues = HashMap::new();
        let mut links = Vec::new();
        for (peer_id, urls) in peers {
            assert_ne!(*peer_id, cfg.member_id, "a member is not its own peer");
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
            let congested = Arc::new(AtomicBool::new(false));
            queues.insert(
                *peer_id,
                PeerQueue {
                    tx,
                    congested: congested.clone(),
                },
            );
            links.push(PeerLink {
                peer_id: *peer_id,
                urls: urls.clone(),
                queue: rx,
                congested,
            });
        }
        (
            PeerTransport {
                peers: queues,
                node: node.clone(),
            },
            PeerLinks { cfg, links, node },
        )
    }
}

impl Transport for PeerTransport {
    fn send(&self, messages: Vec<Message>) {
        // The handle is missing only between node::start and PeerLinks::spawn; messages are
        // queued then all the same, and failures cannot be reported yet.
        self.enqueue(messages, self.node.get());
    }
}

impl PeerTransport {
    fn enqueue(&self, messages: Vec<Message>, node: Option<&NodeHandle>) {
        let mut unreachable: Vec<u64> = Vec::new();
        for message in messages {
            let to = message.to;
            let Some(peer) = self.peers.get(&to) else {
                tracing::warn!(to = %hex(to), "raft message for a member this transport does not know; dropped");
                continue;
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                tracing::warn!(
                    peer = %hex(to),
                    index = message.get_snapshot().get_metadata().index,
                    "cannot send a raft snapshot: snapshot streaming to peers is not supported yet"
                );
                if let Some(node) = node {
                    node.report_snapshot(to, SnapshotStatus::Failure);
                }
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
                }
                // The peer task stopped: the member is shutting down.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if let Some(node) = node {
            for peer in unreachable {
                node.report_unreachable(peer);
            }
        }
    }
}

impl PeerLinks {
    /// Starts one task per peer on `tasks`; they report to `node` and stop when `shutdown` turns
    /// true.
    pub fn spawn(self, node: NodeHandle, shutdown: watch::Receiver<bool>, tasks: &mut JoinSet<()>) {
        let _ = self.node.set(node.clone());
        for link in self.links {
            let span = tracing::info_span!("peer_sender", peer = %hex(link.peer_id));
            let sender = PeerSender {
                cfg: self.cfg.clone(),
                link,
                node: node.clone(),
            };
            tasks.spawn(sender.run(shutdown.clone()).instrument(span));
        }
    }
}

/// One peer's task.
struct PeerSender {
    cfg: TransportConfig,
    link: PeerLink,
    node: NodeHandle,
}

/// How a stream to the peer ended.
enum StreamEnd {
    /// Could not connect.
    Connect(tonic::transport::Error),
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
        let channel = match connect(url).await {
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

async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
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

fn encode(message: &Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("encoding an in-memory raft message cannot fail")
}
