//! The cheap invariants (DESIGN §3.2, §7), checked after every step:
//!
//! - at most one leader per epoch (one replica, in one process life);
//! - a chosen slot never changes its entry id: the first entry id committed at
//!   each index, by any replica, in any life, is the only one ever committed
//!   there, held at or below a commit index, or written over a committed slot;
//! - a chosen slot is proposed in no later ballot with another entry: once
//!   a slot is seen committed, no replica stores another entry there with a
//!   ballot at or above the highest epoch that had a leader by then (the
//!   slot was chosen in some ballot at or below it, and Paxos makes every
//!   later proposal carry the chosen entry). This catches a leader whose
//!   recovery missed a chosen entry the moment it proposes over it, before
//!   any replica could commit its entry (followers that committed the
//!   chosen one refuse it, so nothing else would show);
//! - so every replica applies a prefix of the same sequence of entry ids;
//! - a replica's commit index never goes down while it is up, and it applies
//!   everything it commits in the same step;
//! - a replica that installs a snapshot (or restarts from one) holds exactly
//!   the store the chosen commands give at that index;
//! - no replica holds an entry above its commit index, other than a chosen
//!   one it fetched, whose ballot is above its promise: an ACCEPT raises the
//!   promise to its epoch before the entry is stored (DESIGN §4.2), so a
//!   replica never holds an accepted entry from an epoch it has not promised.
//!
//! Slots at or below a replica's snapshot index are no longer in its log;
//! the snapshot check covers them.

use crate::protocol::durable::Persist;
use crate::protocol::message::PeerMsg;
use crate::protocol::types::{Command, EntryId, Epoch, LogIndex, ReplicaId};
use crate::protocol::Output;
use crate::protocol::Replica;
use std::collections::BTreeMap;

/// key -> (version, value), as a replica's store holds it.
pub type Store = BTreeMap<String, (u64, Vec<u8>)>;

/// The invariant state of one run.
#[derive(Debug, Default)]
pub struct Checker {
    /// The first committed entry id of every slot, who committed it first,
    /// and its command.
    chosen: BTreeMap<LogIndex, (EntryId, ReplicaId, Command)>,
    /// Per chosen slot: the highest epoch that had a leader when it was first
    /// seen committed, a bound on the ballot it was chosen in.
    chosen_by: BTreeMap<LogIndex, Epoch>,
    /// The store the chosen commands give up to `reference_at`.
    reference: Store,
    reference_at: LogIndex,
    /// Per replica: the snapshot index last checked.
    snapshot: BTreeMap<ReplicaId, LogIndex>,
    /// Every epoch that had a leader: (replica, life).
    leaders: BTreeMap<Epoch, (ReplicaId, u32)>,
    /// Per replica: its commit index as of the last check (None while down).
    commit: BTreeMap<ReplicaId, LogIndex>,
}

impl Checker {
    /// The chosen command of every slot up to `to`; Err if one was never seen.
    pub fn chosen_commands(&self, to: LogIndex) -> Result<BTreeMap<LogIndex, Command>, String> {
        let mut log = BTreeMap::new();
        let mut index = LogIndex(1);
        while index <= to {
            let Some((_, _, command)) = self.chosen.get(&index) else {
                return Err(format!("slot {index} is committed but nobody was seen committing it"));
            };
            log.insert(index, command.clone());
            index = index.next();
        }
        Ok(log)
    }

    /// The leader each epoch had, in epoch order.
    pub fn leaders(&self) -> &BTreeMap<Epoch, (ReplicaId, u32)> {
        &self.leaders
    }

    /// A replica crashed: its commit index may restart lower.
    pub fn on_crash(&mut self, id: ReplicaId) {
        self.commit.remove(&id);
        self.snapshot.remove(&id);
    }

    /// Persist ops a step emitted, checked before they reach the disk: nothing
    /// may overwrite or drop a slot committed before the step with another
    /// entry, and a slot the step commits must be left holding the chosen one.
    pub fn check_persists(
        &self,
        r: &Replica,
        commit_before: LogIndex,
        ops: &[&Persist],
    ) -> Result<(), String> {
        let id = r.id();
        // The entry each slot is left holding by this step: a step may store
        // an ACCEPT's entry and then, learning the slot is committed (a
        // catch-up answer in the same batch), the chosen one over it. The
        // ops reach the disk in order, so a crash keeps a prefix of them, and
        // the commit index is persisted after the entries it covers.
        let mut last_written: BTreeMap<LogIndex, EntryId> = BTreeMap::new();
        let changed = |index: &LogIndex, written: EntryId| {
            let (chosen, who, _) = self.chosen.get(index)?;
            (*chosen != written).then(|| {
                format!(
                    "chosen slot changed: r{id} wrote entry {written} at slot {index}, \
                     committed as {chosen} (first by r{who})"
                )
            })
        };
        for op in ops {
            match op {
                Persist::Accept(list) => {
                    for (index, entry) in list {
                        // Committed before this step: never written over.
                        if *index <= commit_before {
                            if let Some(violation) = changed(index, entry.id) {
                                return Err(violation);
                            }
                        }
                        // Chosen anywhere: never proposed over in a ballot
                        // at or above the epochs known when it was chosen.
                        if let Some((chosen, who, _)) = self.chosen.get(index) {
                            let bound = self.chosen_by.get(index).copied().unwrap_or(Epoch(0));
                            if *chosen != entry.id && entry.ballot >= bound {
                                return Err(format!(
                                    "chosen slot proposed over: r{id} stored entry {} at slot \
                                     {index} in ballot {}, but the slot was chosen as {chosen} \
                                     (first committed by r{who}) in a ballot at or below {bound}",
                                    entry.id, entry.ballot
                                ));
                            }
                        }
                        last_written.insert(*index, entry.id);
                    }
                }
                Persist::Drop(list) => {
                    // Compaction under a snapshot is the one way a committed slot goes.
                    let snapshot = r.snapshot_index();
                    if let Some(index) =
                        list.iter().find(|i| **i <= commit_before && **i > snapshot)
                    {
                        return Err(format!(
                            "r{id} dropped slot {index} at or below its commit index {commit_before}"
                        ));
                    }
                }
                _ => {}
            }
        }
        // Committed by this step: what the slot is left holding is the chosen entry.
        for (index, written) in last_written.range(..=r.commit_index()) {
            if let Some(violation) = changed(index, *written) {
                return Err(violation);
            }
        }
        Ok(())
    }

    /// Messages a step sends: a learner never votes or promises (DESIGN §6:
    /// a wiped directory counts for nothing until it is promoted), whatever a
    /// receiver would make of it.
    pub fn check_sends(&self, r: &Replica, out: &[Output]) -> Result<(), String> {
        for o in out {
            if let Output::Send { env, .. } = o {
                let counted = matches!(env.msg, PeerMsg::Vote { .. } | PeerMsg::Promise { .. });
                if env.learner && counted {
                    return Err(format!(
                        "learner r{} sent a {} (learners never vote or promise)",
                        r.id(),
                        env.msg.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// After a step of `r` (in process life `life`).
    pub fn after_step(&mut self, r: &Replica, life: u32) -> Result<(), String> {
        let id = r.id();
        if let Some(epoch) = r.leading_epoch() {
            let me = (id, life);
            let held = *self.leaders.entry(epoch).or_insert(me);
            if held != me {
                return Err(format!(
                    "two leaders in epoch {epoch}: r{} (life {}) and r{id} (life {life})",
                    held.0, held.1
                ));
            }
        }
        let commit = r.commit_index();
        if r.applied_index() > commit {
            return Err(format!(
                "r{id} applied {} but committed only {commit} after a step",
                r.applied_index()
            ));
        }
        let from = match self.commit.get(&id) {
            Some(prev) if commit < *prev => {
                return Err(format!("r{id} commit index went down: {prev} -> {commit}"));
            }
            Some(prev) => *prev,
            None => LogIndex(0),
        };
        self.record_committed(r, from, commit)?;
        self.commit.insert(id, commit);
        self.check_accepted_under_promise(r)?;
        let snap = r.snapshot_index();
        if self.snapshot.get(&id) != Some(&snap) {
            self.snapshot.insert(id, snap);
            if snap > LogIndex(0) {
                self.check_store(r)?;
            }
        }
        Ok(())
    }

    /// Every entry `r` holds above its commit index has a ballot at or below
    /// its promise, unless it is the slot's chosen entry (catch-up and
    /// recovery install chosen entries without promising anything; a torn
    /// crash may then keep them and lose the commit index that covered them).
    fn check_accepted_under_promise(&self, r: &Replica) -> Result<(), String> {
        let promise = r.epoch();
        for (index, entry) in r.log().range(r.commit_index().next()..) {
            if entry.ballot <= promise {
                continue;
            }
            if self.chosen.get(index).is_some_and(|(chosen, _, _)| *chosen == entry.id) {
                continue;
            }
            return Err(format!(
                "r{} holds entry {} at slot {index} with ballot {}, above its promise {promise}, \
                 not committed",
                r.id(),
                entry.id,
                entry.ballot
            ));
        }
        Ok(())
    }

    /// `r`'s store must be what the chosen commands give at its applied index.
    pub fn check_store(&mut self, r: &Replica) -> Result<(), String> {
        let at = r.applied_index();
        let expected = self.reference_store(at)?;
        let held = r.store().to_map();
        if &held == expected {
            return Ok(());
        }
        let diffs =
            store_diffs(&held, expected, |k, h, e| format!("{k}: holds {h:?}, expected {e:?}"));
        Err(format!("r{}'s store at applied index {at} is wrong: {}", r.id(), diffs.join("; ")))
    }

    /// The store the chosen commands give after slot `at`.
    fn reference_store(&mut self, at: LogIndex) -> Result<&Store, String> {
        if at < self.reference_at {
            self.reference.clear();
            self.reference_at = LogIndex(0);
        }
        while self.reference_at < at {
            let index = self.reference_at.next();
            let Some((_, _, command)) = self.chosen.get(&index) else {
                return Err(format!(
                    "a store covers slot {index}, which nobody was seen committing"
                ));
            };
            apply(&mut self.reference, index, command);
            self.reference_at = index;
        }
        Ok(&self.reference)
    }

    /// Every slot in `(from, to]` of `r`'s log must hold the chosen entry id.
    fn record_committed(
        &mut self,
        r: &Replica,
        from: LogIndex,
        to: LogIndex,
    ) -> Result<(), String> {
        let id = r.id();
        // Slots a snapshot covers are no longer held; the store check covers them.
        let mut index = from.max(r.snapshot_index()).next();
        while index <= to {
            let Some(entry) = r.log().get(&index) else {
                return Err(format!("r{id} committed slot {index} but holds no entry there"));
            };
            if !self.chosen.contains_key(&index) {
                let bound = self.leaders.keys().next_back().copied().unwrap_or(Epoch(0));
                self.chosen_by.insert(index, bound);
            }
            let (chosen, who, _) =
                self.chosen.entry(index).or_insert_with(|| (entry.id, id, entry.command.clone()));
            let (chosen, who) = (*chosen, *who);
            if chosen != entry.id {
                return Err(format!(
                    "chosen slot changed: r{id} committed {} at slot {index}, \
                     first committed as {chosen} by r{who}",
                    entry.id
                ));
            }
            index = index.next();
        }
        Ok(())
    }

    /// A full pass over `r`'s committed log (after a restart and now and then).
    pub fn full_check(&mut self, r: &Replica) -> Result<(), String> {
        self.record_committed(r, LogIndex(0), r.commit_index())
    }
}

/// Applies one command as every replica does (DESIGN §4: CAS is decided at
/// apply time by the same rule everywhere).
/// One line per key on which `a` and `b` differ, in key order, made by `line`
/// from the key and each side's (version, value).
pub fn store_diffs(
    a: &Store,
    b: &Store,
    line: impl Fn(&str, Option<&(u64, Vec<u8>)>, Option<&(u64, Vec<u8>)>) -> String,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| line(k, a.get(k), b.get(k)))
        .collect()
}

fn apply(store: &mut Store, index: LogIndex, command: &Command) {
    match command {
        Command::Noop => {}
        Command::Put(kv) => {
            store.insert(kv.key().to_string(), (index.0, kv.value().to_vec()));
        }
        Command::Del { key } => {
            store.remove(key);
        }
        Command::Cas { expected, kv } => {
            let current = store.get(kv.key()).map(|(v, _)| *v).unwrap_or(0);
            if current == *expected {
                store.insert(kv.key().to_string(), (index.0, kv.value().to_vec()));
            }
        }
    }
}
