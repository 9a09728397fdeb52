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
    ReadOptions, WriteBufferManager, WriteOptions,
};

/// The memory RocksDB may hold: its block cache and the write buffers (memtables) of every
/// column family together. Both are hard budgets: the cache evicts, and the write buffers are
/// flushed to table files when their sum reaches `write_buffer_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Block cache: recently read data blocks, plus the table files' index and filter blocks.
    pub cache_bytes: usize,
    /// Memtables of all column families together.
    pub write_buffer_bytes: usize,
}

impl Default for MemoryBudget {
    /// Sizes that fit a small VM (`--backend-cache-bytes`, `--backend-write-buffer-bytes`).
    fn default() -> MemoryBudget {
        MemoryBudget {
            cache_bytes: 32 << 20,
            write_buffer_bytes: 64 << 20,
        }
    }
}

/// Retired WAL files kept for reuse.
const WAL_FILES_RECYCLED: usize = 2;

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
    observer: Option<WriteObserver>,
}

/// Told of every batch [`Engine::write`] commits, in commit order, with the batch's encoded
/// bytes ([`Batch::from_bytes`]) and whether the write was synced. The deterministic cluster
/// simulation uses it to keep the image a power loss would leave (everything up to the last
/// synced write); the server never sets one.
pub type WriteObserver = Arc<dyn Fn(&[u8], bool) + Send + Sync>;

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
        Engine::open_observed(path, sync_enabled, None)
    }

    /// [`Engine::open`], telling `observer` (if any) of every write.
    pub fn open_observed(
        path: &Path,
        sync_enabled: bool,
        observer: Option<WriteObserver>,
    ) -> Result<Arc<Engine>> {
        Engine::open_with(path, sync_enabled, MemoryBudget::default(), observer)
    }

    /// [`Engine::open_observed`] within `budget`.
    pub fn open_with(
        path: &Path,
        sync_enabled: bool,
        budget: MemoryBudget,
        observer: Option<WriteObserver>,
    ) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cache = Cache::new_lru_cache(budget.cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks live in the cache too, so the cache bounds them.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(
            budget.write_buffer_bytes,
            false,
        ));
        let buffers =
            BufferSizes::for_filesystem(filesystem_bytes(path)).within(budget.write_buffer_bytes);
        opts.set_max_total_wal_size(buffers.wal_bytes_max);
        opts.set_wal_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(4);
        // A writer joining a group whose leader is syncing (the apply thread behind the raft
        // thread's fsync) sleeps on a condition variable instead of spinning on sched_yield.
        opts.set_enable_write_thread_adaptive_yield(false);
        // Unsynced writes (the apply thread's, one per entry) stay in RocksDB's WAL buffer
        // instead of costing a write(2) each; the next synced write (the raft thread's, one per
        // Ready), `sync_wal` or a WAL switch writes them in order, so what reaches the disk is
        // still a prefix of the writes. Without fsync there is no synced write to carry them.
        opts.set_manual_wal_flush(sync_enabled);
        // Retired WAL files are reused: overwriting allocated blocks lets fdatasync skip the
        // inode update that every append to a growing file costs.
        opts.set_recycle_log_file_num(WAL_FILES_RECYCLED);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_write_buffer_size(if *cf == Cf::RaftLog {
                buffers.raft_log_memtable_bytes
            } else {
                buffers.memtable_bytes
            });
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Arc::new(Engine {
            db,
            path: path.to_path_buf(),
            sync_enabled,
            observer,
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
        if let Some(observer) = &self.observer {
            observer(batch.inner.data(), sync);
        }
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
        // `kv` first: after deletes and an MVCC compaction it shrinks, which makes room for
        // rewriting the raft log when the filesystem is nearly full.
        for cf in [Cf::Kv, Cf::Lease, Cf::Meta, Cf::RaftState, Cf::RaftLog] {
            self.db
                .compact_range_cf(self.handle(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Compacts the key range `[from, to)` of one column family to reclaim space after deletes.
    pub fn compact_range(&self, cf: Cf, from: &[u8], to: &[u8]) {
        self.db
            .compact_range_cf(self.handle(cf), Some(from), Some(to));
    }

    /// One integer property of a column family (0 when RocksDB does not have it).
    fn property(&self, cf: Cf, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.handle(cf), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Bytes RocksDB will write before it can free any: the memtables not flushed yet (a flush
    /// writes their table file before it deletes the WAL that held them) and its estimate of the
    /// compaction backlog (a compaction writes its output before it deletes its inputs).
    pub fn unflushed_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|&cf| {
                self.property(cf, "rocksdb.cur-size-all-mem-tables")
                    + self.property(cf, "rocksdb.estimate-pending-compaction-bytes")
            })
            .sum()
    }

    /// On-disk and live sizes.
    pub fn sizes(&self) -> SizeInfo {
        let prop = |cf: Cf, name: &str| self.property(cf, name);
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

    /// A batch from the encoded bytes a [`WriteObserver`] saw, for an engine whose column
    /// families were created in the same order (every engine opened by [`Engine::open`]).
    pub fn from_bytes(bytes: &[u8]) -> Batch {
        Batch {
            inner: rocksdb::WriteBatch::from_data(bytes),
        }
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

/// RocksDB's buffer sizes: its defaults on a filesystem of 8 GiB or more, smaller on a smaller
/// one, so that flushing every memtable (which writes their table files before the WAL that
/// held them is deleted) needs a small part of the filesystem: each memtable at most 1/128 of
/// it, the WAL at most 1/64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BufferSizes {
    memtable_bytes: usize,
    raft_log_memtable_bytes: usize,
    wal_bytes_max: u64,
}

impl BufferSizes {
    const MEMTABLE_BYTES_DEFAULT: usize = 64 << 20;
    const RAFT_LOG_MEMTABLE_BYTES_DEFAULT: usize = 16 << 20;
    const WAL_BYTES_MAX_DEFAULT: u64 = 64 << 20;

    /// For a filesystem of `total_bytes` (`None` when unknown: the defaults).
    fn for_filesystem(total_bytes: Option<u64>) -> BufferSizes {
        let Some(total_bytes) = total_bytes.filter(|&t| t > 0) else {
            return BufferSizes {
                memtable_bytes: Self::MEMTABLE_BYTES_DEFAULT,
                raft_log_memtable_bytes: Self::RAFT_LOG_MEMTABLE_BYTES_DEFAULT,
                wal_bytes_max: Self::WAL_BYTES_MAX_DEFAULT,
            };
        };
        let memtable_max = usize::try_from(total_bytes / 128)
            .unwrap_or(usize::MAX)
            .max(1 << 20);
        BufferSizes {
            memtable_bytes: Self::MEMTABLE_BYTES_DEFAULT.min(memtable_max),
            raft_log_memtable_bytes: Self::RAFT_LOG_MEMTABLE_BYTES_DEFAULT.min(memtable_max),
            wal_bytes_max: Self::WAL_BYTES_MAX_DEFAULT.min((total_bytes / 64).max(2 << 20)),
        }
    }

    /// No single memtable larger than half of the write buffer budget, so a full one can be
    /// flushed while the next fills without the sum passing the budget.
    fn within(self, write_buffer_bytes: usize) -> BufferSizes {
        let half = (write_buffer_bytes / 2).max(1 << 20);
        BufferSizes {
            memtable_bytes: self.memtable_bytes.min(half),
            raft_log_memtable_bytes: self.raft_log_memtable_bytes.min(half),
            wal_bytes_max: self.wal_bytes_max,
        }
    }
}

/// The size of the filesystem holding `path` (`None` when it cannot be read).
fn filesystem_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_blocks * st.f_frsize)
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
    fn buffers_shrink_only_on_small_filesystems() {
        let defaults = BufferSizes::for_filesystem(None);
        assert_eq!(defaults, BufferSizes::for_filesystem(Some(0)));
        assert_eq!(defaults, BufferSizes::for_filesystem(Some(8 << 30)));
        assert_eq!(defaults.memtable_bytes, 64 << 20);
        let small = BufferSizes::for_filesystem(Some(128 << 20));
        assert_eq!(small.memtable_bytes, 1 << 20);
        assert_eq!(small.raft_log_memtable_bytes, 1 << 20);
        assert_eq!(small.wal_bytes_max, 2 << 20);
    }

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
