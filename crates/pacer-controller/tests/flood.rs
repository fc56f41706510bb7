//! A stranger floods `pacer controller`'s listener (in process, on 127.0.0.1) with what it can
//! send without the session token: hundreds of streams whose first message claims 16 MiB,
//! Hellos with a wrong token, streams that never send, connections that never speak. Each is
//! refused or cut within the Hello timeout, the process's resident memory stays within
//! [`RSS_GROWTH_BOUND`] of where it started, and a real worker (`pacer_worker::run`) joins
//! during the flood and the test passes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "common/flood.rs"]
mod flood;

use std::sync::Arc;
use std::time::Duration;

use flood::{FirstMessage, flood, idle_connections, refused_as, rss_bytes, rss_peak};
use pacer_controller::listener::{self, ListenerLimits};
use pacer_controller::{ControllerConfig, Coordinator};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "flood-token-0123456789";

/// Streams allowed to wait for their Hello at once in these tests (the default is 256).
const MAX_UNAUTHENTICATED: usize = 64;

/// How much the process may grow during the flood. 200 streams that each send 1 MiB of a
/// message claiming 16 MiB would make a listener that reads before authenticating hold
/// 200 MiB; the gate reads 5 bytes of each.
const RSS_GROWTH_BOUND: u64 = 64 << 20;

fn plan() -> Arc<pacer_plan::Plan> {
    // Port 9 (discard) refuses at once: the worker's requests fail fast, the run still ends.
    let text = "name: flood\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: per-vu-iterations, vus: 1, iterations: 3, requests: [{name: a, path: /a}]}\n";
    Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap())
}

async fn serve(limits: ListenerLimits) -> (Coordinator, String, CancellationToken) {
    serve_fleet(limits, 1).await
}

async fn serve_fleet(
    limits: ListenerLimits,
    workers: u32,
) -> (Coordinator, String, CancellationToken) {
    let mut cfg = ControllerConfig::new("flood-1", TOKEN, workers);
    cfg.wait_for_workers = Duration::from_secs(40);
    cfg.start_delay = Duration::from_millis(50);
    cfg.hello_timeout = limits.hello_timeout;
    let c = Coordinator::new(plan(), cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(listener::serve(c.clone(), listener, limits, stop.clone()));
    (c, addr, stop)
}

fn limits() -> ListenerLimits {
    ListenerLimits {
        max_connections: 400,
        max_unauthenticated_streams: MAX_UNAUTHENTICATED,
        hello_timeout: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_before_authentication_is_refused_in_bounded_memory_and_a_real_worker_still_joins()
{
    let (c, addr, stop) = serve(limits()).await;
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run().await }
    });
    let pid = std::process::id().to_string();
    let before = rss_bytes(&pid);
    let sampling = CancellationToken::new();
    let peak = rss_peak(pid.clone(), sampling.clone());

    // A first message that claims 16 MiB: refused after its 5-byte prefix.
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
    // (Past the limit on streams waiting to authenticate, some are refused before that.)
    refused_as(&oversized, "ResourceExhausted", 200, MAX_UNAUTHENTICATED);

    // A Hello with a wrong token: refused naming nothing secret.
    let wrong = flood(
        &addr,
        20,
        100,
        FirstMessage::Hello {
            test_id: "flood-1".into(),
            token: "not-the-token-0123456789".into(),
        },
    )
    .await;
    refused_as(&wrong, "Unauthenticated", 100, MAX_UNAUTHENTICATED);

    // Streams that never send their Hello, with a real worker dialling in meanwhile: past the
    // limit they are refused with UNAVAILABLE (the worker retries), the others are cut at the
    // Hello timeout.
    let mut worker = pacer_worker::WorkerConfig::new(addr.clone(), TOKEN);
    worker.test_id = Some("flood-1".into());
    worker.name = "real".into();
    worker.connect_for = Duration::from_secs(20);
    worker.reconnect_for = Duration::from_secs(10);
    let (silent, joined) = tokio::join!(flood(&addr, 100, 300, FirstMessage::Silent), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pacer_worker::run(worker, CancellationToken::new()).await
    });
    sampling.cancel();
    let peak = peak.await.unwrap();
    assert_eq!(silent.total(), 300);
    assert_eq!(silent.get("still open"), 0, "{silent:?}");
    assert!(
        silent.get("Unavailable") + silent.get("RefusedStream") >= 300 - MAX_UNAUTHENTICATED - 36,
        "{silent:?}"
    );
    let joined = joined.expect("the real worker joined and delivered");
    assert_eq!(joined.index, 0);

    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends")
        .unwrap()
        .expect("the run succeeds");
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.workers.len(), 1);
    assert_eq!(
        outcome.workers[0].state,
        pacer_controller::WorkerState::Finished,
        "{:?}",
        outcome.workers
    );
    let grown = peak.saturating_sub(before);
    eprintln!(
        "flood: resident set {} MiB before, {} MiB at its peak; silent streams: {silent:?}",
        before >> 20,
        peak >> 20
    );
    assert!(
        grown < RSS_GROWTH_BOUND,
        "the process grew by {} MiB during the flood (bound {} MiB)",
        grown >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once_and_silent_ones_at_the_hello_timeout() {
    let (_c, addr, stop) = serve(ListenerLimits {
        max_connections: 20,
        max_unauthenticated_streams: MAX_UNAUTHENTICATED,
        hello_timeout: Duration::from_secs(1),
    })
    .await;
    let (early, closed) = idle_connections(
        &addr,
        40,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(closed, 40, "every silent connection is closed");
    assert!(
        (15..=20).contains(&early),
        "{early} connections closed at once; 20 past the limit of 20 expected"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_grows_to_fit_the_fleet() {
    // 16 workers may hold 32 connections: more than the base of 20.
    let (_c, addr, stop) = serve_fleet(
        ListenerLimits {
            max_connections: 20,
            max_unauthenticated_streams: MAX_UNAUTHENTICATED,
            hello_timeout: Duration::from_secs(1),
        },
        16,
    )
    .await;
    let (early, closed) = idle_connections(
        &addr,
        40,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(closed, 40, "every silent connection is closed");
    assert!(
        (4..=8).contains(&early),
        "{early} connections closed at once; 8 past the limit of 32 expected"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_short_session_token_is_refused_by_the_coordinator() {
    let cfg = ControllerConfig::new("t", "short", 1);
    let err = match Coordinator::new(plan(), cfg) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a 5-byte token was accepted"),
    };
    assert!(
        err.contains("5 bytes") && err.contains("at least 16"),
        "{err}"
    );
    assert!(
        !err.contains("short"),
        "the token itself is never shown: {err}"
    );
}
