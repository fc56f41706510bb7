//! The Helm chart (charts/pacer) with the real helm binary: `helm lint` and `helm template`
//! pass for the default values, an external Redis (by URL and by Secret), the bundled Redis and
//! the Grafana dashboard, and namespaced watching; the rendered kinds are the expected ones;
//! the controller's RBAC never lets it read a Secret; values.schema.json refuses bad values;
//! the bundled Redis has a password from a Secret and a user limited to pacer's commands;
//! NetworkPolicies let only worker pods reach the gRPC port and only pacer's pods reach Redis;
//! the worker allow-lists reach the operator as flags.
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

/// The name of the Role of the leader election (leases and the replica's own pod label).
const LEADER_ROLE: &str = "pacer-leader-election";

/// The Role of the leader election: in the release's namespace, leases get/create/update and
/// pods patch (a replica's own role label), nothing else.
fn check_leader_role(objects: &[Value]) {
    let role = find(objects, "Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == LEADER_ROLE)
        .expect("the leader election's Role");
    assert_eq!(role["metadata"]["namespace"], "pacer-system");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}
        ])
    );
    let binding = find(objects, "RoleBinding")
        .into_iter()
        .find(|r| r["metadata"]["name"] == LEADER_ROLE)
        .expect("its RoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "pacer");
}

/// Every Role/ClusterRole rule: no verb on Secrets but create and delete; nothing wildcard.
fn check_rbac(objects: &[Value]) {
    check_leader_role(objects);
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .filter(|o| o["metadata"]["name"] != LEADER_ROLE)
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
            "CustomResourceDefinition",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    check_rbac(&objects);
    let args = controller_args(&objects);
    assert_eq!(args[0], "operator");
    assert!(
        args.contains(&"--leader-elect-lease=pacer-leader".to_string()),
        "{args:?}"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--allowed-image") || a.starts_with("--allowed-service-account")),
        "by default workers run the chart's image only, with no ServiceAccount: {args:?}"
    );
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
            "CustomResourceDefinition",
            "Deployment",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount"
        ]
    );
    let args = controller_args(&objects);
    assert!(
        !args.iter().any(|a| a.starts_with("--default-redis-url")),
        "the URL holds the password: it comes from the Secret, not the args: {args:?}"
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
        .filter(|r| r["metadata"]["name"] != LEADER_ROLE)
        .map(|r| r["metadata"]["namespace"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    assert_eq!(
        find(&objects, "RoleBinding").len(),
        3,
        "and the leader election's"
    );
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
        "controller.replicas=0",
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

fn deployment<'a>(objects: &'a [Value], component: &str) -> &'a Value {
    find(objects, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        .unwrap_or_else(|| panic!("the {component} Deployment"))
}

fn env_of<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name}"))
}

fn decoded(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let b64 = secret["data"][key].as_str().expect("a data key");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn bundled_redis_requires_a_generated_password_and_a_user_limited_to_pacers_commands() {
    let objects = template(&["redis.enabled=true"]);
    let secret = find(&objects, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "pacer-redis-auth")
        .expect("the Redis Secret");
    let password = decoded(secret, "password");
    assert!(
        password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()),
        "a generated password of 32 characters"
    );
    assert_eq!(
        decoded(secret, "url"),
        format!("redis://pacer:{password}@pacer-redis.pacer-system.svc:6379")
    );

    let redis = deployment(&objects, "redis");
    let args: Vec<&str> = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("Redis args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default())
        .collect();
    let joined = args.join(" ");
    assert!(
        joined.contains("--user default off"),
        "no user without a password: {joined}"
    );
    assert!(
        joined
            .contains("--user pacer on >$(REDIS_PASSWORD) ~{pacer:* resetchannels &{pacer:* -@all"),
        "the pacer user: its password, pacer's keys and channels only, no command but those listed: {joined}"
    );
    for needed in [
        "+evalsha",
        "+eval",
        "+script|load",
        "+zadd",
        "+publish",
        "+subscribe",
    ] {
        assert!(args.contains(&needed), "{needed} missing: {joined}");
    }
    for refused in ["+@all", "+keys", "+config", "+flushall", "+acl"] {
        assert!(!args.contains(&refused), "{refused} granted: {joined}");
    }
    assert!(
        !joined.contains(&password),
        "the password itself is not in the Deployment"
    );
    assert_eq!(
        env_of(redis, "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "pacer-redis-auth", "key": "password"})
    );

    let controller = deployment(&objects, "controller");
    assert_eq!(
        env_of(controller, "PACER_DEFAULT_REDIS_URL")["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "pacer-redis-auth", "key": "url"})
    );

    // A password given in the values (renderers without cluster access) is the one used.
    let given = "given-password-0123456789";
    let objects = template(&[
        "redis.enabled=true",
        &format!("redis.auth.password={given}"),
    ]);
    let secret = find(&objects, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "pacer-redis-auth")
        .expect("the Redis Secret");
    assert_eq!(decoded(secret, "password"), given);
    let (ok, _, err) = run_helm(&[
        "template",
        "pacer",
        chart().to_str().expect("utf-8 path"),
        "--set",
        "redis.enabled=true",
        "--set",
        "redis.auth.password=short",
    ]);
    assert!(!ok && err.contains("schema"), "a short password: {err}");
}

fn network_policy<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    find(objects, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the NetworkPolicy {name}"))
}

fn worker_peer(namespace_selector: Value) -> Value {
    serde_json::json!({
        "namespaceSelector": namespace_selector,
        "podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "pacer",
            "app.kubernetes.io/managed-by": "pacer-operator",
            "app.kubernetes.io/component": "worker",
        }}
    })
}

#[test]
fn network_policies_admit_only_workers_to_grpc_and_only_pacer_pods_to_redis() {
    let objects = template(&["redis.enabled=true"]);
    let controller = network_policy(&objects, "pacer");
    assert_eq!(
        controller["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "controller"
    );
    let ingress = controller["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(
        ingress.len(),
        1,
        "by default nothing but gRPC from workers: {ingress:?}"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], "grpc");
    assert_eq!(
        ingress[0]["from"],
        serde_json::json!([worker_peer(serde_json::json!({}))])
    );

    let redis = network_policy(&objects, "pacer-redis");
    let rule = &redis["spec"]["ingress"].as_array().expect("ingress")[0];
    assert_eq!(rule["ports"][0]["port"], "redis");
    let from = rule["from"].as_array().expect("from");
    assert_eq!(from.len(), 2, "{from:?}");
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "controller"
    );
    assert_eq!(from[1], worker_peer(serde_json::json!({})));

    // Watching some namespaces: workers from those only; metrics from where the user says.
    let objects = template(&[
        "controller.watchNamespaces={team-a}",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
    ]);
    let ingress = network_policy(&objects, "pacer")["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .clone();
    assert_eq!(
        ingress[0]["from"][0],
        worker_peer(serde_json::json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]}))
    );
    assert_eq!(ingress[1]["ports"][0]["port"], "metrics");
    assert_eq!(
        ingress[1]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}])
    );

    let off = template(&["redis.enabled=true", "networkPolicy.enabled=false"]);
    assert!(find(&off, "NetworkPolicy").is_empty());
}

#[test]
fn worker_allow_lists_reach_the_operator_as_flags() {
    let sets = [
        "worker.allowedImages={registry.example/pacer:*,pacer:debug}",
        "worker.allowedServiceAccounts={load-runner}",
    ];
    lint(&sets);
    let args = controller_args(&template(&sets));
    for flag in [
        "--allowed-image=registry.example/pacer:*",
        "--allowed-image=pacer:debug",
        "--allowed-service-account=load-runner",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag}: {args:?}");
    }
    let (ok, _, err) = run_helm(&[
        "template",
        "pacer",
        chart().to_str().expect("utf-8 path"),
        "--set",
        "worker.allowedServiceAccounts={Not_A_Name}",
    ]);
    assert!(!ok && err.contains("schema"), "{err}");
}

#[test]
fn the_shared_cluster_example_values_lint_and_render_the_defences() {
    let chart = chart();
    let values = chart.join("examples/values-shared-cluster.yaml");
    let (chart, values) = (
        chart.to_str().expect("utf-8 path"),
        values.to_str().expect("utf-8 path"),
    );
    let (ok, out, err) = run_helm(&["lint", "--strict", chart, "-f", values]);
    assert!(ok, "helm lint -f {values}:\n{out}\n{err}");
    let (ok, out, err) = run_helm(&[
        "template",
        "pacer",
        chart,
        "--namespace",
        "pacer-system",
        "-f",
        values,
    ]);
    assert!(ok, "helm template -f {values}:\n{err}");
    let objects: Vec<Value> = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&out)
        .expect("YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect();
    let args = controller_args(&objects);
    for flag in [
        "--allowed-image=registry.example/team-a/pacer:1.*",
        "--allowed-service-account=pacer-worker",
        "--namespace=team-a",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag}: {args:?}");
    }
    assert_eq!(find(&objects, "NetworkPolicy").len(), 2);
    let ingress = &network_policy(&objects, "pacer")["spec"]["ingress"];
    assert_eq!(ingress[1]["ports"][0]["port"], "metrics");
    assert!(
        find(&objects, "Secret")
            .iter()
            .any(|s| s["metadata"]["name"] == "pacer-redis-auth")
    );
}

/// The controller's TLS Secret (the chart's own CA) of `objects`.
fn tls_secret(objects: &[Value]) -> &Value {
    find(objects, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "pacer-tls")
        .expect("the TLS Secret")
}

#[test]
fn tls_is_on_by_default_with_a_generated_ca_mounted_by_the_controller() {
    let objects = template(&[]);
    let secret = tls_secret(&objects);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["ca.crt", "tls.crt"] {
        assert!(
            decoded(secret, key).starts_with("-----BEGIN CERTIFICATE-----"),
            "{key}"
        );
    }
    assert!(decoded(secret, "tls.key").contains("PRIVATE KEY-----"));
    let args = controller_args(&objects);
    for flag in [
        "--tls-cert=/etc/pacer/tls/tls.crt",
        "--tls-key=/etc/pacer/tls/tls.key",
        "--worker-ca=/etc/pacer/tls/ca.crt",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag}: {args:?}");
    }
    assert!(
        !args.contains(&"--insecure-plaintext".to_string()),
        "{args:?}"
    );
    let pod = &deployment(&objects, "controller")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "pacer-tls");
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/etc/pacer/tls");
    assert_eq!(mount["readOnly"], true);
    // The controller mounts the Secret: its RBAC still reads none.
    check_rbac(&objects);

    let off = template(&["tls.enabled=false"]);
    assert!(
        !find(&off, "Secret")
            .iter()
            .any(|s| s["metadata"]["name"] == "pacer-tls"),
        "no TLS Secret when TLS is off"
    );
    let args = controller_args(&off);
    assert!(
        args.contains(&"--insecure-plaintext".to_string()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--tls-")), "{args:?}");
    lint(&["tls.enabled=false"]);
}

#[test]
fn tls_from_cert_manager_is_a_certificate_for_the_service_names() {
    let sets = [
        "tls.certManager.issuerRef.name=pacer-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ];
    lint(&sets);
    let objects = template(&sets);
    assert!(
        !find(&objects, "Secret")
            .iter()
            .any(|s| s["metadata"]["name"] == "pacer-tls"),
        "cert-manager writes the Secret"
    );
    let cert = &find(&objects, "Certificate")[0];
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["spec"]["secretName"], "pacer-tls");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "pacer-ca");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(
        cert["spec"]["dnsNames"],
        serde_json::json!([
            "pacer",
            "pacer.pacer-system",
            "pacer.pacer-system.svc",
            "pacer.pacer-system.svc.cluster.local"
        ])
    );
    let args = controller_args(&objects);
    assert!(
        args.contains(&"--tls-cert=/etc/pacer/tls/tls.crt".to_string()),
        "{args:?}"
    );
    // charts/pacer/examples/values-cert-manager.yaml renders the same Certificate
    let chart_dir = chart();
    let values = chart_dir.join("examples/values-cert-manager.yaml");
    let values = values.to_str().expect("utf-8 path");
    let chart_path = chart_dir.to_str().expect("utf-8 path");
    let (ok, _, err) = run_helm(&["lint", "--strict", chart_path, "-f", values]);
    assert!(ok, "helm lint -f {values}:\n{err}");
    let (ok, out, err) = run_helm(&[
        "template",
        "pacer",
        chart_path,
        "--namespace",
        "pacer-system",
        "-f",
        values,
    ]);
    assert!(ok, "helm template -f {values}:\n{err}");
    assert!(
        out.contains("kind: Certificate") && out.contains("name: pacer-ca"),
        "{out}"
    );
    // values.schema.json: an issuer kind cert-manager does not know is refused
    let chart = chart();
    let (ok, _, err) = run_helm(&[
        "template",
        "pacer",
        chart.to_str().expect("utf-8 path"),
        "--set",
        "tls.certManager.issuerRef.name=x",
        "--set",
        "tls.certManager.issuerRef.kind=Cluster",
    ]);
    assert!(!ok && err.contains("kind"), "{err}");
}

/// The chart's generated CA and certificate are what rustls accepts: a real `pacer
/// controller` serves with them and a real `pacer worker` verifies it for the Service's name.
#[test]
fn the_generated_certificate_serves_a_worker_that_verifies_the_service_name() {
    let objects = template(&[]);
    let secret = tls_secret(&objects);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, key: &str| pacer_tests::write(dir.path(), name, &decoded(secret, key));
    let (ca, cert, key) = (
        file("ca.crt", "ca.crt"),
        file("tls.crt", "tls.crt"),
        file("tls.key", "tls.key"),
    );
    let plan = pacer_tests::write(
        dir.path(),
        "plan.yaml",
        "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: per-vu-iterations, vus: 1, iterations: 1, requests: [{name: r, path: /}]}\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let token = "chart-tls-session-token-0123456789";
    let listen = format!("127.0.0.1:{port}");
    let controller = pacer_tests::pacer_spawn(&[
        "controller",
        "--plan",
        plan.to_str().expect("utf-8"),
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--session-token",
        token,
        "-q",
    ]);
    let worker = pacer_tests::pacer_spawn(&[
        "worker",
        "--connect",
        &listen,
        "--server-name",
        "pacer.pacer-system.svc",
        "--ca",
        ca.to_str().expect("utf-8"),
        "--session-token",
        token,
        "--connect-for",
        "30s",
    ]);
    let w = pacer_tests::wait_bounded(worker, std::time::Duration::from_secs(60));
    let c = pacer_tests::wait_bounded(controller, std::time::Duration::from_secs(30));
    assert_eq!(
        w.status.code(),
        Some(0),
        "worker: {}",
        pacer_tests::stderr(&w)
    );
    assert_eq!(
        c.status.code(),
        Some(0),
        "controller: {}",
        pacer_tests::stderr(&c)
    );
}

/// `metrics.serviceMonitor.enabled` renders a Prometheus Operator ServiceMonitor that selects
/// the controller's Service (and only it) on its metrics port; the chart's `imagePullSecrets`
/// reach the worker pods through the operator's `--worker-image-pull-secret`; the operator may
/// `get` ConfigMaps (a LoadTest's `spec.planRef`).
#[test]
fn a_service_monitor_scrapes_the_controller_and_pull_secrets_reach_the_workers() {
    let sets = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "imagePullSecrets[0].name=regcred",
        "redis.enabled=true",
        "redis.auth.password=0123456789abcdef",
    ];
    lint(&sets);
    let objects = template(&sets);
    let monitors = find(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 1, "{:?}", kinds(&objects));
    let sm = monitors[0];
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["namespace"], "pacer-system");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"][0],
        "pacer-system"
    );
    // It selects the controller's Service, which has the metrics port, and not Redis's.
    let selector = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let services = find(&objects, "Service");
    let selected: Vec<&&Value> = services
        .iter()
        .filter(|s| {
            selector
                .iter()
                .all(|(k, v)| &s["metadata"]["labels"][k.as_str()] == v)
        })
        .collect();
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert!(
        selected[0]["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "metrics")
    );
    let args = controller_args(&objects);
    assert!(
        args.contains(&"--worker-image-pull-secret=regcred".to_string()),
        "{args:?}"
    );
    let rules = serde_json::to_string(&find(&objects, "ClusterRole")[0]["rules"]).expect("json");
    assert!(
        rules.contains(
            r#"{"apiGroups":[""],"resources":["configmaps"],"verbs":["get","create","patch"]}"#
        ),
        "{rules}"
    );
    // Off by default.
    assert!(find(&template(&[]), "ServiceMonitor").is_empty());
}

/// Two replicas by default: one leads through a Lease, the Service routes workers to the
/// leader's pod label only, both replicas are Ready (a rolling update surges a standby before
/// an old pod goes), and a PodDisruptionBudget keeps one through drains; one replica has no
/// PodDisruptionBudget (it would block every drain).
#[test]
fn two_replicas_elect_a_leader_the_service_selects_and_a_budget_keeps_one() {
    let objects = template(&[]);
    let d = deployment(&objects, "controller");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["pacer.dev/role"], "standby");
    assert_eq!(
        env_of(d, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    // The Deployment's own selector does not depend on the role (the label changes).
    assert!(d["spec"]["selector"]["matchLabels"]["pacer.dev/role"].is_null());
    let svc = &find(&objects, "Service")[0];
    assert_eq!(svc["spec"]["selector"]["pacer.dev/role"], "leader");
    let pdb = &find(&objects, "PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    let one = template(&["controller.replicas=1"]);
    assert!(find(&one, "PodDisruptionBudget").is_empty());
    assert_eq!(deployment(&one, "controller")["spec"]["replicas"], 1);
}

/// `hostNetwork` (charts/pacer/examples/values-host-network.yaml, the real-node e2e's values):
/// the controller's pod on the node's network with the cluster's DNS kept, worker pods too
/// (`--worker-host-network`), one replica (so no PodDisruptionBudget), listeners on loopback and
/// the API server's address in `controller.extraEnv`; by default none of it.
#[test]
fn the_host_network_example_puts_the_controller_and_workers_on_the_nodes_network() {
    let chart = chart();
    let values = chart.join("examples/values-host-network.yaml");
    let (chart, values) = (
        chart.to_str().expect("utf-8 path"),
        values.to_str().expect("utf-8 path"),
    );
    let (ok, out, err) = run_helm(&["lint", "--strict", chart, "-f", values]);
    assert!(ok, "helm lint -f {values}:\n{out}\n{err}");
    let (ok, out, err) = run_helm(&[
        "template",
        "pacer",
        chart,
        "--namespace",
        "pacer-system",
        "-f",
        values,
    ]);
    assert!(ok, "helm template -f {values}:\n{err}");
    let objects: Vec<Value> = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&out)
        .expect("YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect();
    let d = deployment(&objects, "controller");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(find(&objects, "PodDisruptionBudget").is_empty());
    let args = controller_args(&objects);
    for flag in [
        "--worker-host-network",
        "--grpc-listen=127.0.0.1:7700",
        "--http-listen=127.0.0.1:9090",
        "--advertise-address=127.0.0.1:7700",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag}: {args:?}");
    }
    assert_eq!(env_of(d, "KUBERNETES_SERVICE_HOST")["value"], "127.0.0.1");
    assert_eq!(env_of(d, "KUBERNETES_SERVICE_PORT")["value"], "6443");
    // the chart's own variables stay first
    assert_eq!(
        pod["containers"][0]["env"][0]["name"], "PACER_LOG",
        "{pod:#}"
    );

    let defaults = template(&[]);
    let pod = &deployment(&defaults, "controller")["spec"]["template"]["spec"];
    assert!(pod["hostNetwork"].is_null() && pod["dnsPolicy"].is_null());
    assert!(!controller_args(&defaults).contains(&"--worker-host-network".to_string()));
}
