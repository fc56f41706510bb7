//! The `RateBudget` resource (`pacer.dev/v1alpha1`): an organisation's API limits, the
//! credentials whose tokens its tests share, and the Redis they share them through, declared
//! once in a namespace. LoadTests refer to it (`spec.budgetRef`) instead of each declaring the
//! limits and taking the whole of them; its status is live: what the budget's processes use,
//! which tests use it, pauses in force, the last 429 (docs/kubernetes.md, "RateBudget").
//!
//! `spec.limits` is kept as JSON with the plan's `limits` schema (like `LoadTest.spec.plan`), so
//! a limit the API server accepted but pacer does not still reaches the operator, which names
//! the field in a condition. `pacer crd` prints this CRD after the LoadTest's;
//! `charts/pacer/crds/ratebudgets.pacer.dev.yaml` is the committed copy (a test compares).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::{CredentialRef, RedisSpec};

/// The finalizer the operator puts on every RateBudget: one is deleted only once no running
/// LoadTest uses it (crate::budget_status).
pub const BUDGET_FINALIZER: &str = "pacer.dev/budget-in-use";

/// An organisation's API budget: its limits, credentials and Redis, shared by every LoadTest
/// that refers to it (and every `pacer run --budget` that names it).
#[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "pacer.dev",
    version = "v1alpha1",
    kind = "RateBudget",
    namespaced,
    shortname = "rb",
    category = "pacer",
    status = "RateBudgetStatus",
    doc = "An organisation's API budget: its limits, credentials and Redis, shared by every LoadTest that refers to it",
    printcolumn = r#"{"name":"Rate","type":"string","description":"the busiest limit: used/limit per second","jsonPath":".status.rate"}"#,
    printcolumn = r#"{"name":"Tests","type":"integer","description":"tests on the budget: running LoadTests and other tests in its Redis","jsonPath":".status.testCount"}"#,
    printcolumn = r#"{"name":"Processes","type":"integer","description":"processes beating in the budget's Redis (pods, pacer run)","jsonPath":".status.processCount"}"#,
    printcolumn = r#"{"name":"Paused Until","type":"string","description":"a Retry-After pause in force","jsonPath":".status.pausedUntil"}"#,
    printcolumn = r#"{"name":"Last 429","type":"string","description":"the limits the last refused request matched","jsonPath":".status.last429.limits"}"#,
    printcolumn = r#"{"name":"Left","type":"string","description":"what the server's headers say is left","jsonPath":".status.serverLeft"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RateBudgetSpec {
    /// The organisation's limits, as a plan's `limits` (docs/plan-format.md). Every one is
    /// shared by the budget's tests (`scope: fleet`; leave `scope` out).
    #[schemars(schema_with = "crate::schema::limits_schema")]
    pub limits: serde_json::Value,
    /// Credentials from Secrets (in this namespace), given to the worker pods of every
    /// LoadTest on the budget whose plan has an `auth` of that name, as LoadTest credentials
    /// are (`PACER_AUTH_<NAME>_CLIENT_ID`...): with `share: fleet`, one token for all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub credentials: Vec<CredentialRef>,
    /// The Redis the budget is shared through. Default: the operator's (`--default-redis-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// How long the budget's Redis keys outlive their last use (default 1h; 15s to 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(ms|s|m|h)){1,4}$"), length(max = 32))]
    pub idle_expiry: Option<String>,
}

/// A LoadTest's `spec.budgetRef`: the RateBudget it runs on, in its own namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRef {
    /// The RateBudget's name (same namespace: a budget's credentials are Secrets of its
    /// namespace, which tests of another namespace may not use).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Refused unless it is the LoadTest's own namespace (kept so that the refusal can say why
    /// instead of the field being dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// What the operator says about a budget, every few seconds while tests use it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateBudgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid` (the spec), `Observed` (its Redis was read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The budget's name in Redis (`<namespace>.<name>`): `pacer run --budget` with it joins
    /// the budget from a laptop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// The busiest limit, `used/limit per second (share)`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Tests on the budget now: LoadTests that have not ended, and other tests in its Redis
    /// (a `pacer run --budget` on a laptop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_count: Option<u32>,
    /// Every LoadTest that refers to the budget (running ones first), then the other tests in
    /// its Redis, each with its weight and share (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<BudgetTest>,
    /// Processes with a recent heartbeat in the budget's Redis (any test, any laptop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u32>,
    /// A few of those processes (their ids: `<pod or host>-<pid>-<random>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Per limit: its definition, the rate used, a pause in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<BudgetLimitStatus>,
    /// The latest end of a Retry-After pause in force on any limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last429: Option<BudgetLast429>,
    /// What the server's rate-limit headers last said is left, for the limit with the least
    /// (`7 of 50 org`; `not reported` when no process heard any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_left: Option<String>,
    /// When the budget's Redis was last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_time: Option<Time>,
}

/// What uses a budget: a LoadTest of its namespace, or a test the budget's Redis knows that is
/// none of them (a `pacer run --budget` on a laptop, a LoadTest of another cluster).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum BudgetTestKind {
    #[default]
    LoadTest,
    Other,
}

/// A test on the budget.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetTest {
    /// The LoadTest's name, or the test id in Redis of another test.
    pub name: String,
    pub kind: BudgetTestKind,
    /// Its id in the budget's Redis (a LoadTest's `status.testId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_id: Option<String>,
    /// Its weight and its share of each limit now (`weight / sum of the weights of the tests
    /// with a backlog`), from the budget's registry of tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// Slots the budget granted it per second (over its last whole second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_per_second: Option<f64>,
    /// It wanted more than it got within the last second.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backlog: bool,
    /// Its phase (empty before the operator saw it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Its requests per second, from its own status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    /// Its processes beating in the budget's Redis now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
}

/// One limit of the budget, as Redis holds it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetLimitStatus {
    pub name: String,
    /// As the budget recorded it (`10/s within 1s, burst 5, shape sliding-window`) and the
    /// test that declared it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
    /// The limit, per second.
    pub limit_per_second: f64,
    /// Slots granted per second since the last read, by every process of the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_per_second: Option<f64>,
    /// `used_per_second` over the limit, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<f64>,
    /// A Retry-After pause in force: until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Time>,
    /// What the server's rate-limit headers last said of this limit (everyone's use counted):
    /// requests left, the limit it states, when its window resets, when it was heard, and the
    /// others' traffic pacer measured from it (requests per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_reset_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_seen_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_per_second: Option<f64>,
}

/// The last 429 a process of the budget saw.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetLast429 {
    /// The limits the refused request matched (comma-separated).
    pub limits: String,
    pub time: Time,
    /// The Retry-After it carried, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<f64>,
    /// The process that saw it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub process: String,
    /// The limit the server stated in that answer, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_limit: Option<u64>,
}

/// The RateBudget CustomResourceDefinition as YAML (what `pacer crd --kind rate-budget` prints).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    let crd = RateBudget::crd();
    let mut out = String::from(
        "# Generated by `pacer crd --kind rate-budget` from crates/pacer-operator/src/ratebudget.rs: do not edit by hand.\n",
    );
    out.push_str(&serde_saphyr::to_string(&crd)?);
    Ok(out)
}
