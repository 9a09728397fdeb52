//! State-machine snapshots: the [`format`] (codec and CRC, shared by Maintenance.Snapshot, raft
//! snapshot files and restore), the state machine as raft's snapshot [`source`], and the
//! [`restore`] command (`oxetcd snapshot restore`).
//!
//! Installing a raft snapshot into a running member is the apply layer's job
//! (`crate::apply::install`); it reads files through [`format`].

pub mod format;
pub mod restore;
pub mod source;

pub use format::{
    Record, SNAPSHOT_ALIGN_BYTES, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_MAGIC, SNAPSHOT_TRAILER_BYTES,
    SnapshotError, SnapshotPosition, SnapshotReader, encoded_len, position, save_to_file,
    verify_file, write_body, write_snapshot,
};
pub use restore::{RestoreError, RestoreOptions, RestoreSummary, restore};
pub use source::StateMachineSnapshots;
