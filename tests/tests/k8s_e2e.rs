//! pacer on a real Kubernetes API server (the harness of `pacer_tests::kube`): `helm install` of
//! charts/pacer once per test binary (shared by every test here, each in its own namespace),
//! the LoadTest CRD established, the operator running as the chart's ServiceAccount (so the
//! chart's RBAC is what is tested, not admin) and listening on 127.0.0.1 only
//! (`controller.listenHost`), and the user's paths through LoadTests run by worker pods against
//! the mock API: a run to the verdict, the user story with 3 workers and Redis, invalid
//! manifests refused by `kubectl apply`, `suspend`, deletion, two tests side by side, a worker
//! pod that cannot start, and the RBAC the operator has (and has not). Needs `make e2e-deps`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use pacer_mock::LatencyConfig;
use pacer_tests::kube::e2e::{
    Install, Installed, LABEL_LOADTEST, MockProcess, RELEASE_NS, events_of, helm, http_status,
    kubectl_apply, kubectl_apply_all_ok, loadtest, loadtests, phase, status_of, wait_phase,
    wait_workers_gone, worker_pods,
};
use pacer_tests::kube::{Cluster, eventually};
use pacer_tests::{RedisServer, plain_mock_config, start_mock, workspace_root};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The chart's ServiceAccount, as the API server names it.
const OPERATOR_USER: &str = "system:serviceaccount:pacer-system:pacer";

static INSTALL: OnceCell<Installed> = OnceCell::const_new();

/// The chart installed once per test binary: the first test to ask installs it (`helm install
/// --wait`), checks the CRD is established and waits for the operator's `/readyz`.
async fn installed() -> &'static Installed {
    INSTALL
        .get_or_init(|| {
            Install::chart()
                // One replica: pods share the host's network here, and a second would collide
                // on the metrics port (tests/tests/k8s_leader.rs runs two).
                .set("controller.replicas=1")
                // The unstartable-image test names an image of this (nonexistent) registry.
                .set("worker.allowedImages={registry.example/no-such-image:*}")
                .run()
        })
        .await
}

/// A plan of `GET /api/v2/users/me` against `target`.
fn users_me_plan(name: &str, target: &str, scenario: Value) -> Value {
    let mut scenario = scenario;
    scenario["name"] = json!("me");
    scenario["requests"] = json!([{ "name": "me", "method": "GET", "path": "/api/v2/users/me" }]);
    json!({ "name": name, "target": target, "scenarios": [scenario] })
}

/// The keys of a Redis.
fn redis_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .command(&["KEYS", "*"])
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The LISTEN sockets on `port` in /proc/net/tcp and tcp6: their local addresses, in hex.
fn listeners(port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let mut fields = l.split_whitespace();
                    let local = fields.nth(1)?;
                    let state = fields.nth(1)?;
                    let (addr, p) = local.rsplit_once(':')?;
                    (p == port && state == "0A").then(|| addr.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn helm_install_runs_the_operator_as_its_service_account_and_a_loadtest() {
    let install = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();

    // the operator runs as the chart's ServiceAccount, and is ready
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let operator = pods.get(&install.operator).await.unwrap();
    assert_eq!(
        operator.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let sa = operator.spec.as_ref().unwrap().service_account_name.clone();
    // TLS is on by default: the operator serves the chart's certificate from its mounted Secret
    let args = operator.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(
        args.contains(&"--tls-cert=/etc/pacer/tls/tls.crt".to_string()),
        "{args:?}"
    );
    assert_eq!(sa.as_deref(), Some("pacer"));
    assert_eq!(http_status(install.metrics, "/readyz").await, Some(200));
    // the kubeconfig the kubelet gave the process holds a token of that ServiceAccount
    let pod_kubeconfig = cluster
        .kubelet()
        .unwrap()
        .log_path(RELEASE_NS, &install.operator)
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
    assert_eq!(String::from_utf8_lossy(&whoami.stdout), OPERATOR_USER);

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
    let status = wait_phase(
        &tests,
        "smoke",
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        phase(&status),
        "Succeeded",
        "status: {status:#}\noperator log:\n{}\n{}",
        install.operator_log(),
        cluster.diagnostics()
    );
    assert!(
        !install.operator_log().to_lowercase().contains("forbidden"),
        "the chart's RBAC is enough:\n{}",
        install.operator_log()
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

/// `helm upgrade` keeps the chart's generated CA and certificate: the installed Secret is
/// looked up and reused (workers of a running test keep trusting the controller), which a
/// server-side dry run of an upgrade that changes another value shows.
#[tokio::test]
async fn helm_upgrade_keeps_the_generated_ca() {
    installed().await;
    let cluster = Cluster::shared();
    let installed_ca = cluster
        .kubectl_ok(&[
            "get",
            "secret",
            "-n",
            RELEASE_NS,
            "pacer-tls",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .await
        .unwrap();
    assert!(installed_ca.len() > 100, "{installed_ca}");
    let chart = workspace_root().join("charts").join("pacer");
    let out = helm(
        cluster,
        &[
            "upgrade",
            "pacer",
            chart.to_str().unwrap(),
            "-n",
            RELEASE_NS,
            "--reuse-values",
            "--set",
            "controller.statusInterval=3s",
            "--dry-run=server",
        ],
    )
    .await;
    let manifest = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm upgrade --dry-run=server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(manifest.contains("--status-interval=3s"), "{manifest}");
    assert!(
        manifest.contains(&format!("ca.crt: {installed_ca}")),
        "the upgrade keeps the installed CA"
    );
}

/// `controller.listenHost`: the chart renders it into both listen flags (default 0.0.0.0, an
/// IPv6 address in brackets), and the installed operator (listenHost 127.0.0.1) listens on
/// loopback only.
#[tokio::test]
async fn the_operator_listens_on_the_configured_host() {
    let chart = workspace_root().join("charts").join("pacer");
    let template = |sets: &'static [&'static str]| {
        let chart = chart.clone();
        async move {
            let mut args = vec!["template", "pacer", chart.to_str().unwrap()];
            for s in sets {
                args.extend(["--set", s]);
            }
            helm(Cluster::shared(), &args).await
        }
    };
    let render = |sets: &'static [&'static str]| async move {
        let out = template(sets).await;
        assert!(
            out.status.success(),
            "helm template {sets:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("-listen="))
            .map(|l| l.trim_start_matches("- ").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        render(&[]).await,
        ["--grpc-listen=0.0.0.0:7700", "--http-listen=0.0.0.0:9090"]
    );
    assert_eq!(
        render(&["controller.listenHost=127.0.0.1"]).await,
        [
            "--grpc-listen=127.0.0.1:7700",
            "--http-listen=127.0.0.1:9090"
        ]
    );
    assert_eq!(
        render(&["controller.listenHost=::"]).await,
        ["--grpc-listen=[::]:7700", "--http-listen=[::]:9090"]
    );
    // values.schema.json refuses a host name (the flags take an IP address)
    let out = template(&["controller.listenHost=pacer.example"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listenHost"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let install = installed().await;
    let operator_args = Cluster::shared()
        .kubectl_ok(&[
            "get",
            "pod",
            "-n",
            RELEASE_NS,
            &install.operator,
            "-o",
            "jsonpath={.spec.containers[0].args}",
        ])
        .await
        .unwrap();
    assert!(
        operator_args.contains(&format!("--grpc-listen=127.0.0.1:{}", install.grpc)),
        "{operator_args}"
    );
    for port in [install.grpc, install.metrics] {
        // 0100007F is 127.0.0.1 as /proc/net/tcp writes it
        assert_eq!(listeners(port), ["0100007F"], "listeners on port {port}");
    }
}

/// `kubectl apply` refuses a LoadTest whose fields the CRD's schema rejects, naming the field:
/// a number out of range, a wrong type, a pattern, an enum inside the plan, an unknown field.
#[tokio::test]
async fn kubectl_apply_refuses_invalid_loadtests_naming_the_field() {
    installed().await;
    let cluster = Cluster::shared();
    let ns = "e2e-invalid";
    cluster.create_namespace(ns).await.unwrap();
    let plan = users_me_plan(
        "invalid",
        "http://127.0.0.1:9",
        json!({ "executor": "constant-vus", "vus": 1, "duration": "1s" }),
    );
    let base = json!({ "workers": 1, "plan": plan });
    let with = |parent: &str, key: &str, value: Value| {
        let mut spec = base.clone();
        spec.pointer_mut(parent).unwrap()[key] = value;
        spec
    };
    let cases = [
        (
            "out-of-range",
            with("", "workers", json!(0)),
            vec!["spec.workers", "greater than or equal to 1"],
        ),
        (
            "wrong-type",
            with("", "workers", json!("three")),
            vec!["spec.workers", "integer"],
        ),
        (
            "bad-duration",
            with("", "startTimeout", json!("soon")),
            vec!["spec.startTimeout"],
        ),
        (
            "bad-executor",
            with("/plan/scenarios/0", "executor", json!("warp-speed")),
            vec!["spec.plan.scenarios[0].executor", "warp-speed"],
        ),
        (
            "unknown-field",
            with("", "wrokers", json!(2)),
            vec!["unknown field", "spec.wrokers"],
        ),
        // Numbers no test needs (issue 15): refused before the operator sees them.
        (
            "huge-vus",
            with("/plan/scenarios/0", "vus", json!(4_294_967_295u64)),
            vec!["spec.plan.scenarios[0].vus", "less than or equal to"],
        ),
        (
            "huge-duration",
            with(
                "/plan/scenarios/0",
                "duration",
                json!("18446744073709551615s"),
            ),
            vec!["spec.plan.scenarios[0].duration"],
        ),
        (
            "huge-start-timeout",
            with("", "startTimeout", json!("18446744073709551615s")),
            vec!["spec.startTimeout"],
        ),
    ];
    for (name, spec, expected) in cases {
        let out = kubectl_apply(ns, &[loadtest(name, spec)]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: kubectl apply accepted it");
        for e in expected {
            assert!(
                stderr.contains(e),
                "{name}: {e:?} not in kubectl's error: {stderr}"
            );
        }
        let get = cluster
            .kubectl(&["get", "lt", "-n", ns, name])
            .await
            .unwrap();
        assert!(!get.status.success(), "{name} was stored");
    }
}

/// The chart's RBAC, as the API server decides it for the operator's ServiceAccount: what the
/// operator does is allowed, reading Secrets is not (credentials reach the workers through
/// `secretKeyRef`), nor anything it does not do.
#[tokio::test]
async fn the_operator_service_account_may_do_what_it_needs_and_never_read_secrets() {
    installed().await;
    let cluster = Cluster::shared();
    let ns = "e2e-rbac";
    cluster.create_namespace(ns).await.unwrap();
    let can = |verb: &'static str, resource: &'static str, sub: Option<&'static str>| async move {
        let mut args = vec![
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            ns,
            "--as",
            OPERATOR_USER,
        ];
        if let Some(s) = sub {
            args.extend(["--subresource", s]);
        }
        let out = Cluster::shared().kubectl(&args).await.unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            answer == "yes" || answer == "no",
            "kubectl auth can-i {verb} {resource}: {answer:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answer == "yes"
    };
    let allowed = [
        ("get", "loadtests.pacer.dev", None),
        ("list", "loadtests.pacer.dev", None),
        ("watch", "loadtests.pacer.dev", None),
        ("patch", "loadtests.pacer.dev", None),
        ("delete", "loadtests.pacer.dev", None),
        ("patch", "loadtests.pacer.dev", Some("status")),
        ("update", "loadtests.pacer.dev", Some("finalizers")),
        // RateBudgets: read, their status written, their finalizer
        ("get", "ratebudgets.pacer.dev", None),
        ("list", "ratebudgets.pacer.dev", None),
        ("watch", "ratebudgets.pacer.dev", None),
        ("patch", "ratebudgets.pacer.dev", None),
        ("patch", "ratebudgets.pacer.dev", Some("status")),
        ("update", "ratebudgets.pacer.dev", Some("finalizers")),
        ("create", "jobs.batch", None),
        ("delete", "jobs.batch", None),
        ("create", "secrets", None),
        ("delete", "secrets", None),
        ("get", "configmaps", None),
        ("create", "configmaps", None),
        ("patch", "configmaps", None),
        ("list", "pods", None),
        ("create", "events.events.k8s.io", None),
        ("patch", "events.events.k8s.io", None),
    ];
    for (verb, resource, sub) in allowed {
        assert!(
            can(verb, resource, sub).await,
            "the operator may not {verb} {resource} {sub:?}"
        );
    }
    let denied = [
        ("get", "secrets", None),
        ("list", "secrets", None),
        ("watch", "secrets", None),
        ("update", "secrets", None),
        ("patch", "secrets", None),
        // a RateBudget is the user's: the operator neither makes nor deletes one
        ("create", "ratebudgets.pacer.dev", None),
        ("delete", "ratebudgets.pacer.dev", None),
        // the Job controller makes the pods; the operator only reads their statuses
        ("create", "pods", None),
        ("delete", "pods", None),
        ("get", "pods", Some("log")),
        ("create", "pods", Some("exec")),
        ("create", "services", None),
        ("update", "loadtests.pacer.dev", None),
        ("create", "loadtests.pacer.dev", None),
        ("create", "roles.rbac.authorization.k8s.io", None),
        ("*", "*", None),
    ];
    for (verb, resource, sub) in denied {
        assert!(
            !can(verb, resource, sub).await,
            "the operator may {verb} {resource} {sub:?}"
        );
    }
    // and with its own token, as the operator's process has it
    let kubeconfig = cluster
        .service_account_kubeconfig(RELEASE_NS, "pacer")
        .await
        .unwrap();
    let out = cluster
        .kubectl_as(&kubeconfig, &["get", "secrets", "-n", ns])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl patch … suspend: true` mid-run: the workers stop, the test ends Aborted (well
/// before the plan's end) and the Job, the worker pods (their processes too) and the session
/// Secret are deleted.
#[tokio::test]
async fn suspend_mid_run_ends_aborted_with_the_workers_gone() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-suspend";
    cluster.create_namespace(ns).await.unwrap();
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(20),
    }))
    .await;
    let plan = users_me_plan(
        "suspend",
        &format!("http://{}", mock.addr()),
        json!({ "executor": "constant-vus", "vus": 2, "duration": "60s", "gracefulStop": "1s" }),
    );
    kubectl_apply_all_ok(
        ns,
        &[loadtest(
            "suspend",
            json!({ "workers": 2, "startTimeout": "60s", "plan": plan }),
        )],
    )
    .await;
    let tests = loadtests(client.clone(), ns);
    wait_phase(&tests, "suspend", &["Running"], Duration::from_secs(120)).await;
    let pids = eventually(
        Duration::from_secs(30),
        "requests flowing from both worker processes",
        || async {
            let s = status_of(&tests, "suspend").await?;
            if s["requests"].as_u64()? == 0 {
                return None;
            }
            let pids: Vec<u32> = worker_pods(&client, ns, "suspend")
                .await
                .into_iter()
                .filter_map(|(_, pid)| pid)
                .collect();
            (pids.len() == 2).then_some(pids)
        },
    )
    .await;

    let patched = Instant::now();
    cluster
        .kubectl_ok(&[
            "patch",
            "lt",
            "suspend",
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ])
        .await
        .unwrap();
    let status = wait_phase(
        &tests,
        "suspend",
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(phase(&status), "Aborted", "{status:#}");
    assert!(
        patched.elapsed() < Duration::from_secs(30),
        "Aborted {:?} after the patch: the plan ran on",
        patched.elapsed()
    );
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("suspend"), "{message}");
    eprintln!(
        "suspend: Aborted {:?} after the patch: {message}",
        patched.elapsed()
    );
    assert!(status["requests"].as_u64().unwrap() > 0, "{status:#}");
    wait_workers_gone(&client, ns, "suspend", &pids).await;
    // nothing sends any more
    let served = mock.stats().requests.total;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mock.stats().requests.total, served);
    let events = events_of(ns, "suspend").await;
    assert!(
        events.iter().any(|e| e.type_ == "Warning"
            && e.reason == "Aborted"
            && e.message.contains("suspend")),
        "{events:?}"
    );
    mock.shutdown().await;
}

/// Deleting a running LoadTest: it goes away once the operator stopped its workers, and with
/// it the Job, the worker pods (their processes), the session Secret and the fleet's keys in
/// Redis.
#[tokio::test]
async fn deleting_a_running_loadtest_removes_its_workers_secret_and_redis_keys() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-delete";
    cluster.create_namespace(ns).await.unwrap();
    let redis = RedisServer::start();
    let mock = start_mock(plain_mock_config(LatencyConfig::Fixed {
        value: Duration::from_millis(20),
    }))
    .await;
    let mut plan = users_me_plan(
        "delete",
        &format!("http://{}", mock.addr()),
        json!({ "executor": "constant-vus", "vus": 2, "duration": "60s", "gracefulStop": "1s" }),
    );
    plan["limits"] = json!([{ "name": "budget", "limit": "20/s", "burst": 2, "scope": "fleet" }]);
    kubectl_apply_all_ok(
        ns,
        &[loadtest(
            "delete",
            json!({
                "workers": 2,
                "startTimeout": "60s",
                "redis": { "url": redis.url() },
                "plan": plan,
            }),
        )],
    )
    .await;
    let tests = loadtests(client.clone(), ns);
    wait_phase(&tests, "delete", &["Running"], Duration::from_secs(120)).await;
    let pids = eventually(
        Duration::from_secs(30),
        "requests flowing from both worker processes",
        || async {
            let s = status_of(&tests, "delete").await?;
            if s["requests"].as_u64()? == 0 {
                return None;
            }
            let pids: Vec<u32> = worker_pods(&client, ns, "delete")
                .await
                .into_iter()
                .filter_map(|(_, pid)| pid)
                .collect();
            (pids.len() == 2).then_some(pids)
        },
    )
    .await;
    // the workers share the `scope: fleet` budget through Redis: the test has keys there
    let keys_while_running = redis_keys(&redis);
    assert!(
        !keys_while_running.is_empty(),
        "no key in Redis while the test ran"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let session = secrets
        .list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}=delete")))
        .await
        .unwrap()
        .items;
    assert_eq!(session.len(), 1, "the session Secret while it runs");

    cluster
        .kubectl_ok(&["delete", "lt", "delete", "-n", ns, "--timeout=50s"])
        .await
        .unwrap();
    assert!(tests.get_opt("delete").await.unwrap().is_none());
    wait_workers_gone(&client, ns, "delete", &pids).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    assert!(
        cms.list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}=delete")))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    eventually(
        Duration::from_secs(30),
        "the test's Redis keys deleted",
        || async { redis_keys(&redis).is_empty().then_some(()) },
    )
    .await;
    eprintln!(
        "deleting a running LoadTest: Redis keys while it ran: {keys_while_running:?}; none left"
    );
    mock.shutdown().await;
}

/// Two LoadTests in one `kubectl apply` run side by side, each against its own mock, and each
/// ends Succeeded with its own numbers: exactly its plan's arrivals, as its mock counted them.
#[tokio::test]
async fn two_loadtests_run_side_by_side_with_their_own_numbers() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-pair";
    cluster.create_namespace(ns).await.unwrap();
    let latency = LatencyConfig::Fixed {
        value: Duration::from_millis(10),
    };
    let mock_a = start_mock(plain_mock_config(latency.clone())).await;
    let mock_b = start_mock(plain_mock_config(latency)).await;
    // constant-arrival-rate: exactly rate × duration iterations, split exactly between workers
    let spec = |name: &str, target: String, rate: &str| {
        json!({
            "workers": 2,
            "startTimeout": "60s",
            "plan": users_me_plan(
                name,
                &target,
                json!({ "executor": "constant-arrival-rate", "rate": rate, "duration": "8s" }),
            ),
        })
    };
    kubectl_apply_all_ok(
        ns,
        &[
            loadtest(
                "pair-a",
                spec("pair-a", format!("http://{}", mock_a.addr()), "5/s"),
            ),
            loadtest(
                "pair-b",
                spec("pair-b", format!("http://{}", mock_b.addr()), "8/s"),
            ),
        ],
    )
    .await;
    let tests = loadtests(client.clone(), ns);
    let started = Instant::now();
    let mut both_running = false;
    let mut ended: [Option<Value>; 2] = [None, None];
    while ended.iter().any(Option::is_none) {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the pair did not end: {ended:?}\n{}",
            cluster.diagnostics()
        );
        let a = status_of(&tests, "pair-a").await.unwrap_or_default();
        let b = status_of(&tests, "pair-b").await.unwrap_or_default();
        both_running |= phase(&a) == "Running" && phase(&b) == "Running";
        for (i, s) in [a, b].into_iter().enumerate() {
            if ["Succeeded", "Failed", "Aborted"].contains(&phase(&s)) {
                ended[i] = Some(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(both_running, "the two tests never ran at the same time");
    let [Some(a), Some(b)] = ended else {
        unreachable!()
    };
    assert_ne!(a["testId"], b["testId"]);
    for (status, mock, expected) in [(a, &mock_a, 40u64), (b, &mock_b, 64u64)] {
        assert_eq!(phase(&status), "Succeeded", "{status:#}");
        assert_eq!(status["requests"], expected, "{status:#}");
        let served = mock.stats().requests.by_route["GET /api/v2/users/me"];
        assert_eq!(served, expected, "what the mock served");
        let per_worker: u64 = status["workerHealth"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(per_worker, expected, "{status:#}");
        assert_eq!(status["workers"]["ready"], "2/2", "{status:#}");
    }
    mock_a.shutdown().await;
    mock_b.shutdown().await;
}

/// The installed operator holds LoadTests to the chart's allow-lists: an image off
/// `worker.allowedImages` and a ServiceAccount off `worker.allowedServiceAccounts` end Failed
/// with both fields named, and no worker pod is created.
#[tokio::test]
async fn an_image_off_the_allow_list_is_refused_by_the_installed_operator() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-allowlist";
    cluster.create_namespace(ns).await.unwrap();
    let plan = users_me_plan(
        "offlist",
        "http://127.0.0.1:9",
        json!({ "executor": "constant-vus", "vus": 1, "duration": "2s" }),
    );
    kubectl_apply_all_ok(
        ns,
        &[loadtest(
            "offlist",
            json!({
                "workers": 1,
                "image": "attacker.example/shell:latest",
                "workerTemplate": { "serviceAccountName": "default" },
                "plan": plan,
            }),
        )],
    )
    .await;
    let tests = loadtests(client.clone(), ns);
    let status = wait_phase(
        &tests,
        "offlist",
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(phase(&status), "Failed", "{status:#}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.image"), "{message}");
    assert!(
        message.contains("spec.workerTemplate.serviceAccountName"),
        "{message}"
    );
    assert!(worker_pods(&client, ns, "offlist").await.is_empty());
}

/// A LoadTest whose plan reads a file (the plain and the escaped-then-concatenated forms):
/// the installed operator refuses it naming the field and the reference, and the file's
/// canary appears in neither the status nor the Events.
#[tokio::test]
async fn a_loadtest_reading_a_file_fails_and_the_canary_appears_nowhere() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-file-ref";
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let canary = "CANARY-e2e-9d2c41";
    let file = dir.path().join("token");
    std::fs::write(&file, canary).unwrap();
    let file = file.to_str().unwrap();
    let tests = loadtests(client.clone(), ns);
    for (name, target) in [
        ("file-plain", format!("${{file:{file}}}")),
        ("file-escaped", format!("$${{file:a}}${{file:{file}}}")),
    ] {
        let plan = users_me_plan(
            name,
            &target,
            json!({ "executor": "constant-vus", "vus": 1, "duration": "1s" }),
        );
        kubectl_apply_all_ok(ns, &[loadtest(name, json!({ "workers": 1, "plan": plan }))]).await;
        let status = wait_phase(
            &tests,
            name,
            &["Succeeded", "Failed", "Aborted"],
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(phase(&status), "Failed", "{status:#}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("spec.plan.target")
                && message.contains("cannot be used in a LoadTest"),
            "{message}"
        );
        assert!(!status.to_string().contains(canary), "{status:#}");
        let events = eventually(Duration::from_secs(30), "the InvalidSpec event", || async {
            let ev = events_of(ns, name).await;
            ev.iter().any(|e| e.reason == "InvalidSpec").then_some(ev)
        })
        .await;
        for e in &events {
            assert!(!e.message.contains(canary), "{}", e.message);
        }
        assert!(worker_pods(&client, ns, name).await.is_empty());
    }
}

/// A worker pod that cannot start (an image the kubelet cannot run): the test ends Failed when
/// `startTimeout` passes, and the status and an Event name the pod and say why.
#[tokio::test]
async fn a_worker_pod_that_cannot_start_fails_the_test_naming_the_pod() {
    installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-badpod";
    cluster.create_namespace(ns).await.unwrap();
    let plan = users_me_plan(
        "badpod",
        "http://127.0.0.1:9",
        json!({ "executor": "constant-vus", "vus": 1, "duration": "2s" }),
    );
    kubectl_apply_all_ok(
        ns,
        &[loadtest(
            "badpod",
            json!({
                "workers": 1,
                "startTimeout": "10s",
                "image": "registry.example/no-such-image:1.0",
                "plan": plan,
            }),
        )],
    )
    .await;
    let tests = loadtests(client.clone(), ns);
    let status = wait_phase(
        &tests,
        "badpod",
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(phase(&status), "Failed", "{status:#}");
    let pods: Vec<String> = worker_pods(&client, ns, "badpod")
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(!pods.is_empty(), "a failed test keeps its pods");
    let message = status["message"].as_str().unwrap_or_default().to_string();
    let names_a_pod = |m: &str| pods.iter().any(|p| m.contains(&format!("(pod {p})")));
    assert!(names_a_pod(&message), "{message} names none of {pods:?}");
    assert!(message.contains("no-such-image"), "the reason: {message}");
    eprintln!("a worker pod that cannot start: {message}");
    let events = events_of(ns, "badpod").await;
    assert!(
        events.iter().any(|e| e.type_ == "Warning"
            && e.reason == "WorkersMissing"
            && names_a_pod(&e.message)
            && e.message.contains("no-such-image")),
        "{events:?}"
    );
}

/// The user story (examples/loadtest-user-story.yaml) as a user runs it: `kubectl apply` of
/// the example, pointed at `pacer mock` on loopback and a redis-server on loopback for the
/// fleet's budget, the OAuth2 client from a Secret, 3 workers. It goes Pending → Running →
/// Succeeded; `kubectl get lt` fills every printer column; the status has RPS, p95, 429s and
/// the thresholds; the report ConfigMap exists; the Events tell the story; the mock served
/// exactly the requests the status counts, with tokens of the Secret's client; the workers
/// shared the budget through Redis.
#[tokio::test]
async fn the_user_story_runs_to_succeeded_as_kubectl_shows_it() {
    let install = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-user-story";
    let name = "analytics-details-query";
    cluster.create_namespace(ns).await.unwrap();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start_plain(
        &dir.path().join("mock.log"),
        &["--client", "genesys-e2e:e2e-secret:demo-org"],
    );
    eventually(Duration::from_secs(30), "pacer mock answers", || async {
        (http_status(mock.port, "/_mock/stats").await == Some(200)).then_some(())
    })
    .await;
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "genesys-client",
            "-n",
            ns,
            "--from-literal=clientId=genesys-e2e",
            "--from-literal=clientSecret=e2e-secret",
        ])
        .await
        .unwrap();

    // the example, pointed at loopback; 10 s instead of 20 s
    let example =
        std::fs::read_to_string(workspace_root().join("examples/loadtest-user-story.yaml"))
            .unwrap();
    let mut lt: Value = serde_saphyr::from_str(&example).unwrap();
    assert_eq!(lt["metadata"]["name"], name);
    assert_eq!(lt["spec"]["workers"], 3);
    let env = lt["spec"]["workerTemplate"]["env"].as_array_mut().unwrap();
    let target = env.iter_mut().find(|e| e["name"] == "TARGET").unwrap();
    target["value"] = json!(mock.url());
    lt["spec"]["redis"] = json!({ "url": redis.url() });
    lt["spec"]["plan"]["duration"] = json!("10s");
    let fleet_limits = lt["spec"]["plan"]["limits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["scope"] == "fleet")
        .count();
    assert_eq!(
        fleet_limits, 1,
        "the example's per-token budget is the fleet's"
    );
    kubectl_apply_all_ok(ns, &[lt]).await;

    // follow it as `kubectl get lt -w` would: every phase, the columns and Redis while it runs
    let tests = loadtests(client.clone(), ns);
    let started = Instant::now();
    let mut phases: Vec<String> = Vec::new();
    let mut rps_seen = 0.0f64;
    let mut redis_keys_seen: Vec<String> = Vec::new();
    let mut pids: Vec<u32> = Vec::new();
    let status = loop {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the user story did not end; phases {phases:?}\noperator log:\n{}\n{}",
            install.operator_log(),
            cluster.diagnostics()
        );
        let Some(s) = status_of(&tests, name).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let p = match phase(&s) {
            "" => "Pending".to_string(),
            p => p.to_string(),
        };
        if phases.last() != Some(&p) {
            phases.push(p.clone());
        }
        if p == "Running" {
            rps_seen = rps_seen.max(s["rps"].as_f64().unwrap_or(0.0));
            if redis_keys_seen.is_empty() {
                redis_keys_seen = redis_keys(&redis);
            }
            for (_, pid) in worker_pods(&client, ns, name).await {
                if let Some(pid) = pid
                    && !pids.contains(&pid)
                {
                    pids.push(pid);
                }
            }
        }
        if ["Succeeded", "Failed", "Aborted"].contains(&p.as_str()) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        phase(&status),
        "Succeeded",
        "{status:#}\noperator log:\n{}",
        install.operator_log()
    );
    // Pending (accepted, no status yet) → Starting → Running → Succeeded, never backwards
    let order = ["Pending", "Starting", "Running", "Succeeded"];
    let ranks: Vec<usize> = phases
        .iter()
        .map(|p| order.iter().position(|o| o == p).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{phases:?}");
    eprintln!(
        "user story: phases {phases:?}, {} requests",
        status["requests"]
    );
    assert!(phases.contains(&"Running".to_string()), "{phases:?}");
    assert!(rps_seen > 0.0, "no RPS while it ran");
    assert_eq!(pids.len(), 3, "three worker processes");

    // `kubectl get lt`: every printer column filled
    let table = cluster
        .kubectl_ok(&["get", "lt", name, "-n", ns])
        .await
        .unwrap();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PHASE", "WORKERS", "RPS", "P95", "ERRORS", "429S", "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row.len(), header.len(), "{table}");
    assert!(!row.contains(&"<none>"), "{table}");
    assert_eq!(&row[..3], [name, "Succeeded", "3/3"], "{table}");
    assert!(row[3].parse::<f64>().is_ok(), "RPS {table}");
    assert!(row[4].ends_with("ms"), "P95 {table}");
    assert_eq!(&row[5..7], ["0", "0"], "errors and 429s {table}");

    // the status: RPS, p95, 429s, thresholds (each passed, with its observed value)
    assert!(status["rps"].is_number(), "{status:#}");
    assert!(
        status["latency"]["p95"]
            .as_str()
            .is_some_and(|p| p.ends_with("ms")),
        "{status:#}"
    );
    assert_eq!(status["throttled"], 0, "{status:#}");
    assert_eq!(status["errors"], 0, "{status:#}");
    let thresholds = status["thresholds"].as_array().unwrap();
    let mut metrics: Vec<&str> = thresholds
        .iter()
        .map(|t| t["metric"].as_str().unwrap())
        .collect();
    metrics.sort_unstable();
    assert_eq!(
        metrics,
        [
            "http_req_failed",
            "http_req_service_time",
            "http_reqs_throttled"
        ]
    );
    assert!(
        thresholds
            .iter()
            .all(|t| t["passed"] == true && t["observed"].is_number()),
        "{status:#}"
    );
    let requests = status["requests"].as_u64().unwrap();
    assert!(requests > 0);
    let health = status["workerHealth"].as_array().unwrap();
    assert_eq!(health.len(), 3, "{status:#}");
    assert_eq!(
        health
            .iter()
            .map(|w| w["requests"].as_u64().unwrap())
            .sum::<u64>(),
        requests
    );

    // the mock served exactly those requests, authenticated with the Secret's client
    let stats = mock.stats().await;
    assert_eq!(
        stats["requests"]["byRoute"]["POST /api/v2/analytics/conversations/details/query"],
        requests,
        "the mock's count against the status's: {:#}",
        stats["requests"]
    );
    // the workers asked for tokens with the Secret's client (the fleet may share one)
    let tokens = stats["tokens"]["byClient"]["genesys-e2e"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        tokens >= 1,
        "tokens of the Secret's client: {:#}",
        stats["tokens"]
    );
    assert_eq!(stats["tokens"]["invalidClient"], 0);
    assert_eq!(stats["auth"]["missing"], 0);

    // the report ConfigMap
    assert_eq!(status["report"]["configMap"], format!("{name}-report"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let report = cms.get(&format!("{name}-report")).await.unwrap();
    let data = report.data.unwrap();
    assert!(
        data["summary.txt"].contains(name),
        "{}",
        data["summary.txt"]
    );
    let summary: Value = serde_json::from_str(&data["summary.json"]).unwrap();
    assert!(summary.is_object());

    // the Events tell the story, in order
    let events = events_of(ns, name).await;
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    let story = ["Starting", "Running", "Succeeded"];
    let at: Vec<usize> = story
        .iter()
        .map(|r| {
            reasons
                .iter()
                .position(|x| x == r)
                .unwrap_or_else(|| panic!("no {r} event: {events:?}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{events:?}");
    assert!(events.iter().all(|e| e.type_ == "Normal"), "{events:?}");

    // onSuccess: the workers and the session Secret are gone
    wait_workers_gone(&client, ns, name, &pids).await;

    // the fleet's budget lived in Redis while it ran
    assert!(
        !redis_keys_seen.is_empty(),
        "no key in the fleet's Redis while the test ran: the workers did not share the \
         `scope: fleet` budget through it"
    );
}

/// Issue 19's RateBudget on a real API server: examples/ratebudget.yaml and the two LoadTests
/// of examples/loadtest-budget-*.yaml (pointed at an in-process mock whose limit is
/// organisation-wide, 50 per 5 s, and at a loopback redis-server), each offering far more than
/// the limit alone. `kubectl get ratebudgets` shows the rate and both tests while they run (the
/// printer columns, read through the API server's table), the budget's status lists them with
/// their shares, and no 5 s window of the mock is over the limit. Then a forced 429 (Retry-After
/// 8 s): the budget's status shows the pause in force and the last 429 with its limit.
#[tokio::test]
async fn two_loadtests_share_one_ratebudget_as_kubectl_shows_it() {
    const LIMIT: u64 = 50;
    let install = installed().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-budget";
    cluster.create_namespace(ns).await.unwrap();
    let redis = RedisServer::start();
    let mock = start_mock(pacer_mock::MockConfig {
        auth: pacer_mock::AuthMode::Required,
        limits: vec![pacer_mock::LimitConfig {
            name: "per-org".into(),
            key: pacer_mock::LimitKey::Org,
            limit: LIMIT,
            window: Duration::from_secs(5),
            methods: None,
            path_prefix: None,
            algorithm: pacer_mock::Algorithm::Sliding,
            ..pacer_mock::LimitConfig::default()
        }],
        latency: LatencyConfig::Fixed {
            value: Duration::from_millis(2),
        },
        ..pacer_mock::MockConfig::default()
    })
    .await;
    // The mock's default client.
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "genesys-client",
            "-n",
            ns,
            "--from-literal=clientId=pacer-demo",
            "--from-literal=clientSecret=demo-secret",
        ])
        .await
        .unwrap();
    let read = |name: &str| -> Value {
        serde_saphyr::from_str(
            &std::fs::read_to_string(workspace_root().join("examples").join(name)).unwrap(),
        )
        .unwrap()
    };
    let mut budget = read("ratebudget.yaml");
    budget["spec"]["limits"][0]["limit"] = json!(format!("{LIMIT}/5s"));
    budget["spec"]["redis"] = json!({ "url": redis.url() });
    budget["spec"]["idleExpiry"] = json!("30s");
    let names = ["budget-checkout", "budget-search"];
    let tests_manifests: Vec<Value> = names
        .iter()
        .map(|n| {
            let mut lt = read(&format!("loadtest-{n}.yaml"));
            assert_eq!(lt["metadata"]["name"], *n);
            assert_eq!(lt["spec"]["budgetRef"]["name"], "acme-api");
            lt["spec"]["workers"] = json!(1);
            lt["spec"]["startTimeout"] = json!("60s");
            lt["spec"]["workerTemplate"]["env"][0]["value"] =
                json!(format!("http://{}", mock.addr()));
            lt["spec"]["plan"]["duration"] = json!("12s");
            // the forced 429 below is one of the requests: no threshold on 429s here
            lt["spec"]["plan"]
                .as_object_mut()
                .unwrap()
                .remove("thresholds");
            lt
        })
        .collect();
    kubectl_apply_all_ok(ns, &[budget]).await;
    kubectl_apply_all_ok(ns, &tests_manifests).await;

    let tests = loadtests(client.clone(), ns);
    let budgets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource {
            group: "pacer.dev".into(),
            version: "v1alpha1".into(),
            api_version: "pacer.dev/v1alpha1".into(),
            kind: "RateBudget".into(),
            plural: "ratebudgets".into(),
        },
    );
    let started = Instant::now();
    let mut ended: [Option<Value>; 2] = [None, None];
    let mut max_tests = 0;
    let mut table_while_running = String::new();
    let mut status_while_running = Value::Null;
    let mut forced = false;
    let mut status_paused = Value::Null;
    while ended.iter().any(Option::is_none) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the tests on the budget did not end: {ended:?}\noperator log:\n{}\n{}",
            install.operator_log(),
            cluster.diagnostics()
        );
        let rb = budgets
            .get_opt("acme-api")
            .await
            .ok()
            .flatten()
            .and_then(|o| o.data.get("status").cloned())
            .unwrap_or(Value::Null);
        let count = rb["testCount"].as_u64().unwrap_or(0);
        max_tests = max_tests.max(count);
        if forced
            && status_paused.is_null()
            && rb["pausedUntil"].is_string()
            && rb["last429"]["limits"] == "org"
        {
            status_paused = rb.clone();
        }
        if !forced && !status_while_running.is_null() {
            // the server refuses one request with Retry-After: 8 s
            mock.control().force_429(1, 8);
            forced = true;
        }
        let rate_read = rb["rate"].as_str().is_some_and(|r| r.contains(" per s"));
        if !forced && count == 2 && rate_read {
            // `kubectl get ratebudgets` now: kept when it shows both tests and a rate used
            // (before the forced 429 below)
            let table = cluster
                .kubectl_ok(&["get", "ratebudgets", "-n", ns])
                .await
                .unwrap();
            let rate = table_cell(&table, "RATE", "TESTS");
            let used = rate
                .split('/')
                .next()
                .and_then(|u| u.parse::<f64>().ok())
                .unwrap_or(0.0);
            let processes = table_cell(&table, "PROCESSES", "PAUSED")
                .parse::<u32>()
                .unwrap_or(0);
            if table_cell(&table, "TESTS", "PROCESSES") == "2" && used > 0.0 && processes >= 2 {
                status_while_running = rb.clone();
                table_while_running = table;
            }
        }
        for (i, n) in names.iter().enumerate() {
            let s = status_of(&tests, n).await.unwrap_or_default();
            if ["Succeeded", "Failed", "Aborted"].contains(&phase(&s)) {
                ended[i] = Some(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stats = mock.stats();
    let lim = &stats.limits[0];
    eprintln!(
        "RateBudget e2e: max offered in a 5 s window {} of {LIMIT}, accepted {}, rejected {}, \
         tokens issued {}\n{table_while_running}\nstatus: {status_while_running:#}",
        lim.max_offered_in_window, lim.accepted, lim.rejected, stats.tokens.issued
    );
    for s in ended.iter().flatten() {
        assert_eq!(phase(s), "Succeeded", "{s:#}\n{}", install.operator_log());
    }
    assert!(
        lim.max_offered_in_window <= LIMIT,
        "the budget's tests overran the limit: {} in a window",
        lim.max_offered_in_window
    );
    assert_eq!(max_tests, 2, "the budget never showed both tests running");
    // `kubectl get ratebudgets`: the columns, the rate and the tests
    let mut lines = table_while_running.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "RATE",
            "TESTS",
            "PROCESSES",
            "PAUSED",
            "UNTIL",
            "LAST",
            "429",
            "LEFT",
            "AGE"
        ],
        "{table_while_running}"
    );
    assert!(
        lines.next().unwrap_or_default().starts_with("acme-api "),
        "{table_while_running}"
    );
    let rate = table_cell(&table_while_running, "RATE", "TESTS");
    assert!(
        rate.ends_with("per s") || rate.contains(" per s ("),
        "the rate: {table_while_running}"
    );
    assert_eq!(table_cell(&table_while_running, "TESTS", "PROCESSES"), "2");
    // what the mock's rate-limit headers said is left, of its 50
    let left = table_cell(&table_while_running, "LEFT", "AGE");
    assert!(left.ends_with(" of 50 org"), "Left: {table_while_running}");
    let listed: Vec<&str> = status_while_running["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(listed, names, "{status_while_running:#}");
    // each with its share of the budget, from the budget's registry of tests (equal weights)
    for t in status_while_running["tests"].as_array().unwrap() {
        let share = t["share"].as_f64().unwrap_or(0.0);
        assert!((0.0..=1.0).contains(&share) && share > 0.0, "{t}");
        assert_eq!(t["weight"], 1.0, "{t}");
    }
    assert_eq!(status_while_running["budget"], "e2e-budget.acme-api");
    // after the forced 429: the pause in force and the last 429, with the limit it hit
    eprintln!("after a forced 429: {status_paused:#}");
    assert!(status_paused["pausedUntil"].is_string(), "no pause shown");
    assert_eq!(
        status_paused["last429"]["retryAfterSeconds"], 8.0,
        "{status_paused:#}"
    );
    assert!(
        status_paused["limits"][0]["pausedUntil"].is_string(),
        "{status_paused:#}"
    );
    assert!(
        status_while_running["processCount"].as_u64().unwrap_or(0) >= 2,
        "{status_while_running:#}"
    );
    mock.shutdown().await;
}

/// The cell of a `kubectl get` table's first row under `column` (up to the column `next`).
fn table_cell(table: &str, column: &str, next: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let (Some(from), Some(to)) = (header.find(column), header.find(next)) else {
        return String::new();
    };
    row.get(from..to.min(row.len()))
        .unwrap_or_default()
        .trim()
        .to_string()
}
