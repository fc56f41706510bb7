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
//!   time throttled, thresholds, per-worker health. A run this operator does not hold (it
//!   restarted) is lost.
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
pub(crate) mod running;
pub(crate) mod start;

use std::sync::Arc;

use kube::runtime::controller::Action;

use crate::controller::{Context, Result, uid};
use crate::crd::{LoadTest, LoadTestStatus, Phase};
use crate::prepare::prepare;
use crate::reason::Reason;
use crate::status::{COND_VALID, set_condition};

pub(crate) use end::{cleanup, internal_error};

/// A LoadTest that exists (not being deleted): move it along.
pub(crate) async fn apply(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let mut phase = lt.phase();
    if phase.is_some_and(Phase::is_terminal) {
        if !spec_fixed(&lt) {
            return end::ended(&lt, &ctx).await;
        }
        phase = None;
    }
    let prepared = match prepare(&lt, &ctx.config.defaults) {
        Ok(p) => p,
        Err(errors) => return start::invalid(&lt, &ctx, &errors).await,
    };
    let running = ctx.runs.lock().contains_key(&uid(&lt));
    match (phase, running) {
        (None | Some(Phase::Pending), false) => {
            if lt.spec.suspend {
                start::suspended_before_start(&lt, &ctx).await
            } else {
                start::start(&lt, &ctx, prepared).await
            }
        }
        (Some(Phase::Starting | Phase::Running), false) => running::lost_session(&lt, &ctx).await,
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
