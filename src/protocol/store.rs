//! The applied store (DESIGN §6): key -> (version, value), in key order.
//!
//! # Why not a `BTreeMap<String, (u64, Vec<u8>)>`
//! That costs three allocations per key (the key, the value, a share of a
//! half-full tree node), about 2.4 times the raw bytes with 8-byte keys and
//! 100-byte values, and every snapshot had to copy all of it: the periodic
//! save and each catch-up transfer held a second full copy of the store, and
//! the event loop stopped for the copy.
//!
//! Here a key is one [`Record`]: a single shared allocation holding its
//! version, key and value. The store keeps records in sorted chunks of at
//! most [`CHUNK_MAX`], each chunk behind an `Arc`. Cloning the store copies
//! the list of chunk pointers only (one pointer per ~200 keys), so a snapshot
//! image is cheap to take and shares every record with the live store. A
//! chunk is copied on its first change while an image still holds it (copy on
//! write: pointers only, the records stay shared), so an image costs memory
//! only for the chunks written while it lives.
//!
//! Everything here is plain data and deterministic, as the protocol core must be.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Records per chunk at most: a chunk that grows past it splits in two.
pub const CHUNK_MAX: usize = 256;
/// A chunk shorter than this after a removal merges with a neighbour when
/// the two fit in one chunk, so deletions never leave many tiny chunks.
const CHUNK_MIN: usize = CHUNK_MAX / 4;
/// A chunk's capacity grows by this many records at a time (not doubling),
/// so its spare capacity stays below this.
const CHUNK_GROW: usize = 16;

/// Record layout: version (u64 LE), key length (u32 LE), key, value.
const VERSION_BYTES: usize = 8;
const KEY_AT: usize = VERSION_BYTES + 4;

/// One key's applied state in one immutable, shared allocation: its version,
/// its key (UTF-8) and its value. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct Record(Arc<[u8]>);

impl Record {
    /// A record of `key` at `version` holding `value`.
    pub fn new(key: &str, version: u64, value: &[u8]) -> Record {
        let key_len = u32::try_from(key.len()).expect("a key is shorter than 4 GiB");
        let len = KEY_AT + key.len() + value.len();
        // One allocation of the exact size, filled in place.
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
        let buf = Arc::get_mut(&mut bytes).expect("just made, not shared");
        buf[..VERSION_BYTES].copy_from_slice(&version.to_le_bytes());
        buf[VERSION_BYTES..KEY_AT].copy_from_slice(&key_len.to_le_bytes());
        buf[KEY_AT..KEY_AT + key.len()].copy_from_slice(key.as_bytes());
        buf[KEY_AT + key.len()..].copy_from_slice(value);
        Record(bytes)
    }

    /// The log index of the write that set the key.
    pub fn version(&self) -> u64 {
        let mut v = [0; VERSION_BYTES];
        v.copy_from_slice(&self.0[..VERSION_BYTES]);
        u64::from_le_bytes(v)
    }

    fn key_len(&self) -> usize {
        let mut l = [0; 4];
        l.copy_from_slice(&self.0[VERSION_BYTES..KEY_AT]);
        u32::from_le_bytes(l) as usize
    }

    /// The key's bytes (UTF-8); keys sort by these bytes, as `str`s do.
    pub fn key_bytes(&self) -> &[u8] {
        &self.0[KEY_AT..KEY_AT + self.key_len()]
    }

    /// The key.
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).expect("a record's key was a str")
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.0[KEY_AT + self.key_len()..]
    }

    /// True when both hold the same key and value, whatever their versions.
    pub fn same_key_value(&self, other: &Record) -> bool {
        self.0[VERSION_BYTES..] == other.0[VERSION_BYTES..]
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = String::from_utf8_lossy(self.value());
        write!(f, "({:?}, {}, {value:?})", self.key(), self.version())
    }
}

/// key -> (version, value) in key order; a deleted key is simply absent.
/// See the module docs for the layout.
#[derive(Clone, Default)]
pub struct Store {
    /// Non-empty chunks of records sorted by key; every key of a chunk sorts
    /// before every key of the next.
    chunks: Vec<Arc<Vec<Record>>>,
    len: usize,
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

    /// The chunk that holds `key` or would hold it, and the key's position
    /// there (`Err` where it would go). `None` when the store is empty.
    fn locate(&self, key: &[u8]) -> Option<(usize, Result<usize, usize>)> {
        if self.chunks.is_empty() {
            return None;
        }
        // The last chunk whose first key is <= key (or the first chunk).
        let c = self.chunks.partition_point(|c| c[0].key_bytes() <= key).saturating_sub(1);
        Some((c, self.chunks[c].binary_search_by(|r| r.key_bytes().cmp(key))))
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Option<&Record> {
        let (c, at) = self.locate(key.as_bytes())?;
        at.ok().map(|i| &self.chunks[c][i])
    }

    /// The record of the greatest key.
    pub fn last(&self) -> Option<&Record> {
        self.chunks.last().and_then(|c| c.last())
    }

    /// The version of `key`; 0 when absent.
    pub fn version(&self, key: &str) -> u64 {
        self.get(key).map_or(0, Record::version)
    }

    /// Sets `key` to `value` at `version`.
    pub fn insert(&mut self, key: &str, version: u64, value: &[u8]) {
        self.insert_record(Record::new(key, version, value));
    }

    /// Sets `record`'s key to its value at `version`: shares `record` when it
    /// carries that version (a log entry's record does), else copies it.
    pub fn insert_at(&mut self, version: u64, record: &Record) {
        if record.version() == version {
            self.insert_record(record.clone());
        } else {
            self.insert(record.key(), version, record.value());
        }
    }

    /// Puts `record` in, replacing the record of its key if there is one.
    /// Records that come in key order (a snapshot being loaded or received)
    /// go straight to the end.
    pub fn insert_record(&mut self, record: Record) {
        if self.last().is_none_or(|l| l.key_bytes() < record.key_bytes()) {
            self.push_last(record);
            return;
        }
        let (c, at) = self.locate(record.key_bytes()).expect("not empty: it has a last record");
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        match at {
            Ok(i) => chunk[i] = record,
            Err(i) => {
                grow_insert(chunk, i, record);
                self.len += 1;
                if chunk.len() > CHUNK_MAX {
                    let right = chunk.split_off(chunk.len() / 2);
                    chunk.shrink_to_fit();
                    self.chunks.insert(c + 1, Arc::new(right));
                }
            }
        }
    }

    /// Appends a record whose key sorts after every key held.
    fn push_last(&mut self, record: Record) {
        self.len += 1;
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK_MAX => {
                let chunk = Arc::make_mut(last);
                let end = chunk.len();
                grow_insert(chunk, end, record);
            }
            // A full last chunk stays full: appends fill chunks completely.
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_GROW);
                chunk.push(record);
                self.chunks.push(Arc::new(chunk));
            }
        }
    }

    /// Removes `key`; returns whether it was held.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some((c, Ok(i))) = self.locate(key.as_bytes()) else {
            return false;
        };
        self.len -= 1;
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        chunk.remove(i);
        let len = chunk.len();
        if len == 0 {
            self.chunks.remove(c);
        } else if len < CHUNK_MIN {
            self.merge_small(c);
        }
        true
    }

    /// Merges the small chunk `c` into a neighbour when the two fit in half a chunk.
    fn merge_small(&mut self, c: usize) {
        let fits =
            |a: usize, b: usize| self.chunks[a].len() + self.chunks[b].len() <= CHUNK_MAX / 2;
        let (left, right) = if c + 1 < self.chunks.len() && fits(c, c + 1) {
            (c, c + 1)
        } else if c > 0 && fits(c - 1, c) {
            (c - 1, c)
        } else {
            return;
        };
        let moved = self.chunks.remove(right);
        let chunk = Arc::make_mut(&mut self.chunks[left]);
        chunk.reserve_exact(moved.len());
        chunk.extend(moved.iter().cloned());
    }

    /// Every record, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The records whose keys sort after `after` (all of them for `None`), in key order.
    pub fn range_after(&self, after: Option<&str>) -> impl Iterator<Item = &Record> + '_ {
        let (c, i) = match after.and_then(|k| self.locate(k.as_bytes())) {
            None => (0, 0),
            Some((c, Ok(i))) => (c, i + 1),
            Some((c, Err(i))) => (c, i),
        };
        let first = self.chunks.get(c).map(|chunk| &chunk[i..]).unwrap_or(&[]);
        first.iter().chain(self.chunks.iter().skip(c + 1).flat_map(|c| c.iter()))
    }

    /// Every key as an ordinary map, for tests and checkers.
    pub fn to_map(&self) -> BTreeMap<String, (u64, Vec<u8>)> {
        self.iter().map(|r| (r.key().to_string(), (r.version(), r.value().to_vec()))).collect()
    }
}

/// Inserts at `i`, growing the capacity by `CHUNK_GROW` when full.
fn grow_insert(chunk: &mut Vec<Record>, i: usize, record: Record) {
    if chunk.len() == chunk.capacity() {
        chunk.reserve_exact(CHUNK_GROW);
    }
    chunk.insert(i, record);
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

impl FromIterator<Record> for Store {
    fn from_iter<I: IntoIterator<Item = Record>>(records: I) -> Store {
        let mut store = Store::new();
        for r in records {
            store.insert_record(r);
        }
        store
    }
}

impl FromIterator<(String, (u64, Vec<u8>))> for Store {
    fn from_iter<I: IntoIterator<Item = (String, (u64, Vec<u8>))>>(pairs: I) -> Store {
        pairs.into_iter().map(|(k, (version, value))| Record::new(&k, version, &value)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn check_shape(s: &Store) {
        assert_eq!(s.len, s.chunks.iter().map(|c| c.len()).sum::<usize>());
        assert!(s.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK_MAX));
        let keys: Vec<&[u8]> = s.iter().map(Record::key_bytes).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sorted and unique");
    }

    #[test]
    fn a_record_holds_its_parts() {
        let r = Record::new("key", 42, b"va\0lue");
        assert_eq!((r.key(), r.version(), r.value()), ("key", 42, &b"va\0lue"[..]));
        let empty = Record::new("k", 0, b"");
        assert_eq!((empty.key(), empty.version(), empty.value()), ("k", 0, &b""[..]));
    }

    #[test]
    fn behaves_like_a_btreemap_under_random_operations() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut store = Store::new();
        let mut model: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
        let mut images = Vec::new();
        for step in 0..60_000u64 {
            // Few enough keys that removals empty and merge chunks.
            let key = format!("k{}", rng.random_range(0..3000u32));
            match rng.random_range(0..10u32) {
                0..=5 => {
                    let value = vec![(step % 251) as u8; rng.random_range(0..20usize)];
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
            }
        }
        check_shape(&store);
        assert_eq!(store.len(), model.len());
        assert_eq!(store.to_map(), model);
        for (image, model) in &images {
            check_shape(image);
            assert_eq!(&image.to_map(), model);
        }
    }

    #[test]
    fn range_after_starts_past_the_key() {
        let store: Store =
            (0..1000u64).map(|i| Record::new(&format!("k{i:04}"), i, b"v")).collect();
        check_shape(&store);
        assert_eq!(store.chunks.len(), 1000usize.div_ceil(CHUNK_MAX), "appends fill chunks");
        let keys = |after: Option<&str>| -> Vec<String> {
            store.range_after(after).map(|r| r.key().to_string()).collect()
        };
        assert_eq!(keys(None).len(), 1000);
        assert_eq!(keys(Some("k0255")).first().map(String::as_str), Some("k0256"));
        assert_eq!(keys(Some("k0255x")).first().map(String::as_str), Some("k0256"));
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
        b.insert("b", 2, b"b");
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), r#"[("a", 1, "a"), ("b", 2, "b")]"#);
        b.insert("b", 3, b"b");
        assert_ne!(a, b);
    }
}
