//! The merged layers read as a typed `Config`, each error naming its key and where the value came from.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ::config::{Value, ValueKind};
use url::Url;

use super::error::ConfigError;
use super::parse::{parse_bool, parse_cipher_suite, parse_duration, parse_url};
use super::{
    AuthToken, AutoCompaction, BCRYPT_COST_MAX, BCRYPT_COST_MIN, ClusterState, CompactionMode,
    Config, FeatureGates, InitialMember, LEASE_CHECKPOINT_INTERVAL_DEFAULT, LogFormat, LogLevel,
    TlsSettings, TlsSide, TlsVersion,
};

/// The merged layers: every key of the keys table holds a value, its default at least.
pub(super) struct Merged {
    pub(super) values: ::config::Map<String, Value>,
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
    pub(super) fn with_origin(&self, err: ConfigError) -> ConfigError {
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

    /// A path key: `None` when empty.
    fn path(&self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        let text = self.text(key)?;
        Ok((!text.trim().is_empty()).then(|| PathBuf::from(text)))
    }

    /// One side's TLS settings; the version, cipher suite and validity keys are shared.
    fn tls_settings(&self, side: TlsSide) -> Result<TlsSettings, ConfigError> {
        let keys = side.keys();
        let cipher_suites = self
            .list("cipher-suites")?
            .into_iter()
            .map(|name| {
                parse_cipher_suite(&name)
                    .map_err(|reason| self.invalid("cipher-suites", &name, reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_version = match self.text("tls-max-version")?.trim() {
            "" => None,
            text => Some(
                TlsVersion::parse(text)
                    .map_err(|reason| self.invalid("tls-max-version", text, reason))?,
            ),
        };
        let optional_text = |key: &'static str| -> Result<Option<String>, ConfigError> {
            let text = self.text(key)?;
            Ok((!text.trim().is_empty()).then(|| text.trim().to_owned()))
        };
        let (client_cert_file, client_key_file, allowed_cn) = match side {
            TlsSide::Client => (None, None, None),
            TlsSide::Peer => (
                self.path(keys.client_cert_file)?,
                self.path(keys.client_key_file)?,
                optional_text(keys.allowed_cn)?,
            ),
        };
        Ok(TlsSettings {
            side,
            cert_file: self.path(keys.cert_file)?,
            key_file: self.path(keys.key_file)?,
            client_cert_file,
            client_key_file,
            trusted_ca_file: self.path(keys.trusted_ca_file)?,
            client_cert_auth: self.boolean(keys.client_cert_auth)?,
            crl_file: self.path(keys.crl_file)?,
            allowed_hostname: optional_text(keys.allowed_hostname)?,
            allowed_cn,
            cipher_suites,
            min_version: self.parse("tls-min-version", TlsVersion::parse)?,
            max_version,
            auto_tls: self.boolean(keys.auto_tls)?,
            self_signed_cert_validity_years: self
                .integer("self-signed-cert-validity", "a whole number of years")?,
        })
    }

    /// `--feature-gates`: etcd's `Name=bool,...`; an unknown gate or a bad value is an error.
    fn feature_gates(&self) -> Result<FeatureGates, ConfigError> {
        FeatureGates::parse(&self.list("feature-gates")?)
            .map_err(|(entry, reason)| self.invalid("feature-gates", &entry, reason))
    }

    pub(super) fn to_config(&self, config_file: Option<PathBuf>) -> Result<Config, ConfigError> {
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
        let feature_gates = self.feature_gates()?;
        let initial_corrupt_check = self.boolean("experimental-initial-corrupt-check")?
            || feature_gates.enabled("InitialCorruptCheck");
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
            backend_cache_bytes: self.integer("backend-cache-bytes", "a whole number of bytes")?,
            backend_write_buffer_bytes: self
                .integer("backend-write-buffer-bytes", "a whole number of bytes")?,
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
            client_tls: self.tls_settings(TlsSide::Client)?,
            peer_tls: self.tls_settings(TlsSide::Peer)?,
            feature_gates,
            initial_corrupt_check,
            corrupt_check_time: self.duration("corrupt-check-time")?,
            auth_token: self.parse("auth-token", AuthToken::parse)?,
            auth_token_ttl: match self
                .integer::<u64>("auth-token-ttl", "a whole number of seconds")?
            {
                0 => return Err(self.invalid("auth-token-ttl", 0, "must be greater than 0")),
                seconds => Duration::from_secs(seconds),
            },
            bcrypt_cost: match self.integer::<u32>("bcrypt-cost", "a whole number")? {
                cost @ BCRYPT_COST_MIN..=BCRYPT_COST_MAX => cost,
                cost => {
                    return Err(self.invalid(
                        "bcrypt-cost",
                        cost,
                        format!("must be between {BCRYPT_COST_MIN} and {BCRYPT_COST_MAX}"),
                    ));
                }
            },
            strict_reconfig_check: self.boolean("strict-reconfig-check")?,
            pre_vote: self.boolean("pre-vote")?,
            unsafe_no_fsync: self.boolean("unsafe-no-fsync")?,
            name,
            backup: super::BackupConfig::default(),
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
