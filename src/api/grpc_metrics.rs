//! go-grpc-prometheus's server metrics for every client gRPC call (`grpc_server_started_total`,
//! `grpc_server_handled_total` with `grpc_code`, `grpc_server_msg_{received,sent}_total`,
//! `grpc_server_handling_seconds`; created at zero for the methods etcd creates them for) and
//! etcd's client counters (traffic, `etcd_server_client_requests_total`), recorded by one
//! middleware in front of every service: it counts the gRPC messages (5-byte length prefixes)
//! and bytes in both bodies and reads the status from the response headers or trailers.
//!
//! With tracing on, each call is also a span (`grpc.request`, with the method and this member's
//! ID; the apply thread records the revision) whose `reply` child lasts until the response body
//! has been sent.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Response};
use axum::middleware::Next;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::Instrument as _;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{GrpcLabels, Metrics};

/// gRPC status codes by number, named as grpc-go names them (the `grpc_code` label values).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The methods whose series etcd 3.4 creates at zero on start (go-grpc-prometheus's
/// `InitializeMetrics` over the services registered on its gRPC server; Election and Lock are
/// served through a client adapter there, so they only appear once called).
const INITIALIZED_METHODS: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.Auth",
        &[
            "AuthDisable",
            "AuthEnable",
            "Authenticate",
            "RoleAdd",
            "RoleDelete",
            "RoleGet",
            "RoleGrantPermission",
            "RoleList",
            "RoleRevokePermission",
            "UserAdd",
            "UserChangePassword",
            "UserDelete",
            "UserGet",
            "UserGrantRole",
            "UserList",
            "UserRevokeRole",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberList",
            "MemberPromote",
            "MemberRemove",
            "MemberUpdate",
        ],
    ),
    (
        "etcdserverpb.KV",
        &["Compact", "DeleteRange", "Put", "Range", "Txn"],
    ),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseKeepAlive",
            "LeaseLeases",
            "LeaseRevoke",
            "LeaseTimeToLive",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Defragment",
            "Hash",
            "HashKV",
            "MoveLeader",
            "Snapshot",
            "Status",
        ],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// Methods oxetcd serves beyond [`INITIALIZED_METHODS`], whose series appear once called.
const OTHER_METHODS: &[(&str, &[&str])] = &[
    (
        "v3electionpb.Election",
        &["Campaign", "Leader", "Observe", "Proclaim", "Resign"],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
];

/// The series one call of a method touches, resolved once: a call then costs no label strings
/// and no family lookups (those were 3% of the server's CPU with 64 clients putting).
struct MethodSeries {
    labels: GrpcLabels,
    started: Counter,
    received: Counter,
    sent: Counter,
    /// Created when the first call ends, as go-grpc-prometheus does.
    handling: OnceLock<Histogram>,
    /// `grpc_server_handled_total` by code number, created on first use (every code up front
    /// for etcd's initialized methods, see [`Recorder::new`]).
    handled: [OnceLock<Counter>; CODE_NAMES.len()],
}

impl MethodSeries {
    fn new(metrics: &Metrics, service: &str, method: &str) -> MethodSeries {
        let labels: GrpcLabels = [
            ("grpc_type", grpc_type(service, method).to_owned()),
            ("grpc_service", service.to_owned()),
            ("grpc_method", method.to_owned()),
        ];
        MethodSeries {
            started: metrics.grpc_started.get_or_create_owned(&labels),
            received: metrics.grpc_msg_received.get_or_create_owned(&labels),
            sent: metrics.grpc_msg_sent.get_or_create_owned(&labels),
            handling: OnceLock::new(),
            handled: std::array::from_fn(|_| OnceLock::new()),
            labels,
        }
    }

    fn handling(&self, metrics: &Metrics) -> &Histogram {
        self.handling.get_or_init(|| {
            metrics
                .grpc_handling_seconds
                .get_or_create_owned(&self.labels)
        })
    }

    fn handled(&self, metrics: &Metrics, code: usize) -> &Counter {
        self.handled[code].get_or_init(|| {
            let [t, s, m] = self.labels.clone();
            metrics.grpc_handled.get_or_create_owned(&[
                t,
                s,
                m,
                ("grpc_code", CODE_NAMES[code].to_owned()),
            ])
        })
    }
}

/// What the middleware records into: the metrics, and the series of every method oxetcd
/// serves by its path (`/etcdserverpb.KV/Put`): etcd's initialized methods resolved at start,
/// the others at their first call (so they have no series until called, as in etcd). Other paths are looked up per
/// call and not kept here, so unknown paths cannot grow it.
pub struct Recorder {
    metrics: Arc<Metrics>,
    by_path: HashMap<String, OnceLock<Arc<MethodSeries>>>,
}

impl Recorder {
    /// The recorder of every served method. The series etcd has on a fresh member are created
    /// at zero here: `grpc_server_started_total`, `grpc_server_msg_{received,sent}_total` for
    /// every method of [`INITIALIZED_METHODS`], and `grpc_server_handled_total` for each of those
    /// with every code, so a rate over them starts from zero instead of missing the first calls.
    pub fn new(metrics: Arc<Metrics>) -> Recorder {
        let mut by_path = HashMap::new();
        for (initialized, services) in [(true, INITIALIZED_METHODS), (false, OTHER_METHODS)] {
            for (service, methods) in services {
                for method in *methods {
                    let slot = OnceLock::new();
                    if initialized {
                        let series = MethodSeries::new(&metrics, service, method);
                        for code in 0..CODE_NAMES.len() {
                            series.handled(&metrics, code);
                        }
                        let _ = slot.set(Arc::new(series));
                    }
                    by_path.insert(format!("/{service}/{method}"), slot);
                }
            }
        }
        Recorder { metrics, by_path }
    }

    fn series(&self, path: &str, service: &str, method: &str) -> Arc<MethodSeries> {
        let new = || Arc::new(MethodSeries::new(&self.metrics, service, method));
        match self.by_path.get(path) {
            Some(series) => series.get_or_init(new).clone(),
            None => new(),
        }
    }
}

/// The streaming methods of the services oxetcd serves; everything else is unary.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("v3electionpb.Election", "Observe")
        | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (service.contains('.') && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Code numbers of [`CODE_NAMES`] the middleware sets itself.
const OK: usize = 0;
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// The `grpc-status` of `headers` as an index into [`CODE_NAMES`] (Unknown for a number
/// outside it).
fn status_code(headers: &HeaderMap) -> Option<usize> {
    let code: usize = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(if code < CODE_NAMES.len() {
        code
    } else {
        UNKNOWN
    })
}

/// The middleware. `trace_member` is this member's ID when tracing is on: each call then also
/// becomes a `grpc.request` span whose `reply` child lasts until the response body is sent.
pub async fn record(
    recorder: Arc<Recorder>,
    trace_member: Option<u64>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let is_grpc = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let Some((service, method)) = split_path(request.uri().path()).filter(|_| is_grpc) else {
        return next.run(request).await;
    };
    let series = recorder.series(request.uri().path(), service, method);
    let span = trace_member.map(|member_id| {
        tracing::info_span!(
            target: crate::telemetry::TRACE_TARGET,
            "grpc.request",
            otel.name = %format!("{service}/{method}"),
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            member_id = %format!("{member_id:x}"),
            revision = tracing::field::Empty,
        )
    });
    let started = Instant::now();
    series.started.inc();
    let metrics = &recorder.metrics;
    // etcd's interceptors count every call and stream by the client's declared API version.
    let client_api_version = request
        .headers()
        .get("client-api-version")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "unknown".to_owned(), str::to_owned);
    let call_type = if series.labels[0].1 == "unary" {
        "unary"
    } else {
        "stream"
    };
    metrics
        .client_requests
        .get_or_create(&[
            ("type", call_type.to_owned()),
            ("client_api_version", client_api_version),
        ])
        .inc();
    let (parts, body) = request.into_parts();
    let received = Counted::new(
        body,
        metrics.client_received_bytes.clone(),
        series.received.clone(),
    );
    let request = Request::from_parts(parts, Body::new(received));
    let response = match &span {
        Some(span) => next.run(request).instrument(span.clone()).await,
        None => next.run(request).await,
    };
    let (parts, body) = response.into_parts();
    let mut sent = Counted::new(body, metrics.client_sent_bytes.clone(), series.sent.clone());
    let mut handled = Handled {
        recorder: recorder.clone(),
        series,
        started,
        done: false,
    };
    if let Some(code) = status_code(&parts.headers) {
        // Trailers-only response: the call ended with its headers.
        handled.finish(code);
    }
    sent.handled = Some(handled);
    sent.spans = span.map(|request| {
        let reply =
            tracing::info_span!(target: crate::telemetry::TRACE_TARGET, parent: &request, "reply");
        (reply, request)
    });
    Response::from_parts(parts, Body::new(sent))
}

/// Records `grpc_server_handled_total` and the handling time once per call.
struct Handled {
    recorder: Arc<Recorder>,
    series: Arc<MethodSeries>,
    started: Instant,
    done: bool,
}

impl Handled {
    /// `code` indexes [`CODE_NAMES`].
    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.series.handled(&self.recorder.metrics, code).inc();
        self.series
            .handling(&self.recorder.metrics)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        // The response body went away before its trailers: the client cancelled.
        self.finish(CANCELED);
    }
}

/// A body that counts bytes and gRPC messages as they pass; the response's also ends the call
/// (handled status, traced spans).
struct Counted {
    inner: Body,
    bytes: Counter,
    messages: Counter,
    /// Bytes of the current message prefix seen so far, and bytes of message left to skip.
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: u64,
    handled: Option<Handled>,
    /// The `reply` span and its `grpc.request` parent (dropped in that order), entered while
    /// sending so both end after the last frame went out.
    spans: Option<(tracing::Span, tracing::Span)>,
}

impl Counted {
    fn new(inner: Body, bytes: Counter, messages: Counter) -> Counted {
        Counted {
            inner,
            bytes,
            messages,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            handled: None,
            spans: None,
        }
    }

    /// Counts the bytes and the messages that start in `data`.
    fn count(&mut self, mut data: &[u8]) {
        self.bytes.inc_by(data.len() as u64);
        let mut messages = 0u64;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len() as u64) as usize;
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                messages += 1;
                self.remaining = u64::from(u32::from_be_bytes(
                    self.prefix[1..5].try_into().expect("four prefix bytes"),
                ));
                self.prefix_len = 0;
            }
        }
        if messages > 0 {
            self.messages.inc_by(messages);
        }
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let spans = self.spans.clone();
        // Entered parent first; the guards drop in reverse, so the reply exits first.
        let _request = spans.as_ref().map(|(_, request)| request.enter());
        let _reply = spans.as_ref().map(|(reply, _)| reply.enter());
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.count(&data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(UNKNOWN);
                    if let Some(h) = self.handled.as_mut() {
                        h.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(h) = self.handled.as_mut() {
                    h.finish(UNKNOWN);
                }
            }
            Poll::Ready(None) => {
                if let Some(h) = self.handled.as_mut() {
                    // Ended without trailers (a plain HTTP response): nothing failed.
                    h.finish(OK);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_types() {
        assert_eq!(
            split_path("/etcdserverpb.KV/Range"),
            Some(("etcdserverpb.KV", "Range"))
        );
        assert_eq!(split_path("/health"), None);
        assert_eq!(split_path("/metrics"), None);
        assert_eq!(grpc_type("etcdserverpb.Watch", "Watch"), "bidi_stream");
        assert_eq!(
            grpc_type("etcdserverpb.Maintenance", "Snapshot"),
            "server_stream"
        );
        assert_eq!(grpc_type("etcdserverpb.KV", "Put"), "unary");
    }

    #[test]
    fn served_methods_resolve_once_and_unknown_paths_are_not_kept() {
        let recorder = Recorder::new(Arc::new(Metrics::new()));
        let kept = recorder.by_path.len();
        let put = recorder.series("/etcdserverpb.KV/Put", "etcdserverpb.KV", "Put");
        let again = recorder.series("/etcdserverpb.KV/Put", "etcdserverpb.KV", "Put");
        assert!(Arc::ptr_eq(&put, &again));
        assert_eq!(put.labels[2].1, "Put");
        let odd = recorder.series("/x.Y/Z", "x.Y", "Z");
        assert_eq!(odd.labels[1].1, "x.Y");
        assert_eq!(recorder.by_path.len(), kept);
        assert!(!recorder.by_path.contains_key("/x.Y/Z"));
    }

    #[test]
    fn counts_messages_split_across_chunks() {
        let metrics = Arc::new(Metrics::new());
        let labels: GrpcLabels = [
            ("grpc_type", "unary".into()),
            ("grpc_service", "etcdserverpb.KV".into()),
            ("grpc_method", "Put".into()),
        ];
        let mut c = Counted::new(
            Body::empty(),
            metrics.client_received_bytes.clone(),
            metrics.grpc_msg_received.get_or_create_owned(&labels),
        );
        // Two messages of 3 and 0 bytes, cut in awkward places.
        let stream = [0u8, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0];
        c.count(&stream[..2]);
        c.count(&stream[2..7]);
        c.count(&stream[7..]);
        assert_eq!(metrics.grpc_msg_received.get_or_create(&labels).get(), 2);
        assert_eq!(metrics.client_received_bytes.get(), stream.len() as u64);
    }
}
