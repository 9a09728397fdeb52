//! The in-memory index: for every key, the revisions it was written at, grouped in generations.
//!
//! A generation is the life of a key from its creation to its deletion: a tombstone closes the
//! current generation and opens a new, empty one. Example: put@1, put@2, delete@3, put@4,
//! delete@5 gives the generations `[1, 2, 3(t)]`, `[4, 5(t)]`, `[]`. A read at revision R finds
//! the generation that R falls in and its greatest revision ≤ R; if that is the tombstone, or R
//! lies between two generations, the key does not exist at R. This is etcd's `keyIndex`.

use std::collections::{BTreeMap, HashSet};

use smallvec::{SmallVec, smallvec};
use std::ops::Bound;

use super::revision::Revision;

/// The keys a request names, in etcd's convention: an empty `range_end` means the single key
/// `key`; `range_end == "\0"` means every key `>= key`; otherwise `[key, range_end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    Single(&'a [u8]),
    /// `[start, end)`, or `[start, ∞)` when `end` is `None`.
    Span {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Span {
                start: key,
                end: None,
            },
            end => KeyRange::Span {
                start: key,
                end: Some(end),
            },
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::Span { start, end } => k >= start && end.is_none_or(|end| k < end),
        }
    }

    /// Calls `f` for every entry of `map` whose key is in the range, in key order, until `f`
    /// returns false.
    pub fn visit<'m, V>(
        &self,
        map: &'m BTreeMap<Vec<u8>, V>,
        mut f: impl FnMut(&'m Vec<u8>, &'m V) -> bool,
    ) {
        match *self {
            KeyRange::Single(key) => {
                if let Some((k, v)) = map.get_key_value(key) {
                    f(k, v);
                }
            }
            KeyRange::Span { start, end } => {
                let upper = match end {
                    None => Bound::Unbounded,
                    // BTreeMap::range panics on an inverted range; an inverted span is empty.
                    Some(end) if end <= start => return,
                    Some(end) => Bound::Excluded(end),
                };
                for (k, v) in map.range::<[u8], _>((Bound::Included(start), upper)) {
                    if !f(k, v) {
                        return;
                    }
                }
            }
        }
    }
}

/// A revision of a key and the bytes of its record in the `kv` column family (revision key plus
/// value), so that a compaction knows what it frees without reading the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SizedRev {
    rev: Revision,
    bytes: u32,
}

/// One life of a key: the revisions from its creation up to and including its tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Number of revisions in this generation, counting ones compacted away.
    ver: i64,
    /// The revision that created the key (its first put).
    created: Revision,
    /// Inline when it holds one revision (most keys), so such a key costs no allocation here.
    revs: SmallVec<[SizedRev; 1]>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the last revision with `main <= at`.
    fn last_at_or_before(&self, at: i64) -> Option<usize> {
        self.revs
            .partition_point(|r| r.rev.main <= at)
            .checked_sub(1)
    }

    fn bytes(&self) -> u64 {
        self.revs.iter().map(|r| u64::from(r.bytes)).sum()
    }
}

/// What the index knows about a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision holding the key's value.
    pub modified: Revision,
    /// The revision that created this generation of the key.
    pub created: Revision,
    /// The key's version (modifications since creation) at that point.
    pub version: i64,
}

/// Every revision of one key, grouped in generations; the last generation is the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyIndex {
    modified: Revision,
    /// Inline when it holds one generation (a key never deleted).
    generations: SmallVec<[Generation; 1]>,
}

impl KeyIndex {
    fn new() -> KeyIndex {
        KeyIndex {
            modified: Revision::default(),
            generations: smallvec![Generation::default()],
        }
    }

    /// The index entry rebuilt from the first surviving revision of a key whose earlier history
    /// was compacted away: the stored value tells its creation revision and version.
    fn restored(created: Revision, modified: Revision, version: i64, bytes: u32) -> KeyIndex {
        KeyIndex {
            modified,
            generations: smallvec![Generation {
                ver: version,
                created,
                revs: smallvec![SizedRev {
                    rev: modified,
                    bytes,
                }],
            }],
        }
    }

    /// The index entry rebuilt from a tombstone that is the only surviving revision of a key
    /// (a compaction at exactly the deletion revision keeps the tombstone).
    fn restored_tombstone(rev: Revision, bytes: u32) -> KeyIndex {
        let mut ki = KeyIndex::restored(Revision::default(), rev, 1, bytes);
        ki.generations.push(Generation::default());
        ki
    }

    fn put(&mut self, rev: Revision, bytes: u32) {
        assert!(
            rev > self.modified,
            "index put at {rev} after {} breaks revision order",
            self.modified
        );
        let g = self
            .generations
            .last_mut()
            .expect("a key index always has a current generation");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(SizedRev { rev, bytes });
        g.ver += 1;
        self.modified = rev;
    }

    /// Appends a tombstone and opens a new generation. Returns false (and changes nothing) when
    /// the key does not currently exist.
    fn tombstone(&mut self, rev: Revision, bytes: u32) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev, bytes);
        self.generations.push(Generation::default());
        true
    }

    /// Whether the key exists at its last revision (its current generation has revisions).
    fn exists(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The generation that revision `at` falls in, or `None` if the key did not exist at `at`.
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tomb)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && tomb.rev.main <= at {
                // `at` is at or after this closed generation's tombstone: deleted at `at`.
                return None;
            }
            if first.rev.main <= at {
                return Some(g);
            }
        }
        None
    }

    fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.find_generation(at)?;
        let n = g.last_at_or_before(at)?;
        Some(KeyAt {
            modified: g.revs[n].rev,
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// Finds the generation a compaction at `at` starts from and the revision in it that the
    /// compaction keeps (added to `keep`). Generations closed by a tombstone before `at` are
    /// wholly obsolete.
    fn compaction_point(&self, at: i64, keep: &mut HashSet<Revision>) -> (usize, Option<usize>) {
        let last = self.generations.len() - 1;
        let mut gen_idx = 0;
        while gen_idx < last {
            let tomb = self.generations[gen_idx]
                .revs
                .last()
                .expect("only the current generation can be empty");
            if tomb.rev.main >= at {
                break;
            }
            gen_idx += 1;
        }
        let g = &self.generations[gen_idx];
        let rev_idx = g.last_at_or_before(at);
        if let Some(n) = rev_idx {
            keep.insert(g.revs[n].rev);
        }
        (gen_idx, rev_idx)
    }

    /// Drops every revision ≤ `at` except the greatest one of the generation `at` falls in
    /// (which is added to `keep`). A tombstone at exactly `at` is kept, so that a watch starting
    /// at the compaction revision still sees that deletion (etcd #19179). Returns the bytes of
    /// the records dropped.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) -> u64 {
        let (gen_idx, rev_idx) = self.compaction_point(at, keep);
        let mut dropped_bytes = 0;
        if let Some(n) = rev_idx {
            dropped_bytes += self.generations[gen_idx]
                .revs
                .drain(..n)
                .map(|r| u64::from(r.bytes))
                .sum::<u64>();
        }
        dropped_bytes += self
            .generations
            .drain(..gen_idx)
            .map(|g| g.bytes())
            .sum::<u64>();
        if rev_idx.unwrap_or(0) > 0 || gen_idx > 0 {
            // What the key held before the compaction is given back: the index stays
            // proportional to the revisions kept, not to the most a key ever had.
            self.generations.shrink_to_fit();
            for g in &mut self.generations {
                g.revs.shrink_to_fit();
            }
        }
        dropped_bytes
    }

    /// Adds to `keep` what a compaction at `at` would keep, except a tombstone at `at`: the set
    /// `hash_kv` hashes below the compaction revision.
    fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gen_idx, rev_idx) = self.compaction_point(at, keep);
        let g = &self.generations[gen_idx];
        if let Some(n) = rev_idx
            && n == g.revs.len() - 1
            && gen_idx != self.generations.len() - 1
        {
            keep.remove(&g.revs[n].rev);
        }
    }
}

/// The index of every key: the single source of truth for "which revision holds key K at R".
#[derive(Debug, Default)]
pub struct Index {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    /// Keys that exist at the head revision (etcd's `keys_total`), kept as keys are created and
    /// deleted so it is never counted by a scan.
    live: usize,
    /// Bytes of the records of every revision indexed: what the `kv` column family holds once
    /// the compactions of the index have finished deleting.
    bytes: u64,
}

/// The size of a revision record as the index keeps it; no record comes near 4 GiB (requests
/// are limited far below), and one that did would count as 4 GiB on every member alike.
pub fn record_bytes(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Index {
    /// Number of keys the index tracks (live or with history above the compaction revision).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Number of keys that exist at the head revision.
    pub fn live_len(&self) -> usize {
        self.live
    }

    /// Bytes of the records of every revision indexed (revision key plus value): the `kv`
    /// column family's size in records once every compaction of the index has finished. The
    /// same on every member at the same revision, whenever its compactor runs.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    /// Records a put of `key` at `rev`, whose record takes `bytes`.
    pub fn put(&mut self, key: &[u8], rev: Revision, bytes: u32) {
        match self.keys.get_mut(key) {
            Some(ki) => {
                if !ki.exists() {
                    self.live += 1;
                }
                ki.put(rev, bytes);
            }
            None => {
                let mut ki = KeyIndex::new();
                ki.put(rev, bytes);
                self.keys.insert(key.to_vec(), ki);
                self.live += 1;
            }
        }
        self.bytes += u64::from(bytes);
    }

    /// Records the deletion of `key` at `rev`, whose tombstone record takes `bytes`; false (and
    /// nothing recorded) if the key does not currently exist.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision, bytes: u32) -> bool {
        let deleted = self
            .keys
            .get_mut(key)
            .is_some_and(|ki| ki.tombstone(rev, bytes));
        if deleted {
            self.live -= 1;
            self.bytes += u64::from(bytes);
        }
        deleted
    }

    /// Replays one stored revision while rebuilding the index at startup (revisions arrive in
    /// order). `created`/`version` come from the stored value and matter only for the first
    /// surviving revision of a key. `bytes` is the size of its record.
    pub fn restore(
        &mut self,
        key: Vec<u8>,
        rev: Revision,
        tombstone: bool,
        created_main: i64,
        version: i64,
        bytes: u32,
    ) {
        use std::collections::btree_map::Entry;
        match self.keys.entry(key) {
            Entry::Occupied(mut ki) if tombstone => {
                let ki = ki.get_mut();
                // A tombstone for a key that is already deleted can only be left over from an
                // interrupted compaction; etcd ignores it the same way (and it is not counted:
                // the compaction that resumes at open deletes it).
                if ki.tombstone(rev, bytes) {
                    self.live -= 1;
                    self.bytes += u64::from(bytes);
                }
            }
            Entry::Occupied(mut ki) => {
                let ki = ki.get_mut();
                if !ki.exists() {
                    self.live += 1;
                }
                ki.put(rev, bytes);
                self.bytes += u64::from(bytes);
            }
            Entry::Vacant(slot) => {
                let ki = if tombstone {
                    KeyIndex::restored_tombstone(rev, bytes)
                } else {
                    self.live += 1;
                    KeyIndex::restored(Revision::new(created_main, 0), rev, version, bytes)
                };
                slot.insert(ki);
                self.bytes += u64::from(bytes);
            }
        }
    }

    /// Calls `f(key, at)` for every key in `range` that exists at revision `at`, in key order,
    /// until `f` returns false.
    pub fn visit_live(
        &self,
        range: &KeyRange<'_>,
        at: i64,
        mut f: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        range.visit(&self.keys, |k, ki| match ki.get(at) {
            Some(found) => f(k, found),
            None => true,
        });
    }

    /// The value revisions of up to `limit` keys (0 = all) in `range` at `at`, in key order,
    /// and the number of keys in the range at `at` regardless of `limit`.
    pub fn revisions(&self, range: &KeyRange<'_>, at: i64, limit: usize) -> (Vec<Revision>, usize) {
        let mut revs = Vec::new();
        let mut total = 0;
        self.visit_live(range, at, |_, found| {
            if limit == 0 || revs.len() < limit {
                revs.push(found.modified);
            }
            total += 1;
            true
        });
        (revs, total)
    }

    /// The number of keys in `range` at `at`.
    pub fn count(&self, range: &KeyRange<'_>, at: i64) -> usize {
        let mut total = 0;
        self.visit_live(range, at, |_, _| {
            total += 1;
            true
        });
        total
    }

    /// Compacts every key at `at`, dropping keys with no history left, and returns the
    /// revisions ≤ `at` that must stay on disk and the bytes of the records dropped (which
    /// [`Index::bytes`] no longer counts).
    pub fn compact(&mut self, at: i64) -> (HashSet<Revision>, u64) {
        let mut keep = HashSet::new();
        let mut dropped_bytes = 0;
        self.keys.retain(|_, ki| {
            dropped_bytes += ki.compact(at, &mut keep);
            !ki.is_empty()
        });
        self.bytes -= dropped_bytes;
        (keep, dropped_bytes)
    }

    /// The revisions ≤ `at` a compaction at `at` would keep, tombstones excluded.
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the test tables are tuples on purpose
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put@1 put@2 delete@3 put@4 delete@5, the example from the module docs.
    fn example() -> KeyIndex {
        let mut ki = KeyIndex::new();
        // Each record's size is ten times its revision, to tell them apart.
        ki.put(rev(1), 10);
        ki.put(rev(2), 20);
        assert!(ki.tombstone(rev(3), 30));
        ki.put(rev(4), 40);
        assert!(ki.tombstone(rev(5), 50));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = example();
        // (at, expected (modified, created, version))
        let table: &[(i64, Option<(i64, i64, i64)>)] = &[
            (0, None),
            (1, Some((1, 1, 1))),
            (2, Some((2, 1, 2))),
            (3, None),
            (4, Some((4, 4, 1))),
            (5, None),
            (6, None),
        ];
        for &(at, want) in table {
            let got = ki
                .get(at)
                .map(|k| (k.modified.main, k.created.main, k.version));
            assert_eq!(got, want, "get at {at}");
        }
        let mut ki = ki;
        assert!(
            !ki.tombstone(rev(6), 60),
            "tombstone of a deleted key is refused"
        );
    }

    #[test]
    fn compaction_keeps_latest_and_tombstone_at_the_compaction_revision() {
        // (compact at, kept revisions, remaining generation revs, still indexed)
        let table: &[(i64, &[i64], &[&[i64]], bool)] = &[
            (1, &[1], &[&[1, 2, 3], &[4, 5], &[]], true),
            (2, &[2], &[&[2, 3], &[4, 5], &[]], true),
            (3, &[3], &[&[3], &[4, 5], &[]], true),
            (4, &[4], &[&[4, 5], &[]], true),
            (5, &[5], &[&[5], &[]], true),
            (6, &[], &[&[]], false),
        ];
        for &(at, kept, gens, indexed) in table {
            let mut ki = example();
            let mut keep = HashSet::new();
            let dropped_bytes = ki.compact(at, &mut keep);
            let mut kept_got: Vec<i64> = keep.iter().map(|r| r.main).collect();
            kept_got.sort();
            assert_eq!(kept_got, kept, "kept at {at}");
            let gens_got: Vec<Vec<i64>> = ki
                .generations
                .iter()
                .map(|g| g.revs.iter().map(|r| r.rev.main).collect())
                .collect();
            let gens_want: Vec<Vec<i64>> = gens.iter().map(|g| g.to_vec()).collect();
            assert_eq!(gens_got, gens_want, "generations after compact at {at}");
            let remaining: i64 = gens_want.iter().flatten().sum();
            assert_eq!(
                dropped_bytes,
                (150 - remaining * 10) as u64,
                "bytes dropped by compact at {at}"
            );
            assert_eq!(!ki.is_empty(), indexed, "indexed after compact at {at}");
            // Reads at or above the compaction revision are unchanged.
            let full = example();
            for r in at..8 {
                assert_eq!(ki.get(r), full.get(r), "read at {r} after compact at {at}");
            }
        }
    }

    #[test]
    fn keep_excludes_tombstones_and_does_not_mutate() {
        let ki = example();
        let table: &[(i64, &[i64])] = &[
            (1, &[1]),
            (2, &[2]),
            (3, &[]),
            (4, &[4]),
            (5, &[]),
            (6, &[]),
        ];
        for &(at, want) in table {
            let mut keep = HashSet::new();
            ki.keep(at, &mut keep);
            let mut got: Vec<i64> = keep.iter().map(|r| r.main).collect();
            got.sort();
            assert_eq!(got, want, "keep at {at}");
        }
        assert_eq!(ki, example());
    }

    #[test]
    fn restored_tombstone_reads_as_absent_and_accepts_new_puts() {
        let mut ki = KeyIndex::restored_tombstone(rev(16), 160);
        for at in 16..20 {
            assert_eq!(ki.get(at), None);
        }
        let mut keep = HashSet::new();
        ki.compaction_point(16, &mut keep);
        assert!(keep.contains(&rev(16)));
        ki.put(rev(17), 170);
        ki.put(rev(18), 180);
        let got = ki.get(18).expect("key exists at 18");
        assert_eq!(
            (got.modified, got.created, got.version),
            (rev(18), rev(17), 2)
        );
        let mut keep = HashSet::new();
        assert_eq!(ki.compact(17, &mut keep), 160);
        assert_eq!(ki.generations.len(), 1);
        let revs: Vec<Revision> = ki.generations[0].revs.iter().map(|r| r.rev).collect();
        assert_eq!(revs, vec![rev(17), rev(18)]);
    }

    #[test]
    fn key_ranges() {
        let mut index = Index::default();
        for (i, k) in [&b"a"[..], b"ab", b"b", b"c", b"\xff"].iter().enumerate() {
            index.put(k, rev(i as i64 + 2), 1);
        }
        let keys = |r: KeyRange<'_>| {
            let mut out = Vec::new();
            index.visit_live(&r, 100, |k, _| {
                out.push(k.to_vec());
                true
            });
            out
        };
        let v = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(keys(KeyRange::new(b"a", b"")), v(&[b"a"]));
        assert_eq!(keys(KeyRange::new(b"zz", b"")), v(&[]));
        assert_eq!(keys(KeyRange::new(b"a", b"b")), v(&[b"a", b"ab"]));
        assert_eq!(keys(KeyRange::new(b"b", b"\0")), v(&[b"b", b"c", b"\xff"]));
        assert_eq!(
            keys(KeyRange::new(b"\0", b"\0")),
            v(&[b"a", b"ab", b"b", b"c", b"\xff"])
        );
        assert_eq!(
            keys(KeyRange::new(b"c", b"a")),
            v(&[]),
            "inverted span is empty"
        );
        assert_eq!(keys(KeyRange::new(b"c", b"c")), v(&[]));
        assert_eq!(
            index.revisions(&KeyRange::new(b"\0", b"\0"), 100, 2),
            (vec![rev(2), rev(3)], 5)
        );
        assert_eq!(index.count(&KeyRange::new(b"a", b"c"), 3), 2);
        assert!(KeyRange::new(b"a", b"\0").contains(b"zzz"));
        assert!(!KeyRange::new(b"a", b"b").contains(b"b"));
    }

    #[test]
    fn live_keys_follow_creation_and_deletion() {
        let mut index = Index::default();
        index.put(b"a", rev(1), 10);
        index.put(b"a", rev(2), 20);
        index.put(b"b", rev(3), 30);
        assert_eq!(index.live_len(), 2);
        assert!(index.tombstone(b"a", rev(4), 40));
        assert!(!index.tombstone(b"a", rev(5), 50));
        assert_eq!(index.live_len(), 1);
        index.put(b"a", rev(6), 60);
        assert_eq!(index.live_len(), 2);
        assert_eq!(index.bytes(), 160, "a refused tombstone is not counted");
        let (_, dropped_bytes) = index.compact(6);
        assert_eq!(
            index.live_len(),
            2,
            "compaction drops history, not live keys"
        );
        assert_eq!(dropped_bytes, 70, "a's first generation (1, 2, 4) goes");
        assert_eq!(index.bytes(), 90);

        // Rebuilt at start: a surviving tombstone is not a live key; a second tombstone (left
        // by an interrupted compaction) is not indexed, nor counted.
        let mut restored = Index::default();
        restored.restore(b"a".to_vec(), rev(1), false, 1, 1, 10);
        restored.restore(b"b".to_vec(), rev(2), true, 0, 0, 20);
        restored.restore(b"b".to_vec(), rev(3), true, 0, 0, 30);
        restored.restore(b"a".to_vec(), rev(4), true, 0, 0, 40);
        restored.restore(b"c".to_vec(), rev(5), false, 5, 1, 50);
        assert_eq!(restored.live_len(), 1);
        assert_eq!(restored.bytes(), 120);
    }
}
