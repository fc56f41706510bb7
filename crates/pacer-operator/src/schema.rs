//! The plan's JSON Schema (`pacer_plan::spec::PlanSpec`) made into a Kubernetes *structural*
//! schema for `spec.plan`, so `kubectl apply` checks a plan's shape (types, required fields,
//! enums, patterns) before the operator sees it.
//!
//! What Kubernetes refuses and what this does about it:
//! - free-form values (`variables`, a stage's `target`, a request's `json`) have no type:
//!   they become `x-kubernetes-preserve-unknown-fields`;
//! - `additionalProperties: false` next to `properties` (from `deny_unknown_fields`) is
//!   dropped: the API server prunes or, with `kubectl apply`'s strict field validation,
//!   refuses unknown fields anyway;
//! - `oneOf`/`anyOf` of constants (documented enum variants) become one `enum`;
//! - a threshold is a string or a mapping: kept as preserved JSON (pacer's validation names
//!   the field when it is wrong);
//! - `default`s are dropped: pacer applies its own defaults, and the stored plan stays as
//!   the user wrote it.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// `schema_with` for `LoadTestSpec::plan`.
pub fn plan_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let root = generator.into_root_schema_for::<pacer_plan::spec::PlanSpec>();
    let mut value = root.to_value();
    structural(&mut value);
    if let Value::Object(map) = &mut value {
        map.insert(
            "description".into(),
            json!(
                "The test plan, as in a plan file (docs/plan-format.md). ${env:NAME} references are resolved by the worker pods, from spec.credentials and spec.workerTemplate.env."
            ),
        );
    }
    schemars::Schema::try_from(value).unwrap_or_else(|_| {
        schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
    })
}

/// The most limits a RateBudget declares (a plan has a handful; each is a Redis key read by
/// every status update).
pub const MAX_BUDGET_LIMITS: u64 = 32;

/// `schema_with` for `RateBudgetSpec::limits`: the plan's `limits` (`LimitSpec`), structural,
/// at most [`MAX_BUDGET_LIMITS`].
pub fn limits_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let root = generator.into_root_schema_for::<Vec<pacer_plan::spec::LimitSpec>>();
    let mut value = root.to_value();
    structural(&mut value);
    if let Value::Object(map) = &mut value {
        map.insert("minItems".into(), json!(1));
        map.insert("maxItems".into(), json!(MAX_BUDGET_LIMITS));
        map.insert(
            "description".into(),
            json!(
                "The organisation's limits, as a plan's limits (docs/plan-format.md); every one is shared by the budget's tests."
            ),
        );
    }
    schemars::Schema::try_from(value).unwrap_or_else(|_| {
        schemars::json_schema!({ "type": "array", "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } })
    })
}

/// Rewrite a schema (in place) into one Kubernetes accepts as structural.
pub fn structural(v: &mut Value) {
    let Value::Object(map) = v else {
        if v.as_bool().is_some() {
            *v = json!({ "x-kubernetes-preserve-unknown-fields": true });
        }
        return;
    };
    for key in [
        "$schema",
        "title",
        "definitions",
        "$defs",
        "default",
        "examples",
    ] {
        map.remove(key);
    }
    if let Some(c) = map.remove("const") {
        map.insert("enum".into(), Value::Array(vec![c]));
    }
    // `type: [T, "null"]` -> `type: T, nullable: true`
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let non_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if non_null.len() == 1 {
            map.insert("type".into(), non_null[0].clone());
        } else {
            map.remove("type");
        }
        if non_null.len() != types.len() {
            map.insert("nullable".into(), Value::Bool(true));
        }
    }
    // A branch merged in may bring alternatives of its own (`Option<Enum>`): until none left.
    for _ in 0..8 {
        let mut merged = false;
        for key in ["oneOf", "anyOf", "allOf"] {
            if let Some(Value::Array(branches)) = map.remove(key) {
                merge_alternatives(map, branches);
                merged = true;
            }
        }
        if let Some(c) = map.remove("const") {
            map.insert("enum".into(), Value::Array(vec![c]));
        }
        if !merged {
            break;
        }
    }
    if map.get("additionalProperties") == Some(&Value::Bool(false)) {
        map.remove("additionalProperties");
    }
    match map.get("additionalProperties") {
        Some(Value::Bool(true)) => {
            map.remove("additionalProperties");
            map.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
        }
        Some(Value::Object(o)) if o.is_empty() => {
            map.remove("additionalProperties");
            map.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
        }
        _ => {}
    }
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        for p in props.values_mut() {
            structural(p);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = map.get_mut(key) {
            structural(sub);
        }
    }
    let typed = map.contains_key("type")
        || map.contains_key("properties")
        || map.contains_key("enum")
        || map.contains_key("x-kubernetes-preserve-unknown-fields")
        || map.contains_key("x-kubernetes-int-or-string");
    if !typed {
        // Any JSON value (serde_json::Value): keep it as written.
        map.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    if map.contains_key("properties") && !map.contains_key("type") {
        map.insert("type".into(), json!("object"));
    }
}

/// `oneOf`/`anyOf`: constants become an enum; `T | null` becomes a nullable `T`; anything else
/// (a string or a mapping) becomes preserved JSON.
fn merge_alternatives(map: &mut Map<String, Value>, branches: Vec<Value>) {
    let is_null = |b: &Value| {
        b.get("type") == Some(&json!("null"))
            || b.get("enum") == Some(&json!([null]))
            || b.get("const") == Some(&Value::Null)
            || (b.get("nullable") == Some(&json!(true))
                && b.as_object().is_some_and(|o| o.len() <= 2))
    };
    let nullable = branches.iter().any(is_null);
    let rest: Vec<Value> = branches.into_iter().filter(|b| !is_null(b)).collect();
    let mut values = Vec::new();
    let all_constants = rest.iter().all(|b| {
        if let Some(c) = b.get("const") {
            values.push(c.clone());
            true
        } else if let Some(Value::Array(e)) = b.get("enum") {
            values.extend(e.iter().cloned());
            true
        } else {
            false
        }
    });
    if nullable {
        map.insert("nullable".into(), json!(true));
    }
    if all_constants && !values.is_empty() {
        let ty = if values.iter().all(Value::is_string) {
            "string"
        } else {
            "integer"
        };
        map.insert("type".into(), json!(ty));
        map.insert("enum".into(), Value::Array(values));
        return;
    }
    if rest.len() == 1 {
        if let Some(Value::Object(only)) = rest.into_iter().next() {
            for (k, v) in only {
                map.entry(k).or_insert(v);
            }
        }
        return;
    }
    map.remove("type");
    map.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
        out.push((path.clone(), v));
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                walk(p, format!("{path}.{k}"), out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = v.get(key).filter(|s| s.is_object()) {
                walk(sub, format!("{path}[{key}]"), out);
            }
        }
    }

    #[test]
    fn the_plan_schema_is_structural() {
        let mut generator = SchemaSettings::openapi3().into_generator();
        let v = plan_schema(&mut generator).to_value();
        let mut nodes = Vec::new();
        walk(&v, "plan".into(), &mut nodes);
        assert!(nodes.len() > 50, "the plan schema looks empty");
        for (path, node) in nodes {
            let o = node.as_object().expect("schema objects");
            for banned in ["oneOf", "anyOf", "allOf", "$ref", "const", "default"] {
                assert!(!o.contains_key(banned), "{path}: {banned} left in {node}");
            }
            assert!(
                o.contains_key("type") || o.contains_key("x-kubernetes-preserve-unknown-fields"),
                "{path}: no type: {node}"
            );
            assert_ne!(
                o.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "{path}"
            );
        }
    }
}
