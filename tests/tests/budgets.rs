//! Named budgets, end to end: real `pacer run --redis URL --budget NAME` processes of different
//! tests (different fleet ids), a real `redis-server` and the real mock API (its arrival log and
//! token counts) on loopback. Processes naming one budget must behave like one client of the
//! budget's limits, fetch one token for all, refuse a declaration that disagrees with the
//! budget's, and leave the budget's keys in Redis after their test, until its idle time. Tests
//! with a backlog share the limit by weight; a test that needs less gets all it asks.
//!
//! Times are scaled down (a 5 s window). The tests share the machine's two cores, so they run
//! one at a time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_mock::{Algorithm, AuthMode, LatencyConfig, LimitConfig, LimitKey, MockConfig};
use pacer_tests::*;

/// The server's limit for the whole organisation, whatever the token: 500 in any 5 s.
const LIMIT: u64 = 500;
const WINDOW: Duration = Duration::from_secs(5);
/// Each process offers twice the limit (100/s allowed).
const OFFERED: u32 = 200;

/// One test at a time: each runs several processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn mock_config() -> MockConfig {
    MockConfig {
        auth: AuthMode::Required,
        token_lifetime: Duration::from_secs(3600),
        token_rate_limit: None,
        limits: vec![LimitConfig {
            name: "per-org".into(),
            key: LimitKey::Org,
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

/// A test's plan: its own name, the budget's limit as it declares it.
fn plan(name: &str, target: &str, limit: &str, duration: &str) -> String {
    plan_at(name, target, limit, duration, OFFERED, "")
}

/// A test's plan offering `rate` per second, with `top` (plan fields) after its name.
fn plan_at(name: &str, target: &str, limit: &str, duration: &str, rate: u32, top: &str) -> String {
    format!(
        r#"name: {name}
{top}
target: {target}
auth:
  - {{ name: g, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: pacer-demo, clientSecret: demo-secret }}
limits:
  - {{ name: org, limit: {limit}, scope: fleet }}
retry: {{ maxAttempts: 2, backoff: {{ base: 50ms, max: 1s }} }}
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: {rate}/s
    duration: {duration}
    maxInFlight: 100
    gracefulStop: 500ms
    auth: g
    requests: [{{ name: r, path: /api/v2/users/me }}]
"#
    )
}

/// `pacer run` of one test on the budget (its fleet id is its own: `--fleet` is left out).
fn spawn_run(
    dir: &std::path::Path,
    test: &str,
    plan_text: &str,
    url: &str,
    budget: &str,
    index: u32,
    extra: &[&str],
) -> std::process::Child {
    let p = write(dir, &format!("{test}.yaml"), plan_text);
    let sj = dir.join(format!("{test}.json"));
    let idx = index.to_string();
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
        "--budget",
        budget,
    ];
    args.extend_from_slice(extra);
    pacer_spawn(&args)
}

async fn wait(child: std::process::Child, limit: Duration) -> std::process::Output {
    tokio::task::spawn_blocking(move || wait_bounded(child, limit))
        .await
        .unwrap()
}

fn assert_ran(out: &std::process::Output) {
    assert!(
        matches!(out.status.code(), Some(0) | Some(99)),
        "pacer ended with {:?}\n{}\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "{}", stderr(out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tests_on_one_budget_share_its_limit_and_one_token_where_without_it_they_overrun() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        spawn_run(
            dir.path(),
            "test-a",
            &plan("test-a", &target, "500/5s", "8s"),
            &redis.url(),
            "acme",
            0,
            &[],
        ),
        spawn_run(
            dir.path(),
            "test-b",
            &plan("test-b", &target, "500/5s", "8s"),
            &redis.url(),
            "acme",
            1,
            &[],
        ),
    );
    let (a, b) = tokio::join!(
        wait(a, Duration::from_secs(40)),
        wait(b, Duration::from_secs(40))
    );
    assert_ran(&a);
    assert_ran(&b);
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let arrivals = mock.control().arrivals().arrivals;
    let first = arrivals.first().unwrap().t_us;
    // the steady part: 1 s after the first arrival to 1 s before the planned end
    let (from, to) = (first + 1_000_000, first + 7_000_000);
    let secs = (to - from) as f64 / 1e6;
    let accepted = |worker: Option<&str>| {
        arrivals
            .iter()
            .filter(|x| x.t_us >= from && x.t_us < to && x.status == 200)
            .filter(|x| worker.is_none_or(|w| x.worker.as_deref() == Some(w)))
            .count() as f64
            / secs
    };
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    let (total, by_a, by_b) = (accepted(None), accepted(Some("0")), accepted(Some("1")));
    eprintln!(
        "budget acme, 2 tests offering {OFFERED}/s each: accepted {} rejected {}, max offered in \
         a window {} of {LIMIT}; steady {total:.1}/s ({:.1}% of {allowed}/s): test-a {by_a:.1}/s \
         ({:.1}%), test-b {by_b:.1}/s ({:.1}%); tokens issued {}",
        lim.accepted,
        lim.rejected,
        lim.max_offered_in_window,
        total / allowed * 100.0,
        by_a / allowed * 100.0,
        by_b / allowed * 100.0,
        stats.tokens.issued
    );
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "the budget's tests overran the limit: {} in a window",
        lim.max_offered_in_window
    );
    assert!(
        total >= 0.9 * allowed,
        "together {total:.1}/s of {allowed}/s"
    );
    assert!(by_a >= 0.3 * allowed, "test-a {by_a:.1}/s of {allowed}/s");
    assert!(by_b >= 0.3 * allowed, "test-b {by_b:.1}/s of {allowed}/s");
    assert_eq!(stats.tokens.issued, 1, "one token for both tests");
    mock.shutdown().await;

    // The same two tests without a budget (each its own fleet id): each keeps the whole
    // organisation's limit and fetches its own token, so together they overrun it.
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let alone = |test: &str| {
        let p = write(
            dir.path(),
            &format!("{test}-alone.yaml"),
            &plan(test, &target, "500/5s", "4s"),
        );
        pacer_spawn(&[
            "run",
            p.to_str().unwrap(),
            "-q",
            "--redis",
            &redis.url(),
            "--fleet",
            test,
        ])
    };
    let (a, b) = (alone("test-a"), alone("test-b"));
    let (a, b) = tokio::join!(
        wait(a, Duration::from_secs(30)),
        wait(b, Duration::from_secs(30))
    );
    assert_ran(&a);
    assert_ran(&b);
    let stats = mock.stats();
    let lim = &stats.limits[0];
    eprintln!(
        "without a budget: max offered in a window {} of {LIMIT}, rejected {}, tokens issued {}",
        lim.max_offered_in_window, lim.rejected, stats.tokens.issued
    );
    assert!(lim.max_offered_in_window > LIMIT, "{lim:?}");
    assert_eq!(stats.tokens.issued, 2, "a token per test");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_declaring_the_budget_differently_is_refused_naming_both() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let first = spawn_run(
        dir.path(),
        "first",
        &plan("first", &target, "500/5s", "3s"),
        &redis.url(),
        "acme",
        0,
        &["--fleet", "test-first"],
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = spawn_run(
        dir.path(),
        "second",
        &plan("second", &target, "800/5s", "3s"),
        &redis.url(),
        "acme",
        1,
        &["--fleet", "test-second"],
    );
    let second = wait(second, Duration::from_secs(20)).await;
    let first = wait(first, Duration::from_secs(20)).await;
    assert_ran(&first);
    let err = stderr(&second);
    eprintln!("{err}");
    assert_eq!(second.status.code(), Some(1), "{err}");
    for part in [
        "budget \"acme\"",
        "limit \"org\"",
        "500/5s within 5s",
        "800/5s within 5s",
        "\"test-first\"",
        "\"test-second\"",
    ] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    let sent_by_second = mock
        .control()
        .arrivals()
        .arrivals
        .iter()
        .filter(|a| a.worker.as_deref() == Some("1"))
        .count();
    assert_eq!(sent_by_second, 0, "a refused test sends nothing");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budgets_keys_outlive_its_tests_and_expire_when_idle() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    // a distributed run (a controller and 2 worker processes) with the shortest idle time
    let p = write(
        dir.path(),
        "w.yaml",
        &plan("workers", &target, "500/5s", "2s"),
    );
    let out = pacer_async(
        [
            "run",
            p.to_str().unwrap(),
            "-q",
            "--workers",
            "2",
            "--redis",
            &redis.url(),
            "--budget",
            "keep",
            "--fleet",
            "test-w",
            "--budget-idle",
            "15s",
        ]
        .map(String::from)
        .to_vec(),
        vec![],
        Duration::from_secs(40),
    )
    .await;
    assert_ran(&out);
    let keys = |pattern: &str| {
        let mut k: Vec<String> = redis
            .command(&["KEYS", pattern])
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        k.sort();
        k
    };
    let budget_keys = keys("{pacer:budget:keep}*");
    eprintln!("after the test: {budget_keys:?}");
    assert!(
        budget_keys.contains(&"{pacer:budget:keep}:def:org".to_string())
            && budget_keys.contains(&"{pacer:budget:keep}:limit:org".to_string()),
        "the budget outlives its test: {budget_keys:?}"
    );
    // the shared token is the budget's too (it expires with the token, not with the budget)
    assert!(
        budget_keys
            .iter()
            .any(|k| k.starts_with("{pacer:budget:keep}:token:")),
        "{budget_keys:?}"
    );
    assert!(
        keys("{pacer:test-w}*").is_empty(),
        "nothing under the test id"
    );
    for k in [
        "{pacer:budget:keep}:def:org",
        "{pacer:budget:keep}:limit:org",
    ] {
        let ttl: i64 = redis.command(&["PTTL", k]).unwrap().parse().unwrap();
        assert!((5_000..=16_000).contains(&ttl), "{k}: {ttl} ms");
    }
    assert_eq!(mock.stats().tokens.issued, 1, "one token for both workers");
    // idle: gone after the idle time (15 s, and Redis' lazy expiry needs none: KEYS checks)
    tokio::time::sleep(Duration::from_secs(17)).await;
    let left: Vec<String> = keys("{pacer:budget:keep}*")
        .into_iter()
        .filter(|k| !k.contains(":token:"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_example_runs_as_written_by_two_tests_with_one_token() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start();
    // the demo API's defaults: OAuth2, 300 requests per minute per token
    let mock = start_mock(pacer_mock::MockConfig::default()).await;
    let target = format!("http://{}", mock.addr());
    let example = workspace_root().join("examples/budget.yaml");
    let example = example.to_str().unwrap();
    let env = vec![
        ("PACER_TARGET".to_string(), target),
        ("PACER_REDIS_URL".to_string(), redis.url()),
    ];
    let args = |extra: &[&str]| {
        let mut a = vec!["run".to_string(), example.to_string(), "-q".to_string()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (alone, workers) = tokio::join!(
        pacer_async(args(&[]), env.clone(), Duration::from_secs(60)),
        pacer_async(
            args(&["--workers", "2", "--weight", "3"]),
            env.clone(),
            Duration::from_secs(60)
        ),
    );
    let stats = mock.stats();
    let lim = &stats.limits[0];
    eprintln!(
        "examples/budget.yaml, a test and a 2-worker test: accepted {} rejected {}, max offered \
         in a window {} of {}; tokens issued {}",
        lim.accepted, lim.rejected, lim.max_offered_in_window, lim.limit, stats.tokens.issued
    );
    // both pass their thresholds (under 1% throttled)
    for out in [&alone, &workers] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            stdout(out),
            stderr(out)
        );
    }
    assert!(lim.max_offered_in_window <= lim.limit, "{lim:?}");
    // Together at the one limit's rate (5/s): at most 5/s over the 20 s run, its 2 s graceful
    // stop and a start 1 s apart, plus the burst of 5. Two tests keeping the limit each would
    // send about twice that.
    let offered = lim.accepted + lim.rejected;
    assert!(
        offered <= 5 * 23 + 5,
        "{offered} requests: the tests did not share the budget"
    );
    assert_eq!(stats.tokens.issued, 1, "one token for both tests");
    mock.shutdown().await;
}

/// What two tests on one budget got from the mock over the steady part of their run.
struct Pair {
    /// Accepted per second: both, test 0, test 1.
    total: f64,
    by: [f64; 2],
    /// Offered per second by test 1 (its arrivals at the mock).
    offered_1: f64,
    max_in_window: u64,
    rejected: u64,
    tokens: u64,
}

/// Run two tests on budget `acme` (plans `plans[i]` with `extra[i]` flags) for 8 s each, side
/// by side, and measure the steady part: 1.5 s after the first arrival to 1 s before the end.
async fn run_pair(plans: [String; 2], extra: [&[&str]; 2]) -> Pair {
    let redis = RedisServer::start();
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let spawn = |i: usize| {
        let text = plans[i].replace("TARGET", &target);
        spawn_run(
            dir.path(),
            &format!("fair-{i}"),
            &text,
            &redis.url(),
            "acme",
            i as u32,
            extra[i],
        )
    };
    let (a, b) = (spawn(0), spawn(1));
    let (a, b) = tokio::join!(
        wait(a, Duration::from_secs(40)),
        wait(b, Duration::from_secs(40))
    );
    assert_ran(&a);
    assert_ran(&b);
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let arrivals = mock.control().arrivals().arrivals;
    let first = arrivals.first().unwrap().t_us;
    let (from, to) = (first + 1_500_000, first + 7_000_000);
    let secs = (to - from) as f64 / 1e6;
    let count = |worker: Option<&str>, accepted: bool| {
        arrivals
            .iter()
            .filter(|x| x.t_us >= from && x.t_us < to && (!accepted || x.status == 200))
            .filter(|x| worker.is_none_or(|w| x.worker.as_deref() == Some(w)))
            .count() as f64
            / secs
    };
    let pair = Pair {
        total: count(None, true),
        by: [count(Some("0"), true), count(Some("1"), true)],
        offered_1: count(Some("1"), false),
        max_in_window: lim.max_offered_in_window,
        rejected: lim.rejected,
        tokens: stats.tokens.issued,
    };
    mock.shutdown().await;
    pair
}

fn report(what: &str, p: &Pair) {
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    eprintln!(
        "{what}: steady {:.1}/s ({:.1}% of {allowed}/s): test 0 {:.1}/s ({:.1}%), test 1 \
         {:.1}/s ({:.1}%, offered {:.1}/s); max offered in a window {} of {LIMIT}, rejected {}, \
         tokens issued {}",
        p.total,
        p.total / allowed * 100.0,
        p.by[0],
        p.by[0] / allowed * 100.0,
        p.by[1],
        p.by[1] / allowed * 100.0,
        p.offered_1,
        p.max_in_window,
        p.rejected,
        p.tokens
    );
}

/// Inside the limit, nearly all of it used, one token.
fn assert_shared(p: &Pair) {
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    assert!(
        p.max_in_window <= LIMIT,
        "over the limit: {} in a window",
        p.max_in_window
    );
    assert!(p.total >= 0.9 * allowed, "together {:.1}/s", p.total);
    assert_eq!(p.tokens, 1, "one token for both tests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_greedy_tests_with_equal_weights_each_get_half_of_the_budget() {
    let _one = SERIAL.lock().await;
    // equal weights through --weight (2 and 2: only the ratio counts)
    let p = run_pair(
        [
            plan_at("fair-a", "TARGET", "500/5s", "8s", OFFERED, ""),
            plan_at("fair-b", "TARGET", "500/5s", "8s", OFFERED, ""),
        ],
        [&["--weight", "2"], &["--weight", "2"]],
    )
    .await;
    report("equal weights, each offering 2x", &p);
    assert_shared(&p);
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    for (i, r) in p.by.iter().enumerate() {
        assert!(*r >= 0.4 * allowed, "test {i}: {r:.1}/s of {allowed}/s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_greedy_tests_weighted_3_to_1_share_the_budget_in_proportion() {
    let _one = SERIAL.lock().await;
    // the weight in the plan (next to its budget) for one, the default 1 for the other
    let p = run_pair(
        [
            plan_at(
                "fair-heavy",
                "TARGET",
                "500/5s",
                "8s",
                OFFERED,
                "budget: acme\nweight: 3",
            ),
            plan_at("fair-light", "TARGET", "500/5s", "8s", OFFERED, ""),
        ],
        [&[], &[]],
    )
    .await;
    report("weights 3:1, each offering 2x", &p);
    assert_shared(&p);
    let ratio = p.by[0] / p.by[1];
    assert!(
        (3.0 * 0.85..=3.0 * 1.15).contains(&ratio),
        "3:1 within 15%: {:.1}/s and {:.1}/s ({ratio:.2})",
        p.by[0],
        p.by[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_asking_a_fifth_of_the_budget_gets_it_next_to_a_greedy_one() {
    let _one = SERIAL.lock().await;
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    let small = (allowed * 0.2) as u32;
    let p = run_pair(
        [
            plan_at("fair-greedy", "TARGET", "500/5s", "8s", OFFERED, ""),
            plan_at("fair-small", "TARGET", "500/5s", "8s", small, ""),
        ],
        [&[], &[]],
    )
    .await;
    report("a greedy test (2x) and a small one (20%)", &p);
    assert_shared(&p);
    assert!(
        p.by[1] >= 0.95 * f64::from(small),
        "the small test gets all it asks: {:.1}/s of {small}/s",
        p.by[1]
    );
    assert!(
        p.by[0] >= 0.9 * allowed - f64::from(small),
        "the greedy test gets the rest: {:.1}/s",
        p.by[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_test_behind_a_greedy_two_worker_test_is_served_and_leaves_it_the_rest() {
    let _one = SERIAL.lock().await;
    // The greedy test's two processes each hold a lease of the schedule, so the small test's
    // requests wait behind both and pile up: it must still not count as held back (that would
    // cap the greedy test at half the limit and leave a third of it unused).
    let allowed = LIMIT as f64 / WINDOW.as_secs_f64();
    let small = (allowed * 0.2) as u32;
    let redis = RedisServer::start();
    let mock = start_mock(mock_config()).await;
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let greedy = spawn_run(
        dir.path(),
        "greedy2",
        &plan_at("greedy2", &target, "500/5s", "8s", 2 * OFFERED, ""),
        &redis.url(),
        "acme",
        0,
        &["--workers", "2"],
    );
    let little = spawn_run(
        dir.path(),
        "small",
        &plan_at("small", &target, "500/5s", "8s", small, ""),
        &redis.url(),
        "acme",
        7,
        &[],
    );
    let (greedy, little) = tokio::join!(
        wait(greedy, Duration::from_secs(40)),
        wait(little, Duration::from_secs(40))
    );
    assert_ran(&greedy);
    assert_ran(&little);
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let arrivals = mock.control().arrivals().arrivals;
    let first = arrivals.first().unwrap().t_us;
    let (from, to) = (first + 1_500_000, first + 7_000_000);
    let secs = (to - from) as f64 / 1e6;
    let accepted = |workers: &[&str]| {
        arrivals
            .iter()
            .filter(|x| x.t_us >= from && x.t_us < to && x.status == 200)
            .filter(|x| x.worker.as_deref().is_some_and(|w| workers.contains(&w)))
            .count() as f64
            / secs
    };
    let (g, s) = (accepted(&["0", "1"]), accepted(&["7"]));
    eprintln!(
        "a greedy 2-worker test (2x) and a small one (20%): steady {:.1}/s ({:.1}% of \
         {allowed}/s): greedy {g:.1}/s, small {s:.1}/s of {small}/s; max offered in a window {} \
         of {LIMIT}, rejected {}, tokens issued {}",
        g + s,
        (g + s) / allowed * 100.0,
        lim.max_offered_in_window,
        lim.rejected,
        stats.tokens.issued
    );
    assert!(lim.max_offered_in_window <= LIMIT, "{lim:?}");
    assert!(s >= 0.9 * f64::from(small), "the small test: {s:.1}/s");
    assert!(g + s >= 0.9 * allowed, "together {:.1}/s", g + s);
    assert_eq!(stats.tokens.issued, 1, "one token for all three processes");
    mock.shutdown().await;
}
