//! Rendering the [`Summary`]: k6-like text for the terminal, pretty JSON for `--summary-json`.
//!
//! Text rendering only formats what the summary holds; anything without data prints `-`, so
//! an empty run prints no NaN or infinity.

use std::fmt::Write as _;

use pacer_plan::threshold::{Aggregation, MetricKind, parse_expr, parse_metric_key};

use crate::eval::ThresholdResult;
use crate::snapshot::ServerLimitHeaders;
use crate::summary::{RequestRow, Summary, TimeShare, TrendSummary};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// An adaptive limit's sustainable rate when none was measured (no stretch at its full rate
/// without a refusal, e.g. the load never reached it): said, not shown as the ceiling.
pub const NOT_MEASURED: &str = "not measured";

/// The summary as pretty JSON (the `--summary-json` document).
pub fn render_json(summary: &Summary) -> String {
    // Every number in a Summary is finite and every map key a string or integer, so this
    // cannot fail; should it ever, an error object is still valid JSON.
    serde_json::to_string_pretty(summary).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("could not serialize the summary: {e}") }).to_string()
    })
}

/// A human duration from milliseconds: `850µs`, `4.25ms`, `412.3ms`, `1.52s`, `2m03s`, `1h02m`.
pub fn format_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        return "-".to_string();
    }
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else if ms < 60_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let secs = (ms / 1000.0).round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        let mins = (ms / 60_000.0).round() as u64;
        format!("{}h{:02}m", mins / 60, mins % 60)
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), format_ms)
}

fn percent(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.2}%", v * 100.0),
        _ => "-".to_string(),
    }
}

/// Bytes in SI units, as k6 prints them.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn mark(passed: bool, color: bool) -> String {
    let (sym, c) = if passed { ("✓", GREEN) } else { ("✗", RED) };
    if color {
        format!("{c}{sym}{RESET}")
    } else {
        sym.to_string()
    }
}

/// `p(95)=412.3ms`, `rate=0.12%`, `count=42`, `rate=3.50/s`, or `no data`: the measured value
/// of a threshold in its metric's unit (the text summary and the HTML report both show it).
pub fn measured(t: &ThresholdResult) -> String {
    let Some(v) = t.observed else {
        return "no data".to_string();
    };
    // Results carry the key and expression as written; parse them again to know the unit.
    let parsed = parse_metric_key(&t.key)
        .ok()
        .and_then(|(m, _)| parse_expr(m, &t.expr).ok().map(|(agg, _, _)| (m, agg)));
    let Some((metric, agg)) = parsed else {
        return format!("observed={v}");
    };
    let label = match agg {
        Aggregation::Percentile(p) => format!("p({p})"),
        Aggregation::Avg => "avg".into(),
        Aggregation::Min => "min".into(),
        Aggregation::Max => "max".into(),
        Aggregation::Med => "med".into(),
        Aggregation::Count => "count".into(),
        Aggregation::Rate => "rate".into(),
    };
    let value = match (metric.kind(), agg) {
        (MetricKind::Trend, _) => format_ms(v),
        (MetricKind::Rate, _) => percent(Some(v)),
        (MetricKind::Counter, Aggregation::Rate) => format!("{v:.2}/s"),
        (MetricKind::Counter, _) => format!("{v:.0}"),
    };
    format!("{label}={value}")
}

/// `label ....: value` lines, k6 style.
fn line(out: &mut String, label: &str, value: &str) {
    let dots = 22usize.saturating_sub(label.chars().count() + 1).max(2);
    let _ = writeln!(out, "  {label} {}: {value}", ".".repeat(dots));
}

fn trend_line(t: &TrendSummary) -> String {
    if t.count == 0 {
        return "no data".to_string();
    }
    format!(
        "avg={} min={} p(50)={} p(90)={} p(95)={} p(99)={} max={}",
        opt_ms(t.avg),
        opt_ms(t.min),
        opt_ms(t.p50),
        opt_ms(t.p90),
        opt_ms(t.p95),
        opt_ms(t.p99),
        opt_ms(t.max)
    )
}

fn thresholds(out: &mut String, s: &Summary, color: bool) {
    if s.thresholds.is_empty() {
        return;
    }
    let failed = s.thresholds.iter().filter(|t| !t.passed).count();
    let _ = writeln!(
        out,
        "  thresholds: {} passed, {failed} failed",
        s.thresholds.len() - failed
    );
    let width = s
        .thresholds
        .iter()
        .map(|t| t.key.chars().count() + 1 + t.expr.chars().count())
        .max()
        .unwrap_or(0);
    for t in &s.thresholds {
        let what = format!("{} {}", t.key, t.expr);
        let pad = width - what.chars().count();
        let abort = if t.abort_on_fail && !t.passed {
            "  (abortOnFail)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    {} {what}{}  {}{abort}",
            mark(t.passed, color),
            " ".repeat(pad),
            measured(t)
        );
    }
    out.push('\n');
}

/// One line when the run did not pass, with every reason (a run without data says so here
/// even when it has no thresholds).
fn verdict(out: &mut String, s: &Summary, color: bool) {
    if s.passed {
        return;
    }
    let _ = writeln!(
        out,
        "  {} verdict: FAILED: {}\n",
        mark(false, color),
        s.verdict_reasons.join("; ")
    );
}

fn totals(out: &mut String, s: &Summary) {
    let t = &s.totals;
    line(
        out,
        "http_reqs",
        &format!("{}  {:.2}/s", t.http_reqs, t.rate_per_sec),
    );
    line(
        out,
        "requests",
        &format!("{} logical, {} retries", t.requests, t.retries),
    );
    line(
        out,
        "http_req_failed",
        &format!("{}  {}", percent(t.failed_rate), t.failed),
    );
    line(
        out,
        "429 (throttled)",
        &format!("{}  {} of attempts", t.throttled, percent(t.throttled_rate)),
    );
    if t.checks_passed.saturating_add(t.checks_failed) > 0 {
        line(
            out,
            "checks",
            &format!(
                "{}  {} passed, {} failed",
                percent(t.checks_rate),
                t.checks_passed,
                t.checks_failed
            ),
        );
    }
    line(out, "http_req_duration", &trend_line(&t.duration_ms));
    line(out, "service_time", &trend_line(&t.service_time_ms));
    if t.send_lag_ms.count > 0 {
        line(out, "send_lag", &trend_line(&t.send_lag_ms));
    }
    let it = &s.scenario_totals;
    line(
        out,
        "iterations",
        &format!(
            "{}  {:.2}/s  ({} failed, {} interrupted)",
            it.iterations, it.iterations_per_sec, it.iterations_failed, it.interrupted
        ),
    );
    line(
        out,
        "iteration_duration",
        &trend_line(&it.iteration_duration_ms),
    );
    line(
        out,
        "dropped_iterations",
        &it.dropped_iterations.to_string(),
    );
    line(
        out,
        "data",
        &format!(
            "sent {}, received {}",
            format_bytes(t.data_sent),
            format_bytes(t.data_received)
        ),
    );
    if !t.errors.is_empty() {
        let errors: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line(out, "errors", &errors.join(" "));
    }
    let r = &s.retries;
    if r.retries > 0 || r.gave_up > 0 {
        line(
            out,
            "retry outcomes",
            &format!(
                "{} succeeded after retry, {} gave up, {} not retryable",
                r.succeeded_after_retry, r.gave_up, r.not_retryable
            ),
        );
    }
    out.push('\n');
}

fn time_breakdown(out: &mut String, s: &Summary) {
    let t = &s.time;
    let _ = writeln!(out, "  where the time went (summed over all requests)");
    let rows: [(&str, &TimeShare); 4] = [
        ("server (send to response)", &t.server),
        ("pacer limiter wait", &t.limiter_wait),
        ("paused by Retry-After", &t.paused),
        ("retry backoff", &t.backoff),
    ];
    if rows.iter().all(|(_, r)| r.total_secs <= 0.0) {
        let _ = writeln!(out, "    nothing recorded");
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|(name, r)| {
                vec![
                    (*name).to_string(),
                    format_ms(r.total_secs * 1000.0),
                    percent(Some(r.share)),
                ]
            })
            .collect();
        table(out, "    ", &cells, &[false, true, true]);
    }
    out.push('\n');
}

/// What the server's headers last said of a limit, in the words of the text summary and the
/// HTML report: `org: the server last said 57 left of 200; others (outside pacer) used 30.12/s`.
pub fn server_said(limit: &str, said: &crate::ServerSaid) -> String {
    format!(
        "{limit}: the server last said {} left{}; others (outside pacer) used {:.2}/s",
        said.remaining,
        said.limit.map_or(String::new(), |n| format!(" of {n}")),
        said.others_rate
    )
}

fn limits(out: &mut String, s: &Summary) {
    if s.limits.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  limits (pacer paces to stay inside what the server allows)"
    );
    let cells: Vec<Vec<String>> = s
        .limits
        .iter()
        .map(|l| {
            let mut pace = format!(
                "paced at {:.2}/s (margin {:.1}%)",
                l.pacing_rate,
                l.margin * 100.0
            );
            if l.adaptive {
                let _ = write!(
                    pace,
                    ", adaptive: now {}, sustainable {}",
                    l.current_rate.map_or("-".into(), |r| format!("{r:.2}/s")),
                    l.sustainable_rate
                        .map_or(NOT_MEASURED.into(), |r| format!("{r:.2}/s"))
                );
            }
            vec![
                l.name.clone(),
                format!("{} burst {} ({})", l.declared, l.burst, l.scope),
                pace,
                format!("{} pauses, {}", l.pauses, format_ms(l.paused_secs * 1000.0)),
            ]
        })
        .collect();
    table(out, "    ", &cells, &[false, false, false, false]);
    for l in &s.limits {
        if let Some(said) = &l.server {
            let _ = writeln!(out, "    {}", server_said(&l.name, said));
        }
    }
    if let Some(f) = s.limits.iter().find_map(|l| l.fleet.as_ref()) {
        let _ = writeln!(
            out,
            "    fleet: {} processes; this one made {} Redis calls; safe mode {}; paused for Redis {}",
            f.workers,
            f.redis_calls,
            format_ms(f.safe_mode_secs * 1000.0),
            format_ms(f.unavailable_secs * 1000.0)
        );
        if let Some(r) = &f.unavailable_reason {
            let _ = writeln!(out, "    sending paused: {r}");
        }
    }
    out.push('\n');
}

fn throttling(out: &mut String, s: &Summary) {
    let ra = &s.retry_after;
    if s.throttled_by_limit.is_empty()
        && s.throttled_by_server_limit.is_empty()
        && ra.count == 0
        && ra.malformed == 0
    {
        return;
    }
    if !s.throttled_by_server_limit.is_empty() {
        let _ = writeln!(out, "  429s by the limit the server named");
        let cells: Vec<Vec<String>> = s
            .throttled_by_server_limit
            .iter()
            .map(|(name, n)| vec![name.clone(), n.to_string()])
            .collect();
        table(out, "    ", &cells, &[false, true]);
    }
    if !s.throttled_by_limit.is_empty() {
        let _ = writeln!(
            out,
            "  429s by declared limit (the plan's limits the request matched)"
        );
        let cells: Vec<Vec<String>> = s
            .throttled_by_limit
            .iter()
            .map(|l| vec![l.name.clone(), l.count.to_string()])
            .collect();
        table(out, "    ", &cells, &[false, true]);
    }
    let mut text = format!("{} seen, {} malformed", ra.count, ra.malformed);
    if ra.count > 0 {
        let _ = write!(
            text,
            "; min {}, p50 {}, p95 {}, max {}",
            opt_ms(ra.ms.min),
            opt_ms(ra.ms.p50),
            opt_ms(ra.ms.p95),
            opt_ms(ra.ms.max)
        );
    }
    let _ = writeln!(out, "  Retry-After: {text}");
    out.push('\n');
}

fn tokens_and_server(out: &mut String, s: &Summary) {
    if !s.token_fetches.is_empty() {
        let _ = writeln!(out, "  token fetches");
        let cells: Vec<Vec<String>> = s
            .token_fetches
            .iter()
            .map(|t| {
                vec![
                    t.credential.clone(),
                    format!(
                        "{} fetch{}",
                        t.fetches,
                        if t.fetches == 1 { "" } else { "es" }
                    ),
                    format!("waited {} total", format_ms(t.wait_total_ms)),
                    format!("{} avg", opt_ms(t.wait_avg_ms)),
                ]
            })
            .collect();
        table(out, "    ", &cells, &[false, true, true, true]);
        out.push('\n');
    }
    if let Some(h) = &s.server_limits {
        let _ = writeln!(
            out,
            "  server rate-limit headers (last seen, {}): {}",
            h.source,
            server_limit_values(h)
        );
        out.push('\n');
    }
}

/// The values of the last rate-limit headers a server sent, as `limit=100 remaining=7
/// reset=12.00s policy="100;w=60"` (`no values` when it sent none we read). One wording for the
/// text summary and the HTML report. The policy is the server's own text, quoted and escaped so
/// it cannot end the line or pass a control character to a terminal.
pub fn server_limit_values(h: &ServerLimitHeaders) -> String {
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
        parts.push(format!("policy={v:?}"));
    }
    if parts.is_empty() {
        "no values".to_string()
    } else {
        parts.join(" ")
    }
}

fn request_table(out: &mut String, rows: &[RequestRow]) {
    if rows.is_empty() {
        return;
    }
    let mut cells = vec![
        [
            "scenario/request",
            "reqs",
            "rate/s",
            "fail%",
            "429",
            "p50",
            "p95",
            "p99",
            "max",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        let d = &r.duration_ms;
        cells.push(vec![
            format!("{}/{}", r.scenario, r.request),
            r.http_reqs.to_string(),
            format!("{:.2}", r.rate_per_sec),
            percent(r.failed_rate),
            r.throttled.to_string(),
            opt_ms(d.p50),
            opt_ms(d.p95),
            opt_ms(d.p99),
            opt_ms(d.max),
        ]);
    }
    let right = [false, true, true, true, true, true, true, true, true];
    table(out, "  ", &cells, &right);
}

/// Aligned columns; `right[i]` right-aligns column `i`.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>], right: &[bool]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut text = String::from(indent);
        for (c, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[c].saturating_sub(cell.chars().count()));
            if c > 0 {
                text.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&pad);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    }
}

/// How the text summary and the HTML report name the hosts a plan allows besides its target.
pub const ALLOWED_HOSTS: &str =
    "also allowed besides the target (http.allowHosts, sent no credentials)";

/// The k6-like end-of-test summary. `color` adds ANSI colors to the ✓/✗ marks only.
/// The evidence ledger's counts, and where its lines are.
fn evidence(out: &mut String, s: &Summary) {
    if s.evidence.is_empty() {
        return;
    }
    let counts: Vec<String> = s
        .evidence
        .iter()
        .map(|(cause, n)| format!("{n} {}", cause.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "\n  evidence: {} (--out ledger=FILE: time, attempt, correlation id, server request id, \
         limit of each)",
        counts.join(", ")
    );
}

pub fn render_text(summary: &Summary, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {}  ({})\n",
        summary.name,
        format_ms(summary.elapsed_secs * 1000.0)
    );
    thresholds(&mut out, summary, color);
    verdict(&mut out, summary, color);
    totals(&mut out, summary);
    time_breakdown(&mut out, summary);
    limits(&mut out, summary);
    throttling(&mut out, summary);
    tokens_and_server(&mut out, summary);
    request_table(&mut out, &summary.requests);
    evidence(&mut out, summary);
    if !summary.allowed_hosts.is_empty() {
        let _ = writeln!(
            out,
            "\n  {ALLOWED_HOSTS}: {}",
            summary.allowed_hosts.join(", ")
        );
    }
    if summary.invalid_records > 0 {
        let _ = writeln!(
            out,
            "\n  warning: {} records named an unknown scenario or request and were ignored",
            summary.invalid_records
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_humanly() {
        assert_eq!(format_ms(0.85), "850µs");
        assert_eq!(format_ms(4.254), "4.25ms");
        assert_eq!(format_ms(412.34), "412.3ms");
        assert_eq!(format_ms(1520.0), "1.52s");
        assert_eq!(format_ms(123_000.0), "2m03s");
        assert_eq!(format_ms(3_720_000.0), "1h02m");
        assert_eq!(format_ms(f64::NAN), "-");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1_234_567), "1.2 MB");
    }

    #[test]
    fn server_limit_values_name_each_value_sent() {
        let mut h = ServerLimitHeaders {
            source: "x-ratelimit".into(),
            ..ServerLimitHeaders::default()
        };
        assert_eq!(server_limit_values(&h), "no values");
        h.limit = Some(100);
        h.remaining = Some(7);
        h.reset_secs = Some(12.0);
        h.policy = Some("100;w=60\n".into());
        assert_eq!(
            server_limit_values(&h),
            r#"limit=100 remaining=7 reset=12.00s policy="100;w=60\n""#
        );
        h.reset_secs = Some(f64::INFINITY);
        h.policy = None;
        h.count = Some(3);
        assert_eq!(server_limit_values(&h), "limit=100 remaining=7 count=3");
    }
}
