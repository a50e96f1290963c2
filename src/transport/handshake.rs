//! The peer handshake (DESIGN §2): the one line a dialing replica sends before
//! any frame, and the acceptor's one-line answer.
//!
//! ```text
//! dialer:   QKVPEER 1 <from-id> <digest> <cluster-id> <proof> <peer-list>\n
//! acceptor: QKVPEER-OK <own-id>\n   or   QKVPEER-REFUSED <reason>\n
//! ```
//!
//! `1` is the handshake version. `<digest>` is [`super::peers_digest`] of the
//! dialer's `--peers` list; `<peer-list>` is that list comma-joined, sent so a
//! refused digest can be logged with both lists (it is informational and may
//! be left out when the line would grow past [`HANDSHAKE_BYTES_MAX`]).
//! `<cluster-id>` is 0 until formation completes. `<proof>` is reserved for a
//! cluster-key proof and is `-` for now. The checks are pure ([`check_hello`])
//! so every refusal is unit-tested; the socket steps are thin wrappers.

use super::input::{Input, LineEnd};
use crate::protocol::types::ReplicaId;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The first bytes of a peer handshake; anything else on the port is a client.
pub(crate) const PEER_PREFIX: &[u8] = b"QKVPEER ";

/// The handshake version this build speaks.
pub(crate) const HANDSHAKE_VERSION: u32 = 1;

/// Time for a whole handshake: the acceptor reading the line after the prefix
/// arrived, and the dialer waiting for the answer. A live replica answers in
/// well under a millisecond; a SIGSTOPped one never does, so this must be
/// short enough that a dialer gives up and retries promptly.
pub const HANDSHAKE_MS_MAX: u64 = 2_000;

/// Longest handshake line, without the `\n`: room for the peer list of a
/// large cluster, small enough that a hostile line costs little.
pub(crate) const HANDSHAKE_BYTES_MAX: usize = 8 * 1024;

/// Time to establish a TCP connection to a peer. Loopback and LAN connects
/// take microseconds; a blackholed peer must not hold its writer for long.
pub(crate) const CONNECT_MS_MAX: u64 = 1_000;

/// Longest answer line the dialer reads (`QKVPEER-REFUSED` plus a reason).
const ANSWER_BYTES_MAX: usize = 4 * 1024;

const _: () = assert!(HANDSHAKE_BYTES_MAX < super::input::INPUT_BUF_BYTES);
const _: () = assert!(CONNECT_MS_MAX <= HANDSHAKE_MS_MAX);

/// What this replica knows when it checks a handshake.
pub(crate) struct Local<'a> {
    /// This replica's id.
    pub id: ReplicaId,
    /// The `--peers` list as given.
    pub peers: &'a [String],
    /// [`super::peers_digest`] of `peers`.
    pub digest: &'a str,
    /// This replica's cluster id, 0 while not formed.
    pub cluster_id: u64,
}

/// Why a handshake was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// One line for the `QKVPEER-REFUSED` answer and the log.
    pub reason: String,
    /// More for the log only (both peer lists on a digest mismatch).
    pub detail: Option<String>,
}

impl Refusal {
    fn new(reason: String) -> Refusal {
        Refusal { reason, detail: None }
    }
}

/// The handshake line a dialer sends, `\n` included.
pub(crate) fn hello_line(local: &Local) -> String {
    let mut line = format!(
        "QKVPEER {HANDSHAKE_VERSION} {} {} {} -",
        local.id.0, local.digest, local.cluster_id
    );
    let list = local.peers.join(",");
    // The list is informational; a line that would be refused for its length
    // goes without it, and a list with spaces would shift the fields.
    if line.len() + 1 + list.len() <= HANDSHAKE_BYTES_MAX && !list.contains(char::is_whitespace) {
        let _ = write!(line, " {list}");
    }
    line.push('\n');
    line
}

/// Checks one handshake line (without `\n`; a trailing `\r` is allowed).
/// Returns the dialer's proven id, or why it is refused.
pub(crate) fn check_hello(line: &[u8], local: &Local) -> Result<ReplicaId, Refusal> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(Refusal::new("handshake is not valid UTF-8".into()));
    };
    let fields: Vec<&str> = text.split(' ').collect();
    // The version comes first so a newer dialer, whose fields may differ, is
    // told the real problem.
    match fields.get(1).map(|v| v.parse::<u32>()) {
        Some(Ok(HANDSHAKE_VERSION)) => {}
        Some(Ok(v)) => {
            return Err(Refusal::new(format!(
                "handshake version {v} not supported (this replica speaks {HANDSHAKE_VERSION})"
            )))
        }
        _ => return Err(Refusal::new("malformed handshake: no version".into())),
    }
    if fields[0] != "QKVPEER" || !(6..=7).contains(&fields.len()) {
        return Err(Refusal::new(format!("malformed handshake: {} fields", fields.len())));
    }
    let n = local.peers.len();
    let from = match fields[2].parse::<u8>() {
        Ok(k) if (1..=n).contains(&usize::from(k)) => ReplicaId(k),
        _ => return Err(Refusal::new(format!("peer id {} is not in 1..={n}", fields[2]))),
    };
    if from == local.id {
        return Err(Refusal::new(format!(
            "peer id {from} is this replica's own id (two replicas with the same --id?)"
        )));
    }
    if fields[3] != local.digest {
        let theirs = fields.get(6).copied().unwrap_or("(not sent)");
        return Err(Refusal {
            reason: format!(
                "peer list digest {} differs from this replica's {}",
                fields[3], local.digest
            ),
            detail: Some(format!("our --peers {}; theirs {theirs}", local.peers.join(","))),
        });
    }
    let Ok(cluster) = fields[4].parse::<u64>() else {
        return Err(Refusal::new(format!("malformed handshake: cluster id {}", fields[4])));
    };
    if cluster != 0 && local.cluster_id != 0 && cluster != local.cluster_id {
        return Err(Refusal::new(format!(
            "peer {from} belongs to cluster {cluster:016x}, this replica to cluster {:016x}",
            local.cluster_id
        )));
    }
    Ok(from)
}

/// Reads the handshake line once its prefix has arrived, all of it before
/// `deadline`, so a peer that trickles bytes cannot hold the thread longer.
pub(crate) fn read_hello_line(
    input: &mut Input<TcpStream>,
    deadline: Instant,
    out: &mut Vec<u8>,
) -> io::Result<LineEnd> {
    while !input.available().contains(&b'\n') {
        if input.available().len() > HANDSHAKE_BYTES_MAX {
            return Ok(LineEnd::TooLong(input.available().len()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake took too long"));
        }
        input.get_ref().set_read_timeout(Some(left))?;
        if input.fill_more()? == 0 {
            return Ok(LineEnd::Eof);
        }
    }
    // A whole line is buffered now, so this does not block.
    input.read_line(HANDSHAKE_BYTES_MAX, out)
}

/// Connects to `addr`, sends `hello` and waits for `QKVPEER-OK <expect>`.
/// Returns the connected stream, ready for frames, or a one-line reason.
pub(crate) fn dial(addr: &str, expect: ReplicaId, hello: &str) -> Result<TcpStream, String> {
    let stream = connect(addr)?;
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX))))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX))));
    setup.map_err(|e| format!("socket setup: {e}"))?;
    (&stream).write_all(hello.as_bytes()).map_err(|e| format!("sending handshake: {e}"))?;
    let mut input = Input::new(&stream);
    let mut line = Vec::new();
    match input.read_line(ANSWER_BYTES_MAX, &mut line) {
        Ok(LineEnd::Line) => {}
        Ok(LineEnd::TooLong(n)) => return Err(format!("handshake answer of {n} bytes")),
        Ok(LineEnd::Eof) => return Err("closed during handshake".into()),
        Err(e) => return Err(format!("waiting for handshake answer: {e}")),
    }
    let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
    if let Some(reason) = line.strip_prefix("QKVPEER-REFUSED ") {
        return Err(format!("refused: {reason}"));
    }
    match line.strip_prefix("QKVPEER-OK ").map(str::parse::<u8>) {
        Some(Ok(id)) if id == expect.0 => Ok(stream),
        Some(Ok(id)) => Err(format!("reached replica {id}, not {expect} (check --peer-dial)")),
        _ => Err(format!("unexpected handshake answer {line:?}")),
    }
}

/// Resolves `addr` afresh (a name may move) and connects to the first
/// address that answers within [`CONNECT_MS_MAX`].
fn connect(addr: &str) -> Result<TcpStream, String> {
    let addrs = addr.to_socket_addrs().map_err(|e| format!("resolving: {e}"))?;
    let mut last = format!("{addr} resolves to no address");
    for sock in addrs {
        match TcpStream::connect_timeout(&sock, Duration::from_millis(CONNECT_MS_MAX)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connecting: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<String> {
        vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into(), "127.0.0.1:7003".into()]
    }

    fn check(line: &str, cluster_id: u64) -> Result<ReplicaId, Refusal> {
        let peers = peers();
        let digest = super::super::peers_digest(&peers);
        let local = Local { id: ReplicaId(1), peers: &peers, digest: &digest, cluster_id };
        check_hello(line.as_bytes(), &local)
    }

    fn reason(r: Result<ReplicaId, Refusal>) -> String {
        r.expect_err("refused").reason
    }

    #[test]
    fn hello_from_a_peer_with_the_same_list_is_accepted() {
        let peers = peers();
        let digest = super::super::peers_digest(&peers);
        let dialer = Local { id: ReplicaId(3), peers: &peers, digest: &digest, cluster_id: 9 };
        let line = hello_line(&dialer);
        assert!(
            line.starts_with("QKVPEER 1 3 ")
                && line.ends_with(" 9 - 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003\n"),
            "{line}"
        );
        let line = line.trim_end_matches('\n');
        assert_eq!(check(line, 0), Ok(ReplicaId(3)));
        assert_eq!(check(line, 9), Ok(ReplicaId(3)));
        let without_list = line.rsplit_once(' ').unwrap().0.to_string() + "\r";
        assert_eq!(check(&without_list, 9), Ok(ReplicaId(3)));
    }

    #[test]
    fn every_bad_handshake_is_refused_with_its_reason() {
        let digest = super::super::peers_digest(&peers());
        let r = reason(check(&format!("QKVPEER 2 3 {digest} 0 - x y z"), 0));
        assert!(r.contains("version 2 not supported"), "{r}");
        assert!(reason(check("QKVPEER x", 0)).contains("no version"));
        assert!(reason(check(&format!("QKVPEER 1 3 {digest} 0"), 0)).contains("malformed"));
        assert!(reason(check(&format!("QKVPEER 1 4 {digest} 0 -"), 0)).contains("not in 1..=3"));
        assert!(reason(check(&format!("QKVPEER 1 0 {digest} 0 -"), 0)).contains("not in 1..=3"));
        assert!(reason(check(&format!("QKVPEER 1 1 {digest} 0 -"), 0)).contains("own id"));
        assert!(reason(check(&format!("QKVPEER 1 2 {digest} zz -"), 0)).contains("cluster id"));
        assert!(check_hello(
            b"QKVPEER 1 \xff",
            &Local { id: ReplicaId(1), peers: &peers(), digest: &digest, cluster_id: 0 }
        )
        .is_err());
    }

    #[test]
    fn digest_mismatch_names_both_lists() {
        let refusal = check("QKVPEER 1 2 0123456789abcdef 0 - a:1,b:2", 0).unwrap_err();
        assert!(refusal.reason.contains("0123456789abcdef"), "{}", refusal.reason);
        let detail = refusal.detail.unwrap();
        assert!(detail.contains("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"), "{detail}");
        assert!(detail.contains("theirs a:1,b:2"), "{detail}");
    }

    #[test]
    fn different_cluster_ids_are_refused_naming_both() {
        let digest = super::super::peers_digest(&peers());
        let r = reason(check(&format!("QKVPEER 1 2 {digest} 10 -"), 11));
        assert!(r.contains(&format!("{:016x}", 10)) && r.contains(&format!("{:016x}", 11)), "{r}");
        // Either side not formed yet: accepted (formation settles it).
        assert_eq!(check(&format!("QKVPEER 1 2 {digest} 0 -"), 11), Ok(ReplicaId(2)));
        assert_eq!(check(&format!("QKVPEER 1 2 {digest} 10 -"), 0), Ok(ReplicaId(2)));
    }
}
