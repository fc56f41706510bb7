//! The coordinator over real gRPC on 127.0.0.1 with scripted workers: the protocol's checks
//! (every violation is a clear status, never a panic), the exact merge of what workers send,
//! and the aggregation path over the wire encoding.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use pacer_controller::{
    ControllerConfig, Coordinator, merge_all, session::decode_limits, session::decode_snapshot,
};
use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    ControllerMessage, Hello, PROTOCOL_VERSION, Report, WorkerMessage, controller_message,
    worker_message::Body,
};
use pacer_stats::{Attempt, Hist, Recorder, RequestOutcome, Snapshot};
use proptest::prelude::*;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};

const TOKEN: &str = "token-0123456789abcdef";

fn plan() -> Arc<pacer_plan::Plan> {
    let text = "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: constant-vus, vus: 2, duration: 1s, requests: [{name: a, path: /a}, {name: b, path: /b}]}\n";
    Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap())
}

async fn serve(workers: u32) -> (Coordinator, String, CancellationToken) {
    let mut cfg = ControllerConfig::new("t1", TOKEN, workers);
    cfg.start_delay = Duration::from_millis(50);
    cfg.wait_for_workers = Duration::from_secs(10);
    let c = Coordinator::new(plan(), cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    c.serve(listener, stop.clone());
    (c, addr, stop)
}

struct Worker {
    tx: mpsc::Sender<WorkerMessage>,
    rx: Streaming<ControllerMessage>,
}

impl Worker {
    async fn open(addr: &str, first: WorkerMessage) -> Result<Worker, tonic::Status> {
        let mut client = CoordinatorClient::connect(addr.to_string()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = client.session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Worker { tx, rx })
    }

    async fn send(&self, body: Body) {
        self.tx
            .send(WorkerMessage { body: Some(body) })
            .await
            .unwrap();
    }

    /// The next message that is not a heartbeat or pong, or the stream's error.
    async fn next(&mut self) -> Result<controller_message::Body, tonic::Status> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
                .await
                .expect("an answer within 5 s")?;
            match m.and_then(|m| m.body) {
                Some(
                    controller_message::Body::Heartbeat(_) | controller_message::Body::Pong(_),
                ) => {}
                Some(b) => return Ok(b),
                None => return Err(tonic::Status::cancelled("closed")),
            }
        }
    }
}

fn hello(index: Option<u32>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        test_id: "t1".into(),
        worker_index: index,
        version: "test".into(),
        session_token: TOKEN.into(),
        name: "scripted".into(),
        resume: None,
        takes_served_budget: false,
    }
}

fn msg(body: Body) -> WorkerMessage {
    WorkerMessage { body: Some(body) }
}

/// The stream is refused with `code` and a message containing `needle`.
async fn refused(addr: &str, script: Vec<WorkerMessage>, code: Code, needle: &str) {
    let mut it = script.into_iter();
    let err = match Worker::open(addr, it.next().unwrap()).await {
        Err(status) => status,
        Ok(mut w) => {
            for m in it {
                let _ = w.tx.send(m).await;
            }
            loop {
                match w.next().await {
                    Ok(_) => continue,
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(err.code(), code, "{err:?}");
    assert!(
        err.message().contains(needle),
        "{:?} lacks {needle:?}",
        err.message()
    );
}

#[tokio::test]
async fn protocol_violations_are_refused_with_the_field_named() {
    let (_c, addr, stop) = serve(2).await;
    let mut bad_token = hello(None);
    bad_token.session_token = "nope".into();
    refused(
        &addr,
        vec![msg(Body::Hello(bad_token))],
        Code::Unauthenticated,
        "hello.session_token",
    )
    .await;
    // A newer protocol, and protocol 1 (cumulative reports, which this controller would
    // count as deltas).
    for version in [PROTOCOL_VERSION + 1, 1] {
        let mut other = hello(None);
        other.protocol_version = version;
        refused(
            &addr,
            vec![msg(Body::Hello(other))],
            Code::FailedPrecondition,
            "hello.protocol_version",
        )
        .await;
    }
    let mut other_test = hello(None);
    other_test.test_id = "t2".into();
    refused(
        &addr,
        vec![msg(Body::Hello(other_test))],
        Code::FailedPrecondition,
        "hello.test_id",
    )
    .await;
    refused(
        &addr,
        vec![msg(Body::Hello(hello(Some(7))))],
        Code::InvalidArgument,
        "hello.worker_index",
    )
    .await;
    refused(
        &addr,
        vec![msg(Body::Ready(Default::default()))],
        Code::FailedPrecondition,
        "Ready before Hello",
    )
    .await;
    refused(
        &addr,
        vec![WorkerMessage { body: None }],
        Code::InvalidArgument,
        "WorkerMessage.body",
    )
    .await;
    // Out of order after a good Hello.
    refused(
        &addr,
        vec![
            msg(Body::Hello(hello(Some(0)))),
            msg(Body::Report(Report {
                seq: 1,
                since_seq: 0,
                elapsed_us: 0,
                snapshot_json: b"{}".to_vec(),
                limits_json: Vec::new(),
            })),
        ],
        Code::FailedPrecondition,
        "Report while worker 0 is assigned",
    )
    .await;
    refused(
        &addr,
        vec![
            msg(Body::Hello(hello(Some(1)))),
            msg(Body::Hello(hello(Some(1)))),
        ],
        Code::FailedPrecondition,
        "a second Hello",
    )
    .await;
    stop.cancel();
}

fn ok_attempt() -> Attempt {
    Attempt {
        status: Some(200),
        service_time: Duration::from_micros(50),
        ..Default::default()
    }
}

fn outcome(ms: u64) -> RequestOutcome {
    RequestOutcome {
        duration: Duration::from_micros(ms),
        attempts: 1,
        ..Default::default()
    }
}

/// Scripted workers report cumulative snapshots over gRPC; the coordinator's merge equals one
/// recorder fed everything, garbage is refused, and stale reports are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_outcome_is_the_exact_merge_of_the_latest_reports() {
    let (c, addr, stop) = serve(2).await;
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run().await }
    });
    let layout = pacer_stats::Layout::of(&plan());
    let whole = Recorder::new(layout.clone());
    let mut workers = Vec::new();
    for i in 0..2 {
        let mut w = Worker::open(&addr, msg(Body::Hello(hello(Some(i)))))
            .await
            .unwrap();
        let Ok(controller_message::Body::Assign(a)) = w.next().await else {
            panic!("no Assign");
        };
        assert_eq!(a.worker_index, i);
        assert_eq!(a.weights, [1, 1]);
        assert!(a.plan_spec_json.contains("constant-vus"));
        w.send(Body::Ready(Default::default())).await;
        workers.push(w);
    }
    for w in &mut workers {
        let Ok(controller_message::Body::Start(s)) = w.next().await else {
            panic!("no Start");
        };
        assert!(s.start_in_us <= 50_000);
    }
    for (i, w) in workers.iter_mut().enumerate() {
        let rec = Recorder::new(layout.clone());
        let mut seq = 0;
        // Protocol 2: each report is what was recorded after the previous one.
        let mut sent = Snapshot::empty(&layout);
        let mut delta = |rec: &Recorder| {
            let now = rec.snapshot();
            let d = now.delta(&sent).unwrap();
            sent = now;
            d.to_json().into_bytes()
        };
        for round in 0..3u64 {
            for k in 0..50u64 {
                let us = 100 + (i as u64 * 7919 + round * 104_729 + k * 15_485) % 900_000;
                for r in [&rec, &whole] {
                    r.record_attempt(0, (k % 2) as usize, &ok_attempt());
                    r.record_request(0, (k % 2) as usize, &outcome(us));
                }
            }
            seq += 1;
            let r = Report {
                seq,
                since_seq: seq - 1,
                elapsed_us: round * 1000,
                snapshot_json: delta(&rec),
                limits_json: Vec::new(),
            };
            w.send(Body::Report(r.clone())).await;
            // A replayed (stale) report changes nothing.
            w.send(Body::Report(r)).await;
        }
        w.send(Body::Finished(pacer_proto::Finished {
            report: Some(Report {
                seq: seq + 1,
                since_seq: seq,
                elapsed_us: 5000,
                snapshot_json: delta(&rec),
                limits_json: Vec::new(),
            }),
            stopped_early: false,
            error: String::new(),
            snapshot_json: rec.snapshot().to_json().into_bytes(),
            detail_left_out: false,
        }))
        .await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let expected = whole.snapshot();
    assert_eq!(
        out.merged, expected,
        "the fleet's merge is one recorder's snapshot"
    );
    assert_eq!(out.merged.total().requests, 300);
    // Each worker's own results came with its Finished, checked against its reports.
    for s in &out.worker_snapshots {
        assert_eq!(s.as_ref().map(|s| s.total().requests), Some(150));
    }
    assert!(
        out.workers
            .iter()
            .all(|w| w.state == pacer_controller::WorkerState::Finished && w.http_reqs == 150)
    );
    stop.cancel();
}

#[tokio::test]
async fn a_garbage_snapshot_is_refused_naming_the_field() {
    let layout = pacer_stats::Layout::of(&plan());
    let r = |bytes: &[u8]| Report {
        seq: 1,
        since_seq: 0,
        elapsed_us: 0,
        snapshot_json: bytes.to_vec(),
        limits_json: Vec::new(),
    };
    let e = decode_snapshot(&layout, &r(b"not json"), "report").unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("report.snapshot_json:"),
        "{}",
        e.message()
    );
    let other = Snapshot::empty(&pacer_stats::Layout::default()).to_json();
    let e = decode_snapshot(&layout, &r(other.as_bytes()), "report").unwrap_err();
    assert!(e.message().contains("not the plan's"), "{}", e.message());
    let huge = vec![b' '; pacer_proto::MAX_SNAPSHOT_BYTES + 1];
    let e = decode_snapshot(&layout, &r(&huge), "finished.report").unwrap_err();
    assert!(
        e.message().contains("finished.report.snapshot_json"),
        "{}",
        e.message()
    );
    // the limits table: bounded, parsed, one row per limit of the plan
    let with_limits = |bytes: &[u8]| Report {
        limits_json: bytes.to_vec(),
        ..r(b"{}")
    };
    let e = decode_limits(1, &with_limits(b"[{\"name\": 3}]"), "report").unwrap_err();
    assert!(
        e.message().starts_with("report.limits_json:"),
        "{}",
        e.message()
    );
    let e = decode_limits(1, &with_limits(b"[]"), "report");
    assert!(e.unwrap().is_empty());
    let e = decode_limits(
        1,
        &with_limits(&vec![b' '; pacer_proto::MAX_LIMITS_BYTES + 1]),
        "report",
    )
    .unwrap_err();
    assert!(e.message().contains("more than"), "{}", e.message());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The aggregation path over the wire: each worker's snapshot is JSON inside a protobuf
    /// Report, encoded and decoded as gRPC carries it, validated by the controller and merged.
    /// Every percentile equals that of one histogram fed all the samples.
    #[test]
    fn merged_percentiles_over_the_wire_equal_one_histogram(
        samples in prop::collection::vec((0usize..5, 1u64..3_600_000_000), 1..400),
    ) {
        let layout = pacer_stats::Layout::of(&plan());
        let recorders: Vec<Recorder> = (0..5).map(|_| Recorder::new(layout.clone())).collect();
        let mut one = Hist::new();
        for (w, us) in &samples {
            recorders[*w].record_request(0, 0, &outcome(*us));
            one.record_micros(Duration::from_micros(*us));
        }
        let decoded: Vec<Snapshot> = recorders
            .iter()
            .map(|r| {
                let wire = Report { seq: 1, since_seq: 0, elapsed_us: 0, snapshot_json: r.snapshot().to_json().into_bytes(), limits_json: Vec::new() }
                    .encode_to_vec();
                let report = Report::decode(wire.as_slice()).unwrap();
                decode_snapshot(&layout, &report, "report").unwrap()
            })
            .collect();
        let merged = merge_all(&layout, &decoded).unwrap();
        let h = &merged.scenarios[0].requests[0].stats.duration;
        prop_assert_eq!(h.count(), one.count());
        for p in [0.0, 1.0, 25.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0] {
            prop_assert_eq!(h.percentile(p), one.percentile(p), "p{}", p);
        }
        prop_assert_eq!(h.min(), one.min());
        prop_assert_eq!(h.max(), one.max());
    }
}

/// A worker whose close (the receipt of its Finished) was lost resumes, and the controller
/// answers with the typed refusal the worker reads as "delivered": the meaning travels in the
/// status metadata over real gRPC, not in the wording of the message.
#[tokio::test]
async fn a_finished_worker_that_resumes_is_refused_as_already_finished() {
    let (c, addr, stop) = serve(2).await;
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run().await }
    });
    let mut workers = Vec::new();
    for i in 0..2 {
        let mut w = Worker::open(&addr, msg(Body::Hello(hello(Some(i)))))
            .await
            .unwrap();
        assert!(matches!(
            w.next().await,
            Ok(controller_message::Body::Assign(_))
        ));
        w.send(Body::Ready(Default::default())).await;
        workers.push(w);
    }
    for w in &mut workers {
        assert!(matches!(
            w.next().await,
            Ok(controller_message::Body::Start(_))
        ));
    }
    // Worker 0 finishes (worker 1 still runs, so the test has not ended).
    let snapshot = Recorder::new(pacer_stats::Layout::of(&plan())).snapshot();
    workers[0]
        .send(Body::Finished(pacer_proto::Finished {
            report: Some(Report {
                seq: 1,
                since_seq: 0,
                elapsed_us: 1000,
                snapshot_json: snapshot.to_json().into_bytes(),
                limits_json: Vec::new(),
            }),
            stopped_early: false,
            error: String::new(),
            snapshot_json: Vec::new(),
            detail_left_out: false,
        }))
        .await;
    assert!(workers[0].next().await.is_err(), "the close is the receipt");
    let mut again = hello(Some(0));
    again.resume = Some(pacer_proto::Resume {
        elapsed_us: 2000,
        finished: true,
    });
    let status = match Worker::open(&addr, msg(Body::Hello(again))).await {
        Err(status) => status,
        Ok(mut w) => w.next().await.expect_err("a finished worker cannot resume"),
    };
    assert_eq!(
        pacer_proto::Refusal::of(&status),
        Some(pacer_proto::Refusal::AlreadyFinished),
        "{status:?}"
    );
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("worker 0"),
        "{:?}",
        status.message()
    );
    run.abort();
    stop.cancel();
}
