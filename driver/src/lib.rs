//! The quorumkv driver: starts real `quorumkv` processes, talks to them as a
//! client, injects faults (kill -9, SIGSTOP/SIGCONT, restart, wipe) and checks
//! what the cluster promises (DESIGN §7, STYLE "Testing pyramid", level 4).
//!
//! # Layout
//! - [`binary`]: finds (or builds) the server binary.
//! - [`client`]: a blocking line client with timeouts, also for hostile input.
//! - [`cluster`]: a cluster of real replica processes in a temp directory,
//!   torn down on `Drop`, also when a test panics.
//! - [`scenarios`]: the properties the driver proves, one file each; the root
//!   integration tests reuse them with other replica counts and quorums.
//! - [`check`]: a linearizability checker for client histories, with its own
//!   plain history type (usable by the in-crate simulator too).
//! - [`proxy`]: a link proxy between replicas, for partitions on one host.
//! - [`netns`]: replicas in network namespaces, partitioned by blackhole routes.
//! - [`nemesis`]: concurrent clients under seeded faults, then the checks;
//!   [`history`] records what happened and [`svg`] plots it.
//!
//! Every wait here is a poll against a deadline; nothing sleeps in place of
//! synchronisation.

#![forbid(unsafe_code)]

pub mod bench;
pub mod binary;
pub mod check;
pub mod client;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod proxy;
pub mod scenarios;
pub mod svg;
