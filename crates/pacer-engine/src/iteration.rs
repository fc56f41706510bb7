//! One iteration: the scenario's requests in order, each prepared (`prepare.rs`), sent with its
//! retries (`send.rs`, which records the attempts), then its checks, extraction and polling
//! here, recorded as a request (after retries). The executors (`executor.rs`) decide when an
//! iteration starts; this module runs one.
//!
//! The servers are not trusted: a rendered path or URL (`{{vars.location}}` from a response)
//! is resolved by [`pacer_plan::origin::resolve`], so a request leaves the target's origin only
//! for a host of `http.allowHosts` and then without credentials, and is refused otherwise
//! (counted as `off-origin`). Response bodies no check or extract reads are drained, not kept.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use pacer_limiter::{Limiter, TokenSource};
use pacer_plan::{AuthRef, Expect, ExtractFrom, Plan, Poll, Request, Shard};
use pacer_stats::{ErrorKind, IterationOutcome, Recorder, RequestOutcome, RetryOutcome};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::feed::{DataExhausted, Feeders, Taken};
use crate::http::{self, Response};
use crate::json_reads::Reads;
use crate::prepare::{self, NotPrepared, StaticRequest, StaticUrl};
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
    pub(crate) worker_header: Option<HeaderValue>,
    /// `http.correlationId`'s header (lower case, validated with the plan), parsed once: a
    /// custom header name is an allocation, and each request in flight refers to this one.
    pub(crate) correlation_header: Option<HeaderName>,
    /// Cancelled when in-flight work must end now (after graceful stop, or on abort).
    pub(crate) hard_stop: CancellationToken,
    /// When the server's rate-limit headers were last read (ms since `epoch`; 0: never).
    pub(crate) last_limits_ms: AtomicU64,
    pub(crate) epoch: Instant,
    /// The URL of each request whose path has no placeholder, by scenario and request, parsed
    /// once instead of on every send (with its `Uri` when the request has no query either).
    pub(crate) static_urls: Vec<Vec<Option<StaticUrl>>>,
    /// Requests with nothing to render (URL, headers and body all literal), by scenario and
    /// request: prepared on first use and sent as they are after that.
    pub(crate) static_requests: Vec<Vec<Option<StaticRequest>>>,
    /// What each request's checks, extracts and poll conditions read of a JSON answer (by
    /// scenario and request); `None`: nothing, and its bodies are drained, not kept.
    pub(crate) json_reads: Vec<Vec<Option<Reads>>>,
    warned: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// The plan's test data as this process takes it.
    pub(crate) feeders: Feeders,
    /// Set when a `unique` source ran out; the run then stops through `stop_all`.
    pub(crate) data_out: std::sync::OnceLock<DataExhausted>,
    /// The run's graceful stop (every scenario's stop is a child of it).
    stop_all: CancellationToken,
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
        control: crate::RunControl,
    ) -> Result<Self, crate::feed::DataMissing> {
        let feeders = Feeders::new(&plan, opts.shard.as_ref().unwrap_or(&Shard::whole()))?;
        let static_urls = prepare::static_urls(&plan);
        let static_requests = prepare::static_requests(&plan, &static_urls);
        let json_reads = plan
            .scenarios
            .iter()
            .map(|sc| sc.requests.iter().map(Reads::of).collect())
            .collect();
        let correlation_header = plan
            .http
            .correlation_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        Ok(Self {
            static_urls,
            static_requests,
            json_reads,
            plan,
            client,
            limiter,
            tokens,
            recorder,
            worker: opts.worker,
            worker_header: opts
                .send_worker_header
                .then(|| HeaderValue::from(opts.worker)),
            correlation_header,
            hard_stop: control.abort,
            last_limits_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            warned: parking_lot::Mutex::new(Default::default()),
            feeders,
            data_out: std::sync::OnceLock::new(),
            stop_all: control.stop,
        })
    }

    /// The rows of one iteration of scenario `sc`; `None` when a `unique` source ran out, which
    /// stops the run (once, with the reason kept for its report).
    pub(crate) fn take_rows(&self, sc: usize) -> Option<Taken> {
        match self.feeders.take(sc) {
            Ok(t) => Some(t),
            Err(e) => {
                if self.data_out.set(e.clone()).is_ok() {
                    tracing::warn!("{e}");
                }
                self.stop_all.cancel();
                None
            }
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

/// Run one iteration of scenario `sc`. `intended` is when the schedule meant it to start: the
/// first request's latency is measured from there (no coordinated omission). Not an `async fn`
/// so that the iteration's state is kept once, not twice (see [`http::HttpClient::send`]).
pub(crate) fn run_iteration(
    sh: &Shared,
    sc: usize,
    vu: u32,
    iteration: u64,
    intended: Instant,
    taken: Taken,
) -> impl Future<Output = IterationOutcome> + Send {
    let mut it = IterationState {
        vu,
        iteration,
        vars: HashMap::new(),
        taken,
    };
    async move {
        let mut failed = false;
        for ri in 0..sh.plan.scenarios[sc].requests.len() {
            // The first request is due when the iteration was; each next one when it starts.
            let req_intended = if ri == 0 { intended } else { Instant::now() };
            let step = run_request(sh, sc, ri, &mut it, req_intended).await;
            failed |= step.failed;
            if step.stop_iteration {
                failed = true;
                break;
            }
        }
        IterationOutcome {
            duration: intended.elapsed(),
            failed,
            interrupted: false,
        }
    }
}

/// One iteration's own state: the VU that runs it, its number, and the values its requests
/// have extracted so far (`{{vars.*}}`).
struct IterationState {
    vu: u32,
    iteration: u64,
    vars: HashMap<String, Value>,
    /// The row of each data source this iteration took.
    taken: Taken,
}

struct StepResult {
    failed: bool,
    /// Later requests cannot run (a required value was not extracted, a template failed).
    stop_iteration: bool,
}

/// Run request `ri` of scenario `sc` (again, while its poll says so): prepare it, send it with
/// its retries, then count its checks, extract its values, decide its poll, and record it.
async fn run_request(
    sh: &Shared,
    sc: usize,
    ri: usize,
    it: &mut IterationState,
    mut intended: Instant,
) -> StepResult {
    let scenario = &sh.plan.scenarios[sc];
    let req = &scenario.requests[ri];
    let credential = match req.auth {
        AuthRef::Inherit => scenario.auth,
        AuthRef::None => None,
        AuthRef::Named(i) => Some(i),
    };
    // Only a polled request needs the clock here (once per request on the hot path counts).
    let poll_started = req.poll.is_some().then(Instant::now);
    let mut polls = 0u32;
    loop {
        polls += 1;
        let mut owned = None;
        let ctx = RenderCtx {
            vars: &it.vars,
            plan_vars: &sh.plan.variables,
            iteration: it.iteration,
            vu: it.vu,
            scenario: &scenario.name,
            worker: sh.worker,
            attempt: 1,
            data: Some((&sh.feeders, &it.taken)),
        };
        let prepared = match prepare::prepared(sh, sc, ri, req, &ctx, &mut owned) {
            Ok(p) => p,
            Err(why) => return not_prepared(sh, sc, ri, why, intended),
        };
        let again = prepare::uses_attempt(req).then_some(&ctx);
        let (mut outcome, response) =
            send_with_retries(sh, sc, ri, req, credential, prepared, intended, again).await;
        let (missing, done) = {
            let resp = response.as_ref();
            let reads = sh
                .json_reads
                .get(sc)
                .and_then(|r| r.get(ri))
                .and_then(Option::as_ref);
            let body = JsonBody::new(resp, reads);
            count_checks(&req.expect, resp, &body, &mut outcome);
            let missing = extract(req, resp, &body, &mut it.vars);
            let done = match &req.poll {
                None => true,
                Some(poll) if poll_holds(&poll.until, resp, &body) => {
                    outcome.checks_passed += 1;
                    true
                }
                Some(poll)
                    if poll_out_of_time(
                        poll,
                        poll_started.map_or(Duration::ZERO, |t| t.elapsed()),
                        polls,
                    ) || sh.hard_stop.is_cancelled() =>
                {
                    outcome.checks_failed += 1;
                    outcome.failed = true;
                    true
                }
                Some(_) => false,
            };
            (missing, done)
        };
        let failed = outcome.failed;
        sh.recorder.record_request(sc, ri, &outcome);
        if done {
            if let Some(name) = &missing
                && !failed
            {
                sh.warn_once(format!(
                    "scenario {:?} request {:?}: extract {name:?}: not found in the response; the iteration stops",
                    scenario.name, req.name,
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

/// A request that could not be prepared is not sent, and its iteration stops: said once in the
/// log; a refused one is counted too (see [`record_refusal`]).
fn not_prepared(
    sh: &Shared,
    sc: usize,
    ri: usize,
    why: NotPrepared,
    intended: Instant,
) -> StepResult {
    let scenario = &sh.plan.scenarios[sc];
    let req = &scenario.requests[ri];
    match why {
        NotPrepared::Refused(why) => {
            sh.warn_once(format!(
                "scenario {:?} request {:?}: path {why}: not sent ({})",
                scenario.name,
                req.name,
                ErrorKind::OffOrigin.as_str()
            ));
            record_refusal(sh, sc, ri, req, intended);
        }
        NotPrepared::Invalid(msg) => sh.warn_once(format!(
            "scenario {:?} request {:?}: {msg}",
            scenario.name, req.name
        )),
    }
    StepResult {
        failed: true,
        stop_iteration: true,
    }
}

/// A response's body as JSON, parsed when a check, an extract or a poll condition first reads
/// it, at most once, and only as far as the request's pointers read (`reads`; json_reads.rs).
/// `None`: no response, nothing reads it, or not JSON.
struct JsonBody<'a> {
    resp: Option<&'a Response>,
    reads: Option<&'a Reads>,
    doc: OnceCell<Option<Value>>,
}

impl<'a> JsonBody<'a> {
    fn new(resp: Option<&'a Response>, reads: Option<&'a Reads>) -> Self {
        Self {
            resp,
            reads,
            doc: OnceCell::new(),
        }
    }

    fn get(&self) -> Option<&Value> {
        self.doc
            .get_or_init(|| {
                let (resp, reads) = (self.resp?, self.reads?);
                reads.parse(&resp.body)
            })
            .as_ref()
    }
}

/// How many checks `expect` makes: its status list (one check) and each JSON condition.
fn planned_checks(expect: &Expect) -> u32 {
    (!expect.status.is_empty()) as u32 + expect.json.len() as u32
}

/// Count `expect`'s checks as passed or failed (all failed without a response).
fn count_checks(
    expect: &Expect,
    resp: Option<&Response>,
    body: &JsonBody<'_>,
    out: &mut RequestOutcome,
) {
    let Some(resp) = resp else {
        out.checks_failed += planned_checks(expect);
        return;
    };
    if !expect.status.is_empty() {
        if expect.status.contains(&resp.status) {
            out.checks_passed += 1;
        } else {
            out.checks_failed += 1;
        }
    }
    for c in &expect.json {
        if body.get().is_some_and(|d| c.holds(d)) {
            out.checks_passed += 1;
        } else {
            out.checks_failed += 1;
        }
    }
}

/// Set each of `req`'s extracted values in `vars` (or remove it when the response lacks it).
/// Returns the name of a required value the response lacks (the last, if several).
fn extract(
    req: &Request,
    resp: Option<&Response>,
    body: &JsonBody<'_>,
    vars: &mut HashMap<String, Value>,
) -> Option<String> {
    let mut missing = None;
    for (name, ex) in &req.extract {
        let value = resp.and_then(|resp| match &ex.from {
            ExtractFrom::JsonPointer(p) => body.get().and_then(|doc| doc.pointer(p).cloned()),
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
    missing
}

/// Does the answer meet a poll's `until`? An empty status list there means "any status": the
/// JSON conditions decide.
fn poll_holds(until: &Expect, resp: Option<&Response>, body: &JsonBody<'_>) -> bool {
    resp.is_some_and(|resp| {
        (until.status.is_empty() || until.status.contains(&resp.status))
            && until
                .json
                .iter()
                .all(|c| body.get().is_some_and(|d| c.holds(d)))
    })
}

/// Is a poll out of time after `polls` attempts, `elapsed` since its first? Another wait of
/// `interval` would end past `timeout`, or `maxAttempts` are used up.
fn poll_out_of_time(poll: &Poll, elapsed: Duration, polls: u32) -> bool {
    elapsed + poll.interval > poll.timeout || poll.max_attempts.is_some_and(|m| polls >= m)
}

/// A request refused before sending (its rendered URL would leave the target's origin): one
/// `off-origin` attempt and a failed request, so it shows in the summary and the thresholds.
fn record_refusal(sh: &Shared, sc: usize, ri: usize, req: &Request, intended: Instant) {
    record_local_failure(sh, sc, ri, ErrorKind::OffOrigin);
    let checks = planned_checks(&req.expect);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use pacer_plan::{Extract, JsonCheck, JsonTest, Template};
    use reqwest::header::HeaderMap;
    use serde_json::json;

    use super::*;

    fn response(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        Response {
            status,
            headers: map,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            body_len: body.len() as u64,
            sent_at: Instant::now(),
            service_time: Duration::ZERO,
        }
    }

    /// The pointers of `expect`'s JSON conditions, as a run builds them.
    fn reads_of(expect: &Expect) -> Reads {
        Reads::of_pointers(expect.json.iter().map(|c| c.pointer.as_str()))
    }

    fn body<'a>(resp: &'a Response, reads: &'a Reads) -> JsonBody<'a> {
        JsonBody::new(Some(resp), Some(reads))
    }

    fn equals(pointer: &str, v: Value) -> JsonCheck {
        JsonCheck {
            pointer: pointer.into(),
            test: JsonTest::Equals(v),
        }
    }

    fn request(extract: Vec<(String, Extract)>) -> Request {
        Request {
            name: "r".into(),
            method: "GET".into(),
            path: Template::parse("/").unwrap(),
            query: vec![],
            headers: vec![],
            body: None,
            auth: AuthRef::Inherit,
            expect: Expect::default(),
            extract,
            poll: None,
        }
    }

    #[test]
    fn checks_count_the_status_list_once_and_each_json_condition() {
        let expect = Expect {
            status: vec![200, 201],
            json: vec![equals("/state", json!("done")), equals("/n", json!(2))],
        };
        assert_eq!(planned_checks(&expect), 3);
        assert_eq!(planned_checks(&Expect::default()), 0);

        let reads = reads_of(&expect);
        let resp = response(200, &[], r#"{"state":"done","n":3}"#);
        let mut out = RequestOutcome::default();
        count_checks(&expect, Some(&resp), &body(&resp, &reads), &mut out);
        assert_eq!((out.checks_passed, out.checks_failed), (2, 1));

        // Without an answer every check fails; a body that is not JSON fails its conditions.
        let mut out = RequestOutcome::default();
        count_checks(&expect, None, &JsonBody::new(None, Some(&reads)), &mut out);
        assert_eq!((out.checks_passed, out.checks_failed), (0, 3));
        let text = response(500, &[], "not json");
        let mut out = RequestOutcome::default();
        count_checks(&expect, Some(&text), &body(&text, &reads), &mut out);
        assert_eq!((out.checks_passed, out.checks_failed), (0, 3));
    }

    #[test]
    fn extract_sets_what_it_finds_clears_what_it_does_not_and_names_a_missing_required_one() {
        let ex = |from, required| Extract { from, required };
        let req = request(vec![
            (
                "id".into(),
                ex(ExtractFrom::JsonPointer("/id".into()), true),
            ),
            (
                "loc".into(),
                ex(ExtractFrom::Header("location".into()), false),
            ),
            (
                "opt".into(),
                ex(ExtractFrom::JsonPointer("/none".into()), false),
            ),
        ]);
        let mut vars = HashMap::from([("opt".to_string(), json!("stale"))]);
        let reads = Reads::of(&req).unwrap();
        let resp = response(201, &[("location", "/jobs/7")], r#"{"id":7}"#);
        let missing = extract(&req, Some(&resp), &body(&resp, &reads), &mut vars);
        assert_eq!(missing, None);
        assert_eq!(vars.get("id"), Some(&json!(7)));
        assert_eq!(vars.get("loc"), Some(&json!("/jobs/7")));
        assert_eq!(vars.get("opt"), None);

        let missing = extract(&req, None, &JsonBody::new(None, Some(&reads)), &mut vars);
        assert_eq!(missing.as_deref(), Some("id"));
        assert!(vars.is_empty());
    }

    #[test]
    fn a_poll_holds_on_any_status_when_until_names_none() {
        let until = Expect {
            status: vec![],
            json: vec![equals("/state", json!("done"))],
        };
        let reads = reads_of(&until);
        let done = response(404, &[], r#"{"state":"done"}"#);
        let running = response(200, &[], r#"{"state":"running"}"#);
        assert!(poll_holds(&until, Some(&done), &body(&done, &reads)));
        assert!(!poll_holds(&until, Some(&running), &body(&running, &reads)));
        assert!(!poll_holds(
            &until,
            None,
            &JsonBody::new(None, Some(&reads))
        ));
        let status_only = Expect {
            status: vec![200],
            json: vec![],
        };
        assert!(poll_holds(
            &status_only,
            Some(&running),
            &JsonBody::new(Some(&running), None)
        ));
        assert!(!poll_holds(
            &status_only,
            Some(&done),
            &JsonBody::new(Some(&done), None)
        ));
    }

    #[test]
    fn a_poll_is_out_of_time_when_another_wait_would_pass_the_timeout_or_attempts_are_used_up() {
        let s = Duration::from_secs;
        let poll = Poll {
            until: Expect::default(),
            interval: s(1),
            timeout: s(10),
            max_attempts: None,
        };
        assert!(!poll_out_of_time(&poll, s(8), 100));
        assert!(!poll_out_of_time(&poll, s(9), 100));
        assert!(poll_out_of_time(&poll, s(9) + Duration::from_millis(1), 1));
        let capped = Poll {
            max_attempts: Some(3),
            ..poll
        };
        assert!(!poll_out_of_time(&capped, s(0), 2));
        assert!(poll_out_of_time(&capped, s(0), 3));
    }

    #[test]
    fn the_body_is_parsed_once_and_only_when_read() {
        let resp = response(200, &[], r#"{"a":1,"b":2}"#);
        let reads = Reads::of_pointers(["/a"]);
        let body = body(&resp, &reads);
        assert!(body.doc.get().is_none());
        assert_eq!(body.get(), Some(&json!({"a": 1})));
        assert!(std::ptr::eq(body.get().unwrap(), body.get().unwrap()));
        assert_eq!(JsonBody::new(None, Some(&reads)).get(), None);
        // Nothing reads it: nothing is parsed.
        assert_eq!(JsonBody::new(Some(&resp), None).get(), None);
    }
}
