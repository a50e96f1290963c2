//! Durable storage: carries out `Persist` ops on disk (DESIGN §6).
//!
//! The protocol never touches files. It emits [`Persist`] ops; the output
//! executor (`crate::exec`) passes them to a [`Storage`] and calls
//! [`Storage::sync`] before any send or reply that depends on them. The
//! simulator implements the same trait with a disk that loses un-synced writes.

pub mod snapshot;
pub mod wal;

use crate::protocol::durable::{Persist, Snapshot};
use crate::protocol::types::LogIndex;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where `Persist` ops go.
pub trait Storage {
    /// Writes one op (buffered; not yet durable).
    fn persist(&mut self, op: &Persist) -> Result<()>;
    /// [`Storage::persist`] for an op the caller no longer needs: a storage
    /// that keeps ops (the disk thread's queue) takes it without a copy.
    fn persist_owned(&mut self, op: Persist) -> Result<()> {
        self.persist(&op)
    }
    /// Makes every op written so far durable (a no-op under `--fsync never`).
    fn sync(&mut self) -> Result<()>;
    /// Starts making every op written so far durable. Returns true when it is
    /// durable on return; false when the caller learns it later (the server's
    /// disk thread reports finished syncs in order, so the event loop never
    /// waits for an fsync).
    fn begin_sync(&mut self) -> Result<bool> {
        self.sync()?;
        Ok(true)
    }
    /// Starts saving a snapshot (durably, atomically); may finish later.
    /// At most one save is in flight at a time.
    fn save_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Result<()>;
    /// The index of a snapshot whose save finished since the last call.
    fn snapshot_saved(&mut self) -> Result<Option<LogIndex>>;
}

/// The log may grow to this fraction (1 / divisor) of the newest snapshot's
/// size before it asks for the next snapshot, when that is more than
/// `--wal-segment-bytes`.
pub const SNAPSHOT_LOG_DIVISOR: u64 = 2;

/// True when a log segment of `segment_bytes` asks for a snapshot: once it
/// passes `--wal-segment-bytes` (`wal_segment_bytes`) and half the size of
/// the newest snapshot file (`snapshot_bytes`).
///
/// Each save rewrites the whole store, so a fixed size alone would cost
/// write amplification that grows with the store: with 60 KB values a 400 MB
/// store was rewritten for every 64 MB of log, the saves of three replicas
/// kept both cores and the disk busy, and PUT p99 rose to about 0.5 s.
/// Scaled by the snapshot, a save writes at most two bytes for each byte of
/// log whatever the store's size (as Redis rewrites its append-only file
/// once it has grown by a set fraction). The price is memory: the log since
/// the last snapshot stays in memory, up to half the store's size here (or
/// `--snapshot-every-entries` entries, whichever comes first).
pub fn log_asks_for_snapshot(
    segment_bytes: u64,
    wal_segment_bytes: u64,
    snapshot_bytes: u64,
) -> bool {
    segment_bytes > wal_segment_bytes.max(snapshot_bytes / SNAPSHOT_LOG_DIVISOR)
}

/// `--fsync always|never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before any vote, promise or OK that depends on a write (default).
    Always,
    /// Never fsync: safe against process crashes only, not power loss.
    Never,
}

/// A storage failure. Every variant names the file; the replica stops on any
/// of them (a failed fsync is never retried: the page cache's state is unknown).
#[derive(Debug)]
pub enum Error {
    /// A read, write, fsync or open failed.
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    /// A record in the middle of a file is damaged.
    Corrupt { path: PathBuf, offset: u64, detail: String },
    /// The file was written by a newer quorumkv.
    NewerFormat { path: PathBuf, found: u32, supported: u32 },
}

/// Result alias for storage.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Corrupt { path, offset, detail } => {
                write!(f, "corrupt record in {} at byte offset {offset}: {detail}", path.display())
            }
            Error::NewerFormat { path, found, supported } => write!(
                f,
                "{} has format version {found}, newer than this build supports ({supported})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_snapshot_is_asked_for_past_the_segment_size_or_half_the_last_snapshot() {
        // Small store: the segment size decides.
        assert!(!log_asks_for_snapshot(64 * MIB, 64 * MIB, 10 * MIB));
        assert!(log_asks_for_snapshot(64 * MIB + 1, 64 * MIB, 10 * MIB));
        assert!(log_asks_for_snapshot(64 * MIB + 1, 64 * MIB, 0));
        // Large store: the log grows to half the snapshot first.
        assert!(!log_asks_for_snapshot(65 * MIB, 64 * MIB, 400 * MIB));
        assert!(!log_asks_for_snapshot(200 * MIB, 64 * MIB, 400 * MIB));
        assert!(log_asks_for_snapshot(200 * MIB + 1, 64 * MIB, 400 * MIB));
    }

    #[test]
    fn snapshot_writes_per_byte_of_log_stay_bounded_as_the_store_grows() {
        // A store growing by every byte of log, saved whenever the log asks:
        // the bytes written by saves stay within SNAPSHOT_LOG_DIVISOR (+1
        // for the last save) times the log, however large the store gets.
        let segment_max = 4 * MIB;
        let (mut store, mut snapshot, mut segment) = (0u64, 0u64, 0u64);
        let (mut logged, mut saved) = (0u64, 0u64);
        for _ in 0..100_000 {
            let write = 64 * 1024;
            store += write;
            segment += write;
            logged += write;
            if log_asks_for_snapshot(segment, segment_max, snapshot) {
                snapshot = store;
                saved += store;
                segment = 0;
            }
        }
        assert!(store > 1000 * segment_max, "the store outgrew the segment size");
        assert!(
            saved <= (SNAPSHOT_LOG_DIVISOR + 1) * logged,
            "saves wrote {saved} bytes for {logged} bytes of log"
        );
    }
}
