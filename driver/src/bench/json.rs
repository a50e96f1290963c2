//! Just enough JSON to write `bench.json`: a value tree and a pretty printer.
//! The driver has no dependencies, and writing is all the bench needs.

use std::fmt::{self, Write};

/// A JSON value. Objects keep their insertion order.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`, also for a number that is not finite.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer, written exactly.
    Int(i64),
    /// A float, written with up to 3 decimals.
    Num(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An empty object, to fill with [`Json::set`].
    pub fn obj() -> Json {
        Json::Obj(Vec::new())
    }

    /// Appends `key: value` to an object (builder style).
    pub fn set(mut self, key: &str, value: impl Into<Json>) -> Json {
        match &mut self {
            Json::Obj(fields) => fields.push((key.to_string(), value.into())),
            other => panic!("set({key:?}) on a non-object {other:?}"),
        }
        self
    }

    fn write(&self, out: &mut String, indent: usize) -> fmt::Result {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}")?,
            Json::Int(i) => write!(out, "{i}")?,
            Json::Num(x) if !x.is_finite() => out.push_str("null"),
            Json::Num(x) if x.fract() == 0.0 && x.abs() < 1e15 => write!(out, "{x:.0}")?,
            Json::Num(x) => {
                let s = format!("{x:.3}");
                // Small values keep 3 decimals; "0.000" becomes "0", never "0.".
                out.push_str(s.trim_end_matches('0').trim_end_matches('.'));
            }
            Json::Str(s) => write_str(out, s)?,
            Json::Arr(items) if items.iter().all(Json::is_scalar) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, indent)?;
                }
                out.push(']');
            }
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    item.write(out, indent + 1)?;
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                write!(out, "{}]", pad(indent))?;
            }
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    write_str(out, k)?;
                    out.push_str(": ");
                    v.write(out, indent + 1)?;
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                write!(out, "{}}}", pad(indent))?;
            }
        }
        Ok(())
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Json::Arr(_) | Json::Obj(_))
    }
}

/// A JSON string literal with the escapes RFC 8259 requires.
fn write_str(out: &mut String, s: &str) -> fmt::Result {
    out.push_str(&crate::history::json_string(s));
    Ok(())
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write(&mut out, 0)?;
        f.write_str(&out)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}
impl From<i64> for Json {
    fn from(i: i64) -> Json {
        Json::Int(i)
    }
}
impl From<u64> for Json {
    fn from(u: u64) -> Json {
        i64::try_from(u).map_or(Json::Num(u as f64), Json::Int)
    }
}
impl From<usize> for Json {
    fn from(u: usize) -> Json {
        Json::from(u as u64)
    }
}
impl From<f64> for Json {
    fn from(x: f64) -> Json {
        Json::Num(x)
    }
}
impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::Str(s.to_string())
    }
}
impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::Str(s)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(o: Option<T>) -> Json {
        o.map_or(Json::Null, Into::into)
    }
}
impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Json {
        Json::Arr(v.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_values_with_escapes() {
        let j = Json::obj()
            .set("a", 1u64)
            .set("b", 2.5)
            .set("c", 3.0)
            .set("s", "q\"\n\u{1}")
            .set("n", Option::<u64>::None)
            .set("xs", vec![1u64, 2])
            .set("o", Json::obj())
            .set("inf", f64::INFINITY)
            .set("tiny", 0.0001);
        let text = j.to_string();
        let want = "{\n  \"a\": 1,\n  \"b\": 2.5,\n  \"c\": 3,\n  \"s\": \"q\\\"\\n\\u0001\",\n  \
                    \"n\": null,\n  \"xs\": [1, 2],\n  \"o\": {},\n  \"inf\": null,\n  \"tiny\": 0\n}";
        assert_eq!(text, want);
    }
}
