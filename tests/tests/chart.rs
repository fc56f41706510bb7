//! The Helm chart (charts/pacer) with the real helm binary: `helm lint` and `helm template`
//! pass for the default values, an external Redis (by URL and by Secret), the bundled Redis and
//! the Grafana dashboard, and namespaced watching; the rendered kinds are the expected ones;
//! the controller's RBAC never lets it read a Secret; values.schema.json refuses bad values.
//!
//! helm comes from `make e2e-deps` (tests/scripts/e2e-deps.sh) in $PACER_TOOLS/bin or
//! ~/.cache/pacer-tools/bin. Without it these tests FAIL, naming the command that installs it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn helm() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(t) = std::env::var("PACER_TOOLS") {
        candidates.push(PathBuf::from(t).join("bin").join("helm"));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/pacer-tools/bin/helm"));
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "helm is missing (looked in {}): run `make e2e-deps` (tests/scripts/e2e-deps.sh builds it)",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn chart() -> PathBuf {
    pacer_tests::workspace_root().join("charts/pacer")
}

/// Run helm; `(success, stdout, stderr)`.
fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("pacer-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("pacer-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("pacer-helm-data"),
        )
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lint(sets: &[&str]) {
    let chart = chart();
    let mut args = vec!["lint", "--strict", chart.to_str().expect("utf-8 path")];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = run_helm(&args);
    assert!(ok, "helm lint {sets:?} failed:\n{out}\n{err}");
}

/// `helm template` with `--set` values; the rendered objects.
fn template(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "pacer",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        "pacer-system",
        "--include-crds",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = run_helm(&args);
    assert!(ok, "helm template {sets:?} failed:\n{err}");
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&out)
        .unwrap_or_else(|e| panic!("the rendered manifests are not YAML: {e}\n{out}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    k.sort();
    k
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn controller_args(objects: &[Value]) -> Vec<String> {
    let d = find(objects, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "controller")
        .expect("the controller Deployment");
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every Role/ClusterRole rule: no verb on Secrets but create and delete; nothing wildcard.
fn check_rbac(objects: &[Value]) {
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .collect();
    assert!(!roles.is_empty(), "no Role or ClusterRole rendered");
    for role in roles {
        let rules = role["rules"].as_array().expect("rules");
        for rule in rules {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (groups, resources, verbs) = (list("apiGroups"), list("resources"), list("verbs"));
            for field in [&groups, &resources, &verbs] {
                assert!(
                    !field.iter().any(|v| v == "*"),
                    "wildcard in {rule} of {}",
                    role["metadata"]["name"]
                );
            }
            if groups.iter().any(|g| g.is_empty()) && resources.iter().any(|r| r == "secrets") {
                for v in &verbs {
                    assert!(
                        v == "create" || v == "delete",
                        "the controller may `{v}` Secrets: it must only create and delete the session Secret ({rule})"
                    );
                }
            }
        }
        let secret_rule = rules
            .iter()
            .find(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "secrets"))
            })
            .expect("a rule for the session Secret");
        assert_eq!(
            secret_rule["verbs"],
            serde_json::json!(["create", "delete"])
        );
    }
}

#[test]
fn default_values_lint_and_render() {
    lint(&[]);
    let objects = template(&[]);
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Service",
            "ServiceAccount"
        ]
    );
    check_rbac(&objects);
    let args = controller_args(&objects);
    assert_eq!(args[0], "operator");
    assert!(
        args.contains(&"--advertise-address=pacer.pacer-system.svc:7700".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--default-redis")),
        "{args:?}"
    );
    let svc = &find(&objects, "Service")[0];
    let ports: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ports, ["grpc", "metrics"]);
    let crd = &find(&objects, "CustomResourceDefinition")[0];
    assert_eq!(crd["metadata"]["name"], "loadtests.pacer.dev");
}

#[test]
fn external_redis_by_url_and_by_secret() {
    let by_url = ["redis.external.url=redis://redis.example.svc:6379/0"];
    lint(&by_url);
    let objects = template(&by_url);
    assert!(!kinds(&objects).iter().any(|k| k == "StatefulSet"));
    assert_eq!(find(&objects, "Deployment").len(), 1, "no bundled Redis");
    let args = controller_args(&objects);
    assert!(
        args.contains(&"--default-redis-url=redis://redis.example.svc:6379/0".to_string()),
        "{args:?}"
    );
    check_rbac(&objects);

    let by_secret = ["redis.external.existingSecret=redis-url"];
    lint(&by_secret);
    let args = controller_args(&template(&by_secret));
    assert!(
        args.contains(&"--default-redis-secret=redis-url:url".to_string()),
        "{args:?}"
    );
}

#[test]
fn bundled_redis_and_dashboard() {
    let sets = ["redis.enabled=true", "grafana.dashboard.enabled=true"];
    lint(&sets);
    let objects = template(&sets);
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "ServiceAccount"
        ]
    );
    let args = controller_args(&objects);
    assert!(
        args.contains(&"--default-redis-url=redis://pacer-redis.pacer-system.svc:6379".to_string()),
        "{args:?}"
    );
    let cm = &find(&objects, "ConfigMap")[0];
    let dashboard: Value = serde_json::from_str(
        cm["data"]["pacer.json"]
            .as_str()
            .expect("the dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard.is_object());
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
}

#[test]
fn namespaced_watch_uses_roles() {
    let sets = ["controller.watchNamespaces={team-a,team-b}"];
    lint(&sets);
    let objects = template(&sets);
    let roles = find(&objects, "Role");
    let namespaces: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    assert_eq!(find(&objects, "RoleBinding").len(), 2);
    assert!(find(&objects, "ClusterRole").is_empty());
    check_rbac(&objects);
    let args = controller_args(&objects);
    assert!(args.contains(&"--namespace=team-a".to_string()), "{args:?}");
    assert!(args.contains(&"--namespace=team-b".to_string()), "{args:?}");
}

#[test]
fn the_values_schema_refuses_bad_values() {
    let chart = chart();
    let path = chart.to_str().expect("utf-8 path");
    for bad in [
        "service.grpcPort=0",
        "controller.statusInterval=soon",
        "image.pullPolicy=Sometimes",
        "redis.external.url=http://not-redis",
        "notAValue=1",
    ] {
        let (ok, _, err) = run_helm(&["template", "pacer", path, "--set", bad]);
        assert!(!ok, "helm template accepted {bad}");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                || err.contains("schema"),
            "{bad}: {err}"
        );
    }
    let (ok, _, err) = run_helm(&[
        "template",
        "pacer",
        path,
        "--set",
        "redis.enabled=true",
        "--set",
        "redis.external.url=redis://elsewhere:6379",
    ]);
    assert!(
        !ok,
        "the bundled and an external Redis at once were accepted"
    );
    assert!(err.contains("schema"), "{err}");
}

#[test]
fn notes_tell_how_to_submit_a_first_test() {
    let chart = chart();
    let notes = std::fs::read_to_string(chart.join("templates/NOTES.txt")).expect("NOTES.txt");
    for needle in [
        "pacer submit",
        "pacer watch",
        "pacer report",
        "kubectl create secret",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt does not mention {needle}"
        );
    }
}
