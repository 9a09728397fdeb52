//! The etcd 3.4 reference captures in tests/reference/etcd-3.4/ (see its README.md): loading them,
//! normalising run-specific fields, and replaying the whole recorded command sequence against live
//! members to compare what etcdctl prints.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{Normalizer, Server, free_port, http_get, table_cells, without_client_logs};

/// Extra flags of the "limits" member in the capture script (keep in sync with
/// tests/reference/capture-etcd34.sh).
pub const LIMITS_ARGS: [&str; 6] = [
    "--max-request-bytes",
    "1024",
    "--max-txn-ops",
    "4",
    "--quota-backend-bytes",
    "131072",
];

/// Captures whose lease ID later commands refer to, with the run.env variable holding the ID
/// (`_HEX` variables are hex, the others decimal).
pub const LEASE_SOURCES: [(&str, &str); 5] = [
    ("lease-grant-for-put", "LEASE_PUT_HEX"),
    ("lease-grant", "LEASE_A_HEX"),
    ("lease-grant-json", "LEASE_JSON"),
    ("lease-grant-zero-ttl", "LEASE_ZERO_HEX"),
    ("lease-grant-1s", "LEASE_1S_HEX"),
];

/// Captures whose output differs between two etcd 3.4 runs even after normalisation (map
/// iteration order, hashes over lease IDs or file layout, Go panic addresses, binary IDs); a replay
/// compares only their exit codes.
pub const VOLATILE: [&str; 13] = [
    "lease-list",
    "lease-list-json",
    "lease-timetolive-keys",
    "lease-timetolive-keys-json",
    "endpoint-hashkv",
    "endpoint-hashkv-table",
    "endpoint-hashkv-json",
    "endpoint-hashkv-rev",
    "snapshot-status-table",
    "snapshot-status-json",
    "get-write-protobuf",
    "txn-lease-compare-panics",
    // Compacts at the limits member's current revision, which depends on how many puts it took to
    // fill the quota.
    "nospace-compaction",
];

/// Table columns whose values differ between servers and runs; compared as `<MASKED>`.
pub const MASKED_COLUMNS: [&str; 6] = [
    "VERSION",
    "DB SIZE",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "TOOK",
];

/// run.env of the capture: `NAME=value` lines.
pub fn run_env() -> BTreeMap<String, String> {
    super::reference_text("run.env")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// One recorded etcdctl run.
#[derive(Debug, Clone)]
pub struct Capture {
    pub name: String,
    /// The command line as run (first line of NAME.cmd).
    pub command_line: String,
    /// Exit status; 143 for background watches the script stopped with SIGTERM.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Capture {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Loads NAME.cmd, NAME.stdout and NAME.stderr.
pub fn capture(name: &str) -> Capture {
    let cmd = super::reference(&format!("{name}.cmd"));
    let text = String::from_utf8_lossy(&cmd).into_owned();
    let mut lines = text.splitn(3, '\n');
    let command_line = lines.next().unwrap_or_default().to_string();
    let exit_line = lines.next().unwrap_or_default();
    let exit_code = exit_line
        .strip_prefix("exit: ")
        .and_then(|code| code.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}.cmd: bad exit line {exit_line:?}"));
    Capture {
        name: name.to_string(),
        command_line,
        exit_code,
        stdout: super::reference(&format!("{name}.stdout")),
        stderr: super::reference(&format!("{name}.stderr")),
    }
}

/// Which member a recorded command went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Default flags.
    Main,
    /// Started with [`LIMITS_ARGS`].
    Limits,
    /// Nothing listens on the endpoint.
    Down,
}

/// One entry of commands.txt, in run order.
#[derive(Debug, Clone)]
pub struct Record {
    /// `run` (setup), `cap`, `watch-start`, `watch-stop`, `http` or `fill`.
    pub kind: String,
    /// Capture name, or `-` for setup commands.
    pub name: String,
    pub member: Member,
    /// etcdctl arguments after `--endpoints`; for `http`: method, path and optional body; for
    /// `fill`: key prefix and value.
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
}

/// Parses commands.txt.
pub fn records() -> Vec<Record> {
    let bytes = super::reference("commands.txt");
    let mut cursor = Cursor {
        bytes: &bytes,
        at: 0,
    };
    let mut records = Vec::new();
    while let Some(header) = cursor.line() {
        let fields: Vec<&str> = header.split(' ').collect();
        assert!(
            fields.len() == 4 && fields[0] == "@",
            "commands.txt: bad header {header:?}"
        );
        let member = match fields[3] {
            "main" => Member::Main,
            "limits" => Member::Limits,
            "down" => Member::Down,
            other => panic!("commands.txt: unknown member {other}"),
        };
        let argc_line = cursor.line().expect("argc line follows a header");
        let argc: usize = argc_line
            .strip_prefix("argc ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("commands.txt: bad argc line {argc_line:?}"));
        let args = (0..argc)
            .map(|_| cursor.line().expect("argument line"))
            .collect();
        let stdin = if cursor.rest().starts_with(b"stdin ") {
            let line = cursor.line().expect("stdin line");
            let len: usize = line["stdin ".len()..]
                .parse()
                .expect("stdin length is a number");
            let stdin = cursor.take(len + 1);
            Some(stdin[..len].to_vec())
        } else {
            None
        };
        records.push(Record {
            kind: fields[1].to_string(),
            name: fields[2].to_string(),
            member,
            args,
            stdin,
        });
    }
    records
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at.min(self.bytes.len())..]
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let rest = self.rest();
        let taken = &rest[..len.min(rest.len())];
        self.at += taken.len();
        taken
    }

    fn line(&mut self) -> Option<String> {
        let rest = self.rest();
        if rest.is_empty() {
            return None;
        }
        let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        self.at += len + 1;
        Some(String::from_utf8_lossy(&rest[..len]).into_owned())
    }
}

/// The run-specific values of one side of a comparison; both sides map them to the same
/// placeholders.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub endpoints: Vec<String>,
    pub peer_urls: Vec<String>,
    pub member_ids: Vec<u64>,
    pub cluster_ids: Vec<u64>,
    /// (lease ID, placeholder name such as `LEASE_A`).
    pub leases: Vec<(u64, String)>,
}

impl Ids {
    /// The values the reference run recorded in run.env (leases included).
    pub fn of_reference() -> Ids {
        let env = run_env();
        let get = |name: &str| env.get(name).cloned().unwrap_or_default();
        let dec = |name: &str| get(name).parse::<u64>().unwrap_or(0);
        let leases = LEASE_SOURCES
            .iter()
            .map(|(_, var)| (lease_from_env(&get(var), var), lease_placeholder(var)))
            .collect();
        Ids {
            endpoints: vec![
                get("ENDPOINT"),
                get("LIMITS_ENDPOINT"),
                get("DOWN_ENDPOINT"),
            ],
            peer_urls: vec![get("PEER_URL"), get("LIMITS_PEER_URL")],
            member_ids: vec![dec("MEMBER_ID"), dec("LIMITS_MEMBER_ID")],
            cluster_ids: vec![dec("CLUSTER_ID"), dec("LIMITS_CLUSTER_ID")],
            leases,
        }
    }

    /// The normaliser for this side: drops client logs, replaces endpoints, peer URLs, IDs and
    /// leases by placeholders, and masks timing, sizes, raft terms and indexes, and versions.
    pub fn normalizer(&self) -> Normalizer {
        let mut normalizer = Normalizer::new().drop_client_logs();
        let mut urls: Vec<(&String, &str)> = self
            .endpoints
            .iter()
            .map(|url| (url, "<ENDPOINT>"))
            .chain(self.peer_urls.iter().map(|url| (url, "<PEER_URL>")))
            .collect();
        // Longest first, so no URL is replaced inside a longer one.
        urls.sort_by_key(|(url, _)| std::cmp::Reverse(url.len()));
        for (url, placeholder) in urls {
            normalizer = normalizer.literal(url, placeholder);
        }
        for &id in &self.member_ids {
            normalizer = normalizer.id(id, "MEMBER_ID");
        }
        for &id in &self.cluster_ids {
            normalizer = normalizer.id(id, "CLUSTER_ID");
        }
        for (id, name) in &self.leases {
            normalizer = normalizer.id(*id, name);
        }
        volatile_fields(normalizer)
    }
}

/// Masks that apply to every capture: durations, raft terms and indexes, db sizes, remaining
/// TTLs, and the server version strings.
pub fn volatile_fields(normalizer: Normalizer) -> Normalizer {
    normalizer
        .rest_of_line_after("took = ", "<DURATION>")
        .json_string("took")
        .json_number("raft_term")
        .json_number("raftTerm")
        .json_number("raftIndex")
        .json_number("raftAppliedIndex")
        .json_number("dbSize")
        .json_number("dbSizeInUse")
        .json_number("ttl")
        .fields_number("RaftTerm")
        .digits_after("remaining(", "<N>")
        .json_string("version")
        .json_string("etcdserver")
        .json_string("etcdcluster")
}

fn lease_placeholder(var: &str) -> String {
    var.trim_end_matches("_HEX").to_string()
}

fn lease_from_env(value: &str, var: &str) -> u64 {
    if var.ends_with("_HEX") {
        u64::from_str_radix(value, 16).unwrap_or(0)
    } else {
        value.parse().unwrap_or(0)
    }
}

/// The lease ID a `lease grant` capture printed (`lease <hex> granted ...`, or `"ID":<dec>` in
/// JSON).
pub fn granted_lease(stdout: &str) -> Option<u64> {
    if let Some(rest) = stdout.strip_prefix("lease ") {
        let hex = rest.split_whitespace().next()?;
        return u64::from_str_radix(hex, 16).ok();
    }
    let start = stdout.find("\"ID\":")? + "\"ID\":".len();
    stdout[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Normalised text of a capture's output for comparison: tables become masked cell rows,
/// `endpoint status` simple lines get their volatile comma-separated fields masked.
pub fn comparable(name: &str, normalizer: &Normalizer, raw: &[u8]) -> String {
    let text = normalizer.apply(&String::from_utf8_lossy(raw));
    if text.starts_with('+') {
        let rows = table_cells(&text);
        let Some(header) = rows.first() else {
            return text;
        };
        let masked: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, title)| MASKED_COLUMNS.contains(&title.as_str()))
            .map(|(index, _)| index)
            .collect();
        return rows
            .iter()
            .enumerate()
            .map(|(row_index, row)| {
                row.iter()
                    .enumerate()
                    .map(|(index, cell)| {
                        if row_index > 0 && masked.contains(&index) && !cell.is_empty() {
                            "<MASKED>".to_string()
                        } else {
                            cell.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    if name.contains("endpoint-status") && !name.ends_with("-json") {
        // ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, RAFT INDEX,
        // RAFT APPLIED INDEX, ERRORS
        return text
            .lines()
            .map(|line| {
                line.split(", ")
                    .enumerate()
                    .map(|(index, field)| {
                        if [2, 3, 6, 7, 8].contains(&index) {
                            "<MASKED>"
                        } else {
                            field
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    text
}

/// A difference found by [`replay`].
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub name: String,
    pub what: &'static str,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}:\n--- expected (etcd 3.4)\n{}\n--- actual\n{}",
            self.name, self.what, self.expected, self.actual
        )
    }
}

/// Options for [`replay`].
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only captures whose name passes this filter are compared (all records still run, so the
    /// revisions match). `None` compares all.
    pub only: Option<fn(&str) -> bool>,
}

/// Replays commands.txt, in order, against fresh members started by the fixture (the server
/// under test: oxetcd, or etcd through `OXETCD_TEST_BIN`), and returns every capture whose
/// normalised stdout, stderr or exit code differs from etcd 3.4's.
pub fn replay(options: &ReplayOptions) -> Vec<Mismatch> {
    let records = records();
    let reference_ids = Ids::of_reference();
    let mut main = Server::start();
    let mut limits: Option<Server> = None;
    let down_port = free_port();
    let down_endpoint = format!("http://127.0.0.1:{down_port}");
    let mut actual_ids = Ids {
        endpoints: vec![main.endpoint(), down_endpoint.clone()],
        peer_urls: vec![main.peer_url()],
        ..Ids::default()
    };
    let (member_id, cluster_id) = header_ids(&main);
    actual_ids.member_ids.push(member_id);
    actual_ids.cluster_ids.push(cluster_id);
    // Reference lease hex → actual lease hex, for arguments.
    let mut lease_args: Vec<(String, String)> = Vec::new();
    let mut mismatches = Vec::new();
    let mut watch: Option<(String, Child, SharedBuffer, SharedBuffer)> = None;
    let compare_name = |name: &str| options.only.is_none_or(|only| only(name));

    for record in &records {
        if record.member == Member::Limits && limits.is_none() {
            let server = Server::start_with(&LIMITS_ARGS);
            let (member_id, cluster_id) = header_ids(&server);
            actual_ids.endpoints.push(server.endpoint());
            actual_ids.peer_urls.push(server.peer_url());
            actual_ids.member_ids.push(member_id);
            actual_ids.cluster_ids.push(cluster_id);
            limits = Some(server);
        }
        let server: &mut Server = match record.member {
            Member::Limits => limits.as_mut().expect("started above"),
            _ => &mut main,
        };
        let mut args: Vec<String> = record.args.clone();
        for arg in &mut args {
            for (from, to) in &lease_args {
                if arg.contains(from.as_str()) {
                    *arg = arg.replace(from.as_str(), to);
                }
            }
        }
        if record.name == "nospace-compaction" {
            // The script compacts at the limits member's current revision, which depends on how
            // many puts filled its quota.
            args = vec![
                "compaction".to_string(),
                current_revision(server).to_string(),
            ];
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let endpoint = if record.member == Member::Down {
            down_endpoint.clone()
        } else {
            server.endpoint()
        };
        let run = |arg_refs: &[&str]| {
            super::run_etcdctl(
                &endpoint,
                arg_refs,
                record.stdin.as_deref(),
                super::ETCDCTL_TIMEOUT,
            )
        };
        match record.kind.as_str() {
            "run" => {
                let output = run(&arg_refs);
                if !output.status.success() {
                    mismatches.push(Mismatch {
                        name: format!("setup {args:?}"),
                        what: "exit code",
                        expected: "0".to_string(),
                        actual: format!(
                            "{}\n{}",
                            output.status,
                            String::from_utf8_lossy(&output.stderr)
                        ),
                    });
                }
            }
            "cap" => {
                let output = run(&arg_refs);
                let expected = capture(&record.name);
                if let Some((_, var)) = LEASE_SOURCES.iter().find(|(name, _)| *name == record.name)
                {
                    let actual_text = String::from_utf8_lossy(&output.stdout).into_owned();
                    let reference_lease = reference_ids
                        .leases
                        .iter()
                        .find(|(_, placeholder)| *placeholder == lease_placeholder(var))
                        .map(|(id, _)| *id);
                    if let (Some(reference), Some(actual)) =
                        (reference_lease, granted_lease(&actual_text))
                    {
                        lease_args.push((format!("{reference:x}"), format!("{actual:x}")));
                        actual_ids.leases.push((actual, lease_placeholder(var)));
                    }
                }
                if compare_name(&record.name) {
                    compare(
                        &expected,
                        output.status.code().unwrap_or(-1),
                        &output.stdout,
                        &output.stderr,
                        &reference_ids,
                        &actual_ids,
                        &mut mismatches,
                    );
                }
            }
            "watch-start" => {
                let mut child = super::etcdctl_command(&endpoint, &arg_refs)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("etcdctl spawns");
                if let (Some(stdin), Some(pipe)) = (&record.stdin, child.stdin.as_mut()) {
                    use std::io::Write;
                    let _ = pipe.write_all(stdin);
                }
                let stdout = SharedBuffer::reading(child.stdout.take().expect("piped"));
                let stderr = SharedBuffer::reading(child.stderr.take().expect("piped"));
                let live = records_follow_with_writes(&records, record);
                watch = Some((record.name.clone(), child, stdout, stderr));
                if live {
                    wait_for_watcher(server);
                }
            }
            "watch-stop" => {
                let (name, mut child, stdout, stderr) =
                    watch.take().expect("watch-start came first");
                // Like the capture script: stop once stdout has been non-empty and unchanged for
                // 1 s, or the process exited, or after 15 s.
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut exited = None;
                let mut last_len = usize::MAX;
                let mut quiet_since = Instant::now();
                while Instant::now() < deadline {
                    if let Some(status) = child.try_wait().expect("waiting on etcdctl works") {
                        exited = Some(status);
                        break;
                    }
                    let len = stdout.len();
                    if len != last_len {
                        last_len = len;
                        quiet_since = Instant::now();
                    } else if len > 0 && quiet_since.elapsed() >= Duration::from_secs(1) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                if exited.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                drop(child.stdin.take());
                let stdout = stdout.finish();
                let stderr = stderr.finish();
                let expected = capture(&name);
                let code = exited.and_then(|status| status.code()).unwrap_or(143);
                if compare_name(&name) {
                    compare(
                        &expected,
                        code,
                        &stdout,
                        &stderr,
                        &reference_ids,
                        &actual_ids,
                        &mut mismatches,
                    );
                }
            }
            "http" => {
                let response = match args[0].as_str() {
                    "GET" => http_get(local(server), &args[1]),
                    _ => super::http_post_json(local(server), &args[1], &args[2]),
                };
                let expected_text = super::reference_text(&format!("{}.http", record.name));
                let actual_text = match response {
                    Ok(response) => super::http_summary(&response),
                    Err(err) => format!("error: {err}"),
                };
                let (ref_norm, act_norm) = (reference_ids.normalizer(), actual_ids.normalizer());
                let (expected, actual) =
                    (ref_norm.apply(&expected_text), act_norm.apply(&actual_text));
                if compare_name(&record.name) && expected != actual {
                    mismatches.push(Mismatch {
                        name: record.name.clone(),
                        what: "http",
                        expected,
                        actual,
                    });
                }
            }
            "fill" => {
                let value = args[1].as_str();
                let filled = (1..=5000).find(|index| {
                    let key = format!("{}{index}", args[0]);
                    !server.etcdctl(&["put", &key, value]).status.success()
                });
                if filled.is_none() {
                    mismatches.push(Mismatch {
                        name: "fill".to_string(),
                        what: "quota",
                        expected: "a put fails with NOSPACE".to_string(),
                        actual: "5000 puts succeeded".to_string(),
                    });
                }
            }
            other => panic!("commands.txt: unknown kind {other}"),
        }
    }
    mismatches
}

fn compare(
    expected: &Capture,
    exit_code: i32,
    stdout: &[u8],
    stderr: &[u8],
    reference_ids: &Ids,
    actual_ids: &Ids,
    mismatches: &mut Vec<Mismatch>,
) {
    if expected.exit_code != exit_code {
        mismatches.push(Mismatch {
            name: expected.name.clone(),
            what: "exit code",
            expected: expected.exit_code.to_string(),
            actual: format!(
                "{exit_code}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(stdout),
                without_client_logs(&String::from_utf8_lossy(stderr))
            ),
        });
    }
    if VOLATILE.contains(&expected.name.as_str()) {
        return;
    }
    let (ref_norm, act_norm) = (reference_ids.normalizer(), actual_ids.normalizer());
    for (what, want, got) in [
        ("stdout", &expected.stdout[..], stdout),
        ("stderr", &expected.stderr[..], stderr),
    ] {
        let want = comparable(&expected.name, &ref_norm, want);
        let got = comparable(&expected.name, &act_norm, got);
        if want != got {
            mismatches.push(Mismatch {
                name: expected.name.clone(),
                what,
                expected: want,
                actual: got,
            });
        }
    }
}

fn local(server: &Server) -> std::net::SocketAddr {
    std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, server.client_port()))
}

/// Output of a running process, readable while it grows.
struct SharedBuffer {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: thread::JoinHandle<()>,
}

impl SharedBuffer {
    fn reading<R: Read + Send + 'static>(mut source: R) -> SharedBuffer {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bytes);
        let reader = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(read) = source.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                sink.lock()
                    .expect("buffer lock is never poisoned")
                    .extend_from_slice(&chunk[..read]);
            }
        });
        SharedBuffer { bytes, reader }
    }

    fn len(&self) -> usize {
        self.bytes
            .lock()
            .expect("buffer lock is never poisoned")
            .len()
    }

    /// Waits for end of stream (the process is gone) and returns everything read.
    fn finish(self) -> Vec<u8> {
        self.reader.join().expect("reader thread does not panic");
        let bytes = self.bytes.lock().expect("buffer lock is never poisoned");
        bytes.clone()
    }
}

/// Whether setup writes come between this watch-start and its watch-stop (a live watch, which
/// must be registered before them).
fn records_follow_with_writes(records: &[Record], start: &Record) -> bool {
    let position = records
        .iter()
        .position(|record| std::ptr::eq(record, start))
        .expect("record comes from this slice");
    records[position + 1..]
        .iter()
        .take_while(|record| record.kind != "watch-stop")
        .any(|record| record.kind == "run")
}

/// Waits until the member reports a registered watcher through etcd's
/// `etcd_debugging_mvcc_watcher_total` gauge. A server without that metric gets 1 s instead.
fn wait_for_watcher(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let metrics = server.http_get("/metrics").text();
        let Some(line) = metrics
            .lines()
            .find(|line| line.starts_with("etcd_debugging_mvcc_watcher_total "))
        else {
            thread::sleep(Duration::from_secs(1));
            return;
        };
        if line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 1.0)
        {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("no watcher registered within 10 s");
}

/// Current revision, member ID and cluster ID from a `get -w json` header.
fn header_ids(server: &Server) -> (u64, u64) {
    let json = server.etcdctl_ok(&["get", "revision-probe", "-w", "json"]);
    (json_u64(&json, "member_id"), json_u64(&json, "cluster_id"))
}

fn current_revision(server: &Server) -> u64 {
    let json = server.etcdctl_ok(&["get", "revision-probe", "-w", "json"]);
    json_u64(&json, "revision")
}

fn json_u64(json: &str, key: &str) -> u64 {
    let marker = format!("\"{key}\":");
    let start = json
        .find(&marker)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + marker.len();
    json[start..]
        .trim_start_matches('"')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}
