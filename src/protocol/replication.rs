//! The write path and catch-up (DESIGN §4, §6): ACCEPT → votes → commit in
//! index order → apply → reply → COMMIT; forwarding from followers; fetching
//! committed entries a replica missed.

use super::election::{Dedup, DedupKey, QueuedWrite, ReadKind, Tally};
use super::message::{ForwardTag, PeerMsg};
use super::store::Store;
use super::types::{
    Command, Entry, EntryId, Epoch, Incarnation, LogIndex, Millis, ReplicaId, ReqId,
};
use super::{
    batch_ranges, reply, BatchBudget, Output, Persist, Replica, Role, Waiter, APPLY_PER_FLUSH_MAX,
    BATCH_ENTRIES_MAX, DEDUP_ENTRIES_MAX, VOTES_AHEAD_MAX,
};
use crate::client::{ClientError, Reply, Request};
use std::collections::BTreeMap;

/// How often a leader sweeps its waiting writes for expired deadlines.
const SWEEP_MS: u64 = 10;

/// No honest leader gets near this slot number; a peer message naming one is dropped.
pub const INDEX_MAX: u64 = 1 << 62;

/// Who a forward answers when the leader replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client write (or read) on this replica.
    Client(ReqId),
    /// A quorum read that fell back to the leader (by read id).
    Read(u64),
    /// A follower's DUMP waiting for the leader to confirm a commit index.
    Barrier(ReqId),
}

/// A write (or fallback read) forwarded to the leader of `epoch`.
#[derive(Debug)]
pub(super) struct Forwarding {
    pub origin: Origin,
    pub to: ReplicaId,
    pub epoch: Epoch,
    pub request: Request,
    pub deadline: Millis,
    pub resend_at: Millis,
}

impl Replica {
    /// The highest slot this replica holds anything in.
    pub(super) fn last_index(&self) -> LogIndex {
        self.log.keys().next_back().copied().unwrap_or(self.commit).max(self.commit)
    }

    pub(super) fn on_client_write(
        &mut self,
        now: Millis,
        req: ReqId,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        if matches!(self.role, Role::Leader(_)) {
            self.leader_write(now, Waiter::Local(req), request, out);
            return;
        }
        match self.leader {
            Some((to, epoch)) => self.forward(now, Origin::Client(req), to, epoch, request, out),
            None => {
                if self.lacks_write_quorum(now) {
                    reply(out, req, Reply::Error(self.no_quorum(now)));
                } else {
                    let deadline = now.plus(self.cfg.request_timeout_ms);
                    self.awaiting_leader.push((req, request, deadline));
                }
            }
        }
    }

    /// Sends `request` to the leader of `epoch`, remembering it for the reply.
    pub(super) fn forward(
        &mut self,
        now: Millis,
        origin: Origin,
        to: ReplicaId,
        epoch: Epoch,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        let id = self.next_forward;
        self.next_forward += 1;
        let msg =
            PeerMsg::Forward { req: ReqId(id), boot: self.boot, epoch, request: request.clone() };
        self.send(vec![to], msg, out);
        let deadline = now.plus(self.cfg.request_timeout_ms);
        let resend_at = now.plus(self.forward_resend_ms());
        self.forwards.insert(id, Forwarding { origin, to, epoch, request, deadline, resend_at });
    }

    fn forward_resend_ms(&self) -> u64 {
        (self.cfg.election_timeout_ms / 2).max(1)
    }

    /// A leader became known: send it every write that waited for one.
    pub(super) fn forward_awaiting(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.awaiting_leader.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.awaiting_leader);
        for (req, request, _) in waiting {
            self.on_client_write(now, req, request, out);
        }
    }

    /// The leader we forwarded to is gone: the outcome of each forward is unknown.
    pub(super) fn fail_forwards(&mut self, leader: ReplicaId, epoch: Epoch, out: &mut Vec<Output>) {
        let lost: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.to == leader && f.epoch == epoch)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let f = self.forwards.remove(&id).expect("listed above");
            let detail = format!(
                "lost leader {leader} (epoch {epoch}) before it answered; the write may or may not have committed"
            );
            self.finish_forward(f.origin, Reply::Error(ClientError::Timeout(detail)), out);
        }
    }

    fn finish_forward(&mut self, origin: Origin, answer: Reply, out: &mut Vec<Output>) {
        match origin {
            Origin::Client(req) => reply(out, req, answer),
            Origin::Read(read) => self.finish_fallback_read(read, answer, out),
            Origin::Barrier(req) => self.barrier_confirmed(req, answer, out),
        }
    }

    pub(super) fn on_forward_reply(
        &mut self,
        req: ReqId,
        boot: u64,
        answer: Reply,
        out: &mut Vec<Output>,
    ) {
        if boot != self.boot {
            // An answer to a forward of our previous process.
            self.stats.dropped_messages += 1;
            return;
        }
        if let Some(f) = self.forwards.remove(&req.0) {
            self.finish_forward(f.origin, answer, out);
        }
    }

    /// The leader's side of a forward (DESIGN §4.1): only forwards addressed to
    /// our current epoch, each applied at most once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_forward(
        &mut self,
        now: Millis,
        from: ReplicaId,
        req: ReqId,
        boot: u64,
        epoch: Epoch,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        let Role::Leader(l) = &mut self.role else {
            self.stats.dropped_messages += 1;
            return;
        };
        if l.epoch != epoch {
            self.stats.dropped_messages += 1;
            return;
        }
        let waiter = Waiter::Remote { from, boot, req };
        let kind = match &request {
            Request::Get { key } => Some(ReadKind::Key { key: key.clone(), with_version: false }),
            Request::GetV { key } => Some(ReadKind::Key { key: key.clone(), with_version: true }),
            Request::Dump => Some(ReadKind::Barrier),
            _ => None,
        };
        if let Some(kind) = kind {
            return self.read_index(now, waiter, kind, out);
        }
        let key: DedupKey = (from, boot, req.0);
        match l.dedup.get(&key) {
            Some(Dedup::Pending) => {}
            Some(Dedup::Done(answer, _)) => {
                let msg = PeerMsg::ForwardReply { req, boot, reply: answer.clone() };
                self.send(vec![from], msg, out);
            }
            None => {
                let seen = l.forwards_seen.entry((from, boot)).or_insert(0);
                if req.0 <= *seen {
                    // Seen before and expired from `dedup` (or overtaken by
                    // a later forward): applying it now could apply it twice.
                    // The follower's client gets ERR TIMEOUT (outcome unknown).
                    self.stats.dropped_messages += 1;
                    return;
                }
                *seen = req.0;
                l.dedup.insert(key, Dedup::Pending);
                self.leader_write(now, waiter, request, out);
            }
        }
    }

    /// A write reaches the leader: refuse it without a quorum, queue it while
    /// recovering or while the in-flight window is full, else propose it.
    pub(super) fn leader_write(
        &mut self,
        now: Millis,
        waiter: Waiter,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        let lacks_quorum = self.lacks_write_quorum(now);
        if lacks_quorum && !self.is_settling(now) {
            let err = self.no_quorum(now);
            self.answer(waiter, Reply::Error(err), out);
            return;
        }
        let deadline = now.plus(self.cfg.request_timeout_ms);
        let serving = self.is_serving_leader();
        let l = self.leadership_mut();
        let full = l.window_full(0, 0);
        if lacks_quorum || !serving || full || !l.queued.is_empty() {
            l.queued.push_back(QueuedWrite { waiter, request, deadline });
            return;
        }
        self.propose_write(now, waiter, request, deadline);
    }

    fn propose_write(&mut self, now: Millis, waiter: Waiter, request: Request, deadline: Millis) {
        let epoch = self.promise;
        let index = self.last_index().next();
        let command = match request {
            Request::Put { key, value } => Command::put(&key, &value),
            Request::Del { key } => Command::Del { key },
            Request::Cas { key, version, value } => Command::cas(&key, version, &value),
            other => panic!("propose_write of a non-write {other:?}"),
        };
        self.propose_at(now, index, Entry { id: EntryId { epoch, index }, ballot: epoch, command });
        self.leadership_mut().waiters.insert(index, (waiter, deadline));
    }

    /// Puts `entry` in our log at `index` and queues its ACCEPT for the next flush.
    pub(super) fn propose_at(&mut self, now: Millis, index: LogIndex, entry: Entry) {
        assert!(index > self.commit, "proposing at committed slot {index}");
        assert_eq!(entry.ballot, self.promise, "proposing outside our epoch");
        let bytes = entry.size_bytes() as u64;
        self.log.insert(index, entry);
        let l = self.leadership_mut();
        let tally = Tally { voters: Default::default(), sent_at: now, bytes };
        if let Some(old) = l.tallies.insert(index, tally) {
            l.tally_bytes -= old.bytes;
        }
        l.tally_bytes += bytes;
        l.unsent.push(index);
    }

    /// Leader: persists the batch of new entries and sends ACCEPT. Our own
    /// vote is a Vote to ourselves: the executor holds it until the batch is
    /// durable, so no commit, COMMIT or OK ever rests on our unsynced write.
    pub(super) fn flush_proposals(&mut self, now: Millis, out: &mut Vec<Output>) {
        let me = self.cfg.id;
        let commit = self.is_serving_leader().then_some(self.commit);
        let Role::Leader(l) = &mut self.role else { return };
        if !l.unsent.is_empty() {
            let unsent = std::mem::take(&mut l.unsent);
            let epoch = l.epoch;
            let entries: Vec<(LogIndex, Entry)> =
                unsent.iter().map(|i| (*i, self.log[i].clone())).collect();
            let ranges = batch_ranges(&entries);
            let tags: Vec<Vec<ForwardTag>> =
                ranges.iter().map(|r| forward_tags(&l.waiters, &entries[r.clone()])).collect();
            out.push(Output::Persist(Persist::Accept(entries.clone())));
            let others = self.others();
            if ranges.len() == 1 {
                // One ACCEPT (the usual case) takes the batch without a copy.
                let forwards = tags.into_iter().next().unwrap_or_default();
                let msg = PeerMsg::Accept { epoch, entries, commit, forwards };
                self.send(others.clone(), msg, out);
            } else {
                for (range, forwards) in ranges.into_iter().zip(tags) {
                    let chunk = entries[range].to_vec();
                    let msg = PeerMsg::Accept { epoch, entries: chunk, commit, forwards };
                    self.send(others.clone(), msg, out);
                }
            }
            // With NW = 2 our vote goes to the followers too: with their own
            // it is a write quorum, so each knows the slot is chosen without
            // waiting for COMMIT (on_vote_heard).
            let own = PeerMsg::Vote { epoch, accepted: unsent, promised: epoch };
            let to = if self.followers_hear_votes() {
                std::iter::once(me).chain(others).collect()
            } else {
                vec![me]
            };
            self.send(to, own, out);
        }
        if let Role::Leader(l) = &mut self.role {
            if l.heartbeat_now {
                self.send_heartbeat(now, out);
            }
        }
    }

    /// Marks `index` chosen when its tally reached NW.
    fn maybe_choose(&mut self, index: LogIndex) {
        let nw = self.cfg.write_quorum;
        let Role::Leader(l) = &mut self.role else { return };
        if l.tallies.get(&index).is_some_and(|t| t.voters.len() >= nw) {
            let tally = l.tallies.remove(&index).expect("checked above");
            l.tally_bytes -= tally.bytes;
            let id = self.log[&index].id;
            self.chosen.insert(index, id);
        }
    }

    /// Sends the votes of this batch to the leader, which tallies them; with
    /// NW = 2 also to ourselves (it comes back only once our write is
    /// durable), so with the leader's vote we know the slot is chosen.
    pub(super) fn flush_votes(&mut self, out: &mut Vec<Output>) {
        let votes = std::mem::take(&mut self.pending_votes);
        for ((leader, epoch), accepted) in votes {
            let msg = PeerMsg::Vote { epoch, accepted, promised: self.promise };
            let to =
                if self.followers_hear_votes() { vec![leader, self.cfg.id] } else { vec![leader] };
            self.send(to, msg, out);
        }
    }

    /// True when the leader's vote and a follower's own make a write quorum
    /// (NW = 2), so followers are sent the leader's vote and tally it with
    /// their own. With a larger NW a follower would need other followers'
    /// votes too: sending every vote to every replica measured a third more
    /// CPU per write with 5 replicas, so there followers wait for COMMIT.
    pub(super) fn followers_hear_votes(&self) -> bool {
        self.cfg.write_quorum <= 2
    }

    /// Leader: one COMMIT naming every slot committed since the last flush.
    /// Everyone: record the commit index (no fsync needed; recovery rebuilds it).
    pub(super) fn flush_commits(&mut self, out: &mut Vec<Output>) {
        // With NW = 2 a follower already knows what is chosen: the leader's
        // vote and its own make a write quorum, and the commit index in every
        // ACCEPT and heartbeat covers the slots holding the leader's ballot (a
        // slot holding another entry is fetched). A COMMIT would only repeat
        // that, at the cost of a message per follower per batch, so
        // `apply_committed` leaves the notice empty then.
        if let Role::Leader(l) = &mut self.role {
            if !l.commit_notice.is_empty() {
                let slots = std::mem::take(&mut l.commit_notice);
                let epoch = l.epoch;
                let others = self.others();
                for chunk in slots.chunks(4 * BATCH_ENTRIES_MAX) {
                    self.send(
                        others.clone(),
                        PeerMsg::Commit { epoch, slots: chunk.to_vec() },
                        out,
                    );
                }
            }
        }
        // While a snapshot is being saved the commit index may rest on it (an
        // installed snapshot skips the log). Recorded before the checkpoint, a
        // restart without the snapshot would walk the old log up to it and
        // take stale entries for chosen ones. The checkpoint records it.
        if self.commit > self.commit_persisted && self.snapshot_pending.is_none() {
            self.commit_persisted = self.commit;
            out.push(Output::Persist(Persist::Commit(self.commit)));
        }
    }

    /// A replica stores the leader's entries (DESIGN §4.2) and votes at the next flush.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_accept(
        &mut self,
        now: Millis,
        from: ReplicaId,
        inc: Incarnation,
        epoch: Epoch,
        entries: Vec<(LogIndex, Entry)>,
        commit: Option<LogIndex>,
        forwards: Vec<ForwardTag>,
        out: &mut Vec<Output>,
    ) {
        if self.learner || self.owner(epoch) != from {
            self.stats.dropped_messages += 1;
            return;
        }
        let other_leader = epoch == self.promise && self.promise_leader.is_some_and(|l| l != inc);
        if epoch < self.promise || other_leader {
            let msg = PeerMsg::Vote { epoch, accepted: Vec::new(), promised: self.promise };
            self.send(vec![from], msg, out);
            return;
        }
        if epoch > self.promise || self.promise_leader.is_none() {
            self.persist_promise(epoch, Some(inc), out);
        }
        if !matches!(self.role, Role::Follower) {
            self.step_down(now, out);
        }
        self.follow(now, from, epoch, out);
        let mut stored = Vec::new();
        let mut accepted = Vec::new();
        for (index, entry) in entries {
            if entry.ballot != epoch {
                self.stats.dropped_messages += 1;
                continue;
            }
            if index.0 == 0 || index.0 > INDEX_MAX {
                self.stats.dropped_messages += 1;
                continue;
            }
            if index <= self.commit {
                let held = self.log.get(&index).map(|e| e.id);
                if index > self.snapshot_index && held != Some(entry.id) {
                    // A correct leader re-proposes the chosen entry of every
                    // slot it recovered; anything else is a broken peer.
                    crate::qlog!(
                        "refusing ACCEPT from {from}: committed slot {index} holds {held:?}, not {}",
                        entry.id
                    );
                    self.stats.dropped_messages += 1;
                    continue;
                }
                accepted.push(index);
                continue;
            }
            if self.log.get(&index) != Some(&entry) {
                self.log.insert(index, entry.clone());
                stored.push((index, entry));
            }
            accepted.push(index);
        }
        if !stored.is_empty() {
            out.push(Output::Persist(Persist::Accept(stored)));
        }
        self.note_forward_slots(epoch, &forwards);
        // Votes may have come in before the entries did.
        let heard = accepted.iter().any(|i| self.votes_heard.contains_key(i));
        self.pending_votes.entry((from, epoch)).or_default().extend(accepted);
        if heard {
            self.choose_heard(epoch);
            self.advance_commit(now, out);
        }
        if let Some(c) = commit {
            self.learn_commit(now, from, epoch, c, out);
        }
    }

    /// Remembers the slots of our own forwarded writes (named in an ACCEPT),
    /// with the entry each was proposed as, so the write's client is answered
    /// when we apply that entry there.
    fn note_forward_slots(&mut self, epoch: Epoch, forwards: &[ForwardTag]) {
        for tag in forwards {
            if tag.from != self.cfg.id || tag.boot != self.boot || tag.index <= self.commit {
                continue;
            }
            // The entry this ACCEPT carried there (the leader of `epoch`
            // proposed one per slot), if we hold it.
            let held = self.log.get(&tag.index).filter(|e| e.ballot == epoch).map(|e| e.id);
            if let Some(id) = held.filter(|_| self.forwards.contains_key(&tag.req.0)) {
                self.forward_slots.insert(tag.index, (id, tag.req.0));
            }
        }
    }

    /// A follower's side of a vote it hears (the leader's, and its own, see
    /// [`Replica::followers_hear_votes`]): a slot is chosen once NW full
    /// members, each at the incarnation we record for it, voted for it in
    /// one epoch, so a follower that holds that epoch's entry there knows it
    /// is chosen exactly as the leader would, without waiting for the
    /// leader's COMMIT. Only votes in the epoch of the leader we follow are
    /// tallied; learners never count.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_vote_heard(
        &mut self,
        now: Millis,
        from: ReplicaId,
        inc: Incarnation,
        from_learner: bool,
        epoch: Epoch,
        accepted: Vec<LogIndex>,
        out: &mut Vec<Output>,
    ) {
        if self.learner || from_learner || self.leader.map(|(_, e)| e) != Some(epoch) {
            return;
        }
        let horizon = LogIndex(self.commit.0 + VOTES_AHEAD_MAX);
        for index in accepted {
            if index <= self.commit || index > horizon {
                continue;
            }
            let (voted, voters) = self.votes_heard.entry(index).or_insert((epoch, Vec::new()));
            if *voted != epoch {
                *voted = epoch;
                voters.clear();
            }
            if !voters.iter().any(|(id, _)| *id == from) {
                voters.push((from, inc));
            }
        }
        self.choose_heard(epoch);
        self.advance_commit(now, out);
    }

    /// Marks chosen every slot from the commit index on whose tally reached
    /// NW and whose held entry has the tallied ballot. Stops at the first slot
    /// that is neither: only a contiguous prefix can commit anyway.
    fn choose_heard(&mut self, epoch: Epoch) {
        let nw = self.cfg.write_quorum;
        let mut index = self.commit.next();
        loop {
            if self.chosen.contains_key(&index) {
                index = index.next();
                continue;
            }
            let Some((voted, voters)) = self.votes_heard.get(&index) else { break };
            let Some(entry) = self.log.get(&index) else { break };
            if *voted != epoch || entry.ballot != epoch {
                break;
            }
            let counted = voters
                .iter()
                .filter(|(id, inc)| {
                    let current = self.incarnations.get(id) == Some(inc);
                    let full = *id == self.cfg.id || self.peers.get(id).is_some_and(|p| !p.learner);
                    current && full
                })
                .count();
            if counted < nw {
                break;
            }
            self.chosen.insert(index, entry.id);
            index = index.next();
        }
    }

    /// A vote (ours too, once durable): the leader tallies it; a follower
    /// hears it (see [`Replica::on_vote_heard`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_vote(
        &mut self,
        now: Millis,
        from: ReplicaId,
        inc: Incarnation,
        from_learner: bool,
        epoch: Epoch,
        accepted: Vec<LogIndex>,
        out: &mut Vec<Output>,
    ) {
        let me = self.cfg.id;
        let Role::Leader(l) = &mut self.role else {
            return self.on_vote_heard(now, from, inc, from_learner, epoch, accepted, out);
        };
        if l.epoch != epoch || accepted.is_empty() {
            return;
        }
        if from != me {
            l.last_ack.insert(from, now);
        }
        for index in &accepted {
            if let Some(t) = l.tallies.get_mut(index) {
                t.voters.insert(from);
            }
        }
        for index in accepted {
            self.maybe_choose(index);
        }
        self.advance_commit(now, out);
    }

    pub(super) fn on_commit(
        &mut self,
        now: Millis,
        from: ReplicaId,
        epoch: Epoch,
        slots: Vec<(LogIndex, EntryId)>,
        out: &mut Vec<Output>,
    ) {
        if matches!(self.role, Role::Leader(_)) {
            return;
        }
        for (index, id) in slots {
            if index > self.commit {
                self.chosen.insert(index, id);
            }
        }
        self.advance_commit(now, out);
        if self.leader == Some((from, epoch)) {
            self.reset_election_deadline(now);
            if self.chosen.contains_key(&self.commit.next()) {
                self.request_fetch(now, from, out);
            }
        }
    }

    /// A follower learns the leader's commit index `c` (heartbeat or ACCEPT):
    /// slots up to `c` holding an entry of the leader's own ballot are chosen
    /// (it proposed one entry per slot); any other slot is fetched.
    pub(super) fn learn_commit(
        &mut self,
        now: Millis,
        from: ReplicaId,
        epoch: Epoch,
        c: LogIndex,
        out: &mut Vec<Output>,
    ) {
        self.catchup_to = self.catchup_to.max(c);
        if c <= self.commit {
            return;
        }
        let known: Vec<(LogIndex, EntryId)> = self
            .log
            .range(self.commit.next()..=c)
            .filter(|(i, e)| e.ballot == epoch && !self.chosen.contains_key(i))
            .map(|(i, e)| (*i, e.id))
            .collect();
        self.chosen.extend(known);
        self.advance_commit(now, out);
        if self.commit < c {
            self.request_fetch(now, from, out);
        }
    }

    /// Commits chosen slots strictly in order while we hold their chosen entry.
    pub(super) fn advance_commit(&mut self, now: Millis, out: &mut Vec<Output>) {
        let before = self.commit;
        loop {
            let next = self.commit.next();
            let Some(id) = self.chosen.get(&next) else { break };
            if self.log.get(&next).map(|e| e.id) != Some(*id) {
                break;
            }
            self.chosen.remove(&next);
            self.commit = next;
        }
        if self.commit > before {
            self.apply_committed(out);
            self.after_commit_moved(now, out);
        }
    }

    /// Everything that waits for the commit index to move.
    fn after_commit_moved(&mut self, now: Millis, out: &mut Vec<Output>) {
        let commit = self.commit;
        self.votes_heard = self.votes_heard.split_off(&commit.next());
        self.forward_slots = self.forward_slots.split_off(&commit.next());
        if let Role::Leader(l) = &mut self.role {
            l.progress_deadline = now.plus(self.cfg.election_timeout_ms);
            // A slot can commit before its tally fills (a COMMIT from the last
            // leader said it was chosen): its tally is done, and once a
            // snapshot compacts the slot away a re-send would find no entry.
            let open = l.tallies.split_off(&commit.next());
            let done = std::mem::replace(&mut l.tallies, open);
            l.tally_bytes -= done.values().map(|t| t.bytes).sum::<u64>();
        }
        self.maybe_finish_recovery(now, out);
        self.check_read_index(out);
        self.check_barriers(out);
        self.maybe_promote(out);
    }

    /// The commit index jumped (a snapshot was installed): run what waits for
    /// it, then commit whatever chosen entries follow.
    pub(super) fn after_commit_jump(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.after_commit_moved(now, out);
        self.advance_commit(now, out);
    }

    /// Applies committed slots that waited for a later turn, and runs what
    /// waits for them.
    pub(super) fn continue_apply(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.applied < self.commit {
            self.apply_committed(out);
            self.after_commit_moved(now, out);
        }
    }

    /// Applies committed slots in order, at most [`APPLY_PER_FLUSH_MAX`]
    /// between two flushes, and answers their waiters.
    pub(super) fn apply_committed(&mut self, out: &mut Vec<Output>) {
        // Followers that hear our votes are sent no COMMIT (see `flush_commits`).
        let notify = !self.followers_hear_votes();
        while self.applied < self.commit && self.applied_since_flush < APPLY_PER_FLUSH_MAX {
            self.applied_since_flush += 1;
            let index = self.applied.next();
            // Borrowed, not cloned: the store and the log are separate fields.
            let entry = self.log.get(&index).expect("committed slots are held");
            let outcome = apply(&mut self.store, index, &entry.command);
            let entry_id = entry.id;
            self.applied = index;
            if let Role::Leader(l) = &mut self.role {
                if notify {
                    l.commit_notice.push((index, entry_id));
                }
                if let Some((waiter, _)) = l.waiters.remove(&index) {
                    let answer = outcome.unwrap_or(Reply::Written(index.0));
                    self.answer(waiter, answer, out);
                }
            } else if let Some((id, forward)) = self.forward_slots.remove(&index) {
                // Our own forwarded write, applied here: every replica applies
                // it the same way, so our outcome is the leader's. The
                // leader's FORWARD_REPLY, if it comes, finds nothing waiting.
                if id == entry_id {
                    if let Some(f) = self.forwards.remove(&forward) {
                        let answer = outcome.unwrap_or(Reply::Written(index.0));
                        self.finish_forward(f.origin, answer, out);
                    }
                }
            }
        }
    }

    /// Sends a leader's answer to whoever waits for it.
    pub(super) fn answer(&mut self, waiter: Waiter, answer: Reply, out: &mut Vec<Output>) {
        match waiter {
            Waiter::Local(req) => reply(out, req, answer),
            Waiter::Remote { from, boot, req } => {
                if let Role::Leader(l) = &mut self.role {
                    let key = (from, boot, req.0);
                    if let Some(d) = l.dedup.get_mut(&key) {
                        *d = Dedup::Done(answer.clone(), self.now);
                        l.dedup_expiry.push_back((self.now, key));
                    }
                    while l.dedup_expiry.len() > DEDUP_ENTRIES_MAX {
                        l.forget_oldest_answer();
                    }
                }
                self.send(vec![from], PeerMsg::ForwardReply { req, boot, reply: answer }, out);
            }
        }
    }

    /// Asks `from` for committed entries past our commit index, one request at a time.
    pub(super) fn request_fetch(&mut self, now: Millis, from: ReplicaId, out: &mut Vec<Output>) {
        if self.fetch.is_some_and(|(_, deadline)| now < deadline) || self.incoming.is_some() {
            return;
        }
        self.fetch = Some((from, now.plus(self.cfg.election_timeout_ms)));
        self.send(vec![from], PeerMsg::FetchReq { from: self.commit.next() }, out);
    }

    pub(super) fn on_fetch_req(
        &mut self,
        now: Millis,
        from: ReplicaId,
        index: LogIndex,
        out: &mut Vec<Output>,
    ) {
        if index <= self.snapshot_index && index <= self.commit {
            // Compacted away: the store itself is the catch-up.
            self.start_snapshot_transfer(now, from, out);
            return;
        }
        let entries: Vec<(LogIndex, Entry)> = if index <= self.commit && index.0 > 0 {
            let mut budget = BatchBudget::default();
            self.log
                .range(index..=self.commit)
                .take_while(|(_, e)| budget.take(e))
                .map(|(i, e)| (*i, e.clone()))
                .collect()
        } else {
            Vec::new()
        };
        self.send(vec![from], PeerMsg::FetchResp { entries, commit: self.commit }, out);
    }

    pub(super) fn on_fetch_resp(
        &mut self,
        now: Millis,
        from: ReplicaId,
        entries: Vec<(LogIndex, Entry)>,
        their_commit: LogIndex,
        out: &mut Vec<Output>,
    ) {
        if self.fetch.is_some_and(|(id, _)| id == from) {
            self.fetch = None;
        }
        let got = !entries.is_empty();
        self.stats.caught_up_entries += entries.len() as u64;
        self.install_chosen(now, entries, out);
        let target = match &self.role {
            Role::Leader(l) => l.recovering_to,
            _ => Some(self.catchup_to),
        };
        if got && target.is_some_and(|t| self.commit < t.min(their_commit)) {
            self.request_fetch(now, from, out);
        }
    }

    /// Installs committed entries (from a promise or a fetch): each replaces
    /// whatever the slot held and is known chosen.
    pub(super) fn install_chosen(
        &mut self,
        now: Millis,
        mut entries: Vec<(LogIndex, Entry)>,
        out: &mut Vec<Output>,
    ) {
        entries.sort_by_key(|(i, _)| *i);
        let mut stored = Vec::new();
        for (index, entry) in entries {
            if index <= self.commit {
                continue;
            }
            self.chosen.insert(index, entry.id);
            if self.log.get(&index).map(|e| e.id) != Some(entry.id) {
                self.log.insert(index, entry.clone());
                stored.push((index, entry));
            }
        }
        if !stored.is_empty() {
            out.push(Output::Persist(Persist::Accept(stored)));
        }
        self.advance_commit(now, out);
    }

    /// While a recovering leader fetches chosen entries: once it holds them all,
    /// finish recovery.
    fn maybe_finish_recovery(&mut self, now: Millis, out: &mut Vec<Output>) {
        let Role::Leader(l) = &mut self.role else { return };
        let Some(target) = l.recovering_to else { return };
        if self.commit < target {
            return;
        }
        let promises = std::mem::take(&mut l.promises);
        self.finish_recovery(now, promises, out);
    }

    /// The commit index a catching-up replica is working towards, while behind.
    pub(super) fn catchup_target(&self) -> Option<LogIndex> {
        let target = match &self.role {
            Role::Leader(l) => l.recovering_to?,
            _ => self.catchup_to,
        };
        (target > self.commit).then_some(target)
    }

    /// Heartbeats: liveness, the leader's progress, and re-sends (DESIGN §4.4).
    pub(super) fn send_heartbeat(&mut self, now: Millis, out: &mut Vec<Output>) {
        let progress = self.is_serving_leader().then(|| (self.commit, self.last_index()));
        let heartbeat_ms = self.cfg.heartbeat_ms;
        let others = self.others();
        let Role::Leader(l) = &mut self.role else { return };
        l.hb_seq += 1;
        l.heartbeat_now = false;
        l.next_heartbeat = now.plus(heartbeat_ms);
        let msg = PeerMsg::Heartbeat { epoch: l.epoch, seq: l.hb_seq, progress };
        self.send(others, msg, out);
        self.resend_accepts(now, out);
    }

    /// A heartbeat to a few peers, without starting a new round.
    pub(super) fn send_heartbeat_to(&mut self, to: Vec<ReplicaId>, out: &mut Vec<Output>) {
        let progress = self.is_serving_leader().then(|| (self.commit, self.last_index()));
        let Role::Leader(l) = &self.role else { return };
        let msg = PeerMsg::Heartbeat { epoch: l.epoch, seq: l.hb_seq, progress };
        self.send(to, msg, out);
    }

    /// Re-sends ACCEPT for slots not chosen after a heartbeat interval, to the
    /// replicas that have not voted for them: one lost message never stalls the log.
    fn resend_accepts(&mut self, now: Millis, out: &mut Vec<Output>) {
        let heartbeat_ms = self.cfg.heartbeat_ms;
        let others = self.others();
        let commit = self.is_serving_leader().then_some(self.commit);
        let Role::Leader(l) = &mut self.role else { return };
        let epoch = l.epoch;
        type Batch = (Vec<(LogIndex, Entry)>, BatchBudget);
        let mut per_peer: Vec<(ReplicaId, Batch)> =
            others.iter().map(|id| (*id, (Vec::new(), BatchBudget::default()))).collect();
        for (index, tally) in l.tallies.iter_mut() {
            if now.since(tally.sent_at) < heartbeat_ms || l.unsent.contains(index) {
                continue;
            }
            tally.sent_at = now;
            for (peer, (batch, budget)) in per_peer.iter_mut() {
                let entry = &self.log[index];
                if !tally.voters.contains(peer) && budget.take(entry) {
                    batch.push((*index, entry.clone()));
                }
            }
        }
        for (peer, (batch, _)) in per_peer {
            if !batch.is_empty() {
                let msg = PeerMsg::Accept { epoch, entries: batch, commit, forwards: Vec::new() };
                self.send(vec![peer], msg, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_heartbeat(
        &mut self,
        now: Millis,
        from: ReplicaId,
        inc: Incarnation,
        epoch: Epoch,
        seq: u64,
        progress: Option<(LogIndex, LogIndex)>,
        out: &mut Vec<Output>,
    ) {
        if self.owner(epoch) != from {
            self.stats.dropped_messages += 1;
            return;
        }
        if self.learner {
            // A learner's ack must not count as liveness: it only catches up.
            if epoch >= self.promise {
                self.learner_heartbeat(now, from, epoch, progress, out);
            }
            return;
        }
        let ack = PeerMsg::HeartbeatAck { epoch, seq, commit: self.commit };
        self.send(vec![from], ack, out);
        if epoch < self.promise {
            // Our envelope names the higher epoch: the old leader steps down.
            return;
        }
        if epoch > self.promise {
            // A majority promised this epoch; promising it too only refuses
            // epochs that can no longer win, and keeps STATUS epochs in step.
            self.persist_promise(epoch, Some(inc), out);
        }
        if !matches!(self.role, Role::Follower) {
            self.step_down(now, out);
        }
        self.follow(now, from, epoch, out);
        if let Some((c, last)) = progress {
            self.drop_stale_above(epoch, last, out);
            self.learn_commit(now, from, epoch, c, out);
        }
    }

    /// DESIGN §4.3: entries of older ballots above a recovered leader's last
    /// index were held by no recovery promiser, so none can have been chosen.
    fn drop_stale_above(&mut self, epoch: Epoch, last: LogIndex, out: &mut Vec<Output>) {
        let floor = last.max(self.commit);
        let stale: Vec<LogIndex> = self
            .log
            .range(floor.next()..)
            .filter(|(_, e)| e.ballot < epoch)
            .map(|(i, _)| *i)
            .collect();
        if stale.is_empty() {
            return;
        }
        for index in &stale {
            self.log.remove(index);
            self.chosen.remove(index);
        }
        out.push(Output::Persist(Persist::Drop(stale)));
    }

    pub(super) fn on_heartbeat_ack(
        &mut self,
        now: Millis,
        from: ReplicaId,
        epoch: Epoch,
        seq: u64,
        commit: LogIndex,
        out: &mut Vec<Output>,
    ) {
        let from_learner = self.peers.get(&from).is_some_and(|p| p.learner);
        let Role::Leader(l) = &mut self.role else { return };
        if l.epoch != epoch || from_learner {
            return;
        }
        l.last_ack.insert(from, now);
        let acked = l.acked_seq.entry(from).or_insert(0);
        *acked = (*acked).max(seq);
        l.peer_commit.insert(from, commit);
        self.check_read_index(out);
    }

    /// Deadlines of the write path: forwards, writes waiting for a leader,
    /// queued and proposed writes, catch-up fetches, the de-duplication table.
    pub(super) fn tick_replication(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.expire_awaiting(now, out);
        self.tick_forwards(now, out);
        if self.fetch.is_some_and(|(_, deadline)| now >= deadline) {
            self.fetch = None;
        }
        if matches!(self.role, Role::Leader(_)) {
            self.tick_leader_writes(now, out);
        }
    }

    fn expire_awaiting(&mut self, now: Millis, out: &mut Vec<Output>) {
        let waiting = std::mem::take(&mut self.awaiting_leader);
        for (req, request, deadline) in waiting {
            if now >= deadline {
                let detail = match self.stats.last_election {
                    Some(e) if e.ended.is_none() => {
                        format!("election in progress for {}ms", now.since(e.started))
                    }
                    _ => format!("no leader known within {}ms", self.cfg.request_timeout_ms),
                };
                reply(out, req, Reply::Error(ClientError::NoLeader(detail)));
            } else {
                self.awaiting_leader.push((req, request, deadline));
            }
        }
    }

    fn tick_forwards(&mut self, now: Millis, out: &mut Vec<Output>) {
        let ids: Vec<u64> = self.forwards.keys().copied().collect();
        for id in ids {
            let f = &self.forwards[&id];
            if now >= f.deadline {
                let f = self.forwards.remove(&id).expect("listed");
                let detail = format!(
                    "no answer from leader {} within {}ms; the write may or may not have committed",
                    f.to, self.cfg.request_timeout_ms
                );
                self.finish_forward(f.origin, Reply::Error(ClientError::Timeout(detail)), out);
            } else if now >= f.resend_at {
                // Same request id, same epoch: the leader de-duplicates it.
                let msg = PeerMsg::Forward {
                    req: ReqId(id),
                    boot: self.boot,
                    epoch: f.epoch,
                    request: f.request.clone(),
                };
                let to = f.to;
                let resend_at = now.plus(self.forward_resend_ms());
                self.forwards.get_mut(&id).expect("listed").resend_at = resend_at;
                self.send(vec![to], msg, out);
            }
        }
    }

    /// True for one election timeout after becoming leader: replicas that
    /// promised late or were not asked have not answered a heartbeat yet, so a
    /// missing write quorum is not yet evidence; writes wait instead of failing.
    pub(super) fn is_settling(&self, now: Millis) -> bool {
        match &self.role {
            Role::Leader(l) => now.since(l.since) < self.cfg.election_timeout_ms,
            _ => false,
        }
    }

    fn tick_leader_writes(&mut self, now: Millis, out: &mut Vec<Output>) {
        let serving = self.is_serving_leader();
        let lacks_quorum = self.lacks_write_quorum(now);
        let refuse = lacks_quorum && !self.is_settling(now);
        let no_quorum = self.no_quorum(now);
        let request_timeout_ms = self.cfg.request_timeout_ms;
        let l = self.leadership_mut();
        // Deadlines are checked in a sweep every few ms, not on every tick:
        // with thousands of writes in flight a scan per event would dominate.
        let sweep = now >= l.next_sweep;
        if sweep {
            l.next_sweep = now.plus(SWEEP_MS);
        }
        let expired: Vec<LogIndex> = if sweep {
            l.waiters.iter().filter(|(_, (_, d))| now >= *d).map(|(i, _)| *i).collect()
        } else {
            Vec::new()
        };
        let mut answers = Vec::new();
        for index in expired {
            let (waiter, _) = l.waiters.remove(&index).expect("listed");
            let detail = format!(
                "slot {index} not chosen within {request_timeout_ms}ms; the write may or may not commit"
            );
            answers.push((waiter, Reply::Error(ClientError::Timeout(detail))));
        }
        let mut keep = std::collections::VecDeque::new();
        let mut ready = Vec::new();
        let mut ready_bytes = 0;
        while let Some(q) = l.queued.pop_front() {
            if refuse {
                answers.push((q.waiter, Reply::Error(no_quorum.clone())));
            } else if now >= q.deadline {
                let detail = format!("write not proposed within {request_timeout_ms}ms");
                answers.push((q.waiter, Reply::Error(ClientError::NoLeader(detail))));
            } else if serving
                && !lacks_quorum
                && !l.window_full(ready.len(), ready_bytes)
                && keep.is_empty()
            {
                ready_bytes += q.size_bytes();
                ready.push(q);
            } else {
                keep.push_back(q);
            }
        }
        l.queued = keep;
        let horizon = 2 * request_timeout_ms;
        while l.dedup_expiry.front().is_some_and(|(at, _)| now.since(*at) > horizon) {
            l.forget_oldest_answer();
        }
        for (waiter, answer) in answers {
            self.answer(waiter, answer, out);
        }
        for q in ready {
            self.propose_write(now, q.waiter, q.request, q.deadline);
        }
    }
}

/// The forwarded writes among `entries`, from the leader's waiters.
fn forward_tags(
    waiters: &BTreeMap<LogIndex, (Waiter, Millis)>,
    entries: &[(LogIndex, Entry)],
) -> Vec<ForwardTag> {
    entries
        .iter()
        .filter_map(|(index, _)| match waiters.get(index) {
            Some((Waiter::Remote { from, boot, req }, _)) => {
                Some(ForwardTag { index: *index, from: *from, boot: *boot, req: *req })
            }
            _ => None,
        })
        .collect()
}

/// Applies one command to the store; returns the client's answer.
fn apply(store: &mut Store, index: LogIndex, command: &Command) -> Option<Reply> {
    match command {
        Command::Noop => None,
        Command::Put(kv) => {
            store.insert(kv.key(), index.0, kv.value());
            Some(Reply::Written(index.0))
        }
        Command::Del { key } => {
            store.remove(key);
            Some(Reply::Written(index.0))
        }
        Command::Cas { expected, kv } => {
            let current = store.version(kv.key());
            if current == *expected {
                store.insert(kv.key(), index.0, kv.value());
                Some(Reply::Written(index.0))
            } else {
                Some(Reply::Error(ClientError::Conflict(current)))
            }
        }
    }
}
