//! The apply thread: takes committed entries and snapshot installs from the raft thread in log
//! order, runs them through the [`Applier`], and publishes the applied index. A snapshot install
//! runs here while the raft thread keeps ticking; older snapshot files go once it is done.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};

use tokio::sync::watch;

use super::{ApplyTask, NodeMsg, Shared};
use crate::apply::Applier;

pub(super) fn run_apply(
    mut applier: Applier,
    rx: Receiver<ApplyTask>,
    shared: Arc<Shared>,
    applied_tx: watch::Sender<u64>,
    wake: SyncSender<NodeMsg>,
) {
    loop {
        shared.apply_busy.idle();
        let Ok(task) = rx.recv() else { break };
        shared.apply_busy.busy();
        let applied = match task {
            ApplyTask::Entries(entries, traces) => {
                applier.trace(traces);
                applier.apply_entries(entries)
            }
            ApplyTask::Snapshot { file, index, term } => {
                applier.install_snapshot(&file, index, term, &mut || shared.apply_busy.busy());
                if let Some(dir) = file.parent() {
                    crate::raft::snapshots::remove_files_before(dir, index);
                }
                index
            }
        };
        let changes = applier.take_conf_changes();
        if !changes.is_empty() {
            shared
                .applied_conf_changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(changes);
            // A full inbox wakes the raft thread anyway; it drains the changes every loop.
            let _ = wake.try_send(NodeMsg::Wake);
        }
        shared.applied.store(applied, Ordering::Release);
        applied_tx.send_replace(applied);
        if shared.apply_backlogged.load(Ordering::Acquire) {
            // The queue has room again for what the raft thread holds back.
            let _ = wake.try_send(NodeMsg::Wake);
        }
    }
    tracing::info!("apply thread stopped");
}
