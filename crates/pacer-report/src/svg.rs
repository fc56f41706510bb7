//! Small SVG charts, written as text: line charts and stacked bar charts over the seconds of a
//! run, with shaded bands (Retry-After pauses) and native `<title>` tooltips.
//!
//! Every coordinate goes through [`coord`], so no input (no data, one point, all zeros, NaN,
//! infinities) can put `NaN` or `inf` into the output. Names are escaped.

use std::fmt::Write as _;

use crate::escape::html;

/// How the y axis labels its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Plain counts.
    Count,
    /// Per second.
    PerSec,
    /// Milliseconds, shown as µs/ms/s.
    Millis,
    /// Seconds.
    Secs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One line per series through the middle of each interval; a `None` breaks the line.
    Lines,
    /// Bars stacked per interval, showing each value divided by the interval's length (so a
    /// count per interval is drawn as a rate per second).
    StackedBars,
}

#[derive(Clone, Debug)]
pub struct SeriesSpec {
    pub name: String,
    /// A CSS color (from the report's palette, never from input).
    pub color: &'static str,
    pub values: Vec<Option<f64>>,
    pub dashed: bool,
}

#[derive(Clone, Debug)]
pub struct ChartSpec {
    /// The `id` of the `<svg>` element.
    pub id: String,
    /// Accessible name (`aria-label`).
    pub title: String,
    pub kind: Kind,
    pub unit: Unit,
    /// Each point's interval `(start, end]`, seconds since start.
    pub intervals: Vec<(f64, f64)>,
    pub series: Vec<SeriesSpec>,
    /// Shaded x ranges (seconds).
    pub bands: Vec<(f64, f64)>,
    /// Tooltip of the shaded bands.
    pub band_label: String,
}

const W: f64 = 600.0;
const H: f64 = 240.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;
/// Bars drawn at most; longer runs are grouped into wider bars.
const MAX_BARS: usize = 600;
/// Intervals up to which each gets a hover rectangle with a tooltip.
const MAX_HOVER: usize = 900;

/// A coordinate or value for the output: non-finite becomes 0, one decimal.
pub fn coord(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let s = format!("{v:.1}");
    if s == "-0.0" { "0.0".into() } else { s }
}

/// "Nice" tick step for a range `0..max` with about `n` ticks.
pub fn nice_step(max: f64, n: usize) -> f64 {
    if !max.is_finite() || max <= 0.0 || n == 0 {
        return 1.0;
    }
    let raw = max / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = nice * mag;
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

/// Tick step for a time axis of `span` seconds with at most about `n` ticks: 1, 2, 5, 10,
/// 15, 30 s, 1, 2, 5, 10, 15, 30 min, 1, 2, 6, 12 h.
pub fn time_step(span: f64, n: usize) -> f64 {
    const STEPS: [f64; 18] = [
        0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0, 21_600.0, 43_200.0,
    ];
    if !span.is_finite() || span <= 0.0 || n == 0 {
        return 1.0;
    }
    let want = span / n as f64;
    STEPS
        .iter()
        .copied()
        .find(|&s| s >= want)
        .unwrap_or_else(|| (want / 86_400.0).ceil() * 86_400.0)
}

/// A short number: `0`, `12`, `2.5`, `1.2k`, `3.4M`.
pub fn short_number(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    let (x, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let mut s = if x.abs() >= 100.0 || (x.fract() == 0.0) {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{suffix}")
}

/// A duration in milliseconds as `850µs`, `12ms`, `1.5s`, `2m`.
pub fn short_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "-".into();
    }
    if ms == 0.0 {
        "0".into()
    } else if ms < 1.0 {
        format!("{}µs", short_number(ms * 1000.0))
    } else if ms < 1000.0 {
        format!("{}ms", short_number(ms))
    } else if ms < 120_000.0 {
        format!("{}s", short_number(ms / 1000.0))
    } else {
        format!("{}m", short_number(ms / 60_000.0))
    }
}

/// Seconds since start as an axis label: `0s`, `45s`, `2m`, `2m30s`, `1h05m`.
pub fn short_secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    let whole = s.round() as u64;
    if (s - s.round()).abs() > 0.05 && s < 10.0 {
        return format!("{s:.1}s");
    }
    if whole < 60 {
        format!("{whole}s")
    } else if whole < 3600 {
        if whole.is_multiple_of(60) {
            format!("{}m", whole / 60)
        } else {
            format!("{}m{:02}s", whole / 60, whole % 60)
        }
    } else {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

fn label(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Count => short_number(v),
        Unit::PerSec => format!("{}/s", short_number(v)),
        Unit::Millis => short_ms(v),
        Unit::Secs => format!("{}s", short_number(v)),
    }
}

fn clean(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// Group intervals into at most `MAX_BARS` bars: (start, end, per-series sums).
fn bars(spec: &ChartSpec) -> Vec<(f64, f64, Vec<f64>)> {
    let n = spec.intervals.len();
    let group = n.div_ceil(MAX_BARS).max(1);
    let mut out = Vec::with_capacity(n.div_ceil(group));
    let mut i = 0;
    while i < n {
        let end = (i + group).min(n);
        let (start, stop) = (spec.intervals[i].0, spec.intervals[end - 1].1);
        let sums = spec
            .series
            .iter()
            .map(|s| {
                (i..end)
                    .filter_map(|k| clean(s.values.get(k).copied().flatten()))
                    .map(|v| v.max(0.0))
                    .sum::<f64>()
            })
            .collect();
        out.push((start, stop, sums));
        i = end;
    }
    out
}

/// Render the chart as an `<svg>` element.
pub fn render(spec: &ChartSpec) -> String {
    let x_max = spec
        .intervals
        .iter()
        .map(|&(_, e)| e)
        .filter(|e| e.is_finite())
        .fold(0.0f64, f64::max);
    let x_min = spec
        .intervals
        .iter()
        .map(|&(s, _)| s)
        .filter(|s| s.is_finite())
        .fold(x_max, f64::min)
        .min(x_max);
    let x_span = if x_max - x_min > 1e-9 {
        x_max - x_min
    } else {
        1.0
    };
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_min) / x_span * plot_w;

    let grouped = (spec.kind == Kind::StackedBars).then(|| bars(spec));
    let data_max = match &grouped {
        Some(g) => g
            .iter()
            .map(|(s, e, sums)| {
                let len = (e - s).max(1e-3);
                sums.iter().sum::<f64>() / len
            })
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max),
        None => spec
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied().filter_map(clean))
            .fold(0.0f64, f64::max),
    };
    let has_data = spec
        .series
        .iter()
        .any(|s| s.values.iter().any(|v| clean(*v).is_some()))
        && !spec.intervals.is_empty();
    let step = nice_step(data_max, 4);
    let y_max = if data_max > 0.0 {
        ((data_max / step).ceil() * step).max(step)
    } else {
        step * 4.0
    };
    let py = |y: f64| TOP + plot_h - (y / y_max).clamp(0.0, 1.05) * plot_h;

    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg id="{}" class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}" preserveAspectRatio="xMidYMid meet">"#,
        html(&spec.id),
        html(&spec.title)
    );
    // bands first, under everything
    for &(a, b) in &spec.bands {
        if !(a.is_finite() && b.is_finite()) || b <= x_min || a >= x_max {
            continue;
        }
        let (x0, x1) = (px(a.max(x_min)), px(b.min(x_max)));
        let _ = write!(
            out,
            r#"<rect class="band" x="{}" y="{}" width="{}" height="{}"><title>{} {}–{}</title></rect>"#,
            coord(x0),
            coord(TOP),
            coord((x1 - x0).max(1.0)),
            coord(plot_h),
            html(&spec.band_label),
            short_secs(a),
            short_secs(b)
        );
    }
    // grid and y labels
    let mut y = 0.0;
    let mut guard = 0;
    while y <= y_max + step * 1e-6 && guard < 20 {
        let yy = py(y);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{}" y1="{}" x2="{}" y2="{}"/><text class="ylab" x="{}" y="{}">{}</text>"#,
            coord(LEFT),
            coord(yy),
            coord(W - RIGHT),
            coord(yy),
            coord(LEFT - 6.0),
            coord(yy + 3.5),
            html(&label(spec.unit, y))
        );
        y += step;
        guard += 1;
    }
    // x labels
    let x_step = time_step(x_span, 6);
    let mut x = (x_min / x_step).ceil() * x_step;
    guard = 0;
    while x <= x_max + x_step * 1e-6 && guard < 30 {
        let xx = px(x);
        let _ = write!(
            out,
            r#"<line class="tick" x1="{}" y1="{}" x2="{}" y2="{}"/><text class="xlab" x="{}" y="{}">{}</text>"#,
            coord(xx),
            coord(TOP + plot_h),
            coord(xx),
            coord(TOP + plot_h + 4.0),
            coord(xx),
            coord(H - 8.0),
            short_secs(x)
        );
        x += x_step;
        guard += 1;
    }
    let _ = write!(
        out,
        r#"<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>"#,
        coord(LEFT),
        coord(TOP + plot_h),
        coord(W - RIGHT),
        coord(TOP + plot_h)
    );

    if !has_data {
        let _ = write!(
            out,
            r#"<text class="nodata" x="{}" y="{}">no data</text></svg>"#,
            coord(LEFT + plot_w / 2.0),
            coord(TOP + plot_h / 2.0)
        );
        return out;
    }

    match &grouped {
        Some(g) => {
            for (start, end, sums) in g {
                let len = (end - start).max(1e-3);
                let (x0, x1) = (px(*start), px(*end));
                let width = ((x1 - x0) * 0.85).max(0.6);
                let mut base = 0.0;
                for (s, &v) in spec.series.iter().zip(sums) {
                    if v <= 0.0 {
                        continue;
                    }
                    let top = base + v / len;
                    let (y0, y1) = (py(base), py(top));
                    let _ = write!(
                        out,
                        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
                        coord(x0 + (x1 - x0 - width) / 2.0),
                        coord(y1),
                        coord(width),
                        coord((y0 - y1).max(0.0)),
                        s.color
                    );
                    base = top;
                }
            }
        }
        None => {
            for s in &spec.series {
                let mut path = String::new();
                let mut run = 0usize;
                let mut lone: Vec<(f64, f64)> = Vec::new();
                let mut last: Option<(f64, f64)> = None;
                for (k, &(a, b)) in spec.intervals.iter().enumerate() {
                    match clean(s.values.get(k).copied().flatten()) {
                        Some(v) => {
                            let p = (px((a + b) / 2.0), py(v));
                            let _ = write!(
                                path,
                                "{}{},{} ",
                                if run == 0 { "M" } else { "L" },
                                coord(p.0),
                                coord(p.1)
                            );
                            run += 1;
                            last = Some(p);
                        }
                        None => {
                            if run == 1
                                && let Some(p) = last
                            {
                                lone.push(p);
                            }
                            run = 0;
                        }
                    }
                }
                if run == 1
                    && let Some(p) = last
                {
                    lone.push(p);
                }
                if !path.is_empty() {
                    let _ = write!(
                        out,
                        r#"<path class="line{}" d="{}" stroke="{}"/>"#,
                        if s.dashed { " dashed" } else { "" },
                        path.trim_end(),
                        s.color
                    );
                }
                for (x, y) in lone {
                    let _ = write!(
                        out,
                        r#"<circle cx="{}" cy="{}" r="2.5" fill="{}"/>"#,
                        coord(x),
                        coord(y),
                        s.color
                    );
                }
            }
        }
    }

    if spec.intervals.len() <= MAX_HOVER {
        for (k, &(a, b)) in spec.intervals.iter().enumerate() {
            let mut tip = format!("{}–{}", short_secs(a), short_secs(b));
            for s in &spec.series {
                let v = clean(s.values.get(k).copied().flatten());
                let text = match (v, spec.kind) {
                    (None, _) => "-".to_string(),
                    (Some(v), Kind::StackedBars) => short_number(v),
                    (Some(v), Kind::Lines) => label(spec.unit, v),
                };
                let _ = write!(tip, "\n{}: {}", s.name, text);
            }
            let (x0, x1) = (px(a), px(b));
            let _ = write!(
                out,
                r#"<rect class="hover" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>"#,
                coord(x0),
                coord(TOP),
                coord((x1 - x0).max(0.5)),
                coord(plot_h),
                html(&tip)
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Kind, intervals: Vec<(f64, f64)>, values: Vec<Option<f64>>) -> ChartSpec {
        ChartSpec {
            id: "c".into(),
            title: "t".into(),
            kind,
            unit: Unit::PerSec,
            intervals,
            series: vec![SeriesSpec {
                name: "s<1>".into(),
                color: "#123456",
                values,
                dashed: false,
            }],
            bands: vec![],
            band_label: "pause".into(),
        }
    }

    fn sane(svg: &str) {
        for bad in ["NaN", "inf", "<s<", "undefined"] {
            assert!(!svg.contains(bad), "{bad} in {svg}");
        }
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
    }

    #[test]
    fn no_data_says_so() {
        for kind in [Kind::Lines, Kind::StackedBars] {
            let svg = render(&spec(kind, vec![], vec![]));
            sane(&svg);
            assert!(svg.contains("no data"));
            let svg = render(&spec(kind, vec![(0.0, 1.0), (1.0, 2.0)], vec![None, None]));
            sane(&svg);
            assert!(svg.contains("no data"));
        }
    }

    #[test]
    fn one_point_is_a_dot_and_a_bar() {
        let svg = render(&spec(Kind::Lines, vec![(0.0, 1.0)], vec![Some(5.0)]));
        sane(&svg);
        assert!(svg.contains("<circle"), "{svg}");
        let svg = render(&spec(Kind::StackedBars, vec![(0.0, 1.0)], vec![Some(5.0)]));
        sane(&svg);
        assert!(svg.contains("fill=\"#123456\""), "{svg}");
    }

    #[test]
    fn all_zeros_and_hostile_numbers_stay_finite() {
        let i: Vec<(f64, f64)> = (0..5).map(|k| (k as f64, k as f64 + 1.0)).collect();
        for kind in [Kind::Lines, Kind::StackedBars] {
            let svg = render(&spec(kind, i.clone(), vec![Some(0.0); 5]));
            sane(&svg);
            assert!(!svg.contains("no data"));
            let svg = render(&spec(
                kind,
                vec![
                    (0.0, 0.0),
                    (f64::NAN, 1.0),
                    (1.0, f64::INFINITY),
                    (2.0, 3.0),
                ],
                vec![Some(f64::NAN), Some(f64::INFINITY), Some(-1.0), Some(1e300)],
            ));
            sane(&svg);
        }
        let mut s = spec(Kind::Lines, i, vec![Some(1.0); 5]);
        s.bands = vec![(f64::NAN, 2.0), (1.0, 2.0), (10.0, 20.0)];
        let svg = render(&s);
        sane(&svg);
        assert_eq!(svg.matches("class=\"band\"").count(), 1, "{svg}");
    }

    #[test]
    fn names_are_escaped() {
        let mut s = spec(
            Kind::Lines,
            vec![(0.0, 1.0), (1.0, 2.0)],
            vec![Some(1.0), Some(2.0)],
        );
        s.title = "<script>".into();
        let svg = render(&s);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("s&lt;1&gt;"));
    }

    #[test]
    fn long_runs_group_bars_and_drop_hover() {
        let n = 3600;
        let i: Vec<(f64, f64)> = (0..n).map(|k| (k as f64, k as f64 + 1.0)).collect();
        let svg = render(&spec(Kind::StackedBars, i, vec![Some(3.0); n]));
        sane(&svg);
        assert!(svg.matches("<rect").count() <= MAX_BARS + 10);
        assert!(!svg.contains("class=\"hover\""));
    }

    #[test]
    fn ticks_and_labels() {
        assert_eq!(nice_step(100.0, 4), 25.0);
        assert_eq!(nice_step(0.0, 4), 1.0);
        assert_eq!(nice_step(f64::NAN, 4), 1.0);
        assert_eq!(time_step(10.0, 6), 2.0);
        assert_eq!(time_step(3600.0, 6), 600.0);
        assert_eq!(short_secs(90.0), "1m30s");
        assert_eq!(short_secs(3900.0), "1h05m");
        assert_eq!(short_ms(0.5), "500µs");
        assert_eq!(short_ms(1500.0), "1.5s");
        assert_eq!(short_number(1234.0), "1.23k");
        assert_eq!(coord(f64::NAN), "0.0");
    }
}
