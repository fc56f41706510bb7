//! The path of one API request through the mock, in the order a SaaS gateway applies it:
//! outage (503) -> authentication (401) -> injected faults -> rate limits (429, or a limit's
//! status; a leaky bucket may hold the request for its turn) -> the endpoint -> service time ->
//! rate-limit headers; then any stall window holds the response, and the
//! request is recorded.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::config::{AuthMode, HeadersConfig, ResetFormat};
use crate::endpoints::{self, Route, error_json};
use crate::limits::{Decision, Identity, LimitStatus};
use crate::state::Shared;
use crate::stats::{Logged, WorkerHeader, worker_header};
use crate::tokens::{Bearer, TokenProblem, bearer};

/// Largest request body read; bigger ones get 413.
pub(crate) const MAX_BODY: usize = 1 << 20;
const ANONYMOUS: &str = "anonymous";

/// What happened to a request, beyond its status, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Forced429,
    Forced401,
    Unavailable,
}

enum Forced {
    Unauthorized,
    TooManyRequests {
        secs: u64,
        header: Option<HeaderValue>,
    },
}

struct Outcome {
    response: Response,
    fault: Fault,
}

impl From<Response> for Outcome {
    fn from(response: Response) -> Self {
        Outcome {
            response,
            fault: Fault::None,
        }
    }
}

/// The caller as the limits see it.
struct Caller {
    /// The raw token, to revoke it on a forced 401.
    token: Option<String>,
    label: Arc<str>,
    client: Arc<str>,
    org: Arc<str>,
}

impl Caller {
    fn anonymous() -> Self {
        Caller {
            token: None,
            label: ANONYMOUS.into(),
            client: ANONYMOUS.into(),
            org: ANONYMOUS.into(),
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            token: &self.label,
            client: &self.client,
            org: &self.org,
        }
    }
}

/// Every request not routed elsewhere: the modelled endpoints and the catch-all.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let arrival = shared.now_us();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if path == "/_mock" || path.starts_with("/_mock/") {
        // A typo in a control path must not look like an API call.
        return json_response(StatusCode::NOT_FOUND, &endpoints::not_found(path).1);
    }
    let route = Route::classify(&parts.method, path, shared.config.endpoints.catch_all);
    // Counts the request even if the client goes away before the answer (status 499, as
    // nginx logs it): the server did receive it, and limits already counted it.
    let mut pending = Pending {
        shared: shared.clone(),
        route: route.label(),
        arrival,
        worker: Some(worker_header(&parts.headers)),
        // Copied only when the arrival log keeps it.
        logged: if shared.config.record_arrivals {
            Logged {
                correlation: parts
                    .headers
                    .get(crate::stats::CORRELATION_HEADER)
                    .map(|v| v.as_bytes().to_vec()),
                path: parts.uri.path_and_query().map(|p| p.as_str().to_owned()),
            }
        } else {
            Logged::default()
        },
    };
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let outcome = match body {
        Ok(body) => {
            process(
                &shared,
                &parts.method,
                &parts.uri,
                &parts.headers,
                &body,
                &route,
                arrival,
            )
            .await
        }
        Err(_) => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &error_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request.too.large",
                format!("request body larger than {MAX_BODY} bytes or unreadable"),
            ),
        )
        .into(),
    };
    let stalled = hold_for_stall(&shared).await;
    let sent = shared.now_us();
    let status = outcome.response.status().as_u16();
    let worker = pending.worker.take().unwrap_or(WorkerHeader::Absent);
    let mut rec = shared.recorder.lock();
    rec.record_api(route.label(), status, arrival, &worker, &pending.logged);
    if stalled {
        rec.stalled += 1;
    }
    match outcome.fault {
        Fault::Forced429 => rec.forced429(sent),
        Fault::Forced401 => rec.forced401(sent),
        Fault::Unavailable => rec.unavailable503 += 1,
        Fault::None => {}
    }
    drop(rec);
    let mut response = outcome.response;
    // The server's own id for the exchange, as Genesys Cloud sends it on every answer: what a
    // client's evidence ledger keeps beside its own correlation id.
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert(SERVER_REQUEST_ID, id);
    }
    response
}

/// The header carrying the mock's id for each API answer (Genesys Cloud's name).
pub(crate) const SERVER_REQUEST_ID: &str = "inin-correlation-id";

/// Records a request whose client left before it was answered.
struct Pending {
    shared: Arc<Shared>,
    route: &'static str,
    arrival: u64,
    /// `None` once the request was recorded normally.
    worker: Option<WorkerHeader>,
    /// What the arrival log keeps of the request, as received (the log cleans it).
    logged: Logged,
}

/// Status recorded for requests the client abandoned (nginx's "client closed request").
pub(crate) const CLIENT_CLOSED: u16 = 499;

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.shared.recorder.lock().record_api(
                self.route,
                CLIENT_CLOSED,
                self.arrival,
                &worker,
                &self.logged,
            );
        }
    }
}

/// Holds a ready response until the current stall window ends; true if it did.
pub(crate) async fn hold_for_stall(shared: &Shared) -> bool {
    let hold = shared
        .faults
        .lock()
        .stall
        .as_ref()
        .and_then(|s| s.hold(shared.start.elapsed()));
    match hold {
        Some(d) => {
            tokio::time::sleep(d).await;
            true
        }
        None => false,
    }
}

async fn process(
    shared: &Shared,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    route: &Route,
    now: u64,
) -> Outcome {
    let path = uri.path();
    if *route == Route::NotFound {
        return json_response(StatusCode::NOT_FOUND, &endpoints::not_found(path).1).into();
    }

    let outage = {
        let mut f = shared.faults.lock();
        f.outage_at(now).map(|secs| (secs, f.retry_after(secs)))
    };
    if let Some((secs, header)) = outage {
        let body = json!({
            "status": 503,
            "code": "service.unavailable",
            "message": "The service is temporarily unavailable.",
            "retryAfterSeconds": secs,
        });
        let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
        if let Some(h) = header {
            r.headers_mut().insert(RETRY_AFTER, h);
        }
        return Outcome {
            response: r,
            fault: Fault::Unavailable,
        };
    }

    let caller = match authenticate(shared, headers, now) {
        Ok(c) => c,
        Err(Refused { code, message }) => return unauthorized(code, &message).into(),
    };

    // Forced faults come after authentication: a forced 401 stands for a token the server
    // stopped accepting, and a forced 429 for a limit of this caller.
    let forced = {
        let mut f = shared.faults.lock();
        if f.force401 > 0 {
            f.force401 -= 1;
            Some(Forced::Unauthorized)
        } else if f.force429 > 0 {
            f.force429 -= 1;
            let secs = f.force429_retry_after;
            Some(Forced::TooManyRequests {
                secs,
                header: f.retry_after(secs),
            })
        } else {
            None
        }
    };
    match forced {
        Some(Forced::Unauthorized) => {
            if let Some(t) = &caller.token {
                shared.tokens.lock().revoke(t);
            }
            return Outcome {
                response: unauthorized("bad.credentials", "Invalid login credentials. (revoked)"),
                fault: Fault::Forced401,
            };
        }
        Some(Forced::TooManyRequests { secs, header }) => {
            let mut r = too_many_requests("forced", "forced", secs, header);
            if shared.config.headers.inin {
                // Genesys sends its counters on 429s as well; a forced one only has a reset.
                r.headers_mut()
                    .insert("inin-ratelimit-reset", HeaderValue::from(secs));
            }
            return Outcome {
                response: r,
                fault: Fault::Forced429,
            };
        }
        None => {}
    }

    let decision = shared
        .limits
        .lock()
        .check(method.as_str(), path, &caller.identity(), now);
    let statuses = match decision {
        Decision::Allowed { statuses, delay_us } => {
            if delay_us > 0 {
                // A leaky bucket without `nodelay` holds the request until its turn.
                tokio::time::sleep(Duration::from_micros(delay_us)).await;
            }
            statuses
        }
        Decision::Rejected {
            limit,
            key,
            retry_after_secs,
            statuses,
            status,
            retry_after,
        } => {
            tracing::debug!(%limit, %key, retry_after_secs, status, "rate limit exceeded");
            let header = if retry_after {
                shared.faults.lock().retry_after(retry_after_secs)
            } else {
                None
            };
            // Validated as 400..=599; 429 if a bug let another through.
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            let mut r = refusal(code, &limit, &key, retry_after_secs, header);
            add_limit_headers(r.headers_mut(), &statuses, &shared.config.headers);
            return r.into();
        }
    };

    let (status, value) = match route {
        Route::Query => endpoints::query(body, &shared.config.endpoints),
        Route::UsersMe => endpoints::users_me(&caller.client, &caller.org),
        Route::JobCreate => shared
            .jobs
            .lock()
            .create(body, &shared.config.endpoints, now),
        Route::JobStatus(id) => shared.jobs.lock().status(id, now),
        Route::JobResults(id) => shared.jobs.lock().results(id, uri.query(), now),
        Route::CatchAll | Route::NotFound => endpoints::catch_all(method, path),
    };

    let latency = {
        let f = shared.faults.lock();
        if f.latency.is_none() {
            Duration::ZERO
        } else {
            f.latency.sample(&mut rand::rng())
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let mut r = json_response(status, &value);
    add_limit_headers(r.headers_mut(), &statuses, &shared.config.headers);
    r.into()
}

/// Why a request is answered 401 (code and message of the body).
struct Refused {
    code: &'static str,
    message: String,
}

impl Refused {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refused {
            code,
            message: message.into(),
        }
    }
}

/// Checks the bearer token.
fn authenticate(shared: &Shared, headers: &HeaderMap, now: u64) -> Result<Caller, Refused> {
    let required = shared.config.auth == AuthMode::Required;
    let token = match bearer(headers) {
        Bearer::Token(t) => t,
        Bearer::Missing if required => {
            shared.recorder.lock().auth.missing += 1;
            return Err(Refused::new(
                "authentication.required",
                "No authentication bearer token specified in authorization header.",
            ));
        }
        Bearer::Malformed if required => {
            shared.recorder.lock().auth.malformed += 1;
            return Err(Refused::new(
                "bad.credentials",
                "Invalid login credentials. (malformed authorization header)",
            ));
        }
        _ => return Ok(Caller::anonymous()),
    };
    let checked = shared.tokens.lock().check(token, now);
    match checked {
        Ok(info) => Ok(Caller {
            token: Some(token.to_owned()),
            label: info.label,
            client: info.client,
            org: info.org,
        }),
        Err(_) if !required => Ok(Caller::anonymous()),
        Err(problem) => {
            let reason = {
                let mut rec = shared.recorder.lock();
                match problem {
                    TokenProblem::Unknown => {
                        rec.auth.unknown += 1;
                        "unknown token"
                    }
                    TokenProblem::Expired => {
                        rec.auth.expired += 1;
                        "token expired"
                    }
                    TokenProblem::Revoked => {
                        rec.auth.revoked += 1;
                        "token revoked"
                    }
                }
            };
            Err(Refused::new(
                "bad.credentials",
                format!("Invalid login credentials. ({reason})"),
            ))
        }
    }
}

fn unauthorized(code: &str, message: &str) -> Response {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &error_json(StatusCode::UNAUTHORIZED, code, message),
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"pacer-mock\", error=\"invalid_token\""),
    );
    r
}

/// A 429 naming the limit, with `Retry-After` when the format gives one.
pub(crate) fn too_many_requests(
    limit: &str,
    key: &str,
    retry_after_secs: u64,
    header: Option<HeaderValue>,
) -> Response {
    refusal(
        StatusCode::TOO_MANY_REQUESTS,
        limit,
        key,
        retry_after_secs,
        header,
    )
}

/// A refusal by a limit (429, or the limit's `status`) naming it, with `Retry-After` when
/// given one.
fn refusal(
    status: StatusCode,
    limit: &str,
    key: &str,
    retry_after_secs: u64,
    header: Option<HeaderValue>,
) -> Response {
    let body = json!({
        "status": status.as_u16(),
        "code": "too.many.requests",
        "message": format!("Rate limit exceeded the maximum. [limit: {limit}]"),
        "limit": limit,
        "key": key,
        "retryAfterSeconds": retry_after_secs,
    });
    let mut r = json_response(status, &body);
    if let Some(h) = header {
        r.headers_mut().insert(RETRY_AFTER, h);
    }
    r
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Adds the rate-limit header families for the limits the request matched: each family
/// reports the limits that select it (their own `headers`, else the global ones).
fn add_limit_headers(h: &mut HeaderMap, statuses: &[LimitStatus], global: &HeadersConfig) {
    let style = |s: &LimitStatus| s.headers.unwrap_or(*global);
    // The most constraining limit of a family: least remaining, then the longest to reset.
    let tightest = |selects: &dyn Fn(&HeadersConfig) -> bool| {
        statuses
            .iter()
            .filter(|s| selects(&style(s)))
            .min_by_key(|s| (s.remaining, std::cmp::Reverse(s.reset_secs)))
    };
    if let Some(tight) = tightest(&|c| c.inin) {
        h.insert("inin-ratelimit-count", HeaderValue::from(tight.count));
        h.insert("inin-ratelimit-allowed", HeaderValue::from(tight.limit));
        h.insert("inin-ratelimit-reset", HeaderValue::from(tight.reset_secs));
    }
    if let Some(tight) = tightest(&|c| c.x_rate_limit) {
        let reset = match style(tight).x_rate_limit_reset {
            ResetFormat::Seconds => tight.reset_secs,
            ResetFormat::Epoch => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_add(tight.reset_secs),
        };
        h.insert("x-ratelimit-limit", HeaderValue::from(tight.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(tight.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    }
    let ietf: Vec<&LimitStatus> = statuses.iter().filter(|s| style(s).ietf).collect();
    if !ietf.is_empty() {
        let policy = ietf
            .iter()
            .map(|s| format!("\"{}\";q={};w={}", s.name, s.quota, s.window_secs))
            .collect::<Vec<_>>()
            .join(", ");
        let current = ietf
            .iter()
            .map(|s| format!("\"{}\";r={};t={}", s.name, s.remaining, s.reset_secs))
            .collect::<Vec<_>>()
            .join(", ");
        insert_str(h, HeaderName::from_static("ratelimit-policy"), &policy);
        insert_str(h, HeaderName::from_static("ratelimit"), &current);
    }
}

fn insert_str(h: &mut HeaderMap, name: HeaderName, value: &str) {
    // Limit names are validated as printable ASCII, so this only fails on a bug; skip then.
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
