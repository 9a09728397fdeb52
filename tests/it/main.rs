//! The one integration test binary: every black-box suite against real `oxetcd` processes, the
//! checks of the alert rules and dashboards, and the deterministic raft simulation, as modules
//! sharing one fixture (`common`). Run one suite with `cargo test --release --test it kv::`.

// Test helpers outside #[test] functions unwrap too: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used)]

mod common;
mod sim;
mod tidy;

mod alerts;
mod auth;
mod auth_tls;
mod auth_tokens;
mod backup;
mod bad_input;
mod bench_tool;
mod cluster;
mod cluster_faults;
mod cluster_leadership;
mod cluster_leases;
mod cluster_membership;
mod cluster_sim;
mod compaction_order;
mod config_cli;
mod config_reload;
mod corrupt_check;
// Needs the failpoints in the binary (`--features failpoints`, as CI builds it).
#[cfg(feature = "failpoints")]
mod crash_points;
mod dashboards;
mod disk_full;
mod durability;
mod election_lock;
mod export;
mod fixture_smoke;
mod gateway;
mod history;
mod kv;
mod lease;
mod logging;
mod maintenance;
mod metrics;
mod migrate;
mod observability_live;
// Needs the failpoints in the binary (`--features failpoints`, as CI builds it).
#[cfg(feature = "failpoints")]
mod panic_policy;
mod peer_props;
mod peer_tls;
mod quota_exact;
mod snapshot_cap;
mod tls;
mod tracing;
mod unix_urls;
mod upgrade_format;
mod upgrade_rolling;
mod watch;
