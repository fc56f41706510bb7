//! Small SVG charts, inline in the HTML report: line charts and stacked bar charts over the
//! seconds of a run, with shaded bands (Retry-After pauses) and native `<title>` tooltips.
//!
//! Written with maud's `html!` like the rest of the report, so series names and tooltips are
//! escaped by construction. Every coordinate goes through [`coord`], so no input (no data, one
//! point, all zeros, NaN, infinities) can put `NaN` or `inf` into the output.

use std::fmt::Write as _;

use maud::{Markup, html};

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

/// One bar of a stacked chart: (start, end, per-series sums).
type Bar = (f64, f64, Vec<f64>);

/// Group intervals into at most `MAX_BARS` bars.
fn bars(spec: &ChartSpec) -> Vec<Bar> {
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

/// Data to pixels: the plot's x range (seconds) and y range (the unit's values).
struct Frame {
    x_min: f64,
    x_max: f64,
    x_span: f64,
    /// Between y grid lines.
    step: f64,
    y_max: f64,
}

const PLOT_W: f64 = W - LEFT - RIGHT;
const PLOT_H: f64 = H - TOP - BOTTOM;

impl Frame {
    fn new(spec: &ChartSpec, data_max: f64) -> Self {
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
        let step = nice_step(data_max, 4);
        let y_max = if data_max > 0.0 {
            ((data_max / step).ceil() * step).max(step)
        } else {
            step * 4.0
        };
        Self {
            x_min,
            x_max,
            x_span,
            step,
            y_max,
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x_min) / self.x_span * PLOT_W
    }

    fn py(&self, y: f64) -> f64 {
        TOP + PLOT_H - (y / self.y_max).clamp(0.0, 1.05) * PLOT_H
    }
}

/// The highest value drawn: of the stacked bars' rates, or of the lines.
fn data_max(spec: &ChartSpec, grouped: Option<&[Bar]>) -> f64 {
    match grouped {
        Some(g) => g
            .iter()
            .map(|(s, e, sums)| sums.iter().sum::<f64>() / (e - s).max(1e-3))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max),
        None => spec
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied().filter_map(clean))
            .fold(0.0f64, f64::max),
    }
}

/// Render the chart as an `<svg>` element. Every SVG element is closed explicitly
/// (`<line …></line>`): inline SVG is parsed as foreign content, where an unclosed tag would
/// swallow its siblings.
pub fn render(spec: &ChartSpec) -> Markup {
    let grouped = (spec.kind == Kind::StackedBars).then(|| bars(spec));
    let frame = Frame::new(spec, data_max(spec, grouped.as_deref()));
    let has_data = spec
        .series
        .iter()
        .any(|s| s.values.iter().any(|v| clean(*v).is_some()))
        && !spec.intervals.is_empty();
    html! {
        svg id=(spec.id) class="chart" viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label=(spec.title) preserveAspectRatio="xMidYMid meet" {
            (bands(spec, &frame))
            (axes(spec.unit, &frame))
            @if !has_data {
                text.nodata x=(coord(LEFT + PLOT_W / 2.0)) y=(coord(TOP + PLOT_H / 2.0)) { "no data" }
            } @else {
                @if let Some(g) = &grouped {
                    (stacked_bars(spec, &frame, g))
                } @else {
                    @for s in &spec.series { (line(spec, s, &frame)) }
                }
                @if spec.intervals.len() <= MAX_HOVER { (hover(spec, &frame)) }
            }
        }
    }
}

/// The shaded bands, first so that everything is drawn over them.
fn bands(spec: &ChartSpec, f: &Frame) -> Markup {
    let visible = spec
        .bands
        .iter()
        .filter(|(a, b)| a.is_finite() && b.is_finite() && *b > f.x_min && *a < f.x_max);
    html! {
        @for &(a, b) in visible {
            @let (x0, x1) = (f.px(a.max(f.x_min)), f.px(b.min(f.x_max)));
            rect.band x=(coord(x0)) y=(coord(TOP)) width=(coord((x1 - x0).max(1.0))) height=(coord(PLOT_H)) {
                title { (spec.band_label) " " (short_secs(a)) "–" (short_secs(b)) }
            }
        }
    }
}

/// Grid lines with the y labels, ticks with the x labels, and the x axis.
fn axes(unit: Unit, f: &Frame) -> Markup {
    // bounded: at most 20 grid lines and 30 ticks, whatever the numbers
    let ys = (0..20)
        .map(|i| f64::from(i) * f.step)
        .take_while(|y| *y <= f.y_max + f.step * 1e-6);
    let x_step = time_step(f.x_span, 6);
    let first_x = (f.x_min / x_step).ceil() * x_step;
    let xs = (0..30)
        .map(|i| first_x + f64::from(i) * x_step)
        .take_while(|x| *x <= f.x_max + x_step * 1e-6);
    let bottom = TOP + PLOT_H;
    html! {
        @for y in ys {
            @let yy = f.py(y);
            line.grid x1=(coord(LEFT)) y1=(coord(yy)) x2=(coord(W - RIGHT)) y2=(coord(yy)) {}
            text.ylab x=(coord(LEFT - 6.0)) y=(coord(yy + 3.5)) { (label(unit, y)) }
        }
        @for x in xs {
            @let xx = f.px(x);
            line.tick x1=(coord(xx)) y1=(coord(bottom)) x2=(coord(xx)) y2=(coord(bottom + 4.0)) {}
            text.xlab x=(coord(xx)) y=(coord(H - 8.0)) { (short_secs(x)) }
        }
        line.axis x1=(coord(LEFT)) y1=(coord(bottom)) x2=(coord(W - RIGHT)) y2=(coord(bottom)) {}
    }
}

/// The top of each part of a stacked bar, as a rate (the sums divided by the bar's length).
fn stack_tops(sums: &[f64], len: f64) -> Vec<f64> {
    let mut base = 0.0;
    sums.iter()
        .map(|v| {
            base += v.max(0.0) / len;
            base
        })
        .collect()
}

fn stacked_bars(spec: &ChartSpec, f: &Frame, grouped: &[Bar]) -> Markup {
    html! {
        @for (start, end, sums) in grouped {
            @let len = (end - start).max(1e-3);
            @let (x0, x1) = (f.px(*start), f.px(*end));
            @let width = ((x1 - x0) * 0.85).max(0.6);
            @for ((s, &v), top) in spec.series.iter().zip(sums).zip(stack_tops(sums, len)) {
                @if v > 0.0 {
                    @let (y0, y1) = (f.py(top - v / len), f.py(top));
                    rect x=(coord(x0 + (x1 - x0 - width) / 2.0)) y=(coord(y1)) width=(coord(width))
                        height=(coord((y0 - y1).max(0.0))) fill=(s.color) {}
                }
            }
        }
    }
}

/// One series as a path through the middle of each interval; a `None` breaks it, and a point
/// with no neighbour is drawn as a dot.
fn line(spec: &ChartSpec, s: &SeriesSpec, f: &Frame) -> Markup {
    let mut path = String::new();
    let mut run = 0usize;
    let mut lone: Vec<(f64, f64)> = Vec::new();
    let mut last: Option<(f64, f64)> = None;
    for (k, &(a, b)) in spec.intervals.iter().enumerate() {
        match clean(s.values.get(k).copied().flatten()) {
            Some(v) => {
                let p = (f.px((a + b) / 2.0), f.py(v));
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
    html! {
        @if !path.is_empty() {
            path.line.dashed[s.dashed] d=(path.trim_end()) stroke=(s.color) {}
        }
        @for (x, y) in lone {
            circle cx=(coord(x)) cy=(coord(y)) r="2.5" fill=(s.color) {}
        }
    }
}

/// A transparent rectangle per interval whose tooltip lists every series' value.
fn hover(spec: &ChartSpec, f: &Frame) -> Markup {
    html! {
        @for (k, &(a, b)) in spec.intervals.iter().enumerate() {
            @let tip = tooltip(spec, k, a, b);
            @let (x0, x1) = (f.px(a), f.px(b));
            rect.hover x=(coord(x0)) y=(coord(TOP)) width=(coord((x1 - x0).max(0.5))) height=(coord(PLOT_H)) {
                title { (tip) }
            }
        }
    }
}

fn tooltip(spec: &ChartSpec, k: usize, a: f64, b: f64) -> String {
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
    tip
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

    fn render_str(spec: &ChartSpec) -> String {
        render(spec).into_string()
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
            let svg = render_str(&spec(kind, vec![], vec![]));
            sane(&svg);
            assert!(svg.contains("no data"));
            let svg = render_str(&spec(kind, vec![(0.0, 1.0), (1.0, 2.0)], vec![None, None]));
            sane(&svg);
            assert!(svg.contains("no data"));
        }
    }

    #[test]
    fn one_point_is_a_dot_and_a_bar() {
        let svg = render_str(&spec(Kind::Lines, vec![(0.0, 1.0)], vec![Some(5.0)]));
        sane(&svg);
        assert!(svg.contains("<circle"), "{svg}");
        let svg = render_str(&spec(Kind::StackedBars, vec![(0.0, 1.0)], vec![Some(5.0)]));
        sane(&svg);
        assert!(svg.contains("fill=\"#123456\""), "{svg}");
    }

    #[test]
    fn all_zeros_and_hostile_numbers_stay_finite() {
        let i: Vec<(f64, f64)> = (0..5).map(|k| (k as f64, k as f64 + 1.0)).collect();
        for kind in [Kind::Lines, Kind::StackedBars] {
            let svg = render_str(&spec(kind, i.clone(), vec![Some(0.0); 5]));
            sane(&svg);
            assert!(!svg.contains("no data"));
            let svg = render_str(&spec(
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
        let svg = render_str(&s);
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
        let svg = render_str(&s);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("s&lt;1&gt;"));
    }

    #[test]
    fn long_runs_group_bars_and_drop_hover() {
        let n = 3600;
        let i: Vec<(f64, f64)> = (0..n).map(|k| (k as f64, k as f64 + 1.0)).collect();
        let svg = render_str(&spec(Kind::StackedBars, i, vec![Some(3.0); n]));
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
