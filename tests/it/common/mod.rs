//! Black-box test fixture: runs one `oxetcd` member (or real etcd, via `OXETCD_TEST_BIN`) on loopback
//! ports with a throwaway data dir, and talks to it with etcd-client, etcdctl and plain HTTP.
//!
//! Environment:
//! - `OXETCD_TEST_BIN`: server binary to run instead of the crate's `oxetcd` (e.g. `/usr/bin/etcd`,
//!   which accepts the same flags, to check a test against the reference implementation).
//! - `OXETCD_TEST_ETCDCTL`: etcdctl binary (default `/usr/bin/etcdctl`).
//! - `OXETCD_TEST_KEEP_DIR=1`: keep the data dir and log after the test and print where they are.
//!
//! Every wait is a condition polled with a deadline; failures panic with the server log attached.

pub mod cluster;
pub mod http;
pub mod linearizability;
pub mod metric_names;
pub mod process;
pub mod promql;
pub mod proxy;
pub mod reference;

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

pub use http::{HttpResponse, http_get, http_post_json, http_summary};
use process::{Process, SPAWN_ATTEMPTS};
pub use process::{READY_TIMEOUT, command_line};

/// Member name passed as `--name`; the etcd 3.4 reference captures use the same name.
pub const MEMBER_NAME: &str = "node1";
/// Default bound on one etcdctl invocation.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports handed out by this test binary, so parallel tests in one process never pick the same port.
static RESERVED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a loopback TCP port that was free a moment ago (bound to 127.0.0.1:0, then released) and
/// that this process has not handed out before.
pub fn free_port() -> u16 {
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0 should work");
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        drop(listener);
        let mut reserved = RESERVED_PORTS
            .lock()
            .expect("port set lock is never poisoned");
        if reserved.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// The server binary under test: `OXETCD_TEST_BIN` if set, else the crate's own `oxetcd`.
pub fn server_bin() -> PathBuf {
    match std::env::var_os("OXETCD_TEST_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_oxetcd")),
    }
}

/// The etcdctl binary: `OXETCD_TEST_ETCDCTL` if set, else Debian's `/usr/bin/etcdctl` (3.4).
pub fn etcdctl_bin() -> PathBuf {
    match std::env::var_os("OXETCD_TEST_ETCDCTL") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("/usr/bin/etcdctl"),
    }
}

/// The directory holding etcd 3.5.1's `etcd`, `etcdctl` and `etcdutl`: `OXETCD_TEST_ETCD35_DIR`
/// if set, else where `.ci/setup` puts them (`~/.cache/oxetcd/etcd-v3.5.1`).
pub fn etcd35_dir() -> PathBuf {
    let dir = match std::env::var_os("OXETCD_TEST_ETCD35_DIR") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/oxetcd/etcd-v3.5.1"),
    };
    assert!(
        dir.join("etcd").is_file() && dir.join("etcdutl").is_file(),
        "etcd 3.5.1 is not in {}: `bash .ci/setup` fetches it",
        dir.display()
    );
    dir
}

/// True when the fixture runs real etcd rather than oxetcd (tests may skip oxetcd-only checks).
pub fn running_real_etcd() -> bool {
    server_bin()
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("etcd"))
}

/// One single-member cluster in its own temp dir. Dropping it SIGKILLs the process.
pub struct Server {
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// A second client URL, https://127.0.0.1:<port>, when started with [`Server::start_with_https`].
    https_port: Option<u16>,
    extra_args: Vec<String>,
    process: Process,
    /// Set once a failure message carried the log, so Drop does not print it a second time.
    log_shown: Cell<bool>,
}

impl Server {
    /// Starts a member with default flags and waits until it is healthy.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a member with `extra_args` appended to the standard flags (e.g.
    /// `["--max-txn-ops", "4"]`) and waits until it is healthy. Retries with new ports if the
    /// chosen ones were taken in the meantime.
    pub fn start_with(extra_args: &[&str]) -> Server {
        Server::start_listening(extra_args, false)
    }

    /// Like [`Server::start_with`], with a second client URL `https://127.0.0.1:<port>` beside
    /// the plain one the fixture waits on (`extra_args` must give the certificate flags).
    pub fn start_with_https(extra_args: &[&str]) -> Server {
        Server::start_listening(extra_args, true)
    }

    /// Like [`Server::start_with`], with the data dir at `data_dir` (e.g. on a filesystem the
    /// test mounted) instead of in the server's temp dir, which still holds the log.
    pub fn start_on(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_in(Some(data_dir.to_path_buf()), extra_args, false)
    }

    fn start_listening(extra_args: &[&str], https: bool) -> Server {
        Server::start_in(None, extra_args, https)
    }

    fn start_in(data_dir: Option<PathBuf>, extra_args: &[&str], https: bool) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-test-")
            .tempdir()
            .expect("creating a temp dir should work");
        let mut server = Server {
            data_dir: data_dir.unwrap_or_else(|| dir.path().join("data")),
            process: Process::new("server", server_bin(), dir.path().join("server.log")),
            dir,
            client_port: 0,
            peer_port: 0,
            https_port: None,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            log_shown: Cell::new(false),
        };
        for attempt in 1..=SPAWN_ATTEMPTS {
            server.client_port = free_port();
            server.peer_port = free_port();
            server.https_port = https.then(free_port);
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return server,
                Err(reason) if attempt < SPAWN_ATTEMPTS && server.process.port_clash() => {
                    eprintln!(
                        "fixture: attempt {attempt} failed ({reason}); retrying with new ports"
                    );
                    server.process.kill();
                    // A half-initialised data dir from the failed attempt must not be reused.
                    let _ = std::fs::remove_dir_all(&server.data_dir);
                }
                Err(reason) => server.fail(&reason),
            }
        }
        unreachable!("the last attempt either returns or fails");
    }

    /// `http://127.0.0.1:P`, the client URL (gRPC and HTTP on the same port).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `https://127.0.0.1:T`, the https client URL of [`Server::start_with_https`].
    pub fn https_endpoint(&self) -> String {
        let port = self
            .https_port
            .expect("the server was started with start_with_https");
        format!("https://127.0.0.1:{port}")
    }

    /// `http://127.0.0.1:Q`, the peer URL.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The temp dir holding the data dir and the log; tests may put their own files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The tail of the server's log with its process state, for a failure message.
    pub fn log_report(&self) -> String {
        self.process.log_report("server")
    }

    /// A connected etcd-client.
    pub async fn client(&self) -> etcd_client::Client {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        etcd_client::Client::connect([self.endpoint()], Some(options))
            .await
            .unwrap_or_else(|err| self.fail(&format!("etcd-client connect failed: {err}")))
    }

    /// Runs `etcdctl --endpoints=<endpoint> args...` with `ETCDCTL_API=3`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_full(args, None, ETCDCTL_TIMEOUT)
    }

    /// Like [`Server::etcdctl`], feeding `stdin` (e.g. a `txn` script).
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.etcdctl_full(args, Some(stdin.as_bytes()), ETCDCTL_TIMEOUT)
    }

    /// Runs etcdctl with optional stdin; kills it after `timeout` (then the status is the kill's,
    /// and stdout/stderr hold what it printed until then, which is what a `watch` test wants).
    pub fn etcdctl_full(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
        run_etcdctl(&self.endpoint(), args, stdin, timeout)
    }

    /// Runs etcdctl, asserts it exited 0, and returns its stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let output = self.etcdctl(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        stdout
    }

    /// An etcdctl command for this server, for callers that need to stream (e.g. a `watch` whose
    /// stdout is read line by line). The caller owns the child and must kill it.
    pub fn etcdctl_command(&self, args: &[&str]) -> Command {
        etcdctl_command(&self.endpoint(), args)
    }

    /// Plain HTTP GET on the client port.
    pub fn http_get(&self, path: &str) -> HttpResponse {
        http_get(
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port)),
            path,
        )
        .unwrap_or_else(|err| self.fail(&format!("GET {path} failed: {err}")))
    }

    /// True when `GET /health` answers 200 with `"health":"true"`.
    pub fn is_healthy(&self) -> bool {
        http::is_healthy(self.client_port)
    }

    /// SIGKILL, then reap. The data dir stays; `restart()` brings the member back.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Sends `signal` (e.g. SIGHUP) to the running server.
    pub fn signal(&self, signal: rustix::process::Signal) {
        self.process.signal(signal);
    }

    /// SIGTERM, then waits for a clean exit (kills and panics after the stop timeout).
    pub fn stop(&mut self) -> ExitStatus {
        match self.process.stop() {
            Ok(status) => status,
            Err(reason) => self.fail(&reason),
        }
    }

    /// Starts the member again on the same ports and data dir (stopping it with SIGTERM first if it
    /// is still running) and waits until it is healthy.
    pub fn restart(&mut self) {
        if self.process.is_spawned() {
            self.stop();
        }
        self.spawn();
        if let Err(reason) = self.wait_ready() {
            self.fail(&reason);
        }
    }

    /// Like [`Server::restart`], but waits only until the member serves reads: its `/health`
    /// may report NOSPACE (`/health?exclude=NOSPACE` leaves that out).
    pub fn restart_under_nospace(&mut self) {
        if self.process.is_spawned() {
            self.stop();
        }
        self.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        if let Err(reason) =
            self.process
                .wait_healthy_at(self.client_port, "/health?exclude=NOSPACE", deadline)
        {
            self.fail(&reason);
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Panics with `reason` and the tail of the server log.
    pub fn fail(&self, reason: &str) -> ! {
        self.log_shown.set(true);
        panic!(
            "{reason}\nserver: {}\nlog {}:\n{}",
            command_line(&server_bin(), &self.args()),
            self.log_path().display(),
            self.process.log_tail()
        );
    }

    fn args(&self) -> Vec<String> {
        let client = self.endpoint();
        let peer = self.peer_url();
        let listen = match self.https_port {
            Some(_) => format!("{client},{}", self.https_endpoint()),
            None => client.clone(),
        };
        let mut args = vec![
            "--name".to_string(),
            MEMBER_NAME.to_string(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".to_string(),
            listen,
            "--advertise-client-urls".to_string(),
            client,
            "--listen-peer-urls".to_string(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer.clone(),
            "--initial-cluster".to_string(),
            format!("{MEMBER_NAME}={peer}"),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self) {
        let args = self.args();
        self.process.spawn(&args);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        self.process
            .wait_healthy(self.client_port, Instant::now() + READY_TIMEOUT)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.process.kill();
        if thread::panicking() && !self.log_shown.get() {
            eprintln!("{}", self.process.log_report("server"));
        }
        if std::env::var_os("OXETCD_TEST_KEEP_DIR").is_some_and(|value| value == "1") {
            self.dir.disable_cleanup(true);
            eprintln!("fixture: kept {}", self.dir.path().display());
        }
    }
}

/// Runs `etcdctl --endpoints=<endpoint> args...` (`ETCDCTL_API=3`, no other `ETCDCTL_*` from the
/// environment) with optional stdin, killing it after `timeout`.
pub fn run_etcdctl(
    endpoint: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    let mut child = etcdctl_command(endpoint, args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", etcdctl_bin().display()));
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            // A write error only means etcdctl exited without reading everything.
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("waiting on etcdctl should work") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                break child.wait().expect("waiting on killed etcdctl should work");
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    if let Some(writer) = writer {
        writer.join().expect("stdin writer thread does not panic");
    }
    Output {
        status,
        stdout: stdout.join().expect("stdout reader thread does not panic"),
        stderr: stderr.join().expect("stderr reader thread does not panic"),
    }
}

/// An etcdctl command aimed at `endpoint`.
pub fn etcdctl_command(endpoint: &str, args: &[&str]) -> Command {
    let mut command = Command::new(etcdctl_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCDCTL_") {
            command.env_remove(name);
        }
    }
    // Relative paths (`snapshot save snapshot.db`) land in a scratch directory, not the checkout.
    let cwd = std::env::temp_dir().join(format!("oxetcd-etcdctl-{}", std::process::id()));
    std::fs::create_dir_all(&cwd).expect("creating etcdctl's working directory should work");
    command
        .current_dir(cwd)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args);
    command
}

fn drain<R: Read + Send + 'static>(mut reader: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    })
}

/// `text` without the JSON log lines etcdctl's client library writes to stderr
/// (lines starting with `{"level":`), which carry timestamps, random target ids and ports.
pub fn without_client_logs(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| !line.starts_with(CLIENT_LOG_PREFIX))
        .collect()
}

const CLIENT_LOG_PREFIX: &str = "{\"level\":";

/// Whether `status` is what a graceful SIGTERM stop may end in: exit code 0, or death by SIGTERM
/// itself (etcd 3.4 runs its shutdown handlers and then re-raises the signal).
pub fn stopped_by_sigterm(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.code() == Some(0) || status.signal() == Some(rustix::process::Signal::TERM.as_raw())
}

/// Stdout of an etcdctl run as text.
pub fn stdout_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr of an etcdctl run as text.
pub fn stderr_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Rewrites the parts of etcdctl output that differ between servers and runs (see
/// tests/reference/etcd-3.4/README.md) into fixed placeholders, so two outputs can be compared.
///
/// Rules apply in the order added. `literal` replaces an exact string everywhere; `digits_after`
/// replaces the run of ASCII digits (optionally `-`-signed) right after each `marker`;
/// `rest_of_line_after` replaces everything from `marker` to the end of that line.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
enum Rule {
    Literal { from: String, to: String },
    DigitsAfter { marker: String, to: String },
    RestOfLineAfter { marker: String, to: String },
    DropClientLogs,
    JsonString { marker: String, to: String },
}

impl Normalizer {
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// The usual rules for one server: etcd client library log lines dropped, its endpoint, member
    /// and cluster IDs (hex as etcdctl prints them in text, decimal as in JSON), and the header
    /// fields that differ between servers.
    pub fn for_server(endpoint: &str, member_id: u64, cluster_id: u64) -> Normalizer {
        Normalizer::new()
            .drop_client_logs()
            .literal(endpoint, "<ENDPOINT>")
            .id(member_id, "MEMBER_ID")
            .id(cluster_id, "CLUSTER_ID")
            .json_number("cluster_id")
            .json_number("member_id")
            .json_number("raft_term")
            .fields_number("ClusterID")
            .fields_number("MemberID")
            .fields_number("RaftTerm")
    }

    pub fn literal(mut self, from: &str, to: &str) -> Normalizer {
        if !from.is_empty() {
            self.rules.push(Rule::Literal {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        self
    }

    /// An ID as etcdctl prints it: decimal in JSON, fields and `alarm list` output, lower-case
    /// hex in text (unpadded for members, 16 digits for leases). All become `<NAME>`.
    pub fn id(self, id: u64, name: &str) -> Normalizer {
        if id == 0 {
            return self;
        }
        let placeholder = format!("<{name}>");
        self.literal(&id.to_string(), &placeholder)
            .literal(&format!("{id:016x}"), &placeholder)
            .literal(&format!("{id:x}"), &placeholder)
    }

    /// Drops etcdctl's client-library JSON log lines (see [`without_client_logs`]).
    pub fn drop_client_logs(mut self) -> Normalizer {
        self.rules.push(Rule::DropClientLogs);
        self
    }

    pub fn digits_after(mut self, marker: &str, to: &str) -> Normalizer {
        self.rules.push(Rule::DigitsAfter {
            marker: marker.to_string(),
            to: to.to_string(),
        });
        self
    }

    pub fn rest_of_line_after(mut self, marker: &str, to: &str) -> Normalizer {
        self.rules.push(Rule::RestOfLineAfter {
            marker: marker.to_string(),
            to: to.to_string(),
        });
        self
    }

    /// `"key":123` and `"key":"123"` (etcdctl JSON prints numbers bare; the gateway quotes them).
    pub fn json_number(self, key: &str) -> Normalizer {
        let to = format!("<{key}>");
        self.digits_after(&format!("\"{key}\":"), &to)
            .digits_after(&format!("\"{key}\":\""), &to)
    }

    /// `"key":"text"`: the string value becomes `<key>`.
    pub fn json_string(mut self, key: &str) -> Normalizer {
        self.rules.push(Rule::JsonString {
            marker: format!("\"{key}\":\""),
            to: format!("<{key}>"),
        });
        self
    }

    /// `"Key" : 123` as printed by `-w fields`.
    pub fn fields_number(self, key: &str) -> Normalizer {
        let to = format!("<{key}>");
        self.digits_after(&format!("\"{key}\" : "), &to)
    }

    pub fn apply(&self, text: &str) -> String {
        let mut text = text.to_string();
        for rule in &self.rules {
            text = match rule {
                Rule::Literal { from, to } => text.replace(from.as_str(), to),
                Rule::DigitsAfter { marker, to } => replace_after(
                    &text,
                    marker,
                    |rest| {
                        let signed = usize::from(rest.starts_with('-'));
                        let digits = rest[signed..]
                            .bytes()
                            .take_while(u8::is_ascii_digit)
                            .count();
                        if digits == 0 { 0 } else { signed + digits }
                    },
                    to,
                ),
                Rule::RestOfLineAfter { marker, to } => replace_after(
                    &text,
                    marker,
                    |rest| rest.find('\n').unwrap_or(rest.len()),
                    to,
                ),
                Rule::DropClientLogs => without_client_logs(&text),
                Rule::JsonString { marker, to } => {
                    replace_after(&text, marker, |rest| rest.find('"').unwrap_or(0), to)
                }
            };
        }
        text
    }
}

/// Replaces, after each occurrence of `marker`, the first `span(rest)` bytes with `to` (nothing
/// when the span is empty).
fn replace_after(text: &str, marker: &str, span: impl Fn(&str) -> usize, to: &str) -> String {
    if marker.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let after = at + marker.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let len = span(rest);
        if len > 0 {
            out.push_str(to);
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    out
}

/// The cells of an etcdctl `-w table` rendering, trimmed, one Vec per row (header row first);
/// border lines are skipped. Column widths depend on the content, so compare cells, not text.
pub fn table_cells(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
            inner
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

/// Path of a file under tests/reference/etcd-3.4/.
pub fn reference_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/etcd-3.4")
        .join(name)
}

/// Bytes of a reference capture, e.g. `reference("020-get-prefix.stdout")`.
pub fn reference(name: &str) -> Vec<u8> {
    let path = reference_path(name);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    bytes
}

/// A reference capture as text.
pub fn reference_text(name: &str) -> String {
    String::from_utf8(reference(name)).expect("text reference captures are UTF-8")
}

/// How long a server given bad input may take to exit.
pub const BAD_INPUT_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the server binary on a fresh data dir with `client_scheme://` client URLs,
/// `peer_scheme://` peer URLs and `args`, expecting it to exit by itself (bad input). Returns
/// the exit code, stderr, and whether the data dir was created.
pub fn run_to_exit(
    client_scheme: &str,
    peer_scheme: &str,
    args: &[String],
) -> (Option<i32>, String, bool) {
    let dir = tempfile::Builder::new()
        .prefix("oxetcd-exit-")
        .tempdir()
        .expect("creating a temp dir should work");
    let data_dir = dir.path().join("data");
    let peer = format!("{peer_scheme}://127.0.0.1:{}", free_port());
    let client = format!("{client_scheme}://127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(server_bin())
        .args([
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("default={peer}"),
        ])
        .args(args)
        .env_remove("ETCD_CERT_FILE")
        .env_remove("ETCD_KEY_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the server binary should work");
    let deadline = std::time::Instant::now() + BAD_INPUT_EXIT_TIMEOUT;
    while child.try_wait().expect("waiting on the server").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let output = child
                .wait_with_output()
                .expect("collecting the server's output");
            panic!(
                "{args:?} did not exit within {BAD_INPUT_EXIT_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(process::POLL_INTERVAL);
    }
    let output = child
        .wait_with_output()
        .expect("collecting the server's output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        data_dir.exists(),
    )
}
