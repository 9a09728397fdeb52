//! Key permissions as etcd checks them: each role grants READ, WRITE or READWRITE on a key or a
//! key range written with Range's encoding, a user holds the union of its roles' grants, and a
//! request is allowed when that union covers the whole key range it touches.
//!
//! Ranges use etcd's encoding: an empty `range_end` is the single key, `range_end == "\0"` is
//! every key from `key` on (with an empty `key`, every key), and otherwise `[key, range_end)`.
//! Grants are merged into sorted, disjoint intervals once, when the permissions are built, so a
//! check is a binary search.

use crate::proto::authpb::Permission;
use crate::proto::authpb::permission::Type as PermissionType;

/// What a request needs on the keys it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// An end-exclusive interval of keys; `end: None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The keys `key`/`range_end` name in Range's encoding. A range whose end is not after its
    /// key names no key past `key` itself, so it is taken as the single key (a grant like that
    /// grants that key, a request like that needs it).
    fn from_range(key: &[u8], range_end: &[u8]) -> Interval {
        match range_end {
            [0] => Interval {
                start: key.to_vec(),
                end: None,
            },
            end if end.is_empty() || end <= key => Interval {
                start: key.to_vec(),
                end: Some(next_key(key)),
            },
            end => Interval {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    /// Whether `self` holds every key of `other`.
    fn covers(&self, other: &Interval) -> bool {
        self.start <= other.start
            && match (&self.end, &other.end) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(end), Some(other_end)) => other_end <= end,
            }
    }
}

/// The smallest key after `key`: `key` followed by a zero byte.
fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Sorted, disjoint intervals: the union of the ones given.
fn merge(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort_by(|a, b| a.start.cmp(&b.start));
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for interval in intervals {
        if let Some(last) = merged.last_mut() {
            match &last.end {
                // An unbounded interval already holds everything after its start.
                None => continue,
                // Overlapping or touching: extend.
                Some(end) if interval.start <= *end => {
                    last.end = match (&last.end, interval.end) {
                        (Some(a), Some(b)) => Some(if b > *a { b } else { a.clone() }),
                        _ => None,
                    };
                    continue;
                }
                Some(_) => {}
            }
        }
        merged.push(interval);
    }
    merged
}

/// The key ranges one user may read and may write: the union of its roles' permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPermissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl KeyPermissions {
    /// The union of `permissions` (typically every permission of every role of a user).
    pub fn from_permissions<'a>(
        permissions: impl IntoIterator<Item = &'a Permission>,
    ) -> KeyPermissions {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for permission in permissions {
            let interval = Interval::from_range(&permission.key, &permission.range_end);
            match permission.perm_type() {
                PermissionType::Read => read.push(interval),
                PermissionType::Write => write.push(interval),
                PermissionType::Readwrite => {
                    read.push(interval.clone());
                    write.push(interval);
                }
            }
        }
        KeyPermissions {
            read: merge(read),
            write: merge(write),
        }
    }

    /// Every key, for reading and writing: what the root role grants.
    pub fn everything() -> KeyPermissions {
        let all = vec![Interval {
            start: Vec::new(),
            end: None,
        }];
        KeyPermissions {
            read: all.clone(),
            write: all,
        }
    }

    /// Whether the user may `access` every key of `key`/`range_end` (Range's encoding).
    pub fn permits(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let granted = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        let wanted = Interval::from_range(key, range_end);
        // The only interval that can cover `wanted` is the last one starting at or before it.
        let at = granted.partition_point(|i| i.start <= wanted.start);
        at > 0 && granted[at - 1].covers(&wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(kind: PermissionType, key: &str, range_end: &str) -> Permission {
        let mut permission = Permission {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..Permission::default()
        };
        permission.set_perm_type(kind);
        permission
    }

    fn perms(grants: &[Permission]) -> KeyPermissions {
        KeyPermissions::from_permissions(grants)
    }

    use Access::{Read, Write};
    use PermissionType::{Read as R, Readwrite as RW, Write as W};

    #[test]
    fn a_single_key_grant_covers_that_key_only() {
        let p = perms(&[grant(R, "foo", "")]);
        assert!(p.permits(b"foo", b"", Read));
        assert!(!p.permits(b"foo", b"", Write));
        assert!(!p.permits(b"fo", b"", Read));
        assert!(!p.permits(b"foo0", b"", Read));
        // The range [foo, foo\0) is exactly the key.
        assert!(p.permits(b"foo", b"foo\0", Read));
        assert!(!p.permits(b"foo", b"fop", Read));
    }

    #[test]
    fn a_prefix_grant_covers_ranges_inside_it_and_nothing_past_it() {
        // etcdctl role grant-permission --prefix r readwrite foo  →  [foo, fop)
        let p = perms(&[grant(RW, "foo", "fop")]);
        assert!(p.permits(b"foo", b"", Write));
        assert!(p.permits(b"foo/bar", b"", Read));
        assert!(p.permits(b"foo/", b"foo0", Read));
        assert!(p.permits(b"foo", b"fop", Read));
        assert!(!p.permits(b"foo", b"fop\0", Read));
        assert!(!p.permits(b"fop", b"", Read));
        assert!(
            !p.permits(b"foo", b"\0", Read),
            "open-ended needs an open-ended grant"
        );
    }

    #[test]
    fn from_key_and_all_key_grants_are_open_ended() {
        let from_m = perms(&[grant(W, "m", "\0")]);
        assert!(from_m.permits(b"m", b"\0", Write));
        assert!(from_m.permits(b"zzz", b"", Write));
        assert!(!from_m.permits(b"a", b"", Write));
        assert!(!from_m.permits(b"", b"\0", Write));

        let all = perms(&[grant(R, "", "\0")]);
        assert!(all.permits(b"", b"\0", Read));
        assert!(all.permits(b"anything", b"", Read));
        assert!(!all.permits(b"anything", b"", Write));
    }

    #[test]
    fn touching_and_overlapping_grants_merge_so_a_range_across_them_is_allowed() {
        // Two roles: [a, c) and [c, e); one request over [b, d).
        let p = perms(&[grant(R, "a", "c"), grant(RW, "c", "e")]);
        assert!(p.permits(b"b", b"d", Read));
        assert!(!p.permits(b"b", b"d", Write), "write covers only [c, e)");
        assert!(p.permits(b"c", b"e", Write));

        let overlapping = perms(&[grant(R, "a", "d"), grant(R, "b", "c"), grant(R, "c", "f")]);
        assert!(overlapping.permits(b"a", b"f", Read));
        assert_eq!(overlapping.read.len(), 1);
    }

    #[test]
    fn a_gap_between_grants_denies_a_range_across_it() {
        let p = perms(&[grant(R, "a", "c"), grant(R, "d", "f")]);
        assert!(p.permits(b"a", b"c", Read));
        assert!(p.permits(b"d", b"e", Read));
        assert!(!p.permits(b"b", b"e", Read));
        assert!(!p.permits(b"c", b"", Read));
    }

    #[test]
    fn an_open_ended_grant_absorbs_later_grants() {
        let p = perms(&[grant(R, "k", "\0"), grant(R, "m", "n"), grant(R, "a", "b")]);
        assert_eq!(p.read.len(), 2);
        assert!(p.permits(b"k", b"\0", Read));
        assert!(!p.permits(b"b", b"", Read));
    }

    #[test]
    fn no_grants_permit_nothing() {
        let p = KeyPermissions::default();
        assert!(!p.permits(b"", b"", Read));
        assert!(!p.permits(b"a", b"", Write));
    }
}
