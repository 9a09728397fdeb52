//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate for the member's client (or
//! peer) hosts, made once under `<data-dir>/fixtures/client` (`fixtures/peer`), etcd's places,
//! and reused while both files exist.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::TlsError;
use crate::config::{TlsSettings, TlsSide};

/// Where a side's auto TLS pair lives, under the data directory.
pub fn auto_tls_dir(side: TlsSide) -> &'static str {
    match side {
        TlsSide::Client => "fixtures/client",
        TlsSide::Peer => "fixtures/peer",
    }
}
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const DAYS_PER_YEAR: u64 = 365;

/// The side's auto TLS pair's paths, generating it for `hosts` when either file is missing.
pub(super) fn ensure_self_signed(
    data_dir: &Path,
    tls: &TlsSettings,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let validity_years = tls.self_signed_cert_validity_years;
    let key_name = tls.keys().auto_tls;
    let dir = data_dir.join(auto_tls_dir(tls.side));
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let failed = |path: &Path, reason: String| TlsError::AutoTls {
        key: key_name,
        path: path.to_path_buf(),
        reason,
    };
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| failed(&cert_path, format!("cannot name the hosts {hosts:?}: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "oxetcd");
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    let validity =
        std::time::Duration::from_secs(u64::from(validity_years) * DAYS_PER_YEAR * 86_400);
    params.not_after = (now + validity).into();
    let key = rcgen::KeyPair::generate()
        .map_err(|e| failed(&key_path, format!("cannot generate a key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| failed(&cert_path, format!("cannot sign the certificate: {e}")))?;
    std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e.to_string()))?;
    write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| failed(&key_path, e.to_string()))?;
    write_private(&cert_path, cert.pem().as_bytes())
        .map_err(|e| failed(&cert_path, e.to_string()))?;
    tracing::info!(
        cert_file = %cert_path.display(),
        hosts = ?hosts,
        validity_years,
        key = key_name,
        "generated a self-signed TLS certificate"
    );
    Ok((cert_path, key_path))
}

/// Writes a file readable by the owner only, synced.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
