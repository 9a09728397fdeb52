//! TLS of the https:// client, metrics and peer URLs (etcd's client and peer transport
//! security): the certificate files read and checked at start ([`check`]), the rustls server
//! configuration ([`server_config`]) with its per-handshake certificate reload (`reload.rs`),
//! the rustls client configuration a member dials its peers' https:// URLs with
//! ([`client_config`]), certificate checks beyond the chain (`verify.rs`: allowed host name and
//! CN, the unverified `--peer-auto-tls` peers), auto TLS certificates (`auto.rs`) and the DER
//! reading the expiry and CN checks need (`der.rs`).
//!
//! Both sides share one code path: a [`TlsSettings`] says which side it is for, and every error
//! names that side's key and file, never what a key file holds.

mod auto;
mod der;
mod reload;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{TlsSettings, TlsSide, TlsVersion};

pub use auto::auto_tls_dir;
pub use der::common_name;

/// Why the TLS settings cannot be used. `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by a key could not be read.
    #[error("cannot read --{key} {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but does not hold what the key needs.
    #[error("--{key} {}: {reason}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The private key is not the one of the certificate.
    #[error(
        "--{key_key} {} does not match the certificate in --{cert_key} {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        cert_key: &'static str,
        key_key: &'static str,
        cert: PathBuf,
        key: PathBuf,
    },
    /// The certificate is outside its validity period.
    #[error("--{key} {}: the certificate {reason}", path.display())]
    NotValidNow {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// rustls refused the combination of versions and cipher suites.
    #[error("--{key}: {reason}")]
    Settings { key: &'static str, reason: String },
    /// `--auto-tls` / `--peer-auto-tls` could not generate or write its certificate.
    #[error("--{key}: {reason} ({})", path.display())]
    AutoTls {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl TlsError {
    /// The key (flag name without `--`) the error is about.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Invalid { key, .. }
            | TlsError::Settings { key, .. }
            | TlsError::NotValidNow { key, .. }
            | TlsError::AutoTls { key, .. } => key,
            TlsError::KeyMismatch { key_key, .. } => key_key,
        }
    }
}

/// Whether any listener of this configuration serves https://.
pub fn any_https(urls: &[&[url::Url]]) -> bool {
    urls.iter()
        .flat_map(|urls| urls.iter())
        .any(|url| url.scheme() == "https")
}

/// The keys naming one certificate pair, and what the pair is for (in logs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairKeys {
    cert: &'static str,
    key: &'static str,
    what: &'static str,
}

impl PairKeys {
    /// The served pair of a side, or (`dialing`) the pair a member presents to its peers.
    fn of(side: TlsSide, dialing: bool) -> PairKeys {
        let keys = side.keys();
        let (cert, key) = if dialing {
            (keys.client_cert_file, keys.client_key_file)
        } else {
            (keys.cert_file, keys.key_file)
        };
        let what = match (side, dialing) {
            (TlsSide::Client, _) => "client",
            (TlsSide::Peer, false) => "peer",
            (TlsSide::Peer, true) => "peer client",
        };
        PairKeys { cert, key, what }
    }

    /// A pair made by auto TLS: errors name the auto TLS key.
    fn auto(side: TlsSide) -> PairKeys {
        let key = side.keys().auto_tls;
        let what = match side {
            TlsSide::Client => "client (auto TLS)",
            TlsSide::Peer => "peer (auto TLS)",
        };
        PairKeys {
            cert: key,
            key,
            what,
        }
    }
}

/// Checks the configured files at start, before the data directory is touched: each
/// certificate and key can be read, match and are valid now; the CA and CRL files parse. Auto
/// TLS without files is checked when its certificate is made (in the data directory).
pub fn check(tls: &TlsSettings) -> Result<(), TlsError> {
    let provider = provider(tls);
    let keys = tls.keys();
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        load_pair(cert, key, PairKeys::of(tls.side, false), &provider)?;
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
        load_pair(cert, key, PairKeys::of(tls.side, true), &provider)?;
    }
    client_verifier(tls, &provider)?;
    if let Some(ca_file) = &tls.trusted_ca_file {
        roots(keys.trusted_ca_file, ca_file)?;
    }
    allowed(tls)?;
    Ok(())
}

/// What the https:// listeners serve: the rustls configuration, and the certificate it presents.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub certificate: ServedCertificate,
}

/// The certificate a TLS configuration presents, for its expiry metric: looking at it re-reads
/// the files when they changed, as a handshake would, so a rotation shows without one.
#[derive(Debug, Clone)]
pub struct ServedCertificate(Arc<reload::ReloadingCert>);

impl ServedCertificate {
    /// The certificate file (for `--auto-tls`, the generated one under the data directory).
    pub fn path(&self) -> &Path {
        self.0.cert_path()
    }

    /// When the certificate in use stops being valid, in seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.0.not_after()
    }
}

/// The rustls configuration of one side's https:// listeners: the configured pair re-read when
/// its files change, or the auto TLS certificate made under `data_dir` for `hosts`; ALPN h2 and
/// http/1.1.
pub fn server_config(
    tls: &TlsSettings,
    data_dir: &Path,
    hosts: &[String],
) -> Result<ServerTls, TlsError> {
    let provider = Arc::new(provider(tls));
    let (cert, key, pair_keys) = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), PairKeys::of(tls.side, false)),
        _ => {
            let (cert, key) = auto::ensure_self_signed(data_dir, tls, hosts)?;
            (cert, key, PairKeys::auto(tls.side))
        }
    };
    let resolver = Arc::new(reload::ReloadingCert::new(
        cert,
        key,
        pair_keys,
        provider.clone(),
    )?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(tls))
        .map_err(|e| TlsError::Settings {
            key: "cipher-suites",
            reason: e.to_string(),
        })?;
    let builder = match client_verifier(tls, &provider)? {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        certificate: ServedCertificate(resolver),
    })
}

/// The rustls configuration a member dials its peers' https:// URLs with (peer side only): it
/// presents `--peer-client-cert-file` (else `--peer-cert-file`, else the `--peer-auto-tls`
/// certificate made under `data_dir` for `hosts`), re-read when the files change, and verifies
/// the peer against `--peer-trusted-ca-file` and the dialed URL's host, then against
/// `--peer-cert-allowed-cn`/`-hostname`. With `--peer-auto-tls` and no CA the peer's
/// certificate is not verified, as in etcd. ALPN h2.
pub fn client_config(
    tls: &TlsSettings,
    data_dir: &Path,
    hosts: &[String],
) -> Result<Arc<ClientConfig>, TlsError> {
    debug_assert_eq!(tls.side, TlsSide::Peer, "only peers are dialed");
    let provider = Arc::new(provider(tls));
    let keys = tls.keys();
    let mut auto_made = false;
    let pair = match (
        &tls.client_cert_file,
        &tls.client_key_file,
        &tls.cert_file,
        &tls.key_file,
    ) {
        (Some(cert), Some(key), _, _) => {
            Some((cert.clone(), key.clone(), PairKeys::of(tls.side, true)))
        }
        (_, _, Some(cert), Some(key)) => {
            Some((cert.clone(), key.clone(), PairKeys::of(tls.side, false)))
        }
        _ if tls.auto_tls => {
            auto_made = true;
            let (cert, key) = auto::ensure_self_signed(data_dir, tls, hosts)?;
            Some((cert, key, PairKeys::auto(tls.side)))
        }
        _ => None,
    };
    let chain: Arc<dyn ServerCertVerifier> = match &tls.trusted_ca_file {
        Some(ca_file) => WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(keys.trusted_ca_file, ca_file)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Invalid {
            key: keys.trusted_ca_file,
            path: ca_file.clone(),
            reason: e.to_string(),
        })?,
        None if auto_made => Arc::new(verify::SelfSignedPeer {
            provider: provider.clone(),
        }),
        None => {
            return Err(TlsError::Settings {
                key: keys.trusted_ca_file,
                reason: "must be set to verify the peers dialed over https://".to_owned(),
            });
        }
    };
    let verifier = verify::AllowedServer {
        inner: chain,
        allowed: allowed(tls)?,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(tls))
        .map_err(|e| TlsError::Settings {
            key: "cipher-suites",
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match pair {
        Some((cert, key, pair_keys)) => builder.with_client_cert_resolver(Arc::new(
            reload::ReloadingCert::new(cert, key, pair_keys, provider)?,
        )),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The rustls configuration a tool dials a member's https:// client URL with (`oxetcd
/// backup`): the server verified against the CA certificates in `ca_file` and the URL's host,
/// the `pair` (certificate, key) presented when given. Errors name the `[backup]` keys. ALPN h2.
pub fn dial_config(
    ca_file: &Path,
    pair: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    #[allow(deprecated)] // ring: see `provider`
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings {
            key: "backup.cacert",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots("backup.cacert", ca_file)?);
    let mut config = match pair {
        Some((cert, key)) => {
            let chain = read_certs("backup.cert", cert)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&read("backup.key", key)?).map_err(|_| {
                    TlsError::Invalid {
                        key: "backup.key",
                        path: key.to_path_buf(),
                        reason: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
                    }
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::Invalid {
                    key: "backup.key",
                    path: key.to_path_buf(),
                    reason: e.to_string(),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// `--peer-cert-allowed-cn` or the side's allowed host name, if set.
fn allowed(tls: &TlsSettings) -> Result<Option<verify::Allowed>, TlsError> {
    if let Some(cn) = &tls.allowed_cn {
        return Ok(Some(verify::Allowed::CommonName(cn.clone())));
    }
    tls.allowed_hostname
        .as_deref()
        .map(|hostname| {
            verify::Allowed::hostname(hostname).map_err(|reason| TlsError::Settings {
                key: tls.keys().allowed_hostname,
                reason,
            })
        })
        .transpose()
}

/// The CA certificates of `path`, at least one.
fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(key, path)?);
    if added == 0 {
        return Err(TlsError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: "holds no usable CA certificate".to_owned(),
        });
    }
    Ok(roots)
}

/// The ring provider with `--cipher-suites` applied to TLS 1.2 (as in Go, TLS 1.3's suites
/// cannot be turned off).
fn provider(tls: &TlsSettings) -> CryptoProvider {
    // Deprecated in rustls 0.23.48 because ring has no post-quantum key exchange; aws-lc-rs
    // has one but needs a C toolchain build this package avoids. Classical ECDHE it is.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    if !tls.cipher_suites.is_empty() {
        provider.cipher_suites.retain(|suite| match suite {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => suite
                .suite()
                .as_str()
                .is_some_and(|name| tls.cipher_suites.iter().any(|wanted| wanted == name)),
        });
    }
    provider
}

fn versions(tls: &TlsSettings) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let max = tls.max_version.unwrap_or(TlsVersion::Tls13);
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| *version >= tls.min_version && *version <= max)
    .map(|(_, supported)| supported)
    .collect()
}

/// With `--client-cert-auth` (`--peer-client-cert-auth`): certificates must chain to the
/// side's trusted CA file, not be revoked by its CRL file and, with an allowed host name or CN,
/// match it.
fn client_verifier(
    tls: &TlsSettings,
    provider: &CryptoProvider,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsError> {
    if !tls.client_cert_auth {
        return Ok(None);
    }
    let keys = tls.keys();
    let Some(ca_file) = &tls.trusted_ca_file else {
        return Err(TlsError::Settings {
            key: keys.trusted_ca_file,
            reason: format!("must be set when --{} is on", keys.client_cert_auth),
        });
    };
    let roots = roots(keys.trusted_ca_file, ca_file)?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()));
    if let Some(crl_file) = &tls.crl_file {
        let bytes = read(keys.crl_file, crl_file)?;
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid {
                key: keys.crl_file,
                path: crl_file.clone(),
                reason: format!("not a PEM certificate revocation list: {e}"),
            })?;
        if crls.is_empty() {
            return Err(TlsError::Invalid {
                key: keys.crl_file,
                path: crl_file.clone(),
                reason: "holds no PEM certificate revocation list".to_owned(),
            });
        }
        builder = builder.with_crls(crls);
    }
    let verifier = builder.build().map_err(|e| TlsError::Invalid {
        key: keys.crl_file,
        path: tls.crl_file.clone().unwrap_or_default(),
        reason: e.to_string(),
    })?;
    Ok(Some(match allowed(tls)? {
        Some(allowed) => Arc::new(verify::AllowedClient {
            inner: verifier,
            allowed,
        }),
        None => verifier,
    }))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: "holds no PEM certificate".to_owned(),
        });
    }
    Ok(certs)
}

/// A certificate and key pair as read and checked, with the end of the certificate's validity.
#[derive(Debug)]
struct Pair {
    key: Arc<CertifiedKey>,
    /// Not after, in seconds since the Unix epoch.
    not_after: i64,
}

/// Reads and checks one certificate and key pair.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    keys: PairKeys,
    provider: &CryptoProvider,
) -> Result<Pair, TlsError> {
    let chain = read_certs(keys.cert, cert_path)?;
    let key_bytes = read(keys.key, key_path)?;
    // The parser's error could quote a line of the file: say what was expected instead.
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::Invalid {
        key: keys.key,
        path: key_path.to_path_buf(),
        reason: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Invalid {
                key: keys.key,
                path: key_path.to_path_buf(),
                reason: format!("unusable private key: {e}"),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert_key: keys.cert,
                key_key: keys.key,
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(TlsError::Invalid {
                key: keys.cert,
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    let end_entity = certified.cert.first().ok_or_else(|| TlsError::Invalid {
        key: keys.cert,
        path: cert_path.to_path_buf(),
        reason: "holds no PEM certificate".to_owned(),
    })?;
    let validity = der::validity(end_entity).map_err(|reason| TlsError::Invalid {
        key: keys.cert,
        path: cert_path.to_path_buf(),
        reason,
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    if now > validity.not_after.unix_seconds {
        return Err(TlsError::NotValidNow {
            key: keys.cert,
            path: cert_path.to_path_buf(),
            reason: format!("expired at {}", validity.not_after),
        });
    }
    if now < validity.not_before.unix_seconds {
        return Err(TlsError::NotValidNow {
            key: keys.cert,
            path: cert_path.to_path_buf(),
            reason: format!("is not valid before {}", validity.not_before),
        });
    }
    Ok(Pair {
        key: Arc::new(certified),
        not_after: validity.not_after.unix_seconds,
    })
}
