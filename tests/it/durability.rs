//! Black-box durability test: SIGKILL the member while writers are busy, restart it, and check
//! that every acknowledged write survived with its value and revision, several times over.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use etcd_client::Client;

const WRITERS: usize = 4;
const ROUNDS: usize = 3;
/// Acknowledged writes per round before the kill (the writers keep going until it lands).
const WRITES_BEFORE_KILL: usize = 300;
const PUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM'd member with open watch and keep-alive streams may take to exit.
const SIGTERM_EXIT_MAX: Duration = Duration::from_secs(3);

/// One acknowledged put: every key is written exactly once, so its create and mod revision are
/// the revision the server acknowledged.
#[derive(Debug, Clone)]
struct Acknowledged {
    key: String,
    value: String,
    revision: i64,
}

/// Puts unique keys until the first failure (the kill); returns what the server acknowledged.
async fn writer(
    mut client: Client,
    round: usize,
    writer: usize,
    acknowledged: Arc<AtomicUsize>,
) -> Vec<Acknowledged> {
    let mut done = Vec::new();
    for seq in 0.. {
        let key = format!("dur/{round}/{writer}/{seq:06}");
        let value = format!("round {round} writer {writer} seq {seq}");
        match tokio::time::timeout(PUT_TIMEOUT, client.put(key.as_str(), value.as_str(), None))
            .await
        {
            Ok(Ok(response)) => {
                let revision = response
                    .header()
                    .expect("put response has a header")
                    .revision();
                done.push(Acknowledged {
                    key,
                    value,
                    revision,
                });
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            // The member is gone: this put may or may not have been applied.
            Ok(Err(_)) | Err(_) => break,
        }
        if seq > 1_000_000 {
            panic!("writer {writer} never saw the member die");
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start();
    let mut all: Vec<Acknowledged> = Vec::new();
    let mut last_revision = 1;

    for round in 0..ROUNDS {
        let client = server.client().await;
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|index| {
                tokio::spawn(writer(
                    client.clone(),
                    round,
                    index,
                    Arc::clone(&acknowledged),
                ))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged.load(Ordering::Relaxed) < WRITES_BEFORE_KILL {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} writes acknowledged within 60 s",
                acknowledged.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        let mut round_writes = Vec::new();
        for task in tasks {
            let written = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("writers stop once the member is gone")
                .expect("writer does not panic");
            round_writes.extend(written);
        }
        drop(client);
        assert!(round_writes.len() >= WRITES_BEFORE_KILL);
        round_writes.sort_by_key(|write| write.revision);
        for pair in round_writes.windows(2) {
            assert!(
                pair[0].revision < pair[1].revision,
                "two acknowledged puts share revision {}",
                pair[0].revision
            );
        }
        let first = round_writes.first().expect("checked above").revision;
        assert!(
            first > last_revision,
            "round {round} started at revision {first}, not after {last_revision}"
        );
        all.extend(round_writes);

        server.restart();
        let mut client = server.client().await;
        for write in &all {
            let response = client
                .get(write.key.as_str(), None)
                .await
                .unwrap_or_else(|err| panic!("get {} after restart: {err}", write.key));
            let Some(kv) = response.kvs().first() else {
                panic!(
                    "round {round}: acknowledged write {} at revision {} is lost",
                    write.key, write.revision
                );
            };
            assert_eq!(kv.value(), write.value.as_bytes(), "{}", write.key);
            assert_eq!(
                (kv.create_revision(), kv.mod_revision(), kv.version()),
                (write.revision, write.revision, 1),
                "{}",
                write.key
            );
        }
        let max_acknowledged = all.iter().map(|write| write.revision).max().unwrap_or(1);
        let next = client
            .put(format!("dur/after/{round}"), "x", None)
            .await
            .expect("writes continue after the restart")
            .header()
            .expect("header")
            .revision();
        assert!(
            next > max_acknowledged,
            "round {round}: new write at revision {next}, last acknowledged {max_acknowledged}"
        );
        last_revision = next;
    }
    assert!(all.len() >= ROUNDS * WRITES_BEFORE_KILL);
}

/// SIGTERM ends open watch and keep-alive streams instead of waiting for their clients: the
/// server exits cleanly (status 0) and keeps every acknowledged write. The fixture fails the
/// test if the server is still running 30 s after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_exits_cleanly() {
    let mut server = Server::start();
    let mut client = server.client().await;
    client
        .put("before-stop", "1", None)
        .await
        .expect("put succeeds");
    let mut watch_stream = client
        .watch("before-stop", None)
        .await
        .expect("watch opens");
    let lease = client
        .lease_grant(60, None)
        .await
        .expect("lease granted")
        .id();
    let (mut keeper, mut keep_alive_stream) = client
        .lease_keep_alive(lease)
        .await
        .expect("keep-alive opens");
    keeper.keep_alive().await.expect("keep-alive request sent");
    keep_alive_stream
        .message()
        .await
        .expect("keep-alive answered")
        .expect("keep-alive stream open");
    let status = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = server.stop();
        (server, status, started.elapsed())
    })
    .await
    .expect("stop runs");
    let (mut server, status, took) = status;
    if !common::running_real_etcd() {
        assert!(
            status.success(),
            "oxetcd exits with status 0 on SIGTERM, got {status}"
        );
        // Each shutdown step is bounded; with nothing stuck none of them should take long.
        assert!(
            took < SIGTERM_EXIT_MAX,
            "oxetcd took {took:?} to exit on SIGTERM with open streams"
        );
    }
    // The open streams end rather than hang.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch_stream.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the watch stream ends when the server stops");
    server.restart();
    let mut client = server.client().await;
    let got = client.get("before-stop", None).await.expect("get succeeds");
    assert_eq!(got.kvs()[0].value(), b"1");
}
