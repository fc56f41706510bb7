//! A stranger floods the real `pacer controller` (its own process, on 127.0.0.1) with what it
//! can send without the session token: streams whose first message claims 16 MiB, Hellos
//! with a wrong token, streams that never send their Hello. The controller's resident memory,
//! read from /proc, stays within [`RSS_GROWTH_BOUND`] of where it started; a real
//! `pacer worker` process started during the flood joins, and the run passes (exit 0).
//! And a token shorter than 16 bytes is refused by both commands, naming the flag and never
//! the token.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../../crates/pacer-controller/tests/common/flood.rs"]
mod flood;

use std::time::{Duration, Instant};

use flood::{FirstMessage, flood, refused_as, rss_bytes, rss_peak};
use pacer_mock::LatencyConfig;
use pacer_tests::*;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "e2e-flood-token-0123456789";

/// How much the controller process may grow during the flood: 200 streams that each send
/// 1 MiB of a message claiming 16 MiB would make a listener that decodes before checking the
/// token hold 200 MiB; the gate reads 5 bytes of each.
const RSS_GROWTH_BOUND: u64 = 64 << 20;

/// The controller's slots for streams waiting to authenticate: `pacer controller` runs with
/// the listener's default, so every stream of a flood smaller than this is read and refused
/// for what it sent.
const MAX_UNAUTHENTICATED: usize = pacer_controller::listener::DEFAULT_MAX_UNAUTHENTICATED_STREAMS;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait (at most 20 s) until something accepts connections on `addr`.
async fn listening(addr: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_process_survives_a_flood_in_bounded_memory_and_a_real_worker_joins() {
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(1),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let plan = write(
        dir.path(),
        "plan.yaml",
        &format!(
            "name: flood\ntarget: http://{}\nscenarios:\n  - {{name: s, executor: per-vu-iterations, vus: 1, iterations: 5, requests: [{{name: r, path: /api/v2/users/me}}]}}\n",
            mock.addr()
        ),
    );
    let sj = dir.path().join("summary.json");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let controller = pacer_spawn(&[
        "controller",
        "--plan",
        &plan.display().to_string(),
        "--expect-workers",
        "1",
        "--listen",
        &addr,
        "--insecure-plaintext",
        "--test-id",
        "t-flood",
        "--session-token",
        TOKEN,
        "--wait-for-workers",
        "60s",
        "-q",
        "--summary-json",
        &sj.display().to_string(),
    ]);
    let pid = controller.id().to_string();
    listening(&addr).await;
    let before = rss_bytes(&pid);
    let sampling = CancellationToken::new();
    let peak = rss_peak(pid.clone(), sampling.clone());

    let oversized = flood(
        &addr,
        50,
        200,
        FirstMessage::Oversized {
            claim: (16 << 20) - 1,
            send: 1 << 20,
        },
    )
    .await;
    refused_as(&oversized, "ResourceExhausted", 200, MAX_UNAUTHENTICATED);
    let wrong = flood(
        &addr,
        20,
        100,
        FirstMessage::Hello {
            test_id: "t-flood".into(),
            token: "not-the-token-0123456789".into(),
        },
    )
    .await;
    refused_as(&wrong, "Unauthenticated", 100, MAX_UNAUTHENTICATED);

    // 300 streams that never send their Hello hold the listener's 256 unauthenticated slots
    // for its 10 s Hello timeout; the worker, refused with UNAVAILABLE meanwhile, retries.
    let (silent, worker) = tokio::join!(flood(&addr, 100, 300, FirstMessage::Silent), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let worker = pacer_spawn(&[
            "worker",
            "--connect",
            &addr,
            "--insecure-plaintext",
            "--test-id",
            "t-flood",
            "--session-token",
            TOKEN,
            "--connect-for",
            "40s",
            "--reconnect-for",
            "10s",
        ]);
        tokio::task::spawn_blocking(move || wait_bounded(worker, Duration::from_secs(60)))
            .await
            .unwrap()
    });
    sampling.cancel();
    let peak = peak.await.unwrap();
    assert_eq!(silent.get("still open"), 0, "{silent:?}");
    assert!(
        silent.get("Unavailable") + silent.get("RefusedStream") >= 300 - 256,
        "{silent:?}"
    );
    assert_eq!(
        worker.status.code(),
        Some(0),
        "the worker:\n{}",
        stderr(&worker)
    );

    let out =
        tokio::task::spawn_blocking(move || wait_bounded(controller, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the controller:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let s = summary(&sj);
    let workers = s["fleet"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{s}");
    assert_eq!(s["totals"]["http_reqs"].as_u64(), Some(5), "{s}");
    let grown = peak.saturating_sub(before);
    eprintln!(
        "flood: the controller's resident set {} MiB before, {} MiB at its peak; silent streams {silent:?}",
        before >> 20,
        peak >> 20
    );
    assert!(
        grown < RSS_GROWTH_BOUND,
        "the controller grew by {} MiB during the flood (bound {} MiB)",
        grown >> 20,
        RSS_GROWTH_BOUND >> 20
    );
}

#[test]
fn a_short_session_token_is_refused_naming_the_flag_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(
        dir.path(),
        "plan.yaml",
        "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: per-vu-iterations, vus: 1, iterations: 1, requests: [{name: r, path: /}]}\n",
    );
    let secret = "tiny-secret";
    let controller = pacer(
        &[
            "controller",
            "--plan",
            &plan.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--session-token",
            secret,
        ],
        &[],
        Duration::from_secs(20),
    );
    let worker = pacer(
        &["worker", "--connect", "127.0.0.1:9", "--connect-for", "1s"],
        &[("PACER_SESSION_TOKEN", secret)],
        Duration::from_secs(20),
    );
    for (what, out) in [("controller", controller), ("worker", worker)] {
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{what}: {text}");
        assert!(
            text.contains("--session-token (PACER_SESSION_TOKEN): 11 bytes is too short"),
            "{what}: {text}"
        );
        assert!(!text.contains(secret), "{what} printed the token: {text}");
    }
}
