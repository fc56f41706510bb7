//! What pacer's Kubernetes end-to-end tests (`tests/tests/k8s_*.rs`) share: the chart
//! installed with the e2e values ([`Install`], extra values per test binary), `helm`, plain HTTP
//! to a loopback port, LoadTest manifests, `kubectl apply`, a LoadTest's status, phase, worker
//! pods and Events, following a LoadTest to its end, and `pacer mock` as a process. Each test
//! binary installs its own release in its own API server; every file used to carry its own
//! copy of these steps (and the copies drifted), so they are written once, here.
//! Every wait is bounded; a failure panics with what was awaited, as a test's assert would.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

use super::{Cluster, eventually, free_port, group_alive, tools_dir};

/// The namespace every test binary installs the chart (release `pacer`) in.
pub const RELEASE_NS: &str = "pacer-system";
/// The label selector of the operator's pods (the chart's controller component).
pub const OPERATOR_PODS: &str = "app.kubernetes.io/component=controller";
/// The label the operator puts on everything a LoadTest owns (Job, pods, Secrets).
pub const LABEL_LOADTEST: &str = "pacer.dev/loadtest";
/// How long `helm install --wait` may wait for the release (the chart's pods Ready).
const HELM_WAIT: &str = "120s";
/// How long the CRD may take to be established after the install (the API server's
/// discovery, seconds on a busy machine).
const CRD_WITHIN: Duration = Duration::from_secs(30);
/// How long the operator may take to run and answer `/readyz` after the install (a leader is
/// elected first; 60 s as the slowest copy waited).
const OPERATOR_WITHIN: Duration = Duration::from_secs(60);

/// The longest `helm` runs: an install with `--wait` on a busy machine (node_e2e.rs's real
/// node lets `--wait` take 180 s: pulling and starting containers), and helm's own work.
const HELM_WITHIN: Duration = Duration::from_secs(240);

/// `helm --kubeconfig <the cluster's> ARGS` (the helm of `make e2e-deps`).
pub async fn helm(cluster: &Cluster, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(tools_dir().join("helm"));
    cmd.arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(HELM_WITHIN, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("helm {args:?} did not finish within {HELM_WITHIN:?}"))
        .expect("helm runs (make e2e-deps)")
}

/// How a test binary installs charts/pacer (release `pacer` in [`RELEASE_NS`]), once: the
/// operator listens on loopback (every pod shares the host's network here) on free ports, TLS
/// as by default with the chart's generated certificate (the workers dial 127.0.0.1, so they
/// verify the Service's name), status every second. What a test needs on top (one replica,
/// an allow-list, a pull secret) are further `--set` values and operator flags.
#[derive(Debug, Default)]
#[must_use]
pub struct Install {
    sets: Vec<String>,
    extra_args: Vec<String>,
}

/// What [`Install::run`] left running.
#[derive(Debug)]
pub struct Installed {
    /// The chart's directory, as given to helm (an upgrade names it again).
    pub chart: String,
    /// The operator's gRPC port (the workers').
    pub grpc: u16,
    /// The operator's metrics and health port.
    pub metrics: u16,
    /// The operator's pod that was Running after the install.
    pub operator: String,
}

impl Install {
    /// The chart with the e2e values only.
    pub fn chart() -> Self {
        Self::default()
    }

    /// A further `helm --set KEY=VALUE`.
    pub fn set(mut self, value: impl Into<String>) -> Self {
        self.sets.push(value.into());
        self
    }

    /// A further operator flag (in `controller.extraArgs`, after `--worker-server-name`).
    pub fn extra_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// `helm install --wait`, then the CRD established, an operator pod Running and its
    /// `/readyz` answering 200; the pacer binary (the kubelet runs it for pods) builds while
    /// the control plane starts.
    pub async fn run(self) -> Installed {
        let build = std::thread::spawn(crate::pacer_bin);
        let cluster = Cluster::shared();
        build.join().expect("the pacer binary builds");
        let client = cluster.client().await.expect("a client of the cluster");
        let grpc = free_port().expect("a free port");
        let metrics = free_port().expect("a free port");
        let chart = crate::workspace_root()
            .join("charts")
            .join("pacer")
            .display()
            .to_string();
        let extra_args = std::iter::once(format!("--worker-server-name=pacer.{RELEASE_NS}.svc"))
            .chain(self.extra_args)
            .collect::<Vec<_>>()
            .join(",");
        let mut sets = vec![
            format!("service.grpcPort={grpc}"),
            format!("service.metricsPort={metrics}"),
            "controller.listenHost=127.0.0.1".to_string(),
            format!("controller.advertiseAddress=127.0.0.1:{grpc}"),
            "controller.statusInterval=1s".to_string(),
            format!("controller.extraArgs={{{extra_args}}}"),
        ];
        sets.extend(self.sets);
        let mut args: Vec<&str> = vec![
            "install",
            "pacer",
            &chart,
            "-n",
            RELEASE_NS,
            "--create-namespace",
        ];
        for set in &sets {
            args.extend(["--set", set]);
        }
        args.extend(["--wait", "--timeout", HELM_WAIT]);
        let out = helm(cluster, &args).await;
        assert!(
            out.status.success(),
            "helm install failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.diagnostics()
        );

        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        eventually(CRD_WITHIN, "the CRD is established", || async {
            let crd = crds.get("loadtests.pacer.dev").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(client, RELEASE_NS);
        let operator = eventually(OPERATOR_WITHIN, "a Running operator pod", || async {
            pods.list(&ListParams::default().labels(OPERATOR_PODS))
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .and_then(|p| p.metadata.name)
        })
        .await;
        eventually(OPERATOR_WITHIN, "the operator's /readyz", || async {
            (http_status(metrics, "/readyz").await == Some(200)).then_some(())
        })
        .await;
        Installed {
            chart,
            grpc,
            metrics,
            operator,
        }
    }
}

impl Installed {
    /// The log of the operator's pod (empty when the kubelet has none).
    pub fn operator_log(&self) -> String {
        Cluster::shared()
            .pod_log(RELEASE_NS, &self.operator)
            .unwrap_or_default()
    }
}

/// `pacer ARGS` with the cluster's kubeconfig, bounded by `limit`.
pub async fn pacer_k8s(args: &[&str], limit: Duration) -> Output {
    let kubeconfig = Cluster::shared().kubeconfig().display().to_string();
    crate::pacer_async(
        args.iter().map(|s| s.to_string()).collect(),
        vec![("KUBECONFIG".into(), kubeconfig)],
        limit,
    )
    .await
}

/// `GET http://127.0.0.1:<port><path>`: the status code and the body (a chunked one joined),
/// or `None` when nothing answers within 5 s.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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
    let (head, body) = text.split_once("\r\n\r\n")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// `GET http://127.0.0.1:<port><path>`: the status code, or `None` when nothing answers.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(code, _)| code)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The LoadTests of a namespace, read as JSON (the test sees what `kubectl` would).
pub fn loadtests(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "pacer.dev".into(),
        version: "v1alpha1".into(),
        api_version: "pacer.dev/v1alpha1".into(),
        kind: "LoadTest".into(),
        plural: "loadtests".into(),
    };
    Api::namespaced_with(client, ns, &resource)
}

/// `kubectl apply -n NS -f` of `manifest` written to a file (JSON, which kubectl reads as
/// YAML), as a user would; a refusal fails the test with kubectl's words.
pub async fn kubectl_apply_ok(ns: &str, manifest: &Value) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, manifest.to_string()).expect("the manifest written");
    let out = Cluster::shared()
        .kubectl(&["apply", "-n", ns, "-f", &path.display().to_string()])
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl apply -n NS -f` of `manifests` written to one YAML file (documents separated by
/// `---`), as a user would; kubectl's output, a refusal included (a test of refusals reads it).
pub async fn kubectl_apply(ns: &str, manifests: &[Value]) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("manifests.yaml");
    let text = manifests
        .iter()
        .map(|m| serde_saphyr::to_string(m).expect("a manifest as YAML"))
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(&path, text).expect("the manifests written");
    Cluster::shared()
        .kubectl(&["apply", "-n", ns, "-f", &path.display().to_string()])
        .await
        .expect("kubectl runs")
}

/// [`kubectl_apply`] of several manifests at once; a refusal fails the test with kubectl's
/// words.
pub async fn kubectl_apply_all_ok(ns: &str, manifests: &[Value]) {
    let out = kubectl_apply(ns, manifests).await;
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A LoadTest manifest named `name` with this `spec`.
pub fn loadtest(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "pacer.dev/v1alpha1",
        "kind": "LoadTest",
        "metadata": { "name": name },
        "spec": spec,
    })
}

/// A LoadTest's `.status` (`Null` before the operator wrote one); `None` when it is not there.
pub async fn status_of(tests: &Api<DynamicObject>, name: &str) -> Option<Value> {
    let lt = tests.get_opt(name).await.ok()??;
    Some(lt.data.get("status").cloned().unwrap_or(Value::Null))
}

/// A status's phase (empty before the first).
pub fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

/// Wait (at most `limit`) for the LoadTest to reach one of `phases`; its status then.
pub async fn wait_phase(
    tests: &Api<DynamicObject>,
    name: &str,
    phases: &[&str],
    limit: Duration,
) -> Value {
    eventually(limit, &format!("LoadTest {name} in {phases:?}"), || async {
        let s = status_of(tests, name).await?;
        phases.contains(&phase(&s)).then_some(s)
    })
    .await
}

/// The worker pods of a LoadTest: `(name, pid of its process when running)`.
pub async fn worker_pods(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Vec<(String, Option<u32>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let kubelet = Cluster::shared().kubelet().expect("the process kubelet");
    pods.list(&ListParams::default().labels(&format!("{LABEL_LOADTEST}={name}")))
        .await
        .expect("the worker pods listed")
        .items
        .into_iter()
        .filter_map(|p| {
            let pod = p.metadata.name?;
            let pid = kubelet.pid(ns, &pod);
            Some((pod, pid))
        })
        .collect()
}

/// Wait (at most 60 s) until a LoadTest's Job, pods and Secrets are gone and the processes of
/// `pids` too; then check by name that the Job `<name>-workers` and every session Secret
/// `<name>-session-<uid>` are gone.
pub async fn wait_workers_gone(client: &kube::Client, ns: &str, name: &str, pids: &[u32]) {
    let selector = format!("{LABEL_LOADTEST}={name}");
    let lp = ListParams::default().labels(&selector);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        &format!("{name}'s Job, pods, Secrets and processes gone"),
        || async {
            let left = jobs.list(&lp).await.ok()?.items.len()
                + pods.list(&lp).await.ok()?.items.len()
                + secrets.list(&lp).await.ok()?.items.len();
            (left == 0 && !pids.iter().any(|&p| group_alive(p))).then_some(())
        },
    )
    .await;
    assert!(
        jobs.get_opt(&format!("{name}-workers"))
            .await
            .expect("the Job read")
            .is_none(),
        "{name}-workers is left"
    );
    let session = format!("{name}-session-");
    assert!(
        !secrets
            .list(&ListParams::default())
            .await
            .expect("the Secrets listed")
            .items
            .iter()
            .any(|s| s
                .metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with(&session)),
        "a session Secret of {name} is left"
    );
}

/// The phases a LoadTest ends in.
pub const ENDED: [&str; 3] = ["Succeeded", "Failed", "Aborted"];

/// A LoadTest followed to its end.
#[derive(Debug)]
pub struct Followed {
    /// Its last status.
    pub status: Value,
    /// Every phase it showed, in order (`Pending` for none yet).
    pub phases: Vec<String>,
    /// Every `requests` count it showed, in order.
    pub counts: Vec<u64>,
}

/// Follow a LoadTest every 200 ms until it ends (at most `limit`), recording every phase and
/// every `requests` count its status showed.
pub async fn follow(tests: &Api<DynamicObject>, name: &str, limit: Duration) -> Followed {
    let started = Instant::now();
    let (mut phases, mut counts): (Vec<String>, Vec<u64>) = (Vec::new(), Vec::new());
    loop {
        assert!(
            started.elapsed() < limit,
            "{name} did not end within {limit:?}; phases {phases:?}\n{}",
            Cluster::shared().diagnostics()
        );
        if let Some(status) = status_of(tests, name).await {
            let p = match phase(&status) {
                "" => "Pending".to_string(),
                p => p.to_string(),
            };
            if phases.last() != Some(&p) {
                phases.push(p.clone());
            }
            if let Some(n) = status["requests"].as_u64()
                && counts.last() != Some(&n)
            {
                counts.push(n);
            }
            if ENDED.contains(&p.as_str()) {
                return Followed {
                    status,
                    phases,
                    counts,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait (at most 2 min) until the LoadTest is Running and its status counts `requests` or more.
pub async fn running_with(tests: &Api<DynamicObject>, name: &str, requests: u64) -> Value {
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

/// An Event: its type, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// The Events of the object `name` in `ns`, oldest first.
pub async fn events_of(ns: &str, name: &str) -> Vec<Event> {
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
        .expect("kubectl get events");
    let list: Value = serde_json::from_str(&out).expect("events as JSON");
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut events: Vec<(String, Event)> = list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let at = [
                &e["eventTime"],
                &e["firstTimestamp"],
                &e["metadata"]["creationTimestamp"],
            ]
            .into_iter()
            .find(|v| v.is_string())
            .map(s)
            .unwrap_or_default();
            let event = Event {
                type_: s(&e["type"]),
                reason: s(&e["reason"]),
                message: s(&e["message"]),
            };
            (at, event)
        })
        .collect();
    events.sort_by(|a, b| a.0.cmp(&b.0));
    events.into_iter().map(|(_, e)| e).collect()
}

/// `pacer mock` as a process on a free loopback port, recording every arrival
/// (`--record-arrivals`), its output in a log file; killed on drop.
pub struct MockProcess {
    pub port: u16,
    child: std::process::Child,
}

impl MockProcess {
    /// Start it with `args` after the listen address and `--record-arrivals` (e.g. `--auth
    /// off`, `--no-limits`), logging to `log`.
    pub fn start(log: &Path, args: &[&str]) -> Self {
        Self::spawn(
            log,
            std::iter::once("--record-arrivals").chain(args.iter().copied()),
        )
    }

    /// Start it with `args` after the listen address only (no arrival log), logging to `log`.
    pub fn start_plain(log: &Path, args: &[&str]) -> Self {
        Self::spawn(log, args.iter().copied())
    }

    fn spawn<'a>(log: &Path, args: impl IntoIterator<Item = &'a str>) -> Self {
        let port = free_port().expect("a free port");
        let out = std::fs::File::create(log).expect("the mock's log");
        let child = std::process::Command::new(crate::pacer_bin())
            .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("PACER_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("the log's handle"))
            .stderr(out)
            .spawn()
            .expect("pacer mock starts");
        Self { port, child }
    }

    /// The base URL a plan targets.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait (at most 30 s) until it answers.
    pub async fn up(&self) {
        eventually(Duration::from_secs(30), "pacer mock answers", || async {
            http_get(self.port, "/_mock/stats").await.map(|_| ())
        })
        .await;
    }

    /// `GET /_mock/stats`, as JSON.
    pub async fn stats(&self) -> Value {
        let (code, body) = http_get(self.port, "/_mock/stats")
            .await
            .expect("the mock answers /_mock/stats");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("stats as JSON")
    }

    /// When each API request arrived, in seconds since the mock started (none dropped).
    pub async fn arrivals(&self) -> Vec<f64> {
        let (code, body) = http_get(self.port, "/_mock/arrivals")
            .await
            .expect("the mock answers /_mock/arrivals");
        assert_eq!(code, 200, "{body}");
        let view: Value = serde_json::from_str(&body).expect("arrivals as JSON");
        assert_eq!(view["dropped"], 0, "the mock's arrival log overflowed");
        view["arrivals"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["tUs"].as_u64())
            .map(|us| us as f64 / 1e6)
            .collect()
    }

    /// The mock's clock now, in seconds since it started (the time base of [`Self::arrivals`]).
    pub async fn now(&self) -> f64 {
        let stats = self.stats().await;
        let us = stats["uptimeUs"]
            .as_u64()
            .unwrap_or_else(|| panic!("uptimeUs in the mock's stats: {stats}"));
        us as f64 / 1e6
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The most arrivals in any window of `width` seconds (a second wave of load shows here).
pub fn most_in_window(arrivals: &[f64], width: f64) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_counts_its_arrivals() {
        assert_eq!(most_in_window(&[], 1.0), 0);
        assert_eq!(most_in_window(&[0.0, 0.5, 0.99, 1.0, 1.2, 3.0], 1.0), 4);
        assert_eq!(most_in_window(&[3.0, 0.1, 0.2], 1.0), 2, "unsorted");
    }

    #[test]
    fn a_chunked_body_is_joined() {
        assert_eq!(dechunk("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), "hello!");
    }
}
