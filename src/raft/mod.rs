//! The raft-rs adapter: the log store behind `raft::Storage` and the logger raft writes to.

pub mod logger;
pub mod storage;

pub use storage::RaftLogStore;
