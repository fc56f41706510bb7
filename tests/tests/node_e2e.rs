//! pacer's image in real containers under a real kubelet (`make e2e-node`): the harness's
//! control plane with a real node (containerd, the kubelet and kube-scheduler of `make
//! e2e-node-deps`; `pacer_tests::kube` node.rs), the image `make image` built imported into
//! containerd (nothing is pulled), `helm install` of charts/pacer with `hostNetwork: true` (there
//! is no pod network here: every pod, the mock and Redis are on 127.0.0.1), and what only a real
//! node shows: the chart's pod spec in force (the image's user 65532, the read-only root
//! filesystem, probes deciding readiness), the user story with 3 worker containers and Redis,
//! and an image that does not exist failing the LoadTest with the kubelet's reason.
//!
//! Not part of `make test`: it needs the image (`PACER_IMAGE_ARCHIVE`, `PACER_IMAGE`, as `make
//! e2e-node` passes them) and the `node-e2e` feature. docs/testing.md.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use pacer_tests::kube::e2e::{
    MockProcess, RELEASE_NS, helm, http_get, loadtests, phase, wait_phase,
};
use pacer_tests::kube::{
    Cluster, ClusterOptions, ImageArchive, KUBERNETES_VERSION, RealNodeOptions, ctr, eventually,
    free_port, tools_dir,
};
use pacer_tests::{RedisServer, pacer_bin, workspace_root};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The label the operator puts on everything a LoadTest owns.
const LABEL_LOADTEST: &str = "pacer.dev/loadtest";
/// The user the image runs as (the Dockerfile's `USER`).
const IMAGE_UID: u32 = 65532;

/// The image under test: `PACER_IMAGE` (default `pacer:<version>`, the chart's default) from
/// the archive `PACER_IMAGE_ARCHIVE` (default `target/image/pacer-<version>.oci.tar`, what `make
/// image` writes).
fn image() -> (String, PathBuf) {
    let version = env!("CARGO_PKG_VERSION");
    let name = std::env::var("PACER_IMAGE").unwrap_or_else(|_| format!("pacer:{version}"));
    let archive = std::env::var("PACER_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            workspace_root()
                .join("target")
                .join("image")
                .join(format!("pacer-{version}.oci.tar"))
        });
    assert!(
        archive.is_file(),
        "{} is missing: run `make image` (or `make e2e-node`, which does)",
        archive.display()
    );
    (name, archive)
}

/// The shared cluster, with a real node holding the image.
fn cluster() -> &'static Cluster {
    Cluster::shared_with(|| {
        let (name, archive) = image();
        ClusterOptions {
            real_node: Some(RealNodeOptions {
                images: vec![ImageArchive::new(archive, &name)],
            }),
            ..ClusterOptions::default()
        }
    })
}

/// `kubectl apply -f` of `manifest` written to a file, as a user would.
async fn kubectl_apply_ok(ns: &str, manifest: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    cluster()
        .kubectl_ok(&["apply", "-n", ns, "-f", path.to_str().unwrap()])
        .await
        .unwrap();
}

/// What the shared `helm install` left running.
struct Install {
    metrics: u16,
    /// A loopback port nothing listens on: the registry of the image that does not exist.
    no_registry: u16,
}

static INSTALL: OnceCell<Install> = OnceCell::const_new();

async fn installed() -> &'static Install {
    INSTALL.get_or_init(install).await
}

/// `helm install --wait` with the image: the Deployment is Ready only once the kubelet's
/// readiness probe (`/readyz` on the metrics port) passed in the running container.
async fn install() -> Install {
    // the pacer binary (the mock) builds while the cluster starts
    let build = std::thread::spawn(pacer_bin);
    let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
    build.join().unwrap();
    let (image, _) = image();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let grpc = free_port().unwrap();
    let metrics = free_port().unwrap();
    let no_registry = free_port().unwrap();
    let api_port = cluster.server().rsplit_once(':').unwrap().1.to_string();
    let chart = workspace_root().join("charts").join("pacer");
    let example = chart.join("examples").join("values-host-network.yaml");
    let started = Instant::now();
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
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={tag}"),
            // hostNetwork, one replica, loopback listeners, the API server's address: the
            // example for a cluster without a pod network, as a user would install it
            "-f",
            example.to_str().unwrap(),
            "--set",
            &format!("service.grpcPort={grpc}"),
            "--set",
            &format!("service.metricsPort={metrics}"),
            "--set",
            &format!("controller.advertiseAddress=127.0.0.1:{grpc}"),
            "--set-string",
            &format!("controller.extraEnv[1].value={api_port}"),
            "--set",
            "controller.statusInterval=1s",
            "--set",
            &format!("worker.allowedImages={{127.0.0.1:{no_registry}/*}}"),
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "helm install failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.diagnostics()
    );
    eprintln!(
        "helm install --wait on the real node: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Install {
        metrics,
        no_registry,
    }
}

/// The running container of a pod: its containerd id and its process's pid (`ctr tasks ls`).
async fn container_of(ns: &str, pod: &str) -> (String, u32) {
    let client = cluster().client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let id = eventually(
        Duration::from_secs(60),
        &format!("pod {ns}/{pod} running"),
        || async {
            let p = pods.get(pod).await.ok()?;
            let statuses = p.status?.container_statuses?;
            let s = statuses.first()?;
            s.state.as_ref()?.running.as_ref()?;
            s.container_id.clone()
        },
    )
    .await;
    let id = id.strip_prefix("containerd://").unwrap().to_string();
    let socket = cluster().real_node().unwrap().containerd_socket.clone();
    let tasks = ctr(&socket, &["-n", "k8s.io", "tasks", "ls"]).unwrap();
    let pid = tasks
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"));
    (id, pid)
}

/// The container's OCI spec (as containerd holds it) and its process's `/proc`: the user and
/// the read-only root filesystem are in force.
fn assert_non_root_read_only(id: &str, pid: u32) {
    let socket = cluster().real_node().unwrap().containerd_socket.clone();
    let info: Value =
        serde_json::from_str(&ctr(&socket, &["-n", "k8s.io", "containers", "info", id]).unwrap())
            .unwrap();
    let spec = &info["Spec"];
    assert_eq!(spec["process"]["user"]["uid"], IMAGE_UID, "{spec:#}");
    assert_eq!(spec["root"]["readonly"], true, "{spec:#}");
    assert_eq!(spec["process"]["noNewPrivileges"], true, "{spec:#}");

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, [IMAGE_UID; 4], "real, effective, saved, fs");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(caps, "0000000000000000", "capabilities dropped");
    // the mount at / in the container's mount namespace: `... / / ro,...`
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    let options = root.split_whitespace().nth(5).unwrap();
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the root filesystem is read-only: {root}"
    );
}

/// The node is a real kubelet of the pinned version on containerd, Ready at 127.0.0.1, and a
/// plain pod of the image is scheduled onto it and serves `pacer mock` on loopback, as the
/// image's user with a read-only root filesystem.
#[tokio::test]
async fn the_real_node_runs_a_plain_pod_of_the_image() {
    let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
    let client = cluster.client().await.unwrap();
    let node: Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["get", "node", "127.0.0.1", "-o", "json"])
            .await
            .unwrap(),
    )
    .unwrap();
    let info = &node["status"]["nodeInfo"];
    assert_eq!(info["kubeletVersion"], format!("v{KUBERNETES_VERSION}"));
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{info:#}"
    );
    let version = std::process::Command::new(tools_dir().join("kubelet"))
        .arg("--version")
        .output()
        .unwrap();
    eprintln!(
        "kubelet --version: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );

    let ns = "node-plain";
    cluster.create_namespace(ns).await.unwrap();
    let (image, _) = image();
    let port = free_port().unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "mock" },
        "spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "mock",
                "image": image,
                "imagePullPolicy": "Never",
                "args": ["mock", "--listen", format!("127.0.0.1:{port}")],
                "securityContext": {
                    "runAsNonRoot": true,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let (id, pid) = container_of(ns, "mock").await;
    let scheduled = pods.get("mock").await.unwrap();
    assert_eq!(
        scheduled.spec.unwrap().node_name.as_deref(),
        Some("127.0.0.1"),
        "bound by kube-scheduler"
    );
    assert_eq!(
        scheduled.status.unwrap().pod_ip.as_deref(),
        Some("127.0.0.1")
    );
    eventually(
        Duration::from_secs(30),
        "pacer mock in its container answers",
        || async { (http_get(port, "/_mock/stats").await?.0 == 200).then_some(()) },
    )
    .await;
    assert_non_root_read_only(&id, pid);
}

/// The chart on the real node: the operator's Deployment becomes Ready through its probes,
/// its container runs as the image's user with a read-only root filesystem; the user story
/// (examples/loadtest-user-story.yaml) with 3 worker containers, Redis and the mock on
/// loopback ends Succeeded with the status's count equal to the mock's.
#[tokio::test]
async fn helm_install_runs_the_user_story_in_containers() {
    let install = installed().await;
    let cluster = cluster();
    let client = cluster.client().await.unwrap();

    // the Deployment is available: its pod Ready by the kubelet's readiness probe
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
    let deployment = deployments.get("pacer").await.unwrap();
    assert_eq!(
        deployment.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1)
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let operator = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .unwrap();
    let operator_name = operator.metadata.name.clone().unwrap();
    let container = &operator.spec.as_ref().unwrap().containers[0];
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    let (id, pid) = container_of(RELEASE_NS, &operator_name).await;
    assert_non_root_read_only(&id, pid);
    assert_eq!(
        http_get(install.metrics, "/readyz").await.map(|r| r.0),
        Some(200)
    );

    // the user story, as k8s_e2e.rs runs it on the process kubelet
    let ns = "node-user-story";
    let name = "analytics-details-query";
    cluster.create_namespace(ns).await.unwrap();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start_plain(
        &dir.path().join("mock.log"),
        &["--client", "genesys-e2e:e2e-secret:demo-org"],
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
            "genesys-client",
            "-n",
            ns,
            "--from-literal=clientId=genesys-e2e",
            "--from-literal=clientSecret=e2e-secret",
        ])
        .await
        .unwrap();
    let example =
        std::fs::read_to_string(workspace_root().join("examples/loadtest-user-story.yaml"))
            .unwrap();
    let mut lt: Value = serde_saphyr::from_str(&example).unwrap();
    assert_eq!(lt["spec"]["workers"], 3);
    let env = lt["spec"]["workerTemplate"]["env"].as_array_mut().unwrap();
    let target = env.iter_mut().find(|e| e["name"] == "TARGET").unwrap();
    target["value"] = json!(mock.url());
    lt["spec"]["redis"] = json!({ "url": redis.url() });
    lt["spec"]["plan"]["duration"] = json!("10s");
    let started = Instant::now();
    kubectl_apply_ok(ns, &lt).await;

    // while it runs: three worker containers, each as the image's user, read-only
    let tests = loadtests(client.clone(), ns);
    wait_phase(
        &tests,
        name,
        &["Running", "Succeeded", "Failed", "Aborted"],
        Duration::from_secs(120),
    )
    .await;
    let workers: Api<Pod> = Api::namespaced(client.clone(), ns);
    let worker_pods: Vec<String> = workers
        .list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(worker_pods.len(), 3, "{worker_pods:?}");
    let (id, pid) = container_of(ns, &worker_pods[0]).await;
    assert_non_root_read_only(&id, pid);

    let status = wait_phase(
        &tests,
        name,
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(phase(&status), "Succeeded", "{status:#}");
    eprintln!(
        "user story on the real node: {} requests, {:.1} s from kubectl apply to Succeeded",
        status["requests"],
        started.elapsed().as_secs_f64()
    );
    let requests = status["requests"].as_u64().unwrap();
    assert!(requests > 0);
    let stats = mock.stats().await;
    assert_eq!(
        stats["requests"]["byRoute"]["POST /api/v2/analytics/conversations/details/query"],
        requests,
        "the mock's count against the status's: {:#}",
        stats["requests"]
    );
    assert_eq!(stats["tokens"]["invalidClient"], 0);
    assert_eq!(stats["auth"]["missing"], 0);
}

/// A LoadTest whose image does not exist (a registry on a loopback port nothing listens on, so
/// the pull fails without leaving the machine) ends Failed, its message naming the pod and the
/// kubelet's reason.
#[tokio::test]
async fn an_image_that_does_not_exist_fails_the_loadtest_with_the_kubelets_reason() {
    let install = installed().await;
    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let ns = "node-no-image";
    let name = "no-image";
    cluster.create_namespace(ns).await.unwrap();
    let image = format!("127.0.0.1:{}/pacer:does-not-exist", install.no_registry);
    let lt = json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": name },
        "spec": {
            "workers": 1,
            "startTimeout": "15s",
            "image": image,
            "plan": {
                "name": name,
                "target": "http://127.0.0.1:9",
                "scenarios": [{
                    "name": "me",
                    "executor": "constant-vus",
                    "vus": 1,
                    "duration": "2s",
                    "requests": [{ "name": "me", "method": "GET", "path": "/" }],
                }],
            },
        },
    });
    kubectl_apply_ok(ns, &lt).await;
    let tests = loadtests(client.clone(), ns);
    let status = wait_phase(
        &tests,
        name,
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(phase(&status), "Failed", "{status:#}");
    let pods: Vec<String> = Api::<Pod>::namespaced(client, ns)
        .list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let message = status["message"].as_str().unwrap_or_default();
    eprintln!("an image that does not exist: {message}");
    assert!(
        pods.iter().any(|p| message.contains(p.as_str())),
        "{message} names none of {pods:?}"
    );
    assert!(
        ["ErrImagePull", "ImagePullBackOff"]
            .iter()
            .any(|r| message.contains(r)),
        "the kubelet's reason: {message}"
    );
}

/// A worker container killed mid-run (SIGKILL to its task, as an OOM kill would), as
/// docs/distributed.md "Losing a worker" promises under `onWorkerLoss: continue`: the worker is
/// lost after the loss timeout with its last report kept (the requests it sent after it are not
/// counted, so the status is at most the mock's count and short of it by what one report
/// interval holds), the two others finish, the thresholds decide (Succeeded), and the kubelet
/// restarted the container in place (the Job's `restartPolicy: OnFailure`) and the controller
/// refused the restarted worker (the test had started), so no shard runs twice.
#[tokio::test]
async fn a_worker_container_killed_mid_run_is_lost_and_its_report_kept() {
    installed().await;
    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let ns = "node-kill";
    let name = "kill";
    cluster.create_namespace(ns).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProcess::start_plain(&dir.path().join("mock.log"), &["--auth", "off"]);
    eventually(Duration::from_secs(30), "pacer mock answers", || async {
        (http_get(mock.port, "/_mock/stats").await?.0 == 200).then_some(())
    })
    .await;
    // 5/s for each of 3 workers, 20 s: 300 requests when nothing is lost
    let (rate, seconds, workers) = (15u64, 20u64, 3u64);
    let lt = json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": name },
        "spec": {
            "workers": workers,
            "startTimeout": "60s",
            "plan": {
                "name": name,
                "target": mock.url(),
                "scenarios": [{
                    "name": "me",
                    "executor": "constant-arrival-rate",
                    "rate": format!("{rate}/s"),
                    "duration": format!("{seconds}s"),
                    "requests": [{ "name": "me", "method": "GET", "path": "/api/v2/users/me" }],
                }],
                "thresholds": { "http_req_failed": ["rate<0.01"] },
            },
        },
    });
    kubectl_apply_ok(ns, &lt).await;
    let tests = loadtests(client.clone(), ns);
    wait_phase(
        &tests,
        name,
        &["Running", "Succeeded", "Failed", "Aborted"],
        Duration::from_secs(120),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let victim = pods
        .list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .min()
        .unwrap();
    let (id, pid) = container_of(ns, &victim).await;
    let socket = cluster.real_node().unwrap().containerd_socket.clone();
    ctr(
        &socket,
        &["-n", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", &id],
    )
    .unwrap();
    let status = wait_phase(
        &tests,
        name,
        &["Succeeded", "Failed", "Aborted"],
        Duration::from_secs(180),
    )
    .await;
    let restarts = pods
        .get(&victim)
        .await
        .ok()
        .and_then(|p| {
            p.status?
                .container_statuses?
                .first()
                .map(|c| c.restart_count)
        })
        .unwrap_or(0);
    let served = mock.stats().await["requests"]["byRoute"]["GET /api/v2/users/me"]
        .as_u64()
        .unwrap();
    let counted = status["requests"].as_u64().unwrap();
    eprintln!(
        "a worker container killed mid-run (pid {pid}): {}, {counted} requests counted of {served} \
         served, workers {}, the killed pod restarted {restarts} time(s)",
        phase(&status),
        status["workers"]
    );
    assert_eq!(phase(&status), "Succeeded", "{status:#}");
    assert_eq!(status["workers"]["lost"], 1, "{status:#}");
    let rows = status["workerHealth"].as_array().unwrap();
    let lost: Vec<&Value> = rows.iter().filter(|w| w["state"] == "lost").collect();
    assert_eq!(lost.len(), 1, "{status:#}");
    assert_eq!(lost[0]["name"], victim.as_str(), "{status:#}");
    assert!(lost[0]["reason"].as_str().is_some(), "{status:#}");
    assert_eq!(
        rows.iter()
            .map(|w| w["requests"].as_u64().unwrap())
            .sum::<u64>(),
        counted
    );
    // the others ran their whole shard; the lost one's last report is kept
    let per_worker = rate * seconds / workers;
    for w in rows.iter().filter(|w| w["state"] != "lost") {
        assert_eq!(w["requests"], per_worker, "{status:#}");
    }
    assert!(lost[0]["requests"].as_u64().unwrap() < per_worker);
    // what the lost worker sent after its last report (1 s apart) is served, not counted
    let per_worker_per_second = rate / workers;
    assert!(
        counted <= served && served - counted <= 2 * per_worker_per_second,
        "counted {counted}, served {served}"
    );
    assert!(restarts >= 1, "the kubelet restarted the killed container");
    // the restarted container's log (the kubelet's <ns>_<pod>_<uid>/<container>/<restart>.log)
    let pod_logs = cluster.real_node().unwrap().pod_logs.clone();
    let restarted: String = std::fs::read_dir(&pod_logs)
        .unwrap()
        .flatten()
        .filter(|d| {
            d.file_name()
                .to_string_lossy()
                .starts_with(&format!("{ns}_{victim}_"))
        })
        .flat_map(|d| {
            std::fs::read_dir(d.path().join("worker"))
                .unwrap()
                .flatten()
        })
        .filter(|f| f.file_name() != "0.log")
        .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
        .collect();
    assert!(
        restarted.contains("cannot join now"),
        "the restarted worker is refused: {restarted}"
    );
    assert_eq!(status["errors"], 0, "{status:#}");
}

/// A cluster of its own with a real node and a running pod, dropped: the container's
/// processes, the mounts under its directory, its cgroups and the directory are gone (the
/// watchdog runs the same cleanup when a test process dies).
#[tokio::test]
async fn dropping_a_real_node_cluster_leaves_no_container_mount_or_cgroup() {
    let own = tokio::task::spawn_blocking(|| {
        Cluster::start_with(ClusterOptions {
            real_node: Some(RealNodeOptions::default()),
            ..ClusterOptions::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    let client = own.client().await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "pause" },
        "spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "pause",
                "image": pacer_tests::kube::PAUSE_IMAGE,
                "imagePullPolicy": "Never",
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let started = Instant::now();
    let running = loop {
        let p = pods.get("pause").await.unwrap();
        let running = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|s| s.first().and_then(|c| c.state.clone()))
            .and_then(|s| s.running)
            .is_some();
        if running {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(running, "the pause pod did not run\n{}", own.diagnostics());
    let dir = own.dir().to_path_buf();
    let cgroup = own.real_node().unwrap().cgroup.clone();
    let in_cgroup = || -> Vec<String> {
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|h| h.path().join(&cgroup))
            .filter(|c| c.is_dir())
            .map(|c| c.display().to_string())
            .collect()
    };
    let mounts = || -> usize {
        let prefix = format!(" {}/", dir.display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&prefix))
            .count()
    };
    assert!(!in_cgroup().is_empty() && mounts() > 0, "while it runs");
    drop(own);
    assert_eq!(in_cgroup(), Vec::<String>::new(), "cgroups left");
    assert_eq!(mounts(), 0, "mounts left");
    assert!(!dir.exists(), "{} left", dir.display());
    let pause_left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("cgroup")).ok())
        .any(|c| c.contains(&cgroup));
    assert!(!pause_left, "a process of the node's cgroup is left");
}
