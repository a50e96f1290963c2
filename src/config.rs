//! Command-line flags → [`Config`] (DESIGN §2, §9).

use crate::client::Limits;
use crate::protocol::types::ReplicaId;
use crate::storage::FsyncPolicy;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A validated replica configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's 1-based position in `peers`.
    pub id: ReplicaId,
    /// Every replica's `host:port`, as given, in id order. The digest covers this.
    pub peers: Vec<String>,
    /// `--peer-dial ID=HOST:PORT`: where this replica dials peer ID instead.
    pub peer_dial: BTreeMap<ReplicaId, String>,
    /// `--data-dir` (default `./data/<id>`).
    pub data_dir: PathBuf,
    /// NW.
    pub write_quorum: usize,
    /// NR.
    pub read_quorum: usize,
    /// `--fsync always|never`.
    pub fsync: FsyncPolicy,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--seed`: the protocol RNG seed (random when absent).
    pub seed: Option<u64>,
    /// Line, key and value limits.
    pub limits: Limits,
    /// `--max-clients`.
    pub clients_max: usize,
    /// `--idle-timeout-ms` (0 = never).
    pub idle_timeout_ms: u64,
    /// `--cluster-key-file`.
    pub cluster_key_file: Option<PathBuf>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// Run a replica.
    Run(Box<Config>),
    /// Print this usage text and exit 0.
    Help(String),
}

/// One line naming the flag and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Parsed, ConfigError> {
    let _ = args;
    Err(ConfigError("not implemented".into()))
}
