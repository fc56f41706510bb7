//! pacer on a real Kubernetes API server (the harness of `pacer_tests::kube`): `helm install` of
//! charts/pacer, the LoadTest CRD established, the operator running as the chart's
//! ServiceAccount (so the chart's RBAC is what is tested, not admin), and a LoadTest run by
//! worker pods against the mock API. Needs `make e2e-deps`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::future::Future;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use pacer_mock::LatencyConfig;
use pacer_tests::kube::{Cluster, free_port, tools_dir};
use pacer_tests::{pacer_bin, plain_mock_config, start_mock, workspace_root};

const RELEASE_NS: &str = "pacer-system";

async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            Cluster::shared().diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn helm(cluster: &Cluster, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(tools_dir().join("helm"));
    cmd.arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .expect("helm finishes within 150 s")
        .expect("helm runs (make e2e-deps)")
}

/// `GET http://127.0.0.1:<port><path>`: the status code, or `None` when nothing answers.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn loadtests(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "pacer.dev".into(),
        version: "v1alpha1".into(),
        api_version: "pacer.dev/v1alpha1".into(),
        kind: "LoadTest".into(),
        plural: "loadtests".into(),
    };
    Api::namespaced_with(client, ns, &resource)
}

#[tokio::test]
async fn helm_install_runs_the_operator_as_its_service_account_and_a_loadtest() {
    // the pacer binary builds while the control plane starts (the kubelet runs it for pods)
    let build = std::thread::spawn(pacer_bin);
    let cluster = Cluster::shared();
    build.join().unwrap();
    let client = cluster.client().await.unwrap();
    let grpc = free_port().unwrap();
    let metrics = free_port().unwrap();
    let chart = workspace_root().join("charts").join("pacer");

    // `helm install --wait`: the Deployment's pod runs `pacer operator` through the process
    // kubelet, Ready once it started.
    let out = helm(
        cluster,
        &[
            "install",
            "pacer",
            chart.to_str().unwrap(),
            "-n",
            RELEASE_NS,
            "--create-namespace",
            "--set",
            &format!("service.grpcPort={grpc}"),
            "--set",
            &format!("service.metricsPort={metrics}"),
            "--set",
            &format!("controller.advertiseAddress=127.0.0.1:{grpc}"),
            "--set",
            "controller.statusInterval=1s",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "helm install failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.diagnostics()
    );

    // the chart's CRD is accepted and established
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(
        Duration::from_secs(30),
        "the CRD is established",
        || async {
            let crd = crds.get("loadtests.pacer.dev").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;

    // the operator runs as the chart's ServiceAccount, and is ready
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let operator = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .unwrap_or_else(|| panic!("no Running operator pod\n{}", cluster.diagnostics()));
    let operator_name = operator.metadata.name.clone().unwrap();
    let sa = operator.spec.as_ref().unwrap().service_account_name.clone();
    assert_eq!(sa.as_deref(), Some("pacer"));
    eventually(
        Duration::from_secs(30),
        "the operator's /readyz",
        || async { (http_status(metrics, "/readyz").await == Some(200)).then_some(()) },
    )
    .await;
    let operator_log = || {
        cluster
            .pod_log(RELEASE_NS, &operator_name)
            .unwrap_or_default()
    };
    // the kubeconfig the kubelet gave the process holds a token of that ServiceAccount
    let pod_kubeconfig = cluster
        .kubelet()
        .unwrap()
        .log_path(RELEASE_NS, &operator_name)
        .unwrap()
        .with_file_name("kubeconfig");
    let whoami = cluster
        .kubectl_as(
            &pod_kubeconfig,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        "system:serviceaccount:pacer-system:pacer"
    );

    // A LoadTest in its own namespace, against the mock API on loopback.
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(20),
    }))
    .await;
    let ns = "e2e-loadtest";
    cluster.create_namespace(ns).await.unwrap();
    let test: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": "smoke", "namespace": ns },
        "spec": {
            "workers": 2,
            "startTimeout": "60s",
            "plan": {
                "name": "smoke",
                "target": format!("http://{}", mock.addr()),
                "duration": "3s",
                "scenarios": [{
                    "name": "me",
                    "executor": "constant-vus",
                    "vus": 2,
                    "requests": [{ "name": "me", "method": "GET", "path": "/api/v2/users/me" }],
                }],
            },
        },
    }))
    .unwrap();
    let tests = loadtests(client.clone(), ns);
    tests
        .create(&kube::api::PostParams::default(), &test)
        .await
        .unwrap();
    let phase = eventually(Duration::from_secs(120), "the LoadTest ends", || async {
        let lt = tests.get("smoke").await.ok()?;
        let phase = lt.data["status"]["phase"].as_str()?.to_string();
        ["Succeeded", "Failed", "Aborted"]
            .contains(&phase.as_str())
            .then_some((phase, lt.data["status"].clone()))
    })
    .await;
    assert_eq!(
        phase.0,
        "Succeeded",
        "status: {:#}\noperator log:\n{}\n{}",
        phase.1,
        operator_log(),
        cluster.diagnostics()
    );
    assert!(
        !operator_log().to_lowercase().contains("forbidden"),
        "the chart's RBAC is enough:\n{}",
        operator_log()
    );
    let listed = cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "lt",
            "smoke",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
        .unwrap();
    assert_eq!(listed, "Succeeded");
    mock.shutdown().await;
}
