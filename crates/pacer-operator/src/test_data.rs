//! A LoadTest's test data (the plan's `data:` sources, docs/plan-format.md "Test data"): each
//! source's file comes from the ConfigMap key `spec.data.NAME` names, never from the
//! operator's disk (a LoadTest's plan reads no file: [`pacer_plan::Refs::Remote`]).
//!
//! The operator reads the ConfigMaps once, when the test may start (`get` on ConfigMaps, as
//! for `spec.planRef`), and attaches the files to the prepared plan with the same parser and
//! bounds as a local plan's ([`pacer_plan::data::attach`]); its coordinator then sends them to
//! every worker in the Assign, and each worker takes its own rows (`unique` rows split like
//! the iterations). So the worker pods mount nothing for the data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use pacer_plan::{FieldError, Plan};

use crate::crd::{DataRef, LoadTest, LoadTestSpec};

/// The ConfigMaps `spec.data` names, by name, as read (`None`: there is none).
pub type Found = BTreeMap<String, Option<ConfigMap>>;

/// The plan with the file of each of its sources from the ConfigMaps `found`: every source
/// named in `spec.data`, every `spec.data` entry a source of the plan, each key there, each
/// file valid for its source (its columns those the templates name). Errors name the field.
pub fn attach(plan: &mut Plan, spec: &LoadTestSpec, found: &Found) -> Result<(), Vec<FieldError>> {
    let mut errors = check_names(plan, spec);
    let mut texts = Vec::new();
    for d in &plan.data {
        let Some(r) = spec.data.get(&d.name) else {
            continue;
        };
        match text_of(r, found.get(&r.config_map).and_then(Option::as_ref)) {
            Ok(t) => texts.push((d.name.clone(), t.to_string())),
            Err(e) => errors.push(FieldError::new(format!("spec.data.{}", d.name), e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    pacer_plan::data::attach(plan, texts).map_err(|errors| {
        errors
            .into_iter()
            .map(|mut e| {
                e.path = format!("spec.plan.{}", e.path);
                e
            })
            .collect()
    })
}

/// `spec.data` names the plan's sources, each once, and nothing else: what the LoadTest says
/// before any ConfigMap is read (the operator's checks, `pacer validate`, `pacer submit`).
pub fn check_names(plan: &Plan, spec: &LoadTestSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for name in spec.data.keys() {
        if !plan.data.iter().any(|d| &d.name == name) {
            errors.push(FieldError::new(
                format!("spec.data.{name}"),
                format!("the plan has no data source {name:?} (its `data:` names it)"),
            ));
        }
    }
    for d in &plan.data {
        if !spec.data.contains_key(&d.name) {
            errors.push(FieldError::new(
                format!("spec.data.{}", d.name),
                format!(
                    "the plan's data source {:?} needs its file from a ConfigMap: spec.data.{}: {{configMap: NAME, key: KEY}} (pacer submit packs a plan's files)",
                    d.name, d.name
                ),
            ));
        }
    }
    errors
}

/// The text of one key, or why there is none.
fn text_of<'a>(r: &DataRef, cm: Option<&'a ConfigMap>) -> Result<&'a str, String> {
    let Some(cm) = cm else {
        return Err(format!(
            "no ConfigMap {:?} in the LoadTest's namespace (create it first, e.g. with pacer submit)",
            r.config_map
        ));
    };
    crate::planref::key_text(cm, &r.config_map, &r.key)
}

/// Read the ConfigMaps `spec.data` names and [`attach`] their files to the prepared plan. The
/// outer error is the API call's; the inner one the LoadTest's (its fields named).
pub(crate) async fn resolve(
    lt: &LoadTest,
    ctx: &crate::controller::Context,
    prepared: &mut crate::prepare::Prepared,
) -> crate::controller::Result<Result<(), Vec<FieldError>>> {
    if prepared.plan.data.is_empty() && lt.spec.data.is_empty() {
        return Ok(Ok(()));
    }
    let ns = lt
        .namespace()
        .ok_or(crate::controller::Error::MissingNamespace)?;
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let mut found = Found::new();
    for r in lt.spec.data.values() {
        if !found.contains_key(&r.config_map) {
            let cm = cms.get_opt(&r.config_map).await?;
            found.insert(r.config_map.clone(), cm);
        }
    }
    let plan = std::sync::Arc::make_mut(&mut prepared.plan);
    Ok(attach(plan, &lt.spec, &found))
}

/// The ConfigMap holding one data source's file under `key`, as `pacer submit` creates it.
pub fn data_config_map(name: &str, key: &str, text: &str) -> ConfigMap {
    ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "pacer".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), text.to_string())])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    const PLAN: &str = r#"
name: t
target: http://127.0.0.1:9
data:
  users: { file: users.csv, mode: unique }
scenarios:
  - { name: s, executor: shared-iterations, vus: 1, iterations: 2, requests: [{ name: r, path: "/u/{{data.users.email}}" }] }
"#;

    fn loadtest(data: serde_json::Value) -> LoadTest {
        let plan = pacer_plan::load::parse_document(PLAN, "plan").unwrap();
        let spec: LoadTestSpec =
            serde_json::from_value(serde_json::json!({ "plan": plan, "data": data })).unwrap();
        LoadTest::new("t", spec)
    }

    /// The plan of a LoadTest whose `spec.data` names its one source (the operator's check
    /// passes), for checking other specs' `attach` against.
    fn prepared() -> Plan {
        let lt = loadtest(
            serde_json::json!({ "users": { "configMap": "users-data", "key": "users.csv" } }),
        );
        let p = crate::prepare::prepare(&lt, &Default::default()).unwrap();
        (*p.plan).clone()
    }

    fn found(text: &str) -> Found {
        Found::from([(
            "users-data".to_string(),
            Some(data_config_map("users-data", "users.csv", text)),
        )])
    }

    fn messages(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_files_come_from_the_configmaps_the_spec_names() {
        let lt = loadtest(
            serde_json::json!({ "users": { "configMap": "users-data", "key": "users.csv" } }),
        );
        let mut plan = prepared();
        assert!(
            plan.data[0].table.is_none(),
            "a LoadTest's plan reads no file"
        );
        attach(&mut plan, &lt.spec, &found("id,email\n1,a@x\n2,b@x\n")).unwrap();
        assert_eq!(plan.data[0].table.as_ref().unwrap().rows.len(), 2);
        assert!(plan.data[0].text.is_some(), "what the workers receive");
    }

    #[test]
    fn a_configmap_without_header_is_read_with_the_plans_columns() {
        let plan = PLAN.replace(
            "{ file: users.csv, mode: unique }",
            "{ file: users.csv, mode: unique, columns: [id, email], delimiter: \";\" }",
        );
        let doc = pacer_plan::load::parse_document(&plan, "plan").unwrap();
        let data =
            serde_json::json!({ "users": { "configMap": "users-data", "key": "users.csv" } });
        let spec: LoadTestSpec =
            serde_json::from_value(serde_json::json!({ "plan": doc, "data": data })).unwrap();
        let lt = LoadTest::new("t", spec);
        let mut plan = (*crate::prepare::prepare(&lt, &Default::default())
            .unwrap()
            .plan)
            .clone();
        attach(&mut plan, &lt.spec, &found("1;a@x\n2;\"b;x\"\n")).unwrap();
        let t = plan.data[0].table.as_ref().unwrap();
        assert_eq!(t.columns, ["id", "email"]);
        assert_eq!(t.rows[1], ["2", "b;x"]);
    }

    #[test]
    fn every_problem_names_its_field() {
        let lt = loadtest(serde_json::json!({}));
        // The operator's check, before any ConfigMap is read.
        let e: Vec<String> = crate::prepare::prepare(&lt, &Default::default())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            e[0].starts_with("spec.data.users: the plan's data source"),
            "{e:?}"
        );
        let e = messages(attach(&mut prepared(), &lt.spec, &Found::new()));
        assert!(
            e[0].starts_with("spec.data.users: the plan's data source"),
            "{e:?}"
        );

        let lt = loadtest(serde_json::json!({
            "users": { "configMap": "users-data", "key": "people.csv" },
            "other": { "configMap": "users-data", "key": "x" }
        }));
        let e = messages(attach(&mut prepared(), &lt.spec, &found("id,email\n1,a\n")));
        assert!(
            e[0].starts_with("spec.data.other: the plan has no data source"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("spec.data.users: ConfigMap \"users-data\" has no key \"people.csv\" (it has: users.csv)"),
            "{e:?}"
        );

        let lt =
            loadtest(serde_json::json!({ "users": { "configMap": "nope", "key": "users.csv" } }));
        let e = messages(attach(&mut prepared(), &lt.spec, &found("id,email\n1,a\n")));
        assert!(
            e[0].starts_with("spec.data.users: no ConfigMap \"nope\""),
            "{e:?}"
        );

        let lt = loadtest(
            serde_json::json!({ "users": { "configMap": "users-data", "key": "users.csv" } }),
        );
        let e = messages(attach(&mut prepared(), &lt.spec, &found("id,mail\n1,a\n")));
        assert!(
            e[0].starts_with("spec.plan.scenarios[0].requests[0].path: {{data.users.email}}: users.csv has no column `email`"),
            "{e:?}"
        );
        let e = messages(attach(&mut prepared(), &lt.spec, &found("id,email\n1\n")));
        assert_eq!(
            e,
            ["spec.plan.data.users.file: users.csv: line 2: 1 fields, the header has 2"]
        );
    }
}
