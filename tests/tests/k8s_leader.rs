//! Two operator replicas with leader election (issue 17 part 3), on a real Kubernetes API
//! server (the harness of `pacer_tests::kube`): `helm install` of charts/pacer with its
//! default `replicas: 2`. One replica holds the Lease `pacer-leader` and labels its pod
//! `pacer.dev/role: leader`, the other labels its pod `standby` and waits. Shown: the
//! leader's process killed with SIGKILL mid-run, the standby takes the Lease (the time is
//! measured and printed) and resumes the running LoadTest, which ends Succeeded with its status
//! counting exactly what `pacer mock` received; and a `helm upgrade` changing another value in
//! the middle of a test (a rolling update of both replicas) leaves the test's result intact.
//! The operator's ServiceAccount may touch leases and pod labels in its own namespace only.
//! And with no operator left at all (the Deployment scaled to 0), the workers stop their load
//! on their own within the LoadTest's `spec.lostAfter`.
//! Needs `make e2e-deps`.
//!
//! Pods share the host's network here: both replicas are told `--http-listen=127.0.0.1:0`
//! (any free port, through `controller.extraArgs`; the last flag wins), and only the leader
//! binds the workers' port. The steps around the installed chart are `pacer_tests::kube::e2e`
//! (each test binary gets its own API server and release).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use pacer_tests::kube::e2e::{
    Followed, MockProcess, events_of, follow, helm, kubectl_apply_ok, loadtests, most_in_window,
    phase, running_with,
};
use pacer_tests::kube::{Cluster, eventually, free_port, group_alive};
use pacer_tests::{RedisServer, pacer_bin, workspace_root};
use serde_json::{Value, json};
use tokio::sync::{Mutex, OnceCell};

const RELEASE_NS: &str = "pacer-system";
const OPERATOR_PODS: &str = "app.kubernetes.io/component=controller";
const LEASE: &str = "pacer-leader";
const OPERATOR_SA: &str = "system:serviceaccount:pacer-system:pacer";

/// The tests here take the operator down: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The values the release was installed with (an upgrade reuses them).
struct Install {
    chart: String,
}

static INSTALL: OnceCell<Install> = OnceCell::const_new();

async fn installed() -> &'static Install {
    INSTALL.get_or_init(install).await
}

async fn install() -> Install {
    let build = std::thread::spawn(pacer_bin);
    let cluster = Cluster::shared();
    build.join().unwrap();
    let grpc = free_port().unwrap();
    let chart = workspace_root().join("charts").join("pacer");
    let chart = chart.to_str().unwrap().to_string();
    let out = helm(
        cluster,
        &[
            "install",
            "pacer",
            &chart,
            "-n",
            RELEASE_NS,
            "--create-namespace",
            // controller.replicas: the chart's default, 2
            "--set",
            &format!("service.grpcPort={grpc}"),
            "--set",
            "controller.listenHost=127.0.0.1",
            "--set",
            &format!("controller.advertiseAddress=127.0.0.1:{grpc}"),
            "--set",
            "controller.statusInterval=1s",
            "--set",
            &format!(
                "controller.extraArgs={{--worker-server-name=pacer.{RELEASE_NS}.svc,--http-listen=127.0.0.1:0}}"
            ),
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
    Install { chart }
}

/// The running operator pods (not being deleted): name, pid of the process the kubelet runs,
/// and the `pacer.dev/role` label.
async fn operator_pods(client: &kube::Client) -> Vec<(String, Option<u32>, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let kubelet = Cluster::shared().kubelet().unwrap();
    pods.list(&ListParams::default().labels(OPERATOR_PODS))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let name = p.metadata.name?;
            let role = p
                .metadata
                .labels
                .and_then(|l| l.get("pacer.dev/role").cloned())
                .unwrap_or_default();
            Some((name.clone(), kubelet.pid(RELEASE_NS, &name), role))
        })
        .collect()
}

/// The Lease's holder, if any.
async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    leases
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Two running replicas, one holding the Lease and labelled leader, the other labelled
/// standby: (leader, its pid, standby).
async fn elected(client: &kube::Client) -> (String, u32, String) {
    eventually(
        Duration::from_secs(90),
        "a leader and a standby, labelled",
        || async {
            let leader = holder(client).await?;
            let pods = operator_pods(client).await;
            let (_, pid, role) = pods.iter().find(|(n, _, _)| *n == leader)?;
            let standby = pods
                .iter()
                .find(|(n, _, r)| *n != leader && r == "standby")?;
            let pid = (*pid)?;
            (role == "leader" && pods.len() == 2).then(|| (leader.clone(), pid, standby.0.clone()))
        },
    )
    .await
}

const RATE: u64 = 20;

/// `pacer mock` without its token check and its default limits: the load is the plan's alone.
const MOCK_ARGS: &[&str] = &["--auth", "off", "--no-limits"];

/// The fleet limit of [`with_fleet_limit`]: a little above `RATE`, so it caps what any number
/// of workers could send (a second wave would show as seconds at the cap).
const FLEET_CAP: u64 = 25;

/// The LoadTest on 3 workers sharing a `scope: fleet` limit through `redis`.
fn with_fleet_limit(mut lt: Value, redis: &str) -> Value {
    lt["spec"]["workers"] = json!(3);
    lt["spec"]["redis"] = json!({ "url": redis });
    lt["spec"]["plan"]["limits"] = json!([{ "name": "fleet-cap", "limit": format!("{FLEET_CAP}/s"), "burst": 1, "scope": "fleet" }]);
    lt
}

/// 2 workers, `RATE`/s for `seconds`, a threshold that holds.
fn loadtest(name: &str, target: &str, seconds: u64) -> Value {
    json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": name },
        "spec": {
            "workers": 2,
            "startTimeout": "90s",
            "plan": {
                "name": name,
                "target": target,
                "scenarios": [{
                    "name": "me",
                    "executor": "constant-arrival-rate",
                    "rate": format!("{RATE}/s"),
                    "duration": format!("{seconds}s"),
                    "maxInFlight": 50,
                    "requests": [{ "name": "me", "method": "GET", "path": "/api/v2/users/me" }]
                }],
                "thresholds": { "http_req_failed": ["rate<0.01"] }
            }
        }
    })
}

/// The test ended as without the disruption: Succeeded, every planned request sent once, the
/// status counting exactly what the mock received, never going backwards.
async fn assert_intact(followed: &Followed, mock: &MockProcess, planned: u64, what: &str) {
    let Followed {
        status,
        phases,
        counts,
    } = followed;
    let received = mock.arrivals().await.len() as u64;
    assert_eq!(
        phase(status),
        "Succeeded",
        "{what}: {status:#}\n{}",
        Cluster::shared().diagnostics()
    );
    assert_eq!(status["requests"], received, "{what}: {status:#}");
    assert_eq!(received, planned, "{what}: every planned request, once");
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "{what}: {counts:?}"
    );
    // Followed from its creation: once Running, only Running until Succeeded.
    let from_running: Vec<&str> = phases
        .iter()
        .map(String::as_str)
        .skip_while(|p| *p != "Running")
        .collect();
    assert_eq!(from_running, ["Running", "Succeeded"], "{what}: {phases:?}");
}

#[tokio::test]
async fn the_operator_may_hold_its_lease_and_label_its_pods_in_its_namespace_only() {
    installed().await;
    let cluster = Cluster::shared();
    let can = |verb: &'static str, resource: &'static str, ns: &'static str| async move {
        let out = cluster
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                ns,
                "--as",
                OPERATOR_SA,
            ])
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for verb in ["get", "create", "update"] {
        assert!(
            can(verb, "leases.coordination.k8s.io", RELEASE_NS).await,
            "{verb} leases"
        );
    }
    assert!(can("patch", "pods", RELEASE_NS).await);
    for (verb, resource, ns) in [
        ("delete", "leases.coordination.k8s.io", RELEASE_NS),
        ("list", "leases.coordination.k8s.io", RELEASE_NS),
        ("update", "leases.coordination.k8s.io", "default"),
        ("patch", "pods", "default"),
        ("update", "pods", RELEASE_NS),
        ("delete", "pods", RELEASE_NS),
    ] {
        assert!(
            !can(verb, resource, ns).await,
            "may {verb} {resource} in {ns}"
        );
    }
}

#[tokio::test]
async fn a_killed_leaders_standby_takes_the_lease_and_the_running_test_ends_as_without_it() {
    installed().await;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let (ns, name, seconds) = ("e2e-failover", "failover", 30);
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(&dir.path().join("mock.log"), MOCK_ARGS);
    mock.up().await;
    let redis = RedisServer::start();
    let (leader, pid, standby) = elected(&client).await;
    // As the issue shows it: 3 workers under a fleet limit kept in Redis.
    let lt = with_fleet_limit(loadtest(name, &mock.url(), seconds), &redis.url());
    kubectl_apply_ok(ns, &lt).await;
    let tests = loadtests(client.clone(), ns);
    let follower = tokio::spawn({
        let tests = tests.clone();
        async move { follow(&tests, name, Duration::from_secs(240)).await }
    });
    running_with(&tests, name, RATE * 3).await;

    // SIGKILL: no goodbye, the Lease is left to expire.
    let killed = Instant::now();
    let pgid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).unwrap();
    let took = eventually(
        Duration::from_secs(60),
        "the standby takes the Lease",
        || async {
            (holder(&client).await.as_deref() == Some(standby.as_str())).then(|| killed.elapsed())
        },
    )
    .await;
    let followed = follower.await.unwrap();
    let events = events_of(ns, name).await;
    let most = most_in_window(&mock.arrivals().await, 1.0);
    eprintln!(
        "failover: leader {leader} killed; {standby} took the Lease {:.1} s later; the test ended {:.1} s after the kill; phases {:?}; status requests {:?}; most in any 1 s: {most}",
        took.as_secs_f64(),
        killed.elapsed().as_secs_f64(),
        followed.phases,
        followed.counts
    );
    // No second wave: no second of the run above the fleet's cap (and its burst).
    assert!(
        most as u64 <= FLEET_CAP + 2,
        "{most} requests in one second"
    );
    // The Lease lasts 15 s, looked at every 2 s; the bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(30), "took over after {took:?}");
    assert_intact(&followed, &mock, RATE * seconds, "failover").await;
    assert!(events.iter().any(|e| e.reason == "Resumed"), "{events:?}");
    // The new leader is labelled, and a new standby (the ReplicaSet's replacement) too.
    let (now_leader, _, _) = elected(&client).await;
    assert_eq!(now_leader, standby);
}

#[tokio::test]
async fn a_helm_upgrade_mid_test_leaves_its_result_intact() {
    let install = installed().await;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let (ns, name, seconds) = ("e2e-upgrade", "upgraded", 25);
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(&dir.path().join("mock.log"), MOCK_ARGS);
    mock.up().await;
    let (before, _, _) = elected(&client).await;
    kubectl_apply_ok(ns, &loadtest(name, &mock.url(), seconds)).await;
    let tests = loadtests(client.clone(), ns);
    let follower = tokio::spawn({
        let tests = tests.clone();
        async move { follow(&tests, name, Duration::from_secs(240)).await }
    });
    running_with(&tests, name, RATE * 3).await;

    // Another value changed: a new pod template, so both replicas are replaced one by one.
    let upgrading = Instant::now();
    let out = helm(
        cluster,
        &[
            "upgrade",
            "pacer",
            &install.chart,
            "-n",
            RELEASE_NS,
            "--reuse-values",
            "--set",
            "controller.statusInterval=2s",
            "--wait",
            "--timeout",
            "150s",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "helm upgrade: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.diagnostics()
    );
    let upgraded_in = upgrading.elapsed();
    let followed = follower.await.unwrap();
    let (after, _, _) = elected(&client).await;
    eprintln!(
        "upgrade: helm upgrade --wait took {:.1} s; leader {before} before, {after} after; phases {:?}; status requests {:?}",
        upgraded_in.as_secs_f64(),
        followed.phases,
        followed.counts
    );
    assert_ne!(before, after, "the rollout replaced the leader's pod");
    assert_intact(&followed, &mock, RATE * seconds, "upgrade").await;
}

/// Both replicas gone mid-test (the Deployment scaled to 0, as an uninstall or a lost node
/// pool would leave it): the worker pods, which nobody stops, stop their load on their own
/// within the LoadTest's `spec.lostAfter` (5 s here) of the last operator's exit.
#[tokio::test]
async fn with_no_operator_left_the_workers_stop_their_load_within_lost_after() {
    installed().await;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::shared();
    let client = cluster.client().await.unwrap();
    let (ns, name, seconds) = ("e2e-orphaned", "orphaned", 60);
    let lost_after = Duration::from_secs(5);
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start(&dir.path().join("mock.log"), MOCK_ARGS);
    mock.up().await;
    elected(&client).await;
    let mut lt = loadtest(name, &mock.url(), seconds);
    lt["spec"]["lostAfter"] = json!("5s");
    kubectl_apply_ok(ns, &lt).await;
    let tests = loadtests(client.clone(), ns);
    running_with(&tests, name, RATE * 2).await;

    let pids: Vec<u32> = operator_pods(&client)
        .await
        .into_iter()
        .filter_map(|(_, pid, _)| pid)
        .collect();
    let scale = |replicas: &'static str| {
        let cluster = Cluster::shared();
        async move {
            cluster
                .kubectl_ok(&[
                    "scale",
                    "deployment/pacer",
                    "-n",
                    RELEASE_NS,
                    &format!("--replicas={replicas}"),
                ])
                .await
                .unwrap();
        }
    };
    scale("0").await;
    eventually(
        Duration::from_secs(60),
        "every operator process gone",
        || async { pids.iter().all(|p| !group_alive(*p)).then_some(()) },
    )
    .await;
    let gone = Instant::now();
    let mut last = mock.arrivals().await.len();
    let mut last_growth = Duration::ZERO;
    while gone.elapsed() < lost_after + Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = mock.arrivals().await.len();
        if now != last {
            last = now;
            last_growth = gone.elapsed();
        }
    }
    eprintln!(
        "orphaned: the last operator process gone; the mock's last request {:.2} s later (lostAfter {lost_after:?}); {last} of the plan's {} sent",
        last_growth.as_secs_f64(),
        RATE * seconds
    );
    // The workers last heard from the operator at most a heartbeat (1 s) before it was gone.
    assert!(
        last_growth <= lost_after + Duration::from_secs(3),
        "the workers kept sending {last_growth:?} after the operator was gone"
    );
    assert!(
        (last as u64) < RATE * seconds / 2,
        "{last}: the load did not stop"
    );

    // Back to two replicas for the other tests; the test itself is deleted.
    scale("2").await;
    elected(&client).await;
    cluster
        .kubectl_ok(&["delete", "loadtest", name, "-n", ns, "--wait=false"])
        .await
        .unwrap();
}
