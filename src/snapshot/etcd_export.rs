//! `oxetcd snapshot export --format etcd IN OUT`: turns a snapshot file in oxetcd's
//! [`format`](super::format) into the file `etcdctl snapshot save` gets from etcd for the same
//! state, an etcd backend (a bbolt database) followed by its SHA-256, so that
//! `etcdctl snapshot status` reads it and `etcdctl snapshot restore` builds an etcd data
//! directory from it.
//!
//! # What goes where
//!
//! etcd keeps its state in bbolt buckets; oxetcd's column families hold the same data, much of
//! it in the same encoding:
//!
//! | oxetcd | etcd bucket | translation |
//! | --- | --- | --- |
//! | `kv` (every retained revision, tombstones) | `key` | none: revision keys and marshalled `mvccpb.KeyValue`s are etcd's bytes |
//! | `lease` | `lease` | none: BE lease ID → `Lease{ID, TTL, RemainingTTL}`, `leasepb.Lease`'s wire form |
//! | meta `scheduledCompactRev`, `finishedCompactRev` | `meta` | BE i64 → 17-byte revision key (`main`, sub 0) |
//! | meta `consistent_index` (the snapshot's position) | `meta` `consistent_index` | the index, BE u64 |
//! | meta `members` | `members` | one entry per member: hex ID → the member as etcd's JSON |
//! | meta `alarms` | `alarm` | one key per alarm: marshalled `AlarmMember`, empty value |
//! | meta `auth/enabled`, `auth/revision` | `auth` `authEnabled`, `authRevision` | none |
//! | meta `auth/user/NAME`, `auth/role/NAME` | `authUsers`, `authRoles` under NAME | none: `authpb.User`, `authpb.Role` |
//! | (nothing) | `cluster` `clusterVersion` | [`CLUSTER_VERSION`] |
//!
//! Meta `cluster_id` and `member_id` have no bucket: etcd derives its identity from the WAL,
//! which `etcdctl snapshot restore` writes anew from its own flags (it also replaces the
//! members, as it does for a snapshot of etcd). Every bucket etcd 3.4 creates is present, empty
//! or not, and nothing else, so `etcdctl snapshot status` counts the same total keys for the
//! same history on either server.
//!
//! # Why a command and not Maintenance.Snapshot
//!
//! Maintenance.Snapshot streams one consistent RocksDB view as it reads it; a bbolt file can
//! only be written whole (its pages point at each other, and the meta page naming the root
//! comes last), so serving etcd's format there would mean building the whole database in a
//! temporary file on the member before the first byte goes out. The export does that offline,
//! from a saved snapshot, on any machine.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;

use super::format::{self, Record, SnapshotError, SnapshotPosition};
use crate::alarm;
use crate::auth::store as auth_store;
use crate::consistent_index;
use crate::membership;
use crate::mvcc::{FINISHED_COMPACT_KEY, Revision, SCHEDULED_COMPACT_KEY, decode_rev_key};
use crate::proto::etcdserverpb::{AlarmMember, Member};
use crate::proto::oxetcdpb::Lease;
use crate::storage::Cf;

/// etcd's buckets (`mvcc/backend` and its users in etcd 3.4), in the order bbolt keeps them.
pub const BUCKET_ALARM: &[u8] = b"alarm";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";
pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_META: &[u8] = b"meta";

/// Every bucket an etcd 3.4 backend has, sorted.
pub const BUCKETS: [&[u8]; 10] = [
    BUCKET_ALARM,
    BUCKET_AUTH,
    BUCKET_AUTH_ROLES,
    BUCKET_AUTH_USERS,
    BUCKET_CLUSTER,
    BUCKET_KEY,
    BUCKET_LEASE,
    BUCKET_MEMBERS,
    BUCKET_MEMBERS_REMOVED,
    BUCKET_META,
];

/// Keys of etcd's `auth`, `cluster` and `meta` buckets.
const ETCD_AUTH_ENABLED: &[u8] = b"authEnabled";
const ETCD_AUTH_REVISION: &[u8] = b"authRevision";
const ETCD_CLUSTER_VERSION: &[u8] = b"clusterVersion";
const ETCD_CONSISTENT_INDEX: &[u8] = b"consistent_index";
const ETCD_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const ETCD_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";

/// The cluster version written to `cluster` `clusterVersion`: the lowest etcd release this file
/// is for. Members raise it once they all run a newer one, as after any etcd upgrade.
pub const CLUSTER_VERSION: &str = "3.4.0";

/// etcd's auth store starts at revision 1 and always has the key.
const FIRST_AUTH_REVISION: u64 = 1;

/// Length of the SHA-256 that follows the database in a snapshot file.
const SHA256_BYTES: usize = 32;

/// The CRC `etcdctl snapshot status` reports: CRC-32C.
const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already exists; export writes a new file")]
    OutputExists(PathBuf),
    #[error("writing the etcd database: {0}")]
    Bolt(String),
    #[error("the snapshot holds {what} this oxetcd cannot export: {detail}")]
    Unexpected { what: &'static str, detail: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + use<> {
    let path = path.to_path_buf();
    move |source| ExportError::Io { path, source }
}

fn unexpected(what: &'static str, detail: impl ToString) -> ExportError {
    ExportError::Unexpected {
        what,
        detail: detail.to_string(),
    }
}

/// What `etcdctl snapshot status` reports for a file, computed as it computes it: the CRC-32C
/// of every bucket's name followed by each of its keys and values, in bbolt's order; the main
/// revision of the last key of the `key` bucket; the number of keys in all buckets; the
/// database's size (bbolt's high-water page times the page size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub output: PathBuf,
    /// What `etcdctl snapshot status` reports for `output`.
    pub status: EtcdStatus,
    /// The raft position of the oxetcd snapshot (written as etcd's consistent index).
    pub position: SnapshotPosition,
    /// Entries per kind.
    pub revisions: u64,
    pub leases: u64,
    pub members: u64,
    pub users: u64,
    pub roles: u64,
}

impl fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let EtcdStatus {
            hash,
            revision,
            total_key,
            total_size,
        } = self.status;
        write!(
            f,
            "exported etcd snapshot to {}: hash {hash:x}, revision {revision}, total keys \
             {total_key}, total size {total_size} (as etcdctl snapshot status reports them); \
             {} revisions, {} leases, {} members, {} users, {} roles, consistent index {}",
            self.output.display(),
            self.revisions,
            self.leases,
            self.members,
            self.users,
            self.roles,
            self.position.index,
        )
    }
}

/// One entry of an etcd bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub bucket: &'static [u8],
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

fn entry(bucket: &'static [u8], key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Entry {
    Entry {
        bucket,
        key: key.into(),
        value: value.into(),
    }
}

/// A member as etcd stores it in the `members` bucket (`membership.Member` marshalled by Go's
/// encoding/json: its fields in this order, `isLearner`, `name` and `clientURLs` omitted when
/// empty).
#[derive(serde::Serialize)]
struct MemberJson<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "is_false")]
    is_learner: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `members` bucket entry of `member`: etcd's `types.ID` string (lower-case hex, no
/// padding) → its JSON.
pub fn member_entry(member: &Member) -> Entry {
    let json = MemberJson {
        id: member.id,
        peer_urls: &member.peer_ur_ls,
        is_learner: member.is_learner,
        name: &member.name,
        client_urls: &member.client_ur_ls,
    };
    let value = serde_json::to_vec(&json).expect("a member serializes to JSON");
    entry(BUCKET_MEMBERS, format!("{:x}", member.id), value)
}

/// A 17-byte revision key holding a compaction revision stored by oxetcd as a BE i64.
fn compact_rev_key(key: &[u8], value: &[u8]) -> Result<Vec<u8>, ExportError> {
    let rev = <[u8; 8]>::try_from(value)
        .map(i64::from_be_bytes)
        .map_err(|_| {
            unexpected(
                "a compaction revision",
                format!("{} is not 8 bytes", String::from_utf8_lossy(key)),
            )
        })?;
    Ok(Revision::new(rev, 0).to_key().to_vec())
}

/// What a record of the oxetcd snapshot becomes in etcd's buckets (none, one or several
/// entries). The consistent index is not among them: [`final_entries`] writes it from the
/// snapshot's position.
pub fn translate(record: Record) -> Result<Vec<Entry>, ExportError> {
    let Record { cf, key, value } = record;
    match cf {
        Cf::Kv => {
            if decode_rev_key(&key).is_none() {
                return Err(unexpected("a kv record", "a key that is not a revision"));
            }
            Ok(vec![entry(BUCKET_KEY, key, value)])
        }
        Cf::Lease => {
            let lease = Lease::decode(value.as_slice()).map_err(|e| unexpected("a lease", e))?;
            if key.as_slice() != lease.id.to_be_bytes() {
                return Err(unexpected(
                    "a lease",
                    format!("record {:x} stored under another key", lease.id),
                ));
            }
            Ok(vec![entry(BUCKET_LEASE, key, value)])
        }
        Cf::Meta => translate_meta(key, value),
        other => Err(unexpected(
            "a record of a column family snapshots do not carry",
            other.name(),
        )),
    }
}

fn translate_meta(key: Vec<u8>, value: Vec<u8>) -> Result<Vec<Entry>, ExportError> {
    if key == consistent_index::KEY
        || key == membership::KEY_CLUSTER_ID
        || key == membership::KEY_MEMBER_ID
    {
        return Ok(Vec::new());
    }
    if key == SCHEDULED_COMPACT_KEY {
        let rev = compact_rev_key(&key, &value)?;
        return Ok(vec![entry(BUCKET_META, ETCD_SCHEDULED_COMPACT, rev)]);
    }
    if key == FINISHED_COMPACT_KEY {
        let rev = compact_rev_key(&key, &value)?;
        return Ok(vec![entry(BUCKET_META, ETCD_FINISHED_COMPACT, rev)]);
    }
    if key == membership::KEY_MEMBERS {
        let members =
            membership::decode_members(&value).map_err(|e| unexpected("a member list", e))?;
        return Ok(members.iter().map(member_entry).collect());
    }
    if key == alarm::KEY_ALARMS {
        let alarms = alarm::decode(&value).map_err(|e| unexpected("an alarm list", e))?;
        return Ok(alarms
            .into_iter()
            .map(|(member_id, alarm)| {
                let member = AlarmMember { member_id, alarm };
                entry(BUCKET_ALARM, member.encode_to_vec(), Vec::new())
            })
            .collect());
    }
    if key == auth_store::KEY_ENABLED {
        return Ok(vec![entry(BUCKET_AUTH, ETCD_AUTH_ENABLED, value)]);
    }
    if key == auth_store::KEY_REVISION {
        return Ok(vec![entry(BUCKET_AUTH, ETCD_AUTH_REVISION, value)]);
    }
    if let Some(name) = key.strip_prefix(auth_store::USER_PREFIX) {
        return Ok(vec![entry(BUCKET_AUTH_USERS, name, value)]);
    }
    if let Some(name) = key.strip_prefix(auth_store::ROLE_PREFIX) {
        return Ok(vec![entry(BUCKET_AUTH_ROLES, name, value)]);
    }
    Err(unexpected(
        "a meta record",
        format!("unknown key {:?}", String::from_utf8_lossy(&key)),
    ))
}

/// The entries written after the records: the consistent index (the snapshot's raft index),
/// the cluster version, and the auth revision when the snapshot had none (etcd's auth store
/// always has one).
pub fn final_entries(position: SnapshotPosition, auth_revision_seen: bool) -> Vec<Entry> {
    let mut entries = vec![
        entry(
            BUCKET_META,
            ETCD_CONSISTENT_INDEX,
            position.index.to_be_bytes(),
        ),
        entry(BUCKET_CLUSTER, ETCD_CLUSTER_VERSION, CLUSTER_VERSION),
    ];
    if !auth_revision_seen {
        entries.push(entry(
            BUCKET_AUTH,
            ETCD_AUTH_REVISION,
            FIRST_AUTH_REVISION.to_be_bytes(),
        ));
    }
    entries
}

/// Exports the oxetcd snapshot in `input` as an etcd snapshot file `output` (which must not
/// exist). The database is written to `<output>.part`, checked, given its SHA-256 and synced,
/// then renamed into place, so a failed export leaves no `output` behind.
pub fn export(input: &Path, output: &Path) -> Result<ExportSummary, ExportError> {
    if output.exists() {
        return Err(ExportError::OutputExists(output.to_path_buf()));
    }
    // Check the whole file before writing anything: a damaged snapshot fails here, cheaply.
    let position = format::verify_file(input)?;
    let mut partial = output.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io_error(&partial))?;
    }
    let result = write_database(input, &partial, position).and_then(|counts| {
        let status = finish_file(&partial)?;
        Ok((counts, status))
    });
    let (counts, status) = match result {
        Ok(done) => done,
        Err(e) => {
            // Best effort: the error that matters is `e`.
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, output).map_err(io_error(output))?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(ExportSummary {
        output: output.to_path_buf(),
        status,
        position,
        revisions: counts.revisions,
        leases: counts.leases,
        members: counts.members,
        users: counts.users,
        roles: counts.roles,
    })
}

#[derive(Debug, Default)]
struct Counts {
    revisions: u64,
    leases: u64,
    members: u64,
    users: u64,
    roles: u64,
}

impl Counts {
    fn add(&mut self, entry: &Entry) {
        match entry.bucket {
            BUCKET_KEY => self.revisions += 1,
            BUCKET_LEASE => self.leases += 1,
            BUCKET_MEMBERS => self.members += 1,
            BUCKET_AUTH_USERS => self.users += 1,
            BUCKET_AUTH_ROLES => self.roles += 1,
            _ => {}
        }
    }
}

/// Writes the bbolt database of the snapshot in `input` to `db_path`.
fn write_database(
    input: &Path,
    db_path: &Path,
    position: SnapshotPosition,
) -> Result<Counts, ExportError> {
    // Taken when its last record is read, for `finish`.
    let mut reader = Some(format::read_file(input)?);
    let mut counts = Counts::default();
    let mut auth_revision_seen = false;
    let mut pending = std::collections::VecDeque::new();
    let mut finished = false;
    bolt::write(db_path, || {
        loop {
            if let Some(entry) = pending.pop_front() {
                return Ok(Some(entry));
            }
            if finished {
                return Ok(None);
            }
            let open = reader
                .as_mut()
                .expect("the reader stays until the end mark");
            match open.next_record()? {
                Some(record) => {
                    for entry in translate(record)? {
                        auth_revision_seen |=
                            entry.bucket == BUCKET_AUTH && entry.key == ETCD_AUTH_REVISION;
                        counts.add(&entry);
                        pending.push_back(entry);
                    }
                }
                None => {
                    // Checked once already; this also proves the records just read were the
                    // checked ones.
                    let read_position = reader.take().expect("read once").finish()?;
                    if read_position != position {
                        return Err(unexpected(
                            "a position",
                            "the file changed while it was exported",
                        ));
                    }
                    pending.extend(final_entries(position, auth_revision_seen));
                    finished = true;
                }
            }
        }
    })?;
    Ok(counts)
}

/// Cuts the database file to the size bbolt reports (what etcd's snapshot stream sends), appends
/// its SHA-256 as etcd does, syncs it, and returns what `etcdctl snapshot status` will report.
fn finish_file(path: &Path) -> Result<EtcdStatus, ExportError> {
    let status = bolt::status(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    file.set_len(status.total_size).map_err(io_error(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    let digest = sha.finish();
    debug_assert_eq!(digest.as_ref().len(), SHA256_BYTES);
    file.write_all(digest.as_ref()).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(status)
}

/// The bbolt side, through the `bbolt-rs` crate: bounded write transactions filling the database,
/// and `etcdctl snapshot status`'s walk over it.
mod bolt {
    use bbolt_rs::{BucketApi, BucketRwApi, DbApi, DbRwAPI, TxApi, TxCheck, TxRwApi, TxRwRefApi};

    use super::*;

    /// Bytes of keys and values per write transaction.
    const TX_BYTES: usize = 16 << 20;

    /// etcd's fill percent for puts in key order (`UnsafeSeqPut`).
    const SEQUENTIAL_FILL: f64 = 0.9;

    fn bolt_error(e: bbolt_rs::Error) -> ExportError {
        ExportError::Bolt(e.to_string())
    }

    /// Creates the database at `path` with etcd's buckets and fills it with the entries `next`
    /// hands out until it returns `None`, in transactions of about [`TX_BYTES`] each (so memory
    /// stays bounded: a transaction holds what it wrote until it commits), then closes it.
    /// Nothing is synced here: the caller syncs the finished file once.
    pub fn write(
        path: &Path,
        mut next: impl FnMut() -> Result<Option<Entry>, ExportError>,
    ) -> Result<(), ExportError> {
        let options = bbolt_rs::BoltOptions::builder().no_sync().build();
        let mut db = options.open(path).map_err(bolt_error)?;
        let mut done = false;
        let mut first = true;
        while !done {
            let mut tx = db.begin_rw().map_err(bolt_error)?;
            if first {
                for name in BUCKETS {
                    tx.create_bucket(name).map_err(bolt_error)?;
                }
                first = false;
            }
            let mut bytes = 0;
            while bytes < TX_BYTES {
                let Some(entry) = next()? else {
                    done = true;
                    break;
                };
                let mut bucket = tx
                    .bucket_mut(entry.bucket)
                    .expect("every bucket was created in the first transaction");
                // Entries arrive in key order per bucket: fill pages as etcd's sequential puts
                // do instead of splitting them in half.
                bucket.set_fill_percent(SEQUENTIAL_FILL);
                bucket.put(&entry.key, &entry.value).map_err(bolt_error)?;
                bytes += entry.key.len() + entry.value.len();
            }
            tx.commit().map_err(bolt_error)?;
        }
        db.close();
        Ok(())
    }

    /// What `etcdctl snapshot status` reports for the database at `path`, after bbolt's
    /// consistency check (which etcdctl runs first too).
    pub fn status(path: &Path) -> Result<EtcdStatus, ExportError> {
        let db = bbolt_rs::Bolt::open_ro(path).map_err(bolt_error)?;
        let mut status = None;
        let mut problems = Vec::new();
        db.view(|tx| {
            problems = tx.check();
            let mut hash = CASTAGNOLI.digest();
            let mut revision = 0;
            let mut total_key = 0;
            for (name, bucket) in tx.iter_buckets() {
                hash.update(name);
                for (key, value) in bucket.iter_entries() {
                    hash.update(key);
                    hash.update(value);
                    if name == BUCKET_KEY && key.len() >= 8 {
                        let main: [u8; 8] = key[..8].try_into().expect("8 bytes");
                        revision = i64::from_be_bytes(main);
                    }
                    total_key += 1;
                }
            }
            status = Some(EtcdStatus {
                hash: hash.finalize(),
                revision,
                total_key,
                total_size: tx.size(),
            });
            Ok(())
        })
        .map_err(bolt_error)?;
        db.close();
        if !problems.is_empty() {
            return Err(ExportError::Bolt(format!(
                "the written database fails bbolt's check: {}",
                problems.join("; ")
            )));
        }
        Ok(status.expect("the view ran"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, ExportError> {
        translate(Record {
            cf: Cf::Meta,
            key: key.to_vec(),
            value: value.to_vec(),
        })
    }

    #[test]
    fn a_member_is_the_json_etcd_stores() {
        // As etcd 3.4.23 stored its member in a snapshot's `members` bucket.
        let member = Member {
            id: 0xa7be38d986537a7c,
            name: "e1".into(),
            peer_ur_ls: vec!["http://127.0.0.1:23002".into()],
            client_ur_ls: vec!["http://127.0.0.1:23001".into()],
            is_learner: false,
        };
        let got = member_entry(&member);
        assert_eq!(got.bucket, BUCKET_MEMBERS);
        assert_eq!(got.key, b"a7be38d986537a7c");
        assert_eq!(
            String::from_utf8(got.value).unwrap(),
            r#"{"id":12087160956821666428,"peerURLs":["http://127.0.0.1:23002"],"name":"e1","clientURLs":["http://127.0.0.1:23001"]}"#
        );
        // A learner that has not started yet: no name, no client URLs.
        let learner = Member {
            id: 0x1f,
            name: String::new(),
            peer_ur_ls: vec!["http://b:2380".into()],
            client_ur_ls: Vec::new(),
            is_learner: true,
        };
        let got = member_entry(&learner);
        assert_eq!(got.key, b"1f");
        assert_eq!(
            String::from_utf8(got.value).unwrap(),
            r#"{"id":31,"peerURLs":["http://b:2380"],"isLearner":true}"#
        );
    }

    #[test]
    fn meta_records_become_etcd_entries() {
        // Compaction revisions: etcd keeps them as revision keys.
        let got = meta(SCHEDULED_COMPACT_KEY, &7i64.to_be_bytes()).unwrap();
        assert_eq!(
            got,
            [entry(
                BUCKET_META,
                ETCD_SCHEDULED_COMPACT,
                Revision::new(7, 0).to_key().to_vec()
            )]
        );
        let got = meta(FINISHED_COMPACT_KEY, &7i64.to_be_bytes()).unwrap();
        assert_eq!(got[0].key, ETCD_FINISHED_COMPACT);
        assert_eq!(
            got[0].value,
            b"\0\0\0\0\0\0\0\x07_\0\0\0\0\0\0\0\0".to_vec()
        );
        assert!(meta(FINISHED_COMPACT_KEY, b"short").is_err());

        // Identity and position are not data: etcdctl snapshot restore makes its own.
        for key in [
            consistent_index::KEY,
            membership::KEY_CLUSTER_ID,
            membership::KEY_MEMBER_ID,
        ] {
            assert_eq!(meta(key, &[0; 8]).unwrap(), []);
        }

        let members = membership::encode_members(vec![
            Member {
                id: 2,
                ..Member::default()
            },
            Member {
                id: 1,
                ..Member::default()
            },
        ]);
        let got = meta(membership::KEY_MEMBERS, &members).unwrap();
        let keys: Vec<&[u8]> = got.iter().map(|e| e.key.as_slice()).collect();
        assert_eq!(keys, [b"2", b"1"]);

        // Alarms: the key is a marshalled AlarmMember{memberID, alarm}, the value empty.
        let alarms = crate::proto::oxetcdpb::AlarmList {
            alarms: vec![crate::proto::oxetcdpb::AlarmRecord {
                member_id: 5,
                alarm: alarm::ALARM_NOSPACE,
            }],
        };
        let got = meta(alarm::KEY_ALARMS, &alarms.encode_to_vec()).unwrap();
        assert_eq!(
            got,
            [entry(BUCKET_ALARM, vec![0x08, 5, 0x10, 1], Vec::new())]
        );

        let got = meta(auth_store::KEY_ENABLED, &[1]).unwrap();
        assert_eq!(got, [entry(BUCKET_AUTH, ETCD_AUTH_ENABLED, vec![1])]);
        let got = meta(auth_store::KEY_REVISION, &9u64.to_be_bytes()).unwrap();
        assert_eq!(
            got,
            [entry(BUCKET_AUTH, ETCD_AUTH_REVISION, 9u64.to_be_bytes())]
        );
        let got = meta(b"auth/user/alice", b"user bytes").unwrap();
        assert_eq!(got, [entry(BUCKET_AUTH_USERS, "alice", "user bytes")]);
        let got = meta(b"auth/role/reader", b"role bytes").unwrap();
        assert_eq!(got, [entry(BUCKET_AUTH_ROLES, "reader", "role bytes")]);

        let err = meta(b"something_new", b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the snapshot holds a meta record this oxetcd cannot export: unknown key \
             \"something_new\""
        );
    }

    #[test]
    fn kv_and_lease_records_are_copied_after_a_check() {
        let key = Revision::new(3, 1).to_key_vec(true);
        let got = translate(Record {
            cf: Cf::Kv,
            key: key.clone(),
            value: b"kv".to_vec(),
        })
        .unwrap();
        assert_eq!(got, [entry(BUCKET_KEY, key, "kv")]);
        assert!(
            translate(Record {
                cf: Cf::Kv,
                key: b"not a revision".to_vec(),
                value: Vec::new(),
            })
            .is_err()
        );

        let lease = Lease {
            id: 0x1234,
            ttl: 60,
            remaining_ttl: 0,
        }
        .encode_to_vec();
        let got = translate(Record {
            cf: Cf::Lease,
            key: 0x1234i64.to_be_bytes().to_vec(),
            value: lease.clone(),
        })
        .unwrap();
        assert_eq!(
            got,
            [entry(BUCKET_LEASE, 0x1234i64.to_be_bytes(), lease.clone())]
        );
        assert!(
            translate(Record {
                cf: Cf::Lease,
                key: 0x99i64.to_be_bytes().to_vec(),
                value: lease,
            })
            .is_err(),
            "a record under another lease's key"
        );
    }

    /// A snapshot file with two revisions and a tombstone, a lease, a compaction, a user and
    /// the raft position (42, 3).
    fn sample_snapshot(dir: &Path) -> PathBuf {
        use crate::proto::mvccpb::KeyValue;
        use crate::storage::{Batch, Engine};
        let engine = Engine::open(&dir.join("db"), true).unwrap();
        let mut b = Batch::new();
        for (main, tombstone) in [(2, false), (3, false), (4, true)] {
            let kv = KeyValue {
                key: b"k".to_vec(),
                ..KeyValue::default()
            };
            let key = Revision::new(main, 0).to_key_vec(tombstone);
            b.put(&engine, Cf::Kv, &key, &kv.encode_to_vec());
        }
        let lease = Lease {
            id: 7,
            ttl: 60,
            remaining_ttl: 0,
        };
        b.put(
            &engine,
            Cf::Lease,
            &7i64.to_be_bytes(),
            &lease.encode_to_vec(),
        );
        b.put(&engine, Cf::Meta, FINISHED_COMPACT_KEY, &2i64.to_be_bytes());
        b.put(&engine, Cf::Meta, b"auth/user/u", b"");
        b.put(
            &engine,
            Cf::Meta,
            membership::KEY_MEMBER_ID,
            &9u64.to_be_bytes(),
        );
        consistent_index::write(&engine, &mut b, 42, 3);
        engine.write(b, true).unwrap();
        let file = dir.join("oxetcd.snap");
        format::save_to_file(&engine, &file).unwrap();
        file
    }

    #[test]
    fn an_export_is_a_checked_bbolt_file_with_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let snap = sample_snapshot(dir.path());
        let out = dir.path().join("etcd.db");
        let summary = export(&snap, &out).unwrap();
        assert_eq!(summary.position, SnapshotPosition { index: 42, term: 3 });
        assert_eq!(
            (summary.revisions, summary.leases, summary.users),
            (3, 1, 1)
        );
        // 3 revisions, the lease, finishedCompactRev, consistent_index, clusterVersion, the user
        // and authRevision.
        assert_eq!(summary.status.total_key, 9);
        assert_eq!(summary.status.revision, 4);
        assert_eq!(summary.status.total_size % 4096, 0);

        let bytes = std::fs::read(&out).unwrap();
        let (db, sha) = bytes.split_at(bytes.len() - SHA256_BYTES);
        assert_eq!(db.len() as u64, summary.status.total_size);
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, db).as_ref(),
            sha
        );
        assert!(!dir.path().join("etcd.db.part").exists());

        // The status is computed from what is in the file: the database alone gives it again.
        let copy = dir.path().join("copy.db");
        std::fs::write(&copy, db).unwrap();
        assert_eq!(bolt::status(&copy).unwrap(), summary.status);

        assert!(matches!(
            export(&snap, &out),
            Err(ExportError::OutputExists(_))
        ));
    }

    #[test]
    fn final_entries_add_what_etcd_always_has() {
        let position = SnapshotPosition { index: 42, term: 3 };
        let got = final_entries(position, false);
        assert_eq!(
            got,
            [
                entry(BUCKET_META, ETCD_CONSISTENT_INDEX, 42u64.to_be_bytes()),
                entry(BUCKET_CLUSTER, ETCD_CLUSTER_VERSION, "3.4.0"),
                entry(BUCKET_AUTH, ETCD_AUTH_REVISION, 1u64.to_be_bytes()),
            ]
        );
        assert_eq!(final_entries(position, true).len(), 2);
    }
}
