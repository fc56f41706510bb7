//! The served budget over real gRPC on 127.0.0.1 with scripted workers (docs/distributed.md,
//! "Tokens and limits without Redis"): a worker that does not take it is refused, leases come
//! from one GCRA and a malformed one ends the stream naming the field, a Throttled pauses every
//! worker, and a token is fetched once, handed to everyone and refreshed once per refused
//! generation. The token fetcher is scripted (it counts its fetches); the real one against the
//! mock's token endpoint is in tests/tests/fleet_served.rs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pacer_controller::served::TokenService;
use pacer_controller::{ControllerConfig, Coordinator};
use pacer_limiter::served::{Fetched, TokenFetcher};
use pacer_limiter::{Token, TokenError};
use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    ControllerMessage, Hello, LeaseRequest, PROTOCOL_VERSION, Throttled, TokenRequest,
    WorkerMessage, controller_message::Body as In, worker_message::Body,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};

const TOKEN: &str = "token-0123456789abcdef";

fn plan() -> Arc<pacer_plan::Plan> {
    let text = "name: p\ntarget: http://127.0.0.1:9\nauth:\n  - {name: g, type: oauth2-clientCredentials, tokenUrl: /oauth/token, clientId: c, clientSecret: s}\nlimits:\n  - {name: f, limit: 100/s, scope: fleet}\n  - {name: w, limit: 5/s}\nscenarios:\n  - {name: s, executor: constant-vus, vus: 2, duration: 1s, auth: g, requests: [{name: a, path: /a}]}\n";
    Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).unwrap())
}

/// Hands out `tok-1`, `tok-2`, ... and counts them.
#[derive(Default)]
struct Counted(AtomicU64);

#[tonic::async_trait]
impl TokenFetcher for Counted {
    fn served(&self) -> Vec<(usize, Duration)> {
        vec![(0, Duration::from_secs(1))]
    }
    async fn fetch(&self, credential: usize) -> Result<Fetched, TokenError> {
        assert_eq!(credential, 0);
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Fetched {
            token: Token::new(format!("tok-{n}")),
            lifetime: Duration::from_secs(3600),
        })
    }
}

async fn serve(fetcher: Arc<Counted>) -> (String, CancellationToken) {
    let mut cfg = ControllerConfig::new("t1", TOKEN, 2);
    cfg.serve_limits = true;
    cfg.wait_for_workers = Duration::from_secs(10);
    let plan = plan();
    let recorder = Arc::new(pacer_stats::Recorder::new(pacer_stats::Layout::of(&plan)));
    let tokens = TokenService { fetcher, recorder };
    let c = Coordinator::serving(plan, cfg, Some(tokens)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    c.serve(listener, stop.clone());
    (addr, stop)
}

struct Worker {
    tx: mpsc::Sender<WorkerMessage>,
    rx: Streaming<ControllerMessage>,
}

impl Worker {
    async fn open(addr: &str, takes: bool) -> Result<Worker, tonic::Status> {
        let mut client = CoordinatorClient::connect(addr.to_string()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            test_id: "t1".into(),
            worker_index: None,
            version: "test".into(),
            session_token: TOKEN.into(),
            name: "scripted".into(),
            resume: None,
            takes_served_budget: takes,
        };
        tx.send(WorkerMessage {
            body: Some(Body::Hello(hello)),
        })
        .await
        .unwrap();
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
    async fn next(&mut self) -> Result<In, tonic::Status> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
                .await
                .expect("an answer within 5 s")?;
            match m.and_then(|m| m.body) {
                Some(In::Heartbeat(_) | In::Pong(_)) => {}
                Some(b) => return Ok(b),
                None => return Err(tonic::Status::cancelled("closed")),
            }
        }
    }
}

#[tokio::test]
async fn a_worker_that_does_not_take_the_served_budget_is_refused() {
    let (addr, stop) = serve(Arc::default()).await;
    let err = match Worker::open(&addr, false).await {
        Err(s) => s,
        Ok(mut w) => w.next().await.unwrap_err(),
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().starts_with("hello.takes_served_budget"),
        "{}",
        err.message()
    );
    stop.cancel();
}

#[tokio::test]
async fn leases_pauses_and_tokens_are_served_and_checked() {
    let fetcher = Arc::new(Counted::default());
    let (addr, stop) = serve(fetcher.clone()).await;
    let mut a = Worker::open(&addr, true).await.unwrap();
    let mut b = Worker::open(&addr, true).await.unwrap();
    for w in [&mut a, &mut b] {
        let In::Assign(assign) = w.next().await.unwrap() else {
            panic!("no Assign")
        };
        assert!(assign.served_limits);
        assert_eq!(assign.served_credentials, [0]);
    }
    // A lease of the fleet limit (bit 0): slots from one schedule for both workers.
    a.send(Body::LeaseRequest(LeaseRequest {
        id: 7,
        limits: 0b01,
        want: 3,
        heard: vec![],
    }))
    .await;
    let In::LeaseGrant(ga) = a.next().await.unwrap() else {
        panic!("no grant")
    };
    assert_eq!(ga.id, 7);
    assert_eq!(ga.offsets_us.len(), 3);
    b.send(Body::LeaseRequest(LeaseRequest {
        id: 1,
        limits: 0b01,
        want: 1,
        heard: vec![],
    }))
    .await;
    let In::LeaseGrant(gb) = b.next().await.unwrap() else {
        panic!("no grant")
    };
    // b's slot comes after a's three (about 10 ms apart at ~99/s).
    assert!(gb.offsets_us[0] >= 20_000, "{gb:?} after {ga:?}");
    // The first token request fetches; the token goes to every worker.
    let mut gen1 = 0;
    a.send(Body::TokenRequest(TokenRequest {
        credential: 0,
        failed_generation: 0,
    }))
    .await;
    for w in [&mut a, &mut b] {
        let In::TokenGrant(t) = w.next().await.unwrap() else {
            panic!("no token")
        };
        assert_eq!(t.token, "tok-1");
        gen1 = t.generation;
    }
    // A second worker asking gets the current one, without a fetch.
    b.send(Body::TokenRequest(TokenRequest {
        credential: 0,
        failed_generation: 0,
    }))
    .await;
    let In::TokenGrant(t) = b.next().await.unwrap() else {
        panic!("no token")
    };
    assert_eq!(t.generation, gen1);
    assert_eq!(fetcher.0.load(Ordering::SeqCst), 1);
    // Both see a 401 on generation 1: one fetch, everybody gets generation 2.
    a.send(Body::TokenRequest(TokenRequest {
        credential: 0,
        failed_generation: gen1,
    }))
    .await;
    let mut gen2 = 0;
    for w in [&mut a, &mut b] {
        let In::TokenGrant(t) = w.next().await.unwrap() else {
            panic!("no token")
        };
        assert_eq!(t.token, "tok-2");
        assert!(t.generation > gen1);
        gen2 = t.generation;
    }
    b.send(Body::TokenRequest(TokenRequest {
        credential: 0,
        failed_generation: gen1,
    }))
    .await;
    let In::TokenGrant(t) = b.next().await.unwrap() else {
        panic!("no token")
    };
    assert_eq!(t.generation, gen2);
    assert_eq!(fetcher.0.load(Ordering::SeqCst), 2, "one refresh for both");
    // A 429 seen by a: both are told to pause, and a lease says so.
    a.send(Body::Throttled(Throttled {
        limits: 0b01,
        retry_after_us: 2_000_000,
    }))
    .await;
    for w in [&mut a, &mut b] {
        let In::Pause(p) = w.next().await.unwrap() else {
            panic!("no pause")
        };
        assert_eq!(p.limits, 0b01);
        assert!(p.remaining_us > 1_900_000, "{p:?}");
    }
    b.send(Body::LeaseRequest(LeaseRequest {
        id: 2,
        limits: 0b01,
        want: 1,
        heard: vec![],
    }))
    .await;
    let In::LeaseGrant(g) = b.next().await.unwrap() else {
        panic!("no grant")
    };
    assert!(
        g.offsets_us.is_empty() && g.pauses_us[0] > 1_800_000,
        "{g:?}"
    );
    // A lease of a worker-scoped limit ends the stream naming the field.
    a.send(Body::LeaseRequest(LeaseRequest {
        id: 3,
        limits: 0b10,
        want: 1,
        heard: vec![],
    }))
    .await;
    let err = a.next().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("lease_request.limits"),
        "{}",
        err.message()
    );
    stop.cancel();
}
