//! The layers: defaults < TOML file < `ETCD_*` environment < flags, merged with the `config` crate.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ::config::{Source as _, Value, ValueKind};
use clap::ArgMatches;

use super::Config;
use super::backup::BackupConfig;
use super::error::ConfigError;
use super::keys::{CONFIG_FILE, ENV_PREFIX, KEYS, canonical_key, env_name};
use super::merged::Merged;

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
            return Err(ConfigError::SetTwice {
                key: key.to_owned(),
                first: previous.clone(),
                second: spelling,
                layer: source.to_owned(),
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
        return Err(ConfigError::SameSettingTwice {
            key: (*key).to_owned(),
            flags: written.iter().cloned().collect(),
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

/// The keys of a TOML config file; an unknown key is an error, `_` may stand for `-`. The
/// `[backup]` table is read on its own (it has no flags).
fn file_layer(
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<(Layer, BackupConfig), ConfigError> {
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
    let mut backup = BackupConfig::default();
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
            ("backup", ValueKind::Table(inner)) => {
                backup = BackupConfig::from_table(path, inner.into_iter().collect())?;
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
    Ok((layer, backup))
}

/// Parses flags, environment and config file into a validated configuration plus warnings.
pub(super) fn resolve(
    matches: &ArgMatches,
    args: &[OsString],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    resolve_with_settings(matches, args, env).map(|(config, _, warnings)| (config, warnings))
}

/// [`resolve`], also returning the merged value of every key (see [`Settings`]).
pub(super) fn resolve_with_settings(
    matches: &ArgMatches,
    args: &[OsString],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Settings, Vec<String>), ConfigError> {
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
    let (file, backup) = match &config_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
                path: path.clone(),
                message: err.to_string(),
            })?;
            file_layer(path, &text, &mut warnings)?
        }
        None => (Layer::default(), BackupConfig::default()),
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

    let mut config = merged.to_config(config_file)?;
    config.backup = backup;
    config.validate().map_err(|err| merged.with_origin(err))?;
    warnings.extend(config.advisories());
    let settings = Settings {
        values: merged
            .values
            .iter()
            .map(|(key, value)| (key.clone(), format!("{:?}", value.kind)))
            .collect(),
    };
    Ok((config, settings, warnings))
}

/// The merged value of every key, as written in whichever source won, so two loads can be
/// compared key by key (what a reload changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

impl Settings {
    /// The keys whose value differs between `self` and `newer`, in key order.
    pub fn changed_keys(&self, newer: &Settings) -> Vec<String> {
        let keys: BTreeSet<&String> = self.values.keys().chain(newer.values.keys()).collect();
        keys.into_iter()
            .filter(|key| self.values.get(*key) != newer.values.get(*key))
            .cloned()
            .collect()
    }

    /// Takes `newer`'s value of `key` (a change that was applied).
    pub fn adopt(&mut self, newer: &Settings, key: &str) {
        match newer.values.get(key) {
            Some(value) => self.values.insert(key.to_owned(), value.clone()),
            None => self.values.remove(key),
        };
    }
}
