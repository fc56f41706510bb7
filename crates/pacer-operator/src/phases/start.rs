//! A LoadTest seen for the first time (or again after its invalid spec was fixed): refused
//! for its spec, held while suspended, or started: the coordinator first, then what an
//! operator that restarts needs to resume the test (the token's and the plan's SHA-256, on the
//! status, before any worker exists), then the session Secret and the Job of workers, then the
//! Starting status.

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use pacer_controller::key::SessionKey;

use super::{Record, base_status, condition, failed_status};
use crate::api::{create_workers, delete_workers, event, write_status};
use crate::controller::{Context, Result, uid};
use crate::crd::{LoadTest, Phase};
use crate::messages;
use crate::prepare::Prepared;
use crate::reason::Reason;
use crate::resources::names;
use crate::runner::RunSpec;
use crate::status::{
    COND_COMPLETE, COND_SUSPENDED, COND_VALID, COND_WORKERS_READY, now, remove_condition,
    worker_counts,
};

/// The session token's length in bytes (hex-encoded: twice as many characters): 256 random
/// bits, which nobody guesses.
const SESSION_TOKEN_BYTES: usize = 32;

/// The spec is not valid: Failed, naming every problem's field; nothing is started.
pub(super) async fn invalid(
    lt: &LoadTest,
    ctx: &Context,
    errors: &[pacer_plan::FieldError],
    reason: Reason,
) -> Result<Action> {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut s = failed_status(
        lt,
        reason,
        messages::invalid_spec(&message),
        messages::NOTHING_STARTED,
    );
    condition(&mut s, lt, COND_VALID, false, reason, &message);
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    event(ctx, lt, EventType::Warning, reason, message).await;
    Ok(Action::await_change())
}

/// Created with `spec.suspend: true`: Pending, said once.
pub(super) async fn suspended_before_start(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let already = lt.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == COND_SUSPENDED && c.status == "True")
    });
    if already {
        return Ok(Action::await_change());
    }
    let mut s = base_status(lt);
    s.phase = Some(Phase::Pending);
    s.message = Some(messages::SUSPENDED_STATUS.into());
    condition(&mut s, lt, COND_VALID, true, Reason::Valid, "");
    condition(
        &mut s,
        lt,
        COND_SUSPENDED,
        true,
        Reason::Suspended,
        messages::SUSPENDED_CONDITION,
    );
    write_status(lt, ctx, &s).await?;
    event(
        ctx,
        lt,
        EventType::Normal,
        Reason::Suspended,
        messages::SUSPENDED_EVENT.into(),
    )
    .await;
    Ok(Action::await_change())
}

fn random_token() -> String {
    (0..SESSION_TOKEN_BYTES)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Start the run and create its workers -> Starting.
pub(super) async fn start(lt: &LoadTest, ctx: &Context, prepared: Prepared) -> Result<Action> {
    let names = names(lt);
    if lt
        .status
        .as_ref()
        .is_some_and(|s| s.session_token_sha256.is_some())
    {
        // A start recorded but never finished (the operator stopped before the Starting
        // status, or the Job could not be created): what it created holds another token.
        delete_workers(lt, ctx).await?;
    }
    let token = random_token();
    let key = SessionKey::Token(token.clone());
    let record = Record::of(&key, &prepared);
    let handle = ctx.runner.start(RunSpec {
        test_id: prepared.test_id.clone(),
        session: key,
        plan: prepared.plan.clone(),
        workers: prepared.workers,
        wait_for_workers: prepared.start_timeout,
        resume_only: false,
    })?;
    // The record first: no worker may exist that a restarted operator could not verify.
    let mut recorded = base_status(lt);
    recorded.test_id = Some(prepared.test_id.clone());
    record.apply(&mut recorded);
    let created = match write_status(lt, ctx, &recorded).await {
        Ok(()) => create_workers(lt, ctx, &prepared, &token).await,
        Err(e) => Err(e),
    };
    if let Err(e) = created {
        handle.abort(messages::WORKERS_NOT_CREATED);
        return Err(e);
    }
    ctx.hold(uid(lt), handle, &prepared, record.clone(), false);
    let mut s = base_status(lt);
    s.phase = Some(Phase::Starting);
    s.test_id = Some(prepared.test_id.clone());
    record.apply(&mut s);
    s.message = Some(messages::waiting_for_workers(
        prepared.workers,
        prepared.start_timeout,
    ));
    s.workers = Some(worker_counts(prepared.workers, 0, 0));
    s.start_time = Some(now());
    s.completion_time = None;
    remove_condition(&mut s.conditions, COND_COMPLETE);
    condition(&mut s, lt, COND_VALID, true, Reason::Valid, "");
    remove_condition(&mut s.conditions, COND_SUSPENDED);
    condition(
        &mut s,
        lt,
        COND_WORKERS_READY,
        false,
        Reason::Starting,
        &messages::workers_connected(0, prepared.workers),
    );
    write_status(lt, ctx, &s).await?;
    event(
        ctx,
        lt,
        EventType::Normal,
        Reason::Starting,
        messages::workers_created(
            &prepared.test_id,
            &names.job,
            prepared.workers,
            prepared.start_timeout,
        ),
    )
    .await;
    Ok(Action::requeue(ctx.config.status_interval))
}
