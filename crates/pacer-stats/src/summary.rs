//! The end-of-test summary: the numbers people read, reduced from a [`Snapshot`].
//!
//! [`Summary`] is also the `--summary-json` schema, so its fields are documented and every
//! number is finite: "no data" is `null` (an `Option`), never NaN or a misleading zero.

use std::collections::BTreeMap;
use std::time::Duration;

use pacer_plan::spec::LimitScope;
use pacer_plan::threshold::Threshold;
use serde::Serialize;

use crate::eval::{ThresholdResult, Verdict, evaluate};
use crate::hist::Hist;
use crate::snapshot::{RequestStats, ScenarioStats, ServerLimitHeaders, Snapshot};

/// The end-of-test summary (`--summary-json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The plan's name.
    pub name: String,
    /// Test time the rates are computed over, seconds.
    pub elapsed_secs: f64,
    /// The verdict ([`Verdict`]): every threshold was measured and held, and the run made
    /// at least one request. A threshold without data fails it.
    pub passed: bool,
    /// Why the run did not pass, one line each (empty when it passed).
    pub verdict_reasons: Vec<String>,
    pub thresholds: Vec<ThresholdResult>,
    /// All requests merged (`scenario` and `request` are `"*"`).
    pub totals: RequestRow,
    /// One row per request of each scenario, in plan order.
    pub requests: Vec<RequestRow>,
    /// All scenarios merged (`name` is `"*"`).
    pub scenario_totals: ScenarioRow,
    /// One row per scenario, in plan order.
    pub scenarios: Vec<ScenarioRow>,
    /// Where the time of all logical requests went.
    pub time: TimeBreakdown,
    pub retries: RetrySummary,
    /// 429 responses by the plan limit the request fell under (one 429 counts for each limit
    /// its request matched), most first.
    pub throttled_by_limit: Vec<LimitThrottled>,
    /// 429 responses by the limit the server named in them, most first: the answer to
    /// "which limit did we hit?" even when the plan did not declare it.
    pub throttled_by_server_limit: Vec<(String, u64)>,
    /// The plan's limits and how pacer paced them (filled by the runner from its limiter;
    /// empty when the plan declares none).
    pub limits: Vec<LimitPacing>,
    /// Retry-After values the server sent.
    pub retry_after: RetryAfterSummary,
    /// Token endpoint use, by credential.
    pub token_fetches: Vec<TokenFetchRow>,
    /// The last rate-limit headers the server sent, if any.
    pub server_limits: Option<ServerLimitHeaders>,
    /// Records ignored because they named no known scenario/request (an engine bug if > 0).
    pub invalid_records: u64,
    /// Hosts the plan let requests go to besides its target (`http.allowHosts`, sent without
    /// credentials; filled by the runner from the plan).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// The evidence ledger's counts: attempts that ended in a 429, a 5xx, a timeout or a
    /// transport error, by cause (all of them, also those beyond the ledger's bound).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evidence: BTreeMap<crate::ledger::LedgerCause, u64>,
}

/// A distribution in milliseconds; every field is `null` when there were no samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrendSummary {
    pub count: u64,
    pub min: Option<f64>,
    pub avg: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    #[serde(rename = "p99.9")]
    pub p99_9: Option<f64>,
    pub max: Option<f64>,
}

impl TrendSummary {
    /// From a histogram in `unit_per_ms` units per millisecond (1000 for microseconds).
    fn from_hist(h: &Hist, unit_per_ms: f64) -> Self {
        let ms = |v: Option<u64>| v.map(|v| v as f64 / unit_per_ms);
        Self {
            count: h.count(),
            min: ms(h.min()),
            avg: h.mean().map(|m| m / unit_per_ms),
            p50: ms(h.percentile(50.0)),
            p90: ms(h.percentile(90.0)),
            p95: ms(h.percentile(95.0)),
            p99: ms(h.percentile(99.0)),
            p99_9: ms(h.percentile(99.9)),
            max: ms(h.max()),
        }
    }
}

/// One request (or the totals).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRow {
    pub scenario: String,
    pub request: String,
    /// HTTP exchanges, retries included.
    pub http_reqs: u64,
    /// `http_reqs` per second of elapsed time.
    pub rate_per_sec: f64,
    /// Logical requests (after all their attempts).
    pub requests: u64,
    /// Logical requests whose final result failed.
    pub failed: u64,
    /// `failed / requests`; `null` without requests.
    pub failed_rate: Option<f64>,
    /// Attempts answered 429.
    pub throttled: u64,
    /// `throttled / http_reqs`; `null` without attempts.
    pub throttled_rate: Option<f64>,
    pub retries: u64,
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// `checks_passed / (passed + failed)`; `null` without checks.
    pub checks_rate: Option<f64>,
    /// Bytes.
    pub data_sent: u64,
    pub data_received: u64,
    /// Attempts by HTTP status.
    pub status: BTreeMap<u16, u64>,
    /// Attempts by transport error kind.
    pub errors: BTreeMap<String, u64>,
    /// `http_req_duration`: intended start to end of the final response, per logical request.
    pub duration_ms: TrendSummary,
    /// `http_req_service_time`: send to end of response, per attempt.
    pub service_time_ms: TrendSummary,
    /// Send lag: from the intended start to the first attempt's send, pacer's own limiter
    /// wait (pacing, Retry-After pauses) excluded, per logical request that was sent. In an
    /// arrival-rate executor, how late the generator sent against its schedule.
    pub send_lag_ms: TrendSummary,
}

/// One scenario (or all of them).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioRow {
    pub name: String,
    /// Completed iterations.
    pub iterations: u64,
    pub iterations_per_sec: f64,
    pub iterations_failed: u64,
    /// Iterations cut short by the end of the test.
    pub interrupted: u64,
    /// Arrivals not started because maxInFlight was full.
    pub dropped_iterations: u64,
    pub iteration_duration_ms: TrendSummary,
}

/// Total time of one kind, and its share of the four kinds together.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimeShare {
    pub total_secs: f64,
    /// 0..1; 0 when no time was recorded at all.
    pub share: f64,
}

/// "Where the time went": summed over all requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimeBreakdown {
    /// Server and network: send to end of response, all attempts.
    pub server: TimeShare,
    /// Waiting on pacer's own limiter (pacing).
    pub limiter_wait: TimeShare,
    /// Waiting while a scope was paused by a Retry-After.
    pub paused: TimeShare,
    /// Sleeping between retries.
    pub backoff: TimeShare,
    /// Sum of `http_req_duration` over logical requests, for reference (the rest of it is
    /// scheduling delay and client overhead).
    pub request_total_secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetrySummary {
    /// Attempts beyond the first.
    pub retries: u64,
    pub not_retried: u64,
    pub succeeded_after_retry: u64,
    /// Attempts exhausted while still failing.
    pub gave_up: u64,
    pub not_retryable: u64,
}

/// One declared limit: what the server allows, what pacer paced to, and what happened.
/// Workers send theirs to the controller as JSON ([`merge_limit_pacing`] combines them).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct LimitPacing {
    pub name: String,
    /// The server's limit as declared (`300/min`, `600/10s`).
    pub declared: String,
    /// The server's counting window, seconds.
    pub window_secs: f64,
    pub burst: u32,
    /// `worker` or `fleet`, the plan's scope (serde's name is the plan's word).
    pub scope: LimitScope,
    /// The rate pacer paced to (per second), from the accuracy bound.
    pub pacing_rate: f64,
    /// Share of the declared rate kept as margin.
    pub margin: f64,
    pub adaptive: bool,
    /// Adaptive limits: the rate at the end, and the rate measured to pass without refusals
    /// over a recent stretch (`None`: nothing was learned; never the ceiling).
    pub current_rate: Option<f64>,
    pub sustainable_rate: Option<f64>,
    /// Retry-After pauses of this limit's scope, and the time they held it.
    pub pauses: u64,
    pub paused_secs: f64,
    /// `scope: fleet` limits kept through Redis (`pacer run --redis`): this process's view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetPacing>,
    /// What the server's rate-limit headers last said of this limit, and how much of it others
    /// (traffic outside pacer) used; `None` when the server sent no remaining count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSaid>,
}

/// What the server's rate-limit headers said of a limit (docs/rate-limiting.md, "Headroom").
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerSaid {
    /// Requests the server last said were left (everyone's use counted).
    pub remaining: u64,
    /// The limit it states, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Others' use of the limit (requests per second) as measured from the server's count
    /// less pacer's own requests (fixed windows; 0 when not measured).
    pub others_rate: f64,
}

/// How a fleet process used the shared budget in Redis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct FleetPacing {
    /// The most processes seen in the fleet at once.
    pub workers: u32,
    /// Commands this process sent to Redis.
    pub redis_calls: u64,
    /// Seconds in safe mode (Redis failing: a local limiter at a safe share).
    pub safe_mode_secs: f64,
    /// Seconds sending was paused because Redis failed past the safe-mode bound.
    pub unavailable_secs: f64,
    /// Why sending paused, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitThrottled {
    /// Index of the limit in the plan.
    pub index: u32,
    /// Its name (`limit#N` when the index is unknown).
    pub name: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetryAfterSummary {
    /// Usable Retry-After headers seen.
    pub count: u64,
    /// Retry-After headers present but unusable.
    pub malformed: u64,
    /// The values, milliseconds.
    pub ms: TrendSummary,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenFetchRow {
    pub credential: String,
    pub fetches: u64,
    pub wait_total_ms: f64,
    /// `null` without fetches.
    pub wait_avg_ms: Option<f64>,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn request_row(scenario: &str, request: &str, r: &RequestStats, secs: f64) -> RequestRow {
    RequestRow {
        scenario: scenario.to_string(),
        request: request.to_string(),
        http_reqs: r.attempts,
        rate_per_sec: per_sec(r.attempts, secs),
        requests: r.requests,
        failed: r.failed,
        failed_rate: ratio(r.failed, r.requests),
        throttled: r.throttled,
        throttled_rate: ratio(r.throttled, r.attempts),
        retries: r.retries,
        checks_passed: r.checks_passed,
        checks_failed: r.checks_failed,
        checks_rate: ratio(
            r.checks_passed,
            r.checks_passed.saturating_add(r.checks_failed),
        ),
        data_sent: r.bytes_sent,
        data_received: r.bytes_received,
        status: r.status.clone(),
        errors: r.errors.clone(),
        duration_ms: TrendSummary::from_hist(&r.duration, 1000.0),
        service_time_ms: TrendSummary::from_hist(&r.service_time, 1000.0),
        send_lag_ms: TrendSummary::from_hist(&r.send_lag, 1000.0),
    }
}

fn scenario_row(name: &str, s: &ScenarioStats, secs: f64) -> ScenarioRow {
    ScenarioRow {
        name: name.to_string(),
        iterations: s.iterations,
        iterations_per_sec: per_sec(s.iterations, secs),
        iterations_failed: s.iterations_failed,
        interrupted: s.interrupted,
        dropped_iterations: s.dropped_iterations,
        iteration_duration_ms: TrendSummary::from_hist(&s.iteration_duration, 1000.0),
    }
}

fn time_breakdown(t: &RequestStats) -> TimeBreakdown {
    let parts = [
        t.service_time_us_sum,
        t.limiter_wait_us_sum,
        t.paused_us_sum,
        t.backoff_us_sum,
    ];
    // u128: four saturated u64 sums must not overflow into a wrong share.
    let all: u128 = parts.iter().map(|&p| u128::from(p)).sum();
    let share = |us: u64| TimeShare {
        total_secs: us as f64 / 1e6,
        share: if all > 0 { us as f64 / all as f64 } else { 0.0 },
    };
    TimeBreakdown {
        server: share(parts[0]),
        limiter_wait: share(parts[1]),
        paused: share(parts[2]),
        backoff: share(parts[3]),
        request_total_secs: t.duration_us_sum as f64 / 1e6,
    }
}

/// A plan's summary over `snapshot`: [`summarize`] with the plan's name, thresholds and limit
/// names, and the hosts it allows besides its target. The limits table (`Summary::limits`) is
/// the caller's: one process's pacing, or the fleet's merged.
pub fn summarize_plan(plan: &pacer_plan::Plan, snapshot: &Snapshot, elapsed: Duration) -> Summary {
    let limit_names: Vec<String> = plan.limits.iter().map(|l| l.name.clone()).collect();
    let mut summary = summarize(
        &plan.name,
        snapshot,
        elapsed,
        &plan.thresholds,
        &limit_names,
    );
    summary.allowed_hosts = plan
        .http
        .allow_hosts
        .iter()
        .map(|h| h.to_string())
        .collect();
    summary
}

/// Reduce a snapshot (normally the final one) to the summary, evaluating `thresholds`.
/// `limit_names[i]` names plan limit `i` for the 429 breakdown.
pub fn summarize(
    name: &str,
    snapshot: &Snapshot,
    elapsed: Duration,
    thresholds: &[Threshold],
    limit_names: &[String],
) -> Summary {
    let secs = elapsed.as_secs_f64();
    let total = snapshot.total();
    let mut scenario_total = ScenarioStats::default();
    for s in &snapshot.scenarios {
        scenario_total.absorb(&s.stats);
    }
    let thresholds = evaluate(thresholds, snapshot, elapsed);
    let mut throttled_by_limit: Vec<LimitThrottled> = total
        .throttled_by_limit
        .iter()
        .map(|(&index, &count)| LimitThrottled {
            index,
            name: usize::try_from(index)
                .ok()
                .and_then(|i| limit_names.get(i))
                .cloned()
                .unwrap_or_else(|| format!("limit#{index}")),
            count,
        })
        .collect();
    throttled_by_limit.sort_by(|a, b| b.count.cmp(&a.count).then(a.index.cmp(&b.index)));
    let mut throttled_by_server_limit: Vec<(String, u64)> = total
        .throttled_by_server_limit
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    throttled_by_server_limit.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let verdict = Verdict::of(&thresholds, snapshot);
    Summary {
        name: name.to_string(),
        elapsed_secs: secs,
        passed: verdict.passed,
        verdict_reasons: verdict.reasons,
        thresholds,
        totals: request_row("*", "*", &total, secs),
        requests: snapshot
            .scenarios
            .iter()
            .flat_map(|s| {
                s.requests
                    .iter()
                    .map(move |r| request_row(&s.name, &r.name, &r.stats, secs))
            })
            .collect(),
        scenario_totals: scenario_row("*", &scenario_total, secs),
        scenarios: snapshot
            .scenarios
            .iter()
            .map(|s| scenario_row(&s.name, &s.stats, secs))
            .collect(),
        time: time_breakdown(&total),
        retries: RetrySummary {
            retries: total.retries,
            not_retried: total.retry_outcomes.not_retried,
            succeeded_after_retry: total.retry_outcomes.succeeded_after_retry,
            gave_up: total.retry_outcomes.gave_up,
            not_retryable: total.retry_outcomes.not_retryable,
        },
        throttled_by_limit,
        throttled_by_server_limit,
        limits: Vec::new(),
        retry_after: RetryAfterSummary {
            count: total.retry_after_ms.count(),
            malformed: total.retry_after_malformed,
            ms: TrendSummary::from_hist(&total.retry_after_ms, 1.0),
        },
        token_fetches: snapshot
            .token_fetches
            .iter()
            .map(|(credential, t)| TokenFetchRow {
                credential: credential.clone(),
                fetches: t.count,
                wait_total_ms: t.wait_us_sum as f64 / 1000.0,
                wait_avg_ms: ratio(t.wait_us_sum, t.count).map(|us| us / 1000.0),
            })
            .collect(),
        server_limits: snapshot.server_limits.clone(),
        invalid_records: snapshot.invalid_records,
        allowed_hosts: Vec::new(),
        evidence: snapshot.ledger.counts.clone(),
    }
}

/// The fleet's limits table from each worker's (`per_worker[w][l]`, the plan's limits in
/// order; a worker that sent none is skipped). Per limit:
///
/// - `scope: fleet` through Redis or served by the controller (`fleet` present): every worker
///   paced to the one budget, so the rate, margin and adaptive rates are the fleet's (any
///   worker's); Redis calls add up; workers, safe-mode and paused-for-Redis seconds are the
///   most any worker saw;
/// - `scope: fleet` adaptive without Redis (the controller does not serve it: its learner needs
///   every answer): each worker kept its weight's share, so rates add up;
/// - `scope: worker`: each process paces to the whole limit; the rates stay per process.
///
/// Pauses and paused seconds are the most any worker had (a fleet pause is seen by all).
pub fn merge_limit_pacing(per_worker: &[Vec<LimitPacing>]) -> Vec<LimitPacing> {
    let Some(first) = per_worker.iter().find(|w| !w.is_empty()) else {
        return Vec::new();
    };
    let mut out = first.clone();
    for (i, merged) in out.iter_mut().enumerate() {
        let rows: Vec<&LimitPacing> = per_worker
            .iter()
            .filter_map(|w| w.get(i))
            .filter(|r| r.name == merged.name)
            .collect();
        let shared = merged.fleet.is_some();
        if merged.scope == LimitScope::Fleet && !shared {
            merged.pacing_rate = rows.iter().map(|r| r.pacing_rate).sum();
            let sum_opt =
                |f: fn(&LimitPacing) -> Option<f64>| rows.iter().map(|r| f(r)).sum::<Option<f64>>();
            merged.current_rate = sum_opt(|r| r.current_rate);
            merged.sustainable_rate = sum_opt(|r| r.sustainable_rate);
        }
        merged.pauses = rows.iter().map(|r| r.pauses).max().unwrap_or(0);
        merged.paused_secs = rows.iter().map(|r| r.paused_secs).fold(0.0, f64::max);
        if shared {
            let fleets: Vec<&FleetPacing> = rows.iter().filter_map(|r| r.fleet.as_ref()).collect();
            merged.fleet = Some(FleetPacing {
                workers: fleets.iter().map(|f| f.workers).max().unwrap_or(0),
                redis_calls: fleets.iter().map(|f| f.redis_calls).sum(),
                safe_mode_secs: fleets.iter().map(|f| f.safe_mode_secs).fold(0.0, f64::max),
                unavailable_secs: fleets
                    .iter()
                    .map(|f| f.unavailable_secs)
                    .fold(0.0, f64::max),
                unavailable_reason: fleets.iter().find_map(|f| f.unavailable_reason.clone()),
            });
        }
        // Every process hears the same server: the least left and the most others used.
        let said: Vec<&ServerSaid> = rows.iter().filter_map(|r| r.server.as_ref()).collect();
        merged.server = (!said.is_empty()).then(|| ServerSaid {
            remaining: said.iter().map(|s| s.remaining).min().unwrap_or(0),
            limit: said.iter().filter_map(|s| s.limit).max(),
            others_rate: said.iter().map(|s| s.others_rate).fold(0.0, f64::max),
        });
    }
    out
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn row(scope: LimitScope, rate: f64, fleet: Option<FleetPacing>) -> LimitPacing {
        LimitPacing {
            name: "per-token".into(),
            declared: "300/min".into(),
            window_secs: 60.0,
            burst: 1,
            scope,
            pacing_rate: rate,
            margin: 0.02,
            adaptive: false,
            current_rate: None,
            sustainable_rate: None,
            pauses: 1,
            paused_secs: 2.0,
            fleet,
            server: None,
        }
    }

    #[test]
    fn what_the_server_said_merges_as_the_least_left_and_the_most_others_used() {
        let said = |remaining, others_rate| {
            let mut r = row(LimitScope::Fleet, 10.0, None);
            r.server = Some(ServerSaid {
                remaining,
                limit: Some(200),
                others_rate,
            });
            r
        };
        let merged = merge_limit_pacing(&[
            vec![said(57, 30.0)],
            vec![said(40, 31.5)],
            vec![row(LimitScope::Fleet, 10.0, None)],
        ]);
        let got = merged[0].server.clone().unwrap();
        assert_eq!((got.remaining, got.limit), (40, Some(200)));
        assert!((got.others_rate - 31.5).abs() < 1e-12);
        assert_eq!(
            crate::render::server_said("org", &got),
            "org: the server last said 40 left of 200; others (outside pacer) used 31.50/s"
        );
        // A row without it stays without (old workers' JSON too).
        let old: LimitPacing = serde_json::from_value(
            serde_json::to_value(row(LimitScope::Worker, 1.0, None)).unwrap(),
        )
        .unwrap();
        assert_eq!(old.server, None);
    }

    #[test]
    fn split_fleet_limits_add_up_and_redis_ones_are_shared() {
        let split = merge_limit_pacing(&[
            vec![row(LimitScope::Fleet, 2.0, None)],
            vec![row(LimitScope::Fleet, 3.0, None)],
        ]);
        assert_eq!(split[0].pacing_rate, 5.0);
        assert_eq!(split[0].pauses, 1);
        let f = |calls, safe| FleetPacing {
            workers: 2,
            redis_calls: calls,
            safe_mode_secs: safe,
            ..FleetPacing::default()
        };
        let redis = merge_limit_pacing(&[
            vec![row(LimitScope::Fleet, 4.9, Some(f(10, 0.0)))],
            vec![],
            vec![row(LimitScope::Fleet, 4.9, Some(f(7, 1.5)))],
        ]);
        assert_eq!(redis[0].pacing_rate, 4.9);
        let fl = redis[0].fleet.as_ref().unwrap();
        assert_eq!(
            (fl.redis_calls, fl.workers, fl.safe_mode_secs),
            (17, 2, 1.5)
        );
        let per_process = merge_limit_pacing(&[
            vec![row(LimitScope::Worker, 4.9, None)],
            vec![row(LimitScope::Worker, 4.9, None)],
        ]);
        assert_eq!(per_process[0].pacing_rate, 4.9);
        assert!(merge_limit_pacing(&[vec![], vec![]]).is_empty());
    }
}
