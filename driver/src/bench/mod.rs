//! Benchmark harness for `driver bench` (DESIGN §9), built up in parts:
//! [`histogram`] records latencies with ~1% precision, [`json`] writes results.

pub mod histogram;
pub mod json;
