//! History checking (issue 13, point 7): concurrent clients issue random puts, linearizable gets,
//! deletes and compare-and-set txns on a handful of keys of a 3-member cluster while a nemesis
//! SIGKILLs and restarts, pauses (SIGSTOP / SIGCONT) and partitions (through the peer proxy)
//! members; every operation is recorded with its invocation and completion on one logical clock,
//! and each key's history must be linearizable (common/linearizability.rs).
//!
//! CI runs a bounded pass (`LOAD_SECONDS` of load); `OXETCD_HISTORY_SECONDS=N` runs N seconds and
//! `OXETCD_HISTORY_SEED=S` replays the random choices of clients and nemesis (the timing of a
//! real cluster is not replayed). The seed, operations checked and faults injected are printed.
//! Passes against etcd 3.4 too (`OXETCD_TEST_BIN=/usr/bin/etcd`).

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::cluster::{CONVERGE_TIMEOUT, Cluster, FAILOVER_DEADLINE, exclusive};
use common::linearizability::{self, Call, History, Op, Outcome, Ret};
use common::proxy::Fault;

/// Seconds of load with faults in CI's pass.
const LOAD_SECONDS: u64 = 30;
const KEYS: usize = 5;
/// Client tasks per member, each connected to that member only, plus `SHARED_CLIENTS` connected
/// to all members.
const CLIENTS_PER_MEMBER: usize = 2;
const SHARED_CLIENTS: usize = 2;
/// Per-request timeout of the clients: short, so requests to a paused or cut-off member end
/// indeterminate quickly and the clients go on.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bound on one operation including connecting, in case the client's own timeout does not fire.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between one client's operations: keeps each key's history a few thousand operations long
/// so the search stays small, and leaves CPU to the members on a 2-core machine.
const CLIENT_PACE: Duration = Duration::from_millis(15);
/// How long a fault lasts, and the quiet time after the cluster has a leader again.
const FAULT_MS: std::ops::Range<u64> = 1000..2000;
const QUIET_MS: std::ops::Range<u64> = 500..1500;
/// Wait before re-opening a broken watch (the member may still be down).
const WATCH_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Operations that must have been answered for the run to count (the cluster was not just down).
const ANSWERED_MIN: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_faults_3_members() {
    let _serial = exclusive().await;
    let seconds = env_number("OXETCD_HISTORY_SECONDS").unwrap_or(LOAD_SECONDS);
    let seed = env_number("OXETCD_HISTORY_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_secs())
    });
    eprintln!("history: seed {seed} (OXETCD_HISTORY_SEED={seed} replays it), {seconds} s of load");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let keys: Vec<String> = (0..KEYS).map(|index| format!("history/k{index}")).collect();
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Watchers stop once they have seen this revision (set when the writes are over).
    let watch_until = Arc::new(AtomicI64::new(i64::MAX));
    let mut watchers = Vec::new();
    for member in cluster.members() {
        watchers.push((
            member,
            tokio::spawn(watch_member(
                cluster.endpoint(member),
                Arc::clone(&watch_until),
            )),
        ));
    }

    let mut clients = Vec::new();
    let mut id = 0;
    for member in cluster.members() {
        for _ in 0..CLIENTS_PER_MEMBER {
            clients.push((id, vec![cluster.endpoint(member)]));
            id += 1;
        }
    }
    for _ in 0..SHARED_CLIENTS {
        clients.push((id, cluster.endpoints()));
        id += 1;
    }
    let mut tasks = Vec::new();
    for (id, endpoints) in clients {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = Client::connect(endpoints, Some(options))
            .await
            .expect("lazy connect");
        let worker = Worker {
            id,
            client,
            keys: keys.clone(),
            history: Arc::clone(&history),
            rng: StdRng::seed_from_u64(seed.wrapping_add(1 + id as u64)),
            last_seen: vec![None; KEYS],
            next_value: 0,
        };
        tasks.push(tokio::spawn(worker.run(Arc::clone(&stop))));
    }

    let faults = nemesis(&mut cluster, &mut rng, Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    cluster.heal();
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    watch_until.store(converged.revision, Ordering::Relaxed);
    let mut watch_logs = Vec::new();
    for (member, watcher) in watchers {
        match tokio::time::timeout(CONVERGE_TIMEOUT, watcher).await {
            Ok(log) => watch_logs.push((member, log.expect("watch task"))),
            Err(_) => cluster.fail(&format!(
                "the watch on member {member} did not reach revision {} within \
                 {CONVERGE_TIMEOUT:?}",
                converged.revision
            )),
        }
    }

    // Final linearizable reads from every member: an acknowledged write lost in a failover shows
    // up here, if no read during the run caught it.
    for member in cluster.members() {
        let mut client = cluster.client(member).await;
        for key in &keys {
            let invoke = history.tick();
            let response = client
                .get(key.as_str(), None)
                .await
                .unwrap_or_else(|err| cluster.fail(&format!("final get {key}: {err}")));
            let complete = history.tick();
            history.record(Op {
                client: 1000 + member,
                key: key.clone(),
                call: Call::Get,
                invoke,
                outcome: Outcome::Ok {
                    complete,
                    ret: Ret::Get(response.kvs().first().map(|kv| lossy(kv.value()))),
                },
            });
        }
    }

    let ops = history.ops();
    let answered = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok { .. }))
        .count();
    let indeterminate = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Indeterminate)
        .count();
    let failed = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Failed)
        .count();
    for (member, log) in &watch_logs {
        if let Err(violation) = check_watch(log, &ops, converged.revision) {
            cluster.fail(&format!(
                "seed {seed}: watch on member {member}: {violation}"
            ));
        }
        if log.events != watch_logs[0].1.events {
            cluster.fail(&format!(
                "seed {seed}: the watches on members {member} and {} saw different events",
                watch_logs[0].0
            ));
        }
    }
    let reconnects: Vec<usize> = watch_logs.iter().map(|(_, log)| log.reconnects).collect();
    let started = Instant::now();
    let verdict = tokio::task::spawn_blocking(move || linearizability::check(&ops))
        .await
        .expect("checker task");
    let checked_in = started.elapsed();
    match verdict {
        Ok(reports) => {
            for report in &reports {
                eprintln!(
                    "history: {} linearizable: {} operations ({} indeterminate), {} states",
                    report.key, report.checked, report.indeterminate, report.states
                );
            }
        }
        Err(violation) => cluster.fail(&format!("seed {seed}: {violation}")),
    }
    eprintln!(
        "RESULT history seed {seed}: {answered} answered, {indeterminate} indeterminate, {failed} \
         refused operations on {KEYS} keys, checked in {checked_in:?}; faults {faults}; \
         watches: {} events each, re-opened {reconnects:?} times; {converged:?}",
        watch_logs[0].1.events.len()
    );
    assert!(
        answered >= ANSWERED_MIN,
        "only {answered} operations were answered; the run checked too little"
    );
}

/// Faults injected, by kind, for the report.
#[derive(Debug, Default)]
struct Faults {
    kills: usize,
    pauses: usize,
    partitions: usize,
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kill -9 + restart, {} SIGSTOP/SIGCONT, {} partitions",
            self.kills, self.pauses, self.partitions
        )
    }
}

/// Cycles through kill -9 + restart, SIGSTOP / SIGCONT and a one-member partition (blackholed or
/// reset), each on a random member (the leader one time in two) for `FAULT_MS`, until `load` has
/// passed; after each fault waits for a leader, then lets the load run quietly for `QUIET_MS`.
async fn nemesis(cluster: &mut Cluster, rng: &mut StdRng, load: Duration) -> Faults {
    let deadline = Instant::now() + load;
    let mut faults = Faults::default();
    let mut round = 0;
    while Instant::now() < deadline {
        let target = if rng.random_bool(0.5) {
            cluster.wait_for_leader(FAILOVER_DEADLINE).await
        } else {
            rng.random_range(0..cluster.len())
        };
        let hold = Duration::from_millis(rng.random_range(FAULT_MS));
        let name = cluster.name(target).to_string();
        match round % 3 {
            0 => {
                eprintln!("nemesis: kill -9 {name} for {hold:?}");
                cluster.kill9(target);
                tokio::time::sleep(hold).await;
                cluster.restart(target);
                faults.kills += 1;
            }
            1 => {
                eprintln!("nemesis: SIGSTOP {name} for {hold:?}");
                cluster.signal(target, rustix::process::Signal::STOP);
                tokio::time::sleep(hold).await;
                cluster.signal(target, rustix::process::Signal::CONT);
                faults.pauses += 1;
            }
            _ => {
                let fault = if rng.random_bool(0.5) {
                    Fault::Blackhole
                } else {
                    Fault::Reset
                };
                eprintln!("nemesis: partition {name} ({fault:?}) for {hold:?}");
                cluster.partition_with(&[target], fault);
                tokio::time::sleep(hold).await;
                cluster.heal();
                faults.partitions += 1;
            }
        }
        round += 1;
        cluster.wait_for_leader(FAILOVER_DEADLINE).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(QUIET_MS))).await;
    }
    faults
}

/// One recording client.
struct Worker {
    id: usize,
    client: Client,
    keys: Vec<String>,
    history: Arc<History>,
    rng: StdRng,
    /// The last value this client saw or wrote per key, for compare-and-set.
    last_seen: Vec<Option<String>>,
    next_value: u64,
}

impl Worker {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let key_index = self.rng.random_range(0..self.keys.len());
            let call = self.next_call(key_index);
            let key = self.keys[key_index].clone();
            let invoke = self.history.tick();
            let answer = tokio::time::timeout(OPERATION_TIMEOUT, self.send(&key, &call)).await;
            let complete = self.history.tick();
            let outcome = match answer {
                Ok(Ok(ret)) => {
                    match (&call, &ret) {
                        (Call::Put(value), _) | (Call::Cas { new: value, .. }, Ret::Cas(true)) => {
                            self.last_seen[key_index] = Some(value.clone());
                        }
                        (_, Ret::Get(read)) => self.last_seen[key_index] = read.clone(),
                        (Call::Delete, _) => self.last_seen[key_index] = None,
                        _ => {}
                    }
                    Outcome::Ok { complete, ret }
                }
                Ok(Err(err)) if refused_before_sending(&err) => Outcome::Failed,
                Ok(Err(_)) | Err(_) => Outcome::Indeterminate,
            };
            self.history.record(Op {
                client: self.id,
                key,
                call,
                invoke,
                outcome,
            });
            tokio::time::sleep(CLIENT_PACE).await;
        }
    }

    /// A random operation: get 35 %, put 30 %, compare-and-set 20 % (against the value this client
    /// last saw; a put when it saw none), delete 15 %. Written values are unique.
    fn next_call(&mut self, key_index: usize) -> Call {
        let roll = self.rng.random_range(0..100);
        let mut value = || {
            self.next_value += 1;
            format!("c{}-{}", self.id, self.next_value)
        };
        match roll {
            0..35 => Call::Get,
            35..65 => Call::Put(value()),
            65..85 => match self.last_seen[key_index].clone() {
                Some(expect) => Call::Cas {
                    expect,
                    new: value(),
                },
                None => Call::Put(value()),
            },
            _ => Call::Delete,
        }
    }

    async fn send(&mut self, key: &str, call: &Call) -> Result<Ret, etcd_client::Error> {
        match call {
            Call::Put(value) => {
                self.client.put(key, value.as_str(), None).await?;
                Ok(Ret::Put)
            }
            Call::Get => {
                let response = self.client.get(key, None).await?;
                Ok(Ret::Get(response.kvs().first().map(|kv| lossy(kv.value()))))
            }
            Call::Delete => {
                let response = self.client.delete(key, None).await?;
                Ok(Ret::Delete(response.deleted()))
            }
            Call::Cas { expect, new } => {
                let txn = Txn::new()
                    .when([Compare::value(key, CompareOp::Equal, expect.as_str())])
                    .and_then([TxnOp::put(key, new.as_str(), None)]);
                let response = self.client.txn(txn).await?;
                Ok(Ret::Cas(response.succeeded()))
            }
        }
    }
}

/// Errors that prove the request never reached a server: the connection to the member could not
/// be opened (it is down). Everything else (timeouts, resets, "no leader", "request timed out")
/// may come after the member proposed the request, so it is indeterminate.
fn refused_before_sending(err: &etcd_client::Error) -> bool {
    format!("{err:?}").contains("Connection refused")
}

/// One watch event as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    revision: i64,
    key: String,
    /// The value and version written, `None` for a delete.
    put: Option<(String, i64)>,
    /// prev_kv: the value and version before.
    prev: Option<(String, i64)>,
}

/// What one member's watch delivered, over all its re-openings.
#[derive(Debug, Default)]
struct WatchLog {
    events: Vec<Seen>,
    reconnects: usize,
    /// Cancellations and other answers a watch without compaction must not give.
    problems: Vec<String>,
}

/// Watches the keys' prefix on one member from revision 1 with prev_kv; when the stream breaks
/// (member killed, connection reset) opens it again from the revision after the last one seen.
/// Returns once it has seen `until`.
async fn watch_member(endpoint: String, until: Arc<AtomicI64>) -> WatchLog {
    // No request timeout: it would end the stream.
    let options = ConnectOptions::new().with_connect_timeout(REQUEST_TIMEOUT);
    let mut client = Client::connect([endpoint], Some(options))
        .await
        .expect("lazy connect");
    let mut log = WatchLog::default();
    let mut last = 1;
    let mut opened = false;
    while last < until.load(Ordering::Relaxed) {
        if opened {
            log.reconnects += 1;
            tokio::time::sleep(WATCH_RETRY_INTERVAL).await;
        }
        opened = true;
        let watch_options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(last + 1);
        let Ok(mut stream) = client.watch("history/", Some(watch_options)).await else {
            continue;
        };
        // Wake up now and then to notice `until` while nothing happens.
        while last < until.load(Ordering::Relaxed) {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None) | Err(_)) => break,
            };
            if response.canceled() {
                log.problems.push(format!(
                    "canceled after revision {last}: {:?} (compact revision {})",
                    response.cancel_reason(),
                    response.compact_revision()
                ));
                break;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else {
                    log.problems
                        .push(format!("an event without kv after revision {last}"));
                    continue;
                };
                let put = (event.event_type() == EventType::Put)
                    .then(|| (lossy(kv.value()), kv.version()));
                let prev = event
                    .prev_kv()
                    .map(|prev| (lossy(prev.value()), prev.version()));
                last = kv.mod_revision();
                log.events.push(Seen {
                    revision: kv.mod_revision(),
                    key: lossy(kv.key()),
                    put,
                    prev,
                });
            }
        }
    }
    log
}

/// etcd's watch guarantees on one member's log, against the recorded operations: revisions
/// strictly increasing (ordered, no duplicates) and every revision from 2 to `last_revision`
/// present (nothing but the test writes, so every revision changed a watched key); prev_kv equal
/// to the key's previous event and versions counting up from 1 after each delete; every put
/// value one a client sent (never one refused before sending), each at most once, and every
/// acknowledged put and successful compare-and-set among them.
fn check_watch(log: &WatchLog, ops: &[Op], last_revision: i64) -> Result<(), String> {
    if let Some(problem) = log.problems.first() {
        return Err(problem.clone());
    }
    let mut expected_revision = 2;
    let mut current: HashMap<&str, (String, i64)> = HashMap::new();
    let mut written: BTreeMap<&str, &Op> = BTreeMap::new();
    for op in ops {
        if let Call::Put(value) | Call::Cas { new: value, .. } = &op.call {
            written.insert(value, op);
        }
    }
    let mut applied: HashSet<&str> = HashSet::new();
    for event in &log.events {
        if event.revision != expected_revision {
            return Err(format!(
                "revision {} arrived where {expected_revision} was due (ordered, no duplicates, \
                 no gaps): {event:?}",
                event.revision
            ));
        }
        expected_revision += 1;
        let before = current.get(event.key.as_str()).cloned();
        if event.prev != before {
            return Err(format!(
                "prev_kv {:?} but the previous event on the key left {before:?}: {event:?}",
                event.prev
            ));
        }
        match &event.put {
            Some((value, version)) => {
                let due = before.as_ref().map_or(1, |(_, version)| version + 1);
                if *version != due {
                    return Err(format!("version {version} where {due} was due: {event:?}"));
                }
                match written.get(value.as_str()) {
                    Some(op) if op.key == event.key && op.outcome != Outcome::Failed => {}
                    Some(op) => return Err(format!("{event:?} is the write of {op}")),
                    None => return Err(format!("{event:?} writes a value nobody sent")),
                }
                if !applied.insert(value.as_str()) {
                    return Err(format!("value {value} applied twice: {event:?}"));
                }
                current.insert(&event.key, (value.clone(), *version));
            }
            None => {
                if before.is_none() {
                    return Err(format!("a delete of an absent key: {event:?}"));
                }
                current.remove(event.key.as_str());
            }
        }
    }
    if expected_revision != last_revision + 1 {
        return Err(format!(
            "the last event has revision {}, the cluster is at {last_revision}",
            expected_revision - 1
        ));
    }
    for (value, op) in written {
        let acknowledged = matches!(
            op.outcome,
            Outcome::Ok {
                ret: Ret::Put | Ret::Cas(true),
                ..
            }
        );
        if acknowledged && !applied.contains(value) {
            return Err(format!("the acknowledged {op} never appeared"));
        }
    }
    Ok(())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The watch check on hand-made logs: it must catch what it claims to.
mod watch_check {
    use super::*;

    fn put_op(value: &str, invoke: u64, outcome: Outcome) -> Op {
        Op {
            client: 0,
            key: "history/k0".to_string(),
            call: Call::Put(value.to_string()),
            invoke,
            outcome,
        }
    }

    fn acked(value: &str, invoke: u64) -> Op {
        put_op(
            value,
            invoke,
            Outcome::Ok {
                complete: invoke + 1,
                ret: Ret::Put,
            },
        )
    }

    fn seen(revision: i64, put: Option<(&str, i64)>, prev: Option<(&str, i64)>) -> Seen {
        let owned = |(value, version): (&str, i64)| (value.to_string(), version);
        Seen {
            revision,
            key: "history/k0".to_string(),
            put: put.map(owned),
            prev: prev.map(owned),
        }
    }

    fn log(events: Vec<Seen>) -> WatchLog {
        WatchLog {
            events,
            ..WatchLog::default()
        }
    }

    #[test]
    fn a_faithful_log_passes() {
        let ops = [
            acked("a", 0),
            acked("b", 2),
            put_op("c", 4, Outcome::Indeterminate),
        ];
        let events = vec![
            seen(2, Some(("a", 1)), None),
            seen(3, Some(("b", 2)), Some(("a", 1))),
            seen(4, None, Some(("b", 2))),
            seen(5, Some(("c", 1)), None),
        ];
        check_watch(&log(events), &ops, 5).unwrap();
    }

    #[test]
    fn gaps_duplicates_and_wrong_prev_kv_fail() {
        let ops = [acked("a", 0), acked("b", 2)];
        let gap = vec![seen(2, Some(("a", 1)), None)];
        let err = check_watch(&log(gap), &ops, 3).unwrap_err();
        assert!(err.contains("cluster is at 3"), "{err}");
        let duplicate = vec![seen(2, Some(("a", 1)), None), seen(2, Some(("a", 1)), None)];
        let err = check_watch(&log(duplicate), &ops, 3).unwrap_err();
        assert!(err.contains("revision 2 arrived where 3 was due"), "{err}");
        let wrong_prev = vec![seen(2, Some(("a", 1)), None), seen(3, Some(("b", 2)), None)];
        let err = check_watch(&log(wrong_prev), &ops, 3).unwrap_err();
        assert!(err.contains("prev_kv None"), "{err}");
    }

    #[test]
    fn lost_and_refused_writes_fail() {
        let ops = [acked("a", 0), acked("b", 2)];
        let lost = vec![seen(2, Some(("a", 1)), None)];
        let err = check_watch(&log(lost), &ops, 2).unwrap_err();
        assert!(err.contains("never appeared"), "{err}");
        let ops = [acked("a", 0), put_op("b", 2, Outcome::Failed)];
        let refused = vec![
            seen(2, Some(("a", 1)), None),
            seen(3, Some(("b", 2)), Some(("a", 1))),
        ];
        let err = check_watch(&log(refused), &ops, 3).unwrap_err();
        assert!(err.contains("is the write of"), "{err}");
    }
}
