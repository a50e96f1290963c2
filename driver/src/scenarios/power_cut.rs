//! Setup: 3 replicas (N by default) and 4 concurrent writer threads, each
//! writing fresh keys through its own replica (reconnecting elsewhere on an
//! error). Once at least 100 writes are acknowledged, kill -9 every replica
//! at once; stop the writers; restart every replica with its data dir.
//!
//! Property (DESIGN §6, `--fsync always`): every write acknowledged with `OK`
//! before the cut reads back with its value through every replica, and the
//! cluster elects a leader and commits writes again. (kill -9 keeps the
//! kernel's page cache, so this proves recovery from the WAL, not the fsync
//! ordering: DESIGN §7's honest limit.)

use super::{check_acked, ensure, poll_until, put_retry, with_cluster};
use crate::client::Client;
use crate::cluster::ClusterOpts;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Writer threads.
const WRITERS: usize = 4;

/// Acknowledged writes to wait for before the cut.
const ACKED_MIN: usize = 100;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        c.wait_for_leader(opts.settle_deadline())?;
        let addrs: Vec<String> = all.iter().map(|&id| c.addr(id)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let timeout = opts.request_timeout() + Duration::from_secs(1);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (addrs, stop, count) = (addrs.clone(), stop.clone(), count.clone());
                thread::spawn(move || write_until_stopped(w, &addrs, timeout, &stop, &count))
            })
            .collect();
        let waited =
            poll_until(opts.settle_deadline(), &format!("{ACKED_MIN} acknowledged writes"), || {
                Ok(count.load(Ordering::SeqCst) >= ACKED_MIN)
            });

        let killed = if waited.is_ok() { c.kill_at_once(&all) } else { Ok(Vec::new()) };
        stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.join().map_err(|_| "a writer thread panicked".to_string())?);
        }
        waited?;
        ensure!(killed? == all, "not every replica was running at the cut");
        for &id in &all {
            ensure!(!c.is_running(id), "replica {id} still running after the cut");
            let refused = Client::connect(&c.addr(id), Duration::from_secs(1)).is_err();
            ensure!(refused, "replica {id}'s port still accepts after the cut");
        }

        for &id in &all {
            c.restart(id)?;
        }
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        check_acked(c, &all, &acked)?;
        put_retry(c, leader, "after-power-cut", "serving", opts.settle_deadline())?;
        Ok(())
    })
}

/// One writer: PUT `pc-<w>-<n> = v<w>-<n>` until `stop`; returns the writes
/// acknowledged with `OK`.
fn write_until_stopped(
    w: usize,
    addrs: &[String],
    timeout: Duration,
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    let mut target = w % addrs.len();
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(&addrs[target], timeout) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    target = (target + 1) % addrs.len();
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        n += 1;
        let (key, value) = (format!("pc-{w}-{n}"), format!("v{w}-{n}"));
        match c.put(&key, &value) {
            Ok(_) => {
                acked.push((key, value));
                count.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                client = None;
                target = (target + 1) % addrs.len();
            }
        }
    }
    acked
}
