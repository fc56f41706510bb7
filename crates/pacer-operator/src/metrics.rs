//! The operator's HTTP endpoints: `/metrics` (Prometheus text: the operator's own counters,
//! then every running test's live figures as last published by the reconciler, labelled by
//! namespace and LoadTest name: [`crate::loadtest_metrics`]), `/healthz` (the process
//! answers) and `/readyz` (a standby: the Lease answered; the leader: the LoadTest API did).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::controller::Context;
use crate::crd::Phase;

/// The operator's own counters.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    started: AtomicU64,
    ended: [AtomicU64; 3],
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ended(&self, phase: Phase) {
        let i = match phase {
            Phase::Succeeded => 0,
            Phase::Failed => 1,
            _ => 2,
        };
        self.ended[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The operator's families in the text format.
    pub fn render(&self, running: usize) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "pacer_operator_reconciles_total",
            "Reconciles of LoadTests.",
            self.reconciles.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pacer_operator_reconcile_errors_total",
            "Reconciles that failed and were retried.",
            self.failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "pacer_operator_tests_started_total",
            "Tests whose workers were created.",
            self.started.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP pacer_operator_tests_ended_total Tests that ended, by phase.\n# TYPE pacer_operator_tests_ended_total counter"
        );
        for (i, phase) in ["Succeeded", "Failed", "Aborted"].iter().enumerate() {
            let _ = writeln!(
                out,
                "pacer_operator_tests_ended_total{{phase=\"{phase}\"}} {}",
                self.ended[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pacer_operator_tests_running Tests this operator runs now.\n# TYPE pacer_operator_tests_running gauge\npacer_operator_tests_running {running}"
        );
        out
    }
}

/// Concatenate expositions so that each family appears once, its samples together (the text
/// format wants one `# TYPE` per family).
pub fn merge_expositions(parts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for part in parts {
        let mut current = String::new();
        for line in part.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let entry = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    (Vec::new(), Vec::new())
                });
                if !entry.0.iter().any(|h| h == line) {
                    entry.0.push(line.to_string());
                }
                current = name;
            } else if !line.trim().is_empty() {
                let entry = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    (Vec::new(), Vec::new())
                });
                entry.1.push(line.to_string());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((head, samples)) = families.get(&name) {
            for l in head.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    // The last published figures of each running test: nothing merged here.
    let running = ctx.running_uids();
    let parts = vec![
        ctx.metrics.render(running.len()),
        ctx.board.render(&running),
    ];
    (
        [(header::CONTENT_TYPE, pacer_report::prom::CONTENT_TYPE)],
        merge_expositions(&parts),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctx): State<Arc<Context>>) -> (StatusCode, &'static str) {
    if ctx.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: neither the Lease (a standby) nor the LoadTest API (the leader) has answered yet\n",
        )
    }
}

/// The router of the HTTP endpoints.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ctx)
}

/// Serve the endpoints on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(ctx);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_merged() {
        let a =
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{loadtest=\"a\"} 1\n".to_string();
        let b = "# HELP x_total X.\n# TYPE x_total counter\nx_total{loadtest=\"b\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n".to_string();
        let m = merge_expositions(&[a, b]);
        assert_eq!(m.matches("# TYPE x_total").count(), 1, "{m}");
        let xa = m.find("loadtest=\"a\"").unwrap();
        let xb = m.find("loadtest=\"b\"").unwrap();
        let y = m.find("# HELP y").unwrap();
        assert!(xa < xb && xb < y, "{m}");
    }
}
