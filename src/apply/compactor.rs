//! The compactor: one long-lived thread per member that deletes compacted revisions from disk,
//! taking compactions in the order they were applied, so the `finishedCompactRev` mark only moves
//! forward and members that applied the same entries hold the same data.
//!
//! The apply thread hands it each published [`CompactJob`] over a bounded queue
//! ([`COMPACTION_QUEUE_MAX`]); when the queue is full the apply thread waits for room, which only
//! happens when compactions are applied faster than the disk deletes them. Compactions that
//! queued up behind a running one are merged: only the newest runs, since its keep set (computed
//! after the older ones compacted the index) leaves out everything the older ones would delete.
//! Their callers are told once it is done.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::mvcc::CompactJob;
use crate::storage::Engine;
use crate::tasks::{SpawnError, TaskSet};

/// Compactions applied but not yet taken by the compactor thread.
pub const COMPACTION_QUEUE_MAX: usize = 16;

/// How often an idle compactor looks whether its task set is stopping.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A compaction waiting for the compactor, and who to tell when it is done.
struct Queued {
    job: CompactJob,
    done: oneshot::Sender<()>,
}

/// The apply thread's end of the compactor. The thread starts with the first compaction and
/// ends when this is dropped or its task set stops (after finishing what was queued).
pub(super) struct Compactor {
    threads: TaskSet,
    queue: Option<SyncSender<Queued>>,
}

impl Compactor {
    pub(super) fn new(threads: TaskSet) -> Compactor {
        Compactor {
            threads,
            queue: None,
        }
    }

    /// Queues `job` (already published) behind the compactions applied before it; `done` fires
    /// once its revisions are gone from disk. Blocks while the queue is full.
    pub(super) fn submit(
        &mut self,
        job: CompactJob,
        done: oneshot::Sender<()>,
        engine: &Arc<Engine>,
        metrics: &Option<Arc<crate::metrics::Metrics>>,
    ) {
        let queue = match &self.queue {
            Some(queue) => queue,
            None => match self.start(engine.clone(), metrics.clone()) {
                Ok(queue) => self.queue.insert(queue),
                Err(SpawnError::Stopping { .. }) => {
                    // Only after the apply thread is told to stop: the schedule mark is on
                    // disk, so the next start finishes the compaction.
                    tracing::info!(
                        compact_revision = job.rev(),
                        "compaction left for the next start: the member is stopping"
                    );
                    return;
                }
                Err(e) => crate::fatal("starting the compactor thread", &e),
            },
        };
        let queued = Queued { job, done };
        let queued = match queue.try_send(queued) {
            Ok(()) => return,
            Err(TrySendError::Full(queued)) => {
                tracing::debug!(
                    queued = COMPACTION_QUEUE_MAX,
                    "compaction queue full; apply waits for the compactor"
                );
                queue.send(queued).map_err(|e| e.0)
            }
            Err(TrySendError::Disconnected(queued)) => Err(queued),
        };
        if let Err(queued) = queued {
            tracing::info!(
                compact_revision = queued.job.rev(),
                "compaction left for the next start: the compactor has stopped"
            );
        }
    }

    fn start(
        &self,
        engine: Arc<Engine>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<SyncSender<Queued>, SpawnError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(COMPACTION_QUEUE_MAX);
        let threads = self.threads.clone();
        self.threads.spawn_thread("compactor", move || {
            run(&rx, &threads, |job| {
                failpoint!("compaction");
                match job.run(&engine) {
                    Ok(stats) => {
                        if let Some(metrics) = &metrics {
                            metrics.compaction_keys.inc_by(stats.deleted as u64);
                        }
                    }
                    Err(e) => crate::fatal("compacting revisions", &e),
                }
                tracing::info!(
                    compact_revision = job.rev(),
                    "finished scheduled compaction"
                );
            })
        })?;
        Ok(tx)
    }
}

/// The compactor thread: runs the queued compactions in order (merging those that waited) until
/// the queue's sender is gone, or `threads` stops and the queue is empty.
fn run(rx: &Receiver<Queued>, threads: &TaskSet, mut compact: impl FnMut(&CompactJob)) {
    loop {
        let first = match rx.recv_timeout(STOP_POLL_INTERVAL) {
            Ok(queued) => queued,
            Err(RecvTimeoutError::Timeout) if threads.is_stopping() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let newest = &waiting.last().expect("holds the first compaction").job;
        if waiting.len() > 1 {
            tracing::debug!(
                merged = waiting.len(),
                compact_revision = newest.rev(),
                "running queued compactions as one"
            );
        }
        compact(newest);
        for queued in waiting {
            let _ = queued.done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Batch;

    /// A store with four revisions of one key (and one of another), compacted at each revision
    /// in turn (published, not yet run); returns the store and the jobs in apply order.
    fn compacted_store(dir: &std::path::Path) -> (crate::mvcc::MvccStore, Vec<CompactJob>) {
        let mvcc = crate::mvcc::MvccStore::open(Engine::open(dir, false).unwrap()).unwrap();
        let mut jobs = Vec::new();
        for rev in 1..=4 {
            let mut txn = mvcc.write_txn();
            txn.put(b"k", format!("v{rev}").as_bytes(), 0).unwrap();
            if rev == 2 {
                txn.put(b"other", b"kept", 0).unwrap();
            }
            let mut batch = Batch::new();
            let pending = txn.finish(&mut batch);
            mvcc.engine().write(batch, false).unwrap();
            mvcc.publish(pending);
            let mut batch = Batch::new();
            let job = mvcc.compact(rev, &mut batch).unwrap();
            mvcc.engine().write(batch, false).unwrap();
            mvcc.publish_compaction(&job);
            jobs.push(job);
        }
        (mvcc, jobs)
    }

    /// Compactions queued behind a running one run in apply order, merged into the newest, and
    /// every caller hears back.
    #[test]
    fn queued_compactions_run_in_order_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (_mvcc, jobs) = compacted_store(dir.path());
        let (tx, rx) = std::sync::mpsc::sync_channel(COMPACTION_QUEUE_MAX);
        let mut waiters = Vec::new();
        for job in jobs {
            let (done, waiter) = oneshot::channel();
            tx.send(Queued { job, done }).unwrap();
            waiters.push(waiter);
        }
        drop(tx);
        let mut ran = Vec::new();
        run(&rx, &TaskSet::new("test"), |job| ran.push(job.rev()));
        assert_eq!(
            ran,
            vec![4],
            "the queued compactions run once, as the newest"
        );
        for mut waiter in waiters {
            assert_eq!(waiter.try_recv(), Ok(()), "every caller is told");
        }
    }

    /// Running only the newest of the queued compactions leaves the store exactly as running
    /// each in turn does: what the members hold does not depend on how their queues merged.
    #[test]
    fn a_merged_compaction_leaves_what_running_each_leaves() {
        let (one_dir, each_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (merged, jobs) = compacted_store(one_dir.path());
        jobs.last().unwrap().run(merged.engine()).unwrap();
        let (each, jobs) = compacted_store(each_dir.path());
        for job in &jobs {
            job.run(each.engine()).unwrap();
        }
        assert_eq!(merged.hash_all().unwrap(), each.hash_all().unwrap());
        assert_eq!(merged.hash_kv(0).unwrap(), each.hash_kv(0).unwrap());
    }
}
