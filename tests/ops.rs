//! Operations properties against real `quorumkv` processes (DESIGN §2, §4,
//! §8, §9): GETV and CAS semantics through a follower, concurrent CAS with
//! exactly one winner per version, STATUS after the leader is killed, METRICS
//! as valid Prometheus text, and the cluster key. Every wait polls against a
//! deadline and every socket has a timeout; at most two clusters run at once
//! in this process (see `driver::cluster`).

// Each test file compiles `common` on its own and uses only part of it.
#[allow(dead_code)]
mod common;

use common::{check, opts};
use driver::client::Client;
use driver::cluster::{Cluster, ClusterOpts};
use driver::scenarios::{poll_until, with_cluster};
use quorumkv::protocol::types::ReplicaId;
use quorumkv::transport::{cluster_key_proof, peers_digest, ClusterKey, NONCE_BYTES};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// `Err(format!(..))` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($fmt)+));
        }
    };
}

/// Sends `line` and checks the reply equals `want`.
fn expect(client: &mut Client, line: &str, want: &str) -> Result<(), String> {
    let got = client.cmd(line)?;
    ensure!(got == want, "{line:?} answered {got:?}, want {want:?}");
    Ok(())
}

/// Sends `line` and returns the version of an `OK <version>` reply.
fn ok_version(client: &mut Client, line: &str) -> Result<u64, String> {
    let got = client.cmd(line)?;
    got.strip_prefix("OK ")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{line:?} answered {got:?}, want OK <version>"))
}

/// A follower of the agreed leader, so commands exercise forwarding.
fn follower(c: &mut Cluster, o: &ClusterOpts) -> Result<(usize, usize), String> {
    let (leader, _) = c.wait_for_leader(o.settle_deadline())?;
    let via = c.ids().find(|&id| id != leader).expect("at least two replicas");
    Ok((leader, via))
}

#[test]
fn getv_and_cas_follow_versions_through_a_follower() {
    let o = opts(3, &[]);
    check(with_cluster(&o, |c| {
        let (_, via) = follower(c, &o)?;
        let mut k = c.client(via)?;
        expect(&mut k, "GETV a", "NOTFOUND")?;
        let v1 = ok_version(&mut k, "PUT a one")?;
        expect(&mut k, "GETV a", &format!("VERSION {v1} one"))?;
        expect(&mut k, "CAS a 0 x", &format!("ERR CONFLICT {v1}"))?;
        expect(&mut k, &format!("CAS a {} x", v1 + 1000), &format!("ERR CONFLICT {v1}"))?;
        expect(&mut k, "GETV a", &format!("VERSION {v1} one"))?;
        let v2 = ok_version(&mut k, &format!("CAS a {v1} two words"))?;
        ensure!(v2 > v1, "CAS version {v2} not above {v1}");
        expect(&mut k, "GETV a", &format!("VERSION {v2} two words"))?;
        expect(&mut k, "GET a", "VALUE two words")?;

        // Version 0: only if absent.
        let vb = ok_version(&mut k, "CAS b 0 first")?;
        expect(&mut k, "CAS b 0 second", &format!("ERR CONFLICT {vb}"))?;
        expect(&mut k, "GETV b", &format!("VERSION {vb} first"))?;

        // DEL makes the key absent again: version 0 wins once more.
        let d = ok_version(&mut k, "DEL a")?;
        ensure!(d > v2, "DEL index {d} not above {v2}");
        expect(&mut k, "GETV a", "NOTFOUND")?;
        expect(&mut k, &format!("CAS a {v2} stale"), "ERR CONFLICT 0")?;
        let v3 = ok_version(&mut k, "CAS a 0 again")?;
        expect(&mut k, "GETV a", &format!("VERSION {v3} again"))?;

        // An empty value is a value.
        let ve = ok_version(&mut k, "CAS e 0 ")?;
        expect(&mut k, "GETV e", &format!("VERSION {ve} "))?;
        Ok(())
    }));
}

/// Clients racing on one key per round.
const CAS_CLIENTS: usize = 20;
/// Rounds of the race.
const CAS_ROUNDS: usize = 6;

#[test]
fn concurrent_cas_from_the_same_version_has_exactly_one_winner() {
    let o = opts(3, &[]);
    check(with_cluster(&o, |c| {
        c.wait_for_leader(o.settle_deadline())?;
        let ids: Vec<usize> = c.ids().collect();
        let mut clients: Vec<Client> =
            (0..CAS_CLIENTS).map(|i| c.client(ids[i % ids.len()])).collect::<Result<_, _>>()?;
        let mut observer = c.client(ids[0])?;
        for round in 0..CAS_ROUNDS {
            let seen = match observer.cmd("GETV race")?.as_str() {
                "NOTFOUND" => 0,
                line => version_of(line)?,
            };
            let barrier = Barrier::new(CAS_CLIENTS);
            let replies: Vec<Result<String, String>> = std::thread::scope(|s| {
                let handles: Vec<_> = clients
                    .iter_mut()
                    .enumerate()
                    .map(|(i, client)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            client.cmd(&format!("CAS race {seen} r{round}c{i}"))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("CAS thread")).collect()
            });
            let mut winners = Vec::new();
            let mut conflicts = Vec::new();
            for (i, reply) in replies.iter().enumerate() {
                let reply = reply.as_ref().map_err(|e| format!("client {i}: {e}"))?;
                if let Some(v) = reply.strip_prefix("OK ") {
                    winners.push((i, v.parse::<u64>().map_err(|_| format!("bad {reply:?}"))?));
                } else if let Some(v) = reply.strip_prefix("ERR CONFLICT ") {
                    conflicts.push(v.parse::<u64>().map_err(|_| format!("bad {reply:?}"))?);
                } else {
                    return Err(format!("round {round} client {i}: unexpected {reply:?}"));
                }
            }
            ensure!(
                winners.len() == 1,
                "round {round} from version {seen}: {} winners {winners:?}",
                winners.len()
            );
            let (winner, version) = winners[0];
            ensure!(version > seen, "round {round}: winning version {version} <= {seen}");
            // A loser saw the winner's write (or one later, never earlier).
            ensure!(
                conflicts.iter().all(|&v| v == version),
                "round {round}: conflicts {conflicts:?}, winner wrote {version}"
            );
            let now = observer.cmd("GETV race")?;
            ensure!(
                now == format!("VERSION {version} r{round}c{winner}"),
                "round {round}: GETV {now:?} after client {winner} won with {version}"
            );
        }
        Ok(())
    }));
}

/// The version of a `VERSION <v> <value>` reply.
fn version_of(line: &str) -> Result<u64, String> {
    line.strip_prefix("VERSION ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("not a VERSION reply: {line:?}"))
}

#[test]
fn status_after_leader_kill_shows_new_leader_higher_epoch_and_election_time() {
    let o = opts(3, &[]);
    check(with_cluster(&o, |c| {
        let (old, epoch) = c.wait_for_leader(o.settle_deadline())?;
        c.client(old)?.put("before", "kill").map_err(|e| format!("PUT before kill: {e}"))?;
        c.kill(old)?;
        let (new, new_epoch) = c.wait_for_leader(o.settle_deadline())?;
        ensure!(new != old, "the killed replica {old} is still named leader");
        ensure!(new_epoch > epoch, "epoch {new_epoch} after the kill, not above {epoch}");
        let status = c.status(new)?;
        ensure!(status.role() == "leader", "new leader's STATUS: {}", status.raw);
        let ms: u64 = status
            .get("last_election_ms")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no last_election_ms in {}", status.raw))?;
        let bound = 10 * o.election_timeout_ms;
        ensure!(ms < bound, "last_election_ms={ms}, want < {bound} (10 election timeouts)");
        let elections: u64 = status.get("elections").and_then(|v| v.parse().ok()).unwrap_or(0);
        ensure!(elections >= 1, "elections={elections} on the new leader: {}", status.raw);
        for id in c.live_ids() {
            let s = c.status(id)?;
            ensure!(s.leader() == Some(new), "replica {id} names {:?}: {}", s.leader(), s.raw);
        }
        // The write from before the kill reads back through the survivor
        // that does not lead (a GET on the leader itself is the next test).
        let other = c.live_ids().into_iter().find(|&id| id != new).expect("two survivors");
        expect(&mut c.client(other)?, "GET before", "VALUE kill")
    }));
}

/// Reads sent to a leader just elected after kill -9 of the old one: while
/// its recovery is still committing, quorum rounds see pending entries and
/// fail, so reads fall back to the read-index path on the leader itself.
#[test]
fn reads_on_a_new_leader_right_after_failover_never_crash_it() {
    let o = opts(3, &[]);
    check(with_cluster(&o, |c| {
        for round in 0..4 {
            let (old, _) = c.wait_for_leader(o.settle_deadline())?;
            c.client(old)?.put("k", "v").map_err(|e| format!("PUT: {e}"))?;
            c.kill(old)?;
            let (new, _) = c.wait_for_leader(o.settle_deadline())?;
            let mut client = c.client(new)?;
            for i in 0..20 {
                let got = client.cmd("GET k").map_err(|e| format!("round {round} GET {i}: {e}"))?;
                ensure!(got == "VALUE v", "round {round} GET {i}: {got:?}");
            }
            c.check_alive()?;
            c.restart(old)?;
        }
        Ok(())
    }));
}

/// One parsed sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a sample line of the text exposition format (no timestamps).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value: {line:?}"))?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?} in {line:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let used = parse_labels(after, &mut labels).map_err(|e| format!("{e} in {line:?}"))?;
        rest = &after[used..];
    }
    let value = rest.strip_prefix(' ').ok_or_else(|| format!("no space before value: {line:?}"))?;
    if value.contains(' ') {
        return Err(format!("timestamps or extra fields in {line:?}"));
    }
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?} in {line:?}"))?,
    };
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Parses `a="x",b="y"}` (after the `{`) into `labels`; returns the bytes
/// used, the closing `}` included.
fn parse_labels(text: &str, labels: &mut BTreeMap<String, String>) -> Result<usize, String> {
    let mut i = 0;
    loop {
        if text[i..].starts_with('}') {
            return Ok(i + 1);
        }
        let eq = text[i..].find("=\"").ok_or("a label without =\"")?;
        let label = &text[i..i + eq];
        if !is_label_name(label) {
            return Err(format!("bad label name {label:?}"));
        }
        i += eq + 2;
        let mut value = String::new();
        loop {
            let c = text[i..].chars().next().ok_or("an unterminated label value")?;
            i += c.len_utf8();
            match c {
                '"' => break,
                '\\' => {
                    match text[i..].chars().next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("a bad escape".into()),
                    }
                    i += 1;
                }
                c => value.push(c),
            }
        }
        if labels.insert(label.to_string(), value).is_some() {
            return Err(format!("label {label} twice"));
        }
        match text[i..].chars().next() {
            Some(',') => i += 1,
            Some('}') => {}
            _ => return Err("expected , or } after a label".into()),
        }
    }
}

/// Checks a METRICS reply line by line; returns the samples by name.
fn check_exposition(lines: &[String]) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, ()> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in lines {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["HELP", name, _text] => {
                    ensure!(is_metric_name(name), "bad name in {line:?}");
                    ensure!(helps.insert(name.to_string(), ()).is_none(), "HELP twice: {line:?}");
                }
                ["TYPE", name, kind] => {
                    ensure!(is_metric_name(name), "bad name in {line:?}");
                    ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(kind),
                        "bad type in {line:?}"
                    );
                    ensure!(!samples.iter().any(|s: &Sample| s.name == *name), "TYPE late: {line}");
                    let old = types.insert(name.to_string(), kind.to_string());
                    ensure!(old.is_none(), "TYPE twice: {line:?}");
                }
                _ => return Err(format!("comment is neither HELP nor TYPE: {line:?}")),
            }
            continue;
        }
        ensure!(!line.is_empty(), "empty line in METRICS");
        let sample = parse_sample(line)?;
        let family = family_of(&sample.name, &types)
            .ok_or_else(|| format!("sample {line:?} has no # TYPE before it"))?;
        let kind = &types[&family];
        if kind == "counter" {
            ensure!(sample.value >= 0.0, "negative counter: {line:?}");
        }
        if kind == "histogram" && sample.name.ends_with("_bucket") {
            ensure!(sample.labels.contains_key("le"), "bucket without le: {line:?}");
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// The family a sample belongs to: its own name, or the histogram it is a
/// `_bucket`, `_sum` or `_count` of.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then(|| base.to_string())
    })
}

/// A series' labels other than `le`, in order.
type Labels = Vec<(String, String)>;

/// Every histogram series: buckets ascend in `le`, counts are cumulative,
/// the last is `+Inf` and equals `_count`, and `_sum` is there.
fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, k)| k.as_str() == "histogram") {
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let le = s.labels["le"].clone();
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| le)? };
            let key: Vec<_> = s.labels.clone().into_iter().filter(|(k, _)| k != "le").collect();
            series.entry(key).or_default().push((le, s.value));
        }
        ensure!(!series.is_empty(), "histogram {family} has no buckets");
        for (labels, buckets) in series {
            for pair in buckets.windows(2) {
                ensure!(pair[0].0 < pair[1].0, "{family}{labels:?}: le not ascending");
                ensure!(pair[0].1 <= pair[1].1, "{family}{labels:?}: buckets not cumulative");
            }
            let last = buckets.last().expect("non-empty");
            ensure!(last.0 == f64::INFINITY, "{family}{labels:?}: last bucket is not +Inf");
            let find = |suffix: &str| {
                samples.iter().find(|s| {
                    s.name == format!("{family}{suffix}")
                        && s.labels.clone().into_iter().collect::<Vec<_>>() == labels
                })
            };
            let count = find("_count").ok_or_else(|| format!("{family}{labels:?}: no _count"))?;
            ensure!(count.value == last.1, "{family}{labels:?}: _count != +Inf bucket");
            find("_sum").ok_or_else(|| format!("{family}{labels:?}: no _sum"))?;
        }
    }
    Ok(())
}

/// The value of the sample `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

#[test]
fn metrics_are_valid_prometheus_text_and_count_what_happened() {
    let o = opts(3, &[]);
    check(with_cluster(&o, |c| {
        let (leader, via) = follower(c, &o)?;
        let mut k = c.client(via)?;
        for i in 0..20 {
            ok_version(&mut k, &format!("PUT m{i} v{i}"))?;
        }
        expect(&mut k, "GET m1", "VALUE v1")?;
        expect(&mut k, "GETV nothing", "NOTFOUND")?;
        ok_version(&mut k, "CAS m1 0 x").err().ok_or("CAS on an existing key won")?;
        ok_version(&mut k, "DEL m2")?;
        let bad = k.cmd("FROB")?;
        ensure!(bad.starts_with("ERR BADCMD"), "FROB answered {bad:?}");
        for id in c.ids() {
            let lines = c.client(id)?.cmd_lines("METRICS")?;
            ensure!(lines.len() > 50, "replica {id}: only {} METRICS lines", lines.len());
            let samples = check_exposition(&lines).map_err(|e| format!("replica {id}: {e}"))?;
            let role = if id == leader { "leader" } else { "follower" };
            let role_gauge = value(&samples, "quorumkv_role", &[("role", role)]);
            ensure!(role_gauge == Some(1.0), "replica {id}: role {role} gauge {role_gauge:?}");
            let fsyncs = value(&samples, "quorumkv_fsyncs_total", &[]).unwrap_or(0.0);
            ensure!(fsyncs > 0.0, "replica {id}: no fsync counted under --fsync always");
            let commit = value(&samples, "quorumkv_commit_index", &[]).unwrap_or(0.0);
            ensure!(commit >= 21.0, "replica {id}: commit index {commit} after 21 writes");
            for gauge in ["quorumkv_epoch", "quorumkv_client_connections", "quorumkv_leader_id"] {
                ensure!(value(&samples, gauge, &[]).is_some(), "replica {id}: no {gauge}");
            }
        }
        let lines = c.client(via)?.cmd_lines("METRICS")?;
        let samples = check_exposition(&lines)?;
        let count = |command: &str| {
            value(&samples, "quorumkv_requests_total", &[("command", command)]).unwrap_or(0.0)
        };
        ensure!(count("put") == 20.0, "put requests counted {}", count("put"));
        ensure!(count("cas") == 1.0 && count("del") == 1.0, "cas/del miscounted");
        let put_latency =
            value(&samples, "quorumkv_request_duration_seconds_count", &[("command", "put")]);
        ensure!(put_latency == Some(20.0), "put latency count {put_latency:?}");
        let conflicts = value(&samples, "quorumkv_errors_total", &[("code", "CONFLICT")]);
        ensure!(conflicts == Some(1.0), "CONFLICT errors {conflicts:?}");
        let badcmd = value(&samples, "quorumkv_errors_total", &[("code", "BADCMD")]);
        ensure!(badcmd.is_some_and(|n| n >= 1.0), "BADCMD errors {badcmd:?}");
        Ok(())
    }));
}

#[test]
fn metrics_parser_refuses_what_prometheus_refuses() {
    let good = ["# HELP x_total A counter.", "# TYPE x_total counter", r#"x_total{a="b\"c"} 3"#];
    let lines: Vec<String> = good.iter().map(|s| s.to_string()).collect();
    assert!(check_exposition(&lines).is_ok());
    for bad in [
        vec!["x_total 3"],
        vec!["# TYPE x_total counter", "x_total{a=b} 3"],
        vec!["# TYPE x_total counter", "x_total three"],
        vec!["# TYPE 1x counter"],
        vec!["# TYPE h histogram", r#"h_bucket{le="1"} 2"#, r#"h_bucket{le="+Inf"} 1"#],
        vec!["# TYPE h histogram", r#"h_bucket{le="+Inf"} 1"#, "h_count 2", "h_sum 0"],
        vec!["# COMMENT free text"],
    ] {
        let lines: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
        assert!(check_exposition(&lines).is_err(), "accepted {bad:?}");
    }
}

/// A key file in its own temp directory, removed on drop.
struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeyFile {
    fn new(name: &str, key: &str) -> KeyFile {
        let dir = std::env::temp_dir().join(format!("qkv-key-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create key dir");
        let path = dir.join("cluster.key");
        std::fs::write(&path, format!("{key}\n")).expect("write key");
        KeyFile { dir, path }
    }

    fn flags(&self) -> Vec<String> {
        vec!["--cluster-key-file".into(), self.path.display().to_string()]
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options for a 3-replica cluster sharing `key`.
fn keyed(key: &KeyFile) -> ClusterOpts {
    let mut o = opts(3, &[]);
    o.extra_flags = key.flags();
    o
}

/// Every replica's `--peers` list, as the driver passed it.
fn peer_list(c: &Cluster) -> Vec<String> {
    c.ids().map(|id| c.addr(id)).collect()
}

/// Reads lines until EOF; fails if the connection stays open past its timeout.
fn expect_closed(client: &mut Client, what: &str) -> Result<(), String> {
    for _ in 0..4 {
        match client.read_line() {
            Err(e) if e.contains("closed") || e.contains("reset") => return Ok(()),
            Err(e) => return Err(format!("{what}: not closed: {e}")),
            Ok(_) => {}
        }
    }
    Err(format!("{what}: still talking"))
}

#[test]
fn cluster_with_a_key_forms_serves_and_closes_peers_without_the_proof() {
    let key = KeyFile::new("serves", "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let o = keyed(&key);
    check(with_cluster(&o, |c| {
        let (leader, via) = follower(c, &o)?;
        let mut k = c.client(via)?;
        ok_version(&mut k, "PUT keyed yes")?;
        expect(&mut c.client(leader)?, "GET keyed", "VALUE yes")?;
        ensure!(
            c.log_tail(via, 400).contains("cluster key loaded"),
            "replica {via} did not log the key"
        );
        let peers = peer_list(c);
        let digest = peers_digest(&peers);
        let timeout = Duration::from_secs(5);

        // No proof offered: refused and closed.
        let mut raw = Client::connect(&c.addr(leader), timeout)?;
        raw.send_raw(format!("QKVPEER 1 {via} {digest} 0 -\n").as_bytes())?;
        let answer = raw.read_line()?;
        ensure!(answer.contains("requires one (--cluster-key-file)"), "answer {answer:?}");
        expect_closed(&mut raw, "a peer without a key")?;

        // A proof under the wrong key: refused and closed.
        let mut raw = Client::connect(&c.addr(leader), timeout)?;
        raw.send_raw(format!("QKVPEER 1 {via} {digest} 0 hmac-sha256\n").as_bytes())?;
        let nonce = parse_challenge(&raw.read_line()?)?;
        let wrong = ClusterKey::new(b"not the cluster key");
        let proof = cluster_key_proof(&wrong, &nonce, rid(via), rid(leader), &digest);
        raw.send_raw(format!("QKVPEER-PROOF {proof}\n").as_bytes())?;
        let answer = raw.read_line()?;
        ensure!(answer.contains("does not match"), "answer {answer:?}");
        expect_closed(&mut raw, "a peer with the wrong key")?;

        // Frames sent right after the hello, without waiting for the
        // challenge, are read as the proof line: refused and closed.
        let mut raw = Client::connect(&c.addr(leader), timeout)?;
        let mut bytes = format!("QKVPEER 1 {via} {digest} 0 hmac-sha256\n").into_bytes();
        bytes.extend_from_slice(&[0, 0, 0, 9, 2, 1, 2, 3, 4, 5, 6, 7, 8, b'\n']);
        raw.send_raw(&bytes)?;
        parse_challenge(&raw.read_line()?)?;
        let answer = raw.read_line()?;
        ensure!(answer.contains("malformed cluster key proof"), "answer {answer:?}");
        expect_closed(&mut raw, "frames before the proof")?;

        let (after, _) = c.wait_for_leader(o.settle_deadline())?;
        ok_version(&mut c.client(after)?, "PUT still serving")?;
        Ok(())
    }));
}

/// `ReplicaId` of a 1-based driver id.
fn rid(id: usize) -> ReplicaId {
    ReplicaId(u8::try_from(id).expect("small cluster"))
}

/// The nonce of a `QKVPEER-CHALLENGE <hex>` line.
fn parse_challenge(line: &str) -> Result<[u8; NONCE_BYTES], String> {
    let hex = line
        .strip_prefix("QKVPEER-CHALLENGE ")
        .ok_or_else(|| format!("not a challenge: {line:?}"))?;
    let mut nonce = [0u8; NONCE_BYTES];
    ensure!(hex.len() == 2 * NONCE_BYTES, "challenge {line:?}");
    for (i, byte) in nonce.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| format!("{line}: {e}"))?;
    }
    Ok(nonce)
}

#[test]
fn replica_restarted_with_another_key_is_refused_and_the_rest_keep_serving() {
    let key = KeyFile::new("refused", "the original cluster key, 32 b..");
    let o = keyed(&key);
    check(with_cluster(&o, |c| {
        let (leader, odd) = follower(c, &o)?;
        c.kill(odd)?;
        std::fs::write(&key.path, "a different key entirely, 32 b..\n")
            .map_err(|e| format!("rewrite key: {e}"))?;
        c.restart(odd)?;
        let others: Vec<usize> = c.ids().filter(|&id| id != odd).collect();
        let refusal = format!("cluster key proof from r{odd} does not match");
        let deadline = Instant::now() + Duration::from_secs(10);
        poll_until(deadline, "the others to log the refusal", || {
            Ok(others.iter().all(|&id| c.log_tail(id, 200).contains(&refusal)))
        })?;
        poll_until(deadline, "the odd replica to log its refusal", || {
            Ok(c.log_tail(odd, 200).contains("does not match"))
        })?;
        // The others still form a majority and serve.
        let mut k = c.client(leader)?;
        ok_version(&mut k, "PUT after odd key")?;
        let other = *others.iter().find(|&&id| id != leader).expect("two others");
        expect(&mut c.client(other)?, "GET after", "VALUE odd key")?;
        // The odd replica never joins: it names no leader of the others' epoch.
        let s = c.status(odd)?;
        let l = c.status(leader)?;
        ensure!(
            s.leader() != Some(leader) || s.epoch() != l.epoch(),
            "replica {odd} with another key follows the cluster: {}",
            s.raw
        );
        ensure!(c.status(leader)?.role() == "leader", "leader lost its role");
        Ok(())
    }));
}
