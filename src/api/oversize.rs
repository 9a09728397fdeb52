//! etcd's answer to a request over the gRPC size limit (`--max-request-bytes` + 512 KiB).
//!
//! grpc-go refuses such a message with ResourceExhausted and
//! `grpc: received message larger than max (N vs. M)`; tonic's decoder says OutOfRange and words it
//! differently. Clients and scripts match etcd's, so a response layer rewrites tonic's status.

use axum::http::{HeaderValue, Response};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// What gRPC percent-encodes in `grpc-message`: every byte outside printable ASCII (0x20–0x7E;
/// the crate always encodes bytes above 0x7F) and `%` itself.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// The start of tonic's status for a message over the decoding limit (its `codec/decode.rs`);
/// `tonic_still_words_the_oversize_error_as_parsed_here` pins it against the tonic in use.
const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";

/// Rewrites tonic's "decoded message length too large" status into etcd's.
pub async fn rewrite<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers();
    if headers.get("grpc-status").map(HeaderValue::as_bytes) != Some(b"11") {
        return response;
    }
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
    else {
        return response;
    };
    let Some((found, limit)) = parse_sizes(&message) else {
        return response;
    };
    let etcd = format!("grpc: received message larger than max ({found} vs. {limit})");
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from_static("8"));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&etcd)) {
        headers.insert("grpc-message", value);
    }
    response
}

fn parse_sizes(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(TONIC_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// gRPC's percent-decoding of `grpc-message` (`%XX` escapes; invalid UTF-8 replaced).
fn percent_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, GRPC_MESSAGE).to_string()
}

#[cfg(test)]
mod tests {
    use tonic::service::Routes;

    use super::*;
    use crate::api::health::HealthService;
    use crate::proto::grpc::health::v1::HealthCheckRequest;
    use crate::proto::grpc::health::v1::health_client::HealthClient;
    use crate::proto::grpc::health::v1::health_server::HealthServer;

    /// Serves `router` on a loopback port for the rest of the test; returns its URL.
    async fn serve(router: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }

    /// The real status tonic sends for a request over `max_decoding_message_size`, read by a
    /// real client: if a tonic upgrade rewords it, this fails instead of etcd's ResourceExhausted
    /// silently becoming tonic's OutOfRange.
    #[tokio::test]
    async fn tonic_still_words_the_oversize_error_as_parsed_here() {
        const LIMIT_BYTES: usize = 1024;
        let request = HealthCheckRequest {
            service: "x".repeat(2 * LIMIT_BYTES),
        };
        let found = prost::Message::encoded_len(&request) as u64;
        let health = || HealthServer::new(HealthService).max_decoding_message_size(LIMIT_BYTES);

        let bare = serve(Routes::new(health()).prepare().into_axum_router()).await;
        let status = HealthClient::connect(bare)
            .await
            .unwrap()
            .check(request.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert_eq!(
            parse_sizes(status.message()),
            Some((found, LIMIT_BYTES as u64)),
            "tonic reworded its over-limit error: {:?}",
            status.message()
        );

        // Behind the layer as server/listeners.rs mounts it, a client sees etcd's status.
        let router = Routes::new(health())
            .prepare()
            .into_axum_router()
            .layer(axum::middleware::map_response(rewrite));
        let status = HealthClient::connect(serve(router).await)
            .await
            .unwrap()
            .check(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            format!("grpc: received message larger than max ({found} vs. {LIMIT_BYTES})")
        );
    }

    #[test]
    fn grpc_message_escapes_exactly_non_printable_bytes_and_percent() {
        let all: String = (0u8..0x80).map(char::from).chain(['é']).collect();
        let expected: String = all
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_eq!(percent_encode(&all), expected);
        assert_eq!(percent_decode(&expected), all);
        assert_eq!(percent_decode("100%25 done%"), "100% done%");
    }

    #[tokio::test]
    async fn tonic_oversize_becomes_etcds_resource_exhausted() {
        let response = Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "Error,%20decoded%20message%20length%20too%20large:%20found%20600010%20bytes,%20the%20limit%20is:%20525312%20bytes",
            )
            .body(())
            .unwrap();
        let response = rewrite(response).await;
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(
            percent_decode(response.headers()["grpc-message"].to_str().unwrap()),
            "grpc: received message larger than max (600010 vs. 525312)"
        );
    }

    #[tokio::test]
    async fn other_statuses_pass_unchanged() {
        let response = Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "etcdserver: mvcc: required revision is a future revision",
            )
            .body(())
            .unwrap();
        let response = rewrite(response).await;
        assert_eq!(response.headers()["grpc-status"], "11");
    }
}
