//! The applied store (DESIGN §6): key -> (version, value), in key order.
//!
//! # Layout
//! Keys live in sorted *pages* of about [`PAGE_BYTES`] of record bytes each.
//! A page is one byte buffer holding its records back to back (key,
//! version, value, with varint lengths: about 9 bytes of framing per key,
//! offset included, and no allocation per key) and a list of where each live
//! record starts, in key order. A write appends the new
//! record to its page's buffer and points the list at it; the bytes of an
//! overwritten or removed record stay until the page is rewritten (when they
//! pass half of it), split (when its live records pass a page) or merged
//! (when it falls under a quarter).
//!
//! Every page sits behind an `Arc`. Cloning the store (a snapshot image)
//! copies the list of page pointers only, one per ~30 keys; a page is copied
//! (one `memcpy`) on its first write while an image still holds it, so an
//! image costs memory only for the pages written while it lives. The
//! snapshot writer walks its image with [`Store::drain_each`], which lets go
//! of each page once it is written, so only the pages still ahead of the
//! writer are ever copied.
//!
//! # Why not a `BTreeMap<String, (u64, Vec<u8>)>`
//! That took three allocations per key (key, value, a share of a half-full
//! tree node), about 2.4 times the raw key and value bytes with 8-byte keys
//! and 100-byte values, and each snapshot (periodic save, catch-up transfer)
//! copied the whole map on the event loop. Pages take about 1.1 times the
//! raw bytes, and an image is taken in about a millisecond.
//!
//! Everything here is plain data and deterministic, as the protocol core must be.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Live record bytes a page holds at most; a page that grows past it splits
/// in two (a single larger record gets a page of its own).
pub const PAGE_BYTES: usize = 4096;
/// A page whose live bytes fall below this after a removal merges with a
/// neighbour when the two fit in half a page.
const PAGE_MIN_BYTES: usize = PAGE_BYTES / 4;
/// A page's buffer grows by at least this much at a time, not by doubling,
/// so its spare room stays small.
const GROW_BYTES: usize = 512;
/// Room for record offsets in a new last page: a page of ~100-byte records.
const PAGE_STARTS: usize = PAGE_BYTES / 100;
/// One key as the store holds it: its version (the log index of the write
/// that set it), its key and its value, borrowed from the store.
///
/// Layout: key length (varint), key, version (varint), value. A varint is
/// LEB128: 7 bits a byte, low bits first, the high bit set on all but the
/// last byte. In a page each record is preceded by its length (varint), so
/// an 8-byte key and a 100-byte value at a version below 2^21 take 113 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Record<'a>(&'a [u8]);

impl<'a> Record<'a> {
    /// Where the key ends (its length varint and bytes).
    fn key_end(self) -> usize {
        let (len, at) = varint(self.0);
        at + len as usize
    }

    /// The key's bytes (UTF-8); keys sort by these bytes, as `str`s do.
    pub fn key_bytes(self) -> &'a [u8] {
        let (len, at) = varint(self.0);
        &self.0[at..at + len as usize]
    }

    /// The key.
    pub fn key(self) -> &'a str {
        std::str::from_utf8(self.key_bytes()).expect("a record's key was a str")
    }

    /// The log index of the write that set the key.
    pub fn version(self) -> u64 {
        varint(&self.0[self.key_end()..]).0
    }

    /// The value.
    pub fn value(self) -> &'a [u8] {
        let end = self.key_end();
        &self.0[end + varint(&self.0[end..]).1..]
    }
}

/// Appends `n` as a varint (see [`Record`]).
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Writes `n` as a varint at `at` in `out`, over bytes already there;
/// returns where it ends.
fn put_varint_at(out: &mut [u8], mut at: usize, mut n: u64) -> usize {
    while n >= 0x80 {
        out[at] = n as u8 | 0x80;
        n >>= 7;
        at += 1;
    }
    out[at] = n as u8;
    at + 1
}

/// Bytes `n` takes as a varint.
fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// The varint at the start of `b`, and how many bytes it took.
fn varint(b: &[u8]) -> (u64, usize) {
    let mut n = 0;
    for (i, byte) in b.iter().enumerate() {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    panic!("a varint runs past the end of its record")
}

/// Bytes one record takes, without its length.
fn record_len(key: &[u8], version: u64, value: &[u8]) -> usize {
    varint_len(key.len() as u64) + key.len() + varint_len(version) + value.len()
}

/// Bytes one record takes in a page, with its length.
fn framed_len(key: &[u8], version: u64, value: &[u8]) -> usize {
    let len = record_len(key, version, value);
    varint_len(len as u64) + len
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = String::from_utf8_lossy(self.value());
        write!(f, "({:?}, {}, {value:?})", self.key(), self.version())
    }
}

/// Sorted records in one buffer; see the module docs.
#[derive(Clone, Default)]
struct Page {
    /// Records, each its length then its bytes, in the order they were written.
    bytes: Vec<u8>,
    /// Offset in `bytes` of every live record, in key order.
    starts: Vec<u32>,
    /// Bytes of `bytes` held by overwritten or removed records.
    dead: usize,
}

impl Page {
    fn len(&self) -> usize {
        self.starts.len()
    }

    fn live_bytes(&self) -> usize {
        self.bytes.len() - self.dead
    }

    /// The framed bytes (length and record) of the record starting at `start`.
    fn framed_at(&self, start: u32) -> &[u8] {
        let s = start as usize;
        let (len, at) = varint(&self.bytes[s..]);
        &self.bytes[s..s + at + len as usize]
    }

    /// The record starting at `start`.
    fn record_at(&self, start: u32) -> Record<'_> {
        let s = start as usize;
        let (len, at) = varint(&self.bytes[s..]);
        Record(&self.bytes[s + at..s + at + len as usize])
    }

    fn record(&self, i: usize) -> Record<'_> {
        self.record_at(self.starts[i])
    }

    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.starts.binary_search_by(|s| self.record_at(*s).key_bytes().cmp(key))
    }

    /// Appends a record to the buffer; returns where it starts.
    fn append(&mut self, key: &[u8], version: u64, value: &[u8]) -> u32 {
        let framed = framed_len(key, version, value);
        if self.bytes.capacity() - self.bytes.len() < framed {
            self.bytes.reserve_exact(framed.max(GROW_BYTES));
        }
        let start = u32::try_from(self.bytes.len()).expect("a page stays far below 4 GiB");
        let len = record_len(key, version, value);
        put_varint(&mut self.bytes, len as u64);
        put_varint(&mut self.bytes, key.len() as u64);
        self.bytes.extend_from_slice(key);
        put_varint(&mut self.bytes, version);
        self.bytes.extend_from_slice(value);
        start
    }

    /// Writes the record at position `i`: over the record there (`replace`)
    /// or as a new one before it. A replacing record of the same framed size
    /// (the usual overwrite: same key, a value of the same length) takes the
    /// old one's bytes in place, so the page neither grows nor needs a rewrite.
    fn write(&mut self, i: usize, replace: bool, key: &[u8], version: u64, value: &[u8]) {
        if replace {
            let s = self.starts[i] as usize;
            let len = record_len(key, version, value);
            let framed = varint_len(len as u64) + len;
            if self.framed_at(self.starts[i]).len() == framed {
                let at = put_varint_at(&mut self.bytes, s, len as u64);
                let at = put_varint_at(&mut self.bytes, at, key.len() as u64);
                self.bytes[at..at + key.len()].copy_from_slice(key);
                let at = put_varint_at(&mut self.bytes, at + key.len(), version);
                self.bytes[at..at + value.len()].copy_from_slice(value);
                assert_eq!(at + value.len(), s + framed, "the record fills its old bytes");
                return;
            }
        }
        let start = self.append(key, version, value);
        if replace {
            self.dead += self.framed_at(self.starts[i]).len();
            self.starts[i] = start;
        } else {
            if self.starts.len() == self.starts.capacity() {
                self.starts.reserve_exact(8);
            }
            self.starts.insert(i, start);
        }
    }

    fn remove(&mut self, i: usize) {
        self.dead += self.framed_at(self.starts[i]).len();
        self.starts.remove(i);
    }

    /// Cuts the records `range` into pieces of at most `PAGE_BYTES` (or of
    /// one record), each cut at the middle byte: halves, as a B-tree splits,
    /// so a page that just split has room for the writes that follow.
    fn split(&self, range: Range<usize>, pieces: &mut Vec<Range<usize>>) {
        let sizes: Vec<usize> =
            range.clone().map(|i| self.framed_at(self.starts[i]).len()).collect();
        let total: usize = sizes.iter().sum();
        if total <= PAGE_BYTES || range.len() == 1 {
            pieces.push(range);
            return;
        }
        let mut left = 0;
        let mut cut = 0;
        while cut < sizes.len() - 1 && (cut == 0 || left + sizes[cut] <= total / 2) {
            left += sizes[cut];
            cut += 1;
        }
        let cut = range.start + cut;
        self.split(range.start..cut, pieces);
        self.split(cut..range.end, pieces);
    }

    /// A new page holding the live records `range` of `pages`, in order,
    /// with no dead bytes and no spare room.
    fn gather<'p>(parts: impl Iterator<Item = (&'p Page, Range<usize>)> + Clone) -> Page {
        let framed = |p: &'p Page, i: usize| p.framed_at(p.starts[i]);
        let (mut bytes, mut count) = (0, 0);
        for (p, range) in parts.clone() {
            count += range.len();
            bytes += range.map(|i| framed(p, i).len()).sum::<usize>();
        }
        let mut page =
            Page { bytes: Vec::with_capacity(bytes), starts: Vec::with_capacity(count), dead: 0 };
        for (p, range) in parts {
            for i in range {
                page.starts.push(page.bytes.len() as u32);
                page.bytes.extend_from_slice(framed(p, i));
            }
        }
        page
    }
}

/// key -> (version, value) in key order; a deleted key is simply absent.
/// Cloning is cheap and the clone never changes (see the module docs).
#[derive(Clone, Default)]
pub struct Store {
    /// Non-empty pages; every key of a page sorts before every key of the next.
    pages: Vec<Arc<Page>>,
    /// `prefix` of the first key of every page: a lookup's binary search
    /// over pages reads this one array instead of three allocations per
    /// probe, and reads a page's first key only to break a tie.
    firsts: Vec<u128>,
    len: usize,
}

/// The first 16 bytes of `key`, zero-padded, as a number: `a <= b` implies
/// `prefix(a) <= prefix(b)`.
fn prefix(key: &[u8]) -> u128 {
    let mut bytes = [0; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page that holds `key` or would hold it, and the key's position
    /// there (`Err` where it would go). `None` when the store is empty.
    fn locate(&self, key: &[u8]) -> Option<(usize, Result<usize, usize>)> {
        if self.pages.is_empty() {
            return None;
        }
        // The last page whose first key is <= key (or the first page): pages
        // before `lo` start below `key`, pages from `hi` on above it.
        let kp = prefix(key);
        let lo = self.firsts.partition_point(|f| *f < kp);
        let hi = lo + self.firsts[lo..].partition_point(|f| *f == kp);
        let ties = self.pages[lo..hi].partition_point(|p| p.record(0).key_bytes() <= key);
        let p = (lo + ties).saturating_sub(1);
        Some((p, self.pages[p].find(key)))
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Option<Record<'_>> {
        let (p, at) = self.locate(key.as_bytes())?;
        at.ok().map(|i| self.pages[p].record(i))
    }

    /// The version of `key`; 0 when absent.
    pub fn version(&self, key: &str) -> u64 {
        self.get(key).map_or(0, Record::version)
    }

    /// The record of the greatest key.
    pub fn last(&self) -> Option<Record<'_>> {
        self.pages.last().map(|p| p.record(p.len() - 1))
    }

    /// Sets `key` to `value` at `version`. Keys that come in ascending order
    /// (a snapshot being loaded or received) go straight to the end.
    pub fn insert(&mut self, key: &str, version: u64, value: &[u8]) {
        let key = key.as_bytes();
        if self.last().is_none_or(|l| l.key_bytes() < key) {
            self.push_last(key, version, value);
            return;
        }
        let (p, at) = self.locate(key).expect("not empty: it has a last record");
        let page = Arc::make_mut(&mut self.pages[p]);
        match at {
            Ok(i) => page.write(i, true, key, version, value),
            Err(i) => {
                page.write(i, false, key, version, value);
                self.len += 1;
                if i == 0 {
                    self.firsts[p] = prefix(key);
                }
            }
        }
        if page.live_bytes() > PAGE_BYTES && page.len() > 1 {
            let mut pieces = Vec::new();
            page.split(0..page.len(), &mut pieces);
            let firsts: Vec<u128> =
                pieces.iter().map(|r| prefix(page.record(r.start).key_bytes())).collect();
            let new: Vec<Arc<Page>> = pieces
                .into_iter()
                .map(|range| Arc::new(Page::gather(std::iter::once((&*page, range)))))
                .collect();
            self.pages.splice(p..=p, new);
            self.firsts.splice(p..=p, firsts);
        } else if page.dead > page.live_bytes() {
            *page = Page::gather(std::iter::once((&*page, 0..page.len())));
        }
    }

    /// Appends a record whose key sorts after every key held.
    fn push_last(&mut self, key: &[u8], version: u64, value: &[u8]) {
        self.len += 1;
        let framed = framed_len(key, version, value);
        match self.pages.last_mut() {
            Some(last) if last.live_bytes() + framed <= PAGE_BYTES => {
                let page = Arc::make_mut(last);
                let end = page.len();
                page.write(end, false, key, version, value);
            }
            // The last page is left full, with no spare room: ascending
            // writes fill pages completely. The new last page gets a whole
            // page of room at once, so a bulk load never reallocates.
            last => {
                if let Some(last) = last {
                    if last.bytes.capacity() > last.bytes.len() || last.dead > 0 {
                        let l = &**last;
                        *last = Arc::new(Page::gather(std::iter::once((l, 0..l.len()))));
                    }
                }
                let mut page = Page {
                    bytes: Vec::with_capacity(PAGE_BYTES.max(framed)),
                    starts: Vec::with_capacity(PAGE_STARTS),
                    dead: 0,
                };
                page.write(0, false, key, version, value);
                self.pages.push(Arc::new(page));
                self.firsts.push(prefix(key));
            }
        }
    }

    /// Removes `key`; returns whether it was held.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some((p, Ok(i))) = self.locate(key.as_bytes()) else {
            return false;
        };
        self.len -= 1;
        let page = Arc::make_mut(&mut self.pages[p]);
        page.remove(i);
        if page.len() == 0 {
            self.pages.remove(p);
            self.firsts.remove(p);
            return true;
        }
        if i == 0 {
            self.firsts[p] = prefix(page.record(0).key_bytes());
        }
        if page.live_bytes() < PAGE_MIN_BYTES {
            self.merge_small(p);
        } else if page.dead > page.live_bytes() {
            *page = Page::gather(std::iter::once((&*page, 0..page.len())));
        }
        true
    }

    /// Merges the small page `p` with a neighbour when the two fit in half a
    /// page; else rewrites it without its dead bytes.
    fn merge_small(&mut self, p: usize) {
        let fits = |a: usize| self.pages[a].live_bytes() + self.pages[a + 1].live_bytes();
        let left = if p + 1 < self.pages.len() && fits(p) <= PAGE_BYTES / 2 {
            p
        } else if p > 0 && fits(p - 1) <= PAGE_BYTES / 2 {
            p - 1
        } else {
            let page = &self.pages[p];
            self.pages[p] = Arc::new(Page::gather(std::iter::once((&**page, 0..page.len()))));
            return;
        };
        let (a, b) = (&self.pages[left], &self.pages[left + 1]);
        let merged = Page::gather([(&**a, 0..a.len()), (&**b, 0..b.len())].into_iter());
        self.pages[left] = Arc::new(merged);
        self.pages.remove(left + 1);
        self.firsts.remove(left + 1);
    }

    /// Passes every record to `f`, in key order, consuming the store a page
    /// at a time: each page is released as soon as its records are passed.
    /// A snapshot image written this way stops holding a page the moment the
    /// page is written out, so the live store stops copying that page on its
    /// next write; held whole, an image written during a random-order load
    /// made the live store copy most of its pages.
    pub fn drain_each<E>(self, mut f: impl FnMut(Record<'_>) -> Result<(), E>) -> Result<(), E> {
        for page in self.pages {
            for i in 0..page.len() {
                f(page.record(i))?;
            }
        }
        Ok(())
    }

    /// Every record, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        self.pages.iter().flat_map(|p| (0..p.len()).map(|i| p.record(i)))
    }

    /// The records whose keys sort after `after` (all of them for `None`), in key order.
    pub fn range_after(&self, after: Option<&str>) -> impl Iterator<Item = Record<'_>> + '_ {
        let (p, i) = match after.and_then(|k| self.locate(k.as_bytes())) {
            None => (0, 0),
            Some((p, Ok(i))) => (p, i + 1),
            Some((p, Err(i))) => (p, i),
        };
        let first = self
            .pages
            .get(p)
            .into_iter()
            .flat_map(move |page| (i..page.len()).map(|j| page.record(j)));
        first.chain(self.pages.iter().skip(p + 1).flat_map(|p| (0..p.len()).map(|i| p.record(i))))
    }

    /// Every key as an ordinary map, for tests and checkers.
    pub fn to_map(&self) -> BTreeMap<String, (u64, Vec<u8>)> {
        self.iter().map(|r| (r.key().to_string(), (r.version(), r.value().to_vec()))).collect()
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Store) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Store {}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, (u64, Vec<u8>))> for Store {
    fn from_iter<I: IntoIterator<Item = (String, (u64, Vec<u8>))>>(pairs: I) -> Store {
        let mut store = Store::new();
        for (key, (version, value)) in pairs {
            store.insert(&key, version, &value);
        }
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn check_shape(s: &Store) {
        assert_eq!(s.len, s.pages.iter().map(|p| p.len()).sum::<usize>());
        let firsts: Vec<u128> = s.pages.iter().map(|p| prefix(p.record(0).key_bytes())).collect();
        assert_eq!(s.firsts, firsts, "firsts follow the pages");
        for p in &s.pages {
            assert!(p.len() > 0);
            assert!(p.live_bytes() <= PAGE_BYTES || p.len() == 1, "{} bytes", p.live_bytes());
            let framed: usize = p.starts.iter().map(|s| p.framed_at(*s).len()).sum();
            assert_eq!(framed + p.dead, p.bytes.len(), "dead bytes are counted");
        }
        let keys: Vec<&[u8]> = s.iter().map(Record::key_bytes).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sorted and unique");
    }

    #[test]
    fn behaves_like_a_btreemap_under_random_operations() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut store = Store::new();
        let mut model: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
        let mut images = Vec::new();
        for step in 0..60_000u64 {
            // Few enough keys that removals empty, shrink and merge pages;
            // some values larger than a page; half the keys share a prefix
            // longer than the one `firsts` holds.
            let n = rng.random_range(0..3000u32);
            let key =
                if n % 2 == 0 { format!("k{n}") } else { format!("shared-prefix-of-keys/{n}") };
            match rng.random_range(0..10u32) {
                0..=5 => {
                    let len = if step % 997 == 0 { 5000 } else { rng.random_range(0..200usize) };
                    let value = vec![(step % 251) as u8; len];
                    store.insert(&key, step, &value);
                    model.insert(key.clone(), (step, value));
                }
                6..=8 => assert_eq!(store.remove(&key), model.remove(&key).is_some()),
                _ => {
                    let got = store.get(&key).map(|r| (r.version(), r.value().to_vec()));
                    assert_eq!(got.as_ref(), model.get(&key));
                    assert_eq!(store.version(&key), model.get(&key).map_or(0, |v| v.0));
                }
            }
            if step % 5000 == 0 {
                // An image keeps its contents while the store changes.
                images.push((store.clone(), model.clone()));
                check_shape(&store);
            }
        }
        check_shape(&store);
        assert_eq!(store.len(), model.len());
        assert_eq!(store.to_map(), model);
        for (image, model) in &images {
            check_shape(image);
            assert_eq!(&image.to_map(), model);
        }
        // Removing everything leaves no page behind.
        for key in model.keys() {
            assert!(store.remove(key));
        }
        assert!(store.is_empty() && store.pages.is_empty());
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        for n in [0, 1, 127, 128, 300, 16383, 16384, 1 << 21, u64::MAX >> 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            assert_eq!(b.len(), varint_len(n), "{n}");
            b.push(0xff);
            assert_eq!(varint(&b), (n, varint_len(n)));
        }
        let mut page = Page::default();
        page.write(0, false, b"key", u64::MAX, b"value");
        let r = page.record(0);
        assert_eq!((r.key(), r.version(), r.value()), ("key", u64::MAX, &b"value"[..]));
        assert_eq!(page.bytes.len(), framed_len(b"key", u64::MAX, b"value"));
    }

    #[test]
    fn ascending_writes_fill_pages_without_spare_room() {
        let store: Store =
            (0..1000u64).map(|i| (format!("k{i:04}"), (i, vec![b'v'; 100]))).collect();
        check_shape(&store);
        for pair in store.pages.windows(2) {
            let (page, next) = (&pair[0], &pair[1]);
            assert_eq!((page.bytes.capacity(), page.dead), (page.bytes.len(), 0), "no spare room");
            let r = next.record(0);
            let more = framed_len(r.key_bytes(), r.version(), r.value());
            assert!(page.live_bytes() + more > PAGE_BYTES, "full: the next record did not fit");
        }
        assert_eq!(store.last().map(Record::key), Some("k0999"));
    }

    #[test]
    fn draining_an_image_releases_each_page_once_its_records_are_passed() {
        let live: Store =
            (0..1000u64).map(|i| (format!("k{i:04}"), (i, vec![b'v'; 100]))).collect();
        assert!(live.pages.len() > 3, "several pages");
        let first_of_second = live.pages[1].record(0).key().to_string();
        let image = live.clone();
        let shared = |p: usize| Arc::strong_count(&live.pages[p]);
        assert_eq!((shared(0), shared(1), shared(2)), (2, 2, 2), "an image shares every page");
        let mut seen = 0;
        let mut checked = false;
        image
            .drain_each(|r| {
                seen += 1;
                if r.key() == first_of_second {
                    // Page 0 is written out: the live store holds it alone,
                    // so writing it no longer copies it. Pages ahead are held.
                    assert_eq!((shared(0), shared(1), shared(2)), (1, 2, 2));
                    checked = true;
                }
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!(checked);
        assert_eq!(seen, 1000);
        assert!((0..live.pages.len()).all(|p| shared(p) == 1), "all released at the end");
    }

    #[test]
    fn an_overwrite_of_the_same_size_takes_the_old_bytes_in_place() {
        let mut store: Store =
            (0..100u64).map(|i| (format!("k{i:04}"), (1000 + i, vec![b'v'; 100]))).collect();
        let bytes = |s: &Store| s.pages.iter().map(|p| (p.bytes.len(), p.dead)).collect::<Vec<_>>();
        let before = bytes(&store);
        let image = store.clone();
        let image_map = image.to_map();
        for round in 0..50u64 {
            for i in 0..100u64 {
                store.insert(&format!("k{i:04}"), 2000 + round, &[b'a' + (round % 26) as u8; 100]);
            }
        }
        check_shape(&store);
        assert_eq!(bytes(&store), before, "no page grew and none holds dead bytes");
        assert_eq!(image.to_map(), image_map, "an image taken before is unchanged");
        let r = store.get("k0042").expect("held");
        assert_eq!((r.version(), r.value()), (2049, &[b'a' + 23; 100][..]));
        // A different size still appends: the page then holds dead bytes.
        store.insert("k0042", 2050, b"short");
        check_shape(&store);
        assert!(store.pages.iter().any(|p| p.dead > 0));
        assert_eq!(store.get("k0042").map(Record::value), Some(&b"short"[..]));
    }

    #[test]
    fn range_after_starts_past_the_key() {
        let store: Store = (0..1000u64).map(|i| (format!("k{i:04}"), (i, b"v".to_vec()))).collect();
        let keys = |after: Option<&str>| -> Vec<String> {
            store.range_after(after).map(|r| r.key().to_string()).collect()
        };
        assert_eq!(keys(None).len(), 1000);
        for k in [0, 254, 255, 256, 511, 998] {
            let after = format!("k{k:04}");
            let expected = format!("k{:04}", k + 1);
            assert_eq!(keys(Some(&after)).first(), Some(&expected));
            assert_eq!(keys(Some(&format!("{after}x"))).first(), Some(&expected));
            assert_eq!(keys(Some(&after)).len(), 999 - k);
        }
        assert_eq!(keys(Some("a")).len(), 1000);
        assert_eq!(keys(Some("k0999")), Vec::<String>::new());
        assert_eq!(keys(Some("z")), Vec::<String>::new());
        assert_eq!(Store::new().range_after(Some("k")).count(), 0);
    }

    #[test]
    fn equality_and_debug_look_at_contents_only() {
        let a: Store = [("b", 2), ("a", 1)]
            .iter()
            .map(|(k, v)| (k.to_string(), (*v, k.as_bytes().to_vec())))
            .collect();
        let mut b = Store::new();
        b.insert("a", 1, b"a");
        b.insert("b", 2, b"x");
        b.insert("b", 2, b"b");
        assert_eq!(a, b, "an overwritten record's bytes do not count");
        assert_eq!(format!("{a:?}"), r#"[("a", 1, "a"), ("b", 2, "b")]"#);
        b.insert("b", 3, b"b");
        assert_ne!(a, b);
    }
}
