//! etcd's JSON gateway on the client URLs: `POST /v3/<service>/<call>` with a JSON body (and the
//! `/v3beta/` aliases etcd 3.4 still serves), answered in process by the same service
//! implementations the gRPC server runs, so authentication, permissions and errors are theirs.
//!
//! What etcd's grpc-gateway (v1) does, kept here:
//! - messages in the proto3 JSON mapping with etcd's marshaler options (`build.rs`): proto field
//!   names as declared (`cluster_id`, `dbSize`, `TTL`), 64-bit integers as strings, bytes as
//!   base64, enums by name, default values left out; requests also take the camelCase names,
//!   numbers for 64-bit integers and enum numbers, and unknown fields are ignored. An empty body or
//!   `null` is the empty request.
//! - a failed call answers `{"error":"<message>","message":"<message>","code":<gRPC code>}` with
//!   the HTTP status grpc-gateway v1 gives the code ([`http_status`]); a body that is not the
//!   request's JSON is code 3 (InvalidArgument), except as the first message of a bidirectional
//!   stream, which etcd's gateway reports as code 2 (Unknown).
//! - streams (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`,
//!   `/v3/election/observe`) answer one `{"result":{...}}` line per message. The body of a
//!   bidirectional stream is a sequence of JSON requests, sent as they arrive; when it ends, the
//!   service sees the client close its side (a watch goes on until the client goes away, a
//!   keep-alive stream ends). An error before the first message is the status's HTTP status with
//!   `{"error":{"grpc_code":..,"http_code":..,"message":..,"http_status":..}}`; after it, that
//!   object ends a 200 answer.
//! - the `Authorization` header (or `Grpc-Metadata-Token`) is the auth token, and
//!   `Grpc-Metadata-Hasleader: true` asks for a leader. A TLS client certificate's Common Name is
//!   never the user of a gateway call (etcd's gateway does not pass it on either).
//! - an unknown path under `/v3/` is `404 Not Found`, another method than POST `405`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, post};
use futures::{Stream, StreamExt};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status, Streaming};

use crate::api::ServerCtx;
use crate::api::auth::AuthService;
use crate::api::cluster::ClusterService;
use crate::api::election::ElectionService;
use crate::api::interceptor;
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::lock::LockService;
use crate::api::maintenance::MaintenanceService;
use crate::api::watch::{GRPC_OVERHEAD_BYTES, WatchService};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;

/// The path prefixes the gateway answers under: etcd 3.4 serves `/v3/` and still `/v3beta/`.
const PREFIXES: [&str; 2] = ["/v3", "/v3beta"];

/// The body of every JSON answer.
const JSON_CONTENT_TYPE: &str = "application/json";

/// A closure calling `$method` of the shared service `$svc` with the request it is given: the
/// shape [`Routes`] takes for a call.
macro_rules! call {
    ($svc:expr, $method:ident) => {{
        let svc = $svc.clone();
        move |request| {
            let svc = svc.clone();
            async move { svc.$method(request).await }
        }
    }};
}

/// The gateway to the KV, Watch, Lease, Cluster, Maintenance, Auth, Election and Lock services, with the paths
/// etcd serves them under; an unknown path under `/v3/` answers 404.
pub fn router(ctx: ServerCtx) -> Router {
    let kv = Arc::new(KvService::new(ctx.clone()));
    let watch = Arc::new(WatchService::new(ctx.clone()));
    let lease = Arc::new(LeaseService::new(ctx.clone()));
    let cluster = Arc::new(ClusterService::new(ctx.clone()));
    let maintenance = Arc::new(MaintenanceService::new(ctx.clone()));
    let auth = Arc::new(AuthService::new(ctx.clone()));
    let ctx_for_recipes = ctx.clone();
    let mut routes = Routes::new(ctx)
        .unary("/kv/range", "/etcdserverpb.KV/Range", call!(kv, range))
        .unary("/kv/put", "/etcdserverpb.KV/Put", call!(kv, put))
        .unary(
            "/kv/deleterange",
            "/etcdserverpb.KV/DeleteRange",
            call!(kv, delete_range),
        )
        .unary("/kv/txn", "/etcdserverpb.KV/Txn", call!(kv, txn))
        .unary(
            "/kv/compaction",
            "/etcdserverpb.KV/Compact",
            call!(kv, compact),
        )
        .bidi("/watch", "/etcdserverpb.Watch/Watch", call!(watch, watch))
        .unary(
            "/lease/grant",
            "/etcdserverpb.Lease/LeaseGrant",
            call!(lease, lease_grant),
        )
        .bidi(
            "/lease/keepalive",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            call!(lease, lease_keep_alive),
        );
    // etcd serves these three under both paths.
    for prefix in ["/lease", "/kv/lease"] {
        routes = routes
            .unary(
                &format!("{prefix}/revoke"),
                "/etcdserverpb.Lease/LeaseRevoke",
                call!(lease, lease_revoke),
            )
            .unary(
                &format!("{prefix}/timetolive"),
                "/etcdserverpb.Lease/LeaseTimeToLive",
                call!(lease, lease_time_to_live),
            )
            .unary(
                &format!("{prefix}/leases"),
                "/etcdserverpb.Lease/LeaseLeases",
                call!(lease, lease_leases),
            );
    }
    routes
        .unary(
            "/cluster/member/add",
            "/etcdserverpb.Cluster/MemberAdd",
            call!(cluster, member_add),
        )
        .unary(
            "/cluster/member/remove",
            "/etcdserverpb.Cluster/MemberRemove",
            call!(cluster, member_remove),
        )
        .unary(
            "/cluster/member/update",
            "/etcdserverpb.Cluster/MemberUpdate",
            call!(cluster, member_update),
        )
        .unary(
            "/cluster/member/list",
            "/etcdserverpb.Cluster/MemberList",
            call!(cluster, member_list),
        )
        .unary(
            "/cluster/member/promote",
            "/etcdserverpb.Cluster/MemberPromote",
            call!(cluster, member_promote),
        )
        .unary(
            "/maintenance/alarm",
            "/etcdserverpb.Maintenance/Alarm",
            call!(maintenance, alarm),
        )
        .unary(
            "/maintenance/status",
            "/etcdserverpb.Maintenance/Status",
            call!(maintenance, status),
        )
        .unary(
            "/maintenance/defragment",
            "/etcdserverpb.Maintenance/Defragment",
            call!(maintenance, defragment),
        )
        .unary(
            "/maintenance/hash",
            "/etcdserverpb.Maintenance/Hash",
            call!(maintenance, hash),
        )
        .unary(
            "/maintenance/hashkv",
            "/etcdserverpb.Maintenance/HashKV",
            call!(maintenance, hash_kv),
        )
        .server_stream(
            "/maintenance/snapshot",
            "/etcdserverpb.Maintenance/Snapshot",
            call!(maintenance, snapshot),
        )
        .unary(
            "/maintenance/transfer-leadership",
            "/etcdserverpb.Maintenance/MoveLeader",
            call!(maintenance, move_leader),
        )
        .unary(
            "/maintenance/downgrade",
            "/etcdserverpb.Maintenance/Downgrade",
            call!(maintenance, downgrade),
        )
        .unary(
            "/auth/enable",
            "/etcdserverpb.Auth/AuthEnable",
            call!(auth, auth_enable),
        )
        .unary(
            "/auth/disable",
            "/etcdserverpb.Auth/AuthDisable",
            call!(auth, auth_disable),
        )
        .unary(
            "/auth/status",
            "/etcdserverpb.Auth/AuthStatus",
            call!(auth, auth_status),
        )
        .unary(
            "/auth/authenticate",
            "/etcdserverpb.Auth/Authenticate",
            call!(auth, authenticate),
        )
        .unary(
            "/auth/user/add",
            "/etcdserverpb.Auth/UserAdd",
            call!(auth, user_add),
        )
        .unary(
            "/auth/user/get",
            "/etcdserverpb.Auth/UserGet",
            call!(auth, user_get),
        )
        .unary(
            "/auth/user/list",
            "/etcdserverpb.Auth/UserList",
            call!(auth, user_list),
        )
        .unary(
            "/auth/user/delete",
            "/etcdserverpb.Auth/UserDelete",
            call!(auth, user_delete),
        )
        .unary(
            "/auth/user/changepw",
            "/etcdserverpb.Auth/UserChangePassword",
            call!(auth, user_change_password),
        )
        .unary(
            "/auth/user/grant",
            "/etcdserverpb.Auth/UserGrantRole",
            call!(auth, user_grant_role),
        )
        .unary(
            "/auth/user/revoke",
            "/etcdserverpb.Auth/UserRevokeRole",
            call!(auth, user_revoke_role),
        )
        .unary(
            "/auth/role/add",
            "/etcdserverpb.Auth/RoleAdd",
            call!(auth, role_add),
        )
        .unary(
            "/auth/role/get",
            "/etcdserverpb.Auth/RoleGet",
            call!(auth, role_get),
        )
        .unary(
            "/auth/role/list",
            "/etcdserverpb.Auth/RoleList",
            call!(auth, role_list),
        )
        .unary(
            "/auth/role/delete",
            "/etcdserverpb.Auth/RoleDelete",
            call!(auth, role_delete),
        )
        .unary(
            "/auth/role/grant",
            "/etcdserverpb.Auth/RoleGrantPermission",
            call!(auth, role_grant_permission),
        )
        .unary(
            "/auth/role/revoke",
            "/etcdserverpb.Auth/RoleRevokePermission",
            call!(auth, role_revoke_permission),
        )
        .build()
        .merge(election_router(
            ctx_for_recipes.clone(),
            ElectionService::new(ctx_for_recipes.clone()),
        ))
        .merge(lock_router(
            ctx_for_recipes.clone(),
            LockService::new(ctx_for_recipes),
        ))
        .merge(not_found_routes())
}

/// The gateway to an Election service: `/v3/election/{campaign,proclaim,leader,observe,resign}`.
fn election_router<E: Election>(ctx: ServerCtx, service: E) -> Router {
    let election = Arc::new(service);
    Routes::new(ctx)
        .unary(
            "/election/campaign",
            "/v3electionpb.Election/Campaign",
            call!(election, campaign),
        )
        .unary(
            "/election/proclaim",
            "/v3electionpb.Election/Proclaim",
            call!(election, proclaim),
        )
        .unary(
            "/election/leader",
            "/v3electionpb.Election/Leader",
            call!(election, leader),
        )
        .server_stream(
            "/election/observe",
            "/v3electionpb.Election/Observe",
            call!(election, observe),
        )
        .unary(
            "/election/resign",
            "/v3electionpb.Election/Resign",
            call!(election, resign),
        )
        .build()
}

/// The gateway to a Lock service: `/v3/lock/{lock,unlock}`.
fn lock_router<L: Lock>(ctx: ServerCtx, service: L) -> Router {
    let lock = Arc::new(service);
    Routes::new(ctx)
        .unary("/lock/lock", "/v3lockpb.Lock/Lock", call!(lock, lock))
        .unary("/lock/unlock", "/v3lockpb.Lock/Unlock", call!(lock, unlock))
        .build()
}

/// Any other path under a gateway prefix: grpc-gateway's `404 Not Found`.
fn not_found_routes() -> Router {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router.route(&format!("{prefix}/{{*rest}}"), any(not_found));
    }
    router
}

async fn not_found() -> Response {
    plain_text(StatusCode::NOT_FOUND, "Not Found\n")
}

async fn method_not_allowed() -> Response {
    plain_text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

/// Go's `http.Error`: text with `nosniff`.
fn plain_text(status: StatusCode, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Builds the gateway's routes: each call under every prefix, POST only.
struct Routes {
    ctx: ServerCtx,
    router: Router,
}

impl Routes {
    fn new(ctx: ServerCtx) -> Routes {
        Routes {
            ctx,
            router: Router::new(),
        }
    }

    fn add(mut self, path: &str, method: MethodRouter) -> Routes {
        let method = method.fallback(method_not_allowed);
        for prefix in PREFIXES {
            self.router = self
                .router
                .route(&format!("{prefix}{path}"), method.clone());
        }
        self
    }

    /// A unary call: one JSON request, one JSON answer.
    fn unary<Req, Resp, F, Fut>(self, path: &str, grpc_method: &'static str, call: F) -> Routes
    where
        Req: DeserializeOwned + Message + Default + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let ctx = ctx.clone();
            let call = call.clone();
            async move {
                let request = match unary_request::<Req>(&ctx, grpc_method, &headers, &body) {
                    Ok(request) => request,
                    Err(status) => return error_response(&status),
                };
                match call(request).await {
                    Ok(response) => json_response(&response.into_inner()),
                    Err(status) => error_response(&status),
                }
            }
        };
        self.add(path, post(handler))
    }

    /// A call answering a stream: one JSON request, a line per message.
    fn server_stream<Req, Resp, S, F, Fut>(
        self,
        path: &str,
        grpc_method: &'static str,
        call: F,
    ) -> Routes
    where
        Req: DeserializeOwned + Message + Default + Send + 'static,
        Resp: Serialize + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<S>, Status>> + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let ctx = ctx.clone();
            let call = call.clone();
            async move {
                let request = match unary_request::<Req>(&ctx, grpc_method, &headers, &body) {
                    Ok(request) => request,
                    Err(status) => return error_response(&status),
                };
                match call(request).await {
                    Ok(response) => stream_response(response.into_inner()).await,
                    Err(status) => stream_error_response(&status),
                }
            }
        };
        self.add(path, post(handler))
    }

    /// A bidirectional stream: the body's JSON requests in, a line per message out.
    fn bidi<Req, Resp, S, F, Fut>(self, path: &str, grpc_method: &'static str, call: F) -> Routes
    where
        Req: DeserializeOwned + Message + Default + Send + 'static,
        Resp: Serialize + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        F: Fn(tonic::Request<Streaming<Req>>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<S>, Status>> + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let handler = move |headers: HeaderMap, body: Body| {
            let ctx = ctx.clone();
            let call = call.clone();
            async move {
                let limit_bytes = message_bytes_max(&ctx);
                let mut messages = JsonMessages::new(body.into_data_stream(), limit_bytes);
                // etcd's gateway reads the first request before it calls the service, and
                // answers a bad one with code Unknown.
                let first = match messages.next::<Req>().await {
                    Some(Ok(first)) => Some(first),
                    Some(Err(reason)) => return error_response(&Status::unknown(reason)),
                    None => None,
                };
                if let Err(status) = admit(&ctx, grpc_method, &headers) {
                    return error_response(&status);
                }
                let inbound = Streaming::new_request(
                    tonic_prost::ProstDecoder::<Req>::default(),
                    Body::from_stream(grpc_frames(first, messages)),
                    None,
                    Some(limit_bytes),
                );
                match call(grpc_request(&headers, inbound)).await {
                    Ok(response) => stream_response(response.into_inner()).await,
                    Err(status) => stream_error_response(&status),
                }
            }
        };
        self.add(path, post(handler))
    }

    /// The routes, with a body limit that admits the largest request the gRPC server does in
    /// base64.
    fn build(self) -> Router {
        let limit_bytes = message_bytes_max(&self.ctx);
        self.router
            .layer(DefaultBodyLimit::max(limit_bytes.saturating_mul(2)))
    }
}

/// The largest request message the gRPC server accepts: `--max-request-bytes` plus gRPC's
/// overhead.
fn message_bytes_max(ctx: &ServerCtx) -> usize {
    usize::try_from(ctx.config.request_bytes_max)
        .unwrap_or(usize::MAX)
        .saturating_add(GRPC_OVERHEAD_BYTES)
}

/// The request of a unary or server-streaming call, decoded and checked as the gRPC server would.
fn unary_request<Req>(
    ctx: &ServerCtx,
    grpc_method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<tonic::Request<Req>, Status>
where
    Req: DeserializeOwned + Message + Default,
{
    let message = match first_message::<Req>(body, true) {
        Parsed::Message(message, _) => message,
        Parsed::Nothing | Parsed::Incomplete => Req::default(),
        Parsed::Invalid(reason) => return Err(Status::invalid_argument(reason)),
    };
    let size_bytes = message.encoded_len();
    let limit_bytes = message_bytes_max(ctx);
    if size_bytes > limit_bytes {
        // grpc-go's refusal, as the gRPC server gives it (`api/oversize.rs`).
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({size_bytes} vs. {limit_bytes})"
        )));
    }
    admit(ctx, grpc_method, headers)?;
    Ok(grpc_request(headers, message))
}

/// The checks the gRPC server's interceptor makes before a call reaches its service.
fn admit(ctx: &ServerCtx, grpc_method: &str, headers: &HeaderMap) -> Result<(), Status> {
    let require_leader = metadata(headers, "hasleader") == Some("true");
    match interceptor::refusal(ctx, grpc_method, require_leader) {
        Some(refusal) => Err(refusal.into()),
        None => Ok(()),
    }
}

/// The value of the gRPC metadata `key` a gateway request carries, as a `Grpc-Metadata-<key>`
/// header.
fn metadata<'a>(headers: &'a HeaderMap, key: &str) -> Option<&'a str> {
    headers
        .get(format!("grpc-metadata-{key}"))
        .and_then(|value| value.to_str().ok())
}

/// A gRPC request carrying `message` and the metadata the services read: `token` (etcd takes
/// the `token` metadata first, then `authorization`, which its gateway fills from the
/// `Authorization` header) and `hasleader`. Nothing of the connection goes along, so a TLS
/// client certificate names no user here.
fn grpc_request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = metadata(headers, "token").or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
    });
    for (key, value) in [
        ("token", token),
        ("hasleader", metadata(headers, "hasleader")),
    ] {
        if let Some(value) = value.and_then(|v| MetadataValue::try_from(v).ok()) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// What the start of a buffer holds.
#[derive(Debug)]
enum Parsed<T> {
    /// A message (JSON `null` is the empty one) and the bytes it took.
    Message(T, usize),
    /// Nothing but white space.
    Nothing,
    /// The start of a message; more bytes are to come.
    Incomplete,
    /// Not a message of this type.
    Invalid(String),
}

/// The first JSON message in `buf`; with `complete`, no more bytes will follow.
fn first_message<T: DeserializeOwned + Default>(buf: &[u8], complete: bool) -> Parsed<T> {
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Option<T>>();
    match values.next() {
        None => Parsed::Nothing,
        Some(Ok(message)) => Parsed::Message(message.unwrap_or_default(), values.byte_offset()),
        Some(Err(e)) if e.is_eof() && !complete => Parsed::Incomplete,
        Some(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

/// The JSON messages of a request body, read as its bytes arrive.
struct JsonMessages {
    body: BodyDataStream,
    buf: Vec<u8>,
    ended: bool,
    /// Bound on one message's JSON (the body as a whole is not bounded: a watch stream goes on).
    message_bytes_max: usize,
}

impl JsonMessages {
    fn new(body: BodyDataStream, message_bytes_max: usize) -> JsonMessages {
        JsonMessages {
            body,
            buf: Vec::new(),
            ended: false,
            message_bytes_max,
        }
    }

    /// The next message; `None` once the body ended.
    async fn next<T: DeserializeOwned + Default>(&mut self) -> Option<Result<T, String>> {
        loop {
            match first_message::<T>(&self.buf, self.ended) {
                Parsed::Message(message, used) => {
                    self.buf.drain(..used);
                    return Some(Ok(message));
                }
                Parsed::Invalid(reason) => return Some(Err(reason)),
                Parsed::Nothing if self.ended => return None,
                Parsed::Nothing | Parsed::Incomplete => {}
            }
            // The JSON of a message is at most twice its encoding (base64 and field names).
            if self.buf.len() > self.message_bytes_max.saturating_mul(2) {
                return Some(Err(format!(
                    "request message larger than {} bytes",
                    self.message_bytes_max
                )));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e.to_string())),
                None => self.ended = true,
            }
        }
    }
}

/// `first` and the messages after it in gRPC's framing, until the body ends or holds something
/// that is not a message (then etcd's gateway closes its side of the stream too).
fn grpc_frames<T>(
    first: Option<T>,
    rest: JsonMessages,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static
where
    T: DeserializeOwned + Message + Default + Send + 'static,
{
    let rest = futures::stream::unfold((first.is_some(), rest), |(started, mut rest)| async move {
        if !started {
            return None;
        }
        match rest.next::<T>().await {
            Some(Ok(message)) => Some((message, (true, rest))),
            Some(Err(reason)) => {
                tracing::debug!(%reason, "gateway stream request is not JSON; closing its side");
                None
            }
            None => None,
        }
    });
    futures::stream::iter(first)
        .chain(rest)
        .map(|message| Ok(grpc_frame(&message)))
}

/// One message in gRPC's length-prefixed framing, uncompressed.
fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    let len = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&encoded);
    Bytes::from(frame)
}

/// grpc-gateway v1's HTTP status for a gRPC code (`runtime.HTTPStatusFromCode`).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The answer to a failed unary call (grpc-gateway v1's `DefaultHTTPError` body).
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// A stream's failure (grpc-gateway v1's `StreamError`, under `"error"`).
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

#[derive(Serialize)]
struct StreamErrorChunk<'a> {
    error: StreamError<'a>,
}

/// One message of a stream.
#[derive(Serialize)]
struct ResultChunk<'a, T> {
    result: &'a T,
}

fn error_response(status: &Status) -> Response {
    tracing::debug!(code = ?status.code(), message = status.message(), "gateway call failed");
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    json_bytes_response(http_status(status.code()), to_json(&body))
}

fn json_response(message: &impl Serialize) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => json_bytes_response(StatusCode::OK, body),
        Err(e) => error_response(&Status::internal(e.to_string())),
    }
}

fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("structs of strings and numbers always serialize")
}

/// A stream's error object (no newline follows it, as in etcd).
fn stream_error_chunk(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    to_json(&StreamErrorChunk {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    })
}

fn stream_error_response(status: &Status) -> Response {
    tracing::debug!(code = ?status.code(), message = status.message(), "gateway stream failed");
    json_bytes_response(http_status(status.code()), stream_error_chunk(status))
}

/// One message of a stream as a line, or the error that ends it.
fn result_line<T: Serialize>(message: &T) -> Result<Vec<u8>, Status> {
    let mut line = serde_json::to_vec(&ResultChunk { result: message })
        .map_err(|e| Status::internal(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Streams `responses` as lines. The status line waits for the first message, so a call that
/// fails at once answers with its error's HTTP status, as etcd's gateway does.
async fn stream_response<S, T>(responses: S) -> Response
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    let mut responses = Box::pin(responses);
    let first = match responses.next().await {
        None => return json_bytes_response(StatusCode::OK, Vec::new()),
        Some(first) => first.and_then(|message| result_line(&message)),
    };
    let first = match first {
        Ok(line) => line,
        Err(status) => return stream_error_response(&status),
    };
    let rest = futures::stream::unfold(Some(responses), |responses| async move {
        let mut responses = responses?;
        let chunk = match responses.next().await? {
            Ok(message) => result_line(&message),
            Err(status) => Err(status),
        };
        Some(match chunk {
            Ok(line) => (line, Some(responses)),
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "gateway stream ended by an error");
                (stream_error_chunk(&status), None)
            }
        })
    });
    let body = futures::stream::iter([first])
        .chain(rest)
        .map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{RangeRequest, ResponseHeader, WatchRequest, watch_request};

    #[test]
    fn requests_take_either_field_name_strings_or_numbers_and_ignore_unknown_fields() {
        let body = br#"{"key":"Zm9v","range_end":"Zm9w","limit":"3","revision":7,"keysOnly":true,"sort_order":"DESCEND","no_such_field":[1]}"#;
        let Parsed::Message(req, _) = first_message::<RangeRequest>(body, true) else {
            panic!("not parsed");
        };
        assert_eq!(req.key, b"foo");
        assert_eq!(req.range_end, b"fop");
        assert_eq!((req.limit, req.revision), (3, 7));
        assert!(req.keys_only);
        assert_eq!(req.sort_order, 2);
        assert!(matches!(
            first_message::<RangeRequest>(b"null", true),
            Parsed::Message(RangeRequest { limit: 0, .. }, 4)
        ));
        assert!(matches!(
            first_message::<RangeRequest>(b"  \n", true),
            Parsed::Nothing
        ));
        assert!(matches!(
            first_message::<RangeRequest>(br#"{"key":"#, false),
            Parsed::Incomplete
        ));
        assert!(matches!(
            first_message::<RangeRequest>(br#"{"key":"#, true),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            first_message::<RangeRequest>(br#"{"limit":1.5}"#, true),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn messages_follow_one_another_in_a_body() {
        let body = br#"{"create_request":{"key":"YQ=="}} {"progress_request":{}}"#;
        let Parsed::Message(first, used) = first_message::<WatchRequest>(body, true) else {
            panic!("not parsed");
        };
        assert!(matches!(
            first.request_union,
            Some(watch_request::RequestUnion::CreateRequest(_))
        ));
        let Parsed::Message(second, _) = first_message::<WatchRequest>(&body[used..], true) else {
            panic!("not parsed");
        };
        assert!(matches!(
            second.request_union,
            Some(watch_request::RequestUnion::ProgressRequest(_))
        ));
    }

    #[test]
    fn responses_use_etcds_names_and_leave_defaults_out() {
        let header = ResponseHeader {
            cluster_id: 3556172557997394135,
            member_id: 17496614320493254894,
            revision: 2,
            raft_term: 0,
        };
        assert_eq!(
            String::from_utf8(to_json(&header)).unwrap(),
            r#"{"cluster_id":"3556172557997394135","member_id":"17496614320493254894","revision":"2"}"#
        );
    }

    #[test]
    fn errors_are_grpc_gateway_v1s() {
        let status = Status::failed_precondition("etcdserver: root user does not exist");
        let response = error_response(&status);
        assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            String::from_utf8(stream_error_chunk(&Status::unknown(
                "auth: user name is empty"
            )))
            .unwrap(),
            r#"{"error":{"grpc_code":2,"http_code":500,"message":"auth: user name is empty","http_status":"Internal Server Error"}}"#
        );
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
    }
}
