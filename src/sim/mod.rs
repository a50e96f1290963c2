//! Deterministic simulation (DESIGN §7; STYLE "Testing pyramid" 2 and 3).
//!
//! The real protocol core runs here, N replicas in one process, driven by one
//! seed: a simulated clock, network ([`net`]) and disk ([`disk`]), with the
//! server's own output executor in between ([`cluster`]). On top of that:
//!
//! - [`check`]: invariants checked after every step;
//! - [`linear`]: a linearizability checker for client histories;
//! - [`runner`]: random faults and clients per seed, and the seed sweep
//!   (`SIM_SEED=n` replays one seed with its trace, `SIM_SEEDS=n` runs n);
//! - [`stale`]: a fault schedule that reacts to the protocol (the
//!   stale-promise episode), which the runner plays in some seeds;
//! - [`golden`]: golden scripts with manual delivery (`UPDATE_GOLDEN=1`
//!   rewrites the expected output);
//! - `properties`: protocol properties as scripted scenarios.
//!
//! Only `BTreeMap`, `Vec` and seeded `StdRng` are used, so one seed always
//! gives the same run (with the same commit and `Cargo.lock`).

pub mod check;
pub mod clients;
pub mod cluster;
pub mod disk;
pub mod fmt;
pub mod golden;
pub mod linear;
pub mod net;
#[cfg(test)]
mod properties;
pub mod runner;
pub mod stale;
mod sweep;
