//! One line per event on stderr: `<unix-ms> <prefix> <message>` (DESIGN §9).
//!
//! The event loop keeps the prefix current (`r2 e7 leader`), so every line
//! names the replica, its epoch and its role; other threads log through the
//! same prefix. A mutex guards the prefix string only, never protocol state.

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

static PREFIX: Mutex<String> = Mutex::new(String::new());

/// Sets the prefix every later line starts with.
pub fn set_prefix(prefix: String) {
    *PREFIX.lock().unwrap_or_else(|e| e.into_inner()) = prefix;
}

/// Writes one line to stderr. Errors writing to stderr are ignored: logging
/// must never stop a replica.
pub fn line(message: &str) {
    // Unit tests and the simulator produce thousands of events; they log only
    // when asked to, so a failing test's output stays readable.
    if cfg!(test) && std::env::var_os("QKV_TEST_LOG").is_none() {
        return;
    }
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let prefix = PREFIX.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}.{:03} {prefix} {message}", ms / 1000, ms % 1000);
}

/// `qlog!("format", args…)`: one log line on stderr.
#[macro_export]
macro_rules! qlog {
    ($($arg:tt)*) => { $crate::log::line(&format!($($arg)*)) };
}
