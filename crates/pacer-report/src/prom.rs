//! Prometheus metrics: a [`Snapshot`] rendered in the text exposition format (version 0.0.4).
//!
//! Why not the `prometheus-client` crate: pacer already keeps exact cumulative counters and HDR
//! histograms in its snapshots, which is what a scrape needs. Registering client-library
//! metrics would mean updating a second set of counters on the hot path (or a custom collector
//! that translates the snapshot anyway); rendering the documented text format from the
//! snapshot keeps one source of truth and lets a worker, the controller (from merged
//! snapshots) and `pacer run` expose identical metrics with one function, [`render`].
//!
//! Names follow Prometheus conventions: `pacer_` prefix, snake_case, base units (seconds,
//! bytes), `_total` on counters. Latency histograms use the classic buckets of
//! [`LATENCY_BUCKETS_SECONDS`]; each bucket is the cumulative count of samples `<=` its bound,
//! computed from the HDR histogram (3 significant digits, so a sample within 0.1% above a
//! bound may be counted in it).

use std::fmt::Write as _;

use pacer_stats::{Hist, RequestStats, Snapshot};

use crate::escape::prom_label;
use crate::series::LimiterSample;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency histogram buckets, `+Inf` implied. Wide on purpose:
/// `http_req_duration` includes pacer's own limiter wait and Retry-After pauses.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The label `limit` takes on a 429 whose response named no limit.
pub const UNNAMED_LIMIT: &str = "(unnamed)";

/// What a scrape knows besides the snapshot.
#[derive(Clone, Debug, Default)]
pub struct MetricsContext {
    /// Labels on every sample (e.g. `worker="3"`); names must match `[a-zA-Z_][a-zA-Z0-9_]*`
    /// (others are dropped).
    pub const_labels: Vec<(String, String)>,
    /// The plan's name, for `pacer_info`.
    pub plan: String,
    /// The plan's limit names by index (for `pacer_limit_throttled_total`).
    pub limit_names: Vec<String>,
    /// The limiter's state, when this process has one.
    pub limits: Vec<LimiterSample>,
    /// Seconds since the run started.
    pub elapsed_secs: Option<f64>,
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A float as Prometheus reads it; non-finite values never reach here but would be `0`.
fn value(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "0".into()
    }
}

struct Writer {
    out: String,
    constant: Vec<(String, String)>,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: String) {
        self.out.push_str(name);
        let all: Vec<(&str, &str)> = self
            .constant
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(labels.iter().copied())
            .collect();
        if !all.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", prom_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&v);
        self.out.push('\n');
    }

    fn int(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.sample(name, labels, v.to_string());
    }

    fn float(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, labels, value(v));
    }

    /// Buckets, sum and count of one histogram in microseconds.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Hist, sum_us: f64) {
        let counts = cumulative_buckets(h, &LATENCY_BUCKETS_SECONDS);
        let bucket = format!("{name}_bucket");
        for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(&counts) {
            let le = value(*bound);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.int(&bucket, &l, *count);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.int(&bucket, &l, h.count());
        self.float(&format!("{name}_sum"), labels, sum_us / 1e6);
        self.int(&format!("{name}_count"), labels, h.count());
    }
}

/// Cumulative counts of samples `<=` each bound (seconds) of a histogram in microseconds.
/// A recorded HDR bucket counts toward a bound when its lowest equivalent value is within it.
pub fn cumulative_buckets(h: &Hist, bounds_secs: &[f64]) -> Vec<u64> {
    let bounds_us: Vec<u64> = bounds_secs
        .iter()
        .map(|b| (b * 1e6).round().clamp(0.0, u64::MAX as f64) as u64)
        .collect();
    let mut counts = vec![0u64; bounds_us.len()];
    let hist = h.histogram();
    for v in hist.iter_recorded() {
        let low = hist.lowest_equivalent(v.value_iterated_to());
        let i = bounds_us.partition_point(|&b| b < low);
        if let Some(c) = counts.get_mut(i) {
            *c = c.saturating_add(v.count_at_value());
        }
    }
    let mut running = 0u64;
    for c in &mut counts {
        running = running.saturating_add(*c);
        *c = running.min(h.count());
    }
    counts
}

/// Every (scenario, request, stats) of the snapshot.
fn requests(s: &Snapshot) -> impl Iterator<Item = (&str, &str, &RequestStats)> {
    s.scenarios.iter().flat_map(|sc| {
        sc.requests
            .iter()
            .map(move |r| (sc.name.as_str(), r.name.as_str(), &r.stats))
    })
}

/// The snapshot (cumulative since start) as Prometheus text. Families appear even when they
/// have no samples yet, so dashboards find them from the first scrape.
pub fn render(snapshot: &Snapshot, ctx: &MetricsContext) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
        constant: ctx
            .const_labels
            .iter()
            .filter(|(k, _)| valid_label_name(k))
            .cloned()
            .collect(),
    };

    w.family(
        "pacer_info",
        "gauge",
        "The plan this process runs (always 1).",
    );
    let version = env!("CARGO_PKG_VERSION");
    w.int(
        "pacer_info",
        &[("plan", &ctx.plan), ("version", version)],
        1,
    );
    if let Some(e) = ctx.elapsed_secs {
        w.family(
            "pacer_elapsed_seconds",
            "gauge",
            "Seconds since the run started.",
        );
        w.float("pacer_elapsed_seconds", &[], e);
    }

    w.family(
        "pacer_http_reqs_total",
        "counter",
        "HTTP exchanges (attempts, retries included) by response status; status=\"error\" for attempts without a response.",
    );
    for (s, r, st) in requests(snapshot) {
        let mut with_status = 0u64;
        for (code, n) in &st.status {
            with_status = with_status.saturating_add(*n);
            let code = code.to_string();
            w.int(
                "pacer_http_reqs_total",
                &[("scenario", s), ("request", r), ("status", &code)],
                *n,
            );
        }
        let without = st.attempts.saturating_sub(with_status);
        if without > 0 {
            w.int(
                "pacer_http_reqs_total",
                &[("scenario", s), ("request", r), ("status", "error")],
                without,
            );
        }
    }

    w.family(
        "pacer_http_req_errors_total",
        "counter",
        "Attempts without a response, by transport error kind (connect, timeout, tls, protocol, body, auth, limiter, other).",
    );
    for (s, r, st) in requests(snapshot) {
        for (kind, n) in &st.errors {
            w.int(
                "pacer_http_req_errors_total",
                &[("scenario", s), ("request", r), ("kind", kind)],
                *n,
            );
        }
    }

    w.family(
        "pacer_http_reqs_throttled_total",
        "counter",
        "Attempts answered 429, by the limit the server named (response body, [limit: X] message or RateLimit-Policy); limit=\"(unnamed)\" when it named none.",
    );
    for (s, r, st) in requests(snapshot) {
        let mut named = 0u64;
        for (limit, n) in &st.throttled_by_server_limit {
            named = named.saturating_add(*n);
            w.int(
                "pacer_http_reqs_throttled_total",
                &[("scenario", s), ("request", r), ("limit", limit)],
                *n,
            );
        }
        let unnamed = st.throttled.saturating_sub(named);
        if unnamed > 0 {
            w.int(
                "pacer_http_reqs_throttled_total",
                &[("scenario", s), ("request", r), ("limit", UNNAMED_LIMIT)],
                unnamed,
            );
        }
    }

    w.family(
        "pacer_limit_throttled_total",
        "counter",
        "429 answers to requests that matched a limit the plan declares (one 429 counts once for each limit its request matched).",
    );
    let total = snapshot.total();
    for (index, n) in &total.throttled_by_limit {
        let name = usize::try_from(*index)
            .ok()
            .and_then(|i| ctx.limit_names.get(i))
            .cloned()
            .unwrap_or_else(|| format!("limit#{index}"));
        w.int("pacer_limit_throttled_total", &[("limit", &name)], *n);
    }

    type Count = fn(&RequestStats) -> u64;
    let counters: [(&str, &str, Count); 5] = [
        (
            "pacer_requests_total",
            "Logical requests completed (after all their attempts).",
            |s| s.requests,
        ),
        (
            "pacer_requests_failed_total",
            "Logical requests whose final result failed (http_req_failed).",
            |s| s.failed,
        ),
        (
            "pacer_http_req_retries_total",
            "Attempts beyond the first.",
            |s| s.retries,
        ),
        ("pacer_data_sent_bytes_total", "Bytes sent.", |s| {
            s.bytes_sent
        }),
        ("pacer_data_received_bytes_total", "Bytes received.", |s| {
            s.bytes_received
        }),
    ];
    for (name, help, get) in counters {
        w.family(name, "counter", help);
        for (s, r, st) in requests(snapshot) {
            w.int(name, &[("scenario", s), ("request", r)], get(st));
        }
    }
    w.family(
        "pacer_checks_total",
        "counter",
        "Checks evaluated, by result (pass, fail).",
    );
    for (s, r, st) in requests(snapshot) {
        w.int(
            "pacer_checks_total",
            &[("scenario", s), ("request", r), ("result", "pass")],
            st.checks_passed,
        );
        w.int(
            "pacer_checks_total",
            &[("scenario", s), ("request", r), ("result", "fail")],
            st.checks_failed,
        );
    }

    type HistOf = fn(&RequestStats) -> (&Hist, u64);
    let histograms: [(&str, &str, HistOf); 5] = [
        (
            "pacer_http_req_duration_seconds",
            "http_req_duration: from the intended start to the end of the final response, per logical request (includes pacer's limiter wait, pauses, backoff, retries).",
            |s| (&s.duration, s.duration_us_sum),
        ),
        (
            "pacer_http_req_service_time_seconds",
            "Send to end of response, per attempt: the server's own time.",
            |s| (&s.service_time, s.service_time_us_sum),
        ),
        (
            "pacer_http_req_limiter_wait_seconds",
            "Time a logical request waited on pacer's own limiter (pacing).",
            |s| (&s.limiter_wait, s.limiter_wait_us_sum),
        ),
        (
            "pacer_http_req_paused_seconds",
            "Time a logical request waited because its limit's scope was paused by a Retry-After.",
            |s| (&s.paused, s.paused_us_sum),
        ),
        (
            "pacer_http_req_backoff_seconds",
            "Time a logical request slept between retries.",
            |s| (&s.backoff, s.backoff_us_sum),
        ),
    ];
    for (name, help, get) in histograms {
        w.family(name, "histogram", help);
        for (s, r, st) in requests(snapshot) {
            let (h, sum) = get(st);
            w.histogram(name, &[("scenario", s), ("request", r)], h, sum as f64);
        }
    }

    type ScenarioCount = fn(&pacer_stats::ScenarioStats) -> u64;
    let scenario_counters: [(&str, &str, ScenarioCount); 4] = [
        ("pacer_iterations_total", "Iterations completed.", |s| {
            s.iterations
        }),
        (
            "pacer_iterations_failed_total",
            "Iterations completed with a failed request or check.",
            |s| s.iterations_failed,
        ),
        (
            "pacer_iterations_interrupted_total",
            "Iterations cut short by the end of the test.",
            |s| s.interrupted,
        ),
        (
            "pacer_dropped_iterations_total",
            "Arrivals not started because maxInFlight was full.",
            |s| s.dropped_iterations,
        ),
    ];
    for (name, help, get) in scenario_counters {
        w.family(name, "counter", help);
        for sc in &snapshot.scenarios {
            w.int(name, &[("scenario", &sc.name)], get(&sc.stats));
        }
    }
    w.family(
        "pacer_iteration_duration_seconds",
        "histogram",
        "Duration of completed iterations (the sum is estimated from the histogram's mean).",
    );
    for sc in &snapshot.scenarios {
        let h = &sc.stats.iteration_duration;
        let sum = h.mean().unwrap_or(0.0) * h.count() as f64;
        w.histogram(
            "pacer_iteration_duration_seconds",
            &[("scenario", &sc.name)],
            h,
            sum,
        );
    }

    w.family(
        "pacer_token_fetches_total",
        "counter",
        "Tokens fetched from the token endpoint, by credential.",
    );
    for (c, t) in &snapshot.token_fetches {
        w.int("pacer_token_fetches_total", &[("credential", c)], t.count);
    }
    w.family(
        "pacer_token_fetch_wait_seconds_total",
        "counter",
        "Time callers waited for token fetches, by credential.",
    );
    for (c, t) in &snapshot.token_fetches {
        w.float(
            "pacer_token_fetch_wait_seconds_total",
            &[("credential", c)],
            t.wait_us_sum as f64 / 1e6,
        );
    }

    w.family(
        "pacer_limit_pacing_rate",
        "gauge",
        "The rate (requests per second) pacer paces each declared limit at now.",
    );
    for l in &ctx.limits {
        w.float(
            "pacer_limit_pacing_rate",
            &[("limit", &l.name)],
            l.pacing_rate,
        );
    }
    w.family(
        "pacer_limit_pauses_total",
        "counter",
        "Retry-After pauses of each declared limit's scope.",
    );
    for l in &ctx.limits {
        w.int("pacer_limit_pauses_total", &[("limit", &l.name)], l.pauses);
    }
    w.family(
        "pacer_limit_paused_seconds_total",
        "counter",
        "Time the Retry-After pauses hold each declared limit's scope (counted when a pause starts).",
    );
    for l in &ctx.limits {
        w.float(
            "pacer_limit_paused_seconds_total",
            &[("limit", &l.name)],
            l.paused_secs,
        );
    }

    let h = snapshot.server_limits.as_ref();
    type Gauge = fn(&pacer_stats::ServerLimitHeaders) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 5] = [
        (
            "pacer_server_ratelimit_limit",
            "The server's last rate-limit header: the limit (inin-ratelimit-allowed, X-RateLimit-Limit, RateLimit limit).",
            |h| h.limit.map(|v| v as f64),
        ),
        (
            "pacer_server_ratelimit_remaining",
            "The server's last rate-limit header: requests remaining in the window.",
            |h| h.remaining.map(|v| v as f64),
        ),
        (
            "pacer_server_ratelimit_count",
            "The server's last rate-limit header: requests counted in the window (inin-ratelimit-count).",
            |h| h.count.map(|v| v as f64),
        ),
        (
            "pacer_server_ratelimit_reset_seconds",
            "The server's last rate-limit header: seconds until the window resets.",
            |h| h.reset_secs,
        ),
        (
            "pacer_server_ratelimit_last_seen_timestamp_seconds",
            "When those headers arrived (Unix time).",
            |h| Some(h.at_unix_ms as f64 / 1000.0),
        ),
    ];
    for (name, help, get) in gauges {
        w.family(name, "gauge", help);
        if let Some(h) = h
            && let Some(v) = get(h).filter(|v| v.is_finite())
        {
            w.float(name, &[("source", &h.source)], v);
        }
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_stats::{Attempt, Layout, Recorder, RequestOutcome, ScenarioLayout};
    use std::time::Duration;

    fn recorder() -> Recorder {
        Recorder::new(Layout {
            scenarios: vec![ScenarioLayout {
                name: "s\"1".into(),
                requests: vec!["r\\a".into(), "b".into()],
            }],
        })
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Hist::new();
        for us in [500u64, 1_000, 1_001, 2_000, 7_000, 400_000, 3_600_000_000] {
            h.record(us);
        }
        let c = cumulative_buckets(&h, &LATENCY_BUCKETS_SECONDS);
        assert_eq!(c[0], 2, "<= 1ms: 500µs and exactly 1ms");
        assert_eq!(c[1], 4);
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            *c.last().unwrap(),
            6,
            "the hour-long sample is only in +Inf"
        );
        assert!(
            cumulative_buckets(&Hist::new(), &LATENCY_BUCKETS_SECONDS)
                .iter()
                .all(|&c| c == 0)
        );
    }

    #[test]
    fn renders_families_labels_and_histograms() {
        let rec = recorder();
        for status in [Some(200), Some(200), Some(429), None] {
            rec.record_attempt(
                0,
                0,
                &Attempt {
                    service_time: Duration::from_millis(20),
                    status,
                    error: status.is_none().then_some(pacer_stats::ErrorKind::Timeout),
                    server_limit: (status == Some(429)).then(|| "per\nminute".to_string()),
                    limits: 1,
                    ..Default::default()
                },
            );
        }
        rec.record_request(
            0,
            0,
            &RequestOutcome {
                duration: Duration::from_millis(30),
                attempts: 4,
                ..Default::default()
            },
        );
        rec.record_token_fetch("api", Duration::from_millis(5));
        let ctx = MetricsContext {
            const_labels: vec![
                ("worker".into(), "2".into()),
                ("bad-name".into(), "x".into()),
            ],
            plan: "p".into(),
            limit_names: vec!["per-token".into()],
            limits: vec![LimiterSample {
                name: "per-token".into(),
                pauses: 1,
                paused_secs: 1.5,
                pacing_rate: 4.9,
            }],
            elapsed_secs: Some(3.0),
        };
        let text = render(&rec.snapshot(), &ctx);
        for want in [
            r#"pacer_http_reqs_total{worker="2",scenario="s\"1",request="r\\a",status="200"} 2"#,
            r#"pacer_http_reqs_total{worker="2",scenario="s\"1",request="r\\a",status="error"} 1"#,
            r#"pacer_http_reqs_throttled_total{worker="2",scenario="s\"1",request="r\\a",limit="per\nminute"} 1"#,
            r#"pacer_limit_throttled_total{worker="2",limit="per-token"} 1"#,
            r#"pacer_http_req_duration_seconds_bucket{worker="2",scenario="s\"1",request="r\\a",le="0.05"} 1"#,
            r#"pacer_http_req_duration_seconds_bucket{worker="2",scenario="s\"1",request="r\\a",le="+Inf"} 1"#,
            r#"pacer_http_req_duration_seconds_sum{worker="2",scenario="s\"1",request="r\\a"} 0.03"#,
            r#"pacer_http_req_service_time_seconds_count{worker="2",scenario="s\"1",request="r\\a"} 4"#,
            r#"pacer_token_fetches_total{worker="2",credential="api"} 1"#,
            r#"pacer_limit_paused_seconds_total{worker="2",limit="per-token"} 1.5"#,
            "# TYPE pacer_http_req_duration_seconds histogram",
            "# TYPE pacer_dropped_iterations_total counter",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        assert!(!text.contains("bad-name"));
        assert!(!text.contains("NaN"));
        // every family is declared once, and its samples follow its TYPE line
        let mut seen = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with(&current), "{name} outside {current}");
            }
        }
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_we_expose() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/pacer/dashboards/pacer.json");
        let dashboard = std::fs::read_to_string(&path).unwrap();
        let _: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
        let text = render(&recorder().snapshot(), &MetricsContext::default());
        let mut used = 0;
        for (i, _) in dashboard.match_indices("pacer_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard uses {name}, which pacer does not expose"
            );
            used += 1;
        }
        assert!(used > 20, "{used}");
    }

    #[test]
    fn an_empty_snapshot_still_declares_every_family() {
        let text = render(&recorder().snapshot(), &MetricsContext::default());
        assert!(text.contains("# TYPE pacer_http_reqs_total counter"));
        assert!(text.contains("# TYPE pacer_server_ratelimit_remaining gauge"));
        assert!(!text.contains("NaN"));
    }
}
