//! Setup: 3 replicas (N by default). For 2 s one client PUTs fresh values to
//! one key through the leader while one reader per replica GETs that key
//! through its replica; every operation is recorded with its call and
//! return time.
//!
//! Property (DESIGN §5): a key under constant writes must not starve or
//! break reads: a quorum read that keeps meeting pending entries falls back
//! to the leader's read-index and answers. Every replica stays up, at least
//! one GET through the leader answers with a value, and the whole history is
//! linearizable (no read returns a value older than one already overwritten
//! when it was sent, or a value nobody wrote).

use super::{ensure, with_cluster};
use crate::check::{self, Event, Op, Outcome};
use crate::client::Client;
use crate::cluster::ClusterOpts;
use crate::history;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the writer and readers run.
const RUN: Duration = Duration::from_secs(2);

/// The key under writes.
const KEY: &str = "hot";

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let (leader, _) = c.wait_for_leader(opts.settle_deadline())?;
        let timeout = opts.request_timeout() + Duration::from_secs(1);
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let writer_addr = c.addr(leader);
        let writer_stop = stop.clone();
        workers.push(thread::spawn(move || {
            run_client(0, &writer_addr, true, timeout, t0, &writer_stop)
        }));
        for id in c.ids() {
            let (addr, stop) = (c.addr(id), stop.clone());
            workers.push(thread::spawn(move || {
                run_client(id as u64, &addr, false, timeout, t0, &stop)
            }));
        }
        while t0.elapsed() < RUN {
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        let mut events = Vec::new();
        for w in workers {
            events.extend(w.join().map_err(|_| "a client thread panicked".to_string())??);
        }
        c.check_alive()?;
        let answered = |client: u64| {
            events
                .iter()
                .filter(|e| e.client == client && matches!(e.outcome, Outcome::Ok(_)))
                .count()
        };
        ensure!(answered(0) > 0, "no PUT through the leader {leader} succeeded");
        ensure!(
            answered(leader as u64) > 0,
            "no GET of the written key through the leader {leader} answered in {RUN:?}"
        );
        for report in check::check(&events, check::Options::default()) {
            ensure!(
                report.verdict == check::Verdict::Linearizable,
                "{} operations on {KEY}: {:?}",
                report.ops,
                report.verdict
            );
        }
        Ok(())
    })
}

/// One client: PUTs `w<n>` (writer) or GETs (reader) until `stop`; returns
/// the recorded operations, or why it could not connect.
fn run_client(
    client: u64,
    addr: &str,
    writer: bool,
    timeout: Duration,
    t0: Instant,
    stop: &AtomicBool,
) -> Result<Vec<Event>, String> {
    let mut conn = Client::connect(addr, timeout)?;
    let mut events = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let op = if writer { Op::Put { value: format!("w{n}") } } else { Op::Get };
        let call_us = t0.elapsed().as_micros() as u64;
        let reply = conn.cmd(&history::command(KEY, &op));
        let ret_us = t0.elapsed().as_micros() as u64;
        let (outcome, fits) = history::outcome_of(&op, reply.as_deref().map_err(String::as_str));
        if !fits {
            return Err(format!(
                "{} to {addr}: unexpected reply {reply:?}",
                history::command(KEY, &op)
            ));
        }
        let failed = reply.is_err();
        let id = client * 1_000_000 + n;
        events.push(Event { id, client, key: KEY.into(), op, call_us, ret_us, outcome });
        if failed {
            // The connection is gone (the replica may have crashed): stop here.
            break;
        }
    }
    Ok(events)
}
