//! `SimCluster`: N real [`Replica`]s in one process, each with a [`SimDisk`],
//! all on one [`SimNetwork`] and one simulated clock (DESIGN §7).
//!
//! Every batch of inputs goes through `Replica::step`, then `Replica::flush`,
//! and its outputs through the server's own [`Executor`]: persists, one sync,
//! then sends and replies, with messages that report durable state held until
//! their sync is done and the replica's own votes fed back in once durable, as
//! the server's event loop does. Syncs and snapshot saves may take simulated
//! time. The checkers run after every batch. Link events follow what TCP would report: `LinkUp` at start, after a
//! restart and after a partition heals; `LinkDown` when a peer crashes (a
//! reset); nothing for a paused (SIGSTOPped) or partitioned peer, whose
//! sockets stay open.

use super::check::Checker;
use super::disk::SimDisk;
use super::fmt;
use super::net::{Msg, SimNetwork};
use crate::client::{Reply, Request};
use crate::exec::{Executor, Network};
use crate::protocol::durable::Persist;
use crate::protocol::message::Envelope;
use crate::protocol::types::{Epoch, Formation, Incarnation, LogIndex, Millis, ReplicaId, ReqId};
use crate::protocol::{quorum, Config, Input, Output, Replica};
use crate::storage::Storage;
use std::collections::{BTreeMap, BTreeSet};

/// The cluster id of a pre-formed cluster.
pub const PREFORMED_CLUSTER_ID: u64 = 0x51ed;
/// Batches between full passes of the committed-log checker over every replica.
const FULL_CHECK_EVERY_BATCHES: u64 = 1024;
/// Delivery rounds at one instant before `deliver_all` gives up (a message storm).
const DELIVER_ROUNDS_MAX: usize = 1000;

/// Cluster shape and timing.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub n: usize,
    pub write_quorum: usize,
    pub read_quorum: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Default interval between two ticks of one replica.
    pub tick_ms: u64,
    /// Start from directories that already hold a complete formation (golden
    /// scripts, property tests); otherwise the replicas form the cluster.
    pub formed: bool,
    /// Applied entries between snapshots.
    pub snapshot_every_entries: u64,
    /// fsync latency range (inclusive); 0..=0 makes syncs finish at once.
    pub fsync_ms: (u64, u64),
    /// Time to write a snapshot file.
    pub snapshot_ms: u64,
}

impl SimConfig {
    /// `n` replicas with default quorums and the golden scripts' timing.
    pub fn new(n: usize) -> SimConfig {
        let nw = quorum::default_write_quorum(n);
        SimConfig {
            n,
            write_quorum: nw,
            read_quorum: quorum::default_read_quorum(n, nw),
            heartbeat_ms: 20,
            election_timeout_ms: 100,
            request_timeout_ms: 1000,
            tick_ms: 10,
            formed: true,
            snapshot_every_entries: 1000,
            fsync_ms: (0, 0),
            snapshot_ms: 0,
        }
    }

    fn protocol(&self, id: ReplicaId) -> Config {
        Config {
            id,
            n: self.n,
            write_quorum: self.write_quorum,
            read_quorum: self.read_quorum,
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            snapshot_every_entries: self.snapshot_every_entries,
        }
    }
}

/// Where a crash lands inside the next executed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The next sync fails (power cut during fsync); `keep` un-synced ops
    /// survive as a torn tail. Nothing of that batch is sent.
    AtSync { keep: usize },
    /// The process dies after sending this many more messages (counted
    /// across batches), in the middle of a batch's sends if it comes to that.
    AfterSends(usize),
}

/// What a client sees.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// A reply, at time `at`, as the `seq`-th client event.
    Reply { req: ReqId, at: Millis, seq: u64, reply: Reply },
    /// The replica holding the request crashed: no reply will ever come.
    Lost { req: ReqId, at: Millis, seq: u64 },
}

/// A readable trace of the run: one header per step, its outputs indented.
#[derive(Debug, Default)]
pub struct Trace {
    pub on: bool,
    pub lines: Vec<String>,
}

impl Trace {
    fn push(&mut self, line: impl FnOnce() -> String) {
        if self.on {
            self.lines.push(line());
        }
    }
}

/// One replica slot of the cluster.
struct Node {
    id: ReplicaId,
    /// None while crashed.
    replica: Option<Replica>,
    disk: SimDisk,
    /// The process's output executor (holds durable-state messages for their sync).
    exec: Executor,
    /// SIGSTOPped: gets no inputs; they wait in `held`.
    paused: bool,
    held: Vec<Input>,
    /// Process starts so far (0 for the first).
    life: u32,
    /// Peers this replica was last told are linked (LinkUp without LinkDown).
    links: BTreeSet<ReplicaId>,
    next_tick: Millis,
    tick_ms: u64,
    armed: Option<CrashPoint>,
}

/// The role summary a trace compares before and after each step.
#[derive(Clone, Debug, PartialEq)]
struct Summary {
    role: String,
    leader: Option<ReplicaId>,
    epoch: Epoch,
    commit: LogIndex,
    last: LogIndex,
}

impl Summary {
    fn of(r: &Replica) -> Summary {
        let mut role = r.role_name().to_string();
        if let Some(p) = r.campaign_phase() {
            role = format!("candidate({p})");
        } else if r.is_recovering() {
            role = "leader(recovering)".into();
        }
        Summary {
            role,
            leader: r.leader_id(),
            epoch: r.epoch(),
            commit: r.commit_index(),
            last: r.last_log_index(),
        }
    }

    fn diff(&self, after: &Summary) -> Vec<String> {
        let mut d = Vec::new();
        if self.role != after.role {
            d.push(format!("role {} -> {}", self.role, after.role));
        }
        if self.leader != after.leader {
            let show = |l: Option<ReplicaId>| l.map(|l| l.to_string()).unwrap_or("none".into());
            d.push(format!("leader {} -> {}", show(self.leader), show(after.leader)));
        }
        if self.epoch != after.epoch {
            d.push(format!("epoch {} -> {}", self.epoch, after.epoch));
        }
        if self.commit != after.commit {
            d.push(format!("commit {} -> {}", self.commit, after.commit));
        }
        if self.last != after.last {
            d.push(format!("last {} -> {}", self.last, after.last));
        }
        d
    }
}

/// The executor's network: puts sends on the simulated wire and collects
/// replies; an armed mid-send kill cuts everything after it.
struct Wire<'a> {
    net: &'a mut SimNetwork,
    now: Millis,
    sends_left: Option<usize>,
    cut_off: bool,
    replies: Vec<(ReqId, Reply)>,
    trace: &'a mut Trace,
}

/// What a wire did.
struct WireDone {
    sends_left: Option<usize>,
    cut_off: bool,
    replies: Vec<(ReqId, Reply)>,
}

impl<'a> Wire<'a> {
    fn new(
        net: &'a mut SimNetwork,
        now: Millis,
        armed: Option<CrashPoint>,
        trace: &'a mut Trace,
    ) -> Wire<'a> {
        let sends_left = match armed {
            Some(CrashPoint::AfterSends(k)) => Some(k),
            _ => None,
        };
        Wire { net, now, sends_left, cut_off: false, replies: Vec::new(), trace }
    }

    fn done(self) -> WireDone {
        WireDone { sends_left: self.sends_left, cut_off: self.cut_off, replies: self.replies }
    }
}

impl Network for Wire<'_> {
    fn send(&mut self, to: &[ReplicaId], env: &Envelope) {
        for target in to {
            if let Some(left) = self.sends_left {
                if left == 0 {
                    self.cut_off = true;
                }
                self.sends_left = Some(left.saturating_sub(1));
            }
            if self.cut_off {
                return;
            }
            let sent = self.net.send(self.now, *target, env);
            let lost = if sent { "" } else { " (lost)" };
            self.trace.push(|| {
                format!("        send {}->{target}: {}{lost}", env.from, fmt::msg(&env.msg))
            });
        }
    }

    fn reply(&mut self, req: ReqId, reply: Reply) {
        if self.cut_off {
            return;
        }
        self.trace.push(|| format!("        reply #{}: {}", req.0, fmt::reply(&reply)));
        self.replies.push((req, reply));
    }
}

/// N replicas, their disks, the network and the clock.
pub struct SimCluster {
    pub cfg: SimConfig,
    /// Simulated time.
    pub now: Millis,
    seed: u64,
    nodes: Vec<Node>,
    pub net: SimNetwork,
    pub checker: Checker,
    /// The first invariant violation, if any.
    pub violation: Option<String>,
    /// When it was found: simulated time and the batches executed by then.
    pub violation_at: Option<(Millis, u64)>,
    pub trace: Trace,
    /// Client requests without an answer yet, and the replica that holds each.
    outstanding: BTreeMap<ReqId, ReplicaId>,
    next_req: u64,
    /// Client events not yet taken by the caller.
    pub events: Vec<ClientEvent>,
    /// Counter ordering client calls and returns (for linearizability).
    pub seq: u64,
    /// Batches executed.
    pub batches: u64,
    /// Up to this many due messages to one replica run as one batch (auto mode).
    pub batch_max: usize,
}

/// splitmix64: derives independent seeds from one run seed.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimCluster {
    /// A cluster of `cfg.n` replicas, not started. `manual`: messages wait for
    /// the caller to deliver them (golden scripts); otherwise `step_ms` delivers
    /// them by their random delivery times.
    pub fn new(cfg: SimConfig, seed: u64, manual: bool) -> SimCluster {
        let ids: Vec<ReplicaId> = (1..=cfg.n as u8).map(ReplicaId).collect();
        let table: BTreeMap<ReplicaId, Incarnation> =
            ids.iter().map(|id| (*id, Incarnation { counter: 1, nonce: id.0 as u64 })).collect();
        let nodes = ids
            .iter()
            .map(|id| {
                let disk_seed = mix(seed ^ 0xd15c ^ ((id.0 as u64) << 40));
                let mut disk = if cfg.formed {
                    SimDisk::with_ops(
                        disk_seed,
                        vec![
                            Persist::Incarnation(table[id]),
                            Persist::Incarnations(table.clone()),
                            Persist::Formation(Formation::Complete(PREFORMED_CLUSTER_ID)),
                        ],
                    )
                } else {
                    SimDisk::new(disk_seed)
                };
                disk.fsync_ms = cfg.fsync_ms;
                disk.snapshot_ms = cfg.snapshot_ms;
                Node {
                    id: *id,
                    replica: None,
                    disk,
                    exec: Executor::new(*id),
                    paused: false,
                    held: Vec::new(),
                    life: 0,
                    links: BTreeSet::new(),
                    next_tick: Millis(0),
                    tick_ms: cfg.tick_ms,
                    armed: None,
                }
            })
            .collect();
        SimCluster {
            net: SimNetwork::new(cfg.n, mix(seed ^ 0x6e65_7477), manual),
            cfg,
            now: Millis(0),
            seed,
            nodes,
            checker: Checker::default(),
            violation: None,
            violation_at: None,
            trace: Trace::default(),
            outstanding: BTreeMap::new(),
            next_req: 1,
            events: Vec::new(),
            seq: 0,
            batches: 0,
            batch_max: 1,
        }
    }

    /// Every replica id.
    pub fn ids(&self) -> Vec<ReplicaId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn idx(&self, id: ReplicaId) -> usize {
        assert!(id.0 >= 1 && id.0 as usize <= self.nodes.len(), "no replica {id}");
        id.0 as usize - 1
    }

    /// The running replica `id` (None while crashed).
    pub fn replica(&self, id: ReplicaId) -> Option<&Replica> {
        self.nodes[self.idx(id)].replica.as_ref()
    }

    /// The running replica `id`, to step by hand in a property test: what it
    /// outputs then is the test's to look at; the cluster executes none of it.
    pub fn replica_mut(&mut self, id: ReplicaId) -> Option<&mut Replica> {
        let i = self.idx(id);
        self.nodes[i].replica.as_mut()
    }

    /// True when `id` runs (paused or not).
    pub fn is_up(&self, id: ReplicaId) -> bool {
        self.replica(id).is_some()
    }

    /// True when `id` is paused.
    pub fn is_paused(&self, id: ReplicaId) -> bool {
        self.nodes[self.idx(id)].paused
    }

    /// Sets how often `id` ticks (a slow or busy process ticks late).
    pub fn set_tick_ms(&mut self, id: ReplicaId, tick_ms: u64) {
        let i = self.idx(id);
        self.nodes[i].tick_ms = tick_ms.max(1);
    }

    /// Client requests not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Adds a line to the trace.
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        let now = self.now;
        self.trace.push(|| format!("{:>6} {}", now.0, line()));
    }

    fn fail(&mut self, why: String) {
        if self.violation.is_none() {
            self.note(|| format!("VIOLATION: {why}"));
            self.violation = Some(why);
            self.violation_at = Some((self.now, self.batches));
        }
    }

    /// Starts every replica and brings every link up.
    pub fn start(&mut self) {
        for i in 0..self.nodes.len() {
            self.boot(i);
        }
        let ids = self.ids();
        for a in &ids {
            for b in &ids {
                if a != b && !self.net.is_cut(*a, *b) {
                    self.link_up(*a, *b);
                }
            }
        }
    }

    /// A new process on `nodes[i]`'s disk.
    fn boot(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let id = node.id;
        let life = node.life;
        let durable = match node.disk.recover() {
            Ok(d) => d,
            Err(e) => {
                self.fail(format!("r{id} cannot restart: {e}"));
                return;
            }
        };
        let seed = mix(self.seed ^ mix((id.0 as u64) << 32 | life as u64));
        let boot = mix(seed ^ 0xb007);
        let mut replica = Replica::new(self.cfg.protocol(id), durable, seed, boot);
        let mut out = Vec::new();
        replica.start(self.now, &mut out);
        node.replica = Some(replica);
        node.exec = Executor::new(id);
        node.next_tick = self.now;
        node.links.clear();
        self.note(|| format!("r{id} start (life {life})"));
        self.finish(i, out, LogIndex(0));
        if let Some(r) = self.nodes[i].replica.as_ref() {
            if let Err(e) = self.checker.full_check(r) {
                self.fail(e);
            }
        }
    }

    fn link_up(&mut self, a: ReplicaId, b: ReplicaId) {
        let i = self.idx(a);
        if self.nodes[i].replica.is_none() || self.replica(b).is_none() {
            return;
        }
        self.nodes[i].links.insert(b);
        self.input(a, Input::LinkUp(b));
    }

    /// Hands one input to `id`: held while paused, lost while crashed.
    pub fn input(&mut self, id: ReplicaId, input: Input) {
        let i = self.idx(id);
        let node = &mut self.nodes[i];
        if node.replica.is_none() {
            return;
        }
        if node.paused {
            node.held.push(input);
            return;
        }
        self.run_batch(i, vec![input]);
    }

    /// Steps `nodes[i]` through `inputs`, flushes once, executes the outputs
    /// and runs the checkers.
    fn run_batch(&mut self, i: usize, inputs: Vec<Input>) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else { return };
        let id = node.id;
        let before = self.trace.on.then(|| Summary::of(replica));
        let commit_before = replica.commit_index();
        let mark = self.trace.lines.len();
        let only_ticks = inputs.iter().all(|i| matches!(i, Input::Tick));
        let mut out = Vec::new();
        for input in inputs {
            self.trace.push(|| format!("{:>6} r{id} {}", now.0, fmt::input(&input)));
            replica.step(now, input, &mut out);
        }
        replica.flush(now, &mut out);
        if let Some(before) = before {
            let changes = before.diff(&Summary::of(replica));
            if !changes.is_empty() {
                self.trace.push(|| format!("        r{id}: {}", changes.join(", ")));
            }
        }
        self.finish(i, out, commit_before);
        // A tick that did nothing is left out of the trace.
        if only_ticks && self.trace.lines.len() == mark + 1 {
            self.trace.lines.truncate(mark);
        }
    }

    /// Executes a batch's outputs, then feeds the replica's own votes (released
    /// by the executor once durable) back in until none is left, as the
    /// server's event loop does; then the checkers and finished disk work.
    fn finish(&mut self, i: usize, out: Vec<Output>, commit_before: LogIndex) {
        let mut out = out;
        let mut commit_before = commit_before;
        loop {
            if !self.execute_once(i, out, commit_before) {
                return;
            }
            let loopback = self.nodes[i].exec.take_loopback();
            if loopback.is_empty() {
                break;
            }
            (out, commit_before) = self.step_loopback(i, loopback);
        }
        self.check_after(i);
        self.disk_events(i);
    }

    /// Steps the replica's own released votes; returns the outputs (flushed)
    /// and the commit index before them.
    fn step_loopback(&mut self, i: usize, loopback: Vec<Envelope>) -> (Vec<Output>, LogIndex) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let replica = node.replica.as_mut().expect("executed above");
        let id = node.id;
        let before = self.trace.on.then(|| Summary::of(replica));
        let commit_before = replica.commit_index();
        let mut out = Vec::new();
        for env in loopback {
            let input = Input::Peer(env);
            self.trace.push(|| format!("{:>6} r{id} {} (own, durable)", now.0, fmt::input(&input)));
            replica.step(now, input, &mut out);
        }
        replica.flush(now, &mut out);
        if let Some(before) = before {
            let changes = before.diff(&Summary::of(replica));
            if !changes.is_empty() {
                self.trace.push(|| format!("        r{id}: {}", changes.join(", ")));
            }
        }
        (out, commit_before)
    }

    /// One executor pass over `out` for `nodes[i]`. False when the replica
    /// crashed in it (a failed fsync or an armed mid-send kill).
    fn execute_once(&mut self, i: usize, mut out: Vec<Output>, commit_before: LogIndex) -> bool {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_ref() else { return false };
        let ops: Vec<&Persist> = out
            .iter()
            .filter_map(|o| match o {
                Output::Persist(p) => Some(p),
                _ => None,
            })
            .collect();
        let persist_check = self.checker.check_persists(replica, commit_before, &ops);
        // The state checks run before the outputs go out: a replica killed
        // while sending may already have told others what it committed.
        let step_check = self
            .checker
            .after_step(replica, node.life)
            .and(self.checker.check_sends(replica, &out));
        for op in &ops {
            self.trace.push(|| format!("        persist {}", fmt::persist(op)));
        }
        for o in &out {
            if let Output::SaveSnapshot(snap) = o {
                self.trace.push(|| format!("        save snapshot at {}", snap.index));
            }
        }
        let mut power_cut = None;
        if let Some(CrashPoint::AtSync { keep }) = node.armed {
            if ops.iter().any(|p| p.needs_sync()) {
                node.disk.fail_next_sync = true;
                power_cut = Some(keep);
                node.armed = None;
            }
        }
        node.disk.now = now;
        let mut wire = Wire::new(&mut self.net, now, node.armed, &mut self.trace);
        let result = node.exec.execute(&mut out, &mut node.disk, &mut wire);
        let done = wire.done();
        self.batches += 1;
        if let Err(e) = persist_check.and(step_check) {
            self.fail(e);
        }
        let power_cut = result.is_err().then(|| power_cut.unwrap_or(0));
        self.after_wire(i, done, power_cut)
    }

    /// What a wire did: replies to hand out, the armed kill's countdown, whether it fired.
    fn after_wire(&mut self, i: usize, done: WireDone, power_cut: Option<usize>) -> bool {
        let now = self.now;
        let id = self.nodes[i].id;
        if let Some(left) = done.sends_left {
            self.nodes[i].armed = Some(CrashPoint::AfterSends(left));
        }
        for (req, reply) in done.replies {
            if self.outstanding.remove(&req) != Some(id) {
                self.fail(format!("r{id} answered client #{} twice or unasked: {reply:?}", req.0));
                continue;
            }
            self.seq += 1;
            self.events.push(ClientEvent::Reply { req, at: now, seq: self.seq, reply });
        }
        if let Some(keep) = power_cut {
            self.note(|| format!("r{id} power cut during fsync"));
            self.crash(id, keep);
            return false;
        }
        if done.cut_off {
            self.note(|| format!("r{id} killed while sending"));
            self.crash(id, 0);
            return false;
        }
        true
    }

    /// Disk work finished by now: syncs (releasing what waited for them, and
    /// the replica's own votes) and snapshot saves. A paused process handles
    /// them once it resumes.
    fn disk_events(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.replica.is_none() || node.paused {
            return;
        }
        node.disk.now = self.now;
        for ticket in node.disk.finished_syncs() {
            if !self.on_synced(i, ticket) {
                return;
            }
        }
        let saved =
            self.nodes[i].disk.snapshot_saved().expect("the simulated disk never fails a save");
        if let Some(index) = saved {
            self.run_batch(i, vec![Input::SnapshotSaved(index)]);
        }
    }

    /// Sync `ticket` finished: the executor releases what waited for it.
    fn on_synced(&mut self, i: usize, ticket: u64) -> bool {
        let now = self.now;
        let node = &mut self.nodes[i];
        let id = node.id;
        self.trace.push(|| format!("{:>6} r{id} sync {ticket} done", now.0));
        let mut wire = Wire::new(&mut self.net, now, node.armed, &mut self.trace);
        node.exec.synced(ticket, &mut wire);
        let done = wire.done();
        if !self.after_wire(i, done, None) {
            return false;
        }
        let loopback = self.nodes[i].exec.take_loopback();
        if !loopback.is_empty() {
            let (out, commit_before) = self.step_loopback(i, loopback);
            self.finish(i, out, commit_before);
        }
        self.nodes[i].replica.is_some()
    }

    /// Now and then, a full pass of the log checker over every replica.
    fn check_after(&mut self, i: usize) {
        if self.nodes[i].replica.is_none() {
            return;
        }
        if self.batches.is_multiple_of(FULL_CHECK_EVERY_BATCHES) {
            for node in &self.nodes {
                if let Some(r) = node.replica.as_ref() {
                    if let Err(e) = self.checker.full_check(r) {
                        self.fail(e);
                        return;
                    }
                }
            }
        }
    }

    /// Kills `id` at once: volatile state gone, `keep_unsynced` un-synced ops
    /// survive as a torn tail, the rest are lost. Peers see their links reset.
    pub fn crash(&mut self, id: ReplicaId, keep_unsynced: usize) {
        let i = self.idx(id);
        let node = &mut self.nodes[i];
        if node.replica.take().is_none() {
            return;
        }
        let unsynced = node.disk.unsynced_len();
        node.disk.crash(keep_unsynced);
        node.paused = false;
        node.held.clear();
        node.links.clear();
        node.armed = None;
        self.net.forget_stalled_from(id);
        self.checker.on_crash(id);
        self.note(|| {
            format!("r{id} crash (kept {} of {unsynced} unsynced ops)", keep_unsynced.min(unsynced))
        });
        let lost: Vec<ReqId> =
            self.outstanding.iter().filter(|(_, r)| **r == id).map(|(q, _)| *q).collect();
        for req in lost {
            self.outstanding.remove(&req);
            self.seq += 1;
            self.events.push(ClientEvent::Lost { req, at: self.now, seq: self.seq });
        }
        for j in 0..self.nodes.len() {
            if self.nodes[j].links.remove(&id) {
                let peer = self.nodes[j].id;
                self.input(peer, Input::LinkDown(id));
            }
        }
    }

    /// Arms a crash of `id` inside its next executed batch.
    pub fn arm_crash(&mut self, id: ReplicaId, point: CrashPoint) {
        let i = self.idx(id);
        if self.nodes[i].replica.is_some() {
            self.nodes[i].armed = Some(point);
            self.note(|| format!("r{id} armed to crash: {point:?}"));
        }
    }

    /// True when `id`'s disk durably holds a formed full member (no learner
    /// mark): what it would come back as from a crash now.
    pub fn is_durable_full_member(&self, id: ReplicaId) -> bool {
        let disk = &self.nodes[self.idx(id)].disk;
        disk.recover().is_ok_and(|d| matches!(d.formation, Formation::Complete(_)) && !d.learner)
    }

    /// Cancels an armed crash of `id`.
    pub fn disarm(&mut self, id: ReplicaId) {
        let i = self.idx(id);
        self.nodes[i].armed = None;
    }

    /// Starts a new process on `id`'s disk; links to every reachable live peer come up.
    pub fn restart(&mut self, id: ReplicaId) {
        let i = self.idx(id);
        if self.nodes[i].replica.is_some() {
            return;
        }
        self.nodes[i].life += 1;
        self.net.set_life(id, self.nodes[i].life);
        self.boot(i);
        for peer in self.ids() {
            if peer == id || !self.is_up(peer) {
                continue;
            }
            if !self.net.is_cut(peer, id) {
                self.link_up(peer, id);
            }
            if !self.net.is_cut(id, peer) {
                self.link_up(id, peer);
            }
        }
    }

    /// Loses `id`'s whole data directory (it must be crashed). A hook for
    /// learners (DESIGN §6): a wiped replica may only rejoin as a learner.
    pub fn wipe(&mut self, id: ReplicaId) {
        let i = self.idx(id);
        assert!(self.nodes[i].replica.is_none(), "wipe a running replica");
        self.nodes[i].disk.wipe();
        self.note(|| format!("r{id} disk wiped"));
    }

    /// SIGSTOP: `id` gets no inputs until resumed.
    pub fn pause(&mut self, id: ReplicaId) {
        let i = self.idx(id);
        if self.nodes[i].replica.is_some() {
            self.nodes[i].paused = true;
            self.note(|| format!("r{id} paused"));
        }
    }

    /// SIGCONT: `id` gets what it missed, in order, then ticks again.
    pub fn resume(&mut self, id: ReplicaId) {
        let i = self.idx(id);
        if !self.nodes[i].paused {
            return;
        }
        self.nodes[i].paused = false;
        self.nodes[i].next_tick = self.now;
        let held = std::mem::take(&mut self.nodes[i].held);
        self.note(|| format!("r{id} resumed ({} inputs waited)", held.len()));
        let batch = self.batch_max.max(1);
        let mut held = held.into_iter().peekable();
        while held.peek().is_some() {
            let chunk: Vec<Input> = held.by_ref().take(batch).collect();
            self.run_batch(i, chunk);
            if self.nodes[i].replica.is_none() {
                return;
            }
        }
        self.disk_events(i);
    }

    /// Cuts the links between groups (both ways).
    pub fn partition(&mut self, groups: &[Vec<ReplicaId>]) {
        self.net.partition(groups);
        let text: Vec<String> = groups.iter().map(|g| fmt::ids(g)).collect();
        self.note(|| format!("partition {}", text.join("|")));
    }

    /// Stalls the links between groups (both ways): what is sent across
    /// arrives at the heal.
    pub fn stall_partition(&mut self, groups: &[Vec<ReplicaId>]) {
        self.net.stall_partition(groups);
        let text: Vec<String> = groups.iter().map(|g| fmt::ids(g)).collect();
        self.note(|| format!("stalled partition {}", text.join("|")));
    }

    /// Cuts one direction of one link.
    pub fn cut(&mut self, from: ReplicaId, to: ReplicaId) {
        self.net.cut_link(from, to);
        self.note(|| format!("cut {from}->{to}"));
    }

    /// Stalls one direction of one link: what is sent waits for `release`.
    pub fn stall(&mut self, from: ReplicaId, to: ReplicaId) {
        self.net.stall_link(from, to);
        self.note(|| format!("stall {from}->{to}"));
    }

    /// Ends the stall of `from -> to`: what it held arrives, in send order.
    pub fn release(&mut self, from: ReplicaId, to: ReplicaId) {
        self.net.release(self.now, from, to);
        self.note(|| format!("release {from}->{to}"));
    }

    /// True when paused `id` holds an input from `from` named `name` (a
    /// message that reached it while it was stopped).
    pub fn holds_input(&self, id: ReplicaId, from: ReplicaId, name: &str) -> bool {
        self.nodes[self.idx(id)].held.iter().any(
            |input| matches!(input, Input::Peer(env) if env.from == from && env.msg.name() == name),
        )
    }

    /// Restores every link; each side of a link that was cut sees it come up,
    /// and stalled links deliver what they held.
    pub fn heal(&mut self) {
        let healed = self.net.heal(self.now);
        self.note(|| "heal".into());
        for (a, b) in healed {
            self.link_up(a, b);
        }
    }

    /// A client sends `request` to `id`. None when `id` is down (connection
    /// refused). Returns the request id and the call's place in client order.
    pub fn client_request(&mut self, id: ReplicaId, request: Request) -> Option<(ReqId, u64)> {
        if !self.is_up(id) {
            return None;
        }
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.seq += 1;
        let seq = self.seq;
        self.outstanding.insert(req, id);
        self.input(id, Input::Client { req, request });
        Some((req, seq))
    }

    /// Ticks every running, unpaused replica whose tick is due.
    fn tick_due(&mut self) {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.replica.is_none() || node.paused || node.next_tick > self.now {
                continue;
            }
            self.nodes[i].next_tick = self.now.plus(self.nodes[i].tick_ms);
            self.run_batch(i, vec![Input::Tick]);
        }
    }

    /// Hands `msgs` to their receivers, consecutive ones to one receiver in
    /// batches of up to `batch_max`.
    fn deliver(&mut self, msgs: Vec<Msg>) {
        let mut batch: Vec<Input> = Vec::new();
        let mut target: Option<usize> = None;
        for msg in msgs {
            let i = self.idx(msg.to);
            if !self.net.is_current(&msg) || self.nodes[i].replica.is_none() {
                continue;
            }
            if target != Some(i) || batch.len() >= self.batch_max.max(1) {
                self.flush_batch(target, &mut batch);
                target = Some(i);
            }
            batch.push(Input::Peer(msg.env));
        }
        self.flush_batch(target, &mut batch);
    }

    fn flush_batch(&mut self, target: Option<usize>, batch: &mut Vec<Input>) {
        let Some(i) = target else { return };
        if batch.is_empty() {
            return;
        }
        let inputs = std::mem::take(batch);
        let node = &mut self.nodes[i];
        if node.replica.is_none() {
            return;
        }
        if node.paused {
            node.held.extend(inputs);
            return;
        }
        self.run_batch(i, inputs);
    }

    /// Auto mode: one millisecond: every message due, then every tick due.
    pub fn step_ms(&mut self) {
        for _ in 0..DELIVER_ROUNDS_MAX {
            let mut due = Vec::new();
            while let Some(m) = self.net.pop_due(self.now) {
                due.push(m);
            }
            if due.is_empty() {
                break;
            }
            self.deliver(due);
        }
        self.all_disk_events();
        self.tick_due();
        self.now = self.now.plus(1);
    }

    /// Finished disk work of every running replica.
    fn all_disk_events(&mut self) {
        for i in 0..self.nodes.len() {
            self.disk_events(i);
        }
    }

    /// Manual mode: lets `ms` pass, ticking replicas; messages stay queued.
    pub fn tick(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now = self.now.plus(1);
            self.all_disk_events();
            self.tick_due();
        }
    }

    /// Manual mode: delivers queued messages (of one link, or all) until none
    /// is left; time does not move. Returns how many were delivered.
    pub fn deliver_all(&mut self, link: Option<(ReplicaId, ReplicaId)>) -> usize {
        let mut total = 0;
        for _ in 0..DELIVER_ROUNDS_MAX {
            let msgs = self.net.take_queued(link);
            if msgs.is_empty() {
                break;
            }
            total += msgs.len();
            self.deliver(msgs);
            if link.is_some() {
                break;
            }
        }
        total
    }

    /// Manual mode: delivers only what is queued on `from -> to` right now.
    pub fn deliver_link(&mut self, from: ReplicaId, to: ReplicaId) -> usize {
        self.deliver_all(Some((from, to)))
    }

    /// Manual mode: takes the messages queued on `from -> to` off the wire, to
    /// deliver later with `deliver_msgs` (a message delayed past others).
    pub fn take_link(&mut self, from: ReplicaId, to: ReplicaId) -> Vec<Msg> {
        self.net.take_queued(Some((from, to)))
    }

    /// Delivers messages taken off the wire earlier, in order.
    pub fn deliver_msgs(&mut self, msgs: Vec<Msg>) {
        self.deliver(msgs);
    }

    /// Drops every queued message on `from -> to` (a lost packet).
    pub fn drop_link(&mut self, from: ReplicaId, to: ReplicaId) -> usize {
        let n = self.net.take_queued(Some((from, to))).len();
        self.note(|| format!("dropped {n} queued messages {from}->{to}"));
        n
    }

    /// Takes the client events so far.
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }

    /// The replica that leads and serves in the highest epoch, if any.
    pub fn serving_leader(&self) -> Option<ReplicaId> {
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.is_serving_leader())
            .max_by_key(|r| r.epoch())
            .map(|r| r.id())
    }

    /// Every running replica's store against the chosen commands.
    pub fn check_stores(&mut self) -> Result<(), String> {
        for node in &self.nodes {
            if let Some(r) = node.replica.as_ref() {
                self.checker.check_store(r)?;
            }
        }
        Ok(())
    }

    /// A full pass of the log checker over every running replica.
    pub fn full_check(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(r) = self.nodes[i].replica.as_ref() {
                if let Err(e) = self.checker.full_check(r) {
                    self.fail(e);
                }
            }
        }
    }
}
