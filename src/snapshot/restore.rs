//! `oxetcd snapshot restore`: builds a fresh data directory for a member of a new cluster from a
//! snapshot file (the [`format`](super::format) Maintenance.Snapshot streams), with a new
//! identity and a raft log that starts right after the snapshot.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message as _;

use super::etcd_import::{self, EtcdImportError};
use super::format::{self, SnapshotError, SnapshotReader};
use crate::consistent_index;
use crate::membership::Membership;
use crate::proto::mvccpb::KeyValue;
use crate::raft::RaftLogStore;
use crate::storage::{Batch, Cf, Engine, StorageError};

/// Meta keys that describe the member and cluster rather than the data: a restore writes new ones.
const META_KEYS_REPLACED_ON_RESTORE: [&[u8]; 4] = [
    b"cluster_id",
    b"member_id",
    crate::membership::KEY_MEMBERS,
    consistent_index::KEY,
];

/// Bytes written to RocksDB per batch while restoring (the last batch is the synced one).
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("data directory {0} is not empty; restore needs a new or empty directory")]
    DataDirNotEmpty(PathBuf),
    #[error("invalid restore target: {0}")]
    InvalidTarget(String),
    #[error(transparent)]
    Etcd(#[from] EtcdImportError),
    #[error(
        "{0} is neither an oxetcd snapshot nor an etcd one (a bbolt file saved by etcdctl \
         snapshot save, or a member's member/snap/db)"
    )]
    UnknownFormat(PathBuf),
    #[error(transparent)]
    DataFormat(#[from] crate::data_format::FormatError),
}

impl From<StorageError> for RestoreError {
    fn from(e: StorageError) -> RestoreError {
        RestoreError::Snapshot(SnapshotError::Storage(e))
    }
}

/// An I/O error on `path`.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + use<> {
    let path = path.to_path_buf();
    move |source| RestoreError::Snapshot(SnapshotError::Io { path, source })
}

/// What to restore where, and the identity of the member the restore creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The snapshot file to read.
    pub snapshot_file: PathBuf,
    /// The data directory to create (must not exist or be empty).
    pub data_dir: PathBuf,
    /// `--name`.
    pub name: String,
    /// `--initial-cluster` as (name, peer URLs) pairs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls` (must equal this member's URLs in `initial_cluster`
    /// unless empty).
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub advertise_client_urls: Vec<String>,
    /// `--skip-hash-check` (etcd snapshots only): do not check the SHA-256 that
    /// `etcdctl snapshot save` appends; a member's `member/snap/db`, which has none, needs it.
    /// An oxetcd snapshot's CRC is always checked.
    pub skip_hash_check: bool,
}

impl RestoreOptions {
    /// Restores `snapshot_file` into `data_dir` for the member a configuration describes
    /// (`config.data_dir` is not used).
    pub fn from_config(
        snapshot_file: &Path,
        data_dir: &Path,
        config: &crate::config::Config,
    ) -> RestoreOptions {
        use crate::config::etcd_url_string;
        let urls = |urls: &[url::Url]| urls.iter().map(etcd_url_string).collect::<Vec<_>>();
        let mut initial_cluster: Vec<(String, Vec<String>)> = Vec::new();
        for member in &config.initial_cluster {
            let peer_urls = urls(&member.peer_urls);
            match initial_cluster
                .iter_mut()
                .find(|(name, _)| *name == member.name)
            {
                Some((_, existing)) => existing.extend(peer_urls),
                None => initial_cluster.push((member.name.clone(), peer_urls)),
            }
        }
        RestoreOptions {
            snapshot_file: snapshot_file.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            name: config.name.clone(),
            initial_cluster,
            initial_cluster_token: config.initial_cluster_token.clone(),
            initial_advertise_peer_urls: urls(&config.initial_advertise_peer_urls),
            advertise_client_urls: urls(&config.advertise_client_urls),
            skip_hash_check: false,
        }
    }
}

/// The kinds of snapshot file `oxetcd snapshot restore` reads, told apart by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// oxetcd's own format ([`format`]).
    Oxetcd,
    /// An etcd bbolt file ([`etcd_import`]).
    Etcd,
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub kind: SnapshotKind,
    pub data_dir: PathBuf,
    /// Raft position of the snapshot; the restored log starts after it.
    pub index: u64,
    pub term: u64,
    /// Highest MVCC revision in the snapshot (0 when it holds no revisions).
    pub revision: i64,
    /// Keys live at `revision`.
    pub keys: u64,
    /// Records written per column family.
    pub kv_records: u64,
    pub lease_records: u64,
    pub meta_records: u64,
    pub cluster_id: u64,
    pub member_id: u64,
}

impl fmt::Display for RestoreSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored {}snapshot to {}: revision {}, {} keys, {} leases, raft index {} term {}, \
             member {:x} in cluster {:x}",
            match self.kind {
                SnapshotKind::Oxetcd => "",
                SnapshotKind::Etcd => "etcd ",
            },
            self.data_dir.display(),
            self.revision,
            self.keys,
            self.lease_records,
            self.index,
            self.term,
            self.member_id,
            self.cluster_id
        )
    }
}

/// Builds a new data directory at `options.data_dir` from the snapshot in
/// `options.snapshot_file`, for the member `options.name` of a new cluster described by
/// `options.initial_cluster` and `options.initial_cluster_token`.
///
/// The data is written to a sibling staging directory (`<data_dir>.oxetcd-restore`) which is
/// renamed to `data_dir` only after the CRC checked out and the last batch was synced, so an
/// interrupted or failed restore never leaves a half-written data directory behind.
/// `data_dir` must not exist or be empty.
pub fn restore(options: &RestoreOptions) -> Result<RestoreSummary, RestoreError> {
    let RestoreOptions {
        snapshot_file: file,
        data_dir,
        name,
        initial_cluster,
        initial_cluster_token: cluster_token,
        initial_advertise_peer_urls,
        advertise_client_urls: client_urls,
        skip_hash_check,
    } = options;
    let mut membership =
        Membership::bootstrap(name, initial_cluster, cluster_token).ok_or_else(|| {
            RestoreError::InvalidTarget(format!("member {name:?} is not in the initial cluster"))
        })?;
    // The restored member lists its own client URLs at once; it republishes them when it runs.
    let me = membership.member_id;
    if let Some(m) = membership.members.iter_mut().find(|m| m.id == me) {
        m.client_ur_ls = client_urls.to_vec();
    }
    if !initial_advertise_peer_urls.is_empty() {
        let me = membership
            .members
            .iter()
            .find(|m| m.id == membership.member_id)
            .expect("bootstrap returns a membership that contains this member");
        let listed: HashSet<&String> = me.peer_ur_ls.iter().collect();
        let advertised: HashSet<&String> = initial_advertise_peer_urls.iter().collect();
        if listed != advertised {
            return Err(RestoreError::InvalidTarget(format!(
                "--initial-advertise-peer-urls {} does not match the URLs of {name:?} in \
                 --initial-cluster ({})",
                initial_advertise_peer_urls.join(","),
                me.peer_ur_ls.join(",")
            )));
        }
    }
    ensure_empty(data_dir)?;
    let staging = staging_dir(data_dir)?;
    if staging.exists() {
        tracing::warn!(
            path = %staging.display(),
            "removing the staging directory of an earlier restore"
        );
        std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    let kind = snapshot_kind(file)?;
    // Check the whole file before writing anything: a damaged file fails here, cheaply.
    let written = match kind {
        SnapshotKind::Oxetcd => {
            format::verify_file(file)?;
            restore_into(format::read_file(file)?, &staging, &membership)
        }
        SnapshotKind::Etcd => {
            let db_len = etcd_import::check_hash(file, *skip_hash_check)?;
            import_etcd_into(file, db_len, &staging, &membership)
        }
    };
    let written = written.and_then(|summary| {
        crate::data_format::stamp_current(&staging)?;
        Ok(summary)
    });
    let written = match written {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    rename_into_place(&staging, data_dir)?;
    let summary = RestoreSummary {
        data_dir: data_dir.to_path_buf(),
        ..written
    };
    tracing::info!(
        data_dir = %data_dir.display(),
        kind = ?summary.kind,
        index = summary.index,
        term = summary.term,
        revision = summary.revision,
        keys = summary.keys,
        member_id = %format!("{:x}", summary.member_id),
        cluster_id = %format!("{:x}", summary.cluster_id),
        "restored snapshot"
    );
    Ok(summary)
}

/// Tells an oxetcd snapshot from an etcd one by their first bytes.
fn snapshot_kind(file: &Path) -> Result<SnapshotKind, RestoreError> {
    let mut head = Vec::with_capacity(8192);
    File::open(file)
        .and_then(|f| f.take(8192).read_to_end(&mut head))
        .map_err(io_error(file))?;
    if head.starts_with(format::SNAPSHOT_MAGIC) {
        Ok(SnapshotKind::Oxetcd)
    } else if etcd_import::looks_like_bolt(&head) {
        Ok(SnapshotKind::Etcd)
    } else {
        Err(RestoreError::UnknownFormat(file.to_path_buf()))
    }
}

fn ensure_empty(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(RestoreError::DataDirNotEmpty(dir.to_path_buf())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(dir)(source)),
    }
}

fn staging_dir(data_dir: &Path) -> Result<PathBuf, RestoreError> {
    let file_name = data_dir.file_name().ok_or_else(|| {
        RestoreError::InvalidTarget(format!("data directory {} has no name", data_dir.display()))
    })?;
    let mut staging_name = file_name.to_os_string();
    staging_name.push(".oxetcd-restore");
    Ok(data_dir.with_file_name(staging_name))
}

/// Moves the finished staging directory to `data_dir` and makes the rename durable.
fn rename_into_place(staging: &Path, data_dir: &Path) -> Result<(), RestoreError> {
    if data_dir.exists() {
        // Checked empty above; rename(2) cannot replace a directory on every platform.
        std::fs::remove_dir(data_dir).map_err(io_error(data_dir))?;
    }
    std::fs::rename(staging, data_dir).map_err(io_error(data_dir))?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error(parent))?;
    }
    Ok(())
}

/// Writes the snapshot `reader` reads into a new engine at `dir` for `membership`.
fn restore_into<R: Read>(
    mut reader: SnapshotReader<R>,
    dir: &Path,
    membership: &Membership,
) -> Result<RestoreSummary, RestoreError> {
    let engine = Engine::open(dir, true)?;
    let mut summary = RestoreSummary {
        kind: SnapshotKind::Oxetcd,
        data_dir: dir.to_path_buf(),
        index: 0,
        term: 0,
        revision: 0,
        keys: 0,
        kv_records: 0,
        lease_records: 0,
        meta_records: 0,
        cluster_id: membership.cluster_id,
        member_id: membership.member_id,
    };
    let mut live_keys: HashSet<Vec<u8>> = HashSet::new();
    let mut batch = Batch::new();
    while let Some(record) = reader.next_record()? {
        match record.cf {
            Cf::Kv => {
                summary.kv_records += 1;
                count_revision(
                    &record.key,
                    &record.value,
                    &mut summary.revision,
                    &mut live_keys,
                )?;
            }
            Cf::Lease => summary.lease_records += 1,
            Cf::Meta => {
                if META_KEYS_REPLACED_ON_RESTORE.contains(&record.key.as_slice()) {
                    continue;
                }
                summary.meta_records += 1;
            }
            other => {
                return Err(SnapshotError::Corrupt(format!(
                    "record for column family {}",
                    other.name()
                ))
                .into());
            }
        }
        batch.put(&engine, record.cf, &record.key, &record.value);
        if batch.size_bytes() >= RESTORE_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false)?;
        }
    }
    let pos = reader.finish()?;
    summary.index = pos.index;
    summary.term = pos.term;
    summary.keys = live_keys.len() as u64;
    finish(&engine, batch, membership, pos.index, pos.term)?;
    Ok(summary)
}

/// Writes the etcd snapshot in the first `db_len` bytes of `file` into a new engine at `dir`
/// for `membership`.
fn import_etcd_into(
    file: &Path,
    db_len: u64,
    dir: &Path,
    membership: &Membership,
) -> Result<RestoreSummary, RestoreError> {
    let engine = Engine::open(dir, true)?;
    let imported = etcd_import::import(file, db_len, &engine)?;
    // etcd 3.4 records no term, and an empty etcd no index; a raft log starts after index 1
    // at the earliest, in term 1 at the earliest (a new oxetcd cluster's does).
    let index = imported.index.max(1);
    let term = imported.term.max(1);
    finish(&engine, Batch::new(), membership, index, term)?;
    Ok(RestoreSummary {
        kind: SnapshotKind::Etcd,
        data_dir: dir.to_path_buf(),
        index,
        term,
        revision: imported.revision,
        keys: imported.keys,
        kv_records: imported.kv_records,
        lease_records: imported.lease_records,
        meta_records: imported.meta_records,
        cluster_id: membership.cluster_id,
        member_id: membership.member_id,
    })
}

/// Adds the new member list, the applied position (`index`, `term`) and a raft log that starts
/// after it to `batch`, writes it synced and syncs the WAL.
fn finish(
    engine: &Engine,
    mut batch: Batch,
    membership: &Membership,
    index: u64,
    term: u64,
) -> Result<(), RestoreError> {
    membership.save(engine, &mut batch);
    consistent_index::write(engine, &mut batch, index, term);
    RaftLogStore::bootstrap_restored(engine, &mut batch, index, term, &membership.voters());
    engine.write(batch, true)?;
    engine.sync_wal()?;
    Ok(())
}

/// Tracks the highest revision and the set of live keys while kv records (revision key and
/// encoded `KeyValue`) stream by in revision order; fails on a record that is neither.
pub(super) fn count_revision(
    key: &[u8],
    value: &[u8],
    revision: &mut i64,
    live_keys: &mut HashSet<Vec<u8>>,
) -> Result<(), SnapshotError> {
    let (rev, tombstone) = crate::mvcc::decode_rev_key(key).ok_or_else(|| {
        SnapshotError::Corrupt(format!("kv record key {key:?} is not a revision"))
    })?;
    *revision = (*revision).max(rev.main);
    let kv = KeyValue::decode(value).map_err(|e| {
        SnapshotError::Corrupt(format!("kv record at revision {rev} does not decode: {e}"))
    })?;
    if tombstone {
        live_keys.remove(&kv.key);
    } else {
        live_keys.insert(kv.key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format::{
        SNAPSHOT_MAGIC, all_records as all, sample_engine, save_to_file, write_snapshot,
    };

    fn options(file: &Path, data_dir: &Path) -> RestoreOptions {
        RestoreOptions {
            snapshot_file: file.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            name: "n1".to_string(),
            initial_cluster: vec![("n1".to_string(), vec!["http://127.0.0.1:2380".to_string()])],
            initial_cluster_token: "tok".to_string(),
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".to_string()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".to_string()],
            skip_hash_check: false,
        }
    }

    fn restore_to(file: &Path, data_dir: &Path) -> Result<RestoreSummary, RestoreError> {
        restore(&options(file, data_dir))
    }

    #[test]
    fn round_trip_restores_every_record_and_a_new_identity() {
        let src = tempfile::tempdir().unwrap();
        let engine = sample_engine(&src.path().join("db"));
        let file = src.path().join("snap.db");
        save_to_file(&engine, &file).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let data_dir = dst.path().join("restored");
        let summary = restore_to(&file, &data_dir).unwrap();
        assert_eq!((summary.index, summary.term), (42, 3));
        assert_eq!(summary.revision, 5);
        assert_eq!(summary.keys, 2, "a and c live, b deleted");
        assert_eq!(summary.kv_records, 4);
        assert_eq!(summary.lease_records, 1);
        assert!(!dst.path().join("restored.oxetcd-restore").exists());

        let restored = Engine::open(&data_dir, true).unwrap();
        assert_eq!(all(&restored, Cf::Kv), all(&engine, Cf::Kv));
        assert_eq!(all(&restored, Cf::Lease), all(&engine, Cf::Lease));
        assert_eq!(
            restored.get(Cf::Meta, b"finishedCompactRev").unwrap(),
            Some(1i64.to_be_bytes().to_vec())
        );
        assert!(all(&restored, Cf::RaftLog).is_empty());
        assert_eq!(consistent_index::read_index(&restored).unwrap(), 42);
        let membership = Membership::load(&restored).unwrap().unwrap();
        assert_eq!(membership.member_id, summary.member_id);
        assert_ne!(membership.member_id, 99);
        assert_eq!(membership.members.len(), 1);
        let log = RaftLogStore::open(restored.clone(), &[]).unwrap();
        assert_eq!((log.first(), log.last()), (43, 42));
        assert_eq!(log.hard_state().commit, 42);
        assert_eq!(log.hard_state().term, 3);
    }

    #[test]
    fn checksum_mismatch_is_detected_and_leaves_nothing_behind() {
        let src = tempfile::tempdir().unwrap();
        let engine = sample_engine(&src.path().join("db"));
        let mut bytes = Vec::new();
        write_snapshot(&engine.view(), &mut bytes).unwrap();
        // Flip a bit inside the first record's value.
        let at = SNAPSHOT_MAGIC.len() + 1 + 4 + 17 + 4 + 2;
        bytes[at] ^= 0x01;
        let file = src.path().join("bad.db");
        std::fs::write(&file, &bytes).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let data_dir = dst.path().join("restored");
        match restore_to(&file, &data_dir) {
            Err(RestoreError::Snapshot(SnapshotError::ChecksumMismatch { .. })) => {}
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(!data_dir.exists());
        assert!(!dst.path().join("restored.oxetcd-restore").exists());
    }

    #[test]
    fn refuses_a_non_empty_data_dir() {
        let src = tempfile::tempdir().unwrap();
        let engine = sample_engine(&src.path().join("db"));
        let file = src.path().join("snap.db");
        save_to_file(&engine, &file).unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::write(dst.path().join("something"), b"x").unwrap();
        assert!(matches!(
            restore_to(&file, dst.path()),
            Err(RestoreError::DataDirNotEmpty(_))
        ));
        // An existing but empty directory is fine.
        let empty = tempfile::tempdir().unwrap();
        let data_dir = empty.path().join("d");
        std::fs::create_dir(&data_dir).unwrap();
        restore_to(&file, &data_dir).unwrap();
    }

    #[test]
    fn rejects_a_member_outside_the_initial_cluster() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("snap.db");
        let err = restore(&RestoreOptions {
            name: "other".to_string(),
            initial_advertise_peer_urls: Vec::new(),
            advertise_client_urls: Vec::new(),
            ..options(&file, &src.path().join("d"))
        });
        assert!(matches!(err, Err(RestoreError::InvalidTarget(_))));
    }
}
