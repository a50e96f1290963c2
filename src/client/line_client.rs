//! `quorumkv client [HOST:PORT]`: an interactive line client.

/// Runs the client; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let _ = args;
    1
}
