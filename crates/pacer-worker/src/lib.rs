//! A pacer worker: dials the controller (`proto/pacer/v1/coordinator.proto`), receives the
//! plan and its [`Shard`], measures the round trip, starts at the fleet's common instant, runs
//! its shard with the engine and streams CUMULATIVE snapshots every second until it has
//! delivered its final one.
//!
//! Losing the controller does not stop the shard: the worker keeps running and reconnects
//! with backoff (100 ms doubling to 2 s, with jitter) for [`WorkerConfig::reconnect_for`],
//! resuming its session (its index, its elapsed time, its latest snapshot). Because every
//! report is cumulative, the controller that takes it back, restarted or not, neither loses
//! nor double-counts anything.

use std::sync::Arc;
use std::time::Duration;

use pacer_engine::setup::LimiterSetup;
use pacer_engine::{Deps, EngineError, RunControl, RunOptions, RunReport, StartGate};
use pacer_limiter::fleet::FleetConfig;
use pacer_plan::shard::largest_remainder;
use pacer_plan::spec::{LimitScope, PlanSpec};
use pacer_plan::{Limit, Plan, Rate, Shard};
use pacer_proto::v1::coordinator_client::CoordinatorClient;
use pacer_proto::{
    Assign, ControllerMessage, Hello, PROTOCOL_VERSION, Report, Resume, WorkerMessage,
    controller_message::Body as In, worker_message::Body as Out,
};
use pacer_stats::Recorder;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// How a worker finds and talks to its controller.
#[derive(Clone)]
pub struct WorkerConfig {
    /// `host:port` or `http://host:port`.
    pub controller: String,
    /// The test to join; `None`: whatever test the controller runs.
    pub test_id: Option<String>,
    /// The worker index to ask for; `None`: the controller picks.
    pub index: Option<u32>,
    pub session_token: String,
    /// Shown by the controller (host:pid).
    pub name: String,
    /// Send `X-Pacer-Worker` even if the controller does not ask for it.
    pub force_worker_header: bool,
    /// Keep trying the first connection this long (default 60 s).
    pub connect_for: Duration,
    /// After losing the controller, keep running and trying to reconnect this long (default
    /// 5 min); past it a running shard goes on, but a finished one gives up delivering.
    pub reconnect_for: Duration,
    /// Resolve the plan's `${env:NAME}` references in this process's environment: the
    /// Kubernetes operator sends them unresolved, so credentials (the worker pods' Secrets)
    /// never pass through the controller.
    pub resolve_plan_env: bool,
    /// Join the fleet's budget in Redis (`scope: fleet` limits, `share: fleet` tokens).
    /// `None`: fleet limits are split by the shard's weight and kept by each worker.
    pub redis: Option<RedisJoin>,
}

/// The Redis a worker shares its fleet's budget through.
#[derive(Clone)]
pub struct RedisJoin {
    /// `redis://` or `rediss://` URL; may hold a password, so never logged.
    pub url: String,
    /// The fleet's id in Redis; `None`: the controller's test id.
    pub fleet: Option<String>,
    /// How long to send at a safe share while Redis fails, before pausing.
    pub safe_mode_max: Duration,
    /// PEM CA(s) to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("controller", &self.controller)
            .field("test_id", &self.test_id)
            .field("index", &self.index)
            .field("session_token", &"<redacted>")
            .field("name", &self.name)
            .field("force_worker_header", &self.force_worker_header)
            .field("connect_for", &self.connect_for)
            .field("reconnect_for", &self.reconnect_for)
            .field("resolve_plan_env", &self.resolve_plan_env)
            .field(
                "redis",
                &self
                    .redis
                    .as_ref()
                    .map(|r| (pacer_limiter::fleet::redacted_url(&r.url), r.fleet.clone())),
            )
            .finish()
    }
}

impl WorkerConfig {
    pub fn new(controller: impl Into<String>, session_token: impl Into<String>) -> Self {
        Self {
            controller: controller.into(),
            test_id: None,
            index: None,
            session_token: session_token.into(),
            name: String::new(),
            force_worker_header: false,
            connect_for: Duration::from_secs(60),
            reconnect_for: Duration::from_secs(300),
            resolve_plan_env: false,
            redis: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid controller address {0:?}: {1}")]
    Address(String, String),
    #[error("could not reach the controller at {addr} within {waited:?}: {last}")]
    Unreachable {
        addr: String,
        waited: Duration,
        last: String,
    },
    #[error("the controller refused this worker: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the plan from the controller is not valid here: {0}")]
    Plan(String),
    #[error("{0}")]
    Fleet(String),
    #[error("stopped before the test started")]
    NotStarted,
    #[error("finished, but could not deliver the final results within {0:?}: {1}")]
    Undelivered(Duration, String),
}

/// What a worker did.
#[derive(Clone, Debug)]
pub struct WorkerOutcome {
    pub index: u32,
    pub test_id: String,
    /// HTTP exchanges in the final snapshot.
    pub http_reqs: u64,
    pub stopped_early: bool,
    /// The engine could not run (reported to the controller as a failed worker).
    pub engine_error: Option<String>,
}

/// A shard being run (or run already).
struct Running {
    index: u32,
    test_id: String,
    weights: Vec<u32>,
    recorder: Arc<Recorder>,
    /// The limiter, for the limits table sent with each report.
    setup: Arc<LimiterSetup>,
    control: RunControl,
    start: Instant,
    /// `(stopped_early, error)` once the engine has returned.
    done: watch::Receiver<Option<(bool, String)>>,
    seq: u64,
    report_every: Duration,
    heartbeat_every: Duration,
    peer_timeout: Duration,
}

impl Running {
    fn done(&self) -> Option<(bool, String)> {
        self.done.borrow().clone()
    }

    fn report(&mut self) -> Report {
        self.seq += 1;
        Report {
            seq: self.seq,
            elapsed_us: Instant::now()
                .saturating_duration_since(self.start)
                .as_micros() as u64,
            snapshot_json: self.recorder.snapshot().to_json().into_bytes(),
            // The limits table is informational: an encoding failure sends none.
            limits_json: serde_json::to_vec(&self.setup.pacing()).unwrap_or_default(),
        }
    }
}

/// How a session (one stream) ended.
enum End {
    /// Final results delivered: the worker is done.
    Delivered,
    /// The stream broke or went silent: reconnect.
    Retry(String),
    /// Do not reconnect.
    Fatal(WorkerError),
}

fn url_of(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Run as a worker until the final results are delivered (or it is hopeless). `cancel` (the
/// process is asked to quit) aborts the engine; the final results are still delivered.
pub async fn run(
    cfg: WorkerConfig,
    cancel: CancellationToken,
) -> Result<WorkerOutcome, WorkerError> {
    let url = url_of(&cfg.controller);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| WorkerError::Address(cfg.controller.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let mut running: Option<Running> = None;
    let mut trying_since = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        if cancel.is_cancelled() && running.is_none() {
            return Err(WorkerError::NotStarted);
        }
        let end = session(&cfg, &endpoint, &mut running, &cancel, &mut attempt).await;
        match end {
            End::Delivered => {
                let r = running
                    .as_ref()
                    .ok_or_else(|| WorkerError::Protocol("delivered without running".into()))?;
                let (stopped_early, error) = r.done().unwrap_or_default();
                return Ok(WorkerOutcome {
                    index: r.index,
                    test_id: r.test_id.clone(),
                    http_reqs: r.recorder.snapshot().total().attempts,
                    stopped_early,
                    engine_error: (!error.is_empty()).then_some(error),
                });
            }
            End::Fatal(e) => {
                if let Some(r) = &running {
                    r.control.abort.cancel();
                }
                return Err(e);
            }
            End::Retry(reason) => {
                if attempt == 0 {
                    // The session had been established: a new loss starts now.
                    trying_since = Instant::now();
                }
                let limit = if running.is_some() {
                    cfg.reconnect_for
                } else {
                    cfg.connect_for
                };
                let waited = trying_since.elapsed();
                let finished = running.as_ref().is_some_and(|r| r.done().is_some());
                if waited >= limit && (running.is_none() || finished) {
                    return Err(if finished {
                        WorkerError::Undelivered(limit, reason)
                    } else {
                        WorkerError::Unreachable {
                            addr: url,
                            waited,
                            last: reason,
                        }
                    });
                }
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::info!("controller {url}: {reason}; retrying in {delay:?}");
                // While disconnected the shard keeps running; notice its end meanwhile.
                if let Some(r) = running.as_mut() {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled(), if !r.control.abort.is_cancelled() => {
                            r.control.abort.cancel();
                        }
                    }
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err(WorkerError::NotStarted),
                    }
                }
            }
        }
    }
}

/// 100 ms doubling to 2 s, with up to 25% jitter (so a fleet does not reconnect in step).
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
    let jitter = rand::random_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

fn engine_result(
    r: Result<Result<RunReport, EngineError>, tokio::task::JoinError>,
) -> (bool, String) {
    match r {
        Ok(Ok(report)) => (report.stopped_early, String::new()),
        Ok(Err(e)) => (true, format!("the engine could not run: {e}")),
        Err(e) => (true, format!("the engine task failed: {e}")),
    }
}

/// What a status from the controller means for this worker. Its message is the other side's
/// text: it is capped and its control characters escaped (`pacer_proto::peer_text`) before it
/// goes into an error or a log line.
fn classify(status: &Status) -> End {
    let text = pacer_proto::peer_text(status.message());
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::ResourceExhausted => {
            End::Fatal(WorkerError::Refused(format!("{:?}: {text}", status.code())))
        }
        Code::FailedPrecondition if status.message().contains("already finished") => {
            // The controller has our final report; the close that said so was lost.
            End::Delivered
        }
        Code::FailedPrecondition => End::Fatal(WorkerError::Refused(text)),
        _ => End::Retry(format!("{:?}: {text}", status.code())),
    }
}

type Tx = mpsc::Sender<WorkerMessage>;

/// Ping/Pong exchanges before Ready (the smallest round trip sets the clock offset).
const PINGS: usize = 8;

async fn send(tx: &Tx, body: Out) -> Result<(), End> {
    tx.send(WorkerMessage { body: Some(body) })
        .await
        .map_err(|_| End::Retry("the stream closed".into()))
}

/// Next message from the controller within `timeout`.
async fn next(inbound: &mut Streaming<ControllerMessage>, timeout: Duration) -> Result<In, End> {
    match tokio::time::timeout(timeout, inbound.message()).await {
        Err(_) => Err(End::Retry(format!(
            "no message from the controller for {timeout:?}"
        ))),
        Ok(Err(status)) => Err(classify(&status)),
        Ok(Ok(None)) => Err(End::Retry("the controller closed the stream".into())),
        Ok(Ok(Some(m))) => m.body.ok_or_else(|| {
            End::Fatal(WorkerError::Protocol(format!(
                "ControllerMessage.body: not set or of a kind this worker does not know (it speaks protocol {PROTOCOL_VERSION})"
            )))
        }),
    }
}

async fn session(
    cfg: &WorkerConfig,
    endpoint: &Endpoint,
    running: &mut Option<Running>,
    cancel: &CancellationToken,
    attempt: &mut u32,
) -> End {
    match session_inner(cfg, endpoint, running, cancel, attempt).await {
        Ok(()) => End::Delivered,
        Err(end) => end,
    }
}

async fn session_inner(
    cfg: &WorkerConfig,
    endpoint: &Endpoint,
    running: &mut Option<Running>,
    cancel: &CancellationToken,
    attempt: &mut u32,
) -> Result<(), End> {
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| End::Retry(format!("cannot connect: {e}")))?;
    let mut client = CoordinatorClient::new(channel)
        .max_decoding_message_size(pacer_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pacer_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<WorkerMessage>(64);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        test_id: running
            .as_ref()
            .map(|r| r.test_id.clone())
            .or_else(|| cfg.test_id.clone())
            .unwrap_or_default(),
        worker_index: running.as_ref().map(|r| r.index).or(cfg.index),
        version: env!("CARGO_PKG_VERSION").to_string(),
        session_token: cfg.session_token.clone(),
        name: cfg.name.clone(),
        resume: running.as_ref().map(|r| Resume {
            elapsed_us: Instant::now()
                .saturating_duration_since(r.start)
                .as_micros() as u64,
            finished: r.done().is_some(),
        }),
    };
    send(&tx, Out::Hello(hello)).await?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| classify(&s))?
        .into_inner();
    let assign = match next(&mut inbound, Duration::from_secs(10)).await? {
        In::Assign(a) => a,
        other => {
            return Err(End::Fatal(WorkerError::Protocol(format!(
                "{} before Assign: the controller must answer Hello with Assign",
                other.kind()
            ))));
        }
    };
    if assign.protocol_version != PROTOCOL_VERSION {
        return Err(End::Fatal(WorkerError::Protocol(format!(
            "assign.protocol_version: {} is not {PROTOCOL_VERSION}",
            assign.protocol_version
        ))));
    }
    // The session is established: the next loss starts a new backoff.
    *attempt = 0;
    let peer_timeout = Duration::from_millis(u64::from(assign.peer_timeout_ms.max(1000)));
    if running.is_none() {
        let Some(r) = prepare(cfg, &assign, &tx, &mut inbound, cancel, peer_timeout).await? else {
            return Err(End::Fatal(WorkerError::NotStarted));
        };
        *running = Some(r);
    } else if let Some(r) = running.as_ref()
        && (assign.worker_index != r.index
            || assign.weights != r.weights
            || assign.test_id != r.test_id)
    {
        return Err(End::Fatal(WorkerError::Protocol(format!(
            "assign: the controller now says worker {} of {:?} in test {:?}, but this worker runs {} of {:?} in {:?}",
            assign.worker_index, assign.weights, assign.test_id, r.index, r.weights, r.test_id
        ))));
    }
    let Some(r) = running.as_mut() else {
        return Err(End::Fatal(WorkerError::NotStarted));
    };
    r.peer_timeout = peer_timeout;
    stream_reports(r, &tx, &mut inbound, cancel).await
}

/// A fresh worker: load the plan, measure the round trip, say Ready, wait for Start, start
/// the engine. `None`: stopped before the start.
async fn prepare(
    cfg: &WorkerConfig,
    a: &Assign,
    tx: &Tx,
    inbound: &mut Streaming<ControllerMessage>,
    cancel: &CancellationToken,
    peer_timeout: Duration,
) -> Result<Option<Running>, End> {
    let plan = match if cfg.resolve_plan_env {
        plan_from_assign_env(a, &pacer_plan::Refs::worker_pod())
    } else {
        plan_from_assign(a)
    } {
        Ok(p) => p,
        Err(e) => return Err(cannot_run(tx, e).await),
    };
    let shard = match Shard::new(a.worker_index, a.weights.clone()) {
        Ok(s) => s,
        Err(e) => return Err(cannot_run(tx, WorkerError::Protocol(format!("assign.{e}"))).await),
    };
    // The engine is built now (HTTP client included) and waits at the gate for the start,
    // so a Start message finds nothing left to prepare.
    let recorder = Arc::new(Recorder::new(pacer_stats::Layout::of(&plan)));
    // With Redis the fleet paces every `scope: fleet` limit from one budget (the whole
    // limit); without it each worker keeps its weight's share of it.
    let setup = match &cfg.redis {
        Some(r) => {
            let mut fc = FleetConfig::new(
                r.url.clone(),
                r.fleet.clone().unwrap_or_else(|| a.test_id.clone()),
            );
            fc.safe_mode_max = r.safe_mode_max;
            fc.ca_pem = r.ca_pem.clone();
            match LimiterSetup::fleet(&plan, fc, &recorder).await {
                Ok(s) => s,
                Err(e) => return Err(cannot_run(tx, WorkerError::Fleet(e.to_string())).await),
            }
        }
        None => LimiterSetup::local(&shard_limits(&plan.limits, &shard)),
    };
    let setup = Arc::new(setup);
    let deps = Deps {
        limiter: setup.limiter.clone(),
        tokens: setup.tokens.clone(),
        recorder: recorder.clone(),
    };
    let control = RunControl::default();
    let (mut gate, start_gate) = StartGate::new();
    // Options added to the engine later keep their defaults.
    #[allow(clippy::needless_update)]
    let opts = RunOptions {
        worker: a.worker_index,
        send_worker_header: a.send_worker_header || cfg.force_worker_header,
        shard: Some(shard),
        start: Some(start_gate),
        ..RunOptions::default()
    };
    let engine = tokio::spawn(pacer_engine::run(
        Arc::new(plan),
        deps,
        opts,
        control.clone(),
    ));
    // The engine's end, watched apart from the session (which may break and reconnect).
    let (done_tx, done) = watch::channel(None);
    let finishing = setup.clone();
    tokio::spawn(async move {
        let result = engine_result(engine.await);
        // Leave the fleet (the last one out deletes the test's keys) before saying done.
        finishing.finish().await;
        let _ = done_tx.send(Some(result));
    });
    // Round trip and clock offset (NTP-style): of a few Ping/Pong exchanges, the one with the
    // smallest round trip tells best where the controller's clock stands against ours.
    let epoch = Instant::now();
    let mut rtt = Duration::MAX;
    // The controller's clock minus ours, microseconds.
    let mut offset: Option<i128> = None;
    for _ in 0..PINGS {
        let sent = epoch.elapsed().as_micros() as u64;
        send(tx, Out::Ping(pacer_proto::Ping { sent_us: sent })).await?;
        loop {
            match next(inbound, peer_timeout).await? {
                In::Pong(p) if p.sent_us == sent => {
                    let now = epoch.elapsed().as_micros() as u64;
                    let this = Duration::from_micros(now.saturating_sub(sent));
                    if this < rtt {
                        rtt = this;
                        let mid = (i128::from(sent) + i128::from(now)) / 2;
                        offset = Some(i128::from(p.controller_us) - mid);
                    }
                    break;
                }
                In::Pong(_) | In::Heartbeat(_) => {}
                In::Stop(_) | In::Abort(_) => {
                    control.abort.cancel();
                    return Ok(None);
                }
                other => {
                    return Err(End::Fatal(WorkerError::Protocol(format!(
                        "{} while measuring the round trip (before Ready)",
                        other.kind()
                    ))));
                }
            }
        }
    }
    // Ready only once the engine waits at the gate: a worker still building its HTTP client
    // would be busy (and late) when the Start arrives.
    let prepared = tokio::time::timeout(peer_timeout, gate.prepared()).await;
    if !matches!(prepared, Ok(true)) {
        control.abort.cancel();
        let mut done = done.clone();
        let why = match tokio::time::timeout(Duration::from_secs(2), done.wait_for(Option::is_some))
            .await
        {
            Ok(Ok(d)) => d.clone().map(|(_, e)| e).unwrap_or_default(),
            _ => "the engine did not get ready to start".into(),
        };
        return Err(cannot_run(tx, WorkerError::Plan(why)).await);
    }
    send(tx, Out::Ready(pacer_proto::Ready {})).await?;
    tracing::info!(
        "worker {} of {}: ready (round trip {rtt:?})",
        a.worker_index,
        a.weights.len()
    );
    let (start_in, start_at) = loop {
        tokio::select! {
            m = next(inbound, peer_timeout) => match m? {
                In::Start(s) => break (Duration::from_micros(s.start_in_us), s.start_at_us),
                In::Heartbeat(_) | In::Pong(_) => {}
                In::Stop(_) | In::Abort(_) => {
                    control.abort.cancel();
                    return Ok(None);
                }
                other => {
                    return Err(End::Fatal(WorkerError::Protocol(format!(
                        "{} before Start", other.kind()
                    ))));
                }
            },
            _ = cancel.cancelled() => {
                control.abort.cancel();
                return Ok(None);
            }
        }
    };
    let received = Instant::now();
    let start = match offset {
        // The instant on the controller's clock, mapped onto ours.
        Some(offset) if start_at > 0 => {
            let local_us = i128::from(start_at) - offset;
            let local = Duration::from_micros(u64::try_from(local_us.max(0)).unwrap_or(0));
            epoch + local
        }
        // No offset measured: the Start message left the controller about rtt/2 ago.
        _ => received + start_in.saturating_sub(rtt / 2),
    };
    gate.start_at(start);
    tracing::debug!(
        "start in {:?} (Start said {start_in:?} when queued, round trip {rtt:?}); wall clock now {:?}",
        start.saturating_duration_since(received),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    let ms = |v: u32| Duration::from_millis(u64::from(if v == 0 { 1000 } else { v.max(10) }));
    Ok(Some(Running {
        index: a.worker_index,
        test_id: a.test_id.clone(),
        weights: a.weights.clone(),
        recorder,
        setup,
        control,
        start,
        done,
        seq: 0,
        report_every: ms(a.report_interval_ms),
        heartbeat_every: ms(a.heartbeat_interval_ms),
        peer_timeout,
    }))
}

/// Tell the controller this worker cannot run its shard (it fails the test at once instead
/// of waiting for the worker), and end the session.
async fn cannot_run(tx: &Tx, e: WorkerError) -> End {
    let _ = send(
        tx,
        Out::Finished(pacer_proto::Finished {
            report: None,
            stopped_early: true,
            error: e.to_string(),
        }),
    )
    .await;
    // Give the message a moment to leave before the stream is dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    End::Fatal(e)
}

/// A plan whose `${env:NAME}` references are resolved here (the Kubernetes operator's
/// workers), then validated. The plan is a LoadTest's: read with `refs`
/// ([`pacer_plan::Refs::worker_pod`] in a pod), so a `${file:}` is refused, never read.
pub fn plan_from_assign_env(a: &Assign, refs: &pacer_plan::Refs<'_>) -> Result<Plan, WorkerError> {
    let doc: serde_json::Value = serde_json::from_str(&a.plan_spec_json)
        .map_err(|e| WorkerError::Plan(format!("assign.plan_spec_json: {e}")))?;
    pacer_plan::load_value(doc, "the plan from the controller", &refs.for_manifest())
        .map_err(|e| WorkerError::Plan(e.to_string()))
}

/// The plan the controller resolved, validated here again (the worker trusts no input).
pub fn plan_from_assign(a: &Assign) -> Result<Plan, WorkerError> {
    let spec: PlanSpec = serde_json::from_str(&a.plan_spec_json)
        .map_err(|e| WorkerError::Plan(format!("assign.plan_spec_json: {e}")))?;
    let source: serde_json::Value = if a.plan_source_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&a.plan_source_json)
            .map_err(|e| WorkerError::Plan(format!("assign.plan_source_json: {e}")))?
    };
    pacer_plan::validate::validate(spec, source).map_err(|errors| {
        WorkerError::Plan(
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// The limits this worker paces to: worker-scoped limits as declared (each process keeps
/// them), fleet-scoped ones split by the shard's weight (rate and burst), so the fleet
/// together stays within the declared limit without a shared store.
pub fn shard_limits(limits: &[Limit], shard: &Shard) -> Vec<Limit> {
    if shard.is_whole() {
        return limits.to_vec();
    }
    let w = u64::from(shard.weights()[shard.index() as usize]);
    let total: u64 = shard.weights().iter().map(|&x| u64::from(x)).sum();
    let weights: Vec<u64> = shard.weights().iter().map(|&x| u64::from(x)).collect();
    limits
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if l.scope == LimitScope::Fleet {
                let per = l
                    .limit
                    .per()
                    .checked_mul(total as u32)
                    .unwrap_or(l.limit.per());
                if let Some(r) = Rate::new(l.limit.count().saturating_mul(w), per) {
                    l.limit = r;
                }
                let burst = largest_remainder(u64::from(l.burst), &weights)[shard.index() as usize];
                l.burst = (burst as u32).max(1);
            }
            l
        })
        .collect()
}

/// Stream reports and heartbeats until the final report is delivered.
async fn stream_reports(
    r: &mut Running,
    tx: &Tx,
    inbound: &mut Streaming<ControllerMessage>,
    cancel: &CancellationToken,
) -> Result<(), End> {
    // A resumed session starts with the latest cumulative snapshot.
    let report = r.report();
    send(tx, Out::Report(report)).await?;
    let mut finished_sent = false;
    if let Some((stopped_early, error)) = r.done() {
        let report = r.report();
        send(
            tx,
            Out::Finished(pacer_proto::Finished {
                report: Some(report),
                stopped_early,
                error,
            }),
        )
        .await?;
        finished_sent = true;
    }
    let mut reports = tokio::time::interval_at(Instant::now() + r.report_every, r.report_every);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats = tokio::time::interval(r.heartbeat_every);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut done = r.done.clone();
    loop {
        let abort = r.control.abort.clone();
        tokio::select! {
            result = done.wait_for(Option::is_some), if !finished_sent => {
                let (stopped_early, error) = match result {
                    Ok(d) => d.clone().unwrap_or_default(),
                    Err(_) => (true, "the engine's watcher ended".to_string()),
                };
                if !error.is_empty() {
                    tracing::error!("{error}");
                }
                let report = r.report();
                send(tx, Out::Finished(pacer_proto::Finished {
                    report: Some(report),
                    stopped_early,
                    error,
                })).await?;
                finished_sent = true;
            }
            _ = reports.tick(), if !finished_sent => {
                let report = r.report();
                if report.snapshot_json.len() > pacer_proto::MAX_SNAPSHOT_BYTES {
                    tracing::error!("snapshot of {} bytes is too large to send", report.snapshot_json.len());
                } else {
                    send(tx, Out::Report(report)).await?;
                }
            }
            _ = beats.tick() => {
                let sent_us = Instant::now().saturating_duration_since(r.start).as_micros() as u64;
                send(tx, Out::Heartbeat(pacer_proto::Heartbeat { sent_us })).await?;
            }
            _ = cancel.cancelled(), if !abort.is_cancelled() => {
                // After Finished was sent, being asked to quit is the normal end of a run.
                if finished_sent {
                    tracing::debug!("asked to quit after finishing");
                } else {
                    tracing::warn!("asked to quit: aborting the shard");
                }
                abort.cancel();
            }
            _ = tokio::time::sleep_until(last_heard + r.peer_timeout) => {
                return Err(End::Retry(format!(
                    "no message from the controller for {:?}", r.peer_timeout
                )));
            }
            m = inbound.message() => {
                last_heard = Instant::now();
                match m {
                    Ok(Some(m)) => match m.body {
                        Some(In::Stop(s)) => {
                            tracing::warn!(
                                "controller: stop ({})",
                                pacer_proto::peer_text(&s.reason)
                            );
                            r.control.stop.cancel();
                        }
                        Some(In::Abort(a)) => {
                            tracing::warn!(
                                "controller: abort ({})",
                                pacer_proto::peer_text(&a.reason)
                            );
                            r.control.abort.cancel();
                        }
                        Some(In::Heartbeat(_) | In::Pong(_)) => {}
                        Some(other) => {
                            tracing::warn!("ignoring {} from the controller while running", other.kind());
                        }
                        None => {
                            tracing::warn!("ignoring a controller message of an unknown kind");
                        }
                    },
                    Ok(None) if finished_sent => return Ok(()),
                    Ok(None) => return Err(End::Retry("the controller closed the stream".into())),
                    // A stream declared lost or replaced ends with ABORTED: reconnect.
                    Err(status) => return Err(classify(&status)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PLAN: &str = r#"
name: roundtrip
target: http://127.0.0.1:9
duration: 2s
variables: { page: 3 }
limits:
  - { name: fleet-wide, limit: 300/min, burst: 5, scope: fleet }
  - { name: per-process, limit: 10/s }
scenarios:
  - { name: a, executor: constant-arrival-rate, rate: 40/s, requests: [{ name: r, path: "/x/{{vars.page}}", headers: { X-Id: "{{uuid}}" } }] }
  - { name: b, executor: ramping-arrival-rate, stages: [{ target: 20/s, duration: 1s }], requests: [{ name: r, path: /y }] }
  - { name: c, executor: per-vu-iterations, vus: 3, iterations: 4, requests: [{ name: r, method: POST, path: /z, json: { n: "{{randInt 1 9}}" } }] }
  - { name: d, executor: shared-iterations, vus: 2, iterations: 9, startTime: 1s, requests: [{ name: r, path: /w }] }
  - { name: e, executor: constant-vus, vus: 2, duration: 1s, requests: [{ name: r, path: /v }] }
  - { name: f, executor: ramping-vus, stages: [{ target: 3, duration: 1s }], requests: [{ name: r, path: /u }] }
thresholds:
  http_req_failed: [{ threshold: "rate<0.1", abortOnFail: true }]
onWorkerLoss: fail
"#;

    fn assign_for(plan: &Plan) -> Assign {
        Assign {
            protocol_version: PROTOCOL_VERSION,
            test_id: "t".into(),
            worker_index: 1,
            weights: vec![1, 2],
            plan_spec_json: serde_json::to_string(&plan.spec).unwrap(),
            plan_source_json: serde_json::to_string(&plan.source).unwrap(),
            ..Default::default()
        }
    }

    /// What the controller sends is the plan it validated: the same executors, limits,
    /// thresholds and policies come out on the worker.
    #[test]
    fn the_resolved_spec_round_trips_through_assign() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let back = plan_from_assign(&assign_for(&plan)).unwrap();
        assert_eq!(back.spec, plan.spec);
        assert_eq!(back.source, plan.source);
        let executors = |p: &Plan| {
            p.scenarios
                .iter()
                .map(|s| s.executor.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(executors(&back), executors(&plan));
        assert_eq!(back.on_worker_loss, plan.on_worker_loss);
        assert_eq!(back.thresholds.len(), 1);
        assert!(back.thresholds[0].abort_on_fail);
    }

    #[test]
    fn a_bad_assign_is_an_error_naming_the_field() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let mut a = assign_for(&plan);
        a.plan_spec_json = "{".into();
        let e = plan_from_assign(&a).unwrap_err().to_string();
        assert!(e.contains("assign.plan_spec_json"), "{e}");
        let mut a = assign_for(&plan);
        a.plan_spec_json = a.plan_spec_json.replace("40/s", "0/s");
        let e = plan_from_assign(&a).unwrap_err().to_string();
        assert!(e.contains("scenarios[0].rate"), "{e}");
    }

    /// A worker pod resolves a LoadTest's plan: never a file, never the operator's own
    /// variables; what the LoadTest provides, yes.
    #[test]
    fn a_pod_worker_reads_no_file_and_no_operator_variable() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let with_target = |target: &str| {
            let mut a = assign_for(&plan);
            a.plan_spec_json = a
                .plan_spec_json
                .replace("http://127.0.0.1:9", &target.replace('"', "\\\""));
            a
        };
        let provided = |name: &str| match name {
            "PACER_SESSION_TOKEN" => Some("session-secret-0123456789".to_string()),
            "PACER_AUTH_A_TOKEN" | "TARGET" => Some("http://127.0.0.1:9".to_string()),
            _ => None,
        };
        // The pod's policy, with this test's environment in place of the process's.
        let pod = |name: &str| {
            (!pacer_plan::refs::is_reserved_env(name))
                .then(|| provided(name))
                .flatten()
        };
        let refs = pacer_plan::Refs::Remote { provided: &pod };
        for target in ["${file:/etc/hostname}", "$${file:a}${file:/etc/hostname}"] {
            let e = plan_from_assign_env(&with_target(target), &refs)
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot be used in a LoadTest"), "{e}");
        }
        let e = plan_from_assign_env(&with_target("${env:PACER_SESSION_TOKEN}"), &refs)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("session-secret"), "{e}");
        assert!(e.contains("PACER_SESSION_TOKEN is not set"), "{e}");
        assert!(plan_from_assign_env(&with_target("${env:TARGET}"), &refs).is_ok());
        assert!(plan_from_assign_env(&with_target("${env:PACER_AUTH_A_TOKEN}"), &refs).is_ok());
    }

    #[test]
    fn fleet_limits_are_split_by_weight_and_worker_limits_kept() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        let shards = Shard::all(&[1, 2]).unwrap();
        let per: Vec<Vec<Limit>> = shards
            .iter()
            .map(|s| shard_limits(&plan.limits, s))
            .collect();
        let fleet_rate: f64 = per.iter().map(|l| l[0].limit.as_per_sec()).sum();
        assert!((fleet_rate - 5.0).abs() < 1e-9, "{fleet_rate}");
        assert!((per[1][0].limit.as_per_sec() - 5.0 * 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(per[0][0].burst + per[1][0].burst, 5);
        for l in &per {
            assert_eq!(l[1].limit, plan.limits[1].limit);
            assert_eq!(l[1].burst, plan.limits[1].burst);
        }
        assert_eq!(
            shard_limits(&plan.limits, &Shard::whole())[0].limit,
            plan.limits[0].limit
        );
    }
}
