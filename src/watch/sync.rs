//! The catch-up task: serves unsynced watchers from MVCC history in bounded chunks, then hands
//! them back to live delivery without a gap or a duplicate.
//!
//! A pass picks up to [`WATCHERS_PER_PASS_MAX`] unsynced watchers whose sinks have room, reads
//! history from the lowest revision any of them needs (off the async workers, at most
//! [`CHUNK_REVS`] revisions at a time), and offers each watcher its share. Delivery happens under
//! the hub lock and only if the watcher has not moved meanwhile; a watcher whose position passes
//! the last notified revision becomes synced in that same critical section, so the next `notify`
//! reaches it and no earlier one can.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::{
    HistoryError, HubEvent, HubWatcherId, Interest, Offer, Phase, WatchHub, history::History, offer,
};
use crate::proto::mvccpb::{Event, event::EventType};

/// How often unsynced watchers are served without being woken (etcd's `watchResyncPeriod`).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Unsynced watchers served per pass (etcd's `maxWatchersPerSync`).
pub const WATCHERS_PER_PASS_MAX: usize = 512;
/// Revisions read from history per chunk.
pub const CHUNK_REVS: usize = 256;
/// Chunks read per pass, bounding the work one pass does for a watcher far behind.
const CHUNKS_PER_PASS_MAX: usize = 8;
/// Passes run back to back while they make progress, before waiting for the next tick.
const PASSES_PER_WAKE_MAX: usize = 16;

/// A watcher picked for this pass, with the position it had when picked.
struct Selected {
    id: HubWatcherId,
    next_rev: i64,
    interest: Interest,
}

/// History read for one chunk: whole revisions, `prev_kv` filled where a selected watcher wants it.
struct Chunk {
    revs: Vec<(i64, Vec<Event>)>,
    /// Every revision up to here has been read (some may have had no events for anyone).
    covered_to: i64,
}

impl WatchHub {
    /// Serves unsynced watchers every [`SYNC_INTERVAL`] and whenever a watcher starting in the
    /// past registers, until `shutdown` turns true or its sender is dropped.
    pub async fn run_sync(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            }
            for _ in 0..PASSES_PER_WAKE_MAX {
                if !self.sync_pass().await {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        tracing::debug!("watch catch-up task stopped");
    }

    /// One catch-up pass. Returns whether it made progress and unsynced watchers remain, i.e.
    /// whether another pass right away is worthwhile.
    pub(crate) async fn sync_pass(self: &Arc<Self>) -> bool {
        let (mut selected, mut target, mut progressed) = self.select_unsynced();
        for _ in 0..CHUNKS_PER_PASS_MAX {
            let Some(from) = selected.iter().map(|s| s.next_rev).min() else {
                break;
            };
            if from > target {
                break;
            }
            let wanted: Vec<(i64, Interest)> = selected
                .iter()
                .filter(|s| s.interest.prev_kv)
                .map(|s| (s.next_rev, s.interest.clone()))
                .collect();
            let history = self.history.clone();
            let read =
                tokio::task::spawn_blocking(move || read_chunk(&*history, from, target, &wanted))
                    .await;
            match read {
                Ok(Ok(chunk)) => {
                    let (moved, notified) = self.deliver_chunk(&mut selected, &chunk);
                    progressed |= moved;
                    target = notified;
                }
                Ok(Err(HistoryError::Compacted { .. })) => {
                    progressed |= self.doom_compacted(&mut selected);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, from_revision = from, "watch catch-up read failed; retrying later");
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "watch catch-up read task failed");
                    return false;
                }
            }
        }
        progressed && !self.state().unsynced.is_empty()
    }

    /// Picks this pass's watchers. Along the way retries pending `Compacted` messages, dooms
    /// watchers below the compaction point and moves watchers with nothing left to catch up to
    /// synced. Returns the picked watchers, the last notified revision, and whether anything moved.
    fn select_unsynced(&self) -> (Vec<Selected>, i64, bool) {
        let mut st = self.state();
        let mut progressed = false;
        let doomed: Vec<HubWatcherId> = st.doomed.iter().copied().collect();
        for id in doomed {
            progressed |= st.deliver_doom(id);
        }

        let compact_rev = self.history.compact_revision();
        let target = st.notified_rev;
        // Round robin: start after the watcher the previous pass stopped at.
        let order: Vec<HubWatcherId> = match st.sync_cursor {
            Some(cursor) => st
                .unsynced
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(st.unsynced.range(..=cursor))
                .copied()
                .collect(),
            None => st.unsynced.iter().copied().collect(),
        };
        st.sync_cursor = None;
        let mut selected = Vec::new();
        for id in order {
            let Some(w) = st.watchers.get(&id) else {
                continue;
            };
            if w.sink.is_closed() {
                st.remove(id);
            } else if w.next_rev < compact_rev {
                st.doom(id, compact_rev);
                progressed = true;
            } else if w.next_rev > target {
                st.set_phase(id, Phase::Synced);
                progressed = true;
            } else if w.sink.capacity() > 0 {
                selected.push(Selected {
                    id,
                    next_rev: w.next_rev,
                    interest: w.interest.clone(),
                });
                if selected.len() == WATCHERS_PER_PASS_MAX {
                    st.sync_cursor = Some(id);
                    break;
                }
            }
        }
        (selected, target, progressed)
    }

    /// Offers each picked watcher its events from `chunk`. Drops from `selected` the watchers
    /// that are done for this pass. Returns whether any watcher advanced, and the last notified
    /// revision (the next chunk's upper bound).
    fn deliver_chunk(&self, selected: &mut Vec<Selected>, chunk: &Chunk) -> (bool, i64) {
        // Each watcher's share depends only on its position when picked, so it is gathered
        // before taking the lock that `notify` (the apply thread) also needs.
        let shares: Vec<(Selected, Option<Vec<Event>>)> = selected
            .drain(..)
            .map(|s| {
                let share = (s.next_rev <= chunk.covered_to)
                    .then(|| s.interest.collect(&chunk.revs, s.next_rev));
                (s, share)
            })
            .collect();
        let mut st = self.state();
        let mut progressed = false;
        let mut sent = 0;
        for (s, share) in shares {
            let notified_rev = st.notified_rev;
            let Some(w) = st.watchers.get_mut(&s.id) else {
                continue;
            };
            if w.phase != Phase::Unsynced || w.next_rev != s.next_rev {
                // Cancelled, doomed or otherwise moved while history was read.
                continue;
            }
            let Some(events) = share else {
                // This chunk ends before the watcher's position.
                selected.push(s);
                continue;
            };
            if !events.is_empty() {
                let count = events.len() as u64;
                let msg = HubEvent::Events {
                    id: s.id,
                    revision: chunk.covered_to,
                    events,
                };
                match offer(&w.sink, msg) {
                    Offer::Sent => sent += count,
                    Offer::Full => continue,
                    Offer::Closed => {
                        st.remove(s.id);
                        continue;
                    }
                }
            }
            w.next_rev = chunk.covered_to + 1;
            progressed = true;
            if w.next_rev > notified_rev {
                st.set_phase(s.id, Phase::Synced);
            } else {
                selected.push(Selected {
                    next_rev: chunk.covered_to + 1,
                    ..s
                });
            }
        }
        st.events_sent += sent;
        (progressed, st.notified_rev)
    }

    /// History was compacted under a read: dooms the picked watchers now below the compaction
    /// point and keeps the rest. Returns whether any watcher was doomed.
    fn doom_compacted(&self, selected: &mut Vec<Selected>) -> bool {
        let compact_rev = self.history.compact_revision();
        let mut st = self.state();
        let mut doomed = false;
        selected.retain(|s| {
            let still_here = st
                .watchers
                .get(&s.id)
                .is_some_and(|w| w.phase == Phase::Unsynced && w.next_rev == s.next_rev);
            if !still_here {
                return false;
            }
            if s.next_rev < compact_rev {
                st.doom(s.id, compact_rev);
                doomed = true;
                return false;
            }
            true
        });
        if !doomed {
            // The read saw a compaction point this one does not: nothing sensible to do but stop
            // this pass's reads for these watchers; the next pass re-reads the point.
            selected.clear();
        }
        doomed
    }
}

/// Whether etcd would look up a previous key-value for this event (everything but a creation).
fn has_prev(ev: &Event) -> bool {
    let Some(kv) = ev.kv.as_ref() else {
        return false;
    };
    !(ev.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision)
}

/// Reads revisions `from..=to` (at most [`CHUNK_REVS`]) and fills `prev_kv` for events that one
/// of the `wanted` watchers (position, interest) will receive. Blocking.
fn read_chunk(
    history: &dyn History,
    from: i64,
    to: i64,
    wanted: &[(i64, Interest)],
) -> Result<Chunk, HistoryError> {
    let mut revs = history.events_since(from, to, CHUNK_REVS)?;
    let covered_to = match revs.last() {
        Some((last, _)) if revs.len() >= CHUNK_REVS => (*last).min(to),
        _ => to,
    };
    revs.retain(|(rev, _)| *rev <= covered_to);
    let mut looked_up = Vec::new();
    if !wanted.is_empty() {
        for (rev, events) in revs.iter_mut() {
            for ev in events.iter_mut() {
                ev.prev_kv = None;
                if !has_prev(ev) || !wanted.iter().any(|(pos, i)| *rev >= *pos && i.wants(ev)) {
                    continue;
                }
                let Some(key) = ev.kv.as_ref().map(|kv| kv.key.clone()) else {
                    continue;
                };
                match history.get_at(&key, *rev - 1) {
                    Ok(prev) => {
                        ev.prev_kv = prev;
                        looked_up.push(*rev);
                    }
                    Err(HistoryError::Compacted { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Compaction may have run while we read. Revisions at or above the compaction point are
    // intact; anything below it may have been half deleted, so it counts as compacted.
    let compact_rev = history.compact_revision();
    if from < compact_rev {
        return Err(HistoryError::Compacted {
            requested: from,
            compacted: compact_rev,
        });
    }
    if looked_up.iter().any(|rev| rev - 1 < compact_rev) {
        for (rev, events) in revs.iter_mut() {
            if *rev - 1 < compact_rev {
                for ev in events.iter_mut() {
                    ev.prev_kv = None;
                }
            }
        }
    }
    Ok(Chunk { revs, covered_to })
}
