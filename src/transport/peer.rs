//! Peer links (DESIGN §2): the inbound side that reads frames from an
//! accepted handshake, and the outbound writer that dials, handshakes and
//! sends frames from its bounded queue.

use super::handshake::{self, HANDSHAKE_BYTES_MAX, HANDSHAKE_MS_MAX};
use super::input::{Input, LineEnd};
use super::outbox::{direct_write_timeout, Link, PeerOut, PeerState};
use super::{should_log, Event, Shared, Slot, TransportStats};
use crate::protocol::types::ReplicaId;
use crate::qlog;
use crate::wire::{self, WireError};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// First wait before dialing a peer again after a failure.
const BACKOFF_MS_MIN: u64 = 10;

/// Longest wait between dials: a restarted peer is found within this.
const BACKOFF_MS_MAX: u64 = 100;

/// A write to a peer that takes longer than this means the peer stopped
/// reading (SIGSTOP, a partition): drop the link and dial again rather than
/// wedge the writer. Heartbeats are ~20 ms, so a live peer never gets close.
const PEER_WRITE_MS_MAX: u64 = 2_000;

const _: () = assert!(BACKOFF_MS_MIN <= BACKOFF_MS_MAX);

/// Runs an accepted peer connection: the handshake, then frames until the
/// link ends. The handshake prefix has arrived but is not consumed yet.
/// `slot` is the admission slot the connection held until now; it is given
/// back once the handshake is done.
pub(super) fn serve_inbound(
    mut input: Input<TcpStream>,
    addr: SocketAddr,
    slot: Slot,
    shared: &Shared,
) {
    let handshake = accept_handshake(&mut input, addr, shared);
    drop(slot);
    let Some((from, generation)) = handshake else {
        return;
    };
    qlog!("link from r{from} ({addr}) accepted");
    let Some(error) = forward_frames(&mut input, from, shared) else {
        return; // The loop is gone.
    };
    if is_bad_frame(&error) {
        TransportStats::bump(&shared.stats.bad_frame_links);
    }
    if unregister(shared, from, generation) {
        qlog!("link from r{from} ({addr}) closed: {error}");
        let _ = shared.events_tx.send(Event::LinkDown(from));
    } else {
        qlog!("link from r{from} ({addr}) replaced by a newer one");
    }
}

/// Reads and checks the handshake (with the key challenge when the cluster
/// has a key), answers it, and returns the proven peer id; on refusal or
/// error logs (rate-limited) and returns `None`. All of it, challenge
/// included, must finish within [`HANDSHAKE_MS_MAX`].
fn accept_handshake(
    input: &mut Input<TcpStream>,
    addr: SocketAddr,
    shared: &Shared,
) -> Option<(ReplicaId, u64)> {
    let deadline = Instant::now() + Duration::from_millis(HANDSHAKE_MS_MAX);
    let _ = input.get_ref().set_write_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX)));
    let checked = match read_handshake_line(input, deadline) {
        Ok(line) => {
            let local = shared.local();
            handshake::check_hello(&line, &local).and_then(|from| match local.key {
                Some(key) => challenge(input, deadline, key, from, &local).map(|()| from),
                None => Ok(from),
            })
        }
        Err(Some(refusal)) => Err(refusal),
        Err(None) => return None,
    };
    let stream = input.get_ref();
    match checked {
        Ok(from) => {
            // Registered before the answer: a peer's links replace each other
            // in the order they were accepted, so an older link that is slow
            // to finish its handshake can never shut a newer one down.
            let generation = match stream.try_clone() {
                Ok(clone) => register(shared, from, clone),
                Err(e) => {
                    qlog!("link from r{from} ({addr}) dropped: {e}");
                    return None;
                }
            };
            let answer = format!("QKVPEER-OK {}\n", shared.id);
            let ready = (&*stream).write_all(answer.as_bytes()).and_then(|()| {
                // Inbound links only receive; a quiet peer is not a dead one.
                stream.set_read_timeout(None)
            });
            match ready {
                Ok(()) => Some((from, generation)),
                Err(e) => {
                    unregister(shared, from, generation);
                    qlog!("peer handshake from r{from} ({addr}) failed: {e}");
                    None
                }
            }
        }
        Err(refusal) => {
            let answer = format!("QKVPEER-REFUSED {}\n", refusal.reason);
            let _ = (&*stream).write_all(answer.as_bytes());
            let _ = stream.shutdown(Shutdown::Both);
            // A misconfigured replica redials every 100 ms: log the first
            // refusal and then every 50th, with the count.
            let n = TransportStats::bump(&shared.stats.handshakes_refused);
            if should_log(n) {
                let detail = refusal.detail.map(|d| format!("; {d}")).unwrap_or_default();
                qlog!("peer {addr} refused: {}{detail} ({n} refused so far)", refusal.reason);
            }
            None
        }
    }
}

/// Reads one handshake line before `deadline`. `Err(None)` when the
/// connection ended or timed out (logged here: nothing to answer).
fn read_handshake_line(
    input: &mut Input<TcpStream>,
    deadline: Instant,
) -> Result<Vec<u8>, Option<handshake::Refusal>> {
    let addr = input.get_ref().peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut line = Vec::new();
    match handshake::read_hello_line(input, deadline, &mut line) {
        Ok(LineEnd::Line) => Ok(line),
        Ok(LineEnd::TooLong(n)) => Err(Some(handshake::Refusal {
            reason: format!("handshake line {n} > {HANDSHAKE_BYTES_MAX} bytes"),
            detail: None,
        })),
        Ok(LineEnd::Eof) => {
            qlog!("peer handshake from {addr}: closed before the line ended");
            Err(None)
        }
        Err(e) => {
            qlog!("peer handshake from {addr} dropped: {e}");
            Err(None)
        }
    }
}

/// Sends a fresh challenge and checks the proof that comes back.
fn challenge(
    input: &mut Input<TcpStream>,
    deadline: Instant,
    key: &handshake::ClusterKey,
    from: ReplicaId,
    local: &handshake::Local,
) -> Result<(), handshake::Refusal> {
    let nonce = handshake::new_nonce();
    let sent = input.get_ref().write_all(handshake::challenge_line(&nonce).as_bytes());
    let refusal = |reason: String| handshake::Refusal { reason, detail: None };
    sent.map_err(|e| refusal(format!("sending the key challenge to r{from}: {e}")))?;
    match read_handshake_line(input, deadline) {
        Ok(line) => handshake::check_proof(&line, key, &nonce, from, local),
        Err(Some(too_long)) => Err(too_long),
        Err(None) => Err(refusal(format!("r{from} sent no cluster key proof in time"))),
    }
}

/// Sends every frame from `from` to the loop until the link fails, and
/// returns why; `None` when the loop is gone.
fn forward_frames(
    input: &mut Input<TcpStream>,
    from: ReplicaId,
    shared: &Shared,
) -> Option<WireError> {
    let mut misaddressed = 0u64;
    let mut payload = Vec::new();
    loop {
        match wire::read_frame_into(input, &mut payload) {
            Ok(env) if env.from != from => {
                misaddressed += 1;
                if misaddressed == 1 {
                    qlog!(
                        "link from r{from}: dropping messages that claim to be from r{}",
                        env.from
                    );
                }
            }
            Ok(env) => shared.events_tx.send(Event::Peer(env)).ok()?,
            Err(e) => return Some(e),
        }
    }
}

/// True when the peer sent bytes that are not a frame (as opposed to the link
/// ending or failing, as after kill -9 or a partition).
fn is_bad_frame(error: &WireError) -> bool {
    match error {
        WireError::Eof => false,
        WireError::Io(e) => e.kind() == io::ErrorKind::UnexpectedEof,
        WireError::TooLarge { .. } | WireError::NewerVersion { .. } | WireError::BadPayload(_) => {
            true
        }
    }
}

/// Records `stream` as the current inbound link from `from`, shutting down
/// the one it replaces. Returns the new link's generation.
fn register(shared: &Shared, from: ReplicaId, stream: TcpStream) -> u64 {
    let generation = shared.inbound_generation.fetch_add(1, Ordering::Relaxed);
    let mut inbound = shared.inbound.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, old)) = inbound.insert(from, (generation, stream)) {
        let _ = old.shutdown(Shutdown::Both);
    }
    generation
}

/// Forgets the inbound link from `from` if it is still `generation`; false
/// when a newer link replaced it.
fn unregister(shared: &Shared, from: ReplicaId, generation: u64) -> bool {
    let mut inbound = shared.inbound.lock().unwrap_or_else(|e| e.into_inner());
    match inbound.get(&from) {
        Some((current, _)) if *current == generation => {
            inbound.remove(&from);
            true
        }
        _ => false,
    }
}

/// One outbound link's writer thread state.
struct Writer {
    to: ReplicaId,
    addr: String,
    /// The link's output, shared with the loop.
    out: Arc<PeerOut>,
    shared: Arc<Shared>,
    /// Frames discarded because they were queued while the link was down.
    discarded: Arc<AtomicU64>,
}

/// Spawns the writer thread for peer `to`, which lives until `out` is closed.
pub(super) fn spawn_writer(
    to: ReplicaId,
    addr: String,
    out: Arc<PeerOut>,
    shared: Arc<Shared>,
    discarded: Arc<AtomicU64>,
) -> io::Result<()> {
    let writer = Writer { to, addr, out, shared, discarded };
    thread::Builder::new().name(format!("peer writer r{to}")).spawn(move || writer.run())?;
    Ok(())
}

/// How a connected link ended.
enum LinkEnd {
    /// The transport is shutting down (or the loop is gone).
    Stop,
    /// The link broke; dial again after the backoff.
    Down,
    /// The peer reset the link (it restarted): dial again at once; the batch
    /// that found the link broken waits in the queue to go first.
    Retry,
}

/// Our outbound links only write, so a peer that dies (kill -9) is noticed
/// only at the next write, which the kernel may still accept. A thread reads
/// the socket instead: the peer's FIN or RST ends the read, and it shuts the
/// socket down so the next write fails at once and is retried on a new link.
/// The thread ends with the socket (the writer shuts it down when done).
fn watch_for_reset(stream: &TcpStream) {
    let Ok(mut watched) = stream.try_clone() else { return };
    // The handshake left a read timeout on the socket; a quiet link is fine.
    if watched.set_read_timeout(None).is_err() {
        return;
    }
    let _ = thread::Builder::new().name("peer link watch".into()).spawn(move || {
        let mut byte = [0u8; 64];
        loop {
            match io::Read::read(&mut watched, &mut byte) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = watched.shutdown(Shutdown::Both);
    });
}

/// How a connected link's pump ended.
enum PumpEnd {
    /// The loop's side is gone: the transport is shutting down.
    Closed,
    /// A write failed or timed out; the batch that did not go out.
    Failed(io::Error, Vec<u8>),
}

impl Writer {
    /// Dial, handshake, pump, and on failure back off and dial again, until
    /// the loop's side closes.
    fn run(self) {
        let (to, addr) = (self.to, self.addr.as_str());
        let mut backoff_ms = BACKOFF_MS_MIN;
        let mut failures = 0u64;
        // A broken link's last batch is re-sent first on a link dialled at
        // once, so a peer that restarted (its old socket reset) still gets
        // the message that found the link broken.
        let mut retrying = false;
        loop {
            if !retrying && !self.go_down() {
                return;
            }
            match handshake::dial(addr, to, &self.shared.local()) {
                Ok(stream) => {
                    match failures {
                        0 => qlog!("link to r{to} ({addr}) up"),
                        n => qlog!("link to r{to} ({addr}) up after {n} failed attempts"),
                    }
                    failures = 0;
                    backoff_ms = BACKOFF_MS_MIN;
                    match self.serve_link(&stream, retrying) {
                        LinkEnd::Stop => return,
                        LinkEnd::Retry => {
                            retrying = true;
                            continue;
                        }
                        LinkEnd::Down => retrying = false,
                    }
                }
                Err(e) => {
                    retrying = false;
                    failures += 1;
                    if should_log(failures) {
                        qlog!("link to r{to} ({addr}) not up: {e} (attempt {failures})");
                    }
                }
            }
            if !self.go_down() || !self.pause(Duration::from_millis(backoff_ms)) {
                return;
            }
            backoff_ms = (backoff_ms * 2).min(BACKOFF_MS_MAX);
        }
    }

    /// Marks the link down and discards what was queued for it. False when
    /// the loop's side has closed.
    fn go_down(&self) -> bool {
        let mut st = self.out.lock();
        st.link = Link::Down;
        st.failed = None;
        st.queue = Vec::new();
        let frames = std::mem::take(&mut st.frames);
        self.discarded.fetch_add(frames as u64, Ordering::Relaxed);
        !st.closed
    }

    /// Waits out a backoff. False when the loop's side has closed.
    fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        !self.out.wait_until(Some(deadline), |st| st.closed).closed
    }

    /// Runs one connected link: installs it for the loop, `LinkUp`, writes
    /// what the loop hands over, and `LinkDown` when it fails.
    fn serve_link(&self, stream: &TcpStream, retrying: bool) -> LinkEnd {
        let installed = stream
            .set_write_timeout(direct_write_timeout())
            .and_then(|()| stream.try_clone())
            .map(|clone| {
                // Installed before LinkUp, so what the loop sends on hearing
                // of it (HELLO) finds the link up.
                let mut st = self.out.lock();
                let writer_owns = !st.queue.is_empty();
                st.link = Link::Up { stream: clone, writer_owns };
            });
        let end = match installed {
            Ok(()) => {
                if self.shared.events_tx.send(Event::LinkUp(self.to)).is_err() {
                    return LinkEnd::Stop;
                }
                watch_for_reset(stream);
                self.pump(stream)
            }
            Err(e) => PumpEnd::Failed(e, Vec::new()),
        };
        let _ = stream.shutdown(Shutdown::Both);
        match end {
            PumpEnd::Closed => LinkEnd::Stop,
            PumpEnd::Failed(e, batch) => {
                qlog!("link to r{} ({}) down: {e}", self.to, self.addr);
                if self.shared.events_tx.send(Event::LinkDown(self.to)).is_err() {
                    return LinkEnd::Stop;
                }
                let reset =
                    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset);
                if reset && !retrying && !batch.is_empty() {
                    // The failed batch goes first, then what queued meanwhile.
                    let mut st = self.out.lock();
                    let mut queue = batch;
                    queue.append(&mut st.queue);
                    st.queue = queue;
                    st.frames += 1;
                    LinkEnd::Retry
                } else {
                    LinkEnd::Down
                }
            }
        }
    }

    /// Writes what the loop hands over (everything queued, in one write)
    /// until a write fails or the loop's side closes. Gives the socket back
    /// to the loop whenever the queue is empty.
    fn pump(&self, mut stream: &TcpStream) -> PumpEnd {
        let long = Some(Duration::from_millis(PEER_WRITE_MS_MAX));
        let mut spare = Vec::new();
        let mut timeout_long = false;
        loop {
            let mut st = self.out.wait_until(None, |st| {
                st.closed || st.failed.is_some() || !st.queue.is_empty() || writer_owns(st)
            });
            if st.closed {
                return PumpEnd::Closed;
            }
            if let Some(e) = st.failed.take() {
                return self.lose_link(st, e);
            }
            if st.queue.is_empty() {
                // Caught up: the loop may write again, with the short timeout.
                if timeout_long {
                    if let Err(e) = stream.set_write_timeout(direct_write_timeout()) {
                        return self.lose_link(st, e);
                    }
                    timeout_long = false;
                }
                if let Link::Up { writer_owns, .. } = &mut st.link {
                    *writer_owns = false;
                }
                continue;
            }
            std::mem::swap(&mut st.queue, &mut spare);
            st.frames = 0;
            drop(st);
            let written = if timeout_long {
                Ok(())
            } else {
                timeout_long = true;
                stream.set_write_timeout(long)
            };
            if let Err(e) = written.and_then(|()| stream.write_all(&spare)) {
                let st = self.out.lock();
                let mut batch = std::mem::take(&mut spare);
                let st = self.put_back(st, &mut batch);
                return self.lose_link(st, e);
            }
            spare.clear();
        }
    }

    /// Puts a batch that did not go out back in front of the queue.
    fn put_back<'a>(
        &self,
        mut st: MutexGuard<'a, PeerState>,
        batch: &mut Vec<u8>,
    ) -> MutexGuard<'a, PeerState> {
        batch.append(&mut st.queue);
        st.queue = std::mem::take(batch);
        st
    }

    /// The link failed: the loop stops writing to it (frames queue until the
    /// writer decides between a retry and going down), and the queue becomes
    /// the failed batch.
    fn lose_link(&self, mut st: MutexGuard<'_, PeerState>, e: io::Error) -> PumpEnd {
        st.link = Link::Retrying;
        st.frames = 0;
        PumpEnd::Failed(e, std::mem::take(&mut st.queue))
    }
}

/// True when the writer thread holds the socket.
fn writer_owns(st: &PeerState) -> bool {
    matches!(st.link, Link::Up { writer_owns: true, .. })
}
