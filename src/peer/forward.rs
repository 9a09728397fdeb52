//! Requests a follower forwards to the leader over the peer URLs: lease keep-alives and
//! time-to-live queries (only the leader tracks lease expiry) and membership changes (only the
//! leader knows which members are up and how far each has replicated).
//!
//! [`LeaderForwarder`] looks the current leader up in raft's status and its peer URLs through
//! [`PeerHandlers::peer_urls`], keeps one lazily connected gRPC channel to it (replaced when the leader or the URL
//! changes), and calls the `oxetcdpb.Peer` service there. As etcd does for forwarded renewals, it
//! keeps trying until the request timeout: while there is no leader it waits for one, and a failed
//! attempt is retried after [`RETRY_INTERVAL`] on the leader's next peer URL. At the deadline it
//! answers [`ForwardError::NoLeader`] if there is still no leader, [`ForwardError::Timeout`]
//! otherwise. A membership change is not idempotent, so it is sent again only when the member
//! it reached answered that it no longer leads.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use super::{PeerDialer, PeerHandlers, hex};
use crate::node::NodeHandle;
use crate::proto::oxetcdpb::peer_client::PeerClient;
use crate::proto::oxetcdpb::{
    LeaseRenewRequest, LeaseTimeToLiveAnswer, LeaseTimeToLiveQuery, MemberChangeRequest,
    MemberChangeResponse, member_change_request,
};

/// Pause before the next attempt when there is no leader or the last attempt failed.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// At most one warning per this long about a leader that does not answer (every forwarded
/// request fails the same way then; the clients get their errors regardless).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a forwarded request got no answer from the leader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No leader was known when the request timeout ran out.
    #[error("no leader")]
    NoLeader,
    /// A leader was known but did not answer before the request timeout.
    #[error("the leader did not answer in time")]
    Timeout,
    /// This member is the leader now; the caller answers locally.
    #[error("this member is the leader")]
    LocalLeader,
    /// The leader refused the request: its gRPC status code and message, for the client.
    #[error("{message}")]
    Refused { code: i32, message: String },
}

/// Which failed attempts [`LeaderForwarder`] makes again before the request timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Every failure (the request can safely be made twice).
    Always,
    /// Only a member's answer that it does not lead (it did nothing); after any other failure
    /// the request may have taken effect, so it is not made again.
    NotLeader,
}

/// Sends requests to the current leader's peer service. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct LeaderForwarder {
    node: NodeHandle,
    handlers: Arc<dyn PeerHandlers>,
    dialer: PeerDialer,
    channel: Arc<Mutex<Option<LeaderChannel>>>,
    /// When the last warning about an unresponsive leader was logged.
    warned_at: Arc<Mutex<Option<Instant>>>,
}

/// The channel to one leader, over one of its peer URLs.
struct LeaderChannel {
    leader_id: u64,
    url: String,
    channel: Channel,
}

impl LeaderForwarder {
    /// A forwarder finding the leader through `node` and its peer URLs through `handlers`; the
    /// cluster ID and the request timeout come from the node's configuration.
    pub fn new(
        node: NodeHandle,
        handlers: Arc<dyn PeerHandlers>,
        dialer: PeerDialer,
    ) -> LeaderForwarder {
        LeaderForwarder {
            node,
            handlers,
            dialer,
            channel: Arc::new(Mutex::new(None)),
            warned_at: Arc::new(Mutex::new(None)),
        }
    }

    /// Renews lease `id` on the leader; returns the TTL in seconds, 0 when the lease does not
    /// exist.
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ForwardError> {
        let cluster_id = self.node.config().cluster_id;
        let answer = self
            .call("LeaseRenew", move |mut client, timeout| async move {
                let mut request = tonic::Request::new(LeaseRenewRequest { cluster_id, id });
                request.set_timeout(timeout);
                client.lease_renew(request).await
            })
            .await?;
        Ok(answer.ttl)
    }

    /// Lease `id`'s remaining TTL (and its keys, when asked) as the leader sees it.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveAnswer, ForwardError> {
        let cluster_id = self.node.config().cluster_id;
        self.call("LeaseTimeToLive", move |mut client, timeout| async move {
            let mut request = tonic::Request::new(LeaseTimeToLiveQuery {
                cluster_id,
                id,
                keys,
            });
            request.set_timeout(timeout);
            client.lease_time_to_live(request).await
        })
        .await
    }

    /// Has the leader run a client's membership change; returns the member added (for an add)
    /// and the member list after the change. The leader's refusal comes back as
    /// [`ForwardError::Refused`] with etcd's code and message.
    pub async fn member_change(
        &self,
        change: member_change_request::Change,
    ) -> Result<MemberChangeResponse, ForwardError> {
        let cluster_id = self.node.config().cluster_id;
        let response = self
            .call_with(
                "MemberChange",
                Retry::NotLeader,
                move |mut client, timeout| {
                    let mut request = tonic::Request::new(MemberChangeRequest {
                        cluster_id,
                        change: Some(change.clone()),
                    });
                    request.set_timeout(timeout);
                    async move { client.member_change(request).await }
                },
            )
            .await?;
        match response.refusal {
            Some(refusal) => Err(ForwardError::Refused {
                code: refusal.code,
                message: refusal.message,
            }),
            None => Ok(response),
        }
    }

    /// Runs `attempt` against the current leader until it succeeds or the request timeout runs
    /// out. `attempt` gets a client and the time left.
    async fn call<T, F, Fut>(&self, rpc: &'static str, attempt: F) -> Result<T, ForwardError>
    where
        F: FnMut(PeerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(rpc, Retry::Always, attempt).await
    }

    /// [`LeaderForwarder::call`], making failed attempts again only as `retry` allows.
    async fn call_with<T, F, Fut>(
        &self,
        rpc: &'static str,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, ForwardError>
    where
        F: FnMut(PeerClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.node.config().request_timeout;
        let mut url_index = 0usize;
        let mut last_error: Option<String> = None;
        loop {
            let status = self.node.status();
            if status.leader_id != 0 && status.leader_id == status.member_id {
                return Err(ForwardError::LocalLeader);
            }
            if status.leader_id != 0 {
                match self.channel_to(status.leader_id, url_index) {
                    Ok(channel) => {
                        let client = PeerClient::new(channel).max_decoding_message_size(usize::MAX);
                        let left = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout_at(deadline, attempt(client, left)).await {
                            Ok(Ok(response)) => return Ok(response.into_inner()),
                            Ok(Err(status_error)) => {
                                // "Not leader" means our view of the leader is stale, not that
                                // the connection is bad: keep it.
                                let stale_leader =
                                    status_error.code() == tonic::Code::FailedPrecondition;
                                if !stale_leader {
                                    self.forget(status.leader_id);
                                    url_index += 1;
                                }
                                if !stale_leader && retry == Retry::NotLeader {
                                    tracing::warn!(
                                        rpc,
                                        leader = %hex(status.leader_id),
                                        error = %status_error,
                                        "request forwarded to the leader failed; not retried, it may have taken effect"
                                    );
                                    return Err(ForwardError::Timeout);
                                }
                                tracing::debug!(
                                    rpc,
                                    leader = %hex(status.leader_id),
                                    error = %status_error,
                                    "request forwarded to the leader failed; retrying"
                                );
                                last_error = Some(status_error.to_string());
                            }
                            Err(_) => break,
                        }
                    }
                    Err(reason) => last_error = Some(reason),
                }
            }
            if Instant::now() + RETRY_INTERVAL >= deadline {
                break;
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
        let leader_id = self.node.status().leader_id;
        if leader_id == 0 {
            tracing::debug!(rpc, "no leader to forward to before the request timeout");
            return Err(ForwardError::NoLeader);
        }
        let last_error = last_error.as_deref().unwrap_or("none");
        if self.should_warn() {
            tracing::warn!(
                rpc,
                leader = %hex(leader_id),
                last_error,
                "the leader did not answer a forwarded request in time"
            );
        } else {
            tracing::debug!(
                rpc,
                leader = %hex(leader_id),
                last_error,
                "the leader did not answer a forwarded request in time"
            );
        }
        Err(ForwardError::Timeout)
    }

    /// The channel to `leader_id` over its peer URL number `url_index` (modulo their count),
    /// reusing the cached one when it matches.
    fn channel_to(&self, leader_id: u64, url_index: usize) -> Result<Channel, String> {
        let url = {
            let urls = self.handlers.peer_urls(leader_id);
            if urls.is_empty() {
                return Err(format!("no peer URLs known for leader {}", hex(leader_id)));
            }
            urls[url_index % urls.len()].clone()
        };
        let mut cached = self.cached();
        if let Some(cached) = cached.as_ref()
            && cached.leader_id == leader_id
            && cached.url == url
        {
            return Ok(cached.channel.clone());
        }
        let channel = self
            .dialer
            .connect_lazy(&url)
            .map_err(|e| format!("leader {}: {e}", hex(leader_id)))?;
        *cached = Some(LeaderChannel {
            leader_id,
            url,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Drops the cached channel if it leads to `leader_id` (its connection failed).
    fn forget(&self, leader_id: u64) {
        let mut cached = self.cached();
        if cached.as_ref().is_some_and(|c| c.leader_id == leader_id) {
            *cached = None;
        }
    }

    /// True at most once per [`WARN_INTERVAL`].
    fn should_warn(&self) -> bool {
        let mut warned_at = self
            .warned_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if warned_at.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
            return false;
        }
        *warned_at = Some(now);
        true
    }

    fn cached(&self) -> MutexGuard<'_, Option<LeaderChannel>> {
        self.channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
