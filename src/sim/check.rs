//! The cheap invariants (DESIGN §3.2, §7), checked after every step:
//!
//! - at most one leader per epoch (one replica, in one process life);
//! - a chosen slot never changes its entry id: the first entry id committed at
//!   each index, by any replica, in any life, is the only one ever committed
//!   there, held at or below a commit index, or written over a committed slot;
//! - so every replica applies a prefix of the same sequence of entry ids;
//! - a replica's commit index never goes down while it is up, and it applies
//!   everything it commits in the same step.

use crate::protocol::durable::Persist;
use crate::protocol::types::{EntryId, Epoch, LogIndex, ReplicaId};
use crate::protocol::Replica;
use std::collections::BTreeMap;

/// The invariant state of one run.
#[derive(Debug, Default)]
pub struct Checker {
    /// The first committed entry id of every slot, and who committed it first.
    chosen: BTreeMap<LogIndex, (EntryId, ReplicaId)>,
    /// Every epoch that had a leader: (replica, life).
    leaders: BTreeMap<Epoch, (ReplicaId, u32)>,
    /// Per replica: its commit index as of the last check (None while down).
    commit: BTreeMap<ReplicaId, LogIndex>,
}

impl Checker {
    /// The slots committed so far, with their entry ids.
    pub fn chosen(&self) -> impl Iterator<Item = (LogIndex, EntryId)> + '_ {
        self.chosen.iter().map(|(i, (id, _))| (*i, *id))
    }

    /// The leader each epoch had, in epoch order.
    pub fn leaders(&self) -> &BTreeMap<Epoch, (ReplicaId, u32)> {
        &self.leaders
    }

    /// A replica crashed: its commit index may restart lower.
    pub fn on_crash(&mut self, id: ReplicaId) {
        self.commit.remove(&id);
    }

    /// Persist ops a step emitted, checked before they reach the disk: nothing
    /// may overwrite or drop a slot at or below a commit index with another entry.
    pub fn check_persists(
        &self,
        r: &Replica,
        commit_before: LogIndex,
        ops: &[&Persist],
    ) -> Result<(), String> {
        let id = r.id();
        for op in ops {
            match op {
                Persist::Accept(list) => {
                    for (index, entry) in list {
                        if let Some((chosen, who)) = self.chosen.get(index) {
                            if *chosen != entry.id && *index <= r.commit_index() {
                                return Err(format!(
                                    "chosen slot changed: r{id} wrote entry {} at slot {index}, \
                                     committed as {chosen} (first by r{who})",
                                    entry.id
                                ));
                            }
                        }
                    }
                }
                Persist::Drop(list) => {
                    if let Some(index) = list.iter().find(|i| **i <= commit_before) {
                        return Err(format!(
                            "r{id} dropped slot {index} at or below its commit index {commit_before}"
                        ));
                    }
                }
                _ => {}
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
        if r.applied_index() != commit {
            return Err(format!(
                "r{id} applied {} but committed {commit} after a step",
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
        Ok(())
    }

    /// Every slot in `(from, to]` of `r`'s log must hold the chosen entry id.
    fn record_committed(
        &mut self,
        r: &Replica,
        from: LogIndex,
        to: LogIndex,
    ) -> Result<(), String> {
        let id = r.id();
        let mut index = from.next();
        while index <= to {
            let Some(entry) = r.log().get(&index) else {
                return Err(format!("r{id} committed slot {index} but holds no entry there"));
            };
            let (chosen, who) = *self.chosen.entry(index).or_insert((entry.id, id));
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
