//! A test this operator finds Starting or Running but does not hold: it restarted (a crash,
//! `helm upgrade`, a drained node) or just became the leader. The run lived in the previous
//! operator's memory; its workers did not: they keep running their shards and reconnect. So
//! the run is rebuilt from what the LoadTest records, and the workers that come back resume it
//! (their cumulative snapshots: nothing lost, nothing counted twice).
//!
//! What is needed, and where it comes from:
//! - the test id (`status.testId`);
//! - what to verify a worker's token against, without reading the session Secret: the
//!   token's SHA-256, `status.sessionTokenSha256`, written before the workers were created
//!   ([`Record`]; docs/security.md says why this is safe);
//! - the plan: prepared again from the spec (its `planRef` ConfigMap and its RateBudget read
//!   again), and resumed only if it is the very plan the workers were given
//!   (`status.planSha256`);
//! - the common start: the first worker that resumes says how long its shard has run (its own
//!   monotonic clock, against which the shard really runs), as `pacer controller` does after
//!   a restart; a wall clock in the status, from another pod's clock, would be less exact.
//!
//! [`resume`] is a plain function of the LoadTest and the [`Context`]: whoever reconciles a
//! test it does not hold (a restarted operator, a new leader) calls it. A test that cannot be
//! resumed ([`cannot_resume`]) ends Failed (reason `ControllerRestarted`, the message says
//! why) and its worker Job and session Secret are deleted whatever the cleanup policy: workers
//! nobody can verify must not keep sending load.

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use pacer_controller::key::{SessionKey, sha256_hex};

use super::end::ttl_action;
use super::failed_status;
use crate::api::{delete_workers, event, get_budget, write_status};
use crate::controller::{Context, Result, uid};
use crate::crd::{LoadTest, LoadTestStatus, Phase};
use crate::messages;
use crate::prepare::{Prepared, prepare_on};
use crate::reason::Reason;
use crate::runner::RunSpec;

/// How long a resumed Running test waits for its first worker to come back. A worker whose
/// shard runs retries every 2 s at most (2.5 s with jitter: pacer-worker's reconnect
/// backoff) and never gives up; the rest is room for a busy node. Past it, the workers are
/// taken as gone. (A test still Starting waits its `startTimeout`, as a new one does.)
pub const RESUME_WITHIN: Duration = Duration::from_secs(30);

/// The field that holds the token's SHA-256, as errors name it.
const TOKEN_FIELD: &str = "status.sessionTokenSha256";

/// What the status records of a run for an operator that restarts: written before the
/// workers are created and again with every status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// `status.sessionTokenSha256`.
    pub token_sha256: String,
    /// `status.planSha256` (`None`: the plan did not serialize; such a test cannot resume).
    pub plan_sha256: Option<String>,
}

impl Record {
    /// The record of a run of `prepared` whose workers present `key`.
    pub fn of(key: &SessionKey, prepared: &Prepared) -> Self {
        Self {
            token_sha256: key.sha256_hex(),
            plan_sha256: plan_sha256(prepared),
        }
    }

    /// Write it into a status about to be written.
    pub fn apply(&self, s: &mut LoadTestStatus) {
        s.session_token_sha256 = Some(self.token_sha256.clone());
        s.plan_sha256 = self.plan_sha256.clone();
    }
}

/// The SHA-256 of what the workers are given (the plan as sent in their Assign, how many
/// share it, and each test data source's file as sent beside it): two preparations of one
/// spec and the same ConfigMaps give the same (the plan's maps are ordered). A data ConfigMap
/// edited mid-run changes it, so a resumed test never hands a worker other rows than those
/// its shard started with (`unique` rows would be used twice or skipped).
fn plan_sha256(prepared: &Prepared) -> Option<String> {
    let spec = serde_json::to_string(&prepared.plan.spec).ok()?;
    let mut text = format!("workers={}\n{spec}", prepared.workers);
    for d in &prepared.plan.data {
        let file = d.text.as_deref().unwrap_or("");
        // Length-prefixed, so no file's text can pass for another's name or boundary.
        text.push_str(&format!("\ndata {} {}\n{file}", d.name, file.len()));
    }
    Some(sha256_hex(text.as_bytes()))
}

/// Take over a Starting or Running test this operator does not hold (see the module doc).
pub(crate) async fn resume(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let status = lt.status.clone().unwrap_or_default();
    let was_running = lt.phase() == Some(Phase::Running);
    let (prepared, key) = match resumable(lt, ctx, &status).await? {
        Ok(found) => found,
        Err(why) => return cannot_resume(lt, ctx, &why).await,
    };
    let wait = if was_running {
        RESUME_WITHIN
    } else {
        prepared.start_timeout
    };
    let record = Record::of(&key, &prepared);
    let handle = ctx.runner.start(RunSpec {
        test_id: prepared.test_id.clone(),
        session: key,
        plan: prepared.plan.clone(),
        workers: prepared.workers,
        wait_for_workers: wait,
        resume_only: was_running,
    })?;
    tracing::warn!(
        test = %prepared.test_id,
        "resuming a test this operator did not hold (it restarted or just became the leader)"
    );
    ctx.hold(uid(lt), handle, &prepared, record, true);
    event(
        ctx,
        lt,
        EventType::Normal,
        Reason::Resumed,
        messages::resumed_event(&prepared.test_id, prepared.workers, was_running, wait),
    )
    .await;
    Ok(Action::requeue(ctx.config.status_interval))
}

/// The prepared plan and the key to verify workers with, or why the test cannot be resumed.
async fn resumable(
    lt: &LoadTest,
    ctx: &Context,
    status: &LoadTestStatus,
) -> Result<Result<(Prepared, SessionKey), String>> {
    let Some(test_id) = status.test_id.as_deref() else {
        return Ok(Err("status.testId is missing".into()));
    };
    let key = match status.session_token_sha256.as_deref() {
        None => {
            return Ok(Err(format!(
                "{TOKEN_FIELD} is missing (the test was started by an operator that did not record it), so no reconnecting worker can be verified"
            )));
        }
        Some(hex) => match SessionKey::from_sha256_hex(TOKEN_FIELD, hex) {
            Ok(key) => key,
            Err(e) => return Ok(Err(e.to_string())),
        },
    };
    // A plan in a ConfigMap (spec.planRef) is read again; a ConfigMap changed since the start
    // gives another plan, which the check below refuses.
    let inlined = match crate::planref::resolve(lt, ctx).await? {
        Ok(inlined) => inlined,
        Err(errors) => return Ok(Err(format!("spec.planRef: {}", problems(&errors)))),
    };
    let lt = &inlined;
    let budget = match &lt.spec.budget_ref {
        Some(r) => get_budget(lt, ctx, r).await?,
        None => None,
    };
    let found = lt.spec.budget_ref.as_ref().map(|_| match &budget {
        Some(rb) => crate::budget::Found::Budget(rb),
        None => crate::budget::Found::Missing,
    });
    let prepared = match prepare_on(
        lt,
        &ctx.config.defaults,
        found,
        ctx.config.default_redis.as_ref(),
    ) {
        Ok(p) => p,
        Err(errors) => {
            return Ok(Err(format!(
                "the spec no longer prepares into a plan: {}",
                problems(&errors)
            )));
        }
    };
    // The test data, read again from its ConfigMaps (a resuming worker asks for its Assign).
    let mut prepared = prepared;
    if let Err(errors) = crate::test_data::resolve(lt, ctx, &mut prepared).await? {
        return Ok(Err(format!("spec.data: {}", problems(&errors))));
    }
    if prepared.test_id != test_id {
        return Ok(Err(format!(
            "status.testId {test_id:?} is not this LoadTest's ({:?})",
            prepared.test_id
        )));
    }
    let recorded = status.plan_sha256.as_deref();
    if recorded.is_none() || recorded != plan_sha256(&prepared).as_deref() {
        return Ok(Err(
            "the plan is not the one its workers run (status.planSha256: spec.plan, spec.workers, the RateBudget or a test data ConfigMap changed since the start)"
                .into(),
        ));
    }
    Ok(Ok((prepared, key)))
}

fn problems(errors: &[pacer_plan::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The test cannot be resumed: Failed with `why`, and its workers deleted whatever the
/// cleanup policy (nobody can verify them, so nobody may let them send).
pub(super) async fn cannot_resume(lt: &LoadTest, ctx: &Context, why: &str) -> Result<Action> {
    let message = messages::cannot_resume(why);
    let mut s = failed_status(lt, Reason::ControllerRestarted, message.clone(), &message);
    s.cleaned_up = delete_workers(lt, ctx).await?;
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    tracing::warn!(test = ?status_test_id(lt), "{message}");
    event(
        ctx,
        lt,
        EventType::Warning,
        Reason::ControllerRestarted,
        message,
    )
    .await;
    Ok(ttl_action(lt, &s))
}

fn status_test_id(lt: &LoadTest) -> Option<&str> {
    lt.status.as_ref().and_then(|s| s.test_id.as_deref())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::plan_sha256;
    use crate::crd::LoadTest;
    use crate::prepare::{Defaults, Prepared, prepare};

    fn with_rows(prepared: &Prepared, csv: &str) -> Prepared {
        let mut plan = (*prepared.plan).clone();
        pacer_plan::data::attach(&mut plan, vec![("users".into(), csv.into())]).expect("attach");
        Prepared {
            plan: Arc::new(plan),
            ..prepared.clone()
        }
    }

    #[test]
    fn the_resume_hash_covers_the_test_data_as_sent() {
        let lt: LoadTest = serde_json::from_value(json!({
            "apiVersion": "pacer.dev/v1alpha1",
            "kind": "LoadTest",
            "metadata": {"name": "t", "namespace": "ns", "uid": "0f3a-9b2c"},
            "spec": {
                "workers": 2,
                "data": {"users": {"configMap": "t-data-users", "key": "users.csv"}},
                "plan": {
                    "name": "t",
                    "target": "http://127.0.0.1:9",
                    "duration": "1s",
                    "data": {"users": {"file": "users.csv", "mode": "unique"}},
                    "scenarios": [{
                        "name": "s",
                        "executor": "constant-arrival-rate",
                        "rate": "1/s",
                        "requests": [{"name": "r", "path": "/u/{{data.users.id}}"}]
                    }]
                }
            }
        }))
        .expect("loadtest");
        let prepared = prepare(&lt, &Defaults::default()).expect("prepared");
        let a = plan_sha256(&with_rows(&prepared, "id\n1\n2\n"));
        assert!(a.is_some());
        assert_eq!(a, plan_sha256(&with_rows(&prepared, "id\n1\n2\n")));
        assert_ne!(a, plan_sha256(&with_rows(&prepared, "id\n1\n3\n")));
        assert_ne!(a, plan_sha256(&prepared));
    }
}
