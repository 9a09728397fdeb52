//! unix:// client and peer URLs, as etcd has them: `unix://host:port` names a socket file
//! `host:port` in the member's working directory, which etcdctl (`--endpoints unix://host:port`,
//! run in the same directory) and the etcd-client crate (over a channel that dials the socket)
//! use; a cluster whose members talk to each other over unix sockets.

use crate::common;

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::process::{Process, READY_TIMEOUT};
use common::{ETCDCTL_TIMEOUT, free_port, server_bin};

/// A socket name etcd's way (`localhost:<n>`), unique among the tests of this binary.
fn socket_name() -> String {
    format!("localhost:{}", free_port())
}

/// Runs etcdctl in `dir` against `endpoint`, bounded by etcdctl's own timeouts.
fn etcdctl_in(dir: &Path, endpoint: &str, args: &[&str]) -> Output {
    let mut command = common::etcdctl_command(endpoint, args);
    command.current_dir(dir);
    let started = Instant::now();
    let output = command
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=20s")
        .output()
        .expect("etcdctl runs");
    assert!(
        started.elapsed() < ETCDCTL_TIMEOUT,
        "etcdctl {args:?} took {:?}",
        started.elapsed()
    );
    output
}

fn etcdctl_in_ok(dir: &Path, endpoint: &str, args: &[&str]) -> String {
    let output = etcdctl_in(dir, endpoint, args);
    assert!(
        output.status.success(),
        "etcdctl {args:?} against {endpoint} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("etcdctl prints UTF-8")
}

/// An etcd-client over a tonic channel that dials the unix socket `dir/name`.
async fn unix_client(dir: &Path, name: &str) -> etcd_client::Client {
    let path: PathBuf = dir.join(name);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{name}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_with_connector(UnixDialer { path })
        .await
        .expect("connecting to the unix socket");
    etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None)
        .await
        .expect("an etcd-client over the channel")
}

#[derive(Clone)]
struct UnixDialer {
    path: PathBuf,
}

type Dialing = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::UnixStream>>,
            > + Send,
    >,
>;

impl tower_service::Service<tonic::codegen::http::Uri> for UnixDialer {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Dialing;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// One member: its process, its TCP client port (where the fixture checks `/health`) and the
/// names of its unix client and peer sockets.
struct Member {
    name: String,
    data_dir: PathBuf,
    client_port: u16,
    client_socket: String,
    peer_socket: String,
    process: Process,
}

impl Member {
    fn new(dir: &Path, index: usize) -> Member {
        let name = format!("m{}", index + 1);
        let mut process = Process::new(
            &format!("member {index}"),
            server_bin(),
            dir.join(format!("{name}.log")),
        );
        process.set_current_dir(dir);
        Member {
            data_dir: dir.join(format!("{name}.data")),
            name,
            client_port: free_port(),
            client_socket: socket_name(),
            peer_socket: socket_name(),
            process,
        }
    }

    fn unix_endpoint(&self) -> String {
        format!("unix://{}", self.client_socket)
    }

    fn spawn(&mut self, initial_cluster: &str, token: &str) {
        let peer = format!("unix://{}", self.peer_socket);
        let args: Vec<String> = [
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.display().to_string(),
            "--listen-client-urls",
            &format!(
                "http://127.0.0.1:{},{}",
                self.client_port,
                self.unix_endpoint()
            ),
            "--advertise-client-urls",
            &self.unix_endpoint(),
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-token",
            token,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        self.process.spawn(&args);
    }

    fn wait_healthy(&mut self) {
        if let Err(reason) = self
            .process
            .wait_healthy(self.client_port, Instant::now() + READY_TIMEOUT)
        {
            panic!("{reason}\n{}", self.process.log_report(&self.name));
        }
    }
}

/// Starts `count` members in one working directory, peers on unix sockets, and waits until
/// every one is healthy.
fn start_members(dir: &Path, count: usize) -> Vec<Member> {
    let mut members: Vec<Member> = (0..count).map(|index| Member::new(dir, index)).collect();
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}=unix://{}", m.name, m.peer_socket))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("unix-urls-{}-{}", std::process::id(), free_port());
    for member in &mut members {
        member.spawn(&initial_cluster, &token);
    }
    for member in &mut members {
        member.wait_healthy();
    }
    members
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_serves_etcdctl_and_etcd_client_on_a_unix_socket() {
    let dir = tempfile::Builder::new()
        .prefix("oxetcd-unix-")
        .tempdir()
        .expect("a temp dir");
    let mut members = start_members(dir.path(), 1);
    let member = &mut members[0];
    assert!(
        is_socket(&dir.path().join(&member.client_socket)),
        "unix://{} is a socket named {} in the working directory",
        member.client_socket,
        member.client_socket
    );
    assert!(is_socket(&dir.path().join(&member.peer_socket)));

    let endpoint = member.unix_endpoint();
    assert_eq!(
        etcdctl_in_ok(dir.path(), &endpoint, &["put", "greeting", "over unix"]),
        "OK\n"
    );
    assert_eq!(
        etcdctl_in_ok(dir.path(), &endpoint, &["get", "greeting"]),
        "greeting\nover unix\n"
    );
    let members_out = etcdctl_in_ok(dir.path(), &endpoint, &["member", "list"]);
    assert!(
        members_out.contains(&format!(
            ", started, m1, unix://{}, unix://{}, false",
            member.peer_socket, member.client_socket
        )),
        "member list shows the unix URLs: {members_out}"
    );
    let health = etcdctl_in(dir.path(), &endpoint, &["endpoint", "health"]);
    assert!(health.status.success(), "{health:?}");
    assert!(
        String::from_utf8_lossy(&health.stderr).contains(&format!(
            "{endpoint} is healthy: successfully committed proposal"
        )),
        "{health:?}"
    );

    let mut client = unix_client(dir.path(), &member.client_socket).await;
    client
        .put("from-crate", "v1", None)
        .await
        .expect("put over the unix socket");
    let got = client.get("greeting", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"over unix");
    assert_eq!(
        etcdctl_in_ok(
            dir.path(),
            &endpoint,
            &["get", "from-crate", "--print-value-only"]
        ),
        "v1\n"
    );
    drop(client);

    // A restart finds its old socket files in place and listens again.
    member.process.stop().expect("the member stops on SIGTERM");
    member.spawn(
        &format!("m1=unix://{}", member.peer_socket),
        "unused-after-restart",
    );
    member.wait_healthy();
    assert_eq!(
        etcdctl_in_ok(
            dir.path(),
            &endpoint,
            &["get", "from-crate", "--print-value-only"]
        ),
        "v1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_over_unix_peer_sockets() {
    let _exclusive = common::cluster::exclusive().await;
    let dir = tempfile::Builder::new()
        .prefix("oxetcd-unix-")
        .tempdir()
        .expect("a temp dir");
    let mut members = start_members(dir.path(), 3);

    let first = members[0].unix_endpoint();
    let listed = etcdctl_in_ok(dir.path(), &first, &["member", "list"]);
    for member in &members {
        assert!(
            listed.contains(&format!(
                ", started, {}, unix://{}, unix://{}, false",
                member.name, member.peer_socket, member.client_socket
            )),
            "{} is listed with its unix URLs: {listed}",
            member.name
        );
    }
    assert_eq!(
        etcdctl_in_ok(dir.path(), &first, &["put", "replicated", "yes"]),
        "OK\n"
    );
    for member in &members {
        assert_eq!(
            etcdctl_in_ok(
                dir.path(),
                &member.unix_endpoint(),
                &["get", "replicated", "--print-value-only"]
            ),
            "yes\n",
            "{} reads the write linearizably",
            member.name
        );
    }

    // A follower stopped and started again dials its peers' sockets anew and catches up on what
    // was written while it was away. (A follower, so that no election runs: a write forwarded to
    // a leader that has just died is lost and times out, on etcd as here.)
    let status = etcdctl_in_ok(dir.path(), &first, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(status.trim()).expect("status JSON");
    let leader = status[0]["Status"]["leader"].as_u64().expect("a leader");
    let mut follower = None;
    for (index, member) in members.iter().enumerate() {
        let status = etcdctl_in_ok(
            dir.path(),
            &member.unix_endpoint(),
            &["endpoint", "status", "-w", "json"],
        );
        let status: serde_json::Value = serde_json::from_str(status.trim()).expect("status JSON");
        if status[0]["Status"]["header"]["member_id"].as_u64() != Some(leader) {
            follower = Some(index);
        }
    }
    let follower = follower.expect("two of three members follow");
    let other = members[(follower + 1) % 3].unix_endpoint();
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}=unix://{}", m.name, m.peer_socket))
        .collect::<Vec<_>>()
        .join(",");
    let away = &mut members[follower];
    away.process.stop().expect("the follower stops on SIGTERM");
    assert_eq!(
        etcdctl_in_ok(dir.path(), &other, &["put", "while-away", "written"]),
        "OK\n"
    );
    away.spawn(&initial_cluster, "unused-after-restart");
    away.wait_healthy();
    assert_eq!(
        etcdctl_in_ok(
            dir.path(),
            &away.unix_endpoint(),
            &["get", "while-away", "--print-value-only"]
        ),
        "written\n",
        "{} caught up after its restart",
        away.name
    );
}
