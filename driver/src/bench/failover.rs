//! Failover time: kill -9 the leader, and time from the kill to the first
//! PUT a survivor acknowledges, seen two ways at once:
//!
//! - the *client*: per survivor, one connection retrying PUT in a tight loop
//!   with a short timeout (an attempt that hangs is abandoned and a new
//!   connection made). What an application with a 250 ms timeout sees; it
//!   includes the time lost to an attempt the cluster never answers.
//! - the *probes*: per survivor, a fresh connection with one PUT every 5 ms,
//!   each waiting up to 1 s, overlapping. The first acknowledged probe bounds
//!   when the cluster took writes again, within 5 ms, whatever happens to
//!   earlier attempts; probes with no answer within 1 s are counted as stuck.
//!
//! After each round the killed replica is restarted and the cluster settles
//! (an agreed leader, equal commit indexes, then a quiet pause) before the
//! next kill.

use super::histogram::Summary;
use super::json::Json;
use crate::client::Client;
use crate::cluster::Cluster;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Connect and read timeout of one client attempt: a few election timeouts
/// (100 ms), so an attempt stuck behind the dead leader is soon given up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// Pause after an `ERR` reply before the client's next attempt, so a replica
/// that answers at once (`ERR NOQUORUM`) is not spun against at full speed.
const ERR_PAUSE: Duration = Duration::from_micros(200);
/// A new probe starts this often, per survivor.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// A probe with no reply this long is stuck.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes in flight per survivor at most (a thread each).
const PROBES_IN_FLIGHT_MAX: usize = 100;
/// A round with no acknowledged PUT this long after the kill fails.
const ROUND_TIME_MAX: Duration = Duration::from_secs(10);
/// Bound for the cluster to settle between rounds.
const SETTLE_TIME_MAX: Duration = Duration::from_secs(30);
/// Quiet time after the cluster looks settled, so the next kill does not land
/// in the middle of the restarted replica's takeover.
const SETTLE_QUIET: Duration = Duration::from_millis(500);
/// How often settling polls STATUS.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// One kill.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// The leader that was killed.
    pub killed: usize,
    /// Client: kill to first acknowledged PUT, ms; `None` when none in time.
    pub ms: Option<f64>,
    /// The survivor that acknowledged it.
    pub via: Option<usize>,
    /// Client: when the successful attempt was sent, ms after the kill.
    pub ok_sent_ms: Option<f64>,
    /// Probes: kill to first acknowledged probe, ms.
    pub probe_ms: Option<f64>,
    /// Probes: when that probe was sent, ms after the kill.
    pub probe_sent_ms: Option<f64>,
    /// Probes sent.
    pub probes: u64,
    /// Probes with no reply within [`PROBE_TIMEOUT`].
    pub probes_stuck: u64,
    /// Send time of the first and last stuck probe, ms after the kill.
    pub stuck_sent_ms: Option<(f64, f64)>,
    /// Stuck probes sent to the replica that became the new leader.
    pub stuck_at_new_leader: u64,
    /// The leader the survivors named afterwards.
    pub new_leader: Option<usize>,
    /// The new leader's STATUS `last_election_ms`, if it reports one.
    pub election_ms: Option<u64>,
    /// Client PUT attempts over all survivors.
    pub attempts: u64,
    /// Failed client attempts by kind: the `ERR` code, or `io` (timeout, reset, refused).
    pub failures: BTreeMap<String, u64>,
}

/// Every round.
#[derive(Clone, Debug, Default)]
pub struct FailoverResult {
    /// In order.
    pub rounds: Vec<Round>,
    /// Client times over the rounds that succeeded, in µs (nearest rank, exact).
    pub summary: Summary,
    /// Probe times likewise.
    pub probe_summary: Summary,
    /// Rounds with no acknowledged client PUT within [`ROUND_TIME_MAX`].
    pub failed: usize,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

impl FailoverResult {
    /// Every number, for `bench.json`.
    pub fn to_json(&self) -> Json {
        let rounds: Vec<Json> = self.rounds.iter().map(round_json).collect();
        let ms = |s: &Summary| {
            Json::obj()
                .set("count", s.count)
                .set("median", s.p50_us / 1000.0)
                .set("p90", s.p90_us / 1000.0)
                .set("p99", s.p99_us / 1000.0)
                .set("max", s.max_us / 1000.0)
                .set("mean", s.mean_us / 1000.0)
        };
        Json::obj()
            .set("rounds_total", self.rounds.len())
            .set("rounds_failed", self.failed)
            .set("client_attempt_timeout_ms", ATTEMPT_TIMEOUT.as_millis() as u64)
            .set("client_ms", ms(&self.summary))
            .set("probe_every_ms", PROBE_EVERY.as_millis() as u64)
            .set("probe_timeout_ms", PROBE_TIMEOUT.as_millis() as u64)
            .set("probe_ms", ms(&self.probe_summary))
            .set("error", self.error.clone())
            .set("rounds", Json::Arr(rounds))
    }
}

fn round_json(r: &Round) -> Json {
    let failures = r.failures.iter().fold(Json::obj(), |o, (k, v)| o.set(k.as_str(), *v));
    Json::obj()
        .set("killed", r.killed)
        .set("ms", r.ms)
        .set("via", r.via)
        .set("ok_sent_ms", r.ok_sent_ms)
        .set("probe_ms", r.probe_ms)
        .set("probe_sent_ms", r.probe_sent_ms)
        .set("probes", r.probes)
        .set("probes_stuck", r.probes_stuck)
        .set("stuck_first_sent_ms", r.stuck_sent_ms.map(|s| s.0))
        .set("stuck_last_sent_ms", r.stuck_sent_ms.map(|s| s.1))
        .set("stuck_at_new_leader", r.stuck_at_new_leader)
        .set("new_leader", r.new_leader)
        .set("server_election_ms", r.election_ms)
        .set("attempts", r.attempts)
        .set("failures", failures)
}

/// Runs `rounds` kills of the leader.
pub fn run(cluster: &mut Cluster, rounds: usize, progress: &dyn Fn(&str)) -> FailoverResult {
    let mut result = FailoverResult::default();
    for i in 1..=rounds {
        let round = settle(cluster).and_then(|leader| one_round(cluster, i, leader));
        match round {
            Ok(r) => {
                let shown =
                    |ms: Option<f64>| ms.map_or("none".to_string(), |m| format!("{m:.1} ms"));
                progress(&format!(
                    "failover {i}/{rounds}: killed {}, new leader {:?}; first PUT: client {} \
                     (via {:?}), probes {}; {} of {} probes stuck",
                    r.killed,
                    r.new_leader,
                    shown(r.ms),
                    r.via,
                    shown(r.probe_ms),
                    r.probes_stuck,
                    r.probes
                ));
                result.failed += usize::from(r.ms.is_none());
                result.rounds.push(r);
            }
            Err(e) => {
                progress(&format!("failover {i}/{rounds}: stopped: {e}"));
                result.error = Some(e);
                break;
            }
        }
    }
    let us = |f: fn(&Round) -> Option<f64>| -> Vec<f64> {
        result.rounds.iter().filter_map(f).map(|ms| ms * 1000.0).collect()
    };
    result.summary = exact_summary(&us(|r| r.ms));
    result.probe_summary = exact_summary(&us(|r| r.probe_ms));
    if let Err(e) = settle(cluster) {
        result.error.get_or_insert(format!("after the last round: {e}"));
    }
    result
}

/// Kills `leader`, times the first acknowledged PUT, restarts `leader`.
fn one_round(cluster: &mut Cluster, round: usize, leader: usize) -> Result<Round, String> {
    let survivors: Vec<usize> = cluster.ids().filter(|&id| id != leader).collect();
    // Connect before the kill: a client that was already talking to the cluster.
    let clients: Vec<(usize, String, Option<Client>)> = survivors
        .iter()
        .map(|&id| (id, cluster.addr(id), Client::connect(&cluster.addr(id), ATTEMPT_TIMEOUT).ok()))
        .collect();
    let shared = Arc::new(Shared::default());
    let t0 = Instant::now();
    cluster.kill(leader)?;
    let mut handles = Vec::new();
    for (id, addr, client) in clients {
        let (s1, s2, a1) = (shared.clone(), shared.clone(), addr.clone());
        handles.push(thread::spawn(move || retry_put(id, &a1, client, round, t0, &s1)));
        handles.push(thread::spawn(move || probe(id, &addr, round, t0, &s2)));
    }
    for h in handles {
        h.join().map_err(|_| "a failover client panicked".to_string())?;
    }
    let lock = |m: &Mutex<Option<Hit>>| *m.lock().unwrap_or_else(PoisonError::into_inner);
    let (first, probe_first) = (lock(&shared.first), lock(&shared.probe_first));
    let via = first.map(|h| h.via);
    let new_leader =
        via.or(probe_first.map(|h| h.via)).and_then(|v| cluster.status(v).ok()?.leader());
    let election_ms = new_leader
        .and_then(|l| cluster.status(l).ok()?.get("last_election_ms")?.parse::<u64>().ok());
    let failures =
        std::mem::take(&mut *shared.failures.lock().unwrap_or_else(PoisonError::into_inner));
    let stuck = shared.stuck.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let stuck_at_new_leader = stuck.iter().filter(|(_, id)| Some(*id) == new_leader).count();
    let stuck: Vec<Duration> = stuck.into_iter().map(|(sent, _)| sent).collect();
    cluster.restart(leader)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Round {
        killed: leader,
        ms: first.map(|h| ms(h.acked)),
        via,
        ok_sent_ms: first.map(|h| ms(h.sent)),
        probe_ms: probe_first.map(|h| ms(h.acked)),
        probe_sent_ms: probe_first.map(|h| ms(h.sent)),
        probes: shared.probes.load(Ordering::Relaxed),
        probes_stuck: stuck.len() as u64,
        stuck_sent_ms: stuck.iter().min().zip(stuck.iter().max()).map(|(a, b)| (ms(*a), ms(*b))),
        stuck_at_new_leader: stuck_at_new_leader as u64,
        new_leader,
        election_ms,
        attempts: shared.attempts.load(Ordering::Relaxed),
        failures,
    })
}

/// A first acknowledged PUT: when it was sent and acknowledged (after the
/// kill), and through which survivor.
#[derive(Clone, Copy, Debug)]
struct Hit {
    sent: Duration,
    acked: Duration,
    via: usize,
}

/// What the retrying clients and probes share.
#[derive(Default)]
struct Shared {
    /// Set by the client's first success: the clients stop.
    done: AtomicBool,
    /// The client's first success.
    first: Mutex<Option<Hit>>,
    /// Set by the first acknowledged probe: no more probes start.
    probe_done: AtomicBool,
    /// The first acknowledged probe.
    probe_first: Mutex<Option<Hit>>,
    /// Client attempts sent.
    attempts: AtomicU64,
    /// Probes sent.
    probes: AtomicU64,
    /// Failed client attempts by kind.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Send time and survivor of each stuck probe.
    stuck: Mutex<Vec<(Duration, usize)>>,
}

/// Records `hit` in `slot` unless an earlier one is there.
fn record_first(slot: &Mutex<Option<Hit>>, hit: Hit) {
    let mut first = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if first.is_none_or(|f| hit.acked < f.acked) {
        *first = Some(hit);
    }
}

/// Retries PUT through survivor `id` until one is acknowledged (by any
/// survivor) or the round times out.
fn retry_put(
    id: usize,
    addr: &str,
    mut client: Option<Client>,
    round: usize,
    t0: Instant,
    shared: &Shared,
) {
    let deadline = t0 + ROUND_TIME_MAX;
    let mut n = 0u64;
    let fail = |kind: &str| {
        let mut f = shared.failures.lock().unwrap_or_else(PoisonError::into_inner);
        *f.entry(kind.to_string()).or_default() += 1;
    };
    while !shared.done.load(Ordering::Relaxed) && Instant::now() < deadline {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr, ATTEMPT_TIMEOUT) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    fail("io");
                    thread::sleep(ERR_PAUSE);
                    continue;
                }
            },
        };
        n += 1;
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        let sent = t0.elapsed();
        match c.put(&format!("failover-{round}-{id}-{n}"), "x") {
            Ok(_) => {
                record_first(&shared.first, Hit { sent, acked: t0.elapsed(), via: id });
                shared.done.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) if e.starts_with("ERR ") => {
                fail(e.split(' ').nth(1).unwrap_or("ERR"));
                thread::sleep(ERR_PAUSE);
            }
            Err(_) => {
                // A timed-out attempt may still be answered later: start afresh.
                fail("io");
                client = None;
            }
        }
    }
}

/// Starts a one-PUT probe through survivor `id` every [`PROBE_EVERY`] until
/// one is acknowledged or the round times out; waits for those in flight.
fn probe(id: usize, addr: &str, round: usize, t0: Instant, shared: &Arc<Shared>) {
    let deadline = t0 + ROUND_TIME_MAX;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let mut n = 0u64;
    while !shared.probe_done.load(Ordering::Relaxed) && Instant::now() < deadline {
        if in_flight.load(Ordering::Relaxed) < PROBES_IN_FLIGHT_MAX {
            n += 1;
            shared.probes.fetch_add(1, Ordering::Relaxed);
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (addr, shared, in_flight) = (addr.to_string(), shared.clone(), in_flight.clone());
            let key = format!("probe-{round}-{id}-{n}");
            handles.push(thread::spawn(move || {
                one_probe(id, &addr, &key, t0, &shared);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
        thread::sleep(PROBE_EVERY);
    }
    for h in handles {
        let _ = h.join();
    }
}

/// One probe: a fresh connection, one PUT, one reply or a timeout.
fn one_probe(id: usize, addr: &str, key: &str, t0: Instant, shared: &Shared) {
    let sent = t0.elapsed();
    let reply = Client::connect(addr, PROBE_TIMEOUT).and_then(|mut c| c.put(key, "x"));
    match reply {
        Ok(_) => {
            record_first(&shared.probe_first, Hit { sent, acked: t0.elapsed(), via: id });
            shared.probe_done.store(true, Ordering::Relaxed);
        }
        Err(e) if !e.starts_with("ERR ") && t0.elapsed() >= sent + PROBE_TIMEOUT => {
            shared.stuck.lock().unwrap_or_else(PoisonError::into_inner).push((sent, id));
        }
        Err(_) => {}
    }
}

/// Waits until every replica runs, all agree on a leader, all commit indexes
/// are equal, and that holds again after a quiet pause. Returns the leader.
pub fn settle(cluster: &mut Cluster) -> Result<usize, String> {
    let deadline = Instant::now() + SETTLE_TIME_MAX;
    let mut stable_since: Option<(Instant, usize, u64)> = None;
    loop {
        let (leader, epoch) = cluster.wait_for_leader(deadline)?;
        let commits: Vec<Option<u64>> =
            cluster.ids().map(|id| cluster.status(id).ok()?.get("commit")?.parse().ok()).collect();
        let all_equal = commits.iter().all(|c| c.is_some() && *c == commits[0]);
        let running = cluster.running_ids().len() == cluster.size();
        if all_equal && running {
            match stable_since {
                Some((since, l, e)) if l == leader && e == epoch => {
                    if since.elapsed() >= SETTLE_QUIET {
                        return Ok(leader);
                    }
                }
                _ => stable_since = Some((Instant::now(), leader, epoch)),
            }
        } else {
            stable_since = None;
        }
        if Instant::now() >= deadline {
            return Err(format!("cluster did not settle; commit indexes {commits:?}"));
        }
        thread::sleep(SETTLE_POLL);
    }
}

/// Nearest-rank percentiles of a few exact values (µs).
pub fn exact_summary(values_us: &[f64]) -> Summary {
    if values_us.is_empty() {
        return Summary::default();
    }
    let mut v = values_us.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Summary {
        count: v.len() as u64,
        mean_us: v.iter().sum::<f64>() / v.len() as f64,
        p50_us: rank(0.5),
        p90_us: rank(0.9),
        p99_us: rank(0.99),
        p999_us: rank(0.999),
        max_us: v[v.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::exact_summary;

    #[test]
    fn nearest_rank_of_twenty() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = exact_summary(&v);
        assert_eq!((s.p50_us, s.p90_us, s.p99_us, s.max_us), (10.0, 18.0, 20.0, 20.0));
        assert_eq!(exact_summary(&[]).count, 0);
    }
}
