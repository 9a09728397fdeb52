//! `oxetcd snapshot export --format etcd`: a snapshot saved from oxetcd with `etcdctl snapshot
//! save`, exported, is a file Debian's etcdctl 3.4 reads (`snapshot status`) and restores
//! (`snapshot restore`) into a data directory from which Debian's etcd 3.4 serves the same keys
//! at every retained revision, the same compaction, leases with their keys, users, roles and
//! the auth-enabled flag, and the same HashKV. The same history also goes to a real etcd 3.4,
//! whose own snapshot gives the revision and key count `snapshot status` must report for the
//! export. A round trip etcd → oxetcd → etcd leaves the same history and HashKV, from and to
//! Debian's etcd 3.4 and etcd 3.5.1 (fetched by `.ci/setup`).
//!
//! oxetcd-only: the command is oxetcd's, and etcd is the reference here, so under
//! `OXETCD_TEST_BIN=/usr/bin/etcd` the tests return at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, Permission, PutOptions, Txn, TxnOp,
};

use crate::common::process::Process;
use crate::common::{self, ETCDCTL_TIMEOUT, READY_TIMEOUT, Server};

const ROOT_PASSWORD: &str = "rootpw";
const ETCD_BIN: &str = "/usr/bin/etcd";

/// Leases of the history: (ID, TTL in seconds); the last has no key.
const LEASES: [(i64, i64); 3] = [(0x1234, 600), (0x5678, 900), (0x9abc, 300)];
/// The compaction revision of the history (a put, so no tombstone sits at it).
const COMPACT_REV: i64 = 4;

/// A member started by hand on a data directory (a fresh reference etcd, or etcd on the
/// restored directory), on loopback ports, killed on drop.
struct Member {
    process: Process,
    endpoint: String,
}

impl Member {
    fn start(bin: &Path, data_dir: &Path, name: &str, peer_port: u16, log: &Path) -> Member {
        let client_port = common::free_port();
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = [
            "--name",
            name,
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
            &format!("{name}={peer}"),
        ]
        .map(String::from);
        let mut process = Process::new(name, bin.to_path_buf(), log.to_path_buf());
        process.spawn(&args);
        if let Err(reason) = process.wait_healthy(client_port, Instant::now() + READY_TIMEOUT) {
            panic!("{reason}:\n{}", process.log());
        }
        Member { process, endpoint }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.process.log_report("member"));
        }
    }
}

async fn connect(endpoint: &str, root: bool) -> Client {
    let options = root.then(|| ConnectOptions::new().with_user("root", ROOT_PASSWORD));
    Client::connect([endpoint], options)
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

/// Puts, overwrites, deletes, a txn, leases with and without keys, a physical compaction, then
/// users and roles and auth enabled. Returns the head revision.
async fn write_history(endpoint: &str) -> i64 {
    let mut c = connect(endpoint, false).await;
    c.put("h/a", "1", None).await.expect("put"); // 2
    c.put("h/b", "2", None).await.expect("put"); // 3
    c.put("h/a", "3", None).await.expect("put"); // 4
    c.delete("h/b", None).await.expect("delete"); // 5
    let txn = Txn::new().and_then([TxnOp::put("h/c", "5", None), TxnOp::put("h/d", "6", None)]);
    c.txn(txn).await.expect("txn"); // 6
    for (id, ttl) in LEASES {
        let options = LeaseGrantOptions::new().with_id(id);
        c.lease_grant(ttl, Some(options))
            .await
            .expect("lease grant");
    }
    let on = |id: i64| Some(PutOptions::new().with_lease(id));
    c.put("h/e", "7", on(LEASES[0].0)).await.expect("put"); // 7
    c.put("h/f", "8", on(LEASES[1].0)).await.expect("put"); // 8
    c.put("h/g", "9", on(LEASES[1].0)).await.expect("put"); // 9
    c.put("h/a", "10", None).await.expect("put"); // 10
    let physical = CompactionOptions::new().with_physical();
    c.compact(COMPACT_REV, Some(physical))
        .await
        .expect("compact");
    c.put("h/c", "11", None).await.expect("put"); // 11
    c.delete("h/d", None).await.expect("delete"); // 12
    c.put("other", "13", None).await.expect("put"); // 13
    c.role_add("root").await.expect("role add root");
    c.role_add("reader").await.expect("role add reader");
    let read_h = Permission::read("h/").with_prefix();
    c.role_grant_permission("reader", read_h)
        .await
        .expect("grant");
    c.user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("user add root");
    c.user_grant_role("root", "root").await.expect("grant root");
    c.user_add("alice", "alicepw", None)
        .await
        .expect("user add alice");
    c.user_grant_role("alice", "reader")
        .await
        .expect("grant reader");
    c.auth_enable().await.expect("auth enable");
    13
}

/// `etcdctl snapshot save` as root.
fn save_snapshot(endpoint: &str, file: &Path) {
    let file = file.display().to_string();
    let user = format!("--user=root:{ROOT_PASSWORD}");
    let output = common::run_etcdctl(
        endpoint,
        &[&user, "snapshot", "save", &file],
        None,
        ETCDCTL_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "snapshot save from {endpoint}: {}",
        common::stderr_text(&output)
    );
}

/// Runs etcdctl without an endpoint (`snapshot status`, `snapshot restore`), expecting success.
fn etcdctl_offline(args: &[&str]) -> String {
    let output = Command::new(common::etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl runs");
    assert!(
        output.status.success(),
        "etcdctl {args:?}:\nstdout:\n{}\nstderr:\n{}",
        common::stdout_text(&output),
        common::stderr_text(&output)
    );
    common::stdout_text(&output)
}

/// `etcdctl snapshot status -w json` as (hash, revision, totalKey, totalSize).
fn snapshot_status(file: &Path) -> (u64, i64, u64, u64) {
    let text = etcdctl_offline(&[
        "snapshot",
        "status",
        "-w",
        "json",
        &file.display().to_string(),
    ]);
    let json: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("snapshot status JSON {text:?}: {e}"));
    let field = |name: &str| {
        json[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    (
        field("hash"),
        field("revision") as i64,
        field("totalKey"),
        field("totalSize"),
    )
}

/// `oxetcd snapshot export --format etcd input output`: its output and exit status.
fn export(input: &Path, output: &Path) -> std::process::Output {
    Command::new(common::server_bin())
        .args(["snapshot", "export", "--format", "etcd"])
        .arg(input)
        .arg(output)
        .output()
        .expect("oxetcd runs")
}

/// The number after `marker` in `text` (digits, or hex digits when `hex`).
fn number_after(text: &str, marker: &str, hex: bool) -> u64 {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {text:?}"))
        + marker.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| {
            if hex {
                c.is_ascii_hexdigit()
            } else {
                c.is_ascii_digit()
            }
        })
        .collect();
    u64::from_str_radix(&digits, if hex { 16 } else { 10 })
        .unwrap_or_else(|e| panic!("{marker:?} in {text:?}: {e}"))
}

/// Key, value, create revision, mod revision, version and lease of every key under `h/` and
/// `other` at `rev`, or the error's text.
async fn state_at(
    client: &mut Client,
    rev: i64,
) -> Result<Vec<(String, String, i64, i64, i64, i64)>, String> {
    let options = GetOptions::new().with_all_keys().with_revision(rev);
    match client.get("", Some(options)).await {
        Ok(response) => Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect()),
        Err(etcd_client::Error::GRpcStatus(status)) => Err(status.message().to_owned()),
        Err(e) => panic!("get at {rev}: {e}"),
    }
}

/// Each lease's granted TTL and keys, and its remaining TTL.
async fn leases(client: &mut Client) -> Vec<(i64, i64, Vec<String>, i64)> {
    let mut ids: Vec<i64> = client
        .leases()
        .await
        .expect("lease list")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let ttl = client
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("lease timetolive");
        let mut keys: Vec<String> = ttl
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        out.push((id, ttl.granted_ttl(), keys, ttl.ttl()));
    }
    out
}

/// Users with their roles, and roles with their permissions (type, key, range end).
async fn auth_state(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let users = client.user_list().await.expect("user list");
    for user in users.users() {
        let got = client.user_get(user.as_str()).await.expect("user get");
        out.push(format!("user {user}: {:?}", got.roles()));
    }
    let roles = client.role_list().await.expect("role list");
    for role in roles.roles() {
        let got = client.role_get(role.as_str()).await.expect("role get");
        let perms: Vec<String> = got
            .permissions()
            .iter()
            .map(|p| {
                format!(
                    "{:?} {:?}..{:?}",
                    p.get_type(),
                    String::from_utf8_lossy(p.key()),
                    String::from_utf8_lossy(p.range_end())
                )
            })
            .collect();
        out.push(format!("role {role}: {perms:?}"));
    }
    out
}

/// The whole round trip: history on oxetcd and on a reference etcd 3.4, `etcdctl snapshot save`
/// from both, export of oxetcd's, `snapshot status` of both, `etcdctl snapshot restore` of the
/// export and etcd 3.4 started on it, answering as oxetcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_snapshot_restores_into_etcd_with_the_same_history() {
    if common::running_real_etcd() {
        return;
    }
    let server = Server::start();
    let dir = server.dir().to_path_buf();
    let reference = Member::start(
        Path::new(ETCD_BIN),
        &dir.join("reference.etcd"),
        "reference",
        common::free_port(),
        &dir.join("reference.log"),
    );
    let head = write_history(&server.endpoint()).await;
    assert_eq!(write_history(&reference.endpoint).await, head);

    let ox_snap = dir.join("oxetcd.snap");
    let etcd_snap = dir.join("etcd.snap");
    save_snapshot(&server.endpoint(), &ox_snap);
    save_snapshot(&reference.endpoint, &etcd_snap);

    let exported = dir.join("exported.db");
    let started = Instant::now();
    let output = export(&ox_snap, &exported);
    let took = started.elapsed();
    let summary = common::stdout_text(&output);
    assert!(
        output.status.success(),
        "export failed:\n{summary}\n{}",
        common::stderr_text(&output)
    );
    eprintln!("export took {took:?}: {summary}");

    // etcdctl reads the export and reports what the export computed, and the revision and key
    // count etcd's own snapshot of the same history has.
    let (hash, revision, total_key, total_size) = snapshot_status(&exported);
    assert_eq!(hash, number_after(&summary, "hash ", true), "{summary}");
    assert_eq!(revision, number_after(&summary, "revision ", false) as i64);
    assert_eq!(total_key, number_after(&summary, "total keys ", false));
    assert_eq!(total_size, number_after(&summary, "total size ", false));
    assert_eq!(
        std::fs::metadata(&exported).unwrap().len(),
        total_size + 32,
        "the database followed by its SHA-256"
    );
    let (_, etcd_revision, etcd_total_key, _) = snapshot_status(&etcd_snap);
    assert_eq!(revision, head);
    assert_eq!(
        (revision, total_key),
        (etcd_revision, etcd_total_key),
        "(revision, total keys) of the export and of etcd's snapshot"
    );

    // etcdctl restores it (checking the SHA-256) and etcd 3.4 starts on it.
    let restored_dir = dir.join("restored.etcd");
    let peer_port = common::free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    etcdctl_offline(&[
        "snapshot",
        "restore",
        &exported.display().to_string(),
        "--data-dir",
        &restored_dir.display().to_string(),
        "--name",
        "restored",
        "--initial-cluster",
        &format!("restored={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    let restored = Member::start(
        Path::new(ETCD_BIN),
        &restored_dir,
        "restored",
        peer_port,
        &dir.join("restored.log"),
    );

    // Auth is on: anonymous reads are refused, alice reads h/ only, root everything.
    let mut anonymous = connect(&restored.endpoint, false).await;
    let refused = anonymous
        .get("h/a", None)
        .await
        .expect_err("auth is enabled");
    assert!(
        refused.to_string().contains("user name is empty"),
        "{refused}"
    );
    let mut alice = Client::connect(
        [restored.endpoint.as_str()],
        Some(ConnectOptions::new().with_user("alice", "alicepw")),
    )
    .await
    .expect("alice authenticates with her password");
    let got = alice.get("h/a", None).await.expect("alice reads h/");
    assert_eq!(got.kvs()[0].value(), b"10");
    let denied = alice.get("other", None).await.expect_err("not alice's");
    assert!(denied.to_string().contains("permission denied"), "{denied}");

    let mut ox = connect(&server.endpoint(), true).await;
    let mut etcd = connect(&restored.endpoint, true).await;
    assert_eq!(auth_state(&mut etcd).await, auth_state(&mut ox).await);

    // Every retained revision, the compacted ones refused alike.
    for rev in [
        0,
        COMPACT_REV - 1,
        COMPACT_REV,
        5,
        6,
        7,
        9,
        10,
        11,
        12,
        head,
    ] {
        let want = state_at(&mut ox, rev).await;
        assert_eq!(state_at(&mut etcd, rev).await, want, "at revision {rev}");
        if rev < COMPACT_REV && rev > 0 {
            assert!(want.is_err(), "revision {rev} is compacted");
        }
    }
    let ox_hash = ox.hash_kv(0).await.expect("hashkv");
    let etcd_hash = etcd.hash_kv(0).await.expect("hashkv");
    assert_eq!(
        (etcd_hash.hash(), etcd_hash.compact_version()),
        (ox_hash.hash(), ox_hash.compact_version()),
        "HashKV (hash, compact revision)"
    );
    assert_eq!(ox_hash.compact_version(), COMPACT_REV);
    let mut reference_client = connect(&reference.endpoint, true).await;
    let reference_hash = reference_client.hash_kv(0).await.expect("hashkv");
    assert_eq!(
        reference_hash.hash(),
        ox_hash.hash(),
        "the history's HashKV on etcd itself"
    );

    // Leases: the same IDs, TTLs and keys, each with time left.
    let ox_leases = leases(&mut ox).await;
    let etcd_leases = leases(&mut etcd).await;
    let shape = |l: &[(i64, i64, Vec<String>, i64)]| {
        l.iter()
            .map(|(id, granted, keys, _)| (*id, *granted, keys.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&etcd_leases), shape(&ox_leases));
    assert_eq!(etcd_leases.len(), LEASES.len());
    for (id, granted, _, remaining) in &etcd_leases {
        assert!(
            *remaining > 0 && remaining <= granted,
            "lease {id:x}: {remaining} of {granted} s left"
        );
    }

    // The restored member takes writes after the history.
    let put = etcd.put("after", "x", None).await.expect("put");
    assert_eq!(put.header().expect("header").revision(), head + 1);
}

/// Restores `file` with `restore_bin snapshot restore` (oxetcd, or etcdctl 3.4 for etcd) into
/// `dir/<name>` as a one-member cluster and starts `server_bin` on it.
fn restore_and_start(
    restore_bin: &Path,
    server_bin: &Path,
    file: &Path,
    dir: &Path,
    name: &str,
) -> Member {
    let data_dir = dir.join(format!("{name}.data"));
    let peer_port = common::free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let output = Command::new(restore_bin)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", &file.display().to_string()])
        .args([
            "--data-dir",
            &data_dir.display().to_string(),
            "--name",
            name,
        ])
        .args(["--initial-cluster", &format!("{name}={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .output()
        .expect("the restore command runs");
    assert!(
        output.status.success(),
        "{} snapshot restore {}:\nstdout:\n{}\nstderr:\n{}",
        restore_bin.display(),
        file.display(),
        common::stdout_text(&output),
        common::stderr_text(&output)
    );
    Member::start(
        server_bin,
        &data_dir,
        name,
        peer_port,
        &dir.join(format!("{name}.log")),
    )
}

/// etcd → oxetcd → etcd: a snapshot of etcd 3.4 restored into oxetcd, saved from oxetcd with
/// etcdctl, exported and restored into etcd 3.4 again gives back the same keys at every retained
/// revision, the same compaction, leases, users and roles, and the same HashKV as the etcd the
/// history was written to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_from_etcd_3_4_through_oxetcd_leaves_hashkv_unchanged() {
    if common::running_real_etcd() {
        return;
    }
    round_trip(Path::new(ETCD_BIN), &common::etcdctl_bin()).await;
}

/// The same round trip from and back to etcd 3.5.1 (its snapshot restored with its `etcdutl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_from_etcd_3_5_through_oxetcd_leaves_hashkv_unchanged() {
    if common::running_real_etcd() {
        return;
    }
    let etcd35 = common::etcd35_dir();
    round_trip(&etcd35.join("etcd"), &etcd35.join("etcdutl")).await;
}

/// History on `etcd`, its snapshot restored into oxetcd, oxetcd's snapshot exported and
/// restored with `restore_tool` into `etcd` again, each compared with the source.
async fn round_trip(etcd: &Path, restore_tool: &Path) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let source = Member::start(
        etcd,
        &dir.join("source.etcd"),
        "source",
        common::free_port(),
        &dir.join("source.log"),
    );
    let head = write_history(&source.endpoint).await;
    let source_snap = dir.join("source.snap");
    save_snapshot(&source.endpoint, &source_snap);

    let oxetcd = restore_and_start(
        &common::server_bin(),
        &common::server_bin(),
        &source_snap,
        dir,
        "ox",
    );
    let ox_snap = dir.join("ox.snap");
    save_snapshot(&oxetcd.endpoint, &ox_snap);
    let exported = dir.join("back.db");
    let output = export(&ox_snap, &exported);
    assert!(
        output.status.success(),
        "export failed:\n{}\n{}",
        common::stdout_text(&output),
        common::stderr_text(&output)
    );
    let back = restore_and_start(restore_tool, etcd, &exported, dir, "back");

    let mut source_client = connect(&source.endpoint, true).await;
    let mut ox = connect(&oxetcd.endpoint, true).await;
    let mut etcd = connect(&back.endpoint, true).await;
    let want = source_client.hash_kv(0).await.expect("hashkv");
    for (who, client) in [
        ("oxetcd", &mut ox),
        ("etcd after the round trip", &mut etcd),
    ] {
        let got = client.hash_kv(0).await.expect("hashkv");
        assert_eq!(
            (
                got.hash(),
                got.compact_version(),
                got.header().map(|h| h.revision())
            ),
            (
                want.hash(),
                want.compact_version(),
                want.header().map(|h| h.revision())
            ),
            "HashKV (hash, compact revision, revision) of {who} and of the source etcd"
        );
    }
    assert_eq!(want.compact_version(), COMPACT_REV);
    for rev in [0, COMPACT_REV - 1, COMPACT_REV, 5, 7, 9, 10, 12, head] {
        let expected = state_at(&mut source_client, rev).await;
        assert_eq!(state_at(&mut ox, rev).await, expected, "oxetcd at {rev}");
        assert_eq!(state_at(&mut etcd, rev).await, expected, "etcd at {rev}");
    }
    assert_eq!(
        auth_state(&mut etcd).await,
        auth_state(&mut source_client).await
    );
    let shape = |l: Vec<(i64, i64, Vec<String>, i64)>| {
        l.into_iter()
            .map(|(id, granted, keys, remaining)| {
                assert!(remaining > 0, "lease {id:x} has time left");
                (id, granted, keys)
            })
            .collect::<Vec<_>>()
    };
    let source_leases = shape(leases(&mut source_client).await);
    assert_eq!(source_leases.len(), LEASES.len());
    assert_eq!(shape(leases(&mut ox).await), source_leases);
    assert_eq!(shape(leases(&mut etcd).await), source_leases);
}

/// The command refuses what it cannot do with a message, and leaves no output behind: a file
/// that is not an oxetcd snapshot (here etcd's own), and an output that already exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_refuses_foreign_input_and_an_existing_output() {
    if common::running_real_etcd() {
        return;
    }
    let server = Server::start();
    let dir = server.dir().to_path_buf();
    server.etcdctl_ok(&["put", "k", "v"]);
    let snap = dir.join("ox.snap");
    server.etcdctl_ok(&["snapshot", "save", &snap.display().to_string()]);

    let out: PathBuf = dir.join("out.db");
    let output = export(&dir.join("missing.snap"), &out);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        common::stderr_text(&output).starts_with("oxetcd: snapshot export failed: io error on"),
        "{}",
        common::stderr_text(&output)
    );
    assert!(!out.exists());

    let first = export(&snap, &out);
    assert!(first.status.success(), "{}", common::stderr_text(&first));
    // The export of an export: not an oxetcd snapshot.
    let again = dir.join("again.db");
    let output = export(&out, &again);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        common::stderr_text(&output),
        "oxetcd: snapshot export failed: not an oxetcd snapshot (bad magic header)\n"
    );
    assert!(!again.exists() && !dir.join("again.db.part").exists());

    let before = std::fs::read(&out).unwrap();
    let output = export(&snap, &out);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        common::stderr_text(&output),
        format!(
            "oxetcd: snapshot export failed: {} already exists; export writes a new file\n",
            out.display()
        )
    );
    assert_eq!(std::fs::read(&out).unwrap(), before, "left untouched");
}
