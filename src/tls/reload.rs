//! Certificate reload per handshake, as etcd does: the pair is re-read when either file's
//! modification time or size changes (two `stat` calls per handshake). A broken replacement
//! (unreadable, mismatched, expired, or half written) keeps the pair in use and is logged at
//! error once per change of the files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{TlsError, load_pair};

/// What the files looked like when last read: modification time and size of each.
type Stamp = [Option<(SystemTime, u64)>; 2];

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The files' stamp when `current` was read, or when a replacement last failed.
    stamp: Stamp,
}

/// A [`ResolvesServerCert`] serving the pair in `cert` and `key`, re-read when they change.
#[derive(Debug)]
pub(super) struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl ReloadingCert {
    pub(super) fn new(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsError> {
        let stamp = stamp(&cert, &key);
        let current = Arc::new(load_pair(&cert, &key, &provider)?);
        Ok(ReloadingCert {
            cert,
            key,
            provider,
            state: Mutex::new(State { current, stamp }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let stamp = stamp(&self.cert, &self.key);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamp != state.stamp {
            state.stamp = stamp;
            match load_pair(&self.cert, &self.key, &self.provider) {
                Ok(pair) => {
                    state.current = Arc::new(pair);
                    tracing::info!(
                        cert_file = %self.cert.display(),
                        key_file = %self.key.display(),
                        "reloaded the client TLS certificate"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "the changed client TLS certificate cannot be used; still serving the previous one"
                ),
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Stamp {
    let of = |path: &std::path::Path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    };
    [of(cert), of(key)]
}
