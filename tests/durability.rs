//! Nothing acknowledged is ever lost (DESIGN §4, §6), shown against real
//! processes: catch-up by snapshot, a deleted key that stays deleted, the
//! lagging highest id, a wiped replica that rejoins as a learner, and a wiped
//! majority that refuses writes instead of forming a new, empty cluster.
//!
//! Each replica's own store is read with DUMP through that replica (a
//! follower dumps its own store once it has applied what the leader
//! confirmed), so these tests see exactly what every replica holds.

#[allow(dead_code)]
mod common;

use driver::cluster::Cluster;
use quorumkv::backup::dump_to;
use std::time::{Duration, Instant};

fn settle() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// The key lines of replica `id`'s DUMP (without the commit header).
fn store_of(c: &Cluster, id: usize) -> Vec<String> {
    let mut out = Vec::new();
    dump_to(&c.addr(id), &mut out).unwrap_or_else(|e| panic!("DUMP via {id}: {e}"));
    String::from_utf8(out).unwrap().lines().skip(1).map(str::to_string).collect()
}

/// Polls until `id`'s STATUS satisfies `ok`, or panics with the last STATUS.
fn wait_status(c: &Cluster, id: usize, what: &str, ok: impl Fn(&driver::cluster::Status) -> bool) {
    let deadline = settle();
    loop {
        let status = c.status(id);
        if let Ok(s) = &status {
            if ok(s) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "replica {id} never {what}: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn commit_of(c: &Cluster, id: usize) -> u64 {
    c.status(id).unwrap().get("commit").unwrap().parse().unwrap()
}

fn put(c: &Cluster, via: usize, key: &str, value: &str) {
    let reply = c.client(via).unwrap().cmd(&format!("PUT {key} {value}")).unwrap();
    assert!(reply.starts_with("OK "), "PUT {key} via {via}: {reply}");
}

fn get(c: &Cluster, via: usize, key: &str) -> String {
    c.client(via).unwrap().cmd(&format!("GET {key}")).unwrap()
}

#[test]
fn follower_behind_a_snapshot_catches_up_by_snapshot_and_deleted_keys_stay_deleted() {
    let mut c = Cluster::start(common::opts(3, &["--snapshot-every-entries", "20"])).unwrap();
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    let follower = c.ids().find(|id| *id != leader).unwrap();
    put(&c, leader, "gone", "soon");
    c.kill(follower).unwrap();
    for i in 0..200 {
        put(&c, leader, &format!("k{i}"), &format!("v{i}"));
    }
    assert!(c.client(leader).unwrap().cmd("DEL gone").unwrap().starts_with("OK "));
    assert!(c.client(leader).unwrap().cmd("DEL k7").unwrap().starts_with("OK "));
    c.restart(follower).unwrap();
    let target = commit_of(&c, leader);
    wait_status(&c, follower, "caught up", |s| {
        s.get("commit").and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v >= target)
    });
    let log = std::fs::read_to_string(c.log_path(follower)).unwrap();
    assert!(log.contains("installed snapshot"), "the follower caught up by snapshot");
    // The leader's STATUS shows the follower's lag going to 0.
    let lag_zero = format!("{follower}:0");
    wait_status(&c, leader, "showing lag 0", |s| {
        s.get("lag").is_some_and(|l| l.split(',').any(|p| p == lag_zero))
    });
    let theirs = store_of(&c, follower);
    assert_eq!(theirs, store_of(&c, leader), "the caught-up store equals the leader's");
    assert_eq!(theirs.len(), 199, "200 keys, one deleted; 'gone' deleted too");
    assert!(!theirs.iter().any(|l| l.contains("\"gone\"") || l.contains("\"k7\"")));

    // Deleted keys stay deleted through a restart of every replica.
    for id in c.ids().collect::<Vec<_>>() {
        c.kill(id).unwrap();
    }
    for id in c.ids().collect::<Vec<_>>() {
        c.restart(id).unwrap();
    }
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    put(&c, leader, "after", "restart");
    for id in c.ids() {
        assert_eq!(get(&c, id, "gone"), "NOTFOUND");
        assert_eq!(get(&c, id, "k7"), "NOTFOUND");
        assert_eq!(get(&c, id, "k8"), "VALUE v8");
        assert_eq!(store_of(&c, id).len(), 200);
    }
}

#[test]
fn a_lagging_highest_id_leads_without_losing_an_acknowledged_write() {
    let mut c = Cluster::start(common::opts(3, &[])).unwrap();
    c.wait_for_leader(settle()).unwrap();
    c.kill(3).unwrap();
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    assert_ne!(leader, 3);
    for i in 0..50 {
        put(&c, leader, &format!("k{i}"), &format!("v{i}"));
    }
    c.restart(3).unwrap();
    // Whether 3 took over at once (Bully) or not, make it lead: kill the
    // current leader if it is someone else.
    let (now_leader, _) = c.wait_for_leader(settle()).unwrap();
    if now_leader != 3 {
        c.kill(now_leader).unwrap();
        let (leader, _) = c.wait_for_leader(settle()).unwrap();
        assert_eq!(leader, 3, "the highest live id leads");
        c.restart(now_leader).unwrap();
    }
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    assert_eq!(leader, 3);
    let store = store_of(&c, 3);
    for i in 0..50 {
        let line = format!("\"key\":\"k{i}\"");
        assert!(store.iter().any(|l| l.contains(&line)), "k{i} survived: {store:?}");
    }
    for id in c.ids() {
        assert_eq!(get(&c, id, "k49"), "VALUE v49");
    }
}

#[test]
fn a_wiped_replica_rejoins_as_a_learner_and_never_counts_while_empty() {
    let mut c = Cluster::start(common::opts(3, &[])).unwrap();
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    for i in 0..30 {
        put(&c, leader, &format!("k{i}"), &format!("v{i}"));
    }
    let others: Vec<usize> = c.ids().filter(|id| *id != leader).collect();
    let (wiped, other) = (others[0], others[1]);
    c.kill(wiped).unwrap();
    c.kill(other).unwrap();
    c.wipe(wiped).unwrap();
    c.restart(wiped).unwrap();
    // With one full member besides the learner, nothing can commit: the
    // learner must not count toward the write quorum.
    wait_status(&c, wiped, "a learner", |s| s.role() == "learner");
    let reply = c.client(leader).unwrap().cmd("PUT while learner").unwrap();
    assert!(reply.starts_with("ERR "), "a write with one full member and a learner: {reply}");
    assert_eq!(c.status(wiped).unwrap().role(), "learner", "it cannot finish joining yet");

    c.restart(other).unwrap();
    wait_status(&c, wiped, "promoted", |s| s.role() == "follower" || s.role() == "leader");
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    put(&c, leader, "after", "rejoin");
    let store = store_of(&c, wiped);
    assert_eq!(store, store_of(&c, leader));
    // A write refused outright (NOQUORUM, NOLEADER) is applied nowhere. One
    // the leader had already proposed when the killed follower still looked
    // live ends in TIMEOUT: its outcome is unknown, and recovery by the next
    // leader may legitimately commit it.
    let refused = reply.starts_with("ERR NOQUORUM") || reply.starts_with("ERR NOLEADER");
    let has_while = store.iter().any(|l| l.contains("\"while\""));
    if refused {
        assert!(!has_while, "a refused write was applied ({reply}): {store:?}");
    } else {
        assert!(reply.starts_with("ERR TIMEOUT"), "unexpected refusal: {reply}");
    }
    let expected = 31 + usize::from(has_while);
    assert_eq!(store.len(), expected, "every acknowledged write and nothing else: {store:?}");
}

#[test]
fn wiping_a_majority_refuses_writes_instead_of_forming_a_new_cluster() {
    let mut c = Cluster::start(common::opts(3, &[])).unwrap();
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    put(&c, leader, "precious", "data");
    let cluster_id = c.status(leader).unwrap().get("cluster").unwrap().to_string();
    let survivor = leader;
    let wiped: Vec<usize> = c.ids().filter(|id| *id != survivor).collect();
    for id in c.ids().collect::<Vec<_>>() {
        c.kill(id).unwrap();
    }
    for id in &wiped {
        c.wipe(*id).unwrap();
    }
    for id in c.ids().collect::<Vec<_>>() {
        c.restart(id).unwrap();
    }
    for id in &wiped {
        wait_status(&c, *id, "a learner", |s| s.role() == "learner");
        assert_eq!(c.status(*id).unwrap().get("cluster"), Some(cluster_id.as_str()));
    }
    let reply = c.client(survivor).unwrap().cmd("PUT new data").unwrap();
    assert!(reply.starts_with("ERR "), "no quorum of full members: {reply}");
    assert_eq!(c.status(survivor).unwrap().get("cluster"), Some(cluster_id.as_str()));
    assert!(store_of_quietly(&c, survivor).iter().all(|l| !l.contains("\"new\"")));
}

/// DUMP needs a leader; with none, read the survivor's store with GETs instead.
fn store_of_quietly(c: &Cluster, id: usize) -> Vec<String> {
    let reply = get(c, id, "new");
    assert!(reply == "NOTFOUND" || reply.starts_with("ERR "), "{reply}");
    Vec::new()
}

#[test]
fn a_paused_old_leader_cannot_promote_a_wiped_replica_and_no_write_is_lost() {
    let mut c = Cluster::start(common::opts(3, &[])).unwrap();
    let (old, _) = c.wait_for_leader(settle()).unwrap();
    for i in 0..20 {
        put(&c, old, &format!("before{i}"), "x");
    }
    // Pause the leader; the other two elect a new one.
    c.stop(old).unwrap();
    let others: Vec<usize> = c.ids().filter(|id| *id != old).collect();
    let new = wait_new_leader(&c, &others);
    for i in 0..20 {
        put(&c, new, &format!("during{i}"), "y");
    }
    // Wipe the other follower while the old leader is still paused: it can
    // only register with a majority of full members, which needs the old one.
    let wiped = *others.iter().find(|id| **id != new).unwrap();
    c.kill(wiped).unwrap();
    c.wipe(wiped).unwrap();
    c.restart(wiped).unwrap();
    wait_status(&c, wiped, "a learner", |s| s.role() == "learner");
    // Resume the old leader: its epoch is behind, so it cannot be the leader
    // whose heartbeat promotes the learner; the new leader's can.
    c.cont(old).unwrap();
    wait_status(&c, wiped, "promoted", |s| s.role() == "follower" || s.role() == "leader");
    let (leader, _) = c.wait_for_leader(settle()).unwrap();
    put(&c, leader, "after", "z");
    let reference = store_of(&c, leader);
    assert_eq!(reference.len(), 41, "every acknowledged write, once");
    for id in c.ids() {
        assert_eq!(store_of(&c, id), reference, "replica {id} holds the same committed store");
    }
}

/// Waits until one of `among` reports itself leader, and every one of them names it.
fn wait_new_leader(c: &Cluster, among: &[usize]) -> usize {
    let deadline = settle();
    loop {
        let statuses: Vec<_> = among.iter().filter_map(|id| c.status(*id).ok()).collect();
        if let Some(l) = statuses.iter().find(|s| s.role() == "leader").map(|s| s.id()) {
            if statuses.len() == among.len() && statuses.iter().all(|s| s.leader() == Some(l)) {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader among {among:?}: {statuses:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
