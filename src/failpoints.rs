//! Named failpoints (tikv's `fail` crate) for fault-injection tests: [`failpoint!`] marks a
//! place, and with the `failpoints` cargo feature a test makes it panic, sleep or (where the
//! place can fail) return an error by naming it in the `FAILPOINTS` environment variable of the
//! process, read once at start (`name=action;name=action`, e.g.
//! `FAILPOINTS=apply_write=panic` or `raft_log_before_fsync=sleep(60000)`). Without the feature
//! (the default, and the packaged binary) the macro expands to nothing and `fail` is not built.
//!
//! The names, all in one place:
//!
//! | name | where | thread | `return` |
//! | --- | --- | --- | --- |
//! | `raft_log_before_fsync` | before each raft log / hard state write (synced or not) | raft | an injected storage error, which is fatal |
//! | `raft_log_after_fsync` | after that write returned | raft | no |
//! | `apply_write` | before the apply thread writes an entry's state | apply | no |
//! | `snapshot_write` | before a snapshot file for peers is written | snapshot | no |
//! | `snapshot_send` | before a snapshot file is streamed to a peer | peer sender task | no |
//! | `snapshot_receive` | when a peer's snapshot stream arrives | peer service task | no |
//! | `snapshot_install` | before a received snapshot replaces the state | apply | no |
//! | `compaction` | before a scheduled compaction deletes revisions | compactor | no |
//! | `defragment` | before a defragmentation compacts the database | blocking pool | no |

/// Marks a failpoint: `failpoint!("name")`, or `failpoint!("name", |arg| value)` where the
/// enclosing function returns `value` when the failpoint's action is `return(arg)`.
#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($($args:tt)*) => {
        fail::fail_point!($($args)*)
    };
}

/// Without the `failpoints` feature a failpoint is nothing.
#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($($args:tt)*) => {};
}
