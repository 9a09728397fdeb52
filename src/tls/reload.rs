//! Certificate reload per handshake, as etcd does: the pair is re-read when either file's
//! modification time or size changes (two `stat` calls per handshake). A broken replacement
//! (unreadable, mismatched, expired, or half written) keeps the pair in use and is logged at
//! error once per change of the files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Pair, PairKeys, TlsError, load_pair};

/// What the files looked like when last read: modification time and size of each.
type Stamp = [Option<(SystemTime, u64)>; 2];

#[derive(Debug)]
struct State {
    current: Pair,
    /// The files' stamp when `current` was read, or when a replacement last failed.
    stamp: Stamp,
}

/// A [`ResolvesServerCert`] (and, for dialing peers, [`ResolvesClientCert`]) presenting the
/// pair in `cert` and `key`, re-read when they change.
#[derive(Debug)]
pub(super) struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    /// The keys naming the files, and what the pair is for (in logs).
    keys: PairKeys,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl ReloadingCert {
    pub(super) fn new(
        cert: PathBuf,
        key: PathBuf,
        keys: PairKeys,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsError> {
        let stamp = stamp(&cert, &key);
        let current = load_pair(&cert, &key, keys, &provider)?;
        Ok(ReloadingCert {
            cert,
            key,
            keys,
            provider,
            state: Mutex::new(State { current, stamp }),
        })
    }

    pub(super) fn cert_path(&self) -> &std::path::Path {
        &self.cert
    }

    /// The end of the validity of the certificate in use (after re-reading changed files).
    pub(super) fn not_after(&self) -> i64 {
        self.refreshed(|pair| pair.not_after)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.refreshed(|pair| pair.key.clone())
    }

    /// Re-reads the pair if its files changed, then looks at the pair in use.
    fn refreshed<T>(&self, look: impl FnOnce(&Pair) -> T) -> T {
        let stamp = stamp(&self.cert, &self.key);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamp != state.stamp {
            state.stamp = stamp;
            match load_pair(&self.cert, &self.key, self.keys, &self.provider) {
                Ok(pair) => {
                    state.current = pair;
                    tracing::info!(
                        cert_file = %self.cert.display(),
                        key_file = %self.key.display(),
                        certificate = self.keys.what,
                        "reloaded a TLS certificate"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    certificate = self.keys.what,
                    "the changed TLS certificate cannot be used; still presenting the previous one"
                ),
            }
        }
        look(&state.current)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Stamp {
    let of = |path: &std::path::Path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    };
    [of(cert), of(key)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2030-01-01 and 2031-01-01 at midnight UTC, in seconds since the Unix epoch.
    const UNTIL_2030: i64 = 1_893_456_000;
    const UNTIL_2031: i64 = 1_924_992_000;

    /// A self-signed pair valid until the first of January of `until_year`.
    fn pair(until_year: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_changed_pair_is_served_and_its_expiry_shown_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (first_cert, first_key) = pair(2030);
        std::fs::write(&cert, &first_cert).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let keys = super::super::PairKeys::of(crate::config::TlsSide::Client, false);
        let resolver = ReloadingCert::new(cert.clone(), key.clone(), keys, provider).unwrap();
        let first = resolver.current();
        assert!(
            Arc::ptr_eq(&first, &resolver.current()),
            "unchanged files were re-read"
        );
        assert_eq!(resolver.not_after(), UNTIL_2030);

        let (second_cert, second_key) = pair(2031);
        // Half a rotation: the new key with the old certificate does not match.
        std::fs::write(&key, &second_key).unwrap();
        assert!(Arc::ptr_eq(&first, &resolver.current()));
        assert_eq!(resolver.not_after(), UNTIL_2030);
        std::fs::write(&cert, &second_cert).unwrap();
        // The expiry metric's look at the files picks up the new pair without a handshake.
        assert_eq!(resolver.not_after(), UNTIL_2031);
        let second = resolver.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_ne!(first.cert, second.cert);

        // A deleted certificate keeps the pair in use.
        std::fs::remove_file(&cert).unwrap();
        assert!(Arc::ptr_eq(&second, &resolver.current()));
        assert_eq!(resolver.not_after(), UNTIL_2031);
    }
}
