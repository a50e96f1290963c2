//! Setup: 3 replicas (N by default) behind the driver's link proxy, so every
//! peer link can be cut. Two rounds in one cluster:
//! 1. cut the leader off from every other replica (both directions);
//! 2. after healing and converging, cut one follower off the same way.
//!
//! In each round the fault is checked to take effect: every replica on each
//! side stops counting the other side as live, and the proxy copied no byte
//! across the cut. Then:
//!
//! Property (DESIGN §3.2, §4.6, §5): the majority side elects a leader (a new
//! one in a higher epoch when the old leader was cut off) and serves PUT and
//! GET through every majority replica; a PUT through a minority replica gets
//! `ERR ...` (never `OK`), and after `ERR NOQUORUM`/`ERR NOLEADER` it is
//! applied nowhere. After the heal all replicas agree on one leader, reach
//! its commit index, and every acknowledged write reads back through every
//! replica.

use super::with_cluster_in;
use super::{check_acked, ensure, get_through, poll_until, put_ok, wait_converged, wait_not_live};
use crate::cluster::{Cluster, ClusterOpts, Layout};
use std::time::Instant;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    let layout = Layout { proxied: true, ..Layout::default() };
    with_cluster_in(opts, layout, |c| {
        let all: Vec<usize> = c.ids().collect();
        c.wait_for_leader(opts.settle_deadline())?;
        proxy(c)?.wait_all_carrying(opts.settle_deadline())?;
        let mut acked = Vec::new();
        for &id in &all {
            let (key, value) = (format!("before-{id}"), format!("v{id}"));
            put_ok(c, id, &key, &value)?;
            acked.push((key, value));
        }

        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        round(c, opts, leader, "leader", &mut acked)?;
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        let follower = *all.iter().find(|&&id| id != leader).expect("N >= 2");
        round(c, opts, follower, "follower", &mut acked)?;

        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        wait_converged(c, leader, &all, opts.settle_deadline())?;
        check_acked(c, &all, &acked)
    })
}

/// The cluster's proxy (this scenario always starts one).
fn proxy(c: &Cluster) -> Result<&crate::proxy::Proxy, String> {
    c.proxy().ok_or_else(|| "cluster started without its link proxy".to_string())
}

/// Cuts `cut` off from the rest, checks both sides, heals, converges.
fn round(
    c: &mut Cluster,
    opts: &ClusterOpts,
    cut: usize,
    what: &str,
    acked: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let all: Vec<usize> = c.ids().collect();
    let majority: Vec<usize> = all.iter().copied().filter(|&id| id != cut).collect();
    let (_, epoch_before) = c.wait_for_leader(opts.settle_deadline())?;
    c.note(&format!("partition: cutting {what} {cut} off from {majority:?}"));
    proxy(c)?.isolate(&[cut])?;

    // The fault took effect in every replica's view.
    let deadline = Instant::now() + opts.settle_timeout();
    for &id in &majority {
        wait_not_live(c, id, &[cut], deadline)?;
    }
    wait_not_live(c, cut, &majority, deadline)?;

    let (leader, epoch) = c.wait_for_leader_among(Some(&majority), opts.settle_deadline())?;
    if what == "leader" {
        ensure!(leader != cut, "the cut-off leader {cut} is still named leader by the majority");
        ensure!(epoch > epoch_before, "new leader {leader} in epoch {epoch} <= {epoch_before}");
    }
    for &id in &majority {
        let (key, value) = (format!("{what}-cut-via-{id}"), format!("majority-{id}"));
        put_ok(c, id, &key, &value).map_err(|e| format!("majority side: {e}"))?;
        get_through(c, &majority, &key, Some(&value))?;
        acked.push((key, value));
    }

    // The minority side refuses. Let an isolated leader notice first, so the
    // answer is a prompt refusal rather than a request timeout.
    poll_until(opts.settle_deadline(), &format!("cut-off replica {cut} to stop leading"), || {
        c.status(cut).map(|s| s.role() != "leader")
    })?;
    let key = format!("{what}-cut-minority-{cut}");
    let reply = c.client(cut)?.cmd(&format!("PUT {key} must-not-commit"))?;
    ensure!(reply.starts_with("ERR "), "PUT through the cut-off replica {cut} answered {reply:?}");
    proxy(c)?.check_isolated(&[cut])?;

    c.note(&format!("partition: healing {what} {cut}"));
    proxy(c)?.heal_all();
    let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
    wait_converged(c, leader, &all, opts.settle_deadline())?;
    if reply.starts_with("ERR NOQUORUM") || reply.starts_with("ERR NOLEADER") {
        get_through(c, &all, &key, None)?;
    }
    check_acked(c, &all, acked)
}
