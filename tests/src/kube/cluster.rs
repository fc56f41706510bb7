//! A Kubernetes control plane of local processes: etcd, kube-apiserver (RBAC), and
//! kube-controller-manager, plus the process [`Kubelet`] or a real node (node.rs: containerd,
//! kubelet, kube-scheduler). Everything listens on 127.0.0.1 ports
//! picked at start, keeps its data and logs in one temporary directory, and is killed (process
//! groups) and removed when the [`Cluster`] is dropped, or by a watchdog when the test process
//! ends without dropping it (a shared `static` cluster, a crash).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::runtime::Runtime;

use super::kubeconfig::{Credentials, service_account_token, write_kubeconfig};
use super::kubelet::{Kubelet, KubeletOptions, default_entrypoints};
use super::node::{self, RealNode, RealNodeOptions};
use super::pki::{Pki, SERVICE_CIDR};
use super::proc::{Component, GroupRegistry, Watchdog, free_port, tail};

/// The versions `tests/scripts/e2e-deps.sh` builds.
pub const KUBERNETES_VERSION: &str = "1.35.4";

/// kube-controller-manager's controllers: what Jobs, namespaces, ServiceAccounts, garbage
/// collection and Deployments need.
pub const CONTROLLERS: &[&str] = &[
    "job-controller",
    "garbage-collector-controller",
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
];

/// Where `make e2e-deps` puts the binaries: `$PACER_TOOLS/bin`, by default
/// `~/.cache/pacer-tools/bin`.
pub fn tools_dir() -> PathBuf {
    let root = std::env::var_os("PACER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache").join("pacer-tools")
        });
    root.join("bin")
}

pub(crate) fn tool(name: &str) -> Result<PathBuf> {
    let path = tools_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `make e2e-deps` (tests/scripts/e2e-deps.sh) to build the \
             Kubernetes end-to-end tools (`make e2e-node-deps` for the real node's kubelet and \
             kube-scheduler)",
            path.display()
        );
    }
    Ok(path)
}

/// `kubectl` from the tools directory when one was put there, else from `PATH`.
pub fn kubectl_bin() -> PathBuf {
    let local = tools_dir().join("kubectl");
    if local.is_file() {
        local
    } else {
        PathBuf::from("kubectl")
    }
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Start the process kubelet (default: yes; never with `real_node`).
    pub kubelet: bool,
    /// A real node instead of the process kubelet: containerd, kubelet and kube-scheduler
    /// (node.rs; `make e2e-node`). Pods then run in containers and must use `hostNetwork`.
    pub real_node: Option<RealNodeOptions>,
    /// Let the kubelet bind only this namespace's pods (default: every namespace).
    pub kubelet_namespace: Option<String>,
    /// The binary run for pods whose command is `pacer` (default: [`crate::pacer_bin`]).
    pub pacer_bin: Option<PathBuf>,
    /// Entrypoints of images for containers without `command` (default: `pacer` runs `pacer`).
    pub entrypoints: BTreeMap<String, Vec<String>>,
    /// The longest wait for the control plane to be ready.
    pub startup_timeout: Duration,
    /// Keep the directory (data, logs) after the end; also set by `PACER_E2E_KEEP=1`.
    pub keep: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            kubelet: true,
            real_node: None,
            kubelet_namespace: None,
            pacer_bin: None,
            entrypoints: default_entrypoints(),
            startup_timeout: Duration::from_secs(120),
            keep: std::env::var("PACER_E2E_KEEP").is_ok_and(|v| v == "1"),
        }
    }
}

/// The running control plane (see the module documentation).
pub struct Cluster {
    dir: PathBuf,
    keep: bool,
    server: String,
    ca_pem: String,
    kubeconfig: PathBuf,
    components: Vec<Component>,
    kubelet: Option<Kubelet>,
    node: Option<RealNode>,
    node_cleanup: Option<PathBuf>,
    runtime: HarnessRuntime,
    watchdog: Option<Watchdog>,
}

/// The runtime the kubelet runs on; dropped with `shutdown_background`, which (unlike a plain
/// drop) is allowed inside another runtime, e.g. at the end of an async test.
struct HarnessRuntime(Option<Runtime>);

impl HarnessRuntime {
    fn get(&self) -> Result<&Runtime> {
        self.0.as_ref().context("the harness runtime is gone")
    }
}

impl Drop for HarnessRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Run `fut` to completion on `runtime` from a thread of its own, so that this works from
/// synchronous code and from inside another runtime alike.
pub(crate) fn block_on<F>(runtime: &Runtime, fut: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| s.spawn(|| runtime.block_on(fut)).join())
        .map_err(|_| anyhow!("a harness task panicked"))
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kube client from a kubeconfig file, in the current runtime.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading the kubeconfig {}", path.display()))?;
    Client::try_from(config).context("creating a kube client")
}

impl Cluster {
    /// Start a cluster with the default options (blocks until it is ready; callable from async
    /// tests too).
    pub fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default())
    }

    /// One cluster for the whole test binary, started by the first test that asks for it and
    /// cleaned up by the watchdog when the binary exits. Panics (failing the calling test) with
    /// the reason when it could not start.
    pub fn shared() -> &'static Cluster {
        Self::shared_with(ClusterOptions::default)
    }

    /// [`Cluster::shared`] started with `options()` by the first caller (a later caller's
    /// options are not used: a test binary has one shared cluster).
    pub fn shared_with(options: impl FnOnce() -> ClusterOptions) -> &'static Cluster {
        static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Cluster::start_with(options()).map_err(|e| format!("{e:#}"))) {
            Ok(c) => c,
            Err(e) => panic!("the e2e cluster did not start: {e}"),
        }
    }

    pub fn start_with(options: ClusterOptions) -> Result<Self> {
        let etcd_bin = tool("etcd")?;
        let apiserver_bin = tool("kube-apiserver")?;
        let kcm_bin = tool("kube-controller-manager")?;

        let dir = tempfile::Builder::new()
            .prefix("pacer-e2e-")
            .tempdir()
            .context("creating the cluster's directory")?
            .keep();
        let watchdog = Watchdog::start(&dir, options.keep)?;
        let groups = Arc::new(GroupRegistry::new(&dir)?);
        let runtime = HarnessRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("pacer-e2e-kube")
                .enable_all()
                .build()
                .context("creating the harness runtime")?,
        ));
        let mut cluster = Self {
            dir: dir.clone(),
            keep: options.keep,
            server: String::new(),
            ca_pem: String::new(),
            kubeconfig: dir.join("admin.kubeconfig"),
            components: Vec::new(),
            kubelet: None,
            node: None,
            node_cleanup: None,
            runtime: HarnessRuntime(None),
            watchdog: Some(watchdog),
        };
        // From here on, a failure drops `cluster`, which cleans up what was started.
        let started = Instant::now();
        let deadline = started + options.startup_timeout;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let pki = Pki::generate(&dir.join("pki"))?;
        cluster.ca_pem = pki.ca_pem.clone();

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args: Vec<String> = [
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ]
        .into();
        cluster.components.push(Component::spawn(
            "etcd",
            &etcd_bin,
            &etcd_args,
            logs.join("etcd.log"),
            &groups,
        )?);

        let token = random_token()?;
        let tokens = dir.join("pki").join("tokens.csv");
        std::fs::write(&tokens, format!("{token},admin,admin,\"system:masters\"\n"))?;
        let port = free_port()?;
        cluster.server = format!("https://127.0.0.1:{port}");
        let p = |path: &Path| path.display().to_string();
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", p(&dir.join("pki"))),
            format!("--tls-cert-file={}", p(&pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&pki.serving_key)),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            format!("--token-auth-file={}", p(&tokens)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&pki.sa_public_key)),
            format!(
                "--service-account-signing-key-file={}",
                p(&pki.sa_private_key)
            ),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        cluster.components.push(Component::spawn(
            "kube-apiserver",
            &apiserver_bin,
            &apiserver_args,
            logs.join("kube-apiserver.log"),
            &groups,
        )?);

        write_kubeconfig(
            &cluster.kubeconfig,
            &cluster.server,
            &pki.ca_pem,
            &Credentials::Token(token),
            Some("default"),
        )?;
        let rt = runtime.get()?;
        let client = block_on(rt, client_from_kubeconfig(&cluster.kubeconfig))??;

        // /readyz: etcd is reachable, the bootstrap RBAC roles exist.
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match block_on(rt, client.request_text(request))? {
                Ok(_) => break,
                Err(e) => cluster.check_progress(deadline, &format!("/readyz: {e}"))?,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let readyz = started.elapsed();

        let kcm_kubeconfig = dir.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &cluster.server,
            &pki.ca_pem,
            &Credentials::ClientCert {
                cert_pem: pki.kcm_cert_pem.clone(),
                key_pem: pki.kcm_key_pem.clone(),
            },
            None,
        )?;
        // A real node is watched by the node lifecycle controller, which removes the not-ready
        // taint a new Node gets (the process kubelet's Node sends no heartbeats: it would be
        // marked unreachable).
        let mut controllers = CONTROLLERS.to_vec();
        if options.real_node.is_some() {
            controllers.push("node-lifecycle-controller");
        }
        let kcm_args: Vec<String> = vec![
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--controllers={}", controllers.join(",")),
            "--use-service-account-credentials=true".into(),
            format!(
                "--service-account-private-key-file={}",
                p(&pki.sa_private_key)
            ),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        cluster.components.push(Component::spawn(
            "kube-controller-manager",
            &kcm_bin,
            &kcm_args,
            logs.join("kube-controller-manager.log"),
            &groups,
        )?);

        // The serviceaccount controller creating `default` in `default` shows that
        // kube-controller-manager runs and can write.
        let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        loop {
            match block_on(rt, sa_api.get_opt("default"))? {
                Ok(Some(_)) => break,
                Ok(None) => cluster.check_progress(deadline, "no default ServiceAccount yet")?,
                Err(e) => cluster.check_progress(deadline, &format!("{e}"))?,
            }
            std::thread::sleep(Duration::from_millis(200));
        }

        if let Some(node_options) = &options.real_node {
            // importing images and registering the node take longer than the control plane
            let node_deadline = Instant::now() + options.startup_timeout;
            let node = node::start(
                rt,
                &client,
                &dir,
                &cluster.server,
                &pki,
                &groups,
                node_options,
                &mut cluster.components,
                node_deadline,
            );
            // the cleanup script exists as soon as the node started to start
            cluster.node_cleanup = Some(dir.join("cleanup.sh"));
            cluster.node = Some(node?);
        } else if options.kubelet {
            let kubelet = Kubelet::start(
                rt.handle(),
                client,
                KubeletOptions {
                    node_name: "pacer-e2e-node".into(),
                    namespace: options.kubelet_namespace.clone(),
                    dir: dir.clone(),
                    server: cluster.server.clone(),
                    ca_pem: pki.ca_pem.clone(),
                    pacer_bin: options.pacer_bin.clone(),
                    entrypoints: options.entrypoints.clone(),
                },
                Some(Arc::clone(&groups)),
            )?;
            cluster.kubelet = Some(kubelet);
        }
        cluster.runtime = runtime;
        let _ = std::fs::write(
            dir.join("startup.txt"),
            format!(
                "readyz after {:.1} s, ready after {:.1} s\n",
                readyz.as_secs_f64(),
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(cluster)
    }

    /// An error with the components' logs when one of them exited or `deadline` passed.
    fn check_progress(&mut self, deadline: Instant, waiting_for: &str) -> Result<()> {
        for c in &mut self.components {
            if let Some(status) = c.exited() {
                bail!(
                    "{} exited ({status}) while waiting for the cluster ({waiting_for}):\n{}",
                    c.name,
                    tail(&c.log, 30)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster was not ready in time ({waiting_for}):\n{}",
                self.diagnostics()
            );
        }
        Ok(())
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The cluster CA in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin kubeconfig (user `admin` in `system:masters`, namespace `default`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's temporary directory (`logs/`, `pods/`, `pki/`, `etcd/`, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process groups of etcd, kube-apiserver and kube-controller-manager.
    pub fn process_groups(&self) -> Vec<u32> {
        self.components.iter().map(Component::pid).collect()
    }

    pub fn kubelet(&self) -> Option<&Kubelet> {
        self.kubelet.as_ref()
    }

    /// The real node, when the cluster was started with one.
    pub fn real_node(&self) -> Option<&RealNode> {
        self.node.as_ref()
    }

    /// An admin client in the caller's runtime.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Run `kubectl --kubeconfig <admin> <args>` (at most 60 s).
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(&self.kubeconfig, args).await
    }

    /// Run `kubectl --kubeconfig <kubeconfig> <args>` (at most 60 s).
    pub async fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("kubectl {} did not finish in 60 s", args.join(" ")))?
            .context("running kubectl (is it on PATH?)")
    }

    /// `kubectl` that must succeed: its stdout, or an error with its stderr.
    pub async fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Create a namespace and wait (at most 30 s) for its `default` ServiceAccount, without
    /// which the ServiceAccount admission plugin refuses pods.
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sa: Api<ServiceAccount> = Api::namespaced(client, name);
        let started = Instant::now();
        while sa.get_opt("default").await?.is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("namespace {name} got no default ServiceAccount in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A kubeconfig authenticating as the ServiceAccount `namespace/name` with a token from the
    /// TokenRequest API (valid one hour), so a process runs with exactly that account's RBAC
    /// rights. Written to `kubeconfigs/<namespace>.<name>.kubeconfig` in the cluster's directory.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let client = self.client().await?;
        let token = service_account_token(&client, namespace, name, 3600, None).await?;
        let dir = self.dir.join("kubeconfigs");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{namespace}.{name}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.server,
            &self.ca_pem,
            &Credentials::Token(token),
            Some(namespace),
        )?;
        Ok(path)
    }

    /// The output of the latest pod `namespace/name` the kubelet ran.
    pub fn pod_log(&self, namespace: &str, name: &str) -> Option<String> {
        self.kubelet.as_ref()?.pod_log(namespace, name)
    }

    /// The last lines of every component's log and the kubelet's, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("cluster directory: {}\n", self.dir.display());
        for c in &self.components {
            out.push_str(&format!(
                "--- {} ({})\n{}\n",
                c.name,
                c.log.display(),
                tail(&c.log, 15)
            ));
        }
        if let Some(k) = &self.kubelet {
            let log = k.log_file();
            out.push_str(&format!(
                "--- kubelet ({})\n{}\n",
                log.display(),
                tail(&log, 30)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut k) = self.kubelet.take() {
            k.shutdown();
        }
        if let Some(rt) = self.runtime.0.take() {
            rt.shutdown_background();
        }
        // the real node's processes and the controller manager first, etcd last
        while let Some(mut c) = self.components.pop() {
            c.kill();
        }
        if let Some(script) = self.node_cleanup.take() {
            match std::process::Command::new("sh").arg(&script).status() {
                Ok(s) if s.success() => {}
                other => eprintln!(
                    "the real node's cleanup ({}) did not finish: {other:?}",
                    script.display()
                ),
            }
        }
        if let Some(mut w) = self.watchdog.take() {
            w.stop();
        }
        if self.keep {
            eprintln!(
                "PACER_E2E_KEEP: the cluster's files are in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
