//! Identifiers: stable member and cluster IDs, and the request-ID generator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// FNV-1a, 64 bit: stable across builds and platforms, so every member derives the same IDs from
/// the same flags.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// A member's ID: derived from its sorted peer URLs and the cluster token, as etcd does.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv1a64(&[joined.as_bytes(), cluster_token.as_bytes()])
}

/// The cluster's ID: derived from the sorted member IDs and the cluster token.
pub fn cluster_id(member_ids: &[u64], cluster_token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a64(&[&bytes, cluster_token.as_bytes()])
}

/// Unique request IDs: 16 bits of the member ID, then 40 bits of the start time in milliseconds,
/// then a counter (etcd's layout), so IDs from different members and restarts do not collide.
pub struct IdGen {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGen {
    pub fn new(member_id: u64) -> IdGen {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            prefix: (member_id & 0xffff) << 48,
            suffix: AtomicU64::new((now_ms & ((1 << 40) - 1)) << 8),
        }
    }

    pub fn next(&self) -> u64 {
        let suffix = self.suffix.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.prefix | (suffix & ((1 << 48) - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "other"));
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
    }

    #[test]
    fn request_ids_are_unique() {
        let g = IdGen::new(0xabcd);
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| g.next()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id >> 48 == 0xabcd));
    }
}
