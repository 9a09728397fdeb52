//! Importing an etcd snapshot: what `oxetcd snapshot restore` does with a bbolt file (a file
//! `etcdctl snapshot save` wrote from etcd 3.4, 3.5 or 3.6, or a member's `member/snap/db`).
//!
//! The file is recognised by content (bbolt's magic in a meta page) and checked like
//! `etcdutl snapshot restore` checks it: a saved snapshot ends with the SHA-256 of the bytes
//! before it (its length is then 512n + 32), which must match unless `--skip-hash-check` is
//! given; a file without one (a member's `db`) needs `--skip-hash-check`.
//!
//! What comes over, from etcd's buckets (read with [`bolt`](super::bolt)):
//!
//! | etcd | oxetcd |
//! | --- | --- |
//! | `key`: every revision, tombstones included | `kv`, byte for byte: oxetcd's revision keys and `mvccpb.KeyValue` values are etcd's, so HashKV agrees |
//! | `meta` `scheduledCompactRev` / `finishedCompactRev` (17-byte revisions) | `meta`, as oxetcd's 8-byte revisions |
//! | `meta` `consistent_index`, `term` (3.5+) | the raft position the restored log starts after |
//! | `lease`: `leasepb.Lease` | `lease` records (TTL and checkpointed remaining TTL); attachments are the keys' `lease` fields, which MVCC hands the lessor at start |
//! | `auth` `authEnabled`, `authRevision`; `authUsers`, `authRoles` | the auth store's records in `meta` |
//!
//! Left behind, as `etcdutl snapshot restore` leaves them: the member list (`members`,
//! `members_removed`: the restore makes a new cluster from the flags), alarms and the cluster
//! version. Like etcd after a restore, each lease counts its TTL (or its checkpointed remaining
//! TTL) afresh from the member's start.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use prost::Message as _;

use super::bolt::{self, BoltError, BoltFile, Bucket, Entries};
use crate::mvcc::{FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY};
use crate::proto::authpb::{Role, User};
use crate::storage::{Batch, Cf, Engine, StorageError};

/// Length of the SHA-256 `etcdctl snapshot save` appends.
pub const HASH_BYTES: u64 = 32;

/// A snapshot with a hash is a bbolt file (a whole number of 512-byte blocks) and the hash.
const HASH_ALIGN_BYTES: u64 = 512;

/// Bytes read per call while hashing.
const HASH_CHUNK_BYTES: usize = 1 << 20;

/// Bytes written to RocksDB per batch while importing.
const IMPORT_BATCH_BYTES: usize = 4 << 20;

const BUCKET_KEY: &str = "key";
const BUCKET_META: &str = "meta";
const BUCKET_LEASE: &str = "lease";
const BUCKET_AUTH: &str = "auth";
const BUCKET_AUTH_USERS: &str = "authUsers";
const BUCKET_AUTH_ROLES: &str = "authRoles";

const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
const META_TERM: &[u8] = b"term";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

/// etcd's `leasepb.Lease`, as its `lease` bucket stores it.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// Why an etcd snapshot could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum EtcdImportError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// etcdutl's words; a saved snapshot ends with a hash, a member's `db` does not.
    #[error(
        "snapshot missing hash but --skip-hash-check=false (etcdctl snapshot save appends a \
         SHA-256; a member's member/snap/db has none and needs --skip-hash-check, a truncated \
         file has lost it)"
    )]
    MissingHash,
    /// etcdutl's check, with the hashes in hex.
    #[error("expected sha256 {expected}, got {actual}: the snapshot file is damaged")]
    HashMismatch { expected: String, actual: String },
    #[error("reading the etcd snapshot: {0}")]
    Bolt(#[from] BoltError),
    #[error("etcd snapshot has no {0:?} bucket")]
    MissingBucket(&'static str),
    #[error("corrupt etcd snapshot: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What an import wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// The raft index and term of the last entry etcd applied (`consistent_index`, `term`;
    /// term 0 from etcd 3.4, which does not record it).
    pub index: u64,
    pub term: u64,
    /// Highest revision in the `key` bucket (0 when it holds none).
    pub revision: i64,
    /// Keys live at `revision`.
    pub keys: u64,
    pub kv_records: u64,
    pub lease_records: u64,
    /// Compaction revisions and auth records written to `meta`.
    pub meta_records: u64,
    /// Users and roles imported, and whether auth is enabled.
    pub users: u64,
    pub roles: u64,
    pub auth_enabled: bool,
}

/// True when the file starts like a bbolt file (the magic in meta page 0, or in meta page 1
/// at the usual 4096 bytes when page 0 is damaged).
pub fn looks_like_bolt(head: &[u8]) -> bool {
    bolt::has_magic(head) || head.get(4096..).is_some_and(bolt::has_magic)
}

/// Checks the trailing SHA-256 as `etcdutl snapshot restore` does and returns how many leading
/// bytes of the file are the bbolt database.
pub fn check_hash(path: &Path, skip_hash_check: bool) -> Result<u64, EtcdImportError> {
    let io = |source| EtcdImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let has_hash = len % HASH_ALIGN_BYTES == HASH_BYTES;
    if !has_hash && !skip_hash_check {
        return Err(EtcdImportError::MissingHash);
    }
    let db_len = if has_hash { len - HASH_BYTES } else { len };
    if has_hash && !skip_hash_check {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; HASH_CHUNK_BYTES];
        let mut left = db_len;
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            file.read_exact(&mut buf[..n]).map_err(io)?;
            context.update(&buf[..n]);
            left -= n as u64;
        }
        let mut stored = [0u8; HASH_BYTES as usize];
        file.read_exact(&mut stored).map_err(io)?;
        let actual = context.finish();
        if actual.as_ref() != stored {
            return Err(EtcdImportError::HashMismatch {
                expected: hex(&stored),
                actual: hex(actual.as_ref()),
            });
        }
    }
    Ok(db_len)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the bbolt database in the first `db_len` bytes of `path` into `engine` (a new, empty
/// one): every revision, the compaction revisions, leases and the auth store. Batches go out
/// unsynced; the caller writes the last one synced.
pub fn import(path: &Path, db_len: u64, engine: &Engine) -> Result<Imported, EtcdImportError> {
    let db = BoltFile::open(path, db_len)?;
    let bucket =
        |name: &str| -> Result<Option<Bucket>, EtcdImportError> { Ok(db.bucket(name.as_bytes())?) };
    let required = |name: &'static str| -> Result<Bucket, EtcdImportError> {
        bucket(name)?.ok_or(EtcdImportError::MissingBucket(name))
    };
    let mut imported = Imported::default();
    let mut batch = Batch::new();

    let meta = read_all(&db, &required(BUCKET_META)?)?;
    let meta_get = |key: &[u8]| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    for (key, ours) in [
        (&b"scheduledCompactRev"[..], SCHEDULED_COMPACT_KEY),
        (b"finishedCompactRev", FINISHED_COMPACT_KEY),
    ] {
        if let Some(value) = meta_get(key) {
            let (rev, _) = crate::mvcc::decode_rev_key(value).ok_or_else(|| {
                EtcdImportError::Corrupt(format!(
                    "meta {} is not a revision",
                    String::from_utf8_lossy(key)
                ))
            })?;
            batch.put(engine, Cf::Meta, ours, &rev.main.to_be_bytes());
            imported.meta_records += 1;
        }
    }
    imported.index = meta_get(META_CONSISTENT_INDEX)
        .map(|v| be_u64(v, "meta consistent_index"))
        .transpose()?
        .unwrap_or(0);
    imported.term = meta_get(META_TERM)
        .map(|v| be_u64(v, "meta term"))
        .transpose()?
        .unwrap_or(0);

    let mut live_keys = std::collections::HashSet::new();
    db.for_each(&required(BUCKET_KEY)?, &mut |key: &[u8],
                                              value: &[u8]|
     -> Result<
        (),
        EtcdImportError,
    > {
        super::restore::count_revision(key, value, &mut imported.revision, &mut live_keys)
            .map_err(|e| EtcdImportError::Corrupt(e.to_string()))?;
        imported.kv_records += 1;
        batch.put(engine, Cf::Kv, key, value);
        if batch.size_bytes() >= IMPORT_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    })?;
    imported.keys = live_keys.len() as u64;
    drop(live_keys);

    if let Some(leases) = bucket(BUCKET_LEASE)? {
        db.for_each(&leases, &mut |key: &[u8],
                                   value: &[u8]|
         -> Result<(), EtcdImportError> {
            let lease = EtcdLease::decode(value).map_err(|e| {
                EtcdImportError::Corrupt(format!("lease {} does not decode: {e}", hex(key)))
            })?;
            if key != lease.id.to_be_bytes().as_slice() {
                return Err(EtcdImportError::Corrupt(format!(
                    "lease record at key {} names lease {:x}",
                    hex(key),
                    lease.id
                )));
            }
            crate::lease::write_record(
                engine,
                &mut batch,
                lease.id,
                lease.ttl,
                lease.remaining_ttl,
            );
            imported.lease_records += 1;
            Ok(())
        })?;
    }

    let auth = match bucket(BUCKET_AUTH)? {
        Some(auth) => read_all(&db, &auth)?,
        None => Vec::new(),
    };
    let auth_get = |key: &[u8]| auth.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    imported.auth_enabled = auth_get(AUTH_ENABLED).is_some_and(|v| v.as_slice() == [1]);
    let auth_revision = auth_get(AUTH_REVISION)
        .map(|v| be_u64(v, "auth authRevision"))
        .transpose()?
        .unwrap_or(0);
    let users: Vec<User> = decode_all(&db, bucket(BUCKET_AUTH_USERS)?, "user")?;
    let roles: Vec<Role> = decode_all(&db, bucket(BUCKET_AUTH_ROLES)?, "role")?;
    imported.users = users.len() as u64;
    imported.roles = roles.len() as u64;
    if !auth.is_empty() || !users.is_empty() || !roles.is_empty() {
        imported.meta_records += 2 + imported.users + imported.roles;
        crate::auth::store::write_imported(
            engine,
            &mut batch,
            imported.auth_enabled,
            auth_revision,
            users,
            roles,
        );
    }
    engine.write(batch, false)?;
    Ok(imported)
}

/// Every plain key and value of a (small) bucket.
fn read_all(db: &BoltFile, bucket: &Bucket) -> Result<Entries, EtcdImportError> {
    let mut out = Vec::new();
    db.for_each(bucket, &mut |k: &[u8],
                              v: &[u8]|
     -> Result<(), EtcdImportError> {
        out.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

/// Every value of `bucket` (if there is one) decoded as `M`.
fn decode_all<M: prost::Message + Default>(
    db: &BoltFile,
    bucket: Option<Bucket>,
    what: &str,
) -> Result<Vec<M>, EtcdImportError> {
    let Some(bucket) = bucket else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    db.for_each(&bucket, &mut |k: &[u8],
                               v: &[u8]|
     -> Result<(), EtcdImportError> {
        let decoded = M::decode(v).map_err(|e| {
            EtcdImportError::Corrupt(format!(
                "{what} {:?} does not decode: {e}",
                String::from_utf8_lossy(k)
            ))
        })?;
        out.push(decoded);
        Ok(())
    })?;
    Ok(out)
}

fn be_u64(value: &[u8], what: &str) -> Result<u64, EtcdImportError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| EtcdImportError::Corrupt(format!("{what} is {} bytes, not 8", value.len())))
}
