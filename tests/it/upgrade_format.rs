//! On-disk format versioning: a data directory written by an earlier release (the fixtures in
//! `tests/fixtures/data-format/`, one per format, written by the release binary that introduced
//! it) opens with this build with its keys, revisions, compaction, lease and users intact and
//! gets its version recorded; a directory of a newer format than this build knows is refused
//! with exit status 2 and left byte for byte as it was. oxetcd-only (etcd's data dirs are
//! bbolt files), so every test returns early against real etcd.

use crate::common::{self, Server};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, LeaseTimeToLiveOptions};
use oxetcd::data_format::{FORMAT_FILE, FORMAT_VERSION};

fn fixture(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data-format")
        .join(format!("v{version}"))
}

/// A copy of fixture `version` in `into` (git keeps neither empty directories nor modes).
fn copy_fixture(version: u32, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for entry in std::fs::read_dir(fixture(version)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), into.join(entry.file_name())).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Every file under `dir` (recursively) with its bytes, modification time and mode.
fn contents(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            files.extend(contents(&entry.path()));
        } else {
            files.insert(
                entry.path(),
                (
                    std::fs::read(entry.path()).unwrap(),
                    meta.modified().unwrap(),
                    meta.permissions().mode(),
                ),
            );
        }
    }
    files
}

/// Format 1 was written before the version was recorded (main at ec4e345). Every key, its
/// revisions, the compaction, the lease with its key and the user and role read back as that
/// build wrote them, the version gets recorded, and the member keeps working after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_format_1_fixture_opens_with_its_history_lease_and_users() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's data directory format: skipped against real etcd");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    copy_fixture(1, &data);
    assert!(!data.join(FORMAT_FILE).exists());
    let mut server = Server::start_on(&data, &[]);
    assert_eq!(
        std::fs::read_to_string(data.join(FORMAT_FILE)).unwrap(),
        format!("{FORMAT_VERSION}\n"),
        "the format is recorded at the first start"
    );
    for round in ["after the upgrade", "after a restart"] {
        let mut client = server.client().await;
        let got = client
            .get("fixture/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let header_revision = got.header().unwrap().revision();
        let kvs: Vec<(String, String, i64, i64, i64)> = got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_owned(),
                    kv.value_str().unwrap().to_owned(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect();
        let expected: Vec<(String, String, i64, i64, i64)> = [
            ("fixture/a", "two", 2, 3, 2),
            ("fixture/b", "bee", 4, 4, 1),
            ("fixture/d", "dee", 7, 7, 1),
            ("fixture/leased", "held", 8, 8, 1),
        ]
        .iter()
        .map(|(k, v, c, m, n)| ((*k).to_owned(), (*v).to_owned(), *c, *m, *n))
        .collect();
        assert_eq!(kvs, expected, "{round}");
        if round == "after the upgrade" {
            assert_eq!(header_revision, 8, "{round}");
        }
        // Compacted at revision 6: below it is gone, at it fixture/c is already deleted.
        let compacted = client
            .get("fixture/a", Some(GetOptions::new().with_revision(5)))
            .await
            .expect_err("revision 5 is compacted");
        assert!(
            compacted
                .to_string()
                .contains("required revision has been compacted"),
            "{round}: {compacted}"
        );
        let at_six = client
            .get(
                "fixture/",
                Some(GetOptions::new().with_prefix().with_revision(6)),
            )
            .await
            .unwrap();
        let keys: Vec<&str> = at_six
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap())
            .collect();
        assert_eq!(keys, ["fixture/a", "fixture/b"], "{round}");
        // The lease and the key it holds.
        let lease = got.kvs()[3].lease();
        let ttl = client
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), 900_000, "{round}");
        assert!(ttl.ttl() > 800_000, "{round}: ttl {}", ttl.ttl());
        assert_eq!(ttl.keys(), [b"fixture/leased".to_vec()], "{round}");
        // The user and its role.
        let user = server.etcdctl_ok(&["user", "get", "alice"]);
        assert!(user.contains("Roles: reader"), "{round}: {user}");
        let role = server.etcdctl_ok(&["role", "get", "reader"]);
        assert!(
            role.contains("[fixture/, fixture0) (prefix fixture/)"),
            "{round}: {role}"
        );
        if round == "after the upgrade" {
            client
                .put("later", "written by this build", None)
                .await
                .unwrap();
            server.restart();
        } else {
            let later = client.get("later", None).await.unwrap();
            assert_eq!(later.kvs()[0].value_str().unwrap(), "written by this build");
        }
    }
}

/// A directory stamped with a format newer than this build's is refused before anything is
/// opened: exit status 2, a message naming both versions, every file as it was. `config check`
/// says the same.
#[test]
fn a_newer_format_is_refused_with_exit_2_and_left_unchanged() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's data directory format: skipped against real etcd");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    copy_fixture(1, &data);
    let newer = FORMAT_VERSION + 1;
    std::fs::write(data.join(FORMAT_FILE), format!("{newer}\n")).unwrap();
    let before = contents(&data);
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let client = format!("http://127.0.0.1:{}", common::free_port());
    let flags: Vec<String> = [
        "--name",
        "fixture",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("fixture={peer}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for command in [&[][..], &["config", "check"][..]] {
        let mut args: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
        args.extend(flags.iter().cloned());
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{command:?}: {stderr}");
        assert!(
            stderr.contains(&format!("format version {newer}"))
                && stderr.contains(&format!("version {FORMAT_VERSION} that this oxetcd")),
            "{command:?}: the message names both versions: {stderr}"
        );
        assert_eq!(
            contents(&data),
            before,
            "{command:?}: the directory was changed"
        );
    }
}

/// Runs the server binary to its exit; returns (exit code, stderr).
fn run(args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(common::server_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read as _;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("oxetcd {args:?} did not exit within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
