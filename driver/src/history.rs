//! What a nemesis run records: every client operation with its call and
//! return time, the replica it went to and the raw reply, and every fault
//! window. Turns replies into [`check::Outcome`]s and writes JSON lines by
//! hand (the driver has no serde), one object per line.

use crate::check::{self, Event, Op, Outcome, Ret};
use std::fmt::Write as _;

/// One client operation as sent and answered.
#[derive(Clone, Debug)]
pub struct Record {
    /// The operation, for the checker.
    pub event: Event,
    /// The replica the client sent it to.
    pub replica: usize,
    /// The reply line, or the client-side error (`io: ...`).
    pub reply: String,
}

/// One injected fault, from when it took effect to when it was undone.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    /// `kill`, `stop`, `partition`, `restart` or `wipe`.
    pub kind: String,
    /// The replicas it hit.
    pub targets: Vec<usize>,
    /// A short label for plots and logs, e.g. `partition 2|1,3`.
    pub label: String,
    /// When it took effect, µs since the run began.
    pub start_us: u64,
    /// When it was undone, µs since the run began (`None`: never).
    pub end_us: Option<u64>,
}

/// Classifies a reply to `op` (DESIGN §4.6, §8): a definite result, a
/// definite failure (`ERR NOQUORUM`, `ERR NOLEADER`, `ERR BUSY`: the write was
/// applied nowhere), or unknown (`ERR TIMEOUT`, any other error, an IO error).
/// The second value is `false` for a reply that does not fit the protocol.
pub fn outcome_of(op: &Op, reply: Result<&str, &str>) -> (Outcome, bool) {
    let Ok(line) = reply else {
        return (Outcome::Unknown, true);
    };
    if let Some(err) = line.strip_prefix("ERR ") {
        let code = err.split(' ').next().unwrap_or("");
        return match (code, op) {
            ("CONFLICT", Op::Cas { .. }) => match err["CONFLICT".len()..].trim().parse() {
                Ok(current) => (Outcome::Ok(Ret::Conflict(current)), true),
                Err(_) => (Outcome::Unknown, false),
            },
            ("NOQUORUM" | "NOLEADER" | "BUSY", _) => (Outcome::Fail, true),
            _ => (Outcome::Unknown, true),
        };
    }
    let parsed = match op {
        Op::Put { .. } | Op::Del | Op::Cas { .. } => {
            line.strip_prefix("OK ").and_then(|n| n.parse().ok()).map(Ret::Written)
        }
        Op::Get => match line {
            "NOTFOUND" => Some(Ret::Value(None)),
            _ => line.strip_prefix("VALUE ").map(|v| Ret::Value(Some(v.to_string()))),
        },
        Op::GetV => match line {
            "NOTFOUND" => Some(Ret::Versioned(None)),
            _ => line.strip_prefix("VERSION ").and_then(|rest| {
                let (n, v) = rest.split_once(' ')?;
                Some(Ret::Versioned(Some((n.parse().ok()?, v.to_string()))))
            }),
        },
    };
    match parsed {
        Some(ret) => (Outcome::Ok(ret), true),
        None => (Outcome::Unknown, false),
    }
}

/// The protocol line that sends `op` on `key`.
pub fn command(key: &str, op: &Op) -> String {
    match op {
        Op::Put { value } => format!("PUT {key} {value}"),
        Op::Del => format!("DEL {key}"),
        Op::Get => format!("GET {key}"),
        Op::GetV => format!("GETV {key}"),
        Op::Cas { expected, value } => format!("CAS {key} {expected} {value}"),
    }
}

/// `"ok"`, `"fail"` or `"unknown"`.
pub fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok(_) => "ok",
        Outcome::Fail => "fail",
        Outcome::Unknown => "unknown",
    }
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Milliseconds with µs precision, as JSON.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// One record as a JSON object on one line.
pub fn record_json(r: &Record) -> String {
    let e = &r.event;
    let (op, value, expected) = match &e.op {
        Op::Put { value } => ("put", Some(value.as_str()), None),
        Op::Del => ("del", None, None),
        Op::Get => ("get", None, None),
        Op::GetV => ("getv", None, None),
        Op::Cas { expected, value } => ("cas", Some(value.as_str()), Some(*expected)),
    };
    let mut line = format!(
        "{{\"id\":{},\"client\":{},\"replica\":{},\"key\":{},\"op\":\"{op}\"",
        e.id,
        e.client,
        r.replica,
        json_string(&e.key)
    );
    if let Some(v) = value {
        let _ = write!(line, ",\"value\":{}", json_string(v));
    }
    if let Some(x) = expected {
        let _ = write!(line, ",\"expected\":{x}");
    }
    let _ = write!(
        line,
        ",\"call_ms\":{},\"ret_ms\":{},\"outcome\":\"{}\",\"reply\":{}}}",
        ms(e.call_us),
        ms(e.ret_us),
        outcome_name(&e.outcome),
        json_string(&r.reply)
    );
    line
}

/// One fault window as a JSON object on one line.
pub fn fault_json(f: &FaultWindow) -> String {
    let targets: Vec<String> = f.targets.iter().map(usize::to_string).collect();
    format!(
        "{{\"kind\":\"{}\",\"targets\":[{}],\"label\":{},\"start_ms\":{},\"end_ms\":{}}}",
        f.kind,
        targets.join(","),
        json_string(&f.label),
        ms(f.start_us),
        f.end_us.map(ms).unwrap_or_else(|| "null".to_string())
    )
}

/// The events of `records`, for [`check::check`].
pub fn events(records: &[Record]) -> Vec<check::Event> {
    records.iter().map(|r| r.event.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_classify_per_design() {
        let put = Op::Put { value: "v".into() };
        assert_eq!(outcome_of(&put, Ok("OK 7")), (Outcome::Ok(Ret::Written(7)), true));
        assert_eq!(outcome_of(&put, Ok("ERR NOQUORUM 1/2 down=2,3")), (Outcome::Fail, true));
        assert_eq!(outcome_of(&put, Ok("ERR NOLEADER none")), (Outcome::Fail, true));
        assert_eq!(outcome_of(&put, Ok("ERR TIMEOUT lost leader")), (Outcome::Unknown, true));
        assert_eq!(outcome_of(&put, Err("read: closed")), (Outcome::Unknown, true));
        assert_eq!(outcome_of(&put, Ok("VALUE x")), (Outcome::Unknown, false));
        let cas = Op::Cas { expected: 3, value: "v".into() };
        assert_eq!(outcome_of(&cas, Ok("ERR CONFLICT 9")), (Outcome::Ok(Ret::Conflict(9)), true));
        assert_eq!(
            outcome_of(&Op::Get, Ok("VALUE a b")),
            (Outcome::Ok(Ret::Value(Some("a b".into()))), true)
        );
        assert_eq!(outcome_of(&Op::Get, Ok("NOTFOUND")), (Outcome::Ok(Ret::Value(None)), true));
        let v = outcome_of(&Op::GetV, Ok("VERSION 4 a b"));
        assert_eq!(v, (Outcome::Ok(Ret::Versioned(Some((4, "a b".into())))), true));
    }

    #[test]
    fn json_lines_escape_and_carry_every_field() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let r = Record {
            event: Event {
                id: 3,
                client: 1,
                key: "k".into(),
                op: Op::Cas { expected: 2, value: "v".into() },
                call_us: 1500,
                ret_us: 2750,
                outcome: Outcome::Ok(Ret::Written(5)),
            },
            replica: 2,
            reply: "OK 5".into(),
        };
        assert_eq!(
            record_json(&r),
            "{\"id\":3,\"client\":1,\"replica\":2,\"key\":\"k\",\"op\":\"cas\",\"value\":\"v\",\"expected\":2,\"call_ms\":1.500,\"ret_ms\":2.750,\"outcome\":\"ok\",\"reply\":\"OK 5\"}"
        );
    }
}
