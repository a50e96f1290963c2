//! Setup: N replicas (3 by default); PUT one key through every replica, then
//! kill -9 the leader.
//!
//! Property (DESIGN §3.2, §4): the survivors elect the highest live id as the
//! new leader, in an epoch above the old one; a PUT through each survivor then
//! commits; and every acknowledged write, from before and after the kill,
//! reads back through every survivor.

use super::{ensure, get_through, kill_and_check, put_ok, with_cluster};
use crate::cluster::ClusterOpts;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (old_leader, old_epoch) = c.wait_for_leader(opts.settle_deadline())?;
        let mut acked: Vec<(String, String)> = Vec::new();
        for &id in &all {
            let (key, value) = (format!("before-{id}"), format!("v{id}"));
            put_ok(c, id, &key, &value)?;
            acked.push((key, value));
        }

        kill_and_check(c, old_leader)?;
        let survivors = c.running_ids();
        let (leader, epoch) = c.wait_for_leader(opts.settle_deadline())?;
        ensure!(epoch > old_epoch, "new leader {leader} has epoch {epoch} <= old {old_epoch}");
        let highest = *survivors.iter().max().expect("N >= 2 leaves a survivor");
        ensure!(leader == highest, "new leader is {leader}, the highest live id is {highest}");

        for &id in &survivors {
            let (key, value) = (format!("after-{id}"), format!("w{id}"));
            put_ok(c, id, &key, &value)?;
            acked.push((key, value));
        }
        for (key, value) in &acked {
            get_through(c, &survivors, key, Some(value))?;
        }
        Ok(())
    })
}
