//! Setup: 5 replicas with the default quorums (NW 3, NR 3).
//!
//! Property (DESIGN §2, §4, §5): the core scenarios hold with more replicas
//! than the original's three: a PUT with fewer than NW live is refused with
//! `ERR NOQUORUM` and never applied; writes through any replica read back
//! through every replica; a follower forwards; kill -9 of the leader elects
//! the highest live id in a higher epoch without losing a write.

use super::core_checks;
use crate::cluster::ClusterOpts;

/// Runs the scenario.
pub fn run(opts: &ClusterOpts) -> Result<(), String> {
    core_checks(&ClusterOpts { replicas: 5, ..opts.clone() })
}
