//! From a well-formed [`PlanSpec`] to a runnable [`Plan`]: every rule that types cannot say,
//! each broken rule reported with its field path, all of them at once.
//!
//! One function per part of the plan, in `validate/`, each taking its part of the spec and
//! pushing its errors with their paths; [`validate`] calls them in the order the plan reads,
//! which is the order the errors are reported in: the plan's own fields, `http`, `auth`,
//! `limits`, `retry`, `scenarios` (each with its executor and its requests), `thresholds`.

mod auth;
mod executor;
mod http;
mod limits;
mod requests;
mod retry;
mod scenarios;
mod thresholds;

use crate::error::FieldError;
use crate::model::Plan;
use crate::spec::PlanSpec;
use crate::template::Template;

/// Collects errors while building the plan.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(FieldError::new(path, msg));
    }

    fn template(&mut self, path: &str, src: &str) -> Template {
        match Template::parse(src) {
            Ok(t) => t,
            Err(e) => {
                self.err(path, e.to_string());
                Template::default()
            }
        }
    }

    /// An HTTP status code: 100 to 599.
    fn status(&mut self, path: String, status: u16) {
        if !(100..=599).contains(&status) {
            self.err(path, format!("{status} is not an HTTP status code"));
        }
    }

    fn name(&mut self, path: &str, name: &str) {
        if name.trim().is_empty() {
            self.err(path, "must not be empty");
        } else if name.len() > 128
            || name
                .chars()
                .any(|c| c.is_control() || c == '{' || c == '}' || c == ',')
        {
            self.err(
                path,
                "must be at most 128 characters, without control characters, braces or commas",
            );
        }
    }
}

/// Validate a spec. `source` is the document before references were resolved (kept for reports).
pub fn validate(spec: PlanSpec, source: serde_json::Value) -> Result<Plan, Vec<FieldError>> {
    // Every number within its bound first (crate::bounds), so nothing below or after
    // validation computes with a value no test needs.
    let mut c = Checker {
        errors: crate::bounds::check(&spec),
    };
    c.errors.extend(crate::budget::check(&spec));
    let target = plan_fields(&mut c, &spec);
    let http = http::options(&mut c, spec.http.as_ref());
    let (auth, auth_names) = auth::credentials(&mut c, &spec.auth, target.as_ref());
    let limits = limits::limits(&mut c, &spec.limits);
    let retry = retry::policy(&mut c, spec.retry.as_ref());
    let (scenarios, request_names) =
        scenarios::scenarios(&mut c, &spec, target.as_ref(), &http, &auth_names);
    let thresholds = thresholds::thresholds(&mut c, &spec.thresholds, &request_names);
    let data = crate::data::sources(&mut c.errors, &spec.data);

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let Some(target) = target else {
        return Err(vec![FieldError::new("target", "invalid")]);
    };
    let plan = Plan {
        name: spec.name.clone(),
        target,
        workers: spec.workers.unwrap_or(1),
        on_worker_loss: spec.on_worker_loss.unwrap_or_default(),
        variables: spec.variables.clone(),
        data,
        http,
        auth,
        limits,
        retry,
        scenarios,
        thresholds,
        source,
        spec,
    };
    let mut errors = Vec::new();
    crate::data::check_refs(&mut errors, &plan);
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// The plan's own fields: `name`, `target` (returned when it is an http(s) URL with a host),
/// `workers`.
fn plan_fields(c: &mut Checker, spec: &PlanSpec) -> Option<url::Url> {
    c.name("name", &spec.name);
    let target = match url::Url::parse(&spec.target) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(u) => {
            c.err(
                "target",
                format!(
                    "must be an http:// or https:// URL with a host, got scheme {:?}",
                    u.scheme()
                ),
            );
            None
        }
        Err(e) => {
            c.err("target", format!("not a URL ({e}): {:?}", spec.target));
            None
        }
    };
    if spec.workers == Some(0) {
        c.err("workers", "must be at least 1");
    }
    target
}

/// Is `s` an HTTP token (a method, a header name)?
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `u` as an absolute http(s) URL: as it is, or relative to the target (`base`).
fn join_url(base: Option<&url::Url>, u: &str) -> Result<url::Url, String> {
    match url::Url::parse(u) {
        Ok(abs) if matches!(abs.scheme(), "http" | "https") => Ok(abs),
        Ok(abs) => Err(format!(
            "must be http:// or https://, got scheme {:?}",
            abs.scheme()
        )),
        Err(url::ParseError::RelativeUrlWithoutBase) => match base {
            Some(b) => b
                .join(u)
                .map_err(|e| format!("cannot join {u:?} to target: {e}")),
            None => Err("is relative but `target` is invalid".into()),
        },
        Err(e) => Err(format!("not a URL ({e})")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use serde_json::{Value, json};

    use super::*;

    /// The paths of `plan`'s errors, in the order they are reported.
    fn error_paths(plan: Value) -> Vec<String> {
        let spec: PlanSpec = serde_json::from_value(plan).unwrap();
        validate(spec, Value::Null)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn errors_are_reported_in_the_order_the_plan_reads() {
        let paths = error_paths(json!({
            "name": "",
            "target": "http://127.0.0.1:9",
            "workers": 0,
            "http": { "timeout": "0s" },
            "auth": [{ "name": "b", "type": "bearer" }],
            "limits": [{ "name": "l", "limit": "10/s", "burst": 0 }],
            "retry": { "maxAttempts": 0 },
            "scenarios": [{
                "name": "s",
                "executor": "constant-arrival-rate",
                "duration": "1s",
                "requests": [{ "name": "r", "method": "G E T", "path": "/" }]
            }],
            "thresholds": { "nope": ["p(95)<1s"] }
        }));
        assert_eq!(
            paths,
            [
                "name",
                "workers",
                "http.timeout",
                "auth[0].token",
                "limits[0].burst",
                "retry.maxAttempts",
                "scenarios[0].rate",
                "scenarios[0].requests[0].method",
                "thresholds.nope",
            ]
        );
    }

    #[test]
    fn a_valid_plan_validates() {
        let spec: PlanSpec = serde_json::from_value(json!({
            "name": "t",
            "target": "http://127.0.0.1:9",
            "scenarios": [{
                "name": "s",
                "executor": "shared-iterations",
                "iterations": 1,
                "requests": [{ "name": "r", "path": "/" }]
            }]
        }))
        .unwrap();
        let plan = validate(spec, Value::Null).unwrap();
        assert_eq!(plan.scenarios[0].requests[0].method, "GET");
    }

    #[test]
    fn http_tokens_are_methods_and_header_names() {
        for ok in ["GET", "x-api-key", "M-SEARCH", "!#$%&'*+-.^_`|~"] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in ["", "G E T", "a:b", "é", "x\n"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_url_is_absolute_http_or_joined_to_the_target() {
        let target = url::Url::parse("http://api.test/v1/").unwrap();
        assert_eq!(
            join_url(Some(&target), "token").unwrap().as_str(),
            "http://api.test/v1/token"
        );
        assert_eq!(
            join_url(None, "https://idp.test/t").unwrap().as_str(),
            "https://idp.test/t"
        );
        assert!(join_url(Some(&target), "ftp://idp.test/t").is_err());
        assert_eq!(
            join_url(None, "/token").unwrap_err(),
            "is relative but `target` is invalid"
        );
    }
}
