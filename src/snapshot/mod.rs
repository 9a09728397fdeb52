//! State-machine snapshots: the [`format`] (codec and CRC, shared by Maintenance.Snapshot, raft
//! snapshot files and restore), the state machine as raft's snapshot [`source`], the
//! [`restore`] command (`oxetcd snapshot restore`), which also imports etcd snapshots
//! ([`etcd_import`], reading bbolt files with [`bolt`]), and the [`etcd_export`] command
//! (`oxetcd snapshot export --format etcd`).
//!
//! Installing a raft snapshot into a running member is the apply layer's job
//! (`crate::apply::install`); it reads files through [`format`].

pub mod bolt;
pub mod etcd_export;
pub mod etcd_import;
pub mod format;
pub mod restore;
pub mod source;
