//! One Ready cycle in the order raft-rs requires, shared by the node's raft thread and by tests
//! that drive several members step by step.
//!
//! The order: leader messages may leave before the local write (raft thesis §10.2.1); entries and
//! hard state are written in one batch, synced when raft says so; messages that acknowledge
//! persisted state leave only after that write; committed entries are handed to apply only after
//! the commit index covering them has been written, so a restarted member never finds its applied
//! index ahead of its commit index. A snapshot from the leader replaces the log in that same
//! synced write and is handed to apply right after it, ahead of the Ready's committed entries.

use raft::eraftpb::{Entry, Message, Snapshot};
use raft::{RawNode, ReadState, StateRole};

use super::RaftLogStore;
use crate::storage::Batch;

/// Where the results of a Ready go.
pub trait ReadySink {
    /// Messages for peers.
    fn send(&mut self, messages: Vec<Message>);
    /// Writes `batch`; with `sync` it must be durable before this returns. A failure must not
    /// return (the member cannot continue with a log it could not persist).
    fn write(&mut self, batch: Batch, sync: bool);
    /// Committed entries, in log order, to be applied.
    fn apply(&mut self, entries: Vec<Entry>);
    /// Answers to ReadIndex requests.
    fn read_states(&mut self, states: Vec<ReadState>);
    /// Leadership as raft now sees it (only called when it changed).
    fn soft_state(&mut self, leader_id: u64, role: StateRole);
    /// A snapshot from the leader, whose position already replaced the raft log in a synced
    /// write: have it installed in the state machine after the entries handed to `apply` so
    /// far and before any handed later. It need not be installed when this returns (the raft
    /// thread keeps going meanwhile); a member that stops first installs it when it starts
    /// again, finding its applied index behind the log's start.
    fn snapshot(&mut self, snapshot: &Snapshot);
}

/// Processes one Ready if raft has one. Returns whether it did.
pub fn handle_ready(raw: &mut RawNode<RaftLogStore>, sink: &mut impl ReadySink) -> bool {
    if !raw.has_ready() {
        return false;
    }
    let mut rd = raw.ready();
    sink.send(rd.take_messages());
    let mut batch = Batch::new();
    let has_snapshot = !rd.snapshot().is_empty();
    if has_snapshot {
        let meta = rd.snapshot().get_metadata();
        raw.mut_store().apply_snapshot(
            &mut batch,
            meta.index,
            meta.term,
            meta.get_conf_state().clone(),
        );
    }
    if let Some(ss) = rd.ss() {
        sink.soft_state(ss.leader_id, ss.raft_state);
    }
    let committed = rd.take_committed_entries();
    raw.mut_store().append(&mut batch, rd.entries(), rd.hs());
    if !batch.is_empty() {
        sink.write(batch, rd.must_sync() || has_snapshot);
    }
    if has_snapshot {
        sink.snapshot(rd.snapshot());
    }
    sink.send(rd.take_persisted_messages());
    let read_states = rd.take_read_states();
    if !read_states.is_empty() {
        sink.read_states(read_states);
    }
    if !committed.is_empty() {
        sink.apply(committed);
    }
    let mut light = raw.advance_append(rd);
    if let Some(commit) = light.commit_index() {
        let mut batch = Batch::new();
        raw.mut_store().set_commit(&mut batch, commit);
        sink.write(batch, false);
    }
    sink.send(light.take_messages());
    let committed = light.take_committed_entries();
    if !committed.is_empty() {
        sink.apply(committed);
    }
    true
}
