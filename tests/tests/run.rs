//! `pacer run` end to end: a plan file, the real binary, the real mock API on loopback.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_mock::{LatencyConfig, StallConfig};
use pacer_tests::*;

fn plan(target: &str, scenario: &str, thresholds: &str) -> String {
    format!(
        "name: e2e\ntarget: {target}\nscenarios:\n{scenario}\nthresholds:\n{thresholds}\n",
        thresholds = if thresholds.is_empty() {
            "  {}"
        } else {
            thresholds
        }
    )
}

/// Run a plan; returns (exit code, stdout, summary JSON, mock stats).
async fn run_plan(
    mock: &pacer_mock::MockServer,
    text: &str,
    limit: Duration,
) -> (i32, String, serde_json::Value, pacer_mock::StatsView) {
    run_plan_with(mock, text, &[], limit).await
}

async fn run_plan_with(
    mock: &pacer_mock::MockServer,
    text: &str,
    extra: &[&str],
    limit: Duration,
) -> (i32, String, serde_json::Value, pacer_mock::StatsView) {
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    let r = run_summary(dir.path(), text, &extra, &[], limit).await;
    (r.code, r.stdout, r.summary, mock.stats())
}

fn scenario_iterations(s: &serde_json::Value) -> u64 {
    s["scenario_totals"]["iterations"].as_u64().unwrap()
}

fn http_reqs(s: &serde_json::Value) -> u64 {
    s["totals"]["http_reqs"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_count_equals_pacer_count_for_every_executor() {
    // (scenario yaml, exact iteration count it implies, or None for VU executors)
    let cases: &[(&str, Option<u64>)] = &[
        (
            "  - {name: s, executor: constant-arrival-rate, rate: 50/s, duration: 2s, requests: [{name: r, path: /api/v2/users/me}]}",
            Some(100),
        ),
        (
            "  - {name: s, executor: ramping-arrival-rate, startRate: 0/s, stages: [{target: 20/s, duration: 2s}, {target: 20/s, duration: 1s}], requests: [{name: r, path: /api/v2/users/me}]}",
            Some(40),
        ),
        (
            "  - {name: s, executor: per-vu-iterations, vus: 3, iterations: 7, requests: [{name: r, path: /api/v2/users/me}, {name: r2, path: /x}]}",
            Some(21),
        ),
        (
            "  - {name: s, executor: shared-iterations, vus: 4, iterations: 25, requests: [{name: r, path: /api/v2/users/me}]}",
            Some(25),
        ),
        (
            "  - {name: s, executor: constant-vus, vus: 5, duration: 1s, requests: [{name: r, path: /api/v2/users/me}]}",
            None,
        ),
        (
            "  - {name: s, executor: ramping-vus, startVUs: 0, stages: [{target: 4, duration: 1s}, {target: 0, duration: 1s}], requests: [{name: r, path: /api/v2/users/me}]}",
            None,
        ),
    ];
    for (scenario, expected) in cases {
        let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
            value: Duration::from_millis(5),
        }))
        .await;
        let target = format!("http://{}", mock.addr());
        let (code, out, s, stats) =
            run_plan(&mock, &plan(&target, scenario, ""), Duration::from_secs(60)).await;
        assert_eq!(code, 0, "{scenario}\n{out}");
        let reqs_per_iter = if scenario.contains("r2") { 2 } else { 1 };
        let iters = scenario_iterations(&s);
        if let Some(n) = expected {
            assert_eq!(iters, *n, "{scenario}: iterations\n{out}");
        } else {
            assert!(iters > 5, "{scenario}: only {iters} iterations");
        }
        assert_eq!(http_reqs(&s), iters * reqs_per_iter, "{scenario}");
        assert_eq!(
            stats.requests.total,
            http_reqs(&s),
            "{scenario}: the server counted {} requests, pacer {}",
            stats.requests.total,
            http_reqs(&s)
        );
        mock.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_holds_200_per_second_against_a_slow_server() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Uniform {
        min: Duration::ZERO,
        max: Duration::from_millis(500),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let scenario = "  - {name: s, executor: constant-arrival-rate, rate: 200/s, duration: 10s, maxInFlight: 500, requests: [{name: r, path: /api/v2/users/me}]}";
    let (code, out, s, stats) = run_plan_with(
        &mock,
        &plan(&target, scenario, ""),
        &["--worker-header"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(scenario_iterations(&s), 2000, "{out}");
    assert_eq!(s["scenario_totals"]["dropped_iterations"], 0);
    assert_eq!(stats.requests.total, 2000);
    // Achieved rate, measured at the server: 1999 intervals between the first and the last
    // arrival of worker 0 (the 10 s schedule puts them 9.995 s apart).
    let w = &stats.workers["0"];
    assert_eq!(w.count, 2000);
    let span = (w.last_us - w.first_us) as f64 / 1e6;
    let rate = 1999.0 / span;
    assert!(
        (rate - 200.0).abs() / 200.0 < 0.01,
        "achieved {rate:.2}/s over {span:.3}s"
    );
    let p50 = s["totals"]["duration_ms"]["p50"].as_f64().unwrap();
    let p99 = s["totals"]["duration_ms"]["p99"].as_f64().unwrap();
    // uniform 0..500 ms: median near 250, p99 near 495 (plus client overhead)
    assert!((200.0..350.0).contains(&p50), "p50 {p50}\n{out}");
    assert!((450.0..700.0).contains(&p99), "p99 {p99}\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_open_model_p99_but_hides_in_a_closed_loop() {
    let stall = StallConfig {
        every: Duration::from_secs(2),
        duration: Duration::from_secs(1),
    };
    let mut cfg = plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(2),
    });
    cfg.stall = Some(stall);
    // Open model: arrivals keep coming during the stall and wait for it.
    let mock = start_mock(cfg.clone()).await;
    let target = format!("http://{}", mock.addr());
    let open = "  - {name: s, executor: constant-arrival-rate, rate: 100/s, duration: 2900ms, maxInFlight: 500, requests: [{name: r, path: /api/v2/users/me}]}";
    let (code, out, s, _) =
        run_plan(&mock, &plan(&target, open, ""), Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{out}");
    let open_p99 = s["totals"]["duration_ms"]["p99"].as_f64().unwrap();
    let open_p90 = s["totals"]["duration_ms"]["p90"].as_f64().unwrap();
    mock.shutdown().await;

    // Closed loop: one VU waits out the stall once and sends nothing meanwhile.
    let mock = start_mock(cfg).await;
    let target = format!("http://{}", mock.addr());
    let closed = "  - {name: s, executor: constant-vus, vus: 1, duration: 2900ms, requests: [{name: r, path: /api/v2/users/me}]}";
    let (code, out2, s2, _) =
        run_plan(&mock, &plan(&target, closed, ""), Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{out2}");
    let closed_p99 = s2["totals"]["duration_ms"]["p99"].as_f64().unwrap();
    mock.shutdown().await;

    // A third of the open-model arrivals fall into the stall: p90 and p99 show it.
    assert!(open_p99 > 800.0, "open p99 {open_p99}\n{out}");
    assert!(open_p90 > 300.0, "open p90 {open_p90}\n{out}");
    // The closed loop saw the stall once among hundreds of fast requests.
    assert!(closed_p99 < 100.0, "closed p99 {closed_p99}\n{out2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_threshold_exits_99_and_is_marked() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(30),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let scenario = "  - {name: s, executor: shared-iterations, vus: 2, iterations: 20, requests: [{name: r, path: /api/v2/users/me}]}";
    let thresholds = "  http_req_duration: [\"p(95)<5ms\"]\n  http_req_failed: [\"rate<0.01\"]";
    let (code, out, s, _) = run_plan(
        &mock,
        &plan(&target, scenario, thresholds),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 99, "{out}");
    assert!(out.contains("✗ http_req_duration p(95)<5ms"), "{out}");
    assert!(out.contains("✓ http_req_failed"), "{out}");
    assert_eq!(s["passed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_step_iteration_extracts_and_polls_the_jobs_api() {
    let mut cfg = plain_mock_config(LatencyConfig::None);
    cfg.endpoints.job_delay = Duration::from_millis(300);
    cfg.endpoints.job_pages = 3;
    let mock = start_mock(cfg).await;
    let target = format!("http://{}", mock.addr());
    let scenario = r#"  - name: jobs
    executor: per-vu-iterations
    vus: 2
    iterations: 2
    requests:
      - name: create
        method: POST
        path: /api/v2/analytics/conversations/details/jobs
        json: { interval: "{{isoNow -1h}}/{{isoNow}}" }
        extract: { jobId: { json: /jobId } }
        expect: { status: [200, 202] }
      - name: state
        path: /api/v2/analytics/conversations/details/jobs/{{vars.jobId}}
        poll: { until: { json: [{ pointer: /state, equals: FULFILLED }] }, interval: 100ms, timeout: 5s }
      - name: results
        path: /api/v2/analytics/conversations/details/jobs/{{vars.jobId}}/results
        extract: { cursor: { json: /cursor, required: false } }
      - name: next-page
        path: /api/v2/analytics/conversations/details/jobs/{{vars.jobId}}/results?cursor={{vars.cursor}}
        extract: { cursor: { json: /cursor, required: false } }
        poll: { until: { json: [{ pointer: /cursor, exists: false }] }, interval: 10ms, maxAttempts: 10 }"#;
    let (code, out, s, stats) = run_plan(
        &mock,
        &plan(&target, scenario, "  checks: [\"rate==1\"]"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(scenario_iterations(&s), 4);
    assert_eq!(s["scenario_totals"]["iterations_failed"], 0, "{out}");
    // polling took several requests per job; the server saw exactly what pacer counted
    let reqs = http_reqs(&s);
    assert!(reqs > 4 * 4, "{reqs}");
    assert_eq!(stats.requests.total, reqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_gracefully_and_still_prints_the_summary() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let scenario = "  - {name: s, executor: constant-arrival-rate, rate: 50/s, duration: 60s, gracefulStop: 2s, requests: [{name: r, path: /api/v2/users/me}]}";
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "plan.yaml", &plan(&target, scenario, ""));
    let sj = dir.path().join("s.json");
    let (out, elapsed) = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let child = pacer_spawn(&[
            "run",
            p.to_str().unwrap(),
            "--summary-json",
            sj.to_str().unwrap(),
        ]);
        std::thread::sleep(Duration::from_secs(2));
        interrupt(&child);
        let out = wait_bounded(child, Duration::from_secs(20));
        (out, started.elapsed())
    })
    .await
    .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(stderr(&out).contains("stopping"), "{}", stderr(&out));
    assert!(text.contains("http_reqs"), "{text}");
    // About 2 s at 50/s were sent, and the server saw exactly what pacer counted.
    let s = summary(&dir.path().join("s.json"));
    let n = http_reqs(&s);
    assert!((60..=200).contains(&n), "{n}");
    assert_eq!(mock.stats().requests.total, n);
}

#[test]
fn every_example_plan_validates() {
    let dir = workspace_root().join("examples");
    let mut n = 0;
    // examples/*.yaml and one level below (examples/jmeter/user-story.yaml, the import of
    // its .jmx).
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            paths.push(path);
        }
    }
    for path in paths {
        if path.extension().is_some_and(|e| e == "yaml") {
            // LoadTest examples read the target and credentials from the worker pods' env
            // (secretKeyRef): give them values as the pods would have.
            let env = [
                ("TARGET", "http://127.0.0.1:8080"),
                ("PACER_AUTH_GENESYS_CLIENT_ID", "pacer-demo"),
                ("PACER_AUTH_GENESYS_CLIENT_SECRET", "demo-secret"),
            ];
            let out = pacer(
                &["validate", path.to_str().unwrap()],
                &env,
                Duration::from_secs(30),
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                stderr(&out)
            );
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_story_example_runs_against_the_mock_without_429s() {
    // The mock's demo defaults: OAuth2, 300 requests per minute per token.
    let mock = start_mock(pacer_mock::MockConfig::default()).await;
    let target = format!("http://{}", mock.addr());
    let example = workspace_root().join("examples/user-story.yaml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("duration: 20s", "duration: 4s");
    let dir = tempfile::tempdir().unwrap();
    let r = run_summary(
        dir.path(),
        &text,
        &[],
        &[("PACER_TARGET", &target)],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let stats = mock.stats();
    assert_eq!(stats.tokens.issued, 1);
    assert_eq!(stats.requests.by_status.get(&429).copied().unwrap_or(0), 0);
    assert!(http_reqs(&r.summary) >= 20, "{}", r.stdout);
    assert!(r.stdout.contains("paced at 4.91/s"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_off_by_the_end_of_the_test_are_still_counted() {
    // Every response takes 3 s; the scenario ends after 1 s and gives in-flight iterations
    // 300 ms: all of them are cut off mid-exchange, after the server received them.
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_secs(3),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let scenario = "  - {name: s, executor: constant-arrival-rate, rate: 40/s, duration: 1s, gracefulStop: 300ms, requests: [{name: r, path: /api/v2/users/me}]}";
    let (code, out, s, stats) =
        run_plan(&mock, &plan(&target, scenario, ""), Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(s["scenario_totals"]["interrupted"], 40, "{out}");
    assert_eq!(s["totals"]["errors"]["interrupted"], 40, "{out}");
    assert_eq!(http_reqs(&s), 40);
    assert_eq!(stats.requests.total, 40);
}

/// `abortOnFail` is watched apart from the progress display: `pacer run -q` (how CI runs it)
/// stops a failing 30 s plan as early as the run with progress does, well before its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_fail_stops_a_quiet_run_as_fast_as_one_with_progress() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(30),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    let scenario = "  - {name: s, executor: constant-arrival-rate, rate: 20/s, duration: 30s, gracefulStop: 1s, requests: [{name: r, path: /api/v2/users/me}]}";
    let thresholds = "  http_req_duration: [{threshold: \"p(95)<5ms\", abortOnFail: true}]";
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(&target, scenario, thresholds),
    );
    for quiet in [true, false] {
        let mut args = vec!["run".to_string(), p.display().to_string()];
        if quiet {
            args.push("-q".into());
        }
        let started = std::time::Instant::now();
        let out = pacer_async(args, vec![], Duration::from_secs(60)).await;
        let took = started.elapsed();
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(99),
            "-q {quiet}: {text}\n{}",
            stderr(&out)
        );
        assert!(
            text.contains("aborted: threshold http_req_duration p(95)<5ms crossed (abortOnFail)"),
            "-q {quiet}: {text}"
        );
        // The first check is at about 1 s; 30 s is the plan. Generous for a loaded machine.
        assert!(took < Duration::from_secs(15), "-q {quiet}: took {took:?}");
    }
}
