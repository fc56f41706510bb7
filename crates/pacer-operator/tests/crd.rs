//! The CRD: the committed copy in charts/pacer/crds/ is what `pacer crd` prints (regenerate it
//! with `make crds`), its shape is what the issue asks, and every example LoadTest passes its
//! OpenAPI schema (as `kubectl apply` with strict field validation would check it: unknown
//! fields refused).

use std::path::{Path, PathBuf};

use pacer_operator::crd::crd_yaml;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

const COMMITTED: &str = "charts/pacer/crds/loadtests.pacer.dev.yaml";

fn crd() -> Value {
    let yaml = crd_yaml().expect("the CRD renders");
    serde_saphyr::from_str(&yaml).expect("the CRD is YAML")
}

/// The committed copy at `committed` is `generated` (`PACER_UPDATE_CRDS=1` writes it).
fn check_committed(committed: &str, generated: &str) {
    let path = root().join(committed);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        if std::env::var_os("PACER_UPDATE_CRDS").is_some() {
            std::fs::write(&path, generated).expect("write the CRD");
            return;
        }
        panic!("{committed} is stale: regenerate it with `make crds`");
    }
}

#[test]
fn the_committed_crd_is_not_stale() {
    check_committed(COMMITTED, &crd_yaml().expect("the CRD renders"));
}

#[test]
fn the_crd_has_the_names_columns_and_subresources_asked_for() {
    let crd = crd();
    let spec = &crd["spec"];
    assert_eq!(spec["group"], "pacer.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "LoadTest");
    assert_eq!(spec["names"]["shortNames"], json!(["lt"]));
    assert_eq!(spec["names"]["categories"], json!(["pacer"]));
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], json!({}));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Workers", "RPS", "P95", "Errors", "429s", "Age"]
    );
    let props = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in [
        "plan",
        "workers",
        "image",
        "workerTemplate",
        "credentials",
        "redis",
        "cleanup",
        "suspend",
    ] {
        assert!(props.get(field).is_some(), "spec.{field} is missing");
    }
    assert_eq!(props["workers"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(
        props["cleanup"]["properties"]["policy"]["enum"],
        json!(["onSuccess", "always", "never"])
    );
    let plan = &props["plan"];
    assert_eq!(plan["type"], "object");
    assert!(
        plan["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("scenarios")))
    );
    let template = &props["workerTemplate"]["properties"];
    for field in [
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "env",
        "serviceAccountName",
    ] {
        assert!(
            template.get(field).is_some(),
            "workerTemplate.{field} is missing"
        );
    }
    let text = serde_json::to_string(&crd).expect("json");
    assert!(text.contains("x-kubernetes-validations"));
    structural(&v["schema"]["openAPIV3Schema"], "");
}

/// Kubernetes' structural schema rules that matter here, on every schema node.
fn structural(node: &Value, path: &str) {
    let o = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not a schema object"));
    for banned in ["$ref", "oneOf", "anyOf", "allOf", "const", "not"] {
        assert!(
            !o.contains_key(banned),
            "{path}: {banned}: not a structural schema"
        );
    }
    let preserve = o.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = o.get("x-kubernetes-int-or-string") == Some(&json!(true));
    assert!(
        o.contains_key("type") || preserve || int_or_string,
        "{path}: no type"
    );
    if o.contains_key("properties") {
        assert!(
            !o.contains_key("additionalProperties"),
            "{path}: properties and additionalProperties together"
        );
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            structural(p, &format!("{path}.{k}"));
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = o.get(key).filter(|s| s.is_object()) {
            structural(sub, &format!("{path}[{key}]"));
        }
    }
}

/// kubectl apply's strict field validation: objects refuse fields they do not declare.
fn strict(v: &mut Value) {
    if let Value::Object(map) = v {
        let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserve
        {
            map.insert("additionalProperties".into(), json!(false));
        }
        // Kubernetes' `nullable` is OpenAPI's, not JSON Schema's.
        if map.get("nullable") == Some(&json!(true))
            && let Some(Value::String(t)) = map.get("type").cloned()
        {
            map.insert("type".into(), json!([t, "null"]));
        }
        for (k, sub) in map.iter_mut() {
            if k != "enum" && k != "required" && k != "x-kubernetes-validations" {
                strict(sub);
            }
        }
    } else if let Value::Array(items) = v {
        for item in items {
            strict(item);
        }
    }
}

fn validator() -> jsonschema::Validator {
    validator_of(crd(), "LoadTest")
}

fn validator_of(crd: Value, kind: &str) -> jsonschema::Validator {
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    strict(&mut schema);
    // metadata is the API server's.
    schema["properties"]["metadata"] = json!({"type": "object"});
    schema["properties"]["apiVersion"] = json!({"type": "string", "enum": ["pacer.dev/v1alpha1"]});
    schema["properties"]["kind"] = json!({"type": "string", "enum": [kind]});
    schema["required"] = json!(["apiVersion", "kind", "spec"]);
    jsonschema::draft4::new(&schema).expect("the CRD schema compiles")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_example_loadtests_match_the_crd_schema() {
    let v = validator();
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("loadtest-") && name.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let doc: Value = serde_saphyr::from_str(&text).expect("example is YAML");
        let errs = errors(&v, &doc);
        assert!(
            errs.is_empty(),
            "{name} does not match the CRD:\n{}",
            errs.join("\n")
        );
        // And the operator accepts it (on its RateBudget, from examples/ratebudget*.yaml).
        let mut lt: pacer_operator::LoadTest = serde_json::from_value(doc).expect("a LoadTest");
        lt.metadata.namespace = Some("default".into());
        // A plan in a ConfigMap: the one of that name among the examples, read as the
        // operator reads it.
        if let Some(r) = lt.spec.plan_ref.clone() {
            let cm = example_config_map(&r.name)
                .unwrap_or_else(|| panic!("{name}: no ConfigMap example named {:?}", r.name));
            lt = pacer_operator::planref::inline(&lt, Some(&cm))
                .unwrap_or_else(|e| panic!("{name}: its planRef does not read: {e:?}"));
        }
        let budgets = example_budgets();
        let found = lt.spec.budget_ref.as_ref().map(|r| {
            match budgets
                .iter()
                .find(|b| b.metadata.name.as_deref() == Some(r.name.as_str()))
            {
                Some(b) => pacer_operator::budget::Found::Budget(b),
                None => panic!("{name}: no examples/ratebudget*.yaml named {:?}", r.name),
            }
        });
        let redis = pacer_operator::RedisSource::Url("redis://redis:6379".into());
        if let Err(e) =
            pacer_operator::prepare::prepare_on(&lt, &Default::default(), found, Some(&redis))
        {
            panic!("{name}: the operator refuses it: {e:?}");
        }
        seen += 1;
    }
    assert!(seen >= 1, "no examples/loadtest-*.yaml found");
}

/// The ConfigMap named `name` among examples/*.yaml.
fn example_config_map(name: &str) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.ok()?.path()).ok()?;
            let doc: Value = serde_saphyr::from_str(&text).ok()?;
            (doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == name)
                .then(|| serde_json::from_value(doc).ok())
                .flatten()
        })
        .next()
}

#[test]
fn the_schema_refuses_what_kubectl_apply_should_refuse() {
    let v = validator();
    let text = std::fs::read_to_string(root().join("examples/loadtest-user-story.yaml"))
        .expect("the user-story example");
    let good: Value = serde_saphyr::from_str(&text).expect("YAML");
    assert!(errors(&v, &good).is_empty());
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "workers 0",
            Box::new(|d: &mut Value| d["spec"]["workers"] = json!(0)),
        ),
        (
            "an unknown cleanup policy",
            Box::new(|d: &mut Value| d["spec"]["cleanup"]["policy"] = json!("sometimes")),
        ),
        (
            "a typo in the plan",
            Box::new(|d: &mut Value| d["spec"]["plan"]["scenarioz"] = json!([])),
        ),
        (
            "an unknown executor",
            Box::new(|d: &mut Value| d["spec"]["plan"]["scenarios"][0]["executor"] = json!("fast")),
        ),
        (
            "a plan without scenarios",
            Box::new(|d: &mut Value| {
                d["spec"]["plan"]
                    .as_object_mut()
                    .expect("plan")
                    .remove("scenarios");
            }),
        ),
        (
            "a bad start timeout",
            Box::new(|d: &mut Value| d["spec"]["startTimeout"] = json!("soon")),
        ),
        (
            "a Redis URL with a password",
            Box::new(|d: &mut Value| d["spec"]["redis"] = json!({"url": "redis://:pw@redis:6379"})),
        ),
    ];
    for (what, change) in cases {
        let mut doc = good.clone();
        change(&mut doc);
        assert!(!errors(&v, &doc).is_empty(), "the schema accepts {what}");
    }
}

/// Every `preserve-unknown-fields` or open `additionalProperties` under `node`, by path.
fn open_schemas(node: &Value, path: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
                || map.get("additionalProperties") == Some(&json!(true))
            {
                out.push(path.to_string());
            }
            for (k, v) in map {
                open_schemas(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                open_schemas(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The API server prunes what a structural schema does not name: a LoadTest cannot slip
/// volumes, hostPath, hostNetwork, a securityContext or another container into its worker
/// pods, because `workerTemplate` names only these fields and leaves nothing open below them
/// (the operator's policy.rs checks what is left).
#[test]
fn the_worker_template_lets_no_other_pod_field_through() {
    let crd = crd();
    let template = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["workerTemplate"];
    let mut fields: Vec<&str> = template["properties"]
        .as_object()
        .expect("workerTemplate properties")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "affinity",
            "annotations",
            "env",
            "envFrom",
            "imagePullSecrets",
            "labels",
            "nodeSelector",
            "podSecurityContext",
            "priorityClassName",
            "resources",
            "runtimeClassName",
            "securityContext",
            "serviceAccountName",
            "tolerations",
            "topologySpreadConstraints",
            "volumeMounts",
            "volumes"
        ]
    );
    // A volume is one of the allowed sources: hostPath and the rest are not in the schema.
    let mut sources: Vec<&str> = template["properties"]["volumes"]["items"]["properties"]
        .as_object()
        .expect("volume properties")
        .keys()
        .map(String::as_str)
        .collect();
    sources.sort_unstable();
    assert_eq!(
        sources,
        [
            "configMap",
            "emptyDir",
            "name",
            "persistentVolumeClaim",
            "secret"
        ]
    );
    let mut open = Vec::new();
    open_schemas(template, "workerTemplate", &mut open);
    assert!(
        open.is_empty(),
        "open schemas under workerTemplate: {open:?}"
    );
}

const COMMITTED_BUDGET: &str = "charts/pacer/crds/ratebudgets.pacer.dev.yaml";

fn budget_crd() -> Value {
    let yaml = pacer_operator::ratebudget::crd_yaml().expect("the CRD renders");
    serde_saphyr::from_str(&yaml).expect("the CRD is YAML")
}

#[test]
fn the_committed_ratebudget_crd_is_not_stale() {
    check_committed(
        COMMITTED_BUDGET,
        &pacer_operator::ratebudget::crd_yaml().expect("the CRD renders"),
    );
}

#[test]
fn the_ratebudget_crd_tells_an_organisations_api_at_a_glance() {
    let budget = budget_crd();
    let spec = &budget["spec"];
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "RateBudget");
    assert_eq!(spec["names"]["shortNames"], json!(["rb"]));
    let v = &spec["versions"][0];
    assert_eq!(v["subresources"]["status"], json!({}));
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        columns,
        [
            "Rate",
            "Tests",
            "Processes",
            "Paused Until",
            "Last 429",
            "Left",
            "Age"
        ]
    );
    let props = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(props["limits"]["maxItems"].as_u64(), Some(32));
    assert_eq!(props["limits"]["items"]["type"], "object");
    for field in ["limits", "credentials", "redis", "idleExpiry"] {
        assert!(props.get(field).is_some(), "spec.{field} is missing");
    }
    structural(&v["schema"]["openAPIV3Schema"], "");
    // A LoadTest refers to one.
    let lt = crd();
    let r = &lt["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["budgetRef"];
    assert_eq!(r["required"], json!(["name"]));
}

/// Every examples/ratebudget*.yaml, checked against the CRD and by the operator.
fn example_budgets() -> Vec<pacer_operator::ratebudget::RateBudget> {
    let v = validator_of(budget_crd(), "RateBudget");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !(name.starts_with("ratebudget") && name.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let doc: Value = serde_saphyr::from_str(&text).expect("example is YAML");
        let errs = errors(&v, &doc);
        assert!(
            errs.is_empty(),
            "{name} does not match the CRD:\n{}",
            errs.join("\n")
        );
        let mut rb: pacer_operator::ratebudget::RateBudget =
            serde_json::from_value(doc).expect("a RateBudget");
        rb.metadata.namespace = Some("default".into());
        let redis = pacer_operator::RedisSource::Url("redis://redis:6379".into());
        let problems = pacer_operator::budget::check(&rb, Some(&redis));
        assert!(
            problems.is_empty(),
            "{name}: the operator refuses it: {problems:?}"
        );
        out.push(rb);
    }
    out
}

#[test]
fn the_example_ratebudgets_match_the_crd_and_the_operator() {
    assert!(
        !example_budgets().is_empty(),
        "no examples/ratebudget*.yaml found"
    );
}
