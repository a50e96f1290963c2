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

/// Renders the plot. `title` heads it; `end_us` is the run's length.
pub fn render(title: &str, records: &[Record], faults: &[FaultWindow], end_us: u64) -> String {
    let end_ms = (end_us as f64 / 1000.0).max(1.0);
    let lat_max = records
        .iter()
        .map(|r| r.event.ret_us.saturating_sub(r.event.call_us) as f64 / 1000.0)
        .fold(LATENCY_MS_MAX_FLOOR, f64::max);
    let width = (end_ms / 1000.0 * WIDTH_PX_PER_S).clamp(WIDTH_MIN, WIDTH_MAX);
    let (pw, ph) = (width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |ms: f64| LEFT + pw * (ms / end_ms).clamp(0.0, 1.0);
    let (lmin, lmax) = (LATENCY_MS_MIN.log10(), lat_max.log10());
    let y = |lat_ms: f64| {
        let l = lat_ms.max(LATENCY_MS_MIN).log10();
        TOP + ph * (1.0 - (l - lmin) / (lmax - lmin))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#, esc(title));

    // Fault bands first, under the dots.
    for (i, f) in faults.iter().enumerate() {
        let x0 = x(f.start_us as f64 / 1000.0);
        let x1 = x(f.end_us.unwrap_or(end_us) as f64 / 1000.0).max(x0 + 1.0);
        let colour = fault_colour(&f.kind);
        let row = (i % LABEL_ROWS) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="{colour}" fill-opacity="0.15"><title>{}</title></rect>"#,
            x1 - x0,
            esc(&f.label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            x0 + 2.0,
            TOP + 12.0 + row * 12.0,
            esc(&f.label)
        );
    }

    // Axes, ticks and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/>"#,
        TOP + ph
    );
    let step_s = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|st| end_ms / 1000.0 / st <= pw / 90.0)
        .unwrap_or(600.0);
    let mut t = 0.0;
    while t * 1000.0 <= end_ms {
        let xt = x(t * 1000.0);
        let _ = writeln!(
            s,
            r#"<line x1="{xt:.1}" y1="{:.1}" x2="{xt:.1}" y2="{:.1}" stroke="black"/><text x="{xt:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"#,
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 18.0
        );
        t += step_s;
    }
    let mut decade = LATENCY_MS_MIN;
    while decade <= lat_max * 1.0001 {
        let yt = y(decade);
        let label = if decade < 1.0 { format!("{decade}ms") } else { format!("{decade:.0}ms") };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yt:.1}" x2="{:.1}" y2="{yt:.1}" stroke="#dee2e6"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 5.0,
            yt + 4.0
        );
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (call)</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 35.0
    );
    let _ = writeln!(
        s,
        r#"<text x="15" y="{:.1}" transform="rotate(-90 15 {:.1})" text-anchor="middle">latency (log)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );

    // The dots, one group per outcome so the file stays small.
    // Successful operations are thinned to every k-th beyond OK_DOTS_MAX;
    // failures and unknowns are always all drawn (they are what one looks for).
    let ok_count = records.iter().filter(|r| matches!(r.event.outcome, Outcome::Ok(_))).count();
    let ok_every = ok_count.div_ceil(OK_DOTS_MAX).max(1);
    for (name, colour) in [("ok", "#2a9d8f"), ("fail", "#e76f51"), ("unknown", "#7b2cbf")] {
        let _ = writeln!(s, r#"<g fill="{colour}" fill-opacity="0.6">"#);
        let every = if name == "ok" { ok_every } else { 1 };
        let shown = records.iter().filter(|r| outcome_colour(&r.event.outcome) == colour);
        for r in shown.step_by(every) {
            let lat = r.event.ret_us.saturating_sub(r.event.call_us) as f64 / 1000.0;
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.6"/>"#,
                x(r.event.call_us as f64 / 1000.0),
                y(lat)
            );
        }
        let _ = writeln!(s, "</g><!-- {name} -->");
    }

    // Legend.
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
    s.push_str("</svg>\n");
    s
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
