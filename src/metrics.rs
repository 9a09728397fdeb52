//! Every metric, defined once, under etcd's names where the meaning matches.
//!
//! Values that other layers already track (leader, sizes, watcher counts) are sampled when
//! Prometheus scrapes, through [`Metrics::observe`]; nothing here sits on a request path.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What a scrape samples from the running member.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub has_leader: bool,
    pub is_leader: bool,
    pub leader_changes: u64,
    pub db_size_bytes: u64,
    pub db_size_in_use_bytes: u64,
    pub quota_backend_bytes: u64,
    pub watchers: u64,
    pub slow_watchers_total: u64,
    pub current_revision: i64,
    pub compact_revision: i64,
    /// Entries in this member's raft log (bounded by `--snapshot-count` plus the catch-up tail).
    pub raft_log_entries: u64,
    pub snapshots_sent_total: u64,
    pub snapshots_received_total: u64,
}

/// The registry and its metrics.
pub struct Metrics {
    registry: Registry,
    has_leader: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    db_size: Gauge,
    db_size_in_use: Gauge,
    quota: Gauge,
    watchers: Gauge,
    slow_watchers: Counter,
    current_revision: Gauge,
    compact_revision: Gauge,
    raft_log_entries: Gauge,
    snapshots_sent: Counter,
    snapshots_received: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
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
            registry: Registry::default(),
        };
        registry.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            m.has_leader.clone(),
        );
        registry.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            m.is_leader.clone(),
        );
        registry.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            m.leader_changes.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            m.db_size.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes",
            m.db_size_in_use.clone(),
        );
        registry.register(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes",
            m.quota.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers",
            m.watchers.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_slow_watcher",
            "Total number of times a watcher fell behind and was caught up from storage",
            m.slow_watchers.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store",
            m.current_revision.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store",
            m.compact_revision.clone(),
        );
        registry.register(
            "oxetcd_raft_log_entries",
            "Entries in this member's raft log (older ones are compacted after a snapshot)",
            m.raft_log_entries.clone(),
        );
        registry.register(
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            m.snapshots_sent.clone(),
        );
        registry.register(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            m.snapshots_received.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Updates the sampled metrics.
    pub fn observe(&self, s: Sample) {
        self.has_leader.set(i64::from(s.has_leader));
        self.is_leader.set(i64::from(s.is_leader));
        advance_to(&self.leader_changes, s.leader_changes);
        self.db_size.set(s.db_size_bytes as i64);
        self.db_size_in_use.set(s.db_size_in_use_bytes as i64);
        self.quota.set(s.quota_backend_bytes as i64);
        self.watchers.set(s.watchers as i64);
        advance_to(&self.slow_watchers, s.slow_watchers_total);
        self.current_revision.set(s.current_revision);
        self.compact_revision.set(s.compact_revision.max(0));
        self.raft_log_entries.set(s.raft_log_entries as i64);
        advance_to(&self.snapshots_sent, s.snapshots_sent_total);
        advance_to(&self.snapshots_received, s.snapshots_received_total);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_etcd_names() {
        let m = Metrics::new();
        m.observe(Sample {
            has_leader: true,
            leader_changes: 2,
            db_size_bytes: 4096,
            watchers: 3,
            ..Sample::default()
        });
        let text = m.encode();
        for line in [
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 0",
            "etcd_server_leader_changes_seen_total 2",
            "etcd_mvcc_db_total_size_in_bytes 4096",
            "etcd_debugging_mvcc_watcher_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
