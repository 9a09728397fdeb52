//! Tests of the MVCC store against a real RocksDB in a temporary directory: revision and
//! version rules, ranges, history, compaction, restart, watch history, hashes, staging.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::storage::{Batch, Cf, Engine};

fn open(dir: &Path) -> MvccStore {
    MvccStore::open(Engine::open(dir, false).unwrap()).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Put(&'static str, &'static str),
    PutLease(&'static str, &'static str, i64),
    /// Delete a single key.
    Del(&'static str),
    /// Delete `[key, range_end)` in etcd's convention.
    DelRange(&'static str, &'static str),
}

fn run_ops(txn: &mut WriteTxn<'_>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Put(k, v) => {
                txn.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
            }
            Op::PutLease(k, v, lease) => {
                txn.put(k.as_bytes(), v.as_bytes(), lease).unwrap();
            }
            Op::Del(k) => {
                txn.delete_range(k.as_bytes(), b"").unwrap();
            }
            Op::DelRange(k, end) => {
                txn.delete_range(k.as_bytes(), end.as_bytes()).unwrap();
            }
        }
    }
}

/// One write txn, written and published.
fn apply(store: &MvccStore, ops: &[Op]) -> TxnOutcome {
    let mut txn = store.write_txn();
    run_ops(&mut txn, ops);
    let mut batch = Batch::new();
    let pending = txn.finish(&mut batch);
    store.engine().write(batch, false).unwrap();
    store.publish(pending)
}

fn compact_now(store: &MvccStore, rev: i64) -> Result<CompactJob, MvccError> {
    let mut batch = Batch::new();
    let job = store.compact(rev, &mut batch)?;
    store.engine().write(batch, false).unwrap();
    assert_eq!(store.publish_compaction(&job), rev);
    Ok(job)
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

/// (create_revision, mod_revision, version, value) of `key` now.
fn state(store: &MvccStore, key: &str) -> Option<(i64, i64, i64, String)> {
    store.get_at(key.as_bytes(), 0).unwrap().map(|kv| {
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            String::from_utf8(kv.value).unwrap(),
        )
    })
}

/// Every revision key in the kv column family, as (main, sub, tombstone).
fn disk_revisions(store: &MvccStore) -> Vec<(i64, i64, bool)> {
    store
        .engine()
        .scan(Cf::Kv, &[], None)
        .map(|item| {
            let (k, _) = item.unwrap();
            let (rev, tomb) = decode_rev_key(&k).unwrap();
            (rev.main, rev.sub, tomb)
        })
        .collect()
}

#[test]
fn revisions_versions_and_create_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.current_revision(),
        1,
        "an empty store is at revision 1"
    );
    assert_eq!(store.compact_revision(), -1);

    type Want = Option<(i64, i64, i64, &'static str)>;
    // (ops, revision after, state of "foo" after, number of events)
    let table: &[(&[Op], i64, Want, usize)] = &[
        (&[], 1, None, 0),
        (&[Op::Put("foo", "a")], 2, Some((2, 2, 1, "a")), 1),
        (&[Op::Put("foo", "b")], 3, Some((2, 3, 2, "b")), 1),
        (&[Op::Del("foo")], 4, None, 1),
        (&[Op::Del("foo")], 4, None, 0),
        (&[Op::DelRange("a", "z")], 4, None, 0),
        (&[Op::Put("foo", "c")], 5, Some((5, 5, 1, "c")), 1),
        (
            &[Op::Put("foo", "d"), Op::Put("bar", "x")],
            6,
            Some((5, 6, 2, "d")),
            2,
        ),
        (
            &[Op::Put("foo", "e"), Op::Put("foo", "f")],
            7,
            Some((5, 7, 4, "f")),
            2,
        ),
        (&[Op::Put("foo", "g"), Op::Del("foo")], 8, None, 2),
        (
            &[Op::Del("bar"), Op::Put("foo", "h")],
            9,
            Some((9, 9, 1, "h")),
            2,
        ),
    ];
    for (i, (ops, rev, want, events)) in table.iter().enumerate() {
        let out = apply(&store, ops);
        assert_eq!(out.rev, *rev, "step {i}: outcome revision");
        assert_eq!(store.current_revision(), *rev, "step {i}: store revision");
        assert_eq!(out.events.len(), *events, "step {i}: events");
        let got = state(&store, "foo");
        let want = want.map(|(c, m, v, val)| (c, m, v, val.to_owned()));
        assert_eq!(got, want, "step {i}: foo");
    }
}

#[test]
fn events_carry_kv_and_prev_kv() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, &[Op::PutLease("k", "v1", 7)]);
    let out = apply(
        &store,
        &[Op::Put("k", "v2"), Op::Put("n", "x"), Op::Del("k")],
    );
    assert_eq!(out.rev, 3);
    let summary: Vec<(i32, String, i64, Option<(String, i64)>)> = out
        .events
        .iter()
        .map(|e: &Event| {
            let kv = e.kv.clone().unwrap();
            (
                e.r#type,
                String::from_utf8(kv.key).unwrap(),
                kv.mod_revision,
                e.prev_kv
                    .clone()
                    .map(|p| (String::from_utf8(p.value).unwrap(), p.lease)),
            )
        })
        .collect();
    let put = EventType::Put as i32;
    let del = EventType::Delete as i32;
    assert_eq!(
        summary,
        vec![
            (put, "k".to_owned(), 3, Some(("v1".to_owned(), 7))),
            (put, "n".to_owned(), 3, None),
            (del, "k".to_owned(), 3, Some(("v2".to_owned(), 0))),
        ]
    );
    // Sub revisions order the changes of one txn; the tombstone's stored value is the bare key.
    assert_eq!(
        disk_revisions(&store),
        vec![(2, 0, false), (3, 0, false), (3, 1, false), (3, 2, true)]
    );
    let raw = store
        .engine()
        .get(Cf::Kv, &Revision::new(3, 2).to_key_vec(true))
        .unwrap()
        .unwrap();
    use prost::Message;
    assert_eq!(
        KeyValue::decode(raw.as_slice()).unwrap(),
        KeyValue {
            key: b"k".to_vec(),
            ..KeyValue::default()
        }
    );
}

/// a@2 ab@3 b@4 c@5, then b deleted at 6.
fn populate_ranges(store: &MvccStore) {
    for (k, v) in [("a", "1"), ("ab", "2"), ("b", "3"), ("c", "4")] {
        apply(store, &[Op::Put(k, v)]);
    }
    apply(store, &[Op::Del("b")]);
    assert_eq!(store.current_revision(), 6);
}

#[test]
fn ranges_single_prefix_from_key_all_limit_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populate_ranges(&store);
    // (key, range_end, rev, limit, keys, count)
    let table: &[(&str, &str, i64, usize, &[&str], usize)] = &[
        ("a", "", 0, 0, &["a"], 1),
        ("b", "", 0, 0, &[], 0),
        ("zz", "", 0, 0, &[], 0),
        ("a", "b", 0, 0, &["a", "ab"], 2),
        ("b", "\0", 0, 0, &["c"], 1),
        ("\0", "\0", 0, 0, &["a", "ab", "c"], 3),
        ("\0", "\0", 0, 2, &["a", "ab"], 3),
        ("\0", "\0", 0, 1, &["a"], 3),
        ("c", "a", 0, 0, &[], 0),
        ("\0", "\0", 6, 0, &["a", "ab", "c"], 3),
        ("\0", "\0", 5, 0, &["a", "ab", "b", "c"], 4),
        ("\0", "\0", 5, 3, &["a", "ab", "b"], 4),
        ("\0", "\0", 3, 0, &["a", "ab"], 2),
        ("b", "", 4, 0, &["b"], 1),
        ("\0", "\0", 1, 0, &[], 0),
    ];
    for &(key, end, rev, limit, want, count) in table {
        let r = store
            .range(key.as_bytes(), end.as_bytes(), rev, limit)
            .unwrap();
        assert_eq!(
            keys(&r.kvs),
            want,
            "range {key:?}..{end:?} at {rev} limit {limit}"
        );
        assert_eq!(r.count, count, "count {key:?}..{end:?} at {rev}");
        assert_eq!(r.rev, 6, "header revision is the current revision");
        let c = store.count(key.as_bytes(), end.as_bytes(), rev).unwrap();
        assert_eq!((c.count, c.kvs.len()), (count, 0));
    }
    assert!(matches!(
        store.range(b"a", b"", 7, 0),
        Err(MvccError::FutureRev {
            requested: 7,
            current: 6
        })
    ));
    let kv = store.get_at(b"b", 4).unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.version),
        (&b"3"[..], 4, 1)
    );
}

#[test]
fn historical_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for v in ["v1", "v2", "v3"] {
        apply(&store, &[Op::Put("k", v)]);
    }
    apply(&store, &[Op::Del("k")]);
    apply(&store, &[Op::Put("k", "v4")]);
    let table: &[(i64, Option<(&str, i64, i64, i64)>)] = &[
        (1, None),
        (2, Some(("v1", 2, 2, 1))),
        (3, Some(("v2", 2, 3, 2))),
        (4, Some(("v3", 2, 4, 3))),
        (5, None),
        (6, Some(("v4", 6, 6, 1))),
        (0, Some(("v4", 6, 6, 1))),
    ];
    for &(rev, want) in table {
        let got = store.get_at(b"k", rev).unwrap().map(|kv| {
            (
                String::from_utf8(kv.value).unwrap(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        });
        let want = want.map(|(v, c, m, ver)| (v.to_owned(), c, m, ver));
        assert_eq!(got, want, "k at {rev}");
    }
}

/// a@2 a@3 b@4 b deleted@5 c@6 a@7 c deleted@8.
fn populate_compaction(store: &MvccStore) {
    apply(store, &[Op::Put("a", "1")]);
    apply(store, &[Op::Put("a", "2")]);
    apply(store, &[Op::Put("b", "1")]);
    apply(store, &[Op::Del("b")]);
    apply(store, &[Op::Put("c", "1")]);
    apply(store, &[Op::Put("a", "3")]);
    apply(store, &[Op::Del("c")]);
    assert_eq!(store.current_revision(), 8);
}

#[test]
fn compaction_keeps_what_reads_at_or_above_need() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populate_compaction(&store);

    // (compact at, revisions left on disk as (main, tombstone))
    let table: &[(i64, &[(i64, bool)])] = &[
        // a@3 is a's latest ≤ 5; b's tombstone at exactly 5 stays for watchers at 5.
        (
            5,
            &[(3, false), (5, true), (6, false), (7, false), (8, true)],
        ),
        // a@3 is still a's latest ≤ 6; b's history is gone.
        (6, &[(3, false), (6, false), (7, false), (8, true)]),
        (8, &[(7, false), (8, true)]),
    ];
    for &(rev, left) in table {
        let before: Vec<_> = (rev..=8)
            .map(|r| store.range(b"\0", b"\0", r, 0).unwrap())
            .collect();
        let job = compact_now(&store, rev).unwrap();
        assert_eq!(store.compact_revision(), rev);
        // Reads at or above the compaction revision are unchanged, before and after the job.
        for (r, want) in (rev..=8).zip(&before) {
            assert_eq!(
                &store.range(b"\0", b"\0", r, 0).unwrap(),
                want,
                "read at {r}"
            );
        }
        let stats = job.run_with(store.engine(), 2, Duration::ZERO).unwrap();
        assert!(stats.batches >= 1);
        let got: Vec<(i64, bool)> = disk_revisions(&store)
            .iter()
            .map(|&(m, _, t)| (m, t))
            .collect();
        assert_eq!(got, left, "disk after compact at {rev}");
        for (r, want) in (rev..=8).zip(&before) {
            assert_eq!(
                &store.range(b"\0", b"\0", r, 0).unwrap(),
                want,
                "read at {r} after job"
            );
        }
        assert!(matches!(
            store.range(b"a", b"", rev - 1, 0),
            Err(MvccError::Compacted { compacted, .. }) if compacted == rev
        ));
        let finished = store
            .engine()
            .get(Cf::Meta, FINISHED_COMPACT_KEY)
            .unwrap()
            .unwrap();
        assert_eq!(finished, rev.to_be_bytes());
    }
    assert!(matches!(
        compact_now(&store, 8),
        Err(MvccError::Compacted {
            requested: 8,
            compacted: 8
        })
    ));
    assert!(matches!(
        compact_now(&store, 3),
        Err(MvccError::Compacted { .. })
    ));
    assert!(matches!(
        compact_now(&store, 9),
        Err(MvccError::FutureRev {
            requested: 9,
            current: 8
        })
    ));
    // Writes after compaction continue the history; deleted keys start new generations.
    apply(&store, &[Op::Put("c", "2"), Op::Put("a", "4")]);
    assert_eq!(state(&store, "c"), Some((9, 9, 1, "2".to_owned())));
    assert_eq!(state(&store, "a"), Some((2, 9, 4, "4".to_owned())));
    let job = compact_now(&store, 9).unwrap();
    job.run(store.engine()).unwrap();
    assert_eq!(disk_revisions(&store), vec![(9, 0, false), (9, 1, false)]);
    assert_eq!(
        keys(&store.range(b"\0", b"\0", 9, 0).unwrap().kvs),
        ["a", "c"]
    );
}

#[test]
fn restart_rebuilds_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = |store: &MvccStore| {
        let revs: Vec<_> = (store.compact_revision().max(1)..=store.current_revision())
            .map(|r| store.range(b"\0", b"\0", r, 0).unwrap())
            .collect();
        (
            store.current_revision(),
            store.compact_revision(),
            revs,
            store.hash_kv(0).unwrap(),
        )
    };
    let before = {
        let store = open(dir.path());
        populate_compaction(&store);
        apply(
            &store,
            &[Op::PutLease("l1", "x", 5), Op::PutLease("l2", "y", 6)],
        );
        apply(&store, &[Op::Put("l2", "z")]);
        compact_now(&store, 6).unwrap().run(store.engine()).unwrap();
        apply(&store, &[Op::DelRange("a", "b")]);
        snapshot(&store)
    };
    let store = open(dir.path());
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.current_revision(), 11);
    assert_eq!(store.compact_revision(), 6);
    assert_eq!(store.live_leases().unwrap(), vec![(5, b"l1".to_vec())]);
    // The rebuilt index continues versions and creation revisions correctly.
    apply(&store, &[Op::Put("l1", "again"), Op::Put("a", "new")]);
    assert_eq!(state(&store, "l1"), Some((9, 12, 2, "again".to_owned())));
    assert_eq!(state(&store, "a"), Some((12, 12, 1, "new".to_owned())));
}

#[test]
fn restart_finishes_a_scheduled_compaction() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        populate_compaction(&store);
        // Scheduled and durable, but neither published nor run: a crash right after the write.
        let mut batch = Batch::new();
        let _job = store.compact(6, &mut batch).unwrap();
        store.engine().write(batch, true).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.compact_revision(), 6);
    assert_eq!(store.current_revision(), 8);
    let left: Vec<(i64, bool)> = disk_revisions(&store)
        .iter()
        .map(|&(m, _, t)| (m, t))
        .collect();
    assert_eq!(left, [(3, false), (6, false), (7, false), (8, true)]);
    assert!(matches!(
        store.range(b"a", b"", 5, 0),
        Err(MvccError::Compacted { .. })
    ));
    assert_eq!(
        keys(&store.range(b"\0", b"\0", 6, 0).unwrap().kvs),
        ["a", "c"]
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.current_revision(), store.compact_revision()), (8, 6));
}

#[test]
fn events_since_reads_history_by_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    populate_compaction(&store);
    apply(&store, &[Op::Put("x", "1"), Op::Put("y", "2")]);
    let summary = |groups: Vec<(i64, Vec<Event>)>| -> Vec<(i64, Vec<(i32, String, i64)>)> {
        groups
            .into_iter()
            .map(|(rev, events)| {
                let evs = events
                    .into_iter()
                    .map(|e| {
                        assert!(e.prev_kv.is_none());
                        let kv = e.kv.unwrap();
                        (
                            e.r#type,
                            String::from_utf8(kv.key).unwrap(),
                            kv.mod_revision,
                        )
                    })
                    .collect();
                (rev, evs)
            })
            .collect()
    };
    let (put, del) = (EventType::Put as i32, EventType::Delete as i32);
    assert_eq!(
        summary(store.events_since(7, 100, 0).unwrap()),
        vec![
            (7, vec![(put, "a".to_owned(), 7)]),
            (8, vec![(del, "c".to_owned(), 8)]),
            (9, vec![(put, "x".to_owned(), 9), (put, "y".to_owned(), 9)]),
        ]
    );
    assert_eq!(
        summary(store.events_since(2, 9, 2).unwrap()),
        vec![
            (2, vec![(put, "a".to_owned(), 2)]),
            (3, vec![(put, "a".to_owned(), 3)])
        ]
    );
    assert_eq!(
        summary(store.events_since(4, 4, 0).unwrap()),
        vec![(4, vec![(put, "b".to_owned(), 4)])]
    );
    assert!(store.events_since(10, 20, 0).unwrap().is_empty());
    compact_now(&store, 5).unwrap().run(store.engine()).unwrap();
    assert!(matches!(
        store.events_since(4, 9, 0),
        Err(MvccError::Compacted { .. })
    ));
    // A watcher starting at the compaction revision still gets its deletes.
    assert_eq!(
        summary(store.events_since(5, 5, 0).unwrap()),
        vec![(5, vec![(del, "b".to_owned(), 5)])]
    );
}

#[test]
fn changes_are_invisible_until_published_and_staged_txns_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, &[Op::Put("a", "0")]);

    let mut batch = Batch::new();
    let mut t1 = store.write_txn();
    assert_eq!((t1.rev(), t1.read_rev()), (3, 2));
    t1.put(b"a", b"1", 0).unwrap();
    t1.put(b"b", b"1", 0).unwrap();
    assert_eq!(t1.read_rev(), 3);
    // The txn sees its own writes; a historical read at the previous revision does not.
    assert_eq!(keys(&t1.range(b"\0", b"\0", 0, 0).unwrap().kvs), ["a", "b"]);
    assert_eq!(keys(&t1.range(b"\0", b"\0", 2, 0).unwrap().kvs), ["a"]);
    assert!(matches!(
        t1.range(b"a", b"", 4, 0),
        Err(MvccError::FutureRev { .. })
    ));
    let p1 = t1.finish(&mut batch);

    // A later txn in the same batch sees the staged changes.
    let mut t2 = store.write_txn();
    assert_eq!(t2.rev(), 4);
    let a = t2.get(b"a").unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.version, a.create_revision),
        (&b"1"[..], 2, 2)
    );
    assert_eq!(keys(&t2.range(b"\0", b"\0", 3, 0).unwrap().kvs), ["a", "b"]);
    assert_eq!(keys(&t2.range(b"\0", b"\0", 2, 0).unwrap().kvs), ["a"]);
    let deleted = t2.delete_range(b"b", b"").unwrap();
    assert_eq!(keys(&deleted), ["b"]);
    t2.put(b"a", b"2", 0).unwrap();
    assert_eq!(t2.range(b"\0", b"\0", 0, 0).unwrap().count, 1);
    let p2 = t2.finish(&mut batch);
    let t3 = store.write_txn();
    let p3 = t3.finish(&mut batch);
    assert!(p3.is_empty());

    // Nothing is visible to readers until publish, even once the batch is written.
    store.engine().write(batch, false).unwrap();
    assert_eq!(store.current_revision(), 2);
    assert_eq!(keys(&store.range(b"\0", b"\0", 0, 0).unwrap().kvs), ["a"]);
    assert_eq!(store.get_at(b"a", 0).unwrap().unwrap().value, b"0");
    assert!(store.events_since(3, 10, 0).unwrap().is_empty());

    assert_eq!(store.publish(p1).rev, 3);
    assert_eq!(store.current_revision(), 3);
    assert_eq!(
        keys(&store.range(b"\0", b"\0", 0, 0).unwrap().kvs),
        ["a", "b"]
    );
    let out2 = store.publish(p2);
    assert_eq!((out2.rev, out2.events.len()), (4, 2));
    assert_eq!(store.publish(p3).rev, 4);
    assert_eq!(state(&store, "a"), Some((2, 4, 3, "2".to_owned())));
    assert_eq!(state(&store, "b"), None);
    // The next txn prunes the staged state and still reads correctly.
    let t4 = store.write_txn();
    assert_eq!(t4.get(b"a").unwrap().unwrap().version, 3);
    assert_eq!(t4.get(b"b").unwrap(), None);
}

#[test]
fn rollback_and_dropped_txns_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, &[Op::Put("a", "0")]);
    {
        let mut txn = store.write_txn();
        txn.put(b"x", b"1", 0).unwrap();
        // dropped without finish
    }
    let mut txn = store.write_txn();
    txn.put(b"b", b"1", 0).unwrap();
    let sp = txn.savepoint();
    txn.put(b"b", b"2", 0).unwrap();
    txn.delete_range(b"a", b"").unwrap();
    txn.rollback_to(sp);
    assert_eq!(txn.get(b"b").unwrap().unwrap().value, b"1");
    assert!(txn.get(b"a").unwrap().is_some());
    let mut batch = Batch::new();
    let pending = txn.finish(&mut batch);
    store.engine().write(batch, false).unwrap();
    let out = store.publish(pending);
    assert_eq!((out.rev, out.events.len()), (3, 1));
    assert_eq!(
        keys(&store.range(b"\0", b"\0", 0, 0).unwrap().kvs),
        ["a", "b"]
    );
}

#[test]
fn hashes_ignore_physical_compaction_progress() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s1 = open(d1.path());
    let s2 = open(d2.path());
    for s in [&s1, &s2] {
        populate_compaction(s);
        apply(s, &[Op::PutLease("l", "v", 3)]);
    }
    assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
    assert_eq!(s1.hash_all().unwrap(), s2.hash_all().unwrap());
    let before = s1.hash_kv(7).unwrap();
    assert_eq!(before.hash_rev, 7);
    // s1 finishes its compaction physically, s2 only publishes it.
    compact_now(&s1, 5).unwrap().run(s1.engine()).unwrap();
    let _job = compact_now(&s2, 5).unwrap();
    let h1 = s1.hash_kv(0).unwrap();
    assert_eq!(h1, s2.hash_kv(0).unwrap());
    assert_eq!((h1.compact_rev, h1.hash_rev, h1.current_rev), (5, 9, 9));
    assert_eq!(s1.hash_kv(6).unwrap(), s2.hash_kv(6).unwrap());
    // As etcd: hashing at the compaction revision itself is refused, like anything below it.
    assert!(matches!(s1.hash_kv(5), Err(MvccError::Compacted { .. })));
    assert!(matches!(s1.hash_kv(4), Err(MvccError::Compacted { .. })));
    assert!(matches!(s1.hash_kv(10), Err(MvccError::FutureRev { .. })));
    apply(&s1, &[Op::Put("z", "1")]);
    assert_ne!(s1.hash_kv(0).unwrap().hash, s2.hash_kv(0).unwrap().hash);
    assert_eq!(s1.hash_kv(9).unwrap().hash, s2.hash_kv(9).unwrap().hash);
}

#[test]
fn live_leases_lists_attached_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(
        &store,
        &[
            Op::PutLease("a", "1", 10),
            Op::PutLease("b", "1", 11),
            Op::Put("c", "1"),
        ],
    );
    apply(&store, &[Op::Put("b", "2"), Op::PutLease("d", "1", 10)]);
    apply(&store, &[Op::PutLease("e", "1", 12), Op::Del("e")]);
    let want = vec![(10, b"a".to_vec()), (10, b"d".to_vec())];
    assert_eq!(store.live_leases().unwrap(), want);
    // Reopened, the scan that rebuilds the index finds the same attachments.
    let engine = store.engine().clone();
    drop(store);
    let reopened = MvccStore::open(engine).unwrap();
    assert_eq!(reopened.take_restored_leases(), want);
    assert!(reopened.take_restored_leases().is_empty(), "taken once");
}

/// Readers racing the writer and a compactor always see a consistent prefix of history.
#[test]
fn concurrent_reads_see_consistent_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::Acquire) {
                    // Txn i (at revision i + 2) creates k<i> and overwrites "hot": at revision
                    // r > 1 there are r keys, and "hot" was last written at r.
                    let keys_at = |r: i64| if r <= 1 { 0 } else { r };
                    let r = store.range(b"\0", b"\0", 0, 0).unwrap();
                    assert_eq!(r.count as i64, keys_at(r.rev));
                    assert_eq!(r.kvs.len(), r.count);
                    for kv in &r.kvs {
                        assert!(kv.mod_revision <= r.rev);
                    }
                    if let Some(hot) = r.kvs.iter().find(|kv| kv.key == b"hot") {
                        assert_eq!((hot.mod_revision, hot.version), (r.rev, r.rev - 1));
                    }
                    // At least 1: a revision of 0 would mean "current".
                    let old = (r.rev / 2).max(1);
                    match store.range(b"\0", b"\0", old, 0) {
                        Ok(h) => assert_eq!(h.count as i64, keys_at(old)),
                        Err(MvccError::Compacted { .. }) => {}
                        Err(e) => panic!("historical read failed: {e}"),
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut jobs = Vec::new();
    for i in 0..300 {
        let key = format!("k{i:04}");
        let mut txn = store.write_txn();
        txn.put(key.as_bytes(), b"v", 0).unwrap();
        txn.put(b"hot", key.as_bytes(), 0).unwrap();
        let mut batch = Batch::new();
        let pending = txn.finish(&mut batch);
        store.engine().write(batch, false).unwrap();
        store.publish(pending);
        if i % 50 == 49 {
            let job = compact_now(&store, store.current_revision() - 20).unwrap();
            let engine = Arc::clone(store.engine());
            jobs.push(std::thread::spawn(move || {
                job.run_with(&engine, 7, Duration::ZERO).unwrap()
            }));
        }
    }
    for job in jobs {
        job.join().unwrap();
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(store.current_revision(), 301);
}

/// The bytes the quota counts follow every write and compaction, and equal what a fresh scan of
/// the same data finds (so every member agrees at the same revision, and a restart keeps it).
#[test]
fn stored_bytes_follow_writes_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.stored_bytes(), 0);
    apply(&store, &[Op::Put("a", "1234567890")]);
    let one = store.stored_bytes();
    assert!(one > 10, "a revision counts its key and value: {one}");
    apply(&store, &[Op::Put("a", "1234567890"), Op::Put("b", "x")]);
    apply(&store, &[Op::Del("b")]);
    let grown = store.stored_bytes();
    assert!(grown > 2 * one, "every revision is kept until compaction");
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.stored_bytes(),
        grown,
        "a reopen counts the same bytes"
    );

    let job = compact_now(&store, store.current_revision()).unwrap();
    assert_eq!(
        store.stored_bytes(),
        grown,
        "compaction frees bytes as it deletes"
    );
    let stats = job.run_with(store.engine(), 1, Duration::ZERO).unwrap();
    assert_eq!(store.stored_bytes(), grown - stats.deleted_bytes);
    assert!(store.stored_bytes() < grown);
    let after = store.stored_bytes();
    drop(store);
    assert_eq!(open(dir.path()).stored_bytes(), after);
}

/// The bytes the quota counts count a compaction as done once it is published: they equal the
/// bytes stored once its job has run, over a mix of puts, overwrites, single and range deletes and
/// compactions (some at a deletion's revision), and a reopen (which finishes an interrupted
/// compaction) counts the same.
#[test]
fn used_bytes_equal_stored_bytes_once_compactions_finish() {
    const LONG: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";
    const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];
    const VALUES: [&str; 4] = ["", "x", "0123456789", LONG];
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.used_bytes(), 0);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut compactions = 0;
    for step in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = KEYS[(seed % 5) as usize];
        let value = VALUES[((seed >> 4) % 4) as usize];
        let before = (store.current_revision(), store.used_bytes());
        let outcome = match (seed >> 8) % 6 {
            0 => apply(&store, &[Op::Del(key)]),
            1 => apply(&store, &[Op::DelRange("b", "e")]),
            2 => apply(&store, &[Op::Put(key, value), Op::Put("e", LONG)]),
            _ => apply(&store, &[Op::Put(key, value)]),
        };
        if outcome.rev == before.0 {
            assert_eq!(store.used_bytes(), before.1, "a txn that changed nothing");
        } else {
            assert!(store.used_bytes() > before.1, "every change adds a record");
        }
        let compacted = store.compact_revision().max(0);
        let current = store.current_revision();
        if step % 7 == 6 && current > compacted {
            let rev = compacted + 1 + (seed >> 16) as i64 % (current - compacted);
            let job = compact_now(&store, rev).unwrap();
            assert!(store.used_bytes() <= store.stored_bytes());
            job.run_with(store.engine(), 3, Duration::ZERO).unwrap();
            assert_eq!(
                store.used_bytes(),
                store.stored_bytes(),
                "step {step}: after the compaction at {rev} finished"
            );
            compactions += 1;
        }
    }
    assert!(compactions > 20, "{compactions} compactions");
    assert!(store.used_bytes() > 0);

    // A compaction published but not run (the member stopped): a reopen finishes it and counts
    // what the live store counted.
    apply(&store, &[Op::Put("a", LONG)]);
    apply(&store, &[Op::Put("a", "overwritten")]);
    let used = store.used_bytes();
    let _unfinished = compact_now(&store, store.current_revision()).unwrap();
    assert!(store.used_bytes() < used, "the compaction drops history");
    let used = store.used_bytes();
    assert!(store.stored_bytes() > used, "nothing deleted yet");
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.used_bytes(), used);
    assert_eq!(store.stored_bytes(), used);
    drop(store);
    assert_eq!(open(dir.path()).used_bytes(), used);
}
