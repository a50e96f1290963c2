//! A cluster of real `quorumkv` processes on 127.0.0.1 for the driver and the
//! integration tests (DESIGN §7; STYLE "Testing pyramid", level 4).
//!
//! Each cluster lives in its own temp root `qkv-<pid>-<counter>-<nanos>` with
//! `data/<id>` (each replica's `--data-dir`) and `logs/<id>.log` (each
//! replica's stderr and stdout, appended across restarts, so a restarted
//! replica keeps its history). `Drop` continues, kills and reaps every child
//! and removes the root, also when a test panics; it then prints the log tails
//! so a failure can be read without rerunning.
//!
//! Faults: [`Cluster::kill`] (SIGKILL, reaped), [`Cluster::stop`] /
//! [`Cluster::cont`] (SIGSTOP / SIGCONT, checked through `/proc/<pid>/stat`),
//! [`Cluster::restart`] (same flags and data dir), [`Cluster::wipe`] (remove a
//! killed replica's data dir). Signals go through `kill(1)`, so the driver
//! needs no unsafe code and no extra crate.

use crate::client::Client;
use crate::proxy::Proxy;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How many times [`Cluster::start`] picks fresh ports when a replica finds
/// its port taken (the ports are free when picked but another process may grab
/// one before the replica binds it).
const START_ATTEMPTS_MAX: usize = 3;

/// How long a started replica may take to answer STATUS. Generous: a release
/// binary starts in milliseconds, but CI machines are loaded.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often waits re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Timeout for one STATUS probe (connect, write, read).
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long SIGSTOP / SIGCONT may take to show in `/proc/<pid>/stat`.
const SIGNAL_EFFECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Clusters alive at once in this process. Tests run in parallel threads; on a
/// 2-core machine more than two clusters starve each other's heartbeats.
const CLUSTERS_ALIVE_MAX: usize = 2;

/// Log lines per replica printed when a test panics or a scenario fails.
const LOG_TAIL_LINES: usize = 25;

/// Log lines searched for a crashed replica's panic message.
const EXIT_CAUSE_LOG_LINES: usize = 200;

/// Set `QKV_KEEP=1` to keep the temp root (data and logs) after the cluster drops.
const KEEP_ENV: &str = "QKV_KEEP";

/// Counts the clusters alive in this process (see [`CLUSTERS_ALIVE_MAX`]).
static CLUSTERS_ALIVE: Mutex<usize> = Mutex::new(0);
/// Signalled when a cluster drops, waking one waiting [`Cluster::start`].
static CLUSTER_FREED: Condvar = Condvar::new();
/// Makes temp root names unique within this process.
static ROOT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A slot of the process-wide cluster limit, released on drop.
struct Permit;

impl Permit {
    /// Blocks until fewer than [`CLUSTERS_ALIVE_MAX`] clusters are alive.
    fn acquire() -> Permit {
        // A poisoned lock only means another test panicked; the count is still right.
        let mut alive = CLUSTERS_ALIVE.lock().unwrap_or_else(PoisonError::into_inner);
        while *alive >= CLUSTERS_ALIVE_MAX {
            alive = CLUSTER_FREED.wait(alive).unwrap_or_else(PoisonError::into_inner);
        }
        *alive += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut alive = CLUSTERS_ALIVE.lock().unwrap_or_else(PoisonError::into_inner);
        *alive -= 1;
        CLUSTER_FREED.notify_one();
    }
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Number of replicas, N (ids 1..=N).
    pub replicas: usize,
    /// The server binary; empty means [`crate::binary::locate_server`].
    pub binary: PathBuf,
    /// Flags appended to every replica's command line (e.g. `--write-quorum 4`).
    pub extra_flags: Vec<String>,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--fsync always` when true, `--fsync never` when false.
    pub fsync: bool,
}

/// How the replicas are wired and where they run, for
/// [`Cluster::start_with`]; the default is what [`Cluster::start`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Start the replicas behind a [`Proxy`] (every peer link through it), so
    /// the driver can cut links: see [`Cluster::proxy`].
    pub proxied: bool,
    /// Where each replica listens and how it is launched (e.g. inside a
    /// network namespace); `None` means 127.0.0.1 on free ports.
    pub placement: Option<Vec<Placement>>,
}

/// Where one replica runs: its listening address and a command prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The host (IP address) it listens on.
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    /// Run the server through this command (e.g. `ip netns exec ns1`); the
    /// prefix must `exec` the server, so the pid is the server's.
    pub launcher: Vec<String>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            replicas: 3,
            binary: PathBuf::new(),
            extra_flags: Vec::new(),
            heartbeat_ms: 50,
            // Generous for a loaded 2-core machine: a missed heartbeat there
            // must not look like a dead leader.
            election_timeout_ms: 500,
            request_timeout_ms: 5000,
            fsync: true,
        }
    }
}

impl ClusterOpts {
    /// The value of `flag` in `extra_flags` (`--flag V` or `--flag=V`), if given.
    pub fn extra_flag(&self, flag: &str) -> Option<&str> {
        let prefix = format!("{flag}=");
        let mut flags = self.extra_flags.iter();
        while let Some(f) = flags.next() {
            if f == flag {
                return flags.next().map(String::as_str);
            }
            if let Some(v) = f.strip_prefix(&prefix) {
                return Some(v);
            }
        }
        None
    }

    /// NW: `--write-quorum` from `extra_flags`, else the default N/2+1 (DESIGN §2).
    pub fn write_quorum(&self) -> usize {
        self.extra_flag("--write-quorum")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.replicas / 2 + 1)
    }

    /// NR: `--read-quorum` from `extra_flags`, else the default N-NW+1 (DESIGN §2).
    pub fn read_quorum(&self) -> usize {
        self.extra_flag("--read-quorum")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.replicas - self.write_quorum() + 1)
    }

    /// The election timeout as a `Duration`.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// The request timeout as a `Duration`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A generous bound for the cluster to settle (form, elect, recover):
    /// 20 election timeouts, at least 10 s.
    pub fn settle_timeout(&self) -> Duration {
        (self.election_timeout() * 20).max(Duration::from_secs(10))
    }

    /// `now + settle_timeout()`, the usual deadline for [`Cluster::wait_for_leader`].
    pub fn settle_deadline(&self) -> Instant {
        Instant::now() + self.settle_timeout()
    }
}

/// One parsed `STATUS` reply (DESIGN §9): `STATUS id=1 role=leader leader=3 epoch=3 ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The reply line as received.
    pub raw: String,
    /// Every `key=value` field.
    fields: BTreeMap<String, String>,
    /// `id`.
    id: usize,
    /// `leader`: `None` for `none`.
    leader: Option<usize>,
    /// `epoch`.
    epoch: u64,
}

impl Status {
    /// Parses a STATUS line; the fields DESIGN §9 says always appear must be
    /// there and well-formed.
    pub fn parse(line: &str) -> Result<Status, String> {
        let rest = line.strip_prefix("STATUS ").ok_or_else(|| format!("not a STATUS: {line:?}"))?;
        let mut fields = BTreeMap::new();
        for word in rest.split(' ').filter(|w| !w.is_empty()) {
            let (k, v) = word.split_once('=').ok_or_else(|| format!("bad field {word:?}"))?;
            fields.insert(k.to_string(), v.to_string());
        }
        for key in ["id", "role", "leader", "epoch", "commit", "applied"] {
            if !fields.contains_key(key) {
                return Err(format!("STATUS lacks {key}=: {line:?}"));
            }
        }
        let id = fields["id"].parse().map_err(|_| format!("bad id in {line:?}"))?;
        let epoch = fields["epoch"].parse().map_err(|_| format!("bad epoch in {line:?}"))?;
        let leader = match fields["leader"].as_str() {
            "none" => None,
            l => Some(l.parse().map_err(|_| format!("bad leader in {line:?}"))?),
        };
        let role = fields["role"].as_str();
        if !["leader", "follower", "candidate", "learner"].contains(&role) {
            return Err(format!("bad role in {line:?}"));
        }
        Ok(Status { raw: line.to_string(), fields, id, leader, epoch })
    }

    /// `id`.
    pub fn id(&self) -> usize {
        self.id
    }

    /// `role`: one of `leader follower candidate learner`.
    pub fn role(&self) -> &str {
        &self.fields["role"]
    }

    /// `leader`, or `None` for `leader=none`.
    pub fn leader(&self) -> Option<usize> {
        self.leader
    }

    /// `epoch`.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Any field by name.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// One replica process and its files.
struct Replica {
    /// 1-based id.
    id: usize,
    /// `127.0.0.1:<port>`.
    addr: String,
    /// `--data-dir`.
    data_dir: PathBuf,
    /// Where its stderr and stdout are appended.
    log_path: PathBuf,
    /// The process; `None` once the driver killed it.
    child: Option<Child>,
    /// Set by an exit the driver did not cause (a crash), kept for reports.
    crashed: Option<ExitStatus>,
    /// SIGSTOPped and not yet continued.
    stopped: bool,
}

/// Why one start attempt failed.
enum StartError {
    /// A replica could not bind its port: pick new ports and try again.
    PortTaken(String),
    /// Anything else: give up.
    Other(String),
}

/// A running cluster of real replica processes. Ids are 1-based.
pub struct Cluster {
    /// How it was started.
    opts: ClusterOpts,
    /// Proxy and placement.
    layout: Layout,
    /// The temp root holding `data/` and `logs/`.
    root: PathBuf,
    /// Replica `id` is at index `id - 1`.
    replicas: Vec<Replica>,
    /// The link proxy when `layout.proxied`; dropped after the children.
    proxy: Option<Proxy>,
    /// Dropped after `Drop::drop` has killed the children.
    _permit: Permit,
}

impl Cluster {
    /// Starts `opts.replicas` replicas on fresh ports and waits until each
    /// answers STATUS. Retries with new ports (up to 3 attempts) when a
    /// replica exits early saying its address is in use.
    pub fn start(opts: ClusterOpts) -> Result<Cluster, String> {
        Cluster::start_with(opts, Layout::default())
    }

    /// [`Cluster::start`] with a [`Layout`]: behind the link proxy, or at
    /// given addresses through a launcher (fixed ports are not retried).
    pub fn start_with(mut opts: ClusterOpts, layout: Layout) -> Result<Cluster, String> {
        if opts.replicas == 0 {
            return Err("a cluster needs at least one replica".into());
        }
        if opts.binary.as_os_str().is_empty() {
            opts.binary = crate::binary::locate_server()?;
        }
        let permit = Permit::acquire();
        let root = make_root()?;
        let mut cluster =
            Cluster { opts, layout, root, replicas: Vec::new(), proxy: None, _permit: permit };
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS_MAX {
            match cluster.start_attempt(attempt) {
                Ok(()) => return Ok(cluster),
                Err(StartError::PortTaken(msg)) => {
                    cluster.kill_all();
                    last = msg;
                }
                Err(StartError::Other(msg)) => return Err(msg),
            }
        }
        Err(format!("ports kept being taken after {START_ATTEMPTS_MAX} attempts; last: {last}"))
    }

    /// One try: fresh ports, empty data dirs, spawn all, wait for all.
    fn start_attempt(&mut self, attempt: usize) -> Result<(), StartError> {
        let (hosts, ports) = match &self.layout.placement {
            Some(p) if p.len() == self.opts.replicas => {
                (p.iter().map(|p| p.host.clone()).collect(), p.iter().map(|p| p.port).collect())
            }
            Some(p) => {
                let msg = format!("{} placements for {} replicas", p.len(), self.opts.replicas);
                return Err(StartError::Other(msg));
            }
            None => (
                vec!["127.0.0.1".to_string(); self.opts.replicas],
                pick_ports(self.opts.replicas).map_err(StartError::Other)?,
            ),
        };
        let data = self.root.join("data");
        let logs = self.root.join("logs");
        // A previous attempt's directories name other ports: start blank.
        let _ = fs::remove_dir_all(&data);
        self.replicas.clear();
        for (i, port) in ports.iter().enumerate() {
            let id = i + 1;
            let data_dir = data.join(id.to_string());
            fs::create_dir_all(&data_dir)
                .and_then(|()| fs::create_dir_all(&logs))
                .map_err(|e| StartError::Other(format!("create {}: {e}", data_dir.display())))?;
            self.replicas.push(Replica {
                id,
                addr: format!("{}:{port}", hosts[i]),
                data_dir,
                log_path: logs.join(format!("{id}.log")),
                child: None,
                crashed: None,
                stopped: false,
            });
        }
        self.proxy = None;
        if self.layout.proxied {
            let targets: Vec<String> = self.replicas.iter().map(|r| r.addr.clone()).collect();
            self.proxy = Some(Proxy::start(&targets).map_err(StartError::Other)?);
        }
        // Spawn all before waiting: a replica may not answer until it meets its peers.
        let mut log_offsets = Vec::new();
        for id in self.ids() {
            let note = format!("start attempt {attempt}");
            log_offsets.push(self.spawn(id, &note).map_err(StartError::Other)?);
        }
        for (id, offset) in self.ids().zip(log_offsets) {
            self.wait_ready(id, offset)?;
        }
        Ok(())
    }

    /// Spawns replica `id` with its flags, appending its output to its log.
    /// Returns the log offset where this run's output starts.
    fn spawn(&mut self, id: usize, note: &str) -> Result<u64, String> {
        let args = self.args(id);
        let opts_binary = self.opts.binary.clone();
        let launcher = self.layout.placement.as_ref().map(|p| p[id - 1].launcher.clone());
        let r = &mut self.replicas[id - 1];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log_path)
            .map_err(|e| format!("open {}: {e}", r.log_path.display()))?;
        let _ = writeln!(log, "=== driver: {note}: {} {}", opts_binary.display(), args.join(" "));
        // The child's output starts after the note (the file is opened for append).
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
        let mut command = match launcher.as_deref() {
            Some([program, prefix @ ..]) => {
                let mut c = Command::new(program);
                c.args(prefix).arg(&opts_binary);
                c
            }
            _ => Command::new(&opts_binary),
        };
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", opts_binary.display()))?;
        r.child = Some(child);
        r.crashed = None;
        r.stopped = false;
        Ok(offset)
    }

    /// The command line of replica `id`.
    fn args(&self, id: usize) -> Vec<String> {
        let peers: Vec<&str> = self.replicas.iter().map(|r| r.addr.as_str()).collect();
        let o = &self.opts;
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--peers".to_string(),
            peers.join(","),
            "--data-dir".to_string(),
            self.replicas[id - 1].data_dir.display().to_string(),
            "--fsync".to_string(),
            if o.fsync { "always" } else { "never" }.to_string(),
            "--heartbeat-ms".to_string(),
            o.heartbeat_ms.to_string(),
            "--election-timeout-ms".to_string(),
            o.election_timeout_ms.to_string(),
            "--request-timeout-ms".to_string(),
            o.request_timeout_ms.to_string(),
        ];
        args.extend(o.extra_flags.iter().cloned());
        if let Some(proxy) = &self.proxy {
            args.extend(proxy.dial_flags(id));
        }
        args
    }

    /// Waits until replica `id` answers STATUS naming itself, or exits.
    fn wait_ready(&mut self, id: usize, log_offset: u64) -> Result<(), StartError> {
        self.wait_ready_status(id, log_offset).map(|_| ())
    }

    /// [`Cluster::wait_ready`], returning the first STATUS that named `id`.
    fn wait_ready_status(&mut self, id: usize, log_offset: u64) -> Result<Status, StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.reap_if_exited(id) {
                let out = read_log_from(&self.replicas[id - 1].log_path, log_offset);
                let out = if out.trim().is_empty() { "(no output)" } else { out.trim_end() };
                let msg = format!("replica {id} exited at start ({status}): {out}");
                if out.to_lowercase().contains("address") {
                    return Err(StartError::PortTaken(msg));
                }
                return Err(StartError::Other(msg));
            }
            if let Ok(s) = self.status(id) {
                if s.id() == id {
                    return Ok(s);
                }
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail(id, LOG_TAIL_LINES);
                return Err(StartError::Other(format!(
                    "replica {id} did not answer STATUS within {READY_TIMEOUT:?}; log tail:\n{tail}"
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Reaps replica `id` if its process exited on its own; returns the exit
    /// status then. A SIGKILL by the driver is not such an exit.
    fn reap_if_exited(&mut self, id: usize) -> Option<ExitStatus> {
        let r = &mut self.replicas[id - 1];
        let status = r.child.as_mut()?.try_wait().ok().flatten()?;
        r.child = None;
        r.crashed = Some(status);
        r.stopped = false;
        Some(status)
    }

    /// The options the cluster was started with (with the binary resolved).
    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }

    /// The link proxy, when the cluster was started with [`Layout::proxied`].
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// SIGKILLs every listed running replica at once (all signals first, then
    /// the reaping), as a power cut does; returns the ids killed.
    pub fn kill_at_once(&mut self, ids: &[usize]) -> Result<Vec<usize>, String> {
        let mut killed = Vec::new();
        for &id in ids {
            self.replica(id);
            if let Some(child) = self.replicas[id - 1].child.as_mut() {
                child.kill().map_err(|e| format!("kill {id}: {e}"))?;
                killed.push(id);
            }
        }
        for &id in &killed {
            let r = &mut self.replicas[id - 1];
            if let Some(mut child) = r.child.take() {
                child.wait().map_err(|e| format!("reap {id}: {e}"))?;
            }
            r.stopped = false;
        }
        self.note(&format!("killed replicas {killed:?} at once (SIGKILL)"));
        Ok(killed)
    }

    /// Like [`Cluster::restart`], and returns the first STATUS the restarted
    /// replica answered, to see the state it came up in.
    pub fn restart_with_status(&mut self, id: usize) -> Result<Status, String> {
        if self.is_running(id) {
            return Err(format!("restart {id}: still running"));
        }
        let offset = self.spawn(id, "restart")?;
        self.wait_ready_status(id, offset).map_err(|e| match e {
            StartError::PortTaken(m) | StartError::Other(m) => format!("restart {id}: {m}"),
        })
    }

    /// The temp root holding `data/` and `logs/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of replicas, N.
    pub fn size(&self) -> usize {
        self.replicas.len()
    }

    /// All ids, 1..=N.
    pub fn ids(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.replicas.len()
    }

    /// `127.0.0.1:<port>` of replica `id`.
    pub fn addr(&self, id: usize) -> String {
        self.replica(id).addr.clone()
    }

    /// The pid of replica `id` while its process exists.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.replica(id).child.as_ref().map(Child::id)
    }

    /// Replica `id`'s data directory.
    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.replica(id).data_dir.clone()
    }

    /// Replica `id`'s log file.
    pub fn log_path(&self, id: usize) -> PathBuf {
        self.replica(id).log_path.clone()
    }

    fn replica(&self, id: usize) -> &Replica {
        assert!(id >= 1 && id <= self.replicas.len(), "no replica {id} in a cluster of {}", {
            self.replicas.len()
        });
        &self.replicas[id - 1]
    }

    /// Whether replica `id`'s process exists and has not exited (a stopped
    /// process is running).
    pub fn is_running(&mut self, id: usize) -> bool {
        self.replica(id);
        self.reap_if_exited(id);
        self.replicas[id - 1].child.is_some()
    }

    /// Whether replica `id` is SIGSTOPped by the driver.
    pub fn is_stopped(&self, id: usize) -> bool {
        self.replica(id).stopped
    }

    /// Ids whose processes are running (stopped ones included).
    pub fn running_ids(&mut self) -> Vec<usize> {
        self.ids().filter(|&id| self.is_running(id)).collect()
    }

    /// Ids that are running and not stopped: the ones that can answer.
    pub fn live_ids(&mut self) -> Vec<usize> {
        self.ids().filter(|&id| self.is_running(id) && !self.is_stopped(id)).collect()
    }

    /// Fails, naming each with its log tail, when a replica exited without
    /// the driver killing it (a crash).
    pub fn check_alive(&mut self) -> Result<(), String> {
        let _ = self.running_ids();
        let crashed: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|r| r.crashed.map(|s| (r.id, s)))
            .map(|(id, s)| format!("replica {id} exited ({s}):\n{}", self.log_tail(id, 15)))
            .collect();
        if crashed.is_empty() {
            Ok(())
        } else {
            Err(crashed.join("\n"))
        }
    }

    /// Ids of replicas that exited without the driver killing them (reaped
    /// now); each stays listed until it is restarted.
    pub fn crashed_ids(&mut self) -> Vec<usize> {
        let _ = self.running_ids();
        self.replicas.iter().filter(|r| r.crashed.is_some()).map(|r| r.id).collect()
    }

    /// SIGKILLs replica `id` and reaps it. A stopped process dies too.
    pub fn kill(&mut self, id: usize) -> Result<(), String> {
        self.replica(id);
        let r = &mut self.replicas[id - 1];
        let mut child = r.child.take().ok_or_else(|| format!("kill {id}: not running"))?;
        r.stopped = false;
        child.kill().map_err(|e| format!("kill {id}: {e}"))?;
        child.wait().map_err(|e| format!("reap {id}: {e}"))?;
        self.note(&format!("killed replica {id} (SIGKILL)"));
        Ok(())
    }

    /// SIGSTOPs replica `id` and waits until `/proc/<pid>/stat` shows state `T`.
    pub fn stop(&mut self, id: usize) -> Result<(), String> {
        let pid = self.running_pid(id)?;
        send_signal(pid, "STOP")?;
        self.replicas[id - 1].stopped = true;
        self.note(&format!("stopped replica {id} (SIGSTOP)"));
        wait_for_state(pid, |s| s == 'T').map_err(|e| format!("stop {id}: {e}"))
    }

    /// SIGCONTs replica `id` and waits until it is no longer in state `T`.
    pub fn cont(&mut self, id: usize) -> Result<(), String> {
        let pid = self.running_pid(id)?;
        send_signal(pid, "CONT")?;
        self.replicas[id - 1].stopped = false;
        self.note(&format!("continued replica {id} (SIGCONT)"));
        wait_for_state(pid, |s| s != 'T').map_err(|e| format!("cont {id}: {e}"))
    }

    /// The pid of a running replica, or an error saying it is not running.
    fn running_pid(&mut self, id: usize) -> Result<u32, String> {
        if !self.is_running(id) {
            return Err(format!("replica {id} is not running"));
        }
        self.pid(id).ok_or_else(|| format!("replica {id} has no pid"))
    }

    /// Starts replica `id` again with the same flags and data dir and waits
    /// until it answers STATUS.
    pub fn restart(&mut self, id: usize) -> Result<(), String> {
        if self.is_running(id) {
            return Err(format!("restart {id}: still running"));
        }
        let offset = self.spawn(id, "restart")?;
        self.wait_ready(id, offset).map_err(|e| match e {
            StartError::PortTaken(m) | StartError::Other(m) => format!("restart {id}: {m}"),
        })
    }

    /// Starts replica `id` again like [`Cluster::restart`], but returns as soon
    /// as the process is spawned, so the caller can time its start-up.
    pub fn respawn(&mut self, id: usize) -> Result<(), String> {
        if self.is_running(id) {
            return Err(format!("respawn {id}: still running"));
        }
        self.spawn(id, "restart (not waiting)").map(|_| ())
    }

    /// Removes replica `id`'s data directory, as a lost disk. Only when killed.
    pub fn wipe(&mut self, id: usize) -> Result<(), String> {
        if self.is_running(id) {
            return Err(format!("wipe {id}: still running; kill it first"));
        }
        let dir = self.data_dir(id);
        self.note(&format!("wiped replica {id}'s data dir"));
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("wipe {}: {e}", dir.display())),
        }
    }

    /// A client connected to replica `id`. Its read timeout outlasts the
    /// server's request timeout, so a slow answer is seen, not cut off.
    pub fn client(&self, id: usize) -> Result<Client, String> {
        let timeout = self.opts.request_timeout() + Duration::from_secs(3);
        Client::connect(&self.addr(id), timeout).map_err(|e| format!("replica {id}: {e}"))
    }

    /// Asks replica `id` for STATUS on a fresh connection with a short timeout.
    pub fn status(&self, id: usize) -> Result<Status, String> {
        let mut c = Client::connect(&self.addr(id), STATUS_TIMEOUT)?;
        let line = c.cmd("STATUS")?;
        Status::parse(&line)
    }

    /// Polls every running, non-stopped replica until all name the same
    /// leader and epoch and that leader (one of them) reports `role=leader`.
    /// Returns `(leader id, epoch)`. Fails at `deadline` with what it last saw,
    /// or at once when a replica crashes.
    pub fn wait_for_leader(&mut self, deadline: Instant) -> Result<(usize, u64), String> {
        self.wait_for_leader_among(None, deadline)
    }

    /// [`Cluster::wait_for_leader`] over the replicas in `among` only (those
    /// of them running and not stopped), e.g. the majority side of a
    /// partition; `None` means all.
    pub fn wait_for_leader_among(
        &mut self,
        among: Option<&[usize]>,
        deadline: Instant,
    ) -> Result<(usize, u64), String> {
        loop {
            self.check_alive()?;
            let ids: Vec<usize> = self
                .live_ids()
                .into_iter()
                .filter(|id| among.is_none_or(|a| a.contains(id)))
                .collect();
            let statuses: Vec<(usize, Result<Status, String>)> =
                ids.iter().map(|&id| (id, self.status(id))).collect();
            if let Some(found) = agreed_leader(&statuses) {
                return Ok(found);
            }
            if Instant::now() < deadline {
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            let last = statuses
                .iter()
                .map(|(id, s)| match s {
                    Ok(s) => format!("  {id}: {}", s.raw),
                    Err(e) => format!("  {id}: {e}"),
                })
                .collect::<Vec<_>>()
                .join("\n");
            return Err(format!("no agreed leader by the deadline; last STATUS:\n{last}"));
        }
    }

    /// The last `lines` lines of replica `id`'s log.
    pub fn log_tail(&self, id: usize, lines: usize) -> String {
        let text = read_log_from(&self.replica(id).log_path, 0);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Why replica `id` exited, read from its log: its panic's location and
    /// message (`panicked at FILE:LINE:COL: msg`), else its last log line.
    pub fn exit_cause(&self, id: usize) -> String {
        let log = self.log_tail(id, EXIT_CAUSE_LOG_LINES);
        let lines: Vec<&str> = log.lines().collect();
        match lines.iter().rposition(|l| l.contains("panicked at")) {
            Some(i) => {
                let at = lines[i].split("panicked at").nth(1).unwrap_or("").trim();
                let msg = lines.get(i + 1).map(|m| m.trim()).unwrap_or("");
                format!("panicked at {at} {msg}")
            }
            None => format!("exited; last log line: {}", lines.last().unwrap_or(&"(none)")),
        }
    }

    /// Every replica's log tail under a header, for failure reports.
    pub fn logs_summary(&self, lines: usize) -> String {
        self.ids()
            .map(|id| format!("--- replica {id} log tail ---\n{}", self.log_tail(id, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Appends `=== driver: <text>` to every replica's log, so the logs show
    /// when the driver injected each fault.
    pub fn note(&self, text: &str) {
        for r in &self.replicas {
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&r.log_path) {
                let _ = writeln!(f, "=== driver: {text}");
            }
        }
    }

    /// Continues, kills and reaps every child.
    fn kill_all(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                if r.stopped {
                    let _ = send_signal(child.id(), "CONT");
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            r.stopped = false;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() && !self.replicas.is_empty() {
            eprintln!("{}", self.logs_summary(LOG_TAIL_LINES));
        }
        if std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1") {
            eprintln!("{KEEP_ENV}=1: kept {}", self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// The leader every polled replica names, if they all agree on one leader and
/// epoch and that leader was polled and reports `role=leader`.
fn agreed_leader(statuses: &[(usize, Result<Status, String>)]) -> Option<(usize, u64)> {
    let first = statuses.first()?.1.as_ref().ok()?;
    let (leader, epoch) = (first.leader()?, first.epoch());
    let all_agree = statuses
        .iter()
        .all(|(_, s)| s.as_ref().is_ok_and(|s| s.leader() == Some(leader) && s.epoch() == epoch));
    let leader_leads = statuses
        .iter()
        .any(|(id, s)| *id == leader && s.as_ref().is_ok_and(|s| s.role() == "leader"));
    (all_agree && leader_leads).then_some((leader, epoch))
}

/// Creates `<tmp>/qkv-<pid>-<counter>-<nanos>`.
fn make_root() -> Result<PathBuf, String> {
    let counter = ROOT_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let root = std::env::temp_dir().join(format!("qkv-{}-{counter}-{nanos}", std::process::id()));
    fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    Ok(root)
}

/// Picks `n` distinct free ports: binds them all at once on 127.0.0.1:0,
/// reads the ports and releases them.
fn pick_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("pick a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read a picked port: {e}"))
}

/// The log text from byte `offset` on (lossy UTF-8); empty when unreadable.
fn read_log_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Sends `SIG<sig>` to `pid` through `kill(1)`.
fn send_signal(pid: u32, sig: &str) -> Result<(), String> {
    let out = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run kill -{sig} {pid}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim_end()))
    }
}

/// The state letter of `pid` from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; the state follows the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Polls `pid`'s state until `ok(state)` holds.
fn wait_for_state(pid: u32, ok: impl Fn(char) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + SIGNAL_EFFECT_TIMEOUT;
    loop {
        let state = process_state(pid);
        if state.is_some_and(&ok) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "pid {pid} still in state {state:?} after {SIGNAL_EFFECT_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_required_fields_and_rejects_missing_ones() {
        let s = Status::parse("STATUS id=1 role=follower leader=3 epoch=6 commit=5 applied=5 x=y")
            .unwrap();
        assert_eq!((s.id(), s.role(), s.leader(), s.epoch()), (1, "follower", Some(3), 6));
        assert_eq!(s.get("x"), Some("y"));
        let none =
            Status::parse("STATUS id=2 role=candidate leader=none epoch=0 commit=0 applied=0");
        assert_eq!(none.unwrap().leader(), None);
        assert!(Status::parse("STATUS id=1 role=leader leader=1 epoch=1").is_err());
        assert!(Status::parse("STATUS id=1 role=boss leader=1 epoch=1 commit=0 applied=0").is_err());
        assert!(Status::parse("ERR BADCMD").is_err());
    }

    #[test]
    fn agreement_needs_same_leader_and_epoch_and_a_leading_leader() {
        let st = |id: usize, role: &str, leader: &str, epoch: u64| {
            let line = format!(
                "STATUS id={id} role={role} leader={leader} epoch={epoch} commit=0 applied=0"
            );
            (id, Status::parse(&line))
        };
        let good = [st(1, "follower", "3", 3), st(2, "follower", "3", 3), st(3, "leader", "3", 3)];
        assert_eq!(agreed_leader(&good), Some((3, 3)));
        let split = [st(1, "follower", "3", 3), st(2, "follower", "3", 6), st(3, "leader", "3", 3)];
        assert_eq!(agreed_leader(&split), None);
        let absent = [st(1, "follower", "3", 3), st(2, "follower", "3", 3)];
        assert_eq!(agreed_leader(&absent), None);
        let not_yet = [st(1, "follower", "3", 3), st(3, "candidate", "3", 3)];
        assert_eq!(agreed_leader(&not_yet), None);
        let failed = [st(1, "follower", "3", 3), (3, Err("refused".to_string()))];
        assert_eq!(agreed_leader(&failed), None);
    }

    #[test]
    fn quorum_defaults_and_overrides() {
        let five = ClusterOpts { replicas: 5, ..ClusterOpts::default() };
        assert_eq!((five.write_quorum(), five.read_quorum()), (3, 3));
        let flags = ["--write-quorum", "4", "--read-quorum=2"].map(String::from).to_vec();
        let tuned = ClusterOpts { extra_flags: flags, ..five };
        assert_eq!((tuned.write_quorum(), tuned.read_quorum()), (4, 2));
    }

    #[test]
    fn own_process_state_is_running_or_sleeping() {
        let state = process_state(std::process::id()).unwrap();
        assert!("RS".contains(state), "state {state}");
    }
}
