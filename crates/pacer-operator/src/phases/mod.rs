//! The phase machine: what a reconcile does with a LoadTest, by where it is. The status is
//! the record; the live run is in memory, in [`Context::runs`].
//!
//! - new ([`start`]): check the spec (pacer-plan's validation, fields named `spec.plan.…`);
//!   invalid ends in Failed with a `Valid=False` condition naming the field. Valid: start the
//!   test's coordinator, create the session Secret and the Indexed Job of workers -> Starting
//!   (or Pending while `spec.suspend` is true).
//! - Starting, Running ([`running`]): while workers are missing, their pods say why
//!   (WorkersReady); every worker ready -> the coordinator starts them together -> Running.
//!   The status is written every `status_interval`: progress, RPS, p50/p95/p99, errors, 429s,
//!   time throttled, thresholds, per-worker health.
//! - Starting, Running, but not held here ([`resume`]): this operator restarted (or took
//!   over as the leader); the run is rebuilt from the spec and the status (the token's and
//!   the plan's SHA-256), and the workers that reconnect resume it. A test that cannot be
//!   resumed ends Failed and its workers are deleted, whatever the cleanup policy.
//! - end ([`end`]): the report goes into a ConfigMap; the phase, reason and message are the
//!   [`crate::verdict`]; the cleanup policy deletes the workers; the TTL deletes the LoadTest.
//! - deletion ([`end::cleanup`], the finalizer): the workers are stopped and deleted; the
//!   phase is Aborted.
//!
//! Every transition is also an Event on the LoadTest. The API calls are in [`crate::api`], the
//! words in [`crate::messages`].
//!
//! [`Context::runs`]: crate::controller::Context::runs

pub(crate) mod end;
pub(crate) mod resume;
pub(crate) mod running;
pub(crate) mod start;

use std::sync::Arc;

use kube::runtime::controller::Action;

use crate::controller::{Context, Result, uid};
use crate::crd::{LoadTest, LoadTestStatus, Phase};
use crate::prepare::prepare_on;
use crate::reason::Reason;
use crate::status::{COND_VALID, set_condition};

pub(crate) use end::{cleanup, internal_error};
pub(crate) use resume::Record;

/// A LoadTest that exists (not being deleted): move it along.
pub(crate) async fn apply(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let mut phase = lt.phase();
    if phase.is_some_and(Phase::is_terminal) {
        if !spec_fixed(&lt) {
            return end::ended(&lt, &ctx).await;
        }
        phase = None;
    }
    if matches!(phase, Some(Phase::Starting | Phase::Running))
        && !ctx.runs.lock().contains_key(&uid(&lt))
    {
        // Under way, but not in this operator's memory: it restarted, or just became the
        // leader. Before anything else (a spec edited since the start is the resume's to judge).
        return resume::resume(&lt, &ctx).await;
    }
    // A RateBudget is looked up only for a test that may start: once running, its plan holds
    // the budget's limits as they were at its start.
    let budget = match &lt.spec.budget_ref {
        Some(r) if phase.is_none() || phase == Some(Phase::Pending) => {
            crate::api::get_budget(&lt, &ctx, r).await?
        }
        _ => None,
    };
    let found = lt.spec.budget_ref.as_ref().map(|_| match &budget {
        Some(rb) => crate::budget::Found::Budget(rb),
        None => crate::budget::Found::Missing,
    });
    let running_now = matches!(phase, Some(Phase::Starting | Phase::Running));
    // A plan in a ConfigMap (spec.planRef) is read only for a test that may start, then
    // checked as an inline one; once running, the run in memory holds it.
    let lt = if running_now {
        lt
    } else {
        match crate::planref::resolve(&lt, &ctx).await? {
            Ok(inlined) => Arc::new(inlined),
            Err(errors) => return start::invalid(&lt, &ctx, &errors, Reason::InvalidSpec).await,
        }
    };
    let prepared = if running_now && (lt.spec.budget_ref.is_some() || lt.spec.plan_ref.is_some()) {
        // Not prepared again (the budget may have changed since the start): the run in memory
        // holds what was prepared, and a run this operator lost is lost either way.
        None
    } else {
        let default_redis = ctx.config.default_redis.as_ref();
        match prepare_on(&lt, &ctx.config.defaults, found, default_redis) {
            // The plan's test data from the ConfigMaps spec.data names.
            Ok(mut p) => match crate::test_data::resolve(&lt, &ctx, &mut p).await? {
                Ok(()) => Some(p),
                Err(errors) => {
                    return start::invalid(&lt, &ctx, &errors, Reason::InvalidSpec).await;
                }
            },
            Err(errors) => {
                let reason = crate::budget::refusal_reason(&lt, found, default_redis);
                return start::invalid(&lt, &ctx, &errors, reason).await;
            }
        }
    };
    let running = ctx.runs.lock().contains_key(&uid(&lt));
    match (phase, running) {
        (None | Some(Phase::Pending), false) => match prepared {
            _ if lt.spec.suspend => start::suspended_before_start(&lt, &ctx).await,
            Some(prepared) => start::start(&lt, &ctx, prepared).await,
            None => resume::resume(&lt, &ctx).await,
        },
        (Some(Phase::Starting | Phase::Running), false) => resume::resume(&lt, &ctx).await,
        _ => running::progress(&lt, &ctx).await,
    }
}

/// A test refused for its spec, whose spec has changed since: it is checked again.
fn spec_fixed(lt: &LoadTest) -> bool {
    lt.status.as_ref().is_some_and(|s| {
        s.test_id.is_none()
            && s.observed_generation != lt.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == COND_VALID && c.status == "False")
    })
}

/// The status to write next: the current one, with the generation seen.
fn base_status(lt: &LoadTest) -> LoadTestStatus {
    let mut s = lt.status.clone().unwrap_or_default();
    s.observed_generation = lt.metadata.generation;
    s
}

/// The status that ends the test Failed now: the phase, `message`, the completion time, and
/// `Complete=True` for `reason` saying `complete` (what each failure adds, it adds after).
fn failed_status(lt: &LoadTest, reason: Reason, message: String, complete: &str) -> LoadTestStatus {
    let mut s = base_status(lt);
    s.phase = Some(Phase::Failed);
    s.message = Some(message);
    s.completion_time = Some(crate::status::now());
    condition(
        &mut s,
        lt,
        crate::status::COND_COMPLETE,
        true,
        reason,
        complete,
    );
    s
}

/// Set the condition `type_` of the status for the LoadTest's current generation.
fn condition(
    s: &mut LoadTestStatus,
    lt: &LoadTest,
    type_: &str,
    status: bool,
    reason: Reason,
    message: &str,
) {
    set_condition(
        &mut s.conditions,
        type_,
        status,
        reason,
        message,
        lt.metadata.generation,
    );
}
