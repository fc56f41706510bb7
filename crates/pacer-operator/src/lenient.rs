//! Why the operator watches LoadTests by their metadata: a list of full LoadTests is one JSON
//! document, and serde_json refuses the whole of it when one object inside nests deeper than
//! its recursion limit (128), which `spec.plan`'s free-form fields (request bodies, vars) let a
//! LoadTest author write and the API server accepts. The watcher would then retry that list
//! forever and see no LoadTest at all. Metadata never nests, so the list always reads; each
//! LoadTest is then read alone when it is reconciled, and one that cannot be read is marked
//! Failed on its own (and let go when deleted) while the others run.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

use crate::controller::{Context, Error, MANAGER, error_policy, reconcile_guarded};
use crate::crd::{FINALIZER, LoadTest, LoadTestSpec, Phase};
use crate::reason::Reason;
use crate::status::{COND_COMPLETE, COND_VALID, now};

/// What the controller watches.
pub type LoadTestMeta = PartialObjectMeta<LoadTest>;

/// Reconcile the LoadTest `meta` names: read it whole, then reconcile it; one that cannot
/// be read is marked Failed alone (`unreadable`).
pub async fn reconcile_meta(meta: Arc<LoadTestMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = meta.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_opt(&meta.name_any()).await {
        Ok(Some(lt)) => reconcile_guarded(Arc::new(lt), ctx).await,
        Ok(None) => Ok(Action::await_change()),
        Err(kube::Error::SerdeError(e)) => unreadable(&meta, &ctx, &e).await,
        Err(e) => Err(e.into()),
    }
}

/// [`error_policy`] for a LoadTest known by its metadata.
pub fn error_policy_meta(meta: Arc<LoadTestMeta>, error: &Error, ctx: Arc<Context>) -> Action {
    let lt = LoadTest {
        metadata: meta.metadata.clone(),
        spec: LoadTestSpec::default(),
        status: None,
    };
    error_policy(Arc::new(lt), error, ctx)
}

/// Why a LoadTest could not be read, without any of its content.
fn why(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("recursion limit exceeded") {
        format!(
            "it nests deeper than the {MAX_DEPTH} levels the operator reads (line {}, column {} of the API server's answer): flatten spec.plan",
            e.line(),
            e.column()
        )
    } else {
        format!(
            "it does not match the LoadTest schema ({:?} error at line {}, column {} of the API server's answer)",
            e.classify(),
            e.line(),
            e.column()
        )
    }
}

/// serde_json's recursion limit, which a LoadTest's JSON (object, spec, plan and all) must stay
/// under.
pub const MAX_DEPTH: usize = 128;

/// A LoadTest that cannot be read: its run, if one was started before the spec changed, is
/// aborted; it ends Failed with the reason, written without reading the object back; when it
/// is being deleted, the finalizer is let go (its Job and Secret, owned by it, go with it
/// through Kubernetes' garbage collector).
async fn unreadable(
    meta: &LoadTestMeta,
    ctx: &Context,
    e: &serde_json::Error,
) -> Result<Action, Error> {
    let ns = meta.namespace().ok_or(Error::MissingNamespace)?;
    let name = meta.name_any();
    let api: Api<LoadTest> = Api::namespaced(ctx.client.clone(), &ns);
    let request = kube::core::Request::new(api.resource_url());
    // A running test whose spec was edited into something unreadable: stop it, since nothing
    // could follow it any more.
    let uid = meta.uid().unwrap_or_default();
    let run = ctx.runs.lock().remove(&uid);
    if let Some(run) = run {
        run.handle.abort("the LoadTest can no longer be read");
    }
    let finalizers = meta.finalizers();
    if meta.metadata.deletion_timestamp.is_some() {
        REPORTED.lock().remove(&uid);
        if finalizers.iter().any(|f| f == FINALIZER) {
            let keep: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let patch = Patch::Merge(json!({"metadata": {"finalizers": keep}}));
            let req = request
                .patch(&name, &PatchParams::default(), &patch)
                .map_err(kube::Error::BuildRequest)?;
            ctx.client.request_text(req).await?;
        }
        return Ok(Action::await_change());
    }
    let message = format!("the operator cannot read this LoadTest: {}", why(e));
    // Writing the status changes the object, which brings it back here: once per generation.
    let generation = meta.metadata.generation.unwrap_or_default();
    if REPORTED.lock().get(&uid) == Some(&generation) {
        return Ok(Action::await_change());
    }
    tracing::warn!(loadtest = %name, namespace = %ns, "{message}");
    let condition = |type_: &str| Condition {
        type_: type_.into(),
        status: if type_ == COND_VALID { "False" } else { "True" }.into(),
        reason: Reason::Unreadable.to_string(),
        message: message.clone(),
        observed_generation: meta.metadata.generation,
        last_transition_time: now(),
    };
    let patch = json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "status": {
            "phase": Phase::Failed,
            "observedGeneration": meta.metadata.generation,
            "message": message,
            "conditions": [condition(COND_VALID), condition(COND_COMPLETE)],
            "completionTime": now(),
        }
    });
    let req = request
        .patch_subresource(
            "status",
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    ctx.client.request_text(req).await?;
    REPORTED.lock().insert(uid, generation);
    ctx.metrics.ended(Phase::Failed);
    Ok(Action::await_change())
}

/// Unreadable LoadTests already marked Failed: uid -> the generation marked.
static REPORTED: LazyLock<Mutex<HashMap<String, i64>>> = LazyLock::new(Mutex::default);
