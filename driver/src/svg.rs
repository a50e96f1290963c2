//! A hand-written SVG of a nemesis run: every operation as a dot at (time
//! it was called, latency) on a log scale, coloured by outcome, over shaded
//! bands for the fault windows with their labels. No crates: SVG is text.

use crate::check::Outcome;
use crate::history::{FaultWindow, Record};
use std::fmt::Write as _;

/// Canvas size and plot margins, in px; a long run gets a wider canvas
/// (`WIDTH_PX_PER_S` per second, up to `WIDTH_MAX`).
const WIDTH_MIN: f64 = 1400.0;
const WIDTH_MAX: f64 = 6000.0;
const WIDTH_PX_PER_S: f64 = 15.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;

/// The latency axis spans 0.1 ms to this many ms (log scale), at least.
const LATENCY_MS_MIN: f64 = 0.1;
const LATENCY_MS_MAX_FLOOR: f64 = 1000.0;

/// At most this many successful operations are drawn; beyond it they are
/// thinned evenly, so a long run's SVG stays a few MB.
const OK_DOTS_MAX: usize = 60_000;

/// Rows of fault labels, so overlapping windows stay readable.
const LABEL_ROWS: usize = 4;

/// Colour of a dot by outcome.
fn outcome_colour(o: &Outcome) -> &'static str {
    match o {
        Outcome::Ok(_) => "#2a9d8f",
        Outcome::Fail => "#e76f51",
        Outcome::Unknown => "#7b2cbf",
    }
}

/// Colour of a fault band by kind.
fn fault_colour(kind: &str) -> &'static str {
    match kind {
        "kill" => "#e63946",
        "stop" => "#f4a261",
        "partition" => "#457b9d",
        "restart" => "#6d6875",
        "wipe" => "#9d0208",
        _ => "#adb5bd",
    }
}

/// XML-escapes text content.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The plot area and its scales.
struct Frame {
    /// The run's length, in ms (the x axis spans 0..end_ms).
    end_ms: f64,
    /// The latency axis spans LATENCY_MS_MIN..lat_max_ms (log scale).
    lat_max_ms: f64,
    /// Canvas width, in px.
    width: f64,
    /// Plot width and height, in px.
    pw: f64,
    ph: f64,
}

impl Frame {
    fn new(records: &[Record], end_us: u64) -> Frame {
        let end_ms = (end_us as f64 / 1000.0).max(1.0);
        let lat_max_ms = records.iter().map(latency_ms).fold(LATENCY_MS_MAX_FLOOR, f64::max);
        let width = (end_ms / 1000.0 * WIDTH_PX_PER_S).clamp(WIDTH_MIN, WIDTH_MAX);
        Frame { end_ms, lat_max_ms, width, pw: width - LEFT - RIGHT, ph: HEIGHT - TOP - BOTTOM }
    }

    /// x of a time in ms.
    fn x(&self, ms: f64) -> f64 {
        LEFT + self.pw * (ms / self.end_ms).clamp(0.0, 1.0)
    }

    /// y of a latency in ms.
    fn y(&self, lat_ms: f64) -> f64 {
        let (lo, hi) = (LATENCY_MS_MIN.log10(), self.lat_max_ms.log10());
        let l = lat_ms.max(LATENCY_MS_MIN).log10();
        TOP + self.ph * (1.0 - (l - lo) / (hi - lo))
    }
}

/// An operation's latency in ms (for an unknown outcome: until the client
/// gave up).
fn latency_ms(r: &Record) -> f64 {
    r.event.ret_us.saturating_sub(r.event.call_us) as f64 / 1000.0
}

/// Renders the plot. `title` heads it; `end_us` is the run's length.
pub fn render(title: &str, records: &[Record], faults: &[FaultWindow], end_us: u64) -> String {
    let f = Frame::new(records, end_us);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{HEIGHT}" viewBox="0 0 {w} {HEIGHT}" font-family="sans-serif" font-size="11">"#,
        w = f.width
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#, esc(title));
    bands(&mut s, &f, faults, end_us);
    axes(&mut s, &f);
    let ok_every = dots(&mut s, &f, records);
    legend(&mut s, ok_every);
    s.push_str("</svg>\n");
    s
}

/// Fault windows as shaded bands with labels (drawn first, under the dots).
fn bands(s: &mut String, f: &Frame, faults: &[FaultWindow], end_us: u64) {
    for (i, w) in faults.iter().enumerate() {
        let x0 = f.x(w.start_us as f64 / 1000.0);
        let x1 = f.x(w.end_us.unwrap_or(end_us) as f64 / 1000.0).max(x0 + 1.0);
        let colour = fault_colour(&w.kind);
        let row = (i % LABEL_ROWS) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{}" fill="{colour}" fill-opacity="0.15"><title>{}</title></rect>"#,
            x1 - x0,
            f.ph,
            esc(&w.label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            x0 + 2.0,
            TOP + 12.0 + row * 12.0,
            esc(&w.label)
        );
    }
}

/// Axes, time ticks (a round step, about one per 90 px) and latency decades.
fn axes(s: &mut String, f: &Frame) {
    let (bottom, right) = (TOP + f.ph, LEFT + f.pw);
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{bottom:.1}" x2="{right:.1}" y2="{bottom:.1}" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom:.1}" stroke="black"/>"#
    );
    let step_s = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|st| f.end_ms / 1000.0 / st <= f.pw / 90.0)
        .unwrap_or(600.0);
    let mut t = 0.0;
    while t * 1000.0 <= f.end_ms {
        let xt = f.x(t * 1000.0);
        let _ = writeln!(
            s,
            r#"<line x1="{xt:.1}" y1="{bottom:.1}" x2="{xt:.1}" y2="{:.1}" stroke="black"/><text x="{xt:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"#,
            bottom + 5.0,
            bottom + 18.0
        );
        t += step_s;
    }
    let mut decade = LATENCY_MS_MIN;
    while decade <= f.lat_max_ms * 1.0001 {
        let yt = f.y(decade);
        let label = if decade < 1.0 { format!("{decade}ms") } else { format!("{decade:.0}ms") };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yt:.1}" x2="{right:.1}" y2="{yt:.1}" stroke="#dee2e6"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT - 5.0,
            yt + 4.0
        );
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (call)</text>"#,
        LEFT + f.pw / 2.0,
        HEIGHT - 35.0
    );
    let mid = TOP + f.ph / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="15" y="{mid:.1}" transform="rotate(-90 15 {mid:.1})" text-anchor="middle">latency (log)</text>"#
    );
}

/// One dot per operation, one group per outcome so the file stays small.
/// Successful operations are thinned to every k-th beyond OK_DOTS_MAX;
/// failures and unknowns are always all drawn (they are what one looks
/// for). Returns k.
fn dots(s: &mut String, f: &Frame, records: &[Record]) -> usize {
    let ok_count = records.iter().filter(|r| matches!(r.event.outcome, Outcome::Ok(_))).count();
    let ok_every = ok_count.div_ceil(OK_DOTS_MAX).max(1);
    for (name, colour) in [("ok", "#2a9d8f"), ("fail", "#e76f51"), ("unknown", "#7b2cbf")] {
        let _ = writeln!(s, r#"<g fill="{colour}" fill-opacity="0.6">"#);
        let every = if name == "ok" { ok_every } else { 1 };
        let shown = records.iter().filter(|r| outcome_colour(&r.event.outcome) == colour);
        for r in shown.step_by(every) {
            let (cx, cy) = (f.x(r.event.call_us as f64 / 1000.0), f.y(latency_ms(r)));
            let _ = writeln!(s, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="1.6"/>"#);
        }
        let _ = writeln!(s, "</g><!-- {name} -->");
    }
    ok_every
}

/// Outcome colours and fault kinds, along the bottom.
fn legend(s: &mut String, ok_every: usize) {
    let ly = HEIGHT - 12.0;
    let mut lx = LEFT;
    let ok_label = if ok_every > 1 { format!("ok (1 in {ok_every} shown)") } else { "ok".into() };
    for (name, colour) in
        [(ok_label.as_str(), "#2a9d8f"), ("fail (not applied)", "#e76f51"), ("unknown", "#7b2cbf")]
    {
        let _ = writeln!(
            s,
            r#"<circle cx="{lx:.1}" cy="{:.1}" r="4" fill="{colour}"/><text x="{:.1}" y="{ly:.1}">{name}</text>"#,
            ly - 4.0,
            lx + 8.0
        );
        lx += 140.0;
    }
    for kind in ["kill", "stop", "partition", "restart", "wipe"] {
        let colour = fault_colour(kind);
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="10" fill="{colour}" fill-opacity="0.3"/><text x="{:.1}" y="{ly:.1}">{kind}</text>"#,
            ly - 9.0,
            lx + 16.0
        );
        lx += 90.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Event, Op, Ret};

    #[test]
    fn renders_dots_bands_and_labels() {
        let rec = |id: u64, outcome| Record {
            event: Event {
                id,
                client: 0,
                key: "k".into(),
                op: Op::Get,
                call_us: id * 1000,
                ret_us: id * 1000 + 500,
                outcome,
            },
            replica: 1,
            reply: String::new(),
        };
        let records = vec![
            rec(1, Outcome::Ok(Ret::Value(None))),
            rec(2, Outcome::Fail),
            rec(3, Outcome::Unknown),
        ];
        let faults = vec![FaultWindow {
            kind: "partition".into(),
            targets: vec![2],
            label: "partition 2|1,3 <both>".into(),
            start_us: 1000,
            end_us: Some(2000),
        }];
        let svg = render("seed 1", &records, &faults, 4000);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 3 + 3, "3 ops and 3 legend dots");
        assert!(svg.contains("partition 2|1,3 &lt;both&gt;"));
    }
}
