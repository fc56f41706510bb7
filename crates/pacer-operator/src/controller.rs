//! The reconciler's front door (kube-rs/controller-rs style): the [`Context`] every reconcile
//! shares (the client, the runs in memory, metrics, the Event reporter), [`reconcile`] wrapped
//! in `finalizer()`, a caught panic turned into a Failed LoadTest ([`reconcile_guarded`]), an
//! [`error_policy`] that logs, counts and requeues, and [`run`], which watches LoadTests (in
//! every namespace, or in those given).
//!
//! What a reconcile does by phase is the phase machine in `phases`; its calls to the
//! API server are in `api`, its words in `messages`, the verdict of a test
//! that ended in [`crate::verdict`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::OperatorConfig;
use crate::crd::{FINALIZER, LoadTest};
use crate::metrics::Metrics;
use crate::phases::{self, internal_error};
use crate::prepare::Prepared;
use crate::runner::{RunHandle, StartError, TestRunner};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "pacer-operator";

/// Why a reconcile failed (logged with its causes by [`error_policy`], then retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a Kubernetes API call failed")]
    Kube(#[from] kube::Error),
    #[error("the finalizer could not be handled")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the LoadTest has no namespace")]
    MissingNamespace,
    #[error("cannot start the test")]
    Runner(#[from] StartError),
    /// The Job's name is taken (an earlier LoadTest of this name still being deleted?): the
    /// reconcile is retried until it is free.
    #[error(
        "a Job named {job} already exists (an earlier LoadTest of this name still being deleted?); retrying"
    )]
    JobExists {
        job: String,
        #[source]
        source: kube::Error,
    },
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
    /// What every status write records for an operator that restarts to resume the run:
    /// the session token's SHA-256 and the plan's (written again with each status, so a write
    /// from a stale copy of the LoadTest never drops them).
    pub(crate) record: crate::phases::Record,
    /// Taken over after a restart (`phases::resume`): its live numbers are written only once
    /// every worker is back or lost, so the status never goes backwards.
    pub resumed: bool,
}

impl Context {
    /// Hold a test this operator now runs (started here, or taken over by `phases::resume`)
    /// and count it started: the one place a run enters `runs`.
    pub(crate) fn hold(
        &self,
        uid: String,
        handle: Arc<dyn RunHandle>,
        prepared: &Prepared,
        record: crate::phases::Record,
        resumed: bool,
    ) {
        self.runs.lock().insert(
            uid,
            RunEntry {
                handle,
                prepared: prepared.clone(),
                // A resumed run writes nothing until its workers are back (running.rs).
                last_write: Some(Instant::now()),
                stopping: None,
                record,
                resumed,
            },
        );
        self.metrics.started();
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub runner: Arc<dyn TestRunner>,
    /// Running tests by LoadTest uid.
    pub runs: Mutex<HashMap<String, RunEntry>>,
    pub metrics: Arc<Metrics>,
    /// Each running test's last published figures, for `/metrics`.
    pub board: crate::loadtest_metrics::Board,
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
            board: Default::default(),
            reporter,
            ready: AtomicBool::new(false),
        }
    }

    /// The uids of the running tests (for /metrics).
    pub fn running_uids(&self) -> std::collections::HashSet<String> {
        self.runs.lock().keys().cloned().collect()
    }

    /// Handles of the running tests.
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
            Finalizer::Apply(lt) => phases::apply(lt, ctx.clone()).await,
            Finalizer::Cleanup(lt) => phases::cleanup(lt, ctx.clone()).await,
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

/// Log, count, retry a little later.
pub fn error_policy(lt: Arc<LoadTest>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(
        loadtest = %lt.name_any(),
        namespace = lt.namespace().unwrap_or_default(),
        "reconcile failed: {}",
        causes(error)
    );
    ctx.metrics.failed();
    Action::requeue(Duration::from_secs(5))
}

/// The key of a LoadTest's run in [`Context::runs`].
pub(crate) fn uid(lt: &LoadTest) -> String {
    lt.metadata.uid.clone().unwrap_or_else(|| lt.name_any())
}

/// An error and its causes on one line, outermost first, each cause once: kube's own errors
/// name their source in their message too, so a cause whose text is already there is not
/// repeated (the rule of the CLI's `exit::error_text`).
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in std::iter::successors(Some(error), |e| e.source()) {
        let s = cause.to_string();
        if text.contains(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    text
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
                        Err(e) => tracing::debug!("reconcile: {}", causes(&e)),
                    }
                })
                .await;
        }
    });
    // RateBudgets beside them (budget_status.rs): their status, their finalizer.
    let budgets = crate::budget_status::run(ctx.clone(), shutdown.clone());
    futures::future::join(futures::future::join_all(controllers), budgets).await;
    // What still runs is left to the next operator (a restart, an upgrade, the standby): the
    // workers keep their shards running and reconnect to it, which verifies them against the
    // status and resumes the test (phases::resume). Aborting them here would end the test.
    for (id, _) in ctx.running() {
        tracing::warn!("operator stopping: test {id} keeps running; the next operator resumes it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_logged_with_its_causes_each_once() {
        let status =
            kube::core::Status::failure("jobs.batch \"t-workers\" already exists", "AlreadyExists")
                .with_code(409);
        let e = Error::JobExists {
            job: "t-workers".into(),
            source: kube::Error::Api(Box::new(status)),
        };
        let text = causes(&e);
        assert!(
            text.starts_with("a Job named t-workers already exists"),
            "{text}"
        );
        assert!(
            text.contains("AlreadyExists") || text.contains("already exists"),
            "{text}"
        );
        let runner = Error::from(StartError::Refused("no coordinator for you".into()));
        assert_eq!(
            causes(&runner),
            "cannot start the test: the test runner refused the run: no coordinator for you"
        );
    }

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
