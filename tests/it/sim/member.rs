//! One simulated member: its data directory, the production raft and apply objects built over
//! it exactly as `server::run` and `node::start` build them (restart recovery, membership,
//! snapshot files included), and the Ready sink that decides what a crash loses.
//!
//! Crash model. Every member runs its own RocksDB with fsync off, opened with a write observer
//! (`Engine::open_observed`) that keeps a second database, the *image*: what a power loss would
//! leave. Every write the member makes (raft's log and hard state, the applier's state, snapshot
//! installs, configuration) is queued in WAL order, and a synced write replays the queue into
//! the image (one WAL: a sync makes every earlier write durable). A crash drops every object
//! holding the live database and replaces its files with the image's: unsynced raft writes
//! *and* unsynced applied state are lost, and the restarted member re-applies the log from its
//! durable consistent index. Snapshot files are written, synced and renamed by production code
//! and survive. A crash may also land inside a Ready, after any of its sink calls: the rest of
//! that Ready's writes, messages, applies and snapshot install never happen.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use oxetcd::alarm::Alarms;
use oxetcd::apply::{Applier, MembershipSink};
use oxetcd::lease::Lessor;
use oxetcd::membership::Membership;
use oxetcd::mvcc::MvccStore;
use oxetcd::proto::etcdserverpb::Member as MemberRecord;
use oxetcd::raft::snapshots::{SnapshotFiles, snapshot_path};
use oxetcd::raft::{RaftLogStore, ReadySink};
use oxetcd::storage::{Batch, Engine, WriteObserver};
use oxetcd::watch::WatchHub;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, Snapshot};
use raft::{RawNode, ReadState, StateRole};

use super::check::entry_digest;

/// raft's election timeout in ticks; heartbeats go out every tick (as `node::start` configures).
pub const ELECTION_TICKS: usize = 10;
/// The simulation's `--snapshot-count` and the entries kept behind the applied index when the
/// log is truncated (production: 10 000 and 5 000), small so that a member down or cut off for
/// a few dozen entries needs a snapshot to catch up. The rule is `node`'s raft loop's.
pub const SNAPSHOT_COUNT: u64 = 16;
pub const LOG_CATCHUP_ENTRIES: u64 = 8;
/// The cluster ID every simulated member stores.
const CLUSTER_ID: u64 = 0x5151;

/// Faults planted in the harness (its sink or restart path) to prove the checks can fire; never
/// in production code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Unsynced raft writes (the commit-index-only hard state) are never written.
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
    /// The member list as this member applied it (the applier's `MembershipSink`).
    pub membership: Arc<RwLock<Membership>>,
}

/// What a power loss would leave of a member's database (see the module comment).
struct Image {
    engine: Option<Arc<Engine>>,
    /// Encoded batches written since the last synced write, in WAL order.
    unsynced: Vec<Vec<u8>>,
}

impl Image {
    fn observe(&mut self, bytes: &[u8], sync: bool) {
        self.unsynced.push(bytes.to_vec());
        if sync {
            let engine = self
                .engine
                .as_ref()
                .expect("the image is open while the member runs");
            for bytes in self.unsynced.drain(..) {
                engine
                    .write(Batch::from_bytes(&bytes), false)
                    .expect("the image's RocksDB accepts writes");
            }
        }
    }
}

/// How a member came to be: one of the first members, or added later and joining.
#[derive(Clone)]
enum Origin {
    Initial(Vec<u64>),
    /// Started after `member add`, with the member list fetched from the cluster.
    Joining(Membership),
}

pub struct Member {
    pub id: u64,
    pub dir: PathBuf,
    origin: Origin,
    image: Arc<Mutex<Image>>,
    pub live: Option<Live>,
    /// Started at least once (members added later start when their addition is applied).
    pub started: bool,
    /// Out of the cluster for good: it applied its own removal, or a peer told it so.
    pub removed: bool,
    /// An added member seen as a voter (promoted from learner).
    pub promoted: bool,
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
    /// Below the log's start (truncated, or replaced by a snapshot) it holds the committed
    /// record, which is what those entries were.
    pub mirror: Vec<(u64, u64)>,
    /// First index of the persisted log when the mirror was last synced.
    pub mirror_first: u64,
    /// Highest index of this member's log checked against the committed record.
    pub committed_checked: u64,
    /// Applied index at which the state-machine fingerprint was last compared.
    pub fingerprint_at: Option<u64>,
    /// Revision up to which acknowledged puts were checked on this member.
    pub acked_checked_rev: i64,
    /// `(index, term, digest)` of each entry handed to the applier since the last check.
    pub applied: Vec<(u64, u64, u64)>,
    /// Node IDs whose removal this member applied since the harness last looked.
    pub removals_applied: Vec<u64>,
    /// Something production code would have stopped the member for (a fatal error).
    pub fault: Option<String>,
    pub stats: MemberStats,
}

/// What happened to one member, summed into the run's `Summary`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemberStats {
    /// Snapshots from the leader installed while running.
    pub snapshots_installed: u64,
    /// Snapshots installed when starting (received, or half-installed, before a crash).
    pub snapshots_installed_at_start: u64,
    /// Crashes that lost unsynced writes.
    pub crashes_losing_writes: u64,
    /// Applied entries lost by crashes (the applied index went back by this much in total).
    pub applied_entries_lost: u64,
    /// Raft log truncations after `SNAPSHOT_COUNT` applied entries.
    pub log_truncations: u64,
}

impl Member {
    /// A member of the initial cluster `voters`.
    pub fn new(id: u64, dir: PathBuf, voters: &[u64]) -> Member {
        Member::with_origin(id, dir, Origin::Initial(voters.to_vec()))
    }

    /// A member to be added later (its slot exists from the start; it has no data yet).
    pub fn spare(id: u64, dir: PathBuf) -> Member {
        Member::with_origin(id, dir, Origin::Initial(Vec::new()))
    }

    fn with_origin(id: u64, dir: PathBuf, origin: Origin) -> Member {
        Member {
            id,
            dir,
            origin,
            image: Arc::new(Mutex::new(Image {
                engine: None,
                unsynced: Vec::new(),
            })),
            live: None,
            started: false,
            removed: false,
            promoted: false,
            restarts: 0,
            crash_in_ready: None,
            skip_ticks: 0,
            role: (0, StateRole::Follower),
            write_hint: u64::MAX,
            mirror: vec![super::check::BOOTSTRAP_ENTRY],
            mirror_first: super::check::BOOTSTRAP_INDEX + 1,
            committed_checked: 0,
            fingerprint_at: None,
            acked_checked_rev: 0,
            applied: Vec::new(),
            removals_applied: Vec::new(),
            fault: None,
            stats: MemberStats::default(),
        }
    }

    fn db_dir(&self) -> PathBuf {
        self.dir.join("db")
    }

    fn image_dir(&self) -> PathBuf {
        self.dir.join("image")
    }

    /// Where this member keeps raft snapshot files (the server's `<data-dir>/snap`).
    pub fn snap_dir(&self) -> PathBuf {
        self.db_dir().join(oxetcd::raft::snapshots::SNAP_DIR)
    }

    /// A member in the cluster: started and not removed.
    pub fn in_cluster(&self) -> bool {
        self.started && !self.removed
    }

    /// Starts a member added to the cluster, with the member list fetched from it.
    pub fn join(&mut self, membership: Membership, sabotage: Sabotage) -> Result<(), String> {
        self.origin = Origin::Joining(Membership {
            member_id: self.id,
            ..membership
        });
        self.start(sabotage)
    }

    /// Builds the member from its data directory (fresh or after a crash).
    pub fn start(&mut self, sabotage: Sabotage) -> Result<(), String> {
        assert!(self.live.is_none(), "member {} is already running", self.id);
        assert!(!self.removed, "member {} was removed", self.id);
        if sabotage == Sabotage::WipeOnRestart && self.dir.exists() {
            self.image.lock().expect("image lock").engine = None;
            std::fs::remove_dir_all(&self.dir).map_err(|e| format!("wiping: {e}"))?;
        }
        let mut image = self.image.lock().expect("image lock");
        if image.engine.is_none() {
            let engine = Engine::open(&self.image_dir(), false)
                .map_err(|e| format!("opening the image: {e}"))?;
            image.engine = Some(engine);
        }
        drop(image);
        let image = self.image.clone();
        let observer: WriteObserver = Arc::new(move |bytes: &[u8], sync: bool| {
            image.lock().expect("image lock").observe(bytes, sync)
        });
        let (live, installed) = open(self.id, &self.db_dir(), &self.origin, observer)?;
        self.live = Some(live);
        self.started = true;
        self.stats.snapshots_installed_at_start += u64::from(installed);
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

    /// Drops the member and whatever it had not yet made durable: its database goes back to
    /// the image.
    pub fn crash(&mut self) {
        let applied_before = self.live.as_ref().map(|l| l.applier.applied_index());
        self.live = None;
        self.crash_in_ready = None;
        let Some(applied_before) = applied_before else {
            return;
        };
        let mut image = self.image.lock().expect("image lock");
        if !image.unsynced.is_empty() {
            self.stats.crashes_losing_writes += 1;
        }
        image.unsynced.clear();
        image.engine = None;
        restore_image(&self.image_dir(), &self.db_dir())
            .expect("restoring a crashed member's image");
        let engine =
            Engine::open(&self.image_dir(), false).expect("reopening a crashed member's image");
        let durable_applied = oxetcd::consistent_index::read_index(&engine)
            .expect("reading the durable applied index");
        self.stats.applied_entries_lost += applied_before.saturating_sub(durable_applied);
        image.engine = Some(engine);
    }

    /// Takes the member out for good (after its removal was applied).
    pub fn remove(&mut self) {
        self.crash();
        self.removed = true;
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Processes Readies until raft has none (bounded); messages go to `outbox`. A crash planned
    /// inside a Ready happens here. After each Ready, as the raft thread does: configuration
    /// changes the applier applied go to raft (and a member that applied its own removal
    /// stops), raft learns the applied index, and the log is truncated once it is long enough.
    pub fn process_ready(&mut self, sabotage: Sabotage, outbox: &mut Vec<Message>) {
        const READIES_PER_STEP_MAX: usize = 16;
        let snap_dir = self.snap_dir();
        for _ in 0..READIES_PER_STEP_MAX {
            let Some(live) = self.live.as_mut() else {
                return;
            };
            if let Some(first) = live.raw.raft.raft_log.unstable.entries.first() {
                self.write_hint = self.write_hint.min(first.index);
            }
            if live.raw.raft.raft_log.unstable.snapshot.is_some() {
                self.write_hint = 1;
            }
            let mut sink = SimSink {
                engine: &live.engine,
                applier: &mut live.applier,
                outbox: &mut *outbox,
                applied: &mut self.applied,
                crash_in: &mut self.crash_in_ready,
                fault: &mut self.fault,
                stats: &mut self.stats,
                snap_dir: &snap_dir,
                sabotage,
                member_id: self.id,
            };
            let handled = oxetcd::raft::handle_ready(&mut live.raw, &mut sink);
            if self.crash_in_ready == Some(0) || self.fault.is_some() {
                self.crash();
                return;
            }
            if self.apply_conf_changes() {
                self.remove();
                return;
            }
            let live = self.live.as_mut().expect("still running");
            let applied = live.applier.applied_index();
            if applied > live.raw.raft.raft_log.applied {
                live.raw.advance_apply_to(applied);
                let store = live.raw.store();
                if applied > store.first() + SNAPSHOT_COUNT + LOG_CATCHUP_ENTRIES {
                    let mut batch = Batch::new();
                    if let Err(e) = live
                        .raw
                        .mut_store()
                        .truncate_to(&mut batch, applied - LOG_CATCHUP_ENTRIES)
                    {
                        self.fault = Some(format!("member {} truncating its log: {e}", self.id));
                        return;
                    }
                    live.engine
                        .write(batch, false)
                        .expect("a simulated member's RocksDB accepts writes");
                    self.stats.log_truncations += 1;
                }
            }
            if !handled {
                break;
            }
        }
    }

    /// Hands raft the configuration changes the applier applied and persists the result, as
    /// the raft thread does. Returns whether this member applied its own removal.
    fn apply_conf_changes(&mut self) -> bool {
        let live = self.live.as_mut().expect("only a running member applies");
        let changes: Vec<ConfChange> = live.applier.take_conf_changes();
        if changes.is_empty() {
            return false;
        }
        let mut batch = Batch::new();
        let mut removed = false;
        for cc in changes {
            if cc.get_change_type() == ConfChangeType::RemoveNode {
                self.removals_applied.push(cc.node_id);
                removed |= cc.node_id == self.id;
            }
            match live.raw.apply_conf_change(&cc) {
                Ok(cs) => live.raw.mut_store().set_conf_state(&mut batch, cs),
                Err(e) => {
                    self.fault = Some(format!(
                        "member {}: raft refused the applied configuration change {cc:?}: {e}",
                        self.id
                    ));
                }
            }
        }
        live.engine
            .write(batch, true)
            .expect("a simulated member's RocksDB accepts writes");
        removed
    }
}

/// Replaces the database files in `db` (keeping its snapshot directory) with the image's.
fn restore_image(image: &Path, db: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(db)? {
        let entry = entry?;
        if entry.file_name() == oxetcd::raft::snapshots::SNAP_DIR {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    for entry in std::fs::read_dir(image)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), db.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The member record the simulation stores for member `id`.
pub fn member_record(id: u64) -> MemberRecord {
    MemberRecord {
        id,
        name: format!("m{id}"),
        peer_ur_ls: vec![format!("http://m{id}.sim:2380")],
        client_ur_ls: Vec::new(),
        is_learner: false,
    }
}

/// Opens the member in `dir` as `server::run` does: finish an interrupted snapshot install,
/// install a received one, load or store the identity, build the state machine, open the raft
/// log and reconcile it with the applied state. Returns whether a snapshot was installed.
fn open(
    id: u64,
    dir: &Path,
    origin: &Origin,
    observer: WriteObserver,
) -> Result<(Live, bool), String> {
    // fsync off: see the module comment.
    let engine = Engine::open_observed(dir, false, Some(observer))
        .map_err(|e| format!("opening RocksDB: {e}"))?;
    let applied_before = oxetcd::consistent_index::read_index(&engine)
        .map_err(|e| format!("reading the applied index: {e}"))?;
    oxetcd::apply::install::finish_interrupted_install(&engine)
        .map_err(|e| format!("member {id} finishing a snapshot install: {e}"))?;
    oxetcd::server::install_pending_snapshot(&engine, dir)
        .map_err(|e| format!("member {id} installing a received snapshot: {e}"))?;
    let installed = oxetcd::consistent_index::read_index(&engine)
        .map_err(|e| format!("reading the applied index: {e}"))?
        != applied_before;

    let stored = Membership::load(&engine).map_err(|e| format!("loading the identity: {e}"))?;
    let fresh = stored.is_none();
    let (membership, joining) = match (stored, origin) {
        (Some(m), _) => (m, false),
        (None, Origin::Initial(voters)) => (
            Membership {
                cluster_id: CLUSTER_ID,
                member_id: id,
                members: voters.iter().map(|&v| member_record(v)).collect(),
            },
            false,
        ),
        (None, Origin::Joining(m)) => (m.clone(), true),
    };
    if fresh {
        let mut batch = Batch::new();
        membership.save(&engine, &mut batch);
        engine
            .write(batch, true)
            .map_err(|e| format!("storing the identity: {e}"))?;
    }

    let alarms = Arc::new(Alarms::open(&engine).map_err(|e| format!("opening alarms: {e}"))?);
    let mvcc = Arc::new(MvccStore::open(engine.clone()).map_err(|e| format!("opening mvcc: {e}"))?);
    let attached = mvcc
        .live_leases()
        .map_err(|e| format!("listing leases: {e}"))?;
    // The lessor reads the wall clock only for lease expiry; the simulation grants no leases.
    let lessor = Lessor::open(engine.clone(), 1, attached, Instant::now())
        .map_err(|e| format!("opening the lessor: {e}"))?;
    let watch = WatchHub::new(mvcc.clone());
    let initial_voters = if joining {
        Vec::new()
    } else {
        membership.voters()
    };
    let shared_membership = Arc::new(RwLock::new(membership.clone()));
    let applier = Applier::new(
        engine.clone(),
        mvcc.clone(),
        Arc::new(Mutex::new(lessor)),
        watch,
        alarms,
    )
    .map_err(|e| format!("opening the applier: {e}"))?
    .with_membership(MembershipSink {
        membership: shared_membership.clone(),
        on_change: Box::new(|_| {}),
    });
    let applied = applier.applied_index();
    let mut store = RaftLogStore::open(engine.clone(), &initial_voters)
        .map_err(|e| format!("opening the log: {e}"))?;
    // Checked before reconciling: the reconciliation would take such an applied index for an
    // installed snapshot and move the log up to it, dropping entries this member acknowledged.
    let commit = store.hard_state().commit;
    if applied > commit {
        return Err(format!(
            "member {id} restarted with applied index {applied} ahead of its persisted commit \
             index {commit}: a commit-index write was lost while the applied state survived"
        ));
    }
    oxetcd::server::reconcile_raft_with_state(&engine, &mut store, &membership, applied)
        .map_err(|e| format!("member {id} reconciling raft with the applied state: {e}"))?;
    let source = Arc::new(oxetcd::snapshot::source::StateMachineSnapshots::new(
        engine.clone(),
    ));
    let files = SnapshotFiles::open(dir, source)
        .map_err(|e| format!("opening the snapshot directory: {e}"))?
        .generating_inline();
    let store = store.with_snapshots(files);
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
    Ok((
        Live {
            raw,
            applier,
            mvcc,
            engine,
            membership: shared_membership,
        },
        installed,
    ))
}

/// The harness's side of a Ready (see the module comment for what a crash loses).
struct SimSink<'a> {
    engine: &'a Engine,
    applier: &'a mut Applier,
    outbox: &'a mut Vec<Message>,
    applied: &'a mut Vec<(u64, u64, u64)>,
    crash_in: &'a mut Option<u32>,
    fault: &'a mut Option<String>,
    stats: &'a mut MemberStats,
    snap_dir: &'a Path,
    sabotage: Sabotage,
    member_id: u64,
}

impl SimSink<'_> {
    /// Whether the member is still up for this sink call (counts down a planned crash).
    fn alive(&mut self) -> bool {
        if self.fault.is_some() {
            return false;
        }
        match self.crash_in {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
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
        if !self.alive() || (!sync && self.sabotage == Sabotage::SkipUnsyncedWrites) {
            return;
        }
        self.engine
            .write(batch, sync)
            .expect("a simulated member's RocksDB accepts writes");
    }

    fn apply(&mut self, mut entries: Vec<Entry>) {
        if !self.alive() {
            return;
        }
        if self.sabotage == Sabotage::SkipApplyOnMember1 && self.member_id == 1 {
            entries.retain(|e| e.index % 7 != 0);
        }
        self.applied
            .extend(entries.iter().map(|e| (e.index, e.term, entry_digest(e))));
        self.applier.apply_entries(entries);
    }

    fn read_states(&mut self, _states: Vec<ReadState>) {}

    fn soft_state(&mut self, _leader_id: u64, _role: StateRole) {}

    /// Installs at once what the apply thread would install next (it runs nothing else
    /// meanwhile), then removes older files as the apply thread does.
    fn snapshot(&mut self, snapshot: &Snapshot) {
        if !self.alive() {
            return;
        }
        let meta = snapshot.get_metadata();
        let file = snapshot_path(self.snap_dir, meta.term, meta.index);
        // A failed install is fatal in production (`crate::fatal` exits the process): check
        // first, so the run fails with its seed instead.
        match oxetcd::snapshot::format::verify_file(&file) {
            Ok(pos) if (pos.index, pos.term) == (meta.index, meta.term) => {}
            Ok(pos) => {
                *self.fault = Some(format!(
                    "member {}: snapshot file {} holds index {} term {}, raft installs {} {}",
                    self.member_id,
                    file.display(),
                    pos.index,
                    pos.term,
                    meta.index,
                    meta.term
                ));
                return;
            }
            Err(e) => {
                *self.fault = Some(format!(
                    "member {}: snapshot to install at index {} is unreadable: {e}",
                    self.member_id, meta.index
                ));
                return;
            }
        }
        self.applier
            .install_snapshot(&file, meta.index, meta.term, &mut || {});
        oxetcd::raft::snapshots::remove_files_before(self.snap_dir, meta.index);
        self.stats.snapshots_installed += 1;
    }
}
