//! Plain HTTP/1.1 for the tests (`/health`, `/version`, `/metrics`, the JSON gateway, Prometheus's
//! API) through the `minreq` crate: one request per connection, no TLS, no redirects.

use std::net::{Ipv4Addr, SocketAddr};

/// Bound on one request, connect to last byte (minreq takes whole seconds).
const HTTP_TIMEOUT_SECS: u64 = 5;

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// e.g. `HTTP/1.1 200 OK` (minreq reports no version; every server here answers HTTP/1.1).
    pub status_line: String,
    pub status: u16,
    /// Header names as the server sent them, in arrival order.
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// `GET http://<addr><path>`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse, minreq::Error> {
    send(minreq::get(format!("http://{addr}{path}")))
}

/// `POST` of a JSON body (the grpc-gateway's `/v3/...` endpoints).
pub fn http_post_json(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> Result<HttpResponse, minreq::Error> {
    send(
        minreq::post(format!("http://{addr}{path}"))
            .with_header("Content-Type", "application/json")
            .with_body(body),
    )
}

/// `POST` of a JSON body with extra request headers (e.g. the gateway's `Authorization`).
pub fn http_post_json_with(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, minreq::Error> {
    let mut request = minreq::post(format!("http://{addr}{path}"))
        .with_header("Content-Type", "application/json")
        .with_body(body);
    for (name, value) in headers {
        request = request.with_header(*name, *value);
    }
    send(request)
}

fn send(request: minreq::Request) -> Result<HttpResponse, minreq::Error> {
    let response = request
        .with_timeout(HTTP_TIMEOUT_SECS)
        .with_follow_redirects(false)
        .send()?;
    Ok(HttpResponse {
        status_line: format!(
            "HTTP/1.1 {} {}",
            response.status_code, response.reason_phrase
        ),
        status: response.status_code,
        headers: response.headers.clone(),
        body: response.into_bytes(),
    })
}

/// True when `GET /health` on the loopback `client_port` answers 200 with `"health":"true"`.
pub fn is_healthy(client_port: u16) -> bool {
    is_healthy_at(client_port, "/health")
}

/// Like [`is_healthy`], asking `health_path` (e.g. `/health?exclude=NOSPACE`).
pub fn is_healthy_at(client_port: u16, health_path: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client_port));
    http_get(addr, health_path).is_ok_and(|response| {
        response.status == 200 && response.text().contains(r#""health":"true""#)
    })
}

/// A response as the reference `.http` files record it: status line, `Content-Type: ...` (when
/// present), an empty line, and the body without trailing newlines.
pub fn http_summary(response: &HttpResponse) -> String {
    let mut summary = format!("{}\n", response.status_line);
    if let Some(content_type) = response.header("content-type") {
        summary.push_str(&format!("Content-Type: {content_type}\n"));
    }
    summary.push('\n');
    summary.push_str(response.text().trim_end_matches('\n'));
    summary
}
