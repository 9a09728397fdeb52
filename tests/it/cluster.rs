//! Three-member clusters of real `oxetcd` processes on loopback: static bootstrap from
//! `--initial-cluster`, one leader, writes through a follower replicated to every member, the
//! member list, and a killed member rejoining from its data dir.
//!
//! `OXETCD_TEST_BIN=/usr/bin/etcd` runs the same tests against etcd (the flags are etcd's);
//! `OXETCD_TEST_KEEP_DIR=1` keeps the cluster's data dirs and logs and prints where they are.

use crate::common;
use crate::common::cluster::exclusive;
use crate::common::process::{POLL_INTERVAL, Process, READY_TIMEOUT, SPAWN_ATTEMPTS};

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use oxetcd::proto::oxetcdpb::RaftBatch;
use oxetcd::proto::oxetcdpb::peer_client::PeerClient;

const MEMBERS: usize = 3;
const TOKEN: &str = "oxetcd-cluster-test";
/// How long the members get to agree on something (a leader, a revision).
const AGREE_TIMEOUT: Duration = Duration::from_secs(20);

/// One member process of a [`Cluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Process,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn is_healthy(&self) -> bool {
        common::http::is_healthy(self.client_port)
    }
}

/// Three members started with the same `--initial-cluster` and token, each in its own data dir
/// under one temp dir. Dropping it SIGKILLs every member.
struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// `--initial-cluster-token` of each member.
    tokens: Vec<String>,
}

impl Cluster {
    /// Starts the members and waits until every one is healthy (which needs a leader). Retries
    /// with new ports if a port was taken between picking it and binding it.
    fn start() -> Cluster {
        Cluster::start_with_tokens([TOKEN; MEMBERS], &[0, 1, 2])
    }

    /// Starts member `i` with `tokens[i]` as its cluster token and waits until the members in
    /// `ready` are healthy.
    fn start_with_tokens(tokens: [&str; MEMBERS], ready: &[usize]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-cluster-")
            .tempdir()
            .expect("creating a temp dir should work");
        let mut cluster = Cluster {
            dir,
            members: Vec::new(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
        };
        for attempt in 1..=SPAWN_ATTEMPTS {
            cluster.members = (1..=MEMBERS)
                .map(|i| {
                    let name = format!("m{i}");
                    let log_path = cluster.dir.path().join(format!("{name}.log"));
                    Member {
                        data_dir: cluster.dir.path().join(format!("{name}.data")),
                        process: Process::new(&name, common::server_bin(), log_path),
                        name,
                        client_port: common::free_port(),
                        peer_port: common::free_port(),
                    }
                })
                .collect();
            for i in 0..MEMBERS {
                cluster.spawn(i);
            }
            match cluster.wait_ready(ready) {
                Ok(()) => return cluster,
                Err(reason) if attempt < SPAWN_ATTEMPTS && cluster.port_clash() => {
                    eprintln!(
                        "cluster: attempt {attempt} failed ({reason}); retrying with new ports"
                    );
                    for member in &mut cluster.members {
                        member.process.kill();
                        let _ = std::fs::remove_dir_all(&member.data_dir);
                        let _ = std::fs::remove_file(member.process.log_path());
                    }
                }
                Err(reason) => cluster.fail(&reason),
            }
        }
        unreachable!("the last attempt either returns or fails");
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn args(&self, i: usize) -> Vec<String> {
        let member = &self.members[i];
        let client = member.endpoint();
        let peer = member.peer_url();
        [
            "--name",
            &member.name,
            "--data-dir",
            &member.data_dir.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.initial_cluster(),
            "--initial-cluster-token",
            &self.tokens[i],
            "--initial-cluster-state",
            "new",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    }

    /// Starts member `i` (again) with the same flags as always.
    fn spawn(&mut self, i: usize) {
        let args = self.args(i);
        self.members[i].process.spawn(&args);
    }

    /// Waits until the members in `which` answer `/health` with 200; fails early when any
    /// member exits.
    fn wait_ready(&mut self, which: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for member in &mut self.members {
                if let Some(status) = member.process.exited() {
                    return Err(format!(
                        "{} exited before the cluster became healthy: {status}",
                        member.name
                    ));
                }
            }
            let unhealthy: Vec<&str> = which
                .iter()
                .map(|&i| &self.members[i])
                .filter(|m| !m.is_healthy())
                .map(|m| m.name.as_str())
                .collect();
            if unhealthy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{unhealthy:?} not healthy within {READY_TIMEOUT:?}"
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn port_clash(&self) -> bool {
        self.members.iter().any(|m| m.process.port_clash())
    }

    /// SIGKILLs member `i`; its data dir stays.
    fn kill9(&mut self, i: usize) {
        self.members[i].process.kill9();
    }

    /// Restarts member `i` with unchanged flags and waits until it is healthy.
    fn restart(&mut self, i: usize) {
        self.spawn(i);
        let running: Vec<usize> = (0..MEMBERS)
            .filter(|&j| self.members[j].process.is_spawned())
            .collect();
        if let Err(reason) = self.wait_ready(&running) {
            self.fail(&reason);
        }
    }

    /// Panics with `reason` and the tail of every member's log.
    fn fail(&self, reason: &str) -> ! {
        panic!("{reason}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for member in &self.members {
            text.push_str(&member.process.log_report(&member.name));
            text.push('\n');
        }
        text
    }

    async fn client(&self, i: usize) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        Client::connect([self.members[i].endpoint()], Some(options))
            .await
            .unwrap_or_else(|err| {
                self.fail(&format!("connecting to {}: {err}", self.members[i].name))
            })
    }

    /// Polls every running member's Status until they agree on one leader that is one of them;
    /// returns (leader index, cluster ID, member IDs by index).
    async fn wait_for_leader(&self) -> (usize, u64, Vec<u64>) {
        let running: Vec<usize> = (0..MEMBERS)
            .filter(|&i| self.members[i].process.is_spawned())
            .collect();
        self.wait_for_leader_among(&running).await
    }

    /// Like [`Cluster::wait_for_leader`] for the members in `running` only (IDs of the others
    /// are 0).
    async fn wait_for_leader_among(&self, running: &[usize]) -> (usize, u64, Vec<u64>) {
        let deadline = Instant::now() + AGREE_TIMEOUT;
        let mut last = String::new();
        loop {
            let mut views = Vec::new();
            for &i in running {
                let mut client = self.client(i).await;
                match client.status().await {
                    Ok(status) => {
                        let header = status.header().expect("status has a header");
                        views.push((i, header.member_id(), header.cluster_id(), status.leader()));
                    }
                    Err(err) => {
                        last = format!("{}: {err}", self.members[i].name);
                        views.push((i, 0, 0, 0));
                    }
                }
            }
            let leaders: Vec<usize> = views
                .iter()
                .filter(|(_, member_id, _, leader)| *member_id != 0 && member_id == leader)
                .map(|(i, ..)| *i)
                .collect();
            let cluster_ids: Vec<u64> = views.iter().map(|v| v.2).collect();
            if let [leader] = leaders[..] {
                let leader_id = views
                    .iter()
                    .find(|v| v.0 == leader)
                    .expect("the leader is among the views")
                    .1;
                let agree = views.iter().all(|v| v.3 == leader_id);
                let one_cluster = cluster_ids
                    .iter()
                    .all(|id| *id != 0 && *id == cluster_ids[0]);
                if agree && one_cluster {
                    let mut ids = vec![0; MEMBERS];
                    for (i, member_id, ..) in &views {
                        ids[*i] = *member_id;
                    }
                    return (leader, cluster_ids[0], ids);
                }
            }
            last = format!("{last}; views (index, member, cluster, leader): {views:x?}");
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no agreed leader within {AGREE_TIMEOUT:?}: {last}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            last.clear();
        }
    }

    /// Polls until every running member reports the same store revision and the same HashKV at
    /// it; returns that revision.
    async fn wait_converged(&self) -> i64 {
        let deadline = Instant::now() + AGREE_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for i in (0..MEMBERS).filter(|&i| self.members[i].process.is_spawned()) {
                let hash = self.client(i).await.maintenance_client().hash_kv(0).await;
                match hash {
                    Ok(h) => seen.push((
                        h.header().expect("hash_kv has a header").revision(),
                        h.hash(),
                    )),
                    // A member that cannot answer yet does not agree with anyone.
                    Err(_) => seen.push((-1, 0)),
                }
            }
            if seen.iter().all(|s| s.0 > 0 && *s == seen[0]) {
                return seen[0].0;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "members did not converge within {AGREE_TIMEOUT:?}: (revision, hash) {seen:?}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.process.kill();
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if std::env::var_os("OXETCD_TEST_KEEP_DIR").is_some_and(|value| value == "1") {
            self.dir.disable_cleanup(true);
            eprintln!("cluster: kept {}", self.dir.path().display());
        }
    }
}

/// The value of `key` read linearizably from member `i`, with the response's revision.
async fn get(cluster: &Cluster, i: usize, key: &str) -> (Option<String>, i64) {
    let mut client = cluster.client(i).await;
    let response = client.get(key, None).await.unwrap_or_else(|err| {
        cluster.fail(&format!("get {key} on {}: {err}", cluster.members[i].name))
    });
    let revision = response.header().expect("get has a header").revision();
    let value = response
        .kvs()
        .first()
        .map(|kv| kv.value_str().expect("test values are UTF-8").to_owned());
    (value, revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_exactly_one_leader() {
    let _serial = exclusive().await;
    let cluster = Cluster::start();
    let (leader, cluster_id, ids) = cluster.wait_for_leader().await;
    assert_ne!(cluster_id, 0);
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), MEMBERS, "member IDs are distinct: {ids:x?}");
    assert!(leader < MEMBERS);
    // Every member's response headers carry the one cluster ID.
    for (i, id) in ids.iter().enumerate() {
        let mut client = cluster.client(i).await;
        let response = client.member_list().await.expect("member list");
        let header = response.header().expect("member list has a header");
        assert_eq!(header.cluster_id(), cluster_id);
        assert_eq!(header.member_id(), *id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_a_follower_reaches_every_member() {
    let _serial = exclusive().await;
    let cluster = Cluster::start();
    let (leader, _, _) = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..MEMBERS).filter(|&i| i != leader).collect();

    let mut client = cluster.client(followers[0]).await;
    let put = client
        .put("via-follower", "v1", None)
        .await
        .unwrap_or_else(|err| cluster.fail(&format!("put through a follower: {err}")));
    let put_revision = put.header().expect("put has a header").revision();
    for i in 0..MEMBERS {
        let (value, revision) = get(&cluster, i, "via-follower").await;
        assert_eq!(
            value.as_deref(),
            Some("v1"),
            "linearizable read on {}",
            cluster.members[i].name
        );
        assert!(revision >= put_revision);
    }

    // More writes through both followers and the leader, then a delete and a txn.
    for (n, i) in (0..30).zip([followers[0], followers[1], leader].into_iter().cycle()) {
        let mut client = cluster.client(i).await;
        client
            .put(format!("k/{n:02}"), format!("v{n}"), None)
            .await
            .unwrap_or_else(|err| cluster.fail(&format!("put k/{n:02}: {err}")));
    }
    let mut client = cluster.client(followers[1]).await;
    let deleted = client
        .delete("k/00", None)
        .await
        .unwrap_or_else(|err| cluster.fail(&format!("delete through a follower: {err}")));
    assert_eq!(deleted.deleted(), 1);
    let last = cluster.wait_converged().await;
    assert_eq!(
        last,
        put_revision + 31,
        "one revision per put and one for the delete"
    );
    for i in 0..MEMBERS {
        let mut client = cluster.client(i).await;
        let range = client
            .get("k/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap_or_else(|err| {
                cluster.fail(&format!("range on {}: {err}", cluster.members[i].name))
            });
        assert_eq!(
            range.count(),
            29,
            "k/01..k/29 on {}",
            cluster.members[i].name
        );
        let serializable = client
            .get("k/29", Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get");
        assert_eq!(serializable.kvs()[0].value_str().expect("utf-8"), "v29");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_shows_three_members_with_names_and_urls() {
    let _serial = exclusive().await;
    let cluster = Cluster::start();
    let (_, _, ids) = cluster.wait_for_leader().await;
    for i in 0..MEMBERS {
        let mut client = cluster.client(i).await;
        let response = client.member_list().await.expect("member list");
        let mut members: Vec<(u64, String, Vec<String>)> = response
            .members()
            .iter()
            .map(|m| (m.id(), m.name().to_owned(), m.peer_urls().to_vec()))
            .collect();
        members.sort_by(|a, b| a.1.cmp(&b.1));
        let expected: Vec<(u64, String, Vec<String>)> = (0..MEMBERS)
            .map(|j| {
                (
                    ids[j],
                    cluster.members[j].name.clone(),
                    vec![cluster.members[j].peer_url()],
                )
            })
            .collect();
        assert_eq!(
            members, expected,
            "member list on {}",
            cluster.members[i].name
        );
        assert!(response.members().iter().all(|m| !m.is_learner()));
        let me = response
            .members()
            .iter()
            .find(|m| m.id() == ids[i])
            .expect("the member is in its own list");
        assert_eq!(me.client_urls(), [cluster.members[i].endpoint()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_rejoins_and_catches_up_from_the_log() {
    let _serial = exclusive().await;
    let mut cluster = Cluster::start();
    let (old_leader, cluster_id, ids) = cluster.wait_for_leader().await;
    let mut client = cluster.client(old_leader).await;
    client
        .put("before", "1", None)
        .await
        .expect("put before the kill");
    cluster.wait_converged().await;

    cluster.kill9(old_leader);
    let (new_leader, same_cluster, _) = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    assert_eq!(same_cluster, cluster_id);
    let survivor = (0..MEMBERS)
        .find(|&i| i != old_leader && i != new_leader)
        .expect("three members");
    for n in 0..20 {
        let i = if n % 2 == 0 { new_leader } else { survivor };
        let mut client = cluster.client(i).await;
        client
            .put(format!("during/{n:02}"), "x", None)
            .await
            .unwrap_or_else(|err| cluster.fail(&format!("put with one member down: {err}")));
    }

    cluster.restart(old_leader);
    let (leader, same_cluster, same_ids) = cluster.wait_for_leader().await;
    assert_eq!(same_cluster, cluster_id);
    assert_eq!(same_ids, ids, "member IDs survive the restart");
    assert!(leader < MEMBERS);
    let (value, _) = get(&cluster, old_leader, "during/19").await;
    assert_eq!(
        value.as_deref(),
        Some("x"),
        "the restarted member caught up"
    );
    let (value, _) = get(&cluster, old_leader, "before").await;
    assert_eq!(value.as_deref(), Some("1"));
    let mut client = cluster.client(old_leader).await;
    client
        .put("after", "2", None)
        .await
        .expect("put through the restarted member");
    cluster.wait_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_refuse_raft_messages_for_another_cluster_or_member() {
    let _serial = exclusive().await;
    if common::running_real_etcd() {
        eprintln!("the oxetcdpb.Peer service is oxetcd's own; skipped against etcd");
        return;
    }
    let cluster = Cluster::start();
    let (_, cluster_id, ids) = cluster.wait_for_leader().await;
    let mut peer = PeerClient::connect(cluster.members[0].peer_url())
        .await
        .unwrap_or_else(|err| cluster.fail(&format!("connecting to m1's peer URL: {err}")));
    let batch = |cluster_id: u64, to: u64| RaftBatch {
        cluster_id,
        from: ids[1],
        to,
        messages: Vec::new(),
    };
    let refused = peer
        .raft(tokio_stream::iter([batch(cluster_id ^ 1, ids[0])]))
        .await
        .expect_err("a batch for another cluster is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "etcdserver: cluster ID mismatch");
    let refused = peer
        .raft(tokio_stream::iter([batch(cluster_id, ids[2])]))
        .await
        .expect_err("a batch for another member is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "etcdserver: member ID mismatch");
    assert!(
        cluster.members[0]
            .log()
            .contains("refused raft messages from a peer"),
        "the refusal is logged"
    );
    // The cluster carries on.
    let mut client = cluster.client(0).await;
    client
        .put("still", "here", None)
        .await
        .expect("put after the refusals");
    cluster.wait_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_cluster_token_is_never_merged() {
    let _serial = exclusive().await;
    if common::running_real_etcd() {
        // The identity checks below read oxetcd's log.
        eprintln!("reads oxetcd's log for the outsider's identity; skipped against etcd");
        return;
    }
    let cluster = Cluster::start_with_tokens([TOKEN, TOKEN, "another-token"], &[0, 1]);
    let (leader, cluster_id, ids) = cluster.wait_for_leader_among(&[0, 1]).await;
    assert!(leader < 2);
    let outsider_log = cluster.members[2].log();
    let logged_id = |field: &str| {
        let marker = format!("\"{field}\":\"");
        outsider_log
            .lines()
            .find(|line| line.contains("starting local member"))
            .and_then(|line| line.split(&marker).nth(1))
            .and_then(|rest| rest.split('"').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap_or_else(|| cluster.fail(&format!("the outsider logged no {field}")))
    };
    assert_ne!(
        logged_id("cluster_id"),
        cluster_id,
        "the outsider has its own cluster ID"
    );
    let outsider_id = logged_id("member_id");
    let listed = cluster
        .client(0)
        .await
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| m.id())
        .collect::<Vec<_>>();
    assert_eq!(listed.len(), MEMBERS);
    assert!(listed.contains(&ids[0]) && listed.contains(&ids[1]));
    assert!(
        !listed.contains(&outsider_id),
        "the outsider's ID (from its token) is not a member"
    );

    let mut client = cluster.client(leader).await;
    client
        .put("majority", "only", None)
        .await
        .expect("m1 and m2 form a quorum");
    let deadline = Instant::now() + AGREE_TIMEOUT;
    while !cluster.members[2].log().contains("cluster ID mismatch") {
        if Instant::now() >= deadline {
            cluster.fail("the outsider never logged that its peers refused it");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Like etcd, a member that never joined its cluster (it cannot publish itself) does not
    // serve clients.
    assert!(
        !cluster.members[2].is_healthy(),
        "the outsider must not report healthy"
    );
    assert!(
        !cluster.members[2]
            .log()
            .contains("ready to serve client requests"),
        "the outsider must not serve clients"
    );
}
