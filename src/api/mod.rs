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
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::node::{NodeHandle, Origin};
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

    /// Rejects a write while NOSPACE is raised; raises it when the backend plus this request's
    /// `cost_bytes` would outgrow the quota (that request is rejected too, as etcd does).
    pub async fn check_quota(&self, cost_bytes: u64) -> Result<(), EtcdError> {
        if self.alarms.nospace_active() {
            return Err(EtcdError::NoSpace);
        }
        if self.quota.admit(cost_bytes) {
            return Ok(());
        }
        let member_id = self.node.status().member_id;
        tracing::warn!(
            quota_bytes = self.quota.quota_bytes,
            db_size_bytes = self.quota.db_size_bytes(),
            "database space exceeded; raising NOSPACE"
        );
        let alarm = crate::proto::etcdserverpb::AlarmRequest {
            action: crate::proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id,
            alarm: crate::alarm::ALARM_NOSPACE,
        };
        let _ = self.node.propose(alarm, Origin::Member).await;
        Err(EtcdError::NoSpace)
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

/// The backend quota, the database size last sampled (off the request path), and the bytes of
/// writes admitted since that sample, so a burst between two samples is still counted.
pub struct Quota {
    pub quota_bytes: u64,
    db_size_bytes: AtomicU64,
    admitted_since_sample_bytes: AtomicU64,
}

impl Quota {
    pub fn new(quota_bytes: u64) -> Quota {
        Quota {
            quota_bytes,
            db_size_bytes: AtomicU64::new(0),
            admitted_since_sample_bytes: AtomicU64::new(0),
        }
    }

    /// A new sample of the on-disk size; it includes the writes admitted before it.
    pub fn record_db_size(&self, bytes: u64) {
        self.db_size_bytes.store(bytes, Ordering::Relaxed);
        self.admitted_since_sample_bytes.store(0, Ordering::Relaxed);
    }

    pub fn db_size_bytes(&self) -> u64 {
        self.db_size_bytes.load(Ordering::Relaxed)
    }

    /// Whether a write of `cost_bytes` fits; if it does it is counted until the next sample.
    pub fn admit(&self, cost_bytes: u64) -> bool {
        let pending = self.admitted_since_sample_bytes.load(Ordering::Relaxed);
        if self.db_size_bytes() + pending + cost_bytes > self.quota_bytes {
            return false;
        }
        self.admitted_since_sample_bytes
            .fetch_add(cost_bytes, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Quota;

    #[test]
    fn a_burst_between_samples_counts_against_the_quota() {
        let quota = Quota::new(1000);
        quota.record_db_size(400);
        assert!(quota.admit(300));
        assert!(quota.admit(300));
        assert!(!quota.admit(300), "400 + 600 admitted + 300 exceeds 1000");
        quota.record_db_size(500);
        assert!(quota.admit(300));
    }
}
