//! pacer-stats: what a load test measured, and what it means.
//!
//! - [`record`]: the thread-safe [`Recorder`] the engine writes every attempt, request and
//!   iteration into (HDR histograms in microseconds, one lock per request entry).
//! - [`snapshot`]: cumulative [`Snapshot`]s that merge exactly across workers, subtract into
//!   per-interval deltas and travel as JSON (histograms inside as base64 HDR V2 deflate).
//! - [`ledger`]: the evidence ledger (429s, 5xx, timeouts, transport errors), bounded and
//!   merged with the snapshot.
//! - [`hist`]: the one histogram configuration pacer uses, and its hardened wire format.
//! - [`eval`]: k6-style threshold evaluation against a snapshot, the run's [`Verdict`] (no data
//!   fails) and the [`AbortWatch`] for `abortOnFail`.
//! - [`summary`] and [`render`]: the end-of-test summary, as the `--summary-json` schema and as
//!   text for the terminal.
//!
//! No async and no I/O: the engine and the controller own those.

pub mod eval;
pub mod hist;
pub mod ledger;
pub mod record;
pub mod render;
pub mod snapshot;
pub mod summary;

pub use eval::{
    AbortWatch, ThresholdCrossed, ThresholdOutcome, ThresholdResult, Verdict, evaluate,
};
pub use hist::Hist;
pub use ledger::{Ledger, LedgerCause, LedgerEntry};
pub use record::{
    Attempt, ErrorKind, IterationOutcome, Layout, Recorder, RequestOutcome, RetryOutcome,
    ScenarioLayout,
};
pub use render::{render_json, render_text};
pub use snapshot::{
    RequestSnapshot, RequestStats, RetryOutcomeCounts, ScenarioSnapshot, ScenarioStats,
    ServerLimitHeaders, Snapshot, TokenFetchStats,
};
pub use summary::{
    FleetPacing, LimitPacing, ServerSaid, Summary, merge_limit_pacing, summarize, summarize_plan,
};

/// Everything that can go wrong combining or decoding snapshots.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Two snapshots describe different scenarios or requests, so their entries cannot be
    /// paired up.
    #[error("snapshot layouts differ: {0}")]
    LayoutMismatch(String),
    /// `delta` was given a snapshot that is not an earlier state of the same recorder.
    #[error("the earlier snapshot is not a prefix of this one: {0}")]
    NotAPrefix(String),
    /// A histogram could not be combined (or would hold more than the wire format can carry).
    #[error("histogram {field}: {reason}")]
    Histogram { field: String, reason: String },
    /// The text is not a snapshot pacer can read.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
}
