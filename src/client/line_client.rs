//! `quorumkv client [HOST:PORT]`: an interactive line client (DESIGN §8), the
//! counterpart of the original `client.py`, for machines without `nc`.
//!
//! It reads commands from stdin one line at a time, sends each to the replica
//! and prints the reply before reading the next, so a prompt and its answer
//! never interleave. A reply is one line, except that HELP and METRICS end with
//! a line `END`. Bytes pass through untouched in both directions: values may
//! hold invalid UTF-8, and the client prints exactly what the server sent.
//!
//! Exit codes: 0 after QUIT or at the end of stdin; 1 when the connection
//! cannot be made, breaks, or a reply does not come in time; 2 for bad usage.

use std::fmt;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where the client connects when no address is given: replica 1 of
/// `./run_cluster.sh` with its default base port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7001";

/// How long one connection attempt may take before the next address is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the client waits for the server to send anything while a reply is
/// due. Longer than any server-side request timeout, so a slow quorum shows up
/// as the server's own `ERR TIMEOUT` rather than as a client error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "\
usage: quorumkv client [HOST:PORT]

An interactive line client for one quorumkv replica (default 127.0.0.1:7001;
a bare PORT means 127.0.0.1:PORT). Type one command per line; HELP lists them.
Commands can come from a pipe too:

    printf 'PUT a 1\\nGET a\\n' | quorumkv client 127.0.0.1:7001

Exits 0 after QUIT or at the end of input, 1 when the connection fails, the
server closes it, or a reply takes longer than 30 s.
";

/// Runs the client; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let addr = match parse_args(args) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(message) => {
            eprintln!("quorumkv client: {message}\n\n{USAGE}");
            return 2;
        }
    };
    let stdin = io::stdin();
    let options = Options { prompt: stdin.is_terminal(), addr, reply_timeout: REPLY_TIMEOUT };
    session(&mut stdin.lock(), &mut io::stdout().lock(), &mut io::stderr().lock(), &options)
}

/// What one session needs besides its streams.
#[derive(Clone, Debug)]
struct Options {
    /// `HOST:PORT` as the user gave it; also shown in the prompt.
    addr: String,
    /// Print `quorumkv HOST:PORT> ` before each line (stdin is a terminal).
    prompt: bool,
    /// See [`REPLY_TIMEOUT`]; tests shorten it.
    reply_timeout: Duration,
}

/// The arguments after `client`: `Ok(None)` asks for the usage text.
fn parse_args(args: &[String]) -> Result<Option<String>, String> {
    let mut addr = None;
    for arg in args {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok(None),
            flag if flag.starts_with('-') => return Err(format!("unknown option '{flag}'")),
            _ if addr.is_some() => return Err(format!("unexpected argument '{arg}'")),
            port if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                addr = Some(format!("127.0.0.1:{port}"));
            }
            _ => addr = Some(arg.clone()),
        }
    }
    Ok(Some(addr.unwrap_or_else(|| DEFAULT_ADDR.to_owned())))
}

/// Why a session ended early. Each maps to one stderr line and exit code 1.
#[derive(Debug)]
enum Error {
    /// The address did not resolve or no connection could be made.
    Connect(String, io::Error),
    /// The server closed the connection (or reset it) while a reply was due.
    ServerClosed,
    /// Nothing arrived for this long while a reply was due.
    NoReply(Duration),
    /// Any other socket error.
    Server(io::Error),
    /// Reading stdin failed.
    Stdin(io::Error),
    /// Writing stdout failed (a closed pipe, say).
    Stdout(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(addr, e) => write!(f, "cannot connect to {addr}: {e}"),
            Error::ServerClosed => write!(f, "connection closed by server"),
            Error::NoReply(t) => write!(f, "no reply from the server within {} s", t.as_secs_f64()),
            Error::Server(e) => write!(f, "connection error: {e}"),
            Error::Stdin(e) => write!(f, "cannot read stdin: {e}"),
            Error::Stdout(e) => write!(f, "cannot write stdout: {e}"),
        }
    }
}

/// Socket errors that mean the peer went away, as opposed to a local failure.
fn from_socket(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Error::ServerClosed,
        _ => Error::Server(e),
    }
}

/// Connects, then runs the read-send-print loop; returns the exit code.
fn session(
    input: &mut impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    options: &Options,
) -> i32 {
    let result = connect(&options.addr).and_then(|stream| converse(stream, input, out, options));
    match result {
        Ok(()) => 0,
        // A closed stdout (`quorumkv client | head -1`) is the reader's choice:
        // fail, but do not complain about it.
        Err(Error::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => 1,
        Err(e) => {
            let _ = out.flush();
            let _ = writeln!(err, "{e}");
            1
        }
    }
}

/// Tries each address the name resolves to, in order.
fn connect(addr: &str) -> Result<TcpStream, Error> {
    let fail = |e| Error::Connect(addr.to_owned(), e);
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for socket_addr in addr.to_socket_addrs().map_err(fail)? {
        match TcpStream::connect_timeout(&socket_addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

/// One line from stdin, one request, one reply printed; until QUIT or EOF.
fn converse(
    stream: TcpStream,
    input: &mut impl BufRead,
    out: &mut impl Write,
    options: &Options,
) -> Result<(), Error> {
    stream.set_read_timeout(Some(options.reply_timeout)).map_err(Error::Server)?;
    // Replies are small and request/reply alternate, so Nagle would only add
    // delay to each round trip.
    stream.set_nodelay(true).map_err(Error::Server)?;
    let mut replies = BufReader::new(stream.try_clone().map_err(Error::Server)?);
    let mut requests = stream;
    let mut line = Vec::new();
    loop {
        if options.prompt {
            write!(out, "quorumkv {}> ", options.addr).map_err(Error::Stdout)?;
            out.flush().map_err(Error::Stdout)?;
        }
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(Error::Stdin)? == 0 {
            if options.prompt {
                // Leave the shell's prompt on a line of its own after Ctrl-D.
                writeln!(out).map_err(Error::Stdout)?;
            }
            return Ok(());
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        let command = command_word(&line);
        // An empty line would only earn `ERR BADCMD empty line`; a person who
        // pressed Enter wants a fresh prompt instead.
        if command.is_empty() && line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        requests.write_all(&line).map_err(from_socket)?;
        let quit = command.eq_ignore_ascii_case(b"QUIT");
        let multi_line =
            command.eq_ignore_ascii_case(b"HELP") || command.eq_ignore_ascii_case(b"METRICS");
        match print_reply(&mut replies, out, multi_line, options.reply_timeout) {
            // QUIT is answered with BYE and a close; a close alone is fine too.
            Ok(first) if quit && first.trim_ascii_end() == b"BYE" => return Ok(()),
            Err(Error::ServerClosed) if quit => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The command word of a request line: up to the first space, without the
/// line end.
fn command_word(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.split(|&b| b == b' ').next().unwrap_or(line)
}

/// Copies one reply to `out` and returns its first line. A multi-line reply
/// runs to a line `END`, unless its first line is an `ERR` (HELP with
/// arguments, say), which is then the whole reply.
fn print_reply(
    replies: &mut impl BufRead,
    out: &mut impl Write,
    multi_line: bool,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let first = read_reply_line(replies, out, timeout)?;
    if multi_line && !first.starts_with(b"ERR ") {
        let mut reply_line = first.clone();
        while reply_line.trim_ascii_end() != b"END" {
            reply_line = read_reply_line(replies, out, timeout)?;
        }
    }
    out.flush().map_err(Error::Stdout)?;
    Ok(first)
}

/// Reads one line from the server and writes it, raw, to `out`.
fn read_reply_line(
    replies: &mut impl BufRead,
    out: &mut impl Write,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let mut reply_line = Vec::new();
    let result = replies.read_until(b'\n', &mut reply_line);
    // Whatever arrived is shown, even when the line was cut short.
    out.write_all(&reply_line).map_err(Error::Stdout)?;
    match result {
        Ok(0) => Err(Error::ServerClosed),
        Ok(_) if !reply_line.ends_with(b"\n") => {
            writeln!(out).map_err(Error::Stdout)?;
            Err(Error::ServerClosed)
        }
        Ok(_) => Ok(reply_line),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Err(Error::NoReply(timeout))
        }
        Err(e) => Err(from_socket(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};
    use std::net::TcpListener;
    use std::thread::{self, JoinHandle};

    /// A one-connection stand-in for a replica. It answers by the line it got:
    /// HELP and METRICS with several lines and `END`; `HELP x` with an ERR;
    /// `QUIT` with BYE and a close; `BIN` with invalid UTF-8; `CLOSE` by
    /// closing; `SLOW` not at all; anything else with `OK 1`. It returns every
    /// byte it received.
    fn fake_server() -> (String, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut received = Vec::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).unwrap() == 0 {
                    return received;
                }
                received.extend_from_slice(&line);
                let reply: &[u8] = match line.trim_ascii_end() {
                    b"HELP" | b"help" => b"commands:\nPUT key value\nEND\n",
                    b"METRICS" => b"# TYPE x counter\nx 1\nEND\n",
                    b"HELP x" => b"ERR BADCMD HELP takes no arguments\n",
                    b"QUIT" | b"quit" => {
                        writer.write_all(b"BYE\n").unwrap();
                        return received;
                    }
                    b"BIN" => b"VALUE \xff\xfe\x00 ok\n",
                    b"CLOSE" => return received,
                    b"SLOW" => b"",
                    _ => b"OK 1\n",
                };
                writer.write_all(reply).unwrap();
            }
        });
        (addr, handle)
    }

    /// Runs a session over `input`; returns (exit code, stdout, stderr).
    fn drive(addr: &str, input: &[u8], prompt: bool) -> (i32, Vec<u8>, String) {
        let options = Options { addr: addr.into(), prompt, reply_timeout: Duration::from_secs(5) };
        drive_with(input, &options)
    }

    fn drive_with(input: &[u8], options: &Options) -> (i32, Vec<u8>, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = session(&mut Cursor::new(input.to_vec()), &mut out, &mut err, options);
        (code, out, String::from_utf8(err).unwrap())
    }

    #[test]
    fn piped_commands_print_one_reply_each_and_exit_zero_at_eof() {
        let (addr, server) = fake_server();
        let (code, out, err) = drive(&addr, b"PUT a 1\nGET a\r\n\nSTATUS", false);
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(out, b"OK 1\nOK 1\nOK 1\n");
        // The blank line is skipped, the CR passes through, the last line
        // gets the newline it lacked.
        assert_eq!(server.join().unwrap(), b"PUT a 1\nGET a\r\nSTATUS\n");
    }

    #[test]
    fn help_and_metrics_print_through_end_but_their_errors_are_one_line() {
        let (addr, server) = fake_server();
        let (code, out, _) = drive(&addr, b"help\nHELP x\nMETRICS\nGET a\n", false);
        assert_eq!(code, 0);
        let want = "commands:\nPUT key value\nEND\nERR BADCMD HELP takes no arguments\n\
                    # TYPE x counter\nx 1\nEND\nOK 1\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        server.join().unwrap();
    }

    #[test]
    fn quit_prints_bye_and_sends_nothing_after_it() {
        let (addr, server) = fake_server();
        let (code, out, err) = drive(&addr, b"PUT a 1\nquit\nGET a\n", false);
        assert_eq!((code, out.as_slice(), err.as_str()), (0, b"OK 1\nBYE\n".as_slice(), ""));
        assert_eq!(server.join().unwrap(), b"PUT a 1\nquit\n");
    }

    #[test]
    fn replies_are_written_as_raw_bytes() {
        let (addr, server) = fake_server();
        let (code, out, _) = drive(&addr, b"BIN\n", false);
        assert_eq!((code, out.as_slice()), (0, b"VALUE \xff\xfe\x00 ok\n".as_slice()));
        server.join().unwrap();
    }

    #[test]
    fn a_server_close_is_reported_with_exit_code_one() {
        let (addr, server) = fake_server();
        let (code, out, err) = drive(&addr, b"GET a\nCLOSE\nGET b\n", false);
        assert_eq!((code, out.as_slice()), (1, b"OK 1\n".as_slice()));
        assert_eq!(err, "connection closed by server\n");
        server.join().unwrap();
    }

    #[test]
    fn a_missing_reply_times_out_with_exit_code_one() {
        let (addr, server) = fake_server();
        let options = Options {
            addr: addr.clone(),
            prompt: false,
            reply_timeout: Duration::from_millis(200),
        };
        let (code, _, err) = drive_with(b"SLOW\n", &options);
        assert_eq!((code, err.as_str()), (1, "no reply from the server within 0.2 s\n"));
        server.join().unwrap();
    }

    #[test]
    fn a_terminal_gets_a_prompt_before_each_line() {
        let (addr, server) = fake_server();
        let (code, out, _) = drive(&addr, b"GET a\n", true);
        let prompt = format!("quorumkv {addr}> ");
        assert_eq!(code, 0);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{prompt}OK 1\n{prompt}\n"));
        server.join().unwrap();
    }

    #[test]
    fn an_unreachable_server_is_a_clear_error() {
        // A port that was free a moment ago: nothing listens there now.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let (code, out, err) = drive(&addr, b"GET a\n", false);
        assert_eq!((code, out.as_slice()), (1, b"".as_slice()));
        assert!(err.starts_with(&format!("cannot connect to {addr}: ")), "{err}");
        // No port: refused before any name lookup, so no DNS is needed.
        let (code, _, err) = drive("127.0.0.1", b"", false);
        assert_eq!(code, 1);
        assert!(err.starts_with("cannot connect to 127.0.0.1: "), "{err}");
    }

    #[test]
    fn arguments_pick_the_address_or_the_usage() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&[]), Ok(Some(DEFAULT_ADDR.to_owned())));
        assert_eq!(args(&["10.0.0.2:7005"]), Ok(Some("10.0.0.2:7005".to_owned())));
        assert_eq!(args(&["7003"]), Ok(Some("127.0.0.1:7003".to_owned())));
        assert_eq!(args(&["--help"]), Ok(None));
        assert_eq!(args(&["-h"]), Ok(None));
        assert!(args(&["a:1", "b:2"]).unwrap_err().contains("unexpected argument 'b:2'"));
        assert!(args(&["--port"]).unwrap_err().contains("unknown option '--port'"));
        assert_eq!(run(&["--help".to_owned()]), 0);
        assert_eq!(run(&["--bogus".to_owned()]), 2);
    }
}
