//! The nouns of the protocol (DESIGN §3.1) as newtypes, so an epoch is never
//! mistaken for a log index and a replica id never for a count.

use super::store::Record;
use serde::ser::SerializeStructVariant;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

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

/// What a log entry does to the store when it is applied.
///
/// A PUT or CAS carries its key and value as the [`Record`] the store will
/// hold once the entry is applied, already stamped with the entry's index (the
/// key's version then): the log and the store share one allocation per write.
/// Build them with [`Command::put`] and [`Command::cas`]. On the wire and in
/// the WAL a command looks as if it held the key and value as plain fields.
#[derive(Clone, Debug, Eq)]
pub enum Command {
    /// Fills a slot without changing the store (recovery holes, a new leader's first entry).
    Noop,
    /// Sets the record's key to its value; the key's version becomes the entry's index.
    Put(Record),
    /// Removes `key`; its version becomes 0. A log entry, never a local removal.
    Del { key: String },
    /// Sets the record's key to its value only if the key's version is
    /// `expected` at apply time (0 = only if absent). Every replica decides it
    /// the same way.
    Cas { expected: u64, record: Record },
}

impl Command {
    /// A PUT of `key` = `value` for the entry at `index`.
    pub fn put(index: LogIndex, key: &str, value: &[u8]) -> Command {
        Command::Put(Record::new(key, index.0, value))
    }

    /// A CAS of `key` from version `expected` to `value`, for the entry at `index`.
    pub fn cas(index: LogIndex, key: &str, expected: u64, value: &[u8]) -> Command {
        Command::Cas { expected, record: Record::new(key, index.0, value) }
    }

    /// The key the command writes, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Command::Noop => None,
            Command::Put(record) | Command::Cas { record, .. } => Some(record.key()),
            Command::Del { key } => Some(key),
        }
    }

    /// The value a PUT or CAS writes.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Command::Put(record) | Command::Cas { record, .. } => Some(record.value()),
            Command::Noop | Command::Del { .. } => None,
        }
    }
}

/// Commands are equal when they do the same: a record's version is only the
/// index it was built for, and the entry's index decides the version applied.
impl PartialEq for Command {
    fn eq(&self, other: &Command) -> bool {
        match (self, other) {
            (Command::Noop, Command::Noop) => true,
            (Command::Put(a), Command::Put(b)) => a.same_key_value(b),
            (Command::Del { key: a }, Command::Del { key: b }) => a == b,
            (Command::Cas { expected: x, record: a }, Command::Cas { expected: y, record: b }) => {
                x == y && a.same_key_value(b)
            }
            _ => false,
        }
    }
}

/// The serialized form is that of an enum with plain fields:
/// `Put { key, value }`, `Del { key }`, `Cas { key, version, value }`.
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
            Command::Put(record) => {
                let mut v = s.serialize_struct_variant("Command", 1, "Put", 2)?;
                v.serialize_field("key", record.key())?;
                v.serialize_field("value", &Value(record.value()))?;
                v.end()
            }
            Command::Del { key } => {
                let mut v = s.serialize_struct_variant("Command", 2, "Del", 1)?;
                v.serialize_field("key", key)?;
                v.end()
            }
            Command::Cas { expected, record } => {
                let mut v = s.serialize_struct_variant("Command", 3, "Cas", 3)?;
                v.serialize_field("key", record.key())?;
                v.serialize_field("version", expected)?;
                v.serialize_field("value", &Value(record.value()))?;
                v.end()
            }
        }
    }
}

/// A command as it is serialized; it becomes a [`Command`] once the index of
/// its entry is known.
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

/// An entry as it is serialized.
#[derive(Deserialize)]
#[serde(rename = "Entry")]
struct EntryFields {
    id: EntryId,
    ballot: Epoch,
    command: CommandFields,
}

impl From<EntryFields> for Entry {
    fn from(e: EntryFields) -> Entry {
        let index = e.id.index;
        let command = match e.command {
            CommandFields::Noop => Command::Noop,
            CommandFields::Put { key, value } => Command::put(index, &key, &value),
            CommandFields::Del { key } => Command::Del { key },
            CommandFields::Cas { key, version, value } => {
                Command::cas(index, &key, version, &value)
            }
        };
        Entry { id: e.id, ballot: e.ballot, command }
    }
}

/// An accepted log entry: its id, the ballot it was last accepted in, the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EntryFields")]
pub struct Entry {
    pub id: EntryId,
    /// The epoch in which this replica last accepted the entry. Only decides
    /// which entry wins in recovery; "holds the committed entry" compares ids.
    pub ballot: Epoch,
    pub command: Command,
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
