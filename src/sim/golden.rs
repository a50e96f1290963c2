//! Golden scripts (STYLE "Testing pyramid" 2): small scenarios in a text
//! format, run on a manual-delivery `SimCluster`; the output (every step's
//! state changes, every message sent, every reply) is compared with an
//! expected file. `UPDATE_GOLDEN=1 cargo test golden` rewrites the expected
//! files; review the diff before committing it.
//!
//! A script `src/sim/golden/NAME.txt` has one command per line; `#` lines are
//! comments (each script opens with one giving its setup and the property it
//! shows). `NAME.out` holds the script with each command followed by its
//! output, indented. Commands:
//!
//! - `cluster n=3 [nw=2] [nr=2]`: a formed cluster, started, all links up;
//! - `tick <ms>`: time passes; replicas tick; messages stay queued;
//! - `run <ms>`: time passes; every message is delivered at once (a perfect network);
//! - `deliver [all|from->to]`: delivers what is queued (all: until nothing is left);
//! - `drop from->to`: loses what is queued on that link;
//! - `partition 1,2|3`, `cut from->to`, `heal`;
//! - `crash <r>`, `restart <r>`, `pause <r>`, `resume <r>`;
//! - `put <r> <key> <value>`, `del <r> <key>`, `get <r> <key>`: a client request to replica r;
//! - `status [r]`, `log [r]`: a replica's STATUS fields, or its log.

use super::cluster::{SimCluster, SimConfig};
use super::fmt;
use crate::client::Request;
use crate::protocol::types::ReplicaId;
use std::path::{Path, PathBuf};

/// The seed every golden cluster derives its replicas' randomness from.
const GOLDEN_SEED: u64 = 1;

/// Runs a script; returns the expected-file text. Panics on a bad command or
/// an invariant violation (a golden script never expects one).
pub fn run_script(script: &str) -> String {
    let mut cluster: Option<SimCluster> = None;
    let mut out = String::new();
    for (n, line) in script.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let lines = run_command(&mut cluster, text)
            .unwrap_or_else(|e| panic!("line {}: {text}: {e}", n + 1));
        for l in lines {
            // Step headers one level in, what the step did two levels in.
            out.push_str(if l.starts_with("        ") { "      " } else { "    " });
            out.push_str(l.trim_start());
            out.push('\n');
        }
        if let Some(v) = cluster.as_ref().and_then(|c| c.violation.clone()) {
            panic!("line {}: {text}: invariant violated: {v}\n{out}", n + 1);
        }
    }
    out
}

fn id(word: &str) -> Result<ReplicaId, String> {
    word.parse::<u8>().map(ReplicaId).map_err(|_| format!("bad replica id {word:?}"))
}

fn link(word: &str) -> Result<(ReplicaId, ReplicaId), String> {
    let (a, b) = word.split_once("->").ok_or(format!("expected from->to, got {word:?}"))?;
    Ok((id(a)?, id(b)?))
}

fn ms(word: Option<&&str>) -> Result<u64, String> {
    let w = word.ok_or("missing milliseconds")?;
    w.parse().map_err(|_| format!("bad milliseconds {w:?}"))
}

fn cluster_cmd(args: &[&str]) -> Result<SimCluster, String> {
    let mut n = 3;
    let mut nw = None;
    let mut nr = None;
    for a in args {
        let (k, v) = a.split_once('=').ok_or(format!("expected key=value, got {a:?}"))?;
        let v: usize = v.parse().map_err(|_| format!("bad number in {a:?}"))?;
        match k {
            "n" => n = v,
            "nw" => nw = Some(v),
            "nr" => nr = Some(v),
            _ => return Err(format!("unknown cluster option {k:?}")),
        }
    }
    let mut cfg = SimConfig::new(n);
    cfg.write_quorum = nw.unwrap_or(cfg.write_quorum);
    cfg.read_quorum = nr.unwrap_or(cfg.read_quorum);
    let mut c = SimCluster::new(cfg, GOLDEN_SEED, true);
    c.trace.on = true;
    c.start();
    Ok(c)
}

fn run_command(cluster: &mut Option<SimCluster>, text: &str) -> Result<Vec<String>, String> {
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    if words[0] == "cluster" {
        *cluster = Some(cluster_cmd(&words[1..])?);
        return Ok(std::mem::take(&mut cluster.as_mut().expect("just set").trace.lines));
    }
    let c = cluster.as_mut().ok_or("no cluster yet: start with `cluster n=3`")?;
    let arg = |i: usize| words.get(i).copied().ok_or(format!("{}: missing argument", words[0]));
    let mut extra = Vec::new();
    match words[0] {
        "tick" => c.tick(ms(words.get(1))?),
        "run" => {
            for _ in 0..ms(words.get(1))? {
                c.tick(1);
                c.deliver_all(None);
            }
        }
        "deliver" => match words.get(1) {
            None | Some(&"all") => {
                c.deliver_all(None);
            }
            Some(l) => {
                let (from, to) = link(l)?;
                c.deliver_link(from, to);
            }
        },
        "drop" => {
            let (from, to) = link(arg(1)?)?;
            c.drop_link(from, to);
        }
        "partition" => {
            let groups: Result<Vec<Vec<ReplicaId>>, String> =
                arg(1)?.split('|').map(|g| g.split(',').map(id).collect()).collect();
            c.partition(&groups?);
        }
        "cut" => {
            let (from, to) = link(arg(1)?)?;
            c.cut(from, to);
        }
        "heal" => c.heal(),
        "crash" => c.crash(id(arg(1)?)?, 0),
        "restart" => c.restart(id(arg(1)?)?),
        "pause" => c.pause(id(arg(1)?)?),
        "resume" => c.resume(id(arg(1)?)?),
        "put" | "del" | "get" => {
            let r = id(arg(1)?)?;
            let key = arg(2)?.to_string();
            let request = match words[0] {
                "put" => Request::Put { key, value: words[3..].join(" ").into_bytes() },
                "del" => Request::Del { key },
                _ => Request::Get { key },
            };
            if c.client_request(r, request).is_none() {
                extra.push(format!("r{r} is down: connection refused"));
            }
        }
        "status" | "log" => {
            let ids = match words.get(1) {
                Some(w) => vec![id(w)?],
                None => c.ids(),
            };
            for r in ids {
                extra.push(describe(c, r, words[0] == "log"));
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    }
    c.take_events();
    let mut lines = std::mem::take(&mut c.trace.lines);
    lines.extend(extra);
    Ok(lines)
}

fn describe(c: &SimCluster, id: ReplicaId, log: bool) -> String {
    let Some(r) = c.replica(id) else { return format!("r{id}: down") };
    if !log {
        return format!("r{id}: {}", r.status(c.now));
    }
    let entries: Vec<String> = r.log().iter().map(|(i, e)| fmt::entry(*i, e)).collect();
    format!("r{id} log (commit {}): {}", r.commit_index(), entries.join(", "))
}

/// Compares expected and actual output; Err holds a readable diff.
pub fn compare(name: &str, expected: &str, actual: &str) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    Err(format!(
        "golden script {name} does not match its expected output \
         (UPDATE_GOLDEN=1 cargo test golden rewrites it; review the diff):\n{}",
        diff(&e, &a)
    ))
}

/// A line diff (`-` expected only, `+` actual only) from a longest common
/// subsequence, with two lines of context around each change.
fn diff(e: &[&str], a: &[&str]) -> String {
    let (n, m) = (e.len(), a.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if e[i] == a[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && e[i] == a[j] {
            ops.push((' ', e[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', a[j]));
            j += 1;
        } else {
            ops.push(('-', e[i]));
            i += 1;
        }
    }
    let near = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 3).min(ops.len());
        ops[lo..hi].iter().any(|(c, _)| *c != ' ')
    };
    let mut out = Vec::new();
    let mut skipped = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push("...".to_string());
                skipped = false;
            }
            out.push(format!("{c} {line}"));
        } else {
            skipped = true;
        }
    }
    out.join("\n")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sim/golden")
}

/// Every script in the golden directory, by name.
fn scripts() -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("src/sim/golden exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    list.sort();
    list
}

#[test]
fn golden_scripts_match_their_expected_output() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let list = scripts();
    assert!(list.len() >= 7, "expected at least 7 golden scripts, found {}", list.len());
    let mut failures = Vec::new();
    for path in list {
        let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
        let script = std::fs::read_to_string(&path).expect("readable script");
        let first = script.lines().next().unwrap_or("");
        assert!(first.starts_with('#'), "{name}: open with a comment giving setup and property");
        let actual = run_script(&script);
        let expected_path = path.with_extension("out");
        if update {
            std::fs::write(&expected_path, &actual).expect("write expected output");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if let Err(diff) = compare(&name, &expected, &actual) {
            failures.push(diff);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn one_changed_expected_line_fails_the_comparison() {
    let path = golden_dir().join("forwarded_write.txt");
    let script = std::fs::read_to_string(&path).expect("readable script");
    let actual = run_script(&script);
    assert!(compare("forwarded_write", &actual, &actual).is_ok());
    let target = actual.lines().position(|l| l.contains("reply #")).expect("a reply line");
    let changed: Vec<String> = actual
        .lines()
        .enumerate()
        .map(|(i, l)| if i == target { l.replace("OK", "ERR TIMEOUT") } else { l.to_string() })
        .collect();
    let changed = changed.join("\n") + "\n";
    let err = compare("forwarded_write", &changed, &actual).expect_err("a changed line must fail");
    assert!(err.contains("ERR TIMEOUT") && err.contains("- "), "diff names the line: {err}");
}

#[test]
fn golden_runs_are_deterministic() {
    let script = "# twice\ncluster n=3\nrun 200\nput 1 k v\nrun 30\nstatus\n";
    assert_eq!(run_script(script), run_script(script));
}
