//! The controller and its workers over gRPC, end to end: real `pacer` processes on
//! 127.0.0.1, the mock API in process (it tallies requests per `X-Pacer-Worker`).
//!
//! Tests in this file run one at a time (they share two cores and measure timing).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pacer_mock::{LatencyConfig, MockServer};
use pacer_tests::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn mock(record_arrivals: bool) -> MockServer {
    let mut cfg = plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    });
    cfg.record_arrivals = record_arrivals;
    start_mock(cfg).await
}

fn plan(target: &str, body: &str) -> String {
    format!("name: fleet\ntarget: {target}\n{body}\n")
}

/// `pacer run --workers N --worker-header` on a plan; returns (exit code, stdout+stderr,
/// summary JSON).
async fn run_workers(text: &str, workers: u32, limit: Duration) -> (i32, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--workers".to_string(),
        workers.to_string(),
        "--worker-header".to_string(),
    ];
    let r = run_summary(dir.path(), text, &extra, &[], limit).await;
    (r.code, format!("{}\n{}", r.stdout, r.stderr), r.summary)
}

fn workers_of(s: &Value) -> Vec<Value> {
    s["fleet"]["workers"].as_array().unwrap().clone()
}

fn http_reqs(v: &Value) -> u64 {
    v["http_reqs"].as_u64().unwrap()
}

/// The mock's count of requests from worker `i` (0 when it sent none).
fn mock_count(stats: &pacer_mock::StatsView, i: u64) -> u64 {
    stats.workers.get(&i.to_string()).map_or(0, |w| w.count)
}

/// Every worker row's count equals what the mock received from it, and they sum to the
/// fleet's total, which equals the mock's total.
fn assert_counts_match(s: &Value, stats: &pacer_mock::StatsView, what: &str) {
    let total = http_reqs(&s["totals"]);
    let rows = workers_of(s);
    let sum: u64 = rows.iter().map(http_reqs).sum();
    assert_eq!(sum, total, "{what}: worker rows sum to the fleet total");
    for w in &rows {
        let i = w["index"].as_u64().unwrap();
        assert_eq!(
            http_reqs(w),
            mock_count(stats, i),
            "{what}: worker {i}: controller count vs the mock's"
        );
    }
    assert_eq!(
        stats.requests.total, total,
        "{what}: the mock counted {} requests, the controller {total}",
        stats.requests.total
    );
}

const R1: &str = "requests: [{name: r, path: /api/v2/users/me}]";

/// (scenario, iterations it implies, requests per iteration)
fn exact_cases() -> Vec<(String, Option<u64>, u64)> {
    vec![
        (
            format!("{{name: s, executor: constant-arrival-rate, rate: 40/s, duration: 1s, {R1}}}"),
            Some(40),
            1,
        ),
        (
            format!(
                "{{name: s, executor: ramping-arrival-rate, startRate: 0/s, stages: [{{target: 40/s, duration: 1s}}, {{target: 40/s, duration: 500ms}}], {R1}}}"
            ),
            Some(40),
            1,
        ),
        (
            "{name: s, executor: per-vu-iterations, vus: 3, iterations: 5, requests: [{name: r, path: /api/v2/users/me}, {name: r2, path: /x}]}".into(),
            Some(15),
            2,
        ),
        (
            format!("{{name: s, executor: shared-iterations, vus: 4, iterations: 25, {R1}}}"),
            Some(25),
            1,
        ),
        (
            format!("{{name: s, executor: constant-vus, vus: 5, duration: 1s, {R1}}}"),
            None,
            1,
        ),
        (
            format!(
                "{{name: s, executor: ramping-vus, startVUs: 0, stages: [{{target: 4, duration: 1s}}, {{target: 0, duration: 500ms}}], {R1}}}"
            ),
            None,
            1,
        ),
    ]
}

async fn exact_case(case: usize) {
    let (scenario, expected, per_iter) = exact_cases().swap_remove(case);
    for workers in [1u32, 4] {
        let m = mock(true).await;
        let target = format!("http://{}", m.addr());
        let text = plan(&target, &format!("scenarios:\n  - {scenario}"));
        let started = Instant::now();
        let (code, out, s) = run_workers(&text, workers, Duration::from_secs(30)).await;
        let what = format!("{scenario} with {workers} workers");
        assert_eq!(code, 0, "{what}\n{out}");
        let stats = m.stats();
        let iterations = s["scenario_totals"]["iterations"].as_u64().unwrap();
        if let Some(n) = expected {
            assert_eq!(iterations, n, "{what}: iterations\n{out}");
        } else {
            assert!(
                iterations > 3,
                "{what}: only {iterations} iterations\n{out}"
            );
        }
        assert_eq!(http_reqs(&s["totals"]), iterations * per_iter, "{what}");
        assert_eq!(workers_of(&s).len(), workers as usize);
        assert!(
            workers_of(&s).iter().all(|w| w["state"] == "ok"),
            "{what}\n{out}"
        );
        assert_counts_match(&s, &stats, &what);
        if workers == 4 && scenario.contains("arrival-rate") {
            // Each worker ran exactly the arrivals its shard owns.
            let arrivals = m.control().arrivals();
            let total = expected.unwrap();
            for i in 0..4u32 {
                let shard = pacer_plan::Shard::equal(i, 4).unwrap();
                let got = arrivals
                    .arrivals
                    .iter()
                    .filter(|a| a.worker.as_deref() == Some(i.to_string().as_str()))
                    .count() as u64;
                assert_eq!(got, shard.owned_below(total), "{what}: worker {i} arrivals");
            }
        }
        eprintln!("{what}: ok in {:.1}s", started.elapsed().as_secs_f64());
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_four_workers_run_exactly_the_arrival_rate_plans() {
    let _g = SERIAL.lock().await;
    exact_case(0).await;
    exact_case(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_four_workers_run_exactly_the_iteration_plans() {
    let _g = SERIAL.lock().await;
    exact_case(2).await;
    exact_case(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_and_four_workers_count_vu_plans_like_the_server() {
    let _g = SERIAL.lock().await;
    exact_case(4).await;
    exact_case(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_start_within_10ms_of_each_other() {
    let _g = SERIAL.lock().await;
    let m = mock(false).await;
    let target = format!("http://{}", m.addr());
    // One VU per worker: every worker's first request is due at the common start.
    let text = plan(
        &target,
        &format!(
            "scenarios:\n  - {{name: s, executor: per-vu-iterations, vus: 4, iterations: 3, {R1}}}"
        ),
    );
    let (code, out, s) = run_workers(&text, 4, Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{out}");
    let stats = m.stats();
    assert_counts_match(&s, &stats, "skew run");
    let firsts: Vec<u64> = (0..4)
        .map(|i| stats.workers[&i.to_string()].first_us)
        .collect();
    let skew_us = firsts.iter().max().unwrap() - firsts.iter().min().unwrap();
    eprintln!("first request per worker (µs since mock start): {firsts:?}; skew {skew_us} µs");
    assert!(
        skew_us < 10_000,
        "start skew {skew_us} µs between workers (first requests {firsts:?})"
    );
    m.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn controller_args(
    plan: &Path,
    workers: u32,
    port: u16,
    summary: &Path,
    extra: &[&str],
) -> Vec<String> {
    [
        "controller",
        "--plan",
        &plan.display().to_string(),
        "--expect-workers",
        &workers.to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-fleet",
        "--session-token",
        "s3cret-token-0123456789",
        "--worker-header",
        "-q",
        "--summary-json",
        &summary.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

fn spawn_worker(port: u16) -> std::process::Child {
    pacer_spawn(&[
        "worker",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-fleet",
        "--session-token",
        "s3cret-token-0123456789",
        "--connect-for",
        "20s",
        "--reconnect-for",
        "20s",
    ])
}

fn spawn(args: &[String]) -> std::process::Child {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    pacer_spawn(&a)
}

/// Wait (bounded) until the mock has seen `n` requests.
async fn wait_for_requests(m: &MockServer, n: u64, limit: Duration) {
    let started = Instant::now();
    while m.stats().requests.total < n {
        assert!(
            started.elapsed() < limit,
            "the mock saw only {} requests after {limit:?}",
            m.stats().requests.total
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_child(child: std::process::Child, limit: Duration) -> std::process::Output {
    tokio::task::spawn_blocking(move || wait_bounded(child, limit))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_lost_in_time_and_survivors_match_the_server() {
    let _g = SERIAL.lock().await;
    let m = mock(false).await;
    let target = format!("http://{}", m.addr());
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            &target,
            &format!(
                "scenarios:\n  - {{name: s, executor: constant-arrival-rate, rate: 60/s, duration: 6s, {R1}}}"
            ),
        ),
    );
    let sj = dir.path().join("summary.json");
    let port = free_port();
    let lost_after = 2.0;
    let controller = spawn(&controller_args(&p, 3, port, &sj, &["--lost-after", "2s"]));
    let mut workers: Vec<_> = (0..3).map(|_| spawn_worker(port)).collect();
    // Kill a worker 2.5 s into the run (it has reported twice by then).
    wait_for_requests(&m, 60, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = workers.remove(1);
    let mut victim = victim;
    victim.kill().unwrap(); // SIGKILL
    let killed_us = m.control().uptime().as_micros() as u64;
    let _ = victim.wait();
    let out = wait_child(controller, Duration::from_secs(20)).await;
    for w in workers {
        let o = wait_child(w, Duration::from_secs(10)).await;
        assert_eq!(o.status.code(), Some(0), "worker: {}", stderr(&o));
    }
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let s = summary(&sj);
    let stats = m.stats();
    let rows = workers_of(&s);
    let lost: Vec<&Value> = rows.iter().filter(|w| w["state"] == "lost").collect();
    assert_eq!(lost.len(), 1, "{text}");
    let lost = lost[0];
    let li = lost["index"].as_u64().unwrap();
    // The controller's test start is the first arrival (k = 0, worker 0).
    let start_us = stats.workers.values().map(|w| w.first_us).min().unwrap();
    let killed_at = (killed_us - start_us) as f64 / 1e6;
    let lost_at = lost["lost_at_secs"].as_f64().unwrap();
    eprintln!(
        "worker {li} killed at {killed_at:.2}s, marked lost at {lost_at:.2}s (loss timeout {lost_after}s): detection {:.2}s",
        lost_at - killed_at
    );
    // Silent since at most one heartbeat period (1 s) before the kill.
    assert!(
        lost_at <= killed_at + lost_after + 0.5 && lost_at >= killed_at + lost_after - 1.2,
        "killed at {killed_at:.2}s, lost at {lost_at:.2}s\n{text}"
    );
    assert!(text.contains("lost"), "{text}");
    // It keeps what it had reported: at least two reports' worth, never more than it sent.
    let kept = http_reqs(lost);
    assert!(kept >= 20, "lost worker kept {kept}\n{text}");
    assert!(kept <= mock_count(&stats, li), "{text}");
    // Every survivor: the controller's count is exactly what the server received from it.
    for w in rows.iter().filter(|w| w["state"] == "ok") {
        let i = w["index"].as_u64().unwrap();
        assert_eq!(http_reqs(w), mock_count(&stats, i), "worker {i}\n{text}");
    }
    assert_eq!(rows.iter().filter(|w| w["state"] == "ok").count(), 2);
    let sum: u64 = rows.iter().map(http_reqs).sum();
    assert_eq!(sum, http_reqs(&s["totals"]));
    assert_eq!(s["fleet"]["lost"], 1);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_worker_loss_fail_stops_the_fleet_and_fails_the_run() {
    let _g = SERIAL.lock().await;
    let m = mock(false).await;
    let target = format!("http://{}", m.addr());
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            &target,
            &format!(
                "onWorkerLoss: fail\nscenarios:\n  - {{name: s, executor: constant-arrival-rate, rate: 40/s, duration: 20s, {R1}}}"
            ),
        ),
    );
    let sj = dir.path().join("summary.json");
    let port = free_port();
    let controller = spawn(&controller_args(&p, 2, port, &sj, &["--lost-after", "2s"]));
    let mut workers: Vec<_> = (0..2).map(|_| spawn_worker(port)).collect();
    wait_for_requests(&m, 40, Duration::from_secs(15)).await;
    let mut victim = workers.remove(0);
    victim.kill().unwrap(); // SIGKILL
    let _ = victim.wait();
    let started = Instant::now();
    let out = wait_child(controller, Duration::from_secs(15)).await;
    let survivor = wait_child(workers.remove(0), Duration::from_secs(10)).await;
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("onWorkerLoss: fail"), "{text}");
    // The fleet stopped long before the plan's 20 s.
    assert!(started.elapsed() < Duration::from_secs(8), "{text}");
    assert_eq!(survivor.status.code(), Some(0), "{}", stderr(&survivor));
    let s = summary(&sj);
    assert!(s["fleet"]["failure"].is_string(), "{text}");
    assert_eq!(s["fleet"]["lost"], 1, "{text}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_takes_the_workers_back_and_counts_exactly() {
    let _g = SERIAL.lock().await;
    let m = mock(false).await;
    let target = format!("http://{}", m.addr());
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            &target,
            &format!(
                "scenarios:\n  - {{name: s, executor: constant-arrival-rate, rate: 40/s, duration: 6s, {R1}}}"
            ),
        ),
    );
    let port = free_port();
    let first = spawn(&controller_args(
        &p,
        2,
        port,
        &dir.path().join("a.json"),
        &[],
    ));
    let workers: Vec<_> = (0..2).map(|_| spawn_worker(port)).collect();
    wait_for_requests(&m, 60, Duration::from_secs(15)).await;
    let mut first = first;
    first.kill().unwrap(); // SIGKILL the controller mid-run
    let _ = first.wait();
    let at_kill = m.stats().requests.total;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sj = dir.path().join("b.json");
    let second = spawn(&controller_args(&p, 2, port, &sj, &[]));
    let out = wait_child(second, Duration::from_secs(20)).await;
    for w in workers {
        let o = wait_child(w, Duration::from_secs(10)).await;
        assert_eq!(o.status.code(), Some(0), "worker: {}", stderr(&o));
    }
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let s = summary(&sj);
    let stats = m.stats();
    eprintln!(
        "controller killed after {at_kill} requests; the restarted one counted {} (mock {})",
        http_reqs(&s["totals"]),
        stats.requests.total
    );
    assert_eq!(s["fleet"]["resumed"], true, "{text}");
    assert_eq!(stats.requests.total, 240);
    assert_eq!(s["scenario_totals"]["iterations"], 240, "{text}");
    assert_counts_match(&s, &stats, "after a controller restart");
    assert!(workers_of(&s).iter().all(|w| w["state"] == "ok"), "{text}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_fail_on_the_fleet_stops_every_worker_within_2s() {
    let _g = SERIAL.lock().await;
    let m = mock(false).await;
    let target = format!("http://{}", m.addr());
    let dir = tempfile::tempdir().unwrap();
    // Every response "fails" (the plan expects 201), so http_req_failed is 100%.
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            &target,
            "scenarios:\n  - {name: s, executor: constant-arrival-rate, rate: 60/s, duration: 20s, requests: [{name: r, path: /api/v2/users/me, expect: {status: [201]}}]}\nthresholds:\n  http_req_failed: [{threshold: \"rate<0.5\", abortOnFail: true}]",
        ),
    );
    let sj = dir.path().join("summary.json");
    let control = m.control().clone();
    let mut child = std::process::Command::new(pacer_bin())
        .args(["run", "-q", "--workers", "3", "--worker-header"])
        .arg(&p)
        .arg("--summary-json")
        .arg(&sj)
        .env_remove("PACER_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Note (on the mock's clock) when the controller decides to abort.
    let decided_us = Arc::new(Mutex::new(None::<u64>));
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let reader = {
        let err = child.stderr.take().unwrap();
        let decided_us = decided_us.clone();
        let stderr_text = stderr_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("abortOnFail") && decided_us.lock().unwrap().is_none() {
                    *decided_us.lock().unwrap() = Some(control.uptime().as_micros() as u64);
                }
                stderr_text.lock().unwrap().push_str(&line);
                stderr_text.lock().unwrap().push('\n');
            }
        })
    };
    let out = wait_child(child, Duration::from_secs(20)).await;
    let _ = reader.join();
    let text = format!("{}\n{}", stdout(&out), stderr_text.lock().unwrap());
    assert_eq!(out.status.code(), Some(99), "{text}");
    let decided = decided_us.lock().unwrap().expect("the abort was logged");
    let stats = m.stats();
    let first = stats.workers.values().map(|w| w.first_us).min().unwrap();
    assert_eq!(stats.workers.len(), 3, "{text}");
    let mut worst = 0i64;
    for (id, w) in &stats.workers {
        let after = w.last_us as i64 - decided as i64;
        worst = worst.max(after);
        assert!(
            after < 2_000_000,
            "worker {id} sent its last request {after} µs after the abort decision\n{text}"
        );
    }
    eprintln!(
        "abort decided {:.2}s after the first request; last request of any worker {:.3}s after the decision",
        (decided - first) as f64 / 1e6,
        worst as f64 / 1e6
    );
    let s = summary(&sj);
    assert!(s["fleet"]["abort_reason"].is_string(), "{text}");
    assert!(http_reqs(&s["totals"]) < 600, "{text}");
    assert_counts_match(&s, &stats, "abortOnFail");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_without_workers_gives_up_with_a_reason() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            "http://127.0.0.1:9",
            &format!(
                "scenarios:\n  - {{name: s, executor: constant-vus, vus: 1, duration: 1s, {R1}}}"
            ),
        ),
    );
    let port = free_port();
    let out = pacer_async(
        controller_args(
            &p,
            2,
            port,
            &dir.path().join("s.json"),
            &["--wait-for-workers", "1s"],
        ),
        vec![],
        Duration::from_secs(10),
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("waits for 2 worker(s)"), "{err}");
    assert!(err.contains("0 of 2 workers ready"), "{err}");
    assert!(err.contains("missing worker indices [0, 1]"), "{err}");
}

/// `pacer run --workers 2 --report --out --metrics`: the HTML report, the series and the
/// metrics come from the fleet's merged numbers, with a row per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_write_the_report_series_and_metrics_of_the_fleet() {
    let _one = SERIAL.lock().await;
    let m = mock(false).await;
    let dir = tempfile::tempdir().unwrap();
    let text = plan(
        &format!("http://{}", m.addr()),
        "scenarios:\n  - name: s\n    executor: constant-arrival-rate\n    rate: 20/s\n    duration: 3s\n    requests: [{ name: r, path: /api/v2/users/me }]",
    );
    let p = write(dir.path(), "plan.yaml", &text);
    let (html, jsonl, sj) = (
        dir.path().join("r.html"),
        dir.path().join("s.jsonl"),
        dir.path().join("summary.json"),
    );
    let args: Vec<String> = [
        "run",
        "-q",
        p.to_str().unwrap(),
        "--workers",
        "2",
        "--report",
        html.to_str().unwrap(),
        "--out",
        &format!("json={}", jsonl.display()),
        "--metrics",
        "127.0.0.1:0",
        "--summary-json",
        sj.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec();
    let out = pacer_async(args, vec![], Duration::from_secs(60)).await;
    let all = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("serving metrics on http://127.0.0.1:"),
        "{all}"
    );
    let s = summary(&sj);
    let total = http_reqs(&s["totals"]);
    assert_eq!(total, 60, "{all}");
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("table-workers"), "no workers table");
    assert!(
        html.contains("local-0") && html.contains("local-1"),
        "a row per worker"
    );
    let rows: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 3, "{} rows", rows.len());
    let attempts: u64 = rows.iter().map(|r| r["attempts"].as_u64().unwrap()).sum();
    assert_eq!(attempts, total, "the series adds up to the fleet's count");
    m.shutdown().await;
}
