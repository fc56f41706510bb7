//! Recording: the [`Recorder`] the engine's tasks write results into while the test runs.
//!
//! Which scenarios and requests exist is fixed at start ([`Layout`]), so records are addressed
//! by index and each (scenario, request) entry has its own lock: tasks hitting different
//! requests never contend, and the critical section is a few additions and histogram records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::hist::micros;
use crate::snapshot::{
    RequestSnapshot, RequestStats, ScenarioSnapshot, ScenarioStats, ServerLimitHeaders, Snapshot,
    TokenFetchStats,
};

/// Which scenarios and requests exist, fixed at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub scenarios: Vec<ScenarioLayout>,
}

impl Layout {
    /// A plan's scenarios and their requests, in plan order: the one layout that the engine
    /// records into and the controller merges by.
    pub fn of(plan: &pacer_plan::Plan) -> Self {
        Self {
            scenarios: plan
                .scenarios
                .iter()
                .map(|s| ScenarioLayout {
                    name: s.name.clone(),
                    requests: s.requests.iter().map(|r| r.name.clone()).collect(),
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioLayout {
    pub name: String,
    pub requests: Vec<String>,
}

/// Why an attempt produced no usable response. Its serde name is [`ErrorKind::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Connect,
    Timeout,
    Tls,
    Protocol,
    Body,
    /// A token could not be obtained.
    Auth,
    /// Our own limiter refused.
    Limiter,
    /// Sent, then cut off by the end of the test (gracefulStop passed, or abort): the server
    /// may have counted it, so it is counted here too.
    Interrupted,
    /// Not sent: the rendered URL went to an origin that is neither the target's nor in
    /// `http.allowHosts` (or the path was not a path).
    OffOrigin,
    /// The response body was larger than `http.maxBodyBytes` (the rest was not read).
    BodyTooLarge,
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Tls,
        ErrorKind::Protocol,
        ErrorKind::Body,
        ErrorKind::Auth,
        ErrorKind::Limiter,
        ErrorKind::Interrupted,
        ErrorKind::OffOrigin,
        ErrorKind::BodyTooLarge,
        ErrorKind::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Body => "body",
            ErrorKind::Auth => "auth",
            ErrorKind::Limiter => "limiter",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::OffOrigin => "off-origin",
            ErrorKind::BodyTooLarge => "body-too-large",
            ErrorKind::Other => "other",
        }
    }
}

/// Distinct server-named limits kept per request; more are counted under [`OTHER_SERVER_LIMIT`].
pub const MAX_SERVER_LIMIT_NAMES: usize = 32;
pub const OTHER_SERVER_LIMIT: &str = "(other)";

/// One HTTP exchange (an attempt; retries are separate attempts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attempt {
    /// Actual send to end of response body.
    pub service_time: Duration,
    /// `None` on transport error.
    pub status: Option<u16>,
    pub error: Option<ErrorKind>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The Retry-After the server sent (after clamping), if any.
    pub retry_after: Option<Duration>,
    /// A Retry-After header was present but unusable.
    pub retry_after_malformed: bool,
    /// Bitset of plan limit indices this request matched (for 429 accounting by limit).
    pub limits: u64,
    /// On a 429: the limit the server named (its body or headers), if it named one.
    pub server_limit: Option<String>,
}

/// How retrying ended for one logical request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RetryOutcome {
    /// The first attempt was final (success, or a failure the policy does not retry).
    #[default]
    NotRetried,
    /// At least one retry, and the final attempt succeeded.
    SucceededAfterRetry,
    /// Attempts exhausted while still failing.
    GaveUp,
    /// Failed with something the policy does not retry.
    NotRetryable,
}

/// One logical request after all its attempts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOutcome {
    /// From intended start to the end of the final response (corrected for coordinated
    /// omission).
    pub duration: Duration,
    /// Time waiting on our own client-side limiter (pacing).
    pub limiter_wait: Duration,
    /// From the intended start to the first attempt's send, less that attempt's wait on our
    /// own limiter (pacing and pauses, which `limiter_wait` and `paused` count): how late the
    /// generator itself sent. `None` when no attempt was sent.
    pub send_lag: Option<Duration>,
    /// Time waiting because a scope was paused by Retry-After.
    pub paused: Duration,
    /// Time sleeping between retries.
    pub backoff: Duration,
    pub attempts: u32,
    /// The final result failed (transport error or unexpected status).
    pub failed: bool,
    pub checks_passed: u32,
    pub checks_failed: u32,
    pub retry_outcome: RetryOutcome,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IterationOutcome {
    pub duration: Duration,
    pub failed: bool,
    /// Cut short by the end of the test (graceful stop): counted apart from completed
    /// iterations, and kept out of `iteration_duration`, as in k6.
    pub interrupted: bool,
}

struct ScenarioCell {
    stats: Mutex<ScenarioStats>,
    requests: Vec<Mutex<RequestStats>>,
}

/// Thread-safe recorder, shared as `Arc<Recorder>` by many tasks on several threads.
pub struct Recorder {
    layout: Layout,
    scenarios: Vec<ScenarioCell>,
    token_fetches: Mutex<BTreeMap<String, TokenFetchStats>>,
    server_limits: Mutex<Option<ServerLimitHeaders>>,
    /// Records addressed to a scenario or request that does not exist: an engine bug, but
    /// not one worth crashing a running test for.
    invalid_records: AtomicU64,
    /// The evidence ledger (429s, 5xx, timeouts, transport errors), bounded.
    ledger: Mutex<crate::ledger::Ledger>,
    /// The name this process's ledger entries carry (a fleet's worker), if any.
    worker: Option<String>,
}

impl Recorder {
    pub fn new(layout: Layout) -> Self {
        let scenarios = layout
            .scenarios
            .iter()
            .map(|s| ScenarioCell {
                stats: Mutex::new(ScenarioStats::default()),
                requests: s
                    .requests
                    .iter()
                    .map(|_| Mutex::new(RequestStats::default()))
                    .collect(),
            })
            .collect();
        Self {
            layout,
            scenarios,
            token_fetches: Mutex::new(BTreeMap::new()),
            server_limits: Mutex::new(None),
            invalid_records: AtomicU64::new(0),
            ledger: Mutex::new(crate::ledger::Ledger::default()),
            worker: None,
        }
    }

    /// A recorder whose ledger entries name this worker (cut to the ledger's text bound).
    pub fn with_worker(mut self, worker: &str) -> Self {
        self.worker = crate::ledger::ledger_text(worker.as_bytes());
        self
    }

    /// One attempt's evidence (a 429, a 5xx, a timeout, a transport error): counted, and kept
    /// while the ledger has room. The entry's worker is this recorder's.
    pub fn record_ledger(&self, mut entry: crate::ledger::LedgerEntry) {
        entry.worker.clone_from(&self.worker);
        self.ledger.lock().push(entry);
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn request(&self, scenario: usize, request: usize) -> Option<&Mutex<RequestStats>> {
        let cell = self
            .scenarios
            .get(scenario)
            .and_then(|s| s.requests.get(request));
        if cell.is_none() {
            self.invalid_records.fetch_add(1, Ordering::Relaxed);
        }
        cell
    }

    fn scenario(&self, scenario: usize) -> Option<&Mutex<ScenarioStats>> {
        let cell = self.scenarios.get(scenario).map(|s| &s.stats);
        if cell.is_none() {
            self.invalid_records.fetch_add(1, Ordering::Relaxed);
        }
        cell
    }

    pub fn record_attempt(&self, scenario: usize, request: usize, a: &Attempt) {
        let Some(cell) = self.request(scenario, request) else {
            return;
        };
        let service_us = micros(a.service_time);
        let throttled = a.status == Some(429);
        let mut s = cell.lock();
        s.attempts += 1;
        if let Some(status) = a.status {
            *s.status.entry(status).or_default() += 1;
        }
        if let Some(kind) = a.error {
            // get_mut first: the key allocation happens once per kind, not per error.
            match s.errors.get_mut(kind.as_str()) {
                Some(n) => *n += 1,
                None => {
                    s.errors.insert(kind.as_str().to_string(), 1);
                }
            }
        }
        if throttled {
            s.throttled += 1;
            let mut bits = a.limits;
            while bits != 0 {
                let index = bits.trailing_zeros();
                *s.throttled_by_limit.entry(index).or_default() += 1;
                bits &= bits - 1;
            }
            if let Some(name) = &a.server_limit {
                // bounded: a hostile server could name a new limit on every response
                if s.throttled_by_server_limit.len() < MAX_SERVER_LIMIT_NAMES
                    || s.throttled_by_server_limit.contains_key(name)
                {
                    *s.throttled_by_server_limit.entry(name.clone()).or_default() += 1;
                } else {
                    *s.throttled_by_server_limit
                        .entry(OTHER_SERVER_LIMIT.to_string())
                        .or_default() += 1;
                }
            }
        }
        s.bytes_sent = s.bytes_sent.saturating_add(a.bytes_sent);
        s.bytes_received = s.bytes_received.saturating_add(a.bytes_received);
        if let Some(ra) = a.retry_after {
            s.retry_after_ms.record_millis(ra);
        }
        if a.retry_after_malformed {
            s.retry_after_malformed += 1;
        }
        s.service_time.record(service_us);
        s.service_time_us_sum = s.service_time_us_sum.saturating_add(service_us);
    }

    pub fn record_request(&self, scenario: usize, request: usize, r: &RequestOutcome) {
        let Some(cell) = self.request(scenario, request) else {
            return;
        };
        let (duration, limiter_wait, paused, backoff) = (
            micros(r.duration),
            micros(r.limiter_wait),
            micros(r.paused),
            micros(r.backoff),
        );
        let mut s = cell.lock();
        s.requests += 1;
        if r.failed {
            s.failed += 1;
        }
        s.retries += u64::from(r.attempts.saturating_sub(1));
        s.checks_passed += u64::from(r.checks_passed);
        s.checks_failed += u64::from(r.checks_failed);
        let o = &mut s.retry_outcomes;
        match r.retry_outcome {
            RetryOutcome::NotRetried => o.not_retried += 1,
            RetryOutcome::SucceededAfterRetry => o.succeeded_after_retry += 1,
            RetryOutcome::GaveUp => o.gave_up += 1,
            RetryOutcome::NotRetryable => o.not_retryable += 1,
        }
        s.duration.record(duration);
        s.limiter_wait.record(limiter_wait);
        s.paused.record(paused);
        s.backoff.record(backoff);
        if let Some(lag) = r.send_lag {
            s.send_lag.record(micros(lag));
        }
        s.duration_us_sum = s.duration_us_sum.saturating_add(duration);
        s.limiter_wait_us_sum = s.limiter_wait_us_sum.saturating_add(limiter_wait);
        s.paused_us_sum = s.paused_us_sum.saturating_add(paused);
        s.backoff_us_sum = s.backoff_us_sum.saturating_add(backoff);
    }

    pub fn record_iteration(&self, scenario: usize, it: &IterationOutcome) {
        let Some(cell) = self.scenario(scenario) else {
            return;
        };
        let duration = micros(it.duration);
        let mut s = cell.lock();
        if it.interrupted {
            s.interrupted += 1;
            return;
        }
        s.iterations += 1;
        if it.failed {
            s.iterations_failed += 1;
        }
        s.iteration_duration.record(duration);
    }

    /// Arrivals dropped because maxInFlight was full.
    pub fn record_dropped(&self, scenario: usize, n: u64) {
        if let Some(cell) = self.scenario(scenario) {
            let mut s = cell.lock();
            s.dropped_iterations = s.dropped_iterations.saturating_add(n);
        }
    }

    /// One token fetched from the token endpoint, after waiting `wait` for it.
    pub fn record_token_fetch(&self, credential: &str, wait: Duration) {
        let wait = micros(wait);
        let mut fetches = self.token_fetches.lock();
        let entry = match fetches.get_mut(credential) {
            Some(e) => e,
            None => fetches.entry(credential.to_string()).or_default(),
        };
        entry.count += 1;
        entry.wait_us_sum = entry.wait_us_sum.saturating_add(wait);
    }

    /// The rate-limit headers the server sent most recently; only the last one is kept.
    pub fn record_server_limits(&self, mut headers: ServerLimitHeaders) {
        // JSON has no NaN: a non-finite value would not survive a round trip.
        headers.reset_secs = headers.reset_secs.filter(|r| r.is_finite());
        *self.server_limits.lock() = Some(headers);
    }

    /// Records that named a scenario or request outside the layout (and were ignored).
    pub fn invalid_records(&self) -> u64 {
        self.invalid_records.load(Ordering::Relaxed)
    }

    /// Everything recorded since start. Locks one entry at a time, so it is not an atomic
    /// cut across entries, which cumulative counters do not need.
    pub fn snapshot(&self) -> Snapshot {
        let scenarios = self
            .layout
            .scenarios
            .iter()
            .zip(&self.scenarios)
            .map(|(layout, cell)| ScenarioSnapshot {
                name: layout.name.clone(),
                stats: cell.stats.lock().clone(),
                requests: layout
                    .requests
                    .iter()
                    .zip(&cell.requests)
                    .map(|(name, r)| RequestSnapshot {
                        name: name.clone(),
                        stats: r.lock().clone(),
                    })
                    .collect(),
            })
            .collect();
        Snapshot {
            format: crate::snapshot::SNAPSHOT_FORMAT,
            scenarios,
            token_fetches: self.token_fetches.lock().clone(),
            server_limits: self.server_limits.lock().clone(),
            invalid_records: self.invalid_records(),
            ledger: self.ledger.lock().clone().sorted(),
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            scenarios: vec![ScenarioLayout {
                name: "s".into(),
                requests: vec!["a".into(), "b".into()],
            }],
        }
    }

    #[test]
    fn records_attempt_details() {
        let rec = Recorder::new(layout());
        rec.record_attempt(
            0,
            1,
            &Attempt {
                service_time: Duration::from_millis(20),
                status: Some(429),
                bytes_sent: 10,
                bytes_received: 20,
                retry_after: Some(Duration::from_secs(2)),
                limits: 0b1010,
                server_limit: Some("x".into()),
                ..Default::default()
            },
        );
        rec.record_attempt(
            0,
            1,
            &Attempt {
                error: Some(ErrorKind::Timeout),
                retry_after_malformed: true,
                ..Default::default()
            },
        );
        let snap = rec.snapshot();
        let s = &snap.scenarios[0].requests[1].stats;
        assert_eq!(s.attempts, 2);
        assert_eq!(s.throttled, 1);
        assert_eq!(s.status.get(&429), Some(&1));
        assert_eq!(s.errors.get("timeout"), Some(&1));
        assert_eq!(s.throttled_by_limit, BTreeMap::from([(1, 1), (3, 1)]));
        assert_eq!(s.retry_after_ms.max(), Some(2000));
        assert_eq!(s.retry_after_malformed, 1);
        assert_eq!(s.service_time_us_sum, 20_000);
        assert_eq!((s.bytes_sent, s.bytes_received), (10, 20));
        assert_eq!(snap.scenarios[0].requests[0].stats.attempts, 0);
    }

    #[test]
    fn send_lag_is_recorded_for_sent_requests_only() {
        let rec = Recorder::new(layout());
        let sent = RequestOutcome {
            send_lag: Some(Duration::from_micros(1500)),
            ..Default::default()
        };
        rec.record_request(0, 0, &sent);
        rec.record_request(0, 0, &RequestOutcome::default());
        let snap = rec.snapshot();
        let s = &snap.scenarios[0].requests[0].stats;
        assert_eq!((s.requests, s.send_lag.count()), (2, 1));
        assert_eq!(s.send_lag.max(), Some(1500));
        let summary = crate::summarize("p", &snap, Duration::from_secs(1), &[], &[]);
        assert_eq!(summary.totals.send_lag_ms.count, 1);
        assert_eq!(summary.totals.send_lag_ms.max, Some(1.5));
        assert!(crate::render_json(&summary).contains("\"send_lag_ms\""));
    }

    #[test]
    fn out_of_range_indices_are_counted_not_fatal() {
        let rec = Recorder::new(layout());
        rec.record_attempt(0, 2, &Attempt::default());
        rec.record_attempt(5, 0, &Attempt::default());
        rec.record_request(1, 0, &RequestOutcome::default());
        rec.record_iteration(9, &IterationOutcome::default());
        rec.record_dropped(usize::MAX, 3);
        assert_eq!(rec.invalid_records(), 5);
        assert_eq!(rec.snapshot().invalid_records, 5);
        assert_eq!(rec.snapshot().total().attempts, 0);
    }

    #[test]
    fn interrupted_iterations_are_kept_apart() {
        let rec = Recorder::new(layout());
        let it = |failed, interrupted| IterationOutcome {
            duration: Duration::from_secs(1),
            failed,
            interrupted,
        };
        rec.record_iteration(0, &it(false, false));
        rec.record_iteration(0, &it(true, false));
        rec.record_iteration(0, &it(false, true));
        rec.record_dropped(0, 4);
        let s = &rec.snapshot().scenarios[0].stats;
        assert_eq!(
            (
                s.iterations,
                s.iterations_failed,
                s.interrupted,
                s.dropped_iterations
            ),
            (2, 1, 1, 4)
        );
        assert_eq!(s.iteration_duration.count(), 2);
    }

    #[test]
    fn token_fetches_and_last_server_limits() {
        let rec = Recorder::new(layout());
        rec.record_token_fetch("main", Duration::from_millis(5));
        rec.record_token_fetch("main", Duration::from_millis(7));
        let h = |remaining| ServerLimitHeaders {
            at_unix_ms: 1,
            source: "x-ratelimit".into(),
            limit: Some(100),
            remaining: Some(remaining),
            count: None,
            reset_secs: Some(f64::NAN),
            policy: None,
        };
        rec.record_server_limits(h(5));
        rec.record_server_limits(h(4));
        let snap = rec.snapshot();
        assert_eq!(snap.token_fetches["main"].count, 2);
        assert_eq!(snap.token_fetches["main"].wait_us_sum, 12_000);
        let last = snap.server_limits.unwrap();
        assert_eq!(last.remaining, Some(4));
        assert_eq!(last.reset_secs, None);
    }
}
