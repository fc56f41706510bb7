//! The reconciler against a mocked API server (tower-test), as kube-rs/controller-rs does it:
//! every request the operator makes is checked in order (method, path, what its body says)
//! and answered; the coordinator is the `FakeRunner`, whose runs the test drives.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use pacer_controller::WorkerState::{self, Finished, Lost, Ready, Running, Waiting};
use pacer_operator::crd::{FINALIZER, LoadTest, LoadTestStatus, Phase};
use pacer_operator::metrics::Metrics;
use pacer_operator::policy::WorkerPolicy;
use pacer_operator::runner::{FakeRun, FakeRunner, LiveStats, RunEnd, RunResult};
use pacer_operator::{Context, OperatorConfig, RedisSource, reconcile};
use pacer_stats::ThresholdResult;
use serde_json::{Value, json};

/// One request the operator must make next, and the answer.
struct Step {
    method: Method,
    /// The request path (without the query) must end with this.
    path: String,
    status: u16,
    reply: Value,
}

fn step(method: Method, path: &str, status: u16, reply: Value) -> Step {
    Step {
        method,
        path: path.to_string(),
        status,
        reply,
    }
}

const NS_PATH: &str = "/namespaces/default";

fn ok_echo(method: Method, path: &str) -> Step {
    if method == Method::DELETE {
        return step(
            method,
            path,
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        );
    }
    // `reply: Null` means: answer with the request's own body.
    step(method, path, 200, Value::Null)
}

/// A PATCH of the LoadTest (or its status): the API server answers with the object.
fn loadtest_patch(name: &str, subresource: &str) -> Step {
    step(
        Method::PATCH,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/{name}{subresource}"),
        200,
        serde_json::to_value(loadtest(name)).expect("json"),
    )
}

fn status_patch(name: &str) -> Step {
    loadtest_patch(name, "/status")
}

fn event_post() -> Step {
    ok_echo(
        Method::POST,
        &format!("/apis/events.k8s.io/v1{NS_PATH}/events"),
    )
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

/// The mocked API server: answers `steps` in order, returns what was sent (path, body).
fn api_server(steps: Vec<Step>) -> (Client, tokio::task::JoinHandle<Vec<(String, Value)>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, s) in steps.into_iter().enumerate() {
            let (request, send) =
                tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "step {i}: no request came: expected {} {}",
                            s.method, s.path
                        )
                    })
                    .unwrap_or_else(|| {
                        panic!(
                            "step {i}: the client went away: expected {} {}",
                            s.method, s.path
                        )
                    });
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            assert_eq!(
                method, s.method,
                "step {i}: {method} {path}?{query}, expected {} {}",
                s.method, s.path
            );
            assert!(
                path.ends_with(&s.path),
                "step {i}: {method} {path}, expected {} {}",
                s.method,
                s.path
            );
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            let reply = if s.reply.is_null() {
                body.clone()
            } else {
                s.reply.clone()
            };
            let mut reply = if reply.is_null() { json!({}) } else { reply };
            if reply.is_object() && reply.get("metadata").is_none() {
                reply["metadata"] = json!({"name": "echo"});
            }
            send.send_response(
                Response::builder()
                    .status(s.status)
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"),
            );
            seen.push((format!("{method} {path}?{query}"), body));
        }
        seen
    });
    (client, task)
}

fn plan() -> Value {
    json!({
        "name": "analytics",
        "target": "${env:TARGET}",
        "duration": "10s",
        "auth": [{
            "name": "genesys",
            "type": "oauth2-clientCredentials",
            "tokenUrl": "/oauth/token",
            "clientId": "${env:PACER_AUTH_GENESYS_CLIENT_ID}",
            "clientSecret": "${env:PACER_AUTH_GENESYS_CLIENT_SECRET}"
        }],
        "limits": [{"name": "per-token", "limit": "300/min", "burst": 5}],
        "scenarios": [{
            "name": "s",
            "executor": "constant-vus",
            "vus": 6,
            "auth": "genesys",
            "requests": [{"name": "q", "method": "POST", "path": "/query"}]
        }],
        "thresholds": {"http_req_failed": ["rate<0.01"]}
    })
}

fn loadtest(name: &str) -> LoadTest {
    serde_json::from_value(json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": "0a1b2c3d-0000-4000-8000-000000000001",
            "generation": 1,
            "finalizers": [FINALIZER],
        },
        "spec": {
            "workers": 3,
            "credentials": [{"name": "genesys", "secretRef": {
                "name": "genesys-client", "clientIdKey": "clientId", "clientSecretKey": "clientSecret"}}],
            "workerTemplate": {"env": [{"name": "TARGET", "value": "http://api.example:8080"}]},
            "startTimeout": "90s",
            "plan": plan(),
        }
    }))
    .expect("a LoadTest")
}

fn with_status(mut lt: LoadTest, status_body: &Value) -> LoadTest {
    let s: LoadTestStatus =
        serde_json::from_value(status_body["status"].clone()).expect("a LoadTest status");
    lt.status = Some(s);
    lt
}

/// `lt` as a test this operator started, now Running.
fn running(lt: LoadTest) -> LoadTest {
    with_status(
        lt,
        &json!({"status": {"phase": "Running", "testId": TEST_ID}}),
    )
}

/// The condition `type_` of a written status.
fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
}

fn context(client: Client, runner: FakeRunner) -> Arc<Context> {
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.status_interval = Duration::ZERO;
    Arc::new(Context::new(
        client,
        cfg,
        Arc::new(runner),
        Arc::new(Metrics::default()),
    ))
}

const TEST_ID: &str = "run1-0a1b2c3d";

fn starting_steps(name: &str) -> Vec<Step> {
    vec![
        // What a restarted operator resumes from, before any worker exists.
        status_patch(name),
        ok_echo(Method::POST, &format!("/api/v1{NS_PATH}/secrets")),
        ok_echo(Method::POST, &format!("/apis/batch/v1{NS_PATH}/jobs")),
        status_patch(name),
        event_post(),
    ]
}

fn workers(states: &[WorkerState]) -> Vec<pacer_controller::WorkerView> {
    states
        .iter()
        .enumerate()
        .map(|(i, s)| pacer_controller::WorkerView {
            index: i as u32,
            name: format!("run1-workers-{i}"),
            version: "0.1.0".into(),
            state: *s,
            weight: 1,
            http_reqs: 100,
            rate_per_sec: 10.0,
            errors: 0,
            throttled: 1,
            iterations: 100,
            reports: 3,
            reported_at_secs: 3.0,
            lost_at_secs: None,
            reason: None,
        })
        .collect()
}

fn running_stats() -> LiveStats {
    LiveStats {
        started: true,
        elapsed: Duration::from_secs(5),
        planned: Duration::from_secs(40),
        connected: 3,
        lost: 0,
        requests: 300,
        rps: 61.234,
        p50_ms: Some(12.0),
        p95_ms: Some(48.25),
        p99_ms: Some(90.0),
        errors: 2,
        error_rate: Some(0.00667),
        throttled: 3,
        throttled_secs: 1.5,
        thresholds: vec![ThresholdResult {
            key: "http_req_failed".into(),
            expr: "rate<0.01".into(),
            passed: true,
            outcome: pacer_stats::ThresholdOutcome::Passed,
            observed: Some(0.00667),
            abort_on_fail: false,
        }],
        workers: workers(&[Running, Running, Running]),
    }
}

fn result(passed: bool) -> RunEnd {
    let mut stats = running_stats();
    stats.workers = workers(&[Finished, Finished, Finished]);
    if !passed {
        stats.thresholds[0].passed = false;
        stats.thresholds[0].outcome = pacer_stats::ThresholdOutcome::Failed;
        stats.thresholds[0].observed = Some(0.2);
    }
    RunEnd::Finished(Box::new(RunResult {
        passed,
        abort_reason: None,
        failure: None,
        stop_reason: None,
        stats,
        text: "the summary".into(),
        json: "{\"passed\": true}".into(),
    }))
}

async fn finish(task: tokio::task::JoinHandle<Vec<(String, Value)>>) -> Vec<(String, Value)> {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the API server steps finished")
        .expect("the API server task")
}

/// Start a test (create); the run and the status it wrote.
async fn started(
    ctx: &Arc<Context>,
    runner: &FakeRunner,
    lt: LoadTest,
) -> (Arc<FakeRun>, LoadTest, Action) {
    let action = reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let run = runner.run(TEST_ID).expect("a run was started");
    (run, lt, action)
}

#[tokio::test]
async fn create_adds_the_finalizer_first() {
    let mut lt = loadtest("run1");
    lt.metadata.finalizers = None;
    let (client, server) = api_server(vec![loadtest_patch("run1", "")]);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let action = reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    assert_eq!(action, Action::await_change());
    let seen = finish(server).await;
    let patch = seen[0].1.to_string();
    assert!(patch.contains(FINALIZER), "{patch}");
    assert!(
        runner.runs.lock().is_empty(),
        "nothing starts before the finalizer is there"
    );
}

#[tokio::test]
async fn create_starts_the_run_the_secret_and_the_indexed_job() {
    let (client, server) = api_server(starting_steps("run1"));
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, _, action) = started(&ctx, &runner, loadtest("run1")).await;
    assert_eq!(action, Action::requeue(Duration::ZERO));
    assert_eq!(run.spec.workers, 3);
    assert_eq!(run.spec.wait_for_workers, Duration::from_secs(90));
    // The workers receive the plan as written: the credentials stay references.
    assert_eq!(
        run.spec.plan.spec.auth[0].client_secret.as_deref(),
        Some("${env:PACER_AUTH_GENESYS_CLIENT_SECRET}")
    );
    let seen = finish(server).await;

    let secret = &seen[1].1;
    assert_eq!(secret["metadata"]["name"], "run1-session-0a1b2c3d");
    assert_eq!(
        secret["stringData"]["token"],
        run.spec.session.token().expect("a token")
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "LoadTest");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);

    let job = &seen[2].1;
    assert_eq!(job["metadata"]["name"], "run1-workers");
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "run1");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 3);
    assert_eq!(job["spec"]["parallelism"], 3);
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "pacer:test");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("text"))
        .collect();
    assert_eq!(
        &args[..8],
        [
            "worker",
            "--connect",
            "pacer.pacer-system.svc:7700",
            "--test-id",
            TEST_ID,
            "--index",
            "$(JOB_COMPLETION_INDEX)",
            "--name"
        ]
    );
    assert!(args.contains(&"--resolve-plan-env"), "{args:?}");
    let env = container["env"].as_array().expect("env");
    let by_name = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        by_name("PACER_SESSION_TOKEN")["valueFrom"]["secretKeyRef"],
        json!({"name": "run1-session-0a1b2c3d", "key": "token", "optional": false})
    );
    assert_eq!(
        by_name("PACER_AUTH_GENESYS_CLIENT_SECRET")["valueFrom"]["secretKeyRef"],
        json!({"name": "genesys-client", "key": "clientSecret", "optional": false})
    );
    assert_eq!(by_name("TARGET")["value"], "http://api.example:8080");
    // No secret value anywhere in the Job.
    assert!(
        !job.to_string()
            .contains(run.spec.session.token().expect("a token"))
    );

    let status = &seen[3].1["status"];
    assert_eq!(status["phase"], "Starting");
    assert_eq!(status["testId"], TEST_ID);
    assert_eq!(status["workers"]["ready"], "0/3");
    assert_eq!(status["observedGeneration"], 1);
    assert!(
        seen[3].0.contains("fieldManager=pacer-operator"),
        "{}",
        seen[3].0
    );
    assert!(seen[3].0.contains("force=true"), "{}", seen[3].0);
    let event = &seen[4].1;
    assert_eq!(event["reason"], "Starting");
    assert_eq!(event["regarding"]["name"], "run1");
}

/// With TLS the session Secret carries the listener's CA, and the workers read it from there
/// as `PACER_CA_PEM` (no volume, nothing of the operator's own Secret) with the name to verify;
/// in plaintext they are told so.
#[tokio::test]
async fn workers_get_the_listeners_ca_through_their_session_secret() {
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let (client, server) = api_server(starting_steps("run1"));
    let runner = FakeRunner::default();
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.status_interval = Duration::ZERO;
    cfg.worker_trust = pacer_operator::WorkerTrust::Tls {
        ca: pacer_operator::WorkerCa::from_pem(CA),
        server_name: Some("pacer.pacer-system.svc".into()),
    };
    let ctx = Arc::new(Context::new(
        client,
        cfg,
        Arc::new(runner.clone()),
        Arc::new(Metrics::default()),
    ));
    started(&ctx, &runner, loadtest("run1")).await;
    let seen = finish(server).await;
    assert_eq!(seen[1].1["stringData"]["ca.crt"], CA);
    let container = &seen[2].1["spec"]["template"]["spec"]["containers"][0];
    let ca_env = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "PACER_CA_PEM")
        .expect("PACER_CA_PEM");
    assert_eq!(
        ca_env["valueFrom"]["secretKeyRef"],
        json!({"name": "run1-session-0a1b2c3d", "key": "ca.crt", "optional": false})
    );
    let args = container["args"].to_string();
    assert!(
        args.contains(r#""--server-name","pacer.pacer-system.svc""#),
        "{args}"
    );
    assert!(!args.contains("--insecure-plaintext"), "{args}");

    // Plaintext (the chart's tls.enabled=false): no CA, and the workers are told.
    let (client, server) = api_server(starting_steps("run1"));
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    started(&ctx, &runner, loadtest("run1")).await;
    let seen = finish(server).await;
    assert!(seen[1].1["stringData"].get("ca.crt").is_none());
    let args = seen[2].1["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--insecure-plaintext"), "{args}");
}

#[tokio::test]
async fn workers_connect_then_the_test_runs_with_status_updates() {
    let mut steps = starting_steps("run1");
    // Starting, one worker missing: its pod says why.
    steps.push(step(
        Method::GET,
        &format!("/api/v1{NS_PATH}/pods"),
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
            "metadata": {"name": "run1-workers-2-abcde", "annotations": {"batch.kubernetes.io/job-completion-index": "2"}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient cpu."}]}
        }]}),
    ));
    steps.push(status_patch("run1"));
    // Every worker connected and started: Running, an event.
    steps.push(status_patch("run1"));
    steps.push(event_post());
    // Running: the status again, with new numbers.
    steps.push(status_patch("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    let mut lt = with_status(
        lt,
        &json!({"status": {"phase": "Starting", "testId": TEST_ID}}),
    );

    *run.stats.lock() = LiveStats {
        connected: 2,
        workers: workers(&[Ready, Ready, Waiting]),
        planned: Duration::from_secs(40),
        ..LiveStats::default()
    };
    let a = reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(a, Action::requeue(Duration::ZERO));

    *run.stats.lock() = running_stats();
    lt = with_status(
        lt,
        &json!({"status": {"phase": "Starting", "testId": TEST_ID}}),
    );
    reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");

    lt = running(lt);
    run.stats.lock().requests = 900;
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");

    let seen = finish(server).await;
    assert!(
        seen[5]
            .0
            .contains("labelSelector=pacer.dev%2Ftest-id%3Drun1-0a1b2c3d"),
        "{}",
        seen[5].0
    );
    let waiting = &seen[6].1["status"];
    assert_eq!(waiting["phase"], "Starting");
    assert_eq!(waiting["workers"]["ready"], "2/3");
    let msg = waiting["message"].as_str().expect("message");
    assert!(
        msg.contains(
            "worker 2 (pod run1-workers-2-abcde): Pending: Unschedulable: 0/2 nodes are available"
        ),
        "{msg}"
    );
    let cond = condition(waiting, "WorkersReady");
    assert_eq!(cond["status"], "False");

    let running = &seen[7].1["status"];
    assert_eq!(running["phase"], "Running");
    assert_eq!(running["workers"]["ready"], "3/3");
    assert_eq!(running["rps"], 61.2);
    assert_eq!(running["latency"]["p95"], "48.2ms");
    assert_eq!(running["errors"], 2);
    assert_eq!(running["throttled"], 3);
    assert_eq!(running["throttledSeconds"], 1.5);
    assert_eq!(running["progress"]["percent"], 12.5);
    assert_eq!(running["thresholds"][0]["passed"], true);
    assert_eq!(running["workerHealth"].as_array().map(Vec::len), Some(3));
    assert_eq!(seen[8].1["reason"], "Running");
    assert_eq!(seen[9].1["status"]["requests"], 900);
}

fn finished_steps(name: &str, cleanup: bool) -> Vec<Step> {
    let mut v = vec![ok_echo(
        Method::PATCH,
        &format!("/api/v1{NS_PATH}/configmaps/{name}-report"),
    )];
    if cleanup {
        v.push(ok_echo(
            Method::DELETE,
            &format!("/apis/batch/v1{NS_PATH}/jobs/{name}-workers"),
        ));
        v.push(ok_echo(
            Method::DELETE,
            &format!("/api/v1{NS_PATH}/secrets/{name}-session-0a1b2c3d"),
        ));
    }
    v.push(status_patch(name));
    v.push(event_post());
    v
}

#[tokio::test]
async fn success_stores_the_report_and_cleans_up() {
    let mut steps = starting_steps("run1");
    steps.extend(finished_steps("run1", true));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    *run.end.lock() = Some(result(true));
    let lt = running(lt);
    let a = reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(a, Action::await_change());
    assert!(ctx.runs.lock().is_empty());
    let seen = finish(server).await;
    let cm = &seen[5].1;
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["data"]["summary.txt"], "the summary");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["name"], "run1");
    assert!(seen[5].0.contains("fieldManager=pacer-operator"));
    assert!(seen[6].0.contains("DELETE"), "{}", seen[6].0);
    let status = &seen[8].1["status"];
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(status["report"]["configMap"], "run1-report");
    assert_eq!(status["cleanedUp"], true);
    assert!(status["completionTime"].is_string());
    let complete = condition(status, "Complete");
    assert_eq!(complete["reason"], "Succeeded");
    assert_eq!(seen[9].1["reason"], "Succeeded");
    assert_eq!(seen[9].1["type"], "Normal");
}

#[tokio::test]
async fn a_failed_threshold_fails_the_test_and_keeps_the_pods() {
    let mut steps = starting_steps("run1");
    steps.extend(finished_steps("run1", false));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    *run.end.lock() = Some(result(false));
    let lt = running(lt);
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    let seen = finish(server).await;
    let status = &seen[6].1["status"];
    assert_eq!(status["phase"], "Failed");
    assert!(
        status.get("cleanedUp").is_none(),
        "onSuccess keeps a failed test's pods"
    );
    assert_eq!(status["thresholds"][0]["passed"], false);
    let msg = status["message"].as_str().expect("message");
    assert!(
        msg.contains("verdict failed: threshold http_req_failed rate<0.01 failed"),
        "{msg}"
    );
    let complete = condition(status, "Complete");
    assert_eq!(complete["reason"], "ThresholdsFailed");
    assert_eq!(seen[7].1["reason"], "ThresholdsFailed");
    assert_eq!(seen[7].1["type"], "Warning");
}

#[tokio::test]
async fn suspend_stops_the_workers_and_ends_aborted() {
    let mut steps = starting_steps("run1");
    // Still running while the workers stop: a status write.
    steps.push(status_patch("run1"));
    // The run ended: report, cleanup (policy always), Aborted.
    steps.extend(finished_steps("run1", true));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let mut lt = loadtest("run1");
    lt.spec.cleanup = Some(pacer_operator::crd::CleanupSpec {
        policy: pacer_operator::crd::CleanupPolicy::Always,
        ttl_seconds_after_finished: Some(3600),
    });
    let (run, lt, _) = started(&ctx, &runner, lt).await;
    *run.stats.lock() = running_stats();
    let mut lt = running(lt);
    lt.spec.suspend = true;
    reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(
        run.stopped.lock().as_deref(),
        Some("suspended (spec.suspend: true)")
    );
    *run.end.lock() = Some(result(true));
    let a = reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    match a {
        a if a == Action::await_change() => panic!("the TTL should requeue"),
        _ => {}
    }
    let seen = finish(server).await;
    assert!(
        seen[5].1["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopping: suspended")),
        "{}",
        seen[5].1
    );
    let status = &seen[9].1["status"];
    assert_eq!(status["phase"], "Aborted");
    assert_eq!(status["cleanedUp"], true);
    assert_eq!(seen[10].1["reason"], "Aborted");
}

/// The default policy (onSuccess) deletes the workers of a suspended test too: the user asked
/// for them to stop (only a failed test keeps its pods).
#[tokio::test]
async fn suspend_deletes_the_workers_under_the_default_cleanup_policy() {
    let mut steps = starting_steps("run1");
    steps.push(status_patch("run1"));
    steps.extend(finished_steps("run1", true));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    assert_eq!(lt.spec.cleanup, None);
    *run.stats.lock() = running_stats();
    let mut lt = running(lt);
    lt.spec.suspend = true;
    reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    *run.end.lock() = Some(result(true));
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    let seen = finish(server).await;
    assert!(seen[7].0.contains("DELETE"), "{}", seen[7].0);
    assert!(seen[8].0.contains("DELETE"), "{}", seen[8].0);
    let status = &seen[9].1["status"];
    assert_eq!(status["phase"], "Aborted");
    assert_eq!(status["cleanedUp"], true);
}

#[tokio::test]
async fn deletion_stops_the_run_and_deletes_the_workers() {
    let mut steps = starting_steps("run1");
    steps.extend([
        ok_echo(
            Method::DELETE,
            &format!("/apis/batch/v1{NS_PATH}/jobs/run1-workers"),
        ),
        step(
            Method::DELETE,
            &format!("/api/v1{NS_PATH}/secrets/run1-session-0a1b2c3d"),
            404,
            not_found(),
        ),
        status_patch("run1"),
        event_post(),
        // The finalizer goes.
        loadtest_patch("run1", ""),
    ]);
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    let mut lt = running(lt);
    lt.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(
        run.stopped.lock().as_deref(),
        Some("the LoadTest was deleted")
    );
    assert!(ctx.runs.lock().is_empty());
    let seen = finish(server).await;
    assert!(
        seen[5].0.contains("propagationPolicy") || seen[5].1.to_string().contains("Background"),
        "{:?}",
        seen[5]
    );
    assert_eq!(seen[7].1["status"]["phase"], "Aborted");
    assert_eq!(seen[8].1["reason"], "Aborted");
    assert!(seen[9].1.to_string().contains("remove"), "{}", seen[9].1);
}

#[tokio::test]
async fn worker_pods_that_cannot_start_fail_the_test_with_their_reasons() {
    let mut steps = starting_steps("run1");
    steps.push(step(
        Method::GET,
        &format!("/api/v1{NS_PATH}/pods"),
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            {"metadata": {"name": "run1-workers-1-x1", "annotations": {"batch.kubernetes.io/job-completion-index": "1"}},
             "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "pacer:nope", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"pacer:nope\""}}}]}},
            {"metadata": {"name": "run1-workers-2-x2", "annotations": {"batch.kubernetes.io/job-completion-index": "2"}},
             "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "pacer:test", "imageID": "",
                "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 1, "message": "worker: error: could not reach the controller"}}}]}}
        ]}),
    ));
    steps.push(status_patch("run1"));
    steps.push(event_post());
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    *run.end.lock() = Some(RunEnd::WorkersMissing {
        expected: 3,
        connected: 1,
        missing: vec![1, 2],
        message: String::new(),
    });
    let lt = with_status(
        lt,
        &json!({"status": {"phase": "Starting", "testId": TEST_ID}}),
    );
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    let seen = finish(server).await;
    let status = &seen[6].1["status"];
    assert_eq!(status["phase"], "Failed");
    let msg = status["message"].as_str().expect("message");
    assert!(
        msg.starts_with("1 of 3 workers connected within 90s"),
        "{msg}"
    );
    assert!(msg.contains("worker 1 (pod run1-workers-1-x1): ImagePullBackOff: Back-off pulling image \"pacer:nope\""), "{msg}");
    assert!(
        msg.contains("worker 2 (pod run1-workers-2-x2): CrashLoopBackOff"),
        "{msg}"
    );
    assert!(msg.contains("could not reach the controller"), "{msg}");
    let cond = condition(status, "WorkersReady");
    assert_eq!(cond["reason"], "WorkersMissing");
    assert_eq!(seen[7].1["reason"], "WorkersMissing");
}

#[tokio::test]
async fn an_invalid_spec_names_the_field() {
    let mut lt = loadtest("bad");
    lt.spec.plan["scenarios"][0]["executor"] = json!("constant-arrival-rate");
    lt.spec.plan["scenarios"][0]["rate"] = json!("fast");
    lt.spec.plan["auth"][0]["clientSecret"] = json!("${env:NOT_GIVEN}");
    let (client, server) = api_server(vec![status_patch("bad"), event_post()]);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let a = reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    assert_eq!(a, Action::await_change());
    assert!(
        runner.runs.lock().is_empty(),
        "an invalid test starts nothing"
    );
    let seen = finish(server).await;
    let status = &seen[0].1["status"];
    assert_eq!(status["phase"], "Failed");
    let valid = condition(status, "Valid");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "InvalidSpec");
    let msg = valid["message"].as_str().expect("message");
    assert!(msg.contains("spec.plan.auth[0].clientSecret: environment variable NOT_GIVEN is not set in the worker pods"), "{msg}");
    assert_eq!(seen[1].1["reason"], "InvalidSpec");
    assert_eq!(seen[1].1["type"], "Warning");

    // The type error, alone (resolution errors stop before typing).
    let mut lt = loadtest("bad");
    lt.spec.plan["scenarios"][0]["executor"] = json!("constant-arrival-rate");
    lt.spec.plan["scenarios"][0]["rate"] = json!("fast");
    let (client, server) = api_server(vec![status_patch("bad"), event_post()]);
    let ctx = context(client, FakeRunner::default());
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    let seen = finish(server).await;
    let msg = seen[0].1["status"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(msg.contains("spec.plan.scenarios[0].rate"), "{msg}");
}

// ---- A restarted operator (or a new leader) resumes what runs (phases/resume.rs). ----

/// A test this operator started: its run (with the token the workers got) and what its
/// status recorded before the workers were created.
async fn recorded_start(name: &str) -> (Arc<FakeRun>, Value) {
    let (client, server) = api_server(starting_steps(name));
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, _, _) = started(&ctx, &runner, loadtest(name)).await;
    let seen = finish(server).await;
    let record = seen[0].1["status"].clone();
    // The Starting status repeats it (a write from a stale copy never drops it).
    for field in ["testId", "sessionTokenSha256", "planSha256"] {
        assert_eq!(seen[3].1["status"][field], record[field], "{field}");
    }
    (run, record)
}

/// `lt` Running under a previous operator, with what that operator recorded.
fn running_with(lt: LoadTest, record: &Value) -> LoadTest {
    with_status(
        lt,
        &json!({"status": {"phase": "Running", "testId": TEST_ID, "requests": 500,
            "startTime": "2020-01-01T00:00:00Z",
            "sessionTokenSha256": record["sessionTokenSha256"],
            "planSha256": record["planSha256"]}}),
    )
}

fn delete_workers_steps() -> Vec<Step> {
    vec![
        ok_echo(
            Method::DELETE,
            &format!("/apis/batch/v1{NS_PATH}/jobs/run1-workers"),
        ),
        ok_echo(
            Method::DELETE,
            &format!("/api/v1{NS_PATH}/secrets/run1-session-0a1b2c3d"),
        ),
    ]
}

/// The record holds the token's SHA-256, never the token, and is written before the Secret
/// and the Job exist.
#[tokio::test]
async fn the_tokens_hash_is_recorded_before_any_worker_exists() {
    let (run, record) = recorded_start("run1").await;
    let token = run.spec.session.token().expect("a new test's token");
    assert_eq!(record["testId"], TEST_ID);
    let hash = record["sessionTokenSha256"].as_str().expect("the hash");
    assert_eq!(hash, pacer_controller::key::sha256_hex(token.as_bytes()));
    assert_eq!(record["planSha256"].as_str().map(str::len), Some(64));
    assert!(!record.to_string().contains(token), "{record}");
    assert!(
        record.get("phase").is_none(),
        "the phase is not changed: {record}"
    );
}

/// The path that used to end Failed (ControllerRestarted): the run is rebuilt from the spec,
/// admits only resuming workers checked against the recorded hash, and an Event says so;
/// nothing is written until every worker is back, then the status goes on from there.
#[tokio::test]
async fn a_restarted_operator_resumes_a_running_test_from_its_record() {
    let (first, record) = recorded_start("run1").await;
    let token = first.spec.session.token().expect("a token").to_string();

    let mut steps = vec![event_post()];
    // Workers back: the status, then the end.
    steps.push(status_patch("run1"));
    steps.extend(finished_steps("run1", true));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let lt = running_with(loadtest("run1"), &record);
    let action = reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::ZERO));
    let run = runner.run(TEST_ID).expect("the run is rebuilt");
    assert!(run.spec.resume_only, "only resuming workers are admitted");
    assert_eq!(run.spec.wait_for_workers, Duration::from_secs(30));
    assert_eq!(run.spec.workers, 3);
    assert_eq!(run.spec.plan.spec, first.spec.plan.spec, "the same plan");
    // The key is the recorded hash: the workers' token passes, nothing else does.
    assert_eq!(
        run.spec.session.token(),
        None,
        "the token itself is not known"
    );
    assert!(run.spec.session.accepts(&token));
    assert!(!run.spec.session.accepts("0123456789abcdef0123456789abcdef"));

    // Not every worker is back: nothing is written (the status said 500 requests).
    *run.stats.lock() = LiveStats {
        started: true,
        requests: 120,
        workers: workers(&[Running, Waiting, Waiting]),
        ..running_stats()
    };
    reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    // Every worker back, with its cumulative numbers.
    *run.stats.lock() = LiveStats {
        requests: 600,
        ..running_stats()
    };
    reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    *run.end.lock() = Some(result(true));
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");

    let seen = finish(server).await;
    assert_eq!(seen[0].1["reason"], "Resumed");
    assert_eq!(seen[0].1["type"], "Normal");
    let note = seen[0].1["note"].as_str().expect("note");
    assert!(
        note.contains("the controller restarted: resuming test run1-0a1b2c3d"),
        "{note}"
    );
    let live = &seen[1].1["status"];
    assert_eq!(live["phase"], "Running");
    assert_eq!(live["requests"], 600);
    assert_eq!(live["sessionTokenSha256"], record["sessionTokenSha256"]);
    let end = &seen[5].1["status"];
    assert_eq!(end["phase"], "Succeeded");
    assert_eq!(seen[6].1["reason"], "Succeeded");
}

/// A fresh worker (a process that lost its shard) would send its load a second time: only a
/// resuming one is admitted, and a wrong token is refused, by the real coordinator.
#[tokio::test]
async fn a_resumed_coordinator_refuses_a_wrong_token_and_a_fresh_worker() {
    use pacer_operator::runner::{CoordinatorRunner, RunSpec, TestRunner};
    let token = "0123456789abcdef0123456789abcdef".to_string();
    let routes = pacer_operator::grpc::Routes::default();
    let key = pacer_controller::key::SessionKey::from_sha256_hex(
        "status.sessionTokenSha256",
        &pacer_controller::key::sha256_hex(token.as_bytes()),
    )
    .expect("hex");
    let plan = Arc::new(
        pacer_plan::load_str(
            "name: p\ntarget: http://127.0.0.1:9\nscenarios:\n  - {name: s, executor: constant-vus, vus: 1, duration: 1s, requests: [{name: a, path: /a}]}\n",
            "plan.yaml",
            &Default::default(),
        )
        .expect("plan"),
    );
    let _run = CoordinatorRunner::new(routes.clone())
        .start(RunSpec {
            test_id: "t-1".into(),
            session: key,
            plan,
            workers: 2,
            wait_for_workers: Duration::from_secs(30),
            resume_only: true,
        })
        .expect("start");
    let coordinator = routes.get("t-1").expect("routed");
    let hello = |token: &str, resume: bool| pacer_proto::Hello {
        protocol_version: pacer_proto::PROTOCOL_VERSION,
        test_id: "t-1".into(),
        worker_index: Some(0),
        version: "0".into(),
        session_token: token.into(),
        name: "w".into(),
        resume: resume.then_some(pacer_proto::Resume {
            elapsed_us: 1_000_000,
            finished: false,
        }),
        takes_served_budget: true,
    };
    let wrong = coordinator
        .check_hello(&hello("fedcba9876543210fedcba9876543210", true))
        .expect_err("a wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("hello.session_token"), "{wrong:?}");
    // The recorded hash itself is not a token either.
    let digest = pacer_controller::key::sha256_hex(token.as_bytes());
    assert!(coordinator.check_hello(&hello(&digest, true)).is_err());
    coordinator
        .check_hello(&hello(&token, true))
        .expect("the workers' token");
}

/// What makes a test impossible to resume: each ends Failed (ControllerRestarted, the message
/// says why) and its workers are deleted, although the cleanup policy (onSuccess, the
/// default) would keep a failed test's pods.
#[tokio::test]
async fn a_test_that_cannot_be_resumed_fails_and_its_workers_are_deleted_whatever_the_policy() {
    let (_, record) = recorded_start("run1").await;
    let mut edited = loadtest("run1");
    edited.spec.plan["scenarios"][0]["vus"] = json!(60);
    let cases: Vec<(&str, LoadTest)> = vec![
        // An operator that did not record the token's hash (or a status cleared by hand).
        (
            "status.sessionTokenSha256 is missing",
            running(loadtest("run1")),
        ),
        (
            "status.sessionTokenSha256: 3 characters",
            running_with(
                loadtest("run1"),
                &json!({"sessionTokenSha256": "abc", "planSha256": record["planSha256"]}),
            ),
        ),
        // spec.plan edited while it ran: the workers run the old plan.
        (
            "the plan is not the one its workers run",
            running_with(edited, &record),
        ),
    ];
    for (why, lt) in cases {
        let mut steps = delete_workers_steps();
        steps.push(status_patch("run1"));
        steps.push(event_post());
        let (client, server) = api_server(steps);
        let runner = FakeRunner::default();
        let ctx = context(client, runner.clone());
        assert_eq!(
            lt.spec.cleanup, None,
            "the default policy, onSuccess, keeps a failed test's pods"
        );
        reconcile(Arc::new(lt), ctx.clone())
            .await
            .expect("reconcile");
        assert!(runner.run(TEST_ID).is_none(), "{why}: nothing resumed");
        let seen = finish(server).await;
        assert!(seen[0].0.starts_with("DELETE"), "{why}: {}", seen[0].0);
        assert!(seen[1].0.starts_with("DELETE"), "{why}: {}", seen[1].0);
        let status = &seen[2].1["status"];
        assert_eq!(status["phase"], "Failed", "{why}");
        assert_eq!(status["cleanedUp"], true, "{why}");
        let complete = condition(status, "Complete");
        assert_eq!(complete["reason"], "ControllerRestarted", "{why}");
        let message = status["message"].as_str().expect("message");
        assert!(message.contains(why), "{why}: {message}");
        assert!(message.contains("cannot resume"), "{message}");
        assert_eq!(seen[3].1["reason"], "ControllerRestarted");
        assert_eq!(seen[3].1["type"], "Warning");
    }
}

/// Resumed, but none of the workers came back within the bound: Failed with that reason,
/// and the workers deleted whatever the policy.
#[tokio::test]
async fn a_resumed_test_no_worker_came_back_to_fails_and_its_workers_are_deleted() {
    let (_, record) = recorded_start("run1").await;
    let mut steps = vec![event_post()];
    steps.extend(delete_workers_steps());
    steps.push(status_patch("run1"));
    steps.push(event_post());
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let lt = running_with(loadtest("run1"), &record);
    reconcile(Arc::new(lt.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let run = runner.run(TEST_ID).expect("resumed");
    *run.end.lock() = Some(RunEnd::NotResumed {
        workers: 3,
        waited: Duration::from_secs(30),
    });
    reconcile(Arc::new(lt), ctx.clone())
        .await
        .expect("reconcile");
    let seen = finish(server).await;
    assert!(seen[1].0.starts_with("DELETE") && seen[2].0.starts_with("DELETE"));
    let status = &seen[3].1["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["cleanedUp"], true);
    let message = status["message"].as_str().expect("message");
    assert!(
        message.contains("none of its 3 workers reconnected within 30s"),
        "{message}"
    );
    assert_eq!(seen[4].1["reason"], "ControllerRestarted");
}

/// A test still Starting when the operator restarted waits for its workers as a new one
/// does (they may not have started: fresh workers are admitted).
#[tokio::test]
async fn a_test_still_starting_is_resumed_with_its_start_timeout() {
    let (_, record) = recorded_start("run1").await;
    let (client, server) = api_server(vec![event_post()]);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let mut lt = running_with(loadtest("run1"), &record);
    if let Some(s) = lt.status.as_mut() {
        s.phase = Some(Phase::Starting);
    }
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    let run = runner.run(TEST_ID).expect("resumed");
    assert!(!run.spec.resume_only);
    assert_eq!(run.spec.wait_for_workers, Duration::from_secs(90));
    let seen = finish(server).await;
    assert_eq!(seen[0].1["reason"], "Resumed");
}

/// A start recorded but not finished (the operator stopped between the record and the
/// Starting status): what it created holds a token nobody knows now, so it goes first.
#[tokio::test]
async fn a_start_interrupted_after_its_record_deletes_what_it_created_and_starts_again() {
    let (_, record) = recorded_start("run1").await;
    let mut steps = delete_workers_steps();
    steps.extend(starting_steps("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let lt = with_status(
        loadtest("run1"),
        &json!({"status": {"testId": TEST_ID,
            "sessionTokenSha256": record["sessionTokenSha256"],
            "planSha256": record["planSha256"]}}),
    );
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    let run = runner.run(TEST_ID).expect("started again");
    let seen = finish(server).await;
    let new_hash = seen[2].1["status"]["sessionTokenSha256"].clone();
    assert_ne!(new_hash, record["sessionTokenSha256"], "a new token");
    assert_eq!(
        new_hash,
        pacer_controller::key::sha256_hex(run.spec.session.token().expect("token").as_bytes())
    );
    assert_eq!(seen[5].1["status"]["phase"], "Starting");
}

#[tokio::test]
async fn a_finished_test_is_deleted_after_its_ttl() {
    let (client, server) = api_server(vec![ok_echo(
        Method::DELETE,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/run1"),
    )]);
    let ctx = context(client, FakeRunner::default());
    let mut lt = loadtest("run1");
    lt.spec.cleanup = Some(pacer_operator::crd::CleanupSpec {
        policy: pacer_operator::crd::CleanupPolicy::Never,
        ttl_seconds_after_finished: Some(0),
    });
    let lt = with_status(
        lt,
        &json!({"status": {"phase": "Succeeded", "testId": TEST_ID,
            "completionTime": "2020-01-01T00:00:00Z"}}),
    );
    assert_eq!(lt.phase(), Some(Phase::Succeeded));
    reconcile(Arc::new(lt.clone()), ctx)
        .await
        .expect("reconcile");
    finish(server).await;
    assert_eq!(lt.name_any(), "run1");
}

#[tokio::test]
async fn a_fixed_spec_is_checked_again_and_starts() {
    let (client, server) = api_server(starting_steps("run1"));
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let mut lt = with_status(
        loadtest("run1"),
        &json!({"status": {"phase": "Failed", "observedGeneration": 1, "conditions": [
            {"type": "Valid", "status": "False", "reason": "InvalidSpec", "message": "spec.plan...",
             "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "Complete", "status": "True", "reason": "InvalidSpec", "message": "",
             "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}),
    );
    lt.metadata.generation = Some(2);
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    assert!(runner.run(TEST_ID).is_some(), "the fixed test started");
    let seen = finish(server).await;
    let status = &seen[3].1["status"];
    assert_eq!(status["phase"], "Starting");
    assert_eq!(status["observedGeneration"], 2);
    let conditions = status["conditions"].as_array().expect("conditions");
    assert!(
        conditions.iter().all(|c| c["type"] != "Complete"),
        "{status}"
    );
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Valid" && c["status"] == "True"),
        "{status}"
    );
}

// ---- What a LoadTest may ask of its worker pods (policy.rs), Redis credentials, sizes. ----

fn refusal_message(seen: &[(String, Value)]) -> String {
    assert_eq!(seen[0].1["status"]["phase"], "Failed");
    assert_eq!(seen[1].1["reason"], "InvalidSpec");
    seen[0].1["status"]["message"]
        .as_str()
        .expect("message")
        .to_string()
}

#[tokio::test]
async fn an_image_or_service_account_off_the_allow_lists_is_refused_naming_the_field() {
    let mut lt = loadtest("evil");
    lt.spec.image = Some("attacker.example/shell:latest".into());
    lt.spec
        .worker_template
        .as_mut()
        .expect("a worker template")
        .service_account_name = Some("cluster-admin-sa".into());
    let (client, server) = api_server(vec![status_patch("evil"), event_post()]);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    assert!(runner.runs.lock().is_empty(), "nothing starts");
    let msg = refusal_message(&finish(server).await);
    assert!(
        msg.contains("spec.image: \"attacker.example/shell:latest\" is not an allowed worker image (this operator allows: pacer:test"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.workerTemplate.serviceAccountName: \"cluster-admin-sa\" is not an allowed ServiceAccount"),
        "{msg}"
    );
}

#[tokio::test]
async fn value_from_in_worker_env_confinement_annotations_and_control_plane_tolerations_are_refused()
 {
    let mut lt = loadtest("evil");
    let t = lt.spec.worker_template.as_mut().expect("a worker template");
    t.env.push(
        serde_json::from_value(json!({"name": "STOLEN", "valueFrom": {
            "secretKeyRef": {"name": "db-admin", "key": "password"}}}))
        .expect("an EnvVar"),
    );
    t.annotations.insert(
        "container.apparmor.security.beta.kubernetes.io/worker".into(),
        "unconfined".into(),
    );
    t.labels
        .insert("app.kubernetes.io/component".into(), "controller".into());
    t.tolerations = vec![
        serde_json::from_value(json!({"operator": "Exists"})).expect("a Toleration"),
        serde_json::from_value(json!({"key": "node-role.kubernetes.io/control-plane",
            "operator": "Exists", "effect": "NoSchedule"}))
        .expect("a Toleration"),
        serde_json::from_value(json!({"key": "dedicated", "value": "load",
            "effect": "NoSchedule"}))
        .expect("a Toleration"),
    ];
    let (client, server) = api_server(vec![status_patch("evil"), event_post()]);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    assert!(runner.runs.lock().is_empty(), "nothing starts");
    let msg = refusal_message(&finish(server).await);
    for field in [
        "spec.workerTemplate.env[1].valueFrom: only literal values are allowed here: give Secrets with spec.credentials",
        "spec.workerTemplate.annotations[\"container.apparmor.security.beta.kubernetes.io/worker\"]",
        "spec.workerTemplate.labels[\"app.kubernetes.io/component\"]",
        "spec.workerTemplate.tolerations[0]: a toleration of every taint is not allowed",
        "spec.workerTemplate.tolerations[1].key: \"node-role.kubernetes.io/control-plane\"",
    ] {
        assert!(msg.contains(field), "{field} not in {msg}");
    }
    assert!(
        !msg.contains("tolerations[2]"),
        "a toleration of a named taint is fine: {msg}"
    );
}

#[tokio::test]
async fn allowed_images_and_service_accounts_start_confined_pods_without_a_token() {
    let mut lt = loadtest("run1");
    lt.spec.image = Some("registry.example/pacer:2.0".into());
    lt.spec
        .worker_template
        .as_mut()
        .expect("a worker template")
        .service_account_name = Some("load-runner".into());
    let (client, server) = api_server(starting_steps("run1"));
    let runner = FakeRunner::default();
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.status_interval = Duration::ZERO;
    cfg.defaults.worker_policy = WorkerPolicy::operator(
        "pacer:test",
        ["registry.example/pacer:*".to_string()],
        ["load-runner".to_string()],
    );
    let ctx = Arc::new(Context::new(
        client,
        cfg,
        Arc::new(runner.clone()),
        Arc::new(Metrics::default()),
    ));
    started(&ctx, &runner, lt).await;
    let seen = finish(server).await;
    let pod = &seen[2].1["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "load-runner");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(pod["hostNetwork"].is_null() && pod["volumes"].is_null());
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/pacer:2.0");
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["privileged"].is_null());
}

#[tokio::test]
async fn a_redis_url_with_a_password_reaches_workers_only_through_the_session_secret() {
    const PASSWORD: &str = "hunter2-redis-password";
    let (client, server) = api_server(starting_steps("run1"));
    let runner = FakeRunner::default();
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.status_interval = Duration::ZERO;
    cfg.default_redis = Some(RedisSource::Url(format!(
        "redis://pacer:{PASSWORD}@pacer-redis.pacer-system.svc:6379"
    )));
    assert!(
        !format!("{cfg:?}").contains(PASSWORD),
        "the operator's configuration prints without the password"
    );
    let ctx = Arc::new(Context::new(
        client,
        cfg,
        Arc::new(runner.clone()),
        Arc::new(Metrics::default()),
    ));
    started(&ctx, &runner, loadtest("run1")).await;
    let seen = finish(server).await;
    let secret = &seen[1].1;
    assert_eq!(
        secret["stringData"]["redis-url"],
        format!("redis://pacer:{PASSWORD}@pacer-redis.pacer-system.svc:6379")
    );
    let job = &seen[2].1;
    let env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    let redis = env
        .iter()
        .find(|e| e["name"] == "PACER_REDIS_URL")
        .expect("PACER_REDIS_URL");
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"],
        json!({"name": "run1-session-0a1b2c3d", "key": "redis-url", "optional": false})
    );
    assert!(
        !job.to_string().contains(PASSWORD),
        "no password in the Job"
    );
    for (what, body) in &seen[3..] {
        assert!(!body.to_string().contains(PASSWORD), "{what}");
    }
}

/// The API server's answer to an object over its size limit.
fn too_large() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "etcdserver: request is too large", "reason": "RequestEntityTooLarge", "code": 413})
}

#[tokio::test]
async fn a_thousand_workers_keep_the_status_under_the_api_servers_limit() {
    let mut steps = starting_steps("run1");
    steps.push(status_patch("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    let mut rows = workers(&vec![Running; 1000]);
    for r in &mut rows {
        r.name = format!("run1-workers-{}-{}", r.index, "n".repeat(200));
        r.reason = Some("a worker's very long error ".repeat(400));
    }
    rows[777].state = Lost;
    let mut stats = running_stats();
    stats.workers = rows;
    stats.connected = 999;
    *run.stats.lock() = stats;
    let lt = running(lt);
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    let seen = finish(server).await;
    let patch = &seen[5].1;
    let size = serde_json::to_vec(patch).expect("json").len();
    // The object may hold 1.5 MiB (etcd); the status keeps well under it, spec included.
    assert!(size < 512 * 1024, "the status patch is {size} bytes");
    let status = &patch["status"];
    let rows = status["workerHealth"].as_array().expect("workerHealth");
    let omitted = status["workerHealthOmitted"].as_u64().expect("a count");
    assert!(omitted > 0 && omitted < 1000, "{omitted}");
    assert_eq!(rows.len() as u64 + omitted, 1000);
    assert!(
        rows.iter()
            .any(|r| r["index"] == 777 && r["state"] == "lost"),
        "the lost worker is among those kept"
    );
}

#[tokio::test]
async fn a_report_refused_as_too_large_is_replaced_once_never_retried() {
    let report_path = format!("/api/v1{NS_PATH}/configmaps/run1-report");
    let mut steps = starting_steps("run1");
    steps.push(step(Method::PATCH, &report_path, 413, too_large()));
    steps.extend(finished_steps("run1", true));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    *run.end.lock() = Some(result(true));
    let lt = running(lt);
    reconcile(Arc::new(lt.clone()), ctx)
        .await
        .expect("reconcile");
    let seen = finish(server).await;
    assert_eq!(seen[5].1["data"]["summary.txt"], "the summary");
    let short = seen[6].1["data"]["summary.txt"].as_str().expect("text");
    assert!(
        short.contains("refused by the API server as too large"),
        "{short}"
    );
    let status = &seen[9].1["status"];
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(status["report"]["configMap"], "run1-report");

    // Refused twice: no report, the test still ends (no third try).
    let mut steps = starting_steps("run1");
    steps.push(step(Method::PATCH, &report_path, 413, too_large()));
    steps.push(step(Method::PATCH, &report_path, 413, too_large()));
    steps.extend(finished_steps("run1", true).into_iter().skip(1));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    *run.end.lock() = Some(result(true));
    let lt = running(lt);
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    let seen = finish(server).await;
    let status = &seen[9].1["status"];
    assert_eq!(status["phase"], "Succeeded");
    assert!(status["report"].is_null(), "{status}");
}

/// A LoadTest whose plan nests deeper than serde_json reads (128 levels).
fn deep_loadtest(name: &str, uid: &str) -> Value {
    let mut deep = json!("bottom");
    for _ in 0..140 {
        deep = json!([deep]);
    }
    let mut lt = serde_json::to_value(loadtest(name)).expect("json");
    lt["metadata"]["uid"] = json!(uid);
    lt["spec"]["plan"]["vars"] = json!({ "deep": deep });
    lt
}

#[tokio::test]
async fn one_unreadable_loadtest_is_failed_alone_and_the_others_still_reconcile() {
    use kube::core::{ObjectList, PartialObjectMeta};
    use pacer_operator::lenient::{LoadTestMeta, reconcile_meta};

    let deep = deep_loadtest("deep", "0a1b2c3d-0000-4000-8000-0000000000dd");
    let list = json!({"apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTestList", "metadata": {},
                      "items": [serde_json::to_value(loadtest("run1")).expect("json"), deep.clone()]});
    let text = serde_json::to_string(&list).expect("json");
    // Why the operator lists metadata: the full list fails as a whole on one deep LoadTest.
    assert!(serde_json::from_str::<ObjectList<LoadTest>>(&text).is_err());
    // What the API server answers a metadata list with (kube asks for it for a
    // PartialObjectMeta API): each item's metadata only, which never nests.
    let metadata_list = json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
        "items": list["items"].as_array().expect("items").iter().map(|i| json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": i["metadata"].clone()})).collect::<Vec<_>>()
    });
    let metas: ObjectList<LoadTestMeta> =
        serde_json::from_value(metadata_list).expect("the metadata list");
    assert_eq!(metas.items.len(), 2);

    let mut steps = vec![step(
        Method::GET,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/deep"),
        200,
        deep,
    )];
    steps.push(step(
        Method::PATCH,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/deep/status"),
        200,
        json!({}),
    ));
    steps.push(step(
        Method::GET,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/run1"),
        200,
        serde_json::to_value(loadtest("run1")).expect("json"),
    ));
    steps.extend(starting_steps("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let meta_of = |name: &str| -> Arc<PartialObjectMeta<LoadTest>> {
        let m = metas
            .items
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(name))
            .expect("listed");
        Arc::new(m.clone())
    };
    reconcile_meta(meta_of("deep"), ctx.clone())
        .await
        .expect("the unreadable LoadTest is handled, not an error");
    reconcile_meta(meta_of("run1"), ctx.clone())
        .await
        .expect("the readable one reconciles");
    assert!(runner.run(TEST_ID).is_some(), "the readable one started");
    let seen = finish(server).await;
    let status = &seen[1].1["status"];
    assert_eq!(status["phase"], "Failed");
    let msg = status["message"].as_str().expect("message");
    assert!(
        msg.contains("the operator cannot read this LoadTest: it nests deeper than the 128 levels"),
        "{msg}"
    );
    assert!(!msg.contains("bottom"), "no content of the LoadTest: {msg}");
}

#[tokio::test]
async fn a_status_refused_as_too_large_is_written_once_more_without_worker_rows() {
    let mut steps = starting_steps("run1");
    steps.push(step(
        Method::PATCH,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/run1/status"),
        413,
        too_large(),
    ));
    steps.push(status_patch("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    *run.stats.lock() = running_stats();
    let lt = running(lt);
    reconcile(Arc::new(lt), ctx)
        .await
        .expect("the smaller status is accepted: no error, no retry loop");
    let seen = finish(server).await;
    assert_eq!(
        seen[5].1["status"]["workerHealth"].as_array().map(Vec::len),
        Some(3)
    );
    let slim = &seen[6].1["status"];
    assert_eq!(slim["phase"], "Running");
    assert!(slim["workerHealth"].is_null(), "{slim}");
    assert_eq!(slim["workerHealthOmitted"], 3);
    assert_eq!(slim["requests"], 300);
}

#[tokio::test]
async fn a_running_loadtest_edited_into_an_unreadable_one_is_stopped_and_failed() {
    use kube::core::PartialObjectMetaExt;
    use pacer_operator::lenient::reconcile_meta;

    let uid = "0a1b2c3d-0000-4000-8000-000000000001";
    let mut steps = starting_steps("run1");
    steps.push(step(
        Method::GET,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/run1"),
        200,
        deep_loadtest("run1", uid),
    ));
    steps.push(step(
        Method::PATCH,
        &format!("/apis/pacer.dev/v1alpha1{NS_PATH}/loadtests/run1/status"),
        200,
        json!({}),
    ));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, lt, _) = started(&ctx, &runner, loadtest("run1")).await;
    let mut metadata = lt.metadata.clone();
    metadata.generation = Some(2);
    reconcile_meta(Arc::new(metadata.into_response_partial()), ctx.clone())
        .await
        .expect("handled");
    assert!(ctx.runs.lock().is_empty(), "the run is forgotten");
    assert_eq!(
        run.stopped.lock().as_deref(),
        Some("the LoadTest can no longer be read")
    );
    let seen = finish(server).await;
    assert_eq!(seen[6].1["status"]["phase"], "Failed");
}

#[tokio::test]
async fn a_run_the_runner_refuses_is_an_error_with_its_cause_and_creates_nothing() {
    let (client, server) = api_server(Vec::new());
    let runner = FakeRunner::default();
    *runner.fail_start.lock() = Some("no coordinator for this test".into());
    let ctx = context(client, runner.clone());
    let error = reconcile(Arc::new(loadtest("run1")), ctx)
        .await
        .expect_err("the runner refused");
    let text = pacer_operator::controller::causes(&error);
    assert!(
        text.contains("cannot start the test") && text.ends_with("no coordinator for this test"),
        "{text}"
    );
    assert!(runner.runs.lock().is_empty());
    assert!(finish(server).await.is_empty(), "no Secret, no Job");
}

#[tokio::test]
async fn a_job_name_still_taken_aborts_the_run_and_retries_naming_the_job() {
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch \"run1-workers\" already exists", "reason": "AlreadyExists", "code": 409});
    let (client, server) = api_server(vec![
        status_patch("run1"),
        ok_echo(Method::POST, &format!("/api/v1{NS_PATH}/secrets")),
        step(
            Method::POST,
            &format!("/apis/batch/v1{NS_PATH}/jobs"),
            409,
            conflict,
        ),
    ]);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let error = reconcile(Arc::new(loadtest("run1")), ctx.clone())
        .await
        .expect_err("the Job's name is taken");
    let text = pacer_operator::controller::causes(&error);
    assert!(
        text.contains("a Job named run1-workers already exists") && text.contains("AlreadyExists"),
        "{text}"
    );
    let run = runner.run(TEST_ID).expect("a run was started");
    assert_eq!(
        run.stopped.lock().as_deref(),
        Some("the worker pods could not be created")
    );
    assert!(ctx.runs.lock().is_empty(), "the run is not kept");
    finish(server).await;
}

// ---- RateBudgets (spec.budgetRef; budget_status.rs) ----

const BUDGET_PATH: &str = "/apis/pacer.dev/v1alpha1/namespaces/default/ratebudgets/acme-api";

fn rate_budget() -> Value {
    json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "RateBudget",
        "metadata": {"name": "acme-api", "namespace": "default", "uid": "rb-1", "generation": 1,
                     "finalizers": [pacer_operator::ratebudget::BUDGET_FINALIZER]},
        "spec": {
            "limits": [{"name": "org", "limit": "5/s", "burst": 2}],
            "credentials": [{"name": "genesys", "secretRef": {
                "name": "acme-client", "clientIdKey": "id", "clientSecretKey": "secret"}}],
            "idleExpiry": "10m"
        }
    })
}

/// `loadtest(name)` on the budget: its own credentials left to the budget's.
fn on_budget(name: &str) -> LoadTest {
    let mut lt = loadtest(name);
    lt.spec.credentials.clear();
    lt.spec.budget_ref = Some(pacer_operator::ratebudget::BudgetRef {
        name: "acme-api".into(),
        namespace: None,
    });
    lt
}

fn context_with_redis(client: Client, runner: FakeRunner) -> Arc<Context> {
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.status_interval = Duration::ZERO;
    cfg.default_redis = Some(RedisSource::Url("redis://pacer-redis:6379".into()));
    Arc::new(Context::new(
        client,
        cfg,
        Arc::new(runner),
        Arc::new(Metrics::default()),
    ))
}

#[tokio::test]
async fn a_budget_ref_brings_the_budgets_limits_credentials_and_redis() {
    let mut steps = vec![step(Method::GET, BUDGET_PATH, 200, rate_budget())];
    steps.extend(starting_steps("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context_with_redis(client, runner.clone());
    let (run, _, _) = started(&ctx, &runner, on_budget("run1")).await;
    let plan = &run.spec.plan;
    assert_eq!(plan.budget(), Some("default.acme-api"));
    let names: Vec<&str> = plan.limits.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["per-token", "org"],
        "the plan's own limit, then the budget's"
    );
    assert_eq!(
        plan.limits[1].scope,
        pacer_plan::spec::LimitScope::Fleet,
        "a budget's limit is shared"
    );
    let seen = finish(server).await;
    let job = &seen[3].1;
    let env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    let var = |n: &str| env.iter().find(|e| e["name"] == n).cloned();
    assert_eq!(
        var("PACER_AUTH_GENESYS_CLIENT_ID").expect("the budget's credential")["valueFrom"]["secretKeyRef"],
        json!({"name": "acme-client", "key": "id", "optional": false})
    );
    assert_eq!(
        var("PACER_BUDGET_IDLE").expect("the idle expiry")["value"],
        "600000ms"
    );
    assert!(var("PACER_REDIS_URL").is_some(), "the budget's Redis");
    assert_eq!(
        seen[2].1["stringData"]["redis-url"],
        "redis://pacer-redis:6379"
    );
}

#[tokio::test]
async fn a_missing_budget_fails_the_test_naming_it() {
    let (client, server) = api_server(vec![
        step(Method::GET, BUDGET_PATH, 404, not_found()),
        status_patch("run1"),
        event_post(),
    ]);
    let runner = FakeRunner::default();
    let ctx = context_with_redis(client, runner.clone());
    reconcile(Arc::new(on_budget("run1")), ctx)
        .await
        .expect("reconcile");
    assert!(runner.run(TEST_ID).is_none(), "nothing started");
    let seen = finish(server).await;
    let status = &seen[1].1["status"];
    assert_eq!(status["phase"], "Failed");
    let valid = condition(status, "Valid");
    assert_eq!(valid["reason"], "BudgetNotFound");
    let message = valid["message"].as_str().expect("message");
    assert!(message.contains("spec.budgetRef.name"), "{message}");
    assert!(message.contains("\"acme-api\""), "{message}");
    assert_eq!(seen[2].1["reason"], "BudgetNotFound");
}

#[tokio::test]
async fn a_plan_limit_named_like_the_budgets_is_refused_naming_both() {
    let (client, server) = api_server(vec![
        step(Method::GET, BUDGET_PATH, 200, rate_budget()),
        status_patch("run1"),
        event_post(),
    ]);
    let runner = FakeRunner::default();
    let ctx = context_with_redis(client, runner.clone());
    let mut lt = on_budget("run1");
    lt.spec.plan["limits"][0]["name"] = json!("org");
    lt.spec.redis = Some(pacer_operator::crd::RedisSpec {
        url: Some("redis://elsewhere:6379".into()),
        secret_ref: None,
    });
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    assert!(runner.run(TEST_ID).is_none(), "nothing started");
    let seen = finish(server).await;
    let valid = condition(&seen[1].1["status"], "Valid");
    assert_eq!(valid["reason"], "InvalidSpec");
    let message = valid["message"].as_str().expect("message");
    assert!(
        message.contains("spec.plan.limits[0].name") && message.contains("spec.limits[0]"),
        "both limits named: {message}"
    );
    assert!(message.contains("spec.redis"), "{message}");
}

#[tokio::test]
async fn a_budget_of_another_namespace_is_refused_saying_why() {
    let (client, server) = api_server(vec![status_patch("run1"), event_post()]);
    let runner = FakeRunner::default();
    let ctx = context_with_redis(client, runner.clone());
    let mut lt = on_budget("run1");
    lt.spec.budget_ref.as_mut().expect("ref").namespace = Some("team-b".into());
    reconcile(Arc::new(lt), ctx).await.expect("reconcile");
    let seen = finish(server).await;
    let message = condition(&seen[0].1["status"], "Valid")["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(message.contains("spec.budgetRef.namespace"), "{message}");
    assert!(message.contains("Secrets of its namespace"), "{message}");
}

/// A throwaway `redis-server` on a loopback port (stopped on drop).
struct Redis {
    port: u16,
    child: std::process::Child,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server) must be installed for this test");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The budget's status from a real redis-server that a real fleet limiter wrote to: slots
/// granted (the rate used), the processes, a 429 with its Retry-After (the pause and the last
/// 429), written with server-side apply on the status subresource.
#[tokio::test]
async fn the_budget_status_reads_its_redis() {
    use pacer_limiter::fleet::{Fleet, FleetConfig, FleetLimiter, FleetOptions};
    use pacer_limiter::{Feedback, Limiter, RequestMeta};

    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let rb: pacer_operator::ratebudget::RateBudget =
        serde_json::from_value(rate_budget()).expect("a RateBudget");
    let limits = pacer_operator::budget::limits(&rb);
    let mut fc = FleetConfig::new(url.clone(), "run1-0a1b2c3d");
    fc.budget = Some("default.acme-api".into());
    let fleet = Fleet::connect(fc).await.expect("the fleet joins Redis");
    let limiter = FleetLimiter::new(fleet.clone(), &limits, FleetOptions::default());
    let req = RequestMeta {
        method: "GET",
        path: "/",
        request: "r",
    };
    let reader = pacer_limiter::fleet::status::BudgetReader::new(&url, None).expect("reader");
    let first = reader
        .read("default.acme-api", &["org"])
        .await
        .expect("a first read");
    // 5/s for ~3 s, bounded in count and time.
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    while sent < 40 && started.elapsed() < Duration::from_secs(4) {
        tokio::time::timeout(Duration::from_secs(2), limiter.acquire(&req))
            .await
            .expect("a slot in time")
            .expect("a slot");
        sent += 1;
    }
    limiter.feedback(
        &req,
        &Feedback {
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
            pause_origin: pacer_limiter::PauseOrigin::Server,
            stated_rate: None,
            server: Some(pacer_limiter::headroom::ServerReport {
                remaining: 0,
                reset: None,
                limit: Some(5),
            }),
            sent_ago: Duration::ZERO,
        },
    );
    // The notes are written at most once a second, on their own task (the 429's at once:
    // this process wrote none before).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = reader
        .read("default.acme-api", &["org"])
        .await
        .expect("a second read");
    assert_eq!(second.process_count, 1);
    let tests = [pacer_operator::budget_status::TestOnBudget {
        name: "run1".into(),
        test_id: Some("run1-0a1b2c3d".into()),
        phase: Some("Running".into()),
        rps: Some(4.9),
    }];
    let status = pacer_operator::budget_status::build_status(
        &rb,
        &tests,
        &pacer_operator::budget_status::Observation::Read(second.clone()),
        Some(&first),
        &[],
    );
    let org = &status.limits[0];
    let used = org.used_per_second.expect("a rate used");
    assert!(
        (1.0..=8.0).contains(&used),
        "5/s limit, {sent} requests: {used}/s used ({second:?})"
    );
    eprintln!(
        "budget status: {sent} requests at the 5/s limit in {:.1} s; read {used}/s used, rate column {:?}",
        started.elapsed().as_secs_f64(),
        status.rate
    );
    assert!(
        status
            .rate
            .as_deref()
            .is_some_and(|r| r.contains("/5 per s")),
        "{:?}",
        status.rate
    );
    assert!(
        status.paused_until.is_some(),
        "the 30 s Retry-After pause is in force"
    );
    let last = status.last429.as_ref().expect("the last 429");
    assert_eq!(last.limits, "org");
    assert_eq!(last.retry_after_seconds, Some(30.0));
    assert_eq!(last.server_limit, Some(5), "the limit the server stated");
    // What the server's headers said in that answer (noted by the limiter, fleet/server.rs).
    assert_eq!(status.server_left.as_deref(), Some("0 of 5 org"));
    assert_eq!(status.limits[0].server_remaining, Some(0));
    assert_eq!(status.test_count, Some(1));
    let t = &status.tests[0];
    assert_eq!(
        t.weight,
        Some(1.0),
        "from the budget's registry of tests: {t:?}"
    );
    assert_eq!(t.share, Some(1.0), "alone on the budget: {t:?}");
    // The same test, not a LoadTest: listed as another test of the budget.
    let alone = pacer_operator::budget_status::build_status(
        &rb,
        &[],
        &pacer_operator::budget_status::Observation::Read(second.clone()),
        Some(&first),
        &[],
    );
    assert_eq!(alone.test_count, Some(1), "a laptop's test counts");
    assert_eq!(
        alone.tests[0].kind,
        pacer_operator::ratebudget::BudgetTestKind::Other
    );
    assert_eq!(alone.tests[0].name, "run1-0a1b2c3d");
    assert_eq!(status.process_count, Some(1));
    assert_eq!(status.budget.as_deref(), Some("default.acme-api"));

    // The reconciler lists the LoadTests on the budget and applies the status.
    let lt_list = json!({"apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTestList",
    "metadata": {}, "items": [
        serde_json::to_value(running(on_budget("run1"))).expect("json"),
        serde_json::to_value(loadtest("other")).expect("json"),
    ]});
    let (client, server) = api_server(vec![
        step(
            Method::GET,
            "/apis/pacer.dev/v1alpha1/namespaces/default/loadtests",
            200,
            lt_list,
        ),
        step(
            Method::PATCH,
            &format!("{BUDGET_PATH}/status"),
            200,
            rate_budget(),
        ),
    ]);
    let mut cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
    cfg.default_redis = Some(RedisSource::Url(url.clone()));
    let ctx = Arc::new(Context::new(
        client,
        cfg,
        Arc::new(FakeRunner::default()),
        Arc::new(Metrics::default()),
    ));
    let bctx = Arc::new(pacer_operator::budget_status::BudgetContext::new(ctx));
    let action = pacer_operator::budget_status::reconcile_budget(Arc::new(rb), bctx)
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(pacer_operator::budget_status::BUDGET_STATUS_EVERY),
        "a test runs on it: read again soon"
    );
    let seen = finish(server).await;
    let written = &seen[1].1["status"];
    assert_eq!(
        written["tests"][0]["name"], "run1",
        "only the test on the budget"
    );
    assert_eq!(written["tests"].as_array().map(Vec::len), Some(1));
    assert_eq!(written["tests"][0]["share"], 1.0, "{written}");
    assert_eq!(written["processCount"], 1);
    assert_eq!(condition(written, "Observed")["status"], "True");
    assert!(written["pausedUntil"].is_string(), "{written}");
    let _ = fleet.leave().await;
}

/// Deleting a RateBudget waits for the tests on it (its finalizer): refused while one has not
/// ended, naming it; done once none runs (the finalizer removed, nothing else touched).
#[tokio::test]
async fn a_ratebudget_is_deleted_only_once_its_tests_ended() {
    let mut deleting = rate_budget();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let rb: pacer_operator::ratebudget::RateBudget =
        serde_json::from_value(deleting.clone()).expect("a RateBudget");
    let list = |items: Vec<LoadTest>| {
        json!({"apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTestList", "metadata": {},
               "items": items.into_iter().map(|lt| serde_json::to_value(lt).expect("json")).collect::<Vec<_>>()})
    };
    let loadtests = "/apis/pacer.dev/v1alpha1/namespaces/default/loadtests";
    let ended = with_status(
        on_budget("done"),
        &json!({"status": {"phase": "Succeeded", "testId": "done-0a1b2c3d"}}),
    );

    // a test still running on it: the deletion waits, naming it
    let (client, server) = api_server(vec![step(
        Method::GET,
        loadtests,
        200,
        list(vec![running(on_budget("run1")), ended.clone()]),
    )]);
    let bctx = Arc::new(pacer_operator::budget_status::BudgetContext::new(
        context_with_redis(client, FakeRunner::default()),
    ));
    let e = pacer_operator::budget_status::reconcile_budget(Arc::new(rb.clone()), bctx)
        .await
        .expect_err("the deletion waits");
    let text = pacer_operator::controller::causes(&e);
    assert!(text.contains("run1") && !text.contains("done"), "{text}");
    finish(server).await;

    // only ended tests: the finalizer goes
    let mut gone = deleting;
    gone["metadata"]["finalizers"] = json!([]);
    let (client, server) = api_server(vec![
        step(Method::GET, loadtests, 200, list(vec![ended])),
        step(Method::PATCH, BUDGET_PATH, 200, gone),
    ]);
    let bctx = Arc::new(pacer_operator::budget_status::BudgetContext::new(
        context_with_redis(client, FakeRunner::default()),
    ));
    pacer_operator::budget_status::reconcile_budget(Arc::new(rb), bctx)
        .await
        .expect("the finalizer is removed");
    let seen = finish(server).await;
    assert!(
        seen[1]
            .1
            .to_string()
            .contains(pacer_operator::ratebudget::BUDGET_FINALIZER),
        "a patch of the finalizers: {}",
        seen[1].1
    );
}

// ---- spec.planRef: the plan read from a ConfigMap (planref.rs). ----

/// `loadtest(name)` with its plan in the ConfigMap `plans` (key `plan.yaml`) instead of inline.
fn with_plan_ref(name: &str) -> LoadTest {
    let mut lt = loadtest(name);
    lt.spec.plan = Value::Null;
    lt.spec.plan_ref = Some(pacer_operator::crd::PlanRef {
        name: "plans".into(),
        key: "plan.yaml".into(),
    });
    lt
}

fn config_map_get(status: u16, reply: Value) -> Step {
    step(
        Method::GET,
        &format!("/api/v1{NS_PATH}/configmaps/plans"),
        status,
        reply,
    )
}

/// The plan is read from its ConfigMap once, checked as an inline one, and run; the status
/// says where it came from.
#[tokio::test]
async fn a_plan_ref_is_read_from_its_configmap_and_started() {
    let text = serde_saphyr::to_string(&plan()).expect("YAML");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "plans", "namespace": "default", "resourceVersion": "42"},
        "data": {"plan.yaml": text}});
    let mut steps = vec![config_map_get(200, cm)];
    steps.extend(starting_steps("run1"));
    let (client, server) = api_server(steps);
    let runner = FakeRunner::default();
    let ctx = context(client, runner.clone());
    let (run, _, _) = started(&ctx, &runner, with_plan_ref("run1")).await;
    assert_eq!(run.spec.plan.name, "analytics");
    assert_eq!(
        run.spec.plan.spec.auth[0].client_secret.as_deref(),
        Some("${env:PACER_AUTH_GENESYS_CLIENT_SECRET}"),
        "the plan as written, references unresolved"
    );
    let seen = finish(server).await;
    assert!(seen[0].0.starts_with("GET "), "{}", seen[0].0);
    let status = &seen[1].1["status"];
    assert_eq!(
        status["planSource"],
        json!({"kind": "ConfigMap", "configMap": "plans", "key": "plan.yaml", "resourceVersion": "42"})
    );
}

/// A ConfigMap that is missing, or that the operator may not read, fails the test naming
/// `spec.planRef.name`; nothing is started.
#[tokio::test]
async fn a_missing_or_forbidden_plan_configmap_fails_the_test_naming_the_field() {
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "configmaps \"plans\" is forbidden", "reason": "Forbidden", "code": 403});
    for (status, reply, says) in [
        (404, not_found(), "no ConfigMap \"plans\""),
        (403, forbidden, "needs get on configmaps"),
    ] {
        let (client, server) = api_server(vec![
            config_map_get(status, reply),
            status_patch("run1"),
            event_post(),
        ]);
        let runner = FakeRunner::default();
        let ctx = context(client, runner.clone());
        let action = reconcile(Arc::new(with_plan_ref("run1")), ctx)
            .await
            .expect("reconcile");
        assert_eq!(action, Action::await_change());
        assert!(runner.runs.lock().is_empty(), "nothing is started");
        let seen = finish(server).await;
        let written = &seen[1].1["status"];
        assert_eq!(written["phase"], "Failed");
        let msg = condition(written, "Valid")["message"]
            .as_str()
            .expect("message");
        assert!(
            msg.contains("spec.planRef.name") && msg.contains(says),
            "{msg}"
        );
    }
}
