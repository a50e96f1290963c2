//! Reads what the bench needs from `/proc`: a process's CPU time and memory,
//! and the machine's load average.

use std::fs;

/// Clock ticks per second in `/proc/<pid>/stat`: `USER_HZ`, fixed at 100 in
/// the Linux ABI on every architecture the bench runs on.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, all threads, dead ones included) `pid` used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; fields restart after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based, man 5 proc).
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// `(VmRSS, VmHWM)` of `pid` in bytes: resident memory now and at its peak.
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()
    };
    Some((kb("VmRSS:")? * 1024, kb("VmHWM:")? * 1024))
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minute load).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_secs(pid).is_some());
        let (rss, hwm) = rss_bytes(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert_eq!(loadavg().split(' ').count(), 3);
    }
}
