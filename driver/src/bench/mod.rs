//! Benchmark harness for `driver bench` (DESIGN §9), built up in parts:
//! [`histogram`] records latencies with ~1% precision, [`json`] writes results,
//! [`floors`] measures what this machine can do at best, [`proc_stat`] reads
//! CPU time and memory from `/proc`.

pub mod floors;
pub mod histogram;
pub mod json;
pub mod proc_stat;
