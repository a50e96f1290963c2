//! Snapshot files: the applied store at one log index (DESIGN §6).
//!
//! # Files
//! `snapshot-<index:020>.snap` in the data directory. A save writes
//! `snapshot-<index:020>.tmp`, fsyncs it, renames it to the `.snap` name and
//! fsyncs the directory, so a `.snap` file is always complete: a crash leaves
//! at worst a `.tmp` file, which the next open deletes. Under
//! [`FsyncPolicy::Never`] the fsyncs are skipped; the rename stays, so a
//! process crash still never leaves a half-written `.snap` file.
//!
//! A snapshot file is used only when the log's last checkpoint names it
//! (`Durable::snapshot_index`); every other one is deleted on open.
//!
//! # Format (all integers little-endian)
//! ```text
//! "QKVSNAP\0" | format version u32 (1) | index u64 | key count u64
//! per key, in ascending key order:
//!     key length u32 | key (UTF-8) | version u64 | value length u32 | value
//! CRC-32 of every byte before it, u32
//! ```
//! A file with a newer version is refused with [`Error::NewerFormat`]; any
//! other mismatch (magic, index, lengths, key order, trailing bytes, checksum)
//! is [`Error::Corrupt`] naming the file and the byte offset.
//!
//! # Saving in the background
//! [`Saver`] owns one thread, started on the first save, that takes images
//! from a channel and saves them in the order they were handed over, then
//! reports each index (or the error) back on a second channel. The image is
//! an `Arc` of a store clone the protocol never changes (it shares pages with
//! the live store, copy-on-write), so the replica keeps serving while it is
//! written. Dropping the `Saver` waits for the save in
//! progress, so no write outlives the storage that asked for it.

use super::{Error, FsyncPolicy, Result};
use crate::protocol::durable::Snapshot;
use crate::protocol::store::Store;
use crate::protocol::types::LogIndex;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// First eight bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"QKVSNAP\0";

/// The snapshot format version this build writes and the newest it reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Magic, version, index, key count.
pub const SNAPSHOT_HEADER_BYTES: u64 = 8 + 4 + 8 + 8;

/// The CRC-32 footer.
const FOOTER_BYTES: u64 = 4;

/// Smallest encoding of one key: both lengths and the version.
const KEY_BYTES_MIN: u64 = 4 + 8 + 4;

/// Buffer for writing and reading snapshot files.
const IO_BUFFER_BYTES: usize = 1 << 20;

/// Where the snapshot at `index` lives inside a data directory.
pub fn snapshot_path(dir: &Path, index: LogIndex) -> PathBuf {
    dir.join(format!("snapshot-{:020}.snap", index.0))
}

/// Where the snapshot at `index` is written before its rename.
pub fn snapshot_tmp_path(dir: &Path, index: LogIndex) -> PathBuf {
    dir.join(format!("snapshot-{:020}.tmp", index.0))
}

/// The index in a `snapshot-<index:020>.snap` or `.tmp` file name, and whether it is a `.tmp`.
pub fn parse_snapshot_name(name: &str) -> Option<(LogIndex, bool)> {
    let rest = name.strip_prefix("snapshot-")?;
    let (digits, tmp) = if let Some(d) = rest.strip_suffix(".snap") {
        (d, false)
    } else {
        (rest.strip_suffix(".tmp")?, true)
    };
    parse_seq(digits).map(|i| (LogIndex(i), tmp))
}

/// Exactly twenty decimal digits as a number.
pub(super) fn parse_seq(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A mapper from `io::Error` to `Error::Io` naming `path` and `op`.
fn io_error<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { path: path.to_path_buf(), op, source }
}

/// A file writer that keeps the CRC-32 of everything written through it.
/// Sits under a `BufWriter`, so it hashes whole buffers at a time.
struct HashingWriter {
    file: File,
    hasher: crc32fast::Hasher,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes `snapshot` to `path` (created or truncated) in the snapshot format,
/// through one large buffer; fsyncs the file under `FsyncPolicy::Always`.
/// Consumes the image, releasing each page of it once written (see
/// [`Store::drain_each`]).
pub fn write_snapshot_file(path: &Path, snapshot: Snapshot, fsync: FsyncPolicy) -> Result<()> {
    let file = File::create(path).map_err(io_error(path, "create"))?;
    let inner = HashingWriter { file, hasher: crc32fast::Hasher::new() };
    let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, inner);
    let write = |out: &mut BufWriter<HashingWriter>, bytes: &[u8]| {
        out.write_all(bytes).map_err(io_error(path, "write"))
    };
    write(&mut out, &SNAPSHOT_MAGIC)?;
    write(&mut out, &SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
    write(&mut out, &snapshot.index.0.to_le_bytes())?;
    write(&mut out, &(snapshot.store.len() as u64).to_le_bytes())?;
    snapshot.store.drain_each(|r| {
        let (key, value) = (r.key_bytes(), r.value());
        write(&mut out, &length(path, "key", key.len())?.to_le_bytes())?;
        write(&mut out, key)?;
        write(&mut out, &r.version().to_le_bytes())?;
        write(&mut out, &length(path, "value", value.len())?.to_le_bytes())?;
        write(&mut out, value)
    })?;
    let mut inner = out.into_inner().map_err(|e| io_error(path, "write")(e.into_error()))?;
    let crc = inner.hasher.clone().finalize();
    inner.file.write_all(&crc.to_le_bytes()).map_err(io_error(path, "write"))?;
    if fsync == FsyncPolicy::Always {
        inner.file.sync_all().map_err(io_error(path, "fsync"))?;
    }
    Ok(())
}

/// A key or value length as the u32 the format stores.
fn length(path: &Path, what: &str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::Io {
        path: path.to_path_buf(),
        op: "encode",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {what} of {len} bytes does not fit in a snapshot"),
        ),
    })
}

/// Saves `snapshot` in `dir` atomically: the `.tmp` file, its fsync, the
/// rename to the `.snap` name, the directory's fsync (no fsyncs under `Never`).
pub fn save_snapshot(dir: &Path, snapshot: Snapshot, fsync: FsyncPolicy) -> Result<()> {
    let tmp = snapshot_tmp_path(dir, snapshot.index);
    let path = snapshot_path(dir, snapshot.index);
    write_snapshot_file(&tmp, snapshot, fsync)?;
    fs::rename(&tmp, &path).map_err(io_error(&tmp, "rename"))?;
    if fsync == FsyncPolicy::Always {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir, "fsync directory"))?;
    }
    Ok(())
}

/// A file reader that keeps the CRC-32 of the bytes it reads below `limit`
/// (the footer's offset). Sits under a `BufReader`, so it hashes whole
/// buffers at a time.
struct HashingReader {
    file: File,
    /// File offset of the next byte read.
    pos: u64,
    limit: u64,
    hasher: crc32fast::Hasher,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        let hashed = self.limit.saturating_sub(self.pos).min(n as u64) as usize;
        self.hasher.update(&buf[..hashed]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads a snapshot file through a large buffer, keeping track of the offset.
struct SnapshotReader<'a> {
    path: &'a Path,
    input: BufReader<HashingReader>,
    /// Offset of the next unread byte.
    offset: u64,
    /// Offset of the footer: the data ends here.
    limit: u64,
}

impl SnapshotReader<'_> {
    fn corrupt(&self, offset: u64, detail: String) -> Error {
        Error::Corrupt { path: self.path.to_path_buf(), offset, detail }
    }

    /// Fails unless `len` more bytes lie before the footer.
    fn check_room(&self, len: u64, what: &str) -> Result<()> {
        let left = self.limit - self.offset;
        if len > left {
            return Err(self.corrupt(
                self.offset,
                format!("{what} of {len} bytes runs past the end of the data ({left} bytes left)"),
            ));
        }
        Ok(())
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(io_error(self.path, "read"))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.check_room(N as u64, what)?;
        let mut bytes = [0; N];
        self.read_into(&mut bytes)?;
        Ok(bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// `len` bytes into `buf` (replacing its contents), after checking they
    /// lie before the footer.
    fn bytes(&mut self, len: u32, what: &str, buf: &mut Vec<u8>) -> Result<()> {
        self.check_room(u64::from(len), what)?;
        buf.clear();
        buf.resize(len as usize, 0);
        self.read_into(buf)
    }
}

/// Reads and checks the snapshot file at `path`, which must hold `index`.
/// A missing file, bad magic, another index, a damaged record or a checksum
/// mismatch is an error naming the file; a newer format is `NewerFormat`.
pub fn load_snapshot(path: &Path, index: LogIndex) -> Result<Snapshot> {
    let file = File::open(path).map_err(|source| {
        let source = if source.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the log's checkpoint names snapshot {index}, but its file is missing"),
            )
        } else {
            source
        };
        Error::Io { path: path.to_path_buf(), op: "open snapshot", source }
    })?;
    let file_len = file.metadata().map_err(io_error(path, "stat"))?.len();
    if file_len < SNAPSHOT_HEADER_BYTES + FOOTER_BYTES {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            detail: format!("file is {file_len} bytes: too short for a snapshot"),
        });
    }
    let limit = file_len - FOOTER_BYTES;
    let inner = HashingReader { file, pos: 0, limit, hasher: crc32fast::Hasher::new() };
    let mut r = SnapshotReader {
        path,
        input: BufReader::with_capacity(IO_BUFFER_BYTES, inner),
        offset: 0,
        limit,
    };
    let magic: [u8; 8] = r.array("magic")?;
    if magic != SNAPSHOT_MAGIC {
        return Err(r.corrupt(0, format!("bad magic {magic:?}, not a quorumkv snapshot")));
    }
    let version = r.u32("format version")?;
    if version > SNAPSHOT_FORMAT_VERSION {
        return Err(Error::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(r.corrupt(8, "format version 0 was never written".to_string()));
    }
    let found = r.u64("index")?;
    if found != index.0 {
        return Err(r.corrupt(12, format!("holds index {found}, its name says {index}")));
    }
    let count = r.u64("key count")?;
    if count > (limit - r.offset) / KEY_BYTES_MIN {
        let detail = format!("key count {count} cannot fit in {} bytes", limit - r.offset);
        return Err(r.corrupt(20, detail));
    }
    // Keys come sorted, so each record goes straight to the end of the store.
    let mut store = Store::new();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let at = r.offset;
        let key_len = r.u32("key length")?;
        r.bytes(key_len, "key", &mut key)?;
        let key = std::str::from_utf8(&key)
            .map_err(|e| r.corrupt(at, format!("key is not UTF-8: {e}")))?;
        if store.last().is_some_and(|l| l.key_bytes() >= key.as_bytes()) {
            return Err(r.corrupt(at, "keys out of order".to_string()));
        }
        let version = r.u64("version")?;
        let value_len = r.u32("value length")?;
        r.bytes(value_len, "value", &mut value)?;
        store.insert(key, version, &value);
    }
    if r.offset != limit {
        let detail = format!("{} bytes after the last key, before the checksum", limit - r.offset);
        return Err(r.corrupt(r.offset, detail));
    }
    let mut footer = [0; FOOTER_BYTES as usize];
    r.input.read_exact(&mut footer).map_err(io_error(path, "read"))?;
    let expected = u32::from_le_bytes(footer);
    let actual = r.input.get_ref().hasher.clone().finalize();
    if actual != expected {
        let detail = format!("checksum {actual:08x}, footer says {expected:08x}");
        return Err(r.corrupt(limit, detail));
    }
    Ok(Snapshot { index, store })
}

/// The background thread that saves snapshots, started on the first save.
#[derive(Debug)]
pub struct Saver {
    dir: PathBuf,
    fsync: FsyncPolicy,
    /// Images to save, in order; None until the thread is started.
    jobs: Option<Sender<Arc<Snapshot>>>,
    /// Each save's index, or its error, in order.
    done: Option<Receiver<Result<LogIndex>>>,
    thread: Option<JoinHandle<()>>,
}

impl Saver {
    /// A saver for `dir`; no thread yet.
    pub fn new(dir: &Path, fsync: FsyncPolicy) -> Saver {
        Saver { dir: dir.to_path_buf(), fsync, jobs: None, done: None, thread: None }
    }

    /// Queues `snapshot` to be saved after any queued before it.
    pub fn save(&mut self, snapshot: Arc<Snapshot>) -> Result<()> {
        if self.jobs.is_none() {
            self.start()?;
        }
        let jobs = self.jobs.as_ref().expect("started above");
        if jobs.send(snapshot).is_err() {
            // The thread stops after a failed save: report that save's error.
            return Err(match self.poll() {
                Err(e) => e,
                Ok(_) => self.stopped(),
            });
        }
        Ok(())
    }

    /// The highest index saved since the last call; the first error of a
    /// save, if one failed (the replica must stop).
    pub fn poll(&mut self) -> Result<Option<LogIndex>> {
        let Some(done) = &self.done else {
            return Ok(None);
        };
        let mut highest = None;
        loop {
            match done.try_recv() {
                Ok(Ok(index)) => highest = highest.max(Some(index)),
                Ok(Err(e)) => return Err(e),
                Err(TryRecvError::Empty) => return Ok(highest),
                Err(TryRecvError::Disconnected) => return Err(self.stopped()),
            }
        }
    }

    fn start(&mut self) -> Result<()> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Arc<Snapshot>>();
        let (done_tx, done_rx) = mpsc::channel();
        let (dir, fsync) = (self.dir.clone(), self.fsync);
        let thread = std::thread::Builder::new()
            .name("snapshot-saver".to_string())
            .spawn(move || {
                for snapshot in jobs_rx {
                    let started = std::time::Instant::now();
                    let (index, keys) = (snapshot.index, snapshot.store.len());
                    // The saver is normally the image's only holder, so the
                    // write releases its pages as it goes.
                    let result = save_snapshot(&dir, Arc::unwrap_or_clone(snapshot), fsync);
                    let failed = result.is_err();
                    if !failed {
                        crate::qlog!(
                            "snapshot {} saved ({keys} keys) in {} ms",
                            snapshot_path(&dir, index).display(),
                            started.elapsed().as_millis()
                        );
                    }
                    if done_tx.send(result.map(|()| index)).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(io_error(&self.dir, "start snapshot thread"))?;
        self.jobs = Some(jobs_tx);
        self.done = Some(done_rx);
        self.thread = Some(thread);
        Ok(())
    }

    /// The error for a thread that is gone (it stops after a failed save,
    /// whose error was reported first, or it panicked).
    fn stopped(&self) -> Error {
        Error::Io {
            path: self.dir.clone(),
            op: "save snapshot",
            source: io::Error::other("the snapshot thread has stopped"),
        }
    }
}

impl Drop for Saver {
    /// Waits for the save in progress and any queued after it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
