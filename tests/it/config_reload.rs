//! Safe configuration changes: `oxetcd config check` validates the file, the `ETCD_*`
//! environment and the flags together without starting (exit 2 naming the key), and SIGHUP
//! (`systemctl reload`) applies the log level and log file at once, refuses a bad file without
//! disturbing the member, and names each changed key that needs a restart. oxetcd-only: etcd
//! 3.4 has neither, so every test returns early against real etcd.

use crate::common::{self, Server};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

fn skip_on_real_etcd(test: &str) -> bool {
    if common::running_real_etcd() {
        eprintln!("{test}: oxetcd-only, skipped against real etcd");
        return true;
    }
    false
}

/// `oxetcd config check args...` with exactly the `ETCD_*` variables in `env`: (code, stdout,
/// stderr).
fn config_check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(common::server_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["config", "check"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_check_validates_file_environment_and_flags_together() {
    if skip_on_real_etcd("config_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("oxetcd.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"m1\"\ndata-dir = \"{}\"\nsnapshot-count = 5000\n[log]\nlevel = \"info\"\n",
            data.display()
        ),
    )
    .unwrap();
    let file_arg = file.display().to_string();
    let (code, stdout, stderr) = config_check(&["--config-file", &file_arg], &[]);
    assert_eq!(code, Some(0), "a good file passes: {stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        !data.exists(),
        "config check starts nothing and creates no data dir"
    );

    // A bad value in each source is named, with its key and where it came from.
    std::fs::write(&file, "heartbeat-interval = \"soon\"\n").unwrap();
    let (code, _, stderr) = config_check(&["--config-file", &file_arg], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("heartbeat-interval"), "{stderr}");
    std::fs::write(&file, "snapshot-count = 5000\n").unwrap();
    let (code, _, stderr) = config_check(
        &["--config-file", &file_arg],
        &[("ETCD_MAX_TXN_OPS", "many")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("max-txn-ops") && stderr.contains("ETCD_MAX_TXN_OPS"),
        "{stderr}"
    );
    let (code, _, stderr) = config_check(&["--config-file", &file_arg, "--log-level", "loud"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("log-level"), "{stderr}");
    // An unknown key in the file, and keys that only disagree together.
    std::fs::write(&file, "snapshot-cuont = 5000\n").unwrap();
    let (code, _, stderr) = config_check(&["--config-file", &file_arg], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("snapshot-cuont"), "{stderr}");
    std::fs::write(&file, "heartbeat-interval = 200\nelection-timeout = 100\n").unwrap();
    let (code, _, stderr) = config_check(&["--config-file", &file_arg], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("election-timeout"), "{stderr}");
    // The TLS files are checked as the start checks them.
    std::fs::write(&file, "listen-client-urls = \"https://127.0.0.1:2379\"\nadvertise-client-urls = \"https://127.0.0.1:2379\"\ncert-file = \"/nonexistent/cert.pem\"\nkey-file = \"/nonexistent/key.pem\"\n").unwrap();
    let (code, _, stderr) = config_check(&["--config-file", &file_arg], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls `check` until it holds or 10 s pass.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The log after the `n`th occurrence of `marker` (what the reload did).
fn after_nth(log: &str, marker: &str, n: usize) -> String {
    log.match_indices(marker)
        .nth(n - 1)
        .map(|(at, _)| log[at..].to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_log_level_and_file_refuses_bad_files_and_names_restart_only_keys() {
    if skip_on_real_etcd("sighup_reload") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oxetcd.toml");
    let log_a = dir.path().join("a.log");
    let log_b = dir.path().join("b.log");
    let write_config = |level: &str, log: &Path, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "snapshot-count = 10000\n{extra}[log]\nformat = \"console\"\nlevel = \"{level}\"\nfile = \"{}\"\n",
                log.display()
            ),
        )
        .unwrap();
    };
    write_config("info", &log_a, "");
    let file_arg = file.display().to_string();
    let server = Server::start_with(&["--config-file", &file_arg]);
    let mut client = server.client().await;
    assert!(eventually(
        || read(&log_a).contains("ready to serve client requests")
    ));
    client.put("before", "v", None).await.unwrap();
    assert!(
        !read(&log_a).contains(" DEBUG "),
        "info level logs no debug lines"
    );

    // 1. log level → debug: debug lines appear for the next requests.
    write_config("debug", &log_a, "");
    server.signal(Signal::HUP);
    assert!(
        eventually(|| read(&log_a).contains("applied log-level")),
        "{}",
        read(&log_a)
    );
    // `/health` logs a debug line of its own on every call.
    client.put("debug/0", "v", None).await.unwrap();
    assert!(server.is_healthy());
    assert!(
        eventually(|| after_nth(&read(&log_a), "applied log-level", 1).contains(" DEBUG ")),
        "after the reload the log has debug lines:\n{}",
        read(&log_a)
    );

    // 2. a bad file is refused whole: the member keeps serving at the same level.
    std::fs::write(
        &file,
        "snapshot-count = \"lots\"\n[log]\nformat = \"console\"\nlevel = \"info\"\n",
    )
    .unwrap();
    server.signal(Signal::HUP);
    assert!(
        eventually(|| read(&log_a).contains("configuration reload refused; nothing changed")),
        "{}",
        read(&log_a)
    );
    let refusal = after_nth(&read(&log_a), "configuration reload refused", 1);
    assert!(
        refusal.contains("snapshot-count"),
        "the refusal names the key:\n{refusal}"
    );
    client.put("after-bad-file", "v", None).await.unwrap();
    assert!(server.is_healthy());
    assert!(
        eventually(
            || after_nth(&read(&log_a), "configuration reload refused", 1).contains(" DEBUG ")
        ),
        "the level stayed debug"
    );

    // 3. a restart-only key is named; the log file moves to its new path; level back to info.
    write_config("info", &log_b, "max-txn-ops = 64\n");
    server.signal(Signal::HUP);
    assert!(
        eventually(|| read(&log_b).contains("applied log-level")),
        "the log moved to {}:\n{}\nold file:\n{}",
        log_b.display(),
        read(&log_b),
        read(&log_a)
    );
    let old = read(&log_a);
    let reload = after_nth(&old, "received SIGHUP", 3) + &read(&log_b);
    assert!(
        reload.contains("configuration key max-txn-ops changed; it takes effect after a restart"),
        "{reload}"
    );
    assert!(reload.contains("applied log-outputs"), "{reload}");
    assert!(
        !reload.contains("configuration key snapshot-count"),
        "{reload}"
    );
    client.put("info/0", "v", None).await.unwrap();
    assert!(server.is_healthy());
    client.get("info/0", None).await.unwrap();
    let moved = read(&log_b);
    assert!(!moved.contains(" DEBUG "), "back at info:\n{moved}");
    assert_eq!(read(&log_a), old, "nothing more goes to the old file");
    assert!(server.is_healthy());
}
