//! Watch hub tests over an in-memory history: routing and filters, catch-up, slow consumers,
//! compaction, progress, and ordering under concurrent writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::proto::mvccpb::KeyValue;

/// History kept in memory, written by the test the way the apply thread would.
#[derive(Default)]
struct MemHistory {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    current: i64,
    compact: i64,
    revs: BTreeMap<i64, Vec<Event>>,
    /// Per key: revision → value then (None = deleted).
    versions: HashMap<Vec<u8>, BTreeMap<i64, Option<KeyValue>>>,
}

impl MemInner {
    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        self.versions
            .get(key)
            .and_then(|v| v.values().next_back().cloned().flatten())
    }
}

impl MemHistory {
    fn new() -> Arc<MemHistory> {
        let h = MemHistory::default();
        h.inner.lock().unwrap().current = 1;
        Arc::new(h)
    }

    /// Writes one revision of puts (value) and deletes (None); returns it with prev_kv filled.
    fn write(&self, changes: &[(&[u8], Option<&[u8]>)]) -> (i64, Vec<Event>) {
        let mut m = self.inner.lock().unwrap();
        let rev = m.current + 1;
        let mut events = Vec::new();
        for (key, value) in changes {
            let prev = m.latest(key);
            let (ev, now) = match value {
                Some(value) => {
                    let kv = KeyValue {
                        key: key.to_vec(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: value.to_vec(),
                        lease: 0,
                    };
                    let ev = Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv.clone()),
                        prev_kv: prev,
                    };
                    (ev, Some(kv))
                }
                None => {
                    let kv = KeyValue {
                        key: key.to_vec(),
                        mod_revision: rev,
                        ..KeyValue::default()
                    };
                    (
                        Event {
                            r#type: EventType::Delete as i32,
                            kv: Some(kv),
                            prev_kv: prev,
                        },
                        None,
                    )
                }
            };
            m.versions.entry(key.to_vec()).or_default().insert(rev, now);
            events.push(ev);
        }
        let stored = events
            .iter()
            .map(|e| Event {
                prev_kv: None,
                ..e.clone()
            })
            .collect();
        m.revs.insert(rev, stored);
        m.current = rev;
        (rev, events)
    }

    fn compact(&self, rev: i64) {
        let mut m = self.inner.lock().unwrap();
        m.compact = rev;
        m.revs = m.revs.split_off(&rev);
    }
}

impl History for MemHistory {
    fn current_revision(&self) -> i64 {
        self.inner.lock().unwrap().current
    }

    fn compact_revision(&self) -> i64 {
        self.inner.lock().unwrap().compact
    }

    fn events_since(
        &self,
        from_rev: i64,
        to_rev: i64,
        revs_max: usize,
    ) -> Result<Vec<(i64, Vec<Event>)>, HistoryError> {
        let m = self.inner.lock().unwrap();
        if from_rev < m.compact {
            return Err(HistoryError::Compacted {
                requested: from_rev,
                compacted: m.compact,
            });
        }
        Ok(m.revs
            .range(from_rev..=to_rev)
            .take(revs_max)
            .map(|(r, e)| (*r, e.clone()))
            .collect())
    }

    fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, HistoryError> {
        let m = self.inner.lock().unwrap();
        if rev < m.compact {
            return Err(HistoryError::Compacted {
                requested: rev,
                compacted: m.compact,
            });
        }
        Ok(m.versions
            .get(key)
            .and_then(|v| v.range(..=rev).next_back().and_then(|(_, kv)| kv.clone())))
    }
}

struct Fixture {
    history: Arc<MemHistory>,
    hub: Arc<WatchHub>,
}

impl Fixture {
    fn new() -> Fixture {
        let history = MemHistory::new();
        let hub = WatchHub::with_history(history.clone());
        Fixture { history, hub }
    }

    fn write(&self, changes: &[(&[u8], Option<&[u8]>)]) -> i64 {
        let (rev, events) = self.history.write(changes);
        self.hub.notify(rev, &events);
        rev
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        self.write(&[(key.as_bytes(), Some(value.as_bytes()))])
    }

    fn delete(&self, key: &str) -> i64 {
        self.write(&[(key.as_bytes(), None)])
    }

    fn watch(&self, spec: WatchSpec, capacity: usize) -> (HubWatcherId, mpsc::Receiver<HubEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (self.hub.watch(spec, tx), rx)
    }
}

fn spec(key: &str, range_end: &[u8], start_rev: i64) -> WatchSpec {
    WatchSpec {
        key: key.as_bytes().to_vec(),
        range_end: range_end.to_vec(),
        start_rev,
        prev_kv: false,
        no_put: false,
        no_delete: false,
    }
}

/// Drains everything queued on `rx` as (revision, key, type, prev value) tuples.
fn drain(rx: &mut mpsc::Receiver<HubEvent>) -> Vec<(i64, String, i32, Option<String>)> {
    let mut out = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let HubEvent::Events { events, .. } = msg {
            for ev in events {
                let kv = ev.kv.unwrap();
                let prev = ev.prev_kv.map(|p| String::from_utf8(p.value).unwrap());
                out.push((
                    kv.mod_revision,
                    String::from_utf8(kv.key).unwrap(),
                    ev.r#type,
                    prev,
                ));
            }
        }
    }
    out
}

fn keys(events: &[(i64, String, i32, Option<String>)]) -> Vec<&str> {
    events.iter().map(|e| e.1.as_str()).collect()
}

const PUT: i32 = EventType::Put as i32;
const DEL: i32 = EventType::Delete as i32;

#[test]
fn live_events_reach_matching_watchers_only() {
    let f = Fixture::new();
    let now = f.history.current_revision() + 1;
    let (_, mut single) = f.watch(spec("a", b"", now), 16);
    let (_, mut prefix) = f.watch(spec("a", b"b", now), 16);
    let (_, mut from_b) = f.watch(spec("b", b"\0", now), 16);
    let (_, mut all) = f.watch(spec("\0", b"\0", now), 16);
    let (_, mut no_put) = f.watch(
        WatchSpec {
            no_put: true,
            ..spec("a", b"b", now)
        },
        16,
    );
    let (_, mut no_del) = f.watch(
        WatchSpec {
            no_delete: true,
            ..spec("a", b"b", now)
        },
        16,
    );

    f.put("a", "1");
    f.put("ab", "2");
    f.put("b", "3");
    f.put("zz", "4");
    f.delete("a");

    assert_eq!(keys(&drain(&mut single)), ["a", "a"]);
    assert_eq!(keys(&drain(&mut prefix)), ["a", "ab", "a"]);
    assert_eq!(keys(&drain(&mut from_b)), ["b", "zz"]);
    assert_eq!(keys(&drain(&mut all)), ["a", "ab", "b", "zz", "a"]);
    let dels = drain(&mut no_put);
    assert_eq!(dels.iter().map(|e| e.2).collect::<Vec<_>>(), [DEL]);
    let puts = drain(&mut no_del);
    assert_eq!(puts.iter().map(|e| e.2).collect::<Vec<_>>(), [PUT, PUT]);
    assert_eq!(f.hub.stats().synced, 6);
}

#[test]
fn one_revision_is_one_message_and_prev_kv_only_when_asked() {
    let f = Fixture::new();
    f.put("k", "old");
    let now = f.history.current_revision() + 1;
    let (_, mut with_prev) = f.watch(
        WatchSpec {
            prev_kv: true,
            ..spec("k", b"l", now)
        },
        16,
    );
    let (_, mut without) = f.watch(spec("k", b"l", now), 16);
    let rev = f.write(&[(b"k", Some(b"new")), (b"k2", Some(b"x"))]);

    match with_prev.try_recv().unwrap() {
        HubEvent::Events {
            revision, events, ..
        } => {
            assert_eq!(revision, rev);
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"old");
            assert!(
                events[1].prev_kv.is_none(),
                "a creation has no previous value"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(drain(&mut without).iter().all(|e| e.3.is_none()));
}

#[test]
fn a_future_start_revision_waits_for_it() {
    let f = Fixture::new();
    let (_, mut rx) = f.watch(spec("k", b"", 4), 16);
    f.put("k", "2");
    f.put("k", "3");
    f.put("k", "4");
    f.put("k", "5");
    assert_eq!(
        drain(&mut rx).iter().map(|e| e.0).collect::<Vec<_>>(),
        [4, 5]
    );
}

#[test]
fn cancel_stops_delivery() {
    let f = Fixture::new();
    let (id, mut rx) = f.watch(spec("k", b"", 2), 16);
    f.put("k", "1");
    assert!(f.hub.cancel(id));
    assert!(!f.hub.cancel(id));
    f.put("k", "2");
    assert_eq!(drain(&mut rx).len(), 1);
    assert_eq!(
        f.hub.stats(),
        HubStats {
            notified_rev: 3,
            events_sent: 1,
            ..HubStats::default()
        }
    );
}

#[tokio::test]
async fn catch_up_from_history_then_live_without_gap_or_duplicate() {
    let f = Fixture::new();
    for i in 0..10 {
        f.put("k", &format!("v{i}"));
    }
    let (id, mut rx) = f.watch(
        WatchSpec {
            prev_kv: true,
            ..spec("k", b"", 3)
        },
        16,
    );
    assert!(!f.hub.is_synced(id));
    f.put("k", "during");
    f.hub.sync_pass().await;
    assert!(f.hub.is_synced(id));
    f.put("k", "after");
    let got = drain(&mut rx);
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        (3..=13).collect::<Vec<_>>()
    );
    // prev_kv filled from history during catch-up, from the live event afterwards.
    assert_eq!(got[0].3.as_deref(), Some("v0"));
    assert_eq!(got.last().unwrap().3.as_deref(), Some("during"));
}

#[tokio::test]
async fn long_catch_up_is_chunked_and_respects_filters() {
    let f = Fixture::new();
    let total = (sync::CHUNK_REVS * 3) as i64;
    for i in 0..total {
        if i % 2 == 0 {
            f.put("k", "v")
        } else {
            f.delete("k")
        };
    }
    let (id, mut rx) = f.watch(
        WatchSpec {
            no_delete: true,
            ..spec("k", b"", 2)
        },
        1024,
    );
    let mut passes = 0;
    while !f.hub.is_synced(id) {
        f.hub.sync_pass().await;
        passes += 1;
        assert!(passes < 10);
    }
    let got = drain(&mut rx);
    assert_eq!(got.len() as i64, total / 2);
    assert!(got.iter().all(|e| e.2 == PUT));
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test]
async fn slow_consumer_does_not_block_notify_and_catches_up_in_order() {
    let f = Fixture::new();
    let (id, mut rx) = f.watch(spec("k", b"", 2), 2);
    let (_, mut fast) = f.watch(spec("k", b"", 2), 4096);
    let started = Instant::now();
    let writes = 2000;
    for i in 0..writes {
        f.put("k", &i.to_string());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "notify waited on a slow watcher"
    );
    assert!(!f.hub.is_synced(id));
    assert_eq!(f.hub.stats().slow_total, 1);
    assert_eq!(drain(&mut fast).len(), writes);

    let mut revs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while revs.len() < writes {
        assert!(
            Instant::now() < deadline,
            "catch-up stalled at {} events",
            revs.len()
        );
        revs.extend(drain(&mut rx).into_iter().map(|e| e.0));
        f.hub.sync_pass().await;
    }
    revs.extend(drain(&mut rx).into_iter().map(|e| e.0));
    assert_eq!(revs, (2..2 + writes as i64).collect::<Vec<_>>());
    assert!(f.hub.is_synced(id));
}

#[tokio::test]
async fn compaction_cancels_watchers_that_need_compacted_history() {
    let f = Fixture::new();
    for i in 0..10 {
        f.put("k", &i.to_string());
    }
    f.history.compact(6);
    f.hub.compacted(6);

    // Starting below the compaction point: cancelled right away.
    let (id, mut rx) = f.watch(spec("k", b"", 3), 4);
    assert_eq!(
        rx.try_recv().unwrap(),
        HubEvent::Compacted {
            id,
            compact_revision: 6
        }
    );
    // At the compaction point: served.
    let (at, mut rx_at) = f.watch(spec("k", b"", 6), 16);
    f.hub.sync_pass().await;
    assert!(f.hub.is_synced(at));
    assert_eq!(drain(&mut rx_at).first().map(|e| e.0), Some(6));

    // A slow watcher that falls behind a later compaction is cancelled once its sink has room.
    let (slow, mut rx_slow) = f.watch(spec("k", b"", 12), 1);
    f.put("k", "a");
    f.put("k", "b");
    f.put("k", "c");
    assert!(!f.hub.is_synced(slow));
    f.history.compact(14);
    f.hub.compacted(14);
    assert_eq!(f.hub.stats().doomed, 1);
    assert!(matches!(
        rx_slow.try_recv().unwrap(),
        HubEvent::Events { revision: 12, .. }
    ));
    f.hub.sync_pass().await;
    assert_eq!(
        rx_slow.try_recv().unwrap(),
        HubEvent::Compacted {
            id: slow,
            compact_revision: 14
        }
    );
    assert_eq!(f.hub.stats().doomed, 0);
    assert!(!f.hub.cancel(slow));
}

#[tokio::test]
async fn progress_is_sent_only_when_synced_and_after_pending_events() {
    let f = Fixture::new();
    for i in 0..5 {
        f.put("k", &i.to_string());
    }
    let (tx, mut rx) = mpsc::channel(16);
    let live = f.hub.watch(spec("k", b"", 7), tx.clone());
    let behind = f.hub.watch(spec("k", b"", 2), tx.clone());
    assert!(f.hub.request_progress(live));
    assert_eq!(
        rx.try_recv().unwrap(),
        HubEvent::Progress {
            id: Some(live),
            revision: 6
        }
    );
    assert!(!f.hub.request_progress(behind));
    assert!(!f.hub.request_progress_all(&[live, behind], &tx));

    f.hub.sync_pass().await;
    assert!(f.hub.request_progress_all(&[live, behind], &tx));
    let msgs: Vec<HubEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(matches!(msgs[0], HubEvent::Events { id, revision: 6, .. } if id == behind));
    assert_eq!(
        msgs[1],
        HubEvent::Progress {
            id: None,
            revision: 6
        }
    );
    // No watchers at all: trivially synced.
    assert!(f.hub.request_progress_all(&[], &tx));
}

#[tokio::test]
async fn skipped_notifications_are_caught_up_from_history() {
    let f = Fixture::new();
    let (id, mut rx) = f.watch(spec("k", b"", 2), 16);
    f.put("k", "1");
    // Two revisions reach history without notify, then notify resumes.
    f.history.write(&[(b"k", Some(b"2"))]);
    f.history.write(&[(b"k", Some(b"3"))]);
    f.put("k", "4");
    assert!(!f.hub.is_synced(id));
    f.hub.sync_pass().await;
    assert!(f.hub.is_synced(id));
    f.put("k", "5");
    assert_eq!(
        drain(&mut rx).iter().map(|e| e.0).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_holds_under_concurrent_notify_and_catch_up() {
    let f = Arc::new(Fixture::new());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let sync = tokio::spawn(f.hub.clone().run_sync(shutdown_rx));

    let writes: i64 = 3000;
    let writer = {
        let f = f.clone();
        std::thread::spawn(move || {
            for i in 0..writes {
                f.put(&format!("k{}", i % 7), "v");
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };

    // Watchers registered while writes run, starting in the past, now, and the future, with
    // tiny and roomy sinks, read at different speeds.
    let mut readers = Vec::new();
    for n in 0..12i64 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let current = f.history.current_revision();
        let start = match n % 3 {
            0 => 2 + n * 37,
            1 => current + 1,
            _ => current + 50,
        };
        let capacity = if n % 2 == 0 { 1 } else { 256 };
        let (_, mut rx) = f.watch(spec("k", b"l", start), capacity);
        let slow = n % 4 == 0;
        readers.push(tokio::spawn(async move {
            let mut next = start;
            let last = writes + 1;
            while next <= last {
                let msg = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                    .await
                    .expect("watcher starved")
                    .expect("sink open");
                if let HubEvent::Events {
                    events, revision, ..
                } = msg
                {
                    for ev in events {
                        let rev = ev.kv.unwrap().mod_revision;
                        assert_eq!(rev, next, "gap or duplicate (watch from {start})");
                        next += 1;
                    }
                    assert!(revision >= next - 1);
                }
                if slow {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            start
        }));
    }
    writer.join().unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let stats = f.hub.stats();
    eprintln!("{stats:?}");
    assert!(
        stats.slow_total > 0,
        "the test should exercise slow watchers"
    );
    shutdown_tx.send(true).unwrap();
    sync.await.unwrap();
}
