//! Named budgets: the organisation-wide identity of a plan's `scope: fleet` limits and `share:
//! fleet` tokens. Processes of any test that name one budget (`budget:` in the plan, `pacer run
//! --budget`) share one GCRA state per limit and one token per credential through Redis,
//! instead of each test taking the whole limit for itself (docs/rate-limiting.md, "Budgets").
//!
//! This module decides what a budget's name may be and what "the same limit" means: two
//! declarations of one budget agree when their [`definition`]s are equal.

use crate::bounds::{MAX_BUDGET_WEIGHT, MIN_BUDGET_WEIGHT};
use crate::error::FieldError;
use crate::model::{Limit, Plan};
use crate::spec::PlanSpec;

/// Longest budget name: it becomes part of Redis keys, which stay short and readable in
/// `redis-cli` (the same bound as a fleet's test id).
pub const MAX_BUDGET_NAME_LEN: usize = 64;

/// Why `name` is not a budget name (1-64 characters among `A-Z a-z 0-9 . _ -`, like an id),
/// or `None` when it is one. One rule for the plan's `budget:` and `pacer run --budget`.
pub fn name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_BUDGET_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| {
        format!(
            "{name:?} must be 1-{MAX_BUDGET_NAME_LEN} characters among A-Z a-z 0-9 . _ - \
             (it names Redis keys)"
        )
    })
}

/// Why `weight` is not a test's weight on a budget (a number within
/// [`MIN_BUDGET_WEIGHT`]..=[`MAX_BUDGET_WEIGHT`]), or `None` when it is one. One rule for the
/// plan's `weight:` and `pacer run --weight`.
pub fn weight_problem(weight: f64) -> Option<String> {
    (!(MIN_BUDGET_WEIGHT..=MAX_BUDGET_WEIGHT).contains(&weight)).then(|| {
        format!(
            "{weight} must be a number from {MIN_BUDGET_WEIGHT} to {MAX_BUDGET_WEIGHT} (a test's \
             share of its budget is in proportion to it; the default is 1)"
        )
    })
}

/// The plan's `budget:` and `weight:` fields, checked (hooked into [`crate::validate`]).
pub fn check(spec: &PlanSpec) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = spec
        .budget
        .as_deref()
        .and_then(name_problem)
        .map(|p| FieldError::new("budget", p))
        .into_iter()
        .collect();
    if let Some(w) = spec.weight {
        if let Some(p) = weight_problem(w) {
            errors.push(FieldError::new("weight", p));
        } else if spec.budget.is_none() {
            errors.push(FieldError::new(
                "weight",
                "a weight is a test's share of a budget: name the budget (`budget:`) too",
            ));
        }
    }
    errors
}

impl Plan {
    /// The budget the plan names, if any (validated: a valid name).
    pub fn budget(&self) -> Option<&str> {
        self.spec.budget.as_deref()
    }

    /// The test's weight on its budget, if the plan sets one (validated: within bounds, and
    /// only with `budget:`).
    pub fn weight(&self) -> Option<f64> {
        self.spec.weight
    }
}

/// What a budget records of a limit, and compares between declarations: the rate, the window,
/// the burst, the shape (what decides the shared GCRA) and the reserve (the headroom the whole
/// budget leaves to others: two tests leaving different headroom on one limit would each
/// think the other's traffic is production). Which requests a limit matches, `adaptive` and
/// `spread` are each test's own business and may differ.
pub fn definition(limit: &Limit) -> String {
    let reserve = limit
        .reserve
        .map(|r| format!(", reserve {r}"))
        .unwrap_or_default();
    format!(
        "{} within {}, burst {}, shape {}{reserve}",
        limit.limit,
        humantime::format_duration(limit.window),
        limit.burst,
        limit.shape.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_names_are_ids() {
        assert!(name_problem("acme-prod").is_none());
        assert!(name_problem("Org_1.eu").is_none());
        assert!(name_problem(&"x".repeat(MAX_BUDGET_NAME_LEN)).is_none());
        for bad in ["", "a b", "a{b}", "acme:prod", "é"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem(&"x".repeat(MAX_BUDGET_NAME_LEN + 1)).is_some());
    }

    #[test]
    fn a_plan_with_a_bad_budget_name_names_the_field() {
        let src = "name: t\ntarget: http://127.0.0.1:1\nbudget: 'acme prod'\n\
                   scenarios:\n- {name: s, executor: constant-vus, vus: 1, duration: 1s, \
                   requests: [{name: r, path: /}]}\n";
        let errs = crate::load_str(src, "test.yaml", &crate::Refs::default())
            .expect_err("an invalid budget name");
        let text = errs.to_string();
        assert!(text.contains("budget"), "{text}");
        assert!(text.contains("1-64 characters"), "{text}");
    }

    #[test]
    fn a_weight_is_bounded_and_needs_a_budget() {
        let plan = |extra: &str| {
            format!(
                "name: t\ntarget: http://127.0.0.1:1\n{extra}\nscenarios:\n- {{name: s, \
                 executor: constant-vus, vus: 1, duration: 1s, requests: [{{name: r, path: /}}]}}\n"
            )
        };
        let ok = crate::load_str(
            &plan("budget: acme\nweight: 3"),
            "test.yaml",
            &crate::Refs::default(),
        )
        .expect("a valid weight");
        assert_eq!(ok.weight(), Some(3.0));
        for (extra, want) in [
            ("budget: acme\nweight: 0", "from 0.01 to 1000"),
            ("budget: acme\nweight: -1", "from 0.01 to 1000"),
            ("budget: acme\nweight: 1001", "from 0.01 to 1000"),
            ("weight: 2", "name the budget"),
        ] {
            let text = crate::load_str(&plan(extra), "test.yaml", &crate::Refs::default())
                .expect_err(extra)
                .to_string();
            assert!(
                text.contains("weight") && text.contains(want),
                "{extra}: {text}"
            );
        }
        let text = crate::load_str(
            &plan("budget: acme\nweight: heavy"),
            "test.yaml",
            &crate::Refs::default(),
        )
        .expect_err("not a number")
        .to_string();
        assert!(text.contains("weight"), "{text}");
        assert!(weight_problem(f64::NAN).is_some());
        assert!(weight_problem(f64::INFINITY).is_some());
    }

    #[test]
    fn definitions_differ_by_rate_window_burst_and_shape_only() {
        let src = "name: t\ntarget: http://127.0.0.1:1\nbudget: acme-prod\n\
                   limits:\n- {name: org, limit: 10/s, burst: 2, scope: fleet}\n\
                   - {name: org2, limit: 10/s, burst: 2, scope: fleet, adaptive: true}\n\
                   - {name: org3, limit: 10/s, burst: 3, scope: fleet}\n\
                   - {name: org4, limit: 10/s, burst: 2, scope: fleet, shape: token-bucket}\n\
                   - {name: org5, limit: 10/s, burst: 2, scope: fleet, reserve: 10%}\n\
                   scenarios:\n- {name: s, executor: constant-vus, vus: 1, duration: 1s, \
                   requests: [{name: r, path: /}]}\n";
        let plan =
            crate::load_str(src, "test.yaml", &crate::Refs::default()).expect("a valid plan");
        assert_eq!(plan.budget(), Some("acme-prod"));
        let d: Vec<String> = plan.limits.iter().map(definition).collect();
        assert_eq!(d[0], "10/s within 1s, burst 2, shape sliding-window");
        assert_eq!(d[0], d[1], "adaptive is the test's own");
        assert_ne!(d[0], d[2]);
        assert_ne!(d[0], d[3]);
        assert_eq!(
            d[4], "10/s within 1s, burst 2, shape sliding-window, reserve 10%",
            "two declarations that disagree on reserve are refused"
        );
    }
}
