//! Test data on a real API server (issue 20 part 2, docs/kubernetes.md "Test data"): `pacer
//! submit` of a plan whose `unique` CSV source sits beside it packs the file into a ConfigMap
//! and names it in `spec.data`; the operator reads it, its coordinator sends it to 3 worker
//! pods, and the mock's arrival log shows every row used exactly once, both requests of each
//! iteration with the same row. examples/user-story-data.yaml, submitted as it is with a
//! credential, runs on 3 worker pods (24 queries, all 200). A LoadTest naming a ConfigMap that
//! does not exist fails naming `spec.data.<source>`; one with too few rows for its iterations
//! fails saying the data ran out, each row used once. The chart is installed once (as k8s_report.rs installs it),
//! the mock is a `pacer mock` process. Needs `make e2e-deps`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use pacer_tests::kube::{Cluster, eventually, free_port, tools_dir};
use pacer_tests::{pacer_async, pacer_bin, stderr, stdout, workspace_root};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const RELEASE_NS: &str = "pacer-system";

/// Rows of the users file, and iterations of the plan: each row once.
const ROWS: usize = 30;
const WORKERS: u32 = 3;

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

/// `GET http://127.0.0.1:<port><path>`: the status code and the body (not chunked: the mock's
/// stats and the operator's probes answer with a length).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((code, body.to_string()))
}

/// What the `helm install` left running.
struct Install {
    /// The operator's pod.
    operator: String,
}

static INSTALL: OnceCell<Install> = OnceCell::const_new();

async fn installed() -> &'static Install {
    INSTALL.get_or_init(install).await
}

/// The chart, as k8s_e2e.rs installs it: the operator listens on loopback (every pod shares
/// the host's network here) with the chart's generated TLS certificate.
async fn install() -> Install {
    let build = std::thread::spawn(pacer_bin);
    let cluster = Cluster::shared();
    build.join().unwrap();
    let client = cluster.client().await.unwrap();
    let grpc = free_port().unwrap();
    let metrics = free_port().unwrap();
    let chart = workspace_root().join("charts").join("pacer");
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
            "controller.listenHost=127.0.0.1",
            "--set",
            &format!("controller.advertiseAddress=127.0.0.1:{grpc}"),
            "--set",
            "controller.statusInterval=1s",
            "--set",
            &format!("controller.extraArgs={{--worker-server-name=pacer.{RELEASE_NS}.svc}}"),
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let operator = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .unwrap_or_else(|| panic!("no Running operator pod\n{}", cluster.diagnostics()));
    eventually(
        Duration::from_secs(30),
        "the operator's /readyz",
        || async { (http_get(metrics, "/readyz").await?.0 == 200).then_some(()) },
    )
    .await;
    Install {
        operator: operator.metadata.name.unwrap(),
    }
}

/// `pacer mock` as a process on a free loopback port, stopped on drop.
struct MockProcess {
    port: u16,
    child: std::process::Child,
}

impl MockProcess {
    fn start(args: &[&str], log: &Path) -> Self {
        let port = free_port().unwrap();
        let out = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(pacer_bin())
            .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("PACER_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { port, child }
    }

    async fn stats(&self) -> Value {
        let (code, body) = http_get(self.port, "/_mock/stats").await.unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pacer ARGS` with the cluster's kubeconfig, bounded.
async fn pacer_k8s(args: &[&str], limit: Duration) -> Output {
    let kubeconfig = Cluster::shared().kubeconfig().display().to_string();
    pacer_async(
        args.iter().map(|s| s.to_string()).collect(),
        vec![("KUBECONFIG".into(), kubeconfig)],
        limit,
    )
    .await
}

fn loadtests(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        ns,
        &ApiResource {
            group: "pacer.dev".into(),
            version: "v1alpha1".into(),
            api_version: "pacer.dev/v1alpha1".into(),
            kind: "LoadTest".into(),
            plural: "loadtests".into(),
        },
    )
}

/// A plan of `ROWS` shared iterations over 3 VUs, each sending `/a/<id>/<iteration>` and
/// `/b/<email>/<iteration>` of its row of `data/users.csv`.
fn plan(target: &str) -> String {
    format!(
        "name: k8s-data\ntarget: {target}\ndata:\n  users: {{ file: data/users.csv, mode: unique }}\nscenarios:\n  - name: s\n    executor: shared-iterations\n    vus: 3\n    iterations: {ROWS}\n    maxDuration: 60s\n    requests:\n      - {{ name: a, path: \"/a/{{{{data.users.id}}}}/{{{{iteration}}}}\" }}\n      - {{ name: b, path: \"/b/{{{{data.users.email}}}}/{{{{iteration}}}}\" }}\n"
    )
}

fn users(n: usize) -> String {
    let mut s = String::from("id,email\n");
    for i in 0..n {
        s.push_str(&format!("{i},user{i}@example.com\n"));
    }
    s
}

/// The row of each iteration from the mock's arrival log, checking that both requests of
/// an iteration saw the same row.
async fn rows_used(mock: &MockProcess) -> Vec<usize> {
    let (code, body) = http_get(mock.port, "/_mock/arrivals").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut by_iteration: BTreeMap<String, (Option<usize>, Option<String>)> = BTreeMap::new();
    for a in v["arrivals"].as_array().unwrap() {
        let p = a["path"].as_str().unwrap();
        match p.split('/').collect::<Vec<_>>().as_slice() {
            ["", "a", id, it] => {
                by_iteration.entry(it.to_string()).or_default().0 = id.parse().ok()
            }
            ["", "b", email, it] => {
                by_iteration.entry(it.to_string()).or_default().1 = Some(email.to_string())
            }
            _ => panic!("unexpected path {p}"),
        }
    }
    by_iteration
        .into_iter()
        .map(|(it, (id, email))| {
            let id = id.unwrap_or_else(|| panic!("iteration {it} sent no /a/"));
            assert_eq!(
                email,
                Some(format!("user{id}@example.com")),
                "iteration {it}"
            );
            id
        })
        .collect()
}

#[tokio::test]
async fn submit_packs_the_csv_and_three_worker_pods_use_every_row_once() {
    let install = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-data";
    let name = "users-once";
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(
        &["--auth", "off", "--no-limits", "--record-arrivals"],
        &dir.path().join("mock.log"),
    );
    eventually(Duration::from_secs(30), "pacer mock answers", || async {
        (http_get(mock.port, "/_mock/stats").await?.0 == 200).then_some(())
    })
    .await;
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/users.csv"), users(ROWS)).unwrap();
    let plan_path = dir.path().join("plan.yaml");
    std::fs::write(&plan_path, plan(&format!("http://127.0.0.1:{}", mock.port))).unwrap();

    let submit = pacer_k8s(
        &[
            "submit",
            plan_path.to_str().unwrap(),
            "-n",
            ns,
            "--name",
            name,
            "--workers",
            &WORKERS.to_string(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(submit.status.code(), Some(0), "{}", stderr(&submit));
    assert!(
        stderr(&submit).contains("configmap/users-once-data-users holds test data"),
        "{}",
        stderr(&submit)
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms.get("users-once-data-users").await.unwrap();
    assert_eq!(cm.data.unwrap()["users.csv"], users(ROWS));

    let watch = pacer_k8s(
        &["watch", name, "-n", ns, "--every", "1"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(
        watch.status.code(),
        Some(0),
        "watch: {}\n{}\noperator log:\n{}",
        stdout(&watch),
        stderr(&watch),
        cluster
            .pod_log(RELEASE_NS, &install.operator)
            .unwrap_or_default()
    );
    let lt = loadtests(client.clone(), ns).get(name).await.unwrap();
    assert_eq!(
        lt.data["spec"]["data"]["users"],
        json!({ "configMap": "users-once-data-users", "key": "users.csv" })
    );
    assert_eq!(lt.data["status"]["phase"], "Succeeded");
    assert_eq!(lt.data["status"]["requests"], json!(2 * ROWS));
    assert_eq!(mock.stats().await["requests"]["total"], json!(2 * ROWS));
    let mut ids = rows_used(&mock).await;
    ids.sort_unstable();
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>(), "every row exactly once");
    eprintln!(
        "k8s data: {} rows, each once, over {WORKERS} worker pods",
        ids.len()
    );
}

/// A LoadTest whose `spec.data` names a ConfigMap that is not there fails before anything
/// starts, naming the field.
#[tokio::test]
async fn a_missing_data_configmap_fails_the_loadtest_naming_the_field() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-data-missing";
    let name = "no-data";
    cluster.create_namespace(ns).await.unwrap();
    let plan: Value = serde_saphyr::from_str(&plan("http://127.0.0.1:9")).unwrap();
    let lt = json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": name },
        "spec": {
            "plan": plan,
            "data": { "users": { "configMap": "not-there", "key": "users.csv" } }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lt.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&lt).unwrap()).unwrap();
    cluster
        .kubectl_ok(&["apply", "-n", ns, "-f", path.to_str().unwrap()])
        .await
        .unwrap();
    let tests = loadtests(client, ns);
    let status = eventually(Duration::from_secs(60), "the LoadTest fails", || async {
        let lt = tests.get_opt(name).await.ok()??;
        let s = lt.data.get("status")?.clone();
        (s["phase"] == "Failed").then_some(s)
    })
    .await;
    let text = status.to_string();
    assert!(
        text.contains(r#"spec.data.users: no ConfigMap \"not-there\""#),
        "{status:#}"
    );
}

/// examples/user-story-data.yaml as a user submits it (`pacer submit --workers 3 --credential`):
/// its CSV packed into a ConfigMap, 3 worker pods query each of the 24 intervals and pages
/// once, all answered 200 by the mock (which checks `pageNumber` is an integer: the CSV's
/// `types`), the status's count the mock's.
#[tokio::test]
async fn the_user_story_data_example_runs_on_three_worker_pods() {
    let install = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-data-story";
    let name = "user-story-data";
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = ("story-e2e", "story-e2e-secret-9f2");
    let mock = MockProcess::start(
        &["--client", &format!("{id}:{secret}:story-org")],
        &dir.path().join("mock.log"),
    );
    eventually(Duration::from_secs(30), "pacer mock answers", || async {
        (http_get(mock.port, "/_mock/stats").await?.0 == 200).then_some(())
    })
    .await;
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "story-client",
            "-n",
            ns,
            &format!("--from-literal=clientId={id}"),
            &format!("--from-literal=clientSecret={secret}"),
        ])
        .await
        .unwrap();
    let example = std::fs::read_to_string(workspace_root().join("examples/user-story-data.yaml"))
        .unwrap()
        .replace(
            "http://127.0.0.1:8080",
            &format!("http://127.0.0.1:{}", mock.port),
        );
    std::fs::write(dir.path().join("plan.yaml"), example).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(
        workspace_root().join("examples/data/analytics-intervals.csv"),
        dir.path().join("data/analytics-intervals.csv"),
    )
    .unwrap();
    let submit = pacer_k8s(
        &[
            "submit",
            dir.path().join("plan.yaml").to_str().unwrap(),
            "-n",
            ns,
            "--name",
            name,
            "--workers",
            "3",
            "--credential",
            "genesys=story-client",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(submit.status.code(), Some(0), "{}", stderr(&submit));
    let watch = pacer_k8s(
        &["watch", name, "-n", ns, "--every", "1"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(
        watch.status.code(),
        Some(0),
        "watch: {}\n{}\noperator log:\n{}",
        stdout(&watch),
        stderr(&watch),
        cluster
            .pod_log(RELEASE_NS, &install.operator)
            .unwrap_or_default()
    );
    let lt = loadtests(client, ns).get(name).await.unwrap();
    assert_eq!(lt.data["status"]["requests"], json!(24));
    let stats = mock.stats().await;
    assert_eq!(
        stats["requests"]["byRoute"]["POST /api/v2/analytics/conversations/details/query"],
        json!(24),
        "{:#}",
        stats["requests"]
    );
    let by_status = stats["requests"]["byStatus"].as_object().unwrap();
    assert!(
        by_status.keys().all(|s| s == "200"),
        "{:#}",
        stats["requests"]
    );
}

/// 30 iterations for 10 rows on 3 worker pods: each pod stops when its block is used, the
/// test ends Failed, and its status says why; no row is used twice.
#[tokio::test]
async fn rows_running_out_fail_the_loadtest_saying_why() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-data-out";
    let name = "too-few-rows";
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(
        &["--auth", "off", "--no-limits", "--record-arrivals"],
        &dir.path().join("mock.log"),
    );
    eventually(Duration::from_secs(30), "pacer mock answers", || async {
        (http_get(mock.port, "/_mock/stats").await?.0 == 200).then_some(())
    })
    .await;
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/users.csv"), users(10)).unwrap();
    let plan_path = dir.path().join("plan.yaml");
    std::fs::write(&plan_path, plan(&format!("http://127.0.0.1:{}", mock.port))).unwrap();
    let submit = pacer_k8s(
        &[
            "submit",
            plan_path.to_str().unwrap(),
            "-n",
            ns,
            "--name",
            name,
            "--workers",
            &WORKERS.to_string(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(submit.status.code(), Some(0), "{}", stderr(&submit));
    let watch = pacer_k8s(
        &["watch", name, "-n", ns, "--every", "1"],
        Duration::from_secs(180),
    )
    .await;
    assert_ne!(watch.status.code(), Some(0), "{}", stdout(&watch));
    let lt = loadtests(client, ns).get(name).await.unwrap();
    let status = &lt.data["status"];
    assert_eq!(status["phase"], "Failed", "{status:#}");
    assert!(
        status.to_string().contains("test data `users` ran out"),
        "{status:#}"
    );
    let mut ids = rows_used(&mock).await;
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>(), "each row once");
}
