//! Limit shapes end to end: the real `pacer` binary against a real limiter written by others,
//! nginx's `limit_req` (Debian's `nginx-light`, installed by tests/scripts/ensure-deps.sh), on
//! loopback, and `pacer validate` explaining what a declaration costs.
//!
//! What is shown: a limit declared as the token bucket it is (`shape: token-bucket`, the rate
//! and burst as nginx states them) is used at >= 97% of its rate with no 429 after the first
//! second, at 5/s and at 50/s in one process and at 20/s shared by 4 processes through Redis,
//! measured from nginx's own access log (and the same against `pacer mock`'s token bucket and
//! nginx-like leaky bucket, from its arrival log); the same numbers declared as a window (what
//! pacer did before shapes) use a fifth of it. The nginx configuration and the 5/s plan are the
//! examples (examples/nginx-limit-req.conf, examples/token-bucket.yaml). The adaptive learner,
//! given only a ceiling 4x too high, finds nginx's rate from its 429s alone (no Retry-After, no
//! rate-limit headers). A missing nginx fails the test with the way to install it: nothing is
//! skipped silently.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pacer_mock::{Algorithm, LatencyConfig, LimitConfig, LimitKey, MockConfig, MockServer};
use pacer_tests::*;

/// How long each run sends: long enough that one second of start-up is a small part of it.
const RUN: Duration = Duration::from_secs(10);
/// Kill a pacer run that takes longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(40);
/// The share of the bucket's rate a declared token bucket must get (the bar).
const USE_AT_LEAST: f64 = 0.97;

/// A throwaway nginx on a free loopback port, run from examples/nginx-limit-req.conf (so the
/// example is tested as it is) with its port, rate and burst replaced: one process, a
/// `limit_req` zone of `rate`/s with `burst` (nodelay, 429 when refused) keyed by client
/// address, serving Debian's default page; `$msec $status` of every request in `access.log`
/// under its prefix. Stopped (by its own pid) on drop.
struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    fn start(rate: u32, burst: u32) -> Self {
        let bin = nginx_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let example =
            std::fs::read_to_string(workspace_root().join("examples/nginx-limit-req.conf"))
                .unwrap();
        let mut conf = example.clone();
        for (from, to) in [
            (
                "listen 127.0.0.1:8081;",
                format!("listen 127.0.0.1:{port};"),
            ),
            ("rate=5r/s;", format!("rate={rate}r/s;")),
            ("burst=5 nodelay;", format!("burst={burst} nodelay;")),
            ("error_log stderr warn;", "error_log error.log warn;".into()),
        ] {
            assert!(conf.contains(from), "{from} not in the example");
            conf = conf.replace(from, &to);
        }
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let n = Self { port, dir, child };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    fn target(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request nginx logged: (seconds since the epoch, status).
    fn log(&self) -> Vec<(f64, u16)> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap();
        text.lines()
            .map(|l| {
                let (t, s) = l.split_once(' ').unwrap();
                (t.parse().unwrap(), s.trim().parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx from PATH or Debian's /usr/sbin (not on a user's PATH).
fn nginx_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .expect(
            "nginx is needed by this test: run tests/scripts/ensure-deps.sh \
             (apt-get install nginx-light)",
        )
}

/// A plan of 20 VUs requesting `/index.html` for [`RUN`] under one declared limit (the VUs still
/// queued at the limiter then have a second to go, not the default 30 s).
fn plan(target: &str, limit: &str) -> String {
    format!(
        "name: shapes\ntarget: {target}\nlimits:\n  - {limit}\nscenarios:\n  - name: s\n    \
         executor: constant-vus\n    vus: 20\n    duration: {}s\n    gracefulStop: 1s\n    requests: [{{name: ok, path: /index.html}}]\n",
        RUN.as_secs()
    )
}

/// What nginx saw after the first second of a run: the accepted rate (per second, from the
/// first to the last accepted request) and the 429s.
struct Seen {
    rate: f64,
    accepted: usize,
    refused_after_first_second: usize,
}

fn seen(log: &[(f64, u16)]) -> Seen {
    let start = log.iter().map(|(t, _)| *t).fold(f64::INFINITY, f64::min);
    let after: Vec<&(f64, u16)> = log.iter().filter(|(t, _)| *t >= start + 1.0).collect();
    let ok: Vec<f64> = after
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(t, _)| *t)
        .collect();
    let (first, last) = (ok.first().copied(), ok.last().copied());
    let rate = match (first, last) {
        (Some(a), Some(b)) if b > a => (ok.len() - 1) as f64 / (b - a),
        _ => 0.0,
    };
    Seen {
        rate,
        accepted: ok.len(),
        refused_after_first_second: after.iter().filter(|(_, s)| *s != 200).count(),
    }
}

async fn run(dir: &Path, plan: String) -> RunSummary {
    run_summary(dir, &plan, &[], &[], RUN_LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_token_bucket_uses_nginx_limit_req_at_its_rate_without_429() {
    // nginx states these as `rate=5r/s burst=5` and `rate=50r/s burst=10`; the third is the
    // first declared the old way, as a window.
    let slow = Nginx::start(5, 5);
    let fast = Nginx::start(50, 10);
    let window = Nginx::start(5, 5);
    let example =
        std::fs::read_to_string(workspace_root().join("examples/token-bucket.yaml")).unwrap();
    let slow_target = slow.target();
    let env = [("PACER_TARGET", slow_target.as_str())];
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c) = tokio::join!(
        // examples/token-bucket.yaml as it is, pointed at this nginx
        run_summary(dirs[0].path(), &example, &[], &env, RUN_LIMIT,),
        run(
            dirs[1].path(),
            plan(
                &fast.target(),
                "{name: nginx, limit: 50/s, burst: 10, shape: token-bucket}"
            )
        ),
        run(
            dirs[2].path(),
            plan(&window.target(), "{name: nginx, limit: 5/s, burst: 5}")
        ),
    );
    for (r, rate, server) in [(&a, 5.0, &slow), (&b, 50.0, &fast)] {
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let s = seen(&server.log());
        println!(
            "token bucket {rate}/s: {:.2}/s accepted after the first second ({:.1}% of the rate, \
             {} requests), {} refused; pacer paced at {}/s",
            s.rate,
            100.0 * s.rate / rate,
            s.accepted,
            s.refused_after_first_second,
            r.summary["limits"][0]["pacing_rate"]
        );
        assert!(s.rate >= USE_AT_LEAST * rate, "{rate}/s: {:.2}/s", s.rate);
        assert!(s.rate <= rate * 1.01, "{rate}/s: {:.2}/s", s.rate);
        assert_eq!(s.refused_after_first_second, 0, "{rate}/s");
    }
    let s = seen(&window.log());
    println!(
        "the same 5/s burst 5 declared as a window: {:.2}/s ({:.1}% of the rate)",
        s.rate,
        100.0 * s.rate / 5.0
    );
    assert_eq!(c.code, 0, "{}\n{}", c.stdout, c.stderr);
    assert!(s.rate < 0.25 * 5.0, "{:.2}/s", s.rate);
}

/// `pacer mock` with one global `limit` of `algorithm` (rate `rate`/s, `burst`), no auth,
/// answering at once, recording arrivals.
async fn bucket_mock(algorithm: Algorithm, rate: u64, burst: u64) -> MockServer {
    start_mock(MockConfig {
        limits: vec![LimitConfig {
            algorithm,
            burst: Some(burst),
            nodelay: algorithm == Algorithm::LeakyBucket,
            ..LimitConfig::new("bucket", LimitKey::Global, rate, Duration::from_secs(1))
        }],
        record_arrivals: true,
        ..plain_mock_config(LatencyConfig::None)
    })
    .await
}

/// The mock's arrival log as (seconds, status).
fn mock_log(mock: &MockServer) -> Vec<(f64, u16)> {
    let view = mock.control().arrivals();
    assert!(view.enabled && view.dropped == 0);
    view.arrivals
        .iter()
        .map(|a| (a.t_us as f64 / 1e6, a.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_token_bucket_uses_the_mocks_buckets_at_their_rate_without_429() {
    // The mock's token bucket "10/s, burst 5", and its nginx-like leaky bucket "5/s burst 5
    // nodelay", each declared as the vendor would state it.
    let token = bucket_mock(Algorithm::TokenBucket, 10, 5).await;
    let leaky = bucket_mock(Algorithm::LeakyBucket, 5, 5).await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = tokio::join!(
        run(
            dirs[0].path(),
            plan(
                &format!("http://{}", token.addr()),
                "{name: api, limit: 10/s, burst: 5, shape: token-bucket}"
            )
        ),
        run(
            dirs[1].path(),
            plan(
                &format!("http://{}", leaky.addr()),
                "{name: api, limit: 5/s, burst: 5, shape: token-bucket}"
            )
        ),
    );
    for (r, rate, mock, what) in [
        (&a, 10.0, &token, "token bucket"),
        (&b, 5.0, &leaky, "leaky bucket"),
    ] {
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let s = seen(&mock_log(mock));
        println!(
            "mock {what} {rate}/s: {:.2}/s accepted after the first second ({:.1}% of the rate, \
             {} requests), {} refused",
            s.rate,
            100.0 * s.rate / rate,
            s.accepted,
            s.refused_after_first_second
        );
        assert!(s.rate >= USE_AT_LEAST * rate, "{what}: {:.2}/s", s.rate);
        assert!(s.rate <= rate * 1.01, "{what}: {:.2}/s", s.rate);
        assert_eq!(s.refused_after_first_second, 0, "{what}");
    }
}

/// Processes of the fleet test, sharing one bucket through Redis.
const FLEET_PROCESSES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_through_redis_share_a_token_bucket_at_its_rate_without_429() {
    // 20r/s burst 10: in a fleet the spread includes the lease hold (150 ms), 3 tokens of it.
    let nginx = Nginx::start(20, 10);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            &nginx.target(),
            "{name: nginx, limit: 20/s, burst: 10, shape: token-bucket, scope: fleet}",
        ),
    );
    let url = redis.url();
    let children: Vec<_> = (0..FLEET_PROCESSES)
        .map(|i| {
            let idx = i.to_string();
            pacer_spawn(&[
                "run",
                p.to_str().unwrap(),
                "-q",
                "--worker-index",
                &idx,
                "--redis",
                &url,
                "--fleet",
                "shapes",
            ])
        })
        .collect();
    let outs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| wait_bounded(c, RUN_LIMIT))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(o), stderr(o));
    }
    let s = seen(&nginx.log());
    println!(
        "{FLEET_PROCESSES} processes sharing a 20/s burst 10 token bucket: {:.2}/s accepted after \
         the first second ({:.1}% of the rate, {} requests), {} refused",
        s.rate,
        100.0 * s.rate / 20.0,
        s.accepted,
        s.refused_after_first_second
    );
    assert!(s.rate >= USE_AT_LEAST * 20.0, "{:.2}/s", s.rate);
    assert!(s.rate <= 20.0 * 1.01, "{:.2}/s", s.rate);
    assert_eq!(s.refused_after_first_second, 0);
}

#[test]
fn validate_explains_5_per_second_burst_5_with_and_without_the_token_bucket_shape() {
    let dir = tempfile::tempdir().unwrap();
    let window = write(
        dir.path(),
        "window.yaml",
        &plan("http://127.0.0.1:9", "{name: api, limit: 5/s, burst: 5}"),
    );
    let bucket = write(
        dir.path(),
        "bucket.yaml",
        &plan(
            "http://127.0.0.1:9",
            "{name: api, limit: 5/s, burst: 5, shape: token-bucket}",
        ),
    );
    let out = pacer(
        &["validate", window.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for words in [
        "limit api (sliding-window 5/s, burst 5): paced at 0.91/s (margin 81.8%)",
        "warning: margin 81.8% (over 10.0%)",
        "the burst: 5 of the 5 requests a 1s window allows",
        "say shape: token-bucket",
        "a short window: 100ms of lateness",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
    }
    let out = pacer(
        &["validate", bucket.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "limit api (token-bucket 5/s, burst 5): paced at 4.97/s (margin 0.5%); bursts of up \
             to 4: 1 of the bucket's 5 kept for the 100ms spread"
        ),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Fixed windows aligned to the server's reset
// ---------------------------------------------------------------------------------------------

/// The fixed window of the aligned tests: 100 per 2 s (50/s), for the whole organisation.
const FIXED_LIMIT: u64 = 100;
const FIXED_WINDOW: Duration = Duration::from_secs(2);

/// `pacer mock` with one global fixed window of [`FIXED_LIMIT`] per [`FIXED_WINDOW`], answering
/// at once, sending its default `inin-ratelimit-*` headers (remaining, reset in whole seconds),
/// recording arrivals.
async fn fixed_mock() -> MockServer {
    start_mock(MockConfig {
        limits: vec![LimitConfig::new(
            "fixed",
            LimitKey::Global,
            FIXED_LIMIT,
            FIXED_WINDOW,
        )],
        record_arrivals: true,
        ..plain_mock_config(LatencyConfig::None)
    })
    .await
}

/// The mock's fixed windows from its arrival log: a window opens at the first request when none
/// is open (as the mock opens them) and lasts `window`. Returns, for each window that ended
/// before the last arrival, (accepted, refused).
fn fixed_windows(log: &[(f64, u16)], window: Duration) -> Vec<(u64, u64)> {
    let w = window.as_secs_f64();
    let mut out: Vec<(f64, u64, u64)> = Vec::new();
    for &(t, status) in log {
        if out.last().is_none_or(|&(start, _, _)| t >= start + w) {
            out.push((t, 0, 0));
        }
        let last = out.last_mut().unwrap();
        if status == 200 {
            last.1 += 1;
        } else {
            last.2 += 1;
        }
    }
    let end = log.last().map_or(0.0, |&(t, _)| t);
    out.into_iter()
        .filter(|&(start, _, _)| start + w <= end)
        .map(|(_, a, r)| (a, r))
        .collect()
}

/// What the aligned tests assert of a mock's windows: after the first, each used >= 97% of the
/// limit and none refused anything. Prints what it saw.
fn assert_aligned_windows(what: &str, log: &[(f64, u16)]) {
    let windows = fixed_windows(log, FIXED_WINDOW);
    println!(
        "{what}: (accepted, refused) per {}-per-{FIXED_WINDOW:?} window: {windows:?}",
        FIXED_LIMIT
    );
    assert!(windows.len() >= 3, "{what}: {windows:?}");
    let used: Vec<f64> = windows[1..]
        .iter()
        .map(|&(a, _)| a as f64 / FIXED_LIMIT as f64)
        .collect();
    let least = used.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{what}: least use of a window after the first {:.1}%, mean {:.1}%",
        100.0 * least,
        100.0 * used.iter().sum::<f64>() / used.len() as f64
    );
    assert!(least >= USE_AT_LEAST, "{what}: {windows:?}");
    let refused: u64 = windows[1..].iter().map(|&(_, r)| r).sum();
    assert_eq!(
        refused, 0,
        "{what}: 429s after the first window: {windows:?}"
    );
}

/// The declared fixed window of the aligned tests.
const FIXED_DECLARED: &str = "{name: api, limit: 100/2s, shape: fixed-window, spread: 10ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_aligned_to_the_servers_reset_uses_the_whole_limit_without_429() {
    let mock = fixed_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        plan(
            &format!("http://{}", mock.addr()),
            &format!("{FIXED_DECLARED}}}"),
        ),
    )
    .await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_aligned_windows("one process", &mock_log(&mock));
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_through_redis_use_an_aligned_fixed_window_whole_without_429() {
    let mock = fixed_mock().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "plan.yaml",
        &plan(
            &format!("http://{}", mock.addr()),
            &format!("{FIXED_DECLARED}, scope: fleet}}"),
        ),
    );
    let url = redis.url();
    let children: Vec<_> = (0..FLEET_PROCESSES)
        .map(|i| {
            let idx = i.to_string();
            pacer_spawn(&[
                "run",
                p.to_str().unwrap(),
                "-q",
                "--worker-index",
                &idx,
                "--redis",
                &url,
                "--fleet",
                "fixed",
            ])
        })
        .collect();
    let outs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| wait_bounded(c, RUN_LIMIT))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(o), stderr(o));
    }
    assert_aligned_windows(
        &format!("{FLEET_PROCESSES} processes through Redis"),
        &mock_log(&mock),
    );
}

/// How long an adaptive run against nginx sends, and from when its accepted rate is judged: the
/// learner finds a rate in a few seconds at these rates (docs/rate-limiting.md, "Adaptive
/// limits"); the rest shows it holds it.
const ADAPTIVE_RUN: Duration = Duration::from_secs(20);
const ADAPTIVE_JUDGED_FROM: f64 = 8.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_learner_finds_nginx_limit_req_from_a_ceiling_4x_too_high() {
    // nginx sends no Retry-After and no rate-limit headers: only 429s teach the learner.
    let cases = [(10u32, 5u32), (100, 10)];
    let servers: Vec<Nginx> = cases.iter().map(|(r, b)| Nginx::start(*r, *b)).collect();
    let dirs: Vec<tempfile::TempDir> = cases.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let plans: Vec<String> = cases
        .iter()
        .zip(&servers)
        .map(|((rate, _), server)| {
            format!(
                "name: learn-nginx\ntarget: {}\nlimits:\n  - {{name: guess, limit: {}/s, \
                 adaptive: true, shape: token-bucket}}\nscenarios:\n  - name: s\n    \
                 executor: constant-vus\n    vus: 20\n    duration: {}s\n    gracefulStop: 1s\n    \
                 requests: [{{name: ok, path: /index.html}}]\n",
                server.target(),
                4 * rate,
                ADAPTIVE_RUN.as_secs()
            )
        })
        .collect();
    let (a, b) = tokio::join!(
        run_summary(dirs[0].path(), &plans[0], &[], &[], RUN_LIMIT),
        run_summary(dirs[1].path(), &plans[1], &[], &[], RUN_LIMIT),
    );
    for ((r, (rate, burst)), server) in [&a, &b].into_iter().zip(cases).zip(&servers) {
        let rate = f64::from(rate);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let log = server.log();
        let start = log.iter().map(|(t, _)| *t).fold(f64::INFINITY, f64::min);
        let judged: Vec<&(f64, u16)> = log
            .iter()
            .filter(|(t, _)| *t >= start + ADAPTIVE_JUDGED_FROM)
            .collect();
        let accepted: Vec<f64> = judged
            .iter()
            .filter(|(_, s)| *s == 200)
            .map(|(t, _)| *t)
            .collect();
        let refused = judged.len() - accepted.len();
        let span = accepted.last().unwrap() - accepted.first().unwrap();
        let got = (accepted.len() - 1) as f64 / span;
        let share_refused = refused as f64 / judged.len() as f64;
        let sustainable = r.summary["limits"][0]["sustainable_rate"].as_f64();
        println!(
            "nginx {rate}/s burst {burst}, ceiling {}/s: from {ADAPTIVE_JUDGED_FROM} s on \
             {got:.2}/s accepted ({:.1}% of the rate), {refused} of {} refused ({:.2}%); \
             summary sustainable {sustainable:?}/s",
            4.0 * rate,
            100.0 * got / rate,
            judged.len(),
            100.0 * share_refused
        );
        // Generous bounds: the measured numbers are in docs/rate-limiting.md.
        assert!(
            got >= 0.85 * rate && got <= 1.01 * rate,
            "{rate}/s: {got:.2}/s"
        );
        assert!(
            share_refused <= 0.03,
            "{rate}/s: {share_refused:.4} refused"
        );
        let s = sustainable.unwrap_or(0.0);
        assert!(
            (s - rate).abs() <= 0.15 * rate,
            "{rate}/s: sustainable {s:.2}/s"
        );
    }
}
