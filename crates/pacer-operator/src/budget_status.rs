//! The RateBudget reconciler: every few seconds while tests use a budget (less often while
//! none does), its status says what the budget's Redis holds, read by
//! `pacer_limiter::fleet::status`: the rate used per limit (slots granted by every process of
//! the budget, whatever its test, laptops included), the processes beating, pauses in force,
//! the last 429; and which LoadTests refer to it.
//!
//! Which Redis is observed: one given by URL (the RateBudget's `spec.redis.url`, or the
//! operator's default: the chart's Redis, whose password-bearing URL reaches the operator pod
//! through a `secretKeyRef`, which needs no RBAC read of Secrets). A Redis whose URL is in a
//! Secret named by `spec.redis.secretRef` is not observed: the operator reads no Secret, and
//! the `Observed=False` condition says so. No URL's password is ever logged or shown
//! (`pacer_limiter::fleet::redacted_url`).
//!
//! Deletion: a finalizer ([`BUDGET_FINALIZER`]) holds a RateBudget while a LoadTest on it has
//! not ended, so the budget's status (the only place that shows the tests together) lives as
//! long as they run, and `kubectl delete` waits instead of pulling the budget from under them
//! (their plans hold its limits since their start, so they would run on, unobserved). New tests
//! are refused a budget being deleted. Deleting a RateBudget (or a LoadTest) never deletes the
//! budget's Redis keys: they expire after the budget's idle time, so a laptop still on it and
//! a budget created again under the same name carry on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pacer_limiter::fleet::status::{BudgetReader, BudgetSnapshot};
use parking_lot::Mutex;
use serde_json::json;

use crate::controller::{Context, MANAGER, causes};
use crate::crd::LoadTest;
use crate::ratebudget::{
    BUDGET_FINALIZER, BudgetLast429, BudgetLimitStatus, BudgetTest, BudgetTestKind, RateBudget,
    RateBudgetStatus,
};
use crate::reason::Reason;
use crate::resources::RedisSource;
use crate::sizes::{NAME_MAX_CHARS, clip};
use crate::status::set_condition;

/// How often a budget's status is read and written while a test runs on it: a few status
/// intervals of a LoadTest, enough for `kubectl get -w`, one small script call per read.
pub const BUDGET_STATUS_EVERY: Duration = Duration::from_secs(5);
/// ... and while none does (laptops may still use it; nobody is watching closely).
pub const BUDGET_IDLE_STATUS_EVERY: Duration = Duration::from_secs(30);
/// The most LoadTests listed in a status (all are counted): running ones first.
pub const MAX_STATUS_TESTS: usize = 50;
/// The most process ids listed in a status (all are counted).
pub const MAX_STATUS_PROCESSES: usize = 20;
/// The longest message kept from a Redis error.
const MAX_ERROR_CHARS: usize = 300;

pub const COND_OBSERVED: &str = "Observed";

/// Why a reconcile of a RateBudget failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("a Kubernetes API call failed")]
    Kube(#[from] kube::Error),
    #[error("the finalizer could not be handled")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<BudgetError>>),
    #[error("the RateBudget has no namespace")]
    MissingNamespace,
    /// Deleted while tests run on it: the deletion waits for them.
    #[error("RateBudget {budget} is deleted once its running tests end: {tests}")]
    InUse { budget: String, tests: String },
}

/// What the budget reconciler shares: the operator's context, the last read of each budget
/// (the rate used is the growth of the granted count between two reads) and when its status
/// was last written.
pub struct BudgetContext {
    pub ctx: Arc<Context>,
    previous: Mutex<HashMap<String, BudgetSnapshot>>,
    written: Mutex<HashMap<String, Written>>,
}

/// A status write: when, for which generation.
#[derive(Clone, Copy, Debug)]
struct Written {
    at: tokio::time::Instant,
    generation: Option<i64>,
}

impl BudgetContext {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            previous: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// How long until the budget's status is due, when it is not yet: every write of the
    /// status is itself a change that reconciles the budget again, so without this the reads
    /// would follow each other as fast as the API server answers (and the rate used would be
    /// measured over milliseconds). A new generation (the spec changed) is due at once.
    fn not_due(&self, key: &str, generation: Option<i64>) -> Option<Duration> {
        let w = *self.written.lock().get(key)?;
        if w.generation != generation {
            return None;
        }
        BUDGET_STATUS_EVERY
            .checked_sub(w.at.elapsed())
            .filter(|d| !d.is_zero())
    }
}

/// A LoadTest that refers to the budget, as listed (read leniently: one unreadable LoadTest
/// does not hide the others).
#[derive(Clone, Debug, PartialEq)]
pub struct TestOnBudget {
    pub name: String,
    /// Its `status.testId`: its id in the budget's registry of tests.
    pub test_id: Option<String>,
    pub phase: Option<String>,
    pub rps: Option<f64>,
}

impl TestOnBudget {
    /// Not ended: it may still send on the budget.
    pub fn active(&self) -> bool {
        !matches!(
            self.phase.as_deref(),
            Some("Succeeded" | "Failed" | "Aborted")
        )
    }

    /// The prefix of its processes' ids in Redis: its worker pods' names (`<job>-<index>-…`).
    fn process_prefix(&self) -> String {
        let job = crate::resources::short(&self.name, 55);
        format!("{job}-workers-")
    }
}

/// What was learned of the budget's Redis.
#[derive(Clone, Debug)]
pub enum Observation {
    Read(BudgetSnapshot),
    /// Not read, and why (said in `Observed=False`).
    NotObserved(String),
}

fn time_ms(ms: u64) -> Option<Time> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?)
        .ok()
        .map(Time)
}

/// The status of `rb` from what was listed and read (a pure function: the tests build it).
pub fn build_status(
    rb: &RateBudget,
    tests: &[TestOnBudget],
    observation: &Observation,
    previous: Option<&BudgetSnapshot>,
    problems: &[pacer_plan::FieldError],
) -> RateBudgetStatus {
    let mut s = rb.status.clone().unwrap_or_default();
    let generation = rb.metadata.generation;
    s.observed_generation = generation;
    let ns = rb.metadata.namespace.as_deref().unwrap_or_default();
    s.budget = crate::budget::redis_name(ns, &rb.name_any()).ok();
    if problems.is_empty() {
        set_condition(
            &mut s.conditions,
            crate::status::COND_VALID,
            true,
            Reason::Valid,
            "",
            generation,
        );
    } else {
        let message = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        set_condition(
            &mut s.conditions,
            crate::status::COND_VALID,
            false,
            Reason::InvalidBudget,
            &message,
            generation,
        );
    }

    let mut listed: Vec<&TestOnBudget> = tests.iter().collect();
    listed.sort_by_key(|t| (!t.active(), t.name.clone()));
    let snapshot = match observation {
        Observation::Read(snap) => Some(snap),
        Observation::NotObserved(_) => None,
    };
    let registry = snapshot.map_or(&[][..], |snap| snap.tests.as_slice());
    let entry = |id: Option<&str>| registry.iter().find(|r| Some(r.test.as_str()) == id);
    let mut rows: Vec<BudgetTest> = listed
        .iter()
        .map(|t| {
            let r = entry(t.test_id.as_deref());
            BudgetTest {
                name: clip(&t.name, NAME_MAX_CHARS),
                kind: BudgetTestKind::LoadTest,
                test_id: t.test_id.as_deref().map(|id| clip(id, NAME_MAX_CHARS)),
                weight: r.map(|r| r.weight),
                share: r.map(|r| round2(r.share)),
                granted_per_second: r.map(|r| round2(r.rate)),
                backlog: r.is_some_and(|r| r.backlog),
                phase: t.phase.clone().unwrap_or_default(),
                rps: t.rps.filter(|r| r.is_finite()),
                processes: snapshot.map(|snap| {
                    let prefix = t.process_prefix();
                    let n = snap
                        .processes
                        .iter()
                        .filter(|p| p.id.starts_with(&prefix))
                        .count();
                    u32::try_from(n).unwrap_or(u32::MAX)
                }),
            }
        })
        .collect();
    // Tests in the budget's Redis that are none of these LoadTests: laptops, other clusters.
    rows.extend(
        registry
            .iter()
            .filter(|r| {
                !tests
                    .iter()
                    .any(|t| t.test_id.as_deref() == Some(r.test.as_str()))
            })
            .map(|r| {
                let id: String = r.test.chars().filter(|c| !c.is_control()).collect();
                BudgetTest {
                    name: clip(&id, NAME_MAX_CHARS),
                    kind: BudgetTestKind::Other,
                    test_id: Some(clip(&id, NAME_MAX_CHARS)),
                    weight: Some(r.weight),
                    share: Some(round2(r.share)),
                    granted_per_second: Some(round2(r.rate)),
                    backlog: r.backlog,
                    ..BudgetTest::default()
                }
            }),
    );
    // Running LoadTests and the other tests in the registry (laptops: a registry entry lives
    // while its processes beat).
    let active = rows
        .iter()
        .filter(|r| match r.kind {
            BudgetTestKind::LoadTest => {
                !matches!(r.phase.as_str(), "Succeeded" | "Failed" | "Aborted")
            }
            BudgetTestKind::Other => true,
        })
        .count();
    s.test_count = Some(u32::try_from(active).unwrap_or(u32::MAX));
    rows.truncate(MAX_STATUS_TESTS);
    s.tests = rows;

    let limits = crate::budget::limits(rb);
    match observation {
        Observation::NotObserved(why) => {
            set_condition(
                &mut s.conditions,
                COND_OBSERVED,
                false,
                Reason::NotObserved,
                why,
                generation,
            );
            s.rate = Some("not observed".into());
            s.process_count = None;
            s.processes.clear();
            s.limits = limits
                .iter()
                .map(|l| BudgetLimitStatus {
                    name: l.name.clone(),
                    limit_per_second: l.limit.as_per_sec(),
                    ..BudgetLimitStatus::default()
                })
                .collect();
            s.paused_until = None;
        }
        Observation::Read(snap) => {
            set_condition(
                &mut s.conditions,
                COND_OBSERVED,
                true,
                Reason::Observed,
                "",
                generation,
            );
            s.observed_time = time_ms(snap.now_ms);
            s.process_count = Some(u32::try_from(snap.process_count).unwrap_or(u32::MAX));
            s.processes = snap
                .processes
                .iter()
                .take(MAX_STATUS_PROCESSES)
                .map(|p| clip(&p.id, NAME_MAX_CHARS))
                .collect();
            s.limits = limits
                .iter()
                .map(|l| {
                    let per_sec = l.limit.as_per_sec();
                    let read = snap.limits.iter().find(|x| x.name == l.name);
                    let used = previous.and_then(|p| snap.rate_since(p, &l.name));
                    let server = read.and_then(|r| r.server.as_ref());
                    BudgetLimitStatus {
                        name: l.name.clone(),
                        definition: read.and_then(|r| r.definition.clone()),
                        declared_by: read.and_then(|r| r.declared_by.clone()),
                        limit_per_second: per_sec,
                        used_per_second: used.map(round2),
                        used_percent: used
                            .filter(|_| per_sec > 0.0)
                            .map(|u| round2(u * 100.0 / per_sec)),
                        paused_until: read.and_then(|r| r.paused_until_ms).and_then(time_ms),
                        server_remaining: server.map(|h| h.remaining),
                        server_limit: server.and_then(|h| h.limit),
                        server_reset_at: server.and_then(|h| h.reset_at_ms).and_then(time_ms),
                        server_seen_at: server.and_then(|h| time_ms(h.seen_ms)),
                        others_per_second: server
                            .map(|h| round2(h.others_rate))
                            .filter(|r| *r > 0.0),
                    }
                })
                .collect();
            s.paused_until = snap
                .limits
                .iter()
                .filter_map(|l| l.paused_until_ms)
                .max()
                .and_then(time_ms);
            s.rate = Some(rate_column(&s.limits));
            s.last429 = snap.last_429.as_ref().and_then(|l| {
                Some(BudgetLast429 {
                    limits: clip(&l.limits.join(","), NAME_MAX_CHARS),
                    time: time_ms(l.at_ms)?,
                    retry_after_seconds: l.retry_after.map(|d| d.as_secs_f64()),
                    process: clip(&l.process, NAME_MAX_CHARS),
                    server_limit: l.server_limit,
                })
            });
        }
    }
    s.server_left = Some(server_left(&s.limits));
    s
}

/// The `Left` column: the limit the server said has the least left, `7 of 50 org` (without
/// `of` when the server states no limit); `not reported` when none.
fn server_left(limits: &[BudgetLimitStatus]) -> String {
    limits
        .iter()
        .filter_map(|l| Some((l, l.server_remaining?)))
        .min_by(|a, b| {
            let share = |(l, left): &(&BudgetLimitStatus, u64)| match l.server_limit {
                Some(lim) if lim > 0 => *left as f64 / lim as f64,
                _ => *left as f64,
            };
            share(a).total_cmp(&share(b))
        })
        .map_or_else(
            || "not reported".to_string(),
            |(l, left)| match l.server_limit {
                Some(lim) => format!("{left} of {lim} {}", l.name),
                None => format!("{left} {}", l.name),
            },
        )
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The busiest limit, for `kubectl get`: `4.9/5 per s (98%) org`; `-` before two reads.
fn rate_column(limits: &[BudgetLimitStatus]) -> String {
    limits
        .iter()
        .filter_map(|l| Some((l, l.used_per_second?, l.used_percent?)))
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .map_or_else(
            || "-".to_string(),
            |(l, used, pct)| {
                format!(
                    "{used:.1}/{} per s ({pct:.0}%) {}",
                    trim_number(l.limit_per_second),
                    l.name
                )
            },
        )
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The LoadTests of `ns` that refer to budget `name`.
async fn tests_on(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Vec<TestOnBudget>, kube::Error> {
    let ar = ApiResource::erase::<LoadTest>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|o| o.data["spec"]["budgetRef"]["name"].as_str() == Some(name))
        .map(|o| TestOnBudget {
            name: o.name_any(),
            test_id: o.data["status"]["testId"].as_str().map(str::to_string),
            phase: o.data["status"]["phase"].as_str().map(str::to_string),
            rps: o.data["status"]["rps"].as_f64(),
        })
        .collect())
}

/// Read the budget's Redis, or say why it is not read.
async fn observe(rb: &RateBudget, redis: Option<RedisSource>) -> Observation {
    let url = match redis {
        Some(RedisSource::Url(url)) => url,
        Some(RedisSource::Secret { name, key }) => {
            return Observation::NotObserved(format!(
                "the Redis URL is in Secret {name:?} (key {key:?}), which the operator does not \
                 read (it reads no Secret): only a Redis given by URL (spec.redis.url, or the \
                 operator's default, the chart's Redis) is observed"
            ));
        }
        None => return Observation::NotObserved("the budget has no Redis".into()),
    };
    let ns = rb.metadata.namespace.as_deref().unwrap_or_default();
    let Ok(name) = crate::budget::redis_name(ns, &rb.name_any()) else {
        return Observation::NotObserved("the budget's name does not fit Redis".into());
    };
    let limits = crate::budget::limits(rb);
    let names: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
    let reader = match BudgetReader::new(&url, None) {
        Ok(r) => r,
        Err(e) => return Observation::NotObserved(clip(&e.to_string(), MAX_ERROR_CHARS)),
    };
    match reader.read(&name, &names).await {
        Ok(s) => Observation::Read(s),
        Err(e) => Observation::NotObserved(clip(
            &format!("Redis at {}: {e}", reader.addr()),
            MAX_ERROR_CHARS,
        )),
    }
}

async fn write(
    rb: &RateBudget,
    client: &kube::Client,
    status: &RateBudgetStatus,
) -> Result<(), BudgetError> {
    let ns = rb.namespace().ok_or(BudgetError::MissingNamespace)?;
    let api: Api<RateBudget> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "RateBudget",
        "status": status,
    });
    api.patch_status(
        &rb.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn apply(rb: Arc<RateBudget>, bctx: Arc<BudgetContext>) -> Result<Action, BudgetError> {
    let ctx = &bctx.ctx;
    let ns = rb.namespace().ok_or(BudgetError::MissingNamespace)?;
    let key = rb
        .uid()
        .unwrap_or_else(|| format!("{ns}/{}", rb.name_any()));
    if let Some(wait) = bctx.not_due(&key, rb.metadata.generation) {
        return Ok(Action::requeue(wait));
    }
    let tests = tests_on(&ctx.client, &ns, &rb.name_any()).await?;
    let default_redis = ctx.config.default_redis.as_ref();
    let problems = crate::budget::check(&rb, default_redis);
    let observation = if problems.is_empty() {
        observe(&rb, crate::budget::redis_of(&rb, default_redis)).await
    } else {
        Observation::NotObserved("the RateBudget is not valid (see the Valid condition)".into())
    };
    let previous = bctx.previous.lock().get(&key).cloned();
    let status = build_status(&rb, &tests, &observation, previous.as_ref(), &problems);
    write(&rb, &ctx.client, &status).await?;
    bctx.written.lock().insert(
        key.clone(),
        Written {
            at: tokio::time::Instant::now(),
            generation: rb.metadata.generation,
        },
    );
    if let Observation::Read(snap) = observation {
        bctx.previous.lock().insert(key, snap);
    }
    Ok(Action::requeue(if tests.iter().any(TestOnBudget::active) {
        BUDGET_STATUS_EVERY
    } else {
        BUDGET_IDLE_STATUS_EVERY
    }))
}

async fn cleanup(rb: Arc<RateBudget>, bctx: Arc<BudgetContext>) -> Result<Action, BudgetError> {
    let ns = rb.namespace().ok_or(BudgetError::MissingNamespace)?;
    let tests = tests_on(&bctx.ctx.client, &ns, &rb.name_any()).await?;
    let active: Vec<&str> = tests
        .iter()
        .filter(|t| t.active())
        .map(|t| t.name.as_str())
        .collect();
    if !active.is_empty() {
        return Err(BudgetError::InUse {
            budget: rb.name_any(),
            tests: clip(&active.join(", "), MAX_ERROR_CHARS),
        });
    }
    if let Some(uid) = rb.uid() {
        bctx.previous.lock().remove(&uid);
        bctx.written.lock().remove(&uid);
    }
    Ok(Action::await_change())
}

/// Reconcile one RateBudget (its finalizer first).
pub async fn reconcile_budget(
    rb: Arc<RateBudget>,
    bctx: Arc<BudgetContext>,
) -> Result<Action, BudgetError> {
    let ns = rb.namespace().ok_or(BudgetError::MissingNamespace)?;
    let api: Api<RateBudget> = Api::namespaced(bctx.ctx.client.clone(), &ns);
    finalizer(&api, BUDGET_FINALIZER, rb, |event| async {
        match event {
            Finalizer::Apply(rb) => apply(rb, bctx.clone()).await,
            Finalizer::Cleanup(rb) => cleanup(rb, bctx.clone()).await,
        }
    })
    .await
    .map_err(|e| BudgetError::Finalizer(Box::new(e)))
}

/// Log and retry a little later.
pub fn budget_error_policy(
    rb: Arc<RateBudget>,
    error: &BudgetError,
    _: Arc<BudgetContext>,
) -> Action {
    tracing::warn!(
        ratebudget = %rb.name_any(),
        namespace = rb.namespace().unwrap_or_default(),
        "reconcile failed: {}",
        causes(error)
    );
    Action::requeue(BUDGET_STATUS_EVERY)
}

/// Watch RateBudgets (in every namespace, or in those given) until `shutdown`. A cluster
/// without the RateBudget CRD (an older chart) runs LoadTests without budgets: logged once.
pub async fn run(ctx: Arc<Context>, shutdown: tokio_util::sync::CancellationToken) {
    let apis: Vec<Api<RateBudget>> = if ctx.config.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    };
    for api in &apis {
        if let Err(e) = api.list(&ListParams::default().limit(1)).await {
            tracing::warn!(
                "cannot list RateBudgets ({e}): budgets are not reconciled (is the RateBudget CRD installed, `pacer crd | kubectl apply -f -`, and may this service account list them?)"
            );
            return;
        }
    }
    let bctx = Arc::new(BudgetContext::new(ctx));
    let controllers = apis.into_iter().map(|api| {
        let bctx = bctx.clone();
        let shutdown = shutdown.clone();
        async move {
            Controller::new(api, watcher::Config::default().any_semantic())
                .graceful_shutdown_on(async move { shutdown.cancelled().await })
                .run(reconcile_budget, budget_error_policy, bctx)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!("budget reconcile: {}", causes(&e));
                    }
                })
                .await;
        }
    });
    futures::future::join_all(controllers).await;
}
