//! Read-only views of a replica's state, for the simulator's checkers, golden
//! scripts and STATUS-like summaries (DESIGN §7). Nothing here changes state,
//! so a checker can call any of it after any step without disturbing the run.

use super::types::{Entry, EntryId, Epoch, Formation, Incarnation, LogIndex, ReplicaId};
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

    /// The leader a follower follows, with its epoch (None while it knows none).
    pub fn followed_leader(&self) -> Option<(ReplicaId, Epoch)> {
        self.leader
    }

    /// The highest epoch seen in any message.
    pub fn known_epoch(&self) -> Epoch {
        self.known_epoch
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

    /// Slots above the commit index known to be chosen, with the chosen entry id.
    pub fn known_chosen(&self) -> &BTreeMap<LogIndex, EntryId> {
        &self.chosen
    }

    /// The index of the snapshot the log builds on (0 = none): slots at or
    /// below it are applied but no longer held.
    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    /// This data directory's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The formation state.
    pub fn formation(&self) -> Formation {
        self.formation
    }

    /// Client requests this replica still owes an answer: writes waiting for a
    /// leader, forwards, quorum reads, and a leader's proposed, queued and
    /// read-index requests (remote ones included).
    pub fn pending_requests(&self) -> usize {
        let mut n = self.awaiting_leader.len() + self.forwards.len() + self.reads.len();
        if let Role::Leader(l) = &self.role {
            n += l.waiters.len() + l.queued.len() + l.read_index.len();
        }
        n
    }
}
