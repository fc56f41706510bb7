//! Threshold evaluation: k6 semantics over a [`Snapshot`].
//!
//! The plan crate parses `metric{tags}: ["aggregation op value"]`; here the tag filter picks
//! which entries are merged, the aggregation reduces them to one number (milliseconds for
//! trends, a share for rates, a count or per-second rate for counters) and the operator
//! decides. A threshold on a metric without data passes with `observed: None`, as in k6.

use std::time::Duration;

use pacer_plan::threshold::{Aggregation, Metric, MetricKind, Threshold};
use serde::Serialize;

use crate::hist::Hist;
use crate::snapshot::Snapshot;

/// The outcome of one threshold expression.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdResult {
    /// The key as written, e.g. `http_req_duration{request:query}`.
    pub key: String,
    /// The expression as written, e.g. `p(95)<800ms`.
    pub expr: String,
    pub passed: bool,
    /// The aggregated value compared against the threshold, in the threshold's unit
    /// (milliseconds for trends, a 0..1 share for rates, a count or count per second for
    /// counters). `None` when the metric had no data, which passes.
    pub observed: Option<f64>,
    pub abort_on_fail: bool,
}

/// Evaluate every threshold against cumulative results after `elapsed` of test time.
pub fn evaluate(
    thresholds: &[Threshold],
    snapshot: &Snapshot,
    elapsed: Duration,
) -> Vec<ThresholdResult> {
    thresholds
        .iter()
        .map(|t| {
            let observed = observe(t, snapshot, elapsed);
            ThresholdResult {
                key: t.key.clone(),
                expr: t.expr.clone(),
                passed: observed.is_none_or(|v| t.op.holds(v, t.value)),
                observed,
                abort_on_fail: t.abort_on_fail,
            }
        })
        .collect()
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
