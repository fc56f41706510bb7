//! A running LoadTest survives its operator's death (issue 17), on a real Kubernetes API server
//! (the harness of `pacer_tests::kube`): `helm install` of charts/pacer with one operator
//! replica, whose process the test kills with SIGKILL mid-run; the ReplicaSet puts a new pod
//! in its place (the process kubelet runs it), which finds the test Running without its run in
//! memory and resumes it (crates/pacer-operator/src/phases/resume.rs). Shown: the test ends
//! Succeeded, its status counts exactly what `pacer mock` received, an Event names the resume,
//! and the mock never sees a second wave of load. And the other side: a test that cannot be
//! resumed (its spec.plan edited while it ran, so the workers run another plan than the spec
//! says) ends Failed naming why, and its workers are deleted although the default cleanup
//! policy keeps a failed test's pods: the mock stops receiving soon after. Needs
//! `make e2e-deps`.
//!
//! A copy of the few helpers of k8s_e2e.rs it needs (that file installs its own release in its
//! own API server; each test binary gets one).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use pacer_tests::RedisServer;
use pacer_tests::kube::e2e::{
    Followed, Install, Installed, LABEL_LOADTEST, MockProcess, OPERATOR_PODS, RELEASE_NS,
    events_of, follow, http_get, kubectl_apply_ok, loadtests, most_in_window, phase, running_with,
};
use pacer_tests::kube::{Cluster, eventually};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// `pacer mock` without auth or limits of its own (the plan's fleet limit is what paces).
const MOCK_ARGS: &[&str] = &["--auth", "off", "--no-limits"];

static INSTALL: OnceCell<Installed> = OnceCell::const_new();

/// The chart with one operator replica (its replacement is the ReplicaSet's), listening on
/// loopback (every pod shares the host's network here), TLS as by default.
async fn installed() -> &'static Installed {
    INSTALL
        .get_or_init(|| Install::chart().set("controller.replicas=1").run())
        .await
}

/// The tests here kill the one operator: one at a time.
static OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Wait for an operator pod to run and answer `/readyz` (a leader, when they elect one).
async fn operator_ready(metrics: u16, limit: Duration) {
    eventually(limit, "the operator's /readyz", || async {
        (http_get(metrics, "/readyz").await.map(|(c, _)| c) == Some(200)).then_some(())
    })
    .await;
}

/// The operator's Running pod: its name and the pid (process group) the kubelet runs it as.
async fn operator_pod(client: &kube::Client) -> (String, u32) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let kubelet = Cluster::shared().kubelet().unwrap();
    eventually(
        Duration::from_secs(60),
        "a Running operator pod",
        || async {
            pods.list(&ListParams::default().labels(OPERATOR_PODS))
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .find_map(|p| {
                    let name = p.metadata.name?;
                    let pid = kubelet.pid(RELEASE_NS, &name)?;
                    Some((name, pid))
                })
        },
    )
    .await
}

/// SIGKILL the operator's process: no shutdown of any kind, as an OOM kill or a node loss.
async fn kill_operator(client: &kube::Client) -> String {
    let (pod, pid) = operator_pod(client).await;
    if let Some(pgid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    pod
}

/// Wait until an operator pod other than `dead` runs and answers `/readyz`.
async fn operator_replaced(client: &kube::Client, dead: &str, metrics: u16) {
    eventually(Duration::from_secs(90), "a new operator pod", || async {
        let (pod, _) = operator_pod(client).await;
        (pod != dead).then_some(())
    })
    .await;
    operator_ready(metrics, Duration::from_secs(90)).await;
}

/// The arrival rate of the plan (requests per second) and its duration: long enough that the
/// workers still run when the new operator takes over (with the chart's leader election, a
/// replacement waits for the dead leader's Lease to expire: about 16 s measured).
const RATE: u64 = 20;
const SECONDS: u64 = 36;

/// 3 workers, `RATE`/s for `SECONDS` through a fleet limit in Redis a little above the rate
/// (it caps what any number of workers could send), a threshold that holds.
fn restart_loadtest(name: &str, target: &str, redis: &str) -> Value {
    json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": name },
        "spec": {
            "workers": 3,
            "redis": { "url": redis },
            "startTimeout": "90s",
            "plan": {
                "name": name,
                "target": target,
                "limits": [{ "name": "fleet-cap", "limit": "25/s", "burst": 1, "scope": "fleet" }],
                "scenarios": [{
                    "name": "me",
                    "executor": "constant-arrival-rate",
                    "rate": format!("{RATE}/s"),
                    "duration": format!("{SECONDS}s"),
                    "maxInFlight": 50,
                    "requests": [{ "name": "me", "method": "GET", "path": "/api/v2/users/me" }]
                }],
                "thresholds": { "http_req_failed": ["rate<0.01"] }
            }
        }
    })
}

#[tokio::test]
async fn a_killed_operator_is_replaced_and_the_running_test_ends_as_without_it() {
    let install = installed().await;
    let _alone = OPERATOR.lock().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-restart";
    let name = "survives";
    cluster.create_namespace(ns).await.unwrap();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(&dir.path().join("mock.log"), MOCK_ARGS);
    mock.up().await;
    kubectl_apply_ok(ns, &restart_loadtest(name, &mock.url(), &redis.url())).await;
    let tests = loadtests(client.clone(), ns);

    // Mid-run (about a quarter in), the operator's process dies.
    let before = running_with(&tests, name, RATE * SECONDS / 4).await;
    let recorded = before["sessionTokenSha256"].as_str().unwrap().to_string();
    assert_eq!(recorded.len(), 64, "{before:#}");
    let killed_at = Instant::now();
    let dead = kill_operator(&client).await;
    let follower = tokio::spawn({
        let tests = tests.clone();
        async move { follow(&tests, name, Duration::from_secs(240)).await }
    });
    operator_replaced(&client, &dead, install.metrics).await;
    eventually(Duration::from_secs(90), "the Resumed Event", || async {
        let events = events_of(ns, name).await;
        events.iter().any(|e| e.reason == "Resumed").then_some(())
    })
    .await;
    let resumed_after = killed_at.elapsed();
    let Followed {
        status,
        phases,
        counts,
    } = follower.await.unwrap();

    let arrivals = mock.arrivals().await;
    let events = events_of(ns, name).await;
    eprintln!(
        "restart: operator killed {:.1}s into the run (its last status), the test resumed (the Event) {:.1}s after the kill; it ended {:.1}s after the kill; phases {phases:?}; status requests {counts:?}; the mock received {}; most in any 1 s: {}",
        before["progress"]["elapsedSeconds"].as_f64().unwrap_or(0.0),
        resumed_after.as_secs_f64(),
        killed_at.elapsed().as_secs_f64(),
        arrivals.len(),
        most_in_window(&arrivals, 1.0)
    );
    assert_eq!(
        phase(&status),
        "Succeeded",
        "{status:#}\nevents {events:?}\n{}",
        cluster.diagnostics()
    );
    // Exactly what the target received: nothing lost, nothing counted twice.
    let counted = status["requests"].as_u64().unwrap();
    assert_eq!(counted, arrivals.len() as u64, "{status:#}");
    // No second wave: never more than the plan's arrivals in all, nor above the fleet's cap.
    assert!(counted <= RATE * SECONDS, "{counted} > {}", RATE * SECONDS);
    assert!(
        counted >= RATE * SECONDS * 9 / 10,
        "{counted}: the workers kept running their shards"
    );
    let most = most_in_window(&arrivals, 1.0);
    assert!(most <= 25 + 2, "{most} in one second: a second wave");
    // The status never went backwards, and the resumed run wrote it while it ran.
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    let at_kill = before["requests"].as_u64().unwrap();
    assert!(
        counts.iter().any(|&n| n > at_kill && n < counted),
        "no live status from the resumed run: {counts:?}"
    );
    assert!(
        phases.iter().all(|p| p == "Running" || p == "Succeeded"),
        "{phases:?}"
    );
    assert_eq!(status["sessionTokenSha256"], recorded.as_str());
    // The Event names the restart and the resume.
    assert!(
        events.iter().any(|e| e.reason == "Resumed"
            && e.message
                .contains("the controller restarted: resuming test")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_test_that_cannot_be_resumed_ends_with_its_reason_and_its_load_stops() {
    let install = installed().await;
    let _alone = OPERATOR.lock().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let ns = "e2e-restart-impossible";
    let name = "edited";
    cluster.create_namespace(ns).await.unwrap();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(&dir.path().join("mock.log"), MOCK_ARGS);
    mock.up().await;
    let mut lt = restart_loadtest(name, &mock.url(), &redis.url());
    lt["spec"]["workers"] = json!(2);
    lt["spec"]["plan"]["scenarios"][0]["duration"] = json!("120s");
    kubectl_apply_ok(ns, &lt).await;
    let tests = loadtests(client.clone(), ns);
    running_with(&tests, name, RATE * 2).await;

    // The spec edited while it runs (the run goes on with the plan it started with), then the
    // operator dies: the new one cannot resume workers that run another plan than the spec's.
    lt["spec"]["plan"]["scenarios"][0]["rate"] = json!("40/s");
    kubectl_apply_ok(ns, &lt).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead = kill_operator(&client).await;
    operator_replaced(&client, &dead, install.metrics).await;
    let status = follow(&tests, name, Duration::from_secs(120)).await.status;
    let failed_at = mock.now().await;
    assert_eq!(phase(&status), "Failed", "{status:#}");
    let complete = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Complete")
        .unwrap()
        .clone();
    assert_eq!(complete["reason"], "ControllerRestarted", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("cannot resume it: the plan is not the one its workers run"),
        "{message}"
    );
    assert_eq!(status["cleanedUp"], true, "{status:#}");

    // The Job is gone (the default policy, onSuccess, would have kept it), and the load stops.
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(30), "the Job deleted", || async {
        jobs.list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}={name}")))
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    // Bound: the pods' deletion by the garbage collector and their kill (the kubelet sends
    // SIGTERM; the worker aborts its shard at once). Generous on a busy machine.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let arrivals = mock.arrivals().await;
    let last = arrivals.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "cannot resume: Failed seen at {failed_at:.1}s of the mock's clock, its last request at {last:.1}s ({:+.1}s); {} requests in all",
        last - failed_at,
        arrivals.len()
    );
    assert!(
        last < failed_at + 10.0,
        "the mock still received requests {:.1}s after the test failed",
        last - failed_at
    );
}
