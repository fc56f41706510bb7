//! The fleet as the controller knows it: one slot per worker index with its connection, its
//! state and its LATEST cumulative snapshot. Replacing (never adding) a worker's snapshot is
//! what makes reconnects and controller restarts exact: nothing is lost, nothing counted twice.
//!
//! Verdict integrity: a worker whose snapshot cannot be merged into the others' (a hostile or
//! broken worker can send histograms that each decode but overflow together) is marked failed
//! with the reason and its numbers are kept apart, never merged; the run then fails naming it.
//! Workers are merged in index order, so the first one that no longer fits is the one named.

use std::time::Duration;

use pacer_proto::{ControllerMessage, controller_message};
use pacer_stats::{AbortWatch, Snapshot, StatsError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Inner;
use crate::report::{FleetOutcome, FleetStatus, WorkerRow};

/// Where a worker is in its life. Its serde name ([`WorkerState::as_str`]) is what the
/// per-worker table, the `fleet` section of `--summary-json` and a LoadTest's `workerHealth`
/// show; everything else compares the enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// No worker holds this index yet.
    Waiting,
    /// Hello accepted, Assign sent.
    Assigned,
    /// The worker said Ready.
    Ready,
    /// Started (or resumed); reports flow.
    Running,
    /// Finished, its final report counted (shown as `ok`).
    #[serde(rename = "ok")]
    Finished,
    /// Silent for longer than the loss timeout; its last report is kept.
    Lost,
    /// It could not run its shard (it said why in Finished).
    Failed,
}

impl WorkerState {
    /// Every state, in the order of a worker's life.
    pub const ALL: [WorkerState; 7] = [
        WorkerState::Waiting,
        WorkerState::Assigned,
        WorkerState::Ready,
        WorkerState::Running,
        WorkerState::Finished,
        WorkerState::Lost,
        WorkerState::Failed,
    ];

    /// The state's name in tables, summaries and statuses (its serde name).
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerState::Waiting => "waiting",
            WorkerState::Assigned => "assigned",
            WorkerState::Ready => "ready",
            WorkerState::Running => "running",
            WorkerState::Finished => "ok",
            WorkerState::Lost => "lost",
            WorkerState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for WorkerState {
    /// The name, honouring width and alignment (`{:<10}` in tables).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A worker's current stream.
pub(crate) struct Conn {
    pub id: u64,
    pub tx: mpsc::Sender<Result<ControllerMessage, tonic::Status>>,
}

pub(crate) struct Slot {
    pub index: u32,
    pub name: String,
    pub version: String,
    pub state: WorkerState,
    pub conn: Option<Conn>,
    pub last_heard: Option<Instant>,
    /// The latest cumulative snapshot (replaced, never added).
    pub snapshot: Option<Snapshot>,
    /// Its limiter's table with that snapshot (empty: it sent none).
    pub limits: Vec<pacer_stats::LimitPacing>,
    pub seq: u64,
    /// The worker's elapsed time at its latest report.
    pub elapsed: Duration,
    pub reports: u64,
    pub stopped_early: bool,
    pub reason: Option<String>,
    /// Test time at which the worker was marked lost.
    pub lost_at: Option<Duration>,
    /// Its snapshot could not be merged into the fleet's: it is kept apart, not counted.
    pub unmergeable: bool,
}

pub(crate) struct Fleet {
    pub slots: Vec<Slot>,
    /// The common start instant (derived from a resuming worker after a controller restart).
    pub start: Option<Instant>,
    /// This controller took over a running test from reconnecting workers.
    pub resumed: bool,
    pub stop_reason: Option<String>,
    pub abort_reason: Option<String>,
    pub failure: Option<String>,
    /// The run loop has returned: new streams are refused.
    pub ended: bool,
    /// Bumped on every accepted report, so merges happen only when something changed.
    pub generation: u64,
    /// The fleet's `abortOnFail` thresholds (built on the first [`Fleet::judge`]).
    abort_watch: Option<AbortWatch>,
    /// The generation last judged, and when.
    judged: Option<(u64, Instant)>,
}

/// The fleet is judged (merge checked, abortOnFail evaluated) at most this often while
/// reports stream in: a merge is O(workers), and a report arrives from each worker every
/// second, so judging on every report would be O(workers²) per second. Half the report
/// interval keeps an abort within about a second of the report that shows the failure.
const JUDGE_EVERY: Duration = Duration::from_millis(500);

impl Fleet {
    pub fn new(workers: usize) -> Self {
        Fleet {
            slots: (0..workers)
                .map(|i| Slot {
                    index: i as u32,
                    name: String::new(),
                    version: String::new(),
                    state: WorkerState::Waiting,
                    conn: None,
                    last_heard: None,
                    snapshot: None,
                    limits: Vec::new(),
                    seq: 0,
                    elapsed: Duration::ZERO,
                    reports: 0,
                    stopped_early: false,
                    reason: None,
                    lost_at: None,
                    unmergeable: false,
                })
                .collect(),
            start: None,
            resumed: false,
            stop_reason: None,
            abort_reason: None,
            failure: None,
            ended: false,
            generation: 0,
            abort_watch: None,
            judged: None,
        }
    }

    /// Send to every connected worker (a full channel means the worker does not read; its
    /// loss timeout will deal with it).
    pub fn broadcast(&mut self, body: controller_message::Body) {
        for s in &self.slots {
            if let Some(c) = &s.conn
                && let Err(e) = c.tx.try_send(crate::msg(body.clone()))
            {
                tracing::warn!("worker {}: cannot send {}: {e}", s.index, body.kind());
            }
        }
    }

    /// Send Start to every worker: the delay to `at` is computed per worker right before its
    /// message is queued, so the time spent sending does not shift later workers.
    pub fn start_all(&mut self, inner: &Inner, at: Instant) {
        self.start = Some(at);
        for s in &mut self.slots {
            let start_in = at.saturating_duration_since(Instant::now());
            if let Some(c) = &s.conn {
                let body = controller_message::Body::Start(pacer_proto::Start {
                    start_in_us: start_in.as_micros() as u64,
                    start_at_us: at.saturating_duration_since(inner.epoch).as_micros() as u64,
                });
                if let Err(e) = c.tx.try_send(crate::msg(body)) {
                    tracing::warn!("worker {}: cannot send Start: {e}", s.index);
                }
            }
            s.state = WorkerState::Running;
            s.last_heard = Some(Instant::now());
        }
        tracing::info!(
            "all {} workers ready: starting in {:?}",
            self.slots.len(),
            inner.cfg.start_delay
        );
    }

    /// Mark workers silent for longer than the loss timeout as lost; returns a line per
    /// newly lost worker.
    pub fn mark_lost(&mut self, inner: &Inner, now: Instant) -> Vec<String> {
        let Some(start) = self.start else {
            return Vec::new();
        };
        let timeout = inner.cfg.lost_after;
        let mut lost = Vec::new();
        for s in &mut self.slots {
            let watched = matches!(
                s.state,
                WorkerState::Running | WorkerState::Ready | WorkerState::Assigned
            ) || (self.resumed && s.state == WorkerState::Waiting);
            if !watched {
                continue;
            }
            let heard = s.last_heard.unwrap_or(start);
            if now.saturating_duration_since(heard) > timeout {
                let at = now.saturating_duration_since(start);
                let reason = format!(
                    "no message for {:.1}s (loss timeout {:.1}s)",
                    now.saturating_duration_since(heard).as_secs_f64(),
                    timeout.as_secs_f64()
                );
                lost.push(format!(
                    "worker {} lost at {:.1}s: {reason}; keeping its last report ({} requests)",
                    s.index,
                    at.as_secs_f64(),
                    s.snapshot.as_ref().map_or(0, |x| x.total().attempts)
                ));
                s.state = WorkerState::Lost;
                s.lost_at = Some(at);
                s.reason = Some(reason);
                // Dropping the sender ends the stream; a worker that comes back resumes.
                s.conn = None;
            }
        }
        lost
    }

    /// Past the deadline: whoever has not finished is counted as lost.
    pub fn give_up_unfinished(&mut self, now: Instant, elapsed: Duration) {
        for s in &mut self.slots {
            if !matches!(
                s.state,
                WorkerState::Finished | WorkerState::Lost | WorkerState::Failed
            ) {
                tracing::warn!("worker {} did not finish in time", s.index);
                s.state = WorkerState::Lost;
                s.lost_at = Some(elapsed);
                s.reason = Some("did not finish before the plan's end plus grace".into());
                s.conn = None;
                s.last_heard.get_or_insert(now);
            }
        }
    }

    pub fn all_done(&self) -> bool {
        self.slots.iter().all(|s| {
            matches!(
                s.state,
                WorkerState::Finished | WorkerState::Lost | WorkerState::Failed
            )
        })
    }

    /// Every counted worker's latest snapshot, merged exactly, and the workers whose snapshot
    /// did not fit (index, why). Layouts were checked when each report arrived; what can
    /// still fail is a histogram the merged total could not carry.
    fn merge_counted(&self, inner: &Inner) -> (Snapshot, Vec<(usize, StatsError)>) {
        let mut merged = Snapshot::empty(&inner.layout);
        let mut refused = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Some(snap) = s.snapshot.as_ref().filter(|_| !s.unmergeable) else {
                continue;
            };
            // On error `merge` leaves `merged` as it was: this worker is simply not counted.
            if let Err(e) = merged.merge(snap) {
                refused.push((i, e));
            }
        }
        (merged, refused)
    }

    /// The fleet's merged snapshot as it stands, without the workers whose snapshot does not
    /// fit (read-only, for status displays; [`Fleet::merge_workers`] marks them).
    pub fn merged(&self, inner: &Inner) -> Snapshot {
        self.merge_counted(inner).0
    }

    /// Merge every worker's latest snapshot; a worker whose snapshot cannot be merged is
    /// marked failed with the reason, told to stop, and left out (its numbers kept apart).
    pub fn merge_workers(&mut self, inner: &Inner) -> Snapshot {
        let (merged, refused) = self.merge_counted(inner);
        for (i, e) in refused {
            let s = &mut self.slots[i];
            let reason = format!("its report cannot be merged into the fleet's: {e}");
            tracing::error!("worker {}: {reason}; its numbers are not counted", s.index);
            if let Some(c) = s.conn.take() {
                let _ = c.tx.try_send(crate::msg(controller_message::Body::Abort(
                    pacer_proto::Abort {
                        reason: reason.clone(),
                    },
                )));
            }
            s.state = WorkerState::Failed;
            s.unmergeable = true;
            s.reason = Some(reason);
        }
        merged
    }

    /// While the run goes: merge (marking workers whose snapshot does not fit) and evaluate
    /// the fleet's `abortOnFail` thresholds on the result, stopping every worker on the first
    /// crossing. Cheap to call often: it works only when a report arrived and at most every
    /// [`JUDGE_EVERY`].
    pub fn judge(&mut self, inner: &Inner, now: Instant, elapsed: Duration) {
        if self.judged.is_some_and(|(generation, at)| {
            generation == self.generation || now.saturating_duration_since(at) < JUDGE_EVERY
        }) {
            return;
        }
        self.judged = Some((self.generation, now));
        let merged = self.merge_workers(inner);
        let watch = self
            .abort_watch
            .get_or_insert_with(|| AbortWatch::new(&inner.plan.thresholds));
        if let Some(crossed) = watch.check(&merged, elapsed) {
            let reason = format!("{crossed} (on the fleet's merged results)");
            tracing::warn!("{reason}");
            self.abort_reason = Some(reason.clone());
            self.broadcast(controller_message::Body::Stop(pacer_proto::Stop { reason }));
        }
    }

    fn rows(&self, inner: &Inner, elapsed: Duration) -> Vec<WorkerRow> {
        self.slots
            .iter()
            .map(|s| WorkerRow::new(s, inner.cfg.weights[s.index as usize], elapsed))
            .collect()
    }

    pub fn status(&self, inner: &Inner) -> FleetStatus {
        let now = Instant::now();
        let elapsed = self
            .start
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        FleetStatus {
            started: self.start.is_some_and(|s| s <= now),
            elapsed,
            merged: self.merged(inner),
            workers: self.rows(inner, elapsed),
            stop_reason: self.stop_reason.clone(),
        }
    }

    pub fn outcome(&mut self, inner: &Inner, now: Instant) -> FleetOutcome {
        // Final reports may have arrived since the last judgement: check them all now.
        let merged = self.merge_workers(inner);
        let start = self.start.unwrap_or(now);
        let elapsed = now.saturating_duration_since(start);
        // The test took as long as its longest worker ran (the controller's own clock adds
        // the last report's travel time).
        let worker_elapsed = self
            .slots
            .iter()
            .filter(|s| s.state == WorkerState::Finished)
            .map(|s| s.elapsed)
            .max();
        let elapsed = worker_elapsed.unwrap_or(elapsed);
        // The run's own failure (a lost worker under onWorkerLoss: fail) and every failed
        // worker (could not run its shard, or its report could not be merged), all named.
        let failures: Vec<String> = self
            .failure
            .iter()
            .cloned()
            .chain(
                self.slots
                    .iter()
                    .filter(|s| s.state == WorkerState::Failed)
                    .map(|s| {
                        format!(
                            "worker {} failed: {}",
                            s.index,
                            s.reason.as_deref().unwrap_or("?")
                        )
                    }),
            )
            .collect();
        let failure = (!failures.is_empty()).then(|| failures.join("; "));
        for s in &mut self.slots {
            s.conn = None;
        }
        FleetOutcome {
            test_id: inner.cfg.test_id.clone(),
            merged,
            elapsed,
            workers: self.rows(inner, elapsed),
            worker_snapshots: self.slots.iter().map(|s| s.snapshot.clone()).collect(),
            worker_limits: self.slots.iter().map(|s| s.limits.clone()).collect(),
            abort_reason: self.abort_reason.clone(),
            failure,
            stopped_early: self.stop_reason.is_some()
                || self.abort_reason.is_some()
                || self.slots.iter().any(|s| s.stopped_early),
            resumed: self.resumed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names people and tools read are those the `&'static str` state had.
    #[test]
    fn a_state_shows_and_serializes_under_its_old_name() {
        let names: Vec<&str> = WorkerState::ALL.iter().map(WorkerState::as_str).collect();
        assert_eq!(
            names,
            [
                "waiting", "assigned", "ready", "running", "ok", "lost", "failed"
            ]
        );
        for state in WorkerState::ALL {
            let json = serde_json::to_value(state).expect("serializes");
            assert_eq!(json, serde_json::json!(state.as_str()));
            assert_eq!(state.to_string(), state.as_str());
            let back: WorkerState = serde_json::from_value(json).expect("deserializes");
            assert_eq!(back, state);
        }
        assert_eq!(format!("[{:<8}]", WorkerState::Lost), "[lost    ]");
    }
}
