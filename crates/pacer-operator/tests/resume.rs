//! The operator's runner across its own death, without Kubernetes: a test's coordinator and
//! the shared listener run in a runtime of their own, which the test shuts down abruptly mid-run
//! (as a killed process: every task and socket gone, nothing said to the workers); a new
//! listener on the same address and a coordinator rebuilt from what a restarted operator has,
//! the SHA-256 of the token and `resume_only` (phases/resume.rs), take the running workers back.
//! Real workers (`pacer_worker::run`) load a local HTTP server that counts what it receives:
//! the resumed run counts exactly that, and a fresh worker or a wrong token is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pacer_controller::key::{SessionKey, sha256_hex};
use pacer_controller::listener::ListenerLimits;
use pacer_operator::grpc::{Routes, serve_with};
use pacer_operator::runner::{CoordinatorRunner, RunEnd, RunHandle, RunSpec, TestRunner};
use pacer_plan::Refs;
use pacer_worker::{WorkerConfig, WorkerError};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const TEST_ID: &str = "resumed-1";
/// 20/s for 4 s over 2 workers: the arrivals the plan makes, whatever happens to the operator.
const PLANNED: u64 = 80;

/// A local HTTP server answering `GET /ok`, and how many requests it received.
async fn counting_target() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/ok",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

fn plan(target: std::net::SocketAddr) -> Arc<pacer_plan::Plan> {
    let text = format!(
        "name: resumed\ntarget: http://{target}\nscenarios:\n  - name: s\n    executor: constant-arrival-rate\n    rate: 20/s\n    duration: 4s\n    requests: [{{name: ok, path: /ok}}]\nthresholds:\n  http_req_failed: [\"rate<0.01\"]\n"
    );
    let no_env = |_: &str| None;
    let opts = Refs::Local {
        env: &no_env,
        base_dir: ".".into(),
    };
    Arc::new(pacer_plan::load_str(&text, "resumed", &opts).expect("a valid plan"))
}

fn worker(addr: &str, token: &str, index: u32) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(addr, token);
    cfg.transport = pacer_worker::Transport::InsecurePlaintext;
    cfg.test_id = Some(TEST_ID.into());
    cfg.index = Some(index);
    cfg.name = format!("w{index}");
    cfg.connect_for = Duration::from_secs(10);
    cfg.reconnect_for = Duration::from_secs(10);
    cfg
}

fn spec(plan: &Arc<pacer_plan::Plan>, session: SessionKey, resume_only: bool) -> RunSpec {
    RunSpec {
        test_id: TEST_ID.into(),
        session,
        plan: plan.clone(),
        workers: 2,
        wait_for_workers: Duration::from_secs(10),
        resume_only,
    }
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
async fn a_runner_rebuilt_from_the_hash_takes_the_running_workers_back_and_counts_exactly() {
    let (target, hits) = counting_target().await;
    let plan = plan(target);
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");

    // The first operator: its own runtime, so that it can die as a process does.
    let first_operator = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let first = {
        let _in = first_operator.enter();
        let routes = Routes::default();
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        serve_with(
            routes.clone(),
            listener,
            ListenerLimits::default(),
            CancellationToken::new(),
        );
        CoordinatorRunner::new(routes)
            .start(spec(&plan, SessionKey::from(TOKEN), false))
            .expect("start")
    };

    let address = addr.to_string();
    let workers = futures::future::join_all(
        [worker(&address, TOKEN, 0), worker(&address, TOKEN, 1)]
            .map(|cfg| pacer_worker::run(cfg, CancellationToken::new())),
    );
    let operator = async {
        // A quarter of the way in, the operator dies.
        for _ in 0..200 {
            if first.live().started && hits.load(Ordering::SeqCst) >= PLANNED / 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at_death = hits.load(Ordering::SeqCst);
        assert!(at_death >= PLANNED / 4, "the run did not start");
        first_operator.shutdown_background();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // The next one knows the token's hash only, and admits resuming workers only.
        let mut bound = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let routes = Routes::default();
        let shutdown = CancellationToken::new();
        let server = serve_with(
            routes.clone(),
            bound.expect("the address again"),
            ListenerLimits::default(),
            shutdown.clone(),
        );
        let key =
            SessionKey::from_sha256_hex("status.sessionTokenSha256", &sha256_hex(TOKEN.as_bytes()))
                .expect("hex");
        let second = CoordinatorRunner::new(routes)
            .start(spec(&plan, key, true))
            .expect("start the resumed run");

        // Refused: a fresh worker (its shard would run twice) and a wrong token.
        let (fresh, wrong) = tokio::join!(
            pacer_worker::run(worker(&address, TOKEN, 1), CancellationToken::new()),
            pacer_worker::run(
                worker(&address, "fedcba9876543210fedcba9876543210", 0),
                CancellationToken::new()
            ),
        );
        let end = ended(&second).await;
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        (at_death, fresh, wrong, end)
    };
    let (outcomes, (at_death, fresh, wrong, end)) = tokio::join!(workers, operator);

    match fresh {
        Err(WorkerError::Refused(m)) => assert!(m.contains("already started"), "{m}"),
        other => panic!("a fresh worker joined a resumed test: {other:?}"),
    }
    match wrong {
        Err(WorkerError::Refused(m)) => assert!(m.contains("hello.session_token"), "{m}"),
        other => panic!("a wrong token joined: {other:?}"),
    }
    for o in outcomes {
        o.expect("each worker delivered its results to the resumed run");
    }
    let received = hits.load(Ordering::SeqCst);
    match end {
        RunEnd::Finished(r) => {
            eprintln!(
                "resumed after {at_death} of {received} requests: counted {}, passed {}",
                r.stats.requests, r.passed
            );
            assert!(r.passed, "{}", r.text);
            assert!(r.failure.is_none(), "{:?}", r.failure);
            assert_eq!(r.stats.requests, received, "exactly what was received");
            assert_eq!(received, PLANNED, "the plan's arrivals, once each");
            assert_eq!(r.stats.workers.len(), 2);
        }
        other => panic!("the resumed run ended with {other:?}"),
    }
}
