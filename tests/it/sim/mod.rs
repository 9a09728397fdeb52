//! A deterministic in-process cluster: several members built from the production raft and apply
//! code (`RaftLogStore`, `handle_ready`, `Applier`, snapshot files and installs, the restart
//! recovery of `server`, RocksDB per member), driven step by step in one thread from one seed,
//! over a simulated network with drops, delays, duplicates and partitions, with crashes that lose
//! unsynced writes (raft's and the applier's). Members truncate their logs after a few applied
//! entries, so a member left behind catches up from a snapshot; the schedule also changes the
//! membership through raft (add a learner, promote it, remove a voter). The invariants in `check`
//! run after every step.
//!
//! A run is a pure function of its configuration: the same seed replays the same schedule.

pub mod check;
pub mod member;
pub mod net;
pub mod rng;

use std::panic::AssertUnwindSafe;
use std::path::Path;

use std::sync::Arc;

use oxetcd::apply::{Reply, Response};
use oxetcd::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
use oxetcd::proto::oxetcdpb::{InternalRequest, MemberChange, internal_request::Request};
use oxetcd::raft::snapshots::{part_path, snapshot_path};
use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, MessageType};
use raft::{SnapshotStatus, StateRole};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use check::{Acked, History};
use member::{ELECTION_TICKS, Member, Sabotage};
use net::{Network, Packet, Weather};
use rng::Rng;

/// Ticks a proposal may wait for its outcome before the proposer gives up on it (the request
/// timeout of the simulation).
const PROPOSAL_TIMEOUT_TICKS: u64 = 100;
/// Distinct keys the proposals write to (overwrites and deletes exercise the MVCC history).
const KEYS: u64 = 48;
/// After the faults stop: steps allowed for the cluster to elect a leader and converge.
const SETTLE_STEPS_MAX: u64 = 4000;
/// Member IDs beyond the initial ones that the schedule may add (IDs are never reused).
const SPARE_MEMBERS: usize = 3;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub members: usize,
    pub seed: u64,
    pub steps: u64,
    pub sabotage: Sabotage,
    /// Print every step's action and the members' raft state to stderr.
    pub trace: bool,
}

/// Why a run failed, with what replays it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} step {}: {}", self.seed, self.step, self.what)
    }
}

/// What a successful run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub steps: u64,
    /// Steps after which some running member led.
    pub steps_led: u64,
    pub ticks: u64,
    pub leaders: usize,
    pub last_term: u64,
    pub proposed: u64,
    pub proposals_refused: u64,
    pub acked: usize,
    pub crashes: u64,
    pub crashes_in_ready: u64,
    pub partitions: u64,
    pub committed: u64,
    /// Digest of the whole committed log (equal for two runs of one seed).
    pub committed_digest: u64,
    /// Persisted log entries replaced by a new leader's.
    pub overwritten: u64,
    pub revision: i64,
    pub net: net::NetStats,
    /// Snapshot messages that left a leader with their file.
    pub snapshots_sent: u64,
    /// Snapshots installed by running members, and when starting (received or half-installed
    /// before a crash).
    pub snapshots_installed: u64,
    pub snapshots_installed_at_start: u64,
    pub log_truncations: u64,
    /// Crashes that lost unsynced writes, and the applied entries they lost (re-applied from
    /// the log after the restart).
    pub crashes_losing_writes: u64,
    pub applied_entries_lost: u64,
    pub conf_changes_proposed: u64,
    pub learners_added: u64,
    pub promotions: u64,
    pub removals: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps ({} with a leader), {} ticks, {} leaders (last term {}), {} proposed ({} refused), {} acked, \
             {} crashes ({} inside a Ready), {} partitions, commit index {}, {} entries \
             overwritten, revision {}, \
             messages sent {} delivered {} dropped {} duplicated {} cut {}; \
             snapshots sent {} installed {} (+{} at start), {} log truncations; \
             {} crashes lost writes ({} applied entries); \
             membership: {} proposed, {} learners added, {} promoted, {} removed",
            self.steps,
            self.steps_led,
            self.ticks,
            self.leaders,
            self.last_term,
            self.proposed,
            self.proposals_refused,
            self.acked,
            self.crashes,
            self.crashes_in_ready,
            self.partitions,
            self.committed,
            self.overwritten,
            self.revision,
            self.net.sent,
            self.net.delivered,
            self.net.dropped,
            self.net.duplicated,
            self.net.cut,
            self.snapshots_sent,
            self.snapshots_installed,
            self.snapshots_installed_at_start,
            self.log_truncations,
            self.crashes_losing_writes,
            self.applied_entries_lost,
            self.conf_changes_proposed,
            self.learners_added,
            self.promotions,
            self.removals
        )
    }
}

/// Runs one seed: `steps` steps of faults and load, then healing until the cluster converges,
/// then the final checks. Any invariant violation (or panic) ends the run.
pub fn run(cfg: &SimConfig, dir: &Path) -> Result<Summary, Failure> {
    let mut sim = match Sim::new(cfg, dir) {
        Ok(sim) => sim,
        Err(what) => {
            return Err(Failure {
                seed: cfg.seed,
                step: 0,
                what,
            });
        }
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        for _ in 0..cfg.steps {
            sim.step()?;
        }
        sim.settle()
    }));
    let what = match outcome {
        Ok(Ok(())) => return Ok(sim.summary()),
        Ok(Err(what)) => what,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            format!("panic: {msg}")
        }
    };
    Err(Failure {
        seed: cfg.seed,
        step: sim.step,
        what,
    })
}

/// A client request waiting for its outcome on the member it was proposed to.
struct Proposal {
    member: usize,
    restarts: u64,
    id: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    rx: oneshot::Receiver<Reply>,
    deadline_tick: u64,
}

struct Sim {
    sabotage: Sabotage,
    trace: bool,
    rng: Rng,
    step: u64,
    now_tick: u64,
    /// Every member slot: the initial members, then the spare IDs the schedule may add.
    members: Vec<Member>,
    initial_members: usize,
    net: Network,
    history: History,
    proposals: Vec<Proposal>,
    next_request_id: u64,
    summary: Summary,
    /// The faults stopped (`settle`): nothing crashes any more.
    settling: bool,
}

impl Sim {
    fn new(cfg: &SimConfig, dir: &Path) -> Result<Sim, String> {
        let voters: Vec<u64> = (1..=cfg.members as u64).collect();
        let slots = cfg.members + SPARE_MEMBERS;
        let mut members: Vec<Member> = (1..=slots as u64)
            .map(|id| {
                let dir = dir.join(format!("member-{id}"));
                if voters.contains(&id) {
                    Member::new(id, dir, &voters)
                } else {
                    Member::spare(id, dir)
                }
            })
            .collect();
        for m in &mut members[..cfg.members] {
            m.start(cfg.sabotage)?;
        }
        Ok(Sim {
            sabotage: cfg.sabotage,
            trace: cfg.trace,
            rng: Rng::new(cfg.seed),
            step: 0,
            now_tick: 0,
            members,
            initial_members: cfg.members,
            net: Network::new(slots),
            history: History::default(),
            proposals: Vec::new(),
            next_request_id: 1,
            summary: Summary::default(),
            settling: false,
        })
    }

    fn step(&mut self) -> Result<(), String> {
        self.step += 1;
        let action = match self.rng.below(1000) {
            0..300 => {
                self.tick()?;
                "tick"
            }
            300..750 => {
                self.deliver()?;
                "deliver"
            }
            750..934 => {
                self.propose()?;
                "propose"
            }
            934..940 => {
                self.reconfigure();
                "reconfigure"
            }
            940..950 => {
                self.crash();
                "crash"
            }
            950..975 => {
                self.restart_one()?;
                "restart"
            }
            975..983 => {
                self.partition();
                "partition"
            }
            983..993 => {
                self.net.heal();
                "heal"
            }
            _ => {
                self.net.weather = Weather::random(&mut self.rng);
                "weather"
            }
        };
        let outcome = self.after_action();
        if self.trace {
            eprintln!(
                "step {} tick {} {action}: {}",
                self.step,
                self.now_tick,
                self.describe()
            );
        }
        outcome
    }

    /// Readies, every invariant, then the proposals' outcomes (acknowledgements are checked
    /// against every member from the next step on, and once more after healing).
    fn after_action(&mut self) -> Result<(), String> {
        self.process_readies()?;
        if self.leader().is_some() {
            self.summary.steps_led += 1;
        }
        self.check()?;
        self.poll_proposals()
    }

    fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_live())
            .collect()
    }

    /// The running member that believes it leads in the highest term, if any.
    fn leader(&self) -> Option<usize> {
        self.live()
            .into_iter()
            .filter(|&i| {
                let raft = &self.members[i].live.as_ref().expect("live").raw.raft;
                raft.state == StateRole::Leader
            })
            .max_by_key(|&i| self.members[i].live.as_ref().expect("live").raw.raft.term)
    }

    /// Records leadership and stretches the election timer after every role or term change.
    fn observe(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let Some(live) = m.live.as_ref() else {
            return Ok(());
        };
        let role = (live.raw.raft.term, live.raw.raft.state);
        if role.1 == StateRole::Leader {
            self.history.record_leader(role.0, m.id)?;
        }
        if role != m.role {
            m.role = role;
            // raft-rs would draw a timeout in [election, 2 × election) here; its draw is pinned
            // (see member::open), so the stretch is drawn from the seed instead.
            m.skip_ticks = if role.1 == StateRole::Leader {
                0
            } else {
                self.rng.below(ELECTION_TICKS as u64)
            };
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), String> {
        self.now_tick += 1;
        self.summary.ticks += 1;
        for i in self.live() {
            let m = &mut self.members[i];
            if m.skip_ticks > 0 {
                m.skip_ticks -= 1;
                continue;
            }
            // Clocks drift: now and then a member misses a tick.
            if self.rng.chance(30) {
                continue;
            }
            m.live.as_mut().expect("live").raw.tick();
            self.observe(i)?;
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), String> {
        let due = self.net.due_count(self.now_tick);
        if due == 0 {
            return Ok(());
        }
        let max = if self.rng.chance(500) {
            due
        } else {
            1 + self.rng.index(due)
        };
        let batch = self.net.take_due(&mut self.rng, self.now_tick, max);
        for packet in batch.cut {
            // The sender's transport notices the peer is unreachable.
            let from = (packet.msg.from - 1) as usize;
            if let Some(live) = self.members[from].live.as_mut() {
                live.raw.report_unreachable(packet.msg.to);
                if packet.file.is_some() {
                    live.raw
                        .report_snapshot(packet.msg.to, SnapshotStatus::Failure);
                }
            }
        }
        self.deliver_packets(batch.deliver)
    }

    /// Steps each packet into its target. A snapshot's file is stored first, as the peer
    /// service does (written, checked, renamed into the snapshot directory), and the sender
    /// hears how the transfer went.
    fn deliver_packets(&mut self, packets: Vec<Packet>) -> Result<(), String> {
        for Packet { msg, file } in packets {
            let (from, to) = ((msg.from - 1) as usize, (msg.to - 1) as usize);
            if !self.members[to].is_live() {
                if file.is_some() {
                    self.report_snapshot(from, msg.to, SnapshotStatus::Failure);
                }
                continue;
            }
            if let Some(bytes) = &file {
                let meta = msg.get_snapshot().get_metadata();
                let dir = self.members[to].snap_dir();
                let path = snapshot_path(&dir, meta.term, meta.index);
                let part = part_path(&path);
                std::fs::write(&part, bytes.as_slice())
                    .map_err(|e| format!("storing a received snapshot: {e}"))?;
                let pos = oxetcd::snapshot::format::verify_file(&part)
                    .map_err(|e| format!("member {} received a damaged snapshot: {e}", msg.to))?;
                if (pos.index, pos.term) != (meta.index, meta.term) {
                    return Err(format!(
                        "member {} sent a snapshot file holding index {} term {} for a message \
                         saying {} {}",
                        msg.from, pos.index, pos.term, meta.index, meta.term
                    ));
                }
                std::fs::rename(&part, &path)
                    .map_err(|e| format!("storing a received snapshot: {e}"))?;
            }
            if file.is_some()
                && !self.settling
                && self.members[to].crash_in_ready.is_none()
                && self.rng.chance(300)
            {
                // Dies in the Ready that installs it: after its first sink call (messages) and
                // the second (the synced write replacing the log), before the install; the
                // restart must install the received file.
                self.members[to].crash_in_ready = Some(2);
                self.summary.crashes_in_ready += 1;
                self.summary.crashes += 1;
            }
            let sent_to = msg.to;
            let live = self.members[to].live.as_mut().expect("checked above");
            // raft rejects some messages (e.g. from a peer it does not know); the network
            // does not care.
            let _ = live.raw.step(msg);
            self.observe(to)?;
            if file.is_some() {
                self.report_snapshot(from, sent_to, SnapshotStatus::Finish);
            }
        }
        Ok(())
    }

    fn report_snapshot(&mut self, from: usize, to: u64, status: SnapshotStatus) {
        if let Some(live) = self.members[from].live.as_mut() {
            live.raw.report_snapshot(to, status);
        }
    }

    /// One membership change on the leader, the next of the cycle: promote a learner if there
    /// is one, else remove a voter (never the leader) if there are more than at the start, else
    /// add a spare ID as a learner. One change at a time, as the Cluster API allows.
    fn reconfigure(&mut self) {
        let Some(l) = self.leader() else {
            return;
        };
        let leader = self.members[l].live.as_ref().expect("the leader runs");
        if leader.raw.raft.has_pending_conf() {
            return;
        }
        let members = leader
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .clone();
        let voters: Vec<u64> = members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect();
        let leader_id = self.members[l].id;
        let (change, id) = if let Some(learner) = members.iter().find(|m| m.is_learner) {
            (ConfChangeType::AddNode, learner.id)
        } else if voters.len() > self.initial_members {
            let others: Vec<u64> = voters.into_iter().filter(|&v| v != leader_id).collect();
            (ConfChangeType::RemoveNode, self.rng.pick(&others))
        } else if let Some(spare) = self
            .members
            .iter()
            .find(|m| !m.started && !m.removed && !members.iter().any(|x| x.id == m.id))
        {
            (ConfChangeType::AddLearnerNode, spare.id)
        } else {
            return;
        };
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut member = members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .unwrap_or_else(|| member::member_record(id));
        member.is_learner = change == ConfChangeType::AddLearnerNode;
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = id;
        cc.context = MemberChange {
            request_id,
            member: Some(member),
        }
        .encode_to_vec();
        let live = self.members[l].live.as_mut().expect("the leader runs");
        if live.raw.propose_conf_change(vec![], cc).is_ok() {
            self.summary.conf_changes_proposed += 1;
        }
    }

    /// Acts on membership changes some member applied: a member added to the list starts (with
    /// the list it was added in, as `--initial-cluster-state existing` fetches it), a promotion
    /// is counted, and a removed member stops for good (a member that applied its own removal
    /// stopped already; one that did not is refused by its peers).
    fn follow_membership(&mut self) -> Result<(), String> {
        let mut removed = Vec::new();
        let mut lists = Vec::new();
        for m in &mut self.members {
            removed.append(&mut m.removals_applied);
            if let Some(live) = m.live.as_ref() {
                lists.push(
                    live.membership
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                );
            }
        }
        for id in removed {
            let m = &mut self.members[(id - 1) as usize];
            if !m.removed {
                m.remove();
                self.summary.removals += 1;
            }
        }
        for list in lists {
            for record in &list.members {
                let i = (record.id - 1) as usize;
                if i < self.initial_members || i >= self.members.len() {
                    continue;
                }
                let m = &mut self.members[i];
                if m.removed {
                    continue;
                }
                if !m.started {
                    m.join(list.clone(), self.sabotage)?;
                    self.summary.learners_added += 1;
                    self.observe(i)?;
                }
                let m = &mut self.members[i];
                if !record.is_learner && !m.promoted {
                    m.promoted = true;
                    self.summary.promotions += 1;
                }
            }
        }
        Ok(())
    }

    /// One to three requests (mostly puts, some deletes) on the leader or a random member.
    fn propose(&mut self) -> Result<(), String> {
        let live = self.live();
        if live.is_empty() {
            return Ok(());
        }
        let target = match self.leader() {
            Some(l) if self.rng.chance(700) => l,
            _ => self.rng.pick(&live),
        };
        for _ in 0..1 + self.rng.below(3) {
            let key = format!("k{:02}", self.rng.below(KEYS)).into_bytes();
            let put = !self.rng.chance(150);
            self.submit(target, key, put);
        }
        self.observe(target)
    }

    /// Proposes a put (tracked until acknowledged) or a delete (not tracked) of `key` on
    /// member `i`, the way `NodeHandle::propose` does: register a waiter, then propose.
    fn submit(&mut self, i: usize, key: Vec<u8>, put: bool) {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let value = format!("v{id}").into_bytes();
        let request = if put {
            Request::Put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..PutRequest::default()
            })
        } else {
            Request::DeleteRange(DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            })
        };
        let data = InternalRequest {
            id,
            caller: None,
            request: Some(request),
            quota_bytes: 0,
        }
        .encode_to_vec();
        let m = &mut self.members[i];
        let live = m.live.as_mut().expect("proposals go to running members");
        let waiters = live.applier.waiters();
        let rx = waiters.register(id);
        self.summary.proposed += 1;
        if live.raw.propose(vec![], data).is_err() {
            // No leader to take it: the client is told at once (etcd's "no leader").
            waiters.cancel(id);
            self.summary.proposals_refused += 1;
            return;
        }
        if !put {
            waiters.cancel(id);
            return;
        }
        self.proposals.push(Proposal {
            member: i,
            restarts: m.restarts,
            id,
            key,
            value,
            rx,
            deadline_tick: self.now_tick + PROPOSAL_TIMEOUT_TICKS,
        });
    }

    fn crash(&mut self) {
        let live = self.live();
        // Usually at most a minority is down; now and then a majority (the cluster then waits
        // for restarts), never everyone.
        let members = self.members.iter().filter(|m| m.in_cluster()).count();
        let down = members - live.len();
        let minority = (members - 1) / 2;
        if live.len() <= 1 || (down >= minority && !self.rng.chance(200)) {
            return;
        }
        let victim = match self.leader() {
            Some(l) if self.rng.chance(400) => l,
            _ => self.rng.pick(&live),
        };
        let m = &mut self.members[victim];
        if m.crash_in_ready.is_some() {
            return;
        }
        if self.rng.chance(500) {
            // Dies during its next Ready, after this many sink calls went through.
            m.crash_in_ready = Some(self.rng.below(6) as u32);
            self.summary.crashes_in_ready += 1;
        } else {
            m.crash();
        }
        self.summary.crashes += 1;
    }

    fn restart_one(&mut self) -> Result<(), String> {
        let down: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].in_cluster() && !self.members[i].is_live())
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        let i = self.rng.pick(&down);
        self.restart(i)
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        m.restarts += 1;
        m.start(self.sabotage)?;
        self.observe(i)
    }

    fn partition(&mut self) {
        let n = self.members.len();
        let groups: Vec<u8> = match self.rng.below(3) {
            // Isolate one member (often the leader).
            0 => {
                let alone = match self.leader() {
                    Some(l) if self.rng.chance(500) => l,
                    _ => self.rng.index(n),
                };
                (0..n).map(|i| u8::from(i == alone)).collect()
            }
            // Two random sides.
            1 => (0..n).map(|_| self.rng.below(2) as u8).collect(),
            // Three sides: possibly no majority anywhere.
            _ => (0..n).map(|_| self.rng.below(3) as u8).collect(),
        };
        self.net.partition(groups);
        self.summary.partitions += 1;
    }

    fn process_readies(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let mut outbox = Vec::new();
            let m = &mut self.members[i];
            if !m.is_live() {
                continue;
            }
            m.process_ready(self.sabotage, &mut outbox);
            if let Some(fault) = m.fault.take() {
                return Err(fault);
            }
            // A snapshot message takes its file along, read when the transport sends it.
            let snap_dir = m.snap_dir();
            let mut packets = Vec::with_capacity(outbox.len());
            for msg in outbox {
                debug_assert_eq!(msg.from, m.id, "raft stamps the sender");
                if msg.get_msg_type() != MessageType::MsgSnapshot {
                    packets.push(Packet { msg, file: None });
                    continue;
                }
                let meta = msg.get_snapshot().get_metadata();
                match std::fs::read(snapshot_path(&snap_dir, meta.term, meta.index)) {
                    Ok(bytes) => {
                        self.summary.snapshots_sent += 1;
                        packets.push(Packet {
                            msg,
                            file: Some(Arc::new(bytes)),
                        });
                    }
                    Err(_) => {
                        if let Some(live) = m.live.as_mut() {
                            live.raw.report_snapshot(msg.to, SnapshotStatus::Failure);
                        }
                    }
                }
            }
            let failed = self.net.send(&mut self.rng, self.now_tick, packets);
            for msg in failed {
                self.report_snapshot(i, msg.to, SnapshotStatus::Failure);
            }
            self.observe(i)?;
        }
        self.follow_membership()
    }

    fn poll_proposals(&mut self) -> Result<(), String> {
        let mut waiting = Vec::with_capacity(self.proposals.len());
        for mut p in std::mem::take(&mut self.proposals) {
            match p.rx.try_recv() {
                Ok(Ok(Response::Put(resp))) => {
                    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                    if revision <= 1 {
                        return Err(format!(
                            "put {} was acknowledged without a revision: {resp:?}",
                            p.id
                        ));
                    }
                    let acked = Acked {
                        request_id: p.id,
                        key: p.key,
                        value: p.value,
                    };
                    self.history
                        .record_ack(revision, acked, &mut self.members)?;
                }
                Ok(Ok(other)) => {
                    return Err(format!("put {} answered with {other:?}", p.id));
                }
                // Applied, but refused by the state machine: nothing was acknowledged.
                Ok(Err(_)) => {}
                Err(TryRecvError::Empty) => {
                    if self.now_tick < p.deadline_tick {
                        waiting.push(p);
                    } else {
                        // The client times out; the outcome stays unknown.
                        let m = &self.members[p.member];
                        if m.restarts == p.restarts
                            && let Some(live) = m.live.as_ref()
                        {
                            live.applier.waiters().cancel(p.id);
                        }
                    }
                }
                // The proposer crashed: the outcome is unknown to the client.
                Err(TryRecvError::Closed) => {}
            }
        }
        self.proposals = waiting;
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        let full = self.step.is_multiple_of(check::FULL_CHECK_STEPS);
        for m in &mut self.members {
            if !m.is_live() {
                continue;
            }
            let store = m.live.as_ref().expect("live").raw.store();
            let (first, last) = (store.first(), store.last());
            if m.write_hint != u64::MAX || last != m.mirror.len() as u64 || first != m.mirror_first
            {
                check::sync_log(m, &mut self.history, m.write_hint)?;
            }
            m.write_hint = u64::MAX;
            if full {
                check::verify_full_log(m, &mut self.history)?;
            }
        }
        // The committed record grows from every member before any applied entry is checked.
        for m in &mut self.members {
            if m.is_live() {
                check::check_commit(m, &mut self.history)?;
            }
        }
        check::check_log_matching(&self.members)?;
        for m in &mut self.members {
            if m.is_live() {
                check::check_state(m, &mut self.history)?;
                check::check_acked(m, &self.history)?;
            }
        }
        Ok(())
    }

    /// Stops the faults, restarts everyone, and requires the cluster to converge, take one more
    /// write, and hold every acknowledged put on every member.
    fn settle(&mut self) -> Result<(), String> {
        self.settling = true;
        self.net.heal();
        self.net.weather = Weather::CALM;
        for i in 0..self.members.len() {
            self.members[i].crash_in_ready = None;
            if self.members[i].in_cluster() && !self.members[i].is_live() {
                self.restart(i)?;
            }
        }
        self.settle_until_converged("after the faults stopped")?;

        // Liveness: a fresh put on the leader is acknowledged.
        let leader = self.leader().expect("converged means there is a leader");
        let before = self.history.acked.len();
        let mut acked = false;
        for _ in 0..SETTLE_STEPS_MAX {
            if self.proposals.is_empty() {
                self.propose_on(leader)?;
            }
            self.settle_step()?;
            if self.history.acked.len() > before {
                acked = true;
                break;
            }
        }
        if !acked {
            return Err(format!(
                "liveness: a put on leader {} was not acknowledged within {SETTLE_STEPS_MAX} steps \
                 of a healed cluster; {}",
                leader + 1,
                self.describe()
            ));
        }
        self.settle_until_converged("after the final put")?;

        for m in self.members.iter_mut().filter(|m| m.in_cluster()) {
            let live = m.live.as_ref().expect("every member runs after settling");
            for (&rev, acked) in &self.history.acked {
                let kv = live
                    .mvcc
                    .get_at(&acked.key, rev)
                    .map_err(|e| format!("member {} reading revision {rev}: {e}", m.id))?;
                if !kv.is_some_and(|kv| kv.mod_revision == rev && kv.value == acked.value) {
                    return Err(format!(
                        "acknowledged put lost: request {} at revision {rev} is not on member {} \
                         after healing",
                        acked.request_id, m.id
                    ));
                }
            }
        }
        let fps: Vec<_> = self
            .members
            .iter()
            .filter(|m| m.in_cluster())
            .map(|m| check::fingerprint(&m.live.as_ref().expect("live").mvcc))
            .collect::<Result<_, _>>()?;
        if fps.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("state machines differ after convergence: {fps:?}"));
        }
        Ok(())
    }

    fn propose_on(&mut self, i: usize) -> Result<(), String> {
        self.submit(i, b"final".to_vec(), true);
        self.observe(i)
    }

    /// One step of a healed, calm cluster: deliver everything due, or tick.
    fn settle_step(&mut self) -> Result<(), String> {
        self.step += 1;
        if self.step.is_multiple_of(2) {
            self.tick()?;
        } else {
            let due = self.net.due_count(self.now_tick);
            let batch = self.net.take_due(&mut self.rng, self.now_tick, due);
            self.deliver_packets(batch.deliver)?;
        }
        self.after_action()
    }

    fn settle_until_converged(&mut self, when: &str) -> Result<(), String> {
        for _ in 0..SETTLE_STEPS_MAX {
            if self.converged() {
                return Ok(());
            }
            self.settle_step()?;
        }
        Err(format!(
            "liveness: the healed cluster did not converge within {SETTLE_STEPS_MAX} steps {when}; {}",
            self.describe()
        ))
    }

    /// One leader that every member follows, and every member has applied its whole log.
    fn converged(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let leader = &self.members[l].live.as_ref().expect("live").raw;
        let (term, last, commit) = (
            leader.raft.term,
            leader.raft.raft_log.last_index(),
            leader.raft.raft_log.committed,
        );
        commit == last
            && self.members.iter().filter(|m| m.in_cluster()).all(|m| {
                m.live.as_ref().is_some_and(|live| {
                    live.raw.raft.term == term
                        && live.raw.raft.leader_id == leader.raft.id
                        && live.raw.raft.raft_log.last_index() == last
                        && live.applier.applied_index() == last
                })
            })
    }

    fn describe(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.started)
            .map(|m| match m.live.as_ref() {
                None if m.removed => format!("member {} removed", m.id),
                None => format!("member {} down", m.id),
                Some(_) if m.crash_in_ready.is_some() => format!("member {} crashing", m.id),
                Some(live) => {
                    let r = &live.raw.raft;
                    format!(
                        "member {} {:?} term {} leader {} last {} commit {} applied {}",
                        m.id,
                        r.state,
                        r.term,
                        r.leader_id,
                        r.raft_log.last_index(),
                        r.raft_log.committed,
                        live.applier.applied_index()
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn summary(&self) -> Summary {
        let mut s = self.summary.clone();
        s.steps = self.step;
        s.leaders = self.history.leaders.len();
        s.last_term = self
            .history
            .leaders
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0);
        s.acked = self.history.acked.len();
        s.committed = self.history.committed.len() as u64;
        s.committed_digest = check::committed_digest(&self.history);
        s.overwritten = self.history.overwritten;
        s.revision = self
            .members
            .iter()
            .find_map(|m| m.live.as_ref())
            .map_or(0, |live| live.mvcc.current_revision());
        s.net = self.net.stats;
        for m in &self.members {
            s.snapshots_installed += m.stats.snapshots_installed;
            s.snapshots_installed_at_start += m.stats.snapshots_installed_at_start;
            s.log_truncations += m.stats.log_truncations;
            s.crashes_losing_writes += m.stats.crashes_losing_writes;
            s.applied_entries_lost += m.stats.applied_entries_lost;
        }
        s
    }
}
