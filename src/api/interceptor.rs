//! Checks every client gRPC call passes before it reaches a service, as etcd's interceptors do:
//!
//! - require-leader: a call carrying the `hasleader: true` metadata (clients set it with
//!   `WithRequireLeader`) fails at once with `etcdserver: no leader` when this member has no
//!   leader, instead of waiting for the request timeout. Open watch streams with that metadata
//!   are ended later by the watch service itself.
//! - learners: a learner serves only Status and (serializable) Range, and health checks; every
//!   other call gets `etcdserver: rpc not supported for learner`. Range itself refuses a
//!   linearizable read on a learner (the body is not decoded here).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::Response;
use axum::middleware::Next;

use super::{EtcdError, ServerCtx};

/// The calls a learner serves.
const LEARNER_PATHS: [&str; 3] = [
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.KV/Range",
    "/grpc.health.v1.Health/",
];

/// Whether the request asks for a leader.
fn requires_leader(request: &Request) -> bool {
    request
        .headers()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// The middleware: answers a leaderless require-leader call, or a call a learner does not serve,
/// with etcd's error.
pub async fn check(ctx: Arc<ServerCtx>, request: Request, next: Next) -> Response<Body> {
    if let Some(refusal) = refusal(&ctx, request.uri().path(), requires_leader(&request)) {
        return tonic::Status::from(refusal).into_http();
    }
    next.run(request).await
}

/// Why a call to the gRPC method `path` (`/etcdserverpb.KV/Put`) is refused before it reaches
/// its service, if it is: the JSON gateway, which calls the services in process, checks its
/// calls here too.
pub fn refusal(ctx: &ServerCtx, path: &str, require_leader: bool) -> Option<EtcdError> {
    if require_leader && ctx.node.status().leader_id == 0 {
        return Some(EtcdError::NoLeader);
    }
    if ctx.is_learner() && !LEARNER_PATHS.iter().any(|p| path.starts_with(p)) {
        return Some(EtcdError::NotSupportedForLearner);
    }
    None
}
