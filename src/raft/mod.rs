//! The raft-rs adapter: the log store behind `raft::Storage`, the one Ready cycle every driver
//! uses, the logger raft writes to, and the one codec for raft's messages.

pub mod codec;
pub mod logger;
pub mod ready;
pub mod snapshots;
pub mod storage;

pub use ready::{ReadySink, handle_ready};
pub use storage::RaftLogStore;
