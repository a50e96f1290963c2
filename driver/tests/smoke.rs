//! The driver's smoke run, so `cargo test --workspace --release` (the
//! README's test command) exercises every scenario and a short nemesis run
//! against real processes (STYLE "Testing pyramid", level 4). Long nemesis
//! runs stay a separate command: `cargo run --release -p driver -- nemesis
//! --seconds 300`.
//!
//! The tests take turns (one cluster at a time): on a 2-core machine two
//! clusters starve each other's heartbeats. Each is bounded by its
//! scenario's deadlines; the whole file takes about a minute. A scenario
//! whose machine requirements are missing (root for namespaces) passes with a
//! note on stderr, as the driver prints SKIP.

use driver::cluster::ClusterOpts;
use driver::nemesis::{self, NemesisOpts};
use driver::scenarios;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

/// One cluster at a time in this test binary.
static TURN: Mutex<()> = Mutex::new(());

/// The server binary: `QUORUMKV_BIN`, or the one cargo built next to this
/// test (`target/<profile>/quorumkv`).
fn binary() -> PathBuf {
    driver::binary::locate_server().expect("a quorumkv server binary")
}

/// Runs the scenario called `name`, panicking with its reason on failure.
fn scenario(name: &str) {
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let s = scenarios::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    if let Some(Err(reason)) = s.requires.map(|r| r()) {
        eprintln!("SKIP {name}: {reason}");
        return;
    }
    let opts = ClusterOpts { binary: binary(), ..ClusterOpts::default() };
    if let Err(reason) = (s.run)(&opts) {
        panic!("FAIL {name}: {reason}");
    }
}

/// One `#[test]` per scenario, named like it.
macro_rules! scenario_tests {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                scenario($name);
            }
        )*

        #[test]
        fn every_scenario_has_a_smoke_test() {
            let covered = [$($name),*];
            for s in scenarios::ALL {
                assert!(covered.contains(&s.name), "scenario {} has no smoke test", s.name);
            }
        }
    };
}

scenario_tests! {
    commit_needs_quorum => "commit-needs-quorum",
    reads_work => "reads-work",
    reads_under_writes => "reads-under-writes",
    follower_forwards => "follower-forwards",
    leader_failover => "leader-failover",
    leader_steps_down => "leader-steps-down",
    old_leader_fenced => "old-leader-fenced",
    minority_partition => "minority-partition",
    restart_catch_up => "restart-catch-up",
    power_cut => "power-cut",
    five_replicas => "five-replicas",
    custom_quorums => "custom-quorums",
    wiped_replica_rejoins => "wiped-replica-rejoins",
    multi_host => "multi-host",
}

#[test]
fn short_nemesis_finds_no_violation() {
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let base = ClusterOpts { binary: binary(), ..ClusterOpts::default() };
    let seed = 20_251_124;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nemesis").join(seed.to_string());
    let opts = NemesisOpts { seconds: 15, seed, out: out.clone(), ..NemesisOpts::new(base) };
    let summary = nemesis::run(&opts).unwrap_or_else(|e| panic!("nemesis could not run: {e}"));
    eprint!("{}", summary.text());
    assert!(
        summary.passed(),
        "nemesis seed {seed} found {} violation(s); see {}:\n{}",
        summary.violations.len(),
        out.display(),
        summary.text()
    );
}
