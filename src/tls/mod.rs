//! TLS for the https:// client and metrics URLs (etcd's client transport security): the
//! certificate files read and checked at start ([`check`]), the rustls server configuration
//! ([`server_config`]) with its per-handshake certificate reload (`reload.rs`), client
//! certificate checks (`verify.rs`), `--auto-tls` certificates (`auto.rs`) and the DER reading
//! the expiry check needs (`der.rs`).
//!
//! Errors name the key and the file, never what a key file holds.

mod auto;
mod der;
mod reload;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{ClientTls, TlsVersion};

pub use auto::AUTO_TLS_DIR;
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
        "--key-file {} does not match the certificate in --cert-file {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The certificate is outside its validity period.
    #[error("--cert-file {}: the certificate {reason}", path.display())]
    NotValidNow { path: PathBuf, reason: String },
    /// rustls refused the combination of versions and cipher suites.
    #[error("--{key}: {reason}")]
    Settings { key: &'static str, reason: String },
    /// `--auto-tls` could not generate or write its certificate.
    #[error("--auto-tls: {reason} ({})", path.display())]
    AutoTls { path: PathBuf, reason: String },
}

impl TlsError {
    /// The key (flag name without `--`) the error is about.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Invalid { key, .. }
            | TlsError::Settings { key, .. } => key,
            TlsError::KeyMismatch { .. } => "key-file",
            TlsError::NotValidNow { .. } => "cert-file",
            TlsError::AutoTls { .. } => "auto-tls",
        }
    }
}

/// Whether any listener of this configuration serves https://.
pub fn any_https(urls: &[&[url::Url]]) -> bool {
    urls.iter()
        .flat_map(|urls| urls.iter())
        .any(|url| url.scheme() == "https")
}

/// Checks the configured files at start, before the data directory is touched: the certificate
/// and key can be read, match and are valid now; the CA and CRL files parse. `--auto-tls`
/// without files is checked when its certificate is made (in the data directory).
pub fn check(tls: &ClientTls) -> Result<(), TlsError> {
    let provider = provider(tls);
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        load_pair(cert, key, &provider)?;
    }
    client_verifier(tls, &provider)?;
    versions(tls);
    Ok(())
}

/// The rustls configuration of the https:// listeners: the configured pair re-read when its
/// files change, or the `--auto-tls` certificate made under `data_dir` for `hosts`; ALPN h2 and
/// http/1.1.
pub fn server_config(
    tls: &ClientTls,
    data_dir: &Path,
    hosts: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider(tls));
    let (cert, key) = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => auto::ensure_self_signed(data_dir, hosts, tls.self_signed_cert_validity_years)?,
    };
    let resolver = reload::ReloadingCert::new(cert, key, provider.clone())?;
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
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The ring provider with `--cipher-suites` applied to TLS 1.2 (as in Go, TLS 1.3's suites
/// cannot be turned off).
fn provider(tls: &ClientTls) -> CryptoProvider {
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

fn versions(tls: &ClientTls) -> Vec<&'static rustls::SupportedProtocolVersion> {
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

/// With `--client-cert-auth`: certificates must chain to `--trusted-ca-file`, not be revoked by
/// `--client-crl-file` and, with `--client-cert-allowed-hostname`, be valid for that name.
fn client_verifier(
    tls: &ClientTls,
    provider: &CryptoProvider,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsError> {
    if !tls.client_cert_auth {
        return Ok(None);
    }
    let Some(ca_file) = &tls.trusted_ca_file else {
        return Err(TlsError::Settings {
            key: "trusted-ca-file",
            reason: "must be set when --client-cert-auth is on".to_owned(),
        });
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) =
        roots.add_parsable_certificates(read_certs("trusted-ca-file", ca_file)?);
    if added == 0 {
        return Err(TlsError::Invalid {
            key: "trusted-ca-file",
            path: ca_file.clone(),
            reason: "holds no usable CA certificate".to_owned(),
        });
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()));
    if let Some(crl_file) = &tls.client_crl_file {
        let bytes = read("client-crl-file", crl_file)?;
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid {
                key: "client-crl-file",
                path: crl_file.clone(),
                reason: format!("not a PEM certificate revocation list: {e}"),
            })?;
        if crls.is_empty() {
            return Err(TlsError::Invalid {
                key: "client-crl-file",
                path: crl_file.clone(),
                reason: "holds no PEM certificate revocation list".to_owned(),
            });
        }
        builder = builder.with_crls(crls);
    }
    let verifier = builder.build().map_err(|e| TlsError::Invalid {
        key: "client-crl-file",
        path: tls.client_crl_file.clone().unwrap_or_default(),
        reason: e.to_string(),
    })?;
    Ok(Some(match &tls.client_cert_allowed_hostname {
        Some(hostname) => Arc::new(verify::AllowedHostname::new(verifier, hostname).map_err(
            |reason| TlsError::Settings {
                key: "client-cert-allowed-hostname",
                reason,
            },
        )?),
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

/// Reads and checks one certificate and key pair.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs("cert-file", cert_path)?;
    let key_bytes = read("key-file", key_path)?;
    // The parser's error could quote a line of the file: say what was expected instead.
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::Invalid {
        key: "key-file",
        path: key_path.to_path_buf(),
        reason: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
    })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Invalid {
                key: "key-file",
                path: key_path.to_path_buf(),
                reason: format!("unusable private key: {e}"),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(TlsError::Invalid {
                key: "cert-file",
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    let end_entity = certified.cert.first().ok_or_else(|| TlsError::Invalid {
        key: "cert-file",
        path: cert_path.to_path_buf(),
        reason: "holds no PEM certificate".to_owned(),
    })?;
    let validity = der::validity(end_entity).map_err(|reason| TlsError::Invalid {
        key: "cert-file",
        path: cert_path.to_path_buf(),
        reason,
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    if now > validity.not_after.unix_seconds {
        return Err(TlsError::NotValidNow {
            path: cert_path.to_path_buf(),
            reason: format!("expired at {}", validity.not_after),
        });
    }
    if now < validity.not_before.unix_seconds {
        return Err(TlsError::NotValidNow {
            path: cert_path.to_path_buf(),
            reason: format!("is not valid before {}", validity.not_before),
        });
    }
    Ok(certified)
}
