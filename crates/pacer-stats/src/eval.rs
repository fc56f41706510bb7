//! Threshold evaluation and the run's verdict: the one place that decides whether results
//! pass, so `pacer run` (with or without `-q`), the controller and the operator cannot disagree.
//!
//! The plan crate parses `metric{tags}: ["aggregation op value"]`; here the tag filter picks
//! which entries are merged, the aggregation reduces them to one number (milliseconds for
//! trends, a share for rates, a count or per-second rate for counters) and the operator
//! decides.
//!
//! The no-data rule (unlike k6, which passes such thresholds): a threshold with nothing to
//! measure, because its metric has no samples for its filter or because the run made no
//! request at all, is [`ThresholdOutcome::NoData`], and no data fails the final verdict. A
//! broken or hostile worker, a dead target or a wrong tag filter must not turn into a green
//! run. While the run goes, [`AbortWatch`] treats no data as "not yet": only a measured
//! failure stops a run early.

use std::fmt;
use std::time::Duration;

use pacer_plan::threshold::{Aggregation, Metric, MetricKind, Threshold};
use serde::Serialize;

use crate::hist::Hist;
use crate::snapshot::Snapshot;

/// What one threshold said about the results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdOutcome {
    /// Measured, and the condition holds.
    Passed,
    /// Measured, and the condition does not hold.
    Failed,
    /// Nothing to measure (no samples for the metric, or no request at all): fails the
    /// verdict at the end, never aborts a run early.
    NoData,
}

/// The outcome of one threshold expression.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdResult {
    /// The key as written, e.g. `http_req_duration{request:query}`.
    pub key: String,
    /// The expression as written, e.g. `p(95)<800ms`.
    pub expr: String,
    /// `outcome == Passed` (kept for readers of `--summary-json` that predate `outcome`).
    pub passed: bool,
    pub outcome: ThresholdOutcome,
    /// The aggregated value compared against the threshold, in the threshold's unit
    /// (milliseconds for trends, a 0..1 share for rates, a count or count per second for
    /// counters). `None` when there was no data (`outcome: no_data`).
    pub observed: Option<f64>,
    pub abort_on_fail: bool,
}

/// Evaluate every threshold against cumulative results after `elapsed` of test time, with
/// the no-data rule of the module docs.
pub fn evaluate(
    thresholds: &[Threshold],
    snapshot: &Snapshot,
    elapsed: Duration,
) -> Vec<ThresholdResult> {
    let any_request = made_requests(snapshot);
    thresholds
        .iter()
        .map(|t| {
            let observed = any_request.then(|| observe(t, snapshot, elapsed)).flatten();
            let outcome = match observed {
                None => ThresholdOutcome::NoData,
                Some(v) if t.op.holds(v, t.value) => ThresholdOutcome::Passed,
                Some(_) => ThresholdOutcome::Failed,
            };
            ThresholdResult {
                key: t.key.clone(),
                expr: t.expr.clone(),
                passed: outcome == ThresholdOutcome::Passed,
                outcome,
                observed,
                abort_on_fail: t.abort_on_fail,
            }
        })
        .collect()
}

/// Did the run send anything at all? A run without a single HTTP exchange has no data.
pub fn made_requests(snapshot: &Snapshot) -> bool {
    snapshot
        .scenarios
        .iter()
        .flat_map(|s| &s.requests)
        .any(|r| r.stats.attempts > 0)
}

/// The run's verdict from its threshold results: passed only when every threshold was
/// measured and held and the run made at least one request. `reasons` says why not, one line
/// each, in the words the summary, the exit and the operator's status use.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn of(results: &[ThresholdResult], snapshot: &Snapshot) -> Verdict {
        Self::from_results(results, made_requests(snapshot))
    }

    /// [`Verdict::of`] for callers that kept the results and whether any request was made
    /// (the operator's status), not the snapshot.
    pub fn from_results(results: &[ThresholdResult], any_request: bool) -> Verdict {
        let mut reasons = Vec::new();
        if !any_request {
            // Every threshold is without data then: this one line says it for all of them.
            reasons.push(NO_REQUESTS.to_string());
        }
        for r in results {
            match r.outcome {
                ThresholdOutcome::Passed => {}
                ThresholdOutcome::Failed => {
                    reasons.push(format!("threshold {} {} failed", r.key, r.expr));
                }
                ThresholdOutcome::NoData if any_request => reasons.push(format!(
                    "threshold {} {} had no data (no samples for its metric), which fails",
                    r.key, r.expr
                )),
                ThresholdOutcome::NoData => {}
            }
        }
        Verdict {
            passed: reasons.is_empty(),
            reasons,
        }
    }
}

/// The verdict's line for a run that sent nothing.
const NO_REQUESTS: &str = "no requests were made: a run without data does not pass";

/// An `abortOnFail` threshold that failed while the run went.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdCrossed {
    pub key: String,
    pub expr: String,
    /// Test time when it was seen.
    pub at: Duration,
    /// The value as the summary shows it, e.g. `p(95)=12.0ms`.
    pub measured: String,
}

impl fmt::Display for ThresholdCrossed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "threshold {} {} crossed (abortOnFail) at {:.1}s: {}",
            self.key,
            self.expr,
            self.at.as_secs_f64(),
            self.measured
        )
    }
}

/// Watches the `abortOnFail` thresholds of a plan while it runs: feed it cumulative snapshots
/// and the test time; it says once, the first time a threshold fails after its
/// `delayAbortEval`, that the run must stop and why. No data is not a failure here (the run
/// may not have sent anything yet). Independent of any display, so `pacer run -q`, the
/// progress display, the controller and the operator stop on the same rule.
#[derive(Clone, Debug)]
pub struct AbortWatch {
    watched: Vec<Threshold>,
    crossed: Option<ThresholdCrossed>,
}

impl AbortWatch {
    pub fn new(thresholds: &[Threshold]) -> Self {
        AbortWatch {
            watched: thresholds
                .iter()
                .filter(|t| t.abort_on_fail)
                .cloned()
                .collect(),
            crossed: None,
        }
    }

    /// No `abortOnFail` threshold: [`AbortWatch::check`] never fires, callers may skip the
    /// snapshot it would need.
    pub fn is_idle(&self) -> bool {
        self.watched.is_empty()
    }

    /// The threshold that stopped the run, once one has.
    pub fn crossed(&self) -> Option<&ThresholdCrossed> {
        self.crossed.as_ref()
    }

    /// Look at the latest cumulative results. Returns the crossing the first time one is seen
    /// (the caller stops the run then); afterwards `None`, as the run is already stopping.
    pub fn check(&mut self, snapshot: &Snapshot, elapsed: Duration) -> Option<&ThresholdCrossed> {
        if self.crossed.is_some() || self.watched.is_empty() {
            return None;
        }
        let results = evaluate(&self.watched, snapshot, elapsed);
        let (_, r) = self.watched.iter().zip(&results).find(|(t, r)| {
            r.outcome == ThresholdOutcome::Failed && elapsed >= t.delay_abort_eval
        })?;
        self.crossed = Some(ThresholdCrossed {
            key: r.key.clone(),
            expr: r.expr.clone(),
            at: elapsed,
            measured: crate::render::measured(r),
        });
        self.crossed.as_ref()
    }
}

/// The value a threshold compares, or `None` without data.
pub fn observe(t: &Threshold, snapshot: &Snapshot, elapsed: Duration) -> Option<f64> {
    let value = match t.metric.kind() {
        MetricKind::Trend => {
            let hist = trend(t, snapshot)?;
            trend_value(&hist, t.aggregation)?
        }
        MetricKind::Rate => {
            let (hits, total) = rate_parts(t, snapshot)?;
            if t.aggregation != Aggregation::Rate || total == 0 {
                return None;
            }
            hits as f64 / total as f64
        }
        MetricKind::Counter => {
            let count = counter(t, snapshot)? as f64;
            match t.aggregation {
                Aggregation::Count => count,
                Aggregation::Rate => {
                    let secs = elapsed.as_secs_f64();
                    if secs <= 0.0 {
                        return None;
                    }
                    count / secs
                }
                _ => return None,
            }
        }
    };
    value.is_finite().then_some(value)
}

/// The merged histogram (microseconds) a trend threshold reads.
fn trend(t: &Threshold, snapshot: &Snapshot) -> Option<Hist> {
    if t.metric == Metric::IterationDuration {
        return snapshot
            .select_scenarios(&t.tags)
            .map(|s| s.iteration_duration);
    }
    let r = snapshot.select_requests(&t.tags)?;
    match t.metric {
        Metric::HttpReqDuration => Some(r.duration),
        Metric::HttpReqServiceTime => Some(r.service_time),
        Metric::HttpReqLimiterWait => Some(r.limiter_wait),
        _ => None,
    }
}

/// Reduce a microsecond histogram to milliseconds.
pub(crate) fn trend_value(h: &Hist, aggregation: Aggregation) -> Option<f64> {
    let us = match aggregation {
        Aggregation::Percentile(p) => h.percentile(p)? as f64,
        Aggregation::Med => h.percentile(50.0)? as f64,
        Aggregation::Avg => h.mean()?,
        Aggregation::Min => h.min()? as f64,
        Aggregation::Max => h.max()? as f64,
        Aggregation::Count | Aggregation::Rate => return None,
    };
    Some(us / 1000.0)
}

/// (events, out of) for rate metrics.
fn rate_parts(t: &Threshold, snapshot: &Snapshot) -> Option<(u64, u64)> {
    let r = snapshot.select_requests(&t.tags)?;
    match t.metric {
        Metric::HttpReqFailed => Some((r.failed, r.requests)),
        Metric::HttpReqsThrottled => Some((r.throttled, r.attempts)),
        Metric::Checks => Some((
            r.checks_passed,
            r.checks_passed.saturating_add(r.checks_failed),
        )),
        _ => None,
    }
}

fn counter(t: &Threshold, snapshot: &Snapshot) -> Option<u64> {
    if t.metric.per_scenario_only() {
        let s = snapshot.select_scenarios(&t.tags)?;
        return match t.metric {
            Metric::Iterations => Some(s.iterations),
            Metric::DroppedIterations => Some(s.dropped_iterations),
            _ => None,
        };
    }
    let r = snapshot.select_requests(&t.tags)?;
    match t.metric {
        Metric::HttpReqs => Some(r.attempts),
        Metric::HttpReqRetries => Some(r.retries),
        Metric::DataSent => Some(r.bytes_sent),
        Metric::DataReceived => Some(r.bytes_received),
        _ => None,
    }
}
