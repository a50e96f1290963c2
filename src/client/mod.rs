//! The client text protocol (DESIGN §8): one command per line in, exactly one
//! reply line out (HELP and METRICS end with a line `END`).
//!
//! Layers, as in mini-redis: bytes → line (the transport cuts lines and
//! enforces the line limit) → [`parse`] → [`Request`]; a [`Reply`] encodes
//! itself back to bytes with [`Reply::encode`]. Everything here is pure data:
//! the protocol core imports these types, and nothing here does IO except the
//! interactive line client in [`line_client`].

pub mod line_client;
pub mod parse;

pub use parse::{parse, Limits};

use crate::protocol::types::{value_bytes, ReplicaId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One parsed client command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `PUT key value` (alias `add_update`): `OK <version>`.
    Put {
        key: String,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
    /// `GET key` (alias `read`): `VALUE <value>` or `NOTFOUND`.
    Get { key: String },
    /// `GETV key`: `VERSION <version> <value>` or `NOTFOUND`.
    GetV { key: String },
    /// `DEL key`: `OK <index of the DEL>`.
    Del { key: String },
    /// `CAS key version value`: `OK <version>` or `ERR CONFLICT <current>`.
    Cas {
        key: String,
        version: u64,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
    /// `STATUS`: one line of `name=value` fields.
    Status,
    /// `METRICS`: Prometheus text, then `END`.
    Metrics,
    /// `DUMP`: every key as a JSON line, consistent at one commit index, then
    /// `END` (what `quorumkv dump` uses for backups).
    Dump,
    /// `HELP`: commands, limits and quorum sizes, then `END`.
    Help,
    /// `QUIT`: `BYE`, then the connection closes.
    Quit,
}

impl Request {
    /// True for PUT, DEL and CAS: commands that become log entries.
    pub fn is_write(&self) -> bool {
        matches!(self, Request::Put { .. } | Request::Del { .. } | Request::Cas { .. })
    }
}

/// One reply. `encode` writes the exact bytes sent to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `OK <version>`: a write committed; the version is its log index.
    Written(u64),
    /// `VALUE <value>`.
    Value(#[serde(with = "value_bytes")] Vec<u8>),
    /// `VERSION <version> <value>`.
    Version(u64, #[serde(with = "value_bytes")] Vec<u8>),
    /// `NOTFOUND`.
    NotFound,
    /// `STATUS ...`: the text after `STATUS `.
    Status(String),
    /// Several lines, then `END` (HELP, METRICS). Lines hold no newline.
    Lines(Vec<String>),
    /// `BYE`.
    Bye,
    /// `ERR <CODE> <detail>`.
    Error(ClientError),
}

/// Every error a client can see. The first word after `ERR` is the code that
/// scripts match on (DESIGN §9); the rest is detail for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientError {
    /// Fewer than NW full members are live; the write was never proposed, so it
    /// is applied nowhere, ever. `ERR NOQUORUM <live>/<needed> down=<ids>`.
    NoQuorum { live: usize, needed: usize, down: Vec<ReplicaId> },
    /// Proposed or forwarded, but no answer in time: the outcome is unknown.
    Timeout(String),
    /// No leader emerged in time; the write was never proposed.
    NoLeader(String),
    /// CAS lost: the key's current version.
    Conflict(u64),
    /// A line, key or value over its limit: `what size > limit (flag)`.
    TooLarge { what: String, size: usize, limit: usize, flag: String },
    /// A malformed command.
    BadCmd(String),
    /// Over the client connection limit; the connection closes after this.
    Busy(String),
    /// The replica is shutting down (SIGTERM); the request was not started.
    Shutdown(String),
}

impl ClientError {
    /// The code word scripts match on.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::NoQuorum { .. } => "NOQUORUM",
            ClientError::Timeout(_) => "TIMEOUT",
            ClientError::NoLeader(_) => "NOLEADER",
            ClientError::Conflict(_) => "CONFLICT",
            ClientError::TooLarge { .. } => "TOOLARGE",
            ClientError::BadCmd(_) => "BADCMD",
            ClientError::Busy(_) => "BUSY",
            ClientError::Shutdown(_) => "SHUTDOWN",
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERR {}", self.code())?;
        match self {
            ClientError::NoQuorum { live, needed, down } => {
                write!(f, " {live}/{needed}")?;
                if !down.is_empty() {
                    let ids: Vec<String> = down.iter().map(|d| d.to_string()).collect();
                    write!(f, " down={}", ids.join(","))?;
                }
                Ok(())
            }
            ClientError::Timeout(d)
            | ClientError::NoLeader(d)
            | ClientError::BadCmd(d)
            | ClientError::Busy(d)
            | ClientError::Shutdown(d) => {
                if d.is_empty() {
                    Ok(())
                } else {
                    write!(f, " {d}")
                }
            }
            ClientError::Conflict(v) => write!(f, " {v}"),
            ClientError::TooLarge { what, size, limit, flag } => {
                write!(f, " {what} {size} > {limit} ({flag})")
            }
        }
    }
}

impl Reply {
    /// Appends the reply's exact bytes, newline-terminated, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Written(v) => {
                // Written into `out` directly: no allocation per reply.
                let _ = std::io::Write::write_fmt(out, format_args!("OK {v}"));
            }
            Reply::Value(value) => {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(value);
            }
            Reply::Version(v, value) => {
                let _ = std::io::Write::write_fmt(out, format_args!("VERSION {v} "));
                out.extend_from_slice(value);
            }
            Reply::NotFound => out.extend_from_slice(b"NOTFOUND"),
            Reply::Status(s) => {
                out.extend_from_slice(b"STATUS ");
                out.extend_from_slice(s.as_bytes());
            }
            Reply::Lines(lines) => {
                for line in lines {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"END");
            }
            Reply::Bye => out.extend_from_slice(b"BYE"),
            Reply::Error(e) => out.extend_from_slice(e.to_string().as_bytes()),
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(r: Reply) -> String {
        let mut out = Vec::new();
        r.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn pinned_error_forms_match_design_section_9() {
        let e =
            ClientError::NoQuorum { live: 1, needed: 2, down: vec![ReplicaId(2), ReplicaId(3)] };
        assert_eq!(encoded(Reply::Error(e)), "ERR NOQUORUM 1/2 down=2,3\n");
        let e = ClientError::NoQuorum { live: 1, needed: 2, down: vec![] };
        assert_eq!(encoded(Reply::Error(e)), "ERR NOQUORUM 1/2\n");
        let e = ClientError::TooLarge {
            what: "value".into(),
            size: 70000,
            limit: 65536,
            flag: "--max-value-bytes".into(),
        };
        assert_eq!(
            encoded(Reply::Error(e)),
            "ERR TOOLARGE value 70000 > 65536 (--max-value-bytes)\n"
        );
        assert_eq!(encoded(Reply::Error(ClientError::Conflict(7))), "ERR CONFLICT 7\n");
    }

    #[test]
    fn replies_end_with_exactly_one_newline() {
        assert_eq!(encoded(Reply::Written(3)), "OK 3\n");
        assert_eq!(encoded(Reply::Value(b"a b".to_vec())), "VALUE a b\n");
        assert_eq!(encoded(Reply::Value(Vec::new())), "VALUE \n");
        assert_eq!(encoded(Reply::Version(4, b"x".to_vec())), "VERSION 4 x\n");
        assert_eq!(encoded(Reply::Lines(vec!["a".into()])), "a\nEND\n");
    }
}
