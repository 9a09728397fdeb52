//! Crash points (issue 13 point 2): a 3-member cluster under write load has one failpoint of
//! `src/failpoints.rs` armed on every member to panic after a seeded number of passes; whichever
//! members reach it first crash (or, where the point runs in a tokio task, lose that task) and
//! are started again without failpoints. Afterwards every acknowledged write is on every member,
//! the revisions are gap-free (each revision since the start is exactly one put), and the members
//! agree on HashKV.
//!
//! CI runs one seeded iteration per failpoint; `OXETCD_CRASH_ITERATIONS=N` runs N per failpoint
//! and `OXETCD_CRASH_SEED=S` starts the seeds at S (each iteration prints its seed). oxetcd-only,
//! compiled with `--features failpoints`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::common;
use common::cluster::{
    CONVERGE_TIMEOUT, Cluster, ClusterOptions, FAILOVER_DEADLINE, LoadReport, WriteLoad, exclusive,
};
use common::process::POLL_INTERVAL;

/// The status of a process stopped by a panic in a thread that owns state.
const PANIC_EXIT_STATUS: i32 = 101;
/// `--snapshot-count`, and the raft entries a leader keeps when it truncates its log
/// (`LOG_CATCHUP_ENTRIES` in `src/node`): a member stopped for more writes than their sum
/// catches up from a snapshot.
const SNAPSHOT_COUNT: u64 = 100;
const LOG_CATCHUP_ENTRIES: u64 = 5_000;
/// Acknowledged puts each iteration waits for (besides the snapshot phase).
const ACKS: u64 = 1_500;
/// Upper bound on any phase of an iteration.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
const LOAD_TASKS: usize = 8;

/// What a failpoint's panic does to the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// The thread owns state: the member exits with status 101.
    Exits,
    /// The point runs in a tokio task or on the blocking pool (a peer's snapshot stream, a
    /// defragmentation): that call fails, the member keeps running (the leader sends the
    /// snapshot again; the database is as RocksDB left it, whole).
    TaskEnds,
}

/// What must happen for a failpoint to be passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Writes alone (every raft Ready and every applied entry).
    Writes,
    /// Writes and a compaction after every few hundred acknowledged puts.
    Compactions,
    /// Writes and a defragmentation of each member in turn.
    Defragments,
    /// A follower stopped while the others write past the leader's log, then started again.
    Snapshot,
}

struct Point {
    name: &'static str,
    workload: Workload,
    effect: Effect,
    /// Passes before the panic are drawn from this range by the seed.
    passes: std::ops::Range<u64>,
}

const POINTS: &[Point] = &[
    Point {
        name: "raft_log_before_fsync",
        workload: Workload::Writes,
        effect: Effect::Exits,
        passes: 50..600,
    },
    Point {
        name: "raft_log_after_fsync",
        workload: Workload::Writes,
        effect: Effect::Exits,
        passes: 50..600,
    },
    Point {
        name: "apply_write",
        workload: Workload::Writes,
        effect: Effect::Exits,
        passes: 50..600,
    },
    Point {
        name: "compaction",
        workload: Workload::Compactions,
        effect: Effect::Exits,
        passes: 0..3,
    },
    Point {
        name: "defragment",
        workload: Workload::Defragments,
        effect: Effect::TaskEnds,
        passes: 0..2,
    },
    Point {
        name: "snapshot_write",
        workload: Workload::Snapshot,
        effect: Effect::Exits,
        passes: 0..1,
    },
    Point {
        name: "snapshot_send",
        workload: Workload::Snapshot,
        effect: Effect::TaskEnds,
        passes: 0..1,
    },
    Point {
        name: "snapshot_receive",
        workload: Workload::Snapshot,
        effect: Effect::TaskEnds,
        passes: 0..1,
    },
    Point {
        name: "snapshot_install",
        workload: Workload::Snapshot,
        effect: Effect::Exits,
        passes: 0..1,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_point_keeps_acknowledged_writes_and_converges() {
    if common::running_real_etcd() {
        return;
    }
    let _serial = exclusive().await;
    let iterations: u64 = env_number("OXETCD_CRASH_ITERATIONS").unwrap_or(1);
    let first_seed: u64 = env_number("OXETCD_CRASH_SEED").unwrap_or(1);
    let mut matrix = Vec::new();
    for point in POINTS {
        for seed in first_seed..first_seed + iterations {
            matrix.push(run_iteration(point, seed).await);
        }
    }
    eprintln!("crash-point matrix (point, seed, passes before the panic, outcome):");
    for line in &matrix {
        eprintln!("  {line}");
    }
}

/// One cluster, one armed failpoint, one seed; returns a line of the matrix.
async fn run_iteration(point: &Point, seed: u64) -> String {
    let passes = point.passes.start + mix(seed) % (point.passes.end - point.passes.start);
    // `N*off->panic(...)`: the first N passes do nothing, the next panics; later passes on a
    // member that was not restarted panic again. A member survives a panic in a task, so there
    // the panic comes once (`1*panic`) and the call is tried again.
    let panic = match point.effect {
        Effect::Exits => format!("panic(crash point {})", point.name),
        Effect::TaskEnds => format!("1*panic(crash point {})", point.name),
    };
    let action = if passes == 0 {
        panic
    } else {
        format!("{passes}*off->{panic}")
    };
    let spec = format!("{}={action}", point.name);
    eprintln!("crash point {} seed {seed}: FAILPOINTS={spec}", point.name);
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(3)
            .snapshot_count(SNAPSHOT_COUNT)
            .env("FAILPOINTS", &spec)
            .log_file(),
    );
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let base_revision = revision(&cluster, leader).await;
    let mut watch = Supervisor::default();
    let started = Instant::now();
    let load = cluster.start_load(&cluster.members(), LOAD_TASKS, "load/");
    match point.workload {
        Workload::Writes => watch.wait_acks(&mut cluster, &load, ACKS),
        Workload::Compactions => {
            let mut last = None;
            for round in 1..=4 {
                watch.wait_acks(&mut cluster, &load, round * ACKS / 4);
                last = compact_latest(&mut cluster, &mut watch).await.or(last);
            }
            // The compactor runs after the compaction is applied: wait until each member
            // finished the last one, or resumed it at the start after crashing in it.
            let last = last.unwrap_or_else(|| cluster.fail("no compaction was issued"));
            let finished = format!("\"compact_revision\":{last}");
            watch.wait_until(
                &mut cluster,
                "the last compaction on every member",
                |cluster| {
                    cluster.members().into_iter().all(|index| {
                        cluster.log_file(index).lines().any(|line| {
                            (line.contains("finished scheduled compaction")
                                || line.contains("resuming an unfinished compaction"))
                                && line.contains(&finished)
                        })
                    })
                },
            );
        }
        Workload::Defragments => {
            watch.wait_acks(&mut cluster, &load, ACKS / 2);
            // Two rounds, each member in an order the seed decides: the member that meets the
            // panic first depends on both.
            let mut order = cluster.members();
            order.rotate_left((mix(seed) % 3) as usize);
            for _round in 0..2 {
                for &index in &order {
                    watch.supervise(&mut cluster);
                    if cluster.is_running(index) {
                        let _ = cluster.etcdctl(index, &["defrag"]);
                    }
                }
            }
            watch.wait_acks(&mut cluster, &load, ACKS);
        }
        Workload::Snapshot => {
            let lagging = (leader + 1) % 3;
            cluster.stop(lagging);
            watch.stopped.push(lagging);
            watch.wait_acks(
                &mut cluster,
                &load,
                LOG_CATCHUP_ENTRIES + 10 * SNAPSHOT_COUNT,
            );
            // Caught up once it serves what the others had when it started (through a
            // snapshot: the leader's log no longer reaches back to it).
            watch.supervise(&mut cluster);
            let Some(&other) = cluster.running().first() else {
                cluster.fail("no member runs");
            };
            let target = revision(&cluster, other).await;
            watch.stopped.retain(|&index| index != lagging);
            // Started with the failpoint still armed unless a crash already disarmed it.
            cluster.start_member(lagging);
            let deadline = Instant::now() + PHASE_TIMEOUT;
            while !(cluster.is_running(lagging)
                && try_revision(&cluster, lagging)
                    .await
                    .is_some_and(|r| r >= target))
            {
                watch.supervise(&mut cluster);
                if Instant::now() >= deadline {
                    cluster.fail(&format!(
                        "crash point {}: member {lagging} did not reach revision {target} \
                         within {PHASE_TIMEOUT:?}",
                        point.name
                    ));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
    let report = load.stop();
    watch.supervise(&mut cluster);
    for index in cluster.members() {
        if let Err(reason) = cluster.wait_healthy(index, PHASE_TIMEOUT) {
            cluster.fail(&format!("crash point {}: {reason}", point.name));
        }
    }
    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for index in cluster.members() {
        cluster.assert_acked_present(index, &report).await;
    }
    assert_gap_free(&cluster, base_revision, &report).await;

    // The point fired: as a member's exit (status 101), or as a panic its log holds.
    let fired_in_logs: Vec<usize> = cluster
        .members()
        .into_iter()
        .filter(|&index| {
            cluster
                .log_file(index)
                .contains(&format!("crash point {}", point.name))
        })
        .collect();
    match point.effect {
        Effect::Exits => {
            assert!(
                !watch.exits.is_empty(),
                "crash point {} (seed {seed}) never stopped a member",
                point.name
            );
            for (index, code) in &watch.exits {
                assert_eq!(
                    *code,
                    Some(PANIC_EXIT_STATUS),
                    "member {index} ended with {code:?} at crash point {}",
                    point.name
                );
            }
        }
        Effect::TaskEnds => {
            assert!(
                watch.exits.is_empty(),
                "crash point {} runs in a task, yet members exited: {:?}",
                point.name,
                watch.exits
            );
            assert!(
                !fired_in_logs.is_empty(),
                "crash point {} (seed {seed}) never fired",
                point.name
            );
        }
    }
    format!(
        "{:<22} seed {seed:<3} passes {passes:<4} {} acked, {} failed puts, exits {:?}, \
         panics logged by {:?}, {:?}, converged at revision {}, iteration took {:?}",
        point.name,
        report.acks.len(),
        report.errors.values().sum::<u64>(),
        watch.exits,
        fired_in_logs,
        point.effect,
        converged.revision,
        started.elapsed()
    )
}

/// Restarts members that crashed (without failpoints) and records how they ended.
#[derive(Default)]
struct Supervisor {
    /// (member, exit code) of every crash seen.
    exits: Vec<(usize, Option<i32>)>,
    /// Members the test stopped on purpose (not restarted here).
    stopped: Vec<usize>,
}

impl Supervisor {
    fn supervise(&mut self, cluster: &mut Cluster) {
        for index in cluster.members() {
            if self.stopped.contains(&index) || cluster.is_running(index) {
                continue;
            }
            let status = cluster
                .wait_exit(index, Duration::from_secs(1))
                .unwrap_or_else(|reason| cluster.fail(&reason));
            eprintln!("  member {index} exited ({status}); starting it again without failpoints");
            self.exits.push((index, status.code()));
            cluster.clear_env();
            cluster.start_member(index);
        }
    }

    /// Supervises until `load` has `count` acknowledged puts.
    fn wait_acks(&mut self, cluster: &mut Cluster, load: &WriteLoad, count: u64) {
        self.wait_until(cluster, &format!("{count} acknowledged puts"), |_| {
            load.acked() >= count
        });
    }

    fn wait_until(
        &mut self,
        cluster: &mut Cluster,
        what: &str,
        mut done: impl FnMut(&mut Cluster) -> bool,
    ) {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            self.supervise(cluster);
            if done(cluster) {
                return;
            }
            if Instant::now() >= deadline {
                cluster.fail(&format!("waiting for {what}: not within {PHASE_TIMEOUT:?}"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Compacts at the current revision through a running member; the revision, if the member
/// accepted it (it may crash as its compactor runs, after answering).
async fn compact_latest(cluster: &mut Cluster, watch: &mut Supervisor) -> Option<i64> {
    watch.supervise(cluster);
    let index = cluster.running().first().copied()?;
    let current = revision(cluster, index).await;
    let out = cluster.etcdctl(index, &["compact", &current.to_string()]);
    out.status.success().then_some(current)
}

/// The current revision as member `index` serves it (serializable); the member must answer.
async fn revision(cluster: &Cluster, index: usize) -> i64 {
    try_revision(cluster, index)
        .await
        .unwrap_or_else(|| cluster.fail(&format!("member {index} did not answer a read")))
}

/// The revision member `index` serves (serializable), `None` while it does not answer.
async fn try_revision(cluster: &Cluster, index: usize) -> Option<i64> {
    let mut client = etcd_client::Client::connect(
        [cluster.endpoint(index)],
        Some(
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2)),
        ),
    )
    .await
    .ok()?;
    let got = client
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_serializable()
                    .with_keys_only()
                    .with_limit(1),
            ),
        )
        .await
        .ok()?;
    got.header().map(|h| h.revision())
}

/// Every revision after `base` is exactly one put of the load: the versions of all keys add up
/// to the revisions written, and no two keys share a modification revision. A lost revision, a
/// revision applied twice or a write applied on one member only breaks one of these.
async fn assert_gap_free(cluster: &Cluster, base: i64, report: &LoadReport) {
    for index in cluster.members() {
        let mut client = cluster.client(index).await;
        let got = client
            .get(
                "",
                Some(GetOptions::new().with_all_keys().with_serializable()),
            )
            .await
            .unwrap_or_else(|err| cluster.fail(&format!("reading member {index}'s keys: {err}")));
        let current = got.header().map_or(0, |h| h.revision());
        let versions: i64 = got.kvs().iter().map(|kv| kv.version()).sum();
        let mut by_revision: BTreeMap<i64, usize> = BTreeMap::new();
        for kv in got.kvs() {
            *by_revision.entry(kv.mod_revision()).or_default() += 1;
        }
        let shared: Vec<_> = by_revision.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            shared.is_empty(),
            "member {index}: keys share modification revisions {shared:?}"
        );
        assert_eq!(
            versions,
            current - base,
            "member {index}: {} keys whose versions add up to {versions}, but revisions {base}..{current} \
             were written ({} puts acknowledged)",
            got.kvs().len(),
            report.acks.len()
        );
    }
}

/// A well-mixed 64-bit value of `seed` (splitmix64's finalizer), so neighbouring seeds draw
/// unrelated pass counts.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a whole number")),
    )
}
