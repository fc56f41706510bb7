//! The worker pod template (`spec.workerTemplate`): what passes the operator's policy is
//! rendered into the Job's pod as written (pull Secrets, the operator's first; envFrom;
//! volumes and mounts; scheduling; a stricter security context), and every looser or
//! forbidden field is refused with its path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use pacer_operator::OperatorConfig;
use pacer_operator::crd::LoadTest;
use pacer_operator::policy::WorkerPolicy;
use pacer_operator::prepare::{Defaults, prepare};
use pacer_operator::resources::worker_job;
use serde_json::{Value, json};

fn plan() -> Value {
    json!({
        "name": "t", "target": "http://api",
        "auth": [{"name": "api", "type": "bearer", "token": "${env:PACER_AUTH_API_TOKEN}"}],
        "scenarios": [{"name": "s", "executor": "constant-vus", "vus": 1, "duration": "2s",
                       "auth": "api", "requests": [{"name": "q", "path": "/"}]}]
    })
}

fn loadtest(template: Value) -> LoadTest {
    serde_json::from_value(json!({
        "apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTest",
        "metadata": {"name": "shaped", "namespace": "team-a", "uid": "1234abcd-0000"},
        "spec": {
            "plan": plan(),
            "credentials": [{"name": "api", "secretRef": {"name": "api-token", "tokenKey": "token"}}],
            "workerTemplate": template
        }
    }))
    .unwrap()
}

fn full_template() -> Value {
    json!({
        "imagePullSecrets": [{"name": "team-registry"}],
        "envFrom": [{"configMapRef": {"name": "load-settings"}},
                    {"secretRef": {"name": "api-token"}}],
        "volumes": [
            {"name": "fixtures", "configMap": {"name": "fixtures"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "token", "secret": {"secretName": "api-token"}}
        ],
        "volumeMounts": [{"name": "fixtures", "mountPath": "/data", "readOnly": true}],
        "nodeSelector": {"pool": "load"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "load", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"team": "a"}}}],
        "priorityClassName": "load-tests",
        "runtimeClassName": "gvisor",
        "labels": {"team": "a"},
        "annotations": {"sidecar.istio.io/inject": "false"},
        "securityContext": {"runAsUser": 65532, "capabilities": {"drop": ["NET_RAW"]}},
        "podSecurityContext": {"runAsUser": 65532, "fsGroup": 65532}
    })
}

fn config() -> OperatorConfig {
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.worker_image_pull_secrets = vec!["chart-registry".into()];
    cfg
}

#[test]
fn a_full_template_is_rendered_into_the_jobs_pod() {
    let lt = loadtest(full_template());
    let cfg = config();
    let prepared = prepare(&lt, &cfg.defaults).expect("the template passes the policy");
    let job = serde_json::to_value(worker_job(&lt, &prepared, &cfg)).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        pod["imagePullSecrets"],
        json!([{"name": "chart-registry"}, {"name": "team-registry"}]),
        "the operator's (the chart's imagePullSecrets) first"
    );
    assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "load-settings");
    assert_eq!(c["envFrom"][1]["secretRef"]["name"], "api-token");
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["fixtures", "scratch", "token"] {
        assert!(volumes.contains(&v), "{v} in {volumes:?}");
    }
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "fixtures");
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "fixtures" && m["mountPath"] == "/data")
    );
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert_eq!(pod["nodeSelector"]["pool"], "load");
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    assert_eq!(pod["priorityClassName"], "load-tests");
    assert_eq!(pod["runtimeClassName"], "gvisor");
    let meta = &job["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["team"], "a");
    assert_eq!(
        meta["labels"]["pacer.dev/loadtest"], "shaped",
        "pacer's own labels kept"
    );
    assert_eq!(meta["annotations"]["sidecar.istio.io/inject"], "false");
    // Stricter, and the defaults kept.
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL", "NET_RAW"]));
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["fsGroup"], 65532);
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn without_a_template_the_operators_pull_secrets_still_reach_the_workers() {
    let lt = loadtest(json!({}));
    let cfg = config();
    let prepared = prepare(&lt, &cfg.defaults).unwrap();
    let job = serde_json::to_value(worker_job(&lt, &prepared, &cfg)).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "chart-registry"}]));
    let bare = OperatorConfig::new("x:1", "pacer:test");
    let job = serde_json::to_value(worker_job(&lt, &prepared, &bare)).unwrap();
    assert!(
        job["spec"]["template"]["spec"]
            .get("imagePullSecrets")
            .is_none()
    );
}

/// The paths of the policy's refusals of `template`.
fn refusals(template: Value) -> Vec<String> {
    let lt = loadtest(template);
    WorkerPolicy::default()
        .check(&lt)
        .into_iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

#[test]
fn every_looser_or_forbidden_field_is_refused_by_name() {
    let cases: Vec<(&str, Value)> = vec![
        (
            "envFrom[0].secretRef.name",
            json!({"envFrom": [{"secretRef": {"name": "db-admin"}}]}),
        ),
        (
            "envFrom[0].prefix",
            json!({"envFrom": [{"prefix": "PACER_", "configMapRef": {"name": "x"}}]}),
        ),
        (
            "volumes[0].secret.secretName",
            json!({"volumes": [{"name": "v", "secret": {"secretName": "db-admin"}}]}),
        ),
        (
            "volumes[0]",
            json!({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}),
        ),
        (
            "volumes[0]",
            json!({"volumes": [{"name": "two", "emptyDir": {}, "configMap": {"name": "x"}}]}),
        ),
        (
            "volumeMounts[0].name",
            json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        ),
        (
            "volumeMounts[0].mountPropagation",
            json!({
            "volumes": [{"name": "v", "emptyDir": {}}],
            "volumeMounts": [{"name": "v", "mountPath": "/x", "mountPropagation": "Bidirectional"}]}),
        ),
        (
            "priorityClassName",
            json!({"priorityClassName": "system-cluster-critical"}),
        ),
        (
            "securityContext.privileged",
            json!({"securityContext": {"privileged": true}}),
        ),
        (
            "securityContext.allowPrivilegeEscalation",
            json!({"securityContext": {"allowPrivilegeEscalation": true}}),
        ),
        (
            "securityContext.readOnlyRootFilesystem",
            json!({"securityContext": {"readOnlyRootFilesystem": false}}),
        ),
        (
            "securityContext.runAsNonRoot",
            json!({"securityContext": {"runAsNonRoot": false}}),
        ),
        (
            "securityContext.runAsUser",
            json!({"securityContext": {"runAsUser": 0}}),
        ),
        (
            "securityContext.runAsGroup",
            json!({"securityContext": {"runAsGroup": 0}}),
        ),
        (
            "securityContext.capabilities.add",
            json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}),
        ),
        (
            "securityContext.procMount",
            json!({"securityContext": {"procMount": "Unmasked"}}),
        ),
        (
            "securityContext.seLinuxOptions",
            json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
        ),
        (
            "securityContext.windowsOptions",
            json!({"securityContext": {"windowsOptions": {"hostProcess": true}}}),
        ),
        (
            "securityContext.seccompProfile.type",
            json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
        ),
        (
            "securityContext.appArmorProfile.type",
            json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
        ),
        (
            "podSecurityContext.runAsNonRoot",
            json!({"podSecurityContext": {"runAsNonRoot": false}}),
        ),
        (
            "podSecurityContext.runAsUser",
            json!({"podSecurityContext": {"runAsUser": 0}}),
        ),
        (
            "podSecurityContext.runAsGroup",
            json!({"podSecurityContext": {"runAsGroup": 0}}),
        ),
        (
            "podSecurityContext.fsGroup",
            json!({"podSecurityContext": {"fsGroup": 0}}),
        ),
        (
            "podSecurityContext.supplementalGroups",
            json!({"podSecurityContext": {"supplementalGroups": [0]}}),
        ),
        (
            "podSecurityContext.sysctls",
            json!({"podSecurityContext": {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]}}),
        ),
        (
            "podSecurityContext.seLinuxOptions",
            json!({"podSecurityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
        ),
        (
            "podSecurityContext.seccompProfile.type",
            json!({"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}),
        ),
        (
            "labels[\"pacer.dev/loadtest\"]",
            json!({"labels": {"pacer.dev/loadtest": "other"}}),
        ),
    ];
    for (field, template) in cases {
        let path = format!("spec.workerTemplate.{field}");
        let found = refusals(template.clone());
        assert!(
            found.iter().any(|e| e.starts_with(&format!("{path}: "))),
            "{template} is not refused at {path}: {found:?}"
        );
    }
}

#[test]
fn stricter_settings_pass() {
    let found = refusals(json!({
        "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "privileged": false, "runAsUser": 1000,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
        "podSecurityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000,
            "supplementalGroups": [3000], "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "results"}}],
        "volumeMounts": [{"name": "v", "mountPath": "/results", "mountPropagation": "None"}],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}]
    }));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_plan_may_read_names_from_env_from() {
    let mut lt = loadtest(json!({"envFrom": [{"configMapRef": {"name": "settings"}}]}));
    lt.spec.plan["variables"] = json!({"region": "${env:REGION}"});
    prepare(&lt, &Defaults::default()).expect("REGION may come from the ConfigMap");
    let mut without = loadtest(json!({}));
    without.spec.plan["variables"] = json!({"region": "${env:REGION}"});
    let e = prepare(&without, &Defaults::default()).unwrap_err();
    assert!(e.iter().any(|e| e.path.contains("variables")), "{e:?}");
}
