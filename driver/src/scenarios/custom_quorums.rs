//! Setup: 5 replicas started with `--write-quorum 4 --read-quorum 2`.
//!
//! Property (DESIGN §2, §5): quorums other than the defaults work as long as
//! NW > N/2 and NR + NW > N: a write needs 4 votes (with only 3 live it is
//! refused, `ERR NOQUORUM 3/4`), a read asks 2 replicas and still never
//! misses an acknowledged write, forwarding and failover behave as with the
//! defaults.

use super::core_checks;
use crate::cluster::ClusterOpts;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    let mut o = ClusterOpts { replicas: 5, ..opts.clone() };
    o.extra_flags.extend(["--write-quorum", "4", "--read-quorum", "2"].map(String::from));
    core_checks(&o)
}
