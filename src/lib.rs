//! quorumkv: a replicated key-value store.

#![forbid(unsafe_code)]

pub mod backup;
pub mod client;
pub mod config;
pub mod disk;
pub mod exec;
pub mod log;
pub mod mailbox;
pub mod metrics;
pub mod protocol;
pub mod server;
#[cfg(test)]
pub mod sim;
pub mod storage;
pub mod transport;
pub mod wire;
