//! Executes a pacer plan (or a worker's shard of one): executors, HTTP, templates,
//! checks, retries and recording. It knows nothing about gRPC or Kubernetes: the limiter, the
//! token source and the stats recorder come in through [`Deps`].

// The surface is what `pacer run`, a worker and the tests use: the items below and `setup`.
// Everything else is the engine's own, and this lint keeps it so.
#![warn(unreachable_pub)]

mod auth;
mod evidence;
mod executor;
mod feed;
mod h1;
mod http;
mod iteration;
mod json_reads;
mod pool;
mod prepare;
mod ratelimit_headers;
mod render;
mod retry;
mod send;
pub mod setup;

use std::sync::Arc;
use std::time::Duration;

use pacer_limiter::{Limiter, TokenSource};
use pacer_plan::Plan;
use pacer_stats::Recorder;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use feed::{DataExhausted, DataMissing};
pub use http::{ClientError, HttpClient, Outgoing, Response, TransportError};
pub use iteration::WORKER_HEADER;

/// What the engine plugs into.
pub struct Deps {
    pub limiter: Arc<dyn Limiter>,
    /// `None`: this process fetches and caches its own tokens (the engine's OAuth2 token cache).
    pub tokens: Option<Arc<dyn TokenSource>>,
    pub recorder: Arc<Recorder>,
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// This process's worker index (`{{worker}}`, the `X-Pacer-Worker` header).
    pub worker: u32,
    /// Send `X-Pacer-Worker: <index>` with every request.
    pub send_worker_header: bool,
    /// Run only this worker's part of the plan (`None`: the whole plan). See
    /// [`pacer_plan::shard`]: arrivals and VUs keep their global numbers and times.
    pub shard: Option<pacer_plan::Shard>,
    /// The test's start instant (time zero of every scenario's `startTime` and schedule);
    /// `None`: when `run` is called. A worker passes a gate for the fleet's common start, so
    /// its HTTP client is built while it waits and setup does not delay the start.
    pub start: Option<StartGate>,
}

/// A start instant that may not be known yet when [`run`] is called: the engine builds its
/// client, says so through the [`StartHandle`], then waits for the instant.
#[derive(Clone, Debug)]
pub struct StartGate {
    at: tokio::sync::watch::Receiver<Option<Instant>>,
    prepared: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The other side of a [`StartGate`]: learn that the engine is prepared, then open the gate.
#[derive(Debug)]
pub struct StartHandle {
    at: tokio::sync::watch::Sender<Option<Instant>>,
    prepared: tokio::sync::watch::Receiver<bool>,
}

impl StartGate {
    /// A closed gate (dropping the handle: never start).
    pub fn new() -> (StartHandle, StartGate) {
        let (at_tx, at) = tokio::sync::watch::channel(None);
        let (prepared, prepared_rx) = tokio::sync::watch::channel(false);
        (
            StartHandle {
                at: at_tx,
                prepared: prepared_rx,
            },
            StartGate {
                at,
                prepared: Arc::new(prepared),
            },
        )
    }

    /// A known instant.
    pub fn at(at: Instant) -> StartGate {
        let (handle, gate) = Self::new();
        let _ = handle.at.send(Some(at));
        gate
    }

    /// Say the run is prepared, then wait for the start instant (`None`: it never comes).
    async fn instant(mut self) -> Option<Instant> {
        let _ = self.prepared.send(true);
        self.at
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| *v)
    }
}

impl StartHandle {
    /// Wait until the engine has built everything and waits at the gate (false: it ended).
    pub async fn prepared(&mut self) -> bool {
        self.prepared.wait_for(|p| *p).await.is_ok()
    }

    /// Open the gate: the run's time zero is `at`.
    pub fn start_at(&self, at: Instant) {
        let _ = self.at.send(Some(at));
    }
}

/// How a caller stops a run early.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// Graceful: start no new iteration; in-flight ones get their scenario's `gracefulStop`.
    pub stop: CancellationToken,
    /// Hard: interrupt everything now.
    pub abort: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Client(#[from] http::ClientError),
    #[error(transparent)]
    Data(#[from] feed::DataMissing),
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub elapsed: Duration,
    /// The run was stopped (gracefully or hard) before its plan ended.
    pub stopped_early: bool,
    /// A `unique` data source ran out of rows, which stopped the run: the plan did not run as
    /// written (a caller fails the run and says why).
    pub data_exhausted: Option<DataExhausted>,
}

/// The most idle connections kept per host when the plan does not say (`maxIdlePerHost`): the
/// run's concurrency up to this, so a plan with a huge `maxInFlight` does not ask the pool to
/// keep that many.
const POOL_HINT_MAX: usize = 4096;

/// How many connections a run may use at once: the sum over its scenarios of the iterations
/// each may have in flight (`maxInFlight`, or its most VUs), up to [`POOL_HINT_MAX`].
fn pool_hint(plan: &Plan) -> usize {
    plan.scenarios
        .iter()
        .map(|s| match &s.executor {
            pacer_plan::Executor::ConstantArrivalRate { max_in_flight, .. }
            | pacer_plan::Executor::RampingArrivalRate { max_in_flight, .. } => {
                *max_in_flight as usize
            }
            pacer_plan::Executor::ConstantVus { vus, .. }
            | pacer_plan::Executor::PerVuIterations { vus, .. }
            | pacer_plan::Executor::SharedIterations { vus, .. } => *vus as usize,
            pacer_plan::Executor::RampingVus {
                stages, start_vus, ..
            } => stages
                .iter()
                .map(|s| s.target)
                .max()
                .unwrap_or(0)
                .max(*start_vus) as usize,
        })
        .sum::<usize>()
        .min(POOL_HINT_MAX)
}

/// The run's time zero: now without a gate; else the gate's instant, once it is known and has
/// come (a stop or abort while it comes ends the wait early, and the run sees it stopped).
/// `None`: stopped or aborted before the instant was known, so the run never starts.
async fn time_zero(gate: Option<StartGate>, control: &RunControl) -> Option<Instant> {
    let Some(gate) = gate else {
        return Some(Instant::now());
    };
    let at = tokio::select! {
        at = gate.instant() => at,
        _ = control.stop.cancelled() => None,
        _ = control.abort.cancelled() => None,
    }?;
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        _ = control.stop.cancelled() => {}
        _ = control.abort.cancelled() => {}
    }
    Some(at)
}

/// Run a whole plan to its end (or until stopped). Records into `deps.recorder`.
pub async fn run(
    plan: Arc<Plan>,
    deps: Deps,
    opts: RunOptions,
    control: RunControl,
) -> Result<RunReport, EngineError> {
    let shard = Arc::new(opts.shard.clone().unwrap_or_default());
    let client = http::HttpClient::new(&plan.http, pool_hint(&plan))?;
    // The run's own graceful stop: the caller's, or a source of test data running out.
    let stop_all = control.stop.child_token();
    let tokens = match deps.tokens {
        Some(t) => t,
        None => Arc::new(auth::Tokens::from_plan(
            &plan,
            http::build_token_client(&plan.http)?,
            deps.recorder.clone(),
        )),
    };
    let shared = Arc::new(iteration::Shared::new(
        plan.clone(),
        client,
        deps.limiter,
        tokens,
        deps.recorder,
        &opts,
        RunControl {
            stop: stop_all.clone(),
            abort: control.abort.clone(),
        },
    )?);
    let Some(t0) = time_zero(opts.start.clone(), &control).await else {
        return Ok(RunReport {
            elapsed: Duration::ZERO,
            stopped_early: true,
            data_exhausted: None,
        });
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, sc) in plan.scenarios.iter().enumerate() {
        let start = t0 + sc.start_time;
        let planned_end = start + sc.executor.max_duration();
        let hard = control.abort.child_token();
        let run = Arc::new(executor::ScenarioRun {
            shared: shared.clone(),
            scenario: i,
            shard: shard.clone(),
            start,
            stop: stop_all.child_token(),
            hard: hard.clone(),
        });
        let graceful = sc.graceful_stop;
        let stop = stop_all.clone();
        // Supervisor: interrupts in-flight iterations `gracefulStop` after the scenario's end,
        // or after a graceful stop request.
        let supervisor = tokio::spawn({
            let hard = hard.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(planned_end + graceful) => {}
                    _ = stop.cancelled() => tokio::time::sleep(graceful).await,
                    _ = hard.cancelled() => {}
                }
                hard.cancel();
            }
        });
        let executor = sc.executor.clone();
        tasks.spawn(async move {
            if run.sleep_until_start().await {
                executor::run(run.clone(), &executor).await;
            }
            supervisor.abort();
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(RunReport {
        elapsed: t0.elapsed(),
        stopped_early: stop_all.is_cancelled() || control.abort.is_cancelled(),
        data_exhausted: shared.data_out.get().cloned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use pacer_plan::{Refs, load_str};

    use super::*;

    fn plan(scenarios: &str) -> Plan {
        let yaml = format!("name: t\ntarget: http://127.0.0.1:9\nscenarios:\n{scenarios}");
        load_str(&yaml, "plan.yaml", &Refs::default()).unwrap()
    }

    #[test]
    fn the_pool_hint_sums_what_each_scenario_may_have_in_flight_up_to_the_cap() {
        let p = plan(concat!(
            "  - { name: a, executor: constant-arrival-rate, rate: 10/s, duration: 1s, maxInFlight: 7, requests: [{ name: r, path: / }] }\n",
            "  - { name: b, executor: constant-vus, vus: 3, duration: 1s, requests: [{ name: r, path: / }] }\n",
            "  - { name: c, executor: ramping-vus, startVUs: 2, stages: [{ target: 5, duration: 1s }, { target: 1, duration: 1s }], requests: [{ name: r, path: / }] }\n",
        ));
        assert_eq!(pool_hint(&p), 7 + 3 + 5);
        let huge = plan(
            "  - { name: a, executor: constant-arrival-rate, rate: 10/s, duration: 1s, maxInFlight: 1000000, requests: [{ name: r, path: / }] }\n",
        );
        assert_eq!(pool_hint(&huge), POOL_HINT_MAX);
    }
}
