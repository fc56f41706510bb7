//! The fleet's per-second series is right in time (issue 20, part 1): built from the workers'
//! reports, each in the second of the common start it closes, so that `pacer run --workers 2`
//! writes the same rows as one process, and a worker joining a `pacer controller` late does
//! not give the series rows (or a planned rate) from before the fleet started. Real
//! processes: the `pacer` binary as controller, workers and single process, against the mock
//! on 127.0.0.1. Every wait is bounded.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use pacer_mock::{LatencyConfig, MockServer};
use pacer_tests::*;
use serde_json::Value;

/// The plan's arrival rate and length: 10 a second for 4 s (40 requests, one per 100 ms).
const RATE: u64 = 10;
const SECS: u64 = 4;

fn plan(target: &str) -> String {
    format!(
        "name: series\ntarget: {target}\nscenarios:\n  - {{name: s, executor: constant-arrival-rate, rate: {RATE}/s, duration: {SECS}s, maxInFlight: 50, requests: [{{name: r, path: /api/v2/users/me}}]}}\n"
    )
}

async fn mock() -> MockServer {
    let mut config = plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(2),
    });
    config.headers.inin = false;
    start_mock(config).await
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn attempts(rows: &[Value]) -> Vec<u64> {
    rows.iter()
        .map(|r| r["attempts"].as_u64().unwrap())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait(child: std::process::Child, limit: Duration) -> std::process::Output {
    tokio::task::spawn_blocking(move || wait_bounded(child, limit))
        .await
        .unwrap()
}

/// One process and two workers run the same plan: row for row, the same attempts within one
/// request (a worker's report timer may put a request at a second's edge in the next row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_write_the_rows_of_one_process() {
    let m = mock().await;
    let target = format!("http://{}", m.addr());
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.jsonl");
    let two = dir.path().join("two.jsonl");
    let text = plan(&target);
    let r = run_summary(
        dir.path(),
        &text,
        &["--out".into(), format!("json={}", one.display())],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r2 = run_summary(
        dir.path(),
        &text,
        &[
            "--workers".into(),
            "2".into(),
            "--out".into(),
            format!("json={}", two.display()),
        ],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    let (one, two) = (rows(&one), rows(&two));
    let (a, b) = (attempts(&one), attempts(&two));
    eprintln!("one process: {a:?}; two workers: {b:?}");
    assert_eq!(a.len(), b.len(), "one process {a:?}, two workers {b:?}");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            x.abs_diff(*y) <= 1,
            "row {}: one process {x}, two workers {y} ({a:?} vs {b:?})",
            i + 1
        );
    }
    let total = r2.summary["totals"]["http_reqs"].as_u64().unwrap();
    assert_eq!(
        b.iter().sum::<u64>(),
        total,
        "the rows add up to the summary"
    );
    assert_eq!(total, RATE * SECS);
    for row in &two {
        assert_eq!(row["planned_rate"].as_f64(), Some(RATE as f64), "{row}");
    }
    m.shutdown().await;
}

/// A controller whose only worker joins 4 s after it started: the series starts with the
/// fleet (no rows, no planned rate from before), has one row per second of the run, and its
/// length is the summary's duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_worker_gives_no_rows_before_the_fleet_started() {
    let m = mock().await;
    let target = format!("http://{}", m.addr());
    let dir = tempfile::tempdir().unwrap();
    let plan_path = write(dir.path(), "plan.yaml", &plan(&target));
    let series = dir.path().join("series.jsonl");
    let summary_path = dir.path().join("summary.json");
    let port = free_port();
    let controller = pacer_spawn(&[
        "controller",
        "--plan",
        plan_path.to_str().unwrap(),
        "--expect-workers",
        "1",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-series",
        "--session-token",
        "s3cret-token-0123456789",
        "-q",
        "--summary-json",
        summary_path.to_str().unwrap(),
        "--out",
        &format!("json={}", series.display()),
    ]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let worker = pacer_spawn(&[
        "worker",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-series",
        "--session-token",
        "s3cret-token-0123456789",
        "--connect-for",
        "20s",
    ]);
    let out = wait(controller, Duration::from_secs(40)).await;
    let w = wait(worker, Duration::from_secs(10)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nworker: {}",
        stderr(&out),
        stderr(&w)
    );
    let s = summary(&summary_path);
    let rows = rows(&series);
    let counts = attempts(&rows);
    let duration = s["elapsed_secs"]
        .as_f64()
        .unwrap_or_else(|| panic!("no elapsed_secs in {s}"));
    eprintln!(
        "late worker: {counts:?}, summary {duration:.2} s, last row ends at {}",
        rows.last().unwrap()["elapsed_secs"]
    );
    assert!(
        (rows.len() as f64 - duration).abs() <= 1.0,
        "{} rows for a {duration:.2} s run: {counts:?}",
        rows.len()
    );
    let last_end = rows.last().unwrap()["elapsed_secs"].as_f64().unwrap();
    assert!(
        (last_end - duration).abs() < 0.5,
        "{last_end} vs {duration}"
    );
    for row in &rows {
        assert_eq!(row["planned_rate"].as_f64(), Some(RATE as f64), "{row}");
    }
    // The first second already holds the worker's first requests.
    assert!(counts[0] >= RATE - 1, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), RATE * SECS);
    m.shutdown().await;
}
