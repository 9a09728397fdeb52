//! The version strings oxetcd reports: the etcd API level it implements and its own crate version.

/// The etcd server version oxetcd answers with (Status.version, `/version` `etcdserver`).
/// oxetcd implements the etcd 3.5 API.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// The cluster version (`/version` `etcdcluster`); a single-version cluster always agrees on it.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// The storage version reported in Status.storageVersion.
pub const ETCD_STORAGE_VERSION: &str = "3.5.0";

/// This build of oxetcd.
pub const OXETCD_VERSION: &str = env!("CARGO_PKG_VERSION");
