//! The `oxetcd` binary: parse flags → load config → run the server (or restore or export a
//! snapshot, check a configuration, or take a scheduled backup).

use std::process::ExitCode;

use oxetcd::config::{self, Command};

fn main() -> ExitCode {
    let (command, warnings) = match config::parse_command_from_env_and_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("oxetcd: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Serve(config) => serve(config, warnings),
        Command::SnapshotRestore {
            file,
            data_dir,
            config,
            skip_hash_check,
        } => restore(&file, &data_dir, &config, skip_hash_check),
        Command::SnapshotExport { input, output } => export(&input, &output),
        Command::ConfigCheck(config) => config_check(&config, warnings),
        Command::Backup(config) => backup(&config, warnings),
        Command::BackupTimerDropin(config) => {
            print!(
                "{}",
                oxetcd::backup::timer_dropin(&config.backup, config.config_file.as_deref())
            );
            ExitCode::SUCCESS
        }
    }
}

/// What must hold before the server starts, checked without changing anything: the data
/// directory's format, the TLS files and the JWT keys. Returns the data directory's format
/// (`None`: no data yet). `oxetcd` and `oxetcd config check` both exit 2 when one fails.
fn preflight(config: &config::Config) -> Result<Option<u32>, String> {
    // A data directory of a newer format is refused before anything is opened or written.
    let format = oxetcd::data_format::check(&config.data_dir).map_err(|e| e.to_string())?;
    let client_https =
        oxetcd::tls::any_https(&[&config.listen_client_urls, &config.listen_metrics_urls]);
    for (used, tls) in [
        (client_https, &config.client_tls),
        (config.peer_https(), &config.peer_tls),
    ] {
        if used {
            oxetcd::tls::check(tls).map_err(|e| e.to_string())?;
        }
    }
    // The JWT keys are never printed: errors name the file only.
    oxetcd::server::jwt_tokens(config)?;
    Ok(format)
}

/// `oxetcd config check`: the start's checks, then a summary on stdout.
fn config_check(config: &config::Config, warnings: Vec<String>) -> ExitCode {
    for w in &warnings {
        eprintln!("oxetcd: warning: {w}");
    }
    // A member with no data yet bootstraps from its flags: check them as the start would.
    let checked = preflight(config).and_then(|format| match format {
        None => config.verify_bootstrap().map_err(|e| e.to_string()),
        Some(_) => Ok(()),
    });
    match checked {
        Ok(()) => {
            let source = config
                .config_file
                .as_ref()
                .map_or("flags and environment".to_owned(), |f| {
                    format!("{}, flags and environment", f.display())
                });
            println!(
                "configuration OK ({source}): member {:?}, data dir {}",
                config.name,
                config.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxetcd: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: config::Config, warnings: Vec<String>) -> ExitCode {
    if let Err(e) = preflight(&config) {
        eprintln!("oxetcd: {e}");
        return ExitCode::from(2);
    }
    // Read again for the server (preflight checked them a moment ago).
    let jwt = match oxetcd::server::jwt_tokens(&config) {
        Ok(jwt) => jwt,
        Err(e) => {
            eprintln!("oxetcd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("oxetcd-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxetcd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter's gRPC channel is created there.
    let log = {
        let _in_runtime = runtime.enter();
        match oxetcd::telemetry::init(&config) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("oxetcd: {e}");
                return ExitCode::from(2);
            }
        }
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Fault injection for tests (src/failpoints.rs): FAILPOINTS names failpoints and actions.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set, but this binary was built without failpoints");
    }
    let outcome = match runtime.block_on(oxetcd::server::run(config, jwt)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server stopped with an error");
            eprintln!("oxetcd: {e}");
            ExitCode::FAILURE
        }
    };
    // Flush the log and export the last traces while the runtime still runs.
    {
        let _in_runtime = runtime.enter();
        drop(log);
    }
    outcome
}

fn restore(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    config: &config::Config,
    skip_hash_check: bool,
) -> ExitCode {
    let options = oxetcd::snapshot::restore::RestoreOptions {
        skip_hash_check,
        ..oxetcd::snapshot::restore::RestoreOptions::from_config(file, data_dir, config)
    };
    match oxetcd::snapshot::restore::restore(&options) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxetcd: snapshot restore failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn export(input: &std::path::Path, output: &std::path::Path) -> ExitCode {
    match oxetcd::snapshot::etcd_export::export(input, output) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxetcd: snapshot export failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn backup(config: &config::Config, warnings: Vec<String>) -> ExitCode {
    for w in warnings {
        eprintln!("oxetcd: warning: {w}");
    }
    match oxetcd::backup::run(&config.backup) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxetcd: backup failed: {e}");
            ExitCode::FAILURE
        }
    }
}
