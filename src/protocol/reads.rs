//! Quorum reads (DESIGN §5): ask NR random full members; reply when all agree
//! on one version and none holds a pending entry for the key; otherwise retry
//! with backoff, and after a few rounds fall back to the leader's read-index.

use super::election::{ReadIndexWait, ReadKind};
use super::message::{PeerMsg, ReadAnswer};
use super::replication::Origin;
use super::types::{Millis, ReplicaId, ReqId};
use super::{quorum, reply, Output, Replica, Role, Waiter, READ_ROUNDS_BEFORE_FALLBACK};
use crate::client::{ClientError, Reply, Request};
use rand::seq::SliceRandom;
use std::collections::{BTreeMap, BTreeSet};

/// One client read in progress.
#[derive(Debug)]
pub(super) struct ReadRound {
    pub req: ReqId,
    pub key: String,
    /// GETV (answer with the version) rather than GET.
    pub with_version: bool,
    /// Rounds tried so far.
    pub round: u32,
    /// Replicas asked in the current round.
    pub asked: BTreeSet<ReplicaId>,
    pub answers: BTreeMap<ReplicaId, ReadAnswer>,
    /// The current round fails if not complete by then.
    pub round_deadline: Millis,
    /// When the next round starts (after a failed one).
    pub retry_at: Option<Millis>,
    /// Sent to the leader; waiting for its answer.
    pub fallback: bool,
    /// The client gets `ERR TIMEOUT` after this.
    pub deadline: Millis,
}

impl Replica {
    pub(super) fn start_read(
        &mut self,
        now: Millis,
        req: ReqId,
        key: String,
        with_version: bool,
        out: &mut Vec<Output>,
    ) {
        let id = self.next_read;
        self.next_read += 1;
        let round = ReadRound {
            req,
            key,
            with_version,
            round: 0,
            asked: BTreeSet::new(),
            answers: BTreeMap::new(),
            round_deadline: now,
            retry_at: None,
            fallback: false,
            deadline: now.plus(self.cfg.request_timeout_ms),
        };
        self.reads.insert(id, round);
        self.launch_round(now, id, out);
    }

    /// Asks NR full members, live ones first (DESIGN §2: heard from at our
    /// epoch within the election timeout), each group in random order. A
    /// connected link is not enough: a stopped (SIGSTOP) or cut-off replica
    /// keeps its sockets open, and asking it costs the round its deadline.
    fn launch_round(&mut self, now: Millis, id: u64, out: &mut Vec<Output>) {
        let nr = self.cfg.read_quorum;
        let live_peers = self.live_peers(now);
        let mut live: Vec<ReplicaId> = Vec::new();
        let mut others: Vec<ReplicaId> = Vec::new();
        if !self.learner {
            live.push(self.cfg.id);
        }
        for (peer, p) in &self.peers {
            if p.learner {
                continue;
            }
            if live_peers.contains(peer) {
                live.push(*peer);
            } else {
                others.push(*peer);
            }
        }
        live.shuffle(&mut self.rng);
        others.shuffle(&mut self.rng);
        let asked: BTreeSet<ReplicaId> = live.into_iter().chain(others).take(nr).collect();
        let round_ms = (2 * self.cfg.heartbeat_ms).max(10);
        let local = asked.contains(&self.cfg.id);
        let read = self.reads.get_mut(&id).expect("launching a known read");
        read.asked = asked.clone();
        read.answers.clear();
        read.retry_at = None;
        read.round_deadline = now.plus(round_ms);
        let key = read.key.clone();
        let remote: Vec<ReplicaId> = asked.into_iter().filter(|r| *r != self.cfg.id).collect();
        self.send(remote, PeerMsg::ReadReq { read: id, boot: self.boot, key: key.clone() }, out);
        if local {
            let answer = self.local_answer(&key);
            let me = self.cfg.id;
            self.on_read_answer(now, me, id, answer, out);
        }
    }

    /// What this replica holds for `key` (DESIGN §5).
    fn local_answer(&self, key: &str) -> ReadAnswer {
        let (version, value) =
            self.store.get(key).map_or((0, Vec::new()), |r| (r.version(), r.value().to_vec()));
        let pending =
            self.log.range(self.applied.next()..).any(|(_, e)| e.command.key() == Some(key));
        ReadAnswer { version, value, pending }
    }

    pub(super) fn on_read_req(
        &mut self,
        from: ReplicaId,
        read: u64,
        boot: u64,
        key: String,
        out: &mut Vec<Output>,
    ) {
        let answer = (!self.learner).then(|| self.local_answer(&key));
        self.send(vec![from], PeerMsg::ReadResp { read, boot, answer }, out);
    }

    pub(super) fn on_read_resp(
        &mut self,
        now: Millis,
        from: ReplicaId,
        read: u64,
        boot: u64,
        answer: Option<ReadAnswer>,
        out: &mut Vec<Output>,
    ) {
        if boot != self.boot {
            // An answer to a read of our previous process.
            self.stats.dropped_messages += 1;
            return;
        }
        match answer {
            Some(answer) => self.on_read_answer(now, from, read, answer, out),
            // A learner's answer does not count: the round fails at its deadline.
            None => self.stats.dropped_messages += 1,
        }
    }

    fn on_read_answer(
        &mut self,
        now: Millis,
        from: ReplicaId,
        id: u64,
        answer: ReadAnswer,
        out: &mut Vec<Output>,
    ) {
        let Some(read) = self.reads.get_mut(&id) else { return };
        if read.fallback || read.retry_at.is_some() || !read.asked.contains(&from) {
            return;
        }
        read.answers.insert(from, answer);
        if read.answers.len() < read.asked.len() {
            return;
        }
        let first = read.answers.values().next().expect("NR >= 1").clone();
        let agree = read.answers.values().all(|a| a.version == first.version && !a.pending);
        if agree {
            let read = self.reads.remove(&id).expect("present");
            reply(out, read.req, read_reply(read.with_version, first.version, first.value));
        } else {
            self.fail_round(now, id, out);
        }
    }

    /// A round disagreed, met a pending entry, or timed out: back off and retry,
    /// or fall back to the leader after a few rounds.
    fn fail_round(&mut self, now: Millis, id: u64, out: &mut Vec<Output>) {
        self.stats.read_retries += 1;
        let read = self.reads.get_mut(&id).expect("failing a known read");
        read.round += 1;
        if read.round >= READ_ROUNDS_BEFORE_FALLBACK {
            if let Some(reply_now) = self.try_fallback(now, id, out) {
                let read = self.reads.remove(&id).expect("present");
                reply(out, read.req, reply_now);
            }
            if self.reads.get(&id).is_none_or(|r| r.fallback) {
                return;
            }
        }
        let read = self.reads.get_mut(&id).expect("still reading");
        let backoff_ms = (1u64 << read.round.min(6)).min(self.cfg.heartbeat_ms.max(1));
        read.retry_at = Some(now.plus(backoff_ms));
    }

    /// Sends the read to the leader's read-index path. Returns an immediate
    /// answer when none is possible; leaves the read in rounds without a leader.
    fn try_fallback(&mut self, now: Millis, id: u64, out: &mut Vec<Output>) -> Option<Reply> {
        if self.is_serving_leader() {
            let read = self.reads.remove(&id).expect("present");
            self.stats.read_fallbacks += 1;
            let kind = ReadKind::Key { key: read.key, with_version: read.with_version };
            self.read_index(now, Waiter::Local(read.req), kind, out);
            return None;
        }
        let (leader, epoch) = match self.leader {
            Some((l, e)) if l != self.cfg.id => (l, e),
            _ => return None,
        };
        self.stats.read_fallbacks += 1;
        let read = self.reads.get_mut(&id).expect("present");
        read.fallback = true;
        let request = if read.with_version {
            Request::GetV { key: read.key.clone() }
        } else {
            Request::Get { key: read.key.clone() }
        };
        self.forward(now, Origin::Read(id), leader, epoch, request, out);
        None
    }

    /// The leader answered a fallback read (or the forward failed: go back to rounds).
    pub(super) fn finish_fallback_read(&mut self, id: u64, answer: Reply, out: &mut Vec<Output>) {
        let Some(read) = self.reads.get_mut(&id) else { return };
        if matches!(answer, Reply::Error(ClientError::Timeout(_))) && self.now < read.deadline {
            read.fallback = false;
            read.retry_at = Some(self.now);
            return;
        }
        let read = self.reads.remove(&id).expect("present");
        reply(out, read.req, answer);
    }

    /// Read deadlines: whole reads, rounds, retries, and the leader's read-index waits.
    pub(super) fn tick_reads(&mut self, now: Millis, out: &mut Vec<Output>) {
        let ids: Vec<u64> = self.reads.keys().copied().collect();
        for id in ids {
            let read = &self.reads[&id];
            if now >= read.deadline {
                let read = self.reads.remove(&id).expect("listed");
                let detail = format!(
                    "no agreeing read quorum for '{}' within {}ms ({} rounds)",
                    read.key, self.cfg.request_timeout_ms, read.round
                );
                reply(out, read.req, Reply::Error(ClientError::Timeout(detail)));
            } else if read.fallback {
                continue;
            } else if let Some(at) = read.retry_at {
                if now >= at {
                    self.launch_round(now, id, out);
                }
            } else if now >= read.round_deadline {
                self.fail_round(now, id, out);
            }
        }
        self.expire_read_index(now, out);
    }

    /// Leader-side read-index (DESIGN §5): confirm leadership with a fresh
    /// heartbeat round, then answer once applied reaches the commit index of arrival.
    pub(super) fn read_index(
        &mut self,
        now: Millis,
        waiter: Waiter,
        kind: ReadKind,
        out: &mut Vec<Output>,
    ) {
        if !self.is_serving_leader() {
            let detail = format!("leader {} has not finished recovery", self.cfg.id);
            self.answer(waiter, Reply::Error(ClientError::NoLeader(detail)), out);
            return;
        }
        // Our last index, not our commit index: a follower acknowledges a
        // forwarded write as soon as it hears NW votes for it, which can be
        // before we do, but never for a slot we have not proposed.
        let commit_at = self.last_index();
        let deadline = now.plus(self.cfg.request_timeout_ms);
        let l = self.leadership_mut();
        let seq = l.hb_seq + 1;
        l.read_index.push(ReadIndexWait { waiter, kind, seq, commit_at, deadline });
        l.heartbeat_now = true;
        self.check_read_index(out);
    }

    /// Answers every read-index read whose heartbeat round a majority confirmed.
    pub(super) fn check_read_index(&mut self, out: &mut Vec<Output>) {
        let majority = quorum::majority(self.cfg.n);
        let applied = self.applied;
        let Role::Leader(l) = &mut self.role else { return };
        if l.read_index.is_empty() {
            return;
        }
        let acked = &l.acked_seq;
        let (ready, waiting): (Vec<ReadIndexWait>, Vec<ReadIndexWait>) =
            std::mem::take(&mut l.read_index).into_iter().partition(|r| {
                let confirmed = 1 + acked.values().filter(|s| **s >= r.seq).count();
                confirmed >= majority && applied >= r.commit_at
            });
        l.read_index = waiting;
        for r in ready {
            let answer = match r.kind {
                ReadKind::Key { key, with_version } => {
                    let (version, value) = self
                        .store
                        .get(&key)
                        .map_or((0, Vec::new()), |r| (r.version(), r.value().to_vec()));
                    read_reply(with_version, version, value)
                }
                ReadKind::Dump => Reply::Lines(self.dump_lines()),
                ReadKind::Barrier => Reply::Written(r.commit_at.0),
            };
            self.answer(r.waiter, answer, out);
        }
    }

    fn expire_read_index(&mut self, now: Millis, out: &mut Vec<Output>) {
        let timeout_ms = self.cfg.request_timeout_ms;
        let Role::Leader(l) = &mut self.role else { return };
        let (expired, waiting): (Vec<ReadIndexWait>, Vec<ReadIndexWait>) =
            std::mem::take(&mut l.read_index).into_iter().partition(|r| now >= r.deadline);
        l.read_index = waiting;
        for r in expired {
            let detail = format!("leader could not confirm its lead within {timeout_ms}ms");
            self.answer(r.waiter, Reply::Error(ClientError::Timeout(detail)), out);
        }
    }
}

/// The client's reply for a read of `version`/`value` (version 0 = absent).
fn read_reply(with_version: bool, version: u64, value: Vec<u8>) -> Reply {
    match (version, with_version) {
        (0, _) => Reply::NotFound,
        (v, true) => Reply::Version(v, value),
        (_, false) => Reply::Value(value),
    }
}

/// One line of a DUMP.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DumpLine {
    pub key: String,
    pub version: u64,
    #[serde(with = "super::types::value_bytes")]
    pub value: Vec<u8>,
}

impl Replica {
    /// DUMP (DESIGN §8, backups): the store consistent at one commit index.
    /// The leader confirms its lead (read-index) and answers; a follower gets
    /// the confirmed commit index from the leader, waits until it applied that
    /// far, and dumps its own store.
    pub(super) fn start_dump(&mut self, now: Millis, req: ReqId, out: &mut Vec<Output>) {
        if matches!(self.role, Role::Leader(_)) {
            return self.read_index(now, Waiter::Local(req), ReadKind::Dump, out);
        }
        match self.leader {
            Some((leader, epoch)) => {
                self.forward(now, Origin::Barrier(req), leader, epoch, Request::Dump, out)
            }
            None => {
                let detail = "no leader to confirm a consistent dump; retry".to_string();
                reply(out, req, Reply::Error(ClientError::NoLeader(detail)));
            }
        }
    }

    /// The leader confirmed commit index `index` for a follower's DUMP.
    pub(super) fn barrier_confirmed(&mut self, req: ReqId, answer: Reply, out: &mut Vec<Output>) {
        match answer {
            Reply::Written(index) => {
                self.barriers.push((req, super::types::LogIndex(index)));
                self.check_barriers(out);
            }
            other => reply(out, req, other),
        }
    }

    /// Answers follower DUMPs whose confirmed index is applied here.
    pub(super) fn check_barriers(&mut self, out: &mut Vec<Output>) {
        if self.barriers.is_empty() {
            return;
        }
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.barriers).into_iter().partition(|(_, i)| applied >= *i);
        self.barriers = waiting;
        for (req, _) in ready {
            reply(out, req, Reply::Lines(self.dump_lines()));
        }
    }

    /// The store as JSON lines: a header with the commit index, then one line per key.
    pub(super) fn dump_lines(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.store.len() + 1);
        lines.push(format!("{{\"commit\":{},\"keys\":{}}}", self.applied, self.store.len()));
        for r in self.store.iter() {
            let line = DumpLine {
                key: r.key().to_string(),
                version: r.version(),
                value: r.value().to_vec(),
            };
            lines.push(serde_json::to_string(&line).expect("a dump line is plain data"));
        }
        lines
    }
}
