//! From a `LoadTest` to what the operator runs: the plan validated by pacer-plan (errors named
//! `spec.plan.<field>`), the number of workers, the test id, the start timeout.
//!
//! The LoadTest's author is trusted less than the operator, so its plan is read with
//! [`Refs::Remote`]: a `${file:}` reference is refused by pacer-plan's parser before anything
//! is read, and `${env:NAME}` may only name what the LoadTest gives its worker pods.
//! The operator never sees a credential: `${env:NAME}` references stay unresolved in the plan
//! the workers receive, and each worker resolves them from its own environment (Secrets through
//! `secretKeyRef`). To validate the plan here anyway, every name the worker pods will have is
//! resolved to a stand-in: the literal value of a `workerTemplate.env` entry when it has one,
//! a placeholder otherwise. A name the pods will not have is an error naming the field.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pacer_plan::spec::PlanSpec;
use pacer_plan::{FieldError, Plan, PlanError, Refs};
use serde_json::json;

use crate::crd::{CredentialRef, LoadTest, LoadTestSpec};

/// What a valid LoadTest runs.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Validated; its `spec` is the plan as written (references unresolved), which is what
    /// the workers receive.
    pub plan: Arc<Plan>,
    pub workers: u32,
    pub test_id: String,
    pub start_timeout: Duration,
    /// How long its workers keep sending without a controller (`spec.lostAfter`,
    /// `pacer worker --lost-after`).
    pub lost_after: Duration,
    /// The RateBudget the test runs on (`spec.budgetRef`): already merged into `plan`; its
    /// credentials, Redis and idle expiry go to the worker pods.
    pub budget: Option<crate::budget::Joined>,
}

/// What the spec does not say and the operator decides.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub start_timeout: Duration,
    /// The most workers one test may ask for.
    pub max_workers: u32,
    /// What a LoadTest may ask of its worker pods (images, ServiceAccounts, env).
    pub worker_policy: crate::policy::WorkerPolicy,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(120),
            max_workers: 1000,
            worker_policy: crate::policy::WorkerPolicy::default(),
        }
    }
}

/// The shortest `spec.startTimeout`: a pod is rarely scheduled, pulled and connected faster.
pub const MIN_START_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `spec.startTimeout`: an hour covers a cluster scaling up for the workers;
/// beyond it a test is better failed, its pods' problem shown.
pub const MAX_START_TIMEOUT: Duration = Duration::from_secs(3600);

/// Stands in for values only the worker pods know (Secrets).
pub const PLACEHOLDER: &str = "resolved-by-the-worker";

/// `PACER_AUTH_<NAME>_<WHAT>`: the environment variable a worker pod gets for a credential.
pub fn credential_env(auth: &str, what: &str) -> String {
    let name: String = auth
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PACER_AUTH_{name}_{what}")
}

/// The environment variables of a credential: `(name, secret key)`.
pub fn credential_envs(c: &CredentialRef) -> Vec<(String, String)> {
    let r = &c.secret_ref;
    [
        ("CLIENT_ID", &r.client_id_key),
        ("CLIENT_SECRET", &r.client_secret_key),
        ("TOKEN", &r.token_key),
    ]
    .into_iter()
    .filter_map(|(what, key)| {
        key.as_ref()
            .map(|k| (credential_env(&c.name, what), k.clone()))
    })
    .collect()
}

/// How many characters of the uid tell a LoadTest from an earlier one of the same name: 8
/// hex digits are 2^32 values, and the names they extend are already unique in a namespace at
/// any one time.
pub const UID_SLUG_CHARS: usize = 8;

/// The start of a LoadTest's uid (its letters and digits, without the dashes), which tells it
/// from an earlier LoadTest of the same name: in its test id and in the name of its session
/// Secret. Empty when the LoadTest has no uid yet.
pub fn uid_slug(lt: &LoadTest) -> String {
    lt.metadata
        .uid
        .as_deref()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(UID_SLUG_CHARS)
        .collect()
}

/// The test id: the LoadTest's name (shortened) and the start of its uid ([`uid_slug`]), so a
/// LoadTest deleted and created again under the same name is another test (in Redis too).
/// 1-64 characters among `a-z 0-9 . -`.
pub fn test_id(lt: &LoadTest) -> String {
    let name = lt.metadata.name.as_deref().unwrap_or("loadtest");
    let short = crate::resources::short(name, 48);
    let uid = uid_slug(lt);
    if uid.is_empty() {
        short
    } else {
        format!("{short}-{uid}")
    }
}

/// Check a LoadTest and make its plan: every problem found, each with its field path (in
/// the order of the steps below).
pub fn prepare(lt: &LoadTest, defaults: &Defaults) -> Result<Prepared, Vec<FieldError>> {
    prepare_on(lt, defaults, None, None)
}

/// [`prepare`] for a LoadTest whose `spec.budgetRef` the operator looked up (`found`; `None`:
/// not looked up, which a LoadTest with a budgetRef is refused for): the budget merged into the
/// plan ([`crate::budget::join`]) before it is checked, so its limits are checked with the
/// plan's and the workers get the merged plan.
pub fn prepare_on(
    lt: &LoadTest,
    defaults: &Defaults,
    found: Option<crate::budget::Found<'_>>,
    default_redis: Option<&crate::resources::RedisSource>,
) -> Result<Prepared, Vec<FieldError>> {
    let mut merged_spec = None;
    let mut budget = None;
    if lt.spec.budget_ref.is_some() && matches!(found, Some(crate::budget::Found::Unchecked)) {
        merged_spec = Some(unchecked_budget(&lt.spec));
    } else if lt.spec.budget_ref.is_some() {
        let found = found.unwrap_or(crate::budget::Found::Missing);
        let (plan, joined) = crate::budget::join(lt, found, default_redis)?;
        let mut spec = lt.spec.clone();
        spec.plan = plan;
        spec.credentials.extend(joined.credentials.iter().cloned());
        merged_spec = Some(spec);
        budget = Some(joined);
    }
    let spec = merged_spec.as_ref().unwrap_or(&lt.spec);
    let mut errors = defaults.worker_policy.check(lt);
    if lt.spec.plan_ref.is_some() {
        // The operator reads the ConfigMap and hands the LoadTest here inlined
        // (crate::planref); whoever calls this without doing so has no plan to check.
        errors.push(FieldError::new(
            "spec.planRef",
            "the plan is in a ConfigMap: read it first (pacer validate takes the ConfigMap's file too)",
        ));
        return Err(errors);
    }
    let provided = provided_env(spec, &mut errors);
    let plan = validated_plan(spec, &provided, &mut errors);
    if let Some(plan) = &plan {
        errors.extend(unknown_credentials(spec, plan));
        errors.extend(crate::test_data::check_names(plan, spec));
    }
    let workers = workers(spec, plan.as_ref(), defaults).unwrap_or_else(|e| {
        errors.push(e);
        0
    });
    let start_timeout = start_timeout(spec, defaults).unwrap_or_else(|e| {
        errors.push(e);
        defaults.start_timeout
    });
    let lost_after = lost_after(spec).unwrap_or_else(|e| {
        errors.push(e);
        pacer_proto::LOST_AFTER
    });
    let written = written_plan(spec, plan.is_some(), &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(mut plan), Some(written)) = (plan, written) else {
        return Err(vec![FieldError::new("spec.plan", "invalid plan")]);
    };
    plan.spec = written;
    Ok(Prepared {
        plan: Arc::new(plan),
        workers,
        test_id: test_id(lt),
        start_timeout,
        lost_after,
        budget,
    })
}

/// A LoadTest's spec as [`crate::budget::Found::Unchecked`] checks it: the plan alone, with a
/// stand-in credential (every key) for each of its `auth` entries the LoadTest gives none, as
/// the budget may.
fn unchecked_budget(spec: &LoadTestSpec) -> LoadTestSpec {
    let mut spec = spec.clone();
    let auths: Vec<String> = spec
        .plan
        .get("auth")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| Some(x.get("name")?.as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default();
    for name in auths {
        if spec.credentials.iter().any(|c| c.name == name) {
            continue;
        }
        spec.credentials.push(CredentialRef {
            name,
            secret_ref: crate::crd::CredentialSecretRef {
                name: "the RateBudget's".into(),
                client_id_key: Some(PLACEHOLDER.into()),
                client_secret_key: Some(PLACEHOLDER.into()),
                token_key: Some(PLACEHOLDER.into()),
            },
        });
    }
    spec
}

/// The environment the worker pods will have, by name: a `workerTemplate.env` entry's literal
/// value, `None` for a value only the pod knows (a credential's Secret, a `valueFrom`). A name
/// in the operator's reserved prefix is an error.
fn provided_env(
    spec: &LoadTestSpec,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, Option<String>> {
    let mut provided = BTreeMap::new();
    for c in &spec.credentials {
        for (env, _) in credential_envs(c) {
            provided.insert(env, None);
        }
    }
    if let Some(t) = &spec.worker_template {
        for (i, e) in t.env.iter().enumerate() {
            if e.name.starts_with(pacer_plan::refs::RESERVED_ENV_PREFIX) {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.env[{i}].name"),
                    "names starting with PACER_ are reserved for the operator",
                ));
                continue;
            }
            provided.insert(e.name.clone(), e.value.clone());
        }
    }
    provided
}

/// `spec.plan` validated by pacer-plan as a remote plan: `${env:NAME}` resolved to the
/// pods' value or [`PLACEHOLDER`], a name they will not have refused, no `${file:}`.
fn validated_plan(
    spec: &LoadTestSpec,
    provided: &BTreeMap<String, Option<String>>,
    errors: &mut Vec<FieldError>,
) -> Option<Plan> {
    // With `envFrom`, the pods have names only their ConfigMaps and Secrets know.
    let env_from = spec
        .worker_template
        .as_ref()
        .is_some_and(|t| !t.env_from.is_empty());
    let env = |name: &str| -> Option<String> {
        provided
            .get(name)
            .map(|v| v.clone().unwrap_or_else(|| PLACEHOLDER.to_string()))
            .or_else(|| {
                (env_from && !name.starts_with(pacer_plan::refs::RESERVED_ENV_PREFIX))
                    .then(|| PLACEHOLDER.to_string())
            })
    };
    let doc = json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "spec": { "plan": spec.plan.clone() },
    });
    let refs = Refs::Remote { provided: &env };
    match pacer_plan::load_value(doc, "LoadTest", &refs) {
        Ok(p) => Some(p),
        Err(PlanError::Invalid { errors: e, .. }) => {
            errors.extend(e);
            None
        }
        Err(other) => {
            errors.push(FieldError::new("spec.plan", other.to_string()));
            None
        }
    }
}

/// A credential for an auth the plan does not have.
fn unknown_credentials(spec: &LoadTestSpec, plan: &Plan) -> Vec<FieldError> {
    spec.credentials
        .iter()
        .enumerate()
        .filter(|(_, c)| !plan.auth.iter().any(|a| a.name == c.name))
        .map(|(i, c)| {
            FieldError::new(
                format!("spec.credentials[{i}].name"),
                format!(
                    "no auth named {:?} in spec.plan.auth (it has: {})",
                    c.name,
                    names(plan.auth.iter().map(|a| a.name.as_str()))
                ),
            )
        })
        .collect()
}

/// How many workers: `spec.workers`, else the plan's, else 1; at most `max_workers`.
fn workers(
    spec: &LoadTestSpec,
    plan: Option<&Plan>,
    defaults: &Defaults,
) -> Result<u32, FieldError> {
    let workers = spec
        .workers
        .or_else(|| plan.map(|p| p.workers))
        .unwrap_or(1);
    if workers == 0 || workers > defaults.max_workers {
        return Err(FieldError::new(
            if spec.workers.is_some() {
                "spec.workers"
            } else {
                "spec.plan.workers"
            },
            format!(
                "{workers} workers: give 1 to {} (this operator's --max-workers)",
                defaults.max_workers
            ),
        ));
    }
    Ok(workers)
}

/// `spec.startTimeout`, within [`MIN_START_TIMEOUT`]..=[`MAX_START_TIMEOUT`], or the
/// operator's default.
fn start_timeout(spec: &LoadTestSpec, defaults: &Defaults) -> Result<Duration, FieldError> {
    let Some(s) = &spec.start_timeout else {
        return Ok(defaults.start_timeout);
    };
    match pacer_plan::duration::parse(s).ok() {
        Some(d) if (MIN_START_TIMEOUT..=MAX_START_TIMEOUT).contains(&d) => Ok(d),
        _ => Err(FieldError::new(
            "spec.startTimeout",
            format!(
                "{s:?}: give a duration from {}s to {}s such as 90s or 5m",
                MIN_START_TIMEOUT.as_secs(),
                MAX_START_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// `spec.lostAfter`, within the protocol's bounds (`pacer_proto::lost_after_problem`).
fn lost_after(spec: &LoadTestSpec) -> Result<Duration, FieldError> {
    let Some(s) = &spec.lost_after else {
        return Ok(pacer_proto::LOST_AFTER);
    };
    let d = pacer_plan::duration::parse(s).map_err(|e| {
        FieldError::new(
            "spec.lostAfter",
            format!("{s:?}: {e} (a duration such as 30s or 2m)"),
        )
    })?;
    match pacer_proto::lost_after_problem(d) {
        None => Ok(d),
        Some(problem) => Err(FieldError::new(
            "spec.lostAfter",
            format!("{s:?}: {problem}"),
        )),
    }
}

/// What the workers receive: the plan as written, references unresolved. Only a plan that
/// validated says why it cannot be read as written (a reference standing for a number).
fn written_plan(
    spec: &LoadTestSpec,
    validated: bool,
    errors: &mut Vec<FieldError>,
) -> Option<PlanSpec> {
    match serde_json::from_value(spec.plan.clone()) {
        Ok(s) => Some(s),
        Err(e) if validated => {
            errors.push(FieldError::new(
                "spec.plan",
                format!(
                    "{e}: ${{env:}} references are resolved by the workers, so they can only stand for text fields here"
                ),
            ));
            None
        }
        Err(_) => None,
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_slug_is_the_start_of_the_uid_without_dashes() {
        let mut lt: LoadTest = serde_json::from_value(json!({
            "apiVersion": "pacer.dev/v1alpha1",
            "kind": "LoadTest",
            "metadata": {"name": "checkout", "uid": "0f3a-9b2c-77de-4410"},
            "spec": {"plan": {}}
        }))
        .expect("loadtest");
        assert_eq!(uid_slug(&lt), "0f3a9b2c");
        assert_eq!(test_id(&lt), "checkout-0f3a9b2c");
        lt.metadata.uid = None;
        assert_eq!(uid_slug(&lt), "");
        assert_eq!(test_id(&lt), "checkout");
    }

    fn spec(fields: serde_json::Value) -> LoadTestSpec {
        let mut doc = json!({"plan": {}});
        doc.as_object_mut()
            .expect("object")
            .extend(fields.as_object().expect("object").clone());
        serde_json::from_value(doc).expect("spec")
    }

    #[test]
    fn the_start_timeout_is_bounded_or_the_default() {
        let defaults = Defaults::default();
        let timeout =
            |v: serde_json::Value| start_timeout(&spec(json!({"startTimeout": v})), &defaults);
        assert_eq!(
            start_timeout(&spec(json!({})), &defaults),
            Ok(defaults.start_timeout)
        );
        assert_eq!(timeout(json!("5m")), Ok(Duration::from_secs(300)));
        assert_eq!(timeout(json!("5s")), Ok(MIN_START_TIMEOUT));
        for refused in ["4s", "2h", "soon"] {
            let e = timeout(json!(refused)).expect_err(refused);
            assert_eq!(e.path, "spec.startTimeout");
            assert!(e.to_string().contains("from 5s to 3600s"), "{e}");
        }
    }

    #[test]
    fn lost_after_is_bounded_or_the_default() {
        let at = |v: serde_json::Value| lost_after(&spec(json!({"lostAfter": v})));
        assert_eq!(lost_after(&spec(json!({}))), Ok(pacer_proto::LOST_AFTER));
        assert_eq!(at(json!("2m")), Ok(Duration::from_secs(120)));
        for refused in ["4s", "2h", "soon"] {
            let e = at(json!(refused)).expect_err(refused);
            assert_eq!(e.path, "spec.lostAfter");
            assert!(e.to_string().contains(refused), "{e}");
        }
    }

    #[test]
    fn workers_are_the_specs_then_one_within_the_operators_bound() {
        let defaults = Defaults {
            max_workers: 10,
            ..Defaults::default()
        };
        assert_eq!(workers(&spec(json!({})), None, &defaults), Ok(1));
        assert_eq!(
            workers(&spec(json!({"workers": 4})), None, &defaults),
            Ok(4)
        );
        let e = workers(&spec(json!({"workers": 11})), None, &defaults).expect_err("too many");
        assert_eq!(e.path, "spec.workers");
        assert!(e.to_string().contains("give 1 to 10"), "{e}");
        let e = workers(&spec(json!({"workers": 0})), None, &defaults).expect_err("none");
        assert_eq!(e.path, "spec.workers");
    }

    #[test]
    fn credential_env_names() {
        assert_eq!(
            credential_env("genesys", "CLIENT_ID"),
            "PACER_AUTH_GENESYS_CLIENT_ID"
        );
        assert_eq!(
            credential_env("my-api.v2", "TOKEN"),
            "PACER_AUTH_MY_API_V2_TOKEN"
        );
    }
}
