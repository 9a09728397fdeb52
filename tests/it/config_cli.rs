//! Black-box tests of oxetcd's configuration surface: exit status 2 and a message naming the key
//! for bad input (before the data dir is touched), TOML file < ETCD_* environment < flag
//! precedence as seen in `member list`, and the readiness log line. oxetcd-only: etcd 3.4 has
//! YAML config files and other exit codes, so every test returns early against real etcd.

use crate::common;
use crate::common::process::{Process, READY_TIMEOUT};

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

fn skip_on_real_etcd(test: &str) -> bool {
    if common::running_real_etcd() {
        eprintln!("{test}: oxetcd-only, skipped against real etcd");
        return true;
    }
    false
}

/// The server binary with `args` and exactly the given `ETCD_*` variables.
fn server_command(args: &[String], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(common::server_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().map(|(name, value)| (*name, value)));
    command
}

/// Runs the server with bad configuration; it must exit by itself. Returns (exit code, stderr).
fn run_to_exit(args: &[String], env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut child = server_command(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server binary spawns");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if child.try_wait().expect("wait on our child").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap");
            panic!(
                "{args:?} did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collect output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A member started by these tests (outside the fixture, to control env and config files).
struct Member {
    process: Process,
    endpoint: String,
}

impl Member {
    fn start(args: &[String], env: &[(&str, String)], client_port: u16, log_path: &Path) -> Member {
        let mut process = Process::new("member", common::server_bin(), log_path.to_path_buf());
        process.spawn_with_env(args, env);
        if let Err(reason) = process.wait_healthy(client_port, Instant::now() + READY_TIMEOUT) {
            panic!("{args:?}: {reason}:\n{}", process.log());
        }
        Member {
            process,
            endpoint: format!("http://127.0.0.1:{client_port}"),
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// Names in `etcdctl member list` (`<id>, started, <name>, <peer>, <client>, false`).
    fn member_names(&self) -> Vec<String> {
        let output = common::run_etcdctl(
            &self.endpoint,
            &["member", "list"],
            None,
            common::ETCDCTL_TIMEOUT,
        );
        assert!(output.status.success(), "{}", common::stderr_text(&output));
        common::stdout_text(&output)
            .lines()
            .map(|line| {
                line.split(", ")
                    .nth(2)
                    .unwrap_or_else(|| panic!("bad member list line {line:?}"))
                    .to_string()
            })
            .collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.process.kill();
        if thread::panicking() {
            eprintln!(
                "--- member log {} ---\n{}",
                self.process.log_path().display(),
                self.log()
            );
        }
    }
}

/// Loopback URLs for one member: (client port, client URL, peer URL).
fn urls() -> (u16, String, String) {
    let client_port = common::free_port();
    let peer_port = common::free_port();
    (
        client_port,
        format!("http://127.0.0.1:{client_port}"),
        format!("http://127.0.0.1:{peer_port}"),
    )
}

/// Listen/advertise flags for the given URLs (no name, data dir or initial cluster).
fn url_flags(client: &str, peer: &str) -> Vec<String> {
    [
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

#[test]
fn invalid_configuration_exits_2_and_names_the_key() {
    if skip_on_real_etcd("invalid_configuration_exits_2_and_names_the_key") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();
    let toml = dir.path().join("bad.toml");
    std::fs::write(
        &toml,
        format!("name = \"n1\"\ndata-dir = \"{data}\"\nbogus-key = 1\n"),
    )
    .expect("write TOML");
    let toml = toml.display().to_string();

    // (case, arguments, environment, what stderr must mention)
    type Case<'a> = (&'a str, Vec<String>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown TOML key",
            strings(&["--config-file", &toml]),
            vec![],
            "bogus-key",
        ),
        (
            "malformed --listen-client-urls",
            strings(&["--data-dir", &data, "--listen-client-urls", "not a url"]),
            vec![],
            "--listen-client-urls",
        ),
        (
            "--listen-client-urls without a port",
            strings(&[
                "--data-dir",
                &data,
                "--listen-client-urls",
                "http://127.0.0.1",
            ]),
            vec![],
            "--listen-client-urls",
        ),
        (
            "non-numeric --heartbeat-interval",
            strings(&["--data-dir", &data, "--heartbeat-interval", "abc"]),
            vec![],
            "--heartbeat-interval",
        ),
        (
            "malformed URL from the environment",
            strings(&["--data-dir", &data]),
            vec![(
                "ETCD_LISTEN_CLIENT_URLS",
                "htp://127.0.0.1:2379".to_string(),
            )],
            "ETCD_LISTEN_CLIENT_URLS",
        ),
        (
            "unknown flag",
            strings(&["--data-dir", &data, "--no-such-flag", "1"]),
            vec![],
            "--no-such-flag",
        ),
    ];
    for (name, args, env, mentioned) in cases {
        let (code, stderr) = run_to_exit(&args, &env);
        assert_eq!(code, Some(2), "{name}: exit status; stderr:\n{stderr}");
        assert!(
            stderr.contains(mentioned),
            "{name}: stderr does not name {mentioned}:\n{stderr}"
        );
        assert!(
            !data_dir.exists(),
            "{name}: the data dir was created before the configuration was validated"
        );
    }
}

#[test]
fn flags_override_environment_which_overrides_the_file() {
    if skip_on_real_etcd("flags_override_environment_which_overrides_the_file") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");

    // Environment only.
    let (port, client, peer) = urls();
    let mut args = url_flags(&client, &peer);
    args.extend(strings(&[
        "--data-dir",
        &dir.path().join("env").display().to_string(),
    ]));
    let env = vec![
        ("ETCD_NAME", "from-env".to_string()),
        ("ETCD_INITIAL_CLUSTER", format!("from-env={peer}")),
    ];
    let member = Member::start(&args, &env, port, &dir.path().join("env.log"));
    assert_eq!(member.member_names(), ["from-env"]);
    drop(member);

    // A flag beats the environment variable.
    let (port, client, peer) = urls();
    let mut args = url_flags(&client, &peer);
    args.extend(strings(&[
        "--data-dir",
        &dir.path().join("flag").display().to_string(),
        "--name",
        "from-flag",
        "--initial-cluster",
        &format!("from-flag={peer}"),
    ]));
    let env = vec![("ETCD_NAME", "from-env".to_string())];
    let member = Member::start(&args, &env, port, &dir.path().join("flag.log"));
    assert_eq!(member.member_names(), ["from-flag"]);
    drop(member);

    // The environment beats the config file.
    let (port, client, peer) = urls();
    let toml = dir.path().join("layered.toml");
    std::fs::write(
        &toml,
        format!(
            "name = \"from-toml\"\ndata-dir = \"{}\"\ninitial-cluster = \"from-env={peer}\"\n",
            dir.path().join("layered").display()
        ),
    )
    .expect("write TOML");
    let mut args = url_flags(&client, &peer);
    args.extend(strings(&["--config-file", &toml.display().to_string()]));
    let env = vec![("ETCD_NAME", "from-env".to_string())];
    let member = Member::start(&args, &env, port, &dir.path().join("layered.log"));
    assert_eq!(member.member_names(), ["from-env"]);
    assert!(
        dir.path().join("layered").is_dir(),
        "data-dir from the file is used"
    );
}

#[test]
fn toml_file_configures_the_member_and_it_logs_readiness() {
    if skip_on_real_etcd("toml_file_configures_the_member_and_it_logs_readiness") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("from-toml-data");
    let (port, client, peer) = urls();
    let toml = dir.path().join("oxetcd.toml");
    std::fs::write(
        &toml,
        format!(
            "name = \"from-toml\"\n\
             data-dir = \"{}\"\n\
             listen-client-urls = [\"{client}\"]\n\
             advertise-client-urls = \"{client}\"\n\
             listen-peer-urls = \"{peer}\"\n\
             initial-advertise-peer-urls = \"{peer}\"\n\
             initial-cluster = \"from-toml={peer}\"\n",
            data_dir.display()
        ),
    )
    .expect("write TOML");
    let args = strings(&["--config-file", &toml.display().to_string()]);
    let member = Member::start(&args, &[], port, &dir.path().join("toml.log"));
    assert_eq!(member.member_names(), ["from-toml"]);
    assert!(
        std::fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some()),
        "the data dir from the file holds the member's data"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !member.log().contains("ready to serve client requests") {
        assert!(
            Instant::now() < deadline,
            "no \"ready to serve client requests\" in the log:\n{}",
            member.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Bad `--auth-token` key files and a bad `--bcrypt-cost` stop the server with status 2, naming
/// the key and the file, before the data dir exists; a key's contents are never printed. etcd
/// 3.4 exits 1 for bad JWT keys and only warns about the cost, so this is oxetcd's.
#[test]
fn bad_auth_token_keys_exit_2_without_printing_them() {
    if skip_on_real_etcd("bad_auth_token_keys_exit_2_without_printing_them") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();
    let key = |name: &str, algorithm: &str| {
        let path = dir.path().join(name);
        let status = Command::new("openssl")
            .args(["genpkey", "-algorithm", algorithm, "-out"])
            .arg(&path)
            .status()
            .expect("openssl runs");
        assert!(status.success());
        let public = dir.path().join(format!("{name}.pub"));
        let status = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&path)
            .arg("-out")
            .arg(&public)
            .status()
            .expect("openssl runs");
        assert!(status.success());
        (public.display().to_string(), path.display().to_string())
    };
    let (public, private) = key("a", "ED25519");
    let (other_public, _) = key("b", "ED25519");
    let missing = dir.path().join("missing.pem").display().to_string();
    let jwt = |public: &str, private: &str| {
        format!("jwt,pub-key={public},priv-key={private},sign-method=EdDSA")
    };
    let cases = [
        (
            strings(&["--auth-token", &jwt(&missing, &private)]),
            "missing.pem",
        ),
        (
            strings(&["--auth-token", &jwt(&other_public, &private)]),
            "not a pair",
        ),
        // A private key given as the public one: named, not shown.
        (
            strings(&["--auth-token", &jwt(&private, &private)]),
            "is not a PEM public key",
        ),
        (
            strings(&[
                "--auth-token",
                &format!("jwt,pub-key={public},sign-method=ES256"),
            ]),
            "is not a PEM public key",
        ),
        // An Ed25519 private key for ES256, with no pub-key given to use instead.
        (
            strings(&[
                "--auth-token",
                &format!("jwt,priv-key={private},sign-method=ES256"),
            ]),
            "is not a PEM private key",
        ),
        (strings(&["--bcrypt-cost", "40"]), "--bcrypt-cost"),
    ];
    for (mut args, mentioned) in cases {
        args.extend(strings(&["--data-dir", &data]));
        let (code, stderr) = run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: exit status; stderr:\n{stderr}");
        assert!(
            stderr.contains(mentioned)
                && (stderr.contains("auth-token") || mentioned.starts_with("--")),
            "{args:?}: stderr does not name {mentioned}:\n{stderr}"
        );
        assert!(
            !stderr.contains("PRIVATE KEY"),
            "{args:?}: a key was printed:\n{stderr}"
        );
        assert!(!data_dir.exists(), "{args:?}: the data dir was created");
    }
}
