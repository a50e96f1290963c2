//! A simulated disk (DESIGN §7): `persist` writes into an un-synced buffer,
//! `sync` makes it durable, and a crash loses whatever was not synced (a torn
//! crash keeps a prefix of it, as a half-written WAL tail would). Restart
//! rebuilds [`Durable`] by replaying the durable ops through `Durable::apply`,
//! the same path the server's WAL replay takes.

use crate::protocol::durable::{Durable, Persist};
use crate::storage::{self, Storage};
use std::path::PathBuf;

/// One replica's data directory.
#[derive(Debug, Default)]
pub struct SimDisk {
    /// Ops that survive any crash, in write order.
    durable: Vec<Persist>,
    /// Ops written since the last sync.
    unsynced: Vec<Persist>,
    /// Set to fail the next sync (a power cut during fsync): the executor then
    /// stops before any send, and the simulator crashes the replica.
    pub fail_next_sync: bool,
    /// Syncs done, for statistics.
    pub syncs: u64,
}

impl Storage for SimDisk {
    fn persist(&mut self, op: &Persist) -> storage::Result<()> {
        self.unsynced.push(op.clone());
        Ok(())
    }

    fn sync(&mut self) -> storage::Result<()> {
        if self.fail_next_sync {
            self.fail_next_sync = false;
            return Err(storage::Error::Io {
                path: PathBuf::from("sim-disk"),
                op: "fsync",
                source: std::io::Error::other("simulated power cut"),
            });
        }
        self.syncs += 1;
        self.durable.append(&mut self.unsynced);
        Ok(())
    }
}

impl SimDisk {
    /// A disk whose durable state starts as `ops` (a pre-formed directory).
    pub fn with_ops(ops: Vec<Persist>) -> SimDisk {
        SimDisk { durable: ops, ..SimDisk::default() }
    }

    /// Ops written but not yet synced.
    pub fn unsynced_len(&self) -> usize {
        self.unsynced.len()
    }

    /// Power cut: the first `keep` un-synced ops reach the platter (a torn
    /// tail), the rest are lost.
    pub fn crash(&mut self, keep: usize) {
        let keep = keep.min(self.unsynced.len());
        let kept: Vec<Persist> = self.unsynced.drain(..keep).collect();
        self.durable.extend(kept);
        self.unsynced.clear();
        self.fail_next_sync = false;
    }

    /// Loses everything: a wiped data directory. Only a learner may rejoin
    /// from one (DESIGN §6), so the seed runner keeps wipes switched off
    /// until learners exist.
    pub fn wipe(&mut self) {
        self.durable.clear();
        self.unsynced.clear();
        self.fail_next_sync = false;
    }

    /// What a restart recovers: the durable ops replayed in order.
    pub fn recover(&self) -> Durable {
        let mut d = Durable::default();
        for op in &self.durable {
            d.apply(op);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{Epoch, LogIndex};

    fn promise(e: u64) -> Persist {
        Persist::Promise { epoch: Epoch(e), leader: None }
    }

    #[test]
    fn a_crash_loses_unsynced_ops_and_a_torn_crash_keeps_a_prefix() {
        let mut disk = SimDisk::default();
        disk.persist(&promise(1)).unwrap();
        disk.sync().unwrap();
        disk.persist(&promise(2)).unwrap();
        disk.persist(&Persist::Commit(LogIndex(4))).unwrap();
        disk.crash(0);
        assert_eq!(disk.recover().promise, Epoch(1));
        disk.persist(&promise(5)).unwrap();
        disk.persist(&promise(7)).unwrap();
        disk.crash(1);
        assert_eq!(disk.recover().promise, Epoch(5), "torn: the first op survived");
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let mut disk = SimDisk::default();
        disk.persist(&promise(3)).unwrap();
        disk.fail_next_sync = true;
        assert!(disk.sync().is_err());
        disk.crash(0);
        assert_eq!(disk.recover(), Durable::default());
        disk.persist(&promise(3)).unwrap();
        disk.sync().unwrap();
        disk.wipe();
        assert_eq!(disk.recover(), Durable::default());
    }
}
