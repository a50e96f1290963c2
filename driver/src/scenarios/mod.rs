//! The properties the driver proves against real processes, one file each
//! (DESIGN §7). Each `run` takes the base [`ClusterOpts`] (binary, timings,
//! replica count, extra flags), starts its own cluster and returns `Err` with
//! the reason and the replicas' log tails when the property does not hold.
//! The root integration tests call the same functions with 3 and 5 replicas
//! and other quorums.

use crate::client::Client;
use crate::cluster::{Cluster, ClusterOpts, Layout};
use std::time::{Duration, Instant};

pub mod commit_needs_quorum;
pub mod custom_quorums;
pub mod five_replicas;
pub mod follower_forwards;
pub mod leader_failover;
pub mod leader_steps_down;
pub mod minority_partition;
pub mod multi_host;
pub mod old_leader_fenced;
pub mod power_cut;
pub mod reads_under_writes;
pub mod reads_work;
pub mod restart_catch_up;
pub mod wiped_replica_rejoins;

/// How long a failed scenario waits for a crashing replica to exit, so the
/// failure can name the crash.
const CRASH_EXIT_WAIT: Duration = Duration::from_secs(2);

/// A scenario's body: runs it against a cluster started from these options.
pub type RunFn = fn(&ClusterOpts) -> Result<(), String>;

/// One named scenario.
pub struct Scenario {
    /// The name `cargo run -p driver -- <name>` takes.
    pub name: &'static str,
    /// One line: what it proves.
    pub about: &'static str,
    /// Runs it against a cluster started from these options.
    pub run: RunFn,
    /// What it needs from this machine, checked before `run`: `Err(reason)`
    /// means the scenario cannot run here and is skipped with that reason.
    pub requires: Option<fn() -> Result<(), String>>,
}

/// Every scenario, in the order a full run takes them.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "commit-needs-quorum",
        about: "with fewer than NW live, a PUT is refused with ERR NOQUORUM and never applied",
        run: commit_needs_quorum::run,
        requires: None,
    },
    Scenario {
        name: "reads-work",
        about: "keys written through different replicas read back through every replica; DEL removes",
        run: reads_work::run,
        requires: None,
    },
    Scenario {
        name: "reads-under-writes",
        about: "GETs of a key under constant writes answer through every replica (leader fallback) and stay linearizable",
        run: reads_under_writes::run,
        requires: None,
    },
    Scenario {
        name: "follower-forwards",
        about: "a PUT sent to a follower is forwarded, commits and reads back everywhere",
        run: follower_forwards::run,
        requires: None,
    },
    Scenario {
        name: "leader-failover",
        about: "kill -9 of the leader elects the highest live id in a higher epoch; no write is lost",
        run: leader_failover::run,
        requires: None,
    },
    Scenario {
        name: "leader-steps-down",
        about: "a leader whose followers are SIGSTOPped steps down and refuses writes; serves after SIGCONT",
        run: leader_steps_down::run,
        requires: None,
    },
    Scenario {
        name: "old-leader-fenced",
        about: "a SIGSTOPped leader, continued after a new epoch, neither acknowledges an uncommitted write nor serves a stale read",
        run: old_leader_fenced::run,
        requires: None,
    },
    Scenario {
        name: "minority-partition",
        about: "cut off the leader, then a follower (link proxy): the majority serves, the minority refuses, all converge after the heal",
        run: minority_partition::run,
        requires: None,
    },
    Scenario {
        name: "restart-catch-up",
        about: "a follower killed while 200 keys are written catches up after its restart; every replica reads the same",
        run: restart_catch_up::run,
        requires: None,
    },
    Scenario {
        name: "power-cut",
        about: "kill -9 of every replica at once under concurrent writers loses no acknowledged write",
        run: power_cut::run,
        requires: None,
    },
    Scenario {
        name: "five-replicas",
        about: "the core scenarios (quorum refusal, reads, forwarding, failover) with 5 replicas",
        run: five_replicas::run,
        requires: None,
    },
    Scenario {
        name: "custom-quorums",
        about: "the core scenarios with 5 replicas, --write-quorum 4 --read-quorum 2",
        run: custom_quorums::run,
        requires: None,
    },
    Scenario {
        name: "wiped-replica-rejoins",
        about: "a follower whose data dir is deleted rejoins as a learner, then a follower; no acknowledged write is lost",
        run: wiped_replica_rejoins::run,
        requires: None,
    },
    Scenario {
        name: "multi-host",
        about: "3 replicas in 3 network namespaces; a blackhole route isolates the leader; the majority serves; all converge",
        run: multi_host::run,
        requires: Some(multi_host::requires),
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

/// `Err(format!(..))` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// Starts a cluster from `opts`, runs `body` on it, then checks no replica
/// crashed. A failure carries every replica's log tail.
pub fn with_cluster(
    opts: &ClusterOpts,
    body: impl FnOnce(&mut Cluster) -> Result<(), String>,
) -> Result<(), String> {
    with_cluster_in(opts, Layout::default(), body)
}

/// [`with_cluster`] with a [`Layout`] (link proxy, placement).
pub fn with_cluster_in(
    opts: &ClusterOpts,
    layout: Layout,
    body: impl FnOnce(&mut Cluster) -> Result<(), String>,
) -> Result<(), String> {
    let mut cluster = Cluster::start_with(opts.clone(), layout)?;
    body(&mut cluster).and_then(|()| cluster.check_alive()).map_err(|e| {
        // A replica that crashed is the likely cause: say so up front. A
        // panicking replica closes its connections while it still prints
        // its backtrace, so give it a moment to exit.
        let deadline = Instant::now() + CRASH_EXIT_WAIT;
        while cluster.crashed_ids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let crashed: Vec<String> = cluster
            .crashed_ids()
            .into_iter()
            .map(|id| format!("replica {id} crashed: {}", cluster.exit_cause(id)))
            .collect();
        let cause =
            if crashed.is_empty() { String::new() } else { format!("{}; ", crashed.join("; ")) };
        format!("{cause}{e}\n{}", cluster.logs_summary(20))
    })
}

/// Kills replica `id` and checks the fault took effect: the process is gone
/// and its port refuses connections.
pub fn kill_and_check(c: &mut Cluster, id: usize) -> Result<(), String> {
    c.kill(id)?;
    ensure!(!c.is_running(id), "replica {id} still running after kill");
    let refused = Client::connect(&c.addr(id), Duration::from_secs(1)).is_err();
    ensure!(refused, "replica {id}'s port {} still accepts after kill -9", c.addr(id));
    Ok(())
}

/// SIGSTOPs replica `id`; [`Cluster::stop`] checks `/proc/<pid>/stat` shows `T`.
pub fn stop_and_check(c: &mut Cluster, id: usize) -> Result<(), String> {
    c.stop(id)?;
    let state = c.pid(id).and_then(crate::cluster::process_state);
    ensure!(state == Some('T'), "replica {id} in state {state:?} after SIGSTOP, not T");
    Ok(())
}

/// PUT through replica `via`; it must answer `OK <version>`. A definite
/// refusal (`ERR NOQUORUM`, `ERR NOLEADER`: applied nowhere) is retried for
/// a few election timeouts, since a leader just elected by a majority may
/// not have heard from NW replicas at its epoch yet; any other answer, or a
/// refusal that lasts, fails.
pub fn put_ok(c: &Cluster, via: usize, key: &str, value: &str) -> Result<u64, String> {
    let deadline = Instant::now() + c.opts().election_timeout() * REFUSAL_RETRY_ELECTION_TIMEOUTS;
    loop {
        match c.client(via)?.put(key, value) {
            Ok(version) => return Ok(version),
            Err(e) if is_refusal(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("PUT {key} via {via}: {e}")),
        }
    }
}

/// How many election timeouts [`put_ok`] retries a definite refusal.
const REFUSAL_RETRY_ELECTION_TIMEOUTS: u32 = 4;

/// Whether a reply is a definite refusal: the write was applied nowhere.
fn is_refusal(reply: &str) -> bool {
    reply.starts_with("ERR NOQUORUM") || reply.starts_with("ERR NOLEADER")
}

/// GET `key` through each of `ids`; each must answer `expected`
/// (`None` = NOTFOUND).
pub fn get_through(
    c: &Cluster,
    ids: &[usize],
    key: &str,
    expected: Option<&str>,
) -> Result<(), String> {
    for &id in ids {
        let got = c.client(id)?.get(key).map_err(|e| format!("GET {key} via {id}: {e}"))?;
        ensure!(got.as_deref() == expected, "GET {key} via {id} = {got:?}, expected {expected:?}");
    }
    Ok(())
}

/// Polls `cond` every 20 ms until it returns `Ok(true)` or `deadline` passes;
/// `what` names the condition in the error.
pub fn poll_until(
    deadline: Instant,
    what: &str,
    mut cond: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let mut last = String::new();
    loop {
        match cond() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}; last error: {last}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replica `id`'s `live` field: the peers it heard from at its epoch lately.
pub fn live_of(c: &Cluster, id: usize) -> Result<Vec<usize>, String> {
    let status = c.status(id)?;
    Ok(status.get("live").unwrap_or("-").split(',').filter_map(|p| p.parse().ok()).collect())
}

/// Waits until replica `via` counts none of `gone` as live: the fault that
/// removed them (kill, stop, partition) took effect in its view.
pub fn wait_not_live(
    c: &Cluster,
    via: usize,
    gone: &[usize],
    deadline: Instant,
) -> Result<(), String> {
    poll_until(deadline, &format!("replica {via} to stop counting {gone:?} as live"), || {
        let live = live_of(c, via)?;
        Ok(!gone.iter().any(|g| live.contains(g)))
    })
}

/// Replica `id`'s commit index.
pub fn commit_of(c: &Cluster, id: usize) -> Result<u64, String> {
    let status = c.status(id)?;
    status
        .get("commit")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad commit in {}", status.raw))
}

/// Waits until every replica in `ids` has a commit index at least the
/// current commit index of `leader` (re-read on every poll).
pub fn wait_converged(
    c: &Cluster,
    leader: usize,
    ids: &[usize],
    deadline: Instant,
) -> Result<(), String> {
    poll_until(
        deadline,
        &format!("replicas {ids:?} to reach leader {leader}'s commit index"),
        || {
            let target = commit_of(c, leader)?;
            for &id in ids {
                let have = commit_of(c, id)?;
                if have < target {
                    return Err(format!(
                        "replica {id} at commit {have}, leader {leader} at {target}"
                    ));
                }
            }
            Ok(true)
        },
    )
}

/// PUT `key value` through `via`, retrying (on a fresh connection each time)
/// until `OK` or `deadline`: for writes right after a fault heals, when a
/// new election may still be running. Only for keys whose every attempt
/// writes the same value, so a retried write is harmless.
pub fn put_retry(
    c: &Cluster,
    via: usize,
    key: &str,
    value: &str,
    deadline: Instant,
) -> Result<u64, String> {
    let mut version = 0;
    poll_until(deadline, &format!("PUT {key} via {via} to succeed"), || {
        version = c.client(via)?.put(key, value)?;
        Ok(true)
    })?;
    Ok(version)
}

/// GET every `(key, value)` of `acked` through each of `ids`, one connection
/// per replica; each must answer the value.
pub fn check_acked(c: &Cluster, ids: &[usize], acked: &[(String, String)]) -> Result<(), String> {
    for &id in ids {
        let mut client = c.client(id)?;
        for (key, value) in acked {
            let got = client.get(key).map_err(|e| format!("GET {key} via {id}: {e}"))?;
            ensure!(
                got.as_deref() == Some(value.as_str()),
                "acknowledged write lost: GET {key} via {id} = {got:?}, acknowledged {value:?}"
            );
        }
    }
    Ok(())
}

/// The core scenarios, run one after another with `opts` (each starts its
/// own cluster); the first failure names its scenario.
pub fn core_checks(opts: &ClusterOpts) -> Result<(), String> {
    let core: [(&str, RunFn); 4] = [
        ("commit-needs-quorum", commit_needs_quorum::run),
        ("reads-work", reads_work::run),
        ("follower-forwards", follower_forwards::run),
        ("leader-failover", leader_failover::run),
    ];
    for (name, run) in core {
        run(opts).map_err(|e| format!("{name} with {} replicas: {e}", opts.replicas))?;
    }
    Ok(())
}

/// Parses `ERR NOQUORUM <live>/<needed>...` into `(live, needed)`.
pub fn parse_noquorum(reply: &str) -> Option<(usize, usize)> {
    let rest = reply.strip_prefix("ERR NOQUORUM ")?;
    let counts = rest.split(' ').next()?;
    let (live, needed) = counts.split_once('/')?;
    Some((live.parse().ok()?, needed.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noquorum_reply_parses_with_and_without_details() {
        assert_eq!(parse_noquorum("ERR NOQUORUM 1/2"), Some((1, 2)));
        assert_eq!(parse_noquorum("ERR NOQUORUM 3/4 down=1,2"), Some((3, 4)));
        assert_eq!(parse_noquorum("ERR NOQUORUM x/2"), None);
        assert_eq!(parse_noquorum("ERR TIMEOUT"), None);
    }

    #[test]
    fn scenario_names_are_unique() {
        for (i, s) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|t| t.name != s.name), "duplicate {}", s.name);
            assert!(find(s.name).is_some());
        }
    }
}
