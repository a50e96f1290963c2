//! The protocol core: one replica as a pure state machine (DESIGN §1, §3–§6).
//!
//! No sockets, threads, clocks, files or global RNG live here. The caller feeds
//! [`Input`]s with the current time to [`Replica::step`], then calls
//! [`Replica::flush`] once per batch; both push [`Output`]s: `Persist` ops,
//! peer messages and client replies, which the output executor (`crate::exec`)
//! carries out *in order*, making every `Persist` durable before any later send
//! or reply. The server and the simulator run exactly this code.
//!
//! # The story
//!
//! **Formation** (`membership.rs`). A brand-new cluster forms only when all N
//! replicas are up and blank: the highest id sends FORM with a cluster id and
//! every incarnation, each replica records it and acks, then FORMED. Nothing is
//! elected or served before that.
//!
//! **Election** (`election.rs`). When the leader is silent for the election
//! timeout (or its link resets), a replica runs Bully: ELECTION to every higher
//! id; a live higher id answers ALIVE and takes over. A replica that hears no
//! ALIVE is the Bully winner, but it does not serve yet: it picks an epoch it
//! alone owns (`e % N == id % N`), durably promises it, and sends COORDINATOR.
//! Replicas whose promise is lower durably promise `e` and send back everything
//! they hold above the winner's commit index. With promises from a majority of
//! N the winner is leader and *recovers* the log: slots up to the highest commit
//! index heard are taken as chosen; each slot above it gets the highest-ballot
//! entry any promiser holds (a hole gets a no-op), re-proposed in `e` with the
//! same entry id; then one no-op of its own epoch. Only when that commits does
//! it serve.
//!
//! **Writes** (`replication.rs`). The leader appends an entry, id `(e, index)`,
//! and sends ACCEPT (batched per [`Replica::flush`]). A replica whose promise is
//! `<= e` stores it durably, raises its promise, and votes. A slot with NW votes
//! in one ballot is chosen; the leader commits chosen slots strictly in index
//! order, applies them, replies `OK <version>`, and names each committed
//! `(index, entry id)` in COMMIT. With NW = 2 the leader's vote goes to
//! every follower instead, which tallies it with its own exactly as the leader does
//! (votes in the epoch of the leader it follows, from full members at the
//! incarnation it records; learners never count) and learns a slot is chosen
//! without a COMMIT, which the leader then does not send. A follower applies a slot only when it knows it
//! holds the chosen entry there (NW votes for the epoch of the entry it holds, COMMIT named its
//! id, or its ballot is the epoch of the leader whose commit index covers it);
//! otherwise it fetches the entry from the leader (catch-up). Followers forward
//! client writes to the leader with a request id; the leader de-duplicates
//! forwards per epoch, and its ACCEPT names the entry each forward became, so
//! the forwarding follower answers its client when it applies that entry
//! (every replica applies it the same way, CAS included). Because a follower
//! can acknowledge a write before the leader knows it is chosen, a read-index
//! read waits for the leader's last index, not its commit index.
//!
//! **Reads** (`reads.rs`). A read asks NR random full members for the key's
//! version and whether they hold an entry for it above their applied index
//! (*pending*). All agree and none pending: reply. Otherwise retry with backoff,
//! and after a few rounds fall back to the leader, which confirms its leadership
//! with a fresh heartbeat round and answers at its commit index (read-index).
//!
//! # CAVEATS
//! - A write that times out (`ERR TIMEOUT`) may or may not have committed.
//! - Two replicas may both believe they lead during a partition; only the one
//!   whose epoch a majority promised can get votes, so only it commits.
//! - The leader's request de-duplication table lives for one epoch: a follower
//!   never re-sends a forward to a later epoch, so none is needed across epochs.

pub mod durable;
mod election;
mod inspect;
mod membership;
pub mod message;
pub mod quorum;
pub mod reads;
mod replication;
mod snapshot;
pub mod store;
pub mod types;

use crate::client::{ClientError, Reply, Request};
use durable::{Durable, Persist};
use message::{Envelope, PeerMsg};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use types::{Entry, EntryId, Epoch, Formation, Incarnation, LogIndex, Millis, ReplicaId, ReqId};

/// Entries a leader may have proposed and not yet seen chosen. More writes wait
/// in a queue: this bounds the memory of vote tallies and of every ACCEPT re-send.
pub const INFLIGHT_ENTRIES_MAX: usize = 8192;
/// Entries in one ACCEPT, FetchResp or Promise message (see also
/// [`BATCH_BYTES_MAX`]).
pub const BATCH_ENTRIES_MAX: usize = 512;
/// Entry bytes (keys, values, a fixed overhead each: [`Entry::size_bytes`])
/// in one ACCEPT or FetchResp, or in the committed part of a Promise; a
/// batch always takes its first entry. With 64 KiB values the entry bound
/// alone allowed 34 MB frames (a Promise four times that, past
/// `wire::FRAME_BYTES_MAX`, so it was dropped and the election it answered
/// could never finish), and a heartbeat on the same link waited behind each.
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// Entry bytes a leader may have proposed and not yet seen chosen (with
/// [`INFLIGHT_ENTRIES_MAX`]). A Promise carries a replica's uncommitted
/// entries whole, so this keeps it well inside one frame with large values.
pub const INFLIGHT_BYTES_MAX: u64 = 16 << 20;

const _: () = assert!(
    INFLIGHT_BYTES_MAX + 2 * BATCH_BYTES_MAX as u64 <= crate::wire::FRAME_BYTES_MAX as u64 / 2
);

/// Fills one message's batch of entries within [`BATCH_ENTRIES_MAX`] and
/// [`BATCH_BYTES_MAX`].
#[derive(Debug, Default)]
pub(crate) struct BatchBudget {
    entries: usize,
    bytes: usize,
}

impl BatchBudget {
    /// Counts `entry` in and returns true if the batch has room for it (an
    /// empty batch always does); false when the batch is full.
    pub(crate) fn take(&mut self, entry: &Entry) -> bool {
        let size = entry.size_bytes();
        let full = self.entries >= BATCH_ENTRIES_MAX || self.bytes + size > BATCH_BYTES_MAX;
        if self.entries > 0 && full {
            return false;
        }
        self.entries += 1;
        self.bytes += size;
        true
    }
}

/// Splits `entries` into consecutive runs that each fit one [`BatchBudget`].
pub(crate) fn batch_ranges(entries: &[(LogIndex, Entry)]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut budget) = (0, BatchBudget::default());
    for (i, (_, entry)) in entries.iter().enumerate() {
        if !budget.take(entry) {
            ranges.push(start..i);
            (start, budget) = (i, BatchBudget::default());
            assert!(budget.take(entry), "an empty batch takes any entry");
        }
    }
    if start < entries.len() {
        ranges.push(start..entries.len());
    }
    ranges
}
/// How far above its commit index a follower tallies the votes it hears:
/// twice the leader's window, so the tallies' memory stays bounded whatever
/// a peer sends.
pub const VOTES_AHEAD_MAX: u64 = 2 * INFLIGHT_ENTRIES_MAX as u64;
/// Committed entries applied to the store between two flushes (a flush ends
/// each turn of the event loop). A commit index that jumps by thousands of
/// entries (a deep pipelined load, random keys over a large store, where one
/// apply can take tens of microseconds) is applied over several turns, and
/// the loop sends its heartbeats and answers its peers in between: one turn
/// stays a few milliseconds long instead of passing the election timeout.
pub const APPLY_PER_FLUSH_MAX: u64 = 1024;
/// Answered forwarded writes a leader remembers for re-sent forwards, at most
/// (each for twice the request timeout otherwise). Past it the oldest are
/// forgotten early: a copy of a forgotten forward is dropped by the
/// forward-id rule, never applied twice, and its client sees `ERR TIMEOUT`.
/// This bounds the leader's memory under a deep pipelined load through the
/// followers (about 200 bytes an entry: at 70,000 forwarded writes a second
/// the twice-the-timeout horizon alone held about 90 MB).
pub const DEDUP_ENTRIES_MAX: usize = 65_536;
/// Quorum-read rounds before a read falls back to the leader (DESIGN §5).
pub const READ_ROUNDS_BEFORE_FALLBACK: u32 = 3;

/// Timing and quorum settings. All times in milliseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica.
    pub id: ReplicaId,
    /// Number of replicas N.
    pub n: usize,
    /// NW: votes needed to choose a slot.
    pub write_quorum: usize,
    /// NR: replicas asked per read round.
    pub read_quorum: usize,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Silence after which a follower starts an election (jittered up to 1.5x).
    pub election_timeout_ms: u64,
    /// A client request gets an answer within this time (`ERR TIMEOUT` at worst).
    pub request_timeout_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_every_entries: u64,
}

impl Config {
    /// Every replica id, in order.
    pub fn ids(&self) -> impl Iterator<Item = ReplicaId> {
        (1..=self.n as u8).map(ReplicaId)
    }
}

/// One thing that happened to the replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed; check deadlines. The caller sends one every few milliseconds.
    Tick,
    /// A message from a peer.
    Peer(Envelope),
    /// A client command (PUT, GET, GETV, DEL, CAS).
    Client { req: ReqId, request: Request },
    /// Our link to this peer came up: introduce ourselves.
    LinkUp(ReplicaId),
    /// A link with this peer broke (EOF or error, as after kill -9).
    LinkDown(ReplicaId),
    /// A snapshot asked for with `Output::SaveSnapshot` is durable.
    SnapshotSaved(LogIndex),
}

/// One thing the executor must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Write to durable storage; durable before any later `Send` or `Reply`.
    Persist(Persist),
    /// Send one message to these peers.
    Send { to: Vec<ReplicaId>, env: Envelope },
    /// Answer a client request.
    Reply { req: ReqId, reply: Reply },
    /// Save this snapshot; report `Input::SnapshotSaved` when it is durable.
    SaveSnapshot(std::sync::Arc<durable::Snapshot>),
}

/// Who is waiting for a write's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Waiter {
    /// A client connected to this replica.
    Local(ReqId),
    /// A follower that forwarded the write (its boot and forward id); it relays the reply.
    Remote { from: ReplicaId, boot: u64, req: ReqId },
}

/// What a replica is doing right now.
#[derive(Debug)]
enum Role {
    /// Follows `Replica::leader` (or waits for one).
    Follower,
    /// Running an election.
    Candidate(Campaign),
    /// Leading its epoch (`Replica::promise`).
    Leader(Box<election::Leadership>),
}

/// The phases of a campaign (DESIGN §3.2).
#[derive(Debug)]
enum Campaign {
    /// Sent ELECTION to higher ids; waiting for ALIVE until `deadline`.
    Bully { deadline: Millis },
    /// A higher id answered ALIVE; waiting for its COORDINATOR until `deadline`.
    AwaitCoordinator { deadline: Millis },
    /// Bully winner: sent COORDINATOR(epoch); collecting promises. COORDINATOR
    /// goes again at `resend_at` to every peer that has not promised yet.
    Promises {
        epoch: Epoch,
        promises: BTreeMap<ReplicaId, election::PromiseInfo>,
        deadline: Millis,
        resend_at: Millis,
    },
}

/// What this replica last heard about a peer.
#[derive(Clone, Copy, Debug, Default)]
struct PeerState {
    /// When the peer last sent anything.
    heard: Option<Millis>,
    /// Its formation state, as of its last message.
    formation: Formation,
    /// Its incarnation, as of its last message.
    incarnation: Incarnation,
    /// Whether it said it is a learner.
    learner: bool,
    /// False from a link reset until we hear from it or our link is up again.
    link_up: bool,
}

/// Counters for STATUS and METRICS.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Elections this replica started.
    pub elections_started: u64,
    /// Times this replica became leader.
    pub leaderships: u64,
    /// Peer messages dropped because they did not fit the role, epoch or incarnation.
    pub dropped_messages: u64,
    /// Quorum-read rounds that had to be retried.
    pub read_retries: u64,
    /// Reads answered by the leader's read-index path.
    pub read_fallbacks: u64,
    /// Entries installed through catch-up.
    pub caught_up_entries: u64,
    /// Snapshots installed through catch-up.
    pub snapshots_installed: u64,
    /// Leader changes this replica saw (it followed or became a new leader).
    pub leader_changes: u64,
    /// The last election as this replica saw it (for STATUS).
    pub last_election: Option<ElectionRecord>,
    /// The one before, restored when an election ends with the same leader.
    pub previous_election: Option<ElectionRecord>,
    /// The leader (and epoch) of the last completed election.
    pub last_leader: Option<(ReplicaId, Epoch)>,
}

/// One election as one replica saw it: from losing its leader (or starting
/// up) to following or becoming the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionRecord {
    /// When the replica lost its leader or started campaigning.
    pub started: Millis,
    /// When it followed or became the new leader; None while running.
    pub ended: Option<Millis>,
    /// The new leader.
    pub winner: Option<ReplicaId>,
    /// The new leader's epoch.
    pub epoch: Epoch,
}

/// One replica's whole protocol state. See the module docs for the story.
pub struct Replica {
    cfg: Config,
    rng: StdRng,
    /// Random per process start: makes forward request ids unique across restarts.
    boot: u64,

    // Durable state (mirrors what storage holds; changed only with a Persist).
    incarnation: Incarnation,
    promise: Epoch,
    promise_leader: Option<Incarnation>,
    incarnations: BTreeMap<ReplicaId, Incarnation>,
    formation: Formation,
    learner: bool,
    log: BTreeMap<LogIndex, Entry>,

    // Derived state.
    /// Every slot <= commit is chosen, held, and known to be chosen.
    commit: LogIndex,
    /// Slots <= applied are in `store`. Catches up with `commit` at most
    /// [`APPLY_PER_FLUSH_MAX`] slots per flush (see [`Replica::has_backlog`]).
    applied: LogIndex,
    /// Slots applied since the last flush.
    applied_since_flush: u64,
    /// Slots above `commit` known to be chosen, with the chosen entry id.
    chosen: BTreeMap<LogIndex, EntryId>,
    /// key -> (version, value).
    store: store::Store,

    // Volatile state.
    role: Role,
    /// Highest epoch seen in any message.
    known_epoch: Epoch,
    /// The leader we follow and its epoch.
    leader: Option<(ReplicaId, Epoch)>,
    /// When a follower starts an election if the leader stays silent.
    election_deadline: Millis,
    peers: BTreeMap<ReplicaId, PeerState>,
    /// Client writes waiting for a leader to be known (follower side).
    awaiting_leader: Vec<(ReqId, Request, Millis)>,
    /// Forwards sent to a leader, waiting for its reply, by forward id.
    forwards: BTreeMap<u64, replication::Forwarding>,
    next_forward: u64,
    /// Quorum reads in progress.
    reads: BTreeMap<u64, reads::ReadRound>,
    next_read: u64,
    /// An outstanding catch-up fetch: (from whom, deadline).
    fetch: Option<(ReplicaId, Millis)>,
    /// Formation driver state (highest id only).
    forming: Option<membership::Forming>,
    /// When we last (re)sent Hello while not formed.
    hello_at: Millis,
    /// Votes to send at the next flush, per (leader, epoch).
    pending_votes: BTreeMap<(ReplicaId, Epoch), Vec<LogIndex>>,
    /// Follower: votes heard for slots above the commit index: the epoch
    /// voted in, and each voter with the incarnation it voted from.
    votes_heard: BTreeMap<LogIndex, (Epoch, Vec<(ReplicaId, Incarnation)>)>,
    /// Follower: slots an ACCEPT named as our own forwarded writes: the entry
    /// proposed there and the forward's id. Applying that entry answers it.
    forward_slots: BTreeMap<LogIndex, (EntryId, u64)>,
    /// Counters.
    pub stats: Stats,
    /// Time of the last step (for status).
    now: Millis,
    /// The commit index last written to storage.
    commit_persisted: LogIndex,
    /// The highest commit index a leader told us about (catch-up target).
    catchup_to: LogIndex,
    /// A learner's progress towards full membership (DESIGN §6).
    learning: Option<membership::Learning>,
    /// The log holds no entries at or below this index (a snapshot covers them).
    snapshot_index: LogIndex,
    /// A snapshot save in flight, by index.
    snapshot_pending: Option<LogIndex>,
    /// Snapshot at the next flush regardless of the interval.
    snapshot_requested: bool,
    /// Log entries a snapshot made obsolete, freed a slice per flush.
    compacted_log: Vec<BTreeMap<LogIndex, Entry>>,
    /// Snapshots being sent, per receiver.
    outgoing: BTreeMap<ReplicaId, snapshot::Outgoing>,
    /// A snapshot being received.
    incoming: Option<snapshot::Incoming>,
    /// Follower DUMPs waiting to apply up to the leader-confirmed index.
    barriers: Vec<(ReqId, LogIndex)>,
    /// Next keepalive Hello while not leading.
    keepalive_at: Millis,
    /// When we last told each peer that its incarnation is superseded here.
    superseded_sent: BTreeMap<ReplicaId, Millis>,
}

impl Replica {
    /// Builds a replica from what storage recovered. `seed` drives all of its
    /// randomness (jitter, read replica choice, nonces); `boot` must differ on
    /// every process start.
    pub fn new(cfg: Config, durable: Durable, seed: u64, boot: u64) -> Replica {
        assert!(cfg.n >= 1 && cfg.n <= 255, "N out of range: {}", cfg.n);
        assert!(cfg.id.0 >= 1 && cfg.id.0 as usize <= cfg.n, "id {} outside 1..={}", cfg.id, cfg.n);
        assert!(quorum::is_valid(cfg.n, cfg.write_quorum, cfg.read_quorum), "unsafe quorums");
        let mut peers = BTreeMap::new();
        for id in cfg.ids().filter(|id| *id != cfg.id) {
            peers.insert(id, PeerState::default());
        }
        let mut replica = Replica {
            rng: StdRng::seed_from_u64(seed),
            boot,
            incarnation: durable.incarnation.unwrap_or_default(),
            promise: durable.promise,
            promise_leader: durable.promise_leader,
            incarnations: durable.incarnations,
            formation: durable.formation,
            learner: durable.learner,
            log: durable.log,
            commit: LogIndex(0),
            applied: LogIndex(0),
            applied_since_flush: 0,
            chosen: BTreeMap::new(),
            store: store::Store::new(),
            role: Role::Follower,
            known_epoch: durable.promise,
            leader: None,
            election_deadline: Millis(0),
            peers,
            awaiting_leader: Vec::new(),
            forwards: BTreeMap::new(),
            next_forward: 1,
            reads: BTreeMap::new(),
            next_read: 1,
            fetch: None,
            forming: None,
            hello_at: Millis(0),
            pending_votes: BTreeMap::new(),
            votes_heard: BTreeMap::new(),
            forward_slots: BTreeMap::new(),
            stats: Stats::default(),
            now: Millis(0),
            commit_persisted: durable.commit,
            catchup_to: LogIndex(0),
            learning: None,
            snapshot_index: LogIndex(0),
            snapshot_pending: None,
            snapshot_requested: false,
            compacted_log: Vec::new(),
            outgoing: BTreeMap::new(),
            incoming: None,
            barriers: Vec::new(),
            keepalive_at: Millis(0),
            superseded_sent: BTreeMap::new(),
            cfg,
        };
        if let Some(snap) = durable.snapshot {
            replica.store = snap.store;
            replica.commit = snap.index;
            replica.applied = snap.index;
            replica.snapshot_index = snap.index;
            replica.log.retain(|i, _| *i > snap.index);
        }
        // Every slot up to the recorded commit index was chosen; the log still
        // holds them all (no compaction yet), so re-apply them in order.
        let recorded = durable.commit;
        let mut index = replica.commit.next();
        while index <= recorded && replica.log.contains_key(&index) {
            replica.commit = index;
            index = index.next();
        }
        while replica.applied < replica.commit {
            replica.applied_since_flush = 0;
            replica.apply_committed(&mut Vec::new());
        }
        replica.applied_since_flush = 0;
        replica
    }

    /// Called once before the first step: picks an incarnation for a new
    /// directory (durably, before anyone hears of it) and arms the timers.
    pub fn start(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.now = now;
        if self.incarnation.counter == 0 {
            self.incarnation = Incarnation { counter: 1, nonce: self.rng.random() };
            out.push(Output::Persist(Persist::Incarnation(self.incarnation)));
        }
        self.incarnations.insert(self.cfg.id, self.incarnation);
        if self.learner {
            crate::qlog!("learner: restarted before promotion; rejoining");
            self.begin_learning(now);
        }
        // A restarted replica listens for a current leader for one election
        // timeout before it campaigns, so a restart does not depose a healthy leader.
        self.reset_election_deadline(now);
        self.open_election(now);
    }

    /// Handles one input.
    pub fn step(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        self.now = now;
        match input {
            Input::Tick => self.on_tick(now, out),
            Input::Peer(env) => self.on_peer(now, env, out),
            Input::Client { req, request } => self.on_client(now, req, request, out),
            Input::LinkUp(id) => self.on_link_up(now, id, out),
            Input::LinkDown(id) => self.on_link_down(now, id, out),
            Input::SnapshotSaved(index) => self.on_snapshot_saved(index, out),
        }
    }

    /// Ends a batch of steps: sends the batched ACCEPTs, votes and COMMITs.
    /// The caller runs it after every batch of inputs (the simulator after each step).
    pub fn flush(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.now = now;
        self.continue_apply(now, out);
        self.flush_proposals(now, out);
        self.flush_votes(out);
        self.flush_commits(out);
        self.maybe_snapshot(out);
        self.applied_since_flush = 0;
    }

    /// True while committed slots wait to be applied: the caller should run
    /// another turn (a flush) without waiting for an event.
    pub fn has_backlog(&self) -> bool {
        self.applied < self.commit
    }

    fn on_tick(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.tick_formation(now, out);
        if !self.is_formed() {
            return;
        }
        self.tick_learning(now, out);
        self.tick_election(now, out);
        self.tick_replication(now, out);
        self.tick_reads(now, out);
        self.tick_snapshots(now);
    }

    fn on_link_up(&mut self, now: Millis, id: ReplicaId, out: &mut Vec<Output>) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.link_up = true;
            self.send(vec![id], PeerMsg::Hello, out);
        }
        self.tick_formation(now, out);
    }

    fn on_link_down(&mut self, now: Millis, id: ReplicaId, out: &mut Vec<Output>) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.link_up = false;
        }
        // A reset link to the leader (kill -9) starts an election at once, after
        // a short jitter, instead of waiting out the timeout (DESIGN §3.2).
        if matches!(self.role, Role::Follower) && self.leader.map(|(l, _)| l) == Some(id) {
            self.lose_leader(now, out);
            let jitter = self.rng.random_range(0..=self.cfg.heartbeat_ms.max(1));
            self.election_deadline = self.election_deadline.min(now.plus(jitter));
        }
    }

    /// Screens every peer message: incarnation, epoch and formation bookkeeping,
    /// then dispatches on the message.
    fn on_peer(&mut self, now: Millis, env: Envelope, out: &mut Vec<Output>) {
        let from = env.from;
        if from == self.cfg.id && env.incarnation == self.incarnation {
            // Our own vote, handed back by the executor once our write is durable.
            if let PeerMsg::Vote { epoch, accepted, .. } = env.msg {
                let (inc, learner) = (self.incarnation, self.learner);
                self.on_vote(now, from, inc, learner, epoch, accepted, out);
            }
            return;
        }
        if !self.peers.contains_key(&from) {
            self.stats.dropped_messages += 1;
            return;
        }
        if matches!(env.msg, PeerMsg::Join) {
            // Answered from any incarnation: a wiped replica learns the counter to beat.
            self.on_join(from, out);
            return;
        }
        if self.is_stale_incarnation(from, env.incarnation) {
            self.notice_superseded(now, from, out);
            self.stats.dropped_messages += 1;
            return;
        }
        let peer = self.peers.get_mut(&from).expect("checked above");
        peer.heard = Some(now);
        // Hearing from a peer proves it is up; its link may have been reset
        // and re-dialled without a LinkUp on our side.
        peer.link_up = true;
        peer.formation = env.formation;
        peer.incarnation = env.incarnation;
        peer.learner = env.learner;
        self.observe_formation(now, &env, out);
        if !self.is_formed() {
            match env.msg {
                PeerMsg::Superseded { recorded } => {
                    self.on_superseded(now, env.learner, recorded, out)
                }
                msg => self.on_formation_msg(now, env.from, msg, out),
            }
            return;
        }
        // Any higher epoch from a full member stops our leading or campaigning
        // at once (DESIGN §3.1). A refusal is the exception: it is the answer to
        // our own COORDINATOR, and the campaign decides what to do with it.
        if !env.learner && env.epoch > self.promise {
            self.known_epoch = self.known_epoch.max(env.epoch);
            if !matches!(env.msg, PeerMsg::Refuse { .. }) {
                self.observe_higher_epoch(now, env.epoch, out);
            }
        }
        self.dispatch(now, env, out);
    }

    fn dispatch(&mut self, now: Millis, env: Envelope, out: &mut Vec<Output>) {
        let from = env.from;
        let inc = env.incarnation;
        match env.msg {
            PeerMsg::Hello => {}
            PeerMsg::Election => self.on_election(now, from, out),
            PeerMsg::Alive => self.on_alive(now, from),
            PeerMsg::Coordinator { epoch, commit } => {
                self.on_coordinator(now, from, inc, epoch, commit, out)
            }
            PeerMsg::Promise { epoch, commit, entries, truncated, incarnations } => {
                let info = election::PromiseInfo {
                    commit,
                    entries,
                    truncated,
                    incarnation: inc,
                    table: BTreeMap::new(),
                };
                self.on_promise(now, from, epoch, info, incarnations, out)
            }
            PeerMsg::Refuse { epoch, promised } => self.on_refuse(now, epoch, promised, out),
            PeerMsg::Accept { epoch, entries, commit, forwards } => {
                self.on_accept(now, from, inc, epoch, entries, commit, forwards, out)
            }
            PeerMsg::Vote { epoch, accepted, .. } => {
                self.on_vote(now, from, inc, env.learner, epoch, accepted, out)
            }
            PeerMsg::Commit { epoch, slots } => self.on_commit(now, from, epoch, slots, out),
            PeerMsg::Heartbeat { epoch, seq, progress } => {
                self.on_heartbeat(now, from, inc, epoch, seq, progress, out)
            }
            PeerMsg::HeartbeatAck { epoch, seq, commit } => {
                self.on_heartbeat_ack(now, from, epoch, seq, commit, out)
            }
            PeerMsg::Forward { req, boot, epoch, request } => {
                self.on_forward(now, from, req, boot, epoch, request, out)
            }
            PeerMsg::ForwardReply { req, boot, reply } => {
                self.on_forward_reply(req, boot, reply, out)
            }
            PeerMsg::ReadReq { read, boot, key } => self.on_read_req(from, read, boot, key, out),
            PeerMsg::ReadResp { read, boot, answer } => {
                self.on_read_resp(now, from, read, boot, answer, out)
            }
            PeerMsg::FetchReq { from: index } => self.on_fetch_req(now, from, index, out),
            PeerMsg::FetchResp { entries, commit } => {
                self.on_fetch_resp(now, from, entries, commit, out)
            }
            PeerMsg::SnapshotChunk { index, after, items, done } => {
                self.on_snapshot_chunk(now, from, index, after, items, done, out)
            }
            PeerMsg::SnapshotReq { index, after } => {
                self.on_snapshot_req(now, from, index, after, out)
            }
            PeerMsg::Join => self.on_join(from, out),
            PeerMsg::JoinInfo { incarnations } => {
                self.on_join_info(now, from, env.learner, incarnations, out)
            }
            PeerMsg::Register => self.on_register(from, inc, out),
            PeerMsg::Registered { incarnation, promised, incarnations } => {
                self.on_registered(now, from, env.learner, incarnation, promised, incarnations, out)
            }
            PeerMsg::Superseded { recorded } => self.on_superseded(now, env.learner, recorded, out),
            msg @ (PeerMsg::Form { .. } | PeerMsg::FormAck { .. } | PeerMsg::Formed { .. }) => {
                self.on_formation_msg(now, from, msg, out)
            }
        }
    }

    fn on_client(&mut self, now: Millis, req: ReqId, request: Request, out: &mut Vec<Output>) {
        if !self.is_formed() {
            let detail = self.formation_wait_detail();
            reply(out, req, Reply::Error(ClientError::NoLeader(detail)));
            return;
        }
        match request {
            Request::Put { .. } | Request::Del { .. } | Request::Cas { .. } => {
                self.on_client_write(now, req, request, out)
            }
            Request::Get { key } => self.start_read(now, req, key, false, out),
            Request::GetV { key } => self.start_read(now, req, key, true, out),
            Request::Dump => self.start_dump(now, req, out),
            Request::Status | Request::Metrics | Request::Help | Request::Quit => {
                let detail = "not a replicated command".to_string();
                reply(out, req, Reply::Error(ClientError::BadCmd(detail)))
            }
        }
    }

    // ----- small shared helpers -----

    /// Wraps `msg` in our envelope and queues it for `to`.
    fn send(&self, to: Vec<ReplicaId>, msg: PeerMsg, out: &mut Vec<Output>) {
        if to.is_empty() {
            return;
        }
        out.push(Output::Send { to, env: self.envelope(msg) });
    }

    fn envelope(&self, msg: PeerMsg) -> Envelope {
        Envelope {
            from: self.cfg.id,
            incarnation: self.incarnation,
            epoch: self.promise,
            formation: self.formation,
            learner: self.learner,
            msg,
        }
    }

    /// Every other replica, in id order.
    fn others(&self) -> Vec<ReplicaId> {
        self.peers.keys().copied().collect()
    }

    /// The replica that owns `epoch` (DESIGN §3.2: `e % N == k % N`).
    fn owner(&self, epoch: Epoch) -> ReplicaId {
        let n = self.cfg.n as u64;
        let r = epoch.0 % n;
        ReplicaId(if r == 0 { n as u8 } else { r as u8 })
    }

    /// Peers that answered at our current epoch within the election timeout.
    fn live_peers(&self, now: Millis) -> BTreeSet<ReplicaId> {
        let horizon = self.cfg.election_timeout_ms;
        let mut live = BTreeSet::new();
        // A link reset (kill -9) marks a peer not live at once, until it is
        // heard from again: waiting out the timeout would let a write be
        // proposed that can never commit.
        if let Role::Leader(l) = &self.role {
            for (id, at) in &l.last_ack {
                let link_up = self.peers.get(id).is_some_and(|p| p.link_up && !p.learner);
                if now.since(*at) <= horizon && link_up {
                    live.insert(*id);
                }
            }
            return live;
        }
        for (id, p) in &self.peers {
            if p.learner {
                continue;
            }
            if let Some(at) = p.heard {
                if now.since(at) <= horizon && p.link_up {
                    live.insert(*id);
                }
            }
        }
        live
    }

    /// The `ERR NOQUORUM live/needed down=…` error for `now`.
    fn no_quorum(&self, now: Millis) -> ClientError {
        let live = self.live_peers(now);
        let down: Vec<ReplicaId> =
            self.others().into_iter().filter(|id| !live.contains(id)).collect();
        ClientError::NoQuorum { live: live.len() + 1, needed: self.cfg.write_quorum, down }
    }

    /// True when fewer than NW full members are live, counting ourselves.
    fn lacks_write_quorum(&self, now: Millis) -> bool {
        self.live_peers(now).len() + 1 < self.cfg.write_quorum
    }

    fn reset_election_deadline(&mut self, now: Millis) {
        let base = self.cfg.election_timeout_ms;
        let jitter = self.rng.random_range(0..=base / 2);
        self.election_deadline = now.plus(base + jitter);
    }

    /// Persists a new promise (and remembers it).
    fn persist_promise(
        &mut self,
        epoch: Epoch,
        leader: Option<Incarnation>,
        out: &mut Vec<Output>,
    ) {
        assert!(epoch >= self.promise, "promise going back: {} -> {}", self.promise, epoch);
        self.promise = epoch;
        self.promise_leader = leader;
        self.known_epoch = self.known_epoch.max(epoch);
        out.push(Output::Persist(Persist::Promise { epoch, leader }));
    }

    /// The role word for STATUS and logs.
    pub fn role_name(&self) -> &'static str {
        if self.learner {
            return "learner";
        }
        match self.role {
            Role::Follower => "follower",
            Role::Candidate(_) => "candidate",
            Role::Leader(_) => "leader",
        }
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }

    /// The promised epoch.
    pub fn epoch(&self) -> Epoch {
        self.promise
    }

    /// The commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// The cluster id once formation picked one.
    pub fn cluster_id(&self) -> Option<u64> {
        self.formation.cluster_id()
    }

    /// The leader this replica believes in (itself when leading).
    pub fn leader_id(&self) -> Option<ReplicaId> {
        match self.role {
            Role::Leader(_) => Some(self.cfg.id),
            _ => self.leader.map(|(id, _)| id),
        }
    }

    /// True when this replica leads (recovering or serving).
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// True when this replica leads and has finished recovery.
    pub fn is_serving_leader(&self) -> bool {
        match &self.role {
            Role::Leader(l) => l.is_serving(self.commit),
            _ => false,
        }
    }

    /// The applied value of `key` (version, value), for tests and checkers.
    pub fn applied_value(&self, key: &str) -> Option<(u64, Vec<u8>)> {
        self.store.get(key).map(|r| (r.version(), r.value().to_vec()))
    }

    /// Every applied key and value, for tests and checkers.
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// The entry held at `index`, for tests and checkers.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.get(&index)
    }

    /// The STATUS line's fields (after `STATUS `).
    pub fn status(&self, now: Millis) -> String {
        let leader = self.leader_id().map(|l| l.to_string()).unwrap_or_else(|| "none".into());
        let last = self.log.keys().next_back().copied().unwrap_or(self.commit);
        let mut s = format!(
            "id={} role={} leader={} epoch={} commit={} applied={} last={} n={} nw={} nr={}",
            self.cfg.id,
            self.role_name(),
            leader,
            self.promise,
            self.commit,
            self.applied,
            last,
            self.cfg.n,
            self.cfg.write_quorum,
            self.cfg.read_quorum,
        );
        let live: Vec<String> = self.live_peers(now).iter().map(|id| id.to_string()).collect();
        s.push_str(&format!(" live={}", if live.is_empty() { "-".into() } else { live.join(",") }));
        if let Role::Leader(l) = &self.role {
            let lag: Vec<String> = l
                .peer_commit
                .iter()
                .map(|(id, c)| format!("{}:{}", id, self.commit.0.saturating_sub(c.0)))
                .collect();
            s.push_str(&format!(
                " lag={}",
                if lag.is_empty() { "-".into() } else { lag.join(",") }
            ));
        }
        if let Some(phase) = self.learning_phase() {
            s.push_str(&format!(" learning={phase}"));
        }
        if let Some(c) = self.catchup_target() {
            s.push_str(&format!(" catchup={}/{}", self.commit, c));
        }
        let formation = match self.formation {
            Formation::Blank => "blank".to_string(),
            Formation::Pending(id) => format!("pending:{id:016x}"),
            Formation::Complete(id) => format!("{id:016x}"),
        };
        s.push_str(&format!(
            " cluster={formation} elections={} elections_started={}",
            self.stats.leader_changes, self.stats.elections_started
        ));
        if let Some(e) = self.stats.last_election {
            match (e.ended, e.winner) {
                (Some(end), Some(winner)) => s.push_str(&format!(
                    " last_election_ms={} last_election_ago_ms={} last_winner={winner} last_winner_epoch={}",
                    end.since(e.started),
                    now.since(e.started),
                    e.epoch
                )),
                _ => s.push_str(&format!(" election_running_ms={}", now.since(e.started))),
            }
        }
        s
    }
}

/// Pushes a client reply.
fn reply(out: &mut Vec<Output>, req: ReqId, reply: Reply) {
    out.push(Output::Reply { req, reply });
}
