//! Logging: a `tracing` subscriber writing to stderr or to the files named by `--log-outputs`,
//! as text or JSON lines, at `--log-level`.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::{Config, LogFormat};

/// Keeps the log writer flushing until dropped (at exit).
pub struct LogGuard {
    _guard: Option<WorkerGuard>,
}

/// Noisy dependencies are held at warn whatever the level.
const QUIET_DEPENDENCIES: &str = "h2=warn,hyper=warn,tower=warn,tonic=warn,opentelemetry_sdk=warn";

/// Installs the global subscriber. Returns an error text if a log file cannot be opened.
pub fn init(config: &Config) -> Result<LogGuard, String> {
    let filter = EnvFilter::new(format!(
        "{},{QUIET_DEPENDENCIES}",
        config.log_level.filter_directive()
    ));
    let output = config
        .log_outputs
        .iter()
        .find(|o| !o.is_empty() && o.as_str() != "default")
        .map(String::as_str)
        .unwrap_or("stderr");
    let (writer, guard) = match output {
        "stderr" => (BoxMakeWriter::new(std::io::stderr), None),
        "stdout" => (BoxMakeWriter::new(std::io::stdout), None),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {path}: {e}"))?;
            let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(file);
            (BoxMakeWriter::new(nb), Some(guard))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .with_target(true);
    let installed = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogGuard { _guard: guard })
}
