//! RocksDB behind a small typed surface: column families, point reads, scans, write batches.
//!
//! This layer knows nothing of etcd, raft or gRPC. Every column family the server uses is named
//! by [`Cf`]; callers build a [`Batch`] and commit it with [`Engine::write`], choosing whether the
//! write must be durable (`sync`) before it returns. All column families share one RocksDB WAL,
//! so a synced write also makes every earlier unsynced write durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions,
};

/// A column family of the single RocksDB instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Raft log entries keyed by big-endian index.
    RaftLog,
    /// Raft hard state, conf state and the truncated-log marker.
    RaftState,
    /// MVCC revisions: revision key → encoded key-value.
    Kv,
    /// Small bookkeeping values: applied index, compaction marks, cluster identity, alarms.
    Meta,
    /// Leases: big-endian lease id → encoded lease.
    Lease,
}

impl Cf {
    /// Every column family, in the order they are opened.
    pub const ALL: [Cf; 5] = [Cf::RaftLog, Cf::RaftState, Cf::Kv, Cf::Meta, Cf::Lease];

    /// The name RocksDB knows this column family by.
    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::Kv => "kv",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
        }
    }
}

/// What can go wrong below the state machine. On the raft or apply path any of these is fatal.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt value in column family {cf} at key {key:?}: {reason}")]
    Corrupt {
        cf: &'static str,
        key: Vec<u8>,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// One RocksDB instance with the server's column families.
pub struct Engine {
    db: DB,
    path: PathBuf,
    sync_enabled: bool,
}

/// A set of writes applied atomically by [`Engine::write`].
#[derive(Default)]
pub struct Batch {
    inner: rocksdb::WriteBatch,
}

/// A consistent point-in-time view of the whole engine.
pub struct View<'a> {
    engine: &'a Engine,
    snap: rocksdb::Snapshot<'a>,
}

/// Sizes the maintenance API and metrics report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeInfo {
    /// Bytes the database's data files occupy on disk (SST files, WAL, manifests).
    pub on_disk_bytes: u64,
    /// Estimated bytes of live data (what a full compaction would leave), plus memtables.
    pub in_use_bytes: u64,
    /// Bytes RocksDB still has to compact.
    pub pending_compaction_bytes: u64,
    /// RocksDB's estimate of the live data (without memtables).
    pub live_data_bytes: u64,
}

impl Engine {
    /// Opens (creating if missing) the database in `path`. `sync_enabled = false` is the
    /// `--unsafe-no-fsync` escape hatch: synced writes become plain writes.
    pub fn open(path: &Path, sync_enabled: bool) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cache = Cache::new_lru_cache(64 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_max_total_wal_size(64 << 20);
        opts.set_wal_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(4);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            if *cf == Cf::RaftLog {
                cf_opts.set_write_buffer_size(16 << 20);
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Arc::new(Engine {
            db,
            path: path.to_path_buf(),
            sync_enabled,
        }))
    }

    /// The directory holding the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family in Cf::ALL is created at open")
    }

    /// Reads one value.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.handle(cf), key)?)
    }

    /// Applies `batch` atomically; with `sync` the call returns only once it is on stable storage.
    pub fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync && self.sync_enabled);
        self.db.write_opt(batch.inner, &opts)?;
        Ok(())
    }

    /// Forces everything written so far onto stable storage.
    pub fn sync_wal(&self) -> Result<()> {
        if self.sync_enabled {
            self.db.flush_wal(true)?;
        }
        Ok(())
    }

    /// Pairs in `[from, to)` (or to the end when `to` is `None`), in key order.
    pub fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Scan<'_> {
        let mut ro = ReadOptions::default();
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.handle(cf),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        Scan {
            inner: Box::new(iter),
        }
    }

    /// A consistent read view; writes committed after this call are not visible through it.
    pub fn view(&self) -> View<'_> {
        View {
            engine: self,
            snap: self.db.snapshot(),
        }
    }

    /// Compacts every column family fully (the `defragment` operation). Reads and writes continue
    /// while it runs; only the calling thread waits.
    pub fn compact_all(&self) {
        for cf in Cf::ALL {
            self.db
                .compact_range_cf(self.handle(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Compacts the key range `[from, to)` of one column family to reclaim space after deletes.
    pub fn compact_range(&self, cf: Cf, from: &[u8], to: &[u8]) {
        self.db
            .compact_range_cf(self.handle(cf), Some(from), Some(to));
    }

    /// On-disk and live sizes.
    pub fn sizes(&self) -> SizeInfo {
        let prop = |cf: Cf, name: &str| {
            self.db
                .property_int_value_cf(self.handle(cf), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let mut info = SizeInfo {
            on_disk_bytes: dir_size_bytes(&self.path),
            ..SizeInfo::default()
        };
        for cf in Cf::ALL {
            let live = prop(cf, "rocksdb.estimate-live-data-size");
            info.live_data_bytes += live;
            info.in_use_bytes += live + prop(cf, "rocksdb.cur-size-all-mem-tables");
            info.pending_compaction_bytes += prop(cf, "rocksdb.estimate-pending-compaction-bytes");
        }
        info.in_use_bytes = info.in_use_bytes.min(info.on_disk_bytes.max(1));
        info
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put(&mut self, engine: &Engine, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(engine.handle(cf), key, value);
    }

    pub fn delete(&mut self, engine: &Engine, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(engine.handle(cf), key);
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(&mut self, engine: &Engine, cf: Cf, from: &[u8], to: &[u8]) {
        self.inner.delete_range_cf(engine.handle(cf), from, to);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Bytes of the encoded batch.
    pub fn size_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

impl View<'_> {
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.get_cf(self.engine.handle(cf), key)?)
    }

    /// Reads many keys of one column family at once, in the order given.
    pub fn multi_get(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snap);
        let handle = self.engine.handle(cf);
        self.engine
            .db
            .multi_get_cf_opt(keys.iter().map(|k| (handle, k.as_slice())), &ro)
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }

    /// Pairs in `[from, to)` as of this view, in key order.
    pub fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Scan<'_> {
        let mut ro = ReadOptions::default();
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        ro.set_snapshot(&self.snap);
        let iter = self.engine.db.iterator_cf_opt(
            self.engine.handle(cf),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        Scan {
            inner: Box::new(iter),
        }
    }
}

type RawIter<'a> =
    Box<dyn Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a>;

/// An iterator of `(key, value)` pairs.
pub struct Scan<'a> {
    inner: RawIter<'a>,
}

impl Iterator for Scan<'_> {
    type Item = Result<(Box<[u8]>, Box<[u8]>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| r.map_err(StorageError::from))
    }
}

/// Bytes of the database's own files: table files, write-ahead logs and manifests. RocksDB's
/// informational `LOG` files, `OPTIONS` and lock files are not data and are not counted.
fn dir_size_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".sst") || name.ends_with(".log") || name.starts_with("MANIFEST-")
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_atomic_and_scans_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), true).unwrap();
        let mut b = Batch::new();
        for i in [3u64, 1, 2] {
            b.put(&engine, Cf::Kv, &i.to_be_bytes(), b"v");
        }
        b.put(&engine, Cf::Meta, b"m", b"x");
        engine.write(b, true).unwrap();
        let keys: Vec<u64> = engine
            .scan(Cf::Kv, &0u64.to_be_bytes(), Some(&3u64.to_be_bytes()))
            .map(|r| u64::from_be_bytes(r.unwrap().0.as_ref().try_into().unwrap()))
            .collect();
        assert_eq!(keys, vec![1, 2]);
        assert_eq!(
            engine.get(Cf::Meta, b"m").unwrap().as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn view_does_not_see_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), true).unwrap();
        let view = engine.view();
        let mut b = Batch::new();
        b.put(&engine, Cf::Kv, b"k", b"v");
        engine.write(b, false).unwrap();
        assert_eq!(view.get(Cf::Kv, b"k").unwrap(), None);
        assert_eq!(
            engine.view().get(Cf::Kv, b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
}
