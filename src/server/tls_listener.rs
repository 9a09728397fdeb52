//! The https:// listeners: one task accepts TCP connections and spawns each TLS handshake
//! (bounded in number and in time), so a slow or hostile client never stalls the accept loop;
//! finished streams reach axum through [`TlsListener`], wrapped in the `:authority` fix like
//! plain connections, each with its [`TlsClient`] (address, and the Common Name of a verified
//! client certificate) for the requests on it. Refused handshakes are logged at warn once per
//! client IP.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::api::TlsClient;
use crate::authority_fix::AuthorityFix;
use crate::tasks::TaskSet;

/// Handshakes in progress on one listener; a connection beyond this is closed at once.
const HANDSHAKES_MAX: usize = 1024;
/// A handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them; when full, handshake tasks wait.
const READY_QUEUE_LEN: usize = 64;
/// Distinct client IPs whose refused handshakes are logged at warn; later ones go to debug.
const REFUSED_IPS_LOGGED_MAX: usize = 1024;

type Connection = (AuthorityFix<TlsStream<TcpStream>>, TlsClient);

/// The axum side of an https:// listener: connections whose handshake finished.
pub(super) struct TlsListener {
    ready: mpsc::Receiver<Connection>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts the accept task (and later each handshake) in `tasks`; they end on its stop
    /// signal.
    /// `kind` ("client", "metrics", "peer") names the listener in the refusal warnings.
    pub(super) fn start(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        tasks: &TaskSet,
        kind: &'static str,
    ) -> Result<TlsListener, super::ServerError> {
        let local_addr = listener
            .local_addr()
            .map_err(|source| super::ServerError::Listen {
                url: "https listener".to_owned(),
                source,
            })?;
        let (ready_tx, ready) = mpsc::channel(READY_QUEUE_LEN);
        let accept = accept_loop(
            listener,
            TlsAcceptor::from(config),
            tasks.clone(),
            ready_tx,
            kind,
        );
        tasks.spawn("tls-accept", accept)?;
        Ok(TlsListener { ready, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = AuthorityFix<TlsStream<TcpStream>>;
    type Addr = TlsClient;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task ended (the set is stopping): take nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsClient {
            addr: self.local_addr,
            common_name: None,
        })
    }
}

/// What axum hands each request as `ConnectInfo<TlsClient>`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsClient
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsClient {
        stream.remote_addr().clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tasks: TaskSet,
    ready: mpsc::Sender<Connection>,
    kind: &'static str,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let refused = Arc::new(RefusedIps {
        kind,
        seen: Mutex::default(),
    });
    let mut stop = tasks.stop_signal();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(client = %addr, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, ready, refused) = (acceptor.clone(), ready.clone(), refused.clone());
        let handshake = async move {
            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match outcome {
                Ok(Ok(tls)) => {
                    let client = TlsClient {
                        addr,
                        common_name: verified_common_name(&tls),
                    };
                    // Fails only when the listener is gone; the connection is then dropped.
                    let _ = ready.send((AuthorityFix::new(tls), client)).await;
                }
                Ok(Err(e)) => refused.log(addr.ip(), &e.to_string()),
                Err(_) => refused.log(addr.ip(), "handshake timed out"),
            }
        };
        if tasks.spawn("tls-handshake", handshake).is_err() {
            return;
        }
    }
}

/// The Common Name of the client's certificate. rustls asks for one only with
/// `--client-cert-auth`, and then the handshake succeeds only if it chains to
/// `--trusted-ca-file` (and passes the CRL and hostname checks), so a name here is verified.
fn verified_common_name(tls: &TlsStream<TcpStream>) -> Option<Arc<str>> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    crate::tls::common_name(leaf).map(Arc::from)
}

/// The client IPs already warned about, bounded.
struct RefusedIps {
    /// Which listener: "client", "metrics" or "peer".
    kind: &'static str,
    seen: Mutex<HashSet<IpAddr>>,
}

impl RefusedIps {
    fn log(&self, ip: IpAddr, error: &str) {
        let first = {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.len() < REFUSED_IPS_LOGGED_MAX && seen.insert(ip)
        };
        if first {
            tracing::warn!(
                listener = self.kind,
                client_ip = %ip,
                error,
                "refused a TLS handshake (further refusals from this IP are logged at debug)"
            );
        } else {
            tracing::debug!(listener = self.kind, client_ip = %ip, error, "refused a TLS handshake");
        }
    }
}
