//! `cargo run --release -p driver [-- list | <scenario> | nemesis [flags]]`:
//! runs the scenarios and the nemesis against real `quorumkv` processes
//! (DESIGN §7, §9).
//!
//! With no argument it runs every scenario, then a short nemesis run (20 s,
//! default faults); `list` names them; a name runs that one; `nemesis
//! [--seconds S] [--replicas N] [--seed K] [--faults
//! kill,stop,partition,restart,wipe] [--majority] [--clients C] [--keys K]
//! [--out DIR]` runs only the nemesis (see `driver::nemesis`). Each prints
//! `PASS <name> (<secs>s)`, `SKIP <name>: <reason>` (this machine lacks what
//! it needs, e.g. root for namespaces) or `FAIL <name> (<secs>s): <reason>`,
//! then `driver: <passed>/<total> passed`; the exit status is 0 only when
//! none failed, 2 for an unknown scenario or bad flags. The server binary is `QUORUMKV_BIN` when
//! set; under `cargo run` the driver first runs `cargo build --release -p
//! quorumkv`, so it never tests a stale binary.

use driver::cluster::ClusterOpts;
use driver::nemesis::{self, NemesisOpts};
use driver::scenarios::{self, Scenario};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// How long the nemesis runs after the scenarios in a full run.
const SHORT_NEMESIS_SECONDS: u64 = 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The nemesis flags, when this run includes the nemesis.
    let mut nemesis_args: Option<Vec<String>> = None;
    let chosen: Vec<&Scenario> = match args.as_slice() {
        [] => {
            nemesis_args = Some(vec!["--seconds".into(), SHORT_NEMESIS_SECONDS.to_string()]);
            scenarios::ALL.iter().collect()
        }
        [cmd, rest @ ..] if cmd == "nemesis" => {
            nemesis_args = Some(rest.to_vec());
            Vec::new()
        }
        [cmd] if cmd == "list" => {
            print!("{}", list_text());
            return ExitCode::SUCCESS;
        }
        [cmd, rest @ ..] if cmd == "bench" => return driver::bench::main(rest),
        [name] => match scenarios::find(name) {
            Some(s) => vec![s],
            None => {
                eprint!("driver: unknown scenario {name:?}; the scenarios are:\n{}", list_text());
                return ExitCode::from(2);
            }
        },
        _ => {
            eprint!(
                "usage: driver [list | <scenario> | nemesis [flags]]; the scenarios are:\n{}",
                list_text()
            );
            return ExitCode::from(2);
        }
    };
    let binary = match server_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("driver: no server binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("driver: server binary {}", binary.display());
    let opts = ClusterOpts { binary, ..ClusterOpts::default() };
    let nemesis_opts = match nemesis_args.map(|a| NemesisOpts::new(opts.clone()).parse_args(&a)) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("driver nemesis: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let mut passed = chosen.iter().filter(|s| run_one(s, &opts)).count();
    let mut total = chosen.len();
    if let Some(n) = &nemesis_opts {
        total += 1;
        passed += usize::from(run_nemesis(n));
    }
    println!("driver: {passed}/{total} passed");
    if passed == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each scenario's name and one-line description, one per line, then the nemesis.
fn list_text() -> String {
    let width = scenarios::ALL.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut text: String =
        scenarios::ALL.iter().map(|s| format!("{:width$}  {}\n", s.name, s.about)).collect();
    text.push_str(&format!(
        "{:width$}  concurrent clients under seeded faults, then linearizability and lost-write checks \
         (flags: --seconds --replicas --seed --faults --majority --clients --keys --out)\n",
        "nemesis"
    ));
    text
}

/// `QUORUMKV_BIN`; else, when run by cargo, a fresh release build; else the
/// binary next to this one.
fn server_binary() -> Result<PathBuf, String> {
    if std::env::var_os("QUORUMKV_BIN").is_none() && std::env::var_os("CARGO").is_some() {
        return driver::binary::build_release();
    }
    driver::binary::locate_server()
}

/// Runs one scenario, catching a panic as a failure; prints its verdict. A
/// scenario whose requirements this machine lacks is skipped (and counts as
/// passed: it cannot fail here), with the reason.
fn run_one(scenario: &Scenario, opts: &ClusterOpts) -> bool {
    if let Some(Err(reason)) = scenario.requires.map(|requires| requires()) {
        println!("SKIP {}: {reason}", scenario.name);
        return true;
    }
    let started = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (scenario.run)(opts)));
    let secs = started.elapsed().as_secs_f64();
    let verdict = match outcome {
        Ok(result) => result,
        Err(payload) => Err(format!("panicked: {}", panic_message(&payload))),
    };
    match verdict {
        Ok(()) => {
            println!("PASS {} ({secs:.1}s)", scenario.name);
            true
        }
        Err(reason) => {
            println!("FAIL {} ({secs:.1}s): {reason}", scenario.name);
            false
        }
    }
}

/// Runs the nemesis, catching a panic as a failure; prints its summary and verdict.
fn run_nemesis(opts: &NemesisOpts) -> bool {
    let started = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| nemesis::run(opts)));
    let secs = started.elapsed().as_secs_f64();
    let verdict = match outcome {
        Ok(Ok(summary)) => {
            print!("{}", summary.text());
            if summary.passed() {
                Ok(())
            } else {
                Err(format!(
                    "{} violation(s); history and explanation in {}",
                    summary.violations.len(),
                    opts.out.display()
                ))
            }
        }
        Ok(Err(reason)) => Err(reason),
        Err(payload) => Err(format!("panicked: {}", panic_message(&payload))),
    };
    match verdict {
        Ok(()) => {
            println!("PASS nemesis ({secs:.1}s)");
            true
        }
        Err(reason) => {
            println!("FAIL nemesis ({secs:.1}s): {reason}");
            false
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}
