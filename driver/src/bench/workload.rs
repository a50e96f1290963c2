//! Closed-loop workloads: each client thread holds one connection and sends
//! its next command as soon as the last reply arrived. A warm-up is run but
//! not recorded; an operation counts when it completes inside the measured
//! window, so ops/s is exact for that window.

use super::histogram::{Histogram, Summary};
use super::json::Json;
use super::proc_stat;
use super::{floors::summary_json, Rng};
use crate::client::Client;
use crate::cluster::Cluster;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Keys the steady workloads write and read: `k0000000` .. `k0009999`.
pub const HOT_KEYS: u64 = 10_000;
/// Bytes per value written by the workloads (and by the memory load).
pub const VALUE_BYTES: usize = 100;
/// Socket timeout of a workload client: past the server's request timeout
/// (3 s), so a slow answer is seen rather than cut off.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed connect, so a dead replica is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What each client sends.
#[derive(Clone, Copy, Debug)]
pub enum Mix {
    /// `PUT` only.
    Put,
    /// `GET` only.
    Get,
    /// `GET` with this percent chance, else `PUT`.
    Mixed {
        /// Percent of GETs, 0..=100.
        get_percent: u64,
    },
}

/// One workload to run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short name, as in `--only`.
    pub name: &'static str,
    /// Client threads, one connection each.
    pub clients: usize,
    /// Replica ids the clients connect to, round robin.
    pub targets: Vec<usize>,
    /// What they send.
    pub mix: Mix,
    /// Warm-up, not recorded.
    pub warmup: Duration,
    /// Measured window.
    pub measure: Duration,
}

/// What one workload measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// The workload's name.
    pub name: String,
    /// Client threads.
    pub clients: usize,
    /// Replica ids the clients connected to.
    pub targets: Vec<usize>,
    /// The measured window, s.
    pub secs: f64,
    /// Successful operations completed in the window.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Failed operations (an `ERR` reply or an IO error) in the window.
    pub errors: u64,
    /// The first failure, verbatim.
    pub first_error: Option<String>,
    /// Latency of successful operations.
    pub latency: Summary,
    /// Latency per command, for a mixed workload: `("get", ..)`, `("put", ..)`.
    pub by_command: Vec<(String, Summary)>,
    /// Elections the replicas started during the run (sum of STATUS
    /// `elections` after minus before); `None` if a STATUS failed.
    pub elections: Option<u64>,
    /// CPU seconds each replica used during the run: `(id, s)`.
    pub replica_cpu_secs: Vec<(usize, f64)>,
    /// CPU seconds this driver process used during the run.
    pub driver_cpu_secs: f64,
    /// `/proc/loadavg` before the run.
    pub loadavg_before: String,
    /// A short fsync measurement (2 KiB append + fsync) just before the run.
    pub fsync_before: Option<Summary>,
}

impl LoadResult {
    /// Every number, for `bench.json`.
    pub fn to_json(&self) -> Json {
        let by_command: Vec<Json> = self
            .by_command
            .iter()
            .map(|(c, s)| Json::obj().set("command", c.as_str()).set("latency_us", summary_json(s)))
            .collect();
        let cpu: Vec<Json> = self
            .replica_cpu_secs
            .iter()
            .map(|(id, s)| Json::obj().set("replica", *id).set("cpu_secs", *s))
            .collect();
        let total_cpu: f64 = self.replica_cpu_secs.iter().map(|(_, s)| s).sum();
        let cpu_us_per_op =
            if self.ops > 0 { Some(total_cpu * 1e6 / self.ops as f64) } else { None };
        Json::obj()
            .set("name", self.name.as_str())
            .set("clients", self.clients)
            .set("targets", self.targets.clone())
            .set("secs", self.secs)
            .set("ops", self.ops)
            .set("ops_per_sec", self.ops_per_sec)
            .set("errors", self.errors)
            .set("first_error", self.first_error.clone())
            .set("latency_us", summary_json(&self.latency))
            .set("by_command", Json::Arr(by_command))
            .set("elections", self.elections)
            .set("replica_cpu", Json::Arr(cpu))
            .set("replica_cpu_us_per_op", cpu_us_per_op)
            .set("driver_cpu_secs", self.driver_cpu_secs)
            .set("loadavg_before", self.loadavg_before.as_str())
            .set("fsync_before_us", self.fsync_before.as_ref().map(summary_json))
    }
}

/// What one client thread brings back.
#[derive(Default)]
struct WorkerOut {
    /// Latency per command kind: index 0 GET, 1 PUT.
    hist: [Histogram; 2],
    errors: u64,
    first_error: Option<String>,
}

/// Shared counters for the progress line.
#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// Runs `w` against `cluster` and measures it.
pub fn run(cluster: &mut Cluster, w: &Workload, progress: &dyn Fn(&str)) -> LoadResult {
    let loadavg_before = proc_stat::loadavg();
    let fsync_before = super::floors::fsync_sample(cluster.root()).ok();
    let elections_before = elections_sum(cluster);
    let cpu_before = replica_cpu(cluster);
    let driver_before = proc_stat::cpu_secs(std::process::id()).unwrap_or(0.0);
    let start = Instant::now() + w.warmup;
    let end = start + w.measure;
    let counters = Arc::new(Counters::default());
    let mut handles = Vec::new();
    for t in 0..w.clients {
        let id = w.targets[t % w.targets.len()];
        let addr = cluster.addr(id);
        let (mix, counters) = (w.mix, counters.clone());
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
        let spawned = thread::Builder::new()
            .name(format!("bench client {t}"))
            .spawn(move || client_loop(&addr, mix, seed, start, end, &counters));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => progress(&format!("{}: cannot spawn client {t}: {e}", w.name)),
        }
    }
    report_progress(w, start, end, &counters, &handles, progress);
    let mut out = WorkerOut::default();
    for h in handles {
        match h.join() {
            Ok(o) => {
                out.hist[0].merge(&o.hist[0]);
                out.hist[1].merge(&o.hist[1]);
                out.errors += o.errors;
                out.first_error = out.first_error.or(o.first_error);
            }
            Err(_) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| "a client thread panicked".into());
            }
        }
    }
    let driver_cpu_secs = proc_stat::cpu_secs(std::process::id()).unwrap_or(0.0) - driver_before;
    let cpu_after = replica_cpu(cluster);
    let elections_after = elections_sum(cluster);
    let mut all = out.hist[0].clone();
    all.merge(&out.hist[1]);
    let secs = w.measure.as_secs_f64();
    let by_command = match w.mix {
        Mix::Mixed { .. } => vec![
            ("get".to_string(), out.hist[0].summary()),
            ("put".to_string(), out.hist[1].summary()),
        ],
        Mix::Put | Mix::Get => Vec::new(),
    };
    LoadResult {
        name: w.name.to_string(),
        clients: w.clients,
        targets: w.targets.clone(),
        secs,
        ops: all.count(),
        ops_per_sec: all.count() as f64 / secs,
        errors: out.errors,
        first_error: out.first_error,
        latency: all.summary(),
        by_command,
        elections: elections_before.zip(elections_after).map(|(b, a)| a.saturating_sub(b)),
        replica_cpu_secs: cpu_before
            .iter()
            .filter_map(|(id, b)| {
                let a = cpu_after.iter().find(|(i, _)| i == id)?.1;
                Some((*id, a - b))
            })
            .collect(),
        driver_cpu_secs,
        loadavg_before,
        fsync_before,
    }
}

/// Prints a progress line every second until the clients are done.
fn report_progress(
    w: &Workload,
    start: Instant,
    end: Instant,
    counters: &Counters,
    handles: &[thread::JoinHandle<WorkerOut>],
    progress: &dyn Fn(&str),
) {
    let mut last = (Instant::now(), 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(
            PROGRESS_EVERY
                .min(end.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(50)),
        );
        let now = Instant::now();
        // After the window the clients only finish their last operation.
        if now.duration_since(last.0) < PROGRESS_EVERY || now >= end {
            continue;
        }
        let ops = counters.ops.load(Ordering::Relaxed);
        let rate = (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let phase = if now < start {
            "warm-up".to_string()
        } else {
            let done = now.min(end).duration_since(start).as_secs_f64();
            format!("{done:.0}/{:.0} s", w.measure.as_secs_f64())
        };
        progress(&format!(
            "{}: {phase}, {ops} ops ({rate:.0}/s now), {} errors",
            w.name,
            counters.errors.load(Ordering::Relaxed)
        ));
        last = (now, ops);
    }
}

/// One closed-loop client: connects to `addr` and runs until `end`.
fn client_loop(
    addr: &str,
    mix: Mix,
    seed: u64,
    start: Instant,
    end: Instant,
    counters: &Counters,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut rng = Rng::new(seed);
    let mut client: Option<Client> = None;
    let mut written = 0u64;
    while Instant::now() < end {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr, CLIENT_TIMEOUT) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    note_error(&mut out, counters, start, e);
                    thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
            },
        };
        let is_get = match mix {
            Mix::Put => false,
            Mix::Get => true,
            Mix::Mixed { get_percent } => rng.below(100) < get_percent,
        };
        let key = hot_key(rng.below(HOT_KEYS));
        let t = Instant::now();
        let result = if is_get {
            c.get(&key).map(|_| ())
        } else {
            written += 1;
            c.put(&key, &value(seed.wrapping_add(written))).map(|_| ())
        };
        let done = Instant::now();
        if done >= end {
            break;
        }
        match result {
            Ok(()) if done >= start => {
                out.hist[usize::from(!is_get)].record_duration(done - t);
                counters.ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {}
            Err(e) => {
                // An IO error leaves the connection's reply stream unknown: reconnect.
                if !e.starts_with("ERR ") {
                    client = None;
                }
                note_error(&mut out, counters, start, e);
            }
        }
    }
    out
}

/// Counts a failure if it falls in the measured window.
fn note_error(out: &mut WorkerOut, counters: &Counters, start: Instant, e: String) {
    if Instant::now() >= start {
        out.errors += 1;
        counters.errors.fetch_add(1, Ordering::Relaxed);
        out.first_error.get_or_insert(e);
    }
}

/// The `i`-th hot key.
pub fn hot_key(i: u64) -> String {
    format!("k{i:07}")
}

/// A [`VALUE_BYTES`]-byte value that differs with `n`.
pub fn value(n: u64) -> String {
    format!("{n:0>width$}", width = VALUE_BYTES)
}

/// Sum of STATUS `elections` over every replica; `None` when one does not
/// answer (a sum over fewer replicas would compare wrongly with an earlier one).
pub fn elections_sum(cluster: &mut Cluster) -> Option<u64> {
    cluster.ids().map(|id| cluster.status(id).ok()?.get("elections")?.parse::<u64>().ok()).sum()
}

/// CPU seconds used so far by each running replica: `(id, s)`.
pub fn replica_cpu(cluster: &mut Cluster) -> Vec<(usize, f64)> {
    let ids = cluster.live_ids();
    ids.iter().filter_map(|&id| Some((id, proc_stat::cpu_secs(cluster.pid(id)?)?))).collect()
}
