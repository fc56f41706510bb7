//! `pacer run --metrics ADDR`: Prometheus metrics of the running test at `/metrics`, rendered
//! from a fresh snapshot on every scrape (see pacer-report's `prom` for the names).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{LimitsProbe, SnapshotSource};
use pacer_plan::Plan;
use pacer_report::{MetricsContext, MetricsServer};

/// How long a scrape in flight when the test ends has to get its answer before the server
/// goes: a scrape renders one snapshot, so far less than this.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Start serving when `addr` is given; prints the URL on stderr.
pub async fn start(
    addr: Option<SocketAddr>,
    plan: &Plan,
    source: SnapshotSource,
    limits: LimitsProbe,
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let started = Instant::now();
    let base = MetricsContext {
        plan: plan.name.clone(),
        limit_names: plan.limits.iter().map(|l| l.name.clone()).collect(),
        ..MetricsContext::default()
    };
    let source = move || {
        let snapshot = source();
        let ctx = MetricsContext {
            limits: limits(),
            elapsed_secs: Some(started.elapsed().as_secs_f64()),
            ..base.clone()
        };
        pacer_report::render_prometheus(&snapshot, &ctx)
    };
    let server = MetricsServer::bind(addr, Arc::new(source)).await?;
    eprintln!(
        "pacer: serving metrics on http://{}/metrics",
        server.local_addr()
    );
    Ok(Some(server))
}
