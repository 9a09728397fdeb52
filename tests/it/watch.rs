//! Black-box tests of the Watch service: many watchers on one stream, watch IDs, history replay,
//! prev_kv, filters, progress, cancel, compaction, ordering under concurrent writes, slow
//! watchers, fragmented large revisions, and `etcdctl watch` compared with the etcd 3.4 captures.

use crate::common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use common::reference;
use etcd_client::{
    Client, DeleteOptions, Event, EventType, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};

/// Bound on waiting for one expected watch response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a whole multi-response collection.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(60);

async fn next_response(stream: &mut WatchStream, what: &str) -> WatchResponse {
    match tokio::time::timeout(RESPONSE_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => response,
        Ok(Ok(None)) => panic!("{what}: the watch stream ended"),
        Ok(Err(err)) => panic!("{what}: watch stream error: {err}"),
        Err(_) => panic!("{what}: no watch response within {RESPONSE_TIMEOUT:?}"),
    }
}

/// Reads the `created` response of a new watcher and returns its watch ID.
async fn created(stream: &mut WatchStream, what: &str) -> i64 {
    let response = next_response(stream, what).await;
    assert!(
        response.created(),
        "{what}: expected a created response, got {response:?}"
    );
    assert!(
        !response.canceled(),
        "{what}: canceled on creation: {response:?}"
    );
    assert!(response.events().is_empty());
    response.watch_id()
}

/// Reads responses until `count` events arrived; returns (watch ID, event) in arrival order.
/// Panics on any response that is not an event response.
async fn collect_events(stream: &mut WatchStream, count: usize, what: &str) -> Vec<(i64, Event)> {
    let deadline = Instant::now() + COLLECT_TIMEOUT;
    let mut events = Vec::new();
    while events.len() < count {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {count} events within {COLLECT_TIMEOUT:?}",
            events.len()
        );
        let response = next_response(stream, what).await;
        assert!(
            !response.created() && !response.canceled() && response.compact_revision() == 0,
            "{what}: unexpected control response {response:?}"
        );
        for event in response.events() {
            events.push((response.watch_id(), event.clone()));
        }
    }
    assert_eq!(events.len(), count, "{what}: more events than expected");
    events
}

fn key_of(event: &Event) -> String {
    String::from_utf8_lossy(event.kv().expect("an event carries a kv").key()).into_owned()
}

fn value_of(event: &Event) -> Vec<u8> {
    event.kv().expect("an event carries a kv").value().to_vec()
}

fn mod_revision_of(event: &Event) -> i64 {
    event.kv().expect("an event carries a kv").mod_revision()
}

/// (type, key, value, mod revision) of each event, for compact assertions.
fn summary(events: &[(i64, Event)]) -> Vec<(EventType, String, String, i64)> {
    events
        .iter()
        .map(|(_, event)| {
            (
                event.event_type(),
                key_of(event),
                String::from_utf8_lossy(&value_of(event)).into_owned(),
                mod_revision_of(event),
            )
        })
        .collect()
}

async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    client
        .put(key, value, None)
        .await
        .unwrap_or_else(|err| panic!("put {key}: {err}"))
        .header()
        .expect("put response has a header")
        .revision()
}

async fn current_revision(client: &mut Client) -> i64 {
    client
        .get("revision-probe", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_share_one_stream() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut stream = client.watch("w/a", None).await.expect("watch");
    let first = created(&mut stream, "first watcher").await;
    assert_eq!(first, 0, "the server picks IDs from 0 on each stream");
    stream.watch("w/b", None).await.expect("second watch");
    let second = created(&mut stream, "second watcher").await;
    assert_eq!(second, 1);
    stream
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_watch_id(100)),
        )
        .await
        .expect("third watch");
    let chosen = created(&mut stream, "client-chosen ID").await;
    assert_eq!(chosen, 100, "a client-chosen watch_id is kept");

    // A client-chosen ID already in use on the stream is refused.
    stream
        .watch("w/c", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .expect("duplicate watch request is sent");
    let duplicate = next_response(&mut stream, "duplicate ID").await;
    assert!(duplicate.created() && duplicate.canceled(), "{duplicate:?}");
    assert_eq!(duplicate.watch_id(), -1);
    assert_eq!(
        duplicate.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // Server-chosen IDs skip the one the client took.
    stream.watch("w/d", None).await.expect("fourth watch");
    let fourth = created(&mut stream, "fourth watcher").await;
    assert_eq!(fourth, 2);

    let revision = put(&mut client, "w/a", "1").await;
    let events = collect_events(&mut stream, 2, "put w/a").await;
    let mut ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
    ids.sort();
    assert_eq!(ids, [first, chosen], "both watchers of w/a see the put");
    for (_, event) in &events {
        assert_eq!(event.event_type(), EventType::Put);
        assert_eq!(key_of(event), "w/a");
        let kv = event.kv().expect("kv");
        assert_eq!(
            (kv.mod_revision(), kv.create_revision(), kv.version()),
            (revision, revision, 1)
        );
        assert!(event.prev_kv().is_none(), "prev_kv only when asked");
    }

    // Cancel the w/b watcher; later w/b writes reach only the prefix watcher. The w/d write is a
    // barrier: responses on one stream come in revision order.
    stream.cancel(second).await.expect("cancel");
    let canceled = next_response(&mut stream, "cancel").await;
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.watch_id(), second);
    put(&mut client, "w/b", "2").await;
    put(&mut client, "w/d", "3").await;
    let events = collect_events(&mut stream, 3, "after cancel").await;
    let seen: Vec<(i64, String)> = events.iter().map(|(id, e)| (*id, key_of(e))).collect();
    assert_eq!(
        seen[0],
        (chosen, "w/b".to_string()),
        "only the prefix watcher sees w/b"
    );
    let mut rest = seen[1..].to_vec();
    rest.sort();
    assert_eq!(
        rest,
        [(fourth, "w/d".to_string()), (chosen, "w/d".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_replays_history() {
    let server = Server::start();
    let mut client = server.client().await;
    assert_eq!(put(&mut client, "h/a", "1").await, 2);
    assert_eq!(put(&mut client, "h/b", "2").await, 3);
    assert_eq!(put(&mut client, "h/a", "3").await, 4);
    client.delete("h/a", None).await.expect("delete");
    assert_eq!(put(&mut client, "h/c", "5").await, 6);
    put(&mut client, "other", "x").await;

    let mut stream = client
        .watch(
            "h/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2)),
        )
        .await
        .expect("watch");
    created(&mut stream, "replay from 2").await;
    let events = collect_events(&mut stream, 5, "replay from 2").await;
    assert_eq!(
        summary(&events),
        [
            (EventType::Put, "h/a".into(), "1".into(), 2),
            (EventType::Put, "h/b".into(), "2".into(), 3),
            (EventType::Put, "h/a".into(), "3".into(), 4),
            (EventType::Delete, "h/a".into(), "".into(), 5),
            (EventType::Put, "h/c".into(), "5".into(), 6),
        ]
    );
    let delete = events[3].1.kv().expect("kv");
    assert_eq!(
        (delete.create_revision(), delete.version()),
        (0, 0),
        "a DELETE event's kv has only the key and the deletion revision"
    );
    let updated = events[2].1.kv().expect("kv");
    assert_eq!((updated.create_revision(), updated.version()), (2, 2));

    // Live events continue after the replay, in order.
    put(&mut client, "h/b", "7").await;
    let live = collect_events(&mut stream, 1, "live after replay").await;
    assert_eq!(
        summary(&live),
        [(EventType::Put, "h/b".into(), "7".into(), 8)]
    );

    // prev_kv: the previous version for updates and deletes, nothing for creations.
    let mut with_prev = client
        .watch(
            "h/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(4)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch with prev_kv");
    created(&mut with_prev, "prev_kv").await;
    let events = collect_events(&mut with_prev, 4, "prev_kv").await;
    let prevs: Vec<Option<(String, String, i64)>> = events
        .iter()
        .map(|(_, event)| {
            event.prev_kv().map(|prev| {
                (
                    String::from_utf8_lossy(prev.key()).into_owned(),
                    String::from_utf8_lossy(prev.value()).into_owned(),
                    prev.mod_revision(),
                )
            })
        })
        .collect();
    assert_eq!(
        prevs,
        [
            Some(("h/a".into(), "1".into(), 2)),
            Some(("h/a".into(), "3".into(), 4)),
            None,
            Some(("h/b".into(), "2".into(), 3)),
        ]
    );

    // Filters drop event types on the server, in the replay and live.
    let mut no_put = client
        .watch(
            "h/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .expect("NOPUT watch");
    created(&mut no_put, "NOPUT").await;
    let mut no_delete = client
        .watch(
            "h/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .expect("NODELETE watch");
    created(&mut no_delete, "NODELETE").await;
    let history = collect_events(&mut no_put, 1, "NOPUT history").await;
    assert_eq!(
        summary(&history),
        [(EventType::Delete, "h/a".into(), "".into(), 5)]
    );
    let history = collect_events(&mut no_delete, 5, "NODELETE history").await;
    assert_eq!(
        summary(&history),
        [
            (EventType::Put, "h/a".into(), "1".into(), 2),
            (EventType::Put, "h/b".into(), "2".into(), 3),
            (EventType::Put, "h/a".into(), "3".into(), 4),
            (EventType::Put, "h/c".into(), "5".into(), 6),
            (EventType::Put, "h/b".into(), "7".into(), 8),
        ]
    );
    // Live: put, delete, put. Each filtered watcher sees only its kind, in order.
    let first = put(&mut client, "h/d", "x").await;
    client.delete("h/d", None).await.expect("delete");
    put(&mut client, "h/e", "y").await;
    let live = collect_events(&mut no_put, 1, "NOPUT live").await;
    assert_eq!(
        summary(&live),
        [(EventType::Delete, "h/d".into(), "".into(), first + 1)]
    );
    let live = collect_events(&mut no_delete, 2, "NODELETE live").await;
    assert_eq!(
        summary(&live),
        [
            (EventType::Put, "h/d".into(), "x".into(), first),
            (EventType::Put, "h/e".into(), "y".into(), first + 2),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_and_requests() {
    let server = Server::start_with(&["--experimental-watch-progress-notify-interval=200ms"]);
    let mut client = server.client().await;
    put(&mut client, "pn/a", "1").await;

    let mut stream = client
        .watch(
            "pn/",
            Some(WatchOptions::new().with_prefix().with_progress_notify()),
        )
        .await
        .expect("watch");
    let id = created(&mut stream, "progress watcher").await;
    let head = current_revision(&mut client).await;
    let notification = next_response(&mut stream, "periodic progress").await;
    assert!(notification.events().is_empty(), "{notification:?}");
    assert!(!notification.created() && !notification.canceled());
    assert_eq!(notification.watch_id(), id);
    assert_eq!(
        notification.header().expect("header").revision(),
        head,
        "a progress notification carries the current revision"
    );

    // A write outside the watched range moves the revision; the next notification shows it.
    let moved = put(&mut client, "elsewhere", "x").await;
    let deadline = Instant::now() + RESPONSE_TIMEOUT;
    loop {
        let response = next_response(&mut stream, "progress after a write").await;
        assert!(response.events().is_empty(), "{response:?}");
        if response.header().expect("header").revision() == moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress notification at revision {moved}"
        );
    }

    // An explicit progress request on a stream without progress_notify.
    let mut quiet = client
        .watch("pr/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    created(&mut quiet, "quiet watcher").await;
    let head = put(&mut client, "elsewhere", "y").await;
    quiet.request_progress().await.expect("progress request");
    let progress = next_response(&mut quiet, "progress request").await;
    assert!(progress.events().is_empty(), "{progress:?}");
    assert!(!progress.created() && !progress.canceled() && progress.compact_revision() == 0);
    assert_eq!(
        progress.watch_id(),
        -1,
        "a requested progress belongs to no single watcher"
    );
    assert_eq!(progress.header().expect("header").revision(), head);
    // The stream still delivers events afterwards.
    put(&mut client, "pr/x", "1").await;
    let events = collect_events(&mut quiet, 1, "after progress").await;
    assert_eq!(key_of(&events[0].1), "pr/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_revision_cancels_the_watcher() {
    let server = Server::start();
    let mut client = server.client().await;
    for value in ["1", "2", "3", "4"] {
        put(&mut client, "c/a", value).await;
    }
    let compacted_at = 4;
    client.compact(compacted_at, None).await.expect("compact");

    let mut stream = client
        .watch("c/a", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch");
    let id = created(&mut stream, "compacted watch").await;
    let canceled = next_response(&mut stream, "compaction cancel").await;
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.watch_id(), id);
    assert_eq!(canceled.compact_revision(), compacted_at);
    assert!(canceled.events().is_empty());

    // At the compact revision itself the history is still there.
    let mut at_compaction = client
        .watch(
            "c/a",
            Some(WatchOptions::new().with_start_revision(compacted_at)),
        )
        .await
        .expect("watch");
    let at_compaction_id = created(&mut at_compaction, "watch at the compact revision").await;
    let events = collect_events(&mut at_compaction, 2, "from the compact revision").await;
    assert_eq!(
        summary(&events),
        [
            (EventType::Put, "c/a".into(), "3".into(), 4),
            (EventType::Put, "c/a".into(), "4".into(), 5),
        ]
    );

    // A canceled watcher gets nothing more; the stream stays usable.
    let watch_id = 7;
    at_compaction
        .watch("c/b", Some(WatchOptions::new().with_watch_id(watch_id)))
        .await
        .expect("watch");
    assert_eq!(created(&mut at_compaction, "c/b").await, watch_id);
    at_compaction
        .cancel(at_compaction_id)
        .await
        .expect("cancel");
    let canceled = next_response(&mut at_compaction, "cancel").await;
    assert!(
        canceled.canceled() && canceled.watch_id() == at_compaction_id,
        "{canceled:?}"
    );
    put(&mut client, "c/a", "5").await;
    put(&mut client, "c/b", "barrier").await;
    let events = collect_events(&mut at_compaction, 1, "after cancel").await;
    assert_eq!(
        (events[0].0, key_of(&events[0].1)),
        (watch_id, "c/b".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_arrive_in_revision_order_without_gaps() {
    const WRITERS: usize = 4;
    const PUTS_PER_WRITER: usize = 500;
    let server = Server::start();
    let mut client = server.client().await;
    let start = current_revision(&mut client).await;
    let mut stream = client
        .watch("cw/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    created(&mut stream, "order watcher").await;

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for index in 0..PUTS_PER_WRITER {
                let key = format!("cw/{writer}/{index:04}");
                let value = format!("{writer}-{index}");
                let revision = put(&mut client, &key, &value).await;
                acknowledged.push((revision, key, value));
            }
            acknowledged
        }));
    }
    let total = WRITERS * PUTS_PER_WRITER;
    let events = collect_events(&mut stream, total, "concurrent puts").await;
    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        for (revision, key, value) in writer.await.expect("writer task does not panic") {
            assert!(
                acknowledged.insert(revision, (key, value)).is_none(),
                "two puts acknowledged at revision {revision}"
            );
        }
    }
    let revisions: Vec<i64> = events.iter().map(|(_, e)| mod_revision_of(e)).collect();
    let expected: Vec<i64> = (start + 1..=start + total as i64).collect();
    assert_eq!(
        revisions, expected,
        "events are contiguous, ordered and unique"
    );
    for (_, event) in &events {
        let revision = mod_revision_of(event);
        let (key, value) = acknowledged
            .get(&revision)
            .unwrap_or_else(|| panic!("event at revision {revision} was never acknowledged"));
        assert_eq!(&key_of(event), key);
        assert_eq!(value_of(event), value.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_stalls_neither_writes_nor_other_watchers() {
    const PUTS: usize = 400;
    let server = Server::start();
    let mut client = server.client().await;
    let start = current_revision(&mut client).await;
    // Never read until the end: its HTTP/2 window and the server's buffers fill up.
    // etcd may send a watcher that fell behind its backlog in one large response.
    let mut slow = client
        .watch_client()
        .max_decoding_message_size(256 * 1024 * 1024)
        .watch("sw/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("slow watch");
    created(&mut slow, "slow watcher").await;
    let mut fast = client
        .watch("sw/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("fast watch");
    created(&mut fast, "fast watcher").await;
    let reader = tokio::spawn(async move {
        let events = collect_events(&mut fast, PUTS, "fast watcher").await;
        events
            .iter()
            .map(|(_, e)| mod_revision_of(e))
            .collect::<Vec<_>>()
    });

    let value = "v".repeat(50 * 1024);
    let write_deadline = Instant::now() + Duration::from_secs(60);
    for index in 0..PUTS {
        let put = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            client.put(format!("sw/{index:04}"), value.as_str(), None),
        )
        .await;
        assert!(
            matches!(put, Ok(Ok(_))),
            "put {index} stalled or failed while a watcher does not read: {put:?}"
        );
        assert!(
            Instant::now() < write_deadline,
            "writes slowed to a crawl at put {index}"
        );
    }
    let expected: Vec<i64> = (start + 1..=start + PUTS as i64).collect();
    let fast_revisions = tokio::time::timeout(COLLECT_TIMEOUT, reader)
        .await
        .expect("the fast watcher keeps up")
        .expect("reader task does not panic");
    assert_eq!(fast_revisions, expected);

    // The slow watcher eventually gets everything, in order.
    let events = collect_events(&mut slow, PUTS, "slow watcher").await;
    let slow_revisions: Vec<i64> = events.iter().map(|(_, e)| mod_revision_of(e)).collect();
    assert_eq!(slow_revisions, expected);
    assert!(events.iter().all(|(_, e)| value_of(e).len() == value.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_arrive_complete() {
    const KEYS: usize = 5;
    const VALUE_BYTES: usize = 1_000_000;
    let server = Server::start();
    let mut client = server.client().await;

    // Fragmenting watcher with the client's default 4 MiB message limit: the 5 MB revision below
    // reaches it only if the server splits it.
    let mut fragmented = client
        .watch(
            "big/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_fragment(),
            ),
        )
        .await
        .expect("fragment watch");
    created(&mut fragmented, "fragment watcher").await;
    // Without fragment the revision comes as one message; this client accepts 16 MiB.
    let mut whole = client
        .watch_client()
        .max_decoding_message_size(16 * 1024 * 1024)
        .watch(
            "big/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("whole watch");
    created(&mut whole, "whole watcher").await;

    let values: Vec<Vec<u8>> = (0..KEYS)
        .map(|index| vec![b'a' + index as u8; VALUE_BYTES])
        .collect();
    for (index, value) in values.iter().enumerate() {
        let response = client
            .txn(Txn::new().and_then([TxnOp::put(format!("big/{index}"), value.clone(), None)]))
            .await
            .expect("txn with a value near 1 MiB");
        assert!(response.succeeded());
    }
    let deleted = client
        .txn(Txn::new().and_then([TxnOp::delete(
            "big/",
            Some(DeleteOptions::new().with_prefix()),
        )]))
        .await
        .expect("delete all in one txn");
    let delete_revision = deleted.header().expect("header").revision();

    for (name, stream) in [("fragment", &mut fragmented), ("whole", &mut whole)] {
        let puts = collect_events(stream, KEYS, name).await;
        for (index, (_, event)) in puts.iter().enumerate() {
            assert_eq!(key_of(event), format!("big/{index}"));
            assert!(
                value_of(event) == values[index],
                "{name}: put {index} value intact"
            );
        }
        let mut responses = 0;
        let mut deletes = Vec::new();
        let deadline = Instant::now() + COLLECT_TIMEOUT;
        while deletes.len() < KEYS {
            assert!(Instant::now() < deadline, "{name}: deletes incomplete");
            let response = next_response(stream, name).await;
            responses += 1;
            deletes.extend(response.events().iter().cloned());
        }
        assert_eq!(deletes.len(), KEYS);
        if name == "whole" {
            assert_eq!(
                responses, 1,
                "without fragment one revision is one response"
            );
        }
        for (index, event) in deletes.iter().enumerate() {
            assert_eq!(event.event_type(), EventType::Delete);
            assert_eq!(key_of(event), format!("big/{index}"));
            assert_eq!(mod_revision_of(event), delete_revision);
            let prev = event.prev_kv().expect("prev_kv requested");
            assert!(
                prev.value() == values[index],
                "{name}: prev_kv {index} intact"
            );
        }
    }
    // The client with the default limit and no fragment cannot take the revision at all,
    // which is what makes the fragment check above meaningful.
    let mut small = client
        .watch(
            "big/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(delete_revision),
            ),
        )
        .await
        .expect("watch");
    created(&mut small, "watcher with the default message limit").await;
    let result = tokio::time::timeout(RESPONSE_TIMEOUT, small.message())
        .await
        .expect("an answer or an error within the timeout");
    assert!(
        result.is_err(),
        "a 5 MB unfragmented response must exceed the 4 MiB client limit: {result:?}"
    );
}

/// A running `etcdctl watch` whose output can be inspected while it grows.
struct EtcdctlWatch {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

fn read_into<R: Read + Send + 'static>(
    mut source: R,
    sink: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = source.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.lock()
                .expect("output lock is never poisoned")
                .extend_from_slice(&chunk[..read]);
        }
    })
}

impl EtcdctlWatch {
    fn spawn(server: &Server, args: &[&str], stdin: Option<&str>) -> EtcdctlWatch {
        let mut child = server
            .etcdctl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl spawns");
        if let Some(text) = stdin {
            child
                .stdin
                .as_mut()
                .expect("stdin is piped")
                .write_all(text.as_bytes())
                .expect("etcdctl reads its stdin");
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            read_into(child.stdout.take().expect("piped"), Arc::clone(&stdout)),
            read_into(child.stderr.take().expect("piped"), Arc::clone(&stderr)),
        ];
        EtcdctlWatch {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("output lock")).into_owned()
    }

    /// Polls until `done(stdout)` holds; panics with the output after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.stdout()) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("waiting on etcdctl works") {
                // Let the readers drain before reporting.
                thread::sleep(Duration::from_millis(100));
                if done(&self.stdout()) {
                    return;
                }
                panic!(
                    "{what}: etcdctl exited with {status}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    String::from_utf8_lossy(&self.stderr.lock().expect("output lock"))
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {timeout:?}; stdout so far:\n{}",
                self.stdout()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for etcdctl to exit by itself, then kills it; returns the exit
    /// status (None if it had to be killed), stdout and stderr.
    fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting on etcdctl works") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        drop(self.child.stdin.take());
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread does not panic");
        }
        let stdout = self.stdout();
        let stderr =
            String::from_utf8_lossy(&self.stderr.lock().expect("output lock")).into_owned();
        (status, stdout, stderr)
    }
}

impl Drop for EtcdctlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capture's revision anchor: the first /w/ write of the reference run.
const REFERENCE_WATCH_REVISION: i64 = 51;

/// Events of `etcdctl watch -w json` output lines as comparable JSON values.
fn json_events(text: &str, revision_shift: i64) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let response: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON watch response ({err}): {line}"));
        for event in response["Events"].as_array().expect("Events is an array") {
            let mut event = event.clone();
            for field in ["create_revision", "mod_revision"] {
                if let Some(revision) = event["kv"][field].as_i64() {
                    event["kv"][field] = serde_json::json!(revision + revision_shift);
                }
            }
            events.push(event);
        }
    }
    events
}

/// Runs the reference's /w/ writes under a live `etcdctl watch /w/ --prefix`, then the recorded
/// `--rev`, `--prefix`, `--prev-kv`, range, `-w json` and `-i` watches over the same history, and
/// a watch from a compacted revision; compares what etcdctl prints with etcd 3.4's output.
#[test]
fn etcdctl_watch_matches_etcd_34() {
    let server = Server::start();
    let records = reference::records();
    let start = records
        .iter()
        .position(|record| record.kind == "watch-start" && record.name == "watch-prefix-live")
        .expect("the capture has a live prefix watch");

    // The live watch: prove it is registered by writing a probe key until its event shows.
    let mut live = EtcdctlWatch::spawn(&server, &["watch", "/w/", "--prefix"], None);
    let registered = Instant::now() + Duration::from_secs(15);
    loop {
        server.etcdctl_ok(&["put", "/w/", "probe"]);
        if live.stdout().contains("PUT\n/w/\nprobe\n") {
            break;
        }
        assert!(
            Instant::now() < registered,
            "etcdctl watch never saw the probe"
        );
        thread::sleep(Duration::from_millis(100));
    }
    server.etcdctl_ok(&["del", "/w/"]);
    live.wait_for("probe delete", Duration::from_secs(15), |out| {
        out.contains("DELETE\n/w/\n\n")
    });
    let head: i64 = {
        let json: serde_json::Value =
            serde_json::from_str(&server.etcdctl_ok(&["get", "probe", "-w", "json"]))
                .expect("JSON");
        json["header"]["revision"].as_i64().expect("revision")
    };
    let first_write = head + 1;
    let shift = first_write - REFERENCE_WATCH_REVISION;

    let mut index = start + 1;
    while records[index].kind == "run" {
        let record = &records[index];
        let args: Vec<&str> = record.args.iter().map(String::as_str).collect();
        let output = server.etcdctl_full(&args, record.stdin.as_deref(), common::ETCDCTL_TIMEOUT);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            common::stderr_text(&output)
        );
        index += 1;
    }
    let expected_live = reference::capture("watch-prefix-live").stdout_text();
    live.wait_for("live watch", Duration::from_secs(15), |out| {
        out.ends_with(&expected_live)
    });
    let (_, stdout, _) = live.finish(Duration::ZERO);
    let after_probe = stdout
        .split_once("DELETE\n/w/\n\n")
        .map(|(_, rest)| rest.to_string())
        .expect("probe delete seen");
    assert_eq!(
        after_probe, expected_live,
        "live etcdctl watch /w/ --prefix"
    );

    // The recorded watches over the same history, with the revision anchor moved.
    let mut compared = 0;
    for record in &records[index..] {
        if record.kind != "watch-start" {
            continue;
        }
        let name = record.name.as_str();
        let capture = reference::capture(name);
        if capture.exit_code != 143 {
            // 128: rejected by etcdctl before any request; 5: the compacted watch, run below.
            continue;
        }
        let shifted = |text: &str| {
            text.replace(
                &format!("--rev={REFERENCE_WATCH_REVISION}"),
                &format!("--rev={first_write}"),
            )
        };
        let args: Vec<String> = record.args.iter().map(|arg| shifted(arg)).collect();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let stdin = record
            .stdin
            .as_ref()
            .map(|bytes| shifted(&String::from_utf8_lossy(bytes)));
        let mut watch = EtcdctlWatch::spawn(&server, &arg_refs, stdin.as_deref());
        if name.ends_with("-json") {
            let expected = json_events(&capture.stdout_text(), shift);
            watch.wait_for(name, Duration::from_secs(15), |out| {
                out.ends_with('\n') && json_events(out, 0).len() >= expected.len()
            });
            let (_, stdout, _) = watch.finish(Duration::ZERO);
            assert_eq!(json_events(&stdout, 0), expected, "{name}");
        } else {
            let expected = capture.stdout_text();
            watch.wait_for(name, Duration::from_secs(15), |out| {
                out.len() >= expected.len()
            });
            let (_, stdout, stderr) = watch.finish(Duration::ZERO);
            assert_eq!(stdout, expected, "{name}");
            assert_eq!(
                common::without_client_logs(&stderr),
                capture.stderr_text(),
                "{name}"
            );
        }
        compared += 1;
    }
    assert_eq!(
        compared, 5,
        "watch-rev, -prefix-prev-kv, -json, -range, -interactive"
    );

    // A watch from a compacted revision is canceled by the server: exit 5.
    server.etcdctl_ok(&["compaction", &head.to_string()]);
    let compacted = EtcdctlWatch::spawn(&server, &["watch", "foo", "--rev=2"], None);
    let (status, stdout, stderr) = compacted.finish(Duration::from_secs(15));
    let capture = reference::capture("watch-compacted-rev");
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(capture.exit_code),
        "etcdctl watch from a compacted revision exits by itself"
    );
    assert_eq!(stdout, capture.stdout_text());
    assert_eq!(common::without_client_logs(&stderr), capture.stderr_text());
}
