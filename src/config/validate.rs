//! Validation: ranges and relations between keys, bootstrap checks, and advisory warnings.

use std::collections::BTreeSet;

use super::error::ConfigError;
use super::{
    BACKEND_WRITE_BUFFER_BYTES_MIN, ClusterState, Config, ELECTION_TIMEOUT_MS_MAX,
    QUOTA_BACKEND_BYTES_RECOMMENDED_MAX, TRACING_SAMPLING_PER_MILLION_MAX, TlsSettings, TlsVersion,
    etcd_url_string, join_urls,
};

impl Config {
    /// Checks ranges and the relations between keys. [`Config::load`] calls it; call it again after
    /// changing a configuration in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid_value("name", "", "must not be empty"));
        }
        if self.name.contains(['=', ',']) {
            return Err(ConfigError::invalid_value(
                "name",
                &self.name,
                "must not contain '=' or ','",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid_value(
                "data-dir",
                "",
                "must not be empty",
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::invalid_value(
                "heartbeat-interval",
                0,
                "must be greater than 0",
            ));
        }
        if self.election_timeout_ms < self.heartbeat_interval_ms.saturating_mul(5) {
            return Err(ConfigError::ElectionTimeoutTooShort {
                election_timeout_ms: self.election_timeout_ms,
                heartbeat_interval_ms: self.heartbeat_interval_ms,
            });
        }
        if self.election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
            return Err(ConfigError::ElectionTimeoutTooLong {
                election_timeout_ms: self.election_timeout_ms,
            });
        }
        if self.snapshot_count == 0 {
            return Err(ConfigError::invalid_value(
                "snapshot-count",
                0,
                "must be greater than 0",
            ));
        }
        if self.quota_backend_bytes < 0 {
            return Err(ConfigError::invalid_value(
                "quota-backend-bytes",
                self.quota_backend_bytes,
                "must not be negative (0 means the 2 GiB default)",
            ));
        }
        if self.backend_write_buffer_bytes < BACKEND_WRITE_BUFFER_BYTES_MIN {
            return Err(ConfigError::invalid_value(
                "backend-write-buffer-bytes",
                self.backend_write_buffer_bytes,
                "must be at least 4194304 (4 MiB)",
            ));
        }
        if self.request_bytes_max == 0 {
            return Err(ConfigError::invalid_value(
                "max-request-bytes",
                0,
                "must be greater than 0",
            ));
        }
        if self.txn_ops_max == 0 {
            return Err(ConfigError::invalid_value(
                "max-txn-ops",
                0,
                "must be greater than 0",
            ));
        }
        for (key, urls) in [
            ("listen-client-urls", &self.listen_client_urls),
            ("advertise-client-urls", &self.advertise_client_urls),
            ("listen-peer-urls", &self.listen_peer_urls),
            (
                "initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
        ] {
            if urls.is_empty() {
                return Err(ConfigError::invalid_value(
                    key,
                    "",
                    "needs at least one URL",
                ));
            }
        }
        self.validate_initial_cluster()?;
        self.validate_tls()?;
        if self.distributed_tracing_sampling_per_million > TRACING_SAMPLING_PER_MILLION_MAX {
            return Err(ConfigError::invalid_value(
                "distributed-tracing-sampling-rate",
                self.distributed_tracing_sampling_per_million,
                format!("must be between 0 and {TRACING_SAMPLING_PER_MILLION_MAX} (per million)"),
            ));
        }
        if self.enable_distributed_tracing {
            if self.distributed_tracing_address.is_empty() {
                return Err(ConfigError::invalid_value(
                    "distributed-tracing-address",
                    "",
                    "must not be empty when tracing is enabled",
                ));
            }
            if self.distributed_tracing_service_name.is_empty() {
                return Err(ConfigError::invalid_value(
                    "distributed-tracing-service-name",
                    "",
                    "must not be empty when tracing is enabled",
                ));
            }
        }
        if self.learners_max == 0 {
            return Err(ConfigError::invalid_value(
                "max-learners",
                0,
                "must be at least 1",
            ));
        }
        if self.log_outputs.is_empty() {
            return Err(ConfigError::invalid_value(
                "log-outputs",
                "",
                "needs at least one output",
            ));
        }
        Ok(())
    }

    /// https:// listeners need a certificate; the TLS keys of each side must agree with each
    /// other.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        for (key, urls, tls) in [
            (
                "listen-client-urls",
                &self.listen_client_urls,
                &self.client_tls,
            ),
            (
                "listen-metrics-urls",
                &self.listen_metrics_urls,
                &self.client_tls,
            ),
            ("listen-peer-urls", &self.listen_peer_urls, &self.peer_tls),
        ] {
            if let Some(url) = urls.iter().find(|url| url.scheme() == "https")
                && !tls.has_certificate()
            {
                let keys = tls.keys();
                return Err(ConfigError::HttpsWithoutCertificate {
                    key: key.to_owned(),
                    url: etcd_url_string(url),
                    cert_key: keys.cert_file,
                    key_key: keys.key_file,
                    auto_key: keys.auto_tls,
                });
            }
        }
        for tls in [&self.client_tls, &self.peer_tls] {
            validate_tls_side(tls)?;
        }
        let peer = &self.peer_tls;
        if self.peer_https()
            && peer.trusted_ca_file.is_none()
            && !(peer.auto_tls && peer.cert_file.is_none())
        {
            // etcd would fall back to the system's CAs; oxetcd has none to offer, and dialing
            // peers without verifying them is only right for --peer-auto-tls certificates.
            return Err(ConfigError::invalid_value(
                "peer-trusted-ca-file",
                "",
                "must be set to verify the peers dialed over https:// (unless --peer-auto-tls \
                 makes this member's certificate)",
            ));
        }
        let tls = &self.client_tls;
        if let Some(max) = tls.max_version
            && max < tls.min_version
        {
            return Err(ConfigError::invalid_value(
                "tls-max-version",
                max.as_str(),
                format!(
                    "must not be below --tls-min-version {}",
                    tls.min_version.as_str()
                ),
            ));
        }
        if !tls.cipher_suites.is_empty() && tls.min_version == TlsVersion::Tls13 {
            // etcd refuses this too: TLS 1.3's suites cannot be chosen.
            return Err(ConfigError::invalid_value(
                "cipher-suites",
                tls.cipher_suites.join(","),
                "cannot be set when --tls-min-version is TLS1.3",
            ));
        }
        if tls.self_signed_cert_validity_years == 0 {
            return Err(ConfigError::invalid_value(
                "self-signed-cert-validity",
                0,
                "must be at least 1 year",
            ));
        }
        Ok(())
    }

    /// Whether this member dials or serves any https:// peer URL.
    pub fn peer_https(&self) -> bool {
        self.listen_peer_urls
            .iter()
            .chain(&self.initial_advertise_peer_urls)
            .chain(self.initial_cluster.iter().flat_map(|m| &m.peer_urls))
            .any(|url| url.scheme() == "https")
    }

    fn validate_initial_cluster(&self) -> Result<(), ConfigError> {
        if self.initial_cluster.is_empty() {
            return Err(ConfigError::invalid_value(
                "initial-cluster",
                "",
                "needs at least one member",
            ));
        }
        let mut seen = BTreeSet::new();
        for member in &self.initial_cluster {
            if member.name.is_empty() || member.peer_urls.is_empty() {
                return Err(ConfigError::invalid_value(
                    "initial-cluster",
                    self.initial_cluster_string(),
                    "every member needs a name and a peer URL",
                ));
            }
            for url in &member.peer_urls {
                let url = etcd_url_string(url);
                if !seen.insert(url.clone()) {
                    return Err(ConfigError::invalid_value(
                        "initial-cluster",
                        self.initial_cluster_string(),
                        format!("peer URL {url} is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks what bootstrapping a member from this configuration needs (etcd does this only when
    /// the data directory is empty, so it is not part of [`Config::validate`]): this member's name
    /// is in `--initial-cluster`, and for a new cluster its URLs there equal
    /// `--initial-advertise-peer-urls`.
    pub fn verify_bootstrap(&self) -> Result<(), ConfigError> {
        let Some(member) = self
            .initial_cluster
            .iter()
            .find(|member| member.name == self.name)
        else {
            return Err(ConfigError::NotInInitialCluster {
                name: self.name.clone(),
                initial_cluster: self.initial_cluster_string(),
            });
        };
        if self.initial_cluster_state == ClusterState::New {
            let in_cluster: BTreeSet<String> =
                member.peer_urls.iter().map(etcd_url_string).collect();
            let advertised: BTreeSet<String> = self
                .initial_advertise_peer_urls
                .iter()
                .map(etcd_url_string)
                .collect();
            if in_cluster != advertised {
                return Err(ConfigError::PeerUrlsMismatch {
                    name: self.name.clone(),
                    advertised: join_urls(&self.initial_advertise_peer_urls),
                    in_cluster: join_urls(&member.peer_urls),
                });
            }
        }
        Ok(())
    }

    /// Warnings about a valid but risky configuration.
    pub(super) fn advisories(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.quota_backend_bytes_effective() > QUOTA_BACKEND_BYTES_RECOMMENDED_MAX {
            warnings.push(format!(
                "--quota-backend-bytes {} exceeds the recommended maximum of {} bytes",
                self.quota_backend_bytes, QUOTA_BACKEND_BYTES_RECOMMENDED_MAX
            ));
        }
        let has_https = self
            .listen_client_urls
            .iter()
            .chain(&self.listen_metrics_urls)
            .any(|url| url.scheme() == "https");
        if !self.peer_https() && (self.peer_tls.cert_file.is_some() || self.peer_tls.auto_tls) {
            warnings.push(
                "peer TLS is configured but no peer URL is https://: members talk in the clear"
                    .to_owned(),
            );
        }
        if !has_https && (self.client_tls.cert_file.is_some() || self.client_tls.auto_tls) {
            warnings.push(
                "TLS is configured but no --listen-client-urls or --listen-metrics-urls URL is \
                 https://; every listener serves plain HTTP"
                    .to_owned(),
            );
        }
        if self.unsafe_no_fsync {
            warnings.push("--unsafe-no-fsync is set: a crash can lose or corrupt data".to_owned());
        }
        warnings
    }
}

/// The pairs come whole, and client certificate checks need a CA.
fn validate_tls_side(tls: &TlsSettings) -> Result<(), ConfigError> {
    let keys = tls.keys();
    for (cert, key, cert_key, key_key) in [
        (&tls.cert_file, &tls.key_file, keys.cert_file, keys.key_file),
        (
            &tls.client_cert_file,
            &tls.client_key_file,
            keys.client_cert_file,
            keys.client_key_file,
        ),
    ] {
        match (cert, key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid_value(
                    key_key,
                    "",
                    format!("must be set together with --{cert_key}"),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid_value(
                    cert_key,
                    "",
                    format!("must be set together with --{key_key}"),
                ));
            }
            _ => {}
        }
    }
    if tls.client_cert_auth && tls.trusted_ca_file.is_none() {
        return Err(ConfigError::invalid_value(
            keys.trusted_ca_file,
            "",
            format!("must be set when --{} is on", keys.client_cert_auth),
        ));
    }
    if let (Some(cn), Some(hostname)) = (&tls.allowed_cn, &tls.allowed_hostname) {
        // etcd refuses the combination too.
        return Err(ConfigError::invalid_value(
            keys.allowed_cn,
            cn,
            format!(
                "cannot be set together with --{} {hostname}",
                keys.allowed_hostname
            ),
        ));
    }
    Ok(())
}
