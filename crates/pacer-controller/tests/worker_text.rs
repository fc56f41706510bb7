//! What a worker says about itself reaches the controller's logs and results only capped and
//! with its control characters escaped: a worker that fails with a 5000-character error full of
//! newlines and terminal escapes cannot forge log lines or flood the run's failure reason.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use pacer_controller::{ControllerConfig, ControllerError, Coordinator};
use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    Finished, Hello, MAX_PEER_TEXT_CHARS, PROTOCOL_VERSION, WorkerMessage, controller_message,
    worker_message::Body,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "worker-text-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_error_text_is_capped_and_its_control_characters_escaped() {
    let text = "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: per-vu-iterations, vus: 1, iterations: 1, requests: [{name: a, path: /a}]}\n";
    let plan = Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap());
    let mut cfg = ControllerConfig::new("t1", TOKEN, 1);
    cfg.wait_for_workers = Duration::from_secs(10);
    let c = Coordinator::new(plan, cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    c.serve(listener, stop.clone());
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run().await }
    });

    let mut client = CoordinatorClient::connect(addr).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(WorkerMessage {
        body: Some(Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            test_id: "t1".into(),
            worker_index: None,
            version: "test".into(),
            session_token: TOKEN.into(),
            name: "hostile\nINFO forged line".into(),
            resume: None,
            takes_served_budget: false,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .unwrap()
        .unwrap()
        .and_then(|m| m.body);
    assert!(matches!(first, Some(controller_message::Body::Assign(_))));
    let error = format!(
        "boom\n2026-01-01T00:00:00Z INFO pacer: all good\u{1b}[2J{}",
        "x".repeat(5000)
    );
    tx.send(WorkerMessage {
        body: Some(Body::Finished(Finished {
            report: None,
            stopped_early: true,
            error,
            snapshot_json: Vec::new(),
            detail_left_out: false,
        })),
    })
    .await
    .unwrap();

    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    let reason = match result {
        Err(ControllerError::WorkerFailed { index: 0, reason }) => reason,
        other => panic!("expected worker 0 to fail, got {other:?}"),
    };
    assert!(
        !reason.contains('\n') && !reason.contains('\u{1b}'),
        "{reason:?}"
    );
    assert!(reason.starts_with("boom\\n2026-01-01"), "{reason:?}");
    assert!(reason.contains("\\u{1b}[2J"), "{reason:?}");
    assert!(reason.ends_with("more characters cut)"), "{reason:?}");
    assert!(
        reason.chars().count() < MAX_PEER_TEXT_CHARS + 64,
        "{} characters",
        reason.chars().count()
    );
    stop.cancel();
}
