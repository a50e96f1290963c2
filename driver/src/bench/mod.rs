//! `cargo run --release -p driver -- bench`: one run that starts its own
//! cluster and measures what the server costs, next to floors measured on
//! the same machine in the same run (DESIGN §9 names the command).
//!
//! Workloads, in run order (`--only` picks some):
//! - `put1`: one closed-loop client through a follower;
//! - `put50`, `get50`, `mixed` (90% GET): 50 closed-loop clients, one
//!   connection each, spread over all replicas; GETs read pre-written keys;
//! - `failover`: kill -9 the leader (20 times by default), time to the first
//!   acknowledged PUT through a survivor;
//! - `memory`: load 1,000,000 keys with 100-byte values, RSS per replica
//!   against the raw key+value bytes;
//! - `restart`: with those keys, kill -9 a follower and time its restart;
//! - `memory-random`: the same keys loaded in a pseudo-random order.
//!
//! `memory` and `restart` run on a second, fresh cluster, and
//! `memory-random` on a third: the first one's
//! log of the earlier workloads (kept until its next snapshot) and the heap
//! its allocator keeps would otherwise count as the cost of the keys (31-41
//! MB per replica after the other workloads, against 6.5 MB fresh).
//!
//! The cluster runs the server's default timings (heartbeat 20 ms, election
//! timeout 100 ms, request timeout 3 s): the failover target is measured
//! with them. Elections started during the steady runs (no faults) are
//! counted from STATUS `elections`: each is spurious.
//!
//! Output: a table on stdout, `bench.json` (every number) and `bench.svg`
//! in `--out`. Every loop is bounded in time; the cluster's processes and
//! temp directories go away on drop, also on a panic.
//!
//! # Layout
//! - [`histogram`]: log-bucketed latency histogram (~1% precision).
//! - [`floors`]: loopback RTT, fsync, echo-server rate.
//! - [`workload`]: the closed-loop workloads.
//! - [`pipeline`]: pipelined bulk PUTs.
//! - [`failover`], [`memory`]: the fault and big-store measurements.
//! - [`report`], [`json`]: table, JSON, SVG.

pub mod failover;
pub mod floors;
pub mod histogram;
pub mod json;
pub mod memory;
pub mod pipeline;
pub mod proc_stat;
pub mod report;
pub mod workload;

use crate::cluster::{Cluster, ClusterOpts};
use report::{Meta, Report};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use workload::{Mix, Workload};

/// Every workload name `--only` takes, in run order.
pub const WORKLOADS: &[&str] =
    &["put1", "put50", "get50", "mixed", "failover", "memory", "restart", "memory-random"];
/// Clients of the 50-client workloads.
const CLIENTS: usize = 50;
/// Loader connections for the hot keys of `get50` and `mixed`.
const PRELOAD_CONNS: usize = 4;
/// Bound for pre-writing the hot keys.
const PRELOAD_TIME_MAX: Duration = Duration::from_secs(120);
/// The server's own defaults (DESIGN §3.2), which the failover target assumes.
const HEARTBEAT_MS: u64 = 20;
/// See [`HEARTBEAT_MS`].
const ELECTION_TIMEOUT_MS: u64 = 100;
/// See [`HEARTBEAT_MS`].
const REQUEST_TIMEOUT_MS: u64 = 3000;

/// The command line of `bench`.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    /// `--replicas`, N.
    pub replicas: usize,
    /// `--fsync always|never`.
    pub fsync: bool,
    /// `--seconds`: measured time per steady workload.
    pub seconds: f64,
    /// `--out`: where `bench.json` and `bench.svg` go.
    pub out: PathBuf,
    /// `--only`: the workloads to run, in run order.
    pub only: Vec<&'static str>,
    /// `--failover-rounds`: leader kills.
    pub failover_rounds: usize,
    /// `--memory-keys`: keys of the memory load.
    pub memory_keys: u64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            replicas: 3,
            fsync: true,
            seconds: 10.0,
            out: PathBuf::from("target/bench"),
            only: WORKLOADS.to_vec(),
            failover_rounds: 20,
            memory_keys: 1_000_000,
        }
    }
}

/// The usage text.
pub const USAGE: &str = "\
usage: driver bench [--replicas 3|5] [--fsync always|never] [--seconds S]
                    [--out DIR] [--only put1,put50,get50,mixed,failover,memory,restart,memory-random]
                    [--failover-rounds N] [--memory-keys N]
defaults: 3 replicas, fsync always, 10 s per workload, out target/bench, all
workloads, 20 failover rounds, 1000000 memory keys. `restart` uses the memory
load, so it runs the load too.
";

impl Args {
    /// Parses `--flag value` and `--flag=value` forms.
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut a = Args::default();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?,
            };
            let bad = |what: &str| format!("{flag} {value:?}: {what}");
            match flag {
                "--replicas" => {
                    a.replicas = value.parse().map_err(|_| bad("not a number"))?;
                    if !(3..=9).contains(&a.replicas) {
                        return Err(bad("must be 3..=9 (3 or 5 are the measured setups)"));
                    }
                }
                "--fsync" => {
                    a.fsync = match value.as_str() {
                        "always" => true,
                        "never" => false,
                        _ => return Err(bad("must be always or never")),
                    }
                }
                "--seconds" => {
                    a.seconds = value.parse().map_err(|_| bad("not a number"))?;
                    if !(a.seconds >= 1.0 && a.seconds <= 3600.0) {
                        return Err(bad("must be 1..=3600"));
                    }
                }
                "--out" => a.out = PathBuf::from(value),
                "--only" => a.only = parse_only(&value)?,
                "--failover-rounds" => {
                    a.failover_rounds = value.parse().map_err(|_| bad("not a number"))?;
                    if a.failover_rounds == 0 {
                        return Err(bad("must be at least 1"));
                    }
                }
                "--memory-keys" => {
                    a.memory_keys = value.parse().map_err(|_| bad("not a number"))?;
                    if a.memory_keys == 0 || a.memory_keys > memory::MEMORY_KEYS_MAX {
                        let max = memory::MEMORY_KEYS_MAX;
                        return Err(bad(&format!("must be 1..={max} (keys are m + 7 digits)")));
                    }
                }
                _ => return Err(format!("unknown flag {flag:?}")),
            }
        }
        Ok(a)
    }

    fn wants(&self, name: &str) -> bool {
        self.only.contains(&name)
    }
}

/// `put1,mixed` -> the known names, in run order.
fn parse_only(list: &str) -> Result<Vec<&'static str>, String> {
    let asked: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if let Some(unknown) = asked.iter().find(|a| !WORKLOADS.contains(a)) {
        return Err(format!(
            "--only: unknown workload {unknown:?}; known: {}",
            WORKLOADS.join(",")
        ));
    }
    if asked.is_empty() {
        return Err("--only: no workload named".into());
    }
    Ok(WORKLOADS.iter().copied().filter(|w| asked.contains(w)).collect())
}

/// Runs `bench` with the arguments after the word `bench`.
pub fn main(argv: &[String]) -> ExitCode {
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let binary = match server_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: no server binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = run(&args, &binary);
    print!("{}", report.table());
    if let Err(e) = write_outputs(&args.out, &report) {
        eprintln!("bench: {e}");
        return ExitCode::FAILURE;
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// As the scenarios do: `QUORUMKV_BIN`; else, under cargo, a fresh release build.
fn server_binary() -> Result<PathBuf, String> {
    if std::env::var_os("QUORUMKV_BIN").is_none() && std::env::var_os("CARGO").is_some() {
        return crate::binary::build_release();
    }
    crate::binary::locate_server()
}

/// Prints a progress line on stderr, stamped with the UTC time of day.
fn progress(msg: &str) {
    let now = utc_string(SystemTime::now());
    eprintln!("[bench {}] {msg}", &now[11..19]);
}

/// Runs the selected parts; a part that fails is noted and the rest go on.
pub fn run(args: &Args, binary: &Path) -> Report {
    let mut report = Report {
        meta: Meta {
            started: utc_string(SystemTime::now()),
            commit: git_commit(),
            replicas: args.replicas,
            fsync: args.fsync,
            seconds: args.seconds,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg_start: proc_stat::loadavg(),
            binary: binary.display().to_string(),
            ..Meta::default()
        },
        ..Report::default()
    };
    progress(&format!(
        "{} replicas, fsync {}, {} s per workload; workloads {}; loadavg {}",
        args.replicas,
        if args.fsync { "always" } else { "never" },
        args.seconds,
        args.only.join(","),
        report.meta.loadavg_start
    ));
    // Cluster roots live in the temp dir too, so this is their filesystem.
    match floors::measure(&std::env::temp_dir(), &progress) {
        Ok(f) => {
            progress(&format!(
                "floors: RTT p50 {:.1} us, fsync p50 {:.0} us, echo-50 {:.0} rt/s",
                f.rtt.p50_us, f.fsync.p50_us, f.echo_ops_per_sec
            ));
            report.floors = Some(f);
        }
        Err(e) => report.errors.push(format!("floors: {e}")),
    }
    let opts = ClusterOpts {
        replicas: args.replicas,
        binary: binary.to_path_buf(),
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        fsync: args.fsync,
        extra_flags: Vec::new(),
    };
    // The memory load gets a cluster of its own: what the earlier workloads
    // leave behind (their log until the next snapshot, heap the allocator
    // keeps) is not what a million keys cost.
    if FIRST_CLUSTER_WORKLOADS.iter().any(|w| args.wants(w)) {
        on_fresh_cluster(args, &opts, &mut report, run_on_cluster);
    }
    if args.wants("memory") || args.wants("restart") {
        on_fresh_cluster(args, &opts, &mut report, run_memory_phase);
    }
    if args.wants("memory-random") {
        on_fresh_cluster(args, &opts, &mut report, run_memory_random_phase);
    }
    // Again at the end: other work on the machine only makes a floor worse.
    match floors::measure(&std::env::temp_dir(), &progress) {
        Ok(f) => report.floors_end = Some(f),
        Err(e) => report.errors.push(format!("floors at the end: {e}")),
    }
    report.meta.finished = utc_string(SystemTime::now());
    report.meta.loadavg_end = proc_stat::loadavg();
    report
}

/// The workloads that need a running cluster.
fn run_on_cluster(args: &Args, cluster: &mut Cluster, report: &mut Report) {
    let leader = match failover::settle(cluster) {
        Ok(l) => l,
        Err(e) => {
            report.errors.push(format!("no settled leader: {e}"));
            return;
        }
    };
    progress(&format!("cluster of {} up, leader {leader}", cluster.size()));
    let all: Vec<usize> = cluster.ids().collect();
    let follower = all.iter().copied().find(|&id| id != leader).unwrap_or(1);
    let measure = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64((args.seconds / 5.0).min(1.0));
    let steady = [
        ("put1", 1, vec![follower], Mix::Put),
        ("put50", CLIENTS, all.clone(), Mix::Put),
        ("get50", CLIENTS, all.clone(), Mix::Get),
        ("mixed", CLIENTS, all.clone(), Mix::Mixed { get_percent: 90 }),
    ];
    let mut preloaded = false;
    for (name, clients, targets, mix) in steady {
        if !args.wants(name) {
            continue;
        }
        if matches!(mix, Mix::Get | Mix::Mixed { .. }) && !preloaded {
            preloaded = true;
            if let Err(e) = preload_hot_keys(cluster) {
                report.errors.push(format!("{name}: {e}"));
                continue;
            }
        }
        progress(&format!("{name}: {clients} clients via replica(s) {targets:?}"));
        let w = Workload { name, clients, targets, mix, warmup, measure };
        let result = workload::run(cluster, &w, &progress);
        progress(&format!(
            "{name}: {:.0} ops/s, p50 {:.0} us, p99 {:.0} us, {} errors, {:?} elections",
            result.ops_per_sec,
            result.latency.p50_us,
            result.latency.p99_us,
            result.errors,
            result.elections
        ));
        report.loads.push(result);
        if crashed(cluster, report, &args.out) {
            return;
        }
    }
    if args.wants("failover") {
        let f = failover::run(cluster, args.failover_rounds, &progress);
        if let Some(e) = &f.error {
            report.errors.push(format!("failover: {e}"));
        }
        report.failover = Some(f);
        // A crash here is noted by the caller's check.
    }
}

/// The workloads that run on the first cluster; `memory` and `restart` get
/// a second one, `memory-random` a third.
const FIRST_CLUSTER_WORKLOADS: [&str; 5] = ["put1", "put50", "get50", "mixed", "failover"];

/// Starts a cluster, runs `phase` on it, and notes a replica that crashed.
/// Once a replica crashed in an earlier phase, the rest is skipped.
fn on_fresh_cluster(
    args: &Args,
    opts: &ClusterOpts,
    report: &mut Report,
    phase: fn(&Args, &mut Cluster, &mut Report),
) {
    let crash_noted = |report: &Report| report.errors.iter().any(|e| e.starts_with(CRASHED));
    if crash_noted(report) {
        return;
    }
    match Cluster::start(opts.clone()) {
        Ok(mut cluster) => {
            phase(args, &mut cluster, report);
            if !crash_noted(report) {
                crashed(&mut cluster, report, &args.out);
            }
        }
        Err(e) => report.errors.push(format!("cluster start: {e}")),
    }
}

/// Loads the memory keys in `order`; an error is noted under `name`.
fn memory_load(
    args: &Args,
    cluster: &mut Cluster,
    order: memory::KeyOrder,
    name: &str,
    report: &mut Report,
) -> memory::MemoryResult {
    let m = memory::run_memory(cluster, args.memory_keys, order, &progress);
    if let Some(e) = &m.error {
        report.errors.push(format!("{name}: {e}"));
    }
    m
}

/// `memory-random`, on a cluster of its own.
fn run_memory_random_phase(args: &Args, cluster: &mut Cluster, report: &mut Report) {
    let m = memory_load(args, cluster, memory::KeyOrder::Scattered, "memory-random", report);
    report.memory_random = Some(m);
}

/// `memory` and `restart`, on a cluster of their own.
fn run_memory_phase(args: &Args, cluster: &mut Cluster, report: &mut Report) {
    let m = memory_load(args, cluster, memory::KeyOrder::Ascending, "memory", report);
    report.memory = Some(m);
    if crashed(cluster, report, &args.out) {
        return;
    }
    if args.wants("restart") {
        let r = memory::run_restart(cluster, &progress);
        if let Some(e) = &r.error {
            report.errors.push(format!("restart: {e}"));
        }
        report.restart = Some(r);
    }
}

/// How the error for a crashed replica starts.
const CRASHED: &str = "a replica crashed";

/// Whether a replica exited on its own. If so, notes it in `report`, copies
/// the replicas' logs into `out/replica-logs` (the cluster's temp root goes
/// away on drop) and returns true: the remaining parts are skipped, since
/// they would only fail the same way.
fn crashed(cluster: &mut Cluster, report: &mut Report, out: &Path) -> bool {
    let Err(e) = cluster.check_alive() else { return false };
    let logs = out.join("replica-logs");
    let kept = match copy_logs(&cluster.root().join("logs"), &logs) {
        Ok(()) => format!("logs in {}", logs.display()),
        Err(e) => format!("logs not kept: {e}"),
    };
    progress(&format!("{CRASHED} ({kept}); skipping the rest"));
    report.errors.push(format!("{CRASHED} ({kept}): {e}"));
    true
}

/// Copies every file of `from` into `to`.
fn copy_logs(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("create {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target)
            .map_err(|e| format!("copy to {}: {e}", target.display()))?;
    }
    Ok(())
}

/// Writes every hot key once, through the leader, so GETs find values.
fn preload_hot_keys(cluster: &mut Cluster) -> Result<(), String> {
    let leader = failover::settle(cluster)?;
    progress(&format!("pre-writing {} keys for the GET workloads", workload::HOT_KEYS));
    let addrs = vec![cluster.addr(leader); PRELOAD_CONNS];
    let stats = pipeline::load(
        &addrs,
        workload::HOT_KEYS,
        workload::hot_key,
        workload::value,
        Instant::now() + PRELOAD_TIME_MAX,
        "pre-write",
        &progress,
    );
    if stats.acked < workload::HOT_KEYS {
        return Err(format!(
            "pre-wrote {} of {} keys; first error: {:?}",
            stats.acked,
            workload::HOT_KEYS,
            stats.first_error
        ));
    }
    Ok(())
}

/// Writes `bench.json` and `bench.svg` into `out`.
fn write_outputs(out: &Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let json = out.join("bench.json");
    std::fs::write(&json, format!("{}\n", report.to_json()))
        .map_err(|e| format!("write {}: {e}", json.display()))?;
    let svg = out.join("bench.svg");
    std::fs::write(&svg, report.svg()).map_err(|e| format!("write {}: {e}", svg.display()))?;
    eprintln!("bench: wrote {} and {}", json.display(), svg.display());
    Ok(())
}

/// The workspace's short commit, with `-dirty` when it has local changes.
fn git_commit() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).current_dir(&root).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_string(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// xorshift64*: a small, fast, seedable generator for picking keys. Not for
/// anything that needs good randomness.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift must not start at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x2545_f491_4f6c_dd1d } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0; the modulo bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn args_parse_both_forms_and_reject_bad_values() {
        assert_eq!(Args::parse(&[]).unwrap(), Args::default());
        let a =
            Args::parse(&argv("--replicas 5 --fsync=never --seconds 3 --only mixed,put1")).unwrap();
        assert_eq!((a.replicas, a.fsync, a.seconds), (5, false, 3.0));
        assert_eq!(a.only, vec!["put1", "mixed"]);
        assert!(Args::parse(&argv("--replicas 2")).is_err());
        assert!(Args::parse(&argv("--fsync sometimes")).is_err());
        assert!(Args::parse(&argv("--only put1,bogus")).is_err());
        assert!(Args::parse(&argv("--seconds")).is_err());
        assert!(Args::parse(&argv("--frobnicate 1")).is_err());
        assert_eq!(Args::parse(&argv("--help")), Err(String::new()));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_string(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // leap day 2024
        assert_eq!(utc_string(t), "2024-02-29 12:34:56 UTC");
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }
}
