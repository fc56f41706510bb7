//! Building a LoadTest's status: conditions that keep their transition time, the live numbers
//! of a run in the units `kubectl get` shows, per-worker rows within the size budget of
//! [`crate::sizes`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{Latency, LoadTestStatus, Progress, ThresholdStatus, WorkerCounts, WorkerHealth};
use crate::reason::Reason;
use crate::runner::LiveStats;

pub const COND_VALID: &str = "Valid";
pub const COND_WORKERS_READY: &str = "WorkersReady";
pub const COND_COMPLETE: &str = "Complete";
pub const COND_SUSPENDED: &str = "Suspended";

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// Set a condition; its `lastTransitionTime` moves only when its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
) {
    let reason = reason.as_str();
    let status = if status { "True" } else { "False" };
    let message: String = message.chars().take(4000).collect();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now();
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now(),
        }),
    }
}

pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

fn ms(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{v:.1}ms"))
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    if v.is_finite() {
        (v * f).round() / f
    } else {
        0.0
    }
}

/// Workers counts for the status.
pub fn worker_counts(desired: u32, connected: u32, lost: u32) -> WorkerCounts {
    WorkerCounts {
        desired,
        connected,
        lost,
        ready: format!("{connected}/{desired}"),
    }
}

/// Copy a run's numbers into a status.
pub fn apply_live(status: &mut LoadTestStatus, live: &LiveStats, desired: u32) {
    status.workers = Some(worker_counts(desired, live.connected, live.lost));
    let planned = live.planned.as_secs_f64();
    let elapsed = live.elapsed.as_secs_f64();
    status.progress = Some(Progress {
        elapsed_seconds: round(elapsed, 1),
        planned_seconds: round(planned, 1),
        percent: if planned > 0.0 {
            round((elapsed / planned * 100.0).min(100.0), 1)
        } else {
            0.0
        },
    });
    status.requests = Some(live.requests);
    status.rps = Some(round(live.rps, 1));
    status.latency = Some(Latency {
        p50: ms(live.p50_ms),
        p95: ms(live.p95_ms),
        p99: ms(live.p99_ms),
    });
    status.errors = Some(live.errors);
    status.error_rate = live.error_rate.map(|r| round(r, 4));
    status.throttled = Some(live.throttled);
    status.throttled_seconds = Some(round(live.throttled_secs, 1));
    status.thresholds = live
        .thresholds
        .iter()
        .map(|t| ThresholdStatus {
            metric: t.key.clone(),
            expression: t.expr.clone(),
            passed: t.passed,
            observed: t.observed.map(|v| round(v, 4)),
        })
        .collect();
    let rows = live
        .workers
        .iter()
        .map(|w| WorkerHealth {
            index: w.index,
            name: w.name.clone(),
            state: w.state.to_string(),
            requests: w.http_reqs,
            rps: round(w.rate_per_sec, 1),
            errors: w.errors,
            throttled: w.throttled,
            reason: w.reason.clone(),
        })
        .collect();
    let (rows, omitted) = crate::sizes::fit_worker_health(rows);
    status.worker_health = rows;
    status.worker_health_omitted = (omitted > 0).then_some(omitted);
}
