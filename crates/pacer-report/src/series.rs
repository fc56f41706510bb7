//! Per-second time series, built from the snapshots a run takes every second.
//!
//! [`SeriesBuilder::push_delta`] gets what was recorded in each second (a delta [`Snapshot`])
//! and keeps one [`SeriesPoint`] for it, plus that delta until the next push (a short final
//! tail is folded into the last row). [`SeriesBuilder::push`] gets the cumulative snapshot
//! instead and keeps it as the base of the next interval's delta. Memory grows by one small
//! record per second and one [`PauseWindow`] per Retry-After pause (capped); no raw samples
//! are kept, and a delta-fed builder keeps no cumulative snapshot.
//!
//! Whoever owns the snapshots feeds the builder: `pacer run` its recorder's cumulative ones,
//! a controller the merged deltas of its workers' reports. The builder does no I/O and never
//! blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::time::Duration;

use pacer_plan::ramp::RampSchedule;
use pacer_plan::{Executor, Plan};
use pacer_stats::{Hist, Layout, Ledger, RequestStats, ServerLimitHeaders, Snapshot};
use serde::{Deserialize, Serialize};

/// A tail shorter than this (seconds) is folded into the last full second rather than kept as
/// a row of its own, whose per-second rate would be noise.
pub(crate) const MIN_TAIL_SECS: f64 = 0.25;
/// Pause windows kept; later pauses only count in `active_pauses`, and the report says so.
pub const MAX_PAUSE_WINDOWS: usize = 10_000;
/// Longest `ratelimit_policy` text kept per row (servers choose its length).
const MAX_POLICY_CHARS: usize = 200;

/// One declared limit as the limiter reports it, cumulative since start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimiterSample {
    pub name: String,
    /// Retry-After pauses of this limit's scope so far.
    pub pauses: u64,
    /// Time those pauses hold (or will hold) the scope, seconds. The limiter counts a pause's
    /// whole length when the 429 arrives, so this is ahead of the clock while a pause runs.
    pub paused_secs: f64,
    /// The rate pacer paces this limit at now (per second).
    pub pacing_rate: f64,
}

/// A period during which a limit's scope was paused by a Retry-After (estimated to the
/// second: the limiter is sampled once a second).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PauseWindow {
    /// The limit's name, or `retry-after` when the series was built without limiter samples.
    pub limit: String,
    /// Seconds since the start of the run.
    pub start_secs: f64,
    pub end_secs: f64,
}

/// One second of the run. Every count is for this interval only; `null` means no data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Row number: the interval `(t-1, t]` seconds since start (the last may be longer or
    /// shorter, see `secs`).
    pub t: u64,
    /// Seconds since start at the end of the interval.
    pub elapsed_secs: f64,
    /// Length of the interval, seconds.
    pub secs: f64,
    /// Wall clock at the end of the interval, Unix milliseconds.
    pub unix_ms: u64,
    /// HTTP exchanges (`http_reqs`), retries included.
    pub attempts: u64,
    /// `attempts / secs`: the achieved rate.
    pub rate: f64,
    /// What the plan asked for (HTTP requests per second, first attempts): the arrival-rate
    /// scenarios' rate at the middle of the interval times their requests per iteration;
    /// `null` when no arrival-rate scenario runs (VU executors have no planned rate).
    pub planned_rate: Option<f64>,
    /// Logical requests completed.
    pub requests: u64,
    /// Logical requests whose final result failed (`http_req_failed`).
    pub failures: u64,
    /// Attempts answered 429.
    pub throttled: u64,
    /// Attempts without a response (transport errors).
    pub errors: u64,
    /// Attempts by HTTP status.
    pub status: BTreeMap<u16, u64>,
    /// Iterations completed.
    pub iterations: u64,
    /// Arrivals dropped because `maxInFlight` was full.
    pub dropped_iterations: u64,
    /// `http_req_duration` (from the intended start) of the requests completed in this second.
    pub duration_p50_ms: Option<f64>,
    pub duration_p95_ms: Option<f64>,
    pub duration_p99_ms: Option<f64>,
    /// `http_req_service_time` (send to end of response) of the attempts in this second.
    pub service_time_p50_ms: Option<f64>,
    pub service_time_p95_ms: Option<f64>,
    pub service_time_p99_ms: Option<f64>,
    /// Where the time of the requests completed in this second went, summed over them:
    /// server (send to response), pacer's limiter, Retry-After pauses, retry backoff.
    pub server_secs: f64,
    pub limiter_wait_secs: f64,
    pub paused_secs: f64,
    pub backoff_secs: f64,
    /// Limits whose scope was paused by a Retry-After at some time in this second.
    pub active_pauses: u32,
    /// The server's rate-limit headers last seen by the end of this second.
    pub ratelimit_source: Option<String>,
    pub ratelimit_limit: Option<u64>,
    pub ratelimit_remaining: Option<u64>,
    pub ratelimit_count: Option<u64>,
    pub ratelimit_reset_secs: Option<f64>,
    pub ratelimit_policy: Option<String>,
    /// When those headers arrived, Unix milliseconds.
    pub ratelimit_at_unix_ms: Option<u64>,
}

/// The whole series of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub points: Vec<SeriesPoint>,
    /// Retry-After pauses, in the order they started.
    pub pauses: Vec<PauseWindow>,
    /// More than [`MAX_PAUSE_WINDOWS`] pauses happened; later ones are not in `pauses`.
    pub pauses_truncated: bool,
}

/// The plan's arrival rate over time, in HTTP requests per second.
#[derive(Clone, Debug, Default)]
pub struct PlannedRate {
    /// (scenario start, its schedule, requests per iteration)
    scenarios: Vec<(f64, RampSchedule, f64)>,
}

impl PlannedRate {
    /// The arrival-rate scenarios of `plan`; VU and iteration executors have no planned rate.
    pub fn from_plan(plan: &Plan) -> Self {
        let scenarios = plan
            .scenarios
            .iter()
            .filter_map(|s| {
                let schedule = match &s.executor {
                    Executor::ConstantArrivalRate { rate, duration, .. } => {
                        RampSchedule::constant(*rate, *duration)
                    }
                    Executor::RampingArrivalRate {
                        start_rate, stages, ..
                    } => RampSchedule::new(*start_rate, stages),
                    _ => return None,
                };
                Some((
                    s.start_time.as_secs_f64(),
                    schedule,
                    s.requests.len() as f64,
                ))
            })
            .collect();
        Self { scenarios }
    }

    /// Planned requests per second at `secs` since start; `None` without arrival-rate
    /// scenarios.
    pub fn at(&self, secs: f64) -> Option<f64> {
        if self.scenarios.is_empty() || !secs.is_finite() {
            return None;
        }
        let total: f64 = self
            .scenarios
            .iter()
            .filter(|(start, _, _)| secs >= *start)
            .map(|(start, schedule, per_iteration)| {
                schedule.rate_at(Duration::from_secs_f64(secs - start)) * per_iteration
            })
            .sum();
        Some(finite(total))
    }
}

/// Builds a [`Series`] from snapshots taken about once a second: either each interval's
/// delta ([`SeriesBuilder::push_delta`]) or the cumulative snapshot at its end
/// ([`SeriesBuilder::push`], which takes the delta from the one before).
#[derive(Debug)]
pub struct SeriesBuilder {
    layout: Layout,
    planned: PlannedRate,
    /// The cumulative snapshot the next interval starts from, for [`SeriesBuilder::push`]
    /// only (`None` until its first push): a delta-fed builder keeps no cumulative snapshot.
    base: Option<Snapshot>,
    /// When the next interval starts (the end of the last row).
    base_secs: f64,
    /// The last row's delta and start, to fold a short tail into that row.
    last: Option<(Snapshot, f64)>,
    /// Whether to keep `last` (see [`SeriesBuilder::without_tail_fold`]).
    keep_last: bool,
    /// The rate-limit headers the rows show: those of the latest interval that had any (a
    /// delta keeps its later snapshot's headers, so for one recorder these are its latest).
    server_limits: Option<ServerLimitHeaders>,
    limits_before: Vec<LimiterSample>,
    windows: Vec<PauseWindow>,
    /// [`MAX_PAUSE_WINDOWS`] (smaller in tests).
    max_windows: usize,
    truncated: bool,
    /// The latest window of each limit (index into `windows`).
    latest: BTreeMap<String, usize>,
    points: Vec<SeriesPoint>,
}

/// What a row reads of a delta (`SeriesBuilder::point`, `update_pauses` and
/// `note_server_limits`, which must read nothing else): each request's counters and its
/// duration, service-time and Retry-After histograms, each scenario's counters, the server's
/// headers. The other histograms (limiter wait, pauses, backoff, send lag, iteration
/// duration), the evidence ledger and the token fetches are left out: a fleet's series holds
/// the merged deltas of its open seconds and each worker's delta since its last row, and at
/// 1000 workers those histograms, dense in the seconds' sums, were a third of the
/// controller's memory (docs/benchmarks.md, "Controller at scale").
pub fn row_part(delta: &Snapshot) -> Snapshot {
    let mut d = delta.clone();
    for s in &mut d.scenarios {
        s.stats.iteration_duration = Hist::new();
        for r in &mut s.requests {
            let st = &mut r.stats;
            st.limiter_wait = Hist::new();
            st.paused = Hist::new();
            st.backoff = Hist::new();
            st.send_lag = Hist::new();
        }
    }
    d.ledger = Ledger::default();
    d.token_fetches.clear();
    d
}

impl SeriesBuilder {
    /// A builder for a run laid out as `layout`, starting now.
    pub fn new(layout: &Layout, planned: PlannedRate) -> Self {
        Self {
            layout: layout.clone(),
            planned,
            base: None,
            base_secs: 0.0,
            last: None,
            keep_last: true,
            server_limits: None,
            limits_before: Vec::new(),
            windows: Vec::new(),
            max_windows: MAX_PAUSE_WINDOWS,
            truncated: false,
            latest: BTreeMap::new(),
            points: Vec::new(),
        }
    }

    /// A builder that keeps no delta between pushes, for a caller whose last interval is
    /// never shorter than [`MIN_TAIL_SECS`] (a fleet's worker, whose rows end before the second
    /// its last report belongs to): a tail that is shorter all the same keeps a row of its own.
    pub(crate) fn without_tail_fold(mut self) -> Self {
        self.keep_last = false;
        self
    }

    /// Whether a delta is kept for a tail fold (tests of the memory it keeps).
    #[cfg(test)]
    pub(crate) fn keeps_a_delta(&self) -> bool {
        self.last.is_some()
    }

    /// The rows so far.
    pub fn points(&self) -> &[SeriesPoint] {
        &self.points
    }

    /// Record the interval ending `at` after the start (wall clock `unix_ms`), given the
    /// cumulative `snapshot` then. `limits`: the limiter's samples, when the caller has a
    /// limiter; without them pauses are estimated from the Retry-After values of 429s.
    pub fn push(
        &mut self,
        at: Duration,
        unix_ms: u64,
        snapshot: &Snapshot,
        limits: Option<&[LimiterSample]>,
    ) {
        let delta = self.delta_to(snapshot);
        // The rows show the cumulative snapshot's headers, whatever the delta's.
        self.server_limits.clone_from(&snapshot.server_limits);
        self.push_delta(at, unix_ms, delta, limits);
        self.base = Some(snapshot.clone());
    }

    /// The last interval, ending with the run's final snapshot; a tail shorter than a quarter
    /// second is folded into the previous row.
    pub fn finish(
        mut self,
        at: Duration,
        unix_ms: u64,
        snapshot: &Snapshot,
        limits: Option<&[LimiterSample]>,
    ) -> Series {
        let delta = self.delta_to(snapshot);
        self.server_limits.clone_from(&snapshot.server_limits);
        self.finish_delta(at, unix_ms, delta, limits)
    }

    /// Record the interval `(end of the last row, at]` (wall clock `unix_ms` at its end),
    /// given `delta`, what was recorded in it. `limits` as for [`SeriesBuilder::push`].
    pub fn push_delta(
        &mut self,
        at: Duration,
        unix_ms: u64,
        delta: Snapshot,
        limits: Option<&[LimiterSample]>,
    ) {
        let t0 = self.base_secs;
        let t1 = at.as_secs_f64().max(t0);
        self.note_server_limits(&delta);
        self.update_pauses(t0, t1, limits, &delta.total());
        let point = self.point(self.points.len() as u64 + 1, t0, t1, unix_ms, &delta);
        self.points.push(point);
        self.last = self.keep_last.then_some((delta, t0));
        self.base_secs = t1;
    }

    /// The last interval, given its `delta` (as [`SeriesBuilder::push_delta`]); a tail shorter
    /// than a quarter second is folded into the previous row.
    pub fn finish_delta(
        mut self,
        at: Duration,
        unix_ms: u64,
        delta: Snapshot,
        limits: Option<&[LimiterSample]>,
    ) -> Series {
        let t1 = at.as_secs_f64().max(self.base_secs);
        let fold = t1 - self.base_secs < MIN_TAIL_SECS && !self.points.is_empty();
        self.note_server_limits(&delta);
        self.update_pauses(self.base_secs, t1, limits, &delta.total());
        let folded = match (fold, self.last.take()) {
            (true, Some((mut row, t0))) => match row.merge_in_place(&delta) {
                Ok(()) => Some((row, t0)),
                Err(e) => {
                    // Only histograms past their wire format's count refuse: the tail keeps
                    // a row of its own rather than being lost.
                    tracing::warn!(error = %e, "series: the tail cannot be folded; kept apart");
                    None
                }
            },
            _ => None,
        };
        let (delta, t0) = match folded {
            Some(row) => {
                self.points.pop();
                row
            }
            None => (delta, self.base_secs),
        };
        let point = self.point(self.points.len() as u64 + 1, t0, t1, unix_ms, &delta);
        self.points.push(point);
        self.into_series()
    }

    /// The rows so far, without a last interval (a caller that stopped keeping rows).
    pub fn into_series(self) -> Series {
        Series {
            points: self.points,
            pauses: self.windows,
            pauses_truncated: self.truncated,
        }
    }

    /// What was recorded between the base of [`SeriesBuilder::push`] (nothing before its
    /// first) and `to`.
    fn delta_to(&self, to: &Snapshot) -> Snapshot {
        let empty;
        let from = match &self.base {
            Some(base) => base,
            None => {
                empty = Snapshot::empty(&self.layout);
                &empty
            }
        };
        match to.delta(from) {
            Ok(d) => d,
            Err(e) => {
                // Only a snapshot from another run (or a reset recorder) gets here: an empty
                // interval is better than a wrong one.
                tracing::warn!(error = %e, "series: snapshot is not a continuation; interval left empty");
                Snapshot::empty(&to.layout())
            }
        }
    }

    /// An interval's headers replace the kept ones when it has any.
    fn note_server_limits(&mut self, delta: &Snapshot) {
        if delta.server_limits.is_some() {
            self.server_limits.clone_from(&delta.server_limits);
        }
    }

    fn update_pauses(
        &mut self,
        t0: f64,
        t1: f64,
        limits: Option<&[LimiterSample]>,
        delta: &RequestStats,
    ) {
        match limits {
            Some(limits) => {
                for l in limits {
                    let before = self
                        .limits_before
                        .iter()
                        .find(|b| b.name == l.name)
                        .map_or(0.0, |b| b.paused_secs);
                    let added = l.paused_secs - before;
                    if added.is_finite() && added > 1e-9 {
                        self.add_pause(&l.name, t0, added, true);
                    }
                }
                self.limits_before = limits.to_vec();
            }
            None => {
                if delta.throttled > 0
                    && let Some(ms) = delta.retry_after_ms.max()
                {
                    self.add_pause("retry-after", t0, ms as f64 / 1000.0, false);
                }
            }
        }
        let _ = t1;
    }

    /// A pause of `len` seconds that began in the interval starting `t0`. `extends`: the
    /// limiter counts an extension of a running pause as added length.
    fn add_pause(&mut self, limit: &str, t0: f64, len: f64, extends: bool) {
        if let Some(&i) = self.latest.get(limit)
            && let Some(w) = self.windows.get_mut(i)
            && w.end_secs > t0
        {
            w.end_secs = if extends {
                w.end_secs + len
            } else {
                w.end_secs.max(t0 + len)
            };
            return;
        }
        if self.windows.len() >= self.max_windows {
            self.truncated = true;
            return;
        }
        self.latest.insert(limit.to_string(), self.windows.len());
        self.windows.push(PauseWindow {
            limit: limit.to_string(),
            start_secs: t0,
            end_secs: t0 + len,
        });
    }

    fn active_pauses(&self, t0: f64, t1: f64) -> u32 {
        let n = self
            .latest
            .values()
            .filter_map(|&i| self.windows.get(i))
            .filter(|w| w.start_secs < t1 && w.end_secs > t0)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn point(&self, t: u64, t0: f64, t1: f64, unix_ms: u64, delta: &Snapshot) -> SeriesPoint {
        let secs = t1 - t0;
        let d = delta.total();
        let (mut iterations, mut dropped) = (0u64, 0u64);
        for s in &delta.scenarios {
            iterations = iterations.saturating_add(s.stats.iterations);
            dropped = dropped.saturating_add(s.stats.dropped_iterations);
        }
        let with_status: u64 = d.status.values().fold(0u64, |a, &n| a.saturating_add(n));
        let ms = |h: &pacer_stats::Hist, p: f64| h.percentile(p).map(|us| us as f64 / 1000.0);
        let limits = self.server_limits.as_ref();
        SeriesPoint {
            t,
            elapsed_secs: finite(t1),
            secs: finite(secs),
            unix_ms,
            attempts: d.attempts,
            rate: if secs > 1e-3 {
                finite(d.attempts as f64 / secs)
            } else {
                0.0
            },
            planned_rate: self.planned.at(t0 + secs / 2.0),
            requests: d.requests,
            failures: d.failed,
            throttled: d.throttled,
            errors: d.attempts.saturating_sub(with_status),
            // A delta has no zero counts; a first report merged as it came might.
            status: d
                .status
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(k, n)| (*k, *n))
                .collect(),
            iterations,
            dropped_iterations: dropped,
            duration_p50_ms: ms(&d.duration, 50.0),
            duration_p95_ms: ms(&d.duration, 95.0),
            duration_p99_ms: ms(&d.duration, 99.0),
            service_time_p50_ms: ms(&d.service_time, 50.0),
            service_time_p95_ms: ms(&d.service_time, 95.0),
            service_time_p99_ms: ms(&d.service_time, 99.0),
            server_secs: d.service_time_us_sum as f64 / 1e6,
            limiter_wait_secs: d.limiter_wait_us_sum as f64 / 1e6,
            paused_secs: d.paused_us_sum as f64 / 1e6,
            backoff_secs: d.backoff_us_sum as f64 / 1e6,
            active_pauses: self.active_pauses(t0, t1),
            ratelimit_source: limits.map(|h| h.source.clone()),
            ratelimit_limit: limits.and_then(|h| h.limit),
            ratelimit_remaining: limits.and_then(|h| h.remaining),
            ratelimit_count: limits.and_then(|h| h.count),
            ratelimit_reset_secs: limits.and_then(|h| h.reset_secs).filter(|v| v.is_finite()),
            ratelimit_policy: limits
                .and_then(|h| h.policy.as_deref())
                .map(|p| p.chars().take(MAX_POLICY_CHARS).collect()),
            ratelimit_at_unix_ms: limits.map(|h| h.at_unix_ms),
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

impl Series {
    /// Every status code seen in the run, ascending (the CSV's `status_<code>` columns).
    pub fn statuses(&self) -> Vec<u16> {
        let all: BTreeSet<u16> = self
            .points
            .iter()
            .flat_map(|p| p.status.keys().copied())
            .collect();
        all.into_iter().collect()
    }

    /// JSON Lines: one [`SeriesPoint`] object per line.
    pub fn write_jsonl(&self, out: &mut impl Write) -> io::Result<()> {
        for p in &self.points {
            serde_json::to_writer(&mut *out, p).map_err(io::Error::other)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// CSV with a header row: the fixed columns of [`CSV_COLUMNS`], then one `status_<code>`
    /// column per status code seen in the run. Empty cells are `null`s.
    pub fn write_csv(&self, out: &mut impl Write) -> io::Result<()> {
        let statuses = self.statuses();
        let mut header: Vec<String> = CSV_COLUMNS.iter().map(|c| (*c).to_string()).collect();
        header.extend(statuses.iter().map(|s| format!("status_{s}")));
        writeln!(out, "{}", header.join(","))?;
        for p in &self.points {
            let mut row = csv_row(p);
            row.extend(
                statuses
                    .iter()
                    .map(|s| p.status.get(s).copied().unwrap_or(0).to_string()),
            );
            writeln!(out, "{}", row.join(","))?;
        }
        Ok(())
    }

    /// [`Series::write_jsonl`] into a string.
    pub fn to_jsonl(&self) -> String {
        let mut buf = Vec::new();
        let _ = self.write_jsonl(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// [`Series::write_csv`] into a string.
    pub fn to_csv(&self) -> String {
        let mut buf = Vec::new();
        let _ = self.write_csv(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// The fixed CSV columns, in order (the [`SeriesPoint`] fields but `status`).
pub const CSV_COLUMNS: [&str; 31] = [
    "t",
    "elapsed_secs",
    "secs",
    "unix_ms",
    "attempts",
    "rate",
    "planned_rate",
    "requests",
    "failures",
    "throttled",
    "errors",
    "iterations",
    "dropped_iterations",
    "duration_p50_ms",
    "duration_p95_ms",
    "duration_p99_ms",
    "service_time_p50_ms",
    "service_time_p95_ms",
    "service_time_p99_ms",
    "server_secs",
    "limiter_wait_secs",
    "paused_secs",
    "backoff_secs",
    "active_pauses",
    "ratelimit_source",
    "ratelimit_limit",
    "ratelimit_remaining",
    "ratelimit_count",
    "ratelimit_reset_secs",
    "ratelimit_policy",
    "ratelimit_at_unix_ms",
];

fn num(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(String::new, num)
}

fn opt_int(v: Option<u64>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn csv_row(p: &SeriesPoint) -> Vec<String> {
    vec![
        p.t.to_string(),
        num(p.elapsed_secs),
        num(p.secs),
        p.unix_ms.to_string(),
        p.attempts.to_string(),
        num(p.rate),
        opt_num(p.planned_rate),
        p.requests.to_string(),
        p.failures.to_string(),
        p.throttled.to_string(),
        p.errors.to_string(),
        p.iterations.to_string(),
        p.dropped_iterations.to_string(),
        opt_num(p.duration_p50_ms),
        opt_num(p.duration_p95_ms),
        opt_num(p.duration_p99_ms),
        opt_num(p.service_time_p50_ms),
        opt_num(p.service_time_p95_ms),
        opt_num(p.service_time_p99_ms),
        num(p.server_secs),
        num(p.limiter_wait_secs),
        num(p.paused_secs),
        num(p.backoff_secs),
        p.active_pauses.to_string(),
        p.ratelimit_source
            .as_deref()
            .map_or_else(String::new, csv_text),
        opt_int(p.ratelimit_limit),
        opt_int(p.ratelimit_remaining),
        opt_int(p.ratelimit_count),
        opt_num(p.ratelimit_reset_secs),
        p.ratelimit_policy
            .as_deref()
            .map_or_else(String::new, csv_text),
        opt_int(p.ratelimit_at_unix_ms),
    ]
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. A text field
/// that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading
/// `'`, as OWASP recommends for CSV files that carry outside data (server headers here).
fn csv_text(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_stats::{Attempt, Recorder, RequestOutcome, ScenarioLayout, ServerLimitHeaders};

    fn recorder() -> Recorder {
        Recorder::new(Layout {
            scenarios: vec![ScenarioLayout {
                name: "s".into(),
                requests: vec!["r".into()],
            }],
        })
    }

    fn hit(rec: &Recorder, status: u16, ms: u64) {
        rec.record_attempt(
            0,
            0,
            &Attempt {
                service_time: Duration::from_millis(ms),
                status: Some(status),
                retry_after: (status == 429).then(|| Duration::from_secs(2)),
                ..Default::default()
            },
        );
        rec.record_request(
            0,
            0,
            &RequestOutcome {
                duration: Duration::from_millis(ms),
                attempts: 1,
                ..Default::default()
            },
        );
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn one_row_per_second_with_interval_values() {
        let rec = recorder();
        let mut b = SeriesBuilder::new(rec.layout(), PlannedRate::default());
        for _ in 0..10 {
            hit(&rec, 200, 10);
        }
        b.push(secs(1.0), 1000, &rec.snapshot(), Some(&[]));
        for _ in 0..5 {
            hit(&rec, 200, 100);
        }
        hit(&rec, 429, 1);
        rec.record_server_limits(ServerLimitHeaders {
            at_unix_ms: 1500,
            source: "x-ratelimit".into(),
            limit: Some(100),
            remaining: Some(7),
            policy: Some("=cmd".into()),
            ..Default::default()
        });
        b.push(secs(2.0), 2000, &rec.snapshot(), Some(&[]));
        let series = b.finish(secs(2.6), 2600, &rec.snapshot(), Some(&[]));
        let p = &series.points;
        assert_eq!(p.len(), 3);
        assert_eq!(p.iter().map(|x| x.t).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((p[0].attempts, p[1].attempts, p[2].attempts), (10, 6, 0));
        assert_eq!(p[1].throttled, 1);
        assert_eq!(p[1].status.get(&200), Some(&5));
        assert!((p[0].rate - 10.0).abs() < 1e-9);
        let p50 = p[1].duration_p50_ms.unwrap();
        assert!((99.0..=101.0).contains(&p50), "{p50}");
        assert_eq!(p[2].duration_p50_ms, None, "no requests in the tail");
        assert!((p[2].secs - 0.6).abs() < 1e-9);
        assert_eq!(p[1].ratelimit_remaining, Some(7));
        assert_eq!(p[0].ratelimit_limit, None);
        assert_eq!(p[0].planned_rate, None);
        assert!(series.pauses.is_empty(), "no limiter pauses: {series:?}");

        let csv = series.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4, "{csv}");
        assert!(lines[0].starts_with("t,elapsed_secs,secs,unix_ms,attempts,rate,"));
        assert!(lines[0].ends_with(",status_200,status_429"), "{}", lines[0]);
        let columns = lines[0].split(',').count();
        assert!(
            lines.iter().all(|l| l.split(',').count() == columns),
            "{csv}"
        );
        assert!(
            lines[2].contains(",'=cmd,"),
            "formula guarded: {}",
            lines[2]
        );
        let jsonl = series.to_jsonl();
        let rows: Vec<SeriesPoint> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows, series.points);
    }

    #[test]
    fn a_short_tail_is_folded_into_the_last_second() {
        let rec = recorder();
        let mut b = SeriesBuilder::new(rec.layout(), PlannedRate::default());
        hit(&rec, 200, 5);
        b.push(secs(1.0), 0, &rec.snapshot(), None);
        hit(&rec, 200, 5);
        b.push(secs(2.0), 0, &rec.snapshot(), None);
        hit(&rec, 200, 5);
        let s = b.finish(secs(2.1), 0, &rec.snapshot(), None);
        assert_eq!(s.points.len(), 2);
        assert_eq!(s.points[1].attempts, 2);
        assert!((s.points[1].secs - 1.1).abs() < 1e-9);
        assert_eq!(s.points.iter().map(|p| p.attempts).sum::<u64>(), 3);
        // a run shorter than the first tick still has one row
        let rec = recorder();
        hit(&rec, 200, 5);
        let b = SeriesBuilder::new(rec.layout(), PlannedRate::default());
        let s = b.finish(secs(0.05), 0, &rec.snapshot(), None);
        assert_eq!(s.points.len(), 1);
        assert_eq!(s.points[0].attempts, 1);
    }

    /// The same run fed as deltas and as cumulative snapshots makes the same rows: counts,
    /// percentiles, pauses, the server's headers (the latest interval's, even when its stamp
    /// is older), and a short tail folded into the last row.
    #[test]
    fn delta_fed_rows_equal_cumulative_rows() {
        for tail in [0.1, 0.6] {
            let rec = recorder();
            let mut cumulative = SeriesBuilder::new(rec.layout(), PlannedRate::default());
            let mut fed = SeriesBuilder::new(rec.layout(), PlannedRate::default());
            // Fed only what a row reads (`row_part`), with the limiter's samples and without
            // them (pauses from Retry-After).
            let mut parted = SeriesBuilder::new(rec.layout(), PlannedRate::default());
            let mut whole = SeriesBuilder::new(rec.layout(), PlannedRate::default());
            let mut parted_bare = SeriesBuilder::new(rec.layout(), PlannedRate::default());
            let mut before = Snapshot::empty(rec.layout());
            let mut step = |k: u64| {
                for n in 0..k % 4 {
                    hit(&rec, if n == 1 { 429 } else { 200 }, 10 * k + n);
                }
                if k % 3 == 1 {
                    rec.record_server_limits(ServerLimitHeaders {
                        at_unix_ms: 10_000 - k,
                        source: "x-ratelimit".into(),
                        remaining: Some(k),
                        ..Default::default()
                    });
                }
                let sample = [LimiterSample {
                    name: "l".into(),
                    pauses: k / 3,
                    paused_secs: (k / 3) as f64 * 0.7,
                    pacing_rate: 1.0,
                }];
                let snap = rec.snapshot();
                let delta = snap.delta(&before).unwrap();
                before = snap.clone();
                (snap, delta, sample)
            };
            for k in 1..=7u64 {
                let (snap, delta, sample) = step(k);
                cumulative.push(secs(k as f64), k * 1000, &snap, Some(&sample));
                parted.push_delta(secs(k as f64), k * 1000, row_part(&delta), Some(&sample));
                whole.push_delta(secs(k as f64), k * 1000, delta.clone(), None);
                parted_bare.push_delta(secs(k as f64), k * 1000, row_part(&delta), None);
                fed.push_delta(secs(k as f64), k * 1000, delta, Some(&sample));
            }
            let (snap, delta, sample) = step(8);
            let end = secs(7.0 + tail);
            let want = cumulative.finish(end, 7_100, &snap, Some(&sample));
            let got_parted = parted.finish_delta(end, 7_100, row_part(&delta), Some(&sample));
            assert_eq!(got_parted, want, "tail {tail}, row parts");
            let got_whole = whole.finish_delta(end, 7_100, delta.clone(), None);
            let got_bare = parted_bare.finish_delta(end, 7_100, row_part(&delta), None);
            assert_eq!(
                got_bare, got_whole,
                "tail {tail}, row parts, pauses from Retry-After"
            );
            assert!(!got_whole.pauses.is_empty());
            let got = fed.finish_delta(end, 7_100, delta, Some(&sample));
            assert_eq!(got, want, "tail {tail}");
            assert_eq!(want.points.len(), if tail < MIN_TAIL_SECS { 7 } else { 8 });
            assert!(!want.pauses.is_empty());
            assert_eq!(want.points[6].ratelimit_remaining, Some(7));
        }
    }

    #[test]
    fn pauses_come_from_the_limiter_or_from_retry_after() {
        let rec = recorder();
        let mut b = SeriesBuilder::new(rec.layout(), PlannedRate::default());
        let sample = |paused: f64, pauses: u64| {
            vec![LimiterSample {
                name: "per-token".into(),
                pauses,
                paused_secs: paused,
                pacing_rate: 5.0,
            }]
        };
        b.push(secs(1.0), 0, &rec.snapshot(), Some(&sample(0.0, 0)));
        b.push(secs(2.0), 0, &rec.snapshot(), Some(&sample(2.0, 1)));
        // extended by 0.5 s while running
        b.push(secs(3.0), 0, &rec.snapshot(), Some(&sample(2.5, 1)));
        b.push(secs(4.0), 0, &rec.snapshot(), Some(&sample(2.5, 1)));
        b.push(secs(5.0), 0, &rec.snapshot(), Some(&sample(2.5, 1)));
        // a second pause after the first ended
        b.push(secs(6.0), 0, &rec.snapshot(), Some(&sample(3.5, 2)));
        let s = b.finish(secs(7.0), 0, &rec.snapshot(), Some(&sample(3.5, 2)));
        assert_eq!(s.pauses.len(), 2, "{:?}", s.pauses);
        assert_eq!(s.pauses[0].start_secs, 1.0);
        assert!((s.pauses[0].end_secs - 3.5).abs() < 1e-9);
        assert_eq!(s.pauses[1].start_secs, 5.0);
        let active: Vec<u32> = s.points.iter().map(|p| p.active_pauses).collect();
        assert_eq!(active, vec![0, 1, 1, 1, 0, 1, 0]);

        // without a limiter: 429s with Retry-After
        let rec = recorder();
        let mut b = SeriesBuilder::new(rec.layout(), PlannedRate::default());
        b.push(secs(1.0), 0, &rec.snapshot(), None);
        hit(&rec, 429, 1);
        b.push(secs(2.0), 0, &rec.snapshot(), None);
        let s = b.finish(secs(3.5), 0, &rec.snapshot(), None);
        assert_eq!(s.pauses.len(), 1);
        assert_eq!(s.pauses[0].limit, "retry-after");
        assert_eq!((s.pauses[0].start_secs, s.pauses[0].end_secs), (1.0, 3.0));
        assert_eq!(
            s.points.iter().map(|p| p.active_pauses).collect::<Vec<_>>(),
            vec![0, 1, 1]
        );
    }

    #[test]
    fn memory_is_one_row_per_second_and_pause_windows_are_capped() {
        let rec = recorder();
        let mut b = SeriesBuilder::new(rec.layout(), PlannedRate::default());
        b.max_windows = 10;
        let snap = rec.snapshot();
        let n = 45;
        for k in 1..=n {
            // a new 0.5 s pause every other second
            let sample = [LimiterSample {
                name: "l".into(),
                pauses: (k / 2) as u64,
                paused_secs: (k / 2) as f64 * 0.5,
                pacing_rate: 1.0,
            }];
            b.push(secs(k as f64), 0, &snap, Some(&sample));
        }
        let s = b.finish(secs(n as f64 + 1.0), 0, &snap, None);
        assert_eq!(s.points.len(), n + 1);
        assert_eq!(s.pauses.len(), 10);
        assert!(s.pauses_truncated);
    }

    #[test]
    fn planned_rate_follows_arrival_rate_scenarios() {
        let plan = pacer_plan::load_str(
            "name: p\ntarget: http://127.0.0.1:1\nscenarios:\n  - {name: a, executor: ramping-arrival-rate, startRate: 0/s, stages: [{target: 10/s, duration: 10s}], requests: [{name: x, path: /x}, {name: q, path: /q}]}\n  - {name: b, executor: constant-vus, vus: 2, duration: 5s, requests: [{name: z, path: /z}]}\n  - {name: c, executor: constant-arrival-rate, rate: 4/s, duration: 2s, startTime: 3s, requests: [{name: w, path: /w}]}\n",
            "plan.yaml",
            &pacer_plan::Refs::default(),
        )
        .unwrap();
        let planned = PlannedRate::from_plan(&plan);
        // a: 2 requests per iteration at 5/s at t=5; c: 4/s between 3 s and 5 s
        assert!((planned.at(4.0).unwrap() - (8.0 + 4.0)).abs() < 1e-9);
        assert!((planned.at(5.0).unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(planned.at(20.0), Some(0.0));
        assert_eq!(planned.at(f64::NAN), None);
        assert_eq!(PlannedRate::default().at(1.0), None);
    }

    #[test]
    fn csv_quotes_and_guards_formulas() {
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_text("-1,2"), "\"'-1,2\"");
        assert_eq!(csv_text("line\nbreak"), "\"line\nbreak\"");
    }
}
