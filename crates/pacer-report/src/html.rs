//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no external
//! resources; a Content-Security-Policy forbids any network access when it is viewed).
//!
//! [`render`] takes the end-of-test [`Summary`], the per-second [`Series`], the plan as written
//! and, when the run had them, per-worker results. The markup is written with maud's `html!`
//! macro, which escapes every spliced value by construction: a name from a plan or a header
//! from a server can only ever be text (the charts of [`svg`] are written the same way). The
//! only text spliced in unescaped is the stylesheet constant.

use std::time::Duration;

use maud::{DOCTYPE, Markup, PreEscaped, Render, html};
use pacer_stats::render::{format_ms, server_limit_values};
use pacer_stats::summary::{RequestRow, ScenarioRow, Summary, TimeBreakdown};
use pacer_stats::{Snapshot, ThresholdResult};

use crate::redact;
use crate::series::{Series, SeriesPoint};
use crate::svg::{self, ChartSpec, Kind, SeriesSpec, Unit};

/// The version named in the report.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One worker's results, for the per-worker table (filled by a controller; `pacer run` has
/// none, and then the table is left out).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerRow {
    pub worker: String,
    /// All its requests merged.
    pub totals: RequestRow,
    /// All its scenarios merged.
    pub scenarios: ScenarioRow,
}

impl WorkerRow {
    /// From a worker's final snapshot.
    pub fn from_snapshot(worker: &str, snapshot: &Snapshot, elapsed: Duration) -> Self {
        let s = pacer_stats::summarize(worker, snapshot, elapsed, &[], &[]);
        Self {
            worker: worker.to_string(),
            totals: s.totals,
            scenarios: s.scenario_totals,
        }
    }
}

/// Everything the report shows.
#[derive(Clone, Copy, Debug)]
pub struct ReportInput<'a> {
    pub summary: &'a Summary,
    pub series: &'a Series,
    /// [`pacer_plan::Plan::source`]: the plan as written (redacted again before showing).
    pub plan_source: Option<&'a serde_json::Value>,
    /// Per-worker results; empty for a single process.
    pub workers: &'a [WorkerRow],
    /// When the run started, Unix milliseconds.
    pub started_unix_ms: Option<u64>,
    /// Why the run was stopped early by a threshold, if it was.
    pub abort_reason: Option<&'a str>,
    /// The evidence ledger (the run's final snapshot's), if there is one.
    pub ledger: Option<&'a pacer_stats::Ledger>,
}

// The palette (never from input).
const BLUE: &str = "#3b73b9";
const GREY: &str = "#7f7f7f";
const RED: &str = "#d62728";
const GREEN: &str = "#59a14f";
const TEAL: &str = "#76b7b2";
const PURPLE: &str = "#b07aa1";
const ORANGE: &str = "#f28e2b";
const BROWN: &str = "#9c755f";
const YELLOW: &str = "#e1b000";
const NAVY: &str = "#4e79a7";
const LIGHT_BLUE: &str = "#8cb8e8";

const CSS: &str = r#"
:root{--fg:#1f2328;--muted:#59636e;--line:#d8dee4;--bg:#f6f8fa;--card:#fff;--pass:#1a7f37;--fail:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1240px;margin:0 auto;padding:20px 20px 40px}
header.top{display:flex;justify-content:space-between;align-items:center;gap:16px;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:26px 0 10px}
h3{font-size:14px;margin:0 0 2px}
.meta{color:var(--muted);font-size:13px}
.verdict{font-weight:700;font-size:20px;border-radius:8px;padding:10px 18px;color:#fff;text-align:center;min-width:190px}
.verdict small{display:block;font-weight:400;font-size:12px;opacity:.95}
.verdict.pass{background:var(--pass)}.verdict.fail{background:var(--fail)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px;margin-top:14px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.tile .k{color:var(--muted);font-size:12px}.tile .v{font-size:20px;font-weight:600}.tile .s{color:var(--muted);font-size:12px}
.tile.bad .v{color:var(--fail)}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;font-size:13px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:#eef1f4;font-weight:600}
th.mark{width:28px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:none}
.ok{color:var(--pass);font-weight:700}.ko{color:var(--fail);font-weight:700}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:14px}
@media (max-width:900px){.charts{grid-template-columns:1fr}}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 12px 6px}
figcaption{color:var(--muted);font-size:12px;margin-bottom:4px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--muted);margin:4px 0}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sw.band{background:rgba(242,142,43,.25);border:1px solid rgba(242,142,43,.6)}
.sw.dash{height:3px;vertical-align:3px}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#e6e9ed;stroke-width:1}svg .axis{stroke:#8c959f;stroke-width:1}svg .tick{stroke:#8c959f}
svg text{font-size:10.5px;fill:#59636e}svg .ylab{text-anchor:end}svg .xlab{text-anchor:middle}
svg .nodata{text-anchor:middle;font-size:14px;fill:#8c959f}
svg .line{fill:none;stroke-width:1.8;stroke-linejoin:round}svg .line.dashed{stroke-dasharray:5 4}
svg .band{fill:rgba(242,142,43,.18)}svg .hover{fill:transparent}svg .hover:hover{fill:rgba(0,0,0,.05)}
.share{display:flex;height:22px;border-radius:6px;overflow:hidden;border:1px solid var(--line);margin:4px 0 2px}
.share span{display:block;height:100%}
.two{display:grid;grid-template-columns:1fr 1fr;gap:14px}
@media (max-width:900px){.two{grid-template-columns:1fr}}
.note{color:var(--muted);font-size:12px;margin:6px 0 0}
pre{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;overflow:auto;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"#;

/// A number for a `data-value` attribute (finite, shortest form).
fn data(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), format_ms)
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.2}%", v * 100.0),
        _ => "-".into(),
    }
}

/// `2026-05-01 12:34:56 UTC` from Unix milliseconds (proleptic Gregorian, no time zones).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn observed(t: &ThresholdResult) -> String {
    pacer_stats::render::measured(t)
}

/// One key number at the top; `bad` marks it red (its metric failed a threshold, or it counts
/// something that went wrong).
struct Tile<'a> {
    id: &'a str,
    label: &'a str,
    value: String,
    sub: String,
    raw: f64,
    bad: bool,
}

impl Render for Tile<'_> {
    fn render(&self) -> Markup {
        html! {
            div.tile.bad[self.bad] id=(self.id) data-value=(data(self.raw)) {
                div.k { (self.label) }
                div.v { (self.value) }
                div.s { (self.sub) }
            }
        }
    }
}

/// A chart's legend: `(name, color, dashed)` per series, and the shaded band's label.
fn legend(items: &[(&str, &str, bool)], band: Option<&str>) -> Markup {
    html! {
        div.legend {
            @for (name, color, dashed) in items {
                span { span.sw.dash[*dashed] style={ "background:" (color) } {} (name) }
            }
            @if let Some(b) = band {
                span { span.sw.band {} (b) }
            }
        }
    }
}

/// One chart of the report: the texts of its figure and what [`svg`] draws.
struct Chart {
    id: &'static str,
    title: &'static str,
    caption: String,
    kind: Kind,
    unit: Unit,
    series: Vec<SeriesSpec>,
    bands: bool,
}

/// The label of the shaded bands and of their legend entry.
const PAUSE_BAND: &str = "Retry-After pause";

fn figure(input: &ReportInput<'_>, chart: Chart) -> Markup {
    let intervals: Vec<(f64, f64)> = input
        .series
        .points
        .iter()
        .map(|p| (p.elapsed_secs - p.secs, p.elapsed_secs))
        .collect();
    let bands: Vec<(f64, f64)> = if chart.bands {
        let pauses = &input.series.pauses;
        pauses.iter().map(|w| (w.start_secs, w.end_secs)).collect()
    } else {
        Vec::new()
    };
    let band_label = (!bands.is_empty()).then_some(PAUSE_BAND);
    let items: Vec<(&str, &str, bool)> = chart
        .series
        .iter()
        .map(|s| (s.name.as_str(), s.color, s.dashed))
        .collect();
    let legend = legend(&items, band_label);
    let chart_svg = svg::render(&ChartSpec {
        id: chart.id.to_string(),
        title: chart.title.to_string(),
        kind: chart.kind,
        unit: chart.unit,
        intervals,
        series: chart.series,
        bands,
        band_label: PAUSE_BAND.into(),
    });
    html! {
        figure id={ "fig-" (chart.id) } {
            h3 { (chart.title) }
            figcaption { (chart.caption) }
            (legend)
            (chart_svg)
        }
    }
}

fn line(name: &str, color: &'static str, values: Vec<Option<f64>>) -> SeriesSpec {
    SeriesSpec {
        name: name.to_string(),
        color,
        values,
        dashed: false,
    }
}

fn col(points: &[SeriesPoint], f: impl Fn(&SeriesPoint) -> Option<f64>) -> Vec<Option<f64>> {
    points.iter().map(f).collect()
}

fn any_positive(v: &[Option<f64>]) -> bool {
    v.iter().flatten().any(|x| *x > 0.0)
}

/// Only the series that have something above zero.
fn nonzero(candidates: Vec<(&str, &'static str, Vec<Option<f64>>)>) -> Vec<SeriesSpec> {
    candidates
        .into_iter()
        .filter(|(_, _, v)| any_positive(v))
        .map(|(n, c, v)| line(n, c, v))
        .collect()
}

/// p50, p95 and p99 lines of one latency.
fn percentiles(
    p: &[SeriesPoint],
    get: impl Fn(&SeriesPoint) -> [Option<f64>; 3],
) -> Vec<SeriesSpec> {
    [("p50", LIGHT_BLUE), ("p95", ORANGE), ("p99", RED)]
        .into_iter()
        .enumerate()
        .map(|(i, (name, color))| line(name, color, col(p, |x| get(x)[i])))
        .collect()
}

/// The parts of a request's time, in the share bar and the per-second chart.
const TIME_PARTS: [(&str, &str); 4] = [
    ("server", NAVY),
    ("pacer limiter wait", YELLOW),
    ("paused by Retry-After", ORANGE),
    ("retry backoff", PURPLE),
];

fn rate_chart(p: &[SeriesPoint]) -> Chart {
    let mut series = vec![line(
        "achieved (HTTP requests/s)",
        BLUE,
        col(p, |x| Some(x.rate)),
    )];
    let planned = col(p, |x| x.planned_rate);
    if planned.iter().any(Option::is_some) {
        let mut s = line("planned", GREY, planned);
        s.dashed = true;
        series.push(s);
    }
    Chart {
        id: "chart-rate",
        title: "Achieved vs planned rate",
        caption: "HTTP requests per second (retries included); planned: the arrival-rate scenarios' rate × requests per iteration".into(),
        kind: Kind::Lines,
        unit: Unit::PerSec,
        series,
        bands: true,
    }
}

fn status_chart(p: &[SeriesPoint]) -> Chart {
    let class = |x: &SeriesPoint, lo: u16, hi: u16| -> Option<f64> {
        Some(
            x.status
                .iter()
                .filter(|(c, _)| (lo..=hi).contains(*c) && **c != 429)
                .map(|(_, n)| *n as f64)
                .sum(),
        )
    };
    let other = |x: &SeriesPoint| -> Option<f64> {
        Some(
            x.status
                .iter()
                .filter(|(c, _)| !(200..600).contains(*c))
                .map(|(_, n)| *n as f64)
                .sum(),
        )
    };
    let mut series = nonzero(vec![
        ("2xx", GREEN, col(p, |x| class(x, 200, 299))),
        ("3xx", TEAL, col(p, |x| class(x, 300, 399))),
        ("4xx (not 429)", PURPLE, col(p, |x| class(x, 400, 499))),
        ("429", ORANGE, col(p, |x| Some(x.throttled as f64))),
        ("5xx", RED, col(p, |x| class(x, 500, 599))),
        ("other", GREY, col(p, other)),
        ("no response", BROWN, col(p, |x| Some(x.errors as f64))),
    ]);
    if series.is_empty() {
        series.push(line("2xx", GREEN, col(p, |x| class(x, 200, 299))));
    }
    Chart {
        id: "chart-status",
        title: "Responses by status, 429s and Retry-After pauses",
        caption: "responses per second by status; shaded: a limit's scope paused by the server's Retry-After".into(),
        kind: Kind::StackedBars,
        unit: Unit::PerSec,
        series,
        bands: true,
    }
}

fn latency_charts(p: &[SeriesPoint]) -> [Chart; 2] {
    [
        Chart {
            id: "chart-duration",
            title: "Latency from the intended start (http_req_duration)",
            caption: "p50/p95/p99 of the requests completed each second: includes pacer's limiter wait, pauses, backoff and retries".into(),
            kind: Kind::Lines,
            unit: Unit::Millis,
            series: percentiles(p, |x| {
                [x.duration_p50_ms, x.duration_p95_ms, x.duration_p99_ms]
            }),
            bands: true,
        },
        Chart {
            id: "chart-service-time",
            title: "Server service time (http_req_service_time)",
            caption: "p50/p95/p99 of the attempts each second, from send to end of response: the server's own time".into(),
            kind: Kind::Lines,
            unit: Unit::Millis,
            series: percentiles(p, |x| {
                [
                    x.service_time_p50_ms,
                    x.service_time_p95_ms,
                    x.service_time_p99_ms,
                ]
            }),
            bands: false,
        },
    ]
}

/// Where the time of all requests went: a share bar and a table.
fn time_share(t: &TimeBreakdown) -> Markup {
    let shares = [&t.server, &t.limiter_wait, &t.paused, &t.backoff];
    let items: Vec<(&str, &str, bool)> = TIME_PARTS.iter().map(|(n, c)| (*n, *c, false)).collect();
    html! {
        figure #fig-time-share {
            h3 { "Where the time went" }
            figcaption { "time of all requests: the server vs pacer's own throttle vs Retry-After pauses vs retry backoff" }
            (legend(&items, None))
            div.share #time-share {
                @for ((name, color), share) in TIME_PARTS.iter().zip(shares) {
                    @let w = if share.share.is_finite() { (share.share * 100.0).clamp(0.0, 100.0) } else { 0.0 };
                    @if w > 0.0 {
                        span
                            style={ "width:" (format!("{w:.3}")) "%;background:" (color) }
                            title={ (name) ": " (format_ms(share.total_secs * 1000.0)) " (" (format!("{w:.1}")) "%)" } {}
                    }
                }
            }
            table #table-time {
                tr { th {} th.n { "total" } th.n { "share" } }
                @for ((name, color), share) in TIME_PARTS.iter().zip(shares) {
                    tr {
                        td { span.sw style={ "background:" (color) } {} (name) }
                        td.n { (format_ms(share.total_secs * 1000.0)) }
                        td.n { (pct(Some(share.share))) }
                    }
                }
            }
        }
    }
}

fn time_chart(p: &[SeriesPoint]) -> Chart {
    let parts: [fn(&SeriesPoint) -> f64; 4] = [
        |x| x.server_secs,
        |x| x.limiter_wait_secs,
        |x| x.paused_secs,
        |x| x.backoff_secs,
    ];
    Chart {
        id: "chart-time",
        title: "Where the time went, per second",
        caption: "seconds of request time per second, summed over the requests completed in it"
            .into(),
        kind: Kind::StackedBars,
        unit: Unit::Secs,
        series: TIME_PARTS
            .iter()
            .zip(parts)
            .map(|((name, color), get)| line(name, color, col(p, |x| Some(get(x)))))
            .collect(),
        bands: false,
    }
}

fn failures_chart(p: &[SeriesPoint]) -> Chart {
    let per_sec = |n: u64, secs: f64| Some(if secs > 1e-3 { n as f64 / secs } else { 0.0 });
    let mut series = vec![
        line(
            "failed requests",
            RED,
            col(p, |x| per_sec(x.failures, x.secs)),
        ),
        line("429s", ORANGE, col(p, |x| per_sec(x.throttled, x.secs))),
    ];
    series.extend(nonzero(vec![
        ("no response", BROWN, col(p, |x| per_sec(x.errors, x.secs))),
        (
            "dropped iterations",
            PURPLE,
            col(p, |x| per_sec(x.dropped_iterations, x.secs)),
        ),
    ]));
    Chart {
        id: "chart-failures",
        title: "Failures, 429s and dropped iterations",
        caption: "per second: logical requests that failed, 429 answers, attempts without a response, arrivals dropped at maxInFlight".into(),
        kind: Kind::Lines,
        unit: Unit::PerSec,
        series,
        bands: true,
    }
}

fn ratelimit_chart(p: &[SeriesPoint]) -> Chart {
    let as_f64 = |v: Option<u64>| v.map(|v| v as f64);
    let series = [
        ("limit", GREEN, col(p, |x| as_f64(x.ratelimit_limit))),
        ("remaining", NAVY, col(p, |x| as_f64(x.ratelimit_remaining))),
        ("count", RED, col(p, |x| as_f64(x.ratelimit_count))),
    ]
    .into_iter()
    .filter(|(_, _, v)| v.iter().any(Option::is_some))
    .map(|(n, c, v)| line(n, c, v))
    .collect();
    let source = p.iter().rev().find_map(|x| x.ratelimit_source.as_deref());
    let caption = match source {
        None | Some("") => "the server sent no rate-limit headers".to_string(),
        Some(source) => format!("the last {source} headers seen by the end of each second"),
    };
    Chart {
        id: "chart-ratelimit",
        title: "The server's rate-limit headers",
        caption,
        kind: Kind::Lines,
        unit: Unit::Count,
        series,
        bands: true,
    }
}

fn charts(input: &ReportInput<'_>) -> Markup {
    let p = &input.series.points;
    let [duration, service_time] = latency_charts(p);
    html! {
        section.charts #charts {
            (figure(input, rate_chart(p)))
            (figure(input, status_chart(p)))
            (figure(input, duration))
            (figure(input, service_time))
            (time_share(&input.summary.time))
            (figure(input, time_chart(p)))
            (figure(input, failures_chart(p)))
            (figure(input, ratelimit_chart(p)))
        }
    }
}

fn thresholds(s: &Summary) -> Markup {
    html! {
        section #thresholds {
            h2 { "Thresholds" }
            @if s.thresholds.is_empty() {
                p.note #table-thresholds { "The plan declares no thresholds." }
            } @else {
                table #table-thresholds {
                    tr { th.mark {} th { "metric" } th { "threshold" } th { "observed" } }
                    @for t in &s.thresholds {
                        tr data-passed=(t.passed) {
                            td.ok[t.passed].ko[!t.passed] { (if t.passed { "✓" } else { "✗" }) }
                            td { (t.key) }
                            td { (t.expr) }
                            td { (observed(t)) @if t.abort_on_fail { " (abortOnFail)" } }
                        }
                    }
                }
            }
        }
    }
}

/// A latency cell: the value shown in ms, the number in `data-value`.
fn ms_cell(v: Option<f64>) -> Markup {
    html! { td.n data-value=(v.map(data).unwrap_or_default()) { (opt_ms(v)) } }
}

fn requests_table(s: &Summary) -> Markup {
    let rows = s.requests.iter().chain(std::iter::once(&s.totals));
    html! {
        section #requests {
            h2 { "Requests" }
            table #table-requests {
                tr {
                    th { "scenario" } th { "request" }
                    @for h in ["http_reqs", "rate", "failed", "429", "retries", "p50", "p95", "p99", "max", "service p50", "service p95", "service p99"] {
                        th.n { (h) }
                    }
                }
                @for r in rows {
                    @let total = r.scenario == "*" && r.request == "*";
                    @let (d, st) = (&r.duration_ms, &r.service_time_ms);
                    tr data-scenario=(r.scenario) data-request=(r.request) {
                        @if total { td { b { "all" } } td {} } @else { td { (r.scenario) } td { (r.request) } }
                        td.n data-value=(r.http_reqs) { (r.http_reqs) }
                        td.n { (format!("{:.2}/s", r.rate_per_sec)) }
                        td.n { (pct(r.failed_rate)) }
                        td.n { (r.throttled) }
                        td.n { (r.retries) }
                        (ms_cell(d.p50))
                        (ms_cell(d.p95))
                        (ms_cell(d.p99))
                        td.n { (opt_ms(d.max)) }
                        td.n { (opt_ms(st.p50)) }
                        td.n { (opt_ms(st.p95)) }
                        td.n { (opt_ms(st.p99)) }
                    }
                }
            }
        }
    }
}

fn workers_table(workers: &[WorkerRow]) -> Markup {
    html! {
        @if !workers.is_empty() {
            section #workers {
                h2 { "Workers" }
                table #table-workers {
                    tr {
                        th { "worker" }
                        @for h in ["http_reqs", "rate", "failed", "429", "p95", "service p95", "iterations", "dropped"] {
                            th.n { (h) }
                        }
                    }
                    @for w in workers {
                        @let t = &w.totals;
                        tr data-worker=(w.worker) {
                            td { (w.worker) }
                            td.n { (t.http_reqs) }
                            td.n { (format!("{:.2}/s", t.rate_per_sec)) }
                            td.n { (pct(t.failed_rate)) }
                            td.n { (t.throttled) }
                            td.n { (opt_ms(t.duration_ms.p95)) }
                            td.n { (opt_ms(t.service_time_ms.p95)) }
                            td.n { (w.scenarios.iterations) }
                            td.n { (w.scenarios.dropped_iterations) }
                        }
                    }
                }
            }
        }
    }
}

/// `4.90/s`, or `-` when there is no rate.
fn per_sec(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{r:.2}/s"))
}

fn limits_table(s: &Summary) -> Markup {
    html! {
        @if s.limits.is_empty() {
            p.note { "The plan declares no limits: pacer did not pace." }
        } @else {
            table #table-limits {
                tr {
                    th { "limit" } th { "declared" }
                    @for h in ["paced at", "margin", "pauses", "paused"] { th.n { (h) } }
                }
                @for l in &s.limits {
                    tr {
                        td { (l.name) }
                        td { (l.declared) " burst " (l.burst) " (" (l.scope) ")" }
                        td.n {
                            (per_sec(Some(l.pacing_rate)))
                            @if l.adaptive {
                                " (adaptive, now " (per_sec(l.current_rate)) ", sustainable " (l.sustainable_rate.map_or(pacer_stats::render::NOT_MEASURED.into(), |r| format!("{r:.2}/s"))) ")"
                            }
                        }
                        td.n { (format!("{:.1}%", l.margin * 100.0)) }
                        td.n { (l.pauses) }
                        td.n { (format_ms(l.paused_secs * 1000.0)) }
                    }
                }
            }
            @for l in &s.limits {
                @if let Some(said) = &l.server {
                    p.note { (pacer_stats::render::server_said(&l.name, said)) }
                }
            }
        }
    }
}

/// How many pauses the note lists by name.
const PAUSES_LISTED: usize = 12;

fn retry_after_notes(input: &ReportInput<'_>) -> Markup {
    let ra = &input.summary.retry_after;
    let pauses = &input.series.pauses;
    let listed: Vec<String> = pauses
        .iter()
        .take(PAUSES_LISTED)
        .map(|w| {
            format!(
                "{} {}–{}",
                w.limit,
                svg::short_secs(w.start_secs),
                svg::short_secs(w.end_secs)
            )
        })
        .collect();
    html! {
        p.note #retry-after {
            "Retry-After: " (ra.count) " seen, " (ra.malformed) " malformed"
            @if ra.count > 0 {
                "; min " (opt_ms(ra.ms.min)) ", p50 " (opt_ms(ra.ms.p50)) ", p95 " (opt_ms(ra.ms.p95)) ", max " (opt_ms(ra.ms.max))
            }
            "."
        }
        @if !pauses.is_empty() {
            p.note #pauses {
                "Pauses (to the second): " (listed.join(", "))
                @if pauses.len() > listed.len() { ", and " (pauses.len() - listed.len()) " more" }
                @if input.series.pauses_truncated { " (more pauses happened than the report keeps)" }
                "."
            }
        }
    }
}

fn throttled_table(s: &Summary) -> Markup {
    html! {
        table #table-throttled {
            tr { th { "429s by the limit the server named" } th.n { "429s" } }
            @if s.throttled_by_server_limit.is_empty() { tr { td colspan="2" { "none" } } }
            @for (name, n) in &s.throttled_by_server_limit { tr { td { (name) } td.n { (n) } } }
            tr { th { "429s by declared limit" } th.n { "429s" } }
            @if s.throttled_by_limit.is_empty() { tr { td colspan="2" { "none" } } }
            @for l in &s.throttled_by_limit { tr { td { (l.name) } td.n { (l.count) } } }
        }
    }
}

/// A summary line's words as the start of a sentence.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn limits_section(input: &ReportInput<'_>) -> Markup {
    let s = input.summary;
    html! {
        section #limits {
            h2 { "Limits, 429s and Retry-After" }
            div.two {
                div {
                    (limits_table(s))
                    (retry_after_notes(input))
                }
                div {
                    (throttled_table(s))
                    @if let Some(h) = &s.server_limits {
                        p.note #server-headers { "Last rate-limit headers (" (h.source) "): " (server_limit_values(h)) "." }
                    }
                    @if !s.allowed_hosts.is_empty() {
                        p.note #allowed-hosts { (capitalized(pacer_stats::render::ALLOWED_HOSTS)) ": " (s.allowed_hosts.join(", ")) "." }
                    }
                    @if !s.token_fetches.is_empty() {
                        table #table-tokens {
                            tr { th { "token fetches" } @for h in ["fetches", "waited", "avg"] { th.n { (h) } } }
                            @for t in &s.token_fetches {
                                tr {
                                    td { (t.credential) }
                                    td.n { (t.fetches) }
                                    td.n { (format_ms(t.wait_total_ms)) }
                                    td.n { (opt_ms(t.wait_avg_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Top-level keys in the order plans are usually written; others follow alphabetically.
const KEY_ORDER: [&str; 11] = [
    "name",
    "target",
    "duration",
    "workers",
    "variables",
    "http",
    "auth",
    "limits",
    "retry",
    "scenarios",
    "thresholds",
];

/// The redacted plan as YAML, top-level keys in [`KEY_ORDER`] (JSON if YAML fails).
fn plan_listing(source: &serde_json::Value) -> String {
    let redacted = redact::redact(source);
    let serde_json::Value::Object(map) = &redacted else {
        return serde_saphyr::to_string(&redacted)
            .unwrap_or_else(|_| redact::redacted_listing(source));
    };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| {
        (
            KEY_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(KEY_ORDER.len()),
            k.as_str(),
        )
    });
    let mut out = String::new();
    for k in keys {
        let one = serde_json::Map::from_iter([(k.clone(), map[k].clone())]);
        match serde_saphyr::to_string(&one) {
            Ok(yaml) => out.push_str(&yaml),
            Err(_) => return redact::redacted_listing(source),
        }
    }
    out
}

/// The key numbers; a tile whose metric failed a threshold is marked.
fn tiles(s: &Summary) -> Markup {
    let t = &s.totals;
    let it = &s.scenario_totals;
    let failed_on = |metric: &str| {
        s.thresholds
            .iter()
            .any(|r| !r.passed && r.key.split('{').next().is_some_and(|k| k.trim() == metric))
    };
    let pauses: u64 = s.limits.iter().map(|l| l.pauses).sum();
    let paused_secs: f64 = s.limits.iter().map(|l| l.paused_secs).sum();
    let tiles = [
        Tile {
            id: "tile-http-reqs",
            label: "http_reqs",
            value: t.http_reqs.to_string(),
            sub: format!("{:.2}/s · {} logical", t.rate_per_sec, t.requests),
            raw: t.http_reqs as f64,
            bad: false,
        },
        Tile {
            id: "tile-duration-p95",
            label: "http_req_duration p95",
            value: opt_ms(t.duration_ms.p95),
            sub: format!("p99 {}", opt_ms(t.duration_ms.p99)),
            raw: t.duration_ms.p95.unwrap_or(f64::NAN),
            bad: failed_on("http_req_duration"),
        },
        Tile {
            id: "tile-service-p95",
            label: "service_time p95",
            value: opt_ms(t.service_time_ms.p95),
            sub: format!("p99 {}", opt_ms(t.service_time_ms.p99)),
            raw: t.service_time_ms.p95.unwrap_or(f64::NAN),
            bad: failed_on("http_req_service_time"),
        },
        Tile {
            id: "tile-throttled",
            label: "429s",
            value: t.throttled.to_string(),
            sub: format!("{} of attempts", pct(t.throttled_rate)),
            raw: t.throttled as f64,
            bad: t.throttled > 0 || failed_on("http_reqs_throttled"),
        },
        Tile {
            id: "tile-failed",
            label: "http_req_failed",
            value: pct(t.failed_rate),
            sub: format!("{} failed", t.failed),
            raw: t.failed as f64,
            bad: t.failed > 0 || failed_on("http_req_failed"),
        },
        Tile {
            id: "tile-iterations",
            label: "iterations",
            value: it.iterations.to_string(),
            sub: format!(
                "{} dropped · {} interrupted",
                it.dropped_iterations, it.interrupted
            ),
            raw: it.iterations as f64,
            bad: it.dropped_iterations > 0,
        },
        Tile {
            id: "tile-pauses",
            label: "Retry-After pauses",
            value: pauses.to_string(),
            sub: format!(
                "{} held · {} retries",
                format_ms(paused_secs * 1000.0),
                s.retries.retries
            ),
            raw: pauses as f64,
            bad: false,
        },
    ];
    html! { section.tiles #tiles { @for tile in &tiles { (tile) } } }
}

/// The title, when it ran, and the verdict.
fn header(input: &ReportInput<'_>) -> Markup {
    let s = input.summary;
    let failed = s.thresholds.iter().filter(|t| !t.passed).count();
    let passed = s.passed && input.abort_reason.is_none();
    let detail = match input.abort_reason {
        Some(r) => format!("aborted: {r}"),
        None if s.thresholds.is_empty() => "no thresholds".into(),
        None => format!(
            "{} of {} thresholds passed",
            s.thresholds.len() - failed,
            s.thresholds.len()
        ),
    };
    html! {
        header.top {
            div {
                h1 #plan-name { (s.name) }
                div.meta {
                    @if let Some(ms) = input.started_unix_ms { "started " (utc(ms)) " · " }
                    "ran " (format_ms(s.elapsed_secs * 1000.0)) " · "
                    (input.series.points.len()) " seconds in the series · pacer " (VERSION)
                }
            }
            div id="verdict" class={ "verdict " (if passed { "pass" } else { "fail" }) } data-passed=(passed) {
                (if passed { "PASSED" } else { "FAILED" })
                small { (detail) }
            }
        }
    }
}

/// The report's Content-Security-Policy: nothing but the inline style may load or run.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'";

/// The whole report as one HTML document.
pub fn render(input: &ReportInput<'_>) -> String {
    let s = input.summary;
    let listing = input
        .plan_source
        .map(plan_listing)
        .unwrap_or_else(|| "(not available)".into());
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP);
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="generator" content={ "pacer " (VERSION) };
                title { "pacer report: " (s.name) }
                style { (PreEscaped(CSS)) }
            }
            body { main {
                (header(input))
                (tiles(s))
                (thresholds(s))
                h2 { "Over time" }
                (charts(input))
                (limits_section(input))
                (crate::evidence::ledger_section(input.ledger))
                (requests_table(s))
                (workers_table(input.workers))
                section #plan {
                    h2 { "The plan that ran" }
                    p.note {
                        "As written: " code { "${env:…}" } " and " code { "${file:…}" }
                        " references are not resolved, and values under credential keys are redacted."
                    }
                    pre #plan-source { (listing) }
                }
                @if s.invalid_records > 0 {
                    p.note { "Warning: " (s.invalid_records) " records named an unknown scenario or request and were ignored." }
                }
                footer { "Generated by pacer. This file is self-contained: no scripts, no network access when it is viewed." }
            } }
        }
    };
    let mut out = without_controls(doc.into_string());
    out.push('\n');
    out
}

/// Control characters (other than tab and newline) become U+FFFD: markup is escaped by maud,
/// but a hostile server header could still carry terminal escape sequences into a file that
/// someone may `cat`. The template itself has none, so this touches only what came from input.
fn without_controls(doc: String) -> String {
    if !doc.chars().any(is_stray_control) {
        return doc;
    }
    doc.chars()
        .map(|c| if is_stray_control(c) { '\u{fffd}' } else { c })
        .collect()
}

fn is_stray_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    use pacer_stats::{Layout, Recorder, ScenarioLayout};

    fn summary_of(rec: &Recorder, name: &str) -> Summary {
        pacer_stats::summarize(name, &rec.snapshot(), Duration::from_secs(3), &[], &[])
    }

    fn check_document(doc: &str) {
        assert!(doc.starts_with("<!DOCTYPE html>"));
        for bad in [
            "NaN", "inf<", "<script", "http://", "https://", " src=", " href=", "url(",
        ] {
            assert!(!doc.contains(bad), "{bad} in the report");
        }
        for id in [
            "verdict",
            "chart-rate",
            "chart-status",
            "chart-duration",
            "chart-service-time",
            "chart-time",
            "chart-ratelimit",
            "time-share",
            "table-thresholds",
            "table-requests",
            "plan-source",
        ] {
            assert!(doc.contains(&format!("id=\"{id}\"")), "no #{id}");
        }
    }

    #[test]
    fn an_empty_run_renders_without_nan() {
        let rec = Recorder::new(Layout::default());
        let summary = summary_of(&rec, "empty");
        let doc = render(&ReportInput {
            summary: &summary,
            series: &Series::default(),
            plan_source: None,
            workers: &[],
            started_unix_ms: None,
            abort_reason: None,
            ledger: None,
        });
        check_document(&doc);
        assert!(doc.contains("no data"));
        assert!(!doc.contains("table-workers"));
    }

    #[test]
    fn names_from_plans_and_servers_are_escaped_and_secrets_redacted() {
        let rec = Recorder::new(Layout {
            scenarios: vec![ScenarioLayout {
                name: "<script>alert(1)</script>".into(),
                requests: vec!["r\"onload=\"x".into()],
            }],
        });
        rec.record_server_limits(pacer_stats::ServerLimitHeaders {
            at_unix_ms: 1,
            source: "<img>".into(),
            policy: Some("<blink>".into()),
            ..Default::default()
        });
        let summary = summary_of(&rec, "<h1>plan</h1>");
        let series = Series::default();
        let source = serde_json::json!({
            "name": "<h1>plan</h1>",
            "auth": [{"name": "a", "clientSecret": "hunter2-literal"}],
        });
        let workers = [WorkerRow::from_snapshot(
            "w<1>",
            &rec.snapshot(),
            Duration::from_secs(3),
        )];
        let doc = render(&ReportInput {
            summary: &summary,
            series: &series,
            plan_source: Some(&source),
            workers: &workers,
            started_unix_ms: Some(0),
            abort_reason: Some("threshold <x> crossed"),
            ledger: None,
        });
        check_document(&doc);
        for raw in ["<h1>plan", "<img>", "<blink>", "w<1>", "<x>", "\"onload"] {
            assert!(!doc.contains(raw), "{raw} unescaped");
        }
        assert!(doc.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!doc.contains("hunter2-literal"));
        assert!(doc.contains("table-workers"));
        assert!(doc.contains("data-passed=\"false\""), "aborted runs fail");
    }

    /// A report whose scenario, request, plan and server-header texts are all `name`.
    fn report_named(name: &str) -> String {
        let rec = Recorder::new(Layout {
            scenarios: vec![ScenarioLayout {
                name: name.into(),
                requests: vec![name.into()],
            }],
        });
        rec.record_server_limits(pacer_stats::ServerLimitHeaders {
            at_unix_ms: 1,
            source: name.into(),
            policy: Some(name.into()),
            ..Default::default()
        });
        let summary = summary_of(&rec, name);
        let source = serde_json::json!({ "name": name });
        let workers = [WorkerRow::from_snapshot(
            name,
            &rec.snapshot(),
            Duration::from_secs(3),
        )];
        render(&ReportInput {
            summary: &summary,
            series: &Series::default(),
            plan_source: Some(&source),
            workers: &workers,
            started_unix_ms: Some(0),
            abort_reason: Some(name),
            ledger: None,
        })
    }

    #[test]
    fn hostile_request_scenario_and_header_values_appear_escaped() {
        let script = "<script>alert(1)</script>";
        let doc = report_named(script);
        check_document(&doc);
        assert!(!doc.contains(script));
        assert!(doc.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(doc.contains(r#"data-scenario="&lt;script&gt;alert(1)&lt;/script&gt;""#));

        let quotes = r#"x"'&y"#;
        let doc = report_named(quotes);
        check_document(&doc);
        assert!(!doc.contains(quotes), "raw quotes and ampersand");
        // in text and in double-quoted attributes alike
        assert!(doc.contains("x&quot;'&amp;y"));
        assert!(doc.contains(r#"data-request="x&quot;'&amp;y""#));
        assert!(doc.contains(r#"data-worker="x&quot;'&amp;y""#));
    }

    #[test]
    fn the_report_lists_the_hosts_allowed_besides_the_target() {
        let rec = Recorder::new(Layout::default());
        let mut summary = summary_of(&rec, "allow");
        assert!(
            !page(&summary).contains("id=\"allowed-hosts\""),
            "none allowed, no note"
        );
        summary.allowed_hosts = vec!["cdn.example:443".into(), "<b>".into()];
        let doc = page(&summary);
        assert!(doc.contains("Also allowed besides the target (http.allowHosts, sent no credentials): cdn.example:443, &lt;b&gt;."));
    }

    fn page(summary: &Summary) -> String {
        render(&ReportInput {
            summary,
            series: &Series::default(),
            plan_source: None,
            workers: &[],
            started_unix_ms: None,
            abort_reason: None,
            ledger: None,
        })
    }

    #[test]
    fn control_characters_from_a_server_never_reach_the_file() {
        let doc = report_named("red\u{1b}[31m\u{0}bell\u{7}");
        assert!(!doc.contains(['\u{1b}', '\u{0}', '\u{7}']));
        assert!(doc.contains("red\u{fffd}[31m\u{fffd}bell\u{fffd}"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the names are, they add no markup: the document has exactly as many `<`,
        /// `>` and `"` as one with a plain name.
        #[test]
        fn no_name_adds_markup(name in "\\PC{0,12}[<>\"'&]{1,4}\\PC{0,12}") {
            let plain = report_named("plain");
            let doc = report_named(&name);
            for c in ['<', '>', '"'] {
                proptest::prop_assert_eq!(doc.matches(c).count(), plain.matches(c).count());
            }
        }
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }
}
