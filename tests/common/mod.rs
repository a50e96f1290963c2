//! Helpers shared by the root integration tests: cluster options pointing at
//! the binary cargo built for this test run, and a bounded process runner.

use driver::cluster::ClusterOpts;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Cluster options for `replicas` replicas with `extra_flags`, using
/// [`server_binary`] and the driver's generous
/// defaults (heartbeat 50 ms, election timeout 500 ms, request timeout 5 s).
pub fn opts(replicas: usize, extra_flags: &[&str]) -> ClusterOpts {
    ClusterOpts {
        replicas,
        binary: server_binary(),
        extra_flags: extra_flags.iter().map(|f| f.to_string()).collect(),
        ..ClusterOpts::default()
    }
}

/// The server binary cargo built for this test run, or `QUORUMKV_BIN` when
/// set (to test another build).
pub fn server_binary() -> PathBuf {
    std::env::var_os("QUORUMKV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_quorumkv")))
}

/// Panics with the scenario's reason (which carries the replicas' log tails).
pub fn check(result: Result<(), String>) {
    if let Err(reason) = result {
        panic!("{reason}");
    }
}

/// Runs the server once per argument list, all at once, and waits at most
/// `limit` in total for them to exit; a process still running then is killed
/// and reported as `None`.
pub fn run_all_bounded(arg_lists: &[Vec<String>], limit: Duration) -> Vec<Option<Output>> {
    let mut children: Vec<Option<Child>> = arg_lists
        .iter()
        .map(|args| {
            let child = Command::new(server_binary())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn quorumkv");
            Some(child)
        })
        .collect();
    let mut outputs: Vec<Option<Output>> = arg_lists.iter().map(|_| None).collect();
    let deadline = Instant::now() + limit;
    while children.iter().any(Option::is_some) && Instant::now() < deadline {
        for (slot, out) in children.iter_mut().zip(outputs.iter_mut()) {
            if slot.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_some()) {
                let child = slot.take().expect("checked above");
                *out = Some(child.wait_with_output().expect("collect output"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut child in children.into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    outputs
}

/// Whether `text` holds `word` as a whole word: not preceded by a letter or
/// digit, not followed by a letter, digit, `-` or `_` (so `id` matches `--id`
/// and `'id'` but not `invalid` or `ids`).
pub fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}
