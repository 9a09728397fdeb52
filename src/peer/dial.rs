//! How a member dials its peers: [`PeerDialer`] opens every channel the transport, the prober,
//! the leader forwarder and the join-time member lookup use. http:// peer URLs go through
//! tonic's own connector; https:// ones through [`TlsConnector`], which connects TCP and runs
//! the rustls handshake with the member's peer client configuration (built by the `tls`
//! module: the peer certificate presented, the peer verified against `--peer-trusted-ca-file`
//! and the URL's host). tonic then speaks HTTP/2 over the finished stream. unix:// ones
//! through [`UnixConnector`]: as etcd, `unix://host:port` names the socket file `host:port`
//! in the working directory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Bound on opening a connection to a peer (TCP and, for https://, the TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on an open connection, so a peer that vanished without closing is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens channels to peer URLs; cheap to clone.
#[derive(Clone, Default)]
pub struct PeerDialer {
    /// The client configuration for https:// peer URLs; `None`: this member has no peer TLS
    /// (an https:// URL then fails to connect, naming why).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PeerDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDialer")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("bad peer URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
}

impl PeerDialer {
    /// A dialer for http:// peer URLs and, with `tls`, https:// ones.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> PeerDialer {
        PeerDialer { tls }
    }

    /// Connects to `url` now.
    pub async fn connect(&self, url: &str) -> Result<Channel, DialError> {
        if let Some((endpoint, connector)) = unix_target(url)? {
            return Ok(endpoint.connect_with_connector(connector).await?);
        }
        match self.tls_target(url)? {
            None => Ok(endpoint(url)?.connect().await?),
            Some((endpoint, connector)) => Ok(endpoint.connect_with_connector(connector).await?),
        }
    }

    /// A channel to `url` that connects on first use (and again after a failure).
    pub fn connect_lazy(&self, url: &str) -> Result<Channel, DialError> {
        if let Some((endpoint, connector)) = unix_target(url)? {
            return Ok(endpoint.connect_with_connector_lazy(connector));
        }
        match self.tls_target(url)? {
            None => Ok(endpoint(url)?.connect_lazy()),
            Some((endpoint, connector)) => Ok(endpoint.connect_with_connector_lazy(connector)),
        }
    }

    /// For an https:// URL: the endpoint tonic sees (http://, so that tonic leaves TLS to us)
    /// and the connector doing TCP and TLS.
    fn tls_target(&self, url: &str) -> Result<Option<(Endpoint, TlsConnector)>, DialError> {
        let bad = |reason: String| DialError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let Some(rest) = url.strip_prefix("https://") else {
            return Ok(None);
        };
        let config = self.tls.clone().ok_or_else(|| {
            bad(
                "this member has no peer TLS configuration (--peer-trusted-ca-file, \
                 --peer-cert-file or --peer-auto-tls) to dial it with"
                    .to_owned(),
            )
        })?;
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| bad("no host".to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone()).map_err(|e| bad(e.to_string()))?;
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let endpoint = endpoint(&format!("http://{rest}"))?;
        Ok(Some((
            endpoint,
            TlsConnector {
                config,
                server_name,
                address,
            },
        )))
    }
}

/// For a unix:// URL: the endpoint tonic sees (http:// with the same authority) and the
/// connector opening the socket `host:port`.
fn unix_target(url: &str) -> Result<Option<(Endpoint, UnixConnector)>, DialError> {
    let Some(rest) = url.strip_prefix("unix://") else {
        return Ok(None);
    };
    let path = rest.trim_end_matches('/');
    if path.is_empty() || path.contains('/') {
        return Err(DialError::BadUrl {
            url: url.to_owned(),
            reason: "expected unix://host:port".to_owned(),
        });
    }
    let endpoint = endpoint(&format!("http://{path}"))?;
    Ok(Some((
        endpoint,
        UnixConnector {
            path: path.to_owned(),
        },
    )))
}

/// How every channel to a peer is set up: bounded connect, no Nagle delay, HTTP/2 pings so a
/// peer that vanished without closing is noticed.
fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Connects TCP to one peer address and runs the TLS handshake; the URI tonic passes is
/// ignored (it is the http:// form of the same address).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    address: String,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let server_name = self.server_name.clone();
        let address = self.address.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Connects to one peer's unix socket; the URI tonic passes is ignored.
#[derive(Clone)]
pub struct UnixConnector {
    path: String,
}

type ConnectingUnix = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send>>;

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = ConnectingUnix;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}
