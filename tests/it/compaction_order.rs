//! Compactions issued back to back, overlapping on disk, under write load on a 3-member cluster:
//! every member ends with the same compaction revision and the same HashKV at every revision
//! still held (and, on oxetcd, the same Hash: the compaction marks on disk agree too).

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{CONVERGE_TIMEOUT, Cluster, exclusive};
use common::running_real_etcd;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// Keys written per txn: each is a revision key on disk, so compactions have work to do.
const KEYS_PER_TXN: usize = 100;
/// Txns written before the first compaction.
const HISTORY_TXNS: usize = 60;
/// Compactions issued, each as soon as the previous one is applied.
const COMPACTIONS: usize = 25;
/// How long the members get to finish compacting on disk and agree on Hash.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One revision: [`KEYS_PER_TXN`] keys under `prefix`, each overwritten by every call.
async fn write_txn(client: &mut Client, prefix: &str, round: usize) {
    let ops: Vec<TxnOp> = (0..KEYS_PER_TXN)
        .map(|k| TxnOp::put(format!("{prefix}/{k:03}"), format!("value-{round}"), None))
        .collect();
    let txn = Txn::new()
        .when([Compare::version("absent-key", CompareOp::Equal, 0)])
        .and_then(ops);
    client.txn(txn).await.expect("a write txn succeeds");
}

/// HashKV at `revision` on every member, as (hash, compact revision).
async fn hash_kv_everywhere(cluster: &Cluster, revision: i64) -> Vec<(u32, i64)> {
    let mut seen = Vec::new();
    for index in cluster.members() {
        let client = cluster.client(index).await;
        let resp = client
            .maintenance_client()
            .hash_kv(revision)
            .await
            .unwrap_or_else(|e| cluster.fail(&format!("HashKV at {revision} on {index}: {e}")));
        seen.push((resp.hash(), resp.compact_version()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_compactions_leave_every_member_with_the_same_hashes() {
    let _exclusive = exclusive().await;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(CONVERGE_TIMEOUT).await;
    let mut writer = cluster.client(leader).await;
    for round in 0..HISTORY_TXNS {
        write_txn(&mut writer, "history", round).await;
    }

    // Write load throughout the compactions, through another member.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let mut client = cluster.client((leader + 1) % 3).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                write_txn(&mut client, "load", round).await;
                round += 1;
            }
            round
        })
    };

    // Each compaction a few revisions past the last, through every member in turn, answered
    // once applied (not once on disk), so deletions of one overlap the next.
    let mut compacted = 0;
    for n in 0..COMPACTIONS {
        let index = n % 3;
        let mut client = cluster.client(index).await;
        let current = client
            .get("absent-key", None)
            .await
            .expect("a read succeeds")
            .header()
            .expect("a header")
            .revision();
        let target = (current - 2).max(compacted + 1);
        client
            .compact(target, None)
            .await
            .unwrap_or_else(|e| cluster.fail(&format!("compaction {n} at {target}: {e}")));
        compacted = target;
    }
    stop.store(true, Ordering::Relaxed);
    let load_txns = load.await.expect("the load task ends");
    assert!(load_txns > 0, "writes went on during the compactions");

    let converged = cluster.wait_converged(CONVERGE_TIMEOUT).await;
    assert_eq!(
        converged.compact_revision, compacted,
        "every member reports the last compaction"
    );
    // The compaction revision itself is refused by HashKV; hash every revision after it.
    let mut checked = 0;
    for revision in [
        compacted + 1,
        compacted + 2,
        (compacted + converged.revision) / 2,
        converged.revision,
        0,
    ] {
        if revision > converged.revision {
            continue;
        }
        let seen = hash_kv_everywhere(&cluster, revision).await;
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "HashKV at {revision} agrees on every member (hash, compact revision): {seen:?}"
        );
        assert_eq!(seen[0].1, compacted, "HashKV reports the last compaction");
        checked += 1;
    }
    assert!(checked >= 3, "hashed {checked} revisions");

    if running_real_etcd() {
        // etcd's Hash covers member-local state too, so it differs between members.
        return;
    }
    // How often each member merged compactions that queued up (timing-dependent, not asserted).
    let runs: Vec<usize> = cluster
        .members()
        .into_iter()
        .map(|index| {
            cluster
                .log(index)
                .matches("finished scheduled compaction")
                .count()
        })
        .collect();
    eprintln!("{COMPACTIONS} compactions ran on disk as {runs:?} per member");
    // Hash covers the whole stored state, compaction marks included: once every member has
    // finished on disk, the members agree.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for index in cluster.members() {
            let client = cluster.client(index).await;
            let resp = client.maintenance_client().hash().await;
            seen.push(resp.map(|r| r.hash()).map_err(|e| e.to_string()));
        }
        if seen.iter().all(|s| s.is_ok() && *s == seen[0]) {
            break;
        }
        if Instant::now() >= deadline {
            cluster.fail(&format!(
                "members' Hash still differ after {SETTLE_TIMEOUT:?}: {seen:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
