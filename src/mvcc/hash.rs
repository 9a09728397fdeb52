//! Consistency hashes: [`MvccStore::hash_kv`] (the HashKV RPC, etcd's `HashByRev`) and
//! [`MvccStore::hash_all`] (the Hash RPC). Members that applied the same entries report the
//! same hashes, whether or not a compaction has finished physically on each of them.

use super::revision::{Revision, decode_rev_key};
use super::store::MvccStore;
use super::{FINISHED_COMPACT_KEY, MvccError, SCHEDULED_COMPACT_KEY};
use crate::storage::Cf;

/// etcd's HashKV checksum: CRC-32C.
const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The result of [`MvccStore::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C over the revision keys and values (see [`MvccStore::hash_kv`]).
    pub hash: u32,
    /// The compaction revision when the hash was taken (-1 = never compacted).
    pub compact_rev: i64,
    /// The revision hashed up to.
    pub hash_rev: i64,
    /// The current revision when the hash was taken (the response header revision).
    pub current_rev: i64,
}

impl MvccStore {
    /// Hashes the store's history up to `rev` (≤ 0 = current) as etcd's HashKV does: CRC-32C
    /// (Castagnoli) over the bucket name `"key"`, then the revision key and the marshalled
    /// `mvccpb.KeyValue` of every revision ≤ `rev` in revision order, skipping revisions at or
    /// below the compaction revision that a compaction at `rev` would not keep (when it would
    /// keep any). Keys and values are stored in etcd's encoding, so the same history gives
    /// etcd's hash, including etcd's quirk that a revision a compaction kept can drop out of a
    /// hash at a later revision.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash, MvccError> {
        let index = self.read_index();
        let current = self.current_revision();
        let compact = self.compact_revision();
        // etcd refuses a hash at the compaction revision itself too (unlike a range there).
        if rev > 0 && rev <= compact {
            return Err(MvccError::Compacted {
                requested: rev,
                compacted: compact,
            });
        }
        if rev > current {
            return Err(MvccError::FutureRev {
                requested: rev,
                current,
            });
        }
        let at = if rev <= 0 { current } else { rev };
        let keep = index.keep(at);
        let view = self.engine.view();
        drop(index);

        let mut hasher = CASTAGNOLI.digest();
        hasher.update(b"key");
        let end = Revision::key_of_main(at + 1);
        for item in view.scan(Cf::Kv, &[], Some(&end)) {
            let (k, v) = item?;
            let (kr, _) = decode_rev_key(&k).ok_or_else(|| {
                MvccError::Corrupt(format!("kv column family holds a non-revision key {k:?}"))
            })?;
            if kr.main <= compact && !keep.is_empty() && !keep.contains(&kr) {
                continue;
            }
            hasher.update(&k);
            hasher.update(&v);
        }
        Ok(KvHash {
            hash: hasher.finalize(),
            compact_rev: compact,
            hash_rev: at,
            current_rev: current,
        })
    }

    /// CRC-32 of the replicated state the Hash RPC covers, from one consistent snapshot:
    /// every pair of the `kv` and `lease` column families and the compaction marks in `meta`.
    /// Member-local state (raft log and state, applied index) is excluded. Returns the hash
    /// and the current revision it was taken at.
    pub fn hash_all(&self) -> Result<(u32, i64), MvccError> {
        let index = self.read_index();
        let current = self.current_revision();
        let view = self.engine.view();
        drop(index);

        let mut hasher = crc32fast::Hasher::new();
        for cf in [Cf::Kv, Cf::Lease] {
            hasher.update(cf.name().as_bytes());
            for item in view.scan(cf, &[], None) {
                let (k, v) = item?;
                hasher.update(&k);
                hasher.update(&v);
            }
        }
        hasher.update(Cf::Meta.name().as_bytes());
        for key in [FINISHED_COMPACT_KEY, SCHEDULED_COMPACT_KEY] {
            if let Some(v) = view.get(Cf::Meta, key)? {
                hasher.update(key);
                hasher.update(&v);
            }
        }
        Ok((hasher.finalize(), current))
    }
}
