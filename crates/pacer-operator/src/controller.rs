//! The reconciler (kube-rs/controller-rs style): `reconcile` wrapped in `finalizer()`, an
//! `error_policy` that logs, counts and requeues, and [`run`] which watches LoadTests (in every
//! namespace, or in those given).
//!
//! Per phase (the status is the record; the live run is in memory, in [`Context`]):
//! - new: check the spec (pacer-plan's validation, fields named `spec.plan.…`); invalid ends in
//!   Failed with a `Valid=False` condition naming the field. Valid: start the test's
//!   coordinator, create the session Secret and the Indexed Job of workers -> Starting.
//! - Starting: workers connect; while some are missing, their pods say why (WorkersReady).
//!   Every worker ready -> the coordinator starts them together -> Running. Not all of them
//!   within `startTimeout` -> Failed, naming each missing worker's problem.
//! - Running: the status is written every `status_interval` (server-side apply on the status
//!   subresource): progress, RPS, p50/p95/p99, errors, 429s, time throttled, thresholds,
//!   per-worker health.
//! - end: the report goes into a ConfigMap; Succeeded (every threshold passed), Failed
//!   (thresholds, or the run failed), Aborted (`suspend: true`); the cleanup policy deletes
//!   the workers; the TTL deletes the LoadTest.
//! - deletion (the finalizer): the workers are stopped and deleted; the phase is Aborted.
//!
//! Every transition is also an Event on the LoadTest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;

use crate::OperatorConfig;
use crate::crd::{CleanupPolicy, FINALIZER, LoadTest, LoadTestStatus, Phase, ReportRef};
use crate::diagnose::explain_missing;
use crate::metrics::Metrics;
use crate::prepare::{Prepared, prepare};
use crate::resources::{self, names};
use crate::runner::{RunEnd, RunHandle, RunSpec, TestRunner};
use crate::status::{
    COND_COMPLETE, COND_SUSPENDED, COND_VALID, COND_WORKERS_READY, apply_live, now,
    remove_condition, set_condition, worker_counts,
};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "pacer-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the LoadTest has no namespace")]
    MissingNamespace,
    #[error("cannot start the test: {0}")]
    Runner(String),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A test running in this operator.
pub struct RunEntry {
    pub handle: Arc<dyn RunHandle>,
    pub prepared: Prepared,
    /// The last status write (writes are paced).
    pub last_write: Option<Instant>,
    /// Why it is being stopped (suspend), once asked.
    pub stopping: Option<String>,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub runner: Arc<dyn TestRunner>,
    /// Running tests by LoadTest uid.
    pub runs: Mutex<HashMap<String, RunEntry>>,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    /// The LoadTest API answered: the operator is ready.
    pub ready: AtomicBool,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        runner: Arc<dyn TestRunner>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: config.instance.clone(),
        };
        Self {
            client,
            config,
            runner,
            runs: Mutex::new(HashMap::new()),
            metrics,
            reporter,
            ready: AtomicBool::new(false),
        }
    }

    /// Handles of the running tests (for /metrics).
    pub fn running(&self) -> Vec<(String, Arc<dyn RunHandle>)> {
        self.runs
            .lock()
            .values()
            .map(|r| (r.prepared.test_id.clone(), r.handle.clone()))
            .collect()
    }
}

/// The reconcile entry point.
pub async fn reconcile(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.metrics.reconciled();
    finalizer(&api, FINALIZER, lt, |event| async {
        match event {
            Finalizer::Apply(lt) => apply(lt, ctx.clone()).await,
            Finalizer::Cleanup(lt) => cleanup(lt, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// [`reconcile`] with a panic caught: one LoadTest that trips a bug ends Failed with the
/// reason (`InternalError`) instead of taking the operator down, and with it every other
/// test, then hitting the same LoadTest again on every restart. The reconcile future is
/// polled inside the kube runtime's stream (not spawned), so nothing else would catch it.
pub async fn reconcile_guarded(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    match caught(reconcile(lt.clone(), ctx.clone())).await {
        Ok(result) => result,
        Err(what) => {
            tracing::error!(
                loadtest = %lt.name_any(),
                namespace = lt.namespace().unwrap_or_default(),
                "reconcile panicked: {what}; the LoadTest is marked Failed"
            );
            ctx.metrics.failed();
            internal_error(&lt, &ctx, &what).await
        }
    }
}

/// The longest panic message kept in a status (a bug's message, not user data, but
/// bounded all the same).
const MAX_PANIC_MESSAGE_CHARS: usize = 300;

/// The future's output, or the message of its panic.
async fn caught<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    };
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_PANIC_MESSAGE_CHARS)
        .collect()
}

/// After a panic: stop what this LoadTest runs and end it Failed, so it is not reconciled
/// into the same panic again (a changed spec is checked again, as for an invalid one).
async fn internal_error(lt: &LoadTest, ctx: &Context, what: &str) -> Result<Action> {
    if let Some(run) = ctx.runs.lock().remove(&uid(lt)) {
        run.handle.abort("the operator failed on this LoadTest");
    }
    let message = format!("the operator failed on this LoadTest (a bug, please report it): {what}");
    let mut s = base_status(lt);
    s.phase = Some(Phase::Failed);
    s.message = Some(message.clone());
    s.completion_time = Some(now());
    set_condition(
        &mut s.conditions,
        COND_VALID,
        false,
        "InternalError",
        &message,
        lt.metadata.generation,
    );
    set_condition(
        &mut s.conditions,
        COND_COMPLETE,
        true,
        "InternalError",
        &message,
        lt.metadata.generation,
    );
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    event(ctx, lt, EventType::Warning, "InternalError", message).await;
    Ok(Action::await_change())
}

/// Log, count, retry a little later.
pub fn error_policy(lt: Arc<LoadTest>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(
        loadtest = %lt.name_any(),
        namespace = lt.namespace().unwrap_or_default(),
        "reconcile failed: {error}"
    );
    ctx.metrics.failed();
    Action::requeue(Duration::from_secs(5))
}

fn uid(lt: &LoadTest) -> String {
    lt.metadata.uid.clone().unwrap_or_else(|| lt.name_any())
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

async fn apply(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let mut phase = lt.phase();
    if phase.is_some_and(Phase::is_terminal) {
        if !spec_fixed(&lt) {
            return ended(&lt, &ctx).await;
        }
        phase = None;
    }
    let prepared = match prepare(&lt, &ctx.config.defaults) {
        Ok(p) => p,
        Err(errors) => return invalid(&lt, &ctx, &errors).await,
    };
    let running = ctx.runs.lock().contains_key(&uid(&lt));
    match (phase, running) {
        (None | Some(Phase::Pending), false) => {
            if lt.spec.suspend {
                suspended_before_start(&lt, &ctx).await
            } else {
                start(&lt, &ctx, prepared).await
            }
        }
        (Some(Phase::Starting | Phase::Running), false) => lost_session(&lt, &ctx).await,
        _ => progress(&lt, &ctx).await,
    }
}

/// The status to write next: the current one, with the generation seen.
fn base_status(lt: &LoadTest) -> LoadTestStatus {
    let mut s = lt.status.clone().unwrap_or_default();
    s.observed_generation = lt.metadata.generation;
    s
}

async fn write_status(lt: &LoadTest, ctx: &Context, status: &LoadTestStatus) -> Result<()> {
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), &ns);
    let apply = |status: &LoadTestStatus| {
        let patch = json!({
            "apiVersion": "pacer.dev/v1alpha1",
            "kind": "LoadTest",
            "status": status,
        });
        let api = api.clone();
        let name = lt.name_any();
        async move {
            api.patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        }
    };
    match apply(status).await {
        Ok(_) => Ok(()),
        // Too large with the spec it sits beside: once more without the per-worker rows.
        Err(e) if crate::sizes::is_too_large(&e) => {
            tracing::warn!(loadtest = %lt.name_any(), "status refused as too large ({e}): writing it without per-worker rows");
            apply(&crate::sizes::slim_status(status)).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Publish an Event on the LoadTest (a failure to do so is logged, not fatal).
async fn event(ctx: &Context, lt: &LoadTest, type_: EventType, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let note: String = note.chars().take(1000).collect();
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &lt.object_ref(&())).await {
        tracing::warn!(loadtest = %lt.name_any(), "cannot publish event {reason}: {e}");
    }
}

async fn invalid(
    lt: &LoadTest,
    ctx: &Context,
    errors: &[pacer_plan::FieldError],
) -> Result<Action> {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut s = base_status(lt);
    s.phase = Some(Phase::Failed);
    s.message = Some(format!("invalid spec: {message}"));
    set_condition(
        &mut s.conditions,
        COND_VALID,
        false,
        "InvalidSpec",
        &message,
        lt.metadata.generation,
    );
    set_condition(
        &mut s.conditions,
        COND_COMPLETE,
        true,
        "InvalidSpec",
        "the spec is not valid: nothing was started",
        lt.metadata.generation,
    );
    s.completion_time = Some(now());
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    event(ctx, lt, EventType::Warning, "InvalidSpec", message).await;
    Ok(Action::await_change())
}

async fn suspended_before_start(lt: &LoadTest, ctx: &Context) -> Result<Action> {
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
    s.message = Some("suspended: set spec.suspend to false to start".into());
    set_condition(
        &mut s.conditions,
        COND_VALID,
        true,
        "Valid",
        "",
        lt.metadata.generation,
    );
    set_condition(
        &mut s.conditions,
        COND_SUSPENDED,
        true,
        "Suspended",
        "spec.suspend is true",
        lt.metadata.generation,
    );
    write_status(lt, ctx, &s).await?;
    event(
        ctx,
        lt,
        EventType::Normal,
        "Suspended",
        "created suspended: waiting for spec.suspend: false".into(),
    )
    .await;
    Ok(Action::await_change())
}

fn random_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

async fn start(lt: &LoadTest, ctx: &Context, prepared: Prepared) -> Result<Action> {
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    let names = names(lt);
    let token = random_token();
    let handle = ctx
        .runner
        .start(RunSpec {
            test_id: prepared.test_id.clone(),
            session_token: token.clone(),
            plan: prepared.plan.clone(),
            workers: prepared.workers,
            wait_for_workers: prepared.start_timeout,
        })
        .map_err(Error::Runner)?;
    let created = create_workers(lt, ctx, &ns, &prepared, &token).await;
    if let Err(e) = created {
        handle.abort("the worker pods could not be created");
        return Err(e);
    }
    ctx.runs.lock().insert(
        uid(lt),
        RunEntry {
            handle,
            prepared: prepared.clone(),
            last_write: Some(Instant::now()),
            stopping: None,
        },
    );
    ctx.metrics.started();
    let mut s = base_status(lt);
    s.phase = Some(Phase::Starting);
    s.test_id = Some(prepared.test_id.clone());
    s.message = Some(format!(
        "waiting for {} workers to connect (up to {}s)",
        prepared.workers,
        prepared.start_timeout.as_secs()
    ));
    s.workers = Some(worker_counts(prepared.workers, 0, 0));
    s.start_time = Some(now());
    s.completion_time = None;
    remove_condition(&mut s.conditions, COND_COMPLETE);
    set_condition(
        &mut s.conditions,
        COND_VALID,
        true,
        "Valid",
        "",
        lt.metadata.generation,
    );
    remove_condition(&mut s.conditions, COND_SUSPENDED);
    set_condition(
        &mut s.conditions,
        COND_WORKERS_READY,
        false,
        "Starting",
        &format!("0/{} workers connected", prepared.workers),
        lt.metadata.generation,
    );
    write_status(lt, ctx, &s).await?;
    event(
        ctx,
        lt,
        EventType::Normal,
        "Starting",
        format!(
            "test {}: created Job {} with {} worker pods; waiting for them to connect (up to {}s)",
            prepared.test_id,
            names.job,
            prepared.workers,
            prepared.start_timeout.as_secs()
        ),
    )
    .await;
    Ok(Action::requeue(ctx.config.status_interval))
}

async fn create_workers(
    lt: &LoadTest,
    ctx: &Context,
    ns: &str,
    prepared: &Prepared,
    token: &str,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = resources::session_secret(lt, &prepared.test_id, token, &ctx.config);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Left by an earlier attempt for this very LoadTest (the name holds its uid):
            // its token is unknown here, so replace it.
            let name = names(lt).secret;
            secrets.delete(&name, &DeleteParams::default()).await?;
            secrets.create(&PostParams::default(), &secret).await?;
        }
        Err(e) => return Err(e.into()),
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let job = resources::worker_job(lt, prepared, &ctx.config);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict(format!(
            "a Job named {} already exists (an earlier LoadTest of this name still being deleted?); retrying",
            names(lt).job
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The operator restarted while the test ran: the session lived in its memory only.
async fn lost_session(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let message = "the controller restarted while the test ran; the test's session lived in its memory and is lost: run the test again";
    let mut s = base_status(lt);
    s.phase = Some(Phase::Failed);
    s.message = Some(message.into());
    s.completion_time = Some(now());
    set_condition(
        &mut s.conditions,
        COND_COMPLETE,
        true,
        "ControllerRestarted",
        message,
        lt.metadata.generation,
    );
    let cleaned = cleanup_due(lt, Phase::Failed) && delete_workers(lt, ctx).await?;
    s.cleaned_up = cleaned;
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(Phase::Failed);
    event(
        ctx,
        lt,
        EventType::Warning,
        "ControllerRestarted",
        message.into(),
    )
    .await;
    Ok(ttl_action(lt, &s))
}

async fn progress(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let key = uid(lt);
    let (handle, prepared, last_write, stopping) = {
        let mut runs = ctx.runs.lock();
        let Some(run) = runs.get_mut(&key) else {
            return Ok(Action::requeue(ctx.config.status_interval));
        };
        if lt.spec.suspend && run.stopping.is_none() {
            run.stopping = Some("suspended (spec.suspend: true)".into());
            run.handle.stop("suspended (spec.suspend: true)");
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
    let next_phase = if live.started {
        Phase::Running
    } else {
        Phase::Starting
    };
    let interval = ctx.config.status_interval;
    let due = last_write.is_none_or(|t| t.elapsed() >= interval);
    if next_phase == phase && !due {
        let wait = last_write.map_or(interval, |t| interval.saturating_sub(t.elapsed()));
        return Ok(Action::requeue(wait.max(Duration::from_millis(100))));
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
        let message = if missing.is_empty() {
            format!("{}/{} workers connected", live.connected, prepared.workers)
        } else {
            let pods = list_pods(lt, ctx, &prepared.test_id).await?;
            format!(
                "{}/{} workers connected; {}",
                live.connected,
                prepared.workers,
                explain_missing(&pods, &missing, &names(lt).job)
            )
        };
        s.message = Some(message.clone());
        set_condition(
            &mut s.conditions,
            COND_WORKERS_READY,
            false,
            "Starting",
            &message,
            lt.metadata.generation,
        );
    } else {
        s.message = Some(match &stopping {
            Some(r) => format!("stopping: {r}"),
            None => "running".into(),
        });
        set_condition(
            &mut s.conditions,
            COND_WORKERS_READY,
            true,
            "Started",
            &format!("{} workers started together", prepared.workers),
            lt.metadata.generation,
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
            "Running",
            format!(
                "all {} workers started together; the plan runs for up to {}s",
                prepared.workers,
                prepared.plan.max_duration().as_secs()
            ),
        )
        .await;
    }
    Ok(Action::requeue(interval))
}

async fn list_pods(lt: &LoadTest, ctx: &Context, test_id: &str) -> Result<Vec<Pod>> {
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={test_id}", resources::LABEL_TEST_ID);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

fn cleanup_due(lt: &LoadTest, phase: Phase) -> bool {
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

/// Delete the Job (its pods with it) and the session Secret; absent ones are fine.
async fn delete_workers(lt: &LoadTest, ctx: &Context) -> Result<bool> {
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    let names = names(lt);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    ignore_missing(jobs.delete(&names.job, &dp).await.map(|_| ()))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    ignore_missing(
        secrets
            .delete(&names.secret, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    Ok(true)
}

fn ignore_missing(r: std::result::Result<(), kube::Error>) -> Result<()> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other.map_err(Error::from),
    }
}

async fn finish(
    lt: &LoadTest,
    ctx: &Context,
    prepared: &Prepared,
    end: RunEnd,
    stopping: Option<String>,
) -> Result<Action> {
    let mut s = base_status(lt);
    s.completion_time = Some(now());
    let (phase, reason, message, event_type) = match end {
        RunEnd::Finished(result) => {
            apply_live(&mut s, &result.stats, prepared.workers);
            let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            // Within the ConfigMap's size limit; one still refused as too large is replaced by
            // a short one once (sizes.rs), never retried as is.
            let stored =
                crate::sizes::apply_report(&cms, lt, &prepared.test_id, &result.text, &result.json)
                    .await?;
            s.report = stored.then(|| ReportRef {
                config_map: names(lt).report,
                text_key: resources::REPORT_TEXT_KEY.into(),
                json_key: resources::REPORT_JSON_KEY.into(),
            });
            // The same rule as the summary's verdict (pacer_stats::Verdict): a threshold
            // without data, or a run without a single request, fails and says so.
            let verdict = pacer_stats::Verdict::from_results(
                &result.stats.thresholds,
                result.stats.requests > 0,
            );
            if let Some(r) = &stopping {
                (
                    Phase::Aborted,
                    "Aborted",
                    format!("stopped: {r}"),
                    EventType::Warning,
                )
            } else if let Some(f) = &result.failure {
                (Phase::Failed, "RunFailed", f.clone(), EventType::Warning)
            } else if result.passed {
                (
                    Phase::Succeeded,
                    "Succeeded",
                    format!(
                        "every threshold passed: {} requests in {:.0}s",
                        result.stats.requests,
                        result.stats.elapsed.as_secs_f64()
                    ),
                    EventType::Normal,
                )
            } else {
                let mut reasons = verdict.reasons;
                let stopped = result.abort_reason.iter();
                reasons.extend(stopped.map(|a| format!("stopped early: {a}")));
                let m = format!("verdict failed: {}", reasons.join("; "));
                (Phase::Failed, "ThresholdsFailed", m, EventType::Warning)
            }
        }
        RunEnd::WorkersMissing {
            expected,
            connected,
            missing,
            ..
        } => {
            let pods = list_pods(lt, ctx, &prepared.test_id).await?;
            let why = explain_missing(&pods, &missing, &names(lt).job);
            let m = format!(
                "{connected} of {expected} workers connected within {}s; {why}",
                prepared.start_timeout.as_secs()
            );
            set_condition(
                &mut s.conditions,
                COND_WORKERS_READY,
                false,
                "WorkersMissing",
                &m,
                lt.metadata.generation,
            );
            s.workers = Some(worker_counts(expected, connected, 0));
            (Phase::Failed, "WorkersMissing", m, EventType::Warning)
        }
        RunEnd::Stopped(reason) => (
            Phase::Aborted,
            "Aborted",
            format!("stopped before the start: {reason}"),
            EventType::Warning,
        ),
        RunEnd::Error(e) => (Phase::Failed, "RunFailed", e, EventType::Warning),
    };
    ctx.runs.lock().remove(&uid(lt));
    s.phase = Some(phase);
    s.message = Some(message.clone());
    set_condition(
        &mut s.conditions,
        COND_COMPLETE,
        true,
        reason,
        &message,
        lt.metadata.generation,
    );
    if cleanup_due(lt, phase) {
        s.cleaned_up = delete_workers(lt, ctx).await?;
    }
    write_status(lt, ctx, &s).await?;
    ctx.metrics.ended(phase);
    event(ctx, lt, event_type, reason, message).await;
    Ok(ttl_action(lt, &s))
}

/// Requeue for the TTL, if there is one.
fn ttl_action(lt: &LoadTest, s: &LoadTestStatus) -> Action {
    match ttl_remaining(lt, s) {
        Some(d) => Action::requeue(d.max(Duration::from_secs(1))),
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
async fn ended(lt: &LoadTest, ctx: &Context) -> Result<Action> {
    let status = lt.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::Failed);
    if status.test_id.is_some() && !status.cleaned_up && cleanup_due(lt, phase) {
        let mut s = base_status(lt);
        s.cleaned_up = delete_workers(lt, ctx).await?;
        write_status(lt, ctx, &s).await?;
    }
    match ttl_remaining(lt, &status) {
        Some(d) if d.is_zero() => {
            let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
            let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), &ns);
            ignore_missing(
                api.delete(&lt.name_any(), &DeleteParams::background())
                    .await
                    .map(|_| ()),
            )?;
            tracing::info!(loadtest = %lt.name_any(), "deleted: ttlSecondsAfterFinished passed");
            Ok(Action::await_change())
        }
        Some(d) => Ok(Action::requeue(d)),
        None => Ok(Action::await_change()),
    }
}

/// The LoadTest is being deleted: stop and delete its workers; Aborted if it was running.
async fn cleanup(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action> {
    let run = ctx.runs.lock().remove(&uid(&lt));
    let was_running = run.is_some();
    if let Some(run) = run {
        run.handle.abort("the LoadTest was deleted");
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
        s.message = Some("the LoadTest was deleted while it ran".into());
        s.completion_time = Some(now());
        s.cleaned_up = true;
        set_condition(
            &mut s.conditions,
            COND_COMPLETE,
            true,
            "Deleted",
            "the LoadTest was deleted while it ran",
            lt.metadata.generation,
        );
        write_status(&lt, &ctx, &s).await?;
        ctx.metrics.ended(Phase::Aborted);
        event(
            &ctx,
            &lt,
            EventType::Warning,
            "Aborted",
            "the LoadTest was deleted: its workers were stopped and deleted".into(),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Watch LoadTests and reconcile them until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: tokio_util::sync::CancellationToken) -> Result<()> {
    // By metadata: one LoadTest the operator cannot read never hides the others (lenient.rs).
    let apis: Vec<Api<crate::lenient::LoadTestMeta>> = if ctx.config.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    };
    for api in &apis {
        api.list(&ListParams::default().limit(1)).await.map_err(|e| {
            tracing::error!(
                "cannot list LoadTests ({e}): is the CRD installed (`pacer crd | kubectl apply -f -`) and may this service account list them?"
            );
            Error::Kube(e)
        })?;
    }
    ctx.ready.store(true, Ordering::Release);
    let controllers = apis.into_iter().map(|api| {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            Controller::new(api, watcher::Config::default().any_semantic())
                .graceful_shutdown_on(async move { shutdown.cancelled().await })
                .run(
                    crate::lenient::reconcile_meta,
                    crate::lenient::error_policy_meta,
                    ctx,
                )
                .for_each(|r| async move {
                    match r {
                        Ok((obj, _)) => tracing::debug!("reconciled {}", obj.name),
                        Err(e) => tracing::debug!("reconcile: {e}"),
                    }
                })
                .await;
        }
    });
    futures::future::join_all(controllers).await;
    // Stop what still runs: the workers keep trying to reconnect for a while, then give up.
    for (id, handle) in ctx.running() {
        tracing::warn!("operator stopping: aborting test {id}");
        handle.abort("the controller is shutting down");
    }
    Ok(())
}

/// Kubernetes' verdict on a Phase, for the CLI.
pub fn exit_code_of(phase: Phase, thresholds_failed: bool) -> u8 {
    match phase {
        Phase::Succeeded => 0,
        Phase::Failed if thresholds_failed => 99,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_reconcile_is_caught_with_its_message() {
        let ok = caught(async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let overflow = caught(async {
            let d = std::hint::black_box(Duration::MAX);
            d + Duration::from_secs(1)
        })
        .await;
        assert!(
            overflow.as_ref().is_err_and(|m| m.contains("overflow")),
            "{overflow:?}"
        );
        let long = caught(async { panic!("{}", "x\n".repeat(1000)) }).await;
        let m = long.unwrap_err();
        assert!(m.chars().count() <= MAX_PANIC_MESSAGE_CHARS && !m.contains('\n'));
    }
}
