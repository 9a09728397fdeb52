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
use crate::apply::{Applier, MembershipSink};
use crate::config::{AutoCompaction, ClusterState, Config, etcd_url_string, url_host_port};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::metrics::{DiskSpace, Metrics};
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
use crate::proto::oxetcdpb::MemberAttributes;
use crate::proto::oxetcdpb::internal_request::Request as Internal;
use crate::proto::oxetcdpb::peer_server::PeerServer;
use crate::raft::RaftLogStore;
use crate::raft::snapshots::SnapshotFiles;
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
    crate::snapshot::finish_interrupted_install(&engine)
        .map_err(|e| ServerError::Bootstrap(format!("finishing a snapshot install: {e}")))?;

    let (membership, joining) = load_or_bootstrap_membership(&config, &engine).await?;
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
    let applied_index = applier.applied_index();
    // A member joining an existing cluster starts with no configuration and waits for the
    // leader's snapshot, which carries it.
    let initial_voters = if joining {
        Vec::new()
    } else {
        membership.voters()
    };
    let mut store = RaftLogStore::open(engine.clone(), &initial_voters)?;
    reconcile_raft_with_state(&engine, &mut store, &membership, applied_index)?;
    let snapshot_files =
        SnapshotFiles::open(&config.data_dir, engine.clone()).map_err(|e| StorageError::Io {
            path: config.data_dir.join(crate::raft::snapshots::SNAP_DIR),
            source: e,
        })?;
    let snap_dir = snapshot_files.dir().to_path_buf();
    let store = store.with_snapshots(snapshot_files);
    let metrics = Arc::new(Metrics::with_identity(
        membership.member_id,
        crate::version::ETCD_API_VERSION,
    ));
    let (transport, peer_links) = PeerTransport::new(
        TransportConfig {
            cluster_id: membership.cluster_id,
            member_id: membership.member_id,
            snap_dir: snap_dir.clone(),
        },
        &peer_list(&membership),
        metrics.clone(),
    );
    let (removed_tx, mut removed_rx) = watch::channel(false);
    let member_id = membership.member_id;
    let cluster_id = membership.cluster_id;
    let membership = Arc::new(RwLock::new(membership));
    let peers_transport = transport.clone();
    let applier = applier
        .with_metrics(metrics.clone())
        .with_membership(MembershipSink {
            membership: membership.clone(),
            on_change: Box::new(move |m: &Membership| {
                peers_transport.set_peers(&peer_list(m));
                if !m.members.iter().any(|x| x.id == member_id) {
                    removed_tx.send_replace(true);
                }
            }),
        });
    let (node, threads) = node::start(
        NodeConfig {
            member_id,
            cluster_id,
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
        metrics.clone(),
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
        membership,
        quota,
        shutdown: shutdown_rx.clone(),
    };

    let mut tasks = JoinSet::new();
    peer_links.spawn(ctx.node.clone(), shutdown_rx.clone(), &mut tasks);
    tasks.spawn(watch.clone().run_sync(shutdown_rx.clone()));
    tasks.spawn(api::lease::run_expiry(ctx.clone(), shutdown_rx.clone()));
    tasks.spawn(sample_quota(ctx.clone(), shutdown_rx.clone()));
    tasks.spawn(reopen_log_on_hangup(shutdown_rx.clone()));
    let (published_tx, published_rx) = watch::channel(false);
    tasks.spawn(publish_attributes(
        ctx.clone(),
        published_tx,
        shutdown_rx.clone(),
    ));
    if config.auto_compaction != AutoCompaction::Disabled {
        tasks.spawn(auto_compact(ctx.clone(), shutdown_rx.clone()));
    }

    let metrics_text = metrics_text(ctx.clone(), metrics.clone());
    let mut listeners = JoinSet::new();
    for url in &config.listen_peer_urls {
        let listener = bind(url).await?;
        listeners.spawn(serve(
            listener,
            peer_router(&ctx, snap_dir.clone(), metrics.clone()),
            shutdown_rx.clone(),
        ));
        tracing::info!(address = %url_host_port(url), "serving peer traffic");
    }
    for url in &config.listen_client_urls {
        let listener = bind(url).await?;
        let router = grpc_router(&ctx, &metrics)
            .merge(crate::http::router(ctx.clone(), metrics_text.clone()));
        // Clients are served once this member has published its name and client URLs (as
        // etcd does); until then their connections wait in the listen backlog.
        let mut published = published_rx.clone();
        let shutdown = shutdown_rx.clone();
        let address = url_host_port(url);
        listeners.spawn(async move {
            if published.wait_for(|p| *p).await.is_err() {
                return;
            }
            tracing::info!(address = %address, "serving client traffic insecurely; this is strongly discouraged!");
            serve(listener, router, shutdown).await;
        });
    }
    for url in &config.listen_metrics_urls {
        let listener = bind(url).await?;
        let router = crate::http::router(ctx.clone(), metrics_text.clone());
        listeners.spawn(serve(listener, router, shutdown_rx.clone()));
        tracing::info!(address = %url_host_port(url), "serving metrics");
    }
    let stop = async {
        tokio::select! {
            _ = wait_for_signal() => tracing::info!("received a stop signal; shutting down"),
            Ok(_) = removed_rx.wait_for(|removed| *removed) => {
                tracing::warn!("the member has been permanently removed from the cluster; shutting down");
            }
        }
    };
    tokio::pin!(stop);
    let mut published = published_rx.clone();
    let stopped_early = tokio::select! {
        _ = &mut stop => true,
        Ok(_) = published.wait_for(|p| *p) => false,
    };
    if !stopped_early {
        tracing::info!("ready to serve client requests");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        stop.await;
    }
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
fn metrics_text(ctx: ServerCtx, metrics: Arc<Metrics>) -> crate::http::MetricsText {
    // The log file's directory, or the data directory when logging to stderr/stdout.
    let log_dir = ctx
        .config
        .log_outputs
        .iter()
        .find(|o| !matches!(o.as_str(), "stderr" | "stdout" | "default"))
        .and_then(|f| std::path::Path::new(f).parent().map(|p| p.to_path_buf()))
        .unwrap_or_else(|| ctx.config.data_dir.clone());
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
            slow_watchers_total: watch.slow_total,
            current_revision: ctx.mvcc.current_revision(),
            compact_revision: ctx.mvcc.compact_revision(),
            raft_log_entries: (status.raft_last_index + 1).saturating_sub(status.raft_first_index),
            data_dir_disk: DiskSpace::of(&ctx.config.data_dir),
            log_dir_disk: DiskSpace::of(&log_dir),
            pending_compaction_bytes: sizes.pending_compaction_bytes,
            live_data_bytes: sizes.live_data_bytes,
        });
        metrics.encode()
    })
}

/// The peers of `membership`: every other member with its peer URLs.
fn peer_list(membership: &Membership) -> Vec<(u64, Vec<String>)> {
    membership
        .members
        .iter()
        .filter(|m| m.id != membership.member_id)
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect()
}

/// After a crash the raft log may lag the state machine: a snapshot install finished but the
/// raft log was not yet replaced, or a configuration change was applied but raft's copy of the
/// configuration not yet written. The state machine is the authority at its applied index.
fn reconcile_raft_with_state(
    engine: &Engine,
    store: &mut RaftLogStore,
    membership: &Membership,
    applied_index: u64,
) -> Result<(), ServerError> {
    if applied_index == 0 {
        return Ok(());
    }
    let cs = crate::raft::snapshots::conf_state_from(&membership.members);
    let mut batch = Batch::new();
    if applied_index > store.last() || applied_index > store.hard_state().commit {
        let term = crate::snapshot::position(&engine.view())
            .map_err(|e| ServerError::Bootstrap(e.to_string()))?
            .term;
        tracing::warn!(
            applied_index,
            raft_last_index = store.last(),
            "the raft log is behind the installed snapshot; moving it up"
        );
        store.apply_snapshot(&mut batch, applied_index, term, cs);
    } else if store.conf_state().voters != cs.voters || store.conf_state().learners != cs.learners {
        tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "raft configuration taken from the applied member list");
        store.set_conf_state(&mut batch, cs);
    }
    if !batch.is_empty() {
        engine.write(batch, true)?;
    }
    Ok(())
}

/// The stored identity, or a new one: from `--initial-cluster` for a new cluster, or asked of
/// the existing members for `--initial-cluster-state existing`. Returns whether this member is
/// joining an existing cluster for the first time.
async fn load_or_bootstrap_membership(
    config: &Config,
    engine: &Engine,
) -> Result<(Membership, bool), ServerError> {
    if let Some(membership) = Membership::load(engine)? {
        return Ok((membership, false));
    }
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
    if config.initial_cluster_state == ClusterState::Existing {
        let membership = join_existing(config, &initial).await?;
        let mut batch = Batch::new();
        membership.save(engine, &mut batch);
        engine.write(batch, true)?;
        return Ok((membership, true));
    }
    config
        .verify_bootstrap()
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    let membership = Membership::bootstrap(&config.name, &initial, &config.initial_cluster_token)
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
    Ok((membership, false))
}

/// Asks the other members named in `--initial-cluster` for the member list and finds this
/// member in it by its advertised peer URLs (it must have been added with `member add`).
async fn join_existing(
    config: &Config,
    initial: &[(String, Vec<String>)],
) -> Result<Membership, ServerError> {
    let my_urls: Vec<String> = config
        .initial_advertise_peer_urls
        .iter()
        .map(etcd_url_string)
        .collect();
    let mut errors = Vec::new();
    for (name, urls) in initial {
        if *name == config.name {
            continue;
        }
        for url in urls {
            match crate::peer::transport::fetch_members(url).await {
                Ok(answer) => {
                    let me = answer
                        .members
                        .iter()
                        .find(|m| m.peer_ur_ls.iter().any(|u| my_urls.contains(u)));
                    let Some(me) = me else {
                        return Err(ServerError::Bootstrap(format!(
                            "member {} of the cluster does not list this member's peer URLs {my_urls:?}; add it with `etcdctl member add` first",
                            url
                        )));
                    };
                    tracing::info!(
                        cluster_id = %format!("{:x}", answer.cluster_id),
                        member_id = %format!("{:x}", me.id),
                        from = %url,
                        "joining an existing cluster"
                    );
                    return Ok(Membership {
                        cluster_id: answer.cluster_id,
                        member_id: me.id,
                        members: answer.members.clone(),
                    });
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
    }
    Err(ServerError::Bootstrap(format!(
        "cannot fetch the cluster's members from --initial-cluster peers: {}",
        errors.join("; ")
    )))
}

/// Publishes this member's name and client URLs through raft (etcd's attribute publishing),
/// retrying until it is applied, so every member lists them; then sets `published` (once a
/// read barrier passes when the member list already has them, as after a restart with
/// unchanged flags).
async fn publish_attributes(
    ctx: ServerCtx,
    published: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let member_id = ctx.node.config().member_id;
    let attrs = MemberAttributes {
        member_id,
        name: ctx.config.name.clone(),
        client_urls: ctx
            .config
            .advertise_client_urls
            .iter()
            .map(etcd_url_string)
            .collect(),
    };
    loop {
        let current = ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .iter()
            .find(|m| m.id == member_id)
            .map(|m| (m.name.clone(), m.client_ur_ls.clone()));
        if current == Some((attrs.name.clone(), attrs.client_urls.clone())) {
            // Nothing to publish, but wait as etcd's publish (always through raft) does: for a
            // leader and this member's catching up with it, so READY=1 means a healthy member.
            tokio::select! {
                result = ctx.node.read_barrier() => match result {
                    Ok(()) => {
                        published.send_replace(true);
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "waiting for a leader before serving clients"),
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        } else if ctx.node.status().leader_id != 0 {
            match ctx
                .node
                .propose(Internal::MemberAttributes(attrs.clone()))
                .await
            {
                Ok(Ok(_)) => {
                    tracing::info!(client_urls = ?attrs.client_urls, "published local member to cluster through raft");
                    published.send_replace(true);
                    return;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "publishing member attributes failed"),
                Err(e) => tracing::debug!(error = %e, "publishing member attributes failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.heartbeat_interval()) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
fn min_lease_ttl_secs(config: &Config) -> i64 {
    let ms = config.election_timeout().as_millis() as i64 * 3 / 2;
    (ms + 999) / 1000
}

fn grpc_router(ctx: &ServerCtx, metrics: &Arc<Metrics>) -> axum::Router {
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
        .layer(axum::middleware::from_fn({
            let ctx = ctx.clone();
            move |request, next| api::interceptor::check(ctx.clone(), request, next)
        }))
        .layer(axum::middleware::from_fn({
            let metrics = metrics.clone();
            let trace_member = ctx
                .config
                .enable_distributed_tracing
                .then(|| ctx.node.config().member_id);
            move |request, next| {
                api::grpc_metrics::record(metrics.clone(), trace_member, request, next)
            }
        }))
}

/// The peer URLs' service: raft messages from the other members.
fn peer_router(
    ctx: &ServerCtx,
    snap_dir: std::path::PathBuf,
    metrics: Arc<Metrics>,
) -> axum::Router {
    let decode_max = crate::peer::batch_bytes_limit(ctx.config.request_bytes_max as usize);
    let service = PeerService::new(
        ctx.node.clone(),
        ctx.shutdown.clone(),
        Arc::new(api::peer::PeerHandlersImpl::new(ctx.clone())),
        snap_dir,
        metrics,
    );
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

/// SIGHUP (systemd's reload, logrotate's postrotate) reopens the log file.
async fn reopen_log_on_hangup(mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; the log file will not be reopened");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                crate::telemetry::request_log_reopen();
                tracing::info!("received SIGHUP; reopened the log file");
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
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
