//! `cargo run --release -p driver [-- list | <scenario>]`: runs the scenarios
//! against real `quorumkv` processes (DESIGN §7, §9).
//!
//! With no argument it runs every scenario; `list` names them; a name runs
//! that one. Each prints `PASS <name> (<secs>s)` or `FAIL <name>: <reason>`,
//! then `driver: <passed>/<total> passed`; the exit status is 0 only when all
//! passed, 2 for an unknown scenario. The server binary is `QUORUMKV_BIN` when
//! set; under `cargo run` the driver first runs `cargo build --release -p
//! quorumkv`, so it never tests a stale binary.

use driver::cluster::ClusterOpts;
use driver::scenarios::{self, Scenario};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chosen: Vec<&Scenario> = match args.as_slice() {
        [] => scenarios::ALL.iter().collect(),
        [cmd] if cmd == "list" => {
            print!("{}", list_text());
            return ExitCode::SUCCESS;
        }
        [name] => match scenarios::find(name) {
            Some(s) => vec![s],
            None => {
                eprint!("driver: unknown scenario {name:?}; the scenarios are:\n{}", list_text());
                return ExitCode::from(2);
            }
        },
        _ => {
            eprint!("usage: driver [list | <scenario>]; the scenarios are:\n{}", list_text());
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
    let passed = chosen.iter().filter(|s| run_one(s, &opts)).count();
    println!("driver: {passed}/{} passed", chosen.len());
    if passed == chosen.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each scenario's name and one-line description, one per line.
fn list_text() -> String {
    let width = scenarios::ALL.iter().map(|s| s.name.len()).max().unwrap_or(0);
    scenarios::ALL.iter().map(|s| format!("{:width$}  {}\n", s.name, s.about)).collect()
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
