//! Disk full (issue 13 point 6): the data dir on a 128 MiB tmpfs, filled by puts. The member
//! refuses writes with etcd's `database space exceeded` before RocksDB would fail one, raises
//! NOSPACE, keeps serving reads and every acknowledged key; deletes, a compaction, a defragment
//! and `alarm disarm` bring writes back without a restart; a restart finds every acknowledged key
//! and the same `hashkv`. A filler file taking the last byte either leaves the member refusing
//! writes or stops it with its log flushed; with the filler gone a restart is clean. While full,
//! the disk metrics make `oxetcdDataDirLowSpace` fire (promtool, on the scraped values). In a
//! cluster, a follower whose disk fills raises NOSPACE for it, so every member refuses writes. A
//! full log filesystem does not stop the server.
//!
//! Mounting needs root (CI runs the tests as root); without it each test says so and returns.
//! oxetcd only: etcd 3.4 has no free-space guard.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use common::cluster::Cluster;
use etcd_client::{Client, CompactionOptions, DeleteOptions, Error, GetOptions};
use tonic::Code;

/// The size of the data dir's filesystem.
const TMPFS_SIZE: &str = "128m";
/// Far above the filesystem: the disk, not the quota, is what runs out.
const QUOTA_BYTES: &str = "4294967296";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// Concurrent writers filling the disk, and the size of their (incompressible) values.
const WRITERS: usize = 8;
const VALUE_BYTES: usize = 4096;
/// Puts a writer makes at most before the test gives up on the disk filling.
const PUTS_PER_WRITER_MAX: usize = 20_000;
/// The server's reserve on a 128 MiB filesystem (`api::DISK_RESERVE_BYTES_MIN`: 1% is less).
const RESERVE_BYTES: u64 = 8 << 20;
const PREFIX: &str = "fill/";
/// Each writer's newest keys kept when making room again.
const KEPT_PER_WRITER: usize = 32;
/// Keys read per range request: 256 values of 4 KiB stay under the client's 4 MiB message limit.
const PAGE_KEYS: i64 = 256;
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A size-limited tmpfs on a fresh directory, unmounted (lazily, if still busy) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (`mount -o size=`), or says why not and returns `None`.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-tmpfs-")
            .tempdir()
            .expect("creating a temp dir should work");
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            Ok(output) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs (the disk-full tests need root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(err) => {
                eprintln!("skipped: cannot run mount: {err}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A tmpfs mounted over an existing directory, its files copied in first; unmounted (lazily,
/// if still busy) when dropped.
struct TmpfsOver {
    path: PathBuf,
}

impl TmpfsOver {
    /// Moves `dir`'s files aside, mounts a tmpfs of `size` on it and copies them back; `None`
    /// (having said why) when mount is refused.
    fn mount(dir: &Path, size: &str) -> Option<TmpfsOver> {
        let aside = dir.with_extension("aside");
        std::fs::rename(dir, &aside).expect("moving the data dir aside");
        std::fs::create_dir(dir).expect("creating the mount point");
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        if !output.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs (the disk-full tests need root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", aside.display()))
            .arg(dir)
            .status()
            .expect("running cp");
        assert!(copied.success(), "copying the data dir onto the tmpfs");
        Some(TmpfsOver {
            path: dir.to_path_buf(),
        })
    }
}

impl Drop for TmpfsOver {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The value of key number `n` of writer `writer`: incompressible, and known without keeping it.
fn value_of(writer: usize, n: usize) -> Vec<u8> {
    let mut state = ((writer as u64) << 32 | n as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let mut value = Vec::with_capacity(VALUE_BYTES);
    while value.len() < VALUE_BYTES {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        value.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    value
}

fn key_of(writer: usize, n: usize) -> String {
    format!("{PREFIX}w{writer}/{n:06}")
}

/// What filling the disk left: each writer's acknowledged puts (keys `0..count`), and how long
/// the fill took.
struct Fill {
    acked: Vec<usize>,
    elapsed: Duration,
}

impl Fill {
    fn acked_keys(&self) -> usize {
        self.acked.iter().sum()
    }

    /// Every acknowledged key with its value; with `kept_newest`, only that many of each
    /// writer's newest.
    fn expected(&self, kept_newest: Option<usize>) -> BTreeMap<String, Vec<u8>> {
        let mut expected = BTreeMap::new();
        for (writer, &count) in self.acked.iter().enumerate() {
            let first = kept_newest.map_or(0, |kept| count.saturating_sub(kept));
            for n in first..count {
                expected.insert(key_of(writer, n), value_of(writer, n));
            }
        }
        expected
    }
}

/// Puts from [`WRITERS`] concurrent writers until each is refused; asserts every refusal is
/// NOSPACE (ResourceExhausted) and the member is still running.
async fn fill(server: &mut Server) -> Fill {
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(server.client().await);
    }
    let fill = fill_through(clients)
        .await
        .unwrap_or_else(|reason| server.fail(&format!("filling the disk: {reason}")));
    if !server.is_running() {
        server.fail("the member exited while the disk filled");
    }
    fill
}

/// Puts through `clients`, one writer each, until each is refused with NOSPACE.
async fn fill_through(clients: Vec<Client>) -> Result<Fill, String> {
    let started = Instant::now();
    let mut writers = Vec::new();
    for (writer, mut client) in clients.into_iter().enumerate() {
        writers.push(tokio::spawn(async move {
            for n in 0..PUTS_PER_WRITER_MAX {
                match client
                    .put(key_of(writer, n), value_of(writer, n), None)
                    .await
                {
                    Ok(_) => {}
                    Err(Error::GRpcStatus(status))
                        if (status.code(), status.message())
                            == (Code::ResourceExhausted, NO_SPACE) =>
                    {
                        return Ok(n);
                    }
                    Err(err) => return Err(format!("writer {writer} put {n}: {err}")),
                }
            }
            Err(format!(
                "writer {writer}: {PUTS_PER_WRITER_MAX} puts never filled the disk"
            ))
        }));
    }
    let mut acked = Vec::new();
    for writer in writers {
        acked.push(writer.await.unwrap()?);
    }
    Ok(Fill {
        acked,
        elapsed: started.elapsed(),
    })
}

/// Every key under [`PREFIX`] with its value, read in pages.
async fn read_all(client: &mut Client) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    let end = format!("{}0", PREFIX.trim_end_matches('/'));
    let mut from = PREFIX.to_string();
    loop {
        let page = client
            .get(
                from.as_str(),
                Some(
                    GetOptions::new()
                        .with_range(end.as_str())
                        .with_limit(PAGE_KEYS),
                ),
            )
            .await
            .expect("reads work while the disk is full");
        for kv in page.kvs() {
            all.insert(
                kv.key_str().expect("keys are UTF-8").to_string(),
                kv.value().to_vec(),
            );
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = format!("{}\0", last.key_str().expect("keys are UTF-8"));
            }
            _ => return all,
        }
    }
}

/// Asserts the member holds exactly `expected` under [`PREFIX`] (values compared, not printed).
async fn assert_holds(server: &Server, expected: &BTreeMap<String, Vec<u8>>, when: &str) {
    let mut client = server.client().await;
    let held = read_all(&mut client).await;
    let missing: Vec<&String> = expected.keys().filter(|k| !held.contains_key(*k)).collect();
    let wrong: Vec<&String> = expected
        .iter()
        .filter(|(k, v)| held.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k)
        .collect();
    let extra = held.keys().filter(|k| !expected.contains_key(*k)).count();
    if !missing.is_empty() || !wrong.is_empty() {
        server.fail(&format!(
            "{when}: {} acknowledged keys missing (first {:?}), {} with other values (first \
             {:?}); {extra} unacknowledged keys present",
            missing.len(),
            missing.first(),
            wrong.len(),
            wrong.first()
        ));
    }
}

/// Waits until `etcdctl alarm list` shows NOSPACE.
fn wait_nospace_listed(server: &Server) -> String {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let listed = server.etcdctl_ok(&["alarm", "list"]);
        if listed.contains("alarm:NOSPACE") {
            return listed;
        }
        if Instant::now() > deadline {
            server.fail(&format!(
                "no NOSPACE alarm listed after the refusals: {listed:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gauge's value in a `/metrics` scrape.
fn gauge(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("{name} not in the scrape"))
}

/// `etcdctl endpoint hashkv`'s hash.
fn hashkv(server: &Server) -> String {
    let out = server.etcdctl_ok(&["endpoint", "hashkv", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("hashkv prints JSON");
    json[0]["HashKV"]["hash"].to_string()
}

/// Writes zeros into `path` until the filesystem refuses; returns the bytes written.
fn fill_with_file(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("creating the filler file");
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(err) => {
                assert_eq!(
                    err.raw_os_error(),
                    Some(rustix::io::Errno::NOSPC.raw_os_error()),
                    "the filler stops on ENOSPC: {err}"
                );
                return written;
            }
        }
    }
}

/// The free bytes of the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Starts a member on a fresh 128 MiB tmpfs (None without root).
fn start_on_tmpfs() -> Option<(Tmpfs, Server, PathBuf)> {
    let tmpfs = Tmpfs::mount(TMPFS_SIZE)?;
    let data_dir = tmpfs.path().join("data");
    let server = Server::start_on(&data_dir, &["--quota-backend-bytes", QUOTA_BYTES]);
    Some((tmpfs, server, data_dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_refuses_writes_keeps_every_acknowledged_key_and_recovers() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's free-space guard; skipped against etcd");
        return;
    }
    // The server is declared after the tmpfs so it is killed before the unmount.
    let Some((tmpfs, mut server, data_dir)) = start_on_tmpfs() else {
        return;
    };

    let fill = fill(&mut server).await;
    let free_at_refusal = free_bytes(&data_dir);
    eprintln!(
        "filled a {TMPFS_SIZE} tmpfs in {:.1?}: {} keys of {VALUE_BYTES} bytes acknowledged \
         ({} MiB of values), {free_at_refusal} bytes free at refusal",
        fill.elapsed,
        fill.acked_keys(),
        (fill.acked_keys() * VALUE_BYTES) >> 20,
    );
    assert!(
        fill.acked_keys() * VALUE_BYTES > 16 << 20,
        "refused after only {} puts",
        fill.acked_keys()
    );

    // Refused with etcd's error, alarmed, and still reading every acknowledged key.
    let mut client = server.client().await;
    match client.put("after-refusal", "x", None).await {
        Err(Error::GRpcStatus(status)) => assert_eq!(
            (status.code(), status.message()),
            (Code::ResourceExhausted, NO_SPACE)
        ),
        other => server.fail(&format!("a put was taken on a full disk: {other:?}")),
    }
    let listed = wait_nospace_listed(&server);
    eprintln!("alarm list: {}", listed.trim());
    assert!(server.etcdctl(&["put", "k", "v"]).status.code() != Some(0));
    let all = fill.expected(None);
    assert_holds(&server, &all, "while full").await;

    // Make room: delete all but each writer's newest keys, compact, defragment, disarm; then
    // writes are taken again. (RocksDB's compaction of the deleted span writes what it keeps
    // before it frees what it drops, so what is kept must fit in the space left.)
    let recovering = Instant::now();
    let mut revision = 0;
    for (writer, &count) in fill.acked.iter().enumerate() {
        let end = key_of(writer, count.saturating_sub(KEPT_PER_WRITER));
        let deleted = client
            .delete(
                key_of(writer, 0),
                Some(DeleteOptions::new().with_range(end.as_str())),
            )
            .await
            .unwrap_or_else(|err| server.fail(&format!("deletes work while full: {err}")));
        revision = deleted.header().expect("a header").revision();
    }
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap_or_else(|err| server.fail(&format!("compaction works while full: {err}")));
    let free_after_compaction = free_bytes(&data_dir);
    server.etcdctl_ok(&["defrag"]);
    eprintln!(
        "free bytes: {free_after_compaction} after the deletes and compaction, {} after defrag",
        free_bytes(&data_dir)
    );
    server.etcdctl_ok(&["alarm", "disarm"]);
    client
        .put("after-recovery", "x", None)
        .await
        .unwrap_or_else(|err| server.fail(&format!("a put after making room: {err}")));
    let recovery = recovering.elapsed();
    eprintln!(
        "recovered in {recovery:.1?} (delete, compact, defrag, disarm, put): {} bytes free",
        free_bytes(&data_dir)
    );
    assert!(server.is_running(), "the member kept running throughout");

    // A clean restart finds every acknowledged key, and the same hash.
    let mut expected = fill.expected(Some(KEPT_PER_WRITER));
    assert_holds(&server, &expected, "after recovery").await;
    let hash_before = hashkv(&server);
    server.restart();
    assert_holds(&server, &expected, "after a restart").await;
    assert_eq!(hashkv(&server), hash_before, "hashkv after the restart");
    assert_eq!(hashkv(&server), hash_before, "hashkv is stable");

    // Someone else takes the last byte: the member refuses writes or stops with its log
    // flushed, and once the filler is gone a restart is clean and loses nothing.
    let mut client = server.client().await;
    for n in 0..16 {
        let key = format!("{PREFIX}z/{n}");
        client
            .put(key.as_str(), "before the filler", None)
            .await
            .unwrap_or_else(|err| server.fail(&format!("put before the filler: {err}")));
        expected.insert(key, b"before the filler".to_vec());
    }
    let filler = tmpfs.path().join("filler");
    let filler_bytes = fill_with_file(&filler);
    eprintln!(
        "filler took {filler_bytes} bytes; {} left",
        free_bytes(&data_dir)
    );
    let mut refused = 0;
    for n in 0..8 {
        let answer = tokio::time::timeout(
            WAIT_TIMEOUT,
            client.put(format!("{PREFIX}full/{n}"), "x", None),
        )
        .await
        .unwrap_or_else(|_| server.fail("a put on a 100% full disk hung"));
        match answer {
            Ok(_) => server.fail("a put was acknowledged on a 100% full disk"),
            Err(Error::GRpcStatus(status)) if status.message() == NO_SPACE => refused += 1,
            Err(_) if !server.is_running() => break,
            Err(err) => {
                // The member is stopping (fatal): wait for it to exit.
                eprintln!("put {n} on a full disk: {err}");
            }
        }
    }
    if server.is_running() {
        eprintln!("the member refused {refused} puts on a 100% full disk and kept running");
        assert_holds(&server, &expected, "on a 100% full disk").await;
    } else {
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        assert!(
            log.contains("fatal:"),
            "the member stopped without saying why:\n{}",
            server.log_report()
        );
        eprintln!("the member stopped on the 100% full disk, log flushed");
    }
    // The member may raise NOSPACE again at its start if the filesystem is still within the
    // reserve: reads are served all the same.
    std::fs::remove_file(&filler).expect("removing the filler");
    server.restart_under_nospace();
    assert_holds(
        &server,
        &expected,
        "after removing the filler and a restart",
    )
    .await;
    let hash = hashkv(&server);
    assert_eq!(hashkv(&server), hash, "hashkv is stable");
    drop(server);
    drop(tmpfs);
}

/// promtool's `humanizePercentage` (Go's `%.4g` of a percentage between 0.01 and 100).
fn humanize_percentage(ratio: f64) -> String {
    let percent = ratio * 100.0;
    let digits = 3 - percent.abs().log10().floor() as i32;
    let text = format!("{percent:.*}", digits.max(0) as usize);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}%")
}

/// The promtool unit test of `oxetcdDataDirLowSpace` on `free`/`total` held for 10 minutes.
fn low_space_test(rules: &Path, free: u64, total: u64) -> String {
    let instance = "127.0.0.1:2379";
    let description = format!(
        "oxetcd cluster \"oxetcd\": the filesystem holding the data directory of instance \
         {instance} has {} of its space left; the member refuses writes with NOSPACE once 1% \
         of the filesystem (at least 8 MiB) is left.",
        humanize_percentage(free as f64 / total as f64)
    );
    format!(
        "rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    \
         input_series:\n      - series: 'oxetcd_disk_data_dir_free_bytes{{job=\"oxetcd\",instance=\"{instance}\"}}'\n        \
         values: '{free}+0x10'\n      - series: 'oxetcd_disk_data_dir_total_bytes{{job=\"oxetcd\",instance=\"{instance}\"}}'\n        \
         values: '{total}+0x10'\n    alert_rule_test:\n      - eval_time: 6m\n        alertname: oxetcdDataDirLowSpace\n        \
         exp_alerts:\n          - exp_labels:\n              job: oxetcd\n              instance: '{instance}'\n              \
         severity: critical\n            exp_annotations:\n              summary: 'oxetcd data directory filesystem is almost full.'\n              \
         description: '{description}'\n              runbook_url: file:///usr/share/doc/oxetcd/runbooks.md#oxetcddatadirlowspace\n",
        rules = rules.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_data_dir_is_full_the_low_space_alert_fires() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's disk metrics; skipped against etcd");
        return;
    }
    let Some((tmpfs, mut server, _data_dir)) = start_on_tmpfs() else {
        return;
    };
    let fill = fill(&mut server).await;
    let scrape = server.http_get("/metrics").text();
    let free = gauge(&scrape, "oxetcd_disk_data_dir_free_bytes") as u64;
    let total = gauge(&scrape, "oxetcd_disk_data_dir_total_bytes") as u64;
    eprintln!(
        "refused after {} keys: scraped {free} of {total} bytes free",
        fill.acked_keys()
    );
    assert!(
        total <= 128 << 20 && total > 100 << 20,
        "the total is the tmpfs's: {total}"
    );
    // Refusal comes when the free bytes, less what RocksDB has still to write, fall within the
    // reserve; with memtables sized to the filesystem that is a few MiB above it at most.
    assert!(
        free < RESERVE_BYTES + (8 << 20),
        "refused with {free} bytes free, reserve {RESERVE_BYTES}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("alerts/oxetcd-alerts.yaml");
    let test_file = dir.path().join("low-space.yaml");
    std::fs::write(&test_file, low_space_test(&rules, free, total)).expect("writing the test");
    let promtool = std::env::var("OXETCD_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let output = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&test_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool} (apt-get install prometheus): {e}"));
    assert!(
        output.status.success(),
        "oxetcdDataDirLowSpace fires on the scraped values:\n{}{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(&test_file).unwrap_or_default()
    );
    drop(server);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_filesystem_does_not_stop_the_server() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's log file; skipped against etcd");
        return;
    }
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let log_file = tmpfs.path().join("oxetcd.log");
    let filler = tmpfs.path().join("filler");
    fill_with_file(&filler);
    let server = Server::start_with(&[
        &format!("--log-outputs={}", log_file.display()),
        "--log-level=debug",
    ]);
    let client = Arc::new(tokio::sync::Mutex::new(server.client().await));
    for n in 0..200 {
        let mut client = client.lock().await;
        client
            .put(format!("log-full/{n}"), format!("v{n}"), None)
            .await
            .unwrap_or_else(|err| server.fail(&format!("put {n} with the log fs full: {err}")));
        let got = client
            .get(format!("log-full/{n}"), None)
            .await
            .unwrap_or_else(|err| server.fail(&format!("get {n} with the log fs full: {err}")));
        assert_eq!(got.kvs()[0].value(), format!("v{n}").as_bytes());
    }
    assert!(server.is_healthy(), "healthy with the log filesystem full");
    std::fs::remove_file(&filler).expect("removing the filler");
    drop(server);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_stops_the_clusters_writes() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's free-space guard; skipped against etcd");
        return;
    }
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(WAIT_TIMEOUT).await;
    let follower = (leader + 1) % 3;
    cluster.stop(follower);
    let Some(tmpfs) = TmpfsOver::mount(&cluster.data_dir(follower), TMPFS_SIZE) else {
        return;
    };
    cluster.restart(follower);
    let follower_id = cluster.member_id(follower).await;

    // Writes go to the leader, whose disk has room: the follower's guard raises NOSPACE.
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(cluster.client(leader).await);
    }
    let fill = fill_through(clients)
        .await
        .unwrap_or_else(|reason| cluster.fail(&format!("filling the follower's disk: {reason}")));
    eprintln!(
        "the follower's {TMPFS_SIZE} tmpfs filled in {:.1?} with {} keys acknowledged by the \
         leader; {} bytes left",
        fill.elapsed,
        fill.acked_keys(),
        free_bytes(&cluster.data_dir(follower))
    );
    assert!(
        cluster.is_running(follower),
        "the follower kept running:\n{}",
        cluster.log(follower)
    );
    let listed = cluster.etcdctl_ok(leader, &["alarm", "list"]);
    assert!(
        listed.contains(&format!("memberID:{follower_id} alarm:NOSPACE")),
        "the follower's NOSPACE is listed: {listed:?}"
    );
    for member in cluster.members() {
        let mut client = cluster.client(member).await;
        match client.put("probe", "x", None).await {
            Err(Error::GRpcStatus(status)) => assert_eq!(
                (status.code(), status.message()),
                (Code::ResourceExhausted, NO_SPACE),
                "member {member}"
            ),
            other => panic!("member {member} took a write: {other:?}"),
        }
    }
    let mut client = cluster.client(follower).await;
    assert_eq!(
        read_all(&mut client).await,
        fill.expected(None),
        "the follower serves every acknowledged key"
    );

    // Room again on every member: writes are taken.
    for (writer, &count) in fill.acked.iter().enumerate() {
        let end = key_of(writer, count.saturating_sub(KEPT_PER_WRITER));
        client
            .delete(
                key_of(writer, 0),
                Some(DeleteOptions::new().with_range(end.as_str())),
            )
            .await
            .unwrap_or_else(|err| cluster.fail(&format!("deletes work while full: {err}")));
    }
    let revision = client
        .get("probe", None)
        .await
        .expect("a read")
        .header()
        .expect("a header")
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap_or_else(|err| cluster.fail(&format!("compaction works while full: {err}")));
    cluster.etcdctl_all_ok(&["defrag"]);
    cluster.etcdctl_ok(leader, &["alarm", "disarm"]);
    cluster
        .client(follower)
        .await
        .put("after-recovery", "x", None)
        .await
        .unwrap_or_else(|err| cluster.fail(&format!("a put after making room: {err}")));
    assert!(cluster.is_running(follower), "the follower kept running");
    drop(cluster);
    drop(tmpfs);
}
