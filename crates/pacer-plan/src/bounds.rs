//! The largest value every number of a plan may take, and the check that holds a spec to
//! them (each broken bound reported with its field path).
//!
//! Why bounds at all: a plan is read by `pacer run`, by the Kubernetes operator for anyone
//! who may create a LoadTest, and by every worker. A number no test needs
//! (`duration: 18446744073709551615s`) must be an error naming the field, not an overflow
//! somewhere in the engine, the operator's reconcile or a worker. Each bound is far above
//! any real test and far enough below the types' limits that the arithmetic done on valid
//! plans (sums of stages, start + duration + grace, rate x duration, VUs x iterations,
//! `Instant + Duration`, a timestamp plus an offset) cannot overflow. The same bounds are in
//! the JSON Schema (and so the LoadTest CRD) where a schema can say them.

use std::time::Duration;

use crate::HumanDuration;
use crate::error::FieldError;
use crate::spec::{PlanSpec, ScenarioSpec};

const DAY: u64 = 24 * 3600;

/// The longest a test, a scenario, its start delay or its stages may run: a month covers
/// soak tests; a longer run is better split into tests whose reports can be read.
pub const MAX_TEST_DURATION: Duration = Duration::from_secs(31 * DAY);
/// The longest wait inside a test: timeouts, grace periods, think time, poll intervals,
/// backoff and Retry-After clamps. An hour is far beyond any HTTP exchange.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The longest offset of `{{isoNow ±N}}`: a century covers any date an API accepts, and
/// keeps "now + offset" inside every calendar type.
pub const MAX_TIME_OFFSET: Duration = Duration::from_secs(36_525 * DAY);
/// The fastest rate (per second) of an arrival executor or a limit: a thousand workers at a
/// thousand requests a second each.
pub const MAX_RATE_PER_SEC: f64 = 1_000_000.0;
/// The most VUs (and `maxInFlight`, `preAllocatedVUs`) of one scenario.
pub const MAX_VUS: u32 = 1_000_000;
/// The most iterations of one iteration executor (per VU for per-vu-iterations): with
/// [`MAX_VUS`] the product stays below `u64::MAX`.
pub const MAX_ITERATIONS: u64 = 1_000_000_000_000;
/// The most stages of a ramping executor.
pub const MAX_STAGES: usize = 1000;
/// The smallest weight of a test on a budget (`weight:`): a test with a hundredth of
/// another's weight still gets a share, and a share is never a rounding error of a float.
pub const MIN_BUDGET_WEIGHT: f64 = 0.01;
/// The largest weight of a test on a budget: with [`MIN_BUDGET_WEIGHT`], at most 10^5 between
/// two tests' shares, far beyond any policy anyone writes, and sums of weights stay exact.
pub const MAX_BUDGET_WEIGHT: f64 = 1000.0;
/// The largest scenario weight.
pub const MAX_WEIGHT: u32 = 1000;
/// The most attempts of a polled request.
pub const MAX_POLL_ATTEMPTS: u32 = 100_000;
/// The most idle connections kept per host.
pub const MAX_IDLE_PER_HOST: usize = 100_000;

/// Every number of `spec` outside its bound, with its field path.
pub fn check(spec: &PlanSpec) -> Vec<FieldError> {
    let mut b = Bounds(Vec::new());
    b.duration("duration", spec.duration, MAX_TEST_DURATION);
    if let Some(w) = spec.workers {
        b.at_most(
            "workers",
            u64::from(w),
            u64::from(crate::shard::MAX_WORKERS),
        );
    }
    if let Some(h) = &spec.http {
        b.duration("http.timeout", h.timeout, MAX_WAIT);
        b.duration("http.connectTimeout", h.connect_timeout, MAX_WAIT);
        if let Some(n) = h.max_idle_per_host {
            b.at_most("http.maxIdlePerHost", n as u64, MAX_IDLE_PER_HOST as u64);
        }
    }
    for (i, a) in spec.auth.iter().enumerate() {
        b.duration(
            format!("auth[{i}].refreshBefore"),
            a.refresh_before,
            MAX_TEST_DURATION,
        );
    }
    for (i, l) in spec.limits.iter().enumerate() {
        let p = format!("limits[{i}]");
        b.rate(format!("{p}.limit"), Some(l.limit));
        b.duration(format!("{p}.window"), l.window, MAX_TEST_DURATION);
        b.duration(format!("{p}.spread"), l.spread, MAX_WAIT);
        if let Some(crate::reserve::Reserve::Rate(r)) = l.reserve {
            b.rate(format!("{p}.reserve"), Some(r));
        }
    }
    if let Some(r) = &spec.retry {
        if let Some(bo) = &r.backoff {
            b.duration("retry.backoff.base", bo.base, MAX_WAIT);
            b.duration("retry.backoff.max", bo.max, MAX_WAIT);
        }
        b.duration("retry.retryAfterMax", r.retry_after_max, MAX_WAIT);
        b.duration("retry.retryAfterDefault", r.retry_after_default, MAX_WAIT);
    }
    for (i, s) in spec.scenarios.iter().enumerate() {
        b.scenario(&format!("scenarios[{i}]"), s);
    }
    for (key, list) in &spec.thresholds {
        for (j, t) in list.iter().enumerate() {
            if let crate::spec::ThresholdSpec::Full(f) = t {
                b.duration(
                    format!("thresholds.{key}[{j}].delayAbortEval"),
                    f.delay_abort_eval,
                    MAX_TEST_DURATION,
                );
            }
        }
    }
    b.0
}

struct Bounds(Vec<FieldError>);

impl Bounds {
    fn duration(&mut self, path: impl Into<String>, d: Option<HumanDuration>, max: Duration) {
        if let Some(d) = d
            && d.get() > max
        {
            self.0.push(FieldError::new(
                path,
                format!("{d} is longer than the {} allowed", HumanDuration(max)),
            ));
        }
    }

    fn at_most(&mut self, path: impl Into<String>, n: u64, max: u64) {
        if n > max {
            self.0.push(FieldError::new(
                path,
                format!("{n} is above the most allowed, {max}"),
            ));
        }
    }

    fn rate(&mut self, path: impl Into<String>, r: Option<crate::Rate>) {
        let Some(r) = r else { return };
        let path = path.into();
        if r.per() > MAX_TEST_DURATION {
            self.0.push(FieldError::new(
                path,
                format!(
                    "{r}: a rate's period is at most {}",
                    HumanDuration(MAX_TEST_DURATION)
                ),
            ));
        } else if r.as_per_sec() > MAX_RATE_PER_SEC {
            self.0.push(FieldError::new(
                path,
                format!("{r} is faster than the {MAX_RATE_PER_SEC}/s allowed"),
            ));
        }
    }

    fn scenario(&mut self, p: &str, s: &ScenarioSpec) {
        self.duration(format!("{p}.startTime"), s.start_time, MAX_TEST_DURATION);
        self.duration(format!("{p}.gracefulStop"), s.graceful_stop, MAX_WAIT);
        self.duration(format!("{p}.duration"), s.duration, MAX_TEST_DURATION);
        self.duration(
            format!("{p}.maxDuration"),
            s.max_duration,
            MAX_TEST_DURATION,
        );
        self.duration(
            format!("{p}.gracefulRampDown"),
            s.graceful_ramp_down,
            MAX_WAIT,
        );
        self.duration(format!("{p}.thinkTime"), s.think_time, MAX_WAIT);
        self.rate(format!("{p}.rate"), s.rate);
        self.rate(format!("{p}.startRate"), s.start_rate);
        let vus = u64::from(MAX_VUS);
        for (field, n) in [
            ("maxInFlight", s.max_in_flight),
            ("preAllocatedVUs", s.pre_allocated_vus),
            ("vus", s.vus),
            ("startVUs", s.start_vus),
        ] {
            if let Some(n) = n {
                self.at_most(format!("{p}.{field}"), u64::from(n), vus);
            }
        }
        if let Some(n) = s.iterations {
            self.at_most(format!("{p}.iterations"), n, MAX_ITERATIONS);
        }
        if let Some(w) = s.weight {
            self.at_most(format!("{p}.weight"), u64::from(w), u64::from(MAX_WEIGHT));
        }
        if s.stages.len() > MAX_STAGES {
            self.0.push(FieldError::new(
                format!("{p}.stages"),
                format!(
                    "{} stages: at most {MAX_STAGES} are allowed",
                    s.stages.len()
                ),
            ));
        }
        let mut total = Duration::ZERO;
        for (j, st) in s.stages.iter().enumerate() {
            let sp = format!("{p}.stages[{j}]");
            self.duration(
                format!("{sp}.duration"),
                Some(st.duration),
                MAX_TEST_DURATION,
            );
            total = total.saturating_add(st.duration.get());
            match &st.target {
                serde_json::Value::String(t) => {
                    if let Ok(r) = t.parse::<crate::Rate>() {
                        self.rate(format!("{sp}.target"), Some(r));
                    }
                }
                serde_json::Value::Number(n) => {
                    if let Some(n) = n.as_u64() {
                        self.at_most(format!("{sp}.target"), n, vus);
                    }
                }
                _ => {}
            }
        }
        if total > MAX_TEST_DURATION {
            self.0.push(FieldError::new(
                format!("{p}.stages"),
                format!(
                    "the stages last {} in all: at most {} is allowed",
                    HumanDuration(total),
                    HumanDuration(MAX_TEST_DURATION)
                ),
            ));
        }
        for (j, r) in s.requests.iter().enumerate() {
            if let Some(pl) = &r.poll {
                let pp = format!("{p}.requests[{j}].poll");
                self.duration(format!("{pp}.interval"), pl.interval, MAX_WAIT);
                self.duration(format!("{pp}.timeout"), pl.timeout, MAX_WAIT);
                if let Some(n) = pl.max_attempts {
                    self.at_most(
                        format!("{pp}.maxAttempts"),
                        u64::from(n),
                        u64::from(MAX_POLL_ATTEMPTS),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_keep_the_arithmetic_of_a_valid_plan_in_range() {
        // The longest scenario: start + duration + grace, stages summed.
        let longest = MAX_TEST_DURATION * 2 + MAX_WAIT;
        assert!(longest.as_secs() < u64::from(u32::MAX));
        // per-vu-iterations: VUs x iterations.
        assert!(u64::from(MAX_VUS).checked_mul(MAX_ITERATIONS).is_some());
        // arrivals: the fastest rate for the longest test.
        assert!(MAX_RATE_PER_SEC * MAX_TEST_DURATION.as_secs_f64() < u64::MAX as f64 / 2.0);
    }
}
