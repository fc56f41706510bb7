//! What the mock saw: request counters, auth and token outcomes, per-worker tallies, the
//! optional arrival log and fault timestamps. [`StatsView`] is what `GET /_mock/stats` returns
//! and what [`crate::MockServer::stats`] gives in-process; both (de)serialize the same JSON.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits::LimitStats;

/// Longest accepted `X-Pacer-Worker` value; longer ones are counted as invalid.
pub(crate) const MAX_WORKER_ID_LEN: usize = 128;
/// Cap of each list of fault timestamps.
const MAX_FAULT_TIMESTAMPS: usize = 100_000;

/// The whole statistics document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Microseconds since server start; every `*Us` field uses the same origin.
    pub uptime_us: u64,
    /// The server runs in `--static` mode (only `requests.total` is counted).
    #[serde(rename = "static")]
    pub static_mode: bool,
    pub requests: RequestStats,
    pub auth: AuthStats,
    pub tokens: TokenStats,
    /// API limits, in configuration order.
    pub limits: Vec<LimitStats>,
    /// The per-client limit of `/oauth/token`, if any.
    pub token_limit: Option<LimitStats>,
    /// Per `X-Pacer-Worker` id.
    pub workers: BTreeMap<String, WorkerStats>,
    /// Requests whose worker id came after `maxWorkers` distinct ids.
    pub workers_overflow: u64,
    /// Requests with an `X-Pacer-Worker` header that is not 1-128 visible ASCII characters.
    pub invalid_worker_ids: u64,
    pub faults: FaultStats,
    pub arrivals: ArrivalsSummary,
}

/// Requests to the API and token endpoints (control endpoints are not counted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestStats {
    pub total: u64,
    /// Keyed by `METHOD /route/template`; `catch-all` and `not-found` for the rest.
    pub by_route: BTreeMap<String, u64>,
    pub by_status: BTreeMap<u16, u64>,
}

/// Why API requests were answered 401.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthStats {
    pub missing: u64,
    pub malformed: u64,
    pub unknown: u64,
    pub expired: u64,
    pub revoked: u64,
    /// Answered 401 by `force401`.
    pub forced: u64,
}

/// The token endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenStats {
    pub issued: u64,
    pub by_client: BTreeMap<String, u64>,
    pub invalid_client: u64,
    /// Bad or missing `grant_type`, unreadable body.
    pub invalid_request: u64,
    pub rate_limited: u64,
    /// Tokens currently neither expired nor revoked.
    pub live: u64,
}

/// Requests carrying one `X-Pacer-Worker` id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    pub count: u64,
    pub first_us: u64,
    pub last_us: u64,
}

/// Injected faults and when they fired.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FaultStats {
    /// When each forced 429 was sent (µs since start; capped at 100k entries).
    pub forced429_us: Vec<u64>,
    /// When each forced 401 was sent.
    pub forced401_us: Vec<u64>,
    pub pending429: u64,
    pub pending401: u64,
    /// 503 answers of unavailable periods.
    pub unavailable503: u64,
    /// Responses held by a stall window.
    pub stalled: u64,
}

/// Size of the arrival log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArrivalsSummary {
    pub enabled: bool,
    pub recorded: u64,
    /// Arrivals beyond `maxArrivals`.
    pub dropped: u64,
}

/// One API request of the arrival log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    /// When the request arrived, µs since server start.
    pub t_us: u64,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub worker: Option<String>,
    /// The request's `X-Correlation-Id` ([`CORRELATION_HEADER`]), printable and bounded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub correlation_id: Option<String>,
    /// The request's path and query, printable and bounded ([`MAX_LOGGED_PATH`]): what a
    /// test of templates and test data checks the values it sent against.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
}

/// The header whose value the arrival log keeps: what `pacer run` sends by default, so a test
/// can match its evidence ledger against what the server received.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The longest correlation id kept (longer ones are cut): a UUID is 36 characters.
pub const MAX_CORRELATION_ID: usize = 128;

/// The longest path (with its query) the arrival log keeps (longer ones are cut): room for
/// an API path with a few ids and query parameters, while a log of `maxArrivals` stays small.
pub const MAX_LOGGED_PATH: usize = 512;

/// An arrival as stored: worker ids are shared with the tally, not copied per request.
#[derive(Debug, Clone)]
struct ArrivalRecord {
    t_us: u64,
    status: u16,
    worker: Option<Arc<str>>,
    correlation_id: Option<Box<str>>,
    path: Option<Box<str>>,
}

/// What the arrival log keeps of one request besides its time, status and worker: copied
/// only when the log is on.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    /// The correlation id header, as received.
    pub(crate) correlation: Option<Vec<u8>>,
    /// The path and query, as received.
    pub(crate) path: Option<String>,
}

/// Printable ASCII of `raw`, at most `max` characters; `None` when nothing is left.
fn printable(raw: &[u8], max: usize) -> Option<Box<str>> {
    let s: String = raw
        .iter()
        .filter(|b| (0x20..0x7f).contains(*b))
        .take(max)
        .map(|&b| char::from(b))
        .collect();
    (!s.is_empty()).then(|| s.into_boxed_str())
}

/// What `GET /_mock/arrivals` returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArrivalsView {
    pub enabled: bool,
    pub dropped: u64,
    pub arrivals: Vec<Arrival>,
}

/// The value of an `X-Pacer-Worker` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerHeader {
    Absent,
    Invalid,
    Id(String),
}

pub(crate) fn worker_header(headers: &axum::http::HeaderMap) -> WorkerHeader {
    let Some(v) = headers.get("x-pacer-worker") else {
        return WorkerHeader::Absent;
    };
    match v.to_str() {
        Ok(s) => {
            let s = s.trim();
            if s.is_empty()
                || s.len() > MAX_WORKER_ID_LEN
                || !s.bytes().all(|b| b.is_ascii_graphic())
            {
                WorkerHeader::Invalid
            } else {
                WorkerHeader::Id(s.to_owned())
            }
        }
        Err(_) => WorkerHeader::Invalid,
    }
}

/// Counters updated on every request; lives behind one lock.
#[derive(Debug)]
pub(crate) struct Recorder {
    requests: RequestStats,
    pub(crate) auth: AuthStats,
    pub(crate) tokens: TokenStats,
    workers: HashMap<Arc<str>, WorkerStats>,
    max_workers: usize,
    workers_overflow: u64,
    invalid_worker_ids: u64,
    forced429_us: Vec<u64>,
    forced401_us: Vec<u64>,
    pub(crate) unavailable503: u64,
    pub(crate) stalled: u64,
    record_arrivals: bool,
    max_arrivals: usize,
    arrivals: Vec<ArrivalRecord>,
    arrivals_dropped: u64,
}

impl Recorder {
    pub(crate) fn new(record_arrivals: bool, max_arrivals: usize, max_workers: usize) -> Self {
        Recorder {
            requests: RequestStats::default(),
            auth: AuthStats::default(),
            tokens: TokenStats::default(),
            workers: HashMap::new(),
            max_workers,
            workers_overflow: 0,
            invalid_worker_ids: 0,
            forced429_us: Vec::new(),
            forced401_us: Vec::new(),
            unavailable503: 0,
            stalled: 0,
            record_arrivals,
            max_arrivals,
            arrivals: Vec::new(),
            arrivals_dropped: 0,
        }
    }

    /// Forgets everything, keeping the settings.
    pub(crate) fn reset(&mut self) {
        *self = Recorder::new(self.record_arrivals, self.max_arrivals, self.max_workers);
    }

    /// Counts one request. `api` requests also go to the arrival log.
    pub(crate) fn record(
        &mut self,
        route: &str,
        status: u16,
        arrival_us: u64,
        worker: &WorkerHeader,
        api: bool,
    ) {
        self.requests.total += 1;
        // Route labels are a small fixed set, so the map stays small.
        match self.requests.by_route.get_mut(route) {
            Some(n) => *n += 1,
            None => {
                self.requests.by_route.insert(route.to_owned(), 1);
            }
        }
        *self.requests.by_status.entry(status).or_default() += 1;
        let worker_id = match worker {
            WorkerHeader::Absent => None,
            WorkerHeader::Invalid => {
                self.invalid_worker_ids += 1;
                None
            }
            WorkerHeader::Id(id) => self.tally_worker(id, arrival_us),
        };
        if api && self.record_arrivals {
            if self.arrivals.len() < self.max_arrivals {
                self.arrivals.push(ArrivalRecord {
                    t_us: arrival_us,
                    status,
                    worker: worker_id,
                    correlation_id: None,
                    path: None,
                });
            } else {
                self.arrivals_dropped += 1;
            }
        }
    }

    /// [`Recorder::record`] for an API request, keeping its correlation id (the value of
    /// [`CORRELATION_HEADER`], printable ASCII only, at most [`MAX_CORRELATION_ID`]) and its
    /// path and query (at most [`MAX_LOGGED_PATH`]) in the arrival log when the arrival is
    /// logged.
    pub(crate) fn record_api(
        &mut self,
        route: &str,
        status: u16,
        arrival_us: u64,
        worker: &WorkerHeader,
        logged: &Logged,
    ) {
        let before = self.arrivals.len();
        self.record(route, status, arrival_us, worker, true);
        if self.arrivals.len() > before
            && let Some(last) = self.arrivals.last_mut()
        {
            last.correlation_id = logged
                .correlation
                .as_deref()
                .and_then(|raw| printable(raw, MAX_CORRELATION_ID));
            last.path = logged
                .path
                .as_deref()
                .and_then(|p| printable(p.as_bytes(), MAX_LOGGED_PATH));
        }
    }

    /// Counts a request of worker `id`; returns the interned id for the arrival log.
    fn tally_worker(&mut self, id: &str, t: u64) -> Option<Arc<str>> {
        if let Some(w) = self.workers.get_mut(id) {
            w.count += 1;
            w.first_us = w.first_us.min(t);
            w.last_us = w.last_us.max(t);
            return self.workers.get_key_value(id).map(|(k, _)| k.clone());
        }
        if self.workers.len() >= self.max_workers {
            self.workers_overflow += 1;
            return None;
        }
        let key: Arc<str> = id.into();
        self.workers.insert(
            key.clone(),
            WorkerStats {
                count: 1,
                first_us: t,
                last_us: t,
            },
        );
        Some(key)
    }

    pub(crate) fn forced429(&mut self, t: u64) {
        if self.forced429_us.len() < MAX_FAULT_TIMESTAMPS {
            self.forced429_us.push(t);
        }
    }

    pub(crate) fn forced401(&mut self, t: u64) {
        self.auth.forced += 1;
        if self.forced401_us.len() < MAX_FAULT_TIMESTAMPS {
            self.forced401_us.push(t);
        }
    }

    pub(crate) fn token_issued(&mut self, client: &str) {
        self.tokens.issued += 1;
        match self.tokens.by_client.get_mut(client) {
            Some(n) => *n += 1,
            None => {
                self.tokens.by_client.insert(client.to_owned(), 1);
            }
        }
    }

    /// The parts of the statistics this recorder owns.
    pub(crate) fn fill(&self, view: &mut StatsView) {
        view.requests = self.requests.clone();
        view.auth = self.auth.clone();
        let live = view.tokens.live;
        view.tokens = self.tokens.clone();
        view.tokens.live = live;
        view.workers = self
            .workers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        view.workers_overflow = self.workers_overflow;
        view.invalid_worker_ids = self.invalid_worker_ids;
        view.faults.forced429_us = self.forced429_us.clone();
        view.faults.forced401_us = self.forced401_us.clone();
        view.faults.unavailable503 = self.unavailable503;
        view.faults.stalled = self.stalled;
        view.arrivals = ArrivalsSummary {
            enabled: self.record_arrivals,
            recorded: self.arrivals.len() as u64,
            dropped: self.arrivals_dropped,
        };
    }

    /// A copy of the arrival log, cheap enough to take under the lock (ids are shared).
    pub(crate) fn arrivals(&self) -> ArrivalsSnapshot {
        ArrivalsSnapshot {
            enabled: self.record_arrivals,
            dropped: self.arrivals_dropped,
            records: self.arrivals.clone(),
        }
    }
}

/// The arrival log copied out of the recorder, to be rendered without holding its lock.
pub(crate) struct ArrivalsSnapshot {
    enabled: bool,
    dropped: u64,
    records: Vec<ArrivalRecord>,
}

impl From<ArrivalsSnapshot> for ArrivalsView {
    fn from(s: ArrivalsSnapshot) -> Self {
        ArrivalsView {
            enabled: s.enabled,
            dropped: s.dropped,
            arrivals: s
                .records
                .into_iter()
                .map(|a| Arrival {
                    t_us: a.t_us,
                    status: a.status,
                    worker: a.worker.as_deref().map(str::to_owned),
                    correlation_id: a.correlation_id.as_deref().map(str::to_owned),
                    path: a.path.as_deref().map(str::to_owned),
                })
                .collect(),
        }
    }
}

impl StatsView {
    pub(crate) fn empty(uptime_us: u64, static_mode: bool) -> Self {
        StatsView {
            uptime_us,
            static_mode,
            requests: RequestStats::default(),
            auth: AuthStats::default(),
            tokens: TokenStats::default(),
            limits: Vec::new(),
            token_limit: None,
            workers: BTreeMap::new(),
            workers_overflow: 0,
            invalid_worker_ids: 0,
            faults: FaultStats::default(),
            arrivals: ArrivalsSummary::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn worker_ids_are_validated_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(worker_header(&h), WorkerHeader::Absent);
        h.insert("x-pacer-worker", HeaderValue::from_static("w-1"));
        assert_eq!(worker_header(&h), WorkerHeader::Id("w-1".into()));
        h.insert(
            "x-pacer-worker",
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(worker_header(&h), WorkerHeader::Invalid);
        h.insert("x-pacer-worker", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(worker_header(&h), WorkerHeader::Invalid);
        h.insert("x-pacer-worker", HeaderValue::from_static("a b"));
        assert_eq!(worker_header(&h), WorkerHeader::Invalid);

        let mut r = Recorder::new(true, 3, 2);
        for (i, w) in ["a", "b", "c", "a"].iter().enumerate() {
            r.record(
                "r",
                200,
                i as u64 * 10,
                &WorkerHeader::Id((*w).into()),
                true,
            );
        }
        r.record("r", 429, 50, &WorkerHeader::Invalid, true);
        let mut v = StatsView::empty(0, false);
        r.fill(&mut v);
        assert_eq!(v.workers.len(), 2);
        assert_eq!(
            v.workers["a"],
            WorkerStats {
                count: 2,
                first_us: 0,
                last_us: 30
            }
        );
        assert_eq!(v.workers_overflow, 1);
        assert_eq!(v.invalid_worker_ids, 1);
        assert_eq!(v.arrivals.recorded, 3);
        assert_eq!(v.arrivals.dropped, 2);
        assert_eq!(v.requests.by_status[&429], 1);
        let a = ArrivalsView::from(r.arrivals());
        assert_eq!(a.arrivals[2].worker, None);
        assert_eq!(a.arrivals[1].worker.as_deref(), Some("b"));
    }
}
