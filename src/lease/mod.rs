//! The lessor: every lease, its deadline and its attached keys, as a deterministic state machine.
//!
//! Two kinds of calls reach it. The apply thread, in raft order, grants, revokes and checkpoints
//! leases and attaches keys; those calls write the persisted record into the caller's batch
//! (column family `lease`, key = big-endian lease ID, value = `oxetcdpb.Lease`). The leader, outside
//! raft, renews leases on keep-alive and asks which leases have run out so it can propose their
//! revocation. Deadlines live only in memory: a member that becomes leader resets them from the
//! granted (or last checkpointed) TTL, as etcd does.
//!
//! Time is always passed in (`now: Instant`); nothing here reads a clock, so tests drive it with an
//! injected one. Deadlines are kept in an ordered index, so renewing one lease and finding the
//! expired ones cost O(log n) each, whatever the number of leases.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;

use crate::proto::oxetcdpb::Lease as LeaseRecord;
use crate::storage::{Batch, Cf, Engine, StorageError};

/// The longest TTL a lease may be granted with (etcd's `MaxLeaseTTL`), in seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// etcd's default lease checkpoint interval: leases granted with a TTL longer than the interval
/// have their remaining TTL checkpointed through raft that often, so a leader change does not
/// hand them a fresh full TTL (`--experimental-lease-checkpoint-interval` sets it).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Where a deadline lands when `now + ttl` does not fit in an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a lease operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease not found")]
    NotFound,
    #[error("lease already exists")]
    Exists,
    #[error("lease ttl is too large")]
    TtlTooLarge,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt lease record at key {key:?}: {reason}")]
    Corrupt { key: Vec<u8>, reason: String },
}

/// What `LeaseTimeToLive` reports about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Whole seconds left, rounded down: the lease expires in under `remaining_secs + 1` seconds.
    /// Zero once the deadline has passed but the revocation is not applied yet.
    pub remaining_secs: i64,
    /// The TTL the lease was granted with (after raising it to the minimum).
    pub granted_secs: i64,
    /// Attached keys, in key order.
    pub keys: Vec<Vec<u8>>,
}

struct Lease {
    /// Granted TTL, already raised to the minimum.
    ttl_secs: i64,
    /// Remaining TTL recorded by the last checkpoint; 0 when none is in force.
    remaining_ttl_secs: i64,
    /// When the lease runs out, as this member currently believes. Authoritative on the leader.
    expiry: Instant,
    keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// The TTL a new leader (or a restarted member) counts from.
    fn restart_ttl_secs(&self) -> i64 {
        if self.remaining_ttl_secs > 0 {
            self.remaining_ttl_secs
        } else {
            self.ttl_secs
        }
    }
}

/// Every lease of the store. Shared as `Arc<Mutex<Lessor>>` by the apply thread and the API; every
/// method is short and never blocks on I/O.
pub struct Lessor {
    min_ttl_secs: i64,
    leases: HashMap<i64, Lease>,
    /// `(expiry, id)` of every lease, in deadline order. Always exactly mirrors `leases`.
    by_expiry: BTreeSet<(Instant, i64)>,
    /// Whether deadlines are authoritative: set by [`Lessor::promote`] when this member becomes
    /// leader, cleared by [`Lessor::demote`]. A member that is not primary never reports a lease
    /// as expired, since only the leader sees renewals.
    primary: bool,
}

impl Lessor {
    /// Loads every persisted lease and attaches `attached` (the `(lease, key)` pairs of live keys the
    /// MVCC layer found). Each lease expires at `now` plus its checkpointed remaining TTL, or its
    /// full TTL when it has none. Pairs naming an unknown lease are ignored.
    pub fn open(
        engine: Arc<Engine>,
        min_ttl_secs: i64,
        attached: Vec<(i64, Vec<u8>)>,
        now: Instant,
    ) -> Result<Lessor, LeaseError> {
        let mut lessor = Lessor {
            min_ttl_secs,
            leases: HashMap::new(),
            by_expiry: BTreeSet::new(),
            primary: false,
        };
        for item in engine.scan(Cf::Lease, &[], None) {
            let (key, value) = item?;
            let corrupt = |reason: String| LeaseError::Corrupt {
                key: key.to_vec(),
                reason,
            };
            let id = <[u8; 8]>::try_from(&key[..])
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt(format!("key is {} bytes, not 8", key.len())))?;
            let record = LeaseRecord::decode(&value[..]).map_err(|e| corrupt(e.to_string()))?;
            if record.id != id {
                return Err(corrupt(format!("record names lease {}", record.id)));
            }
            let mut lease = Lease {
                ttl_secs: record.ttl.max(min_ttl_secs),
                remaining_ttl_secs: record.remaining_ttl,
                expiry: now,
                keys: BTreeSet::new(),
            };
            lease.expiry = deadline(now, lease.restart_ttl_secs());
            lessor.by_expiry.insert((lease.expiry, id));
            lessor.leases.insert(id, lease);
        }
        for (id, key) in attached {
            lessor.attach(id, &key);
        }
        tracing::debug!(leases = lessor.leases.len(), "loaded leases");
        Ok(lessor)
    }

    /// The shortest TTL a lease is granted with; shorter requests are raised to it.
    pub fn min_ttl_secs(&self) -> i64 {
        self.min_ttl_secs
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Creates lease `id` (apply path). Returns the effective TTL: `ttl_secs` raised to the minimum.
    /// ID 0 means "no lease" and is refused as not found, as etcd does.
    pub fn grant(
        &mut self,
        engine: &Engine,
        batch: &mut Batch,
        id: i64,
        ttl_secs: i64,
        now: Instant,
    ) -> Result<i64, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl_secs > MAX_LEASE_TTL_SECS {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let ttl_secs = ttl_secs.max(self.min_ttl_secs);
        persist(engine, batch, id, ttl_secs, 0);
        let expiry = deadline(now, ttl_secs);
        self.by_expiry.insert((expiry, id));
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                remaining_ttl_secs: 0,
                expiry,
                keys: BTreeSet::new(),
            },
        );
        Ok(ttl_secs)
    }

    /// Removes lease `id` (apply path) and returns its attached keys in key order; the caller
    /// deletes them through MVCC in the same batch.
    pub fn revoke(
        &mut self,
        engine: &Engine,
        batch: &mut Batch,
        id: i64,
    ) -> Result<Vec<Vec<u8>>, LeaseError> {
        let lease = self.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        self.by_expiry.remove(&(lease.expiry, id));
        batch.delete(engine, Cf::Lease, &id.to_be_bytes());
        Ok(lease.keys.into_iter().collect())
    }

    /// Records the leader's view of a lease's remaining TTL (apply path); 0 clears it. It takes
    /// effect when a member next becomes leader or restarts, not on the current deadline (etcd
    /// applies checkpoints the same way). Unknown IDs are ignored: the lease was revoked meanwhile.
    pub fn checkpoint(
        &mut self,
        engine: &Engine,
        batch: &mut Batch,
        id: i64,
        remaining_ttl_secs: i64,
        _now: Instant,
    ) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.remaining_ttl_secs = remaining_ttl_secs.max(0);
        persist(engine, batch, id, lease.ttl_secs, lease.remaining_ttl_secs);
    }

    /// Records that `key` is attached to lease `id`. A no-op for an unknown lease.
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
    }

    /// Records that `key` no longer uses lease `id`. A no-op for an unknown lease or key.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// The keys attached to lease `id`, in key order (none for an unknown lease).
    pub fn keys_of(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|lease| lease.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Extends lease `id` to `now` plus its TTL (leader only, not replicated) and returns the TTL.
    /// On a primary lessor a lease whose deadline has passed cannot be renewed: it is waiting for
    /// its revocation. (Before promotion deadlines are only guesses and do not refuse a renewal.)
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64, LeaseError> {
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if self.primary && lease.expiry <= now {
            return Err(LeaseError::NotFound);
        }
        let expiry = deadline(now, lease.ttl_secs);
        self.by_expiry.remove(&(lease.expiry, id));
        self.by_expiry.insert((expiry, id));
        lease.expiry = expiry;
        Ok(lease.ttl_secs)
    }

    /// Whether lease `id` carries a checkpointed remaining TTL. After a renewal the leader must
    /// clear it (a `LeaseCheckpoint` with remaining 0), or a later leader would count from the
    /// stale, shorter value.
    pub fn has_checkpoint(&self, id: i64) -> bool {
        self.leases
            .get(&id)
            .is_some_and(|lease| lease.remaining_ttl_secs > 0)
    }

    /// Remaining and granted TTL and the attached keys of lease `id`, or `None` if there is none.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<TimeToLive> {
        let lease = self.leases.get(&id)?;
        let left = lease.expiry.saturating_duration_since(now);
        Some(TimeToLive {
            remaining_secs: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            granted_secs: lease.ttl_secs,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// Every lease ID, in ascending order.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leases whose deadline is at or before `now`, earliest deadline first, at most `limit`.
    /// They stay listed until their revocation is applied. Always empty unless primary.
    pub fn expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        if !self.primary {
            return Vec::new();
        }
        self.by_expiry
            .iter()
            .take_while(|(expiry, _)| *expiry <= now)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The earliest deadline of any lease, `None` when there are none or this lessor is not
    /// primary: when the leader's expiry job next has something to revoke.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.primary {
            return None;
        }
        self.by_expiry.first().map(|(expiry, _)| *expiry)
    }

    /// This member became leader: every lease now expires at `now + extend` plus the TTL it counts
    /// from (its checkpointed remaining TTL, else its full TTL), as etcd's `Promote` does. Deadlines
    /// a member kept while following are guesses (renewals happen only on the leader), so they are
    /// replaced, not merged.
    pub fn promote(&mut self, now: Instant, extend: Duration) {
        self.primary = true;
        self.by_expiry.clear();
        for (id, lease) in &mut self.leases {
            let base = deadline(now, lease.restart_ttl_secs());
            lease.expiry = base.checked_add(extend).unwrap_or(base);
            self.by_expiry.insert((lease.expiry, *id));
        }
    }

    /// This member stopped leading: deadlines are no longer authoritative, nothing expires and
    /// renewals are not refused, until the next [`Lessor::promote`].
    pub fn demote(&mut self) {
        self.primary = false;
    }

    /// Whether this lessor's deadlines are authoritative (this member leads).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// `(id, remaining seconds rounded up)` of every unexpired lease whose TTL exceeds `interval`
    /// (the checkpoint interval, e.g. [`CHECKPOINT_INTERVAL`]), in ID order: what the leader
    /// checkpoints every `interval`.
    pub fn remaining_for_checkpoint(&self, now: Instant, interval: Duration) -> Vec<(i64, i64)> {
        let interval_secs = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
        let mut out: Vec<(i64, i64)> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.ttl_secs > interval_secs && lease.expiry > now)
            .map(|(id, lease)| {
                let left = lease.expiry.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                (*id, i64::try_from(secs).unwrap_or(i64::MAX))
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// `now + secs`, saturating far in the future; non-positive `secs` give `now`.
fn deadline(now: Instant, secs: i64) -> Instant {
    let span = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    now.checked_add(span).unwrap_or_else(|| now + FAR_FUTURE)
}

/// Writes the record of lease `id` into `batch` as a grant (or checkpoint) would, for a data
/// directory built from elsewhere (an imported etcd snapshot); [`Lessor::open`] loads it.
pub fn write_record(
    engine: &Engine,
    batch: &mut Batch,
    id: i64,
    ttl_secs: i64,
    remaining_ttl_secs: i64,
) {
    persist(engine, batch, id, ttl_secs, remaining_ttl_secs);
}

fn persist(engine: &Engine, batch: &mut Batch, id: i64, ttl_secs: i64, remaining_ttl_secs: i64) {
    let record = LeaseRecord {
        id,
        ttl: ttl_secs,
        remaining_ttl: remaining_ttl_secs,
    };
    batch.put(
        engine,
        Cf::Lease,
        &id.to_be_bytes(),
        &record.encode_to_vec(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_TTL_SECS: i64 = 2;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Arc<Engine>,
        lessor: Lessor,
        t0: Instant,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path(), true).unwrap();
            let t0 = Instant::now();
            let mut lessor = Lessor::open(engine.clone(), MIN_TTL_SECS, Vec::new(), t0).unwrap();
            lessor.promote(t0, Duration::ZERO);
            Fixture {
                _dir: dir,
                engine,
                lessor,
                t0,
            }
        }

        fn grant(&mut self, id: i64, ttl_secs: i64, at: Instant) -> Result<i64, LeaseError> {
            let mut batch = Batch::new();
            let r = self
                .lessor
                .grant(&self.engine, &mut batch, id, ttl_secs, at);
            self.engine.write(batch, true).unwrap();
            r
        }

        fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
            let mut batch = Batch::new();
            let r = self.lessor.revoke(&self.engine, &mut batch, id);
            self.engine.write(batch, true).unwrap();
            r
        }

        fn checkpoint(&mut self, id: i64, remaining_secs: i64) {
            let mut batch = Batch::new();
            self.lessor
                .checkpoint(&self.engine, &mut batch, id, remaining_secs, self.t0);
            self.engine.write(batch, true).unwrap();
        }

        /// Closes the database and opens it again, as a restart at `now` would.
        fn reopen(self, attached: Vec<(i64, Vec<u8>)>, now: Instant) -> Fixture {
            let Fixture {
                _dir,
                engine,
                lessor,
                t0,
            } = self;
            let path = engine.path().to_path_buf();
            drop(lessor);
            // The last handle: RocksDB releases the directory lock.
            drop(engine);
            let engine = Engine::open(&path, true).unwrap();
            let lessor = Lessor::open(engine.clone(), MIN_TTL_SECS, attached, now).unwrap();
            Fixture {
                _dir,
                engine,
                lessor,
                t0,
            }
        }
    }

    #[test]
    fn grant_raises_short_ttls_to_the_minimum() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        assert_eq!(f.grant(1, 1, t0).unwrap(), MIN_TTL_SECS);
        assert_eq!(f.grant(2, 0, t0).unwrap(), MIN_TTL_SECS);
        assert_eq!(f.grant(3, -5, t0).unwrap(), MIN_TTL_SECS);
        assert_eq!(f.grant(4, 60, t0).unwrap(), 60);
        assert_eq!(
            f.lessor.time_to_live(1, t0).unwrap().granted_secs,
            MIN_TTL_SECS
        );
    }

    #[test]
    fn grant_refuses_duplicates_zero_and_huge_ttls() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(7, 10, t0).unwrap();
        assert!(matches!(f.grant(7, 10, t0), Err(LeaseError::Exists)));
        assert!(matches!(f.grant(0, 10, t0), Err(LeaseError::NotFound)));
        assert!(matches!(
            f.grant(8, MAX_LEASE_TTL_SECS + 1, t0),
            Err(LeaseError::TtlTooLarge)
        ));
        assert_eq!(
            f.grant(9, MAX_LEASE_TTL_SECS, t0).unwrap(),
            MAX_LEASE_TTL_SECS
        );
        assert_eq!(f.lessor.ids(), vec![7, 9]);
    }

    #[test]
    fn leases_expire_in_deadline_order_and_renewal_postpones() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(1, 30, t0).unwrap();
        f.grant(2, 10, t0).unwrap();
        f.grant(3, 12, t0).unwrap();
        assert!(f.lessor.expired(t0 + secs(9), 10).is_empty());
        assert_eq!(f.lessor.next_deadline(), Some(t0 + secs(10)));
        assert_eq!(f.lessor.expired(t0 + secs(10), 10), vec![2]);
        assert_eq!(f.lessor.expired(t0 + secs(30), 10), vec![2, 3, 1]);
        assert_eq!(f.lessor.expired(t0 + secs(30), 2), vec![2, 3]);

        // Renewing lease 2 at t0+5 moves it behind lease 3.
        assert_eq!(f.lessor.renew(2, t0 + secs(5)).unwrap(), 10);
        assert_eq!(f.lessor.expired(t0 + secs(14), 10), vec![3]);
        assert_eq!(f.lessor.expired(t0 + secs(15), 10), vec![3, 2]);
        assert_eq!(f.lessor.expired(t0 + secs(30), 10), vec![3, 2, 1]);

        // Once past its deadline a lease cannot be renewed; it waits for revocation.
        assert!(matches!(
            f.lessor.renew(3, t0 + secs(20)),
            Err(LeaseError::NotFound)
        ));
        assert!(matches!(f.lessor.renew(99, t0), Err(LeaseError::NotFound)));
        f.revoke(3).unwrap();
        assert_eq!(f.lessor.expired(t0 + secs(30), 10), vec![2, 1]);
    }

    #[test]
    fn revoke_returns_attached_keys_sorted_and_forgets_the_lease() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(5, 60, t0).unwrap();
        f.grant(6, 60, t0).unwrap();
        f.lessor.attach(5, b"zeta");
        f.lessor.attach(5, b"alpha");
        f.lessor.attach(5, b"mid");
        f.lessor.attach(6, b"other");
        f.lessor.detach(5, b"mid");
        f.lessor.attach(404, b"ignored");
        let keys = f.revoke(5).unwrap();
        assert_eq!(keys, vec![b"alpha".to_vec(), b"zeta".to_vec()]);
        assert!(!f.lessor.exists(5));
        assert!(f.lessor.time_to_live(5, t0).is_none());
        assert!(matches!(f.revoke(5), Err(LeaseError::NotFound)));
        assert_eq!(f.lessor.expired(t0 + secs(3600), 10), vec![6]);
        assert!(
            f.engine
                .get(Cf::Lease, &5i64.to_be_bytes())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn time_to_live_counts_down_in_whole_seconds() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(1, 10, t0).unwrap();
        f.lessor.attach(1, b"k");
        let ttl = f.lessor.time_to_live(1, t0).unwrap();
        assert_eq!(ttl.remaining_secs, 10);
        assert_eq!(ttl.granted_secs, 10);
        assert_eq!(ttl.keys, vec![b"k".to_vec()]);
        let later = |ms: u64| {
            f.lessor
                .time_to_live(1, t0 + Duration::from_millis(ms))
                .unwrap()
        };
        assert_eq!(later(1).remaining_secs, 9);
        assert_eq!(later(3_500).remaining_secs, 6);
        assert_eq!(later(9_999).remaining_secs, 0);
        assert_eq!(later(60_000).remaining_secs, 0);
    }

    #[test]
    fn checkpoint_survives_a_restart() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(1, 3600, t0).unwrap();
        f.grant(2, 600, t0).unwrap();
        f.grant(3, 30, t0).unwrap();
        f.checkpoint(1, 1800);
        f.checkpoint(404, 5); // unknown: ignored
        assert!(f.lessor.has_checkpoint(1));
        assert!(!f.lessor.has_checkpoint(2));
        // The checkpoint does not move the current deadline.
        assert_eq!(f.lessor.time_to_live(1, t0).unwrap().remaining_secs, 3600);

        let t1 = t0 + secs(100);
        f = f.reopen(
            vec![(1, b"a".to_vec()), (3, b"c".to_vec()), (404, b"x".to_vec())],
            t1,
        );
        assert_eq!(f.lessor.ids(), vec![1, 2, 3]);
        let one = f.lessor.time_to_live(1, t1).unwrap();
        assert_eq!((one.remaining_secs, one.granted_secs), (1800, 3600));
        assert_eq!(one.keys, vec![b"a".to_vec()]);
        assert_eq!(f.lessor.time_to_live(2, t1).unwrap().remaining_secs, 600);
        assert_eq!(
            f.lessor.time_to_live(3, t1).unwrap().keys,
            vec![b"c".to_vec()]
        );
        assert!(f.lessor.has_checkpoint(1));

        // Clearing the checkpoint (after a renewal) is persisted too.
        f.checkpoint(1, 0);
        f = f.reopen(Vec::new(), t1);
        assert!(!f.lessor.has_checkpoint(1));
        assert_eq!(f.lessor.time_to_live(1, t1).unwrap().remaining_secs, 3600);
    }

    #[test]
    fn promote_resets_deadlines_from_the_ttl_or_the_checkpoint() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(1, 10, t0).unwrap();
        f.grant(2, 3600, t0).unwrap();
        f.checkpoint(2, 900);
        // This member follows for a while (its deadlines go stale) and leads again at t0+50.
        f.lessor.demote();
        let t1 = t0 + secs(50);
        assert!(f.lessor.expired(t1, 10).is_empty());
        f.lessor.promote(t1, secs(1));
        assert!(f.lessor.expired(t1 + secs(10), 10).is_empty());
        assert_eq!(f.lessor.expired(t1 + secs(11), 10), vec![1]);
        assert_eq!(f.lessor.time_to_live(2, t1).unwrap().remaining_secs, 901);
        assert_eq!(f.lessor.expired(t1 + secs(901), 10), vec![1, 2]);

        // The follower's guess (granted at t0 with 3600 s) gives way to the checkpoint.
        assert_eq!(
            f.lessor.remaining_for_checkpoint(t1, CHECKPOINT_INTERVAL),
            vec![(2, 901)]
        );

        // Promotion replaces deadlines rather than merging them.
        f.lessor.renew(1, t1 + secs(5)).unwrap();
        f.lessor.promote(t1, Duration::ZERO);
        assert_eq!(f.lessor.time_to_live(1, t1).unwrap().remaining_secs, 10);
    }

    #[test]
    fn only_a_primary_lessor_expires_or_refuses_renewals() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(1, 10, t0).unwrap();
        f.lessor.demote();
        assert!(!f.lessor.is_primary());
        // Past the deadline, but as a follower that deadline is only a guess.
        assert!(f.lessor.expired(t0 + secs(60), 10).is_empty());
        assert_eq!(f.lessor.next_deadline(), None);
        assert_eq!(f.lessor.renew(1, t0 + secs(60)).unwrap(), 10);
        f.lessor.promote(t0 + secs(60), Duration::ZERO);
        assert!(f.lessor.is_primary());
        assert!(f.lessor.expired(t0 + secs(69), 10).is_empty());
        assert_eq!(f.lessor.expired(t0 + secs(70), 10), vec![1]);
        assert!(matches!(
            f.lessor.renew(1, t0 + secs(70)),
            Err(LeaseError::NotFound)
        ));

        // A freshly opened lessor is not primary until promoted.
        let f = f.reopen(Vec::new(), t0);
        assert!(!f.lessor.is_primary());
        assert!(f.lessor.expired(t0 + secs(3600), 10).is_empty());
    }

    #[test]
    fn only_long_unexpired_leases_are_checkpointed() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        f.grant(1, 60, t0).unwrap();
        f.grant(2, 600, t0).unwrap();
        f.grant(3, 301, t0).unwrap();
        let now = t0 + Duration::from_millis(100_500);
        assert_eq!(
            f.lessor.remaining_for_checkpoint(now, CHECKPOINT_INTERVAL),
            vec![(2, 500), (3, 201)]
        );
        assert_eq!(
            f.lessor
                .remaining_for_checkpoint(t0 + secs(301), CHECKPOINT_INTERVAL),
            vec![(2, 299)]
        );
        // A shorter interval checkpoints shorter leases too.
        assert_eq!(
            f.lessor.remaining_for_checkpoint(t0 + secs(10), secs(1)),
            vec![(1, 50), (2, 590), (3, 291)]
        );
    }

    #[test]
    fn many_leases_stay_ordered() {
        let mut f = Fixture::new();
        let t0 = f.t0;
        let mut batch = Batch::new();
        for id in 1..=20_000i64 {
            let ttl = 10 + (id * 7919) % 1000;
            f.lessor.grant(&f.engine, &mut batch, id, ttl, t0).unwrap();
        }
        f.engine.write(batch, false).unwrap();
        for id in (1..=20_000i64).step_by(2) {
            f.lessor.renew(id, t0 + secs(5)).unwrap();
        }
        let now = t0 + secs(500);
        let expired = f.lessor.expired(now, usize::MAX);
        let deadlines: Vec<Instant> = expired
            .iter()
            .map(|id| {
                now - secs(500) + secs(5 * (id % 2) as u64) + secs((10 + (id * 7919) % 1000) as u64)
            })
            .collect();
        assert!(deadlines.windows(2).all(|w| w[0] <= w[1]));
        assert!(deadlines.iter().all(|d| *d <= now));
        let expected = (1..=20_000i64)
            .filter(|id| 10 + (id * 7919) % 1000 + 5 * (id % 2) <= 500)
            .count();
        assert_eq!(expired.len(), expected);
        assert_eq!(f.lessor.by_expiry.len(), f.lessor.len());
    }
}

/// Properties of the persisted lease records: written records load back, and whatever bytes
/// sit in the lease column family, loading ends in leases or an error, never a panic. One engine
/// for all cases; 64 cases each, about a second in release.
#[cfg(test)]
mod props {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const MIN_TTL_SECS: i64 = 2;

    fn clear(engine: &Engine) {
        let mut batch = Batch::new();
        batch.delete_range(engine, Cf::Lease, &[], &[0xff; 16]);
        engine.write(batch, false).unwrap();
    }

    #[test]
    fn written_records_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), false).unwrap();
        proptest!(ProptestConfig::with_cases(64), |(
            leases in vec((any::<i64>(), any::<i64>(), any::<i64>()), 0..6),
        )| {
            clear(&engine);
            let mut batch = Batch::new();
            let mut want = BTreeSet::new();
            for (id, ttl, remaining) in &leases {
                write_record(&engine, &mut batch, *id, *ttl, *remaining);
                want.insert(*id);
            }
            engine.write(batch, false).unwrap();
            let now = Instant::now();
            let lessor = Lessor::open(engine.clone(), MIN_TTL_SECS, Vec::new(), now).unwrap();
            let got: BTreeSet<i64> = lessor.ids().into_iter().collect();
            prop_assert_eq!(got, want);
            for (id, ttl, _) in leases.iter().rev() {
                // The last record written for an id is the one kept.
                if leases.iter().rev().find(|l| l.0 == *id).map(|l| l.1) == Some(*ttl) {
                    let live = lessor.time_to_live(*id, now).unwrap();
                    prop_assert_eq!(live.granted_secs, (*ttl).max(MIN_TTL_SECS));
                }
            }
        });
    }

    #[test]
    fn damaged_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), false).unwrap();
        proptest!(ProptestConfig::with_cases(64), |(
            id in any::<i64>(),
            ttl in any::<i64>(),
            flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            tail in vec(any::<u8>(), 0..8),
            key in proptest::option::of(vec(any::<u8>(), 0..12)),
        )| {
            clear(&engine);
            let mut value = LeaseRecord { id, ttl, remaining_ttl: 0 }.encode_to_vec();
            if !value.is_empty() {
                for (at, byte) in flips {
                    let at = at.index(value.len());
                    value[at] = byte;
                }
            }
            value.extend(tail);
            let key = key.unwrap_or_else(|| id.to_be_bytes().to_vec());
            let mut batch = Batch::new();
            batch.put(&engine, Cf::Lease, &key, &value);
            engine.write(batch, false).unwrap();
            match Lessor::open(engine.clone(), MIN_TTL_SECS, vec![(id, b"k".to_vec())], Instant::now()) {
                Ok(lessor) => prop_assert_eq!(lessor.len(), 1),
                Err(LeaseError::Corrupt { key: named, .. }) => prop_assert_eq!(named, key),
                Err(other) => prop_assert!(false, "unexpected error {}", other),
            }
        });
    }
}
