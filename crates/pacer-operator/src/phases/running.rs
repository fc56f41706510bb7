//! A test under way (Starting or Running): its status written every `status_interval` from
//! the run's live numbers, why its missing workers are missing, a stop asked for when it is
//! suspended, and its end handed to [`super::end::finish`]. The status never goes backwards:
//! a Running test stays Running, and a resumed one ([`super::resume`]) writes its numbers only
//! once every worker is back or lost.

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use pacer_controller::WorkerState;
use tokio::time::Instant;

use super::base_status;
use super::condition;
use super::end::finish;
use crate::api::{event, why_missing, write_status};
use crate::controller::{Context, Result, uid};
use crate::crd::{LoadTest, Phase};
use crate::messages;
use crate::reason::Reason;
use crate::runner::LiveStats;
use crate::status::{COND_WORKERS_READY, apply_live};

/// The shortest requeue while a status write is not yet due.
const MIN_REQUEUE: Duration = Duration::from_millis(100);

/// A resumed run that was Running and whose workers are not all back (or lost) yet: its
/// numbers would be short of what the status already says, so nothing is written until they
/// are. (A resumed test that was Starting writes as a new one does.)
fn still_resuming(resumed: bool, phase: Phase, live: &LiveStats) -> bool {
    resumed
        && phase == Phase::Running
        && (!live.started || live.workers.iter().any(|w| w.state == WorkerState::Waiting))
}

/// A run this operator holds: finish it if it ended, else write its status when due.
pub(super) async fn progress(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let key = uid(lt);
    let (handle, prepared, last_write, stopping, record, resumed) = {
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
            run.record.clone(),
            run.resumed,
        )
    };
    if let Some(end) = handle.end() {
        return finish(lt, ctx, &prepared, end, stopping).await;
    }
    let phase = lt.phase().unwrap_or(Phase::Pending);
    let live = handle.live();
    // Nor /metrics: its counters would go down while the workers come back.
    if still_resuming(resumed, phase, &live) {
        return Ok(Action::requeue(ctx.config.status_interval.max(MIN_REQUEUE)));
    }
    ctx.board
        .publish(lt, &live, handle.figures().as_deref(), prepared.workers);
    // Never back to Starting (a resumed test was Running before its first worker came back).
    let next_phase = if live.started || phase == Phase::Running {
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
    s.test_id = Some(prepared.test_id.clone());
    record.apply(&mut s);
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
