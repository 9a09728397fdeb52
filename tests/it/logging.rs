//! The log file (issue 4 point 3): with `--log-outputs` naming a file the server writes its log
//! there at the configured level and format; SIGHUP reopens the file by path, so logrotate's
//! `create` mode (rename, then signal) keeps every line; values and passwords never reach it.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Starts a server with `--log-outputs=<file>` and `args`, and waits until it has logged that
/// it serves clients.
fn start_logging_to(file: &Path, args: &[&str]) -> Server {
    let output = format!("--log-outputs={}", file.display());
    let mut all = vec![output.as_str()];
    all.extend_from_slice(args);
    let server = Server::start_with(&all);
    assert!(
        wait_until(Duration::from_secs(10), || read(file)
            .contains("ready to serve client requests")),
        "the server logs its start to {}:\n{}",
        file.display(),
        read(file)
    );
    server
}

/// Polls `check` until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_is_reopened_on_sighup_and_holds_no_values() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's log file handling; skipped against etcd");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let log_file = dir.path().join("etcd.log");
    let server = start_logging_to(&log_file, &["--log-level=debug", "--log-format=json"]);
    for line in read(&log_file).lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    assert!(
        read(&log_file).contains("\"level\":\"DEBUG\""),
        "debug lines at --log-level=debug"
    );

    let mut client = server.client().await;
    let secret = "s3cr3t-value-that-must-not-be-logged";
    client.put("some/key", secret, None).await.expect("put");

    // logrotate in create mode: rename the file, then SIGHUP.
    let rotated = dir.path().join("etcd.log.1");
    std::fs::rename(&log_file, &rotated).expect("rotate");
    server.signal(rustix::process::Signal::HUP);
    assert!(
        wait_until(Duration::from_secs(10), || read(&log_file)
            .contains("received SIGHUP; reopened the log file")),
        "after SIGHUP the server writes to a new file at the configured path; new file:\n{}\nrotated:\n{}",
        read(&log_file),
        read(&rotated)
    );
    client
        .put("another/key", secret, None)
        .await
        .expect("put after rotation");
    assert!(server.is_healthy(), "SIGHUP does not stop the server");
    for text in [read(&rotated), read(&log_file)] {
        assert!(!text.contains(secret), "a value reached the log:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_format_and_level_filter() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's log file handling; skipped against etcd");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let console = dir.path().join("console.log");
    let server = start_logging_to(&console, &["--log-level=info", "--log-format=console"]);
    let text = read(&console);
    assert!(
        text.lines().all(|l| !l.starts_with('{')) && text.contains(" INFO "),
        "text lines, not JSON:\n{text}"
    );
    drop(server);

    // At warn, the info lines a start always writes are filtered out.
    let quiet = dir.path().join("quiet.log");
    let arg = format!("--log-outputs={}", quiet.display());
    let server = Server::start_with(&[&arg, "--log-level=warn"]);
    let mut client = server.client().await;
    client.put("k", "v", None).await.expect("put");
    let text = read(&quiet);
    assert!(
        !text.contains("ready to serve client requests"),
        "info lines at --log-level=warn:\n{text}"
    );
}
