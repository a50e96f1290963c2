//! The storage boundary (DESIGN §3.1, §6): what a replica must keep across a
//! crash, and the [`Persist`] operations that change it.
//!
//! The protocol emits `Output::Persist(op)`; the output executor hands the op to
//! a `Storage` (a WAL on disk in the server, a simulated disk in tests) and makes
//! it durable before any later send or reply. On start-up, storage replays the
//! ops it kept through [`Durable::apply`], so the disk format never needs to know
//! what the ops mean.

use super::store::Store;
use super::types::{Entry, Epoch, Formation, Incarnation, LogIndex, ReplicaId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One change to durable state. Ops are replayed in the order they were written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persist {
    /// This directory's incarnation, written before it is reported to anyone.
    Incarnation(Incarnation),
    /// The promised epoch, and the incarnation of the leader it was promised to
    /// (None when raised by an epoch number alone).
    Promise { epoch: Epoch, leader: Option<Incarnation> },
    /// Accepted entries, each replacing whatever the slot held.
    Accept(Vec<(LogIndex, Entry)>),
    /// Slots whose entries are dropped (older ballots above a recovered leader's log).
    Drop(Vec<LogIndex>),
    /// The commit index. Need not be synced: recovery rebuilds it.
    Commit(LogIndex),
    /// The incarnation table (entries only move forward).
    Incarnations(BTreeMap<ReplicaId, Incarnation>),
    /// The formation state.
    Formation(Formation),
    /// The learner mark (DESIGN §6).
    Learner(bool),
    /// The whole durable state after a snapshot at `snapshot_index` was saved:
    /// storage starts a new log segment with it and removes older segments
    /// and snapshots (the log prefix behind the snapshot is gone).
    Checkpoint(Box<Checkpoint>),
}

/// Everything but the snapshot itself, as of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The saved snapshot this checkpoint builds on (0 = none).
    pub snapshot_index: LogIndex,
    pub incarnation: Option<Incarnation>,
    pub promise: Epoch,
    pub promise_leader: Option<Incarnation>,
    pub incarnations: BTreeMap<ReplicaId, Incarnation>,
    pub formation: Formation,
    pub learner: bool,
    /// Accepted entries above `snapshot_index`.
    pub log: Vec<(LogIndex, Entry)>,
    pub commit: LogIndex,
}

/// The applied store at `index`: committed state only, so it never changes
/// and any replica whose commit index is lower may install it (DESIGN §6).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every slot up to here is applied in `store`.
    pub index: LogIndex,
    /// key -> (version, value); a deleted key is simply absent. Shares its
    /// records (and every chunk not written since) with the live store.
    pub store: Store,
}

impl Persist {
    /// True when a send or reply that follows this op must wait for an fsync.
    /// Only the commit index may lag (DESIGN §4: recovery rebuilds it).
    pub fn needs_sync(&self) -> bool {
        !matches!(self, Persist::Commit(_))
    }
}

/// Everything a replica keeps across a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// None for a directory that has never picked one.
    pub incarnation: Option<Incarnation>,
    /// The promised epoch: nothing below it is accepted or promised.
    pub promise: Epoch,
    /// Incarnation of the leader `promise` was made to, when known.
    pub promise_leader: Option<Incarnation>,
    /// Highest known incarnation of every replica.
    pub incarnations: BTreeMap<ReplicaId, Incarnation>,
    /// Formation state.
    pub formation: Formation,
    /// True while this directory is a learner.
    pub learner: bool,
    /// Accepted entries by slot.
    pub log: BTreeMap<LogIndex, Entry>,
    /// The last commit index written (may lag the truth after a crash).
    pub commit: LogIndex,
    /// The snapshot the log builds on (entries at or below its index are gone).
    /// Storage loads it from its own file; `apply` only records the index.
    pub snapshot: Option<Snapshot>,
    /// Index of the snapshot named by the last checkpoint (0 = none).
    pub snapshot_index: LogIndex,
}

impl Durable {
    /// Replays one op.
    pub fn apply(&mut self, op: &Persist) {
        match op {
            Persist::Incarnation(inc) => self.incarnation = Some(*inc),
            Persist::Promise { epoch, leader } => {
                self.promise = *epoch;
                self.promise_leader = *leader;
            }
            Persist::Accept(entries) => {
                for (index, entry) in entries {
                    self.log.insert(*index, entry.clone());
                }
            }
            Persist::Drop(indexes) => {
                for index in indexes {
                    self.log.remove(index);
                }
            }
            Persist::Commit(index) => self.commit = self.commit.max(*index),
            Persist::Incarnations(table) => {
                for (id, inc) in table {
                    let slot = self.incarnations.entry(*id).or_insert(*inc);
                    if inc.counter > slot.counter {
                        *slot = *inc;
                    }
                }
            }
            Persist::Formation(f) => self.formation = *f,
            Persist::Learner(l) => self.learner = *l,
            Persist::Checkpoint(c) => {
                self.snapshot_index = c.snapshot_index;
                self.incarnation = c.incarnation;
                self.promise = c.promise;
                self.promise_leader = c.promise_leader;
                self.incarnations = c.incarnations.clone();
                self.formation = c.formation;
                self.learner = c.learner;
                self.log = c.log.iter().cloned().collect();
                self.commit = c.commit;
            }
        }
    }
}
