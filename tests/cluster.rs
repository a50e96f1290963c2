//! Integration tests against real `quorumkv` processes (DESIGN §7, STYLE
//! "Testing pyramid", level 4). Each test is named for the property it pins.
//! The cluster properties are the driver's scenarios, run here with 3 and 5
//! replicas and other quorums. Every wait polls against a deadline and every
//! socket has a timeout, so each test is bounded in time; at most two
//! clusters run at once in this process (see `driver::cluster`).

mod common;

use common::{check, has_word, opts, run_all_bounded};
use driver::client::Client;
use driver::cluster::{Cluster, ClusterOpts};
use driver::scenarios::{commit_needs_quorum, follower_forwards, leader_failover};
use driver::scenarios::{leader_steps_down, with_cluster};
use std::time::Duration;

/// Three replicas, default quorums.
fn three() -> ClusterOpts {
    opts(3, &[])
}

/// Five replicas, default quorums (NW 3, NR 3).
fn five() -> ClusterOpts {
    opts(5, &[])
}

/// Five replicas with NW 4 and NR 2.
fn five_nw4_nr2() -> ClusterOpts {
    opts(5, &["--write-quorum", "4", "--read-quorum", "2"])
}

#[test]
fn three_replicas_elect_one_leader_named_by_all() {
    let o = three();
    check(with_cluster(&o, |c| {
        let (leader, epoch) = c.wait_for_leader(o.settle_deadline())?;
        let mut leaders = Vec::new();
        for id in c.ids() {
            let s = c.status(id)?;
            if s.id() != id || s.leader() != Some(leader) || s.epoch() != epoch {
                return Err(format!(
                    "replica {id}: {} (expected leader={leader} epoch={epoch})",
                    s.raw
                ));
            }
            if s.role() == "leader" {
                leaders.push(id);
            }
        }
        if leaders != [leader] {
            return Err(format!(
                "replicas reporting role=leader: {leaders:?}, expected [{leader}]"
            ));
        }
        Ok(())
    }));
}

#[test]
fn put_through_follower_commits_and_every_replica_reads_it() {
    check(follower_forwards::run(&three()));
}

#[test]
fn leader_kill_elects_highest_survivor_in_higher_epoch_and_keeps_writes() {
    check(leader_failover::run(&three()));
}

#[test]
fn put_without_quorum_is_refused_and_never_applied() {
    check(commit_needs_quorum::run(&three()));
}

#[test]
fn leader_steps_down_when_followers_stop_and_serves_after_cont() {
    check(leader_steps_down::run(&three()));
}

#[test]
fn five_replicas_put_through_follower_commits_and_every_replica_reads_it() {
    check(follower_forwards::run(&five()));
}

#[test]
fn five_replicas_leader_kill_elects_highest_survivor_in_higher_epoch_and_keeps_writes() {
    check(leader_failover::run(&five()));
}

#[test]
fn five_replicas_put_without_quorum_is_refused_and_never_applied() {
    check(commit_needs_quorum::run(&five()));
}

#[test]
fn five_replicas_nw4_nr2_put_through_follower_commits_and_every_replica_reads_it() {
    check(follower_forwards::run(&five_nw4_nr2()));
}

#[test]
fn five_replicas_nw4_nr2_leader_kill_elects_highest_survivor_in_higher_epoch_and_keeps_writes() {
    check(leader_failover::run(&five_nw4_nr2()));
}

#[test]
fn five_replicas_nw4_nr2_put_without_quorum_is_refused_and_never_applied() {
    check(commit_needs_quorum::run(&five_nw4_nr2()));
}

/// One hostile input and the reply it must get.
struct BadInput {
    /// What is wrong with it, for the failure message.
    what: &'static str,
    /// The bytes sent, `\n` included.
    bytes: Vec<u8>,
    /// How the reply must start.
    reply_prefix: &'static str,
}

/// Bad lines a client may send (DESIGN §8): each gets an `ERR` line.
fn bad_inputs() -> Vec<BadInput> {
    let mut overlong = b"PUT big ".to_vec();
    overlong.extend(std::iter::repeat_n(b'x', 80_000));
    overlong.push(b'\n');
    let long_key = format!("GET {}\n", "k".repeat(300)).into_bytes();
    let bad =
        |what, bytes: &[u8], reply_prefix| BadInput { what, bytes: bytes.to_vec(), reply_prefix };
    vec![
        bad("unknown command", b"FROB x\n", "ERR BADCMD"),
        bad("PUT without arguments", b"PUT\n", "ERR BADCMD"),
        bad("PUT without a value", b"PUT k\n", "ERR BADCMD"),
        bad("GET without a key", b"GET\n", "ERR BADCMD"),
        bad("DEL without a key", b"DEL\n", "ERR BADCMD"),
        bad("empty line", b"\n", "ERR "),
        BadInput { what: "line over 70000 bytes", bytes: overlong, reply_prefix: "ERR TOOLARGE" },
        BadInput { what: "key over 256 bytes", bytes: long_key, reply_prefix: "ERR " },
        bad("invalid UTF-8 key", b"GET \xff\xfe\n", "ERR "),
        bad("NUL byte in a key", b"GET a\0b\n", "ERR "),
        bad("NUL byte as a command", b"\0\n", "ERR "),
    ]
}

#[test]
fn bad_client_input_gets_clear_errors_and_connection_stays_usable() {
    let o = three();
    check(with_cluster(&o, |c| {
        let (leader, _) = c.wait_for_leader(o.settle_deadline())?;
        let via = c.ids().find(|&id| id != leader).expect("3 replicas");
        let mut client = c.client(via)?;
        for input in bad_inputs() {
            client.send_raw(&input.bytes)?;
            let reply = client.read_line().map_err(|e| format!("{}: {e}", input.what))?;
            if !reply.starts_with(input.reply_prefix) {
                return Err(format!(
                    "{}: got {reply:?}, want {}...",
                    input.what, input.reply_prefix
                ));
            }
            let after = client.cmd("PUT k v").map_err(|e| format!("after {}: {e}", input.what))?;
            if !after.starts_with("OK ") {
                return Err(format!("PUT after {} on the same connection: {after:?}", input.what));
            }
        }
        bad_peer_handshake_is_refused(c, leader)?;
        let (after_leader, _) = c.wait_for_leader(o.settle_deadline())?;
        let mut fresh = c.client(after_leader)?;
        fresh.put("after-handshake", "ok").map_err(|e| format!("PUT after handshake: {e}"))?;
        Ok(())
    }));
}

/// A peer handshake with a wrong digest gets `QKVPEER-REFUSED ...` and/or a
/// closed connection, never a client reply.
fn bad_peer_handshake_is_refused(c: &mut Cluster, to: usize) -> Result<(), String> {
    let mut peer = Client::connect(&c.addr(to), Duration::from_secs(5))?;
    peer.send_raw(b"QKVPEER 1 2 0000000000000000 0 -\n")?;
    let closed = |r: &Result<String, String>| {
        r.as_ref().err().is_some_and(|e| e.contains("closed") || e.contains("reset"))
    };
    let first = peer.read_line();
    if closed(&first) {
        return Ok(());
    }
    match first {
        Ok(line) if line.starts_with("QKVPEER-REFUSED") => {
            let next = peer.read_line();
            if closed(&next) {
                Ok(())
            } else {
                Err(format!("after {line:?} the connection stayed open: {next:?}"))
            }
        }
        other => Err(format!("bad peer handshake got {other:?}, want QKVPEER-REFUSED or a close")),
    }
}

#[test]
fn bad_flags_exit_2_with_one_clear_line() {
    let peers = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";
    let data = std::env::temp_dir().join(format!("qkv-badflags-{}", std::process::id()));
    let data = data.display().to_string();
    // (command line, the flag names one of which the error must mention)
    let cases: Vec<(String, &[&str])> = vec![
        (format!("--id 1 --peers {peers} --write-quorum 1"), &["write-quorum"]),
        (
            format!("--id 1 --peers {peers} --write-quorum 2 --read-quorum 1"),
            &["read-quorum", "write-quorum"],
        ),
        (format!("--id 1 --peers {peers} --write-quorum 4"), &["write-quorum"]),
        (format!("--id 1 --peers {peers} --read-quorum 4"), &["read-quorum"]),
        (format!("--id 4 --peers {peers}"), &["id"]),
        (format!("--id 0 --peers {peers}"), &["id"]),
        ("--id 1 --peers 127.0.0.1:7101,127.0.0.1:7101,127.0.0.1:7103".to_string(), &["peers"]),
        ("--id 1 --peers notanaddress".to_string(), &["peers"]),
        (format!("--id 1 --peers {peers} --fsync sometimes"), &["fsync"]),
        (format!("--id 1 --peers {peers} --heartbeat-ms abc"), &["heartbeat-ms"]),
        (format!("--id 1 --peers {peers} --bogus"), &["bogus"]),
        (
            format!("--id 1 --peers {peers} --max-value-bytes 5000000 --max-line-bytes 6000000"),
            &["max-value-bytes"],
        ),
        (format!("--peers {peers}"), &["id"]),
    ];
    let arg_lists: Vec<Vec<String>> = cases
        .iter()
        .map(|(line, _)| {
            let mut args: Vec<String> = line.split(' ').map(String::from).collect();
            args.extend(["--data-dir".to_string(), data.clone()]);
            args
        })
        .collect();
    let outputs = run_all_bounded(&arg_lists, Duration::from_secs(10));
    let mut failures = Vec::new();
    for ((line, flags), out) in cases.iter().zip(outputs) {
        let Some(out) = out else {
            failures.push(format!("`{line}`: still running after 10 s"));
            continue;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let one_line = lines.len() == 1 && !lines[0].trim().is_empty();
        let names_flag = flags.iter().any(|f| has_word(&stderr, f));
        if out.status.code() != Some(2) || !one_line || !names_flag {
            failures.push(format!(
                "`{line}`: status {:?}, stderr {stderr:?} (want status 2 and one line naming {flags:?})",
                out.status.code()
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&data);
    assert!(failures.is_empty(), "bad flags not refused clearly:\n{}", failures.join("\n"));
}

#[test]
fn word_match_finds_flag_names_but_not_substrings() {
    assert!(has_word("--id 4 is outside 1..3", "id"));
    assert!(has_word("Required option 'id' missing", "id"));
    assert!(!has_word("invalid value", "id"));
    assert!(has_word("--write-quorum 1 must exceed N/2", "write-quorum"));
    assert!(!has_word("--heartbeat-ms-max", "heartbeat-ms"));
}

#[test]
fn writes_through_any_replica_read_back_everywhere_and_del_removes() {
    check(driver::scenarios::reads_work::run(&three()));
}

#[test]
fn on_one_connection_a_pipelined_read_sees_the_writes_sent_before_it() {
    let o = three();
    check(with_cluster(&o, |c| {
        let (leader, _) = c.wait_for_leader(o.settle_deadline())?;
        let follower = c.ids().find(|&id| id != leader).ok_or("no follower")?;
        for id in [follower, leader] {
            let mut k = c.client(id)?;
            // Each round in one write: the GET is sent before the PUT's
            // reply comes back, and the second PUT before the GET's.
            let rounds = 200;
            let mut bytes = Vec::new();
            for i in 0..rounds {
                let key = format!("pipe-{id}-{i}");
                bytes.extend_from_slice(
                    format!("PUT {key} a{i}\nGET {key}\nPUT {key} b{i}\nDEL {key}\nGETV {key}\n")
                        .as_bytes(),
                );
            }
            k.send_raw(&bytes)?;
            for i in 0..rounds {
                let got: Vec<String> = (0..5).map(|_| k.read_line()).collect::<Result<_, _>>()?;
                let ok = got[0].starts_with("OK ")
                    && got[1] == format!("VALUE a{i}")
                    && got[2].starts_with("OK ")
                    && got[3].starts_with("OK ")
                    && got[4] == "NOTFOUND";
                if !ok {
                    return Err(format!("via replica {id}, round {i}: {got:?}"));
                }
            }
        }
        Ok(())
    }));
}

/// 64 KiB values, the default limit, pipelined through a follower so that
/// many are in flight at once: they commit (split across ACCEPTs by bytes),
/// a leader killed right after leaves a survivor that wins and serves every
/// one of them, byte for byte.
#[test]
fn largest_values_pipelined_commit_and_survive_a_leader_kill() {
    let o = three();
    check(with_cluster(&o, |c| {
        let (leader, _) = c.wait_for_leader(o.settle_deadline())?;
        let follower = c.ids().find(|&id| id != leader).ok_or("no follower")?;
        let value = |i: usize| format!("{i:05}{}", "v".repeat(65_536 - 5));
        let writes = 120;
        let mut k = c.client(follower)?;
        let mut bytes = Vec::new();
        for i in 0..writes {
            bytes.extend_from_slice(format!("PUT big-{i} {}\n", value(i)).as_bytes());
        }
        k.send_raw(&bytes)?;
        for i in 0..writes {
            let reply = k.read_line()?;
            if !reply.starts_with("OK ") {
                return Err(format!("PUT big-{i}: {reply}"));
            }
        }
        c.kill(leader)?;
        let (new_leader, _) = c.wait_for_leader(o.settle_deadline())?;
        let mut k = c.client(new_leader)?;
        for i in 0..writes {
            match k.get(&format!("big-{i}"))? {
                Some(v) if v == value(i) => {}
                Some(v) => {
                    return Err(format!("big-{i}: {} bytes, not the value written", v.len()))
                }
                None => return Err(format!("big-{i}: NOTFOUND after the failover")),
            }
        }
        let after = k.put("big-after", &value(writes))?;
        if after == 0 {
            return Err("PUT after the failover returned version 0".into());
        }
        Ok(())
    }));
}
