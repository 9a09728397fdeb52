//! The invariants, checked after every step: election safety, log matching, committed entries
//! never change, equal applied index ⇒ equal state machine, acknowledged puts never lost.
//!
//! Each member's persisted log is read back through `raft::Storage` on its `RaftLogStore`. To keep
//! a step cheap the checker keeps a mirror of every log (`Member::mirror`) and re-reads only the
//! part a Ready may have rewritten; every `FULL_CHECK_STEPS` steps, and after every restart, the
//! whole log is re-read and compared with the mirror. Entries below a log's start (truncated
//! after a snapshot, or replaced by an installed one) are committed ones: the mirror holds the
//! committed record there, and the log must never start past what anyone committed.

use std::collections::BTreeMap;
use std::hash::Hasher;

use oxetcd::mvcc::MvccStore;
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage as _};

use super::member::Member;

/// Steps between full re-reads of every persisted log.
pub const FULL_CHECK_STEPS: u64 = 64;

/// A digest of an entry's type and payload (index and term are compared separately).
pub fn entry_digest(e: &Entry) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write_i32(e.entry_type);
    h.write(&e.data);
    h.write(&e.context);
    h.finish()
}

/// What a state machine looks like at one applied index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub revision: i64,
    /// `MvccStore::hash_kv(0)`: every revision on disk.
    pub hash_kv: u32,
    /// Digest of a range over every key at the current revision (index and values).
    pub range_digest: u64,
    pub keys: usize,
}

pub fn fingerprint(mvcc: &MvccStore) -> Result<Fingerprint, String> {
    let hash = mvcc.hash_kv(0).map_err(|e| format!("hash_kv: {e}"))?;
    let all = mvcc
        .range(b"\0", b"\0", hash.current_rev, 0)
        .map_err(|e| format!("range over every key: {e}"))?;
    let mut h = std::hash::DefaultHasher::new();
    for kv in &all.kvs {
        h.write(&kv.key);
        h.write(&kv.value);
        h.write_i64(kv.create_revision);
        h.write_i64(kv.mod_revision);
        h.write_i64(kv.version);
        h.write_i64(kv.lease);
    }
    Ok(Fingerprint {
        revision: hash.current_rev,
        hash_kv: hash.hash,
        range_digest: h.finish(),
        keys: all.count,
    })
}

/// A put some member acknowledged to its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub request_id: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Every member's log starts after a bootstrap snapshot at this index (`RaftLogStore::open`).
pub const BOOTSTRAP_INDEX: u64 = 1;
/// How the checker records the bootstrap position: term 1, and a digest no entry has.
pub const BOOTSTRAP_ENTRY: (u64, u64) = (1, 0);

/// Everything ever observed that later observations must agree with.
#[derive(Default)]
pub struct History {
    /// Term → the member that led it.
    pub leaders: BTreeMap<u64, u64>,
    /// Every (index, term) seen in any persisted log → (digest, term of the entry before it).
    /// raft creates at most one entry per (index, term), and every log holding it agrees on
    /// everything before it: so the pair is unique across all members and all time.
    entries: BTreeMap<(u64, u64), (u64, u64)>,
    /// The committed log as far as any member has committed it: `(term, digest)` of index i at [i-1].
    pub committed: Vec<(u64, u64)>,
    /// Applied index → the state machine every member must have there.
    states: BTreeMap<u64, Fingerprint>,
    /// Revision → the acknowledged put that created it.
    pub acked: BTreeMap<i64, Acked>,
    /// Persisted entries replaced by a different entry (a new leader's log winning a conflict).
    pub overwritten: u64,
}

impl History {
    pub fn record_leader(&mut self, term: u64, id: u64) -> Result<(), String> {
        let leader = *self.leaders.entry(term).or_insert(id);
        if leader != id {
            return Err(format!(
                "election safety: members {leader} and {id} were both leader in term {term}"
            ));
        }
        Ok(())
    }

    /// Records an acknowledged put; every member past `revision` will be checked for it.
    pub fn record_ack(
        &mut self,
        revision: i64,
        acked: Acked,
        members: &mut [Member],
    ) -> Result<(), String> {
        if let Some(earlier) = self.acked.get(&revision) {
            if *earlier != acked {
                return Err(format!(
                    "two acknowledged puts claim revision {revision}: {earlier:?} and {acked:?}"
                ));
            }
            return Ok(());
        }
        self.acked.insert(revision, acked);
        for m in members {
            m.acked_checked_rev = m.acked_checked_rev.min(revision - 1);
        }
        Ok(())
    }

    /// One (index, term) is one entry everywhere, always (see `entries`).
    pub fn check_entry(
        &mut self,
        member: u64,
        index: u64,
        term: u64,
        digest: u64,
        prev_term: u64,
    ) -> Result<(), String> {
        let seen = *self
            .entries
            .entry((index, term))
            .or_insert((digest, prev_term));
        if seen != (digest, prev_term) {
            return Err(format!(
                "log matching: member {member} holds entry (index {index}, term {term}) with \
                 digest {digest:x} after term {prev_term}, but that entry was seen with digest \
                 {:x} after term {}",
                seen.0, seen.1
            ));
        }
        Ok(())
    }

    /// Starts the committed record with the bootstrap position every log begins after.
    pub fn start_record(&mut self) {
        if self.committed.is_empty() {
            self.committed.push(BOOTSTRAP_ENTRY);
        }
    }

    /// Committed entries never change; the record grows one index at a time.
    pub fn check_committed(
        &mut self,
        member: u64,
        index: u64,
        entry: (u64, u64),
    ) -> Result<(), String> {
        self.start_record();
        let pos = (index - 1) as usize;
        match self.committed.get(pos) {
            Some(&c) if c != entry => Err(format!(
                "committed entry changed: member {member} has (term {}, digest {:x}) at committed \
                 index {index}, which was committed as (term {}, digest {:x})",
                entry.0, entry.1, c.0, c.1
            )),
            Some(_) => Ok(()),
            None if pos == self.committed.len() => {
                self.committed.push(entry);
                Ok(())
            }
            None => Err(format!(
                "member {member} committed index {index} but the committed record ends at {}",
                self.committed.len()
            )),
        }
    }
}

/// Re-reads `m`'s persisted log from `from` on (everything when `from` is 1), checks the entries
/// against the history and updates the mirror.
pub fn sync_log(m: &mut Member, history: &mut History, from: u64) -> Result<(), String> {
    let live = m.live.as_ref().expect("only a live member's log is read");
    let store = live.raw.store();
    let first = store
        .first_index()
        .map_err(|e| format!("first_index: {e}"))?;
    let last = store.last_index().map_err(|e| format!("last_index: {e}"))?;
    // Below the log's start (the bootstrap snapshot, a truncation, or an installed snapshot)
    // every entry is committed, and the mirror holds what was committed there.
    if first != m.mirror_first {
        let base = (first - 1) as usize;
        history.start_record();
        // A member may truncate entries it committed in this very step, before the record
        // grows from its commit index (`check_commit`): its mirror still holds those.
        let known = history.committed.len().min(base);
        if m.mirror.len() < base && known < base {
            return Err(format!(
                "member {}: its log starts after index {base}, beyond the committed record (which \
                 ends at {}) and beyond what the checker saw of its log: it truncated or \
                 installed a snapshot of entries nobody committed",
                m.id,
                history.committed.len()
            ));
        }
        if m.mirror.len() < base {
            m.mirror.resize(base, (0, 0));
        }
        m.mirror[..known].copy_from_slice(&history.committed[..known]);
        m.mirror_first = first;
    }
    let from = from.max(first).min(last + 1).min(m.mirror.len() as u64 + 1);
    let entries = if from <= last {
        store
            .entries(from, last + 1, None, GetEntriesContext::empty(false))
            .map_err(|e| format!("member {} entries [{from}, {last}]: {e}", m.id))?
    } else {
        Vec::new()
    };
    if entries.len() as u64 != last + 1 - from {
        return Err(format!(
            "member {}: entries [{from}, {last}] returned {} entries",
            m.id,
            entries.len()
        ));
    }
    let replaced: Vec<(u64, u64)> = m.mirror.split_off((from - 1) as usize);
    for e in &entries {
        if e.index != m.mirror.len() as u64 + 1 {
            return Err(format!(
                "member {}: log entry {} where {} was expected",
                m.id,
                e.index,
                m.mirror.len() + 1
            ));
        }
        let prev_term = m.mirror.last().map_or(0, |p| p.0);
        if e.term < prev_term {
            return Err(format!(
                "member {}: term goes down from {prev_term} to {} at index {}",
                m.id, e.term, e.index
            ));
        }
        let digest = entry_digest(e);
        history.check_entry(m.id, e.index, e.term, digest, prev_term)?;
        if e.index <= m.committed_checked {
            history.check_committed(m.id, e.index, (e.term, digest))?;
        }
        let slot = m.mirror.len();
        if replaced
            .get(slot - (from - 1) as usize)
            .is_some_and(|&old| old != (e.term, digest))
        {
            history.overwritten += 1;
        }
        m.mirror.push((e.term, digest));
    }
    Ok(())
}

/// A digest of the committed log, to compare runs of one seed.
pub fn committed_digest(history: &History) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for &(term, digest) in &history.committed {
        h.write_u64(term);
        h.write_u64(digest);
    }
    h.finish()
}

/// Re-reads the whole persisted log and requires it to equal the mirror.
pub fn verify_full_log(m: &mut Member, history: &mut History) -> Result<(), String> {
    let before = m.mirror.clone();
    sync_log(m, history, 1)?;
    let store = m
        .live
        .as_ref()
        .expect("only a live member's log is read")
        .raw
        .store();
    // Terms are kept from the entry before the log's start on (the truncation marker).
    let from = store.first().saturating_sub(1).max(1);
    for (i, &(term, _)) in m.mirror.iter().enumerate().skip((from - 1) as usize) {
        let index = i as u64 + 1;
        let got = store
            .term(index)
            .map_err(|e| format!("member {} term({index}): {e}", m.id))?;
        if got != term {
            return Err(format!(
                "member {}: term({index}) is {got} but the entry there has term {term}",
                m.id
            ));
        }
    }
    if m.mirror != before {
        let at = m
            .mirror
            .iter()
            .zip(&before)
            .position(|(a, b)| a != b)
            .unwrap_or(m.mirror.len().min(before.len()));
        return Err(format!(
            "member {}: persisted log changed behind the checker's back at index {} \
             (the per-step check re-reads only what a Ready wrote): was {:?}, now {:?}",
            m.id,
            at + 1,
            &before[at.saturating_sub(2)..],
            &m.mirror[at.saturating_sub(2)..]
        ));
    }
    Ok(())
}

/// Brings the committed record up to `m`'s commit index and checks `m`'s log against it.
pub fn check_commit(m: &mut Member, history: &mut History) -> Result<(), String> {
    let live = m
        .live
        .as_ref()
        .expect("only a live member's commit is read");
    let committed = live.raw.raft.raft_log.committed;
    if committed > m.mirror.len() as u64 {
        return Err(format!(
            "member {} committed index {committed} beyond its persisted log (last {})",
            m.id,
            m.mirror.len()
        ));
    }
    for index in m.committed_checked + 1..=committed {
        history.check_committed(m.id, index, m.mirror[(index - 1) as usize])?;
    }
    m.committed_checked = m.committed_checked.max(committed);
    let applied = live.applier.applied_index();
    if applied > committed {
        return Err(format!(
            "member {} applied index {applied} is ahead of its commit index {committed}",
            m.id
        ));
    }
    for (index, term, digest) in std::mem::take(&mut m.applied) {
        if index > history.committed.len() as u64 {
            return Err(format!(
                "member {} applied entry {index} before any member committed it",
                m.id
            ));
        }
        if history.committed[(index - 1) as usize] != (term, digest) {
            return Err(format!(
                "member {} applied (index {index}, term {term}) which differs from the committed entry",
                m.id
            ));
        }
    }
    Ok(())
}

/// Log matching between every pair of persisted logs (running or crashed): wherever two logs
/// hold an entry with the same index and term, they are identical up to it.
pub fn check_log_matching(members: &[Member]) -> Result<(), String> {
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            let common = a.mirror.len().min(b.mirror.len());
            let Some(upto) = (0..common).rev().find(|&k| a.mirror[k].0 == b.mirror[k].0) else {
                continue;
            };
            if a.mirror[..=upto] != b.mirror[..=upto] {
                let at = (0..=upto)
                    .find(|&k| a.mirror[k] != b.mirror[k])
                    .expect("the slices differ somewhere");
                return Err(format!(
                    "log matching: members {} and {} agree on the term at index {} but differ \
                     at index {}",
                    a.id,
                    b.id,
                    upto + 1,
                    at + 1
                ));
            }
        }
    }
    Ok(())
}

/// Equal applied index ⇒ identical state machine.
pub fn check_state(m: &mut Member, history: &mut History) -> Result<(), String> {
    let live = m.live.as_ref().expect("only a live member's state is read");
    let applied = live.applier.applied_index();
    if m.fingerprint_at == Some(applied) {
        return Ok(());
    }
    let fp = fingerprint(&live.mvcc)?;
    let expected = *history.states.entry(applied).or_insert(fp);
    if expected != fp {
        return Err(format!(
            "state machine safety: member {} at applied index {applied} has {fp:?}, another \
             member had {expected:?} there",
            m.id
        ));
    }
    m.fingerprint_at = Some(applied);
    Ok(())
}

/// Every acknowledged put at a revision this member has reached is there, unchanged.
pub fn check_acked(m: &mut Member, history: &History) -> Result<(), String> {
    let live = m.live.as_ref().expect("only a live member's state is read");
    let current = live.mvcc.current_revision();
    if current <= m.acked_checked_rev {
        return Ok(());
    }
    for (&rev, acked) in history.acked.range(m.acked_checked_rev + 1..=current) {
        let kv = live
            .mvcc
            .get_at(&acked.key, rev)
            .map_err(|e| format!("member {} reading an acknowledged put at {rev}: {e}", m.id))?;
        let ok = kv
            .as_ref()
            .is_some_and(|kv| kv.mod_revision == rev && kv.value == acked.value);
        if !ok {
            return Err(format!(
                "acknowledged put lost: request {} ({:?} = {:?}) was acknowledged at revision \
                 {rev}, but member {} has {:?} there",
                acked.request_id,
                String::from_utf8_lossy(&acked.key),
                String::from_utf8_lossy(&acked.value),
                m.id,
                kv.map(|kv| (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision
                ))
            ));
        }
    }
    m.acked_checked_rev = current;
    Ok(())
}
