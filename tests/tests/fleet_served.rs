//! A fleet led by a controller without Redis, end to end (docs/distributed.md, "Tokens and
//! limits without Redis"): `pacer run --workers 4`, and `pacer controller` with 4 `pacer
//! worker` processes, against the real mock API (OAuth2 token endpoint, a sliding-window limit
//! per token, its arrival log) on 127.0.0.1. The controller fetches the `share: fleet` token
//! once and hands it to its workers, and serves the `scope: fleet` limit as leases of one
//! budget: one of the 4 workers idle (the plan has 3 VUs), the 3 busy ones use the whole limit
//! where a static split would leave them 75% of it; no window over the limit; a 401 makes one
//! refresh for all; a 429's Retry-After pauses every worker.
//!
//! Tests in this file run one at a time (they share two cores and measure rates).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_mock::{Algorithm, Arrival, AuthMode, LatencyConfig, LimitConfig, LimitKey, MockConfig};
use pacer_tests::*;
use serde_json::Value;

/// The server's per-token limit: 1000 requests in any 5 s (200/s).
const LIMIT: u64 = 1000;
const WINDOW: Duration = Duration::from_secs(5);
/// Workers in every test; the plan's 3 VUs leave one of them idle.
const WORKERS: u32 = 4;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn mock_config() -> MockConfig {
    MockConfig {
        auth: AuthMode::Required,
        token_lifetime: Duration::from_secs(3600),
        token_rate_limit: None,
        limits: vec![LimitConfig {
            name: "per-token".into(),
            key: LimitKey::Token,
            limit: LIMIT,
            window: WINDOW,
            methods: None,
            path_prefix: None,
            algorithm: Algorithm::Sliding,
            ..LimitConfig::default()
        }],
        latency: LatencyConfig::Fixed {
            value: Duration::from_millis(2),
        },
        record_arrivals: true,
        ..MockConfig::default()
    }
}

/// 3 closed-model VUs, each able to send far more than the limit (2 ms a request): split
/// across 4 workers, worker 3 has none.
fn plan(target: &str, duration: &str) -> String {
    format!(
        r#"name: fleet-served
target: {target}
auth:
  - {{ name: g, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: pacer-demo, clientSecret: demo-secret, share: fleet }}
limits:
  - {{ name: per-token, limit: {LIMIT}/5s, scope: fleet }}
retry: {{ maxAttempts: 3, backoff: {{ base: 50ms, max: 1s }} }}
scenarios:
  - name: s
    executor: constant-vus
    vus: 3
    duration: {duration}
    gracefulStop: 1s
    auth: g
    requests: [{{ name: r, path: /api/v2/users/me }}]
"#
    )
}

/// The workers' own count of their lease messages and of the requests that used them (their
/// info line at the end), summed.
fn lease_counts(stderr: &str) -> (u64, u64) {
    let field = |line: &str, name: &str| -> u64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    stderr
        .lines()
        .filter(|l| l.contains("the controller's budget:"))
        .fold((0, 0), |(l, r), line| {
            (l + field(line, "leases"), r + field(line, "requests"))
        })
}

/// The token fetches a summary counts (the controller's, when it serves the tokens).
fn fetches(s: &Value) -> u64 {
    s["token_fetches"].as_array().map_or(0, |a| {
        a.iter().map(|f| f["fetches"].as_u64().unwrap_or(0)).sum()
    })
}

fn count_in(arrivals: &[Arrival], from_us: u64, to_us: u64, status: Option<u16>) -> usize {
    arrivals
        .iter()
        .filter(|a| a.t_us >= from_us && a.t_us < to_us && status.is_none_or(|s| a.status == s))
        .count()
}

/// What the mock saw of one run, printed and checked: the limit never overrun, the steady
/// accepted rate (from 1 s after the first arrival to 1 s before the planned end) at least
/// 95% of what the limit allows, and the idle worker idle.
fn check_budget(mock: &pacer_mock::MockServer, run_secs: f64, what: &str) -> f64 {
    let stats = mock.stats();
    let arrivals = mock.control().arrivals().arrivals;
    let lim = &stats.limits[0];
    let first = arrivals.first().unwrap().t_us;
    let (from, to) = (first + 1_000_000, first + ((run_secs - 1.0) * 1e6) as u64);
    let steady = count_in(&arrivals, from, to, Some(200)) as f64 / ((to - from) as f64 / 1e6);
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    let per_worker: Vec<(String, u64)> = stats
        .workers
        .iter()
        .map(|(k, w)| (k.clone(), w.count))
        .collect();
    eprintln!(
        "{what}: {} requests, accepted {} rejected {}, steady {steady:.1}/s ({:.1}% of the \
         limit's {allowed}/s), max offered in a {}s window {} of {LIMIT}; per worker {per_worker:?}; \
         tokens issued {}",
        stats.requests.total,
        lim.accepted,
        lim.rejected,
        steady / allowed * 100.0,
        WINDOW.as_secs(),
        lim.max_offered_in_window,
        stats.tokens.issued
    );
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "{what}: the fleet overran the limit: {} in a window",
        lim.max_offered_in_window
    );
    assert_eq!(lim.rejected, 0, "{what}: 429s");
    assert!(
        steady >= 0.95 * allowed,
        "{what}: accepted {steady:.1}/s, under 95% of the {allowed}/s the limit allows (a \
         static split would give the 3 busy workers 75%)"
    );
    assert!(
        !stats.workers.contains_key("3"),
        "{what}: worker 3 has no VU and sent nothing: {per_worker:?}"
    );
    steady
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_workers_fetches_one_token_and_its_busy_workers_use_the_whole_limit() {
    let _one = SERIAL.lock().await;
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--workers".to_string(),
        WORKERS.to_string(),
        "--worker-header".to_string(),
    ];
    // The workers (children of pacer run, with its environment) say what leases cost.
    let r = run_summary(
        dir.path(),
        &plan(&target, "8s"),
        &extra,
        &[("PACER_LOG", "warn,pacer_worker=info")],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    check_budget(&mock, 8.0, "pacer run --workers 4");
    let (leases, requests) = lease_counts(&r.stderr);
    eprintln!(
        "pacer run --workers 4: {leases} lease messages for {requests} requests ({:.3} per \
         request)",
        leases as f64 / requests.max(1) as f64
    );
    assert!(requests > 1000, "{}", r.stderr);
    assert!(
        leases * 2 <= requests,
        "a lease per {:.1} requests: not batched",
        requests as f64 / leases as f64
    );
    let stats = mock.stats();
    assert_eq!(stats.tokens.issued, 1, "one token for the fleet");
    assert_eq!(
        fetches(&r.summary),
        1,
        "the summary counts the controller's fetch"
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(r.summary["limits"][0]["scope"], "fleet");
    mock.shutdown().await;
}

/// Tokens that live 4 s, refreshed 2 s before expiry: the controller fetches one every 2 s and
/// pushes it to every worker before the old one expires, so no request meets an expired token
/// and the mock issues one token per refresh, not one per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refreshed_before_expiry_reaches_every_worker_in_time() {
    let _one = SERIAL.lock().await;
    let mut cfg = mock_config();
    cfg.token_lifetime = Duration::from_secs(4);
    let mock = start_mock(cfg).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let text = plan(&target, "7s").replace("share: fleet }", "share: fleet, refreshBefore: 2s }");
    assert!(text.contains("refreshBefore: 2s"));
    let extra = [
        "--workers".to_string(),
        WORKERS.to_string(),
        "--worker-header".to_string(),
    ];
    let r = run_summary(dir.path(), &text, &extra, &[], Duration::from_secs(60)).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let stats = mock.stats();
    let unauthorized = stats.requests.by_status.get(&401).copied().unwrap_or(0);
    let failed = r.summary["totals"]["failed"].as_u64().unwrap();
    eprintln!(
        "4 s tokens refreshed 2 s ahead over a 7 s run of 3 busy workers: tokens issued {}, \
         fetches in the summary {}, {unauthorized} answers 401, {failed} failed requests, {} \
         requests",
        stats.tokens.issued,
        fetches(&r.summary),
        stats.requests.total
    );
    assert_eq!(unauthorized, 0, "a worker used an expired token");
    assert_eq!(failed, 0);
    // A fetch at the start and one every 2 s: 4 or 5 within the run and its graceful stop
    // (3 workers fetching their own would be 3 times as many).
    assert!(
        (3..=5).contains(&stats.tokens.issued),
        "tokens issued {}",
        stats.tokens.issued
    );
    assert_eq!(fetches(&r.summary), stats.tokens.issued);
    mock.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SESSION: &str = "served-token-0123456789";

fn spawn_controller(
    plan: &std::path::Path,
    port: u16,
    summary: &std::path::Path,
) -> std::process::Child {
    pacer_spawn(&[
        "controller",
        "--plan",
        plan.to_str().unwrap(),
        "--expect-workers",
        &WORKERS.to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-served",
        "--session-token",
        SESSION,
        "--worker-header",
        "-q",
        "--summary-json",
        summary.to_str().unwrap(),
    ])
}

fn spawn_worker(port: u16) -> std::process::Child {
    pacer_spawn(&[
        "worker",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--test-id",
        "t-served",
        "--session-token",
        SESSION,
        "--connect-for",
        "20s",
        "--reconnect-for",
        "20s",
    ])
}

/// `pacer controller` and 4 `pacer worker` processes: the same budget and one token; a 401
/// seen by every worker makes one refresh for all (and no request fails); a forced 429 with
/// Retry-After pauses every worker until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_workers_share_one_token_one_refresh_and_one_pause() {
    let _one = SERIAL.lock().await;
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "plan.yaml", &plan(&target, "10s"));
    let sj = dir.path().join("summary.json");
    let port = free_port();
    let controller = spawn_controller(&p, port, &sj);
    let workers: Vec<_> = (0..WORKERS).map(|_| spawn_worker(port)).collect();
    // Every busy worker sending, then a 401 (its token is revoked: every worker holds it).
    let started = std::time::Instant::now();
    while mock.stats().workers.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let before = mock.stats();
    let before_401_us = mock.control().uptime().as_micros() as u64;
    mock.control().force_401(1);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // A 429 with Retry-After 1 s: the fleet pauses until it ends.
    let retry_after = Duration::from_secs(1);
    mock.control().force_429(1, retry_after.as_secs());
    let out =
        tokio::task::spawn_blocking(move || wait_bounded(controller, Duration::from_secs(60)))
            .await
            .unwrap();
    for w in workers {
        let o = tokio::task::spawn_blocking(move || wait_bounded(w, Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let s: Value = summary(&sj);
    let stats = mock.stats();
    let arrivals = mock.control().arrivals().arrivals;
    let unauthorized = stats.requests.by_status.get(&401).copied().unwrap_or(0);
    // The pause: arrivals from 50 ms after the forced 429 to its Retry-After's end.
    let forced_at = arrivals
        .iter()
        .find(|a| a.status == 429)
        .map(|a| a.t_us)
        .expect("the forced 429 arrived");
    let in_pause = count_in(
        &arrivals,
        forced_at + 50_000,
        forced_at + retry_after.as_micros() as u64 - 50_000,
        None,
    );
    let after = count_in(
        &arrivals,
        forced_at + retry_after.as_micros() as u64,
        forced_at + retry_after.as_micros() as u64 + 1_000_000,
        Some(200),
    );
    let failed = s["totals"]["failed"].as_u64().unwrap();
    // The steady rate before the 401: from 1 s after the first arrival.
    let first = arrivals.first().unwrap().t_us;
    let from = first + 1_000_000;
    let steady = count_in(&arrivals, from, before_401_us, Some(200)) as f64
        / ((before_401_us - from) as f64 / 1e6);
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    eprintln!(
        "pacer controller + 4 workers: steady {steady:.1}/s before the 401 ({:.1}% of the \
         limit's {allowed}/s); tokens issued {} before the 401, {} at the end; \
         {unauthorized} answers 401 ({} forced); failed requests {failed}; forced 429 at \
         {:.3}s: {in_pause} arrivals inside its 1 s pause (from +50 ms), {after} accepted in the \
         second after it",
        steady / allowed * 100.0,
        before.tokens.issued,
        stats.tokens.issued,
        stats.auth.forced,
        forced_at as f64 / 1e6
    );
    assert!(
        steady >= 0.95 * allowed,
        "accepted {steady:.1}/s before the 401, under 95% of the {allowed}/s allowed"
    );
    assert_eq!(before.tokens.issued, 1, "one fetch for the whole fleet");
    assert_eq!(stats.tokens.issued, 2, "exactly one refresh after the 401s");
    assert_eq!(
        fetches(&s),
        2,
        "the summary counts the controller's fetches"
    );
    assert_eq!(failed, 0, "requests failed after the refresh");
    assert!(
        in_pause <= 3,
        "{in_pause} requests sent during the fleet's pause"
    );
    assert!(
        after > 100,
        "only {after} accepted in the second after the pause"
    );
    let lim = &stats.limits[0];
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "the fleet overran the limit: {} in a window",
        lim.max_offered_in_window
    );
    assert!(!stats.workers.contains_key("3"), "worker 3 has no VU");
    mock.shutdown().await;
}

/// examples/served-fleet.yaml as written, with `pacer run --workers 4` against the mock's
/// demo defaults (300 requests per minute per token): one token, no 429, the idle worker idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_fleet_example_runs_as_written() {
    let _one = SERIAL.lock().await;
    let mock = start_mock(MockConfig::default()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(workspace_root().join("examples/served-fleet.yaml")).unwrap();
    let extra = [
        "--workers".to_string(),
        WORKERS.to_string(),
        "--worker-header".to_string(),
    ];
    let envs = [("PACER_TARGET", target.as_str())];
    let r = run_summary(dir.path(), &text, &extra, &envs, Duration::from_secs(60)).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let stats = mock.stats();
    let throttled = stats.requests.by_status.get(&429).copied().unwrap_or(0);
    eprintln!(
        "examples/served-fleet.yaml: {} requests, {throttled} answered 429, tokens issued {}, \
         per worker {:?}",
        stats.requests.total,
        stats.tokens.issued,
        stats
            .workers
            .iter()
            .map(|(k, w)| (k.clone(), w.count))
            .collect::<Vec<_>>()
    );
    assert_eq!(stats.tokens.issued, 1, "one token for the fleet");
    assert_eq!(throttled, 0);
    assert!(!stats.workers.contains_key("3"), "worker 3 has no VU");
    mock.shutdown().await;
}

/// The controller killed mid-run and started again (as `pacer controller` is restarted by a
/// supervisor): while it is gone no worker sends anything past the slots it had leased (its
/// requests wait, then fail as the limiter unavailable, never unpaced); the workers keep the
/// token they hold, take their shards back to the new controller, lease from it, and the
/// server's limit is never overrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_serves_the_workers_again_and_nothing_goes_unpaced() {
    let _one = SERIAL.lock().await;
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "plan.yaml", &plan(&target, "10s"));
    let port = free_port();
    let mut first = spawn_controller(&p, port, &dir.path().join("a.json"));
    let workers: Vec<_> = (0..WORKERS).map(|_| spawn_worker(port)).collect();
    let started = std::time::Instant::now();
    while mock.stats().requests.total < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL the controller mid-run
    let _ = first.wait();
    let killed_us = mock.control().uptime().as_micros() as u64;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarted_us = mock.control().uptime().as_micros() as u64;
    let sj = dir.path().join("b.json");
    let second = spawn_controller(&p, port, &sj);
    let out = tokio::task::spawn_blocking(move || wait_bounded(second, Duration::from_secs(60)))
        .await
        .unwrap();
    for w in workers {
        let o = tokio::task::spawn_blocking(move || wait_bounded(w, Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let s: Value = summary(&sj);
    let stats = mock.stats();
    let arrivals = mock.control().arrivals().arrivals;
    // Slots leased before the kill cover at most a lease's span: nothing after 300 ms.
    let in_outage = count_in(&arrivals, killed_us + 300_000, restarted_us, None);
    let after = count_in(&arrivals, restarted_us, u64::MAX, Some(200));
    let lim = &stats.limits[0];
    eprintln!(
        "controller killed at {:.2}s, restarted at {:.2}s: {in_outage} arrivals from 300 ms after \
         the kill to the restart, {after} accepted after it; max in a window {} of {LIMIT}; \
         tokens issued {}; the restarted controller counted {} requests, {} failed",
        killed_us as f64 / 1e6,
        restarted_us as f64 / 1e6,
        lim.max_offered_in_window,
        stats.tokens.issued,
        s["totals"]["http_reqs"],
        s["totals"]["failed"]
    );
    assert_eq!(s["fleet"]["resumed"], true);
    assert_eq!(
        in_outage, 0,
        "requests went out while no controller served the budget"
    );
    assert!(after > 200, "only {after} accepted after the restart");
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "the fleet overran the limit: {} in a window",
        lim.max_offered_in_window
    );
    assert_eq!(lim.rejected, 0);
    assert_eq!(stats.tokens.issued, 1, "the workers kept their token");
    mock.shutdown().await;
}
