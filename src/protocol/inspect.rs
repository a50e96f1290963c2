//! Read-only views of a replica's state, for the simulator's checkers, golden
//! scripts and STATUS-like summaries (DESIGN §7). Nothing here changes state,
//! so a checker can call any of it after any step without disturbing the run.

use super::types::{Entry, Epoch, Incarnation, LogIndex, ReplicaId};
use super::{Campaign, Replica, Role};
use std::collections::BTreeMap;

impl Replica {
    /// The epoch this replica leads, when its role is leader (recovering or serving).
    pub fn leading_epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Leader(l) => Some(l.epoch),
            _ => None,
        }
    }

    /// True while a leader is still recovering the log (not serving yet).
    pub fn is_recovering(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if !l.is_serving(self.commit))
    }

    /// The phase of a running campaign: `bully`, `await-coordinator` or
    /// `promises`; None when not a candidate.
    pub fn campaign_phase(&self) -> Option<&'static str> {
        match &self.role {
            Role::Candidate(Campaign::Bully { .. }) => Some("bully"),
            Role::Candidate(Campaign::AwaitCoordinator { .. }) => Some("await-coordinator"),
            Role::Candidate(Campaign::Promises { .. }) => Some("promises"),
            _ => None,
        }
    }

    /// The applied index: slots up to it are in the store.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The highest slot holding anything (at least the commit index).
    pub fn last_log_index(&self) -> LogIndex {
        self.last_index()
    }

    /// Every accepted entry this replica holds, by slot.
    pub fn log(&self) -> &BTreeMap<LogIndex, Entry> {
        &self.log
    }

    /// This directory's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The incarnation this replica records for every replica (its own included).
    pub fn incarnations(&self) -> &BTreeMap<ReplicaId, Incarnation> {
        &self.incarnations
    }

    /// The index of the snapshot the log builds on (0 = none): slots at or
    /// below it are applied but no longer held.
    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }
}
