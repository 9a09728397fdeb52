//! `ConfigError`: why a configuration could not be loaded, and which key it is about.

use std::fmt;
use std::path::PathBuf;

use super::ELECTION_TIMEOUT_MS_MAX;

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
    /// `--election-timeout` is shorter than five heartbeats.
    #[error(
        "--election-timeout[{election_timeout_ms}ms] should be at least as 5 times as \
         --heartbeat-interval[{heartbeat_interval_ms}ms]"
    )]
    ElectionTimeoutTooShort {
        election_timeout_ms: u64,
        heartbeat_interval_ms: u64,
    },
    /// `--election-timeout` is above [`ELECTION_TIMEOUT_MS_MAX`].
    #[error(
        "--election-timeout[{election_timeout_ms}ms] is too long, and should be set less than \
         {ELECTION_TIMEOUT_MS_MAX}ms"
    )]
    ElectionTimeoutTooLong { election_timeout_ms: u64 },
    /// Bootstrapping: `--name` is not a member of `--initial-cluster`.
    #[error(
        "couldn't find local name {name:?} in the initial cluster configuration \
         (--initial-cluster {initial_cluster:?})"
    )]
    NotInInitialCluster {
        name: String,
        initial_cluster: String,
    },
    /// Bootstrapping a new cluster: this member's URLs in `--initial-cluster` differ from
    /// `--initial-advertise-peer-urls` (both as comma-separated etcd URL strings).
    #[error(
        "--initial-advertise-peer-urls {advertised:?} does not match the URLs of {name:?} in \
         --initial-cluster ({in_cluster:?})"
    )]
    PeerUrlsMismatch {
        name: String,
        advertised: String,
        in_cluster: String,
    },
    /// An https:// listener URL with no certificate to serve (no cert and key files and no
    /// auto TLS of its side).
    #[error(
        "--{key} has the https URL {url} but no certificate: set --{cert_key} and --{key_key} \
         (or --{auto_key})"
    )]
    HttpsWithoutCertificate {
        key: String,
        url: String,
        cert_key: &'static str,
        key_key: &'static str,
        auto_key: &'static str,
    },
    /// Two flags on the command line are spellings of one key (its old and its current name).
    #[error("{} are the same setting; give only --{key}", describe_flags(flags))]
    SameSettingTwice { key: String, flags: Vec<String> },
    /// One source (a config file, the environment) sets a key twice, under `first` and `second`.
    #[error("{first} and {second} both set --{key} in {layer}")]
    SetTwice {
        key: String,
        first: String,
        second: String,
        /// "the environment", "config file PATH", "the command line".
        layer: String,
    },
    /// The layered configuration could not be assembled.
    #[error("merging configuration layers: {0}")]
    Layering(#[source] ::config::ConfigError),
}

impl ConfigError {
    /// The key (flag name without `--`) the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::InvalidValue { key, .. }
            | ConfigError::SameSettingTwice { key, .. }
            | ConfigError::SetTwice { key, .. }
            | ConfigError::HttpsWithoutCertificate { key, .. } => Some(key),
            ConfigError::ElectionTimeoutTooShort { .. }
            | ConfigError::ElectionTimeoutTooLong { .. } => Some("election-timeout"),
            ConfigError::NotInInitialCluster { .. } => Some("initial-cluster"),
            ConfigError::PeerUrlsMismatch { .. } => Some("initial-advertise-peer-urls"),
            ConfigError::UnknownKeys { keys, .. } => keys.first().map(String::as_str),
            ConfigError::Usage(_) | ConfigError::File { .. } | ConfigError::Layering(_) => None,
        }
    }

    pub(super) fn invalid_value(
        key: &str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::InvalidValue {
            key: key.to_owned(),
            value: value.to_string(),
            reason: reason.into(),
            origin: None,
        }
    }
}

/// `--old-name and --new-name`.
fn describe_flags(flags: &[String]) -> String {
    let flags: Vec<String> = flags.iter().map(|name| format!("--{name}")).collect();
    flags.join(" and ")
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
