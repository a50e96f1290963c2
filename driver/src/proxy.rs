//! A link proxy for partitions on one host (DESIGN §7: "a link proxy through
//! `--peer-dial`").
//!
//! Each replica dials each other replica, and the dialer is the only sender on
//! that connection (the acceptor answers the handshake, then only reads). So
//! every direction i → j is its own TCP connection, dialed by i. For every
//! ordered pair (i, j) the proxy listens on `127.0.0.1:0` and forwards to j's
//! real address; replica i is started with `--peer-dial j=127.0.0.1:<port>`.
//!
//! [`Proxy::cut`] blackholes one direction: the proxy stops copying bytes on
//! that pair's connections (in both byte directions, so the handshake answer
//! stops too) and holds them open, and it holds new connections without
//! dialing the target. The sender sees what a real blackhole shows: writes that
//! fill the socket buffers and then stall, dials that never complete a
//! handshake. [`Proxy::heal`] resumes copying on established connections:
//! bytes held in the socket buffers are delivered late, as TCP retransmits
//! them after a partition heals. Connections first seen during the cut are
//! closed at the heal, so their dialers dial again.
//!
//! A cut is checked to take effect: once [`Proxy::cut`] returns, no copy is in
//! flight and the pair's byte counter is frozen, which [`Proxy::check_cut`]
//! verifies later; [`Proxy::wait_all_carrying`] proves every replica really
//! dials through the proxy (otherwise a cut would do nothing).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often an idle or held pump re-checks its link's flags.
const POLL: Duration = Duration::from_millis(5);

/// A pump's read timeout: how long a read may block before re-checking flags.
const READ_TIMEOUT: Duration = Duration::from_millis(50);

/// A write that takes longer than this means the receiver stopped reading
/// (SIGSTOP, kill): give up on the connection, as the sender's kernel would.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the proxy waits to connect to a target replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`Proxy::cut`] waits for copies in flight to finish; bounded by
/// [`WRITE_TIMEOUT`].
const CUT_SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Bytes copied per read.
const BUFFER_BYTES: usize = 64 * 1024;

/// One direction i → j.
struct Link {
    /// The dialing replica.
    from: usize,
    /// The replica dialed.
    to: usize,
    /// Where the proxy listens for `from`.
    listen: SocketAddr,
    /// `to`'s real address.
    target: String,
    /// Set while the direction is cut.
    cut: AtomicBool,
    /// Copies between the cut check and the end of the write.
    in_flight: AtomicUsize,
    /// Bytes copied, both byte directions.
    bytes: AtomicU64,
    /// `bytes` when the last cut settled.
    bytes_at_cut: AtomicU64,
    /// Connections accepted.
    accepted: AtomicU64,
    /// Every socket of this link, to close on shutdown.
    sockets: Mutex<Vec<TcpStream>>,
}

/// The proxy for a whole cluster: one [`Link`] per ordered pair.
pub struct Proxy {
    /// Keyed by (from, to).
    links: BTreeMap<(usize, usize), Arc<Link>>,
    /// Tells every thread to finish.
    shutdown: Arc<AtomicBool>,
    /// Listener, connection and pump threads.
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts a proxy for replicas `1..=targets.len()`, replica `id` listening
    /// at `targets[id - 1]`.
    pub fn start(targets: &[String]) -> Result<Proxy, String> {
        let shutdown = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let mut links = BTreeMap::new();
        let n = targets.len();
        for from in 1..=n {
            for to in (1..=n).filter(|&to| to != from) {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .map_err(|e| format!("proxy {from}->{to}: bind: {e}"))?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| format!("proxy {from}->{to}: nonblocking: {e}"))?;
                let listen =
                    listener.local_addr().map_err(|e| format!("proxy {from}->{to}: {e}"))?;
                let link = Arc::new(Link {
                    from,
                    to,
                    listen,
                    target: targets[to - 1].clone(),
                    cut: AtomicBool::new(false),
                    in_flight: AtomicUsize::new(0),
                    bytes: AtomicU64::new(0),
                    bytes_at_cut: AtomicU64::new(0),
                    accepted: AtomicU64::new(0),
                    sockets: Mutex::new(Vec::new()),
                });
                let (l, sd, th) = (link.clone(), shutdown.clone(), threads.clone());
                let handle = thread::Builder::new()
                    .name(format!("proxy-{from}-{to}"))
                    .spawn(move || accept_loop(listener, l, sd, th))
                    .map_err(|e| format!("proxy thread: {e}"))?;
                lock(&threads).push(handle);
                links.insert((from, to), link);
            }
        }
        Ok(Proxy { links, shutdown, threads })
    }

    /// The `--peer-dial` flags for replica `from`: every other replica's
    /// proxy address.
    pub fn dial_flags(&self, from: usize) -> Vec<String> {
        self.links
            .values()
            .filter(|l| l.from == from)
            .flat_map(|l| ["--peer-dial".to_string(), format!("{}={}", l.to, l.listen)])
            .collect()
    }

    /// The replica ids the proxy serves, 1..=N.
    fn size(&self) -> usize {
        self.links.keys().map(|&(from, _)| from).max().unwrap_or(0)
    }

    fn link(&self, from: usize, to: usize) -> Result<&Arc<Link>, String> {
        self.links.get(&(from, to)).ok_or_else(|| format!("no proxy link {from}->{to}"))
    }

    /// Bytes copied so far on direction `from` → `to`.
    pub fn bytes(&self, from: usize, to: usize) -> u64 {
        self.link(from, to).map(|l| l.bytes.load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// Whether direction `from` → `to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.link(from, to).is_ok_and(|l| l.cut.load(Ordering::SeqCst))
    }

    /// Cuts direction `from` → `to` and waits until no copy is in flight, so
    /// that from now on its byte counter is frozen.
    pub fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        let link = self.link(from, to)?;
        link.cut.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + CUT_SETTLE_TIMEOUT;
        while link.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return Err(format!(
                    "cut {from}->{to}: a copy still in flight after {CUT_SETTLE_TIMEOUT:?}"
                ));
            }
            thread::sleep(POLL);
        }
        link.bytes_at_cut.store(link.bytes.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }

    /// Heals direction `from` → `to`: copying resumes on held connections.
    pub fn heal(&self, from: usize, to: usize) -> Result<(), String> {
        self.link(from, to)?.cut.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Checks that direction `from` → `to` is cut and copied nothing since.
    pub fn check_cut(&self, from: usize, to: usize) -> Result<(), String> {
        let link = self.link(from, to)?;
        if !link.cut.load(Ordering::SeqCst) {
            return Err(format!("link {from}->{to} is not cut"));
        }
        let (now, then) =
            (link.bytes.load(Ordering::SeqCst), link.bytes_at_cut.load(Ordering::SeqCst));
        if now != then {
            return Err(format!("link {from}->{to} copied {} bytes after its cut", now - then));
        }
        Ok(())
    }

    /// Cuts both directions between every replica in `side` and every
    /// replica outside it.
    pub fn isolate(&self, side: &[usize]) -> Result<(), String> {
        for (from, to) in self.crossing(side) {
            self.cut(from, to)?;
        }
        Ok(())
    }

    /// Checks every direction crossing `side`'s boundary is cut and frozen.
    pub fn check_isolated(&self, side: &[usize]) -> Result<(), String> {
        self.crossing(side).into_iter().try_for_each(|(from, to)| self.check_cut(from, to))
    }

    /// Every ordered pair with exactly one end in `side`.
    fn crossing(&self, side: &[usize]) -> Vec<(usize, usize)> {
        self.links
            .keys()
            .copied()
            .filter(|(from, to)| side.contains(from) != side.contains(to))
            .collect()
    }

    /// Heals every direction.
    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.cut.store(false, Ordering::SeqCst);
        }
    }

    /// The directions currently cut.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.links.iter().filter(|(_, l)| l.cut.load(Ordering::SeqCst)).map(|(&k, _)| k).collect()
    }

    /// Waits until every direction has carried bytes (at least the peer
    /// handshake), which proves each replica dials each peer through the
    /// proxy. Fails at `deadline` naming the idle links.
    pub fn wait_all_carrying(&self, deadline: Instant) -> Result<(), String> {
        loop {
            let idle: Vec<String> = self
                .links
                .iter()
                .filter(|(_, l)| l.bytes.load(Ordering::SeqCst) == 0)
                .map(|((f, t), _)| format!("{f}->{t}"))
                .collect();
            if idle.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "proxy links carried no bytes (is --peer-dial honoured?): {}",
                    idle.join(" ")
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every link's byte counter now.
    pub fn byte_counts(&self) -> BTreeMap<(usize, usize), u64> {
        self.links.iter().map(|(&k, l)| (k, l.bytes.load(Ordering::SeqCst))).collect()
    }

    /// A one-line summary: cut links and connections accepted.
    pub fn describe(&self) -> String {
        let cuts: Vec<String> = self.cuts().iter().map(|(f, t)| format!("{f}->{t}")).collect();
        let conns: u64 = self.links.values().map(|l| l.accepted.load(Ordering::SeqCst)).sum();
        format!(
            "proxy for {} replicas: cut [{}], {conns} connections accepted",
            self.size(),
            cuts.join(" ")
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for link in self.links.values() {
            for s in lock(&link.sockets).drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Every thread polls `shutdown` at least every READ_TIMEOUT, and
        // writes are bounded by WRITE_TIMEOUT, so the joins finish.
        loop {
            let handle = lock(&self.threads).pop();
            match handle {
                Some(h) => {
                    let _ = h.join();
                }
                None => break,
            }
        }
    }
}

/// Locks `m`, ignoring poisoning (a panicked pump leaves the data usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns a named thread and records its handle for the join on drop.
fn spawn(
    threads: &Arc<Mutex<Vec<JoinHandle<()>>>>,
    name: String,
    f: impl FnOnce() + Send + 'static,
) {
    match thread::Builder::new().name(name).spawn(f) {
        Ok(h) => lock(threads).push(h),
        Err(e) => eprintln!("proxy: cannot spawn a thread: {e}"),
    }
}

/// Accepts connections for one link until shutdown.
fn accept_loop(
    listener: TcpListener,
    link: Arc<Link>,
    shutdown: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !shutdown.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                link.accepted.fetch_add(1, Ordering::SeqCst);
                let (l, sd, th) = (link.clone(), shutdown.clone(), threads.clone());
                let name = format!("proxy-{}-{}-conn", link.from, link.to);
                spawn(&threads, name, move || serve(stream, l, sd, th));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// One accepted connection: held while the link is cut, then connected to
/// the target and pumped both ways.
fn serve(
    inbound: TcpStream,
    link: Arc<Link>,
    shutdown: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let _ = inbound.set_nonblocking(false);
    if let Ok(clone) = inbound.try_clone() {
        lock(&link.sockets).push(clone);
    }
    // A blackhole: the dialer's connection is held, the target never dialed.
    // Through a real blackhole this connection would never have been set
    // up, so after the heal it is closed (the dialer dials again) rather
    // than delivering what the dialer sent into the void.
    let mut held = false;
    while link.cut.load(Ordering::SeqCst) {
        held = true;
        if shutdown.load(Ordering::SeqCst) {
            return;
        }
        thread::sleep(POLL);
    }
    if held {
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    }
    let target = match link.target.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT),
        Err(e) => {
            eprintln!("proxy {}->{}: bad target {}: {e}", link.from, link.to, link.target);
            return;
        }
    };
    let Ok(outbound) = target else {
        // The target is down: close, so the dialer retries.
        let _ = inbound.shutdown(Shutdown::Both);
        return;
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let pair = (inbound.try_clone(), outbound.try_clone());
    let (Ok(inbound2), Ok(outbound2)) = pair else {
        return;
    };
    if let Ok(clone) = outbound.try_clone() {
        lock(&link.sockets).push(clone);
    }
    let (l, sd) = (link.clone(), shutdown.clone());
    let name = format!("proxy-{}-{}-back", link.from, link.to);
    spawn(&threads, name, move || pump(outbound2, inbound2, &l, &sd));
    pump(inbound, outbound, &link, &shutdown);
}

/// Copies `src` to `dst` until either closes or shutdown, copying nothing
/// while the link is cut; then closes both.
fn pump(mut src: TcpStream, mut dst: TcpStream, link: &Link, shutdown: &AtomicBool) {
    let _ = src.set_read_timeout(Some(READ_TIMEOUT));
    let _ = dst.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut buf = vec![0u8; BUFFER_BYTES];
    'outer: while !shutdown.load(Ordering::SeqCst) {
        if link.cut.load(Ordering::SeqCst) {
            // Not reading lets the sender's buffers fill, as with a blackhole.
            thread::sleep(POLL);
            continue;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // Hold the bytes while cut; the in-flight count lets `cut` wait for
        // a copy that passed the check just before the cut.
        loop {
            if shutdown.load(Ordering::SeqCst) {
                break 'outer;
            }
            link.in_flight.fetch_add(1, Ordering::SeqCst);
            if !link.cut.load(Ordering::SeqCst) {
                break;
            }
            link.in_flight.fetch_sub(1, Ordering::SeqCst);
            thread::sleep(POLL);
        }
        let written = dst.write_all(&buf[..n]);
        if written.is_ok() {
            link.bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        link.in_flight.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() {
            break;
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// An echo server on 127.0.0.1:0 answering each line; returns its address.
    fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut w = stream;
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if w.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
        stream.write_all(format!("{text}\n").as_bytes())?;
        let mut reader = std::io::BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    #[test]
    fn cut_blackholes_one_direction_and_heal_delivers_held_bytes() {
        let targets = vec![echo_server(), echo_server()];
        let proxy = Proxy::start(&targets).unwrap();
        let flags = proxy.dial_flags(1);
        assert_eq!(flags[0], "--peer-dial");
        let addr = flags[1].strip_prefix("2=").unwrap().to_string();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert_eq!(roundtrip(&mut s, "hello").unwrap(), "hello");
        assert!(proxy.bytes(1, 2) > 0);
        assert_eq!(proxy.bytes(2, 1), 0);

        proxy.cut(1, 2).unwrap();
        assert!(roundtrip(&mut s, "held").is_err(), "a cut link answered");
        proxy.check_cut(1, 2).unwrap();
        proxy.check_isolated(&[1]).unwrap_err(); // 2->1 is not cut
                                                 // A new connection is held too, and closed at the heal.
        let mut fresh = TcpStream::connect(&addr).unwrap();
        fresh.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(roundtrip(&mut fresh, "new").is_err());

        proxy.heal(1, 2).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "held\n", "the held bytes arrive after the heal");
        assert_eq!(roundtrip(&mut s, "again").unwrap(), "again");
        fresh.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(fresh.read(&mut buf), Ok(0) | Err(_)), "a held new connection is closed");
    }

    #[test]
    fn isolate_cuts_every_crossing_direction() {
        let targets: Vec<String> = (0..3).map(|_| echo_server()).collect();
        let proxy = Proxy::start(&targets).unwrap();
        proxy.isolate(&[2]).unwrap();
        let mut cuts = proxy.cuts();
        cuts.sort();
        assert_eq!(cuts, vec![(1, 2), (2, 1), (2, 3), (3, 2)]);
        proxy.check_isolated(&[2]).unwrap();
        proxy.heal_all();
        assert!(proxy.cuts().is_empty());
    }
}
