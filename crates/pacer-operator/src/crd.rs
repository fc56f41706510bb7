//! The `LoadTest` resource (`pacer.dev/v1alpha1`): a pacer plan plus what Kubernetes needs to
//! run it with a fleet of worker pods. `pacer crd` prints the CustomResourceDefinition made from
//! these types; `charts/pacer/crds/` holds the committed copy (a test fails when it is stale).
//!
//! `spec.plan` is kept as JSON (its schema is the plan's, made structural in [`crate::schema`])
//! so that a plan the API server accepted but pacer does not (a rate of `fast`, an unknown
//! threshold metric) still reaches the operator, which then names the field in a condition
//! instead of the object being invisible to it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    LocalObjectReference, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    ResourceRequirements, SecretVolumeSource, SecurityContext, Toleration,
    TopologySpreadConstraint, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of pacer's resources.
pub const GROUP: &str = "pacer.dev";
/// The finalizer the operator puts on every LoadTest it runs.
pub const FINALIZER: &str = "pacer.dev/cleanup";

/// A load test: a pacer plan run by a fleet of worker pods that the pacer controller starts
/// together, paces inside the plan's limits and reports on.
#[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "pacer.dev",
    version = "v1alpha1",
    kind = "LoadTest",
    namespaced,
    shortname = "lt",
    category = "pacer",
    status = "LoadTestStatus",
    doc = "A pacer load test: a plan run by a fleet of worker pods, started together by the pacer controller, paced inside the plan's limits",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Workers","type":"string","description":"connected/desired worker pods","jsonPath":".status.workers.ready"}"#,
    printcolumn = r#"{"name":"RPS","type":"number","description":"HTTP requests per second over the last status interval","jsonPath":".status.rps"}"#,
    printcolumn = r#"{"name":"P95","type":"string","description":"95th percentile of the latency from the intended start","jsonPath":".status.latency.p95"}"#,
    printcolumn = r#"{"name":"Errors","type":"integer","description":"failed requests","jsonPath":".status.errors"}"#,
    printcolumn = r#"{"name":"429s","type":"integer","description":"responses 429 Too Many Requests","jsonPath":".status.throttled"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.plan) != has(self.planRef)",
    "message": "give exactly one of plan (inline) and planRef (a ConfigMap key)"
}]))]
pub struct LoadTestSpec {
    /// The test plan, as in a plan file (docs/plan-format.md). `${env:NAME}` references are
    /// resolved by the worker pods, from `credentials` and `workerTemplate.env`; `${file:}`
    /// references are not allowed here. Exactly one of `plan` and `planRef`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schemars(schema_with = "crate::schema::plan_schema")]
    pub plan: serde_json::Value,
    /// The plan kept in a ConfigMap of the LoadTest's namespace instead of inline (a plan
    /// near the object size limit, or one kept apart from the resource): read by the operator
    /// when the test starts and checked exactly as an inline plan. Exactly one of `plan` and
    /// `planRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_ref: Option<PlanRef>,
    /// Where the files of the plan's test data (`data:`) come from: for each source of the
    /// plan, by name, a ConfigMap key of the LoadTest's namespace, read by the operator when
    /// the test starts and sent to the workers (never a file of the operator's disk).
    /// `pacer submit` packs a plan's local files into ConfigMaps and fills this in.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = pacer_plan::data::MAX_DATA_SOURCES))]
    pub data: BTreeMap<String, DataRef>,
    /// Worker pods sharing the plan (default: the plan's `workers`, else 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub workers: Option<u32>,
    /// The pacer image the workers run (default: the operator's own, `--worker-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Pull policy of the worker image (default: Kubernetes' own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Scheduling and resources of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_template: Option<WorkerTemplate>,
    /// Credentials from Secrets, given to the worker pods as environment variables (never
    /// through the operator). For a credential named `genesys`: `PACER_AUTH_GENESYS_CLIENT_ID`,
    /// `PACER_AUTH_GENESYS_CLIENT_SECRET` and `PACER_AUTH_GENESYS_TOKEN`, which the plan uses as
    /// `${env:PACER_AUTH_GENESYS_CLIENT_ID}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub credentials: Vec<CredentialRef>,
    /// The Redis of the fleet budget (`scope: fleet` limits, `share: fleet` tokens). Default:
    /// the operator's (`--default-redis-url`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// What is deleted when the test ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupSpec>,
    /// How long the workers may take to be scheduled, start and connect (default 2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// At most 1h (the operator refuses more); the pattern keeps numbers short enough that
    /// no sum of them overflows.
    #[schemars(regex(pattern = r"^([0-9]{1,6}(ms|s|m|h)){1,4}$"), length(max = 32))]
    pub start_timeout: Option<String>,
    /// How long a worker pod keeps sending when it can reach no controller (default 30s, 5s to
    /// 1h): past it, the worker stops its load on its own. Longer than an operator failover
    /// (about 20 s), short enough that a test whose controller is gone leaves little load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(ms|s|m|h)){1,4}$"), length(max = 32))]
    pub lost_after: Option<String>,
    /// `true` stops a running test (it ends in phase Aborted); a test created suspended waits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// The RateBudget (in this namespace) the test runs on: its limits, credentials and Redis
    /// join the plan's, shared with every other test on it (docs/kubernetes.md, "RateBudget").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_ref: Option<crate::ratebudget::BudgetRef>,
}

/// A plan in a ConfigMap key (YAML or JSON, as in a plan file).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanRef {
    /// The ConfigMap's name, in the LoadTest's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the plan (default `plan.yaml`).
    #[serde(default = "default_plan_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A data source's file in a ConfigMap key.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DataRef {
    /// The ConfigMap's name, in the LoadTest's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// The key holding the file's text (CSV or JSON Lines, as the plan's source says).
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The key `planRef` reads when it names none, and `pacer submit --plan-configmap` writes.
pub const DEFAULT_PLAN_KEY: &str = "plan.yaml";

fn default_plan_key() -> String {
    DEFAULT_PLAN_KEY.to_string()
}

/// When the worker image is pulled.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// What the worker pods get besides pacer itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// CPU and memory of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra environment of the worker container (the plan's `${env:NAME}` references read
    /// it). Names starting with `PACER_` are reserved for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(e, !e.name.startsWith('PACER_'))",
        "message": "env names starting with PACER_ are reserved for the operator"
    }]))]
    pub env: Vec<EnvVar>,
    /// The service account of the worker pods (default: the namespace's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra labels of the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the worker pods (e.g. to keep a service mesh sidecar out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Secrets (in the LoadTest's namespace) to pull the worker image with, besides the
    /// operator's own (`--worker-image-pull-secret`, the chart's `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Environment from ConfigMaps (every key); a Secret only when it is one of the test's
    /// `credentials` (the operator refuses any other).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub env_from: Vec<EnvFromSource>,
    /// Volumes of the worker pods: ConfigMaps, empty dirs, PersistentVolumeClaims, and
    /// Secrets of the test's `credentials` only. No hostPath or other source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub volumes: Vec<WorkerVolume>,
    /// Where the worker container mounts `volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// A PriorityClass of the cluster (not one of the `system-` ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
    /// The worker container's security context: only stricter than the operator's
    /// (non-root, no privilege escalation, read-only root, every capability dropped,
    /// RuntimeDefault seccomp); a looser field is refused, named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// The worker pod's security context (user, groups, fsGroup), by the same rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
}

/// A volume of the worker pods: one of the sources a load test needs, nothing that reaches
/// the node (hostPath) or another's data.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + (has(self.emptyDir) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) == 1",
    "message": "give exactly one of configMap, secret, emptyDir, persistentVolumeClaim (hostPath and the other volume sources are not allowed)"
}]))]
pub struct WorkerVolume {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// Only the Secret of one of the test's `credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

/// One credential of the plan, read from a Secret by the worker pods.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// The name of the plan's `auth` entry these values are for.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    )]
    pub name: String,
    pub secret_ref: CredentialSecretRef,
}

/// Which keys of which Secret (in the LoadTest's namespace) hold the credential.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.clientIdKey) == has(self.clientSecretKey)",
        "message": "clientIdKey and clientSecretKey go together (oauth2-clientCredentials)"
    },
    {
        "rule": "has(self.clientIdKey) || has(self.tokenKey)",
        "message": "give clientIdKey and clientSecretKey (oauth2-clientCredentials) or tokenKey (bearer)"
    }
]))]
pub struct CredentialSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the OAuth2 client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id_key: Option<String>,
    /// The key holding the OAuth2 client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_key: Option<String>,
    /// The key holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_key: Option<String>,
}

/// Where the fleet's Redis is: a URL without a password, or a Secret key holding the URL.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.url) != has(self.secretRef)",
    "message": "give exactly one of url and secretRef"
}]))]
pub struct RedisSpec {
    /// `redis://host:port[/db]` or `rediss://` (a URL with a password belongs in a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^rediss?://[^@]+$"))]
    pub url: Option<String>,
    /// A key of a Secret (in the LoadTest's namespace) holding the whole URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What is deleted when a test ends.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CleanupSpec {
    /// Delete the worker pods (their Job) and the session Secret: `onSuccess` (the default:
    /// a failed test keeps its pods for `kubectl logs`), `always` or `never`.
    #[serde(default)]
    pub policy: CleanupPolicy,
    /// Delete the LoadTest itself (with its report and anything left) this many seconds after
    /// it ended. Default: keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub ttl_seconds_after_finished: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CleanupPolicy {
    #[default]
    OnSuccess,
    Always,
    Never,
}

/// Where a test is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; nothing started yet (or suspended before it started).
    Pending,
    /// Worker pods are starting and connecting.
    Starting,
    /// Every worker started at the common instant; the plan runs.
    Running,
    /// Ended, every threshold passed.
    Succeeded,
    /// Ended with a failed threshold, or could not run (invalid spec, workers missing, lost).
    Failed,
    /// Stopped by `suspend: true` or by deleting the LoadTest.
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Aborted)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator says about a test. Written with server-side apply by the operator only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadTestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`, `WorkersReady`, `Complete`, `Suspended`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The test's id (workers, Redis keys, the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_id: Option<String>,
    /// A sentence on where the test is, or why it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// HTTP requests sent (retries included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Requests per second over the last status interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    /// Latency from the intended start, since the test started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Failed requests (final result) and transport errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// `errors` over logical requests (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Responses 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<u64>,
    /// Seconds requests spent in pacer's own limiter and in Retry-After pauses, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_seconds: Option<f64>,
    /// Every threshold, evaluated on the fleet's merged results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<ThresholdStatus>,
    /// One entry per worker (within a size budget: see `workerHealthOmitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_health: Vec<WorkerHealth>,
    /// Workers left out of `workerHealth` to keep the status under the API server's size
    /// limit (those failed, lost or waiting are kept first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_health_omitted: Option<u32>,
    /// Where the final report is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// SHA-256 (hex) of the test's session token, written before its workers are created: an
    /// operator that restarts verifies the workers that reconnect against it, without
    /// reading the session Secret (docs/security.md, "Resuming a test after a restart").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_sha256: Option<String>,
    /// SHA-256 (hex) of the plan the workers were given: a restarted operator resumes the
    /// test only if the spec still prepares into this very plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_sha256: Option<String>,
    /// The pods and session Secret were deleted by the cleanup policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleaned_up: bool,
    /// Where the plan came from: `spec.plan` or the ConfigMap of `spec.planRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_source: Option<PlanSource>,
}

/// Where a LoadTest's plan came from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanSource {
    pub kind: PlanSourceKind,
    /// The ConfigMap (kind ConfigMap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The ConfigMap's resourceVersion the test was checked and started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum PlanSourceKind {
    /// `spec.plan`.
    #[default]
    Inline,
    /// `spec.planRef`.
    ConfigMap,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    pub desired: u32,
    /// Connected to the controller now (once the test ended: the workers that delivered
    /// their results).
    pub connected: u32,
    /// Stopped reporting during the test.
    pub lost: u32,
    /// `connected/desired`, for `kubectl get`.
    pub ready: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub elapsed_seconds: f64,
    /// The plan's longest scenario, graceful stops included.
    pub planned_seconds: f64,
    /// 0..100
    pub percent: f64,
}

/// Milliseconds, as text (`"123.4ms"`) so that `kubectl get` shows the unit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdStatus {
    /// As written, e.g. `http_req_duration{request:query}`.
    pub metric: String,
    /// As written, e.g. `p(95)<500ms`.
    pub expression: String,
    pub passed: bool,
    /// The value compared (ms for latencies, 0..1 for rates), when there was data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerHealth {
    pub index: u32,
    /// What the worker called itself (its pod).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// waiting, assigned, ready, running, finished, failed, lost.
    pub state: String,
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    pub throttled: u64,
    /// Why it was lost or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The ConfigMap holding the final report (`summary.txt`, `summary.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportRef {
    pub config_map: String,
    /// Key of the text summary.
    pub text_key: String,
    /// Key of the JSON summary.
    pub json_key: String,
}

impl LoadTest {
    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
}

/// The CustomResourceDefinition as YAML (what `pacer crd` prints).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    let crd = LoadTest::crd();
    let mut out = String::from(
        "# Generated by `pacer crd` from crates/pacer-operator/src/crd.rs: do not edit by hand.\n",
    );
    out.push_str(&serde_saphyr::to_string(&crd)?);
    Ok(out)
}
