//! Thresholds (k6 semantics) and the end-of-test summary, text and JSON.

use std::time::Duration;

use pacer_plan::threshold::{Threshold, parse_expr, parse_metric_key};
use pacer_stats::{
    Attempt, IterationOutcome, Layout, Recorder, RequestOutcome, ScenarioLayout,
    ServerLimitHeaders, Snapshot, evaluate, render_json, render_text, summarize,
};

fn threshold(key: &str, expr: &str) -> Threshold {
    let (metric, tags) = parse_metric_key(key).expect("test key parses");
    let (aggregation, op, value) = parse_expr(metric, expr).expect("test expression parses");
    Threshold {
        key: key.into(),
        metric,
        tags,
        expr: expr.into(),
        aggregation,
        op,
        value,
        abort_on_fail: false,
        delay_abort_eval: Duration::ZERO,
    }
}

fn layout() -> Layout {
    Layout {
        scenarios: vec![
            ScenarioLayout {
                name: "browse".into(),
                requests: vec!["list".into(), "get".into(), "idle".into()],
            },
            ScenarioLayout {
                name: "buy".into(),
                requests: vec!["pay".into()],
            },
        ],
    }
}

/// browse/list: 100 requests of 1..=100 ms, 10 failed, limiter wait 5 ms each.
/// browse/get: 10 requests of 200 ms, each after one 429 attempt (2 attempts, 1 retry).
/// browse/idle: nothing. buy/pay: 4 requests of 50 ms, all checks failed.
fn recorded() -> Snapshot {
    let rec = Recorder::new(layout());
    let ms = Duration::from_millis;
    for i in 1..=100u64 {
        rec.record_attempt(
            0,
            0,
            &Attempt {
                service_time: ms(i),
                status: Some(if i.is_multiple_of(10) { 500 } else { 200 }),
                bytes_sent: 100,
                bytes_received: 1000,
                ..Default::default()
            },
        );
        rec.record_request(
            0,
            0,
            &RequestOutcome {
                duration: ms(i),
                limiter_wait: ms(5),
                attempts: 1,
                failed: i.is_multiple_of(10),
                checks_passed: 1,
                ..Default::default()
            },
        );
    }
    for _ in 0..10 {
        for status in [429, 200] {
            rec.record_attempt(
                0,
                1,
                &Attempt {
                    service_time: ms(80),
                    status: Some(status),
                    retry_after: (status == 429).then(|| Duration::from_secs(1)),
                    limits: 0b10,
                    server_limit: Some("token.rate.per.minute".into()),
                    ..Default::default()
                },
            );
        }
        rec.record_request(
            0,
            1,
            &RequestOutcome {
                duration: ms(200),
                backoff: ms(40),
                attempts: 2,
                checks_passed: 1,
                ..Default::default()
            },
        );
    }
    for _ in 0..4 {
        rec.record_attempt(
            1,
            0,
            &Attempt {
                service_time: ms(50),
                status: Some(200),
                ..Default::default()
            },
        );
        rec.record_request(
            1,
            0,
            &RequestOutcome {
                duration: ms(50),
                attempts: 1,
                checks_failed: 1,
                ..Default::default()
            },
        );
        rec.record_iteration(
            1,
            &IterationOutcome {
                duration: ms(60),
                ..Default::default()
            },
        );
    }
    rec.record_dropped(1, 3);
    rec.record_token_fetch("main", ms(30));
    rec.record_server_limits(ServerLimitHeaders {
        at_unix_ms: 1,
        source: "ratelimit".into(),
        limit: Some(50),
        remaining: Some(7),
        count: None,
        reset_secs: Some(12.0),
        policy: None,
    });
    rec.snapshot()
}

fn observed(key: &str, expr: &str, elapsed_secs: u64) -> (bool, Option<f64>) {
    let r = &evaluate(
        &[threshold(key, expr)],
        &recorded(),
        Duration::from_secs(elapsed_secs),
    )[0];
    assert_eq!((r.key.as_str(), r.expr.as_str()), (key, expr));
    (r.passed, r.observed)
}

fn close(actual: Option<f64>, expected: f64) -> bool {
    // HDR keeps 3 significant digits.
    actual.is_some_and(|a| (a - expected).abs() <= expected.abs() * 0.001 + 1e-9)
}

#[test]
fn trend_aggregations() {
    let key = "http_req_duration{request:list}";
    let (passed, v) = observed(key, "p(95)<100", 10);
    assert!(passed && close(v, 95.0), "{v:?}");
    assert!(close(observed(key, "p(99.9)<100", 10).1, 100.0));
    assert!(close(observed(key, "med<100", 10).1, 50.0));
    assert!(close(observed(key, "min<100", 10).1, 1.0));
    assert!(close(observed(key, "max<100", 10).1, 100.0));
    assert!(close(observed(key, "avg<100", 10).1, 50.5));
    let (passed, _) = observed(key, "p(95)<90ms", 10);
    assert!(!passed);

    // Without a filter, every request is merged: 100 + 10 + 4 samples.
    assert!(close(observed("http_req_duration", "max<1s", 10).1, 200.0));
    assert!(close(
        observed("http_req_duration{scenario:buy}", "max<1s", 10).1,
        50.0
    ));
    assert!(close(
        observed("http_req_service_time{request:get}", "avg<1s", 10).1,
        80.0
    ));
    assert!(close(
        observed("http_req_limiter_wait{request:list}", "p(50)<1s", 10).1,
        5.0
    ));
    assert!(close(
        observed("iteration_duration{scenario:buy}", "p(90)<1s", 10).1,
        60.0
    ));
}

#[test]
fn rate_metrics() {
    assert!(close(
        observed("http_req_failed", "rate<0.1", 10).1,
        10.0 / 114.0
    ));
    let (passed, v) = observed("http_req_failed{request:list}", "rate<0.1", 10);
    assert!(!passed && close(v, 0.1));
    assert!(close(
        observed("http_reqs_throttled", "rate<0.5", 10).1,
        10.0 / 124.0
    ));
    assert!(close(
        observed("http_reqs_throttled{request:get}", "rate<0.5", 10).1,
        0.5
    ));
    assert!(close(observed("checks", "rate>0.9", 10).1, 110.0 / 114.0));
    let (passed, v) = observed("checks{scenario:buy}", "rate>0.9", 10);
    assert!(!passed && close(v, 0.0));
}

#[test]
fn counter_metrics_and_rate_over_elapsed() {
    assert_eq!(observed("http_reqs", "count>0", 10).1, Some(124.0));
    let (passed, v) = observed("http_reqs", "rate<10", 10);
    assert!(!passed && close(v, 12.4));
    assert!(close(observed("http_reqs", "rate<10", 124).1, 1.0));
    assert_eq!(observed("http_req_retries", "count<100", 10).1, Some(10.0));
    assert_eq!(
        observed("http_req_retries{request:list}", "count==0", 10),
        (true, Some(0.0))
    );
    assert_eq!(observed("iterations", "count>0", 10).1, Some(4.0));
    assert_eq!(
        observed("iterations{scenario:browse}", "count>0", 10),
        (false, Some(0.0))
    );
    assert_eq!(
        observed("dropped_iterations", "count==0", 10),
        (false, Some(3.0))
    );
    assert_eq!(observed("data_sent", "count>0", 10).1, Some(10_000.0));
    assert!(close(
        observed("data_received{scenario:browse}", "rate>0", 4).1,
        25_000.0
    ));
    // No elapsed time: a rate has no data (which does not pass), a count still does.
    assert_eq!(observed("http_reqs", "rate<1", 0), (false, None));
    assert_eq!(observed("http_reqs", "count<1", 0).1, Some(124.0));
}

#[test]
fn no_data_fails_without_an_observation() {
    for (key, expr) in [
        ("http_req_duration{request:idle}", "p(95)<1"),
        ("http_req_duration{request:nope}", "p(95)<1"),
        ("http_req_failed{request:idle}", "rate<0.01"),
        ("http_reqs_throttled{scenario:nope}", "rate<0.01"),
        ("checks{request:idle}", "rate>0.99"),
        ("iteration_duration{scenario:browse}", "max<1"),
        ("http_reqs{scenario:nope}", "count>5"),
    ] {
        assert_eq!(observed(key, expr, 10), (false, None), "{key} {expr}");
    }
    let empty = Snapshot::empty(&layout());
    let results = evaluate(
        &[
            threshold("http_req_duration", "p(99)<1"),
            threshold("http_req_failed", "rate<0.01"),
            threshold("http_reqs", "count>5"),
        ],
        &empty,
        Duration::ZERO,
    );
    // A run without a single request has no data at all, counters included.
    for r in &results {
        assert_eq!((r.passed, r.observed), (false, None), "{}", r.key);
    }
}

#[test]
fn render_text_shows_marks_and_measurements() {
    let mut failing = threshold("http_req_failed{request:list}", "rate<0.05");
    failing.abort_on_fail = true;
    let thresholds = [
        threshold("http_req_duration{request:list}", "p(95)<800ms"),
        failing,
        threshold("http_reqs", "count>=100"),
        threshold("http_req_duration{request:idle}", "p(95)<1"),
    ];
    let summary = summarize(
        "smoke",
        &recorded(),
        Duration::from_secs(10),
        &thresholds,
        &["global".to_string(), "per-client".to_string()],
    );
    assert!(!summary.passed);
    let text = render_text(&summary, false);
    assert!(
        text.contains("✓ http_req_duration{request:list} p(95)<800ms"),
        "{text}"
    );
    assert!(text.contains("p(95)=95.0ms"), "{text}");
    assert!(
        text.contains("✗ http_req_failed{request:list} rate<0.05"),
        "{text}"
    );
    assert!(text.contains("rate=10.00%"), "{text}");
    assert!(text.contains("count=124"), "{text}");
    assert!(text.contains("no data"), "{text}");
    assert!(text.contains("per-client"), "{text}");
    assert!(text.contains("Retry-After: 10 seen"), "{text}");
    assert!(text.contains("browse/list"), "{text}");
    assert!(text.contains("main"), "{text}");
    assert!(text.contains("remaining=7"), "{text}");
    assert!(!text.contains('\x1b'), "no color unless asked");

    let colored = render_text(&summary, true);
    assert!(colored.contains("\x1b[32m✓\x1b[0m"));
    assert!(colored.contains("\x1b[31m✗\x1b[0m"));

    // The table's columns line up: every row is as wide as the header.
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("scenario/request"))
        .take(5)
        .collect();
    assert_eq!(table.len(), 5, "{text}");
    let widths: Vec<usize> = table.iter().map(|l| l.chars().count()).collect();
    assert!(widths.iter().all(|&w| w == widths[0]), "{table:#?}");

    let json: serde_json::Value = serde_json::from_str(&render_json(&summary)).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["totals"]["http_reqs"], 124);
    assert_eq!(json["throttled_by_limit"][0]["name"], "per-client");
    assert_eq!(json["thresholds"][1]["abort_on_fail"], true);
    assert!(json["requests"][2]["duration_ms"]["p95"].is_null());
}

#[test]
fn render_empty_run_has_no_nan() {
    let empty = Snapshot::empty(&layout());
    for elapsed in [Duration::ZERO, Duration::from_secs(5)] {
        let summary = summarize(
            "empty",
            &empty,
            elapsed,
            &[threshold("http_req_duration", "p(95)<1")],
            &[],
        );
        assert!(!summary.passed, "no data does not pass");
        let text = render_text(&summary, true);
        let json = render_json(&summary);
        for out in [&text, &json] {
            let lower = out.to_lowercase();
            assert!(!lower.contains("nan") && !lower.contains("inf"), "{out}");
        }
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }
    let bare = summarize(
        "bare",
        &Snapshot::empty(&Layout::default()),
        Duration::ZERO,
        &[],
        &[],
    );
    assert!(!render_text(&bare, false).to_lowercase().contains("nan"));
}
