//! Wiring: opens the data directory, builds every layer, starts the node threads, the background
//! jobs and the listeners, each owned by a named task set, and shuts them down in order (stop
//! accepting → drain client streams and background jobs → stop the node → flush; see [`run`]).

mod bootstrap;
mod corrupt;
mod jobs;
mod listeners;
mod reload;
mod tls_listener;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::alarm::Alarms;
use crate::api::{self, ApiConfig, Quota, ServerCtx};
use crate::apply::{Applier, MembershipSink};
use crate::auth::AuthStore;
use crate::auth::jwt::JwtTokens;
use crate::config::{AuthToken, AutoCompaction, Config, TlsSide, url_host_port};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::mvcc::MvccStore;
use crate::node::{self, NodeConfig};
use crate::peer::{PeerDialer, PeerTransport, TransportConfig};
use crate::raft::RaftLogStore;
use crate::raft::snapshots::SnapshotFiles;
use crate::storage::{Engine, StorageError};
use crate::tasks::{SpawnError, TaskSet};
use crate::watch::WatchHub;

use bootstrap::{create_private_dir, load_or_bootstrap_membership, min_lease_ttl_secs, peer_list};
/// The restart steps that make raft's log and the applied state agree after a crash (the
/// deterministic cluster simulation restarts its members with them too).
pub use bootstrap::{install_pending_snapshot, reconcile_raft_with_state};
use jobs::{auto_compact, guard_disk_space, publish_attributes};
use listeners::{bind, grpc_router, metrics_text, peer_router, serve, serve_tls};

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
    #[error("{0}")]
    Spawn(#[from] SpawnError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    DataFormat(#[from] crate::data_format::FormatError),
}

/// How long each step of the shutdown waits before it warns and moves on (aborting the tasks
/// left; threads are left to finish).
const STREAMS_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections finish their in-flight unary calls, which may wait on raft.
const CONNECTIONS_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
const JOBS_STOP_TIMEOUT: Duration = Duration::from_secs(2);
const PEERS_STOP_TIMEOUT: Duration = Duration::from_secs(2);
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A compaction or a raft snapshot under way is let finish rather than cut off.
const NODE_THREADS_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configuration an https:// URL is served with; `None` for http://.
fn https_config(
    url: &url::Url,
    tls: &Option<Arc<rustls::ServerConfig>>,
) -> Option<Arc<rustls::ServerConfig>> {
    (url.scheme() == "https").then(|| tls.clone()).flatten()
}

/// The hosts an auto TLS certificate names: for the client side those of the client and
/// metrics URLs, for the peer side those of the peer URLs, listened on and advertised.
fn tls_hosts(config: &Config, side: TlsSide) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let urls: Vec<&url::Url> = match side {
        TlsSide::Client => config
            .listen_client_urls
            .iter()
            .chain(&config.advertise_client_urls)
            .chain(&config.listen_metrics_urls)
            .collect(),
        TlsSide::Peer => config
            .listen_peer_urls
            .iter()
            .chain(&config.initial_advertise_peer_urls)
            .collect(),
    };
    for url in urls {
        if let Some(host) = url.host_str() {
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

/// Runs the member until SIGINT or SIGTERM (or its removal from the cluster).
///
/// Every task and thread it starts belongs to one of these named [`TaskSet`]s, and the
/// shutdown stops them in this order, each step bounded by a timeout (a warning names what did
/// not stop in time):
///
/// 1. **stop accepting**: the client and metrics listeners (`client-listeners`) stop taking
///    connections, and HTTP/2 connections are told to open no new streams;
/// 2. **drain client streams** (`client-streams`): watch and lease keep-alive streams end with
///    `etcdserver: server stopped`, Maintenance snapshot threads give up; then the client
///    connections, their in-flight unary calls answered, close;
/// 3. **drain background jobs** (`jobs`): attribute publishing, watch catch-up, lease expiry,
///    SIGHUP reload (log file, log level; `reload.rs`), auto compaction;
/// 4. **stop peer traffic** (`peers`): the peer listener and the raft streams it serves, the
///    per-peer sender tasks and snapshot sends;
/// 5. **stop the node**: the raft thread stops after what it took in, the apply thread after
///    applying what it was handed; then the threads they started (`node-threads`: raft
///    snapshot generation, compactions) are joined;
/// 6. **flush**: the RocksDB WAL is synced; `main` then flushes the log writer and the trace
///    exporter.
pub async fn run(config: Config, jwt: Option<JwtTokens>) -> Result<(), ServerError> {
    let config = Arc::new(config);
    tracing::info!(
        name = %config.name,
        data_dir = %config.data_dir.display(),
        etcd_api_version = crate::version::ETCD_API_VERSION,
        oxetcd_version = crate::version::OXETCD_VERSION,
        "starting an etcd server"
    );
    create_private_dir(&config.data_dir)?;
    match crate::data_format::prepare(&config.data_dir)? {
        crate::data_format::Prepared::Current => {}
        prepared => tracing::info!(
            ?prepared,
            format_version = crate::data_format::FORMAT_VERSION,
            "recorded the data directory's format version"
        ),
    }
    // Peer TLS: served on https:// peer URLs and used to dial the peers' https:// URLs. Built
    // (and any --peer-auto-tls pair made) before the member may need to dial a peer to join.
    let (peer_server_tls, peer_dialer) = if config.peer_https() {
        let hosts = tls_hosts(&config, TlsSide::Peer);
        (
            Some(crate::tls::server_config(
                &config.peer_tls,
                &config.data_dir,
                &hosts,
            )?),
            PeerDialer::new(Some(crate::tls::client_config(
                &config.peer_tls,
                &config.data_dir,
                &hosts,
            )?)),
        )
    } else {
        (None, PeerDialer::default())
    };
    let budget = crate::storage::MemoryBudget {
        cache_bytes: usize::try_from(config.backend_cache_bytes).unwrap_or(usize::MAX),
        write_buffer_bytes: usize::try_from(config.backend_write_buffer_bytes)
            .unwrap_or(usize::MAX),
    };
    let engine = Engine::open_with(&config.data_dir, !config.unsafe_no_fsync, budget, None)?;
    tracing::info!(path = %config.data_dir.display(), "opened backend db");
    crate::apply::install::finish_interrupted_install(&engine)
        .map_err(|e| ServerError::Bootstrap(format!("finishing a snapshot install: {e}")))?;
    bootstrap::install_pending_snapshot(&engine, &config.data_dir)?;

    // A member with data of its own (a restart) is checked against its peers when asked to;
    // a new one has nothing to compare yet (as in etcd).
    let restarting = crate::membership::Membership::load(&engine)?.is_some();
    let (membership, joining) =
        load_or_bootstrap_membership(&config, &engine, &peer_dialer).await?;
    tracing::info!(
        member_id = %format!("{:x}", membership.member_id),
        cluster_id = %format!("{:x}", membership.cluster_id),
        "starting local member"
    );

    let alarms = Arc::new(Alarms::open(&engine)?);
    let auth = Arc::new(AuthStore::open(&engine)?.with_token_ttl(config.auth_token_ttl));
    let mvcc = Arc::new(MvccStore::open(engine.clone())?);
    if config.initial_corrupt_check && restarting {
        corrupt::initial_check(
            &mvcc,
            membership.member_id,
            membership.cluster_id,
            &peer_list(&membership),
            &peer_dialer,
            config.request_timeout(),
        )
        .await?;
    }
    let lessor = Arc::new(Mutex::new(Lessor::open(
        engine.clone(),
        min_lease_ttl_secs(&config),
        mvcc.take_restored_leases(),
        Instant::now(),
    )?));
    let watch = WatchHub::new(mvcc.clone());
    let applier = Applier::new(
        engine.clone(),
        mvcc.clone(),
        lessor.clone(),
        watch.clone(),
        alarms.clone(),
    )?
    .with_auth(auth.clone());
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
    let snapshot_source = Arc::new(crate::snapshot::source::StateMachineSnapshots::new(
        engine.clone(),
    ));
    let snapshot_files =
        SnapshotFiles::open(&config.data_dir, snapshot_source).map_err(|e| StorageError::Io {
            path: config.data_dir.join(crate::raft::snapshots::SNAP_DIR),
            source: e,
        })?;
    let snap_dir = snapshot_files.dir().to_path_buf();
    let node_threads = TaskSet::owning_state("node-threads");
    let store = store.with_snapshots(snapshot_files.with_threads(node_threads.clone()));
    let metrics = Arc::new(Metrics::with_identity(
        membership.member_id,
        crate::version::ETCD_API_VERSION,
    ));
    let (transport, peer_links) = PeerTransport::new(
        TransportConfig {
            cluster_id: membership.cluster_id,
            member_id: membership.member_id,
            snap_dir: snap_dir.clone(),
            dialer: peer_dialer.clone(),
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
        .with_threads(node_threads.clone())
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

    let client_listeners = TaskSet::new("client-listeners");
    let streams = TaskSet::new("client-streams");
    let jobs = TaskSet::new("jobs");
    let peers = TaskSet::new("peers");
    let quota = Arc::new(
        Quota::new(config.quota_backend_bytes_effective()).guarding_disk(engine.path().into()),
    );
    let ctx = ServerCtx {
        config: Arc::new(api_config(&config, peer_dialer)),
        node,
        engine: engine.clone(),
        mvcc,
        lessor,
        watch: watch.clone(),
        alarms,
        auth,
        jwt: jwt.map(Arc::new),
        membership,
        quota,
        streams: streams.clone(),
        metrics: metrics.clone(),
    };

    let (published_tx, published_rx) = watch::channel(false);
    start_jobs(&jobs, &ctx, &config, published_tx)?;
    peer_links.spawn(ctx.node.clone(), &peers);

    let client_tls =
        if crate::tls::any_https(&[&config.listen_client_urls, &config.listen_metrics_urls]) {
            Some(crate::tls::server_config(
                &config.client_tls,
                &config.data_dir,
                &tls_hosts(&config, TlsSide::Client),
            )?)
        } else {
            None
        };
    let certificates = client_tls
        .iter()
        .map(|tls| ("client", tls.certificate.clone()))
        .chain(
            peer_server_tls
                .iter()
                .map(|tls| ("peer", tls.certificate.clone())),
        )
        .collect();
    let metrics_text = metrics_text(&config, ctx.clone(), metrics.clone(), certificates);
    let tls = client_tls.map(|tls| tls.config);
    let peer_server_tls = peer_server_tls.map(|tls| tls.config);
    for url in &config.listen_peer_urls {
        let listener = bind(url).await?;
        let router = peer_router(&ctx, peers.stop_signal(), snap_dir.clone(), metrics.clone());
        match https_config(url, &peer_server_tls) {
            Some(tls) => {
                let tasks = peers.clone();
                peers.spawn("peer-listener", async move {
                    serve_tls(listener, tls, &tasks, router, "peer").await;
                })?;
                tracing::info!(address = %url_host_port(url), "serving peer traffic securely");
            }
            None => {
                peers.spawn(
                    "peer-listener",
                    serve(listener, router, peers.stop_signal()),
                )?;
                tracing::info!(address = %url_host_port(url), "serving peer traffic");
            }
        }
    }
    for url in &config.listen_client_urls {
        let listener = bind(url).await?;
        let router = grpc_router(&config, &ctx, &metrics)
            .merge(crate::http::router(ctx.clone(), metrics_text.clone()))
            .merge(crate::http::gateway::router(ctx.clone()));
        // Clients are served once this member has published its name and client URLs (as
        // etcd does); until then their connections wait in the listen backlog.
        let mut published = published_rx.clone();
        let stop = client_listeners.stop_signal();
        let address = url_host_port(url);
        let tls = https_config(url, &tls);
        let tasks = client_listeners.clone();
        client_listeners.spawn("client-listener", async move {
            let mut stopping = stop.clone();
            tokio::select! {
                Ok(_) = published.wait_for(|p| *p) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            match tls {
                Some(tls) => {
                    tracing::info!(address = %address, "serving client traffic securely");
                    serve_tls(listener, tls, &tasks, router, "client").await;
                }
                None => {
                    tracing::info!(address = %address, "serving client traffic insecurely; this is strongly discouraged!");
                    serve(listener, router, stop).await;
                }
            }
        })?;
    }
    for url in &config.listen_metrics_urls {
        let listener = bind(url).await?;
        let router = crate::http::router(ctx.clone(), metrics_text.clone());
        match https_config(url, &tls) {
            Some(tls) => {
                let tasks = client_listeners.clone();
                client_listeners.spawn("metrics-listener", async move {
                    serve_tls(listener, tls, &tasks, router, "metrics").await;
                })?;
            }
            None => client_listeners.spawn(
                "metrics-listener",
                serve(listener, router, client_listeners.stop_signal()),
            )?,
        }
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

    // The order is the one in this function's doc comment.
    client_listeners.cancel();
    streams.shutdown(STREAMS_DRAIN_TIMEOUT).await;
    client_listeners.shutdown(CONNECTIONS_DRAIN_TIMEOUT).await;
    jobs.shutdown(JOBS_STOP_TIMEOUT).await;
    peers.shutdown(PEERS_STOP_TIMEOUT).await;
    // Handlers kept by connections aborted above may still hold node handles: stop the node
    // explicitly rather than waiting for every handle to go.
    ctx.node.stop();
    drop(ctx);
    let joined = tokio::task::spawn_blocking(move || threads.join());
    if tokio::time::timeout(NODE_STOP_TIMEOUT, joined)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = NODE_STOP_TIMEOUT.as_millis() as u64,
            "raft and apply threads did not stop in time"
        );
    } else {
        tracing::debug!("raft and apply threads stopped");
    }
    node_threads.shutdown(NODE_THREADS_STOP_TIMEOUT).await;
    if let Err(e) = engine.sync_wal() {
        tracing::error!(error = %e, "final sync of the database failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The API layer's settings.
fn api_config(config: &Config, peer_dialer: PeerDialer) -> ApiConfig {
    ApiConfig {
        peer_dialer,
        request_timeout: config.request_timeout(),
        request_bytes_max: config.request_bytes_max,
        txn_ops_max: config.txn_ops_max,
        strict_reconfig_check: config.strict_reconfig_check,
        learners_max: config.learners_max,
        initial_cluster_token: config.initial_cluster_token.clone(),
        election_timeout: config.election_timeout(),
        lease_checkpoint_interval: config.lease_checkpoint_interval,
        watch_progress_notify_interval: config.watch_progress_notify_interval,
        bcrypt_cost: config.bcrypt_cost,
    }
}

/// The JWT keys `--auth-token jwt,...` names, read and checked (`main` calls this before the
/// data directory is touched and hands the keys to [`run`]); `None` for simple tokens.
pub fn jwt_tokens(config: &Config) -> Result<Option<JwtTokens>, String> {
    let AuthToken::Jwt(options) = &config.auth_token else {
        return Ok(None);
    };
    JwtTokens::load(
        &options.sign_method,
        options.pub_key.as_deref(),
        options.priv_key.as_deref(),
        options.ttl,
    )
    .map(Some)
    .map_err(|e| format!("--auth-token: {e}"))
}

/// Starts the background jobs on `jobs`; `published` turns true once this member may serve
/// clients.
fn start_jobs(
    jobs: &TaskSet,
    ctx: &ServerCtx,
    config: &Arc<Config>,
    published: watch::Sender<bool>,
) -> Result<(), SpawnError> {
    jobs.spawn(
        "publish-attributes",
        publish_attributes(ctx.clone(), config.clone(), published, jobs.stop_signal()),
    )?;
    jobs.spawn("watch-sync", ctx.watch.clone().run_sync(jobs.stop_signal()))?;
    jobs.spawn(
        "lease-expiry",
        api::lease::run_expiry(ctx.clone(), jobs.stop_signal()),
    )?;
    jobs.spawn(
        "reload",
        reload::reload_on_hangup(jobs.stop_signal(), config.clone()),
    )?;
    jobs.spawn(
        "disk-space",
        guard_disk_space(ctx.clone(), jobs.stop_signal()),
    )?;
    if config.auto_compaction != AutoCompaction::Disabled {
        jobs.spawn(
            "auto-compact",
            auto_compact(ctx.clone(), config.clone(), jobs.stop_signal()),
        )?;
    }
    if !config.corrupt_check_time.is_zero() {
        jobs.spawn(
            "corrupt-check",
            corrupt::monitor(ctx.clone(), config.corrupt_check_time, jobs.stop_signal()),
        )?;
    }
    Ok(())
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
