//! The verdict's one rule and the abortOnFail watch: no data never passes (a run without
//! requests, a threshold whose metric had no samples), and `AbortWatch` stops a run on a
//! measured failure after `delayAbortEval`, once, never on "no data yet".

use std::time::Duration;

use pacer_stats::{
    AbortWatch, Attempt, Recorder, RequestOutcome, ThresholdOutcome, Verdict, evaluate, summarize,
};

/// A plan's thresholds, parsed as `pacer run` parses them.
fn thresholds(yaml: &str) -> Vec<pacer_plan::threshold::Threshold> {
    let text = format!(
        "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {{name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{{name: a, path: /a}}, {{name: b, path: /b}}]}}\nthresholds:\n{yaml}\n"
    );
    pacer_plan::load_str(&text, "plan.yaml", &Default::default())
        .expect("a valid plan")
        .thresholds
}

fn recorder() -> Recorder {
    Recorder::new(pacer_stats::Layout {
        scenarios: vec![pacer_stats::ScenarioLayout {
            name: "s".into(),
            requests: vec!["a".into(), "b".into()],
        }],
    })
}

/// `n` requests to `a` taking `ms` each.
fn requests_to_a(rec: &Recorder, n: u32, ms: u64) {
    for _ in 0..n {
        rec.record_attempt(
            0,
            0,
            &Attempt {
                status: Some(200),
                service_time: Duration::from_millis(ms),
                ..Default::default()
            },
        );
        rec.record_request(
            0,
            0,
            &RequestOutcome {
                duration: Duration::from_millis(ms),
                attempts: 1,
                ..Default::default()
            },
        );
    }
}

#[test]
fn a_run_without_requests_does_not_pass_even_without_thresholds() {
    let empty = recorder().snapshot();
    let s = summarize("p", &empty, Duration::from_secs(1), &[], &[]);
    assert!(!s.passed);
    assert_eq!(
        s.verdict_reasons,
        ["no requests were made: a run without data does not pass"]
    );
    let text = pacer_stats::render_text(&s, false);
    assert!(
        text.contains("verdict: FAILED: no requests were made"),
        "{text}"
    );

    // Every threshold is without data then, even a counter that would read 0.
    let t = thresholds("  http_req_failed: [\"rate<0.01\"]\n  http_reqs: [\"count<10\"]");
    let s = summarize("p", &empty, Duration::from_secs(1), &t, &[]);
    assert!(!s.passed);
    assert!(
        s.thresholds
            .iter()
            .all(|r| r.outcome == ThresholdOutcome::NoData && !r.passed && r.observed.is_none())
    );
    assert_eq!(s.verdict_reasons.len(), 1, "one line says it for all");
    let json: serde_json::Value =
        serde_json::from_str(&pacer_stats::render_json(&s)).expect("json");
    assert_eq!(json["thresholds"][0]["outcome"], "no_data");
    assert_eq!(json["passed"], false);
}

#[test]
fn a_threshold_whose_metric_had_no_samples_fails_and_says_no_data() {
    let rec = recorder();
    requests_to_a(&rec, 10, 5);
    let t = thresholds(
        "  \"http_req_duration{request:a}\": [\"p(95)<1s\"]\n  \"http_req_duration{request:b}\": [\"p(95)<1s\"]",
    );
    let s = summarize("p", &rec.snapshot(), Duration::from_secs(1), &t, &[]);
    assert_eq!(s.thresholds[0].outcome, ThresholdOutcome::Passed);
    assert_eq!(s.thresholds[1].outcome, ThresholdOutcome::NoData);
    assert!(!s.passed);
    assert_eq!(
        s.verdict_reasons,
        [
            "threshold http_req_duration{request:b} p(95)<1s had no data (no samples for its metric), which fails"
        ]
    );
    let text = pacer_stats::render_text(&s, false);
    assert!(
        text.contains("✗ http_req_duration{request:b} p(95)<1s  no data"),
        "{text}"
    );
}

#[test]
fn measured_thresholds_decide_the_verdict() {
    let rec = recorder();
    requests_to_a(&rec, 10, 50);
    let snap = rec.snapshot();
    let pass = thresholds("  http_req_duration: [\"p(95)<1s\"]");
    let fail = thresholds("  http_req_duration: [\"p(95)<10ms\"]");
    let v = Verdict::of(&evaluate(&pass, &snap, Duration::from_secs(1)), &snap);
    assert!(v.passed && v.reasons.is_empty(), "{v:?}");
    let v = Verdict::of(&evaluate(&fail, &snap, Duration::from_secs(1)), &snap);
    assert_eq!(v.reasons, ["threshold http_req_duration p(95)<10ms failed"]);
}

#[test]
fn abort_watch_fires_once_on_a_measured_failure_after_its_delay() {
    let t = thresholds(
        "  http_req_duration: [{threshold: \"p(95)<10ms\", abortOnFail: true, delayAbortEval: 2s}]\n  http_req_failed: [\"rate<0.5\"]",
    );
    let mut watch = AbortWatch::new(&t);
    assert!(!watch.is_idle());
    let rec = recorder();
    // No data yet: not a reason to stop.
    assert!(
        watch
            .check(&rec.snapshot(), Duration::from_secs(5))
            .is_none()
    );
    requests_to_a(&rec, 5, 50);
    let slow = rec.snapshot();
    // Failing, but within delayAbortEval.
    assert!(watch.check(&slow, Duration::from_secs(1)).is_none());
    let crossed = watch
        .check(&slow, Duration::from_millis(2500))
        .expect("fires after the delay")
        .to_string();
    assert_eq!(
        crossed,
        "threshold http_req_duration p(95)<10ms crossed (abortOnFail) at 2.5s: p(95)=50.0ms"
    );
    // Once: the run is already stopping.
    assert!(watch.check(&slow, Duration::from_secs(3)).is_none());
    assert!(watch.crossed().is_some());

    // Thresholds without abortOnFail are not watched.
    let idle = AbortWatch::new(&thresholds("  http_req_failed: [\"rate<0.5\"]"));
    assert!(idle.is_idle());
}
