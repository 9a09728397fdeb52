//! The etcd v3 gRPC services, one file per service, sharing one [`ServerCtx`].
//!
//! Only this layer (and `apply`, which executes the etcd requests carried in raft entries) knows
//! the client-facing etcd protos. Errors become gRPC statuses only in [`error`]. Writes go
//! through `NodeHandle::propose`, which answers each request type with its response type, header
//! filled in; this layer never sees `apply`.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod error;
pub mod grpc_metrics;
pub mod health;
pub mod interceptor;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod oversize;
pub mod peer;
pub mod recipes;
pub mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::alarm::Alarms;
use crate::auth::AuthStore;
use crate::auth::jwt::JwtTokens;
use crate::auth::requests::Need;
use crate::auth::tokens::TokenError;
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::mvcc::MvccStore;
use crate::node::{ApplyError, NodeHandle, Origin, Proposal, ProposeError};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::oxetcdpb::Caller;
use crate::storage::Engine;
use crate::tasks::TaskSet;
use crate::watch::WatchHub;

pub use error::EtcdError;

/// The settings the services read, taken from the configuration once by `server`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long a call waits on raft before giving up (etcd's request timeout).
    pub request_timeout: Duration,
    /// `--max-request-bytes`: the largest request accepted, and watch fragments' size.
    pub request_bytes_max: u64,
    /// `--max-txn-ops`.
    pub txn_ops_max: u64,
    /// `--strict-reconfig-check`: refuse membership changes that could lose quorum.
    pub strict_reconfig_check: bool,
    /// `--max-learners`.
    pub learners_max: u32,
    /// `--initial-cluster-token`, from which new member IDs are derived.
    pub initial_cluster_token: String,
    /// `--election-timeout`: how long a `hasleader` watch tolerates no leader, and the grace a
    /// new leader gives every lease.
    pub election_timeout: Duration,
    /// `--experimental-lease-checkpoint-interval`.
    pub lease_checkpoint_interval: Duration,
    /// `--watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// Opens channels to peers (the leader forwarders use it).
    pub peer_dialer: crate::peer::PeerDialer,
    /// `--bcrypt-cost`: of the password hashes this member makes.
    pub bcrypt_cost: u32,
}

/// The client of an https:// connection, which the TLS listener gives every request on it (as
/// axum's `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub addr: SocketAddr,
    /// The Common Name of the client's certificate, verified against `--trusted-ca-file`; set
    /// only with `--client-cert-auth` (etcd takes it as the user of a request with no token).
    pub common_name: Option<Arc<str>>,
}

/// What a request says about who sends it, taken from it before any waiting.
struct Credentials {
    /// The `token` metadata; `Some(None)` when it is not ASCII.
    token: Option<Option<String>>,
    /// The CN of the connection's verified client certificate.
    common_name: Option<Arc<str>>,
}

impl Credentials {
    fn of<T>(request: &tonic::Request<T>) -> Credentials {
        Credentials {
            token: request
                .metadata()
                .get("token")
                .map(|token| token.to_str().ok().map(str::to_owned)),
            common_name: request
                .extensions()
                .get::<axum::extract::ConnectInfo<TlsClient>>()
                .and_then(|info| info.0.common_name.clone()),
        }
    }
}

/// Everything a service handler may use. Cheap to clone.
#[derive(Clone)]
pub struct ServerCtx {
    pub config: Arc<ApiConfig>,
    pub node: NodeHandle,
    pub engine: Arc<Engine>,
    pub mvcc: Arc<MvccStore>,
    pub lessor: Arc<Mutex<Lessor>>,
    pub watch: Arc<WatchHub>,
    pub alarms: Arc<Alarms>,
    pub auth: Arc<AuthStore>,
    /// With `--auth-token jwt,...`: the keys this member signs and verifies tokens with; `None`
    /// for simple tokens.
    pub jwt: Option<Arc<JwtTokens>>,
    pub membership: Arc<RwLock<Membership>>,
    pub quota: Arc<Quota>,
    /// Owns the tasks and threads serving long-lived client streams (watch, lease keep-alive,
    /// snapshot); the streams end when it stops, before the node does.
    pub streams: TaskSet,
    /// The member's metrics, for what the API layer counts (reads, health checks).
    pub metrics: Arc<Metrics>,
}

impl ServerCtx {
    /// Whether this member is a learner (non-voting) in its current member list.
    pub fn is_learner(&self) -> bool {
        let me = self.node.config().member_id;
        self.membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .iter()
            .any(|m| m.id == me && m.is_learner)
    }

    /// A response header for this member with the given store revision (0 for calls that do not
    /// touch the key-value store); see `NodeHandle::header`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        self.node.header(revision)
    }

    /// Completes a header produced by a local read (which sets only the revision) with this
    /// member's identity and term; a missing header gets the current revision.
    pub fn fill_header(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = match header {
            Some(h) if h.revision != 0 => h.revision,
            _ => self.mvcc.current_revision(),
        };
        Some(self.header(revision))
    }

    /// Rejects a write when the bytes used (see
    /// [`MvccStore::used_bytes`](crate::mvcc::MvccStore::used_bytes)) plus the writes this
    /// member admitted that are not applied yet plus this request's `cost_bytes` would outgrow
    /// the quota (etcd's `backend size + cost > quota`); the first such refusal raises NOSPACE
    /// for this member. Hold the returned grant until the write is applied or has failed: until
    /// then its cost counts against the quota. This refuses early, without a raft round trip;
    /// the decision that holds cluster-wide is made at apply (see
    /// [`ServerCtx::propose_within_quota`]).
    ///
    /// The same refusal comes when the data dir's filesystem is short of space (see
    /// [`Quota::disk_shortage`]), before RocksDB would fail a write (which stops the member).
    pub async fn check_quota(&self, cost_bytes: u64) -> Result<QuotaGrant, EtcdError> {
        let used_bytes = self.mvcc.used_bytes();
        let shortage = self.quota.disk_shortage(cost_bytes);
        if shortage.is_none()
            && let Some(grant) = self.quota.admit(used_bytes, cost_bytes)
        {
            // Not refused on this member's view of the alarms: a follower may not have applied
            // a disarm the client already saw acknowledged. The write is checked against the
            // alarms at its place in the log when it applies, as etcd's capped applier does.
            return Ok(grant);
        }
        if self.alarms.nospace_active() {
            return Err(EtcdError::NoSpace);
        }
        // One NOSPACE proposal per member at a time: concurrent refusals wait for none.
        let Some(raising) = self.quota.start_raising() else {
            return Err(EtcdError::NoSpace);
        };
        match shortage {
            Some(shortage) => tracing::warn!(
                free_bytes = shortage.free_bytes,
                unflushed_bytes = shortage.unflushed_bytes,
                reserve_bytes = shortage.reserve_bytes,
                cost_bytes,
                "data dir filesystem within its reserve; raising NOSPACE"
            ),
            None => tracing::warn!(
                quota_bytes = self.quota.quota_bytes,
                used_bytes,
                in_flight_bytes = self.quota.in_flight_bytes(),
                cost_bytes,
                "database space exceeded; raising NOSPACE"
            ),
        }
        self.propose_nospace(raising).await;
        Err(EtcdError::NoSpace)
    }

    /// Admits (see [`ServerCtx::check_quota`]) and proposes a write the backend quota limits: a
    /// Put, a Txn with writes, a LeaseGrant. The entry carries this member's quota, against which
    /// every member checks the write when it applies it, all on the same size, so writes admitted
    /// on different members at once cannot together outgrow it, and all members refuse alike. A
    /// write refused at apply raises NOSPACE for this member, as a refusal at admission does.
    pub async fn propose_within_quota<P>(
        &self,
        request: P,
        origin: Origin,
    ) -> Result<P::Response, EtcdError>
    where
        P: Proposal + prost::Message,
    {
        let cost_bytes = request.encoded_len() as u64;
        let _grant = self.check_quota(cost_bytes).await?;
        let proposed = self
            .node
            .propose_within_quota(request, origin, self.quota.quota_bytes)
            .await;
        if let Err(ProposeError::Refused(ApplyError::NoSpace)) = &proposed
            && !self.alarms.nospace_active()
            && let Some(raising) = self.quota.start_raising()
        {
            tracing::warn!(
                quota_bytes = self.quota.quota_bytes,
                used_bytes = self.mvcc.used_bytes(),
                cost_bytes,
                "database space exceeded at apply; raising NOSPACE"
            );
            self.propose_nospace(raising).await;
        }
        Ok(proposed?)
    }

    /// Proposes NOSPACE for this member, holding the right to (see [`Quota::start_raising`]);
    /// a failed proposal is logged, and the next refusal retries.
    pub async fn propose_nospace(&self, _raising: RaisingNoSpace) {
        let alarm = crate::proto::etcdserverpb::AlarmRequest {
            action: crate::proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.node.status().member_id,
            alarm: crate::alarm::ALARM_NOSPACE,
        };
        if let Err(e) = self.node.propose(alarm, Origin::Member).await {
            tracing::warn!(error = %e, "raising NOSPACE failed; the next refused write retries");
        }
    }

    /// Completes once the member starts draining client streams.
    pub async fn stopping(&self) {
        self.streams.stopping().await;
    }

    /// Who is calling: while auth is enabled, the user the request's `token` names (etcd's
    /// `invalid auth token` for one this member does not know, that expired or whose signature
    /// does not verify). With no token, a request over an https:// connection whose client
    /// certificate was verified (`--client-cert-auth`) is made as the certificate's Common Name,
    /// as in etcd; otherwise no token is nobody, whom every check refuses with `user name is
    /// empty`. While auth is disabled tokens are ignored, as in etcd.
    ///
    /// A JWT carries the auth revision it was issued at. A simple token carries none: the
    /// revision is the store's as it is now, so a write is refused as `revision of auth store
    /// is old` only when the store changes between now and its apply (as in etcd). A simple
    /// token this member does not know yet may come from an Authenticate another member applied
    /// first (the client failed over): it is looked up again once this member has applied
    /// everything committed before the call.
    ///
    /// The request is only looked at before the returned future first waits, so a streaming
    /// request (not `Sync`) need not be held across it.
    pub fn caller<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> impl Future<Output = Result<Caller, EtcdError>> + Send + '_ {
        self.caller_with(Credentials::of(request))
    }

    async fn caller_with(&self, credentials: Credentials) -> Result<Caller, EtcdError> {
        if !self.auth.is_enabled() {
            return Ok(Caller::default());
        }
        let token = match credentials.token {
            Some(token) => token.ok_or(EtcdError::InvalidAuthToken)?,
            None => {
                return Ok(match credentials.common_name {
                    Some(name) => Caller {
                        user: name.to_string(),
                        auth_revision: self.auth.revision(),
                    },
                    None => Caller::default(),
                });
            }
        };
        let token = token.as_str();
        if let Some(jwt) = &self.jwt {
            let claims = jwt
                .verify(token, SystemTime::now())
                .map_err(|_| EtcdError::InvalidAuthToken)?;
            return Ok(Caller {
                user: claims.username,
                auth_revision: claims.revision,
            });
        }
        let tokens = self.auth.tokens();
        let user = match tokens.check(token, std::time::Instant::now()) {
            Err(TokenError::Unknown) => {
                self.node
                    .read_barrier()
                    .await
                    .map_err(|_| EtcdError::InvalidAuthToken)?;
                tokens.check(token, std::time::Instant::now())
            }
            checked => checked,
        }
        .map_err(|_| EtcdError::InvalidAuthToken)?;
        let auth_revision = self.auth.revision();
        Ok(Caller {
            user,
            auth_revision,
        })
    }

    /// Whether `caller` may do what `needs` lists (with `admin`, what only root may); always
    /// while auth is disabled.
    pub fn permit(&self, caller: &Caller, needs: &[Need], admin: bool) -> Result<(), EtcdError> {
        self.auth
            .check(&caller.user, caller.auth_revision, needs, admin)
            .map_err(EtcdError::from)
    }

    /// The caller of `metadata`, refused unless it may use root-only calls.
    pub fn admin<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> impl Future<Output = Result<Caller, EtcdError>> + Send + '_ {
        let credentials = Credentials::of(request);
        async move {
            let caller = self.caller_with(credentials).await?;
            self.permit(&caller, &[], true)?;
            Ok(caller)
        }
    }

    /// [`ServerCtx::admin`] for the Maintenance calls etcd keeps to root (Defragment, Hash,
    /// HashKV, Snapshot): etcd refuses those with code Unknown and an `auth: ` message
    /// (`auth: permission denied`, `auth: user name is empty`), so this does too.
    pub fn maintenance_admin<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> impl Future<Output = Result<(), EtcdError>> + Send + '_ {
        let admin = self.admin(request);
        async move {
            admin.await.map(|_| ()).map_err(|e| {
                let message = e.to_string();
                let reason = message.strip_prefix("etcdserver: ").unwrap_or(&message);
                EtcdError::Other(format!("auth: {reason}"))
            })
        }
    }

    /// A header carrying the current store revision.
    pub fn header_now(&self) -> ResponseHeader {
        self.header(self.mvcc.current_revision())
    }
}

/// Runs blocking storage work off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, EtcdError>
where
    F: FnOnce() -> Result<T, EtcdError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EtcdError::Other(format!("internal task failed: {e}")))?
}

/// The backend quota and what counts against it besides the stored bytes: the cost of writes
/// this member admitted that are not applied yet, so concurrent writes cannot all pass on the
/// same stored size. Also the data dir's free-space guard and the one-at-a-time guard of this
/// member's NOSPACE proposal.
pub struct Quota {
    pub quota_bytes: u64,
    in_flight_bytes: Arc<AtomicU64>,
    raising: Arc<AtomicBool>,
    disk: Option<DiskGuard>,
}

/// The smallest free space kept on the data dir's filesystem: enough on a 128 MiB filesystem for
/// the writes that free space (deletes, a compaction, a defragment), the alarm's own entries and
/// what RocksDB writes besides its data (its info log, a new WAL or MANIFEST preallocated).
pub const DISK_RESERVE_BYTES_MIN: u64 = 8 << 20;
/// The largest: one percent of a big filesystem is more than those writes need.
pub const DISK_RESERVE_BYTES_MAX: u64 = 1 << 30;
/// What one admitted byte costs on disk until RocksDB has flushed it: the raft log entry and the
/// MVCC record, each first in the WAL and then in a table file.
const DISK_BYTES_PER_WRITE_BYTE: u64 = 4;

/// The free space kept on a filesystem of `total_bytes`: one percent of it, between
/// [`DISK_RESERVE_BYTES_MIN`] and [`DISK_RESERVE_BYTES_MAX`].
pub fn disk_reserve_bytes(total_bytes: u64) -> u64 {
    (total_bytes / 100).clamp(DISK_RESERVE_BYTES_MIN, DISK_RESERVE_BYTES_MAX)
}

/// How long a reading of the data dir's filesystem answers [`Quota::disk_shortage`] while it
/// shows far more free space than the check needs: a `statfs` per write was 2% of the server's
/// CPU with 64 clients putting.
const DISK_READING_FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(250);
/// Free space beyond twice what the check needs, under which every check reads the filesystem
/// again: more than this member can write in [`DISK_READING_FRESH_FOR`].
const DISK_READING_MARGIN_BYTES: u64 = 256 << 20;

/// The data dir's filesystem, and what RocksDB will write on it before it frees anything.
struct DiskGuard {
    data_dir: std::path::PathBuf,
    /// [`Engine::unflushed_bytes`], sampled by the server's `disk-space` job.
    unflushed_bytes: AtomicU64,
    /// The last reading of the filesystem and when it was taken.
    last_reading: std::sync::Mutex<Option<(std::time::Instant, crate::metrics::DiskSpace)>>,
}

impl DiskGuard {
    /// The filesystem's space: a recent reading while it has room to spare for the reserve and
    /// `unflushed_bytes`, a fresh one otherwise, so a filling disk is read on every write.
    fn space(&self, unflushed_bytes: u64) -> crate::metrics::DiskSpace {
        let mut last = self.last_reading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, space)) = *last {
            let needed_bytes =
                disk_reserve_bytes(space.total_bytes).saturating_add(unflushed_bytes);
            let roomy = space.free_bytes
                >= needed_bytes
                    .saturating_mul(2)
                    .saturating_add(DISK_READING_MARGIN_BYTES);
            if roomy && at.elapsed() < DISK_READING_FRESH_FOR {
                return space;
            }
        }
        let space = crate::metrics::DiskSpace::of(&self.data_dir);
        *last = Some((std::time::Instant::now(), space));
        space
    }
}

/// Why the data dir's filesystem cannot take a write: its free bytes are below the reserve plus
/// what is still to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskShortage {
    pub free_bytes: u64,
    /// RocksDB's unflushed memtables and compaction backlog, plus the admitted writes not applied
    /// yet and this one, at [`DISK_BYTES_PER_WRITE_BYTE`] each.
    pub unflushed_bytes: u64,
    pub reserve_bytes: u64,
}

/// An admitted write's cost, counted against the quota until dropped.
#[must_use = "the cost counts against the quota only while the grant is held"]
pub struct QuotaGrant {
    in_flight_bytes: Arc<AtomicU64>,
    cost_bytes: u64,
}

impl Drop for QuotaGrant {
    fn drop(&mut self) {
        self.in_flight_bytes
            .fetch_sub(self.cost_bytes, Ordering::AcqRel);
    }
}

/// Held while this member's NOSPACE proposal is in flight.
pub struct RaisingNoSpace(Arc<AtomicBool>);

impl Drop for RaisingNoSpace {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Quota {
    pub fn new(quota_bytes: u64) -> Quota {
        Quota {
            quota_bytes,
            in_flight_bytes: Arc::new(AtomicU64::new(0)),
            raising: Arc::new(AtomicBool::new(false)),
            disk: None,
        }
    }

    /// Also refuses writes when the filesystem holding `data_dir` is short of space.
    pub fn guarding_disk(mut self, data_dir: std::path::PathBuf) -> Quota {
        self.disk = Some(DiskGuard {
            data_dir,
            unflushed_bytes: AtomicU64::new(0),
            last_reading: std::sync::Mutex::new(None),
        });
        self
    }

    /// Records RocksDB's [`Engine::unflushed_bytes`].
    pub fn set_unflushed_bytes(&self, bytes: u64) {
        if let Some(disk) = &self.disk {
            disk.unflushed_bytes.store(bytes, Ordering::Release);
        }
    }

    /// Whether the data dir's filesystem is too full for a write of `cost_bytes` (0: for none):
    /// its free bytes minus what RocksDB and the admitted writes will still write fall below
    /// [`disk_reserve_bytes`]. `None` when not guarding, or when the filesystem cannot be read.
    pub fn disk_shortage(&self, cost_bytes: u64) -> Option<DiskShortage> {
        let disk = self.disk.as_ref()?;
        let writes = self.in_flight_bytes().saturating_add(cost_bytes);
        let unflushed_bytes = disk
            .unflushed_bytes
            .load(Ordering::Acquire)
            .saturating_add(writes.saturating_mul(DISK_BYTES_PER_WRITE_BYTE));
        let space = disk.space(unflushed_bytes);
        if space.total_bytes == 0 {
            return None;
        }
        let reserve_bytes = disk_reserve_bytes(space.total_bytes);
        (space.free_bytes < reserve_bytes.saturating_add(unflushed_bytes)).then_some(DiskShortage {
            free_bytes: space.free_bytes,
            unflushed_bytes,
            reserve_bytes,
        })
    }

    /// Bytes of admitted writes not applied yet.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes.load(Ordering::Acquire)
    }

    /// Admits a write of `cost_bytes` if it fits beside `stored_bytes` and the writes in flight.
    pub fn admit(&self, stored_bytes: u64, cost_bytes: u64) -> Option<QuotaGrant> {
        self.in_flight_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_flight| {
                let used = stored_bytes
                    .saturating_add(in_flight)
                    .saturating_add(cost_bytes);
                (used <= self.quota_bytes).then(|| in_flight + cost_bytes)
            })
            .ok()?;
        Some(QuotaGrant {
            in_flight_bytes: self.in_flight_bytes.clone(),
            cost_bytes,
        })
    }

    /// The right to propose NOSPACE, unless this member's proposal is already in flight.
    pub fn start_raising(&self) -> Option<RaisingNoSpace> {
        self.raising
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(RaisingNoSpace(self.raising.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::Quota;

    #[test]
    fn writes_in_flight_count_against_the_quota() {
        let quota = Quota::new(1000);
        let first = quota.admit(400, 300).expect("400 + 300 fits 1000");
        let second = quota.admit(400, 300).expect("400 + 600 fits 1000");
        assert!(
            quota.admit(400, 300).is_none(),
            "400 + 600 in flight + 300 exceeds 1000"
        );
        drop(first);
        drop(second);
        assert_eq!(quota.in_flight_bytes(), 0);
        // Once applied, the writes are in the stored bytes instead.
        assert!(quota.admit(1000, 1).is_none());
        assert!(quota.admit(999, 1).is_some());
    }

    #[test]
    fn the_disk_reserve_is_one_percent_within_bounds() {
        use super::{DISK_RESERVE_BYTES_MAX, DISK_RESERVE_BYTES_MIN, disk_reserve_bytes};
        assert_eq!(disk_reserve_bytes(128 << 20), DISK_RESERVE_BYTES_MIN);
        assert_eq!(disk_reserve_bytes(10 << 30), (10 << 30) / 100);
        assert_eq!(disk_reserve_bytes(1 << 50), DISK_RESERVE_BYTES_MAX);
    }

    #[test]
    fn a_disk_reading_is_reused_only_while_fresh_and_roomy() {
        use crate::metrics::DiskSpace;
        use std::time::{Duration, Instant};
        let quota = Quota::new(1000).guarding_disk("/".into());
        let disk = quota.disk.as_ref().unwrap();
        let seed = |age: Duration, space: DiskSpace| {
            *disk.last_reading.lock().unwrap() = Some((Instant::now() - age, space));
        };
        // Free space no real filesystem reports, so a reused reading is told from a fresh one.
        let roomy = DiskSpace {
            free_bytes: 1 << 60,
            total_bytes: 1 << 61,
        };
        seed(Duration::ZERO, roomy);
        assert_eq!(disk.space(0), roomy);
        seed(super::DISK_READING_FRESH_FOR, roomy);
        assert_ne!(disk.space(0), roomy, "a stale reading is read again");
        let tight = DiskSpace {
            free_bytes: 3 * super::DISK_RESERVE_BYTES_MIN,
            total_bytes: 1 << 30,
        };
        seed(Duration::ZERO, tight);
        assert_ne!(
            disk.space(0),
            tight,
            "a reading near the reserve is read again"
        );
    }

    #[test]
    fn an_unreadable_data_dir_guards_nothing() {
        let quota = Quota::new(1000).guarding_disk("/no/such/dir".into());
        assert_eq!(quota.disk_shortage(1 << 40), None);
    }

    #[test]
    fn one_nospace_proposal_at_a_time() {
        let quota = Quota::new(1000);
        let raising = quota.start_raising().expect("nobody is raising");
        assert!(quota.start_raising().is_none());
        drop(raising);
        assert!(quota.start_raising().is_some());
    }
}
