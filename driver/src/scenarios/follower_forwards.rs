//! Setup: N replicas (3 by default), all up, one leader agreed by all.
//!
//! Property (DESIGN §4.1): a PUT sent to any follower is forwarded to the
//! leader, commits, and the follower relays `OK <version>`; the value then
//! reads back through the leader and through every other replica.

use super::{get_through, put_ok, with_cluster};
use crate::cluster::ClusterOpts;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        let followers: Vec<usize> = all.iter().copied().filter(|&id| id != leader).collect();
        for &f in &followers {
            let key = format!("via-follower-{f}");
            put_ok(c, f, &key, "forwarded")?;
            get_through(c, &[leader], &key, Some("forwarded"))?;
        }
        for &f in &followers {
            get_through(c, &all, &format!("via-follower-{f}"), Some("forwarded"))?;
        }
        Ok(())
    })
}
