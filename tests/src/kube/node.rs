//! A real node for the e2e: containerd (Debian's package, with its own root, state, socket and
//! runc root in the cluster's directory), the real kubelet and kube-scheduler built by `make
//! e2e-node-deps`, so the chart's pods run in real containers (images, security contexts, probes,
//! restarts) instead of as processes of the test. Nothing is pulled: a pause image built here
//! (`gcc -static`) and the image archives the test names are imported with `ctr`.
//!
//! Every pod must use `hostNetwork: true`: there is no CNI plugin and no pod CIDR (the one
//! network configuration names a plugin that does not exist, so containerd reports the network
//! ready and a pod that is not on the host's network fails to start). The node's name and
//! InternalIP are 127.0.0.1, so a host-network pod's IP, its probes and the apiserver's calls
//! to the kubelet stay on loopback.
//!
//! What this machine needs (issue 22): cgroup v1 is accepted (`failCgroupV1: false`), swap is
//! tolerated, the cgroupfs driver (no systemd), and containerd's `restrict_oom_score_adj` (a
//! negative oom_score_adj is refused here, which fails every sandbox otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::runtime::Runtime;

use super::cluster::{block_on, tool};
use super::kubeconfig::{Credentials, write_kubeconfig};
use super::pki::{NODE_NAME, Pki};
use super::proc::{Component, GroupRegistry, free_port, tail};

/// The sandbox image every pod's sandbox runs (containerd's `sandbox_image`), built here.
pub const PAUSE_IMAGE: &str = "localhost/pacer-e2e-pause:1";

/// The pause program: sleeps until a signal, exits 0 on SIGTERM/SIGINT (a pod sandbox's
/// process holds the pod's namespaces and does nothing else).
const PAUSE_C: &str = r#"#include <signal.h>
#include <unistd.h>
static void done(int s) { (void)s; _exit(0); }
int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }
"#;

/// The user the pause image runs as: `nobody`'s usual id, nothing in the image needs more.
const PAUSE_USER: &str = "65535";

/// How a [`super::Cluster`] gets a real node (`ClusterOptions::real_node`).
#[derive(Debug, Clone, Default)]
pub struct RealNodeOptions {
    /// Image archives (OCI or docker-archive) to import into containerd, each under the name
    /// pods refer to it by.
    pub images: Vec<ImageArchive>,
}

/// An image archive and the reference pods use (as the kubelet normalises it:
/// `pacer:0.1.0` is `docker.io/library/pacer:0.1.0`).
#[derive(Debug, Clone)]
pub struct ImageArchive {
    pub path: PathBuf,
    pub reference: String,
}

impl ImageArchive {
    /// `reference` as written in a pod spec; a name without a registry gets `docker.io/` (and
    /// `library/` when it has no slash), as the kubelet and containerd normalise it.
    pub fn new(path: impl Into<PathBuf>, reference: &str) -> Self {
        Self {
            path: path.into(),
            reference: normalise_reference(reference),
        }
    }
}

/// `pacer:1` -> `docker.io/library/pacer:1`, `me/pacer:1` -> `docker.io/me/pacer:1`,
/// `localhost/x:1` and `registry.example:5000/x:1` unchanged.
pub fn normalise_reference(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        reference.to_string()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

/// What the cluster keeps of its real node.
#[derive(Debug)]
pub struct RealNode {
    /// containerd's socket (`ctr --address`).
    pub containerd_socket: PathBuf,
    /// The kubelet's log and the pods' logs (`<namespace>_<pod>_<uid>/<container>/<n>.log`).
    pub kubelet_log: PathBuf,
    pub pod_logs: PathBuf,
    /// The cgroup (under every hierarchy) holding the node's pods: `kubepods` lives in it.
    pub cgroup: String,
    /// Kills what runs in the node's cgroup and containerd's shims, unmounts, removes the
    /// cgroups: run by the cluster's drop and by the watchdog.
    pub cleanup_script: PathBuf,
}

/// Start containerd, import the images, start the kubelet and kube-scheduler, and wait (until
/// `deadline`) for the Node to be Ready without taints. The processes are pushed onto
/// `components` as they start, so a failure part way is cleaned up by the caller.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    rt: &Runtime,
    client: &Client,
    dir: &Path,
    server: &str,
    pki: &Pki,
    groups: &GroupRegistry,
    options: &RealNodeOptions,
    components: &mut Vec<Component>,
    deadline: Instant,
) -> Result<RealNode> {
    let kubelet_bin = tool("kubelet")?;
    let scheduler_bin = tool("kube-scheduler")?;
    for program in ["containerd", "runc", "ctr"] {
        if which(program).is_none() {
            bail!(
                "{program} is missing: the real-node e2e needs Debian's containerd and runc \
                 (`make e2e-node-deps` installs them)"
            );
        }
    }
    let node_dir = dir.join("node");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&node_dir)?;

    // The cgroup is named after the cluster's directory, so two clusters never share one.
    let cgroup = format!(
        "pacer-e2e-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().replace("pacer-e2e-", ""))
            .unwrap_or_default()
    );
    let socket = node_dir.join("containerd.sock");
    let cleanup_script = dir.join("cleanup.sh");
    std::fs::write(&cleanup_script, cleanup_script_text(dir, &socket, &cgroup))?;
    for hierarchy in cgroup_hierarchies()? {
        let path = hierarchy.join(&cgroup);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the node's cgroup {}", path.display()))?;
    }

    // containerd
    let cni_conf = node_dir.join("cni").join("net.d");
    let cni_bin = node_dir.join("cni").join("bin");
    std::fs::create_dir_all(&cni_conf)?;
    std::fs::create_dir_all(&cni_bin)?;
    std::fs::write(
        cni_conf.join("10-no-pod-network.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pacer-e2e-no-pod-network","plugins":[{"type":"pacer-e2e-no-pod-network"}]}"#,
    )?;
    let config = node_dir.join("containerd.toml");
    std::fs::write(
        &config,
        containerd_config(&node_dir, &socket, &cni_conf, &cni_bin),
    )?;
    components.push(Component::spawn(
        "containerd",
        Path::new("containerd"),
        &["--config".to_string(), config.display().to_string()],
        logs.join("containerd.log"),
        groups,
    )?);
    while ctr(&socket, &["version"]).is_err() {
        progress(components, deadline, "containerd's socket")?;
        std::thread::sleep(Duration::from_millis(100));
    }

    // images: the pause image, built here, then the test's
    let pause = build_pause_image(&node_dir)?;
    import(&socket, &ImageArchive::new(pause, PAUSE_IMAGE))?;
    for image in &options.images {
        import(&socket, image)?;
    }

    // kube-scheduler: its user is bound by the bootstrap RBAC policy.
    let scheduler_kubeconfig = dir.join("kube-scheduler.kubeconfig");
    write_kubeconfig(
        &scheduler_kubeconfig,
        server,
        &pki.ca_pem,
        &Credentials::ClientCert {
            cert_pem: pki.scheduler.cert_pem.clone(),
            key_pem: pki.scheduler.key_pem.clone(),
        },
        None,
    )?;
    components.push(Component::spawn(
        "kube-scheduler",
        &scheduler_bin,
        &[
            format!("--kubeconfig={}", scheduler_kubeconfig.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ],
        logs.join("kube-scheduler.log"),
        groups,
    )?);

    // The kubelet: the `system:node` ClusterRole, which RBAC no longer binds to the group
    // `system:nodes` by itself (the Node authorizer is not used here).
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "pacer-e2e-node" },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:node",
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": format!("system:node:{NODE_NAME}"),
        }],
    }))?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    block_on(rt, bindings.create(&PostParams::default(), &binding))?
        .context("binding system:node to the node's user")?;
    let kubelet_kubeconfig = dir.join("kubelet.kubeconfig");
    write_kubeconfig(
        &kubelet_kubeconfig,
        server,
        &pki.ca_pem,
        &Credentials::ClientCert {
            cert_pem: pki.node.cert_pem.clone(),
            key_pem: pki.node.key_pem.clone(),
        },
        None,
    )?;
    let kubelet_root = node_dir.join("kubelet");
    let pod_logs = node_dir.join("pod-logs");
    std::fs::create_dir_all(&kubelet_root)?;
    std::fs::create_dir_all(&pod_logs)?;
    let kubelet_config = node_dir.join("kubelet.yaml");
    std::fs::write(
        &kubelet_config,
        kubelet_config_text(&node_dir, &socket, &pki.ca_cert, &cgroup, &pod_logs)?,
    )?;
    let kubelet_log = logs.join("kubelet.log");
    components.push(Component::spawn(
        "kubelet",
        &kubelet_bin,
        &[
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", kubelet_kubeconfig.display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--root-dir={}", kubelet_root.display()),
            format!("--cert-dir={}", kubelet_root.join("pki").display()),
        ],
        kubelet_log.clone(),
        groups,
    )?);

    // Ready, and untainted: the node lifecycle controller removes the not-ready taint the
    // admission plugin puts on a new Node.
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let node = block_on(rt, nodes.get_opt(NODE_NAME))?;
        let waiting = match node {
            Ok(Some(n)) => {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let taints = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .map(|t| t.len())
                    .unwrap_or(0);
                if ready && taints == 0 {
                    break;
                }
                format!("node {NODE_NAME}: ready {ready}, {taints} taints")
            }
            Ok(None) => format!("node {NODE_NAME} not registered"),
            Err(e) => format!("node {NODE_NAME}: {e}"),
        };
        progress(components, deadline, &waiting)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(RealNode {
        containerd_socket: socket,
        kubelet_log,
        pod_logs,
        cgroup,
        cleanup_script,
    })
}

/// An error with the log of a component that exited, or of every node component when
/// `deadline` passed.
fn progress(components: &mut [Component], deadline: Instant, waiting_for: &str) -> Result<()> {
    for c in components.iter_mut() {
        if let Some(status) = c.exited() {
            bail!(
                "{} exited ({status}) while waiting for the node ({waiting_for}):\n{}",
                c.name,
                tail(&c.log, 30)
            );
        }
    }
    if Instant::now() > deadline {
        let logs: String = components
            .iter()
            .filter(|c| ["containerd", "kubelet", "kube-scheduler"].contains(&c.name))
            .map(|c| format!("--- {}\n{}\n", c.name, tail(&c.log, 20)))
            .collect();
        bail!("the node was not ready in time ({waiting_for}):\n{logs}");
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The cgroup hierarchies to create the node's cgroup in: every mounted v1 controller
/// directory, or the one v2 hierarchy.
fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).context("reading /sys/fs/cgroup")? {
        let path = entry?.path();
        // a symlink such as cpu,cpuacct -> cpu names a hierarchy already listed
        if path.is_symlink() || !path.join("cgroup.procs").is_file() {
            continue;
        }
        out.push(path);
    }
    if out.is_empty() {
        bail!("no cgroup hierarchy under /sys/fs/cgroup");
    }
    Ok(out)
}

/// `ctr --address <socket> <args>`: its stdout, or an error with its stderr.
pub fn ctr(socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!(
            "ctr {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Import an archive into the CRI's namespace and make sure it answers to its reference (an
/// archive from buildah or podman names the image as it was tagged there: it is tagged again).
fn import(socket: &Path, image: &ImageArchive) -> Result<()> {
    let archive = image.path.display().to_string();
    let out = ctr(socket, &["-n", "k8s.io", "images", "import", &archive])
        .with_context(|| format!("importing the image archive {archive}"))?;
    let listed = ctr(socket, &["-n", "k8s.io", "images", "ls", "-q"])?;
    if listed.lines().any(|l| l == image.reference) {
        return Ok(());
    }
    // "unpacking NAME (sha256:...)...done"
    let imported: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("unpacking "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| !n.starts_with("sha256:"))
        .collect();
    let [source] = imported.as_slice() else {
        bail!(
            "{archive}: expected one image named in it to tag as {}, ctr imported: {}",
            image.reference,
            out.trim()
        );
    };
    ctr(
        socket,
        &[
            "-n",
            "k8s.io",
            "images",
            "tag",
            "--force",
            source,
            &image.reference,
        ],
    )?;
    Ok(())
}

/// `gcc -static` of [`PAUSE_C`] in a root filesystem of its own, written as an OCI archive by
/// tests/scripts/oci-archive.sh.
fn build_pause_image(node_dir: &Path) -> Result<PathBuf> {
    let work = node_dir.join("pause");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let source = work.join("pause.c");
    std::fs::write(&source, PAUSE_C)?;
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    run(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(rootfs.join("pause"))
            .arg(&source),
        "gcc -static (the pause image; Debian's gcc and libc6-dev)",
    )?;
    let archive = work.join("pause.tar");
    let script = crate::workspace_root()
        .join("tests")
        .join("scripts")
        .join("oci-archive.sh");
    run(
        Command::new("bash")
            .arg(script)
            .arg(&rootfs)
            .arg(PAUSE_IMAGE)
            .arg(&archive)
            .arg(r#"["/pause"]"#)
            .arg(PAUSE_USER),
        "tests/scripts/oci-archive.sh (the pause image)",
    )?;
    Ok(archive)
}

fn containerd_config(node_dir: &Path, socket: &Path, cni_conf: &Path, cni_bin: &Path) -> String {
    let d = |p: &Path| p.display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # A negative oom_score_adj is refused on this machine: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = d(&node_dir.join("containerd-root")),
        state = d(&node_dir.join("containerd-state")),
        socket = d(socket),
        runc = d(&node_dir.join("runc")),
        cni_bin = d(cni_bin),
        cni_conf = d(cni_conf),
    )
}

/// The thresholds below which the kubelet evicts pods: its defaults (10 % of the disk free)
/// would evict everything on a shared machine whose disk is 70 % full, so only a nearly full
/// disk or memory does.
const EVICTION_HARD: &str = r#"{"memory.available": "100Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%", "imagefs.available": "1%"}"#;

fn kubelet_config_text(
    node_dir: &Path,
    socket: &Path,
    client_ca: &Path,
    cgroup: &str,
    pod_logs: &Path,
) -> Result<String> {
    let d = |p: &Path| p.display().to_string();
    Ok(format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
readOnlyPort: 0
# this machine: cgroup v1, no systemd, swap not refused
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: true
cgroupRoot: /{cgroup}
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://{socket}
imageServiceEndpoint: unix://{socket}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: "{client_ca}"}}
authorization: {{mode: AlwaysAllow}}
podLogsDir: "{pod_logs}"
volumePluginDir: "{plugins}"
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {EVICTION_HARD}
resolvConf: /etc/resolv.conf
"#,
        port = free_port()?,
        healthz = free_port()?,
        socket = d(socket),
        client_ca = d(client_ca),
        pod_logs = d(pod_logs),
        plugins = d(&node_dir.join("volume-plugins")),
    ))
}

/// The shell run after the node's processes are killed (by the cluster's drop, or by the
/// watchdog when the test process died): the containers (every process in the node's
/// cgroups) and containerd's shims (started in process groups of their own) are killed, the
/// mounts under the cluster's directory (container root filesystems, pod volumes) are
/// unmounted, and the cgroups removed.
fn cleanup_script_text(dir: &Path, socket: &Path, cgroup: &str) -> String {
    format!(
        r#"dir='{dir}'; socket='{socket}'; cg='{cgroup}'; tasks='{tasks}'
cgroups() {{ for h in /sys/fs/cgroup /sys/fs/cgroup/*; do [ -d "$h/$cg" ] && echo "$h/$cg"; done; }}
for i in 1 2 3 4 5 6 7 8 9 10; do
  for c in $(cgroups); do
    for f in $(find "$c" -name cgroup.procs); do
      for p in $(cat "$f"); do kill -9 "$p" 2>/dev/null; done
    done
  done
  for p in /proc/[0-9]*; do
    if {{ tr '\0' ' ' < "$p/cmdline"; }} 2>/dev/null | grep -qF -- "-address $socket "; then kill -9 "${{p#/proc/}}" 2>/dev/null; fi
  done
  grep -F " $dir/" /proc/self/mountinfo | awk '{{print $5}}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  for c in $(cgroups); do find "$c" -depth -type d -exec rmdir {{}} \; 2>/dev/null; done
  if [ -z "$(cgroups)" ] && ! grep -qF " $dir/" /proc/self/mountinfo; then
    # a killed shim leaves its socket: /run/containerd/s/<sha256 of socket/namespace/id>
    for t in "$tasks"/*; do
      [ -e "$t" ] || continue
      rm -f "/run/containerd/s/$(printf '%s' "$socket/k8s.io/${{t##*/}}" | sha256sum | cut -d' ' -f1)"
    done
    exit 0
  fi
  sleep 0.3
done
exit 1
"#,
        dir = dir.display(),
        socket = socket.display(),
        tasks = dir
            .join("node")
            .join("containerd-state")
            .join("io.containerd.runtime.v2.task")
            .join("k8s.io")
            .display(),
    )
}

#[cfg(test)]
mod tests {
    use super::normalise_reference;

    #[test]
    fn references_are_normalised_as_the_kubelet_does() {
        assert_eq!(
            normalise_reference("pacer:0.1.0"),
            "docker.io/library/pacer:0.1.0"
        );
        assert_eq!(normalise_reference("me/pacer:1"), "docker.io/me/pacer:1");
        assert_eq!(
            normalise_reference("localhost/pause:1"),
            "localhost/pause:1"
        );
        assert_eq!(
            normalise_reference("registry.example:5000/pacer:1"),
            "registry.example:5000/pacer:1"
        );
    }
}
