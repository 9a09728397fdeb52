//! The request-ID generator (member and cluster IDs are derived in [`crate::membership`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    fn request_ids_are_unique() {
        let g = IdGen::new(0xabcd);
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| g.next()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id >> 48 == 0xabcd));
    }
}
