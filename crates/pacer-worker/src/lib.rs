//! A pacer worker: dials the controller (`proto/pacer/v1/coordinator.proto`), receives the
//! plan and its [`Shard`](pacer_plan::Shard), measures the round trip, starts at the fleet's
//! common instant, runs its shard with the engine and streams reports every second (DELTAS:
//! what was recorded since its previous report, so a report costs one second of data however
//! long the test runs) until it has delivered its final one.
//!
//! Losing the controller does not stop the shard at once: the worker keeps running and
//! reconnects with backoff (100 ms doubling to 2 s, with jitter) for
//! [`WorkerConfig::reconnect_for`], resuming its session (its index, its elapsed time).
//! Because the worker keeps the cumulative state of the reports the controller has not yet
//! acknowledged as counted, its next report continues exactly the one the controller counted
//! last (the whole results after a controller's restart), so nothing is lost or counted
//! twice. A shard that hears from no
//! controller for [`WorkerConfig::lost_after`] (default `pacer_proto::LOST_AFTER`, 30 s) stops its load
//! on its own and only tries to deliver its results.
//!
//! The rooms, in the order a worker goes through them:
//! - `config`: how a worker finds and talks to its controller ([`WorkerConfig`]);
//! - `session`: one gRPC stream from Hello to its end, and what the controller's refusals mean;
//! - `assign`: the plan, shard and limits read from the controller's Assign;
//! - `start`: a fresh worker's way to the common start (engine at the gate, Ready, Start);
//! - `clock`: the controller's clock against ours, from Ping/Pong samples;
//! - `report`: the running shard, its delta reports and the loop that streams them;
//! - `reconnect`: after a lost session, whether to try again, and when.
//!
//! This file keeps the public face: [`run`], its outcome and its errors.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

mod assign;
mod clock;
mod config;
mod reconnect;
mod report;
mod served;
mod session;
mod start;
mod tls;

pub use assign::{plan_from_assign, plan_from_assign_env, shard_limits};
pub use config::{LostAfterError, RedisJoin, WorkerConfig, check_lost_after};
pub use tls::{CaSource, ConnectError, TlsTrust, Transport};

use reconnect::{AfterLoss, Standing};
use report::Running;
use session::End;

/// The TCP connect timeout for each try: a controller on the same network answers in
/// milliseconds, and a try that hangs only delays the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The controller's certificate is not vouched for by the worker's CA (`--ca`).
    #[error("{0}")]
    Untrusted(String),
    /// The worker's CA file cannot be used.
    #[error(transparent)]
    Ca(ConnectError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the plan from the controller is not valid here: {0}")]
    Plan(String),
    /// The fleet's shared limits (Redis) could not be joined; its own error says why.
    #[error(transparent)]
    Fleet(#[from] pacer_engine::setup::SetupError),
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

/// Run as a worker until the final results are delivered (or it is hopeless). `cancel` (the
/// process is asked to quit) aborts the engine; the final results are still delivered.
pub async fn run(
    cfg: WorkerConfig,
    cancel: CancellationToken,
) -> Result<WorkerOutcome, WorkerError> {
    if let Transport::Tls(trust) = &cfg.transport {
        trust.check().map_err(WorkerError::Ca)?;
    }
    let url = cfg.controller_url();
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| WorkerError::Address(cfg.controller.clone(), e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let mut running: Option<Running> = None;
    let mut trying_since = Instant::now();
    let mut attempt: u32 = 0;
    // Outlives sessions: the served limiter and tokens keep it across reconnects.
    let hub = Arc::new(served::Hub::default());
    loop {
        if cancel.is_cancelled() && running.is_none() {
            return Err(WorkerError::NotStarted);
        }
        let reason = match session::session(
            &cfg,
            &endpoint,
            &mut running,
            &cancel,
            &mut attempt,
            &hub,
        )
        .await
        {
            End::Delivered => {
                return running
                    .as_ref()
                    .map(Running::outcome)
                    .ok_or_else(|| WorkerError::Protocol("delivered without running".into()));
            }
            End::Fatal(e) => {
                if let Some(r) = &running {
                    r.control.abort.cancel();
                }
                return Err(e);
            }
            End::Retry(reason) => reason,
        };
        if attempt == 0 {
            // The session had been established: a new loss starts now.
            trying_since = Instant::now();
        }
        let waited = trying_since.elapsed();
        match reconnect::after_loss(Standing::of(running.as_ref()), waited, &cfg) {
            AfterLoss::Retry => {}
            AfterLoss::Unreachable => {
                return Err(WorkerError::Unreachable {
                    addr: url,
                    waited,
                    last: reason,
                });
            }
            AfterLoss::Undelivered => {
                return Err(WorkerError::Undelivered(cfg.reconnect_for, reason));
            }
        }
        let delay = reconnect::backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!("controller {url}: {reason}; retrying in {delay:?}");
        // While disconnected the shard keeps running; notice its end meanwhile.
        reconnect::pause(delay, running.as_ref(), &cancel).await?;
    }
}
