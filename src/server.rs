//! The event loop (DESIGN §1): one thread owns the [`Replica`] and the
//! storage; transport threads feed it [`Event`]s over one bounded crossbeam
//! channel (received through [`crate::mailbox`], which parks without
//! spinning). Each turn of the loop waits for events (until the next tick at
//! most), takes everything queued (up to [`EVENTS_BATCH_MAX`]), steps the replica through all of it, runs the timers,
//! flushes the batch, and hands the outputs to the executor. Persists go to
//! the disk thread (`crate::disk`), which fsyncs once for every batch
//! queued; votes and promises wait for that, everything else (heartbeats
//! above all) leaves at once, so a slow disk never looks like a dead leader.
//! At the end of the turn the loop writes what the turn produced, one write
//! per peer link and per client connection (`crate::transport` hands a
//! socket to its writer thread only when it is slow).
//!
//! Client connections register a [`ClientOut`]; the loop maps each client
//! request to a [`ReqId`] and routes the protocol's reply back to the
//! connection, tagged with the connection's sequence number so replies go out
//! in request order.
//!
//! The loop also keeps the [`Metrics`] behind `METRICS`: each pending request
//! remembers its command and when the loop received it, so its latency runs
//! to the moment the reply is handed to the connection; each sync the disk
//! thread reports is recorded with its duration and the accepted entries it
//! made durable.

use crate::client::{ClientError, Reply, Request};
use crate::config::Config;
use crate::disk::{self, DiskClient};
use crate::exec::{Executor, Network};
use crate::mailbox::{self, Sender};
use crate::metrics::{CommandKind, Metrics, Readings};
use crate::protocol::durable::Persist;
use crate::protocol::message::Envelope;
use crate::protocol::types::{Millis, ReplicaId, ReqId};
use crate::protocol::{self, Input, Output, Replica};
use crate::storage::wal::DiskStorage;
use crate::storage::{self, FsyncPolicy, Storage};
use crate::transport::{self, ClientOut, ClusterKey, ConnId, Event, PeerSenders, TransportConfig};
use crate::transport::{TransportStats, CLUSTER_KEY_BYTES_MIN};
use crate::{qlog, wire};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events queued between transport threads and the loop. Readers block when
/// it is full, which slows clients down instead of growing memory.
pub const EVENTS_QUEUE_MAX: usize = 16_384;
/// Events handled in one turn before the batch is flushed and synced.
pub const EVENTS_BATCH_MAX: usize = 1024;
/// Frames queued per peer writer; beyond it frames are dropped (the protocol
/// re-sends what matters).
pub const PEER_QUEUE_MAX: usize = 4096;
/// Bytes queued per peer writer; beyond it frames are dropped as well (see
/// `transport::outbox::Bound`): 16 ACCEPTs of the largest batch.
pub const PEER_QUEUE_BYTES_MAX: usize = 16 * protocol::BATCH_BYTES_MAX;

/// Runs a replica until a fatal error. Returns the error's message.
pub fn run(cfg: Config) -> Result<(), String> {
    let started = Instant::now();
    let (storage, durable) = DiskStorage::open(&cfg.data_dir, cfg.fsync)
        .map_err(|e| format!("cannot open data directory {}: {e}", cfg.data_dir.display()))?;
    let recovered_commit = durable.commit;
    let entries = durable.log.len();
    let seed = cfg.seed.unwrap_or_else(rand::random);
    let boot: u64 = rand::random();
    let pcfg = protocol::Config {
        id: cfg.id,
        n: cfg.peers.len(),
        write_quorum: cfg.write_quorum,
        read_quorum: cfg.read_quorum,
        heartbeat_ms: cfg.heartbeat_ms,
        election_timeout_ms: cfg.election_timeout_ms,
        request_timeout_ms: cfg.request_timeout_ms,
        snapshot_every_entries: cfg.snapshot_every_entries,
    };
    let replica = Replica::new(pcfg, durable, seed, boot);
    qlog!(
        "recovered {} (commit index {recovered_commit}, {entries} log entries) in {}ms; seed {seed}",
        cfg.data_dir.display(),
        started.elapsed().as_millis()
    );
    let cluster_id = Arc::new(AtomicU64::new(replica.cluster_id().unwrap_or(0)));
    let cluster_key = cfg.cluster_key_file.as_deref().map(load_cluster_key).transpose()?;
    let (events_tx, events_rx) = mailbox::bounded(EVENTS_QUEUE_MAX);
    let events_tx_for_signals = events_tx.clone();
    let events_tx_for_disk = events_tx.clone();
    let tcfg = transport_config(&cfg, cluster_id.clone(), cluster_key);
    let listen = tcfg.listen.clone();
    let peers =
        transport::start(tcfg, events_tx).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    qlog!(
        "listening on {listen} ({} replicas, NW={}, NR={})",
        cfg.peers.len(),
        cfg.write_quorum,
        cfg.read_quorum
    );
    let mut net = ServerNet {
        peers,
        clients: BTreeMap::new(),
        replied: Vec::new(),
        pending: BTreeMap::new(),
        metrics: Metrics::default(),
        frame: Vec::new(),
    };
    let clock = Instant::now();
    let mut replica = replica;
    let mut storage = storage;
    let mut executor = Executor::new(cfg.id);
    start_durably(&mut replica, &mut storage, &mut executor, &mut net, &clock)?;
    let disk = disk::start(storage, events_tx_for_disk, executor.issued())?;
    let mut event_loop = EventLoop {
        request_timeout_ms: cfg.request_timeout_ms,
        wal_segment_bytes: cfg.wal_segment_bytes,
        replica,
        disk,
        executor,
        net,
        clock,
        next_req: 1,
        cluster_id,
        out: Vec::new(),
        shutdown_deadline: None,
        fatal: None,
        fsync: cfg.fsync,
        unsynced_entries: VecDeque::new(),
        started,
        log_prefix: None,
    };
    watch_signals(events_tx_for_signals)?;
    let tick = Duration::from_millis((cfg.heartbeat_ms / 4).clamp(1, 5));
    let served = serve(&mut event_loop, &events_rx, tick);
    if let Err(e) = &served {
        // A storage failure (or any fatal error) stops the replica: its
        // clients hear why instead of only seeing the connection close.
        event_loop.fail_in_flight(e);
    }
    served
}

/// Runs the event loop until a clean shutdown (`Ok`) or a fatal error.
fn serve(
    event_loop: &mut EventLoop,
    events_rx: &mailbox::Receiver<Event>,
    tick: Duration,
) -> Result<(), String> {
    event_loop.finish_batch()?;
    let mut last_tick = Instant::now();
    let mut events = Vec::with_capacity(EVENTS_BATCH_MAX);
    loop {
        // Every event already queued (up to the batch bound) is taken under
        // one lock; the wait ends at the next tick at the latest.
        // A replica with committed slots still to apply runs its next turn at
        // once (see `protocol::APPLY_PER_FLUSH_MAX`).
        let wait_until =
            if event_loop.replica.has_backlog() { Instant::now() } else { last_tick + tick };
        events_rx
            .recv_batch(&mut events, EVENTS_BATCH_MAX, Some(wait_until))
            .expect("transport threads hold the events sender for the process lifetime");
        let turn = Instant::now();
        let mut handled = event_loop.handle_all(&mut events);
        // Timers run after the queued events: a replica that was starved of
        // CPU, or busy with a long event, sees the heartbeats and acks that
        // arrived meanwhile before it decides that its leader (or its
        // quorum) went silent. Draining is bounded, so a loop that cannot
        // keep up still ticks (and a leader still sends heartbeats).
        let draining = Instant::now();
        while !events_rx.is_empty() && draining.elapsed() < Duration::from_millis(DRAIN_MS_MAX) {
            events_rx
                .recv_batch(&mut events, EVENTS_BATCH_MAX, Some(turn))
                .expect("transport threads hold the events sender for the process lifetime");
            handled += event_loop.handle_all(&mut events);
        }
        event_loop.net.metrics.record_turn(handled);
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            event_loop.tick();
        }
        if let Some(e) = event_loop.fatal.take() {
            return Err(e);
        }
        event_loop.finish_batch()?;
        let took = turn.elapsed();
        if took > Duration::from_millis(SLOW_TURN_MS) {
            qlog!("slow event loop turn: {} ms for {handled} events", took.as_millis());
        }
        if event_loop.is_done() {
            return event_loop.finish_shutdown();
        }
    }
}

/// Longest the loop keeps taking newly arrived events before it runs its
/// timers (see the loop), counted from the end of the turn's first batch
/// (which may have been one long event): well under a heartbeat interval.
const DRAIN_MS_MAX: u64 = 10;
/// A loop turn longer than this is logged: it delays every heartbeat and ack.
const SLOW_TURN_MS: u64 = 50;

/// Starts the replica on the synchronous storage, before the disk thread and
/// before anyone can hear from it: a new directory's incarnation is durable
/// before it is ever reported (DESIGN §6).
fn start_durably(
    replica: &mut Replica,
    storage: &mut DiskStorage,
    executor: &mut Executor,
    net: &mut ServerNet,
    clock: &Instant,
) -> Result<(), String> {
    let mut out = Vec::new();
    let now = Millis(clock.elapsed().as_millis() as u64);
    replica.start(now, &mut out);
    executor.execute(&mut out, storage, net).map_err(|e| format!("storage failed: {e}"))?;
    Ok(())
}

/// SIGTERM and SIGINT become `Event::Shutdown` for the loop (a clean stop:
/// in-flight requests finish or fail, the log is synced, exit 0).
fn watch_signals(events_tx: Sender<Event>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = events_tx.send(Event::Shutdown);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Reads `--cluster-key-file` (config checked it exists and is not empty)
/// and logs that peers must prove the key, never the key itself.
fn load_cluster_key(path: &std::path::Path) -> Result<ClusterKey, String> {
    let key = ClusterKey::from_file(path)
        .map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))?;
    qlog!(
        "cluster key loaded from {} ({} bytes): peers must prove it in the handshake",
        path.display(),
        key.len()
    );
    if key.len() < CLUSTER_KEY_BYTES_MIN {
        qlog!(
            "warning: the cluster key has {} bytes; use at least {CLUSTER_KEY_BYTES_MIN} random bytes \
             (e.g. openssl rand -hex 32)",
            key.len()
        );
    }
    Ok(key)
}

fn transport_config(
    cfg: &Config,
    cluster_id: Arc<AtomicU64>,
    cluster_key: Option<ClusterKey>,
) -> TransportConfig {
    let mut dial = BTreeMap::new();
    for (i, addr) in cfg.peers.iter().enumerate() {
        let id = ReplicaId(i as u8 + 1);
        if id != cfg.id {
            dial.insert(id, cfg.peer_dial.get(&id).cloned().unwrap_or_else(|| addr.clone()));
        }
    }
    let mut dial = BTreeMap::new();
    for (i, addr) in cfg.peers.iter().enumerate() {
        let id = ReplicaId(i as u8 + 1);
        if id != cfg.id {
            dial.insert(id, cfg.peer_dial.get(&id).cloned().unwrap_or_else(|| addr.clone()));
        }
    }
    TransportConfig {
        id: cfg.id,
        listen: cfg.peers[cfg.id.0 as usize - 1].clone(),
        peers: cfg.peers.clone(),
        dial,
        cluster_id,
        limits: cfg.limits,
        clients_max: cfg.clients_max,
        idle_timeout_ms: cfg.idle_timeout_ms,
        help_lines: help_lines(cfg),
        peer_queue_max: PEER_QUEUE_MAX,
        peer_queue_bytes_max: PEER_QUEUE_BYTES_MAX,
        cluster_key,
    }
}

/// The HELP reply: commands, limits and quorum sizes.
pub fn help_lines(cfg: &Config) -> Vec<String> {
    let n = cfg.peers.len();
    vec![
        "PUT key value            -> OK <version>   (alias: add_update key value)".into(),
        "GET key                  -> VALUE <value> | NOTFOUND   (alias: read key)".into(),
        "GETV key                 -> VERSION <version> <value> | NOTFOUND".into(),
        "DEL key                  -> OK <index>".into(),
        "CAS key version value    -> OK <version> | ERR CONFLICT <current>   (version 0 = absent)".into(),
        "STATUS                   -> STATUS id=.. role=.. leader=.. epoch=.. commit=.. applied=..".into(),
        "METRICS                  -> Prometheus text, then END".into(),
        "HELP                     -> this text, then END".into(),
        "QUIT                     -> BYE, then the connection closes".into(),
        format!(
            "limits: line {} bytes (--max-line-bytes), key {} bytes (--max-key-bytes), value {} bytes (--max-value-bytes), {} clients (--max-clients)",
            cfg.limits.line_bytes_max, cfg.limits.key_bytes_max, cfg.limits.value_bytes_max, cfg.clients_max
        ),
        format!(
            "quorums: N={n} NW={} NR={} (a write needs {} votes; a read asks {} replicas)",
            cfg.write_quorum, cfg.read_quorum, cfg.write_quorum, cfg.read_quorum
        ),
        format!(
            "timeouts: heartbeat {}ms, election {}ms, request {}ms; fsync {:?}",
            cfg.heartbeat_ms, cfg.election_timeout_ms, cfg.request_timeout_ms, cfg.fsync
        ),
    ]
}

/// The loop's state: the replica, its storage, and where replies go.
struct EventLoop {
    request_timeout_ms: u64,
    /// `--wal-segment-bytes`: a log segment this large asks for a snapshot
    /// (or larger: see [`storage::log_asks_for_snapshot`]).
    wal_segment_bytes: u64,
    replica: Replica,
    /// The disk thread's queue.
    disk: DiskClient,
    /// Carries out outputs; holds votes and promises until their sync is done.
    executor: Executor,
    net: ServerNet,
    clock: Instant,
    next_req: u64,
    cluster_id: Arc<AtomicU64>,
    out: Vec<Output>,
    /// Set by SIGTERM: in-flight requests get until then to finish.
    shutdown_deadline: Option<Millis>,
    /// A storage failure reported by the disk thread: the loop stops with it.
    fatal: Option<String>,
    /// `--fsync`: under `never` a sync is a no-op and is not recorded.
    fsync: FsyncPolicy,
    /// Accepted entries handed to the disk thread per sync ticket, until the
    /// disk thread reports that ticket durable (for `fsync_batch_entries`).
    unsynced_entries: VecDeque<(u64, u64)>,
    /// When the process started, for the uptime metric.
    started: Instant,
    /// The (epoch, role) the log prefix was last set for.
    log_prefix: Option<(crate::protocol::types::Epoch, &'static str)>,
}

/// How long a stopping replica gives client writer threads to write the
/// replies a slow client has not taken yet before the process exits.
const CLIENT_DRAIN_MS: u64 = 50;

/// How long a shutting-down replica waits for requests already in flight.
pub const SHUTDOWN_GRACE_MS_MAX: u64 = 2_000;

impl EventLoop {
    fn now(&self) -> Millis {
        Millis(self.clock.elapsed().as_millis() as u64)
    }

    fn tick(&mut self) {
        let now = self.now();
        self.replica.step(now, Input::Tick, &mut self.out);
    }

    /// Handles every event in `events` (draining it); returns how many.
    fn handle_all(&mut self, events: &mut Vec<Event>) -> u64 {
        let n = events.len() as u64;
        for event in events.drain(..) {
            self.handle(event);
        }
        n
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Peer(env) => self.replica.step(now, Input::Peer(env), &mut self.out),
            Event::LinkUp(id) => self.replica.step(now, Input::LinkUp(id), &mut self.out),
            Event::LinkDown(id) => self.replica.step(now, Input::LinkDown(id), &mut self.out),
            Event::ClientOpen { conn, out } => {
                self.net.clients.insert(conn, out);
            }
            Event::ClientClosed { conn } => {
                self.net.clients.remove(&conn);
            }
            Event::Client { conn, seq, request } => self.on_client(now, conn, seq, request),
            Event::DiskSynced { ticket, fsync_us, segment_bytes, snapshot_bytes } => {
                self.record_fsync(ticket, fsync_us);
                if storage::log_asks_for_snapshot(
                    segment_bytes,
                    self.wal_segment_bytes,
                    snapshot_bytes,
                ) {
                    self.replica.request_snapshot();
                }
                self.executor.synced(ticket, &mut self.net);
                self.feed_loopback(now);
            }
            Event::SnapshotSaved(index) => {
                self.replica.step(now, Input::SnapshotSaved(index), &mut self.out)
            }
            Event::DiskFailed(e) => self.fatal = Some(format!("storage failed, stopping: {e}")),
            Event::Shutdown => {
                if self.shutdown_deadline.is_none() {
                    let grace = SHUTDOWN_GRACE_MS_MAX.min(self.request_timeout_ms);
                    qlog!(
                        "shutdown requested; finishing {} requests in flight",
                        self.net.pending.len()
                    );
                    self.shutdown_deadline = Some(now.plus(grace));
                }
            }
        }
    }

    /// True once a shutdown was asked for and nothing is in flight (or the grace ran out).
    fn is_done(&self) -> bool {
        self.shutdown_deadline
            .is_some_and(|deadline| self.net.pending.is_empty() || self.now() >= deadline)
    }

    /// The replica stops on `error`: fails what is still in flight (the
    /// outcome of a write is unknown: it may have committed on others) and
    /// lets client writers drain. No sync: storage may be what failed.
    fn fail_in_flight(&mut self, error: &str) {
        self.time_out_pending(&format!(
            "replica stopped ({error}); a write may or may not have committed"
        ));
        self.drain_clients();
    }

    /// Fails what is still in flight, syncs, and lets client writers drain.
    fn finish_shutdown(&mut self) -> Result<(), String> {
        self.time_out_pending(
            "replica shut down before the answer; a write may or may not have committed",
        );
        self.disk.sync().map_err(|e| format!("final sync failed: {e}"))?;
        self.drain_clients();
        qlog!("shut down cleanly (commit index {})", self.replica.commit_index());
        Ok(())
    }

    /// Answers every request in flight `ERR TIMEOUT <detail>` (queued, not
    /// yet written).
    fn time_out_pending(&mut self, detail: &str) {
        for (_, p) in std::mem::take(&mut self.net.pending) {
            self.net.answer(&p, Reply::Error(ClientError::Timeout(detail.into())));
        }
    }

    /// Writes what the clients are owed and gives their writer threads
    /// [`CLIENT_DRAIN_MS`] for what a slow client has not taken yet.
    fn drain_clients(&mut self) {
        self.net.flush(true);
        self.net.clients.clear();
        std::thread::sleep(Duration::from_millis(CLIENT_DRAIN_MS));
    }

    fn on_client(&mut self, now: Millis, conn: ConnId, seq: u64, request: Request) {
        let Some(command) = command_kind(&request) else {
            let reply = Reply::Error(ClientError::BadCmd("answered by the connection".into()));
            self.net.send_reply(conn, seq, reply);
            return;
        };
        let pending = Pending { conn, seq, command, received: Instant::now() };
        let local = match &request {
            Request::Status => Some(Reply::Status(self.replica.status(now))),
            Request::Metrics => Some(Reply::Lines(self.metrics_lines(now))),
            _ => None,
        };
        if let Some(reply) = local {
            self.net.answer(&pending, reply);
            return;
        }
        if self.shutdown_deadline.is_some() {
            let err = ClientError::Shutdown("replica is shutting down; try another".into());
            self.net.answer(&pending, Reply::Error(err));
            return;
        }
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.net.pending.insert(req, pending);
        self.replica.step(now, Input::Client { req, request }, &mut self.out);
    }

    /// Records one fsync the disk thread reported: it made every sync ticket
    /// up to `ticket` durable, with the accepted entries handed to them.
    fn record_fsync(&mut self, ticket: u64, fsync_us: u64) {
        let mut entries = 0;
        while let Some(&(t, n)) = self.unsynced_entries.front() {
            if t > ticket {
                break;
            }
            entries += n;
            self.unsynced_entries.pop_front();
        }
        if self.fsync == FsyncPolicy::Always {
            self.net.metrics.record_fsync(Duration::from_micros(fsync_us), entries);
        }
    }

    /// The METRICS reply's lines: the loop's own metrics plus readings from
    /// the replica and the transport.
    fn metrics_lines(&self, now: Millis) -> Vec<String> {
        let s = &self.replica.stats;
        let t = self.net.peers.stats();
        // STATUS is the one place the protocol reports these two; its field
        // names are part of the pinned interface (DESIGN §9).
        let status = self.replica.status(now);
        let readings = Readings {
            role: self.replica.role_name(),
            epoch: self.replica.epoch().0,
            commit_index: self.replica.commit_index().0,
            applied_index: status_field(&status, "applied").and_then(|v| v.parse().ok()),
            leader_id: self.replica.leader_id().map_or(0, |id| u64::from(id.0)),
            live_peers: status_field(&status, "live")
                .map(|v| v.split(',').filter(|id| *id != "-").count() as u64),
            elections: s.elections_started,
            leaderships: s.leaderships,
            leader_changes: s.leader_changes,
            last_election_ms: s.last_election.and_then(|e| e.ended.map(|end| end.since(e.started))),
            read_retries: s.read_retries,
            read_fallbacks: s.read_fallbacks,
            peer_messages_dropped: s.dropped_messages,
            caught_up_entries: s.caught_up_entries,
            snapshots_installed: s.snapshots_installed,
            requests_in_flight: self.net.pending.len() as u64,
            client_connections_open: TransportStats::get(&t.clients_open),
            client_connections_total: TransportStats::get(&t.clients_total),
            client_inflight_waits: TransportStats::get(&t.inflight_waits),
            transport_errors: vec![
                ("BADCMD", TransportStats::get(&t.badcmd_replies)),
                ("TOOLARGE", TransportStats::get(&t.toolarge_replies)),
                ("BUSY", TransportStats::get(&t.busy_refusals)),
            ],
            peer_frames_dropped: self.net.peers.dropped(),
            peer_frames_discarded: self.net.peers.discarded(),
            peer_handshakes_refused: TransportStats::get(&t.handshakes_refused),
            peer_links_bad_frame: TransportStats::get(&t.bad_frame_links),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        };
        self.net.metrics.render(&readings)
    }

    /// Our own votes, released by the executor once durable, go back in.
    fn feed_loopback(&mut self, now: Millis) {
        for env in self.executor.take_loopback() {
            self.replica.step(now, Input::Peer(env), &mut self.out);
        }
    }

    /// Flushes the batch and hands its outputs to the executor: persists go to
    /// the disk thread; what needs them waits; everything else leaves now.
    fn finish_batch(&mut self) -> Result<(), String> {
        let now = self.now();
        loop {
            self.replica.flush(now, &mut self.out);
            let entries = accepted_entries(&self.out);
            let done = self
                .executor
                .execute(&mut self.out, &mut self.disk, &mut self.net)
                .map_err(|e| format!("storage failed, stopping: {e}"))?;
            if done.syncs > 0 {
                self.unsynced_entries.push_back((self.executor.issued(), entries));
            }
            // A loopback vote can commit entries, which can answer clients and
            // send COMMITs: run until nothing more comes back.
            let loopback = self.executor.take_loopback();
            if loopback.is_empty() {
                break;
            }
            for env in loopback {
                self.replica.step(now, Input::Peer(env), &mut self.out);
            }
        }
        // Everything this turn produced leaves now, one write per socket.
        self.net.flush(!self.replica.is_leader());
        // The log prefix changes with the epoch and role only.
        let prefix = (self.replica.epoch(), self.replica.role_name());
        if self.log_prefix != Some(prefix) {
            self.log_prefix = Some(prefix);
            crate::log::set_prefix(format!("r{} e{} {}", self.replica.id(), prefix.0, prefix.1));
        }
        if let Some(id) = self.replica.cluster_id().filter(|_| self.replica.is_formed()) {
            self.cluster_id.store(id, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The `command` label of a request the loop answers; HELP and QUIT are
/// answered by the connection and never reach here in practice.
fn command_kind(request: &Request) -> Option<CommandKind> {
    match request {
        Request::Put { .. } => Some(CommandKind::Put),
        Request::Get { .. } => Some(CommandKind::Get),
        Request::GetV { .. } => Some(CommandKind::GetV),
        Request::Del { .. } => Some(CommandKind::Del),
        Request::Cas { .. } => Some(CommandKind::Cas),
        Request::Status => Some(CommandKind::Status),
        Request::Metrics => Some(CommandKind::Metrics),
        Request::Dump => Some(CommandKind::Dump),
        Request::Help | Request::Quit => None,
    }
}

/// The value of `name=` in a STATUS line, if present.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.split(' ').find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
}

/// Accepted entries the outputs are about to persist: what their sync covers.
fn accepted_entries(outputs: &[Output]) -> u64 {
    outputs
        .iter()
        .map(|o| match o {
            Output::Persist(Persist::Accept(entries)) => entries.len() as u64,
            _ => 0,
        })
        .sum()
}

/// A client request the loop is answering.
struct Pending {
    conn: ConnId,
    /// The connection's number for the request (replies go out in this order).
    seq: u64,
    /// Its `command` label for METRICS.
    command: CommandKind,
    /// When the loop received it: request latency runs from here.
    received: Instant,
}

/// The server's side of the executor: peer writers, client reply channels
/// and the metrics of what passes through them.
struct ServerNet {
    peers: PeerSenders,
    clients: BTreeMap<ConnId, Arc<ClientOut>>,
    /// Connections with replies since the last flush (may repeat).
    replied: Vec<ConnId>,
    /// Client requests waiting for the protocol's reply.
    pending: BTreeMap<ReqId, Pending>,
    /// The loop's metrics (owned here so replies are counted as they go).
    metrics: Metrics,
    /// Scratch buffer for encoding one frame.
    frame: Vec<u8>,
}

impl ServerNet {
    /// Hands the reply for `p` to its connection and records it.
    fn answer(&mut self, p: &Pending, reply: Reply) {
        let error = match &reply {
            Reply::Error(e) => Some(e.code()),
            _ => None,
        };
        self.metrics.record_request(p.command, p.received.elapsed(), error);
        self.send_reply(p.conn, p.seq, reply);
    }

    /// Queues a reply; it is written at the end of the turn by [`ServerNet::flush`].
    fn send_reply(&mut self, conn: ConnId, seq: u64, reply: Reply) {
        // A closed connection just loses its reply.
        if let Some(out) = self.clients.get(&conn) {
            out.reply(seq, reply);
            self.replied.push(conn);
        }
    }

    /// Writes everything this turn produced: one write per peer link and
    /// per client connection (or a hand-off to its writer thread).
    ///
    /// Each write to a loopback peer also runs the receiver's network stack
    /// and wakes its reader, so what goes first leaves tens of microseconds
    /// earlier. A leader writes its peer frames first: they are ACCEPTs,
    /// which start the longest round trips of the requests in flight. A
    /// follower writes its client replies first: its peer frames are votes,
    /// of which the leader needs only one, and forwards, which wait for the
    /// turn's replies at most; a reply ends a request (a PUT through a
    /// follower has one peer write less on its path, about 4% of its p50).
    fn flush(&mut self, replies_first: bool) {
        if !replies_first {
            self.peers.flush();
        }
        self.replied.sort_unstable();
        self.replied.dedup();
        for conn in self.replied.drain(..) {
            if let Some(out) = self.clients.get(&conn) {
                out.flush();
            }
        }
        if replies_first {
            self.peers.flush();
        }
    }
}

impl Network for ServerNet {
    fn send(&mut self, to: &[ReplicaId], env: &Envelope) {
        wire::encode_into(env, &mut self.frame);
        for id in to {
            self.peers.send(*id, &self.frame);
        }
    }

    fn reply(&mut self, req: ReqId, reply: Reply) {
        if let Some(p) = self.pending.remove(&req) {
            self.answer(&p, reply);
        }
    }
}
