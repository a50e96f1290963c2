//! Line → [`Request`] (DESIGN §8). Pure; every bad line is a `ClientError`.

use super::{ClientError, Request};

/// Size limits the parser and the connection enforce. Each names its flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted line, without the `\n` (`--max-line-bytes`).
    pub line_bytes_max: usize,
    /// Longest key (`--max-key-bytes`; DESIGN §8 caps keys at 256).
    pub key_bytes_max: usize,
    /// Longest value (`--max-value-bytes`).
    pub value_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { line_bytes_max: 70_000, key_bytes_max: 256, value_bytes_max: 65_536 }
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is still there).
pub fn parse(line: &[u8], limits: &Limits) -> Result<Request, ClientError> {
    let _ = (line, limits);
    Err(ClientError::BadCmd("not implemented".into()))
}
