//! The API surface the mock imitates (Genesys Cloud shaped): which route a request is, and the
//! fake but realistic JSON each route answers — the conversation details query, `users/me`,
//! the asynchronous analytics jobs (submit, poll, page through results) and a catch-all.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use serde_json::{Value, json};

use crate::config::{EndpointsConfig, MAX_PAGE_SIZE};

const QUERY_PATH: &str = "/api/v2/analytics/conversations/details/query";
const USERS_ME_PATH: &str = "/api/v2/users/me";
const JOBS_PATH: &str = "/api/v2/analytics/conversations/details/jobs";
/// Jobs remembered at once; the oldest are forgotten (and answer 404) beyond it.
const MAX_JOBS: usize = 10_000;
/// Longest path echoed back by the catch-all.
const MAX_ECHOED_PATH: usize = 256;

/// Which endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Query,
    UsersMe,
    JobCreate,
    JobStatus(String),
    JobResults(String),
    CatchAll,
    NotFound,
}

impl Route {
    pub(crate) fn classify(method: &Method, path: &str, catch_all: bool) -> Route {
        let fallback = if catch_all {
            Route::CatchAll
        } else {
            Route::NotFound
        };
        if *method == Method::POST && path == QUERY_PATH {
            return Route::Query;
        }
        if *method == Method::GET && path == USERS_ME_PATH {
            return Route::UsersMe;
        }
        if *method == Method::POST && path == JOBS_PATH {
            return Route::JobCreate;
        }
        if *method == Method::GET
            && let Some(rest) = path
                .strip_prefix(JOBS_PATH)
                .and_then(|r| r.strip_prefix('/'))
        {
            let (id, results) = match rest.strip_suffix("/results") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            if valid_job_id(id) {
                return if results {
                    Route::JobResults(id.to_owned())
                } else {
                    Route::JobStatus(id.to_owned())
                };
            }
        }
        fallback
    }

    /// The `byRoute` label: a template, so arbitrary paths cannot grow the statistics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Route::Query => "POST /api/v2/analytics/conversations/details/query",
            Route::UsersMe => "GET /api/v2/users/me",
            Route::JobCreate => "POST /api/v2/analytics/conversations/details/jobs",
            Route::JobStatus(_) => "GET /api/v2/analytics/conversations/details/jobs/{jobId}",
            Route::JobResults(_) => {
                "GET /api/v2/analytics/conversations/details/jobs/{jobId}/results"
            }
            Route::CatchAll => "catch-all",
            Route::NotFound => "not-found",
        }
    }
}

fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A JSON error body shaped like Genesys' (`status`, `code`, `message`).
pub(crate) fn error_json(status: StatusCode, code: &str, message: impl Into<String>) -> Value {
    json!({"status": status.as_u16(), "code": code, "message": message.into()})
}

fn bad_request(message: impl Into<String>) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        error_json(StatusCode::BAD_REQUEST, "bad.request", message),
    )
}

/// Parses an optional JSON object body (empty means `{}`).
fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the request body must be a JSON object".into()),
        Err(e) => Err(format!("the request body is not valid JSON: {e}")),
    }
}

/// `paging.pageSize` and `paging.pageNumber` of a query body.
fn paging(body: &serde_json::Map<String, Value>, default_size: u64) -> Result<(u64, u64), String> {
    let Some(p) = body.get("paging") else {
        return Ok((default_size, 1));
    };
    let p = p.as_object().ok_or("paging must be an object")?;
    let size = match p.get("pageSize") {
        None => default_size,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or(format!(
                "paging.pageSize must be an integer in 1..={MAX_PAGE_SIZE}"
            ))?,
    };
    let number = match p.get("pageNumber") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or("paging.pageNumber must be an integer >= 1")?,
    };
    Ok((size, number))
}

/// `POST .../details/query`: one page of `totalHits` conversations.
pub(crate) fn query(body: &[u8], cfg: &EndpointsConfig) -> (StatusCode, Value) {
    let req = match json_object(body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let (size, number) = match paging(&req, cfg.query_page_size) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let skip = (number - 1).saturating_mul(size);
    let n = cfg.query_total_hits.saturating_sub(skip).min(size);
    let mut rng = rand::rng();
    let conversations: Vec<Value> = (0..n).map(|_| conversation(&mut rng)).collect();
    let mut out = json!({"totalHits": cfg.query_total_hits});
    if !conversations.is_empty() {
        out["conversations"] = Value::Array(conversations);
    }
    (StatusCode::OK, out)
}

/// `GET /api/v2/users/me`, as the client the token belongs to.
pub(crate) fn users_me(client: &str, org: &str) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "name": format!("{client} (OAuth client)"),
            "email": format!("{client}@{org}.example"),
            "state": "active",
            "username": client,
            "version": 1,
            "organization": {"id": org, "name": org},
        }),
    )
}

/// `GET *`: anything not modelled, answered with a small JSON body.
pub(crate) fn catch_all(method: &Method, path: &str) -> (StatusCode, Value) {
    let mut end = path.len().min(MAX_ECHOED_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    (
        StatusCode::OK,
        json!({"ok": true, "method": method.as_str(), "path": &path[..end]}),
    )
}

pub(crate) fn not_found(path: &str) -> (StatusCode, Value) {
    let mut end = path.len().min(MAX_ECHOED_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    (
        StatusCode::NOT_FOUND,
        error_json(
            StatusCode::NOT_FOUND,
            "not.found",
            format!("No resource at {}", &path[..end]),
        ),
    )
}

#[derive(Debug)]
struct Job {
    created_us: u64,
    submitted: SystemTime,
    delay_us: u64,
    pages: u64,
    page_size: u64,
}

impl Job {
    fn state(&self, now_us: u64) -> &'static str {
        let age = now_us.saturating_sub(self.created_us);
        if age >= self.delay_us {
            "FULFILLED"
        } else if age < self.delay_us / 3 {
            "QUEUED"
        } else {
            "PENDING"
        }
    }
}

/// Submitted analytics jobs.
#[derive(Debug, Default)]
pub(crate) struct JobStore {
    jobs: HashMap<String, Job>,
    order: VecDeque<String>,
}

impl JobStore {
    /// `POST .../details/jobs`: 202 with a `jobId`.
    pub(crate) fn create(
        &mut self,
        body: &[u8],
        cfg: &EndpointsConfig,
        now_us: u64,
    ) -> (StatusCode, Value) {
        if let Err(e) = json_object(body) {
            return bad_request(e);
        }
        let id = uuid::Uuid::new_v4().to_string();
        if self.order.len() >= MAX_JOBS
            && let Some(old) = self.order.pop_front()
        {
            self.jobs.remove(&old);
        }
        self.jobs.insert(
            id.clone(),
            Job {
                created_us: now_us,
                submitted: SystemTime::now(),
                delay_us: crate::limits::duration_us(cfg.job_delay),
                pages: cfg.job_pages,
                page_size: cfg.job_page_size,
            },
        );
        self.order.push_back(id.clone());
        (StatusCode::ACCEPTED, json!({"jobId": id}))
    }

    /// `GET .../jobs/{id}`: QUEUED, then PENDING, then FULFILLED after the job delay.
    pub(crate) fn status(&self, id: &str, now_us: u64) -> (StatusCode, Value) {
        let Some(job) = self.jobs.get(id) else {
            return job_not_found(id);
        };
        (
            StatusCode::OK,
            json!({
                "state": job.state(now_us),
                "submissionDate": iso8601(job.submitted),
                "expirationDate": iso8601(job.submitted + Duration::from_secs(86_400)),
            }),
        )
    }

    /// `GET .../jobs/{id}/results?cursor=..`: pages carry a `cursor` until the last one.
    pub(crate) fn results(
        &self,
        id: &str,
        query: Option<&str>,
        now_us: u64,
    ) -> (StatusCode, Value) {
        let Some(job) = self.jobs.get(id) else {
            return job_not_found(id);
        };
        let state = job.state(now_us);
        if state != "FULFILLED" {
            return bad_request(format!("Job {id} is not FULFILLED (state {state})"));
        }
        let cursor = query.and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "cursor")
                .map(|(_, v)| v.into_owned())
        });
        let page = match cursor {
            None => 0,
            Some(c) => match decode_cursor(&c, id) {
                Some(p) if p < job.pages => p,
                _ => return bad_request("invalid cursor"),
            },
        };
        let mut rng = rand::rng();
        let conversations: Vec<Value> =
            (0..job.page_size).map(|_| conversation(&mut rng)).collect();
        let mut out = json!({
            "conversations": conversations,
            "dataAvailabilityDate": iso8601(SystemTime::now()),
        });
        if page + 1 < job.pages {
            out["cursor"] = Value::String(URL_SAFE_NO_PAD.encode(format!("{id}:{}", page + 1)));
        }
        (StatusCode::OK, out)
    }
}

fn job_not_found(id: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        error_json(
            StatusCode::NOT_FOUND,
            "not.found",
            format!("Job {id} not found"),
        ),
    )
}

/// Reads a cursor made by `results`; `None` when it is not one of this job.
fn decode_cursor(cursor: &str, id: &str) -> Option<u64> {
    let raw = URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (job, page) = raw.rsplit_once(':')?;
    if job != id {
        return None;
    }
    page.parse().ok()
}

/// One conversation of the analytics details model: a customer and an agent on a voice call.
fn conversation<R: Rng + ?Sized>(rng: &mut R) -> Value {
    let now = SystemTime::now();
    let start = now
        .checked_sub(Duration::from_millis(rng.random_range(60_000..86_400_000)))
        .unwrap_or(now);
    let talk = Duration::from_millis(rng.random_range(20_000..900_000));
    let wait = Duration::from_millis(rng.random_range(1_000..120_000));
    let end = start + wait + talk;
    let answered = start + wait;
    let queue_id = uuid::Uuid::new_v4().to_string();
    let agent = rng.random_range(1..200);
    json!({
        "conversationId": uuid::Uuid::new_v4().to_string(),
        "conversationStart": iso8601(start),
        "conversationEnd": iso8601(end),
        "originatingDirection": "inbound",
        "divisionIds": ["f5c2a8e0-0000-4000-8000-000000000001"],
        "mediaStatsMinConversationMos": 4.0 + rng.random_range(0.0..0.9),
        "participants": [
            {
                "participantId": uuid::Uuid::new_v4().to_string(),
                "participantName": "Customer",
                "purpose": "customer",
                "sessions": [{
                    "sessionId": uuid::Uuid::new_v4().to_string(),
                    "mediaType": "voice",
                    "direction": "inbound",
                    "ani": format!("tel:+1555555{:04}", rng.random_range(0..10_000)),
                    "dnis": "tel:+18005550199",
                    "segments": [
                        {"segmentStart": iso8601(start), "segmentEnd": iso8601(answered), "segmentType": "interact", "queueId": queue_id},
                        {"segmentStart": iso8601(answered), "segmentEnd": iso8601(end), "segmentType": "interact", "disconnectType": "peer"},
                    ],
                }],
            },
            {
                "participantId": uuid::Uuid::new_v4().to_string(),
                "participantName": format!("Agent {agent}"),
                "purpose": "agent",
                "userId": uuid::Uuid::new_v4().to_string(),
                "sessions": [{
                    "sessionId": uuid::Uuid::new_v4().to_string(),
                    "mediaType": "voice",
                    "direction": "inbound",
                    "metrics": [
                        {"name": "tAnswered", "value": wait.as_millis() as u64, "emitDate": iso8601(answered)},
                        {"name": "tTalkComplete", "value": talk.as_millis() as u64, "emitDate": iso8601(end)},
                    ],
                    "segments": [
                        {"segmentStart": iso8601(answered), "segmentEnd": iso8601(end), "segmentType": "interact", "queueId": queue_id, "disconnectType": "client"},
                    ],
                }],
            },
        ],
    })
}

/// `2026-05-01T12:34:56.789Z`, without pulling in a date crate.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso8601() {
        assert_eq!(iso8601(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(iso8601(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn routes() {
        let get = Method::GET;
        assert_eq!(
            Route::classify(&Method::POST, QUERY_PATH, true),
            Route::Query
        );
        assert_eq!(Route::classify(&get, QUERY_PATH, true), Route::CatchAll);
        assert_eq!(Route::classify(&get, QUERY_PATH, false), Route::NotFound);
        assert_eq!(
            Route::classify(&get, &format!("{JOBS_PATH}/abc-1/results"), true),
            Route::JobResults("abc-1".into())
        );
        assert_eq!(
            Route::classify(&get, &format!("{JOBS_PATH}/abc-1"), true),
            Route::JobStatus("abc-1".into())
        );
        assert_eq!(
            Route::classify(&get, &format!("{JOBS_PATH}/a/b"), true),
            Route::CatchAll
        );
        assert_eq!(
            Route::classify(&get, &format!("{JOBS_PATH}/"), true),
            Route::CatchAll
        );
    }

    #[test]
    fn query_pages_and_bad_bodies() {
        let cfg = EndpointsConfig::default();
        let (s, v) = query(b"", &cfg);
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["conversations"].as_array().unwrap().len(), 5);
        assert_eq!(v["totalHits"], 25);
        let (_, v) = query(br#"{"paging": {"pageSize": 10, "pageNumber": 3}}"#, &cfg);
        assert_eq!(v["conversations"].as_array().unwrap().len(), 5);
        let (_, v) = query(br#"{"paging": {"pageSize": 10, "pageNumber": 4}}"#, &cfg);
        assert!(v.get("conversations").is_none());
        let huge = format!(
            r#"{{"paging": {{"pageSize": 100, "pageNumber": {}}}}}"#,
            u64::MAX
        );
        assert_eq!(query(huge.as_bytes(), &cfg).0, StatusCode::OK);
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"paging": 3}"#,
            br#"{"paging": {"pageSize": 0}}"#,
            br#"{"paging": {"pageSize": 101}}"#,
            br#"{"paging": {"pageNumber": -1}}"#,
            b"\xff\xfe",
        ] {
            let (s, v) = query(bad, &cfg);
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(v["code"], "bad.request");
        }
    }

    #[test]
    fn jobs_page_through_cursors() {
        let cfg = EndpointsConfig {
            job_delay: Duration::from_millis(300),
            job_pages: 3,
            ..EndpointsConfig::default()
        };
        let mut store = JobStore::default();
        let (s, v) = store.create(b"{}", &cfg, 0);
        assert_eq!(s, StatusCode::ACCEPTED);
        let id = v["jobId"].as_str().unwrap().to_owned();
        assert_eq!(store.status(&id, 50_000).1["state"], "QUEUED");
        assert_eq!(store.status(&id, 200_000).1["state"], "PENDING");
        assert_eq!(store.results(&id, None, 200_000).0, StatusCode::BAD_REQUEST);
        assert_eq!(store.status(&id, 300_000).1["state"], "FULFILLED");
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let q = cursor.as_ref().map(|c| format!("cursor={c}"));
            let (s, v) = store.results(&id, q.as_deref(), 400_000);
            assert_eq!(s, StatusCode::OK);
            pages += 1;
            match v.get("cursor") {
                Some(c) => cursor = Some(c.as_str().unwrap().to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(
            store.results(&id, Some("cursor=garbage"), 400_000).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(store.status("nope", 0).0, StatusCode::NOT_FOUND);
    }
}
