//! The validated plan: what the engine runs. Built only by [`crate::validate`], so every value
//! here has been checked (rates positive, stages well-formed, templates parsed, names resolved).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::spec::{AuthKind, Jitter, LimitScope, PlanSpec, Share, WorkerLoss};
use crate::threshold::Threshold;
use crate::{Rate, Template};

#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub target: url::Url,
    pub workers: u32,
    /// What a distributed run does when a worker is lost.
    pub on_worker_loss: WorkerLoss,
    pub variables: BTreeMap<String, serde_json::Value>,
    /// The `data:` sources, in name order (their rows attached when read: [`crate::data`]).
    pub data: Vec<crate::data::DataSource>,
    pub http: HttpOptions,
    pub auth: Vec<Auth>,
    pub limits: Vec<Limit>,
    pub retry: RetryPolicy,
    pub scenarios: Vec<Scenario>,
    pub thresholds: Vec<Threshold>,
    /// The plan as written, before `${env:..}`/`${file:..}` were resolved: safe to show in
    /// reports (secrets stay references).
    pub source: serde_json::Value,
    /// The resolved spec (holds secrets: never print it).
    pub spec: PlanSpec,
}

impl Plan {
    /// How long the plan runs, graceful stops excluded: what progress is measured against.
    pub fn planned_duration(&self) -> Duration {
        self.scenarios
            .iter()
            .map(|s| s.start_time.saturating_add(s.executor.max_duration()))
            .max()
            .unwrap_or_default()
    }

    /// The latest instant any scenario may still run, graceful stops included.
    pub fn max_duration(&self) -> Duration {
        self.scenarios
            .iter()
            .map(|s| s.start_time + s.executor.max_duration() + s.graceful_stop)
            .max()
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_idle_per_host: Option<usize>,
    pub http2_only: bool,
    pub insecure_skip_verify: bool,
    pub headers: Vec<(String, String)>,
    /// Hosts a rendered URL may go to besides the target (without credentials).
    pub allow_hosts: Vec<crate::origin::AllowedHost>,
    /// The largest response body read (`http.maxBodyBytes`).
    pub max_body_bytes: u64,
    /// The header carrying each logical request's correlation id (`http.correlationId`,
    /// lower case); `None`: off.
    pub correlation_header: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Auth {
    pub name: String,
    pub kind: AuthKind,
    pub token_url: Option<url::Url>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
    pub refresh_before: Duration,
    pub token: Option<String>,
    pub share: Share,
}

#[derive(Clone, Debug)]
pub struct Limit {
    pub name: String,
    pub limit: Rate,
    /// How the server counts; decides the pacing ([`crate::shape::pace`]).
    pub shape: crate::shape::LimitShape,
    pub burst: u32,
    /// The server's counting window (the limit's own period unless `window` was given).
    pub window: Duration,
    pub scope: LimitScope,
    pub method_in: Vec<String>,
    pub path_prefix: Option<String>,
    pub request_in: Vec<String>,
    pub adaptive: bool,
    /// The accuracy bound's spread for this limit; `None`: the limiter's default.
    pub spread: Option<Duration>,
    /// Headroom left unused for others (`reserve:`); `None`: none.
    pub reserve: Option<crate::reserve::Reserve>,
}

impl Limit {
    /// Does this limit apply to a request with this method, path and name?
    pub fn matches(&self, method: &str, path: &str, request: &str) -> bool {
        (self.method_in.is_empty()
            || self
                .method_in
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method)))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && (self.request_in.is_empty() || self.request_in.iter().any(|r| r == request))
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub on_status: Vec<u16>,
    pub on_transport_error: bool,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub jitter: Jitter,
    pub honor_retry_after: bool,
    pub retry_after_max: Duration,
    pub retry_after_default: Duration,
    pub pause_scope_on_429: bool,
}

impl Default for RetryPolicy {
    /// No retries: what a plan without `retry` gets.
    fn default() -> Self {
        Self {
            on_status: vec![429, 502, 503, 504],
            on_transport_error: true,
            max_attempts: 1,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            jitter: Jitter::Full,
            honor_retry_after: true,
            retry_after_max: Duration::from_secs(120),
            retry_after_default: Duration::from_secs(3),
            pause_scope_on_429: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub executor: Executor,
    pub start_time: Duration,
    pub graceful_stop: Duration,
    /// Index into `Plan::auth`.
    pub auth: Option<usize>,
    pub think_time: Duration,
    pub weight: u32,
    pub requests: Vec<Request>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateStage {
    pub target: Rate,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VuStage {
    pub target: u32,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Executor {
    ConstantArrivalRate {
        rate: Rate,
        duration: Duration,
        max_in_flight: u32,
    },
    RampingArrivalRate {
        start_rate: Rate,
        stages: Vec<RateStage>,
        max_in_flight: u32,
    },
    ConstantVus {
        vus: u32,
        duration: Duration,
    },
    RampingVus {
        start_vus: u32,
        stages: Vec<VuStage>,
        graceful_ramp_down: Duration,
    },
    PerVuIterations {
        vus: u32,
        iterations: u64,
        max_duration: Duration,
    },
    SharedIterations {
        vus: u32,
        iterations: u64,
        max_duration: Duration,
    },
}

impl Executor {
    /// How long the executor starts new iterations for (without graceful stop).
    pub fn max_duration(&self) -> Duration {
        match self {
            Executor::ConstantArrivalRate { duration, .. }
            | Executor::ConstantVus { duration, .. } => *duration,
            Executor::RampingArrivalRate { stages, .. } => stages.iter().map(|s| s.duration).sum(),
            Executor::RampingVus { stages, .. } => stages.iter().map(|s| s.duration).sum(),
            Executor::PerVuIterations { max_duration, .. }
            | Executor::SharedIterations { max_duration, .. } => *max_duration,
        }
    }

    /// Iterations the executor will start if nothing stops it early (open model and iteration
    /// executors; `None` for VU executors, whose count depends on response times).
    pub fn planned_iterations(&self) -> Option<u64> {
        match self {
            Executor::ConstantArrivalRate { rate, duration, .. } => Some(rate.events_in(*duration)),
            Executor::RampingArrivalRate {
                start_rate, stages, ..
            } => Some(crate::ramp::RampSchedule::new(*start_rate, stages).total()),
            Executor::PerVuIterations {
                vus, iterations, ..
            } => Some(u64::from(*vus) * iterations),
            Executor::SharedIterations { iterations, .. } => Some(*iterations),
            Executor::ConstantVus { .. } | Executor::RampingVus { .. } => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub name: String,
    pub method: String,
    pub path: Template,
    pub query: Vec<(String, Template)>,
    pub headers: Vec<(String, Template)>,
    pub body: Option<Body>,
    pub auth: AuthRef,
    pub expect: Expect,
    pub extract: Vec<(String, Extract)>,
    pub poll: Option<Poll>,
}

#[derive(Clone, Debug)]
pub enum Body {
    Text(Template),
    /// A JSON document whose string values are templates.
    Json(JsonTemplate),
}

#[derive(Clone, Debug)]
pub enum JsonTemplate {
    Literal(serde_json::Value),
    String(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRef {
    /// The scenario's credential, if any.
    Inherit,
    /// No Authorization header.
    None,
    /// Index into `Plan::auth`.
    Named(usize),
}

#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Empty: any 2xx or 3xx passes.
    pub status: Vec<u16>,
    pub json: Vec<JsonCheck>,
}

impl Expect {
    pub fn status_ok(&self, status: u16) -> bool {
        if self.status.is_empty() {
            (200..400).contains(&status)
        } else {
            self.status.contains(&status)
        }
    }
}

#[derive(Clone, Debug)]
pub struct JsonCheck {
    pub pointer: String,
    pub test: JsonTest,
}

#[derive(Clone, Debug)]
pub enum JsonTest {
    Exists(bool),
    Equals(serde_json::Value),
    OneOf(Vec<serde_json::Value>),
}

impl JsonCheck {
    pub fn holds(&self, doc: &serde_json::Value) -> bool {
        let v = doc.pointer(&self.pointer);
        match &self.test {
            JsonTest::Exists(e) => v.is_some() == *e,
            JsonTest::Equals(x) => v == Some(x),
            JsonTest::OneOf(xs) => v.is_some_and(|v| xs.contains(v)),
        }
    }
}

#[derive(Clone, Debug)]
pub enum ExtractFrom {
    JsonPointer(String),
    Header(String),
}

#[derive(Clone, Debug)]
pub struct Extract {
    pub from: ExtractFrom,
    pub required: bool,
}

#[derive(Clone, Debug)]
pub struct Poll {
    pub until: Expect,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_attempts: Option<u32>,
}

/// Default values, in one place so docs and code agree.
pub mod defaults {
    use std::time::Duration;
    pub const GRACEFUL_STOP: Duration = Duration::from_secs(30);
    pub const GRACEFUL_RAMP_DOWN: Duration = Duration::from_secs(30);
    pub const MAX_DURATION: Duration = Duration::from_secs(600);
    pub const MAX_IN_FLIGHT: u32 = 1000;
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// `http.maxBodyBytes`: far above an API's JSON answers, small enough that a few hundred
    /// responses in flight cannot exhaust a worker pod's memory.
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    /// The highest `http.maxBodyBytes` a plan may set: bodies are held in memory whole when a
    /// check or extract needs them.
    pub const MAX_BODY_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
    pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
    pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub const POLL_TIMEOUT: Duration = Duration::from_secs(60);
    pub const RETRY_ATTEMPTS_WHEN_ENABLED: u32 = 5;
    /// `http.correlationId` when the plan does not say: the header most API vendors' support
    /// desks ask for.
    pub const CORRELATION_HEADER: &str = "x-correlation-id";
}
