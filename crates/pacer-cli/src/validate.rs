//! `pacer validate`: check plan files, LoadTest and RateBudget manifests without running
//! anything, and list every problem with its field path. A manifest is checked as the operator
//! will check it, a plan as `pacer run` reads it, so a file that validates is one those accept.
//! A LoadTest on a RateBudget (`spec.budgetRef`) is checked with the budget when its file is
//! given too, else its plan alone (the operator checks the budget's part).
//!
//! For a valid plan it also explains what each limit will cost: the rate pacer will pace it at
//! (from the same function the limiters use, `pacer_plan::shape::pace`) and the margin left
//! below the declared rate, with a warning naming the causes (the burst, the spread, a short
//! window, a bucket too small for the spread) and what to change when the margin is large.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pacer_limiter::fleet::{fleet_pacing, lease_hold};
use pacer_limiter::gcra::{DEFAULT_SPREAD, pacing};
use pacer_plan::spec::LimitScope;
use pacer_plan::{Limit, LimitShape, Pacing};

use pacer_operator::budget::Found;
use pacer_operator::ratebudget::RateBudget;

use crate::exit::{self, Exit};

/// A margin above this share of the declared rate gets a warning: past it the declaration
/// (or the shape not declared) is usually what costs, not the accuracy pacer needs.
const MARGIN_WARNING: f64 = 0.10;
/// A cause of the margin is named when it costs at least this share of the declared rate
/// (the token bucket's 0.5% drift allowance never is: nothing to change).
const NAMED_COST: f64 = 0.02;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Plan files (YAML or JSON) or LoadTest manifests.
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
    /// The server's answer time the forecast assumes (closed-model scenarios want
    /// VUs / (thinkTime + requests x latency)).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = crate::flags::parse_duration)]
    pub latency: Duration,
}

/// `pacer validate`: every file checked, each line printed; the exit code is the worst.
pub fn run(args: &ValidateArgs) -> Exit {
    let mut worst = Exit::Passed;
    let budgets = budgets_in(&args.plans);
    for p in &args.plans {
        match validate_one(p, args.latency, &budgets, &args.plans) {
            Ok(line) => crate::outln!("{}: ok: {line}", p.display()),
            Err((message, exit)) => {
                eprintln!("{message}");
                worst = exit;
            }
        }
    }
    worst
}

/// One file. A LoadTest manifest is checked as the operator will check it
/// (`pacer_operator::prepare`: its plan read as a LoadTest's, so no `${file:}` is read and
/// `${env:}` names only what the LoadTest provides); a plan as `pacer run` reads it.
fn validate_one(
    p: &Path,
    latency: Duration,
    budgets: &[RateBudget],
    paths: &[PathBuf],
) -> Result<String, (String, Exit)> {
    let plan_error = |e: pacer_plan::PlanError| (e.to_string(), exit::for_plan_error(&e));
    let text = std::fs::read_to_string(p).map_err(|source| {
        plan_error(pacer_plan::PlanError::Io {
            path: p.display().to_string(),
            source,
        })
    })?;
    let doc =
        pacer_plan::load::parse_document(&text, &p.display().to_string()).map_err(plan_error)?;
    if doc.get("kind").and_then(|k| k.as_str()) == Some("RateBudget") {
        return validate_budget(p, doc);
    }
    if doc.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") {
        return validate_plan_config_map(p, doc);
    }
    if doc.get("kind").and_then(|k| k.as_str()) != Some("LoadTest") {
        return pacer_plan::load_file(p)
            .map(|plan| {
                let workers = plan.workers;
                with_forecast(
                    with_limits(plan_line(&plan), &plan),
                    &plan,
                    workers,
                    latency,
                )
            })
            .map_err(plan_error);
    }
    let mut lt: pacer_operator::crd::LoadTest = serde_json::from_value(doc).map_err(|e| {
        (
            format!("{}: not a LoadTest: {e}", p.display()),
            Exit::Invalid,
        )
    })?;
    lt.metadata
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.into());
    if let Some(r) = lt.spec.plan_ref.clone() {
        let config_maps = config_maps_in(paths);
        let cm = config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(r.name.as_str()));
        if cm.is_none() {
            let errors = pacer_operator::policy::WorkerPolicy::default().check(&lt);
            if errors.is_empty() {
                return Ok(format!(
                    "LoadTest with its plan in ConfigMap {} key {} (not given: give its file too, or the operator checks the plan when the test starts)",
                    r.name, r.key
                ));
            }
            let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            return Err((
                format!("{}: invalid LoadTest:\n{}", p.display(), list.join("\n")),
                Exit::Invalid,
            ));
        }
        lt = pacer_operator::planref::inline(&lt, cm).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            (
                format!("{}: invalid LoadTest:\n{}", p.display(), list.join("\n")),
                Exit::Invalid,
            )
        })?;
    }
    let found = lt.spec.budget_ref.as_ref().map(|r| {
        budgets
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(r.name.as_str()))
            .map_or(Found::Unchecked, Found::Budget)
    });
    let on_budget = match (&lt.spec.budget_ref, found) {
        (Some(r), Some(Found::Budget(_))) => format!(", on RateBudget {}", r.name),
        (Some(r), _) => format!(
            ", on RateBudget {} (not given: its limits and credentials are the operator's to check)",
            r.name
        ),
        (None, _) => String::new(),
    };
    let redis = operator_redis();
    match pacer_operator::prepare::prepare_on(&lt, &Default::default(), found, Some(&redis)) {
        Ok(prepared) => Ok(with_forecast(
            with_limits(
                format!(
                    "LoadTest {} ({} workers{on_budget})",
                    plan_line(&prepared.plan),
                    prepared.workers
                ),
                &prepared.plan,
            ),
            &prepared.plan,
            prepared.workers,
            latency,
        )),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            Err((
                format!("{}: invalid LoadTest:\n{}", p.display(), list.join("\n")),
                Exit::Invalid,
            ))
        }
    }
}

/// The namespace `kubectl apply` uses for a manifest that names none.
const DEFAULT_NAMESPACE: &str = "default";

/// The operator's default Redis, as far as a file can tell: there is one (a RateBudget without
/// `spec.redis` is the operator's to refuse).
fn operator_redis() -> pacer_operator::RedisSource {
    pacer_operator::RedisSource::Url("redis://the-operators-default-redis".into())
}

/// The RateBudgets among `paths` (for the LoadTests on them); files that are none are skipped.
fn budgets_in(paths: &[PathBuf]) -> Vec<RateBudget> {
    paths
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let doc = pacer_plan::load::parse_document(&text, &p.display().to_string()).ok()?;
            if doc.get("kind").and_then(|k| k.as_str()) != Some("RateBudget") {
                return None;
            }
            let mut rb: RateBudget = serde_json::from_value(doc).ok()?;
            rb.metadata
                .namespace
                .get_or_insert_with(|| DEFAULT_NAMESPACE.into());
            Some(rb)
        })
        .collect()
}

/// The ConfigMaps among `paths` (for the LoadTests whose `spec.planRef` names one).
fn config_maps_in(paths: &[PathBuf]) -> Vec<k8s_openapi::api::core::v1::ConfigMap> {
    paths
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let doc = pacer_plan::load::parse_document(&text, &p.display().to_string()).ok()?;
            if doc.get("kind").and_then(|k| k.as_str()) != Some("ConfigMap") {
                return None;
            }
            serde_json::from_value(doc).ok()
        })
        .collect()
}

/// A ConfigMap of plans (for `spec.planRef`): each key named `*.yaml`, `*.yml` or `*.json`
/// checked as a LoadTest's plan, with every `${env:}` taken as given (the LoadTest referring
/// to it says which are). A ConfigMap with no such key (test data) has nothing to check.
fn validate_plan_config_map(p: &Path, doc: serde_json::Value) -> Result<String, (String, Exit)> {
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(doc).map_err(|e| {
        (
            format!("{}: not a ConfigMap: {e}", p.display()),
            Exit::Invalid,
        )
    })?;
    let name = cm.metadata.name.clone().unwrap_or_default();
    let given = |_: &str| Some(pacer_operator::prepare::PLACEHOLDER.to_string());
    let refs = pacer_plan::Refs::Remote { provided: &given };
    let mut lines = Vec::new();
    for (key, text) in cm.data.iter().flatten() {
        if ![".yaml", ".yml", ".json"].iter().any(|x| key.ends_with(x)) {
            continue;
        }
        let source = format!("{}: ConfigMap {name}, key {key}", p.display());
        let plan = pacer_plan::load::parse_document(text, &source)
            .and_then(|doc| pacer_plan::load_value(doc, &source, &refs))
            .map_err(|e| (e.to_string(), exit::for_plan_error(&e)))?;
        lines.push(format!("{key}: {}", plan_line(&plan)));
    }
    if lines.is_empty() {
        // A ConfigMap of test data, say: nothing here reads as a plan, nothing to check.
        return Ok(format!(
            "ConfigMap {name}: no key named *.yaml, *.yml or *.json, so no plan to check"
        ));
    }
    Ok(format!("ConfigMap {name} of plans: {}", lines.join("; ")))
}

/// A RateBudget manifest, checked as the operator checks it, and what its limits cost.
fn validate_budget(p: &Path, doc: serde_json::Value) -> Result<String, (String, Exit)> {
    let mut rb: RateBudget = serde_json::from_value(doc).map_err(|e| {
        (
            format!("{}: not a RateBudget: {e}", p.display()),
            Exit::Invalid,
        )
    })?;
    rb.metadata
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.into());
    let problems = pacer_operator::budget::check(&rb, Some(&operator_redis()));
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|e| format!("  - {e}")).collect();
        return Err((
            format!("{}: invalid RateBudget:\n{}", p.display(), list.join("\n")),
            Exit::Invalid,
        ));
    }
    let limits = pacer_operator::budget::limits(&rb);
    let mut out = format!(
        "RateBudget {} ({} limits, {} credentials)",
        rb.metadata.name.as_deref().unwrap_or_default(),
        limits.len(),
        rb.spec.credentials.len()
    );
    for l in &limits {
        for s in explain_limit(l) {
            out.push_str("\n  ");
            out.push_str(&s);
        }
    }
    Ok(out)
}

/// What a valid plan will run, on one line: its name and scenarios, with the iterations of
/// those that have a fixed count: `Checkout [browse (200 iterations), pay]`.
fn plan_line(plan: &pacer_plan::Plan) -> String {
    let scenarios: Vec<String> = plan
        .scenarios
        .iter()
        .map(|s| match s.executor.planned_iterations() {
            Some(n) => format!("{} ({} iterations)", s.name, n),
            None => s.name.clone(),
        })
        .collect();
    format!("{} [{}]", plan.name, scenarios.join(", "))
}

/// The plan's line, then what each of its limits costs (one or more lines each).
fn with_limits(line: String, plan: &pacer_plan::Plan) -> String {
    let mut out = line;
    for l in &plan.limits {
        for s in explain_limit(l) {
            out.push_str("\n  ");
            out.push_str(&s);
        }
    }
    out
}

/// Then the forecast (`crate::forecast`).
fn with_forecast(
    mut out: String,
    plan: &pacer_plan::Plan,
    workers: u32,
    latency: Duration,
) -> String {
    for s in crate::forecast::lines(plan, workers, latency) {
        out.push_str("\n  ");
        out.push_str(&s);
    }
    out
}

/// What a limit costs: its pacing rate and margin in one process, through Redis for a
/// `scope: fleet` limit, and a warning with the causes when the margin is over
/// [`MARGIN_WARNING`]. A fleet limit is one budget however many workers share it (through
/// Redis or served by the controller), so the number of workers does not change it.
fn explain_limit(l: &Limit) -> Vec<String> {
    let local = pacing(l, DEFAULT_SPREAD);
    let window = match l.shape {
        LimitShape::TokenBucket => String::new(),
        _ if l.window == l.limit.per() => String::new(),
        _ => format!(", window {}", humantime::format_duration(l.window)),
    };
    let mut out = vec![format!(
        "limit {} ({} {}, burst {}{window}): paced at {} (margin {}){}",
        l.name,
        l.shape.as_str(),
        l.limit,
        l.burst,
        per_sec(local.rate),
        percent(local.margin()),
        kept(&local, l.burst),
    )];
    let mut worst = (local, "");
    if l.scope == LimitScope::Fleet {
        let fleet = fleet_pacing(l, DEFAULT_SPREAD);
        out.push(format!(
            "  in a fleet (scope: fleet, one budget through --redis or served by the controller): \
             paced at {} (margin {}), spread {} with the lease hold{}",
            per_sec(fleet.rate),
            percent(fleet.margin()),
            humantime::format_duration(fleet.spread),
            kept(&fleet, l.burst),
        ));
        if fleet.margin() > local.margin() {
            worst = (fleet, " in a fleet");
        }
    }
    if l.shape == LimitShape::FixedWindow {
        out.push(format!(
            "  note: when the server sends its remaining count and reset (inin-ratelimit-*, \
             X-RateLimit-*, IETF RateLimit), pacer aligns to the server's windows and spends \
             what each has left until its reset (the whole {} per window); without them it \
             paces a fixed window like a sliding one, at the rate above",
            l.limit
        ));
    }
    if let Some(r) = l.reserve {
        let left = (l.limit.as_per_sec() - r.per_sec(l.limit.as_per_sec())).max(0.0);
        out.push(format!(
            "  reserve {r}: {} of the limit left unused for others; where the server reports \
             what is left, pacer paces to that less others' traffic and the reserve (at most {} \
             for pacer)",
            per_sec(r.per_sec(l.limit.as_per_sec())),
            per_sec(left),
        ));
    }
    let (p, where_) = worst;
    if p.margin() > MARGIN_WARNING {
        out.push(format!(
            "  warning: margin {}{where_} (over {}): pacer leaves that share of the limit unused, \
             because of:",
            percent(p.margin()),
            percent(MARGIN_WARNING),
        ));
        out.extend(causes(l, &p).into_iter().map(|c| format!("    - {c}")));
    }
    out
}

/// The causes of a pacing's margin, largest first, each with what to change.
fn causes(l: &Limit, p: &Pacing) -> Vec<String> {
    let mut causes: Vec<(f64, String)> = Vec::new();
    let spread = humantime::format_duration(p.spread);
    let fleet_hold = if p.spread > l.spread.unwrap_or(DEFAULT_SPREAD) {
        format!(
            " (in a fleet the spread includes the lease hold, {})",
            humantime::format_duration(lease_hold(l.window))
        )
    } else {
        String::new()
    };
    match l.shape {
        LimitShape::SlidingWindow | LimitShape::FixedWindow => {
            let per_window = p.declared * l.window.as_secs_f64();
            if p.burst_cost >= NAMED_COST {
                causes.push((
                    p.burst_cost,
                    format!(
                        "the burst: {} of the {per_window:.0} requests a {} window allows may go \
                         back to back, so pacer saves them out of every window (costs {}). If \
                         the server states a rate and a separate burst (a token or leaky bucket: \
                         nginx limit_req, AWS API Gateway, Shopify), say shape: token-bucket; \
                         otherwise lower the burst (burst: 1 costs {})",
                        p.burst,
                        humantime::format_duration(l.window),
                        percent(p.burst_cost),
                        percent(1.0 / per_window.max(1.0)),
                    ),
                ));
            }
            if p.spread_cost >= NAMED_COST {
                let short = if l.window < Duration::from_secs(10) {
                    format!(
                        "a short window: {spread} of lateness allowed against a {} window",
                        humantime::format_duration(l.window)
                    )
                } else {
                    format!(
                        "the spread: {spread} of lateness allowed against a {} window",
                        humantime::format_duration(l.window)
                    )
                };
                causes.push((
                    p.spread_cost,
                    format!(
                        "{short}{fleet_hold} (costs {}). Declare the server's longer window if it \
                         counts over one (e.g. 300/min rather than 5/s), or a smaller spread if \
                         the server is near (spread: 10ms on loopback or a LAN)",
                        percent(p.spread_cost),
                    ),
                ));
            }
        }
        LimitShape::TokenBucket => {
            if p.spread_cost >= NAMED_COST {
                causes.push((
                    p.spread_cost,
                    format!(
                        "a bucket too small for the spread: at {}, {spread} of lateness{fleet_hold} \
                         is {:.1} tokens, and a bucket of {} can keep only {} back (costs {}). \
                         Declare the bucket's real size if it is larger, or a smaller spread if \
                         the server is near (spread: 10ms on loopback or a LAN)",
                        per_sec(p.declared),
                        p.declared * p.spread.as_secs_f64(),
                        l.burst,
                        p.kept,
                        percent(p.spread_cost),
                    ),
                ));
            }
        }
    }
    causes.sort_by(|a, b| b.0.total_cmp(&a.0));
    causes.into_iter().map(|(_, c)| c).collect()
}

/// A token bucket's burst as paced, when tokens were kept back for the spread.
fn kept(p: &Pacing, declared: u32) -> String {
    if p.kept == 0 {
        return String::new();
    }
    format!(
        "; bursts of up to {}: {} of the bucket's {declared} kept for the {} spread",
        p.burst,
        p.kept,
        humantime::format_duration(p.spread)
    )
}

/// A rate with the digits that matter: `0.91/s`, `59.3/s`, `19608/s` (the forecast's too).
pub(crate) fn per_sec(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}/s")
    } else if r >= 10.0 {
        format!("{r:.1}/s")
    } else {
        format!("{r:.2}/s")
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "name: Checkout\ntarget: http://api\nscenarios:\n  - name: browse\n    executor: shared-iterations\n    vus: 2\n    iterations: 200\n    requests: [{name: q, path: /}]\n  - name: pay\n    executor: constant-vus\n    vus: 1\n    duration: 5s\n    requests: [{name: p, path: /pay}]\n";

    fn limit(yaml: &str) -> Limit {
        let plan = format!(
            "name: L\ntarget: http://api\nlimits:\n  - {yaml}\nscenarios:\n  - name: s\n    \
             executor: constant-vus\n    vus: 1\n    duration: 1s\n    requests: [{{name: q, path: /}}]\n"
        );
        let plan = pacer_plan::load_str(&plan, "plan.yaml", &Default::default()).unwrap();
        plan.limits[0].clone()
    }

    fn explain_limit1(l: &Limit) -> Vec<String> {
        explain_limit(l)
    }

    #[test]
    fn a_window_with_its_whole_limit_as_burst_warns_and_names_the_token_bucket() {
        let out = explain_limit1(&limit("{name: lim, limit: 5/s, burst: 5}")).join("\n");
        assert!(out.contains("paced at 0.91/s (margin 81.8%)"), "{out}");
        assert!(out.contains("warning: margin 81.8%"), "{out}");
        assert!(out.contains("the burst: 5 of the 5 requests"), "{out}");
        assert!(out.contains("say shape: token-bucket"), "{out}");
        assert!(out.contains("a short window: 100ms"), "{out}");
        // the burst (100%) is named before the window (9.1%)
        assert!(out.find("the burst").unwrap() < out.find("a short window").unwrap());
    }

    #[test]
    fn a_declared_token_bucket_is_paced_at_its_rate_without_warning() {
        let out = explain_limit1(&limit(
            "{name: lim, limit: 5/s, burst: 5, shape: token-bucket}",
        ))
        .join("\n");
        assert!(out.contains("paced at 4.97/s (margin 0.5%)"), "{out}");
        assert!(
            out.contains("1 of the bucket's 5 kept for the 100ms spread"),
            "{out}"
        );
        assert!(!out.contains("warning"), "{out}");
    }

    #[test]
    fn a_bucket_too_small_for_the_fleets_spread_is_explained() {
        let out = explain_limit1(&limit(
            "{name: lim, limit: 100/s, burst: 4, shape: token-bucket, scope: fleet}",
        ))
        .join("\n");
        assert!(
            out.contains("in a fleet (scope: fleet, one budget through --redis or served by the controller): paced at 25.0/s"),
            "{out}"
        );
        assert!(out.contains("warning: margin 75.0% in a fleet"), "{out}");
        assert!(out.contains("a bucket too small for the spread"), "{out}");
        assert!(out.contains("lease hold, 50ms"), "{out}");
    }

    #[test]
    fn a_fixed_window_says_when_it_aligns_and_when_it_is_paced_like_a_sliding_one() {
        let out =
            explain_limit1(&limit("{name: lim, limit: 300/min, shape: fixed-window}")).join("\n");
        assert!(out.contains("fixed-window 300/min, burst 1"), "{out}");
        assert!(out.contains("aligns to the server's windows"), "{out}");
        assert!(
            out.contains("without them it paces a fixed window like a sliding one"),
            "{out}"
        );
        assert!(!out.contains("warning"), "{out}");
    }

    #[test]
    fn a_reserve_says_what_it_leaves() {
        let out = explain_limit1(&limit("{name: lim, limit: 100/s, reserve: 10%}")).join("\n");
        assert!(out.contains("reserve 10%: 10.0/s"), "{out}");
        assert!(out.contains("at most 90.0/s for pacer"), "{out}");
    }

    #[test]
    fn a_plan_line_names_the_scenarios_and_their_fixed_iterations() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        assert_eq!(plan_line(&plan), "Checkout [browse (200 iterations), pay]");
    }
}
