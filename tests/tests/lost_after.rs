//! A worker's `--lost-after`, end to end with real processes on 127.0.0.1: `pacer
//! controller`, `pacer worker` and the mock API in process. A worker whose controller is gone
//! stops loading the target on its own within the bound; one whose controller comes back
//! within the bound carries on, and the restarted controller counts exactly what the target
//! received.
//!
//! The tests run one at a time (they measure when requests stop on two shared cores).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use pacer_mock::{LatencyConfig, MockServer};
use pacer_tests::*;
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "s3cret-token-0123456789";

/// What the tests give `--lost-after`: the shortest allowed, so a test takes seconds.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// How much later than `LOST_AFTER` after the kill the last request may reach the mock: the
/// controller's last heartbeat came up to 1 s before the kill, and a loaded machine is late.
const MARGIN: Duration = Duration::from_secs(3);

async fn mock() -> MockServer {
    start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    }))
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn controller(plan: &Path, workers: u32, port: u16, summary: &Path) -> std::process::Child {
    let (plan, summary) = (plan.display().to_string(), summary.display().to_string());
    let listen = format!("127.0.0.1:{port}");
    pacer_spawn(&[
        "controller",
        "--plan",
        &plan,
        "--expect-workers",
        &workers.to_string(),
        "--listen",
        &listen,
        "--insecure-plaintext",
        "--test-id",
        "t-lost",
        "--session-token",
        TOKEN,
        "--worker-header",
        "-q",
        "--summary-json",
        &summary,
    ])
}

fn worker(port: u16, reconnect_for: &str) -> std::process::Child {
    pacer_spawn(&[
        "worker",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-lost",
        "--session-token",
        TOKEN,
        "--connect-for",
        "20s",
        "--reconnect-for",
        reconnect_for,
        "--lost-after",
        &format!("{}s", LOST_AFTER.as_secs()),
    ])
}

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

fn http_reqs(v: &Value) -> u64 {
    v["http_reqs"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_controller_is_gone_stops_its_load_within_lost_after() {
    let _g = SERIAL.lock().await;
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    // 60 s of load: without --lost-after the worker would send all of it.
    let p = write(
        dir.path(),
        "plan.yaml",
        &format!(
            "name: lost\ntarget: http://{}\nscenarios:\n  - {{name: s, executor: constant-arrival-rate, rate: 20/s, duration: 60s, requests: [{{name: r, path: /api/v2/users/me}}]}}\n",
            m.addr()
        ),
    );
    let port = free_port();
    let mut ctl = controller(&p, 1, port, &dir.path().join("s.json"));
    let w = worker(port, "10s");
    wait_for_requests(&m, 20, Duration::from_secs(20)).await;
    ctl.kill().unwrap(); // SIGKILL: no goodbye to the worker
    let killed = Instant::now();
    let _ = ctl.wait();
    // Watch the mock's count until well past the bound; note when it last grew.
    let mut last = m.stats().requests.total;
    let mut last_growth = Duration::ZERO;
    while killed.elapsed() < LOST_AFTER + MARGIN + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = m.stats().requests.total;
        if now != last {
            last = now;
            last_growth = killed.elapsed();
        }
    }
    let out = wait_child(w, Duration::from_secs(20)).await;
    let err = stderr(&out);
    eprintln!(
        "controller killed; the mock's last request came {last_growth:?} after the kill \
         (--lost-after {LOST_AFTER:?}); {last} requests in all"
    );
    assert!(
        last_growth <= LOST_AFTER + MARGIN,
        "the worker kept sending {last_growth:?} after its controller was killed: {err}"
    );
    assert!(
        last_growth + Duration::from_secs(1) >= LOST_AFTER,
        "the worker stopped {last_growth:?} after the kill, before its --lost-after: {err}"
    );
    assert!(last < 20 * 30, "{last} requests: the load did not stop");
    assert!(err.contains("stopping this worker's load"), "{err}");
    // It still tried to deliver its results, then gave up (no controller came back).
    assert_eq!(out.status.code(), Some(1), "{err}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_back_within_lost_after_gets_its_workers_back_with_exact_counts() {
    let _g = SERIAL.lock().await;
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &format!(
            "name: back\ntarget: http://{}\nscenarios:\n  - {{name: s, executor: constant-arrival-rate, rate: 40/s, duration: 8s, requests: [{{name: r, path: /api/v2/users/me}}]}}\n",
            m.addr()
        ),
    );
    let port = free_port();
    let mut first = controller(&p, 2, port, &dir.path().join("a.json"));
    let workers: Vec<_> = (0..2).map(|_| worker(port, "20s")).collect();
    wait_for_requests(&m, 40, Duration::from_secs(20)).await;
    first.kill().unwrap();
    let _ = first.wait();
    let at_kill = m.stats().requests.total;
    // Away for 3 s of the 5 s bound: the workers keep sending meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = m.stats().requests.total - at_kill;
    let sj = dir.path().join("b.json");
    let second = controller(&p, 2, port, &sj);
    let out = wait_child(second, Duration::from_secs(30)).await;
    for w in workers {
        let o = wait_child(w, Duration::from_secs(10)).await;
        assert_eq!(o.status.code(), Some(0), "worker: {}", stderr(&o));
        assert!(!stderr(&o).contains("stopping this worker's load"));
    }
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let s = summary(&sj);
    let stats = m.stats();
    eprintln!(
        "controller killed after {at_kill} requests, {during} sent while it was away 3 s; \
         the restarted one counted {} (mock {})",
        http_reqs(&s["totals"]),
        stats.requests.total
    );
    assert!(
        during > 0,
        "the workers kept sending while the controller was away"
    );
    assert_eq!(s["fleet"]["resumed"], true, "{text}");
    assert_eq!(stats.requests.total, 320, "the whole plan, once");
    assert_eq!(http_reqs(&s["totals"]), stats.requests.total, "{text}");
    for w in s["fleet"]["workers"].as_array().unwrap() {
        let i = w["index"].as_u64().unwrap();
        let mocked = stats.workers.get(&i.to_string()).map_or(0, |w| w.count);
        assert_eq!(http_reqs(w), mocked, "worker {i}: {text}");
        assert_eq!(w["state"], "ok", "{text}");
    }
    m.shutdown().await;
}
