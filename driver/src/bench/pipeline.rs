//! Loads many keys fast: each connection has a writer thread that sends
//! chunks of pipelined `PUT`s and a reader that checks the replies in order.
//! A bounded channel of chunk sizes between them caps the commands in flight.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Commands per write.
const CHUNK: usize = 64;
/// Chunks in flight per connection (so up to `CHUNK * (CHUNKS_IN_FLIGHT + 1)`
/// commands): enough to keep the leader's batches full, well below its event queue.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Socket timeout of a loader connection.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Keys acknowledged with `OK`.
    pub acked: u64,
    /// Replies other than `OK` (the first is in `first_error`).
    pub errors: u64,
    /// The first error reply or IO error.
    pub first_error: Option<String>,
    /// Wall time, s.
    pub secs: f64,
}

/// PUTs `key(i) -> value(i)` for every `i` in `0..count`, spread over
/// `addrs` (one connection each), and stops sending at `deadline`.
pub fn load(
    addrs: &[String],
    count: u64,
    key: fn(u64) -> String,
    value: fn(u64) -> String,
    deadline: Instant,
    what: &str,
    progress: &dyn Fn(&str),
) -> LoadStats {
    let started = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let conns = addrs.len().max(1) as u64;
    let mut handles = Vec::new();
    for (c, addr) in addrs.iter().enumerate() {
        let (addr, acked) = (addr.clone(), acked.clone());
        // Connection c takes every conns-th key starting at c.
        let keys = (c as u64..count).step_by(conns as usize);
        handles.push(thread::spawn(move || load_one(&addr, keys, key, value, deadline, &acked)));
    }
    let mut last = Instant::now();
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= PROGRESS_EVERY {
            let n = acked.load(Ordering::Relaxed);
            let rate = n as f64 / started.elapsed().as_secs_f64();
            progress(&format!("{what}: {n}/{count} keys ({rate:.0}/s)"));
            last = Instant::now();
        }
    }
    let mut stats = LoadStats::default();
    for h in handles {
        let (errors, first) = h.join().unwrap_or_else(|_| (1, Some("loader panicked".into())));
        stats.errors += errors;
        stats.first_error = stats.first_error.or(first);
    }
    stats.acked = acked.load(Ordering::Relaxed);
    stats.secs = started.elapsed().as_secs_f64();
    stats
}

/// One connection's share. Returns (errors, first error).
fn load_one(
    addr: &str,
    keys: impl Iterator<Item = u64>,
    key: fn(u64) -> String,
    value: fn(u64) -> String,
    deadline: Instant,
    acked: &Arc<AtomicU64>,
) -> (u64, Option<String>) {
    let stream = match connect(addr) {
        Ok(s) => s,
        Err(e) => return (1, Some(e)),
    };
    let read_half = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return (1, Some(format!("clone: {e}"))),
    };
    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<usize>(CHUNKS_IN_FLIGHT);
    let counter = acked.clone();
    let reader = thread::spawn(move || read_replies(read_half, &chunk_rx, &counter));
    let mut writer = stream;
    let mut buf = Vec::new();
    let mut keys = keys.peekable();
    let mut write_error = None;
    while keys.peek().is_some() && Instant::now() < deadline {
        buf.clear();
        let mut n = 0;
        for i in keys.by_ref().take(CHUNK) {
            buf.extend_from_slice(format!("PUT {} {}\n", key(i), value(i)).as_bytes());
            n += 1;
        }
        if let Err(e) = writer.write_all(&buf) {
            write_error = Some(format!("write to {addr}: {e}"));
            break;
        }
        // Blocks while CHUNKS_IN_FLIGHT chunks are unanswered.
        if chunk_tx.send(n).is_err() {
            break;
        }
    }
    drop(chunk_tx);
    let (mut errors, first) = reader.join().unwrap_or((1, Some("reader panicked".into())));
    errors += u64::from(write_error.is_some());
    (errors, first.or(write_error))
}

/// Reads the replies of each announced chunk, adding each `OK` to `acked`.
/// Returns (errors, first error).
fn read_replies(
    stream: TcpStream,
    chunks: &mpsc::Receiver<usize>,
    acked: &AtomicU64,
) -> (u64, Option<String>) {
    let mut reader = BufReader::new(stream);
    let (mut errors, mut first) = (0u64, None);
    let mut line = String::new();
    while let Ok(n) = chunks.recv() {
        for _ in 0..n {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return (errors + 1, first.or(Some("connection closed".into()))),
                Ok(_) if line.starts_with("OK ") => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    errors += 1;
                    first.get_or_insert_with(|| line.trim_end().to_string());
                }
                Err(e) => return (errors + 1, first.or(Some(format!("read: {e}")))),
            }
        }
    }
    (errors, first)
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("timeout: {e}"))?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| format!("timeout: {e}"))?;
    s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    Ok(s)
}
