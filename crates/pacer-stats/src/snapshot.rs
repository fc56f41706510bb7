//! Snapshots: the cumulative state of a recorder, as plain data.
//!
//! A snapshot is what workers ship to the controller (JSON, histograms inside as base64 HDR),
//! so it merges exactly (counters add, histograms add bucket by bucket), subtracts into
//! per-interval deltas, and decodes untrusted text into an error rather than a panic.

use std::collections::BTreeMap;
use std::fmt;

use pacer_plan::threshold::TagFilter;
use serde::{Deserialize, Serialize};

use crate::StatsError;
use crate::hist::{Hist, with_decode_budget};
use crate::record::{Layout, ScenarioLayout};

/// Version of the snapshot wire format; `from_json` rejects any other.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Histogram counts-array entries one decoded snapshot may allocate (8 bytes each) once its
/// histograms are read (decoded, they stay packed and hold less: see [`crate::hist`]): room
/// for hundreds of requests whose histograms span the full hour, and a bound on what hostile
/// input can make the controller allocate.
const DECODE_BUDGET_ENTRIES: u64 = 32 << 20;

/// The last rate-limit headers a server sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerLimitHeaders {
    pub at_unix_ms: u64,
    /// Which header family, e.g. `inin-ratelimit`, `x-ratelimit`, `ratelimit`.
    pub source: String,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub count: Option<u64>,
    pub reset_secs: Option<f64>,
    pub policy: Option<String>,
}

impl ServerLimitHeaders {
    /// Keep in `kept` the newer of `kept` and `other` (by `at_unix_ms`; `kept` of equals):
    /// the rule every merge of snapshots follows.
    pub fn keep_newest(kept: &mut Option<Self>, other: &Option<Self>) {
        let newer = match (&*kept, other) {
            (Some(a), Some(b)) => b.at_unix_ms > a.at_unix_ms,
            (None, Some(_)) => true,
            _ => false,
        };
        if newer {
            kept.clone_from(other);
        }
    }
}

/// How logical requests ended, as far as retrying goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOutcomeCounts {
    pub not_retried: u64,
    pub succeeded_after_retry: u64,
    pub gave_up: u64,
    pub not_retryable: u64,
}

/// Tokens fetched for one credential.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFetchStats {
    pub count: u64,
    /// Total time callers waited for these fetches, microseconds.
    pub wait_us_sum: u64,
}

/// Everything recorded for one request of one scenario (or a merge of several).
///
/// Histograms are in microseconds except `retry_after_ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestStats {
    /// HTTP exchanges, retries included (k6 `http_reqs`).
    pub attempts: u64,
    /// Logical requests completed (after all their attempts).
    pub requests: u64,
    /// Logical requests whose final result failed.
    pub failed: u64,
    /// Attempts answered with 429.
    pub throttled: u64,
    /// Attempts by response status.
    pub status: BTreeMap<u16, u64>,
    /// Attempts by transport error kind (`ErrorKind::as_str`).
    pub errors: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Attempts beyond the first, summed over completed logical requests.
    pub retries: u64,
    pub retry_outcomes: RetryOutcomeCounts,
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// 429 attempts by plan limit index (an attempt counts once for each limit it matched).
    pub throttled_by_limit: BTreeMap<u32, u64>,
    /// 429 attempts by the limit the server named in the response (body `limit` field, a
    /// `[limit: NAME]` message, or the `RateLimit-Policy` name).
    #[serde(default)]
    pub throttled_by_server_limit: BTreeMap<String, u64>,
    /// Retry-After values the server sent, milliseconds.
    pub retry_after_ms: Hist,
    /// Retry-After headers present but unusable.
    pub retry_after_malformed: u64,
    /// Intended start to end of the final response, per logical request (`http_req_duration`).
    pub duration: Hist,
    /// Send to end of response, per attempt (`http_req_service_time`).
    pub service_time: Hist,
    /// Waiting on pacer's own limiter, per logical request (`http_req_limiter_wait`).
    pub limiter_wait: Hist,
    /// Waiting on a scope paused by Retry-After, per logical request.
    pub paused: Hist,
    /// Sleeping between retries, per logical request.
    pub backoff: Hist,
    /// Intended start to the first send, pacer's limiter wait excluded, per logical request
    /// that was sent (`send_lag_ms` in the summary). Absent in snapshots of older versions.
    #[serde(default)]
    pub send_lag: Hist,
    /// Sums in microseconds, exact (the histograms round), for "where the time went".
    pub duration_us_sum: u64,
    pub service_time_us_sum: u64,
    pub limiter_wait_us_sum: u64,
    pub paused_us_sum: u64,
    pub backoff_us_sum: u64,
}

/// Per-scenario counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioStats {
    /// Completed iterations (interrupted ones are counted apart).
    pub iterations: u64,
    pub iterations_failed: u64,
    /// Iterations cut short by the end of the test.
    pub interrupted: u64,
    /// Arrivals not started because maxInFlight was full.
    pub dropped_iterations: u64,
    /// Durations of completed iterations, microseconds.
    pub iteration_duration: Hist,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSnapshot {
    pub name: String,
    pub stats: RequestStats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSnapshot {
    pub name: String,
    pub stats: ScenarioStats,
    /// In layout order.
    pub requests: Vec<RequestSnapshot>,
}

/// Cumulative results since start, per scenario and per request, in layout order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    pub scenarios: Vec<ScenarioSnapshot>,
    /// Token fetches by credential name.
    pub token_fetches: BTreeMap<String, TokenFetchStats>,
    /// The latest rate-limit headers seen (by `at_unix_ms` when merging).
    pub server_limits: Option<ServerLimitHeaders>,
    /// Records the recorder ignored because their indices were outside the layout.
    pub invalid_records: u64,
    /// The evidence ledger (bounded; absent in snapshots of older versions).
    #[serde(default)]
    pub ledger: crate::ledger::Ledger,
}

/// Whether combining adds (merge, or summing for display) or subtracts (delta).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Exact merge of snapshots that must stay serializable.
    Merge,
    /// Merge for totals that are only displayed.
    Sum,
    /// `delta`: counts must not go negative.
    Subtract,
    /// Check that a `Merge` would succeed (no histogram over the wire format's count), and
    /// change nothing: [`Snapshot::merge_in_place`]'s first pass.
    Fits,
    /// Copy the other side, its histograms packed ([`Snapshot::packed`]): through `combine`
    /// so that the one list of fields there is also the list of what is copied.
    Pack,
}

/// Where a combined value lives, for error messages; only formatted on error.
#[derive(Clone, Copy)]
struct At<'a> {
    scenario: &'a str,
    request: Option<&'a str>,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.request {
            Some(r) => write!(f, "{}/{}", self.scenario, r),
            None => f.write_str(self.scenario),
        }
    }
}

impl Op {
    fn num(self, at: At<'_>, field: &str, a: &mut u64, b: u64) -> Result<(), StatsError> {
        *a = match self {
            Op::Fits => *a,
            Op::Pack => b,
            Op::Merge | Op::Sum => a.saturating_add(b),
            Op::Subtract => a.checked_sub(b).ok_or_else(|| {
                StatsError::NotAPrefix(format!("{at} {field}: {a} - {b} is negative"))
            })?,
        };
        Ok(())
    }

    fn map<K: Ord + Clone + fmt::Display>(
        self,
        at: At<'_>,
        field: &str,
        a: &mut BTreeMap<K, u64>,
        b: &BTreeMap<K, u64>,
    ) -> Result<(), StatsError> {
        match self {
            Op::Fits => return Ok(()),
            Op::Pack => {
                a.clone_from(b);
                return Ok(());
            }
            Op::Merge | Op::Sum | Op::Subtract => {}
        }
        for (k, &bv) in b {
            match a.get_mut(k) {
                Some(av) => self.num(at, &format!("{field}[{k}]"), av, bv)?,
                None if self == Op::Subtract && bv > 0 => {
                    return Err(StatsError::NotAPrefix(format!(
                        "{at} {field}[{k}]: 0 - {bv} is negative"
                    )));
                }
                None if self == Op::Subtract => {}
                None => {
                    a.insert(k.clone(), bv);
                }
            }
        }
        if self == Op::Subtract {
            // Canonical form: a key that went back to zero is as if it was never seen.
            a.retain(|_, v| *v != 0);
        }
        Ok(())
    }

    fn hist(self, at: At<'_>, field: &str, a: &mut Hist, b: &Hist) -> Result<(), StatsError> {
        let histogram_error = |reason| StatsError::Histogram {
            field: format!("{at} {field}"),
            reason,
        };
        match self {
            Op::Fits => a.fits(b).map_err(histogram_error),
            Op::Pack => {
                *a = b.packed();
                Ok(())
            }
            Op::Merge => a.add(b).map_err(histogram_error),
            Op::Sum => a.add_unchecked(b).map_err(histogram_error),
            Op::Subtract => a
                .subtract(b)
                .map_err(|e| StatsError::NotAPrefix(format!("{at} {field}: {e}"))),
        }
    }
}

impl RequestStats {
    fn combine(&mut self, o: &RequestStats, op: Op, at: At<'_>) -> Result<(), StatsError> {
        op.num(at, "attempts", &mut self.attempts, o.attempts)?;
        op.num(at, "requests", &mut self.requests, o.requests)?;
        op.num(at, "failed", &mut self.failed, o.failed)?;
        op.num(at, "throttled", &mut self.throttled, o.throttled)?;
        op.map(at, "status", &mut self.status, &o.status)?;
        op.map(at, "errors", &mut self.errors, &o.errors)?;
        op.num(at, "bytes_sent", &mut self.bytes_sent, o.bytes_sent)?;
        op.num(
            at,
            "bytes_received",
            &mut self.bytes_received,
            o.bytes_received,
        )?;
        op.num(at, "retries", &mut self.retries, o.retries)?;
        let (r, or) = (&mut self.retry_outcomes, &o.retry_outcomes);
        op.num(at, "not_retried", &mut r.not_retried, or.not_retried)?;
        op.num(
            at,
            "succeeded_after_retry",
            &mut r.succeeded_after_retry,
            or.succeeded_after_retry,
        )?;
        op.num(at, "gave_up", &mut r.gave_up, or.gave_up)?;
        op.num(at, "not_retryable", &mut r.not_retryable, or.not_retryable)?;
        op.num(
            at,
            "checks_passed",
            &mut self.checks_passed,
            o.checks_passed,
        )?;
        op.num(
            at,
            "checks_failed",
            &mut self.checks_failed,
            o.checks_failed,
        )?;
        op.map(
            at,
            "throttled_by_limit",
            &mut self.throttled_by_limit,
            &o.throttled_by_limit,
        )?;
        op.map(
            at,
            "throttled_by_server_limit",
            &mut self.throttled_by_server_limit,
            &o.throttled_by_server_limit,
        )?;
        op.hist(
            at,
            "retry_after_ms",
            &mut self.retry_after_ms,
            &o.retry_after_ms,
        )?;
        op.num(
            at,
            "retry_after_malformed",
            &mut self.retry_after_malformed,
            o.retry_after_malformed,
        )?;
        op.hist(at, "duration", &mut self.duration, &o.duration)?;
        op.hist(at, "service_time", &mut self.service_time, &o.service_time)?;
        op.hist(at, "limiter_wait", &mut self.limiter_wait, &o.limiter_wait)?;
        op.hist(at, "paused", &mut self.paused, &o.paused)?;
        op.hist(at, "backoff", &mut self.backoff, &o.backoff)?;
        op.hist(at, "send_lag", &mut self.send_lag, &o.send_lag)?;
        op.num(
            at,
            "duration_us_sum",
            &mut self.duration_us_sum,
            o.duration_us_sum,
        )?;
        op.num(
            at,
            "service_time_us_sum",
            &mut self.service_time_us_sum,
            o.service_time_us_sum,
        )?;
        op.num(
            at,
            "limiter_wait_us_sum",
            &mut self.limiter_wait_us_sum,
            o.limiter_wait_us_sum,
        )?;
        op.num(
            at,
            "paused_us_sum",
            &mut self.paused_us_sum,
            o.paused_us_sum,
        )?;
        op.num(
            at,
            "backoff_us_sum",
            &mut self.backoff_us_sum,
            o.backoff_us_sum,
        )?;
        Ok(())
    }

    /// Add `other` into `self` for display (saturating; never fails in practice).
    pub fn absorb(&mut self, other: &RequestStats) {
        let at = At {
            scenario: "*",
            request: None,
        };
        // Sum only fails if a histogram resize overflows usize, which the value clamp rules
        // out; a total that is off is better than no total.
        let _ = self.combine(other, Op::Sum, at);
    }
}

impl ScenarioStats {
    fn combine(&mut self, o: &ScenarioStats, op: Op, at: At<'_>) -> Result<(), StatsError> {
        op.num(at, "iterations", &mut self.iterations, o.iterations)?;
        op.num(
            at,
            "iterations_failed",
            &mut self.iterations_failed,
            o.iterations_failed,
        )?;
        op.num(at, "interrupted", &mut self.interrupted, o.interrupted)?;
        op.num(
            at,
            "dropped_iterations",
            &mut self.dropped_iterations,
            o.dropped_iterations,
        )?;
        op.hist(
            at,
            "iteration_duration",
            &mut self.iteration_duration,
            &o.iteration_duration,
        )
    }

    /// Add `other` into `self` for display.
    pub fn absorb(&mut self, other: &ScenarioStats) {
        let at = At {
            scenario: "*",
            request: None,
        };
        // As in `RequestStats::absorb`.
        let _ = self.combine(other, Op::Sum, at);
    }
}

/// Does an entry with these names pass the filter?
pub(crate) fn filter_matches(filter: &TagFilter, scenario: &str, request: Option<&str>) -> bool {
    filter.scenario.as_deref().is_none_or(|s| s == scenario)
        && match (filter.request.as_deref(), request) {
            (None, _) => true,
            (Some(want), Some(r)) => want == r,
            // Per-scenario metrics carry no request tag; the plan parser rejects the filter.
            (Some(_), None) => true,
        }
}

impl Snapshot {
    /// A snapshot with nothing recorded.
    pub fn empty(layout: &Layout) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            scenarios: layout
                .scenarios
                .iter()
                .map(|s| ScenarioSnapshot {
                    name: s.name.clone(),
                    stats: ScenarioStats::default(),
                    requests: s
                        .requests
                        .iter()
                        .map(|r| RequestSnapshot {
                            name: r.clone(),
                            stats: RequestStats::default(),
                        })
                        .collect(),
                })
                .collect(),
            token_fetches: BTreeMap::new(),
            server_limits: None,
            invalid_records: 0,
            ledger: crate::ledger::Ledger::default(),
        }
    }

    /// The scenario and request names this snapshot is laid out by.
    pub fn layout(&self) -> Layout {
        Layout {
            scenarios: self
                .scenarios
                .iter()
                .map(|s| ScenarioLayout {
                    name: s.name.clone(),
                    requests: s.requests.iter().map(|r| r.name.clone()).collect(),
                })
                .collect(),
        }
    }

    fn check_layout(&self, other: &Snapshot) -> Result<(), StatsError> {
        let mismatch = |m: String| Err(StatsError::LayoutMismatch(m));
        if self.scenarios.len() != other.scenarios.len() {
            return mismatch(format!(
                "{} scenarios here, {} in the other snapshot",
                self.scenarios.len(),
                other.scenarios.len()
            ));
        }
        for (i, (a, b)) in self.scenarios.iter().zip(&other.scenarios).enumerate() {
            if a.name != b.name {
                return mismatch(format!(
                    "scenario {i} is {:?} here but {:?} in the other snapshot",
                    a.name, b.name
                ));
            }
            let names = |s: &ScenarioSnapshot| s.requests.iter().map(|r| r.name.clone()).collect();
            let (ra, rb): (Vec<String>, Vec<String>) = (names(a), names(b));
            if ra != rb {
                return mismatch(format!(
                    "scenario {:?} has requests {ra:?} here but {rb:?} in the other snapshot",
                    a.name
                ));
            }
        }
        Ok(())
    }

    fn combine(&mut self, other: &Snapshot, op: Op) -> Result<(), StatsError> {
        for (a, b) in self.scenarios.iter_mut().zip(&other.scenarios) {
            let at = At {
                scenario: &a.name,
                request: None,
            };
            a.stats.combine(&b.stats, op, at)?;
            for (ra, rb) in a.requests.iter_mut().zip(&b.requests) {
                let at = At {
                    scenario: &a.name,
                    request: Some(&ra.name),
                };
                ra.stats.combine(&rb.stats, op, at)?;
            }
        }
        if matches!(op, Op::Fits | Op::Pack) {
            // Only histograms can refuse a merge; `packed` copies the rest itself.
            return Ok(());
        }
        let at = At {
            scenario: "token_fetches",
            request: None,
        };
        for (name, b) in &other.token_fetches {
            let a = match self.token_fetches.get_mut(name) {
                Some(a) => a,
                None if op == Op::Subtract && b.count == 0 && b.wait_us_sum == 0 => continue,
                None if op == Op::Subtract => {
                    return Err(StatsError::NotAPrefix(format!(
                        "token fetches for {name:?} are missing from the later snapshot"
                    )));
                }
                None => self.token_fetches.entry(name.clone()).or_default(),
            };
            op.num(at, &format!("{name}.count"), &mut a.count, b.count)?;
            op.num(
                at,
                &format!("{name}.wait"),
                &mut a.wait_us_sum,
                b.wait_us_sum,
            )?;
        }
        if op == Op::Subtract {
            self.token_fetches
                .retain(|_, t| t.count != 0 || t.wait_us_sum != 0);
        }
        let at = At {
            scenario: "snapshot",
            request: None,
        };
        op.num(
            at,
            "invalid_records",
            &mut self.invalid_records,
            other.invalid_records,
        )?;
        // The ledger's delta is its caller's ([`Snapshot::delta`], [`Snapshot::delta_continuing`]).
        if op != Op::Subtract {
            self.ledger.merge(&other.ledger);
        }
        if op != Op::Subtract {
            // A delta keeps the later snapshot's headers: they are the latest either way.
            ServerLimitHeaders::keep_newest(&mut self.server_limits, &other.server_limits);
        }
        Ok(())
    }

    /// The same snapshot with every histogram packed ([`Hist::packed`]): the compact form a
    /// decoded snapshot has, a fraction of a dense one's memory (a dense latency histogram is
    /// 60-100 KB, a packed one about 2 bytes per recorded bucket), for a snapshot kept a
    /// while: a worker keeps the cumulative snapshots of its reports that the controller has
    /// not yet counted, as the bases of its next deltas. Equal to `self` (samples compare,
    /// not forms); deltas, merges and `to_json` give what the dense one gives. The dense
    /// histograms are read, never copied dense.
    pub fn packed(&self) -> Snapshot {
        let mut out = Snapshot::empty(&self.layout());
        if out.combine(self, Op::Pack).is_err() {
            // Op::Pack cannot fail (it copies); should it ever, a dense copy is still exact.
            return self.clone();
        }
        // Named one by one, so that a new field is not forgotten here.
        let Snapshot {
            format,
            scenarios: _,
            token_fetches,
            server_limits,
            invalid_records,
            ledger,
        } = self;
        out.format = *format;
        out.token_fetches.clone_from(token_fetches);
        out.server_limits.clone_from(server_limits);
        out.invalid_records = *invalid_records;
        out.ledger.clone_from(ledger);
        out
    }

    /// Add `other` (e.g. another worker's snapshot) into this one, exactly. Layouts must have
    /// the same scenario and request names in the same order. On error `self` is unchanged.
    pub fn merge(&mut self, other: &Snapshot) -> Result<(), StatsError> {
        self.check_layout(other)?;
        // Combine a copy so a failure half way leaves `self` as it was.
        let mut merged = self.clone();
        merged.combine(other, Op::Merge)?;
        *self = merged;
        Ok(())
    }

    /// What was recorded after `earlier` (an earlier snapshot of the same recorder or merge).
    /// Fails if any count would go negative, i.e. `earlier` is not a prefix of `self`.
    pub fn delta(&self, earlier: &Snapshot) -> Result<Snapshot, StatsError> {
        self.check_layout(earlier)?;
        let mut d = self.clone();
        d.combine(earlier, Op::Subtract)?;
        d.ledger = self.ledger.delta(&earlier.ledger);
        Ok(d)
    }

    /// [`Snapshot::delta`] for a report that must continue `earlier` as one recorder's
    /// snapshots do, so that adding the result into a merge ([`Snapshot::merge_in_place`]) is
    /// exactly the merge with this snapshot in `earlier`'s place (what a controller's running
    /// fleet total relies on): besides every count and histogram, the ledger must continue
    /// too ([`crate::ledger::Ledger::delta_continuing`]). The error names the field.
    pub fn delta_continuing(&self, earlier: &Snapshot) -> Result<Snapshot, StatsError> {
        self.check_layout(earlier)?;
        let ledger = self
            .ledger
            .delta_continuing(&earlier.ledger)
            .map_err(|why| StatsError::NotAPrefix(format!("ledger.{why}")))?;
        let mut d = self.clone();
        d.ledger = crate::ledger::Ledger::default();
        d.combine(earlier, Op::Subtract)?;
        d.ledger = ledger;
        Ok(d)
    }

    /// [`Snapshot::merge`] without the copy: the histograms are checked first (the only part
    /// that can refuse), then everything is added in place. On error `self` is unchanged,
    /// except if a histogram's resize then overflows memory (`hdrhistogram`'s only other
    /// failure, which the value clamp of [`crate::hist`] rules out): a caller that must stay
    /// exact even then rebuilds what it merged.
    pub fn merge_in_place(&mut self, other: &Snapshot) -> Result<(), StatsError> {
        self.check_layout(other)?;
        self.combine(other, Op::Fits)?;
        self.combine(other, Op::Merge)
    }

    /// Drop the entries whose count is zero (a status, an error kind, a limit, a credential,
    /// a ledger cause): as if never seen, the form [`Snapshot::delta`] leaves. A decoder of
    /// untrusted snapshots applies it so that a merge of deltas and a merge of whole
    /// snapshots agree key for key.
    pub fn canonicalize(&mut self) {
        for s in &mut self.scenarios {
            for r in &mut s.requests {
                let st = &mut r.stats;
                st.status.retain(|_, v| *v != 0);
                st.errors.retain(|_, v| *v != 0);
                st.throttled_by_limit.retain(|_, v| *v != 0);
                st.throttled_by_server_limit.retain(|_, v| *v != 0);
            }
        }
        self.token_fetches
            .retain(|_, t| t.count != 0 || t.wait_us_sum != 0);
        self.ledger.counts.retain(|_, n| *n != 0);
    }

    /// JSON for the wire. Cannot fail for snapshots built by this crate; should serialization
    /// ever fail, the result is a document `from_json` rejects rather than a panic.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            serde_json::json!({ "format": 0, "error": e.to_string() }).to_string()
        })
    }

    /// Parse and validate a snapshot from untrusted JSON.
    pub fn from_json(text: &str) -> Result<Snapshot, StatsError> {
        Self::from_json_bytes(text.as_bytes())
    }

    /// [`Snapshot::from_json`] on bytes (as they come off the wire). Never panics; memory is
    /// bounded by the input's length and [`DECODE_BUDGET_ENTRIES`] (each histogram is also
    /// capped on its own, see [`crate::hist`]); an error names the field that was wrong, e.g.
    /// `scenarios[0].requests[1].stats.duration: bad base64 ...`.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Snapshot, StatsError> {
        let snap: Snapshot = with_decode_budget(DECODE_BUDGET_ENTRIES, || {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let snap = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                StatsError::InvalidSnapshot(if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                })
            })?;
            // Trailing bytes after the document are refused, as `serde_json::from_slice` does.
            de.end()
                .map_err(|e| StatsError::InvalidSnapshot(e.to_string()))?;
            Ok::<Snapshot, StatsError>(snap)
        })?;
        snap.ledger
            .check()
            .map_err(|why| StatsError::InvalidSnapshot(format!("ledger.{why}")))?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(StatsError::InvalidSnapshot(format!(
                "format {} is not the supported format {SNAPSHOT_FORMAT}",
                snap.format
            )));
        }
        Ok(snap)
    }

    /// All requests of all scenarios merged.
    pub fn total(&self) -> RequestStats {
        self.select(&TagFilter::default())
    }

    /// The requests whose scenario/request names pass `filter`, merged.
    pub fn select(&self, filter: &TagFilter) -> RequestStats {
        self.select_requests(filter).unwrap_or_default()
    }

    /// Like [`Snapshot::select`], but `None` when no request matched at all.
    pub fn select_requests(&self, filter: &TagFilter) -> Option<RequestStats> {
        let mut out: Option<RequestStats> = None;
        for s in &self.scenarios {
            for r in &s.requests {
                if filter_matches(filter, &s.name, Some(&r.name)) {
                    out.get_or_insert_with(RequestStats::default)
                        .absorb(&r.stats);
                }
            }
        }
        out
    }

    /// The scenarios whose names pass `filter` (its request tag is ignored), merged; `None`
    /// when no scenario matched.
    pub fn select_scenarios(&self, filter: &TagFilter) -> Option<ScenarioStats> {
        let mut out: Option<ScenarioStats> = None;
        for s in &self.scenarios {
            if filter_matches(filter, &s.name, None) {
                out.get_or_insert_with(ScenarioStats::default)
                    .absorb(&s.stats);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(names: &[(&str, &[&str])]) -> Snapshot {
        Snapshot::empty(&Layout {
            scenarios: names
                .iter()
                .map(|(s, rs)| ScenarioLayout {
                    name: s.to_string(),
                    requests: rs.iter().map(|r| r.to_string()).collect(),
                })
                .collect(),
        })
    }

    fn hist_of(values: &[u64]) -> Hist {
        let mut h = Hist::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    /// A snapshot with every field set (a struct literal, so a new field must be set here
    /// too): its counters are `n`, its histograms hold `values` (each shifted a little, so
    /// they differ).
    fn filled(values: &[u64], n: u64) -> Snapshot {
        let h = |shift: u64| hist_of(&values.iter().map(|v| v + shift).collect::<Vec<_>>());
        let request = RequestStats {
            attempts: n,
            requests: n,
            failed: n,
            throttled: n,
            status: BTreeMap::from([(200, n), (429, n)]),
            errors: BTreeMap::from([("timeout".to_string(), n)]),
            bytes_sent: n,
            bytes_received: n,
            retries: n,
            retry_outcomes: RetryOutcomeCounts {
                not_retried: n,
                succeeded_after_retry: n,
                gave_up: n,
                not_retryable: n,
            },
            checks_passed: n,
            checks_failed: n,
            throttled_by_limit: BTreeMap::from([(0, n)]),
            throttled_by_server_limit: BTreeMap::from([("api".to_string(), n)]),
            retry_after_ms: h(1),
            retry_after_malformed: n,
            duration: h(2),
            service_time: h(3),
            limiter_wait: h(4),
            paused: h(5),
            backoff: h(6),
            send_lag: h(7),
            duration_us_sum: n,
            service_time_us_sum: n,
            limiter_wait_us_sum: n,
            paused_us_sum: n,
            backoff_us_sum: n,
        };
        let mut s = snap(&[("s", &["a", "b"]), ("t", &["c"])]);
        for sc in &mut s.scenarios {
            sc.stats = ScenarioStats {
                iterations: n,
                iterations_failed: n,
                interrupted: n,
                dropped_iterations: n,
                iteration_duration: h(8),
            };
            for r in &mut sc.requests {
                r.stats = request.clone();
            }
        }
        s.token_fetches.insert(
            "cred".into(),
            TokenFetchStats {
                count: n,
                wait_us_sum: n,
            },
        );
        s.server_limits = Some(ServerLimitHeaders {
            at_unix_ms: n,
            source: "ratelimit".into(),
            ..Default::default()
        });
        s.invalid_records = n;
        s
    }

    /// Every histogram of a snapshot, in a fixed order (for the tests of forms).
    fn hists(s: &Snapshot) -> Vec<&Hist> {
        let mut out = Vec::new();
        for sc in &s.scenarios {
            out.push(&sc.stats.iteration_duration);
            for r in &sc.requests {
                let st = &r.stats;
                out.extend([
                    &st.retry_after_ms,
                    &st.duration,
                    &st.service_time,
                    &st.limiter_wait,
                    &st.paused,
                    &st.backoff,
                    &st.send_lag,
                ]);
            }
        }
        out
    }

    proptest::proptest! {
        /// A packed snapshot is the same snapshot: every histogram packed, and its deltas,
        /// merges and JSON are the dense one's.
        #[test]
        fn a_packed_snapshot_reads_subtracts_merges_and_encodes_as_the_dense_one(
            a in proptest::collection::vec(0u64..5_000_000, 0..100),
            b in proptest::collection::vec(0u64..5_000_000, 0..100),
            n in 0u64..1000,
            m in 0u64..1000,
        ) {
            let mut both = a.clone();
            both.extend_from_slice(&b);
            let (early, later) = (filled(&a, n), filled(&both, n + m));
            let (pe, pl) = (early.packed(), later.packed());
            proptest::prop_assert_eq!(&pe, &early);
            proptest::prop_assert_eq!(&pl, &later);
            for h in hists(&pl) {
                proptest::prop_assert_eq!(h.is_packed(), !h.is_empty());
            }
            let dense_delta = later.delta_continuing(&early).unwrap();
            proptest::prop_assert_eq!(&pl.delta_continuing(&pe).unwrap(), &dense_delta);
            proptest::prop_assert_eq!(&pl.delta(&pe).unwrap(), &later.delta(&early).unwrap());
            proptest::prop_assert_eq!(&later.delta_continuing(&pe).unwrap(), &dense_delta);
            let mut dense_sum = early.clone();
            dense_sum.merge_in_place(&dense_delta).unwrap();
            proptest::prop_assert_eq!(&dense_sum, &later);
            let mut packed_sum = early.clone();
            packed_sum.merge_in_place(&pl.delta_continuing(&pe).unwrap()).unwrap();
            proptest::prop_assert_eq!(&packed_sum, &later);
            let mut merged = pe.clone();
            merged.merge(&pl).unwrap();
            let mut dense_merged = early.clone();
            dense_merged.merge(&later).unwrap();
            proptest::prop_assert_eq!(&merged, &dense_merged);
            proptest::prop_assert_eq!(
                &Snapshot::from_json(&pl.to_json()).unwrap(),
                &Snapshot::from_json(&later.to_json()).unwrap()
            );
            proptest::prop_assert_eq!(&Snapshot::from_json(&pl.to_json()).unwrap(), &later);
        }
    }

    #[test]
    fn merge_rejects_other_layouts_and_names_the_difference() {
        let mut a = snap(&[("s", &["a", "b"])]);
        let e = a.merge(&snap(&[("s", &["a", "c"])])).unwrap_err();
        assert!(e.to_string().contains("\"c\""), "{e}");
        let e = a.merge(&snap(&[("t", &["a", "b"])])).unwrap_err();
        assert!(e.to_string().contains("\"t\""), "{e}");
        let e = a.merge(&snap(&[])).unwrap_err();
        assert!(matches!(e, StatsError::LayoutMismatch(_)));
    }

    #[test]
    fn merge_keeps_the_newest_server_limits_and_sums_token_fetches() {
        let mut a = snap(&[("s", &["a"])]);
        let mut b = a.clone();
        let h = |at| ServerLimitHeaders {
            at_unix_ms: at,
            source: "ratelimit".into(),
            ..Default::default()
        };
        a.server_limits = Some(h(20));
        b.server_limits = Some(h(10));
        a.token_fetches.insert(
            "x".into(),
            TokenFetchStats {
                count: 1,
                wait_us_sum: 5,
            },
        );
        b.token_fetches.insert(
            "x".into(),
            TokenFetchStats {
                count: 2,
                wait_us_sum: 7,
            },
        );
        b.token_fetches
            .insert("y".into(), TokenFetchStats::default());
        a.merge(&b).unwrap();
        assert_eq!(a.server_limits.as_ref().unwrap().at_unix_ms, 20);
        assert_eq!(a.token_fetches["x"].count, 3);
        assert_eq!(a.token_fetches["x"].wait_us_sum, 12);
        assert!(a.token_fetches.contains_key("y"));
    }

    #[test]
    fn delta_rejects_a_later_snapshot_as_earlier() {
        let a = snap(&[("s", &["a"])]);
        let mut b = a.clone();
        b.scenarios[0].requests[0].stats.attempts = 3;
        b.scenarios[0].requests[0].stats.status.insert(200, 3);
        let e = a.delta(&b).unwrap_err();
        assert!(matches!(e, StatsError::NotAPrefix(_)), "{e}");
        assert!(e.to_string().contains("s/a"), "{e}");

        let mut c = a.clone();
        c.scenarios[0].requests[0].stats.duration.record(5);
        assert!(a.delta(&c).is_err());
    }

    #[test]
    fn merge_refuses_unserializable_counts_and_leaves_self_unchanged() {
        let mut a = snap(&[("s", &["a"])]);
        a.scenarios[0].requests[0].stats.attempts = 1;
        let mut big = a.clone();
        // Build a histogram over the cap by summing (the unchecked path).
        let mut h = Hist::new();
        h.record(1);
        let mut huge = Hist::new();
        for _ in 0..63 {
            let copy = huge.clone();
            huge.add_unchecked(&copy).unwrap();
            huge.add_unchecked(&h).unwrap();
        }
        big.scenarios[0].requests[0].stats.duration = huge;
        let before = a.clone();
        assert!(matches!(a.merge(&big), Err(StatsError::Histogram { .. })));
        assert_eq!(a, before);
    }
}
