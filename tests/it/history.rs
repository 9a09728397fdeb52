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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
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
    let failed = ops.iter().filter(|op| op.outcome == Outcome::Failed).count();
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
         {converged:?}"
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
                Ok(Ret::Get(
                    response.kvs().first().map(|kv| lossy(kv.value())),
                ))
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
