//! Rate limits end to end: the real `pacer` binary against the real mock API on loopback.
//!
//! Times are scaled down together so the file stays fast (a Genesys-like `600 per 10 s` becomes
//! `60 per 1 s`, a 24 h token becomes 6 s, ...). Every run is bounded and only talks to
//! 127.0.0.1. What is shown:
//!
//! 1. pacing inside a per-token limit (and what happens without declaring it),
//! 2. a Retry-After pauses the limit's scope and traffic resumes at the rate, without a burst,
//! 3. one token shared by every request, refreshed ahead of expiry, refetched once on a 401,
//! 4. odd Retry-After values (HTTP-date, missing, malformed, absurd) are survived and reported,
//! 5. the text summary says which limit the server named and where the time went.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_mock::{
    Algorithm, Arrival, AuthMode, LatencyConfig, LimitConfig, LimitKey, MockConfig, MockServer,
    RetryAfterFormat,
};
use pacer_tests::*;
use serde_json::Value;

/// Kill a pacer run that takes longer than this (no test here needs half of it).
const RUN_LIMIT: Duration = Duration::from_secs(40);

/// One finished `pacer run`.
type Run = RunSummary;

/// Starts `pacer run -q PLAN --summary-json FILE` in the background.
fn spawn_run(plan: String) -> tokio::task::JoinHandle<Run> {
    tokio::spawn(async move {
        let dir = tempfile::tempdir().unwrap();
        run_summary(dir.path(), &plan, &[], &[], RUN_LIMIT).await
    })
}

async fn run_plan(plan: String) -> Run {
    spawn_run(plan).await.unwrap()
}

fn limit(name: &str, key: LimitKey, n: u64, window: Duration) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        key,
        limit: n,
        window,
        methods: None,
        path_prefix: None,
        algorithm: Algorithm::Fixed,
        ..LimitConfig::default()
    }
}

/// The demo API (auth required, client pacer-demo/demo-secret) with only `limits`, answering
/// at once, recording every arrival.
fn auth_mock_config(limits: Vec<LimitConfig>) -> MockConfig {
    MockConfig {
        auth: AuthMode::Required,
        limits,
        latency: LatencyConfig::None,
        record_arrivals: true,
        ..MockConfig::default()
    }
}

/// No auth, only `limits`, answering at once, recording every arrival.
fn open_mock_config(limits: Vec<LimitConfig>) -> MockConfig {
    MockConfig {
        limits,
        record_arrivals: true,
        ..plain_mock_config(LatencyConfig::None)
    }
}

const CREDENTIAL: &str = "auth:
  - name: demo
    type: oauth2-clientCredentials
    tokenUrl: /oauth/token
    clientId: pacer-demo
    clientSecret: demo-secret
";

/// Arrivals at the mock, in time order.
fn arrivals(mock: &MockServer) -> Vec<Arrival> {
    let view = mock.control().arrivals();
    assert!(view.enabled, "arrival log is off");
    assert_eq!(view.dropped, 0, "arrival log overflowed");
    let mut a = view.arrivals;
    a.sort_by_key(|a| a.t_us);
    a
}

/// Waits until the mock has seen its first API request (pacer's start-up, including a build of
/// the binary by the helper, takes a variable time), then `then` more.
async fn traffic_then(mock: &MockServer, then: Duration) {
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    while mock.control().arrivals().arrivals.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "pacer sent nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(then).await;
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn f64_at(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in the summary"))
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not an integer in the summary"))
}

/// `throttled_by_server_limit` as (name, count) pairs.
fn server_limits(s: &Value) -> Vec<(String, u64)> {
    s["throttled_by_server_limit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect()
}

/// Fixed windows as the mock opens them: a window starts at the first accepted request when
/// none is open and lasts `window_us`. Returns their start times.
fn fixed_window_starts(accepted: &[u64], window_us: u64) -> Vec<u64> {
    let mut starts: Vec<u64> = Vec::new();
    for &t in accepted {
        if starts.last().is_none_or(|&s| t >= s + window_us) {
            starts.push(t);
        }
    }
    starts
}

// ---------------------------------------------------------------------------------------------
// 1. Pacing inside a per-token limit
// ---------------------------------------------------------------------------------------------

/// 600 per 10 s per token, scaled to 60 per 1 s; offered at 3x for 6 s.
const PER_TOKEN_LIMIT: u64 = 60;
const PER_TOKEN_WINDOW: Duration = Duration::from_secs(1);

fn per_token_plan(target: &str, limits: &str, duration: &str) -> String {
    format!(
        "name: per-token
target: {target}
{CREDENTIAL}{limits}scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: 180/s
    duration: {duration}
    maxInFlight: 2000
    gracefulStop: 1s
    auth: demo
    requests: [{{name: me, path: /api/v2/users/me}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paces_inside_a_per_token_limit_and_uses_almost_all_of_it() {
    let per_token = || {
        vec![limit(
            "per-token",
            LimitKey::Token,
            PER_TOKEN_LIMIT,
            PER_TOKEN_WINDOW,
        )]
    };

    // Without the limit in the plan: pacer sends the offered 180/s and the server refuses the
    // excess. This is why the plan states the server's limit.
    let mock = start_mock(auth_mock_config(per_token())).await;
    let target = format!("http://{}", mock.addr());
    let run = run_plan(per_token_plan(&target, "", "3s")).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let all = arrivals(&mock);
    let throttled = all.iter().filter(|a| a.status == 429).count();
    let undeclared_429_share = throttled as f64 / all.len() as f64;
    eprintln!(
        "undeclared: {} requests, {throttled} 429s ({:.1}%), exceeded {}, maxOfferedInWindow {}",
        all.len(),
        undeclared_429_share * 100.0,
        lim.exceeded,
        lim.max_offered_in_window
    );
    assert!(
        undeclared_429_share > 0.5,
        "without a declared limit most requests should be refused: {throttled} of {}",
        all.len()
    );
    assert!(lim.exceeded > 100, "exceeded {}", lim.exceeded);
    assert!(
        lim.max_offered_in_window > 2 * PER_TOKEN_LIMIT,
        "offered {} in one window",
        lim.max_offered_in_window
    );
    assert_eq!(
        server_limits(&run.summary),
        vec![("per-token".to_string(), throttled as u64)],
        "pacer names the limit the server refused with"
    );
    mock.shutdown().await;

    // With the limit declared: pacer paces under it.
    let mock = start_mock(auth_mock_config(per_token())).await;
    let target = format!("http://{}", mock.addr());
    // The 600 per 10 s, scaled down 10x in time: the window and the accuracy bound's
    // spread (100ms -> 10ms) shrink together; the burst cannot shrink below 1.
    let declared = "limits:\n  - {name: per-token, limit: 60/1s, burst: 1, spread: 10ms}\n";
    let run = run_plan(per_token_plan(&target, declared, "6s")).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let s = &run.summary;
    let stats = mock.stats();
    assert_eq!(stats.tokens.issued, 1, "one token for the whole run");
    let lim = &stats.limits[0];
    let all = arrivals(&mock);
    assert!(!all.is_empty());
    let throttled = all.iter().filter(|a| a.status == 429).count();
    let accepted: Vec<u64> = all
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.t_us)
        .collect();
    assert_eq!(accepted.len() as u64, lim.accepted);
    let (first, last) = (all[0].t_us, all[all.len() - 1].t_us);
    let window_us = PER_TOKEN_WINDOW.as_micros() as u64;
    // What the limit allows over the run: the mock's fixed windows open at the first request
    // after the previous one closed; every window allows 60, the last one in proportion to the
    // part of it the run still sent in.
    let starts = fixed_window_starts(&accepted, window_us);
    let last_start = *starts.last().unwrap();
    let last_share = (secs(last - last_start) / secs(window_us)).min(1.0);
    let allowed_by_windows = PER_TOKEN_LIMIT as f64 * ((starts.len() - 1) as f64 + last_share);
    // The same from the sending time alone (windows back to back).
    let span = secs(last - first);
    let allowed_by_span = PER_TOKEN_LIMIT as f64 * span / secs(window_us);
    let allowed = allowed_by_windows.max(allowed_by_span);
    let used = lim.accepted as f64 / allowed;
    let pacing_rate = f64_at(s, "/limits/0/pacing_rate");
    let margin = f64_at(s, "/limits/0/margin");
    eprintln!(
        "declared: {} requests over {span:.3}s in {} windows, accepted {} ({:.1}/s), \
         allowed {allowed_by_windows:.1} by windows / {allowed_by_span:.1} by span \
         -> used {:.1}%; 429s {throttled}; maxOfferedInWindow {}; \
         pacer pacing_rate {pacing_rate:.2}/s margin {:.1}%",
        all.len(),
        starts.len(),
        lim.accepted,
        lim.accepted as f64 / span,
        used * 100.0,
        lim.max_offered_in_window,
        margin * 100.0
    );
    assert!(
        lim.max_offered_in_window <= PER_TOKEN_LIMIT,
        "pacer offered {} in some 1 s window (limit {PER_TOKEN_LIMIT})",
        lim.max_offered_in_window
    );
    assert!(
        (throttled as f64) < 0.01 * all.len() as f64,
        "{throttled} 429s of {} responses",
        all.len()
    );
    assert!(
        used >= 0.95,
        "pacer used only {:.1}% of what the limit allows: {} accepted of {allowed:.1} \
         ({} windows of {PER_TOKEN_LIMIT}, sending for {span:.3}s); it paced at \
         {pacing_rate:.2}/s, keeping a {:.1}% margin",
        used * 100.0,
        lim.accepted,
        starts.len(),
        margin * 100.0
    );
    mock.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Retry-After pauses the scope
// ---------------------------------------------------------------------------------------------

/// Offered 45/s under a pacing rate of 51.8/s: the arrivals of the 2 s pause (about 90) queue
/// in the limiter, and would burst out at the end of the pause if the bucket were not emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_pauses_the_scope_and_traffic_resumes_at_the_rate() {
    const RETRY_AFTER_SECS: u64 = 2;
    let mock = start_mock(open_mock_config(vec![limit(
        "global",
        LimitKey::Global,
        60,
        Duration::from_secs(1),
    )]))
    .await;
    let target = format!("http://{}", mock.addr());
    let plan = format!(
        "name: pause
target: {target}
limits:
  - {{name: global, limit: 60/1s, burst: 3}}
retry: {{maxAttempts: 3, pauseScopeOn429: true, backoff: {{base: 50ms, max: 200ms}}}}
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: 45/s
    duration: 6s
    maxInFlight: 2000
    gracefulStop: 3s
    requests: [{{name: r, path: /api/v2/users/me}}]
"
    );
    let running = spawn_run(plan);
    // Let pacing settle, then one forced 429 for the next request.
    traffic_then(&mock, Duration::from_secs(2)).await;
    mock.control().force_429(1, RETRY_AFTER_SECS);
    let run = running.await.unwrap();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let s = &run.summary;
    let stats = mock.stats();
    assert_eq!(
        stats.faults.forced429_us.len(),
        1,
        "the forced 429 was sent"
    );
    assert_eq!(
        stats.requests.by_status.get(&429).copied(),
        Some(1),
        "the only 429 is the forced one (pacing kept inside the limit)"
    );
    let forced = stats.faults.forced429_us[0];
    let all = arrivals(&mock);
    let pacing_rate = f64_at(s, "/limits/0/pacing_rate");
    let burst = u64_at(s, "/limits/0/burst");

    // Requests granted before the 429 reached pacer may still land just after it.
    let in_flight_us = 50_000;
    let early = all
        .iter()
        .filter(|a| a.t_us > forced && a.t_us <= forced + in_flight_us)
        .count();
    let resume = all
        .iter()
        .find(|a| a.t_us > forced + in_flight_us)
        .expect("traffic resumed after the pause")
        .t_us;
    let pause = secs(resume - forced);
    let first_second = all
        .iter()
        .filter(|a| a.t_us >= resume && a.t_us < resume + 1_000_000)
        .count();
    let before = all
        .iter()
        .filter(|a| a.t_us < forced && a.t_us + 1_000_000 >= forced)
        .count();
    eprintln!(
        "forced 429 at {:.3}s; {early} arrivals within 50 ms after it; next arrival after \
         {pause:.3}s; {first_second} arrivals in the first second after the resume, {before} \
         in the second before the 429 (pacing {pacing_rate:.2}/s, burst {burst}); \
         summary: pauses {}, paused {:.3}s, time.paused {:.3}s",
        secs(forced),
        u64_at(s, "/limits/0/pauses"),
        f64_at(s, "/limits/0/paused_secs"),
        f64_at(s, "/time/paused/total_secs"),
    );
    assert!(
        pause >= 1.9,
        "a request arrived {pause:.3}s after a 429 with Retry-After {RETRY_AFTER_SECS}"
    );
    assert!(
        pause <= RETRY_AFTER_SECS as f64 + 0.5,
        "traffic resumed only after {pause:.3}s"
    );
    assert!(
        first_second as f64 <= pacing_rate + burst as f64,
        "{first_second} arrivals in the first second after the pause: a burst above the \
         pacing rate {pacing_rate:.2}/s + burst {burst}"
    );
    assert!(
        first_second as f64 >= 0.8 * pacing_rate,
        "only {first_second} arrivals in the first second after the pause"
    );

    // pacer's own account of it
    assert!(u64_at(s, "/limits/0/pauses") >= 1, "{}", run.stdout);
    assert!(f64_at(s, "/limits/0/paused_secs") >= 1.9, "{}", run.stdout);
    assert!(f64_at(s, "/time/paused/total_secs") > 0.0, "{}", run.stdout);
    assert_eq!(
        server_limits(s),
        vec![("forced".to_string(), 1)],
        "{}",
        run.stdout
    );
    assert_eq!(u64_at(s, "/retry_after/count"), 1);
    assert_eq!(u64_at(s, "/retry_after/malformed"), 0);
    assert_eq!(
        f64_at(s, "/retry_after/ms/max"),
        (RETRY_AFTER_SECS * 1000) as f64
    );
    assert_eq!(u64_at(s, "/retries/succeeded_after_retry"), 1);
    assert_eq!(u64_at(s, "/totals/failed"), 0);
    mock.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. One token, shared
// ---------------------------------------------------------------------------------------------

fn token_plan(target: &str, duration: &str) -> String {
    format!(
        "name: tokens
target: {target}
{CREDENTIAL}    refreshBefore: 1s
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: 100/s
    duration: {duration}
    maxInFlight: 64
    gracefulStop: 1s
    auth: demo
    requests: [{{name: me, path: /api/v2/users/me}}]
"
    )
}

fn token_fetches(s: &Value) -> u64 {
    let rows = s["token_fetches"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["credential"], "demo");
    rows[0]["fetches"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_is_shared_and_refreshed_ahead_of_expiry() {
    // 24 h tokens refreshed 4 h early, scaled: 6 s tokens refreshed 1 s early, 12 s of load:
    // fetches at 0, ~5 s and ~10 s.
    let mock = start_mock(MockConfig {
        token_lifetime: Duration::from_secs(6),
        ..auth_mock_config(Vec::new())
    })
    .await;
    let target = format!("http://{}", mock.addr());
    let run = run_plan(token_plan(&target, "12s")).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let stats = mock.stats();
    eprintln!(
        "12 s at 100/s with 6 s tokens: {} requests, {} tokens issued, auth {:?}, summary \
         fetches {}",
        stats.requests.total,
        stats.tokens.issued,
        stats.auth,
        token_fetches(&run.summary)
    );
    assert_eq!(stats.tokens.issued, 3, "{}", run.stdout);
    assert_eq!(token_fetches(&run.summary), 3);
    assert_eq!(stats.auth.expired, 0, "a request carried an expired token");
    assert_eq!(stats.requests.by_status.get(&401), None);
    assert_eq!(u64_at(&run.summary, "/totals/failed"), 0);
    assert_eq!(u64_at(&run.summary, "/totals/http_reqs"), 1200);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_costs_exactly_one_extra_token_fetch() {
    let mock = start_mock(auth_mock_config(Vec::new())).await; // tokens live 1 h
    let target = format!("http://{}", mock.addr());
    let running = spawn_run(token_plan(&target, "4s"));
    traffic_then(&mock, Duration::from_secs(2)).await;
    mock.control().force_401(1);
    let run = running.await.unwrap();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let stats = mock.stats();
    eprintln!(
        "4 s at 100/s, one forced 401: {} tokens issued, auth {:?}, 401s {:?}, summary \
         fetches {}, failed {}",
        stats.tokens.issued,
        stats.auth,
        stats.requests.by_status.get(&401),
        token_fetches(&run.summary),
        u64_at(&run.summary, "/totals/failed")
    );
    assert_eq!(stats.auth.forced, 1, "the forced 401 was sent");
    assert_eq!(stats.tokens.issued, 2, "{}", run.stdout);
    assert_eq!(token_fetches(&run.summary), 2);
    // The request that got the 401 was retried with the new token, outside the retry budget.
    assert_eq!(u64_at(&run.summary, "/totals/failed"), 0, "{}", run.stdout);
    mock.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Odd Retry-After values
// ---------------------------------------------------------------------------------------------

/// One VU sends one request at a time, so after a 429 the next arrival is its retry. The mock
/// answers the first `forced` requests 429 with `Retry-After: 1` in `format`. Returns the
/// run and the gaps (seconds) between each 429 and the next arrival (its retry).
async fn odd_retry_after(
    format: RetryAfterFormat,
    forced: u64,
    retry_after_max: &str,
) -> (Run, Vec<f64>) {
    let mock = start_mock(MockConfig {
        retry_after_format: format,
        ..open_mock_config(Vec::new())
    })
    .await;
    mock.control().force_429(forced, 1);
    let target = format!("http://{}", mock.addr());
    let plan = format!(
        "name: retry-after
target: {target}
retry:
  maxAttempts: {attempts}
  backoff: {{base: 10ms, max: 50ms}}
  retryAfterDefault: 300ms
  retryAfterMax: {retry_after_max}
scenarios:
  - name: s
    executor: per-vu-iterations
    vus: 1
    iterations: 3
    maxDuration: 20s
    requests: [{{name: r, path: /api/v2/users/me}}]
",
        attempts = forced + 1
    );
    let run = run_plan(plan).await;
    assert!(
        run.code == 0 || run.code == 99,
        "{format:?}: exit {}\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    let all = arrivals(&mock);
    let stats = mock.stats();
    assert_eq!(stats.faults.forced429_us.len() as u64, forced);
    let statuses: Vec<u16> = all.iter().map(|a| a.status).collect();
    let mut expected = vec![429; forced as usize];
    expected.extend([200, 200, 200]);
    assert_eq!(statuses, expected, "{format:?}");
    let gaps: Vec<f64> = all
        .windows(2)
        .take(forced as usize)
        .map(|w| secs(w[1].t_us - w[0].t_us))
        .collect();
    let s = &run.summary;
    eprintln!(
        "{format:?}: exit {}, gaps after each 429 {gaps:.3?} s, retry_after count {} \
         malformed {} ms {}",
        run.code,
        u64_at(s, "/retry_after/count"),
        u64_at(s, "/retry_after/malformed"),
        s["retry_after"]["ms"]
    );
    assert_eq!(u64_at(s, "/totals/throttled"), forced);
    assert_eq!(u64_at(s, "/retries/succeeded_after_retry"), 1);
    assert_eq!(u64_at(s, "/totals/failed"), 0);
    assert_eq!(server_limits(s), vec![("forced".to_string(), forced)]);
    mock.shutdown().await;
    (run, gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_is_waited() {
    let (run, gaps) = odd_retry_after(RetryAfterFormat::Seconds, 2, "3s").await;
    let s = &run.summary;
    assert_eq!(u64_at(s, "/retry_after/count"), 2);
    assert_eq!(u64_at(s, "/retry_after/malformed"), 0);
    assert_eq!(f64_at(s, "/retry_after/ms/min"), 1000.0);
    assert_eq!(f64_at(s, "/retry_after/ms/max"), 1000.0);
    for g in gaps {
        assert!(
            (0.99..1.5).contains(&g),
            "retried {g:.3}s after Retry-After: 1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_waited() {
    let (run, gaps) = odd_retry_after(RetryAfterFormat::HttpDate, 2, "3s").await;
    let s = &run.summary;
    assert_eq!(u64_at(s, "/retry_after/count"), 2);
    assert_eq!(u64_at(s, "/retry_after/malformed"), 0);
    // The mock writes now + 1 s rounded up to the next whole second: 1 to 2 s away.
    let (min, max) = (
        f64_at(s, "/retry_after/ms/min"),
        f64_at(s, "/retry_after/ms/max"),
    );
    assert!(min >= 500.0 && max <= 2000.0, "{min} .. {max} ms");
    for g in gaps {
        assert!(
            (0.9..2.5).contains(&g),
            "retried {g:.3}s after an HTTP-date 1-2 s ahead"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_retry_after_waits_the_default() {
    let (run, gaps) = odd_retry_after(RetryAfterFormat::Missing, 3, "1s").await;
    let s = &run.summary;
    assert_eq!(u64_at(s, "/retry_after/count"), 0);
    assert_eq!(u64_at(s, "/retry_after/malformed"), 0);
    for g in gaps {
        assert!(
            (0.3..0.8).contains(&g),
            "retried {g:.3}s after a 429 without Retry-After (retryAfterDefault 300ms)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_retry_after_waits_the_default_and_absurd_ones_are_clamped() {
    // The mock rotates through "soon", "-5" and "99999999999".
    let (run, gaps) = odd_retry_after(RetryAfterFormat::Malformed, 3, "1s").await;
    let s = &run.summary;
    assert_eq!(u64_at(s, "/retry_after/malformed"), 2, "soon and -5");
    assert_eq!(u64_at(s, "/retry_after/count"), 1, "99999999999, clamped");
    assert_eq!(f64_at(s, "/retry_after/ms/max"), 1000.0, "clamped to 1s");
    for (g, what) in gaps[..2].iter().zip(["soon", "-5"]) {
        assert!(
            (0.3..0.8).contains(g),
            "retried {g:.3}s after Retry-After: {what} (retryAfterDefault 300ms)"
        );
    }
    assert!(
        (1.0..1.5).contains(&gaps[2]),
        "retried {:.3}s after Retry-After: 99999999999 (retryAfterMax 1s)",
        gaps[2]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. The text summary
// ---------------------------------------------------------------------------------------------

/// The value cells of the first stdout line after the line containing `section` that starts
/// with `label` (after indentation).
fn text_row<'a>(out: &'a str, section: &str, label: &str) -> Vec<&'a str> {
    let line = out
        .lines()
        .skip_while(|l| !l.contains(section))
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line {label:?} under {section:?} in:\n{out}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_summary_names_the_limit_hit_and_where_the_time_went() {
    // The server allows 20 per second per token; the plan wrongly declares 40, so pacer is
    // too fast, gets 429s, pauses on their Retry-After and retries.
    let mock = start_mock(auth_mock_config(vec![limit(
        "per-token",
        LimitKey::Token,
        20,
        Duration::from_secs(1),
    )]))
    .await;
    let target = format!("http://{}", mock.addr());
    let plan = format!(
        "name: too-fast
target: {target}
{CREDENTIAL}limits:
  - {{name: declared-too-high, limit: 40/1s, burst: 2}}
retry: {{maxAttempts: 5, backoff: {{base: 50ms, max: 200ms}}}}
scenarios:
  - name: s
    executor: shared-iterations
    vus: 4
    iterations: 50
    maxDuration: 20s
    auth: demo
    requests: [{{name: me, path: /api/v2/users/me}}]
"
    );
    let run = run_plan(plan).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    let s = &run.summary;
    let stats = mock.stats();
    eprintln!("{out}");
    let refused = stats.limits[0].exceeded;
    assert!(refused > 0, "the mock refused nothing:\n{out}");
    assert_eq!(stats.requests.by_status.get(&429).copied(), Some(refused));

    // Which limit, and how often: the text, the JSON and the server agree.
    let named = "429s by the limit the server named";
    assert!(out.contains(named), "{out}");
    let row = text_row(out, named, "per-token");
    assert_eq!(row, vec![refused.to_string().as_str()], "{out}");
    assert_eq!(
        server_limits(s),
        vec![("per-token".to_string(), refused)],
        "{out}"
    );
    let by_declared = "429s by declared limit";
    assert!(
        out.contains(by_declared),
        "the declared limit's 429s are listed too:\n{out}"
    );
    assert_eq!(
        text_row(out, by_declared, "declared-too-high"),
        vec![refused.to_string().as_str()]
    );

    // Where the time went: pacing, Retry-After pauses and backoff all took time.
    let time = "where the time went";
    assert!(out.contains(time), "{out}");
    for (label, key) in [
        ("pacer limiter wait", "limiter_wait"),
        ("paused by Retry-After", "paused"),
        ("retry backoff", "backoff"),
    ] {
        let cells = text_row(out, time, label);
        assert_eq!(cells.len(), 2, "{label}: {cells:?}");
        let secs = f64_at(s, &format!("/time/{key}/total_secs"));
        assert!(secs > 0.0, "{label}: no time recorded\n{out}");
        assert!(
            cells[1].ends_with('%') && cells[1] != "0.00%",
            "{label}: {cells:?}"
        );
    }
    mock.shutdown().await;
}
