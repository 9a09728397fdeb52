//! The command line: the clap commands generated from the keys table, and `parse_command`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches};

use super::Config;
use super::error::ConfigError;
use super::keys::{ALIASES, CONFIG_FILE, KEYS, Key, Kind, RESTORE_KEYS};
use super::layers::resolve;

const RESTORE_FILE: &str = "file";
/// etcdutl's flag: restore an etcd snapshot without checking its trailing SHA-256.
const SKIP_HASH_CHECK: &str = "skip-hash-check";
const EXPORT_INPUT: &str = "input";
const EXPORT_OUTPUT: &str = "output";
const EXPORT_FORMAT: &str = "format";
const BACKUP_TIMER: &str = "timer-dropin";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `oxetcd [flags]`: run the server.
    Serve(Config),
    /// `oxetcd snapshot restore <FILE> [--data-dir ..] [--name ..] [--initial-cluster ..] ...`:
    /// build a fresh data directory from a snapshot file (oxetcd's or etcd's). `data_dir`
    /// equals `config.data_dir`.
    SnapshotRestore {
        file: PathBuf,
        data_dir: PathBuf,
        config: Config,
        /// `--skip-hash-check`: an etcd snapshot's SHA-256 is not checked.
        skip_hash_check: bool,
    },
    /// `oxetcd snapshot export --format etcd <IN> <OUT>`: write the etcd snapshot file (a bbolt
    /// database and its SHA-256) holding what the oxetcd snapshot `input` holds.
    SnapshotExport { input: PathBuf, output: PathBuf },
    /// `oxetcd config check [--config-file F] [flags]`: validate the configuration the server
    /// would start with (file, `ETCD_*` environment and flags together) without starting it.
    ConfigCheck(Config),
    /// `oxetcd backup [--config-file ..]`: save a snapshot from `config.backup.endpoint` into
    /// `config.backup.directory`, verify it and prune the oldest (what `oxetcd-backup.service`
    /// runs).
    Backup(Config),
    /// `oxetcd backup --timer-dropin`: print the `oxetcd-backup.timer` drop-in that sets the
    /// `[backup]` schedule (the systemd generator writes it).
    BackupTimerDropin(Config),
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
                let skip_hash_check = restore
                    .get_one::<bool>(SKIP_HASH_CHECK)
                    .copied()
                    .unwrap_or(false);
                let (config, warnings) = resolve(restore, &args, env)?;
                config.verify_bootstrap()?;
                let data_dir = config.data_dir.clone();
                Ok((
                    Command::SnapshotRestore {
                        file,
                        data_dir,
                        config,
                        skip_hash_check,
                    },
                    warnings,
                ))
            }
            Some(("export", export)) => {
                let path = |name: &str| {
                    export.get_one::<PathBuf>(name).cloned().ok_or_else(|| {
                        ConfigError::Usage("snapshot export needs IN and OUT".to_owned())
                    })
                };
                Ok((
                    Command::SnapshotExport {
                        input: path(EXPORT_INPUT)?,
                        output: path(EXPORT_OUTPUT)?,
                    },
                    Vec::new(),
                ))
            }
            _ => Err(ConfigError::Usage(
                "snapshot needs a subcommand: restore or export".to_owned(),
            )),
        },
        Some(("config", config)) => match config.subcommand() {
            Some(("check", check)) => {
                let (config, warnings) = resolve(check, &args, env)?;
                Ok((Command::ConfigCheck(config), warnings))
            }
            _ => Err(ConfigError::Usage(
                "config needs a subcommand: check".to_owned(),
            )),
        },
        Some(("backup", backup)) => {
            let timer = backup
                .get_one::<bool>(BACKUP_TIMER)
                .copied()
                .unwrap_or(false);
            let (config, warnings) = resolve(backup, &args, env)?;
            let command = if timer {
                Command::BackupTimerDropin(config)
            } else {
                Command::Backup(config)
            };
            Ok((command, warnings))
        }
        Some((other, _)) => Err(ConfigError::Usage(format!("unknown subcommand {other:?}"))),
    }
}

/// [`parse_command`] on this process's arguments and environment.
pub fn parse_command_from_env_and_args() -> Result<(Command, Vec<String>), ConfigError> {
    parse_command(std::env::args_os(), process_env())
}

pub(super) fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().map(|(key, value)| {
        (
            key.to_string_lossy().into_owned(),
            value.to_string_lossy().into_owned(),
        )
    })
}

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

pub(super) fn server_command() -> clap::Command {
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

pub(super) fn cli_command() -> clap::Command {
    let restore = clap::Command::new("restore")
        .about("Create a new data directory from a snapshot file")
        .args_override_self(true)
        .arg(
            Arg::new(RESTORE_FILE)
                .value_name("FILE")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Snapshot file to restore from: an oxetcd snapshot, or an etcd one \
                     (etcdctl snapshot save, or a member's member/snap/db)",
                ),
        )
        .arg(
            Arg::new(SKIP_HASH_CHECK)
                .long(SKIP_HASH_CHECK)
                .value_name("BOOL")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_parser(clap::builder::BoolishValueParser::new())
                .help(
                    "Ignore the SHA-256 an etcd snapshot ends with (needed for a member's \
                     member/snap/db, which has none) [default: false]",
                ),
        )
        .arg(config_file_arg())
        .args(
            KEYS.iter()
                .filter(|key| RESTORE_KEYS.contains(&key.name))
                .map(key_arg),
        );
    let export = clap::Command::new("export")
        .about("Write an oxetcd snapshot file as an etcd snapshot file")
        .arg(
            Arg::new(EXPORT_FORMAT)
                .long(EXPORT_FORMAT)
                .value_name("FORMAT")
                .required(true)
                .value_parser(["etcd"])
                .help(
                    "Format to write: etcd (what etcdctl snapshot save gets from etcd: \
                     etcdctl snapshot status and restore read it)",
                ),
        )
        .arg(
            Arg::new(EXPORT_INPUT)
                .value_name("IN")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("Snapshot saved from oxetcd (etcdctl snapshot save)"),
        )
        .arg(
            Arg::new(EXPORT_OUTPUT)
                .value_name("OUT")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("File to write (must not exist)"),
        );
    let snapshot = clap::Command::new("snapshot")
        .about("Snapshot tools")
        .subcommand_required(true)
        .subcommand(restore)
        .subcommand(export);
    let check = clap::Command::new("check")
        .about(
            "Check the configuration the server would start with (the --config-file, ETCD_* \
             variables and flags together) without starting it; exits 2 naming a bad key",
        )
        .args_override_self(true)
        .arg(config_file_arg())
        .args(KEYS.iter().map(key_arg));
    let config = clap::Command::new("config")
        .about("Configuration tools")
        .subcommand_required(true)
        .subcommand(check);
    let backup = clap::Command::new("backup")
        .about(
            "Save a snapshot into the [backup] directory of the config file, verify it and \
             keep the newest [backup] retention ones (oxetcd-backup.service runs it)",
        )
        .arg(config_file_arg())
        .arg(
            Arg::new(BACKUP_TIMER)
                .long(BACKUP_TIMER)
                .action(ArgAction::SetTrue)
                .help(
                    "Print the oxetcd-backup.timer drop-in that applies [backup] schedule \
                     instead (the systemd generator runs it)",
                ),
        );
    server_command()
        .args_conflicts_with_subcommands(true)
        .subcommand(snapshot)
        .subcommand(config)
        .subcommand(backup)
}

pub(super) fn get_matches(
    command: clap::Command,
    args: &[OsString],
) -> Result<ArgMatches, ConfigError> {
    command.try_get_matches_from(args).map_err(|err| {
        if !err.use_stderr() {
            // --help or --version: clap prints to stdout and exits 0.
            err.exit();
        }
        ConfigError::Usage(err.render().to_string().trim_end().to_owned())
    })
}
