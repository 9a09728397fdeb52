//! Raft snapshots on disk, under `<data-dir>/snap`: the leader writes the applied state to a
//! file on a background thread when raft asks for one, and a follower stores the snapshot it
//! receives there until it is installed.
//!
//! What a snapshot file holds is the state machine's business: raft asks a [`SnapshotSource`]
//! (implemented on the state-machine side, `crate::snapshot::source`) for one consistent view of
//! the applied state, its raft position and configuration, and lets that view write itself into
//! the file. This module only names, writes, syncs and keeps the files.
//!
//! A file is named after the raft position it was taken at, `<term>-<index>.snap` in 16 hex
//! digits each, so both ends derive it from the snapshot's metadata and nothing else travels in
//! the raft message. Files are written to a `.part` name, synced and renamed, so a complete name
//! always means a complete file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};

/// The sub-directory of the data directory holding snapshot files.
pub const SNAP_DIR: &str = "snap";

/// The file of the snapshot taken at `pos` inside `dir`.
pub fn snapshot_path(dir: &Path, term: u64, index: u64) -> PathBuf {
    dir.join(format!("{term:016x}-{index:016x}.snap"))
}

/// Where a snapshot is written before it is complete.
pub fn part_path(path: &Path) -> PathBuf {
    path.with_extension("snap.part")
}

/// An error of the state machine behind a [`SnapshotSource`], opaque to raft.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where raft snapshots come from: the state machine's applied state.
pub trait SnapshotSource: Send + Sync + 'static {
    /// One consistent view of the applied state, as it stands now.
    fn capture(&self) -> Result<Box<dyn SnapshotView + '_>, SourceError>;
}

/// One consistent view of the applied state, to be written as a snapshot file.
pub trait SnapshotView {
    /// The raft index and term of the last entry applied in this view.
    fn position(&self) -> (u64, u64);
    /// The raft configuration at that index.
    fn conf_state(&self) -> ConfState;
    /// Writes the whole snapshot file's content to `out`.
    fn write_to(&self, out: &mut dyn Write) -> Result<(), SourceError>;
}

/// Why a snapshot file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(SourceError),
}

/// A snapshot file ready to send.
#[derive(Debug, Clone)]
struct Generated {
    index: u64,
    term: u64,
    conf_state: ConfState,
}

#[derive(Debug, Default)]
enum GenState {
    #[default]
    Idle,
    Running,
    Ready(Generated),
}

/// The leader's snapshot files: at most one generated at a time, the newest kept.
pub struct SnapshotFiles {
    dir: PathBuf,
    source: Arc<dyn SnapshotSource>,
    state: Arc<Mutex<GenState>>,
    /// Owns the generating thread (a set of its own unless the server hands one in).
    threads: crate::tasks::TaskSet,
    /// Generate on the thread that asks instead (see [`SnapshotFiles::generating_inline`]).
    inline: bool,
}

impl SnapshotFiles {
    /// Creates the snapshot directory if needed and removes unfinished files; snapshots for
    /// peers are taken from `source`.
    pub fn open(
        data_dir: &Path,
        source: Arc<dyn SnapshotSource>,
    ) -> std::io::Result<SnapshotFiles> {
        let dir = data_dir.join(SNAP_DIR);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(SnapshotFiles {
            dir,
            source,
            state: Arc::new(Mutex::new(GenState::Idle)),
            threads: crate::tasks::TaskSet::new("raft-snapshots"),
            inline: false,
        })
    }

    /// Generates each snapshot on the thread that asks for it, before [`ready_or_start`]
    /// returns (still `None`: raft takes it when it asks again). For the deterministic cluster
    /// simulation, where a snapshot must capture the applied state at a point of the schedule
    /// rather than wherever a generating thread happened to be; the server never sets it.
    ///
    /// [`ready_or_start`]: SnapshotFiles::ready_or_start
    pub fn generating_inline(mut self) -> SnapshotFiles {
        self.inline = true;
        self
    }

    /// Generates snapshots on threads owned by `threads`, which the server joins at shutdown.
    pub fn with_threads(mut self, threads: crate::tasks::TaskSet) -> SnapshotFiles {
        self.threads = threads;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest generated snapshot if it is at `min_index` or later and its configuration
    /// holds member `to` (a snapshot taken before `to` was added would be ignored by it, and
    /// sent again forever); otherwise starts generating one (unless that is under way) and
    /// returns `None`: raft asks again later.
    pub fn ready_or_start(&self, min_index: u64, to: u64) -> Option<Snapshot> {
        let mut state = self.lock();
        match &*state {
            GenState::Ready(g)
                if g.index >= min_index
                    && (g.conf_state.voters.contains(&to)
                        || g.conf_state.learners.contains(&to)) =>
            {
                let mut meta = SnapshotMetadata {
                    index: g.index,
                    term: g.term,
                    ..SnapshotMetadata::default()
                };
                meta.set_conf_state(g.conf_state.clone());
                let mut snap = Snapshot::default();
                snap.set_metadata(meta);
                return Some(snap);
            }
            GenState::Running => return None,
            _ => {}
        }
        *state = GenState::Running;
        drop(state);
        let source = self.source.clone();
        let dir = self.dir.clone();
        let shared = self.state.clone();
        let job = move || {
            let started = std::time::Instant::now();
            let outcome = generate(source.as_ref(), &dir);
            let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(g) => {
                    tracing::info!(
                        index = g.index,
                        term = g.term,
                        took = ?started.elapsed(),
                        "saved a snapshot for peers"
                    );
                    remove_files_before(&dir, g.index);
                    *state = GenState::Ready(g);
                }
                Err(e) => {
                    tracing::error!(error = %e, "saving a snapshot for peers failed");
                    *state = GenState::Idle;
                }
            }
        };
        if self.inline {
            job();
            return None;
        }
        if let Err(e) = self.threads.spawn_thread("snapshot", job) {
            tracing::error!(error = %e, "cannot start the snapshot thread");
            *self.lock() = GenState::Idle;
        }
        None
    }
}

/// Writes a snapshot of the source's current applied state to `dir`.
fn generate(source: &dyn SnapshotSource, dir: &Path) -> Result<Generated, SnapshotFileError> {
    failpoint!("snapshot_write");
    let view = source.capture().map_err(SnapshotFileError::Source)?;
    let (index, term) = view.position();
    let conf_state = view.conf_state();
    let path = snapshot_path(dir, term, index);
    let part = part_path(&path);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotFileError::Io { path, source }
    };
    let file = std::fs::File::create(&part).map_err(io_err(&part))?;
    let mut out = std::io::BufWriter::new(file);
    view.write_to(&mut out).map_err(SnapshotFileError::Source)?;
    out.into_inner()
        .map_err(|e| io_err(&part)(e.into_error()))?
        .sync_all()
        .map_err(io_err(&part))?;
    std::fs::rename(&part, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(Generated {
        index,
        term,
        conf_state,
    })
}

/// Removes the snapshot files in `dir` taken before raft index `index`. Newer ones stay: a
/// snapshot received from the leader may be waiting for its install while this member generates
/// one for peers, or the other way round.
pub fn remove_files_before(dir: &Path, index: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if file_index(&path).is_some_and(|i| i < index) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The raft index in a snapshot file's name (see [`snapshot_path`]); `None` for other files.
fn file_index(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?.strip_suffix(".snap")?;
    let (term, index) = name.split_once('-')?;
    u64::from_str_radix(term, 16).ok()?;
    u64::from_str_radix(index, 16).ok()
}

/// Makes renames inside `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_by_position() {
        let p = snapshot_path(Path::new("/d"), 2, 10);
        assert_eq!(p, Path::new("/d/0000000000000002-000000000000000a.snap"));
        assert_eq!(
            part_path(&p),
            Path::new("/d/0000000000000002-000000000000000a.snap.part")
        );
    }

    /// A state machine whose applied state is a fixed byte string.
    struct Fixed {
        index: u64,
        term: u64,
        bytes: &'static [u8],
    }

    impl SnapshotSource for Fixed {
        fn capture(&self) -> Result<Box<dyn SnapshotView + '_>, SourceError> {
            Ok(Box::new(self))
        }
    }

    impl SnapshotView for &Fixed {
        fn position(&self) -> (u64, u64) {
            (self.index, self.term)
        }

        fn conf_state(&self) -> ConfState {
            ConfState::from((vec![1, 2], vec![3]))
        }

        fn write_to(&self, out: &mut dyn Write) -> Result<(), SourceError> {
            out.write_all(self.bytes)?;
            Ok(())
        }
    }

    #[test]
    fn generates_a_file_named_by_the_source_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(SNAP_DIR)).unwrap();
        std::fs::write(dir.path().join(SNAP_DIR).join("stale.snap.part"), b"x").unwrap();
        let source = Arc::new(Fixed {
            index: 10,
            term: 2,
            bytes: b"applied state",
        });
        let files = SnapshotFiles::open(dir.path(), source).unwrap();
        assert!(!files.dir().join("stale.snap.part").exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let snapshot = loop {
            if let Some(snapshot) = files.ready_or_start(5, 3) {
                break snapshot;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot generated"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let meta = snapshot.get_metadata();
        assert_eq!((meta.index, meta.term), (10, 2));
        assert_eq!(meta.get_conf_state().voters, vec![1, 2]);
        assert_eq!(meta.get_conf_state().learners, vec![3]);
        let file = snapshot_path(files.dir(), 2, 10);
        assert_eq!(std::fs::read(&file).unwrap(), b"applied state");
        assert!(!part_path(&file).exists());
        // A member the snapshot's configuration does not hold gets a new one, not this one.
        assert!(files.ready_or_start(5, 4).is_none());
    }
}
