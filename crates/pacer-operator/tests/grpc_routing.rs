//! Several tests at once behind the operator's one gRPC listener: real workers
//! (`pacer_worker::run`) dial the same address, each is routed to its own test's coordinator by
//! the test id of its Hello, runs its shard against a local HTTP server, and each test ends
//! with its own results. A worker of a test that does not run here, or with another test's
//! token, is refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use pacer_operator::grpc::{Routes, serve};
use pacer_operator::runner::{CoordinatorRunner, RunEnd, RunHandle, RunSpec, TestRunner};
use pacer_plan::Refs;
use pacer_worker::{WorkerConfig, WorkerError};
use tokio_util::sync::CancellationToken;

fn plan(name: &str, target: std::net::SocketAddr) -> Arc<pacer_plan::Plan> {
    // The workers resolve ${env:...} themselves (the operator's workers do): TARGET_<name>.
    let text = format!(
        "name: {name}\ntarget: ${{env:ROUTING_TARGET:-http://{target}}}\nscenarios:\n  - name: s\n    executor: constant-vus\n    vus: 2\n    duration: 1s\n    requests: [{{name: ok, path: /ok}}]\n"
    );
    let no_env = |_: &str| None;
    let opts = Refs::Local {
        env: &no_env,
        base_dir: ".".into(),
    };
    let mut plan = pacer_plan::load_str(&text, name, &opts).expect("a valid plan");
    // What the operator sends: the plan as written.
    plan.spec = serde_json::from_value(plan.source.clone()).expect("the written spec");
    Arc::new(plan)
}

fn worker(addr: &str, test: &str, token: &str, index: u32) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(addr, token);
    cfg.test_id = Some(test.into());
    cfg.index = Some(index);
    cfg.name = format!("{test}-{index}");
    cfg.connect_for = Duration::from_secs(10);
    cfg.reconnect_for = Duration::from_secs(10);
    cfg.resolve_plan_env = true;
    cfg
}

async fn ended(run: &Arc<dyn RunHandle>) -> RunEnd {
    for _ in 0..300 {
        if let Some(end) = run.end() {
            return end;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run did not end within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tests_share_one_listener() {
    let target = common::target().await;
    let routes = Routes::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let server = serve(routes.clone(), listener, shutdown.clone());
    let runner = CoordinatorRunner::new(routes.clone());

    let a = runner
        .start(RunSpec {
            test_id: "alpha-1".into(),
            session_token: "token-a-0123456789abcdef".into(),
            plan: plan("alpha", target),
            workers: 2,
            wait_for_workers: Duration::from_secs(20),
        })
        .expect("start alpha");
    let b = runner
        .start(RunSpec {
            test_id: "beta-2".into(),
            session_token: "token-b-0123456789abcdef".into(),
            plan: plan("beta", target),
            workers: 1,
            wait_for_workers: Duration::from_secs(20),
        })
        .expect("start beta");
    assert_eq!(routes.len(), 2);

    // Refused: a test that does not run here (retried, then unreachable), another test's token.
    let mut stranger = worker(&addr, "gamma-3", "token-a-0123456789abcdef", 0);
    stranger.connect_for = Duration::from_millis(600);
    // (pacer_worker::run is not Send: the workers run concurrently in this task.)
    let (stranger, wrong_token) = tokio::join!(
        pacer_worker::run(stranger, CancellationToken::new()),
        pacer_worker::run(
            worker(&addr, "beta-2", "token-a-0123456789abcdef", 0),
            CancellationToken::new()
        ),
    );
    match wrong_token {
        Err(WorkerError::Refused(m)) => assert!(m.contains("session_token"), "{m}"),
        other => panic!("a worker with alpha's token joined beta: {other:?}"),
    }
    match stranger {
        Err(WorkerError::Unreachable { last, .. }) => {
            assert!(
                last.contains("no test \"gamma-3\" runs on this controller"),
                "{last}"
            )
        }
        other => panic!("a worker of an unknown test joined: {other:?}"),
    }

    let outcomes = futures::future::join_all(
        [
            worker(&addr, "alpha-1", "token-a-0123456789abcdef", 0),
            worker(&addr, "alpha-1", "token-a-0123456789abcdef", 1),
            worker(&addr, "beta-2", "token-b-0123456789abcdef", 0),
        ]
        .map(|cfg| pacer_worker::run(cfg, CancellationToken::new())),
    )
    .await;
    for (name, run, n) in [("alpha", &a, 2), ("beta", &b, 1)] {
        match ended(run).await {
            RunEnd::Finished(r) => {
                assert!(r.failure.is_none(), "{name}: {:?}", r.failure);
                assert!(r.passed, "{name}: {}", r.text);
                assert!(r.stats.requests > 0, "{name}: no requests");
                assert_eq!(r.stats.errors, 0, "{name}: {}", r.text);
                assert_eq!(r.stats.workers.len(), n, "{name}");
                assert!(r.text.contains(name), "{name}: {}", r.text);
            }
            other => panic!("{name} ended with {other:?}"),
        }
    }
    for outcome in outcomes {
        let outcome = outcome.expect("the worker delivered");
        assert!(outcome.http_reqs > 0);
    }
    // The routes go once the runs have ended.
    for _ in 0..50 {
        if routes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(routes.is_empty(), "{} routes left", routes.len());
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
