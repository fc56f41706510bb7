//! One iteration: the scenario's requests in order, each with its retries, checks, extraction
//! and polling, recorded as attempts (HTTP exchanges) and requests (after retries). The
//! executors (`executor.rs`) decide when an iteration starts; this module runs one.
//!
//! The servers are not trusted: a rendered path or URL (`{{vars.location}}` from a response)
//! is resolved by [`pacer_plan::origin::resolve`], so a request leaves the target's origin only
//! for a host of `http.allowHosts` and then without credentials, and is refused otherwise
//! (counted as `off-origin`). Response bodies no check or extract reads are drained, not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use pacer_limiter::{Feedback, Limiter, RequestMeta, Token, TokenSource};
use pacer_plan::origin::{self, Destination, Refusal};
use pacer_plan::{AuthRef, Body, Expect, ExtractFrom, Part, Plan, Request};
use pacer_stats::{Attempt, ErrorKind, IterationOutcome, Recorder, RequestOutcome, RetryOutcome};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Response};
use crate::render::RenderCtx;
use crate::retry::{self, RetryAfter};

/// Header that names the worker, so a target (e.g. `pacer mock`) can tally per worker.
pub const WORKER_HEADER: &str = "x-pacer-worker";

/// Everything an iteration needs, shared by all of a run's tasks.
pub struct Shared {
    pub plan: Arc<Plan>,
    pub client: http::HttpClient,
    pub limiter: Arc<dyn Limiter>,
    pub tokens: Arc<dyn TokenSource>,
    pub recorder: Arc<Recorder>,
    pub worker: u32,
    pub worker_header: Option<HeaderValue>,
    /// Cancelled when in-flight work must end now (after graceful stop, or on abort).
    pub hard_stop: CancellationToken,
    last_limits_ms: AtomicU64,
    epoch: Instant,
    /// The URL of each request whose path has no placeholder, by scenario and request, parsed
    /// once instead of on every send (with its `Uri` when the request has no query either).
    static_urls: Vec<Vec<Option<StaticUrl>>>,
    /// Requests with nothing to render (URL, headers and body all literal), by scenario and
    /// request: prepared on first use and sent as they are after that.
    static_requests: Vec<Vec<Option<StaticRequest>>>,
    /// Whether a check, extract or poll reads each request's response body (by scenario and
    /// request): the others' bodies are drained.
    needs_body: Vec<Vec<bool>>,
    warned: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Distinct warnings logged per run; past this, new ones are dropped (a hostile server could
/// otherwise grow the set without bound, e.g. with a new origin in every `Location`).
const MAX_DISTINCT_WARNINGS: usize = 256;

impl Shared {
    pub fn new(
        plan: Arc<Plan>,
        client: http::HttpClient,
        limiter: Arc<dyn Limiter>,
        tokens: Arc<dyn TokenSource>,
        recorder: Arc<Recorder>,
        opts: &crate::RunOptions,
        hard_stop: CancellationToken,
    ) -> Self {
        let static_urls = plan
            .scenarios
            .iter()
            .map(|sc| {
                sc.requests
                    .iter()
                    .map(|req| {
                        let path: Option<String> = req
                            .path
                            .parts()
                            .iter()
                            .map(|p| match p {
                                Part::Lit(s) => Some(s.as_str()),
                                _ => None,
                            })
                            .collect();
                        let (url, dest) =
                            origin::resolve(&plan.target, &plan.http.allow_hosts, &path?).ok()?;
                        let uri = req
                            .query
                            .is_empty()
                            .then(|| url.as_str().parse::<hyper::Uri>().ok())
                            .flatten();
                        Some((url, uri, dest))
                    })
                    .collect()
            })
            .collect::<Vec<Vec<_>>>();
        let static_requests = plan
            .scenarios
            .iter()
            .zip(&static_urls)
            .map(|(sc, urls)| {
                sc.requests
                    .iter()
                    .zip(urls)
                    .map(|(req, url)| {
                        let literal = matches!(url, Some((_, Some(_), _)))
                            && req.headers.iter().all(|(_, t)| t.is_literal())
                            && match &req.body {
                                None => true,
                                Some(Body::Text(t)) => t.is_literal(),
                                Some(Body::Json(_)) => false,
                            };
                        literal.then(OnceLock::new)
                    })
                    .collect()
            })
            .collect();
        let needs_body = plan
            .scenarios
            .iter()
            .map(|sc| sc.requests.iter().map(reads_body).collect())
            .collect();
        Self {
            static_urls,
            static_requests,
            needs_body,
            plan,
            client,
            limiter,
            tokens,
            recorder,
            worker: opts.worker,
            worker_header: opts
                .send_worker_header
                .then(|| HeaderValue::from(opts.worker)),
            hard_stop,
            last_limits_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            warned: parking_lot::Mutex::new(Default::default()),
        }
    }

    /// Log a problem once per distinct message, so a broken plan does not flood the log.
    fn warn_once(&self, msg: String) {
        let mut warned = self.warned.lock();
        if warned.len() < MAX_DISTINCT_WARNINGS {
            if warned.insert(msg.clone()) {
                tracing::warn!("{msg}");
            }
        } else if warned.len() == MAX_DISTINCT_WARNINGS {
            warned.insert(String::new());
            tracing::warn!(
                "{MAX_DISTINCT_WARNINGS} distinct warnings logged: further ones are not shown"
            );
        }
    }
}

/// Does a check, an extract or a poll condition read `req`'s response body?
fn reads_body(req: &Request) -> bool {
    !req.expect.json.is_empty()
        || req
            .extract
            .iter()
            .any(|(_, ex)| matches!(ex.from, ExtractFrom::JsonPointer(_)))
        || req.poll.as_ref().is_some_and(|p| !p.until.json.is_empty())
}

/// A request URL known before the run: parsed, as a request `Uri` when nothing (no query) is
/// added to it per request, and where it goes.
type StaticUrl = (url::Url, Option<hyper::Uri>, Destination);

/// A request with nothing to render, prepared once (or the reason it cannot be sent).
type StaticRequest = OnceLock<Result<Prepared, NotPrepared>>;

/// Why a request could not be prepared.
#[derive(Clone, Debug)]
enum NotPrepared {
    /// Its rendered path would leave the target (or is not a path): refused, and counted.
    Refused(Refusal),
    /// A template or a value failed (the message leaves out query strings and header values).
    Invalid(String),
}

impl From<String> for NotPrepared {
    fn from(msg: String) -> Self {
        NotPrepared::Invalid(msg)
    }
}

/// Run one iteration of scenario `sc`. `intended` is when the schedule meant it to start: the
/// first request's latency is measured from there (no coordinated omission).
pub async fn run_iteration(
    sh: &Shared,
    sc: usize,
    vu: u32,
    iteration: u64,
    intended: Instant,
) -> IterationOutcome {
    let scenario = &sh.plan.scenarios[sc];
    let mut vars: HashMap<String, Value> = HashMap::new();
    let mut failed = false;
    let mut req_intended = intended;
    for (ri, req) in scenario.requests.iter().enumerate() {
        let step = run_request(sh, sc, ri, req, &mut vars, vu, iteration, req_intended).await;
        failed |= step.failed;
        if step.stop_iteration {
            failed = true;
            break;
        }
        req_intended = Instant::now();
    }
    IterationOutcome {
        duration: intended.elapsed(),
        failed,
        interrupted: false,
    }
}

struct StepResult {
    failed: bool,
    /// Later requests cannot run (a required value was not extracted, a template failed).
    stop_iteration: bool,
}

/// A request rendered once per logical request (retries resend the same thing: the same
/// correlation id, the same body).
struct Prepared {
    method: ::http::Method,
    uri: hyper::Uri,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
    approx_header_bytes: u64,
    /// The target's origin (credentials attached) or an allowed host (none).
    destination: Destination,
}

fn prepare(
    sh: &Shared,
    req: &Request,
    static_url: Option<&StaticUrl>,
    ctx: &RenderCtx<'_>,
) -> Result<Prepared, NotPrepared> {
    let (uri, destination) = match static_url {
        Some((_, Some(uri), dest)) => (uri.clone(), *dest),
        _ => {
            let (mut url, dest) = match static_url {
                Some((url, _, dest)) => (url.clone(), *dest),
                None => origin::resolve(
                    &sh.plan.target,
                    &sh.plan.http.allow_hosts,
                    &ctx.render(&req.path).map_err(|e| e.to_string())?,
                )
                .map_err(NotPrepared::Refused)?,
            };
            if !req.query.is_empty() {
                let mut q = url.query_pairs_mut();
                for (k, t) in &req.query {
                    q.append_pair(k, &ctx.render(t).map_err(|e| e.to_string())?);
                }
            }
            // The message leaves the query out: it may carry secrets.
            let uri = url.as_str().parse::<hyper::Uri>().map_err(|e| {
                format!(
                    "URL {}://{}{} is not a valid request URI: {e}",
                    url.scheme(),
                    url.host_str().unwrap_or(""),
                    url.path()
                )
            })?;
            (uri, dest)
        }
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let mut approx = (req.method.len() + uri_len + 12) as u64;
    for (k, t) in &req.headers {
        let v = ctx.render(t).map_err(|e| e.to_string())?;
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header name {k:?} is invalid"))?;
        let value = HeaderValue::from_str(&v)
            .map_err(|_| format!("header {k}: rendered value is not a valid header value"))?;
        approx += (k.len() + v.len() + 4) as u64;
        headers.insert(name, value);
    }
    let body = match &req.body {
        None => None,
        Some(Body::Text(t)) => Some(bytes::Bytes::from(
            ctx.render(t).map_err(|e| e.to_string())?,
        )),
        Some(Body::Json(j)) => {
            let v = ctx.render_json(j).map_err(|e| e.to_string())?;
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(bytes::Bytes::from(
                serde_json::to_vec(&v).map_err(|e| e.to_string())?,
            ))
        }
    };
    if let Some(w) = &sh.worker_header {
        headers.insert(HeaderName::from_static(WORKER_HEADER), w.clone());
    }
    sh.client
        .add_default_headers(&mut headers, destination.gets_credentials());
    let method = ::http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("method {:?} is invalid", req.method))?;
    Ok(Prepared {
        method,
        uri,
        headers,
        body,
        approx_header_bytes: approx,
        destination,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_request(
    sh: &Shared,
    sc: usize,
    ri: usize,
    req: &Request,
    vars: &mut HashMap<String, Value>,
    vu: u32,
    iteration: u64,
    mut intended: Instant,
) -> StepResult {
    let scenario = &sh.plan.scenarios[sc];
    let credential = match req.auth {
        AuthRef::Inherit => scenario.auth,
        AuthRef::None => None,
        AuthRef::Named(i) => Some(i),
    };
    let poll_started = Instant::now();
    let mut polls = 0u32;
    loop {
        polls += 1;
        let mut owned = None;
        let prepared = {
            let ctx = RenderCtx {
                vars,
                plan_vars: &sh.plan.variables,
                iteration,
                vu,
                scenario: &scenario.name,
                worker: sh.worker,
            };
            let static_url = sh.static_urls.get(sc).and_then(|r| r.get(ri)?.as_ref());
            match sh.static_requests.get(sc).and_then(|r| r.get(ri)?.as_ref()) {
                Some(cell) => cell
                    .get_or_init(|| prepare(sh, req, static_url, &ctx))
                    .as_ref()
                    .map_err(NotPrepared::clone),
                None => prepare(sh, req, static_url, &ctx).map(|p| &*owned.insert(p)),
            }
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(NotPrepared::Refused(why)) => {
                sh.warn_once(format!(
                    "scenario {:?} request {:?}: path {why}: not sent ({})",
                    scenario.name,
                    req.name,
                    ErrorKind::OffOrigin.as_str()
                ));
                record_refusal(sh, sc, ri, req, intended);
                return StepResult {
                    failed: true,
                    stop_iteration: true,
                };
            }
            Err(NotPrepared::Invalid(msg)) => {
                sh.warn_once(format!(
                    "scenario {:?} request {:?}: {msg}",
                    scenario.name, req.name
                ));
                return StepResult {
                    failed: true,
                    stop_iteration: true,
                };
            }
        };
        let (outcome, response) =
            send_with_retries(sh, sc, ri, req, credential, prepared, intended).await;
        let mut outcome = outcome;
        let mut json_cache: Option<Option<Value>> = None;
        let mut json = |resp: &Response| -> Option<Value> {
            json_cache
                .get_or_insert_with(|| serde_json::from_slice(&resp.body).ok())
                .clone()
        };
        // expect checks
        if let Some(resp) = &response {
            count_checks(&req.expect, resp, &mut json, &mut outcome);
        } else {
            outcome.checks_failed +=
                (!req.expect.status.is_empty()) as u32 + req.expect.json.len() as u32;
        }
        // extraction
        let mut missing = None;
        for (name, ex) in &req.extract {
            let value = response.as_ref().and_then(|resp| match &ex.from {
                ExtractFrom::JsonPointer(p) => json(resp).and_then(|doc| doc.pointer(p).cloned()),
                ExtractFrom::Header(h) => resp
                    .headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|s| Value::String(s.to_string())),
            });
            match value {
                Some(v) => {
                    vars.insert(name.clone(), v);
                }
                None => {
                    vars.remove(name);
                    if ex.required {
                        missing = Some(name.clone());
                    }
                }
            }
        }
        // polling
        let mut done = true;
        if let Some(poll) = &req.poll {
            let holds = response.as_ref().is_some_and(|resp| {
                poll.until.status_ok_strict(resp.status)
                    && poll
                        .until
                        .json
                        .iter()
                        .all(|c| json(resp).is_some_and(|d| c.holds(&d)))
            });
            let out_of_time = poll_started.elapsed() + poll.interval > poll.timeout
                || poll.max_attempts.is_some_and(|m| polls >= m);
            if holds {
                outcome.checks_passed += 1;
            } else if out_of_time || sh.hard_stop.is_cancelled() {
                outcome.checks_failed += 1;
                outcome.failed = true;
            } else {
                done = false;
            }
        }
        let failed = outcome.failed;
        sh.recorder.record_request(sc, ri, &outcome);
        if done {
            if missing.is_some() && !failed {
                sh.warn_once(format!(
                    "scenario {:?} request {:?}: extract {:?}: not found in the response; the iteration stops",
                    scenario.name,
                    req.name,
                    missing.as_deref().unwrap_or_default()
                ));
            }
            return StepResult {
                failed: failed || missing.is_some(),
                stop_iteration: missing.is_some(),
            };
        }
        if let Some(poll) = &req.poll {
            tokio::select! {
                _ = tokio::time::sleep(poll.interval) => {}
                _ = sh.hard_stop.cancelled() => {}
            }
        }
        intended = Instant::now();
    }
}

trait StrictStatus {
    fn status_ok_strict(&self, status: u16) -> bool;
}

impl StrictStatus for Expect {
    /// For `poll.until`: an empty status list means "any status", the JSON conditions decide.
    fn status_ok_strict(&self, status: u16) -> bool {
        self.status.is_empty() || self.status.contains(&status)
    }
}

fn count_checks(
    expect: &Expect,
    resp: &Response,
    json: &mut impl FnMut(&Response) -> Option<Value>,
    out: &mut RequestOutcome,
) {
    if !expect.status.is_empty() {
        if expect.status.contains(&resp.status) {
            out.checks_passed += 1;
        } else {
            out.checks_failed += 1;
        }
    }
    for c in &expect.json {
        if json(resp).is_some_and(|d| c.holds(&d)) {
            out.checks_passed += 1;
        } else {
            out.checks_failed += 1;
        }
    }
}

/// Send with retries. Returns the logical request's outcome and the final response, if any.
async fn send_with_retries(
    sh: &Shared,
    sc: usize,
    ri: usize,
    req: &Request,
    credential: Option<usize>,
    p: &Prepared,
    intended: Instant,
) -> (RequestOutcome, Option<Response>) {
    let policy = &sh.plan.retry;
    // Credentials go to the target's origin only: a request to an allowed host goes without.
    if credential.is_some() && !p.destination.gets_credentials() {
        sh.warn_once(format!(
            "request {:?}: goes to an http.allowHosts host ({}): sent without its credential",
            req.name,
            p.uri.authority().map_or("", |a| a.as_str())
        ));
    }
    let credential = credential.filter(|_| p.destination.gets_credentials());
    let keep_body = sh
        .needs_body
        .get(sc)
        .and_then(|r| r.get(ri))
        .copied()
        .unwrap_or(true);
    let meta = RequestMeta {
        method: &req.method,
        path: p.uri.path(),
        request: &req.name,
    };
    let mut out = RequestOutcome {
        duration: Duration::ZERO,
        limiter_wait: Duration::ZERO,
        send_lag: None,
        paused: Duration::ZERO,
        backoff: Duration::ZERO,
        attempts: 0,
        failed: true,
        checks_passed: 0,
        checks_failed: 0,
        retry_outcome: RetryOutcome::NotRetried,
    };
    let mut auth_retry_used = false;
    let mut max_attempts = policy.max_attempts.max(1);
    let mut last: Option<Response> = None;
    let body_len = p.body.as_ref().map_or(0, |b| b.len() as u64);
    let mut attempt = 0u32;
    let mut last_retryable = false;
    loop {
        attempt += 1;
        let grant = match sh.limiter.acquire(&meta).await {
            Ok(g) => g,
            Err(e) => {
                sh.warn_once(format!("request {:?}: {e}", req.name));
                record_local_failure(sh, sc, ri, ErrorKind::Limiter);
                out.attempts = attempt;
                break;
            }
        };
        out.limiter_wait += grant.waited;
        out.paused += grant.paused;
        let token: Option<Token> = match credential {
            None => None,
            Some(c) => match sh.tokens.token(c).await {
                Ok(t) => Some(t),
                Err(e) => {
                    sh.warn_once(e.to_string());
                    record_local_failure(sh, sc, ri, ErrorKind::Auth);
                    out.attempts = attempt;
                    break;
                }
            },
        };
        let mut authorization = None;
        if let Some(t) = &token {
            match HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    authorization = Some(v);
                }
                Err(_) => {
                    sh.warn_once(
                        "a bearer token is not a valid header value (value not shown)".into(),
                    );
                    record_local_failure(sh, sc, ri, ErrorKind::Auth);
                    out.attempts = attempt;
                    break;
                }
            }
        }
        // If the end of the test drops this future mid-exchange, the guard still counts the
        // attempt (as interrupted): the request was sent and the server may have counted it.
        let guard = InFlight {
            sh,
            sc,
            ri,
            limits: grant.limits,
            armed: true,
        };
        if attempt == 1 {
            out.send_lag = Some(
                intended
                    .elapsed()
                    .saturating_sub(grant.waited + grant.paused),
            );
        }
        let result = sh
            .client
            .send(http::Outgoing {
                method: &p.method,
                uri: &p.uri,
                headers: &p.headers,
                authorization,
                body: p.body.clone().unwrap_or_default(),
                keep_body,
            })
            .await;
        guard.disarm();
        out.attempts = attempt;
        let retry_after_info;
        let retryable;
        match result {
            Ok(resp) => {
                retry_after_info = match resp.headers.get(RETRY_AFTER) {
                    Some(v) if resp.status == 429 || resp.status == 503 => {
                        Some(retry::parse_retry_after(
                            v.as_bytes(),
                            SystemTime::now(),
                            policy.retry_after_max,
                        ))
                    }
                    _ => None,
                };
                let retry_after = match retry_after_info {
                    Some(RetryAfter::Wait { wait, .. }) => Some(wait),
                    _ => None,
                };
                sh.limiter.feedback(
                    &meta,
                    &Feedback {
                        status: resp.status,
                        // The wait the limiter pauses the request's scope for: none when
                        // the plan turns pausing (or Retry-After) off.
                        retry_after: if !(policy.pause_scope_on_429 && policy.honor_retry_after) {
                            None
                        } else if resp.status == 429 && retry_after.is_none() {
                            Some(policy.retry_after_default)
                        } else {
                            retry_after
                        },
                    },
                );
                let resp_bytes = resp.body_len
                    + resp
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
                        .sum::<u64>();
                sh.recorder.record_attempt(
                    sc,
                    ri,
                    &Attempt {
                        service_time: resp.service_time,
                        status: Some(resp.status),
                        error: None,
                        bytes_sent: p.approx_header_bytes + body_len,
                        bytes_received: resp_bytes,
                        retry_after,
                        retry_after_malformed: matches!(
                            retry_after_info,
                            Some(RetryAfter::Malformed)
                        ),
                        limits: grant.limits,
                        server_limit: (resp.status == 429)
                            .then(|| {
                                crate::ratelimit_headers::server_limit_name(
                                    &resp.headers,
                                    &resp.body,
                                )
                            })
                            .flatten(),
                    },
                );
                maybe_record_server_limits(sh, &resp.headers);
                out.failed = !req.expect.status_ok(resp.status);
                if resp.status == 401
                    && !auth_retry_used
                    && let (Some(c), Some(t)) = (credential, &token)
                {
                    // The token may have expired or been revoked: drop it (if it is still the
                    // current one) and try once more with a fresh one, outside the retry budget.
                    sh.tokens.invalidate(c, t);
                    auth_retry_used = true;
                    max_attempts += 1;
                    last = Some(resp);
                    continue;
                }
                retryable = policy.on_status.contains(&resp.status);
                last = Some(resp);
            }
            Err(t) => {
                retry_after_info = None;
                sh.recorder.record_attempt(
                    sc,
                    ri,
                    &Attempt {
                        service_time: t.service_time,
                        status: None,
                        error: Some(t.kind),
                        bytes_sent: p.approx_header_bytes + body_len,
                        bytes_received: 0,
                        retry_after: None,
                        retry_after_malformed: false,
                        limits: grant.limits,
                        server_limit: None,
                    },
                );
                sh.warn_once(format!(
                    "request {:?}: {}: {}",
                    req.name,
                    t.kind.as_str(),
                    t.message
                ));
                out.failed = true;
                // A body over the cap would be over it again.
                retryable = policy.on_transport_error && t.kind != ErrorKind::BodyTooLarge;
                last = None;
            }
        }
        last_retryable = retryable;
        if !retryable || attempt >= max_attempts {
            break;
        }
        let floor = match retry_after_info {
            Some(RetryAfter::Wait { wait, .. }) => Some(wait),
            Some(RetryAfter::Malformed) => Some(policy.retry_after_default),
            None if last.as_ref().is_some_and(|r| r.status == 429) => {
                Some(policy.retry_after_default)
            }
            None => None,
        };
        let delay = retry::backoff_delay(policy, attempt, floor);
        let slept = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = sh.hard_stop.cancelled() => { out.backoff += slept.elapsed(); break; }
        }
        out.backoff += slept.elapsed();
    }
    out.duration = intended.elapsed();
    out.retry_outcome = match (out.attempts > 1, out.failed) {
        (true, true) => RetryOutcome::GaveUp,
        (true, false) => RetryOutcome::SucceededAfterRetry,
        (false, true) if !last_retryable => RetryOutcome::NotRetryable,
        (false, _) => RetryOutcome::NotRetried,
    };
    (out, last)
}

/// Counts an attempt that was sent but whose exchange was dropped before it ended.
struct InFlight<'a> {
    sh: &'a Shared,
    sc: usize,
    ri: usize,
    limits: u64,
    armed: bool,
}

impl InFlight<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.sh.recorder.record_attempt(
                self.sc,
                self.ri,
                &Attempt {
                    error: Some(ErrorKind::Interrupted),
                    limits: self.limits,
                    ..Attempt::default()
                },
            );
        }
    }
}

/// A request refused before sending (its rendered URL would leave the target's origin): one
/// `off-origin` attempt and a failed request, so it shows in the summary and the thresholds.
fn record_refusal(sh: &Shared, sc: usize, ri: usize, req: &Request, intended: Instant) {
    record_local_failure(sh, sc, ri, ErrorKind::OffOrigin);
    let checks = (!req.expect.status.is_empty()) as u32 + req.expect.json.len() as u32;
    sh.recorder.record_request(
        sc,
        ri,
        &RequestOutcome {
            duration: intended.elapsed(),
            limiter_wait: Duration::ZERO,
            send_lag: None,
            paused: Duration::ZERO,
            backoff: Duration::ZERO,
            attempts: 1,
            failed: true,
            checks_passed: 0,
            checks_failed: checks,
            retry_outcome: RetryOutcome::NotRetryable,
        },
    );
}

/// An attempt that could not be sent (no token, limiter gone): counted as an error so it shows.
fn record_local_failure(sh: &Shared, sc: usize, ri: usize, kind: ErrorKind) {
    sh.recorder.record_attempt(
        sc,
        ri,
        &Attempt {
            service_time: Duration::ZERO,
            status: None,
            error: Some(kind),
            bytes_sent: 0,
            bytes_received: 0,
            retry_after: None,
            retry_after_malformed: false,
            limits: 0,
            server_limit: None,
        },
    );
}

/// Keep the server's latest rate-limit headers: look at most four times a second (also when
/// the server sends none, so a server without such headers costs no parsing per response).
fn maybe_record_server_limits(sh: &Shared, headers: &HeaderMap) {
    let now_ms = sh.epoch.elapsed().as_millis() as u64;
    let last = sh.last_limits_ms.load(Ordering::Relaxed);
    if now_ms < last + 250 && last != 0 {
        return;
    }
    sh.last_limits_ms.store(now_ms.max(1), Ordering::Relaxed);
    if let Some(h) = crate::ratelimit_headers::parse(headers) {
        sh.recorder.record_server_limits(h);
    }
}
