//! The metric names oxetcd's `/metrics` exports (issue 4's metrics contract), in one place for the
//! alert rule test and the live scrape test.
//!
//! Names are written as a query uses them: counters with their `_total` suffix, histograms by
//! family name (the series are `<family>_bucket`, `<family>_sum` and `<family>_count`).

/// Every metric a rule or dashboard query may use: what the server exports, plus the series
/// Prometheus adds itself at scrape time (`up`; a scrape of `/metrics` has none of those).
pub const EXPORTED_METRICS: &[&str] = &[
    // etcd's names, same meaning, type and labels as etcd.
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_is_learner",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_server_quota_backend_bytes",
    "etcd_server_id",
    "etcd_server_version",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_peer_sent_failures_total",
    "etcd_network_peer_round_trip_time_seconds",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
    // Created per peer at zero (etcd creates them at the first transfer).
    "etcd_network_snapshot_send_success",
    "etcd_network_snapshot_send_failures",
    "etcd_network_snapshot_receive_success",
    "etcd_network_snapshot_receive_failures",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_put_total",
    "etcd_debugging_mvcc_delete_total",
    "etcd_debugging_mvcc_range_total",
    "etcd_debugging_mvcc_txn_total",
    "etcd_debugging_mvcc_keys_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_pending_events_total",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    "etcd_debugging_mvcc_db_compaction_keys_total",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_current_revision",
    "etcd_debugging_mvcc_compact_revision",
    "etcd_server_health_success",
    "etcd_server_health_failures",
    "etcd_server_slow_apply_total",
    "etcd_server_slow_read_indexes_total",
    "etcd_server_read_indexes_failed_total",
    "etcd_server_heartbeat_send_failures_total",
    "etcd_server_client_requests_total",
    // gRPC server metrics (go-grpc-prometheus names and labels).
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "grpc_server_handling_seconds",
    // Process collector.
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    // oxetcd's own.
    "oxetcd_server_leaderless_duration_seconds",
    "oxetcd_server_election_duration_seconds",
    "oxetcd_backup_last_success_timestamp_seconds",
    "oxetcd_backup_last_size_bytes",
    "oxetcd_backup_max_age_seconds",
    "oxetcd_disk_data_dir_free_bytes",
    "oxetcd_disk_data_dir_total_bytes",
    "oxetcd_disk_log_dir_free_bytes",
    "oxetcd_disk_log_dir_total_bytes",
    "oxetcd_rocksdb_pending_compaction_bytes",
    "oxetcd_rocksdb_live_data_size_bytes",
    "oxetcd_raft_log_entries",
    "oxetcd_tls_certificate_expiry_timestamp_seconds",
    // Added by Prometheus for every scrape target.
    "up",
];

/// The histogram families in [`EXPORTED_METRICS`].
pub const HISTOGRAMS: &[&str] = &[
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_network_peer_round_trip_time_seconds",
    "grpc_server_handling_seconds",
    "oxetcd_server_leaderless_duration_seconds",
    "oxetcd_server_election_duration_seconds",
];

/// Series a histogram family exposes.
pub const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// Whether a series name used in a query exists: an exported name, or an exported histogram
/// family followed by one of [`HISTOGRAM_SUFFIXES`].
pub fn is_exported(name: &str) -> bool {
    EXPORTED_METRICS.contains(&name)
        || HISTOGRAM_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|family| HISTOGRAMS.contains(&family))
        })
}
