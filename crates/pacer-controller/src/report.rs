//! What the controller tells people: the fleet's outcome (merged snapshot, per-worker rows),
//! the per-worker table under the usual summary, the `fleet` section of `--summary-json`,
//! and live progress lines whose rates come from subtracting cumulative snapshots.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use pacer_plan::Plan;
use pacer_stats::{Snapshot, Summary};
use serde::Serialize;

use crate::fleet::{Slot, WorkerState};

/// One worker in the summary, in progress displays and in a LoadTest's `workerHealth` (named
/// apart from `pacer_report::WorkerRow`, the HTML report's per-worker row).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerView {
    pub index: u32,
    /// What the worker called itself (host:pid).
    pub name: String,
    pub version: String,
    /// `ok` (finished), `lost`, `failed`, or where it is while running.
    pub state: WorkerState,
    pub weight: u32,
    /// HTTP exchanges in its latest report (retries included).
    pub http_reqs: u64,
    /// `http_reqs` per second of test time.
    pub rate_per_sec: f64,
    /// Logical requests whose final result failed, plus transport errors.
    pub errors: u64,
    pub throttled: u64,
    pub iterations: u64,
    /// Reports received from it.
    pub reports: u64,
    /// The worker's own elapsed time at its latest report, seconds.
    pub reported_at_secs: f64,
    /// When it was marked lost (test time, seconds).
    pub lost_at_secs: Option<f64>,
    /// Why it was lost or failed.
    pub reason: Option<String>,
}

impl WorkerView {
    pub(crate) fn new(s: &Slot, weight: u32, elapsed: Duration) -> Self {
        let t = s.totals;
        let secs = elapsed.as_secs_f64();
        WorkerView {
            index: s.index,
            name: s.name.clone(),
            version: s.version.clone(),
            state: s.state,
            weight,
            http_reqs: t.attempts,
            rate_per_sec: if secs > 0.0 {
                t.attempts as f64 / secs
            } else {
                0.0
            },
            errors: t.failed,
            throttled: t.throttled,
            iterations: t.iterations,
            reports: s.reports,
            reported_at_secs: s.elapsed.as_secs_f64(),
            lost_at_secs: s.lost_at.map(|d| d.as_secs_f64()),
            reason: s.reason.clone(),
        }
    }
}

/// The fleet right now.
#[derive(Clone, Debug)]
pub struct FleetStatus {
    /// The common start has passed.
    pub started: bool,
    pub elapsed: Duration,
    /// Every counted worker's latest snapshot, merged: the fleet's state of its last
    /// generation, shared (cloning the status does not copy it).
    pub merged: Arc<Snapshot>,
    pub workers: Vec<WorkerView>,
    pub stop_reason: Option<String>,
}

/// How a distributed run ended.
#[derive(Clone, Debug)]
pub struct FleetOutcome {
    pub test_id: String,
    /// The fleet's per-second series and each worker's, aligned on the common start
    /// (`pacer_report::fleet`).
    pub series: pacer_report::FleetSeriesOutput,
    /// Every worker's last counted snapshot, merged exactly.
    pub merged: Snapshot,
    pub elapsed: Duration,
    pub workers: Vec<WorkerView>,
    /// Each worker's own results from its Finished message, checked against its reports
    /// counted (index order; `None`: it did not finish, its results disagreed, or
    /// `workers_omitted`).
    pub worker_snapshots: Vec<Option<Snapshot>>,
    /// Some workers' own results were left out to bound the controller's memory: over their
    /// share of `fleet::MAX_WORKER_DETAIL_BYTES` (`fleet::detail_share`).
    pub workers_omitted: bool,
    /// Each worker's limits table with that snapshot (merged into the summary's).
    pub worker_limits: Vec<Vec<pacer_stats::LimitPacing>>,
    /// An abortOnFail threshold stopped the fleet.
    pub abort_reason: Option<String>,
    /// The run failed as a whole (a worker lost under `onWorkerLoss: fail`, a worker that
    /// could not run its shard).
    pub failure: Option<String>,
    pub stopped_early: bool,
    /// This controller took the test over from running workers (it was restarted).
    pub resumed: bool,
}

/// The `fleet` section of `--summary-json`.
#[derive(Serialize)]
struct FleetJson<'a> {
    test_id: &'a str,
    workers: &'a [WorkerView],
    lost: usize,
    abort_reason: &'a Option<String>,
    failure: &'a Option<String>,
    resumed: bool,
}

impl FleetOutcome {
    /// The fleet's summary: the usual one, over the merged snapshot.
    pub fn summary(&self, plan: &Plan) -> Summary {
        let mut summary = pacer_stats::summarize_plan(plan, &self.merged, self.elapsed);
        summary.limits = pacer_stats::merge_limit_pacing(&self.worker_limits);
        summary
    }

    /// How a worker is named in the report's worker table: `<index> <name>`.
    pub fn worker_label(&self, w: &WorkerView) -> String {
        format!("{} {}", w.index, w.name)
    }

    /// The report's row per worker (`table-workers`): each finished one's own results.
    pub fn worker_rows(&self) -> Vec<pacer_report::WorkerRow> {
        self.workers
            .iter()
            .zip(&self.worker_snapshots)
            .filter_map(|(w, snap)| {
                snap.as_ref().map(|s| {
                    pacer_report::WorkerRow::from_snapshot(&self.worker_label(w), s, self.elapsed)
                })
            })
            .collect()
    }

    pub fn lost(&self) -> usize {
        lost(&self.workers)
    }

    /// The summary as text, followed by the per-worker table.
    pub fn render_text(&self, summary: &Summary, color: bool) -> String {
        let mut out = pacer_stats::render_text(summary, color);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&render_workers(&self.workers));
        if let Some(r) = &self.abort_reason {
            let _ = writeln!(out, "aborted: {r}");
        }
        if let Some(r) = &self.failure {
            let _ = writeln!(out, "failed: {r}");
        }
        out
    }

    /// The `--summary-json` document: the usual summary plus a `fleet` object.
    pub fn render_json(&self, summary: &Summary) -> String {
        let mut doc = serde_json::to_value(summary).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("could not serialize the summary: {e}") }),
        );
        let fleet = FleetJson {
            test_id: &self.test_id,
            workers: &self.workers,
            lost: self.lost(),
            abort_reason: &self.abort_reason,
            failure: &self.failure,
            resumed: self.resumed,
        };
        if let (Some(obj), Ok(f)) = (doc.as_object_mut(), serde_json::to_value(fleet)) {
            obj.insert("fleet".into(), f);
        }
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// How many of `rows` are lost workers (the summary's, the table's and progress's count).
fn lost(rows: &[WorkerView]) -> usize {
    rows.iter().filter(|w| w.state == WorkerState::Lost).count()
}

/// The per-worker table: requests, rate, errors, state.
pub fn render_workers(rows: &[WorkerView]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  workers ({}, {} lost)", rows.len(), lost(rows));
    let _ = writeln!(
        out,
        "    {:>3}  {:<24} {:>10} {:>10} {:>8} {:>8}  state",
        "#", "name", "http_reqs", "rate/s", "errors", "429s"
    );
    for w in rows {
        let mut name = w.name.clone();
        if name.chars().count() > 24 {
            name = name.chars().take(23).collect::<String>() + "…";
        }
        let state = match (&w.reason, w.lost_at_secs) {
            (Some(r), Some(at)) => format!("{} at {at:.1}s ({r})", w.state),
            (Some(r), None) => format!("{} ({r})", w.state),
            _ => w.state.to_string(),
        };
        let _ = writeln!(
            out,
            "    {:>3}  {:<24} {:>10} {:>10.1} {:>8} {:>8}  {state}",
            w.index, name, w.http_reqs, w.rate_per_sec, w.errors, w.throttled
        );
    }
    out
}

/// Live progress: each call subtracts the previous cumulative snapshot from the current one
/// (`Snapshot::delta`), so rates and the p95 are those of the last interval, per worker too.
#[derive(Default)]
pub struct ProgressTracker {
    previous: Option<(Arc<Snapshot>, Duration)>,
    per_worker: Vec<(u64, Duration)>,
}

impl ProgressTracker {
    /// Lines describing the fleet now: one for the whole fleet, one per worker.
    pub fn lines(&mut self, status: &FleetStatus, planned: Duration) -> Vec<String> {
        let now = status.elapsed;
        let (interval, dt) = match &self.previous {
            Some((prev, at)) => match status.merged.delta(prev) {
                Ok(d) => (Some(d), now.saturating_sub(*at)),
                Err(e) => {
                    tracing::debug!("progress: {e}");
                    (None, Duration::ZERO)
                }
            },
            None => (Some((*status.merged).clone()), now),
        };
        let total = status.merged.total();
        let (rate, p95) = match &interval {
            Some(d) if dt > Duration::ZERO => {
                let t = d.total();
                (
                    t.attempts as f64 / dt.as_secs_f64(),
                    t.duration.percentile(95.0).map(|us| us as f64 / 1000.0),
                )
            }
            _ => (0.0, None),
        };
        let lost = lost(&status.workers);
        let mut lines = vec![format!(
            "{:>6.1}s/{:.0}s  reqs {}  {:.1}/s  p95 {}  errors {}  429s {}  workers {}{}",
            now.as_secs_f64(),
            planned.as_secs_f64(),
            total.attempts,
            rate,
            p95.map_or("-".to_string(), |v| format!("{v:.1}ms")),
            total.failed,
            total.throttled,
            status.workers.len(),
            if lost > 0 {
                format!(" ({lost} lost)")
            } else {
                String::new()
            }
        )];
        self.per_worker
            .resize(status.workers.len(), (0, Duration::ZERO));
        for (w, prev) in status.workers.iter().zip(self.per_worker.iter_mut()) {
            let dt = now.saturating_sub(prev.1).as_secs_f64();
            let rate = if dt > 0.0 {
                w.http_reqs.saturating_sub(prev.0) as f64 / dt
            } else {
                0.0
            };
            *prev = (w.http_reqs, now);
            lines.push(format!(
                "    worker {:>3}  reqs {:>8}  {:>8.1}/s  errors {:>6}  {}",
                w.index, w.http_reqs, rate, w.errors, w.state
            ));
        }
        self.previous = Some((status.merged.clone(), now));
        lines
    }
}
