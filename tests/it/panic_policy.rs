//! Failing loudly (issue 13 point 1), through the failpoints of `src/failpoints.rs` set with
//! `FAILPOINTS`: a panic in each thread that owns state (raft, apply, snapshot generation,
//! compaction) stops the member with a non-zero status and leaves the panic in its log file
//! (`--log-outputs`, the non-blocking writer); a fatal error leaves its message there too; a
//! raft or apply thread stuck in one step fails `/livez` while the rest of HTTP still answers.
//! oxetcd-only, and compiled only with `--features failpoints` (CI builds the binary with it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::common;
use common::cluster::{CONVERGE_TIMEOUT, Cluster, ClusterOptions, FAILOVER_DEADLINE, exclusive};
use common::http::{HttpResponse, http_get};
use common::process::{POLL_INTERVAL, Process};

/// How long a member may take from the failpoint firing to exiting: its start (a single member
/// elects itself at once) plus flushing the log, which tracing-appender bounds to about 1 s.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// `/livez` fails once a thread is stuck for 10 s (`LOOP_STALL_THRESHOLD` in `src/http`); the
/// member needs a few seconds to start before that.
const LIVEZ_FAIL_TIMEOUT: Duration = Duration::from_secs(40);
/// Longer than any test here runs: the stalled thread never wakes before the test ends.
const STALL_MS: u64 = 600_000;
/// The status of a process stopped by a panic in a thread that owns state.
const PANIC_EXIT_STATUS: i32 = 101;
/// `--snapshot-count` for the snapshot test, and the raft entries the leader keeps after it
/// truncates its log (`LOG_CATCHUP_ENTRIES` in `src/node`).
const SNAPSHOT_COUNT: u64 = 100;
const LOG_CATCHUP_ENTRIES: u64 = 5_000;

/// A single member started with `FAILPOINTS`, logging to a file, with a separate metrics URL
/// (served before the member has published itself, so `/livez` answers even while its apply
/// thread is stuck at start).
struct Member {
    dir: tempfile::TempDir,
    process: Process,
    client_port: u16,
    metrics_port: u16,
}

impl Member {
    fn start(failpoints: &str) -> Member {
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-panic-")
            .tempdir()
            .unwrap();
        let client = format!("http://127.0.0.1:{}", common::free_port());
        let peer = format!("http://127.0.0.1:{}", common::free_port());
        let metrics_port = common::free_port();
        let client_port = client.rsplit(':').next().unwrap().parse().unwrap();
        let args: Vec<String> = [
            "--name",
            "m1",
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("m1={peer}"),
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{metrics_port}"),
            "--log-outputs",
            &dir.path().join("oxetcd.log").display().to_string(),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let mut process = Process::new(
            "server",
            common::server_bin(),
            dir.path().join("stderr.log"),
        );
        process.spawn_with_env(&args, &[("FAILPOINTS", failpoints.to_string())]);
        Member {
            dir,
            process,
            client_port,
            metrics_port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The log file the member wrote through `--log-outputs`.
    fn log_file(&self) -> String {
        let path: PathBuf = self.dir.path().join("oxetcd.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn metrics_get(&self, path: &str) -> Option<HttpResponse> {
        http_get(
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port)),
            path,
        )
        .ok()
    }

    /// Waits for the member to exit by itself, running `poke` (something that makes it work)
    /// while it runs; fails the test with both logs if it does not exit in time.
    fn wait_exit_while(&mut self, mut poke: impl FnMut(&Member)) -> ExitStatus {
        let started = Instant::now();
        let deadline = started + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.process.exited() {
                eprintln!(
                    "member exited {:?} after the test began waiting",
                    started.elapsed()
                );
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the member still runs {EXIT_TIMEOUT:?} after its failpoint\n{}\nlog file:\n{}",
                self.process.log_report("server"),
                self.log_file()
            );
            poke(self);
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn assert_logged(&self, texts: &[&str]) {
        let log = self.log_file();
        for text in texts {
            assert!(
                log.contains(text),
                "the log file lacks {text:?}; it holds:\n{log}\n{}",
                self.process.log_report("server")
            );
        }
    }
}

/// A put with a short timeout whose outcome does not matter: it only makes the member write.
fn poke_with_put(member: &Member) {
    let _ = common::run_etcdctl(
        &member.endpoint(),
        &["put", "poke", "v"],
        None,
        Duration::from_secs(2),
    );
}

fn assert_panic_exit(status: ExitStatus, member: &Member) {
    assert_eq!(
        status.code(),
        Some(PANIC_EXIT_STATUS),
        "the member ended with {status}\n{}",
        member.process.log_report("server")
    );
}

#[test]
fn a_raft_thread_panic_stops_the_member_and_is_in_the_log() {
    if common::running_real_etcd() {
        return;
    }
    let mut member = Member::start("raft_log_before_fsync=panic(injected raft panic)");
    let status = member.wait_exit_while(|_| {});
    assert_panic_exit(status, &member);
    member.assert_logged(&[
        "injected raft panic",
        "panic in a thread that owns state; stopping the member",
        "\"thread\":\"raft\"",
    ]);
}

#[test]
fn an_apply_thread_panic_stops_the_member_and_is_in_the_log() {
    if common::running_real_etcd() {
        return;
    }
    let mut member = Member::start("apply_write=panic(injected apply panic)");
    let status = member.wait_exit_while(poke_with_put);
    assert_panic_exit(status, &member);
    member.assert_logged(&["injected apply panic", "\"thread\":\"apply\""]);
}

#[test]
fn a_compaction_thread_panic_stops_the_member_and_is_in_the_log() {
    if common::running_real_etcd() {
        return;
    }
    let mut member = Member::start("compaction=panic(injected compaction panic)");
    let ready = member
        .process
        .wait_healthy(member.client_port, Instant::now() + EXIT_TIMEOUT);
    assert!(
        ready.is_ok(),
        "{ready:?}\n{}",
        member.process.log_report("server")
    );
    for value in ["a", "b", "c"] {
        let out = common::run_etcdctl(
            &member.endpoint(),
            &["put", "k", value],
            None,
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{}", common::stderr_text(&out));
    }
    // The compaction itself is answered before its thread runs; the answer does not matter.
    let _ = common::run_etcdctl(
        &member.endpoint(),
        &["compact", "3"],
        None,
        Duration::from_secs(10),
    );
    let status = member.wait_exit_while(|_| {});
    assert_panic_exit(status, &member);
    member.assert_logged(&["injected compaction panic", "\"thread\":\"compactor\""]);
}

/// The snapshot thread runs on the leader when a follower needs a snapshot: one is stopped
/// while the others write past what the leader keeps of its log, then started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_thread_panic_stops_the_member_and_is_in_the_log() {
    if common::running_real_etcd() {
        return;
    }
    let _serial = exclusive().await;
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3)
            .snapshot_count(SNAPSHOT_COUNT)
            .env(
                "FAILPOINTS",
                "snapshot_write=panic(injected snapshot panic)",
            )
            .log_file(),
    );
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let lagging = (leader + 1) % 3;
    cluster.stop(lagging);
    let others: Vec<usize> = (0..3).filter(|&index| index != lagging).collect();
    let load = cluster.start_load(&others, 8, "load/");
    if let Err(reason) = load.wait_for_acks(
        LOG_CATCHUP_ENTRIES + 10 * SNAPSHOT_COUNT,
        Duration::from_secs(120),
    ) {
        cluster.fail(&format!("writing while one member is down: {reason}"));
    }
    load.stop();
    // A leader change during the load is possible: whoever leads now sends the snapshot.
    let leader = cluster
        .wait_for_leader_among(&others, FAILOVER_DEADLINE)
        .await;
    cluster.start_member(lagging);
    let restarted = Instant::now();
    let status = match cluster.wait_exit(leader, EXIT_TIMEOUT) {
        Ok(status) => status,
        Err(reason) => cluster.fail(&format!("the leader generating a snapshot: {reason}")),
    };
    assert_eq!(
        status.code(),
        Some(PANIC_EXIT_STATUS),
        "the leader ended with {status}"
    );
    eprintln!(
        "the leader exited {:?} after the lagging member restarted",
        restarted.elapsed()
    );
    let log = cluster.log_file(leader);
    assert!(
        log.contains("injected snapshot panic") && log.contains("\"thread\":\"snapshot\""),
        "the leader's log file lacks the panic:\n{log}"
    );
}

/// The raft thread does not wait for a snapshot install: a member that stops after raft
/// took the leader's snapshot into its log but before the snapshot was installed (here: a panic
/// as the install starts) installs it when it starts again, and holds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_snapshot_not_yet_installed_is_installed_at_the_next_start() {
    if common::running_real_etcd() {
        return;
    }
    let _serial = exclusive().await;
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3)
            .snapshot_count(SNAPSHOT_COUNT)
            .env(
                "FAILPOINTS",
                "snapshot_install=panic(injected install panic)",
            )
            .log_file(),
    );
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let lagging = (leader + 1) % 3;
    cluster.stop(lagging);
    let others: Vec<usize> = (0..3).filter(|&index| index != lagging).collect();
    let load = cluster.start_load(&others, 8, "load/");
    if let Err(reason) = load.wait_for_acks(
        LOG_CATCHUP_ENTRIES + 10 * SNAPSHOT_COUNT,
        Duration::from_secs(120),
    ) {
        cluster.fail(&format!("writing while one member is down: {reason}"));
    }
    let report = load.stop();
    cluster.start_member(lagging);
    let status = match cluster.wait_exit(lagging, EXIT_TIMEOUT) {
        Ok(status) => status,
        Err(reason) => cluster.fail(&format!("the member installing a snapshot: {reason}")),
    };
    assert_eq!(
        status.code(),
        Some(PANIC_EXIT_STATUS),
        "the member installing a snapshot ended with {status}"
    );
    let log = cluster.log_file(lagging);
    assert!(
        log.contains("received a snapshot") && log.contains("injected install panic"),
        "the member's log file lacks the received snapshot or the panic:\n{log}"
    );

    cluster.clear_env();
    cluster.start_member(lagging);
    if let Err(reason) = cluster.wait_healthy(lagging, EXIT_TIMEOUT) {
        cluster.fail(&format!(
            "restarting after the interrupted install: {reason}"
        ));
    }
    let log = cluster.log_file(lagging);
    assert!(
        log.contains("installing the snapshot received before the last stop"),
        "the member did not install the pending snapshot at start:\n{log}"
    );
    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for index in cluster.members() {
        cluster.assert_acked_present(index, &report).await;
    }
    eprintln!(
        "{} acknowledged puts present on every member after the pending install; {converged:?}",
        report.acks.len()
    );
}

#[test]
fn a_fatal_error_is_in_the_log_file() {
    if common::running_real_etcd() {
        return;
    }
    let mut member = Member::start("raft_log_before_fsync=return");
    let status = member.wait_exit_while(|_| {});
    assert_eq!(
        status.code(),
        Some(1),
        "the member ended with {status}\n{}",
        member.process.log_report("server")
    );
    member.assert_logged(&[
        "fatal: persisting raft state; stopping the member",
        "injected by failpoint raft_log_before_fsync",
    ]);
}

/// Polls `/livez?verbose` on the metrics URL until it fails; returns its body.
fn wait_livez_failure(member: &mut Member) -> String {
    let started = Instant::now();
    let deadline = started + LIVEZ_FAIL_TIMEOUT;
    loop {
        if let Some(status) = member.process.exited() {
            panic!(
                "the member exited ({status}) instead of stalling\n{}",
                member.process.log_report("server")
            );
        }
        if let Some(livez) = member.metrics_get("/livez?verbose")
            && livez.status == 503
        {
            eprintln!("/livez failed {:?} after start", started.elapsed());
            return livez.text();
        }
        assert!(
            Instant::now() < deadline,
            "/livez still passes {LIVEZ_FAIL_TIMEOUT:?} after start\n{}",
            member.process.log_report("server")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The rest of HTTP still answers while a thread is stuck: the process is not wedged.
fn assert_http_answers(member: &Member) {
    for path in ["/version", "/metrics", "/livez/serializable_read"] {
        let response = member.metrics_get(path);
        assert_eq!(
            response.as_ref().map(|r| r.status),
            Some(200),
            "{path} while a thread is stuck: {:?}",
            response.map(|r| r.text())
        );
    }
}

#[test]
fn a_stuck_apply_thread_fails_livez() {
    if common::running_real_etcd() {
        return;
    }
    let mut member = Member::start(&format!("apply_write=sleep({STALL_MS})"));
    let body = wait_livez_failure(&mut member);
    assert!(
        body.contains("[-]loop_progress failed: the apply thread has been stuck in one step for"),
        "{body}"
    );
    assert_http_answers(&member);
}

#[test]
fn a_stuck_raft_thread_fails_livez() {
    if common::running_real_etcd() {
        return;
    }
    let mut member = Member::start(&format!("raft_log_before_fsync=sleep({STALL_MS})"));
    let body = wait_livez_failure(&mut member);
    assert!(
        body.contains("[-]loop_progress failed: the raft thread has been stuck in one step for"),
        "{body}"
    );
    assert_http_answers(&member);
}
