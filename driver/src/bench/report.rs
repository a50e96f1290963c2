//! The bench's results and their three forms: a table for stdout,
//! `bench.json` with every number, and `bench.svg`, a hand-written chart of
//! throughput per workload and latency percentiles per workload.

use super::failover::FailoverResult;
use super::floors::Floors;
use super::histogram::Summary;
use super::json::Json;
use super::memory::{MemoryResult, RestartResult};
use super::workload::LoadResult;
use std::fmt::Write;

/// How and where the run happened.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// Start, UTC, `YYYY-MM-DD HH:MM:SS UTC`.
    pub started: String,
    /// End, same format.
    pub finished: String,
    /// `git describe`-like commit of the workspace, if known.
    pub commit: Option<String>,
    /// Replicas, N.
    pub replicas: usize,
    /// `--fsync always` when true.
    pub fsync: bool,
    /// Measured seconds per steady workload.
    pub seconds: f64,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `/proc/loadavg` at the start and at the end.
    pub loadavg_start: String,
    /// See `loadavg_start`.
    pub loadavg_end: String,
    /// The server binary.
    pub binary: String,
}

/// Everything one run measured. A part is `None` when not selected.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// How and where.
    pub meta: Meta,
    /// The floors of this machine, measured before the workloads.
    pub floors: Option<Floors>,
    /// The floors again, measured after the workloads.
    pub floors_end: Option<Floors>,
    /// The steady workloads, in run order.
    pub loads: Vec<LoadResult>,
    /// Leader kills.
    pub failover: Option<FailoverResult>,
    /// Memory with the big load.
    pub memory: Option<MemoryResult>,
    /// Memory with the big load in random order.
    pub memory_random: Option<MemoryResult>,
    /// Restart with the big load.
    pub restart: Option<RestartResult>,
    /// Parts that could not run, with why.
    pub errors: Vec<String>,
}

/// One workload number divided by its floor.
pub struct Ratio {
    /// Short name for JSON.
    pub key: String,
    /// What was divided by what.
    pub formula: String,
    /// The quotient.
    pub value: f64,
}

impl Report {
    fn load(&self, name: &str) -> Option<&LoadResult> {
        self.loads.iter().find(|l| l.name == name)
    }

    /// The best of the floor measurements (see [`Floors::best`]), the fsync
    /// floor also over the samples taken before each workload.
    pub fn best_floors(&self) -> Option<Floors> {
        let mut best = match (&self.floors, &self.floors_end) {
            (Some(a), Some(b)) => a.best(b),
            (a, b) => a.clone().or(b.clone())?,
        };
        for sample in self.loads.iter().filter_map(|l| l.fsync_before) {
            if sample.p50_us < best.fsync.p50_us {
                best.fsync = sample;
            }
        }
        Some(best)
    }

    /// Each workload result as a ratio to its floor (the best measured).
    pub fn ratios(&self) -> Vec<Ratio> {
        let Some(f) = &self.best_floors() else { return Vec::new() };
        let mut out = Vec::new();
        let n = self.meta.replicas;
        if let Some(l) = self.load("put1") {
            let floor = 3.0 * f.rtt.p50_us + f.fsync.p50_us;
            out.push(Ratio {
                key: "put1_p50_over_3rtt_plus_fsync".into(),
                formula: format!(
                    "put1 p50 {:.0} us / (3 x RTT {:.1} us + fsync {:.0} us = {floor:.0} us)",
                    l.latency.p50_us, f.rtt.p50_us, f.fsync.p50_us
                ),
                value: l.latency.p50_us / floor,
            });
            let shared = 3.0 * f.rtt.p50_us + f.fsync_shared.p50_us;
            out.push(Ratio {
                key: "put1_p50_over_3rtt_plus_shared_fsync".into(),
                formula: format!(
                    "put1 p50 / (3 x RTT + fsync with 3 writers at once {:.0} us = {shared:.0} us; \
                     informational)",
                    f.fsync_shared.p50_us
                ),
                value: l.latency.p50_us / shared,
            });
        }
        for name in ["put50", "get50", "mixed"] {
            if let Some(l) = self.load(name) {
                out.push(Ratio {
                    key: format!("{name}_{n}r_over_echo50"),
                    formula: format!(
                        "{n}-replica {name} {:.0} ops/s / echo-50 {:.0} rt/s",
                        l.ops_per_sec, f.echo_ops_per_sec
                    ),
                    value: l.ops_per_sec / f.echo_ops_per_sec,
                });
            }
        }
        out
    }

    /// Every number, for `bench.json`.
    pub fn to_json(&self) -> Json {
        let m = &self.meta;
        let meta = Json::obj()
            .set("started_utc", m.started.as_str())
            .set("finished_utc", m.finished.as_str())
            .set("commit", m.commit.clone())
            .set("replicas", m.replicas)
            .set("fsync", if m.fsync { "always" } else { "never" })
            .set("seconds_per_workload", m.seconds)
            .set("cpus", m.cpus)
            .set("loadavg_start", m.loadavg_start.as_str())
            .set("loadavg_end", m.loadavg_end.as_str())
            .set("binary", m.binary.as_str());
        let ratios: Vec<Json> = self
            .ratios()
            .into_iter()
            .map(|r| Json::obj().set("name", r.key).set("value", r.value).set("formula", r.formula))
            .collect();
        let elections: Option<u64> = self.loads.iter().map(|l| l.elections).sum();
        Json::obj()
            .set("meta", meta)
            .set("floors_start", self.floors.as_ref().map(Floors::to_json))
            .set("floors_end", self.floors_end.as_ref().map(Floors::to_json))
            .set("floors_best", self.best_floors().as_ref().map(Floors::to_json))
            .set("workloads", Json::Arr(self.loads.iter().map(LoadResult::to_json).collect()))
            .set("spurious_elections", elections)
            .set("failover", self.failover.as_ref().map(FailoverResult::to_json))
            .set("memory", self.memory.as_ref().map(MemoryResult::to_json))
            .set("memory_random", self.memory_random.as_ref().map(MemoryResult::to_json))
            .set("restart", self.restart.as_ref().map(RestartResult::to_json))
            .set("ratios", Json::Arr(ratios))
            .set("errors", self.errors.clone())
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = &self.meta;
        let _ = writeln!(
            t,
            "quorumkv bench, {} to {}, commit {}, {} replicas, fsync {}, {:.0} s per workload, \
             {} CPUs, loadavg {} at start, {} at end",
            m.started,
            m.finished,
            m.commit.as_deref().unwrap_or("?"),
            m.replicas,
            if m.fsync { "always" } else { "never" },
            m.seconds,
            m.cpus,
            m.loadavg_start,
            m.loadavg_end
        );
        for (when, f) in [("start", &self.floors), ("end", &self.floors_end)] {
            if let Some(f) = f {
                let _ = writeln!(
                    t,
                    "floors ({when:>5}): loopback RTT p50 {:.1} us | 2 KiB append+fsync p50 {:.0} us \
                     (p99 {:.0}; 3 writers at once p50 {:.0}) | echo 50 conns {:.0} rt/s (p50 {:.0} us)",
                    f.rtt.p50_us,
                    f.fsync.p50_us,
                    f.fsync.p99_us,
                    f.fsync_shared.p50_us,
                    f.echo_ops_per_sec,
                    f.echo.p50_us
                );
            }
        }
        if !self.loads.is_empty() {
            self.loads_table(&mut t);
        }
        if let Some(f) = &self.failover {
            failover_lines(&mut t, f);
        }
        for mem in self.memory.iter().chain(&self.memory_random) {
            self.memory_line(&mut t, mem);
        }
        if let Some(r) = &self.restart {
            let ms = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0} ms"));
            let _ = writeln!(
                t,
                "restart: replica {} (commit {}, {:.1} MB data dir) after kill -9: STATUS after {}, \
                 commit back after {}; its log says recovered in {}{}",
                r.id,
                r.commit_before,
                r.data_bytes as f64 / 1e6,
                ms(r.status_ms),
                ms(r.caught_up_ms),
                r.log_recovered_ms.map_or("-".to_string(), |v| format!("{v} ms")),
                r.error.as_ref().map_or(String::new(), |e| format!(" (error: {})", first_line(e)))
            );
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            let _ = writeln!(t, "ratios to floors (each floor at its best in this run):");
            for r in ratios {
                let _ = writeln!(t, "  {:>7.3}  {}", r.value, r.formula);
            }
        }
        // Only the first line: a crash report carries a log tail; bench.json has it all.
        for e in &self.errors {
            let more = if e.contains('\n') { " [more in bench.json]" } else { "" };
            let _ = writeln!(t, "ERROR: {}{more}", first_line(e));
        }
        t
    }

    fn loads_table(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "{:<10} {:>4} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>5} {:>7} {:>7} {:>8} {:>5}",
            "workload",
            "cli",
            "ops/s",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "errors",
            "elect",
            "cpu/op",
            "via",
            "fsync us",
            "load1"
        );
        let row = |t: &mut String, name: &str, clients: String, ops: String, s: &Summary| {
            let _ = write!(
                t,
                "{name:<10} {clients:>4} {ops:>9} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>8.0}",
                s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
            );
        };
        for l in &self.loads {
            row(t, &l.name, l.clients.to_string(), format!("{:.0}", l.ops_per_sec), &l.latency);
            let cpu: f64 = l.replica_cpu_secs.iter().map(|(_, s)| s).sum();
            let cpu_per_op = if l.ops > 0 { cpu * 1e6 / l.ops as f64 } else { 0.0 };
            let via: Vec<String> = l.targets.iter().map(usize::to_string).collect();
            let _ = writeln!(
                t,
                " {:>6} {:>5} {:>5.0}us {:>7} {:>8} {:>5}",
                l.errors,
                l.elections.map_or("?".to_string(), |e| e.to_string()),
                cpu_per_op,
                via.join(","),
                l.fsync_before.map_or("-".to_string(), |f| format!("{:.0}", f.p50_us)),
                l.loadavg_before.split(' ').next().unwrap_or("?")
            );
            for (cmd, s) in &l.by_command {
                row(t, &format!("  {cmd}"), String::new(), "-".into(), s);
                let _ = writeln!(t);
            }
            if let Some(e) = &l.first_error {
                let _ = writeln!(t, "  first error: {e}");
            }
        }
        let elections: Option<u64> = self.loads.iter().map(|l| l.elections).sum();
        let _ = writeln!(
            t,
            "(cpu/op: replicas' CPU time per op; fsync us: p50 of a 2 KiB append+fsync sampled \
             just before the run; load1: 1-minute loadavg before the run)"
        );
        let _ = writeln!(
            t,
            "spurious elections during the steady runs (no faults): {}",
            elections.map_or("?".to_string(), |e| e.to_string())
        );
    }

    fn memory_line(&self, t: &mut String, mem: &MemoryResult) {
        let raw = mem.raw_bytes.max(1) as f64;
        let per: Vec<String> = mem
            .replicas
            .iter()
            .map(|r| {
                format!(
                    "r{} {:.1} MB ({:.2}x raw; peak {:.1} MB; {:.1} MB before load)",
                    r.id,
                    r.rss as f64 / 1e6,
                    r.rss as f64 / raw,
                    r.hwm as f64 / 1e6,
                    r.rss_before as f64 / 1e6
                )
            })
            .collect();
        let _ = writeln!(
            t,
            "memory ({} keys): {} of {} keys acknowledged ({:.1} MB raw key+value) in {:.1} s \
             ({:.0}/s, {} errors, {} elections); RSS {}{}",
            mem.order.name(),
            mem.load.acked,
            mem.keys,
            raw / 1e6,
            mem.load.secs,
            mem.load.acked as f64 / mem.load.secs.max(1e-9),
            mem.load.errors,
            mem.elections.map_or("?".to_string(), |e| e.to_string()),
            per.join(", "),
            mem.error.as_ref().map_or(String::new(), |e| format!(" (error: {})", first_line(e)))
        );
        if let Some(e) = &mem.load.first_error {
            let _ = writeln!(t, "  first error of the load: {e}");
        }
    }

    /// `bench.svg`: throughput bars on top, latency percentiles (log scale) below.
    pub fn svg(&self) -> String {
        let mut s = String::new();
        let (w, h) = (960.0, 720.0);
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let m = &self.meta;
        let title = format!(
            "quorumkv bench: {} replicas, fsync {}, commit {}, {}",
            m.replicas,
            if m.fsync { "always" } else { "never" },
            m.commit.as_deref().unwrap_or("?"),
            m.started
        );
        let _ = writeln!(
            s,
            "<text x=\"20\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>",
            xml(&title)
        );
        self.svg_throughput(&mut s, 40.0, 300.0);
        self.svg_latency(&mut s, 360.0, 690.0);
        s.push_str("</svg>\n");
        s
    }

    /// Throughput bars between heights `top` and `bottom`; the echo floor as a grey bar.
    fn svg_throughput(&self, s: &mut String, top: f64, bottom: f64) {
        let mut bars: Vec<(String, f64, &str)> =
            self.loads.iter().map(|l| (l.name.clone(), l.ops_per_sec, "#4e79a7")).collect();
        if let Some(f) = &self.best_floors() {
            bars.push(("echo-50 floor".into(), f.echo_ops_per_sec, "#bab0ac"));
        }
        let _ = writeln!(
            s,
            "<text x=\"20\" y=\"{}\" font-weight=\"bold\">throughput, ops/s</text>",
            top + 10.0
        );
        if bars.is_empty() {
            return;
        }
        let (left, right) = (90.0, 940.0);
        let (plot_top, plot_bottom) = (top + 30.0, bottom - 25.0);
        let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
        let scale_max = nice_ceiling(max);
        for i in 0..=4 {
            let v = scale_max * f64::from(i) / 4.0;
            let y = plot_bottom - (plot_bottom - plot_top) * v / scale_max;
            grid_line(s, left, right, y, v);
        }
        let slot = (right - left) / bars.len() as f64;
        for (i, (name, v, color)) in bars.iter().enumerate() {
            let bw = slot * 0.6;
            let x = left + slot * i as f64 + (slot - bw) / 2.0;
            let bh = (plot_bottom - plot_top) * v / scale_max;
            let y = plot_bottom - bh;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.0}</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bw / 2.0,
                y - 4.0,
                x + bw / 2.0,
                plot_bottom + 16.0,
                xml(name)
            );
        }
    }

    /// Latency percentile bars per workload, log scale, between `top` and `bottom`.
    fn svg_latency(&self, s: &mut String, top: f64, bottom: f64) {
        let mut groups: Vec<(String, Summary)> =
            self.loads.iter().map(|l| (l.name.clone(), l.latency)).collect();
        if let Some(f) = &self.failover {
            if f.summary.count > 0 {
                groups.push(("failover client".into(), f.summary));
            }
            if f.probe_summary.count > 0 {
                groups.push(("failover probes".into(), f.probe_summary));
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"20\" y=\"{}\" font-weight=\"bold\">latency percentiles, us (log scale)</text>",
            top + 10.0
        );
        if groups.is_empty() {
            return;
        }
        let names = ["p50", "p90", "p99", "p99.9", "max"];
        let colors = ["#59a14f", "#edc948", "#f28e2b", "#e15759", "#76448a"];
        for (i, (n, c)) in names.iter().zip(colors).enumerate() {
            let x = 400.0 + 90.0 * i as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/>\
                 <text x=\"{}\" y=\"{}\">{n}</text>",
                top,
                x + 16.0,
                top + 10.0
            );
        }
        let values = |s: &Summary| [s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us];
        let all: Vec<f64> = groups.iter().flat_map(|g| values(&g.1)).filter(|v| *v > 0.0).collect();
        let lo = all.iter().copied().fold(f64::MAX, f64::min).max(1.0).log10().floor();
        let hi = all.iter().copied().fold(1.0, f64::max).log10().ceil().max(lo + 1.0);
        let (left, right) = (90.0, 940.0);
        let (plot_top, plot_bottom) = (top + 30.0, bottom - 25.0);
        let y_of = |v: f64| {
            let t = (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo);
            plot_bottom - (plot_bottom - plot_top) * t
        };
        for d in lo as i32..=hi as i32 {
            let v = 10f64.powi(d);
            let y = y_of(v);
            grid_line(s, left, right, y, v);
        }
        let slot = (right - left) / groups.len() as f64;
        for (g, (name, summary)) in groups.iter().enumerate() {
            let x0 = left + slot * g as f64 + slot * 0.1;
            let bw = slot * 0.8 / names.len() as f64;
            for (i, v) in values(summary).iter().enumerate() {
                let x = x0 + bw * i as f64;
                let y = y_of(*v);
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                     <title>{} {}: {v:.0} us</title></rect>",
                    bw * 0.9,
                    plot_bottom - y,
                    colors[i],
                    xml(name),
                    names[i]
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + slot * 0.4,
                plot_bottom + 16.0,
                xml(name)
            );
        }
    }
}

/// The first line of `s`.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The failover part of the table.
fn failover_lines(t: &mut String, f: &FailoverResult) {
    let ms = |s: &Summary| {
        format!(
            "median {:.1} ms, p90 {:.1}, p99 {:.1}, max {:.1}",
            s.p50_us / 1e3,
            s.p90_us / 1e3,
            s.p99_us / 1e3,
            s.max_us / 1e3
        )
    };
    let _ = writeln!(
        t,
        "failover: {} kills of the leader{}; kill -> first acknowledged PUT:",
        f.rounds.len(),
        f.error.as_ref().map_or(String::new(), |e| format!(" (stopped: {})", first_line(e)))
    );
    let _ = writeln!(
        t,
        "  client (tight loop, 250 ms attempt timeout): {} ({} rounds with none in 10 s)",
        ms(&f.summary),
        f.failed
    );
    let _ = writeln!(t, "  probes (new PUT every 5 ms, overlapping):   {}", ms(&f.probe_summary));
    let stuck: u64 = f.rounds.iter().map(|r| r.probes_stuck).sum();
    let probes: u64 = f.rounds.iter().map(|r| r.probes).sum();
    let stuck_rounds = f.rounds.iter().filter(|r| r.probes_stuck > 0).count();
    let at_leader: u64 = f.rounds.iter().map(|r| r.stuck_at_new_leader).sum();
    let _ = writeln!(
        t,
        "  probes unanswered after 1 s: {stuck} of {probes}, in {stuck_rounds} of {} rounds; \
         {at_leader} of them sent to the replica that became leader",
        f.rounds.len()
    );
    let elections: Vec<f64> =
        f.rounds.iter().filter_map(|r| r.election_ms.map(|e| e as f64)).collect();
    if !elections.is_empty() {
        let e = super::failover::exact_summary(&elections);
        let _ = writeln!(
            t,
            "  new leader's STATUS last_election_ms: median {:.0}, max {:.0}",
            e.p50_us, e.max_us
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&c| c >= v).unwrap_or(10.0 * p)
}

/// `1500` -> `1.5k`, `2000000` -> `2M`.
fn short_number(v: f64) -> String {
    let trim = |x: f64, unit: &str| {
        let s = format!("{x:.1}");
        format!("{}{unit}", s.trim_end_matches(".0"))
    };
    if v >= 1e6 {
        trim(v / 1e6, "M")
    } else if v >= 1e3 {
        trim(v / 1e3, "k")
    } else {
        trim(v, "")
    }
}

/// Escapes text for SVG.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One horizontal grid line of a chart at height `y`, labelled `v` on the left.
fn grid_line(s: &mut String, left: f64, right: f64, y: f64, v: f64) {
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" x2=\"{right}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        left - 6.0,
        y + 4.0,
        short_number(v)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_helpers() {
        assert_eq!(nice_ceiling(4321.0), 5000.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(2e6), "2M");
        assert_eq!(short_number(10.0), "10");
        assert_eq!(xml("a<b&c"), "a&lt;b&amp;c");
    }

    #[test]
    fn empty_report_renders() {
        let r = Report::default();
        assert!(r.svg().starts_with("<svg"));
        assert!(r.table().contains("quorumkv bench"));
        assert!(r.to_json().to_string().contains("\"workloads\": []"));
    }
}
