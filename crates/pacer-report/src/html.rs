//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no external
//! resources; a Content-Security-Policy forbids any network access when it is viewed).
//!
//! [`render`] takes the end-of-test [`Summary`], the per-second [`Series`], the plan as written
//! and, when the run had them, per-worker results. Every string from a plan, a server or a
//! snapshot is escaped.

use std::fmt::Write as _;
use std::time::Duration;

use pacer_stats::render::format_ms;
use pacer_stats::summary::{RequestRow, ScenarioRow, Summary};
use pacer_stats::{Snapshot, ThresholdResult};

use crate::escape::{Html, html};
use crate::redact;
use crate::series::{Series, SeriesPoint};
use crate::svg::{self, ChartSpec, Kind, SeriesSpec, Unit};

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

fn tile(out: &mut String, id: &str, label: &str, value: &str, sub: &str, raw: f64, bad: bool) {
    let _ = write!(
        out,
        r#"<div class="tile{}" id="{id}" data-value="{}"><div class="k">{}</div><div class="v">{}</div><div class="s">{}</div></div>"#,
        if bad { " bad" } else { "" },
        data(raw),
        Html(label),
        Html(value),
        Html(sub)
    );
}

fn legend(out: &mut String, items: &[(&str, &str, bool)], band: Option<&str>) {
    out.push_str(r#"<div class="legend">"#);
    for (name, color, dashed) in items {
        let _ = write!(
            out,
            r#"<span><span class="sw{}" style="background:{color}"></span>{}</span>"#,
            if *dashed { " dash" } else { "" },
            Html(name)
        );
    }
    if let Some(b) = band {
        let _ = write!(
            out,
            r#"<span><span class="sw band"></span>{}</span>"#,
            Html(b)
        );
    }
    out.push_str("</div>");
}

struct Chart<'a> {
    id: &'a str,
    title: &'a str,
    caption: &'a str,
    kind: Kind,
    unit: Unit,
    series: Vec<SeriesSpec>,
    bands: bool,
}

fn figure(out: &mut String, input: &ReportInput<'_>, chart: Chart<'_>) {
    let points = &input.series.points;
    let intervals: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.elapsed_secs - p.secs, p.elapsed_secs))
        .collect();
    let bands: Vec<(f64, f64)> = if chart.bands {
        input
            .series
            .pauses
            .iter()
            .map(|w| (w.start_secs, w.end_secs))
            .collect()
    } else {
        Vec::new()
    };
    let band_label = (!bands.is_empty()).then_some("Retry-After pause");
    let _ = write!(
        out,
        r#"<figure id="fig-{}"><h3>{}</h3><figcaption>{}</figcaption>"#,
        html(chart.id),
        Html(chart.title),
        Html(chart.caption)
    );
    let items: Vec<(&str, &str, bool)> = chart
        .series
        .iter()
        .map(|s| (s.name.as_str(), s.color, s.dashed))
        .collect();
    legend(out, &items, band_label);
    out.push_str(&svg::render(&ChartSpec {
        id: chart.id.to_string(),
        title: chart.title.to_string(),
        kind: chart.kind,
        unit: chart.unit,
        intervals,
        series: chart.series,
        bands,
        band_label: "Retry-After pause".into(),
    }));
    out.push_str("</figure>");
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

fn charts(out: &mut String, input: &ReportInput<'_>) {
    let p = &input.series.points;
    out.push_str(r#"<section class="charts" id="charts">"#);

    // achieved vs planned
    let mut rate = vec![line(
        "achieved (HTTP requests/s)",
        BLUE,
        col(p, |x| Some(x.rate)),
    )];
    let planned = col(p, |x| x.planned_rate);
    if planned.iter().any(Option::is_some) {
        let mut s = line("planned", GREY, planned);
        s.dashed = true;
        rate.push(s);
    }
    figure(
        out,
        input,
        Chart {
            id: "chart-rate",
            title: "Achieved vs planned rate",
            caption: "HTTP requests per second (retries included); planned: the arrival-rate scenarios' rate × requests per iteration",
            kind: Kind::Lines,
            unit: Unit::PerSec,
            series: rate,
            bands: true,
        },
    );

    // statuses
    let class = |x: &SeriesPoint, lo: u16, hi: u16| -> Option<f64> {
        Some(
            x.status
                .iter()
                .filter(|(c, _)| (lo..=hi).contains(*c) && **c != 429)
                .map(|(_, n)| *n as f64)
                .sum(),
        )
    };
    let candidates = [
        ("2xx", GREEN, col(p, |x| class(x, 200, 299))),
        ("3xx", TEAL, col(p, |x| class(x, 300, 399))),
        ("4xx (not 429)", PURPLE, col(p, |x| class(x, 400, 499))),
        ("429", ORANGE, col(p, |x| Some(x.throttled as f64))),
        ("5xx", RED, col(p, |x| class(x, 500, 599))),
        (
            "other",
            GREY,
            col(p, |x| {
                Some(
                    x.status
                        .iter()
                        .filter(|(c, _)| !(200..600).contains(*c))
                        .map(|(_, n)| *n as f64)
                        .sum(),
                )
            }),
        ),
        ("no response", BROWN, col(p, |x| Some(x.errors as f64))),
    ];
    let mut status: Vec<SeriesSpec> = candidates
        .into_iter()
        .filter(|(_, _, v)| any_positive(v))
        .map(|(n, c, v)| line(n, c, v))
        .collect();
    if status.is_empty() {
        status.push(line("2xx", GREEN, col(p, |x| class(x, 200, 299))));
    }
    figure(
        out,
        input,
        Chart {
            id: "chart-status",
            title: "Responses by status, 429s and Retry-After pauses",
            caption: "responses per second by status; shaded: a limit's scope paused by the server's Retry-After",
            kind: Kind::StackedBars,
            unit: Unit::PerSec,
            series: status,
            bands: true,
        },
    );

    // latency
    figure(
        out,
        input,
        Chart {
            id: "chart-duration",
            title: "Latency from the intended start (http_req_duration)",
            caption: "p50/p95/p99 of the requests completed each second: includes pacer's limiter wait, pauses, backoff and retries",
            kind: Kind::Lines,
            unit: Unit::Millis,
            series: vec![
                line("p50", LIGHT_BLUE, col(p, |x| x.duration_p50_ms)),
                line("p95", ORANGE, col(p, |x| x.duration_p95_ms)),
                line("p99", RED, col(p, |x| x.duration_p99_ms)),
            ],
            bands: true,
        },
    );
    figure(
        out,
        input,
        Chart {
            id: "chart-service-time",
            title: "Server service time (http_req_service_time)",
            caption: "p50/p95/p99 of the attempts each second, from send to end of response: the server's own time",
            kind: Kind::Lines,
            unit: Unit::Millis,
            series: vec![
                line("p50", LIGHT_BLUE, col(p, |x| x.service_time_p50_ms)),
                line("p95", ORANGE, col(p, |x| x.service_time_p95_ms)),
                line("p99", RED, col(p, |x| x.service_time_p99_ms)),
            ],
            bands: false,
        },
    );

    // where the time went
    let _ = write!(
        out,
        r#"<figure id="fig-time-share"><h3>Where the time went</h3><figcaption>time of all requests: the server vs pacer's own throttle vs Retry-After pauses vs retry backoff</figcaption>"#
    );
    let t = &input.summary.time;
    let parts = [
        ("server", NAVY, &t.server),
        ("pacer limiter wait", YELLOW, &t.limiter_wait),
        ("paused by Retry-After", ORANGE, &t.paused),
        ("retry backoff", PURPLE, &t.backoff),
    ];
    legend(
        out,
        &parts
            .iter()
            .map(|(n, c, _)| (*n, *c, false))
            .collect::<Vec<_>>(),
        None,
    );
    out.push_str(r#"<div class="share" id="time-share">"#);
    for (name, color, share) in &parts {
        let w = if share.share.is_finite() {
            (share.share * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        };
        if w > 0.0 {
            let _ = write!(
                out,
                r#"<span style="width:{w:.3}%;background:{color}" title="{}: {} ({:.1}%)"></span>"#,
                Html(name),
                Html(&format_ms(share.total_secs * 1000.0)),
                w
            );
        }
    }
    out.push_str("</div>");
    let _ = write!(
        out,
        r#"<table id="table-time"><tr><th></th><th class="n">total</th><th class="n">share</th></tr>"#
    );
    for (name, color, share) in &parts {
        let _ = write!(
            out,
            r#"<tr><td><span class="sw" style="background:{color}"></span>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            Html(name),
            Html(&format_ms(share.total_secs * 1000.0)),
            pct(Some(share.share))
        );
    }
    out.push_str("</table></figure>");
    figure(
        out,
        input,
        Chart {
            id: "chart-time",
            title: "Where the time went, per second",
            caption: "seconds of request time per second, summed over the requests completed in it",
            kind: Kind::StackedBars,
            unit: Unit::Secs,
            series: vec![
                line("server", NAVY, col(p, |x| Some(x.server_secs))),
                line(
                    "pacer limiter wait",
                    YELLOW,
                    col(p, |x| Some(x.limiter_wait_secs)),
                ),
                line(
                    "paused by Retry-After",
                    ORANGE,
                    col(p, |x| Some(x.paused_secs)),
                ),
                line("retry backoff", PURPLE, col(p, |x| Some(x.backoff_secs))),
            ],
            bands: false,
        },
    );

    // what went wrong, per second
    let per_sec = |n: u64, secs: f64| Some(if secs > 1e-3 { n as f64 / secs } else { 0.0 });
    let mut problems = vec![
        line(
            "failed requests",
            RED,
            col(p, |x| per_sec(x.failures, x.secs)),
        ),
        line("429s", ORANGE, col(p, |x| per_sec(x.throttled, x.secs))),
    ];
    for (name, color, values) in [
        ("no response", BROWN, col(p, |x| per_sec(x.errors, x.secs))),
        (
            "dropped iterations",
            PURPLE,
            col(p, |x| per_sec(x.dropped_iterations, x.secs)),
        ),
    ] {
        if any_positive(&values) {
            problems.push(line(name, color, values));
        }
    }
    figure(
        out,
        input,
        Chart {
            id: "chart-failures",
            title: "Failures, 429s and dropped iterations",
            caption: "per second: logical requests that failed, 429 answers, attempts without a response, arrivals dropped at maxInFlight",
            kind: Kind::Lines,
            unit: Unit::PerSec,
            series: problems,
            bands: true,
        },
    );

    // server headers
    let mut headers = Vec::new();
    for (name, color, v) in [
        (
            "limit",
            GREEN,
            col(p, |x| x.ratelimit_limit.map(|v| v as f64)),
        ),
        (
            "remaining",
            NAVY,
            col(p, |x| x.ratelimit_remaining.map(|v| v as f64)),
        ),
        (
            "count",
            RED,
            col(p, |x| x.ratelimit_count.map(|v| v as f64)),
        ),
    ] {
        if v.iter().any(Option::is_some) {
            headers.push(line(name, color, v));
        }
    }
    let source = p
        .iter()
        .rev()
        .find_map(|x| x.ratelimit_source.clone())
        .unwrap_or_default();
    let caption = if source.is_empty() {
        "the server sent no rate-limit headers".to_string()
    } else {
        format!("the last {source} headers seen by the end of each second")
    };
    figure(
        out,
        input,
        Chart {
            id: "chart-ratelimit",
            title: "The server's rate-limit headers",
            caption: &caption,
            kind: Kind::Lines,
            unit: Unit::Count,
            series: headers,
            bands: true,
        },
    );
    out.push_str("</section>");
}

fn thresholds(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="thresholds"><h2>Thresholds</h2>"#);
    if s.thresholds.is_empty() {
        out.push_str(r#"<p class="note" id="table-thresholds">The plan declares no thresholds.</p></section>"#);
        return;
    }
    out.push_str(r#"<table id="table-thresholds"><tr><th class="mark"></th><th>metric</th><th>threshold</th><th>observed</th></tr>"#);
    for t in &s.thresholds {
        let _ = write!(
            out,
            r#"<tr data-passed="{}"><td class="{}">{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>"#,
            t.passed,
            if t.passed { "ok" } else { "ko" },
            if t.passed { "✓" } else { "✗" },
            Html(&t.key),
            Html(&t.expr),
            Html(&observed(t)),
            if t.abort_on_fail {
                " (abortOnFail)"
            } else {
                ""
            }
        );
    }
    out.push_str("</table></section>");
}

fn requests_table(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="requests"><h2>Requests</h2><table id="table-requests"><tr><th>scenario</th><th>request</th><th class="n">http_reqs</th><th class="n">rate</th><th class="n">failed</th><th class="n">429</th><th class="n">retries</th><th class="n">p50</th><th class="n">p95</th><th class="n">p99</th><th class="n">max</th><th class="n">service p50</th><th class="n">service p95</th><th class="n">service p99</th></tr>"#);
    let rows = s.requests.iter().chain(std::iter::once(&s.totals));
    for r in rows {
        let total = r.scenario == "*" && r.request == "*";
        let (d, st) = (&r.duration_ms, &r.service_time_ms);
        let _ = write!(
            out,
            r#"<tr data-scenario="{}" data-request="{}"><td>{}</td><td>{}</td><td class="n" data-value="{}">{}</td><td class="n">{:.2}/s</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n" data-value="{}">{}</td><td class="n" data-value="{}">{}</td><td class="n" data-value="{}">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            Html(&r.scenario),
            Html(&r.request),
            if total {
                "<b>all</b>".to_string()
            } else {
                html(&r.scenario)
            },
            if total {
                String::new()
            } else {
                html(&r.request)
            },
            r.http_reqs,
            r.http_reqs,
            r.rate_per_sec,
            pct(r.failed_rate),
            r.throttled,
            r.retries,
            d.p50.map(data).unwrap_or_default(),
            opt_ms(d.p50),
            d.p95.map(data).unwrap_or_default(),
            opt_ms(d.p95),
            d.p99.map(data).unwrap_or_default(),
            opt_ms(d.p99),
            opt_ms(d.max),
            opt_ms(st.p50),
            opt_ms(st.p95),
            opt_ms(st.p99),
        );
    }
    out.push_str("</table></section>");
}

fn workers_table(out: &mut String, workers: &[WorkerRow]) {
    if workers.is_empty() {
        return;
    }
    out.push_str(r#"<section id="workers"><h2>Workers</h2><table id="table-workers"><tr><th>worker</th><th class="n">http_reqs</th><th class="n">rate</th><th class="n">failed</th><th class="n">429</th><th class="n">p95</th><th class="n">service p95</th><th class="n">iterations</th><th class="n">dropped</th></tr>"#);
    for w in workers {
        let t = &w.totals;
        let _ = write!(
            out,
            r#"<tr data-worker="{}"><td>{}</td><td class="n">{}</td><td class="n">{:.2}/s</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            Html(&w.worker),
            Html(&w.worker),
            t.http_reqs,
            t.rate_per_sec,
            pct(t.failed_rate),
            t.throttled,
            opt_ms(t.duration_ms.p95),
            opt_ms(t.service_time_ms.p95),
            w.scenarios.iterations,
            w.scenarios.dropped_iterations
        );
    }
    out.push_str("</table></section>");
}

fn limits_section(out: &mut String, input: &ReportInput<'_>) {
    let s = input.summary;
    out.push_str(
        r#"<section id="limits"><h2>Limits, 429s and Retry-After</h2><div class="two"><div>"#,
    );
    if s.limits.is_empty() {
        out.push_str(r#"<p class="note">The plan declares no limits: pacer did not pace.</p>"#);
    } else {
        out.push_str(r#"<table id="table-limits"><tr><th>limit</th><th>declared</th><th class="n">paced at</th><th class="n">margin</th><th class="n">pauses</th><th class="n">paused</th></tr>"#);
        for l in &s.limits {
            let mut pace = format!("{:.2}/s", l.pacing_rate);
            if l.adaptive {
                let _ = write!(
                    pace,
                    " (adaptive, now {}, sustainable {})",
                    l.current_rate.map_or("-".into(), |r| format!("{r:.2}/s")),
                    l.sustainable_rate
                        .map_or("-".into(), |r| format!("{r:.2}/s"))
                );
            }
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{} burst {} ({})</td><td class="n">{}</td><td class="n">{:.1}%</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                Html(&l.name),
                Html(&l.declared),
                l.burst,
                Html(&l.scope),
                Html(&pace),
                l.margin * 100.0,
                l.pauses,
                Html(&format_ms(l.paused_secs * 1000.0))
            );
        }
        out.push_str("</table>");
    }
    let ra = &s.retry_after;
    let _ = write!(
        out,
        r#"<p class="note" id="retry-after">Retry-After: {} seen, {} malformed{}.</p>"#,
        ra.count,
        ra.malformed,
        if ra.count > 0 {
            format!(
                "; min {}, p50 {}, p95 {}, max {}",
                opt_ms(ra.ms.min),
                opt_ms(ra.ms.p50),
                opt_ms(ra.ms.p95),
                opt_ms(ra.ms.max)
            )
        } else {
            String::new()
        }
    );
    let pauses = &input.series.pauses;
    if !pauses.is_empty() {
        let listed: Vec<String> = pauses
            .iter()
            .take(12)
            .map(|w| {
                format!(
                    "{} {}–{}",
                    w.limit,
                    svg::short_secs(w.start_secs),
                    svg::short_secs(w.end_secs)
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<p class="note" id="pauses">Pauses (to the second): {}{}{}.</p>"#,
            Html(&listed.join(", ")),
            if pauses.len() > listed.len() {
                format!(", and {} more", pauses.len() - listed.len())
            } else {
                String::new()
            },
            if input.series.pauses_truncated {
                " (more pauses happened than the report keeps)"
            } else {
                ""
            }
        );
    }
    out.push_str("</div><div>");
    out.push_str(r#"<table id="table-throttled"><tr><th>429s by the limit the server named</th><th class="n">429s</th></tr>"#);
    if s.throttled_by_server_limit.is_empty() {
        out.push_str(r#"<tr><td colspan="2">none</td></tr>"#);
    }
    for (name, n) in &s.throttled_by_server_limit {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="n">{n}</td></tr>"#,
            Html(name)
        );
    }
    out.push_str(r#"<tr><th>429s by declared limit</th><th class="n">429s</th></tr>"#);
    if s.throttled_by_limit.is_empty() {
        out.push_str(r#"<tr><td colspan="2">none</td></tr>"#);
    }
    for l in &s.throttled_by_limit {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="n">{}</td></tr>"#,
            Html(&l.name),
            l.count
        );
    }
    out.push_str("</table>");
    if let Some(h) = &s.server_limits {
        let mut parts = Vec::new();
        if let Some(v) = h.limit {
            parts.push(format!("limit={v}"));
        }
        if let Some(v) = h.remaining {
            parts.push(format!("remaining={v}"));
        }
        if let Some(v) = h.count {
            parts.push(format!("count={v}"));
        }
        if let Some(v) = h.reset_secs.filter(|v| v.is_finite()) {
            parts.push(format!("reset={}", format_ms(v * 1000.0)));
        }
        if let Some(v) = &h.policy {
            parts.push(format!("policy={v}"));
        }
        let _ = write!(
            out,
            r#"<p class="note" id="server-headers">Last rate-limit headers ({}): {}.</p>"#,
            Html(&h.source),
            Html(&parts.join(" "))
        );
    }
    if !s.token_fetches.is_empty() {
        out.push_str(r#"<table id="table-tokens"><tr><th>token fetches</th><th class="n">fetches</th><th class="n">waited</th><th class="n">avg</th></tr>"#);
        for t in &s.token_fetches {
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                Html(&t.credential),
                t.fetches,
                Html(&format_ms(t.wait_total_ms)),
                Html(&opt_ms(t.wait_avg_ms))
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</div></div></section>");
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

/// The whole report as one HTML document.
pub fn render(input: &ReportInput<'_>) -> String {
    let s = input.summary;
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="generator" content="pacer {}"><title>pacer report: {}</title><style>{CSS}</style></head><body><main>"#,
        env!("CARGO_PKG_VERSION"),
        Html(&s.name)
    );

    // header and verdict
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
    let started = input
        .started_unix_ms
        .map(|ms| format!("started {} · ", utc(ms)))
        .unwrap_or_default();
    let _ = write!(
        out,
        r#"<header class="top"><div><h1 id="plan-name">{}</h1><div class="meta">{}ran {} · {} seconds in the series · pacer {}</div></div><div id="verdict" class="verdict {}" data-passed="{}">{}<small>{}</small></div></header>"#,
        Html(&s.name),
        Html(&started),
        Html(&format_ms(s.elapsed_secs * 1000.0)),
        input.series.points.len(),
        env!("CARGO_PKG_VERSION"),
        if passed { "pass" } else { "fail" },
        passed,
        if passed { "PASSED" } else { "FAILED" },
        Html(&detail)
    );

    // key numbers; a tile whose metric failed a threshold is marked
    let t = &s.totals;
    let failed_on = |metric: &str| {
        s.thresholds
            .iter()
            .any(|r| !r.passed && r.key.split('{').next().is_some_and(|k| k.trim() == metric))
    };
    out.push_str(r#"<section class="tiles" id="tiles">"#);
    tile(
        &mut out,
        "tile-http-reqs",
        "http_reqs",
        &t.http_reqs.to_string(),
        &format!("{:.2}/s · {} logical", t.rate_per_sec, t.requests),
        t.http_reqs as f64,
        false,
    );
    tile(
        &mut out,
        "tile-duration-p95",
        "http_req_duration p95",
        &opt_ms(t.duration_ms.p95),
        &format!("p99 {}", opt_ms(t.duration_ms.p99)),
        t.duration_ms.p95.unwrap_or(f64::NAN),
        failed_on("http_req_duration"),
    );
    tile(
        &mut out,
        "tile-service-p95",
        "service_time p95",
        &opt_ms(t.service_time_ms.p95),
        &format!("p99 {}", opt_ms(t.service_time_ms.p99)),
        t.service_time_ms.p95.unwrap_or(f64::NAN),
        failed_on("http_req_service_time"),
    );
    tile(
        &mut out,
        "tile-throttled",
        "429s",
        &t.throttled.to_string(),
        &format!("{} of attempts", pct(t.throttled_rate)),
        t.throttled as f64,
        t.throttled > 0 || failed_on("http_reqs_throttled"),
    );
    tile(
        &mut out,
        "tile-failed",
        "http_req_failed",
        &pct(t.failed_rate),
        &format!("{} failed", t.failed),
        t.failed as f64,
        t.failed > 0 || failed_on("http_req_failed"),
    );
    let it = &s.scenario_totals;
    tile(
        &mut out,
        "tile-iterations",
        "iterations",
        &it.iterations.to_string(),
        &format!(
            "{} dropped · {} interrupted",
            it.dropped_iterations, it.interrupted
        ),
        it.iterations as f64,
        it.dropped_iterations > 0,
    );
    let pauses: u64 = s.limits.iter().map(|l| l.pauses).sum();
    tile(
        &mut out,
        "tile-pauses",
        "Retry-After pauses",
        &pauses.to_string(),
        &format!(
            "{} held · {} retries",
            format_ms(s.limits.iter().map(|l| l.paused_secs).sum::<f64>() * 1000.0),
            s.retries.retries
        ),
        pauses as f64,
        false,
    );
    out.push_str("</section>");

    thresholds(&mut out, s);
    out.push_str("<h2>Over time</h2>");
    charts(&mut out, input);
    limits_section(&mut out, input);
    requests_table(&mut out, s);
    workers_table(&mut out, input.workers);

    out.push_str(r#"<section id="plan"><h2>The plan that ran</h2><p class="note">As written: <code>${env:…}</code> and <code>${file:…}</code> references are not resolved, and values under credential keys are redacted.</p>"#);
    let listing = input
        .plan_source
        .map(plan_listing)
        .unwrap_or_else(|| "(not available)".into());
    let _ = write!(
        out,
        r#"<pre id="plan-source">{}</pre></section>"#,
        Html(&listing)
    );
    if s.invalid_records > 0 {
        let _ = write!(
            out,
            r#"<p class="note">Warning: {} records named an unknown scenario or request and were ignored.</p>"#,
            s.invalid_records
        );
    }
    out.push_str(r#"<footer>Generated by pacer. This file is self-contained: no scripts, no network access when it is viewed.</footer></main></body></html>"#);
    out.push('\n');
    out
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

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }
}
