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
