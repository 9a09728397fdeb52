//! The standard gRPC health service (`grpc.health.v1.Health`), which etcd registers too: the
//! empty service name and each etcd service report SERVING while the member runs.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::proto::grpc::health::v1::health_check_response::ServingStatus;
use crate::proto::grpc::health::v1::health_server::Health;
use crate::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};

/// The service names this server answers for ("" is the server as a whole).
const SERVICES: &[&str] = &[
    "",
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
];

#[derive(Default)]
pub struct HealthService;

fn status_of(service: &str) -> Result<HealthCheckResponse, Status> {
    if SERVICES.contains(&service) {
        Ok(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        })
    } else {
        Err(Status::not_found("unknown service"))
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        status_of(&request.into_inner().service).map(Response::new)
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let status = status_of(&request.into_inner().service)?;
        // The status never changes while the member runs: send it once, then hold the stream.
        let stream =
            futures::stream::once(async move { Ok(status) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
