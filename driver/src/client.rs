//! A blocking line client for the text protocol (DESIGN §8), with connect and
//! read timeouts so a stopped or dead replica can never hang the driver.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One client connection to one replica.
pub struct Client {
    /// The address this client connected to, for error messages.
    addr: String,
    /// The write half.
    stream: TcpStream,
    /// The read half, buffered (a clone of `stream`).
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to `addr` (`host:port`); `timeout` bounds the connect and
    /// every later read and write on this connection.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, String> {
        let sock: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| format!("resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {addr}: no address"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| format!("set_read_timeout: {e}"))?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| format!("set_write_timeout: {e}"))?;
        // Best effort: latency matters more than packet count for a test client.
        let _ = stream.set_nodelay(true);
        let reader = BufReader::new(stream.try_clone().map_err(|e| format!("clone: {e}"))?);
        Ok(Client { addr: addr.to_string(), stream, reader })
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Changes the read timeout, e.g. to wait out a server-side request timeout.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), String> {
        self.stream.set_read_timeout(Some(timeout)).map_err(|e| format!("set_read_timeout: {e}"))
    }

    /// Sends `line` plus `\n` and returns the one reply line, without its `\n`.
    pub fn cmd(&mut self, line: &str) -> Result<String, String> {
        self.send_raw(format!("{line}\n").as_bytes())?;
        self.read_line()
    }

    /// Sends `line` plus `\n` and collects reply lines up to (not including) a
    /// line `END`, as HELP and METRICS answer. A first line starting with
    /// `ERR ` is returned alone.
    pub fn cmd_lines(&mut self, line: &str) -> Result<Vec<String>, String> {
        self.send_raw(format!("{line}\n").as_bytes())?;
        let mut lines = Vec::new();
        loop {
            let reply = self.read_line()?;
            if reply == "END" {
                return Ok(lines);
            }
            if lines.is_empty() && reply.starts_with("ERR ") {
                return Ok(vec![reply]);
            }
            lines.push(reply);
        }
    }

    /// Writes `bytes` as they are (no `\n` added), for hostile-input tests.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("write to {}: {e}", self.addr))
    }

    /// Reads one reply line as raw bytes, without its `\n`. EOF is an error
    /// that says "closed".
    pub fn read_line_bytes(&mut self) -> Result<Vec<u8>, String> {
        let mut buf = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("read from {}: {e}", self.addr))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Err(format!("read from {}: connection closed", self.addr));
        }
        buf.pop();
        Ok(buf)
    }

    /// Reads one reply line, without its `\n`; bytes that are not UTF-8 (a
    /// stored value may hold any) are shown as U+FFFD.
    pub fn read_line(&mut self) -> Result<String, String> {
        self.read_line_bytes().map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// `PUT key value`: `Ok(version)` on `OK <version>`; otherwise `Err` with
    /// the reply line (e.g. `ERR NOQUORUM 1/2`) or the IO error.
    pub fn put(&mut self, key: &str, value: &str) -> Result<u64, String> {
        let reply = self.cmd(&format!("PUT {key} {value}"))?;
        parse_ok(&reply)
    }

    /// `GET key`: `Ok(Some(value))` on `VALUE <value>`, `Ok(None)` on
    /// `NOTFOUND`; otherwise `Err` with the reply line or the IO error.
    pub fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        let reply = self.cmd(&format!("GET {key}"))?;
        if reply == "NOTFOUND" {
            Ok(None)
        } else if let Some(value) = reply.strip_prefix("VALUE ") {
            Ok(Some(value.to_string()))
        } else {
            Err(reply)
        }
    }

    /// `DEL key`: `Ok(index)` on `OK <index>`; otherwise `Err` as for [`Client::put`].
    pub fn del(&mut self, key: &str) -> Result<u64, String> {
        let reply = self.cmd(&format!("DEL {key}"))?;
        parse_ok(&reply)
    }
}

/// `OK <n>` → n; anything else is returned as the error.
fn parse_ok(reply: &str) -> Result<u64, String> {
    reply.strip_prefix("OK ").and_then(|n| n.trim().parse().ok()).ok_or_else(|| reply.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_ok;

    #[test]
    fn ok_reply_parses_version_and_anything_else_is_the_error() {
        assert_eq!(parse_ok("OK 7"), Ok(7));
        assert_eq!(parse_ok("ERR NOQUORUM 1/2"), Err("ERR NOQUORUM 1/2".to_string()));
        assert_eq!(parse_ok("OK"), Err("OK".to_string()));
    }
}
