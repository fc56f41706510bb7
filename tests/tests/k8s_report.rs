//! A LoadTest's report on a real API server (issue 20, parts 1 and 6): `pacer submit` of a plan
//! file with a credential from a Secret, `pacer watch` to the end (its exit code is the
//! verdict), then `pacer report NAME --html --out json= --out csv=`, rendered from the run data
//! the operator stored in ConfigMaps when the test ended. The report's request count, 429s and
//! p95 equal the LoadTest's status and the mock's own count, and its series has one row per
//! second of the run. The chart is installed once (`helm install`, the operator as its
//! ServiceAccount, listening on 127.0.0.1), the mock is a `pacer mock` process with a limit
//! that refuses some requests. Needs `make e2e-deps`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use pacer_tests::kube::e2e::{Install, Installed, MockProcess, http_get, loadtests, pacer_k8s};
use pacer_tests::kube::{Cluster, eventually};
use pacer_tests::{stderr, stdout, workspace_root};
use serde_json::Value;
use tokio::sync::OnceCell;

/// examples/submit-report.yaml: 16 arrivals a second for 6 s over 2 workers, no retries, so
/// the mock's count is the attempts'; the mock lets the client through 10 times a second,
/// so some are refused with 429. Each arrival takes its own row of the CSV beside it
/// (`unique`), which `pacer submit` packs into a ConfigMap.
const EXAMPLE: &str = "examples/submit-report.yaml";
const DATA: &str = "examples/data/report-users.csv";
const RATE: u64 = 16;
const SECS: u64 = 6;
const WORKERS: u32 = 2;
const CLIENT_ID: &str = "report-e2e";
const CLIENT_SECRET: &str = "report-e2e-secret-7c1";

/// The example as it is, pointed at the mock's port.
fn plan(target: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join(EXAMPLE)).unwrap();
    assert!(
        text.contains(&format!("rate: {RATE}/s")) && text.contains(&format!("duration: {SECS}s"))
    );
    text.replace("http://127.0.0.1:8080", target)
}

static INSTALL: OnceCell<Installed> = OnceCell::const_new();

/// The chart, as k8s_e2e.rs installs it: the operator listens on loopback (every pod shares
/// the host's network here) with the chart's generated TLS certificate.
async fn installed() -> &'static Installed {
    INSTALL.get_or_init(|| Install::chart().run()).await
}

/// `data-value` of the element with this id.
fn data_value(html: &str, id: &str) -> f64 {
    let at = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &html[at..];
    let v = rest.find("data-value=\"").unwrap() + "data-value=\"".len();
    let end = rest[v..].find('"').unwrap();
    rest[v..v + end].parse().unwrap()
}

#[tokio::test]
async fn submit_watch_and_report_agree_with_the_status_and_the_mock() {
    let install = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-report";
    let name = "submit-report";
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start_plain(
        &dir.path().join("mock.log"),
        &[
            "--client",
            &format!("{CLIENT_ID}:{CLIENT_SECRET}:report-org"),
            "--limit",
            "me:client:10/1s",
            "--latency",
            "fixed:3ms",
            "--record-arrivals",
        ],
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
            "report-client",
            "-n",
            ns,
            &format!("--from-literal=clientId={CLIENT_ID}"),
            &format!("--from-literal=clientSecret={CLIENT_SECRET}"),
        ])
        .await
        .unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::copy(
        workspace_root().join(DATA),
        dir.path().join("data/report-users.csv"),
    )
    .unwrap();
    let plan_path = dir.path().join("plan.yaml");
    std::fs::write(&plan_path, plan(&format!("http://127.0.0.1:{}", mock.port))).unwrap();

    // submit, then watch to the end: the exit code is the verdict (passed: 0)
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
            "--credential",
            "genesys=report-client",
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

    let tests = loadtests(client.clone(), ns);
    let status = tests.get(name).await.unwrap().data["status"].clone();
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    let requests = status["requests"].as_u64().unwrap();
    let throttled = status["throttled"].as_u64().unwrap();
    let p95 = status["latency"]["p95"].as_str().unwrap().to_string();

    // the report files, from the stored run data
    let html = dir.path().join("report.html");
    let jsonl = dir.path().join("series.jsonl");
    let csv = dir.path().join("series.csv");
    let report = pacer_k8s(
        &[
            "report",
            name,
            "-n",
            ns,
            "--html",
            html.to_str().unwrap(),
            "--out",
            &format!("json={}", jsonl.display()),
            "--out",
            &format!("csv={}", csv.display()),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    assert!(stdout(&report).contains("http_reqs"), "{}", stdout(&report));
    let page = std::fs::read_to_string(&html).unwrap();
    let reqs = data_value(&page, "tile-http-reqs") as u64;
    let refused = data_value(&page, "tile-throttled") as u64;
    let report_p95 = format!("{:.1}ms", data_value(&page, "tile-duration-p95"));
    // the mock's count: every attempt reached it (none retried), its 429s are the refusals
    let stats = mock.stats().await;
    let mock_count = stats["requests"]["byRoute"]["GET /api/v2/users/me"]
        .as_u64()
        .unwrap_or_else(|| panic!("{:#}", stats["requests"]));
    eprintln!(
        "k8s report: {reqs} requests, {refused} 429s, p95 {report_p95}; status {requests}, \
         {throttled}, {p95}; mock {mock_count}"
    );
    assert_eq!(reqs, requests, "report vs status");
    assert_eq!(reqs, mock_count, "report vs mock");
    assert_eq!(reqs, RATE * SECS);
    // every row of the CSV reached the mock exactly once, over both workers
    let (code, body) = http_get(mock.port, "/_mock/arrivals").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let arrivals: Value = serde_json::from_str(&body).unwrap();
    let mut users: Vec<u64> = arrivals["arrivals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["path"].as_str()?.split_once("?user=")?.1.parse().ok())
        .collect();
    users.sort_unstable();
    assert_eq!(
        users,
        (1..=RATE * SECS).collect::<Vec<_>>(),
        "each row once"
    );
    assert_eq!(refused, throttled, "429s: report vs status");
    assert!(refused > 0, "the mock's limit refused none");
    assert_eq!(report_p95, p95, "p95: report vs status");
    assert!(page.contains(r#"id="table-workers""#), "a row per worker");
    assert!(
        !page.contains(CLIENT_SECRET),
        "the secret reached the report"
    );

    // the series: one row per second of the run, adding up to the total
    let rows: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary_json = pacer_k8s(
        &["report", name, "-n", ns, "--json"],
        Duration::from_secs(30),
    )
    .await;
    let summary: Value = serde_json::from_str(&stdout(&summary_json)).unwrap();
    let elapsed = summary["elapsed_secs"].as_f64().unwrap();
    eprintln!(
        "series: {} rows for {elapsed:.2} s: {:?}",
        rows.len(),
        rows.iter()
            .map(|r| r["attempts"].as_u64().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(
        (rows.len() as f64 - elapsed).abs() <= 1.0,
        "{} rows for {elapsed} s",
        rows.len()
    );
    let sum: u64 = rows.iter().map(|r| r["attempts"].as_u64().unwrap()).sum();
    assert_eq!(sum, requests);
    let throttled_rows: u64 = rows.iter().map(|r| r["throttled"].as_u64().unwrap()).sum();
    assert_eq!(throttled_rows, throttled);
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), rows.len() + 1, "{csv_text}");

    // each worker's own series, adding up to its row in the status
    let w0 = dir.path().join("worker0.jsonl");
    let worker = pacer_k8s(
        &[
            "report",
            name,
            "-n",
            ns,
            "--worker",
            "0",
            "--out",
            &format!("json={}", w0.display()),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(worker.status.code(), Some(0), "{}", stderr(&worker));
    let w0_sum: u64 = std::fs::read_to_string(&w0)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["attempts"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let health = status["workerHealth"].as_array().unwrap();
    let w0_status = health.iter().find(|w| w["index"] == 0).unwrap()["requests"].as_u64();
    assert_eq!(Some(w0_sum), w0_status, "{status:#}");

    // where it is kept: the chunk ConfigMaps of the run data, owned by the LoadTest
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let chunk = cms.get(&format!("{name}-report-data-0")).await.unwrap();
    assert_eq!(
        chunk.data.as_ref().unwrap()["testId"],
        status["testId"].as_str().unwrap()
    );
    assert!(
        chunk
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.kind == "LoadTest" && o.name == name)),
        "{:?}",
        chunk.metadata
    );
}
