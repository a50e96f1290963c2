//! Bully with epochs, promises and recovery (DESIGN §3).
//!
//! Bully picks *who* leads (the highest live full member); epochs and promises
//! make it safe when Bully is wrong (a partition, a paused process): only an
//! epoch that a majority of N durably promised can get votes, and the winner
//! first recovers every entry a majority may have chosen before it serves.

use super::message::PeerMsg;
use super::types::entry_size_bytes;
use super::types::{Command, Entry, EntryId, Epoch, Incarnation, LogIndex, Millis, ReplicaId};
use super::{quorum, BatchBudget, Campaign, ElectionRecord, Output, Replica, Role, Waiter};
use super::{INFLIGHT_BYTES_MAX, INFLIGHT_ENTRIES_MAX};
use crate::client::{ClientError, Reply, Request};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What one promise carried (DESIGN §3.2).
#[derive(Clone, Debug)]
pub(super) struct PromiseInfo {
    /// The promiser's commit index: its entries at or below it are chosen.
    pub commit: LogIndex,
    /// Entries above the winner's commit index.
    pub entries: Vec<(LogIndex, Entry)>,
    /// True when the committed part of `entries` was cut short.
    pub truncated: bool,
    /// The promiser's incarnation.
    pub incarnation: Incarnation,
    /// The promiser's incarnation table.
    pub table: BTreeMap<ReplicaId, Incarnation>,
}

/// A vote tally for one slot proposed in this epoch.
#[derive(Debug)]
pub(super) struct Tally {
    /// Replicas that stored the slot's entry in this ballot (the leader included).
    pub voters: BTreeSet<ReplicaId>,
    /// When ACCEPT was last sent for this slot (for re-sends).
    pub sent_at: Millis,
    /// The entry's [`Entry::size_bytes`], counted in `Leadership::tally_bytes`.
    pub bytes: u64,
}

/// A write the leader has not proposed yet (recovery still running, or the
/// in-flight window is full).
#[derive(Debug)]
pub(super) struct QueuedWrite {
    pub waiter: Waiter,
    pub request: Request,
    pub deadline: Millis,
}

impl QueuedWrite {
    /// The [`Entry::size_bytes`] of the entry it will be.
    pub fn size_bytes(&self) -> u64 {
        let payload = match &self.request {
            Request::Put { key, value } | Request::Cas { key, value, .. } => {
                key.len() + value.len()
            }
            Request::Del { key } => key.len(),
            _ => 0,
        };
        entry_size_bytes(payload) as u64
    }
}

/// A forwarded write's identity: (follower, follower boot, follower's request id).
pub(super) type DedupKey = (ReplicaId, u64, u64);

/// What the leader knows of a forwarded write.
#[derive(Debug)]
pub(super) enum Dedup {
    /// Queued or proposed, not yet answered.
    Pending,
    /// Answered with this reply at this time (kept a while for re-sent forwards).
    Done(Reply, Millis),
}

/// What a read-index read answers once confirmed.
#[derive(Debug)]
pub(super) enum ReadKind {
    /// GET (or GETV with the version) of one key.
    Key { key: String, with_version: bool },
    /// DUMP on the leader itself: the whole store.
    Dump,
    /// A follower's DUMP: just the confirmed commit index (as `Reply::Written`);
    /// the follower dumps its own store once it has applied that far.
    Barrier,
}

/// A leader-fallback read waiting for its heartbeat round (DESIGN §5).
#[derive(Debug)]
pub(super) struct ReadIndexWait {
    pub waiter: Waiter,
    pub kind: ReadKind,
    /// The heartbeat round that must be acknowledged by a majority.
    pub seq: u64,
    /// The last index at arrival (every write acknowledged by then is at or
    /// below it); answer once applied reaches it.
    pub commit_at: LogIndex,
    pub deadline: Millis,
}

/// A leader's volatile state for its epoch.
#[derive(Debug)]
pub(super) struct Leadership {
    pub epoch: Epoch,
    /// When this replica became leader of the epoch.
    pub since: Millis,
    /// Set while recovery fetches chosen entries up to this commit index.
    pub recovering_to: Option<LogIndex>,
    /// The promises recovery works from, kept while it fetches.
    pub promises: BTreeMap<ReplicaId, PromiseInfo>,
    /// The epoch's own first entry; the leader serves once it commits.
    pub noop_index: Option<LogIndex>,
    /// Recovery (or serving) must progress before this time.
    pub progress_deadline: Millis,
    /// Slots proposed in this epoch and not yet chosen.
    pub tallies: BTreeMap<LogIndex, Tally>,
    /// Sum of the tallies' `bytes`.
    pub tally_bytes: u64,
    /// Slots appended but not yet persisted and sent (done by `flush`).
    pub unsent: Vec<LogIndex>,
    /// Who waits for each proposed slot.
    pub waiters: BTreeMap<LogIndex, (Waiter, Millis)>,
    /// Writes not yet proposed.
    pub queued: VecDeque<QueuedWrite>,
    /// Forwarded writes of this epoch.
    pub dedup: BTreeMap<DedupKey, Dedup>,
    /// Answered forwards in the order they were answered, for expiry.
    pub dedup_expiry: VecDeque<(Millis, DedupKey)>,
    /// Per (follower, follower boot): the highest forward id seen this epoch.
    /// A follower numbers its forwards in increasing order, so a write
    /// forward at or below it that `dedup` no longer holds is a copy that
    /// outlived its entry there (a re-send, or bytes a partition held back
    /// for longer than the expiry horizon): it is dropped, never proposed
    /// again.
    pub forwards_seen: BTreeMap<(ReplicaId, u64), u64>,
    /// Next sweep of waiting writes for expired deadlines.
    pub next_sweep: Millis,
    /// Last answer at our epoch from each peer (liveness, DESIGN §2).
    pub last_ack: BTreeMap<ReplicaId, Millis>,
    /// Highest heartbeat round each peer acknowledged.
    pub acked_seq: BTreeMap<ReplicaId, u64>,
    /// Each peer's commit index as of its last heartbeat ack (for STATUS lag).
    pub peer_commit: BTreeMap<ReplicaId, LogIndex>,
    /// Last heartbeat round sent.
    pub hb_seq: u64,
    pub next_heartbeat: Millis,
    /// Read-index reads waiting for confirmation.
    pub read_index: Vec<ReadIndexWait>,
    /// A read-index read arrived since the last heartbeat: send one at flush.
    pub heartbeat_now: bool,
    /// Slots committed since the last flush, for the COMMIT broadcast
    /// (left empty while followers hear our votes, NW = 2).
    pub commit_notice: Vec<(LogIndex, EntryId)>,
}

impl Leadership {
    /// True when the in-flight window has no room for another proposal,
    /// counting `more` proposals of `more_bytes` about to be made:
    /// [`INFLIGHT_ENTRIES_MAX`] entries or [`INFLIGHT_BYTES_MAX`] bytes not
    /// yet chosen.
    pub fn window_full(&self, more: usize, more_bytes: u64) -> bool {
        self.tallies.len() + more >= INFLIGHT_ENTRIES_MAX
            || self.tally_bytes + more_bytes >= INFLIGHT_BYTES_MAX
    }

    fn new(epoch: Epoch, now: Millis, progress_deadline: Millis) -> Leadership {
        Leadership {
            epoch,
            since: now,
            recovering_to: None,
            promises: BTreeMap::new(),
            noop_index: None,
            progress_deadline,
            tallies: BTreeMap::new(),
            tally_bytes: 0,
            unsent: Vec::new(),
            waiters: BTreeMap::new(),
            queued: VecDeque::new(),
            dedup: BTreeMap::new(),
            dedup_expiry: VecDeque::new(),
            forwards_seen: BTreeMap::new(),
            next_sweep: now,
            last_ack: BTreeMap::new(),
            acked_seq: BTreeMap::new(),
            peer_commit: BTreeMap::new(),
            hb_seq: 0,
            next_heartbeat: now,
            read_index: Vec::new(),
            heartbeat_now: false,
            commit_notice: Vec::new(),
        }
    }

    /// True once recovery is over and the epoch's own first entry committed.
    pub fn is_serving(&self, commit: LogIndex) -> bool {
        self.recovering_to.is_none() && self.noop_index.is_some_and(|n| commit >= n)
    }

    /// Forgets the oldest answered forward, unless it was answered again
    /// since (a later entry of `dedup_expiry` then names it).
    pub fn forget_oldest_answer(&mut self) {
        let Some((at, key)) = self.dedup_expiry.pop_front() else { return };
        if matches!(self.dedup.get(&key), Some(Dedup::Done(_, done)) if *done == at) {
            self.dedup.remove(&key);
        }
    }
}

impl Replica {
    /// Timers of election and leadership.
    pub(super) fn tick_election(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.learner {
            return;
        }
        self.maybe_keepalive(now, out);
        match &self.role {
            Role::Follower => {
                if now >= self.election_deadline {
                    self.start_election(now, out);
                }
            }
            Role::Candidate(Campaign::Bully { deadline }) => {
                if now >= *deadline {
                    self.win(now, out);
                }
            }
            Role::Candidate(Campaign::AwaitCoordinator { deadline }) => {
                if now >= *deadline {
                    self.start_election(now, out);
                }
            }
            Role::Candidate(Campaign::Promises { deadline, epoch, .. }) => {
                if now >= *deadline {
                    crate::qlog!("election: no majority of promises for epoch {epoch}; retrying");
                    self.become_follower(now, None);
                } else {
                    self.resend_coordinator(now, out);
                }
            }
            Role::Leader(_) => self.tick_leader(now, out),
        }
    }

    /// A leader's timers: heartbeats, step-down without a majority, recovery progress.
    fn tick_leader(&mut self, now: Millis, out: &mut Vec<Output>) {
        let majority = quorum::majority(self.cfg.n);
        let live = self.live_peers(now).len() + 1;
        let Role::Leader(l) = &self.role else { return };
        if live < majority {
            crate::qlog!("step-down: heard from {live}/{majority} at epoch {}", l.epoch);
            self.step_down(now, out);
            return;
        }
        if !l.is_serving(self.commit) && now >= l.progress_deadline {
            crate::qlog!("recovery made no progress in epoch {}; abandoning it", l.epoch);
            self.step_down(now, out);
            return;
        }
        if now >= l.next_heartbeat {
            self.send_heartbeat(now, out);
        }
    }

    /// Replicas that are not leading tell the others they are alive every
    /// half election timeout (followers otherwise hear only the leader), so a
    /// replica without a leader knows whether a write quorum is still up:
    /// `ERR NOQUORUM` when it is not, a short wait for the election when it is.
    fn maybe_keepalive(&mut self, now: Millis, out: &mut Vec<Output>) {
        if matches!(self.role, Role::Leader(_)) || now < self.keepalive_at {
            return;
        }
        self.keepalive_at = now.plus((self.cfg.election_timeout_ms / 2).max(1));
        let to: Vec<ReplicaId> =
            self.peers.iter().filter(|(_, p)| p.link_up).map(|(id, _)| *id).collect();
        self.send(to, PeerMsg::Hello, out);
    }

    /// Starts (or restarts) Bully: ELECTION to every reachable higher id.
    pub(super) fn start_election(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.learner || !self.is_formed() {
            return;
        }
        if !matches!(self.role, Role::Candidate(_)) {
            self.stats.elections_started += 1;
            crate::qlog!("election: starting (epoch {}, leader silent or lost)", self.promise);
        }
        self.lose_leader(now, out);
        let me = self.cfg.id;
        let higher: Vec<ReplicaId> = self
            .peers
            .iter()
            .filter(|(id, p)| **id > me && p.link_up && !p.learner)
            .map(|(id, _)| *id)
            .collect();
        if higher.is_empty() {
            self.win(now, out);
            return;
        }
        self.send(higher, PeerMsg::Election, out);
        let deadline = now.plus(self.alive_wait_ms());
        self.role = Role::Candidate(Campaign::Bully { deadline });
    }

    /// How long a candidate waits for ALIVE from a higher id: a round trip on a
    /// busy machine, well inside the election timeout.
    fn alive_wait_ms(&self) -> u64 {
        (self.cfg.election_timeout_ms / 2).max(2 * self.cfg.heartbeat_ms)
    }

    /// Bully winner: claim the next epoch we own and ask for promises.
    pub(super) fn win(&mut self, now: Millis, out: &mut Vec<Output>) {
        let n = self.cfg.n as u64;
        let floor = self.known_epoch.max(self.promise).0 + 1;
        let mut e = floor;
        while self.owner(Epoch(e)) != self.cfg.id {
            e += 1;
        }
        assert!(e < floor + n, "no owned epoch within N of {floor}");
        let epoch = Epoch(e);
        self.persist_promise(epoch, Some(self.incarnation), out);
        crate::qlog!("election: Bully winner; asking for promises for epoch {epoch}");
        let mut promises = BTreeMap::new();
        promises.insert(self.cfg.id, self.own_promise_info(self.commit));
        let deadline = now.plus(self.cfg.election_timeout_ms);
        let resend_at = now.plus(self.cfg.heartbeat_ms.max(1));
        self.role = Role::Candidate(Campaign::Promises { epoch, promises, deadline, resend_at });
        self.send(self.others(), PeerMsg::Coordinator { epoch, commit: self.commit }, out);
        if quorum::majority(self.cfg.n) == 1 {
            self.become_leader(now, out);
        }
    }

    /// A lost COORDINATOR (a dropped message, a link that was cut and healed)
    /// must not cost the whole campaign: every heartbeat interval it goes
    /// again to the peers that have not promised. A repeated COORDINATOR gets
    /// the same answer (DESIGN §3.2), so a duplicate is harmless.
    fn resend_coordinator(&mut self, now: Millis, out: &mut Vec<Output>) {
        let heartbeat_ms = self.cfg.heartbeat_ms.max(1);
        let commit = self.commit;
        let Role::Candidate(Campaign::Promises { epoch, promises, resend_at, .. }) = &mut self.role
        else {
            return;
        };
        if now < *resend_at {
            return;
        }
        *resend_at = now.plus(heartbeat_ms);
        let epoch = *epoch;
        let missing: Vec<ReplicaId> =
            self.peers.keys().filter(|id| !promises.contains_key(id)).copied().collect();
        self.send(missing, PeerMsg::Coordinator { epoch, commit }, out);
    }

    /// What we hold above `their_commit`, as a promise reports it.
    fn own_promise_info(&self, their_commit: LogIndex) -> PromiseInfo {
        let (entries, truncated) = self.entries_above(their_commit);
        PromiseInfo {
            commit: self.commit,
            entries,
            truncated,
            incarnation: self.incarnation,
            table: self.incarnations.clone(),
        }
    }

    /// Every entry above `from`: the committed part capped at one batch
    /// ([`BatchBudget`]; the winner fetches the rest), the uncommitted part
    /// whole (a winner needs all of it; the leader's in-flight window bounds
    /// it).
    fn entries_above(&self, from: LogIndex) -> (Vec<(LogIndex, Entry)>, bool) {
        let mut budget = BatchBudget::default();
        let mut entries = Vec::new();
        // Committed entries compacted into a snapshot cannot be sent: the
        // winner fetches them (and gets the snapshot).
        let compacted = from < self.snapshot_index;
        // Once one committed entry does not fit, neither does any later one
        // (the part sent stays a prefix): the winner fetches the rest.
        let mut full = false;
        for (index, entry) in self.log.range(from.next()..) {
            if *index <= self.commit && (full || !budget.take(entry)) {
                full = true;
                continue;
            }
            entries.push((*index, entry.clone()));
        }
        (entries, compacted || full)
    }

    pub(super) fn on_election(&mut self, now: Millis, from: ReplicaId, out: &mut Vec<Output>) {
        if self.learner || from > self.cfg.id {
            self.stats.dropped_messages += 1;
            return;
        }
        self.send(vec![from], PeerMsg::Alive, out);
        match &self.role {
            // A leader answers with a heartbeat so the candidate follows at once.
            Role::Leader(_) => self.send_heartbeat_to(vec![from], out),
            Role::Candidate(_) => {}
            Role::Follower => {
                if self.leader.is_none() {
                    self.start_election(now, out);
                }
            }
        }
    }

    pub(super) fn on_alive(&mut self, now: Millis, from: ReplicaId) {
        if from < self.cfg.id {
            self.stats.dropped_messages += 1;
            return;
        }
        if let Role::Candidate(Campaign::Bully { .. }) = self.role {
            let deadline = now.plus(self.cfg.election_timeout_ms);
            self.role = Role::Candidate(Campaign::AwaitCoordinator { deadline });
        }
    }

    pub(super) fn on_coordinator(
        &mut self,
        now: Millis,
        from: ReplicaId,
        inc: Incarnation,
        epoch: Epoch,
        their_commit: LogIndex,
        out: &mut Vec<Output>,
    ) {
        if self.learner {
            self.stats.dropped_messages += 1;
            return;
        }
        let repeat = epoch == self.promise && self.promise_leader == Some(inc);
        if epoch < self.promise || (epoch == self.promise && !repeat) {
            self.send(vec![from], PeerMsg::Refuse { epoch, promised: self.promise }, out);
            return;
        }
        if epoch > self.promise {
            self.persist_promise(epoch, Some(inc), out);
        }
        if !matches!(self.role, Role::Follower) {
            self.step_down(now, out);
        }
        self.follow(now, from, epoch, out);
        let info = self.own_promise_info(their_commit);
        let msg = PeerMsg::Promise {
            epoch,
            commit: info.commit,
            entries: info.entries,
            truncated: info.truncated,
            incarnations: self.incarnations.clone(),
        };
        self.send(vec![from], msg, out);
    }

    pub(super) fn on_promise(
        &mut self,
        now: Millis,
        from: ReplicaId,
        epoch: Epoch,
        info: PromiseInfo,
        incarnations: BTreeMap<ReplicaId, Incarnation>,
        out: &mut Vec<Output>,
    ) {
        if let Role::Leader(l) = &mut self.role {
            // A late promise for our epoch still proves the promiser is live.
            if l.epoch == epoch {
                l.last_ack.insert(from, now);
            }
            return;
        }
        let Role::Candidate(Campaign::Promises { epoch: ours, promises, .. }) = &mut self.role
        else {
            return;
        };
        if *ours != epoch {
            return;
        }
        promises.insert(from, PromiseInfo { table: incarnations, ..info });
        let valid = valid_promises(promises, &self.incarnations);
        if valid.len() >= quorum::majority(self.cfg.n) {
            self.become_leader(now, out);
        }
    }

    pub(super) fn on_refuse(
        &mut self,
        now: Millis,
        epoch: Epoch,
        promised: Epoch,
        out: &mut Vec<Output>,
    ) {
        let Role::Candidate(Campaign::Promises { epoch: ours, .. }) = &self.role else { return };
        if *ours != epoch || promised <= epoch {
            return;
        }
        self.known_epoch = self.known_epoch.max(promised);
        if self.owner(promised) > self.cfg.id {
            // A higher id claimed a newer epoch: Bully says it leads.
            self.become_follower(now, None);
        } else {
            crate::qlog!("election: epoch {epoch} refused (promised {promised}); retrying higher");
            self.win(now, out);
        }
    }

    /// Any full member's message with an epoch above ours.
    pub(super) fn observe_higher_epoch(
        &mut self,
        now: Millis,
        epoch: Epoch,
        out: &mut Vec<Output>,
    ) {
        match &self.role {
            Role::Leader(_) | Role::Candidate(_) => {
                crate::qlog!("saw epoch {epoch} above ours ({}); standing down", self.promise);
                self.step_down(now, out);
            }
            Role::Follower => {
                if self.leader.is_some_and(|(_, e)| e < epoch) {
                    self.lose_leader(now, out);
                }
            }
        }
    }

    /// With promises from a majority: lead, and recover the log (DESIGN §3.2).
    pub(super) fn become_leader(&mut self, now: Millis, out: &mut Vec<Output>) {
        let Role::Candidate(Campaign::Promises { epoch, promises, .. }) =
            std::mem::replace(&mut self.role, Role::Follower)
        else {
            panic!("become_leader outside the promise phase");
        };
        assert_eq!(epoch, self.promise, "leading an epoch we did not promise");
        assert_eq!(self.owner(epoch), self.cfg.id, "leading an epoch we do not own");
        let mut promises = promises;
        promises.insert(self.cfg.id, self.own_promise_info(self.commit));
        // A promise made by an incarnation older than one that any promise (or
        // our own table) reports for that replica came from a directory since
        // wiped: it does not count, and its entries are not evidence.
        let valid = valid_promises(&promises, &self.incarnations);
        promises.retain(|id, _| valid.contains(id));
        self.stats.leaderships += 1;
        self.close_election(now, self.cfg.id, epoch);
        self.leader = Some((self.cfg.id, epoch));
        let deadline = now.plus(self.cfg.election_timeout_ms);
        let mut leadership = Leadership::new(epoch, now, deadline);
        for id in promises.keys().filter(|id| **id != self.cfg.id) {
            leadership.last_ack.insert(*id, now);
        }
        self.role = Role::Leader(Box::new(leadership));
        crate::qlog!("leader of epoch {epoch} with promises from {:?}; recovering", ids(&promises));
        // Writes that waited for a leader while we campaigned are ours now
        // (they queue until recovery is over).
        self.forward_awaiting(now, out);

        // Step 1: slots up to H, the highest commit index heard, are chosen.
        let high = promises.values().map(|p| p.commit).max().unwrap_or(self.commit);
        let mut chosen = Vec::new();
        for p in promises.values() {
            for (index, entry) in &p.entries {
                if *index <= p.commit && *index > self.commit {
                    chosen.push((*index, entry.clone()));
                }
            }
        }
        self.install_chosen(now, chosen, out);
        if self.commit < high {
            let source = promises
                .iter()
                .find(|(_, p)| p.commit == high)
                .map(|(id, _)| *id)
                .expect("H comes from some promise");
            let l = self.leadership_mut();
            l.recovering_to = Some(high);
            l.promises = promises;
            self.request_fetch(now, source, out);
            return;
        }
        self.finish_recovery(now, promises, out);
    }

    /// Recovery steps 2 and 3: re-propose the highest-ballot entry of every slot
    /// above H (no-op for holes), then one no-op of our own epoch.
    pub(super) fn finish_recovery(
        &mut self,
        now: Millis,
        promises: BTreeMap<ReplicaId, PromiseInfo>,
        out: &mut Vec<Output>,
    ) {
        let epoch = self.promise;
        let base = self.commit;
        let mut best: BTreeMap<LogIndex, Entry> = BTreeMap::new();
        let own: Vec<(LogIndex, Entry)> =
            self.log.range(base.next()..).map(|(i, e)| (*i, e.clone())).collect();
        let theirs = promises.into_values().flat_map(|p| p.entries);
        for (index, entry) in own.into_iter().chain(theirs) {
            if index <= base {
                continue;
            }
            match best.get(&index) {
                Some(held) if held.ballot >= entry.ballot => {}
                _ => {
                    best.insert(index, entry);
                }
            }
        }
        let last = best.keys().next_back().copied().unwrap_or(base);
        let mut index = base.next();
        while index <= last {
            let (id, command) = match best.remove(&index) {
                Some(entry) => (entry.id, entry.command),
                None => (EntryId { epoch, index }, Command::Noop),
            };
            self.propose_at(now, index, Entry { id, ballot: epoch, command });
            index = index.next();
        }
        let noop = last.next();
        self.propose_at(
            now,
            noop,
            Entry { id: EntryId { epoch, index: noop }, ballot: epoch, command: Command::Noop },
        );
        let progress_deadline = now.plus(self.cfg.election_timeout_ms);
        let l = self.leadership_mut();
        l.recovering_to = None;
        l.noop_index = Some(noop);
        l.progress_deadline = progress_deadline;
        crate::qlog!(
            "recovery: re-proposed slots {}..={} in epoch {epoch}; no-op at {noop}",
            base.next(),
            last
        );
        self.send_heartbeat(now, out);
    }

    /// Leaves leadership or candidacy. Proposed writes get `ERR TIMEOUT` (they
    /// may still commit under the next leader); writes never proposed get
    /// `ERR NOLEADER` (they are applied nowhere).
    pub(super) fn step_down(&mut self, now: Millis, out: &mut Vec<Output>) {
        // Writes never proposed fail definitely: NOQUORUM when that is why.
        let no_quorum = self.lacks_write_quorum(now).then(|| self.no_quorum(now));
        if let Role::Leader(l) = std::mem::replace(&mut self.role, Role::Follower) {
            let epoch = l.epoch;
            for (_, (waiter, _)) in l.waiters {
                let detail = format!(
                    "leader {} left epoch {epoch} before the write committed; it may or may not commit",
                    self.cfg.id
                );
                self.answer(waiter, Reply::Error(ClientError::Timeout(detail)), out);
            }
            for q in l.queued {
                let detail =
                    format!("leader {} left epoch {epoch}; write not proposed", self.cfg.id);
                let err = no_quorum.clone().unwrap_or(ClientError::NoLeader(detail));
                self.answer(q.waiter, Reply::Error(err), out);
            }
            for r in l.read_index {
                let detail = format!("leader {} left epoch {epoch} during the read", self.cfg.id);
                self.answer(r.waiter, Reply::Error(ClientError::Timeout(detail)), out);
            }
        }
        self.become_follower(now, None);
    }

    /// Becomes a follower of `leader` (or of nobody yet).
    pub(super) fn become_follower(&mut self, now: Millis, leader: Option<(ReplicaId, Epoch)>) {
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_election_deadline(now);
    }

    /// Follows the leader of `epoch` (a heartbeat, accept or coordinator from it).
    pub(super) fn follow(
        &mut self,
        now: Millis,
        from: ReplicaId,
        epoch: Epoch,
        out: &mut Vec<Output>,
    ) {
        if self.leader != Some((from, epoch)) {
            self.lose_leader(now, out);
            crate::qlog!("following leader {from} in epoch {epoch}");
            self.close_election(now, from, epoch);
        }
        self.role = Role::Follower;
        self.leader = Some((from, epoch));
        self.reset_election_deadline(now);
        self.forward_awaiting(now, out);
    }

    /// Drops the current leader: forwards sent to it can no longer be answered.
    pub(super) fn lose_leader(&mut self, now: Millis, out: &mut Vec<Output>) {
        if let Some((id, epoch)) = self.leader.take() {
            self.fail_forwards(id, epoch, out);
        }
        self.open_election(now);
    }

    /// Starts timing an election unless one is already open.
    pub(super) fn open_election(&mut self, now: Millis) {
        if self.stats.last_election.is_none_or(|e| e.ended.is_some()) {
            let record =
                ElectionRecord { started: now, ended: None, winner: None, epoch: Epoch(0) };
            self.stats.previous_election = self.stats.last_election.replace(record);
        }
    }

    /// A leader is known: the open election ended. Following the same leader
    /// again after a brief candidacy (a starved follower) is not an election.
    fn close_election(&mut self, now: Millis, winner: ReplicaId, epoch: Epoch) {
        if self.stats.last_leader == Some((winner, epoch)) {
            if self.stats.last_election.is_some_and(|e| e.ended.is_none()) {
                self.stats.last_election = self.stats.previous_election.take();
            }
            return;
        }
        self.stats.last_leader = Some((winner, epoch));
        self.stats.leader_changes += 1;
        let started = match self.stats.last_election {
            Some(e) if e.ended.is_none() => e.started,
            _ => now,
        };
        let record = ElectionRecord { started, ended: Some(now), winner: Some(winner), epoch };
        self.stats.last_election = Some(record);
    }

    /// True when `inc` is older than what we record for `from` (or the same
    /// counter with another nonce): a wiped directory's old incarnation.
    pub(super) fn is_stale_incarnation(&self, from: ReplicaId, inc: Incarnation) -> bool {
        match self.incarnations.get(&from) {
            Some(known) => {
                inc.counter < known.counter
                    || (inc.counter == known.counter && inc.nonce != known.nonce)
            }
            None => false,
        }
    }

    pub(super) fn leadership_mut(&mut self) -> &mut Leadership {
        match &mut self.role {
            Role::Leader(l) => l,
            _ => panic!("leadership_mut on a non-leader"),
        }
    }
}

/// The promisers whose incarnation is the newest any promise, or `own`, reports.
fn valid_promises(
    promises: &BTreeMap<ReplicaId, PromiseInfo>,
    own: &BTreeMap<ReplicaId, Incarnation>,
) -> BTreeSet<ReplicaId> {
    let mut newest: BTreeMap<ReplicaId, u64> = BTreeMap::new();
    let tables = promises.values().map(|p| &p.table).chain(std::iter::once(own));
    for table in tables {
        for (id, inc) in table {
            let n = newest.entry(*id).or_insert(0);
            *n = (*n).max(inc.counter);
        }
    }
    promises
        .iter()
        .filter(|(id, p)| p.incarnation.counter >= newest.get(id).copied().unwrap_or(0))
        .map(|(id, _)| *id)
        .collect()
}

fn ids<V>(map: &BTreeMap<ReplicaId, V>) -> Vec<u8> {
    map.keys().map(|id| id.0).collect()
}
