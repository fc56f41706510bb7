//! Command-line options of `pacer mock`: a YAML file (`--config`) plus flags that override
//! its common fields.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::config::{
    AuthMode, ClientConfig, LatencyConfig, LimitConfig, LimitKey, MockConfig, ResetFormat,
    RetryAfterFormat, StallConfig, TokenRateLimit, UnavailableConfig, parse_duration,
};
use crate::error::MockError;

/// A setting a flag can also turn off (`off`).
#[derive(Debug, Clone, PartialEq)]
pub enum Switch<T> {
    Off,
    On(T),
}

impl<T> Switch<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Switch::Off => None,
            Switch::On(t) => Some(t),
        }
    }
}

impl<T: FromStr<Err = String>> FromStr for Switch<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            Ok(Switch::Off)
        } else {
            s.parse().map(Switch::On)
        }
    }
}

/// Options of `pacer mock`: a rate-limited API (Genesys Cloud shaped) for demos, tests and
/// benchmarks.
///
/// Endpoints: POST /oauth/token (client credentials), POST
/// /api/v2/analytics/conversations/details/query, GET /api/v2/users/me, the analytics jobs API
/// (POST .../details/jobs, GET .../jobs/{id}, GET .../jobs/{id}/results?cursor=), any other
/// path (catch-all), and the control endpoints GET /_mock/stats, POST /_mock/reset,
/// GET|POST /_mock/faults, GET /_mock/arrivals.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MockArgs {
    /// YAML configuration file; the flags below override its fields. `--print-config` shows
    /// the format (the effective configuration).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Benchmark mode: every path answers 200 with a tiny fixed JSON body; no auth, limits,
    /// faults or latency, and no statistics beyond a request counter.
    #[arg(long = "static")]
    pub static_mode: bool,

    /// With --static: answer every request with FILE's bytes (read once at start, at most
    /// 16 MiB, served as application/json) instead of the tiny body; for benchmarks whose
    /// client parses and checks a realistic answer.
    #[arg(long, value_name = "FILE")]
    pub static_body: Option<PathBuf>,

    /// Whether API endpoints require a bearer token from /oauth/token [default: required].
    #[arg(long, value_enum, value_name = "MODE")]
    pub auth: Option<AuthMode>,

    /// Lifetime of issued tokens, e.g. `3600s`, `5m`, `2s` [default: 3600s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub token_lifetime: Option<Duration>,

    /// An OAuth client as `ID:SECRET[:ORG]` (ORG defaults to `demo-org`). Repeatable; replaces
    /// the configured clients [default: pacer-demo:demo-secret:demo-org].
    #[arg(long = "client", value_name = "ID:SECRET[:ORG]", value_parser = parse_client)]
    pub clients: Vec<ClientConfig>,

    /// A rate limit as NAME:KEY:N/WINDOW[,OPTION=VALUE...], KEY being token, client, org or
    /// global; e.g. `token.rate.per.minute:token:300/60s` (a fixed window on all methods and
    /// paths) or `api:global:5/1s,algorithm=leaky-bucket,burst=5,nodelay,status=503,
    /// retryAfter=false`. OPTIONs are the limit fields of the config file (algorithm: fixed,
    /// sliding, token-bucket, leaky-bucket; burst; nodelay; retryAfter; status; pathPrefix).
    /// Repeatable; replaces the configured limits [default:
    /// token.rate.per.minute:token:300/60s and analytics.org.rate.per.minute:org:600/60s on
    /// /api/v2/analytics/].
    #[arg(long = "limit", value_name = "NAME:KEY:N/WINDOW[,OPT=V]", value_parser = parse_limit)]
    pub limits: Vec<LimitConfig>,

    /// No API rate limits at all (neither configured nor `--limit`).
    #[arg(long, conflicts_with = "limits")]
    pub no_limits: bool,

    /// Per-client limit of /oauth/token as N/WINDOW (e.g. `300/60s`), or `off`
    /// [default: 300/60s].
    #[arg(long, value_name = "N/WINDOW|off")]
    pub token_rate_limit: Option<Switch<TokenLimitSpec>>,

    /// Service time of API responses: `none`, `fixed:D`, `uniform:MIN:MAX`,
    /// `normal:MEAN:STDDEV`, `lognormal:MEDIAN:P99`, `exponential:MEAN`, or a bare duration
    /// (fixed) [default: uniform:5ms:50ms].
    #[arg(long, value_name = "SPEC")]
    pub latency: Option<LatencyConfig>,

    /// Stall windows as EVERY:FOR, e.g. `10s:1s`: from EVERY after start, for FOR in every
    /// EVERY, every response is held until the window ends (shows coordinated omission).
    /// `off` disables [default: off].
    #[arg(long, value_name = "EVERY:FOR|off")]
    pub stall: Option<Switch<StallConfig>>,

    /// A period of 503s on API endpoints as `START:FOR[:RETRY_AFTER]` after server start, e.g.
    /// `5s:2s:1` (RETRY_AFTER in seconds, default 1). `off` disables [default: off].
    #[arg(long, value_name = "START:FOR[:SECS]|off")]
    pub unavailable: Option<Switch<UnavailableSpec>>,

    /// How Retry-After is written on 429 and 503 [default: seconds].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub retry_after_format: Option<RetryAfterFormat>,

    /// Do not send the Genesys `inin-ratelimit-count/allowed/reset` headers (sent by default).
    #[arg(long)]
    pub no_inin_headers: bool,

    /// Send GitHub-style `X-RateLimit-Limit/Remaining/Reset` headers (Reset: Unix seconds
    /// unless `--x-ratelimit-reset seconds`).
    #[arg(long)]
    pub x_ratelimit_headers: bool,

    /// What `X-RateLimit-Reset` holds: `epoch` (Unix seconds, GitHub) or `seconds` until the
    /// reset [default: epoch].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub x_ratelimit_reset: Option<ResetFormat>,

    /// Send the IETF draft `RateLimit-Policy` and `RateLimit` headers.
    #[arg(long)]
    pub ietf_headers: bool,

    /// Answer 404 on paths the mock does not model (by default they answer 200 with a small
    /// JSON body).
    #[arg(long)]
    pub no_catch_all: bool,

    /// Keep a log of API arrivals (time, status, X-Pacer-Worker, X-Correlation-Id, path),
    /// served at GET /_mock/arrivals.
    #[arg(long)]
    pub record_arrivals: bool,

    /// Cap of the arrival log; later arrivals are only counted [default: 2000000].
    #[arg(long, value_name = "N")]
    pub max_arrivals: Option<usize>,

    /// Print the effective configuration (file + flags) as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `N/WINDOW` of `--token-rate-limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLimitSpec {
    pub limit: u64,
    pub window: Duration,
}

impl FromStr for TokenLimitSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (limit, window) = parse_rate(s)?;
        Ok(TokenLimitSpec { limit, window })
    }
}

/// `START:FOR[:RETRY_AFTER]` of `--unavailable`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnavailableSpec(pub UnavailableConfig);

impl FromStr for UnavailableSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "{s:?}: expected START:FOR[:RETRY_AFTER], e.g. 5s:2s:1"
            ));
        }
        let retry_after = match parts.get(2) {
            Some(r) => r
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: RETRY_AFTER must be whole seconds"))?,
            None => 1,
        };
        Ok(UnavailableSpec(UnavailableConfig {
            start: parse_duration(parts[0])?,
            duration: parse_duration(parts[1])?,
            retry_after,
        }))
    }
}

/// `N/WINDOW`, e.g. `300/60s` or `5/1`.
fn parse_rate(s: &str) -> Result<(u64, Duration), String> {
    let (n, w) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected N/WINDOW, e.g. 300/60s"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a whole number"))?;
    Ok((n, parse_duration(w)?))
}

fn parse_client(s: &str) -> Result<ClientConfig, String> {
    let mut parts = s.splitn(3, ':');
    let id = parts.next().unwrap_or_default();
    let secret = parts
        .next()
        .ok_or_else(|| format!("{s:?}: expected ID:SECRET[:ORG]"))?;
    let org = parts.next().unwrap_or("demo-org");
    if id.is_empty() || org.is_empty() {
        return Err(format!("{s:?}: ID and ORG must not be empty"));
    }
    Ok(ClientConfig {
        id: id.into(),
        secret: secret.into(),
        org: org.into(),
    })
}

/// `NAME:KEY:N/WINDOW[,OPTION=VALUE...]`: the options are the limit's fields of the config
/// file (`algorithm=token-bucket,burst=5,nodelay,retryAfter=false,status=503`), read by the
/// same deserializer, so the flag and the file cannot disagree.
fn parse_limit(s: &str) -> Result<LimitConfig, String> {
    // Limit names cannot contain ',' (validated), so the first one ends the rate.
    let (head, options) = s.split_once(',').unwrap_or((s, ""));
    let base = parse_limit_head(head)?;
    if options.is_empty() {
        return Ok(base);
    }
    let mut fields = match serde_json::to_value(&base) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err(format!("{s:?}: cannot represent the limit")),
    };
    for option in options.split(',') {
        let (k, v) = option.split_once('=').unwrap_or((option, "true"));
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("{s:?}: empty option (expected OPTION=VALUE)"));
        }
        // Numbers and booleans as such, anything else as a string.
        let value = serde_json::from_str::<serde_json::Value>(v)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| serde_json::Value::String(v.to_owned()));
        fields.insert(k.to_owned(), value);
    }
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| format!("{s:?}: {e}"))
}

/// `NAME:KEY:N/WINDOW`: a fixed window on every method and path.
fn parse_limit_head(s: &str) -> Result<LimitConfig, String> {
    // From the right, so a name may contain ':'.
    let mut parts = s.rsplitn(3, ':');
    let rate = parts.next().unwrap_or_default();
    let (Some(key), Some(name)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "{s:?}: expected NAME:KEY:N/WINDOW, e.g. token.rate.per.minute:token:300/60s"
        ));
    };
    let key = match key.trim().to_ascii_lowercase().as_str() {
        "token" => LimitKey::Token,
        "client" => LimitKey::Client,
        "org" => LimitKey::Org,
        "global" => LimitKey::Global,
        other => {
            return Err(format!(
                "{s:?}: key {other:?} is not one of token, client, org, global"
            ));
        }
    };
    let (limit, window) = parse_rate(rate)?;
    Ok(LimitConfig::new(name.trim(), key, limit, window))
}

fn load_file(path: &Path) -> Result<MockConfig, MockError> {
    let text = std::fs::read_to_string(path).map_err(|source| MockError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| MockError::ParseConfig {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl MockArgs {
    /// The configuration file (or the demo default) with the flags applied, validated.
    pub fn into_config(self) -> Result<MockConfig, MockError> {
        let mut c = match &self.config {
            Some(path) => load_file(path)?,
            None => MockConfig::default(),
        };
        if let Some(listen) = self.listen {
            c.listen = listen;
        }
        if self.static_mode {
            c.static_mode = true;
        }
        if let Some(body) = self.static_body {
            c.static_body = Some(body);
        }
        if let Some(auth) = self.auth {
            c.auth = auth;
        }
        if let Some(t) = self.token_lifetime {
            c.token_lifetime = t;
        }
        if !self.clients.is_empty() {
            c.clients = self.clients;
        }
        if self.no_limits {
            c.limits.clear();
        } else if !self.limits.is_empty() {
            c.limits = self.limits;
        }
        if let Some(t) = self.token_rate_limit {
            let name = c
                .token_rate_limit
                .as_ref()
                .map_or_else(|| TokenRateLimit::default().name, |t| t.name.clone());
            c.token_rate_limit = t.into_option().map(|t| TokenRateLimit {
                name,
                limit: t.limit,
                window: t.window,
            });
        }
        if let Some(l) = self.latency {
            c.latency = l;
        }
        if let Some(s) = self.stall {
            c.stall = s.into_option();
        }
        if let Some(u) = self.unavailable {
            c.unavailable = u.into_option().map(|u| u.0);
        }
        if let Some(f) = self.retry_after_format {
            c.retry_after_format = f;
        }
        if self.no_inin_headers {
            c.headers.inin = false;
        }
        if self.x_ratelimit_headers {
            c.headers.x_rate_limit = true;
        }
        if let Some(f) = self.x_ratelimit_reset {
            c.headers.x_rate_limit_reset = f;
        }
        if self.ietf_headers {
            c.headers.ietf = true;
        }
        if self.no_catch_all {
            c.endpoints.catch_all = false;
        }
        if self.record_arrivals {
            c.record_arrivals = true;
        }
        if let Some(n) = self.max_arrivals {
            c.max_arrivals = n;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Algorithm;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    fn parse(args: &[&str]) -> Result<MockConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("mock").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.mock.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn every_option_is_documented() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.len() > 10, "--{} has no help", arg.get_id());
        }
    }

    #[test]
    fn no_flags_is_the_demo() {
        assert_eq!(parse(&[]).unwrap(), MockConfig::default());
    }

    #[test]
    fn flags_override() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "off",
            "--token-lifetime",
            "2s",
            "--client",
            "a:b",
            "--client",
            "c:d:org-2",
            "--limit",
            "token.rate.per.minute:token:5/1s",
            "--limit",
            "ns:x:global:100/60",
            "--token-rate-limit",
            "off",
            "--latency",
            "fixed:10ms",
            "--stall",
            "10s:1s",
            "--unavailable",
            "5s:2s:3",
            "--retry-after-format",
            "http-date",
            "--no-inin-headers",
            "--ietf-headers",
            "--x-ratelimit-headers",
            "--no-catch-all",
            "--record-arrivals",
            "--max-arrivals",
            "10",
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.auth, AuthMode::Off);
        assert_eq!(c.clients.len(), 2);
        assert_eq!(c.clients[0].org, "demo-org");
        assert_eq!(c.clients[1].org, "org-2");
        assert_eq!(c.limits.len(), 2);
        assert_eq!(c.limits[0].limit, 5);
        assert_eq!(c.limits[0].window, Duration::from_secs(1));
        assert_eq!(c.limits[1].name, "ns:x");
        assert_eq!(c.limits[1].key, LimitKey::Global);
        assert_eq!(c.token_rate_limit, None);
        assert_eq!(c.unavailable.unwrap().retry_after, 3);
        assert!(!c.headers.inin && c.headers.ietf && c.headers.x_rate_limit);
        assert!(!c.endpoints.catch_all && c.record_arrivals);
        assert_eq!(c.max_arrivals, 10);
        let c = parse(&["--no-limits", "--static"]).unwrap();
        assert!(c.limits.is_empty() && c.static_mode);
    }

    #[test]
    fn limit_flag_options_are_the_config_fields() {
        let c = parse(&[
            "--limit",
            "nginx:global:5/1s,algorithm=leaky-bucket,burst=5,nodelay,status=503,retryAfter=false",
            "--limit",
            "tb:token:10/2s,algorithm=token-bucket",
            "--x-ratelimit-reset",
            "seconds",
        ])
        .unwrap();
        let l = &c.limits[0];
        assert_eq!((l.name.as_str(), l.limit), ("nginx", 5));
        assert_eq!(
            (l.algorithm, l.burst, l.nodelay),
            (Algorithm::LeakyBucket, Some(5), true)
        );
        assert_eq!((l.status, l.retry_after), (503, false));
        assert_eq!(c.limits[1].algorithm, Algorithm::TokenBucket);
        assert_eq!(c.limits[1].window, Duration::from_secs(2));
        assert_eq!(c.headers.x_rate_limit_reset, ResetFormat::Seconds);
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (args, needle) in [
            (&["--limit", "x:token:5/1s,bogus=1"][..], "bogus"),
            (
                &["--limit", "x:token:5/1s,algorithm=bucket"],
                "token-bucket",
            ),
            (&["--limit", "x:token:5/1s,burst=2"], "limits[0].burst"),
            (&["--limit", "x:token:5/1s,status=abc"], "status"),
            (&["--limit", "x:user:5/1s"][..], "user"),
            (&["--limit", "x:token:5"], "N/WINDOW"),
            (&["--limit", "x:token:0/1s"], "limits[0].limit"),
            (&["--latency", "uniform:9ms:1ms"], "min <= max"),
            (&["--stall", "1s:2s"], "shorter"),
            (&["--client", "nosecret"], "ID:SECRET"),
            (&["--token-lifetime", "0s"], "tokenLifetime"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn config_file_then_flags() {
        let dir = std::env::temp_dir().join(format!("pacer-mock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mock.yaml");
        std::fs::write(
            &path,
            "auth: off\nlimits:\n  - {name: a, key: org, limit: 7, window: 2s}\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p]).unwrap();
        assert_eq!((c.auth, c.limits[0].limit), (AuthMode::Off, 7));
        let c = parse(&["--config", p, "--auth", "required"]).unwrap();
        assert_eq!(c.auth, AuthMode::Required);
        std::fs::write(&path, "limitz: []\n").unwrap();
        let err = parse(&["--config", p]).unwrap_err();
        assert!(err.contains("limitz"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            parse(&["--config", "/nonexistent/x.yaml"])
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
