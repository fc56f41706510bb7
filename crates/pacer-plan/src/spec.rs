//! The plan as a user writes it (YAML or JSON, camelCase). This is also the `plan` of a
//! `LoadTest` resource's spec, so every type derives `JsonSchema`.
//!
//! These types only say what is well-formed; [`crate::validate`] checks what is meaningful and
//! turns a `PlanSpec` into a [`crate::Plan`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{HumanDuration, Rate};

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    /// A name for the test, shown in reports.
    pub name: String,
    /// Base URL of the system under test; request paths are relative to it.
    pub target: String,
    /// Default duration for executors that need one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    /// How many workers share the plan (`pacer run --workers`, the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::shard::MAX_WORKERS))]
    pub workers: Option<u32>,
    /// What a distributed run does when a worker stops reporting (default `continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_worker_loss: Option<WorkerLoss>,
    /// The named budget the plan's `scope: fleet` limits and `share: fleet` tokens belong to:
    /// every process naming it, in any test, shares them through Redis (`pacer run --budget`
    /// overrides it). 1-64 characters among `A-Z a-z 0-9 . _ -`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// This test's weight among the tests on its budget (default 1): each test with a backlog
    /// gets the budget's limits in proportion to its weight, and a test that needs less leaves
    /// the rest to the others (`pacer run --weight` overrides it). Needs `budget:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = crate::bounds::MIN_BUDGET_WEIGHT, max = crate::bounds::MAX_BUDGET_WEIGHT))]
    pub weight: Option<f64>,
    /// Values available to templates as `{{vars.NAME}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Test data (feeders): CSV or JSON Lines files whose rows templates use as
    /// `{{data.NAME.COLUMN}}`, one row of each source per iteration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, crate::data::DataSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth: Vec<AuthSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    pub scenarios: Vec<ScenarioSpec>,
    /// k6 threshold syntax: metric (with optional tag filter) to a list of expressions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, Vec<ThresholdSpec>>,
}

/// HTTP client options.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSpec {
    /// Whole-request timeout (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// TCP/TLS connect timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections kept per host (default: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::MAX_IDLE_PER_HOST))]
    pub max_idle_per_host: Option<usize>,
    /// Speak HTTP/2 only (prior knowledge for http://, ALPN for https://).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    /// Accept invalid TLS certificates (test targets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Headers sent with every request (`Authorization`, `Cookie` and `Proxy-Authorization`
    /// only to the target's origin).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Hosts (`host` or `host:port`) a rendered URL may go to besides the target's origin;
    /// such requests are sent without credentials. Others are refused (`off-origin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::origin::MAX_ALLOW_HOSTS))]
    pub allow_hosts: Vec<String>,
    /// The largest response body read, in bytes (default 10 MiB, at most 1 GiB); a larger
    /// one fails the attempt as `body-too-large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::model::defaults::MAX_BODY_BYTES_LIMIT))]
    pub max_body_bytes: Option<u64>,
    /// The correlation id every logical request carries (the same on its retries): `true` or
    /// absent sends `X-Correlation-Id`, a header name sends that one, `false` sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationIdSpec>,
}

/// `http.correlationId`: on (`true`, the default header), off (`false`) or a header name.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum CorrelationIdSpec {
    Enabled(bool),
    Header(String),
}

/// What a distributed run does when a worker is lost (no heartbeat within the controller's
/// timeout, docs/distributed.md).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WorkerLoss {
    /// Keep the lost worker's last reported results and let the others finish; the
    /// thresholds decide the verdict.
    #[default]
    Continue,
    /// Stop every worker and fail the test (exit code 1).
    Fail,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Share {
    /// One token for the whole fleet (Redis-backed when the fleet has more than one process).
    #[default]
    Fleet,
    /// Each worker fetches its own token.
    Worker,
}

/// A credential: how requests get their bearer token.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AuthKind,
    /// Token endpoint (absolute, or relative to `target`), for oauth2-clientCredentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Refresh this long before the token expires (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_before: Option<HumanDuration>,
    /// For `bearer`: the token itself (use `${env:NAME}` or `${file:PATH}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub share: Share,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum AuthKind {
    /// OAuth2 client credentials grant; the token is fetched, cached and refreshed.
    #[serde(rename = "oauth2-clientCredentials")]
    OAuth2ClientCredentials,
    /// A fixed bearer token.
    #[serde(rename = "bearer")]
    Bearer,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LimitScope {
    /// Shared by the whole fleet (Redis).
    Fleet,
    /// Enforced in each process on its own.
    #[default]
    Worker,
}

/// The plan's own word for the scope (`fleet`, `worker`), as summaries and reports print it.
impl std::fmt::Display for LimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fleet => "fleet",
            Self::Worker => "worker",
        })
    }
}

/// A limit the server enforces, as the server states it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSpec {
    pub name: String,
    /// The server's limit: `300/min`, `10/s`, `600/10s` (600 in any 10 s window); for a
    /// `token-bucket`, its refill rate.
    pub limit: Rate,
    /// How the server counts: `sliding-window` (default), `fixed-window` or `token-bucket`
    /// (docs/rate-limiting.md, "Limiter shapes").
    #[serde(default)]
    pub shape: crate::shape::LimitShape,
    /// Requests that may go back to back (default 1); for a `token-bucket`, its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The server's counting window when it differs from the limit's period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<HumanDuration>,
    #[serde(default)]
    pub scope: LimitScope,
    /// Which requests the limit applies to (default: all).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<MatchSpec>,
    /// Discover the sustainable rate at or below `limit` from what the server accepts and
    /// refuses (pacer_limiter::learn, for one process and for a fleet).
    #[serde(default)]
    pub adaptive: bool,
    /// How much later than pacer's grant the server may count a request (network jitter,
    /// queueing): the pacing rate keeps this margin, `r = (L - burst) / (window + spread)` for
    /// windows; a token bucket keeps tokens of its burst for it. Default 100ms in one process
    /// (fleet limits add their lease hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<HumanDuration>,
    /// Headroom pacer leaves unused for everyone else on this limit: a share (`10%`) or a rate
    /// (`2/s`). Where the server reports what is left, pacer paces to that less the reserve
    /// (docs/rate-limiting.md, "Headroom").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<crate::reserve::Reserve>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method_in: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Names of requests (the `name` of a request step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_in: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Status codes to retry (transport errors are retried too). Default: 429, 502, 503, 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<u16>>,
    /// Retry transport errors (connect, timeout, reset). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_transport_error: Option<bool>,
    /// Attempts in all, the first included. Default 1 (no retry) when `retry` is absent, 5 when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Treat Retry-After as the least wait before the retry. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_retry_after: Option<bool>,
    /// Clamp for absurd Retry-After values (default 120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<HumanDuration>,
    /// Wait used when a 429 has no usable Retry-After (default 3s, as the Genesys SDK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_default: Option<HumanDuration>,
    /// A 429 pauses every request of the limit's scope, not only the one retried. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_scope_on429: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Jitter {
    /// sleep = rand(0, min(max, base * 2^n))
    #[default]
    Full,
    /// sleep = min(max, base * 2^n)
    None,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorKind {
    ConstantArrivalRate,
    RampingArrivalRate,
    ConstantVus,
    RampingVus,
    PerVuIterations,
    SharedIterations,
}

impl ExecutorKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::ConstantArrivalRate => "constant-arrival-rate",
            Self::RampingArrivalRate => "ramping-arrival-rate",
            Self::ConstantVus => "constant-vus",
            Self::RampingVus => "ramping-vus",
            Self::PerVuIterations => "per-vu-iterations",
            Self::SharedIterations => "shared-iterations",
        }
    }
}

/// One scenario. Which fields apply depends on `executor` (k6's names and meanings);
/// validation says which field does not belong.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioSpec {
    pub name: String,
    pub executor: ExecutorKind,
    /// Delay from the test's start before this scenario begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<HumanDuration>,
    /// Time in-flight iterations get to finish after the scenario ends (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_stop: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    /// constant-arrival-rate: iterations started per time unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// ramping-arrival-rate: rate at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_rate: Option<Rate>,
    /// Arrival-rate executors: iterations in flight at most; arrivals beyond it are dropped.
    #[serde(default, alias = "maxVUs", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::bounds::MAX_VUS))]
    pub max_in_flight: Option<u32>,
    /// k6's preAllocatedVUs: accepted for k6 plans; pacer starts iterations as tasks, so it is
    /// only checked to be no larger than maxInFlight.
    #[serde(
        default,
        rename = "preAllocatedVUs",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = crate::bounds::MAX_VUS))]
    pub pre_allocated_vus: Option<u32>,
    /// VU executors: virtual users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::bounds::MAX_VUS))]
    pub vus: Option<u32>,
    /// ramping-vus: VUs at the start.
    #[serde(default, rename = "startVUs", skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::bounds::MAX_VUS))]
    pub start_vus: Option<u32>,
    /// per-vu-iterations (per VU) and shared-iterations (in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::bounds::MAX_ITERATIONS))]
    pub iterations: Option<u64>,
    /// Iteration executors: give up after this long (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<HumanDuration>,
    /// Ramping executors: `target` is a rate (ramping-arrival-rate) or a VU count (ramping-vus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::bounds::MAX_STAGES))]
    pub stages: Vec<StageSpec>,
    /// ramping-vus: time a VU removed by a stage gets to finish its iteration (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_ramp_down: Option<HumanDuration>,
    /// Credential (an `auth` name) used by every request of the scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Pause after each iteration (closed-model executors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think_time: Option<HumanDuration>,
    /// Share of the work when the plan is split across workers (default 1). Reserved for the
    /// controller; accepted and checked here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::bounds::MAX_WEIGHT))]
    pub weight: Option<u32>,
    /// One iteration runs these requests in order.
    pub requests: Vec<RequestSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageSpec {
    /// A rate (`40/s`) for ramping-arrival-rate, a VU count for ramping-vus.
    pub target: serde_json::Value,
    pub duration: HumanDuration,
}

/// One HTTP request of an iteration.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSpec {
    /// Name used in reports and thresholds (`http_req_duration{request:NAME}`).
    pub name: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Path relative to `target` (a template), or an absolute URL.
    pub path: String,
    /// Query parameters (values are templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Headers (values are templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Body as text (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Body as JSON; string values are templates. Sets Content-Type: application/json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Credential for this request (overrides the scenario's); `none` sends no Authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Checks counted in the `checks` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectSpec>,
    /// Values taken from the response into `{{vars.NAME}}` for later requests of the iteration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extract: BTreeMap<String, ExtractSpec>,
    /// Repeat the request until a condition holds (poll a job; page through results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollSpec>,
}

fn default_method() -> String {
    "GET".to_string()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpectSpec {
    /// Status codes that pass (default: any 2xx or 3xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// Conditions on the JSON body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json: Vec<JsonCondition>,
}

/// A condition on a JSON body at a JSON pointer (RFC 6901, e.g. `/state` or `/items/0/id`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonCondition {
    pub pointer: String,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    /// The value equals one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// The pointer resolves (true) or does not (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

/// Where an extracted value comes from: exactly one of `json` (a JSON pointer) or `header`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtractSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Fail the iteration when the value is missing (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollSpec {
    /// Stop repeating when this holds (status and JSON conditions, all must hold).
    pub until: ExpectSpec,
    /// Pause between attempts (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Give up after this long; the iteration fails its check (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Give up after this many attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::bounds::MAX_POLL_ATTEMPTS))]
    pub max_attempts: Option<u32>,
}

/// `"p(95)<800ms"` or `{threshold: "p(95)<800ms", abortOnFail: true, delayAbortEval: 10s}`.
#[derive(Clone, Debug, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum ThresholdSpec {
    Expr(String),
    Full(ThresholdFull),
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdFull {
    pub threshold: String,
    #[serde(default)]
    pub abort_on_fail: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_abort_eval: Option<HumanDuration>,
}

impl<'de> Deserialize<'de> for ThresholdSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ThresholdSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a threshold expression such as \"p(95)<800ms\", or {threshold, abortOnFail}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ThresholdSpec, E> {
                Ok(ThresholdSpec::Expr(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ThresholdSpec, A::Error> {
                ThresholdFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ThresholdSpec::Full)
            }
        }
        d.deserialize_any(V)
    }
}

impl ThresholdSpec {
    pub fn expression(&self) -> &str {
        match self {
            Self::Expr(e) => e,
            Self::Full(f) => &f.threshold,
        }
    }
}
