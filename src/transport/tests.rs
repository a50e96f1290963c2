//! Transport tests over real sockets on 127.0.0.1, ephemeral ports only.
//! Every wait is a bounded `recv_timeout` or socket read timeout, never a
//! sleep used as synchronisation.

use super::*;
use crate::client::Reply;
use crate::mailbox::{self, Receiver};
use crate::protocol::message::PeerMsg;
use crate::protocol::types::{Epoch, Formation, Incarnation};
use crate::wire;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Upper bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(3);

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn addr_of(l: &TcpListener) -> String {
    l.local_addr().unwrap().to_string()
}

fn config(id: u8, peers: &[String], dial: &[(u8, &str)]) -> TransportConfig {
    TransportConfig {
        id: ReplicaId(id),
        listen: peers[usize::from(id) - 1].clone(),
        peers: peers.to_vec(),
        dial: dial.iter().map(|&(k, a)| (ReplicaId(k), a.to_string())).collect(),
        cluster_id: Arc::new(AtomicU64::new(0)),
        limits: Limits::default(),
        clients_max: 8,
        idle_timeout_ms: 0,
        help_lines: vec!["HELP".into()],
        peer_queue_max: 64,
        peer_queue_bytes_max: 64 << 20,
        cluster_key: None,
    }
}

/// The event side of one started transport, keeping events a test has not
/// asked for yet so waits can come in any order.
struct Events {
    rx: Receiver<Event>,
    stash: Vec<Event>,
}

impl Events {
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(e) if pred(&e) => return e,
                Ok(e) => self.stash.push(e),
                Err(_) => panic!("no {what} within {WAIT:?}; saw {:?}", self.stash),
            }
        }
    }

    fn client_open(&mut self) -> (ConnId, Arc<ClientOut>) {
        match self.wait_for("ClientOpen", |e| matches!(e, Event::ClientOpen { .. })) {
            Event::ClientOpen { conn, out } => (conn, out),
            _ => unreachable!(),
        }
    }
}

fn start_with(listener: TcpListener, cfg: TransportConfig) -> (PeerSenders, Events) {
    let (tx, rx) = mailbox::bounded(256);
    let senders = start_on(listener, cfg, tx).unwrap();
    (senders, Events { rx, stash: Vec::new() })
}

/// Sends one frame and flushes it, as the loop does at the end of a turn.
fn send_now(senders: &mut PeerSenders, to: ReplicaId, env: &Envelope) -> bool {
    let queued = senders.send(to, &wire::encode(env));
    senders.flush();
    queued
}

/// A transport with no peers to dial, for client and inbound tests.
fn lone(limits: Limits, clients_max: usize, idle_timeout_ms: u64) -> (String, Events, Vec<String>) {
    let l = listener();
    let peers = vec![addr_of(&l), "127.0.0.1:1".into(), "127.0.0.1:2".into()];
    let mut cfg = config(1, &peers, &[]);
    cfg.limits = limits;
    cfg.clients_max = clients_max;
    cfg.idle_timeout_ms = idle_timeout_ms;
    let (_senders, events) = start_with(l, cfg);
    (peers[0].clone(), events, peers)
}

fn envelope(from: u8, seq: u64) -> Envelope {
    Envelope {
        from: ReplicaId(from),
        incarnation: Incarnation { counter: 1, nonce: 7 },
        epoch: Epoch(3),
        formation: Formation::Blank,
        learner: false,
        msg: PeerMsg::Heartbeat { epoch: Epoch(3), seq, progress: None },
    }
}

/// A raw connection speaking the client text protocol.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Conn { reader: BufReader::new(stream) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).unwrap();
        assert!(buf.ends_with(b"\n"), "connection ended mid-line: {buf:?}");
        String::from_utf8_lossy(&buf).trim_end_matches('\n').to_string()
    }

    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "expected EOF, got {rest:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}

/// Connects as peer `from` with a correct handshake and returns the socket.
fn fake_peer(addr: &str, from: u8, peers: &[String]) -> Conn {
    let mut conn = Conn::open(addr);
    let digest = peers_digest(peers);
    conn.send(format!("QKVPEER 1 {from} {digest} 0 -\n").as_bytes());
    assert_eq!(conn.line(), "QKVPEER-OK 1");
    conn
}

#[test]
fn two_transports_link_up_and_exchange_frames() {
    let (la, lb) = (listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&lb)];
    let (mut a, mut a_events) = start_with(la, config(1, &peers, &[(2, &peers[1])]));
    let (mut b, mut b_events) = start_with(lb, config(2, &peers, &[(1, &peers[0])]));
    a_events.wait_for("LinkUp(2)", |e| matches!(e, Event::LinkUp(ReplicaId(2))));
    b_events.wait_for("LinkUp(1)", |e| matches!(e, Event::LinkUp(ReplicaId(1))));

    for seq in 0..3 {
        assert!(send_now(&mut a, ReplicaId(2), &envelope(1, seq)));
    }
    for seq in 0..3 {
        let got = b_events.wait_for("a frame from 1", |e| matches!(e, Event::Peer(_)));
        assert!(matches!(got, Event::Peer(env) if env == envelope(1, seq)));
    }
    assert!(send_now(&mut b, ReplicaId(1), &envelope(2, 9)));
    let got = a_events.wait_for("a frame from 2", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(2, 9)));

    assert!(!send_now(&mut a, ReplicaId(7), &envelope(1, 0)));
    assert_eq!(a.dropped(), 1);
}

#[test]
fn wrong_digest_is_refused_and_the_port_still_serves_clients() {
    let (addr, mut events, peers) = lone(Limits::default(), 8, 0);
    let mut peer = Conn::open(&addr);
    peer.send(b"QKVPEER 1 2 0000000000000000 0 - other:1,list:2\n");
    let answer = peer.line();
    assert!(answer.starts_with("QKVPEER-REFUSED peer list digest 0000000000000000"), "{answer}");
    peer.expect_eof();

    let mut future = Conn::open(&addr);
    future.send(b"QKVPEER 2 2 x 0 - extra fields\n");
    assert!(future.line().contains("version 2 not supported"));

    let mut client = Conn::open(&addr);
    client.send(b"xyzzy\n");
    events.client_open();
    assert!(client.line().starts_with("ERR BADCMD"));

    // A correct handshake is still accepted afterwards.
    fake_peer(&addr, 3, &peers);
}

#[test]
fn replies_are_written_in_seq_order() {
    let (addr, mut events, _) = lone(Limits::default(), 8, 0);
    let mut client = Conn::open(&addr);
    client.send(b"xyzzy\n");
    let (conn, out) = events.client_open();
    // Seq 0 is the parser's error; the loop's answers arrive out of order.
    out.reply(3, Reply::Written(3));
    out.reply(2, Reply::NotFound);
    out.flush();
    out.reply(1, Reply::Value(b"a b".to_vec()));
    out.flush();
    assert!(client.line().starts_with("ERR BADCMD"));
    assert_eq!(client.line(), "VALUE a b");
    assert_eq!(client.line(), "NOTFOUND");
    assert_eq!(client.line(), "OK 3");
    out.reply(4, Reply::Bye);
    out.flush();
    assert_eq!(client.line(), "BYE");
    client.expect_eof();
    events.wait_for("ClientClosed", |e| matches!(e, Event::ClientClosed { conn: c } if *c == conn));
}

#[test]
fn overlong_line_gets_toolarge_and_the_connection_stays_usable() {
    let limits = Limits { line_bytes_max: 32, ..Limits::default() };
    let (addr, _events, _) = lone(limits, 8, 0);
    let mut client = Conn::open(&addr);
    let mut bytes = b"xyzzy\n".to_vec();
    bytes.extend(vec![b'a'; 100_000]);
    bytes.extend_from_slice(b"\nxyzzy\r\n");
    client.send(&bytes);
    assert!(client.line().starts_with("ERR BADCMD"));
    assert_eq!(client.line(), "ERR TOOLARGE line 100000 > 32 (--max-line-bytes)");
    assert!(client.line().starts_with("ERR BADCMD"));

    // An overlong first line, too.
    let mut first = Conn::open(&addr);
    first.send(&[b'P'; 40]);
    first.send(b"\n");
    assert_eq!(first.line(), "ERR TOOLARGE line 40 > 32 (--max-line-bytes)");
}

#[test]
fn invalid_utf8_nul_and_garbage_get_error_replies() {
    let (addr, _events, _) = lone(Limits::default(), 8, 0);
    let mut client = Conn::open(&addr);
    client.send(b"\xff\xfe\x00\n\x00\x00\n\n\r\n\x00\x00\x00\x05\x01{}\n");
    for _ in 0..5 {
        assert!(client.line().starts_with("ERR "));
    }
    // Frame-looking bytes first on the port make a client, not a peer.
    let mut framey = Conn::open(&addr);
    let mut bytes = wire::encode(&envelope(2, 0));
    bytes.push(b'\n');
    framey.send(&bytes);
    assert!(framey.line().starts_with("ERR "));
}

#[test]
fn connection_limit_answers_busy() {
    let (addr, mut events, peers) = lone(Limits::default(), 1, 0);
    let mut first = Conn::open(&addr);
    first.send(b"xyzzy\n");
    let (conn, _out) = events.client_open();
    assert!(first.line().starts_with("ERR BADCMD"));

    let mut second = Conn::open(&addr);
    second.send(b"xyzzy\n");
    assert_eq!(second.line(), "ERR BUSY too many client connections (1 >= --max-clients 1)");
    second.expect_eof();

    // Peers still get in while clients fill the limit.
    fake_peer(&addr, 2, &peers);

    drop(first);
    events.wait_for("ClientClosed", |e| matches!(e, Event::ClientClosed { conn: c } if *c == conn));
    let mut third = Conn::open(&addr);
    third.send(b"xyzzy\n");
    assert!(third.line().starts_with("ERR BADCMD"));
}

#[test]
fn half_closed_client_still_gets_its_replies() {
    let (addr, mut events, _) = lone(Limits::default(), 8, 0);
    let mut client = Conn::open(&addr);
    client.send(b"xyzzy\nxyzzy\n");
    client.reader.get_ref().shutdown(Shutdown::Write).unwrap();
    events.client_open();
    assert!(client.line().starts_with("ERR BADCMD"));
    assert!(client.line().starts_with("ERR BADCMD"));
    client.expect_eof();
}

#[test]
fn idle_client_is_closed() {
    let (addr, mut events, _) = lone(Limits::default(), 8, 100);
    let mut client = Conn::open(&addr);
    client.send(b"xyzzy\n");
    let (conn, _out) = events.client_open();
    assert!(client.line().starts_with("ERR BADCMD"));
    client.expect_eof();
    events.wait_for("ClientClosed", |e| matches!(e, Event::ClientClosed { conn: c } if *c == conn));
}

#[test]
fn bad_frames_close_only_their_own_link() {
    let (la, lb) = (listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&lb), "127.0.0.1:1".into()];
    let (_a, mut a_events) = start_with(la, config(1, &peers, &[]));
    let (mut b, mut b_events) = start_with(lb, config(2, &peers, &[(1, &peers[0])]));
    b_events.wait_for("LinkUp(1)", |e| matches!(e, Event::LinkUp(ReplicaId(1))));

    let mut fake = fake_peer(&peers[0], 3, &peers);
    fake.send(&wire::encode(&envelope(2, 0))); // claims another sender: dropped
    fake.send(&wire::encode(&envelope(3, 1)));
    let got = a_events.wait_for("a frame from 3", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(3, 1)));
    let frame = wire::encode(&envelope(3, 2));
    fake.send(&frame[..10]);
    fake.reader.get_ref().shutdown(Shutdown::Write).unwrap();
    a_events.wait_for("LinkDown(3)", |e| matches!(e, Event::LinkDown(ReplicaId(3))));

    let mut newer = fake_peer(&peers[0], 3, &peers);
    let mut frame = wire::encode(&envelope(3, 3));
    frame[4] = wire::WIRE_VERSION + 1;
    newer.send(&frame);
    a_events.wait_for("LinkDown(3)", |e| matches!(e, Event::LinkDown(ReplicaId(3))));

    // The link from 2 is untouched.
    assert!(send_now(&mut b, ReplicaId(1), &envelope(2, 4)));
    let got = a_events.wait_for("a frame from 2", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(2, 4)));
    assert!(!a_events.stash.iter().any(|e| matches!(e, Event::LinkDown(ReplicaId(2)))));
}

#[test]
fn newer_inbound_link_replaces_the_old_one_quietly() {
    let (addr, mut events, peers) = lone(Limits::default(), 8, 0);
    let mut old = fake_peer(&addr, 2, &peers);
    let mut new = fake_peer(&addr, 2, &peers);
    old.expect_eof();
    new.send(&wire::encode(&envelope(2, 5)));
    let got = events.wait_for("a frame from 2", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(2, 5)));
    assert!(!events.stash.iter().any(|e| matches!(e, Event::LinkDown(_))));
}

/// Accepts the writer's next dial and answers its handshake with `answer`.
fn answer_dial(l: &TcpListener, answer: &str) -> Conn {
    // Accept on a helper thread so a writer that never dials fails the test
    // instead of hanging it.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let l = l.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept().map(|(stream, _)| stream));
    });
    let stream = rx.recv_timeout(WAIT).expect("the writer dials again").unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut conn = Conn { reader: BufReader::new(stream) };
    assert!(conn.line().starts_with("QKVPEER 1 1 "));
    conn.send(answer.as_bytes());
    conn
}

#[test]
fn writer_reports_down_once_and_redials() {
    let (la, remote) = (listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&remote)];
    let (mut a, mut events) = start_with(la, config(1, &peers, &[(2, &peers[1])]));

    // A refused handshake is no LinkUp; the writer backs off and dials again.
    let refused = answer_dial(&remote, "QKVPEER-REFUSED testing\n");
    drop(refused);
    let mut link = answer_dial(&remote, "QKVPEER-OK 2\n");
    events.wait_for("LinkUp(2)", |e| matches!(e, Event::LinkUp(ReplicaId(2))));
    assert!(send_now(&mut a, ReplicaId(2), &envelope(1, 0)));
    assert_eq!(wire::read_frame(&mut link.reader).unwrap(), envelope(1, 0));

    // The peer goes away: frames fail, one LinkDown, then a new dial.
    drop(link);
    let deadline = Instant::now() + WAIT;
    loop {
        send_now(&mut a, ReplicaId(2), &envelope(1, 1));
        if let Ok(Event::LinkDown(ReplicaId(2))) = events.rx.recv_timeout(Duration::from_millis(5))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no LinkDown(2)");
    }
    let _again = answer_dial(&remote, "QKVPEER-OK 2\n");
    events.wait_for("LinkUp(2) again", |e| matches!(e, Event::LinkUp(ReplicaId(2))));
    assert!(!events.stash.iter().any(|e| matches!(e, Event::LinkDown(_))));
}

#[test]
fn peers_digest_is_16_hex_digits_over_the_list() {
    let a = peers_digest(&["h1:1".into(), "h2:2".into()]);
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, peers_digest(&["h2:2".into(), "h1:1".into()]));
    assert_eq!(peers_digest(&[]), "cbf29ce484222325");
}

/// A transport with no peers to dial whose handshakes need `key`.
fn lone_keyed(key: &[u8]) -> (String, Events, Vec<String>) {
    let l = listener();
    let peers = vec![addr_of(&l), "127.0.0.1:1".into(), "127.0.0.1:2".into()];
    let mut cfg = config(1, &peers, &[]);
    cfg.cluster_key = Some(ClusterKey::new(key));
    let (_senders, events) = start_with(l, cfg);
    (peers[0].clone(), events, peers)
}

/// Sends a keyed hello as `from` and returns the challenge nonce.
fn keyed_hello(conn: &mut Conn, from: u8, peers: &[String]) -> [u8; NONCE_BYTES] {
    let digest = peers_digest(peers);
    conn.send(format!("QKVPEER 1 {from} {digest} 0 hmac-sha256\n").as_bytes());
    let challenge = conn.line();
    let hex = challenge.strip_prefix("QKVPEER-CHALLENGE ").expect("a challenge");
    assert_eq!(hex.len(), 2 * NONCE_BYTES, "{challenge}");
    let mut nonce = [0u8; NONCE_BYTES];
    for (i, byte) in nonce.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    nonce
}

#[test]
fn transports_with_the_same_key_link_up() {
    let (la, lb) = (listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&lb)];
    let key = ClusterKey::new(b"a shared key of thirty-two bytes");
    let mut ca = config(1, &peers, &[(2, &peers[1])]);
    let mut cb = config(2, &peers, &[(1, &peers[0])]);
    ca.cluster_key = Some(key.clone());
    cb.cluster_key = Some(key);
    let (mut a, mut a_events) = start_with(la, ca);
    let (_b, mut b_events) = start_with(lb, cb);
    a_events.wait_for("LinkUp(2)", |e| matches!(e, Event::LinkUp(ReplicaId(2))));
    b_events.wait_for("LinkUp(1)", |e| matches!(e, Event::LinkUp(ReplicaId(1))));
    assert!(send_now(&mut a, ReplicaId(2), &envelope(1, 0)));
    let got = b_events.wait_for("a frame from 1", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(1, 0)));
}

#[test]
fn a_dialer_with_another_key_or_none_never_links() {
    let (la, lb, lc) = (listener(), listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&lb), addr_of(&lc)];
    let mut ca = config(1, &peers, &[]);
    ca.cluster_key = Some(ClusterKey::new(b"the cluster's key"));
    let (a, a_events) = start_with(la, ca);
    let mut cb = config(2, &peers, &[(1, &peers[0])]);
    cb.cluster_key = Some(ClusterKey::new(b"another key"));
    let (_b, mut b_events) = start_with(lb, cb);
    let (_c, mut c_events) = start_with(lc, config(3, &peers, &[(1, &peers[0])]));
    // Wait until both dialers were refused a few times; none may get through.
    let deadline = Instant::now() + WAIT;
    while TransportStats::get(&a.stats().handshakes_refused) < 4 {
        assert!(Instant::now() < deadline, "the dialers were not refused");
        std::thread::sleep(Duration::from_millis(10));
    }
    for events in [&mut b_events, &mut c_events] {
        while let Ok(e) = events.rx.try_recv() {
            assert!(!matches!(e, Event::LinkUp(_)), "a refused dialer linked up: {e:?}");
        }
    }
    while let Ok(e) = a_events.rx.try_recv() {
        assert!(!matches!(e, Event::Peer(_)), "a frame got through: {e:?}");
    }
}

#[test]
fn key_proofs_are_checked_and_never_replayable() {
    let key = ClusterKey::new(b"k3y for the replay test");
    let (addr, mut events, peers) = lone_keyed(b"k3y for the replay test");
    let digest = peers_digest(&peers);

    let mut first = Conn::open(&addr);
    let nonce = keyed_hello(&mut first, 2, &peers);
    let proof = cluster_key_proof(&key, &nonce, ReplicaId(2), ReplicaId(1), &digest);
    first.send(format!("QKVPEER-PROOF {proof}\n").as_bytes());
    assert_eq!(first.line(), "QKVPEER-OK 1");
    first.send(&wire::encode(&envelope(2, 1)));
    let got = events.wait_for("a frame from 2", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(2, 1)));

    // The same proof on a new connection meets a new nonce.
    let mut replay = Conn::open(&addr);
    let second = keyed_hello(&mut replay, 2, &peers);
    assert_ne!(nonce, second, "nonces must not repeat");
    replay.send(format!("QKVPEER-PROOF {proof}\n").as_bytes());
    assert!(replay.line().starts_with("QKVPEER-REFUSED cluster key proof from r2 does not match"));
    replay.expect_eof();

    // A proof under another key, and no proof at all.
    let mut wrong = Conn::open(&addr);
    let nonce = keyed_hello(&mut wrong, 3, &peers);
    let other =
        cluster_key_proof(&ClusterKey::new(b"x"), &nonce, ReplicaId(3), ReplicaId(1), &digest);
    wrong.send(format!("QKVPEER-PROOF {other}\n").as_bytes());
    assert!(wrong.line().contains("does not match"));
    let mut none = Conn::open(&addr);
    none.send(format!("QKVPEER 1 3 {digest} 0 -\n").as_bytes());
    assert!(none.line().contains("requires one (--cluster-key-file)"));
    none.expect_eof();

    // The accepted link from 2 was not disturbed by any of it.
    first.send(&wire::encode(&envelope(2, 2)));
    let got = events.wait_for("another frame from 2", |e| matches!(e, Event::Peer(_)));
    assert!(matches!(got, Event::Peer(env) if env == envelope(2, 2)));
}

#[test]
fn a_silent_dialer_after_the_challenge_is_closed_by_the_deadline() {
    let (addr, _events, peers) = lone_keyed(b"deadline key");
    let mut conn = Conn::open(&addr);
    let started = Instant::now();
    keyed_hello(&mut conn, 2, &peers);
    // Generous: the bound under test is the lower one; a loaded machine may
    // schedule the refusal late, but never early.
    conn.reader.get_ref().set_read_timeout(Some(WAIT * 4)).unwrap();
    let answer = conn.line();
    assert!(answer.starts_with("QKVPEER-REFUSED r2 sent no cluster key proof"), "{answer}");
    conn.expect_eof();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(HANDSHAKE_MS_MAX - 100), "closed after {took:?}");
    assert!(took < Duration::from_millis(HANDSHAKE_MS_MAX) + WAIT * 3, "closed after {took:?}");
}

#[test]
fn a_client_that_never_reads_gets_at_most_the_inflight_cap_served() {
    let (addr, mut events, _) = lone(Limits::default(), 8, 0);
    let mut client = Conn::open(&addr);
    client.send(&b"STATUS\n".repeat(CLIENT_INFLIGHT_MAX + 500));
    let (_conn, out) = events.client_open();
    let count_requests = |events: &mut Events| {
        let mut n = 0;
        while let Ok(e) = events.rx.recv_timeout(Duration::from_millis(300)) {
            if matches!(e, Event::Client { .. }) {
                n += 1;
            }
        }
        n
    };
    assert_eq!(count_requests(&mut events), CLIENT_INFLIGHT_MAX);
    // Ten replies written: ten more requests read.
    for seq in 0..10 {
        out.reply(seq, Reply::NotFound);
    }
    out.flush();
    assert_eq!(count_requests(&mut events), 10);
    for _ in 0..10 {
        assert_eq!(client.line(), "NOTFOUND");
    }
}

/// The longest a flush from the loop may take in these tests: a write from
/// the loop waits one clock tick at most; the rest is slack for a busy machine.
const FLUSH_MAX: Duration = Duration::from_millis(300);

#[test]
fn a_client_that_does_not_read_never_holds_up_the_loop() {
    let (addr, mut events, _) = lone(Limits::default(), 8, 0);
    let mut client = Conn::open(&addr);
    let replies = 200u64;
    client.send(&b"GET k\n".repeat(replies as usize));
    let (_conn, out) = events.client_open();
    // 12 MB of replies, far more than the socket buffers hold: the writer
    // thread takes over and every flush returns at once.
    let value = vec![b'v'; 60_000];
    for seq in 0..replies {
        let started = Instant::now();
        out.reply(seq, Reply::Value(value.clone()));
        out.flush();
        assert!(started.elapsed() < FLUSH_MAX, "flush {seq} took {:?}", started.elapsed());
    }
    for _ in 0..replies {
        assert_eq!(client.line().len(), "VALUE ".len() + value.len());
    }
}

#[test]
fn a_peer_that_does_not_read_never_holds_up_the_loop() {
    let (la, remote) = (listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&remote)];
    let (mut a, mut events) = start_with(la, config(1, &peers, &[(2, &peers[1])]));
    let mut link = answer_dial(&remote, "QKVPEER-OK 2\n");
    events.wait_for("LinkUp(2)", |e| matches!(e, Event::LinkUp(ReplicaId(2))));
    // 50 frames of 100 KB: the writer thread takes over once the socket is
    // full; its queue (64 frames in this config) holds them all.
    let big = |seq: u64| Envelope {
        msg: PeerMsg::ReadReq { read: seq, boot: 1, key: "k".repeat(100_000) },
        ..envelope(1, seq)
    };
    for seq in 0..50 {
        let started = Instant::now();
        assert!(send_now(&mut a, ReplicaId(2), &big(seq)));
        assert!(started.elapsed() < FLUSH_MAX, "flush {seq} took {:?}", started.elapsed());
    }
    for seq in 0..50 {
        assert_eq!(wire::read_frame(&mut link.reader).unwrap(), big(seq));
    }
    assert_eq!((a.dropped(), a.discarded()), (0, 0));
    // Caught up: the loop writes again.
    assert!(send_now(&mut a, ReplicaId(2), &envelope(1, 99)));
    assert_eq!(wire::read_frame(&mut link.reader).unwrap(), envelope(1, 99));
}

#[test]
fn a_peer_that_reads_nothing_gets_at_most_the_queue_bound_in_bytes_and_the_rest_is_dropped() {
    let (la, remote) = (listener(), listener());
    let peers = vec![addr_of(&la), addr_of(&remote)];
    let mut cfg = config(1, &peers, &[(2, &peers[1])]);
    cfg.peer_queue_bytes_max = 1 << 20;
    let (mut a, mut events) = start_with(la, cfg);
    let mut link = answer_dial(&remote, "QKVPEER-OK 2\n");
    events.wait_for("LinkUp(2)", |e| matches!(e, Event::LinkUp(ReplicaId(2))));
    // 80 frames of 100 KB (8 MB) while the peer reads nothing: the socket
    // buffers take some, the writer's queue at most about 1 MB more, and
    // the rest is dropped (within the frame bound of 64 alone, none would be).
    let sent = 80;
    let big = |seq: u64| Envelope {
        msg: PeerMsg::ReadReq { read: seq, boot: 1, key: "k".repeat(100_000) },
        ..envelope(1, seq)
    };
    for seq in 0..sent {
        let started = Instant::now();
        send_now(&mut a, ReplicaId(2), &big(seq));
        assert!(started.elapsed() < FLUSH_MAX, "flush {seq} took {:?}", started.elapsed());
    }
    let dropped = a.dropped();
    assert!(dropped > 0, "the byte bound dropped frames");
    // What was not dropped arrives whole and in order.
    let mut last = None;
    for _ in 0..sent - dropped {
        let Envelope { msg: PeerMsg::ReadReq { read, .. }, .. } =
            wire::read_frame(&mut link.reader).unwrap()
        else {
            panic!("not a sent frame");
        };
        assert!(last < Some(read), "frame {read} after {last:?}");
        last = Some(read);
    }
    assert_eq!(a.discarded(), 0);
}
