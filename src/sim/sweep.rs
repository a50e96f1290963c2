//! The seed sweep (DESIGN §7): 10,000 seeds in release builds (about 200 s
//! of CPU on the two-core CI machine, so 2-4 minutes), 50 in debug builds so a
//! plain `cargo test` stays quick.
//!
//! - `SIM_SEED=n cargo test --release sim`: replays seed n, prints its trace.
//! - `SIM_SEEDS=n`: runs n seeds (from `SIM_SEED_FIRST`, default 0).
//! - `SIM_WIPES_PER_RUN=n`: allows n disk wipes per seed (default 1; see `runner::wipes_per_run`).
//! - `SIM_STOP_AFTER_FAILURES=k`: hands out no new seed once k seeds failed
//!   (seeds already running finish, so every seed below the last one handed
//!   out has run and the lowest failing seed reported is the first one).
//!
//! A failing seed prints `reproduce: SIM_SEED=n cargo test --release sim` and
//! the last lines of its trace (the seed is re-run with tracing on: a seed is
//! deterministic, so the second run fails the same way).

use super::runner::{run_seed, SeedResult};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seeds per sweep in release builds (the CI count).
const SEEDS_RELEASE: u64 = 10_000;
/// Seeds per sweep in debug builds.
const SEEDS_DEBUG: u64 = 50;
/// Threads the sweep runs on (the CI machine has two cores).
const SWEEP_THREADS: usize = 2;
/// Trace lines printed for a failing seed.
const TRACE_TAIL_LINES: usize = 200;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")))
}

/// Writes straight to stderr, past the test harness's capture: the trace and
/// the summary line are the point of running the sweep.
fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.write_all(b"\n");
}

/// The command that replays `seed`, with any setting that changes a run.
fn reproduce(seed: u64) -> String {
    let wipes = std::env::var("SIM_WIPES_PER_RUN")
        .map(|v| format!("SIM_WIPES_PER_RUN={v} "))
        .unwrap_or_default();
    format!("reproduce: {wipes}SIM_SEED={seed} cargo test --release sim")
}

fn report_failure(seed: u64, why: &str) {
    let traced = run_seed(seed, true);
    let tail_from = traced.trace.len().saturating_sub(TRACE_TAIL_LINES);
    let mut text = format!("sim: seed {seed} failed: {why}\n");
    if let Err(again) = &traced.outcome {
        if again != why {
            text.push_str(&format!("(the traced re-run failed differently: {again})\n"));
        }
    }
    text.push_str(&format!("--- last {} trace lines ---\n", traced.trace.len() - tail_from));
    text.push_str(&traced.trace[tail_from..].join("\n"));
    text.push('\n');
    text.push_str(&reproduce(seed));
    say(&text);
}

#[test]
fn sim_sweep() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let r = run_seed(seed, true);
        say(&r.trace.join("\n"));
        match &r.outcome {
            Ok(stats) => say(&format!("sim: seed {seed} passed: {stats:?}")),
            Err(why) => say(&format!("sim: seed {seed} failed: {why}\n{}", reproduce(seed))),
        }
        assert!(r.outcome.is_ok(), "seed {seed} failed");
        return;
    }
    let default = if cfg!(debug_assertions) { SEEDS_DEBUG } else { SEEDS_RELEASE };
    let count = env_u64("SIM_SEEDS").unwrap_or(default);
    let first = env_u64("SIM_SEED_FIRST").unwrap_or(0);
    let stop_after = env_u64("SIM_STOP_AFTER_FAILURES").map(|k| k.max(1) as usize);
    let next = AtomicU64::new(first);
    let ran = AtomicU64::new(0);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..SWEEP_THREADS {
            s.spawn(|| loop {
                if stop_after.is_some_and(|k| failures.lock().unwrap().len() >= k) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    break;
                }
                let SeedResult { outcome, .. } = run_seed(seed, false);
                ran.fetch_add(1, Ordering::Relaxed);
                if let Err(why) = outcome {
                    failures.lock().unwrap().push((seed, why));
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let ran = ran.into_inner();
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    for (seed, why) in &failures {
        report_failure(*seed, why);
    }
    let stopped =
        if ran < count { format!(" (stopped early: {ran} of {count} run)") } else { String::new() };
    say(&format!(
        "sim: {ran} seeds, {} failures{stopped} ({:.1} seeds/s, {secs:.1}s, {SWEEP_THREADS} threads)",
        failures.len(),
        ran as f64 / secs.max(1e-9)
    ));
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|(s, _)| s.to_string()).collect();
        panic!("failing seeds: {}", seeds.join(" "));
    }
}

#[test]
fn a_seed_replays_to_the_identical_trace() {
    for seed in [7, 8] {
        let a = run_seed(seed, true);
        let b = run_seed(seed, true);
        assert!(a.trace.len() > 100, "seed {seed} traced only {} lines", a.trace.len());
        assert_eq!(a.trace, b.trace, "seed {seed} is not deterministic");
        assert_eq!(format!("{:?}", a.outcome), format!("{:?}", b.outcome));
    }
}
