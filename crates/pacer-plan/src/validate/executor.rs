//! A scenario's executor: the fields its kind uses (any other is an error, not ignored), each
//! present and in range, and the executor built from them.

use std::time::Duration;

use super::Checker;
use crate::model::{Executor, RateStage, VuStage, defaults};
use crate::spec::{ExecutorKind as K, ScenarioSpec};
use crate::{HumanDuration, Rate, ramp::RampSchedule};

/// The executor of scenario `s` (at path `p`); `default_duration` is the plan's `duration`.
pub(super) fn executor(
    c: &mut Checker,
    p: &str,
    s: &ScenarioSpec,
    default_duration: Option<HumanDuration>,
) -> Executor {
    foreign_fields(c, p, s);
    match s.executor {
        K::ConstantArrivalRate => Executor::ConstantArrivalRate {
            rate: rate(c, p, s),
            duration: need_duration(c, p, s, default_duration),
            max_in_flight: max_in_flight(c, p, s),
        },
        K::RampingArrivalRate => {
            let (start_rate, stages) = rate_stages(c, p, s);
            Executor::RampingArrivalRate {
                start_rate,
                stages,
                max_in_flight: max_in_flight(c, p, s),
            }
        }
        K::ConstantVus => Executor::ConstantVus {
            vus: vus(c, p, s, true),
            duration: need_duration(c, p, s, default_duration),
        },
        K::RampingVus => Executor::RampingVus {
            start_vus: s.start_vus.unwrap_or(0),
            stages: vu_stages(c, p, s),
            graceful_ramp_down: s
                .graceful_ramp_down
                .map_or(defaults::GRACEFUL_RAMP_DOWN, HumanDuration::get),
        },
        K::PerVuIterations | K::SharedIterations => iterations(c, p, s),
    }
}

/// Fields that do not belong to this executor are errors, not silently ignored.
fn foreign_fields(c: &mut Checker, p: &str, s: &ScenarioSpec) {
    let kind = s.executor;
    let fields: [(&str, bool, &[K]); 11] = [
        ("rate", s.rate.is_some(), &[K::ConstantArrivalRate]),
        (
            "startRate",
            s.start_rate.is_some(),
            &[K::RampingArrivalRate],
        ),
        (
            "maxInFlight",
            s.max_in_flight.is_some(),
            &[K::ConstantArrivalRate, K::RampingArrivalRate],
        ),
        (
            "preAllocatedVUs",
            s.pre_allocated_vus.is_some(),
            &[K::ConstantArrivalRate, K::RampingArrivalRate],
        ),
        (
            "vus",
            s.vus.is_some(),
            &[K::ConstantVus, K::PerVuIterations, K::SharedIterations],
        ),
        ("startVUs", s.start_vus.is_some(), &[K::RampingVus]),
        (
            "iterations",
            s.iterations.is_some(),
            &[K::PerVuIterations, K::SharedIterations],
        ),
        (
            "maxDuration",
            s.max_duration.is_some(),
            &[K::PerVuIterations, K::SharedIterations],
        ),
        (
            "stages",
            !s.stages.is_empty(),
            &[K::RampingArrivalRate, K::RampingVus],
        ),
        (
            "gracefulRampDown",
            s.graceful_ramp_down.is_some(),
            &[K::RampingVus],
        ),
        (
            "duration",
            s.duration.is_some(),
            &[K::ConstantArrivalRate, K::ConstantVus],
        ),
    ];
    for (name, set, allowed) in fields {
        if set && !allowed.contains(&kind) {
            c.err(
                format!("{p}.{name}"),
                format!("not used by executor {}", kind.name()),
            );
        }
    }
}

/// The scenario's `duration`, or the plan's: required, above zero.
fn need_duration(
    c: &mut Checker,
    p: &str,
    s: &ScenarioSpec,
    default_duration: Option<HumanDuration>,
) -> Duration {
    match s.duration.or(default_duration).map(HumanDuration::get) {
        Some(d) if !d.is_zero() => d,
        Some(_) => {
            c.err(format!("{p}.duration"), "must be above zero");
            Duration::ZERO
        }
        None => {
            c.err(
                format!("{p}.duration"),
                "required (here or as the plan's `duration`)",
            );
            Duration::ZERO
        }
    }
}

/// `maxInFlight` (at least 1), and `preAllocatedVUs` not above it.
fn max_in_flight(c: &mut Checker, p: &str, s: &ScenarioSpec) -> u32 {
    let m = s.max_in_flight.unwrap_or(defaults::MAX_IN_FLIGHT);
    if m == 0 {
        c.err(format!("{p}.maxInFlight"), "must be at least 1");
    }
    if let Some(pre) = s.pre_allocated_vus
        && pre > m
    {
        c.err(
            format!("{p}.preAllocatedVUs"),
            format!("{pre} is above maxInFlight ({m})"),
        );
    }
    m
}

/// `vus`: at least 1; required by some executors, 1 by default for the others.
fn vus(c: &mut Checker, p: &str, s: &ScenarioSpec, required: bool) -> u32 {
    match s.vus {
        Some(0) => c.err(format!("{p}.vus"), "must be at least 1"),
        None if required => c.err(
            format!("{p}.vus"),
            format!("required by executor {}", s.executor.name()),
        ),
        _ => {}
    }
    s.vus.unwrap_or(1)
}

/// `constant-arrival-rate`'s `rate`: required, above zero.
fn rate(c: &mut Checker, p: &str, s: &ScenarioSpec) -> Rate {
    match s.rate {
        Some(r) if !r.is_zero() => r,
        Some(_) => {
            c.err(format!("{p}.rate"), "must be above zero");
            Rate::per_second(0)
        }
        None => {
            c.err(
                format!("{p}.rate"),
                "required by executor constant-arrival-rate (e.g. 40/s)",
            );
            Rate::per_second(0)
        }
    }
}

/// `ramping-arrival-rate`'s `startRate` and `stages` (rates), which must start an iteration.
fn rate_stages(c: &mut Checker, p: &str, s: &ScenarioSpec) -> (Rate, Vec<RateStage>) {
    let start_rate = s.start_rate.unwrap_or(Rate::per_second(0));
    if s.stages.is_empty() {
        c.err(
            format!("{p}.stages"),
            "required by executor ramping-arrival-rate",
        );
    }
    let mut stages = Vec::new();
    for (j, st) in s.stages.iter().enumerate() {
        let sp = format!("{p}.stages[{j}].target");
        let target = match &st.target {
            serde_json::Value::String(t) => match t.parse::<Rate>() {
                Ok(r) => r,
                Err(e) => {
                    c.err(&sp, e.to_string());
                    Rate::per_second(0)
                }
            },
            other => {
                c.err(
                    &sp,
                    format!("expected a rate such as \"40/s\", got {other}"),
                );
                Rate::per_second(0)
            }
        };
        stages.push(RateStage {
            target,
            duration: st.duration.get(),
        });
    }
    let sched = RampSchedule::new(start_rate, &stages);
    if !s.stages.is_empty() && sched.total() == 0 {
        c.err(
            format!("{p}.stages"),
            "the stages start no iteration at all",
        );
    }
    (start_rate, stages)
}

/// `ramping-vus`'s `stages` (VU counts), which must run a VU at some point.
fn vu_stages(c: &mut Checker, p: &str, s: &ScenarioSpec) -> Vec<VuStage> {
    if s.stages.is_empty() {
        c.err(format!("{p}.stages"), "required by executor ramping-vus");
    }
    let mut stages = Vec::new();
    for (j, st) in s.stages.iter().enumerate() {
        let sp = format!("{p}.stages[{j}].target");
        let target = match st.target.as_u64().map(u32::try_from) {
            Some(Ok(t)) => t,
            _ => {
                c.err(
                    &sp,
                    format!("expected a VU count (a whole number), got {}", st.target),
                );
                0
            }
        };
        stages.push(VuStage {
            target,
            duration: st.duration.get(),
        });
    }
    if stages.iter().all(|s| s.target == 0) && s.start_vus.unwrap_or(0) == 0 && !stages.is_empty() {
        c.err(
            format!("{p}.stages"),
            "every stage has 0 VUs: nothing would run",
        );
    }
    stages
}

/// `per-vu-iterations` and `shared-iterations`: `vus`, `iterations` (at least 1; shared, at
/// least one per VU) and `maxDuration`.
fn iterations(c: &mut Checker, p: &str, s: &ScenarioSpec) -> Executor {
    let kind = s.executor;
    let vus = vus(c, p, s, false);
    let iterations = match s.iterations {
        Some(0) => {
            c.err(format!("{p}.iterations"), "must be at least 1");
            0
        }
        Some(n) => n,
        None => {
            c.err(
                format!("{p}.iterations"),
                format!("required by executor {}", kind.name()),
            );
            0
        }
    };
    if kind == K::SharedIterations && u64::from(vus) > iterations && iterations > 0 {
        c.err(
            format!("{p}.vus"),
            format!("{vus} VUs for {iterations} iterations: some would never run"),
        );
    }
    let max_duration = s
        .max_duration
        .map_or(defaults::MAX_DURATION, HumanDuration::get);
    if kind == K::PerVuIterations {
        Executor::PerVuIterations {
            vus,
            iterations,
            max_duration,
        }
    } else {
        Executor::SharedIterations {
            vus,
            iterations,
            max_duration,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use serde_json::json;

    use super::*;

    fn scenario(v: serde_json::Value) -> ScenarioSpec {
        let mut v = v;
        v["name"] = json!("s");
        v["requests"] = json!([{ "name": "r", "path": "/" }]);
        serde_json::from_value(v).unwrap()
    }

    /// The executor of `s` and the paths of its errors, in order.
    fn check(s: &ScenarioSpec, default: Option<HumanDuration>) -> (Executor, Vec<String>) {
        let mut c = Checker { errors: Vec::new() };
        let e = executor(&mut c, "s", s, default);
        (e, c.errors.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn fields_of_another_executor_are_errors() {
        let s = scenario(json!({
            "executor": "constant-vus", "vus": 2, "duration": "1s",
            "rate": "1/s", "iterations": 3, "stages": [{ "target": 1, "duration": "1s" }]
        }));
        assert_eq!(check(&s, None).1, ["s.rate", "s.iterations", "s.stages"]);
    }

    #[test]
    fn the_plan_duration_stands_in_for_a_missing_one() {
        let s = scenario(json!({ "executor": "constant-vus", "vus": 2 }));
        assert_eq!(check(&s, None).1, ["s.duration"]);
        let (e, errors) = check(&s, Some(Duration::from_secs(5).into()));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            matches!(e, Executor::ConstantVus { vus: 2, duration } if duration == Duration::from_secs(5))
        );
    }

    #[test]
    fn shared_iterations_need_one_per_vu() {
        let s = scenario(json!({ "executor": "shared-iterations", "vus": 3, "iterations": 2 }));
        assert_eq!(check(&s, None).1, ["s.vus"]);
        let s = scenario(json!({ "executor": "per-vu-iterations", "vus": 3, "iterations": 2 }));
        assert!(check(&s, None).1.is_empty());
    }

    #[test]
    fn ramps_that_start_nothing_are_errors() {
        let s = scenario(json!({
            "executor": "ramping-vus", "stages": [{ "target": 0, "duration": "1s" }]
        }));
        assert_eq!(check(&s, None).1, ["s.stages"]);
        let s = scenario(json!({
            "executor": "ramping-arrival-rate", "stages": [{ "target": "fast", "duration": "1s" }]
        }));
        assert_eq!(check(&s, None).1, ["s.stages[0].target", "s.stages"]);
    }
}
