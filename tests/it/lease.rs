//! Black-box tests of the Lease service: grant (IDs, minimum TTL), keep-alive, TimeToLive,
//! Leases, revoke and expiry deleting attached keys, unknown-lease answers, and `etcdctl lease`.

use crate::common;

use std::time::{Duration, Instant};

use common::Server;
use common::reference;
use etcd_client::{
    Client, Error, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions, WatchResponse, WatchStream,
};
use tonic::Code;

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

fn status_of(result: Result<impl std::fmt::Debug, Error>, what: &str) -> (Code, String) {
    match result {
        Err(Error::GRpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("{what}: expected a gRPC error status, got {other:?}"),
    }
}

async fn next_response(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(RESPONSE_TIMEOUT, stream.message())
        .await
        .expect("a watch response within the timeout")
        .expect("the watch stream works")
        .expect("the watch stream stays open")
}

async fn keys_under(client: &mut Client, prefix: &str) -> Vec<String> {
    client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn lease_ids(client: &mut Client) -> Vec<i64> {
    let mut ids: Vec<i64> = client
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|lease| lease.id())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_time_to_live_and_list() {
    let server = Server::start();
    let mut client = server.client().await;

    let granted = client.lease_grant(60, None).await.expect("grant");
    assert_ne!(granted.id(), 0, "the server picks a non-zero ID");
    assert_eq!(granted.ttl(), 60);
    assert_eq!(granted.error(), "");

    let chosen_id = 0x1234_abcd;
    let chosen = client
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(chosen_id)))
        .await
        .expect("grant with an ID");
    assert_eq!((chosen.id(), chosen.ttl()), (chosen_id, 30));
    let duplicate = client
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(chosen_id)))
        .await;
    assert_eq!(
        status_of(duplicate, "duplicate lease ID"),
        (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".to_string()
        )
    );

    // The minimum TTL is 1.5 election timeouts rounded up: 2 s with the default 1000 ms.
    for asked in [0, 1, 2] {
        let short = client.lease_grant(asked, None).await.expect("grant");
        assert_eq!(short.ttl(), 2, "TTL {asked} is raised to the minimum");
        client.lease_revoke(short.id()).await.expect("revoke");
    }
    let too_long = client.lease_grant(9_000_000_001, None).await;
    assert_eq!(
        status_of(too_long, "huge TTL"),
        (
            Code::OutOfRange,
            "etcdserver: too large lease TTL".to_string()
        )
    );

    let mut expected = vec![granted.id(), chosen_id];
    expected.sort();
    assert_eq!(lease_ids(&mut client).await, expected);

    let ttl = client
        .lease_time_to_live(granted.id(), None)
        .await
        .expect("time to live");
    assert_eq!((ttl.id(), ttl.granted_ttl()), (granted.id(), 60));
    assert!(
        (58..=60).contains(&ttl.ttl()),
        "remaining TTL {}",
        ttl.ttl()
    );
    assert!(ttl.keys().is_empty());

    for key in ["lk/b", "lk/a"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(granted.id())))
            .await
            .expect("put with lease");
    }
    let with_keys = client
        .lease_time_to_live(
            granted.id(),
            Some(LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("time to live with keys");
    let mut keys = with_keys.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"lk/a".to_vec(), b"lk/b".to_vec()]);
    let without_keys = client
        .lease_time_to_live(granted.id(), None)
        .await
        .expect("time to live");
    assert!(without_keys.keys().is_empty(), "keys only when asked");

    // Unknown leases.
    let unknown = 0x7777;
    let ttl = client
        .lease_time_to_live(unknown, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("TimeToLive of an unknown lease is not an error");
    assert_eq!((ttl.id(), ttl.ttl()), (unknown, -1));
    assert_eq!(
        status_of(client.lease_revoke(unknown).await, "revoke unknown"),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".to_string()
        )
    );
    let before = client.get("lk/c", None).await.expect("get");
    let put = client
        .put("lk/c", "v", Some(PutOptions::new().with_lease(unknown)))
        .await;
    assert_eq!(
        status_of(put, "put with unknown lease"),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".to_string()
        )
    );
    let after = client.get("lk/c", None).await.expect("get");
    assert!(after.kvs().is_empty());
    assert_eq!(
        after.header().expect("header").revision(),
        before.header().expect("header").revision(),
        "a refused put writes nothing"
    );
    let keep_alive = client.lease_keep_alive(unknown).await;
    assert!(
        matches!(&keep_alive, Err(Error::LeaseKeepAliveError(_))),
        "keep-alive of an unknown lease answers TTL 0, which the client reports: {keep_alive:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_renews_the_lease() {
    let server = Server::start();
    let mut client = server.client().await;
    let lease = client.lease_grant(2, None).await.expect("grant").id();
    client
        .put("ka", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.expect("keep-alive");
    assert_eq!(keeper.id(), lease);

    // Renew every 500 ms for twice the TTL: the key must survive.
    let until = Instant::now() + Duration::from_secs(4);
    let mut renewals = 0;
    while Instant::now() < until {
        keeper.keep_alive().await.expect("send keep-alive");
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, responses.message())
            .await
            .expect("keep-alive answer in time")
            .expect("keep-alive stream works")
            .expect("keep-alive stream open");
        assert_eq!((response.id(), response.ttl()), (lease, 2));
        renewals += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(renewals >= 4, "only {renewals} renewals");
    let kv = client.get("ka", None).await.expect("get");
    assert_eq!(kv.kvs().len(), 1, "a renewed lease keeps its key");
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert!(ttl.ttl() > 0, "renewed lease alive: {}", ttl.ttl());

    // After a revoke the same stream answers TTL 0.
    client.lease_revoke(lease).await.expect("revoke");
    keeper.keep_alive().await.expect("send keep-alive");
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, responses.message())
        .await
        .expect("keep-alive answer in time")
        .expect("keep-alive stream works")
        .expect("keep-alive stream open");
    assert_eq!((response.id(), response.ttl()), (lease, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_expiry_delete_attached_keys() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut stream = client
        .watch("lr/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(next_response(&mut stream).await.created());

    // Revoke: one revision deleting every attached key.
    let lease = client.lease_grant(600, None).await.expect("grant").id();
    for key in ["lr/a", "lr/b"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put");
    }
    client.put("lr/c", "no lease", None).await.expect("put");
    for _ in 0..3 {
        let response = next_response(&mut stream).await;
        assert!(
            response
                .events()
                .iter()
                .all(|e| e.event_type() == EventType::Put)
        );
    }
    let revoked = client.lease_revoke(lease).await.expect("revoke");
    let revision = revoked.header().expect("header").revision();
    let response = next_response(&mut stream).await;
    let deleted: Vec<(EventType, String, i64)> = response
        .events()
        .iter()
        .map(|event| {
            let kv = event.kv().expect("kv");
            (
                event.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(
        deleted,
        [
            (EventType::Delete, "lr/a".to_string(), revision),
            (EventType::Delete, "lr/b".to_string(), revision),
        ],
        "a revoke deletes the attached keys in one revision"
    );
    assert_eq!(keys_under(&mut client, "lr/").await, ["lr/c"]);
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1, "a revoked lease is unknown");
    assert!(lease_ids(&mut client).await.is_empty());

    // Expiry: a 2 s lease with no keep-alive goes away with its key.
    let granted_at = Instant::now();
    let short = client.lease_grant(2, None).await.expect("grant").id();
    client
        .put("lr/short", "v", Some(PutOptions::new().with_lease(short)))
        .await
        .expect("put");
    let response = next_response(&mut stream).await;
    assert_eq!(response.events()[0].event_type(), EventType::Put);
    let deadline = Instant::now() + Duration::from_secs(20);
    let expired = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "the 2 s lease did not expire within 20 s"
        );
        match tokio::time::timeout(remaining, stream.message()).await {
            Ok(Ok(Some(response))) if !response.events().is_empty() => break response,
            Ok(Ok(Some(_))) => continue,
            other => panic!("watch ended while waiting for the expiry: {other:?}"),
        }
    };
    let elapsed = granted_at.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "a 2 s lease expired after only {elapsed:?}"
    );
    let event = &expired.events()[0];
    assert_eq!(event.event_type(), EventType::Delete);
    assert_eq!(event.kv().expect("kv").key(), b"lr/short");
    assert_eq!(keys_under(&mut client, "lr/").await, ["lr/c"]);
    let ttl = client.lease_time_to_live(short, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1);
    let revoke = client.lease_revoke(short).await;
    assert_eq!(status_of(revoke, "revoke expired").0, Code::NotFound);
}

/// The expected output of a lease capture with the reference lease ID replaced by `ours`.
fn expected(capture: &str, reference_hex: &str, ours: i64) -> String {
    reference::capture(capture)
        .stdout_text()
        .replace(reference_hex, &format!("{ours:016x}"))
}

fn lease_from_grant(stdout: &str) -> i64 {
    let id =
        reference::granted_lease(stdout).unwrap_or_else(|| panic!("no lease ID in {stdout:?}"));
    i64::try_from(id).expect("lease IDs are positive int64")
}

/// `remaining(599s)` may be 599 or 600; the rest must match exactly.
fn without_remaining(text: &str) -> String {
    common::Normalizer::new()
        .digits_after("remaining(", "<N>")
        .apply(text)
}

#[test]
fn etcdctl_lease_commands_match_etcd_34() {
    let server = Server::start();
    let env = reference::run_env();
    let reference_a = env["LEASE_A_HEX"].as_str();

    let output = server.etcdctl_ok(&["lease", "grant", "600"]);
    let lease = lease_from_grant(&output);
    let hex = format!("{lease:x}");
    assert_eq!(output, expected("lease-grant", reference_a, lease));

    let json = server.etcdctl_ok(&["lease", "grant", "300", "-w", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed["TTL"], 300);
    assert_eq!(parsed["Error"], "");
    assert!(parsed["ID"].as_u64().is_some_and(|id| id != 0));
    let json_lease = parsed["ID"].as_i64().expect("ID");

    server.etcdctl_ok(&["put", "l/a", "1", &format!("--lease={hex}")]);
    server.etcdctl_ok(&["put", "l/b", "2", &format!("--lease={hex}")]);
    assert_eq!(
        server.etcdctl_ok(&["lease", "keep-alive", "--once", &hex]),
        expected("lease-keep-alive-once", reference_a, lease)
    );
    assert_eq!(
        without_remaining(&server.etcdctl_ok(&["lease", "timetolive", &hex])),
        without_remaining(&expected("lease-timetolive", reference_a, lease))
    );
    // Attached keys come in no particular order.
    let with_keys = without_remaining(&server.etcdctl_ok(&["lease", "timetolive", &hex, "--keys"]));
    let reference_keys = without_remaining(&expected("lease-timetolive-keys", reference_a, lease));
    assert!(
        with_keys == reference_keys
            || with_keys == reference_keys.replace("[l/a l/b]", "[l/b l/a]"),
        "lease timetolive --keys:\n{with_keys}\nexpected like:\n{reference_keys}"
    );

    let list = server.etcdctl_ok(&["lease", "list"]);
    let mut lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.first(), Some(&"found 2 leases"));
    lines.remove(0);
    lines.sort();
    // `lease list` prints IDs as %016x: zero-padded, unlike the unpadded forms elsewhere.
    let mut ids = vec![format!("{hex:0>16}"), format!("{json_lease:016x}")];
    ids.sort();
    assert_eq!(lines, ids);

    assert_eq!(
        server.etcdctl_ok(&["lease", "revoke", &hex]),
        expected("lease-revoke", reference_a, lease)
    );
    assert_eq!(server.etcdctl_ok(&["get", "l/", "--prefix"]), "");
    assert_eq!(
        server.etcdctl_ok(&["lease", "timetolive", &hex]),
        expected("lease-timetolive-revoked", reference_a, lease)
    );

    // Unknown leases, as etcd 3.4's etcdctl reports them.
    for name in [
        "lease-revoke-unknown",
        "lease-keep-alive-once-unknown",
        "lease-timetolive-unknown",
    ] {
        let capture = reference::capture(name);
        let args: Vec<&str> = capture.command_line.split(' ').skip(2).collect();
        let output = server.etcdctl(&args);
        assert_eq!(output.status.code(), Some(capture.exit_code), "{name}");
        assert_eq!(
            common::stdout_text(&output),
            capture.stdout_text(),
            "{name}"
        );
        assert_eq!(
            common::without_client_logs(&common::stderr_text(&output)),
            common::without_client_logs(&capture.stderr_text()),
            "{name}"
        );
    }

    // Short TTLs are raised to the 2 s minimum.
    for (ttl, name, var) in [
        ("1", "lease-grant-1s", "LEASE_1S_HEX"),
        ("0", "lease-grant-zero-ttl", "LEASE_ZERO_HEX"),
    ] {
        let output = server.etcdctl_ok(&["lease", "grant", ttl]);
        let lease = lease_from_grant(&output);
        assert_eq!(output, expected(name, &env[var], lease));
    }
}

/// Short leases expire on time while clients keep writing: within one second of its deadline
/// (counted from when its grant was sent, so grant latency counts against the server) each
/// lease's key is gone and TimeToLive answers TTL -1, which etcdctl prints as `already expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_within_a_second_of_the_deadline_under_load() {
    const LOAD_TASKS: usize = 4;
    const LATENESS_MAX: Duration = Duration::from_secs(1);
    let server = Server::start();
    let mut client = server.client().await;
    // Lease queries are served once the leader's lessor counts deadlines (oxetcd answers them
    // only then), so the leases below are granted by a settled leader.
    client
        .lease_time_to_live(1, None)
        .await
        .expect("time-to-live of an unknown lease");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let puts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for task in 0..LOAD_TASKS {
        let mut client = client.clone();
        let (stop, puts) = (stop.clone(), puts.clone());
        load.push(tokio::spawn(async move {
            let value = "x".repeat(256);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .put(format!("load/{task}/{}", n % 100), value.as_str(), None)
                    .await
                    .expect("a put under load");
                n += 1;
                puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }

    // Two leases for each TTL, each with one key; deadlines as the client sent the grant.
    let mut pending: Vec<(i64, String, Instant)> = Vec::new();
    for ttl in [3i64, 4, 5, 6] {
        for copy in 0..2 {
            let sent = Instant::now();
            let id = client.lease_grant(ttl, None).await.expect("grant").id();
            let key = format!("expiring/{ttl}/{copy}");
            client
                .put(key.as_str(), "v", Some(PutOptions::new().with_lease(id)))
                .await
                .expect("put with the lease");
            pending.push((id, key, sent + Duration::from_secs(ttl as u64)));
        }
    }
    let puts_before = puts.load(std::sync::atomic::Ordering::Relaxed);

    let mut lateness: Vec<(i64, Duration)> = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() {
        assert!(
            Instant::now() < give_up,
            "leases {:?} never expired",
            pending.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        let mut still = Vec::new();
        for (id, key, deadline) in pending {
            // The lease was still there when the server answered, which is no earlier than when
            // the question was sent: lateness is measured from the sending, so the client's own
            // scheduling under load does not count against the server.
            let asked = Instant::now();
            let ttl = client
                .lease_time_to_live(id, None)
                .await
                .expect("time-to-live")
                .ttl();
            let gone = ttl == -1 && client.get(key.as_str(), None).await.expect("get").count() == 0;
            let now = Instant::now();
            if gone {
                assert!(
                    now >= deadline,
                    "lease {id:x} expired {:?} before its deadline",
                    deadline - now
                );
                lateness.push((id, now.saturating_duration_since(deadline)));
            } else {
                assert!(
                    asked <= deadline + LATENESS_MAX,
                    "lease {id:x} (key {key}) still there {:?} after its deadline (TTL {ttl})\n{}",
                    asked - deadline,
                    server.log_report()
                );
                still.push((id, key, deadline));
            }
        }
        pending = still;
        // Yield to the load between rounds of queries.
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let puts_during = puts.load(std::sync::atomic::Ordering::Relaxed) - puts_before;
    assert!(
        puts_during > 100,
        "the load wrote only {puts_during} keys while the leases ran out"
    );
    let mut millis: Vec<u128> = lateness.iter().map(|(_, d)| d.as_millis()).collect();
    millis.sort_unstable();
    eprintln!("lease expiry lateness under load ({puts_during} puts meanwhile), ms: {millis:?}");
    for (id, _) in &lateness {
        let out = server.etcdctl_ok(&["lease", "timetolive", &format!("{id:x}")]);
        assert_eq!(out.trim(), format!("lease {id:016x} already expired"));
    }
}
