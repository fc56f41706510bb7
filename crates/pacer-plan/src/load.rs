//! Reading a plan: YAML or JSON text -> references resolved -> typed spec -> validated plan.
//! A whole `LoadTest` manifest is accepted too; its `spec.plan` is the plan, and its
//! references are read as a LoadTest's ([`Refs::for_manifest`]: never a file).
//!
//! Every error of a load goes through the references' [`crate::refs::Redactor`] here, the
//! one place between the resolved plan and any message: no resolved value is ever printed.

use std::path::Path;

use serde_json::Value;

use crate::error::{FieldError, PlanError};
use crate::refs::{Redactor, Refs};
use crate::spec::PlanSpec;
use crate::{Plan, validate};

/// Load and validate a plan file written by whoever runs this process (its references read
/// this process's environment, and files relative to the plan's directory).
pub fn load_file(path: &Path) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let refs = Refs::Local {
        env: &|name| std::env::var(name).ok(),
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    load_str(&text, &path.display().to_string(), &refs)
}

/// Load and validate a plan from text. `source_name` names it in errors.
pub fn load_str(text: &str, source_name: &str, refs: &Refs<'_>) -> Result<Plan, PlanError> {
    let doc = parse_document(text, source_name)?;
    load_value(doc, source_name, refs)
}

/// [`load_str`], but no data file is read: the plan's `data:` sources stay unattached
/// (`table: None`), as a LoadTest's do until the operator attaches them. For a plan written
/// to run somewhere else (`pacer import`: its data files sit beside the plan it writes,
/// wherever that goes), checked as far as it can be without them; `pacer run` reads them.
pub fn load_str_without_data(
    text: &str,
    source_name: &str,
    refs: &Refs<'_>,
) -> Result<Plan, PlanError> {
    let doc = parse_document(text, source_name)?;
    load_document(doc, source_name, refs, ReadData::No)
}

/// Whether a plan of this machine's operator reads its data files as it loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadData {
    Yes,
    No,
}

/// Parse YAML or JSON into a generic document.
pub fn parse_document(text: &str, source_name: &str) -> Result<Value, PlanError> {
    if text.trim().is_empty() {
        return Err(PlanError::Syntax {
            source_name: source_name.to_string(),
            message: "the document is empty".into(),
        });
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| PlanError::Syntax {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })
}

/// Validate a document that is a plan, or a LoadTest manifest holding one in `spec.plan`.
pub fn load_value(doc: Value, source_name: &str, refs: &Refs<'_>) -> Result<Plan, PlanError> {
    load_document(doc, source_name, refs, ReadData::Yes)
}

fn load_document(
    doc: Value,
    source_name: &str,
    refs: &Refs<'_>,
    read_data: ReadData,
) -> Result<Plan, PlanError> {
    let invalid = |errors: Vec<FieldError>| PlanError::Invalid {
        source_name: source_name.to_string(),
        errors,
    };
    let (mut plan_doc, prefix, refs) = match manifest_plan(&doc) {
        Some(Ok(p)) => (p.clone(), "spec.plan", refs.for_manifest()),
        Some(Err(e)) => return Err(invalid(vec![e])),
        None => (doc, "", refs.reborrow()),
    };
    if !plan_doc.is_object() {
        return Err(invalid(vec![FieldError::new(
            prefix,
            "a plan is a mapping (name, target, scenarios, ...)",
        )]));
    }
    let source = plan_doc.clone();
    let (redactor, errors) = refs.resolve(&mut plan_doc);
    let fail = |errors: Vec<FieldError>| invalid(prefixed(prefix, redacted(&redactor, errors)));
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    let spec: PlanSpec = match serde_path_to_error::deserialize(&plan_doc) {
        Ok(s) => s,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = clean_serde_message(&e.inner().to_string());
            return Err(fail(vec![FieldError::new(path, message)]));
        }
    };
    let mut plan = validate::validate(spec, source).map_err(&fail)?;
    // A plan of this machine's operator reads its data files now; a LoadTest's reads none
    // (its rows are attached by the operator from ConfigMaps, or by a worker from its Assign).
    if let Refs::Local { base_dir, .. } = &refs
        && read_data == ReadData::Yes
    {
        crate::data::read_files(&mut plan, base_dir).map_err(&fail)?;
    }
    Ok(plan)
}

fn redacted(redactor: &Redactor, errors: Vec<FieldError>) -> Vec<FieldError> {
    errors.into_iter().map(|e| redactor.redact(e)).collect()
}

/// `Some(Ok(plan))` for a LoadTest manifest, `Some(Err)` for a LoadTest without a plan,
/// `None` for a plain plan.
fn manifest_plan(doc: &Value) -> Option<Result<&Value, FieldError>> {
    let obj = doc.as_object()?;
    if !(obj.contains_key("apiVersion") && obj.contains_key("kind")) {
        return None;
    }
    if obj.get("kind").and_then(Value::as_str) != Some("LoadTest") {
        return Some(Err(FieldError::new(
            "kind",
            format!(
                "expected a plan or a LoadTest manifest, got kind {}",
                obj["kind"]
            ),
        )));
    }
    Some(
        doc.pointer("/spec/plan")
            .ok_or_else(|| FieldError::new("spec.plan", "a LoadTest needs spec.plan")),
    )
}

fn prefixed(prefix: &str, errors: Vec<FieldError>) -> Vec<FieldError> {
    if prefix.is_empty() {
        return errors;
    }
    errors
        .into_iter()
        .map(|mut e| {
            e.path = if e.path.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", e.path)
            };
            e
        })
        .collect()
}

/// serde's messages mention Rust names; say it in the plan's words.
fn clean_serde_message(m: &str) -> String {
    m.replace("invalid type: ", "wrong type: ")
        .replace("unknown variant", "unknown value")
        .replace("map", "mapping")
        .replace("sequence", "list")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<Plan, PlanError> {
        load_str(
            text,
            "test.yaml",
            &Refs::Local {
                env: &no_env,
                base_dir: std::path::PathBuf::from("."),
            },
        )
    }

    const GOOD: &str = r#"
name: t
target: http://127.0.0.1:8080
duration: 10s
scenarios:
  - name: s
    executor: constant-arrival-rate
    rate: 200/s
    requests:
      - name: q
        method: post
        path: /api/v2/analytics/conversations/details/query
        headers: { X-Correlation-Id: "{{uuid}}" }
        json: { paging: { pageSize: 25, pageNumber: "{{randInt 1 10}}" } }
thresholds:
  http_req_duration: ["p(95)<800ms"]
  "http_req_duration{request:q}": [{ threshold: "p(99)<2s", abortOnFail: true }]
"#;

    #[test]
    fn good_plan_validates() {
        let p = load(GOOD).unwrap();
        assert_eq!(p.scenarios[0].executor.planned_iterations(), Some(2000));
        assert_eq!(p.thresholds.len(), 2);
        assert!(p.thresholds.iter().any(|t| t.abort_on_fail));
        assert_eq!(p.scenarios[0].requests[0].method, "POST");
    }

    #[test]
    fn manifest_spec_plan_is_used_and_paths_are_prefixed() {
        let m = format!(
            "apiVersion: pacer.dev/v1alpha1\nkind: LoadTest\nmetadata: {{name: x}}\nspec:\n  plan:\n{}",
            GOOD.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        assert!(load(&m).is_ok());
        let bad = m.replace("rate: 200/s", "rate: fast");
        let e = load(&bad).unwrap_err();
        assert_eq!(e.field_errors()[0].path, "spec.plan.scenarios[0].rate");
    }

    #[test]
    fn type_errors_carry_the_path() {
        let e = load(&GOOD.replace("rate: 200/s", "rate: fast")).unwrap_err();
        let f = &e.field_errors()[0];
        assert_eq!(f.path, "scenarios[0].rate");
        assert!(
            f.message.contains("expected N/s, N/min, N/h"),
            "{}",
            f.message
        );
        assert!(f.message.contains("\"fast\""));
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = GOOD
            .replace("rate: 200/s", "rate: 0/s\n    vus: 3")
            .replace("p(95)<800ms", "p(95)<<800ms");
        let e = load(&text).unwrap_err();
        let paths: Vec<_> = e.field_errors().iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"scenarios[0].rate"), "{paths:?}");
        assert!(paths.contains(&"scenarios[0].vus"), "{paths:?}");
        assert!(
            paths.contains(&"thresholds.http_req_duration[0]"),
            "{paths:?}"
        );
    }
}
