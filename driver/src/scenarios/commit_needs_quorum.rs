//! Setup: N replicas (3 by default) with write quorum NW. Two rounds; in each,
//! kill -9 all but NW-1 replicas and send one PUT to a survivor at once:
//! round 1 keeps the leader alive (the leader must not propose the write),
//! round 2 kills the leader (a follower must not forward it). Then restart the
//! killed replicas with their data.
//!
//! Property (DESIGN §4.6, the original's first scenario): the PUT answers
//! `ERR NOQUORUM <live>/<NW>` (for 3 replicas `ERR NOQUORUM 1/2`) within 2
//! election timeouts plus 1 s, and is never applied: after the restarts, and
//! again after a fresh PUT has committed (so every earlier entry has been
//! recovered and applied), GET of the refused key answers NOTFOUND through
//! every replica. The fresh PUT commits once the quorum is back.

use super::{ensure, get_through, kill_and_check, parse_noquorum, put_ok, put_retry, with_cluster};
use crate::cluster::{Cluster, ClusterOpts};
use std::time::{Duration, Instant};

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    let nw = opts.write_quorum();
    if nw < 2 {
        return Err(format!("needs a write quorum of at least 2, got {nw}"));
    }
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        // A committed write first proves the cluster is formed and serving.
        put_ok(c, leader, "before", "committed")?;

        // Round 1: the leader and the NW-2 highest other ids survive.
        let mut survivors: Vec<usize> =
            all.iter().rev().copied().filter(|&id| id != leader).collect();
        survivors.truncate(nw - 2);
        survivors.push(leader);
        refuse_round(c, opts, &survivors, leader, "refused-1")?;

        // Round 2: the leader dies; the NW-1 lowest other ids survive.
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        let mut survivors: Vec<usize> = all.iter().copied().filter(|&id| id != leader).collect();
        survivors.truncate(nw - 1);
        let via = *survivors.last().expect("nw >= 2 leaves a survivor");
        refuse_round(c, opts, &survivors, via, "refused-2")?;

        // With the quorum back, a fresh write commits; committing it means
        // every earlier slot was recovered and applied, and still no refused key.
        // A new leader may refuse at first with NOQUORUM until it has heard
        // from NW replicas at its epoch (NW may exceed the majority that
        // elected it), and the refusal applies nothing, so retry until OK.
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        put_retry(c, leader, "after", "committed", opts.settle_deadline())?;
        for key in ["before", "after"] {
            get_through(c, &all, key, Some("committed"))?;
        }
        for key in ["refused-1", "refused-2"] {
            get_through(c, &all, key, None)?;
        }
        Ok(())
    })
}

/// Kills every replica but `survivors`, sends `PUT key` to `via` at once and
/// checks the refusal and its timing; restarts the killed replicas and checks
/// the key reads NOTFOUND through every replica.
fn refuse_round(
    c: &mut Cluster,
    opts: &ClusterOpts,
    survivors: &[usize],
    via: usize,
    key: &str,
) -> Result<(), String> {
    let nw = opts.write_quorum();
    let victims: Vec<usize> = c.ids().filter(|id| !survivors.contains(id)).collect();
    c.note(&format!("{key}: killing {victims:?}, PUT via {via}"));
    for &id in &victims {
        kill_and_check(c, id)?;
    }
    // The kills took effect in the survivor's view (its `live` set dropped the
    // victims, as it does when their links reset) before the PUT is sent: a
    // write proposed a moment before the leader learns of the kills has an
    // unknown outcome (`ERR TIMEOUT`), not a refusal.
    wait_not_live(c, via, &victims, Instant::now() + opts.election_timeout() * 2)?;

    let sent = Instant::now();
    let reply = c.client(via)?.cmd(&format!("PUT {key} must-not-apply"))?;
    let elapsed = sent.elapsed();
    let bound = opts.election_timeout() * 2 + Duration::from_secs(1);
    let (live, needed) = parse_noquorum(&reply)
        .ok_or_else(|| format!("PUT {key} via {via} with {victims:?} dead: {reply:?}"))?;
    ensure!(needed == nw, "{reply:?} names {needed} needed, the write quorum is {nw}");
    ensure!(
        live >= 1 && live < nw && live <= survivors.len(),
        "{reply:?} counts {live} live; {} replicas survive",
        survivors.len()
    );
    ensure!(elapsed <= bound, "{reply:?} took {elapsed:?}, more than {bound:?}");

    for &id in &victims {
        c.restart(id)?;
    }
    c.wait_for_leader(opts.settle_deadline())?;
    let all: Vec<usize> = c.ids().collect();
    get_through(c, &all, key, None)
}

/// Polls `via`'s STATUS until none of `victims` is in its `live` field.
fn wait_not_live(
    c: &Cluster,
    via: usize,
    victims: &[usize],
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let status = c.status(via)?;
        let live: Vec<usize> =
            status.get("live").unwrap_or("-").split(',').filter_map(|id| id.parse().ok()).collect();
        if !victims.iter().any(|v| live.contains(v)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "replica {via} still counts {live:?} live after killing {victims:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
