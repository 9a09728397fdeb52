//! `ConfigError`: why a configuration could not be loaded, and which key it is about.

use std::fmt;
use std::path::PathBuf;

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

fn describe_unknown_keys(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|key| format!("{key:?}")).collect();
    let noun = if keys.len() == 1 {
        "unknown key"
    } else {
        "unknown keys"
    };
    format!("{noun} {}", quoted.join(", "))
}
