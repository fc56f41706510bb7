//! The mock API's configuration: what a YAML file given to `pacer mock --config` contains.
//!
//! Every field has a default, so a file only states what differs from the demo API
//! ([`MockConfig::default`]). Durations are humantime strings (`60s`, `1m`, `250ms`) or plain
//! numbers of seconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::MockError;

/// The body of every static-mode answer when no `staticBody` is given.
pub const DEFAULT_STATIC_BODY: &str = "{\"ok\":true}";

/// The largest `staticBody` file: a benchmark body is a realistic API answer (an analytics
/// page of conversations is tens to hundreds of KiB), and the whole file is held in memory
/// once for the server's life.
pub const MAX_STATIC_BODY: u64 = 16 * 1024 * 1024;

/// The whole configuration of the mock API.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MockConfig {
    /// Address to listen on (used by `run_cli`; `serve` takes a bound listener instead).
    pub listen: SocketAddr,
    /// Benchmark mode: every path answers 200 with a tiny fixed body; no auth, limits or
    /// faults, only a request counter.
    #[serde(rename = "static")]
    pub static_mode: bool,
    /// With `static`: a file whose bytes are the body of every answer (read once at start,
    /// at most [`MAX_STATIC_BODY`]), instead of `{"ok":true}`. A path relative to the working
    /// directory.
    pub static_body: Option<PathBuf>,
    /// Whether API endpoints require a bearer token from `/oauth/token`.
    pub auth: AuthMode,
    /// Lifetime of issued tokens (`expires_in`).
    #[serde(with = "duration_str")]
    pub token_lifetime: Duration,
    /// OAuth2 clients allowed to use the client-credentials grant.
    pub clients: Vec<ClientConfig>,
    /// Per-client limit on `/oauth/token`; `null` for none.
    pub token_rate_limit: Option<TokenRateLimit>,
    /// Rate limits applied to API requests (not to `/oauth/token` nor `/_mock/`).
    pub limits: Vec<LimitConfig>,
    /// Which rate-limit header families successful and throttled responses carry.
    pub headers: HeadersConfig,
    /// Service time added to API responses.
    pub latency: LatencyConfig,
    /// Periodic windows during which every response is held until the window ends.
    pub stall: Option<StallConfig>,
    /// A scheduled period of 503 answers, relative to server start.
    pub unavailable: Option<UnavailableConfig>,
    /// How `Retry-After` is written on 429 and 503 answers.
    pub retry_after_format: RetryAfterFormat,
    /// Shape of the fake data the endpoints return.
    pub endpoints: EndpointsConfig,
    /// Keep one (time, status, worker) entry per API request, served at `/_mock/arrivals`.
    pub record_arrivals: bool,
    /// Cap of the arrival log; later arrivals are counted as dropped.
    pub max_arrivals: usize,
    /// Cap of distinct `X-Pacer-Worker` ids tallied; later ids are counted as overflow.
    pub max_workers: usize,
}

impl Default for MockConfig {
    /// A demo API shaped like Genesys Cloud: one client, per-token and per-org limits, a
    /// little latency.
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            static_mode: false,
            static_body: None,
            auth: AuthMode::Required,
            token_lifetime: Duration::from_secs(3600),
            clients: vec![ClientConfig {
                id: "pacer-demo".into(),
                secret: "demo-secret".into(),
                org: "demo-org".into(),
            }],
            token_rate_limit: Some(TokenRateLimit::default()),
            limits: vec![
                LimitConfig::new(
                    "token.rate.per.minute",
                    LimitKey::Token,
                    300,
                    Duration::from_secs(60),
                ),
                LimitConfig {
                    path_prefix: Some("/api/v2/analytics/".into()),
                    ..LimitConfig::new(
                        "analytics.org.rate.per.minute",
                        LimitKey::Org,
                        600,
                        Duration::from_secs(60),
                    )
                },
            ],
            headers: HeadersConfig::default(),
            latency: LatencyConfig::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_millis(50),
            },
            stall: None,
            unavailable: None,
            retry_after_format: RetryAfterFormat::Seconds,
            endpoints: EndpointsConfig::default(),
            record_arrivals: false,
            max_arrivals: 2_000_000,
            max_workers: 1024,
        }
    }
}

/// Whether the API endpoints check bearer tokens.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum AuthMode {
    /// A valid, unexpired token from `/oauth/token` is required (401 otherwise).
    Required,
    /// No token needed; limits keyed by token/client/org use the key `anonymous` unless a
    /// known token is sent anyway.
    Off,
}

/// One OAuth2 client of the client-credentials grant.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    pub secret: String,
    /// Organization the client belongs to (the key of `org` limits).
    pub org: String,
}

/// The per-client limit of the token endpoint (Genesys calls it
/// `client.credentials.token.rate.per.minute`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRateLimit {
    #[serde(default = "TokenRateLimit::default_name")]
    pub name: String,
    pub limit: u64,
    #[serde(with = "duration_str")]
    pub window: Duration,
}

impl TokenRateLimit {
    fn default_name() -> String {
        "client.credentials.token.rate.per.minute".into()
    }
}

impl Default for TokenRateLimit {
    fn default() -> Self {
        TokenRateLimit {
            name: Self::default_name(),
            limit: 300,
            window: Duration::from_secs(60),
        }
    }
}

/// What a limit counts requests by.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum LimitKey {
    /// The bearer token (Genesys' `token.rate.per.minute`).
    Token,
    /// The OAuth client the token was issued to.
    Client,
    /// The organization of that client.
    Org,
    /// Every request shares one counter.
    Global,
}

impl LimitKey {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LimitKey::Token => "token",
            LimitKey::Client => "client",
            LimitKey::Org => "org",
            LimitKey::Global => "global",
        }
    }
}

/// How a limit counts: a window (fixed or sliding) of `limit` per `window`, or a bucket
/// refilled (drained) at the rate `limit / window`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// A window opens at the first request of a key and lasts `window`; the count starts over
    /// when it ends (like Genesys per-minute windows). Up to twice the limit can pass in a
    /// sliding window straddling two fixed ones, as with the real thing.
    #[default]
    Fixed,
    /// Exact sliding log: at most `limit` accepted requests in any `window`.
    Sliding,
    /// A bucket of `burst` tokens (default `limit`), refilled at `limit / window`; a request
    /// takes a token and is refused when none is left (AWS API Gateway, Stripe, Envoy).
    TokenBucket,
    /// nginx's `limit_req`: an excess per key grows by one request per request and drains at
    /// `limit / window`; a request that would take it above `burst` (default 0) is refused.
    /// Within the burst a request waits its turn, or is answered at once with `nodelay`.
    LeakyBucket,
}

impl Algorithm {
    /// Whether the limit has a `burst` (the buckets).
    pub fn is_bucket(self) -> bool {
        matches!(self, Algorithm::TokenBucket | Algorithm::LeakyBucket)
    }
}

/// One rate limit of the API.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitConfig {
    /// Name reported in the 429 body and the headers, e.g. `token.rate.per.minute`.
    pub name: String,
    pub key: LimitKey,
    /// Requests allowed per window and key; for a bucket, `limit / window` is its rate.
    pub limit: u64,
    #[serde(with = "duration_str")]
    pub window: Duration,
    /// Only requests with one of these methods count (all methods when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Only requests whose path starts with this count (all paths when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Buckets only: the token bucket's size (default `limit`), or nginx's `burst` (default 0:
    /// one request per `window / limit`, like nginx without `burst=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Leaky bucket only: answer requests within the burst at once instead of delaying each
    /// until its turn (nginx's `nodelay`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub nodelay: bool,
    /// Whether a refusal by this limit carries `Retry-After` (nginx sends none).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub retry_after: bool,
    /// HTTP status of a refusal by this limit (nginx's `limit_req_status` defaults to 503).
    #[serde(default = "LimitConfig::default_status")]
    pub status: u16,
    /// The rate-limit header families this limit reports; the global `headers` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersConfig>,
}

impl LimitConfig {
    /// The status of a refusal unless `status` says otherwise.
    pub const DEFAULT_STATUS: u16 = 429;

    fn default_status() -> u16 {
        Self::DEFAULT_STATUS
    }

    /// A fixed window of `limit` per `window` on every method and path, refused with 429 and
    /// `Retry-After`; set the other fields on the result (`..LimitConfig::new(..)`).
    pub fn new(name: impl Into<String>, key: LimitKey, limit: u64, window: Duration) -> Self {
        LimitConfig {
            name: name.into(),
            key,
            limit,
            window,
            ..LimitConfig::default()
        }
    }
}

impl Default for LimitConfig {
    /// The optional fields at their defaults (as a file that omits them), for
    /// `LimitConfig { name, key, limit, window, ..LimitConfig::default() }`. The name, limit
    /// and window themselves are placeholders that `validate` refuses.
    fn default() -> Self {
        LimitConfig {
            name: String::new(),
            key: LimitKey::Global,
            limit: 0,
            window: Duration::ZERO,
            methods: None,
            path_prefix: None,
            algorithm: Algorithm::Fixed,
            burst: None,
            nodelay: false,
            retry_after: true,
            status: Self::DEFAULT_STATUS,
            headers: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which rate-limit header families responses carry (globally, or for one limit). All false
/// is "none", as nginx.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// `inin-ratelimit-count/allowed/reset` (Genesys Cloud).
    pub inin: bool,
    /// `X-RateLimit-Limit/Remaining/Reset` (the de-facto fields of GitHub and many others).
    pub x_rate_limit: bool,
    /// What `X-RateLimit-Reset` holds: a Unix time (GitHub) or seconds from now.
    pub x_rate_limit_reset: ResetFormat,
    /// IETF draft `RateLimit-Policy` and `RateLimit` fields.
    pub ietf: bool,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            inin: true,
            x_rate_limit: false,
            x_rate_limit_reset: ResetFormat::Epoch,
            ietf: false,
        }
    }
}

/// How a reset instant is written: both exist in the wild.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ResetFormat {
    /// Unix time in seconds of the reset (GitHub).
    #[default]
    Epoch,
    /// Seconds from now until the reset (rounded up).
    Seconds,
}

/// Distribution of the service time added to API responses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum LatencyConfig {
    /// Answer at once.
    #[default]
    None,
    Fixed {
        #[serde(with = "duration_str")]
        value: Duration,
    },
    Uniform {
        #[serde(with = "duration_str")]
        min: Duration,
        #[serde(with = "duration_str")]
        max: Duration,
    },
    /// Normal, clamped at zero.
    Normal {
        #[serde(with = "duration_str")]
        mean: Duration,
        #[serde(with = "duration_str")]
        stddev: Duration,
    },
    /// Log-normal given by its median and 99th percentile (a long right tail, as real APIs).
    Lognormal {
        #[serde(with = "duration_str")]
        median: Duration,
        #[serde(with = "duration_str")]
        p99: Duration,
    },
    Exponential {
        #[serde(with = "duration_str")]
        mean: Duration,
    },
}

/// Periodic stalls: windows `[k*every, k*every + for)` after server start (k >= 1) during which
/// every response is held until the window ends. Shows coordinated omission in the client.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StallConfig {
    #[serde(with = "duration_str")]
    pub every: Duration,
    #[serde(rename = "for", with = "duration_str")]
    pub duration: Duration,
}

/// A period of 503 Service Unavailable on the API endpoints.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnavailableConfig {
    /// Start, relative to server start (in the config) or to now (at runtime).
    #[serde(default, with = "duration_str")]
    pub start: Duration,
    #[serde(rename = "for", with = "duration_str")]
    pub duration: Duration,
    /// Seconds sent in `Retry-After` (formatted as `retryAfterFormat` says).
    #[serde(default = "default_retry_after")]
    pub retry_after: u64,
}

fn default_retry_after() -> u64 {
    1
}

/// How `Retry-After` is written on 429 and 503 answers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RetryAfterFormat {
    /// Delay in whole seconds, e.g. `3`.
    #[default]
    Seconds,
    /// An IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
    HttpDate,
    /// No `Retry-After` header at all.
    Missing,
    /// Rotates through `soon`, `-5` and `99999999999`, to test clients' clamping.
    Malformed,
}

/// Shape of the fake data.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EndpointsConfig {
    /// Any path not listed answers 200 with a small JSON body; 404 when false.
    pub catch_all: bool,
    /// `totalHits` of the conversation details query.
    pub query_total_hits: u64,
    /// Page size of the query when the request does not set `paging.pageSize`.
    pub query_page_size: u64,
    /// Time for an analytics job to become FULFILLED.
    #[serde(with = "duration_str")]
    pub job_delay: Duration,
    /// Number of result pages of a job.
    pub job_pages: u64,
    /// Conversations per job result page.
    pub job_page_size: u64,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            catch_all: true,
            query_total_hits: 25,
            query_page_size: 5,
            job_delay: Duration::from_secs(2),
            job_pages: 3,
            job_page_size: 5,
        }
    }
}

/// Largest page the query endpoint returns, as Genesys (keeps responses small on any input).
pub(crate) const MAX_PAGE_SIZE: u64 = 100;
/// Windows longer than a day are almost certainly a typo (ms vs s).
const MAX_WINDOW: Duration = Duration::from_secs(86_400);

impl MockConfig {
    /// The body of every static-mode answer: `staticBody`'s bytes, or `{"ok":true}`. Read once
    /// at start; a file over [`MAX_STATIC_BODY`] is an error, not a truncated body.
    pub(crate) fn read_static_body(&self) -> Result<bytes::Bytes, MockError> {
        use std::io::Read;
        let Some(path) = &self.static_body else {
            return Ok(bytes::Bytes::from_static(DEFAULT_STATIC_BODY.as_bytes()));
        };
        let read_error = |source| MockError::ReadStaticBody {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut body = Vec::new();
        // One byte past the cap tells a file at the cap from a larger one.
        file.take(MAX_STATIC_BODY + 1)
            .read_to_end(&mut body)
            .map_err(read_error)?;
        if body.len() as u64 > MAX_STATIC_BODY {
            return Err(MockError::invalid(
                "staticBody",
                format!(
                    "{} is larger than {MAX_STATIC_BODY} bytes, the most a static body may be",
                    path.display()
                ),
            ));
        }
        Ok(body.into())
    }

    /// Checks ranges and consistency; names the offending field.
    pub fn validate(&self) -> Result<(), MockError> {
        if self.static_body.is_some() && !self.static_mode {
            return Err(MockError::invalid(
                "staticBody",
                "is the body of static mode's answers: set `static: true` (--static) too",
            ));
        }
        if self.token_lifetime.is_zero() {
            return Err(MockError::invalid("tokenLifetime", "must be > 0"));
        }
        let mut ids = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.id.is_empty() {
                return Err(MockError::invalid(format!("clients[{i}].id"), "is empty"));
            }
            if !ids.insert(c.id.as_str()) {
                return Err(MockError::invalid(
                    format!("clients[{i}].id"),
                    format!("duplicate client id {:?}", c.id),
                ));
            }
        }
        if self.auth == AuthMode::Required && self.clients.is_empty() && !self.static_mode {
            return Err(MockError::invalid(
                "clients",
                "auth is required but no client can obtain a token",
            ));
        }
        if let Some(t) = &self.token_rate_limit {
            check_limit_shape("tokenRateLimit", &t.name, t.limit, t.window)?;
        }
        let mut names = HashSet::new();
        for (i, l) in self.limits.iter().enumerate() {
            let field = format!("limits[{i}]");
            check_limit_shape(&field, &l.name, l.limit, l.window)?;
            if !names.insert(l.name.as_str()) {
                return Err(MockError::invalid(
                    format!("{field}.name"),
                    format!("duplicate limit name {:?}", l.name),
                ));
            }
            if let Some(methods) = &l.methods {
                for (j, m) in methods.iter().enumerate() {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(MockError::invalid(
                            format!("{field}.methods[{j}]"),
                            format!("{m:?} is not an HTTP method"),
                        ));
                    }
                }
            }
            if let Some(p) = &l.path_prefix
                && !p.starts_with('/')
            {
                return Err(MockError::invalid(
                    format!("{field}.pathPrefix"),
                    "must start with '/'",
                ));
            }
            check_limit_answer(&field, l)?;
        }
        validate_latency("latency", &self.latency)?;
        if let Some(s) = &self.stall {
            validate_stall("stall", s)?;
        }
        if let Some(u) = &self.unavailable
            && u.duration.is_zero()
        {
            return Err(MockError::invalid("unavailable.for", "must be > 0"));
        }
        let e = &self.endpoints;
        if e.query_page_size == 0 || e.query_page_size > MAX_PAGE_SIZE {
            return Err(MockError::invalid(
                "endpoints.queryPageSize",
                format!("must be 1..={MAX_PAGE_SIZE}"),
            ));
        }
        if e.job_page_size == 0 || e.job_page_size > MAX_PAGE_SIZE {
            return Err(MockError::invalid(
                "endpoints.jobPageSize",
                format!("must be 1..={MAX_PAGE_SIZE}"),
            ));
        }
        if e.job_pages == 0 || e.job_pages > 10_000 {
            return Err(MockError::invalid(
                "endpoints.jobPages",
                "must be 1..=10000",
            ));
        }
        if self.max_workers > 1_000_000 {
            return Err(MockError::invalid("maxWorkers", "must be <= 1000000"));
        }
        if self.max_arrivals > 100_000_000 {
            return Err(MockError::invalid("maxArrivals", "must be <= 100000000"));
        }
        Ok(())
    }
}

fn check_limit_shape(
    field: &str,
    name: &str,
    limit: u64,
    window: Duration,
) -> Result<(), MockError> {
    if name.is_empty() {
        return Err(MockError::invalid(format!("{field}.name"), "is empty"));
    }
    // The name goes into headers (quoted in the IETF fields): keep it printable and unquoted.
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b',' && b != b';')
    {
        return Err(MockError::invalid(
            format!("{field}.name"),
            "must be printable ASCII without spaces, quotes, ',' or ';'",
        ));
    }
    if limit == 0 {
        return Err(MockError::invalid(format!("{field}.limit"), "must be > 0"));
    }
    if window < Duration::from_millis(1) || window > MAX_WINDOW {
        return Err(MockError::invalid(
            format!("{field}.window"),
            "must be between 1ms and 24h",
        ));
    }
    Ok(())
}

/// The bucket settings and the refusal of one limit.
fn check_limit_answer(field: &str, l: &LimitConfig) -> Result<(), MockError> {
    match (l.algorithm, l.burst) {
        (Algorithm::Fixed | Algorithm::Sliding, Some(_)) => {
            return Err(MockError::invalid(
                format!("{field}.burst"),
                "only token-bucket and leaky-bucket limits have a burst",
            ));
        }
        (Algorithm::TokenBucket, Some(0)) => {
            return Err(MockError::invalid(
                format!("{field}.burst"),
                "a token bucket needs room for at least 1 token",
            ));
        }
        _ => {}
    }
    if l.nodelay && l.algorithm != Algorithm::LeakyBucket {
        return Err(MockError::invalid(
            format!("{field}.nodelay"),
            "only a leaky-bucket limit delays requests (nginx's nodelay)",
        ));
    }
    if !(400..=599).contains(&l.status) {
        return Err(MockError::invalid(
            format!("{field}.status"),
            format!("{} is not an error status (400..=599)", l.status),
        ));
    }
    Ok(())
}

pub(crate) fn validate_latency(field: &str, l: &LatencyConfig) -> Result<(), MockError> {
    // Above a minute the client has long timed out; a typo is more likely than intent.
    let cap = Duration::from_secs(60);
    let too_big = |d: &Duration| *d > cap;
    match l {
        LatencyConfig::None => {}
        LatencyConfig::Fixed { value } if too_big(value) => {
            return Err(MockError::invalid(
                format!("{field}.value"),
                "must be <= 60s",
            ));
        }
        LatencyConfig::Uniform { min, max } if min > max || too_big(max) => {
            return Err(MockError::invalid(field, "uniform needs min <= max <= 60s"));
        }
        LatencyConfig::Normal { mean, stddev } if too_big(mean) || too_big(stddev) => {
            return Err(MockError::invalid(
                field,
                "normal needs mean, stddev <= 60s",
            ));
        }
        LatencyConfig::Lognormal { median, p99 }
            if median.is_zero() || p99 < median || too_big(p99) =>
        {
            return Err(MockError::invalid(
                field,
                "lognormal needs 0 < median <= p99 <= 60s",
            ));
        }
        LatencyConfig::Exponential { mean } if too_big(mean) => {
            return Err(MockError::invalid(
                format!("{field}.mean"),
                "must be <= 60s",
            ));
        }
        _ => {}
    }
    Ok(())
}

pub(crate) fn validate_stall(field: &str, s: &StallConfig) -> Result<(), MockError> {
    if s.every.is_zero() {
        return Err(MockError::invalid(format!("{field}.every"), "must be > 0"));
    }
    if s.duration >= s.every {
        return Err(MockError::invalid(
            format!("{field}.for"),
            "must be shorter than every",
        ));
    }
    Ok(())
}

/// Parses a duration given as humantime (`1s`, `250ms`, `1m 30s`) or as bare seconds (`1.5`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return seconds_to_duration(secs);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn seconds_to_duration(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {secs} s"))
}

/// Serde for durations as humantime strings (or numbers of seconds when reading).
pub(crate) mod duration_str {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"60s\", \"250ms\" or a number of seconds")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            super::seconds_to_duration(v).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips_through_yaml() {
        let c = MockConfig::default();
        c.validate().unwrap();
        let yaml = serde_saphyr::to_string(&c).unwrap();
        let back: MockConfig = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn partial_yaml_keeps_defaults() {
        let yaml = r#"
auth: off
tokenLifetime: 2s
limits:
  - name: per-token
    key: token
    limit: 5
    window: 1s
  - name: analytics
    key: org
    limit: 10
    window: 1.5
    methods: [POST]
    pathPrefix: /api/v2/analytics/
    algorithm: sliding
latency: {type: lognormal, median: 10ms, p99: 100ms}
stall: {every: 10s, for: 1s}
unavailable: {start: 5s, for: 2s, retryAfter: 3}
retryAfterFormat: http-date
headers: {ietf: true}
"#;
        let c: MockConfig = serde_saphyr::from_str(yaml).unwrap();
        c.validate().unwrap();
        assert_eq!(c.auth, AuthMode::Off);
        assert_eq!(c.token_lifetime, Duration::from_secs(2));
        assert_eq!(c.limits[1].window, Duration::from_millis(1500));
        assert_eq!(c.limits[1].algorithm, Algorithm::Sliding);
        assert_eq!(c.clients, MockConfig::default().clients);
        assert!(c.headers.inin && c.headers.ietf && !c.headers.x_rate_limit);
        assert_eq!(c.retry_after_format, RetryAfterFormat::HttpDate);
        assert_eq!(
            c.stall,
            Some(StallConfig {
                every: Duration::from_secs(10),
                duration: Duration::from_secs(1)
            })
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(serde_saphyr::from_str::<MockConfig>("limitz: []").is_err());
        assert!(
            serde_saphyr::from_str::<MockConfig>("latency: {type: fixed, value: 1s, extra: 1}")
                .is_err()
        );
        assert!(serde_saphyr::from_str::<MockConfig>("tokenLifetime: forever").is_err());
        let c: MockConfig =
            serde_saphyr::from_str("limits: [{name: a, key: token, limit: 0, window: 1s}]")
                .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits[0].limit"), "{err}");
        let c: MockConfig =
            serde_saphyr::from_str("latency: {type: lognormal, median: 10ms, p99: 1ms}").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn bucket_settings_are_read_and_misplaced_ones_named() {
        let yaml = r#"
headers: {xRateLimit: true, xRateLimitReset: seconds}
limits:
  - {name: tb, key: global, limit: 5, window: 1s, algorithm: token-bucket, burst: 10}
  - {name: lb, key: token, limit: 5, window: 1s, algorithm: leaky-bucket, burst: 5,
     nodelay: true, retryAfter: false, status: 503, headers: {inin: false, ietf: true}}
"#;
        let c: MockConfig = serde_saphyr::from_str(yaml).unwrap();
        c.validate().unwrap();
        assert_eq!(c.headers.x_rate_limit_reset, ResetFormat::Seconds);
        assert_eq!(
            (c.limits[0].algorithm, c.limits[0].burst),
            (Algorithm::TokenBucket, Some(10))
        );
        let lb = &c.limits[1];
        assert!(lb.nodelay && !lb.retry_after);
        assert_eq!(lb.status, 503);
        assert_eq!(
            lb.headers,
            Some(HeadersConfig {
                inin: false,
                ietf: true,
                ..HeadersConfig::default()
            })
        );
        for (yaml, field) in [
            ("{algorithm: fixed, burst: 3}", "limits[0].burst"),
            ("{algorithm: token-bucket, burst: 0}", "limits[0].burst"),
            (
                "{algorithm: token-bucket, nodelay: true}",
                "limits[0].nodelay",
            ),
            ("{status: 200}", "limits[0].status"),
        ] {
            let full = format!(
                "limits: [{{name: a, key: token, limit: 5, window: 1s, {}}}]",
                &yaml[1..yaml.len() - 1]
            );
            let c: MockConfig = serde_saphyr::from_str(&full).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        let err = serde_saphyr::from_str::<MockConfig>(
            "limits: [{name: a, key: token, limit: 5, window: 1s, algorithm: bucket}]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("token-bucket"), "{err}");
    }
}
