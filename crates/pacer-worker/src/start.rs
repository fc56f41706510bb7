//! A fresh worker's way from its Assign to the fleet's common start: read the plan, build the
//! engine so it waits at the gate with nothing left to prepare, measure the controller's clock
//! (`clock`), say Ready, wait for Start and open the gate at the instant it names. A worker
//! that cannot run its shard says so at once (a Finished with the error), so the controller
//! fails the test instead of waiting for it.

use std::sync::Arc;
use std::time::Duration;

use pacer_engine::setup::{LimiterSetup, ServedByController};
use pacer_engine::{Deps, EngineError, RunControl, RunOptions, RunReport, StartGate, StartHandle};
use pacer_limiter::fleet::FleetConfig;
use pacer_proto::{Assign, controller_message::Body as In, worker_message::Body as Out};
use pacer_stats::Recorder;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::assign::{plan_and_shard, shard_limits};
use crate::clock;
use crate::report::{EngineEnd, Running};
use crate::served::{Hub, Inbound};
use crate::session::{End, Tx, next, send};
use crate::{WorkerConfig, WorkerError};

/// How long a worker that cannot run waits for its Finished to leave before the stream is
/// dropped with it.
const FAREWELL: Duration = Duration::from_millis(200);

/// How long an engine that did not get ready is given to say why, once aborted.
const WHY_WITHIN: Duration = Duration::from_secs(2);

/// Load the plan, measure the round trip, say Ready, wait for Start, start the engine.
/// `None`: stopped before the start.
pub(crate) async fn prepare(
    cfg: &WorkerConfig,
    a: &Assign,
    tx: &Tx,
    inbound: &mut Inbound,
    cancel: &CancellationToken,
    peer_timeout: Duration,
    hub: &Arc<Hub>,
) -> Result<Option<Running>, End> {
    let Launched {
        recorder,
        setup,
        control,
        mut gate,
        done,
    } = match launch(cfg, a, hub).await {
        Ok(l) => l,
        Err(e) => return Err(cannot_run(tx, e).await),
    };
    let epoch = Instant::now();
    let Some(clock) = clock::measure(tx, inbound, peer_timeout, epoch).await? else {
        control.abort.cancel();
        return Ok(None);
    };
    if let Err(e) = ready(&mut gate, &control, &done, peer_timeout).await {
        return Err(cannot_run(tx, e).await);
    }
    send(tx, Out::Ready(pacer_proto::Ready {})).await?;
    let rtt = clock.rtt();
    tracing::info!(
        "worker {} of {}: ready (round trip {rtt:?})",
        a.worker_index,
        a.weights.len()
    );
    let Some((start_in, start_at)) = await_start(inbound, peer_timeout, cancel).await? else {
        control.abort.cancel();
        return Ok(None);
    };
    let received = Instant::now();
    let start = epoch
        + clock.start_since_epoch(
            start_at,
            start_in,
            received.saturating_duration_since(epoch),
        );
    gate.start_at(start);
    tracing::debug!(
        "start in {:?} (Start said {start_in:?} when queued, round trip {rtt:?}); wall clock now {:?}",
        start.saturating_duration_since(received),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    let running = Running::new(a, recorder, setup, control, start, done, peer_timeout);
    running.guard(cfg.lost_after);
    Ok(Some(running))
}

/// An engine spawned and waiting at its start gate.
struct Launched {
    recorder: Arc<Recorder>,
    setup: Arc<LimiterSetup>,
    control: RunControl,
    gate: StartHandle,
    /// The engine's end, watched apart from the session (which may break and reconnect).
    done: watch::Receiver<Option<EngineEnd>>,
}

/// Read the plan and the shard, build the limiter and spawn the engine now (HTTP client
/// included), so a Start message finds nothing left to prepare.
async fn launch(cfg: &WorkerConfig, a: &Assign, hub: &Arc<Hub>) -> Result<Launched, WorkerError> {
    let (plan, shard) = plan_and_shard(cfg, a)?;
    // Its ledger entries name the worker by index, as the per-worker table does.
    let recorder = Arc::new(
        Recorder::new(pacer_stats::Layout::of(&plan))
            .with_worker(&format!("worker {}", a.worker_index)),
    );
    // With Redis the fleet paces every `scope: fleet` limit from one budget (the whole limit)
    // in Redis. Without it the controller serves the fleet: leases of its one budget and its
    // tokens over the session (a controller that serves nothing, of an older pacer: each
    // worker keeps its weight's share). A worker given a Redis shares through it instead, as
    // every worker of its fleet must (docs/distributed.md).
    let served = a.served_limits || !a.served_credentials.is_empty();
    let setup = match &cfg.redis {
        None if served => {
            let s = LimiterSetup::served(
                &plan,
                &shard_limits(&plan.limits, &shard),
                ServedByController {
                    limits: a.served_limits,
                    credentials: &a.served_credentials,
                    workers: u32::try_from(a.weights.len()).unwrap_or(u32::MAX),
                },
                hub.clone(),
                hub.clone(),
                &recorder,
            )
            .map_err(WorkerError::Fleet)?;
            hub.serve(s.limiter, s.tokens);
            s.setup
        }
        Some(r) => {
            let mut fc = FleetConfig::new(
                r.url.clone(),
                r.fleet.clone().unwrap_or_else(|| a.test_id.clone()),
            );
            fc.safe_mode_max = r.safe_mode_max;
            fc.ca_pem = r.ca_pem.clone();
            fc.budget = r.budget.clone();
            fc.weight = r.weight;
            if let Some(idle) = r.budget_idle {
                fc.budget_idle = idle;
            }
            LimiterSetup::fleet(&plan, fc, &recorder)
                .await
                .map_err(WorkerError::Fleet)?
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
    let (gate, start_gate) = StartGate::new();
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
    let (done_tx, done) = watch::channel(None);
    let finishing = setup.clone();
    let served = hub.limiter();
    tokio::spawn(async move {
        let end = engine_end(engine.await);
        if let Some(l) = served {
            let (leases, requests) = l.leases();
            tracing::info!(
                leases,
                requests,
                "the controller's budget: {leases} leases for {requests} requests"
            );
        }
        // Leave the fleet (the last one out deletes the test's keys) before saying done.
        finishing.finish().await;
        let _ = done_tx.send(Some(end));
    });
    Ok(Launched {
        recorder,
        setup,
        control,
        gate,
        done,
    })
}

/// How the engine's task ended, as the worker reports it.
fn engine_end(r: Result<Result<RunReport, EngineError>, tokio::task::JoinError>) -> EngineEnd {
    match r {
        // A `unique` data source that ran out ended the run before its plan did: the test
        // fails, and the controller says why.
        Ok(Ok(report)) => match report.data_exhausted {
            Some(e) => EngineEnd::failed(e.to_string()),
            None => EngineEnd {
                stopped_early: report.stopped_early,
                error: String::new(),
            },
        },
        Ok(Err(e)) => EngineEnd::failed(format!("the engine could not run: {e}")),
        Err(e) => EngineEnd::failed(format!("the engine task failed: {e}")),
    }
}

/// Ready only once the engine waits at the gate: a worker still building its HTTP client
/// would be busy (and late) when the Start arrives. An engine not ready within
/// `peer_timeout` is aborted, and its own error (if it gives one) says why.
async fn ready(
    gate: &mut StartHandle,
    control: &RunControl,
    done: &watch::Receiver<Option<EngineEnd>>,
    peer_timeout: Duration,
) -> Result<(), WorkerError> {
    let prepared = tokio::time::timeout(peer_timeout, gate.prepared()).await;
    if matches!(prepared, Ok(true)) {
        return Ok(());
    }
    control.abort.cancel();
    let mut done = done.clone();
    let why = match tokio::time::timeout(WHY_WITHIN, done.wait_for(Option::is_some)).await {
        Ok(Ok(d)) => d.clone().map(|e| e.error).unwrap_or_default(),
        _ => "the engine did not get ready to start".into(),
    };
    Err(WorkerError::Plan(why))
}

/// Wait for Start: how long until it when the controller queued it, and the instant on the
/// controller's clock (0 from a controller that sends none). `None`: the controller said Stop
/// or Abort, or this process was asked to quit.
async fn await_start(
    inbound: &mut Inbound,
    peer_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Option<(Duration, u64)>, End> {
    loop {
        tokio::select! {
            m = next(inbound, peer_timeout) => match m? {
                In::Start(s) => return Ok(Some((Duration::from_micros(s.start_in_us), s.start_at_us))),
                In::Heartbeat(_) | In::Pong(_) => {}
                In::Stop(_) | In::Abort(_) => return Ok(None),
                other => {
                    return Err(End::Fatal(WorkerError::Protocol(format!(
                        "{} before Start", other.kind()
                    ))));
                }
            },
            _ = cancel.cancelled() => return Ok(None),
        }
    }
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
            // The worker did not run: no results.
            snapshot_json: Vec::new(),
            detail_left_out: false,
        }),
    )
    .await;
    // Give the message a moment to leave before the stream is dropped.
    tokio::time::sleep(FAREWELL).await;
    End::Fatal(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_end_says_whether_it_ran() {
        let ran = engine_end(Ok(Ok(RunReport {
            elapsed: Duration::from_secs(1),
            stopped_early: false,
            data_exhausted: None,
        })));
        assert_eq!(ran, EngineEnd::default());
        let stopped = engine_end(Ok(Ok(RunReport {
            elapsed: Duration::from_secs(1),
            stopped_early: true,
            data_exhausted: None,
        })));
        assert!(stopped.stopped_early && stopped.error.is_empty());
    }
}
