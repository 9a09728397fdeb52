//! State-machine snapshots: the byte format streamed by Maintenance.Snapshot (what
//! `etcdctl snapshot save` writes to a file) and `restore`, which builds a fresh data directory
//! for a new cluster from such a file (`oxetcd snapshot restore`).
//!
//! # Format (version 1)
//!
//! All integers are big-endian.
//!
//! ```text
//! magic     16 bytes  "OXETCD-SNAPSHOT" followed by the format version byte 0x01
//! records   repeated: cf u8 | key_len u32 | key | value_len u32 | value
//!           cf: 1 = kv, 2 = lease, 3 = meta; within one snapshot all kv records come first,
//!           then lease, then meta, each in key order
//! end       1 byte    0xff
//! position  index u64 | term u64   the raft entry the state machine had applied
//!                                   (meta `consistent_index`, read from the same view)
//! padding   zero bytes up to the next multiple of 512 bytes from the start
//! trailer   32 bytes: tag "OXETCD-SNAPSHOT-END" zero-padded to 28 bytes | crc u32, the
//!           CRC-32 (IEEE, crc32fast) of every byte before the crc
//! ```
//!
//! The records are the column families `kv`, `lease` and `meta` as of one consistent
//! [`View`]; the raft log and raft state are not part of a snapshot. Over gRPC the bytes before
//! the trailer go out in [`SNAPSHOT_CHUNK_BYTES`] chunks and the last message carries only the
//! 32-byte trailer, with `remaining_bytes` 0 (etcd likewise ends with a message holding its
//! 32-byte SHA-256).
//!
//! Why the padding and the 32-byte trailer: `etcdctl snapshot save` (3.4 and 3.5) refuses a
//! download whose size is not a multiple of 512 plus 32 ("sha256 checksum not found"), the shape
//! of a bbolt file followed by its SHA-256. Ours has that shape, so etcdctl saves it.
//!
//! This is not etcd's bbolt file: `etcdctl snapshot status` and `etcdutl snapshot restore`
//! cannot read it; `oxetcd snapshot restore` can.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::membership::Membership;
use crate::proto::mvccpb::KeyValue;
use crate::raft::RaftLogStore;
use crate::storage::{Batch, Cf, Engine, StorageError, View};

/// The first bytes of every snapshot: a name and the format version.
pub const SNAPSHOT_MAGIC: &[u8; 16] = b"OXETCD-SNAPSHOT\x01";

/// Bytes per Maintenance.Snapshot message (etcd's `snapshotSendBufferSize`).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// Length of the trailer (tag and CRC) that ends every snapshot.
pub const SNAPSHOT_TRAILER_BYTES: usize = 32;

/// The body (everything before the trailer) is padded to a multiple of this.
pub const SNAPSHOT_ALIGN_BYTES: u64 = 512;

/// The trailer's first 28 bytes.
const TRAILER_TAG: &[u8; SNAPSHOT_TRAILER_BYTES - 4] = b"OXETCD-SNAPSHOT-END\0\0\0\0\0\0\0\0\0";

const CF_KV: u8 = 1;
const CF_LEASE: u8 = 2;
const CF_META: u8 = 3;
const END_MARK: u8 = 0xff;

/// Column families in a snapshot, with their record tags, in stream order.
const SNAPSHOT_CFS: [(Cf, u8); 3] = [(Cf::Kv, CF_KV), (Cf::Lease, CF_LEASE), (Cf::Meta, CF_META)];

/// Meta keys that describe the member and cluster rather than the data: a restore writes new ones.
const META_KEYS_REPLACED_ON_RESTORE: [&[u8]; 4] =
    [b"cluster_id", b"member_id", b"members", b"consistent_index"];

/// Bytes written to RocksDB per batch while restoring (the last batch is the synced one).
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// What can go wrong taking or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the snapshot: {0}")]
    Write(#[source] io::Error),
    #[error("not an oxetcd snapshot (bad magic header)")]
    BadMagic,
    #[error(
        "snapshot checksum mismatch: file says {expected:#010x}, content hashes to {actual:#010x}"
    )]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("data directory {0} is not empty; restore needs a new or empty directory")]
    DataDirNotEmpty(PathBuf),
    #[error("invalid restore target: {0}")]
    InvalidTarget(String),
}

/// The raft position a snapshot was taken at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotPosition {
    pub index: u64,
    pub term: u64,
}

/// The applied position recorded in meta `consistent_index` of `view` ((0, 0) before the first
/// apply).
pub fn position(view: &View<'_>) -> Result<SnapshotPosition, SnapshotError> {
    match view.get(Cf::Meta, b"consistent_index")? {
        None => Ok(SnapshotPosition::default()),
        Some(bytes) if bytes.len() >= 16 => Ok(SnapshotPosition {
            index: u64::from_be_bytes(bytes[..8].try_into().expect("length checked")),
            term: u64::from_be_bytes(bytes[8..16].try_into().expect("length checked")),
        }),
        Some(_) => Err(SnapshotError::Corrupt(
            "meta consistent_index is shorter than 16 bytes".into(),
        )),
    }
}

/// Zero bytes that follow a body of `len` bytes.
fn padding_len(len: u64) -> u64 {
    (SNAPSHOT_ALIGN_BYTES - len % SNAPSHOT_ALIGN_BYTES) % SNAPSHOT_ALIGN_BYTES
}

/// The exact length in bytes of the snapshot of `view`, trailer included (one pass over the
/// view that reads no more than the encoder will).
pub fn encoded_len(view: &View<'_>) -> Result<u64, SnapshotError> {
    let mut len = SNAPSHOT_MAGIC.len() as u64;
    for (cf, _) in SNAPSHOT_CFS {
        for item in view.scan(cf, &[], None) {
            let (key, value) = item?;
            len += 1 + 4 + key.len() as u64 + 4 + value.len() as u64;
        }
    }
    len += 1 + 16;
    Ok(len + padding_len(len) + SNAPSHOT_TRAILER_BYTES as u64)
}

/// Writes the snapshot of `view` to `out` except the trailer, which it returns together with
/// the position the snapshot was taken at. [`write_snapshot`] writes the trailer too.
pub fn write_body<W: Write + ?Sized>(
    view: &View<'_>,
    out: &mut W,
) -> Result<([u8; SNAPSHOT_TRAILER_BYTES], SnapshotPosition), SnapshotError> {
    let mut w = CrcWriter {
        inner: out,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    w.write_all(SNAPSHOT_MAGIC).map_err(SnapshotError::Write)?;
    for (cf, tag) in SNAPSHOT_CFS {
        for item in view.scan(cf, &[], None) {
            let (key, value) = item?;
            write_record(&mut w, tag, &key, &value)?;
        }
    }
    let pos = position(view)?;
    w.write_all(&[END_MARK]).map_err(SnapshotError::Write)?;
    w.write_all(&pos.index.to_be_bytes())
        .map_err(SnapshotError::Write)?;
    w.write_all(&pos.term.to_be_bytes())
        .map_err(SnapshotError::Write)?;
    let padding = vec![0u8; padding_len(w.bytes) as usize];
    w.write_all(&padding).map_err(SnapshotError::Write)?;
    let mut hasher = w.hasher;
    hasher.update(TRAILER_TAG);
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES];
    trailer[..TRAILER_TAG.len()].copy_from_slice(TRAILER_TAG);
    trailer[TRAILER_TAG.len()..].copy_from_slice(&hasher.finalize().to_be_bytes());
    Ok((trailer, pos))
}

/// Writes the complete snapshot of `view` (body and trailer) to `out`.
pub fn write_snapshot<W: Write + ?Sized>(
    view: &View<'_>,
    out: &mut W,
) -> Result<SnapshotPosition, SnapshotError> {
    let (trailer, pos) = write_body(view, out)?;
    out.write_all(&trailer).map_err(SnapshotError::Write)?;
    out.flush().map_err(SnapshotError::Write)?;
    Ok(pos)
}

fn write_record<W: Write>(
    w: &mut W,
    tag: u8,
    key: &[u8],
    value: &[u8],
) -> Result<(), SnapshotError> {
    let len32 = |n: usize| {
        u32::try_from(n)
            .map_err(|_| SnapshotError::Corrupt(format!("a {n}-byte field exceeds 4 GiB")))
    };
    let key_len = len32(key.len())?;
    let value_len = len32(value.len())?;
    w.write_all(&[tag]).map_err(SnapshotError::Write)?;
    w.write_all(&key_len.to_be_bytes())
        .map_err(SnapshotError::Write)?;
    w.write_all(key).map_err(SnapshotError::Write)?;
    w.write_all(&value_len.to_be_bytes())
        .map_err(SnapshotError::Write)?;
    w.write_all(value).map_err(SnapshotError::Write)
}

/// A writer that hashes and counts what passes through it.
struct CrcWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write + ?Sized> Write for CrcWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through it.
struct CrcReader<R: Read> {
    inner: R,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub cf: Cf,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Reads a snapshot stream record by record, checking the magic first and the CRC at the end.
/// Records are handed out before the CRC is checked: treat them as provisional until
/// [`SnapshotReader::finish`] succeeds.
pub struct SnapshotReader<R: Read> {
    r: CrcReader<R>,
    position: Option<SnapshotPosition>,
}

impl<R: Read> SnapshotReader<R> {
    /// Starts reading; fails unless the stream opens with [`SNAPSHOT_MAGIC`].
    pub fn new(inner: R) -> Result<SnapshotReader<R>, SnapshotError> {
        let mut r = CrcReader {
            inner,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        };
        let mut magic = [0u8; SNAPSHOT_MAGIC.len()];
        r.read_exact(&mut magic).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SnapshotError::BadMagic,
            _ => SnapshotError::Corrupt(format!("reading the header: {e}")),
        })?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        Ok(SnapshotReader { r, position: None })
    }

    /// The next record, or `None` at the end mark.
    pub fn next_record(&mut self) -> Result<Option<Record>, SnapshotError> {
        if self.position.is_some() {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.r, &mut tag, "record tag")?;
        let cf = match tag[0] {
            CF_KV => Cf::Kv,
            CF_LEASE => Cf::Lease,
            CF_META => Cf::Meta,
            END_MARK => {
                let mut pos = [0u8; 16];
                read_exact(&mut self.r, &mut pos, "snapshot position")?;
                let mut padding = vec![0u8; padding_len(self.r.bytes) as usize];
                read_exact(&mut self.r, &mut padding, "padding")?;
                if padding.iter().any(|b| *b != 0) {
                    return Err(SnapshotError::Corrupt("non-zero padding".into()));
                }
                self.position = Some(SnapshotPosition {
                    index: u64::from_be_bytes(pos[..8].try_into().expect("16-byte buffer")),
                    term: u64::from_be_bytes(pos[8..].try_into().expect("16-byte buffer")),
                });
                return Ok(None);
            }
            other => {
                return Err(SnapshotError::Corrupt(format!(
                    "unknown record tag {other:#04x}"
                )));
            }
        };
        let key = read_field(&mut self.r, "key")?;
        let value = read_field(&mut self.r, "value")?;
        Ok(Some(Record { cf, key, value }))
    }

    /// Reads the trailer after the last record and checks the CRC; returns the snapshot's
    /// position. Fails if records remain or bytes follow the trailer.
    pub fn finish(mut self) -> Result<SnapshotPosition, SnapshotError> {
        let Some(pos) = self.position else {
            return Err(SnapshotError::Corrupt(
                "records remain before the end mark".into(),
            ));
        };
        let mut tag = [0u8; TRAILER_TAG.len()];
        read_exact(&mut self.r, &mut tag, "trailer")?;
        if &tag != TRAILER_TAG {
            return Err(SnapshotError::Corrupt("bad trailer tag".into()));
        }
        let actual = self.r.hasher.clone().finalize();
        let mut crc = [0u8; 4];
        self.r
            .inner
            .read_exact(&mut crc)
            .map_err(|e| SnapshotError::Corrupt(format!("reading the checksum: {e}")))?;
        let expected = u32::from_be_bytes(crc);
        if expected != actual {
            return Err(SnapshotError::ChecksumMismatch { expected, actual });
        }
        let mut extra = [0u8; 1];
        match self.r.inner.read(&mut extra) {
            Ok(0) => Ok(pos),
            Ok(_) => Err(SnapshotError::Corrupt("bytes follow the checksum".into())),
            Err(e) => Err(SnapshotError::Corrupt(format!(
                "reading past the checksum: {e}"
            ))),
        }
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), SnapshotError> {
    r.read_exact(buf)
        .map_err(|e| SnapshotError::Corrupt(format!("reading the {what}: {e}")))
}

/// A length-prefixed field. The buffer grows with what is actually read, so a corrupt length
/// ends in an error at end of file rather than a huge allocation.
fn read_field<R: Read>(r: &mut R, what: &str) -> Result<Vec<u8>, SnapshotError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, what)?;
    let len = u32::from_be_bytes(len) as usize;
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    let got = r
        .take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|e| SnapshotError::Corrupt(format!("reading a {what}: {e}")))?;
    if got != len {
        return Err(SnapshotError::Corrupt(format!(
            "truncated {what}: {got} of {len} bytes"
        )));
    }
    Ok(buf)
}

/// The identity of the member a restore creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTarget {
    /// `--name`.
    pub name: String,
    /// `--initial-cluster` as (name, peer URLs) pairs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-advertise-peer-urls` (must equal this member's URLs in `initial_cluster`
    /// unless empty).
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster-token`.
    pub cluster_token: String,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

impl RestoreTarget {
    /// The restore target described by a configuration.
    pub fn from_config(config: &crate::config::Config) -> RestoreTarget {
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
        RestoreTarget {
            name: config.name.clone(),
            initial_cluster,
            initial_advertise_peer_urls: urls(&config.initial_advertise_peer_urls),
            cluster_token: config.initial_cluster_token.clone(),
            client_urls: urls(&config.advertise_client_urls),
        }
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
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
            "restored snapshot to {}: revision {}, {} keys, {} leases, raft index {} term {}, \
             member {:x} in cluster {:x}",
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

/// Builds a new data directory at `data_dir` from the snapshot in `file`, for the member `name`
/// of a new cluster described by `initial_cluster` and `cluster_token`.
///
/// The data is written to a sibling staging directory (`<data_dir>.oxetcd-restore`) which is
/// renamed to `data_dir` only after the CRC checked out and the last batch was synced, so an
/// interrupted or failed restore never leaves a half-written data directory behind.
/// `data_dir` must not exist or be empty.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    name: &str,
    initial_cluster: &[(String, Vec<String>)],
    initial_advertise_peer_urls: &[String],
    cluster_token: &str,
    client_urls: &[String],
) -> Result<RestoreSummary, SnapshotError> {
    let mut membership =
        Membership::bootstrap(name, initial_cluster, cluster_token).ok_or_else(|| {
            SnapshotError::InvalidTarget(format!("member {name:?} is not in the initial cluster"))
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
            return Err(SnapshotError::InvalidTarget(format!(
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
        std::fs::remove_dir_all(&staging).map_err(|source| SnapshotError::Io {
            path: staging.clone(),
            source,
        })?;
    }
    // Check the whole file before writing anything: a damaged file fails here, cheaply.
    verify_file(file)?;
    let written = match restore_into(BufReader::new(open(file)?), &staging, &membership) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    install(&staging, data_dir)?;
    let summary = RestoreSummary {
        data_dir: data_dir.to_path_buf(),
        ..written
    };
    tracing::info!(
        data_dir = %data_dir.display(),
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

/// [`restore`] with the member identity taken from a configuration (`config.data_dir` is not
/// used; `data_dir` is).
pub fn restore_with_config(
    file: &Path,
    data_dir: &Path,
    config: &crate::config::Config,
) -> Result<RestoreSummary, SnapshotError> {
    let t = RestoreTarget::from_config(config);
    restore(
        file,
        data_dir,
        &t.name,
        &t.initial_cluster,
        &t.initial_advertise_peer_urls,
        &t.cluster_token,
        &t.client_urls,
    )
}

fn open(file: &Path) -> Result<File, SnapshotError> {
    File::open(file).map_err(|source| SnapshotError::Io {
        path: file.to_path_buf(),
        source,
    })
}

/// Reads the snapshot in `file` through, checking its structure and CRC; returns its position.
pub fn verify_file(file: &Path) -> Result<SnapshotPosition, SnapshotError> {
    let mut reader = SnapshotReader::new(BufReader::new(open(file)?))?;
    while reader.next_record()?.is_some() {}
    reader.finish()
}

fn ensure_empty(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(SnapshotError::DataDirNotEmpty(dir.to_path_buf())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn staging_dir(data_dir: &Path) -> Result<PathBuf, SnapshotError> {
    let file_name = data_dir.file_name().ok_or_else(|| {
        SnapshotError::InvalidTarget(format!("data directory {} has no name", data_dir.display()))
    })?;
    let mut staging_name = file_name.to_os_string();
    staging_name.push(".oxetcd-restore");
    Ok(data_dir.with_file_name(staging_name))
}

/// Moves the finished staging directory to `data_dir` and makes the rename durable.
fn install(staging: &Path, data_dir: &Path) -> Result<(), SnapshotError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    if data_dir.exists() {
        // Checked empty above; rename(2) cannot replace a directory on every platform.
        std::fs::remove_dir(data_dir).map_err(io_err(data_dir))?;
    }
    std::fs::rename(staging, data_dir).map_err(io_err(data_dir))?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))?;
    }
    Ok(())
}

/// Writes the snapshot read from `input` into a new engine at `dir` for `membership`.
fn restore_into<R: Read>(
    input: R,
    dir: &Path,
    membership: &Membership,
) -> Result<RestoreSummary, SnapshotError> {
    let engine = Engine::open(dir, true)?;
    let mut reader = SnapshotReader::new(input)?;
    let mut summary = RestoreSummary {
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
                count_revision(&record, &mut summary.revision, &mut live_keys)?;
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
                )));
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
    membership.save(&engine, &mut batch);
    crate::apply::write_consistent_index(&engine, &mut batch, pos.index, pos.term);
    RaftLogStore::bootstrap_restored(
        &engine,
        &mut batch,
        pos.index,
        pos.term,
        &membership.voters(),
    );
    engine.write(batch, true)?;
    engine.sync_wal()?;
    Ok(summary)
}

/// Tracks the highest revision and the set of live keys while kv records stream by in
/// revision order.
fn count_revision(
    record: &Record,
    revision: &mut i64,
    live_keys: &mut HashSet<Vec<u8>>,
) -> Result<(), SnapshotError> {
    let (rev, tombstone) = crate::mvcc::decode_rev_key(&record.key).ok_or_else(|| {
        SnapshotError::Corrupt(format!("kv record key {:?} is not a revision", record.key))
    })?;
    *revision = (*revision).max(rev.main);
    let kv = KeyValue::decode(record.value.as_slice()).map_err(|e| {
        SnapshotError::Corrupt(format!("kv record at revision {rev} does not decode: {e}"))
    })?;
    if tombstone {
        live_keys.remove(&kv.key);
    } else {
        live_keys.insert(kv.key);
    }
    Ok(())
}

/// Meta key naming the raft snapshot file being installed; present only while an install is
/// under way, so a member that crashed in the middle finishes it when it starts again.
const KEY_INSTALLING: &[u8] = b"installing_snapshot";

/// Replaces this member's state machine (column families `kv`, `lease`, `meta`) with the raft
/// snapshot in `file`, taken at `expected`, keeping this member's own ID. Written in bounded
/// batches; the install is recorded first and cleared by the last (synced) batch, see
/// [`finish_interrupted_install`].
pub fn install_into(
    engine: &Engine,
    file: &Path,
    expected: SnapshotPosition,
) -> Result<(), SnapshotError> {
    let member_id = engine.get(Cf::Meta, b"member_id")?;
    let mut batch = Batch::new();
    batch.put(
        engine,
        Cf::Meta,
        KEY_INSTALLING,
        file.to_string_lossy().as_bytes(),
    );
    engine.write(batch, true)?;

    let mut reader = SnapshotReader::new(BufReader::new(open(file)?))?;
    let mut batch = Batch::new();
    // Every key of these column families sorts below 64 bytes of 0xff: revisions and lease
    // IDs are non-negative big-endian integers, meta keys are ASCII.
    let end = [0xffu8; 64];
    for (cf, _) in SNAPSHOT_CFS {
        batch.delete_range(engine, cf, &[], &end);
    }
    batch.put(
        engine,
        Cf::Meta,
        KEY_INSTALLING,
        file.to_string_lossy().as_bytes(),
    );
    if let Some(id) = &member_id {
        batch.put(engine, Cf::Meta, b"member_id", id);
    }
    while let Some(record) = reader.next_record()? {
        if record.cf == Cf::Meta
            && [&b"member_id"[..], b"consistent_index", KEY_INSTALLING]
                .contains(&record.key.as_slice())
        {
            continue;
        }
        batch.put(engine, record.cf, &record.key, &record.value);
        if batch.size_bytes() >= RESTORE_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false)?;
        }
    }
    let pos = reader.finish()?;
    if pos != expected {
        return Err(SnapshotError::Corrupt(format!(
            "snapshot file {} holds index {} term {}, raft expected index {} term {}",
            file.display(),
            pos.index,
            pos.term,
            expected.index,
            expected.term
        )));
    }
    crate::apply::write_consistent_index(engine, &mut batch, pos.index, pos.term);
    batch.delete(engine, Cf::Meta, KEY_INSTALLING);
    engine.write(batch, true)?;
    Ok(())
}

/// Finishes a raft snapshot install that a crash interrupted (the file is kept until the
/// install completed). Returns whether there was one.
pub fn finish_interrupted_install(engine: &Engine) -> Result<bool, SnapshotError> {
    let Some(name) = engine.get(Cf::Meta, KEY_INSTALLING)? else {
        return Ok(false);
    };
    let file = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    tracing::warn!(file = %file.display(), "finishing a snapshot install interrupted by a crash");
    let pos = verify_file(&file)?;
    install_into(engine, &file, pos)?;
    Ok(true)
}

/// Writes the snapshot of `engine` to the file `path` (tests and tools).
pub fn save_to_file(engine: &Engine, path: &Path) -> Result<SnapshotPosition, SnapshotError> {
    let file = File::create(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = BufWriter::new(file);
    let view = engine.view();
    let pos = write_snapshot(&view, &mut out)?;
    out.into_inner()
        .map_err(|e| SnapshotError::Write(e.into_error()))?
        .sync_all()
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Revision;

    fn kv_value(key: &[u8], rev: i64) -> Vec<u8> {
        KeyValue {
            key: key.to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: b"value".to_vec(),
            lease: 0,
        }
        .encode_to_vec()
    }

    /// An engine with a few revisions (one deleted key), a lease and some meta.
    fn sample_engine(dir: &Path) -> std::sync::Arc<Engine> {
        let engine = Engine::open(dir, true).unwrap();
        let mut b = Batch::new();
        for (main, key) in [(2i64, &b"a"[..]), (3, b"b"), (4, b"c")] {
            b.put(
                &engine,
                Cf::Kv,
                &Revision::new(main, 0).to_key(),
                &kv_value(key, main),
            );
        }
        let tomb = KeyValue {
            key: b"b".to_vec(),
            ..KeyValue::default()
        };
        b.put(
            &engine,
            Cf::Kv,
            &Revision::new(5, 0).to_key_vec(true),
            &tomb.encode_to_vec(),
        );
        b.put(&engine, Cf::Lease, &7i64.to_be_bytes(), b"lease-7");
        b.put(
            &engine,
            Cf::Meta,
            b"finishedCompactRev",
            &1i64.to_be_bytes(),
        );
        b.put(&engine, Cf::Meta, b"member_id", &99u64.to_be_bytes());
        crate::apply::write_consistent_index(&engine, &mut b, 42, 3);
        b.put(
            &engine,
            Cf::RaftLog,
            &1u64.to_be_bytes(),
            b"not in a snapshot",
        );
        engine.write(b, true).unwrap();
        engine
    }

    fn all(engine: &Engine, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
        engine
            .scan(cf, &[], None)
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    fn target() -> (String, Vec<(String, Vec<String>)>) {
        let peers = vec!["http://127.0.0.1:2380".to_string()];
        ("n1".to_string(), vec![("n1".to_string(), peers)])
    }

    fn restore_to(file: &Path, data_dir: &Path) -> Result<RestoreSummary, SnapshotError> {
        let (name, cluster) = target();
        restore(
            file,
            data_dir,
            &name,
            &cluster,
            &["http://127.0.0.1:2380".to_string()],
            "tok",
            &["http://127.0.0.1:2379".to_string()],
        )
    }

    #[test]
    fn encoded_len_matches_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = sample_engine(dir.path());
        let view = engine.view();
        let mut bytes = Vec::new();
        let pos = write_snapshot(&view, &mut bytes).unwrap();
        assert_eq!(pos, SnapshotPosition { index: 42, term: 3 });
        assert_eq!(encoded_len(&view).unwrap(), bytes.len() as u64);
        assert!(bytes.starts_with(SNAPSHOT_MAGIC));
        // etcdctl's test for "a bbolt file followed by its SHA-256".
        assert_eq!(bytes.len() % 512, 32);
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
        assert_eq!(crate::apply::read_consistent_index(&restored).unwrap(), 42);
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
            Err(SnapshotError::ChecksumMismatch { .. }) => {}
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(!data_dir.exists());
        assert!(!dst.path().join("restored.oxetcd-restore").exists());
    }

    #[test]
    fn truncated_and_foreign_files_are_rejected() {
        let src = tempfile::tempdir().unwrap();
        let engine = sample_engine(&src.path().join("db"));
        let mut bytes = Vec::new();
        write_snapshot(&engine.view(), &mut bytes).unwrap();

        let mut reader = SnapshotReader::new(&bytes[..bytes.len() - 2]).unwrap();
        while reader.next_record().unwrap().is_some() {}
        assert!(matches!(reader.finish(), Err(SnapshotError::Corrupt(_))));

        assert!(matches!(
            SnapshotReader::new(&b"SQLite format 3\0 and more"[..]),
            Err(SnapshotError::BadMagic)
        ));
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
            Err(SnapshotError::DataDirNotEmpty(_))
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
        let (_, cluster) = target();
        let err = restore(
            &file,
            &src.path().join("d"),
            "other",
            &cluster,
            &[],
            "tok",
            &[],
        );
        assert!(matches!(err, Err(SnapshotError::InvalidTarget(_))));
    }
}
