//! Task owners: [`TaskSet`], a named set of tokio tasks and OS threads that is told to stop and
//! joined as one, so nothing the server starts runs detached. `server::run` creates the sets and
//! stops them in the order its doc comment gives.
//!
//! A set holds its live tasks and threads only: finished ones are reaped at every spawn, so it
//! grows with what runs at once, which whoever spawns bounds (connections × HTTP/2 streams for
//! client streams, one per peer for peer senders, one at a time for snapshot generation).
//!
//! Threads that own state (the raft and apply threads, and the threads of a set made with
//! [`TaskSet::owning_state`]) are marked with [`mark_thread_owns_state`]: a panic in one stops
//! the whole process (the panic hook `telemetry::init` installs asks [`thread_owns_state`]),
//! since the state it left half-changed cannot be trusted and nothing would redo its work.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

/// How often [`TaskSet::shutdown`] looks whether the set's threads have finished.
const THREAD_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long tasks aborted after the timeout get to unwind.
const ABORT_GRACE: Duration = Duration::from_millis(100);

thread_local! {
    /// Whether the current thread owns state (see the module doc).
    static OWNS_STATE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as owning state: a panic in it stops the process.
pub fn mark_thread_owns_state() {
    OWNS_STATE.with(|owns| owns.set(true));
}

/// Whether the current thread was marked with [`mark_thread_owns_state`].
pub fn thread_owns_state() -> bool {
    OWNS_STATE.with(Cell::get)
}

/// Why a task or thread was not started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{set} is stopping; {task} not started")]
    Stopping {
        set: &'static str,
        task: &'static str,
    },
    #[error("no async runtime to run {task} of {set} on")]
    NoRuntime {
        set: &'static str,
        task: &'static str,
    },
    #[error("starting the {task} thread: {source}")]
    Thread {
        task: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A named owner of tasks and threads. Cheap to clone; clones share the set. Once stopping
/// (after [`TaskSet::cancel`] or [`TaskSet::shutdown`]) it starts nothing new. Dropping the last
/// clone aborts the tasks still running (threads cannot be aborted; they finish detached).
#[derive(Clone)]
pub struct TaskSet {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    /// Threads of this set own state (see the module doc).
    owns_state: bool,
    /// Where tasks run when spawned from outside the runtime (the raft and apply threads).
    runtime: Option<Handle>,
    stop: watch::Sender<bool>,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    task_names: HashMap<Id, &'static str>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
}

impl Running {
    /// Forgets finished tasks and threads (logging panics).
    fn reap(&mut self, set: &'static str) {
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            task_joined(set, &mut self.task_names, joined);
        }
        let (finished, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.threads)
            .into_iter()
            .partition(|(_, thread)| thread.is_finished());
        self.threads = running;
        for (name, thread) in finished {
            join_thread(set, name, thread);
        }
    }
}

/// Forgets a finished task's name, logging a panic.
fn task_joined(
    set: &'static str,
    names: &mut HashMap<Id, &'static str>,
    joined: Result<(Id, ()), JoinError>,
) {
    let id = match &joined {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    };
    let name = names.remove(&id).unwrap_or("unnamed");
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(set, task = name, error = %e, "task panicked");
    }
}

fn join_thread(set: &'static str, name: &'static str, thread: JoinHandle<()>) {
    if thread.join().is_err() {
        tracing::error!(set, thread = name, "thread panicked");
    }
}

impl TaskSet {
    /// An empty set. Tasks run on the runtime current here, or (created outside one) on the
    /// runtime current where they are spawned.
    pub fn new(name: &'static str) -> TaskSet {
        TaskSet::with_policy(name, false)
    }

    /// An empty set whose threads own state: each is marked with [`mark_thread_owns_state`],
    /// so a panic in one stops the process.
    pub fn owning_state(name: &'static str) -> TaskSet {
        TaskSet::with_policy(name, true)
    }

    fn with_policy(name: &'static str, owns_state: bool) -> TaskSet {
        TaskSet {
            inner: Arc::new(Inner {
                name,
                owns_state,
                runtime: Handle::try_current().ok(),
                stop: watch::Sender::new(false),
                running: Mutex::new(Running::default()),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    fn running(&self) -> MutexGuard<'_, Running> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `future` as a task of this set. Callable from any thread. The task should end
    /// soon after [`TaskSet::stopping`] completes; it is aborted when it does not end within
    /// the set's shutdown timeout.
    pub fn spawn<F>(&self, task: &'static str, future: F) -> Result<(), SpawnError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let set = self.inner.name;
        let mut running = self.running();
        // Checked under the lock `shutdown` takes the tasks with: nothing joins the set unseen.
        if self.is_stopping() {
            return Err(SpawnError::Stopping { set, task });
        }
        let runtime = match &self.inner.runtime {
            Some(runtime) => runtime.clone(),
            None => Handle::try_current().map_err(|_| SpawnError::NoRuntime { set, task })?,
        };
        running.reap(set);
        let id = running.tasks.spawn_on(future, &runtime).id();
        running.task_names.insert(id, task);
        Ok(())
    }

    /// Starts `f` on an OS thread named `task`, owned by this set. A thread cannot be aborted:
    /// long work should check [`TaskSet::is_stopping`] between steps.
    pub fn spawn_thread<F>(&self, task: &'static str, f: F) -> Result<(), SpawnError>
    where
        F: FnOnce() + Send + 'static,
    {
        let set = self.inner.name;
        let mut running = self.running();
        if self.is_stopping() {
            return Err(SpawnError::Stopping { set, task });
        }
        running.reap(set);
        let owns_state = self.inner.owns_state;
        let thread = std::thread::Builder::new()
            .name(task.into())
            .spawn(move || {
                if owns_state {
                    mark_thread_owns_state();
                }
                f()
            })
            .map_err(|source| SpawnError::Thread { task, source })?;
        running.threads.push((task, thread));
        Ok(())
    }

    /// Whether the set was told to stop.
    pub fn is_stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Completes once the set is told to stop.
    pub async fn stopping(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// The stop signal as a receiver that turns true, for code that selects on one.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Tells the set's tasks to stop and refuses new ones, without waiting for them.
    pub fn cancel(&self) {
        let _running = self.running();
        if !self.inner.stop.send_replace(true) {
            tracing::debug!(set = self.inner.name, "task set stopping");
        }
    }

    /// Tells the set to stop and waits up to `timeout` for its tasks and threads to end. Tasks
    /// still running then are aborted, threads left to finish on their own; both are logged at
    /// warn. Returns whether everything ended in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let set = self.inner.name;
        self.cancel();
        let started = Instant::now();
        let deadline = started + timeout;
        let Running {
            mut tasks,
            mut task_names,
            threads,
        } = std::mem::take(&mut *self.running());
        let (task_count, thread_count) = (tasks.len(), threads.len());
        let mut clean = true;

        let joined = tokio::time::timeout_at(deadline, async {
            while let Some(joined) = tasks.join_next_with_id().await {
                task_joined(set, &mut task_names, joined);
            }
        })
        .await;
        if joined.is_err() {
            clean = false;
            let mut left: Vec<&str> = task_names.values().copied().collect();
            left.sort_unstable();
            tracing::warn!(
                set,
                tasks = ?left,
                timeout_ms = timeout.as_millis() as u64,
                "tasks did not stop in time; aborting them"
            );
            tasks.abort_all();
            let _ = tokio::time::timeout(ABORT_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        }

        while threads.iter().any(|(_, t)| !t.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(THREAD_POLL_INTERVAL).await;
        }
        let (finished, left): (Vec<_>, Vec<_>) =
            threads.into_iter().partition(|(_, t)| t.is_finished());
        for (name, thread) in finished {
            join_thread(set, name, thread);
        }
        if !left.is_empty() {
            clean = false;
            let names: Vec<&str> = left.iter().map(|(name, _)| *name).collect();
            tracing::warn!(
                set,
                threads = ?names,
                timeout_ms = timeout.as_millis() as u64,
                "threads did not stop in time; leaving them to finish"
            );
        }
        tracing::debug!(
            set,
            tasks = task_count,
            threads = thread_count,
            took_ms = started.elapsed().as_millis() as u64,
            "task set stopped"
        );
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_signals_and_joins_tasks_and_threads() {
        let set = TaskSet::new("test");
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(4);
        let task_set = set.clone();
        let tx = done_tx.clone();
        set.spawn("waits", async move {
            task_set.stopping().await;
            let _ = tx.send("task").await;
        })
        .unwrap();
        let thread_set = set.clone();
        set.spawn_thread("polls", move || {
            while !thread_set.is_stopping() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = done_tx.blocking_send("thread");
        })
        .unwrap();
        assert!(set.shutdown(Duration::from_secs(5)).await);
        let mut done = vec![done_rx.recv().await.unwrap(), done_rx.recv().await.unwrap()];
        done.sort_unstable();
        assert_eq!(done, ["task", "thread"]);
    }

    #[tokio::test]
    async fn a_stopping_set_starts_nothing() {
        let set = TaskSet::new("test");
        set.cancel();
        assert!(matches!(
            set.spawn("late", async {}),
            Err(SpawnError::Stopping { .. })
        ));
        assert!(matches!(
            set.spawn_thread("late", || {}),
            Err(SpawnError::Stopping { .. })
        ));
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_aborted_after_the_timeout() {
        let set = TaskSet::new("test");
        set.spawn("stuck", std::future::pending()).unwrap();
        assert!(!set.shutdown(Duration::from_millis(50)).await);
    }

    #[test]
    fn spawned_from_a_plain_thread_runs_on_the_sets_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let set = runtime.block_on(async { TaskSet::new("test") });
        let (tx, rx) = std::sync::mpsc::channel();
        let spawner = set.clone();
        std::thread::spawn(move || {
            spawner
                .spawn("from-thread", async move {
                    tx.send(()).unwrap();
                })
                .unwrap()
        })
        .join()
        .unwrap();
        runtime.block_on(async {
            assert!(set.shutdown(Duration::from_secs(5)).await);
        });
        rx.try_recv().unwrap();
    }
}
