//! The Kubernetes end-to-end harness itself, on a real control plane: kube-apiserver v1.35 with
//! RBAC, etcd, kube-controller-manager, and the process kubelet (`pacer_tests::kube`). One
//! cluster for the whole binary (`Cluster::shared`); each test works in a namespace of its own.
//! Needs `make e2e-deps`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use pacer_tests::kube::{
    Cluster, KUBERNETES_VERSION, client_from_kubeconfig, eventually, group_alive,
};

async fn namespace(name: &str) -> (&'static Cluster, Client) {
    let cluster = Cluster::shared();
    cluster.create_namespace(name).await.unwrap();
    (cluster, cluster.client().await.unwrap())
}

fn pod(name: &str, command: &[&str]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": "pacer-e2e/none", "command": command }],
        },
    }))
    .unwrap()
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn exit_code(pod: &Pod) -> Option<i32> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    Some(
        statuses
            .first()?
            .state
            .as_ref()?
            .terminated
            .as_ref()?
            .exit_code,
    )
}

/// Create `pod` and record its phases (consecutive repeats merged) until it is Succeeded or
/// Failed, at most 30 s; the last version of the pod.
async fn run_to_end(api: &Api<Pod>, pod: Pod) -> (Vec<String>, Pod) {
    let name = pod.metadata.name.clone().unwrap();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api.clone(), config).boxed();
    // the (empty) initial list first, so the watch sees the pod from its creation
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(events.next().await, Some(Ok(Event::InitDone))) {}
    })
    .await
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    let mut phases: Vec<String> = Vec::new();
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(Ok(Event::Apply(p) | Event::InitApply(p))) = events.next().await {
                let ph = phase(&p);
                if phases.last() != Some(&ph) {
                    phases.push(ph.clone());
                }
                if ph == "Succeeded" || ph == "Failed" {
                    return p;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "pod {name} did not end in 30 s (phases {phases:?})\n{}",
            Cluster::shared().diagnostics()
        )
    });
    (phases, last)
}

#[tokio::test]
async fn control_plane_answers_and_authorizes() {
    let cluster = Cluster::shared();

    let version = cluster
        .kubectl_ok(&["get", "--raw", "/version"])
        .await
        .unwrap();
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["gitVersion"], format!("v{KUBERNETES_VERSION}"));

    cluster
        .kubectl_ok(&["create", "namespace", "harness-basics"])
        .await
        .unwrap();
    let phase = cluster
        .kubectl_ok(&[
            "get",
            "namespace",
            "harness-basics",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await
        .unwrap();
    assert_eq!(phase, "Active");

    let can = cluster
        .kubectl(&["auth", "can-i", "create", "pods", "-n", "harness-basics"])
        .await
        .unwrap();
    assert!(can.status.success());
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");

    let ready = cluster
        .kubectl_ok(&[
            "get",
            "node",
            "pacer-e2e-node",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ])
        .await
        .unwrap();
    assert_eq!(ready, "True");
}

#[tokio::test]
async fn pods_run_as_processes_and_report_their_exit() {
    let (cluster, client) = namespace("harness-pods").await;
    let pods: Api<Pod> = Api::namespaced(client, "harness-pods");

    let (phases, failed) = run_to_end(&pods, pod("fails", &["sh", "-c", "echo hi; exit 3"])).await;
    assert_eq!(phases, ["Pending", "Running", "Failed"]);
    assert_eq!(exit_code(&failed), Some(3));
    let status = failed.status.as_ref().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        cluster.pod_log("harness-pods", "fails").unwrap().trim(),
        "hi"
    );

    let (phases, succeeded) = run_to_end(&pods, pod("succeeds", &["true"])).await;
    assert_eq!(phases, ["Pending", "Running", "Succeeded"]);
    assert_eq!(exit_code(&succeeded), Some(0));

    // a command that cannot start fails the pod like a crash, with the reason
    let (phases, missing) =
        run_to_end(&pods, pod("missing", &["/nonexistent/pacer-e2e-command"])).await;
    assert_eq!(phases.last().map(String::as_str), Some("Failed"));
    let statuses = missing.status.unwrap().container_statuses.unwrap();
    let terminated = statuses[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(terminated.reason.as_deref(), Some("StartError"));
    assert!(
        terminated
            .message
            .unwrap_or_default()
            .contains("nonexistent"),
        "the message names the command"
    );
}

#[tokio::test]
async fn deleting_a_running_pod_kills_its_process() {
    let (cluster, client) = namespace("harness-delete").await;
    let pods: Api<Pod> = Api::namespaced(client, "harness-delete");
    pods.create(&PostParams::default(), &pod("sleeps", &["sleep", "30"]))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the pod runs", || async {
        let p = pods.get("sleeps").await.ok()?;
        (phase(&p) == "Running").then_some(())
    })
    .await;
    let kubelet = cluster.kubelet().unwrap();
    let pid = kubelet.pid("harness-delete", "sleeps").unwrap();
    assert!(group_alive(pid), "the process of a Running pod is alive");

    let deleted_at = Instant::now();
    pods.delete("sleeps", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the pod is gone", || async {
        matches!(pods.get_opt("sleeps").await, Ok(None)).then_some(())
    })
    .await;
    assert!(!group_alive(pid), "the process is killed with its pod");
    assert!(
        deleted_at.elapsed() < Duration::from_secs(10),
        "SIGTERM ends `sleep` at once, not after the grace period: {:?}",
        deleted_at.elapsed()
    );
}

#[tokio::test]
async fn pods_get_their_environment() {
    let (cluster, client) = namespace("harness-env").await;
    let ns = "harness-env";
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=token=s3cret",
        ])
        .await
        .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "create",
            "configmap",
            "settings",
            "--from-literal=rate=10/s",
        ])
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "env", "labels": { "app": "pacer" } },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "pacer-e2e/none",
                "command": ["sh", "-c"],
                "args": ["echo \"$EARLY|$PLAIN|$TOKEN|$RATE|$NAME|$NS|$IP|$APP|$(PLAIN)|$KUBERNETES_SERVICE_HOST\""],
                "env": [
                    { "name": "EARLY", "value": "$(NAME)" },
                    { "name": "NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "PLAIN", "value": "v-$(NAME)" },
                    { "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "token" } } },
                    { "name": "RATE", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "rate" } } },
                    { "name": "NS", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                    { "name": "IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                ],
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let (_, done) = run_to_end(&pods, pod).await;
    assert_eq!(phase(&done), "Succeeded");
    // EARLY refers to NAME before NAME is defined: left as written, as Kubernetes does;
    // `$(PLAIN)` in args is expanded by the kubelet, `$PLAIN` by the shell
    assert_eq!(
        cluster.pod_log(ns, "env").unwrap().trim(),
        "$(NAME)|v-env|s3cret|10/s|env|harness-env|127.0.0.1|pacer|v-env|127.0.0.1"
    );
}

#[tokio::test]
async fn indexed_job_completes() {
    let (cluster, client) = namespace("harness-job").await;
    let ns = "harness-job";
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "indexed" },
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": "pacer-e2e/none",
                    "command": ["sh", "-c", "echo index=$JOB_COMPLETION_INDEX"],
                }],
            }},
        },
    }))
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let done = eventually(Duration::from_secs(60), "the job completes", || async {
        let j = jobs.get("indexed").await.ok()?;
        let status = j.status.clone()?;
        let complete = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        complete.then_some(status)
    })
    .await;
    assert_eq!(done.succeeded, Some(2));
    assert_eq!(done.completed_indexes.as_deref(), Some("0,1"));

    let pods: Api<Pod> = Api::namespaced(client, ns);
    let mut logs: Vec<String> = pods
        .list(&ListParams::default().labels("job-name=indexed"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| cluster.pod_log(ns, p.metadata.name.as_deref()?))
        .map(|l| l.trim().to_string())
        .collect();
    logs.sort();
    assert_eq!(logs, ["index=0", "index=1"]);
}

#[tokio::test]
async fn crd_is_established_and_a_resource_round_trips() {
    let (cluster, client) = namespace("harness-crd").await;
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "widgets.e2e.pacer.dev" },
        "spec": {
            "group": "e2e.pacer.dev",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"] },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": { "type": "integer", "minimum": 1 },
                                "color": { "type": "string" },
                            },
                        },
                        "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    },
                }},
            }],
        },
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the CRD is established",
        || async {
            let c = crds.get("widgets.e2e.pacer.dev").await.ok()?;
            let established = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;

    let resource = ApiResource {
        group: "e2e.pacer.dev".into(),
        version: "v1".into(),
        api_version: "e2e.pacer.dev/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "harness-crd", &resource);
    let mut widget = DynamicObject::new("small", &resource);
    widget.data = serde_json::json!({ "spec": { "size": 3, "color": "teal" } });
    // discovery of a new group can lag the Established condition by a moment
    eventually(Duration::from_secs(20), "the Widget is created", || async {
        widgets.create(&PostParams::default(), &widget).await.ok()
    })
    .await;
    let back = widgets.get("small").await.unwrap();
    assert_eq!(
        back.data["spec"],
        serde_json::json!({ "size": 3, "color": "teal" })
    );

    // the schema is enforced
    let mut invalid = DynamicObject::new("invalid", &resource);
    invalid.data = serde_json::json!({ "spec": { "size": 0 } });
    let refused = widgets.create(&PostParams::default(), &invalid).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 422),
        "{refused:?}"
    );

    let listed = cluster
        .kubectl_ok(&["-n", "harness-crd", "get", "wd", "-o", "name"])
        .await
        .unwrap();
    assert_eq!(listed.trim(), "widget.e2e.pacer.dev/small");
}

#[tokio::test]
async fn service_account_tokens_carry_exactly_their_rbac_rights() {
    let (cluster, client) = namespace("harness-rbac").await;
    let ns = "harness-rbac";
    cluster
        .kubectl_ok(&["-n", ns, "create", "serviceaccount", "nobody"])
        .await
        .unwrap();
    let can = cluster
        .kubectl(&[
            "auth",
            "can-i",
            "list",
            "secrets",
            "-n",
            ns,
            "--as=system:serviceaccount:harness-rbac:nobody",
        ])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    assert!(!can.status.success());

    let kubeconfig = cluster
        .service_account_kubeconfig(ns, "nobody")
        .await
        .unwrap();
    let refused = cluster
        .kubectl_as(&kubeconfig, &["get", "secrets"])
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Forbidden")
            && stderr.contains("system:serviceaccount:harness-rbac:nobody"),
        "{stderr}"
    );
    let sa_client = client_from_kubeconfig(&kubeconfig).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(sa_client, ns);
    let answer = secrets.list(&ListParams::default()).await;
    assert!(
        matches!(answer, Err(kube::Error::Api(ref e)) if e.code == 403),
        "{answer:?}"
    );

    // granted the right, the same token may
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "create",
            "role",
            "secret-reader",
            "--verb=list",
            "--resource=secrets",
        ])
        .await
        .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "create",
            "rolebinding",
            "nobody-reads",
            "--role=secret-reader",
            "--serviceaccount=harness-rbac:nobody",
        ])
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the granted right applies",
        || async { secrets.list(&ListParams::default()).await.ok() },
    )
    .await;
    drop(client);
}

#[tokio::test]
async fn pods_run_with_their_service_account() {
    let (cluster, client) = namespace("harness-pod-sa").await;
    let ns = "harness-pod-sa";
    cluster
        .kubectl_ok(&["-n", ns, "create", "serviceaccount", "reader"])
        .await
        .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "create",
            "role",
            "cm-reader",
            "--verb=list",
            "--resource=configmaps",
        ])
        .await
        .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            ns,
            "create",
            "rolebinding",
            "reader-reads",
            "--role=cm-reader",
            "--serviceaccount=harness-pod-sa:reader",
        ])
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let with_sa = |name: &str, sa: &str| -> Pod {
        let mut p = pod(
            name,
            &[
                "sh",
                "-c",
                "kubectl get configmaps -o name && kubectl auth whoami -o jsonpath='{.status.userInfo.username}'",
            ],
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.service_account_name = Some(sa.into());
        }
        p
    };
    let (_, allowed) = run_to_end(&pods, with_sa("reader", "reader")).await;
    let log = cluster.pod_log(ns, "reader").unwrap_or_default();
    assert_eq!(phase(&allowed), "Succeeded", "{log}");
    assert!(log.contains("configmap/kube-root-ca.crt"), "{log}");
    assert!(
        log.contains("system:serviceaccount:harness-pod-sa:reader"),
        "{log}"
    );

    let (_, refused) = run_to_end(&pods, with_sa("default-sa", "default")).await;
    let log = cluster.pod_log(ns, "default-sa").unwrap_or_default();
    assert_eq!(phase(&refused), "Failed", "{log}");
    assert!(log.contains("Forbidden"), "{log}");
}

/// A cluster of its own, dropped while its test panics: every process (control plane and pods)
/// is killed and the directory removed.
#[test]
fn a_failing_test_leaves_nothing_behind() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let recorded = std::sync::Arc::clone(&seen);
    let outcome = std::thread::spawn(move || {
        let cluster = Cluster::start().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pod_pid = runtime.block_on(async {
            cluster.create_namespace("doomed").await.unwrap();
            let pods: Api<Pod> = Api::namespaced(cluster.client().await.unwrap(), "doomed");
            pods.create(&PostParams::default(), &pod("lingers", &["sleep", "60"]))
                .await
                .unwrap();
            let started = Instant::now();
            loop {
                if let Some(pid) = cluster.kubelet().unwrap().pid("doomed", "lingers") {
                    return pid;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the pod never ran"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        *recorded.lock().unwrap() = Some((
            cluster.dir().to_path_buf(),
            cluster.process_groups(),
            pod_pid,
        ));
        panic!("a test failing with its cluster up");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let (dir, groups, pod_pid) = seen.lock().unwrap().take().unwrap();
    assert_eq!(
        groups.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );
    for pgid in groups.iter().chain([&pod_pid]) {
        assert!(!group_alive(*pgid), "process group {pgid} is still alive");
    }
    assert!(!dir.exists(), "{} is removed", dir.display());
}
