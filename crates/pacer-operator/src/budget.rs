//! A LoadTest on a RateBudget (`spec.budgetRef`): what the budget adds to the test, decided
//! here and nowhere else. The plan gets `budget: <namespace>.<name>` (its name in Redis) and
//! the budget's limits (`scope: fleet`) after its own; the worker pods get the budget's
//! credentials that the plan's `auth` uses (through `secretKeyRef`, as LoadTest credentials:
//! the operator never reads a Secret), its Redis and its idle expiry.
//!
//! Refused, each naming the field: a budget of another namespace (its credentials are Secrets
//! of its namespace), a missing one or one being deleted, an invalid one, a plan limit or a
//! credential of the same name as the budget's (never a silent winner), a plan naming another
//! `budget:`, a `spec.redis` besides the budget's, a budget with no Redis at all.
//!
//! The budget's limits are checked by pacer-plan's own validation of `limits` (the same
//! errors a plan gets), as a plan holding only them.

use std::time::Duration;

use pacer_limiter::fleet::{BUDGET_IDLE_MAX, BUDGET_IDLE_MIN};
use pacer_plan::{FieldError, PlanError, Refs};
use serde_json::{Value, json};

use crate::crd::{CredentialRef, LoadTest, RedisSpec};
use crate::ratebudget::RateBudget;
use crate::resources::RedisSource;

/// What a LoadTest takes from its RateBudget, besides the plan it merged.
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    /// The RateBudget's name (for messages).
    pub resource: String,
    /// The budget's name in Redis and in the plan's `budget:` ([`redis_name`]).
    pub name: String,
    /// The budget's Redis (its own `spec.redis`, else the operator's default).
    pub redis: RedisSource,
    /// Its `spec.idleExpiry`, when given.
    pub idle: Option<Duration>,
    /// Its credentials that the plan's `auth` uses.
    pub credentials: Vec<CredentialRef>,
}

/// A budget's name in Redis: `<namespace>.<name>`. Namespaces have no `.`, so two budgets of
/// different namespaces never share a name; it must fit pacer's 64-character budget name
/// (`pacer_plan::budget::name_problem`): a longer one is refused, never shortened or hashed
/// (a laptop joins with `pacer run --budget <namespace>.<name>`, which it can write down).
pub fn redis_name(namespace: &str, name: &str) -> Result<String, String> {
    let joined = format!("{namespace}.{name}");
    match pacer_plan::budget::name_problem(&joined) {
        None => Ok(joined),
        Some(_) => Err(format!(
            "the budget's name in Redis, {joined:?}, must be 1-{} characters among A-Z a-z 0-9 . _ -: \
             give the RateBudget a name of at most {} characters in namespace {namespace:?}",
            pacer_plan::budget::MAX_BUDGET_NAME_LEN,
            pacer_plan::budget::MAX_BUDGET_NAME_LEN.saturating_sub(namespace.len() + 1)
        )),
    }
}

/// A RateBudget's Redis: its own `spec.redis`, else the operator's default.
pub fn redis_of(rb: &RateBudget, default: Option<&RedisSource>) -> Option<RedisSource> {
    match &rb.spec.redis {
        Some(r) => redis_spec_source(r),
        None => default.cloned(),
    }
}

/// `spec.redis` as a source (one of url and secretRef: the CRD's rule).
pub fn redis_spec_source(r: &RedisSpec) -> Option<RedisSource> {
    match (&r.url, &r.secret_ref) {
        (Some(url), _) => Some(RedisSource::Url(url.clone())),
        (None, Some(s)) => Some(RedisSource::Secret {
            name: s.name.clone(),
            key: s.key.clone(),
        }),
        (None, None) => None,
    }
}

/// A plan holding only `limits`, validated by pacer-plan: its limits, or its errors on
/// `limits…` (as `spec.limits…`).
fn validated_limits(limits: &Value) -> Result<Vec<pacer_plan::Limit>, Vec<FieldError>> {
    let doc = json!({
        "name": "budget",
        "target": "http://budget.invalid",
        "limits": limits,
        "scenarios": [{"name": "s", "executor": "constant-vus", "vus": 1, "duration": "1s",
                       "requests": [{"name": "r", "path": "/"}]}],
    });
    // No `${env:}` resolves: a budget's limits are numbers, not the operator's environment.
    let none = |_: &str| -> Option<String> { None };
    match pacer_plan::load_value(doc, "RateBudget", &Refs::Remote { provided: &none }) {
        Ok(plan) => Ok(plan.limits),
        Err(PlanError::Invalid { errors, .. }) => Err(errors
            .into_iter()
            .map(|e| FieldError::new(format!("spec.{}", e.path), e.message))
            .collect()),
        Err(other) => Err(vec![FieldError::new("spec.limits", other.to_string())]),
    }
}

/// A valid RateBudget's limits as pacer reads them, each `scope: fleet` (empty when they are
/// not valid).
pub fn limits(rb: &RateBudget) -> Vec<pacer_plan::Limit> {
    validated_limits(&Value::Array(fleet_limits(rb))).unwrap_or_default()
}

/// Every problem of a RateBudget's spec, each naming its field (`spec.limits[0].limit`...).
pub fn check(rb: &RateBudget, default_redis: Option<&RedisSource>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ns = rb.metadata.namespace.as_deref().unwrap_or_default();
    let name = rb.metadata.name.as_deref().unwrap_or_default();
    if let Err(e) = redis_name(ns, name) {
        errors.push(FieldError::new("metadata.name", e));
    }
    match rb.spec.limits.as_array() {
        None => errors.push(FieldError::new("spec.limits", "give a list of limits")),
        Some(list) if list.is_empty() => {
            errors.push(FieldError::new("spec.limits", "give at least one limit"))
        }
        Some(list) => {
            for (i, l) in list.iter().enumerate() {
                let scope = l.get("scope").and_then(Value::as_str);
                if scope.is_some_and(|s| s != "fleet") {
                    errors.push(FieldError::new(
                        format!("spec.limits[{i}].scope"),
                        "a budget's limits are shared by its tests: scope is fleet (leave it out)",
                    ));
                }
            }
            if let Err(e) = validated_limits(&rb.spec.limits) {
                errors.extend(e);
            }
        }
    }
    if let Err(e) = idle(rb) {
        errors.push(e);
    }
    if redis_of(rb, default_redis).is_none() {
        errors.push(FieldError::new(
            "spec.redis",
            "a budget is shared through Redis: give spec.redis (this operator has no default \
             Redis, --default-redis-url)",
        ));
    }
    errors
}

/// `spec.idleExpiry`, within the fleet's bounds.
fn idle(rb: &RateBudget) -> Result<Option<Duration>, FieldError> {
    let Some(s) = &rb.spec.idle_expiry else {
        return Ok(None);
    };
    match pacer_plan::duration::parse(s).ok() {
        Some(d) if (BUDGET_IDLE_MIN..=BUDGET_IDLE_MAX).contains(&d) => Ok(Some(d)),
        _ => Err(FieldError::new(
            "spec.idleExpiry",
            format!(
                "{s:?}: give a duration from {}s to {}s such as 1h",
                BUDGET_IDLE_MIN.as_secs(),
                BUDGET_IDLE_MAX.as_secs()
            ),
        )),
    }
}

/// The budget's limits as the plan gets them: each `scope: fleet`.
fn fleet_limits(rb: &RateBudget) -> Vec<Value> {
    rb.spec
        .limits
        .as_array()
        .map(|l| {
            l.iter()
                .map(|v| {
                    let mut v = v.clone();
                    if let Value::Object(m) = &mut v {
                        m.insert("scope".into(), json!("fleet"));
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The names a JSON list of named objects holds, with their index.
fn named(list: Option<&Value>) -> Vec<(usize, String)> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .enumerate()
                .filter_map(|(i, v)| Some((i, v.get("name")?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What a LoadTest refers to, as the operator found it.
#[derive(Clone, Copy, Debug)]
pub enum Found<'a> {
    /// The RateBudget of `spec.budgetRef`.
    Budget(&'a RateBudget),
    /// No RateBudget of that name in the LoadTest's namespace.
    Missing,
    /// Not looked up (`pacer validate` without the budget's file): the plan is checked alone,
    /// as if the budget provided a credential for each of its `auth` entries; the budget's own
    /// checks (its limits, a clash with the plan's) are the operator's.
    Unchecked,
}

/// The LoadTest's plan with the budget merged in, and what the workers take from it; or every
/// problem, each naming its field.
pub fn join(
    lt: &LoadTest,
    found: Found<'_>,
    default_redis: Option<&RedisSource>,
) -> Result<(Value, Joined), Vec<FieldError>> {
    let Some(r) = &lt.spec.budget_ref else {
        return Err(vec![FieldError::new("spec.budgetRef", "no budget named")]);
    };
    let ns = lt.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(other) = r.namespace.as_deref().filter(|n| *n != ns) {
        return Err(vec![FieldError::new(
            "spec.budgetRef.namespace",
            format!(
                "{other:?}: a LoadTest runs on a RateBudget of its own namespace ({ns:?}): the \
                 budget's credentials are Secrets of its namespace, which this test's pods may \
                 not read"
            ),
        )]);
    }
    let rb = match found {
        Found::Budget(rb) => rb,
        Found::Unchecked => {
            return Err(vec![FieldError::new(
                "spec.budgetRef.name",
                "the RateBudget was not looked up",
            )]);
        }
        Found::Missing => {
            return Err(vec![FieldError::new(
                "spec.budgetRef.name",
                format!("no RateBudget named {:?} in namespace {ns:?}", r.name),
            )]);
        }
    };
    if rb.metadata.deletion_timestamp.is_some() {
        return Err(vec![FieldError::new(
            "spec.budgetRef.name",
            format!(
                "RateBudget {:?} is being deleted: it waits for its running tests, and no new \
                 test joins it",
                r.name
            ),
        )]);
    }
    let invalid = check(rb, default_redis);
    if !invalid.is_empty() {
        let why = invalid
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(vec![FieldError::new(
            "spec.budgetRef.name",
            format!("RateBudget {:?} is not valid: {why}", r.name),
        )]);
    }
    let mut errors = Vec::new();
    let budget_name =
        redis_name(ns, &r.name).map_err(|e| vec![FieldError::new("spec.budgetRef.name", e)])?;
    let plan = &lt.spec.plan;
    if let Some(own) = plan.get("budget").and_then(Value::as_str)
        && own != budget_name
    {
        errors.push(FieldError::new(
            "spec.plan.budget",
            format!(
                "{own:?}: the test runs on RateBudget {:?} (spec.budgetRef), whose budget is \
                 {budget_name:?}: leave spec.plan.budget out",
                r.name
            ),
        ));
    }
    if lt.spec.redis.is_some() {
        errors.push(FieldError::new(
            "spec.redis",
            format!(
                "the test runs on RateBudget {:?} and shares its Redis: leave spec.redis out \
                 (the RateBudget's spec.redis says where it is)",
                r.name
            ),
        ));
    }
    let budget_limits = named(Some(&rb.spec.limits));
    for (i, name) in named(plan.get("limits")) {
        if let Some((j, _)) = budget_limits.iter().find(|(_, n)| *n == name) {
            errors.push(FieldError::new(
                format!("spec.plan.limits[{i}].name"),
                format!(
                    "{name:?} is also RateBudget {:?}'s limit spec.limits[{j}]: the budget \
                     declares it for every test; give the plan's limit another name or leave \
                     it out",
                    r.name
                ),
            ));
        }
    }
    for (i, c) in lt.spec.credentials.iter().enumerate() {
        if let Some(j) = rb.spec.credentials.iter().position(|b| b.name == c.name) {
            errors.push(FieldError::new(
                format!("spec.credentials[{i}].name"),
                format!(
                    "{:?} is also RateBudget {:?}'s credential spec.credentials[{j}]: the \
                     budget's is used by every test on it; leave this one out",
                    c.name, r.name
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let auths: Vec<String> = named(plan.get("auth"))
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let credentials = rb
        .spec
        .credentials
        .iter()
        .filter(|c| auths.contains(&c.name))
        .cloned()
        .collect();
    let mut merged = plan.clone();
    if let Value::Object(m) = &mut merged {
        m.insert("budget".into(), json!(budget_name));
        let mut limits = m
            .get("limits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        limits.extend(fleet_limits(rb));
        m.insert("limits".into(), Value::Array(limits));
    }
    let joined = Joined {
        resource: r.name.clone(),
        name: budget_name,
        // `check` refused a budget without Redis.
        redis: redis_of(rb, default_redis).ok_or_else(|| {
            vec![FieldError::new(
                "spec.budgetRef.name",
                "the budget has no Redis",
            )]
        })?,
        idle: idle(rb).map_err(|e| vec![e])?,
        credentials,
    };
    Ok((merged, joined))
}

/// The reason a LoadTest refused by [`join`] (or by its plan) ends with: the budget missing or
/// being deleted, the budget invalid, or the LoadTest's own spec.
pub fn refusal_reason(
    lt: &LoadTest,
    found: Option<Found<'_>>,
    default_redis: Option<&RedisSource>,
) -> crate::reason::Reason {
    use crate::reason::Reason;
    let ns = lt.metadata.namespace.as_deref().unwrap_or_default();
    let other_namespace = lt
        .spec
        .budget_ref
        .as_ref()
        .and_then(|r| r.namespace.as_deref())
        .is_some_and(|n| n != ns);
    match found {
        _ if other_namespace => Reason::InvalidSpec,
        Some(Found::Missing) => Reason::BudgetNotFound,
        Some(Found::Budget(rb)) if rb.metadata.deletion_timestamp.is_some() => {
            Reason::BudgetNotFound
        }
        Some(Found::Budget(rb)) if !check(rb, default_redis).is_empty() => Reason::InvalidBudget,
        _ => Reason::InvalidSpec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(spec: Value) -> RateBudget {
        serde_json::from_value(json!({
            "apiVersion": "pacer.dev/v1alpha1", "kind": "RateBudget",
            "metadata": {"name": "acme", "namespace": "team-a"},
            "spec": spec,
        }))
        .expect("a RateBudget")
    }

    #[test]
    fn names_in_redis_never_collide_across_namespaces() {
        assert_eq!(redis_name("team-a", "acme").as_deref(), Ok("team-a.acme"));
        // `a.b-c` and `a-b.c` differ: the first dot ends the namespace.
        assert_ne!(redis_name("a", "b-c"), redis_name("a-b", "c"));
        let long = "x".repeat(60);
        let e = redis_name("team-a", &long).expect_err("too long");
        assert!(e.contains("at most 57 characters"), "{e}");
    }

    #[test]
    fn a_budgets_limits_are_checked_by_the_plans_rules() {
        let url = RedisSource::Url("redis://r:6379".into());
        let ok = budget(json!({"limits": [{"name": "org", "limit": "10/s"}]}));
        assert!(check(&ok, Some(&url)).is_empty());
        let bad = budget(json!({"limits": [
            {"name": "org", "limit": "fast"},
            {"name": "w", "limit": "1/s", "scope": "worker"}
        ], "idleExpiry": "2s"}));
        let text: Vec<String> = check(&bad, None).iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(all.contains("spec.limits[0].limit"), "{all}");
        assert!(all.contains("spec.limits[1].scope"), "{all}");
        assert!(all.contains("spec.idleExpiry"), "{all}");
        assert!(all.contains("spec.redis"), "{all}");
    }
}
