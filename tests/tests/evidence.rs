//! Issue 18 end to end: the forecast `pacer validate` prints, checked against real runs (the
//! user story and a fleet of two workers), the evidence ledger of a run with forced 429s and
//! 503s checked line by line against what the mock received, and the async jobs example.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use pacer_tests::*;

/// A duration as `humantime` prints it (`22s`, `20s 502ms`, `1m 2s`).
fn parse_human(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        let n: u64 = digits.parse().unwrap();
        total += match &part[digits.len()..] {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "us" => Duration::from_micros(n),
            other => panic!("unit {other:?} in {text:?}"),
        };
    }
    total
}

/// `pacer validate`'s forecast of `plan`: (paced rate of `limit`, run time).
fn forecast_of(plan: &std::path::Path, limit: &str, envs: &[(&str, &str)]) -> (f64, Duration) {
    let out = pacer(
        &["validate", plan.to_str().unwrap()],
        envs,
        Duration::from_secs(30),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("limit {limit}: wanted"))
        })
        .unwrap_or_else(|| panic!("no forecast line for {limit}:\n{text}"));
    let paced = line
        .split("paced at ")
        .nth(1)
        .and_then(|r| r.split("/s").next())
        .unwrap()
        .parse()
        .unwrap();
    let run = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("run time: ~"))
        .unwrap_or_else(|| panic!("no run time:\n{text}"));
    let run = parse_human(run.split(" (").next().unwrap());
    (paced, run)
}

/// Measured: (pacing rate of a limit of `burst` — the requests beyond the burst over the
/// run's time — and the run's time).
fn measured(summary: &serde_json::Value, burst: u64) -> (f64, Duration) {
    let reqs = summary["totals"]["http_reqs"].as_u64().unwrap();
    let secs = summary["elapsed_secs"].as_f64().unwrap();
    (
        reqs.saturating_sub(burst) as f64 / secs,
        Duration::from_secs_f64(secs),
    )
}

fn within(pred: f64, meas: f64, share: f64) -> bool {
    (pred - meas).abs() <= share * meas
}

/// The user story as shipped (50 VUs against 300/min, 20 s, graceful stop 2 s): the rate and
/// run time the forecast names are the ones the run measures, within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_story_forecast_matches_the_run() {
    let mock = start_mock(pacer_mock::MockConfig::default()).await;
    let target = format!("http://{}", mock.addr());
    let example = workspace_root().join("examples/user-story.yaml");
    let envs = [("PACER_TARGET", target.as_str())];
    let (paced, run_time) = forecast_of(&example, "per-token", &envs);
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&example).unwrap();
    let r = run_summary(dir.path(), &text, &[], &envs, Duration::from_secs(90)).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (rate, took) = measured(&r.summary, 5);
    println!(
        "user story: forecast paced {paced:.3}/s, run {run_time:?}; measured {rate:.3}/s, run {took:?}"
    );
    assert!(within(paced, rate, 0.05), "rate {paced} vs {rate}");
    assert!(
        within(run_time.as_secs_f64(), took.as_secs_f64(), 0.05),
        "run time {run_time:?} vs {took:?}"
    );
}

/// A fleet plan (`pacer run --workers 2`: two worker processes sharing a `scope: fleet` limit
/// that the controller serves, no Redis): the forecast is the whole test's, and the two
/// workers together measure it within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_plans_forecast_matches_the_run_of_its_workers() {
    let mock = start_mock(pacer_mock::MockConfig::default()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join("examples/fleet.yaml"))
        .unwrap()
        .replace("duration: 20s", "duration: 12s")
        .replace("name: fleet-demo", "name: fleet-demo\nworkers: 2");
    let plan = write(dir.path(), "fleet.yaml", &text);
    let envs = [("PACER_TARGET", target.as_str())];
    let (paced, run_time) = forecast_of(&plan, "per-token", &envs);
    let out = pacer(
        &["validate", plan.to_str().unwrap()],
        &envs,
        Duration::from_secs(30),
    );
    assert!(
        stdout(&out).contains("for the whole test (2 workers)"),
        "{}",
        stdout(&out)
    );
    let r = run_summary(
        dir.path(),
        &text,
        &["--workers".into(), "2".into()],
        &envs,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (rate, took) = measured(&r.summary, 5);
    println!(
        "fleet of 2: forecast paced {paced:.3}/s, run {run_time:?}; measured {rate:.3}/s, run {took:?}"
    );
    assert!(within(paced, rate, 0.05), "rate {paced} vs {rate}");
    assert!(
        within(run_time.as_secs_f64(), took.as_secs_f64(), 0.05),
        "run time {run_time:?} vs {took:?}"
    );
}

/// Forced 429s (named `forced` by the mock) and a limit refusing with 503 (named
/// `nginx-503`): the ledger has exactly one line per such response the mock sent, each with a
/// correlation id the mock received with that status, and the limit's name; retries keep
/// their request's id with the next attempt number, the mock's own request id is captured;
/// the HTML report shows the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_has_one_line_per_429_and_503_with_the_ids_the_mock_received() {
    let mut config = plain_mock_config(pacer_mock::LatencyConfig::None);
    config.record_arrivals = true;
    config.limits = vec![
        serde_json::from_value(serde_json::json!({
            "name": "nginx-503", "key": "global", "limit": 10, "window": "1s",
            "status": 503, "retryAfter": false
        }))
        .unwrap(),
    ];
    let mock = start_mock(config).await;
    mock.control().force_429(7, 0);
    let target = format!("http://{}", mock.addr());
    let plan = format!(
        "name: ledger\ntarget: {target}\nretry:\n  on: [429, 503]\n  maxAttempts: 2\n  backoff: {{base: 10ms, max: 50ms}}\n  retryAfterMax: 50ms\n  retryAfterDefault: 50ms\nscenarios:\n  - name: s\n    executor: constant-arrival-rate\n    rate: 20/s\n    duration: 3s\n    gracefulStop: 2s\n    requests:\n      - {{name: q, path: /api/v2/users/me, expect: {{status: [200]}}}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let report = dir.path().join("report.html");
    let r = run_summary(
        dir.path(),
        &plan,
        &[
            "--out".into(),
            format!("ledger={}", ledger.display()),
            "--report".into(),
            report.display().to_string(),
        ],
        &[],
        Duration::from_secs(60),
    )
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // What the mock sent, by (correlation id, status).
    let mut sent: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let arrivals = mock.control().arrivals();
    for a in &arrivals.arrivals {
        assert!(
            a.correlation_id.is_some(),
            "an arrival without an id: {a:?}"
        );
        if a.status == 429 || a.status == 503 {
            *sent
                .entry((a.correlation_id.clone().unwrap(), u64::from(a.status)))
                .or_default() += 1;
        }
    }
    let mut logged: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for l in &lines {
        let id = l["correlationId"].as_str().unwrap().to_string();
        let status = l["status"].as_u64().unwrap();
        *logged.entry((id, status)).or_default() += 1;
        let limit = l["serverLimit"].as_str().unwrap();
        match status {
            429 => assert_eq!(limit, "forced", "{l}"),
            503 => assert_eq!(limit, "nginx-503", "{l}"),
            other => panic!("status {other} in the ledger: {l}"),
        }
        assert!(l["attempt"].as_u64().unwrap() >= 1);
        // The mock's own id for the exchange (Genesys Cloud's header), captured.
        assert_eq!(l["serverRequestIdHeader"], "inin-correlation-id", "{l}");
        assert_eq!(l["serverRequestId"].as_str().map(str::len), Some(36), "{l}");
    }
    let (n429, n503) = (
        lines.iter().filter(|l| l["status"] == 429).count(),
        lines.iter().filter(|l| l["status"] == 503).count(),
    );
    println!(
        "ledger: {} lines ({n429} x 429, {n503} x 503); the mock sent {:?}",
        lines.len(),
        mock.stats().requests.by_status
    );
    assert_eq!(n429, 7, "every forced 429 is in the ledger once");
    // The summary counts them too (text and JSON).
    assert_eq!(r.summary["evidence"]["throttled"], 7, "{}", r.stdout);
    assert_eq!(
        r.summary["evidence"]["server-error"].as_u64(),
        Some(n503 as u64)
    );
    assert!(
        r.stdout
            .contains(&format!("evidence: 7 throttled, {n503} server-error")),
        "{}",
        r.stdout
    );
    assert!(n503 > 0, "the 503 limit refused some: {}", r.stdout);
    assert_eq!(
        logged, sent,
        "one ledger line per 429/503 the mock sent, same ids"
    );
    // A retried request: its second attempt carries the first one's id.
    let retried = lines.iter().any(|l| {
        l["attempt"] == 2
            && lines
                .iter()
                .any(|m| m["attempt"] == 1 && m["correlationId"] == l["correlationId"])
    });
    assert!(
        retried,
        "no retry of a refused request was refused again (expected some)"
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("id=\"table-ledger\""), "no ledger table");
    assert!(html.contains("nginx-503"));
}

/// examples/async-jobs.yaml as shipped: create a job, poll it until FULFILLED, page its
/// results with the cursor; every step passes against the mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_jobs_example_runs_against_the_mock() {
    let mock = start_mock(pacer_mock::MockConfig::default()).await;
    let target = format!("http://{}", mock.addr());
    let text = std::fs::read_to_string(workspace_root().join("examples/async-jobs.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = run_summary(
        dir.path(),
        &text,
        &[],
        &[("PACER_TARGET", &target)],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let by_route = mock.stats().requests.by_route;
    println!("async jobs: mock routes {by_route:?}");
    let s = &r.summary;
    assert!(
        s["scenario_totals"]["iterations"].as_u64().unwrap() >= 1,
        "{}",
        r.stdout
    );
    assert_eq!(s["totals"]["failed"].as_u64().unwrap(), 0, "{}", r.stdout);
    assert_eq!(
        s["totals"]["checks_failed"].as_u64().unwrap_or(0),
        0,
        "{}",
        r.stdout
    );
}

/// `{{attempt}}`: a request using it is rendered again for its retry (the catch-all echoes the
/// path it got), while its correlation id stays the first attempt's, even when the request
/// writes the header itself with `{{attempt}}` in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_renders_attempt_anew_and_keeps_the_correlation_id() {
    let mut config = plain_mock_config(pacer_mock::LatencyConfig::None);
    config.record_arrivals = true;
    let mock = start_mock(config).await;
    mock.control().force_429(1, 0);
    let target = format!("http://{}", mock.addr());
    let plan = format!(
        "name: attempt\ntarget: {target}\nretry:\n  on: [429]\n  maxAttempts: 2\n  backoff: {{base: 10ms, max: 10ms}}\n  retryAfterMax: 10ms\nscenarios:\n  - name: s\n    executor: shared-iterations\n    iterations: 1\n    requests:\n      - name: q\n        path: /retry/{{{{attempt}}}}\n        headers: {{X-Correlation-Id: \"mine-{{{{attempt}}}}\"}}\n        expect: {{status: [200], json: [{{pointer: /path, equals: /retry/2}}]}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let r = run_summary(
        dir.path(),
        &plan,
        &["--out".into(), format!("ledger={}", ledger.display())],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.summary["totals"]["checks_failed"], 0, "{}", r.stdout);
    let ids: Vec<_> = mock
        .control()
        .arrivals()
        .arrivals
        .iter()
        .map(|a| (a.status, a.correlation_id.clone().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [(429, "mine-1".to_string()), (200, "mine-1".to_string())]
    );
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&ledger).unwrap().trim()).unwrap();
    assert_eq!(line["correlationId"], "mine-1");
    assert_eq!(line["attempt"], 1);
}

/// Two workers (`workers: 2`, one controller): each worker's ledger travels in its snapshot
/// and the controller's `--out ledger=FILE` is the merge: one line per 429 the mock sent,
/// each naming the worker that got it, with the id the mock received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleets_ledger_is_the_merge_of_its_workers() {
    let mut config = plain_mock_config(pacer_mock::LatencyConfig::None);
    config.record_arrivals = true;
    let mock = start_mock(config).await;
    mock.control().force_429(6, 0);
    let target = format!("http://{}", mock.addr());
    let plan = format!(
        "name: fleet-ledger\ntarget: {target}\nworkers: 2\nscenarios:\n  - name: s\n    executor: constant-arrival-rate\n    rate: 10/s\n    duration: 2s\n    requests:\n      - {{name: q, path: /api/v2/users/me}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let r = run_summary(
        dir.path(),
        &plan,
        &[
            "--out".into(),
            format!("ledger={}", ledger.display()),
            "--workers".into(),
            "2".into(),
        ],
        &[],
        Duration::from_secs(60),
    )
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused: Vec<String> = mock
        .control()
        .arrivals()
        .arrivals
        .iter()
        .filter(|a| a.status == 429)
        .map(|a| a.correlation_id.clone().unwrap())
        .collect();
    let mut logged: Vec<String> = lines
        .iter()
        .map(|l| l["correlationId"].as_str().unwrap().to_string())
        .collect();
    let mut expected = refused.clone();
    logged.sort();
    expected.sort();
    let workers: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l["worker"].as_str()).collect();
    println!(
        "fleet ledger: {} lines from workers {workers:?}; the mock sent {} 429s",
        lines.len(),
        refused.len()
    );
    assert_eq!(refused.len(), 6, "{}", r.stdout);
    assert_eq!(
        logged, expected,
        "one line per 429, with the ids the mock got"
    );
    assert!(
        lines.iter().all(|l| l["worker"]
            .as_str()
            .is_some_and(|w| w == "worker 0" || w == "worker 1")),
        "every line names its worker: {lines:?}"
    );
    let times: Vec<u64> = lines
        .iter()
        .map(|l| l["atUnixMs"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
}

/// `pacer submit` says the forecast (on stderr) before it reaches for the cluster: here there
/// is none (a kubeconfig naming a closed port), so it then fails, having said it.
#[test]
fn submit_prints_the_forecast_before_creating_the_loadtest() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u, namespace: default}}}}]\ncurrent-context: x\n"
        ),
    );
    let example = workspace_root().join("examples/user-story.yaml");
    let out = pacer(
        &["submit", example.to_str().unwrap(), "--workers", "3"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("forecast (assuming 100ms per answer"), "{err}");
    assert!(err.contains("for the whole test (3 workers)"), "{err}");
    assert!(err.contains("per-token binds"), "{err}");
    assert!(!stdout(&out).contains("created"), "{}", stdout(&out));
}
