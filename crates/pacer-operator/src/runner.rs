//! "The test runner": the part of a LoadTest that is not Kubernetes. The reconciler starts a
//! run, polls it for live numbers, stops it, and takes its result; [`CoordinatorRunner`] does
//! that with a `pacer_controller::Coordinator` per test behind the shared gRPC listener
//! ([`crate::grpc::Routes`]), and the reconcile tests use a fake.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pacer_controller::key::SessionKey;
use pacer_controller::{ControllerConfig, ControllerError, Coordinator, FleetStatus, WorkerState};
use pacer_plan::Plan;
use pacer_stats::{Snapshot, ThresholdResult};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::grpc::Routes;
use crate::run_data::RunData;

/// What a run needs.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub test_id: String,
    /// What the workers' token must match: the token a new test was given, or the SHA-256
    /// kept on the status for a test taken over after a restart.
    pub session: SessionKey,
    pub plan: Arc<Plan>,
    pub workers: u32,
    /// Give up when not every worker is ready after this long (a resumed test: when no worker
    /// came back within it).
    pub wait_for_workers: Duration,
    /// The test had started under a previous operator: only workers that resume it are
    /// admitted (`ControllerConfig::resume_only`).
    pub resume_only: bool,
}

/// A worker's health as the controller sees it.
pub use pacer_controller::WorkerView;

/// Live numbers of a run.
#[derive(Clone, Debug, Default)]
pub struct LiveStats {
    /// The common start has passed.
    pub started: bool,
    pub elapsed: Duration,
    pub planned: Duration,
    /// Workers with a stream open to the controller.
    pub connected: u32,
    pub lost: u32,
    pub requests: u64,
    /// Requests per second since the previous [`RunHandle::live`].
    pub rps: f64,
    /// Milliseconds, since the start.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub throttled: u64,
    pub throttled_secs: f64,
    pub thresholds: Vec<ThresholdResult>,
    pub workers: Vec<WorkerView>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum RunEnd {
    /// The workers ran the plan (their results, whatever the verdict).
    Finished(Box<RunResult>),
    /// Not every worker connected in time.
    WorkersMissing {
        expected: u32,
        connected: u32,
        missing: Vec<u32>,
        message: String,
    },
    /// Stopped before the start (suspend, deletion).
    Stopped(String),
    /// A test taken over after a restart: no worker came back to resume it within
    /// [`RunSpec::wait_for_workers`].
    NotResumed { workers: u32, waited: Duration },
    /// Anything else.
    Error(String),
}

#[derive(Clone, Debug)]
pub struct RunResult {
    pub passed: bool,
    /// An abortOnFail threshold stopped the fleet.
    pub abort_reason: Option<String>,
    /// The run failed as a whole (a worker lost under onWorkerLoss: fail, a worker that could
    /// not run its shard).
    pub failure: Option<String>,
    /// Stopped before the plan's end (suspend, deletion).
    pub stop_reason: Option<String>,
    pub stats: LiveStats,
    /// The summary as text and JSON (the report ConfigMap).
    pub text: String,
    pub json: String,
}

/// One running test.
pub trait RunHandle: Send + Sync {
    /// Numbers now (each call also advances the RPS interval).
    fn live(&self) -> LiveStats;
    /// Ask every worker to stop gracefully (in-flight iterations get their gracefulStop).
    fn stop(&self, reason: &str);
    /// Interrupt every worker now.
    fn abort(&self, reason: &str);
    /// `Some` once the run has ended.
    fn end(&self) -> Option<RunEnd>;
    /// What the last [`RunHandle::live`] took from the merged snapshot besides its numbers
    /// (for `/metrics`, which merges nothing itself).
    fn figures(&self) -> Option<Arc<crate::loadtest_metrics::Figures>> {
        None
    }
    /// Once a run has finished: its results as data, for the report `pacer report` renders
    /// ([`RunData`]; `None` for a run that did not finish, or a runner without them).
    fn run_data(&self) -> Option<Arc<RunData>> {
        None
    }
}

/// Why a run could not be started (nothing was started then).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The coordinator refused its configuration (a session token too short, a bad plan).
    #[error("cannot set up the test's coordinator")]
    Coordinator(#[source] ControllerError),
    /// Another runner's reason (a fake's, in tests).
    #[error("the test runner refused the run")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Starts runs.
pub trait TestRunner: Send + Sync + 'static {
    fn start(&self, spec: RunSpec) -> Result<Arc<dyn RunHandle>, StartError>;
}

/// The real runner: a `Coordinator` per test, reachable through the shared gRPC listener.
pub struct CoordinatorRunner {
    routes: Routes,
}

impl CoordinatorRunner {
    pub fn new(routes: Routes) -> Self {
        Self { routes }
    }
}

impl TestRunner for CoordinatorRunner {
    fn start(&self, spec: RunSpec) -> Result<Arc<dyn RunHandle>, StartError> {
        let mut cfg = ControllerConfig::new(spec.test_id.clone(), "", spec.workers.max(1));
        cfg.session = spec.session;
        cfg.resume_only = spec.resume_only;
        cfg.wait_for_workers = spec.wait_for_workers;
        // The fleet's `scope: fleet` limits as one budget leased to the pods (workers given a
        // Redis share through it instead); tokens are not served: the pods, not this
        // process, hold the LoadTest's credentials (docs/distributed.md).
        cfg.serve_limits = true;
        let coordinator =
            Coordinator::new(spec.plan.clone(), cfg).map_err(StartError::Coordinator)?;
        self.routes.insert(&spec.test_id, &coordinator);
        let handle = Arc::new(CoordinatorRun {
            coordinator: coordinator.clone(),
            plan: spec.plan.clone(),
            previous: Mutex::new(None),
            end: Mutex::new(None),
            figures: Mutex::new(None),
            data: Mutex::new(None),
        });
        let routes = self.routes.clone();
        let h = handle.clone();
        let test_id = spec.test_id;
        let resume_only = spec.resume_only;
        tokio::spawn(async move {
            let result = coordinator.run().await;
            let end = match result {
                Ok(outcome) => {
                    *h.data.lock() = Some(Arc::new(RunData::from_outcome(&h.plan, &outcome)));
                    let summary = outcome.summary(&h.plan);
                    let mut stats = stats_of(
                        &h.plan,
                        &outcome.merged,
                        outcome.elapsed,
                        &outcome.workers,
                        true,
                    );
                    // At the end "connected" counts the workers that delivered their results.
                    stats.connected = outcome
                        .workers
                        .iter()
                        .filter(|w| w.state == WorkerState::Finished)
                        .count() as u32;
                    stats.rps = if outcome.elapsed > Duration::ZERO {
                        stats.requests as f64 / outcome.elapsed.as_secs_f64()
                    } else {
                        0.0
                    };
                    let stop_reason = coordinator.status().stop_reason;
                    RunEnd::Finished(Box::new(RunResult {
                        passed: summary.passed && outcome.abort_reason.is_none(),
                        abort_reason: outcome.abort_reason.clone(),
                        failure: outcome.failure.clone(),
                        stop_reason,
                        text: outcome.render_text(&summary, false),
                        json: outcome.render_json(&summary),
                        stats,
                    }))
                }
                Err(ControllerError::WorkersMissing {
                    expected, waited, ..
                }) if resume_only => RunEnd::NotResumed {
                    workers: expected as u32,
                    waited,
                },
                Err(ControllerError::WorkersMissing {
                    expected,
                    connected,
                    missing,
                    ..
                }) => RunEnd::WorkersMissing {
                    expected: expected as u32,
                    connected: connected as u32,
                    missing,
                    message: result_message(&h.coordinator),
                },
                Err(ControllerError::StoppedBeforeStart(reason)) => RunEnd::Stopped(reason),
                Err(e) => RunEnd::Error(e.to_string()),
            };
            *h.end.lock() = Some(end);
            // Let the last streams see their close before the route goes.
            tokio::time::sleep(Duration::from_secs(2)).await;
            routes.remove(&test_id);
        });
        Ok(handle)
    }
}

fn result_message(c: &Coordinator) -> String {
    let s = c.status();
    s.stop_reason.unwrap_or_default()
}

struct CoordinatorRun {
    coordinator: Coordinator,
    plan: Arc<Plan>,
    previous: Mutex<Option<(Instant, u64)>>,
    end: Mutex<Option<RunEnd>>,
    figures: Mutex<Option<Arc<crate::loadtest_metrics::Figures>>>,
    /// The finished run's data (set before `end`).
    data: Mutex<Option<Arc<RunData>>>,
}

impl RunHandle for CoordinatorRun {
    fn live(&self) -> LiveStats {
        let status: FleetStatus = self.coordinator.status();
        let mut stats = stats_of(
            &self.plan,
            &status.merged,
            status.elapsed,
            &status.workers,
            status.started,
        );
        let now = Instant::now();
        let mut prev = self.previous.lock();
        stats.rps = match *prev {
            Some((at, requests)) if now > at => {
                stats.requests.saturating_sub(requests) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        *prev = Some((now, stats.requests));
        *self.figures.lock() = Some(Arc::new(crate::loadtest_metrics::figures_of(
            &self.plan,
            &status.merged,
        )));
        stats
    }

    fn stop(&self, reason: &str) {
        self.coordinator.stop(reason);
    }

    fn abort(&self, reason: &str) {
        self.coordinator.abort(reason);
    }

    fn end(&self) -> Option<RunEnd> {
        self.end.lock().clone()
    }

    fn figures(&self) -> Option<Arc<crate::loadtest_metrics::Figures>> {
        self.figures.lock().clone()
    }

    fn run_data(&self) -> Option<Arc<RunData>> {
        self.data.lock().clone()
    }
}

/// The numbers of a merged snapshot.
pub fn stats_of(
    plan: &Plan,
    merged: &Snapshot,
    elapsed: Duration,
    workers: &[WorkerView],
    started: bool,
) -> LiveStats {
    let total = merged.total();
    let ms = |p: f64| total.duration.percentile(p).map(|us| us as f64 / 1000.0);
    let throttled_us = total
        .limiter_wait_us_sum
        .saturating_add(total.paused_us_sum);
    LiveStats {
        started,
        elapsed,
        planned: plan.planned_duration(),
        connected: workers
            .iter()
            .filter(|w| {
                matches!(
                    w.state,
                    WorkerState::Assigned | WorkerState::Ready | WorkerState::Running
                )
            })
            .count() as u32,
        lost: workers
            .iter()
            .filter(|w| w.state == WorkerState::Lost)
            .count() as u32,
        requests: total.attempts,
        rps: 0.0,
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        errors: total.failed,
        error_rate: (total.requests > 0).then(|| total.failed as f64 / total.requests as f64),
        throttled: total.throttled,
        throttled_secs: throttled_us as f64 / 1e6,
        thresholds: pacer_stats::evaluate(&plan.thresholds, merged, elapsed),
        workers: workers.to_vec(),
    }
}

/// Runs started by a [`FakeRunner`], by test id.
pub type FakeRuns = Arc<Mutex<HashMap<String, Arc<FakeRun>>>>;

/// A runner for tests: every run is a [`FakeRun`] whose numbers and end the test sets.
#[derive(Clone, Default)]
pub struct FakeRunner {
    pub runs: FakeRuns,
    /// Make `start` fail with this message.
    pub fail_start: Arc<Mutex<Option<String>>>,
}

impl FakeRunner {
    pub fn run(&self, test_id: &str) -> Option<Arc<FakeRun>> {
        self.runs.lock().get(test_id).cloned()
    }
}

impl TestRunner for FakeRunner {
    fn start(&self, spec: RunSpec) -> Result<Arc<dyn RunHandle>, StartError> {
        if let Some(e) = self.fail_start.lock().clone() {
            return Err(StartError::Refused(e.into()));
        }
        let run = Arc::new(FakeRun {
            spec: spec.clone(),
            stats: Mutex::new(LiveStats {
                planned: spec.plan.planned_duration(),
                ..LiveStats::default()
            }),
            end: Mutex::new(None),
            stopped: Mutex::new(None),
        });
        self.runs.lock().insert(spec.test_id.clone(), run.clone());
        Ok(run)
    }
}

/// A run whose state the test sets.
pub struct FakeRun {
    pub spec: RunSpec,
    pub stats: Mutex<LiveStats>,
    pub end: Mutex<Option<RunEnd>>,
    /// The reason of the last stop or abort asked for.
    pub stopped: Mutex<Option<String>>,
}

impl RunHandle for FakeRun {
    fn live(&self) -> LiveStats {
        self.stats.lock().clone()
    }

    fn stop(&self, reason: &str) {
        *self.stopped.lock() = Some(reason.to_string());
    }

    fn abort(&self, reason: &str) {
        *self.stopped.lock() = Some(reason.to_string());
    }

    fn end(&self) -> Option<RunEnd> {
        self.end.lock().clone()
    }
}
