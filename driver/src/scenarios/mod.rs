//! The properties the driver proves against real processes, one file each
//! (DESIGN §7). Each `run` takes the base [`ClusterOpts`] (binary, timings,
//! replica count, extra flags), starts its own cluster and returns `Err` with
//! the reason and the replicas' log tails when the property does not hold.
//! The root integration tests call the same functions with 3 and 5 replicas
//! and other quorums.

use crate::client::Client;
use crate::cluster::{Cluster, ClusterOpts};
use std::time::{Duration, Instant};

pub mod commit_needs_quorum;
pub mod follower_forwards;
pub mod leader_failover;
pub mod leader_steps_down;
pub mod reads_work;

/// One named scenario.
pub struct Scenario {
    /// The name `cargo run -p driver -- <name>` takes.
    pub name: &'static str,
    /// One line: what it proves.
    pub about: &'static str,
    /// Runs it against a cluster started from these options.
    pub run: fn(&ClusterOpts) -> Result<(), String>,
}

/// Every scenario, in the order a full run takes them.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "commit-needs-quorum",
        about: "with fewer than NW live, a PUT is refused with ERR NOQUORUM and never applied",
        run: commit_needs_quorum::run,
    },
    Scenario {
        name: "reads-work",
        about: "keys written through different replicas read back through every replica; DEL removes",
        run: reads_work::run,
    },
    Scenario {
        name: "follower-forwards",
        about: "a PUT sent to a follower is forwarded, commits and reads back everywhere",
        run: follower_forwards::run,
    },
    Scenario {
        name: "leader-failover",
        about: "kill -9 of the leader elects the highest live id in a higher epoch; no write is lost",
        run: leader_failover::run,
    },
    Scenario {
        name: "leader-steps-down",
        about: "a leader whose followers are SIGSTOPped steps down and refuses writes; serves after SIGCONT",
        run: leader_steps_down::run,
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
    let mut cluster = Cluster::start(opts.clone())?;
    body(&mut cluster)
        .and_then(|()| cluster.check_alive())
        .map_err(|e| format!("{e}\n{}", cluster.logs_summary(20)))
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

/// PUT through replica `via`; it must answer `OK <version>`.
pub fn put_ok(c: &Cluster, via: usize, key: &str, value: &str) -> Result<u64, String> {
    c.client(via)?.put(key, value).map_err(|e| format!("PUT {key} via {via}: {e}"))
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
