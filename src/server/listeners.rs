//! Listeners: the client gRPC router with its middleware, the peer router, `/metrics` sampling,
//! binding URLs (TCP, or a unix socket for unix:// ones) and serving until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::api::{self, ServerCtx};
use crate::config::{Config, url_host_port};
use crate::metrics::{BackupSample, CertificateExpiry, DiskSpace, Metrics};
use crate::peer::PeerService;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::grpc::health::v1::health_server::HealthServer;
use crate::proto::oxetcdpb::peer_server::PeerServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::tls::ServedCertificate;

use super::ServerError;

/// gRPC allows this much beyond `--max-request-bytes` so the size check can answer with etcd's
/// own error instead of a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// `/metrics`: samples the member's state, then encodes every metric.
pub(super) fn metrics_text(
    config: &Config,
    ctx: ServerCtx,
    metrics: Arc<Metrics>,
    certificates: Vec<(&'static str, ServedCertificate)>,
) -> crate::http::MetricsText {
    // The log file's directory, or the data directory when logging to stderr/stdout.
    let log_dir = config
        .log_outputs
        .iter()
        .find(|o| !matches!(o.as_str(), "stderr" | "stdout" | "default"))
        .and_then(|f| std::path::Path::new(f).parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| config.data_dir.clone());
    let data_dir = config.data_dir.clone();
    let backup_dir = config.backup.directory.clone();
    let backup_max_age_seconds = config.backup.max_age.as_secs();
    Arc::new(move || {
        let status = ctx.node.status();
        let sizes = ctx.engine.sizes();
        let watch = ctx.watch.stats();
        metrics.observe(crate::metrics::Sample {
            has_leader: status.leader_id != 0,
            is_leader: status.is_leader,
            is_learner: ctx.is_learner(),
            leader_changes: status.leader_changes,
            committed_index: status.commit_index,
            applied_index: status.applied_index,
            proposals_pending: ctx.node.pending_proposals() as u64,
            db_size_bytes: sizes.on_disk_bytes,
            db_size_in_use_bytes: sizes.in_use_bytes,
            quota_backend_bytes: ctx.quota.quota_bytes,
            watchers: (watch.synced + watch.unsynced) as u64,
            slow_watchers: watch.unsynced as u64,
            watch_streams: watch.streams,
            watch_events_total: watch.events_received,
            watch_events_pending: watch.events_sent.saturating_sub(watch.events_received),
            keys: ctx.mvcc.live_keys() as u64,
            current_revision: ctx.mvcc.current_revision(),
            compact_revision: ctx.mvcc.compact_revision(),
            raft_log_entries: (status.raft_last_index + 1).saturating_sub(status.raft_first_index),
            data_dir_disk: DiskSpace::of(&data_dir),
            log_dir_disk: DiskSpace::of(&log_dir),
            pending_compaction_bytes: sizes.pending_compaction_bytes,
            live_data_bytes: sizes.live_data_bytes,
            certificates: certificates
                .iter()
                .map(|(listener, certificate)| CertificateExpiry {
                    listener,
                    path: certificate.path().display().to_string(),
                    not_after: certificate.not_after(),
                })
                .collect(),
            backup: crate::backup::newest(&backup_dir).map(|newest| BackupSample {
                finished_seconds: newest
                    .modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                size_bytes: newest.size_bytes,
            }),
            backup_max_age_seconds,
        });
        metrics.encode()
    })
}
pub(super) fn grpc_router(
    config: &Config,
    ctx: &ServerCtx,
    metrics: &Arc<Metrics>,
) -> axum::Router {
    let decode_max = config.request_bytes_max as usize + GRPC_OVERHEAD_BYTES;
    macro_rules! limits {
        ($server:expr) => {
            $server
                .max_decoding_message_size(decode_max)
                .max_encoding_message_size(usize::MAX)
        };
    }
    tonic::service::Routes::new(limits!(KvServer::new(api::kv::KvService::new(ctx.clone()))))
        .add_service(limits!(WatchServer::new(api::watch::WatchService::new(
            ctx.clone()
        ))))
        .add_service(limits!(LeaseServer::new(api::lease::LeaseService::new(
            ctx.clone()
        ))))
        .add_service(limits!(ClusterServer::new(
            api::cluster::ClusterService::new(ctx.clone())
        )))
        .add_service(limits!(MaintenanceServer::new(
            api::maintenance::MaintenanceService::new(ctx.clone())
        )))
        .add_service(limits!(AuthServer::new(api::auth::AuthService::new(
            ctx.clone()
        ))))
        .add_service(limits!(LockServer::new(api::lock::LockService::new(
            ctx.clone()
        ))))
        .add_service(limits!(ElectionServer::new(
            api::election::ElectionService::new(ctx.clone())
        )))
        .add_service(HealthServer::new(api::health::HealthService))
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::map_response(api::oversize::rewrite))
        .layer(axum::middleware::from_fn({
            // Shared, not cloned per call: a `ServerCtx` clone is a dozen reference counts.
            let ctx = Arc::new(ctx.clone());
            move |request, next| api::interceptor::check(ctx.clone(), request, next)
        }))
        .layer(axum::middleware::from_fn({
            let recorder = Arc::new(api::grpc_metrics::Recorder::new(metrics.clone()));
            let trace_member = config
                .enable_distributed_tracing
                .then(|| ctx.node.config().member_id);
            move |request, next| {
                api::grpc_metrics::record(recorder.clone(), trace_member, request, next)
            }
        }))
}
/// The peer URLs' service: raft messages from the other members; their streams end when `stop`
/// turns true.
pub(super) fn peer_router(
    ctx: &ServerCtx,
    stop: watch::Receiver<bool>,
    snap_dir: std::path::PathBuf,
    metrics: Arc<Metrics>,
) -> axum::Router {
    let decode_max = crate::peer::batch_bytes_limit(ctx.config.request_bytes_max as usize);
    let service = PeerService::new(
        ctx.node.clone(),
        stop,
        Arc::new(api::peer::PeerHandlersImpl::new(ctx.clone())),
        snap_dir,
        crate::peer::snapshot_bytes_limit(ctx.quota.quota_bytes),
        metrics,
    );
    tonic::service::Routes::new(PeerServer::new(service).max_decoding_message_size(decode_max))
        .prepare()
        .into_axum_router()
}
/// A bound listener: TCP for http:// and https:// URLs, a unix socket for unix:// ones.
pub(super) enum Bound {
    Tcp(TcpListener),
    /// The socket and its file, removed when serving ends (as Go's listener does on close).
    Unix(UnixListener, PathBuf),
}

/// Binds `url`. A unix:// URL names the socket file `host:port` (relative to the working
/// directory, as etcd names it); a file left there by an earlier run is removed first, as etcd
/// does.
pub(super) async fn bind(url: &url::Url) -> Result<Bound, ServerError> {
    let addr = url_host_port(url);
    if url.scheme() == "unix" {
        let path = PathBuf::from(addr);
        let listen_error = |source| ServerError::Listen {
            url: url.to_string(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_error(e)),
        }
        let listener = UnixListener::bind(&path).map_err(listen_error)?;
        return Ok(Bound::Unix(listener, path));
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(&addr)
        .await
        .map_err(|source| ServerError::Listen {
            url: url.to_string(),
            source,
        })?
        .collect();
    let mut last_err = None;
    for a in resolved {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(Bound::Tcp(l)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(ServerError::Listen {
        url: url.to_string(),
        source: last_err.unwrap_or_else(|| std::io::Error::other("address resolved to nothing")),
    })
}
pub(super) async fn serve(listener: Bound, router: axum::Router, shutdown: watch::Receiver<bool>) {
    use crate::authority_fix::FixingListener;
    match listener {
        Bound::Tcp(listener) => serve_on(FixingListener::new(listener), router, shutdown).await,
        Bound::Unix(listener, path) => {
            serve_on(FixingListener::new(listener), router, shutdown).await;
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), error = %e, "could not remove the unix socket");
            }
        }
    }
}

/// Serves `router` on an https:// listener: handshakes run in `tasks` (see `tls_listener.rs`).
pub(super) async fn serve_tls(
    listener: Bound,
    tls: Arc<rustls::ServerConfig>,
    tasks: &crate::tasks::TaskSet,
    router: axum::Router,
    kind: &'static str,
) {
    let Bound::Tcp(listener) = listener else {
        // Only https:// URLs are served with TLS, and they are bound to TCP.
        tracing::error!("https listener not started: bound to a unix socket");
        return;
    };
    let listener = match super::tls_listener::TlsListener::start(listener, tls, tasks, kind) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "https listener not started");
            return;
        }
    };
    let mut shutdown = tasks.stop_signal();
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    // Each request gets its connection's `TlsClient` (whose certificate's CN may name the user).
    let service = router.into_make_service_with_connect_info::<api::TlsClient>();
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "listener failed");
    }
}

async fn serve_on<L>(listener: L, router: axum::Router, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "listener failed");
    }
}
