//! Unit tests of the configuration: defaults, layering, parsing, validation and the command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use url::Url;

use super::cli::{cli_command, server_command};
use super::keys::{ALIASES, ENV_PREFIX, KEYS, RESTORE_KEYS, canonical_key, env_name};
use super::parse::parse_duration;
use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
    let args = std::iter::once("oxetcd").chain(args.iter().copied());
    Config::load(args, env(vars))
}

fn load_ok(args: &[&str], vars: &[(&str, &str)]) -> Config {
    load(args, vars).unwrap().0
}

fn load_err(args: &[&str], vars: &[(&str, &str)]) -> ConfigError {
    load(args, vars).unwrap_err()
}

/// A TOML file under the temp dir, removed on drop.
struct TomlFile(PathBuf);

impl TomlFile {
    fn new(text: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "oxetcd-config-test-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TomlFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TomlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

#[test]
fn defaults() {
    let (config, warnings) = load(&[], &[]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, PathBuf::from("default.oxetcd"));
    assert_eq!(
        config.listen_client_urls,
        vec![url("http://127.0.0.1:2379")]
    );
    assert_eq!(
        config.advertise_client_urls,
        vec![url("http://127.0.0.1:2379")]
    );
    assert_eq!(config.listen_peer_urls, vec![url("http://127.0.0.1:2380")]);
    assert_eq!(
        config.initial_advertise_peer_urls,
        vec![url("http://127.0.0.1:2380")]
    );
    assert_eq!(
        config.initial_cluster_string(),
        "default=http://127.0.0.1:2380"
    );
    assert_eq!(config.initial_cluster_state, ClusterState::New);
    assert_eq!(config.initial_cluster_token, "etcd-cluster");
    assert_eq!(config.snapshot_count, 10_000);
    assert_eq!(config.heartbeat_interval_ms, 100);
    assert_eq!(config.election_timeout_ms, 1000);
    assert_eq!(config.quota_backend_bytes, 0);
    assert_eq!(config.backend_cache_bytes, 32 << 20);
    assert_eq!(config.backend_write_buffer_bytes, 64 << 20);
    assert_eq!(config.request_bytes_max, 1_572_864);
    assert_eq!(config.txn_ops_max, 128);
    assert_eq!(config.auto_compaction, AutoCompaction::Disabled);
    assert!(config.listen_metrics_urls.is_empty());
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_outputs, vec!["stderr".to_owned()]);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(
        config.watch_progress_notify_interval,
        Duration::from_secs(600)
    );
    assert_eq!(config.warning_apply_duration, Duration::from_millis(100));
    assert_eq!(
        config.lease_checkpoint_interval,
        LEASE_CHECKPOINT_INTERVAL_DEFAULT
    );
    assert!(!config.enable_distributed_tracing);
    assert_eq!(config.distributed_tracing_address, "localhost:4317");
    assert_eq!(config.distributed_tracing_service_name, "etcd");
    assert_eq!(config.distributed_tracing_sampling_per_million, 0);
    assert_eq!(config.learners_max, 1);
    assert!(config.strict_reconfig_check);
    assert!(config.pre_vote);
    assert!(!config.unsafe_no_fsync);
    assert_eq!(config.config_file, None);
    assert_eq!(Config::default(), config);
    config.verify_bootstrap().unwrap();
}

#[test]
fn every_key_is_a_flag_an_env_var_and_a_toml_key() {
    cli_command().debug_assert();
    for key in KEYS {
        assert!(
            key.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{}",
            key.name
        );
        assert_eq!(canonical_key(key.name), Some((key.name, false)));
        let written = env_name(key.name)[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace('_', "-");
        assert_eq!(written, key.name);
        assert!(
            server_command()
                .get_arguments()
                .any(|arg| arg.get_id() == key.name)
        );
    }
    for (old, current) in ALIASES {
        assert_eq!(canonical_key(old), Some((*current, true)));
    }
    for name in RESTORE_KEYS {
        assert!(KEYS.iter().any(|key| key.name == *name), "{name}");
    }
}

#[test]
fn precedence_flag_over_env_over_toml_over_default() {
    let file = TomlFile::new(
        r#"
            name = "from-toml"
            data-dir = "/var/lib/from-toml"
            log-level = "warn"
            snapshot-count = 5000
            initial-cluster-token = "toml-token"
            "#,
    );
    let config = load_ok(
        &["--config-file", file.path(), "--log-level", "debug"],
        &[
            ("ETCD_DATA_DIR", "/var/lib/from-env"),
            ("ETCD_LOG_LEVEL", "error"),
            ("ETCD_SNAPSHOT_COUNT", "7000"),
        ],
    );
    assert_eq!(config.log_level, LogLevel::Debug, "flag beats env and file");
    assert_eq!(
        config.data_dir,
        PathBuf::from("/var/lib/from-env"),
        "env beats file"
    );
    assert_eq!(config.snapshot_count, 7000, "env beats file");
    assert_eq!(config.name, "from-toml", "file beats default");
    assert_eq!(config.initial_cluster_token, "toml-token");
    assert_eq!(
        config.heartbeat_interval_ms, 100,
        "default when nobody sets it"
    );
    assert_eq!(config.config_file, Some(PathBuf::from(file.path())));
    // The derived initial cluster follows the effective name.
    assert_eq!(
        config.initial_cluster_string(),
        "from-toml=http://127.0.0.1:2380"
    );
}

#[test]
fn config_file_from_env_and_toml_value_types() {
    let file = TomlFile::new(
        r#"
            listen_client_urls = ["http://10.0.0.1:2379", "https://[::1]:2379"]
            cert-file = "/etc/oxetcd/server.crt"
            key-file = "/etc/oxetcd/server.key"
            advertise-client-urls = "http://10.0.0.1:2379, http://10.0.0.2:2379"
            heartbeat-interval = 50
            election-timeout = "500"
            pre-vote = false
            enable-distributed-tracing = "true"
            quota-backend-bytes = 4294967296
            backend-cache-bytes = 134217728
            log-outputs = ["stdout", "/var/log/oxetcd.log"]
            watch-progress-notify-interval = "5s"
            "#,
    );
    let (config, warnings) = load(&[], &[("ETCD_CONFIG_FILE", file.path())]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        config.listen_client_urls,
        vec![url("http://10.0.0.1:2379"), url("https://[::1]:2379")]
    );
    assert_eq!(
        config.advertise_client_urls,
        vec![url("http://10.0.0.1:2379"), url("http://10.0.0.2:2379")]
    );
    assert_eq!(config.heartbeat_interval_ms, 50);
    assert_eq!(config.election_timeout_ms, 500);
    assert!(!config.pre_vote);
    assert!(config.enable_distributed_tracing);
    assert_eq!(config.quota_backend_bytes_effective(), 4_294_967_296);
    assert_eq!(config.backend_cache_bytes, 128 << 20);
    assert_eq!(
        config.log_outputs,
        vec!["stdout".to_owned(), "/var/log/oxetcd.log".to_owned()]
    );
    assert_eq!(
        config.watch_progress_notify_interval,
        Duration::from_secs(5)
    );
    assert_eq!(url_host_port(&config.listen_client_urls[1]), "[::1]:2379");
}

#[test]
fn unknown_toml_key_is_an_error_naming_it() {
    let file = TomlFile::new(
        "name = \"a\"\nbogus-key = 1\n[peer-transport-security]\ncert-file = \"x\"\n",
    );
    let err = load_err(&["--config-file", file.path()], &[]);
    let message = err.to_string();
    assert!(matches!(err, ConfigError::UnknownKeys { .. }), "{err:?}");
    assert!(message.contains("\"bogus-key\""), "{message}");
    assert!(message.contains("\"peer-transport-security\""), "{message}");
    assert!(message.contains(file.path()), "{message}");
    assert_eq!(err.key(), Some("bogus-key"));
}

#[test]
fn unreadable_or_malformed_file_is_an_error() {
    let err = load_err(&["--config-file", "/nonexistent/oxetcd.toml"], &[]);
    assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/oxetcd.toml"),
        "{err}"
    );

    let file = TomlFile::new("name = \n");
    let err = load_err(&["--config-file", file.path()], &[]);
    assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
}

#[test]
fn same_key_twice_in_toml_is_a_conflict() {
    let file = TomlFile::new("data-dir = \"a\"\ndata_dir = \"b\"\n");
    let err = load_err(&["--config-file", file.path()], &[]);
    assert!(matches!(err, ConfigError::SetTwice { .. }), "{err:?}");
    assert_eq!(err.key(), Some("data-dir"));
    assert_eq!(
        err.to_string(),
        format!(
            "\"data-dir\" and \"data_dir\" both set --data-dir in config file {}",
            file.path()
        )
    );
}

#[test]
fn unknown_env_vars_are_warnings() {
    let (config, warnings) = load(
        &[],
        &[
            ("ETCD_NAME", "n1"),
            ("ETCD_UNKNOWN_THING", "1"),
            ("ETCD_VERSION", "3.6"),
            ("ETCDCTL_API", "3"),
        ],
    )
    .unwrap();
    assert_eq!(config.name, "n1");
    assert_eq!(
        warnings,
        vec![
            "unrecognized environment variable ETCD_UNKNOWN_THING".to_owned(),
            "ignoring special environment variable ETCD_VERSION".to_owned(),
        ]
    );
}

#[test]
fn shadowed_env_var_is_a_warning() {
    let (config, warnings) = load(&["--name", "flag"], &[("ETCD_NAME", "env")]).unwrap();
    assert_eq!(config.name, "flag");
    assert_eq!(
        warnings,
        vec!["environment variable ETCD_NAME is shadowed by flag --name".to_owned()]
    );
}

#[test]
fn malformed_urls_name_the_key() {
    let cases = [
        ("htp://127.0.0.1:2379", "scheme"),
        ("http://127.0.0.1", "no port"),
        ("http://127.0.0.1:80", ""),
        ("127.0.0.1:2379", ""),
        ("not a url", "not a URL"),
        ("http://127.0.0.1:2379/path", "path"),
    ];
    for (value, reason) in cases {
        let result = load(&["--listen-client-urls", value], &[]);
        if value == "http://127.0.0.1:80" {
            assert!(
                result.is_ok(),
                "explicit default port is a port: {result:?}"
            );
            continue;
        }
        let err = result.unwrap_err();
        let message = err.to_string();
        assert_eq!(err.key(), Some("listen-client-urls"), "{value}: {message}");
        assert!(message.starts_with("invalid value"), "{message}");
        assert!(message.contains("--listen-client-urls"), "{message}");
        assert!(message.contains(reason), "{value}: {message}");
    }
    let err = load_err(
        &[],
        &[("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://a:1,ftp://b:2")],
    );
    assert_eq!(
        err.to_string(),
        "invalid value \"ftp://b:2\" for --initial-advertise-peer-urls: scheme \"ftp\" is not \
             supported; use http, https or unix (set by environment variable ETCD_INITIAL_ADVERTISE_PEER_URLS)"
    );
}

#[test]
fn unix_urls_name_a_socket_and_unixs_is_refused() {
    let config = load_ok(
        &[
            "--listen-client-urls",
            "unix://localhost:2379,http://127.0.0.1:2379",
            "--listen-peer-urls",
            "unix://localhost:2380",
            "--initial-advertise-peer-urls",
            "unix://localhost:2380",
            "--initial-cluster",
            "default=unix://localhost:2380",
        ],
        &[],
    );
    assert_eq!(
        etcd_url_string(&config.listen_client_urls[0]),
        "unix://localhost:2379"
    );
    assert_eq!(url_host_port(&config.listen_peer_urls[0]), "localhost:2380");
    assert_eq!(
        config.initial_cluster_string(),
        "default=unix://localhost:2380"
    );
    for (value, reason) in [
        ("unix://localhost", "no port"),
        ("unix:///run/etcd.sock", "no host"),
        (
            "unixs://localhost:2379",
            "\"unixs\" (TLS over a unix socket) is not supported",
        ),
    ] {
        let err = load_err(&["--listen-client-urls", value], &[]);
        assert_eq!(err.key(), Some("listen-client-urls"), "{value}: {err}");
        assert!(err.to_string().contains(reason), "{value}: {err}");
    }
}

#[test]
fn bad_numeric_values_name_the_key() {
    let err = load_err(&["--heartbeat-interval", "abc"], &[]);
    assert!(
        err.to_string()
            .starts_with("invalid value \"abc\" for --heartbeat-interval: "),
        "{err}"
    );
    assert_eq!(
        load_err(&["--heartbeat-interval=0"], &[]).key(),
        Some("heartbeat-interval")
    );
    assert_eq!(
        load_err(&["--heartbeat-interval=-5"], &[]).key(),
        Some("heartbeat-interval")
    );
    assert_eq!(
        load_err(&["--quota-backend-bytes=-1"], &[]).key(),
        Some("quota-backend-bytes")
    );
    assert_eq!(
        load_err(&["--backend-write-buffer-bytes=1048576"], &[]).key(),
        Some("backend-write-buffer-bytes")
    );
    assert_eq!(
        load_err(&["--backend-cache-bytes=lots"], &[]).key(),
        Some("backend-cache-bytes")
    );
    assert_eq!(
        load_err(&["--snapshot-count=0"], &[]).key(),
        Some("snapshot-count")
    );
    assert_eq!(
        load_err(&["--initial-cluster-state=joining"], &[]).key(),
        Some("initial-cluster-state")
    );
    assert_eq!(
        load_err(&["--log-level=loud"], &[]).key(),
        Some("log-level")
    );
    assert_eq!(
        load_err(&["--log-format=xml"], &[]).key(),
        Some("log-format")
    );
    assert_eq!(load_err(&["--pre-vote=maybe"], &[]).key(), Some("pre-vote"));
    assert_eq!(
        load_err(&["--max-learners=0"], &[]).key(),
        Some("max-learners")
    );
    assert_eq!(
        load_err(&["--distributed-tracing-sampling-rate=1000001"], &[]).key(),
        Some("distributed-tracing-sampling-rate")
    );
    assert_eq!(
        load_err(&["--watch-progress-notify-interval=10"], &[]).key(),
        Some("watch-progress-notify-interval")
    );
    assert_eq!(
        load_err(&["--auto-compaction-retention=1x"], &[]).key(),
        Some("auto-compaction-retention")
    );
    assert_eq!(
        load_err(&["--auto-compaction-mode=hourly"], &[]).key(),
        Some("auto-compaction-mode")
    );

    let file = TomlFile::new("max-txn-ops = -3\n");
    let err = load_err(&["--config-file", file.path()], &[]);
    let message = err.to_string();
    assert!(
        message.starts_with("invalid value \"-3\" for --max-txn-ops: "),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("(set by config file {})", file.path())),
        "{message}"
    );

    let err = load_err(&[], &[("ETCD_HEARTBEAT_INTERVAL", "0")]);
    assert_eq!(
        err.to_string(),
        "invalid value \"0\" for --heartbeat-interval: must be greater than 0 \
             (set by environment variable ETCD_HEARTBEAT_INTERVAL)"
    );
}

#[test]
fn election_timeout_must_be_five_heartbeats() {
    let err = load_err(&["--heartbeat-interval=100", "--election-timeout=400"], &[]);
    assert_eq!(
        err.to_string(),
        "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]"
    );
    assert_eq!(err.key(), Some("election-timeout"));
    load_ok(&["--heartbeat-interval=100", "--election-timeout=500"], &[]);
    let err = load_err(&["--election-timeout=50001"], &[]);
    assert_eq!(
        err.to_string(),
        "--election-timeout[50001ms] is too long, and should be set less than 50000ms"
    );
    assert_eq!(err.key(), Some("election-timeout"));
}

#[test]
fn retention_parsing() {
    use AutoCompaction::*;
    let periodic = CompactionMode::Periodic;
    assert_eq!(
        AutoCompaction::parse(periodic, "1h"),
        Ok(Periodic(Duration::from_secs(3600)))
    );
    assert_eq!(
        AutoCompaction::parse(periodic, "30m"),
        Ok(Periodic(Duration::from_secs(1800)))
    );
    assert_eq!(
        AutoCompaction::parse(periodic, "5"),
        Ok(Periodic(Duration::from_secs(5 * 3600)))
    );
    assert_eq!(
        AutoCompaction::parse(periodic, "10s"),
        Ok(Periodic(Duration::from_secs(10)))
    );
    assert_eq!(AutoCompaction::parse(periodic, "0"), Ok(Disabled));
    assert!(AutoCompaction::parse(periodic, "1.5").is_err());
    assert!(AutoCompaction::parse(periodic, "-1").is_err());
    let revision = CompactionMode::Revision;
    assert_eq!(AutoCompaction::parse(revision, "1000"), Ok(Revision(1000)));
    assert_eq!(AutoCompaction::parse(revision, "0"), Ok(Disabled));
    assert!(AutoCompaction::parse(revision, "1h").is_err());

    let config = load_ok(&["--auto-compaction-retention=5"], &[]);
    assert_eq!(
        config.auto_compaction,
        Periodic(Duration::from_secs(5 * 3600))
    );
    let config = load_ok(
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
        ],
        &[],
    );
    assert_eq!(config.auto_compaction, Revision(1000));
    let file = TomlFile::new("auto-compaction-retention = 2\n");
    let config = load_ok(&["--config-file", file.path()], &[]);
    assert_eq!(
        config.auto_compaction,
        Periodic(Duration::from_secs(2 * 3600))
    );
    let err = load_err(
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1h",
        ],
        &[],
    );
    assert_eq!(err.key(), Some("auto-compaction-retention"));
}

#[test]
fn go_durations() {
    let ok = [
        ("0", Duration::ZERO),
        ("100ms", Duration::from_millis(100)),
        ("10m", Duration::from_secs(600)),
        ("1h30m", Duration::from_secs(5400)),
        ("1.5s", Duration::from_millis(1500)),
        (".5s", Duration::from_millis(500)),
        ("250us", Duration::from_micros(250)),
        ("250\u{b5}s", Duration::from_micros(250)),
        ("7ns", Duration::from_nanos(7)),
        ("+2s", Duration::from_secs(2)),
    ];
    for (text, expected) in ok {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    for text in ["", "10", "1d", "-1s", "s", "1.s.", "99999999999999999999h"] {
        assert!(parse_duration(text).is_err(), "{text}");
    }
}

#[test]
fn derived_defaults_follow_name_and_peer_urls() {
    let config = load_ok(&["--name", "n1"], &[]);
    assert_eq!(config.data_dir, PathBuf::from("n1.oxetcd"));
    assert_eq!(config.initial_cluster_string(), "n1=http://127.0.0.1:2380");

    let config = load_ok(
        &[
            "--name=n2",
            "--initial-advertise-peer-urls=http://10.0.0.2:2380,http://10.0.1.2:2380",
        ],
        &[],
    );
    assert_eq!(
        config.initial_cluster,
        vec![InitialMember {
            name: "n2".to_owned(),
            peer_urls: vec![url("http://10.0.0.2:2380"), url("http://10.0.1.2:2380")],
        }]
    );
    config.verify_bootstrap().unwrap();

    let config = load_ok(&["--data-dir", "/data"], &[("ETCD_NAME", "n3")]);
    assert_eq!(config.data_dir, PathBuf::from("/data"));
}

#[test]
fn initial_cluster_parsing_and_bootstrap_checks() {
    let config = load_ok(
        &[
            "--name=b",
            "--initial-advertise-peer-urls=http://10.0.0.2:2380",
            "--initial-cluster=a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,a=http://10.1.0.1:2380",
        ],
        &[],
    );
    assert_eq!(config.initial_cluster.len(), 2);
    assert_eq!(config.initial_cluster[0].name, "a");
    assert_eq!(config.initial_cluster[0].peer_urls.len(), 2);
    config.verify_bootstrap().unwrap();

    let err = load_err(&["--initial-cluster=a:http://10.0.0.1:2380"], &[]);
    assert_eq!(err.key(), Some("initial-cluster"));
    let err = load_err(&["--initial-cluster=a=http://x:1,b=http://x:1"], &[]);
    assert!(err.to_string().contains("listed twice"), "{err}");

    let stranger = load_ok(
        &["--name=c", "--initial-cluster=a=http://10.0.0.1:2380"],
        &[],
    );
    let err = stranger.verify_bootstrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "couldn't find local name \"c\" in the initial cluster configuration \
         (--initial-cluster \"a=http://10.0.0.1:2380\")"
    );
    assert_eq!(err.key(), Some("initial-cluster"));

    let mismatch = load_ok(
        &["--name=a", "--initial-cluster=a=http://10.0.0.1:2380"],
        &[],
    );
    let err = mismatch.verify_bootstrap().unwrap_err();
    assert_eq!(err.key(), Some("initial-advertise-peer-urls"));
    assert_eq!(
        err.to_string(),
        "--initial-advertise-peer-urls \"http://127.0.0.1:2380\" does not match the URLs of \"a\" \
         in --initial-cluster (\"http://10.0.0.1:2380\")"
    );
    let joining = Config {
        initial_cluster_state: ClusterState::Existing,
        ..mismatch
    };
    joining.verify_bootstrap().unwrap();
}

#[test]
fn bool_flags_take_go_forms() {
    let config = load_ok(
        &[
            "--pre-vote=false",
            "--unsafe-no-fsync",
            "--strict-reconfig-check=F",
        ],
        &[],
    );
    assert!(!config.pre_vote);
    assert!(config.unsafe_no_fsync);
    assert!(!config.strict_reconfig_check);
    let config = load_ok(
        &[],
        &[
            ("ETCD_PRE_VOTE", "false"),
            ("ETCD_ENABLE_DISTRIBUTED_TRACING", "1"),
        ],
    );
    assert!(!config.pre_vote);
    assert!(config.enable_distributed_tracing);
    // Like Go's flag package, a bool flag takes its value only after '='.
    assert!(matches!(
        load_err(&["--pre-vote", "false"], &[]),
        ConfigError::Usage(_)
    ));
}

#[test]
fn experimental_names_are_accepted_with_a_warning() {
    let (config, warnings) =
        load(&["--experimental-watch-progress-notify-interval=5s"], &[]).unwrap();
    assert_eq!(
        config.watch_progress_notify_interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        warnings,
        vec![
            "--experimental-watch-progress-notify-interval is deprecated; use \
                 --watch-progress-notify-interval"
                .to_owned()
        ]
    );
    let (config, warnings) = load(&[], &[("ETCD_EXPERIMENTAL_MAX_LEARNERS", "3")]).unwrap();
    assert_eq!(config.learners_max, 3);
    assert_eq!(
        warnings,
        vec!["ETCD_EXPERIMENTAL_MAX_LEARNERS is deprecated; use ETCD_MAX_LEARNERS".to_owned()]
    );
    let file = TomlFile::new("experimental-warning-apply-duration = \"1s\"\n");
    let (config, warnings) = load(&["--config-file", file.path()], &[]).unwrap();
    assert_eq!(config.warning_apply_duration, Duration::from_secs(1));
    assert_eq!(warnings.len(), 1, "{warnings:?}");

    let err = load_err(
        &[
            "--watch-progress-notify-interval=1s",
            "--experimental-watch-progress-notify-interval=2s",
        ],
        &[],
    );
    assert!(
        matches!(err, ConfigError::SameSettingTwice { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "--experimental-watch-progress-notify-interval and --watch-progress-notify-interval are \
         the same setting; give only --watch-progress-notify-interval"
    );
    assert_eq!(err.key(), Some("watch-progress-notify-interval"));
    let err = load_err(
        &[],
        &[
            ("ETCD_MAX_LEARNERS", "2"),
            ("ETCD_EXPERIMENTAL_MAX_LEARNERS", "3"),
        ],
    );
    assert!(matches!(err, ConfigError::SetTwice { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "ETCD_EXPERIMENTAL_MAX_LEARNERS and ETCD_MAX_LEARNERS both set --max-learners in the \
         environment"
    );
    assert_eq!(err.key(), Some("max-learners"));
}

#[test]
fn log_table_in_the_config_file() {
    let file = TomlFile::new(
        "[log]\nfile = \"/var/log/etcd.log\"\nlevel = \"debug\"\nformat = \"console\"\n",
    );
    let config = load_ok(&["--config-file", file.path()], &[]);
    assert_eq!(config.log_outputs, vec!["/var/log/etcd.log".to_owned()]);
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.log_format, LogFormat::Console);
    let file = TomlFile::new("[log]\nfiles = \"x\"\n");
    let err = load_err(&["--config-file", file.path()], &[]);
    assert!(err.to_string().contains("log.files"), "{err}");
}

#[test]
fn lease_checkpoint_keys() {
    let config = load_ok(
        &[
            "--experimental-lease-checkpoint-interval=1s",
            "--experimental-enable-lease-checkpoint",
            "--experimental-enable-lease-checkpoint-persist",
        ],
        &[],
    );
    assert_eq!(config.lease_checkpoint_interval, Duration::from_secs(1));
    let config = load_ok(
        &[],
        &[("ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", "90s")],
    );
    assert_eq!(config.lease_checkpoint_interval, Duration::from_secs(90));
    let file = TomlFile::new(
        "experimental-lease-checkpoint-interval = \"2m\"\n\
             experimental_enable_lease_checkpoint = true\n",
    );
    let config = load_ok(&["--config-file", file.path()], &[]);
    assert_eq!(config.lease_checkpoint_interval, Duration::from_secs(120));
    // 0 means the default, as in etcd.
    let config = load_ok(&["--experimental-lease-checkpoint-interval=0"], &[]);
    assert_eq!(
        config.lease_checkpoint_interval,
        LEASE_CHECKPOINT_INTERVAL_DEFAULT
    );
    let err = load_err(&["--experimental-lease-checkpoint-interval=soon"], &[]);
    assert_eq!(err.key(), Some("experimental-lease-checkpoint-interval"));
    let err = load_err(
        &[],
        &[("ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", "maybe")],
    );
    assert_eq!(err.key(), Some("experimental-enable-lease-checkpoint"));
}

#[test]
fn repeated_flag_takes_the_last_value() {
    assert_eq!(load_ok(&["--name=a", "--name=b"], &[]).name, "b");
}

#[test]
fn usage_errors() {
    let err = load_err(&["--no-such-flag"], &[]);
    let ConfigError::Usage(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("--no-such-flag"), "{message}");
    assert!(matches!(load_err(&["stray"], &[]), ConfigError::Usage(_)));
    // `snapshot` is a subcommand only for parse_command, not for Config::load.
    assert!(matches!(
        load_err(&["snapshot", "restore", "x.db"], &[]),
        ConfigError::Usage(_)
    ));
}

#[test]
fn helpers() {
    let config = load_ok(
        &[
            "--heartbeat-interval=50",
            "--election-timeout=525",
            "--quota-backend-bytes=1024",
        ],
        &[],
    );
    assert_eq!(config.election_ticks(), 10);
    assert_eq!(config.heartbeat_interval(), Duration::from_millis(50));
    assert_eq!(config.election_timeout(), Duration::from_millis(525));
    assert_eq!(config.quota_backend_bytes_effective(), 1024);
    assert_eq!(
        config.request_timeout(),
        Duration::from_millis(5000 + 2 * 500)
    );
    let config = Config::default();
    assert_eq!(config.election_ticks(), 10);
    assert_eq!(config.quota_backend_bytes_effective(), 2_147_483_648);
    assert_eq!(config.request_timeout(), Duration::from_secs(7));
    assert_eq!(
        etcd_url_string(&config.listen_client_urls[0]),
        "http://127.0.0.1:2379"
    );

    let (_, warnings) = load(&["--quota-backend-bytes=10737418240"], &[]).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn parse_command_serve_and_snapshot_restore() {
    let (command, _) = parse_command(["oxetcd", "--name", "n1"], env(&[])).unwrap();
    let Command::Serve(config) = command else {
        panic!("{command:?}")
    };
    assert_eq!(config.name, "n1");

    let (command, warnings) = parse_command(
        [
            "oxetcd",
            "snapshot",
            "restore",
            "/backup/snap.db",
            "--data-dir",
            "/var/lib/restored",
            "--name",
            "m1",
            "--initial-cluster",
            "m1=http://10.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://10.0.0.1:2380",
        ],
        env(&[("ETCD_INITIAL_CLUSTER_TOKEN", "tok")]),
    )
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let Command::SnapshotRestore {
        file,
        data_dir,
        config,
        skip_hash_check,
    } = command
    else {
        panic!("{command:?}")
    };
    assert!(!skip_hash_check);
    assert_eq!(file, PathBuf::from("/backup/snap.db"));
    assert_eq!(data_dir, PathBuf::from("/var/lib/restored"));
    assert_eq!(config.data_dir, data_dir);
    assert_eq!(config.name, "m1");
    assert_eq!(config.initial_cluster_token, "tok");

    let (command, _) = parse_command(
        ["oxetcd", "snapshot", "restore", "s.db", "--name", "x"],
        env(&[]),
    )
    .unwrap();
    let Command::SnapshotRestore { data_dir, .. } = command else {
        panic!("{command:?}")
    };
    assert_eq!(data_dir, PathBuf::from("x.oxetcd"));

    // etcdutl's --skip-hash-check, as a Go boolean flag.
    for (flag, expected) in [
        ("--skip-hash-check", true),
        ("--skip-hash-check=true", true),
        ("--skip-hash-check=false", false),
    ] {
        let (command, _) =
            parse_command(["oxetcd", "snapshot", "restore", "s.db", flag], env(&[])).unwrap();
        let Command::SnapshotRestore {
            skip_hash_check, ..
        } = command
        else {
            panic!("{command:?}")
        };
        assert_eq!(skip_hash_check, expected, "{flag}");
    }

    // Restore refuses a member list that does not contain this member.
    let err = parse_command(
        [
            "oxetcd",
            "snapshot",
            "restore",
            "s.db",
            "--name",
            "x",
            "--initial-cluster",
            "y=http://a:1",
        ],
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("initial-cluster"));

    for args in [
        &["oxetcd", "snapshot"][..],
        &["oxetcd", "snapshot", "restore"][..],
        &[
            "oxetcd",
            "snapshot",
            "restore",
            "s.db",
            "--listen-client-urls",
            "http://a:1",
        ][..],
        &["oxetcd", "--name", "n", "snapshot", "restore", "s.db"][..],
    ] {
        let err = parse_command(args.iter().copied(), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)), "{args:?}: {err:?}");
    }
}

#[test]
fn parse_command_snapshot_export() {
    let (command, warnings) = parse_command(
        [
            "oxetcd", "snapshot", "export", "--format", "etcd", "in.db", "out.db",
        ],
        env(&[]),
    )
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        command,
        Command::SnapshotExport {
            input: PathBuf::from("in.db"),
            output: PathBuf::from("out.db"),
        }
    );
    for args in [
        // --format is required, and etcd is the only one.
        &["oxetcd", "snapshot", "export", "in.db", "out.db"][..],
        &[
            "oxetcd", "snapshot", "export", "--format", "bolt", "in.db", "out.db",
        ][..],
        &["oxetcd", "snapshot", "export", "--format", "etcd", "in.db"][..],
        &[
            "oxetcd", "snapshot", "export", "--format", "etcd", "a", "b", "c",
        ][..],
        &[
            "oxetcd",
            "snapshot",
            "export",
            "--format",
            "etcd",
            "a",
            "b",
            "--data-dir",
            "d",
        ][..],
    ] {
        let err = parse_command(args.iter().copied(), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)), "{args:?}: {err:?}");
    }
}

#[test]
fn tls_keys_from_flags_env_and_toml() {
    let config = load_ok(&[], &[]);
    assert!(config.client_tls.cert_file.is_none() && !config.client_tls.client_cert_auth);
    assert!(!config.client_tls.auto_tls && config.client_tls.cipher_suites.is_empty());
    assert_eq!(config.client_tls.max_version, None);
    assert_eq!(config.client_tls.min_version, TlsVersion::Tls12);
    assert_eq!(config.client_tls.self_signed_cert_validity_years, 1);

    let file = TomlFile::new(
        r#"
            cert-file = "/c.pem"
            key-file = "/k.pem"
            trusted-ca-file = "/ca.pem"
            client-cert-auth = true
            client-crl-file = "/crl.pem"
            client-cert-allowed-hostname = "client.example"
            cipher-suites = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"]
            tls-max-version = "TLS1.3"
            self-signed-cert-validity = 3
            "#,
    );
    let config = load_ok(
        &[
            "--config-file",
            file.path(),
            "--listen-client-urls",
            "https://127.0.0.1:2379",
        ],
        &[
            ("ETCD_TLS_MIN_VERSION", "TLS1.2"),
            ("ETCD_AUTO_TLS", "true"),
        ],
    );
    let tls = &config.client_tls;
    assert_eq!(tls.cert_file, Some(PathBuf::from("/c.pem")));
    assert_eq!(tls.key_file, Some(PathBuf::from("/k.pem")));
    assert_eq!(tls.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
    assert!(tls.client_cert_auth);
    assert_eq!(tls.crl_file, Some(PathBuf::from("/crl.pem")));
    assert_eq!(tls.allowed_hostname.as_deref(), Some("client.example"));
    assert_eq!(
        tls.cipher_suites,
        vec![
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned(),
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".to_owned()
        ]
    );
    assert_eq!(tls.max_version, Some(TlsVersion::Tls13));
    assert!(tls.auto_tls);
    assert_eq!(tls.self_signed_cert_validity_years, 3);
}

#[test]
fn https_listener_needs_a_certificate() {
    for (key, url) in [
        ("listen-client-urls", "https://127.0.0.1:2379"),
        ("listen-metrics-urls", "https://127.0.0.1:2381"),
    ] {
        let flag = format!("--{key}");
        let err = load_err(&[flag.as_str(), url], &[]);
        assert!(
            matches!(err, ConfigError::HttpsWithoutCertificate { .. }),
            "{err:?}"
        );
        assert_eq!(err.key(), Some(key));
        let message = err.to_string();
        assert!(message.contains("--cert-file"), "{message}");
        assert!(message.contains(url), "{message}");
        // --auto-tls or a pair is enough.
        load_ok(&[flag.as_str(), url, "--auto-tls"], &[]);
        load_ok(
            &[flag.as_str(), url, "--cert-file", "/c", "--key-file", "/k"],
            &[],
        );
    }
    let err = load_err(&["--cert-file", "/c"], &[]);
    assert_eq!(err.key(), Some("key-file"), "{err}");
    let err = load_err(&["--client-cert-auth"], &[]);
    assert_eq!(err.key(), Some("trusted-ca-file"), "{err}");
}

#[test]
fn bad_tls_values_name_the_key() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "--cipher-suites",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_BOGUS",
            ],
            "cipher-suites",
            "unknown cipher suite TLS_BOGUS",
        ),
        (
            &["--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"],
            "cipher-suites",
            "not supported by rustls",
        ),
        (
            &[
                "--cipher-suites",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "--tls-min-version",
                "TLS1.3",
            ],
            "cipher-suites",
            "TLS1.3",
        ),
        (
            &["--tls-min-version", "TLS1.1"],
            "tls-min-version",
            "not supported",
        ),
        (
            &["--tls-max-version", "1.3"],
            "tls-max-version",
            "TLS1.2 or TLS1.3",
        ),
        (
            &["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"],
            "tls-max-version",
            "below",
        ),
        (
            &["--self-signed-cert-validity", "0"],
            "self-signed-cert-validity",
            "at least",
        ),
        (
            &["--client-cert-auth=maybe"],
            "client-cert-auth",
            "true or false",
        ),
    ];
    for (args, key, reason) in cases {
        let err = load_err(args, &[]);
        assert_eq!(err.key(), Some(*key), "{args:?}: {err}");
        assert!(err.to_string().contains(reason), "{args:?}: {err}");
    }
}

#[test]
fn peer_tls_keys_from_flags_env_and_toml() {
    let config = load_ok(&[], &[]);
    assert_eq!(config.peer_tls.side, TlsSide::Peer);
    assert!(config.peer_tls.cert_file.is_none() && !config.peer_tls.client_cert_auth);
    assert!(!config.peer_tls.auto_tls && !config.peer_https());

    let file = TomlFile::new(
        r#"
            peer-cert-file = "/p.pem"
            peer-key-file = "/pk.pem"
            peer-trusted-ca-file = "/ca.pem"
            peer-crl-file = "/crl.pem"
            peer-cert-allowed-cn = "etcd-peer"
            "#,
    );
    let config = load_ok(
        &[
            "--config-file",
            file.path(),
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--peer-client-cert-file",
            "/pc.pem",
        ],
        &[
            ("ETCD_PEER_CLIENT_CERT_AUTH", "true"),
            ("ETCD_PEER_CLIENT_KEY_FILE", "/pck.pem"),
        ],
    );
    let tls = &config.peer_tls;
    assert_eq!(tls.cert_file, Some(PathBuf::from("/p.pem")));
    assert_eq!(tls.key_file, Some(PathBuf::from("/pk.pem")));
    assert_eq!(tls.client_cert_file, Some(PathBuf::from("/pc.pem")));
    assert_eq!(tls.client_key_file, Some(PathBuf::from("/pck.pem")));
    assert_eq!(tls.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
    assert!(tls.client_cert_auth);
    assert_eq!(tls.crl_file, Some(PathBuf::from("/crl.pem")));
    assert_eq!(tls.allowed_cn.as_deref(), Some("etcd-peer"));
    assert!(config.peer_https());
    // The client side is untouched by peer keys.
    assert!(config.client_tls.cert_file.is_none() && !config.client_tls.client_cert_auth);
}

#[test]
fn bad_peer_tls_settings_name_the_key() {
    let https = ["--listen-peer-urls", "https://127.0.0.1:2380"];
    let cases: &[(&[&str], &str)] = &[
        (&https, "listen-peer-urls"),
        (&["--peer-cert-file", "/p.pem"], "peer-key-file"),
        (
            &["--peer-client-key-file", "/k.pem"],
            "peer-client-cert-file",
        ),
        (&["--peer-client-cert-auth"], "peer-trusted-ca-file"),
        (&["--peer-client-cert-auth=maybe"], "peer-client-cert-auth"),
        (
            &[
                "--peer-cert-allowed-cn",
                "a",
                "--peer-cert-allowed-hostname",
                "b",
            ],
            "peer-cert-allowed-cn",
        ),
        // Dialing https:// peers needs a CA to verify them.
        (
            &[
                https[0],
                https[1],
                "--peer-cert-file",
                "/p.pem",
                "--peer-key-file",
                "/k.pem",
            ],
            "peer-trusted-ca-file",
        ),
    ];
    for (args, key) in cases {
        let err = load_err(args, &[]);
        assert_eq!(err.key(), Some(*key), "{args:?}: {err}");
    }
    let err = load_err(&https, &[]);
    assert!(err.to_string().contains("--peer-cert-file"), "{err}");
    // Auto TLS needs no CA: peers' certificates are not verified then, as in etcd.
    load_ok(&[https[0], https[1], "--peer-auto-tls"], &[]);
    load_ok(
        &[
            https[0],
            https[1],
            "--peer-cert-file",
            "/p.pem",
            "--peer-key-file",
            "/k.pem",
            "--peer-trusted-ca-file",
            "/ca.pem",
        ],
        &[],
    );
}

#[test]
fn feature_gates_take_etcds_syntax() {
    let config = load_ok(
        &["--feature-gates=InitialCorruptCheck=true, LeaseCheckpoint=false"],
        &[],
    );
    assert_eq!(
        config.feature_gates.gates,
        vec![
            ("InitialCorruptCheck".to_owned(), true),
            ("LeaseCheckpoint".to_owned(), false)
        ]
    );
    let config = load_ok(&[], &[("ETCD_FEATURE_GATES", "CompactHashCheck=True")]);
    assert_eq!(
        config.feature_gates.gates,
        vec![("CompactHashCheck".to_owned(), true)]
    );
    for bad in [
        "--feature-gates=NoSuchGate=true",
        "--feature-gates=InitialCorruptCheck",
        "--feature-gates=InitialCorruptCheck=yes",
    ] {
        let err = load_err(&[bad], &[]);
        assert_eq!(err.key(), Some("feature-gates"), "{bad}: {err}");
    }
    assert!(config.feature_gates.enabled("CompactHashCheck"));
    assert!(!config.initial_corrupt_check);
    let config = load_ok(&["--feature-gates=InitialCorruptCheck=true"], &[]);
    assert!(config.initial_corrupt_check);
    let config = load_ok(&["--experimental-initial-corrupt-check=true"], &[]);
    assert!(config.initial_corrupt_check);
    let err = load_err(&["--experimental-initial-corrupt-check=sure"], &[]);
    assert_eq!(
        err.key(),
        Some("experimental-initial-corrupt-check"),
        "{err}"
    );
}

#[test]
fn auth_keys_default_to_etcds_and_parse_etcds_jwt_options() {
    let config = load_ok(&[], &[]);
    assert_eq!(config.auth_token, AuthToken::Simple);
    assert_eq!(config.auth_token_ttl, Duration::from_secs(300));
    assert_eq!(config.bcrypt_cost, 10);

    let config = load_ok(
        &["--auth-token-ttl", "7"],
        &[
            ("ETCD_BCRYPT_COST", "4"),
            (
                "ETCD_AUTH_TOKEN",
                "jwt,pub-key=/k.pub,priv-key=/k,sign-method=RS256,ttl=90s",
            ),
        ],
    );
    assert_eq!(config.auth_token_ttl, Duration::from_secs(7));
    assert_eq!(config.bcrypt_cost, 4);
    assert_eq!(
        config.auth_token,
        AuthToken::Jwt(JwtOptions {
            sign_method: "RS256".into(),
            pub_key: Some("/k.pub".into()),
            priv_key: Some("/k".into()),
            ttl: Duration::from_secs(90),
        })
    );
    // Verify-only, and etcd's default ttl.
    let config = load_ok(
        &["--auth-token", "jwt,pub-key=/k.pub,sign-method=EdDSA"],
        &[],
    );
    let AuthToken::Jwt(jwt) = config.auth_token else {
        panic!("jwt expected");
    };
    assert_eq!((jwt.priv_key, jwt.ttl), (None, JWT_TTL_DEFAULT));
}

#[test]
fn bad_auth_settings_name_their_key() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--bcrypt-cost", "3"], "bcrypt-cost", "between 4 and 31"),
        (&["--bcrypt-cost", "32"], "bcrypt-cost", "between 4 and 31"),
        (
            &["--auth-token-ttl", "0"],
            "auth-token-ttl",
            "greater than 0",
        ),
        (&["--auth-token-ttl", "5m"], "auth-token-ttl", "seconds"),
        (&["--auth-token", "bogus"], "auth-token", "simple or jwt"),
        (
            &["--auth-token", "simple,ttl=1s"],
            "auth-token",
            "no options",
        ),
        (
            &["--auth-token", "jwt,pub-key=/k,sign-method=XX"],
            "auth-token",
            "sign-method",
        ),
        (
            &["--auth-token", "jwt,pub-key=/k,sign-method=ES512"],
            "auth-token",
            "sign-method",
        ),
        (
            &["--auth-token", "jwt,sign-method=RS256"],
            "auth-token",
            "priv-key",
        ),
        (
            &["--auth-token", "jwt,pub-key=/k,sign-method=RS256,ttl=soon"],
            "auth-token",
            "ttl",
        ),
        (
            &["--auth-token", "jwt,pub-key=/k,pubkey=/j,sign-method=RS256"],
            "auth-token",
            "unknown jwt option",
        ),
        (
            &[
                "--auth-token",
                "jwt,pub-key=/k,pub-key=/j,sign-method=RS256",
            ],
            "auth-token",
            "twice",
        ),
        (&["--auth-token", "jwt,pub-key"], "auth-token", "name=value"),
    ];
    for (args, key, reason) in cases {
        let err = load_err(args, &[]);
        assert_eq!(err.key(), Some(*key), "{args:?}: {err}");
        assert!(err.to_string().contains(reason), "{args:?}: {err}");
    }
}

#[test]
fn corrupt_check_time_takes_etcds_spellings() {
    assert_eq!(load_ok(&[], &[]).corrupt_check_time, Duration::ZERO);
    let config = load_ok(&["--experimental-corrupt-check-time=2s"], &[]);
    assert_eq!(config.corrupt_check_time, Duration::from_secs(2));
    let config = load_ok(&["--corrupt-check-time=1m"], &[]);
    assert_eq!(config.corrupt_check_time, Duration::from_secs(60));
    let config = load_ok(&[], &[("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", "500ms")]);
    assert_eq!(config.corrupt_check_time, Duration::from_millis(500));
    let err = load_err(&["--experimental-corrupt-check-time=often"], &[]);
    assert_eq!(err.key(), Some("corrupt-check-time"), "{err}");
}
