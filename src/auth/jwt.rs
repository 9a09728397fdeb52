//! etcd's `jwt` tokens (`--auth-token jwt,...`): a signed JWT carrying the claims etcd puts in
//! (`username`, `revision`, `exp`). Any member holding the public key verifies one, so a member
//! signs its tokens itself, without raft; a member given only `pub-key` verifies and issues none
//! (etcd's verify-only mode), and one given only `priv-key` derives the public key, as etcd
//! does. Unlike a simple token, a JWT carries the auth revision it was issued at, so any later
//! auth change makes it `revision of auth store is old`.
//!
//! The keys are read and checked once, at start; a key's contents never reach an error or a log.
//! Time is passed in: expiry is checked here, not by the JWT crate's clock.
//!
//! Tokens are signed and verified by jsonwebtoken 9 with ring, the crypto rustls already uses
//! here; ES512 is not offered, as neither has it. The public key is derived from `priv-key` with
//! ring too, from a PKCS#1 or PKCS#8 RSA, PKCS#8 EC (P-256, P-384) or Ed25519 key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// Why the JWT keys could not be loaded; none carries a key's contents.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("sign-method {0:?} is not supported")]
    Method(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PEM {kind} key for {method}", path.display())]
    Parse {
        path: PathBuf,
        kind: &'static str,
        method: String,
    },
    #[error("{method} needs {what}")]
    Missing { method: String, what: &'static str },
    #[error("priv-key and pub-key are not a pair: a token signed with one fails with the other")]
    Mismatch,
}

/// Why a JWT was refused; all read as etcd's `invalid auth token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a valid JWT for this member's key")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    /// This member has only the public key (etcd: `auth: token signing attempted with
    /// verify-only key`).
    #[error("token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("signing the token failed")]
    Sign,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub username: String,
    pub revision: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// The keys of one member's JWTs.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// `None`: verify-only.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Family {
    Rsa,
    Ec,
    Ed,
    Hmac,
}

fn family(algorithm: Algorithm) -> Family {
    match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, JwtKeyError> {
    std::fs::read(path).map_err(|source| JwtKeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn seconds_since_epoch(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The public key of the private key `pem`, for a member given only `priv-key` (etcd derives
/// it too), in the form jsonwebtoken's ring verification takes: PKCS#1 `RSAPublicKey` DER for
/// RSA, the uncompressed point for EC, the raw 32 bytes for Ed25519.
fn public_of(algorithm: Algorithm, pem: &[u8]) -> Option<DecodingKey> {
    use ring::signature::{self, KeyPair as _};
    use rustls_pki_types::{PrivateKeyDer, pem::PemObject as _};
    let der = PrivateKeyDer::from_pem_slice(pem).ok()?;
    Some(match (family(algorithm), &der) {
        (Family::Rsa, PrivateKeyDer::Pkcs1(key)) => {
            let key = signature::RsaKeyPair::from_der(key.secret_pkcs1_der()).ok()?;
            DecodingKey::from_rsa_der(key.public_key().as_ref())
        }
        (Family::Rsa, PrivateKeyDer::Pkcs8(key)) => {
            let key = signature::RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).ok()?;
            DecodingKey::from_rsa_der(key.public_key().as_ref())
        }
        (Family::Ec, PrivateKeyDer::Pkcs8(key)) => {
            let curve = match algorithm {
                Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => return None,
            };
            let rng = ring::rand::SystemRandom::new();
            let key =
                signature::EcdsaKeyPair::from_pkcs8(curve, key.secret_pkcs8_der(), &rng).ok()?;
            DecodingKey::from_ec_der(key.public_key().as_ref())
        }
        (Family::Ed, PrivateKeyDer::Pkcs8(key)) => {
            let key = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.secret_pkcs8_der())
                .ok()?;
            DecodingKey::from_ed_der(key.public_key().as_ref())
        }
        _ => return None,
    })
}

impl JwtTokens {
    /// Reads and checks the keys: `sign_method` one of etcd's names, `priv_key` to sign (the
    /// HMAC secret for HS*), `pub_key` to verify (derived from `priv_key` when not given); with
    /// both, a probe token signed by one must verify with the other.
    pub fn load(
        sign_method: &str,
        pub_key: Option<&Path>,
        priv_key: Option<&Path>,
        ttl: Duration,
    ) -> Result<JwtTokens, JwtKeyError> {
        let algorithm: Algorithm = sign_method
            .parse()
            .map_err(|_| JwtKeyError::Method(sign_method.to_owned()))?;
        let method = sign_method.to_owned();
        let parse_error = |path: &Path, kind: &'static str| JwtKeyError::Parse {
            path: path.to_owned(),
            kind,
            method: method.clone(),
        };
        let family = family(algorithm);
        if let Family::Hmac = family {
            let path = priv_key.ok_or_else(|| JwtKeyError::Missing {
                method: method.clone(),
                what: "priv-key (the HMAC secret)",
            })?;
            let secret = read(path)?;
            return Ok(JwtTokens {
                algorithm,
                signing: Some(EncodingKey::from_secret(&secret)),
                verifying: DecodingKey::from_secret(&secret),
                ttl,
            });
        }
        let signing = match priv_key {
            None => None,
            Some(path) => {
                let pem = read(path)?;
                let key = match family {
                    Family::Rsa => EncodingKey::from_rsa_pem(&pem),
                    Family::Ec => EncodingKey::from_ec_pem(&pem),
                    Family::Ed => EncodingKey::from_ed_pem(&pem),
                    Family::Hmac => unreachable!("handled above"),
                }
                .map_err(|_| parse_error(path, "private"))?;
                Some((key, pem))
            }
        };
        let verifying = match (pub_key, &signing) {
            (Some(path), _) => {
                let pem = read(path)?;
                match family {
                    Family::Rsa => DecodingKey::from_rsa_pem(&pem),
                    Family::Ec => DecodingKey::from_ec_pem(&pem),
                    Family::Ed => DecodingKey::from_ed_pem(&pem),
                    Family::Hmac => unreachable!("handled above"),
                }
                .map_err(|_| parse_error(path, "public"))?
            }
            (None, Some((_, pem))) => public_of(algorithm, pem).ok_or_else(|| {
                parse_error(
                    priv_key.expect("a signing key came from priv-key"),
                    "private",
                )
            })?,
            (None, None) => {
                return Err(JwtKeyError::Missing {
                    method,
                    what: "priv-key, pub-key or both",
                });
            }
        };
        let tokens = JwtTokens {
            algorithm,
            signing: signing.map(|(key, _)| key),
            verifying,
            ttl,
        };
        if tokens.signing.is_some() {
            let now = SystemTime::now();
            let probe = tokens.sign("", 0, now).map_err(|_| JwtKeyError::Mismatch)?;
            tokens
                .verify(&probe, now)
                .map_err(|_| JwtKeyError::Mismatch)?;
        }
        Ok(tokens)
    }

    /// Whether this member only verifies.
    pub fn verify_only(&self) -> bool {
        self.signing.is_none()
    }

    /// A token for `username` at auth `revision`, expiring `ttl` after `now`.
    pub fn sign(&self, username: &str, revision: u64, now: SystemTime) -> Result<String, JwtError> {
        let key = self.signing.as_ref().ok_or(JwtError::VerifyOnly)?;
        let claims = Claims {
            username: username.to_owned(),
            revision,
            exp: seconds_since_epoch(now + self.ttl),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|_| JwtError::Sign)
    }

    /// The claims of `token` if this member's key signed it with its method and it has not
    /// expired at `now` (as golang-jwt: valid through its `exp` second, no leeway).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        let mut validation = Validation::new(self.algorithm);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation)
            .map_err(|_| JwtError::Invalid)?;
        if seconds_since_epoch(now) > data.claims.exp {
            return Err(JwtError::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    /// A key pair of `alg` written as PEM files in `dir`: (public, private).
    fn pair(dir: &Path, name: &str, alg: &'static rcgen::SignatureAlgorithm) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let (public, private) = (dir.join(format!("{name}.pub")), dir.join(name));
        std::fs::write(&public, key.public_key_pem()).unwrap();
        std::fs::write(&private, key.serialize_pem()).unwrap();
        (public, private)
    }

    fn load(method: &str, public: &Path, private: Option<&Path>) -> JwtTokens {
        JwtTokens::load(method, Some(public), private, TTL).unwrap()
    }

    #[test]
    fn a_token_carries_etcds_claims_and_expires_after_its_ttl() {
        let dir = tempfile::tempdir().unwrap();
        for (method, alg) in [
            ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("ES384", &rcgen::PKCS_ECDSA_P384_SHA384),
            ("EdDSA", &rcgen::PKCS_ED25519),
        ] {
            let (public, private) = pair(dir.path(), method, alg);
            let tokens = load(method, &public, Some(&private));
            let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
            let token = tokens.sign("alice", 7, t0).unwrap();
            let claims = tokens.verify(&token, t0 + TTL).unwrap();
            assert_eq!(
                claims,
                Claims {
                    username: "alice".into(),
                    revision: 7,
                    exp: 1_000_300
                },
                "{method}"
            );
            assert_eq!(
                tokens.verify(&token, t0 + TTL + Duration::from_secs(1)),
                Err(JwtError::Expired),
                "{method}"
            );
            // A verify-only member accepts it and issues none.
            let verifier = load(method, &public, None);
            assert!(verifier.verify_only());
            assert!(verifier.verify(&token, t0).is_ok(), "{method}");
            assert_eq!(verifier.sign("alice", 7, t0), Err(JwtError::VerifyOnly));
        }
    }

    #[test]
    fn hmac_tokens_use_priv_key_as_the_shared_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret of some length").unwrap();
        let tokens = JwtTokens::load("HS256", None, Some(&secret), TTL).unwrap();
        let now = SystemTime::now();
        let token = tokens.sign("alice", 3, now).unwrap();
        assert_eq!(tokens.verify(&token, now).unwrap().username, "alice");
        std::fs::write(&secret, b"another secret").unwrap();
        let other = JwtTokens::load("HS256", None, Some(&secret), TTL).unwrap();
        assert_eq!(other.verify(&token, now), Err(JwtError::Invalid));
        assert!(JwtTokens::load("HS256", Some(&secret), None, TTL).is_err());
    }

    #[test]
    fn without_pub_key_the_public_key_is_derived_from_priv_key() {
        let dir = tempfile::tempdir().unwrap();
        for (method, alg) in [
            ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("ES384", &rcgen::PKCS_ECDSA_P384_SHA384),
            ("EdDSA", &rcgen::PKCS_ED25519),
        ] {
            let (public, private) = pair(dir.path(), method, alg);
            let signer = JwtTokens::load(method, None, Some(&private), TTL).unwrap();
            let verifier = load(method, &public, None);
            let now = SystemTime::now();
            let token = signer.sign("alice", 1, now).unwrap();
            assert!(verifier.verify(&token, now).is_ok(), "{method}");
            assert!(signer.verify(&token, now).is_ok(), "{method}");
        }
    }

    /// rcgen makes no RSA keys with ring, so openssl does (as in the integration tests).
    #[test]
    fn an_rsa_priv_key_in_pkcs1_or_pkcs8_gives_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "openssl {args:?}");
        };
        let pkcs8 = dir.path().join("pkcs8.key");
        let pkcs1 = dir.path().join("pkcs1.key");
        let public = dir.path().join("rsa.pub");
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let bits = "rsa_keygen_bits:2048";
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            bits,
            "-out",
            &path(&pkcs8),
        ]);
        openssl(&[
            "rsa",
            "-in",
            &path(&pkcs8),
            "-traditional",
            "-out",
            &path(&pkcs1),
        ]);
        openssl(&[
            "pkey",
            "-in",
            &path(&pkcs8),
            "-pubout",
            "-out",
            &path(&public),
        ]);
        let pem = std::fs::read_to_string(&pkcs1).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "PKCS#1");
        let now = SystemTime::now();
        for private in [&pkcs8, &pkcs1] {
            for method in ["RS256", "PS384"] {
                let signer = JwtTokens::load(method, None, Some(private), TTL).unwrap();
                let token = signer.sign("alice", 1, now).unwrap();
                assert!(signer.verify(&token, now).is_ok(), "{method}");
                assert!(
                    load(method, &public, None).verify(&token, now).is_ok(),
                    "{method}"
                );
            }
        }
    }

    #[test]
    fn a_token_from_another_key_or_method_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (public, private) = pair(dir.path(), "a", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (other_public, other_private) = pair(dir.path(), "b", &rcgen::PKCS_ECDSA_P256_SHA256);
        let ours = load("ES256", &public, Some(&private));
        let theirs = load("ES256", &other_public, Some(&other_private));
        let now = SystemTime::now();
        let token = theirs.sign("root", 1, now).unwrap();
        assert_eq!(ours.verify(&token, now), Err(JwtError::Invalid));
        assert_eq!(ours.verify("not.a.jwt", now), Err(JwtError::Invalid));
        let mut tampered = ours.sign("alice", 1, now).unwrap();
        tampered.replace_range(10..11, "x");
        assert_eq!(ours.verify(&tampered, now), Err(JwtError::Invalid));
    }

    #[test]
    fn bad_key_files_are_refused_at_load_without_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (public, private) = pair(dir.path(), "a", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (other_public, _) = pair(dir.path(), "b", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (ed_public, _) = pair(dir.path(), "ed", &rcgen::PKCS_ED25519);
        let missing = dir.path().join("missing");
        let err = |method: &str, public: Option<&Path>, private: Option<&Path>| {
            JwtTokens::load(method, public, private, TTL)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("ES256", Some(&other_public), Some(&private)).contains("not a pair"),
            "mismatch"
        );
        assert!(err("ES256", Some(&missing), None).contains("cannot read"));
        assert!(err("ES256", Some(&ed_public), None).contains("is not a PEM public key"));
        assert!(err("ES256", None, None).contains("needs priv-key"));
        assert!(err("ES512", Some(&public), None).contains("not supported"));
        // The private key used as a public one: the message names the file, not its contents.
        let message = err("ES256", Some(&private), None);
        assert!(!message.contains("BEGIN"), "{message}");
    }
}
