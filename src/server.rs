//! Wiring: opens the data directory, builds every layer, starts the node threads, the background
//! tasks and the listeners, and shuts them down in order (stop accepting → stop tasks → stop the
//! node → flush).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::alarm::Alarms;
use crate::api::{self, Quota, ServerCtx};
use crate::apply::Applier;
use crate::config::{AutoCompaction, ClusterState, Config, etcd_url_string, url_host_port};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::MvccStore;
use crate::node::{self, NodeConfig};
use crate::peer::{PeerService, PeerTransport, TransportConfig};
use crate::proto::etcdserverpb::CompactionRequest;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::grpc::health::v1::health_server::HealthServer;
use crate::proto::oxetcdpb::internal_request::Request as Internal;
use crate::proto::oxetcdpb::peer_server::PeerServer;
use crate::raft::RaftLogStore;
use crate::storage::{Batch, Engine, StorageError};
use crate::watch::WatchHub;

/// gRPC allows this much beyond `--max-request-bytes` so the size check can answer with etcd's
/// own error instead of a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How often the database size is sampled for the quota check.
const QUOTA_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("mvcc: {0}")]
    Mvcc(#[from] crate::mvcc::MvccError),
    #[error("lease: {0}")]
    Lease(#[from] crate::lease::LeaseError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("cannot listen on {url}: {source}")]
    Listen {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Bootstrap(String),
}

/// Runs the member until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    tracing::info!(
        name = %config.name,
        data_dir = %config.data_dir.display(),
        etcd_api_version = crate::version::ETCD_API_VERSION,
        oxetcd_version = crate::version::OXETCD_VERSION,
        "starting an etcd server"
    );
    create_private_dir(&config.data_dir)?;
    let engine = Engine::open(&config.data_dir, !config.unsafe_no_fsync)?;
    tracing::info!(path = %config.data_dir.display(), "opened backend db");

    let client_urls: Vec<String> = config
        .advertise_client_urls
        .iter()
        .map(etcd_url_string)
        .collect();
    let membership = load_or_bootstrap_membership(&config, &engine, &client_urls)?;
    tracing::info!(
        member_id = %format!("{:x}", membership.member_id),
        cluster_id = %format!("{:x}", membership.cluster_id),
        "starting local member"
    );

    let alarms = Arc::new(Alarms::open(&engine)?);
    let mvcc = Arc::new(MvccStore::open(engine.clone())?);
    let lessor = Arc::new(Mutex::new(Lessor::open(
        engine.clone(),
        min_lease_ttl_secs(&config),
        mvcc.live_leases()?,
        Instant::now(),
    )?));
    let watch = WatchHub::new(mvcc.clone());
    let applier = Applier::new(
        engine.clone(),
        mvcc.clone(),
        lessor.clone(),
        watch.clone(),
        alarms.clone(),
    )?;
    let store = RaftLogStore::open(engine.clone(), &membership.voters())?;
    let peers: Vec<(u64, Vec<String>)> = membership
        .members
        .iter()
        .filter(|m| m.id != membership.member_id)
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect();
    let (transport, peer_links) = PeerTransport::new(
        TransportConfig {
            cluster_id: membership.cluster_id,
            member_id: membership.member_id,
        },
        &peers,
    );
    let (node, threads) = node::start(
        NodeConfig {
            member_id: membership.member_id,
            cluster_id: membership.cluster_id,
            tick: config.heartbeat_interval(),
            election_ticks: config.election_ticks(),
            snapshot_count: config.snapshot_count,
            request_timeout: config.request_timeout(),
            max_request_bytes: config.request_bytes_max as usize,
        },
        store,
        engine.clone(),
        applier,
        Box::new(transport),
    )?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let quota = Arc::new(Quota::new(config.quota_backend_bytes_effective()));
    quota.record_db_size(engine.sizes().on_disk_bytes);
    let ctx = ServerCtx {
        config: config.clone(),
        node,
        engine: engine.clone(),
        mvcc,
        lessor,
        watch: watch.clone(),
        alarms,
        membership: Arc::new(RwLock::new(membership)),
        quota,
        shutdown: shutdown_rx.clone(),
    };

    let mut tasks = JoinSet::new();
    peer_links.spawn(ctx.node.clone(), shutdown_rx.clone(), &mut tasks);
    tasks.spawn(watch.clone().run_sync(shutdown_rx.clone()));
    tasks.spawn(api::lease::run_expiry(ctx.clone(), shutdown_rx.clone()));
    tasks.spawn(sample_quota(ctx.clone(), shutdown_rx.clone()));
    if config.auto_compaction != AutoCompaction::Disabled {
        tasks.spawn(auto_compact(ctx.clone(), shutdown_rx.clone()));
    }

    let metrics_text = metrics_text(ctx.clone());
    let mut listeners = JoinSet::new();
    for url in &config.listen_peer_urls {
        let listener = bind(url).await?;
        listeners.spawn(serve(listener, peer_router(&ctx), shutdown_rx.clone()));
        tracing::info!(address = %url_host_port(url), "serving peer traffic");
    }
    for url in &config.listen_client_urls {
        let listener = bind(url).await?;
        let router =
            grpc_router(&ctx).merge(crate::http::router(ctx.clone(), metrics_text.clone()));
        listeners.spawn(serve(listener, router, shutdown_rx.clone()));
        tracing::info!(address = %url_host_port(url), "serving client traffic insecurely; this is strongly discouraged!");
    }
    for url in &config.listen_metrics_urls {
        let listener = bind(url).await?;
        let router = crate::http::router(ctx.clone(), metrics_text.clone());
        listeners.spawn(serve(listener, router, shutdown_rx.clone()));
        tracing::info!(address = %url_host_port(url), "serving metrics");
    }
    tracing::info!("ready to serve client requests");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    wait_for_signal().await;
    tracing::info!("received a stop signal; shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    while listeners.join_next().await.is_some() {}
    while tasks.join_next().await.is_some() {}
    // Connections still open keep handles; stop the node explicitly rather than waiting for them.
    ctx.node.stop();
    drop(ctx);
    let joined = tokio::task::spawn_blocking(move || threads.join());
    if tokio::time::timeout(Duration::from_secs(10), joined)
        .await
        .is_err()
    {
        tracing::warn!("node threads did not stop within 10s");
    }
    if let Err(e) = engine.sync_wal() {
        tracing::error!(error = %e, "final sync of the database failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Creates the data directory readable by this user only (etcd's 0700), and warns when an
/// existing one is more open than that.
fn create_private_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = %format!("{mode:o}"),
            "data directory is accessible by other users; 700 is recommended"
        );
    }
    Ok(())
}

/// `/metrics`: samples the member's state, then encodes every metric.
fn metrics_text(ctx: ServerCtx) -> crate::http::MetricsText {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    Arc::new(move || {
        let status = ctx.node.status();
        let sizes = ctx.engine.sizes();
        let watch = ctx.watch.stats();
        metrics.observe(crate::metrics::Sample {
            has_leader: status.leader_id != 0,
            is_leader: status.is_leader,
            leader_changes: status.leader_changes,
            db_size_bytes: sizes.on_disk_bytes,
            db_size_in_use_bytes: sizes.in_use_bytes,
            quota_backend_bytes: ctx.quota.quota_bytes,
            watchers: (watch.synced + watch.unsynced) as u64,
            slow_watchers_total: watch.slow_total,
            current_revision: ctx.mvcc.current_revision(),
            compact_revision: ctx.mvcc.compact_revision(),
        });
        metrics.encode()
    })
}

fn load_or_bootstrap_membership(
    config: &Config,
    engine: &Engine,
    client_urls: &[String],
) -> Result<Membership, ServerError> {
    if let Some(mut membership) = Membership::load(engine)? {
        membership.set_client_urls(client_urls);
        let mut batch = Batch::new();
        membership.save(engine, &mut batch);
        engine.write(batch, true)?;
        return Ok(membership);
    }
    if config.initial_cluster_state == ClusterState::Existing {
        return Err(ServerError::Bootstrap(
            "joining an existing cluster (--initial-cluster-state=existing) needs member changes (MemberAdd), which this build lacks".into(),
        ));
    }
    config
        .verify_bootstrap()
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    let initial: Vec<(String, Vec<String>)> = config
        .initial_cluster
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.peer_urls.iter().map(etcd_url_string).collect(),
            )
        })
        .collect();
    let membership = Membership::bootstrap(
        &config.name,
        &initial,
        client_urls,
        &config.initial_cluster_token,
    )
    .ok_or_else(|| {
        ServerError::Bootstrap(format!(
            "--initial-cluster {:?} has no member named {:?}",
            config.initial_cluster_string(),
            config.name
        ))
    })?;
    let mut batch = Batch::new();
    membership.save(engine, &mut batch);
    engine.write(batch, true)?;
    Ok(membership)
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
fn min_lease_ttl_secs(config: &Config) -> i64 {
    let ms = config.election_timeout().as_millis() as i64 * 3 / 2;
    (ms + 999) / 1000
}

fn grpc_router(ctx: &ServerCtx) -> axum::Router {
    let decode_max = ctx.config.request_bytes_max as usize + GRPC_OVERHEAD_BYTES;
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
        .add_service(HealthServer::new(api::health::HealthService))
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::map_response(api::oversize::rewrite))
}

/// The peer URLs' service: raft messages from the other members.
fn peer_router(ctx: &ServerCtx) -> axum::Router {
    let decode_max = crate::peer::batch_bytes_limit(ctx.config.request_bytes_max as usize);
    let service = PeerService::new(ctx.node.clone(), ctx.shutdown.clone());
    tonic::service::Routes::new(PeerServer::new(service).max_decoding_message_size(decode_max))
        .prepare()
        .into_axum_router()
}

async fn bind(url: &url::Url) -> Result<TcpListener, ServerError> {
    let addr = url_host_port(url);
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
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(ServerError::Listen {
        url: url.to_string(),
        source: last_err.unwrap_or_else(|| std::io::Error::other("address resolved to nothing")),
    })
}

async fn serve(listener: TcpListener, router: axum::Router, mut shutdown: watch::Receiver<bool>) {
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(crate::authority_fix::FixingListener::new(listener), router)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "listener failed");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn sample_quota(ctx: ServerCtx, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(QUOTA_SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let engine = ctx.engine.clone();
        if let Ok(sizes) = tokio::task::spawn_blocking(move || engine.sizes()).await {
            ctx.quota.record_db_size(sizes.on_disk_bytes);
        }
    }
}

/// etcd's compactor: periodic mode keeps `retention` of history (checking every retention period,
/// at most hourly); revision mode keeps the last `retention` revisions (checking every
/// `--auto-compaction-check-interval`, etcd's fixed 5 minutes by default).
/// Only the leader compacts; the compaction itself goes through raft.
async fn auto_compact(ctx: ServerCtx, mut shutdown: watch::Receiver<bool>) {
    let (period, keep) = match ctx.config.auto_compaction {
        AutoCompaction::Periodic(retention) => (
            retention
                .min(Duration::from_secs(3600))
                .max(Duration::from_millis(100)),
            retention,
        ),
        AutoCompaction::Revision(_) => (
            ctx.config
                .auto_compaction_check_interval
                .max(Duration::from_millis(100)),
            Duration::ZERO,
        ),
        AutoCompaction::Disabled => return,
    };
    // Periodic mode samples the revision every tenth of the period so it knows which revision
    // was current `retention` ago.
    let sample_every = (period / 10).max(Duration::from_millis(50));
    let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
    let mut interval = tokio::time::interval(sample_every);
    let mut last_run = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        samples.push_back((now, ctx.mvcc.current_revision()));
        if now.duration_since(last_run) < period {
            continue;
        }
        last_run = now;
        if !ctx.node.status().is_leader {
            continue;
        }
        let target = match ctx.config.auto_compaction {
            AutoCompaction::Revision(keep_revs) => ctx.mvcc.current_revision() - keep_revs as i64,
            _ => {
                while samples.len() > 1 && now.duration_since(samples[1].0) >= keep {
                    samples.pop_front();
                }
                match samples.front() {
                    Some((at, rev)) if now.duration_since(*at) >= keep => *rev,
                    _ => continue,
                }
            }
        };
        if target <= ctx.mvcc.compact_revision() || target <= 0 {
            continue;
        }
        let req = CompactionRequest {
            revision: target,
            physical: false,
        };
        match ctx.node.propose(Internal::Compaction(req)).await {
            Ok(Ok(_)) => tracing::info!(revision = target, "auto compaction completed"),
            Ok(Err(e)) => tracing::warn!(revision = target, error = %e, "auto compaction failed"),
            Err(e) => tracing::warn!(revision = target, error = %e, "auto compaction failed"),
        }
    }
}
