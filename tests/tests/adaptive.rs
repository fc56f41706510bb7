//! Adaptive limits: the plan states a ceiling, the server's real limit is lower and undeclared;
//! pacer must find a sustainable rate close to it while keeping 429s rare.
//!
//! What is shown: against `pacer mock`'s token bucket with no `Retry-After` and no rate-limit
//! headers (nothing but the refusals to learn from), the plan's ceiling at 4x the real limit,
//! at 5/s, 50/s and 200/s: the rate pacer sends at is within 10% of the limit within 30 s, the
//! 429 share after that is at most 1%, and the summary's sustainable rate is within 10% of the
//! limit (the mock's arrival log is the measure); with an IETF `RateLimit-Policy` the rate is
//! right within 2 s. And a fixed window that sends `Retry-After` (whose pauses spoil the count:
//! the bisection finds it), and examples/adaptive.yaml run as it is.
//!
//! The same against whole fleets (`scope: fleet`, real `pacer run --redis` processes and a real
//! `redis-server`): 1 process and 4 processes learning one limit together at 2/s, 50/s and
//! 500/s, and one process alone at 1/s and 1000/s (the ends of the issue's range). Each test
//! runs its cases at once (the suite's wall time), so they share the 2 cores; the bars are
//! generous ([`FLEET_WITHIN`], [`FLEET_REFUSED_AFTER_AT_MOST`]) and the measured numbers are
//! printed (`--nocapture`) for docs/rate-limiting.md.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_mock::{Algorithm, HeadersConfig, LatencyConfig, LimitConfig, LimitKey, MockConfig};
use pacer_tests::*;

/// How long each learning run sends: 30 s to converge and a few seconds of holding after.
const LEARN_RUN: Duration = Duration::from_secs(36);
/// Kill a pacer run that takes longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(80);
/// The rate must be found within this share of the limit...
const WITHIN: f64 = 0.10;
/// ...within this time from the first request.
const CONVERGE_BY: f64 = 30.0;
/// The share of 429s allowed once the rate is found.
const REFUSED_AFTER_AT_MOST: f64 = 0.01;
/// The sent rate is judged over sliding spans of this many requests at the limit (one second
/// of a 5/s limit is 5 requests: too few to say 10%), and at least a second.
const SPAN_REQUESTS: f64 = 20.0;

/// What the mock saw of a learning run, from its arrival log.
struct Learned {
    /// Seconds from the first request until every later span's sent rate was within
    /// [`WITHIN`] of the limit.
    converged_at: Option<f64>,
    /// Requests and 429s after `converged_at`.
    after: u64,
    refused_after: u64,
    /// Requests and 429s from the end of the first span within the bar (a span that is within
    /// on average can still hold the last refusals of the learning before it).
    after_span: u64,
    refused_after_span: u64,
}

fn learned(log: &[(f64, u16)], limit: f64, within: f64) -> Learned {
    let start = log.iter().map(|(t, _)| *t).fold(f64::INFINITY, f64::min);
    let end = log.iter().map(|(t, _)| *t).fold(0.0, f64::max);
    // The last span ends a second before the last request (the run's end is not the limiter's).
    let span = (SPAN_REQUESTS / limit).max(1.0);
    let mut converged_at = None;
    let mut t = end - 1.0 - span;
    while t >= start {
        let n = log.iter().filter(|(a, _)| *a >= t && *a < t + span).count() as f64;
        if ((n / span) - limit).abs() > within * limit {
            break;
        }
        converged_at = Some(t - start);
        t -= 0.25;
    }
    let from = start + converged_at.unwrap_or(f64::INFINITY);
    let after: Vec<_> = log.iter().filter(|(a, _)| *a >= from).collect();
    let after_span: Vec<_> = log.iter().filter(|(a, _)| *a >= from + span).collect();
    Learned {
        converged_at,
        after: after.len() as u64,
        refused_after: after.iter().filter(|(_, s)| *s == 429).count() as u64,
        after_span: after_span.len() as u64,
        refused_after_span: after_span.iter().filter(|(_, s)| *s == 429).count() as u64,
    }
}

/// Learns a token bucket of `limit`/s (burst `burst`) that sends no `Retry-After` (and no
/// rate-limit headers unless `ietf`), from a ceiling of 4x, and checks the bars: within 10%
/// by `converge_by` seconds.
async fn learns_a_token_bucket(limit: u64, burst: u64, vus: u32, ietf: bool, converge_by: f64) {
    let mock = start_mock(MockConfig {
        limits: vec![LimitConfig {
            algorithm: Algorithm::TokenBucket,
            burst: Some(burst),
            retry_after: false,
            headers: Some(HeadersConfig {
                inin: false,
                x_rate_limit: false,
                ietf,
                ..HeadersConfig::default()
            }),
            ..LimitConfig::new("hidden", LimitKey::Global, limit, Duration::from_secs(1))
        }],
        record_arrivals: true,
        ..plain_mock_config(LatencyConfig::None)
    })
    .await;
    let ceiling = 4 * limit;
    let plan = format!(
        r#"name: learn-{limit}
target: http://{addr}
limits:
  - {{ name: guess, limit: {ceiling}/s, burst: {burst_guess}, adaptive: true, shape: token-bucket }}
retry: {{ maxAttempts: 3, backoff: {{ base: 50ms, max: 1s }} }}
scenarios:
  - name: s
    executor: constant-vus
    vus: {vus}
    duration: {secs}s
    gracefulStop: 1s
    requests: [{{ name: r, path: /api/v2/users/me }}]
"#,
        addr = mock.addr(),
        secs = LEARN_RUN.as_secs(),
        // A quarter of a second's worth: the guess is paced at 99.5% of the ceiling.
        burst_guess = ceiling / 4,
    );
    let dir = tempfile::tempdir().unwrap();
    let r = run_summary(dir.path(), &plan, &[], &[], RUN_LIMIT).await;
    let text = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "{text}");
    let view = mock.control().arrivals();
    assert!(view.enabled && view.dropped == 0);
    let log: Vec<(f64, u16)> = view
        .arrivals
        .iter()
        .map(|a| (a.t_us as f64 / 1e6, a.status))
        .collect();
    let l = learned(&log, limit as f64, WITHIN);
    let sustainable = r.summary["limits"][0]["sustainable_rate"].as_f64();
    let share = l.refused_after as f64 / l.after.max(1) as f64;
    println!(
        "limit {limit}/s (ceiling {ceiling}/s, stated: {ietf}): within 10% from {:.1} s; after that {} of {} \
         refused ({:.2}%); summary sustainable {:?}/s",
        l.converged_at.unwrap_or(f64::NAN),
        l.refused_after,
        l.after,
        100.0 * share,
        sustainable,
    );
    let at = l.converged_at.unwrap_or(f64::INFINITY);
    assert!(
        at <= converge_by,
        "limit {limit}/s: converged at {at:.1} s\n{text}"
    );
    assert!(
        share <= REFUSED_AFTER_AT_MOST,
        "limit {limit}/s: {} of {} refused after {at:.1} s\n{text}",
        l.refused_after,
        l.after
    );
    let s = sustainable.unwrap_or(0.0);
    assert!(
        (s - limit as f64).abs() <= WITHIN * limit as f64,
        "limit {limit}/s: the summary says sustainable {s:.2}/s\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_an_undeclared_5_per_second_within_10_percent_in_30_s_with_1_percent_429s() {
    learns_a_token_bucket(5, 5, 10, false, CONVERGE_BY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_an_undeclared_50_per_second_within_10_percent_in_30_s_with_1_percent_429s() {
    learns_a_token_bucket(50, 10, 20, false, CONVERGE_BY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_an_undeclared_200_per_second_within_10_percent_in_30_s_with_1_percent_429s() {
    learns_a_token_bucket(200, 20, 40, false, CONVERGE_BY).await;
}

/// With a stated policy the rate is known from the first answer.
const STATED_CONVERGE_BY: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goes_at_once_to_the_rate_an_ietf_ratelimit_policy_states() {
    learns_a_token_bucket(50, 10, 20, true, STATED_CONVERGE_BY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_an_undeclared_fixed_window_that_sends_retry_after_within_ten_percent() {
    // The server: 100 requests per 2 s window (50/s), not declared in the plan.
    let mut cfg = plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    });
    cfg.limits = vec![LimitConfig {
        name: "hidden".into(),
        key: LimitKey::Global,
        limit: 100,
        window: Duration::from_secs(2),
        methods: None,
        path_prefix: None,
        algorithm: Algorithm::Fixed,
        ..LimitConfig::default()
    }];
    let mock = start_mock(cfg).await;
    let target = format!("http://{}", mock.addr());
    // The plan guesses 75/s (1.5x too high) and asks pacer to adapt.
    let plan = format!(
        r#"name: adaptive
target: {target}
limits:
  - {{ name: guess, limit: 150/2s, adaptive: true }}
retry: {{ maxAttempts: 3, backoff: {{ base: 50ms, max: 1s }} }}
scenarios:
  - name: s
    executor: constant-vus
    vus: 30
    duration: 24s
    gracefulStop: 1s
    requests: [{{ name: r, path: /api/v2/users/me }}]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let r = run_summary(dir.path(), &plan, &[], &[], Duration::from_secs(90)).await;
    let text = r.stdout;
    assert_eq!(r.code, 0, "{text}\n{}", r.stderr);
    let s = r.summary;
    let found = s["limits"][0]["sustainable_rate"].as_f64().unwrap();
    assert!(
        (found - 50.0).abs() / 50.0 <= 0.10,
        "sustainable rate {found:.2}/s, the server allows 50/s\n{text}"
    );
    let stats = mock.stats();
    let lim = &stats.limits[0];
    let share_429 = lim.rejected as f64 / (lim.accepted + lim.rejected) as f64;
    assert!(
        share_429 < 0.05,
        "429 share {share_429:.3} ({} of {})\n{text}",
        lim.rejected,
        lim.accepted + lim.rejected
    );
    eprintln!(
        "found {found:.2}/s; server accepted {} rejected {} ({:.2}%)",
        lim.accepted,
        lim.rejected,
        share_429 * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_example_learns_the_mocks_hidden_5_per_second_as_its_comment_says() {
    // The mock its comment starts: `--auth off --no-inin-headers --limit
    // hidden:global:5/1s,algorithm=token-bucket,burst=5,retryAfter=false`.
    let mock = start_mock(MockConfig {
        limits: vec![LimitConfig {
            algorithm: Algorithm::TokenBucket,
            burst: Some(5),
            retry_after: false,
            ..LimitConfig::new("hidden", LimitKey::Global, 5, Duration::from_secs(1))
        }],
        headers: HeadersConfig {
            inin: false,
            ..HeadersConfig::default()
        },
        record_arrivals: true,
        ..plain_mock_config(LatencyConfig::None)
    })
    .await;
    let example = std::fs::read_to_string(workspace_root().join("examples/adaptive.yaml")).unwrap();
    let target = format!("http://{}", mock.addr());
    let dir = tempfile::tempdir().unwrap();
    let r = run_summary(
        dir.path(),
        &example,
        &[],
        &[("PACER_TARGET", &target)],
        RUN_LIMIT,
    )
    .await;
    let text = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "{text}");
    let s = r.summary["limits"][0]["sustainable_rate"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        (s - 5.0).abs() <= WITHIN * 5.0,
        "sustainable {s:.2}/s\n{text}"
    );
    let view = mock.control().arrivals();
    let start = view.arrivals.iter().map(|a| a.t_us).min().unwrap_or(0);
    let late_429 = view
        .arrivals
        .iter()
        .filter(|a| a.status == 429 && a.t_us > start + 10_000_000)
        .count();
    assert_eq!(late_429, 0, "429s after the first 10 s\n{text}");
}

/// The fleet cases' bar for the rate found and the summary's sustainable rate (the cases share
/// the machine with each other, so it is wider than the one-process tests' 10%).
const FLEET_WITHIN: f64 = 0.15;
/// The fleet cases' bar for the share of 429s once the rate is found.
const FLEET_REFUSED_AFTER_AT_MOST: f64 = 0.03;

/// One learning run: a hidden token bucket of `limit`/s (burst `burst`, no `Retry-After`, no
/// rate-limit headers) and `processes` pacer processes of `vus` VUs each, whose plan states a
/// ceiling of 4x the limit, for `secs` seconds.
#[derive(Clone, Copy, Debug)]
struct Case {
    limit: u64,
    burst: u64,
    processes: usize,
    vus: u32,
    secs: u64,
    /// Kill the fleet's learning process (SIGKILL) this many seconds in: the others must take
    /// over its learner and still find the limit.
    kill_learner_at: Option<u64>,
}

/// How long a 1/s case runs: the learner measures 20 accepted requests after the first
/// refusal (20 s at 1/s) before it cuts, and a clean stretch of 20 s more before the rate is
/// known to be sustainable.
const SLOW_RUN: Duration = Duration::from_secs(50);

/// Runs `cases` at once (each its own mock; through `redis` as `scope: fleet` limits when
/// given, one fleet per case) and checks each against the fleet bars.
async fn learn_at_once(cases: &[Case], redis: Option<&RedisServer>) {
    let mut runs = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let mock = start_mock(MockConfig {
            limits: vec![LimitConfig {
                algorithm: Algorithm::TokenBucket,
                burst: Some(c.burst),
                retry_after: false,
                headers: Some(HeadersConfig {
                    inin: false,
                    x_rate_limit: false,
                    ietf: false,
                    ..HeadersConfig::default()
                }),
                ..LimitConfig::new("hidden", LimitKey::Global, c.limit, Duration::from_secs(1))
            }],
            record_arrivals: true,
            // 4x the fastest limit for the whole run, with room to spare.
            max_arrivals: 500_000,
            ..plain_mock_config(LatencyConfig::None)
        })
        .await;
        let ceiling = 4 * c.limit;
        let scope = if redis.is_some() { "fleet" } else { "worker" };
        let plan = format!(
            r#"name: learn-{limit}-{processes}
target: http://{addr}
limits:
  - {{ name: guess, limit: {ceiling}/s, burst: {burst_guess}, adaptive: true, shape: token-bucket, scope: {scope} }}
retry: {{ maxAttempts: 3, backoff: {{ base: 50ms, max: 1s }} }}
scenarios:
  - name: s
    executor: constant-vus
    vus: {vus}
    duration: {secs}s
    gracefulStop: 1s
    requests: [{{ name: r, path: /api/v2/users/me }}]
"#,
            limit = c.limit,
            processes = c.processes,
            addr = mock.addr(),
            vus = c.vus,
            secs = c.secs,
            burst_guess = (ceiling / 4).max(1),
        );
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "plan.yaml", &plan);
        let fleet_id = format!("learn-{n}-{}", c.limit);
        let children: Vec<_> = (0..c.processes)
            .map(|i| {
                let sj = dir.path().join(format!("s{i}.json"));
                let mut args = vec![
                    "run".to_string(),
                    p.display().to_string(),
                    "-q".into(),
                    "--summary-json".into(),
                    sj.display().to_string(),
                ];
                if let Some(r) = redis {
                    args.extend([
                        "--redis".into(),
                        r.url(),
                        "--fleet".into(),
                        fleet_id.clone(),
                    ]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                (pacer_spawn(&args), sj)
            })
            .collect();
        runs.push((*c, mock, dir, children, fleet_id));
    }
    // The learning process of each fleet that is to lose it: its pid, from its worker id
    // ("host-pid-random") as the learner's record in Redis names it.
    let mut killed = Vec::new();
    let started = std::time::Instant::now();
    let mut kills: Vec<_> = runs
        .iter()
        .filter_map(|(c, _, _, _, id)| Some((c.kill_learner_at?, id.clone())))
        .collect();
    kills.sort();
    for (at, id) in kills {
        let redis = redis.expect("killing a learner needs a fleet");
        tokio::time::sleep(Duration::from_secs(at).saturating_sub(started.elapsed())).await;
        let owner = redis
            .command(&["HGET", &format!("{{pacer:{id}}}:learn:guess"), "owner"])
            .unwrap();
        let pid: u32 = owner
            .rsplit('-')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no learner's pid in {owner:?}"));
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {pid}");
        println!("{id}: killed the learning process {pid} at {at} s");
        killed.push(pid);
    }
    let mut failures = Vec::new();
    for (c, mock, dir, children, _) in runs {
        let outs = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|(child, sj)| (child.id(), wait_bounded(child, RUN_LIMIT), sj))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        if c.kill_learner_at.is_some() {
            assert!(
                outs.iter().any(|(pid, _, _)| killed.contains(pid)),
                "{c:?}: the learner killed was not one of this fleet's processes"
            );
        }
        let mut sustainable = Vec::new();
        let mut text = String::new();
        for (pid, out, sj) in &outs {
            if killed.contains(pid) {
                continue;
            }
            text.push_str(&format!("{}\n{}\n", stdout(out), stderr(out)));
            assert_eq!(out.status.code(), Some(0), "{c:?}: {text}");
            assert!(!stderr(out).contains("panicked"), "{c:?}: {text}");
            sustainable.push(summary(sj)["limits"][0]["sustainable_rate"].as_f64());
        }
        drop(dir);
        let view = mock.control().arrivals();
        assert!(
            view.enabled && view.dropped == 0,
            "{c:?}: the arrival log overflowed"
        );
        let log: Vec<(f64, u16)> = view
            .arrivals
            .iter()
            .map(|a| (a.t_us as f64 / 1e6, a.status))
            .collect();
        let limit = c.limit as f64;
        // When the rate is first within 10% (the issue's bar), and the bars themselves.
        let tight = learned(&log, limit, WITHIN);
        let l = learned(&log, limit, FLEET_WITHIN);
        let share = l.refused_after_span as f64 / l.after_span.max(1) as f64;
        let tight_share = tight.refused_after as f64 / tight.after.max(1) as f64;
        println!(
            "limit {}/s, {} process(es){}{}: within 10% from {:.1} s ({:.2}% 429s after); within \
             15% from {:.1} s, after its first span {} of {} refused ({:.2}%); sustainable per \
             process {:?}",
            c.limit,
            c.processes,
            if redis.is_some() {
                " through Redis"
            } else {
                ""
            },
            match c.kill_learner_at {
                Some(at) => format!(", the learner killed at {at} s"),
                None => String::new(),
            },
            tight.converged_at.unwrap_or(f64::NAN),
            100.0 * tight_share,
            l.converged_at.unwrap_or(f64::NAN),
            l.refused_after_span,
            l.after_span,
            100.0 * share,
            sustainable,
        );
        let at = l.converged_at.unwrap_or(f64::INFINITY);
        if at > CONVERGE_BY {
            failures.push(format!("{c:?}: within 15% only from {at:.1} s"));
        }
        if share > FLEET_REFUSED_AFTER_AT_MOST {
            failures.push(format!(
                "{c:?}: {} of {} refused after the span from {at:.1} s",
                l.refused_after_span, l.after_span
            ));
        }
        for s in &sustainable {
            let s = s.unwrap_or(0.0);
            if (s - limit).abs() > FLEET_WITHIN * limit {
                failures.push(format!("{c:?}: a summary says sustainable {s:.2}/s"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_4_processes_learns_2_50_and_500_per_second_together_through_redis() {
    let redis = RedisServer::start();
    let cases = [
        Case {
            limit: 2,
            burst: 2,
            processes: 4,
            vus: 2,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
        Case {
            limit: 50,
            burst: 10,
            processes: 4,
            vus: 8,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
        Case {
            limit: 500,
            burst: 50,
            processes: 4,
            vus: 20,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
        // The learning process dies in the middle of its first stretch (the cut comes at
        // about 10 s at 2/s): another takes over from the learner it stored.
        Case {
            limit: 2,
            burst: 2,
            processes: 4,
            vus: 2,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: Some(5),
        },
    ];
    learn_at_once(&cases, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_through_redis_learns_2_50_and_500_per_second() {
    let redis = RedisServer::start();
    let cases = [
        Case {
            limit: 2,
            burst: 2,
            processes: 1,
            vus: 4,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
        Case {
            limit: 50,
            burst: 10,
            processes: 1,
            vus: 20,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
        Case {
            limit: 500,
            burst: 50,
            processes: 1,
            vus: 60,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
    ];
    learn_at_once(&cases, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_learns_1_and_1000_per_second_the_ends_of_the_range() {
    let cases = [
        Case {
            limit: 1,
            burst: 1,
            processes: 1,
            vus: 4,
            secs: SLOW_RUN.as_secs(),
            kill_learner_at: None,
        },
        Case {
            limit: 1000,
            burst: 100,
            processes: 1,
            vus: 100,
            secs: LEARN_RUN.as_secs(),
            kill_learner_at: None,
        },
    ];
    learn_at_once(&cases, None).await;
}
