//! One client connection (DESIGN §8): the reader cuts and parses lines; the
//! replies go back in order through [`ClientOut`], written by the loop while
//! the client keeps up and by the connection's writer thread otherwise.

use super::input::{Input, LineEnd};
use super::outbox::{ClientOut, WriterTurn};
use super::{is_timeout, ConnId, Event, Shared, Slot, TransportStats, CLIENT_DRAIN_MS_MAX};
use crate::client::{parse, ClientError, Reply, Request};
use crate::qlog;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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

/// Whether a request reads or writes the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

impl Kind {
    /// `None` for requests that neither read nor write keys (STATUS, METRICS).
    fn of(request: &Request) -> Option<Kind> {
        match request {
            Request::Get { .. } | Request::GetV { .. } | Request::Dump => Some(Kind::Read),
            Request::Put { .. } | Request::Del { .. } | Request::Cas { .. } => Some(Kind::Write),
            _ => None,
        }
    }
}

/// The line numbers of the last read and the last write sent to the loop.
#[derive(Default)]
struct Kinds {
    read: Option<u64>,
    write: Option<u64>,
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
        .and_then(|()| stream.try_clone())
        .and_then(ClientOut::new);
    let out = match setup {
        Ok(out) => Arc::new(out),
        Err(e) => {
            qlog!("client {addr} dropped: {e}");
            return;
        }
    };
    let writer_out = Arc::clone(&out);
    let writer = thread::Builder::new()
        .name(format!("client writer {conn}"))
        .spawn(move || write_replies(&writer_out, conn));
    let writer = match writer {
        Ok(handle) => handle,
        Err(e) => {
            qlog!("client {addr} dropped: cannot spawn a thread: {e}");
            return;
        }
    };
    let open = Event::ClientOpen { conn, out: Arc::clone(&out) };
    let stats = &shared.stats;
    TransportStats::bump(&stats.clients_total);
    stats.clients_open.fetch_add(1, Ordering::Relaxed);
    let end = match shared.events_tx.send(open) {
        Ok(()) => read_commands(&mut input, conn, addr, &out, shared),
        Err(_) => ReaderEnd::Abort,
    };
    match end {
        ReaderEnd::Graceful(lines) => out.finish(lines),
        ReaderEnd::Abort => {
            let _ = input.get_ref().shutdown(Shutdown::Both);
            out.abort();
        }
    }
    if writer.join().is_err() {
        qlog!("client {conn} writer panicked");
    }
    stats.clients_open.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
    let _ = shared.events_tx.send(Event::ClientClosed { conn });
}

/// Reads, numbers and routes lines until EOF, QUIT or an error. Each line
/// takes a credit first (see [`CLIENT_INFLIGHT_MAX`]).
fn read_commands(
    input: &mut Input<TcpStream>,
    conn: ConnId,
    addr: SocketAddr,
    out: &ClientOut,
    shared: &Shared,
) -> ReaderEnd {
    let limits = &shared.limits;
    let stats = &shared.stats;
    let mut line = Vec::new();
    let mut seq = 0u64;
    // The last line sent to the loop that reads the store, and the last
    // that writes it.
    let mut last = Kinds::default();
    loop {
        let read = input.read_line(limits.line_bytes_max, &mut line);
        if matches!(read, Ok(LineEnd::Line | LineEnd::TooLong(_))) {
            match out.take_credit(CLIENT_INFLIGHT_MAX) {
                Some(waited) => {
                    if waited {
                        TransportStats::bump(&stats.inflight_waits);
                    }
                }
                // The client stopped reading long enough for a write to time out.
                None => return ReaderEnd::Abort,
            }
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
                    out.reader_reply(seq, Reply::Bye);
                    return ReaderEnd::Graceful(seq + 1);
                }
                Route::Loop(request) => {
                    // A read waits for the writes sent before it on this
                    // connection, and a write for the reads: each sees
                    // exactly what came before it. Requests of one kind
                    // still run side by side.
                    let kind = Kind::of(&request);
                    let before = match kind {
                        Some(Kind::Read) => last.write,
                        Some(Kind::Write) => last.read,
                        None => None,
                    };
                    if let Some(earlier) = before {
                        if !out.wait_answered(earlier) {
                            return ReaderEnd::Abort;
                        }
                    }
                    match kind {
                        Some(Kind::Read) => last.read = Some(seq),
                        Some(Kind::Write) => last.write = Some(seq),
                        None => {}
                    }
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
        out.reader_reply(seq, reply);
        seq += 1;
    }
}

/// The writer thread: writes the replies the loop leaves to it (see
/// [`ClientOut`]). Ends once every line the reader counted is answered,
/// after `BYE`, when the connection fails or is aborted, on a write error,
/// or [`CLIENT_DRAIN_MS_MAX`] after the reader ended. A write waits at most
/// [`CLIENT_WRITE_MS_MAX`] for a client that does not read.
fn write_replies(out: &ClientOut, conn: ConnId) {
    let mut stream = out.stream();
    let mut deadline = None;
    let mut timeout_set = false;
    while let WriterTurn::Write(bytes, replies) =
        out.writer_turn(CLIENT_DRAIN_MS_MAX, &mut deadline)
    {
        let timeout = Some(Duration::from_millis(CLIENT_WRITE_MS_MAX));
        let set = if timeout_set { Ok(()) } else { stream.set_write_timeout(timeout) };
        timeout_set = true;
        if let Err(e) = set.and_then(|()| stream.write_all(&bytes)) {
            qlog!("client {conn} write failed: {e}");
            out.written(replies, false);
            break;
        }
        out.written(replies, true);
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
