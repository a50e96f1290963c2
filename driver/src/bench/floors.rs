//! What this machine can do at best, measured in the same run as the
//! workloads, so a workload's numbers read as a ratio to their floor:
//!
//! - loopback TCP round trip (one connection, a small message): a PUT through
//!   a follower costs at least three (client→follower→leader→peer and back);
//! - a 2 KiB append plus `sync_data` in the data directory's filesystem: a
//!   durable write costs at least one; and the same while two other threads
//!   append and sync files of their own, as the three replicas of a bench
//!   cluster do at once on this machine's one disk (informational: it tells
//!   how much of PUT-1 is the replicas sharing a disk);
//! - round trips per second of a thread-per-connection `std::net` echo server
//!   under 50 closed-loop connections: the most a server of our shape could
//!   answer with no work at all per request.

use super::histogram::{Histogram, Summary};
use super::json::Json;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Round trips timed for the loopback floor (bounded by [`RTT_TIME_MAX`] too).
const RTT_ROUNDS: usize = 20_000;
/// Time bound of the loopback measurement.
const RTT_TIME_MAX: Duration = Duration::from_secs(2);
/// Appends timed for the fsync floor (bounded by [`FSYNC_TIME_MAX`] too).
const FSYNC_ROUNDS: usize = 2_000;
/// Time bound of the fsync measurement.
const FSYNC_TIME_MAX: Duration = Duration::from_secs(3);
/// Appenders of the shared-disk fsync floor: one per replica of a PUT's path.
const SHARED_FSYNC_WRITERS: usize = 3;
/// Bytes per append: about one batch record of a few PUTs.
const FSYNC_APPEND_BYTES: usize = 2048;
/// Closed-loop connections of the echo floor, as in the 50-client workloads.
pub const ECHO_CLIENTS: usize = 50;
/// The echo floor runs this long at most (warm-up not included).
const ECHO_TIME_MAX: Duration = Duration::from_secs(5);
/// Warm-up of the echo floor.
const ECHO_WARMUP: Duration = Duration::from_millis(500);
/// The echoed line: the size of a PUT with a 100-byte value.
const ECHO_LINE: &str = concat!(
    "PUT k0000001 ",
    "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
    "\n"
);
/// Socket timeout of the floor clients: nothing here should ever wait this long.
const FLOOR_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The three floors.
#[derive(Clone, Debug, Default)]
pub struct Floors {
    /// Loopback round trip, one connection, small message.
    pub rtt: Summary,
    /// 2 KiB append + `sync_data`.
    pub fsync: Summary,
    /// The same, while [`SHARED_FSYNC_WRITERS`] - 1 other threads do it too.
    pub fsync_shared: Summary,
    /// Echo round trips per second with [`ECHO_CLIENTS`] connections.
    pub echo_ops_per_sec: f64,
    /// Echo round-trip latency under that load.
    pub echo: Summary,
}

impl Floors {
    /// Each floor at its best of `self` and `other`: the lower latency p50,
    /// the higher echo rate. Other work on the machine only makes a floor
    /// worse, so the best measurement is the closest to the real floor.
    pub fn best(&self, other: &Floors) -> Floors {
        let lower = |a: &Summary, b: &Summary| if b.p50_us < a.p50_us { *b } else { *a };
        let (echo_ops_per_sec, echo) = if other.echo_ops_per_sec > self.echo_ops_per_sec {
            (other.echo_ops_per_sec, other.echo)
        } else {
            (self.echo_ops_per_sec, self.echo)
        };
        Floors {
            rtt: lower(&self.rtt, &other.rtt),
            fsync: lower(&self.fsync, &other.fsync),
            fsync_shared: lower(&self.fsync_shared, &other.fsync_shared),
            echo_ops_per_sec,
            echo,
        }
    }

    /// Every number, for `bench.json`.
    pub fn to_json(&self) -> Json {
        Json::obj()
            .set("loopback_rtt_us", summary_json(&self.rtt))
            .set("fsync_2k_us", summary_json(&self.fsync))
            .set("fsync_2k_shared_writers", SHARED_FSYNC_WRITERS)
            .set("fsync_2k_shared_us", summary_json(&self.fsync_shared))
            .set("echo_clients", ECHO_CLIENTS)
            .set("echo_ops_per_sec", self.echo_ops_per_sec)
            .set("echo_us", summary_json(&self.echo))
    }
}

/// A histogram summary as JSON, in µs.
pub fn summary_json(s: &Summary) -> Json {
    Json::obj()
        .set("count", s.count)
        .set("mean", s.mean_us)
        .set("p50", s.p50_us)
        .set("p90", s.p90_us)
        .set("p99", s.p99_us)
        .set("p99_9", s.p999_us)
        .set("max", s.max_us)
}

/// Measures all three; `dir` must be on the data directories' filesystem.
pub fn measure(dir: &Path, progress: &dyn Fn(&str)) -> Result<Floors, String> {
    progress("floor: loopback round trip");
    let rtt = loopback_rtt()?;
    progress("floor: 2 KiB append + fsync");
    let fsync = fsync_latency(dir, FSYNC_ROUNDS, FSYNC_TIME_MAX)?;
    progress(&format!("floor: 2 KiB append + fsync, {SHARED_FSYNC_WRITERS} writers at once"));
    let fsync_shared = fsync_latency_shared(dir, SHARED_FSYNC_WRITERS)?;
    progress(&format!("floor: echo server, {ECHO_CLIENTS} connections"));
    let (echo_ops_per_sec, echo) = echo_rate(ECHO_CLIENTS, ECHO_TIME_MAX)?;
    Ok(Floors { rtt, fsync, fsync_shared, echo_ops_per_sec, echo })
}

/// A thread-per-connection echo server on 127.0.0.1, stopped on drop.
pub struct EchoServer {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Tells the accept loop to end.
    stop: Arc<AtomicBool>,
    /// The accept loop.
    acceptor: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds a free port and starts accepting.
    pub fn start() -> Result<EchoServer, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("echo bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("echo addr: {e}"))?.to_string();
        // Non-blocking accept, polled, so the loop sees the stop flag.
        listener.set_nonblocking(true).map_err(|e| format!("echo nonblocking: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acceptor = thread::Builder::new()
            .name("echo accept".into())
            .spawn(move || accept_loop(&listener, &flag))
            .map_err(|e| format!("spawn echo: {e}"))?;
        Ok(EchoServer { addr, stop, acceptor: Some(acceptor) })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

/// Accepts until `stop`; each connection gets a thread that echoes until EOF.
fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(FLOOR_IO_TIMEOUT));
                let _ = thread::Builder::new().name("echo conn".into()).spawn(move || echo(stream));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Writes back every byte read, until EOF or an error.
fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A blocking echo client: one line out, the same line back.
struct EchoClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl EchoClient {
    fn connect(addr: &str) -> Result<EchoClient, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("echo connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        stream.set_read_timeout(Some(FLOOR_IO_TIMEOUT)).map_err(|e| format!("timeout: {e}"))?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| format!("clone: {e}"))?);
        Ok(EchoClient { stream, reader, line: Vec::new() })
    }

    fn round_trip(&mut self, msg: &[u8]) -> Result<(), String> {
        self.stream.write_all(msg).map_err(|e| format!("echo write: {e}"))?;
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line).map_err(|e| format!("echo read: {e}"))?;
        if self.line.len() != msg.len() {
            return Err(format!("echo returned {} bytes, sent {}", self.line.len(), msg.len()));
        }
        Ok(())
    }
}

/// Loopback round-trip latency: one connection, a 16-byte line.
fn loopback_rtt() -> Result<Summary, String> {
    let server = EchoServer::start()?;
    let mut c = EchoClient::connect(&server.addr)?;
    let msg = b"ping-0123456789\n";
    for _ in 0..100 {
        c.round_trip(msg)?;
    }
    let mut h = Histogram::default();
    let end = Instant::now() + RTT_TIME_MAX;
    for _ in 0..RTT_ROUNDS {
        let t = Instant::now();
        c.round_trip(msg)?;
        h.record_duration(t.elapsed());
        if Instant::now() >= end {
            break;
        }
    }
    Ok(h.summary())
}

/// Appends timed by [`fsync_sample`].
const FSYNC_SAMPLE_ROUNDS: usize = 300;
/// Time bound of [`fsync_sample`].
const FSYNC_SAMPLE_TIME_MAX: Duration = Duration::from_secs(1);

/// A short fsync measurement, taken before each workload: fsync latency on a
/// shared disk swings with other tenants' writes, so the floor next to each
/// workload says more than one taken minutes earlier.
pub fn fsync_sample(dir: &Path) -> Result<Summary, String> {
    fsync_latency(dir, FSYNC_SAMPLE_ROUNDS, FSYNC_SAMPLE_TIME_MAX)
}

/// [`fsync_latency`] while `writers - 1` other threads append and sync files
/// of their own in `dir` until it is done.
fn fsync_latency_shared(dir: &Path, writers: usize) -> Result<Summary, String> {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let others: Vec<_> = (1..writers)
            .map(|k| {
                let stop = &stop;
                scope.spawn(move || {
                    with_scratch_file(dir, &format!("-{k}"), |f| {
                        let block = vec![b'y'; FSYNC_APPEND_BYTES];
                        // Bounded by the measuring thread's own time bound.
                        let end = Instant::now() + 2 * FSYNC_TIME_MAX;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                            f.write_all(&block)
                                .and_then(|()| f.sync_data())
                                .map_err(|e| format!("fsync: {e}"))?;
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        let measured = fsync_latency(dir, FSYNC_ROUNDS, FSYNC_TIME_MAX);
        stop.store(true, Ordering::Relaxed);
        for other in others {
            other.join().map_err(|_| "an fsync floor writer panicked".to_string())??;
        }
        measured
    })
}

/// Latency of a 2 KiB append + `sync_data` to a fresh file in `dir`, `rounds`
/// times or for `time_max`, whichever ends first.
fn fsync_latency(dir: &Path, rounds: usize, time_max: Duration) -> Result<Summary, String> {
    with_scratch_file(dir, "", |f| {
        let block = vec![b'x'; FSYNC_APPEND_BYTES];
        let mut h = Histogram::default();
        let end = Instant::now() + time_max;
        for _ in 0..rounds {
            let t = Instant::now();
            f.write_all(&block).and_then(|()| f.sync_data()).map_err(|e| format!("fsync: {e}"))?;
            h.record_duration(t.elapsed());
            if Instant::now() >= end {
                break;
            }
        }
        Ok(h.summary())
    })
}

/// Runs `body` on a fresh file in `dir` (named for this process and `tag`),
/// then removes the file, whatever `body` returned.
fn with_scratch_file<T>(
    dir: &Path,
    tag: &str,
    body: impl FnOnce(&mut fs::File) -> Result<T, String>,
) -> Result<T, String> {
    let path = dir.join(format!("fsync-floor-{}{tag}.tmp", std::process::id()));
    let result = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))
        .and_then(|mut f| body(&mut f));
    let _ = fs::remove_file(&path);
    result
}

/// Echo round trips per second with `clients` closed-loop connections, and
/// their latency.
pub fn echo_rate(clients: usize, time_max: Duration) -> Result<(f64, Summary), String> {
    let server = EchoServer::start()?;
    let start = Instant::now() + ECHO_WARMUP;
    let end = start + time_max;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let mut c = EchoClient::connect(&server.addr)?;
        handles.push(thread::spawn(move || -> Result<Histogram, String> {
            let mut h = Histogram::default();
            loop {
                let t = Instant::now();
                c.round_trip(ECHO_LINE.as_bytes())?;
                let done = Instant::now();
                if done >= end {
                    return Ok(h);
                }
                if done >= start {
                    h.record_duration(done - t);
                }
            }
        }));
    }
    let mut all = Histogram::default();
    for h in handles {
        all.merge(&h.join().map_err(|_| "echo client panicked".to_string())??);
    }
    let secs = time_max.as_secs_f64();
    Ok((all.count() as f64 / secs, all.summary()))
}
