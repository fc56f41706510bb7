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

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use pacer_tests::kube::{Cluster, eventually, free_port, tools_dir};
use pacer_tests::{RedisServer, pacer_bin, workspace_root};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const RELEASE_NS: &str = "pacer-system";
/// The label the operator puts on everything a LoadTest owns.
const LABEL_LOADTEST: &str = "pacer.dev/loadtest";
/// The operator's pods.
const OPERATOR_PODS: &str = "app.kubernetes.io/component=controller";

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

/// `GET http://127.0.0.1:<port><path>`: the status code and the body (the mock and the
/// operator answer with a length, never chunked, for these), or `None` when nothing answers.
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

/// What the `helm install` left running.
struct Install {
    metrics: u16,
}

static INSTALL: OnceCell<Install> = OnceCell::const_new();

/// The tests here kill the one operator: one at a time.
static OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn installed() -> &'static Install {
    INSTALL.get_or_init(install).await
}

/// The chart with one operator replica (its replacement is the ReplicaSet's), listening on
/// loopback (every pod shares the host's network here), TLS as by default.
async fn install() -> Install {
    let build = std::thread::spawn(pacer_bin);
    let cluster = Cluster::shared();
    build.join().unwrap();
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
            "controller.replicas=1",
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
    operator_ready(metrics, Duration::from_secs(60)).await;
    Install { metrics }
}

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

async fn kubectl_apply_ok(ns: &str, manifest: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loadtest.yaml");
    std::fs::write(&path, serde_saphyr::to_string(manifest).unwrap()).unwrap();
    let out = Cluster::shared()
        .kubectl(&["apply", "-n", ns, "-f", path.to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn status_of(tests: &Api<DynamicObject>, name: &str) -> Option<Value> {
    let lt = tests.get_opt(name).await.ok()??;
    Some(lt.data.get("status").cloned().unwrap_or(Value::Null))
}

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

/// The Events of an object: `(reason, message)`.
async fn events_of(ns: &str, name: &str) -> Vec<(String, String)> {
    let out = Cluster::shared()
        .kubectl_ok(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "json",
        ])
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&e["reason"]), s(&e["message"]))
        })
        .collect()
}

/// `pacer mock` as a process on a free loopback port, without auth or limits of its own (the
/// plan's fleet limit is what paces), recording every arrival; killed on drop.
struct MockProcess {
    port: u16,
    child: std::process::Child,
}

impl MockProcess {
    fn start(log: &Path) -> Self {
        let port = free_port().unwrap();
        let out = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(pacer_bin())
            .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--auth", "off", "--no-limits", "--record-arrivals"])
            .env_remove("PACER_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn up(&self) {
        eventually(Duration::from_secs(30), "pacer mock answers", || async {
            http_get(self.port, "/_mock/stats").await.map(|_| ())
        })
        .await;
    }

    /// When each API request arrived, in seconds since the mock started.
    async fn arrivals(&self) -> Vec<f64> {
        let (code, body) = http_get(self.port, "/_mock/arrivals").await.unwrap();
        assert_eq!(code, 200, "{body}");
        let view: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(view["dropped"], 0);
        view["arrivals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["tUs"].as_u64().unwrap() as f64 / 1e6)
            .collect()
    }

    /// The mock's clock now (seconds since it started).
    async fn now(&self) -> f64 {
        let (_, body) = http_get(self.port, "/_mock/stats").await.unwrap();
        let stats: Value = serde_json::from_str(&body).unwrap();
        stats["uptimeUs"].as_u64().unwrap() as f64 / 1e6
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The most arrivals in any window of `width` seconds.
fn most_in_window(arrivals: &[f64], width: f64) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut most = 0;
    let mut first = 0;
    for (i, &t) in sorted.iter().enumerate() {
        while sorted[first] <= t - width {
            first += 1;
        }
        most = most.max(i + 1 - first);
    }
    most
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

/// Follow a LoadTest until it ends, recording every phase and every `requests` the status
/// showed (which must never go backwards).
async fn follow(
    tests: &Api<DynamicObject>,
    name: &str,
    limit: Duration,
) -> (Value, Vec<String>, Vec<u64>) {
    let started = Instant::now();
    let mut phases: Vec<String> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    loop {
        assert!(
            started.elapsed() < limit,
            "{name} did not end within {limit:?}; phases {phases:?}\n{}",
            Cluster::shared().diagnostics()
        );
        if let Some(s) = status_of(tests, name).await {
            let p = match phase(&s) {
                "" => "Pending".to_string(),
                p => p.to_string(),
            };
            if phases.last() != Some(&p) {
                phases.push(p.clone());
            }
            if let Some(n) = s["requests"].as_u64()
                && counts.last() != Some(&n)
            {
                counts.push(n);
            }
            if ["Succeeded", "Failed", "Aborted"].contains(&p.as_str()) {
                return (s, phases, counts);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the test is Running and its status counts at least `requests`.
async fn running_with(tests: &Api<DynamicObject>, name: &str, requests: u64) -> Value {
    eventually(
        Duration::from_secs(120),
        &format!("{name} Running with {requests} requests"),
        || async {
            let s = status_of(tests, name).await?;
            (phase(&s) == "Running" && s["requests"].as_u64()? >= requests).then_some(s)
        },
    )
    .await
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
    let mock = MockProcess::start(&dir.path().join("mock.log"));
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
        events
            .iter()
            .any(|(reason, _)| reason == "Resumed")
            .then_some(())
    })
    .await;
    let resumed_after = killed_at.elapsed();
    let (status, phases, counts) = follower.await.unwrap();

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
        events.iter().any(|(reason, message)| reason == "Resumed"
            && message.contains("the controller restarted: resuming test")),
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
    let mock = MockProcess::start(&dir.path().join("mock.log"));
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
    let (status, _, _) = follow(&tests, name, Duration::from_secs(120)).await;
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
