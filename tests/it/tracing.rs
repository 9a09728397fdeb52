//! Traces (issue 4 point 4): with `--enable-distributed-tracing` pointing at an OTLP/gRPC
//! collector, a client request arrives there as a span with `propose`, `commit`, `apply` and
//! `reply` children, carrying the gRPC method, the member ID and the revision. The collector here
//! is a real OTLP trace service (opentelemetry-proto's generated server) on loopback.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use common::Server;

/// The batch exporter sends every 5 s by default; allow a few rounds.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_a_traced_request_with_propose_commit_apply_and_reply() {
    if common::running_real_etcd() {
        eprintln!("oxetcd's span names; skipped against etcd");
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let address = listener.local_addr().expect("collector address");
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });

    let address_arg = format!("--distributed-tracing-address={address}");
    let server = Server::start_with(&[
        "--enable-distributed-tracing",
        &address_arg,
        "--distributed-tracing-sampling-rate=1000000",
    ]);
    let mut client = server.client().await;
    let put = client.put("traced/key", "v", None).await.expect("put");
    let revision = put.header().expect("header").revision();

    let deadline = Instant::now() + EXPORT_TIMEOUT;
    let (request, children) = loop {
        let spans = collector.spans.lock().expect("collector lock").clone();
        let request = spans
            .iter()
            .find(|s| s.name == "etcdserverpb.KV/Put")
            .cloned();
        if let Some(request) = request {
            let children: Vec<Span> = spans
                .iter()
                .filter(|s| s.parent_span_id == request.span_id)
                .cloned()
                .collect();
            let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
            if ["propose", "commit", "apply", "reply"]
                .iter()
                .all(|n| names.contains(n))
            {
                break (request, children);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not receive a Put with its four child spans; got {:?}",
            spans
                .iter()
                .map(|s| (s.name.clone(), s.parent_span_id.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert!(
        children.iter().all(|c| c.trace_id == request.trace_id),
        "children share the request's trace"
    );
    assert_eq!(attribute(&request, "rpc.method").as_deref(), Some("Put"));
    assert_eq!(
        attribute(&request, "rpc.service").as_deref(),
        Some("etcdserverpb.KV")
    );
    let status = client.status().await.expect("status");
    let member_id = format!("{:x}", status.header().expect("header").member_id());
    assert_eq!(
        attribute(&request, "member_id").as_deref(),
        Some(member_id.as_str())
    );
    let revision = revision.to_string();
    assert_eq!(
        attribute(&request, "revision").as_deref(),
        Some(revision.as_str())
    );
    let apply = children
        .iter()
        .find(|c| c.name == "apply")
        .expect("apply span");
    assert_eq!(
        attribute(apply, "revision").as_deref(),
        Some(revision.as_str())
    );
    let commit = children
        .iter()
        .find(|c| c.name == "commit")
        .expect("commit span");
    assert!(
        attribute(commit, "raft_index").is_some(),
        "commit carries the raft index"
    );
    for child in &children {
        assert!(
            child.start_time_unix_nano >= request.start_time_unix_nano
                && child.end_time_unix_nano <= request.end_time_unix_nano,
            "{} [{}, {}] lies within the request span [{}, {}]",
            child.name,
            child.start_time_unix_nano,
            child.end_time_unix_nano,
            request.start_time_unix_nano,
            request.end_time_unix_nano
        );
    }
}
