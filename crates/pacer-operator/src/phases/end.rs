//! The end of a test: its report stored and its [`verdict`] written, the cleanup policy and
//! the TTL applied (also to a test that ended before this reconcile), the finalizer's cleanup
//! when the LoadTest is deleted, and a LoadTest the operator failed on (a caught panic).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{base_status, condition, failed_status};
use crate::api::{
    delete_loadtest, delete_workers, event, store_report, store_run_data, why_missing, write_status,
};
use crate::controller::{Context, Result, uid};
use crate::crd::{CleanupPolicy, LoadTest, LoadTestStatus, Phase};
use crate::messages;
use crate::prepare::Prepared;
use crate::reason::Reason;
use crate::runner::RunEnd;
use crate::status::{
    COND_COMPLETE, COND_VALID, COND_WORKERS_READY, apply_live, now, worker_counts,
};
use crate::verdict::{Outcome, verdict};

/// The shortest requeue for a TTL still to run (a TTL already passed is handled at once).
const MIN_TTL_REQUEUE: Duration = Duration::from_secs(1);

/// Whether the cleanup policy deletes the workers of a test that ended in `phase`.
pub(super) fn cleanup_due(lt: &LoadTest, phase: Phase) -> bool {
    let policy = lt
        .spec
        .cleanup
        .as_ref()
        .map(|c| c.policy)
        .unwrap_or_default();
    match policy {
        CleanupPolicy::Never => false,
        CleanupPolicy::Always => true,
        // A stopped test (suspend) goes too: the user asked for the workers to go away; only
        // a failed one keeps its pods for `kubectl logs`.
        CleanupPolicy::OnSuccess => matches!(phase, Phase::Succeeded | Phase::Aborted),
    }
}

/// The run has ended: store its report, write its verdict, clean up as the policy says.
pub(super) async fn finish(
    lt: &LoadTest,
    ctx: &Context,
    prepared: &Prepared,
    end: RunEnd,
    stopping: Option<String>,
) -> Result<Action> {
    let mut s = base_status(lt);
    s.completion_time = Some(now());
    // What the verdict needs from the cluster (the pods' diagnosis), and what only the end
    // of a finished run or of missing workers adds to the status, before the verdict.
    let why;
    let outcome = match &end {
        RunEnd::Finished(result) => {
            apply_live(&mut s, &result.stats, prepared.workers);
            s.report = store_report(lt, ctx, &prepared.test_id, &result.text, &result.json).await?;
            // The run as data, for `pacer report NAME --html/--out` (run_data.rs).
            let data = ctx
                .runs
                .lock()
                .get(&uid(lt))
                .and_then(|r| r.handle.run_data());
            if let Some(data) = data {
                store_run_data(lt, ctx, &prepared.test_id, &data).await?;
            }
            Outcome::Finished {
                result,
                stopping: stopping.as_deref(),
            }
        }
        RunEnd::WorkersMissing {
            expected,
            connected,
            missing,
            ..
        } => {
            why = why_missing(lt, ctx, &prepared.test_id, missing).await?;
            Outcome::WorkersMissing {
                expected: *expected,
                connected: *connected,
                start_timeout: prepared.start_timeout,
                why: &why,
            }
        }
        RunEnd::Stopped(reason) => Outcome::Stopped(reason),
        RunEnd::NotResumed { workers, waited } => Outcome::NotResumed {
            workers: *workers,
            waited: *waited,
        },
        RunEnd::Error(e) => Outcome::Error(e),
    };
    let verdict = verdict(&outcome);
    if let RunEnd::WorkersMissing {
        expected,
        connected,
        ..
    } = &end
    {
        condition(
            &mut s,
            lt,
            COND_WORKERS_READY,
            false,
            Reason::WorkersMissing,
            &verdict.message,
        );
        s.workers = Some(worker_counts(*expected, *connected, 0));
    }
    ctx.runs.lock().remove(&uid(lt));
    s.phase = Some(verdict.phase);
    s.message = Some(verdict.message.clone());
    condition(
        &mut s,
        lt,
        COND_COMPLETE,
        true,
        verdict.reason,
        &verdict.message,
    );
    // A test taken over after a restart that no worker came back to: whatever is left of its
    // workers cannot be verified, so it goes whatever the policy.
    let unverifiable = matches!(end, RunEnd::NotResumed { .. });
    if unverifiable || cleanup_due(lt, verdict.phase) {
        s.cleaned_up = delete_workers(lt, ctx).await?;
    }
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(verdict.phase);
    event(
        ctx,
        lt,
        verdict.event_type(),
        verdict.reason,
        verdict.message,
    )
    .await;
    Ok(ttl_action(lt, &s))
}

/// Requeue for the TTL, if there is one.
pub(super) fn ttl_action(lt: &LoadTest, s: &LoadTestStatus) -> Action {
    match ttl_remaining(lt, s) {
        Some(d) => Action::requeue(d.max(MIN_TTL_REQUEUE)),
        None => Action::await_change(),
    }
}

fn ttl_remaining(lt: &LoadTest, s: &LoadTestStatus) -> Option<Duration> {
    let ttl = lt.spec.cleanup.as_ref()?.ttl_seconds_after_finished?;
    let done = s.completion_time.as_ref()?.0;
    let at = done
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(ttl)))
        .ok()?;
    let left = at.duration_since(k8s_openapi::jiff::Timestamp::now());
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// A test that has ended: finish a cleanup left undone, then the TTL.
pub(super) async fn ended(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let status = lt.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::Failed);
    if status.test_id.is_some() && !status.cleaned_up && cleanup_due(lt, phase) {
        let mut s = base_status(lt);
        s.cleaned_up = delete_workers(lt, ctx).await?;
        write_status(lt, ctx, &s).await?;
    }
    match ttl_remaining(lt, &status) {
        Some(d) if d.is_zero() => {
            delete_loadtest(lt, ctx).await?;
            tracing::info!(loadtest = %lt.name_any(), "deleted: ttlSecondsAfterFinished passed");
            Ok(Action::await_change())
        }
        Some(d) => Ok(Action::requeue(d)),
        None => Ok(Action::await_change()),
    }
}

/// The LoadTest is being deleted: stop and delete its workers; Aborted if it was running.
pub(crate) async fn cleanup(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let run = ctx.runs.lock().remove(&uid(&lt));
    let was_running = run.is_some();
    if let Some(run) = run {
        run.handle.abort(messages::DELETED_ABORT);
    }
    let started = lt
        .status
        .as_ref()
        .is_some_and(|s| s.test_id.is_some() && !s.cleaned_up);
    if started {
        delete_workers(&lt, &ctx).await?;
    }
    if was_running {
        let mut s = base_status(&lt);
        s.phase = Some(Phase::Aborted);
        s.message = Some(messages::DELETED_WHILE_RUNNING.into());
        s.completion_time = Some(now());
        s.cleaned_up = true;
        condition(
            &mut s,
            &lt,
            COND_COMPLETE,
            true,
            Reason::Deleted,
            messages::DELETED_WHILE_RUNNING,
        );
        write_status(&lt, &ctx, &s).await?;
        ctx.metrics.ended(Phase::Aborted);
        event(
            &ctx,
            &lt,
            EventType::Warning,
            Reason::Aborted,
            messages::DELETED_EVENT.into(),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// After a panic: stop what this LoadTest runs and end it Failed, so it is not reconciled
/// into the same panic again (a changed spec is checked again, as for an invalid one).
pub(crate) async fn internal_error(lt: &LoadTest, ctx: &Context, what: &str) -> Result<Action> {
    if let Some(run) = ctx.runs.lock().remove(&uid(lt)) {
        run.handle.abort(messages::INTERNAL_ERROR_ABORT);
    }
    let message = messages::internal_error(what);
    let mut s = failed_status(lt, Reason::InternalError, message.clone(), &message);
    condition(
        &mut s,
        lt,
        COND_VALID,
        false,
        Reason::InternalError,
        &message,
    );
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    event(ctx, lt, EventType::Warning, Reason::InternalError, message).await;
    Ok(Action::await_change())
}
