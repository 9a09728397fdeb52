//! Black-box multi-member fixture: a 3- or 5-member cluster of `oxetcd` (or real etcd, via
//! `OXETCD_TEST_BIN`) on loopback, with every peer connection routed through a fault-injecting
//! proxy, process faults (SIGKILL, SIGTERM, restart), membership changes, a steady write load that
//! records acknowledged writes, and convergence checks (same HashKV at the same revision).
//!
//! Network scheme. Member `x` listens for peers on its real port `L_x`
//! (`--listen-peer-urls http://127.0.0.1:L_x`) but advertises a proxy port `P_x`
//! (`--initial-advertise-peer-urls http://127.0.0.1:P_x`, and `mx=http://127.0.0.1:P_x` in
//! `--initial-cluster`), so every connection any member opens to `x` passes through `x`'s proxy.
//! The server under test must therefore accept an advertised peer URL that differs from the one it
//! listens on, as etcd does (and as any member behind NAT needs).
//!
//! Why not one proxy per ordered pair: etcd requires a member's advertised peer URLs to equal its
//! own `--initial-cluster` entry, and member and cluster IDs are derived from the peer URLs in
//! `--initial-cluster`, so every member must be given the same list. Tried with etcd 3.4: giving
//! one member a different URL for a peer makes it compute another cluster ID, and its peers
//! ignore it ("cluster ID mismatch"). After bootstrap the URLs come from the replicated member
//! list, identical everywhere. So the proxy tells dialers apart itself: the dialing socket's inode
//! (from `/proc/net/tcp`) is found among the member processes' file descriptors (see
//! common/proxy.rs). That gives faults per ordered pair of members with plain loopback TCP
//! and any peer protocol (etcd's HTTP/1.1 rafthttp, oxetcd's gRPC). Rejected alternatives:
//! iptables (not installed here), network namespaces with veth pairs (need root, an address per
//! member that the test client must also reach, and host state to clean up when a test dies).
//! Partitioning a set `S` cuts every link between `S` and the rest in both directions, either
//! blackholing (bytes held, not refused: members notice only through their own timeouts, as in a
//! real partition) or resetting (connections closed and refused, like a rejecting firewall).
//! Client traffic (tests, etcdctl, the write load) goes straight to the members' client ports.
//!
//! Timing: `--heartbeat-interval 50 --election-timeout 500` (etcd requires the election timeout
//! to be at least 5 heartbeats), so a failover takes well under a second with etcd 3.4 here.
//! Each member also gets `--initial-cluster-token` (unique per cluster) and
//! `--initial-cluster-state new` (`existing` for a member added later).
//!
//! Environment: as common/mod.rs (`OXETCD_TEST_BIN`, `OXETCD_TEST_ETCDCTL`,
//! `OXETCD_TEST_KEEP_DIR`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, StatusResponse};

use super::process::{POLL_INTERVAL, Process, READY_TIMEOUT, SPAWN_ATTEMPTS};
use super::proxy::{Fault, PeerProxy};
use super::{ETCDCTL_TIMEOUT, free_port, run_etcdctl, server_bin, without_client_logs};

pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// Longest acceptable time from losing a leader to having a new one (10 election timeouts).
pub const FAILOVER_DEADLINE: Duration = Duration::from_millis(10 * ELECTION_TIMEOUT_MS);
/// How long all members of a new cluster get to become healthy.
pub const CLUSTER_READY_TIMEOUT: Duration = READY_TIMEOUT;
/// How long one restarted or added member gets to become healthy.
pub const MEMBER_READY_TIMEOUT: Duration = READY_TIMEOUT;
/// How long members get to reach the same revision once writes stop.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one Maintenance Status / HashKV call (both are answered locally by a member).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a membership change may be refused as premature before the test fails.
pub const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(30);
const RECONFIGURE_RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// etcd's refusals of a membership change that go away once the cluster has been healthy long
/// enough (`--strict-reconfig-check`).
const RECONFIGURE_RETRYABLE: [&str; 2] = [
    "etcdserver: unhealthy cluster",
    "etcdserver: re-configuration failed due to not enough started members",
];
/// etcd's refusal to promote a learner that has not caught up with the leader yet.
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

/// Serialises the cluster tests of one test binary: several 3- and 5-member clusters at once on a
/// 2-core machine would turn scheduling delays into spurious elections and skew failover times.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Per-cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub members: usize,
    /// `--snapshot-count`, when set.
    pub snapshot_count: Option<u64>,
    /// Flags appended to every member's command line.
    pub extra_args: Vec<String>,
    /// Environment variables every member starts with (e.g. `FAILPOINTS`).
    pub env: Vec<(&'static str, String)>,
    /// Each member logs to `oxetcd.log` in its directory (`--log-outputs`), read with
    /// [`Cluster::log_file`], instead of stderr.
    pub log_file: bool,
    /// The server binary members start with (default [`server_bin`]); see
    /// [`Cluster::set_binary`].
    pub binary: Option<PathBuf>,
}

impl ClusterOptions {
    pub fn new(members: usize) -> ClusterOptions {
        ClusterOptions {
            members,
            snapshot_count: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            log_file: false,
            binary: None,
        }
    }

    pub fn snapshot_count(mut self, entries: u64) -> ClusterOptions {
        self.snapshot_count = Some(entries);
        self
    }

    pub fn arg(mut self, arg: &str) -> ClusterOptions {
        self.extra_args.push(arg.to_string());
        self
    }

    // Used by panic_policy, compiled with `--features failpoints` only.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub fn env(mut self, name: &'static str, value: &str) -> ClusterOptions {
        self.env.push((name, value.to_string()));
        self
    }

    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub fn log_file(mut self) -> ClusterOptions {
        self.log_file = true;
        self
    }
}

/// One member slot. Removed members keep their slot (indices never shift) but are not running.
struct Member {
    name: String,
    dir: PathBuf,
    client_port: u16,
    listen_peer_port: u16,
    advertise_peer_port: u16,
    initial_cluster: String,
    initial_cluster_state: &'static str,
    process: Process,
    removed: bool,
}

impl Member {
    /// Member `index`'s slot in `cluster_dir/m<index + 1>`; not started.
    fn new(
        cluster_dir: &Path,
        index: usize,
        client_port: u16,
        (listen_peer_port, advertise_peer_port): (u16, u16),
        initial_cluster: String,
        initial_cluster_state: &'static str,
        binary: &Path,
    ) -> Member {
        let name = format!("m{}", index + 1);
        let dir = cluster_dir.join(&name);
        let process = Process::new(
            &format!("member {index}"),
            binary.to_path_buf(),
            dir.join("server.log"),
        );
        Member {
            name,
            dir,
            client_port,
            listen_peer_port,
            advertise_peer_port,
            initial_cluster,
            initial_cluster_state,
            process,
            removed: false,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// A running cluster in its own temp dir. Dropping it SIGKILLs every member and closes the proxy.
pub struct Cluster {
    dir: tempfile::TempDir,
    token: String,
    options: ClusterOptions,
    members: Vec<Member>,
    proxy: PeerProxy,
    log_shown: AtomicBool,
}

/// The outcome of [`Cluster::wait_converged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converged {
    pub revision: i64,
    pub hash: u32,
    pub compact_revision: i64,
}

/// One member as `etcdctl member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub started: bool,
    pub name: String,
    pub peer_urls: String,
    pub client_urls: String,
    pub learner: bool,
}

impl Cluster {
    /// Starts `members` members with the default flags and waits until all are healthy.
    pub fn start(members: usize) -> Cluster {
        Cluster::start_with(ClusterOptions::new(members))
    }

    pub fn start_with(options: ClusterOptions) -> Cluster {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        assert!(options.members >= 1, "a cluster has at least one member");
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-cluster-")
            .tempdir()
            .expect("creating a temp dir should work");
        let token = format!(
            "oxetcd-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = Cluster {
            dir,
            token,
            options,
            members: Vec::new(),
            proxy: PeerProxy::new(),
            log_shown: AtomicBool::new(false),
        };
        for index in 0..cluster.options.members {
            let listen_peer_port = free_port();
            let advertise_peer_port = cluster.proxy.add_member(listen_peer_port);
            cluster.members.push(Member::new(
                cluster.dir.path(),
                index,
                free_port(),
                (listen_peer_port, advertise_peer_port),
                String::new(),
                "new",
                &cluster.binary(),
            ));
        }
        let initial_cluster = cluster
            .members
            .iter()
            .map(|member| {
                format!(
                    "{}=http://127.0.0.1:{}",
                    member.name, member.advertise_peer_port
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut cluster.members {
            member.initial_cluster = initial_cluster.clone();
        }
        for attempt in 1..=SPAWN_ATTEMPTS {
            for index in 0..cluster.members.len() {
                cluster.spawn(index);
            }
            let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
            let outcome = (0..cluster.members.len())
                .try_for_each(|index| cluster.wait_healthy_until(index, deadline));
            match outcome {
                Ok(()) => return cluster,
                Err(reason) if attempt < SPAWN_ATTEMPTS && cluster.port_clash() => {
                    eprintln!("cluster: attempt {attempt} failed ({reason}); retrying new ports");
                    for index in 0..cluster.members.len() {
                        cluster.kill_and_reap(index);
                        let member = &mut cluster.members[index];
                        let _ = std::fs::remove_dir_all(member.data_dir());
                        member.client_port = free_port();
                        member.listen_peer_port = free_port();
                        let port = member.listen_peer_port;
                        cluster.proxy.set_upstream(index, port);
                    }
                }
                Err(reason) => cluster.fail(&reason),
            }
        }
        unreachable!("the last attempt either returns or fails");
    }

    /// The binary new members start with.
    fn binary(&self) -> PathBuf {
        self.options.binary.clone().unwrap_or_else(server_bin)
    }

    /// Member `index` (stopped) runs `binary` from its next start on, with the same flags and
    /// data dir: a binary upgrade. Its log continues in the same file.
    pub fn set_binary(&mut self, index: usize, binary: &Path) {
        let member = &mut self.members[index];
        assert!(
            !member.process.is_spawned(),
            "member {index} must be stopped before its binary is replaced"
        );
        member.process = Process::new(
            &format!("member {index}"),
            binary.to_path_buf(),
            member.dir.join("server.log"),
        );
    }

    /// Number of member slots, including removed members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Indices of members not removed from the cluster (running or not).
    pub fn members(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&index| !self.members[index].removed)
            .collect()
    }

    /// Indices of members whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&index| self.is_running(index))
            .collect()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.members[index].name
    }

    /// `http://127.0.0.1:C`, member `index`'s client URL.
    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].endpoint()
    }

    /// Client URLs of all members not removed.
    pub fn endpoints(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .map(|index| self.endpoint(index))
            .collect()
    }

    /// The advertised peer URL (the member's proxy port).
    pub fn peer_url(&self, index: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.members[index].advertise_peer_port
        )
    }

    /// The URL member `index` really listens on for peers (bypassing the proxy).
    pub fn listen_peer_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[index].listen_peer_port)
    }

    pub fn listen_peer_port(&self, index: usize) -> u16 {
        self.members[index].listen_peer_port
    }

    pub fn proxy(&self) -> &PeerProxy {
        &self.proxy
    }

    /// A client connected to member `index` only (connection is lazy: a down member gives errors
    /// on use, not here).
    pub async fn client(&self, index: usize) -> Client {
        self.client_with(index, Duration::from_secs(30)).await
    }

    /// A client for member `index` with the given per-request timeout.
    pub async fn client_with(&self, index: usize, request_timeout: Duration) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(request_timeout);
        Client::connect([self.endpoint(index)], Some(options))
            .await
            .unwrap_or_else(|err| self.fail(&format!("etcd-client connect failed: {err}")))
    }

    /// Runs etcdctl against member `index`.
    pub fn etcdctl(&self, index: usize, args: &[&str]) -> Output {
        run_etcdctl(&self.endpoint(index), args, None, ETCDCTL_TIMEOUT)
    }

    /// Runs etcdctl against member `index`, asserts success, returns stdout.
    pub fn etcdctl_ok(&self, index: usize, args: &[&str]) -> String {
        let output = self.etcdctl(index, args);
        self.expect_success(args, &output)
    }

    /// Runs etcdctl with `--endpoints` listing every running member, asserts success, returns
    /// stdout (e.g. `endpoint status` or `endpoint hashkv`).
    pub fn etcdctl_all_ok(&mut self, args: &[&str]) -> String {
        let endpoints = self
            .running()
            .into_iter()
            .map(|index| self.endpoint(index))
            .collect::<Vec<_>>()
            .join(",");
        let output = run_etcdctl(&endpoints, args, None, ETCDCTL_TIMEOUT);
        self.expect_success(args, &output)
    }

    fn expect_success(&self, args: &[&str], output: &Output) -> String {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            self.fail(&format!(
                "etcdctl {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
                output.status,
                without_client_logs(&String::from_utf8_lossy(&output.stderr))
            ));
        }
        stdout
    }

    /// `etcdctl member list` as seen by member `index`.
    pub fn member_list(&self, index: usize) -> Vec<MemberInfo> {
        let stdout = self.etcdctl_ok(index, &["member", "list"]);
        stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let fields: Vec<&str> = line.split(", ").collect();
                assert_eq!(fields.len(), 6, "member list line {line:?}");
                MemberInfo {
                    id: u64::from_str_radix(fields[0], 16)
                        .unwrap_or_else(|_| panic!("member id in {line:?} is hex")),
                    started: fields[1] == "started",
                    name: fields[2].to_string(),
                    peer_urls: fields[3].to_string(),
                    client_urls: fields[4].to_string(),
                    learner: fields[5] == "true",
                }
            })
            .collect()
    }

    /// Sends `signal` to member `index` (e.g. SIGSTOP and SIGCONT to pause it).
    pub fn signal(&self, index: usize, signal: rustix::process::Signal) {
        self.members[index].process.signal(signal);
    }

    /// SIGKILL member `index` and reap it; its data dir stays for [`Cluster::restart`].
    pub fn kill9(&mut self, index: usize) {
        self.members[index].process.kill9();
        self.proxy.set_pid(index, None);
    }

    /// SIGTERM member `index` and wait for it to exit.
    pub fn stop(&mut self, index: usize) -> ExitStatus {
        let stopped = self.members[index].process.stop();
        self.proxy.set_pid(index, None);
        stopped.unwrap_or_else(|reason| self.fail(&reason))
    }

    /// Starts member `index` again on its ports and data dir (no flags changed) without waiting.
    pub fn start_member(&mut self, index: usize) {
        assert!(
            !self.members[index].removed,
            "member {index} was removed from the cluster"
        );
        self.spawn(index);
    }

    /// Starts member `index` again (SIGTERM first if running) and waits until it is healthy.
    pub fn restart(&mut self, index: usize) {
        if self.members[index].process.is_spawned() {
            self.stop(index);
        }
        self.start_member(index);
        if let Err(reason) = self.wait_healthy(index, MEMBER_READY_TIMEOUT) {
            self.fail(&reason);
        }
    }

    /// Waits until member `index` answers `GET /health` with `"health":"true"`.
    pub fn wait_healthy(&mut self, index: usize, timeout: Duration) -> Result<(), String> {
        self.wait_healthy_until(index, Instant::now() + timeout)
    }

    /// Members started from now on start without the environment variables of
    /// [`ClusterOptions::env`] (a failpoint that fired once is not armed again).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub fn clear_env(&mut self) {
        self.options.env.clear();
    }

    /// Member `index`'s data directory (the `--data-dir` it runs with).
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.members[index].data_dir()
    }

    /// Waits up to `timeout` for member `index` to exit by itself (as one refusing to start
    /// does) and returns how it exited.
    pub fn wait_exit(&mut self, index: usize, timeout: Duration) -> Result<ExitStatus, String> {
        let exited = self.members[index].process.wait_exit(timeout);
        if exited.is_ok() {
            self.proxy.set_pid(index, None);
        }
        exited
    }

    /// Member `index`'s log file (with [`ClusterOptions::log_file`]).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub fn log_file(&self, index: usize) -> String {
        std::fs::read_to_string(self.members[index].dir.join("oxetcd.log")).unwrap_or_default()
    }

    /// Everything member `index` has logged so far.
    pub fn log(&self, index: usize) -> String {
        self.members[index].process.log()
    }

    pub fn is_running(&mut self, index: usize) -> bool {
        self.members[index].process.is_running()
    }

    /// Like [`Cluster::partition`] with an explicit fault kind.
    pub fn partition_with(&self, group: &[usize], fault: Fault) {
        self.proxy.partition(group, fault);
    }

    /// Removes every network fault.
    pub fn heal(&self) {
        self.proxy.heal();
    }

    /// Maintenance Status of member `index`, bounded by [`STATUS_TIMEOUT`].
    pub async fn status(&self, index: usize) -> Result<StatusResponse, String> {
        let mut client = self.client_with(index, STATUS_TIMEOUT).await;
        match tokio::time::timeout(STATUS_TIMEOUT, client.status()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("status timed out after {STATUS_TIMEOUT:?}")),
        }
    }

    /// The member ID of member `index` (from its Status header).
    pub async fn member_id(&self, index: usize) -> u64 {
        match self.status(index).await {
            Ok(status) => status
                .header()
                .map(|header| header.member_id())
                .unwrap_or_else(|| self.fail("status response without a header")),
            Err(err) => self.fail(&format!("status of member {index}: {err}")),
        }
    }

    /// One look: the member among `among` that is leader with a quorum of the cluster (counted
    /// over all members not removed) agreeing, in the same term, among `among`.
    pub async fn leader_among(&self, among: &[usize]) -> Option<usize> {
        let quorum = self.members().len() / 2 + 1;
        let mut views = Vec::new();
        for &index in among {
            if let Ok(status) = self.status(index).await {
                let id = status.header().map(|header| header.member_id());
                views.push((index, id, status.leader(), status.raft_term()));
            }
        }
        views.iter().find_map(|&(index, id, leader, term)| {
            let id = id?;
            let agreeing = views
                .iter()
                .filter(|(_, _, other_leader, other_term)| {
                    *other_leader == id && *other_term == term
                })
                .count();
            (leader == id && agreeing >= quorum).then_some(index)
        })
    }

    /// Waits for a leader among the running members; fails the test after `timeout`.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> usize {
        let running = self.running();
        self.wait_for_leader_among(&running, timeout).await
    }

    /// Waits for a leader among `among` (see [`Cluster::leader_among`]); fails after `timeout`.
    pub async fn wait_for_leader_among(&self, among: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader_among(among).await {
                return leader;
            }
            if Instant::now() >= deadline {
                let mut views = String::new();
                for &index in among {
                    views.push_str(&format!("\n  {}: ", self.name(index)));
                    match self.status(index).await {
                        Ok(status) => views.push_str(&format!(
                            "member {:x} leader {:x} term {} errors {:?}",
                            status.header().map_or(0, |header| header.member_id()),
                            status.leader(),
                            status.raft_term(),
                            status.errors()
                        )),
                        Err(err) => views.push_str(&err),
                    }
                }
                self.fail(&format!(
                    "no leader among {among:?} within {timeout:?}:{views}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every member in `among` reports no leader in its Status (as a member cut off
    /// from a quorum does after an election timeout or two).
    pub async fn wait_for_no_leader(&self, among: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaderless = 0;
            for &index in among {
                if let Ok(status) = self.status(index).await
                    && status.leader() == 0
                {
                    leaderless += 1;
                }
            }
            if leaderless == among.len() {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "members {among:?} still see a leader after {timeout:?}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every running member reports the same revision, then asserts they all report
    /// the same HashKV at that revision (and the same compact revision).
    pub async fn wait_converged(&mut self, timeout: Duration) -> Converged {
        let running = self.running();
        let deadline = Instant::now() + timeout;
        let revision = loop {
            let mut revisions = Vec::new();
            for &index in &running {
                let revision = self
                    .status(index)
                    .await
                    .ok()
                    .and_then(|status| status.header().map(|header| header.revision()));
                revisions.push(revision);
            }
            if let Some(Some(first)) = revisions.first()
                && revisions.iter().all(|revision| *revision == Some(*first))
            {
                break *first;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "members {running:?} did not reach one revision within {timeout:?}: \
                     {revisions:?}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let mut hashes = Vec::new();
        for &index in &running {
            let mut client = self.client_with(index, STATUS_TIMEOUT).await;
            let response = client.hash_kv(revision).await.unwrap_or_else(|err| {
                self.fail(&format!("hashkv {revision} on member {index}: {err}"))
            });
            hashes.push((
                index,
                response.hash(),
                response.compact_version(),
                response.header().map(|header| header.revision()),
            ));
        }
        let (_, hash, compact_revision, _) = hashes[0];
        if hashes
            .iter()
            .any(|(_, other, compact, _)| *other != hash || *compact != compact_revision)
        {
            self.fail(&format!(
                "members disagree at revision {revision}: (member, hash, compact revision, \
                 header revision) {hashes:?}"
            ));
        }
        Converged {
            revision,
            hash,
            compact_revision,
        }
    }

    /// Adds a member: `etcdctl member add` on a running member, then starts the new member with
    /// the printed `ETCD_INITIAL_CLUSTER` and `--initial-cluster-state existing`, and waits until it
    /// is healthy. Returns its index.
    pub fn add_member(&mut self) -> usize {
        let (index, _) = self.add_member_unstarted(false);
        self.spawn(index);
        if let Err(reason) = self.wait_healthy(index, MEMBER_READY_TIMEOUT) {
            self.fail(&reason);
        }
        index
    }

    /// Declares a new member with `etcdctl member add` (`--learner` when `learner`) on a running
    /// member, retrying refusals under the strict reconfiguration checks, and gives it a slot
    /// (name `m<index + 1>`, a proxied peer URL, `--initial-cluster` as printed by etcdctl,
    /// `--initial-cluster-state existing`) without starting it: [`Cluster::start_member`] does.
    /// Returns its index and the member ID etcdctl printed.
    pub fn add_member_unstarted(&mut self, learner: bool) -> (usize, u64) {
        let index = self.members.len();
        let name = format!("m{}", index + 1);
        let listen_peer_port = free_port();
        let advertise_peer_port = self.proxy.add_member(listen_peer_port);
        let peer_url = format!("http://127.0.0.1:{advertise_peer_port}");
        let via = self
            .running()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.fail("member add needs a running member"));
        let peer_urls_flag = format!("--peer-urls={peer_url}");
        let mut args = vec!["member", "add", &name, &peer_urls_flag];
        if learner {
            args.push("--learner");
        }
        let stdout = self.reconfigure(via, &args);
        let id = stdout
            .lines()
            .find_map(|line| line.strip_prefix("Member "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap_or_else(|| {
                self.fail(&format!(
                    "member add printed no \"Member <id> added\" line:\n{stdout}"
                ))
            });
        let initial_cluster = stdout
            .lines()
            .find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .map(|value| value.trim_matches('"').to_string())
            .unwrap_or_else(|| {
                self.fail(&format!(
                    "member add printed no ETCD_INITIAL_CLUSTER:\n{stdout}"
                ))
            });
        assert!(
            initial_cluster.contains(&format!("{name}={peer_url}")),
            "ETCD_INITIAL_CLUSTER {initial_cluster:?} should list the new member"
        );
        self.members.push(Member::new(
            self.dir.path(),
            index,
            free_port(),
            (listen_peer_port, advertise_peer_port),
            initial_cluster,
            "existing",
            &self.binary(),
        ));
        (index, id)
    }

    /// Promotes learner `index` with `etcdctl member promote` sent to member `via`, retrying while
    /// the server answers that the learner is not yet in sync with the leader (or refuses under
    /// the strict reconfiguration checks). Returns stdout.
    pub fn promote(&self, via: usize, index: usize) -> String {
        let id = self.member_entry(via, index).id;
        let args = ["member", "promote", &format!("{id:x}")];
        let deadline = Instant::now() + RECONFIGURE_TIMEOUT;
        loop {
            let output = self.etcdctl(via, &args);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            let stderr = without_client_logs(&String::from_utf8_lossy(&output.stderr));
            let not_yet = stderr.contains(LEARNER_NOT_READY)
                || RECONFIGURE_RETRYABLE
                    .iter()
                    .any(|reason| stderr.contains(reason));
            if !not_yet || Instant::now() >= deadline {
                self.fail(&format!(
                    "etcdctl {args:?} failed with {}\nstderr:\n{stderr}",
                    output.status
                ));
            }
            thread::sleep(RECONFIGURE_RETRY_INTERVAL);
        }
    }

    /// Removes member `index`, which is not running (stopped, or declared and never started),
    /// with `etcdctl member remove` sent to a running member (retrying refusals under the strict
    /// reconfiguration checks). Returns stdout.
    pub fn remove_stopped_member(&mut self, index: usize) -> String {
        assert!(
            !self.is_running(index),
            "remove_stopped_member: member {index} is running"
        );
        let via = self
            .running()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.fail("member remove needs a running member"));
        let id = self.member_entry(via, index).id;
        let stdout = self.reconfigure(via, &["member", "remove", &format!("{id:x}")]);
        self.members[index].removed = true;
        stdout
    }

    /// Member `index` as `etcdctl member list` on member `via` shows it, found by its advertised
    /// peer URL (a member that never started has no name yet).
    pub fn member_entry(&self, via: usize, index: usize) -> MemberInfo {
        let peer_url = self.peer_url(index);
        self.member_list(via)
            .into_iter()
            .find(|member| member.peer_urls.split(',').any(|url| url == peer_url))
            .unwrap_or_else(|| {
                self.fail(&format!(
                    "no member with peer URL {peer_url} in the member list"
                ))
            })
    }

    /// Runs etcdctl against member `index`, asserts that it fails, returns stderr without the
    /// client library's log lines.
    pub fn etcdctl_err(&self, index: usize, args: &[&str]) -> String {
        let output = self.etcdctl(index, args);
        let stderr = without_client_logs(&String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            self.fail(&format!(
                "etcdctl {args:?} should fail but succeeded\nstdout:\n{}\nstderr:\n{stderr}",
                String::from_utf8_lossy(&output.stdout)
            ));
        }
        stderr
    }

    /// Runs a membership change that must be refused for a reason other than the transient ones
    /// [`Cluster::reconfigure`] retries (those are retried here too, as etcd checks cluster
    /// health before it looks at the change itself). Returns stderr without client log lines.
    pub fn reconfigure_refused(&self, via: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + RECONFIGURE_TIMEOUT;
        loop {
            let stderr = self.etcdctl_err(via, args);
            let refused_for_now = RECONFIGURE_RETRYABLE
                .iter()
                .any(|reason| stderr.contains(reason));
            if !refused_for_now || Instant::now() >= deadline {
                return stderr;
            }
            thread::sleep(RECONFIGURE_RETRY_INTERVAL);
        }
    }

    /// Removes member `index` with `etcdctl member remove` sent to another running member, then
    /// waits for the removed member's process to exit by itself (etcd shuts a removed member
    /// down); fails the test if it is still running after `MEMBER_READY_TIMEOUT`.
    pub fn remove_member(&mut self, index: usize) -> ExitStatus {
        let via = self
            .running()
            .into_iter()
            .find(|&other| other != index)
            .unwrap_or_else(|| self.fail("member remove needs another running member"));
        let name = self.members[index].name.clone();
        let id = self
            .member_list(via)
            .into_iter()
            .find(|member| member.name == name)
            .unwrap_or_else(|| self.fail(&format!("{name} is not in the member list")))
            .id;
        self.reconfigure(via, &["member", "remove", &format!("{id:x}")]);
        self.members[index].removed = true;
        let exited = self.members[index].process.wait_exit(MEMBER_READY_TIMEOUT);
        let status = exited.unwrap_or_else(|_| {
            self.fail(&format!(
                "removed member {name} still running {MEMBER_READY_TIMEOUT:?} after removal"
            ))
        });
        self.proxy.set_pid(index, None);
        status
    }

    /// Runs a membership change with etcdctl against member `via`, retrying while the server
    /// refuses it under its strict reconfiguration checks (etcd 3.4 wants every voter connected
    /// for 5 s before it adds one: `etcdserver: unhealthy cluster`). Returns stdout.
    pub fn reconfigure(&self, via: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + RECONFIGURE_TIMEOUT;
        loop {
            let output = self.etcdctl(via, args);
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            let stderr = without_client_logs(&String::from_utf8_lossy(&output.stderr));
            let refused_for_now = RECONFIGURE_RETRYABLE
                .iter()
                .any(|reason| stderr.contains(reason));
            if !refused_for_now || Instant::now() >= deadline {
                self.fail(&format!(
                    "etcdctl {args:?} failed with {}\nstderr:\n{stderr}",
                    output.status
                ));
            }
            thread::sleep(RECONFIGURE_RETRY_INTERVAL);
        }
    }

    /// Starts a write load against the given members (see [`WriteLoad`]).
    pub fn start_load(&self, members: &[usize], tasks: usize, prefix: &str) -> WriteLoad {
        WriteLoad::start(LoadOptions {
            endpoints: members.iter().map(|&index| self.endpoint(index)).collect(),
            tasks,
            prefix: prefix.to_string(),
            ..LoadOptions::default()
        })
    }

    /// Asserts that every acknowledged write of `report` is present on member `index`
    /// (linearizable read) with its value and the revision the put was acknowledged with.
    pub async fn assert_acked_present(&self, index: usize, report: &LoadReport) {
        let mut client = self.client(index).await;
        if let Err(reason) = check_acked(&mut client, report).await {
            self.fail(&format!("member {index}: {reason}"));
        }
    }

    /// Panics with `reason` and the tail of every member's log.
    pub fn fail(&self, reason: &str) -> ! {
        self.log_shown.store(true, Ordering::Relaxed);
        panic!("{reason}\n{}", self.logs_summary());
    }

    fn logs_summary(&self) -> String {
        let mut summary = format!(
            "proxy faults {:?}, stats {:?}",
            self.proxy.faults(),
            self.proxy.stats()
        );
        for (index, member) in self.members.iter().enumerate() {
            summary.push('\n');
            summary.push_str(
                &member
                    .process
                    .log_report(&format!("member {index} ({})", member.name)),
            );
        }
        summary
    }

    fn args(&self, index: usize) -> Vec<String> {
        let member = &self.members[index];
        let client = member.endpoint();
        let mut args = vec![
            "--name".to_string(),
            member.name.clone(),
            "--data-dir".to_string(),
            member.data_dir().display().to_string(),
            "--listen-client-urls".to_string(),
            client.clone(),
            "--advertise-client-urls".to_string(),
            client,
            "--listen-peer-urls".to_string(),
            format!("http://127.0.0.1:{}", member.listen_peer_port),
            "--initial-advertise-peer-urls".to_string(),
            format!("http://127.0.0.1:{}", member.advertise_peer_port),
            "--initial-cluster".to_string(),
            member.initial_cluster.clone(),
            "--initial-cluster-token".to_string(),
            self.token.clone(),
            "--initial-cluster-state".to_string(),
            member.initial_cluster_state.to_string(),
            "--heartbeat-interval".to_string(),
            HEARTBEAT_INTERVAL_MS.to_string(),
            "--election-timeout".to_string(),
            ELECTION_TIMEOUT_MS.to_string(),
        ];
        if let Some(entries) = self.options.snapshot_count {
            args.push("--snapshot-count".to_string());
            args.push(entries.to_string());
        }
        if self.options.log_file {
            args.push("--log-outputs".to_string());
            args.push(member.dir.join("oxetcd.log").display().to_string());
        }
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, index: usize) {
        let args = self.args(index);
        let member = &mut self.members[index];
        std::fs::create_dir_all(&member.dir).expect("creating a member dir should work");
        member.process.spawn_with_env(&args, &self.options.env);
        self.proxy.set_pid(index, member.process.pid());
    }

    fn wait_healthy_until(&mut self, index: usize, deadline: Instant) -> Result<(), String> {
        let member = &mut self.members[index];
        let process = &mut member.process;
        let healthy = process.wait_healthy(member.client_port, deadline);
        if !process.is_spawned() {
            self.proxy.set_pid(index, None);
        }
        healthy
    }

    fn port_clash(&self) -> bool {
        self.members
            .iter()
            .any(|member| member.process.port_clash())
    }

    fn kill_and_reap(&mut self, index: usize) {
        self.members[index].process.kill();
        self.proxy.set_pid(index, None);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill_and_reap(index);
        }
        if thread::panicking() && !self.log_shown.load(Ordering::Relaxed) {
            eprintln!("{}", self.logs_summary());
        }
        if std::env::var_os("OXETCD_TEST_KEEP_DIR").is_some_and(|value| value == "1") {
            self.dir.disable_cleanup(true);
            eprintln!("cluster fixture: kept {}", self.dir.path().display());
        }
    }
}

/// Settings of a [`WriteLoad`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Client URLs; task `t` starts on `endpoints[t % len]` and moves to the next one after an
    /// error, so the load follows the live members.
    pub endpoints: Vec<String>,
    pub tasks: usize,
    /// Keys are `{prefix}{task:03}/{seq:08}`, each written once, value `{task}-{seq}`.
    pub prefix: String,
    /// Bound on puts per task.
    pub max_puts_per_task: u64,
    /// Bound on the load's run time.
    pub max_duration: Duration,
    /// Client-side bound on one put.
    pub request_timeout: Duration,
    /// Pause after a failed put before the next attempt (on the next endpoint).
    pub error_backoff: Duration,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            endpoints: Vec::new(),
            tasks: 4,
            prefix: "load/".to_string(),
            max_puts_per_task: 50_000,
            max_duration: Duration::from_secs(120),
            request_timeout: Duration::from_secs(3),
            error_backoff: Duration::from_millis(20),
        }
    }
}

/// One acknowledged put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub key: String,
    pub value: String,
    /// The revision in the put response's header: the key's `mod_revision` from then on.
    pub revision: i64,
}

/// What a stopped [`WriteLoad`] did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub acks: Vec<Ack>,
    /// Failed puts by error text (gRPC code and message, or the client's error).
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A bounded steady write load on its own thread and tokio runtime (so it keeps running while the
/// test thread blocks on process control): `tasks` tasks each doing one put at a time.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<LoadReport>>,
}

impl WriteLoad {
    pub fn start(options: LoadOptions) -> WriteLoad {
        assert!(!options.endpoints.is_empty(), "a load needs endpoints");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let acked = acked.clone();
            thread::Builder::new()
                .name("write-load".to_string())
                .spawn(move || run_load(options, stop, acked))
                .expect("spawning the load thread should work")
        };
        WriteLoad {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// The count of puts acknowledged so far, for a thread that watches the load's progress.
    pub fn acked_counter(&self) -> Arc<AtomicU64> {
        self.acked.clone()
    }

    /// Puts acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` puts were acknowledged in total.
    pub fn wait_for_acks(&self, count: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let acked = self.acked();
            if acked >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {acked} of {count} puts acknowledged within {timeout:?}"
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until `more` puts beyond those acknowledged now are acknowledged.
    pub fn wait_for_more_acks(&self, more: u64, timeout: Duration) -> Result<(), String> {
        self.wait_for_acks(self.acked() + more, timeout)
    }

    /// Stops the tasks (in-flight puts finish or time out) and returns what they did.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("the thread is joined only here")
            .join()
            .expect("the load thread does not panic")
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_load(options: LoadOptions, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> LoadReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the load's tokio runtime should work");
    let started = Instant::now();
    let report = Arc::new(Mutex::new(LoadReport::default()));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..options.tasks {
            tasks.push(tokio::spawn(load_task(
                task,
                options.clone(),
                stop.clone(),
                acked.clone(),
                report.clone(),
                started,
            )));
        }
        for task in tasks {
            task.await.expect("load tasks do not panic");
        }
    });
    let mut report = std::mem::take(&mut *report.lock().expect("load report lock"));
    report.elapsed = started.elapsed();
    report
}

async fn load_task(
    task: usize,
    options: LoadOptions,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    report: Arc<Mutex<LoadReport>>,
    started: Instant,
) {
    let connect = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(options.request_timeout);
    let mut clients: Vec<Option<Client>> = vec![None; options.endpoints.len()];
    let mut current = task % options.endpoints.len();
    let mut acks = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut seq = 0;
    while seq < options.max_puts_per_task
        && !stop.load(Ordering::Relaxed)
        && started.elapsed() < options.max_duration
    {
        if clients[current].is_none() {
            match Client::connect([&options.endpoints[current]], Some(connect.clone())).await {
                Ok(client) => clients[current] = Some(client),
                Err(err) => {
                    *errors.entry(format!("connect: {err}")).or_default() += 1;
                    current = (current + 1) % options.endpoints.len();
                    tokio::time::sleep(options.error_backoff).await;
                    continue;
                }
            }
        }
        let client = clients[current].as_mut().expect("connected just above");
        let key = format!("{}{task:03}/{seq:08}", options.prefix);
        let value = format!("{task}-{seq}");
        let put = client.put(key.clone(), value.clone(), None);
        match tokio::time::timeout(options.request_timeout + Duration::from_secs(1), put).await {
            Ok(Ok(response)) => {
                let revision = response.header().map_or(0, |header| header.revision());
                acks.push(Ack {
                    key,
                    value,
                    revision,
                });
                acked.fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(err)) => error_text(&err),
                    _ => "client-side timeout".to_string(),
                };
                *errors.entry(error).or_default() += 1;
                // The put may or may not have been applied; the next attempt uses a new key.
                seq += 1;
                current = (current + 1) % options.endpoints.len();
                tokio::time::sleep(options.error_backoff).await;
            }
        }
    }
    let mut report = report.lock().expect("load report lock");
    report.acks.extend(acks);
    for (error, count) in errors {
        *report.errors.entry(error).or_default() += count;
    }
}

/// `Code: message` for a gRPC status, the client's text otherwise.
pub fn error_text(err: &etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

/// Checks that every acknowledged put is readable (linearizable range, paged) with its value and
/// with `mod_revision` equal to the acknowledged revision.
pub async fn check_acked(client: &mut Client, report: &LoadReport) -> Result<(), String> {
    let mut expected: BTreeMap<&str, &Ack> = BTreeMap::new();
    let mut prefixes: Vec<String> = Vec::new();
    for ack in &report.acks {
        expected.insert(&ack.key, ack);
        let prefix = ack
            .key
            .rsplit_once('/')
            .map_or(String::new(), |(prefix, _)| format!("{prefix}/"));
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix);
        }
    }
    let mut found = 0;
    for prefix in prefixes {
        let end = prefix_end(&prefix);
        let mut from = prefix.clone().into_bytes();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(1000);
            let response = client
                .get(from.clone(), Some(options))
                .await
                .map_err(|err| format!("range from {:?}: {err}", String::from_utf8_lossy(&from)))?;
            for kv in response.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                if let Some(ack) = expected.get(key.as_str()) {
                    let value = String::from_utf8_lossy(kv.value());
                    if value != ack.value || kv.mod_revision() != ack.revision {
                        return Err(format!(
                            "acknowledged put {ack:?} reads back as value {value:?} mod_revision {}",
                            kv.mod_revision()
                        ));
                    }
                    found += 1;
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
    }
    if found != expected.len() {
        let mut missing = Vec::new();
        for ack in &report.acks {
            let mut probe = client
                .get(ack.key.clone(), None)
                .await
                .map_err(|err| format!("get {}: {err}", ack.key))?;
            if probe.take_kvs().is_empty() {
                missing.push(ack.clone());
                if missing.len() >= 10 {
                    break;
                }
            }
        }
        return Err(format!(
            "{} of {} acknowledged puts are missing, e.g. {missing:?}",
            expected.len() - found,
            expected.len()
        ));
    }
    Ok(())
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The median of some durations (the upper one of the middle two for an even count).
pub fn median(durations: &[Duration]) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}
