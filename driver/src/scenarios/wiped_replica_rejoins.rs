//! Setup: 3 replicas (N by default). Write 300 keys; kill -9 one follower and
//! delete its data directory (a lost disk); write 50 more keys; restart it
//! with the empty directory; write 20 more while it rejoins.
//!
//! Property (DESIGN §6 "Learners"): the wiped replica comes back as a
//! learner: once it has met the cluster, every STATUS it answers shows
//! `role=learner` (or a `catchup=` field) until it has caught up, and it never
//! campaigns or counts as a full member before that; then it is promoted to
//! `role=follower`, its commit index reaches the leader's, and every
//! acknowledged write reads back through every replica, the rejoined one
//! included. (Before it has met any peer it cannot know the cluster is
//! formed; it may then show `cluster=blank leader=none epoch=0 commit=0`
//! under any role, and that inert state is accepted.)

use super::{check_acked, ensure, kill_and_check, wait_converged, with_cluster};
use crate::cluster::{ClusterOpts, Status};
use std::time::{Duration, Instant};

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        let follower = *all.iter().find(|&&id| id != leader).expect("N >= 2");
        let mut acked = Vec::new();
        let mut write = |c: &crate::cluster::Cluster, range: std::ops::Range<usize>| {
            let mut client = c.client(leader)?;
            for i in range {
                let (key, value) = (format!("wiped-{i}"), format!("value {i}"));
                client.put(&key, &value).map_err(|e| format!("PUT {key} via {leader}: {e}"))?;
                acked.push((key, value));
            }
            Ok::<(), String>(())
        };
        write(c, 0..300)?;
        kill_and_check(c, follower)?;
        c.wipe(follower)?;
        ensure!(
            !c.data_dir(follower).exists(),
            "data dir of {follower} still exists after the wipe"
        );
        write(c, 300..350)?;

        let first = c.restart_with_status(follower)?;
        let mut seen = vec![first];
        write(c, 350..370)?;
        let deadline = Instant::now() + opts.settle_timeout();
        loop {
            let last = seen.last().expect("one status at least");
            let learning = last.role() == "learner" || last.get("catchup").is_some();
            let ever_learned =
                seen.iter().any(|s| s.role() == "learner" || s.get("catchup").is_some());
            if !learning && !ever_learned && is_inert_blank(last) {
                // Not yet met the cluster: it cannot know yet that it must
                // be a learner, and it neither votes nor serves. Wait.
            } else if !learning {
                // Done learning: from here it is an ordinary follower, which
                // may trail the leader by the writes made since its learner
                // target was fixed; `wait_converged` below checks it catches up.
                ensure!(
                    last.role() == "follower",
                    "the wiped replica {follower} left the learner role as {} instead of a follower: {}\n\
                     its STATUS history:\n{}",
                    last.role(),
                    last.raw,
                    history(&seen)
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the wiped replica {follower} {} after {:?}: {}",
                if ever_learned {
                    "has not caught up"
                } else {
                    "never became a learner (it stays blank)"
                },
                opts.settle_timeout(),
                last.raw
            );
            std::thread::sleep(Duration::from_millis(20));
            seen.push(c.status(follower)?);
        }
        // A small store is caught up in milliseconds, faster than STATUS is
        // polled; the replica's own log records each step of the learner
        // protocol, so either is evidence that it rejoined as a learner.
        let log = std::fs::read_to_string(c.log_path(follower)).unwrap_or_default();
        let logged = log.contains("rejoining as a learner") && log.contains("full member again");
        ensure!(
            logged || seen.iter().any(|s| s.role() == "learner" || s.get("catchup").is_some()),
            "the wiped replica {follower} was never seen learning: {}",
            history(&seen)
        );
        wait_converged(c, leader, &all, opts.settle_deadline())?;
        check_acked(c, &all, &acked)
    })
}

/// A blank directory that has not met the cluster yet: `cluster=blank`, no
/// leader, epoch 0, nothing committed. It does not know yet that it must be
/// a learner, and it does nothing a member does.
fn is_inert_blank(s: &Status) -> bool {
    s.get("cluster") == Some("blank")
        && s.leader().is_none()
        && s.epoch() == 0
        && s.get("commit") == Some("0")
}

/// The distinct STATUS lines seen, in order.
fn history(seen: &[Status]) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for s in seen {
        if lines.last() != Some(&s.raw.as_str()) {
            lines.push(&s.raw);
        }
    }
    lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}
