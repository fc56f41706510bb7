//! pacer on Kubernetes: the `LoadTest` custom resource and the operator that runs each one.
//!
//! Users submit a plan as a LoadTest; the operator (inside `pacer operator`) checks it, creates
//! a per-test session Secret and an Indexed Job of worker pods, coordinates them with a
//! `pacer_controller::Coordinator` (one per test, all behind one gRPC listener), writes the
//! live status, stores the final report in a ConfigMap and cleans up as the LoadTest says.
//!
//! - [`crd`]: the resource's types (and the CRD they generate); [`schema`]: the plan's schema
//!   made structural for `spec.plan`;
//! - [`prepare`]: a LoadTest -> a validated plan, workers, test id; [`policy`]: what a
//!   LoadTest may ask of its worker pods (images, ServiceAccounts, env);
//! - [`planref`]: `spec.planRef`, a plan read from a ConfigMap and checked as an inline one;
//! - [`pod_template`]: the rest of `spec.workerTemplate` laid over the worker pod;
//! - [`resources`]: the Secret, Job and ConfigMap a LoadTest owns;
//! - [`controller`]: reconcile, finalizer, error policy, the watch loop; `phases`: the phase
//!   machine each reconcile runs; `api`: its calls to the API server; [`verdict`]: how a test
//!   that ended stands (a pure function); `messages`: the words of the status and Events;
//!   [`reason`]: the reasons of conditions and Events, shared with the CLI;
//! - [`runner`]: the seam between Kubernetes and the coordinator (faked in tests);
//! - [`grpc`]: the shared listener that routes each worker to its test;
//! - [`leader`]: leader election over a Lease (two replicas: one leads, one waits, not Ready);
//! - [`diagnose`]: why worker pods are missing;
//! - [`status`]: conditions and live numbers; [`metrics`]: `/metrics`, `/healthz`, `/readyz`;
//!   [`loadtest_metrics`]: each running test's figures there, from the last merged state;
//! - [`sizes`]: the status and the report kept under the API server's size limits;
//! - [`lenient`]: LoadTests watched by their metadata, so one the operator cannot read is
//!   reported on its own instead of stopping the watch of all of them.

mod api;
pub mod budget;
pub mod budget_status;
pub mod controller;
pub mod crd;
pub mod diagnose;
pub mod grpc;
pub mod leader;
pub mod lenient;
pub mod loadtest_metrics;
mod messages;
pub mod metrics;
mod phases;
pub mod planref;
pub mod pod_template;
pub mod policy;
pub mod prepare;
pub mod ratebudget;
pub mod reason;
pub mod resources;
pub mod run_data;
pub mod runner;
pub mod schema;
pub mod sizes;
pub mod status;
pub mod test_data;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use controller::{Context, Error, error_policy, reconcile};
pub use crd::{LoadTest, LoadTestSpec, LoadTestStatus, Phase};
pub use resources::RedisSource;

/// How the operator runs tests.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// What worker pods dial (`host:port` of the controller's Service, or of this machine when
    /// the operator runs outside the cluster).
    pub advertise_address: String,
    /// The pacer image of the workers when a LoadTest names none.
    pub worker_image: String,
    pub image_pull_policy: Option<String>,
    /// Secrets every worker pod pulls its image with (`--worker-image-pull-secret`, the
    /// chart's `imagePullSecrets`), in the LoadTest's namespace.
    pub worker_image_pull_secrets: Vec<String>,
    /// Worker pods on the node's network (`--worker-host-network`, the chart's `hostNetwork`),
    /// for clusters without a pod network.
    pub worker_host_network: bool,
    /// The fleet's Redis when a LoadTest names none.
    pub default_redis: Option<RedisSource>,
    /// How often a running test's status is written.
    pub status_interval: Duration,
    pub defaults: prepare::Defaults,
    /// Watch only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// This operator's pod (events' reportingInstance).
    pub instance: Option<String>,
    /// What worker pods are told to trust: the listener's CA (TLS), or plaintext.
    pub worker_trust: WorkerTrust,
    /// Lead through this Lease before reconciling or listening for workers (`None`: lead at
    /// once, a single replica).
    pub leader_election: Option<leader::LeaseSettings>,
}

impl OperatorConfig {
    /// An operator whose workers may run `worker_image` only, with no ServiceAccount
    /// (widen with [`policy::WorkerPolicy::operator`] in `defaults.worker_policy`).
    pub fn new(advertise_address: impl Into<String>, worker_image: impl Into<String>) -> Self {
        let worker_image = worker_image.into();
        Self {
            advertise_address: advertise_address.into(),
            defaults: prepare::Defaults {
                worker_policy: policy::WorkerPolicy::operator(&worker_image, [], []),
                ..prepare::Defaults::default()
            },
            worker_image,
            image_pull_policy: None,
            worker_image_pull_secrets: Vec::new(),
            worker_host_network: false,
            default_redis: None,
            status_interval: Duration::from_secs(2),
            namespaces: Vec::new(),
            instance: None,
            worker_trust: WorkerTrust::InsecurePlaintext,
            leader_election: None,
        }
    }
}

/// What worker pods are told to trust when they dial the listener.
#[derive(Clone, Debug)]
pub enum WorkerTrust {
    /// TLS: the CA (PEM) that signed the listener's certificate, handed to each test's workers
    /// through its session Secret (`PACER_CA_PEM`), and the name to verify (`None`: the host
    /// of the advertised address).
    Tls {
        ca: WorkerCa,
        server_name: Option<String>,
    },
    /// Plaintext (`pacer operator --insecure-plaintext`): workers get `--insecure-plaintext`.
    InsecurePlaintext,
}

/// The CA handed to each new test's workers: `--worker-ca`, read again for every test, so a
/// CA renewed on disk (the mounted Secret updated by cert-manager or an upgrade) reaches the
/// next tests without a restart. A read that fails (a file half-written) hands out the last
/// CA that read well, and says so.
#[derive(Clone, Debug)]
pub struct WorkerCa {
    file: Option<std::path::PathBuf>,
    last: Arc<parking_lot::Mutex<String>>,
}

impl WorkerCa {
    /// The CA of `file`, checked to hold certificates now (a wrong path fails at start).
    pub fn from_file(file: std::path::PathBuf) -> Result<Self, pacer_controller::tls::TlsError> {
        let pem = Self::read(&file)?;
        Ok(Self {
            file: Some(file),
            last: Arc::new(parking_lot::Mutex::new(pem)),
        })
    }

    /// A fixed CA (tests, or a CA given as text).
    pub fn from_pem(pem: impl Into<String>) -> Self {
        Self {
            file: None,
            last: Arc::new(parking_lot::Mutex::new(pem.into())),
        }
    }

    /// The CA (PEM) for a test starting now.
    pub fn pem(&self) -> String {
        let mut last = self.last.lock();
        if let Some(file) = &self.file {
            match Self::read(file) {
                Ok(pem) => *last = pem,
                Err(e) => tracing::warn!(
                    "{}; handing workers the CA read last",
                    pacer_proto::error_chain(&e)
                ),
            }
        }
        last.clone()
    }

    fn read(file: &std::path::Path) -> Result<String, pacer_controller::tls::TlsError> {
        pacer_controller::tls::read_certificates("--worker-ca", file)?;
        std::fs::read_to_string(file).map_err(|source| pacer_controller::tls::TlsError::Read {
            flag: "--worker-ca",
            path: file.to_path_buf(),
            source,
        })
    }
}

/// Where the operator listens.
#[derive(Clone, Debug)]
pub struct Listen {
    /// The gRPC listener every worker dials.
    pub grpc: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: SocketAddr,
    /// TLS (the certificate files, re-read when renewed) or plaintext, for the gRPC listener.
    pub transport: pacer_controller::listener::Transport,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Controller(#[from] controller::Error),
    #[error("the gRPC listener failed")]
    Grpc(#[source] tonic::transport::Error),
    /// This replica led and may no longer: it stops, and comes back as a standby.
    #[error("stopped leading")]
    Leadership(#[source] leader::LeaderError),
}

/// How long a new leader keeps trying to bind the workers' port while it is in use: an old
/// leader on the same network (host network, a restart in place, pacer's own end-to-end tests
/// whose pods share the host's) holds it for the few seconds its shutdown takes.
const GRPC_BIND_FOR: Duration = Duration::from_secs(30);

/// Bind the workers' gRPC port, waiting (up to [`GRPC_BIND_FOR`]) while another process holds it.
async fn bind_grpc(
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<tokio::net::TcpListener, OperatorError> {
    let started = tokio::time::Instant::now();
    let mut said = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < GRPC_BIND_FOR
                    && !shutdown.is_cancelled() =>
            {
                if !said {
                    tracing::info!(
                        "{addr} is still in use (the previous leader stopping?): retrying for up to {GRPC_BIND_FOR:?}"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(source) => return Err(OperatorError::Listen { addr, source }),
        }
    }
}

/// Run the operator until `shutdown`: the HTTP endpoints, then (once this replica leads,
/// with `config.leader_election`) the gRPC listener and the controller. A standby serves
/// `/healthz`, `/readyz` and `/metrics`, binds no gRPC port and labels its pod standby; the
/// chart's Service selects the leader's label (`leader::ROLE_LABEL`). A leader that loses its Lease returns
/// [`OperatorError::Leadership`]: the process exits and comes back as a standby, and the new
/// leader takes the running tests over.
pub async fn serve(
    client: kube::Client,
    config: OperatorConfig,
    listen: Listen,
    shutdown: CancellationToken,
) -> Result<(), OperatorError> {
    let routes = grpc::Routes::default();
    let runner = Arc::new(runner::CoordinatorRunner::new(routes.clone()));
    let metrics = Arc::new(metrics::Metrics::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        runner,
        metrics,
    ));
    let (http_addr, http_task) = metrics::serve(listen.http, ctx.clone(), shutdown.clone())
        .await
        .map_err(|source| OperatorError::Listen {
            addr: listen.http,
            source,
        })?;
    tracing::info!("operator: metrics and health on http://{http_addr}");
    // Leadership first: a standby neither reconciles nor listens for workers.
    let held = match config.leader_election.clone() {
        None => None,
        Some(settings) => {
            let mut elector = leader::Elector::new(client, settings);
            if !elector.acquire(&shutdown, &ctx.ready).await {
                let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
                return Ok(());
            }
            // Held beside the work: losing it stops everything (`shutdown`). It is given up
            // only once the work has stopped (`release`), so two replicas never overlap.
            let (stop, release) = (shutdown.clone(), CancellationToken::new());
            let task = tokio::spawn({
                let release = release.clone();
                async move {
                    let held = elector.hold(release).await;
                    if let Err(e) = &held {
                        tracing::error!("{}", controller::causes(e));
                        stop.cancel();
                    }
                    held
                }
            });
            Some((task, release))
        }
    };
    let grpc_listener = bind_grpc(listen.grpc, &shutdown).await?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(listen.grpc);
    let grpc_task = grpc::serve(
        routes,
        grpc_listener,
        listen.transport.clone(),
        shutdown.clone(),
    );
    tracing::info!(
        "operator: workers dial {} (gRPC on {grpc_addr}); watching {}",
        config.advertise_address,
        if config.namespaces.is_empty() {
            "every namespace".to_string()
        } else {
            config.namespaces.join(", ")
        }
    );
    let result = controller::run(ctx, shutdown.clone()).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    let mut grpc_task = grpc_task;
    let grpc_result = tokio::time::timeout(Duration::from_secs(5), &mut grpc_task).await;
    // Streams still open after that (workers wait for the next leader) are dropped with the
    // listener, so its port is free for a successor on the same network.
    grpc_task.abort();
    if let Some((held, release)) = held {
        // The work has stopped: give the Lease up (unless it was lost) before the process goes.
        release.cancel();
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), held).await {
            return Err(OperatorError::Leadership(e));
        }
    }
    if let Ok(Ok(Err(e))) = grpc_result {
        return Err(OperatorError::Grpc(e));
    }
    result.map_err(OperatorError::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::WorkerCa;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_workers_ca_is_read_again_for_each_test_and_a_bad_read_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        let (first, renewed) = (ca_pem(), ca_pem());
        std::fs::write(&file, &first).unwrap();
        let ca = WorkerCa::from_file(file.clone()).unwrap();
        assert_eq!(ca.pem(), first);
        std::fs::write(&file, &renewed).unwrap();
        assert_eq!(ca.pem(), renewed, "a renewed CA reaches the next test");
        std::fs::write(&file, "half-written").unwrap();
        assert_eq!(ca.pem(), renewed, "the last good CA");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(ca.pem(), renewed);
        let err = WorkerCa::from_file(file).unwrap_err().to_string();
        assert!(err.contains("--worker-ca"), "{err}");
    }
}
