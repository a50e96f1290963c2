//! Sockets and threads: the only place that touches `std::net` (DESIGN §1, §2, §8).
//!
//! Every thread here turns bytes into typed [`Event`]s for the one event loop,
//! or typed replies and frames back into bytes. None holds protocol state.
//!
//! # The thread story
//!
//! - **accept** (one): takes connections on the replica's one port and hands
//!   each to its own **connection** thread at once, so a silent or slow
//!   connection can never hold up the next one. Over `clients_max` it still
//!   lets a connection in for [`HANDSHAKE_MS_MAX`] (a few at a time), because
//!   it may be a peer; a client there gets `ERR BUSY` and is closed.
//! - **connection** (one per accepted socket): waits for the first bytes. If
//!   they start with `QKVPEER `, the connection is a peer link (below);
//!   anything else is a client, and its first line is its first command.
//! - **inbound peer reader** (the connection thread, after an accepted
//!   handshake, see [`handshake`]): reads frames with [`crate::wire`] and sends
//!   [`Event::Peer`]; on EOF or any error it sends [`Event::LinkDown`] and ends.
//!   Inbound links only receive. A newer inbound link from the same peer
//!   replaces (shuts down) the older one, which ends without a `LinkDown`, so
//!   a half-open connection from a partition never lingers.
//! - **peer writer** (one per other peer, for the life of the process): dials
//!   the peer, handshakes, installs the link in the peer's [`outbox`] and
//!   sends [`Event::LinkUp`]. From then on the event loop writes the frames
//!   of each turn itself, in one write per peer (see [`outbox`]); the writer
//!   thread takes over only when a write finds the socket full, writes what
//!   queued behind it (bounded; beyond it frames are dropped), and gives the
//!   socket back once it caught up. Outbound links only send. On an error it
//!   sends [`Event::LinkDown`] (once per up → down), drops queued frames (the
//!   protocol tolerates loss; stale frames must not arrive late), backs off
//!   10 ms doubling to 100 ms and dials again; frames sent while the link is
//!   down are discarded. A write timeout means a stopped peer cannot wedge
//!   it. So each pair of replicas has two TCP connections, one per direction.
//! - **client reader** (the connection thread) and **client writer** (one
//!   more thread per client): the reader cuts lines (capped at
//!   `--max-line-bytes`, an overlong line is answered `ERR TOOLARGE` and
//!   skipped without buffering it), numbers them 0, 1, 2 … and parses them.
//!   Parse errors, HELP and QUIT are answered by the reader itself; every
//!   other command goes to the loop as [`Event::Client`]. Replies are put
//!   back in sequence order in the connection's [`ClientOut`]; the loop
//!   writes them at the end of its turn while the client keeps up, and the
//!   writer thread writes everything once a write fell short, once the
//!   reader answered something itself, or once the reader ended. A client
//!   may have at most [`CLIENT_INFLIGHT_MAX`] commands without a written
//!   reply: past that the reader stops reading until replies are written, so
//!   a client that pipelines without reading its replies is held back by TCP
//!   flow control instead of growing memory. When the client half-closes,
//!   the writer still delivers the replies owed (for `echo STATUS | nc -N`),
//!   for at most [`CLIENT_DRAIN_MS_MAX`]. The reader joins the writer, then
//!   sends [`Event::ClientClosed`] as the connection's last event, so no
//!   thread outlives its connection.
//!
//! Every [`Event`] is sent with a blocking `send` on the bounded events
//! crossbeam channel (see [`crate::mailbox`]): a busy loop slows the readers down instead
//! of growing a queue. A thread whose send fails (the loop is gone) ends
//! quietly.
//!
//! Locks here guard transport bookkeeping, never protocol state: the table of
//! inbound peer sockets, and each socket's [`outbox`] state (who writes, what
//! is queued). Counters for METRICS are atomics in [`TransportStats`], read by
//! the loop when it renders.

mod client;
mod handshake;
mod input;
mod listener;
mod outbox;
mod peer;
#[cfg(test)]
mod tests;

use crate::client::{Limits, Request};
use crate::mailbox::Sender;
use crate::protocol::message::Envelope;
use crate::protocol::types::ReplicaId;
use crate::qlog;
use std::collections::BTreeMap;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use client::CLIENT_INFLIGHT_MAX;
pub(crate) use handshake::CLUSTER_KEY_BYTES_MIN;
pub use handshake::{cluster_key_proof, ClusterKey, HANDSHAKE_MS_MAX, NONCE_BYTES};
pub use outbox::{ClientOut, DIRECT_WRITE_MS_MAX};

/// How long a client writer keeps delivering owed replies after the client
/// half-closed its side. The loop answers every request within its request
/// timeout (`ERR TIMEOUT` at worst); this only bounds a thread whose loop
/// went quiet.
pub const CLIENT_DRAIN_MS_MAX: u64 = 30_000;

/// Identifies one client connection inside this process.
pub type ConnId = u64;

/// Everything the transport threads tell the event loop.
#[derive(Debug)]
pub enum Event {
    /// A decoded message from an authenticated peer link. `env.from` equals the
    /// id the link's handshake proved; other messages are dropped by the reader.
    Peer(Envelope),
    /// Our outbound link to this peer completed its handshake.
    LinkUp(ReplicaId),
    /// A link to or from this peer failed or hit EOF (as after kill -9).
    LinkDown(ReplicaId),
    /// A client connected; replies for it go to `out`.
    ClientOpen { conn: ConnId, out: Arc<ClientOut> },
    /// A client command; `seq` numbers the connection's commands from 0.
    Client { conn: ConnId, seq: u64, request: Request },
    /// The client connection is gone; drop its pending replies.
    ClientClosed { conn: ConnId },
    /// SIGTERM or SIGINT: finish what is in flight, sync, exit 0.
    Shutdown,
    /// The disk thread made syncs up to `ticket` durable; the fsync took
    /// `fsync_us`; the current log segment is `segment_bytes` long and the
    /// newest snapshot file `snapshot_bytes`.
    DiskSynced { ticket: u64, fsync_us: u64, segment_bytes: u64, snapshot_bytes: u64 },
    /// The disk thread saved the snapshot at this index.
    SnapshotSaved(crate::protocol::types::LogIndex),
    /// The disk thread failed; the replica must stop.
    DiskFailed(String),
}

/// What the transport needs to know, taken from the replica's `Config`.
#[derive(Debug)]
pub struct TransportConfig {
    /// This replica's id.
    pub id: ReplicaId,
    /// `host:port` to listen on (this replica's entry in the peer list).
    pub listen: String,
    /// The `--peers` list as given, in id order; [`peers_digest`] covers it.
    pub peers: Vec<String>,
    /// Where to dial each other peer (`--peer-dial` already applied).
    pub dial: BTreeMap<ReplicaId, String>,
    /// The cluster id named in handshakes; 0 until formation completes. The
    /// loop stores it once; every handshake reads the current value.
    pub cluster_id: Arc<AtomicU64>,
    /// Line, key and value limits (`--max-line-bytes` is enforced here).
    pub limits: Limits,
    /// Most client connections open at once (`--max-clients`).
    pub clients_max: usize,
    /// Close a client that sent nothing for this long, in ms; 0 = never.
    pub idle_timeout_ms: u64,
    /// The HELP reply's lines, before `END`.
    pub help_lines: Vec<String>,
    /// Capacity of each peer writer's queue, in frames (at least 1).
    pub peer_queue_max: usize,
    /// Capacity of each peer writer's queue, in bytes: a batch that would
    /// pass it is dropped (a queue always takes a batch when empty).
    pub peer_queue_bytes_max: usize,
    /// `--cluster-key-file`'s key: peers must prove they know it.
    pub cluster_key: Option<ClusterKey>,
}

/// Counters the transport threads keep for METRICS (relaxed atomics: each is
/// an independent count, read now and then).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Client connections open now.
    pub clients_open: AtomicU64,
    /// Client connections served since start.
    pub clients_total: AtomicU64,
    /// Connections answered `ERR BUSY`.
    pub busy_refusals: AtomicU64,
    /// `ERR BADCMD` replies the connection answered itself (parse errors).
    pub badcmd_replies: AtomicU64,
    /// `ERR TOOLARGE` replies the connection answered itself.
    pub toolarge_replies: AtomicU64,
    /// Times a client reader waited because [`CLIENT_INFLIGHT_MAX`] commands
    /// were unanswered.
    pub inflight_waits: AtomicU64,
    /// Peer handshakes refused.
    pub handshakes_refused: AtomicU64,
    /// Inbound peer links closed by a frame that could not be read.
    pub bad_frame_links: AtomicU64,
}

impl TransportStats {
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The loop's side of the peer links: frames are gathered per peer during a
/// turn and written at its end by [`PeerSenders::flush`] (see [`outbox`]).
pub struct PeerSenders {
    peers: BTreeMap<ReplicaId, PeerQueue>,
    /// What one peer's writer thread may hold queued while it owns the link.
    bound: outbox::Bound,
    /// Frames refused by [`PeerSenders::send`] or dropped by a full queue.
    dropped: AtomicU64,
    /// Frames discarded because their link was down.
    discarded: Arc<AtomicU64>,
    /// The transport's counters, shared with its threads.
    stats: Arc<TransportStats>,
}

/// One peer's frames of the current turn.
struct PeerQueue {
    out: Arc<outbox::PeerOut>,
    /// Encoded frames, back to back.
    bytes: Vec<u8>,
    frames: usize,
}

impl PeerSenders {
    /// Adds an encoded frame (from [`crate::wire::encode_into`]) to what
    /// goes to one peer at the next [`PeerSenders::flush`]. Returns false,
    /// and counts the frame as dropped, when the peer is unknown or the
    /// frame is over [`crate::wire::FRAME_BYTES_MAX`] (no peer would accept
    /// it).
    pub fn send(&mut self, to: ReplicaId, frame: &[u8]) -> bool {
        let refused = |why: &str| {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if should_log(n) {
                qlog!("frame to r{to} dropped: {why} ({n} dropped so far)");
            }
            false
        };
        if frame.len() > crate::wire::FRAME_BYTES_MAX + 4 {
            return refused("over the frame size limit");
        }
        let Some(queue) = self.peers.get_mut(&to) else {
            return refused("no such peer");
        };
        queue.bytes.extend_from_slice(frame);
        queue.frames += 1;
        true
    }

    /// Writes each peer's frames of this turn: at once when its link is up
    /// and idle, else through its writer thread (dropped when that queue is
    /// full, discarded when the link is down; the protocol re-sends what
    /// matters).
    pub fn flush(&mut self) {
        for queue in self.peers.values_mut() {
            if queue.frames == 0 {
                continue;
            }
            match queue.out.deliver(&queue.bytes, queue.frames, self.bound) {
                outbox::Delivered::Sent => {}
                outbox::Delivered::Dropped => {
                    self.dropped.fetch_add(queue.frames as u64, Ordering::Relaxed);
                }
                outbox::Delivered::Discarded => {
                    self.discarded.fetch_add(queue.frames as u64, Ordering::Relaxed);
                }
            }
            queue.bytes.clear();
            queue.frames = 0;
            // A rare huge turn (a snapshot chunk) need not keep its buffer.
            if queue.bytes.capacity() > TURN_BYTES_KEPT_MAX {
                queue.bytes = Vec::new();
            }
        }
    }

    /// Frames refused or dropped (mostly: a writer's queue was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Frames discarded unsent because their link was down or reconnecting.
    pub fn discarded(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }

    /// The transport's counters (connections, refusals, in-flight waits).
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }
}

impl Drop for PeerSenders {
    /// The writer threads end with the loop's side.
    fn drop(&mut self) {
        for queue in self.peers.values() {
            queue.out.close();
        }
    }
}

/// A per-peer turn buffer above this many bytes is given back after its flush.
const TURN_BYTES_KEPT_MAX: usize = 1 << 20;

/// Binds the listener (an error names the address), spawns the accept thread
/// and one writer thread per other peer, and returns at once.
pub fn start(cfg: TransportConfig, events_tx: Sender<Event>) -> io::Result<PeerSenders> {
    let listener = TcpListener::bind(&cfg.listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen)))?;
    start_on(listener, cfg, events_tx)
}

/// [`start`] on a listener that is already bound (tests bind port 0).
pub(crate) fn start_on(
    listener: TcpListener,
    cfg: TransportConfig,
    events_tx: Sender<Event>,
) -> io::Result<PeerSenders> {
    let n = cfg.peers.len();
    assert!(
        (1..=n).contains(&usize::from(cfg.id.0)),
        "replica id {} outside 1..={n}: the config should have refused it",
        cfg.id
    );
    let shared = Arc::new(Shared {
        id: cfg.id,
        digest: peers_digest(&cfg.peers),
        peers: cfg.peers,
        cluster_id: cfg.cluster_id,
        limits: cfg.limits,
        clients_max: cfg.clients_max,
        idle_timeout_ms: cfg.idle_timeout_ms,
        help_lines: cfg.help_lines,
        cluster_key: cfg.cluster_key,
        events_tx,
        clients: Arc::new(AtomicUsize::new(0)),
        probes: Arc::new(AtomicUsize::new(0)),
        stats: Arc::new(TransportStats::default()),
        inbound: Mutex::new(BTreeMap::new()),
        inbound_generation: AtomicU64::new(0),
    });
    let local = listener.local_addr()?;
    listener::spawn_accept(listener, Arc::clone(&shared))?;
    qlog!("listening on {local} for peers and clients");
    let discarded = Arc::new(AtomicU64::new(0));
    let mut peers = BTreeMap::new();
    for (&to, addr) in cfg.dial.iter().filter(|(&to, _)| to != cfg.id) {
        let out = Arc::new(outbox::PeerOut::default());
        let shared = Arc::clone(&shared);
        peer::spawn_writer(to, addr.clone(), Arc::clone(&out), shared, Arc::clone(&discarded))?;
        peers.insert(to, PeerQueue { out, bytes: Vec::new(), frames: 0 });
    }
    let stats = Arc::clone(&shared.stats);
    Ok(PeerSenders {
        peers,
        bound: outbox::Bound { frames: cfg.peer_queue_max.max(1), bytes: cfg.peer_queue_bytes_max },
        dropped: AtomicU64::new(0),
        discarded,
        stats,
    })
}

/// A short digest of the peer list: 16 hex digits of FNV-1a 64 over the
/// comma-joined list. Two replicas with different lists refuse each other.
pub fn peers_digest(peers: &[String]) -> String {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash =
        peers.join(",").bytes().fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
    format!("{hash:016x}")
}

/// What every transport thread shares.
struct Shared {
    /// This replica's id.
    id: ReplicaId,
    /// The `--peers` list as given.
    peers: Vec<String>,
    /// [`peers_digest`] of `peers`.
    digest: String,
    /// 0 until formation completes; read at every handshake.
    cluster_id: Arc<AtomicU64>,
    limits: Limits,
    clients_max: usize,
    idle_timeout_ms: u64,
    help_lines: Vec<String>,
    /// The key peers must prove they know, if the cluster has one.
    cluster_key: Option<ClusterKey>,
    events_tx: Sender<Event>,
    /// Client connections open, plus connections not yet known to be peers
    /// that were admitted under the limit.
    clients: Arc<AtomicUsize>,
    /// Connections admitted over the client limit, waiting to show whether
    /// they are peers ([`listener::PROBES_MAX`] at most).
    probes: Arc<AtomicUsize>,
    /// Counters for METRICS (and rate-limited logging).
    stats: Arc<TransportStats>,
    /// The current inbound link from each peer: (generation, socket).
    inbound: Mutex<BTreeMap<ReplicaId, (u64, TcpStream)>>,
    /// Source of inbound link generations.
    inbound_generation: AtomicU64,
}

impl Shared {
    /// The handshake view of this replica, with the current cluster id.
    fn local(&self) -> handshake::Local<'_> {
        handshake::Local {
            id: self.id,
            peers: &self.peers,
            digest: &self.digest,
            cluster_id: self.cluster_id.load(Ordering::Acquire),
            key: self.cluster_key.as_ref(),
        }
    }
}

/// One unit of a counted resource (a client slot, a probe slot), given back
/// when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a unit if fewer than `max` are taken.
    fn acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(Arc::clone(counter)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Repeating failures log their first occurrence and then every 50th, so a
/// peer that stays down leaves a trace without flooding the log.
fn should_log(count: u64) -> bool {
    const LOG_EVERY: u64 = 50;
    count == 1 || count.is_multiple_of(LOG_EVERY)
}

/// True for the error kinds a socket read or write timeout produces.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
