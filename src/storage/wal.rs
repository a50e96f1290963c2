//! The write-ahead log: every [`Persist`] op a replica emits, appended to one
//! file and replayed on start-up (DESIGN §3.1, §6).
//!
//! # The data directory
//! One file, `wal.log` (see [`wal_path`]). Snapshots and log segments come
//! later; the format is ready for them: every file opens with its own header,
//! and a record names no file and no file offset, so a full `wal.log` can be
//! renamed to `segment-<n>` as it stands. [`DiskStorage::open`] creates the
//! directory when it is missing and takes an exclusive lock on `wal.log`, so a
//! second process can never append to the same log.
//!
//! # File format
//! ```text
//! header:  "QKVWAL\0\0" (8 bytes) | format version (u32 LE, now 2)
//! record:  payload length (u32 LE) | CRC-32 of payload (u32 LE) | payload
//! ```
//! A payload is 1 to [`RECORD_BYTES_MAX`] bytes of JSON: the array of the
//! [`Persist`] ops of one sync batch, in order and never empty. Replay applies
//! the ops in file order through [`Durable::apply`], so the file format never
//! needs to know what an op means. A header with a newer version is refused
//! with [`Error::NewerFormat`]; bad magic is [`Error::Corrupt`] at offset 0.
//!
//! Version 1 wrote one record per op, its payload the JSON object of that op.
//! Such a log is still read: after replaying it, open rewrites the version
//! field in place to 2 before anything is appended (only one byte changes, so
//! the rewrite cannot tear). The old records stay, so replay accepts both
//! payload shapes, an array (a batch) or an object (one op), in any file.
//!
//! # One record per sync
//! [`Storage::persist`] only encodes the op into memory. [`Storage::sync`]
//! writes every op buffered since the previous sync as one record, with one
//! `write_all`, then under [`FsyncPolicy::Always`] calls `fdatasync`. The
//! executor writes batch k+1 only after the fsync of batch k has returned, so
//! under `--fsync always` a power cut can damage the last record only: every
//! earlier one was durable before the next was written. The last record's ops
//! were never acknowledged (its sync had not returned), and because the batch
//! is one checksummed record, replay keeps all of it or none of it.
//!
//! The only batches split into several records are those whose payload would
//! pass `RECORD_BYTES_MAX` (256 MiB between two syncs: rare). Each of their
//! records is written and fsynced before the next, so still only the last
//! record can be torn; a power cut may then keep a prefix of the batch, as if
//! the process had stopped while handing it to storage. One op that does not
//! fit in a record on its own is refused by `persist`.
//!
//! # Torn tails and corruption
//! When replay meets a record at byte offset X that it cannot read:
//! - If the checksum matches but the payload is no batch of ops, the bytes are
//!   exactly what some writer wrote: that is never a torn write, so it is
//!   `Corrupt` at X.
//! - Otherwise (header cut short, length 0, above `RECORD_BYTES_MAX` or past
//!   the end of the file, or a checksum mismatch), replay looks at every byte
//!   offset after X for a frame whose length fits and whose checksum matches.
//!   If there is one, X is not the last record, and only the last record can
//!   be torn: `Corrupt` at X, naming the offset of the valid frame. If there
//!   is none, X starts a torn tail: the file is cut at X with a warning naming
//!   the file and offset, and the replica carries on.
//!
//! The scan is what tells a damaged middle record from a torn tail when the
//! damage hits a length field: a flipped high bit makes the record seem to
//! run past the end of the file, exactly like a torn one. serde_json escapes
//! every byte below 0x20, so any four bytes inside a JSON payload read as a
//! length of at least 0x2000_0000, above `RECORD_BYTES_MAX`: the scan cannot
//! mistake payload text for a record header. A file shorter than the header
//! that is a prefix of the header is a torn first boot and is started afresh.
//!
//! Under [`FsyncPolicy::Never`] the format is the same, and `sync` only hands
//! the record to the OS. That survives a process crash (a torn last record at
//! worst) but not a power cut: the kernel writes dirty pages back in any
//! order, so a power cut can damage records that are not last, and replay
//! then refuses to start.
//!
//! # Writes and fsync
//! The first sync after the file (or the directory) was created also fsyncs
//! the directory (and its parent), so the file's name survives a power cut as
//! well as its bytes. Memory holds the current batch only.
//!
//! A failed write or fsync poisons the storage: every later call returns an
//! error and the replica stops. A failed fsync is never retried, because the
//! kernel may already have dropped the dirty pages and marked them clean, so a
//! second fsync could "succeed" over lost data. Dropping a `DiskStorage` does
//! not write its batch: ops that were never synced are lost, as in a crash.

use super::{Error, FsyncPolicy, Result, Storage};
use crate::protocol::durable::{Durable, Persist};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name of the log file inside the data directory.
pub const WAL_FILE_NAME: &str = "wal.log";

/// First eight bytes of every log file.
pub const MAGIC: [u8; 8] = *b"QKVWAL\0\0";

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format version this build reads (and upgrades in place).
pub const FORMAT_VERSION_MIN: u32 = 1;

/// File header: magic, then the format version as u32 LE.
pub const HEADER_BYTES: u64 = 12;

/// Record header: payload length and payload CRC-32, each u32 LE.
pub const RECORD_HEADER_BYTES: u64 = 8;

/// Largest payload one record may carry. Far above any batch a leader builds,
/// and it bounds what replay allocates for one record, so a damaged length
/// field can never make start-up allocate gigabytes.
pub const RECORD_BYTES_MAX: u32 = 256 * 1024 * 1024;

// Any four bytes of JSON text read as at least 0x2000_0000 (every byte is
// >= 0x20), so the corruption scan never takes payload text for a record header.
const _: () = assert!(RECORD_BYTES_MAX < 0x2000_0000);

/// How much of the file the corruption scan reads at a time.
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;

/// Read buffer for replay.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Where the log lives inside a data directory.
pub fn wal_path(dir: &Path) -> PathBuf {
    dir.join(WAL_FILE_NAME)
}

/// The write-ahead log of one data directory. Implements [`Storage`].
#[derive(Debug)]
pub struct DiskStorage {
    /// The log file's path, named in every error.
    path: PathBuf,
    /// The open log, locked for this process, in append mode.
    file: File,
    /// Ops persisted since the last sync, framed as records.
    batch: Batch,
    /// Largest payload of one record: `RECORD_BYTES_MAX` (smaller in tests).
    record_bytes_max: usize,
    /// Whether `sync` calls fdatasync.
    fsync: FsyncPolicy,
    /// Directories whose entries the next fsync must make durable (the data
    /// directory after the log was created, its parent after it was created).
    dirs_to_sync: Vec<PathBuf>,
    /// Set by the first failed write or fsync; every later call fails.
    poisoned: Option<Poisoned>,
    /// Bytes handed to the OS since open.
    bytes_written: u64,
    /// fdatasyncs of the log issued by `sync` since open.
    syncs: u64,
}

/// The failure that stopped a `DiskStorage`.
#[derive(Debug)]
struct Poisoned {
    /// The operation that failed ("write", "fsync", ...).
    op: &'static str,
    /// The error's kind, repeated in every later error.
    kind: io::ErrorKind,
    /// The error's text, repeated in every later error.
    message: String,
}

/// The ops persisted since the last sync, already encoded as framed records.
#[derive(Debug, Default)]
struct Batch {
    /// What the next sync writes: the file header when the log is new, then
    /// the records. While `open` is set, the last record lacks its closing
    /// `]`, its length and its checksum.
    bytes: Vec<u8>,
    /// Where each closed record ends in `bytes`.
    ends: Vec<usize>,
    /// Where the open record starts in `bytes`, if one is open.
    open: Option<usize>,
    /// One op's JSON, before it joins a record.
    scratch: Vec<u8>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `op` to the open record, first closing it (and so starting a
    /// new record) when the payload would pass `max_payload` bytes. On error
    /// nothing changes.
    fn push(&mut self, op: &Persist, max_payload: usize) -> std::result::Result<(), String> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, op)
            .map_err(|e| format!("cannot encode op: {e}"))?;
        // A lone op still needs its `[` and `]`.
        if self.scratch.len() + 2 > max_payload {
            return Err(format!(
                "op of {} bytes does not fit in a record of at most {max_payload} bytes",
                self.scratch.len()
            ));
        }
        if let Some(start) = self.open {
            // The payload so far (with its `[`), a comma, the op and the `]`.
            let payload = self.bytes.len() - start - RECORD_HEADER_BYTES as usize;
            if payload + self.scratch.len() + 2 > max_payload {
                self.close();
            }
        }
        if self.open.is_some() {
            self.bytes.push(b',');
        } else {
            self.open = Some(self.bytes.len());
            self.bytes.extend_from_slice(&[0; RECORD_HEADER_BYTES as usize]);
            self.bytes.push(b'[');
        }
        self.bytes.extend_from_slice(&self.scratch);
        Ok(())
    }

    /// Closes the open record, if any: the `]`, then its length and checksum.
    fn close(&mut self) {
        let Some(start) = self.open.take() else {
            return;
        };
        self.bytes.push(b']');
        let payload_start = start + RECORD_HEADER_BYTES as usize;
        // `push` kept the payload within `max_payload`, at most RECORD_BYTES_MAX.
        let len = u32::try_from(self.bytes.len() - payload_start).expect("payload fits in u32");
        let crc = crc32fast::hash(&self.bytes[payload_start..]);
        self.bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.bytes[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
        self.ends.push(self.bytes.len());
    }

    /// The pieces a sync writes, one record each (the first also carries the
    /// file header, if any; a header alone is a piece too). Call after `close`.
    fn pieces(&self) -> Vec<&[u8]> {
        let mut start = 0;
        let last = self.ends.last().copied().unwrap_or(0);
        let tail = (last < self.bytes.len()).then_some(self.bytes.len());
        let mut pieces = Vec::with_capacity(self.ends.len() + 1);
        for end in self.ends.iter().copied().chain(tail) {
            pieces.push(&self.bytes[start..end]);
            start = end;
        }
        pieces
    }

    /// Empties the batch, keeping its allocations.
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.open = None;
    }
}

/// What replay found.
struct Replayed {
    /// State rebuilt from every good record.
    durable: Durable,
    /// Good records applied.
    records: u64,
    /// Ops in those records.
    ops: u64,
    /// Byte offset just past the last good record.
    end: u64,
    /// The record at `end` that could not be read, if replay stopped early.
    bad: Option<Bad>,
}

/// Why a record could not be read.
enum Bad {
    /// The bytes are not what was written (cut short, impossible length,
    /// checksum mismatch): a torn tail when no valid frame follows.
    Damaged(String),
    /// The checksum matches but the payload is no batch of ops: never torn.
    Undecodable(String),
}

/// One step of replay.
enum Frame {
    /// The ops of a good record and the record's size in bytes.
    Valid(Vec<Persist>, u64),
    /// A record that could not be read.
    Bad(Bad),
}

impl DiskStorage {
    /// Opens (creating if missing) the data directory, replays what is there,
    /// and returns the storage plus the recovered state. Cuts a torn tail with
    /// a warning; a damaged record in the middle is [`Error::Corrupt`]. Logs the
    /// number of records, ops and bytes replayed and the time taken.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<(DiskStorage, Durable)> {
        let started = Instant::now();
        let dir_created = create_dir(dir)?;
        let path = wal_path(dir);
        let file = open_locked(&path)?;
        let mut storage = DiskStorage {
            path,
            file,
            batch: Batch::default(),
            record_bytes_max: RECORD_BYTES_MAX as usize,
            fsync,
            dirs_to_sync: Vec::new(),
            poisoned: None,
            bytes_written: 0,
            syncs: 0,
        };
        if dir_created {
            storage.dirs_to_sync.push(parent_dir(dir));
        }
        let file_len = storage.file.metadata().map_err(io_error(&storage.path, "stat"))?.len();
        let (durable, records, ops, bytes) = if file_len < HEADER_BYTES {
            storage.start_fresh(dir, file_len)?;
            (Durable::default(), 0, 0, 0)
        } else {
            let replayed = storage.recover(file_len)?;
            (replayed.durable, replayed.records, replayed.ops, replayed.end)
        };
        crate::qlog!(
            "wal {}: replayed {records} records ({ops} ops, {bytes} bytes) in {} ms",
            storage.path.display(),
            started.elapsed().as_millis()
        );
        Ok((storage, durable))
    }

    /// Size of the log segment being appended to.
    pub fn segment_bytes(&self) -> u64 {
        // Until segments exist, the one log file is the segment.
        self.bytes_written()
    }

    /// Bytes handed to the OS since open: the header of a new log and every
    /// record written. For metrics.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// fdatasyncs of the log issued by `sync` since open: one per record under
    /// [`FsyncPolicy::Always`], none under `Never`. For metrics.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Starts a log whose file is empty or holds a torn header from a crash
    /// during first boot. Anything else shorter than a header is corrupt.
    fn start_fresh(&mut self, dir: &Path, file_len: u64) -> Result<()> {
        let header = header_bytes();
        if file_len > 0 {
            let mut found = Vec::new();
            read_at(&self.file, &self.path, 0, file_len as usize, &mut found)?;
            if !header.starts_with(&found) {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    offset: 0,
                    detail: format!(
                        "file is {file_len} bytes: shorter than the header, not a prefix of it"
                    ),
                });
            }
            crate::qlog!(
                "WARNING wal {}: torn header ({file_len} of {HEADER_BYTES} bytes), starting afresh",
                self.path.display()
            );
            self.file.set_len(0).map_err(io_error(&self.path, "truncate"))?;
        }
        self.batch.bytes.extend_from_slice(&header);
        self.dirs_to_sync.push(dir.to_path_buf());
        Ok(())
    }

    /// Checks the header, replays every record, cuts a torn tail, and
    /// upgrades an older format version.
    fn recover(&mut self, file_len: u64) -> Result<Replayed> {
        let mut header = Vec::new();
        read_at(&self.file, &self.path, 0, HEADER_BYTES as usize, &mut header)?;
        let version = check_header(&self.path, &header)?;
        let replayed = replay_records(&self.file, &self.path, file_len)?;
        match &replayed.bad {
            None => {}
            Some(Bad::Undecodable(detail)) => {
                return Err(self.corrupt(replayed.end, detail.clone()));
            }
            Some(Bad::Damaged(detail)) => {
                let from = replayed.end + 1;
                if let Some(valid) =
                    find_valid_frame(&self.file, &self.path, from, file_len, SCAN_WINDOW_BYTES)?
                {
                    let detail = format!("{detail}; a valid record follows at byte offset {valid}");
                    return Err(self.corrupt(replayed.end, detail));
                }
                self.cut_torn_tail(replayed.end, file_len, detail)?;
            }
        }
        if version < FORMAT_VERSION {
            self.upgrade_header(version)?;
        }
        Ok(replayed)
    }

    /// Truncates the file at `offset`, the start of a torn last record.
    fn cut_torn_tail(&mut self, offset: u64, file_len: u64, detail: &str) -> Result<()> {
        crate::qlog!(
            "WARNING wal {}: torn tail at byte offset {offset} ({detail}); cutting {} bytes",
            self.path.display(),
            file_len - offset
        );
        self.file.set_len(offset).map_err(io_error(&self.path, "truncate"))?;
        if self.fsync == FsyncPolicy::Always {
            // The cut must be durable before new records land where the torn
            // one was, or a crash could bring back its bytes behind them.
            self.file.sync_all().map_err(io_error(&self.path, "fsync"))?;
        }
        Ok(())
    }

    /// Rewrites the header's version field as `FORMAT_VERSION`, in place,
    /// before any record of the new format is appended. The records already
    /// there stay as they are (replay reads both shapes).
    fn upgrade_header(&mut self, from: u32) -> Result<()> {
        // The log's own handle appends; a second handle writes in place.
        let mut file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io_error(&self.path, "open"))?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64)).map_err(io_error(&self.path, "seek"))?;
        file.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io_error(&self.path, "write"))?;
        if self.fsync == FsyncPolicy::Always {
            file.sync_data().map_err(io_error(&self.path, "fsync"))?;
        }
        crate::qlog!(
            "wal {}: format version {from} upgraded in place to {FORMAT_VERSION}",
            self.path.display()
        );
        Ok(())
    }

    fn corrupt(&self, offset: u64, detail: String) -> Error {
        Error::Corrupt { path: self.path.clone(), offset, detail }
    }

    /// Fails when an earlier write or fsync failed.
    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(p) => Err(Error::Io {
                path: self.path.clone(),
                op: p.op,
                source: io::Error::new(
                    p.kind,
                    format!("storage stopped after an earlier {} failed: {}", p.op, p.message),
                ),
            }),
        }
    }

    /// Records a failed write or fsync: the storage is unusable from now on.
    fn poison(&mut self, path: PathBuf, op: &'static str, source: io::Error) -> Error {
        self.poisoned = Some(Poisoned { op, kind: source.kind(), message: source.to_string() });
        Error::Io { path, op, source }
    }

    /// Writes the batch's records in order, each with one `write_all`; under
    /// `FsyncPolicy::Always` fsyncs after each, before the next is written.
    fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        let pieces = batch.pieces();
        for piece in &pieces {
            if let Err(e) = self.file.write_all(piece) {
                return Err(self.poison(self.path.clone(), "write", e));
            }
            self.bytes_written += piece.len() as u64;
            if self.fsync == FsyncPolicy::Always {
                self.fsync_all()?;
            }
        }
        if pieces.is_empty() && self.fsync == FsyncPolicy::Always {
            // Nothing to write, but a directory entry is not yet durable.
            self.fsync_all()?;
        }
        Ok(())
    }

    /// fdatasyncs the log, then any directory whose entry is not yet durable.
    fn fsync_all(&mut self) -> Result<()> {
        self.syncs += 1;
        if let Err(e) = self.file.sync_data() {
            return Err(self.poison(self.path.clone(), "fsync", e));
        }
        while let Some(dir) = self.dirs_to_sync.last() {
            let dir = dir.clone();
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                return Err(self.poison(dir, "fsync directory", e));
            }
            self.dirs_to_sync.pop();
        }
        Ok(())
    }
}

impl Storage for DiskStorage {
    fn save_snapshot(
        &mut self,
        snapshot: std::sync::Arc<crate::protocol::durable::Snapshot>,
    ) -> Result<()> {
        // Snapshots on disk come next; until then a save never completes and
        // the log is never compacted.
        let _ = snapshot;
        Ok(())
    }

    fn snapshot_saved(&mut self) -> Result<Option<crate::protocol::types::LogIndex>> {
        Ok(None)
    }

    /// Adds one op to the batch in memory; no IO. An op whose JSON does not
    /// fit in one record is refused, and the batch stays as it was.
    fn persist(&mut self, op: &Persist) -> Result<()> {
        self.check_poisoned()?;
        if let Err(detail) = self.batch.push(op, self.record_bytes_max) {
            return Err(Error::Io {
                path: self.path.clone(),
                op: "encode",
                source: io::Error::new(io::ErrorKind::InvalidInput, detail),
            });
        }
        Ok(())
    }

    /// Writes the batch as one record (several only when it passed
    /// `RECORD_BYTES_MAX`); under `FsyncPolicy::Always` also makes it durable.
    /// Does nothing when nothing was persisted since the last sync.
    fn sync(&mut self) -> Result<()> {
        self.check_poisoned()?;
        if self.batch.is_empty() && self.dirs_to_sync.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.close();
        let written = self.write_batch(&batch);
        batch.clear();
        self.batch = batch;
        written
    }
}

/// A mapper from `io::Error` to `Error::Io` naming `path` and `op`.
fn io_error<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { path: path.to_path_buf(), op, source }
}

/// Creates `dir` when missing; returns whether it did.
fn create_dir(dir: &Path) -> Result<bool> {
    let existed = dir.try_exists().map_err(io_error(dir, "stat"))?;
    fs::create_dir_all(dir).map_err(io_error(dir, "create directory"))?;
    Ok(!existed)
}

/// The directory holding `dir`'s entry ("." for a bare relative name).
fn parent_dir(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Opens (creating) the log for reading and appending, locked to this process.
fn open_locked(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error(path, "open"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Io {
            path: path.to_path_buf(),
            op: "lock",
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "another process has this data directory open",
            ),
        }),
        Err(TryLockError::Error(e)) => Err(io_error(path, "lock")(e)),
    }
}

/// The 12-byte file header this build writes.
fn header_bytes() -> [u8; HEADER_BYTES as usize] {
    let mut header = [0; HEADER_BYTES as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Checks magic and version of a 12-byte header; returns the version.
fn check_header(path: &Path, header: &[u8]) -> Result<u32> {
    if header[..8] != MAGIC {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            detail: format!("bad magic {:?}, not a quorumkv log", &header[..8]),
        });
    }
    let version = u32::from_le_bytes(le_u32(&header[8..12]));
    if version > FORMAT_VERSION {
        return Err(Error::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < FORMAT_VERSION_MIN {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 8,
            detail: format!("format version {version} was never written"),
        });
    }
    Ok(version)
}

/// Four bytes as an array (the caller slices exactly four).
fn le_u32(bytes: &[u8]) -> [u8; 4] {
    bytes.try_into().expect("caller passes exactly four bytes")
}

/// Checks a record header against the bytes after it; returns (length, crc).
fn check_record_header(header: &[u8], bytes_after: u64) -> std::result::Result<(u32, u32), String> {
    let len = u32::from_le_bytes(le_u32(&header[..4]));
    let crc = u32::from_le_bytes(le_u32(&header[4..8]));
    if len == 0 {
        return Err("length 0".to_string());
    }
    if len > RECORD_BYTES_MAX {
        return Err(format!("length {len} exceeds RECORD_BYTES_MAX ({RECORD_BYTES_MAX})"));
    }
    if u64::from(len) > bytes_after {
        return Err(format!(
            "length {len} runs past the end of the file ({bytes_after} bytes left)"
        ));
    }
    Ok((len, crc))
}

/// Checks a payload against its checksum and decodes it: an array is a
/// batch, an object one op (a version-1 record).
fn decode_payload(crc: u32, payload: &[u8]) -> std::result::Result<Vec<Persist>, Bad> {
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Err(Bad::Damaged(format!("checksum {actual:08x}, header says {crc:08x}")));
    }
    let decoded = if payload.first() == Some(&b'[') {
        serde_json::from_slice::<Vec<Persist>>(payload)
    } else {
        serde_json::from_slice::<Persist>(payload).map(|op| vec![op])
    };
    match decoded {
        Ok(ops) if !ops.is_empty() => Ok(ops),
        Ok(_) => Err(Bad::Undecodable("checksum matches but the batch is empty".to_string())),
        Err(e) => {
            Err(Bad::Undecodable(format!("checksum matches but payload is no batch of ops: {e}")))
        }
    }
}

/// Applies every record from just after the header until the end of the file
/// or the first record that cannot be read.
fn replay_records(file: &File, path: &Path, file_len: u64) -> Result<Replayed> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    reader.seek(SeekFrom::Start(HEADER_BYTES)).map_err(io_error(path, "seek"))?;
    let mut replayed =
        Replayed { durable: Durable::default(), records: 0, ops: 0, end: HEADER_BYTES, bad: None };
    while replayed.end < file_len {
        match read_record(&mut reader, path, file_len - replayed.end)? {
            Frame::Valid(ops, size) => {
                for op in &ops {
                    replayed.durable.apply(op);
                }
                replayed.records += 1;
                replayed.ops += ops.len() as u64;
                replayed.end += size;
            }
            Frame::Bad(bad) => {
                replayed.bad = Some(bad);
                break;
            }
        }
    }
    Ok(replayed)
}
/// Reads the record at the reader's position, `bytes_left` before the end.
fn read_record(reader: &mut impl Read, path: &Path, bytes_left: u64) -> Result<Frame> {
    if bytes_left < RECORD_HEADER_BYTES {
        let detail = format!("record header cut short ({bytes_left} of 8 bytes)");
        return Ok(Frame::Bad(Bad::Damaged(detail)));
    }
    let mut header = [0; RECORD_HEADER_BYTES as usize];
    reader.read_exact(&mut header).map_err(io_error(path, "read"))?;
    let (len, crc) = match check_record_header(&header, bytes_left - RECORD_HEADER_BYTES) {
        Ok(found) => found,
        Err(detail) => return Ok(Frame::Bad(Bad::Damaged(detail))),
    };
    // `len` is at most RECORD_BYTES_MAX and fits in the file: safe to allocate.
    let mut payload = vec![0; len as usize];
    reader.read_exact(&mut payload).map_err(io_error(path, "read"))?;
    Ok(match decode_payload(crc, &payload) {
        Ok(ops) => Frame::Valid(ops, RECORD_HEADER_BYTES + u64::from(len)),
        Err(bad) => Frame::Bad(bad),
    })
}

/// The first byte offset at or after `from` where a frame with a fitting
/// length and a matching checksum starts, if any. Reads `window_bytes`
/// candidate starts at a time, so memory stays bounded on a long log.
fn find_valid_frame(
    file: &File,
    path: &Path,
    from: u64,
    file_len: u64,
    window_bytes: usize,
) -> Result<Option<u64>> {
    assert!(window_bytes > 0, "an empty window would never advance");
    let header_bytes = RECORD_HEADER_BYTES as usize;
    let mut window = Vec::new();
    let mut payload = Vec::new();
    let mut base = from;
    while base + RECORD_HEADER_BYTES < file_len {
        let want = (file_len - base).min((window_bytes + header_bytes - 1) as u64);
        read_at(file, path, base, want as usize, &mut window)?;
        // Starts whose whole header lies in this window; the next window
        // begins right after the last of them.
        let starts = (window.len() + 1).saturating_sub(header_bytes).min(window_bytes);
        for i in 0..starts {
            let at = base + i as u64;
            let bytes_after = file_len - at - RECORD_HEADER_BYTES;
            let Ok((len, crc)) = check_record_header(&window[i..i + header_bytes], bytes_after)
            else {
                continue;
            };
            let payload_start = i + header_bytes;
            let payload_end = payload_start + len as usize;
            let bytes = if payload_end <= window.len() {
                &window[payload_start..payload_end]
            } else {
                read_at(file, path, at + RECORD_HEADER_BYTES, len as usize, &mut payload)?;
                &payload[..]
            };
            if crc32fast::hash(bytes) == crc {
                return Ok(Some(at));
            }
        }
        base += starts as u64;
    }
    Ok(None)
}

/// Reads exactly `len` bytes at `offset` into `buf`.
fn read_at(file: &File, path: &Path, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset)).map_err(io_error(path, "seek"))?;
    buf.resize(len, 0);
    reader.read_exact(buf).map_err(io_error(path, "read"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{
        Command, Entry, EntryId, Epoch, Formation, Incarnation, LogIndex, ReplicaId,
    };
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A directory under the system temp dir, unique per test, removed on drop.
    /// Not created: `DiskStorage::open` creates it.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let unique = format!("quorumkv-wal-{name}-{}-{n}", std::process::id());
            let path = std::env::temp_dir().join(unique);
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }

        fn wal(&self) -> PathBuf {
            wal_path(&self.0)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn inc(counter: u64, nonce: u64) -> Incarnation {
        Incarnation { counter, nonce }
    }

    fn entry(epoch: u64, index: u64, ballot: u64, command: Command) -> (LogIndex, Entry) {
        let id = EntryId { epoch: Epoch(epoch), index: LogIndex(index) };
        (LogIndex(index), Entry { id, ballot: Epoch(ballot), command })
    }

    fn put(key: &str, value: &[u8]) -> Command {
        Command::Put { key: key.to_string(), value: value.to_vec() }
    }

    /// Every `Persist` variant, with replays that must not be naive: a
    /// backwards incarnation, a lower commit, drops of present and absent
    /// slots, a slot refilled after its drop.
    fn every_op() -> Vec<Persist> {
        vec![
            Persist::Incarnation(inc(1, 0xabcd)),
            Persist::Formation(Formation::Pending(77)),
            Persist::Incarnations(BTreeMap::from([
                (ReplicaId(1), inc(1, 0xabcd)),
                (ReplicaId(2), inc(3, 2)),
            ])),
            Persist::Promise { epoch: Epoch(4), leader: Some(inc(3, 2)) },
            Persist::Accept(vec![
                entry(4, 1, 4, Command::Noop),
                entry(4, 2, 4, put("k", b"v\0\xff\n")),
                entry(4, 3, 4, Command::Del { key: "k".to_string() }),
                entry(4, 4, 4, Command::Cas { key: "c".into(), version: 2, value: b"x".to_vec() }),
            ]),
            Persist::Commit(LogIndex(2)),
            Persist::Formation(Formation::Complete(77)),
            Persist::Learner(true),
            Persist::Incarnations(BTreeMap::from([
                (ReplicaId(2), inc(2, 9)),
                (ReplicaId(3), inc(1, 5)),
            ])),
            Persist::Promise { epoch: Epoch(9), leader: None },
            Persist::Drop(vec![LogIndex(3), LogIndex(4), LogIndex(40)]),
            Persist::Accept(vec![entry(9, 3, 9, put("ключ \"q\"\u{1}", b""))]),
            Persist::Commit(LogIndex(1)),
            Persist::Learner(false),
        ]
    }

    /// Exhaustive on purpose: a new variant must be added to `every_op`.
    fn variant(op: &Persist) -> &'static str {
        match op {
            Persist::Incarnation(_) => "Incarnation",
            Persist::Promise { .. } => "Promise",
            Persist::Accept(_) => "Accept",
            Persist::Drop(_) => "Drop",
            Persist::Commit(_) => "Commit",
            Persist::Incarnations(_) => "Incarnations",
            Persist::Formation(_) => "Formation",
            Persist::Learner(_) => "Learner",
            Persist::Checkpoint(_) => "Checkpoint",
        }
    }

    fn apply_in_memory(ops: &[Persist]) -> Durable {
        let mut durable = Durable::default();
        for op in ops {
            durable.apply(op);
        }
        durable
    }

    /// `every_op` in sync batches of several ops each.
    fn batches() -> Vec<Vec<Persist>> {
        let ops = every_op();
        [0..4, 4..6, 6..10, 10..ops.len()].into_iter().map(|r| ops[r].to_vec()).collect()
    }

    /// Opens `dir`, persists each batch and syncs after it, and closes;
    /// returns what open recovered.
    fn append_batches(dir: &Path, fsync: FsyncPolicy, batches: &[Vec<Persist>]) -> Durable {
        let (mut storage, recovered) = DiskStorage::open(dir, fsync).unwrap();
        for batch in batches {
            for op in batch {
                storage.persist(op).unwrap();
            }
            storage.sync().unwrap();
        }
        recovered
    }

    /// Opens `dir`, appends `ops` as one batch, syncs, and closes; returns
    /// what open recovered.
    fn append(dir: &Path, fsync: FsyncPolicy, ops: &[Persist]) -> Durable {
        append_batches(dir, fsync, &[ops.to_vec()])
    }

    fn reopen(dir: &Path) -> Result<Durable> {
        DiskStorage::open(dir, FsyncPolicy::Never).map(|(_, durable)| durable)
    }

    /// The one record a sync of `ops` writes.
    fn record(ops: &[Persist]) -> Vec<u8> {
        let mut batch = Batch::default();
        for op in ops {
            batch.push(op, RECORD_BYTES_MAX as usize).unwrap();
        }
        batch.close();
        assert_eq!(batch.ends, [batch.bytes.len()], "one record");
        batch.bytes
    }

    /// A record framing `payload` as it stands.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        [&len.to_le_bytes()[..], &crc32fast::hash(payload).to_le_bytes(), payload].concat()
    }

    /// The byte offset of every record of `batches` in a log holding just them.
    fn record_offsets(batches: &[Vec<Persist>]) -> Vec<u64> {
        let mut offset = HEADER_BYTES;
        let mut offsets = Vec::new();
        for batch in batches {
            offsets.push(offset);
            offset += record(batch).len() as u64;
        }
        offsets
    }

    /// (offset, payload length) of every record in the log file `bytes`.
    fn records_in(bytes: &[u8]) -> Vec<(u64, u32)> {
        let mut at = HEADER_BYTES as usize;
        let mut records = Vec::new();
        while at < bytes.len() {
            let len = u32::from_le_bytes(le_u32(&bytes[at..at + 4]));
            records.push((at as u64, len));
            at += RECORD_HEADER_BYTES as usize + len as usize;
        }
        assert_eq!(at, bytes.len(), "records end at the end of the file");
        records
    }

    #[test]
    fn round_trip_of_every_op_equals_applying_them_in_memory() {
        let ops = every_op();
        let variants: BTreeSet<_> = ops.iter().map(variant).collect();
        assert_eq!(variants.len(), 8, "every_op misses a Persist variant");
        let each_alone: Vec<Vec<Persist>> = ops.iter().map(|op| vec![op.clone()]).collect();
        let all_at_once = vec![ops.clone()];
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            for batches in [&each_alone, &all_at_once] {
                let what = format!("{fsync:?}, {} syncs", batches.len());
                let dir = TempDir::new("round-trip");
                let (mut storage, recovered) = DiskStorage::open(&dir.0, fsync).unwrap();
                assert_eq!(recovered, Durable::default());
                for batch in batches {
                    for op in batch {
                        storage.persist(op).unwrap();
                    }
                    storage.sync().unwrap();
                }
                let bytes = fs::read(dir.wal()).unwrap();
                assert_eq!(records_in(&bytes).len(), batches.len(), "one record per sync: {what}");
                assert_eq!(storage.bytes_written(), bytes.len() as u64, "{what}");
                let fsyncs = if fsync == FsyncPolicy::Always { batches.len() as u64 } else { 0 };
                assert_eq!(storage.syncs(), fsyncs, "{what}");
                drop(storage);
                assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&ops), "{what}");
            }
        }
    }

    #[test]
    fn sync_with_nothing_persisted_does_no_io() {
        let dir = TempDir::new("empty-sync");
        append(&dir.0, FsyncPolicy::Always, &every_op());
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        storage.sync().unwrap();
        assert_eq!((storage.bytes_written(), storage.syncs()), (0, 0));
        storage.persist(&Persist::Learner(true)).unwrap();
        storage.sync().unwrap();
        storage.sync().unwrap();
        let written = record(&[Persist::Learner(true)]).len() as u64;
        assert_eq!((storage.bytes_written(), storage.syncs()), (written, 1));
    }

    #[test]
    fn torn_tail_at_every_byte_of_the_last_record_recovers_the_earlier_batches() {
        let dir = TempDir::new("torn-every-byte");
        let mut batches = batches();
        let last = batches.last_mut().unwrap();
        last.push(Persist::Accept(vec![entry(9, 5, 9, put("last", &[7; 40]))]));
        assert!(last.len() > 1, "the torn record holds a batch of several ops");
        append_batches(&dir.0, FsyncPolicy::Always, &batches);
        let full = fs::read(dir.wal()).unwrap();
        let last_start = *record_offsets(&batches).last().unwrap();
        let kept = batches[..batches.len() - 1].concat();
        let next = Persist::Commit(LogIndex(5));
        let after_next = apply_in_memory(&[&kept[..], std::slice::from_ref(&next)].concat());
        for cut in last_start..full.len() as u64 {
            fs::write(dir.wal(), &full[..cut as usize]).unwrap();
            assert_eq!(
                append(&dir.0, FsyncPolicy::Never, &[]),
                apply_in_memory(&kept),
                "cut {cut}"
            );
            assert_eq!(fs::metadata(dir.wal()).unwrap().len(), last_start, "cut {cut}");
            append(&dir.0, FsyncPolicy::Never, std::slice::from_ref(&next));
            assert_eq!(reopen(&dir.0).unwrap(), after_next, "cut {cut}");
        }
    }

    #[test]
    fn last_record_with_bad_checksum_or_zeros_after_it_is_a_torn_tail() {
        let dir = TempDir::new("torn-garbage");
        let batches = batches();
        append_batches(&dir.0, FsyncPolicy::Always, &batches);
        let full = fs::read(dir.wal()).unwrap();
        let last_start = *record_offsets(&batches).last().unwrap();
        let kept = apply_in_memory(&batches[..batches.len() - 1].concat());

        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 0x04;
        fs::write(dir.wal(), &flipped).unwrap();
        assert_eq!(reopen(&dir.0).unwrap(), kept);
        assert_eq!(fs::metadata(dir.wal()).unwrap().len(), last_start);

        // A file extended with zeros, as some file systems leave it after a crash.
        let zeros = [full.clone(), vec![0; 4096]].concat();
        fs::write(dir.wal(), &zeros).unwrap();
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&every_op()));
        assert_eq!(fs::metadata(dir.wal()).unwrap().len(), full.len() as u64);
    }

    #[test]
    fn power_cut_mid_batch_loses_only_the_unsynced_batch() {
        let dir = TempDir::new("power-cut");
        let a = every_op();
        // B spans several pages, so the kernel may write back its end first.
        let b: Vec<Persist> = (0..12)
            .map(|i| Persist::Accept(vec![entry(9, 10 + i, 9, put("big", &[b'x'; 1000]))]))
            .collect();
        append_batches(&dir.0, FsyncPolicy::Always, &[a.clone(), b.clone()]);
        let full = fs::read(dir.wal()).unwrap();
        let b_start = record_offsets(&[a.clone(), b.clone()])[1] as usize;
        let page = 4096;
        let b_first_page_end = (b_start / page + 1) * page;
        assert!(full.len() > b_first_page_end + page, "B's end lies on later pages");
        // The power cut came while B was being written back: its later pages
        // reached the disk, its first page (from B's start on) did not.
        for lost in [0x00, 0xff] {
            let mut bytes = full.clone();
            bytes[b_start..b_first_page_end].fill(lost);
            fs::write(dir.wal(), &bytes).unwrap();
            assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&a), "lost bytes {lost:#x}");
            assert_eq!(fs::metadata(dir.wal()).unwrap().len(), b_start as u64, "B was cut");
        }
        // A power cut that kept B's start but not its end loses B the same way.
        fs::write(dir.wal(), &full[..full.len() - page]).unwrap();
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&a));
        assert_eq!(fs::metadata(dir.wal()).unwrap().len(), b_start as u64);
    }

    /// Writes `bytes` as the log and expects `Corrupt` at `offset`, with a
    /// message naming the file and the offset.
    fn assert_corrupt_at(dir: &TempDir, bytes: &[u8], offset: u64, what: &str) {
        fs::write(dir.wal(), bytes).unwrap();
        let err = reopen(&dir.0).expect_err(what);
        let message = err.to_string();
        match err {
            Error::Corrupt { path, offset: found, .. } => {
                assert_eq!((path, found), (dir.wal(), offset), "{what}: {message}");
            }
            other => panic!("{what}: expected Corrupt, got {other}"),
        }
        assert!(message.contains(&dir.wal().display().to_string()), "{what}: {message}");
        assert!(message.contains(&format!("offset {offset}")), "{what}: {message}");
    }

    #[test]
    fn flipped_bit_in_a_middle_record_is_corrupt_naming_file_and_offset() {
        let dir = TempDir::new("corrupt-middle");
        let batches = batches();
        append_batches(&dir.0, FsyncPolicy::Always, &batches);
        let full = fs::read(dir.wal()).unwrap();
        for middle in 0..batches.len() - 1 {
            let offset = record_offsets(&batches)[middle];
            let len = record(&batches[middle]).len() as u64;
            // Every bit of the length and checksum fields (the high bits of
            // the length make the record seem to run past the end of the
            // file, as a torn one would), and one bit of every payload byte.
            let header_bits = (0..64).map(|bit| (offset + bit / 8, 1 << (bit % 8)));
            let payload_bits = (offset + 8..offset + len).map(|at| (at, 1 << (at % 8)));
            for (at, mask) in header_bits.chain(payload_bits) {
                let mut bytes = full.clone();
                bytes[at as usize] ^= mask;
                assert_corrupt_at(&dir, &bytes, offset, &format!("byte {at} ^ {mask:#x}"));
            }
        }
        fs::write(dir.wal(), &full).unwrap();
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&every_op()), "the log is intact");
    }

    #[test]
    fn corruption_scan_finds_the_next_record_across_window_edges() {
        let dir = TempDir::new("scan-windows");
        let batches = batches();
        append_batches(&dir.0, FsyncPolicy::Never, &batches);
        let offsets = record_offsets(&batches);
        let file = File::open(dir.wal()).unwrap();
        let file_len = file.metadata().unwrap().len();
        for window_bytes in 1..64 {
            let found = |from| find_valid_frame(&file, &dir.wal(), from, file_len, window_bytes);
            for pair in offsets.windows(2) {
                let next = found(pair[0] + 1).unwrap();
                assert_eq!(next, Some(pair[1]), "window {window_bytes}, from {}", pair[0] + 1);
            }
            let last = *offsets.last().unwrap();
            assert_eq!(found(last + 1).unwrap(), None, "window {window_bytes}: nothing after last");
        }
    }

    #[test]
    fn last_record_with_good_checksum_but_no_batch_is_corrupt_not_torn() {
        let dir = TempDir::new("undecodable");
        append(&dir.0, FsyncPolicy::Never, &every_op());
        let good = fs::read(dir.wal()).unwrap();
        let offset = good.len() as u64;
        for payload in
            [&b"{\"NoSuchOp\":1}"[..], b"[{\"NoSuchOp\":1}]", b"[]", b"[{\"Learner\":true}"]
        {
            let bytes = [&good[..], &frame(payload)].concat();
            let what = String::from_utf8_lossy(payload);
            assert_corrupt_at(&dir, &bytes, offset, &format!("undecodable last record {what}"));
        }
    }

    #[test]
    fn version_1_log_is_read_then_upgraded_in_place() {
        let dir = TempDir::new("version-1");
        fs::create_dir_all(&dir.0).unwrap();
        let ops = every_op();
        let (old, new) = ops.split_at(6);
        // Version 1: one record per op, its payload the op's JSON object.
        let v1_records: Vec<u8> =
            old.iter().flat_map(|op| frame(&serde_json::to_vec(op).unwrap())).collect();
        let v1 = [&MAGIC[..], &1u32.to_le_bytes(), &v1_records].concat();
        fs::write(dir.wal(), &v1).unwrap();
        assert_eq!(append(&dir.0, FsyncPolicy::Always, new), apply_in_memory(old));
        let expected = [&header_bytes()[..], &v1_records, &record(new)].concat();
        assert_eq!(fs::read(dir.wal()).unwrap(), expected, "version 2 header, old records kept");
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&ops));
    }

    #[test]
    fn newer_format_version_is_refused_naming_the_file() {
        let dir = TempDir::new("newer-format");
        fs::create_dir_all(&dir.0).unwrap();
        let newer = [&MAGIC[..], &(FORMAT_VERSION + 1).to_le_bytes()].concat();
        fs::write(dir.wal(), &newer).unwrap();
        let err = reopen(&dir.0).unwrap_err();
        assert!(err.to_string().contains(&dir.wal().display().to_string()), "{err}");
        match err {
            Error::NewerFormat { path, found, supported } => {
                assert_eq!((path, found, supported), (dir.wal(), 3, 2));
            }
            other => panic!("expected NewerFormat, got {other}"),
        }
    }

    #[test]
    fn bad_magic_is_corrupt_at_offset_zero() {
        let dir = TempDir::new("bad-magic");
        fs::create_dir_all(&dir.0).unwrap();
        assert_corrupt_at(&dir, b"NOTAWAL\0\x02\0\0\0", 0, "bad magic");
        assert_corrupt_at(&dir, b"QKV-", 0, "short file that is no header prefix");
        assert_corrupt_at(&dir, b"QKVWAL\0\0\0\0\0\0", 8, "version 0");
    }

    #[test]
    fn empty_missing_and_torn_header_dirs_open_as_blank() {
        let missing = TempDir::new("missing");
        let nested = missing.0.join("a").join("b");
        let empty = TempDir::new("empty");
        fs::create_dir_all(&empty.0).unwrap();
        let torn = TempDir::new("torn-header");
        fs::create_dir_all(&torn.0).unwrap();
        fs::write(torn.wal(), &header_bytes()[..5]).unwrap();
        let ops = [Persist::Learner(true)];
        for dir in [&nested, &missing.0, &empty.0, &torn.0] {
            assert_eq!(append(dir, FsyncPolicy::Always, &ops), Durable::default());
            assert_eq!(reopen(dir).unwrap(), apply_in_memory(&ops), "{dir:?}");
        }
    }

    #[test]
    fn appends_after_reopen_continue_after_the_recovered_records() {
        let dir = TempDir::new("append-after-reopen");
        let batches = batches();
        let (first, second) = batches.split_at(2);
        append_batches(&dir.0, FsyncPolicy::Always, first);
        assert_eq!(
            append_batches(&dir.0, FsyncPolicy::Always, second),
            apply_in_memory(&first.concat())
        );
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&every_op()));
        let expected: Vec<u8> =
            header_bytes().into_iter().chain(batches.iter().flat_map(|b| record(b))).collect();
        assert_eq!(fs::read(dir.wal()).unwrap(), expected, "one header, records in order");
    }

    #[test]
    fn only_a_batch_above_the_record_limit_is_split_each_record_fsynced() {
        let dir = TempDir::new("split");
        let ops = every_op();
        // Just room for the largest op alone.
        let limit = ops.iter().map(|op| serde_json::to_vec(op).unwrap().len() + 2).max().unwrap();
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        storage.record_bytes_max = limit;
        let huge = Persist::Accept(vec![entry(9, 9, 9, put("huge", &vec![b'h'; limit]))]);
        storage.persist(&ops[0]).unwrap();
        let err = storage.persist(&huge).unwrap_err();
        assert!(matches!(err, Error::Io { op: "encode", .. }), "{err}");
        for op in &ops[1..] {
            storage.persist(op).unwrap();
        }
        storage.sync().unwrap();
        let bytes = fs::read(dir.wal()).unwrap();
        let records = records_in(&bytes);
        assert!(records.len() > 1, "split into {} records", records.len());
        assert!(records.iter().all(|&(_, len)| len as usize <= limit), "{records:?}");
        // A record is closed only when the next op would not fit in it.
        for pair in records.windows(2) {
            let ((_, len), (next_at, next_len)) = (pair[0], pair[1]);
            let payload_at = (next_at + RECORD_HEADER_BYTES) as usize;
            let payload = &bytes[payload_at..payload_at + next_len as usize];
            let next_ops: Vec<Persist> = serde_json::from_slice(payload).unwrap();
            let first_len = serde_json::to_vec(&next_ops[0]).unwrap().len();
            assert!(len as usize + 1 + first_len > limit, "record of {len} bytes closed early");
        }
        assert_eq!(storage.syncs(), records.len() as u64, "one fsync per record");
        drop(storage);
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&ops));
    }

    #[test]
    fn failed_write_poisons_the_storage() {
        let dir = TempDir::new("poison");
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        // A read-only handle makes the next write fail, as a full disk would.
        storage.file = File::open(dir.wal()).unwrap();
        storage.persist(&Persist::Learner(true)).unwrap();
        let err = storage.sync().unwrap_err();
        assert!(matches!(err, Error::Io { op: "write", .. }), "{err}");
        assert!(storage.sync().is_err(), "a failed write is never retried");
        assert!(storage.persist(&Persist::Learner(false)).is_err());
    }

    #[test]
    fn second_open_of_a_directory_in_use_is_refused() {
        let dir = TempDir::new("lock");
        let (_storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Never).unwrap();
        let err = reopen(&dir.0).unwrap_err();
        assert!(matches!(err, Error::Io { op: "lock", .. }), "{err}");
    }
}
