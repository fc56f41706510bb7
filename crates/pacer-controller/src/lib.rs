//! The coordinator of a distributed pacer run: workers dial it over gRPC
//! (`proto/pacer/v1/coordinator.proto`), it hands each one its [`Shard`] of the plan, starts
//! them at one instant, keeps every worker's latest cumulative snapshot, merges them exactly,
//! evaluates thresholds on the fleet (stopping every worker on an `abortOnFail`), notices lost
//! workers and, at the end, reduces everything to the fleet's summary.
//!
//! Nothing here knows how workers are started: `pacer run --workers N` spawns processes,
//! `pacer controller` waits for machines, and the Kubernetes operator (pacer-operator)
//! creates pods. Each of them builds a [`Coordinator`], serves [`Coordinator::service`] on a
//! listener and awaits [`Coordinator::run`].
//!
//! - [`fleet`]: the per-worker state, changed only through its methods (admit, reports,
//!   finish, halt, fail, end), and the exact merge;
//! - [`listener`]: the gRPC listener before authentication (limits, the Hello gate);
//! - [`session`]: one gRPC stream per worker, checked message by message;
//! - [`report`]: the fleet outcome, the per-worker table, progress lines.

pub mod fleet;
pub mod key;
pub mod listener;
pub mod report;
pub mod served;
pub mod session;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pacer_plan::shard::{Shard, ShardError};
use pacer_plan::{Plan, spec::WorkerLoss};
use pacer_proto::v1::coordinator_server::CoordinatorServer;
use pacer_proto::{ControllerMessage, Hello, PROTOCOL_VERSION, controller_message};
use pacer_stats::{Layout, Snapshot};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use fleet::Halt;
pub use fleet::WorkerState;
pub use report::{FleetOutcome, FleetStatus, ProgressTracker, WorkerView};

/// How long the controller waits and listens; defaults in [`ControllerConfig::new`].
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Names the test; workers that send another id are refused.
    pub test_id: String,
    /// What the per-test secret every worker presents in its Hello must match: the token (at
    /// least [`pacer_proto::MIN_SESSION_TOKEN_BYTES`]; [`Coordinator::new`] refuses a shorter
    /// one) or, for a coordinator rebuilt after a restart, its SHA-256 ([`key::SessionKey`]).
    pub session: key::SessionKey,
    /// One weight per worker (`len` = the number of workers).
    pub weights: Vec<u32>,
    /// Tell workers to send `X-Pacer-Worker: <index>` with every request.
    pub send_worker_header: bool,
    /// Give up when not every worker is ready after this long (default 60 s).
    pub wait_for_workers: Duration,
    /// From "every worker is ready" to the common start (default 250 ms): long enough for the
    /// Start messages to arrive everywhere.
    pub start_delay: Duration,
    /// A worker silent for this long is lost (default 5 s: five missed heartbeats).
    pub lost_after: Duration,
    /// Heartbeats both ways (default 1 s).
    pub heartbeat_interval: Duration,
    /// Cumulative reports from each worker (default 1 s).
    pub report_interval: Duration,
    /// A new stream must send Hello within this (default 10 s).
    pub hello_timeout: Duration,
    /// Serve the plan's `scope: fleet` limits to the workers as leases of one budget (when no
    /// Redis shares them; default false: workers split them by weight).
    pub serve_limits: bool,
    /// This coordinator takes over a test whose workers had already started (its controller
    /// restarted): only resuming workers are admitted, the first one's elapsed time sets the
    /// common start, and a fresh Hello (a worker process that lost its shard) is refused, since
    /// starting it would send its shard's load a second time. [`ControllerConfig::wait_for_workers`]
    /// then bounds the wait for the first worker to come back (default false).
    pub resume_only: bool,
}

impl ControllerConfig {
    pub fn new(test_id: impl Into<String>, session_token: impl Into<String>, workers: u32) -> Self {
        Self {
            test_id: test_id.into(),
            session: key::SessionKey::Token(session_token.into()),
            weights: vec![1; workers as usize],
            send_worker_header: false,
            wait_for_workers: Duration::from_secs(60),
            start_delay: Duration::from_millis(250),
            lost_after: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(1),
            hello_timeout: Duration::from_secs(10),
            serve_limits: false,
            resume_only: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid split")]
    Split(#[from] ShardError),
    /// The plan did not serialize for the Assign message.
    #[error("the plan cannot be sent to workers")]
    Plan(#[source] serde_json::Error),
    #[error(
        "gave up after {waited:?}: {ready} of {expected} workers ready ({connected} connected); missing worker indices {missing:?}"
    )]
    WorkersMissing {
        expected: usize,
        ready: usize,
        connected: usize,
        missing: Vec<u32>,
        waited: Duration,
    },
    #[error("worker {index} cannot run its shard: {reason}")]
    WorkerFailed { index: u32, reason: String },
    #[error("stopped before the workers started: {0}")]
    StoppedBeforeStart(String),
    #[error("cannot serve gRPC")]
    Serve(#[source] tonic::transport::Error),
    #[error(
        "the session token is {0} bytes: at least {min} are required (a random one of 32 hex characters is generated when none is given)",
        min = pacer_proto::MIN_SESSION_TOKEN_BYTES
    )]
    SessionTokenTooShort(usize),
}

/// How often the run loop looks at the fleet when no message wakes it: the deadlines it keeps
/// (the wait for workers, a worker's loss timeout) are met within this, and a look is a lock
/// and a pass over the slots.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Past the plan's longest run (gracefulStop included) and two loss timeouts, how long the
/// run still waits for workers that keep talking but do not finish before it counts them as
/// lost. A backstop, not a measurement: workers end by themselves, and this only has to be
/// generous next to a final report's travel (milliseconds) while still ending a run whose
/// workers never finish.
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// The coordinator: shared by the gRPC service (one task per worker stream) and the run loop.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub plan: Arc<Plan>,
    pub plan_spec_json: String,
    pub plan_source_json: String,
    pub layout: Layout,
    pub cfg: ControllerConfig,
    pub shards: Vec<Shard>,
    pub fleet: Mutex<fleet::Fleet>,
    pub changed: Notify,
    pub next_conn: AtomicU64,
    /// The controller's own time origin for heartbeat timestamps.
    pub epoch: Instant,
    /// The budget and tokens served to the workers (no Redis), if any.
    pub(crate) served: Option<served::Served>,
}

impl Inner {
    pub fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

impl Coordinator {
    pub fn new(plan: Arc<Plan>, cfg: ControllerConfig) -> Result<Self, ControllerError> {
        Self::serving(plan, cfg, None)
    }

    /// [`Coordinator::new`], and the tokens of the credentials `tokens` fetches are fetched
    /// here once and handed to every worker over its session (with
    /// [`ControllerConfig::serve_limits`], the fleet limits are served too): a fleet without
    /// Redis (docs/distributed.md, "Tokens and limits without Redis").
    pub fn serving(
        plan: Arc<Plan>,
        cfg: ControllerConfig,
        tokens: Option<served::TokenService>,
    ) -> Result<Self, ControllerError> {
        if let Some(len) = cfg.session.token_len()
            && len < pacer_proto::MIN_SESSION_TOKEN_BYTES
        {
            return Err(ControllerError::SessionTokenTooShort(len));
        }
        let shards = Shard::all(&cfg.weights)?;
        let plan_spec_json = serde_json::to_string(&plan.spec).map_err(ControllerError::Plan)?;
        let plan_source_json =
            serde_json::to_string(&plan.source).map_err(ControllerError::Plan)?;
        let layout = Layout::of(&plan);
        let mut fleet = fleet::Fleet::new(cfg.weights.len()).with_series(
            pacer_report::FleetSeries::new(
                &layout,
                pacer_report::PlannedRate::from_plan(&plan),
                cfg.weights.len(),
            )
            .for_length(plan.max_duration()),
        );
        if cfg.resume_only {
            fleet.only_resuming();
        }
        let served = served::Served::new(&plan, cfg.serve_limits, tokens);
        Ok(Self {
            inner: Arc::new(Inner {
                plan,
                plan_spec_json,
                plan_source_json,
                layout,
                cfg,
                shards,
                fleet: Mutex::new(fleet),
                changed: Notify::new(),
                next_conn: AtomicU64::new(1),
                epoch: Instant::now(),
                served,
            }),
        })
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.inner.plan
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.inner.cfg
    }

    /// The tonic service of this test (message sizes capped both ways at the full
    /// [`pacer_proto::MAX_MESSAGE_BYTES`]). Mount it behind [`listener::Gate`] (as
    /// [`Coordinator::serve`] does), which checks each stream's Hello before this decoder
    /// reads anything larger.
    pub fn service(&self) -> CoordinatorServer<session::SessionService> {
        CoordinatorServer::new(session::SessionService {
            inner: self.inner.clone(),
        })
        .max_decoding_message_size(pacer_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pacer_proto::MAX_MESSAGE_BYTES)
    }

    /// Serve this test on `listener`, behind the gate and its limits ([`listener`]), in
    /// plaintext (loopback and tests: [`listener::Transport::InsecurePlaintext`]), until
    /// `shutdown` is cancelled.
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), ControllerError>> {
        self.serve_with(listener, listener::Transport::InsecurePlaintext, shutdown)
    }

    /// Serve this test on `listener`, behind the gate and its limits ([`listener`]), over
    /// `transport` (TLS: [`tls::ServerTls`]), until `shutdown` is cancelled.
    pub fn serve_with(
        &self,
        listener: tokio::net::TcpListener,
        transport: listener::Transport,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), ControllerError>> {
        let limits = self.listener_limits();
        let this = self.clone();
        tokio::spawn(async move {
            listener::serve_with(this, listener, limits, transport, shutdown)
                .await
                .map_err(ControllerError::Serve)
        })
    }

    /// The listener's limits for this test alone: the defaults (the connection limit grows
    /// with the fleet: [`listener::Sessions::max_connections`]) and the configured Hello
    /// timeout.
    pub fn listener_limits(&self) -> listener::ListenerLimits {
        listener::ListenerLimits {
            hello_timeout: self.inner.cfg.hello_timeout,
            ..Default::default()
        }
    }

    /// Check a Hello before anything else is read from its stream: the protocol version, the
    /// session token (in constant time) and the test id, each refusal naming the field.
    pub fn check_hello(&self, h: &Hello) -> Result<(), tonic::Status> {
        check_hello(&self.inner.cfg, h)
    }

    /// Ask every worker to stop gracefully (Ctrl-C): no new iterations, in-flight ones get
    /// their gracefulStop. Before the start, the run ends without starting.
    pub fn stop(&self, reason: &str) {
        self.halt(Halt::Stop, reason);
    }

    /// Interrupt every worker now.
    pub fn abort(&self, reason: &str) {
        self.halt(Halt::Abort, reason);
    }

    /// [`Coordinator::stop`] and [`Coordinator::abort`]: the first reason is the run's stop
    /// reason either way.
    fn halt(&self, how: Halt, reason: &str) {
        self.inner.fleet.lock().halt(how, reason);
        self.inner.changed.notify_waiters();
    }

    /// What the fleet looks like now (for progress displays).
    pub fn status(&self) -> FleetStatus {
        let mut f = self.inner.fleet.lock();
        f.status(&self.inner)
    }

    /// Wait for every worker, start them together, watch them until each has finished or is
    /// lost, and return the fleet's results.
    pub async fn run(&self) -> Result<FleetOutcome, ControllerError> {
        self.wait_and_start().await?;
        self.watch().await;
        if let Some(s) = &self.inner.served {
            s.shutdown();
        }
        let mut f = self.inner.fleet.lock();
        f.end(None);
        Ok(f.outcome(&self.inner, Instant::now()))
    }

    async fn wait_and_start(&self) -> Result<(), ControllerError> {
        let inner = &self.inner;
        let began = Instant::now();
        let deadline = began + inner.cfg.wait_for_workers;
        let n = inner.cfg.weights.len();
        tracing::info!(
            "waiting for {n} workers (test {}, up to {:?})",
            inner.cfg.test_id,
            inner.cfg.wait_for_workers
        );
        loop {
            let notified = inner.changed.notified();
            {
                let mut f = inner.fleet.lock();
                if f.started() {
                    // A worker resumed a running test (this controller restarted).
                    return Ok(());
                }
                if let Some(reason) = f.stop_reason() {
                    return Err(ControllerError::StoppedBeforeStart(reason.to_string()));
                }
                if let Some((index, reason)) = f.first_failed() {
                    let err = ControllerError::WorkerFailed { index, reason };
                    f.end(Some(&err.to_string()));
                    return Err(err);
                }
                if f.all_ready() {
                    f.start_all(inner, Instant::now() + inner.cfg.start_delay);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let fleet::Readiness {
                        ready,
                        connected,
                        missing,
                    } = f.readiness();
                    f.end(Some("not every worker became ready in time"));
                    return Err(ControllerError::WorkersMissing {
                        expected: n,
                        ready,
                        connected,
                        missing,
                        waited: began.elapsed(),
                    });
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    async fn watch(&self) {
        let inner = &self.inner;
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let notified = inner.changed.notified();
            {
                let mut f = inner.fleet.lock();
                let now = Instant::now();
                let elapsed = f.elapsed(now);
                for lost in f.mark_lost(inner, now) {
                    tracing::warn!("{lost}");
                    if inner.plan.on_worker_loss == WorkerLoss::Fail {
                        // The first loss fails the run; later ones are only logged.
                        f.fail(format!("{lost}; the plan says onWorkerLoss: fail"));
                    }
                }
                // Unmergeable workers marked failed, abortOnFail on the merge (fleet.rs).
                f.judge(inner, now, elapsed);
                // Workers end by themselves; this bounds a fleet whose workers keep talking
                // but never finish (gracefulStop is included in max_duration).
                let limit = inner.plan.max_duration() + inner.cfg.lost_after * 2 + FINISH_GRACE;
                if elapsed > limit {
                    f.give_up_unfinished(now, elapsed);
                }
                if f.all_done() {
                    return;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tick.tick() => {}
            }
        }
    }
}

/// [`Coordinator::check_hello`], for the session's own check of the same Hello.
pub(crate) fn check_hello(cfg: &ControllerConfig, h: &Hello) -> Result<(), tonic::Status> {
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(tonic::Status::failed_precondition(format!(
            "hello.protocol_version: {} is not supported: this controller speaks protocol {PROTOCOL_VERSION} (pacer {})",
            h.protocol_version,
            env!("CARGO_PKG_VERSION")
        )));
    }
    if !cfg.session.accepts(&h.session_token) {
        return Err(tonic::Status::unauthenticated(
            "hello.session_token: not this test's session token",
        ));
    }
    if !h.test_id.is_empty() && h.test_id != cfg.test_id {
        return Err(tonic::Status::failed_precondition(format!(
            "hello.test_id: {:?} is not the test this controller runs ({:?})",
            pacer_proto::peer_text(&h.test_id),
            cfg.test_id
        )));
    }
    Ok(())
}

/// A message for a worker's stream.
pub(crate) fn msg(body: controller_message::Body) -> Result<ControllerMessage, tonic::Status> {
    Ok(ControllerMessage { body: Some(body) })
}

/// Merge cumulative snapshots exactly (what the controller does with its workers' latest
/// reports): the result is as if one recorder had recorded everything.
pub fn merge_all<'a>(
    layout: &Layout,
    snapshots: impl IntoIterator<Item = &'a Snapshot>,
) -> Result<Snapshot, pacer_stats::StatsError> {
    let mut merged = Snapshot::empty(layout);
    for s in snapshots {
        merged.merge(s)?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn plan() -> Arc<Plan> {
        let text = "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: a, path: /a}]}\n";
        Arc::new(pacer_plan::load_str(text, "plan.yaml", &Default::default()).expect("plan"))
    }

    /// A refused split keeps the shard error as its source and says it once: the CLI prints
    /// the chain (`invalid split: weights[1]: must be at least 1`).
    #[test]
    fn a_bad_split_keeps_its_cause() {
        let mut cfg = ControllerConfig::new("t", "0123456789abcdef", 2);
        cfg.weights = vec![1, 0];
        let Err(e) = Coordinator::new(plan(), cfg) else {
            panic!("a zero weight is refused");
        };
        assert!(matches!(
            e,
            ControllerError::Split(ShardError::ZeroWeight(1))
        ));
        let source = e
            .source()
            .expect("the shard error is the source")
            .to_string();
        assert_eq!(source, "weights[1]: must be at least 1");
        assert!(!e.to_string().contains(&source), "{e}");
    }

    #[test]
    fn same_secret_compares_whole_tokens() {
        let key = key::SessionKey::from("0123456789abcdef");
        assert!(key.accepts("0123456789abcdef"));
        assert!(!key.accepts("0123456789abcdeX"));
        assert!(!key.accepts("0123456789abcde"));
    }
}
