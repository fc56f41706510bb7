//! The forecast before a run: from the plan alone, what each scenario asks for, what each
//! declared limit will pace at, whether requests will queue on pacer's limiter (and what share
//! of the time VUs will wait), how long the run will take with its graceful stops, how many
//! tokens it will fetch, which limit binds first, and what to change. Plain arithmetic:
//! `pacer validate` prints it, and `tests/tests/forecast.rs` checks it against real runs.
//!
//! The model: a closed-model scenario (VUs) wants `vus / (thinkTime + n · latency)` iterations
//! per second for its `n` requests an iteration, `latency` being an assumption (the server's
//! answer time, [`DEFAULT_LATENCY`] unless told); an open-model one (arrival rates) wants its
//! rate. Each limit gets the requests it matches; the limit with the smallest paced/wanted
//! ratio binds, and every scenario is slowed by that ratio (a closed model slows itself, its
//! VUs waiting on the limiter that share of the time; an open model queues). The rate a limit
//! is paced at is the caller's ([`crate::shape::pace`] through the limiter, so what runs).

use std::time::Duration;

use crate::model::{AuthRef, Executor, Plan, Scenario};
use crate::shape::Pacing;
use crate::spec::{AuthKind, Share};

/// The server's answer time assumed when the caller does not know better: an API's typical
/// JSON answer, and what pacer mock's default latency (uniform 5-50 ms) plus loopback costs,
/// rounded up.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(100);

/// A limit is said to bind when its scenarios want more than this share of its paced rate:
/// below it, bursts and latency noise rarely make requests wait.
const BINDS_AT: f64 = 1.0;

/// What the forecast assumes beyond the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assumptions {
    /// The server's answer time per request.
    pub latency: Duration,
}

impl Default for Assumptions {
    fn default() -> Self {
        Self {
            latency: DEFAULT_LATENCY,
        }
    }
}

/// One scenario's forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioForecast {
    pub name: String,
    /// Requests per second the scenario would send with no limit.
    pub wanted: f64,
    /// Requests per second it will send, slowed by the binding limit.
    pub expected: f64,
    /// An open model (arrival rates): when slowed, its requests queue rather than its VUs.
    pub open: bool,
    /// Share of the time its VUs wait on pacer's limiter (closed model), or the share of its
    /// arrivals that queue (open model).
    pub waiting: f64,
    /// When the scenario ends, from the start of the run, graceful stop included when the
    /// end finds requests queued.
    pub ends_after: Duration,
    /// VUs (closed model), for the suggestion.
    pub vus: Option<u32>,
    /// The time one iteration takes with no limit (think time and answers).
    pub iteration_time: Duration,
    /// Requests per iteration.
    pub requests_per_iteration: usize,
}

/// One declared limit's forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitForecast {
    pub name: String,
    /// Requests per second the scenarios want of it.
    pub wanted: f64,
    /// The rate pacer paces it at.
    pub paced: f64,
    pub burst: u32,
    /// Requests per second it will carry.
    pub expected: f64,
}

impl LimitForecast {
    /// wanted / paced: above 1 the limit binds.
    pub fn load(&self) -> f64 {
        if self.paced > 0.0 {
            self.wanted / self.paced
        } else {
            0.0
        }
    }
}

/// The whole forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    pub scenarios: Vec<ScenarioForecast>,
    pub limits: Vec<LimitForecast>,
    /// Index into `limits` of the one that binds first, if any does.
    pub binding: Option<usize>,
    /// How much every scenario is slowed (1: not at all).
    pub slowdown: f64,
    /// The run's expected length, graceful stops included where requests are still queued.
    pub run_time: Duration,
    /// Tokens fetched per credential (at least; a token shorter-lived than the run is
    /// fetched again).
    pub token_fetches: Vec<(String, u64)>,
    pub assumptions: Assumptions,
}

/// The forecast of `plan`, with `pacings[i]` the pacing of `plan.limits[i]`.
pub fn forecast(plan: &Plan, pacings: &[Pacing], a: Assumptions) -> Forecast {
    let latency = a.latency.as_secs_f64();
    // Iterations per second each scenario wants.
    let iteration_rates: Vec<f64> = plan
        .scenarios
        .iter()
        .map(|s| wanted_iterations(s, latency))
        .collect();
    let mut limits: Vec<LimitForecast> = plan
        .limits
        .iter()
        .zip(pacings)
        .map(|(l, p)| {
            let wanted = plan
                .scenarios
                .iter()
                .zip(&iteration_rates)
                .map(|(s, rate)| {
                    let matched = s
                        .requests
                        .iter()
                        .filter(|r| l.matches(&r.method, &literal_prefix(&r.path), &r.name))
                        .count();
                    rate * matched as f64
                })
                .sum();
            LimitForecast {
                name: l.name.clone(),
                wanted,
                paced: p.rate,
                burst: p.burst,
                expected: wanted,
            }
        })
        .collect();
    let binding = limits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.wanted > 0.0 && l.load() > BINDS_AT)
        .max_by(|a, b| a.1.load().total_cmp(&b.1.load()))
        .map(|(i, _)| i);
    let slowdown = binding.map_or(1.0, |i| 1.0 / limits[i].load());
    for l in &mut limits {
        l.expected = l.wanted * slowdown;
    }
    let scenarios: Vec<ScenarioForecast> = plan
        .scenarios
        .iter()
        .zip(&iteration_rates)
        .map(|(s, rate)| scenario_forecast(s, *rate, slowdown, latency))
        .collect();
    let run_time = scenarios
        .iter()
        .map(|s| s.ends_after)
        .max()
        .unwrap_or_default();
    Forecast {
        token_fetches: token_fetches(plan),
        scenarios,
        limits,
        binding,
        slowdown,
        run_time,
        assumptions: a,
    }
}

/// The part of a path template before its first placeholder: what `pathPrefix` can be
/// matched against before the run.
fn literal_prefix(t: &crate::Template) -> String {
    let mut out = String::new();
    for p in t.parts() {
        match p {
            crate::Part::Lit(s) => out.push_str(s),
            _ => break,
        }
    }
    out
}

/// Iterations per second a scenario wants with no limit.
fn wanted_iterations(s: &Scenario, latency: f64) -> f64 {
    let per_vu = 1.0 / iteration_secs(s, latency).max(f64::MIN_POSITIVE);
    match &s.executor {
        Executor::ConstantArrivalRate { rate, .. } => rate.as_per_sec(),
        Executor::RampingArrivalRate { .. } => {
            let secs = s.executor.max_duration().as_secs_f64();
            match s.executor.planned_iterations() {
                Some(n) if secs > 0.0 => n as f64 / secs,
                _ => 0.0,
            }
        }
        Executor::ConstantVus { vus, .. }
        | Executor::PerVuIterations { vus, .. }
        | Executor::SharedIterations { vus, .. } => f64::from(*vus) * per_vu,
        Executor::RampingVus { .. } => average_vus(&s.executor) * per_vu,
    }
}

/// One iteration's time with no limit: its think time and an answer per request.
fn iteration_secs(s: &Scenario, latency: f64) -> f64 {
    s.think_time.as_secs_f64() + latency * s.requests.len() as f64
}

/// The time-weighted VUs of a ramping-vus executor (linear ramps).
fn average_vus(e: &Executor) -> f64 {
    let Executor::RampingVus {
        start_vus, stages, ..
    } = e
    else {
        return 0.0;
    };
    let (mut area, mut secs, mut from) = (0.0, 0.0, f64::from(*start_vus));
    for st in stages {
        let d = st.duration.as_secs_f64();
        let to = f64::from(st.target);
        area += (from + to) / 2.0 * d;
        secs += d;
        from = to;
    }
    if secs > 0.0 { area / secs } else { from }
}

fn scenario_forecast(
    s: &Scenario,
    iteration_rate: f64,
    slowdown: f64,
    latency: f64,
) -> ScenarioForecast {
    let n = s.requests.len();
    let wanted = iteration_rate * n as f64;
    let achieved = iteration_rate * slowdown;
    let queued = slowdown < 1.0;
    let iteration = iteration_secs(s, latency);
    let graceful = s.graceful_stop.as_secs_f64();
    // At the end, an iteration in flight needs one iteration's time under load to finish
    // (the whole queue ahead of it when slowed); the graceful stop cuts it.
    let tail = |vus: f64| {
        let one = if queued && achieved > 0.0 {
            vus / achieved
        } else {
            iteration
        };
        one.min(graceful)
    };
    let (open, vus, active, tail) = match &s.executor {
        Executor::ConstantVus { vus, duration } => (
            false,
            Some(*vus),
            duration.as_secs_f64(),
            tail(f64::from(*vus)),
        ),
        Executor::RampingVus {
            stages, start_vus, ..
        } => {
            let last = stages.last().map_or(*start_vus, |st| st.target);
            (
                false,
                Some(
                    stages
                        .iter()
                        .map(|st| st.target)
                        .max()
                        .unwrap_or(0)
                        .max(*start_vus),
                ),
                s.executor.max_duration().as_secs_f64(),
                tail(f64::from(last)),
            )
        }
        Executor::PerVuIterations {
            vus, max_duration, ..
        }
        | Executor::SharedIterations {
            vus, max_duration, ..
        } => {
            let total = s.executor.planned_iterations().unwrap_or(0) as f64;
            let needed = if achieved > 0.0 {
                total / achieved
            } else {
                f64::INFINITY
            };
            let cap = max_duration.as_secs_f64();
            if needed <= cap {
                (false, Some(*vus), needed, 0.0)
            } else {
                (false, Some(*vus), cap, tail(f64::from(*vus)))
            }
        }
        Executor::ConstantArrivalRate { max_in_flight, .. }
        | Executor::RampingArrivalRate { max_in_flight, .. } => {
            let active = s.executor.max_duration().as_secs_f64();
            // The backlog at the end: what arrived beyond the paced rate, at most maxInFlight.
            let backlog = (iteration_rate - achieved).max(0.0) * active;
            let backlog = backlog.min(f64::from(*max_in_flight));
            let drain = if queued && achieved > 0.0 {
                backlog / achieved
            } else {
                iteration
            };
            (true, None, active, drain.min(graceful))
        }
    };
    let ends = s.start_time.as_secs_f64() + active + tail;
    ScenarioForecast {
        name: s.name.clone(),
        wanted,
        expected: wanted * slowdown,
        open,
        waiting: 1.0 - slowdown,
        ends_after: Duration::try_from_secs_f64(ends).unwrap_or(Duration::MAX),
        vus,
        iteration_time: Duration::try_from_secs_f64(iteration).unwrap_or(Duration::MAX),
        requests_per_iteration: n,
    }
}

/// Tokens fetched per OAuth2 credential a scenario or request uses: one for the fleet
/// (`share: fleet`), one per worker (`share: worker`).
fn token_fetches(plan: &Plan) -> Vec<(String, u64)> {
    plan.auth
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            a.kind == AuthKind::OAuth2ClientCredentials
                && plan.scenarios.iter().any(|s| {
                    s.requests.iter().any(|r| match r.auth {
                        AuthRef::Named(n) => n == *i,
                        AuthRef::Inherit => s.auth == Some(*i),
                        AuthRef::None => false,
                    })
                })
        })
        .map(|(_, a)| {
            let n = match a.share {
                Share::Fleet => 1,
                Share::Worker => u64::from(plan.workers.max(1)),
            };
            (a.name.clone(), n)
        })
        .collect()
}

impl Forecast {
    /// What to change when a limit binds: the VUs that would just fill the paced rate, or
    /// the arrival rate that matches it.
    pub fn suggestion(&self) -> Option<String> {
        let l = &self.limits[self.binding?];
        // Scenarios that use this limit, largest wanted first.
        let s = self
            .scenarios
            .iter()
            .max_by(|a, b| a.wanted.total_cmp(&b.wanted))?;
        let per_iteration = s.requests_per_iteration.max(1) as f64;
        // Round the rate down to a tenth, so the suggestion stays under the limit.
        let rate = (l.paced * 10.0).floor() / 10.0;
        let iteration_rate = rate / per_iteration;
        let arrival = if per_iteration > 1.0 {
            format!("constant-arrival-rate {iteration_rate:.2}/s (iterations)")
        } else {
            format!("constant-arrival-rate {rate:.1}/s")
        };
        Some(match s.vus {
            Some(_) => {
                let vus = (iteration_rate * s.iteration_time.as_secs_f64())
                    .ceil()
                    .max(1.0);
                let noun = if vus > 1.0 { "VUs" } else { "VU" };
                format!("consider {vus:.0} {noun} or {arrival}")
            }
            None => format!("consider {arrival}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Plan {
        crate::load_str(yaml, "plan.yaml", &Default::default()).unwrap()
    }

    fn pacings(p: &Plan) -> Vec<Pacing> {
        p.limits
            .iter()
            .map(|l| l.pacing(Duration::from_millis(100)))
            .collect()
    }

    const USER_STORY: &str = "name: u\ntarget: http://api\nlimits:\n  - {name: per-token, limit: 300/min, burst: 5}\nscenarios:\n  - name: q\n    executor: constant-vus\n    vus: 50\n    duration: 20s\n    gracefulStop: 2s\n    requests: [{name: q, method: POST, path: /api/v2/q}]\n";

    #[test]
    fn fifty_vus_against_300_per_minute_bind_and_wait() {
        let p = plan(USER_STORY);
        let f = forecast(&p, &pacings(&p), Assumptions::default());
        assert_eq!(f.binding, Some(0));
        let l = &f.limits[0];
        assert!((l.paced - 295.0 / 60.1).abs() < 1e-9, "{l:?}");
        assert!((l.wanted - 500.0).abs() < 1e-9);
        let s = &f.scenarios[0];
        assert!(s.waiting > 0.98, "{s:?}");
        // 20 s, then the queue of 50 VUs needs ~10 s: cut by the 2 s graceful stop.
        assert_eq!(f.run_time, Duration::from_secs(22));
        assert_eq!(
            f.suggestion().as_deref(),
            Some("consider 1 VU or constant-arrival-rate 4.9/s")
        );
        let slow = Assumptions {
            latency: Duration::from_secs(1),
        };
        let f = forecast(&p, &pacings(&p), slow);
        assert_eq!(
            f.suggestion().as_deref(),
            Some("consider 5 VUs or constant-arrival-rate 4.9/s")
        );
    }

    #[test]
    fn an_arrival_rate_under_the_limit_does_not_bind() {
        let p = plan(
            "name: u\ntarget: http://api\nlimits:\n  - {name: l, limit: 10/s, match: {pathPrefix: /a}}\nscenarios:\n  - name: q\n    executor: constant-arrival-rate\n    rate: 4/s\n    duration: 10s\n    requests: [{name: a, path: /a}, {name: b, path: /b}]\n",
        );
        let f = forecast(&p, &pacings(&p), Assumptions::default());
        assert_eq!(f.binding, None);
        assert!((f.limits[0].wanted - 4.0).abs() < 1e-9);
        assert!((f.scenarios[0].wanted - 8.0).abs() < 1e-9);
        assert_eq!(f.slowdown, 1.0);
        // 10 s and one iteration (two answers) to finish.
        assert_eq!(f.run_time, Duration::from_millis(10_200));
        assert!(f.suggestion().is_none());
    }

    #[test]
    fn shared_iterations_end_when_done_at_the_paced_rate() {
        let p = plan(
            "name: u\ntarget: http://api\nlimits:\n  - {name: l, limit: 10/s, burst: 1, shape: token-bucket}\nscenarios:\n  - name: q\n    executor: shared-iterations\n    vus: 4\n    iterations: 100\n    requests: [{name: a, path: /a}]\n",
        );
        let f = forecast(&p, &pacings(&p), Assumptions::default());
        assert_eq!(f.binding, Some(0));
        let secs = f.run_time.as_secs_f64();
        assert!((secs - 100.0 / f.limits[0].paced).abs() < 0.01, "{secs}");
    }
}
