//! Formation (DESIGN §6): a new cluster forms only when all N replicas are up
//! and blank. The highest id sends FORM(cluster id, every incarnation); each
//! replica records it durably and acks; once all N acked, FORMED. Every message
//! carries the sender's formation state, so a replica that missed FORMED
//! completes on meeting any formed peer. Nothing is elected or served before.
//!
//! A directory wiped before formation completes has promised nothing, so it
//! may still be a founding member, but the others may record its old
//! incarnation, often with the same counter (every blank directory starts at
//! 1), and would drop its messages for good. So it moves above the old
//! counter: a blank directory that gets a FORM naming another incarnation of
//! its id takes a higher counter before it records and acks it, and a blank
//! or pending one that is told `Superseded` (a pending replica drops and
//! answers its messages like a formed one) does the same. The highest id
//! counts an ack only from the incarnation its table names; when it hears a
//! higher counter it records it and sends FORM to everyone again, and a
//! pending replica merges the new table by counter. A former wiped before
//! it completed forms the pending cluster again the same way, once it has
//! moved above its old counter. If another replica had completed formation
//! before the wipe, its messages say so and the blank directory becomes a
//! learner instead (the former forms only when no peer reports a complete
//! formation); if only the wiped former had, nobody promised it anything.
//!
//! Learners. A directory that starts blank in a formed cluster (wiped, or
//! replaced) must never count as the replica it replaces: it may have
//! forgotten promises and votes. It writes a durable learner mark first, then:
//! 1. *Join*: asks every replica for its incarnation table and picks a new
//!    incarnation counter one above the highest a majority of N full members
//!    record for its id (persisted before anyone hears of it). It merges the
//!    tables it hears (by counter, as storage replays them), here and in step
//!    2: its own table was wiped, and once promoted it must tell the next
//!    learner the counter to beat and must not take a wiped replica's old
//!    incarnation for a current one.
//! 2. *Register*: a majority of N full members other than itself durably record
//!    the new incarnation (from then on they ignore the old one, and a leader
//!    drops the old incarnation's votes on slots not yet chosen) and report
//!    their promised epochs, naming the incarnation they confirm; it adopts
//!    the highest epoch as its own promise. A member that records another
//!    incarnation of its id with the same or a higher counter (an earlier
//!    try that only a minority recorded) answers Superseded, naming it; the
//!    learner then picks a counter above it and registers again, in any
//!    phase while it is still a learner. A member sends the same notice for
//!    any message it drops as stale, so a replica promoted before the notice
//!    reached it moves to a higher counter too (as a full member).
//! 3. *Catch up*: the first heartbeat from a leader that finished recovery in an
//!    epoch at or above the adopted one names a last index L; once its commit
//!    index reaches L it holds every slot the old incarnation may have voted
//!    for, clears the mark and is a full member again. No operator step.
//!
//! Until then it does not vote, promise, take part in Bully, or count in reads.

use super::message::{Envelope, PeerMsg};
use super::types::{Epoch, Formation, Incarnation, LogIndex, Millis, ReplicaId};
use super::{quorum, Output, Persist, Replica, Role};
use rand::RngExt;
use std::collections::{BTreeMap, BTreeSet};

/// A learner's phase (see the module docs).
#[derive(Debug)]
pub(super) enum Learning {
    /// Collecting what full members record for our id.
    Asking { answers: BTreeMap<ReplicaId, Option<Incarnation>>, resend_at: Millis },
    /// Our new incarnation is durable; collecting registrations.
    Registering { answers: BTreeMap<ReplicaId, Epoch>, resend_at: Millis },
    /// Registered and promised `adopted`; catching up to `target` (the last
    /// index of the first heartbeat from a recovered leader of epoch >= adopted).
    CatchingUp { adopted: Epoch, target: Option<LogIndex> },
}

/// The highest id's progress while forming.
#[derive(Debug)]
pub(super) struct Forming {
    pub cluster_id: u64,
    pub acks: BTreeSet<ReplicaId>,
    pub sent_at: Millis,
}

impl Replica {
    /// True once this replica's formation is complete.
    pub fn is_formed(&self) -> bool {
        matches!(self.formation, Formation::Complete(_))
    }

    /// Formation timers: Hello while unformed; the highest id drives FORM.
    pub(super) fn tick_formation(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.is_formed() {
            return;
        }
        let resend_ms = (self.cfg.heartbeat_ms * 5).max(10);
        if now >= self.hello_at {
            self.hello_at = now.plus(resend_ms);
            self.send(self.others(), PeerMsg::Hello, out);
        }
        if self.cfg.id.0 as usize != self.cfg.n || self.learner {
            return;
        }
        if self.forming.is_some() {
            self.refresh_forming_table(now, out);
        }
        let others = self.others();
        match &mut self.forming {
            None => self.maybe_start_forming(now, out),
            Some(f) => {
                let all_acked = f.acks.len() + 1 == self.cfg.n;
                if all_acked {
                    let id = f.cluster_id;
                    self.complete_formation(now, id, out);
                    self.send(others, PeerMsg::Formed { cluster_id: id }, out);
                } else if now.since(f.sent_at) >= resend_ms {
                    f.sent_at = now;
                    let missing: Vec<ReplicaId> =
                        others.into_iter().filter(|id| !f.acks.contains(id)).collect();
                    let msg = PeerMsg::Form {
                        cluster_id: f.cluster_id,
                        incarnations: self.incarnations.clone(),
                    };
                    self.send(missing, msg, out);
                }
            }
        }
    }

    /// Highest id: when every peer is heard from and blank (or pending the same
    /// cluster id), pick the cluster id and send FORM.
    fn maybe_start_forming(&mut self, now: Millis, out: &mut Vec<Output>) {
        let mut pending: BTreeSet<u64> = BTreeSet::new();
        if let Formation::Pending(id) = self.formation {
            pending.insert(id);
        }
        for p in self.peers.values() {
            if p.heard.is_none() {
                return;
            }
            match p.formation {
                Formation::Blank => {}
                Formation::Pending(id) => {
                    pending.insert(id);
                }
                Formation::Complete(_) => return,
            }
        }
        if pending.len() > 1 {
            crate::qlog!("formation: replicas hold different pending cluster ids {pending:?}");
            return;
        }
        let cluster_id = pending.into_iter().next().unwrap_or_else(|| self.rng.random::<u64>() | 1);
        for (id, p) in &self.peers {
            self.incarnations.insert(*id, p.incarnation);
        }
        self.incarnations.insert(self.cfg.id, self.incarnation);
        out.push(Output::Persist(Persist::Incarnations(self.incarnations.clone())));
        self.formation = Formation::Pending(cluster_id);
        out.push(Output::Persist(Persist::Formation(self.formation)));
        crate::qlog!(
            "formation: all {} replicas blank; forming cluster {cluster_id:016x}",
            self.cfg.n
        );
        let msg = PeerMsg::Form { cluster_id, incarnations: self.incarnations.clone() };
        self.send(self.others(), msg, out);
        self.forming = Some(Forming { cluster_id, acks: BTreeSet::new(), sent_at: now });
    }

    /// The former: a peer heard with a higher counter than our table names
    /// moved above an incarnation that was wiped while the cluster formed.
    /// Every replica must record the new table before formation completes,
    /// so the round starts again.
    fn refresh_forming_table(&mut self, now: Millis, out: &mut Vec<Output>) {
        let newer: BTreeMap<ReplicaId, Incarnation> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.heard.is_some()
                    && self.incarnations.get(id).is_none_or(|k| p.incarnation.counter > k.counter)
            })
            .map(|(id, p)| (*id, p.incarnation))
            .collect();
        if newer.is_empty() {
            return;
        }
        self.merge_incarnations(&newer, out);
        crate::qlog!("formation: new incarnations {newer:?} while forming; asking everyone again");
        self.restart_forming_round(now, out);
    }

    /// The former sends FORM with its current table to every peer and
    /// counts acknowledgements afresh.
    fn restart_forming_round(&mut self, now: Millis, out: &mut Vec<Output>) {
        let Some(f) = &mut self.forming else { return };
        f.acks.clear();
        f.sent_at = now;
        let msg =
            PeerMsg::Form { cluster_id: f.cluster_id, incarnations: self.incarnations.clone() };
        self.send(self.others(), msg, out);
    }

    fn complete_formation(&mut self, now: Millis, cluster_id: u64, out: &mut Vec<Output>) {
        self.formation = Formation::Complete(cluster_id);
        self.forming = None;
        out.push(Output::Persist(Persist::Formation(self.formation)));
        crate::qlog!("formation: cluster {cluster_id:016x} formed");
        // Elect soon: everyone was waiting for formation, nobody leads yet.
        let jitter = self.rng.random_range(0..=self.cfg.heartbeat_ms.max(1));
        self.election_deadline = now.plus(jitter);
    }

    /// Every envelope: a pending replica completes on meeting a formed peer of
    /// its cluster.
    pub(super) fn observe_formation(&mut self, now: Millis, env: &Envelope, out: &mut Vec<Output>) {
        if let (Formation::Pending(mine), Formation::Complete(theirs)) =
            (self.formation, env.formation)
        {
            if mine == theirs {
                self.complete_formation(now, mine, out);
            }
        }
        if let (Formation::Blank, Formation::Complete(id)) = (self.formation, env.formation) {
            if !env.learner {
                self.become_learner(now, env.from, id, out);
            }
        }
    }

    /// A blank directory met a formed cluster: it is a wiped (or new) replica.
    fn become_learner(
        &mut self,
        now: Millis,
        from: ReplicaId,
        cluster_id: u64,
        out: &mut Vec<Output>,
    ) {
        crate::qlog!(
            "learner: data directory is blank but replica {from} belongs to formed cluster \
             {cluster_id:016x}; rejoining as a learner"
        );
        // The mark goes first: a learner that restarts half caught up stays one.
        self.learner = true;
        out.push(Output::Persist(Persist::Learner(true)));
        self.formation = Formation::Complete(cluster_id);
        out.push(Output::Persist(Persist::Formation(self.formation)));
        self.forming = None;
        self.role = Role::Follower;
        self.begin_learning(now);
    }

    /// Starts (or restarts) the learner protocol at its first phase.
    pub(super) fn begin_learning(&mut self, now: Millis) {
        self.learning = Some(Learning::Asking { answers: BTreeMap::new(), resend_at: now });
    }

    /// Learner timers: (re)send Join or Register until a majority answered.
    pub(super) fn tick_learning(&mut self, now: Millis, out: &mut Vec<Output>) {
        let resend_ms = (self.cfg.heartbeat_ms * 5).max(10);
        let msg = match &mut self.learning {
            Some(Learning::Asking { answers, resend_at }) if now >= *resend_at => {
                *resend_at = now.plus(resend_ms);
                let missing = self.peers.keys().filter(|id| !answers.contains_key(id));
                Some((missing.copied().collect::<Vec<_>>(), PeerMsg::Join))
            }
            Some(Learning::Registering { answers, resend_at }) if now >= *resend_at => {
                *resend_at = now.plus(resend_ms);
                let missing = self.peers.keys().filter(|id| !answers.contains_key(id));
                Some((missing.copied().collect::<Vec<_>>(), PeerMsg::Register))
            }
            _ => None,
        };
        if let Some((to, msg)) = msg {
            self.send(to, msg, out);
        }
    }

    /// A full member answers a learner's Join with its whole incarnation table.
    pub(super) fn on_join(&mut self, from: ReplicaId, out: &mut Vec<Output>) {
        if self.learner || !self.is_formed() {
            return;
        }
        let msg = PeerMsg::JoinInfo { incarnations: self.incarnations.clone() };
        self.send(vec![from], msg, out);
    }

    pub(super) fn on_join_info(
        &mut self,
        now: Millis,
        from: ReplicaId,
        from_learner: bool,
        incarnations: BTreeMap<ReplicaId, Incarnation>,
        out: &mut Vec<Output>,
    ) {
        let majority = quorum::majority(self.cfg.n);
        let Some(Learning::Asking { answers, .. }) = &mut self.learning else { return };
        if from_learner {
            return;
        }
        answers.insert(from, incarnations.get(&self.cfg.id).copied());
        let highest = answers.values().flatten().map(|i| i.counter).max().unwrap_or(0);
        let enough = answers.len() >= majority;
        // A member that was itself wiped knows only what it heard since: the
        // tables of a majority together hold every incarnation a majority
        // recorded, so a promoted learner can tell the next one the counter to beat.
        self.merge_incarnations(&incarnations, out);
        if enough {
            self.pick_incarnation(now, highest, out);
        }
    }

    /// Picks a new incarnation with a counter above `floor` (and above our
    /// current one), durably before anyone hears of it, and (re)starts
    /// registering it.
    fn pick_incarnation(&mut self, now: Millis, floor: u64, out: &mut Vec<Output>) {
        self.take_counter_above(floor, out);
        crate::qlog!("learner: new incarnation {}; registering it", self.incarnation);
        self.learning = Some(Learning::Registering { answers: BTreeMap::new(), resend_at: now });
        self.tick_learning(now, out);
    }

    /// Merges a peer's incarnation table into ours by the rule storage replays
    /// it with (`Durable::apply`: a higher counter replaces, nothing moves
    /// back) and persists the entries that changed. Our own entry is ours.
    fn merge_incarnations(
        &mut self,
        table: &BTreeMap<ReplicaId, Incarnation>,
        out: &mut Vec<Output>,
    ) {
        let mut changed = BTreeMap::new();
        for (id, inc) in table {
            if *id == self.cfg.id || !self.peers.contains_key(id) {
                continue;
            }
            if self.incarnations.get(id).is_none_or(|known| inc.counter > known.counter) {
                self.incarnations.insert(*id, *inc);
                changed.insert(*id, *inc);
            }
        }
        if !changed.is_empty() {
            out.push(Output::Persist(Persist::Incarnations(changed)));
        }
    }

    /// A full member records a learner's new incarnation durably, then answers
    /// with the incarnation it confirms, its promised epoch and its table (the
    /// executor syncs before it sends).
    pub(super) fn on_register(&mut self, from: ReplicaId, inc: Incarnation, out: &mut Vec<Output>) {
        if self.learner || !self.is_formed() {
            return;
        }
        match self.incarnations.get(&from).copied() {
            Some(known) if known == inc => {}
            Some(known) if inc.counter <= known.counter => {
                // Screened out as stale before it gets here; answered all the same.
                self.send(vec![from], PeerMsg::Superseded { recorded: known }, out);
                return;
            }
            _ => {
                self.incarnations.insert(from, inc);
                out.push(Output::Persist(Persist::Incarnations(BTreeMap::from([(from, inc)]))));
                crate::qlog!("recorded new incarnation {inc} of replica {from}");
                self.forget_votes_of(from);
            }
        }
        let msg = PeerMsg::Registered {
            incarnation: inc,
            promised: self.promise,
            incarnations: self.incarnations.clone(),
        };
        self.send(vec![from], msg, out);
    }

    /// A message from `from` was dropped because our table beats its
    /// incarnation: name the record (at most once per heartbeat interval), so
    /// that the replica, if it is the current directory of that id, picks a
    /// counter above it instead of talking to us in vain.
    pub(super) fn notice_superseded(
        &mut self,
        now: Millis,
        from: ReplicaId,
        out: &mut Vec<Output>,
    ) {
        // A blank directory records nobody; a pending one records the table
        // of the FORM it acknowledged.
        if self.learner {
            return;
        }
        let Some(recorded) = self.incarnations.get(&from).copied() else { return };
        let gap_ms = self.cfg.heartbeat_ms.max(1);
        if self.superseded_sent.get(&from).is_some_and(|at| now.since(*at) < gap_ms) {
            return;
        }
        self.superseded_sent.insert(from, now);
        self.send(vec![from], PeerMsg::Superseded { recorded }, out);
    }

    /// A full member records another incarnation of our id with our counter
    /// or a higher one, and drops our messages: an earlier directory's, or an
    /// earlier try of ours that only a minority recorded (a wipe can make a
    /// majority forget it). Pick a counter above it and register it. A
    /// learner does so in any phase after Join: it has voted for nothing. A
    /// full member keeps its state, which is the same directory's, so the
    /// new counter only costs the votes and promises of the old one, which
    /// leaders and winners discard; it stops leading or campaigning first,
    /// since its followers promised the old incarnation.
    pub(super) fn on_superseded(
        &mut self,
        now: Millis,
        from_learner: bool,
        recorded: Incarnation,
        out: &mut Vec<Output>,
    ) {
        let mine = self.incarnation;
        let beats = recorded.counter > mine.counter
            || (recorded.counter == mine.counter && recorded.nonce != mine.nonce);
        if from_learner || !beats {
            return;
        }
        if !self.is_formed() {
            // Wiped while the cluster formed: nothing was promised or voted
            // yet, so only the counter must move; the former asks everyone to
            // record it (a new round if we are the former).
            self.take_counter_above(recorded.counter, out);
            self.restart_forming_round(now, out);
            return;
        }
        if self.learner {
            let registering = matches!(
                self.learning,
                Some(Learning::Registering { .. } | Learning::CatchingUp { .. })
            );
            if registering {
                crate::qlog!(
                    "learner: incarnation {mine} superseded by a recorded {recorded}; picking a higher one"
                );
                self.pick_incarnation(now, recorded.counter, out);
            }
            return;
        }
        if !matches!(self.role, Role::Follower) {
            self.step_down(now, out);
        }
        self.take_counter_above(recorded.counter, out);
        crate::qlog!(
            "incarnation {mine} superseded by a recorded {recorded}; registering {}",
            self.incarnation
        );
        self.send(self.others(), PeerMsg::Register, out);
    }

    /// A new incarnation with a counter above `floor` and above ours, durable
    /// before anyone hears of it (the executor holds what reports it).
    fn take_counter_above(&mut self, floor: u64, out: &mut Vec<Output>) {
        let counter = floor.max(self.incarnation.counter) + 1;
        self.incarnation = Incarnation { counter, nonce: self.rng.random() };
        self.incarnations.insert(self.cfg.id, self.incarnation);
        out.push(Output::Persist(Persist::Incarnation(self.incarnation)));
    }

    /// A leader drops the votes a replica's old incarnation cast on slots not
    /// yet chosen; the ACCEPT re-sends reach the new incarnation.
    fn forget_votes_of(&mut self, id: ReplicaId) {
        if let Role::Leader(l) = &mut self.role {
            for tally in l.tallies.values_mut() {
                tally.voters.remove(&id);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_registered(
        &mut self,
        now: Millis,
        from: ReplicaId,
        from_learner: bool,
        confirmed: Incarnation,
        promised: Epoch,
        incarnations: BTreeMap<ReplicaId, Incarnation>,
        out: &mut Vec<Output>,
    ) {
        let majority = quorum::majority(self.cfg.n);
        let mine = self.incarnation;
        let Some(Learning::Registering { answers, .. }) = &mut self.learning else { return };
        // A late answer for an incarnation we have since replaced confirms nothing.
        if from_learner || confirmed != mine {
            return;
        }
        answers.insert(from, promised);
        let enough = answers.len() >= majority;
        let adopted = answers.values().copied().max().unwrap_or_default().max(self.promise);
        self.merge_incarnations(&incarnations, out);
        if !enough {
            return;
        }
        if adopted > self.promise {
            self.persist_promise(adopted, None, out);
        }
        crate::qlog!("learner: registered with a majority; adopted epoch {adopted}; catching up");
        self.learning = Some(Learning::CatchingUp { adopted, target: None });
        let _ = now;
    }

    /// A learner hears a heartbeat: pick the catch-up target from the first
    /// recovered leader of a high enough epoch, fetch, and promote when there.
    pub(super) fn learner_heartbeat(
        &mut self,
        now: Millis,
        from: ReplicaId,
        epoch: Epoch,
        progress: Option<(LogIndex, LogIndex)>,
        out: &mut Vec<Output>,
    ) {
        self.leader = Some((from, epoch));
        self.reset_election_deadline(now);
        let Some((commit, last)) = progress else { return };
        if let Some(Learning::CatchingUp { adopted, target }) = &mut self.learning {
            if epoch >= *adopted && target.is_none() {
                *target = Some(last);
                crate::qlog!("learner: catching up to index {last} (leader {from}, epoch {epoch})");
            }
        }
        self.learn_commit(now, from, epoch, commit, out);
        self.maybe_promote(out);
    }

    /// Clears the learner mark once the catch-up target is reached.
    pub(super) fn maybe_promote(&mut self, out: &mut Vec<Output>) {
        let Some(Learning::CatchingUp { target: Some(target), .. }) = &self.learning else {
            return;
        };
        if self.commit < *target {
            return;
        }
        crate::qlog!("learner: caught up to {target}; full member again");
        self.learning = None;
        self.learner = false;
        out.push(Output::Persist(Persist::Learner(false)));
    }

    /// The learner phase for STATUS.
    pub(super) fn learning_phase(&self) -> Option<String> {
        Some(match self.learning.as_ref()? {
            Learning::Asking { answers, .. } => format!("join:{}", answers.len()),
            Learning::Registering { answers, .. } => format!("register:{}", answers.len()),
            Learning::CatchingUp { target: None, .. } => "catchup:waiting-for-leader".into(),
            Learning::CatchingUp { target: Some(t), .. } => format!("catchup:{}/{t}", self.commit),
        })
    }

    /// FORM, FORM-ACK and FORMED.
    pub(super) fn on_formation_msg(
        &mut self,
        now: Millis,
        from: ReplicaId,
        msg: PeerMsg,
        out: &mut Vec<Output>,
    ) {
        match msg {
            PeerMsg::Form { cluster_id, incarnations } => {
                if from.0 as usize != self.cfg.n {
                    return;
                }
                match self.formation {
                    Formation::Complete(_) => return,
                    Formation::Pending(id) if id != cluster_id => {
                        crate::qlog!("formation: FORM for {cluster_id:016x} but pending {id:016x}");
                        return;
                    }
                    _ => {}
                }
                if self.formation == Formation::Pending(cluster_id) {
                    // A later round: the former heard of incarnations that
                    // moved above wiped ones; counters only move forward.
                    self.merge_incarnations(&incarnations, out);
                } else {
                    // The former names another incarnation of our id: this
                    // directory was wiped after it heard of the old one. Move
                    // above it, so that nobody takes one for the other.
                    if let Some(named) = incarnations.get(&self.cfg.id) {
                        if *named != self.incarnation && named.counter >= self.incarnation.counter {
                            self.take_counter_above(named.counter, out);
                        }
                    }
                    self.incarnations = incarnations;
                    self.incarnations.insert(self.cfg.id, self.incarnation);
                    out.push(Output::Persist(Persist::Incarnations(self.incarnations.clone())));
                    self.formation = Formation::Pending(cluster_id);
                    out.push(Output::Persist(Persist::Formation(self.formation)));
                }
                self.send(vec![from], PeerMsg::FormAck { cluster_id }, out);
            }
            PeerMsg::FormAck { cluster_id } => {
                // Only an ack from the incarnation our table names counts: a
                // newer one makes the table change and the round start again.
                let current = self.peers.get(&from).map(|p| p.incarnation)
                    == self.incarnations.get(&from).copied();
                if let Some(f) = &mut self.forming {
                    if f.cluster_id == cluster_id && current {
                        f.acks.insert(from);
                    }
                }
                self.tick_formation(now, out);
            }
            PeerMsg::Formed { cluster_id } if self.formation == Formation::Pending(cluster_id) => {
                self.complete_formation(now, cluster_id, out);
            }
            _ => {}
        }
    }

    /// Why a client request cannot be served yet.
    pub(super) fn formation_wait_detail(&self) -> String {
        if self.learner {
            return "this replica is rejoining as a learner".into();
        }
        let heard: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.heard.is_some())
            .map(|(id, _)| id.to_string())
            .collect();
        format!(
            "cluster not formed yet: waiting for all {} replicas (heard from {})",
            self.cfg.n,
            if heard.is_empty() { "none".into() } else { heard.join(",") }
        )
    }
}
