//! A read-only reader of bbolt files (etcd's backend: what `etcdctl snapshot save` downloads
//! and what a member keeps in `member/snap/db`), enough to walk etcd's buckets in key order.
//!
//! Why not a crate: `bbolt-rs` (1.3.10, the maintained Rust port) refuses to open etcd's files.
//! etcd opens its backend with `NoFreelistSync`, so the meta pages of every etcd database and
//! snapshot carry the freelist page ID `0xffffffffffffffff` ("no freelist on disk"), which
//! bbolt-rs's meta validation rejects as a page beyond the file. No other Rust crate reads bbolt.
//! Reading is the small part of bbolt (no freelist, no writes, no transactions), so it lives
//! here.
//!
//! # What is read
//!
//! All integers are little-endian (bbolt writes the host's order; etcd runs on little-endian
//! machines). A file is a sequence of pages of the page size the meta page names.
//!
//! ```text
//! page header   id u64 | flags u16 | count u16 | overflow u32       (16 bytes)
//!               flags: 0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist; the page spans
//!               1 + overflow pages
//! meta          (pages 0 and 1, after the header) magic u32 0xED0CDAED | version u32 2 |
//!               page_size u32 | flags u32 | root bucket (root pgid u64, sequence u64) |
//!               freelist pgid u64 | pgid u64 (pages in use) | txid u64 | checksum u64,
//!               FNV-1a 64 of the 56 bytes before it; the valid one with the higher txid wins
//! branch elem   pos u32 | ksize u32 | pgid u64         key at elem + pos
//! leaf elem     flags u32 | pos u32 | ksize u32 | vsize u32   key at elem + pos, value after;
//!               flags 0x01: the value is a nested bucket
//! bucket value  root pgid u64 | sequence u64, then (root 0, an inline bucket) a leaf page
//! ```
//!
//! Every offset read from the file is bounds-checked, every page must carry the ID it was
//! reached by and be reached once, and trees deeper than [`MAX_DEPTH`] are refused, so a
//! damaged file ends in [`BoltError::Corrupt`], never in a panic or a loop. Pages are read one
//! at a time with positioned reads: memory stays at a few pages (and a set of the page IDs
//! visited) whatever the file's size.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// bbolt's magic number, in both meta pages.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only bbolt file format version.
const VERSION: u32 = 2;

const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const BUCKET_HEADER_BYTES: usize = 16;
/// Bytes of the meta fields the checksum covers.
const META_CHECKSUMMED_BYTES: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF_FLAG: u32 = 0x01;

/// Deepest nesting of pages and buckets accepted (a real B+tree of a few GB is under 10 deep).
pub const MAX_DEPTH: usize = 64;
/// Page sizes tried for the second meta page when the first one is damaged.
const PAGE_SIZES: [u64; 8] = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

/// Why a bbolt file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a bbolt file: no valid meta page")]
    NotBolt,
    #[error("corrupt bbolt file: {0}")]
    Corrupt(String),
}

fn corrupt(message: String) -> BoltError {
    BoltError::Corrupt(message)
}

/// One of the two meta pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u64,
    root: u64,
    pages: u64,
    txid: u64,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("a 2-byte slice"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("a 4-byte slice"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("an 8-byte slice"))
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The meta in `page` (a page header and the meta fields), if it is a valid one.
fn parse_meta(page: &[u8]) -> Option<Meta> {
    if page.len() < PAGE_HEADER_BYTES + META_CHECKSUMMED_BYTES + 8 {
        return None;
    }
    if u16_at(page, 8) & META_PAGE == 0 {
        return None;
    }
    let meta = &page[PAGE_HEADER_BYTES..];
    if u32_at(meta, 0) != MAGIC || u32_at(meta, 4) != VERSION {
        return None;
    }
    if fnv1a64(&meta[..META_CHECKSUMMED_BYTES]) != u64_at(meta, META_CHECKSUMMED_BYTES) {
        return None;
    }
    let page_size = u64::from(u32_at(meta, 8));
    if !PAGE_SIZES.contains(&page_size) {
        return None;
    }
    Some(Meta {
        page_size,
        root: u64_at(meta, 16),
        pages: u64_at(meta, 40),
        txid: u64_at(meta, 48),
    })
}

/// True when `head` (the first bytes of a file) holds a bbolt meta page header with the magic:
/// a content check for "this is a bbolt file", valid or not.
pub fn has_magic(head: &[u8]) -> bool {
    head.len() >= PAGE_HEADER_BYTES + 4 && u32_at(head, PAGE_HEADER_BYTES) == MAGIC
}

/// What [`BoltFile::for_each`] calls with each key and value.
pub type KeyVisitor<'a, E> = dyn FnMut(&[u8], &[u8]) -> Result<(), E> + 'a;

/// What a walk calls with each entry: key, value, and whether it is a nested bucket.
type EntryVisitor<'a, E> = dyn FnMut(&[u8], &[u8], bool) -> Result<(), E> + 'a;

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Where a bucket's tree starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    /// The bucket's root page.
    Page(u64),
    /// An inline bucket: its single leaf page, stored in the parent's value.
    Inline(Vec<u8>),
}

/// An open bbolt file, read through positioned reads.
#[derive(Debug)]
pub struct BoltFile {
    file: File,
    path: PathBuf,
    page_size: u64,
    /// Pages the chosen meta says are in use; no page at or beyond it is read.
    pages: u64,
    root: u64,
}

impl BoltFile {
    /// Opens `path`, of which only the first `len` bytes are the database (a snapshot saved by
    /// etcdctl ends with a 32-byte hash that is not part of it), and picks the valid meta page
    /// with the higher transaction ID.
    pub fn open(path: &Path, len: u64) -> Result<BoltFile, BoltError> {
        let io = |source| BoltError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut first = vec![0u8; 4096.min(len) as usize];
        file.read_exact_at(&mut first, 0).map_err(io)?;
        let meta0 = parse_meta(&first);
        // The second meta page sits one page in; its size comes from the first meta page, or
        // is guessed when that one is damaged.
        let sizes: Vec<u64> = match meta0 {
            Some(meta) => vec![meta.page_size],
            None => PAGE_SIZES.to_vec(),
        };
        let mut meta1 = None;
        for size in sizes {
            if size + 4096 > len {
                continue;
            }
            let mut page = vec![0u8; 4096];
            file.read_exact_at(&mut page, size).map_err(io)?;
            if let Some(meta) = parse_meta(&page).filter(|m| m.page_size == size) {
                meta1 = Some(meta);
                break;
            }
        }
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => return Err(BoltError::NotBolt),
        };
        let needed = meta
            .pages
            .checked_mul(meta.page_size)
            .ok_or_else(|| corrupt(format!("meta page claims {} pages", meta.pages)))?;
        if needed > len {
            return Err(corrupt(format!(
                "the file is truncated: its meta page says {} pages of {} bytes ({needed} bytes), \
                 the file holds {len}",
                meta.pages, meta.page_size
            )));
        }
        if meta.root < 2 || meta.root >= meta.pages {
            return Err(corrupt(format!(
                "root bucket page {} is out of range",
                meta.root
            )));
        }
        Ok(BoltFile {
            file,
            path: path.to_path_buf(),
            page_size: meta.page_size,
            pages: meta.pages,
            root: meta.root,
        })
    }

    /// The page size the file was written with.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The root bucket, which holds the top-level buckets.
    pub fn root(&self) -> Bucket {
        Bucket::Page(self.root)
    }

    /// The top-level bucket `name`, or `None` if the file has none.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>, BoltError> {
        self.child_bucket(&self.root(), name)
    }

    /// The nested bucket `name` of `parent`, or `None`.
    pub fn child_bucket(&self, parent: &Bucket, name: &[u8]) -> Result<Option<Bucket>, BoltError> {
        let mut found = None;
        self.walk::<BoltError>(parent, &mut |key, value, is_bucket| {
            if is_bucket && key == name {
                found = Some(parse_bucket(value)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Calls `visit(key, value)` for every plain key of `bucket`, in key order (nested buckets
    /// are skipped). Stops at the first error, `visit`'s included.
    pub fn for_each<E: From<BoltError>>(
        &self,
        bucket: &Bucket,
        visit: &mut KeyVisitor<'_, E>,
    ) -> Result<(), E> {
        self.walk(bucket, &mut |key, value, is_bucket| {
            if !is_bucket {
                visit(key, value)?;
            }
            Ok(())
        })
    }

    /// Every entry of `bucket` in key order: key, value and whether it is a nested bucket.
    fn walk<E: From<BoltError>>(
        &self,
        bucket: &Bucket,
        visit: &mut EntryVisitor<'_, E>,
    ) -> Result<(), E> {
        match bucket {
            Bucket::Page(pgid) => self.walk_page(*pgid, 0, &mut HashSet::new(), visit),
            Bucket::Inline(page) => {
                if page_flags(page)? & LEAF_PAGE == 0 {
                    return Err(corrupt("an inline bucket is not a leaf page".into()).into());
                }
                walk_leaf(page, "an inline bucket", visit)
            }
        }
    }

    fn walk_page<E: From<BoltError>>(
        &self,
        pgid: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        visit: &mut EntryVisitor<'_, E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(
                corrupt(format!("page tree deeper than {MAX_DEPTH} at page {pgid}")).into(),
            );
        }
        // A tree reaches each page once; a page seen twice is a loop or a shared page.
        if !seen.insert(pgid) {
            return Err(corrupt(format!("page {pgid} is reached twice in one bucket")).into());
        }
        let page = self.read_page(pgid)?;
        let flags = page_flags(&page)?;
        if flags & BRANCH_PAGE != 0 {
            let mut children = Vec::new();
            for_each_element::<BoltError>(&page, &format!("page {pgid}"), |element, _| {
                children.push(u64_at(&page, element + 8));
                Ok(())
            })?;
            for child in children {
                self.walk_page(child, depth + 1, seen, visit)?;
            }
            Ok(())
        } else if flags & LEAF_PAGE != 0 {
            walk_leaf(&page, &format!("page {pgid}"), visit)
        } else {
            Err(corrupt(format!(
                "page {pgid} is neither a branch nor a leaf (flags {flags:#x})"
            ))
            .into())
        }
    }

    /// Page `pgid` with its overflow pages, checked to carry its own ID.
    fn read_page(&self, pgid: u64) -> Result<Vec<u8>, BoltError> {
        if pgid < 2 || pgid >= self.pages {
            return Err(corrupt(format!(
                "page {pgid} is outside the file's {} pages",
                self.pages
            )));
        }
        let io = |source| BoltError::Io {
            path: self.path.clone(),
            source,
        };
        let offset = pgid * self.page_size;
        let mut header = [0u8; PAGE_HEADER_BYTES];
        self.file.read_exact_at(&mut header, offset).map_err(io)?;
        if u64_at(&header, 0) != pgid {
            return Err(corrupt(format!(
                "page {pgid} carries the ID {}",
                u64_at(&header, 0)
            )));
        }
        let span = 1 + u64::from(u32_at(&header, 12));
        if pgid + span > self.pages {
            return Err(corrupt(format!(
                "page {pgid} overflows past the file's {} pages",
                self.pages
            )));
        }
        let mut page = vec![0u8; (span * self.page_size) as usize];
        self.file.read_exact_at(&mut page, offset).map_err(io)?;
        Ok(page)
    }
}

fn page_flags(page: &[u8]) -> Result<u16, BoltError> {
    if page.len() < PAGE_HEADER_BYTES {
        return Err(corrupt(format!("a {}-byte page", page.len())));
    }
    Ok(u16_at(page, 8))
}

/// Calls `each(element_offset, index)` for every element of `page`, after checking the element
/// array fits in the page.
fn for_each_element<E: From<BoltError>>(
    page: &[u8],
    what: &str,
    mut each: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER_BYTES + count * ELEMENT_BYTES > page.len() {
        return Err(corrupt(format!("{what}: {count} elements do not fit in the page")).into());
    }
    for index in 0..count {
        each(PAGE_HEADER_BYTES + index * ELEMENT_BYTES, index)?;
    }
    Ok(())
}

/// The `len` bytes at `element + pos` of `page`, bounds-checked.
fn slice_at<'a>(
    page: &'a [u8],
    start: usize,
    len: usize,
    what: &str,
) -> Result<&'a [u8], BoltError> {
    start
        .checked_add(len)
        .filter(|end| *end <= page.len())
        .map(|end| &page[start..end])
        .ok_or_else(|| {
            corrupt(format!(
                "{what}: an element points past the end of the page"
            ))
        })
}

fn walk_leaf<E: From<BoltError>>(
    page: &[u8],
    what: &str,
    visit: &mut EntryVisitor<'_, E>,
) -> Result<(), E> {
    for_each_element(page, what, |element, _| {
        let flags = u32_at(page, element);
        let pos = u32_at(page, element + 4) as usize;
        let key_len = u32_at(page, element + 8) as usize;
        let value_len = u32_at(page, element + 12) as usize;
        let key = slice_at(page, element + pos, key_len, what)?;
        let value = slice_at(page, element + pos + key_len, value_len, what)?;
        visit(key, value, flags & BUCKET_LEAF_FLAG != 0)
    })
}

/// The bucket a nested-bucket value describes.
fn parse_bucket(value: &[u8]) -> Result<Bucket, BoltError> {
    if value.len() < BUCKET_HEADER_BYTES {
        return Err(corrupt(format!("a {}-byte bucket header", value.len())));
    }
    match u64_at(value, 0) {
        0 => Ok(Bucket::Inline(value[BUCKET_HEADER_BYTES..].to_vec())),
        root => Ok(Bucket::Page(root)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn meta_page(pgid: u64, root: u64, pages: u64, txid: u64) -> Vec<u8> {
        let mut page = vec![0u8; PAGE];
        page[..8].copy_from_slice(&pgid.to_le_bytes());
        page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
        let meta = &mut page[PAGE_HEADER_BYTES..];
        meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
        meta[8..12].copy_from_slice(&(PAGE as u32).to_le_bytes());
        meta[16..24].copy_from_slice(&root.to_le_bytes());
        meta[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // etcd's "no freelist"
        meta[40..48].copy_from_slice(&pages.to_le_bytes());
        meta[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&meta[..META_CHECKSUMMED_BYTES]);
        meta[56..64].copy_from_slice(&sum.to_le_bytes());
        page
    }

    /// A leaf page (unpadded when `pgid` is 0: the inline form) holding `entries`.
    fn leaf(pgid: u64, entries: &[(&[u8], Vec<u8>, bool)]) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_HEADER_BYTES + entries.len() * ELEMENT_BYTES];
        page[..8].copy_from_slice(&pgid.to_le_bytes());
        page[8..10].copy_from_slice(&LEAF_PAGE.to_le_bytes());
        page[10..12].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        for (i, (key, value, bucket)) in entries.iter().enumerate() {
            let element = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let pos = page.len() - element;
            page[element..element + 4].copy_from_slice(&u32::from(*bucket).to_le_bytes());
            page[element + 4..element + 8].copy_from_slice(&(pos as u32).to_le_bytes());
            page[element + 8..element + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[element + 12..element + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(key);
            page.extend_from_slice(value);
        }
        if pgid != 0 {
            let pages = page.len().div_ceil(PAGE);
            page[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
            page.resize(pages * PAGE, 0);
        }
        page
    }

    fn branch(pgid: u64, children: &[(&[u8], u64)]) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_HEADER_BYTES + children.len() * ELEMENT_BYTES];
        page[..8].copy_from_slice(&pgid.to_le_bytes());
        page[8..10].copy_from_slice(&BRANCH_PAGE.to_le_bytes());
        page[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
        for (i, (key, child)) in children.iter().enumerate() {
            let element = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let pos = page.len() - element;
            page[element..element + 4].copy_from_slice(&(pos as u32).to_le_bytes());
            page[element + 4..element + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[element + 8..element + 16].copy_from_slice(&child.to_le_bytes());
            page.extend_from_slice(key);
        }
        page.resize(PAGE, 0);
        page
    }

    fn bucket_value(root: u64, inline: Option<Vec<u8>>) -> Vec<u8> {
        let mut value = root.to_le_bytes().to_vec();
        value.extend_from_slice(&0u64.to_le_bytes());
        value.extend(inline.unwrap_or_default());
        value
    }

    /// A file with a root bucket (page 2) holding bucket "big" (a branch at 3 over leaves 4
    /// and 5, the second with an overflow page) and an inline bucket "small".
    fn sample() -> Vec<u8> {
        let small = leaf(
            0,
            &[(b"x", b"1".to_vec(), false), (b"y", b"2".to_vec(), false)],
        );
        let root = leaf(
            2,
            &[
                (b"big", bucket_value(3, None), true),
                (b"small", bucket_value(0, Some(small)), true),
            ],
        );
        let big = branch(3, &[(b"a", 4), (b"m", 5)]);
        let left = leaf(
            4,
            &[(b"a", b"A".to_vec(), false), (b"b", b"B".to_vec(), false)],
        );
        let right = leaf(5, &[(b"m", vec![7u8; 6000], false)]);
        assert_eq!(right.len(), 2 * PAGE);
        let pages = 7;
        let mut file = meta_page(0, 2, pages, 4);
        file.extend(meta_page(1, 2, pages, 5));
        for page in [root, big, left, right] {
            file.extend(page);
        }
        assert_eq!(file.len(), pages as usize * PAGE);
        file
    }

    fn open(bytes: &[u8]) -> Result<(tempfile::TempDir, BoltFile), BoltError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, bytes).unwrap();
        let file = BoltFile::open(&path, bytes.len() as u64)?;
        Ok((dir, file))
    }

    fn entries(file: &BoltFile, bucket: &Bucket) -> Result<Entries, BoltError> {
        let mut out = Vec::new();
        file.for_each(bucket, &mut |k: &[u8], v: &[u8]| -> Result<(), BoltError> {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn walks_branches_overflow_pages_and_inline_buckets() {
        let (_dir, file) = open(&sample()).unwrap();
        assert_eq!(file.page_size(), 4096);
        let big = file.bucket(b"big").unwrap().unwrap();
        let got = entries(&file, &big).unwrap();
        assert_eq!(
            got.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
            [&b"a"[..], b"b", b"m"]
        );
        assert_eq!(got[2].1, vec![7u8; 6000]);
        let small = file.bucket(b"small").unwrap().unwrap();
        assert_eq!(
            entries(&file, &small).unwrap(),
            [
                (b"x".to_vec(), b"1".to_vec()),
                (b"y".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(file.bucket(b"none").unwrap(), None);
        // The root bucket holds only buckets: no plain keys.
        assert!(entries(&file, &file.root()).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_meta_page_falls_back_to_the_other() {
        let mut bytes = sample();
        bytes[PAGE_HEADER_BYTES + 20] ^= 0xff; // meta 0's root: checksum no longer matches
        let (_dir, file) = open(&bytes).unwrap();
        assert!(file.bucket(b"big").unwrap().is_some());
        let mut bytes = sample();
        bytes[PAGE + PAGE_HEADER_BYTES + 20] ^= 0xff; // meta 1
        assert!(open(&bytes).unwrap().1.bucket(b"big").unwrap().is_some());
        let mut bytes = sample();
        bytes[PAGE_HEADER_BYTES] ^= 0xff;
        bytes[PAGE + PAGE_HEADER_BYTES] ^= 0xff;
        assert!(matches!(open(&bytes), Err(BoltError::NotBolt)));
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let bytes = sample();
        assert!(matches!(
            open(&bytes[..bytes.len() - PAGE]),
            Err(BoltError::Corrupt(message)) if message.contains("truncated")
        ));
        // Every single-byte change in the data pages ends in Ok or an error, never a panic.
        for at in (2 * PAGE..bytes.len()).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[at] = damaged[at].wrapping_add(0x55);
            let (_dir, file) = open(&damaged).unwrap();
            for name in [&b"big"[..], b"small"] {
                if let Ok(Some(bucket)) = file.bucket(name) {
                    let _ = entries(&file, &bucket);
                }
            }
        }
        // A branch pointing to itself is refused, not followed forever.
        let mut looping = bytes.clone();
        let branch_page = 3 * PAGE;
        looping[branch_page + PAGE_HEADER_BYTES + 8..branch_page + PAGE_HEADER_BYTES + 16]
            .copy_from_slice(&3u64.to_le_bytes());
        let (_dir, file) = open(&looping).unwrap();
        let big = file.bucket(b"big").unwrap().unwrap();
        assert!(matches!(entries(&file, &big), Err(BoltError::Corrupt(_))));
    }

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// Properties of the bbolt reader over damaged files: bytes changed anywhere (meta pages
    /// re-checksummed so the damage gets past them), page sizes, roots and page counts made up.
    /// Opening and walking every bucket ends in entries or an error, never a panic or a hang.
    /// 256 cases, each a small temporary file: about two seconds in release.
    mod props {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;

        /// Walks every bucket reachable from the root, nested ones included, to `depth` levels.
        fn walk_all(file: &BoltFile, bucket: &Bucket, depth: usize) -> Result<usize, BoltError> {
            let mut children = Vec::new();
            let mut count = 0;
            file.walk::<BoltError>(bucket, &mut |key: &[u8], value: &[u8], is_bucket: bool| {
                count += 1;
                if is_bucket {
                    children.push((key.to_vec(), parse_bucket(value)?));
                }
                Ok(())
            })?;
            if depth > 0 {
                for (name, child) in children {
                    let _ = file.child_bucket(bucket, &name);
                    count += walk_all(file, &child, depth - 1)?;
                }
            }
            Ok(count)
        }

        fn rechecksum(bytes: &mut [u8], meta_page: usize) {
            let meta = meta_page * PAGE + PAGE_HEADER_BYTES;
            if bytes.len() >= meta + META_CHECKSUMMED_BYTES + 8 {
                let sum = fnv1a64(&bytes[meta..meta + META_CHECKSUMMED_BYTES]);
                bytes[meta + META_CHECKSUMMED_BYTES..meta + META_CHECKSUMMED_BYTES + 8]
                    .copy_from_slice(&sum.to_le_bytes());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn damaged_files_are_errors_not_panics(
                flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                meta_fields in vec((0..2usize, prop_oneof![Just(8usize), Just(16), Just(40), Just(48)], any::<u64>(), 0..4u32), 0..3),
                cut in proptest::option::of(any::<prop::sample::Index>()),
            ) {
                let mut bytes = sample();
                let len = bytes.len();
                for (at, byte) in flips {
                    bytes[at.index(len)] = byte;
                }
                for (meta_page, field, value, form) in meta_fields {
                    let at = meta_page * PAGE + PAGE_HEADER_BYTES + field;
                    // Small values, page sizes and page numbers are likelier to get somewhere.
                    let value = match form {
                        0 => value % 16,
                        1 => 512 << (value % 9),
                        2 => value,
                        _ => value % 4,
                    };
                    if field == 8 {
                        bytes[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
                    } else {
                        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
                    }
                    rechecksum(&mut bytes, meta_page);
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(len));
                }
                if let Ok((_dir, file)) = open(&bytes) {
                    let _ = walk_all(&file, &file.root(), 4);
                    for name in [&b"big"[..], b"small"] {
                        if let Ok(Some(bucket)) = file.bucket(name) {
                            let _ = entries(&file, &bucket);
                        }
                    }
                }
            }

            /// The length passed in may exceed the file (a caller's mistake or a file cut
            /// while being read): an error, not a panic.
            #[test]
            fn a_length_past_the_end_is_an_error(extra in 1..20_000u64, cut in 0..7usize) {
                let bytes = sample();
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("db");
                let kept = &bytes[..cut * PAGE + 100];
                std::fs::write(&path, kept).unwrap();
                if let Ok(file) = BoltFile::open(&path, kept.len() as u64 + extra) {
                    let _ = walk_all(&file, &file.root(), 4);
                }
            }
        }
    }
}
