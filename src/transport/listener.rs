//! The accept thread and the first moments of each connection: admission
//! under the client limit, then peer or client by the first bytes (DESIGN §2).

use super::handshake::{HANDSHAKE_MS_MAX, PEER_PREFIX};
use super::input::Input;
use super::{client, peer, should_log, Shared, Slot, TransportStats};
use crate::client::{ClientError, Reply};
use crate::qlog;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Connections let in over the client limit at once, each for at most
/// [`HANDSHAKE_MS_MAX`], to see whether they are peers. A few suffice for
/// every peer to reconnect while clients fill the limit; a flood beyond them
/// is answered `ERR BUSY` from the accept thread without a thread each.
pub(crate) const PROBES_MAX: usize = 16;

/// Pause after a failed accept (say, out of file descriptors), so the
/// thread does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// Bound on writing the short `ERR BUSY` line to a connection being refused.
const BUSY_WRITE_MS_MAX: u64 = 200;

/// How a connection was let in.
enum Admission {
    /// It holds a client slot (released early if it turns out to be a peer).
    Client(Slot),
    /// Over the client limit: it may only be a peer, or a client that finds
    /// a slot freed by the time its first line arrives.
    Probe(Slot),
}

/// Spawns the accept thread.
pub(super) fn spawn_accept(listener: TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    thread::Builder::new().name("accept".into()).spawn(move || accept_loop(listener, shared))?;
    Ok(())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut failures = 0u64;
    loop {
        match listener.accept() {
            Ok((stream, addr)) => admit(stream, addr, &shared),
            Err(e) => {
                failures += 1;
                if should_log(failures) {
                    qlog!("accept failed: {e} ({failures} failures so far)");
                }
                thread::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS));
            }
        }
    }
}

/// Gives the connection its own thread, or refuses it when even the probe
/// slots are taken.
fn admit(stream: TcpStream, addr: SocketAddr, shared: &Arc<Shared>) {
    let admission = if let Some(slot) = Slot::acquire(&shared.clients, shared.clients_max) {
        Admission::Client(slot)
    } else if let Some(slot) = Slot::acquire(&shared.probes, PROBES_MAX) {
        Admission::Probe(slot)
    } else {
        refuse_busy(&stream, addr, shared);
        return;
    };
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("conn {addr}"))
        .spawn(move || serve(stream, addr, admission, &thread_shared));
    if let Err(e) = spawned {
        qlog!("connection from {addr} dropped: cannot spawn a thread: {e}");
    }
}

/// The connection thread: decides peer or client, then runs as that.
fn serve(stream: TcpStream, addr: SocketAddr, admission: Admission, shared: &Arc<Shared>) {
    let wait_ms = match &admission {
        Admission::Client(_) => shared.idle_timeout_ms,
        Admission::Probe(_) => HANDSHAKE_MS_MAX,
    };
    if let Err(e) = stream.set_read_timeout((wait_ms > 0).then(|| Duration::from_millis(wait_ms))) {
        qlog!("connection from {addr} dropped: {e}");
        return;
    }
    let mut input = Input::new(stream);
    let is_peer = match sniff(&mut input) {
        Ok(Some(is_peer)) => is_peer,
        // Closed before saying anything: a port check, nothing to log.
        Ok(None) => return,
        Err(e) if super::is_timeout(&e) => {
            if let Admission::Probe(_) = admission {
                refuse_busy(input.get_ref(), addr, shared);
            }
            return;
        }
        Err(_) => return,
    };
    if is_peer {
        // The slot is held through the handshake, so connections that only
        // pretend to be peers are bounded like any other; a peer link itself
        // never counts against the client limit.
        let (Admission::Client(slot) | Admission::Probe(slot)) = admission;
        peer::serve_inbound(input, addr, slot, shared);
        return;
    }
    let slot = match admission {
        Admission::Client(slot) => slot,
        Admission::Probe(probe) => match Slot::acquire(&shared.clients, shared.clients_max) {
            Some(slot) => {
                drop(probe);
                slot
            }
            None => {
                refuse_busy(input.get_ref(), addr, shared);
                return;
            }
        },
    };
    client::serve(input, addr, slot, shared);
}

/// Waits until the first bytes tell a peer handshake (true) from a client
/// (false), without consuming them. `None` when the stream ends first.
fn sniff(input: &mut Input<TcpStream>) -> io::Result<Option<bool>> {
    loop {
        let seen = input.available();
        if seen.len() >= PEER_PREFIX.len() || !PEER_PREFIX.starts_with(seen) {
            return Ok(Some(seen.starts_with(PEER_PREFIX)));
        }
        if input.fill_more()? == 0 {
            return Ok(None);
        }
    }
}

/// Answers `ERR BUSY` naming the limit and closes the connection.
fn refuse_busy(stream: &TcpStream, addr: SocketAddr, shared: &Shared) {
    let open = shared.clients.load(Ordering::Acquire);
    let max = shared.clients_max;
    let error =
        ClientError::Busy(format!("too many client connections ({open} >= --max-clients {max})"));
    let mut line = Vec::new();
    Reply::Error(error).encode(&mut line);
    // A fresh socket's send buffer is empty, so this write does not block;
    // the timeout is a guard, and a failure changes nothing: it closes anyway.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(BUSY_WRITE_MS_MAX)));
    let _ = (&*stream).write_all(&line);
    let _ = stream.shutdown(Shutdown::Both);
    let refusals = TransportStats::bump(&shared.stats.busy_refusals);
    if should_log(refusals) {
        qlog!("client {addr} refused: {open} >= --max-clients {max} ({refusals} refused so far)");
    }
}
