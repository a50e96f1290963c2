//! Setup: 3 replicas, each in its own network namespace with its own address
//! (`10.77.<run>.<id>`, one bridge), launched with `ip netns exec`. Needs
//! root and `ip`; otherwise the scenario is skipped with the reason.
//!
//! Property (DESIGN §2, §7): the cluster forms and serves across "hosts": a
//! PUT through each replica reads back through every replica. Then blackhole
//! routes isolate the leader (both directions; verified: the routes are
//! listed and the kernel refuses to route to the cut address, and the
//! majority stops counting the leader live): the majority elects a new
//! leader in a higher epoch and serves PUT and GET; the isolated replica
//! refuses writes. After the routes are removed all replicas agree on one
//! leader, converge, and every acknowledged write reads back everywhere.

use super::with_cluster_in;
use super::{check_acked, ensure, get_through, poll_until, put_ok, wait_converged, wait_not_live};
use crate::cluster::{ClusterOpts, Layout};
use crate::netns::Hosts;
use std::time::Instant;

/// The port every replica listens on, inside its own namespace.
const PORT: u16 = 7000;

/// What the scenario needs: root and a working `ip`.
pub fn requires() -> Result<(), String> {
    Hosts::available()
}

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    let mut hosts = Hosts::create(3)?;
    let opts = &ClusterOpts { replicas: 3, ..opts.clone() };
    let layout = Layout { placement: Some(hosts.placements(PORT)), ..Layout::default() };
    with_cluster_in(opts, layout, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (leader, epoch) = c.wait_for_leader(opts.settle_deadline())?;
        let mut acked = Vec::new();
        for &id in &all {
            let (key, value) = (format!("host-{id}"), format!("from {}", hosts.ip(id)));
            put_ok(c, id, &key, &value)?;
            get_through(c, &all, &key, Some(&value))?;
            acked.push((key, value));
        }

        let majority: Vec<usize> = all.iter().copied().filter(|&id| id != leader).collect();
        c.note(&format!("blackholing leader {leader} from {majority:?}"));
        hosts.isolate(leader)?;
        let deadline = Instant::now() + opts.settle_timeout();
        for &id in &majority {
            wait_not_live(c, id, &[leader], deadline)?;
        }
        let (new, new_epoch) = c.wait_for_leader_among(Some(&majority), opts.settle_deadline())?;
        ensure!(new_epoch > epoch, "majority leader {new} in epoch {new_epoch} <= {epoch}");
        for &id in &majority {
            let (key, value) = (format!("majority-{id}"), format!("while {leader} is cut off"));
            put_ok(c, id, &key, &value)?;
            get_through(c, &majority, &key, Some(&value))?;
            acked.push((key, value));
        }
        poll_until(opts.settle_deadline(), &format!("isolated {leader} to stop leading"), || {
            c.status(leader).map(|s| s.role() != "leader")
        })?;
        let reply = c.client(leader)?.cmd("PUT isolated must-not-commit")?;
        ensure!(reply.starts_with("ERR "), "PUT through the isolated {leader} answered {reply:?}");
        for &id in &majority {
            hosts.check_blackhole(id, leader)?;
            hosts.check_blackhole(leader, id)?;
        }

        c.note("removing the blackhole routes");
        hosts.heal()?;
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        wait_converged(c, leader, &all, opts.settle_deadline())?;
        if reply.starts_with("ERR NOQUORUM") || reply.starts_with("ERR NOLEADER") {
            get_through(c, &all, "isolated", None)?;
        }
        check_acked(c, &all, &acked)
    })
}
