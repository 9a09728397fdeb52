//! Rolling upgrade of a 3-member cluster under continuous writes, one member at a time, as the
//! README's procedure says: if the member leads, move leadership to another member first; stop
//! it with SIGTERM; start the new binary on the same data dir and flags; wait until it is
//! healthy before the next member. Afterwards every acknowledged write is on every member, the
//! writers saw only the errors a leader change or a stopping member causes (and at most one
//! timed-out put per member upgraded), and linearizable
//! reads on a member that stayed up kept succeeding (quorum was never lost). The longest time
//! without an acknowledged write and without a successful read are printed.
//!
//! The new binary is the one under test at another path (a hard link). With
//! `OXETCD_TEST_UPGRADE_FROM=PATH` the cluster starts on the binary at PATH (an earlier
//! release), so the run is a real upgrade from it. Against real etcd
//! (`OXETCD_TEST_BIN=/usr/bin/etcd`) the same procedure runs on etcd.

use crate::common::{self, cluster};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cluster::{
    CONVERGE_TIMEOUT, Cluster, ClusterOptions, FAILOVER_DEADLINE, MEMBER_READY_TIMEOUT, error_text,
    exclusive,
};
use etcd_client::{Client, ConnectOptions};

/// How often the progress watchers look.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(5);
/// Bound on one probe read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the writers may see while a member is stopped or leadership moves: the stopped
/// member's connection refused or reset, its `server stopped` for calls in flight as it
/// stops, and etcd's leader-change errors (etcd 3.4 also drops proposals during a transfer).
fn leader_change_error(error: &str) -> bool {
    error.starts_with("connect:")
        || error.starts_with("Unavailable")
        || error.contains("transport error")
        || error.contains("etcdserver: leader changed")
        || error.contains("etcdserver: no leader")
        || error.contains("etcdserver: server stopped")
        // etcd 3.4's answer to a put proposed while leadership moves.
        || error.contains("raft proposal dropped")
}

/// A put the client gave up on (etcd-client's request timeout, or the load's own bound).
fn timed_out(error: &str) -> bool {
    error == "Cancelled: Timeout expired" || error == "client-side timeout"
}

/// The longest time `counter` stood still, watched until `stop`.
fn watch_progress(counter: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> thread::JoinHandle<Duration> {
    thread::spawn(move || {
        let mut last = counter.load(Ordering::Relaxed);
        let mut since = Instant::now();
        let mut longest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            thread::sleep(SAMPLE_INTERVAL);
            let now = counter.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            }
            longest = longest.max(since.elapsed());
        }
        longest
    })
}

/// Linearizable reads, one after another, on the member `target` names; counts successes.
fn probe_reads(
    endpoints: Vec<String>,
    target: Arc<AtomicUsize>,
    reads: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(PROBE_TIMEOUT);
            let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let index = target.load(Ordering::Relaxed);
                if clients[index].is_none() {
                    clients[index] = Client::connect([&endpoints[index]], Some(options.clone()))
                        .await
                        .ok();
                }
                let Some(client) = clients[index].as_mut() else {
                    failures.push(format!("member {index}: cannot connect"));
                    continue;
                };
                match client.get("probe", None).await {
                    Ok(_) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => failures.push(format!("member {index}: {}", error_text(&err))),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    })
}

/// The binary under test at another path in `dir` (hard-linked; copied across filesystems).
fn next_binary(dir: &Path) -> PathBuf {
    let current = common::server_bin();
    let name = current.file_name().unwrap().to_string_lossy().into_owned();
    let next = dir.join(format!("{name}-next"));
    if std::fs::hard_link(&current, &next).is_err() {
        std::fs::copy(&current, &next).unwrap();
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_under_writes_loses_no_acknowledged_write() {
    let _serial = exclusive().await;
    let from = std::env::var_os("OXETCD_TEST_UPGRADE_FROM").map(PathBuf::from);
    let mut options = ClusterOptions::new(3);
    options.binary = from.clone();
    let mut cluster = Cluster::start_with(options);
    let bin_dir = tempfile::tempdir().unwrap();
    let next = next_binary(bin_dir.path());
    eprintln!(
        "rolling upgrade: {} -> {}",
        from.unwrap_or_else(common::server_bin).display(),
        next.display()
    );
    let mut ids = Vec::new();
    for index in 0..cluster.len() {
        ids.push(cluster.member_id(index).await);
    }

    let load = cluster.start_load(&cluster.members(), 4, "upgrade/");
    let stop = Arc::new(AtomicBool::new(false));
    let write_gap = watch_progress(load.acked_counter(), stop.clone());
    let reads = Arc::new(AtomicU64::new(0));
    let read_gap = watch_progress(reads.clone(), stop.clone());
    let target = Arc::new(AtomicUsize::new(1));
    let probe = probe_reads(
        cluster.endpoints(),
        target.clone(),
        reads.clone(),
        stop.clone(),
    );
    load.wait_for_acks(100, Duration::from_secs(30))
        .unwrap_or_else(|reason| cluster.fail(&reason));

    let mut moves = 0;
    for index in 0..cluster.len() {
        let other = (index + 1) % cluster.len();
        target.store(other, Ordering::Relaxed);
        let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
        if leader == index {
            let mut client = cluster.client(index).await;
            client.move_leader(ids[other]).await.unwrap_or_else(|err| {
                cluster.fail(&format!(
                    "move-leader away from member {index}: {}",
                    error_text(&err)
                ))
            });
            moves += 1;
        }
        let status = cluster.stop(index);
        assert!(
            common::stopped_by_sigterm(status),
            "member {index} stops cleanly on SIGTERM: {status:?}"
        );
        cluster.set_binary(index, &next);
        cluster.start_member(index);
        cluster
            .wait_healthy(index, MEMBER_READY_TIMEOUT)
            .unwrap_or_else(|reason| cluster.fail(&reason));
        if !common::running_real_etcd() {
            let version = cluster
                .data_dir(index)
                .join(oxetcd::data_format::FORMAT_FILE);
            assert_eq!(
                std::fs::read_to_string(&version).unwrap_or_default(),
                format!("{}\n", oxetcd::data_format::FORMAT_VERSION),
                "member {index} records its data format"
            );
        }
        // Writes go on before the next member goes down.
        load.wait_for_more_acks(50, Duration::from_secs(30))
            .unwrap_or_else(|reason| cluster.fail(&reason));
    }

    let report = load.stop();
    stop.store(true, Ordering::Relaxed);
    let longest_write_gap = write_gap.join().unwrap();
    let longest_read_gap = read_gap.join().unwrap();
    let probe_failures = probe.join().unwrap();
    eprintln!(
        "rolling upgrade: {} acknowledged writes in {:?}, {moves} leader moves, errors {:?}; \
         longest time without an acknowledged write {longest_write_gap:?}, without a \
         successful linearizable read on a member that stayed up {longest_read_gap:?} \
         ({} reads, failures {probe_failures:?})",
        report.acks.len(),
        report.elapsed,
        report.errors,
        reads.load(Ordering::Relaxed),
    );
    // A put in flight on a member as it stops, or across the leadership move, may also go
    // unanswered until the client's timeout (the put may or may not have been applied): at
    // most one per member upgraded.
    let timeouts: u64 = report
        .errors
        .iter()
        .filter(|(error, _)| timed_out(error))
        .map(|(_, count)| count)
        .sum();
    assert!(
        timeouts <= cluster.len() as u64,
        "{timeouts} puts timed out during {} member upgrades",
        cluster.len()
    );
    let unexpected: Vec<&String> = report
        .errors
        .keys()
        .filter(|error| !leader_change_error(error) && !timed_out(error))
        .collect();
    assert!(
        unexpected.is_empty(),
        "writers saw errors beyond a leader change: {unexpected:?}"
    );
    assert!(
        longest_read_gap < FAILOVER_DEADLINE,
        "linearizable reads on a running member stopped for {longest_read_gap:?}: quorum lost? \
         failures {probe_failures:?}"
    );
    assert!(
        longest_write_gap < FAILOVER_DEADLINE,
        "no write was acknowledged for {longest_write_gap:?}"
    );
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for index in 0..cluster.len() {
        cluster.assert_acked_present(index, &report).await;
    }
}
