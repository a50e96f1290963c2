//! Finds the `quorumkv` server binary for the driver and its tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The server binary's file name.
const SERVER_BIN: &str = "quorumkv";

/// The workspace root, fixed at compile time: the driver lives in `<root>/driver`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cargo target directory a `cargo build` from the workspace root uses:
/// `CARGO_TARGET_DIR` when set (relative to the root if relative), else `<root>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Locates the server: `QUORUMKV_BIN` if set; else `quorumkv` in the directory
/// of the current executable or its parent (so both `target/release/driver` and
/// `target/debug/deps/<test>` find it); else builds it with
/// `cargo build --release -p quorumkv` and returns `target/release/quorumkv`.
pub fn locate_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("QUORUMKV_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!("QUORUMKV_BIN={} is not a file", path.display()));
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let candidates = exe.parent().into_iter().chain(exe.parent().and_then(Path::parent));
    for dir in candidates {
        let path = dir.join(SERVER_BIN);
        if path.is_file() {
            return Ok(path);
        }
    }
    build_release()
}

/// Runs `cargo build --release -p quorumkv` in the workspace root (a no-op when
/// it is up to date) and returns the path of the release binary.
pub fn build_release() -> Result<PathBuf, String> {
    // Cargo sets CARGO for the programs it runs; fall back to the one on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", SERVER_BIN])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running {:?} build in {}: {e}", cargo, root.display()))?;
    if !status.success() {
        return Err(format!("cargo build --release -p {SERVER_BIN} failed: {status}"));
    }
    let path = target_dir().join("release").join(SERVER_BIN);
    if !path.is_file() {
        return Err(format!("built, but {} is missing", path.display()));
    }
    Ok(path)
}
