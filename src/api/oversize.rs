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
    use super::*;

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
