//! Verdict integrity over real gRPC sessions on 127.0.0.1: a worker whose report cannot be
//! merged into the fleet's is named and fails the run (its numbers kept apart), and a fleet
//! that measured nothing does not pass.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use pacer_controller::{ControllerConfig, Coordinator, FleetOutcome, WorkerState};
use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    ControllerMessage, Hello, PROTOCOL_VERSION, Report, WorkerMessage, controller_message,
    worker_message::Body,
};
use pacer_stats::{Attempt, Recorder, RequestOutcome, Snapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const TOKEN: &str = "verdict-token-123";
/// Every wait in these tests; the runs themselves take well under a second.
const LIMIT: Duration = Duration::from_secs(10);

fn plan() -> Arc<pacer_plan::Plan> {
    let text = "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: constant-vus, vus: 2, duration: 1s, requests: [{name: a, path: /a}]}\nthresholds:\n  http_req_duration: [\"p(95)<10s\"]\n";
    Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap())
}

/// A scripted worker: one gRPC session with the coordinator.
struct Worker {
    tx: mpsc::Sender<WorkerMessage>,
    rx: Streaming<ControllerMessage>,
}

impl Worker {
    /// Hello as worker `index`, wait for Assign, say Ready.
    async fn join(addr: &str, index: u32) -> Worker {
        let mut client = CoordinatorClient::connect(addr.to_string()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            test_id: "t1".into(),
            worker_index: Some(index),
            version: "test".into(),
            session_token: TOKEN.into(),
            name: format!("scripted-{index}"),
            resume: None,
            takes_served_budget: false,
        };
        tx.send(msg(Body::Hello(hello))).await.unwrap();
        let rx = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut w = Worker { tx, rx };
        assert!(matches!(
            w.next().await,
            Some(controller_message::Body::Assign(_))
        ));
        w.send(Body::Ready(Default::default())).await;
        w
    }

    async fn send(&self, body: Body) {
        // The controller may already have closed a failed worker's stream.
        let _ = self.tx.send(msg(body)).await;
    }

    /// The next message that is not a heartbeat or pong (`None`: the stream ended).
    async fn next(&mut self) -> Option<controller_message::Body> {
        loop {
            let m = tokio::time::timeout(LIMIT, self.rx.message())
                .await
                .expect("an answer in time")
                .ok()??;
            match m.body {
                Some(
                    controller_message::Body::Heartbeat(_) | controller_message::Body::Pong(_),
                ) => {}
                other => return other,
            }
        }
    }

    /// Wait until the controller's heartbeat says report `seq` of this worker was counted
    /// (other messages in between are skipped).
    async fn counted(&mut self, seq: u64) {
        loop {
            let m = tokio::time::timeout(LIMIT, self.rx.message())
                .await
                .expect("a heartbeat in time")
                .unwrap()
                .expect("the stream is open");
            if let Some(controller_message::Body::Heartbeat(h)) = m.body
                && h.counted_seq >= seq
            {
                return;
            }
        }
    }

    /// Finish with a last report continuing report `since` (0: none) with `delta`.
    async fn finish(&self, since: u64, delta: &Snapshot) {
        let mut last = report(since + 1, delta);
        last.since_seq = since;
        self.send(Body::Finished(pacer_proto::Finished {
            report: Some(last),
            stopped_early: false,
            error: String::new(),
            snapshot_json: Vec::new(),
            detail_left_out: false,
        }))
        .await;
    }
}

fn msg(body: Body) -> WorkerMessage {
    WorkerMessage { body: Some(body) }
}

/// A worker's first report (`since_seq` 0), `seq` as given.
fn report(seq: u64, snapshot: &Snapshot) -> Report {
    Report {
        seq,
        since_seq: 0,
        elapsed_us: 1000,
        snapshot_json: snapshot.to_json().into_bytes(),
        limits_json: Vec::new(),
    }
}

/// A coordinator for two workers on loopback, its run started; both workers joined and
/// started.
async fn started_fleet() -> (
    tokio::task::JoinHandle<Result<FleetOutcome, pacer_controller::ControllerError>>,
    Vec<Worker>,
    tokio_util::sync::CancellationToken,
) {
    let mut cfg = ControllerConfig::new("t1", TOKEN, 2);
    cfg.start_delay = Duration::from_millis(50);
    cfg.wait_for_workers = LIMIT;
    let c = Coordinator::new(plan(), cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    c.serve(listener, stop.clone());
    let run = tokio::spawn(async move { c.run().await });
    let mut workers = vec![Worker::join(&addr, 0).await, Worker::join(&addr, 1).await];
    for w in &mut workers {
        assert!(matches!(
            w.next().await,
            Some(controller_message::Body::Start(_))
        ));
    }
    (run, workers, stop)
}

/// A worker's honest results: `n` fast, successful requests.
fn honest(n: u64) -> Snapshot {
    let rec = Recorder::new(pacer_stats::Layout::of(&plan()));
    for _ in 0..n {
        rec.record_attempt(
            0,
            0,
            &Attempt {
                status: Some(200),
                service_time: Duration::from_micros(50),
                ..Default::default()
            },
        );
        rec.record_request(
            0,
            0,
            &RequestOutcome {
                duration: Duration::from_micros(800),
                attempts: 1,
                ..Default::default()
            },
        );
    }
    rec.snapshot()
}

/// A snapshot that decodes on its own (2^62 samples is the most the wire format carries) but
/// cannot be merged with anything that has a sample more.
fn overflowing() -> Snapshot {
    let mut s = honest(1);
    for _ in 0..62 {
        let copy = s.clone();
        s.merge(&copy).unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_report_breaks_the_merge_fails_the_run_by_name() {
    let (run, mut workers, stop) = started_fleet().await;
    let good = honest(40);
    workers[0].send(Body::Report(report(1, &good))).await;
    // The honest report is in the total first (the two streams are served concurrently:
    // the other order would make the honest one the report that cannot be merged).
    workers[0].counted(1).await;
    workers[1]
        .send(Body::Report(report(1, &overflowing())))
        .await;
    // The controller tells the hostile worker to stop, naming why.
    let told = workers[1].next().await;
    let Some(controller_message::Body::Abort(a)) = told else {
        panic!("worker 1 was not told to stop: {told:?}");
    };
    assert!(a.reason.contains("cannot be merged"), "{}", a.reason);
    workers[0].finish(1, &honest(0)).await;

    let out = tokio::time::timeout(LIMIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let failure = out.failure.clone().expect("the run failed");
    assert!(
        failure.contains("worker 1 failed") && failure.contains("cannot be merged"),
        "{failure}"
    );
    assert!(
        failure.contains("more than"),
        "the reason is given: {failure}"
    );
    assert_eq!(out.workers[1].state, WorkerState::Failed);
    assert_eq!(out.workers[0].state, WorkerState::Finished);
    // Worker 1's numbers are kept apart: the fleet's results are worker 0's alone.
    assert_eq!(out.merged, good, "only the honest worker is counted");
    let summary = out.summary(&plan());
    assert!(
        out.render_text(&summary, false)
            .contains("failed: worker 1 failed")
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_that_measured_nothing_does_not_pass() {
    let (run, workers, stop) = started_fleet().await;
    let nothing = honest(0);
    for w in &workers {
        w.finish(0, &nothing).await;
    }
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(out.failure.is_none(), "{:?}", out.failure);
    let summary = out.summary(&plan());
    assert!(!summary.passed, "no requests, yet the verdict passed");
    assert!(
        summary.verdict_reasons[0].contains("no requests were made"),
        "{:?}",
        summary.verdict_reasons
    );
    assert_eq!(
        summary.thresholds[0].outcome,
        pacer_stats::ThresholdOutcome::NoData
    );
    let text = out.render_text(&summary, false);
    assert!(
        text.contains("verdict: FAILED: no requests were made"),
        "{text}"
    );
    stop.cancel();
}
