//! Certificate checks beyond the chain: `--client-cert-allowed-hostname`,
//! `--peer-cert-allowed-hostname` (the certificate must be valid for one host name: its SANs, as
//! Go's `VerifyHostname` checks) and `--peer-cert-allowed-cn` (its subject's common name), as
//! verifiers wrapping the chain verifier on both ends of a connection (etcd checks them on the
//! listening and on the dialing side); and the verifier of `--peer-auto-tls`, which checks only
//! the handshake signatures, as etcd skips verification of self-signed peer certificates.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// What the end-entity certificate must also be, once its chain is verified.
#[derive(Debug, Clone)]
pub(super) enum Allowed {
    /// Valid for this host name or IP address (SANs).
    Hostname(ServerName<'static>),
    /// One of the subject's common names is exactly this.
    CommonName(String),
}

impl Allowed {
    pub(super) fn hostname(hostname: &str) -> Result<Allowed, String> {
        ServerName::try_from(hostname.to_owned())
            .map(Allowed::Hostname)
            .map_err(|_| format!("{hostname:?} is not a host name or IP address"))
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self {
            Allowed::Hostname(hostname) => {
                let cert = webpki::EndEntityCert::try_from(end_entity)
                    .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
                cert.verify_is_valid_for_subject_name(hostname)
                    .map_err(|_| {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    })
            }
            Allowed::CommonName(cn) => {
                let names = super::der::common_names(end_entity)
                    .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
                if names.iter().any(|name| name == cn) {
                    Ok(())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                            CommonNameRefused {
                                allowed: cn.clone(),
                                presented: names,
                            },
                        ))),
                    ))
                }
            }
        }
    }
}

/// A certificate whose common name is not the allowed one.
#[derive(Debug, thiserror::Error)]
#[error("certificate common name {presented:?} is not the allowed {allowed:?}")]
struct CommonNameRefused {
    allowed: String,
    presented: Vec<String>,
}

/// Wraps the chain verifier; the [`Allowed`] check runs after the chain is verified.
#[derive(Debug)]
pub(super) struct AllowedClient {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) allowed: Allowed,
}

impl ClientCertVerifier for AllowedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The dialing side's counterpart of [`AllowedClient`]: the peer's server certificate is
/// verified (chain and the URL's host), then checked against [`Allowed`].
#[derive(Debug)]
pub(super) struct AllowedServer {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) allowed: Option<Allowed>,
}

impl ServerCertVerifier for AllowedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(allowed) = &self.allowed {
            allowed.check(end_entity)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `--peer-auto-tls` without a CA: any certificate is accepted (etcd sets
/// `InsecureSkipVerify` for its self-signed peer certificates); the handshake signatures are
/// still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
pub(super) struct SelfSignedPeer {
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SelfSignedPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
