//! The operator's calls to the Kubernetes API, apart from the phase machine that decides them
//! ([`crate::phases`]): the status written with server-side apply (slimmed once when refused
//! as too large), Events, the worker pods listed for a diagnosis, the session Secret and the
//! Job created and deleted, the LoadTest deleted at its TTL. The reconcile tests' scripted
//! API server checks these calls in order, so a phase calls them in the order it needs.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::controller::{Context, Error, MANAGER, Result};
use crate::crd::{LoadTest, LoadTestStatus, ReportRef};
use crate::diagnose::explain_missing;
use crate::prepare::Prepared;
use crate::reason::Reason;
use crate::resources::{self, names};

/// The longest Event note kept, in characters: Kubernetes caps an Event's note at 1 kB, and
/// the note is for a person reading `kubectl describe`, the status holds the rest.
const MAX_EVENT_NOTE_CHARS: usize = 1000;

/// The API of `K` in `lt`'s namespace.
fn namespaced<K>(lt: &LoadTest, ctx: &Context) -> Result<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    Ok(Api::namespaced(ctx.client.clone(), &ns))
}

/// The RateBudget `r` names, in the LoadTest's namespace (`None`: there is none; a reference
/// to another namespace is not looked up, crate::budget refuses it).
pub(crate) async fn get_budget(
    lt: &LoadTest,
    ctx: &Context,
    r: &crate::ratebudget::BudgetRef,
) -> Result<Option<crate::ratebudget::RateBudget>> {
    let ns = lt.namespace().ok_or(Error::MissingNamespace)?;
    if r.namespace.as_deref().is_some_and(|n| n != ns) {
        return Ok(None);
    }
    let api: Api<crate::ratebudget::RateBudget> = namespaced(lt, ctx)?;
    Ok(api.get_opt(&r.name).await?)
}

/// The ConfigMap of `spec.planRef`, in the LoadTest's namespace (`None`: there is none).
pub(crate) async fn get_plan_config_map(
    lt: &LoadTest,
    ctx: &Context,
    r: &crate::crd::PlanRef,
) -> Result<Option<ConfigMap>> {
    let api: Api<ConfigMap> = namespaced(lt, ctx)?;
    Ok(api.get_opt(&r.name).await?)
}

/// Write the status (server-side apply on the status subresource, forcing the operator's
/// fields).
pub(crate) async fn write_status(
    lt: &LoadTest,
    ctx: &Context,
    status: &LoadTestStatus,
) -> Result<()> {
    let api: Api<LoadTest> = namespaced(lt, ctx)?;
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
pub(crate) async fn event(
    ctx: &Context,
    lt: &LoadTest,
    type_: EventType,
    reason: Reason,
    note: String,
) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let note: String = note.chars().take(MAX_EVENT_NOTE_CHARS).collect();
    let ev = KubeEvent {
        type_,
        reason: reason.as_str().into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &lt.object_ref(&())).await {
        tracing::warn!(loadtest = %lt.name_any(), "cannot publish event {reason}: {e}");
    }
}

/// Why the workers `missing` (by index) have not connected, as their pods (found by the
/// test-id label) say ([`explain_missing`]).
pub(crate) async fn why_missing(
    lt: &LoadTest,
    ctx: &Context,
    test_id: &str,
    missing: &[u32],
) -> Result<String> {
    let pods: Api<Pod> = namespaced(lt, ctx)?;
    let selector = format!("{}={test_id}", resources::LABEL_TEST_ID);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    Ok(explain_missing(&pods, missing, &names(lt).job))
}

/// Store a finished test's report in its ConfigMap, within the ConfigMap's size limit (one
/// still refused as too large is replaced by a short one once, never retried as is:
/// `sizes.rs`); the status's reference to it, or `None` when none could be stored.
pub(crate) async fn store_report(
    lt: &LoadTest,
    ctx: &Context,
    test_id: &str,
    text: &str,
    json: &str,
) -> Result<Option<ReportRef>> {
    let cms: Api<ConfigMap> = namespaced(lt, ctx)?;
    let stored = crate::sizes::apply_report(&cms, lt, test_id, text, json).await?;
    Ok(stored.then(|| ReportRef {
        config_map: names(lt).report,
        text_key: resources::REPORT_TEXT_KEY.into(),
        json_key: resources::REPORT_JSON_KEY.into(),
    }))
}

/// Store a finished test's run data (`pacer report NAME --html`) in its chunk ConfigMaps
/// (run_data.rs); data too large is logged and left out.
pub(crate) async fn store_run_data(
    lt: &LoadTest,
    ctx: &Context,
    test_id: &str,
    data: &crate::run_data::RunData,
) -> Result<()> {
    let cms: Api<ConfigMap> = namespaced(lt, ctx)?;
    match crate::run_data::store(&cms, lt, test_id, data).await {
        Ok(_) => Ok(()),
        // Refused as too large: the verdict must not wait on it (the summary is stored).
        Err(e) if crate::sizes::is_too_large(&e) => {
            tracing::warn!(loadtest = %lt.name_any(), "the run data was refused as too large: {e}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Create the session Secret and the Indexed Job of workers.
pub(crate) async fn create_workers(
    lt: &LoadTest,
    ctx: &Context,
    prepared: &Prepared,
    token: &str,
) -> Result<()> {
    let secrets: Api<Secret> = namespaced(lt, ctx)?;
    let secret = resources::session_secret(lt, prepared, token, &ctx.config);
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
    let jobs: Api<Job> = namespaced(lt, ctx)?;
    let job = resources::worker_job(lt, prepared, &ctx.config);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => Ok(()),
        Err(source) if is_conflict(&source) => Err(Error::JobExists {
            job: names(lt).job,
            source,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Delete the Job (its pods with it) and the session Secret; absent ones are fine.
pub(crate) async fn delete_workers(lt: &LoadTest, ctx: &Context) -> Result<bool> {
    let names = names(lt);
    let jobs: Api<Job> = namespaced(lt, ctx)?;
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    ignore_missing(jobs.delete(&names.job, &dp).await.map(|_| ()))?;
    let secrets: Api<Secret> = namespaced(lt, ctx)?;
    ignore_missing(
        secrets
            .delete(&names.secret, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    Ok(true)
}

/// Delete the LoadTest itself (its TTL has passed); one already gone is fine.
pub(crate) async fn delete_loadtest(lt: &LoadTest, ctx: &Context) -> Result<()> {
    let api: Api<LoadTest> = namespaced(lt, ctx)?;
    ignore_missing(
        api.delete(&lt.name_any(), &DeleteParams::background())
            .await
            .map(|_| ()),
    )
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(e) if e.code == 409)
}

fn ignore_missing(r: std::result::Result<(), kube::Error>) -> Result<()> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other.map_err(Error::from),
    }
}
