//! TLS between members: 3-member clusters with mutual TLS on the peer and client URLs, started
//! with kubeadm's static-pod command line (etcd 3.6 and 3.5 spellings) and kubeadm's certificate
//! layout; a leader kill; learners joined and promoted as kubeadm does; peers with a certificate
//! from another CA or a disallowed CN or hostname refused; a rotated peer certificate; peer auto
//! TLS; bad peer TLS input at start. Each member listens on its own loopback address
//! (127.0.0.2-4), as kubeadm's nodes do on theirs. Certificates are made here with rcgen.
//!
//! Against etcd 3.4 (`OXETCD_TEST_BIN=/usr/bin/etcd`) the flags 3.4 lacks are left out where
//! noted (`--feature-gates`, `--watch-progress-notify-interval` without its 3.5 prefix,
//! `--peer-client-cert-file`), and oxetcd-only answers (`/livez`, `/readyz`, log lines) are not
//! checked.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};

use crate::common::process::{POLL_INTERVAL, Process, READY_TIMEOUT};
use crate::common::{self, free_port, running_real_etcd, server_bin};
use crate::tls::{Ca, Files};

const HEARTBEAT_INTERVAL_MS: &str = "50";
const ELECTION_TIMEOUT_MS: &str = "500";
/// A new leader among the survivors, and a write through it, within this.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);
/// Promoting a learner is refused until it caught up; retried until then.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused member is watched, never becoming healthy (20 election timeouts).
const REFUSED_WATCH: Duration = Duration::from_secs(10);

/// Which kubeadm manifest the command line follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Spelling {
    /// Kubernetes main with etcd 3.6: `--feature-gates=InitialCorruptCheck=true`.
    V36,
    /// etcd 3.5 images: `--experimental-initial-corrupt-check=true`.
    V35,
}

/// kubeadm's certificate for `ip` (SANs as kubeadm makes them: the node name, localhost, its
/// IP, 127.0.0.1 and ::1), server and client usage; written as `<file>.crt` and `<file>.key`.
fn kubeadm_pair(ca: &Ca, files: &Files, file: &str, cn: &str, ip: &str) {
    let sans = vec![
        cn.to_owned(),
        "localhost".to_owned(),
        ip.to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    files.write(&format!("{file}.crt"), &cert.pem());
    files.write(&format!("{file}.key"), &key.serialize_pem());
}

/// kubeadm's `healthcheck-client` pair: client usage only.
fn healthcheck_client(ca: &Ca, files: &Files) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-etcd-healthcheck-client");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    files.write("healthcheck-client.crt", &cert.pem());
    files.write("healthcheck-client.key", &key.serialize_pem());
}

/// One member: its loopback address, ports, `/etc/kubernetes/pki/etcd`-like directory, data
/// directory and process.
struct Member {
    name: String,
    ip: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    pki: Files,
    data_dir: PathBuf,
    process: Process,
    /// `--peer-cert-allowed-cn=...` or `--peer-cert-allowed-hostname=...`, when set.
    allowed: Option<String>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("https://{}:{}", self.ip, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.peer_port)
    }

    /// kubeadm's static pod arguments (§2.4 of the etcd anchors), plus the test's timing.
    fn args(&self, spelling: Spelling, initial_cluster: &str, existing: bool) -> Vec<String> {
        let etcd = running_real_etcd();
        let pki = |name: &str| self.pki.path(name);
        let mut args = vec![format!("--name={}", self.name)];
        match spelling {
            // etcd 3.4 has no --feature-gates; the 3.5 flag is its equivalent.
            Spelling::V36 if !etcd => args.push("--feature-gates=InitialCorruptCheck=true".into()),
            _ => args.push("--experimental-initial-corrupt-check=true".into()),
        }
        args.extend([
            format!(
                "--listen-client-urls=https://127.0.0.1:{},{}",
                self.client_port,
                self.endpoint()
            ),
            format!("--advertise-client-urls={}", self.endpoint()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--cert-file={}", pki("server.crt")),
            format!("--key-file={}", pki("server.key")),
            format!("--trusted-ca-file={}", pki("ca.crt")),
            "--client-cert-auth=true".into(),
            format!("--peer-cert-file={}", pki("peer.crt")),
            format!("--peer-key-file={}", pki("peer.key")),
            format!("--peer-trusted-ca-file={}", pki("ca.crt")),
            "--peer-client-cert-auth=true".into(),
            "--snapshot-count=10000".into(),
            format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ),
        ]);
        match spelling {
            // etcd 3.4 knows only the 3.5 (experimental) name.
            Spelling::V36 if !etcd => args.push("--watch-progress-notify-interval=5s".into()),
            _ => args.push("--experimental-watch-progress-notify-interval=5s".into()),
        }
        args.push(format!("--initial-cluster={initial_cluster}"));
        if existing {
            args.push("--initial-cluster-state=existing".into());
        }
        if let Some(flag) = &self.allowed {
            args.push(flag.clone());
        }
        args.extend([
            format!("--heartbeat-interval={HEARTBEAT_INTERVAL_MS}"),
            format!("--election-timeout={ELECTION_TIMEOUT_MS}"),
        ]);
        args
    }

    /// etcdctl's TLS flags as kubeadm's health check uses them.
    fn etcdctl(&self, args: &[&str]) -> Output {
        let (ca, cert, key) = (
            format!("--cacert={}", self.pki.path("ca.crt")),
            format!("--cert={}", self.pki.path("healthcheck-client.crt")),
            format!("--key={}", self.pki.path("healthcheck-client.key")),
        );
        let mut all = vec![
            ca.as_str(),
            cert.as_str(),
            key.as_str(),
            "--dial-timeout=2s",
            "--command-timeout=4s",
        ];
        all.extend(args);
        common::run_etcdctl(&self.endpoint(), &all, None, ETCDCTL_TIMEOUT)
    }

    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let output = self.etcdctl(args);
        assert!(
            output.status.success(),
            "{}: etcdctl {args:?} failed\nstdout:\n{}\nstderr:\n{}\n{}",
            self.name,
            common::stdout_text(&output),
            common::stderr_text(&output),
            self.process.log_report(&self.name)
        );
        common::stdout_text(&output)
    }

    fn get(&self, key: &str) -> String {
        self.etcdctl_ok(&["get", key, "--print-value-only"])
            .trim()
            .to_owned()
    }

    async fn client(&self) -> etcd_client::Client {
        let pem = |name: &str| std::fs::read(self.pki.path(name)).unwrap();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(pem("ca.crt")))
            .identity(etcd_client::Identity::from_pem(
                pem("healthcheck-client.crt"),
                pem("healthcheck-client.key"),
            ));
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(4));
        etcd_client::Client::connect([self.endpoint()], Some(options))
            .await
            .unwrap()
    }

    fn metrics_get(&self, path: &str) -> Option<u16> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.metrics_port));
        common::http::http_get(addr, path)
            .ok()
            .map(|response| response.status)
    }
}

/// Members on 127.0.0.2, .3, .4, each with kubeadm's files signed by one CA.
struct TlsCluster {
    ca: Ca,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    spelling: Spelling,
}

impl TlsCluster {
    fn new(count: usize, spelling: Spelling) -> TlsCluster {
        TlsCluster::with_peer_cn(count, spelling, None)
    }

    /// `count` members whose peer certificates have the CN `peer_cn` (else their name).
    fn with_peer_cn(count: usize, spelling: Spelling, peer_cn: Option<&str>) -> TlsCluster {
        let ca = Ca::new("etcd-ca");
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-peer-tls-")
            .tempdir()
            .unwrap();
        let members = (0..count)
            .map(|index| TlsCluster::member(dir.path(), index, &ca, peer_cn))
            .collect();
        TlsCluster {
            ca,
            dir,
            members,
            spelling,
        }
    }

    /// Member `index` with its files signed by `ca` (its peer CN `peer_cn`, or its name).
    fn member(cluster_dir: &Path, index: usize, ca: &Ca, peer_cn: Option<&str>) -> Member {
        let name = format!("m{}", index + 1);
        let ip = format!("127.0.0.{}", index + 2);
        let pki = Files::new();
        pki.write("ca.crt", &ca.pem());
        kubeadm_pair(ca, &pki, "server", &name, &ip);
        kubeadm_pair(ca, &pki, "peer", peer_cn.unwrap_or(&name), &ip);
        healthcheck_client(ca, &pki);
        let member_dir = cluster_dir.join(&name);
        std::fs::create_dir_all(&member_dir).unwrap();
        Member {
            process: Process::new(&name, server_bin(), member_dir.join("server.log")),
            data_dir: member_dir.join("data"),
            name,
            ip,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            pki,
            allowed: None,
        }
    }

    fn initial_cluster(&self, indices: &[usize]) -> String {
        indices
            .iter()
            .map(|&i| format!("{}={}", self.members[i].name, self.members[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, index: usize, initial_cluster: &str, existing: bool) {
        let args = self.members[index].args(self.spelling, initial_cluster, existing);
        self.members[index].process.spawn(&args);
    }

    /// Starts every member as one new cluster.
    fn start_all(&mut self) {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let initial = self.initial_cluster(&all);
        for index in all.clone() {
            self.spawn(index, &initial, false);
        }
        for index in all {
            self.wait_healthy(index);
        }
    }

    /// Waits for `/health` OK on the member's http metrics URL (kubeadm's probe address).
    fn wait_healthy(&mut self, index: usize) {
        let member = &mut self.members[index];
        let deadline = Instant::now() + READY_TIMEOUT;
        if let Err(reason) = member.process.wait_healthy(member.metrics_port, deadline) {
            panic!("{reason}\n{}", self.logs());
        }
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| m.process.log_report(&m.name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The index of the leader as member `index` sees it (`None` without one).
    async fn leader_seen_by(&self, index: usize) -> Option<usize> {
        let mut client = self.members[index].client().await;
        let status = client.status().await.ok()?;
        let leader = status.leader();
        for (i, _) in self.members.iter().enumerate() {
            let mut other = self.members[i].client().await;
            if let Ok(s) = other.status().await
                && s.header().map(|h| h.member_id()) == Some(leader)
            {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.process.kill();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if std::env::var_os("OXETCD_TEST_KEEP_DIR").is_some_and(|value| value == "1") {
            self.dir.disable_cleanup(true);
            eprintln!("peer TLS fixture: kept {}", self.dir.path().display());
        }
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_cluster_from_kubeadms_command_line_survives_a_leader_kill() {
    let _exclusive = crate::common::cluster::exclusive().await;
    let mut cluster = TlsCluster::new(3, Spelling::V36);
    cluster.start_all();

    cluster.members[0].etcdctl_ok(&["put", "before-etcdctl", "1"]);
    let mut client = cluster.members[1].client().await;
    client.put("before-client", "2", None).await.unwrap();

    let leader = wait_for(FAILOVER_TIMEOUT, "a leader", || cluster.leader_seen_by(0)).await;
    cluster.members[leader].process.kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = wait_for(FAILOVER_TIMEOUT, "a new leader", || async {
        cluster
            .leader_seen_by(survivors[0])
            .await
            .filter(|l| *l != leader)
    })
    .await;
    assert!(survivors.contains(&new_leader));

    let via = survivors[1];
    cluster.members[via].etcdctl_ok(&["put", "after-etcdctl", "3"]);
    // A keep-alive on a follower goes to the leader over the peer URLs (the forwarder's TLS).
    let follower = *survivors.iter().find(|&&i| i != new_leader).unwrap();
    let mut client = cluster.members[follower].client().await;
    let lease = client.lease_grant(30, None).await.unwrap();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    assert!(
        answer.ttl() > 0,
        "keep-alive through a follower: {answer:?}"
    );
    let mut client = cluster.members[survivors[0]].client().await;
    client.put("after-client", "4", None).await.unwrap();

    // The killed member comes back over TLS and catches up; every member agrees.
    let initial = cluster.initial_cluster(&[0, 1, 2]);
    cluster.spawn(leader, &initial, false);
    cluster.wait_healthy(leader);
    for member in &cluster.members {
        for (key, value) in [
            ("before-etcdctl", "1"),
            ("before-client", "2"),
            ("after-etcdctl", "3"),
            ("after-client", "4"),
        ] {
            assert_eq!(member.get(key), value, "{} {key}", member.name);
        }
        let mut client = member.client().await;
        let got = client.get("after-client", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"4", "{}", member.name);
    }
    let statuses = cluster.members[0].etcdctl_ok(&["endpoint", "status", "--cluster"]);
    assert_eq!(statuses.lines().count(), 3, "{statuses}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeadm_joins_learners_over_peer_tls_and_promotes_them() {
    let _exclusive = crate::common::cluster::exclusive().await;
    let mut cluster = TlsCluster::new(3, Spelling::V35);
    let first = cluster.initial_cluster(&[0]);
    cluster.spawn(0, &first, false);
    cluster.wait_healthy(0);
    for index in 1..3 {
        let peer_url = cluster.members[index].peer_url();
        let name = cluster.members[index].name.clone();
        let add = [
            "member",
            "add",
            &name,
            "--learner",
            &format!("--peer-urls={peer_url}"),
        ];
        // etcd refuses a change until a just-promoted member has been up a while ("unhealthy
        // cluster"); kubeadm retries, and so does this.
        let deadline = Instant::now() + PROMOTE_TIMEOUT;
        let added = loop {
            let output = cluster.members[0].etcdctl(&add);
            if output.status.success() {
                break common::stdout_text(&output);
            }
            let error = common::stderr_text(&output);
            assert!(
                error.contains("unhealthy cluster") && Instant::now() < deadline,
                "member add {name}: {error}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(POLL_INTERVAL * 10).await;
        };
        // "Member 8e9e05c52164694d added to cluster ..."
        let id = added
            .split_whitespace()
            .nth(1)
            .expect("member add prints the new ID")
            .to_owned();
        let members: Vec<usize> = (0..=index).collect();
        let initial = cluster.initial_cluster(&members);
        cluster.spawn(index, &initial, true);
        let first = &cluster.members[0];
        let deadline = Instant::now() + PROMOTE_TIMEOUT;
        loop {
            let output = first.etcdctl(&["member", "promote", &id]);
            if output.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not promoted: {}\n{}",
                common::stderr_text(&output),
                cluster.logs()
            );
            tokio::time::sleep(POLL_INTERVAL * 10).await;
        }
        cluster.wait_healthy(index);
    }
    let list = cluster.members[2].etcdctl_ok(&["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains("true"), "a learner is left: {list}");
    cluster.members[2].etcdctl_ok(&["put", "kubeadm", "joined"]);
    for member in &cluster.members {
        assert_eq!(member.get("kubeadm"), "joined", "{}", member.name);
        if !running_real_etcd() {
            // kubeadm's probes; etcd 3.4 has no /livez or /readyz (3.5.x added them).
            assert_eq!(member.metrics_get("/livez"), Some(200), "{}", member.name);
            assert_eq!(member.metrics_get("/readyz"), Some(200), "{}", member.name);
        }
    }
}

/// Starts m1 and m2 (good, peer CN and SAN `good_cn` when set) and m3 (`bad`), all with
/// `allowed` (an allowed CN or hostname flag); m1 and m2 keep serving, m3 never joins, and
/// (oxetcd) m1 warns once about the refused handshakes (all loopback connections come from
/// 127.0.0.1).
async fn refused_peer(
    bad: impl FnOnce(&TlsCluster) -> Member,
    good_cn: Option<&str>,
    allowed: Option<&str>,
) {
    let _exclusive = crate::common::cluster::exclusive().await;
    let mut cluster = TlsCluster::with_peer_cn(2, Spelling::V36, good_cn);
    let bad = bad(&cluster);
    cluster.members.push(bad);
    for member in &mut cluster.members {
        member.allowed = allowed.map(str::to_owned);
    }
    let initial = cluster.initial_cluster(&[0, 1, 2]);
    for index in 0..3 {
        cluster.spawn(index, &initial, false);
    }
    cluster.wait_healthy(0);
    cluster.wait_healthy(1);
    cluster.members[0].etcdctl_ok(&["put", "served", "yes"]);
    assert_eq!(cluster.members[1].get("served"), "yes");

    if !running_real_etcd() {
        let member = &cluster.members[0];
        wait_for(REFUSED_WATCH, "m1's warning about m3", || async {
            (refusal_warnings(member) > 0).then_some(())
        })
        .await;
    }
    // m3 keeps trying (each try refused) and never gets a leader.
    let deadline = Instant::now() + REFUSED_WATCH;
    while Instant::now() < deadline {
        assert!(
            !common::http::is_healthy(cluster.members[2].metrics_port),
            "the refused member became healthy\n{}",
            cluster.logs()
        );
        tokio::time::sleep(POLL_INTERVAL * 10).await;
    }
    cluster.members[1].etcdctl_ok(&["put", "still", "served"]);
    assert_eq!(cluster.members[0].get("still"), "served");
    if !running_real_etcd() {
        // m3 kept dialing all along; only its first refusal is a warning.
        assert_eq!(
            refusal_warnings(&cluster.members[0]),
            1,
            "one warning per address"
        );
    }
}

/// Warnings about refused TLS handshakes in the member's log.
fn refusal_warnings(member: &Member) -> usize {
    member
        .process
        .log()
        .lines()
        .filter(|line| {
            line.contains("\"level\":\"WARN\"") && line.contains("refused a TLS handshake")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    refused_peer(
        |cluster| TlsCluster::member(cluster.dir.path(), 2, &Ca::new("another CA"), None),
        None,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_a_disallowed_cn_is_refused() {
    // Same CA as the cluster: only the CN differs. Good members' peer certificates say
    // "etcd-peer".
    refused_peer(
        |cluster| TlsCluster::member(cluster.dir.path(), 2, &cluster.ca, Some("intruder")),
        Some("etcd-peer"),
        Some("--peer-cert-allowed-cn=etcd-peer"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_whose_certificate_is_not_for_the_allowed_hostname_is_refused() {
    // kubeadm_pair puts the CN among the SANs: good members' certificates are valid for
    // "etcd-peer", the intruder's for "intruder".
    refused_peer(
        |cluster| TlsCluster::member(cluster.dir.path(), 2, &cluster.ca, Some("intruder")),
        Some("etcd-peer"),
        Some("--peer-cert-allowed-hostname=etcd-peer"),
    )
    .await;
}

#[test]
fn bad_peer_tls_input_exits_2_naming_the_key() {
    let files = Files::new();
    let ca = Ca::new("etcd-ca");
    files.write("ca.crt", &ca.pem());
    kubeadm_pair(&ca, &files, "peer", "m1", "127.0.0.1");
    kubeadm_pair(&ca, &files, "other", "m1", "127.0.0.1");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    files.write(
        "expired.crt",
        &params.signed_by(&key, &ca.issuer).unwrap().pem(),
    );
    files.write("expired.key", &key.serialize_pem());
    let (cert, key, ca_file, other_key, missing) = (
        files.path("peer.crt"),
        files.path("peer.key"),
        files.path("ca.crt"),
        files.path("other.key"),
        files.path("missing.crt"),
    );
    let pair = |cert: &str, key: &str| {
        vec![
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca_file}"),
            "--peer-client-cert-auth".to_owned(),
        ]
    };
    let real_etcd = running_real_etcd();
    // (case, flags, key named, text named, oxetcd only)
    let cases: Vec<(&str, Vec<String>, &str, &str, bool)> = vec![
        (
            "https peer URL without a certificate",
            vec![],
            "peer-cert-file",
            "listen-peer-urls",
            false,
        ),
        (
            "missing peer certificate",
            pair(&missing, &key),
            "peer-cert-file",
            &missing,
            false,
        ),
        (
            "peer key of another certificate",
            pair(&cert, &other_key),
            "peer-key-file",
            &other_key,
            false,
        ),
        (
            "missing peer CA",
            vec![
                format!("--peer-cert-file={cert}"),
                format!("--peer-key-file={key}"),
                format!("--peer-trusted-ca-file={missing}"),
            ],
            "peer-trusted-ca-file",
            &missing,
            false,
        ),
        // etcd 3.4 starts with an expired certificate (Go does not check its own).
        (
            "expired peer certificate",
            pair(&files.path("expired.crt"), &files.path("expired.key")),
            "peer-cert-file",
            "expired",
            true,
        ),
        // etcd 3.4 has no --peer-client-cert-file.
        (
            "missing peer client certificate",
            [
                pair(&cert, &key),
                vec![
                    format!("--peer-client-cert-file={missing}"),
                    format!("--peer-client-key-file={key}"),
                ],
            ]
            .concat(),
            "peer-client-cert-file",
            &missing,
            true,
        ),
    ];
    for (name, args, key_named, text_named, oxetcd_only) in cases {
        if real_etcd && oxetcd_only {
            continue;
        }
        let (code, stderr, data_dir_exists) = common::run_to_exit("http", "https", &args);
        if real_etcd {
            // etcd 3.4 exits 1 and words these its own way; what users need is that it stops.
            assert_ne!(code, Some(0), "{name}: etcd served; stderr:\n{stderr}");
            continue;
        }
        assert_eq!(code, Some(2), "{name}: exit status; stderr:\n{stderr}");
        assert!(
            stderr.contains(&format!("--{key_named}")),
            "{name}: --{key_named} not named:\n{stderr}"
        );
        assert!(
            stderr.contains(text_named),
            "{name}: {text_named} not named:\n{stderr}"
        );
        assert!(
            !stderr.contains("PRIVATE KEY"),
            "{name}: key material printed"
        );
        assert!(
            !data_dir_exists,
            "{name}: the data dir was created before the check"
        );
    }
}

/// Processes killed when the test ends, their logs shown if it failed.
struct Members(Vec<Process>);

impl Drop for Members {
    fn drop(&mut self) {
        for process in &mut self.0 {
            process.kill();
            if std::thread::panicking() {
                eprintln!("{}", process.log_report("member"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_auto_tls_forms_a_cluster_from_self_signed_certificates() {
    let _exclusive = crate::common::cluster::exclusive().await;
    let dir = tempfile::Builder::new()
        .prefix("oxetcd-peer-auto-tls-")
        .tempdir()
        .unwrap();
    let peers: Vec<String> = (0..3)
        .map(|i| format!("https://127.0.0.{}:{}", i + 2, free_port()))
        .collect();
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, url)| format!("m{}={url}", i + 1))
        .collect();
    let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut members = Members(Vec::new());
    for i in 0..3 {
        let client = format!("http://127.0.0.1:{}", client_ports[i]);
        let name = format!("m{}", i + 1);
        let mut process = Process::new(&name, server_bin(), dir.path().join(format!("{name}.log")));
        process.spawn(&[
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join(&name).display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={}", peers[i]),
            format!("--initial-advertise-peer-urls={}", peers[i]),
            format!("--initial-cluster={}", initial.join(",")),
            "--peer-auto-tls".to_owned(),
            format!("--heartbeat-interval={HEARTBEAT_INTERVAL_MS}"),
            format!("--election-timeout={ELECTION_TIMEOUT_MS}"),
        ]);
        members.0.push(process);
    }
    for (i, process) in members.0.iter_mut().enumerate() {
        let deadline = Instant::now() + READY_TIMEOUT;
        process.wait_healthy(client_ports[i], deadline).unwrap();
    }
    let endpoint = |i: usize| format!("http://127.0.0.1:{}", client_ports[i]);
    let put = common::run_etcdctl(
        &endpoint(0),
        &["put", "auto", "peer-tls"],
        None,
        ETCDCTL_TIMEOUT,
    );
    assert!(put.status.success(), "{}", common::stderr_text(&put));
    let get = common::run_etcdctl(
        &endpoint(2),
        &["get", "auto", "--print-value-only"],
        None,
        ETCDCTL_TIMEOUT,
    );
    assert_eq!(common::stdout_text(&get).trim(), "peer-tls");
    // etcd's place for the generated pair, which both servers use.
    for i in 0..3 {
        let fixtures = dir.path().join(format!("m{}", i + 1)).join("fixtures/peer");
        assert!(fixtures.join("cert.pem").exists(), "{}", fixtures.display());
        assert!(fixtures.join("key.pem").exists(), "{}", fixtures.display());
    }
}

/// The subject line of the certificate served on `address`, as `openssl s_client` prints it,
/// presenting `member`'s healthcheck-client pair (peer URLs require a client certificate).
fn served_subject(member: &Member, address: &str) -> String {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            address,
            "-CAfile",
            &member.pki.path("ca.crt"),
            "-cert",
            &member.pki.path("healthcheck-client.crt"),
            "-key",
            &member.pki.path("healthcheck-client.key"),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.starts_with("subject="))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_peer_certificate_is_used_for_new_peer_connections() {
    let _exclusive = crate::common::cluster::exclusive().await;
    let mut cluster = TlsCluster::new(3, Spelling::V36);
    cluster.start_all();
    let peer_address = cluster.members[0].peer_url().replace("https://", "");
    assert!(
        served_subject(&cluster.members[0], &peer_address).contains("m1"),
        "before the rotation"
    );

    // A new pair from the same CA, with another CN, replaces m1's peer files in place.
    let staging = Files::new();
    kubeadm_pair(
        &cluster.ca,
        &staging,
        "peer",
        "m1-rotated",
        &cluster.members[0].ip,
    );
    let read = |name: &str| std::fs::read_to_string(staging.path(name)).unwrap();
    cluster.members[0]
        .pki
        .replace("peer.crt", &read("peer.crt"));
    cluster.members[0]
        .pki
        .replace("peer.key", &read("peer.key"));
    let member = &cluster.members[0];
    wait_for(FAILOVER_TIMEOUT, "the rotated peer certificate", || async {
        served_subject(member, &peer_address)
            .contains("m1-rotated")
            .then_some(())
    })
    .await;

    // m3 restarted dials m1 afresh (verifying the new certificate; m1 dials it with the new
    // pair too) and catches up.
    cluster.members[0].etcdctl_ok(&["put", "rotated", "yes"]);
    cluster.members[2].process.kill9();
    let initial = cluster.initial_cluster(&[0, 1, 2]);
    cluster.spawn(2, &initial, false);
    cluster.wait_healthy(2);
    cluster.members[1].etcdctl_ok(&["put", "after-rotation", "yes"]);
    assert_eq!(cluster.members[2].get("rotated"), "yes");
    assert_eq!(cluster.members[2].get("after-rotation"), "yes");
}
