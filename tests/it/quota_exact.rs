//! The backend quota under large concurrent puts: how far past `--quota-backend-bytes` the data
//! gets before writes are refused, that NOSPACE is raised once per member, that every member
//! refuses, and that delete + compact + defragment + disarm makes room again; on one member and on
//! three. Run with `--nocapture` to see the figures.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions, exclusive};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, CompactionOptions, DeleteOptions, Error, GetOptions,
};
use tonic::Code;

/// `--quota-backend-bytes` of the members.
const QUOTA_BYTES: u64 = 8 * 1024 * 1024;
/// How far past the quota the stored data may get, on one member or three.
const OVERSHOOT_MAX: f64 = 0.10;
/// Largest value a writer puts.
const VALUE_BYTES_MAX: usize = 1_000_000;
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// Concurrent writers per member.
const WRITERS_PER_MEMBER: usize = 3;
/// Value sizes the writers cycle through (100 KB to 1 MB).
const VALUE_SIZES_BYTES: [usize; 4] = [100_000, 250_000, 500_000, VALUE_BYTES_MAX];
/// Every writer stops at its first refusal; this many puts without one fail the test.
const PUTS_PER_WRITER_MAX: usize = 200;
const PREFIX: &str = "quota/";

/// What one fill observed.
struct Fill {
    /// Bytes (keys plus values) under [`PREFIX`] once every writer was refused.
    held_bytes: u64,
    /// Puts acknowledged.
    acked: usize,
    /// Largest Status `dbSize` any member reported during the fill.
    db_size_peak_bytes: i64,
}

/// Runs [`WRITERS_PER_MEMBER`] writers against every member until each is refused with
/// NOSPACE, while sampling every member's Status.
async fn fill(cluster: &Cluster, round: &str) -> Fill {
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let db_size_peak = Arc::new(AtomicI64::new(0));
    let mut samplers = Vec::new();
    for member in cluster.members() {
        let mut client = cluster.client_with(member, Duration::from_secs(5)).await;
        let (stop, peak) = (stop_sampling.clone(), db_size_peak.clone());
        samplers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                if let Ok(status) = client.status().await {
                    peak.fetch_max(status.db_size(), Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let mut writers = Vec::new();
    for member in cluster.members() {
        for writer in 0..WRITERS_PER_MEMBER {
            let mut client = cluster.client(member).await;
            let prefix = format!("{PREFIX}{round}/m{member}w{writer}/");
            writers.push(tokio::spawn(async move {
                for put in 0..PUTS_PER_WRITER_MAX {
                    let size = VALUE_SIZES_BYTES[(writer + put) % VALUE_SIZES_BYTES.len()];
                    match client
                        .put(format!("{prefix}{put:03}"), vec![b'v'; size], None)
                        .await
                    {
                        Ok(_) => {}
                        Err(Error::GRpcStatus(status)) => {
                            assert_eq!(
                                (status.code(), status.message()),
                                (Code::ResourceExhausted, NO_SPACE),
                                "member {member} writer {writer} refused put {put}"
                            );
                            return put;
                        }
                        Err(err) => panic!("member {member} writer {writer} put {put}: {err}"),
                    }
                }
                panic!("{PUTS_PER_WRITER_MAX} puts never exceeded the quota")
            }));
        }
    }
    let mut acked = 0;
    for writer in writers {
        acked += writer.await.unwrap();
    }
    stop_sampling.store(true, Ordering::Release);
    for sampler in samplers {
        sampler.await.unwrap();
    }

    // Values one by one: all of them in one response would pass the client's 4 MiB limit.
    let mut client = cluster.client(0).await;
    let keys = client
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("reads work over quota");
    let mut held_bytes = 0;
    for kv in keys.kvs() {
        let got = client.get(kv.key(), None).await.expect("get");
        held_bytes += got
            .kvs()
            .iter()
            .map(|kv| (kv.key().len() + kv.value().len()) as u64)
            .sum::<u64>();
    }
    Fill {
        held_bytes,
        acked,
        db_size_peak_bytes: db_size_peak.load(Ordering::Acquire),
    }
}

/// Asserts every member refuses a small put with NOSPACE.
async fn assert_all_refuse(cluster: &Cluster) {
    for member in cluster.members() {
        let mut client = cluster.client(member).await;
        match client.put("quota-probe", "x", None).await {
            Err(Error::GRpcStatus(status)) => assert_eq!(
                (status.code(), status.message()),
                (Code::ResourceExhausted, NO_SPACE),
                "member {member}"
            ),
            other => panic!("member {member} took a write over quota: {other:?}"),
        }
    }
}

/// The active alarms as (member ID, type), asserting each member is listed at most once and only
/// for NOSPACE, and that at least one member raised it.
async fn assert_nospace_listed_once(cluster: &Cluster) -> Vec<u64> {
    let mut ids = BTreeSet::new();
    for member in cluster.members() {
        ids.insert(cluster.member_id(member).await);
    }
    let mut client = cluster.client(0).await;
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    let raised: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|alarm| (alarm.member_id(), alarm.alarm()))
        .collect();
    let mut seen = BTreeSet::new();
    for (member_id, alarm) in &raised {
        assert_eq!(*alarm, AlarmType::Nospace, "alarms: {raised:?}");
        assert!(
            ids.contains(member_id),
            "alarm for a non-member: {raised:?}"
        );
        assert!(seen.insert(*member_id), "a member listed twice: {raised:?}");
    }
    assert!(!seen.is_empty(), "no NOSPACE alarm after refusals");
    seen.into_iter().collect()
}

/// Delete, compact, defragment every member, disarm: writes are taken again everywhere.
async fn recover(cluster: &Cluster, alarmed: &[u64]) {
    let mut client = cluster.client(0).await;
    let deleted = client
        .delete(PREFIX, Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("deletes work over quota");
    let revision = deleted.header().expect("header").revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compaction works over quota");
    for member in cluster.members() {
        let mut client = cluster.client(member).await;
        client.defragment().await.expect("defragment");
    }
    for member_id in alarmed {
        let mut options = AlarmOptions::new();
        options.with_member(*member_id);
        client
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
            .await
            .expect("disarm");
    }
    for member in cluster.members() {
        let mut client = cluster.client(member).await;
        client
            .put(format!("{PREFIX}after/{member}"), vec![b'a'; 500_000], None)
            .await
            .unwrap_or_else(|err| panic!("member {member} refused a put after recovery: {err}"));
    }
}

/// Counts the NOSPACE proposals each oxetcd member logged (one per refusal that found no
/// alarm raised and no proposal of its own in flight).
fn nospace_proposals_logged(cluster: &Cluster) -> Vec<usize> {
    cluster
        .members()
        .into_iter()
        .map(|member| cluster.log(member).matches("raising NOSPACE").count())
        .collect()
}

async fn quota_holds(members: usize) {
    let cluster = Cluster::start_with(
        ClusterOptions::new(members).arg(&format!("--quota-backend-bytes={QUOTA_BYTES}")),
    );
    for round in ["first", "second"] {
        let fill = fill(&cluster, round).await;
        let over = fill.held_bytes as f64 / QUOTA_BYTES as f64 - 1.0;
        eprintln!(
            "quota_exact {members} member(s), {round} fill: {} puts acknowledged; held {} bytes = \
             {:+.1}% of the {QUOTA_BYTES}-byte quota; Status dbSize peak {} bytes = {:.0}%",
            fill.acked,
            fill.held_bytes,
            over * 100.0,
            fill.db_size_peak_bytes,
            fill.db_size_peak_bytes as f64 * 100.0 / QUOTA_BYTES as f64,
        );
        // Every member checks each write again when it applies it, against the quota stamped
        // by the member that proposed it and the same size everywhere: admitted writes from
        // several members cannot together pass it, so three members hold the bound one does.
        // etcd 3.4 checks its file size, which lags the writes (measured +0% to +57% on one
        // member and +35% to +69% on three with this load), so it is not held to it.
        let overshoot_max_bytes = (QUOTA_BYTES as f64 * OVERSHOOT_MAX) as u64;
        assert!(
            common::running_real_etcd() || fill.held_bytes <= QUOTA_BYTES + overshoot_max_bytes,
            "{round} fill: {} bytes held, {:+.1}% over the quota",
            fill.held_bytes,
            over * 100.0
        );
        assert!(
            fill.held_bytes >= QUOTA_BYTES / 2,
            "{round} fill: refused at {} bytes, not half the quota",
            fill.held_bytes
        );
        assert_all_refuse(&cluster).await;
        let alarmed = assert_nospace_listed_once(&cluster).await;
        if !common::running_real_etcd() {
            let proposals = nospace_proposals_logged(&cluster);
            eprintln!("quota_exact {members} member(s): NOSPACE proposals logged {proposals:?}");
            // Cumulative over the rounds: at most one per member per fill.
            let rounds = if round == "first" { 1 } else { 2 };
            assert!(
                proposals.iter().all(|&p| p <= rounds),
                "{round} fill: NOSPACE proposed more than once per member: {proposals:?}"
            );
        }
        recover(&cluster, &alarmed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_refuses_within_the_quota() {
    let _exclusive = exclusive().await;
    quota_holds(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_refuse_together_within_the_quota() {
    let _exclusive = exclusive().await;
    quota_holds(3).await;
}
