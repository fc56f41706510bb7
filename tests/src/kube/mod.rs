//! A Kubernetes cluster for end-to-end tests without containers: etcd, kube-apiserver and
//! kube-controller-manager (built by `make e2e-deps`) as local processes on loopback ports, and
//! a kubelet of this crate that runs pods as local processes, or a real node (containerd, the
//! real kubelet and kube-scheduler: `node.rs`). See `docs/testing.md`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = pacer_tests::kube::Cluster::shared();
//! cluster.create_namespace("demo").await?;
//! let out = cluster.kubectl_ok(&["get", "ns", "demo"]).await?;
//! # Ok(()) }
//! ```

mod cluster;
/// What the k8s_*.rs tests share around an installed chart (helm, LoadTests, `pacer mock`).
pub mod e2e;
mod env;
mod kubeconfig;
mod kubelet;
mod node;
mod pki;
mod proc;

pub use cluster::{
    CONTROLLERS, Cluster, ClusterOptions, KUBERNETES_VERSION, client_from_kubeconfig, kubectl_bin,
    tools_dir,
};
pub use kubeconfig::{Credentials, service_account_token, write_kubeconfig};
pub use kubelet::{Kubelet, KubeletOptions, default_entrypoints};
pub use node::{ImageArchive, PAUSE_IMAGE, RealNode, RealNodeOptions, ctr, normalise_reference};
pub use pki::Pki;
pub use proc::{free_port, group_alive};

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `check` every 100 ms until it returns `Some`, at most `limit`; past it the test fails
/// with `what` and the shared cluster's diagnostics.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            Cluster::shared().diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
