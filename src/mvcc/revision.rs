//! MVCC revisions and their on-disk form: the keys of the `kv` column family.
//!
//! A revision key is etcd's encoding, byte for byte: `BE(main)` (8 bytes), `b'_'`, `BE(sub)`
//! (8 bytes), plus a trailing `b't'` when the revision is a tombstone (a deletion). Revisions are
//! never negative, so byte order is revision order.

use std::fmt;

/// Length of a revision key without the tombstone mark.
pub const REV_KEY_LEN: usize = 17;
/// Length of a tombstone revision key.
pub const TOMBSTONE_KEY_LEN: usize = REV_KEY_LEN + 1;
/// The byte that marks a tombstone revision key.
pub const TOMBSTONE_MARK: u8 = b't';

/// One point in the store's history: `main` is the store revision a write txn committed at,
/// `sub` orders the changes inside that txn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// The 17-byte key of a live (non-tombstone) revision.
    pub fn to_key(self) -> [u8; REV_KEY_LEN] {
        let mut key = [0u8; REV_KEY_LEN];
        key[..8].copy_from_slice(&self.main.to_be_bytes());
        key[8] = b'_';
        key[9..].copy_from_slice(&self.sub.to_be_bytes());
        key
    }

    /// The key of this revision, with the tombstone mark when `tombstone`.
    pub fn to_key_vec(self, tombstone: bool) -> Vec<u8> {
        let mut key = Vec::with_capacity(TOMBSTONE_KEY_LEN);
        key.extend_from_slice(&self.to_key());
        if tombstone {
            key.push(TOMBSTONE_MARK);
        }
        key
    }

    /// The smallest key of main revision `main`: scans `[key_of_main(a), key_of_main(b))` cover
    /// exactly the main revisions `a..b`.
    pub fn key_of_main(main: i64) -> [u8; REV_KEY_LEN] {
        Revision::new(main, 0).to_key()
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

/// Parses a `kv` column family key into its revision and tombstone flag; `None` if the key is
/// not a revision key.
pub fn decode_rev_key(key: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match key.len() {
        REV_KEY_LEN => false,
        TOMBSTONE_KEY_LEN if key[REV_KEY_LEN] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..REV_KEY_LEN].try_into().ok()?);
    Some((Revision { main, sub }, tombstone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_like_revisions() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(255, 7),
            Revision::new(256, 0),
            Revision::new(i64::MAX, i64::MAX),
        ];
        for (i, rev) in revs.iter().enumerate() {
            for tombstone in [false, true] {
                let key = rev.to_key_vec(tombstone);
                assert_eq!(decode_rev_key(&key), Some((*rev, tombstone)));
            }
            if i > 0 {
                assert!(revs[i - 1].to_key() < rev.to_key());
                // A tombstone key sorts right after its live form and before the next revision.
                assert!(revs[i - 1].to_key_vec(true).as_slice() < &rev.to_key()[..]);
            }
        }
        assert_eq!(
            Revision::new(2, 3).to_key(),
            [0, 0, 0, 0, 0, 0, 0, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3]
        );
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert_eq!(decode_rev_key(b"short"), None);
        let mut key = Revision::new(5, 0).to_key_vec(false);
        key[8] = b'-';
        assert_eq!(decode_rev_key(&key), None);
        let mut key = Revision::new(5, 0).to_key_vec(false);
        key.push(b'x');
        assert_eq!(decode_rev_key(&key), None);
    }
}

/// Properties of the revision key encoding. 256 cases each; the module runs in well under a
/// second in release.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn keys_round_trip(main in 0..=i64::MAX, sub in 0..=i64::MAX, tombstone: bool) {
            let rev = Revision::new(main, sub);
            prop_assert_eq!(decode_rev_key(&rev.to_key_vec(tombstone)), Some((rev, tombstone)));
        }

        #[test]
        fn key_order_is_revision_order(
            a in (0..=i64::MAX, 0..=i64::MAX),
            b in (0..=i64::MAX, 0..=i64::MAX),
        ) {
            let (a, b) = (Revision::new(a.0, a.1), Revision::new(b.0, b.1));
            prop_assert_eq!(a.to_key().cmp(&b.to_key()), a.cmp(&b));
        }

        /// Any bytes either are a revision key that encodes back to themselves or are refused.
        #[test]
        fn any_bytes_decode_or_are_refused(key in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let Some((rev, tombstone)) = decode_rev_key(&key) {
                prop_assert_eq!(rev.to_key_vec(tombstone), key);
            }
        }
    }
}
