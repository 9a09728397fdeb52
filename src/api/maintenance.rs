//! The Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader and
//! (refused) Downgrade.
//!
//! Snapshot streams the state machine in the format documented in [`crate::snapshot`], produced
//! on a thread owned by [`ServerCtx::streams`] from one consistent RocksDB view and handed to the
//! gRPC stream through a bounded channel, so at most a few chunks are in memory whatever the
//! database size; the thread gives up when the client streams are drained at shutdown. At most
//! [`SNAPSHOT_STREAMS_MAX`] snapshots stream at once per member (a stream counts until its
//! thread has ended and the client has the last chunk or went away); further callers are
//! refused with `etcdserver: too many requests` (ResourceExhausted) rather than queued. Nothing
//! here holds a lock that raft or apply take: the thread reads its own RocksDB view.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{EtcdError, ServerCtx, blocking};
use crate::node::Origin;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse, alarm_request::AlarmAction,
};
use crate::snapshot::format::{self as snapshot, SNAPSHOT_CHUNK_BYTES};
use crate::tasks::SpawnError;
use crate::version::{ETCD_API_VERSION, ETCD_STORAGE_VERSION, OXETCD_VERSION};

/// Snapshot chunks queued between the producing thread and the gRPC stream; when full the
/// producer blocks until the client has taken more.
const SNAPSHOT_QUEUE_CHUNKS: usize = 4;

/// Snapshot streams served at once by this member. Each reads the whole database from disk, so a
/// few at a time keep the disk and the snapshot threads bounded.
pub const SNAPSHOT_STREAMS_MAX: usize = 2;

/// Admission to [`SNAPSHOT_STREAMS_MAX`]: shared by the gRPC service and the JSON gateway.
static SNAPSHOT_STREAMS: Semaphore = Semaphore::const_new(SNAPSHOT_STREAMS_MAX);

/// How often MoveLeader looks whether the target has become leader (an atomic load).
const LEADER_TRANSFER_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One defragmentation at a time per process; later requests wait their turn.
static DEFRAG_LOCK: Mutex<()> = Mutex::new(());

pub struct MaintenanceService {
    ctx: ServerCtx,
}

impl MaintenanceService {
    pub fn new(ctx: ServerCtx) -> MaintenanceService {
        MaintenanceService { ctx }
    }
}

/// An active alarm the way etcd's `AlarmMember.String()` prints it (Go proto's compact text), e.g.
/// `memberID:10276657743932975437 alarm:NOSPACE `.
pub fn alarm_member_string(member_id: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| alarm.to_string());
    format!("memberID:{member_id} alarm:{name} ")
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let caller = self.ctx.caller(&request).await?;
        let req = request.into_inner();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                let alarms = self
                    .ctx
                    .alarms
                    .list()
                    .into_iter()
                    .filter(|(member_id, alarm)| {
                        (req.member_id == 0 || *member_id == req.member_id)
                            && (req.alarm == AlarmType::None as i32 || *alarm == req.alarm)
                    })
                    .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                    .collect();
                Ok(Response::new(AlarmResponse {
                    header: Some(self.ctx.header_now()),
                    alarms,
                }))
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                // Raising or clearing an alarm is root's (checked where it is applied).
                let resp = self
                    .ctx
                    .node
                    .propose(req, Origin::Client(caller))
                    .await
                    .map_err(EtcdError::from)?;
                Ok(Response::new(resp))
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown alarm action {}",
                req.action
            ))),
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let engine = self.ctx.engine.clone();
        let sizes = blocking(move || Ok(engine.sizes())).await?;
        let node = self.ctx.node.status();
        let mut errors = Vec::new();
        if node.leader_id == 0 {
            errors.push(EtcdError::NoLeader.to_string());
        }
        errors.extend(
            self.ctx
                .alarms
                .list()
                .into_iter()
                .map(|(member_id, alarm)| alarm_member_string(member_id, alarm)),
        );
        let is_learner = self
            .ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .iter()
            .any(|m| m.id == node.member_id && m.is_learner);
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header_now()),
            version: ETCD_API_VERSION.to_string(),
            db_size: saturating_i64(sizes.on_disk_bytes),
            leader: node.leader_id,
            raft_index: node.commit_index,
            raft_term: node.term,
            raft_applied_index: node.applied_index,
            errors,
            db_size_in_use: saturating_i64(sizes.in_use_bytes),
            is_learner,
            storage_version: ETCD_STORAGE_VERSION.to_string(),
            db_size_quota: saturating_i64(self.ctx.quota.quota_bytes),
            downgrade_info: None,
            oxetcd_version: OXETCD_VERSION.to_string(),
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.ctx.maintenance_admin(&request).await?;
        let engine = self.ctx.engine.clone();
        blocking(move || {
            let _one_at_a_time = DEFRAG_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            failpoint!("defragment");
            let before = engine.sizes();
            tracing::info!(db_size_bytes = before.on_disk_bytes, "starting defragment");
            let started = Instant::now();
            engine.compact_all();
            let after = engine.sizes();
            tracing::info!(
                db_size_bytes = after.on_disk_bytes,
                db_size_before_bytes = before.on_disk_bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "finished defragment"
            );
            Ok(())
        })
        .await?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.ctx.header_now()),
        }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.ctx.maintenance_admin(&request).await?;
        let mvcc = self.ctx.mvcc.clone();
        let (hash, revision) = blocking(move || mvcc.hash_all().map_err(EtcdError::from)).await?;
        Ok(Response::new(HashResponse {
            header: Some(self.ctx.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.ctx.maintenance_admin(&request).await?;
        let revision = request.into_inner().revision;
        let mvcc = self.ctx.mvcc.clone();
        let h = blocking(move || mvcc.hash_kv(revision).map_err(EtcdError::from)).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(h.current_rev)),
            hash: h.hash,
            compact_revision: h.compact_rev,
            hash_revision: h.hash_rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.ctx.maintenance_admin(&request).await?;
        let Ok(permit) = SNAPSHOT_STREAMS.try_acquire() else {
            tracing::warn!(
                streams_max = SNAPSHOT_STREAMS_MAX,
                "database snapshot refused: too many snapshots streaming"
            );
            return Err(EtcdError::TooManyRequests.into());
        };
        // Held by the producing thread and the stream; freed when both are done.
        let permit = std::sync::Arc::new(permit);
        let thread_permit = permit.clone();
        let (tx, rx) = mpsc::channel(SNAPSHOT_QUEUE_CHUNKS);
        let engine = self.ctx.engine.clone();
        let header = self.ctx.header_now();
        let stop = self.ctx.streams.stop_signal();
        let spawned = self.ctx.streams.spawn_thread("snapshot-send", move || {
            let _permit = thread_permit;
            if let Err(e) = send_snapshot(&engine, header, &tx, &stop) {
                match e {
                    _ if *stop.borrow() => {
                        tracing::info!("database snapshot interrupted: the member is stopping");
                        // A client not reading has a full queue; its connection is closed
                        // later in the shutdown, ending the stream anyway.
                        let _ = tx.try_send(Err(EtcdError::Stopped.into()));
                    }
                    // The client went away; nobody is left to tell.
                    snapshot::SnapshotError::Write(_) => {
                        tracing::warn!(error = %e, "database snapshot not completed")
                    }
                    other => {
                        tracing::error!(error = %other, "failed to send database snapshot");
                        let _ = tx.blocking_send(Err(EtcdError::Other(other.to_string()).into()));
                    }
                }
            }
        });
        match spawned {
            Ok(()) => Ok(Response::new(SnapshotStream {
                chunks: ReceiverStream::new(rx),
                _permit: permit,
            })),
            Err(SpawnError::Stopping { .. }) => Err(EtcdError::Stopped.into()),
            Err(e) => Err(EtcdError::Other(e.to_string()).into()),
        }
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let node = self.ctx.node.status();
        if !node.is_leader {
            return Err(EtcdError::NotLeader.into());
        }
        let is_voter = self
            .ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .iter()
            .any(|m| m.id == target && !m.is_learner);
        if !is_voter {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if target != node.member_id {
            let started = Instant::now();
            tracing::info!(
                from = %format!("{:x}", node.member_id),
                to = %format!("{target:x}"),
                term = node.term,
                "leadership transfer starting"
            );
            self.ctx
                .node
                .transfer_leader(target)
                .map_err(EtcdError::from)?;
            // Raft gives no signal when a transfer ends (it may also give up after an election
            // timeout, silently); like etcd, watch the leader until it is the target.
            let deadline = started + self.ctx.config.request_timeout;
            while self.ctx.node.status().leader_id != target {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        to = %format!("{target:x}"),
                        took_ms = started.elapsed().as_millis() as u64,
                        "leadership transfer failed"
                    );
                    return Err(EtcdError::TimeoutLeaderTransfer.into());
                }
                tokio::time::sleep(LEADER_TRANSFER_POLL_INTERVAL).await;
            }
            tracing::info!(
                to = %format!("{target:x}"),
                took_ms = started.elapsed().as_millis() as u64,
                "leadership transfer finished"
            );
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.header_now()),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "downgrade is not supported by oxetcd",
        ))
    }
}

/// A snapshot stream to a client, holding its place among the [`SNAPSHOT_STREAMS_MAX`].
pub struct SnapshotStream {
    chunks: ReceiverStream<Result<SnapshotResponse, Status>>,
    _permit: std::sync::Arc<SemaphorePermit<'static>>,
}

impl tokio_stream::Stream for SnapshotStream {
    type Item = Result<SnapshotResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.chunks).poll_next(cx)
    }
}

/// Streams the snapshot of `engine` into `tx` (runs on its own thread); gives up when `stop`
/// turns true.
fn send_snapshot(
    engine: &crate::storage::Engine,
    header: ResponseHeader,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
    stop: &watch::Receiver<bool>,
) -> Result<(), snapshot::SnapshotError> {
    let view = engine.view();
    let total_bytes = snapshot::encoded_len(&view)?;
    tracing::info!(total_bytes, "sending database snapshot to client");
    let started = Instant::now();
    let mut sink = ChunkSink {
        buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
        total_bytes,
        sent_bytes: 0,
        header: Some(header),
        tx,
        stop: stop.clone(),
    };
    let (trailer, pos) = snapshot::write_body(&view, &mut sink)?;
    drop(view);
    sink.send_buffered()
        .map_err(snapshot::SnapshotError::Write)?;
    sink.send(trailer.to_vec())
        .map_err(snapshot::SnapshotError::Write)?;
    debug_assert_eq!(
        sink.sent_bytes, total_bytes,
        "encoded_len agrees with the encoder"
    );
    tracing::info!(
        total_bytes,
        index = pos.index,
        term = pos.term,
        took_ms = started.elapsed().as_millis() as u64,
        "sent database snapshot to client"
    );
    Ok(())
}

/// Cuts the snapshot byte stream into [`SNAPSHOT_CHUNK_BYTES`] messages.
struct ChunkSink<'a> {
    buf: Vec<u8>,
    total_bytes: u64,
    sent_bytes: u64,
    header: Option<ResponseHeader>,
    tx: &'a mpsc::Sender<Result<SnapshotResponse, Status>>,
    /// The client streams' stop signal: a client that stopped reading must not hold the
    /// producing thread past it.
    stop: watch::Receiver<bool>,
}

impl ChunkSink<'_> {
    /// Sends `blob` as one message; fails when the client has gone away or the member is
    /// stopping. The header and the storage version go with the first message only.
    fn send(&mut self, blob: Vec<u8>) -> io::Result<()> {
        let first = self.sent_bytes == 0;
        self.sent_bytes += blob.len() as u64;
        let resp = SnapshotResponse {
            header: if first { self.header.take() } else { None },
            remaining_bytes: self.total_bytes.saturating_sub(self.sent_bytes),
            blob,
            version: if first {
                ETCD_STORAGE_VERSION.to_string()
            } else {
                String::new()
            },
        };
        let (tx, stop) = (self.tx, &mut self.stop);
        // Waits for room in the queue or the stop signal, whichever comes first; neither
        // needs the runtime, so a plain executor on this thread does.
        futures::executor::block_on(async {
            tokio::select! {
                biased;
                Ok(_) = stop.wait_for(|stopping| *stopping) => Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the member is stopping",
                )),
                sent = tx.send(Ok(resp)) => sent.map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot client went away")
                }),
            }
        })
    }

    /// Sends whatever is buffered (the last, possibly short, chunk of the body).
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.send(chunk)
    }
}

impl Write for ChunkSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (SNAPSHOT_CHUNK_BYTES - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK_BYTES {
            self.send_buffered()?;
        }
        Ok(n)
    }

    /// Chunks go out when full; a short chunk only at the end ([`ChunkSink::send_buffered`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Batch, Cf, Engine};

    #[test]
    fn alarm_strings_match_etcd() {
        assert_eq!(
            alarm_member_string(10276657743932975437, 1),
            "memberID:10276657743932975437 alarm:NOSPACE "
        );
        assert_eq!(alarm_member_string(7, 2), "memberID:7 alarm:CORRUPT ");
    }

    #[test]
    fn streamed_chunks_reassemble_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), true).unwrap();
        let mut b = Batch::new();
        // ~100 KiB of values so the stream needs several chunks.
        for i in 0u64..100 {
            b.put(&engine, Cf::Kv, &i.to_be_bytes(), &vec![b'x'; 1000]);
        }
        crate::consistent_index::write(&engine, &mut b, 9, 2);
        engine.write(b, true).unwrap();

        let (tx, mut rx) = mpsc::channel(SNAPSHOT_QUEUE_CHUNKS);
        let producer = {
            let engine = engine.clone();
            let (_stop_tx, stop) = watch::channel(false);
            std::thread::spawn(move || {
                send_snapshot(&engine, ResponseHeader::default(), &tx, &stop)
            })
        };
        let mut messages = Vec::new();
        while let Some(msg) = rx.blocking_recv() {
            messages.push(msg.unwrap());
        }
        producer.join().unwrap().unwrap();

        let mut expected = Vec::new();
        snapshot::write_snapshot(&engine.view(), &mut expected).unwrap();
        let joined: Vec<u8> = messages.iter().flat_map(|m| m.blob.clone()).collect();
        assert_eq!(joined, expected);
        assert!(messages.len() >= 4);
        assert!(messages[0].header.is_some() && messages[0].version == ETCD_STORAGE_VERSION);
        assert!(
            messages[1..]
                .iter()
                .all(|m| m.header.is_none() && m.version.is_empty())
        );
        let last = messages.last().unwrap();
        assert_eq!(
            (last.blob.len(), last.remaining_bytes),
            (snapshot::SNAPSHOT_TRAILER_BYTES, 0)
        );
        assert!(
            messages[..messages.len() - 1]
                .iter()
                .all(|m| m.remaining_bytes > 0)
        );
        assert!(
            messages[..messages.len() - 2]
                .iter()
                .all(|m| m.blob.len() == SNAPSHOT_CHUNK_BYTES)
        );
        let mut remaining = expected.len() as u64;
        for m in &messages {
            remaining -= m.blob.len() as u64;
            assert_eq!(m.remaining_bytes, remaining);
        }
    }
}
