//! The watch hub: routes every published revision's events to the watchers that asked for them,
//! and catches up watchers that start in the past (or fell behind) from MVCC history.
//!
//! Watchers live in one of three states, after etcd's watchable store:
//! - **synced**: everything up to the last notified revision has been handed to the watcher's
//!   sink; [`WatchHub::notify`] delivers new revisions to it directly.
//! - **unsynced**: the watcher still needs revisions from `next_rev` on, which it gets from
//!   history through the catch-up task ([`WatchHub::run_sync`]). A synced watcher whose sink is
//!   full when `notify` runs (a slow consumer) becomes unsynced at the revision it missed, so
//!   `notify` never waits.
//! - **doomed**: the history it needs was compacted; its [`HubEvent::Compacted`] message is
//!   waiting for room in its sink, after which it is removed.
//!
//! Every state change happens under one mutex, and `notify` hands a revision to synced watchers
//! under that same mutex, so a watcher moved from unsynced to synced sees every revision exactly
//! once and in order. The hub speaks in `mvccpb` events and knows nothing of gRPC streams.

mod history;
mod sync;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::mvcc::MvccStore;
use crate::proto::mvccpb::{Event, event::EventType};

pub use history::{History, HistoryError};

/// Capacity of the sink a gRPC watch stream gives its watchers (etcd's `chanBufLen`). A sink
/// that is full makes its watchers unsynced; they are caught up from history later.
pub const SINK_CAPACITY: usize = 128;

/// Where the hub sends a watcher's events. One sink is usually shared by all the watchers of one
/// gRPC stream, so their messages stay in order relative to each other.
pub type HubSink = mpsc::Sender<HubEvent>;

/// Identifies one watcher in the hub; unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubWatcherId(u64);

impl HubWatcherId {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What a watcher wants to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key of the range; the caller has already rewritten an empty key to `"\0"`.
    pub key: Vec<u8>,
    /// etcd's range end: empty = only `key`; `"\0"` = every key `>= key`; else `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// First revision to deliver, inclusive; must be positive (the caller resolves "now").
    pub start_rev: i64,
    /// Deliver each event's previous key-value.
    pub prev_kv: bool,
    /// Drop PUT events.
    pub no_put: bool,
    /// Drop DELETE events.
    pub no_delete: bool,
}

/// A message from the hub to a watcher's sink.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// The watcher's events of whole revisions, ascending; `revision` is the last revision they
    /// cover (every event up to it that matches the watcher is in this or an earlier message).
    Events {
        id: HubWatcherId,
        revision: i64,
        events: Vec<Event>,
    },
    /// The history the watcher needs was compacted; the watcher is gone from the hub.
    Compacted {
        id: HubWatcherId,
        compact_revision: i64,
    },
    /// Every event up to `revision` has been sent: for one watcher (`Some`), or for all the
    /// watchers named in [`WatchHub::request_progress_all`] (`None`).
    Progress {
        id: Option<HubWatcherId>,
        revision: i64,
    },
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub synced: usize,
    pub unsynced: usize,
    pub doomed: usize,
    /// Times a full sink turned a synced watcher unsynced (etcd's slow watchers).
    pub slow_total: u64,
    /// Events handed to watchers' sinks.
    pub events_sent: u64,
    /// Events client streams took from the sinks; the rest of `events_sent` is pending.
    pub events_received: u64,
    /// Client streams open (see [`WatchHub::open_stream`]).
    pub streams: u64,
    /// The last revision handed to [`WatchHub::notify`].
    pub notified_rev: i64,
}

/// The keys a watcher covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRange {
    Key(Vec<u8>),
    From(Vec<u8>),
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    fn new(key: Vec<u8>, range_end: Vec<u8>) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Key(key)
        } else if range_end == [0] {
            KeyRange::From(key)
        } else {
            KeyRange::Between(key, range_end)
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_slice() == key,
            KeyRange::From(start) => key >= start.as_slice(),
            KeyRange::Between(start, end) => key >= start.as_slice() && key < end.as_slice(),
        }
    }
}

/// The filters and shape of a watcher, shared by live delivery and catch-up.
#[derive(Debug, Clone)]
struct Interest {
    range: KeyRange,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl Interest {
    fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = ev.kv.as_ref() else {
            return false;
        };
        let dropped = if ev.r#type == EventType::Delete as i32 {
            self.no_delete
        } else {
            self.no_put
        };
        !dropped && self.range.contains(&kv.key)
    }

    /// The event as this watcher receives it.
    fn shape(&self, ev: &Event) -> Event {
        if self.prev_kv || ev.prev_kv.is_none() {
            ev.clone()
        } else {
            Event {
                r#type: ev.r#type,
                kv: ev.kv.clone(),
                prev_kv: None,
            }
        }
    }

    /// Matching events of `revs` at revisions `>= from_rev`, shaped for this watcher.
    fn collect(&self, revs: &[(i64, Vec<Event>)], from_rev: i64) -> Vec<Event> {
        revs.iter()
            .filter(|(rev, _)| *rev >= from_rev)
            .flat_map(|(_, evs)| evs.iter())
            .filter(|ev| self.wants(ev))
            .map(|ev| self.shape(ev))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Synced,
    Unsynced,
    Doomed { compact_rev: i64 },
}

struct Watcher {
    interest: Interest,
    sink: HubSink,
    /// The first revision this watcher has not been handed yet. For a synced watcher the real
    /// position is `max(next_rev, notified_rev + 1)`: `notify` does not advance it.
    next_rev: i64,
    phase: Phase,
}

#[derive(Default)]
struct HubState {
    /// The last revision handed to `notify`; every revision up to it is readable from history.
    notified_rev: i64,
    watchers: HashMap<HubWatcherId, Watcher>,
    /// Synced watchers of a single key, by key.
    synced_keys: HashMap<Vec<u8>, Vec<HubWatcherId>>,
    /// Synced watchers of a range; scanned for every event.
    synced_ranges: BTreeSet<HubWatcherId>,
    unsynced: BTreeSet<HubWatcherId>,
    doomed: BTreeSet<HubWatcherId>,
    /// Where the next catch-up pass starts in `unsynced`, so every watcher gets its turn.
    sync_cursor: Option<HubWatcherId>,
    slow_total: u64,
    events_sent: u64,
}

/// The result of offering a message to a sink.
enum Offer {
    Sent,
    Full,
    Closed,
}

fn offer(sink: &HubSink, msg: HubEvent) -> Offer {
    match sink.try_send(msg) {
        Ok(()) => Offer::Sent,
        Err(TrySendError::Full(_)) => Offer::Full,
        Err(TrySendError::Closed(_)) => Offer::Closed,
    }
}

impl HubState {
    fn unindex(&mut self, id: HubWatcherId) {
        let Some(w) = self.watchers.get(&id) else {
            return;
        };
        match w.phase {
            Phase::Synced => match &w.interest.range {
                KeyRange::Key(key) => {
                    if let Some(ids) = self.synced_keys.get_mut(key) {
                        ids.retain(|other| *other != id);
                        if ids.is_empty() {
                            self.synced_keys.remove(key);
                        }
                    }
                }
                _ => {
                    self.synced_ranges.remove(&id);
                }
            },
            Phase::Unsynced => {
                self.unsynced.remove(&id);
            }
            Phase::Doomed { .. } => {
                self.doomed.remove(&id);
            }
        }
    }

    fn set_phase(&mut self, id: HubWatcherId, phase: Phase) {
        self.unindex(id);
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        w.phase = phase;
        match phase {
            Phase::Synced => match &w.interest.range {
                KeyRange::Key(key) => self.synced_keys.entry(key.clone()).or_default().push(id),
                _ => {
                    self.synced_ranges.insert(id);
                }
            },
            Phase::Unsynced => {
                self.unsynced.insert(id);
            }
            Phase::Doomed { .. } => {
                self.doomed.insert(id);
            }
        }
    }

    fn remove(&mut self, id: HubWatcherId) -> bool {
        self.unindex(id);
        self.watchers.remove(&id).is_some()
    }

    /// Tells a watcher its history is compacted, or leaves it doomed until its sink has room.
    fn doom(&mut self, id: HubWatcherId, compact_rev: i64) {
        self.set_phase(id, Phase::Doomed { compact_rev });
        self.deliver_doom(id);
    }

    /// Offers a doomed watcher its `Compacted` message; returns whether it is gone now.
    fn deliver_doom(&mut self, id: HubWatcherId) -> bool {
        let Some(w) = self.watchers.get(&id) else {
            return true;
        };
        let Phase::Doomed { compact_rev } = w.phase else {
            return false;
        };
        match offer(
            &w.sink,
            HubEvent::Compacted {
                id,
                compact_revision: compact_rev,
            },
        ) {
            Offer::Sent | Offer::Closed => {
                self.remove(id);
                true
            }
            Offer::Full => false,
        }
    }

    /// Watchers that could miss revisions `from_rev..` (handed to `notify` out of order, or
    /// skipped) leave the synced state and catch up from history instead.
    fn desync_from(&mut self, from_rev: i64) {
        let synced: Vec<HubWatcherId> = self
            .synced_keys
            .values()
            .flatten()
            .chain(self.synced_ranges.iter())
            .copied()
            .collect();
        for id in synced {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = w.next_rev.max(from_rev);
                self.set_phase(id, Phase::Unsynced);
            }
        }
    }
}

/// Fans published revisions out to watchers. Shared by the apply thread (which calls
/// [`notify`](WatchHub::notify) and [`compacted`](WatchHub::compacted)), the gRPC watch streams,
/// and the catch-up task.
pub struct WatchHub {
    history: Arc<dyn History>,
    state: Mutex<HubState>,
    /// Wakes the catch-up task early (a watcher starting in the past was registered).
    wake: tokio::sync::Notify,
    next_id: AtomicU64,
    /// Client streams open on the hub (see [`WatchHub::open_stream`]).
    streams: AtomicU64,
    /// Events the client streams took from their sinks (see [`WatchHub::events_received`]).
    events_received: AtomicU64,
}

/// One open client watch stream, counted by its hub until dropped.
pub struct OpenStream(Arc<WatchHub>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WatchHub {
    /// A hub reading history from `mvcc`. Revisions up to the store's current revision count as
    /// already notified.
    pub fn new(mvcc: Arc<MvccStore>) -> Arc<WatchHub> {
        WatchHub::with_history(mvcc)
    }

    /// A hub over any history source.
    pub fn with_history(history: Arc<dyn History>) -> Arc<WatchHub> {
        let state = HubState {
            notified_rev: history.current_revision(),
            ..HubState::default()
        };
        Arc::new(WatchHub {
            history,
            state: Mutex::new(state),
            wake: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(1),
            streams: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves the maps consistent (every mutation is a single
        // step on them), so carrying on is safe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the events of published revision `rev` to the synced watchers that want them.
    /// Called by the apply thread once per revision, in order, after the revision is readable
    /// from MVCC; `events` carry `prev_kv` (it is stripped for watchers that did not ask).
    /// Never blocks on a watcher: a full sink makes that watcher unsynced.
    pub fn notify(&self, rev: i64, events: &[Event]) {
        let mut st = self.state();
        if rev <= st.notified_rev {
            tracing::warn!(
                revision = rev,
                notified = st.notified_rev,
                "watch notify for an old revision ignored"
            );
            return;
        }
        if rev > st.notified_rev + 1 {
            // Revisions were skipped (e.g. a snapshot was installed); history has them.
            let first_missing = st.notified_rev + 1;
            tracing::warn!(
                revision = rev,
                first_missing,
                "watch notify skipped revisions; watchers catch up from history"
            );
            st.desync_from(first_missing);
            st.notified_rev = rev;
            drop(st);
            self.wake.notify_one();
            return;
        }
        st.notified_rev = rev;

        let mut batches: HashMap<HubWatcherId, Vec<Event>> = HashMap::new();
        let mut add = |st: &HubState, id: HubWatcherId, ev: &Event| {
            if let Some(w) = st.watchers.get(&id)
                && rev >= w.next_rev
                && w.interest.wants(ev)
            {
                batches.entry(id).or_default().push(w.interest.shape(ev));
            }
        };
        for ev in events {
            let Some(kv) = ev.kv.as_ref() else {
                continue;
            };
            if let Some(ids) = st.synced_keys.get(&kv.key) {
                for id in ids {
                    add(&st, *id, ev);
                }
            }
            for id in &st.synced_ranges {
                add(&st, *id, ev);
            }
        }

        let mut slowed = 0usize;
        for (id, events) in batches {
            let Some(w) = st.watchers.get_mut(&id) else {
                continue;
            };
            let count = events.len() as u64;
            match offer(
                &w.sink,
                HubEvent::Events {
                    id,
                    revision: rev,
                    events,
                },
            ) {
                Offer::Sent => st.events_sent += count,
                Offer::Full => {
                    w.next_rev = rev;
                    st.set_phase(id, Phase::Unsynced);
                    st.slow_total += 1;
                    slowed += 1;
                }
                Offer::Closed => {
                    st.remove(id);
                }
            }
        }
        drop(st);
        if slowed > 0 {
            tracing::debug!(revision = rev, slowed, "slow watchers moved to catch-up");
        }
    }

    /// The store was replaced by a raft snapshot at revision `rev` (compacted at `compact_rev`):
    /// every synced watcher catches up from the new history, and watchers needing revisions
    /// that are gone are cancelled as compacted.
    pub fn restored(&self, rev: i64, compact_rev: i64) {
        {
            let mut st = self.state();
            let from = st.notified_rev + 1;
            st.desync_from(from);
            st.notified_rev = rev;
        }
        if compact_rev > 0 {
            self.compacted(compact_rev);
        }
        self.wake.notify_one();
    }

    /// The store compacted history below `compact_rev`: watchers still needing revisions below
    /// it are cancelled with [`HubEvent::Compacted`].
    pub fn compacted(&self, compact_rev: i64) {
        let mut st = self.state();
        let victims: Vec<HubWatcherId> = st
            .unsynced
            .iter()
            .filter(|id| {
                st.watchers
                    .get(id)
                    .is_some_and(|w| w.next_rev < compact_rev)
            })
            .copied()
            .collect();
        for id in victims {
            st.doom(id, compact_rev);
        }
    }

    /// Registers a watcher that sends its events to `sink`. A start revision at or below the last
    /// notified revision is served from history first; one below the compaction point gets
    /// [`HubEvent::Compacted`] at once.
    pub fn watch(&self, spec: WatchSpec, sink: HubSink) -> HubWatcherId {
        let id = HubWatcherId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let interest = Interest {
            range: KeyRange::new(spec.key, spec.range_end),
            prev_kv: spec.prev_kv,
            no_put: spec.no_put,
            no_delete: spec.no_delete,
        };
        let mut st = self.state();
        let start_rev = if spec.start_rev > 0 {
            spec.start_rev
        } else {
            // Callers resolve "now" themselves; this is only a safe fallback.
            self.history.current_revision().max(st.notified_rev) + 1
        };
        let compact_rev = self.history.compact_revision();
        // A placeholder phase; set_phase indexes the watcher.
        let phase = Phase::Unsynced;
        st.watchers.insert(
            id,
            Watcher {
                interest,
                sink,
                next_rev: start_rev,
                phase,
            },
        );
        st.unsynced.insert(id);
        if start_rev > st.notified_rev {
            st.set_phase(id, Phase::Synced);
        } else if start_rev < compact_rev {
            st.doom(id, compact_rev);
        } else {
            drop(st);
            self.wake.notify_one();
        }
        id
    }

    /// Removes a watcher; returns whether it existed. Messages already in its sink stay there.
    pub fn cancel(&self, id: HubWatcherId) -> bool {
        self.state().remove(id)
    }

    /// Sends `Progress { id: Some(id), revision }` through the watcher's sink if it is synced and
    /// its sink has room; returns whether it was sent.
    pub fn request_progress(&self, id: HubWatcherId) -> bool {
        let st = self.state();
        let Some(w) = st.watchers.get(&id) else {
            return false;
        };
        if w.phase != Phase::Synced {
            return false;
        }
        let msg = HubEvent::Progress {
            id: Some(id),
            revision: st.notified_rev,
        };
        matches!(offer(&w.sink, msg), Offer::Sent)
    }

    /// Sends `Progress { id: None, revision }` through `sink` if every watcher in `ids` that still
    /// exists is synced; returns whether it was sent. Because the message travels behind the
    /// watchers' events in the same sink, it is ordered after every event up to `revision`.
    pub fn request_progress_all(&self, ids: &[HubWatcherId], sink: &HubSink) -> bool {
        let st = self.state();
        let all_synced = ids
            .iter()
            .all(|id| st.watchers.get(id).is_none_or(|w| w.phase == Phase::Synced));
        if !all_synced {
            return false;
        }
        let msg = HubEvent::Progress {
            id: None,
            revision: st.notified_rev,
        };
        matches!(offer(sink, msg), Offer::Sent)
    }

    /// Whether the watcher exists and is synced.
    pub fn is_synced(&self, id: HubWatcherId) -> bool {
        self.state()
            .watchers
            .get(&id)
            .is_some_and(|w| w.phase == Phase::Synced)
    }

    /// The last revision handed to [`notify`](WatchHub::notify).
    pub fn notified_revision(&self) -> i64 {
        self.state().notified_rev
    }

    /// Counts a client stream as open until the returned value is dropped.
    pub fn open_stream(self: &Arc<Self>) -> OpenStream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.clone())
    }

    /// A client stream took `n` events from its sink (etcd's `ReportEventReceived`).
    pub fn events_received(&self, n: usize) {
        self.events_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> HubStats {
        let st = self.state();
        HubStats {
            streams: self.streams.load(Ordering::Relaxed),
            events_sent: st.events_sent,
            events_received: self.events_received.load(Ordering::Relaxed),
            synced: st.synced_ranges.len() + st.synced_keys.values().map(Vec::len).sum::<usize>(),
            unsynced: st.unsynced.len(),
            doomed: st.doomed.len(),
            slow_total: st.slow_total,
            notified_rev: st.notified_rev,
        }
    }
}
