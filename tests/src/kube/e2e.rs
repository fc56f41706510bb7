//! What pacer's Kubernetes end-to-end tests (`tests/tests/k8s_*.rs`) share once the chart is
//! installed: `helm`, plain HTTP to a loopback port, the LoadTest API and a LoadTest's status and
//! Events, following a LoadTest to its end, and `pacer mock` as a process with its arrival log.
//! Each test binary installs its own release in its own API server; these are the steps around
//! that, written once (several files still carry copies of their own, older than this module).
//! Every wait is bounded; a failure panics with what was awaited, as a test's assert would.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use super::{Cluster, eventually, free_port, tools_dir};

/// The longest `helm` runs: an install with `--wait` on a busy machine.
const HELM_WITHIN: Duration = Duration::from_secs(200);

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

/// A LoadTest's `.status` (`Null` before the operator wrote one); `None` when it is not there.
pub async fn status_of(tests: &Api<DynamicObject>, name: &str) -> Option<Value> {
    let lt = tests.get_opt(name).await.ok()??;
    Some(lt.data.get("status").cloned().unwrap_or(Value::Null))
}

/// A status's phase (empty before the first).
pub fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
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
        let port = free_port().expect("a free port");
        let out = std::fs::File::create(log).expect("the mock's log");
        let child = std::process::Command::new(crate::pacer_bin())
            .args(["mock", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--record-arrivals")
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
