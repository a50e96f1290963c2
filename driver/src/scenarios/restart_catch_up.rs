//! Setup: 3 replicas (N by default). kill -9 one follower; with it down,
//! write 200 keys through the leader; restart it with its data dir.
//!
//! Property (DESIGN §4.3, §6): the fault took effect (the process is gone,
//! its port refuses, the leader stops counting it live and reports it
//! lagging by at least 200 entries); the restarted follower fetches what it
//! missed until its STATUS commit index reaches the leader's; then every
//! replica, the restarted one included, reads all 200 keys with their values.

use super::with_cluster;
use super::{
    check_acked, commit_of, ensure, kill_and_check, put_ok, wait_converged, wait_not_live,
};
use crate::cluster::ClusterOpts;
use std::time::Instant;

/// Keys written while the follower is down.
const KEYS: usize = 200;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        let follower = *all.iter().find(|&&id| id != leader).expect("N >= 2");
        put_ok(c, leader, "before-kill", "x")?;
        let commit_before = commit_of(c, follower)?;
        kill_and_check(c, follower)?;
        wait_not_live(c, leader, &[follower], Instant::now() + opts.settle_timeout())?;

        let mut acked = Vec::new();
        let mut client = c.client(leader)?;
        for i in 0..KEYS {
            let (key, value) = (format!("catch-up-{i}"), format!("value {i}"));
            client.put(&key, &value).map_err(|e| format!("PUT {key} via {leader}: {e}"))?;
            acked.push((key, value));
        }
        let status = c.status(leader)?;
        let target = commit_of(c, leader)?;
        ensure!(
            target >= commit_before + KEYS as u64,
            "leader commit {target} did not grow by {KEYS}"
        );
        if let Some(lag) = status.get("lag") {
            let behind = lag
                .split(',')
                .filter_map(|p| p.split_once(':'))
                .find(|(id, _)| id.parse() == Ok(follower))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            if let Some(behind) = behind {
                ensure!(
                    behind >= KEYS,
                    "leader reports {follower} lagging {behind} < {KEYS}: {lag}"
                );
            }
        }

        let first = c.restart_with_status(follower)?;
        c.note(&format!("restarted {follower}; first STATUS: {}", first.raw));
        wait_converged(c, leader, &all, opts.settle_deadline())?;
        check_acked(c, &all, &acked)
    })
}
