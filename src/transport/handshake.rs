//! The peer handshake (DESIGN §2): the lines a dialing replica and the
//! acceptor exchange before any frame.
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
//! `<cluster-id>` is 0 until formation completes.
//!
//! `<proof>` says whether the dialer holds a cluster key: `-` (none) or
//! `hmac-sha256`. A replica started with `--cluster-key-file` refuses a
//! dialer without one, and one without a key refuses a dialer that has one,
//! so a half-configured cluster says what is wrong. When both hold a key, the
//! acceptor challenges before it answers:
//!
//! ```text
//! acceptor: QKVPEER-CHALLENGE <nonce: 32 hex digits, fresh per connection>\n
//! dialer:   QKVPEER-PROOF <64 hex digits>\n
//! ```
//!
//! The proof is HMAC-SHA256 under the key of a domain tag, the nonce, both ids
//! and the digest ([`cluster_key_proof`]); the acceptor compares it in constant
//! time. A fresh nonce per connection makes a recorded proof useless on the
//! next one, and the ids in the MAC stop a proof made for one link from
//! opening another. This is authentication only: frames travel in clear text,
//! unsigned, after the handshake (see the README's operations guide).
//!
//! The whole acceptor side, challenge included, must finish within
//! [`HANDSHAKE_MS_MAX`]. The checks are pure ([`check_hello`],
//! [`check_proof`]) so every refusal is unit-tested; the socket steps are thin
//! wrappers.

use super::input::{Input, LineEnd};
use crate::protocol::types::ReplicaId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
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

/// Bytes of the acceptor's challenge nonce: 128 random bits never repeat in
/// practice, so no proof is ever valid twice.
pub const NONCE_BYTES: usize = 16;

/// Bytes of an HMAC-SHA256 proof.
const PROOF_BYTES: usize = 32;

/// The `<proof>` field of a dialer with a cluster key.
const PROOF_MODE_KEY: &str = "hmac-sha256";

/// The `<proof>` field of a dialer without one.
const PROOF_MODE_NONE: &str = "-";

/// Separates this MAC's input from any other use of the same key.
const PROOF_DOMAIN: &[u8] = b"quorumkv peer handshake v1\0";

/// Shortest key the replica accepts without a warning in the log.
pub(crate) const CLUSTER_KEY_BYTES_MIN: usize = 16;

/// The shared secret of `--cluster-key-file`. `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterKey(Arc<[u8]>);

impl ClusterKey {
    /// A key of these bytes.
    pub fn new(bytes: &[u8]) -> ClusterKey {
        ClusterKey(bytes.into())
    }

    /// Reads the key file: its bytes, less trailing ASCII whitespace (so
    /// `openssl rand -hex 32 > key` and an editor's final newline give the
    /// same key on every host). An empty key is an error.
    pub fn from_file(path: &Path) -> io::Result<ClusterKey> {
        let bytes = std::fs::read(path)?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        if end == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the key file holds no key"));
        }
        Ok(ClusterKey::new(&bytes[..end]))
    }

    /// Bytes of key material.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a key from [`ClusterKey::from_file`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes, not shown)", self.0.len())
    }
}

/// Feeds the proof's message into `mac`: domain tag, nonce, dialer id,
/// acceptor id, peer-list digest.
fn proof_input(
    mut mac: Hmac<Sha256>,
    nonce: &[u8; NONCE_BYTES],
    from: ReplicaId,
    to: ReplicaId,
    digest: &str,
) -> Hmac<Sha256> {
    mac.update(PROOF_DOMAIN);
    mac.update(nonce);
    mac.update(&[from.0, to.0]);
    mac.update(digest.as_bytes());
    mac
}

/// The proof a dialer `from` sends to acceptor `to` for `nonce`, as hex:
/// HMAC-SHA256(key, domain || nonce || from || to || digest).
pub fn cluster_key_proof(
    key: &ClusterKey,
    nonce: &[u8; NONCE_BYTES],
    from: ReplicaId,
    to: ReplicaId,
    digest: &str,
) -> String {
    let tag = proof_input(key.mac(), nonce, from, to, digest).finalize().into_bytes();
    to_hex(&tag)
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Bytes of a hex string (either case); `None` unless it is exactly `N` bytes.
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// A fresh challenge nonce from the OS-seeded thread RNG.
pub(crate) fn new_nonce() -> [u8; NONCE_BYTES] {
    rand::random()
}

/// The challenge line the acceptor sends, `\n` included.
pub(crate) fn challenge_line(nonce: &[u8; NONCE_BYTES]) -> String {
    format!("QKVPEER-CHALLENGE {}\n", to_hex(nonce))
}

/// Checks the dialer's proof line (without `\n`) for the challenge `nonce`;
/// `from` is the id its hello line named. Compares in constant time.
pub(crate) fn check_proof(
    line: &[u8],
    key: &ClusterKey,
    nonce: &[u8; NONCE_BYTES],
    from: ReplicaId,
    local: &Local,
) -> Result<(), Refusal> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let proof = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("QKVPEER-PROOF "))
        .and_then(from_hex::<PROOF_BYTES>)
        .ok_or_else(|| Refusal::new(format!("malformed cluster key proof from r{from}")))?;
    proof_input(key.mac(), nonce, from, local.id, local.digest).verify_slice(&proof).map_err(|_| {
        Refusal::new(format!(
            "cluster key proof from r{from} does not match (another --cluster-key-file?)"
        ))
    })
}

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
    /// The cluster key, when this replica was started with one.
    pub key: Option<&'a ClusterKey>,
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
    let proof = if local.key.is_some() { PROOF_MODE_KEY } else { PROOF_MODE_NONE };
    let mut line = format!(
        "QKVPEER {HANDSHAKE_VERSION} {} {} {} {proof}",
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
/// Returns the dialer's claimed id, or why it is refused. With a cluster key
/// the id is proven only once [`check_proof`] passes too.
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
    match (fields[5], local.key.is_some()) {
        (PROOF_MODE_NONE, false) | (PROOF_MODE_KEY, true) => Ok(from),
        (PROOF_MODE_NONE, true) => Err(Refusal::new(format!(
            "peer r{from} has no cluster key; this replica requires one (--cluster-key-file)"
        ))),
        (PROOF_MODE_KEY, false) => Err(Refusal::new(format!(
            "peer r{from} has a cluster key; this replica was started without --cluster-key-file"
        ))),
        (other, _) => Err(Refusal::new(format!("malformed handshake: proof field {other:?}"))),
    }
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

/// Connects to `addr`, sends the hello line for `local`, answers a
/// challenge with the cluster key's proof, and waits for `QKVPEER-OK
/// <expect>`. Returns the connected stream, ready for frames, or a one-line
/// reason.
pub(crate) fn dial(addr: &str, expect: ReplicaId, local: &Local) -> Result<TcpStream, String> {
    let stream = connect(addr)?;
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX))))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX))));
    setup.map_err(|e| format!("socket setup: {e}"))?;
    let hello = hello_line(local);
    (&stream).write_all(hello.as_bytes()).map_err(|e| format!("sending handshake: {e}"))?;
    let mut input = Input::new(&stream);
    let mut line = read_answer(&mut input)?;
    if let Some(nonce) = line.strip_prefix("QKVPEER-CHALLENGE ") {
        let key = local.key.ok_or_else(|| {
            "the peer asks for a cluster key proof; start this replica with --cluster-key-file"
                .to_string()
        })?;
        let nonce = from_hex::<NONCE_BYTES>(nonce)
            .ok_or_else(|| format!("malformed handshake challenge {line:?}"))?;
        let proof = cluster_key_proof(key, &nonce, local.id, expect, local.digest);
        (&stream)
            .write_all(format!("QKVPEER-PROOF {proof}\n").as_bytes())
            .map_err(|e| format!("sending the key proof: {e}"))?;
        line = read_answer(&mut input)?;
    }
    if let Some(reason) = line.strip_prefix("QKVPEER-REFUSED ") {
        return Err(format!("refused: {reason}"));
    }
    match line.strip_prefix("QKVPEER-OK ").map(str::parse::<u8>) {
        Some(Ok(id)) if id == expect.0 => Ok(stream),
        Some(Ok(id)) => Err(format!("reached replica {id}, not {expect} (check --peer-dial)")),
        _ => Err(format!("unexpected handshake answer {line:?}")),
    }
}

/// Reads one handshake answer line from the acceptor, lossily as text.
fn read_answer(input: &mut Input<&TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    match input.read_line(ANSWER_BYTES_MAX, &mut line) {
        Ok(LineEnd::Line) => {}
        Ok(LineEnd::TooLong(n)) => return Err(format!("handshake answer of {n} bytes")),
        Ok(LineEnd::Eof) => return Err("closed during handshake".into()),
        Err(e) => return Err(format!("waiting for handshake answer: {e}")),
    }
    Ok(String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned())
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
        let local =
            Local { id: ReplicaId(1), peers: &peers, digest: &digest, cluster_id, key: None };
        check_hello(line.as_bytes(), &local)
    }

    fn reason(r: Result<ReplicaId, Refusal>) -> String {
        r.expect_err("refused").reason
    }

    #[test]
    fn hello_from_a_peer_with_the_same_list_is_accepted() {
        let peers = peers();
        let digest = super::super::peers_digest(&peers);
        let dialer =
            Local { id: ReplicaId(3), peers: &peers, digest: &digest, cluster_id: 9, key: None };
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
            &Local { id: ReplicaId(1), peers: &peers(), digest: &digest, cluster_id: 0, key: None }
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

    fn keyed<'a>(id: u8, peers: &'a [String], digest: &'a str, key: &'a ClusterKey) -> Local<'a> {
        Local { id: ReplicaId(id), peers, digest, cluster_id: 0, key: Some(key) }
    }

    #[test]
    fn key_mode_must_match_on_both_sides() {
        let peers = peers();
        let digest = super::super::peers_digest(&peers);
        let key = ClusterKey::new(b"0123456789abcdef0123456789abcdef");
        let with_key = hello_line(&keyed(2, &peers, &digest, &key));
        assert!(with_key.contains(" 0 hmac-sha256 "), "{with_key}");
        let with_key = with_key.trim_end();
        let acceptor = keyed(1, &peers, &digest, &key);
        assert_eq!(check_hello(with_key.as_bytes(), &acceptor), Ok(ReplicaId(2)));
        let r = reason(check(with_key, 0));
        assert!(r.contains("started without --cluster-key-file"), "{r}");
        let r = check_hello(format!("QKVPEER 1 2 {digest} 0 -").as_bytes(), &acceptor);
        assert!(reason(r).contains("requires one (--cluster-key-file)"));
        let r = check_hello(format!("QKVPEER 1 2 {digest} 0 md5").as_bytes(), &acceptor);
        assert!(reason(r).contains("proof field"));
    }

    #[test]
    fn proof_binds_key_nonce_ids_and_digest() {
        let peers = peers();
        let digest = super::super::peers_digest(&peers);
        let key = ClusterKey::new(b"the right key, 32 bytes long....");
        let acceptor = keyed(1, &peers, &digest, &key);
        let nonce = [7u8; NONCE_BYTES];
        let line = |proof: String| format!("QKVPEER-PROOF {proof}");
        let good = line(cluster_key_proof(&key, &nonce, ReplicaId(2), ReplicaId(1), &digest));
        assert_eq!(check_proof(good.as_bytes(), &key, &nonce, ReplicaId(2), &acceptor), Ok(()));
        assert_eq!(
            check_proof((good.clone() + "\r").as_bytes(), &key, &nonce, ReplicaId(2), &acceptor),
            Ok(())
        );
        let wrong = [
            cluster_key_proof(
                &ClusterKey::new(b"another key"),
                &nonce,
                ReplicaId(2),
                ReplicaId(1),
                &digest,
            ),
            cluster_key_proof(&key, &[8u8; NONCE_BYTES], ReplicaId(2), ReplicaId(1), &digest),
            cluster_key_proof(&key, &nonce, ReplicaId(3), ReplicaId(1), &digest),
            cluster_key_proof(&key, &nonce, ReplicaId(2), ReplicaId(3), &digest),
            cluster_key_proof(&key, &nonce, ReplicaId(2), ReplicaId(1), "0000000000000000"),
        ];
        for proof in wrong {
            let r = check_proof(line(proof).as_bytes(), &key, &nonce, ReplicaId(2), &acceptor);
            assert!(reason(r.map(|()| ReplicaId(2))).contains("does not match"));
        }
        let zeros = "0".repeat(64);
        for bad in
            ["QKVPEER-PROOF", "QKVPEER-PROOF xyz", "proof", &format!("QKVPEER-PROOF {zeros}0")]
        {
            let r = check_proof(bad.as_bytes(), &key, &nonce, ReplicaId(2), &acceptor);
            assert!(reason(r.map(|()| ReplicaId(2))).contains("malformed"), "{bad}");
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_digits() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex::<4>("0001ABff"), Some(bytes));
        assert_eq!(from_hex::<4>("0001abf"), None);
        assert_eq!(from_hex::<4>("0001abfg"), None);
        assert_eq!(from_hex::<2>("+1+1"), None);
        let nonce = [0x5au8; NONCE_BYTES];
        assert_eq!(challenge_line(&nonce), format!("QKVPEER-CHALLENGE {}\n", "5a".repeat(16)));
    }

    #[test]
    fn key_file_trailing_whitespace_is_ignored_and_debug_hides_the_key() {
        let dir = std::env::temp_dir().join(format!("qkv-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, empty) = (dir.join("a"), dir.join("b"), dir.join("empty"));
        std::fs::write(&a, "s3cret-key-material\n").unwrap();
        std::fs::write(&b, "s3cret-key-material").unwrap();
        std::fs::write(&empty, " \r\n").unwrap();
        let (ka, kb) = (ClusterKey::from_file(&a).unwrap(), ClusterKey::from_file(&b).unwrap());
        let nonce = [1u8; NONCE_BYTES];
        let proof = |k: &ClusterKey| cluster_key_proof(k, &nonce, ReplicaId(1), ReplicaId(2), "d");
        assert_eq!(proof(&ka), proof(&kb));
        assert_eq!(ka.len(), 19);
        assert!(!format!("{ka:?}").contains("s3cret"));
        assert!(ClusterKey::from_file(&empty).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
