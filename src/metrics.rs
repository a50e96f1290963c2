//! The metrics registry behind `METRICS` (DESIGN §5, §8, §9): counters,
//! gauges and log-bucketed histograms, rendered as Prometheus text exposition
//! format (version 0.0.4), one sample per line, then the connection writes
//! `END`.
//!
//! The event loop owns one [`Metrics`] and updates it without locks: it is the
//! only thread that touches it. Numbers that other threads or the protocol
//! keep (transport atomics, `Replica::stats`, the commit index) are read at
//! render time and passed in as [`Readings`], so nothing is counted twice.
//!
//! Histograms keep integer bounds in a base unit (microseconds for durations,
//! a plain count for sizes) with bounds growing by a factor of two; the text
//! shows durations in seconds, as Prometheus names them (`_seconds`).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::time::Duration;

/// Every error code a client can see (DESIGN §9), so each has a series from
/// the start: a rate query over a series that appears late misses its start.
pub const ERROR_CODES: [&str; 8] =
    ["NOQUORUM", "TIMEOUT", "NOLEADER", "CONFLICT", "TOOLARGE", "BADCMD", "BUSY", "SHUTDOWN"];

/// Roles a replica reports, one gauge series each (1 for the current role).
pub const ROLES: [&str; 4] = ["leader", "follower", "candidate", "learner"];

/// Smallest duration bucket, in microseconds: below any fsync on a real disk.
const DURATION_BUCKET_US_MIN: u64 = 10;
/// Duration buckets: 10 µs doubling to about 5.2 s, past every request timeout
/// a test or a sane deployment uses; slower samples land in `+Inf`.
const DURATION_BUCKETS: usize = 20;
/// Size buckets: 1 doubling to 65536, above the loop's batch and a WAL batch.
const SIZE_BUCKETS: usize = 17;

/// The commands the loop answers, one label value each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommandKind {
    Put,
    Get,
    GetV,
    Del,
    Cas,
    Status,
    Metrics,
    Dump,
}

impl CommandKind {
    /// Every kind, in label order.
    pub const ALL: [CommandKind; 8] = [
        CommandKind::Put,
        CommandKind::Get,
        CommandKind::GetV,
        CommandKind::Del,
        CommandKind::Cas,
        CommandKind::Status,
        CommandKind::Metrics,
        CommandKind::Dump,
    ];

    /// The `command` label value.
    pub fn label(self) -> &'static str {
        match self {
            CommandKind::Put => "put",
            CommandKind::Get => "get",
            CommandKind::GetV => "getv",
            CommandKind::Del => "del",
            CommandKind::Cas => "cas",
            CommandKind::Status => "status",
            CommandKind::Metrics => "metrics",
            CommandKind::Dump => "dump",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A cumulative-on-render histogram with bounds `first * 2^k`, k < buckets.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds in the base unit, ascending.
    bounds: Vec<u64>,
    /// Samples per bucket (not cumulative); `counts[bounds.len()]` is `+Inf`.
    counts: Vec<u64>,
    /// Sum of every sample, in the base unit.
    sum: u64,
    /// Samples observed.
    count: u64,
    /// Base units per rendered unit (1e6 for µs shown as seconds, 1 for sizes).
    scale: f64,
}

impl Histogram {
    /// Bounds `first, 2*first, 4*first, ...`, `buckets` of them, shown divided by `scale`.
    pub fn doubling(first: u64, buckets: usize, scale: f64) -> Histogram {
        assert!(first > 0 && buckets > 0, "a histogram needs a positive first bound");
        let bounds: Vec<u64> = (0..buckets).map(|k| first << k).collect();
        Histogram { counts: vec![0; bounds.len() + 1], bounds, sum: 0, count: 0, scale }
    }

    /// A duration histogram: 10 µs to ~5 s, shown in seconds.
    pub fn durations() -> Histogram {
        Histogram::doubling(DURATION_BUCKET_US_MIN, DURATION_BUCKETS, 1e6)
    }

    /// A size histogram: 1 to 65536.
    pub fn sizes() -> Histogram {
        Histogram::doubling(1, SIZE_BUCKETS, 1.0)
    }

    /// Records one sample in the base unit.
    pub fn observe(&mut self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    /// Records one duration (the histogram's base unit must be µs).
    pub fn observe_duration(&mut self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// Samples observed so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What the loop reads from elsewhere when it renders (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Readings {
    /// The replica's role word (one of [`ROLES`]).
    pub role: &'static str,
    /// The promised epoch.
    pub epoch: u64,
    /// The commit index.
    pub commit_index: u64,
    /// The applied index, when STATUS reported it.
    pub applied_index: Option<u64>,
    /// The leader this replica follows (0 = none).
    pub leader_id: u64,
    /// Peers live at this replica's epoch, when STATUS reported them.
    pub live_peers: Option<u64>,
    /// Elections this replica started.
    pub elections: u64,
    /// Times this replica became leader.
    pub leaderships: u64,
    /// Leader changes this replica saw (it followed or became a new leader).
    pub leader_changes: u64,
    /// Duration of the last finished election, ms.
    pub last_election_ms: Option<u64>,
    /// Quorum-read rounds retried.
    pub read_retries: u64,
    /// Reads answered by the leader (read-index) after failed rounds.
    pub read_fallbacks: u64,
    /// Peer messages the protocol dropped (wrong role, epoch, incarnation).
    pub peer_messages_dropped: u64,
    /// Entries installed by catch-up.
    pub caught_up_entries: u64,
    /// Snapshots installed by catch-up.
    pub snapshots_installed: u64,
    /// Client requests waiting for the protocol.
    pub requests_in_flight: u64,
    /// Client connections open now.
    pub client_connections_open: u64,
    /// Client connections served since start.
    pub client_connections_total: u64,
    /// Times a client reader paused at the in-flight cap.
    pub client_inflight_waits: u64,
    /// Errors the transport answered itself, by code (BADCMD, TOOLARGE, BUSY).
    pub transport_errors: Vec<(&'static str, u64)>,
    /// Peer frames refused at the queue (full, unknown peer, too large).
    pub peer_frames_dropped: u64,
    /// Peer frames discarded because their link was down.
    pub peer_frames_discarded: u64,
    /// Peer handshakes refused (bad id, digest, cluster, key proof...).
    pub peer_handshakes_refused: u64,
    /// Inbound peer links closed by a bad frame.
    pub peer_links_bad_frame: u64,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
}

/// The loop's own counters and histograms.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Requests answered, per [`CommandKind::index`].
    requests: [u64; CommandKind::ALL.len()],
    /// Latency from the loop receiving a request to handing its reply to the
    /// connection, per [`CommandKind::index`].
    latency: Vec<Histogram>,
    /// Error replies the loop sent, by code.
    errors: BTreeMap<&'static str, u64>,
    /// fsync durations.
    fsync: Histogram,
    /// Accepted entries made durable by each fsync.
    fsync_entries: Histogram,
    /// Events handled per loop turn (turns with at least one event).
    batch_events: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: [0; CommandKind::ALL.len()],
            latency: CommandKind::ALL.iter().map(|_| Histogram::durations()).collect(),
            errors: ERROR_CODES.iter().map(|&code| (code, 0)).collect(),
            fsync: Histogram::durations(),
            fsync_entries: Histogram::sizes(),
            batch_events: Histogram::sizes(),
        }
    }
}

impl Metrics {
    /// Records one answered request; `error` is the reply's code if it was an `ERR`.
    pub fn record_request(
        &mut self,
        command: CommandKind,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        self.requests[command.index()] += 1;
        self.latency[command.index()].observe_duration(elapsed);
        if let Some(code) = error {
            *self.errors.entry(code).or_insert(0) += 1;
        }
    }

    /// Records one fsync: how long it took and how many accepted entries it covered.
    pub fn record_fsync(&mut self, elapsed: Duration, entries: u64) {
        self.fsync.observe_duration(elapsed);
        self.fsync_entries.observe(entries);
    }

    /// Records one loop turn that handled `events` events (0 is not recorded:
    /// a turn woken by the ticker alone says nothing about batching).
    pub fn record_turn(&mut self, events: u64) {
        if events > 0 {
            self.batch_events.observe(events);
        }
    }

    /// Requests answered so far for `command`.
    pub fn requests(&self, command: CommandKind) -> u64 {
        self.requests[command.index()]
    }

    /// Error replies the loop sent with `code`.
    pub fn errors(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }

    /// fsyncs recorded.
    pub fn fsyncs(&self) -> u64 {
        self.fsync.count()
    }

    /// The whole exposition: one `# HELP` and one `# TYPE` line per family,
    /// then its samples. Lines hold no newline.
    pub fn render(&self, r: &Readings) -> Vec<String> {
        let mut t = Text::default();
        self.render_requests(&mut t, r);
        render_replica(&mut t, r);
        self.render_storage(&mut t);
        render_transport(&mut t, r);
        t.lines
    }

    fn render_requests(&self, t: &mut Text, r: &Readings) {
        t.family("quorumkv_requests_total", "counter", "Client requests answered by the loop.");
        for kind in CommandKind::ALL {
            t.sample("quorumkv_requests_total", &[("command", kind.label())], self.requests(kind));
        }
        t.family(
            "quorumkv_request_duration_seconds",
            "histogram",
            "From the loop receiving a request to its reply being handed to the connection.",
        );
        for kind in CommandKind::ALL {
            let h = &self.latency[kind.index()];
            t.histogram("quorumkv_request_duration_seconds", &[("command", kind.label())], h);
        }
        t.family("quorumkv_errors_total", "counter", "Error replies sent to clients, by code.");
        let mut errors = self.errors.clone();
        for &(code, n) in &r.transport_errors {
            *errors.entry(code).or_insert(0) += n;
        }
        for (code, n) in errors {
            t.sample("quorumkv_errors_total", &[("code", code)], n);
        }
        t.gauge("quorumkv_requests_in_flight", "Requests waiting for the protocol.", {
            r.requests_in_flight
        });
    }

    fn render_storage(&self, t: &mut Text) {
        t.family("quorumkv_fsyncs_total", "counter", "fsyncs of the write-ahead log.");
        t.sample("quorumkv_fsyncs_total", &[], self.fsync.count());
        t.family("quorumkv_fsync_duration_seconds", "histogram", "Duration of one WAL fsync.");
        t.histogram("quorumkv_fsync_duration_seconds", &[], &self.fsync);
        t.family(
            "quorumkv_fsync_batch_entries",
            "histogram",
            "Accepted log entries made durable by one fsync.",
        );
        t.histogram("quorumkv_fsync_batch_entries", &[], &self.fsync_entries);
        t.family(
            "quorumkv_loop_batch_events",
            "histogram",
            "Events the event loop handled in one turn (one fsync per turn at most).",
        );
        t.histogram("quorumkv_loop_batch_events", &[], &self.batch_events);
    }
}

/// Replica state: role, epoch, indexes, elections, reads.
fn render_replica(t: &mut Text, r: &Readings) {
    t.family("quorumkv_role", "gauge", "1 for the replica's current role, 0 for the others.");
    for role in ROLES {
        t.sample("quorumkv_role", &[("role", role)], u64::from(r.role == role));
    }
    t.gauge("quorumkv_epoch", "The promised epoch.", r.epoch);
    t.gauge("quorumkv_leader_id", "The leader this replica follows (0 = none).", r.leader_id);
    t.gauge("quorumkv_commit_index", "The commit index.", r.commit_index);
    if let Some(applied) = r.applied_index {
        t.gauge("quorumkv_applied_index", "The applied index.", applied);
    }
    if let Some(live) = r.live_peers {
        t.gauge("quorumkv_live_peers", "Peers heard from at this epoch lately.", live);
    }
    t.counter("quorumkv_elections_total", "Elections this replica started.", r.elections);
    t.counter("quorumkv_leaderships_total", "Times this replica became leader.", r.leaderships);
    let help = "Leader changes this replica saw (it followed or became a new leader).";
    t.counter("quorumkv_leader_changes_total", help, r.leader_changes);
    if let Some(ms) = r.last_election_ms {
        let help = "Duration of the last finished election this replica ran.";
        t.gauge("quorumkv_last_election_seconds", help, seconds(ms));
    }
    let help = "Quorum-read rounds retried (no agreement, or a replica pending).";
    t.counter("quorumkv_read_retries_total", help, r.read_retries);
    let help = "Reads answered by the leader's read-index path after failed rounds.";
    t.counter("quorumkv_read_fallbacks_total", help, r.read_fallbacks);
    let help = "Peer messages dropped by the protocol (wrong role, epoch or incarnation).";
    t.counter("quorumkv_peer_messages_dropped_total", help, r.peer_messages_dropped);
    let help = "Log entries installed through catch-up.";
    t.counter("quorumkv_caught_up_entries_total", help, r.caught_up_entries);
    let help = "Snapshots installed through catch-up.";
    t.counter("quorumkv_snapshots_installed_total", help, r.snapshots_installed);
}

/// Connections and links, from the transport's atomics.
fn render_transport(t: &mut Text, r: &Readings) {
    let help = "Client connections open now.";
    t.gauge("quorumkv_client_connections", help, r.client_connections_open);
    let help = "Client connections served since start.";
    t.counter("quorumkv_client_connections_total", help, r.client_connections_total);
    let help = "Times a client reader paused because the client had too many requests in flight.";
    t.counter("quorumkv_client_inflight_waits_total", help, r.client_inflight_waits);
    let help = "Peer frames dropped before sending (queue full, unknown peer, too large).";
    t.counter("quorumkv_peer_frames_dropped_total", help, r.peer_frames_dropped);
    let help = "Peer frames discarded because their link was down when they were queued.";
    t.counter("quorumkv_peer_frames_discarded_total", help, r.peer_frames_discarded);
    let help = "Peer handshakes refused (id, digest, cluster id, key proof, malformed).";
    t.counter("quorumkv_peer_handshakes_refused_total", help, r.peer_handshakes_refused);
    let help = "Inbound peer links closed because a frame could not be read.";
    t.counter("quorumkv_peer_links_bad_frame_total", help, r.peer_links_bad_frame);
    t.gauge("quorumkv_uptime_seconds", "Seconds since the replica started.", r.uptime_seconds);
}

/// Milliseconds as seconds.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Lines of exposition text being built.
#[derive(Default)]
struct Text {
    lines: Vec<String>,
}

impl Text {
    /// The `# HELP` and `# TYPE` lines that open a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(is_metric_name(name), "bad metric name {name}");
        self.lines.push(format!("# HELP {name} {}", escape_help(help)));
        self.lines.push(format!("# TYPE {name} {kind}"));
    }

    /// One `name{labels} value` line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let mut line = String::from(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{key}=\"{}\"", escape_label(val));
            }
            line.push('}');
        }
        let _ = write!(line, " {value}");
        self.lines.push(line);
    }

    /// A family of one unlabelled counter.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// A family of one unlabelled gauge.
    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// `_bucket` lines (cumulative, ending with `+Inf`), `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, &count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = match h.bounds.get(i) {
                Some(&bound) => (bound as f64 / h.scale).to_string(),
                None => "+Inf".to_string(),
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum as f64 / h.scale);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the Prometheus metric name rule.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// HELP text escapes `\` and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escape `\`, `"` and newline.
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::doubling(1, 4, 1.0); // bounds 1 2 4 8
        for v in [0, 1, 2, 3, 8, 9, 100] {
            h.observe(v);
        }
        let mut t = Text::default();
        t.histogram("x", &[("command", "put")], &h);
        assert_eq!(
            t.lines,
            vec![
                r#"x_bucket{command="put",le="1"} 2"#,
                r#"x_bucket{command="put",le="2"} 3"#,
                r#"x_bucket{command="put",le="4"} 4"#,
                r#"x_bucket{command="put",le="8"} 5"#,
                r#"x_bucket{command="put",le="+Inf"} 7"#,
                r#"x_sum{command="put"} 123"#,
                r#"x_count{command="put"} 7"#,
            ]
        );
    }

    #[test]
    fn duration_buckets_render_in_seconds() {
        let mut h = Histogram::durations();
        h.observe_duration(Duration::from_micros(15));
        h.observe_duration(Duration::from_secs(60));
        let mut t = Text::default();
        t.histogram("d", &[], &h);
        assert_eq!(t.lines[0], r#"d_bucket{le="0.00001"} 0"#);
        assert_eq!(t.lines[1], r#"d_bucket{le="0.00002"} 1"#);
        assert_eq!(t.lines[DURATION_BUCKETS - 1], r#"d_bucket{le="5.24288"} 1"#);
        assert_eq!(t.lines[DURATION_BUCKETS], r#"d_bucket{le="+Inf"} 2"#);
        assert_eq!(t.lines[DURATION_BUCKETS + 1], "d_sum 60.000015");
    }

    #[test]
    fn every_family_has_help_and_type_and_valid_names() {
        let mut m = Metrics::default();
        m.record_request(CommandKind::Put, Duration::from_millis(3), None);
        m.record_request(CommandKind::Put, Duration::from_millis(3), Some("NOQUORUM"));
        m.record_fsync(Duration::from_micros(700), 12);
        m.record_turn(5);
        m.record_turn(0);
        let r = Readings {
            role: "leader",
            transport_errors: vec![("BADCMD", 4), ("BUSY", 1)],
            applied_index: Some(3),
            live_peers: Some(2),
            last_election_ms: Some(120),
            ..Readings::default()
        };
        let lines = m.render(&r);
        assert!(lines.contains(&r#"quorumkv_requests_total{command="put"} 2"#.to_string()));
        assert!(lines.contains(&r#"quorumkv_errors_total{code="NOQUORUM"} 1"#.to_string()));
        assert!(lines.contains(&r#"quorumkv_errors_total{code="BADCMD"} 4"#.to_string()));
        assert!(lines.contains(&r#"quorumkv_errors_total{code="SHUTDOWN"} 0"#.to_string()));
        assert!(lines.contains(&r#"quorumkv_role{role="leader"} 1"#.to_string()));
        assert!(lines.contains(&r#"quorumkv_role{role="follower"} 0"#.to_string()));
        assert!(lines.contains(&"quorumkv_fsyncs_total 1".to_string()));
        assert!(lines.contains(&"quorumkv_last_election_seconds 0.12".to_string()));
        assert!(lines.contains(&"quorumkv_loop_batch_events_count 1".to_string()));
        let mut typed = std::collections::BTreeSet::new();
        for line in &lines {
            assert!(!line.contains('\n'), "{line:?}");
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(is_metric_name(name), "{name}");
                assert!(typed.insert(name.to_string()), "family {name} declared twice");
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "sample {line:?} before its # TYPE");
            }
        }
    }

    #[test]
    fn names_and_labels_are_checked_and_escaped() {
        assert!(is_metric_name("quorumkv_x:y_1"));
        assert!(!is_metric_name("1abc") && !is_metric_name("") && !is_metric_name("a-b"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }
}
