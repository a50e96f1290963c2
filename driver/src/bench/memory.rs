//! Memory and restart time with a large store: load many keys with 100-byte
//! values (pipelined), compare each replica's resident memory with the raw
//! size of the data, then kill -9 a follower and time its way back: until it
//! answers STATUS, and until its commit index is back where it was.
//!
//! The keys go in ascending order (`memory`) or scattered over the same key
//! space (`memory-random`, [`KeyOrder::Scattered`]). The second is the harder
//! case for the store: inserts land all over it, pages split everywhere, and
//! every periodic snapshot is saved while the load writes pages it holds.

use super::json::Json;
use super::pipeline::{self, LoadStats};
use super::{failover, proc_stat, workload};
use crate::cluster::Cluster;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// Loader connections, all to the leader (a follower would only forward).
const LOAD_CONNS: usize = 4;
/// The load stops sending after this long, loaded or not.
const LOAD_TIME_MAX: Duration = Duration::from_secs(900);
/// Bound for every replica to reach the leader's commit index after the load.
const CATCH_UP_TIME_MAX: Duration = Duration::from_secs(120);
/// Bound for a restarted replica to get its commit index back.
const RESTART_TIME_MAX: Duration = Duration::from_secs(300);
/// How often the restart is polled: the resolution of the restart times.
const RESTART_POLL: Duration = Duration::from_millis(5);
/// How often the catch-up wait polls.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// The key of the `i`-th loaded entry: 8 bytes for every i below 10^7.
pub fn memory_key(i: u64) -> String {
    format!("m{i:07}")
}

/// Keys the memory load can name: [`memory_key`] has 7 digits.
pub const MEMORY_KEYS_MAX: u64 = 10_000_000;

/// The key of the `i`-th entry of a scattered load: the same keys as
/// [`memory_key`] (the same raw bytes), in a pseudo-random order.
pub fn scattered_key(i: u64) -> String {
    memory_key(scatter(i))
}

/// A fixed pseudo-random permutation of `0..MEMORY_KEYS_MAX`: a bijection
/// of 24-bit numbers (odd multiplications and xor-shifts, each invertible),
/// walked until it lands below the bound, which keeps it a bijection there.
pub fn scatter(i: u64) -> u64 {
    assert!(i < MEMORY_KEYS_MAX, "key number {i} out of range");
    const MASK: u64 = (1 << 24) - 1;
    let mut x = i;
    loop {
        x = (x.wrapping_mul(0x9E_3779) ^ 0x5A_5A5A) & MASK;
        x ^= x >> 12;
        x = x.wrapping_mul(0x2C_1B3D) & MASK;
        x ^= x >> 11;
        if x < MEMORY_KEYS_MAX {
            return x;
        }
    }
}

/// In which order the memory load writes its keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyOrder {
    /// `m0000000`, `m0000001`, ...: every insert goes to the end.
    #[default]
    Ascending,
    /// The same keys in [`scatter`] order.
    Scattered,
}

impl KeyOrder {
    /// As `bench.json` and the table name it.
    pub fn name(self) -> &'static str {
        match self {
            KeyOrder::Ascending => "ascending",
            KeyOrder::Scattered => "random",
        }
    }
}

/// One replica's memory.
#[derive(Clone, Debug, Default)]
pub struct ReplicaMemory {
    /// Replica id.
    pub id: usize,
    /// VmRSS before the load, bytes.
    pub rss_before: u64,
    /// VmRSS after the load, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS) after the load, bytes.
    pub hwm: u64,
}

/// What the memory workload measured.
#[derive(Clone, Debug, Default)]
pub struct MemoryResult {
    /// Keys asked for.
    pub keys: u64,
    /// The order they were written in.
    pub order: KeyOrder,
    /// How the load went.
    pub load: LoadStats,
    /// Sum of key and value bytes of the acknowledged keys.
    pub raw_bytes: u64,
    /// Commit index all replicas reached after the load.
    pub commit: Option<u64>,
    /// Elections started during the load (no faults, so each is spurious);
    /// `None` if a STATUS failed.
    pub elections: Option<u64>,
    /// Per replica.
    pub replicas: Vec<ReplicaMemory>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

impl MemoryResult {
    /// Every number, for `bench.json`.
    pub fn to_json(&self) -> Json {
        let raw = self.raw_bytes.max(1) as f64;
        let replicas: Vec<Json> = self
            .replicas
            .iter()
            .map(|r| {
                Json::obj()
                    .set("replica", r.id)
                    .set("rss_before_bytes", r.rss_before)
                    .set("rss_bytes", r.rss)
                    .set("hwm_bytes", r.hwm)
                    .set("rss_over_raw", r.rss as f64 / raw)
                    .set("rss_growth_over_raw", r.rss.saturating_sub(r.rss_before) as f64 / raw)
            })
            .collect();
        Json::obj()
            .set("keys", self.keys)
            .set("order", self.order.name())
            .set("acked", self.load.acked)
            .set("errors", self.load.errors)
            .set("first_error", self.load.first_error.clone())
            .set("value_bytes", workload::VALUE_BYTES)
            .set("raw_bytes", self.raw_bytes)
            .set("load_secs", self.load.secs)
            .set("load_ops_per_sec", self.load.acked as f64 / self.load.secs.max(1e-9))
            .set("commit", self.commit)
            .set("elections", self.elections)
            .set("replicas", Json::Arr(replicas))
            .set("error", self.error.clone())
    }
}

/// Loads `keys` keys in `order` through the leader and reads every replica's RSS.
pub fn run_memory(
    cluster: &mut Cluster,
    keys: u64,
    order: KeyOrder,
    progress: &dyn Fn(&str),
) -> MemoryResult {
    let mut result = MemoryResult { keys, order, ..MemoryResult::default() };
    let leader = match failover::settle(cluster) {
        Ok(l) => l,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    let rss_before = rss_all(cluster);
    let elections_before = workload::elections_sum(cluster);
    let addrs = vec![cluster.addr(leader); LOAD_CONNS];
    let deadline = Instant::now() + LOAD_TIME_MAX;
    result.load = pipeline::load(
        &addrs,
        keys,
        match order {
            KeyOrder::Ascending => memory_key,
            KeyOrder::Scattered => scattered_key,
        },
        workload::value,
        deadline,
        "memory load",
        progress,
    );
    let entry_bytes = (memory_key(0).len() + workload::VALUE_BYTES) as u64;
    result.raw_bytes = result.load.acked * entry_bytes;
    progress(&format!(
        "memory: {} keys acknowledged in {:.1} s, {} errors; waiting for every replica to catch up",
        result.load.acked, result.load.secs, result.load.errors
    ));
    match wait_commits_equal(cluster) {
        Ok(c) => result.commit = Some(c),
        Err(e) => result.error = Some(e),
    }
    result.elections = elections_before
        .zip(workload::elections_sum(cluster))
        .map(|(before, after)| after.saturating_sub(before));
    let rss_after = rss_all(cluster);
    result.replicas = rss_after
        .iter()
        .map(|&(id, rss, hwm)| ReplicaMemory {
            id,
            rss_before: rss_before.iter().find(|r| r.0 == id).map_or(0, |r| r.1),
            rss,
            hwm,
        })
        .collect();
    result
}

/// `(id, VmRSS, VmHWM)` of every running replica.
fn rss_all(cluster: &mut Cluster) -> Vec<(usize, u64, u64)> {
    let ids = cluster.running_ids();
    ids.iter()
        .filter_map(|&id| {
            let (rss, hwm) = proc_stat::rss_bytes(cluster.pid(id)?)?;
            Some((id, rss, hwm))
        })
        .collect()
}

/// Waits until every replica reports the same commit index; returns it.
fn wait_commits_equal(cluster: &mut Cluster) -> Result<u64, String> {
    let deadline = Instant::now() + CATCH_UP_TIME_MAX;
    loop {
        let commits: Vec<Option<u64>> =
            cluster.ids().map(|id| cluster.status(id).ok()?.get("commit")?.parse().ok()).collect();
        if let Some(Some(c)) = commits.first() {
            if commits.iter().all(|x| *x == Some(*c)) {
                return Ok(*c);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("commit indexes still differ: {commits:?}"));
        }
        thread::sleep(CATCH_UP_POLL);
    }
}

/// What the restart measured.
#[derive(Clone, Debug, Default)]
pub struct RestartResult {
    /// The replica killed and restarted (a follower).
    pub id: usize,
    /// Its commit index before the kill.
    pub commit_before: u64,
    /// Size of its data directory before the kill, bytes.
    pub data_bytes: u64,
    /// Spawn to the first STATUS answer, ms.
    pub status_ms: Option<f64>,
    /// Spawn to a STATUS with the commit index back at `commit_before`, ms.
    pub caught_up_ms: Option<f64>,
    /// The replica's own `recovered ... in Nms` figure.
    pub log_recovered_ms: Option<u64>,
    /// That log line.
    pub log_line: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl RestartResult {
    /// Every number, for `bench.json`.
    pub fn to_json(&self) -> Json {
        Json::obj()
            .set("replica", self.id)
            .set("commit_before", self.commit_before)
            .set("data_dir_bytes", self.data_bytes)
            .set("status_ms", self.status_ms)
            .set("commit_back_ms", self.caught_up_ms)
            .set("log_recovered_ms", self.log_recovered_ms)
            .set("log_line", self.log_line.clone())
            .set("error", self.error.clone())
    }
}

/// Kills a follower and times its restart.
pub fn run_restart(cluster: &mut Cluster, progress: &dyn Fn(&str)) -> RestartResult {
    let mut result = RestartResult::default();
    if let Err(e) = restart_follower(cluster, &mut result, progress) {
        result.error = Some(e);
    }
    result
}

fn restart_follower(
    cluster: &mut Cluster,
    result: &mut RestartResult,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    let leader = failover::settle(cluster)?;
    let id = cluster.ids().find(|&id| id != leader).ok_or("no follower to restart")?;
    result.id = id;
    let commit = cluster.status(id)?.get("commit").and_then(|c| c.parse().ok());
    result.commit_before = commit.ok_or("STATUS without a commit index")?;
    result.data_bytes = dir_bytes(&cluster.data_dir(id));
    cluster.kill(id)?;
    let log_offset = fs::metadata(cluster.log_path(id)).map(|m| m.len()).unwrap_or(0);
    progress(&format!(
        "restart: killed replica {id} (commit {}, {:.1} MB of data); restarting",
        result.commit_before,
        result.data_bytes as f64 / 1e6
    ));
    let t0 = Instant::now();
    cluster.respawn(id)?;
    let deadline = t0 + RESTART_TIME_MAX;
    loop {
        if !cluster.is_running(id) {
            return Err(format!("replica {id} exited during restart"));
        }
        if let Ok(s) = cluster.status(id) {
            let at = t0.elapsed().as_secs_f64() * 1000.0;
            result.status_ms.get_or_insert(at);
            let commit: Option<u64> = s.get("commit").and_then(|c| c.parse().ok());
            if commit.is_some_and(|c| c >= result.commit_before) {
                result.caught_up_ms = Some(at);
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("commit index not back within {RESTART_TIME_MAX:?}"));
        }
        thread::sleep(RESTART_POLL);
    }
    let log = fs::read(cluster.log_path(id)).unwrap_or_default();
    let start = usize::try_from(log_offset).unwrap_or(usize::MAX).min(log.len());
    let text = String::from_utf8_lossy(&log[start..]);
    if let Some(line) = text.lines().find(|l| l.contains("recovered ")) {
        result.log_line = Some(line.to_string());
        result.log_recovered_ms = recovered_ms(line);
    }
    Ok(())
}

/// The `N` of `... in Nms` in a `recovered` log line.
fn recovered_ms(line: &str) -> Option<u64> {
    let after = &line[line.rfind(" in ")? + 4..];
    after.split("ms").next()?.trim().parse().ok()
}

/// Total size of the files under `dir`, bytes.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_recovered_log_line() {
        let line = "r2 e0 follower recovered /tmp/x/data/2 (commit index 1000003, 12 log \
                    entries) in 1234ms; seed 99";
        assert_eq!(recovered_ms(line), Some(1234));
        assert_eq!(recovered_ms("recovered nothing"), None);
        assert_eq!(memory_key(999_999).len(), 8);
    }

    #[test]
    fn scatter_is_a_permutation_of_the_key_space_out_of_order() {
        let n = MEMORY_KEYS_MAX as usize;
        let mut seen = vec![false; n];
        for i in 0..MEMORY_KEYS_MAX {
            let x = scatter(i) as usize;
            assert!(!seen[x], "{x} came twice");
            seen[x] = true;
        }
        // Far from ascending: about half of the neighbours go up.
        let ups = (0..100_000u64).filter(|&i| scatter(i + 1) > scatter(i)).count();
        assert!((40_000..60_000).contains(&ups), "{ups} of 100000 neighbours ascend");
        assert_eq!(scattered_key(123).len(), memory_key(123).len());
    }
}
