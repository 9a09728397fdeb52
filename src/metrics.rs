//! Every metric, defined once, under etcd's names where the meaning matches (names, types, labels
//! and buckets as etcd exports them, so etcd's alerts and dashboards work), plus oxetcd's own
//! under `oxetcd_`.
//!
//! Two kinds: values other layers already track (leader, sizes, indexes, watcher counts, disk
//! space) are sampled when Prometheus scrapes, through [`Metrics::observe`]; events (an fsync, a
//! gRPC call, bytes to a peer) are recorded where they happen through the public fields. No
//! metric has a per-key or per-lease label.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// One label: a peer (`To`/`From`, the member ID in hex).
pub type PeerLabel = [(&'static str, String); 1];
/// `listener` (client or peer) and `path` (the certificate file) of a served TLS certificate.
pub type CertificateLabels = [(&'static str, String); 2];
/// `grpc_type`, `grpc_service`, `grpc_method`.
pub type GrpcLabels = [(&'static str, String); 3];
/// `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`.
pub type GrpcCodeLabels = [(&'static str, String); 4];
/// `type` (`unary` or `stream`) and `client_api_version` (what the client's
/// `client-api-version` metadata says, `unknown` without it).
pub type ClientRequestLabels = [(&'static str, String); 2];

/// A counter exported under the name it was registered with. prometheus-client adds `_total`
/// to every counter; etcd (Go's client) does not when the name lacks it, and a few of etcd's
/// counters are named so (`etcd_server_health_success`, `etcd_network_snapshot_send_success`).
/// Encoded as a counter (`# TYPE ... counter`) with the bare name.
#[derive(Debug, Clone, Default)]
pub struct BareCounter(Counter);

impl BareCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for BareCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for BareCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The gauge encoding writes the name and value without a suffix.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The MVCC operations one request made, counted as etcd 3.4 counts them
/// (`etcd_mvcc_{range,put,delete,txn}_total`); `txn::count` says what each request makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MvccOps {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
    /// MVCC transactions of more than one operation (etcd counts only those as txns).
    pub txns: u64,
}

impl std::ops::Add for MvccOps {
    type Output = MvccOps;

    fn add(self, other: MvccOps) -> MvccOps {
        MvccOps {
            ranges: self.ranges + other.ranges,
            puts: self.puts + other.puts,
            deletes: self.deletes + other.deletes,
            txns: self.txns + other.txns,
        }
    }
}

/// etcd's disk histograms: 1 ms doubling to 8.192 s.
fn disk_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// etcd's snapshot transfer histograms: 0.1 s doubling to 51.2 s.
fn snapshot_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 10))
}

/// etcd's peer round-trip histogram: 0.1 ms doubling to 3.2768 s.
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Prometheus's default buckets, which go-grpc-prometheus uses for `grpc_server_handling_seconds`.
fn grpc_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Leader-change latency: 10 ms doubling to about 82 s.
fn leader_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// What a scrape samples from the running member.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub has_leader: bool,
    pub is_leader: bool,
    pub is_learner: bool,
    pub leader_changes: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub proposals_pending: u64,
    pub db_size_bytes: u64,
    pub db_size_in_use_bytes: u64,
    pub quota_backend_bytes: u64,
    pub watchers: u64,
    /// Watchers catching up from storage (etcd's unsynced "slow" watchers).
    pub slow_watchers: u64,
    /// Open gRPC watch streams.
    pub watch_streams: u64,
    /// Events client watch streams took from the watch hub since start.
    pub watch_events_total: u64,
    /// Events the hub handed to watch streams that they have not taken yet.
    pub watch_events_pending: u64,
    /// Keys that exist at the current revision.
    pub keys: u64,
    pub current_revision: i64,
    pub compact_revision: i64,
    /// Entries in this member's raft log (bounded by `--snapshot-count` plus the catch-up tail).
    pub raft_log_entries: u64,
    pub data_dir_disk: DiskSpace,
    pub log_dir_disk: DiskSpace,
    pub pending_compaction_bytes: u64,
    pub live_data_bytes: u64,
    /// Each TLS certificate this member serves: its listener, file and end of validity
    /// (seconds since the Unix epoch).
    pub certificates: Vec<CertificateExpiry>,
    /// The newest backup in the `[backup]` directory (`None`: none there).
    pub backup: Option<BackupSample>,
    /// `[backup] max-age`, in seconds.
    pub backup_max_age_seconds: u64,
}

/// The newest finished backup: when it was written and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSample {
    /// Seconds since the Unix epoch.
    pub finished_seconds: i64,
    pub size_bytes: u64,
}

/// The end of validity of one served TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    pub listener: &'static str,
    pub path: String,
    pub not_after: i64,
}

/// Free (available to this user) and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl DiskSpace {
    /// The filesystem holding `path` (zeros when it cannot be read).
    pub fn of(path: &std::path::Path) -> DiskSpace {
        let Ok(st) = rustix::fs::statvfs(path) else {
            return DiskSpace::default();
        };
        DiskSpace {
            free_bytes: st.f_bavail * st.f_frsize,
            total_bytes: st.f_blocks * st.f_frsize,
        }
    }
}

/// The registry and its metrics.
pub struct Metrics {
    registry: Registry,
    has_leader: Gauge,
    is_leader: Gauge,
    is_learner: Gauge,
    leader_changes: Counter,
    proposals_committed: Gauge,
    proposals_applied: Gauge,
    proposals_pending: Gauge,
    /// Proposals that did not make it into the log or timed out.
    pub proposals_failed: Counter,
    db_size: Gauge,
    db_size_in_use: Gauge,
    quota: Gauge,
    watchers: Gauge,
    slow_watchers: Gauge,
    watch_streams: Gauge,
    watch_events: Counter,
    pending_events: Gauge,
    keys: Gauge,
    /// Range, put and delete operations and multi-operation txns of the MVCC store (etcd's
    /// `etcd_mvcc_*_total`, also exported under 3.4's `etcd_debugging_mvcc_*_total`); recorded
    /// through [`Metrics::record_mvcc`].
    mvcc_ranges: Counter,
    mvcc_puts: Counter,
    mvcc_deletes: Counter,
    mvcc_txns: Counter,
    /// Key plus value bytes of every put applied.
    pub put_size_bytes: Gauge,
    /// Revision keys compaction removed from disk.
    pub compaction_keys: Counter,
    /// `/health` answers.
    pub health_success: BareCounter,
    pub health_failures: BareCounter,
    /// Entries whose apply took longer than etcd's 100 ms warning.
    pub slow_applies: Counter,
    /// ReadIndex requests retried or given up on without an answer.
    pub slow_read_indexes: Counter,
    /// ReadIndex barriers that failed for a reason other than time.
    pub read_indexes_failed: Counter,
    /// Heartbeats the leader sent to a peer later than twice the heartbeat interval.
    pub heartbeat_send_failures: Counter,
    /// Client gRPC calls (unary) and streams, by the client's API version.
    pub client_requests: Family<ClientRequestLabels, Counter>,
    current_revision: Gauge,
    compact_revision: Gauge,
    raft_log_entries: Gauge,
    backup_last_success: Gauge,
    backup_last_size: Gauge,
    backup_max_age: Gauge,
    /// Snapshots streamed to peers (`To`), and received from them (`From`; whole and verified),
    /// with etcd's names: successes, failures, transfers under way, and how long each took.
    pub snapshot_send_success: Family<PeerLabel, BareCounter>,
    pub snapshot_send_failures: Family<PeerLabel, BareCounter>,
    pub snapshot_send_inflights: Family<PeerLabel, Gauge>,
    pub snapshot_send_seconds: Family<PeerLabel, Histogram, fn() -> Histogram>,
    pub snapshot_receive_success: Family<PeerLabel, BareCounter>,
    pub snapshot_receive_failures: Family<PeerLabel, BareCounter>,
    pub snapshot_receive_inflights: Family<PeerLabel, Gauge>,
    pub snapshot_receive_seconds: Family<PeerLabel, Histogram, fn() -> Histogram>,
    /// The synced raft-log write of each Ready (etcd's WAL fsync).
    pub wal_fsync_seconds: Histogram,
    /// The state-machine write of each applied entry (etcd's backend commit).
    pub backend_commit_seconds: Histogram,
    pub peer_sent_bytes: Family<PeerLabel, Counter>,
    pub peer_received_bytes: Family<PeerLabel, Counter>,
    pub peer_sent_failures: Family<PeerLabel, Counter>,
    pub peer_rtt_seconds: Family<PeerLabel, Histogram, fn() -> Histogram>,
    pub client_sent_bytes: Counter,
    pub client_received_bytes: Counter,
    pub grpc_started: Family<GrpcLabels, Counter>,
    pub grpc_handled: Family<GrpcCodeLabels, Counter>,
    pub grpc_msg_received: Family<GrpcLabels, Counter>,
    pub grpc_msg_sent: Family<GrpcLabels, Counter>,
    pub grpc_handling_seconds: Family<GrpcLabels, Histogram, fn() -> Histogram>,
    /// How long the member was without a leader, each time it had none.
    pub leaderless_seconds: Histogram,
    /// From this member starting an election to a leader being elected.
    pub election_seconds: Histogram,
    data_dir_free: Gauge,
    data_dir_total: Gauge,
    log_dir_free: Gauge,
    log_dir_total: Gauge,
    pending_compaction: Gauge,
    live_data: Gauge,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    process: ProcessMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_identity(0, "")
    }

    /// The metrics of member `member_id` running etcd API `version` (both become constant
    /// info gauges, as etcd's `etcd_server_id` and `etcd_server_version`).
    pub fn with_identity(member_id: u64, version: &str) -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            is_learner: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            db_size: Gauge::default(),
            db_size_in_use: Gauge::default(),
            quota: Gauge::default(),
            watchers: Gauge::default(),
            slow_watchers: Gauge::default(),
            watch_streams: Gauge::default(),
            watch_events: Counter::default(),
            pending_events: Gauge::default(),
            keys: Gauge::default(),
            mvcc_ranges: Counter::default(),
            mvcc_puts: Counter::default(),
            mvcc_deletes: Counter::default(),
            mvcc_txns: Counter::default(),
            put_size_bytes: Gauge::default(),
            compaction_keys: Counter::default(),
            health_success: BareCounter::default(),
            health_failures: BareCounter::default(),
            slow_applies: Counter::default(),
            slow_read_indexes: Counter::default(),
            read_indexes_failed: Counter::default(),
            heartbeat_send_failures: Counter::default(),
            client_requests: Family::default(),
            current_revision: Gauge::default(),
            compact_revision: Gauge::default(),
            raft_log_entries: Gauge::default(),
            backup_last_success: Gauge::default(),
            backup_last_size: Gauge::default(),
            backup_max_age: Gauge::default(),
            snapshot_send_success: Family::default(),
            snapshot_send_failures: Family::default(),
            snapshot_send_inflights: Family::default(),
            snapshot_send_seconds: Family::new_with_constructor(snapshot_histogram),
            snapshot_receive_success: Family::default(),
            snapshot_receive_failures: Family::default(),
            snapshot_receive_inflights: Family::default(),
            snapshot_receive_seconds: Family::new_with_constructor(snapshot_histogram),
            wal_fsync_seconds: disk_histogram(),
            backend_commit_seconds: disk_histogram(),
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            peer_sent_failures: Family::default(),
            peer_rtt_seconds: Family::new_with_constructor(rtt_histogram),
            client_sent_bytes: Counter::default(),
            client_received_bytes: Counter::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_msg_received: Family::default(),
            grpc_msg_sent: Family::default(),
            grpc_handling_seconds: Family::new_with_constructor(grpc_histogram),
            leaderless_seconds: leader_histogram(),
            election_seconds: leader_histogram(),
            data_dir_free: Gauge::default(),
            data_dir_total: Gauge::default(),
            log_dir_free: Gauge::default(),
            log_dir_total: Gauge::default(),
            pending_compaction: Gauge::default(),
            live_data: Gauge::default(),
            certificate_expiry: Family::default(),
            process: ProcessMetrics::default(),
        };
        r.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            m.has_leader.clone(),
        );
        r.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            m.is_leader.clone(),
        );
        r.register(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise",
            m.is_learner.clone(),
        );
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            m.leader_changes.clone(),
        );
        r.register(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed",
            m.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied",
            m.proposals_applied.clone(),
        );
        r.register(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit",
            m.proposals_pending.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen",
            m.proposals_failed.clone(),
        );
        r.register(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes",
            m.quota.clone(),
        );
        if member_id != 0 {
            let id = Family::<[(&'static str, String); 1], Gauge>::default();
            id.get_or_create(&[("server_id", format!("{member_id:x}"))])
                .set(1);
            r.register("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID", id);
            let ver = Family::<[(&'static str, String); 1], Gauge>::default();
            ver.get_or_create(&[("server_version", version.to_owned())])
                .set(1);
            r.register(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version",
                ver,
            );
        }
        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend",
            m.backend_commit_seconds.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            m.db_size.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes",
            m.db_size_in_use.clone(),
        );
        r.register(
            "etcd_network_peer_sent_bytes",
            "The total number of bytes sent to peers",
            m.peer_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_received_bytes",
            "The total number of bytes received from peers",
            m.peer_received_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_sent_failures",
            "The total number of send failures to peers",
            m.peer_sent_failures.clone(),
        );
        r.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            m.peer_rtt_seconds.clone(),
        );
        r.register(
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients",
            m.client_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients",
            m.client_received_bytes.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            m.snapshot_send_success.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_failures",
            "Total number of snapshot send failures",
            m.snapshot_send_failures.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_inflights_total",
            "Total number of inflight snapshot sends",
            m.snapshot_send_inflights.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_total_duration_seconds",
            "Total latency distributions of v3 snapshot sends",
            m.snapshot_send_seconds.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            m.snapshot_receive_success.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_failures",
            "Total number of snapshot receive failures",
            m.snapshot_receive_failures.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_inflights_total",
            "Total number of inflight snapshot receives",
            m.snapshot_receive_inflights.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_total_duration_seconds",
            "Total latency distributions of v3 snapshot receives",
            m.snapshot_receive_seconds.clone(),
        );
        r.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            m.grpc_started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            m.grpc_handled.clone(),
        );
        r.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            m.grpc_msg_received.clone(),
        );
        r.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            m.grpc_msg_sent.clone(),
        );
        r.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            m.grpc_handling_seconds.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers",
            m.watchers.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers",
            m.slow_watchers.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams",
            m.watch_streams.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_events",
            "Total number of events sent by this member",
            m.watch_events.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_pending_events_total",
            "Total number of pending events to be sent",
            m.pending_events.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys",
            m.keys.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_total_put_size_in_bytes",
            "The total size of put kv pairs seen by this member",
            m.put_size_bytes.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_db_compaction_keys",
            "Total number of db keys compacted",
            m.compaction_keys.clone(),
        );
        // etcd 3.4 exports these under both names (the debugging ones went in 3.5).
        for prefix in ["etcd_mvcc", "etcd_debugging_mvcc"] {
            r.register(
                format!("{prefix}_range"),
                "Total number of ranges seen by this member",
                m.mvcc_ranges.clone(),
            );
            r.register(
                format!("{prefix}_put"),
                "Total number of puts seen by this member",
                m.mvcc_puts.clone(),
            );
            r.register(
                format!("{prefix}_delete"),
                "Total number of deletes seen by this member",
                m.mvcc_deletes.clone(),
            );
            r.register(
                format!("{prefix}_txn"),
                "Total number of txns seen by this member",
                m.mvcc_txns.clone(),
            );
        }
        r.register(
            "etcd_debugging_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            m.db_size.clone(),
        );
        r.register(
            "etcd_server_health_success",
            "The total number of successful health checks",
            m.health_success.clone(),
        );
        r.register(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            m.health_failures.clone(),
        );
        r.register(
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk)",
            m.slow_applies.clone(),
        );
        r.register(
            "etcd_server_slow_read_indexes",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests",
            m.slow_read_indexes.clone(),
        );
        r.register(
            "etcd_server_read_indexes_failed",
            "The total number of failed read indexes seen",
            m.read_indexes_failed.clone(),
        );
        r.register(
            "etcd_server_heartbeat_send_failures",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk)",
            m.heartbeat_send_failures.clone(),
        );
        r.register(
            "etcd_server_client_requests",
            "The total number of client requests per client version",
            m.client_requests.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store",
            m.current_revision.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store",
            m.compact_revision.clone(),
        );
        r.register(
            "oxetcd_server_leaderless_duration_seconds",
            "How long this member was without a leader, observed each time it found one again",
            m.leaderless_seconds.clone(),
        );
        r.register(
            "oxetcd_server_election_duration_seconds",
            "From this member starting an election (pre-vote or campaign) to a leader being elected",
            m.election_seconds.clone(),
        );
        r.register(
            "oxetcd_disk_data_dir_free_bytes",
            "Bytes available to the server on the filesystem holding the data directory",
            m.data_dir_free.clone(),
        );
        r.register(
            "oxetcd_disk_data_dir_total_bytes",
            "Size in bytes of the filesystem holding the data directory",
            m.data_dir_total.clone(),
        );
        r.register(
            "oxetcd_disk_log_dir_free_bytes",
            "Bytes available to the server on the filesystem holding the log file",
            m.log_dir_free.clone(),
        );
        r.register(
            "oxetcd_disk_log_dir_total_bytes",
            "Size in bytes of the filesystem holding the log file",
            m.log_dir_total.clone(),
        );
        r.register(
            "oxetcd_rocksdb_pending_compaction_bytes",
            "Bytes RocksDB estimates it still has to compact",
            m.pending_compaction.clone(),
        );
        r.register(
            "oxetcd_rocksdb_live_data_size_bytes",
            "RocksDB's estimate of the live data size in bytes",
            m.live_data.clone(),
        );
        r.register(
            "oxetcd_tls_certificate_expiry_timestamp_seconds",
            "When each TLS certificate this member serves expires, in seconds since the Unix epoch",
            m.certificate_expiry.clone(),
        );
        r.register(
            "oxetcd_raft_log_entries",
            "Entries in this member's raft log (older ones are compacted after a snapshot)",
            m.raft_log_entries.clone(),
        );
        r.register(
            "oxetcd_backup_last_success_timestamp_seconds",
            "When the newest verified backup in the [backup] directory was written, in seconds \
             since the Unix epoch (0: there is none)",
            m.backup_last_success.clone(),
        );
        r.register(
            "oxetcd_backup_last_size_bytes",
            "Size of the newest verified backup in the [backup] directory (0: there is none)",
            m.backup_last_size.clone(),
        );
        r.register(
            "oxetcd_backup_max_age_seconds",
            "[backup] max-age: the age of the newest backup past which OxetcdBackupTooOld fires",
            m.backup_max_age.clone(),
        );
        m.process.register(&mut r);
        Metrics { registry: r, ..m }
    }

    /// Updates the sampled metrics.
    pub fn observe(&self, s: Sample) {
        self.has_leader.set(i64::from(s.has_leader));
        self.is_leader.set(i64::from(s.is_leader));
        self.is_learner.set(i64::from(s.is_learner));
        advance_to(&self.leader_changes, s.leader_changes);
        self.proposals_committed.set(s.committed_index as i64);
        self.proposals_applied.set(s.applied_index as i64);
        self.proposals_pending.set(s.proposals_pending as i64);
        self.db_size.set(s.db_size_bytes as i64);
        self.db_size_in_use.set(s.db_size_in_use_bytes as i64);
        self.quota.set(s.quota_backend_bytes as i64);
        self.watchers.set(s.watchers as i64);
        self.slow_watchers.set(s.slow_watchers as i64);
        self.watch_streams.set(s.watch_streams as i64);
        advance_to(&self.watch_events, s.watch_events_total);
        self.pending_events.set(s.watch_events_pending as i64);
        self.keys.set(s.keys as i64);
        self.current_revision.set(s.current_revision);
        // -1 until the first compaction, as etcd reports it.
        self.compact_revision.set(s.compact_revision);
        self.raft_log_entries.set(s.raft_log_entries as i64);
        let backup = s.backup.unwrap_or(BackupSample {
            finished_seconds: 0,
            size_bytes: 0,
        });
        self.backup_last_success.set(backup.finished_seconds);
        self.backup_last_size.set(backup.size_bytes as i64);
        self.backup_max_age.set(s.backup_max_age_seconds as i64);
        self.data_dir_free.set(s.data_dir_disk.free_bytes as i64);
        self.data_dir_total.set(s.data_dir_disk.total_bytes as i64);
        self.log_dir_free.set(s.log_dir_disk.free_bytes as i64);
        self.log_dir_total.set(s.log_dir_disk.total_bytes as i64);
        self.pending_compaction
            .set(s.pending_compaction_bytes as i64);
        self.live_data.set(s.live_data_bytes as i64);
        for certificate in s.certificates {
            self.certificate_expiry
                .get_or_create(&[
                    ("listener", certificate.listener.to_owned()),
                    ("path", certificate.path),
                ])
                .set(certificate.not_after);
        }
        self.process.sample();
    }

    /// Counts the MVCC operations of one request.
    pub fn record_mvcc(&self, ops: MvccOps) {
        for (counter, n) in [
            (&self.mvcc_ranges, ops.ranges),
            (&self.mvcc_puts, ops.puts),
            (&self.mvcc_deletes, ops.deletes),
            (&self.mvcc_txns, ops.txns),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Moves a counter forward to a total kept elsewhere.
fn advance_to(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The standard `process_*` metrics, read from `/proc/self` at scrape time.
#[derive(Default)]
struct ProcessMetrics {
    resident_memory: Gauge,
    virtual_memory: Gauge,
    cpu_seconds: Counter<f64, AtomicF64>,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, AtomicF64>,
}

/// An f64 in an `AtomicU64`, for prometheus-client's float counters and gauges.
type AtomicF64 = std::sync::atomic::AtomicU64;

impl ProcessMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident_memory.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            self.virtual_memory.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            self.cpu_seconds.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            self.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            self.max_fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            self.start_time.clone(),
        );
    }

    fn sample(&self) {
        let ticks = clock_ticks_per_second();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let field = |n: usize| fields.get(n).and_then(|v| v.parse::<u64>().ok());
            // Index 0 here is field 3 (state) of proc(5).
            if let (Some(utime), Some(stime)) = (field(11), field(12)) {
                let cpu = (utime + stime) as f64 / ticks;
                let now = self.cpu_seconds.get();
                if cpu > now {
                    self.cpu_seconds.inc_by(cpu - now);
                }
            }
            if let Some(vsize) = field(20) {
                self.virtual_memory.set(vsize as i64);
            }
            if let Some(rss) = field(21) {
                self.resident_memory.set(rss as i64 * page_size());
            }
            if let Some(start) = field(19) {
                self.start_time
                    .set(boot_time_seconds() + start as f64 / ticks);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        // No soft limit (RLIM_INFINITY) reads as the gauge's maximum.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        self.max_fds
            .set(limit.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX)));
    }
}

fn clock_ticks_per_second() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        ticks => ticks as f64,
    }
}

fn page_size() -> i64 {
    i64::try_from(rustix::param::page_size()).expect("the page size fits in i64")
}

/// The system boot time (`btime` in /proc/stat), cached after the first read.
fn boot_time_seconds() -> f64 {
    static BOOT: AtomicU64 = AtomicU64::new(0);
    let cached = BOOT.load(Ordering::Relaxed);
    if cached != 0 {
        return cached as f64;
    }
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    BOOT.store(btime, Ordering::Relaxed);
    btime as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_etcd_names() {
        let m = Metrics::with_identity(0xabc, "3.5.0");
        m.observe(Sample {
            has_leader: true,
            leader_changes: 2,
            db_size_bytes: 4096,
            watchers: 3,
            certificates: vec![CertificateExpiry {
                listener: "client",
                path: "/etc/oxetcd/server.crt".to_owned(),
                not_after: 1_893_456_000,
            }],
            backup: Some(BackupSample {
                finished_seconds: 1_796_534_188,
                size_bytes: 1056,
            }),
            backup_max_age_seconds: 93_600,
            ..Sample::default()
        });
        m.wal_fsync_seconds.observe(0.003);
        m.peer_sent_bytes
            .get_or_create(&[("To", "2".to_owned())])
            .inc_by(10);
        m.record_mvcc(MvccOps {
            ranges: 2,
            puts: 1,
            deletes: 0,
            txns: 1,
        });
        m.health_success.inc();
        m.snapshot_send_success
            .get_or_create(&[("To", "2".to_owned())])
            .inc();
        let text = m.encode();
        for line in [
            "etcd_mvcc_range_total 2",
            "etcd_mvcc_put_total 1",
            "etcd_mvcc_delete_total 0",
            "etcd_mvcc_txn_total 1",
            "etcd_debugging_mvcc_range_total 2",
            "etcd_debugging_mvcc_compact_revision 0",
            // etcd's counters without `_total` keep their name, typed as counters.
            "# TYPE etcd_server_health_success counter",
            "etcd_server_health_success 1",
            "etcd_server_health_failures 0",
            "# TYPE etcd_network_snapshot_send_success counter",
            "etcd_network_snapshot_send_success{To=\"2\"} 1",
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 0",
            "etcd_server_leader_changes_seen_total 2",
            "etcd_mvcc_db_total_size_in_bytes 4096",
            "etcd_debugging_mvcc_watcher_total 3",
            "etcd_server_id{server_id=\"abc\"} 1",
            "etcd_server_version{server_version=\"3.5.0\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 0",
            "etcd_network_peer_sent_bytes_total{To=\"2\"} 10",
            "oxetcd_tls_certificate_expiry_timestamp_seconds{listener=\"client\",path=\"/etc/oxetcd/server.crt\"} 1893456000",
            "oxetcd_backup_last_success_timestamp_seconds 1796534188",
            "oxetcd_backup_last_size_bytes 1056",
            "oxetcd_backup_max_age_seconds 93600",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("process_resident_memory_bytes ")),
            "process metrics in\n{text}"
        );
    }

    #[test]
    fn disk_space_of_an_existing_path() {
        let space = DiskSpace::of(std::path::Path::new("/"));
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
        assert_eq!(
            DiskSpace::of(std::path::Path::new("/no/such/dir")),
            DiskSpace::default()
        );
    }

    #[test]
    fn process_limits_and_units_come_from_the_kernel() {
        let process = ProcessMetrics::default();
        process.sample();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(process.max_fds.get() as u64, limit.current.unwrap());
        assert!(process.resident_memory.get() > 0);
        assert!(page_size() >= 4096 && page_size().count_ones() == 1);
        assert!(clock_ticks_per_second() >= 1.0);
    }
}
