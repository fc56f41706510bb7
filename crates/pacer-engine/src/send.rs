//! One logical request on the wire, attempt by attempt. Each attempt goes through the same
//! phases, each a function here in that order: acquire the limiter, get the token, send,
//! classify the exchange, give the limiter its feedback, record the attempt, and decide whether
//! to retry. The decisions themselves (retry or not, the floor Retry-After puts under the
//! backoff, the pause the limiter is told about, how the retries ended) are pure functions in
//! [`crate::retry`]; this module does the I/O around them.
//!
//! The future of [`send_with_retries`] is part of what every request in flight holds (10,000 of
//! them at 10000/s against a 1 s server), so what it keeps across the exchange is kept small:
//! what is rare is boxed, what can be borrowed or made again is not kept twice.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use pacer_limiter::{Feedback, Grant, RequestMeta, Token};
use pacer_plan::Request;
use pacer_stats::{Attempt, ErrorKind, RequestOutcome};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use crate::evidence::{Correlation, Sent};
use crate::http::{self, Response, TransportError};
use crate::iteration::Shared;
use crate::prepare;
use crate::prepare::Prepared;
use crate::render::RenderCtx;
use crate::retry::{self, Exchange, Next, RetryAfter};

/// How often the server's rate-limit headers are read, at most: four times a second is fresh
/// enough for the summary, and a server that sends none costs no parsing per response.
const SERVER_LIMITS_EVERY_MS: u64 = 250;

/// Send `p` (the prepared form of `req`, request `ri` of scenario `sc`) with the plan's retries.
/// `credential` is the request's (already resolved from the scenario's); `intended` is when the
/// request was meant to start. `again`: the render context of a request that uses
/// `{{attempt}}`, rendered again for each retry (its correlation id stays the first's).
/// Returns the logical request's outcome and the final response, if any.
#[allow(clippy::too_many_arguments)] // the request's coordinates, each needed here
pub(crate) async fn send_with_retries(
    sh: &Shared,
    sc: usize,
    ri: usize,
    req: &Request,
    credential: Option<usize>,
    first: &Prepared,
    intended: Instant,
    again: Option<&RenderCtx<'_>>,
) -> (RequestOutcome, Option<Response>) {
    let policy = &sh.plan.retry;
    let correlation = Correlation::new(sh.correlation_header.as_ref(), &first.headers)
        .for_retries(again.is_some());
    let keep_body = sh
        .json_reads
        .get(sc)
        .and_then(|r| r.get(ri))
        .is_none_or(Option::is_some);
    // Each attempt's `Sending` is made afresh from these (a template kept beside it would be
    // held by every request in flight).
    let credential = Sending {
        sh,
        sc,
        ri,
        req,
        p: first,
        keep_body,
        correlation: &correlation,
    }
    .credential(credential);
    // Boxed, like `last` below: each is live while the request is in flight, and inline they
    // would take 256 and 176 bytes of every request's future, when most requests never
    // render again and a first attempt has no answer yet.
    let mut rendered_again: Option<Box<Prepared>> = None;
    let mut out = RequestOutcome {
        failed: true,
        ..RequestOutcome::default()
    };
    let mut auth_retry_used = false;
    let mut max_attempts = policy.max_attempts.max(1);
    let mut last: Option<Box<Response>> = None;
    let mut attempt = 0u32;
    let mut last_retryable = false;
    loop {
        attempt += 1;
        out.attempts = attempt;
        if attempt > 1
            && let Some(ctx) = again
        {
            let ctx = RenderCtx { attempt, ..*ctx };
            if let Err(why) = prepare::prepared(sh, sc, ri, req, &ctx, &mut rendered_again) {
                let (kind, why) = match why {
                    prepare::NotPrepared::Refused(_) => {
                        (ErrorKind::OffOrigin, "its URL is not allowed".to_string())
                    }
                    prepare::NotPrepared::Invalid(msg) => (ErrorKind::Other, msg),
                };
                sh.warn_once(format!(
                    "request {:?}: attempt {attempt} could not be rendered: {why}",
                    req.name
                ));
                record_local_failure(sh, sc, ri, kind);
                break;
            }
        }
        let s = Sending {
            sh,
            sc,
            ri,
            req,
            p: rendered_again.as_deref().unwrap_or(first),
            keep_body,
            correlation: &correlation,
        };
        let grant = match s.acquire().await {
            Ok(g) => g,
            Err(kind) => {
                record_local_failure(sh, sc, ri, kind);
                break;
            }
        };
        out.limiter_wait += grant.waited;
        out.paused += grant.paused;
        // The grant's limits, alone: the whole grant need not be held while the request is
        // in flight.
        let limits = grant.limits;
        let (token, authorization) = match s.bearer(credential).await {
            Ok(bearer) => bearer.unzip(),
            Err(kind) => {
                record_local_failure(sh, sc, ri, kind);
                break;
            }
        };
        if attempt == 1 {
            out.send_lag = Some(
                intended
                    .elapsed()
                    .saturating_sub(grant.waited + grant.paused),
            );
        }
        let exchange = match s.send(authorization, limits).await {
            Ok(resp) => {
                let retry_after = s.answered(&resp, limits, attempt);
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
                    last = Some(Box::new(resp));
                    continue;
                }
                let status = resp.status;
                last = Some(Box::new(resp));
                Exchange::Answered {
                    status,
                    retry_after,
                }
            }
            Err(t) => {
                s.failed(&t, limits, attempt);
                out.failed = true;
                last = None;
                Exchange::Failed(t.kind)
            }
        };
        let adaptive = matches_adaptive(sh, limits);
        let next = retry::next(policy, &exchange, attempt, max_attempts, adaptive);
        last_retryable = next != Next::NotRetryable;
        let Next::Retry { floor } = next else {
            break;
        };
        let delay = retry::backoff_delay(policy, attempt, floor);
        if !back_off(sh, delay, &mut out.backoff).await {
            break;
        }
    }
    out.duration = intended.elapsed();
    out.retry_outcome = retry::outcome(out.attempts, out.failed, last_retryable);
    (out, last.map(|r| *r))
}

/// The request being sent: where its attempts are recorded and what the limiter sees.
struct Sending<'a> {
    sh: &'a Shared,
    sc: usize,
    ri: usize,
    req: &'a Request,
    p: &'a Prepared,
    /// A check, extract or poll reads the response body (otherwise it is drained).
    keep_body: bool,
    /// The logical request's correlation id, the same on every attempt.
    correlation: &'a Correlation<'a>,
}

impl Sending<'_> {
    /// What the limiter sees of this attempt (made when asked: a field would be held by every
    /// request in flight).
    fn meta(&self) -> RequestMeta<'_> {
        RequestMeta {
            method: &self.req.method,
            path: self.p.uri.path(),
            request: &self.req.name,
        }
    }

    /// Credentials go to the target's origin only: a request to an allowed host goes without
    /// (and the log says so, once).
    fn credential(&self, credential: Option<usize>) -> Option<usize> {
        let gets = self.p.destination.gets_credentials();
        if credential.is_some() && !gets {
            self.sh.warn_once(format!(
                "request {:?}: goes to an http.allowHosts host ({}): sent without its credential",
                self.req.name,
                self.p.uri.authority().map_or("", |a| a.as_str())
            ));
        }
        credential.filter(|_| gets)
    }

    /// Phase 1: wait for every limit the request matches. Err: the limiter failed (logged);
    /// the attempt is to be counted as this kind of error.
    async fn acquire(&self) -> Result<Grant, ErrorKind> {
        self.sh.limiter.acquire(&self.meta()).await.map_err(|e| {
            self.sh
                .warn_once(format!("request {:?}: {e}", self.req.name));
            ErrorKind::Limiter
        })
    }

    /// Phase 2: the credential's token and its `Authorization` value (marked sensitive), or
    /// `None` without a credential. Err: no usable token (logged, the value never shown).
    async fn bearer(
        &self,
        credential: Option<usize>,
    ) -> Result<Option<(Token, HeaderValue)>, ErrorKind> {
        let Some(c) = credential else {
            return Ok(None);
        };
        let token = self.sh.tokens.token(c).await.map_err(|e| {
            self.sh.warn_once(e.to_string());
            ErrorKind::Auth
        })?;
        let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) else {
            self.sh
                .warn_once("a bearer token is not a valid header value (value not shown)".into());
            return Err(ErrorKind::Auth);
        };
        value.set_sensitive(true);
        Ok(Some((token, value)))
    }

    /// Phase 3: one exchange. If the end of the test drops this future mid-exchange, the guard
    /// still counts the attempt (as interrupted): the request was sent and the server may have
    /// counted it.
    async fn send(
        &self,
        authorization: Option<HeaderValue>,
        limits: u64,
    ) -> Result<Response, TransportError> {
        let guard = InFlight {
            sh: self.sh,
            sc: self.sc,
            ri: self.ri,
            limits,
            armed: true,
        };
        let result = self
            .sh
            .client
            .send(http::Outgoing {
                method: &self.p.method,
                uri: &self.p.uri,
                headers: &self.p.headers,
                authorization,
                body: self.p.body.as_ref(),
                keep_body: self.keep_body,
                correlation: self.correlation.header.zip(self.correlation.added.as_ref()),
            })
            .await;
        guard.disarm();
        result
    }

    /// Phases 4 to 6 for an answer: read its Retry-After (a 429's or a 503's), give the limiter
    /// its feedback, record the attempt and (now and then) the server's rate-limit headers.
    fn answered(&self, resp: &Response, limits: u64, attempt: u32) -> Option<RetryAfter> {
        let policy = &self.sh.plan.retry;
        let retry_after = retry::retry_after_of(
            resp.status,
            resp.headers.get(RETRY_AFTER).map(HeaderValue::as_bytes),
            SystemTime::now,
            policy.retry_after_max,
        );
        self.sh.limiter.feedback(
            &self.meta(),
            &Feedback {
                status: resp.status,
                retry_after: retry::scope_pause(policy, resp.status, retry_after),
                pause_origin: if retry_after.and_then(RetryAfter::wait).is_some() {
                    pacer_limiter::PauseOrigin::Server
                } else {
                    pacer_limiter::PauseOrigin::PlanDefault
                },
                stated_rate: matches_adaptive(self.sh, limits)
                    .then(|| crate::ratelimit_headers::policy_rate(&resp.headers))
                    .flatten(),
                server: (limits != 0)
                    .then(|| crate::ratelimit_headers::server_report(&resp.headers))
                    .flatten(),
                sent_ago: resp.service_time,
            },
        );
        let resp_bytes = resp.body_len
            + resp
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
                .sum::<u64>();
        self.sh.recorder.record_attempt(
            self.sc,
            self.ri,
            &Attempt {
                service_time: resp.service_time,
                status: Some(resp.status),
                error: None,
                bytes_sent: self.bytes_sent(),
                bytes_received: resp_bytes,
                retry_after: retry_after.and_then(RetryAfter::wait),
                retry_after_malformed: matches!(retry_after, Some(RetryAfter::Malformed)),
                limits,
                server_limit: (resp.status == 429)
                    .then(|| crate::ratelimit_headers::server_limit_name(&resp.headers, &resp.body))
                    .flatten(),
            },
        );
        maybe_record_server_limits(self.sh, &resp.headers);
        self.evidence(attempt).answered(
            resp.status,
            &resp.headers,
            &resp.body,
            retry_after.and_then(RetryAfter::wait),
        );
        retry_after
    }

    /// Where this attempt's ledger entry goes, if it gets one.
    fn evidence(&self, attempt: u32) -> Sent<'_> {
        Sent {
            recorder: &self.sh.recorder,
            scenario: self.sh.plan.scenarios.get(self.sc).map_or("", |s| &s.name),
            request: &self.req.name,
            attempt,
            correlation_id: self.correlation.id.as_deref(),
        }
    }

    /// Phases 4 to 6 for a transport failure: record the attempt and log why.
    fn failed(&self, t: &TransportError, limits: u64, attempt: u32) {
        self.evidence(attempt).failed(t.kind);
        self.sh.recorder.record_attempt(
            self.sc,
            self.ri,
            &Attempt {
                service_time: t.service_time,
                status: None,
                error: Some(t.kind),
                bytes_sent: self.bytes_sent(),
                bytes_received: 0,
                retry_after: None,
                retry_after_malformed: false,
                limits,
                server_limit: None,
            },
        );
        self.sh.warn_once(format!(
            "request {:?}: {}: {}",
            self.req.name,
            t.kind.as_str(),
            t.message
        ));
    }

    /// What an attempt sends: the headers (approximately) and the body.
    fn bytes_sent(&self) -> u64 {
        let correlation = match (self.correlation.header, &self.correlation.added) {
            (Some(name), Some(value)) => (name.as_str().len() + value.len() + 4) as u64,
            _ => 0,
        };
        self.p.approx_header_bytes
            + correlation
            + self.p.body.as_ref().map_or(0, |b| b.len() as u64)
    }
}

/// Phase 7: wait `delay` before the next attempt, adding the time waited to `backoff`. false:
/// the test ended meanwhile (a hard stop), so there is no next attempt.
async fn back_off(sh: &Shared, delay: Duration, backoff: &mut Duration) -> bool {
    let slept = Instant::now();
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = sh.hard_stop.cancelled() => true,
    };
    *backoff += slept.elapsed();
    !stopped
}

/// Whether a request's limits (the grant's bit set) include an adaptive one.
fn matches_adaptive(sh: &Shared, limits: u64) -> bool {
    sh.plan
        .limits
        .iter()
        .take(64)
        .enumerate()
        .any(|(i, l)| l.adaptive && limits & (1 << i) != 0)
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

/// An attempt that could not be sent (no token, limiter gone, refused before sending): counted
/// as an error of `kind` so it shows.
pub(crate) fn record_local_failure(sh: &Shared, sc: usize, ri: usize, kind: ErrorKind) {
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

/// Keep the server's latest rate-limit headers: look at most every [`SERVER_LIMITS_EVERY_MS`]
/// (also when the server sends none).
fn maybe_record_server_limits(sh: &Shared, headers: &HeaderMap) {
    let now_ms = sh.epoch.elapsed().as_millis() as u64;
    let last = sh.last_limits_ms.load(Ordering::Relaxed);
    if now_ms < last + SERVER_LIMITS_EVERY_MS && last != 0 {
        return;
    }
    sh.last_limits_ms.store(now_ms.max(1), Ordering::Relaxed);
    if let Some(h) = crate::ratelimit_headers::parse(headers) {
        sh.recorder.record_server_limits(h);
    }
}
