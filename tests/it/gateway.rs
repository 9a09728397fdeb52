//! Black-box tests of the JSON gateway on the client URL (`POST /v3/...`), through `minreq` and
//! `curl`: every answer is compared with what etcd 3.4.23 answers to the same request (recorded
//! here, with the IDs and terms that differ between servers normalised), and each test also runs
//! against etcd with `OXETCD_TEST_BIN=/usr/bin/etcd`.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{HttpResponse, Normalizer, Server, http_get, http_post_json};

/// Bound on one line of a stream arriving.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

fn addr(server: &Server) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, server.client_port()))
}

fn post(server: &Server, path: &str, body: &str) -> HttpResponse {
    http_post_json(addr(server), path, body).unwrap()
}

fn post_with(server: &Server, path: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
    common::http::http_post_json_with(addr(server), path, body, headers).unwrap()
}

/// The header fields that differ between two servers, and `extra` JSON numbers.
fn normalizer(extra: &[&str]) -> Normalizer {
    let mut normalizer = Normalizer::new()
        .json_number("cluster_id")
        .json_number("member_id")
        .json_number("raft_term");
    for key in extra {
        normalizer = normalizer.json_number(key);
    }
    normalizer
}

/// Posts each `(path, body)` and checks the HTTP status, `Content-Type: application/json` and the
/// normalised body against etcd's.
fn expect_answers(server: &Server, normalizer: &Normalizer, cases: &[(&str, &str, u16, &str)]) {
    for (path, body, status, expected) in cases {
        let response = post(server, path, body);
        assert_eq!(
            (response.status, normalizer.apply(&response.text())),
            (*status, expected.to_string()),
            "POST {path} {body}"
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "POST {path} {body}"
        );
    }
}

/// The value of `"key":"<digits>"` in `json`.
fn json_u64(json: &str, key: &str) -> u64 {
    let marker = format!("\"{key}\":\"");
    let start = json
        .find(&marker)
        .unwrap_or_else(|| panic!("{key} in {json}"))
        + marker.len();
    json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The value of `"key":"<text>"` in `json`.
fn json_str(json: &str, key: &str) -> String {
    let marker = format!("\"{key}\":\"");
    let start = json
        .find(&marker)
        .unwrap_or_else(|| panic!("{key} in {json}"))
        + marker.len();
    json[start..].chars().take_while(|c| *c != '"').collect()
}

/// A `curl` reading a streaming gateway answer, line by line.
struct CurlStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CurlStream {
    fn start(server: &Server, path: &str, body: &str, headers: &[&str]) -> CurlStream {
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "-N",
                "--max-time",
                "60",
                "-H",
                "Content-Type: application/json",
            ])
            .args(headers.iter().flat_map(|h| ["-H", h]))
            .args(["--data-binary", body])
            .arg(format!("{}{path}", server.endpoint()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("curl runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CurlStream { child, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("a stream line within the timeout")
    }

    /// Whether the answer ends (curl exits) with no further line.
    fn ends(&mut self) -> bool {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Disconnected) => self.child.wait().unwrap().success(),
            _ => false,
        }
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's status and body for one POST.
fn curl(server: &Server, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .args(["--data-binary", body])
        .arg(format!("{}{path}", server.endpoint()))
        .output()
        .expect("curl runs");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

#[test]
fn kv_calls_round_trip_with_base64_keys_and_string_revisions() {
    let server = Server::start();
    let n = normalizer(&[]);
    let header = |revision: u32| {
        format!(
            r#"{{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"{revision}","raft_term":"<raft_term>"}}"#
        )
    };
    let cases: Vec<(&str, &str, u16, String)> = vec![
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmFy"}"#,
            200,
            format!(r#"{{"header":{}}}"#, header(2)),
        ),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
            200,
            format!(
                r#"{{"header":{},"prev_kv":{{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}}}"#,
                header(3)
            ),
        ),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v"}"#,
            200,
            format!(
                r#"{{"header":{},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}],"count":"1"}}"#,
                header(3)
            ),
        ),
        // camelCase names, numbers for int64s and enum names are accepted too.
        (
            "/v3/kv/range",
            r#"{"key":"AA==","rangeEnd":"AA==","keysOnly":true,"limit":1,"sort_order":"DESCEND"}"#,
            200,
            format!(
                r#"{{"header":{},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2"}}],"count":"1"}}"#,
                header(3)
            ),
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"YQ==","value":"MQ=="}},{"requestRange":{"key":"Zm9v"}}],"failure":[{"request_delete_range":{"key":"Zm9v"}}]}"#,
            200,
            format!(
                r#"{{"header":{},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"4"}}}}}},{{"response_range":{{"header":{{"revision":"4"}},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}],"count":"1"}}}}]}}"#,
                header(4)
            ),
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"YQ==","result":"GREATER","target":"VERSION","version":"5"}],"failure":[{"request_delete_range":{"key":"YQ=="}}]}"#,
            200,
            format!(
                r#"{{"header":{},"responses":[{{"response_delete_range":{{"header":{{"revision":"5"}},"deleted":"1"}}}}]}}"#,
                header(5)
            ),
        ),
        (
            "/v3/kv/deleterange",
            r#"{"key":"Zm9v","prev_kv":true}"#,
            200,
            format!(
                r#"{{"header":{},"deleted":"1","prev_kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}]}}"#,
                header(6)
            ),
        ),
        // Unknown fields are ignored; nothing found leaves kvs and count out.
        (
            "/v3beta/kv/range",
            r#"{"key":"Zm9v","no_such_field":1}"#,
            200,
            format!(r#"{{"header":{}}}"#, header(6)),
        ),
        (
            "/v3/kv/compaction",
            r#"{"revision":"3"}"#,
            200,
            format!(r#"{{"header":{}}}"#, header(6)),
        ),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","revision":"2"}"#,
            400,
            r#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#
                .to_string(),
        ),
        (
            "/v3/kv/range",
            r#"{"key":"Zm9v","revision":"100"}"#,
            400,
            r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#
                .to_string(),
        ),
        (
            "/v3/kv/put",
            r#"{"key":"","value":"YmFy"}"#,
            400,
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
                .to_string(),
        ),
        // An empty body is the empty request.
        (
            "/v3/kv/range",
            "",
            400,
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
                .to_string(),
        ),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","lease":"123"}"#,
            404,
            r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#
                .to_string(),
        ),
    ];
    let cases: Vec<(&str, &str, u16, &str)> = cases
        .iter()
        .map(|(path, body, status, expected)| (*path, *body, *status, expected.as_str()))
        .collect();
    expect_answers(&server, &n, &cases);

    // The same through curl, as a user types it.
    let (status, body) = curl(
        &server,
        "/v3/kv/put",
        r#"{"key":"Yg==","value":"Mg=="}"#,
        &[],
    );
    assert_eq!(
        (status, n.apply(&body)),
        (200, format!(r#"{{"header":{}}}"#, header(7)))
    );
    let (status, body) = curl(&server, "/v3/kv/range", r#"{"key":"Yg=="}"#, &[]);
    assert_eq!(
        (status, n.apply(&body)),
        (
            200,
            format!(
                r#"{{"header":{},"kvs":[{{"key":"Yg==","create_revision":"7","mod_revision":"7","version":"1","value":"Mg=="}}],"count":"1"}}"#,
                header(7)
            )
        )
    );
}

#[test]
fn bad_requests_and_unknown_paths_answer_as_etcd() {
    let server = Server::start();
    for body in [
        "{bad",
        "[]",
        r#"{"key":"Zm9v","limit":1.5}"#,
        r#"{"key":"Zm9v","sort_order":"BOGUS"}"#,
    ] {
        let response = post(&server, "/v3/kv/range", body);
        assert_eq!(response.status, 400, "{body}: {}", response.text());
        let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(answer["code"], 3, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{body}: {answer}");
        assert_eq!(answer["error"], answer["message"], "{body}: {answer}");
    }
    // The first message of a stream that is not JSON: code Unknown.
    let response = post(&server, "/v3/watch", "{bad");
    assert_eq!(response.status, 500, "{}", response.text());
    let answer: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer["code"], 2, "{answer}");

    for path in ["/v3/kv/rangex", "/v3/no/such/call", "/v3beta/kv/nothing"] {
        let response = post(&server, path, "{}");
        assert_eq!(
            (response.status, response.text().as_str()),
            (404, "Not Found\n"),
            "{path}"
        );
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    let response = http_get(addr(&server), "/v3/kv/range").unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (405, "Method Not Allowed\n")
    );

    // FailedPrecondition is 412 in grpc-gateway v1.
    expect_answers(
        &server,
        &normalizer(&[]),
        &[(
            "/v3/auth/enable",
            "{}",
            412,
            r#"{"error":"etcdserver: root user does not exist","message":"etcdserver: root user does not exist","code":9}"#,
        )],
    );
}

#[test]
fn a_watch_streams_the_events_of_puts_and_deletes() {
    let server = Server::start();
    let n = normalizer(&[]);
    let watch = CurlStream::start(
        &server,
        "/v3/watch",
        r#"{"create_request":{"key":"dw==","prev_kv":true}}"#,
        &[],
    );
    assert_eq!(
        n.apply(&watch.next_line()),
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"1","raft_term":"<raft_term>"},"created":true}}"#
    );
    post(&server, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#);
    post(&server, "/v3/kv/put", r#"{"key":"dw==","value":"Mg=="}"#);
    post(&server, "/v3/kv/put", r#"{"key":"eA==","value":"MA=="}"#);
    post(&server, "/v3/kv/deleterange", r#"{"key":"dw=="}"#);
    let expected = [
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"2","raft_term":"<raft_term>"},"events":[{"kv":{"key":"dw==","create_revision":"2","mod_revision":"2","version":"1","value":"MQ=="}}]}}"#,
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"3","raft_term":"<raft_term>"},"events":[{"kv":{"key":"dw==","create_revision":"2","mod_revision":"3","version":"2","value":"Mg=="},"prev_kv":{"key":"dw==","create_revision":"2","mod_revision":"2","version":"1","value":"MQ=="}}]}}"#,
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"5","raft_term":"<raft_term>"},"events":[{"type":"DELETE","kv":{"key":"dw==","mod_revision":"5"},"prev_kv":{"key":"dw==","create_revision":"2","mod_revision":"3","version":"2","value":"Mg=="}}]}}"#,
    ];
    for line in expected {
        assert_eq!(n.apply(&watch.next_line()), line);
    }
}

#[test]
fn a_watch_takes_more_requests_from_the_body() {
    let server = Server::start();
    let n = normalizer(&[]);
    post(&server, "/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#);
    // Two watches in one body: the second from revision 1 sees the earlier put.
    let watch = CurlStream::start(
        &server,
        "/v3/watch",
        r#"{"create_request":{"key":"Yg==","watch_id":"7"}}
           {"create_request":{"key":"YQ==","start_revision":"1","watch_id":"8"}}"#,
        &[],
    );
    let mut lines: Vec<String> = (0..3).map(|_| n.apply(&watch.next_line())).collect();
    lines.sort();
    let mut expected = vec![
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"2","raft_term":"<raft_term>"},"watch_id":"7","created":true}}"#,
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"2","raft_term":"<raft_term>"},"watch_id":"8","created":true}}"#,
        r#"{"result":{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"2","raft_term":"<raft_term>"},"watch_id":"8","events":[{"kv":{"key":"YQ==","create_revision":"2","mod_revision":"2","version":"1","value":"MQ=="}}]}}"#,
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn leases_are_granted_kept_alive_and_revoked() {
    let server = Server::start();
    let n = normalizer(&[]);
    let h = r#"{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"1","raft_term":"<raft_term>"}"#;
    let h2 = h.replace(r#""revision":"1""#, r#""revision":"2""#);
    let h3 = h.replace(r#""revision":"1""#, r#""revision":"3""#);
    let cases = [
        (
            "/v3/lease/grant",
            r#"{"TTL":30,"ID":"1000"}"#,
            200,
            format!(r#"{{"header":{h},"ID":"1000","TTL":"30"}}"#),
        ),
        (
            "/v3/kv/put",
            r#"{"key":"bA==","value":"dg==","lease":"1000"}"#,
            200,
            format!(r#"{{"header":{h2}}}"#),
        ),
        (
            "/v3/lease/leases",
            "{}",
            200,
            format!(r#"{{"header":{h2},"leases":[{{"ID":"1000"}}]}}"#),
        ),
        (
            "/v3/kv/lease/leases",
            "{}",
            200,
            format!(r#"{{"header":{h2},"leases":[{{"ID":"1000"}}]}}"#),
        ),
    ];
    for (path, body, status, expected) in &cases {
        let response = post(&server, path, body);
        assert_eq!(
            (response.status, n.apply(&response.text())),
            (*status, expected.clone()),
            "{path}"
        );
    }
    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let response = post(&server, path, r#"{"ID":"1000","keys":true}"#);
        let ttl = json_u64(&response.text(), "TTL");
        assert!((28..=30).contains(&ttl), "{}", response.text());
        assert_eq!(
            n.apply(&response.text())
                .replace(&format!(r#""TTL":"{ttl}""#), r#""TTL":"<ttl>""#),
            format!(
                r#"{{"header":{h2},"ID":"1000","TTL":"<ttl>","grantedTTL":"30","keys":["bA=="]}}"#
            ),
            "{path}"
        );
    }

    // One keep-alive per request in the body; the answer ends with the body.
    let mut keep_alive = CurlStream::start(&server, "/v3/lease/keepalive", r#"{"ID":"1000"}"#, &[]);
    assert_eq!(
        n.apply(&keep_alive.next_line()),
        format!(r#"{{"result":{{"header":{h2},"ID":"1000","TTL":"30"}}}}"#)
    );
    assert!(
        keep_alive.ends(),
        "the keep-alive answer ends with its body"
    );

    expect_answers(
        &server,
        &n,
        &[
            (
                "/v3/lease/revoke",
                r#"{"ID":"1000"}"#,
                200,
                &format!(r#"{{"header":{h3}}}"#),
            ),
            (
                "/v3/kv/lease/revoke",
                r#"{"ID":"1000"}"#,
                404,
                r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
            ),
            (
                "/v3/lease/timetolive",
                r#"{"ID":"1000"}"#,
                200,
                &format!(r#"{{"header":{h3},"ID":"1000","TTL":"-1"}}"#),
            ),
            (
                "/v3/kv/range",
                r#"{"key":"bA=="}"#,
                200,
                &format!(r#"{{"header":{h3}}}"#),
            ),
        ],
    );
}

#[test]
fn maintenance_and_member_list_answer_as_etcd() {
    let server = Server::start();
    let status = post(&server, "/v3/maintenance/status", "{}");
    assert_eq!(status.status, 200);
    let text = status.text();
    let member_id = json_u64(&text, "member_id");
    let ids = normalizer(&[
        "dbSize",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "dbSizeInUse",
        "leader",
        "revision",
    ])
    .json_string("version")
    .json_number("dbSizeQuota")
    .json_string("storageVersion")
    .json_string("oxetcd_version");
    // oxetcd answers Status with etcd 3.6's `storageVersion` and `dbSizeQuota`, and its own
    // version, after the fields etcd 3.4 has.
    let extra = r#","storageVersion":"<storageVersion>","dbSizeQuota":"<dbSizeQuota>","oxetcd_version":"<oxetcd_version>"}"#;
    let normalized = ids.apply(&text);
    let normalized = match normalized.strip_suffix(extra) {
        Some(etcd_34) if !common::running_real_etcd() => format!("{etcd_34}}}"),
        _ => normalized,
    };
    assert_eq!(
        normalized,
        r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"<revision>","raft_term":"<raft_term>"},"version":"<version>","dbSize":"<dbSize>","leader":"<leader>","raftIndex":"<raftIndex>","raftTerm":"<raftTerm>","raftAppliedIndex":"<raftAppliedIndex>","dbSizeInUse":"<dbSizeInUse>"}"#
    );
    assert_eq!(json_u64(&text, "leader"), member_id);

    let n = normalizer(&[])
        .literal(&member_id.to_string(), "<MEMBER_ID>")
        .literal(&server.endpoint(), "<CLIENT_URL>")
        .literal(&server.peer_url(), "<PEER_URL>");
    let list = post(&server, "/v3/cluster/member/list", "{}");
    assert_eq!(
        (list.status, n.apply(&list.text())),
        (
            200,
            r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","raft_term":"<raft_term>"},"members":[{"ID":"<MEMBER_ID>","name":"node1","peerURLs":["<PEER_URL>"],"clientURLs":["<CLIENT_URL>"]}]}"#
                .to_string()
        )
    );
    let hash = post(&server, "/v3/maintenance/hash", "{}");
    assert_eq!(
        (hash.status, n.apply(&hash.text()).split(r#""hash":"#).next().unwrap().to_string()),
        (
            200,
            r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"1","raft_term":"<raft_term>"},"#
                .to_string()
        ),
        "hash is a uint32, so a JSON number: {}",
        hash.text()
    );
    assert!(hash.text().ends_with('}') && !hash.text().contains(r#""hash":""#));

    // A snapshot streams its bytes in base64 lines; etcdctl's rule holds for the whole.
    let (status, body) = curl(&server, "/v3/maintenance/snapshot", "{}", &[]);
    assert_eq!(status, 200);
    let mut total = 0;
    for line in body.lines() {
        assert!(line.starts_with(r#"{"result":{"#), "{line}");
        total += base64_len(&json_str(line, "blob"));
    }
    assert!(total > 0 && total % 512 == 32, "{total} bytes");
}

/// The decoded length of standard base64 text.
fn base64_len(text: &str) -> usize {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count();
    text.len() / 4 * 3 - padding
}

#[test]
fn auth_takes_the_token_from_the_authorization_header() {
    let server = Server::start();
    let n = normalizer(&["revision"]).json_string("token");
    let ok = r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"<revision>","raft_term":"<raft_term>"}}"#;
    let refused = |message: &str, code: u32| {
        format!(r#"{{"error":"{message}","message":"{message}","code":{code}}}"#)
    };
    expect_answers(
        &server,
        &n,
        &[
            (
                "/v3/auth/user/add",
                r#"{"name":"root","password":"pw"}"#,
                200,
                ok,
            ),
            ("/v3/auth/role/add", r#"{"name":"root"}"#, 200, ok),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#,
                200,
                ok,
            ),
            ("/v3/auth/role/add", r#"{"name":"r"}"#, 200, ok),
            (
                "/v3/auth/role/grant",
                r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}}"#,
                200,
                ok,
            ),
            (
                "/v3/auth/role/get",
                r#"{"role":"r"}"#,
                200,
                r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"<revision>","raft_term":"<raft_term>"},"perm":[{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}]}"#,
            ),
            (
                "/v3/auth/user/add",
                r#"{"name":"u","password":"p"}"#,
                200,
                ok,
            ),
            ("/v3/auth/user/grant", r#"{"user":"u","role":"r"}"#, 200, ok),
            (
                "/v3/auth/user/get",
                r#"{"name":"u"}"#,
                200,
                r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"<revision>","raft_term":"<raft_term>"},"roles":["r"]}"#,
            ),
            ("/v3/auth/enable", "{}", 200, ok),
            (
                "/v3/kv/range",
                r#"{"key":"YQ=="}"#,
                400,
                &refused("etcdserver: user name is empty", 3),
            ),
            (
                "/v3/auth/authenticate",
                r#"{"name":"root","password":"bad"}"#,
                400,
                &refused(
                    "etcdserver: authentication failed, invalid user ID or password",
                    3,
                ),
            ),
            (
                "/v3/maintenance/hash",
                "{}",
                500,
                &refused("auth: user name is empty", 2),
            ),
        ],
    );
    let authenticate = post(
        &server,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
    );
    assert_eq!(
        (authenticate.status, n.apply(&authenticate.text())),
        (
            200,
            r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"<revision>","raft_term":"<raft_term>"},"token":"<token>"}"#
                .to_string()
        )
    );
    let root = json_str(&authenticate.text(), "token");
    let user = json_str(
        &post(
            &server,
            "/v3/auth/authenticate",
            r#"{"name":"u","password":"p"}"#,
        )
        .text(),
        "token",
    );

    let answer = |path: &str, body: &str, headers: &[(&str, &str)]| {
        let response = post_with(&server, path, body, headers);
        (response.status, n.apply(&response.text()))
    };
    assert_eq!(
        answer(
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"MQ=="}"#,
            &[("Authorization", &root)]
        ),
        (200, ok.to_string())
    );
    assert_eq!(
        answer(
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"Mg=="}"#,
            &[("Authorization", &user)]
        ),
        (200, ok.to_string())
    );
    assert_eq!(
        answer(
            "/v3/kv/put",
            r#"{"key":"Yw=="}"#,
            &[("Authorization", &user)]
        ),
        (403, refused("etcdserver: permission denied", 7))
    );
    assert_eq!(
        answer("/v3/maintenance/hash", "{}", &[("Authorization", &user)]),
        (500, refused("auth: permission denied", 2))
    );
    // The token alone: no "Bearer ".
    for token in [format!("Bearer {root}"), "bogus".to_string()] {
        assert_eq!(
            answer(
                "/v3/kv/range",
                r#"{"key":"YQ=="}"#,
                &[("Authorization", &token)]
            ),
            (401, refused("etcdserver: invalid auth token", 16)),
            "{token}"
        );
    }
    // A `token` header is not gRPC metadata through the gateway.
    assert_eq!(
        answer("/v3/kv/range", r#"{"key":"YQ=="}"#, &[("token", &root)]),
        (400, refused("etcdserver: user name is empty", 3))
    );

    // A stream refused before its first message: the error object with the status's HTTP code.
    let (status, body) = curl(&server, "/v3/maintenance/snapshot", "{}", &[]);
    assert_eq!(
        (status, body.as_str()),
        (
            500,
            r#"{"error":{"grpc_code":2,"http_code":500,"message":"auth: user name is empty","http_status":"Internal Server Error"}}"#
        )
    );
    let (status, body) = curl(
        &server,
        "/v3/kv/range",
        r#"{"key":"YQ=="}"#,
        &[&format!("Authorization: {root}")],
    );
    assert_eq!(
        (status, n.apply(&body)),
        (
            200,
            r#"{"header":{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"<revision>","raft_term":"<raft_term>"},"kvs":[{"key":"YQ==","create_revision":"<create_revision>","mod_revision":"<mod_revision>","version":"2","value":"Mg=="}],"count":"1"}"#
                .replace("<create_revision>", &json_u64(&body, "create_revision").to_string())
                .replace("<mod_revision>", &json_u64(&body, "mod_revision").to_string())
        )
    );
    assert_eq!(
        answer("/v3/auth/disable", "{}", &[("Authorization", &root)]),
        (200, ok.to_string())
    );
    assert_eq!(
        answer("/v3/kv/range", r#"{"key":"Yw=="}"#, &[]),
        (200, ok.to_string())
    );
}

/// Campaign, leader, proclaim, observe, resign, lock and unlock.
#[test]
fn elections_and_locks_answer_as_etcd() {
    let server = Server::start();
    let grant = post(&server, "/v3/lease/grant", r#"{"TTL":60}"#);
    let lease = json_u64(&grant.text(), "ID");
    let lease_hex = format!("{lease:x}");
    let n = normalizer(&[]).literal(&lease.to_string(), "<LEASE>");
    // Keys are the name, "/" and the lease ID in hex, base64-encoded.
    let key = |name: &str| base64(format!("{name}/{lease_hex}").as_bytes());
    let campaign = post(
        &server,
        "/v3/election/campaign",
        &format!(r#"{{"name":"ZQ==","lease":"{lease}","value":"djE="}}"#),
    );
    let h = |revision: u32| {
        format!(
            r#"{{"cluster_id":"<cluster_id>","member_id":"<member_id>","revision":"{revision}","raft_term":"<raft_term>"}}"#
        )
    };
    assert_eq!(
        (campaign.status, n.apply(&campaign.text())),
        (
            200,
            format!(
                r#"{{"header":{},"leader":{{"name":"ZQ==","key":"{}","rev":"2","lease":"<LEASE>"}}}}"#,
                h(2),
                key("e")
            )
        )
    );
    let observe = CurlStream::start(&server, "/v3/election/observe", r#"{"name":"ZQ=="}"#, &[]);
    let leader_kv = |revision: u32, mod_revision: u32, version: u32, value: &str| {
        format!(
            r#"{{"header":{},"kv":{{"key":"{}","create_revision":"2","mod_revision":"{mod_revision}","version":"{version}","value":"{value}","lease":"<LEASE>"}}}}"#,
            h(revision),
            key("e")
        )
    };
    assert_eq!(
        n.apply(&observe.next_line()),
        format!(r#"{{"result":{}}}"#, leader_kv(2, 2, 1, "djE="))
    );
    let leader = post(&server, "/v3/election/leader", r#"{"name":"ZQ=="}"#);
    assert_eq!(n.apply(&leader.text()), leader_kv(2, 2, 1, "djE="));
    let proclaim = post(
        &server,
        "/v3/election/proclaim",
        &format!(
            r#"{{"leader":{{"name":"ZQ==","key":"{}","rev":"2","lease":"{lease}"}},"value":"djI="}}"#,
            key("e")
        ),
    );
    assert_eq!(
        (proclaim.status, n.apply(&proclaim.text())),
        (200, format!(r#"{{"header":{}}}"#, h(3)))
    );
    assert_eq!(
        n.apply(&observe.next_line()),
        format!(r#"{{"result":{}}}"#, leader_kv(3, 3, 2, "djI="))
    );
    let resign = post(
        &server,
        "/v3/election/resign",
        &format!(
            r#"{{"leader":{{"name":"ZQ==","key":"{}","rev":"2","lease":"{lease}"}}}}"#,
            key("e")
        ),
    );
    assert_eq!(
        (resign.status, n.apply(&resign.text())),
        (200, format!(r#"{{"header":{}}}"#, h(4)))
    );
    expect_answers(
        &server,
        &n,
        &[(
            "/v3/election/leader",
            r#"{"name":"ZQ=="}"#,
            500,
            r#"{"error":"election: no leader","message":"election: no leader","code":2}"#,
        )],
    );

    let lock = post(
        &server,
        "/v3/lock/lock",
        &format!(r#"{{"name":"bA==","lease":"{lease}"}}"#),
    );
    assert_eq!(
        (lock.status, n.apply(&lock.text())),
        (
            200,
            format!(r#"{{"header":{},"key":"{}"}}"#, h(5), key("l"))
        )
    );
    let unlock = post(
        &server,
        "/v3beta/lock/unlock",
        &format!(r#"{{"key":"{}"}}"#, key("l")),
    );
    assert_eq!(
        (unlock.status, n.apply(&unlock.text())),
        (200, format!(r#"{{"header":{}}}"#, h(6)))
    );
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
