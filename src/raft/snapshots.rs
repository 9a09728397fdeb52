//! Raft snapshots on disk, under `<data-dir>/snap`: the leader writes a state-machine snapshot
//! (the [`crate::snapshot`] format) on a background thread when raft asks for one, and a
//! follower stores the snapshot it receives there until it is installed.
//!
//! A file is named after the raft position it was taken at, `<term>-<index>.snap` in 16 hex
//! digits each, so both ends derive it from the snapshot's metadata and nothing else travels in
//! the raft message. Files are written to a `.part` name, synced and renamed, so a complete name
//! always means a complete file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};

use crate::proto::etcdserverpb::Member;
use crate::snapshot::{SnapshotError, SnapshotPosition};
use crate::storage::{Cf, Engine, View};

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

/// The voters and learners recorded in a view's member list (the configuration raft had at the
/// view's applied index).
pub fn conf_state_of(view: &View<'_>) -> Result<ConfState, SnapshotError> {
    let members = match view.get(Cf::Meta, crate::membership::KEY_MEMBERS)? {
        Some(bytes) => crate::membership::decode_members(&bytes)
            .map_err(|e| SnapshotError::Corrupt(format!("member list: {e}")))?,
        None => Vec::new(),
    };
    Ok(conf_state_from(&members))
}

/// The raft configuration of a member list.
pub fn conf_state_from(members: &[Member]) -> ConfState {
    let voters: Vec<u64> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let learners: Vec<u64> = members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id)
        .collect();
    ConfState::from((voters, learners))
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
    engine: Arc<Engine>,
    state: Arc<Mutex<GenState>>,
    /// Owns the generating thread (a set of its own unless the server hands one in).
    threads: crate::tasks::TaskSet,
}

impl SnapshotFiles {
    /// Creates the snapshot directory if needed and removes unfinished files.
    pub fn open(data_dir: &Path, engine: Arc<Engine>) -> std::io::Result<SnapshotFiles> {
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
            engine,
            state: Arc::new(Mutex::new(GenState::Idle)),
            threads: crate::tasks::TaskSet::new("raft-snapshots"),
        })
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

    /// The newest generated snapshot if it is at `min_index` or later; otherwise starts
    /// generating one (unless that is under way) and returns `None`: raft asks again later.
    pub fn ready_or_start(&self, min_index: u64) -> Option<Snapshot> {
        let mut state = self.lock();
        match &*state {
            GenState::Ready(g) if g.index >= min_index => {
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
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        let shared = self.state.clone();
        let spawned = self.threads.spawn_thread("snapshot", move || {
            let started = std::time::Instant::now();
            let outcome = generate(&engine, &dir);
            let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(g) => {
                    tracing::info!(
                        index = g.index,
                        term = g.term,
                        took = ?started.elapsed(),
                        "saved a snapshot for peers"
                    );
                    remove_other_files(&dir, &snapshot_path(&dir, g.term, g.index));
                    *state = GenState::Ready(g);
                }
                Err(e) => {
                    tracing::error!(error = %e, "saving a snapshot for peers failed");
                    *state = GenState::Idle;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the snapshot thread");
            *self.lock() = GenState::Idle;
        }
        None
    }
}

/// Writes a snapshot of the engine's current applied state to `dir`.
fn generate(engine: &Engine, dir: &Path) -> Result<Generated, SnapshotError> {
    let view = engine.view();
    let pos: SnapshotPosition = crate::snapshot::position(&view)?;
    let conf_state = conf_state_of(&view)?;
    let path = snapshot_path(dir, pos.term, pos.index);
    let part = part_path(&path);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let file = std::fs::File::create(&part).map_err(io_err(&part))?;
    let mut out = std::io::BufWriter::new(file);
    crate::snapshot::write_snapshot(&view, &mut out)?;
    out.into_inner()
        .map_err(|e| SnapshotError::Write(e.into_error()))?
        .sync_all()
        .map_err(io_err(&part))?;
    std::fs::rename(&part, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(Generated {
        index: pos.index,
        term: pos.term,
        conf_state,
    })
}

/// Removes every snapshot file in `dir` except `keep`.
pub fn remove_other_files(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && path.extension().is_some_and(|e| e == "snap") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Makes renames inside `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Encodes a member list for tests of this module.
#[cfg(test)]
fn encode_members(members: Vec<Member>) -> Vec<u8> {
    crate::membership::encode_members(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_state_splits_voters_and_learners() {
        let members = vec![
            Member {
                id: 1,
                ..Member::default()
            },
            Member {
                id: 2,
                is_learner: true,
                ..Member::default()
            },
        ];
        let cs = conf_state_from(&members);
        assert_eq!(cs.voters, vec![1]);
        assert_eq!(cs.learners, vec![2]);
        let decoded = crate::membership::decode_members(&encode_members(members)).expect("decodes");
        assert_eq!(decoded.len(), 2);
    }

    #[test]
    fn paths_are_named_by_position() {
        let p = snapshot_path(Path::new("/d"), 2, 10);
        assert_eq!(p, Path::new("/d/0000000000000002-000000000000000a.snap"));
        assert_eq!(
            part_path(&p),
            Path::new("/d/0000000000000002-000000000000000a.snap.part")
        );
    }
}
