//! A small buffered reader for one connection: lines with a hard length cap
//! for clients and handshakes, then plain `Read` for peer frames.
//!
//! `std::io::BufReader` only refills an empty buffer, so it cannot wait for
//! "at least 8 bytes" without consuming them. The listener needs exactly that
//! to tell a peer handshake from a client command (DESIGN §2), and then hands
//! the same buffered bytes on to whoever owns the connection. Memory per
//! connection stays at [`INPUT_BUF_BYTES`]: an overlong line is discarded as it
//! streams past, never collected.

use std::io::{self, Read};

/// The read buffer of one connection, in bytes. Larger than the handshake
/// line, so a whole handshake fits without consuming it.
pub(crate) const INPUT_BUF_BYTES: usize = 16 * 1024;

/// How one [`Input::read_line`] call ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineEnd {
    /// A line is in `out`, without its `\n`.
    Line,
    /// The line was longer than the cap; this many bytes (without the `\n`)
    /// went by and were discarded. `out` is empty.
    TooLong(usize),
    /// The stream ended. Bytes of an unterminated last line are dropped.
    Eof,
}

/// A connection's read side with its buffer.
pub(crate) struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<R: Read> Input<R> {
    /// Wraps `inner` with an empty buffer.
    pub(crate) fn new(inner: R) -> Self {
        Input { inner, buf: vec![0; INPUT_BUF_BYTES].into_boxed_slice(), start: 0, end: 0 }
    }

    /// The underlying reader (to set timeouts on a socket).
    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read from the stream and not consumed yet.
    pub(crate) fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` available bytes as consumed.
    fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consume {n} beyond the available bytes");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes after the ones available, keeping those. Returns how
    /// many arrived (0 = end of stream). The buffer must not be full.
    pub(crate) fn fill_more(&mut self) -> io::Result<usize> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        assert!(self.end < self.buf.len(), "fill_more on a full buffer");
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one line into `out` (cleared first), without its `\n`. A line of
    /// more than `cap` bytes is discarded as it arrives (a final `\r` does not
    /// count, so `cap` bytes plus `\r\n` still fit) and reported as
    /// [`LineEnd::TooLong`]; the next call starts after its `\n`.
    pub(crate) fn read_line(&mut self, cap: usize, out: &mut Vec<u8>) -> io::Result<LineEnd> {
        out.clear();
        // Bytes of an overlong line dropped so far; `out` stays empty then.
        let mut discarded: Option<usize> = None;
        loop {
            if self.start == self.end && self.fill_more()? == 0 {
                return Ok(LineEnd::Eof);
            }
            let chunk = &self.buf[self.start..self.end];
            let newline = chunk.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(chunk.len());
            match discarded.as_mut() {
                Some(seen) => *seen += take,
                // One byte of slack for a `\r` that the parser will drop.
                None if out.len() + take > cap + 1 => {
                    discarded = Some(out.len() + take);
                    out.clear();
                }
                None => out.extend_from_slice(&chunk[..take]),
            }
            self.consume(take + usize::from(newline.is_some()));
            if newline.is_none() {
                continue;
            }
            if let Some(seen) = discarded {
                return Ok(LineEnd::TooLong(seen));
            }
            if out.len() > cap && out.last() != Some(&b'\r') {
                let seen = out.len();
                out.clear();
                return Ok(LineEnd::TooLong(seen));
            }
            return Ok(LineEnd::Line);
        }
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            // Large reads skip the buffer, as BufReader does.
            if out.len() >= self.buf.len() {
                return self.inner.read(out);
            }
            if self.fill_more()? == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Hands out at most `step` bytes per read, as a slow socket does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn lines(data: &[u8], cap: usize, step: usize) -> Vec<Result<Vec<u8>, usize>> {
        let mut input = Input::new(Trickle { data, step });
        let mut out = Vec::new();
        let mut got = Vec::new();
        loop {
            match input.read_line(cap, &mut out).unwrap() {
                LineEnd::Line => got.push(Ok(out.clone())),
                LineEnd::TooLong(n) => got.push(Err(n)),
                LineEnd::Eof => return got,
            }
        }
    }

    #[test]
    fn lines_split_on_newline_at_any_read_size() {
        let data = b"PUT a b\r\nGET a\n\nlast-unterminated";
        for step in [1, 2, 3, 7, 100] {
            let got = lines(data, 10, step);
            let want: Vec<Result<Vec<u8>, usize>> =
                vec![Ok(b"PUT a b\r".to_vec()), Ok(b"GET a".to_vec()), Ok(Vec::new())];
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn overlong_line_is_discarded_and_the_next_line_reads() {
        let mut data = vec![b'x'; 3 * INPUT_BUF_BYTES];
        data.extend_from_slice(b"\nok\n12345\n123456\n12345\r\n");
        for step in [1, 5, 4096, usize::MAX] {
            let got = lines(&data, 5, step);
            let want: Vec<Result<Vec<u8>, usize>> = vec![
                Err(3 * INPUT_BUF_BYTES),
                Ok(b"ok".to_vec()),
                Ok(b"12345".to_vec()),
                Err(6),
                Ok(b"12345\r".to_vec()),
            ];
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn read_serves_buffered_bytes_first() {
        let mut input = Input::new(Cursor::new(b"line\nrest of stream".to_vec()));
        let mut out = Vec::new();
        assert_eq!(input.read_line(100, &mut out).unwrap(), LineEnd::Line);
        let mut rest = String::new();
        input.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest of stream");
    }

    #[test]
    fn fill_more_keeps_unconsumed_bytes() {
        let mut input = Input::new(Trickle { data: b"QKVPEER 1", step: 3 });
        while input.available().len() < 8 {
            assert!(input.fill_more().unwrap() > 0);
        }
        assert!(input.available().starts_with(b"QKVPEER"));
    }
}
