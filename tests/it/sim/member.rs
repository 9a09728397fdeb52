//! One simulated member: its data directory, the production raft and apply objects built over
//! it exactly as `server::run` and `node::start` build them, and the Ready sink that decides
//! what a crash loses.
//!
//! Crash model. Every member runs its own RocksDB with fsync off: an in-process "crash" (dropping
//! every object that holds the database) cannot lose anything RocksDB accepted, so durability is
//! modelled above it. The sink keeps `write(batch, sync = false)` batches in memory and hands them
//! to RocksDB only when a later write is synced or the applier is about to write (RocksDB has one
//! WAL, and a crash loses a suffix of it, never a middle). A crash drops whatever is still held.
//! Limitation: the applier writes its own unsynced batches straight to RocksDB, so a crash never
//! loses applied state — real crashes can, and then replay more of the log on restart.
//! A crash may also land inside a Ready, after any of its sink calls: the rest of that Ready's
//! writes, messages and applies never happen.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use oxetcd::alarm::Alarms;
use oxetcd::apply::Applier;
use oxetcd::lease::Lessor;
use oxetcd::mvcc::MvccStore;
use oxetcd::raft::{RaftLogStore, ReadySink};
use oxetcd::storage::{Batch, Engine};
use oxetcd::watch::WatchHub;
use raft::eraftpb::{Entry, Message, Snapshot};
use raft::{RawNode, ReadState, StateRole};

use super::check::entry_digest;

/// raft's election timeout in ticks; heartbeats go out every tick (as `node::start` configures).
pub const ELECTION_TICKS: usize = 10;

/// Faults planted in the harness (its sink or restart path) to prove the checks can fire; never
/// in production code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Unsynced writes (the commit-index-only hard state) are never written.
    SkipUnsyncedWrites,
    /// A restarted member comes back with an empty data directory.
    WipeOnRestart,
    /// Member 1 skips every 7th committed entry instead of applying it.
    SkipApplyOnMember1,
}

/// A running member: everything that holds its RocksDB. Dropping it is the crash.
pub struct Live {
    pub raw: RawNode<RaftLogStore>,
    pub applier: Applier,
    pub mvcc: Arc<MvccStore>,
    pub engine: Arc<Engine>,
    /// Writes a crash would lose (see the module comment).
    pub unsynced: Vec<Batch>,
}

pub struct Member {
    pub id: u64,
    pub dir: PathBuf,
    pub live: Option<Live>,
    pub restarts: u64,
    /// Sink calls left before this member crashes inside a Ready (`None`: no crash planned).
    pub crash_in_ready: Option<u32>,
    /// Ticks this member ignores: after each role or term change the harness draws how long its
    /// election timer is stretched (see `Sim::observe`).
    pub skip_ticks: u64,
    pub role: (u64, StateRole),
    /// Lowest log index a Ready may have rewritten since the last check (`u64::MAX`: none).
    pub write_hint: u64,
    /// The checker's copy of this member's persisted log: `(term, digest)` of index i at [i-1].
    pub mirror: Vec<(u64, u64)>,
    /// Highest index of this member's log checked against the committed record.
    pub committed_checked: u64,
    /// Applied index at which the state-machine fingerprint was last compared.
    pub fingerprint_at: Option<u64>,
    /// Revision up to which acknowledged puts were checked on this member.
    pub acked_checked_rev: i64,
    /// `(index, term, digest)` of each entry handed to the applier since the last check.
    pub applied: Vec<(u64, u64, u64)>,
    pub snapshots_offered: u64,
}

impl Member {
    pub fn new(id: u64, dir: PathBuf) -> Member {
        Member {
            id,
            dir,
            live: None,
            restarts: 0,
            crash_in_ready: None,
            skip_ticks: 0,
            role: (0, StateRole::Follower),
            write_hint: u64::MAX,
            mirror: vec![super::check::BOOTSTRAP_ENTRY],
            committed_checked: 0,
            fingerprint_at: None,
            acked_checked_rev: 0,
            applied: Vec::new(),
            snapshots_offered: 0,
        }
    }

    /// Builds the member from its data directory (fresh or after a crash).
    pub fn start(&mut self, voters: &[u64], sabotage: Sabotage) -> Result<(), String> {
        assert!(self.live.is_none(), "member {} is already running", self.id);
        if sabotage == Sabotage::WipeOnRestart && self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| format!("wiping: {e}"))?;
        }
        self.live = Some(open(self.id, &self.dir, voters)?);
        self.crash_in_ready = None;
        self.skip_ticks = 0;
        self.role = (0, StateRole::Follower);
        // Everything the checker knows about this member is re-derived from disk.
        self.write_hint = 1;
        self.committed_checked = 0;
        self.fingerprint_at = None;
        self.acked_checked_rev = 0;
        self.applied.clear();
        Ok(())
    }

    /// Drops the member and whatever it had not yet made durable.
    pub fn crash(&mut self) {
        self.live = None;
        self.crash_in_ready = None;
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Processes Readies until raft has none (bounded); messages go to `outbox`. A crash planned
    /// inside a Ready happens here.
    pub fn process_ready(&mut self, sabotage: Sabotage, outbox: &mut Vec<Message>) {
        const READIES_PER_STEP_MAX: usize = 16;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        for _ in 0..READIES_PER_STEP_MAX {
            if let Some(first) = live.raw.raft.raft_log.unstable.entries.first() {
                self.write_hint = self.write_hint.min(first.index);
            }
            let mut sink = SimSink {
                engine: &live.engine,
                unsynced: &mut live.unsynced,
                applier: &mut live.applier,
                outbox: &mut *outbox,
                applied: &mut self.applied,
                snapshots_offered: &mut self.snapshots_offered,
                crash_in: &mut self.crash_in_ready,
                sabotage,
                member_id: self.id,
            };
            let handled = oxetcd::raft::handle_ready(&mut live.raw, &mut sink);
            if self.crash_in_ready == Some(0) {
                self.crash();
                return;
            }
            let applied = live.applier.applied_index();
            if applied > live.raw.raft.raft_log.applied {
                live.raw.advance_apply_to(applied);
            }
            if !handled {
                break;
            }
        }
    }
}

fn open(id: u64, dir: &Path, voters: &[u64]) -> Result<Live, String> {
    // fsync off: see the module comment.
    let engine = Engine::open(dir, false).map_err(|e| format!("opening RocksDB: {e}"))?;
    let alarms = Arc::new(Alarms::open(&engine).map_err(|e| format!("opening alarms: {e}"))?);
    let mvcc = Arc::new(MvccStore::open(engine.clone()).map_err(|e| format!("opening mvcc: {e}"))?);
    let attached = mvcc
        .live_leases()
        .map_err(|e| format!("listing leases: {e}"))?;
    // The lessor reads the wall clock only for lease expiry; the simulation grants no leases.
    let lessor = Lessor::open(engine.clone(), 1, attached, Instant::now())
        .map_err(|e| format!("opening the lessor: {e}"))?;
    let watch = WatchHub::new(mvcc.clone());
    let applier = Applier::new(
        engine.clone(),
        mvcc.clone(),
        Arc::new(Mutex::new(lessor)),
        watch,
        alarms,
    )
    .map_err(|e| format!("opening the applier: {e}"))?;
    let store =
        RaftLogStore::open(engine.clone(), voters).map_err(|e| format!("opening the log: {e}"))?;
    let applied = applier.applied_index();
    let commit = store.hard_state().commit;
    if applied > commit {
        return Err(format!(
            "member {id} restarted with applied index {applied} ahead of its persisted commit \
             index {commit}: a commit-index write was lost while the applied state survived"
        ));
    }
    // As node::start configures raft, except the election timeout range: raft-rs draws the
    // timeout from rand::thread_rng, which cannot be seeded, so the range is pinned to one value
    // and the harness stretches timers by seeded tick skips instead (Sim::observe).
    let cfg = raft::Config {
        min_election_tick: ELECTION_TICKS,
        max_election_tick: ELECTION_TICKS + 1,
        ..oxetcd::node::raft_config(id, ELECTION_TICKS, applied)
    };
    cfg.validate().map_err(|e| format!("raft config: {e}"))?;
    let raw = RawNode::new(&cfg, store, &oxetcd::raft::logger::logger())
        .map_err(|e| format!("starting raft: {e}"))?;
    Ok(Live {
        raw,
        applier,
        mvcc,
        engine,
        unsynced: Vec::new(),
    })
}

/// The harness's side of a Ready (see the module comment for what a crash loses).
struct SimSink<'a> {
    engine: &'a Engine,
    unsynced: &'a mut Vec<Batch>,
    applier: &'a mut Applier,
    outbox: &'a mut Vec<Message>,
    applied: &'a mut Vec<(u64, u64, u64)>,
    snapshots_offered: &'a mut u64,
    crash_in: &'a mut Option<u32>,
    sabotage: Sabotage,
    member_id: u64,
}

impl SimSink<'_> {
    /// Whether the member is still up for this sink call (counts down a planned crash).
    fn alive(&mut self) -> bool {
        match self.crash_in {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }

    fn flush_unsynced(&mut self) {
        for batch in self.unsynced.drain(..) {
            self.engine
                .write(batch, false)
                .expect("a simulated member's RocksDB accepts writes");
        }
    }
}

impl ReadySink for SimSink<'_> {
    fn send(&mut self, messages: Vec<Message>) {
        if self.alive() {
            self.outbox.extend(messages);
        }
    }

    fn write(&mut self, batch: Batch, sync: bool) {
        if !self.alive() {
            return;
        }
        match (sync, self.sabotage) {
            (false, Sabotage::SkipUnsyncedWrites) => {}
            (false, _) => self.unsynced.push(batch),
            (true, _) => {
                self.flush_unsynced();
                self.engine
                    .write(batch, true)
                    .expect("a simulated member's RocksDB accepts writes");
            }
        }
    }

    fn apply(&mut self, mut entries: Vec<Entry>) {
        if !self.alive() {
            return;
        }
        // The applier's writes land in the WAL after everything written before them.
        self.flush_unsynced();
        if self.sabotage == Sabotage::SkipApplyOnMember1 && self.member_id == 1 {
            entries.retain(|e| e.index % 7 != 0);
        }
        self.applied
            .extend(entries.iter().map(|e| (e.index, e.term, entry_digest(e))));
        self.applier.apply_entries(entries);
    }

    fn read_states(&mut self, _states: Vec<ReadState>) {}

    fn soft_state(&mut self, _leader_id: u64, _role: StateRole) {}

    fn snapshot(&mut self, _snapshot: &Snapshot) {
        // The log is never truncated here, so raft must never need one.
        *self.snapshots_offered += 1;
    }
}
