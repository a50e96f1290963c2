//! Setup: 3 replicas (N by default). PUT `fenced-key = before`; SIGSTOP the
//! leader; the others elect a new leader in a higher epoch; PUT
//! `fenced-key = after` through it. Then, with the old leader still stopped,
//! open two connections to it and send `PUT fenced-write from-old-leader` on
//! one and `GET fenced-key` on the other (the kernel queues both; the old
//! leader reads them after SIGCONT). Then SIGCONT it.
//!
//! Property (DESIGN §3.2 "split brain ... must be harmless", §4.6, §5): the
//! old leader, which still believes it leads in its old epoch, answers the
//! PUT with `ERR ...` or with `OK` only if the write really committed (it
//! then reads back through every other replica); after `ERR NOQUORUM` or
//! `ERR NOLEADER` the write is applied nowhere. The GET never returns the
//! stale `before`. The cluster converges to one leader that every replica
//! names, and every replica reads the same `fenced-write`.

use super::{ensure, get_through, put_ok, stop_and_check, wait_converged, with_cluster};
use crate::cluster::ClusterOpts;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (old, old_epoch) = c.wait_for_leader(opts.settle_deadline())?;
        put_ok(c, old, "fenced-key", "before")?;
        stop_and_check(c, old)?;

        let (new, epoch) = c.wait_for_leader(opts.settle_deadline())?;
        ensure!(new != old, "stopped leader {old} is still named leader");
        ensure!(epoch > old_epoch, "new leader {new} has epoch {epoch} <= old {old_epoch}");
        put_ok(c, new, "fenced-key", "after")?;
        let others: Vec<usize> = all.iter().copied().filter(|&id| id != old).collect();
        get_through(c, &others, "fenced-key", Some("after"))?;

        // Both requests wait in the stopped process's socket buffers.
        let mut writer = c.client(old)?;
        writer.send_raw(b"PUT fenced-write from-old-leader\n")?;
        let mut reader = c.client(old)?;
        reader.send_raw(b"GET fenced-key\n")?;
        ensure!(c.is_stopped(old), "replica {old} was continued too early");
        c.cont(old)?;
        let put_reply = writer.read_line().map_err(|e| format!("PUT to the old leader: {e}"))?;
        let get_reply = reader.read_line().map_err(|e| format!("GET from the old leader: {e}"))?;

        ensure!(
            get_reply != "VALUE before",
            "stale read: the old leader {old} answered GET fenced-key with {get_reply:?} after epoch {epoch} wrote \"after\""
        );
        ensure!(
            get_reply == "VALUE after" || get_reply.starts_with("ERR "),
            "GET fenced-key from the old leader {old}: {get_reply:?}"
        );
        ensure!(
            put_reply.starts_with("OK ") || put_reply.starts_with("ERR "),
            "PUT to the old leader {old}: {put_reply:?}"
        );
        c.note(&format!(
            "old leader {old} answered PUT with {put_reply:?}, GET with {get_reply:?}"
        ));

        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        wait_converged(c, leader, &all, opts.settle_deadline())?;
        let definite_refusal =
            put_reply.starts_with("ERR NOQUORUM") || put_reply.starts_with("ERR NOLEADER");
        if put_reply.starts_with("OK ") {
            // Acknowledged: it must have committed.
            get_through(c, &others, "fenced-write", Some("from-old-leader"))?;
        } else if definite_refusal {
            get_through(c, &others, "fenced-write", None)?;
        }
        // Whatever the outcome, every replica agrees now.
        let seen = c.client(leader)?.get("fenced-write")?;
        get_through(c, &all, "fenced-write", seen.as_deref())?;
        get_through(c, &all, "fenced-key", Some("after"))
    })
}
