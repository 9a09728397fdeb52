//! Server configuration: one table of keys and defaults, layered defaults < TOML file <
//! `ETCD_*` environment < command-line flags, parsed into a typed [`Config`] and validated
//! before any file is opened; also the `oxetcd snapshot restore` command line.
//!
//! Every key has the same spelling everywhere: the flag is `--data-dir`, the TOML key is `data-dir`
//! (`data_dir` is accepted too) and the environment variable is `ETCD_DATA_DIR`. The table [`KEYS`]
//! is the only place keys and defaults are written down; the clap command, the layered defaults and
//! the help text are all generated from it.
//!
//! Divergences from etcd, on purpose: etcd ignores flags and environment once `--config-file` is
//! given and treats a variable that is also given as a flag as fatal; here the sources are layered
//! (flags > env > file > defaults) and a shadowed variable is only a warning. As in etcd, an
//! unrecognized `ETCD_*` variable is a warning, while an unknown key in the config file is an
//! error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::config::{Source as _, Value, ValueKind};
use clap::{Arg, ArgAction, ArgMatches};
use url::Url;

/// Backend quota used when `--quota-backend-bytes` is 0 (etcd's 2 GiB).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// Quota above which etcd warns that the backend may become slow (8 GiB).
pub const QUOTA_BACKEND_BYTES_RECOMMENDED_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// Lease checkpoint interval used when `--experimental-lease-checkpoint-interval` is 0 (etcd's
/// 5 minutes).
pub const LEASE_CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Longest election timeout etcd accepts.
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
/// Upper bound of `--distributed-tracing-sampling-rate` (it is per million).
pub const TRACING_SAMPLING_PER_MILLION_MAX: u32 = 1_000_000;

const ENV_PREFIX: &str = "ETCD_";
const CONFIG_FILE: &str = "config-file";
const RESTORE_FILE: &str = "file";

/// What kind of value a key holds; drives how its flag is declared and shown in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Bool,
    Integer,
    Duration,
    Urls,
    List,
}

/// The default of a key: a literal, or derived from other keys when left empty.
#[derive(Clone, Copy, Debug)]
enum KeyDefault {
    Value(&'static str),
    /// Empty in the layered defaults; the text describes the derivation for `--help`.
    Derived(&'static str),
}

/// One configuration key: its etcd flag name (without `--`), default, kind, help section and text.
#[derive(Clone, Copy, Debug)]
struct Key {
    name: &'static str,
    default: KeyDefault,
    kind: Kind,
    section: &'static str,
    help: &'static str,
}

impl Key {
    fn layered_default(&self) -> &'static str {
        match self.default {
            KeyDefault::Value(value) => value,
            KeyDefault::Derived(_) => "",
        }
    }

    fn shown_default(&self) -> &'static str {
        match self.default {
            KeyDefault::Value("") => "none",
            KeyDefault::Value(value) => value,
            KeyDefault::Derived(description) => description,
        }
    }
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const MONITORING: &str = "Monitoring";
const LOGGING: &str = "Logging";
const TRACING: &str = "Distributed tracing";
const FEATURES: &str = "Features";
const UNSAFE: &str = "Unsafe";

const fn key(
    name: &'static str,
    default: &'static str,
    kind: Kind,
    section: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        default: KeyDefault::Value(default),
        kind,
        section,
        help,
    }
}

/// Every configuration key, with its one default.
const KEYS: &[Key] = &[
    key(
        "name",
        "default",
        Kind::Text,
        MEMBER,
        "Human-readable name of this member",
    ),
    Key {
        name: "data-dir",
        default: KeyDefault::Derived("${name}.oxetcd"),
        kind: Kind::Text,
        section: MEMBER,
        help: "Directory holding this member's data",
    },
    key(
        "snapshot-count",
        "10000",
        Kind::Integer,
        MEMBER,
        "Applied entries between two raft snapshots (raft log truncation points)",
    ),
    key(
        "heartbeat-interval",
        "100",
        Kind::Integer,
        MEMBER,
        "Raft heartbeat interval in milliseconds",
    ),
    key(
        "election-timeout",
        "1000",
        Kind::Integer,
        MEMBER,
        "Raft election timeout in milliseconds",
    ),
    key(
        "listen-peer-urls",
        "http://127.0.0.1:2380",
        Kind::Urls,
        MEMBER,
        "Comma-separated URLs to listen on for peer (raft) traffic",
    ),
    key(
        "listen-client-urls",
        "http://127.0.0.1:2379",
        Kind::Urls,
        MEMBER,
        "Comma-separated URLs to listen on for client traffic",
    ),
    key(
        "quota-backend-bytes",
        "0",
        Kind::Integer,
        MEMBER,
        "Backend size that raises the NOSPACE alarm; 0 means 2 GiB",
    ),
    key(
        "max-request-bytes",
        "1572864",
        Kind::Integer,
        MEMBER,
        "Largest client request the server accepts, in bytes",
    ),
    key(
        "max-txn-ops",
        "128",
        Kind::Integer,
        MEMBER,
        "Most operations allowed in one transaction",
    ),
    key(
        "initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        Kind::Urls,
        CLUSTERING,
        "Comma-separated peer URLs of this member as announced to the rest of the cluster",
    ),
    Key {
        name: "initial-cluster",
        default: KeyDefault::Derived("${name}=${initial-advertise-peer-urls}"),
        kind: Kind::List,
        section: CLUSTERING,
        help: "Initial cluster members for bootstrapping, as name=peer-url,...",
    },
    key(
        "initial-cluster-state",
        "new",
        Kind::Text,
        CLUSTERING,
        "Initial cluster state: new or existing (to join a running cluster)",
    ),
    key(
        "initial-cluster-token",
        "etcd-cluster",
        Kind::Text,
        CLUSTERING,
        "Token that keeps clusters bootstrapped from the same member list apart",
    ),
    key(
        "advertise-client-urls",
        "http://127.0.0.1:2379",
        Kind::Urls,
        CLUSTERING,
        "Comma-separated client URLs of this member as announced to the rest of the cluster",
    ),
    key(
        "strict-reconfig-check",
        "true",
        Kind::Bool,
        CLUSTERING,
        "Reject membership changes that could cost the cluster its quorum",
    ),
    key(
        "pre-vote",
        "true",
        Kind::Bool,
        CLUSTERING,
        "Run raft's pre-vote phase before elections",
    ),
    key(
        "auto-compaction-mode",
        "periodic",
        Kind::Text,
        CLUSTERING,
        "Automatic compaction mode: periodic or revision",
    ),
    key(
        "auto-compaction-retention",
        "0",
        Kind::Text,
        CLUSTERING,
        "History kept by automatic compaction: a duration such as 1h or 30m (a bare number means \
         hours) in periodic mode, a revision count in revision mode; 0 disables it",
    ),
    key(
        "listen-metrics-urls",
        "",
        Kind::Urls,
        MONITORING,
        "Comma-separated extra URLs serving /metrics and /health",
    ),
    key(
        "log-level",
        "info",
        Kind::Text,
        LOGGING,
        "Log level: debug, info, warn, error, dpanic, panic or fatal",
    ),
    key(
        "log-outputs",
        "stderr",
        Kind::List,
        LOGGING,
        "Comma-separated log destinations: stderr, stdout, default or file paths",
    ),
    key(
        "log-format",
        "json",
        Kind::Text,
        LOGGING,
        "Log format: json or console",
    ),
    key(
        "enable-distributed-tracing",
        "false",
        Kind::Bool,
        TRACING,
        "Export OpenTelemetry traces of requests",
    ),
    key(
        "distributed-tracing-address",
        "localhost:4317",
        Kind::Text,
        TRACING,
        "OTLP gRPC collector address (host:port)",
    ),
    key(
        "distributed-tracing-service-name",
        "etcd",
        Kind::Text,
        TRACING,
        "Service name attached to exported traces",
    ),
    key(
        "distributed-tracing-sampling-rate",
        "0",
        Kind::Integer,
        TRACING,
        "Sampled traces per million requests",
    ),
    key(
        "watch-progress-notify-interval",
        "10m",
        Kind::Duration,
        FEATURES,
        "Interval between progress notifications sent to idle watchers",
    ),
    key(
        "auto-compaction-check-interval",
        "5m",
        Kind::Duration,
        FEATURES,
        "oxetcd: how often revision-mode auto compaction checks the store (etcd fixes it at 5m)",
    ),
    key(
        "warning-apply-duration",
        "100ms",
        Kind::Duration,
        FEATURES,
        "Applying an entry for longer than this logs a warning",
    ),
    key(
        "experimental-lease-checkpoint-interval",
        "5m",
        Kind::Duration,
        FEATURES,
        "How often the leader records through raft the remaining TTL of every lease granted for \
         longer than this, so a new leader does not restart it from its full TTL; 0 means 5m",
    ),
    key(
        "experimental-enable-lease-checkpoint",
        "false",
        Kind::Bool,
        FEATURES,
        "Accepted for etcd compatibility and ignored: oxetcd always checkpoints lease TTLs",
    ),
    key(
        "experimental-enable-lease-checkpoint-persist",
        "false",
        Kind::Bool,
        FEATURES,
        "Accepted for etcd compatibility and ignored: oxetcd always persists lease checkpoints",
    ),
    key(
        "max-learners",
        "1",
        Kind::Integer,
        FEATURES,
        "Most learner members the cluster may hold",
    ),
    key(
        "unsafe-no-fsync",
        "false",
        Kind::Bool,
        UNSAFE,
        "Skip fsync; a crash can lose or corrupt data (testing only)",
    ),
];

/// Old spellings accepted for a key (etcd 3.5's `--experimental-` names), as (old, current).
const ALIASES: &[(&str, &str)] = &[
    (
        "experimental-watch-progress-notify-interval",
        "watch-progress-notify-interval",
    ),
    (
        "experimental-warning-apply-duration",
        "warning-apply-duration",
    ),
    ("experimental-max-learners", "max-learners"),
    (
        "experimental-enable-distributed-tracing",
        "enable-distributed-tracing",
    ),
    (
        "experimental-distributed-tracing-address",
        "distributed-tracing-address",
    ),
    (
        "experimental-distributed-tracing-service-name",
        "distributed-tracing-service-name",
    ),
    (
        "experimental-distributed-tracing-sampling-rate",
        "distributed-tracing-sampling-rate",
    ),
];

/// Keys `oxetcd snapshot restore` takes as flags (the rest still come from file and environment).
const RESTORE_KEYS: &[&str] = &[
    "data-dir",
    "name",
    "initial-cluster",
    "initial-cluster-token",
    "initial-advertise-peer-urls",
];

/// Why the configuration could not be loaded. `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line did not parse; carries clap's rendered message (usage included).
    #[error("{0}")]
    Usage(String),
    /// The config file could not be read or is not valid TOML.
    #[error("cannot load config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// The config file holds keys that are not configuration keys.
    #[error("{} in config file {}", describe_unknown_keys(keys), path.display())]
    UnknownKeys { keys: Vec<String>, path: PathBuf },
    /// One key has a value that does not parse or is out of range.
    #[error(
        "invalid value {value:?} for --{key}: {reason}{}",
        origin.as_deref().map(|origin| format!(" (set by {origin})")).unwrap_or_default()
    )]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
        /// Where the value came from (config file or environment variable); `None` for flags and
        /// defaults.
        origin: Option<String>,
    },
    /// Values that are fine alone but not together; the message names the keys involved.
    #[error("{message}")]
    Invalid { key: String, message: String },
    /// The same key was given twice in one source (e.g. under its old and its current name).
    #[error("{message}")]
    Conflict { key: String, message: String },
    /// The layered configuration could not be assembled.
    #[error("merging configuration layers: {0}")]
    Layering(#[source] ::config::ConfigError),
}

impl ConfigError {
    /// The key (flag name without `--`) the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidValue { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Conflict { key, .. } => Some(key),
            ConfigError::UnknownKeys { keys, .. } => keys.first().map(String::as_str),
            ConfigError::Usage(_) | ConfigError::File { .. } | ConfigError::Layering(_) => None,
        }
    }

    fn invalid_value(key: &str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError::InvalidValue {
            key: key.to_owned(),
            value: value.to_string(),
            reason: reason.into(),
            origin: None,
        }
    }
}

fn describe_unknown_keys(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|key| format!("{key:?}")).collect();
    let noun = if keys.len() == 1 {
        "unknown key"
    } else {
        "unknown keys"
    };
    format!("{noun} {}", quoted.join(", "))
}

/// `--initial-cluster-state`: bootstrap a new cluster or join an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            _ => Err("expected new or existing".to_owned()),
        }
    }
}

/// `--log-level`, with etcd's (zap's) level names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    DPanic,
    Panic,
    Fatal,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::DPanic => "dpanic",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }

    /// The `tracing` level directive this maps to; the levels above error all map to `error`.
    pub fn filter_directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error | LogLevel::DPanic | LogLevel::Panic | LogLevel::Fatal => "error",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            "dpanic" => Ok(LogLevel::DPanic),
            "panic" => Ok(LogLevel::Panic),
            "fatal" => Ok(LogLevel::Fatal),
            _ => Err("expected one of debug, info, warn, error, dpanic, panic, fatal".to_owned()),
        }
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Console,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Console => "console",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "json" => Ok(LogFormat::Json),
            "console" => Ok(LogFormat::Console),
            _ => Err("expected json or console".to_owned()),
        }
    }
}

/// `--auto-compaction-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

impl CompactionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompactionMode::Periodic => "periodic",
            CompactionMode::Revision => "revision",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "periodic" => Ok(CompactionMode::Periodic),
            "revision" => Ok(CompactionMode::Revision),
            _ => Err("expected periodic or revision".to_owned()),
        }
    }
}

/// Automatic compaction, from `--auto-compaction-mode` and `--auto-compaction-retention` together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention 0.
    Disabled,
    /// Keep this much history (periodic mode).
    Periodic(Duration),
    /// Keep this many revisions (revision mode).
    Revision(u64),
}

impl AutoCompaction {
    /// Parses a retention the way etcd does: in periodic mode a bare integer is hours, otherwise a
    /// duration such as `30m`; in revision mode an integer count. Zero disables compaction.
    pub fn parse(mode: CompactionMode, retention: &str) -> Result<Self, String> {
        let compaction = match mode {
            CompactionMode::Periodic => match retention.parse::<u64>() {
                Ok(hours) => {
                    let seconds = hours
                        .checked_mul(3600)
                        .ok_or_else(|| "retention is too long".to_owned())?;
                    AutoCompaction::Periodic(Duration::from_secs(seconds))
                }
                Err(_) => {
                    AutoCompaction::Periodic(parse_duration(retention).map_err(|reason| {
                        format!("{reason} (periodic mode takes hours or a duration such as 30m)")
                    })?)
                }
            },
            CompactionMode::Revision => {
                AutoCompaction::Revision(retention.parse::<u64>().map_err(|_| {
                    "revision mode takes a non-negative number of revisions".to_owned()
                })?)
            }
        };
        Ok(match compaction {
            AutoCompaction::Periodic(retention) if retention.is_zero() => AutoCompaction::Disabled,
            AutoCompaction::Revision(0) => AutoCompaction::Disabled,
            other => other,
        })
    }
}

/// One member of `--initial-cluster`: a name and its peer URLs (a name may be listed several
/// times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<Url>,
}

/// The effective server configuration. Build it with [`Config::load`] (or [`Default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The TOML file the configuration was read from, if any.
    pub config_file: Option<PathBuf>,
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub snapshot_count: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// As configured; 0 means the default, see [`Config::quota_backend_bytes_effective`].
    pub quota_backend_bytes: i64,
    /// `--max-request-bytes`.
    pub request_bytes_max: u64,
    /// `--max-txn-ops`.
    pub txn_ops_max: u64,
    pub auto_compaction: AutoCompaction,
    /// `--auto-compaction-check-interval` (oxetcd's own): revision-mode check period.
    pub auto_compaction_check_interval: Duration,
    pub listen_metrics_urls: Vec<Url>,
    pub log_level: LogLevel,
    pub log_outputs: Vec<String>,
    pub log_format: LogFormat,
    pub watch_progress_notify_interval: Duration,
    pub warning_apply_duration: Duration,
    /// `--experimental-lease-checkpoint-interval`, 0 already replaced by the default.
    pub lease_checkpoint_interval: Duration,
    pub enable_distributed_tracing: bool,
    pub distributed_tracing_address: String,
    pub distributed_tracing_service_name: String,
    /// `--distributed-tracing-sampling-rate`.
    pub distributed_tracing_sampling_per_million: u32,
    /// `--max-learners`.
    pub learners_max: u32,
    pub strict_reconfig_check: bool,
    pub pre_vote: bool,
    pub unsafe_no_fsync: bool,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `oxetcd [flags]`: run the server.
    Serve(Config),
    /// `oxetcd snapshot restore <FILE> [--data-dir ..] [--name ..] [--initial-cluster ..] ...`:
    /// build a fresh data directory from a snapshot file. `data_dir` equals `config.data_dir`.
    SnapshotRestore {
        file: PathBuf,
        data_dir: PathBuf,
        config: Config,
    },
}

/// Parses the full command line (server or `snapshot restore`) with the given environment.
/// Returns the command and the warnings to log. `--help` and `--version` print and exit 0.
pub fn parse_command<I, T>(
    args: I,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Command, Vec<String>), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = get_matches(cli_command(), &args)?;
    match matches.subcommand() {
        None => {
            let (config, warnings) = resolve(&matches, &args, env)?;
            Ok((Command::Serve(config), warnings))
        }
        Some(("snapshot", snapshot)) => match snapshot.subcommand() {
            Some(("restore", restore)) => {
                let file = restore
                    .get_one::<PathBuf>(RESTORE_FILE)
                    .cloned()
                    .ok_or_else(|| {
                        ConfigError::Usage("snapshot restore needs a FILE".to_owned())
                    })?;
                let (config, warnings) = resolve(restore, &args, env)?;
                config.verify_bootstrap()?;
                let data_dir = config.data_dir.clone();
                Ok((
                    Command::SnapshotRestore {
                        file,
                        data_dir,
                        config,
                    },
                    warnings,
                ))
            }
            _ => Err(ConfigError::Usage(
                "snapshot needs a subcommand: restore".to_owned(),
            )),
        },
        Some((other, _)) => Err(ConfigError::Usage(format!("unknown subcommand {other:?}"))),
    }
}

/// [`parse_command`] on this process's arguments and environment.
pub fn parse_command_from_env_and_args() -> Result<(Command, Vec<String>), ConfigError> {
    parse_command(std::env::args_os(), process_env())
}

fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().map(|(key, value)| {
        (
            key.to_string_lossy().into_owned(),
            value.to_string_lossy().into_owned(),
        )
    })
}

impl Config {
    /// Loads the server configuration from flags (`args`, program name first) and `env`, reading
    /// the TOML file named by `--config-file` or `ETCD_CONFIG_FILE`, and validates it.
    /// Returns the configuration and the warnings to log (unrecognized `ETCD_*` variables, ...).
    pub fn load<I, T>(
        args: I,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = get_matches(server_command(), &args)?;
        resolve(&matches, &args, env)
    }

    /// [`Config::load`] on this process's arguments and environment.
    pub fn from_env_and_args() -> Result<(Config, Vec<String>), ConfigError> {
        Config::load(std::env::args_os(), process_env())
    }

    /// Checks ranges and the relations between keys. [`Config::load`] calls it; call it again after
    /// changing a configuration in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid_value("name", "", "must not be empty"));
        }
        if self.name.contains(['=', ',']) {
            return Err(ConfigError::invalid_value(
                "name",
                &self.name,
                "must not contain '=' or ','",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid_value(
                "data-dir",
                "",
                "must not be empty",
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::invalid_value(
                "heartbeat-interval",
                0,
                "must be greater than 0",
            ));
        }
        if self.election_timeout_ms < self.heartbeat_interval_ms.saturating_mul(5) {
            return Err(ConfigError::Invalid {
                key: "election-timeout".to_owned(),
                message: format!(
                    "--election-timeout[{}ms] should be at least as 5 times as \
                     --heartbeat-interval[{}ms]",
                    self.election_timeout_ms, self.heartbeat_interval_ms
                ),
            });
        }
        if self.election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
            return Err(ConfigError::Invalid {
                key: "election-timeout".to_owned(),
                message: format!(
                    "--election-timeout[{}ms] is too long, and should be set less than {}ms",
                    self.election_timeout_ms, ELECTION_TIMEOUT_MS_MAX
                ),
            });
        }
        if self.snapshot_count == 0 {
            return Err(ConfigError::invalid_value(
                "snapshot-count",
                0,
                "must be greater than 0",
            ));
        }
        if self.quota_backend_bytes < 0 {
            return Err(ConfigError::invalid_value(
                "quota-backend-bytes",
                self.quota_backend_bytes,
                "must not be negative (0 means the 2 GiB default)",
            ));
        }
        if self.request_bytes_max == 0 {
            return Err(ConfigError::invalid_value(
                "max-request-bytes",
                0,
                "must be greater than 0",
            ));
        }
        if self.txn_ops_max == 0 {
            return Err(ConfigError::invalid_value(
                "max-txn-ops",
                0,
                "must be greater than 0",
            ));
        }
        for (key, urls) in [
            ("listen-client-urls", &self.listen_client_urls),
            ("advertise-client-urls", &self.advertise_client_urls),
            ("listen-peer-urls", &self.listen_peer_urls),
            (
                "initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
        ] {
            if urls.is_empty() {
                return Err(ConfigError::invalid_value(
                    key,
                    "",
                    "needs at least one URL",
                ));
            }
        }
        self.validate_initial_cluster()?;
        if self.distributed_tracing_sampling_per_million > TRACING_SAMPLING_PER_MILLION_MAX {
            return Err(ConfigError::invalid_value(
                "distributed-tracing-sampling-rate",
                self.distributed_tracing_sampling_per_million,
                format!("must be between 0 and {TRACING_SAMPLING_PER_MILLION_MAX} (per million)"),
            ));
        }
        if self.enable_distributed_tracing {
            if self.distributed_tracing_address.is_empty() {
                return Err(ConfigError::invalid_value(
                    "distributed-tracing-address",
                    "",
                    "must not be empty when tracing is enabled",
                ));
            }
            if self.distributed_tracing_service_name.is_empty() {
                return Err(ConfigError::invalid_value(
                    "distributed-tracing-service-name",
                    "",
                    "must not be empty when tracing is enabled",
                ));
            }
        }
        if self.learners_max == 0 {
            return Err(ConfigError::invalid_value(
                "max-learners",
                0,
                "must be at least 1",
            ));
        }
        if self.log_outputs.is_empty() {
            return Err(ConfigError::invalid_value(
                "log-outputs",
                "",
                "needs at least one output",
            ));
        }
        Ok(())
    }

    fn validate_initial_cluster(&self) -> Result<(), ConfigError> {
        if self.initial_cluster.is_empty() {
            return Err(ConfigError::invalid_value(
                "initial-cluster",
                "",
                "needs at least one member",
            ));
        }
        let mut seen = BTreeSet::new();
        for member in &self.initial_cluster {
            if member.name.is_empty() || member.peer_urls.is_empty() {
                return Err(ConfigError::invalid_value(
                    "initial-cluster",
                    self.initial_cluster_string(),
                    "every member needs a name and a peer URL",
                ));
            }
            for url in &member.peer_urls {
                let url = etcd_url_string(url);
                if !seen.insert(url.clone()) {
                    return Err(ConfigError::invalid_value(
                        "initial-cluster",
                        self.initial_cluster_string(),
                        format!("peer URL {url} is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks what bootstrapping a member from this configuration needs (etcd does this only when
    /// the data directory is empty, so it is not part of [`Config::validate`]): this member's name
    /// is in `--initial-cluster`, and for a new cluster its URLs there equal
    /// `--initial-advertise-peer-urls`.
    pub fn verify_bootstrap(&self) -> Result<(), ConfigError> {
        let Some(member) = self
            .initial_cluster
            .iter()
            .find(|member| member.name == self.name)
        else {
            return Err(ConfigError::Invalid {
                key: "initial-cluster".to_owned(),
                message: format!(
                    "couldn't find local name {:?} in the initial cluster configuration \
                     (--initial-cluster {:?})",
                    self.name,
                    self.initial_cluster_string()
                ),
            });
        };
        if self.initial_cluster_state == ClusterState::New {
            let in_cluster: BTreeSet<String> =
                member.peer_urls.iter().map(etcd_url_string).collect();
            let advertised: BTreeSet<String> = self
                .initial_advertise_peer_urls
                .iter()
                .map(etcd_url_string)
                .collect();
            if in_cluster != advertised {
                return Err(ConfigError::Invalid {
                    key: "initial-advertise-peer-urls".to_owned(),
                    message: format!(
                        "--initial-advertise-peer-urls {:?} does not match the URLs of {:?} in \
                         --initial-cluster ({:?})",
                        join_urls(&self.initial_advertise_peer_urls),
                        self.name,
                        join_urls(&member.peer_urls)
                    ),
                });
            }
        }
        Ok(())
    }

    /// `--initial-cluster` written back as `name=url,name=url`.
    pub fn initial_cluster_string(&self) -> String {
        let entries: Vec<String> = self
            .initial_cluster
            .iter()
            .flat_map(|member| {
                member
                    .peer_urls
                    .iter()
                    .map(|url| format!("{}={}", member.name, etcd_url_string(url)))
            })
            .collect();
        entries.join(",")
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// Raft election timeout in heartbeat ticks (election timeout / heartbeat interval).
    pub fn election_ticks(&self) -> usize {
        let ticks = self.election_timeout_ms / self.heartbeat_interval_ms.max(1);
        usize::try_from(ticks).unwrap_or(usize::MAX)
    }

    /// The backend quota in force: the configured one, or 2 GiB when it is 0.
    pub fn quota_backend_bytes_effective(&self) -> u64 {
        match u64::try_from(self.quota_backend_bytes) {
            Ok(0) | Err(_) => QUOTA_BACKEND_BYTES_DEFAULT,
            Ok(quota_bytes) => quota_bytes,
        }
    }

    /// How long a client request may wait for raft: 5s plus two election timeouts, as in etcd.
    pub fn request_timeout(&self) -> Duration {
        let election_ms = (self.election_ticks() as u64).saturating_mul(self.heartbeat_interval_ms);
        Duration::from_secs(5) + Duration::from_millis(election_ms.saturating_mul(2))
    }

    /// Warnings about a valid but risky configuration.
    fn advisories(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.quota_backend_bytes_effective() > QUOTA_BACKEND_BYTES_RECOMMENDED_MAX {
            warnings.push(format!(
                "--quota-backend-bytes {} exceeds the recommended maximum of {} bytes",
                self.quota_backend_bytes, QUOTA_BACKEND_BYTES_RECOMMENDED_MAX
            ));
        }
        if self.unsafe_no_fsync {
            warnings.push("--unsafe-no-fsync is set: a crash can lose or corrupt data".to_owned());
        }
        warnings
    }
}

impl Default for Config {
    /// The built-in defaults, with no file, environment or flags.
    fn default() -> Self {
        let (config, _warnings) = Config::load(["oxetcd"], std::iter::empty())
            .expect("the built-in defaults are a valid configuration");
        config
    }
}

/// A URL the way etcd writes it: `scheme://host:port`, no trailing slash.
pub fn etcd_url_string(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url_host_port(url))
}

/// The `host:port` of a URL, suitable for binding or dialing (`[::1]:2379` for IPv6).
pub fn url_host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn join_urls(urls: &[Url]) -> String {
    let urls: Vec<String> = urls.iter().map(etcd_url_string).collect();
    urls.join(",")
}

// ---------------------------------------------------------------------------------------------
// Command line

fn key_arg(key: &Key) -> Arg {
    let mut arg = Arg::new(key.name)
        .long(key.name)
        .help(format!("{} [default: {}]", key.help, key.shown_default()))
        .help_heading(key.section)
        .action(ArgAction::Set)
        .value_parser(clap::value_parser!(String));
    arg = match key.kind {
        Kind::Bool => arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .value_name("BOOL"),
        Kind::Integer => arg.value_name("NUMBER"),
        Kind::Duration => arg.value_name("DURATION"),
        Kind::Urls => arg.value_name("URLS"),
        Kind::List | Kind::Text => arg.value_name("VALUE"),
    };
    for (old, current) in ALIASES {
        if *current == key.name {
            arg = arg.alias(*old);
        }
    }
    arg
}

fn config_file_arg() -> Arg {
    Arg::new(CONFIG_FILE)
        .long(CONFIG_FILE)
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .action(ArgAction::Set)
        .help("TOML configuration file; ETCD_* variables and flags override its values")
}

fn server_command() -> clap::Command {
    clap::Command::new("oxetcd")
        .version(env!("CARGO_PKG_VERSION"))
        .about("An etcd v3 compatible, strongly consistent key-value store")
        .after_help(
            "Every flag can also be set as an ETCD_* environment variable (ETCD_DATA_DIR for \
             --data-dir) or as a key of the --config-file TOML file (data-dir = \"...\"). \
             Flags override the environment, which overrides the file.",
        )
        .disable_help_subcommand(true)
        .args_override_self(true)
        .arg(config_file_arg())
        .args(KEYS.iter().map(key_arg))
}

fn cli_command() -> clap::Command {
    let restore = clap::Command::new("restore")
        .about("Create a new data directory from a snapshot file")
        .args_override_self(true)
        .arg(
            Arg::new(RESTORE_FILE)
                .value_name("FILE")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("Snapshot file to restore from"),
        )
        .arg(config_file_arg())
        .args(
            KEYS.iter()
                .filter(|key| RESTORE_KEYS.contains(&key.name))
                .map(key_arg),
        );
    let snapshot = clap::Command::new("snapshot")
        .about("Snapshot tools")
        .subcommand_required(true)
        .subcommand(restore);
    server_command()
        .args_conflicts_with_subcommands(true)
        .subcommand(snapshot)
}

fn get_matches(command: clap::Command, args: &[OsString]) -> Result<ArgMatches, ConfigError> {
    command.try_get_matches_from(args).map_err(|err| {
        if !err.use_stderr() {
            // --help or --version: clap prints to stdout and exits 0.
            err.exit();
        }
        ConfigError::Usage(err.render().to_string().trim_end().to_owned())
    })
}

// ---------------------------------------------------------------------------------------------
// Layers

/// The keys one source sets, with how each was spelled there (for conflict messages).
#[derive(Clone, Debug, Default)]
struct Layer {
    values: BTreeMap<&'static str, (String, Value)>,
}

impl Layer {
    fn insert(
        &mut self,
        key: &'static str,
        spelling: String,
        value: Value,
        source: &str,
    ) -> Result<(), ConfigError> {
        if let Some((previous, _)) = self.values.get(key) {
            return Err(ConfigError::Conflict {
                key: key.to_owned(),
                message: format!("{previous} and {spelling} both set --{key} in {source}"),
            });
        }
        self.values.insert(key, (spelling, value));
        Ok(())
    }
}

impl ::config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn ::config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<::config::Map<String, Value>, ::config::ConfigError> {
        Ok(self
            .values
            .iter()
            .map(|(key, (_, value))| ((*key).to_owned(), value.clone()))
            .collect())
    }
}

/// Maps a key as written (dashes) to its table entry, and says whether an old alias was used.
fn canonical_key(written: &str) -> Option<(&'static str, bool)> {
    if let Some(key) = KEYS.iter().find(|key| key.name == written) {
        return Some((key.name, false));
    }
    ALIASES
        .iter()
        .find(|(old, _)| *old == written)
        .and_then(|(_, current)| KEYS.iter().find(|key| key.name == *current))
        .map(|key| (key.name, true))
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// The flags given on the command line; warns about old names and rejects a key given under two.
fn flag_layer(
    matches: &ArgMatches,
    args: &[OsString],
    warnings: &mut Vec<String>,
) -> Result<Layer, ConfigError> {
    let mut spellings: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for arg in args.iter().skip(1) {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        let Some(flag) = arg.strip_prefix("--") else {
            continue;
        };
        let written = flag.split_once('=').map_or(flag, |(name, _)| name);
        if let Some((key, is_alias)) = canonical_key(written) {
            spellings.entry(key).or_default().insert(written.to_owned());
            if is_alias {
                warnings.push(format!("--{written} is deprecated; use --{key}"));
            }
        }
    }
    if let Some((key, written)) = spellings.iter().find(|(_, written)| written.len() > 1) {
        let written: Vec<String> = written.iter().map(|name| format!("--{name}")).collect();
        return Err(ConfigError::Conflict {
            key: (*key).to_owned(),
            message: format!(
                "{} are the same setting; give only --{key}",
                written.join(" and ")
            ),
        });
    }

    let mut layer = Layer::default();
    for key in KEYS {
        if let Ok(Some(value)) = matches.try_get_one::<String>(key.name) {
            let value = Value::new(None, value.clone());
            layer.insert(
                key.name,
                format!("--{}", key.name),
                value,
                "the command line",
            )?;
        }
    }
    Ok(layer)
}

/// The `ETCD_*` variables that name keys, and `ETCD_CONFIG_FILE`; warns about the others.
fn env_layer(
    env: impl IntoIterator<Item = (String, String)>,
    warnings: &mut Vec<String>,
) -> Result<(Layer, Option<PathBuf>), ConfigError> {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    let mut layer = Layer::default();
    let mut config_file = None;
    for (var, value) in vars {
        let written = var[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace('_', "-");
        if written == CONFIG_FILE {
            config_file = Some(PathBuf::from(value));
            continue;
        }
        match canonical_key(&written) {
            Some((key, is_alias)) => {
                if is_alias {
                    warnings.push(format!("{var} is deprecated; use {}", env_name(key)));
                }
                let origin = format!("environment variable {var}");
                let value = Value::new(Some(&origin), value);
                layer.insert(key, var, value, "the environment")?;
            }
            None if var == "ETCD_VERSION" => {
                warnings.push("ignoring special environment variable ETCD_VERSION".to_owned());
            }
            None => warnings.push(format!("unrecognized environment variable {var}")),
        }
    }
    Ok((layer, config_file))
}

/// The keys of a TOML config file; an unknown key is an error, `_` may stand for `-`.
fn file_layer(path: &Path, text: &str, warnings: &mut Vec<String>) -> Result<Layer, ConfigError> {
    let table = ::config::File::from_str(text, ::config::FileFormat::Toml)
        .collect()
        .map_err(|err| ConfigError::File {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
    let table: BTreeMap<String, Value> = table.into_iter().collect();
    let origin = format!("config file {}", path.display());
    let source = format!("config file {}", path.display());
    let mut layer = Layer::default();
    let mut unknown = Vec::new();
    // The `[log]` table (`file`, `level`, `format`) is the packaged config's spelling of
    // log-outputs, log-level and log-format.
    let mut entries: Vec<(String, Value)> = Vec::new();
    for (written, value) in table {
        match (written.as_str(), value.kind.clone()) {
            ("log", ValueKind::Table(inner)) => {
                for (sub, v) in inner {
                    let key = match sub.as_str() {
                        "file" => "log-outputs",
                        "level" => "log-level",
                        "format" => "log-format",
                        _ => {
                            unknown.push(format!("log.{sub}"));
                            continue;
                        }
                    };
                    entries.push((key.to_owned(), v));
                }
            }
            _ => entries.push((written, value)),
        }
    }
    for (written, value) in entries {
        match canonical_key(&written.replace('_', "-")) {
            Some((key, is_alias)) => {
                if is_alias {
                    warnings.push(format!(
                        "{written:?} in {source} is deprecated; use {key:?}"
                    ));
                }
                let value = Value::new(Some(&origin), value.kind);
                layer.insert(key, format!("{written:?}"), value, &source)?;
            }
            None => unknown.push(written),
        }
    }
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownKeys {
            keys: unknown,
            path: path.to_owned(),
        });
    }
    Ok(layer)
}

/// Parses flags, environment and config file into a validated configuration plus warnings.
fn resolve(
    matches: &ArgMatches,
    args: &[OsString],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut warnings = Vec::new();
    let flags = flag_layer(matches, args, &mut warnings)?;
    let (env, env_config_file) = env_layer(env, &mut warnings)?;
    for (key, (var, _)) in &env.values {
        if flags.values.contains_key(key) {
            warnings.push(format!(
                "environment variable {var} is shadowed by flag --{key}"
            ));
        }
    }
    let flag_config_file = matches
        .try_get_one::<PathBuf>(CONFIG_FILE)
        .ok()
        .flatten()
        .cloned();
    if flag_config_file.is_some() && env_config_file.is_some() {
        warnings.push(
            "environment variable ETCD_CONFIG_FILE is shadowed by flag --config-file".to_owned(),
        );
    }
    let config_file = flag_config_file.or(env_config_file);
    let file = match &config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
                path: path.clone(),
                message: err.to_string(),
            })?;
            file_layer(path, &text, &mut warnings)?
        }
        None => Layer::default(),
    };

    let mut builder = ::config::Config::builder();
    for key in KEYS {
        builder = builder
            .set_default(key.name, key.layered_default())
            .map_err(ConfigError::Layering)?;
    }
    let merged = builder
        .add_source(file)
        .add_source(env)
        .add_source(flags)
        .build()
        .and_then(|layered| layered.collect())
        .map_err(ConfigError::Layering)?;
    let merged = Merged { values: merged };

    let config = merged.to_config(config_file)?;
    config.validate().map_err(|err| merged.with_origin(err))?;
    warnings.extend(config.advisories());
    Ok((config, warnings))
}

// ---------------------------------------------------------------------------------------------
// Typed values

/// The merged layers: every key of [`KEYS`] holds a value, its default at least.
struct Merged {
    values: ::config::Map<String, Value>,
}

impl Merged {
    fn value(&self, key: &'static str) -> &Value {
        self.values
            .get(key)
            .expect("every key in KEYS has a layered default")
    }

    fn invalid(
        &self,
        key: &'static str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        self.with_origin(ConfigError::invalid_value(key, value, reason))
    }

    /// Adds where the value came from to an error about one key.
    fn with_origin(&self, err: ConfigError) -> ConfigError {
        match err {
            ConfigError::InvalidValue {
                key,
                value,
                reason,
                origin: None,
            } => {
                let origin = self
                    .values
                    .get(key.as_str())
                    .and_then(|value| value.origin())
                    .map(str::to_owned);
                ConfigError::InvalidValue {
                    key,
                    value,
                    reason,
                    origin,
                }
            }
            other => other,
        }
    }

    fn text(&self, key: &'static str) -> Result<String, ConfigError> {
        let value = self.value(key);
        scalar_text(&value.kind)
            .ok_or_else(|| self.invalid(key, describe_kind(&value.kind), "expected a single value"))
    }

    fn parse<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let text = self.text(key)?;
        parse(&text).map_err(|reason| self.invalid(key, &text, reason))
    }

    fn integer<T: std::str::FromStr>(
        &self,
        key: &'static str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        self.parse(key, |text| {
            text.trim()
                .parse::<T>()
                .map_err(|_| format!("expected {expected}"))
        })
    }

    fn boolean(&self, key: &'static str) -> Result<bool, ConfigError> {
        self.parse(key, parse_bool)
    }

    fn duration(&self, key: &'static str) -> Result<Duration, ConfigError> {
        self.parse(key, parse_duration)
    }

    /// A list: a TOML array, or one comma-separated string. Items are trimmed, empty ones dropped.
    fn list(&self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        let value = self.value(key);
        let items: Vec<String> = match &value.kind {
            ValueKind::Array(items) => items
                .iter()
                .map(|item| {
                    scalar_text(&item.kind).ok_or_else(|| {
                        self.invalid(key, describe_kind(&item.kind), "expected a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            kind => scalar_text(kind)
                .ok_or_else(|| self.invalid(key, describe_kind(kind), "expected a list"))?
                .split(',')
                .map(str::to_owned)
                .collect(),
        };
        Ok(items
            .into_iter()
            .map(|item| item.trim().to_owned())
            .filter(|item| !item.is_empty())
            .collect())
    }

    fn urls(&self, key: &'static str) -> Result<Vec<Url>, ConfigError> {
        self.list(key)?
            .into_iter()
            .map(|item| parse_url(&item).map_err(|reason| self.invalid(key, &item, reason)))
            .collect()
    }

    fn initial_cluster(
        &self,
        name: &str,
        advertised: &[Url],
    ) -> Result<Vec<InitialMember>, ConfigError> {
        const KEY: &str = "initial-cluster";
        let entries = self.list(KEY)?;
        if entries.is_empty() {
            return Ok(vec![InitialMember {
                name: name.to_owned(),
                peer_urls: advertised.to_vec(),
            }]);
        }
        let mut members: Vec<InitialMember> = Vec::new();
        for entry in entries {
            let Some((member, url)) = entry.split_once('=') else {
                return Err(self.invalid(KEY, &entry, "expected name=peer-url"));
            };
            let (member, url) = (member.trim(), url.trim());
            if member.is_empty() {
                return Err(self.invalid(KEY, &entry, "member name is empty"));
            }
            let url = parse_url(url).map_err(|reason| self.invalid(KEY, &entry, reason))?;
            match members.iter_mut().find(|known| known.name == member) {
                Some(known) => known.peer_urls.push(url),
                None => members.push(InitialMember {
                    name: member.to_owned(),
                    peer_urls: vec![url],
                }),
            }
        }
        Ok(members)
    }

    fn to_config(&self, config_file: Option<PathBuf>) -> Result<Config, ConfigError> {
        let name = self.text("name")?;
        let data_dir = match self.text("data-dir")? {
            dir if dir.is_empty() => PathBuf::from(format!("{name}.oxetcd")),
            dir => PathBuf::from(dir),
        };
        let initial_advertise_peer_urls = self.urls("initial-advertise-peer-urls")?;
        let initial_cluster = self.initial_cluster(&name, &initial_advertise_peer_urls)?;
        let compaction_mode = self.parse("auto-compaction-mode", CompactionMode::parse)?;
        let auto_compaction = self.parse("auto-compaction-retention", |text| {
            AutoCompaction::parse(compaction_mode, text)
        })?;
        const WHOLE: &str = "a non-negative whole number";
        let lease_checkpoint_interval =
            match self.duration("experimental-lease-checkpoint-interval")? {
                zero if zero.is_zero() => LEASE_CHECKPOINT_INTERVAL_DEFAULT,
                interval => interval,
            };
        // Checked for a valid boolean, then ignored: checkpoints are always on.
        self.boolean("experimental-enable-lease-checkpoint")?;
        self.boolean("experimental-enable-lease-checkpoint-persist")?;
        Ok(Config {
            config_file,
            data_dir,
            listen_client_urls: self.urls("listen-client-urls")?,
            advertise_client_urls: self.urls("advertise-client-urls")?,
            listen_peer_urls: self.urls("listen-peer-urls")?,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: self.parse("initial-cluster-state", ClusterState::parse)?,
            initial_cluster_token: self.text("initial-cluster-token")?,
            snapshot_count: self.integer("snapshot-count", WHOLE)?,
            heartbeat_interval_ms: self
                .integer("heartbeat-interval", "a whole number of milliseconds")?,
            election_timeout_ms: self
                .integer("election-timeout", "a whole number of milliseconds")?,
            quota_backend_bytes: self.integer("quota-backend-bytes", "a whole number of bytes")?,
            request_bytes_max: self.integer("max-request-bytes", "a whole number of bytes")?,
            txn_ops_max: self.integer("max-txn-ops", WHOLE)?,
            auto_compaction,
            listen_metrics_urls: self.urls("listen-metrics-urls")?,
            log_level: self.parse("log-level", LogLevel::parse)?,
            log_outputs: self.list("log-outputs")?,
            log_format: self.parse("log-format", LogFormat::parse)?,
            watch_progress_notify_interval: self.duration("watch-progress-notify-interval")?,
            auto_compaction_check_interval: self.duration("auto-compaction-check-interval")?,
            warning_apply_duration: self.duration("warning-apply-duration")?,
            lease_checkpoint_interval,
            enable_distributed_tracing: self.boolean("enable-distributed-tracing")?,
            distributed_tracing_address: self.text("distributed-tracing-address")?,
            distributed_tracing_service_name: self.text("distributed-tracing-service-name")?,
            distributed_tracing_sampling_per_million: self
                .integer("distributed-tracing-sampling-rate", WHOLE)?,
            learners_max: self.integer("max-learners", WHOLE)?,
            strict_reconfig_check: self.boolean("strict-reconfig-check")?,
            pre_vote: self.boolean("pre-vote")?,
            unsafe_no_fsync: self.boolean("unsafe-no-fsync")?,
            name,
        })
    }
}

/// A scalar as text (TOML numbers and booleans included); `None` for tables and arrays.
fn scalar_text(kind: &ValueKind) -> Option<String> {
    match kind {
        ValueKind::Nil => Some(String::new()),
        ValueKind::Boolean(value) => Some(value.to_string()),
        ValueKind::I64(value) => Some(value.to_string()),
        ValueKind::I128(value) => Some(value.to_string()),
        ValueKind::U64(value) => Some(value.to_string()),
        ValueKind::U128(value) => Some(value.to_string()),
        ValueKind::Float(value) => Some(value.to_string()),
        ValueKind::String(value) => Some(value.clone()),
        ValueKind::Table(_) | ValueKind::Array(_) => None,
    }
}

fn describe_kind(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Table(_) => "<table>".to_owned(),
        ValueKind::Array(_) => "<array>".to_owned(),
        other => scalar_text(other).unwrap_or_default(),
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (etcd's flags do).
fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// A duration in Go's `time.ParseDuration` syntax: `0`, or numbers with units `ns`, `us`
/// (or `µs`), `ms`, `s`, `m`, `h`, e.g. `1h30m`, `1.5s`, `100ms`. Negative durations are refused.
fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 100ms, 10s, 30m or 1h30m";
    let mut rest = text.trim();
    if let Some(unsigned) = rest.strip_prefix('+') {
        rest = unsigned;
    }
    if rest.starts_with('-') {
        return Err("duration must not be negative".to_owned());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after_whole) = rest.split_at(whole_len);
        let (fraction, after_number) = match after_whole.strip_prefix('.') {
            Some(after_dot) => {
                let fraction_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(fraction_len)
            }
            None => ("", after_whole),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(EXPECTED.to_owned());
        }
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(format!("missing unit; {EXPECTED}")),
            other => return Err(format!("unknown unit {other:?}; {EXPECTED}")),
        };
        let too_long = || "duration is too long".to_owned();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part_ns = whole.checked_mul(unit_ns).ok_or_else(too_long)?;
        // Digits past the 18th cannot matter at nanosecond resolution.
        let fraction = &fraction[..fraction.len().min(18)];
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| EXPECTED.to_owned())?;
            let scale = 10u128.pow(u32::try_from(fraction.len()).expect("at most 18 digits"));
            part_ns += digits * unit_ns / scale;
        }
        total_ns = total_ns.checked_add(part_ns).ok_or_else(too_long)?;
        rest = after_unit;
    }
    let total_ns = u64::try_from(total_ns).map_err(|_| "duration is too long".to_owned())?;
    Ok(Duration::from_nanos(total_ns))
}

/// A listener or advertised URL: http or https, with a host and an explicit port, no path.
fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; use http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host; expected scheme://host:port".to_owned());
    }
    if !has_explicit_port(text) {
        return Err("the URL has no port; expected scheme://host:port".to_owned());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a path, query or fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".to_owned());
    }
    Ok(url)
}

/// Whether the authority of a URL names a port (the `url` crate hides a scheme's default port).
fn has_explicit_port(text: &str) -> bool {
    let Some((_, after_scheme)) = text.split_once("://") else {
        return false;
    };
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let port = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .map(|(_, after)| after)
            .and_then(|after| after.strip_prefix(':')),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    };
    port.is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
            advertise-client-urls = "http://10.0.0.1:2379, http://10.0.0.2:2379"
            heartbeat-interval = 50
            election-timeout = "500"
            pre-vote = false
            enable-distributed-tracing = "true"
            quota-backend-bytes = 4294967296
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
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err:?}");
        assert_eq!(err.key(), Some("data-dir"));
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
             supported; use http or https (set by environment variable ETCD_INITIAL_ADVERTISE_PEER_URLS)"
        );
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
        assert!(err.to_string().contains("is too long"), "{err}");
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
        assert!(
            err.to_string().contains("couldn't find local name \"c\""),
            "{err}"
        );

        let mismatch = load_ok(
            &["--name=a", "--initial-cluster=a=http://10.0.0.1:2380"],
            &[],
        );
        let err = mismatch.verify_bootstrap().unwrap_err();
        assert_eq!(err.key(), Some("initial-advertise-peer-urls"));
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
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err:?}");
        let err = load_err(
            &[],
            &[
                ("ETCD_MAX_LEARNERS", "2"),
                ("ETCD_EXPERIMENTAL_MAX_LEARNERS", "3"),
            ],
        );
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err:?}");
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
        } = command
        else {
            panic!("{command:?}")
        };
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
}
