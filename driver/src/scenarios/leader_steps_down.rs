//! Setup: N replicas (3 by default); SIGSTOP every follower, so the leader's
//! TCP links stay open but nobody answers (DESIGN §2: a connected socket is
//! not proof of life). Later SIGCONT them all.
//!
//! Property (DESIGN §3.2, §4.6): within a few election timeouts the isolated
//! leader's STATUS shows a role other than leader, and a PUT sent to it is
//! refused with `ERR NOQUORUM` or `ERR NOLEADER` and never applied. After
//! SIGCONT a leader is elected again and PUTs commit.

use super::{ensure, get_through, poll_until, put_ok, stop_and_check, with_cluster};
use crate::cluster::ClusterOpts;
use std::time::{Duration, Instant};

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        put_ok(c, leader, "before", "committed")?;
        let followers: Vec<usize> = all.iter().copied().filter(|&id| id != leader).collect();
        for &f in &followers {
            stop_and_check(c, f)?;
        }

        let deadline = Instant::now() + opts.election_timeout() * 4 + Duration::from_secs(1);
        poll_until(deadline, &format!("leader {leader} to step down"), || {
            c.status(leader).map(|s| s.role() != "leader")
        })?;
        let reply = c.client(leader)?.cmd("PUT isolated must-not-apply")?;
        ensure!(
            reply.starts_with("ERR NOQUORUM") || reply.starts_with("ERR NOLEADER"),
            "PUT to the isolated old leader {leader} answered {reply:?}"
        );

        for &f in &followers {
            c.cont(f)?;
        }
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        put_ok(c, leader, "after", "committed")?;
        for key in ["before", "after"] {
            get_through(c, &all, key, Some("committed"))?;
        }
        get_through(c, &all, "isolated", None)
    })
}
