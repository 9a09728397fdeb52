//! `oxetcd backup` (what `oxetcd-backup.service` runs): a snapshot of a running member saved into
//! the `[backup]` directory of the config file, read back and verified, the oldest pruned past
//! `retention`; over https:// with a client certificate; a member that cannot be reached leaves
//! no file; the server reports the newest backup on `/metrics`; the newest backup restores to
//! the same keys. The package check (tests/packaging) runs the same command from the timer's
//! service under systemd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{self, Server};
use crate::tls::{Files, server_and_client};

fn backup(config: &Path) -> Output {
    Command::new(common::server_bin())
        .args(["backup", "--config-file", &config.display().to_string()])
        .env_clear()
        .output()
        .expect("oxetcd backup runs")
}

fn backup_ok(config: &Path) -> String {
    let output = backup(config);
    assert!(
        output.status.success(),
        "oxetcd backup failed\nstdout:\n{}\nstderr:\n{}",
        common::stdout_text(&output),
        common::stderr_text(&output)
    );
    common::stdout_text(&output)
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn write_config(dir: &Path, backup_table: &str) -> PathBuf {
    let path = dir.join("oxetcd.toml");
    std::fs::write(&path, format!("[backup]\n{backup_table}")).unwrap();
    path
}

/// The value of the unlabelled sample `name` in a `/metrics` text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn backups_are_verified_pruned_reported_and_restore_to_the_same_keys() {
    if common::running_real_etcd() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    // The server reads the same [backup] table (its endpoint key is the backup job's only).
    let server_config = write_config(
        tmp.path(),
        &format!(
            "directory = {:?}\nmax-age = \"90m\"\n",
            backups.display().to_string()
        ),
    );
    let server = Server::start_with(&["--config-file", &server_config.display().to_string()]);
    let metrics = String::from_utf8_lossy(&server.http_get("/metrics").body).into_owned();
    assert_eq!(
        sample(&metrics, "oxetcd_backup_last_success_timestamp_seconds"),
        0.0
    );
    assert_eq!(sample(&metrics, "oxetcd_backup_max_age_seconds"), 5400.0);

    let job_dir = tmp.path().join("job");
    std::fs::create_dir(&job_dir).unwrap();
    let config = write_config(
        &job_dir,
        &format!(
            "directory = {:?}\nretention = 2\nendpoint = {:?}\nmax-age = \"90m\"\n",
            backups.display().to_string(),
            server.endpoint()
        ),
    );
    for i in 0..3 {
        server.etcdctl_ok(&["put", &format!("key-{i}"), &format!("value-{i}")]);
        let out = backup_ok(&config);
        assert!(out.contains("read back and verified"), "{out}");
    }
    // Three runs, retention 2: the first is gone, no partial file is left.
    let kept = names(&backups);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter()
            .all(|n| n.starts_with("oxetcd-") && n.ends_with("Z.snapshot")),
        "{kept:?}"
    );
    let newest = backups.join(&kept[1]);
    let meta = std::fs::metadata(&newest).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len() % 512, 32, "the snapshot length rule (512n + 32)");

    let metrics = String::from_utf8_lossy(&server.http_get("/metrics").body).into_owned();
    assert_eq!(
        sample(&metrics, "oxetcd_backup_last_size_bytes"),
        meta.len() as f64
    );
    let written = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert_eq!(
        sample(&metrics, "oxetcd_backup_last_success_timestamp_seconds"),
        written
    );

    // The newest backup restores to the keys it was taken with.
    let restored = tmp.path().join("restored");
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let output = Command::new(common::server_bin())
        .args(["snapshot", "restore", &newest.display().to_string()])
        .args(["--data-dir", &restored.display().to_string()])
        .args([
            "--name",
            common::MEMBER_NAME,
            "--initial-cluster",
            &format!("{}={peer}", common::MEMBER_NAME),
        ])
        .args(["--initial-advertise-peer-urls", &peer])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::stderr_text(&output));
    let copy = Server::start_on(&restored, &[]);
    let got = copy.etcdctl_ok(&["get", "key-", "--prefix", "--print-value-only"]);
    assert_eq!(
        got.split_whitespace().collect::<Vec<_>>(),
        ["value-0", "value-1", "value-2"]
    );
}

#[test]
fn a_member_that_cannot_be_reached_leaves_no_file_and_fails() {
    if common::running_real_etcd() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let config = write_config(
        tmp.path(),
        &format!(
            "directory = {:?}\nendpoint = \"http://127.0.0.1:{}\"\n",
            backups.display().to_string(),
            common::free_port()
        ),
    );
    let output = backup(&config);
    assert_eq!(output.status.code(), Some(1));
    let stderr = common::stderr_text(&output);
    assert!(
        stderr.contains("backup failed: cannot connect to"),
        "{stderr}"
    );
    assert!(names(&backups).is_empty(), "{:?}", names(&backups));

    // A typo in the table is refused like any unknown key (exit 2), by the job and the server.
    let bad = write_config(tmp.path(), "retension = 3\n");
    let output = backup(&bad);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        common::stderr_text(&output).contains("backup.retension"),
        "{}",
        common::stderr_text(&output)
    );
}

#[test]
fn a_backup_over_https_verifies_the_member_and_presents_a_client_certificate() {
    if common::running_real_etcd() {
        return;
    }
    let files = Files::new();
    server_and_client(&files);
    let server = Server::start_with_https(&[
        "--cert-file",
        &files.path("server.pem"),
        "--key-file",
        &files.path("server-key.pem"),
        "--trusted-ca-file",
        &files.path("ca.pem"),
        "--client-cert-auth",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let table = |extra: &str| {
        format!(
            "directory = {:?}\nendpoint = {:?}\ncacert = {:?}\n{extra}",
            backups.display().to_string(),
            server.https_endpoint(),
            files.path("ca.pem")
        )
    };
    // Without a client certificate the member refuses the connection.
    let output = backup(&write_config(tmp.path(), &table("")));
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        common::stderr_text(&output)
    );
    let with_cert = write_config(
        tmp.path(),
        &table(&format!(
            "cert = {:?}\nkey = {:?}\n",
            files.path("client.pem"),
            files.path("client-key.pem")
        )),
    );
    backup_ok(&with_cert);
    assert_eq!(names(&backups).len(), 1);

    // A member whose certificate another CA signed is not trusted.
    let other = Files::new();
    server_and_client(&other);
    let untrusted = write_config(
        tmp.path(),
        &format!(
            "directory = {:?}\nendpoint = {:?}\ncacert = {:?}\ncert = {:?}\nkey = {:?}\n",
            backups.display().to_string(),
            server.https_endpoint(),
            other.path("ca.pem"),
            files.path("client.pem"),
            files.path("client-key.pem")
        ),
    );
    let output = backup(&untrusted);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(names(&backups).len(), 1);
}
