//! The nemesis (DESIGN §7): concurrent clients against a real cluster while
//! faults are injected on a seeded schedule, then a linearizability check of
//! the whole client history and a check for lost acknowledged writes.
//!
//! `driver nemesis [--seconds S] [--replicas N] [--seed K] [--faults
//! kill,stop,partition,restart,wipe] [--majority] [--clients C] [--keys K]
//! [--out DIR]`.
//!
//! - Clients: C threads (8) each send PUT, GET, GETV, DEL and CAS on a small
//!   key set to random replicas, every written value unique. Each operation
//!   is recorded with its call and return time (µs since the start), the
//!   replica, the raw reply and its outcome (history::outcome_of: `ERR
//!   NOQUORUM`/`NOLEADER` fail, `ERR TIMEOUT` or an IO error is unknown).
//! - Faults, one kind at a time per window, chosen by the seed: `kill` (kill
//!   -9, restart at the end of the window), `stop` (SIGSTOP/SIGCONT),
//!   `partition` (the link proxy cuts a set of replicas off, both ways or one
//!   way), `restart` (kill -9 and restart at once), `wipe` (kill -9, delete the
//!   data dir, restart as a learner). At most a minority of replicas is
//!   affected at once unless `--majority`. Every fault is checked to take
//!   effect (port refused, process state `T`, proxy counters frozen), and its
//!   window is recorded. `wipe` needs learners in the server, so it is not in
//!   the default set.
//! - The end: heal everything, restart whatever is down, then kill -9 and
//!   restart every replica (so the final state is what the disks hold), wait
//!   for a leader, commit a barrier write, wait until every replica reaches
//!   the leader's commit index, and read every key through every replica
//!   (GETV, recorded in the history).
//! - The checks: [`check::check`] per key (the final reads included),
//!   [`check::log_order_violations`], [`check::lost_writes`] against the final
//!   reads, agreement of the final reads, replies that fit the protocol, and
//!   no replica crashing.
//!
//! The SVG (`history.svg`) is always written to the output directory
//! (`target/nemesis/<seed>/` by default); on failure also `history.jsonl`,
//! `faults.jsonl` and `explanation.txt`, with each replica's log
//! (`replica-<id>.log`).

use crate::check::{self, Op, Outcome, Ret};
use crate::client::Client;
use crate::cluster::{Cluster, ClusterOpts, Layout};
use crate::history::{self, FaultWindow, Record};
use crate::scenarios::{put_retry, wait_converged};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the fault scheduler wakes to start or end faults.
const SCHEDULER_TICK: Duration = Duration::from_millis(50);

/// Fault windows last this long (ms), chosen per window by the seed.
const WINDOW_MS_MIN: u64 = 1_000;
const WINDOW_MS_MAX: u64 = 5_000;

/// Pause between one fault starting and the next being considered (ms).
const GAP_MS_MIN: u64 = 300;
const GAP_MS_MAX: u64 = 2_500;

/// No fault starts this close to the end of the run.
const QUIET_TAIL: Duration = Duration::from_secs(1);

/// How long a client waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A client reconnects to another random replica after this many operations.
const OPS_PER_CONNECTION_MAX: u64 = 50;

/// How long a wiped replica may take to be promoted before the scheduler
/// stops counting it as affected.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the end phase may take to get a leader and converge.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Client ids of the final reads start here (replica id added).
const FINAL_CLIENT_BASE: u64 = 1_000_000;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9, restarted at the end of the window.
    Kill,
    /// SIGSTOP, SIGCONT at the end of the window.
    Stop,
    /// The link proxy cuts a set of replicas off (both ways or one way).
    Partition,
    /// kill -9 and restart at once.
    Restart,
    /// kill -9, data dir deleted, restarted at the end of the window.
    Wipe,
}

impl FaultKind {
    /// Every kind, in `--faults` spelling order.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Partition,
        FaultKind::Restart,
        FaultKind::Wipe,
    ];

    /// The default set: everything that works without learners.
    pub const DEFAULT: [FaultKind; 4] =
        [FaultKind::Kill, FaultKind::Stop, FaultKind::Partition, FaultKind::Restart];

    /// The name used in `--faults` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Partition => "partition",
            FaultKind::Restart => "restart",
            FaultKind::Wipe => "wipe",
        }
    }

    /// Parses a `--faults` list like `kill,stop`.
    pub fn parse_list(list: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = BTreeSet::new();
        for word in list.split(',').filter(|w| !w.is_empty()) {
            let kind = FaultKind::ALL.into_iter().find(|k| k.name() == word).ok_or_else(|| {
                format!("unknown fault {word:?}; the faults are kill,stop,partition,restart,wipe")
            })?;
            kinds.insert(kind);
        }
        if kinds.is_empty() {
            return Err("--faults names no fault".into());
        }
        Ok(kinds.into_iter().collect())
    }
}

/// How to run the nemesis.
#[derive(Clone, Debug)]
pub struct NemesisOpts {
    /// How long clients run while faults are injected.
    pub seconds: u64,
    /// The seed of the fault schedule and of the clients' choices.
    pub seed: u64,
    /// Fault kinds to inject.
    pub faults: Vec<FaultKind>,
    /// Allow faults on a majority at once (then the cluster may stall).
    pub majority: bool,
    /// Client threads.
    pub clients: usize,
    /// Keys the clients use (`k0`, `k1`, ...).
    pub keys: usize,
    /// Where the SVG (and on failure the history) go.
    pub out: PathBuf,
    /// The cluster (replica count, binary, timings).
    pub cluster: ClusterOpts,
}

impl NemesisOpts {
    /// Defaults: 30 s, 3 replicas, the default faults, 8 clients, 5 keys, a
    /// seed from the clock, `target/nemesis/<seed>`, request timeout 2 s.
    pub fn new(cluster: ClusterOpts) -> NemesisOpts {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1);
        let cluster = ClusterOpts { request_timeout_ms: 2000, ..cluster };
        NemesisOpts {
            seconds: 30,
            seed,
            faults: FaultKind::DEFAULT.to_vec(),
            majority: false,
            clients: 8,
            keys: 5,
            out: default_out(seed),
            cluster,
        }
    }

    /// Applies `driver nemesis` arguments to `self`.
    pub fn parse_args(mut self, args: &[String]) -> Result<NemesisOpts, String> {
        let mut out_given = false;
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
            let number =
                |v: String| v.parse::<u64>().map_err(|_| format!("{flag} {v}: not a number"));
            match flag.as_str() {
                "--seconds" => self.seconds = number(value()?)?,
                "--replicas" => self.cluster.replicas = number(value()?)? as usize,
                "--seed" => self.seed = number(value()?)?,
                "--faults" => self.faults = FaultKind::parse_list(&value()?)?,
                "--clients" => self.clients = number(value()?)? as usize,
                "--keys" => self.keys = number(value()?)? as usize,
                "--out" => {
                    self.out = PathBuf::from(value()?);
                    out_given = true;
                }
                "--majority" => self.majority = true,
                other => return Err(format!("unknown nemesis flag {other:?}")),
            }
        }
        if !out_given {
            self.out = default_out(self.seed);
        }
        if self.cluster.replicas < 3 || self.clients == 0 || self.keys == 0 || self.seconds == 0 {
            return Err("needs --replicas >= 3 and positive --seconds, --clients, --keys".into());
        }
        Ok(self)
    }
}

/// `target/nemesis/<seed>`.
fn default_out(seed: u64) -> PathBuf {
    PathBuf::from("target").join("nemesis").join(seed.to_string())
}

/// What a run found.
#[derive(Debug)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Client operations (final reads included).
    pub ops: usize,
    /// Outcomes: definite results, definite failures, unknown.
    pub ok: usize,
    /// See `ok`.
    pub fail: usize,
    /// See `ok`.
    pub unknown: usize,
    /// Every fault injected.
    pub faults: Vec<FaultWindow>,
    /// Keys checked for linearizability.
    pub keys: usize,
    /// Everything that went wrong; empty on a pass.
    pub violations: Vec<String>,
    /// The SVG written.
    pub svg: PathBuf,
    /// Wall time of the whole run, in s.
    pub secs: f64,
}

impl Summary {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A few lines for the terminal.
    pub fn text(&self) -> String {
        let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.faults {
            *per_kind.entry(f.kind.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = per_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let mut s = format!(
            "nemesis seed {}: {} ops (ok {}, fail {}, unknown {}), {} faults ({}), {} keys checked, {} violation(s), {:.1}s\n  svg: {}\n",
            self.seed,
            self.ops,
            self.ok,
            self.fail,
            self.unknown,
            self.faults.len(),
            kinds.join(", "),
            self.keys,
            self.violations.len(),
            self.secs,
            self.svg.display()
        );
        for v in &self.violations {
            s.push_str(&format!("  VIOLATION: {}\n", v.trim_end().replace('\n', "\n    ")));
        }
        s
    }
}

/// A small deterministic RNG (SplitMix64), so a seed replays its schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// µs since `start`.
fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Runs the nemesis. `Err` means the run could not be carried out (the
/// cluster did not start, a fault could not be injected); what the run found
/// wrong with the cluster is in [`Summary::violations`].
pub fn run(opts: &NemesisOpts) -> Result<Summary, String> {
    let started = Instant::now();
    let proxied = opts.faults.contains(&FaultKind::Partition);
    let layout = Layout { proxied, ..Layout::default() };
    let mut cluster = Cluster::start_with(opts.cluster.clone(), layout)?;
    let c = &mut cluster;
    c.wait_for_leader(c.opts().settle_deadline())?;
    if let Some(proxy) = c.proxy() {
        proxy.wait_all_carrying(c.opts().settle_deadline())?;
    }
    c.note(&format!("nemesis: seed {} for {} s", opts.seed, opts.seconds));
    let t0 = Instant::now();
    let clients = Clients::spawn(opts, c, t0);
    let mut violations = Vec::new();
    let mut crashes = Vec::new();
    let mut sched = Scheduler::new(opts, c.size());
    let ran = sched.run(c, t0, Duration::from_secs(opts.seconds), &mut crashes);
    let mut records = clients.finish();
    if let Err(e) = sched.end_all(c, t0).and(ran) {
        // A fault that would not take effect or could not be undone (say a
        // restarted replica that never answers): report it, and still try
        // to recover and check what happened.
        violations.push(format!("the fault schedule could not be carried out: {e}"));
    }
    let final_reads = final_phase(c, opts, t0, &mut violations, &mut crashes);
    let faults = sched.windows;
    let (finals, final_records) = match final_reads {
        Ok(found) => found,
        Err(e) => {
            violations.push(format!("the cluster did not recover after the faults: {e}"));
            (BTreeMap::new(), Vec::new())
        }
    };
    records.extend(final_records);
    let end_us = micros(t0);
    let keys = check_all(&records, &finals, &mut violations);
    crashes.extend(c.crashed_ids().into_iter().map(|id| Crash::of(c, id, t0)));
    violations.extend(crash_violations(&crashes));

    let ok = records.iter().filter(|r| matches!(r.event.outcome, Outcome::Ok(_))).count();
    let fail = records.iter().filter(|r| r.event.outcome == Outcome::Fail).count();
    let summary = Summary {
        seed: opts.seed,
        ops: records.len(),
        ok,
        fail,
        unknown: records.len() - ok - fail,
        faults,
        keys,
        violations,
        svg: opts.out.join("history.svg"),
        secs: started.elapsed().as_secs_f64(),
    };
    write_outputs(opts, &records, &summary, end_us)
        .map_err(|e| format!("writing {}: {e}", opts.out.display()))?;
    if !summary.passed() {
        // The replicas' own logs (state changes, elections, catch-ups) go
        // with the history: the cluster's temporary directory goes at drop.
        for id in 1..=c.size() {
            let to = opts.out.join(format!("replica-{id}.log"));
            fs::copy(c.log_path(id), &to)
                .map_err(|e| format!("copying replica {id}'s log to {}: {e}", to.display()))?;
        }
    }
    Ok(summary)
}

/// The client threads; stopped and joined on drop too.
struct Clients {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Vec<Record>>>,
}

impl Clients {
    /// Starts `opts.clients` threads against the cluster's replicas.
    fn spawn(opts: &NemesisOpts, c: &Cluster, t0: Instant) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let addrs: Vec<String> = c.ids().map(|id| c.addr(id)).collect();
        let keys: Vec<String> = (0..opts.keys).map(|k| format!("k{k}")).collect();
        let timeout = c.opts().request_timeout() + Duration::from_secs(1);
        let handles = (0..opts.clients)
            .map(|i| {
                let client = ClientLoop {
                    index: i as u64,
                    addrs: addrs.clone(),
                    keys: keys.clone(),
                    rng: Rng(opts.seed ^ ((i as u64 + 1) * 0x2545_F491_4F6C_DD1D)),
                    t0,
                    timeout,
                };
                let stop = stop.clone();
                thread::spawn(move || client.run(&stop))
            })
            .collect();
        Clients { stop, handles }
    }

    /// Stops the clients and returns every record, ordered by call time.
    fn finish(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        let mut records: Vec<Record> =
            self.handles.drain(..).flat_map(|h| h.join().unwrap_or_default()).collect();
        records.sort_by_key(|r| (r.event.call_us, r.event.id));
        records
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// One client thread's state.
struct ClientLoop {
    index: u64,
    addrs: Vec<String>,
    keys: Vec<String>,
    rng: Rng,
    t0: Instant,
    timeout: Duration,
}

impl ClientLoop {
    /// Sends operations until `stop`; each op's time is bounded by `timeout`.
    fn run(mut self, stop: &AtomicBool) -> Vec<Record> {
        let mut records = Vec::new();
        let mut conn: Option<(usize, Client, u64)> = None;
        // The last version this client saw per key, for CAS.
        let mut versions: BTreeMap<String, u64> = BTreeMap::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if conn.as_ref().is_none_or(|(_, _, used)| *used >= OPS_PER_CONNECTION_MAX) {
                let replica = self.rng.below(self.addrs.len() as u64) as usize + 1;
                conn = Client::connect(&self.addrs[replica - 1], CONNECT_TIMEOUT)
                    .and_then(|mut c| c.set_read_timeout(self.timeout).map(|()| c))
                    .ok()
                    .map(|c| (replica, c, 0));
                if conn.is_none() {
                    // Nothing was sent: not an operation. Try another replica soon.
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
            let (replica, client, used) = conn.as_mut().expect("connected above");
            *used += 1;
            n += 1;
            let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
            let value = format!("c{}-{n}", self.index);
            let op = match self.rng.below(100) {
                0..=39 => Op::Get,
                40..=49 => Op::GetV,
                50..=82 => Op::Put { value },
                83..=89 => Op::Del,
                _ => Op::Cas { expected: versions.get(&key).copied().unwrap_or(0), value },
            };
            let call_us = micros(self.t0);
            let reply = client.cmd(&history::command(&key, &op));
            let ret_us = micros(self.t0);
            let (outcome, fits) =
                history::outcome_of(&op, reply.as_deref().map_err(String::as_str));
            let replica = *replica;
            if reply.is_err() {
                conn = None;
            }
            remember_version(&mut versions, &key, &op, &outcome);
            let id = self.index * 1_000_000_000 + n;
            let event = check::Event { id, client: self.index, key, op, call_us, ret_us, outcome };
            let reply = match reply {
                Ok(line) if fits => line,
                Ok(line) => format!("UNEXPECTED {line}"),
                Err(e) => format!("io: {e}"),
            };
            records.push(Record { event, replica, reply });
        }
        records
    }
}

/// Tracks the version a key had when this client last learned it.
fn remember_version(versions: &mut BTreeMap<String, u64>, key: &str, op: &Op, outcome: &Outcome) {
    let learned = match (op, outcome) {
        (Op::Del, Outcome::Ok(_)) => Some(0),
        (_, Outcome::Ok(Ret::Written(v) | Ret::Conflict(v))) => Some(*v),
        (_, Outcome::Ok(Ret::Versioned(v))) => Some(v.as_ref().map_or(0, |(n, _)| *n)),
        _ => None,
    };
    if let Some(v) = learned {
        versions.insert(key.to_string(), v);
    }
}

/// A fault in effect.
struct Active {
    kind: FaultKind,
    targets: Vec<usize>,
    /// Proxy links it cut.
    cuts: Vec<(usize, usize)>,
    until: Instant,
    /// Index into `Scheduler::windows`.
    window: usize,
}

/// Starts and ends faults on the seeded schedule.
struct Scheduler {
    rng: Rng,
    faults: Vec<FaultKind>,
    /// Most replicas affected at once.
    budget: usize,
    active: Vec<Active>,
    /// Wiped replicas rejoining: (id, give up at).
    rejoining: Vec<(usize, Instant)>,
    /// How many active faults cut each proxy link.
    cut_count: BTreeMap<(usize, usize), usize>,
    /// Every fault injected.
    windows: Vec<FaultWindow>,
}

impl Scheduler {
    fn new(opts: &NemesisOpts, n: usize) -> Scheduler {
        Scheduler {
            rng: Rng(opts.seed),
            faults: opts.faults.clone(),
            budget: if opts.majority { n } else { (n - 1) / 2 },
            active: Vec::new(),
            rejoining: Vec::new(),
            cut_count: BTreeMap::new(),
            windows: Vec::new(),
        }
    }

    /// Injects faults for `length` after `t0`. A replica that crashes on its
    /// own is reported and restarted, so the run goes on.
    fn run(
        &mut self,
        c: &mut Cluster,
        t0: Instant,
        length: Duration,
        crashes: &mut Vec<Crash>,
    ) -> Result<(), String> {
        let end = t0 + length;
        let mut next_at = t0 + Duration::from_millis(self.rng.between(GAP_MS_MIN, GAP_MS_MAX));
        while Instant::now() < end {
            let now = Instant::now();
            let due: Vec<usize> =
                (0..self.active.len()).filter(|&i| self.active[i].until <= now).collect();
            for i in due.into_iter().rev() {
                let fault = self.active.remove(i);
                self.end_fault(c, t0, fault)?;
            }
            self.check_rejoining(c);
            for id in c.crashed_ids() {
                crashes.push(Crash::of(c, id, t0));
                c.restart(id)?;
            }
            if now >= next_at && now + QUIET_TAIL < end {
                self.maybe_start(c, t0)?;
                next_at = now + Duration::from_millis(self.rng.between(GAP_MS_MIN, GAP_MS_MAX));
            }
            thread::sleep(SCHEDULER_TICK);
        }
        Ok(())
    }

    /// Replicas hit by an active fault or still rejoining.
    fn affected(&self) -> BTreeSet<usize> {
        let mut set: BTreeSet<usize> = self.active.iter().flat_map(|a| a.targets.clone()).collect();
        set.extend(self.rejoining.iter().map(|(id, _)| *id));
        set
    }

    /// Starts one fault if the budget allows.
    fn maybe_start(&mut self, c: &mut Cluster, t0: Instant) -> Result<(), String> {
        let affected = self.affected();
        if affected.len() >= self.budget {
            return Ok(());
        }
        let kind = self.faults[self.rng.below(self.faults.len() as u64) as usize];
        let free: Vec<usize> = c.ids().filter(|id| !affected.contains(id)).collect();
        let mut count = 1 + self.rng.below((self.budget - affected.len()) as u64) as usize;
        if kind == FaultKind::Partition {
            // A partition needs someone on the other side.
            count = count.min(c.size() - 1);
        }
        let targets = self.pick_targets(c, &free, count);
        let until =
            Instant::now() + Duration::from_millis(self.rng.between(WINDOW_MS_MIN, WINDOW_MS_MAX));
        let start_us = micros(t0);
        let Some((targets, label, cuts)) = self.inject(c, kind, &targets)? else {
            return Ok(()); // Every target had crashed meanwhile.
        };
        c.note(&format!("nemesis: {label}"));
        self.windows.push(FaultWindow {
            kind: kind.name().to_string(),
            targets: targets.clone(),
            label,
            start_us,
            end_us: None,
        });
        let window = self.windows.len() - 1;
        let until = if kind == FaultKind::Restart { Instant::now() } else { until };
        self.active.push(Active { kind, targets, cuts, until, window });
        Ok(())
    }

    /// `count` targets from `free`, the current leader first half the time.
    fn pick_targets(&mut self, c: &Cluster, free: &[usize], count: usize) -> Vec<usize> {
        let mut pool = free.to_vec();
        let mut targets = Vec::new();
        if self.rng.below(2) == 0 {
            let asked = pool[self.rng.below(pool.len() as u64) as usize];
            if let Some(leader) = c.status(asked).ok().and_then(|s| s.leader()) {
                if let Some(pos) = pool.iter().position(|&id| id == leader) {
                    targets.push(pool.remove(pos));
                }
            }
        }
        while targets.len() < count && !pool.is_empty() {
            targets.push(pool.remove(self.rng.below(pool.len() as u64) as usize));
        }
        targets.sort_unstable();
        targets
    }

    /// Applies a fault and checks it took effect; returns the targets it
    /// hit, its label and the proxy links it cut, or `None` if every target
    /// had crashed on its own meanwhile (the run loop reports and restarts
    /// those).
    fn inject(
        &mut self,
        c: &mut Cluster,
        kind: FaultKind,
        targets: &[usize],
    ) -> Result<Option<Injected>, String> {
        match kind {
            FaultKind::Kill | FaultKind::Restart | FaultKind::Wipe => {
                let hit = each_running(c, targets, |c, id| {
                    c.kill(id)?;
                    if Client::connect(&c.addr(id), Duration::from_secs(1)).is_ok() {
                        return Err(format!("replica {id}'s port still accepts after kill -9"));
                    }
                    if kind == FaultKind::Wipe {
                        c.wipe(id)?;
                    }
                    Ok(())
                })?;
                if kind == FaultKind::Restart {
                    for &id in &hit {
                        c.restart(id)?;
                    }
                }
                let label = format!("{} {}", kind.name(), ids_text(&hit));
                Ok((!hit.is_empty()).then_some((hit, label, Vec::new())))
            }
            FaultKind::Stop => {
                let hit = each_running(c, targets, |c, id| c.stop(id))?;
                let label = format!("stop {}", ids_text(&hit));
                Ok((!hit.is_empty()).then_some((hit, label, Vec::new())))
            }
            FaultKind::Partition => {
                let others: Vec<usize> = c.ids().filter(|id| !targets.contains(id)).collect();
                let (links, arrow) = match self.rng.below(5) {
                    0 => (pairs(targets, &others), "->"),
                    1 => (pairs(&others, targets), "<-"),
                    _ => {
                        let mut both = pairs(targets, &others);
                        both.extend(pairs(&others, targets));
                        (both, "|")
                    }
                };
                let proxy = c.proxy().ok_or("partition fault without a link proxy")?;
                for &(from, to) in &links {
                    let count = self.cut_count.entry((from, to)).or_default();
                    *count += 1;
                    if *count == 1 {
                        proxy.cut(from, to)?;
                    }
                }
                let label = format!("partition {}{arrow}{}", ids_text(targets), ids_text(&others));
                Ok(Some((targets.to_vec(), label, links)))
            }
        }
    }

    /// Undoes a fault; for a partition first checks no byte crossed the cut.
    fn end_fault(&mut self, c: &mut Cluster, t0: Instant, fault: Active) -> Result<(), String> {
        match fault.kind {
            FaultKind::Kill => {
                for &id in &fault.targets {
                    c.restart(id)?;
                }
            }
            FaultKind::Wipe => {
                for &id in &fault.targets {
                    c.restart(id)?;
                    self.rejoining.push((id, Instant::now() + REJOIN_TIMEOUT));
                }
            }
            FaultKind::Stop => {
                for &id in &fault.targets {
                    c.cont(id)?;
                }
            }
            FaultKind::Restart => {}
            FaultKind::Partition => {
                let proxy = c.proxy().ok_or("partition fault without a link proxy")?;
                for link in &fault.cuts {
                    let count = self.cut_count.entry(*link).or_default();
                    *count -= 1;
                    if *count == 0 {
                        proxy.check_cut(link.0, link.1)?;
                        proxy.heal(link.0, link.1)?;
                    }
                }
            }
        }
        self.windows[fault.window].end_us = Some(micros(t0));
        c.note(&format!("nemesis: ended {}", self.windows[fault.window].label));
        Ok(())
    }

    /// Drops rejoined (or given-up) wiped replicas from the affected set.
    fn check_rejoining(&mut self, c: &Cluster) {
        let now = Instant::now();
        self.rejoining.retain(|&(id, give_up)| {
            let joined = c.status(id).is_ok_and(|s| {
                s.role() != "learner" && s.get("catchup").is_none() && s.leader().is_some()
            });
            !joined && now < give_up
        });
    }

    /// Ends every active fault (end of the run), all of them even when one
    /// fails, and heals every link; returns the first error.
    fn end_all(&mut self, c: &mut Cluster, t0: Instant) -> Result<(), String> {
        let mut first = Ok(());
        while let Some(fault) = self.active.pop() {
            let ended = self.end_fault(c, t0, fault);
            first = first.and(ended);
        }
        if let Some(proxy) = c.proxy() {
            proxy.heal_all();
        }
        first
    }
}

/// What [`Scheduler::inject`] did: the targets hit, the label, the links cut.
type Injected = (Vec<usize>, String, Vec<(usize, usize)>);

/// Applies `step` to each target; a target whose step fails because it had
/// crashed on its own is left out (the run loop reports and restarts it).
/// Returns the targets hit.
fn each_running(
    c: &mut Cluster,
    targets: &[usize],
    mut step: impl FnMut(&mut Cluster, usize) -> Result<(), String>,
) -> Result<Vec<usize>, String> {
    let mut hit = Vec::new();
    for &id in targets {
        match step(c, id) {
            Ok(()) => hit.push(id),
            Err(_) if c.crashed_ids().contains(&id) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hit)
}

/// Every (from, to) with `from` in `a` and `to` in `b`.
fn pairs(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
    a.iter().flat_map(|&x| b.iter().map(move |&y| (x, y))).collect()
}

/// `1,3`.
fn ids_text(ids: &[usize]) -> String {
    ids.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// Each key's final value (`None`: NOTFOUND), and the final reads as records.
type FinalReads = (BTreeMap<String, Option<String>>, Vec<Record>);

/// After the faults: restart everything from its disk, wait for a leader,
/// commit a barrier, converge, and read every key through every replica.
/// Returns the final value of each key and the final reads as records.
fn final_phase(
    c: &mut Cluster,
    opts: &NemesisOpts,
    t0: Instant,
    violations: &mut Vec<String>,
    crashes: &mut Vec<Crash>,
) -> Result<FinalReads, String> {
    crashes.extend(c.crashed_ids().into_iter().map(|id| Crash::of(c, id, t0)));
    let all: Vec<usize> = c.ids().collect();
    c.note("nemesis: restarting every replica from its disk");
    c.kill_at_once(&all)?;
    for &id in &all {
        c.restart(id)?;
    }
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let (leader, _) = c.wait_for_leader(deadline)?;
    put_retry(c, leader, "nemesis-barrier", &opts.seed.to_string(), deadline)?;
    let (leader, _) = c.wait_for_leader(deadline)?;
    wait_converged(c, leader, &all, deadline)?;

    let mut records = Vec::new();
    let mut finals = BTreeMap::new();
    let mut next_id = FINAL_CLIENT_BASE * 1_000_000_000;
    for k in 0..opts.keys {
        let key = format!("k{k}");
        let mut seen: Vec<(usize, String)> = Vec::new();
        for &id in &all {
            let (record, reply) = final_read(c, id, &key, t0, next_id, deadline)?;
            next_id += 1;
            seen.push((id, reply));
            records.push(record);
        }
        if seen.iter().any(|(_, r)| *r != seen[0].1) {
            let what: Vec<String> = seen.iter().map(|(id, r)| format!("{id}: {r}")).collect();
            violations
                .push(format!("replicas disagree on {key} after converging: {}", what.join("; ")));
        }
        let value = seen[0]
            .1
            .strip_prefix("VERSION ")
            .and_then(|r| r.split_once(' '))
            .map(|(_, v)| v.to_string());
        finals.insert(key, value);
    }
    Ok((finals, records))
}

/// One final GETV of `key` through `id`, retried until a definite answer.
fn final_read(
    c: &Cluster,
    id: usize,
    key: &str,
    t0: Instant,
    event_id: u64,
    deadline: Instant,
) -> Result<(Record, String), String> {
    loop {
        let call_us = micros(t0);
        let reply = c.client(id).and_then(|mut cl| cl.cmd(&format!("GETV {key}")));
        let ret_us = micros(t0);
        if let Ok(line) = &reply {
            let (outcome, fits) = history::outcome_of(&Op::GetV, Ok(line));
            if matches!(outcome, Outcome::Ok(_)) && fits {
                let event = check::Event {
                    id: event_id,
                    client: FINAL_CLIENT_BASE + id as u64,
                    key: key.to_string(),
                    op: Op::GetV,
                    call_us,
                    ret_us,
                    outcome,
                };
                return Ok((Record { event, replica: id, reply: line.clone() }, line.clone()));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("final GETV {key} via {id}: {reply:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs every check on the history; returns the number of keys checked.
fn check_all(
    records: &[Record],
    finals: &BTreeMap<String, Option<String>>,
    violations: &mut Vec<String>,
) -> usize {
    for r in records.iter().filter(|r| r.reply.starts_with("UNEXPECTED ")) {
        violations
            .push(format!("a reply that does not fit the protocol: {} ({})", r.event, r.reply));
    }
    let events = history::events(records);
    let reports = check::check(&events, check::Options::default());
    for report in &reports {
        match &report.verdict {
            check::Verdict::Linearizable => {}
            check::Verdict::Violation(why) => {
                violations.push(format!("key {} is not linearizable: {why}", report.key))
            }
            check::Verdict::Invalid(why) => {
                violations.push(format!("key {}: invalid history: {why}", report.key))
            }
            check::Verdict::Inconclusive(why) => violations.push(format!(
                "key {}: the linearizability check was inconclusive ({} ops): {why}",
                report.key, report.ops
            )),
        }
    }
    violations.extend(check::log_order_violations(&events));
    violations.extend(
        check::lost_writes(&events, finals).into_iter().map(|l| format!("lost write: {l}")),
    );
    reports.len()
}

/// A replica that exited without the driver killing it.
struct Crash {
    /// Which replica.
    id: usize,
    /// When the driver noticed, µs since the start.
    at_us: u64,
    /// The panic line and its message (`panicked at FILE:LINE: msg`), or the
    /// last log line when there was no panic.
    cause: String,
    /// The end of its log.
    tail: String,
}

impl Crash {
    /// Reads replica `id`'s log for why it exited.
    fn of(c: &Cluster, id: usize, t0: Instant) -> Crash {
        Crash { id, at_us: micros(t0), cause: c.exit_cause(id), tail: c.log_tail(id, 25) }
    }
}

/// One violation per distinct crash cause: how often, which replicas, when
/// first, and the first one's log tail.
fn crash_violations(crashes: &[Crash]) -> Vec<String> {
    let mut by_cause: BTreeMap<&str, Vec<&Crash>> = BTreeMap::new();
    for crash in crashes {
        by_cause.entry(crash.cause.as_str()).or_default().push(crash);
    }
    by_cause
        .into_iter()
        .map(|(cause, all)| {
            let ids: BTreeSet<usize> = all.iter().map(|c| c.id).collect();
            let ids: Vec<usize> = ids.into_iter().collect();
            format!(
                "replicas crashed {} time(s) ({}; replicas {}; first at {:.1}s): first one's log tail:\n{}",
                all.len(),
                cause,
                ids_text(&ids),
                all[0].at_us as f64 / 1e6,
                all[0].tail
            )
        })
        .collect()
}

/// Writes the SVG always; on failure the history, faults and explanation.
fn write_outputs(
    opts: &NemesisOpts,
    records: &[Record],
    summary: &Summary,
    end_us: u64,
) -> std::io::Result<()> {
    fs::create_dir_all(&opts.out)?;
    let verdict = if summary.passed() { "PASS" } else { "FAIL" };
    let title = format!(
        "quorumkv nemesis seed {} ({} replicas, {} s, faults {}): {} ops, ok {} / fail {} / unknown {}: {verdict}",
        opts.seed,
        opts.cluster.replicas,
        opts.seconds,
        opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        summary.ops,
        summary.ok,
        summary.fail,
        summary.unknown
    );
    fs::write(
        opts.out.join("history.svg"),
        crate::svg::render(&title, records, &summary.faults, end_us),
    )?;
    if summary.passed() {
        return Ok(());
    }
    let mut jsonl: String = records.iter().map(|r| history::record_json(r) + "\n").collect();
    fs::write(opts.out.join("history.jsonl"), std::mem::take(&mut jsonl))?;
    let faults: String = summary.faults.iter().map(|f| history::fault_json(f) + "\n").collect();
    fs::write(opts.out.join("faults.jsonl"), faults)?;
    let mut text = format!("{title}\n\n{}\nFault windows (ms since start):\n", summary.text());
    for f in &summary.faults {
        let end =
            f.end_us.map(|e| format!("{:.1}", e as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "  {:>10.1} .. {end:>10}  {}\n",
            f.start_us as f64 / 1000.0,
            f.label
        ));
    }
    text.push_str(&format!(
        "\nReproduce the schedule: cargo run --release -p driver -- nemesis --seed {} --seconds {} --replicas {} --faults {}{}\n",
        opts.seed,
        opts.seconds,
        opts.cluster.replicas,
        opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        if opts.majority { " --majority" } else { "" }
    ));
    fs::write(opts.out.join("explanation.txt"), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse_and_reject_unknown_names() {
        assert_eq!(
            FaultKind::parse_list("kill,stop").unwrap(),
            vec![FaultKind::Kill, FaultKind::Stop]
        );
        assert!(FaultKind::parse_list("kill,flood").is_err());
        assert!(FaultKind::parse_list("").is_err());
    }

    #[test]
    fn args_override_defaults() {
        let o = NemesisOpts::new(ClusterOpts::default());
        let args: Vec<String> =
            ["--seconds", "5", "--seed", "42", "--faults", "stop", "--majority"]
                .map(String::from)
                .to_vec();
        let o = o.parse_args(&args).unwrap();
        assert_eq!((o.seconds, o.seed, o.majority), (5, 42, true));
        assert_eq!(o.faults, vec![FaultKind::Stop]);
        assert_eq!(o.out, PathBuf::from("target/nemesis/42"));
        assert!(NemesisOpts::new(ClusterOpts::default()).parse_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn the_seed_fixes_the_schedule() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        assert!((0..100).all(|_| a.next() == b.next()));
        assert!((0..1000).all(|_| (3..=5).contains(&a.between(3, 5))));
    }
}
