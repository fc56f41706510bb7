//! One iteration: the scenario's requests in order, each with its retries, checks, extraction
//! and polling, recorded as attempts (HTTP exchanges) and requests (after retries). The
//! executors (`executor.rs`) decide when an iteration starts; this module runs one.
//!
//! The servers are not trusted: a rendered path or URL (`{{vars.location}}` from a response)
//! is resolved by [`pacer_plan::origin::resolve`], so a request leaves the target's origin only
//! for a host of `http.allowHosts` and then without credentials, and is refused otherwise
//! (counted as `off-origin`). Response bodies no check or extract reads are drained, not kept.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pacer_limiter::{Limiter, TokenSource};
use pacer_plan::origin::{self, Destination, Refusal};
use pacer_plan::{AuthRef, Body, Expect, ExtractFrom, Part, Plan, Request};
use pacer_stats::{ErrorKind, IterationOutcome, Recorder, RequestOutcome, RetryOutcome};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Response};
use crate::render::RenderCtx;
use crate::send::{record_local_failure, send_with_retries};

/// Header that names the worker, so a target (e.g. `pacer mock`) can tally per worker.
pub const WORKER_HEADER: &str = "x-pacer-worker";

/// Everything an iteration needs, shared by all of a run's tasks.
pub(crate) struct Shared {
    pub(crate) plan: Arc<Plan>,
    pub(crate) client: http::HttpClient,
    pub(crate) limiter: Arc<dyn Limiter>,
    pub(crate) tokens: Arc<dyn TokenSource>,
    pub(crate) recorder: Arc<Recorder>,
    worker: u32,
    worker_header: Option<HeaderValue>,
    /// Cancelled when in-flight work must end now (after graceful stop, or on abort).
    pub(crate) hard_stop: CancellationToken,
    /// When the server's rate-limit headers were last read (ms since `epoch`; 0: never).
    pub(crate) last_limits_ms: AtomicU64,
    pub(crate) epoch: Instant,
    /// The URL of each request whose path has no placeholder, by scenario and request, parsed
    /// once instead of on every send (with its `Uri` when the request has no query either).
    static_urls: Vec<Vec<Option<StaticUrl>>>,
    /// Requests with nothing to render (URL, headers and body all literal), by scenario and
    /// request: prepared on first use and sent as they are after that.
    static_requests: Vec<Vec<Option<StaticRequest>>>,
    /// Whether a check, extract or poll reads each request's response body (by scenario and
    /// request): the others' bodies are drained.
    pub(crate) needs_body: Vec<Vec<bool>>,
    warned: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Distinct warnings logged per run; past this, new ones are dropped (a hostile server could
/// otherwise grow the set without bound, e.g. with a new origin in every `Location`).
const MAX_DISTINCT_WARNINGS: usize = 256;

impl Shared {
    pub(crate) fn new(
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
    pub(crate) fn warn_once(&self, msg: String) {
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
pub(crate) async fn run_iteration(
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
pub(crate) struct Prepared {
    pub(crate) method: ::http::Method,
    pub(crate) uri: hyper::Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<bytes::Bytes>,
    pub(crate) approx_header_bytes: u64,
    /// The target's origin (credentials attached) or an allowed host (none).
    pub(crate) destination: Destination,
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
