//! Black-box tests of maintenance and cluster operations: Status, health, HashKV, member list,
//! compaction (manual, periodic and revision auto-compaction), defragment, the NOSPACE alarm and
//! its recovery, and snapshot save and restore; through etcd-client, etcdctl and plain HTTP.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::process::{Process, READY_TIMEOUT};
use common::reference::{self, Ids};
use common::{Normalizer, Server};
use etcd_client::{
    AlarmAction, AlarmType, Client, DeleteOptions, Error, GetOptions, KeyValue, Txn, TxnOp,
};
use tonic::Code;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// The etcd API version oxetcd reports (Status.version and /version).
const OXETCD_API_VERSION: &str = "3.5.0";

fn status_of<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> (Code, String) {
    match result {
        Err(Error::GRpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("{what}: expected a gRPC error status, got {other:?}"),
    }
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

async fn all_kvs(client: &mut Client) -> Vec<KeyValue> {
    client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all keys")
        .kvs()
        .to_vec()
}

/// Key, value, create revision, mod revision, version and lease of one KeyValue.
type KvFields = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

fn kv_tuples(kvs: &[KeyValue]) -> Vec<KvFields> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

/// Member ID and cluster ID, from a response header.
async fn ids(client: &mut Client) -> (u64, u64) {
    let response = client.get("id-probe", None).await.expect("get");
    let header = response.header().expect("header");
    (header.member_id(), header.cluster_id())
}

/// Normalisers for the reference side and for `server`, plus masks for values that legitimately
/// differ between two runs of the same commands (header revisions, hashes).
async fn normalizers(server: &Server, client: &mut Client) -> (Normalizer, Normalizer) {
    let (member_id, cluster_id) = ids(client).await;
    let actual = Ids {
        endpoints: vec![server.endpoint()],
        peer_urls: vec![server.peer_url()],
        member_ids: vec![member_id],
        cluster_ids: vec![cluster_id],
        leases: Vec::new(),
    };
    let extra = |normalizer: Normalizer| {
        normalizer
            .json_number("revision")
            .json_number("hash")
            .json_number("compact_revision")
    };
    (
        extra(Ids::of_reference().normalizer()),
        extra(actual.normalizer()),
    )
}

/// Runs etcdctl and compares exit code, stdout and stderr with capture `name` after both sides
/// went through their normaliser.
fn assert_like_capture(
    server: &Server,
    name: &str,
    args: &[&str],
    reference_norm: &Normalizer,
    actual_norm: &Normalizer,
) {
    let capture = reference::capture(name);
    let output = server.etcdctl(args);
    assert_eq!(
        output.status.code(),
        Some(capture.exit_code),
        "{name}: exit code; stderr:\n{}",
        common::stderr_text(&output)
    );
    for (what, want, got) in [
        ("stdout", &capture.stdout, &output.stdout),
        ("stderr", &capture.stderr, &output.stderr),
    ] {
        assert_eq!(
            reference::comparable(name, actual_norm, got),
            reference::comparable(name, reference_norm, want),
            "{name} {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_hashkv_and_member_list() {
    let mut server = Server::start();
    let mut client = server.client().await;
    for index in 0..20 {
        client
            .put(format!("s/{index:02}"), format!("value {index}"), None)
            .await
            .expect("put");
    }
    client.delete("s/00", None).await.expect("delete");
    let (member_id, cluster_id) = ids(&mut client).await;

    let status = client.status().await.expect("status");
    assert_eq!(status.leader(), member_id, "a single member leads itself");
    assert_eq!(status.header().expect("header").member_id(), member_id);
    assert!(status.raft_term() >= 1);
    assert!(
        status.raft_index() > 0,
        "raft index {}",
        status.raft_index()
    );
    assert!(status.raft_applied_index() > 0);
    assert!(status.raft_index() >= status.raft_applied_index());
    assert!(status.db_size() > 0, "db size {}", status.db_size());
    assert!(!status.is_learner());
    assert!(status.errors().is_empty(), "{:?}", status.errors());
    if common::running_real_etcd() {
        // etcd 3.4 reports its own version; oxetcd implements and reports API 3.5.
        assert!(status.version().starts_with("3.4."), "{}", status.version());
    } else {
        assert_eq!(status.version(), OXETCD_API_VERSION);
    }

    let (reference_norm, actual_norm) = normalizers(&server, &mut client).await;
    for (name, args) in [
        ("endpoint-status", &["endpoint", "status"][..]),
        (
            "endpoint-status-table",
            &["endpoint", "status", "-w", "table"][..],
        ),
        (
            "endpoint-status-json",
            &["endpoint", "status", "-w", "json"][..],
        ),
        ("endpoint-health", &["endpoint", "health"][..]),
        (
            "endpoint-health-table",
            &["endpoint", "health", "-w", "table"][..],
        ),
        (
            "endpoint-health-json",
            &["endpoint", "health", "-w", "json"][..],
        ),
        (
            "endpoint-hashkv-json",
            &["endpoint", "hashkv", "-w", "json"][..],
        ),
        ("member-list", &["member", "list"][..]),
        ("member-list-table", &["member", "list", "-w", "table"][..]),
        ("member-list-json", &["member", "list", "-w", "json"][..]),
        ("alarm-list", &["alarm", "list"][..]),
        ("alarm-disarm", &["alarm", "disarm"][..]),
    ] {
        assert_like_capture(&server, name, args, &reference_norm, &actual_norm);
    }
    let members = client.member_list().await.expect("member list");
    let [member] = members.members() else {
        panic!("one member expected: {:?}", members.members());
    };
    assert_eq!(member.id(), member_id);
    assert_eq!(member.name(), common::MEMBER_NAME);
    assert_eq!(member.peer_urls(), [server.peer_url()]);
    assert_eq!(member.client_urls(), [server.endpoint()]);
    assert!(!member.is_learner());
    assert_eq!(members.header().expect("header").cluster_id(), cluster_id);

    // HashKV through the client and etcdctl agree, and survive a restart.
    let hash = client.hash_kv(0).await.expect("hash kv");
    assert_eq!(hash.compact_version(), -1, "nothing compacted yet");
    let simple = server.etcdctl_ok(&["endpoint", "hashkv"]);
    assert_eq!(simple, format!("{}, {}\n", server.endpoint(), hash.hash()));
    let table = common::table_cells(&server.etcdctl_ok(&["endpoint", "hashkv", "-w", "table"]));
    assert_eq!(
        table,
        [
            vec!["ENDPOINT".to_string(), "HASH".to_string()],
            vec![server.endpoint(), hash.hash().to_string()],
        ]
    );
    let before_restart = kv_tuples(&all_kvs(&mut client).await);
    let revision = current_revision(&mut client).await;

    // Plain HTTP while we are here.
    let health = server.http_get("/health");
    assert_eq!(health.status, 200);
    let body: serde_json::Value = serde_json::from_str(&health.text()).expect("JSON health");
    assert_eq!(body["health"], "true");
    let version = server.http_get("/version");
    assert_eq!(version.status, 200);
    let body: serde_json::Value = serde_json::from_str(&version.text()).expect("JSON version");
    if common::running_real_etcd() {
        assert!(
            body["etcdserver"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.4."))
        );
    } else {
        // API 3.5: `{"etcdserver":"3.5.0","etcdcluster":"3.5.0","oxetcd":"<version>"}`, and the
        // 3.5 health body carries a reason.
        assert_eq!(body["etcdserver"], OXETCD_API_VERSION);
        assert_eq!(body["etcdcluster"], OXETCD_API_VERSION);
        assert!(
            body["oxetcd"].as_str().is_some_and(|v| !v.is_empty()),
            "{body}"
        );
        let health: serde_json::Value =
            serde_json::from_str(&server.http_get("/health").text()).expect("JSON health");
        assert_eq!(health["reason"], "");
    }

    drop(client);
    server.restart();
    let mut client = server.client().await;
    let after = client.hash_kv(0).await.expect("hash kv after restart");
    assert_eq!(
        after.hash(),
        hash.hash(),
        "HashKV is the same after a restart"
    );
    assert_eq!(
        server.etcdctl_ok(&["endpoint", "hashkv"]),
        simple,
        "etcdctl endpoint hashkv after a restart"
    );
    assert_eq!(kv_tuples(&all_kvs(&mut client).await), before_restart);
    assert_eq!(current_revision(&mut client).await, revision);
    let status = client.status().await.expect("status after restart");
    assert_eq!(status.leader(), member_id, "same member ID after a restart");
    assert!(status.raft_applied_index() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_reads_below_it() {
    let server = Server::start();
    let mut client = server.client().await;
    for value in ["1", "2", "3", "4", "5"] {
        client.put("c/a", value, None).await.expect("put");
    }
    assert_eq!(current_revision(&mut client).await, 6);
    let (reference_norm, actual_norm) = normalizers(&server, &mut client).await;

    assert_eq!(
        server.etcdctl_ok(&["compaction", "4"]),
        "compacted revision 4\n"
    );
    let below = server.etcdctl(&["get", "c/a", "--rev=3"]);
    let capture = reference::capture("get-compacted-rev");
    assert_eq!(below.status.code(), Some(capture.exit_code));
    assert_eq!(
        common::without_client_logs(&common::stderr_text(&below)),
        common::without_client_logs(&capture.stderr_text())
    );
    assert_eq!(
        server.etcdctl_ok(&["get", "c/a", "--rev=4"]),
        "c/a\n3\n",
        "reading at the compact revision works"
    );
    for (name, args) in [
        ("compaction-same-rev", &["compaction", "4"][..]),
        ("compaction-older-rev", &["compaction", "3"][..]),
        ("compaction-future-rev", &["compaction", "1059"][..]),
    ] {
        assert_like_capture(&server, name, args, &reference_norm, &actual_norm);
    }
    assert_eq!(
        server.etcdctl_ok(&["compaction", "6", "--physical"]),
        "compacted revision 6\n"
    );
    let capture = reference::capture("endpoint-hashkv-rev-compacted");
    let output = server.etcdctl(&["endpoint", "hashkv", "--rev=5"]);
    assert_eq!(output.status.code(), Some(capture.exit_code));
    assert_eq!(
        actual_norm.apply(&common::stderr_text(&output)),
        reference_norm.apply(&capture.stderr_text()),
        "hashkv below the compact revision"
    );

    // The same through the client.
    let read = client
        .get("c/a", Some(GetOptions::new().with_revision(5)))
        .await;
    assert_eq!(
        status_of(read, "get below"),
        (Code::OutOfRange, COMPACTED.to_string())
    );
    let read = client
        .get("c/a", Some(GetOptions::new().with_revision(6)))
        .await
        .expect("get at the compact revision");
    assert_eq!(read.kvs()[0].value(), b"5");
    let again = client.compact(6, None).await;
    assert_eq!(
        status_of(again, "compact again"),
        (Code::OutOfRange, COMPACTED.to_string())
    );
    let future = client.compact(100, None).await;
    assert_eq!(
        status_of(future, "compact future"),
        (Code::OutOfRange, FUTURE.to_string())
    );
    let hash = client.hash_kv(0).await.expect("hash kv");
    assert_eq!(hash.compact_version(), 6);
    assert_eq!(
        current_revision(&mut client).await,
        6,
        "compaction does not write a revision"
    );
    // The latest value of every key survives compaction.
    assert_eq!(
        client.get("c/a", None).await.expect("get").kvs()[0].version(),
        5
    );
}

/// Writes a key every 100 ms until a read at revision 2 fails as compacted, or `deadline`.
async fn wait_until_compacted(client: &mut Client, below: i64, deadline: Duration, writes: bool) {
    let until = Instant::now() + deadline;
    loop {
        if writes {
            client.put("ac/tick", "x", None).await.expect("put");
        }
        match client
            .get("ac/a", Some(GetOptions::new().with_revision(below)))
            .await
        {
            Ok(_) => {}
            Err(err) => {
                assert_eq!(
                    status_of::<()>(Err(err), "read below"),
                    (Code::OutOfRange, COMPACTED.to_string())
                );
                return;
            }
        }
        assert!(
            Instant::now() < until,
            "revision {below} still readable after {deadline:?} of auto-compaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction() {
    // etcd 3.4 accepts a duration for periodic retention and compacts every retention period
    // when it is under an hour.
    let server = Server::start_with(&[
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1s",
    ]);
    let mut client = server.client().await;
    for value in ["1", "2", "3"] {
        client.put("ac/a", value, None).await.expect("put");
    }
    wait_until_compacted(&mut client, 2, Duration::from_secs(30), true).await;
    let latest = client.get("ac/a", None).await.expect("get");
    assert_eq!(
        latest.kvs()[0].value(),
        b"3",
        "compaction keeps the latest version"
    );
}

/// Revision-mode auto compaction. etcd checks every 5 minutes; oxetcd keeps that default but
/// takes `--auto-compaction-check-interval`, so against oxetcd the test checks every 200 ms.
/// Against real etcd it waits the full 5 minutes, bounded by this deadline.
const REVISION_COMPACTION_DEADLINE: Duration = Duration::from_secs(330);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_auto_compaction() {
    let mut args = vec![
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=5",
    ];
    if !common::running_real_etcd() {
        args.push("--auto-compaction-check-interval=200ms");
    }
    let server = Server::start_with(&args);
    let mut client = server.client().await;
    for index in 0..20 {
        client
            .put("ac/a", index.to_string(), None)
            .await
            .expect("put");
    }
    let head = current_revision(&mut client).await;
    assert_eq!(head, 21);
    // Keeps the last 5 revisions: compacts at head - 5 = 16.
    wait_until_compacted(&mut client, head - 6, REVISION_COMPACTION_DEADLINE, false).await;
    let at = client
        .get("ac/a", Some(GetOptions::new().with_revision(head - 5)))
        .await
        .expect("the retained revisions stay readable");
    assert_eq!(at.kvs()[0].value(), b"14");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_keeps_data_and_writes_flow() {
    let server = Server::start();
    let mut client = server.client().await;
    let value = "d".repeat(1024);
    for index in 0..1000 {
        client
            .put(format!("df/{index:04}"), value.as_str(), None)
            .await
            .expect("put");
    }
    client
        .delete("df/00", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete a tenth");
    let head = current_revision(&mut client).await;
    client.compact(head, None).await.expect("compact");
    let marker = client.put("df/marker", "m", None).await.expect("put");
    let marked = marker.header().expect("header").revision();
    let before = kv_tuples(&all_kvs(&mut client).await);
    let hash = client.hash_kv(marked).await.expect("hash").hash();

    // Writers run while the member defragments three times.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut client = client.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut written = 0;
            while !stop.load(Ordering::Relaxed) {
                client
                    .put(format!("dw/{written:05}"), "w", None)
                    .await
                    .unwrap_or_else(|err| panic!("put {written} during defrag: {err}"));
                written += 1;
            }
            written
        })
    };
    let endpoint = server.endpoint();
    let defrags = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| common::run_etcdctl(&endpoint, &["defrag"], None, common::ETCDCTL_TIMEOUT))
            .collect::<Vec<_>>()
    })
    .await
    .expect("defrag thread");
    let mut maintenance = client.maintenance_client();
    maintenance
        .defragment()
        .await
        .expect("defragment through the client");
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer does not panic");
    assert!(written > 0, "the writer made progress");
    for output in &defrags {
        assert!(output.status.success(), "{}", common::stderr_text(output));
        assert_eq!(
            common::stdout_text(output),
            format!(
                "Finished defragmenting etcd member[{}]\n",
                server.endpoint()
            )
        );
    }

    let after: Vec<_> = kv_tuples(&all_kvs(&mut client).await)
        .into_iter()
        .filter(|kv| kv.0.starts_with(b"df/"))
        .collect();
    assert_eq!(after, before, "defragment keeps every key");
    let written_keys = client
        .get(
            "dw/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(
        written_keys.count(),
        written as i64,
        "every acknowledged put is stored"
    );
    let hash_after = client
        .hash_kv(marked)
        .await
        .expect("hash at the marker")
        .hash();
    assert_eq!(hash_after, hash, "defragment does not change HashKV");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_and_recovery() {
    // 8 MiB: small enough to fill in a few dozen puts, large enough for an empty store.
    let server = Server::start_with(&["--quota-backend-bytes", "8388608"]);
    let mut client = server.client().await;
    let (member_id, _) = ids(&mut client).await;
    let (reference_norm, actual_norm) = normalizers(&server, &mut client).await;
    client.put("small", "x", None).await.expect("put");
    let value = vec![b'q'; 256 * 1024];
    let mut filled = None;
    for index in 0..200 {
        match client
            .put(format!("fill/{index:03}"), value.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(err) => {
                assert_eq!(
                    status_of::<()>(Err(err), "put over quota"),
                    (Code::ResourceExhausted, NO_SPACE.to_string())
                );
                filled = Some(index);
                break;
            }
        }
    }
    assert!(
        filled.is_some(),
        "200 puts of 256 KiB never exceeded an 8 MiB quota"
    );

    let alarms = client
        .maintenance_client()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    let raised: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|alarm| (alarm.member_id(), alarm.alarm()))
        .collect();
    assert_eq!(raised, [(member_id, AlarmType::Nospace)]);
    let alarm_text = format!("memberID:{member_id} alarm:NOSPACE ");
    let status = client.status().await.expect("status");
    assert_eq!(status.errors(), std::slice::from_ref(&alarm_text));

    // Writes are refused, reads and deletes work.
    for (name, args, stdin) in [
        ("nospace-put", vec!["put", "more", "v"], None),
        ("nospace-alarm-list", vec!["alarm", "list"], None),
        ("nospace-get", vec!["get", "small", "--keys-only"], None),
        (
            "nospace-txn-get",
            vec!["txn"],
            Some("\nget small --keys-only\n\n\n"),
        ),
        ("nospace-txn-put", vec!["txn"], Some("\nput t1 x\n\n\n")),
        ("nospace-lease-grant", vec!["lease", "grant", "60"], None),
    ] {
        let capture = reference::capture(name);
        let output = match stdin {
            Some(text) => server.etcdctl_stdin(&args, text),
            None => server.etcdctl(&args),
        };
        assert_eq!(output.status.code(), Some(capture.exit_code), "{name}");
        for (want, got) in [
            (&capture.stdout, &output.stdout),
            (&capture.stderr, &output.stderr),
        ] {
            assert_eq!(
                actual_norm.apply(&String::from_utf8_lossy(got)),
                reference_norm.apply(&String::from_utf8_lossy(want)),
                "{name}"
            );
        }
    }
    let txn = client
        .txn(Txn::new().and_then([TxnOp::put("t2", "x", None)]))
        .await;
    assert_eq!(
        status_of(txn, "txn put"),
        (Code::ResourceExhausted, NO_SPACE.to_string())
    );
    let grant = client.lease_grant(60, None).await;
    assert_eq!(
        status_of(grant, "lease grant"),
        (Code::ResourceExhausted, NO_SPACE.to_string())
    );
    let table = server.etcdctl_ok(&["endpoint", "status", "-w", "table"]);
    assert!(
        table.contains(&format!("memberID:{member_id}")) && table.contains("alarm:NOSPACE"),
        "endpoint status shows the alarm:\n{table}"
    );
    let health = server.http_get("/health");
    assert_eq!(health.status, 503, "{}", health.text());
    let body: serde_json::Value = serde_json::from_str(&health.text()).expect("JSON health");
    assert_eq!(body["health"], "false");
    if !common::running_real_etcd() {
        // etcd 3.5 names the reason; 3.4 prints only {"health":"false"}.
        assert_eq!(body["reason"], "ALARM NOSPACE");
    }
    assert_eq!(server.etcdctl_ok(&["del", "small"]), "1\n");

    // Recovery: delete, compact, defragment, disarm.
    let deleted = client
        .delete("fill/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("deletes work under NOSPACE");
    assert_eq!(deleted.deleted(), filled.expect("checked above") as i64);
    let head = current_revision(&mut client).await;
    assert_eq!(
        server.etcdctl_ok(&["compaction", &head.to_string(), "--physical"]),
        format!("compacted revision {head}\n")
    );
    assert_eq!(
        server.etcdctl_ok(&["defrag"]),
        format!(
            "Finished defragmenting etcd member[{}]\n",
            server.endpoint()
        )
    );
    assert_eq!(
        server.etcdctl_ok(&["alarm", "disarm"]),
        format!("{alarm_text}\n")
    );
    assert_eq!(server.etcdctl_ok(&["alarm", "list"]), "");
    assert_eq!(server.etcdctl_ok(&["put", "more", "after-disarm"]), "OK\n");
    client
        .put("more", "again", None)
        .await
        .expect("put after disarm");
    assert!(client.status().await.expect("status").errors().is_empty());
    assert_eq!(server.http_get("/health").status, 200);
}

/// A server process started on an existing data dir (the fixture always makes a fresh one).
struct DataDirServer {
    process: Process,
    endpoint: String,
}

impl DataDirServer {
    fn start(data_dir: &Path, client_port: u16, peer_port: u16, log_path: &Path) -> DataDirServer {
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = [
            "--name",
            common::MEMBER_NAME,
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("{}={peer}", common::MEMBER_NAME),
        ]
        .map(String::from);
        let mut process = Process::new(
            "server on the restored dir",
            common::server_bin(),
            log_path.to_path_buf(),
        );
        process.spawn(&args);
        if let Err(reason) = process.wait_healthy(client_port, Instant::now() + READY_TIMEOUT) {
            panic!("{reason}:\n{}", process.log());
        }
        DataDirServer { process, endpoint }
    }
}

impl Drop for DataDirServer {
    fn drop(&mut self) {
        self.process.kill();
        if thread::panicking() {
            eprintln!("--- restored server log ---\n{}", self.process.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_and_restore() {
    let server = Server::start();
    let mut client = server.client().await;
    for index in 0..50 {
        client
            .put(format!("snap/{:02}", index % 20), format!("v{index}"), None)
            .await
            .expect("put");
    }
    client.delete("snap/05", None).await.expect("delete");
    client.put("snap/last", "end", None).await.expect("put");
    // Users and roles travel in the snapshot too.
    server.etcdctl_ok(&["role", "add", "readers"]);
    server.etcdctl_ok(&["user", "add", "erin:pw"]);
    server.etcdctl_ok(&["user", "grant-role", "erin", "readers"]);
    let head = current_revision(&mut client).await;
    let expected = kv_tuples(&all_kvs(&mut client).await);

    let file = server.dir().join("backup.db");
    let file_text = file.display().to_string();
    let saved = server.etcdctl_ok(&["snapshot", "save", &file_text]);
    assert_eq!(
        saved,
        reference::capture("snapshot-save")
            .stdout_text()
            .replace("snapshot.db", &file_text)
    );
    assert!(std::fs::metadata(&file).is_ok_and(|meta| meta.len() > 0));

    let client_port = common::free_port();
    let peer_port = common::free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let restored_dir = server.dir().join("restored");
    let restore_args = [
        "--data-dir".to_string(),
        restored_dir.display().to_string(),
        "--name".to_string(),
        common::MEMBER_NAME.to_string(),
        "--initial-cluster".to_string(),
        format!("{}={peer}", common::MEMBER_NAME),
        "--initial-advertise-peer-urls".to_string(),
        peer.clone(),
    ];
    let output = if common::running_real_etcd() {
        // `oxetcd snapshot restore` is oxetcd's; etcd 3.4 restores with etcdctl.
        Command::new(common::etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", &file_text])
            .args(&restore_args)
            .output()
            .expect("etcdctl runs")
    } else {
        Command::new(common::server_bin())
            .args(["snapshot", "restore", &file_text])
            .args(&restore_args)
            .output()
            .expect("oxetcd runs")
    };
    assert!(
        output.status.success(),
        "snapshot restore failed:\nstdout:\n{}\nstderr:\n{}",
        common::stdout_text(&output),
        common::stderr_text(&output)
    );

    let restored = DataDirServer::start(
        &restored_dir,
        client_port,
        peer_port,
        &server.dir().join("restored.log"),
    );
    let mut restored_client = Client::connect([restored.endpoint.clone()], None)
        .await
        .expect("connect to the restored member");
    assert_eq!(
        kv_tuples(&all_kvs(&mut restored_client).await),
        expected,
        "every key, value, revision and version comes back"
    );
    assert_eq!(current_revision(&mut restored_client).await, head);
    let erin = restored_client
        .user_get("erin")
        .await
        .expect("the restored member knows the saved user");
    assert_eq!(erin.roles(), ["readers"]);
    let put = restored_client
        .put("after-restore", "x", None)
        .await
        .expect("the restored member takes writes");
    assert_eq!(put.header().expect("header").revision(), head + 1);
    let members = restored_client.member_list().await.expect("member list");
    let [member] = members.members() else {
        panic!("one member expected: {:?}", members.members());
    };
    assert_eq!(member.name(), common::MEMBER_NAME);
    assert_eq!(member.peer_urls(), [peer]);
    // The original member is untouched.
    assert_eq!(current_revision(&mut client).await, head);
}

/// /health, /livez, /readyz, /version and /metrics answer on the client URL and on
/// --listen-metrics-urls alike, with what kubeadm's probes and Prometheus expect.
#[test]
fn http_endpoints_on_client_and_metrics_urls() {
    if common::running_real_etcd() {
        // etcd 3.4 has no /livez or /readyz; the 3.5 behaviour is what oxetcd serves.
        return;
    }
    let metrics_port = common::free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let server = Server::start_with(&["--listen-metrics-urls", &metrics_url]);
    server.etcdctl_ok(&["put", "probe", "1"]);
    let client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.client_port()));
    let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port));
    for addr in [client_addr, metrics_addr] {
        let get = |path: &str| common::http_get(addr, path).expect("GET answers");
        let health = get("/health");
        assert_eq!(
            (health.status, health.text().as_str()),
            (200, r#"{"health":"true","reason":""}"#)
        );
        let livez = get("/livez");
        assert_eq!((livez.status, livez.text().as_str()), (200, "ok\n"));
        let readyz = get("/readyz?verbose");
        assert_eq!(readyz.status, 200);
        assert!(
            readyz.text().contains("[+]linearizable_read ok"),
            "{}",
            readyz.text()
        );
        assert!(readyz.text().ends_with("ok\n"), "{}", readyz.text());
        let version = get("/version");
        assert!(
            version
                .text()
                .starts_with(r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0","oxetcd":"#)
        );
        let metrics = get("/metrics").text();
        for line in ["etcd_server_has_leader 1", "etcd_server_is_leader 1"] {
            assert!(
                metrics.lines().any(|l| l == line),
                "missing {line:?} in\n{metrics}"
            );
        }
        assert!(
            metrics.contains("etcd_mvcc_db_total_size_in_bytes "),
            "{metrics}"
        );
    }
}

/// The standard gRPC health service answers SERVING, as etcd's does (load balancers and
/// etcd's own robustness tests probe it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_service_reports_serving() {
    use oxetcd::proto::grpc::health::v1::HealthCheckRequest;
    use oxetcd::proto::grpc::health::v1::health_check_response::ServingStatus;
    use oxetcd::proto::grpc::health::v1::health_client::HealthClient;

    let server = Server::start();
    let mut health = HealthClient::connect(server.endpoint())
        .await
        .expect("connects to the client URL");
    for service in ["", "etcdserverpb.KV"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check answers")
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("an unknown service is refused");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// HashKV is etcd's (CRC-32C over etcd's revision keys and marshalled KeyValues, honouring the
/// compaction), so an operator can compare a member of either kind: the same history gives the
/// hashes Debian's etcd 3.4.23 reported for it (measured with this test and
/// `OXETCD_TEST_BIN=/usr/bin/etcd`, which it passes too). The history has overwrites, a delete,
/// a txn writing two keys in one revision, a key attached to a lease with a fixed ID, and a
/// physical compaction that drops some revisions and keeps others.
#[tokio::test]
async fn hashkv_is_the_hash_etcd_reports_for_the_same_history() {
    let server = Server::start();
    let mut client = server.client().await;
    client.put("h/a", "1", None).await.expect("put"); // rev 2
    client.put("h/b", "2", None).await.expect("put"); // rev 3
    client.put("h/a", "3", None).await.expect("put"); // rev 4
    client.delete("h/b", None).await.expect("delete"); // rev 5
    let txn = Txn::new().and_then([TxnOp::put("h/c", "5", None), TxnOp::put("h/d", "6", None)]);
    client.txn(txn).await.expect("txn"); // rev 6
    let lease = etcd_client::LeaseGrantOptions::new().with_id(0x1234);
    client.lease_grant(600, Some(lease)).await.expect("lease");
    let attached = etcd_client::PutOptions::new().with_lease(0x1234);
    client.put("h/e", "7", Some(attached)).await.expect("put"); // rev 7
    client.put("h/a", "8", None).await.expect("put"); // rev 8

    let mut hashes = Vec::new();
    for rev in [0, 3, 5, 6] {
        let hash = client.hash_kv(rev).await.expect("hashkv");
        hashes.push((rev, hash.hash(), hash.compact_version()));
    }
    client
        .compact(
            4,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    // Above the compaction etcd drops from the hash what a compaction at the hashed revision
    // would drop: h/b's revision 3 is still stored but not hashed at 6.
    for rev in [0, 5, 6, 7] {
        let hash = client.hash_kv(rev).await.expect("hashkv after compaction");
        hashes.push((rev, hash.hash(), hash.compact_version()));
    }
    // With every key deleted, a compaction at the current revision would keep nothing, and etcd
    // then skips no revision at all. (A tombstone at exactly the compaction revision is where
    // oxetcd and etcd 3.4 differ: oxetcd keeps it, as later etcd does (etcd #19179), so this
    // history avoids one.)
    client
        .delete("h/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete all"); // rev 9
    let hash = client.hash_kv(0).await.expect("hashkv with no live key");
    hashes.push((0, hash.hash(), hash.compact_version()));
    let expected: &[(i64, u32, i64)] = &[
        (0, 2694793290, -1),
        (3, 1095820612, -1),
        (5, 1760981099, -1),
        (6, 4050140123, -1),
        (0, 249906142, 4),
        (5, 42593514, 4),
        (6, 2960460730, 4),
        (7, 1942593385, 4),
        (0, 626468826, 4),
    ];
    assert_eq!(hashes, expected, "(revision, HashKV, compact revision)");
}
