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
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label: a peer (`To`/`From`, the member ID in hex).
pub type PeerLabel = [(&'static str, String); 1];
/// `listener` (client or peer) and `path` (the certificate file) of a served TLS certificate.
pub type CertificateLabels = [(&'static str, String); 2];
/// `grpc_type`, `grpc_service`, `grpc_method`.
pub type GrpcLabels = [(&'static str, String); 3];
/// `grpc_type`, `grpc_service`, `grpc_method`, `grpc_code`.
pub type GrpcCodeLabels = [(&'static str, String); 4];

/// etcd's disk histograms: 1 ms doubling to 8.192 s.
fn disk_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
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
    pub slow_watchers_total: u64,
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
    slow_watchers: Counter,
    current_revision: Gauge,
    compact_revision: Gauge,
    raft_log_entries: Gauge,
    /// Snapshots streamed to peers, and received from them (whole and verified).
    pub snapshots_sent: Counter,
    pub snapshots_received: Counter,
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
            slow_watchers: Counter::default(),
            current_revision: Gauge::default(),
            compact_revision: Gauge::default(),
            raft_log_entries: Gauge::default(),
            snapshots_sent: Counter::default(),
            snapshots_received: Counter::default(),
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
            m.snapshots_sent.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            m.snapshots_received.clone(),
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
            "etcd_debugging_mvcc_slow_watcher",
            "Total number of times a watcher fell behind and was caught up from storage",
            m.slow_watchers.clone(),
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
        advance_to(&self.slow_watchers, s.slow_watchers_total);
        self.current_revision.set(s.current_revision);
        self.compact_revision.set(s.compact_revision.max(0));
        self.raft_log_entries.set(s.raft_log_entries as i64);
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
            ..Sample::default()
        });
        m.wal_fsync_seconds.observe(0.003);
        m.peer_sent_bytes
            .get_or_create(&[("To", "2".to_owned())])
            .inc_by(10);
        let text = m.encode();
        for line in [
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
