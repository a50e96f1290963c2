//! The write-ahead log: every [`Persist`] op a replica emits, appended to log
//! segments and replayed on start-up (DESIGN §3.1, §6).
//!
//! # The data directory
//! - `wal-<seq:020>.log`: log segments (see [`segment_path`]). Only the
//!   newest is in use; a directory from before segments holds `wal.log`,
//!   which counts as segment 0 and is appended to until the first checkpoint.
//! - `snapshot-<index:020>.snap`: snapshots of the applied store, written in
//!   the background (see [`super::snapshot`]); `.tmp` while being written.
//! - `LOCK`: [`DiskStorage::open`] creates the directory when it is missing
//!   and holds an exclusive lock on this file, so a second process can never
//!   append to the same log.
//!
//! # Checkpoints and segments
//! Once a snapshot at index s is durable, the protocol emits
//! [`Persist::Checkpoint`]: the whole durable state above s. `persist` then
//! writes and syncs the batch buffered so far into the current segment,
//! creates segment seq+1 holding the file header and ONE record (the
//! checkpoint), fsyncs it and the directory, and only then deletes the older
//! segments and every snapshot (and `.tmp`) below s. Later ops append to the
//! new segment. So a crash at any point leaves either the old segment (with
//! its own snapshot, not yet deleted) or the new one complete.
//!
//! On open, `*.tmp` files are deleted and the newest segment whose first
//! record is valid is replayed: a newest segment with a torn or missing
//! header or first record was being created when the process stopped, so it
//! is deleted and the previous one is used (segment 0, the first boot's,
//! keeps the rules below). Older segments are then deleted. When the replayed
//! state names a snapshot (`Durable::snapshot_index` > 0), that file is
//! loaded into `Durable::snapshot`; a missing or damaged one is a hard error.
//! Every other snapshot file is deleted (a save that finished after the last
//! checkpoint, or one left behind).
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
//! [`Storage::persist`] only encodes the op into memory (a checkpoint is the
//! one exception: see above). [`Storage::sync`]
//! writes every op buffered since the previous sync as one record, with one
//! positional write at the end of the records, then under
//! [`FsyncPolicy::Always`] calls `fdatasync` (see Preallocation). The
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
//! - If every byte from X to the end of the file is zero, X is the clean end
//!   of the log: the rest is the segment's preallocated zeros (see
//!   Preallocation). Nothing is cut and nothing is logged; appends go to X.
//! - If the checksum matches but the payload is no batch of ops, the bytes are
//!   exactly what some writer wrote: that is never a torn write, so it is
//!   `Corrupt` at X.
//! - Otherwise (header cut short, length 0, above `RECORD_BYTES_MAX` or past
//!   the end of the file, or a checksum mismatch), replay looks at every byte
//!   offset after X for a frame whose length fits and whose checksum matches.
//!   If there is one, X is not the last record, and only the last record can
//!   be torn: `Corrupt` at X, naming the offset of the valid frame. If there
//!   is none, X starts a torn tail: the file is cut at X with a warning naming
//!   the file and offset, and the replica carries on. The cut also drops any
//!   preallocated zeros after X; the next sync that needs room writes new ones.
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
//! # Preallocation
//! On ext4, appending to a file and calling `fdatasync` costs a journal
//! commit on top of the data write, because the file's size changed; an
//! overwrite inside blocks that are already allocated, written and durable
//! changes no metadata `fdatasync` must flush, so it writes the data pages
//! only (measured on ext4: 2 KiB + `fdatasync` takes about 134-164 µs as an
//! append, 101-114 µs as such an overwrite). So under [`FsyncPolicy::Always`],
//! when a record would pass the end of what the segment file holds, `sync`
//! writes the record at the end of the records and then zero bytes up to
//! [`WAL_PREALLOC_BYTES`] past the record's end, and fsyncs once: the size
//! change and the zeros become durable with the record, and the records of
//! the following syncs overwrite zeros in place. A new checkpoint segment is
//! preallocated the same way. Under [`FsyncPolicy::Never`] nothing is
//! preallocated (records still go to the end of the records, over any zeros
//! an earlier run left). [`DiskStorage::segment_bytes`] is the length of the
//! records, never of the zeros.
//!
//! Why this is safe across a power cut, and why it is done this way:
//! - The zeros must be real writes. `set_len` would leave a sparse hole and
//!   `fallocate` unwritten extents: either reads as zeros, but the first write
//!   into it allocates a block or converts the extent, a metadata change that
//!   costs the journal commit all over again. Written zeros leave nothing for
//!   a later overwrite to change but the data.
//! - The record is written before the zeros behind it. Both reach the disk
//!   in the same fsync, but the kernel may write pages back earlier, between
//!   the two writes; with the record first that can only make the record
//!   durable without the zeros. With the zeros first it could make a new
//!   file's zeros durable ahead of a hole where its header goes, and a power
//!   cut would leave segment 0 with no header: bad magic, `Corrupt`.
//! - A torn last record inside the preallocated region is still caught: its
//!   checksum no longer matches (or its length reads 0, or past the end), and
//!   the bytes after it are not all zero (some of the record reached the
//!   disk), so the usual rules run. Zeros never form a frame (length 0), and
//!   a frame read across record bytes and zeros needs its CRC-32 to match by
//!   chance; no valid frame follows, so it is a torn tail and is cut.
//! - A last record lost whole still reads as zeros up to the end, so replay
//!   ends cleanly just before it. That record was never acknowledged: under
//!   `Always` the next record is written only after the previous fsync has
//!   returned, so every record but the last was durable before the last was
//!   written, and the last one's sync had not returned.
//! - A newest segment being created (see Checkpoints and segments) whose
//!   header is cut short, or whose first record is missing, with zeros after
//!   it is torn while being created, as before: it is deleted and the
//!   previous segment used. A clean end needs at least one record there.
//! - Under `Never`, a power cut may lose any dirty page. A lost page in the
//!   middle reads as zeros, but valid records follow it, so the bytes after
//!   the damaged record are not all zero and the scan finds the next valid
//!   frame: `Corrupt`, never a clean end. (Losing every page from some record
//!   on is losing a tail, which `Never` already accepts.)
//!
//! Preallocation costs at most [`WAL_PREALLOC_BYTES`] of disk per segment
//! file (two of them live for a moment during a checkpoint), one larger
//! fsync every `WAL_PREALLOC_BYTES` of records, and at start-up a read of the
//! zeros after the last record. A failed preallocation (a full disk) poisons
//! the storage like a failed write.
//!
//! # Writes and fsync
//! The first sync after the file (or the directory) was created also fsyncs
//! the directory (and its parent), so the file's name survives a power cut as
//! well as its bytes. Memory holds the current batch only (its buffers keep
//! at most 1 MiB of room between syncs). Snapshots are written by their own
//! thread and never hold up a sync.
//!
//! A failed write or fsync poisons the storage: every later call returns an
//! error and the replica stops. A failed fsync is never retried, because the
//! kernel may already have dropped the dirty pages and marked them clean, so a
//! second fsync could "succeed" over lost data. Dropping a `DiskStorage` does
//! not write its batch: ops that were never synced are lost, as in a crash.

use super::snapshot::{load_snapshot, parse_seq, parse_snapshot_name, snapshot_path, Saver};
use super::{Error, FsyncPolicy, Result, Storage};
use crate::protocol::durable::{Durable, Persist, Snapshot};
use crate::protocol::types::LogIndex;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Name of the one log file of a directory from before segments (segment 0).
pub const LEGACY_WAL_FILE_NAME: &str = "wal.log";

/// Name of the file whose lock marks the data directory as in use.
pub const LOCK_FILE_NAME: &str = "LOCK";

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

/// Under [`FsyncPolicy::Always`], how far past the end of the records being
/// written a sync that needs room extends the segment with zero bytes.
pub const WAL_PREALLOC_BYTES: u64 = 1024 * 1024;

/// How many zero bytes one write of a preallocation carries.
const ZERO_WRITE_BYTES: usize = 64 * 1024;

/// How much of the file the corruption scan and the zero check read at a time.
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;

/// Read buffer for replay.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The encoding buffers of a sync batch keep at most this much room between
/// syncs; a larger batch allocates what it needs and gives it back after.
const BATCH_KEEP_BYTES: usize = 1024 * 1024;

/// Where log segment `seq` lives inside a data directory.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

/// The sequence number in a `wal-<seq:020>.log` name (0 for `wal.log`).
fn parse_segment_name(name: &str) -> Option<u64> {
    if name == LEGACY_WAL_FILE_NAME {
        return Some(0);
    }
    parse_seq(name.strip_prefix("wal-")?.strip_suffix(".log")?)
}

/// The write-ahead log of one data directory. Implements [`Storage`].
#[derive(Debug)]
pub struct DiskStorage {
    /// The data directory.
    dir: PathBuf,
    /// The current segment's path, named in every error.
    path: PathBuf,
    /// The current segment's sequence number.
    seq: u64,
    /// The current segment, open for reading and positional writes.
    file: File,
    /// The locked `LOCK` file: held while this storage lives.
    _lock: File,
    /// Length of the current segment's records: what replay kept plus what
    /// was written. The next record is written at this offset.
    segment_len: u64,
    /// Length of the current segment's file: `segment_len` plus the zeros
    /// preallocated after the records.
    allocated: u64,
    /// Writes snapshot files in the background.
    saver: Saver,
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
    /// fdatasyncs of log segments issued since open.
    syncs: u64,
    /// Size of the file of the snapshot the log builds on (0 without one).
    snapshot_bytes: u64,
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
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `op` to the open record, first closing it (and so starting a
    /// new record) when the payload would pass `max_payload` bytes. On error
    /// nothing changes. The op's JSON is written straight into the batch, so
    /// a large op (a checkpoint carries the whole log above its snapshot) is
    /// never held twice.
    fn push(&mut self, op: &Persist, max_payload: usize) -> std::result::Result<(), String> {
        let before = self.bytes.len();
        if self.open.is_none() {
            self.start_record();
        } else {
            self.bytes.push(b',');
        }
        let op_start = self.bytes.len();
        if let Err(e) = serde_json::to_writer(&mut self.bytes, op) {
            self.bytes.truncate(before);
            return Err(format!("cannot encode op: {e}"));
        }
        let op_len = self.bytes.len() - op_start;
        // A lone op still needs its `[` and `]`.
        if op_len + 2 > max_payload {
            self.bytes.truncate(before);
            return Err(format!(
                "op of {op_len} bytes does not fit in a record of at most {max_payload} bytes"
            ));
        }
        match self.open {
            None => self.open = Some(before),
            Some(start) => {
                // The payload before the comma (with its `[`), the comma,
                // the op and the `]`.
                let payload = before - start - RECORD_HEADER_BYTES as usize;
                if payload + op_len + 2 > max_payload {
                    // The op starts a record of its own (rare: a batch near
                    // the record bound).
                    let op_bytes = self.bytes.split_off(op_start);
                    self.bytes.truncate(before);
                    self.close();
                    self.open = Some(self.bytes.len());
                    self.start_record();
                    self.bytes.extend_from_slice(&op_bytes);
                }
            }
        }
        Ok(())
    }

    /// Appends a record's start: its header, filled in by `close`, and `[`.
    fn start_record(&mut self) {
        self.bytes.extend_from_slice(&[0; RECORD_HEADER_BYTES as usize]);
        self.bytes.push(b'[');
    }

    /// Closes the open record, if any: the `]`, then its length and checksum.
    fn close(&mut self) {
        let Some(start) = self.open.take() else {
            return;
        };
        if self.bytes.len() == self.bytes.capacity() {
            // Not a doubling for one byte of a large record.
            self.bytes.reserve_exact(1);
        }
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

    /// Empties the batch, keeping its allocations up to `BATCH_KEEP_BYTES`:
    /// a burst (a slow fsync under load, a large checkpoint) must not hold
    /// its buffers for the life of the process.
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.open = None;
        self.bytes.shrink_to(BATCH_KEEP_BYTES);
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

/// What `DiskStorage::probe` found in a segment that must open with a checkpoint.
enum Probe {
    /// Torn while being created: the offset and what is wrong there.
    Torn(u64, String),
    /// The header's format version and what replay found.
    Ready(u32, Box<Replayed>),
}

/// The files of a data directory that storage knows, by kind.
#[derive(Debug, Default)]
struct Listing {
    /// Log segments, by ascending sequence number.
    segments: Vec<(u64, PathBuf)>,
    /// `.snap` files, by ascending index.
    snapshots: Vec<(LogIndex, PathBuf)>,
    /// `.tmp` files, with the snapshot index their name carries, if any.
    tmps: Vec<(Option<LogIndex>, PathBuf)>,
}

/// One step of replay.
enum Frame {
    /// The ops of a good record and the record's size in bytes.
    Valid(Vec<Persist>, u64),
    /// A record that could not be read.
    Bad(Bad),
}

impl DiskStorage {
    /// Opens (creating if missing) the data directory, replays the newest
    /// segment and loads the snapshot its state names; returns the storage
    /// plus the recovered state. Cuts a torn tail with a warning; a damaged
    /// record in the middle is [`Error::Corrupt`]. A segment torn while it was
    /// being created is deleted and the one before it used. Deletes older
    /// segments and every unused snapshot and `.tmp` file, but only once the
    /// state was recovered. Logs the records, ops and bytes replayed, the
    /// snapshot's keys, and the time taken.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<(DiskStorage, Durable)> {
        let started = Instant::now();
        let dir_created = create_dir(dir)?;
        let lock = lock_dir(dir)?;
        let listing = list_dir(dir)?;
        // No save is in flight while we hold the lock: every .tmp is left over.
        for (_, tmp) in &listing.tmps {
            remove_stale(tmp);
        }
        let mut candidates = listing.segments;
        let (seq, path) = candidates.pop().unwrap_or_else(|| (0, segment_path(dir, 0)));
        let file = open_segment(&path)?;
        let mut storage = DiskStorage {
            dir: dir.to_path_buf(),
            path,
            seq,
            file,
            _lock: lock,
            segment_len: 0,
            allocated: 0,
            saver: Saver::new(dir, fsync),
            batch: Batch::default(),
            record_bytes_max: RECORD_BYTES_MAX as usize,
            fsync,
            dirs_to_sync: Vec::new(),
            poisoned: None,
            bytes_written: 0,
            syncs: 0,
            snapshot_bytes: 0,
        };
        if dir_created {
            storage.dirs_to_sync.push(parent_dir(dir));
        }
        let mut torn = Vec::new();
        let replayed = loop {
            let file_len = storage.file.metadata().map_err(io_error(&storage.path, "stat"))?.len();
            if storage.seq == 0 {
                // The first boot's segment (nothing older exists): a torn
                // header starts afresh and a torn first record is a torn tail.
                if file_len < HEADER_BYTES {
                    storage.start_fresh(dir, file_len)?;
                    break None;
                }
                break Some(storage.recover(file_len)?);
            }
            match storage.probe(file_len)? {
                Probe::Ready(version, replayed) => {
                    break Some(storage.finish_recovery(version, *replayed, file_len)?);
                }
                Probe::Torn(offset, detail) => {
                    let Some((seq, path)) = candidates.pop() else {
                        let detail = format!(
                            "{detail}: segment {} must open with a checkpoint, and no older segment is left",
                            storage.seq
                        );
                        return Err(storage.corrupt(offset, detail));
                    };
                    crate::qlog!(
                        "WARNING wal {}: torn while being created ({detail} at byte offset {offset}); using {}",
                        storage.path.display(),
                        path.display()
                    );
                    storage.file = open_segment(&path)?;
                    torn.push(std::mem::replace(&mut storage.path, path));
                    storage.seq = seq;
                }
            }
        };
        let (mut durable, records, ops, bytes) = match replayed {
            Some(r) => (r.durable, r.records, r.ops, r.end),
            None => (Durable::default(), 0, 0, 0),
        };
        storage.segment_len = bytes;
        crate::qlog!(
            "wal {}: replayed {records} records ({ops} ops, {bytes} bytes) in {} ms",
            storage.path.display(),
            started.elapsed().as_millis()
        );
        if durable.snapshot_index > LogIndex(0) {
            let loading = Instant::now();
            let path = snapshot_path(dir, durable.snapshot_index);
            let snapshot = load_snapshot(&path, durable.snapshot_index)?;
            storage.snapshot_bytes = fs::metadata(&path).map_or(0, |m| m.len());
            crate::qlog!(
                "snapshot {}: loaded {} keys in {} ms",
                path.display(),
                snapshot.store.len(),
                loading.elapsed().as_millis()
            );
            durable.snapshot = Some(snapshot);
        }
        // The state is recovered: what it does not use can go.
        let old_segments = candidates.into_iter().map(|(_, path)| path);
        let unused_snapshots = listing
            .snapshots
            .into_iter()
            .filter(|(index, _)| *index != durable.snapshot_index)
            .map(|(_, path)| path);
        for path in torn.into_iter().chain(old_segments).chain(unused_snapshots) {
            crate::qlog!("wal: removing unused {}", path.display());
            remove_stale(&path);
        }
        crate::qlog!("storage {}: opened in {} ms", dir.display(), started.elapsed().as_millis());
        Ok((storage, durable))
    }

    /// Size of the records of the log segment being appended to: what replay
    /// kept, plus every byte written since (a checkpoint starts a new
    /// segment). Preallocated zeros after the records do not count.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_len
    }

    /// Size of the newest snapshot file saved (or loaded at open); 0 before
    /// the first. The server sizes the log it lets grow before the next
    /// snapshot by it.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
    }

    /// Bytes of log handed to the OS since open: the header of a new log and
    /// every record written (preallocated zeros not included). For metrics.
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
        self.allocated = 0;
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
        self.finish_recovery(version, replayed, file_len)
    }

    /// Looks at a segment that must open with a checkpoint: `Torn` when its
    /// header or first record was never completely written (it was being
    /// created when the process stopped), else the header's version and what
    /// replay found (still to be checked by `finish_recovery`).
    fn probe(&mut self, file_len: u64) -> Result<Probe> {
        let header = header_bytes();
        let mut found = Vec::new();
        read_at(&self.file, &self.path, 0, file_len.min(HEADER_BYTES) as usize, &mut found)?;
        // A power cut may leave the new file's blocks as zeros.
        let unwritten = found.iter().all(|&b| b == 0);
        if file_len < HEADER_BYTES {
            if unwritten || header.starts_with(&found) {
                let detail = format!("{file_len} bytes, shorter than the header");
                return Ok(Probe::Torn(0, detail));
            }
            return Err(self.corrupt(
                0,
                format!("file is {file_len} bytes: shorter than the header, not a prefix of it"),
            ));
        }
        if unwritten {
            return Ok(Probe::Torn(0, "header is all zeros".to_string()));
        }
        // A header cut short inside the preallocated zeros.
        let written = found.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
        if found[..] != header[..] && header.starts_with(&found[..written]) {
            let detail = format!("header torn after {written} bytes, zeros after it");
            return Ok(Probe::Torn(0, detail));
        }
        let version = check_header(&self.path, &found)?;
        let replayed = replay_records(&self.file, &self.path, file_len)?;
        if replayed.records == 0 {
            match &replayed.bad {
                None => return Ok(Probe::Torn(HEADER_BYTES, "no record after the header".into())),
                Some(Bad::Damaged(detail)) => {
                    let from = HEADER_BYTES + 1;
                    let next = find_valid_frame(
                        &self.file,
                        &self.path,
                        from,
                        file_len,
                        SCAN_WINDOW_BYTES,
                    )?;
                    if next.is_none() {
                        return Ok(Probe::Torn(HEADER_BYTES, format!("first record: {detail}")));
                    }
                    // A valid record after a damaged first one: corrupt, not
                    // torn (`finish_recovery` says so).
                }
                Some(Bad::Undecodable(_)) => {}
            }
        }
        Ok(Probe::Ready(version, Box::new(replayed)))
    }

    /// Refuses a damaged middle record, cuts a torn tail, keeps preallocated
    /// zeros after the last record, and upgrades an older format version.
    fn finish_recovery(
        &mut self,
        version: u32,
        replayed: Replayed,
        file_len: u64,
    ) -> Result<Replayed> {
        // Replay stopped at the end of the file unless `bad` says otherwise.
        self.allocated = file_len;
        match &replayed.bad {
            None => {}
            Some(Bad::Undecodable(detail)) => {
                return Err(self.corrupt(replayed.end, detail.clone()));
            }
            Some(Bad::Damaged(_))
                if zeros_to_end(&self.file, &self.path, replayed.end, file_len)? =>
            {
                // The preallocated rest of the segment: the clean end.
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
                self.allocated = replayed.end;
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
        let version = FORMAT_VERSION.to_le_bytes();
        self.file
            .write_all_at(&version, MAGIC.len() as u64)
            .map_err(io_error(&self.path, "write"))?;
        if self.fsync == FsyncPolicy::Always {
            self.file.sync_data().map_err(io_error(&self.path, "fsync"))?;
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

    /// Writes the batch's records in order, each with one positional write
    /// at the end of the records; under `FsyncPolicy::Always` preallocates
    /// zeros after a record that passes the end of the file, and fsyncs after
    /// each record, before the next is written.
    fn write_batch(&mut self, batch: &Batch) -> Result<()> {
        let pieces = batch.pieces();
        for piece in &pieces {
            let end = self.segment_len + piece.len() as u64;
            if let Err(e) = self.file.write_all_at(piece, self.segment_len) {
                return Err(self.poison(self.path.clone(), "write", e));
            }
            self.bytes_written += piece.len() as u64;
            self.segment_len = end;
            if self.fsync == FsyncPolicy::Always && end > self.allocated {
                // The record first, then the zeros behind it (see Preallocation).
                if let Err(e) = write_zeros(&self.file, end, end + WAL_PREALLOC_BYTES) {
                    return Err(self.poison(self.path.clone(), "preallocate", e));
                }
                self.allocated = end + WAL_PREALLOC_BYTES;
            }
            self.allocated = self.allocated.max(end);
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

    /// Starts segment seq+1 with `op`, a checkpoint building on the snapshot
    /// at `snapshot_index`: writes and syncs the batch so far into the
    /// current segment, writes the new segment's header and one record
    /// holding `op`, fsyncs it and the directory, and only then deletes the
    /// older segments and the snapshot and `.tmp` files below
    /// `snapshot_index` (newer ones may be a save still in progress).
    fn checkpoint(&mut self, op: &Persist, snapshot_index: LogIndex) -> Result<()> {
        // Encoded first: a checkpoint too big for one record changes nothing.
        let mut segment = Batch::default();
        segment.bytes.extend_from_slice(&header_bytes());
        if let Err(detail) = segment.push(op, self.record_bytes_max) {
            return Err(Error::Io {
                path: self.path.clone(),
                op: "encode",
                source: io::Error::new(io::ErrorKind::InvalidInput, detail),
            });
        }
        segment.close();
        if snapshot_index > LogIndex(0) {
            // Never write a log that cannot be opened.
            let snapshot = snapshot_path(&self.dir, snapshot_index);
            if let Err(e) = fs::metadata(&snapshot) {
                let detail = format!("checkpoint names a snapshot that is not saved: {e}");
                return Err(Error::Io {
                    path: snapshot,
                    op: "checkpoint",
                    source: io::Error::new(e.kind(), detail),
                });
            }
        }
        self.sync()?;
        let seq = self.seq + 1;
        let path = segment_path(&self.dir, seq);
        // A file of that name can only be one torn while being created.
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(self.poison(path, "remove", e));
            }
        }
        let file = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) => return Err(self.poison(path, "create", e)),
        };
        if let Err(e) = file.write_all_at(&segment.bytes, 0) {
            return Err(self.poison(path, "write", e));
        }
        self.bytes_written += segment.bytes.len() as u64;
        let len = segment.bytes.len() as u64;
        let mut allocated = len;
        if self.fsync == FsyncPolicy::Always {
            if let Err(e) = write_zeros(&file, len, len + WAL_PREALLOC_BYTES) {
                return Err(self.poison(path, "preallocate", e));
            }
            allocated = len + WAL_PREALLOC_BYTES;
            self.syncs += 1;
            if let Err(e) = file.sync_data() {
                return Err(self.poison(path, "fsync", e));
            }
            let dir = self.dir.clone();
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                return Err(self.poison(dir, "fsync directory", e));
            }
        }
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.seq = seq;
        self.segment_len = len;
        self.allocated = allocated;
        crate::qlog!(
            "wal {}: checkpoint at snapshot {snapshot_index} ({} bytes) replaces {}",
            self.path.display(),
            self.segment_len,
            old.display()
        );
        // The new segment is durable: nothing below it is needed any more.
        // Failing to delete only costs disk space (open deletes them too).
        let listing = match list_dir(&self.dir) {
            Ok(listing) => listing,
            Err(e) => {
                crate::qlog!("WARNING cannot remove files older than the checkpoint: {e}");
                return Ok(());
            }
        };
        let segments = listing.segments.into_iter().filter(|(s, _)| *s < seq).map(|(_, p)| p);
        let snapshots = listing.snapshots.into_iter().map(|(index, path)| (Some(index), path));
        let below = |index: &Option<LogIndex>| index.is_some_and(|i| i < snapshot_index);
        let files = snapshots.chain(listing.tmps).filter(|(i, _)| below(i)).map(|(_, p)| p);
        for path in segments.chain(files) {
            remove_stale(&path);
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
    /// Hands the image to the snapshot thread (started on the first call);
    /// `snapshot_saved` reports it once its file is durable.
    fn save_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Result<()> {
        self.check_poisoned()?;
        self.saver.save(snapshot)
    }

    /// The highest index saved since the last call. A failed save is an
    /// error naming its file, and poisons the storage.
    fn snapshot_saved(&mut self) -> Result<Option<LogIndex>> {
        self.check_poisoned()?;
        match self.saver.poll() {
            Ok(saved) => {
                if let Some(index) = saved {
                    let path = snapshot_path(&self.dir, index);
                    self.snapshot_bytes = fs::metadata(path).map_or(0, |m| m.len());
                }
                Ok(saved)
            }
            Err(e) => {
                let (op, kind) = match &e {
                    Error::Io { op, source, .. } => (*op, source.kind()),
                    _ => ("save snapshot", io::ErrorKind::Other),
                };
                self.poisoned = Some(Poisoned { op, kind, message: e.to_string() });
                Err(e)
            }
        }
    }

    /// Adds one op to the batch in memory; no IO, except for a checkpoint,
    /// which starts a new segment at once (see `checkpoint`). An op whose
    /// JSON does not fit in one record is refused, and the batch stays as
    /// it was.
    fn persist(&mut self, op: &Persist) -> Result<()> {
        self.check_poisoned()?;
        if let Persist::Checkpoint(checkpoint) = op {
            return self.checkpoint(op, checkpoint.snapshot_index);
        }
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

/// Opens (creating) a segment for reading and positional writes. Not in
/// append mode: records go to the end of the records, which may lie before
/// the end of the file (see Preallocation).
fn open_segment(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error(path, "open"))
}

/// Writes zero bytes over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; ZERO_WRITE_BYTES] = [0; ZERO_WRITE_BYTES];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZERO_WRITE_BYTES as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates and locks the directory's `LOCK` file, so no other process can
/// use the directory while the returned handle is open.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path, "open"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Io {
            path,
            op: "lock",
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "another process has this data directory open",
            ),
        }),
        Err(TryLockError::Error(e)) => Err(io_error(&path, "lock")(e)),
    }
}

/// The segments, snapshots and `.tmp` files in `dir`. Other files are not
/// storage's and are left alone. Two files for segment 0 (`wal.log` and
/// `wal-000…0.log`) are refused: which one holds the state is unknowable.
fn list_dir(dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io_error(dir, "list directory"))? {
        let entry = entry.map_err(io_error(dir, "list directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some(seq) = parse_segment_name(name) {
            listing.segments.push((seq, path));
        } else if let Some((index, tmp)) = parse_snapshot_name(name) {
            if tmp {
                listing.tmps.push((Some(index), path));
            } else {
                listing.snapshots.push((index, path));
            }
        } else if name.ends_with(".tmp") {
            listing.tmps.push((None, path));
        }
    }
    listing.segments.sort();
    listing.snapshots.sort();
    if let [(0, a), (0, b), ..] = &listing.segments[..] {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            op: "open",
            source: io::Error::other(format!(
                "both {} and {} exist; remove the one that is not this replica's log",
                a.display(),
                b.display()
            )),
        });
    }
    Ok(listing)
}

/// Deletes a file storage no longer needs. A failure only costs disk space,
/// so it is logged and the replica carries on.
fn remove_stale(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            crate::qlog!("WARNING cannot remove {}: {e}", path.display());
        }
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
            // Length 0, never a frame: the common case in preallocated zeros.
            if window[i..i + 4] == [0; 4] {
                continue;
            }
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

/// Whether every byte from `from` to `file_len` is zero: the preallocated
/// rest of a segment. Reads at most `SCAN_WINDOW_BYTES` at a time and stops
/// at the first byte that is not zero.
fn zeros_to_end(file: &File, path: &Path, from: u64, file_len: u64) -> Result<bool> {
    let mut window = Vec::new();
    let mut at = from;
    while at < file_len {
        let want = (file_len - at).min(SCAN_WINDOW_BYTES as u64) as usize;
        read_at(file, path, at, want, &mut window)?;
        if window.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += want as u64;
    }
    Ok(true)
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
    use crate::protocol::durable::Checkpoint;
    use crate::protocol::types::{
        Command, Entry, EntryId, Epoch, Formation, Incarnation, ReplicaId,
    };
    use crate::storage::snapshot;
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

        /// The first segment, the one a new directory appends to.
        fn wal(&self) -> PathBuf {
            segment_path(&self.0, 0)
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
        Command::put(key, value)
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
                entry(4, 4, 4, Command::cas("c", 2, b"x")),
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

    /// The log file `bytes` without the zeros preallocated after its last
    /// record (checked to be zeros): the header and the records.
    fn records_part(bytes: &[u8]) -> &[u8] {
        let mut at = HEADER_BYTES as usize;
        while at + RECORD_HEADER_BYTES as usize <= bytes.len() {
            let len = u32::from_le_bytes(le_u32(&bytes[at..at + 4]));
            if len == 0 {
                break;
            }
            at += RECORD_HEADER_BYTES as usize + len as usize;
        }
        assert!(at <= bytes.len(), "the last record ends inside the file");
        let (records, tail) = bytes.split_at(at);
        assert!(tail.iter().all(|&b| b == 0), "only zeros after the last record");
        records
    }

    /// The bytes of the log file at `path` without its preallocated zeros.
    fn read_records(path: &Path) -> Vec<u8> {
        records_part(&fs::read(path).unwrap()).to_vec()
    }

    #[test]
    fn round_trip_of_every_op_equals_applying_them_in_memory() {
        let ops = every_op();
        let variants: BTreeSet<_> = ops.iter().map(variant).collect();
        // Every variant but Checkpoint, which starts a new segment and has
        // tests of its own below.
        assert_eq!(variants.len(), 8, "every_op misses a Persist variant");
        assert!(!variants.contains("Checkpoint"));
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
                let bytes = read_records(&dir.wal());
                assert_eq!(records_in(&bytes).len(), batches.len(), "one record per sync: {what}");
                assert_eq!(storage.bytes_written(), bytes.len() as u64, "{what}");
                assert_eq!(storage.segment_bytes(), bytes.len() as u64, "{what}");
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
        let full = read_records(&dir.wal());
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
    fn last_record_with_bad_checksum_is_a_torn_tail_and_zeros_after_it_a_clean_end() {
        let dir = TempDir::new("torn-garbage");
        let batches = batches();
        append_batches(&dir.0, FsyncPolicy::Always, &batches);
        let full = read_records(&dir.wal());
        let last_start = *record_offsets(&batches).last().unwrap();
        let kept = apply_in_memory(&batches[..batches.len() - 1].concat());

        for zeros_after in [0, 4096] {
            let mut flipped = [full.clone(), vec![0; zeros_after]].concat();
            flipped[full.len() - 1] ^= 0x04;
            fs::write(dir.wal(), &flipped).unwrap();
            assert_eq!(reopen(&dir.0).unwrap(), kept, "{zeros_after} zeros after");
            assert_eq!(fs::metadata(dir.wal()).unwrap().len(), last_start, "{zeros_after}");
        }

        // A file extended with zeros (preallocated, or as some file systems
        // leave it after a crash) ends cleanly after its last record: nothing
        // is cut, and the next record goes right after the last one.
        let zeros = [full.clone(), vec![0; 4096]].concat();
        fs::write(dir.wal(), &zeros).unwrap();
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&every_op()));
        assert_eq!(fs::read(dir.wal()).unwrap(), zeros, "left as it was");
        let next = Persist::Commit(LogIndex(1));
        append(&dir.0, FsyncPolicy::Never, std::slice::from_ref(&next));
        let with_next = [&full[..], &record(std::slice::from_ref(&next))].concat();
        assert_eq!(records_part(&fs::read(dir.wal()).unwrap()), with_next);
        let all = [&every_op()[..], std::slice::from_ref(&next)].concat();
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&all));
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
        let file = fs::read(dir.wal()).unwrap();
        let full = records_part(&file);
        let b_start = record_offsets(&[a.clone(), b.clone()])[1] as usize;
        let page = 4096;
        let b_first_page_end = (b_start / page + 1) * page;
        assert!(full.len() > b_first_page_end + page, "B's end lies on later pages");
        // The power cut came while B was being written back: its later pages
        // reached the disk, its first page (from B's start on) did not.
        // Both with the zeros preallocated after B and without them.
        for bytes in [full, &file[..]] {
            for lost in [0x00, 0xff] {
                let what = format!("lost bytes {lost:#x}, file of {} bytes", bytes.len());
                let mut bytes = bytes.to_vec();
                bytes[b_start..b_first_page_end].fill(lost);
                overwrite(&dir.wal(), &bytes);
                assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&a), "{what}");
                assert_eq!(fs::metadata(dir.wal()).unwrap().len(), b_start as u64, "B cut: {what}");
            }
        }
        // A power cut that kept B's start but not its end loses B the same
        // way, whether the file ends there or zeros follow.
        let kept = &full[..full.len() - page];
        for zeros_after in [0, page] {
            fs::write(dir.wal(), [kept, &vec![0; zeros_after]].concat()).unwrap();
            assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&a), "{zeros_after} zeros");
            assert_eq!(fs::metadata(dir.wal()).unwrap().len(), b_start as u64, "{zeros_after}");
        }
    }

    /// Makes the file at `path` hold `bytes`, writing over it in place.
    /// (`fs::write` truncates to zero first, and ext4 then starts writing the
    /// new bytes back when the file is closed: slow for a MiB of zeros.)
    fn overwrite(path: &Path, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).create(true).truncate(false).open(path).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file.set_len(bytes.len() as u64).unwrap();
    }

    /// Writes `bytes` as the log and expects `Corrupt` at `offset`, with a
    /// message naming the file and the offset.
    fn assert_corrupt_at(dir: &TempDir, bytes: &[u8], offset: u64, what: &str) {
        overwrite(&dir.wal(), bytes);
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
        // A version-1 log is from before segments: its name is `wal.log`.
        let legacy = dir.0.join(LEGACY_WAL_FILE_NAME);
        let ops = every_op();
        let (old, new) = ops.split_at(6);
        // Version 1: one record per op, its payload the op's JSON object.
        let v1_records: Vec<u8> =
            old.iter().flat_map(|op| frame(&serde_json::to_vec(op).unwrap())).collect();
        let v1 = [&MAGIC[..], &1u32.to_le_bytes(), &v1_records].concat();
        fs::write(&legacy, &v1).unwrap();
        assert_eq!(append(&dir.0, FsyncPolicy::Always, new), apply_in_memory(old));
        let expected = [&header_bytes()[..], &v1_records, &record(new)].concat();
        assert_eq!(read_records(&legacy), expected, "version 2 header, old records kept");
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&ops));
        assert_eq!(files(&dir.0), [LOCK_FILE_NAME, LEGACY_WAL_FILE_NAME], "appended in place");
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
        assert_eq!(read_records(&dir.wal()), expected, "one header, records in order");
    }

    // ---- Preallocation ----

    #[test]
    fn sync_under_always_preallocates_zeros_past_the_records_and_never_does_not() {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            let dir = TempDir::new("prealloc");
            let (mut storage, _) = DiskStorage::open(&dir.0, fsync).unwrap();
            let mut records = header_bytes().to_vec();
            let mut all = Vec::new();
            let mut allocated = None;
            let check = |storage: &DiskStorage, records: &[u8], what: &str| {
                let what = format!("{fsync:?}, {what}");
                let file = fs::read(dir.wal()).unwrap();
                assert_eq!(&file[..records.len()], records, "{what}");
                assert!(file[records.len()..].iter().all(|&b| b == 0), "zero tail: {what}");
                assert_eq!(storage.segment_bytes(), records.len() as u64, "{what}");
                file.len() as u64
            };
            for (i, batch) in batches().iter().enumerate() {
                persist_all(&mut storage, batch);
                records.extend(record(batch));
                all.extend_from_slice(batch);
                let len = check(&storage, &records, &format!("batch {i}"));
                match fsync {
                    // The first sync preallocates; the next ones overwrite
                    // zeros inside the file and leave its length alone.
                    FsyncPolicy::Always => {
                        let first = *allocated.get_or_insert(len);
                        assert!(first > WAL_PREALLOC_BYTES, "{first}");
                        let end_of_first = HEADER_BYTES + record(&batches()[0]).len() as u64;
                        assert_eq!(first, end_of_first + WAL_PREALLOC_BYTES, "batch {i}");
                        assert_eq!(len, first, "batch {i}: no size change");
                    }
                    FsyncPolicy::Never => assert_eq!(len, records.len() as u64, "batch {i}"),
                }
            }
            // A record that passes the end of the file extends it again, to
            // WAL_PREALLOC_BYTES past the record's end.
            let value = vec![b'b'; WAL_PREALLOC_BYTES as usize];
            let big = [Persist::Accept(vec![entry(9, 20, 9, put("big", &value))])];
            let big_record = record(&big);
            assert!(records.len() + big_record.len() > allocated.unwrap_or(0) as usize);
            persist_all(&mut storage, &big);
            records.extend(big_record);
            all.extend_from_slice(&big);
            let len = check(&storage, &records, "big record");
            let want = match fsync {
                FsyncPolicy::Always => records.len() as u64 + WAL_PREALLOC_BYTES,
                FsyncPolicy::Never => records.len() as u64,
            };
            assert_eq!(len, want, "{fsync:?}, big record");
            drop(storage);
            assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&all), "{fsync:?}");
        }
    }

    #[test]
    fn preallocated_log_reopens_with_every_record_untouched_and_appends_at_the_logical_end() {
        let dir = TempDir::new("prealloc-reopen");
        let mut records = header_bytes().to_vec();
        let mut done: Vec<Persist> = Vec::new();
        // Each batch in its own run; the third run is under Never, so it
        // writes into the zeros the first run preallocated.
        for (i, batch) in batches().iter().enumerate() {
            let fsync = if i == 2 { FsyncPolicy::Never } else { FsyncPolicy::Always };
            let before = fs::read(dir.wal()).unwrap_or_default();
            let (mut storage, recovered) = DiskStorage::open(&dir.0, fsync).unwrap();
            assert_eq!(recovered, apply_in_memory(&done), "run {i}");
            // Nothing was cut (which is the only thing logged with a warning
            // at a clean open): the file is byte for byte as it was.
            assert_eq!(fs::read(dir.wal()).unwrap_or_default(), before, "run {i}: untouched");
            let logical = if i == 0 { 0 } else { records.len() as u64 };
            assert_eq!(storage.segment_bytes(), logical, "run {i}");
            persist_all(&mut storage, batch);
            drop(storage);
            records.extend(record(batch));
            done.extend_from_slice(batch);
            let file = fs::read(dir.wal()).unwrap();
            assert!(file.len() > records.len(), "run {i}: zeros after the records");
            assert_eq!(records_part(&file), &records[..], "run {i}: records in order");
            if i == 2 {
                assert_eq!(file.len(), before.len(), "run {i}: written into the zeros");
            }
        }
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&every_op()));
    }

    #[test]
    fn torn_last_record_inside_the_preallocated_region_recovers_the_earlier_batches() {
        let dir = TempDir::new("torn-prealloc");
        let mut batches = batches();
        let last = batches.last_mut().unwrap();
        last.push(Persist::Accept(vec![entry(9, 5, 9, put("last", &[7; 40]))]));
        append_batches(&dir.0, FsyncPolicy::Always, &batches);
        let file = fs::read(dir.wal()).unwrap();
        let full = records_part(&file).to_vec();
        assert!(file.len() > full.len(), "preallocated");
        let last_start = *record_offsets(&batches).last().unwrap() as usize;
        let kept = apply_in_memory(&batches[..batches.len() - 1].concat());
        let next = Persist::Commit(LogIndex(5));
        let with_next = [&full[..last_start], &record(std::slice::from_ref(&next))].concat();
        let after_next = apply_in_memory(
            &[&batches[..batches.len() - 1].concat()[..], std::slice::from_ref(&next)].concat(),
        );
        for cut in last_start..full.len() {
            // The last record's bytes from `cut` on never reached the disk:
            // they read as the zeros that were preallocated there.
            let mut bytes = file.clone();
            bytes[cut..full.len()].fill(0);
            overwrite(&dir.wal(), &bytes);
            // Every 16th cut also appends under Always (an fsync of a MiB).
            let fsync = if (cut - last_start).is_multiple_of(16) {
                FsyncPolicy::Always
            } else {
                FsyncPolicy::Never
            };
            let (storage, recovered) = DiskStorage::open(&dir.0, fsync).unwrap();
            assert_eq!(recovered, kept, "cut {cut}");
            assert_eq!(storage.segment_bytes(), last_start as u64, "cut {cut}");
            drop(storage);
            if cut == last_start {
                // Lost whole: only zeros after the last good record.
                assert_eq!(fs::read(dir.wal()).unwrap(), bytes, "cut {cut}: a clean end");
            } else {
                // Torn: cut, and none of its bytes are left behind.
                let len = fs::metadata(dir.wal()).unwrap().len();
                assert_eq!(len, last_start as u64, "cut {cut}: torn tail cut");
            }
            append(&dir.0, fsync, std::slice::from_ref(&next));
            let after = fs::read(dir.wal()).unwrap();
            assert_eq!(records_part(&after), with_next, "cut {cut}");
            if fsync == FsyncPolicy::Always {
                assert!(after.len() > with_next.len(), "cut {cut}: zeros preallocated again");
            }
            assert_eq!(reopen(&dir.0).unwrap(), after_next, "cut {cut}");
        }
    }

    #[test]
    fn nonzero_bytes_in_the_zero_tail_follow_the_torn_tail_and_corruption_rules() {
        let dir = TempDir::new("prealloc-garbage");
        let batches = batches();
        append_batches(&dir.0, FsyncPolicy::Always, &batches);
        let file = fs::read(dir.wal()).unwrap();
        let end = records_part(&file).len();
        let all = apply_in_memory(&every_op());
        // Garbage that forms no valid frame: a torn tail at the end of the
        // records, cut with the garbage and the zeros after it.
        for at in [end, end + 1, end + 4, end + 7, end + 8, end + 4096, file.len() - 1] {
            for garbage in [0x01, 0x5b, 0xff] {
                let what = format!("byte {at} = {garbage:#x}");
                let mut bytes = file.clone();
                bytes[at] = garbage;
                overwrite(&dir.wal(), &bytes);
                assert_eq!(reopen(&dir.0).unwrap(), all, "{what}");
                assert_eq!(fs::metadata(dir.wal()).unwrap().len(), end as u64, "{what}: cut");
            }
        }
        // The next sync preallocates fresh zeros after the cut.
        let next = Persist::Commit(LogIndex(3));
        append(&dir.0, FsyncPolicy::Always, std::slice::from_ref(&next));
        let after = fs::read(dir.wal()).unwrap();
        let with_next = [&file[..end], &record(std::slice::from_ref(&next))].concat();
        assert_eq!(records_part(&after), with_next);
        assert_eq!(after.len() as u64, with_next.len() as u64 + WAL_PREALLOC_BYTES);

        // A valid frame in the tail, past a gap of zeros: the zeros at the
        // end of the records are then a damaged record in the middle.
        for gap in [1, 100, 5000] {
            let mut bytes = file.clone();
            let frame_at = end + gap;
            let valid = record(&[Persist::Learner(true)]);
            bytes[frame_at..frame_at + valid.len()].copy_from_slice(&valid);
            assert_corrupt_at(&dir, &bytes, end as u64, &format!("frame after a gap of {gap}"));
            let message = reopen(&dir.0).unwrap_err().to_string();
            let names = format!("a valid record follows at byte offset {frame_at}");
            assert!(message.contains(&names), "gap {gap}: {message}");
            assert_eq!(fs::read(dir.wal()).unwrap(), bytes, "gap {gap}: left as it was");
        }
    }

    #[test]
    fn zero_filled_hole_between_two_valid_records_is_corrupt() {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            let dir = TempDir::new("zero-hole");
            let batches = batches();
            append_batches(&dir.0, fsync, &batches);
            let file = fs::read(dir.wal()).unwrap();
            let offsets = record_offsets(&batches);
            let last = *offsets.last().unwrap() as usize;
            for middle in 0..batches.len() - 1 {
                let (start, next) = (offsets[middle] as usize, offsets[middle + 1] as usize);
                // One record lost whole (a page never written back), or every
                // record from it up to the last one.
                for (hole_end, what) in [(next, "one record"), (last, "up to the last")] {
                    let what = format!("{fsync:?}, record {middle}, {what}");
                    let mut bytes = file.clone();
                    bytes[start..hole_end].fill(0);
                    assert_corrupt_at(&dir, &bytes, start as u64, &what);
                    let message = reopen(&dir.0).unwrap_err().to_string();
                    let names = format!("a valid record follows at byte offset {hole_end}");
                    assert!(message.contains(&names), "{what}: {message}");
                }
            }
        }
    }

    #[test]
    fn checkpoint_segment_is_preallocated_under_always_and_reopens_untouched() {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            let dir = TempDir::new("prealloc-checkpoint");
            let snap = snapshot(2, &[("k", 1, b"v")]);
            let all = write_with_checkpoint(&dir.0, fsync, &every_op(), &snap, &later_ops());
            let path = segment_path(&dir.0, 1);
            let file = fs::read(&path).unwrap();
            let checkpoint = &all[every_op().len()..every_op().len() + 1];
            let records =
                [&header_bytes()[..], &record(checkpoint), &record(&later_ops())].concat();
            assert_eq!(records_part(&file), records, "{fsync:?}");
            let zeros = match fsync {
                FsyncPolicy::Always => WAL_PREALLOC_BYTES as usize,
                FsyncPolicy::Never => 0,
            };
            // The checkpoint's own sync preallocated; `later_ops` overwrote zeros.
            let header_and_checkpoint = HEADER_BYTES as usize + record(checkpoint).len();
            let len = if zeros == 0 { records.len() } else { header_and_checkpoint + zeros };
            assert_eq!(file.len(), len, "{fsync:?}");
            let (storage, durable) = DiskStorage::open(&dir.0, fsync).unwrap();
            assert_eq!(durable, expected(&all, &snap), "{fsync:?}");
            assert_eq!(storage.segment_bytes(), records.len() as u64, "{fsync:?}");
            drop(storage);
            assert_eq!(fs::read(&path).unwrap(), file, "{fsync:?}: untouched");
        }
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
        let bytes = read_records(&dir.wal());
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

    // ---- Snapshots, checkpoints and segments ----

    /// The names of the files in `dir`, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn segment_name(seq: u64) -> String {
        format!("wal-{seq:020}.log")
    }

    fn snapshot_name(index: u64) -> String {
        format!("snapshot-{index:020}.snap")
    }

    /// A snapshot at `index` of `pairs` (key, version, value).
    fn snapshot(index: u64, pairs: &[(&str, u64, &[u8])]) -> Snapshot {
        let store = pairs.iter().map(|(k, v, val)| (k.to_string(), (*v, val.to_vec()))).collect();
        Snapshot { index: LogIndex(index), store }
    }

    /// A store of `n` keys with values of assorted lengths and bytes.
    fn many_keys(index: u64, n: usize) -> Snapshot {
        let store = (0..n)
            .map(|i| {
                let value: Vec<u8> = (0..i % 300).map(|b| (b * 7 + i) as u8).collect();
                (format!("key-{i:08}"), (i as u64 + 1, value))
            })
            .collect();
        Snapshot { index: LogIndex(index), store }
    }

    /// The checkpoint the protocol writes after saving a snapshot at
    /// `snapshot_index` with state `d`: everything, log entries above it only.
    fn checkpoint_of(d: &Durable, snapshot_index: u64) -> Persist {
        Persist::Checkpoint(Box::new(Checkpoint {
            snapshot_index: LogIndex(snapshot_index),
            incarnation: d.incarnation,
            promise: d.promise,
            promise_leader: d.promise_leader,
            incarnations: d.incarnations.clone(),
            formation: d.formation,
            learner: d.learner,
            log: d
                .log
                .range(LogIndex(snapshot_index + 1)..)
                .map(|(i, e)| (*i, e.clone()))
                .collect(),
            commit: d.commit,
        }))
    }

    /// Hands `snapshot` to the storage and waits until it reports it saved;
    /// any earlier index it reports on the way must be lower.
    fn save(storage: &mut DiskStorage, snapshot: &Snapshot) {
        storage.save_snapshot(Arc::new(snapshot.clone())).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match storage.snapshot_saved().unwrap() {
                Some(index) if index == snapshot.index => return,
                Some(index) => assert!(index < snapshot.index, "saved {index} out of order"),
                None => {
                    assert!(Instant::now() < deadline, "snapshot {} never saved", snapshot.index);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    fn persist_all(storage: &mut DiskStorage, ops: &[Persist]) {
        for op in ops {
            storage.persist(op).unwrap();
        }
        storage.sync().unwrap();
    }

    /// Opens `dir`, persists `before`, saves `snap`, checkpoints, persists
    /// `after`, and closes. Returns every op persisted, in order.
    fn write_with_checkpoint(
        dir: &Path,
        fsync: FsyncPolicy,
        before: &[Persist],
        snap: &Snapshot,
        after: &[Persist],
    ) -> Vec<Persist> {
        let (mut storage, _) = DiskStorage::open(dir, fsync).unwrap();
        persist_all(&mut storage, before);
        save(&mut storage, snap);
        let checkpoint = checkpoint_of(&apply_in_memory(before), snap.index.0);
        persist_all(&mut storage, std::slice::from_ref(&checkpoint));
        persist_all(&mut storage, after);
        [before, std::slice::from_ref(&checkpoint), after].concat()
    }

    /// What reopening must return: every op applied, plus the snapshot.
    fn expected(ops: &[Persist], snap: &Snapshot) -> Durable {
        let mut durable = apply_in_memory(ops);
        assert_eq!(durable.snapshot_index, snap.index, "the last checkpoint names the snapshot");
        durable.snapshot = Some(snap.clone());
        durable
    }

    /// Ops after the checkpoint: entries above the snapshot and more state.
    fn later_ops() -> Vec<Persist> {
        vec![
            Persist::Accept(vec![
                entry(9, 5, 9, put("after", b"\x00\x01")),
                entry(9, 6, 9, Command::Noop),
            ]),
            Persist::Commit(LogIndex(5)),
            Persist::Promise { epoch: Epoch(11), leader: Some(inc(4, 4)) },
            Persist::Drop(vec![LogIndex(6)]),
        ]
    }

    #[test]
    fn snapshot_file_format_is_as_documented() {
        let dir = TempDir::new("snapshot-format");
        fs::create_dir_all(&dir.0).unwrap();
        let snap = snapshot(0x0102, &[("a", 7, b""), ("bc", 1 << 40, b"\xff\x00")]);
        let path = dir.0.join("s");
        snapshot::write_snapshot_file(&path, snap.clone(), FsyncPolicy::Never).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(b"QKVSNAP\0");
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0x0102u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&[1, 0, 0, 0, b'a', 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&[
            2, 0, 0, 0, b'b', b'c', 0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0xff, 0,
        ]);
        let crc = crc32fast::hash(&body).to_le_bytes();
        assert_eq!(fs::read(&path).unwrap(), [&body[..], &crc].concat());
        assert_eq!(snapshot::load_snapshot(&path, LogIndex(0x0102)).unwrap(), snap);
    }

    #[test]
    fn snapshot_round_trip_through_save_checkpoint_and_reopen() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let stores = [
            ("empty store", snapshot(3, &[])),
            ("empty value", snapshot(3, &[("k", 1, b"")])),
            ("empty key, binary values", {
                snapshot(
                    3,
                    &[("", 2, b"x"), ("bin", 9, &all_bytes), ("ключ\n\"q\"", u64::MAX, b"\0")],
                )
            }),
            ("many keys", many_keys(3, 5000)),
            ("a value above the io buffer", snapshot(3, &[("big", 1, &vec![0xab; 3 << 20])])),
        ];
        let ops = every_op();
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            for (what, snap) in &stores {
                let dir = TempDir::new("snapshot-round-trip");
                let all = write_with_checkpoint(&dir.0, fsync, &ops, snap, &[]);
                let durable = reopen(&dir.0).unwrap();
                assert_eq!(durable.snapshot.as_ref(), Some(snap), "{what}, {fsync:?}");
                assert_eq!(durable, expected(&all, snap), "{what}, {fsync:?}");
                let names = [LOCK_FILE_NAME.to_string(), snapshot_name(3), segment_name(1)];
                assert_eq!(files(&dir.0), names, "{what}, {fsync:?}");
            }
        }
    }

    #[test]
    fn checkpoint_compacts_the_log_and_reopen_equals_applying_everything() {
        for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
            let dir = TempDir::new("checkpoint");
            let before = every_op();
            let first = many_keys(2, 100);
            let after = later_ops();
            let all = write_with_checkpoint(&dir.0, fsync, &before, &first, &after);
            let durable = reopen(&dir.0).unwrap();
            assert_eq!(durable, expected(&all, &first), "{fsync:?}");
            assert_eq!(durable.log.keys().next(), Some(&LogIndex(3)), "entries 1 and 2 are gone");
            assert_eq!(
                files(&dir.0),
                [LOCK_FILE_NAME.to_string(), snapshot_name(2), segment_name(1)]
            );

            // A second checkpoint: ops buffered before it (same batch, not
            // yet synced) land in the old segment, ops after it in the new.
            let (mut storage, recovered) = DiskStorage::open(&dir.0, fsync).unwrap();
            let second = many_keys(5, 50);
            save(&mut storage, &second);
            let pending = Persist::Learner(true);
            storage.persist(&pending).unwrap();
            let state = apply_in_memory(&[&all[..], std::slice::from_ref(&pending)].concat());
            let checkpoint = checkpoint_of(&state, 5);
            storage.persist(&checkpoint).unwrap();
            let tail = Persist::Commit(LogIndex(6));
            storage.persist(&tail).unwrap();
            storage.sync().unwrap();
            let records = read_records(&segment_path(&dir.0, 2));
            assert_eq!(storage.segment_bytes(), records.len() as u64, "{fsync:?}");
            drop(storage);
            let all = [&all[..], &[pending, checkpoint, tail]].concat();
            let want = expected(&all, &second);
            assert_eq!(reopen(&dir.0).unwrap(), want, "{fsync:?}");
            assert!(want.log.keys().all(|i| *i > LogIndex(5)));
            assert_eq!(
                files(&dir.0),
                [LOCK_FILE_NAME.to_string(), snapshot_name(5), segment_name(2)]
            );
            assert_eq!(recovered.snapshot, Some(first), "the open before held the first snapshot");
        }
    }

    #[test]
    fn segment_bytes_is_the_size_of_the_current_segment() {
        let dir = TempDir::new("segment-bytes");
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Never).unwrap();
        assert_eq!(storage.segment_bytes(), 0);
        for batch in batches() {
            persist_all(&mut storage, &batch);
            assert_eq!(storage.segment_bytes(), fs::metadata(dir.wal()).unwrap().len());
        }
        let snap = snapshot(2, &[("k", 1, b"v")]);
        save(&mut storage, &snap);
        persist_all(&mut storage, &[checkpoint_of(&apply_in_memory(&every_op()), 2)]);
        let new = segment_path(&dir.0, 1);
        assert_eq!(storage.segment_bytes(), fs::metadata(&new).unwrap().len());
        drop(storage);
        let (storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Never).unwrap();
        assert_eq!(storage.segment_bytes(), fs::metadata(&new).unwrap().len(), "after reopen");
    }

    #[test]
    fn legacy_wal_log_is_segment_zero_until_the_first_checkpoint() {
        let dir = TempDir::new("legacy");
        append(&dir.0, FsyncPolicy::Always, &every_op());
        fs::rename(dir.wal(), dir.0.join(LEGACY_WAL_FILE_NAME)).unwrap();
        let snap = snapshot(4, &[("a", 1, b"b")]);
        let all = write_with_checkpoint(&dir.0, FsyncPolicy::Always, &[], &snap, &later_ops());
        let all = [&every_op()[..], &all[..]].concat();
        assert_eq!(reopen(&dir.0).unwrap(), expected(&all, &snap));
        assert_eq!(files(&dir.0), [LOCK_FILE_NAME.to_string(), snapshot_name(4), segment_name(1)]);
    }

    #[test]
    fn crash_between_snapshot_rename_and_checkpoint_reopens_to_the_old_state() {
        let dir = TempDir::new("crash-before-checkpoint");
        let ops = every_op();
        // A snapshot saved, but the process stopped before its checkpoint.
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        persist_all(&mut storage, &ops);
        save(&mut storage, &snapshot(2, &[("k", 1, b"v")]));
        drop(storage);
        fs::write(dir.0.join("snapshot-00000000000000000003.tmp"), b"half").unwrap();
        let durable = reopen(&dir.0).unwrap();
        assert_eq!(durable, apply_in_memory(&ops));
        assert_eq!(durable.snapshot, None);
        assert_eq!(
            files(&dir.0),
            [LOCK_FILE_NAME.to_string(), segment_name(0)],
            "unused files gone"
        );

        // The same after a checkpoint: the older snapshot is the one loaded.
        let snap = snapshot(2, &[("k", 1, b"v")]);
        let all = write_with_checkpoint(&dir.0, FsyncPolicy::Always, &[], &snap, &later_ops());
        let all = [&ops[..], &all[..]].concat();
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        save(&mut storage, &snapshot(5, &[("k", 2, b"w")]));
        drop(storage);
        fs::write(dir.0.join("snapshot-00000000000000000006.tmp"), b"half").unwrap();
        assert_eq!(reopen(&dir.0).unwrap(), expected(&all, &snap));
        assert_eq!(files(&dir.0), [LOCK_FILE_NAME.to_string(), snapshot_name(2), segment_name(1)]);
    }

    /// Every file of `dir` by name, with its bytes.
    fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        files(dir)
            .into_iter()
            .map(|name| (name.clone(), fs::read(dir.join(&name)).unwrap()))
            .collect()
    }

    /// Makes `dir` hold exactly `contents` (rewriting only the files that
    /// differ: a preallocated segment is a MiB of zeros).
    fn restore(dir: &Path, contents: &BTreeMap<String, Vec<u8>>) {
        for name in files(dir) {
            if !contents.contains_key(&name) {
                fs::remove_file(dir.join(name)).unwrap();
            }
        }
        for (name, bytes) in contents {
            let path = dir.join(name);
            if fs::read(&path).ok().as_ref() != Some(bytes) {
                overwrite(&path, bytes);
            }
        }
    }

    #[test]
    fn crash_while_creating_a_segment_falls_back_to_the_previous_one() {
        let dir = TempDir::new("torn-segment");
        // Segment 1 with a checkpoint at 2, then a crash while segment 2 (a
        // checkpoint at 4) was being written.
        let first = snapshot(2, &[("k", 1, b"v")]);
        let old =
            write_with_checkpoint(&dir.0, FsyncPolicy::Always, &every_op(), &first, &later_ops());
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        let second = snapshot(4, &[("k", 2, b"w")]);
        save(&mut storage, &second);
        let before = dir_contents(&dir.0);
        let checkpoint = checkpoint_of(&apply_in_memory(&old), 4);
        persist_all(&mut storage, std::slice::from_ref(&checkpoint));
        drop(storage);
        let file = fs::read(segment_path(&dir.0, 2)).unwrap();
        let new = records_part(&file).to_vec();
        assert!(file.len() > new.len(), "the new segment was preallocated");
        // Cut at every byte, with and without zeros after the cut (a page of
        // them, or the whole preallocated length).
        let mut torn_versions: Vec<Vec<u8>> = Vec::new();
        for cut in 0..new.len() {
            torn_versions.push(new[..cut].to_vec());
            torn_versions.push([&new[..cut], &[0; 4096]].concat());
        }
        for cut in [0, 5, HEADER_BYTES as usize, HEADER_BYTES as usize + 3, new.len() - 1] {
            torn_versions.push([&new[..cut], &vec![0; file.len() - cut]].concat());
        }
        torn_versions.push(vec![0; new.len()]);
        torn_versions.push(vec![0; file.len()]);
        let mut zero_record = file.clone();
        zero_record[HEADER_BYTES as usize..].fill(0);
        torn_versions.push(zero_record);
        let old_state = expected(&old, &first);
        for torn in &torn_versions {
            restore(&dir.0, &before);
            overwrite(&segment_path(&dir.0, 2), torn);
            assert_eq!(reopen(&dir.0).unwrap(), old_state, "segment 2 torn at {}", torn.len());
            let names = [LOCK_FILE_NAME.to_string(), snapshot_name(2), segment_name(1)];
            assert_eq!(files(&dir.0), names, "torn segment and unused snapshot gone");
        }
        // The previous segment takes appends, and the next checkpoint works.
        let more = Persist::Commit(LogIndex(6));
        append(&dir.0, FsyncPolicy::Always, std::slice::from_ref(&more));
        let old = [&old[..], std::slice::from_ref(&more)].concat();
        let all = write_with_checkpoint(&dir.0, FsyncPolicy::Always, &[], &second, &[]);
        let all = [&old[..], &all[..]].concat();
        assert_eq!(reopen(&dir.0).unwrap(), expected(&all, &second));
        // The complete segment 2, older files still there: segment 2 is used.
        restore(&dir.0, &before);
        fs::write(segment_path(&dir.0, 2), &new).unwrap();
        let all = [&old[..old.len() - 1], std::slice::from_ref(&checkpoint)].concat();
        assert_eq!(reopen(&dir.0).unwrap(), expected(&all, &second));
        assert_eq!(files(&dir.0), [LOCK_FILE_NAME.to_string(), snapshot_name(4), segment_name(2)]);
    }

    #[test]
    fn torn_checkpoint_segment_with_nothing_older_is_corrupt() {
        let dir = TempDir::new("torn-only-segment");
        let snap = snapshot(2, &[("k", 1, b"v")]);
        write_with_checkpoint(&dir.0, FsyncPolicy::Always, &every_op(), &snap, &[]);
        let path = segment_path(&dir.0, 1);
        let file = fs::read(&path).unwrap();
        let full = records_part(&file);
        // Cut one byte short, with nothing after the cut or with zeros up to
        // the preallocated length.
        let cut = &full[..full.len() - 1];
        for torn in [cut.to_vec(), [cut, &vec![0; file.len() - cut.len()]].concat()] {
            fs::write(&path, &torn).unwrap();
            let err = reopen(&dir.0).unwrap_err();
            let what = format!("file of {} bytes", torn.len());
            let at_12 = matches!(&err, Error::Corrupt { path: p, offset: 12, .. } if *p == path);
            assert!(at_12, "{what}: {err}");
            assert!(err.to_string().contains("no older segment"), "{what}: {err}");
            assert_eq!(fs::read(&path).unwrap(), torn, "{what}: left as it was");
        }
    }

    #[test]
    fn checkpoint_naming_an_unsaved_snapshot_is_refused_and_writes_nothing() {
        let dir = TempDir::new("checkpoint-unsaved");
        let ops = every_op();
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        persist_all(&mut storage, &ops);
        let err = storage.persist(&checkpoint_of(&apply_in_memory(&ops), 2)).unwrap_err();
        let path = snapshot_path(&dir.0, LogIndex(2));
        assert!(matches!(&err, Error::Io { path: p, op: "checkpoint", .. } if *p == path), "{err}");
        drop(storage);
        assert_eq!(files(&dir.0), [LOCK_FILE_NAME.to_string(), segment_name(0)]);
        assert_eq!(reopen(&dir.0).unwrap(), apply_in_memory(&ops));
    }

    /// Writes a directory whose checkpoint names a small snapshot at 2;
    /// returns the snapshot file's path.
    fn dir_with_small_snapshot(dir: &TempDir) -> PathBuf {
        let snap = snapshot(2, &[("a", 1, b""), ("b", 2, b"\xff\x00v")]);
        write_with_checkpoint(&dir.0, FsyncPolicy::Never, &every_op(), &snap, &[]);
        snapshot_path(&dir.0, LogIndex(2))
    }

    fn assert_names(err: &Error, path: &Path, what: &str) {
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{what}: {message}");
    }

    #[test]
    fn damaged_snapshot_is_an_error_naming_the_file() {
        let dir = TempDir::new("snapshot-damaged");
        let path = dir_with_small_snapshot(&dir);
        let good = fs::read(&path).unwrap();
        let segment = fs::read(segment_path(&dir.0, 1)).unwrap();
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0xff;
            fs::write(&path, &bytes).unwrap();
            let err = reopen(&dir.0).unwrap_err();
            assert_names(&err, &path, &format!("byte {at} flipped"));
            // Only the version field can read as a newer format.
            let newer = matches!(err, Error::NewerFormat { .. });
            assert!(
                matches!(err, Error::Corrupt { .. }) || (newer && (8..12).contains(&at)),
                "{err}"
            );
            assert_eq!(files(&dir.0).len(), 3, "nothing deleted after an error");
        }
        for cut in 0..good.len() {
            fs::write(&path, &good[..cut]).unwrap();
            let err = reopen(&dir.0).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "cut at {cut}: {err}");
            assert_names(&err, &path, &format!("cut at {cut}"));
        }
        fs::write(&path, [&good[..], b"x"].concat()).unwrap();
        assert!(matches!(reopen(&dir.0).unwrap_err(), Error::Corrupt { .. }), "a byte too many");
        // A good snapshot of another index under this name.
        fs::remove_file(&path).unwrap();
        let other = snapshot(7, &[("a", 1, b"")]);
        snapshot::write_snapshot_file(&path, other, FsyncPolicy::Never).unwrap();
        let err = reopen(&dir.0).unwrap_err();
        assert!(matches!(&err, Error::Corrupt { offset: 12, .. }), "{err}");
        assert!(err.to_string().contains("holds index 7"), "{err}");
        // Intact again, the directory opens.
        fs::write(&path, &good).unwrap();
        assert_eq!(fs::read(segment_path(&dir.0, 1)).unwrap(), segment, "the log is untouched");
        assert_eq!(reopen(&dir.0).unwrap().snapshot.unwrap().store.len(), 2);
    }

    #[test]
    fn missing_snapshot_named_by_the_checkpoint_is_an_error() {
        let dir = TempDir::new("snapshot-missing");
        let path = dir_with_small_snapshot(&dir);
        fs::remove_file(&path).unwrap();
        let err = reopen(&dir.0).unwrap_err();
        assert_names(&err, &path, "missing");
        assert!(err.to_string().contains("is missing"), "{err}");
        match err {
            Error::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("expected Io, got {other}"),
        }
        assert_eq!(files(&dir.0), [LOCK_FILE_NAME.to_string(), segment_name(1)], "log kept");
    }

    #[test]
    fn newer_snapshot_format_version_is_refused() {
        let dir = TempDir::new("snapshot-newer");
        let path = dir_with_small_snapshot(&dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = reopen(&dir.0).unwrap_err();
        assert_names(&err, &path, "newer");
        match err {
            Error::NewerFormat { path: p, found, supported } => {
                assert_eq!((p, found, supported), (path, 2, 1));
            }
            other => panic!("expected NewerFormat, got {other}"),
        }
    }

    #[test]
    fn failed_snapshot_save_is_an_error_naming_the_file() {
        let dir = TempDir::new("snapshot-save-fails");
        let (mut storage, _) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        // A directory where the .tmp file goes makes its creation fail.
        let tmp = snapshot::snapshot_tmp_path(&dir.0, LogIndex(3));
        fs::create_dir(&tmp).unwrap();
        storage.save_snapshot(Arc::new(snapshot(3, &[("k", 1, b"v")]))).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let err = loop {
            match storage.snapshot_saved() {
                Err(e) => break e,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Ok(other) => panic!("expected an error, got {other:?}"),
            }
        };
        assert!(matches!(&err, Error::Io { path, .. } if *path == tmp), "{err}");
        assert!(storage.snapshot_saved().is_err(), "the storage stays stopped");
        assert!(storage.persist(&Persist::Learner(true)).is_err());
    }

    /// Restart time with a million keys (100-byte values, 16-byte keys):
    /// `cargo test --release --lib restart_with_a_million -- --ignored --nocapture`.
    #[test]
    #[ignore = "slow: measures restart time; run in release"]
    fn restart_with_a_million_keys_is_fast() {
        let dir = TempDir::new("million");
        let store = (0..1_000_000u64)
            .map(|i| (format!("key-{i:012}"), (i % 7 + 1, vec![(i % 251) as u8; 100])))
            .collect();
        let snap = Snapshot { index: LogIndex(2), store };
        let saving = Instant::now();
        write_with_checkpoint(&dir.0, FsyncPolicy::Always, &every_op(), &snap, &later_ops());
        let saved_in = saving.elapsed();
        let bytes = fs::metadata(snapshot_path(&dir.0, LogIndex(2))).unwrap().len();
        let opening = Instant::now();
        let (storage, durable) = DiskStorage::open(&dir.0, FsyncPolicy::Always).unwrap();
        let restart = opening.elapsed();
        println!(
            "1,000,000 keys: snapshot of {bytes} bytes saved in {saved_in:?}; restart took {restart:?}"
        );
        drop(storage);
        assert_eq!(durable.snapshot.as_ref(), Some(&snap));
        if !cfg!(debug_assertions) {
            assert!(restart < std::time::Duration::from_secs(2), "restart took {restart:?}");
        }
    }
}
