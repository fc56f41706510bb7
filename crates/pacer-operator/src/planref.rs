//! `spec.planRef`: a LoadTest's plan kept in a ConfigMap key instead of inline, so a plan
//! near the API server's object limit (1.5 MiB, with the plan's schema checked on every
//! write; k6-operator #61) or one owned by another team lives apart from the resource.
//!
//! The operator reads the ConfigMap once, when the test may start (`get` on ConfigMaps in
//! the namespaces it watches), caps what it reads at [`MAX_PLAN_BYTES`], parses the text as a
//! plan file is parsed, and puts it in `spec.plan` of an in-memory copy of the LoadTest:
//! from there [`crate::prepare::prepare_on`] checks it exactly as an inline plan (the same
//! function, the same `${env:}` rules). A plan that does not read names `spec.planRef…`; a
//! plan that reads but is invalid names `spec.plan.<field>` as an inline one, the status's
//! `planSource` saying which ConfigMap it was.

use k8s_openapi::api::core::v1::ConfigMap;
use pacer_plan::FieldError;

use crate::crd::{LoadTest, PlanSource, PlanSourceKind};

/// The most bytes of plan text read from a ConfigMap key: the API server's own limit on a
/// ConfigMap's data (1 MiB), so any plan a ConfigMap can hold is read, and nothing larger is
/// parsed if a ConfigMap ever held more.
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;

/// Where the LoadTest's plan comes from, for its status.
pub fn source(lt: &LoadTest, cm: Option<&ConfigMap>) -> PlanSource {
    match &lt.spec.plan_ref {
        None => PlanSource {
            kind: PlanSourceKind::Inline,
            ..PlanSource::default()
        },
        Some(r) => PlanSource {
            kind: PlanSourceKind::ConfigMap,
            config_map: Some(r.name.clone()),
            key: Some(r.key.clone()),
            resource_version: cm.and_then(|c| c.metadata.resource_version.clone()),
        },
    }
}

/// The LoadTest with its plan inline: itself when `spec.plan` is given; with `spec.planRef`,
/// a copy whose `spec.plan` is the ConfigMap's key (`cm`: the ConfigMap as read, `None` when
/// it does not exist). Errors name the field.
pub fn inline(lt: &LoadTest, cm: Option<&ConfigMap>) -> Result<LoadTest, Vec<FieldError>> {
    let has_plan = !lt.spec.plan.is_null();
    let Some(r) = &lt.spec.plan_ref else {
        if has_plan {
            return Ok(lt.clone());
        }
        return Err(vec![FieldError::new(
            "spec.plan",
            "give the plan inline (spec.plan) or in a ConfigMap (spec.planRef)",
        )]);
    };
    if has_plan {
        return Err(vec![FieldError::new(
            "spec.planRef",
            "give exactly one of spec.plan and spec.planRef",
        )]);
    }
    let Some(cm) = cm else {
        return Err(vec![FieldError::new(
            "spec.planRef.name",
            format!(
                "no ConfigMap {:?} in the LoadTest's namespace (create it first, e.g. with pacer submit --plan-configmap)",
                r.name
            ),
        )]);
    };
    let text =
        key_text(cm, &r.name, &r.key).map_err(|e| vec![FieldError::new("spec.planRef.key", e)])?;
    if text.len() > MAX_PLAN_BYTES {
        return Err(vec![FieldError::new(
            "spec.planRef.key",
            format!(
                "the plan in ConfigMap {:?} key {:?} is {} bytes: at most {MAX_PLAN_BYTES}",
                r.name,
                r.key,
                text.len()
            ),
        )]);
    }
    let source = format!("ConfigMap {}, key {}", r.name, r.key);
    let doc = pacer_plan::load::parse_document(text, &source)
        .map_err(|e| vec![FieldError::new("spec.planRef.key", e.to_string())])?;
    if doc.get("kind").is_some() {
        return Err(vec![FieldError::new(
            "spec.planRef.key",
            format!(
                "{source}: holds a manifest (kind {}), not a plan",
                doc["kind"]
            ),
        )]);
    }
    let mut inlined = lt.clone();
    inlined.spec.plan = doc;
    inlined.spec.plan_ref = None;
    Ok(inlined)
}

/// The text of `key` in the ConfigMap `name` (a plan, a data file), or why there is none,
/// naming the keys it has.
pub fn key_text<'a>(cm: &'a ConfigMap, name: &str, key: &str) -> Result<&'a str, String> {
    if let Some(t) = cm.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(t);
    }
    let keys: Vec<&str> = cm
        .data
        .iter()
        .flat_map(|d| d.keys().map(String::as_str))
        .collect();
    Err(format!(
        "ConfigMap {name:?} has no key {key:?} (it has: {})",
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    ))
}

/// [`inline`] with the ConfigMap read from the API server, and the status's `planSource` set
/// on the copy (every status write starts from it). The outer error is the API call's.
pub(crate) async fn resolve(
    lt: &LoadTest,
    ctx: &crate::controller::Context,
) -> crate::controller::Result<Result<LoadTest, Vec<FieldError>>> {
    let cm = match &lt.spec.plan_ref {
        Some(r) => match crate::api::get_plan_config_map(lt, ctx, r).await {
            Ok(cm) => cm,
            // An operator whose RBAC predates planRef: the test fails saying so, instead of
            // the reconcile retrying for ever.
            Err(crate::controller::Error::Kube(kube::Error::Api(e))) if e.code == 403 => {
                return Ok(Err(vec![FieldError::new(
                    "spec.planRef.name",
                    format!(
                        "the operator may not read ConfigMaps in this namespace (its RBAC needs get on configmaps: upgrade the chart) to read {:?}",
                        r.name
                    ),
                )]));
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    Ok(inline(lt, cm.as_ref()).map(|mut inlined| {
        inlined
            .status
            .get_or_insert_with(Default::default)
            .plan_source = Some(source(lt, cm.as_ref()));
        inlined
    }))
}

/// A ConfigMap holding a plan under `key`, as `pacer submit --plan-configmap` creates it.
pub fn plan_config_map(name: &str, namespace: Option<&str>, key: &str, text: &str) -> ConfigMap {
    ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            labels: Some(std::collections::BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "pacer".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            key.to_string(),
            text.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use serde_json::json;

    const PLAN: &str = "name: from a ConfigMap\ntarget: http://api\nscenarios:\n  - name: s\n    executor: constant-vus\n    vus: 1\n    duration: 2s\n    requests: [{name: q, path: /}]\n";

    fn lt(spec: serde_json::Value) -> LoadTest {
        serde_json::from_value(json!({
            "apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTest",
            "metadata": {"name": "t", "namespace": "ns", "uid": "0f3a9b2c-1"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn a_plan_ref_is_read_and_checked_as_an_inline_plan() {
        let t = lt(json!({"planRef": {"name": "plans"}}));
        assert_eq!(t.spec.plan_ref.as_ref().unwrap().key, "plan.yaml");
        let cm = plan_config_map("plans", Some("ns"), "plan.yaml", PLAN);
        let inlined = inline(&t, Some(&cm)).unwrap();
        assert_eq!(inlined.spec.plan["name"], "from a ConfigMap");
        let from_ref = crate::prepare::prepare(&inlined, &Default::default()).unwrap();
        let inline_doc = pacer_plan::load::parse_document(PLAN, "p").unwrap();
        let direct =
            crate::prepare::prepare(&lt(json!({"plan": inline_doc})), &Default::default()).unwrap();
        assert_eq!(from_ref.plan.spec, direct.plan.spec);
        assert_eq!(source(&t, Some(&cm)).kind, PlanSourceKind::ConfigMap);
    }

    #[test]
    fn a_missing_configmap_key_or_oversized_plan_names_the_field() {
        let t = lt(json!({"planRef": {"name": "plans", "key": "other.yaml"}}));
        let e = inline(&t, None).unwrap_err();
        assert_eq!(e[0].path, "spec.planRef.name");
        let cm = plan_config_map("plans", Some("ns"), "plan.yaml", PLAN);
        let e = inline(&t, Some(&cm)).unwrap_err();
        assert_eq!(e[0].path, "spec.planRef.key");
        assert!(e[0].to_string().contains("it has: plan.yaml"), "{}", e[0]);
        let big = "#".repeat(MAX_PLAN_BYTES + 1);
        let cm = plan_config_map("plans", Some("ns"), "other.yaml", &big);
        let e = inline(&t, Some(&cm)).unwrap_err();
        assert!(e[0].to_string().contains("at most"), "{}", e[0]);
        let cm = plan_config_map("plans", Some("ns"), "other.yaml", "scenarios: [unclosed");
        let e = inline(&t, Some(&cm)).unwrap_err();
        assert_eq!(e[0].path, "spec.planRef.key");
    }

    #[test]
    fn both_or_neither_of_plan_and_plan_ref_is_refused() {
        let both = lt(json!({"plan": {"name": "x"}, "planRef": {"name": "plans"}}));
        assert_eq!(inline(&both, None).unwrap_err()[0].path, "spec.planRef");
        let neither = lt(json!({}));
        assert_eq!(inline(&neither, None).unwrap_err()[0].path, "spec.plan");
    }

    #[test]
    fn an_invalid_plan_from_a_configmap_names_the_plans_field() {
        let t = lt(json!({"planRef": {"name": "plans"}}));
        let bad = PLAN.replace("vus: 1", "vus: many");
        let cm = plan_config_map("plans", Some("ns"), "plan.yaml", &bad);
        let inlined = inline(&t, Some(&cm)).unwrap();
        let e = crate::prepare::prepare(&inlined, &Default::default()).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.path.starts_with("spec.plan.scenarios[0]")),
            "{e:?}"
        );
    }
}
