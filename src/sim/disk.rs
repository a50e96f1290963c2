//! A simulated disk (DESIGN §6, §7): `persist` writes into an un-synced
//! buffer and a sync makes it durable, at once or after a simulated fsync
//! latency (as the server's disk thread reports finished syncs later). A crash
//! loses whatever was not synced (a torn crash keeps a prefix of it, as a
//! half-written WAL tail would) and any snapshot still being saved.
//!
//! Restart rebuilds [`Durable`] by replaying the durable ops through
//! `Durable::apply`, the path the server's WAL replay takes, and loads the
//! snapshot the last checkpoint names, as storage does.

use crate::protocol::durable::{Durable, Persist, Snapshot};
use crate::protocol::types::{LogIndex, Millis};
use crate::storage::{self, Storage};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

/// One replica's data directory.
#[derive(Debug)]
pub struct SimDisk {
    /// Ops that survive any crash, in write order (from the last checkpoint on).
    durable: Vec<Persist>,
    /// Ops written and not yet durable.
    unsynced: Vec<Persist>,
    /// Ops ever made durable or dropped by a crash (a position in the op stream).
    synced_upto: u64,
    /// Syncs begun and not finished: (ticket, op position it covers, done at).
    syncing: VecDeque<(u64, u64, Millis)>,
    /// Syncs begun in this process life (the executor's tickets).
    tickets: u64,
    /// Durable snapshot files, by index.
    snapshots: BTreeMap<LogIndex, Arc<Snapshot>>,
    /// Snapshots being saved, in order, each with when its save is done.
    saving: VecDeque<(Arc<Snapshot>, Millis)>,
    /// Saves finished and not yet reported.
    saved: VecDeque<LogIndex>,
    /// Simulated time, set by the cluster before each use.
    pub now: Millis,
    /// fsync latency range (inclusive); 0..=0 makes every sync immediate.
    pub fsync_ms: (u64, u64),
    /// Time to write a snapshot file.
    pub snapshot_ms: u64,
    rng: StdRng,
    /// Set to fail the next sync (a power cut during fsync): the executor then
    /// stops before anything after it is sent, and the simulator crashes the replica.
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
        self.check_power()?;
        let target = self.synced_upto + self.unsynced.len() as u64;
        self.make_durable(target);
        self.syncing.clear();
        Ok(())
    }

    fn begin_sync(&mut self) -> storage::Result<bool> {
        self.check_power()?;
        self.tickets += 1;
        let target = self.synced_upto + self.unsynced.len() as u64;
        let latency = self.rng.random_range(self.fsync_ms.0..=self.fsync_ms.1.max(self.fsync_ms.0));
        if latency == 0 && self.syncing.is_empty() {
            self.make_durable(target);
            return Ok(true);
        }
        // Syncs finish in order (one disk queue).
        let after = self.syncing.back().map(|s| s.2).unwrap_or(self.now);
        let done_at = self.now.plus(latency).max(after);
        self.syncing.push_back((self.tickets, target, done_at));
        Ok(false)
    }

    /// Queues a save after any queued before it (as the server's saver does).
    fn save_snapshot(&mut self, snapshot: Arc<Snapshot>) -> storage::Result<()> {
        let after = self.saving.back().map(|s| s.1).unwrap_or(self.now);
        self.saving.push_back((snapshot, self.now.plus(self.snapshot_ms).max(after)));
        self.poll_snapshot();
        Ok(())
    }

    /// The highest index saved since the last call (as the server's saver reports).
    fn snapshot_saved(&mut self) -> storage::Result<Option<LogIndex>> {
        self.poll_snapshot();
        Ok(self.saved.drain(..).max())
    }
}

impl SimDisk {
    /// An empty directory; `seed` draws its fsync latencies.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            durable: Vec::new(),
            unsynced: Vec::new(),
            synced_upto: 0,
            syncing: VecDeque::new(),
            tickets: 0,
            snapshots: BTreeMap::new(),
            saving: VecDeque::new(),
            saved: VecDeque::new(),
            now: Millis(0),
            fsync_ms: (0, 0),
            snapshot_ms: 0,
            rng: StdRng::seed_from_u64(seed),
            fail_next_sync: false,
            syncs: 0,
        }
    }

    /// A directory whose durable state starts as `ops` (a pre-formed one).
    pub fn with_ops(seed: u64, ops: Vec<Persist>) -> SimDisk {
        SimDisk { durable: ops, ..SimDisk::new(seed) }
    }

    fn check_power(&mut self) -> storage::Result<()> {
        if self.fail_next_sync {
            self.fail_next_sync = false;
            return Err(storage::Error::Io {
                path: PathBuf::from("sim-disk"),
                op: "fsync",
                source: std::io::Error::other("simulated power cut"),
            });
        }
        Ok(())
    }

    /// Moves ops up to stream position `target` to durable.
    fn make_durable(&mut self, target: u64) {
        let n = target.saturating_sub(self.synced_upto) as usize;
        if n == 0 {
            return;
        }
        self.syncs += 1;
        let ops: Vec<Persist> = self.unsynced.drain(..n).collect();
        self.synced_upto = target;
        for op in ops {
            if let Persist::Checkpoint(c) = &op {
                // A checkpoint holds all durable state: what came before is
                // gone, and so are snapshots older than the one it names.
                self.durable.clear();
                let keep = c.snapshot_index;
                self.snapshots.retain(|i, _| *i >= keep);
            }
            self.durable.push(op);
        }
    }

    fn poll_snapshot(&mut self) {
        while self.saving.front().is_some_and(|(_, done_at)| *done_at <= self.now) {
            let (snap, _) = self.saving.pop_front().expect("checked above");
            self.snapshots.insert(snap.index, snap.clone());
            self.saved.push_back(snap.index);
        }
    }

    /// Syncs finished by `now`, by ticket, in order.
    pub fn finished_syncs(&mut self) -> Vec<u64> {
        let mut done = Vec::new();
        while let Some(&(ticket, target, at)) = self.syncing.front() {
            if at > self.now {
                break;
            }
            self.syncing.pop_front();
            self.make_durable(target);
            done.push(ticket);
        }
        done
    }

    /// Ops written but not yet durable.
    pub fn unsynced_len(&self) -> usize {
        self.unsynced.len()
    }

    /// Power cut: the first `keep` un-synced ops reach the platter (a torn
    /// tail), the rest are lost, and so is a snapshot save in progress.
    pub fn crash(&mut self, keep: usize) {
        let keep = keep.min(self.unsynced.len());
        self.make_durable(self.synced_upto + keep as u64);
        self.unsynced.clear();
        self.synced_upto = 0;
        self.syncing.clear();
        self.tickets = 0;
        self.saving.clear();
        self.saved.clear();
        self.fail_next_sync = false;
    }

    /// Loses everything: a wiped data directory (the replica must be down).
    pub fn wipe(&mut self) {
        self.crash(0);
        self.durable.clear();
        self.snapshots.clear();
    }

    /// What a restart recovers: the durable ops replayed in order, and the
    /// snapshot the last checkpoint names. Err when that snapshot is missing.
    pub fn recover(&self) -> Result<Durable, String> {
        let mut d = Durable::default();
        for op in &self.durable {
            d.apply(op);
        }
        if d.snapshot_index > LogIndex(0) {
            let Some(snap) = self.snapshots.get(&d.snapshot_index) else {
                return Err(format!(
                    "the last checkpoint names snapshot {} but no such snapshot is durable",
                    d.snapshot_index
                ));
            };
            d.snapshot = Some((**snap).clone());
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::durable::Checkpoint;
    use crate::protocol::types::Epoch;

    fn promise(e: u64) -> Persist {
        Persist::Promise { epoch: Epoch(e), leader: None }
    }

    #[test]
    fn a_crash_loses_unsynced_ops_and_a_torn_crash_keeps_a_prefix() {
        let mut disk = SimDisk::new(1);
        disk.persist(&promise(1)).unwrap();
        disk.sync().unwrap();
        disk.persist(&promise(2)).unwrap();
        disk.persist(&Persist::Commit(LogIndex(4))).unwrap();
        disk.crash(0);
        assert_eq!(disk.recover().unwrap().promise, Epoch(1));
        disk.persist(&promise(5)).unwrap();
        disk.persist(&promise(7)).unwrap();
        disk.crash(1);
        assert_eq!(disk.recover().unwrap().promise, Epoch(5), "torn: the first op survived");
    }

    #[test]
    fn a_slow_sync_is_durable_only_once_finished() {
        let mut disk = SimDisk::new(1);
        disk.fsync_ms = (3, 3);
        disk.persist(&promise(1)).unwrap();
        assert!(!disk.begin_sync().unwrap());
        disk.persist(&promise(2)).unwrap();
        assert!(!disk.begin_sync().unwrap());
        disk.now = Millis(2);
        assert!(disk.finished_syncs().is_empty());
        disk.now = Millis(3);
        assert_eq!(disk.finished_syncs(), vec![1, 2]);
        assert_eq!(disk.recover().unwrap().promise, Epoch(2));
        disk.persist(&promise(9)).unwrap();
        assert!(!disk.begin_sync().unwrap());
        disk.crash(0);
        assert_eq!(disk.recover().unwrap().promise, Epoch(2), "an unfinished sync is lost");
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let mut disk = SimDisk::new(1);
        disk.persist(&promise(3)).unwrap();
        disk.fail_next_sync = true;
        assert!(disk.begin_sync().is_err());
        disk.crash(0);
        assert_eq!(disk.recover().unwrap(), Durable::default());
        disk.persist(&promise(3)).unwrap();
        disk.sync().unwrap();
        disk.wipe();
        assert_eq!(disk.recover().unwrap(), Durable::default());
    }

    #[test]
    fn a_checkpoint_loads_the_snapshot_it_names() {
        let mut disk = SimDisk::new(1);
        disk.snapshot_ms = 5;
        let snap = Snapshot { index: LogIndex(7), store: Default::default() };
        disk.save_snapshot(Arc::new(snap)).unwrap();
        assert_eq!(disk.snapshot_saved().unwrap(), None, "still writing");
        disk.now = Millis(5);
        assert_eq!(disk.snapshot_saved().unwrap(), Some(LogIndex(7)));
        let c = Checkpoint {
            snapshot_index: LogIndex(7),
            incarnation: None,
            promise: Epoch(4),
            promise_leader: None,
            incarnations: BTreeMap::new(),
            formation: Default::default(),
            learner: false,
            log: Vec::new(),
            commit: LogIndex(7),
        };
        disk.persist(&Persist::Checkpoint(Box::new(c))).unwrap();
        disk.sync().unwrap();
        let d = disk.recover().unwrap();
        assert_eq!(d.snapshot.map(|s| s.index), Some(LogIndex(7)));
        assert_eq!(d.promise, Epoch(4));
    }
}
