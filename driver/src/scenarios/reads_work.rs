//! Setup: N replicas (3 by default), all up. PUT 20 keys, each through a
//! different replica in turn; then DEL one of them.
//!
//! Property (the original's second scenario, DESIGN §5): every acknowledged
//! PUT reads back with its value through every replica (each read asks a read
//! quorum, which meets the write quorum of every acknowledged write), and after
//! an acknowledged DEL the key is NOTFOUND through every replica while the
//! other keys keep their values.

use super::{ensure, get_through, put_ok, with_cluster};
use crate::cluster::ClusterOpts;

/// How many keys the scenario writes.
const KEYS: usize = 20;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    with_cluster(opts, |c| {
        let all: Vec<usize> = c.ids().collect();
        c.wait_for_leader(opts.settle_deadline())?;
        let value = |i: usize| format!("value {i} with spaces");
        for i in 0..KEYS {
            let via = all[i % all.len()];
            put_ok(c, via, &format!("key-{i}"), &value(i))?;
        }
        for i in 0..KEYS {
            get_through(c, &all, &format!("key-{i}"), Some(&value(i)))?;
        }

        let via = all[all.len() - 1];
        let deleted =
            c.client(via)?.del("key-0").map_err(|e| format!("DEL key-0 via {via}: {e}"))?;
        ensure!(deleted > 0, "DEL key-0 answered OK {deleted}; a log index is at least 1");
        get_through(c, &all, "key-0", None)?;
        get_through(c, &all, "key-1", Some(&value(1)))
    })
}
