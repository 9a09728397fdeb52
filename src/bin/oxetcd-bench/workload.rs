//! The request-response workloads (put, range, txn-put, lease-keepalive, mixed): one task per
//! client, each with one request in flight, timing every request from send to response.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use oxetcd::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, kv_client::KvClient,
    lease_client::LeaseClient, request_op,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::report::Report;
use crate::{Common, CpuClock, Issuer, connect, spawn_progress};

/// Largest response a client accepts (an unlimited range over a large key space is big).
const RESPONSE_BYTES_MAX: usize = 1 << 30;
/// TTL of the leases the lease-keepalive workload keeps alive, in seconds.
const LEASE_TTL_S: i64 = 60;

/// What each request of a run is.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Put,
    Range {
        serializable: bool,
        limit: i64,
        prefix: bool,
        paginate: bool,
    },
    TxnPut {
        ops: usize,
    },
    LeaseKeepalive,
    Mixed {
        read_ratio: f64,
    },
}

/// A lease this client keeps alive, and the stream it does so over.
struct Keepalive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

/// One client: its connection and what it carries from one request to the next.
struct Worker {
    common: Arc<Common>,
    kind: Kind,
    kv: KvClient<Channel>,
    keepalive: Option<Keepalive>,
    /// The next page of a paginated walk: its first key and the walk's revision.
    page: Option<(Vec<u8>, i64)>,
}

impl Worker {
    async fn step(&mut self, seq: u64) -> Result<(), tonic::Status> {
        match self.kind {
            Kind::Put => self.put(seq).await,
            Kind::Range {
                serializable,
                limit,
                prefix,
                paginate,
            } => {
                let mut request = RangeRequest {
                    serializable,
                    limit,
                    ..RangeRequest::default()
                };
                if paginate {
                    let (start, revision) = self
                        .page
                        .take()
                        .unwrap_or_else(|| (self.common.prefix.clone().into_bytes(), 0));
                    request.key = start;
                    request.range_end = self.common.prefix_end();
                    request.revision = revision;
                } else if prefix {
                    request.key = self.common.prefix.clone().into_bytes();
                    request.range_end = self.common.prefix_end();
                } else {
                    request.key = self.common.key_for(seq);
                }
                let revision = request.revision;
                let response = self.kv.range(request).await?.into_inner();
                if paginate
                    && response.more
                    && let Some(last) = response.kvs.last()
                {
                    let mut next = last.key.clone();
                    next.push(0);
                    let walk_revision = if revision == 0 {
                        response.header.map_or(0, |h| h.revision)
                    } else {
                        revision
                    };
                    self.page = Some((next, walk_revision));
                }
                Ok(())
            }
            Kind::TxnPut { ops } => {
                let space = self.common.key_space_size;
                // Keys of one txn must differ: consecutive indexes from a base.
                let base = if self.common.sequential_keys {
                    seq.wrapping_mul(ops as u64)
                } else {
                    rand::random_range(0..space)
                };
                let success = (0..ops as u64)
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: self.common.key(base.wrapping_add(i) % space),
                            value: random_value(self.common.val_size),
                            ..PutRequest::default()
                        })),
                    })
                    .collect();
                self.kv
                    .txn(TxnRequest {
                        success,
                        ..TxnRequest::default()
                    })
                    .await?;
                Ok(())
            }
            Kind::LeaseKeepalive => {
                let keepalive = self
                    .keepalive
                    .as_mut()
                    .expect("lease-keepalive workers hold a lease");
                keepalive
                    .requests
                    .send(LeaseKeepAliveRequest { id: keepalive.id })
                    .await
                    .map_err(|_| tonic::Status::unavailable("keepalive stream closed"))?;
                match keepalive.responses.message().await? {
                    Some(response) if response.ttl > 0 => Ok(()),
                    Some(_) => Err(tonic::Status::not_found("lease expired")),
                    None => Err(tonic::Status::unavailable("keepalive stream ended")),
                }
            }
            Kind::Mixed { read_ratio } => {
                if rand::random::<f64>() < read_ratio {
                    self.kv
                        .range(RangeRequest {
                            key: self.common.key_for(seq),
                            ..RangeRequest::default()
                        })
                        .await?;
                    Ok(())
                } else {
                    self.put(seq).await
                }
            }
        }
    }

    async fn put(&mut self, seq: u64) -> Result<(), tonic::Status> {
        self.kv
            .put(PutRequest {
                key: self.common.key_for(seq),
                value: random_value(self.common.val_size),
                ..PutRequest::default()
            })
            .await?;
        Ok(())
    }
}

/// `len` random letters, new for every put: values that compress no better than real ones
/// do, so a store that compresses its files is not flattered (etcd's benchmark sends random
/// bytes too).
fn random_value(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random_range(b'a'..=b'z')).collect()
}

/// Grants a lease on `channel` and opens the stream that keeps it alive.
async fn keepalive(channel: Channel) -> Result<Keepalive, String> {
    let mut lease = LeaseClient::new(channel);
    let granted = lease
        .lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        })
        .await
        .map_err(|e| format!("granting a lease: {}", e.message()))?
        .into_inner();
    // A first keepalive is queued before the call: a Go server sends the stream's headers only
    // with its first response, which the call waits for.
    let (requests, receiver) = mpsc::channel(1);
    requests
        .send(LeaseKeepAliveRequest { id: granted.id })
        .await
        .map_err(|_| "queueing the first keepalive".to_owned())?;
    let mut responses = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .map_err(|e| format!("opening a keepalive stream: {}", e.message()))?
        .into_inner();
    responses
        .message()
        .await
        .map_err(|e| format!("first keepalive: {}", e.message()))?
        .ok_or("the keepalive stream ended")?;
    Ok(Keepalive {
        id: granted.id,
        requests,
        responses,
    })
}

/// What one client task measured.
#[derive(Default)]
struct ClientResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(common: &Common, kind: Kind, name: &str) -> Result<Report, String> {
    if let Kind::TxnPut { ops } = kind
        && ops as u64 > common.key_space_size
    {
        return Err("--txn-ops may not exceed --key-space-size (keys of a txn must differ)".into());
    }
    let common = Arc::new(common.clone());
    let channels = connect(&common).await?;
    let mut workers = Vec::with_capacity(common.clients);
    for client in 0..common.clients {
        let channel = channels[client % channels.len()].clone();
        let keepalive = match kind {
            Kind::LeaseKeepalive => Some(keepalive(channel.clone()).await?),
            _ => None,
        };
        workers.push(Worker {
            common: Arc::clone(&common),
            kind,
            kv: KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX),
            keepalive,
            page: None,
        });
    }

    let cpu = CpuClock::start(&common)?;
    let issuer = Arc::new(Issuer::new(&common));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(Arc::clone(&issuer), &common, Arc::clone(&stop));
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let issuer = Arc::clone(&issuer);
        tasks.push(tokio::spawn(async move {
            let mut result = ClientResult::default();
            while let Some(seq) = issuer.next().await {
                let sent = Instant::now();
                let outcome = worker.step(seq).await;
                let latency_ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match outcome {
                    Ok(()) => result.latencies_ns.push(latency_ns),
                    Err(status) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| {
                            format!("{:?}: {}", status.code(), status.message())
                        });
                    }
                }
                issuer.done.fetch_add(1, Ordering::Relaxed);
            }
            (result, worker.keepalive.map(|k| k.id))
        }));
    }
    let mut report = Report {
        op: name.to_owned(),
        ..Report::default()
    };
    let mut leases = Vec::new();
    for task in tasks {
        let (result, lease) = task
            .await
            .map_err(|e| format!("a client task failed: {e}"))?;
        report.latencies_ns.extend(result.latencies_ns);
        report.errors += result.errors;
        if report.first_error.is_none() {
            report.first_error = result.first_error;
        }
        leases.extend(lease);
    }
    report.elapsed = issuer.started().elapsed();
    cpu.stop(&mut report)?;
    stop.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    // Leave no leases behind; not part of the measurement.
    let mut lease = LeaseClient::new(channels[0].clone());
    for id in leases {
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(report)
}
