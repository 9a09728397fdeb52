//! The keys table: every configuration key once, with its default, kind, help section and text,
//! its old spellings, and how a written key or `ETCD_*` variable maps to it.

pub(super) const ENV_PREFIX: &str = "ETCD_";
pub(super) const CONFIG_FILE: &str = "config-file";

/// What kind of value a key holds; drives how its flag is declared and shown in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Bool,
    Integer,
    Duration,
    Urls,
    List,
}

/// The default of a key: a literal, or derived from other keys when left empty.
#[derive(Clone, Copy, Debug)]
enum KeyDefault {
    Value(&'static str),
    /// Empty in the layered defaults; the text describes the derivation for `--help`.
    Derived(&'static str),
}

/// One configuration key: its etcd flag name (without `--`), default, kind, help section and text.
#[derive(Clone, Copy, Debug)]
pub(super) struct Key {
    pub(super) name: &'static str,
    default: KeyDefault,
    pub(super) kind: Kind,
    pub(super) section: &'static str,
    pub(super) help: &'static str,
}

impl Key {
    pub(super) fn layered_default(&self) -> &'static str {
        match self.default {
            KeyDefault::Value(value) => value,
            KeyDefault::Derived(_) => "",
        }
    }

    pub(super) fn shown_default(&self) -> &'static str {
        match self.default {
            KeyDefault::Value("") => "none",
            KeyDefault::Value(value) => value,
            KeyDefault::Derived(description) => description,
        }
    }
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const MONITORING: &str = "Monitoring";
const LOGGING: &str = "Logging";
const TRACING: &str = "Distributed tracing";
const SECURITY: &str = "Security";
const AUTH: &str = "Auth";
const FEATURES: &str = "Features";
const UNSAFE: &str = "Unsafe";

const fn key(
    name: &'static str,
    default: &'static str,
    kind: Kind,
    section: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        default: KeyDefault::Value(default),
        kind,
        section,
        help,
    }
}

/// Every configuration key, with its one default.
pub(super) const KEYS: &[Key] = &[
    key(
        "name",
        "default",
        Kind::Text,
        MEMBER,
        "Human-readable name of this member",
    ),
    Key {
        name: "data-dir",
        default: KeyDefault::Derived("${name}.oxetcd"),
        kind: Kind::Text,
        section: MEMBER,
        help: "Directory holding this member's data",
    },
    key(
        "snapshot-count",
        "10000",
        Kind::Integer,
        MEMBER,
        "Applied entries between two raft snapshots (raft log truncation points)",
    ),
    key(
        "heartbeat-interval",
        "100",
        Kind::Integer,
        MEMBER,
        "Raft heartbeat interval in milliseconds",
    ),
    key(
        "election-timeout",
        "1000",
        Kind::Integer,
        MEMBER,
        "Raft election timeout in milliseconds",
    ),
    key(
        "listen-peer-urls",
        "http://127.0.0.1:2380",
        Kind::Urls,
        MEMBER,
        "Comma-separated URLs to listen on for peer (raft) traffic",
    ),
    key(
        "listen-client-urls",
        "http://127.0.0.1:2379",
        Kind::Urls,
        MEMBER,
        "Comma-separated URLs to listen on for client traffic",
    ),
    key(
        "quota-backend-bytes",
        "0",
        Kind::Integer,
        MEMBER,
        "Backend size that raises the NOSPACE alarm; 0 means 2 GiB",
    ),
    key(
        "backend-cache-bytes",
        "33554432",
        Kind::Integer,
        MEMBER,
        "Memory for RocksDB's block cache (recently read data blocks), in bytes",
    ),
    key(
        "backend-write-buffer-bytes",
        "67108864",
        Kind::Integer,
        MEMBER,
        "Memory for RocksDB's write buffers (memtables) of all column families together, in bytes",
    ),
    key(
        "max-request-bytes",
        "1572864",
        Kind::Integer,
        MEMBER,
        "Largest client request the server accepts, in bytes",
    ),
    key(
        "max-txn-ops",
        "128",
        Kind::Integer,
        MEMBER,
        "Most operations allowed in one transaction",
    ),
    key(
        "initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        Kind::Urls,
        CLUSTERING,
        "Comma-separated peer URLs of this member as announced to the rest of the cluster",
    ),
    Key {
        name: "initial-cluster",
        default: KeyDefault::Derived("${name}=${initial-advertise-peer-urls}"),
        kind: Kind::List,
        section: CLUSTERING,
        help: "Initial cluster members for bootstrapping, as name=peer-url,...",
    },
    key(
        "initial-cluster-state",
        "new",
        Kind::Text,
        CLUSTERING,
        "Initial cluster state: new or existing (to join a running cluster)",
    ),
    key(
        "initial-cluster-token",
        "etcd-cluster",
        Kind::Text,
        CLUSTERING,
        "Token that keeps clusters bootstrapped from the same member list apart",
    ),
    key(
        "advertise-client-urls",
        "http://127.0.0.1:2379",
        Kind::Urls,
        CLUSTERING,
        "Comma-separated client URLs of this member as announced to the rest of the cluster",
    ),
    key(
        "strict-reconfig-check",
        "true",
        Kind::Bool,
        CLUSTERING,
        "Reject membership changes that could cost the cluster its quorum",
    ),
    key(
        "pre-vote",
        "true",
        Kind::Bool,
        CLUSTERING,
        "Accepted for etcd compatibility; oxetcd always runs raft's pre-vote phase before \
         elections (false is ignored)",
    ),
    key(
        "auto-compaction-mode",
        "periodic",
        Kind::Text,
        CLUSTERING,
        "Automatic compaction mode: periodic or revision",
    ),
    key(
        "auto-compaction-retention",
        "0",
        Kind::Text,
        CLUSTERING,
        "History kept by automatic compaction: a duration such as 1h or 30m (a bare number means \
         hours) in periodic mode, a revision count in revision mode; 0 disables it",
    ),
    key(
        "listen-metrics-urls",
        "",
        Kind::Urls,
        MONITORING,
        "Comma-separated extra URLs serving /metrics and /health",
    ),
    key(
        "log-level",
        "info",
        Kind::Text,
        LOGGING,
        "Log level: debug, info, warn, error, dpanic, panic or fatal",
    ),
    key(
        "log-outputs",
        "stderr",
        Kind::List,
        LOGGING,
        "Comma-separated log destinations: stderr, stdout, default or file paths",
    ),
    key(
        "log-format",
        "json",
        Kind::Text,
        LOGGING,
        "Log format: json or console",
    ),
    key(
        "enable-distributed-tracing",
        "false",
        Kind::Bool,
        TRACING,
        "Export OpenTelemetry traces of requests",
    ),
    key(
        "distributed-tracing-address",
        "localhost:4317",
        Kind::Text,
        TRACING,
        "OTLP gRPC collector address (host:port)",
    ),
    key(
        "distributed-tracing-service-name",
        "etcd",
        Kind::Text,
        TRACING,
        "Service name attached to exported traces",
    ),
    key(
        "distributed-tracing-sampling-rate",
        "0",
        Kind::Integer,
        TRACING,
        "Sampled traces per million requests",
    ),
    key(
        "cert-file",
        "",
        Kind::Text,
        SECURITY,
        "Certificate (PEM, leaf first) the https:// client and metrics URLs present",
    ),
    key(
        "key-file",
        "",
        Kind::Text,
        SECURITY,
        "Private key (PEM) of --cert-file",
    ),
    key(
        "trusted-ca-file",
        "",
        Kind::Text,
        SECURITY,
        "CA certificates (PEM) that client certificates must chain to",
    ),
    key(
        "client-cert-auth",
        "false",
        Kind::Bool,
        SECURITY,
        "Require https:// clients to present a certificate signed by --trusted-ca-file",
    ),
    key(
        "client-crl-file",
        "",
        Kind::Text,
        SECURITY,
        "Certificate revocation list (PEM) checked against client certificates",
    ),
    key(
        "client-cert-allowed-hostname",
        "",
        Kind::Text,
        SECURITY,
        "Accept only client certificates valid for this host name (with --client-cert-auth)",
    ),
    key(
        "cipher-suites",
        "",
        Kind::List,
        SECURITY,
        "Comma-separated TLS cipher suites by Go/IANA name, e.g. \
         TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256; empty means rustls's defaults",
    ),
    key(
        "tls-min-version",
        "TLS1.2",
        Kind::Text,
        SECURITY,
        "Minimum TLS version: TLS1.2 or TLS1.3",
    ),
    key(
        "tls-max-version",
        "",
        Kind::Text,
        SECURITY,
        "Maximum TLS version: TLS1.2 or TLS1.3; empty means the newest supported",
    ),
    key(
        "auto-tls",
        "false",
        Kind::Bool,
        SECURITY,
        "Serve https:// URLs with a generated self-signed certificate when --cert-file is not set",
    ),
    key(
        "self-signed-cert-validity",
        "1",
        Kind::Integer,
        SECURITY,
        "Validity of the --auto-tls certificate, in years",
    ),
    key(
        "peer-cert-file",
        "",
        Kind::Text,
        SECURITY,
        "Certificate (PEM, leaf first) the https:// peer URLs present",
    ),
    key(
        "peer-key-file",
        "",
        Kind::Text,
        SECURITY,
        "Private key (PEM) of --peer-cert-file",
    ),
    key(
        "peer-client-cert-file",
        "",
        Kind::Text,
        SECURITY,
        "Certificate this member presents when it dials a peer's https:// URL; empty means \
         --peer-cert-file",
    ),
    key(
        "peer-client-key-file",
        "",
        Kind::Text,
        SECURITY,
        "Private key (PEM) of --peer-client-cert-file",
    ),
    key(
        "peer-trusted-ca-file",
        "",
        Kind::Text,
        SECURITY,
        "CA certificates (PEM) that peer certificates must chain to, both the peers dialing in \
         (with --peer-client-cert-auth) and the peers this member dials",
    ),
    key(
        "peer-client-cert-auth",
        "false",
        Kind::Bool,
        SECURITY,
        "Require peers dialing the https:// peer URLs to present a certificate signed by \
         --peer-trusted-ca-file",
    ),
    key(
        "peer-crl-file",
        "",
        Kind::Text,
        SECURITY,
        "Certificate revocation list (PEM) checked against certificates of peers dialing in",
    ),
    key(
        "peer-cert-allowed-cn",
        "",
        Kind::Text,
        SECURITY,
        "Accept only peer certificates with this common name (CN), in both directions",
    ),
    key(
        "peer-cert-allowed-hostname",
        "",
        Kind::Text,
        SECURITY,
        "Accept only peer certificates valid for this host name, in both directions",
    ),
    key(
        "peer-auto-tls",
        "false",
        Kind::Bool,
        SECURITY,
        "Serve https:// peer URLs with a generated self-signed certificate when --peer-cert-file \
         is not set; peers' certificates are then not verified (as in etcd)",
    ),
    key(
        "feature-gates",
        "",
        Kind::List,
        FEATURES,
        "etcd 3.6 feature gates, Name=true|false,...: InitialCorruptCheck is \
         --experimental-initial-corrupt-check; CompactHashCheck, StopGRPCServiceOnDefrag, \
         TxnModeWriteWithSharedBuffer, SetMemberLocalAddr, FastLeaseKeepAlive and \
         PriorityRequest are accepted and ignored (oxetcd does not implement them); \
         LeaseCheckpoint and LeaseCheckpointPersist are always on",
    ),
    key(
        "experimental-initial-corrupt-check",
        "false",
        Kind::Bool,
        FEATURES,
        "On a restart, before serving, compare this member's KV hash with its peers' at this \
         member's revision and refuse to start if one with the same compaction differs \
         (etcd 3.6: --feature-gates=InitialCorruptCheck=true)",
    ),
    key(
        "corrupt-check-time",
        "0s",
        Kind::Duration,
        FEATURES,
        "How often the leader compares its KV hash with every follower's at the same revision \
         and raises the CORRUPT alarm on a mismatch, which stops writes cluster-wide; 0 turns \
         the check off",
    ),
    key(
        "auth-token",
        "simple",
        Kind::Text,
        AUTH,
        "How Authenticate makes tokens: simple, or \
         jwt,pub-key=PATH,priv-key=PATH,sign-method=METHOD[,ttl=DURATION] (RS256, RS384, RS512, \
         PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512; ttl 5m by default; \
         without pub-key it is derived from priv-key (for HS*, priv-key is the secret); with only \
         pub-key the member verifies tokens but issues none)",
    ),
    key(
        "auth-token-ttl",
        "300",
        Kind::Integer,
        AUTH,
        "Seconds a simple token lives after its last use",
    ),
    key(
        "bcrypt-cost",
        "10",
        Kind::Integer,
        AUTH,
        "bcrypt cost of the password hashes this member makes (4 to 31)",
    ),
    key(
        "watch-progress-notify-interval",
        "10m",
        Kind::Duration,
        FEATURES,
        "Interval between progress notifications sent to idle watchers",
    ),
    key(
        "auto-compaction-check-interval",
        "5m",
        Kind::Duration,
        FEATURES,
        "oxetcd: how often revision-mode auto compaction checks the store (etcd fixes it at 5m)",
    ),
    key(
        "warning-apply-duration",
        "100ms",
        Kind::Duration,
        FEATURES,
        "Accepted for etcd compatibility and ignored: oxetcd does not yet warn about slow \
         applies",
    ),
    key(
        "experimental-lease-checkpoint-interval",
        "5m",
        Kind::Duration,
        FEATURES,
        "How often the leader records through raft the remaining TTL of every lease granted for \
         longer than this, so a new leader does not restart it from its full TTL; 0 means 5m",
    ),
    key(
        "experimental-enable-lease-checkpoint",
        "false",
        Kind::Bool,
        FEATURES,
        "Accepted for etcd compatibility and ignored: oxetcd always checkpoints lease TTLs",
    ),
    key(
        "experimental-enable-lease-checkpoint-persist",
        "false",
        Kind::Bool,
        FEATURES,
        "Accepted for etcd compatibility and ignored: oxetcd always persists lease checkpoints",
    ),
    key(
        "max-learners",
        "1",
        Kind::Integer,
        FEATURES,
        "Most learner members the cluster may hold",
    ),
    key(
        "unsafe-no-fsync",
        "false",
        Kind::Bool,
        UNSAFE,
        "Skip fsync; a crash can lose or corrupt data (testing only)",
    ),
];

/// Old spellings accepted for a key (etcd 3.5's `--experimental-` names), as (old, current).
pub(super) const ALIASES: &[(&str, &str)] = &[
    (
        "experimental-watch-progress-notify-interval",
        "watch-progress-notify-interval",
    ),
    (
        "experimental-warning-apply-duration",
        "warning-apply-duration",
    ),
    ("experimental-max-learners", "max-learners"),
    ("experimental-corrupt-check-time", "corrupt-check-time"),
    (
        "experimental-enable-distributed-tracing",
        "enable-distributed-tracing",
    ),
    (
        "experimental-distributed-tracing-address",
        "distributed-tracing-address",
    ),
    (
        "experimental-distributed-tracing-service-name",
        "distributed-tracing-service-name",
    ),
    (
        "experimental-distributed-tracing-sampling-rate",
        "distributed-tracing-sampling-rate",
    ),
];

/// Keys `oxetcd snapshot restore` takes as flags (the rest still come from file and environment).
pub(super) const RESTORE_KEYS: &[&str] = &[
    "data-dir",
    "name",
    "initial-cluster",
    "initial-cluster-token",
    "initial-advertise-peer-urls",
];

/// Maps a key as written (dashes) to its table entry, and says whether an old alias was used.
pub(super) fn canonical_key(written: &str) -> Option<(&'static str, bool)> {
    if let Some(key) = KEYS.iter().find(|key| key.name == written) {
        return Some((key.name, false));
    }
    ALIASES
        .iter()
        .find(|(old, _)| *old == written)
        .and_then(|(_, current)| KEYS.iter().find(|key| key.name == *current))
        .map(|key| (key.name, true))
}

/// The `ETCD_*` variable that sets a key.
pub(super) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('-', "_"))
}
