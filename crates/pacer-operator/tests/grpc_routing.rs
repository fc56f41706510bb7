//! Several tests at once behind the operator's one gRPC listener: real workers
//! (`pacer_worker::run`) dial the same address, each is routed to its own test's coordinator by
//! the test id of its Hello, runs its shard against a local HTTP server, and each test ends
//! with its own results. A worker of a test that does not run here, or with another test's
//! token, is refused. The listener speaks TLS, as the chart's does by default: the workers
//! verify its certificate (made here with rcgen) against the CA they are given.

mod common;

use std::path::PathBuf;
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

/// A CA and a certificate it signs for 127.0.0.1, as PEM files in `dir`: (CA, cert, key).
fn pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("the CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = leaf.signed_by(&key, &issuer).expect("the certificate");
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

static CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn worker(addr: &str, test: &str, token: &str, index: u32) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(addr, token);
    cfg.transport = pacer_worker::Transport::Tls(pacer_worker::TlsTrust {
        ca: pacer_worker::CaSource::File(CA.get().expect("the CA is written first").clone()),
        server_name: None,
    });
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
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = pki(dir.path());
    CA.set(ca).expect("one test writes the CA");
    let tls = pacer_controller::tls::ServerTls::from_files(cert, key).expect("the pair loads");
    let server = serve(
        routes.clone(),
        listener,
        pacer_controller::listener::Transport::Tls(tls),
        shutdown.clone(),
    );
    let runner = CoordinatorRunner::new(routes.clone());

    let a = runner
        .start(RunSpec {
            test_id: "alpha-1".into(),
            session: "token-a-0123456789abcdef".into(),
            plan: plan("alpha", target),
            workers: 2,
            wait_for_workers: Duration::from_secs(20),
            resume_only: false,
        })
        .expect("start alpha");
    let b = runner
        .start(RunSpec {
            test_id: "beta-2".into(),
            session: "token-b-0123456789abcdef".into(),
            plan: plan("beta", target),
            workers: 1,
            wait_for_workers: Duration::from_secs(20),
            resume_only: false,
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
