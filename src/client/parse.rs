//! Line → [`Request`] (DESIGN §8). Pure; every bad line is a `ClientError`.
//!
//! The grammar, in the order the parser applies it:
//!
//! 1. A line longer than `line_bytes_max` is `ERR TOOLARGE line` (the
//!    transport checks this first; the parser checks again so it stands alone).
//! 2. One trailing `\r` is dropped, so `nc -C` and Windows clients work.
//! 3. The command word runs up to the first space. It is ASCII and
//!    case-insensitive; `add_update` and `read` are the original's names for
//!    `PUT` and `GET`.
//! 4. Words are separated by exactly one space. A key is the next word: 1 to
//!    `key_bytes_max` bytes of UTF-8 without tab, `\r` or NUL.
//! 5. A value is everything after the one space that follows the key (for
//!    CAS, the version), byte for byte. It may be empty (`PUT k `), hold
//!    spaces, tabs and invalid UTF-8, and is at most `value_bytes_max` bytes.
//!
//! Details in errors echo the client's bytes only escaped and truncated, so an
//! error reply is always one printable line whatever the input was.

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

/// How many bytes of the client's input an error detail quotes at most. Long
/// enough to recognise a typo, short enough to keep error lines readable.
const ECHO_BYTES_MAX: usize = 40;

/// The shape of a command's arguments, which decides how the rest of the
/// line is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Put,
    Get,
    GetV,
    Del,
    Cas,
    Status,
    Metrics,
    Dump,
    Help,
    Quit,
}

/// Every command word, with the name error details use for it. Aliases keep
/// their own (lowercase) name so the usage hint matches what the client typed.
const COMMANDS: [(&str, Command); 12] = [
    ("PUT", Command::Put),
    ("GET", Command::Get),
    ("GETV", Command::GetV),
    ("DEL", Command::Del),
    ("CAS", Command::Cas),
    ("STATUS", Command::Status),
    ("METRICS", Command::Metrics),
    ("DUMP", Command::Dump),
    ("HELP", Command::Help),
    ("QUIT", Command::Quit),
    ("add_update", Command::Put),
    ("read", Command::Get),
];

/// Parses one line (without its `\n`; a trailing `\r` is still there).
pub fn parse(line: &[u8], limits: &Limits) -> Result<Request, ClientError> {
    // The limit counts the command, not its line ending: `\r\n` and `\n`
    // clients get the same room (the transport counts the same way).
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limits.line_bytes_max {
        return Err(too_large("line", line.len(), limits.line_bytes_max, "--max-line-bytes"));
    }
    if line.is_empty() {
        return Err(bad("empty line (try HELP)"));
    }
    // The transport cuts lines at `\n`, so this only happens to a caller that
    // did not; a value holding a newline would break the reply framing.
    if line.contains(&b'\n') {
        return Err(bad("line contains a newline"));
    }
    let (word, rest) = split_word(line);
    let (name, command) = lookup(word)?;
    match command {
        Command::Status => no_args(name, rest).map(|()| Request::Status),
        Command::Metrics => no_args(name, rest).map(|()| Request::Metrics),
        Command::Dump => no_args(name, rest).map(|()| Request::Dump),
        Command::Help => no_args(name, rest).map(|()| Request::Help),
        Command::Quit => no_args(name, rest).map(|()| Request::Quit),
        Command::Get => one_key(name, rest, limits).map(|key| Request::Get { key }),
        Command::GetV => one_key(name, rest, limits).map(|key| Request::GetV { key }),
        Command::Del => one_key(name, rest, limits).map(|key| Request::Del { key }),
        Command::Put => put(name, rest, limits),
        Command::Cas => cas(name, rest, limits),
    }
}

/// Splits at the first space: the word before it and, if there was a space,
/// everything after it. `None` (no space) differs from `Some(b"")` (a trailing
/// space), which is what tells `PUT k` from `PUT k `.
fn split_word(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    }
}

/// Finds the command word, case-insensitively.
fn lookup(word: &[u8]) -> Result<(&'static str, Command), ClientError> {
    if word.is_empty() {
        return Err(bad("line starts with a space; send COMMAND args (try HELP)"));
    }
    COMMANDS
        .iter()
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(word))
        .copied()
        .ok_or_else(|| bad(&format!("unknown command '{}' (try HELP)", echo(word))))
}

/// STATUS, METRICS, HELP and QUIT take nothing, not even a trailing space.
fn no_args(name: &str, rest: Option<&[u8]>) -> Result<(), ClientError> {
    match rest {
        None => Ok(()),
        Some(b"") => Err(bad(&format!("{name} takes no arguments (remove the trailing space)"))),
        Some(_) => Err(bad(&format!("{name} takes no arguments"))),
    }
}

/// GET, GETV and DEL: exactly one key.
fn one_key(name: &str, rest: Option<&[u8]>, limits: &Limits) -> Result<String, ClientError> {
    let Some(rest) = rest else {
        return Err(bad(&format!("{name} needs a key: {name} key")));
    };
    let (key, extra) = split_word(rest);
    match extra {
        None => key_of(key, limits),
        Some(b"") => {
            Err(bad(&format!("{name} takes one key: {name} key (remove the trailing space)")))
        }
        Some(_) => Err(bad(&format!("{name} takes one key: {name} key"))),
    }
}

/// `PUT key value`: the value is the rest of the line and may be empty.
fn put(name: &str, rest: Option<&[u8]>, limits: &Limits) -> Result<Request, ClientError> {
    let usage = || {
        bad(&format!(
            "{name} needs a key and a value: {name} key value \
             (an empty value is '{name} key ' with a trailing space)"
        ))
    };
    let (key, value) = split_word(rest.ok_or_else(usage)?);
    let value = value.ok_or_else(usage)?;
    let key = key_of(key, limits)?;
    Ok(Request::Put { key, value: value_of(value, limits)? })
}

/// `CAS key version value`: like PUT, with a decimal version before the value.
fn cas(name: &str, rest: Option<&[u8]>, limits: &Limits) -> Result<Request, ClientError> {
    let usage = || {
        bad(&format!(
            "{name} needs a key, a version and a value: {name} key version value \
             (version 0 = only if the key does not exist)"
        ))
    };
    let (key, rest) = split_word(rest.ok_or_else(usage)?);
    let (version, value) = split_word(rest.ok_or_else(usage)?);
    let value = value.ok_or_else(usage)?;
    let key = key_of(key, limits)?;
    let version = version_of(version)?;
    Ok(Request::Cas { key, version, value: value_of(value, limits)? })
}

/// Checks one key word against DESIGN §8.
fn key_of(key: &[u8], limits: &Limits) -> Result<String, ClientError> {
    if key.is_empty() {
        return Err(bad("empty key (words are separated by exactly one space)"));
    }
    if key.len() > limits.key_bytes_max {
        return Err(too_large("key", key.len(), limits.key_bytes_max, "--max-key-bytes"));
    }
    let Ok(key) = std::str::from_utf8(key) else {
        return Err(bad("key is not valid UTF-8"));
    };
    // Spaces cannot reach here: `split_word` ends the key at the first one.
    for (byte, what) in [('\t', "a tab"), ('\r', "a carriage return"), ('\0', "a NUL byte")] {
        if key.contains(byte) {
            return Err(bad(&format!("key contains {what}")));
        }
    }
    Ok(key.to_owned())
}

/// Checks a value's size; its bytes are otherwise free.
fn value_of(value: &[u8], limits: &Limits) -> Result<Vec<u8>, ClientError> {
    if value.len() > limits.value_bytes_max {
        return Err(too_large("value", value.len(), limits.value_bytes_max, "--max-value-bytes"));
    }
    Ok(value.to_vec())
}

/// A version is plain decimal digits: no sign, no spaces, fits in a u64.
fn version_of(word: &[u8]) -> Result<u64, ClientError> {
    let not_a_number = || bad(&format!("version '{}' is not a number", echo(word)));
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return Err(not_a_number());
    }
    let digits = std::str::from_utf8(word).map_err(|_| not_a_number())?;
    digits
        .parse::<u64>()
        .map_err(|_| bad(&format!("version '{}' is too large (at most {})", echo(word), u64::MAX)))
}

/// Quotes client bytes inside an error detail: escaped to printable ASCII
/// (so no newline or control byte can split the reply) and truncated.
fn echo(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(ECHO_BYTES_MAX)];
    let mut text = shown.escape_ascii().to_string();
    if shown.len() < bytes.len() {
        text.push_str("...");
    }
    text
}

fn bad(detail: &str) -> ClientError {
    ClientError::BadCmd(detail.to_owned())
}

fn too_large(what: &str, size: usize, limit: usize, flag: &str) -> ClientError {
    ClientError::TooLarge { what: what.into(), size, limit, flag: flag.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Reply;

    fn put(key: &str, value: &[u8]) -> Request {
        Request::Put { key: key.into(), value: value.to_vec() }
    }

    fn get(key: &str) -> Request {
        Request::Get { key: key.into() }
    }

    fn cas(key: &str, version: u64, value: &[u8]) -> Request {
        Request::Cas { key: key.into(), version, value: value.to_vec() }
    }

    /// The reply bytes a parse error turns into.
    fn encoded(e: ClientError) -> String {
        let mut out = Vec::new();
        Reply::Error(e).encode(&mut out);
        String::from_utf8(out).expect("error replies are UTF-8")
    }

    #[test]
    fn good_lines_parse_to_their_requests() {
        let cases: Vec<(&[u8], Request)> = vec![
            (b"PUT a 1", put("a", b"1")),
            (b"PUT a 1\r", put("a", b"1")),
            (b"PUT a \r", put("a", b"")),
            (b"PUT a ", put("a", b"")),
            (b"PUT a 1\r\r", put("a", b"1\r")),
            (b"PUT a hello big  world\t!", put("a", b"hello big  world\t!")),
            (b"PUT a  leading", put("a", b" leading")),
            (b"PUT a trailing ", put("a", b"trailing ")),
            (b"PUT a \xff\xfe\x00\x01", put("a", b"\xff\xfe\x00\x01")),
            (b"put a 1", put("a", b"1")),
            (b"pUt a 1", put("a", b"1")),
            (b"PUT K\xc3\xa9y v", put("K\u{e9}y", b"v")),
            (b"PUT a:b/c{}=1 x", put("a:b/c{}=1", b"x")),
            (b"add_update a 1", put("a", b"1")),
            (b"ADD_UPDATE a some value", put("a", b"some value")),
            (b"GET a", get("a")),
            (b"get a\r", get("a")),
            (b"read a", get("a")),
            (b"READ a", get("a")),
            (b"GETV a", Request::GetV { key: "a".into() }),
            (b"getv a", Request::GetV { key: "a".into() }),
            (b"DEL a", Request::Del { key: "a".into() }),
            (b"Del a\r", Request::Del { key: "a".into() }),
            (b"CAS a 0 new", cas("a", 0, b"new")),
            (b"cas a 17 two words", cas("a", 17, b"two words")),
            (b"CAS a 3 ", cas("a", 3, b"")),
            (b"CAS a 18446744073709551615 v", cas("a", u64::MAX, b"v")),
            (b"CAS a 007 v", cas("a", 7, b"v")),
            (b"STATUS", Request::Status),
            (b"status\r", Request::Status),
            (b"METRICS", Request::Metrics),
            (b"metrics", Request::Metrics),
            (b"HELP", Request::Help),
            (b"Help\r", Request::Help),
            (b"QUIT", Request::Quit),
            (b"quit", Request::Quit),
        ];
        for (line, want) in cases {
            let got = parse(line, &Limits::default());
            assert_eq!(got, Ok(want), "line {:?}", line.escape_ascii().to_string());
        }
    }

    #[test]
    fn bad_lines_get_the_right_error_code_and_a_helpful_detail() {
        // (line, code, words the detail must contain)
        let cases: Vec<(&[u8], &str, &str)> = vec![
            (b"", "BADCMD", "empty line"),
            (b"\r", "BADCMD", "empty line"),
            (b"FOO a", "BADCMD", "unknown command 'FOO' (try HELP)"),
            (b"PUTT a 1", "BADCMD", "unknown command 'PUTT'"),
            (b" GET a", "BADCMD", "starts with a space"),
            (b"\xff\xfe a", "BADCMD", "unknown command '\\xff\\xfe'"),
            (b"GE\x00T a", "BADCMD", "unknown command 'GE\\x00T'"),
            (b"G\xc3\x89T a", "BADCMD", "unknown command"),
            (b"PUT", "BADCMD", "PUT needs a key and a value: PUT key value"),
            (b"PUT a", "BADCMD", "PUT needs a key and a value"),
            (b"PUT a\r", "BADCMD", "PUT needs a key and a value"),
            (b"add_update a", "BADCMD", "add_update needs a key and a value"),
            (b"PUT  a 1", "BADCMD", "empty key"),
            (b"PUT a\tb 1", "BADCMD", "key contains a tab"),
            (b"PUT a\rb 1", "BADCMD", "key contains a carriage return"),
            (b"PUT a\x00 1", "BADCMD", "key contains a NUL byte"),
            (b"PUT \xff 1", "BADCMD", "key is not valid UTF-8"),
            (b"GET", "BADCMD", "GET needs a key: GET key"),
            (b"GET ", "BADCMD", "empty key"),
            (b"GET a b", "BADCMD", "GET takes one key"),
            (b"GET a ", "BADCMD", "trailing space"),
            (b"read a b", "BADCMD", "read takes one key"),
            (b"GET a\r\r", "BADCMD", "key contains a carriage return"),
            (b"GETV a b", "BADCMD", "GETV takes one key"),
            (b"DEL", "BADCMD", "DEL needs a key"),
            (b"DEL a b", "BADCMD", "DEL takes one key"),
            (b"STATUS now", "BADCMD", "STATUS takes no arguments"),
            (b"STATUS ", "BADCMD", "STATUS takes no arguments (remove the trailing space)"),
            (b"HELP me", "BADCMD", "HELP takes no arguments"),
            (b"QUIT now", "BADCMD", "QUIT takes no arguments"),
            (b"METRICS all", "BADCMD", "METRICS takes no arguments"),
            (b"CAS a 1", "BADCMD", "CAS needs a key, a version and a value"),
            (b"CAS a", "BADCMD", "CAS needs a key, a version and a value"),
            (b"CAS a x v", "BADCMD", "version 'x' is not a number"),
            (b"CAS a -1 v", "BADCMD", "version '-1' is not a number"),
            (b"CAS a +1 v", "BADCMD", "version '+1' is not a number"),
            (b"CAS a  v", "BADCMD", "version '' is not a number"),
            (b"CAS a 18446744073709551616 v", "BADCMD", "is too large"),
            (b"PUT a b\nc", "BADCMD", "newline"),
            (b"\n", "BADCMD", "newline"),
        ];
        assert!(cases.len() >= 20);
        for (line, code, detail) in cases {
            let shown = line.escape_ascii().to_string();
            let err = parse(line, &Limits::default()).expect_err(&shown);
            assert_eq!(err.code(), code, "line {shown:?}: {err}");
            let text = encoded(err);
            assert!(text.contains(detail), "line {shown:?}: {text:?} lacks {detail:?}");
        }
    }

    #[test]
    fn keys_and_values_at_their_limit_pass_and_one_byte_over_is_too_large() {
        let limits = Limits { line_bytes_max: 1000, key_bytes_max: 8, value_bytes_max: 16 };
        let key_max = "k".repeat(8);
        let key_over = "k".repeat(9);
        let value_max = vec![b'v'; 16];
        let value_over = vec![b'v'; 17];
        let line = |key: &str, value: &[u8]| [format!("PUT {key} ").as_bytes(), value].concat();

        assert_eq!(parse(&line(&key_max, &value_max), &limits), Ok(put(&key_max, &value_max)));
        assert_eq!(parse(format!("GET {key_max}").as_bytes(), &limits), Ok(get(&key_max)));

        let err = parse(&line(&key_over, b"v"), &limits).unwrap_err();
        assert_eq!(encoded(err), "ERR TOOLARGE key 9 > 8 (--max-key-bytes)\n");
        let err = parse(format!("DEL {key_over}").as_bytes(), &limits).unwrap_err();
        assert_eq!(encoded(err), "ERR TOOLARGE key 9 > 8 (--max-key-bytes)\n");

        let err = parse(&line("k", &value_over), &limits).unwrap_err();
        assert_eq!(encoded(err), "ERR TOOLARGE value 17 > 16 (--max-value-bytes)\n");
        let cas_over = [b"CAS k 1 ".as_slice(), &value_over].concat();
        let err = parse(&cas_over, &limits).unwrap_err();
        assert_eq!(encoded(err), "ERR TOOLARGE value 17 > 16 (--max-value-bytes)\n");

        // A CRLF line's `\r` is not part of the value, so it does not count.
        let crlf = [line("k", &value_max), b"\r".to_vec()].concat();
        assert_eq!(parse(&crlf, &limits), Ok(put("k", &value_max)));
    }

    #[test]
    fn lines_over_the_line_limit_are_too_large() {
        let limits = Limits { line_bytes_max: 10, key_bytes_max: 8, value_bytes_max: 16 };
        assert_eq!(parse(b"PUT k 1234", &limits), Ok(put("k", b"1234")));
        let err = parse(b"PUT k 12345", &limits).unwrap_err();
        assert_eq!(encoded(err), "ERR TOOLARGE line 11 > 10 (--max-line-bytes)\n");
    }

    #[test]
    fn long_garbage_is_echoed_truncated_and_escaped() {
        let mut line = vec![b'X'; 500];
        line.extend_from_slice(b"\t\x1b[31m a");
        let text = encoded(parse(&line, &Limits::default()).unwrap_err());
        assert!(text.starts_with("ERR BADCMD unknown command 'XXXX"), "{text}");
        assert!(text.len() < 120, "{text}");
        let text = encoded(parse(b"\x1b[2J\t a", &Limits::default()).unwrap_err());
        assert_eq!(text, "ERR BADCMD unknown command '\\x1b[2J\\t' (try HELP)\n");
    }

    /// A deterministic xorshift64* generator: the fuzz test must replay
    /// exactly, and the crate's RNG is not needed for that.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Bytes that matter to the grammar come up far more often than chance.
        /// `\n` stays rare: the parser rejects it before anything else.
        fn byte(&mut self) -> u8 {
            const SPICY: &[u8] = b"   \r\t\0\xff\xc3\xa90197azAZ_";
            if self.below(3) == 0 {
                self.next() as u8
            } else {
                SPICY[self.below(SPICY.len())]
            }
        }
    }

    /// The line a request parses from; the fuzz test checks the round trip.
    fn unparse(request: &Request) -> Vec<u8> {
        let mut line = unparse_words(request);
        // A value ending in `\r` needs one more, which the parser drops.
        if line.ends_with(b"\r") {
            line.push(b'\r');
        }
        line
    }

    fn unparse_words(request: &Request) -> Vec<u8> {
        match request {
            Request::Put { key, value } => [format!("PUT {key} ").as_bytes(), value].concat(),
            Request::Get { key } => format!("GET {key}").into_bytes(),
            Request::GetV { key } => format!("GETV {key}").into_bytes(),
            Request::Del { key } => format!("DEL {key}").into_bytes(),
            Request::Cas { key, version, value } => {
                [format!("CAS {key} {version} ").as_bytes(), value].concat()
            }
            Request::Status => b"STATUS".to_vec(),
            Request::Metrics => b"METRICS".to_vec(),
            Request::Dump => b"DUMP".to_vec(),
            Request::Help => b"HELP".to_vec(),
            Request::Quit => b"QUIT".to_vec(),
        }
    }

    fn fuzz_line(rng: &mut XorShift, out: &mut Vec<u8>) {
        const SEEDS: &[&[u8]] = &[
            b"PUT key value",
            b"put k some spaced value",
            b"GET key",
            b"read k",
            b"add_update k v",
            b"GETV key",
            b"DEL key",
            b"CAS key 12 value",
            b"cas k 0 ",
            b"STATUS",
            b"METRICS",
            b"HELP",
            b"QUIT\r",
        ];
        out.clear();
        if rng.below(4) == 0 {
            // Pure noise of any length up to a little over the fuzz limits.
            for _ in 0..rng.below(48) {
                out.push(rng.byte());
            }
            return;
        }
        out.extend_from_slice(SEEDS[rng.below(SEEDS.len())]);
        for _ in 0..rng.below(4) {
            let at = rng.below(out.len() + 1);
            match rng.below(5) {
                0 => out.insert(at, rng.byte()),
                1 if at < out.len() => out[at] = rng.byte(),
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => out.truncate(at),
                _ => {
                    let byte = rng.byte();
                    out.extend(std::iter::repeat_n(byte, rng.below(20)));
                }
            }
        }
    }

    /// How many lines the fuzz test feeds; `PARSE_FUZZ_LINES` overrides.
    /// A million take about a second in a debug build.
    fn fuzz_lines() -> usize {
        let default = 1_000_000;
        std::env::var("PARSE_FUZZ_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    #[test]
    fn fuzzed_lines_never_panic_and_every_error_is_one_err_line() {
        // Small limits, so generated lines cross them often.
        let limits = Limits { line_bytes_max: 40, key_bytes_max: 6, value_bytes_max: 12 };
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut line, mut reply) = (Vec::new(), Vec::new());
        let (mut oks, mut errs) = (0usize, 0usize);
        for i in 0..fuzz_lines() {
            fuzz_line(&mut rng, &mut line);
            let shown = || format!("line #{i} {:?}", line.escape_ascii().to_string());
            match parse(&line, &limits) {
                Ok(request) => {
                    oks += 1;
                    assert_eq!(parse(&unparse(&request), &limits), Ok(request), "{}", shown());
                }
                Err(e) => {
                    errs += 1;
                    reply.clear();
                    Reply::Error(e).encode(&mut reply);
                    assert!(reply.starts_with(b"ERR "), "{}", shown());
                    let newlines = reply.iter().filter(|&&b| b == b'\n').count();
                    assert!(newlines == 1 && reply.ends_with(b"\n"), "{}", shown());
                }
            }
        }
        // Both paths must see real traffic, or the generator has gone stale.
        assert!(oks * 20 > oks + errs, "only {oks} of {} lines parsed", oks + errs);
        assert!(errs * 20 > oks + errs, "only {errs} of {} lines failed", oks + errs);
    }
}
