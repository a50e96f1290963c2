//! The nouns of the protocol (DESIGN §3.1) as newtypes, so an epoch is never
//! mistaken for a log index and a replica id never for a count.

use serde::ser::SerializeStructVariant;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// A replica's 1-based position in the `--peers` list. Bully prefers the highest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u8);

/// A leader's term. Unique to its leader: replica k only ever picks epochs
/// with `e % N == k % N` (DESIGN §3.2). Epoch 0 means "no leader yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// A slot in the log. Slot 0 is never used; index 0 means "nothing".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

/// Time in milliseconds on the caller's clock. The protocol never reads a clock:
/// `now` comes in with every step, deadlines are stored as `Millis`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

/// Names one client request inside one replica, so a reply finds its connection.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ReqId(pub u64);

/// A data directory's identity (DESIGN §3.1, §6): ordered by `counter` alone;
/// the random `nonce` tells apart two directories that picked the same counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Incarnation {
    /// Grows by one each time the replica's directory is wiped and rebuilt.
    pub counter: u64,
    /// Drawn at random when the counter is picked.
    pub nonce: u64,
}

/// The id of an entry: the (epoch, index) of its first proposal. Fixed for life;
/// recovery re-proposes an entry under a new ballot with the same id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EntryId {
    /// Epoch of the leader that first proposed the entry.
    pub epoch: Epoch,
    /// Slot it was first proposed at (always the slot it lives in).
    pub index: LogIndex,
}

/// A key and a value in one shared allocation: what a PUT or CAS writes.
/// Cloning is a reference-count increment, so the log, the WAL batch and
/// every ACCEPT carrying an entry share one copy of it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue(Arc<[u8]>);

/// Layout: key length (u32 LE), key, value.
const KV_KEY_AT: usize = 4;

impl KeyValue {
    /// `key` and `value` in one allocation of the exact size.
    pub fn new(key: &str, value: &[u8]) -> KeyValue {
        let key_len = u32::try_from(key.len()).expect("a key is shorter than 4 GiB");
        let mut bytes: Arc<[u8]> =
            std::iter::repeat_n(0u8, KV_KEY_AT + key.len() + value.len()).collect();
        let buf = Arc::get_mut(&mut bytes).expect("just made, not shared");
        buf[..KV_KEY_AT].copy_from_slice(&key_len.to_le_bytes());
        buf[KV_KEY_AT..KV_KEY_AT + key.len()].copy_from_slice(key.as_bytes());
        buf[KV_KEY_AT + key.len()..].copy_from_slice(value);
        KeyValue(bytes)
    }

    fn key_end(&self) -> usize {
        let len = u32::from_le_bytes(self.0[..KV_KEY_AT].try_into().expect("4 bytes"));
        KV_KEY_AT + len as usize
    }

    /// The key.
    pub fn key(&self) -> &str {
        std::str::from_utf8(&self.0[KV_KEY_AT..self.key_end()]).expect("built from a str")
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.0[self.key_end()..]
    }
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?}, {:?})", self.key(), String::from_utf8_lossy(self.value()))
    }
}

/// What a log entry does to the store when it is applied. A PUT or CAS holds
/// its key and value as one [`KeyValue`]; serialized (wire, WAL), a command
/// looks as if it held them as plain fields: `Put { key, value }`,
/// `Del { key }`, `Cas { key, version, value }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "CommandFields")]
pub enum Command {
    /// Fills a slot without changing the store (recovery holes, a new leader's first entry).
    Noop,
    /// Sets the key to the value; the key's version becomes the entry's index.
    Put(KeyValue),
    /// Removes `key`; its version becomes 0. A log entry, never a local removal.
    Del { key: String },
    /// Sets the key to the value only if the key's version is `expected` at
    /// apply time (0 = only if absent). Every replica decides it the same way.
    Cas { expected: u64, kv: KeyValue },
}

impl Command {
    /// A PUT of `key` = `value`.
    pub fn put(key: &str, value: &[u8]) -> Command {
        Command::Put(KeyValue::new(key, value))
    }

    /// A CAS of `key` from version `expected` to `value`.
    pub fn cas(key: &str, expected: u64, value: &[u8]) -> Command {
        Command::Cas { expected, kv: KeyValue::new(key, value) }
    }

    /// The key the command writes, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Command::Noop => None,
            Command::Put(kv) | Command::Cas { kv, .. } => Some(kv.key()),
            Command::Del { key } => Some(key),
        }
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// A value, through [`value_bytes`].
        struct Value<'a>(&'a [u8]);
        impl Serialize for Value<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                value_bytes::serialize(self.0, s)
            }
        }
        match self {
            Command::Noop => s.serialize_unit_variant("Command", 0, "Noop"),
            Command::Put(kv) => {
                let mut v = s.serialize_struct_variant("Command", 1, "Put", 2)?;
                v.serialize_field("key", kv.key())?;
                v.serialize_field("value", &Value(kv.value()))?;
                v.end()
            }
            Command::Del { key } => {
                let mut v = s.serialize_struct_variant("Command", 2, "Del", 1)?;
                v.serialize_field("key", key)?;
                v.end()
            }
            Command::Cas { expected, kv } => {
                let mut v = s.serialize_struct_variant("Command", 3, "Cas", 3)?;
                v.serialize_field("key", kv.key())?;
                v.serialize_field("version", expected)?;
                v.serialize_field("value", &Value(kv.value()))?;
                v.end()
            }
        }
    }
}

/// A command as it is serialized.
#[derive(Deserialize)]
#[serde(rename = "Command")]
enum CommandFields {
    Noop,
    Put {
        key: String,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
    Del {
        key: String,
    },
    Cas {
        key: String,
        version: u64,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
}

impl From<CommandFields> for Command {
    fn from(c: CommandFields) -> Command {
        match c {
            CommandFields::Noop => Command::Noop,
            CommandFields::Put { key, value } => Command::put(&key, &value),
            CommandFields::Del { key } => Command::Del { key },
            CommandFields::Cas { key, version, value } => Command::cas(&key, version, &value),
        }
    }
}

/// An accepted log entry: its id, the ballot it was last accepted in, the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    /// The epoch in which this replica last accepted the entry. Only decides
    /// which entry wins in recovery; "holds the committed entry" compares ids.
    pub ballot: Epoch,
    pub command: Command,
}

/// What [`Entry::size_bytes`] adds to an entry's key and value: ids,
/// ballot, lengths and tags in any encoding, with room to spare.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The size the protocol's byte bounds count for an entry whose key and
/// value (or key alone) take `payload` bytes.
pub fn entry_size_bytes(payload: usize) -> usize {
    payload + ENTRY_OVERHEAD_BYTES
}

impl Entry {
    /// About the bytes the entry takes in a message or a WAL record, for
    /// the protocol's byte bounds: its key and value plus a fixed overhead.
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.command {
            Command::Noop => 0,
            Command::Put(kv) | Command::Cas { kv, .. } => kv.0.len(),
            Command::Del { key } => key.len(),
        };
        entry_size_bytes(payload)
    }
}

/// The formation state of a data directory (DESIGN §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Formation {
    /// No formation record: a brand new (or wiped) directory.
    #[default]
    Blank,
    /// FORM received (or sent) with this cluster id; FORMED not yet seen.
    Pending(u64),
    /// The cluster with this id is formed.
    Complete(u64),
}

impl Formation {
    /// The cluster id, once one has been picked.
    pub fn cluster_id(&self) -> Option<u64> {
        match self {
            Formation::Blank => None,
            Formation::Pending(id) | Formation::Complete(id) => Some(*id),
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch.0, self.index.0)
    }
}
impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:04x}", self.counter, self.nonce & 0xffff)
    }
}

impl LogIndex {
    /// The next slot.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
}

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Serde adapter for value bytes: in JSON (the WAL) a value that is valid
/// UTF-8 is a string, anything else an array of bytes, so records stay compact
/// and readable; in binary formats (peer frames, snapshots) it is raw bytes.
pub mod value_bytes {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serializes a value.
    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(value);
        }
        match std::str::from_utf8(value) {
            Ok(text) => s.serialize_str(text),
            Err(_) => serde::Serialize::serialize(value, s),
        }
    }

    /// Deserializes a value written by [`serialize`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(ValueVisitor)
        } else {
            d.deserialize_byte_buf(ValueVisitor)
        }
    }

    struct ValueVisitor;

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a sequence of bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<u8>, E> {
            Ok(v.into_bytes())
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct V(#[serde(with = "super")] Vec<u8>);

        #[test]
        fn values_round_trip_in_json_and_postcard() {
            for bytes in [b"hello world".to_vec(), vec![0xff, 0, 10, 13], Vec::new()] {
                let v = V(bytes);
                let json = serde_json::to_string(&v).unwrap();
                assert_eq!(serde_json::from_str::<V>(&json).unwrap(), v, "json {json}");
                let bin = postcard::to_stdvec(&v).unwrap();
                assert_eq!(postcard::from_bytes::<V>(&bin).unwrap(), v);
            }
            assert_eq!(serde_json::to_string(&V(b"a b".to_vec())).unwrap(), "\"a b\"");
        }
    }
}
