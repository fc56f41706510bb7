//! A stranger floods the operator's shared gRPC listener (in process, on 127.0.0.1) with what
//! it can send without a session token: streams whose first message claims 16 MiB, Hellos with
//! another test's token or for a test that does not run here, streams that never send. Each is
//! refused or cut within the Hello timeout, the process's resident memory stays within
//! [`RSS_GROWTH_BOUND`] of where it started, and a real worker (`pacer_worker::run`) of a
//! running test joins during the flood and its test passes.

mod common;
#[path = "../../pacer-controller/tests/common/flood.rs"]
mod flood;

use std::sync::Arc;
use std::time::Duration;

use flood::{FirstMessage, flood, refused_as, rss_bytes, rss_peak};
use pacer_controller::listener::ListenerLimits;
use pacer_operator::grpc::{Routes, serve_with};
use pacer_operator::runner::{CoordinatorRunner, RunEnd, RunSpec, TestRunner};
use pacer_plan::Refs;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "operator-flood-token-0123456789";

/// Streams allowed to wait for their Hello at once in this test (the default is 256).
const MAX_UNAUTHENTICATED: usize = 64;

/// How much the process may grow during the flood: 200 streams that each send 1 MiB of a
/// message claiming 16 MiB would make a router that buffers before authenticating hold
/// 200 MiB; the gate reads 5 bytes of each.
const RSS_GROWTH_BOUND: u64 = 64 << 20;

fn plan(target: std::net::SocketAddr) -> Arc<pacer_plan::Plan> {
    let text = format!(
        "name: flood\ntarget: http://{target}\nscenarios:\n  - {{name: s, executor: per-vu-iterations, vus: 1, iterations: 5, requests: [{{name: ok, path: /ok}}]}}\n"
    );
    let no_env = |_: &str| None;
    let opts = Refs::Local {
        env: &no_env,
        base_dir: ".".into(),
    };
    let mut plan = pacer_plan::load_str(&text, "flood", &opts).expect("a valid plan");
    plan.spec = serde_json::from_value(plan.source.clone()).expect("the written spec");
    Arc::new(plan)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_before_authentication_is_refused_in_bounded_memory_and_a_real_worker_still_joins()
{
    let target = common::target().await;
    let routes = Routes::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let limits = ListenerLimits {
        max_connections: 400,
        max_unauthenticated_streams: MAX_UNAUTHENTICATED,
        hello_timeout: Duration::from_secs(2),
    };
    let server = serve_with(routes.clone(), listener, limits, shutdown.clone());
    let run = CoordinatorRunner::new(routes.clone())
        .start(RunSpec {
            test_id: "flood-1".into(),
            session: TOKEN.into(),
            plan: plan(target),
            workers: 1,
            wait_for_workers: Duration::from_secs(40),
            resume_only: false,
        })
        .expect("start");

    let pid = std::process::id().to_string();
    let before = rss_bytes(&pid);
    let sampling = CancellationToken::new();
    let peak = rss_peak(pid, sampling.clone());

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
    let wrong_token = flood(
        &addr,
        20,
        100,
        FirstMessage::Hello {
            test_id: "flood-1".into(),
            token: "another-tests-token-0123456789".into(),
        },
    )
    .await;
    refused_as(&wrong_token, "Unauthenticated", 100, MAX_UNAUTHENTICATED);
    let elsewhere = flood(
        &addr,
        20,
        100,
        FirstMessage::Hello {
            test_id: "not-here".into(),
            token: TOKEN.into(),
        },
    )
    .await;
    refused_as(&elsewhere, "Unavailable", 100, MAX_UNAUTHENTICATED);

    let mut worker = pacer_worker::WorkerConfig::new(addr.clone(), TOKEN);
    worker.test_id = Some("flood-1".into());
    worker.index = Some(0);
    worker.name = "real".into();
    worker.connect_for = Duration::from_secs(20);
    worker.reconnect_for = Duration::from_secs(10);
    let (silent, joined) = tokio::join!(flood(&addr, 100, 300, FirstMessage::Silent), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pacer_worker::run(worker, CancellationToken::new()).await
    });
    sampling.cancel();
    let peak = peak.await.expect("the sampler");
    assert_eq!(silent.total(), 300);
    assert_eq!(silent.get("still open"), 0, "{silent:?}");
    assert!(
        silent.get("Unavailable") + silent.get("RefusedStream") >= 300 - MAX_UNAUTHENTICATED - 36,
        "{silent:?}"
    );
    let joined = joined.expect("the real worker joined and delivered");
    assert!(joined.http_reqs > 0);

    let mut end = None;
    for _ in 0..300 {
        end = run.end();
        if end.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match end {
        Some(RunEnd::Finished(r)) => {
            assert!(r.failure.is_none(), "{:?}", r.failure);
            assert!(r.passed, "{}", r.text);
            assert_eq!(r.stats.errors, 0, "{}", r.text);
        }
        other => panic!("the test ended with {other:?}"),
    }
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
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
