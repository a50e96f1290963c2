//! One client connection (DESIGN §8): the reader cuts and parses lines, the
//! writer puts replies back in order.

use super::input::{Input, LineEnd};
use super::{is_timeout, ConnId, Event, Shared, Slot, TransportStats, CLIENT_DRAIN_MS_MAX};
use crate::client::{parse, ClientError, Reply, Request};
use crate::qlog;
use crossbeam_channel::{at, never, select, Receiver, Sender, TrySendError};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A client that does not read its replies for this long is dropped, so it
/// holds its writer thread no longer.
const CLIENT_WRITE_MS_MAX: u64 = 10_000;

/// Commands one client may have sent without their reply written yet. Past
/// this the reader stops reading until the writer catches up, so a client
/// that pipelines without reading its replies holds at most this many
/// requests and replies in memory; TCP flow control holds back the rest.
/// Large enough that a pipelining client never notices it.
pub const CLIENT_INFLIGHT_MAX: usize = 1024;

/// Process-wide source of [`ConnId`]s.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Where one parsed line goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Answered by the transport itself (parse errors, HELP).
    Reply(Reply),
    /// `QUIT`: answer `BYE` and stop reading.
    Quit,
    /// Everything the event loop answers.
    Loop(Request),
}

/// Decides who answers a parsed line.
fn route(parsed: Result<Request, ClientError>, help_lines: &[String]) -> Route {
    match parsed {
        Err(e) => Route::Reply(Reply::Error(e)),
        Ok(Request::Help) => Route::Reply(Reply::Lines(help_lines.to_vec())),
        Ok(Request::Quit) => Route::Quit,
        Ok(request) => Route::Loop(request),
    }
}

/// How the reader stopped.
enum ReaderEnd {
    /// EOF or QUIT after this many lines: the writer delivers what is owed.
    Graceful(u64),
    /// An error, the idle timeout, or the loop is gone: close now.
    Abort,
}

/// Runs a client connection on the connection thread, which becomes its
/// reader. Returns after both threads are done and the loop has been told.
pub(super) fn serve(mut input: Input<TcpStream>, addr: SocketAddr, slot: Slot, shared: &Shared) {
    let conn: ConnId = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let idle = (shared.idle_timeout_ms > 0).then(|| Duration::from_millis(shared.idle_timeout_ms));
    let stream = input.get_ref();
    let setup = stream
        .set_read_timeout(idle)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_millis(CLIENT_WRITE_MS_MAX))))
        .and_then(|()| stream.try_clone());
    let write_half = match setup {
        Ok(write_half) => write_half,
        Err(e) => {
            qlog!("client {addr} dropped: {e}");
            return;
        }
    };
    // Each reply is owed for one line the reader numbered, and the reader
    // takes one credit per line, so the unbounded reply channel holds at most
    // CLIENT_INFLIGHT_MAX replies.
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let (credit_tx, credit_rx) = crossbeam_channel::bounded(CLIENT_INFLIGHT_MAX);
    let writer = thread::Builder::new()
        .name(format!("client writer {conn}"))
        .spawn(move || write_replies(write_half, conn, reply_rx, done_rx, credit_rx));
    let writer = match writer {
        Ok(handle) => handle,
        Err(e) => {
            qlog!("client {addr} dropped: cannot spawn a thread: {e}");
            return;
        }
    };
    let open = Event::ClientOpen { conn, reply_tx: reply_tx.clone() };
    let stats = &shared.stats;
    TransportStats::bump(&stats.clients_total);
    stats.clients_open.fetch_add(1, Ordering::Relaxed);
    let end = match shared.events_tx.send(open) {
        Ok(()) => {
            let reply = Replies { tx: &reply_tx, credit_tx: &credit_tx };
            read_commands(&mut input, conn, addr, &reply, shared)
        }
        Err(_) => ReaderEnd::Abort,
    };
    match end {
        ReaderEnd::Graceful(lines) => {
            let _ = done_tx.send(lines);
        }
        ReaderEnd::Abort => {
            let _ = input.get_ref().shutdown(Shutdown::Both);
            drop(done_tx);
        }
    }
    drop(credit_tx);
    if writer.join().is_err() {
        qlog!("client {conn} writer panicked");
    }
    stats.clients_open.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
    let _ = shared.events_tx.send(Event::ClientClosed { conn });
}

/// The reader's ends of a connection's reply path.
struct Replies<'a> {
    /// Replies the reader answers itself go straight to the writer.
    tx: &'a Sender<(u64, Reply)>,
    /// One credit per numbered line; the writer returns it once the reply is
    /// written (see [`CLIENT_INFLIGHT_MAX`]).
    credit_tx: &'a Sender<()>,
}

impl Replies<'_> {
    /// Takes the credit for one more line, waiting while the client has
    /// [`CLIENT_INFLIGHT_MAX`] unanswered. False when the writer is gone (the
    /// client stopped reading long enough for a write to time out).
    fn take_credit(&self, stats: &TransportStats) -> bool {
        match self.credit_tx.try_send(()) {
            Ok(()) => true,
            Err(TrySendError::Full(())) => {
                TransportStats::bump(&stats.inflight_waits);
                self.credit_tx.send(()).is_ok()
            }
            Err(TrySendError::Disconnected(())) => false,
        }
    }
}

/// Reads, numbers and routes lines until EOF, QUIT or an error.
fn read_commands(
    input: &mut Input<TcpStream>,
    conn: ConnId,
    addr: SocketAddr,
    replies: &Replies,
    shared: &Shared,
) -> ReaderEnd {
    let limits = &shared.limits;
    let stats = &shared.stats;
    let mut line = Vec::new();
    let mut seq = 0u64;
    loop {
        let read = input.read_line(limits.line_bytes_max, &mut line);
        if matches!(read, Ok(LineEnd::Line | LineEnd::TooLong(_))) && !replies.take_credit(stats) {
            return ReaderEnd::Abort;
        }
        let reply = match read {
            Ok(LineEnd::Eof) => return ReaderEnd::Graceful(seq),
            Ok(LineEnd::TooLong(size)) => Reply::Error(ClientError::TooLarge {
                what: "line".into(),
                size,
                limit: limits.line_bytes_max,
                flag: "--max-line-bytes".into(),
            }),
            Ok(LineEnd::Line) => match route(parse(&line, limits), &shared.help_lines) {
                Route::Reply(reply) => reply,
                Route::Quit => {
                    let _ = replies.tx.send((seq, Reply::Bye));
                    return ReaderEnd::Graceful(seq + 1);
                }
                Route::Loop(request) => {
                    if shared.events_tx.send(Event::Client { conn, seq, request }).is_err() {
                        return ReaderEnd::Abort;
                    }
                    seq += 1;
                    continue;
                }
            },
            Err(e) if is_timeout(&e) => {
                qlog!("client {conn} ({addr}) idle for {} ms, closing", shared.idle_timeout_ms);
                return ReaderEnd::Abort;
            }
            Err(e) => {
                qlog!("client {conn} ({addr}) read failed: {e}");
                return ReaderEnd::Abort;
            }
        };
        if let Reply::Error(e) = &reply {
            match e {
                ClientError::TooLarge { .. } => TransportStats::bump(&stats.toolarge_replies),
                _ => TransportStats::bump(&stats.badcmd_replies),
            };
        }
        // The writer only goes away with the socket, and then the next read ends too.
        let _ = replies.tx.send((seq, reply));
        seq += 1;
    }
}

/// The writer thread: replies in `seq` order, one write per burst. Ends after
/// `BYE`, once every line the reader counted is answered, when the reader
/// aborts, on a write error, or [`CLIENT_DRAIN_MS_MAX`] after a half-close.
/// Each written reply gives the reader back one credit from `credit_rx`.
fn write_replies(
    mut stream: TcpStream,
    conn: ConnId,
    reply_rx: Receiver<(u64, Reply)>,
    done_rx: Receiver<u64>,
    credit_rx: Receiver<()>,
) {
    let mut pending: BTreeMap<u64, Reply> = BTreeMap::new();
    let mut next = 0u64;
    let mut out = Vec::new();
    let mut done = done_rx;
    // Lines the reader numbered, once it has stopped, and how long to wait.
    let mut owed: Option<(u64, Instant)> = None;
    loop {
        let timer = owed.map_or_else(never, |(_, deadline)| at(deadline));
        select! {
            recv(reply_rx) -> msg => match msg {
                Ok((seq, reply)) => {
                    pending.insert(seq, reply);
                }
                Err(_) => break,
            },
            recv(done) -> msg => match msg {
                Ok(lines) => {
                    let deadline = Instant::now() + Duration::from_millis(CLIENT_DRAIN_MS_MAX);
                    owed = Some((lines, deadline));
                    done = never();
                }
                Err(_) => break,
            },
            recv(timer) -> _ => break,
        }
        while let Ok((seq, reply)) = reply_rx.try_recv() {
            pending.insert(seq, reply);
        }
        let mut bye = false;
        let mut written = 0;
        while let Some(reply) = pending.remove(&next) {
            reply.encode(&mut out);
            next += 1;
            written += 1;
            if reply == Reply::Bye {
                bye = true;
                break;
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out) {
                qlog!("client {conn} write failed: {e}");
                break;
            }
            out.clear();
        }
        for _ in 0..written {
            // A reply the reader did not number (none today) has no credit.
            let _ = credit_rx.try_recv();
        }
        if bye || owed.is_some_and(|(lines, _)| next >= lines) {
            break;
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_quit_and_errors_stay_in_the_transport() {
        let help = vec!["PUT key value".to_string()];
        assert_eq!(route(Ok(Request::Help), &help), Route::Reply(Reply::Lines(help.clone())));
        assert_eq!(route(Ok(Request::Quit), &help), Route::Quit);
        let e = ClientError::BadCmd("empty line".into());
        assert_eq!(route(Err(e.clone()), &help), Route::Reply(Reply::Error(e)));
        for request in [
            Request::Get { key: "k".into() },
            Request::Put { key: "k".into(), value: b"v".to_vec() },
            Request::Status,
            Request::Metrics,
        ] {
            assert_eq!(route(Ok(request.clone()), &help), Route::Loop(request));
        }
    }
}
