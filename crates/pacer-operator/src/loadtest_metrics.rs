//! Each running LoadTest's live figures on the operator's `/metrics`, for a cluster's
//! Prometheus (the chart's ServiceMonitor) and the Grafana dashboard: requests, rate, errors,
//! 429s (in all and by the plan's declared limit), p50/p95/p99, time spent pacing and paused,
//! workers, progress.
//!
//! Served from the last merged state: the reconciler publishes a test's figures here each time
//! it reads the run's live numbers (every status interval), and a scrape only formats what was
//! published. No histogram is merged and no lock of a run is taken on the scrape path, so a
//! scraper polling every second costs a 1000-worker test nothing.
//!
//! Cardinality is bounded and low: the labels are `namespace` and `loadtest` (Kubernetes
//! names), `limit` (the plan's declared limit names, at most [`MAX_LIMITS_PER_TEST`] a test,
//! the rest summed under [`OTHER_LIMITS`]), `quantile` and `state` (fixed sets). At most
//! [`MAX_LOADTESTS`] tests are exposed (oldest first); `pacer_operator_loadtest_series_omitted`
//! counts the others. So one operator exposes at most 200 x (14 + 17) = 6,200 series here.
//! No scenario, request or server-sent string becomes a label.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use pacer_plan::Plan;
use pacer_stats::Snapshot;
use parking_lot::Mutex;

use crate::crd::LoadTest;
use crate::runner::LiveStats;

/// The most LoadTests exposed at once: an operator runs a few tests at a time; past this
/// many, the rest are counted in `pacer_operator_loadtest_series_omitted`, not exposed.
pub const MAX_LOADTESTS: usize = 200;
/// The most `limit` label values a test exposes (a plan declares a handful).
pub const MAX_LIMITS_PER_TEST: usize = 16;
/// The `limit` label of the 429s of the limits beyond [`MAX_LIMITS_PER_TEST`].
pub const OTHER_LIMITS: &str = "(other)";
/// A row not published again for this long belongs to a test that ended: a running test
/// publishes every status interval (seconds), and without a scraper nothing else would drop
/// the rows of ended tests from memory.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// What only the merged snapshot knows, taken when the run's live numbers are (the same
/// merge): 429s by declared limit, time pacing and paused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// (limit name, 429 answers to requests that matched it), in the plan's order.
    pub throttled_by_limit: Vec<(String, u64)>,
    /// Seconds requests waited on pacer's own limiter (pacing), summed.
    pub pacing_seconds: f64,
    /// Seconds requests waited in Retry-After pauses, summed.
    pub paused_seconds: f64,
    /// Logical requests that waited in a Retry-After pause at all.
    pub paused_requests: u64,
}

/// The figures of a merged snapshot.
pub fn figures_of(plan: &Plan, merged: &Snapshot) -> Figures {
    let total = merged.total();
    let mut by_limit: Vec<(String, u64)> = Vec::new();
    let mut other = 0u64;
    for (index, n) in &total.throttled_by_limit {
        let name = usize::try_from(*index)
            .ok()
            .and_then(|i| plan.limits.get(i))
            .map(|l| l.name.clone());
        match name {
            Some(name) if by_limit.len() < MAX_LIMITS_PER_TEST => by_limit.push((name, *n)),
            _ => other = other.saturating_add(*n),
        }
    }
    if other > 0 {
        by_limit.push((OTHER_LIMITS.to_string(), other));
    }
    Figures {
        throttled_by_limit: by_limit,
        pacing_seconds: total.limiter_wait_us_sum as f64 / 1e6,
        paused_seconds: total.paused_us_sum as f64 / 1e6,
        // Every request records its pause, 0 when it had none (kept exactly by the HDR
        // histogram): the others waited.
        paused_requests: total
            .paused
            .count()
            .saturating_sub(total.paused.histogram().count_at(0)),
    }
}

/// One test's row as last published.
#[derive(Clone, Debug)]
struct Row {
    namespace: String,
    name: String,
    /// When it was first published: the oldest tests are kept under [`MAX_LOADTESTS`].
    order: u64,
    live: LiveStats,
    figures: Figures,
    desired: u32,
    published: std::time::Instant,
}

/// The last published figures of every running test, by LoadTest uid.
#[derive(Default)]
pub struct Board {
    rows: Mutex<BTreeMap<String, Row>>,
    next: Mutex<u64>,
}

impl Board {
    /// Publish a test's live numbers (`figures`: `None` when the runner has none, a fake's).
    pub fn publish(
        &self,
        lt: &LoadTest,
        live: &LiveStats,
        figures: Option<&Figures>,
        desired: u32,
    ) {
        let uid = crate::controller::uid(lt);
        let now = std::time::Instant::now();
        let mut rows = self.rows.lock();
        rows.retain(|_, r| now.saturating_duration_since(r.published) < STALE_AFTER);
        let order = match rows.get(&uid) {
            Some(r) => r.order,
            None => {
                let mut next = self.next.lock();
                *next = next.saturating_add(1);
                *next
            }
        };
        let mut live = live.clone();
        // The per-worker rows and thresholds are the status's, not exposed here.
        live.workers.clear();
        live.thresholds.clear();
        rows.insert(
            uid,
            Row {
                namespace: lt.metadata.namespace.clone().unwrap_or_default(),
                name: lt.metadata.name.clone().unwrap_or_default(),
                order,
                live,
                figures: figures.cloned().unwrap_or_default(),
                desired,
                published: now,
            },
        );
    }

    /// The families of the tests in `running` (uids); rows of tests no longer running are
    /// dropped.
    pub fn render(&self, running: &HashSet<String>) -> String {
        let mut rows = self.rows.lock();
        rows.retain(|uid, _| running.contains(uid));
        let mut kept: Vec<&Row> = rows.values().collect();
        kept.sort_by_key(|r| r.order);
        let omitted = kept.len().saturating_sub(MAX_LOADTESTS);
        kept.truncate(MAX_LOADTESTS);
        render_rows(&kept, omitted)
    }
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, r: &Row, extra: &[(&str, &str)], v: f64) {
    let v = if v.is_finite() { v } else { 0.0 };
    let _ = write!(
        out,
        "{name}{{namespace=\"{}\",loadtest=\"{}\"",
        escape(&r.namespace),
        escape(&r.name)
    );
    for (k, val) in extra {
        let _ = write!(out, ",{k}=\"{}\"", escape(val));
    }
    let _ = writeln!(out, "}} {v}");
}

type Value = fn(&Row) -> f64;

/// The families with one sample per test, by name, type, help and value.
const PER_TEST: &[(&str, &str, &str, Value)] = &[
    (
        "pacer_loadtest_requests_total",
        "counter",
        "HTTP requests a running LoadTest sent (attempts, retries included), as of the last status interval.",
        |r| r.live.requests as f64,
    ),
    (
        "pacer_loadtest_requests_per_second",
        "gauge",
        "HTTP requests per second over the last status interval.",
        |r| r.live.rps,
    ),
    (
        "pacer_loadtest_errors_total",
        "counter",
        "Failed requests (final result) and transport errors.",
        |r| r.live.errors as f64,
    ),
    (
        "pacer_loadtest_throttled_total",
        "counter",
        "Responses 429 Too Many Requests.",
        |r| r.live.throttled as f64,
    ),
    (
        "pacer_loadtest_pacing_seconds_total",
        "counter",
        "Seconds requests waited on pacer's own limiter (pacing inside the declared limits), summed.",
        |r| r.figures.pacing_seconds,
    ),
    (
        "pacer_loadtest_paused_seconds_total",
        "counter",
        "Seconds requests waited because a Retry-After paused their limit, summed.",
        |r| r.figures.paused_seconds,
    ),
    (
        "pacer_loadtest_paused_requests_total",
        "counter",
        "Requests that waited in a Retry-After pause (a 429 or 503 paused their limit).",
        |r| r.figures.paused_requests as f64,
    ),
    (
        "pacer_loadtest_started",
        "gauge",
        "1 once every worker started at the common instant (Running), 0 while Starting.",
        |r| f64::from(u8::from(r.live.started)),
    ),
    (
        "pacer_loadtest_progress_ratio",
        "gauge",
        "Elapsed over planned time of the plan's longest scenario (0..1).",
        |r| {
            let planned = r.live.planned.as_secs_f64();
            if planned > 0.0 {
                (r.live.elapsed.as_secs_f64() / planned).min(1.0)
            } else {
                0.0
            }
        },
    ),
];

fn render_rows(rows: &[&Row], omitted: usize) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in PER_TEST {
        head(&mut out, name, kind, help);
        for r in rows {
            sample(&mut out, name, r, &[], value(r));
        }
    }
    let latency = "pacer_loadtest_latency_seconds";
    head(
        &mut out,
        latency,
        "gauge",
        "Latency from the intended start (http_req_duration) since the test started, at quantile 0.5, 0.95, 0.99.",
    );
    for r in rows {
        for (q, v) in [
            ("0.5", r.live.p50_ms),
            ("0.95", r.live.p95_ms),
            ("0.99", r.live.p99_ms),
        ] {
            if let Some(ms) = v {
                sample(&mut out, latency, r, &[("quantile", q)], ms / 1000.0);
            }
        }
    }
    let workers = "pacer_loadtest_workers";
    head(
        &mut out,
        workers,
        "gauge",
        "Worker pods: desired, connected to the controller, lost during the test.",
    );
    for r in rows {
        for (state, n) in [
            ("desired", r.desired),
            ("connected", r.live.connected),
            ("lost", r.live.lost),
        ] {
            sample(&mut out, workers, r, &[("state", state)], f64::from(n));
        }
    }
    let by_limit = "pacer_loadtest_limit_throttled_total";
    head(
        &mut out,
        by_limit,
        "counter",
        "429 answers to requests that matched a limit the plan declares, by limit (at most 16 a test, the rest as limit=\"(other)\").",
    );
    for r in rows {
        for (limit, n) in &r.figures.throttled_by_limit {
            sample(&mut out, by_limit, r, &[("limit", limit)], *n as f64);
        }
    }
    let _ = writeln!(
        out,
        "# HELP pacer_operator_loadtest_series_omitted Running LoadTests not exposed: more than {MAX_LOADTESTS} run.\n# TYPE pacer_operator_loadtest_series_omitted gauge\npacer_operator_loadtest_series_omitted {omitted}"
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use std::time::Duration;

    fn lt(ns: &str, name: &str, uid: &str) -> LoadTest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTest",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"plan": {}}
        }))
        .unwrap()
    }

    fn live() -> LiveStats {
        LiveStats {
            started: true,
            elapsed: Duration::from_secs(5),
            planned: Duration::from_secs(10),
            connected: 3,
            requests: 300,
            rps: 60.5,
            p95_ms: Some(48.0),
            throttled: 4,
            ..LiveStats::default()
        }
    }

    #[test]
    fn a_published_test_is_exposed_with_its_labels_until_it_stops_running() {
        let board = Board::default();
        let figures = Figures {
            throttled_by_limit: vec![("search \"api\"".into(), 4)],
            pacing_seconds: 1.5,
            paused_seconds: 0.25,
            paused_requests: 2,
        };
        board.publish(&lt("team-a", "checkout", "u1"), &live(), Some(&figures), 3);
        let running = HashSet::from(["u1".to_string()]);
        let text = board.render(&running);
        for line in [
            "pacer_loadtest_requests_total{namespace=\"team-a\",loadtest=\"checkout\"} 300",
            "pacer_loadtest_requests_per_second{namespace=\"team-a\",loadtest=\"checkout\"} 60.5",
            "pacer_loadtest_latency_seconds{namespace=\"team-a\",loadtest=\"checkout\",quantile=\"0.95\"} 0.048",
            "pacer_loadtest_limit_throttled_total{namespace=\"team-a\",loadtest=\"checkout\",limit=\"search \\\"api\\\"\"} 4",
            "pacer_loadtest_workers{namespace=\"team-a\",loadtest=\"checkout\",state=\"desired\"} 3",
            "pacer_loadtest_pacing_seconds_total{namespace=\"team-a\",loadtest=\"checkout\"} 1.5",
            "pacer_loadtest_paused_requests_total{namespace=\"team-a\",loadtest=\"checkout\"} 2",
            "pacer_loadtest_progress_ratio{namespace=\"team-a\",loadtest=\"checkout\"} 0.5",
            "pacer_operator_loadtest_series_omitted 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let text = board.render(&HashSet::new());
        assert!(!text.contains("checkout"), "{text}");
    }

    #[test]
    fn the_grafana_dashboard_uses_only_loadtest_families_the_operator_exposes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/pacer/dashboards/pacer.json");
        let dashboard = std::fs::read_to_string(&path).unwrap();
        let board = Board::default();
        board.publish(&lt("ns", "t", "u1"), &live(), None, 1);
        let text = board.render(&HashSet::from(["u1".to_string()]));
        let mut used = 0;
        for (i, _) in dashboard.match_indices("pacer_loadtest_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "the dashboard uses {name}, which the operator does not expose"
            );
            used += 1;
        }
        assert!(used >= 8, "{used}");
    }

    #[test]
    fn the_series_are_capped_oldest_tests_first() {
        let board = Board::default();
        let mut running = HashSet::new();
        for i in 0..(MAX_LOADTESTS + 5) {
            let uid = format!("u{i}");
            board.publish(&lt("ns", &format!("t{i}"), &uid), &live(), None, 1);
            running.insert(uid);
        }
        let text = board.render(&running);
        let exposed = text
            .lines()
            .filter(|l| l.starts_with("pacer_loadtest_requests_total{"))
            .count();
        assert_eq!(exposed, MAX_LOADTESTS);
        assert!(text.contains("loadtest=\"t0\""));
        assert!(!text.contains(&format!("loadtest=\"t{}\"", MAX_LOADTESTS + 4)));
        assert!(
            text.contains("pacer_operator_loadtest_series_omitted 5"),
            "{text}"
        );
    }

    #[test]
    fn limits_beyond_the_cap_are_summed_as_other() {
        let names: Vec<String> = (0..20).map(|i| format!("l{i}")).collect();
        let plan_doc = serde_json::json!({
            "name": "p", "target": "http://api",
            "limits": names.iter().map(|n| serde_json::json!({"name": n, "limit": "10/s"})).collect::<Vec<_>>(),
            "scenarios": [{"name": "s", "executor": "constant-vus", "vus": 1, "duration": "1s",
                           "requests": [{"name": "q", "path": "/"}]}]
        });
        let none = |_: &str| -> Option<String> { None };
        let refs = pacer_plan::Refs::Remote { provided: &none };
        let plan = pacer_plan::load_value(plan_doc, "p", &refs).unwrap();
        let mut snap = pacer_stats::Recorder::new(pacer_stats::Layout::of(&plan)).snapshot();
        for (i, r) in snap.scenarios[0].requests.iter_mut().enumerate().take(1) {
            for l in 0..20u32 {
                r.stats
                    .throttled_by_limit
                    .insert(l, u64::from(l) + 1 + i as u64);
            }
            // Three requests without a pause, two paused 1.5 s and 2 ms.
            for us in [0, 0, 0, 1_500_000, 2_000] {
                r.stats.paused.record(us);
            }
        }
        let f = figures_of(&plan, &snap);
        assert_eq!(f.throttled_by_limit.len(), MAX_LIMITS_PER_TEST + 1);
        assert_eq!(f.throttled_by_limit[0], ("l0".to_string(), 1));
        assert_eq!(f.paused_requests, 2);
        // 17 + 18 + 19 + 20
        assert_eq!(
            f.throttled_by_limit[MAX_LIMITS_PER_TEST],
            (OTHER_LIMITS.to_string(), 74)
        );
    }
}
