//! Server configuration: the typed [`Config`] and its parts, loaded from one table of keys and
//! defaults layered defaults < TOML file < `ETCD_*` environment < command-line flags, and
//! validated before any file is opened; also the `oxetcd snapshot restore` command line.
//!
//! Every key has the same spelling everywhere: the flag is `--data-dir`, the TOML key is `data-dir`
//! (`data_dir` is accepted too) and the environment variable is `ETCD_DATA_DIR`. The keys table
//! is the only place keys and defaults are written down; the clap command, the layered defaults
//! and the help text are all generated from it.
//!
//! Divergences from etcd, on purpose: etcd ignores flags and environment once `--config-file` is
//! given and treats a variable that is also given as a flag as fatal; here the sources are layered
//! (flags > env > file > defaults) and a shadowed variable is only a warning. As in etcd, an
//! unrecognized `ETCD_*` variable is a warning, while an unknown key in the config file is an
//! error.
//!
//! Where things live: `keys.rs` (the keys table, aliases, key and variable names), `cli.rs` (the
//! clap commands and [`parse_command`]), `layers.rs` (one layer per source, merged), `merged.rs`
//! (the merged layers read into a [`Config`]), `parse.rs` (Go-compatible booleans, durations and
//! URLs), `validate.rs` (ranges, relations between keys, bootstrap checks), `error.rs`
//! ([`ConfigError`]) and `tests.rs`.

mod backup;
mod cli;
mod error;
mod keys;
mod layers;
mod merged;
mod parse;
mod validate;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use backup::BackupConfig;
pub use cli::{Command, parse_command, parse_command_from_env_and_args};
pub use error::ConfigError;
pub use layers::Settings;

use cli::{get_matches, process_env, server_command};
use layers::{resolve, resolve_with_settings};
use parse::parse_duration;

/// Backend quota used when `--quota-backend-bytes` is 0 (etcd's 2 GiB).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;
/// Quota above which etcd warns that the backend may become slow (8 GiB).
pub const QUOTA_BACKEND_BYTES_RECOMMENDED_MAX: u64 = 8 * 1024 * 1024 * 1024;
/// Lease checkpoint interval used when `--experimental-lease-checkpoint-interval` is 0 (etcd's
/// 5 minutes).
pub const LEASE_CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Smallest `--backend-write-buffer-bytes`: below it RocksDB flushes tiny memtables constantly.
pub const BACKEND_WRITE_BUFFER_BYTES_MIN: u64 = 4 << 20;
/// Longest election timeout etcd accepts.
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
/// Upper bound of `--distributed-tracing-sampling-rate` (it is per million).
pub const TRACING_SAMPLING_PER_MILLION_MAX: u32 = 1_000_000;

/// The keys a running member applies on reload (SIGHUP, `systemctl reload`); a change to any
/// other key takes effect at the next start. Certificate and key files need no reload: they are
/// re-read on the next TLS handshake after they change.
pub const RELOADABLE_KEYS: [&str; 2] = ["log-level", "log-outputs"];

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

/// `--tls-min-version` / `--tls-max-version`, with etcd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            "TLS1.0" | "TLS1.1" => {
                Err("TLS1.0 and TLS1.1 are not supported; use TLS1.2 or TLS1.3".to_owned())
            }
            _ => Err("expected TLS1.2 or TLS1.3".to_owned()),
        }
    }
}

/// Which listeners a [`TlsSettings`] is for: the client and metrics URLs, or the peer URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsSide {
    Client,
    Peer,
}

/// The key names of one side's TLS settings, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsKeys {
    pub cert_file: &'static str,
    pub key_file: &'static str,
    pub client_cert_file: &'static str,
    pub client_key_file: &'static str,
    pub trusted_ca_file: &'static str,
    pub client_cert_auth: &'static str,
    pub crl_file: &'static str,
    pub allowed_hostname: &'static str,
    pub allowed_cn: &'static str,
    pub auto_tls: &'static str,
}

impl TlsSide {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsSide::Client => "client",
            TlsSide::Peer => "peer",
        }
    }

    /// The keys of this side (the client side has no allowed CN and no dialing pair: their
    /// entries name the nearest key).
    pub fn keys(self) -> &'static TlsKeys {
        match self {
            TlsSide::Client => &TlsKeys {
                cert_file: "cert-file",
                key_file: "key-file",
                client_cert_file: "cert-file",
                client_key_file: "key-file",
                trusted_ca_file: "trusted-ca-file",
                client_cert_auth: "client-cert-auth",
                crl_file: "client-crl-file",
                allowed_hostname: "client-cert-allowed-hostname",
                allowed_cn: "client-cert-allowed-hostname",
                auto_tls: "auto-tls",
            },
            TlsSide::Peer => &TlsKeys {
                cert_file: "peer-cert-file",
                key_file: "peer-key-file",
                client_cert_file: "peer-client-cert-file",
                client_key_file: "peer-client-key-file",
                trusted_ca_file: "peer-trusted-ca-file",
                client_cert_auth: "peer-client-cert-auth",
                crl_file: "peer-crl-file",
                allowed_hostname: "peer-cert-allowed-hostname",
                allowed_cn: "peer-cert-allowed-cn",
                auto_tls: "peer-auto-tls",
            },
        }
    }
}

/// TLS of one side's listeners (etcd's client or peer transport security): the client side
/// serves the https:// client and metrics URLs, the peer side serves the https:// peer URLs and
/// dials the peers' https:// URLs. Paths are only named here; the `tls` module reads and checks
/// the files. `--cipher-suites`, `--tls-min/max-version` and `--self-signed-cert-validity` apply
/// to both sides, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub side: TlsSide,
    /// `--cert-file` / `--peer-cert-file`.
    pub cert_file: Option<PathBuf>,
    /// `--key-file` / `--peer-key-file`.
    pub key_file: Option<PathBuf>,
    /// `--peer-client-cert-file`: what the member presents when it dials; `None` on the client
    /// side.
    pub client_cert_file: Option<PathBuf>,
    /// `--peer-client-key-file`.
    pub client_key_file: Option<PathBuf>,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`.
    pub client_cert_auth: bool,
    /// `--client-crl-file` / `--peer-crl-file`.
    pub crl_file: Option<PathBuf>,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`.
    pub allowed_hostname: Option<String>,
    /// `--peer-cert-allowed-cn`; `None` on the client side.
    pub allowed_cn: Option<String>,
    /// `--cipher-suites`: Go/IANA names, each one rustls supports; empty means rustls's
    /// defaults. Like Go, they restrict TLS 1.2 only; TLS 1.3 suites are always on.
    pub cipher_suites: Vec<String>,
    pub min_version: TlsVersion,
    /// `None`: the newest supported.
    pub max_version: Option<TlsVersion>,
    /// `--auto-tls` / `--peer-auto-tls`.
    pub auto_tls: bool,
    /// `--self-signed-cert-validity`.
    pub self_signed_cert_validity_years: u32,
}

impl TlsSettings {
    /// Whether an https:// listener has a certificate to present (files or auto TLS).
    pub fn has_certificate(&self) -> bool {
        (self.cert_file.is_some() && self.key_file.is_some()) || self.auto_tls
    }

    /// The names of this side's keys.
    pub fn keys(&self) -> &'static TlsKeys {
        self.side.keys()
    }
}

/// `--feature-gates` (etcd 3.6), as given: which gates were named and their value. Only
/// `InitialCorruptCheck` changes what oxetcd does (see the key's help); the others are kept so
/// the configuration says what was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureGates {
    pub gates: Vec<(String, bool)>,
}

/// etcd 3.6's feature gates (`server/features/etcd_features.go`).
pub const FEATURE_GATES_KNOWN: &[&str] = &[
    "StopGRPCServiceOnDefrag",
    "InitialCorruptCheck",
    "CompactHashCheck",
    "TxnModeWriteWithSharedBuffer",
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "SetMemberLocalAddr",
    "FastLeaseKeepAlive",
    "PriorityRequest",
];

impl FeatureGates {
    /// Parses etcd's `Name=bool,...` (the list already split on commas).
    fn parse(entries: &[String]) -> Result<FeatureGates, (String, String)> {
        let mut gates = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((name, value)) = entry.split_once('=') else {
                return Err((
                    entry.to_owned(),
                    "missing bool value; expected Name=true or Name=false".to_owned(),
                ));
            };
            let name = name.trim();
            if !FEATURE_GATES_KNOWN.contains(&name) {
                return Err((
                    entry.to_owned(),
                    format!(
                        "unrecognized feature gate {name:?}; known gates: {}",
                        FEATURE_GATES_KNOWN.join(", ")
                    ),
                ));
            }
            let value = parse::parse_bool(value.trim()).map_err(|_| {
                (
                    entry.to_owned(),
                    format!("invalid value of {name}: expected true or false"),
                )
            })?;
            gates.push((name.to_owned(), value));
        }
        Ok(FeatureGates { gates })
    }

    /// Whether gate `name` was set to true (the last setting wins, as in etcd).
    pub fn enabled(&self, name: &str) -> bool {
        self.gates
            .iter()
            .rev()
            .find(|(gate, _)| gate == name)
            .is_some_and(|(_, on)| *on)
    }
}

/// bcrypt's cost range (`--bcrypt-cost`).
pub const BCRYPT_COST_MIN: u32 = 4;
pub const BCRYPT_COST_MAX: u32 = 31;
/// A JWT's life when `--auth-token jwt,...` gives no `ttl=` (etcd's).
pub const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// `--auth-token`: how Authenticate's tokens are made. Files are only named here; the `auth`
/// module reads and checks the keys (at start, before the data directory is touched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthToken {
    /// etcd's simple tokens: random letters and the raft index, living `--auth-token-ttl`.
    Simple,
    /// Signed JWTs.
    Jwt(JwtOptions),
}

/// `--auth-token jwt,pub-key=..,priv-key=..,sign-method=..,ttl=..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    /// The `sign-method` as written (`RS256`, `ES256`, `EdDSA`, ...), one the auth module knows.
    pub sign_method: String,
    pub pub_key: Option<PathBuf>,
    pub priv_key: Option<PathBuf>,
    pub ttl: Duration,
}

/// The JWT signing methods `--auth-token` accepts: etcd's (golang-jwt's) names, except ES512,
/// which the JWT crate does not implement.
pub const JWT_SIGN_METHODS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

impl AuthToken {
    /// Parses `--auth-token` as etcd does: a type, then `,name=value` options (each once). Unlike
    /// etcd, an unknown option is refused rather than ignored, so a misspelt `priv-key` does not
    /// quietly make a verify-only member.
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let kind = parts.next().unwrap_or_default().trim();
        let mut options: Vec<(&str, &str)> = Vec::new();
        for part in parts {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!("option {part:?} is not name=value"));
            };
            if value.contains('=') {
                return Err(format!("option {part:?} is not name=value"));
            }
            if options.iter().any(|(seen, _)| *seen == name) {
                return Err(format!("option {name:?} is given twice"));
            }
            options.push((name, value));
        }
        match kind {
            "simple" if options.is_empty() => Ok(AuthToken::Simple),
            "simple" => Err("simple tokens take no options".to_owned()),
            "jwt" => {
                let mut jwt = JwtOptions {
                    sign_method: String::new(),
                    pub_key: None,
                    priv_key: None,
                    ttl: JWT_TTL_DEFAULT,
                };
                for (name, value) in options {
                    match name {
                        "sign-method" => jwt.sign_method = value.to_owned(),
                        "pub-key" => jwt.pub_key = (!value.is_empty()).then(|| value.into()),
                        "priv-key" => jwt.priv_key = (!value.is_empty()).then(|| value.into()),
                        "ttl" => {
                            jwt.ttl = parse_duration(value).map_err(|e| format!("ttl: {e}"))?;
                            if jwt.ttl.is_zero() {
                                return Err("ttl must be greater than 0".to_owned());
                            }
                        }
                        _ => {
                            return Err(format!(
                                "unknown jwt option {name:?} (expected pub-key, priv-key, \
                                 sign-method or ttl)"
                            ));
                        }
                    }
                }
                if !JWT_SIGN_METHODS.contains(&jwt.sign_method.as_str()) {
                    return Err(format!(
                        "sign-method {:?} is not one of {}",
                        jwt.sign_method,
                        JWT_SIGN_METHODS.join(", ")
                    ));
                }
                if jwt.pub_key.is_none() && jwt.priv_key.is_none() {
                    return Err(
                        "jwt needs priv-key (to sign), pub-key (to verify) or both".to_owned()
                    );
                }
                Ok(AuthToken::Jwt(jwt))
            }
            _ => Err("expected simple or jwt,<options>".to_owned()),
        }
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
    /// `--backend-cache-bytes`: RocksDB's block cache.
    pub backend_cache_bytes: u64,
    /// `--backend-write-buffer-bytes`: every column family's memtables together.
    pub backend_write_buffer_bytes: u64,
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
    /// TLS of the https:// client and metrics URLs.
    pub client_tls: TlsSettings,
    /// TLS of the https:// peer URLs, served and dialed.
    pub peer_tls: TlsSettings,
    /// `--feature-gates`.
    pub feature_gates: FeatureGates,
    /// `--experimental-initial-corrupt-check` (or the `InitialCorruptCheck` feature gate).
    pub initial_corrupt_check: bool,
    /// `--corrupt-check-time` (`--experimental-corrupt-check-time`); zero when off.
    pub corrupt_check_time: Duration,
    /// `--auth-token`.
    pub auth_token: AuthToken,
    /// `--auth-token-ttl`: a simple token's life after its last use.
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost`, within [`BCRYPT_COST_MIN`]..=[`BCRYPT_COST_MAX`].
    pub bcrypt_cost: u32,
    pub strict_reconfig_check: bool,
    pub pre_vote: bool,
    pub unsafe_no_fsync: bool,
    /// The `[backup]` table of the config file (defaults without one).
    pub backup: BackupConfig,
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

    /// [`Config::load`], also returning every key's merged value to compare with a later load.
    pub fn load_with_settings<I, T>(
        args: I,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Settings, Vec<String>), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = get_matches(server_command(), &args)?;
        resolve_with_settings(&matches, &args, env)
    }

    /// Reads the server's configuration again from the sources it started with (this process's
    /// flags and environment, and the file they name as it is now): what a reload (SIGHUP)
    /// applies. Only for a process started as `oxetcd [flags]`.
    pub fn reload_from_env_and_args() -> Result<(Config, Settings, Vec<String>), ConfigError> {
        Config::load_with_settings(std::env::args_os(), process_env())
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
