//! The fleet as the controller knows it: one slot per worker index with its connection, its
//! state, the sequence number of its last COUNTED report and its counters. Reports are deltas
//! (protocol 2, proto/pacer/v1/coordinator.proto): each one holds what its worker recorded
//! after the report it names (`since_seq`), which must be the one counted last; a worker that
//! reconnects is told that number (`Assign.counted_seq`) and continues from it, so reconnects
//! and controller restarts stay exact: nothing is lost, nothing counted twice.
//!
//! The fleet's merge is kept running, not redone: each counted report's delta is added once
//! into the fleet total ([`Fleet::take_report`]) and feeds the per-second series. What the
//! status, the `abortOnFail` judgement, the operator's `/metrics` and the final outcome read
//! is that total made whole (the server's latest headers and the controller's own counts
//! added at read time, [`Fleet::merged`]), built at most once per generation and shared as an
//! `Arc`. A report costs one interval of its worker's traffic, whatever the test's length or
//! the fleet's size, and the controller keeps no snapshot per worker while the test runs
//! (issue 23: with cumulative reports, 1000 workers cost 2.5 cores and 550 MiB at 10
//! minutes). The total equals a full merge of the counted reports exactly (debug builds keep
//! each worker's counted sum to assert it at the end; fleet_merge_tests.rs checks it after
//! any sequence of reports). A report that does not continue the one counted last (a broken
//! or hostile worker; a reconnecting one is told where to continue) fails its worker by name.
//!
//! A worker's own results for its row in reports (`pacer report --worker N`) come with its
//! Finished message, once: a cumulative snapshot checked against the counters of the reports
//! counted, sent only when it fits the worker's equal share of [`MAX_WORKER_DETAIL_BYTES`]
//! ([`detail_share`]), so the workers' final messages never bring more than that together.
//!
//! Verdict integrity: a worker whose report cannot be merged into the fleet total (a hostile
//! or broken worker can send histograms that each decode but overflow together) is marked
//! failed with the reason, and nothing of it is counted from that report on (the merge checks
//! before it adds, so the total stays exact); the run then fails naming it.
//!
//! The fleet keeps its own invariants: the session and the run loop (lib.rs, session.rs) change
//! it only through its methods (`admit`, `accept_report`, `finish`, `halt`, `fail`, `end`,
//! ...), never field by field.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pacer_proto::{ControllerMessage, Hello, controller_message};
use pacer_report::FleetSeries;
use pacer_stats::{AbortWatch, ServerLimitHeaders, Snapshot, StatsError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use crate::Inner;
use crate::report::{FleetOutcome, FleetStatus, WorkerView};

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

    /// The worker is done with this test, one way or another (finished, lost or failed): the
    /// run waits for no more from it.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            WorkerState::Finished | WorkerState::Lost | WorkerState::Failed
        )
    }

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
    pub tx: mpsc::Sender<Result<ControllerMessage, Status>>,
}

/// One worker index. Read by the report's rows (report.rs); changed only by [`Fleet`]'s
/// methods (the fleet hands out no `&mut Slot`).
pub(crate) struct Slot {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) state: WorkerState,
    pub(crate) conn: Option<Conn>,
    pub(crate) last_heard: Option<Instant>,
    /// The server's rate-limit headers as its latest counted report had them (a worker's
    /// newest; the fleet shows the newest of all).
    pub(crate) server_limits: Option<ServerLimitHeaders>,
    /// Its final results from its Finished message (for its row in reports), when kept.
    pub(crate) detail: Option<Snapshot>,
    /// Every counted report of it merged: what the running total is checked against.
    #[cfg(any(test, debug_assertions))]
    pub(crate) counted: Option<Snapshot>,
    /// Its limiter's table with its latest report (empty: it sent none).
    pub(crate) limits: Vec<pacer_stats::LimitPacing>,
    /// The sequence number of its last counted report (0: none): the next one must continue
    /// it (`Report.since_seq`).
    pub(crate) seq: u64,
    /// The worker's elapsed time at its latest report.
    pub(crate) elapsed: Duration,
    pub(crate) reports: u64,
    pub(crate) stopped_early: bool,
    pub(crate) reason: Option<String>,
    /// Test time at which the worker was marked lost.
    pub(crate) lost_at: Option<Duration>,
    /// A report of it could not be merged into the fleet's: nothing of it is counted since.
    pub(crate) unmergeable: bool,
    /// The counters of its counted reports, summed as each is counted (a status shows every
    /// worker's row).
    pub(crate) totals: WorkerTotals,
}

/// A worker's counters as its row shows them ([`crate::report::WorkerView`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerTotals {
    pub(crate) attempts: u64,
    pub(crate) failed: u64,
    pub(crate) throttled: u64,
    pub(crate) iterations: u64,
}

impl WorkerTotals {
    /// The sums over every request and scenario (saturating, as a merge's are).
    fn of(s: &Snapshot) -> Self {
        let mut t = WorkerTotals::default();
        for sc in &s.scenarios {
            t.iterations = t.iterations.saturating_add(sc.stats.iterations);
            for r in &sc.requests {
                t.attempts = t.attempts.saturating_add(r.stats.attempts);
                t.failed = t.failed.saturating_add(r.stats.failed);
                t.throttled = t.throttled.saturating_add(r.stats.throttled);
            }
        }
        t
    }

    /// Add another report's counters (saturating, as a merge's are).
    fn add(&mut self, o: &WorkerTotals) {
        self.attempts = self.attempts.saturating_add(o.attempts);
        self.failed = self.failed.saturating_add(o.failed);
        self.throttled = self.throttled.saturating_add(o.throttled);
        self.iterations = self.iterations.saturating_add(o.iterations);
    }
}

/// How the controller halts its workers: one path ([`Fleet::halt`]) for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Graceful: no new iterations, in-flight ones get their gracefulStop.
    Stop,
    /// Interrupt now.
    Abort,
}

impl Halt {
    /// The message that tells a worker.
    fn message(self, reason: &str) -> controller_message::Body {
        let reason = reason.to_string();
        match self {
            Halt::Stop => controller_message::Body::Stop(pacer_proto::Stop { reason }),
            Halt::Abort => controller_message::Body::Abort(pacer_proto::Abort { reason }),
        }
    }
}

/// Where the fleet stands before the start, for "gave up waiting" errors.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub(crate) ready: usize,
    pub(crate) connected: usize,
    /// Indices of the workers not ready.
    pub(crate) missing: Vec<u32>,
}

/// A report as decoded from the wire: its sequence number, the report it continues, the
/// worker's elapsed time, the delta and the limits table.
pub(crate) struct Decoded {
    pub(crate) seq: u64,
    /// The report whose state this one's delta starts from (0: the worker's start).
    pub(crate) since_seq: u64,
    pub(crate) elapsed_us: u64,
    pub(crate) snapshot: Snapshot,
    pub(crate) limits: Vec<pacer_stats::LimitPacing>,
}

/// Longest worker name kept for displays (a host:pid, a pod name).
const MAX_NAME_CHARS: usize = 128;
/// Longest worker version kept (a semver with a build suffix).
const MAX_VERSION_CHARS: usize = 64;

/// A short worker-supplied label for tables: control characters dropped (a table cell has no
/// room for escapes), at most `max` characters.
fn truncate(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

pub(crate) struct Fleet {
    slots: Vec<Slot>,
    /// The common start instant (derived from a resuming worker after a controller restart).
    start: Option<Instant>,
    /// This controller took over a running test from reconnecting workers.
    resumed: bool,
    /// Only resuming workers are admitted ([`crate::ControllerConfig::resume_only`]).
    resume_only: bool,
    /// The first reason the fleet was stopped or aborted ([`Fleet::halt`]).
    stop_reason: Option<String>,
    /// The fleet's abortOnFail threshold that stopped it.
    abort_reason: Option<String>,
    /// The run failed as a whole (a lost worker under `onWorkerLoss: fail`).
    failure: Option<String>,
    /// The run loop has returned: new streams are refused.
    ended: bool,
    /// Bumped on every accepted report, so merges happen only when something changed.
    generation: u64,
    /// Some worker's final results were left out for their size ([`detail_share`]).
    detail_omitted: bool,
    /// The running fleet total: every counted report's delta added once (`None` before the
    /// first). Without the server's headers and the controller's own counts, which
    /// [`Fleet::merged`] adds at read time.
    total: Option<Snapshot>,
    /// The fleet's merged state as last built, and the generation it shows.
    cached: Option<(u64, Arc<Snapshot>)>,
    /// The fleet's `abortOnFail` thresholds (built on the first [`Fleet::judge`]).
    abort_watch: Option<AbortWatch>,
    /// The generation last judged, and when.
    judged: Option<(u64, Instant)>,
    /// The fleet's per-second series, fed each kept report ([`Fleet::with_series`]).
    series: Option<FleetSeries>,
}

/// How far ahead of the controller's own clock a worker's report may be stamped and still
/// land in the second it says (the worker's clock is mapped onto the controller's to ~0.1 ms
/// on loopback; a second covers any drift). A stamp further ahead is held at this bound, so
/// a worker cannot make the series grow faster than time passes.
const SERIES_STAMP_AHEAD: Duration = Duration::from_secs(1);

/// The fleet is judged (abortOnFail evaluated on its merged state) at most this often while
/// reports stream in: building the merged state copies the fleet total and evaluating the
/// thresholds reads every request's histograms, and a report arrives from each worker every
/// second, so judging on every report would do that workers times a second. Half the
/// report interval keeps an abort within about a second of the report that shows the
/// failure.
const JUDGE_EVERY: Duration = Duration::from_millis(500);

/// The room for the workers' final results (their own rows in reports, `pacer report
/// --worker N`), shared equally: each worker is told its share (`Assign.detail_max_bytes`,
/// [`detail_share`]) and sends its results only when they fit, so the final messages,
/// which all arrive within the same second, hold at most this together, and the controller
/// never buffers results it then drops. A worker's final snapshot of a 30-request plan is
/// ~120 KB after 10 minutes, packed in memory about as much: 1000 workers' would be ~120 MiB,
/// half the controller's memory goal (issue 23), while the operator's stored run data leaves
/// per-worker detail out past a few MiB anyway (pacer-operator run_data.rs). 32 MiB keeps
/// every worker's detail of a fleet of tens (3.2 MiB each for 10), or of hundreds on a short
/// test (32 KiB each for 1000).
pub(crate) const MAX_WORKER_DETAIL_BYTES: usize = 32 << 20;

/// The most one of `workers` workers' final results may take on the wire
/// (`Assign.detail_max_bytes`): its equal share of [`MAX_WORKER_DETAIL_BYTES`]. Larger ones
/// are left out (by the worker, or by the session if it sends them anyway), so the kept ones
/// stay within it together.
pub(crate) fn detail_share(workers: usize) -> usize {
    MAX_WORKER_DETAIL_BYTES / workers.max(1)
}

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
                    server_limits: None,
                    detail: None,
                    #[cfg(any(test, debug_assertions))]
                    counted: None,
                    limits: Vec::new(),
                    seq: 0,
                    elapsed: Duration::ZERO,
                    reports: 0,
                    stopped_early: false,
                    reason: None,
                    lost_at: None,
                    unmergeable: false,
                    totals: WorkerTotals::default(),
                })
                .collect(),
            start: None,
            resumed: false,
            resume_only: false,
            stop_reason: None,
            abort_reason: None,
            failure: None,
            ended: false,
            generation: 0,
            detail_omitted: false,
            total: None,
            cached: None,
            abort_watch: None,
            judged: None,
            series: None,
        }
    }

    /// Keep the fleet's per-second series from the workers' reports.
    pub fn with_series(mut self, series: FleetSeries) -> Self {
        self.series = Some(series);
        self
    }

    /// The series learns the common start on the wall clock.
    fn series_started(&mut self, start: Instant) {
        if let Some(series) = &mut self.series {
            let now = Instant::now();
            let wall = SystemTime::now();
            let wall_start = if start >= now {
                wall.checked_add(start - now)
            } else {
                wall.checked_sub(now - start)
            };
            let unix_ms = wall_start
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            series.set_started_unix_ms(unix_ms);
        }
    }

    /// Count worker `index`'s report if it is newer than the one counted last and continues
    /// it; true when counted. Its delta is added into the fleet total once and handed to the
    /// series (its stamp bounded by this clock). A report that continues another one fails
    /// the worker by name ([`Fleet::fail_worker`]); a delta the total cannot carry makes the
    /// worker unmergeable ([`Fleet::set_unmergeable`]).
    fn take_report(&mut self, index: u32, mut r: Decoded, now: Instant) -> bool {
        let i = index as usize;
        let bound = self.elapsed(now).saturating_add(SERIES_STAMP_AHEAD);
        let slot = &self.slots[i];
        if slot.unmergeable {
            return false;
        }
        if r.seq <= slot.seq {
            tracing::debug!("worker {index}: stale report {} (have {})", r.seq, slot.seq);
            return false;
        }
        if r.since_seq != slot.seq {
            let reason = format!(
                "its report {} continues its report {}, but the last one counted is {}{}",
                r.seq,
                r.since_seq,
                slot.seq,
                if slot.seq == 0 { " (none)" } else { "" }
            );
            self.fail_worker(i, reason);
            return false;
        }
        // Zero counts as absent, so that a merge of deltas and of whole snapshots agree.
        r.snapshot.canonicalize();
        let total = self
            .total
            .get_or_insert_with(|| Snapshot::empty(&r.snapshot.layout()));
        // On error the total is as it was: the merge checks every histogram first.
        if let Err(e) = total.merge_in_place(&r.snapshot) {
            self.set_unmergeable(i, &e);
            return false;
        }
        let stamp = Duration::from_micros(r.elapsed_us).min(bound);
        if let Some(series) = &mut self.series {
            series.report(i, stamp, &r.snapshot);
        }
        let slot = &mut self.slots[i];
        slot.seq = r.seq;
        slot.elapsed = Duration::from_micros(r.elapsed_us);
        slot.totals.add(&WorkerTotals::of(&r.snapshot));
        slot.server_limits = r.snapshot.server_limits.clone();
        #[cfg(any(test, debug_assertions))]
        {
            let counted = slot
                .counted
                .get_or_insert_with(|| Snapshot::empty(&r.snapshot.layout()));
            if let Err(e) = counted.merge_in_place(&r.snapshot) {
                tracing::error!("worker {index}: its counted sum cannot take the report: {e}");
            }
        }
        if !r.limits.is_empty() {
            slot.limits = r.limits;
        }
        slot.reports += 1;
        true
    }

    /// Worker `i` broke the protocol's bookkeeping (its report does not continue the one
    /// counted): it is failed with `reason`, told to stop, and nothing more of it is counted.
    fn fail_worker(&mut self, i: usize, reason: String) {
        let s = &mut self.slots[i];
        tracing::error!("worker {}: {reason}; it is failed", s.index);
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

    /// Worker `i`'s report cannot be merged into the fleet's: it is failed with the reason,
    /// told to stop, and nothing more of it is counted (what was counted before stays).
    fn set_unmergeable(&mut self, i: usize, e: &StatsError) {
        self.fail_worker(
            i,
            format!("its report cannot be merged into the fleet's: {e}"),
        );
    }

    /// The sequence number of worker `index`'s last counted report (0: none): what a
    /// resuming worker continues from and what the controller's heartbeats tell it.
    pub fn counted_seq(&self, index: u32) -> u64 {
        self.slots[index as usize].seq
    }

    /// Admit only resuming workers from now on: the test started under another controller.
    pub fn only_resuming(&mut self) {
        self.resume_only = true;
    }

    /// The common start has been set (the start is under way, or a worker resumed).
    pub fn started(&self) -> bool {
        self.start.is_some()
    }

    /// Time since the common start (zero before it).
    pub fn elapsed(&self, now: Instant) -> Duration {
        self.start
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// The first reason the fleet was stopped or aborted.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.as_deref()
    }

    /// Where worker `index` is.
    pub fn state(&self, index: u32) -> WorkerState {
        self.slots[index as usize].state
    }

    /// Register a checked Hello's stream in its slot: `(index, resuming)`. A fresh worker
    /// takes the index it asks for or the first free one, and only before the start; a
    /// resuming one takes its index back (the old stream may not have noticed it broke) unless
    /// its final report is already here ([`pacer_proto::Refusal::AlreadyFinished`]). A
    /// resuming worker that finds no start (this controller restarted while the test ran)
    /// sets the test's start where the worker says it is.
    pub fn admit(
        &mut self,
        test_id: &str,
        h: &Hello,
        conn: Conn,
        now: Instant,
    ) -> Result<(u32, bool), Status> {
        let n = self.slots.len() as u32;
        let resume = h.resume.as_ref();
        if self.ended {
            return Err(Status::failed_precondition(format!(
                "the test {test_id} has ended"
            )));
        }
        let index = match h.worker_index {
            Some(i) if i >= n => {
                return Err(Status::invalid_argument(format!(
                    "hello.worker_index: {i} is not below the number of workers ({n})"
                )));
            }
            Some(i) => i,
            None if resume.is_some() => {
                return Err(Status::invalid_argument(
                    "hello.worker_index: required when resuming",
                ));
            }
            None => self
                .slots
                .iter()
                .find(|s| s.state == WorkerState::Waiting && s.conn.is_none())
                .map(|s| s.index)
                .ok_or_else(|| {
                    Status::resource_exhausted(format!("all {n} worker slots are taken"))
                })?,
        };
        let started = self.start.is_some();
        let slot = &mut self.slots[index as usize];
        if let Some(r) = resume {
            if h.test_id.is_empty() {
                return Err(Status::invalid_argument(
                    "hello.test_id: required when resuming",
                ));
            }
            if matches!(slot.state, WorkerState::Finished | WorkerState::Failed) {
                return Err(pacer_proto::Refusal::AlreadyFinished
                    .to_status(format!("worker {index} has already finished")));
            }
            slot.state = WorkerState::Running;
            slot.reason = None;
            slot.lost_at = None;
            if !started {
                // The Hello travelled a few ms; reports correct the rest.
                let elapsed = Duration::from_micros(r.elapsed_us);
                self.start = Some(now.checked_sub(elapsed).unwrap_or(now));
                if let Some(start) = self.start {
                    self.series_started(start);
                }
                self.resumed = true;
                for s in &mut self.slots {
                    // Workers that do not come back are lost `lost_after` from now.
                    s.last_heard.get_or_insert(now);
                }
                tracing::warn!(
                    "resuming test {test_id} from worker {index} at {:.1}s",
                    elapsed.as_secs_f64()
                );
            }
        } else {
            if started || self.resume_only {
                return Err(Status::failed_precondition(format!(
                    "the test has already started; worker index {index} cannot join now"
                )));
            }
            if slot.conn.is_some() {
                return Err(Status::already_exists(format!(
                    "worker index {index} is already connected ({})",
                    slot.name
                )));
            }
            slot.state = WorkerState::Assigned;
        }
        let slot = &mut self.slots[index as usize];
        slot.conn = Some(conn);
        slot.last_heard = Some(now);
        slot.name = truncate(&h.name, MAX_NAME_CHARS);
        slot.version = truncate(&h.version, MAX_VERSION_CHARS);
        Ok((index, resume.is_some()))
    }

    /// What a worker that was away when the fleet was halted hears on resuming: the run's
    /// failure as an Abort, else the abortOnFail or stop reason as a Stop.
    pub fn halt_for_resumed(&self) -> Option<controller_message::Body> {
        if let Some(reason) = &self.failure {
            return Some(Halt::Abort.message(reason));
        }
        self.abort_reason
            .as_ref()
            .or(self.stop_reason.as_ref())
            .map(|r| Halt::Stop.message(r))
    }

    /// A message arrived on stream `conn` of worker `index` at `now`: its state, if that
    /// stream still holds the slot (else it was replaced or the worker declared lost).
    pub fn heard(&mut self, index: u32, conn: u64, now: Instant) -> Result<WorkerState, Status> {
        let slot = &mut self.slots[index as usize];
        if slot.conn.as_ref().is_none_or(|c| c.id != conn) {
            return Err(Status::aborted(format!(
                "worker {index}: this stream was replaced or declared lost; reconnect to resume"
            )));
        }
        slot.last_heard = Some(now);
        Ok(slot.state)
    }

    /// Worker `index` said Ready.
    pub fn ready(&mut self, index: u32) {
        self.slots[index as usize].state = WorkerState::Ready;
    }

    /// Count a running worker's report if it is newer than the one counted last and
    /// continues it; true when counted.
    pub fn accept_report(&mut self, index: u32, report: Decoded) -> bool {
        let kept = self.take_report(index, report, Instant::now());
        if kept {
            self.generation += 1;
        }
        kept
    }

    /// Worker `index` finished: its final report (if it sent one) is counted, its final
    /// results (`detail`) kept for its row, or noted as left out for their size
    /// (`detail_left_out`), and it is finished or, with an `error` (its own words), failed.
    /// Its stream is closed.
    pub fn finish(
        &mut self,
        index: u32,
        report: Option<Decoded>,
        detail: Option<Snapshot>,
        detail_left_out: bool,
        stopped_early: bool,
        error: Option<String>,
    ) {
        if let Some(r) = report {
            self.take_report(index, r, Instant::now());
        }
        if let Some(snapshot) = detail {
            self.keep_detail(index as usize, snapshot);
        }
        self.detail_omitted |= detail_left_out;
        let slot = &mut self.slots[index as usize];
        slot.stopped_early = stopped_early;
        match error {
            // An unmergeable worker stays failed, with that reason.
            _ if slot.unmergeable => {}
            None => slot.state = WorkerState::Finished,
            Some(e) => {
                slot.state = WorkerState::Failed;
                slot.reason = Some(e);
            }
        }
        slot.conn = None;
        self.generation += 1;
    }

    /// Keep worker `i`'s final results for its row if they agree with the reports counted
    /// (the same counters: they are display only, never counted).
    fn keep_detail(&mut self, i: usize, mut snapshot: Snapshot) {
        snapshot.canonicalize();
        let s = &mut self.slots[i];
        let said = WorkerTotals::of(&snapshot);
        if s.unmergeable || said != s.totals {
            tracing::warn!(
                "worker {}: its final results ({} requests) disagree with its reports counted ({}): not shown as its row",
                s.index,
                said.attempts,
                s.totals.attempts
            );
            return;
        }
        s.detail = Some(snapshot);
    }

    /// Stream `conn` of worker `index` ended. Before the start a worker that leaves frees its
    /// index; after it the slot keeps its state and the loss timeout decides.
    pub fn disconnect(&mut self, index: u32, conn: u64) {
        let started = self.start.is_some();
        let slot = &mut self.slots[index as usize];
        if slot.conn.as_ref().is_some_and(|c| c.id == conn) {
            slot.conn = None;
            if !started && matches!(slot.state, WorkerState::Assigned | WorkerState::Ready) {
                slot.state = WorkerState::Waiting;
            }
        }
    }

    /// Stop or abort every connected worker; the first reason given is the fleet's stop
    /// reason. Before the start the run then ends without starting.
    pub fn halt(&mut self, how: Halt, reason: &str) {
        self.stop_reason.get_or_insert_with(|| reason.to_string());
        self.broadcast(how.message(reason));
    }

    /// The run fails as a whole (a lost worker under `onWorkerLoss: fail`): the first failure
    /// is kept and every worker aborted with it; a later one changes nothing.
    pub fn fail(&mut self, reason: String) {
        if self.failure.is_some() {
            return;
        }
        self.broadcast(Halt::Abort.message(&reason));
        self.failure = Some(reason);
    }

    /// The first worker that could not run its shard, and why.
    pub fn first_failed(&self) -> Option<(u32, String)> {
        self.slots
            .iter()
            .find(|s| s.state == WorkerState::Failed)
            .map(|s| (s.index, s.reason.clone().unwrap_or_default()))
    }

    /// Every worker said Ready.
    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| s.state == WorkerState::Ready)
    }

    /// Who is ready, who is connected, who is missing.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            ready: self
                .slots
                .iter()
                .filter(|s| s.state == WorkerState::Ready)
                .count(),
            connected: self.slots.iter().filter(|s| s.conn.is_some()).count(),
            missing: self
                .slots
                .iter()
                .filter(|s| s.state != WorkerState::Ready)
                .map(|s| s.index)
                .collect(),
        }
    }

    /// The run loop has returned: new streams are refused from now on; with `abort`, every
    /// connected worker is aborted with that reason (the run gave up before the start).
    pub fn end(&mut self, abort: Option<&str>) {
        self.ended = true;
        if let Some(reason) = abort {
            self.broadcast(Halt::Abort.message(reason));
        }
    }

    /// Send to every connected worker (a full channel means the worker does not read; its
    /// loss timeout will deal with it).
    pub(crate) fn broadcast(&self, body: controller_message::Body) {
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
        self.series_started(at);
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
                    "worker {} lost at {:.1}s: {reason}; keeping its reports counted ({} requests)",
                    s.index,
                    at.as_secs_f64(),
                    s.totals.attempts
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
            if !s.state.is_settled() {
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
        self.slots.iter().all(|s| s.state.is_settled())
    }

    /// The server's latest rate-limit headers among the workers' latest counted reports, as
    /// a merge in index order picks them (the newest by `at_unix_ms`, the first on a tie).
    /// Not kept in the running total: a worker's latest headers may be older than those of
    /// its previous report (a recorder keeps the last recorded), and the total would keep
    /// the newest ever seen.
    fn latest_server_limits(&self) -> Option<ServerLimitHeaders> {
        let mut best: Option<&ServerLimitHeaders> = None;
        for s in &self.slots {
            if let Some(h) = s.server_limits.as_ref()
                && best.is_none_or(|b| h.at_unix_ms > b.at_unix_ms)
            {
                best = Some(h);
            }
        }
        best.cloned()
    }

    /// The fleet's merged state from the running total: the total, the server's latest
    /// headers and what the controller did itself for the fleet (the tokens it fetched for
    /// everyone), read now. One copy of the total, O(workers) comparisons.
    fn build_merged(&self, inner: &Inner) -> Snapshot {
        let mut merged = self
            .total
            .clone()
            .unwrap_or_else(|| Snapshot::empty(&inner.layout));
        merged.server_limits = self.latest_server_limits();
        if let Some(own) = inner.served.as_ref().and_then(|s| s.snapshot())
            && let Err(e) = merged.merge_in_place(&own)
        {
            tracing::warn!("the controller's own counts cannot be merged: {e}");
        }
        merged
    }

    /// Every worker's counted reports, summed per worker and then merged in index order,
    /// with the server's latest headers and the controller's own counts: what the running
    /// total must equal (checked in debug builds and tests, never kept in production).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn full_merge(&self, inner: &Inner) -> Snapshot {
        let mut merged = Snapshot::empty(&inner.layout);
        for s in &self.slots {
            if let Some(snap) = &s.counted
                && let Err(e) = merged.merge(snap)
            {
                tracing::error!("worker {}: full merge: {e}", s.index);
            }
        }
        merged.server_limits = self.latest_server_limits();
        if let Some(own) = inner.served.as_ref().and_then(|s| s.snapshot())
            && let Err(e) = merged.merge(&own)
        {
            tracing::warn!("the controller's own counts cannot be merged: {e}");
        }
        merged
    }

    /// The fleet's merged state, built at most once per generation (a kept report, a finish)
    /// and shared: the status, the `abortOnFail` judgement, progress displays and the
    /// operator's `/metrics` read this. The controller's own counts are those of the build.
    pub fn merged(&mut self, inner: &Inner) -> Arc<Snapshot> {
        if let Some((generation, merged)) = &self.cached
            && *generation == self.generation
        {
            return merged.clone();
        }
        let merged = Arc::new(self.build_merged(inner));
        self.cached = Some((self.generation, merged.clone()));
        merged
    }

    /// While the run goes: evaluate the fleet's `abortOnFail` thresholds on its merged state
    /// (workers whose snapshot does not fit were marked as their report arrived), stopping
    /// every worker on the first crossing. Cheap to call often: it works only when a report
    /// arrived and at most every [`JUDGE_EVERY`].
    pub fn judge(&mut self, inner: &Inner, now: Instant, elapsed: Duration) {
        if self.judged.is_some_and(|(generation, at)| {
            generation == self.generation || now.saturating_duration_since(at) < JUDGE_EVERY
        }) {
            return;
        }
        self.judged = Some((self.generation, now));
        let merged = self.merged(inner);
        let watch = self
            .abort_watch
            .get_or_insert_with(|| AbortWatch::new(&inner.plan.thresholds));
        if let Some(crossed) = watch.check(&merged, elapsed) {
            let reason = format!("{crossed} (on the fleet's merged results)");
            tracing::warn!("{reason}");
            self.broadcast(Halt::Stop.message(&reason));
            self.abort_reason = Some(reason);
        }
    }

    fn rows(&self, inner: &Inner, elapsed: Duration) -> Vec<WorkerView> {
        self.slots
            .iter()
            .map(|s| WorkerView::new(s, inner.cfg.weights[s.index as usize], elapsed))
            .collect()
    }

    pub fn status(&mut self, inner: &Inner) -> FleetStatus {
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
        // Built now, not from the cache: the controller's own counts have settled.
        let merged = self.build_merged(inner);
        #[cfg(debug_assertions)]
        {
            let full = self.full_merge(inner);
            debug_assert!(
                merged == full,
                "the running fleet total differs from a full merge of the workers' latest snapshots"
            );
        }
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
        let series = self
            .series
            .take()
            .map(|s| s.finish(elapsed))
            .unwrap_or_default();
        FleetOutcome {
            test_id: inner.cfg.test_id.clone(),
            series,
            merged,
            elapsed,
            workers: self.rows(inner, elapsed),
            worker_snapshots: self.slots.iter_mut().map(|s| s.detail.take()).collect(),
            workers_omitted: self.detail_omitted,
            worker_limits: self
                .slots
                .iter()
                .map(|s| served_said(inner, s.limits.clone()))
                .collect(),
            abort_reason: self.abort_reason.clone(),
            failure,
            stopped_early: self.stop_reason.is_some()
                || self.abort_reason.is_some()
                || self.slots.iter().any(|s| s.stopped_early),
            resumed: self.resumed,
        }
    }
}

/// A worker's limits table with what the controller heard of the server for the limits it
/// serves (the workers forward the headers; only the controller knows the fleet's slots, so
/// only it measures others' traffic): the summary shows it as a Redis fleet's does.
fn served_said(
    inner: &Inner,
    mut rows: Vec<pacer_stats::LimitPacing>,
) -> Vec<pacer_stats::LimitPacing> {
    if let Some(served) = &inner.served {
        for (i, row) in rows.iter_mut().enumerate() {
            if let Some(said) = served.server_said(i) {
                row.server = Some(said);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use pacer_proto::{PROTOCOL_VERSION, Resume};

    use super::*;

    type Inbox = mpsc::Receiver<Result<ControllerMessage, Status>>;

    fn conn(id: u64) -> (Conn, Inbox) {
        let (tx, rx) = mpsc::channel(8);
        (Conn { id, tx }, rx)
    }

    fn hello(index: Option<u32>, resume: Option<u64>) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            test_id: "t1".into(),
            worker_index: index,
            version: "v\u{1b}1".into(),
            session_token: String::new(),
            name: "n".repeat(MAX_NAME_CHARS + 5),
            resume: resume.map(|elapsed_us| Resume {
                elapsed_us,
                finished: false,
            }),
            takes_served_budget: false,
        }
    }

    /// The kinds and reasons of what a worker's stream has been sent.
    fn sent(rx: &mut Inbox) -> Vec<(&'static str, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| match m.expect("a message").body.expect("a body") {
                controller_message::Body::Stop(s) => ("Stop", s.reason),
                controller_message::Body::Abort(a) => ("Abort", a.reason),
                other => (other.kind(), String::new()),
            })
            .collect()
    }

    /// A worker's first report (it continues none), numbered `seq`.
    fn report(seq: u64) -> Decoded {
        Decoded {
            seq,
            since_seq: 0,
            elapsed_us: seq * 1000,
            snapshot: Snapshot::empty(&pacer_stats::Layout {
                scenarios: Vec::new(),
            }),
            limits: Vec::new(),
        }
    }

    /// A worker's stamp is bounded by the controller's own clock: a report claiming to be an
    /// hour into a test that started 3 s ago adds a few rows to the series, not 3600.
    #[test]
    fn a_report_stamped_far_ahead_is_held_to_the_controllers_clock() {
        let layout = pacer_stats::Layout {
            scenarios: Vec::new(),
        };
        let series = FleetSeries::new(&layout, pacer_report::PlannedRate::default(), 1);
        let mut f = Fleet::new(1).with_series(series);
        let now = Instant::now();
        let (c, _rx) = conn(1);
        f.admit("t1", &hello(Some(0), Some(3_000_000)), c, now)
            .unwrap();
        let mut ahead = report(1);
        ahead.elapsed_us = 3_600_000_000;
        assert!(f.accept_report(0, ahead));
        let closed = f.series.as_ref().map(FleetSeries::closed_seconds);
        assert!(
            closed.is_some_and(|n| n <= 4),
            "{closed:?} seconds closed for a test 3 s old"
        );
    }

    #[test]
    fn a_fresh_worker_takes_the_first_free_slot_and_its_labels_are_bounded() {
        let mut f = Fleet::new(2);
        let now = Instant::now();
        let (c, _rx) = conn(1);
        assert_eq!(
            f.admit("t1", &hello(None, None), c, now).ok(),
            Some((0, false))
        );
        assert_eq!(f.state(0), WorkerState::Assigned);
        assert_eq!(f.slots[0].name.chars().count(), MAX_NAME_CHARS);
        assert_eq!(f.slots[0].version, "v1", "control characters dropped");
        let (c, _rx) = conn(2);
        assert_eq!(
            f.admit("t1", &hello(None, None), c, now).ok(),
            Some((1, false))
        );
        let (c, _rx) = conn(3);
        let refused = f.admit("t1", &hello(None, None), c, now).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let (c, _rx) = conn(4);
        let taken = f.admit("t1", &hello(Some(1), None), c, now).unwrap_err();
        assert_eq!(taken.code(), tonic::Code::AlreadyExists);
    }

    #[test]
    fn a_worker_that_leaves_before_the_start_frees_its_index_for_another() {
        let mut f = Fleet::new(1);
        let now = Instant::now();
        let (c, _rx) = conn(1);
        f.admit("t1", &hello(Some(0), None), c, now)
            .expect("admitted");
        f.ready(0);
        // A stale stream's end changes nothing; the current one's frees the slot.
        f.disconnect(0, 99);
        assert_eq!(f.state(0), WorkerState::Ready);
        f.disconnect(0, 1);
        assert_eq!(f.state(0), WorkerState::Waiting);
        let (c, _rx) = conn(2);
        assert_eq!(
            f.admit("t1", &hello(None, None), c, now).ok(),
            Some((0, false))
        );
    }

    #[test]
    fn a_resuming_worker_sets_the_start_of_a_restarted_controller() {
        let mut f = Fleet::new(2);
        let now = Instant::now() + Duration::from_secs(60);
        let (c, _rx) = conn(1);
        assert_eq!(
            f.admit("t1", &hello(Some(1), Some(5_000_000)), c, now).ok(),
            Some((1, true))
        );
        assert!(f.started() && f.resumed);
        assert_eq!(f.elapsed(now), Duration::from_secs(5));
        assert_eq!(f.state(1), WorkerState::Running);
        // The worker that has not come back is watched from now.
        assert_eq!(f.slots[0].last_heard, Some(now));
        // Fresh workers cannot join a started test.
        let (c, _rx) = conn(2);
        let late = f.admit("t1", &hello(Some(0), None), c, now).unwrap_err();
        assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    }

    /// A coordinator rebuilt after its controller restarted mid-test: a fresh worker (a
    /// process that lost its shard) would run the shard a second time, so only resuming
    /// workers get in, even before the first of them has set the start.
    #[test]
    fn a_resume_only_fleet_refuses_fresh_workers_before_and_after_the_first_resume() {
        let mut f = Fleet::new(2);
        f.only_resuming();
        let now = Instant::now() + Duration::from_secs(60);
        let (c, _rx) = conn(1);
        let fresh = f.admit("t1", &hello(Some(0), None), c, now).unwrap_err();
        assert_eq!(fresh.code(), tonic::Code::FailedPrecondition);
        assert!(!f.started(), "a refused worker sets nothing");
        let (c, _rx) = conn(2);
        assert_eq!(
            f.admit("t1", &hello(Some(1), Some(3_000_000)), c, now).ok(),
            Some((1, true))
        );
        assert_eq!(f.elapsed(now), Duration::from_secs(3));
        let (c, _rx) = conn(3);
        assert!(f.admit("t1", &hello(Some(0), None), c, now).is_err());
        let (c, _rx) = conn(4);
        assert_eq!(
            f.admit("t1", &hello(Some(0), Some(3_000_000)), c, now).ok(),
            Some((0, true))
        );
    }

    #[test]
    fn a_finished_worker_cannot_resume_and_an_ended_test_takes_nobody() {
        let mut f = Fleet::new(2);
        let now = Instant::now();
        let (c, _rx) = conn(1);
        f.admit("t1", &hello(Some(0), Some(1000)), c, now)
            .expect("admitted");
        f.finish(0, Some(report(3)), None, false, false, None);
        assert_eq!(f.state(0), WorkerState::Finished);
        assert!(f.slots[0].conn.is_none(), "its stream is closed");
        let (c, _rx) = conn(2);
        let again = f
            .admit("t1", &hello(Some(0), Some(2000)), c, now)
            .unwrap_err();
        assert_eq!(
            pacer_proto::Refusal::of(&again),
            Some(pacer_proto::Refusal::AlreadyFinished)
        );
        f.end(None);
        let (c, _rx) = conn(3);
        let ended = f
            .admit("t1", &hello(Some(1), Some(2000)), c, now)
            .unwrap_err();
        assert_eq!(ended.message(), "the test t1 has ended");
    }

    #[test]
    fn only_the_stream_holding_the_slot_is_heard() {
        let mut f = Fleet::new(1);
        let now = Instant::now();
        let (c, _rx) = conn(1);
        f.admit("t1", &hello(Some(0), Some(0)), c, now)
            .expect("admitted");
        let (c, _rx) = conn(2);
        f.admit("t1", &hello(Some(0), Some(0)), c, now)
            .expect("a reconnect takes over");
        assert_eq!(f.heard(0, 1, now).unwrap_err().code(), tonic::Code::Aborted);
        assert_eq!(f.heard(0, 2, now).ok(), Some(WorkerState::Running));
    }

    #[test]
    fn stale_reports_change_nothing() {
        let mut f = Fleet::new(1);
        let (c, _rx) = conn(1);
        f.admit("t1", &hello(Some(0), Some(0)), c, Instant::now())
            .expect("admitted");
        assert!(f.accept_report(0, report(2)));
        assert_eq!(f.counted_seq(0), 2);
        assert!(!f.accept_report(0, report(2)), "a replay");
        assert!(!f.accept_report(0, report(1)), "an older one");
        assert_eq!((f.slots[0].seq, f.slots[0].reports), (2, 1));
        assert_eq!(f.slots[0].elapsed, Duration::from_millis(2));
        assert_eq!(
            f.generation, 1,
            "only the counted report counts as a change"
        );
        assert_eq!(f.state(0), WorkerState::Running);
    }

    /// A report must continue the one counted last: one that continues another (a worker
    /// that lost track, or lies) fails its worker by name, and it is told to stop.
    #[test]
    fn a_report_that_does_not_continue_the_counted_one_fails_its_worker() {
        let mut f = Fleet::new(1);
        let (c, mut rx) = conn(1);
        f.admit("t1", &hello(Some(0), Some(0)), c, Instant::now())
            .expect("admitted");
        assert!(f.accept_report(0, report(1)));
        let mut skips = report(3);
        skips.since_seq = 2;
        assert!(!f.accept_report(0, skips));
        assert_eq!(f.state(0), WorkerState::Failed);
        let (index, reason) = f.first_failed().expect("failed");
        assert_eq!(index, 0);
        assert!(
            reason.contains("its report 3 continues its report 2, but the last one counted is 1"),
            "{reason}"
        );
        assert_eq!(sent(&mut rx), [("Abort", reason)]);
        // Nothing more of it is counted.
        let mut next = report(4);
        next.since_seq = 1;
        assert!(!f.accept_report(0, next));
        assert_eq!(f.counted_seq(0), 1);
    }

    /// A worker's own results are kept when their counters are those of its reports
    /// counted; one left out for its size marks the outcome (`workers_omitted`) and leaves
    /// the others kept.
    #[test]
    fn a_workers_own_results_are_checked_and_left_out_when_too_large() {
        let layout = pacer_stats::Layout {
            scenarios: vec![pacer_stats::ScenarioLayout {
                name: "s".into(),
                requests: vec!["a".into()],
            }],
        };
        let with = |attempts: u64| {
            let mut s = Snapshot::empty(&layout);
            s.scenarios[0].requests[0].stats.attempts = attempts;
            s
        };
        let mut f = Fleet::new(3);
        for i in 0..3 {
            let (c, _rx) = conn(i + 1);
            f.admit("t1", &hello(Some(i as u32), Some(0)), c, Instant::now())
                .expect("admitted");
            let mut r = report(1);
            r.snapshot = with(5);
            assert!(f.accept_report(i as u32, r));
        }
        // Worker 0 says it made 6 requests, its reports 5: not shown.
        f.finish(0, None, Some(with(6)), false, false, None);
        assert!(f.slots[0].detail.is_none());
        assert!(!f.detail_omitted);
        // Worker 1's agree: kept.
        f.finish(1, None, Some(with(5)), false, false, None);
        assert!(f.slots[1].detail.is_some());
        // Worker 2's were too large to send: the outcome says so, worker 1's stay.
        f.finish(2, None, None, true, false, None);
        assert!(f.slots[1].detail.is_some() && f.slots[2].detail.is_none());
        assert!(f.detail_omitted);
        assert!(f.slots.iter().all(|s| s.state == WorkerState::Finished));
    }

    /// Each worker's share of the room for the workers' own results: the shares never add
    /// up to more than the room.
    #[test]
    fn detail_shares_add_up_to_the_room_at_most() {
        for workers in [0, 1, 3, 10, 1000, 10_000] {
            let share = detail_share(workers);
            assert!(
                share * workers.max(1) <= MAX_WORKER_DETAIL_BYTES,
                "{workers}"
            );
        }
        assert_eq!(detail_share(1000), MAX_WORKER_DETAIL_BYTES / 1000);
    }

    #[test]
    fn a_worker_that_cannot_run_is_failed_with_its_words() {
        let mut f = Fleet::new(2);
        let (c, _rx) = conn(1);
        f.admit("t1", &hello(Some(1), None), c, Instant::now())
            .expect("admitted");
        f.finish(1, None, None, false, true, Some("no such host".into()));
        assert_eq!(f.first_failed(), Some((1, "no such host".into())));
        assert!(f.slots[1].stopped_early);
    }

    /// Stop and abort are one path: the first reason is the fleet's, each broadcast is sent.
    #[test]
    fn halting_keeps_the_first_reason_and_tells_every_connected_worker() {
        let mut f = Fleet::new(2);
        let now = Instant::now();
        let (c, mut rx0) = conn(1);
        f.admit("t1", &hello(Some(0), None), c, now)
            .expect("admitted");
        f.halt(Halt::Stop, "ctrl-c");
        f.halt(Halt::Abort, "ctrl-c again");
        assert_eq!(f.stop_reason(), Some("ctrl-c"));
        assert_eq!(
            sent(&mut rx0),
            [("Stop", "ctrl-c".into()), ("Abort", "ctrl-c again".into())]
        );
        // A worker that was away hears the stop when it resumes.
        assert_eq!(
            f.halt_for_resumed(),
            Some(controller_message::Body::Stop(pacer_proto::Stop {
                reason: "ctrl-c".into()
            }))
        );
    }

    #[test]
    fn the_first_failure_aborts_everyone_and_later_ones_change_nothing() {
        let mut f = Fleet::new(1);
        let (c, mut rx) = conn(1);
        f.admit("t1", &hello(Some(0), None), c, Instant::now())
            .expect("admitted");
        f.fail("worker 1 lost".into());
        f.fail("worker 2 lost".into());
        assert_eq!(sent(&mut rx), [("Abort", "worker 1 lost".into())]);
        assert_eq!(
            f.halt_for_resumed(),
            Some(controller_message::Body::Abort(pacer_proto::Abort {
                reason: "worker 1 lost".into()
            }))
        );
    }

    #[test]
    fn readiness_names_the_missing_workers() {
        let mut f = Fleet::new(3);
        let now = Instant::now();
        let (c, mut rx) = conn(1);
        f.admit("t1", &hello(Some(1), None), c, now)
            .expect("admitted");
        f.ready(1);
        assert!(!f.all_ready());
        assert_eq!(
            f.readiness(),
            Readiness {
                ready: 1,
                connected: 1,
                missing: vec![0, 2]
            }
        );
        f.end(Some("not every worker became ready in time"));
        assert_eq!(
            sent(&mut rx),
            [("Abort", "not every worker became ready in time".into())]
        );
        assert!(f.ended);
    }

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
        let settled: Vec<WorkerState> = WorkerState::ALL
            .into_iter()
            .filter(|s| s.is_settled())
            .collect();
        assert_eq!(
            settled,
            [
                WorkerState::Finished,
                WorkerState::Lost,
                WorkerState::Failed
            ]
        );
    }
}

#[cfg(test)]
#[path = "fleet_merge_tests.rs"]
mod merge_tests;
