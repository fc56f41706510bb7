//! A kubelet that runs pods as local processes: it registers a Ready Node, binds Pending pods to
//! it (there is no scheduler), runs each pod's first container `command` + `args` with its
//! environment, reports the pod's status like a kubelet (Running with podIP 127.0.0.1, then
//! Succeeded or Failed with the exit code) and kills the process when the pod is deleted.
//!
//! Limits: one container per pod (the first; init containers and probes are ignored), restart
//! policy `Never` semantics whatever the pod says, no volumes but Secret volumes (a pod's
//! ServiceAccount token is given as a kubeconfig in `$KUBECONFIG` instead of the in-cluster
//! files; a Secret volume's keys are written as files under the pod's directory, and its
//! `mountPath` in the container's arguments is rewritten to that directory: the chart's TLS
//! Secret reaches the controller this way), every pod shares the
//! host's network (two pods listening on one port collide) and there is no Service routing.
//! Nothing here panics: a failure is written to `kubelet.log` and, where it concerns a pod,
//! reported as the pod's failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use rustix::process::Signal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::env::{self, POD_IP};
use super::kubeconfig::{Credentials, service_account_token, write_kubeconfig};
use super::proc::{GroupRegistry, kill_group, signal_group};

/// How long a pod may wait for a missing Secret, ConfigMap or key before it fails.
const CONFIG_WAIT: Duration = Duration::from_secs(60);
/// Longest wait between SIGTERM and SIGKILL when a pod is deleted.
const MAX_GRACE: Duration = Duration::from_secs(10);
/// The Kubernetes version the Node reports.
const KUBELET_VERSION: &str = "v1.35.4";

/// What the kubelet is for.
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    /// The Node it registers.
    pub node_name: String,
    /// Bind only the pods of this namespace (`None`: every namespace).
    pub namespace: Option<String>,
    /// Where pods' directories (`pods/<ns>_<name>_<uid>/`, with `<container>.log`) and
    /// `kubelet.log` go.
    pub dir: PathBuf,
    /// The apiserver's URL and CA, for the kubeconfigs given to pods.
    pub server: String,
    pub ca_pem: String,
    /// The binary run for a command named `pacer`; `None`: [`crate::pacer_bin`], built on first
    /// use.
    pub pacer_bin: Option<PathBuf>,
    /// The entrypoint of an image, by the image's name without registry, path and tag, for
    /// containers that give only `args` (`pacer:0.1.0` → `["pacer"]`, see
    /// [`default_entrypoints`]).
    pub entrypoints: BTreeMap<String, Vec<String>>,
}

/// The entrypoints the kubelet knows by default: the pacer image runs `pacer`.
pub fn default_entrypoints() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([("pacer".to_string(), vec!["pacer".to_string()])])
}

/// An image's name without registry, path, tag or digest: `ghcr.io/x/pacer:0.1` → `pacer`.
fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

/// The running kubelet; dropping it kills every pod's process group.
pub struct Kubelet {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.shared.opts.node_name)
            .finish_non_exhaustive()
    }
}

struct Running {
    namespace: String,
    name: String,
    cancel: CancellationToken,
    pid: Option<u32>,
}

#[derive(Default)]
struct State {
    running: HashMap<String, Running>,
    started: HashSet<String>,
    binding: HashSet<String>,
    finalizing: HashSet<String>,
    logs: HashMap<(String, String), PathBuf>,
}

struct Shared {
    client: Client,
    opts: KubeletOptions,
    groups: Option<Arc<GroupRegistry>>,
    cancel: CancellationToken,
    log: Mutex<Option<File>>,
    state: Mutex<State>,
}

impl Kubelet {
    /// Start the kubelet on `runtime` with `client` (it needs to bind pods, patch their status,
    /// read Secrets and ConfigMaps and request ServiceAccount tokens: the admin client).
    /// `groups` records pods' process groups for the cluster's watchdog.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        client: Client,
        opts: KubeletOptions,
        groups: Option<Arc<GroupRegistry>>,
    ) -> Result<Self> {
        std::fs::create_dir_all(opts.dir.join("pods"))
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let log_path = opts.dir.join("kubelet.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let shared = Arc::new(Shared {
            client,
            opts,
            groups,
            cancel: CancellationToken::new(),
            log: Mutex::new(Some(log)),
            state: Mutex::new(State::default()),
        });
        let task = runtime.spawn(Arc::clone(&shared).run());
        Ok(Self {
            shared,
            task: Some(task),
        })
    }

    pub fn node_name(&self) -> &str {
        &self.shared.opts.node_name
    }

    /// The pid (also the process group) of a pod's running process.
    pub fn pid(&self, namespace: &str, name: &str) -> Option<u32> {
        self.shared
            .state()
            .running
            .values()
            .find(|r| r.namespace == namespace && r.name == name)
            .and_then(|r| r.pid)
    }

    /// The output file of the latest pod called `namespace/name`.
    pub fn log_path(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.shared
            .state()
            .logs
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The output (stdout and stderr) of the latest pod called `namespace/name` so far.
    pub fn pod_log(&self, namespace: &str, name: &str) -> Option<String> {
        self.log_path(namespace, name)
            .and_then(|p| std::fs::read_to_string(p).ok())
    }

    /// The kubelet's own log.
    pub fn log_file(&self) -> PathBuf {
        self.shared.opts.dir.join("kubelet.log")
    }

    /// Stop watching and kill every pod's process group (synchronously).
    pub fn shutdown(&mut self) {
        self.shared.cancel.cancel();
        let pids: Vec<u32> = self
            .shared
            .state()
            .running
            .values()
            .filter_map(|r| r.pid)
            .collect();
        for pid in pids {
            kill_group(pid);
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// A pod's identity, as the watch gives it.
#[derive(Clone)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

impl PodRef {
    fn of(pod: &Pod) -> Option<Self> {
        Some(Self {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone()?,
        })
    }
}

/// How a pod's process ended.
struct Exit {
    code: i32,
    signal: Option<i32>,
    reason: &'static str,
    message: Option<String>,
}

impl Exit {
    fn of(status: ExitStatus) -> Self {
        let (code, signal) = match (status.code(), status.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(s)) => (128 + s, Some(s)),
            (None, None) => (1, None),
        };
        Self {
            code,
            signal,
            reason: if code == 0 { "Completed" } else { "Error" },
            message: None,
        }
    }

    fn failed(reason: &'static str, message: String) -> Self {
        Self {
            code: 128,
            signal: None,
            reason,
            message: Some(message),
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, message: impl AsRef<str>) {
        let mut guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_mut() {
            let _ = writeln!(f, "{} {}", now(), message.as_ref());
        }
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn run(self: Arc<Self>) {
        self.register_node().await;
        let api: Api<Pod> = match &self.opts.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        self.log("watching pods");
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                event = events.next() => match event {
                    Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => self.on_pod(&pod),
                    Some(Ok(Event::Delete(pod))) => self.on_pod_gone(&pod),
                    Some(Ok(Event::Init | Event::InitDone)) => {}
                    Some(Err(e)) => self.log(format!("watch error: {e}")),
                    None => {
                        self.log("the pod watch ended");
                        break;
                    }
                },
            }
        }
    }

    async fn register_node(&self) {
        let api: Api<Node> = Api::all(self.client.clone());
        let name = self.opts.node_name.clone();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string();
        let resources = serde_json::json!({ "cpu": cpus, "memory": "8Gi", "pods": "110" });
        let node: Node = match serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": std::env::consts::ARCH,
                },
            },
        })) {
            Ok(n) => n,
            Err(e) => {
                self.log(format!("cannot build the Node object: {e}"));
                return;
            }
        };
        let t = now();
        let condition = |kind: &str, status: &str, reason: &str| {
            serde_json::json!({
                "type": kind, "status": status, "reason": reason,
                "lastHeartbeatTime": t, "lastTransitionTime": t,
            })
        };
        let status = serde_json::json!({ "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": POD_IP },
                { "type": "Hostname", "address": name },
            ],
            "nodeInfo": {
                "machineID": "pacer-e2e", "systemUUID": "pacer-e2e", "bootID": "pacer-e2e",
                "kernelVersion": "", "osImage": "local processes",
                "containerRuntimeVersion": "pacer-process://1",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            },
        }});
        let started = Instant::now();
        while !self.cancel.is_cancelled() && started.elapsed() < Duration::from_secs(60) {
            let created = match api.create(&PostParams::default(), &node).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            };
            let patched = match created {
                Ok(()) => api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match patched {
                Ok(()) => {
                    self.log(format!("node {name} registered, Ready"));
                    return;
                }
                Err(e) => {
                    self.log(format!("registering node {name}: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn on_pod(self: &Arc<Self>, pod: &Pod) {
        let Some(key) = PodRef::of(pod) else { return };
        let spec = pod.spec.as_ref();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        let terminal = phase == "Succeeded" || phase == "Failed";
        let scheduler = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        match spec.and_then(|s| s.node_name.as_deref()) {
            None => {
                if !deleting
                    && !terminal
                    && scheduler == "default-scheduler"
                    && self.state().binding.insert(key.uid.clone())
                {
                    tokio::spawn(Arc::clone(self).bind(key));
                }
            }
            Some(node) if node == self.opts.node_name => {
                let mut state = self.state();
                if deleting {
                    if let Some(r) = state.running.get(&key.uid) {
                        r.cancel.cancel();
                    } else if state.finalizing.insert(key.uid.clone()) {
                        drop(state);
                        tokio::spawn(Arc::clone(self).finalize(key));
                    }
                } else if !terminal && state.started.insert(key.uid.clone()) {
                    let cancel = self.cancel.child_token();
                    state.running.insert(
                        key.uid.clone(),
                        Running {
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                            cancel: cancel.clone(),
                            pid: None,
                        },
                    );
                    drop(state);
                    tokio::spawn(Arc::clone(self).run_pod(pod.clone(), key, cancel));
                }
            }
            Some(_) => {}
        }
    }

    fn on_pod_gone(&self, pod: &Pod) {
        let Some(key) = PodRef::of(pod) else { return };
        let mut state = self.state();
        if let Some(r) = state.running.get(&key.uid) {
            r.cancel.cancel();
        }
        state.binding.remove(&key.uid);
        state.finalizing.remove(&key.uid);
    }

    async fn bind(self: Arc<Self>, key: PodRef) {
        let binding = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": key.name, "namespace": key.namespace },
            "target": { "apiVersion": "v1", "kind": "Node", "name": self.opts.node_name },
        });
        let result = self
            .pods(&key.namespace)
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &key.name,
                &PostParams::default(),
                &binding,
            )
            .await;
        match result {
            Ok(_) => self.log(format!("bound {}/{}", key.namespace, key.name)),
            Err(e) => {
                self.log(format!("binding {}/{}: {e}", key.namespace, key.name));
                // a later event of the pod may try again
                self.state().binding.remove(&key.uid);
            }
        }
    }

    /// Delete a pod that is no longer running with grace 0, as a kubelet does once its
    /// containers are gone.
    async fn finalize(self: Arc<Self>, key: PodRef) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(key.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods(&key.namespace).delete(&key.name, &params).await {
            Ok(_) => self.log(format!("deleted {}/{}", key.namespace, key.name)),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => self.log(format!("deleting {}/{}: {e}", key.namespace, key.name)),
        }
    }

    async fn patch_status(&self, key: &PodRef, status: serde_json::Value) {
        let patch = serde_json::json!({ "status": status });
        let result = self
            .pods(&key.namespace)
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if let Err(e) = result {
            self.log(format!(
                "patching the status of {}/{}: {e}",
                key.namespace, key.name
            ));
        }
    }

    fn pod_dir(&self, key: &PodRef) -> PathBuf {
        let uid: String = key.uid.chars().take(8).collect();
        self.opts
            .dir
            .join("pods")
            .join(format!("{}_{}_{uid}", key.namespace, key.name))
    }

    async fn run_pod(self: Arc<Self>, pod: Pod, key: PodRef, cancel: CancellationToken) {
        let dir = self.pod_dir(&key);
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
            .unwrap_or_default();
        let log_path = dir.join(format!("{}.log", container.name));
        self.state()
            .logs
            .insert((key.namespace.clone(), key.name.clone()), log_path.clone());
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(MAX_GRACE)
            .min(MAX_GRACE);

        let exit = self
            .run_process(&pod, &key, &container, &dir, &log_path, grace, &cancel)
            .await;
        let shutdown = self.cancel.is_cancelled();
        if let Some(exit) = exit
            && !shutdown
        {
            self.report_terminated(&key, &container, &exit).await;
        }
        let deleted = cancel.is_cancelled() && !shutdown;
        self.state().running.remove(&key.uid);
        if deleted {
            self.finalize(key).await;
        }
    }

    /// Run the pod's process to its end. `None` when it was stopped before it started.
    #[allow(clippy::too_many_arguments)]
    async fn run_process(
        &self,
        pod: &Pod,
        key: &PodRef,
        container: &Container,
        dir: &Path,
        log_path: &Path,
        grace: Duration,
        cancel: &CancellationToken,
    ) -> Option<Exit> {
        let pod_name = format!("{}/{}", key.namespace, key.name);
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Some(Exit::failed(
                "StartError",
                format!("creating {}: {e}", dir.display()),
            ));
        }
        if container.name.is_empty() {
            return Some(Exit::failed(
                "StartError",
                "the pod has no container".into(),
            ));
        }

        // The environment, waiting (bounded) for Secrets and ConfigMaps that are not there yet.
        let started = Instant::now();
        let mut waiting_reported = false;
        let vars = loop {
            match self.environment(pod, key, container, dir).await {
                Ok(vars) => break vars,
                Err(e) if e.retry && started.elapsed() < CONFIG_WAIT => {
                    if !waiting_reported {
                        waiting_reported = true;
                        self.log(format!("{pod_name} waits: {}", e.message));
                        self.report_waiting(key, container, &e.message).await;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => {
                    self.log(format!("{pod_name}: {}", e.message));
                    return Some(Exit::failed("CreateContainerConfigError", e.message));
                }
            }
        };
        if cancel.is_cancelled() {
            return None;
        }

        let command = match &container.command {
            Some(c) if !c.is_empty() => c.clone(),
            _ => {
                let image = container.image.as_deref().unwrap_or_default();
                match self.opts.entrypoints.get(image_name(image)) {
                    Some(entrypoint) => entrypoint.clone(),
                    None => {
                        return Some(Exit::failed(
                            "StartError",
                            format!(
                                "no command, and the process kubelet knows no entrypoint for \
                                 the image {image:?} (KubeletOptions::entrypoints)"
                            ),
                        ));
                    }
                }
            }
        };
        let mounts = match self.secret_volumes(pod, key, container, dir).await {
            Ok(m) => m,
            Err(message) => {
                self.log(format!("{pod_name}: {message}"));
                return Some(Exit::failed("CreateContainerConfigError", message));
            }
        };
        let argv: Vec<String> = command
            .iter()
            .chain(container.args.iter().flatten())
            .map(|a| env::expand(a, &vars))
            .map(|a| {
                mounts.iter().fold(a, |a, (mount_path, local)| {
                    a.replace(mount_path.as_str(), &local.display().to_string())
                })
            })
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Some(Exit::failed("StartError", "an empty command".into()));
        };
        let program = match self.program(program).await {
            Ok(p) => p,
            Err(message) => return Some(Exit::failed("StartError", message)),
        };

        let spawned = (|| -> std::io::Result<tokio::process::Child> {
            let out = File::create(log_path)?;
            let err = out.try_clone()?;
            let mut cmd = tokio::process::Command::new(&program);
            cmd.args(args)
                .env_clear()
                .envs(&vars)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(true);
            cmd.spawn()
        })();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let message = format!("starting {}: {e}", program.display());
                self.log(format!("{pod_name}: {message}"));
                return Some(Exit::failed("StartError", message));
            }
        };
        let Some(pid) = child.id() else {
            return Some(Exit::failed(
                "StartError",
                "the process ended before it was seen".into(),
            ));
        };
        if let Some(groups) = &self.groups {
            groups.register(pid);
        }
        if let Some(r) = self.state().running.get_mut(&key.uid) {
            r.pid = Some(pid);
        }
        self.log(format!(
            "{pod_name} runs as pid {pid}: {} {}",
            program.display(),
            args.join(" ")
        ));
        self.report_running(key, container, pid).await;

        let status = tokio::select! {
            status = child.wait() => status,
            () = cancel.cancelled() => {
                signal_group(pid, Signal::TERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        kill_group(pid);
                        child.wait().await
                    }
                }
            }
        };
        // what the process left behind in its group goes with it, as with a container
        kill_group(pid);
        let exit = match status {
            Ok(s) => Exit::of(s),
            Err(e) => Exit::failed("Error", format!("waiting for the process: {e}")),
        };
        self.log(format!("{pod_name} exited with {}", exit.code));
        Some(exit)
    }

    /// The binary for `command[0]`: `pacer` (any path ending in it) is the real pacer binary.
    /// The container's Secret volumes, written under `dir/volumes/<volume>/<key>`: each mount
    /// path and the directory that stands for it.
    async fn secret_volumes(
        &self,
        pod: &Pod,
        key: &PodRef,
        container: &Container,
        dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, String> {
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let Some(name) = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.clone())
            else {
                continue;
            };
            let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                self.client.clone(),
                &key.namespace,
            )
            .get(&name)
            .await
            .map_err(|e| format!("secret volume {}: reading secret {name:?}: {e}", mount.name))?;
            let local = dir.join("volumes").join(&mount.name);
            std::fs::create_dir_all(&local)
                .map_err(|e| format!("creating {}: {e}", local.display()))?;
            for (k, v) in secret.data.iter().flatten() {
                let file = local.join(k);
                std::fs::write(&file, &v.0)
                    .map_err(|e| format!("writing {}: {e}", file.display()))?;
            }
            mounts.push((mount.mount_path.clone(), local));
        }
        Ok(mounts)
    }

    async fn program(&self, name: &str) -> Result<PathBuf, String> {
        if Path::new(name).file_name().and_then(|n| n.to_str()) != Some("pacer") {
            return Ok(PathBuf::from(name));
        }
        if let Some(p) = &self.opts.pacer_bin {
            return Ok(p.clone());
        }
        tokio::task::spawn_blocking(crate::pacer_bin)
            .await
            .map_err(|e| format!("building the pacer binary failed: {e}"))
    }

    /// The process's environment: the kubelet's own variables, then the pod's.
    async fn environment(
        &self,
        pod: &Pod,
        key: &PodRef,
        container: &Container,
        dir: &Path,
    ) -> Result<BTreeMap<String, String>, env::EnvError> {
        let port = self
            .opts
            .server
            .rsplit(':')
            .next()
            .unwrap_or("443")
            .to_string();
        let mut base = BTreeMap::new();
        // the tools directory first: `kubectl` and `helm` of `make e2e-deps` when there
        let path = std::env::var("PATH").unwrap_or_default();
        let tools = super::cluster::tools_dir();
        base.insert("PATH".into(), format!("{}:{path}", tools.display()));
        base.insert("HOME".into(), dir.display().to_string());
        base.insert("HOSTNAME".into(), key.name.clone());
        base.insert("KUBERNETES_SERVICE_HOST".into(), POD_IP.into());
        base.insert("KUBERNETES_SERVICE_PORT".into(), port.clone());
        base.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), port);
        if let Some(index) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
        {
            base.insert("JOB_COMPLETION_INDEX".into(), index.clone());
        }
        if mounts_token(pod) {
            let kubeconfig = self
                .service_account_kubeconfig(pod, key, dir)
                .await
                .map_err(|e| env::EnvError {
                    message: format!("{e:#}"),
                    retry: true,
                })?;
            base.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
        }
        env::resolve(&self.client, pod, container, &base).await
    }

    /// A kubeconfig with a token of the pod's ServiceAccount, bound to the pod; the token, CA and
    /// namespace also as files in `serviceaccount/`, like the in-cluster mount.
    async fn service_account_kubeconfig(
        &self,
        pod: &Pod,
        key: &PodRef,
        dir: &Path,
    ) -> Result<PathBuf> {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        let token = service_account_token(
            &self.client,
            &key.namespace,
            sa,
            3600,
            Some((&key.name, &key.uid)),
        )
        .await?;
        let files = dir.join("serviceaccount");
        std::fs::create_dir_all(&files)?;
        std::fs::write(files.join("token"), &token)?;
        std::fs::write(files.join("ca.crt"), &self.opts.ca_pem)?;
        std::fs::write(files.join("namespace"), &key.namespace)?;
        let path = dir.join("kubeconfig");
        write_kubeconfig(
            &path,
            &self.opts.server,
            &self.opts.ca_pem,
            &Credentials::Token(token),
            Some(&key.namespace),
        )?;
        Ok(path)
    }

    fn conditions(ready: bool, reason: Option<&str>) -> serde_json::Value {
        let t = now();
        let ready_status = if ready { "True" } else { "False" };
        let condition = |kind: &str, status: &str| {
            let mut c = serde_json::json!({
                "type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": t,
            });
            if status == "False"
                && let Some(r) = reason
            {
                c["reason"] = r.into();
            }
            c
        };
        serde_json::json!([
            condition("PodReadyToStartContainers", "True"),
            condition("Initialized", "True"),
            condition("Ready", ready_status),
            condition("ContainersReady", ready_status),
            condition("PodScheduled", "True"),
        ])
    }

    fn addresses() -> serde_json::Value {
        serde_json::json!({
            "hostIP": POD_IP, "hostIPs": [{ "ip": POD_IP }],
            "podIP": POD_IP, "podIPs": [{ "ip": POD_IP }],
        })
    }

    fn container_status(
        container: &Container,
        state: serde_json::Value,
        ready: bool,
        pid: Option<u32>,
    ) -> serde_json::Value {
        let mut s = serde_json::json!({
            "name": container.name,
            "image": container.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
        });
        if let Some(pid) = pid {
            s["containerID"] = format!("pacer-process://{pid}").into();
        }
        s
    }

    async fn report_waiting(&self, key: &PodRef, container: &Container, message: &str) {
        let mut status = Self::addresses();
        status["phase"] = "Pending".into();
        status["conditions"] = Self::conditions(false, Some("ContainersNotReady"));
        status["containerStatuses"] = serde_json::json!([Self::container_status(
            container,
            serde_json::json!({ "waiting": {
                "reason": "CreateContainerConfigError", "message": message,
            }}),
            false,
            None,
        )]);
        self.patch_status(key, status).await;
    }

    async fn report_running(&self, key: &PodRef, container: &Container, pid: u32) {
        let t = now();
        let mut status = Self::addresses();
        status["phase"] = "Running".into();
        status["startTime"] = t.clone().into();
        status["conditions"] = Self::conditions(true, None);
        status["containerStatuses"] = serde_json::json!([Self::container_status(
            container,
            serde_json::json!({ "running": { "startedAt": t } }),
            true,
            Some(pid),
        )]);
        self.patch_status(key, status).await;
    }

    async fn report_terminated(&self, key: &PodRef, container: &Container, exit: &Exit) {
        let t = now();
        let mut terminated = serde_json::json!({
            "exitCode": exit.code, "reason": exit.reason, "startedAt": t, "finishedAt": t,
        });
        if let Some(s) = exit.signal {
            terminated["signal"] = s.into();
        }
        if let Some(m) = &exit.message {
            terminated["message"] = m.clone().into();
        }
        let mut status = Self::addresses();
        status["phase"] = if exit.code == 0 {
            "Succeeded"
        } else {
            "Failed"
        }
        .into();
        status["conditions"] = Self::conditions(false, Some("PodCompleted"));
        status["containerStatuses"] = serde_json::json!([Self::container_status(
            container,
            serde_json::json!({ "terminated": terminated }),
            false,
            None,
        )]);
        self.patch_status(key, status).await;
    }
}

/// Whether the ServiceAccount admission plugin gave the pod a token volume (it does unless
/// `automountServiceAccountToken: false` on the pod or its ServiceAccount).
fn mounts_token(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|volumes| {
            volumes.iter().any(|v| {
                v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::image_name;

    #[test]
    fn image_names_drop_registry_path_tag_and_digest() {
        assert_eq!(image_name("pacer"), "pacer");
        assert_eq!(image_name("pacer:0.1.0"), "pacer");
        assert_eq!(image_name("ghcr.io/acme/pacer:0.1.0"), "pacer");
        assert_eq!(image_name("localhost:5000/pacer"), "pacer");
        assert_eq!(image_name("redis@sha256:abc"), "redis");
    }
}
