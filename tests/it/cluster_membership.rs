//! Black-box tests of membership changes as an operator makes them with etcdctl 3.4 (and, where
//! etcdctl checks input itself, the etcd-client crate): a learner added, started and promoted, a
//! member's peer URL moved and moved back, etcd's refusals with their exact texts (unknown IDs,
//! taken peer URLs, learner rules, `--strict-reconfig-check` with a member down, malformed URLs),
//! and what `member list` and `endpoint status --cluster` show on a fresh cluster.
//!
//! Every assertion is on what a user sees: etcdctl's stdout lines and `Error: ...` lines, gRPC
//! status codes and messages. The expected texts were taken from etcd 3.4.23, and every test
//! passes against it: `OXETCD_TEST_BIN=/usr/bin/etcd cargo test --release --test it
//! cluster_membership::`.
//!
//! etcd checks the health of the cluster before it looks at a change (with the default
//! `--strict-reconfig-check` it wants every voter connected for 5 s before adding a member), so a
//! refusal that is about the change itself is awaited with [`Cluster::reconfigure_refused`], which
//! retries the transient `unhealthy cluster` answers of a freshly started cluster.

use crate::common;

use std::time::{Duration, Instant};

use etcd_client::{GetOptions, MemberAddOptions};

use common::cluster::{
    CONVERGE_TIMEOUT, Cluster, FAILOVER_DEADLINE, LEARNER_NOT_READY, MEMBER_READY_TIMEOUT,
    RECONFIGURE_TIMEOUT, error_text, exclusive,
};
use common::proxy::Fault;
use common::{free_port, table_cells};

/// How long a member gets to show a change in its member list (it applies the change after the
/// member that was asked) or to publish its name and client URLs after it starts.
const MEMBER_LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member gets to serve a key written through another member.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// etcd's answers, as etcdctl prints them.
const MEMBER_NOT_FOUND: &str = "Error: etcdserver: member not found\n";
const PEER_URL_EXISTS: &str = "Error: etcdserver: Peer URLs already exists\n";
const NOT_A_LEARNER: &str = "Error: etcdserver: can only promote a learner member\n";
const TOO_MANY_LEARNERS: &str = "Error: etcdserver: too many learner members in cluster\n";
const UNHEALTHY: &str = "Error: etcdserver: unhealthy cluster\n";
const NOT_ENOUGH_STARTED: &str =
    "Error: etcdserver: re-configuration failed due to not enough started members\n";
const LEARNER_REFUSES_RPC: &str = "Error: etcdserver: rpc not supported for learner\n";
/// The gRPC status for peer URLs the server cannot parse.
const BAD_URLS: &str = "InvalidArgument: etcdserver: given member URLs are invalid";

const MEMBER_LIST_HEADER: [&str; 6] = [
    "ID",
    "STATUS",
    "NAME",
    "PEER ADDRS",
    "CLIENT ADDRS",
    "IS LEARNER",
];
const ENDPOINT_STATUS_HEADER: [&str; 10] = [
    "ENDPOINT",
    "ID",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "IS LEARNER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "ERRORS",
];

/// 1. `member add --learner`, then the learner is started with `--initial-cluster-state
/// existing`: the member list shows it unstarted and then with its name and client URLs, always
/// as a learner; it cannot be promoted before it has caught up, refuses client writes and
/// linearizable reads, serves serializable reads; once promoted the member list shows it as a
/// voter and writes through it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_is_added_started_and_promoted() {
    let _serial = exclusive().await;
    let (mut cluster, leader) = start_published().await;
    let follower = (leader + 1) % 3;
    let cluster_id = cluster_id(&cluster, leader).await;
    cluster.etcdctl_ok(leader, &["put", "before-learner", "1"]);

    let (learner, id) = cluster.add_member_unstarted(true);
    let hex = format!("{id:x}");
    let peer_url = cluster.peer_url(learner);
    let unstarted = format!("{hex}, unstarted, , {peer_url}, , true");
    for via in 0..3 {
        wait_for_member_line(&cluster, via, &unstarted).await;
    }
    // A learner that has not caught up cannot be promoted, whichever member is asked (etcd
    // forwards a promotion to the leader, which judges from its replication progress).
    for via in [leader, follower] {
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "promote", &hex]),
            format!("Error: {LEARNER_NOT_READY}\n"),
            "promoting the unstarted learner via {}",
            cluster.name(via)
        );
    }

    cluster.start_member(learner);
    if let Err(reason) = cluster.wait_healthy(learner, MEMBER_READY_TIMEOUT) {
        cluster.fail(&reason);
    }
    let started = format!(
        "{hex}, started, {}, {peer_url}, {}, true",
        cluster.name(learner),
        cluster.endpoint(learner)
    );
    for via in 0..3 {
        wait_for_member_line(&cluster, via, &started).await;
    }

    // What a client of the learner sees.
    for args in [
        &["put", "k", "v"][..],
        &["get", "before-learner"],
        &["member", "list"],
    ] {
        assert_eq!(
            refusal(&cluster, learner, leader, args),
            LEARNER_REFUSES_RPC,
            "etcdctl {args:?} on the learner"
        );
    }
    wait_for_value(&cluster, learner, Read::Serializable, "before-learner", "1").await;
    let status = table_cells(&cluster.etcdctl_ok(learner, &["endpoint", "status", "-w", "table"]));
    assert_eq!(status[0], ENDPOINT_STATUS_HEADER, "endpoint status header");
    assert_eq!(
        status.len(),
        2,
        "endpoint status of one endpoint: {status:?}"
    );
    let row = &status[1];
    assert_eq!(
        [row[0].as_str(), &row[1], &row[4], &row[5]],
        [cluster.endpoint(learner).as_str(), &hex, "false", "true"],
        "endpoint, ID, IS LEADER, IS LEARNER of the learner"
    );

    // Promoted through a follower (etcd forwards the request to the leader).
    assert_eq!(
        cluster.promote(follower, learner),
        changed(id, "promoted in cluster", cluster_id)
    );
    let voter = format!(
        "{hex}, started, {}, {peer_url}, {}, false",
        cluster.name(learner),
        cluster.endpoint(learner)
    );
    for via in 0..4 {
        wait_for_member_line(&cluster, via, &voter).await;
    }
    assert_eq!(
        cluster.etcdctl_ok(learner, &["put", "promoted", "yes"]),
        "OK\n"
    );
    assert_eq!(
        cluster.etcdctl_ok(learner, &["get", "promoted"]),
        "promoted\nyes\n"
    );
    assert_eq!(
        cluster.etcdctl_ok(learner, &["get", "before-learner"]),
        "before-learner\n1\n"
    );
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    check_endpoint_status_cluster(&cluster, learner, leader).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
}

/// 2. `member update <id> --peer-urls=<new>` moves a follower's peer URL from its proxy port to
/// the port it really listens on: every member lists the new URL, and with the old URL made
/// useless (the proxy forwards it nowhere and its open connections are cut) the follower still
/// reaches the leader and serves writes, so the members dial the new URL. Then the URL is moved
/// back and the cluster converges. (The dead old URL is what catches a transport that ignores the
/// update in oxetcd, whose leader dials each follower for its raft stream; etcd 3.4 would get by
/// without the update too, over connections the moved member dials itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_update_moves_peer_url_and_back() {
    let _serial = exclusive().await;
    let (mut cluster, leader) = start_published().await;
    let moved = (leader + 1) % 3;
    let cluster_id = cluster_id(&cluster, leader).await;
    let moved_id = cluster.member_id(moved).await;
    let hex = format!("{moved_id:x}");
    let proxied = cluster.peer_url(moved);
    let direct = cluster.listen_peer_url(moved);
    let line = |url: &str| {
        format!(
            "{hex}, started, {}, {url}, {}, false",
            cluster.name(moved),
            cluster.endpoint(moved)
        )
    };
    let updated = changed(moved_id, "updated in cluster", cluster_id);

    let flag = format!("--peer-urls={direct}");
    assert_eq!(
        cluster.etcdctl_ok(leader, &["member", "update", &hex, &flag]),
        updated
    );
    for via in 0..3 {
        wait_for_member_line(&cluster, via, &line(&direct)).await;
    }
    // The old URL leads nowhere now: new connections to it fail, open ones are cut (the Reset
    // closes every proxied connection of the moved member, which then redials its peers).
    cluster.proxy().set_upstream(moved, free_port());
    cluster.partition_with(&[moved], Fault::Reset);
    cluster.heal();
    cluster.etcdctl_ok(leader, &["put", "after-update", "1"]);
    // The moved member's own connections were cut too; once it answers a linearizable read it
    // reaches the leader again and the leader reaches it.
    wait_for_value(&cluster, moved, Read::Linearizable, "after-update", "1").await;
    assert_eq!(
        cluster.etcdctl_ok(moved, &["put", "through-moved", "1"]),
        "OK\n"
    );

    // And back, asked of the moved member itself.
    cluster
        .proxy()
        .set_upstream(moved, cluster.listen_peer_port(moved));
    let flag = format!("--peer-urls={proxied}");
    assert_eq!(
        cluster.etcdctl_ok(moved, &["member", "update", &hex, &flag]),
        updated
    );
    for via in 0..3 {
        wait_for_member_line(&cluster, via, &line(&proxied)).await;
    }
    cluster.etcdctl_ok(leader, &["put", "after-update-back", "1"]);
    wait_for_value(
        &cluster,
        moved,
        Read::Linearizable,
        "after-update-back",
        "1",
    )
    .await;
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    check_endpoint_status_cluster(&cluster, moved, leader).await;
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
}

/// 3a. Refused changes on a healthy cluster, asked of the leader and of a follower: unknown IDs,
/// peer URLs another member has, promoting a voter, a second learner, and malformed peer URLs
/// (etcdctl rejects those itself; the server's own check is reached with etcd-client). The member
/// list is unchanged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_membership_changes() {
    let _serial = exclusive().await;
    let (mut cluster, leader) = start_published().await;
    let follower = (leader + 1) % 3;
    let cluster_id = cluster_id(&cluster, leader).await;
    let members_before = cluster.etcdctl_ok(leader, &["member", "list"]);
    let unknown = "1234";
    assert!(
        !members_before.contains(&format!("{unknown}, ")),
        "{unknown} should not be a member ID:\n{members_before}"
    );
    let voter_hex = format!("{:x}", cluster.member_id(follower).await);
    let fresh_url = || format!("http://127.0.0.1:{}", free_port());

    for via in [leader, follower] {
        let on = role(&cluster, via, leader);
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "remove", unknown]),
            MEMBER_NOT_FOUND,
            "remove an unknown ID via {on}"
        );
        let flag = format!("--peer-urls={}", fresh_url());
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "update", unknown, &flag]),
            MEMBER_NOT_FOUND,
            "update an unknown ID via {on}"
        );
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "promote", unknown]),
            MEMBER_NOT_FOUND,
            "promote an unknown ID via {on}"
        );
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "promote", &voter_hex]),
            NOT_A_LEARNER,
            "promote a voter via {on}"
        );
        let taken = format!("--peer-urls={}", cluster.peer_url((via + 2) % 3));
        assert_eq!(
            cluster.reconfigure_refused(via, &["member", "add", "dup", &taken]),
            PEER_URL_EXISTS,
            "add a voter with a taken peer URL via {on}"
        );
        assert_eq!(
            cluster.reconfigure_refused(via, &["member", "add", "dup", "--learner", &taken]),
            PEER_URL_EXISTS,
            "add a learner with a taken peer URL via {on}"
        );
        // One taken URL among fresh ones is enough.
        let mixed = format!("--peer-urls={},{}", fresh_url(), cluster.peer_url(via));
        assert_eq!(
            cluster.reconfigure_refused(via, &["member", "add", "dup", &mixed]),
            PEER_URL_EXISTS,
            "add a member with one taken peer URL among two via {on}"
        );
        assert_eq!(
            refusal(
                &cluster,
                via,
                leader,
                &["member", "update", &voter_hex, &taken]
            ),
            PEER_URL_EXISTS,
            "update a member to another member's peer URL via {on}"
        );
    }

    // etcd 3.4 allows one learner (`--max-learners` came with 3.5).
    let (learner, learner_id) = cluster.add_member_unstarted(true);
    for via in [leader, follower] {
        let flag = format!("--peer-urls={}", fresh_url());
        assert_eq!(
            cluster.reconfigure_refused(via, &["member", "add", "second", "--learner", &flag]),
            TOO_MANY_LEARNERS,
            "add a second learner via {}",
            cluster.name(via)
        );
    }
    assert_eq!(
        cluster.remove_stopped_member(learner),
        changed(learner_id, "removed from cluster", cluster_id)
    );

    // etcdctl checks peer URLs itself (Go's url.Parse, then etcd's rules) and never sends these.
    for (url, error) in [
        (
            "127.0.0.1:2380",
            r#"Error: parse "127.0.0.1:2380": first path segment in URL cannot contain colon"#,
        ),
        (
            "http://127.0.0.1",
            r#"Error: URL address does not have the form "host:port": http://127.0.0.1"#,
        ),
        (
            "ftp://127.0.0.1:2380",
            "Error: URL scheme must be http, https, unix, or unixs: ftp://127.0.0.1:2380",
        ),
        (
            "http://127.0.0.1:2380/raft",
            "Error: URL must not contain a path: http://127.0.0.1:2380/raft",
        ),
    ] {
        let flag = format!("--peer-urls={url}");
        assert_eq!(
            refusal(&cluster, follower, leader, &["member", "add", "bad", &flag]),
            format!("{error}\n"),
            "etcdctl member add --peer-urls={url}"
        );
    }
    // The server's own check, reached through etcd-client's cluster client (which sends URLs
    // unchanged): the same rules, one answer. Added as learners, so a wrongly accepted URL
    // cannot cost the cluster its quorum.
    let mut client = cluster.client(follower).await.cluster_client();
    for url in [
        "127.0.0.1:2380",
        "http://127.0.0.1",
        "http://127.0.0.1:2380/",
        "http://127.0.0.1:2380/raft",
        "ftp://127.0.0.1:2380",
        "http//127.0.0.1:2380",
        "",
    ] {
        let options = MemberAddOptions::new().with_is_learner();
        match client
            .member_add(vec![url.to_string()], Some(options))
            .await
        {
            Err(err) => assert_eq!(
                error_text(&err),
                BAD_URLS,
                "MemberAdd with peer URL {url:?}"
            ),
            Ok(added) => cluster.fail(&format!(
                "MemberAdd with peer URL {url:?} should be refused, got {added:?}"
            )),
        }
    }
    assert_eq!(
        cluster.etcdctl_ok(leader, &["member", "list"]),
        members_before,
        "member list after the refused changes"
    );
    // An explicit default port is a valid peer URL (etcd wants `host:port`, not a non-default
    // port); accepted as a learner, then removed again.
    let learner_url = "http://127.0.0.1:80";
    let flag = format!("--peer-urls={learner_url}");
    let added = cluster.reconfigure(follower, &["member", "add", "port80", "--learner", &flag]);
    let line = added.lines().next().unwrap_or_default();
    let id = line
        .strip_prefix("Member ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| cluster.fail(&format!("member add printed {added:?}")));
    assert_eq!(
        format!("{line}\n"),
        changed(id, "added to cluster", cluster_id),
        "member add --peer-urls={learner_url}"
    );
    wait_for_member_line(
        &cluster,
        leader,
        &format!("{id:x}, unstarted, , {learner_url}, , true"),
    )
    .await;
    assert_eq!(
        cluster.reconfigure(leader, &["member", "remove", &format!("{id:x}")]),
        changed(id, "removed from cluster", cluster_id)
    );
    assert_eq!(
        cluster.etcdctl_ok(leader, &["member", "list"]),
        members_before,
        "member list at the end"
    );
}

/// 3b. `--strict-reconfig-check` (on by default) with one of three members stopped: removing a
/// running voter (the other one or the member asked), adding a voter and adding a learner are
/// refused by either running member with `unhealthy cluster`; the stopped member itself may be
/// removed. Then, with a voter declared but never started, removing a running voter is refused
/// with `not enough started members`, and removing the unstarted one is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfig_check_protects_the_quorum() {
    let _serial = exclusive().await;
    let (mut cluster, leader) = start_published().await;
    let follower = (leader + 1) % 3;
    let down = (leader + 2) % 3;
    let cluster_id = cluster_id(&cluster, leader).await;
    let running = [leader, follower];
    // A change that goes through shows the cluster counts as healthy before the fault (etcd
    // wants every voter connected for 5 s).
    let (learner, _) = cluster.add_member_unstarted(true);
    cluster.remove_stopped_member(learner);

    cluster.stop(down);
    // Wait until each running member has noticed: a side-effect-free probe (its peer URL is
    // taken, so if the health check passes the change is refused for that instead).
    for via in running {
        wait_for_unhealthy(&cluster, via, leader).await;
    }
    for via in running {
        let on = role(&cluster, via, leader);
        for target in running {
            let hex = format!("{:x}", cluster.member_id(target).await);
            assert_eq!(
                refusal(&cluster, via, leader, &["member", "remove", &hex]),
                UNHEALTHY,
                "remove running voter {} via {on} with {} down",
                cluster.name(target),
                cluster.name(down)
            );
        }
        let flag = format!("--peer-urls=http://127.0.0.1:{}", free_port());
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "add", "voter", &flag]),
            UNHEALTHY,
            "add a voter via {on} with {} down",
            cluster.name(down)
        );
        assert_eq!(
            refusal(
                &cluster,
                via,
                leader,
                &["member", "add", "learner", "--learner", &flag]
            ),
            UNHEALTHY,
            "add a learner via {on} with {} down",
            cluster.name(down)
        );
    }
    let down_id = cluster.member_entry(leader, down).id;
    assert_eq!(
        cluster.remove_stopped_member(down),
        changed(down_id, "removed from cluster", cluster_id)
    );
    for via in running {
        let list = cluster.etcdctl_ok(via, &["member", "list"]);
        assert_eq!(list.lines().count(), 2, "member list:\n{list}");
    }
    assert_eq!(cluster.etcdctl_ok(follower, &["put", "k", "v"]), "OK\n");

    // A voter declared and never started counts towards the quorum but not as started.
    let (unstarted, unstarted_id) = cluster.add_member_unstarted(false);
    for via in running {
        let other = if via == leader { follower } else { leader };
        let hex = format!("{:x}", cluster.member_id(other).await);
        assert_eq!(
            refusal(&cluster, via, leader, &["member", "remove", &hex]),
            NOT_ENOUGH_STARTED,
            "remove {} via {} with an unstarted voter",
            cluster.name(other),
            role(&cluster, via, leader)
        );
    }
    assert_eq!(
        cluster.remove_stopped_member(unstarted),
        changed(unstarted_id, "removed from cluster", cluster_id)
    );
    assert_eq!(cluster.etcdctl_ok(leader, &["put", "k", "w"]), "OK\n");
    cluster.wait_converged(CONVERGE_TIMEOUT).await;
}

/// 4. A fresh 3-member cluster: once the members have published their names and client URLs
/// (through raft, shortly after start), `member list` (plain and `-w table`) shows all three with
/// names and URLs, in ID order, on every member, and `endpoint status --cluster -w table` lists
/// every member with exactly one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_cluster_lists_members_and_one_leader() {
    let _serial = exclusive().await;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let mut expected = Vec::new();
    for index in 0..3 {
        let id = cluster.member_id(index).await;
        expected.push((
            id,
            vec![
                format!("{id:x}"),
                "started".to_string(),
                cluster.name(index).to_string(),
                cluster.peer_url(index),
                cluster.endpoint(index),
                "false".to_string(),
            ],
        ));
    }
    expected.sort();
    let lines: Vec<String> = expected.iter().map(|(_, cells)| cells.join(", ")).collect();
    wait_for_published(&cluster).await;
    for via in 0..3 {
        assert_eq!(
            cluster.etcdctl_ok(via, &["member", "list"]),
            format!("{}\n", lines.join("\n")),
            "member list via {}",
            cluster.name(via)
        );
        let table = table_cells(&cluster.etcdctl_ok(via, &["member", "list", "-w", "table"]));
        let mut want = vec![MEMBER_LIST_HEADER.map(String::from).to_vec()];
        want.extend(expected.iter().map(|(_, cells)| cells.clone()));
        assert_eq!(
            table,
            want,
            "member list -w table via {}",
            cluster.name(via)
        );
        check_endpoint_status_cluster(&cluster, via, leader).await;
    }
}

/// `endpoint status --cluster -w table` via member `via`: one row per member of the member list
/// (its client URL and ID), exactly one leader (`leader`), no learner, no errors, one version.
async fn check_endpoint_status_cluster(cluster: &Cluster, via: usize, leader: usize) {
    let table =
        table_cells(&cluster.etcdctl_ok(via, &["endpoint", "status", "--cluster", "-w", "table"]));
    assert_eq!(table[0], ENDPOINT_STATUS_HEADER, "endpoint status header");
    let mut rows: Vec<(String, String)> = table[1..]
        .iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    rows.sort();
    let mut want = Vec::new();
    for index in cluster.members() {
        want.push((
            cluster.endpoint(index),
            format!("{:x}", cluster.member_id(index).await),
        ));
    }
    want.sort();
    assert_eq!(rows, want, "endpoint status --cluster rows:\n{table:?}");
    let leaders: Vec<&String> = table[1..]
        .iter()
        .filter(|row| row[4] == "true")
        .map(|row| &row[1])
        .collect();
    let leader_hex = format!("{:x}", cluster.member_id(leader).await);
    assert_eq!(leaders, [&leader_hex], "IS LEADER column:\n{table:?}");
    for row in &table[1..] {
        assert_eq!(row[5], "false", "IS LEARNER of {row:?}");
        assert_eq!(row[9], "", "ERRORS of {row:?}");
        assert_eq!(row[2], table[1][2], "VERSION of {row:?}");
    }
}

/// etcdctl's report of a membership change: `Member <id> <what> <cluster id>`, both IDs in hex
/// right-aligned to 16 characters (Go's `%16x`), unlike `member list`, which does not pad.
fn changed(id: u64, what: &str, cluster_id: u64) -> String {
    format!("Member {id:16x} {what} {cluster_id:16x}\n")
}

/// Runs etcdctl on member `via` and returns its refusal (stderr without the client library's log
/// lines); fails the test, naming the member and its role, if the command succeeds.
fn refusal(cluster: &Cluster, via: usize, leader: usize, args: &[&str]) -> String {
    let output = cluster.etcdctl(via, args);
    if output.status.success() {
        cluster.fail(&format!(
            "etcdctl {args:?} via {} should be refused but succeeded:\n{}",
            role(cluster, via, leader),
            common::stdout_text(&output)
        ));
    }
    common::without_client_logs(&common::stderr_text(&output))
}

/// `m2 (leader)` or `m2 (follower)`, for messages.
fn role(cluster: &Cluster, index: usize, leader: usize) -> String {
    let role = if index == leader {
        "leader"
    } else {
        "follower"
    };
    format!("{} ({role})", cluster.name(index))
}

/// The cluster ID from member `index`'s Status header.
async fn cluster_id(cluster: &Cluster, index: usize) -> u64 {
    match cluster.status(index).await {
        Ok(status) => status
            .header()
            .map(|header| header.cluster_id())
            .unwrap_or_else(|| cluster.fail("status response without a header")),
        Err(err) => cluster.fail(&format!("status of member {index}: {err}")),
    }
}

/// Waits until every member lists every member as started, with its name and client URL.
/// Members publish those through raft once they run; etcd serves clients only after its own are
/// committed, so a healthy etcd member has published, while oxetcd may answer earlier.
/// A 3-member cluster with a leader, once every member lists every member as started.
async fn start_published() -> (Cluster, usize) {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    wait_for_published(&cluster).await;
    (cluster, leader)
}

async fn wait_for_published(cluster: &Cluster) {
    let mut lines = Vec::new();
    for index in cluster.members() {
        lines.push(format!(
            "{:x}, started, {}, {}, {}, false",
            cluster.member_id(index).await,
            cluster.name(index),
            cluster.peer_url(index),
            cluster.endpoint(index)
        ));
    }
    for via in cluster.members() {
        for line in &lines {
            wait_for_member_line(cluster, via, line).await;
        }
    }
}

/// Waits until `etcdctl member list` on member `via` prints `line`.
async fn wait_for_member_line(cluster: &Cluster, via: usize, line: &str) {
    let deadline = Instant::now() + MEMBER_LIST_TIMEOUT;
    loop {
        let output = cluster.etcdctl(via, &["member", "list"]);
        let stdout = common::stdout_text(&output);
        if output.status.success() && stdout.lines().any(|shown| shown == line) {
            return;
        }
        if Instant::now() >= deadline {
            cluster.fail(&format!(
                "member list on {} did not show {line:?} within {MEMBER_LIST_TIMEOUT:?}; last \
                 answer ({}):\n{stdout}{}",
                cluster.name(via),
                output.status,
                common::without_client_logs(&common::stderr_text(&output))
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How a member is asked for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// From the member's own store, as a learner serves reads.
    Serializable,
    /// Through the leader's read index: the member reaches the leader and the leader it.
    Linearizable,
}

/// Waits until member `index` answers `key` = `value` to a `read`, retrying errors (a request
/// lost while a peer connection is re-established is answered only at its timeout).
async fn wait_for_value(cluster: &Cluster, index: usize, read: Read, key: &str, value: &str) {
    let mut client = cluster.client_with(index, Duration::from_secs(2)).await;
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    loop {
        let options = match read {
            Read::Serializable => Some(GetOptions::new().with_serializable()),
            Read::Linearizable => None,
        };
        let seen = match client.get(key, options).await {
            Ok(response) => response
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            Err(err) => Some(format!("error: {err}")),
        };
        if seen.as_deref() == Some(value) {
            return;
        }
        if Instant::now() >= deadline {
            cluster.fail(&format!(
                "{} did not answer a {read:?} read of {key} with {value} within \
                 {REPLICATION_TIMEOUT:?}; last: {seen:?}",
                cluster.name(index)
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until member `via` refuses a change with `unhealthy cluster` (a member is down). The
/// probe adds a learner with another member's peer URL, so until the member notices, the answer
/// is `Peer URLs already exists` and nothing changes; anything else fails the test.
async fn wait_for_unhealthy(cluster: &Cluster, via: usize, leader: usize) {
    let other = cluster
        .members()
        .into_iter()
        .find(|&index| index != via)
        .expect("a cluster of three has another member");
    let flag = format!("--peer-urls={}", cluster.peer_url(other));
    let args = ["member", "add", "probe", "--learner", &flag];
    let deadline = Instant::now() + RECONFIGURE_TIMEOUT;
    loop {
        let answer = refusal(cluster, via, leader, &args);
        if answer == UNHEALTHY {
            return;
        }
        if answer != PEER_URL_EXISTS || Instant::now() >= deadline {
            cluster.fail(&format!(
                "{} should refuse changes as {UNHEALTHY:?} with a member down; it answered \
                 {answer:?}",
                role(cluster, via, leader)
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
