//! oxetcd: an etcd v3 compatible, strongly consistent key-value store on Raft and RocksDB.
//!
//! The layers, from the bottom: `storage` (RocksDB) → `mvcc`, `lease`, `watch`, `alarm`,
//! `membership`, `consistent_index`, `snapshot::format` (state machines and their snapshot
//! codec) → `txn` (etcd request semantics) → `raft` (log store) and `apply` (committed entries →
//! state) → `node` (the threads around raft) → `api`, `http` (what clients see) and `peer` (the
//! raft transport between members) → `server` (wiring). `tasks` (the owners of every task and
//! thread) is a leaf any layer may use. ARCHITECTURE.md is the map.

// First: its `failpoint!` macro is used by the modules below.
#[macro_use]
mod failpoints;

pub mod alarm;
pub mod api;
pub mod apply;
pub mod auth;
pub mod authority_fix;
pub mod backup;
pub mod config;
pub mod consistent_index;
pub mod data_format;
pub mod http;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod peer;
pub mod proto;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod storage;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod txn;
pub mod version;
pub mod watch;

/// Stops the process after an error that leaves this member unable to serve correct data
/// (a failed fsync, a corrupt log entry). Serving on would risk acknowledging lost writes. The
/// log file is flushed first, so the message is in it.
pub fn fatal(what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %err, "fatal: {what}; stopping the member");
    eprintln!("oxetcd: fatal: {what}: {err}");
    crate::telemetry::flush_log();
    std::process::exit(1)
}
