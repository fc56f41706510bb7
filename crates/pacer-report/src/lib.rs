//! pacer-report: what people look at after (and during) a run.
//!
//! - [`series`]: one record per second built from cumulative snapshots ([`SeriesBuilder`]),
//!   written as JSON Lines or CSV; [`fleet`]: a fleet's, from its workers' reports stamped
//!   with their time since the common start ([`FleetSeries`]).
//! - [`html`]: the self-contained HTML report (verdict, thresholds, charts over time, tables,
//!   the plan that ran), with [`svg`] charts generated here and no scripts.
//! - [`prom`]: a snapshot in the Prometheus text format; [`server`]: a tiny `/metrics` server
//!   that `pacer run`, the worker and the controller can share.
//! - [`redact`]: nothing secret reaches a report; the HTML is written with maud, which escapes
//!   every spliced value by construction.
//!
//! Depends on pacer-stats and pacer-plan only (plus axum/tokio for the metrics server, maud for
//! the HTML and prometheus-client for the metrics text).

pub mod evidence;
pub mod fleet;
pub mod html;
pub mod prom;
pub mod redact;
pub mod series;
pub mod server;
pub mod svg;

use std::net::SocketAddr;

pub use fleet::{FleetSeries, FleetSeriesOutput};
pub use html::{ReportInput, WorkerRow, render as render_html};
pub use prom::{LATENCY_BUCKETS_SECONDS, MetricsContext, render as render_prometheus};
pub use series::{LimiterSample, PauseWindow, PlannedRate, Series, SeriesBuilder, SeriesPoint};
pub use server::{MetricsServer, MetricsSource};

/// What can go wrong serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
