//! Black-box fault tests for multi-member clusters (issue 3, point 8): real member processes on
//! loopback under a steady write load while the leader is SIGKILLed, a minority is partitioned
//! away, a member misses enough writes to need a snapshot, and members are added and removed.
//! Every test ends with all members reporting the same HashKV at the same revision and every
//! acknowledged write readable with its acknowledged revision.
//!
//! Developed against etcd 3.4.23 (`OXETCD_TEST_BIN=/usr/bin/etcd`), where all of them pass.
//! Timings and etcd's answers are printed (`--nocapture` shows them).

use crate::common;

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};

use common::cluster::{
    CONVERGE_TIMEOUT, Cluster, ClusterOptions, ELECTION_TIMEOUT_MS, FAILOVER_DEADLINE, LoadReport,
    error_text, exclusive, median,
};
use common::proxy::Fault;

/// Concurrent writers in the steady load.
const LOAD_TASKS: usize = 8;
/// Leader kills per cluster size; the median failover time is reported.
const KILLS: usize = 5;
/// Acknowledged puts the load must add after each fault to count as "the cluster continues".
const PROGRESS_PUTS: u64 = 100;
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);
/// etcd's server-side request timeout: 5 s + 2 × election timeout (`ReqTimeout()`).
const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_millis(5_000 + 2 * ELECTION_TIMEOUT_MS);
/// Client-side bound on a request to a member cut off from the quorum: the server must answer
/// (with an error) before this.
const MINORITY_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The answer of a member without a leader to a request carrying `hasleader` (require leader):
/// immediate, for unary puts and ranges alike (etcd 3.4.23).
const NO_LEADER: &str = "Unavailable: etcdserver: no leader";

/// What etcd answers, without require-leader, to a write or linearizable read that cannot be
/// committed because the member has no leader. etcd 3.4.23, on a member cut off from the quorum,
/// answers a put with `Unknown: context deadline exceeded` and a linearizable range with
/// `Unavailable: etcdserver: request timed out`, both after its request timeout (6 s here); the
/// other strings are etcd's variants of the same refusal (see etcd-anchors.md, error table).
const LEADERLESS_REFUSALS: [&str; 8] = [
    "Unknown: context deadline exceeded",
    "DeadlineExceeded: context deadline exceeded",
    "Unavailable: etcdserver: request timed out",
    "Unavailable: etcdserver: request timed out, possibly due to previous leader failure",
    "Unavailable: etcdserver: request timed out, possibly due to connection lost",
    "Unavailable: etcdserver: no leader",
    "Unavailable: etcdserver: leader changed",
    "Unavailable: etcdserver: request timed out, waiting for the applied index took too long",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_3_members() {
    let _serial = exclusive().await;
    leader_sigkill(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_5_members() {
    let _serial = exclusive().await;
    leader_sigkill(5).await;
}

/// (a) Kill the leader with SIGKILL under load, `KILLS` times: a new leader appears within
/// `FAILOVER_DEADLINE`, the survivors keep acknowledging writes, the killed member rejoins after a
/// restart with no flags changed, and no acknowledged write is lost.
async fn leader_sigkill(members: usize) {
    let mut cluster = Cluster::start(members);
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let load = cluster.start_load(&cluster.members(), LOAD_TASKS, "load/");
    progress(&cluster, &load, "before the first kill");
    let mut failovers = Vec::new();
    for round in 1..=KILLS {
        let old = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
        progress(&cluster, &load, "before the kill");
        let killed_at = Instant::now();
        cluster.kill9(old);
        let survivors = cluster.running();
        let new = cluster
            .wait_for_leader_among(&survivors, FAILOVER_DEADLINE)
            .await;
        let failover = killed_at.elapsed();
        assert_ne!(new, old, "the killed member cannot be the new leader");
        eprintln!(
            "{members} members, kill {round}: leader {} killed, {} leads after {failover:?}",
            cluster.name(old),
            cluster.name(new)
        );
        failovers.push(failover);
        progress(&cluster, &load, "after the failover");
        cluster.restart(old);
    }
    let report = load.stop();
    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for index in cluster.members() {
        cluster.assert_acked_present(index, &report).await;
    }
    let mut sorted = failovers.clone();
    sorted.sort();
    eprintln!(
        "RESULT failover {members} members (heartbeat {} ms, election timeout {ELECTION_TIMEOUT_MS} \
         ms): median {:?}, all {sorted:?}; {}; {converged:?}",
        common::cluster::HEARTBEAT_INTERVAL_MS,
        median(&failovers),
        load_summary(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_3_members() {
    let _serial = exclusive().await;
    // One follower cut off by a rejecting network (connections reset and refused).
    minority_partition(3, false, Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_5_members() {
    let _serial = exclusive().await;
    // The leader and one follower cut off by a silent network (traffic blackholed): the majority
    // must elect a new leader.
    minority_partition(5, true, Fault::Blackhole).await;
}

/// (b) Cut a minority off (through the peer proxy, with `fault`) under load: the minority refuses
/// writes and linearizable reads with etcd's errors (serializable reads still answer locally), a
/// require-leader watch on it is cancelled, the majority keeps a leader and keeps acknowledging
/// writes, and after healing the minority catches up.
async fn minority_partition(members: usize, with_leader: bool, fault: Fault) {
    let mut cluster = Cluster::start(members);
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let minority_size = (members - 1) / 2;
    let mut minority: Vec<usize> = Vec::new();
    if with_leader {
        minority.push(leader);
    }
    minority.extend(
        cluster
            .members()
            .into_iter()
            .filter(|&index| index != leader)
            .take(minority_size - minority.len()),
    );
    let majority: Vec<usize> = cluster
        .members()
        .into_iter()
        .filter(|index| !minority.contains(index))
        .collect();
    let load = cluster.start_load(&majority, LOAD_TASKS, "load/");
    progress(&cluster, &load, "before the partition");

    // A write before the partition, to read back serializably from the minority.
    let mut writer = cluster.client(majority[0]).await;
    let before = writer
        .put("partition/before", "1", None)
        .await
        .expect("put before the partition");
    let before_revision = before.header().map_or(0, |header| header.revision());
    // Committed needs only a majority: make sure the minority has applied it before the cut.
    for &index in &minority {
        wait_for_local_key(&cluster, index, "partition/before", before_revision).await;
    }

    let mut watchers = Vec::new();
    for &index in &minority {
        let options = ConnectOptions::new()
            .with_require_leader(true)
            .with_timeout(MINORITY_ANSWER_TIMEOUT);
        let mut client = Client::connect([cluster.endpoint(index)], Some(options))
            .await
            .expect("lazy connect");
        let stream = client
            .watch("partition/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("require-leader watch on a member that has a leader");
        watchers.push((index, client, stream));
    }

    let partitioned_at = Instant::now();
    cluster.partition_with(&minority, fault);
    // Require-leader watches on the minority are cancelled (etcd: after 3 election timeouts
    // without a leader).
    let mut watch_ends = Vec::new();
    for (index, client, mut stream) in watchers {
        watch_ends.push((
            index,
            tokio::spawn(async move {
                let _client = client;
                let ended = tokio::time::timeout(MINORITY_ANSWER_TIMEOUT, async {
                    loop {
                        match stream.message().await {
                            Ok(Some(response)) if response.canceled() => {
                                break format!("canceled: {}", response.cancel_reason());
                            }
                            Ok(Some(_)) => continue,
                            Ok(None) => break "stream ended".to_string(),
                            Err(err) => break error_text(&err),
                        }
                    }
                })
                .await;
                (ended, partitioned_at.elapsed())
            }),
        ));
    }

    cluster
        .wait_for_no_leader(&minority, FAILOVER_DEADLINE)
        .await;
    let leaderless_after = partitioned_at.elapsed();
    let majority_leader = cluster
        .wait_for_leader_among(&majority, FAILOVER_DEADLINE)
        .await;
    let majority_leader_after = partitioned_at.elapsed();
    eprintln!(
        "{members} members, minority {:?} cut off: leaderless after {leaderless_after:?}, majority \
         led by {} after {majority_leader_after:?}",
        minority
            .iter()
            .map(|&index| cluster.name(index))
            .collect::<Vec<_>>(),
        cluster.name(majority_leader)
    );
    progress(&cluster, &load, "while the minority is cut off");

    // Every minority member at once: require-leader requests, serializable read, then the
    // (slow) plain put and linearizable read concurrently.
    let mut probes = Vec::new();
    for &index in &minority {
        let endpoint = cluster.endpoint(index);
        probes.push((
            index,
            tokio::spawn(probe_minority(endpoint, before_revision)),
        ));
    }
    for (index, probe) in probes {
        let refusals = probe
            .await
            .expect("probe task does not panic")
            .unwrap_or_else(|reason| cluster.fail(&format!("minority member {index}: {reason}")));
        eprintln!(
            "{members} members, minority member {} answered {refusals:#?}",
            cluster.name(index)
        );
        assert_eq!(refusals.put_require_leader, NO_LEADER);
        assert_eq!(refusals.range_require_leader, NO_LEADER);
        for (what, answer, took) in [
            ("put", &refusals.put, refusals.put_took),
            ("linearizable range", &refusals.range, refusals.range_took),
        ] {
            assert!(
                LEADERLESS_REFUSALS.contains(&answer.as_str()),
                "{what} on a member cut off from the quorum answered {answer:?}, not one of \
                 etcd's refusals {LEADERLESS_REFUSALS:?}"
            );
            assert!(
                took <= SERVER_REQUEST_TIMEOUT + Duration::from_secs(3),
                "{what} took {took:?} to be refused"
            );
        }
    }

    for (index, watch_end) in watch_ends {
        let (ended, after) = watch_end.await.expect("watch task does not panic");
        let ended = ended.unwrap_or_else(|_| {
            cluster.fail(&format!(
                "require-leader watch on minority member {index} still open after \
                 {MINORITY_ANSWER_TIMEOUT:?}"
            ))
        });
        eprintln!(
            "{members} members, require-leader watch on {} ended {after:?} after the partition: \
             {ended}",
            cluster.name(index)
        );
        assert_eq!(
            ended, NO_LEADER,
            "require-leader watch on a leaderless member"
        );
    }

    let during = writer
        .put("partition/during", "2", None)
        .await
        .expect("the majority accepts writes while the minority is cut off");
    let during_revision = during.header().map_or(0, |header| header.revision());

    cluster.heal();
    let healed_at = Instant::now();
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    progress(&cluster, &load, "after healing");
    let report = load.stop();
    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for &index in &minority {
        let mut client = cluster.client(index).await;
        let response = client
            .get(
                "partition/during",
                Some(GetOptions::new().with_serializable()),
            )
            .await
            .expect("serializable get on a healed minority member");
        let kv = response
            .kvs()
            .first()
            .unwrap_or_else(|| cluster.fail("the minority did not catch up on partition/during"));
        assert_eq!(kv.mod_revision(), during_revision);
    }
    for index in cluster.members() {
        cluster.assert_acked_present(index, &report).await;
    }
    eprintln!(
        "RESULT partition {members} members (minority {minority:?}{}, {fault:?}): minority \
         leaderless after {leaderless_after:?}, majority leader after \
         {majority_leader_after:?}, converged {:?} after healing; {}; proxy {:?}; {converged:?}",
        if with_leader { " incl. the leader" } else { "" },
        healed_at.elapsed(),
        load_summary(&report),
        cluster.proxy().stats()
    );
}

/// Waits until member `index` serves `key` at `mod_revision` from a serializable (local) read.
async fn wait_for_local_key(cluster: &Cluster, index: usize, key: &str, mod_revision: i64) {
    let mut client = cluster.client(index).await;
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    loop {
        let local = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .ok()
            .and_then(|response| response.kvs().first().map(|kv| kv.mod_revision()));
        if local == Some(mod_revision) {
            return;
        }
        if Instant::now() >= deadline {
            cluster.fail(&format!(
                "member {index} does not serve {key}@{mod_revision} locally (has {local:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a member cut off from the quorum answered.
#[derive(Debug)]
struct Refusals {
    put: String,
    put_took: Duration,
    range: String,
    range_took: Duration,
    put_require_leader: String,
    range_require_leader: String,
}

/// Sends the minority member at `endpoint` a put and a linearizable range (plain and with
/// require-leader) and a serializable range, which must see `partition/before` at
/// `before_revision`.
async fn probe_minority(endpoint: String, before_revision: i64) -> Result<Refusals, String> {
    let connect = |require_leader: bool| {
        let options = ConnectOptions::new()
            .with_require_leader(require_leader)
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(MINORITY_ANSWER_TIMEOUT);
        Client::connect([endpoint.clone()], Some(options))
    };
    let mut plain = connect(false).await.map_err(|err| err.to_string())?;
    let mut require_leader = connect(true).await.map_err(|err| err.to_string())?;

    let serializable = plain
        .get(
            "partition/before",
            Some(GetOptions::new().with_serializable()),
        )
        .await
        .map_err(|err| format!("serializable get: {}", error_text(&err)))?;
    match serializable.kvs().first() {
        Some(kv) if kv.mod_revision() == before_revision => {}
        other => return Err(format!("serializable get returned {other:?}")),
    }

    let refused = |outcome: Result<(), etcd_client::Error>, what: &str| match outcome {
        Ok(()) => Err(format!(
            "{what} succeeded on a member cut off from the quorum"
        )),
        Err(err) => Ok(error_text(&err)),
    };
    let put_require_leader = refused(
        require_leader
            .put("partition/minority", "x", None)
            .await
            .map(drop),
        "require-leader put",
    )?;
    let range_require_leader = refused(
        require_leader.get("partition/before", None).await.map(drop),
        "require-leader range",
    )?;

    let mut plain_for_range = plain.clone();
    let put = async {
        let started = Instant::now();
        let outcome = plain.put("partition/minority", "x", None).await.map(drop);
        (outcome, started.elapsed())
    };
    let range = async {
        let started = Instant::now();
        let outcome = plain_for_range
            .get("partition/before", None)
            .await
            .map(drop);
        (outcome, started.elapsed())
    };
    let ((put, put_took), (range, range_took)) = tokio::join!(put, range);
    Ok(Refusals {
        put: refused(put, "put")?,
        put_took,
        range: refused(range, "linearizable range")?,
        range_took,
        put_require_leader,
        range_require_leader,
    })
}

fn progress(cluster: &Cluster, load: &common::cluster::WriteLoad, when: &str) {
    if let Err(reason) = load.wait_for_more_acks(PROGRESS_PUTS, PROGRESS_TIMEOUT) {
        cluster.fail(&format!("write load stalled {when}: {reason}"));
    }
}

fn load_summary(report: &LoadReport) -> String {
    format!(
        "load: {} acknowledged puts in {:?}, {} failed {:?}",
        report.acks.len(),
        report.elapsed,
        report.error_count(),
        report.errors
    )
}

/// etcd 3.4 keeps this many raft entries behind its last snapshot (`snapshotCatchUpEntriesN`,
/// not configurable in 3.4); a member further behind can only catch up from a snapshot.
const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
const SNAPSHOT_COUNT: u64 = 100;

/// (c) A follower is stopped (SIGTERM) while the others apply far more entries than the leader
/// keeps in its raft log (`--snapshot-count 100`; etcd 3.4 keeps 5,000 entries after a
/// snapshot), then restarted: it catches up (from a snapshot: asserted through etcd's
/// `etcd_network_snapshot_receive_success` metric when the server exposes it) and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_member_catches_up_from_snapshot() {
    let _serial = exclusive().await;
    let mut cluster = Cluster::start_with(ClusterOptions::new(3).snapshot_count(SNAPSHOT_COUNT));
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let lagging = (leader + 1) % 3;
    let status = cluster.stop(lagging);
    assert!(
        common::stopped_by_sigterm(status),
        "SIGTERM stop ended in {status}"
    );
    let others: Vec<usize> = cluster
        .members()
        .into_iter()
        .filter(|&index| index != lagging)
        .collect();
    let writes = SNAPSHOT_CATCH_UP_ENTRIES + 10 * SNAPSHOT_COUNT;
    let started = Instant::now();
    let load = cluster.start_load(&others, 4 * LOAD_TASKS, "load/");
    if let Err(reason) = load.wait_for_acks(writes, Duration::from_secs(90)) {
        cluster.fail(&format!(
            "writing while {} is down: {reason}",
            cluster.name(lagging)
        ));
    }
    let report = load.stop();
    let wrote_in = started.elapsed();

    let restarted_at = Instant::now();
    cluster.restart(lagging);
    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    let caught_up_in = restarted_at.elapsed();
    cluster.assert_acked_present(lagging, &report).await;
    let snapshots = snapshot_receive_count(&cluster, lagging);
    match snapshots {
        Some(count) => assert!(
            count >= 1.0,
            "{} caught up without receiving a snapshot (etcd_network_snapshot_receive_success \
             = {count})",
            cluster.name(lagging)
        ),
        None => eprintln!("note: no etcd_network_snapshot_receive_success metric to check"),
    }
    // The other side: some member counted the snapshot it sent.
    let sent: f64 = others
        .iter()
        .filter_map(|&index| snapshot_count(&cluster, index, "etcd_network_snapshot_send_success"))
        .sum();
    assert!(
        sent >= 1.0,
        "no member counted a snapshot sent (etcd_network_snapshot_send_success)"
    );
    for index in cluster.members() {
        cluster.assert_acked_present(index, &report).await;
    }
    eprintln!(
        "RESULT snapshot catch-up: {} acknowledged puts in {wrote_in:?} while {} was down; it \
         was healthy and converged {caught_up_in:?} after restart, snapshots received {snapshots:?}; \
         {}; {converged:?}",
        report.acks.len(),
        cluster.name(lagging),
        load_summary(&report)
    );
}

/// Sum of `etcd_network_snapshot_receive_success` samples on member `index`'s `/metrics`, `None`
/// when the server does not expose that metric.
pub(crate) fn snapshot_receive_count(cluster: &Cluster, index: usize) -> Option<f64> {
    snapshot_count(cluster, index, "etcd_network_snapshot_receive_success")
}

/// Sum of the `name` samples (etcd's snapshot counters, labelled by peer) on member `index`'s
/// `/metrics`, `None` when the server does not expose that metric.
fn snapshot_count(cluster: &Cluster, index: usize, name: &str) -> Option<f64> {
    let endpoint = cluster.endpoint(index);
    let port: u16 = endpoint
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("endpoints end in a port");
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let metrics = common::http_get(addr, "/metrics")
        .unwrap_or_else(|err| cluster.fail(&format!("GET /metrics: {err}")))
        .text();
    let mut found = false;
    let mut total = 0.0;
    for line in metrics.lines() {
        if line
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with([' ', '{']))
        {
            found = true;
            total += line
                .rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    found.then_some(total)
}

/// (d) Under load, a fourth member is added (`etcdctl member add`, then started with
/// `--initial-cluster-state existing`) and then the leader is removed (`etcdctl member remove`):
/// the removed member shuts down, the others elect a leader and keep acknowledging writes, the
/// member list shows the new membership, and all members converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_added_and_leader_removed_under_load() {
    let _serial = exclusive().await;
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let load = cluster.start_load(&cluster.members(), LOAD_TASKS, "load/");
    progress(&cluster, &load, "before the membership changes");

    let added_at = Instant::now();
    let added = cluster.add_member();
    let added_in = added_at.elapsed();
    progress(&cluster, &load, "after adding a member");

    let removed = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let removed_at = Instant::now();
    let exit = cluster.remove_member(removed);
    let remaining = cluster.members();
    let new_leader = cluster
        .wait_for_leader_among(&remaining, FAILOVER_DEADLINE)
        .await;
    let removed_in = removed_at.elapsed();
    progress(&cluster, &load, "after removing the leader");
    let report = load.stop();

    let mut names: Vec<String> = cluster
        .member_list(added)
        .into_iter()
        .map(|member| {
            assert!(member.started, "{member:?} should be started");
            assert!(!member.learner, "{member:?} should be a voter");
            member.name
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = remaining
        .iter()
        .map(|&index| cluster.name(index).to_string())
        .collect();
    expected.sort();
    assert_eq!(names, expected, "member list after add and remove");

    // `endpoint status --cluster` on the new member finds every member through the member list.
    let table = common::table_cells(
        &cluster.etcdctl_ok(added, &["endpoint", "status", "--cluster", "-w", "table"]),
    );
    let leader_column = table[0]
        .iter()
        .position(|cell| cell == "IS LEADER")
        .expect("endpoint status table has an IS LEADER column");
    assert_eq!(
        table.len() - 1,
        remaining.len(),
        "endpoint status rows {table:?}"
    );
    assert_eq!(
        table[1..]
            .iter()
            .filter(|row| row[leader_column] == "true")
            .count(),
        1,
        "exactly one leader in {table:?}"
    );

    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    for &index in &remaining {
        cluster.assert_acked_present(index, &report).await;
    }
    eprintln!(
        "RESULT membership: {} added and healthy in {added_in:?}; leader {} removed (exit \
         {exit}), {} leads {removed_in:?} after the removal; members {names:?}; {}; {converged:?}",
        cluster.name(added),
        cluster.name(removed),
        cluster.name(new_leader),
        load_summary(&report)
    );
}
