//! Backups: `DUMP` is consistent at one commit index and carries versions;
//! `quorumkv load` restores a dump into a new, empty cluster and refuses a
//! cluster that already holds keys.

#[allow(dead_code)]
mod common;

use driver::cluster::Cluster;
use quorumkv::backup::{dump_to, load_from};
use std::io::BufReader;
use std::time::{Duration, Instant};

#[test]
fn dump_then_load_restores_every_key_into_an_empty_cluster() {
    let mut source = Cluster::start(common::opts(3, &[])).expect("start source cluster");
    let (leader, _) = source.wait_for_leader(Instant::now() + Duration::from_secs(20)).unwrap();
    let mut client = source.client(leader).unwrap();
    for i in 0..50 {
        assert!(client
            .cmd(&format!("PUT key{i} value {i} with spaces"))
            .unwrap()
            .starts_with("OK "));
    }
    assert!(client.cmd("PUT binary \u{e9}t\u{e9}").unwrap().starts_with("OK "));
    assert!(client.cmd("DEL key7").unwrap().starts_with("OK "));

    // Dump through a follower: it must wait until it applied what the leader confirmed.
    let follower = source.ids().find(|id| *id != leader).unwrap();
    let mut dump = Vec::new();
    let keys = dump_to(&source.addr(follower), &mut dump).unwrap();
    assert_eq!(keys, 50, "49 PUT keys left after the DEL, plus 'binary'");
    let text = String::from_utf8(dump.clone()).unwrap();
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("{\"commit\":"), "{header}");
    assert!(!text.contains("\"key7\""), "a deleted key is absent from the dump");
    assert!(text.contains("\"version\":"), "every line carries the key's version");
    drop(source);

    let mut target = Cluster::start(common::opts(3, &[])).expect("start target cluster");
    let (leader, _) = target.wait_for_leader(Instant::now() + Duration::from_secs(20)).unwrap();
    let written = load_from(&target.addr(leader), &mut BufReader::new(&dump[..]), false).unwrap();
    assert_eq!(written, 50);
    for id in target.ids() {
        let mut c = target.client(id).unwrap();
        assert_eq!(c.cmd("GET key3").unwrap(), "VALUE value 3 with spaces");
        assert_eq!(c.cmd("GET key7").unwrap(), "NOTFOUND");
        assert_eq!(c.cmd("GET binary").unwrap(), "VALUE \u{e9}t\u{e9}");
    }
    let refused = load_from(&target.addr(leader), &mut BufReader::new(&dump[..]), false);
    assert!(refused.unwrap_err().contains("already holds 50 keys"));
}
