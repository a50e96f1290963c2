//! `quorumkv dump HOST:PORT > file` and `quorumkv load HOST:PORT < file`:
//! backups as JSON lines (DESIGN §8, the operations guide).
//!
//! `dump` sends `DUMP` to one replica and writes the reply: a header line
//! `{"commit":N,"keys":K}`, then one `{"key","version","value"}` line per key,
//! all consistent at commit index N. A value that is valid UTF-8 is a JSON
//! string, any other value an array of bytes.
//!
//! `load` puts such a file into a new, empty cluster with pipelined PUTs. The
//! versions in the new cluster are the new cluster's log indexes, not the old
//! ones: a version names a write in one cluster's history.

use crate::protocol::reads::DumpLine;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::time::Duration;

/// PUTs sent before their replies are read, during a load.
const LOAD_WINDOW: usize = 256;
/// How long one reply may take.
const REPLY_MS_MAX: u64 = 60_000;

/// `quorumkv dump HOST:PORT`: exit code 0 on success.
pub fn dump(args: &[String]) -> i32 {
    let Some(addr) = one_addr(args, "dump") else { return 2 };
    match dump_to(&addr, &mut io::stdout().lock()) {
        Ok(keys) => {
            eprintln!("quorumkv dump: {keys} keys from {addr}");
            0
        }
        Err(e) => {
            eprintln!("quorumkv dump: {e}");
            1
        }
    }
}

/// `quorumkv load HOST:PORT [--force]`: exit code 0 on success.
pub fn load(args: &[String]) -> i32 {
    let force = args.iter().any(|a| a == "--force");
    let rest: Vec<String> = args.iter().filter(|a| *a != "--force").cloned().collect();
    let Some(addr) = one_addr(&rest, "load") else { return 2 };
    match load_from(&addr, &mut io::stdin().lock(), force) {
        Ok(keys) => {
            eprintln!("quorumkv load: {keys} keys written to {addr}");
            0
        }
        Err(e) => {
            eprintln!("quorumkv load: {e}");
            1
        }
    }
}

fn one_addr(args: &[String], verb: &str) -> Option<String> {
    match args {
        [addr] if !addr.starts_with('-') => Some(addr.clone()),
        _ => {
            eprintln!(
                "usage: quorumkv {verb} HOST:PORT{}",
                if verb == "load" { " [--force] < file" } else { " > file" }
            );
            None
        }
    }
}

fn connect(addr: &str) -> Result<(BufReader<TcpStream>, BufWriter<TcpStream>), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(REPLY_MS_MAX)));
    let _ = stream.set_nodelay(true);
    let writer = stream.try_clone().map_err(|e| format!("{addr}: {e}"))?;
    Ok((BufReader::new(stream), BufWriter::new(writer)))
}

fn read_line(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<(), String> {
    line.clear();
    match reader.read_until(b'\n', line) {
        Ok(0) => Err("connection closed by the replica".into()),
        Ok(_) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Ok(())
        }
        Err(e) => Err(format!("reading a reply: {e}")),
    }
}

/// Writes the DUMP reply (without `END`) to `out`; returns the number of keys.
pub fn dump_to(addr: &str, out: &mut dyn Write) -> Result<usize, String> {
    let (mut reader, mut writer) = connect(addr)?;
    writer
        .write_all(b"DUMP\n")
        .and_then(|()| writer.flush())
        .map_err(|e| format!("sending DUMP: {e}"))?;
    let mut line = Vec::new();
    read_line(&mut reader, &mut line)?;
    if line.starts_with(b"ERR ") {
        return Err(String::from_utf8_lossy(&line).into_owned());
    }
    let mut keys: usize = 0;
    loop {
        if line == b"END" {
            break;
        }
        out.write_all(&line)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| format!("writing: {e}"))?;
        keys += 1;
        read_line(&mut reader, &mut line)?;
    }
    out.flush().map_err(|e| format!("writing: {e}"))?;
    Ok(keys.saturating_sub(1))
}

/// Reads a dump from `input` and PUTs every key; returns the number written.
pub fn load_from(addr: &str, input: &mut dyn BufRead, force: bool) -> Result<usize, String> {
    if !force {
        let mut existing = Vec::new();
        let keys = dump_to(addr, &mut existing)?;
        if keys > 0 {
            return Err(format!("the cluster at {addr} already holds {keys} keys; load needs an empty cluster (or --force)"));
        }
    }
    let (mut reader, mut writer) = connect(addr)?;
    let mut in_flight = 0usize;
    let mut written = 0usize;
    let mut reply = Vec::new();
    let mut text = String::new();
    let mut line_no = 0usize;
    loop {
        text.clear();
        let n = input.read_line(&mut text).map_err(|e| format!("reading the dump: {e}"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() || (line_no == 1 && trimmed.starts_with("{\"commit\"")) {
            continue;
        }
        let entry: DumpLine =
            serde_json::from_str(trimmed).map_err(|e| format!("dump line {line_no}: {e}"))?;
        if entry.value.contains(&b'\n') {
            return Err(format!("dump line {line_no}: value of '{}' holds a newline", entry.key));
        }
        let mut cmd = format!("PUT {} ", entry.key).into_bytes();
        cmd.extend_from_slice(&entry.value);
        cmd.push(b'\n');
        writer.write_all(&cmd).map_err(|e| format!("sending PUT: {e}"))?;
        in_flight += 1;
        if in_flight >= LOAD_WINDOW {
            writer.flush().map_err(|e| format!("sending PUT: {e}"))?;
            written += expect_ok(&mut reader, &mut reply, in_flight)?;
            in_flight = 0;
        }
    }
    writer.flush().map_err(|e| format!("sending PUT: {e}"))?;
    written += expect_ok(&mut reader, &mut reply, in_flight)?;
    Ok(written)
}

fn expect_ok(
    reader: &mut BufReader<TcpStream>,
    reply: &mut Vec<u8>,
    count: usize,
) -> Result<usize, String> {
    for _ in 0..count {
        read_line(reader, reply)?;
        if !reply.starts_with(b"OK ") {
            return Err(format!("a PUT failed: {}", String::from_utf8_lossy(reply)));
        }
    }
    Ok(count)
}
