//! Scheduled backups: `oxetcd backup` (what `oxetcd-backup.service` runs) saves a snapshot
//! through the client API into the `[backup]` directory, verifies it by reading it back, and
//! keeps the newest `retention` files; the server reports the newest one ([`newest`]) on
//! `/metrics`.
//!
//! A backup is written as a hidden `.part` file, synced, read back through its CRC
//! (`snapshot::format::verify_file`), and only then renamed to its final name
//! (`oxetcd-<UTC time>.snapshot`) and the directory synced: every file with a final name is a
//! complete, verified snapshot, so the newest such file is the newest good backup.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::config::BackupConfig;
use crate::proto::etcdserverpb::SnapshotRequest;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::snapshot::format::{SnapshotError, SnapshotPosition, verify_file};

/// Backups are named `oxetcd-<UTC time>.snapshot`; a file being written has a `.` in front and
/// `.part` after.
const PREFIX: &str = "oxetcd-";
const SUFFIX: &str = ".snapshot";
const PART_SUFFIX: &str = ".part";
/// Bound on opening the connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A `.part` file this old was left by a run that died; newer ones may be another run's.
const STALE_PART_AGE: Duration = Duration::from_secs(24 * 3600);

/// Why a backup failed; `main` prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("snapshot from {endpoint} failed: {status}")]
    Snapshot {
        endpoint: String,
        status: Box<tonic::Status>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the snapshot read back from {} is not good: {source}", path.display())]
    Verify {
        path: PathBuf,
        source: SnapshotError,
    },
    #[error("the snapshot from {endpoint} ended after {received} of {expected} bytes")]
    Truncated {
        endpoint: String,
        received: u64,
        expected: u64,
    },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One finished backup in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub size_bytes: u64,
    /// When it was written (the file's modification time).
    pub modified: SystemTime,
}

/// What one run did.
#[derive(Debug)]
pub struct Summary {
    pub saved: BackupFile,
    pub position: SnapshotPosition,
    pub took: Duration,
    pub removed: Vec<PathBuf>,
    pub kept: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "saved {} ({} bytes, raft index {} term {}) in {:.1}s, read back and verified; \
             keeping {} backups",
            self.saved.path.display(),
            self.saved.size_bytes,
            self.position.index,
            self.position.term,
            self.took.as_secs_f64(),
            self.kept,
        )?;
        for path in &self.removed {
            write!(f, "\nremoved {}", path.display())?;
        }
        Ok(())
    }
}

/// The finished backups in `dir`, oldest first (their names sort by time). A missing directory
/// has none.
pub fn list(dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        found.push(BackupFile {
            path: entry.path(),
            size_bytes: meta.len(),
            modified: meta.modified()?,
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// The newest finished backup in `dir`, if any (`None` too when it cannot be read).
pub fn newest(dir: &Path) -> Option<BackupFile> {
    list(dir).ok().and_then(|mut all| all.pop())
}

/// Takes one backup as `config` says: snapshot, write, verify, rename, prune.
pub fn run(config: &BackupConfig) -> Result<Summary, BackupError> {
    let started = std::time::Instant::now();
    let dir = &config.directory;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("{PREFIX}{}{SUFFIX}", utc_stamp(SystemTime::now()));
    let part = dir.join(format!(".{name}{PART_SUFFIX}"));
    let path = dir.join(&name);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(dir))?;
    let fetched = runtime.block_on(fetch(config, &part));
    let position = fetched.and_then(|()| {
        verify_file(&part).map_err(|source| BackupError::Verify {
            path: part.clone(),
            source,
        })
    });
    let position = match position {
        Ok(position) => position,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    };
    fs::rename(&part, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    let meta = fs::metadata(&path).map_err(io(&path))?;
    let saved = BackupFile {
        path: path.clone(),
        size_bytes: meta.len(),
        modified: meta.modified().map_err(io(&path))?,
    };

    let all = list(dir).map_err(io(dir))?;
    let excess = all.len().saturating_sub(config.retention as usize);
    let mut removed = Vec::new();
    for old in all.iter().take(excess) {
        fs::remove_file(&old.path).map_err(io(&old.path))?;
        removed.push(old.path.clone());
    }
    remove_stale_parts(dir);
    Ok(Summary {
        saved,
        position,
        took: started.elapsed(),
        removed,
        kept: all.len() - excess,
    })
}

/// Streams the endpoint's snapshot into `part` (created 0600, synced).
async fn fetch(config: &BackupConfig, part: &Path) -> Result<(), BackupError> {
    let endpoint = config.endpoint.clone();
    let channel = connect(config).await?;
    let snapshot_failed = |status| BackupError::Snapshot {
        endpoint: endpoint.clone(),
        status: Box::new(status),
    };
    let mut stream = MaintenanceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .snapshot(SnapshotRequest {})
        .await
        .map_err(snapshot_failed)?
        .into_inner();
    let io = |source| BackupError::Io {
        path: part.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(part)
        .map_err(io)?;
    let mut received = 0u64;
    let mut expected = None;
    while let Some(chunk) = stream.message().await.map_err(snapshot_failed)? {
        file.write_all(&chunk.blob).map_err(io)?;
        received += chunk.blob.len() as u64;
        expected = Some(received + chunk.remaining_bytes);
    }
    if let Some(expected) = expected.filter(|expected| *expected != received) {
        return Err(BackupError::Truncated {
            endpoint,
            received,
            expected,
        });
    }
    file.sync_all().map_err(io)
}

async fn connect(config: &BackupConfig) -> Result<Channel, BackupError> {
    let url = &config.endpoint;
    let failed = |reason: String| BackupError::Connect {
        endpoint: url.clone(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| failed(e.to_string()))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| failed("no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(2379);
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let connected = if parsed.scheme() == "https" {
        let ca = config.cacert.as_deref().ok_or_else(|| {
            failed("an https:// endpoint needs backup.cacert to verify it with".to_owned())
        })?;
        let pair = config.cert.as_deref().zip(config.key.as_deref());
        let tls = crate::tls::dial_config(ca, pair)?;
        let server_name = ServerName::try_from(host).map_err(|e| failed(e.to_string()))?;
        endpoint
            .connect_with_connector(TlsConnector {
                config: tls,
                server_name,
                address,
            })
            .await
    } else {
        endpoint.connect().await
    };
    connected.map_err(|e| failed(describe(&e)))
}

/// An error with its causes, which tonic's transport errors keep apart.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Connects TCP to the endpoint and runs the TLS handshake; tonic speaks HTTP/2 over it (the
/// URI it passes is the http:// form of the same address).
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    address: String,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let server_name = self.server_name.clone();
        let address = self.address.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(server_name, tcp).await?))
        })
    }
}

/// Removes `.part` files that runs which died left behind.
fn remove_stale_parts(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_part = name
            .to_str()
            .is_some_and(|n| n.starts_with(&format!(".{PREFIX}")) && n.ends_with(PART_SUFFIX));
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_PART_AGE);
        if is_part && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The `oxetcd-backup.timer` drop-in that runs backups on the `[backup] schedule`.
pub fn timer_dropin(config: &BackupConfig, config_file: Option<&Path>) -> String {
    let from = config_file.map_or_else(|| "the defaults".to_owned(), |p| p.display().to_string());
    format!(
        "# Generated by oxetcd-backup-generator from [backup] schedule in {from}.\n\
         [Timer]\nOnCalendar=\nOnCalendar={}\n",
        config.schedule
    )
}

/// `time` as `YYYYMMDDTHHMMSS.mmmZ` (UTC): names that sort by time.
pub fn utc_stamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days end each 400-year era's years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_sort_by_time() {
        let at = |secs: u64, ms: u64| {
            utc_stamp(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "19700101T000000.000Z");
        // 2000-02-29 (a leap day of a year divisible by 400) 23:59:59.999.
        assert_eq!(at(951_868_799, 999), "20000229T235959.999Z");
        assert_eq!(at(951_868_800, 0), "20000301T000000.000Z");
        // 2026-12-06 05:16:28.5.
        assert_eq!(at(1_796_534_188, 500), "20261206T051628.500Z");
        assert!(at(1_796_534_188, 500) < at(1_796_534_189, 0));
    }

    #[test]
    fn list_sees_finished_backups_only_oldest_first() {
        let dir = std::env::temp_dir().join(format!("oxetcd-backup-list-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for name in [
            "oxetcd-20261206T051628.500Z.snapshot",
            "oxetcd-20251206T051628.500Z.snapshot",
            ".oxetcd-20271206T051628.500Z.snapshot.part",
            "notes.txt",
        ] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        let names: Vec<_> = list(&dir)
            .unwrap()
            .into_iter()
            .map(|b| b.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "oxetcd-20251206T051628.500Z.snapshot",
                "oxetcd-20261206T051628.500Z.snapshot"
            ]
        );
        assert_eq!(
            newest(&dir).unwrap().path,
            dir.join("oxetcd-20261206T051628.500Z.snapshot")
        );
        assert!(list(&dir.join("missing")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
