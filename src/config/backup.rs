//! The `[backup]` table of the TOML file: what `oxetcd backup` (run by `oxetcd-backup.timer`)
//! saves where, and what the server reports about it. It is read from the file only (no flags or
//! `ETCD_*` variables): the timer's job and the server read the same file, so they agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::config::{Value, ValueKind};

use super::error::ConfigError;
use super::parse::parse_duration;

/// The `[backup]` settings; [`Default`] gives the packaged defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupConfig {
    /// Where snapshots are written, one file per backup.
    pub directory: PathBuf,
    /// When the timer runs the backup: a systemd calendar expression (`OnCalendar=`).
    pub schedule: String,
    /// How many backups to keep (the newest ones); at least 1.
    pub retention: u32,
    /// The client URL the snapshot is taken from (http:// or https://).
    pub endpoint: String,
    /// CA certificates to verify an https:// endpoint with.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key presented to an endpoint that asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Age of the newest backup past which the `OxetcdBackupTooOld` alert fires (the server
    /// exports it as `oxetcd_backup_max_age_seconds`).
    pub max_age: Duration,
}

impl Default for BackupConfig {
    fn default() -> BackupConfig {
        BackupConfig {
            directory: PathBuf::from("/var/backups/oxetcd"),
            schedule: "daily".to_owned(),
            retention: 7,
            endpoint: "http://127.0.0.1:2379".to_owned(),
            cacert: None,
            cert: None,
            key: None,
            max_age: Duration::from_secs(26 * 3600),
        }
    }
}

impl BackupConfig {
    /// Reads the `[backup]` table of the file `path`; an unknown key is an error, `_` may stand
    /// for `-`, and a key left out keeps its default.
    pub(super) fn from_table(
        path: &Path,
        table: BTreeMap<String, Value>,
    ) -> Result<BackupConfig, ConfigError> {
        let origin = Some(format!("config file {}", path.display()));
        let mut backup = BackupConfig::default();
        let mut unknown = Vec::new();
        for (written, value) in table {
            let key = written.replace('_', "-");
            let shown = format!("backup.{key}");
            let invalid = |reason: &str| ConfigError::InvalidValue {
                key: shown.clone(),
                value: value.to_string(),
                reason: reason.to_owned(),
                origin: origin.clone(),
            };
            let text = || match &value.kind {
                ValueKind::String(s) => Ok(s.clone()),
                _ => Err(invalid("expected a string")),
            };
            let file = || {
                let text = text()?;
                Ok::<_, ConfigError>((!text.is_empty()).then(|| PathBuf::from(text)))
            };
            match key.as_str() {
                "directory" => {
                    let text = text()?;
                    if !Path::new(&text).is_absolute() {
                        return Err(invalid("expected an absolute path"));
                    }
                    backup.directory = PathBuf::from(text);
                }
                "schedule" => {
                    let text = text()?;
                    // It becomes one line of a unit file (`oxetcd backup --timer-dropin`).
                    if text.trim().is_empty() || text.contains(['\n', '\r', '\\']) {
                        return Err(invalid("expected one systemd calendar expression"));
                    }
                    backup.schedule = text.trim().to_owned();
                }
                "retention" => {
                    let n = match &value.kind {
                        ValueKind::I64(n) => *n,
                        ValueKind::U64(n) => i64::try_from(*n).unwrap_or(i64::MAX),
                        _ => return Err(invalid("expected a whole number")),
                    };
                    backup.retention = u32::try_from(n)
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| invalid("expected a whole number from 1"))?;
                }
                "endpoint" => {
                    let text = text()?;
                    let url = url::Url::parse(&text).map_err(|e| invalid(&e.to_string()))?;
                    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                        return Err(invalid("expected an http:// or https:// URL"));
                    }
                    backup.endpoint = text;
                }
                "cacert" => backup.cacert = file()?,
                "cert" => backup.cert = file()?,
                "key" => backup.key = file()?,
                "max-age" => {
                    let age = parse_duration(&text()?).map_err(|e| invalid(&e))?;
                    if age.is_zero() {
                        return Err(invalid("expected a duration above zero"));
                    }
                    backup.max_age = age;
                }
                _ => unknown.push(shown),
            }
        }
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownKeys {
                keys: unknown,
                path: path.to_owned(),
            });
        }
        if backup.cert.is_some() != backup.key.is_some() {
            return Err(ConfigError::InvalidValue {
                key: "backup.cert".to_owned(),
                value: backup
                    .cert
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: "backup.cert and backup.key go together".to_owned(),
                origin,
            });
        }
        Ok(backup)
    }
}
