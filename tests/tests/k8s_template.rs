//! Issue 20, parts 3 to 5, on a real Kubernetes API server (`pacer_tests::kube`; its own per
//! test binary): `helm install` of charts/pacer with an `imagePullSecrets` entry, then
//!
//! - a LoadTest whose plan is in a ConfigMap (`spec.planRef`) and whose worker pod template
//!   has a pull Secret, a ConfigMap volume and its mount, a toleration and a stricter security
//!   context: the API server accepts it (CRD schema and CEL), the operator reads the plan, the
//!   Job's pods carry the template (and the chart's pull Secret), and a scrape of the
//!   operator's `/metrics` mid-run shows the LoadTest's series; it ends Succeeded with the
//!   mock's count, its status saying where the plan came from;
//! - `pacer submit --plan-configmap`: the plan file into a ConfigMap, a LoadTest referring
//!   to it, watched to Succeeded (exit code 0);
//! - what is refused: a hostPath volume and a LoadTest with both `plan` and `planRef` by
//!   `kubectl apply` (the CRD's CEL rules), a `planRef` to a missing ConfigMap and a Secret
//!   volume that is not one of the test's credentials by the operator, each naming the field.
//!
//! Needs `make e2e-deps`. The steps around the chart are `pacer_tests::kube::e2e`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use pacer_mock::LatencyConfig;
use pacer_tests::kube::e2e::{
    Install, Installed, LABEL_LOADTEST, http_get, kubectl_apply, loadtest, loadtests, phase,
    wait_phase,
};
use pacer_tests::kube::{Cluster, eventually};
use pacer_tests::{pacer_async, plain_mock_config, start_mock};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The chart's `imagePullSecrets`, which every worker pod must carry too.
const CHART_PULL_SECRET: &str = "chart-registry";

/// The chart installed once per test binary, with the pull Secret every worker pod must carry.
static INSTALL: OnceCell<Installed> = OnceCell::const_new();

/// The operator's metrics port, once the chart is installed.
async fn installed() -> u16 {
    INSTALL
        .get_or_init(|| {
            Install::chart()
                .set(format!("imagePullSecrets[0].name={CHART_PULL_SECRET}"))
                .run()
        })
        .await
        .metrics
}

/// A plan of `GET /api/v2/users/me` at `rate` for `duration` against `target`, as YAML text.
fn plan_text(name: &str, target: &str, rate: &str, duration: &str) -> String {
    format!(
        "name: {name}\ntarget: {target}\nscenarios:\n  - name: me\n    executor: constant-arrival-rate\n    rate: {rate}\n    duration: {duration}\n    requests:\n      - name: me\n        path: /api/v2/users/me\n"
    )
}

/// The value of the sample `name{labels}` (labels as written, in order) in an exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The template's fields, the plan from a ConfigMap, accepted by the API server and rendered
/// into the worker pods; the operator's /metrics shows the test while it runs.
#[tokio::test]
async fn a_plan_from_a_configmap_runs_in_templated_pods_and_shows_on_metrics() {
    let metrics_port = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-planref";
    cluster.create_namespace(ns).await.unwrap();
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    }))
    .await;
    let target = format!("http://{}", mock.addr());
    // 5/s for 8 s: 40 requests, split exactly between the 2 workers.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "plans"},
        "data": {"me.yaml": plan_text("from-a-configmap", &target, "5/s", "8s")}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let out = kubectl_apply(
        ns,
        &[loadtest(
            "templated",
            json!({
                "workers": 2,
                "startTimeout": "60s",
                "planRef": {"name": "plans", "key": "me.yaml"},
                "workerTemplate": {
                    "imagePullSecrets": [{"name": "team-registry"}],
                    "tolerations": [{"key": "dedicated", "operator": "Equal",
                                     "value": "load", "effect": "NoSchedule"}],
                    "volumes": [{"name": "plans", "configMap": {"name": "plans"}}],
                    "volumeMounts": [{"name": "plans", "mountPath": "/etc/plans", "readOnly": true}],
                    "securityContext": {"runAsUser": 65532},
                    "labels": {"team": "a"}
                }
            }),
        )],
    )
    .await;
    assert!(
        out.status.success(),
        "kubectl apply refused the template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests = loadtests(client.clone(), ns);
    wait_phase(&tests, "templated", &["Running"], Duration::from_secs(90)).await;

    // The Job and the pods the API server accepted carry the template.
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job = serde_json::to_value(jobs.get("templated-workers").await.unwrap()).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}=templated")))
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 2, "two worker pods");
    let pod = serde_json::to_value(&listed[0]).unwrap();
    for spec in [&job["spec"]["template"]["spec"], &pod["spec"]] {
        assert_eq!(
            spec["imagePullSecrets"],
            json!([{"name": CHART_PULL_SECRET}, {"name": "team-registry"}]),
            "the chart's pull Secret first, then the template's"
        );
        assert!(
            spec["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "dedicated" && t["value"] == "load"),
            "{}",
            spec["tolerations"]
        );
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "plans" && v["configMap"]["name"] == "plans"),
            "{}",
            spec["volumes"]
        );
        let c = &spec["containers"][0];
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/etc/plans"),
            "{}",
            c["volumeMounts"]
        );
        assert_eq!(c["securityContext"]["runAsUser"], 65532);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    }
    assert_eq!(pod["metadata"]["labels"]["team"], "a");

    // A scrape mid-run shows the LoadTest's series.
    let labels = format!("namespace=\"{ns}\",loadtest=\"templated\"");
    let scraped = eventually(
        Duration::from_secs(20),
        "the LoadTest's series on the operator's /metrics",
        || async {
            let (code, body) = http_get(metrics_port, "/metrics").await?;
            let requests = sample(&body, "pacer_loadtest_requests_total", &labels)?;
            let connected = sample(
                &body,
                "pacer_loadtest_workers",
                &format!("{labels},state=\"connected\""),
            )?;
            (code == 200 && requests > 0.0 && connected == 2.0).then_some(body)
        },
    )
    .await;
    for family in [
        "pacer_loadtest_requests_per_second",
        "pacer_loadtest_throttled_total",
        "pacer_loadtest_pacing_seconds_total",
        "pacer_loadtest_paused_requests_total",
        "pacer_loadtest_progress_ratio",
    ] {
        assert!(
            sample(&scraped, family, &labels).is_some(),
            "{family} missing:\n{scraped}"
        );
    }
    assert!(
        sample(&scraped, "pacer_loadtest_started", &labels) == Some(1.0),
        "{scraped}"
    );

    let status = wait_phase(
        &tests,
        "templated",
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(phase(&status), "Succeeded", "{status:#}");
    assert_eq!(status["requests"], 40, "{status:#}");
    assert_eq!(mock.stats().requests.by_route["GET /api/v2/users/me"], 40);
    assert_eq!(status["planSource"]["kind"], "ConfigMap", "{status:#}");
    assert_eq!(status["planSource"]["configMap"], "plans");
    assert_eq!(status["planSource"]["key"], "me.yaml");
    assert!(
        status["planSource"]["resourceVersion"].is_string(),
        "{status:#}"
    );
    // Once it ended, its series are gone.
    let (_, body) = http_get(metrics_port, "/metrics").await.unwrap();
    assert!(
        sample(&body, "pacer_loadtest_requests_total", &labels).is_none(),
        "{body}"
    );
    mock.shutdown().await;
}

/// What may not pass: refused by the API server (CEL) or by the operator, the field named.
#[tokio::test]
async fn a_hostpath_a_foreign_secret_both_plans_and_a_missing_configmap_are_refused() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-refused";
    cluster.create_namespace(ns).await.unwrap();
    let plan = serde_saphyr::from_str::<Value>(&plan_text("p", "http://127.0.0.1:9", "1/s", "1s"))
        .unwrap();

    // The API server: a hostPath volume (not in the schema: pruned, then no source left), and
    // both plan and planRef.
    for (what, spec, says) in [
        (
            "a hostPath volume",
            json!({"plan": plan, "workerTemplate": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
            // kubectl's strict field validation names the unknown field; without it, the CEL
            // rule refuses the volume left without a source
            "hostPath",
        ),
        (
            "both plan and planRef",
            json!({"plan": plan, "planRef": {"name": "plans"}}),
            "give exactly one of plan (inline) and planRef",
        ),
    ] {
        let out = kubectl_apply(ns, &[loadtest("refused", spec)]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubectl apply accepted {what}");
        assert!(err.contains(says), "{what}: {err}");
    }

    // The operator: a planRef to a ConfigMap that does not exist, and a Secret volume of a
    // Secret that is not one of the test's credentials.
    let out = kubectl_apply(
        ns,
        &[
            loadtest("no-configmap", json!({"planRef": {"name": "nowhere"}})),
            loadtest(
                "foreign-secret",
                json!({"plan": plan, "workerTemplate": {"volumes": [
                    {"name": "s", "secret": {"secretName": "db-admin"}}
                ]}}),
            ),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests = loadtests(client.clone(), ns);
    let started = Instant::now();
    for (name, field) in [
        ("no-configmap", "spec.planRef.name"),
        (
            "foreign-secret",
            "spec.workerTemplate.volumes[0].secret.secretName",
        ),
    ] {
        let status = wait_phase(&tests, name, &["Failed"], Duration::from_secs(30)).await;
        let message = status["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{name}: {status:#}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // Nothing was started for them.
    let jobs: Api<Job> = Api::namespaced(client, ns);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// `pacer submit plan.yaml --plan-configmap NAME --wait`: the ConfigMap holds the plan, the
/// LoadTest refers to it and holds none, and the test runs to Succeeded (exit code 0).
#[tokio::test]
async fn pacer_submit_puts_the_plan_in_a_configmap_and_runs_it() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-submit";
    cluster.create_namespace(ns).await.unwrap();
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(5),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        plan_text("submitted", &format!("http://{}", mock.addr()), "4/s", "3s"),
    )
    .unwrap();
    let kubeconfig = cluster.kubeconfig().to_str().unwrap().to_string();
    let out = pacer_async(
        [
            "submit",
            plan.to_str().unwrap(),
            "-n",
            ns,
            "--name",
            "submitted",
            "--plan-configmap",
            "submitted-plan",
            "--wait",
        ]
        .map(String::from)
        .to_vec(),
        vec![("KUBECONFIG".into(), kubeconfig)],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms.get("submitted-plan").await.unwrap();
    let text = &cm.data.unwrap()["plan.yaml"];
    assert!(text.contains("submitted"), "{text}");
    let lt = loadtests(client, ns).get("submitted").await.unwrap();
    assert_eq!(
        lt.data["spec"]["planRef"],
        json!({"name": "submitted-plan", "key": "plan.yaml"})
    );
    assert!(
        lt.data["spec"].get("plan").is_none(),
        "{:#}",
        lt.data["spec"]
    );
    assert_eq!(lt.data["status"]["requests"], 12, "{:#}", lt.data["status"]);
    assert_eq!(mock.stats().requests.by_route["GET /api/v2/users/me"], 12);
    mock.shutdown().await;
}
