//! Maintenance.Snapshot streams are capped per member (oxetcd's `SNAPSHOT_STREAMS_MAX`, 2): a
//! caller beyond the cap is refused with etcd's `etcdserver: too many requests`
//! (ResourceExhausted) while the others stream to the end, writes go on while snapshots stall
//! on clients that do not read, and a later caller gets through once the streams are done.

use crate::common;

use std::time::{Duration, Instant};

use common::{Server, running_real_etcd};
use etcd_client::{Client, Error, SnapshotStreaming};

/// Snapshot streams served at once (`api::maintenance::SNAPSHOT_STREAMS_MAX`).
const STREAMS_MAX: usize = 2;
/// Values written so a snapshot outgrows what the server queues plus what HTTP/2 lets it send
/// ahead of a client that does not read (a 2 MiB stream window): the stream stays open.
const VALUES: usize = 24;
const VALUE_BYTES: usize = 1024 * 1024;
/// How long a write may take while the snapshots stall.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the finished streams get to release their places.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes that do not compress, so the snapshot is as large as the values.
fn incompressible(seed: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed as u64;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A client on a connection of its own, so one stalled stream's flow control is not another's.
async fn own_client(server: &Server) -> Client {
    Client::connect([server.endpoint()], None)
        .await
        .expect("connecting a client")
}

/// Reads `stream` to the end; returns the bytes received and the size the first message
/// announced (its blob plus the remaining bytes).
async fn read_all(stream: &mut SnapshotStreaming) -> (u64, u64) {
    let mut received = 0u64;
    let mut announced = None;
    while let Some(msg) = stream.message().await.expect("the snapshot streams") {
        received += msg.blob().len() as u64;
        announced.get_or_insert(msg.blob().len() as u64 + msg.remaining_bytes());
    }
    (received, announced.expect("at least one message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_beyond_the_cap_are_refused_and_the_rest_complete() {
    if running_real_etcd() {
        // etcd 3.4 serves any number of snapshots at once.
        return;
    }
    let server = Server::start();
    let mut writer = server.client().await;
    for n in 0..VALUES {
        writer
            .put(format!("big/{n:02}"), incompressible(n), None)
            .await
            .expect("a large put succeeds");
    }

    // Fill the cap with streams whose clients read one message and then stop reading.
    let mut held = Vec::new();
    for _ in 0..STREAMS_MAX {
        let client = own_client(&server).await;
        let mut stream = client
            .maintenance_client()
            .snapshot()
            .await
            .expect("a snapshot within the cap starts");
        let first = stream
            .message()
            .await
            .expect("the first chunk arrives")
            .expect("the stream has a first chunk");
        assert!(
            first.remaining_bytes() > (VALUES * VALUE_BYTES / 2) as u64,
            "the snapshot holds the values ({} bytes remaining)",
            first.remaining_bytes()
        );
        held.push((client, stream));
    }

    // One more is refused, with etcd's error.
    let extra = own_client(&server).await;
    let refused = match extra.maintenance_client().snapshot().await {
        Err(e) => e,
        Ok(mut stream) => match stream.message().await {
            Err(e) => e,
            Ok(_) => server.fail("a snapshot beyond the cap was served"),
        },
    };
    match refused {
        Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert_eq!(status.message(), "etcdserver: too many requests");
        }
        other => panic!("expected a gRPC status, got {other:?}"),
    }

    // The stalled streams hold no lock raft or apply needs: writes still go through.
    let started = Instant::now();
    tokio::time::timeout(WRITE_TIMEOUT, writer.put("during-snapshots", "v", None))
        .await
        .expect("a write completes while snapshots stall")
        .expect("the write succeeds");
    eprintln!(
        "a write while {STREAMS_MAX} snapshots stall took {:?}",
        started.elapsed()
    );

    // The held streams complete, whole.
    for (_client, stream) in &mut held {
        let (received, announced) = read_all(stream).await;
        assert_eq!(received, announced, "the whole snapshot arrives");
    }
    drop(held);

    // Their places are free again.
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    loop {
        match extra.maintenance_client().snapshot().await {
            Ok(mut stream) => {
                let (received, announced) = read_all(&mut stream).await;
                assert_eq!(received, announced);
                break;
            }
            Err(Error::GRpcStatus(status)) if status.code() == tonic::Code::ResourceExhausted => {
                if Instant::now() >= deadline {
                    server.fail("snapshot places were not freed after the streams ended");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => server.fail(&format!("a snapshot after the others failed: {e}")),
        }
    }
}
