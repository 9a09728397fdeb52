//! The data directory's format version: the file `oxetcd-format-version` in the data dir holds
//! the version of everything oxetcd keeps there (the column families and their encodings, the
//! raft snapshot files), as a decimal number and a newline.
//!
//! A binary opens a directory of its own format or an older one, migrating an older one in
//! place one version at a time ([`MIGRATIONS`]); it refuses a newer one before anything in the
//! directory is opened or written ([`check`], which `main` runs first and answers with exit
//! status 2). A directory with RocksDB files but no version file was written before the version
//! was recorded (format 1) and is stamped as such; an empty one gets [`FORMAT_VERSION`].
//!
//! Crash safety: the version file is replaced atomically (a synced temporary file renamed over
//! it, then the directory synced), and only after the migration step it records has been made
//! durable. A crash in the middle of a step leaves the old version in the file, so the next
//! start runs that step again: every migration must be safe to re-run on its own half-done
//! output.
//!
//! Bumping the format (see ARCHITECTURE.md): raise [`FORMAT_VERSION`], add the step from the
//! previous version to [`MIGRATIONS`], and check in a fixture written by the last release of the
//! old format under `tests/fixtures/data-format/` (`make-fixture.sh` builds one).

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The format this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// The version file's name inside the data directory.
pub const FORMAT_FILE: &str = "oxetcd-format-version";

/// The format of a directory with RocksDB data but no version file: written by the builds
/// before the version was recorded.
const UNRECORDED_FORMAT_VERSION: u32 = 1;

/// A migration step: rewrites a data directory of format `n` into format `n + 1` in place. It
/// runs before RocksDB is opened by the server, and must be safe to re-run after a crash.
type Migration = fn(&Path) -> Result<(), String>;

/// `MIGRATIONS[i]` turns format `i + 1` into format `i + 2`; one per version after the first.
const MIGRATIONS: [Migration; FORMAT_VERSION as usize - 1] = [];

/// Why a data directory cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "data directory {dir} has format version {found}, newer than version {supported} that \
         this oxetcd ({binary}) reads; run the oxetcd release that wrote it or a later one \
         (the directory was not changed)"
    )]
    TooNew {
        dir: PathBuf,
        found: u32,
        supported: u32,
        binary: &'static str,
    },
    #[error("format version file {path} is unreadable ({reason}); not opening the data directory")]
    Unreadable { path: PathBuf, reason: String },
    #[error("migrating data directory {dir} from format version {from} to {to}: {reason}")]
    Migration {
        dir: PathBuf,
        from: u32,
        to: u32,
        reason: String,
    },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`prepare`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// An empty or missing directory, now stamped with [`FORMAT_VERSION`].
    New,
    /// Already at [`FORMAT_VERSION`].
    Current,
    /// Opened from format `from`: migrated (if `from` is older) and stamped.
    Upgraded { from: u32 },
}

/// The format version `dir` holds, without changing anything: `None` for a directory that does
/// not exist or holds no data yet. Refuses a version newer than this build's.
pub fn check(dir: &Path) -> Result<Option<u32>, FormatError> {
    let found = read_version(dir)?;
    if let Some(found) = found
        && found > FORMAT_VERSION
    {
        return Err(FormatError::TooNew {
            dir: dir.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
            binary: crate::version::OXETCD_VERSION,
        });
    }
    Ok(found)
}

/// Brings `dir` (which must exist) to [`FORMAT_VERSION`] before the server opens it: refuses a
/// newer format, runs the migrations from an older one, and records the version.
pub fn prepare(dir: &Path) -> Result<Prepared, FormatError> {
    let Some(found) = check(dir)? else {
        write_version(dir, FORMAT_VERSION)?;
        return Ok(Prepared::New);
    };
    if found == FORMAT_VERSION && recorded(dir) {
        return Ok(Prepared::Current);
    }
    for from in found..FORMAT_VERSION {
        let step = usize::try_from(from - 1)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .expect("MIGRATIONS holds one step per version below FORMAT_VERSION");
        step(dir).map_err(|reason| FormatError::Migration {
            dir: dir.to_path_buf(),
            from,
            to: from + 1,
            reason,
        })?;
        write_version(dir, from + 1)?;
    }
    write_version(dir, FORMAT_VERSION)?;
    Ok(Prepared::Upgraded { from: found })
}

/// Records [`FORMAT_VERSION`] in a directory this build has just written (a restore's staging
/// directory).
pub fn stamp_current(dir: &Path) -> Result<(), FormatError> {
    write_version(dir, FORMAT_VERSION)
}

fn recorded(dir: &Path) -> bool {
    dir.join(FORMAT_FILE).exists()
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The recorded version; for a directory without the file, format 1 if RocksDB has written
/// there (its `CURRENT` file names the live manifest), else `None`.
fn read_version(dir: &Path) -> Result<Option<u32>, FormatError> {
    let path = dir.join(FORMAT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => parse_version(&bytes)
            .map(Some)
            .map_err(|reason| FormatError::Unreadable { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let rocksdb_current = dir.join("CURRENT");
            Ok(rocksdb_current
                .exists()
                .then_some(UNRECORDED_FORMAT_VERSION))
        }
        Err(source) => Err(FormatError::Io { path, source }),
    }
}

/// A positive decimal number and one newline, nothing else.
fn parse_version(bytes: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    let digits = text
        .strip_suffix('\n')
        .ok_or_else(|| "no newline at the end".to_owned())?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{digits:?} is not a version number"));
    }
    match digits.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("{digits:?} is not a version number")),
        Ok(version) => Ok(version),
    }
}

/// Replaces the version file atomically and durably: a synced temporary file renamed over it,
/// then the directory synced so the rename survives a crash.
fn write_version(dir: &Path, version: u32) -> Result<(), FormatError> {
    let path = dir.join(FORMAT_FILE);
    let temporary = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(format!("{version}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("lists")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("reads"),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn an_empty_directory_gets_the_current_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(check(dir.path()).expect("checks"), None);
        assert_eq!(prepare(dir.path()).expect("prepares"), Prepared::New);
        assert_eq!(check(dir.path()).expect("checks"), Some(FORMAT_VERSION));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FORMAT_FILE)).expect("reads"),
            format!("{FORMAT_VERSION}\n")
        );
        assert!(!dir.path().join(format!("{FORMAT_FILE}.tmp")).exists());
        assert_eq!(prepare(dir.path()).expect("prepares"), Prepared::Current);
    }

    #[test]
    fn rocksdb_data_without_a_version_is_format_one_and_gets_stamped() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("CURRENT"), "MANIFEST-000005\n").expect("writes");
        assert_eq!(check(dir.path()).expect("checks"), Some(1));
        assert_eq!(
            prepare(dir.path()).expect("prepares"),
            Prepared::Upgraded { from: 1 }
        );
        assert_eq!(check(dir.path()).expect("checks"), Some(FORMAT_VERSION));
    }

    #[test]
    fn a_newer_version_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("CURRENT"), "MANIFEST-000005\n").expect("writes");
        let newer = FORMAT_VERSION + 1;
        std::fs::write(dir.path().join(FORMAT_FILE), format!("{newer}\n")).expect("writes");
        let before = listing(dir.path());
        let err = prepare(dir.path()).expect_err("refuses");
        let text = err.to_string();
        assert!(matches!(err, FormatError::TooNew { found, .. } if found == newer));
        assert!(text.contains(&format!("format version {newer}")), "{text}");
        assert!(
            text.contains(&format!("version {FORMAT_VERSION}")),
            "{text}"
        );
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn a_damaged_version_file_is_refused_not_guessed() {
        for content in ["", "1", "x\n", "0\n", "1 \n", "99999999999\n", "+2\n"] {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join(FORMAT_FILE), content).expect("writes");
            let err = check(dir.path()).expect_err(content);
            assert!(
                matches!(err, FormatError::Unreadable { .. }),
                "{content:?}: {err}"
            );
        }
    }
}
