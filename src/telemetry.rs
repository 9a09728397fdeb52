//! Logging: a `tracing` subscriber writing to stderr or to the file named by `--log-outputs`
//! (TOML `log.file`), as text or JSON lines, at `--log-level`. A log file is reopened by path
//! after [`request_log_reopen`] (the server calls it on SIGHUP), so logrotate's `create` mode
//! works: the old file is renamed, the next line goes to a new file at the configured path.
//! A reload changes the level ([`set_level`]) and moves a log file to another path
//! ([`set_log_file`]); switching between stderr and a file, or the format, needs a restart.
//!
//! Panics: [`init`] installs a panic hook that writes every panic (thread, place, message) to
//! the log at error. A panic in a thread that owns state (`tasks::thread_owns_state`) then
//! stops the process with status [`PANIC_EXIT_STATUS`], after flushing the log file
//! ([`flush_log`], which `fatal` uses too): the non-blocking file writer would otherwise lose
//! the lines still queued when the process exits.
//!
//! Traces: with `--enable-distributed-tracing` the spans of target [`TRACE_TARGET`] (a client
//! request and its propose, commit, apply and reply children) go to an OTLP/gRPC collector,
//! sampled at `--distributed-tracing-sampling-per-million`. Without it no layer wants those
//! spans, so creating one costs a cached callsite check and nothing is recorded.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

use crate::config::{Config, LogFormat, LogLevel};

/// The target of the spans exported as traces (never written to the log).
pub const TRACE_TARGET: &str = "oxetcd::trace";

/// The exit status after a panic in a thread that owns state (Rust's own for a panic).
pub const PANIC_EXIT_STATUS: i32 = 101;

/// The log file writer's worker guard: dropping it writes out what is queued and flushes.
/// Held here rather than in [`LogGuard`] so [`flush_log`] can reach it from any thread.
static LOG_WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Writes out every log line queued so far and flushes the log file; call it right before the
/// process exits without unwinding (`std::process::exit`). Lines logged afterwards are lost.
/// Waits at most about a second (tracing-appender's bound). A no-op when logging to stderr.
pub fn flush_log() {
    let guard = LOG_WRITER.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(guard);
}

/// Logs every panic; stops the process on one in a thread that owns state (see the module doc).
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The default hook prints the message (and a backtrace if asked) to stderr.
        default_hook(info);
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        if crate::tasks::thread_owns_state() {
            tracing::error!(
                thread,
                place,
                "panic in a thread that owns state; stopping the member: {message}"
            );
            flush_log();
            eprintln!("oxetcd: panic in the {thread} thread; stopping");
            std::process::exit(PANIC_EXIT_STATUS);
        }
        tracing::error!(thread, place, "panic: {message}");
    }));
}

/// Keeps the trace exporter exporting until dropped (at exit), then flushes the log.
pub struct LogGuard {
    tracer: Option<SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take() {
            // Sends what is still batched.
            let _ = provider.shutdown();
        }
        flush_log();
    }
}

/// Noisy dependencies are held at warn whatever the level; trace spans stay out of the log.
const QUIET_DEPENDENCIES: &str = "h2=warn,hyper=warn,fluke_hpack=warn,tower=warn,tonic=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn,oxetcd::trace=off";

/// Builds the OTLP exporter pipeline; must run inside the tokio runtime (the gRPC channel
/// lives there).
fn tracer_provider(config: &Config) -> Result<SdkTracerProvider, String> {
    let address = &config.distributed_tracing_address;
    let endpoint = if address.contains("://") {
        address.clone()
    } else {
        format!("http://{address}")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot set up trace export to {address}: {e}"))?;
    let ratio = f64::from(config.distributed_tracing_sampling_per_million) / 1_000_000.0;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.distributed_tracing_service_name.clone())
                .build(),
        )
        .build())
}

/// Changes the log filter of the installed subscriber at run time.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether [`init`] logs to a file (only then can a reload move it).
static LOGS_TO_FILE: AtomicBool = AtomicBool::new(false);

/// The path a reload moved the log file to, taken by the file writer with the reopen request.
static NEW_LOG_PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

fn filter_for(level: LogLevel) -> EnvFilter {
    EnvFilter::new(format!("{},{QUIET_DEPENDENCIES}", level.filter_directive()))
}

/// Where the configuration sends the log: `stderr`, `stdout` or a file path.
pub fn log_output(config: &Config) -> &str {
    config
        .log_outputs
        .iter()
        .find(|o| !o.is_empty() && o.as_str() != "default")
        .map(String::as_str)
        .unwrap_or("stderr")
}

/// Logs at `level` from now on.
pub fn set_level(level: LogLevel) -> Result<(), String> {
    let handle = FILTER
        .get()
        .ok_or_else(|| "the log subscriber is not installed".to_owned())?;
    handle
        .reload(filter_for(level))
        .map_err(|e| format!("cannot change the log level: {e}"))
}

/// Moves the log file to `output` (a path, opened before the next line is written). Only a log
/// file can move, and only to another file: stderr and stdout are chosen at start.
pub fn set_log_file(output: &str) -> Result<(), String> {
    if !LOGS_TO_FILE.load(Ordering::Acquire) || matches!(output, "stderr" | "stdout") {
        return Err("switching between a log file and stderr or stdout needs a restart".to_owned());
    }
    // Fail here, not in the writer: the old file keeps the log if the new one cannot be opened.
    ReopeningFile::open_path(std::path::Path::new(output))
        .map_err(|e| format!("cannot open log file {output}: {e}"))?;
    *NEW_LOG_PATH.lock().unwrap_or_else(|p| p.into_inner()) = Some(PathBuf::from(output));
    request_log_reopen();
    Ok(())
}

/// Installs the global subscriber. Returns an error text if a log file cannot be opened.
pub fn init(config: &Config) -> Result<LogGuard, String> {
    let (filter, filter_handle) = reload::Layer::new(filter_for(config.log_level));
    let output = log_output(config);
    let (writer, guard) = match output {
        "stderr" => (BoxMakeWriter::new(std::io::stderr), None),
        "stdout" => (BoxMakeWriter::new(std::io::stdout), None),
        path => {
            let file = ReopeningFile::open(PathBuf::from(path))
                .map_err(|e| format!("cannot open log file {path}: {e}"))?;
            let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(file);
            LOGS_TO_FILE.store(true, Ordering::Release);
            (BoxMakeWriter::new(nb), Some(guard))
        }
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(true);
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        _ => fmt.with_filter(filter).boxed(),
    };
    let tracer = if config.enable_distributed_tracing {
        Some(tracer_provider(config)?)
    } else {
        None
    };
    let otel = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("oxetcd"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TRACE_TARGET, tracing::Level::TRACE),
            )
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    *LOG_WRITER.lock().unwrap_or_else(|p| p.into_inner()) = guard;
    let _ = FILTER.set(filter_handle);
    install_panic_hook();
    Ok(LogGuard { tracer })
}

/// Set by [`request_log_reopen`], taken by the log file writer before its next write.
static REOPEN_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the log file writer to reopen its file by path before writing the next line (a no-op
/// when logging to stderr).
pub fn request_log_reopen() {
    REOPEN_REQUESTED.store(true, Ordering::Release);
}

/// An append-only log file that reopens itself by path when asked.
struct ReopeningFile {
    path: PathBuf,
    file: File,
}

impl ReopeningFile {
    fn open(path: PathBuf) -> io::Result<ReopeningFile> {
        let file = Self::open_path(&path)?;
        Ok(ReopeningFile { path, file })
    }

    fn open_path(path: &std::path::Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
    }

    fn reopen_if_asked(&mut self) {
        if !REOPEN_REQUESTED.swap(false, Ordering::AcqRel) {
            return;
        }
        let _ = self.file.flush();
        if let Some(path) = NEW_LOG_PATH
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            self.path = path;
        }
        match Self::open_path(&self.path) {
            Ok(file) => self.file = file,
            // Keep writing to the old file rather than losing lines.
            Err(e) => {
                let _ = writeln!(
                    self.file,
                    "cannot reopen log file {}: {e}; still writing here",
                    self.path.display()
                );
            }
        }
    }
}

impl Write for ReopeningFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_asked();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_by_path_after_a_rename() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("etcd.log");
        let mut w = ReopeningFile::open(path.clone()).expect("opens");
        w.write_all(b"one\n").expect("writes");
        let rotated = dir.path().join("etcd.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        w.write_all(b"two\n").expect("writes");
        request_log_reopen();
        w.write_all(b"three\n").expect("writes");
        w.flush().expect("flush");
        assert_eq!(
            std::fs::read_to_string(&rotated).expect("old"),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("new"), "three\n");
    }
}
