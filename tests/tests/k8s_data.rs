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
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use pacer_tests::kube::e2e::{Install, Installed, MockProcess, http_get, loadtests, pacer_k8s};
use pacer_tests::kube::{Cluster, eventually};
use pacer_tests::{stderr, stdout, workspace_root};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

static INSTALL: OnceCell<Installed> = OnceCell::const_new();

/// The chart, as k8s_e2e.rs installs it: the operator listens on loopback (every pod shares
/// the host's network here) with the chart's generated TLS certificate.
async fn installed() -> &'static Installed {
    INSTALL.get_or_init(|| Install::chart().run()).await
}

/// Rows of the users file, and iterations of the plan: each row once.
const ROWS: usize = 30;
const WORKERS: u32 = 3;

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
    let mock = MockProcess::start_plain(
        &dir.path().join("mock.log"),
        &["--auth", "off", "--no-limits", "--record-arrivals"],
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
        install.operator_log()
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
    let mock = MockProcess::start_plain(
        &dir.path().join("mock.log"),
        &["--client", &format!("{id}:{secret}:story-org")],
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
        install.operator_log()
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
    let mock = MockProcess::start_plain(
        &dir.path().join("mock.log"),
        &["--auth", "off", "--no-limits", "--record-arrivals"],
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
