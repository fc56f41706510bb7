//! Adaptive limits: the plan states a ceiling, the server's real limit is lower and undeclared;
//! pacer must find a sustainable rate close to it while keeping 429s rare.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use pacer_mock::{Algorithm, LatencyConfig, LimitConfig, LimitKey};
use pacer_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aimd_finds_an_undeclared_limit_within_ten_percent() {
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
