//! The forecast `pacer validate` prints after a valid plan's limits: what the scenarios want
//! of each limit, what pacer will pace it at, whether requests will queue, how long the run
//! will take, how many tokens it will fetch, which limit binds first and what to change
//! (the arithmetic is `pacer_plan::forecast`; this is its wording).

use std::time::Duration;

use pacer_limiter::fleet::fleet_pacing;
use pacer_limiter::gcra::{DEFAULT_SPREAD, pacing};
use pacer_plan::Plan;
use pacer_plan::forecast::{Assumptions, Forecast, forecast};
use pacer_plan::spec::LimitScope;

use crate::validate::per_sec;

/// The forecast's lines for `plan` (indented under the plan's line by the caller).
/// `workers`: the processes that will run it (the plan's, or a LoadTest's).
pub fn lines(plan: &Plan, workers: u32, latency: Duration) -> Vec<String> {
    // Several workers pace a `scope: fleet` limit as one fleet (through Redis, or through the
    // controller that serves it without Redis): the lease hold is part of the spread.
    // A `scope: worker` limit is kept by each worker on its own: the test gets it N times.
    let fleet = |l: &pacer_plan::Limit| workers > 1 && l.scope == LimitScope::Fleet;
    let per_worker = |l: &pacer_plan::Limit| workers > 1 && l.scope == LimitScope::Worker;
    let pacings: Vec<_> = plan
        .limits
        .iter()
        .map(|l| {
            if fleet(l) {
                fleet_pacing(l, DEFAULT_SPREAD)
            } else if per_worker(l) {
                let mut p = pacing(l, DEFAULT_SPREAD);
                p.rate *= f64::from(workers);
                p.burst = p.burst.saturating_mul(workers);
                p
            } else {
                pacing(l, DEFAULT_SPREAD)
            }
        })
        .collect();
    let f = forecast(plan, &pacings, Assumptions { latency });
    let mut out = vec![format!(
        "forecast (assuming {} per answer, --latency):",
        humantime::format_duration(latency)
    )];
    if workers > 1 || plan.spec.budget.is_some() {
        out.push(fleet_note(plan, workers));
    }
    for s in &f.scenarios {
        let model = if s.open { "arrival rate" } else { "VUs" };
        let mut line = format!(
            "  scenario {} ({model}): wants {}, will send {}",
            s.name,
            per_sec(s.wanted),
            per_sec(s.expected)
        );
        if s.waiting > 0.0 {
            if s.open {
                line.push_str(&format!(
                    "; {} of its arrivals queue on the limiter (maxInFlight bounds the queue, \
                     then iterations are dropped)",
                    percent(s.waiting)
                ));
            } else {
                line.push_str(&format!(
                    "; VUs will wait on the limiter ~{} of the time",
                    percent(s.waiting)
                ));
            }
        }
        out.push(line);
    }
    for (i, l) in f.limits.iter().enumerate() {
        let binds = if f.binding == Some(i) {
            " - binds first"
        } else if l.load() > 1.0 {
            " - also over its rate"
        } else {
            ""
        };
        let by_fleet = match plan.limits.get(i) {
            Some(l) if fleet(l) => " by the fleet".to_string(),
            Some(l) if per_worker(l) => format!(
                " ({workers} workers x {} each: scope: worker, so the server gets it {workers} \
                 times if it counts them together)",
                per_sec(pacing(l, DEFAULT_SPREAD).rate)
            ),
            _ => String::new(),
        };
        out.push(format!(
            "  limit {}: wanted {}, paced at {}{by_fleet} (burst {}), load {:.2}x{binds}",
            l.name,
            per_sec(l.wanted),
            per_sec(l.paced),
            l.burst,
            l.load(),
        ));
    }
    out.extend(data_lines(plan));
    out.push(format!(
        "  run time: ~{} (graceful stops included where requests are still queued)",
        humantime::format_duration(round_ms(f.run_time))
    ));
    for (name, n) in &f.token_fetches {
        out.push(format!(
            "  tokens: {name}: {n} fetch{} at the start, and one more each time a token \
             expires (its lifetime is the server's expires_in, less refreshBefore)",
            if *n == 1 { "" } else { "es" }
        ));
    }
    out.push(verdict(&f));
    out
}

/// A line per test data source: its rows, and whether a `unique` one has enough for the
/// iterations that take a row (too few stop the run, failed: docs/plan-format.md "Test data").
fn data_lines(plan: &Plan) -> Vec<String> {
    use pacer_plan::data::{DataMode, iterations_taking};
    plan.data
        .iter()
        .map(|d| {
            let mode = match d.mode {
                DataMode::Unique => "unique",
                DataMode::Cycle => "cycle",
                DataMode::Random => "random",
            };
            let Some(t) = &d.table else {
                return format!(
                    "  data {}: {mode}, rows from the ConfigMap of spec.data",
                    d.name
                );
            };
            let rows = t.rows.len() as u64;
            let need = match (d.mode, iterations_taking(plan, &d.name)) {
                (DataMode::Unique, Some(n)) if n > rows => format!(
                    "; the plan starts {n} iterations that take a row: the run will stop, failed, after {rows}"
                ),
                (DataMode::Unique, Some(n)) => format!("; {n} iterations take a row"),
                (DataMode::Unique, None) => {
                    "; VUs take rows as fast as they iterate: the run stops, failed, when none is left"
                        .to_string()
                }
                _ => String::new(),
            };
            format!("  data {}: {rows} rows, {mode}{need}", d.name)
        })
        .collect()
}

/// The closing line: which limit binds and what to change, or that nothing will queue.
fn verdict(f: &Forecast) -> String {
    match (f.binding, f.suggestion()) {
        (Some(i), Some(s)) => {
            let l = &f.limits[i];
            format!(
                "  {} binds: paced at {}, requests will wait on pacer's limiter ~{} of the \
                 time; {s}",
                l.name,
                per_sec(l.paced),
                percent(1.0 - f.slowdown)
            )
        }
        _ => "  no limit binds: requests should not queue on pacer's limiter".into(),
    }
}

/// What a fleet's forecast is: the whole test's, its limits shared by the workers.
fn fleet_note(plan: &Plan, workers: u32) -> String {
    let budget = match &plan.spec.budget {
        Some(b) => {
            let weight = plan.weight().map_or(String::new(), |w| {
                format!(
                    " (with weight {w}: its share of each limit is {w} / the sum of the weights \
                     of the tests that want more than they get)"
                )
            });
            format!(
                "budget {b:?} is shared with every other test naming it, so this test may get \
                 less than these rates while others run{weight}"
            )
        }
        None => String::new(),
    };
    if workers > 1 {
        let sep = if budget.is_empty() { "" } else { "; " };
        format!(
            "  for the whole test ({workers} workers): each scope: fleet limit is one budget \
             the workers share (through --redis, or served by the controller), paced with \
             the lease hold in its spread{sep}{budget}"
        )
    } else {
        format!("  {budget}")
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_story_binds_on_its_per_token_limit() {
        let plan = pacer_plan::load_str(
            "name: u\ntarget: http://api\nlimits:\n  - {name: per-token, limit: 300/min, burst: 5}\nscenarios:\n  - name: q\n    executor: constant-vus\n    vus: 50\n    duration: 20s\n    gracefulStop: 2s\n    requests: [{name: q, method: POST, path: /q}]\n",
            "plan.yaml",
            &Default::default(),
        )
        .unwrap();
        let out = lines(&plan, 1, Duration::from_secs(1)).join("\n");
        assert!(
            out.contains("limit per-token: wanted 50.0/s, paced at 4.91/s"),
            "{out}"
        );
        assert!(out.contains("run time: ~22s"), "{out}");
        assert!(
            out.contains("per-token binds: paced at 4.91/s, requests will wait on pacer's limiter ~90% of the time; consider 5 VUs or constant-arrival-rate 4.9/s"),
            "{out}"
        );
    }
}
