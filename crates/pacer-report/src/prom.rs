//! Prometheus metrics: a [`Snapshot`] in the Prometheus text exposition format (version
//! 0.0.4), written by the `prometheus-client` crate.
//!
//! pacer already keeps exact cumulative counters and HDR histograms in its snapshots, and a
//! controller's are merged from its workers' on every scrape; so there are no client-library
//! counters to update on the hot path. Instead each scrape turns the snapshot into families of
//! samples ([`families`]) and hands them to `prometheus-client` as a [`Collector`]: the library
//! writes the `# HELP`/`# TYPE` lines, the `_total` suffix of counters, the `_bucket`/`_sum`/
//! `_count` series and `le` bounds of histograms, label escaping and the number formats.
//!
//! Why 0.0.4 and not OpenMetrics (the library's default): the operator's `/metrics` is 0.0.4
//! text too, its own counters and each running LoadTest's figures joined family by family
//! (pacer-operator's `merge_expositions`, which OpenMetrics' single `# EOF` terminator would not
//! allow), and one format for both is simpler to scrape; Prometheus reads both alike.
//!
//! Names follow Prometheus conventions: `pacer_` prefix, snake_case, base units (seconds,
//! bytes), `_total` on counters; the Grafana dashboard (charts/pacer/dashboards) uses them and
//! a test checks that it uses nothing else (its `pacer_loadtest_*` panels read the operator's
//! families, which pacer-operator's `loadtest_metrics` checks). Latency histograms use the classic buckets of
//! [`LATENCY_BUCKETS_SECONDS`]; each bucket is the cumulative count of samples `<=` its bound,
//! computed from the HDR histogram (3 significant digits, so a sample within 0.1% above a
//! bound may be counted in it).

use std::borrow::Cow;

use pacer_stats::{Hist, RequestStats, ScenarioStats, ServerLimitHeaders, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::series::LimiterSample;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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

/// A sample's own labels (the context's constant labels come first, from the registry).
type Labels = Vec<(&'static str, String)>;

/// One sample's value.
#[derive(Debug)]
enum Value {
    Int(u64),
    /// Always finite ([`Family::float`] sees to it).
    Float(f64),
    /// Per-bucket (not cumulative) counts by upper bound; the library accumulates them.
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

/// One metric family and its samples, owned so that the collector outlives the snapshot.
#[derive(Debug)]
struct Family {
    /// The full name as scraped (counters with their `_total`).
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, kind: MetricType, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, MetricType::Counter, help)
    }

    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, MetricType::Gauge, help)
    }

    fn histogram(name: &'static str, help: &'static str) -> Self {
        Self::new(name, MetricType::Histogram, help)
    }

    fn int(&mut self, labels: Labels, v: u64) {
        self.samples.push((labels, Value::Int(v)));
    }

    /// Non-finite values never reach here, but would be `0` rather than `NaN`.
    fn float(&mut self, labels: Labels, v: f64) {
        let v = if v.is_finite() { v } else { 0.0 };
        self.samples.push((labels, Value::Float(v)));
    }

    /// Buckets, sum and count of one histogram in microseconds.
    fn hist(&mut self, labels: Labels, h: &Hist, sum_us: f64) {
        let cumulative = cumulative_buckets(h, &LATENCY_BUCKETS_SECONDS);
        let mut below = 0;
        let buckets = LATENCY_BUCKETS_SECONDS
            .iter()
            .zip(cumulative)
            .map(|(bound, c)| (*bound, c - std::mem::replace(&mut below, c)))
            .collect();
        let sum = sum_us / 1e6;
        self.samples.push((
            labels,
            Value::Histogram {
                sum: if sum.is_finite() { sum } else { 0.0 },
                count: h.count(),
                buckets,
            },
        ));
    }

    fn encode_sample(
        &self,
        mut m: MetricEncoder<'_>,
        value: &Value,
    ) -> Result<(), std::fmt::Error> {
        match (value, self.kind) {
            (Value::Int(v), MetricType::Counter) => m.encode_counter::<NoLabelSet, _, f64>(v, None),
            (Value::Float(v), MetricType::Counter) => {
                m.encode_counter::<NoLabelSet, _, f64>(v, None)
            }
            (Value::Int(v), _) => m.encode_gauge(v),
            (Value::Float(v), _) => m.encode_gauge(v),
            (
                Value::Histogram {
                    sum,
                    count,
                    buckets,
                },
                _,
            ) => m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
        }
    }
}

/// Every family of one scrape, handed to the registry.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            // The library adds the `_total` of counters itself.
            let base = match f.kind {
                MetricType::Counter => f.name.strip_suffix("_total").unwrap_or(f.name),
                _ => f.name,
            };
            let mut metric = encoder.encode_descriptor(base, f.help, None, f.kind)?;
            for (labels, value) in &f.samples {
                f.encode_sample(metric.encode_family(labels)?, value)?;
            }
        }
        Ok(())
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

/// The labels of one request's samples, and `extra`.
fn request_labels(scenario: &str, request: &str, extra: Option<(&'static str, &str)>) -> Labels {
    let mut labels = vec![
        ("scenario", scenario.to_string()),
        ("request", request.to_string()),
    ];
    labels.extend(extra.map(|(k, v)| (k, v.to_string())));
    labels
}

/// One label.
fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

/// The snapshot (cumulative since start) as Prometheus text. Families appear even when they
/// have no samples yet, so dashboards find them from the first scrape.
pub fn render(snapshot: &Snapshot, ctx: &MetricsContext) -> String {
    let constant = ctx
        .const_labels
        .iter()
        .filter(|(k, _)| valid_label_name(k))
        .map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(v.clone())));
    let mut registry = Registry::with_labels(constant);
    registry.register_collector(Box::new(Families(families(snapshot, ctx))));
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail, and the collector returns no errors of its own.
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Every family of the snapshot, in the order they are exposed.
fn families(snapshot: &Snapshot, ctx: &MetricsContext) -> Vec<Family> {
    let mut out = process_families(ctx);
    out.extend(attempt_families(snapshot, ctx));
    out.extend(request_families(snapshot));
    out.extend(scenario_families(snapshot));
    out.extend(token_families(snapshot));
    out.extend(limiter_families(ctx));
    out.extend(server_header_families(snapshot.server_limits.as_ref()));
    out
}

/// `pacer_info`, and `pacer_elapsed_seconds` once the run has started.
fn process_families(ctx: &MetricsContext) -> Vec<Family> {
    let mut info = Family::gauge("pacer_info", "The plan this process runs (always 1).");
    let version = env!("CARGO_PKG_VERSION").to_string();
    info.int(vec![("plan", ctx.plan.clone()), ("version", version)], 1);
    let mut out = vec![info];
    if let Some(e) = ctx.elapsed_secs {
        let mut elapsed = Family::gauge("pacer_elapsed_seconds", "Seconds since the run started.");
        elapsed.float(Vec::new(), e);
        out.push(elapsed);
    }
    out
}

/// HTTP exchanges by status, transport error and the limit a 429 named; 429s by declared limit.
fn attempt_families(snapshot: &Snapshot, ctx: &MetricsContext) -> [Family; 4] {
    let mut reqs = Family::counter(
        "pacer_http_reqs_total",
        "HTTP exchanges (attempts, retries included) by response status; status=\"error\" for attempts without a response.",
    );
    let mut errors = Family::counter(
        "pacer_http_req_errors_total",
        "Attempts without a response, by transport error kind (connect, timeout, tls, protocol, body, auth, limiter, other).",
    );
    let mut throttled = Family::counter(
        "pacer_http_reqs_throttled_total",
        "Attempts answered 429, by the limit the server named (response body, [limit: X] message or RateLimit-Policy); limit=\"(unnamed)\" when it named none.",
    );
    for (s, r, st) in requests(snapshot) {
        for (code, n) in &st.status {
            reqs.int(
                request_labels(s, r, Some(("status", &code.to_string()))),
                *n,
            );
        }
        let with_status = st.status.values().fold(0u64, |a, n| a.saturating_add(*n));
        let without = st.attempts.saturating_sub(with_status);
        if without > 0 {
            reqs.int(request_labels(s, r, Some(("status", "error"))), without);
        }
        for (kind, n) in &st.errors {
            errors.int(request_labels(s, r, Some(("kind", kind))), *n);
        }
        for (limit, n) in &st.throttled_by_server_limit {
            throttled.int(request_labels(s, r, Some(("limit", limit))), *n);
        }
        let named = st
            .throttled_by_server_limit
            .values()
            .fold(0u64, |a, n| a.saturating_add(*n));
        let unnamed = st.throttled.saturating_sub(named);
        if unnamed > 0 {
            throttled.int(
                request_labels(s, r, Some(("limit", UNNAMED_LIMIT))),
                unnamed,
            );
        }
    }
    let mut by_limit = Family::counter(
        "pacer_limit_throttled_total",
        "429 answers to requests that matched a limit the plan declares (one 429 counts once for each limit its request matched).",
    );
    for (index, n) in &snapshot.total().throttled_by_limit {
        let name = usize::try_from(*index)
            .ok()
            .and_then(|i| ctx.limit_names.get(i))
            .cloned()
            .unwrap_or_else(|| format!("limit#{index}"));
        by_limit.int(label("limit", &name), *n);
    }
    [reqs, errors, throttled, by_limit]
}

/// Per-request counters and latency histograms.
fn request_families(snapshot: &Snapshot) -> Vec<Family> {
    type Count = fn(&RequestStats) -> u64;
    let counters: [(&'static str, &'static str, Count); 5] = [
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
    type HistOf = fn(&RequestStats) -> (&Hist, u64);
    let histograms: [(&'static str, &'static str, HistOf); 5] = [
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
    let mut out = Vec::new();
    for (name, help, get) in counters {
        let mut f = Family::counter(name, help);
        for (s, r, st) in requests(snapshot) {
            f.int(request_labels(s, r, None), get(st));
        }
        out.push(f);
    }
    let mut checks = Family::counter(
        "pacer_checks_total",
        "Checks evaluated, by result (pass, fail).",
    );
    for (s, r, st) in requests(snapshot) {
        checks.int(
            request_labels(s, r, Some(("result", "pass"))),
            st.checks_passed,
        );
        checks.int(
            request_labels(s, r, Some(("result", "fail"))),
            st.checks_failed,
        );
    }
    out.push(checks);
    for (name, help, get) in histograms {
        let mut f = Family::histogram(name, help);
        for (s, r, st) in requests(snapshot) {
            let (h, sum) = get(st);
            f.hist(request_labels(s, r, None), h, sum as f64);
        }
        out.push(f);
    }
    out
}

/// Per-scenario iteration counters and the iteration duration histogram.
fn scenario_families(snapshot: &Snapshot) -> Vec<Family> {
    type ScenarioCount = fn(&ScenarioStats) -> u64;
    let counters: [(&'static str, &'static str, ScenarioCount); 4] = [
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
    let mut out = Vec::new();
    for (name, help, get) in counters {
        let mut f = Family::counter(name, help);
        for sc in &snapshot.scenarios {
            f.int(label("scenario", &sc.name), get(&sc.stats));
        }
        out.push(f);
    }
    let mut duration = Family::histogram(
        "pacer_iteration_duration_seconds",
        "Duration of completed iterations (the sum is estimated from the histogram's mean).",
    );
    for sc in &snapshot.scenarios {
        let h = &sc.stats.iteration_duration;
        let sum = h.mean().unwrap_or(0.0) * h.count() as f64;
        duration.hist(label("scenario", &sc.name), h, sum);
    }
    out.push(duration);
    out
}

/// Token fetches and the time callers waited for them, by credential.
fn token_families(snapshot: &Snapshot) -> [Family; 2] {
    let mut fetches = Family::counter(
        "pacer_token_fetches_total",
        "Tokens fetched from the token endpoint, by credential.",
    );
    let mut wait = Family::counter(
        "pacer_token_fetch_wait_seconds_total",
        "Time callers waited for token fetches, by credential.",
    );
    for (c, t) in &snapshot.token_fetches {
        fetches.int(label("credential", c), t.count);
        wait.float(label("credential", c), t.wait_us_sum as f64 / 1e6);
    }
    [fetches, wait]
}

/// The limiter's state of each declared limit, when this process has a limiter.
fn limiter_families(ctx: &MetricsContext) -> [Family; 3] {
    let mut rate = Family::gauge(
        "pacer_limit_pacing_rate",
        "The rate (requests per second) pacer paces each declared limit at now.",
    );
    let mut pauses = Family::counter(
        "pacer_limit_pauses_total",
        "Retry-After pauses of each declared limit's scope.",
    );
    let mut paused = Family::counter(
        "pacer_limit_paused_seconds_total",
        "Time the Retry-After pauses hold each declared limit's scope (counted when a pause starts).",
    );
    for l in &ctx.limits {
        rate.float(label("limit", &l.name), l.pacing_rate);
        pauses.int(label("limit", &l.name), l.pauses);
        paused.float(label("limit", &l.name), l.paused_secs);
    }
    [rate, pauses, paused]
}

/// The server's last rate-limit headers, one gauge per value it sent.
fn server_header_families(headers: Option<&ServerLimitHeaders>) -> Vec<Family> {
    type Gauge = fn(&ServerLimitHeaders) -> Option<f64>;
    let gauges: [(&'static str, &'static str, Gauge); 5] = [
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
    gauges
        .into_iter()
        .map(|(name, help, get)| {
            let mut f = Family::gauge(name, help);
            if let Some(h) = headers
                && let Some(v) = get(h).filter(|v| v.is_finite())
            {
                f.float(label("source", &h.source), v);
            }
            f
        })
        .collect()
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
            // The operator's per-LoadTest families: pacer-operator's loadtest_metrics checks them.
            if name.starts_with("pacer_loadtest_") {
                continue;
            }
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
    fn the_exposition_is_prometheus_text_that_the_operator_can_merge() {
        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
        let ctx = MetricsContext {
            const_labels: vec![("loadtest".into(), "ns/a\"b".into())],
            elapsed_secs: Some(f64::NAN),
            ..MetricsContext::default()
        };
        let text = render(&recorder().snapshot(), &ctx);
        // no OpenMetrics terminator, so expositions concatenate; counters keep `_total`
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE pacer_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"pacer_elapsed_seconds{loadtest="ns/a\"b"} 0"#),
            "{text}"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn an_empty_snapshot_still_declares_every_family() {
        let text = render(&recorder().snapshot(), &MetricsContext::default());
        assert!(text.contains("# TYPE pacer_http_reqs_total counter"));
        assert!(text.contains("# TYPE pacer_server_ratelimit_remaining gauge"));
        assert!(!text.contains("NaN"));
    }
}
