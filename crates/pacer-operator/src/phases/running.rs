//! A test under way (Starting or Running): its status written every `status_interval` from
//! the run's live numbers, why its missing workers are missing, a stop asked for when it is
//! suspended, and its end handed to [`super::end::finish`]. A test whose run this operator
//! does not hold (it restarted) is lost.

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tokio::time::Instant;

use super::end::{cleanup_due, finish, ttl_action};
use super::{base_status, condition};
use crate::api::{delete_workers, event, why_missing, write_status};
use crate::controller::{Context, Result, uid};
use crate::crd::{LoadTest, Phase};
use crate::messages;
use crate::reason::Reason;
use crate::status::{COND_COMPLETE, COND_WORKERS_READY, apply_live, now};

/// The shortest requeue while a status write is not yet due.
const MIN_REQUEUE: Duration = Duration::from_millis(100);

/// The operator restarted while the test ran: the session lived in its memory only.
pub(super) async fn lost_session(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let message = messages::LOST_SESSION;
    let mut s = base_status(lt);
    s.phase = Some(Phase::Failed);
    s.message = Some(message.into());
    s.completion_time = Some(now());
    condition(
        &mut s,
        lt,
        COND_COMPLETE,
        true,
        Reason::ControllerRestarted,
        message,
    );
    let cleaned = cleanup_due(lt, Phase::Failed) && delete_workers(lt, ctx).await?;
    s.cleaned_up = cleaned;
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    event(
        ctx,
        lt,
        EventType::Warning,
        Reason::ControllerRestarted,
        message.into(),
    )
    .await;
    Ok(ttl_action(lt, &s))
}

/// A run this operator holds: finish it if it ended, else write its status when due.
pub(super) async fn progress(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let key = uid(lt);
    let (handle, prepared, last_write, stopping) = {
        let mut runs = ctx.runs.lock();
        let Some(run) = runs.get_mut(&key) else {
            return Ok(Action::requeue(ctx.config.status_interval));
        };
        if lt.spec.suspend && run.stopping.is_none() {
            run.stopping = Some(messages::SUSPEND_STOP.into());
            run.handle.stop(messages::SUSPEND_STOP);
        }
        (
            run.handle.clone(),
            run.prepared.clone(),
            run.last_write,
            run.stopping.clone(),
        )
    };
    if let Some(end) = handle.end() {
        return finish(lt, ctx, &prepared, end, stopping).await;
    }
    let phase = lt.phase().unwrap_or(Phase::Pending);
    let live = handle.live();
    ctx.board
        .publish(lt, &live, handle.figures().as_deref(), prepared.workers);
    let next_phase = if live.started {
        Phase::Running
    } else {
        Phase::Starting
    };
    let interval = ctx.config.status_interval;
    let due = last_write.is_none_or(|t| t.elapsed() >= interval);
    if next_phase == phase && !due {
        let wait = last_write.map_or(interval, |t| interval.saturating_sub(t.elapsed()));
        return Ok(Action::requeue(wait.max(MIN_REQUEUE)));
    }
    let mut s = base_status(lt);
    s.phase = Some(next_phase);
    apply_live(&mut s, &live, prepared.workers);
    if next_phase == Phase::Starting {
        let missing: Vec<u32> = live
            .workers
            .iter()
            .filter(|w| w.state == pacer_controller::WorkerState::Waiting)
            .map(|w| w.index)
            .collect();
        let connected = messages::workers_connected(live.connected, prepared.workers);
        let message = if missing.is_empty() {
            connected
        } else {
            let why = why_missing(lt, ctx, &prepared.test_id, &missing).await?;
            format!("{connected}; {why}")
        };
        s.message = Some(message.clone());
        condition(
            &mut s,
            lt,
            COND_WORKERS_READY,
            false,
            Reason::Starting,
            &message,
        );
    } else {
        s.message = Some(messages::running(stopping.as_deref()));
        condition(
            &mut s,
            lt,
            COND_WORKERS_READY,
            true,
            Reason::Started,
            &messages::started_together(prepared.workers),
        );
    }
    write_status(lt, ctx, &s).await?;
    if let Some(run) = ctx.runs.lock().get_mut(&key) {
        run.last_write = Some(Instant::now());
    }
    if next_phase != phase && next_phase == Phase::Running {
        event(
            ctx,
            lt,
            EventType::Normal,
            Reason::Running,
            messages::running_event(prepared.workers, prepared.plan.max_duration()),
        )
        .await;
    }
    Ok(Action::requeue(interval))
}
