//! A fleet formed by hand, end to end: 8 real `pacer run --redis URL --fleet ID` processes, a
//! real `redis-server` and the real mock API (with its arrival log) on loopback. Together they
//! must behave like one well-behaved client: inside the per-token limit and close to it, paused
//! together by one Retry-After, one token fetch for all, few Redis calls, and safe when Redis
//! goes away.
//!
//! Times are scaled down (a 5 s window instead of a minute). The tests share the machine's two
//! cores, so they run one at a time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Output;
use std::time::Duration;

use pacer_mock::{Algorithm, Arrival, AuthMode, LatencyConfig, LimitConfig, LimitKey, MockConfig};
use pacer_tests::*;

/// The fleet's size in every test.
const PROCESSES: usize = 8;
/// The server's per-token limit: 5000 requests in any 5 s (1000/s).
const LIMIT: u64 = 5000;
const WINDOW: Duration = Duration::from_secs(5);
/// What pacer paces the fleet to: (5000 - 1) / (5 s + 150 ms), from the accuracy bound.
const PACING: f64 = 4999.0 / 5.15;

/// One test at a time: each runs 8 processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn mock_config(token_lifetime: Duration) -> MockConfig {
    MockConfig {
        auth: AuthMode::Required,
        token_lifetime,
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

/// Each process offers `rate` (8 x 375/s = 3x the limit by default).
fn plan(target: &str, scope: &str, rate: u32, duration: &str) -> String {
    format!(
        r#"name: fleet-e2e
target: {target}
auth:
  - {{ name: g, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: pacer-demo, clientSecret: demo-secret, refreshBefore: 5s }}
limits:
  - {{ name: per-token, limit: {LIMIT}/5s, scope: {scope} }}
retry: {{ maxAttempts: 3, backoff: {{ base: 50ms, max: 1s }} }}
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: {rate}/s
    duration: {duration}
    maxInFlight: 200
    gracefulStop: 500ms
    auth: g
    requests: [{{ name: r, path: /api/v2/users/me }}]
"#
    )
}

struct Fleet {
    _dir: tempfile::TempDir,
    children: Vec<(std::process::Child, std::path::PathBuf)>,
}

/// Start the fleet's processes (they run while the caller acts on the mock or Redis).
fn start_fleet(plan_text: &str, redis: &RedisServer, id: &str, extra: &[&str]) -> Fleet {
    start_n(plan_text, &redis.url(), id, extra, PROCESSES)
}

/// `n` processes of `pacer run --redis url --fleet id`.
fn start_n(plan_text: &str, url: &str, id: &str, extra: &[&str], n: usize) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "plan.yaml", plan_text);
    let children = (0..n)
        .map(|i| {
            let sj = dir.path().join(format!("s{i}.json"));
            let idx = i.to_string();
            let mut args = vec![
                "run",
                p.to_str().unwrap(),
                "-q",
                "--worker-header",
                "--worker-index",
                &idx,
                "--summary-json",
                sj.to_str().unwrap(),
                "--redis",
                url,
                "--fleet",
                id,
            ];
            args.extend_from_slice(extra);
            (pacer_spawn(&args), sj)
        })
        .collect();
    Fleet {
        _dir: dir,
        children,
    }
}

/// Wait for every process (bounded); their outputs and summaries.
async fn finish(fleet: Fleet, limit: Duration) -> Vec<(Output, serde_json::Value)> {
    let Fleet { _dir, children } = fleet;
    let done = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(child, sj)| {
                let out = wait_bounded(child, limit);
                let code = out.status.code();
                assert!(
                    matches!(code, Some(0) | Some(99)),
                    "a fleet process ended with {:?}\n{}\n{}",
                    out.status,
                    stdout(&out),
                    stderr(&out)
                );
                assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
                let s = summary(&sj);
                (out, s)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    drop(_dir);
    // A busy machine can make a process miss Redis' response timeout: say so, it explains
    // numbers that are off (safe mode drops leases and halves the rate).
    let safe: Vec<f64> = done
        .iter()
        .map(|(_, s)| {
            s["limits"][0]["fleet"]["safe_mode_secs"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .collect();
    if safe.iter().any(|s| *s > 0.0) {
        eprintln!("seconds in safe mode per process: {safe:?}");
        for (out, _) in &done {
            let err = stderr(out);
            if err.contains("safe mode") {
                eprintln!("{}", err.lines().take(5).collect::<Vec<_>>().join("\n"));
            }
        }
    }
    done
}

fn api(arrivals: &[Arrival]) -> Vec<&Arrival> {
    arrivals.iter().collect()
}

fn count_in(arrivals: &[&Arrival], from_us: u64, to_us: u64, status: Option<u16>) -> usize {
    arrivals
        .iter()
        .filter(|a| a.t_us >= from_us && a.t_us < to_us && status.is_none_or(|s| a.status == s))
        .count()
}

fn secs_us(s: f64) -> u64 {
    (s * 1e6) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_share_one_budget_with_few_redis_calls_and_worker_scope_overruns() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());

    // scope: fleet, 8 processes offering 3x the limit in total
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    let fleet = start_fleet(&plan(&target, "fleet", 375, "7s"), &redis, "budget", &[]);
    let runs = finish(fleet, Duration::from_secs(30)).await;
    let redis_commands = redis.commands_run();
    let stats = mock.stats();
    let arrivals = mock.control().arrivals().arrivals;
    let lim = &stats.limits[0];
    let offered = lim.accepted + lim.rejected;
    let share_429 = lim.rejected as f64 / offered as f64;
    // accepted in the steady part: from 1 s after the first arrival to 1 s before the planned
    // end (the processes start and stop within a few hundred ms of each other)
    let a = api(&arrivals);
    let first = a.first().unwrap().t_us;
    let (from, to) = (first + secs_us(1.0), first + secs_us(6.0));
    let steady = count_in(&a, from, to, Some(200)) as f64 / ((to - from) as f64 / 1e6);
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    let requests = stats.requests.by_route["GET /api/v2/users/me"];
    let per_request = redis_commands as f64 / requests as f64;
    let client_calls: u64 = runs
        .iter()
        .map(|(_, s)| s["limits"][0]["fleet"]["redis_calls"].as_u64().unwrap())
        .sum();
    eprintln!(
        "fleet scope: {requests} requests, accepted {} rejected {} ({:.3}%), steady {steady:.1}/s \
         ({:.1}% of the limit's {allowed}/s, paced at {PACING:.1}/s), max offered in a window {} \
         of {LIMIT}; Redis ran {redis_commands} commands = {per_request:.4}/request \
         ({client_calls} sent by the processes = {:.4}/request); tokens issued {}",
        lim.accepted,
        lim.rejected,
        share_429 * 100.0,
        steady / allowed * 100.0,
        lim.max_offered_in_window,
        client_calls as f64 / requests as f64,
        stats.tokens.issued
    );
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "the fleet overran the limit: {} in a window",
        lim.max_offered_in_window
    );
    assert!(share_429 < 0.01, "429 share {share_429:.4}");
    assert!(
        steady >= 0.95 * allowed,
        "accepted {steady:.1}/s, under 95% of the {allowed}/s the limit allows"
    );
    // What a request pays is the round trips its process makes (leases in batches): measured
    // 0.021 per request. Redis' own count also holds the commands run inside the scripts and
    // the once-a-second notes of each process of a budget (heartbeat, granted slots, what the
    // server said), which grow with processes x seconds, not with requests: measured 0.082.
    assert!(
        client_calls as f64 / requests as f64 <= 0.05,
        "{client_calls} Redis calls by the processes for {requests} requests"
    );
    assert!(
        per_request <= 0.15,
        "{redis_commands} Redis commands for {requests} requests"
    );
    assert_eq!(stats.tokens.issued, 1, "one token for the fleet");
    for (out, s) in &runs {
        assert!(
            stdout(out).contains("fleet: 8 processes"),
            "{}",
            stdout(out)
        );
        assert_eq!(s["limits"][0]["scope"], "fleet");
    }
    // the last process deleted the test's keys
    assert_eq!(redis.command(&["KEYS", "{pacer:budget}*"]).unwrap(), "");
    mock.shutdown().await;

    // scope: worker, the same run: each process paces itself to the whole limit
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let fleet = start_fleet(
        &plan(&target, "worker", 375, "3s"),
        &redis,
        "per-worker",
        &[],
    );
    finish(fleet, Duration::from_secs(30)).await;
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let offered = lim.accepted + lim.rejected;
    eprintln!(
        "worker scope: accepted {} rejected {} ({:.1}%), max offered in a window {} of {LIMIT}",
        lim.accepted,
        lim.rejected,
        lim.rejected as f64 / offered as f64 * 100.0,
        lim.max_offered_in_window
    );
    // Each process paces itself to the whole limit: together they offer 3x of it, exhaust the
    // window in under 2 s and get 429s (then each one's Retry-After pauses it).
    assert!(
        lim.max_offered_in_window > LIMIT && lim.exceeded > 0,
        "scope: worker should overrun: {lim:?}"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_retry_after_stops_all_eight_within_100ms_and_they_resume_at_the_rate() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let fleet = start_fleet(&plan(&target, "fleet", 375, "6s"), &redis, "pause", &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retry_after = 2u64;
    mock.control().force_429(1, retry_after);
    let _runs = finish(fleet, Duration::from_secs(30)).await;
    let stats = mock.stats();
    let arrivals = mock.control().arrivals().arrivals;
    let t429 = stats.faults.forced429_us[0];
    let a = api(&arrivals);
    let after: Vec<&&Arrival> = a.iter().filter(|a| a.t_us > t429).collect();
    // the last arrival of the burst still in flight, and the first after the pause
    let stop = after
        .iter()
        .map(|a| a.t_us)
        .take_while(|t| *t <= t429 + 100_000)
        .max()
        .unwrap_or(t429);
    let resume = after
        .iter()
        .map(|a| a.t_us)
        .find(|t| *t > t429 + 100_000)
        .unwrap();
    let gap = (resume - stop) as f64 / 1e6;
    let in_flight = after.iter().filter(|a| a.t_us <= t429 + 100_000).count();
    // the first second after the pause: the paced rate, no burst
    let resumed = count_in(&a, resume, resume + 1_000_000, None);
    let workers_after: std::collections::BTreeSet<_> = after
        .iter()
        .filter(|a| a.t_us >= resume)
        .filter_map(|a| a.worker.clone())
        .collect();
    eprintln!(
        "forced 429 at {:.3}s: {in_flight} arrivals in the next 100 ms (last at +{:.1} ms), then \
         nothing for {gap:.3}s (Retry-After {retry_after}s); {resumed} in the first second after \
         (paced at {PACING:.1}/s) from {} processes",
        t429 as f64 / 1e6,
        (stop - t429) as f64 / 1e3,
        workers_after.len()
    );
    assert!(
        resume >= t429 + retry_after * 1_000_000 - 50_000,
        "an arrival {:.3}s after the 429, inside its Retry-After",
        (resume - t429) as f64 / 1e6
    );
    // At most what the accuracy bound allows in 1 s (b + r(1 s + D)); the 8 x 200 requests
    // waiting would be a burst far above it.
    assert!(
        (resumed as f64) <= 1.0 + PACING * 1.15,
        "{resumed} in the first second after the pause: a burst"
    );
    let first_100ms = count_in(&a, resume, resume + 100_000, None);
    assert!(
        (first_100ms as f64) <= 1.0 + PACING * 0.25,
        "{first_100ms} in the first 100 ms after the pause: a burst"
    );
    assert!(
        (resumed as f64) >= PACING * 0.8,
        "only {resumed} in the first second after the pause"
    );
    assert_eq!(workers_after.len(), PROCESSES, "every process resumed");
    assert!(stats.limits[0].max_offered_in_window <= LIMIT);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_fetch_for_the_fleet_and_one_refresh_after_a_401_seen_by_all() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let fleet = start_fleet(&plan(&target, "fleet", 50, "4s"), &redis, "tokens", &[]);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let before = mock.stats();
    // The next request gets 401 and its token is revoked: the token every process holds, so
    // each of them sees 401s at once. (A forced 401 revokes whatever token its request carries:
    // forcing more would revoke each new token in turn.)
    mock.control().force_401(1);
    let runs = finish(fleet, Duration::from_secs(30)).await;
    let stats = mock.stats();
    let workers_before = before.workers.len();
    let unauthorized = stats.requests.by_status.get(&401).copied().unwrap_or(0);
    let fetches: u64 = runs
        .iter()
        .map(|(_, s)| {
            s["token_fetches"].as_array().map_or(0, |a| {
                a.iter().map(|f| f["fetches"].as_u64().unwrap_or(0)).sum()
            })
        })
        .sum();
    eprintln!(
        "tokens issued: {} after 2 s with {workers_before} processes sending, {} at the end; \
         {unauthorized} answers 401 ({} forced, the others for the revoked token); fetches \
         reported by the processes: {fetches}",
        before.tokens.issued, stats.tokens.issued, stats.auth.forced
    );
    assert_eq!(workers_before, PROCESSES, "all processes were sending");
    assert_eq!(before.tokens.issued, 1, "one fetch for the whole fleet");
    assert_eq!(stats.auth.forced, 1);
    for (out, s) in &runs {
        assert!(
            s["totals"]["status"]["401"].as_u64().unwrap_or(0) >= 1,
            "every process saw the 401\n{}",
            stdout(out)
        );
    }
    assert_eq!(stats.tokens.issued, 2, "exactly one refresh after the 401s");
    assert_eq!(fetches, 2);
    // every request that got a 401 was retried with the new token
    let failed: u64 = runs
        .iter()
        .map(|(_, s)| s["totals"]["failed"].as_u64().unwrap())
        .sum();
    assert_eq!(failed, 0, "requests failed after the refresh");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_means_safe_mode_then_a_pause_with_the_reason_and_redis_back_resumes() {
    let _one = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let safe_mode = 2.0;
    let fleet = start_fleet(
        &plan(&target, "fleet", 375, "10s"),
        &redis,
        "outage",
        &["--redis-safe-mode", "2s"],
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let killed = mock.control().uptime().as_micros() as u64;
    redis.stop();
    // 2 s of safe mode, then 1 s without sending
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let restarted = mock.control().uptime().as_micros() as u64;
    redis.restart();
    let runs = finish(fleet, Duration::from_secs(30)).await;
    let stats = mock.stats();
    let arrivals = mock.control().arrivals().arrivals;
    let a = api(&arrivals);
    let bound = killed + secs_us(safe_mode);
    let before = count_in(&a, killed - 1_000_000, killed, None);
    let safe = count_in(&a, killed, bound, None);
    let late = count_in(&a, bound + 300_000, restarted, None);
    let back = a
        .iter()
        .map(|a| a.t_us)
        .find(|t| *t > restarted)
        .unwrap_or(u64::MAX);
    // What was sent in safe mode is charged to the fleet's budget first (about 1 s of it here,
    // spread over the first round of leases), then the fleet runs at the paced rate again:
    // compared with the rate this fleet had before the outage on this (shared) machine.
    let after = count_in(&a, restarted + 3_000_000, restarted + 4_000_000, None);
    let resumed_workers: std::collections::BTreeSet<_> = a
        .iter()
        .filter(|a| a.t_us > restarted)
        .filter_map(|a| a.worker.clone())
        .collect();
    eprintln!(
        "Redis stopped at {:.2}s: {before}/s before, {safe} in the {safe_mode}s of safe mode \
         ({:.0}/s), {late} arrivals from the bound + 300 ms to the restart at {:.2}s; first \
         arrival {:.2}s after the restart, {after}/s 3 s after it, from {} processes; max \
         offered in a window {} of {LIMIT}",
        killed as f64 / 1e6,
        safe as f64 / safe_mode,
        restarted as f64 / 1e6,
        (back.saturating_sub(restarted)) as f64 / 1e6,
        resumed_workers.len(),
        stats.limits[0].max_offered_in_window
    );
    assert!(stats.limits[0].max_offered_in_window <= LIMIT);
    assert!(safe > 0, "safe mode sends");
    assert!(
        (safe as f64) < 0.75 * PACING * safe_mode,
        "safe mode is a safe share: {safe}"
    );
    assert_eq!(late, 0, "sending pauses after the safe-mode bound");
    assert!(
        back < restarted + 2_000_000,
        "the fleet did not resume within 2 s of Redis' restart"
    );
    assert!(
        after as f64 >= 0.8 * PACING.min(before as f64),
        "3 s after the restart {after}/s, before the outage {before}/s"
    );
    assert_eq!(resumed_workers.len(), PROCESSES, "every process resumed");
    for (out, s) in &runs {
        let f = &s["limits"][0]["fleet"];
        let reason = f["unavailable_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("safe-mode bound"), "{}", stdout(out));
        assert!(stdout(out).contains("sending paused: "), "{}", stdout(out));
        let secs = f["safe_mode_secs"].as_f64().unwrap();
        assert!((1.9..=2.1).contains(&secs), "safe mode {secs}s");
        assert!(f["unavailable_secs"].as_f64().unwrap() > 1.0);
        assert!(
            s["totals"]["errors"]["limiter"].as_u64().unwrap_or(0) > 0,
            "waiting requests fail as limiter errors\n{}",
            stdout(out)
        );
    }
    mock.shutdown().await;
}

/// The controller's workers (`pacer run --workers 3 --redis URL`, as the Kubernetes operator
/// runs them with PACER_REDIS_URL) share the fleet's budget in Redis: one budget for the
/// whole limit instead of a weight's share each, one token for all, the keys deleted at the
/// end, and the fleet's count equal to the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_workers_share_the_budget_through_redis() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    // 3 workers offering 2x the limit in total (the plan's rate is the fleet's)
    let plan = plan(&target, "fleet", 2000, "6s");
    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    let extra = ["--workers".to_string(), "3".to_string()];
    let url = redis.url();
    let r = run_summary(
        dir.path(),
        &plan,
        &extra,
        &[("PACER_REDIS_URL", &url)],
        Duration::from_secs(40),
    )
    .await;
    let text = format!("{}\n{}", r.stdout, r.stderr);
    assert!(matches!(r.code, 0 | 99), "exit {}\n{text}", r.code);
    assert!(!text.contains("panicked"), "{text}");
    let s = r.summary;
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let arrivals = mock.control().arrivals().arrivals;
    let a = api(&arrivals);
    let first = a.first().unwrap().t_us;
    let (from, to) = (first + secs_us(1.0), first + secs_us(5.0));
    let steady = count_in(&a, from, to, Some(200)) as f64 / ((to - from) as f64 / 1e6);
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    let requests = stats.requests.by_route["GET /api/v2/users/me"];
    let counted = s["totals"]["http_reqs"].as_u64().unwrap();
    let redis_commands = redis.commands_run();
    eprintln!(
        "3 workers through Redis: {requests} requests at the mock, {counted} counted; accepted {} \
         rejected {}, steady {steady:.1}/s of {allowed}/s, max offered in a window {} of {LIMIT}; \
         {redis_commands} Redis commands ({:.4}/request); tokens issued {}",
        lim.accepted,
        lim.rejected,
        lim.max_offered_in_window,
        redis_commands as f64 / requests as f64,
        stats.tokens.issued
    );
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "the workers overran the limit: {lim:?}"
    );
    assert!(
        steady >= 0.9 * allowed,
        "accepted {steady:.1}/s, under 90% of the {allowed}/s the limit allows"
    );
    assert!(redis_commands > 0, "the workers never used Redis");
    assert_eq!(stats.tokens.issued, 1, "one token for the fleet");
    assert_eq!(counted, requests, "the fleet's count is the server's");
    // the fleet's limits table, merged from the workers' reports
    let l = &s["limits"][0];
    assert_eq!(l["scope"], "fleet", "{l}");
    assert!(
        (l["pacing_rate"].as_f64().unwrap() - PACING).abs() < 1.0,
        "{l}"
    );
    assert!(l["fleet"]["redis_calls"].as_u64().unwrap() > 0, "{l}");
    assert!(text.contains("fleet: 3 processes"), "{text}");
    // the last worker out deleted the test's keys
    assert_eq!(redis.command(&["KEYS", "{pacer:*"]).unwrap(), "");
    mock.shutdown().await;
}

/// `rediss://` with a password and a private CA (`--redis-ca`): the fleet works through TLS,
/// the password never shows, and without the CA the connection is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_password_and_a_private_ca() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pacer_tests::kube::Pki::generate(&dir.path().join("pki")).unwrap();
    const PASSWORD: &str = "s3cret-redis-pw";
    let redis = RedisServer::start_tls(PASSWORD, &pki.serving_cert, &pki.serving_key, &pki.ca_cert);
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let ca = pki.ca_cert.display().to_string();

    // without the CA: refused, naming Redis, without the password
    let p = write(dir.path(), "plan.yaml", &plan(&target, "fleet", 100, "1s"));
    let out = pacer(
        &[
            "run",
            "-q",
            p.to_str().unwrap(),
            "--redis",
            &redis.tls_url(),
            "--fleet",
            "tls",
        ],
        &[],
        Duration::from_secs(30),
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Redis at rediss://127.0.0.1:"), "{text}");
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");

    redis.command(&["CONFIG", "RESETSTAT"]).unwrap();
    let fleet = start_n(
        &plan(&target, "fleet", 375, "4s"),
        &redis.tls_url(),
        "tls",
        &["--redis-ca", &ca],
        3,
    );
    let runs = finish(fleet, Duration::from_secs(30)).await;
    let stats = mock.stats();
    let lim = &stats.limits[0];
    eprintln!(
        "rediss: accepted {} rejected {}, max offered in a window {} of {LIMIT}; {} Redis commands; tokens issued {}",
        lim.accepted,
        lim.rejected,
        lim.max_offered_in_window,
        redis.commands_run(),
        stats.tokens.issued
    );
    assert!(lim.max_offered_in_window <= LIMIT, "{lim:?}");
    // the scripts the processes ran over TLS (the test's own AUTH + INFO on the plain port
    // would count in a plain commands total)
    let info = redis.command(&["INFO", "commandstats"]).unwrap();
    assert!(
        info.contains("cmdstat_evalsha:"),
        "no lease script reached Redis over TLS:\n{info}"
    );
    assert_eq!(stats.tokens.issued, 1, "one token for the fleet");
    for (out, s) in &runs {
        let text = format!("{}{}", stdout(out), stderr(out));
        assert!(text.contains("fleet: 3 processes"), "{text}");
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
        assert!(
            !s.to_string().contains(PASSWORD),
            "the password is in the summary"
        );
    }
    assert_eq!(redis.command(&["KEYS", "{pacer:tls}*"]).unwrap(), "");
    mock.shutdown().await;
}

/// A Redis Cluster of 3 masters: the processes are given one node, the test's slot lives on
/// another, and the budget holds (the scripts follow the slot; Pub/Sub reaches every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_holds_the_budget() {
    let _one = SERIAL.lock().await;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let seed = &cluster.nodes[0];
    // a fleet id whose slot another node serves
    let id = (0..100)
        .map(|i| format!("cl{i}"))
        .find(|id| cluster.node_of(&format!("{{pacer:{id}}}")).port != seed.port)
        .unwrap();
    let home = cluster.node_of(&format!("{{pacer:{id}}}"));
    home.command(&["CONFIG", "RESETSTAT"]).unwrap();
    let mock = start_mock(mock_config(Duration::from_secs(3600))).await;
    let target = format!("http://{}", mock.addr());
    let fleet = start_n(&plan(&target, "fleet", 375, "5s"), &seed.url(), &id, &[], 3);
    let runs = finish(fleet, Duration::from_secs(30)).await;
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let arrivals = mock.control().arrivals().arrivals;
    let a = api(&arrivals);
    let first = a.first().unwrap().t_us;
    let (from, to) = (first + secs_us(1.0), first + secs_us(4.0));
    let steady = count_in(&a, from, to, Some(200)) as f64 / ((to - from) as f64 / 1e6);
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    eprintln!(
        "cluster: fleet {id} on node :{} (seed :{}); accepted {} rejected {}, steady {steady:.1}/s of {allowed}/s, max offered in a window {} of {LIMIT}; {} commands on its node; tokens issued {}",
        home.port,
        seed.port,
        lim.accepted,
        lim.rejected,
        lim.max_offered_in_window,
        home.commands_run(),
        stats.tokens.issued
    );
    assert!(lim.max_offered_in_window <= LIMIT, "{lim:?}");
    assert!(
        steady >= 0.9 * allowed,
        "accepted {steady:.1}/s of {allowed}/s"
    );
    assert!(home.commands_run() > 0, "the slot's node saw no commands");
    assert_eq!(stats.tokens.issued, 1, "one token for the fleet");
    for (out, _) in &runs {
        assert!(
            stdout(out).contains("fleet: 3 processes"),
            "{}",
            stdout(out)
        );
    }
    assert_eq!(
        home.command(&["KEYS", &format!("{{pacer:{id}}}*")])
            .unwrap(),
        ""
    );
    mock.shutdown().await;
}
